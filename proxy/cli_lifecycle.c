/*
 * cli_lifecycle: `pglane provision`, `status`, `test` and `migrate`: the life of timeline databases from
 * the command line (issue 4).  provision, status and test talk to the instances directly, with libpq's
 * blocking calls (routing/provision); migrate runs the app's migrate = COMMAND, which connects through a
 * running pglane exactly as the app does.  Exit status as in cli.h: 0 all done, 1 something failed (each
 * failure on its own line, with the fix to try), 2 a usage error.
 *
 *   pglane provision -c FILE APP [--production|--preview|--branch NAME]
 *       Creates the timeline's database, or production's and preview's, when missing; idempotent.
 *   pglane provision -c FILE [APP] --retry
 *       pglane keeps no record of past failures, so --retry re-attempts what `status` can show in Error:
 *       production and preview of the app (of every app when none is named), plus the --branch given.
 *   pglane status -c FILE [--json]
 *   pglane test -c FILE INSTANCE  |  pglane test --url URL
 *   pglane migrate -c FILE APP [--production|--preview|--branch NAME|--all]
 *       pglane must be running (at public_host:public_port): COMMAND reaches the database through it.
 */
#include "proxy/cli.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "certs/certs.h"
#include "routing/provision.h"

#define STATE_CONNECTED  "Connected"
#define STATE_CREATING   "Creating"
#define STATE_ERROR      "Error"
#define STATE_UNASSIGNED "Unassigned"

static bool colour; /* ANSI colours: only when stdout is a terminal and NO_COLOR is unset */

static void colour_init(void)
{
	colour = isatty(STDOUT_FILENO) && !getenv("NO_COLOR");
}

/* The escape sequence for a word (a state, "ok", "FAILED"), or "" without colour. */
static const char *paint(const char *word)
{
	if (!colour)
		return "";
	if (strcmp(word, STATE_CONNECTED) == 0 || strcmp(word, "ok") == 0 || strcmp(word, "created") == 0)
		return "\033[32m";
	if (strcmp(word, STATE_CREATING) == 0 || strcmp(word, "warning") == 0 || strcmp(word, "skipped") == 0)
		return "\033[33m";
	if (strcmp(word, STATE_UNASSIGNED) == 0)
		return "\033[2m";
	if (strcmp(word, "exists") == 0)
		return "";
	return "\033[31m";
}

static const char *unpaint(void)
{
	return colour ? "\033[0m" : "";
}

static bool is_error(const char *state)
{
	return strcmp(state, STATE_ERROR) == 0;
}

/* "msg; fix: fix" after whatever the caller printed, then a newline. */
static void print_problem(const struct provision_error *e)
{
	printf("%s%s%s\n", e->msg, e->fix[0] ? "; fix: " : "", e->fix);
}

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * A TCP connection to host:port within timeout_ms, blocking afterwards with timeout_ms on each read and
 * write.  Returns the socket, or -1 with err worded as libpq words it (provision_classify_conn() reads it).
 */
static int tcp_connect(const char *host, int port, int timeout_ms, char *err, size_t errlen)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
	struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = timeout_ms % 1000 * 1000};
	char service[8];
	int fd = -1, rc, saved = ECONNREFUSED;

	snprintf(service, sizeof(service), "%d", port);
	if ((rc = getaddrinfo(host, service, &hints, &ai)) != 0) {
		snprintf(err, errlen, "could not translate host name \"%s\" to address: %s", host,
		         gai_strerror(rc));
		return -1;
	}
	for (struct addrinfo *p = ai; p && fd < 0; p = p->ai_next) {
		fd = socket(p->ai_family, p->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, p->ai_protocol);
		if (fd < 0) {
			saved = errno;
			continue;
		}
		if (connect(fd, p->ai_addr, p->ai_addrlen) != 0) {
			struct pollfd pfd = {.fd = fd, .events = POLLOUT};
			int soerr = errno;
			socklen_t len = sizeof(soerr);

			if (soerr == EINPROGRESS) {
				rc = poll(&pfd, 1, timeout_ms);
				soerr = rc == 0 ? ETIMEDOUT : rc < 0 ? errno : 0;
				if (rc > 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0)
					soerr = errno;
			}
			if (soerr) {
				saved = soerr;
				close(fd);
				fd = -1;
			}
		}
	}
	freeaddrinfo(ai);
	if (fd < 0) {
		snprintf(err, errlen, "%s:%d: %s", host, port, strerror(saved));
		return -1;
	}
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	return fd;
}

/* ---------------------------------------------------------------- provision */

/* The timelines a subcommand covers for app: the one the arguments name, else production and preview.
 * Returns how many (0 after printing why the branch name is refused). */
static size_t selected_timelines(const struct cli_args *a, const struct conf_app *app, struct timeline tl[2])
{
	char err[512];

	memset(tl, 0, 2 * sizeof(*tl));
	if (!a->have_timeline) {
		tl[0].kind = TIMELINE_PRODUCTION;
		tl[1].kind = TIMELINE_PREVIEW;
		return 2;
	}
	if (!timeline_set(&tl[0], a->kind, a->branch, app->production_branch, err, sizeof(err))) {
		fprintf(stderr, "pglane provision: %s\n", err);
		return 0;
	}
	return 1;
}

/* Provisions app's selected timelines, one line each; returns how many failed. */
static int provision_app(const struct conf *c, const struct conf_app *app, const struct cli_args *a)
{
	struct timeline tl[2];
	struct provision_error e;
	size_t ntl = selected_timelines(a, app, tl);
	int failed = 0;

	if (ntl == 0)
		return 1;
	PGconn *pg = provision_connect(app->instance, c->connect_timeout_ms, &e);
	for (size_t i = 0; i < ntl; i++) {
		char db[PG_NAMEDATALEN];
		enum provision_res r = PROVISION_FAILED;

		timeline_dbname(app->id, &tl[i], db, sizeof(db));
		if (pg)
			r = provision_database(pg, app->instance, db, app->owner, app->template_db, &e);
		printf("%s: %s%s%s", db, paint(provision_res_str(r)), provision_res_str(r), unpaint());
		if (r == PROVISION_FAILED) {
			printf(": ");
			print_problem(&e);
			failed++;
		} else {
			printf(" (instance %s)\n", app->instance->name);
		}
	}
	PQfinish(pg);
	return failed;
}

int cmd_provision(int argc, char **argv)
{
	struct cli_args a;
	int rc = cli_parse("provision", argc, argv, &a), failed = 0;

	if (rc)
		return rc;
	if (!a.app && !a.retry)
		return cli_usage_error("provision", "give an app (or --retry alone for every app)", NULL);
	if (!a.app && a.have_timeline)
		return cli_usage_error("provision", "a timeline needs an app", NULL);
	if (a.arg2)
		return cli_usage_error("provision", "unexpected argument", a.arg2);
	if (a.all || a.json)
		return cli_usage_error("provision", "unknown option", a.all ? "--all" : "--json");
	struct conf *c = cli_load("provision", a.conf_path);
	if (!c)
		return 1;
	const struct conf_app *only = a.app ? conf_app_find(c, a.app) : NULL;
	if (a.app && !only) {
		fprintf(stderr, "pglane provision: no app \"%s\" in %s\n", a.app, c->path);
		conf_free(c);
		return 1;
	}
	colour_init();
	for (size_t i = 0; i < c->napps; i++)
		if (!only || only == &c->apps[i])
			failed += provision_app(c, &c->apps[i], &a);
	conf_free(c);
	return failed ? 1 : 0;
}

/* ---------------------------------------------------------------- status */

/*
 * `pglane status --json` prints one object; the shape is stable (fields are only ever added):
 *
 *   {"config": "/path/pglane.ini",
 *    "instances": [
 *      {"name": "main", "host": "db.internal", "port": 5432,
 *       "state": "Connected" | "Error" | "Unassigned",    (Unassigned: no app uses it, reachable or not)
 *       "reachable": true, "server_version": "15.8" | null, "tls": true | false | null,
 *       "tls_protocol": "TLSv1.3" | null,
 *       "error": null | {"fault": "refused", "message": "...", "fix": "..."},
 *       "apps": [
 *         {"id": "demo", "provision": "auto" | "manual",
 *          "databases": [
 *            {"name": "demo--feature/x", "timeline": "production" | "preview" | "branch",
 *             "branch": "feature/x" | null,   (null for production, preview and cut names)
 *             "state": "Connected" | "Creating" | "Error",
 *             "error": null | {"fault": ..., "message": ..., "fix": ...}}]}]}]}
 *
 * Databases: production and preview always (Error "does not exist" when missing, Creating while a pglane
 * holds the creation lock), then every branch database found on the instance by the naming scheme.
 * Connected means the database exists, allows connections and the instance user has CONNECT on it.
 * "fault" is provision_fault_str().  Exit status 1 when anything is in Error.
 */
struct st_db {
	char name[PG_NAMEDATALEN];
	enum timeline_kind kind;
	char branch[TIMELINE_BRANCH_MAX + 1]; /* "" when not a branch or not known (a cut name) */
	const char *state;
	struct provision_error e;
};

struct st_app {
	const struct conf_app *app; /* borrowed */
	struct st_db *dbs;          /* owned */
	size_t ndbs;
};

struct st_inst {
	const struct conf_instance *inst; /* borrowed */
	const char *state;
	bool reachable, tls;
	char version[64], protocol[32];
	struct provision_error e;
	struct st_app *apps; /* owned, one per app using the instance */
	size_t napps;
};

/* The state of one existing database (d), or of a missing one (d NULL). */
static void st_db_fill(PGconn *pg, const struct conf *c, const struct conf_app *app, const char *name,
                       const struct provision_db *d, struct st_db *out)
{
	struct timeline tl;
	char why[256];

	snprintf(out->name, sizeof(out->name), "%s", name);
	out->kind = strcmp(name + strlen(app->id), "-production") == 0 ? TIMELINE_PRODUCTION
	            : strcmp(name + strlen(app->id), "-preview") == 0  ? TIMELINE_PREVIEW
	                                                               : TIMELINE_BRANCH;
	if (out->kind == TIMELINE_BRANCH && provision_timeline_of(app, name, &tl, why, sizeof(why)))
		snprintf(out->branch, sizeof(out->branch), "%s", tl.branch);
	out->state = STATE_CONNECTED;
	if (!d && provision_lock_held(pg, PROVISION_LOCK_CREATE, name)) {
		out->state = STATE_CREATING;
	} else if (!d) {
		out->state = STATE_ERROR;
		out->e.fault = PROVISION_FAULT_NO_DATABASE;
		snprintf(out->e.msg, sizeof(out->e.msg),
		         "database \"%s\" does not exist on instance \"%s\"%s", name, app->instance->name,
		         app->provision == PROVISION_AUTO
		             ? " (provision = auto creates it on the first connection)"
		             : "");
		snprintf(out->e.fix, sizeof(out->e.fix), "pglane provision -c %s %s --%s", c->path, app->id,
		         timeline_kind_str(out->kind));
	} else if (!d->allow_conn || !d->can_connect) {
		out->state = STATE_ERROR;
		provision_check_connect(pg, app->instance, name, &out->e);
	}
}

static void st_app_fill(PGconn *pg, const struct conf *c, struct st_inst *si, const struct conf_app *app,
                        struct st_app *sa)
{
	struct provision_db *dbs = NULL;
	size_t n = 0;
	struct provision_error e;
	char want[2][PG_NAMEDATALEN];

	sa->app = app;
	snprintf(want[0], sizeof(want[0]), "%s-production", app->id);
	snprintf(want[1], sizeof(want[1]), "%s-preview", app->id);
	if (pg && !provision_list_app_databases(pg, si->inst, app->id, &dbs, &n, &e)) {
		si->state = STATE_ERROR;
		si->e = e;
		pg = NULL;
	}
	if (!(sa->dbs = calloc(n + 2, sizeof(*sa->dbs))))
		abort();
	/* production and preview first, found or not; then the branches, in name order */
	for (int w = 0; w < 2; w++) {
		struct st_db *out = &sa->dbs[sa->ndbs++];
		const struct provision_db *found = NULL;

		for (size_t i = 0; i < n && !found; i++)
			if (strcmp(dbs[i].name, want[w]) == 0)
				found = &dbs[i];
		if (pg) {
			st_db_fill(pg, c, app, want[w], found, out);
			continue;
		}
		snprintf(out->name, sizeof(out->name), "%s", want[w]);
		out->kind = w == 0 ? TIMELINE_PRODUCTION : TIMELINE_PREVIEW;
		out->state = STATE_ERROR;
		out->e.fault = si->e.fault;
		snprintf(out->e.msg, sizeof(out->e.msg), "instance \"%s\" is unreachable", si->inst->name);
	}
	for (size_t i = 0; i < n; i++)
		if (strcmp(dbs[i].name, want[0]) != 0 && strcmp(dbs[i].name, want[1]) != 0)
			st_db_fill(pg, c, app, dbs[i].name, &dbs[i], &sa->dbs[sa->ndbs++]);
	free(dbs);
}

static void st_inst_fill(const struct conf *c, const struct conf_instance *inst, struct st_inst *si)
{
	const char *proto;

	si->inst = inst;
	PGconn *pg = provision_connect(inst, c->connect_timeout_ms, &si->e);
	si->reachable = pg != NULL;
	si->state = !inst->used ? STATE_UNASSIGNED : pg ? STATE_CONNECTED : STATE_ERROR;
	if (pg) {
		snprintf(si->version, sizeof(si->version), "%s", provision_server_version(pg));
		si->tls = provision_tls_in_use(pg, &proto);
		snprintf(si->protocol, sizeof(si->protocol), "%s", si->tls ? proto : "");
	}
	if (!(si->apps = calloc(c->napps ? c->napps : 1, sizeof(*si->apps))))
		abort();
	for (size_t i = 0; i < c->napps; i++)
		if (c->apps[i].instance == inst)
			st_app_fill(pg, c, si, &c->apps[i], &si->apps[si->napps++]);
	PQfinish(pg);
}

static void json_str(const char *s)
{
	if (s && s[0])
		cli_print_json_string(s);
	else
		fputs("null", stdout);
}

static void json_error(const struct provision_error *e)
{
	if (e->fault == PROVISION_FAULT_NONE && !e->msg[0]) {
		fputs("null", stdout);
		return;
	}
	printf("{\"fault\": ");
	cli_print_json_string(provision_fault_str(e->fault));
	printf(", \"message\": ");
	cli_print_json_string(e->msg);
	printf(", \"fix\": ");
	json_str(e->fix);
	putchar('}');
}

static void status_print_json(const struct conf *c, const struct st_inst *sis)
{
	printf("{\"config\": ");
	cli_print_json_string(c->path);
	printf(", \"instances\": [");
	for (size_t i = 0; i < c->ninstances; i++) {
		const struct st_inst *si = &sis[i];
		printf("%s\n  {\"name\": ", i ? "," : "");
		cli_print_json_string(si->inst->name);
		printf(", \"host\": ");
		cli_print_json_string(si->inst->host);
		printf(", \"port\": %d, \"state\": \"%s\", \"reachable\": %s, \"server_version\": ",
		       si->inst->port, si->state, si->reachable ? "true" : "false");
		json_str(si->version);
		printf(", \"tls\": %s, \"tls_protocol\": ", !si->reachable ? "null"
		                                            : si->tls      ? "true"
		                                                           : "false");
		json_str(si->protocol);
		printf(", \"error\": ");
		json_error(&si->e);
		printf(", \"apps\": [");
		for (size_t j = 0; j < si->napps; j++) {
			const struct st_app *sa = &si->apps[j];
			printf("%s\n    {\"id\": ", j ? "," : "");
			cli_print_json_string(sa->app->id);
			printf(", \"provision\": \"%s\", \"databases\": [",
			       sa->app->provision == PROVISION_AUTO ? "auto" : "manual");
			for (size_t k = 0; k < sa->ndbs; k++) {
				const struct st_db *d = &sa->dbs[k];
				printf("%s\n      {\"name\": ", k ? "," : "");
				cli_print_json_string(d->name);
				printf(", \"timeline\": \"%s\", \"branch\": ", timeline_kind_str(d->kind));
				json_str(d->branch);
				printf(", \"state\": \"%s\", \"error\": ", d->state);
				json_error(&d->e);
				putchar('}');
			}
			printf("]}");
		}
		printf("]}");
	}
	printf("]}\n");
}

static void status_print_text(const struct conf *c, const struct st_inst *sis)
{
	for (size_t i = 0; i < c->ninstances; i++) {
		const struct st_inst *si = &sis[i];
		printf("instance %s  %s:%d  ", si->inst->name, si->inst->host, si->inst->port);
		if (si->reachable)
			printf("PostgreSQL %s, %s%s  ", si->version, si->tls ? "TLS " : "no TLS",
			       si->protocol);
		printf("%s%s%s", paint(si->state), si->state, unpaint());
		if (!si->reachable) {
			printf(": ");
			print_problem(&si->e);
		} else {
			putchar('\n');
		}
		for (size_t j = 0; j < si->napps; j++) {
			const struct st_app *sa = &si->apps[j];
			printf("  app %s (provision %s)\n", sa->app->id,
			       sa->app->provision == PROVISION_AUTO ? "auto" : "manual");
			for (size_t k = 0; k < sa->ndbs; k++) {
				const struct st_db *d = &sa->dbs[k];
				printf("    %s%-10s%s %s", paint(d->state), d->state, unpaint(), d->name);
				if (is_error(d->state)) {
					printf(": ");
					print_problem(&d->e);
				} else {
					putchar('\n');
				}
			}
		}
	}
}

int cmd_status(int argc, char **argv)
{
	struct cli_args a;
	int rc = cli_parse("status", argc, argv, &a);

	if (rc)
		return rc;
	if (a.app)
		return cli_usage_error("status", "unexpected argument", a.app);
	if (a.have_timeline || a.all || a.retry)
		return cli_usage_error("status", "status takes only -c FILE and --json", NULL);
	struct conf *c = cli_load("status", a.conf_path);
	if (!c)
		return 1;
	colour_init();
	struct st_inst *sis = calloc(c->ninstances ? c->ninstances : 1, sizeof(*sis));
	if (!sis)
		abort();
	for (size_t i = 0; i < c->ninstances; i++)
		st_inst_fill(c, &c->instances[i], &sis[i]);
	if (a.json)
		status_print_json(c, sis);
	else
		status_print_text(c, sis);

	for (size_t i = 0; i < c->ninstances; i++) {
		rc |= is_error(sis[i].state);
		for (size_t j = 0; j < sis[i].napps; j++) {
			for (size_t k = 0; k < sis[i].apps[j].ndbs; k++)
				rc |= is_error(sis[i].apps[j].dbs[k].state);
			free(sis[i].apps[j].dbs);
		}
		free(sis[i].apps);
	}
	free(sis);
	conf_free(c);
	return rc ? 1 : 0;
}

/* ---------------------------------------------------------------- test */

enum probe_res { PROBE_OK, PROBE_NO_TLS, PROBE_FAILED };

/* The fault of a failed certificate check (an X509_V_ERR_* code; X509_V_OK: the handshake failed). */
static enum provision_fault verify_fault(long v)
{
	switch (v) {
	case X509_V_OK:
		return PROVISION_FAULT_TLS;
	case X509_V_ERR_HOSTNAME_MISMATCH:
	case X509_V_ERR_IP_ADDRESS_MISMATCH:
		return PROVISION_FAULT_TLS_HOSTNAME;
	case X509_V_ERR_CERT_HAS_EXPIRED:
	case X509_V_ERR_CERT_NOT_YET_VALID:
		return PROVISION_FAULT_TLS_EXPIRED;
	}
	return PROVISION_FAULT_TLS_UNTRUSTED;
}

/*
 * Connects and handshakes with inst exactly as the proxy does (SSLRequest, then certs/), because that is
 * the TLS routing depends on, and because it tells what libpq does not: an expired certificate from one
 * signed by an unknown CA.  On PROBE_OK info says what was checked; otherwise e says what failed.
 */
static enum probe_res tls_probe(const struct conf_instance *inst, int timeout_ms, struct provision_error *e,
                                char *info, size_t infolen)
{
	static const unsigned char ssl_request[8] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}; /* 80877103 */
	char err[512];
	unsigned char answer = 0;
	int fd = tcp_connect(inst->host, inst->port, timeout_ms, err, sizeof(err));

	if (fd < 0) {
		provision_classify_conn(inst, err, e);
		return PROBE_FAILED;
	}
	if (send(fd, ssl_request, sizeof(ssl_request), MSG_NOSIGNAL) != (ssize_t)sizeof(ssl_request) ||
	    recv(fd, &answer, 1, 0) != 1) {
		provision_classify_conn(
		    inst, errno == EAGAIN ? "timeout expired" : "server closed the connection unexpectedly",
		    e);
		close(fd);
		return PROBE_FAILED;
	}
	if (answer != 'S') {
		close(fd);
		if (answer == 'N') {
			provision_classify_conn(inst, "server does not support SSL, but SSL was required", e);
			return PROBE_NO_TLS;
		}
		provision_classify_conn(inst, "server closed the connection unexpectedly", e);
		snprintf(e->msg, sizeof(e->msg),
		         "%s:%d answered the SSL request with something else: is it PostgreSQL?", inst->host,
		         inst->port);
		return PROBE_FAILED;
	}
	SSL_CTX *ctx = certs_instance_ctx_new(inst, err, sizeof(err));
	SSL *ssl = ctx ? certs_instance_ssl_new(ctx, inst) : NULL;
	enum probe_res r = PROBE_FAILED;

	memset(e, 0, sizeof(*e));
	if (!ctx) {
		e->fault = PROVISION_FAULT_TLS;
		snprintf(e->msg, sizeof(e->msg), "%s", err);
		snprintf(e->fix, sizeof(e->fix), "check the instance's ca_file, client_cert and client_key");
	} else if (ssl && SSL_set_fd(ssl, fd) == 1 && SSL_connect(ssl) == 1) {
		r = PROBE_OK;
		const char *checked = "certificate not checked (use verify-full with ca_file)";
		if (inst->sslmode == SSLMODE_VERIFY_FULL)
			checked = "certificate and host name verified";
		else if (inst->sslmode == SSLMODE_VERIFY_CA)
			checked = "certificate verified (host name not checked under verify-ca)";
		snprintf(info, infolen, "%s, %s", SSL_get_version(ssl), checked);
	} else {
		long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;

		certs_describe_failure(ssl, inst, e->msg, sizeof(e->msg));
		e->fault = verify_fault(v);
		if (e->fault == PROVISION_FAULT_TLS_EXPIRED)
			snprintf(e->fix, sizeof(e->fix),
			         "renew the server's certificate (and check both clocks)");
	}
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	close(fd);
	return r;
}

/* One line of `pglane test`: the step, its outcome word and what was found (detail may be NULL). */
static void step(const char *name, const char *word, const char *detail)
{
	printf("  %-10s %s%s%s%s%s\n", name, paint(word), word, unpaint(), detail ? ": " : "",
	       detail ? detail : "");
}

static int step_failed(const char *name, const struct provision_error *e)
{
	printf("  %-10s %sFAILED%s: %s\n", name, paint("FAILED"), unpaint(), e->msg);
	if (e->fix[0])
		printf("  %-10s fix: %s\n", "", e->fix);
	return 1;
}

/*
 * Tests inst as routing uses it: TCP, TLS as configured, login, CREATEDB (a problem only when
 * need_createdb), and for each app of c using it (c may be NULL) owner, template and CONNECT on its
 * existing databases.  Prints a line per step; returns the number of problems.
 */
static int test_instance(const struct conf *c, const struct conf_instance *inst, int timeout_ms,
                         bool need_createdb)
{
	struct provision_error e;
	char info[640], where[300];
	const char *proto;
	int problems = 0;

	snprintf(where, sizeof(where), "%s:%d", inst->host, inst->port);
	printf("instance %s: %s@%s:%d/%s, sslmode %s\n", inst->name, inst->user, inst->host, inst->port,
	       inst->dbname, sslmode_str(inst->sslmode));
	if (inst->sslmode >= SSLMODE_PREFER) {
		enum probe_res r = tls_probe(inst, timeout_ms, &e, info, sizeof(info));

		if (r == PROBE_FAILED && e.fault <= PROVISION_FAULT_TIMEOUT)
			return step_failed("connect", &e);
		step("connect", "ok", where);
		if (r == PROBE_FAILED || (r == PROBE_NO_TLS && inst->sslmode >= SSLMODE_REQUIRE))
			return step_failed("TLS", &e);
		if (r == PROBE_NO_TLS)
			step("TLS", "warning",
			     "the server offers none, so pglane connects without it (sslmode = prefer)");
		else
			step("TLS", "ok", info);
	}
	PGconn *pg = provision_connect(inst, timeout_ms, &e);
	if (!pg)
		return step_failed(e.fault <= PROVISION_FAULT_TIMEOUT ? "connect" : "login", &e);
	bool tls = provision_tls_in_use(pg, &proto);
	snprintf(info, sizeof(info), "PostgreSQL %s, %s%s", provision_server_version(pg),
	         tls ? "over " : "without TLS", tls ? proto : "");
	if (inst->sslmode < SSLMODE_PREFER) {
		step("connect", "ok", where);
		step("TLS", "off",
		     inst->sslmode == SSLMODE_DISABLE ? "sslmode = disable" : "sslmode = allow");
	}
	step("login", "ok", info);
	if (provision_check_createdb(pg, inst, &e)) {
		step("CREATEDB", "ok", NULL);
	} else if (need_createdb || e.fault != PROVISION_FAULT_NO_CREATEDB) {
		problems += step_failed("CREATEDB", &e);
	} else {
		snprintf(info, sizeof(info),
		         "%s (only `pglane provision` needs it: no app here has provision = auto)", e.msg);
		step("CREATEDB", "warning", info);
	}

	for (size_t i = 0; c && i < c->napps; i++) {
		const struct conf_app *app = &c->apps[i];
		struct provision_db *dbs;
		size_t n, bad = 0;

		if (app->instance != inst)
			continue;
		printf("  app %s (provision %s)\n", app->id,
		       app->provision == PROVISION_AUTO ? "auto" : "manual");
		if (app->owner && provision_check_owner(pg, inst, app->owner, &e))
			step("owner", "ok", app->owner);
		else if (app->owner)
			problems += step_failed("owner", &e);
		if (app->template_db && provision_check_template(pg, inst, app->template_db, &e))
			step("template", "ok", app->template_db);
		else if (app->template_db)
			problems += step_failed("template", &e);
		if (!provision_list_app_databases(pg, inst, app->id, &dbs, &n, &e)) {
			problems += step_failed("CONNECT", &e);
			continue;
		}
		for (size_t k = 0; k < n; k++) {
			if (dbs[k].allow_conn && dbs[k].can_connect)
				continue;
			provision_check_connect(pg, inst, dbs[k].name, &e);
			problems += step_failed("CONNECT", &e);
			bad++;
		}
		if (!bad) {
			snprintf(info, sizeof(info), "%zu timeline database%s, all reachable", n,
			         n == 1 ? "" : "s");
			step("CONNECT", "ok", info);
		}
		free(dbs);
	}
	PQfinish(pg);
	return problems;
}

/* A name for [instance NAME] from a host: its first label, lowercased, other characters as '-'. */
static void instance_name_from_host(const char *host, char *out, size_t outlen)
{
	size_t o = 0;

	for (; host && *host && *host != '.' && o + 1 < outlen; host++) {
		char ch = *host;
		out[o++] = (ch >= 'A' && ch <= 'Z')                                 ? (char)(ch - 'A' + 'a')
		           : ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9')) ? ch
		                                                                    : '-';
	}
	out[o] = '\0';
	if (o == 0 || (out[0] >= '0' && out[0] <= '9') || out[0] == '-')
		snprintf(out, outlen, "main");
}

/*
 * The pasted URL as the keys of an [instance NAME] section, in the ini syntax conf_load_string() reads, so
 * the instance is exactly what the file would give.  Keys rather than one url line: inih limits a line to 198
 * bytes, which a cloud host name and a CA path soon pass.  Returns false (err set) for a URL libpq cannot
 * parse or a parameter pglane has no key for.
 */
static bool url_to_ini(const char *url, char *text, size_t textlen, char *err, size_t errlen)
{
	static const char *const keys[][2] = {
	    {"host", "host"},           {"port", "port"},           {"user", "user"},
	    {"password", "password"},   {"dbname", "dbname"},       {"sslmode", "sslmode"},
	    {"sslrootcert", "ca_file"}, {"sslcert", "client_cert"}, {"sslkey", "client_key"},
	};
	char *msg = NULL, name[64];
	PQconninfoOption *opts = PQconninfoParse(url, &msg);
	const char *host = NULL;
	size_t used;
	bool ok = opts != NULL;

	if (!opts) {
		snprintf(err, errlen, "the --url is not a connection string: %s",
		         msg ? msg : "out of memory");
		err[strcspn(err, "\n")] = '\0';
		PQfreemem(msg);
		return false;
	}
	for (PQconninfoOption *o = opts; o->keyword; o++)
		if (strcmp(o->keyword, "host") == 0)
			host = o->val;
	instance_name_from_host(host, name, sizeof(name));
	used = (size_t)snprintf(text, textlen, "[instance %s]\n", name);
	for (PQconninfoOption *o = opts; ok && o->keyword; o++) {
		size_t k = 0;

		if (!o->val || !o->val[0])
			continue;
		while (k < sizeof(keys) / sizeof(keys[0]) && strcmp(keys[k][0], o->keyword) != 0)
			k++;
		if (k == sizeof(keys) / sizeof(keys[0])) {
			snprintf(err, errlen, "the --url sets \"%s\", which pglane has no key for",
			         o->keyword);
			ok = false;
		} else if (strchr(o->val, '\n') || used >= textlen ||
		           (used += (size_t)snprintf(text + used, textlen - used, "%s = %s\n", keys[k][1],
		                                     o->val)) >= textlen) {
			snprintf(err, errlen, "the --url's %s is too long or not one line", o->keyword);
			ok = false;
		}
	}
	PQconninfoFree(opts);
	return ok;
}

static int test_url(const char *url)
{
	static char err[4096];
	char text[8192], cwd[4096];

	if (!url_to_ini(url, text, sizeof(text), err, sizeof(err))) {
		OPENSSL_cleanse(text, sizeof(text));
		fprintf(stderr, "pglane test: %s\n", err);
		return 1;
	}
	struct conf *c =
	    conf_load_string(text, "--url", getcwd(cwd, sizeof(cwd)) ? cwd : ".", err, sizeof(err));
	OPENSSL_cleanse(text, sizeof(text));
	if (!c) {
		fprintf(stderr, "%s\n", err);
		fprintf(stderr, "pglane test: the --url cannot be used as an instance\n");
		return 1;
	}
	colour_init();
	const struct conf_instance *in = &c->instances[0];
	int problems = test_instance(NULL, in, c->connect_timeout_ms, true);
	printf("%s%s\n", problems ? "not ready: " : "ready: ",
	       problems ? "fix the above, then test again" : "these lines go into pglane.ini");
	/* The operator pasted the URL: print everything, the password too, but only here on stdout. */
	printf("\n[instance %s]\nhost = %s\nport = %d\nuser = %s\n", in->name, in->host, in->port, in->user);
	if (in->password)
		printf("password = %s\n", in->password);
	printf("dbname = %s\nsslmode = %s\n", in->dbname, sslmode_str(in->sslmode));
	if (in->ca == CA_SOURCE_SYSTEM)
		printf("ca = system\n");
	else if (in->ca == CA_SOURCE_AWS_RDS)
		printf("ca = aws-rds\n");
	else if (in->ca_file)
		printf("ca_file = %s\n", in->ca_file);
	if (in->client_cert)
		printf("client_cert = %s\nclient_key = %s\n", in->client_cert, in->client_key);
	conf_free(c);
	return problems ? 1 : 0;
}

int cmd_test(int argc, char **argv)
{
	struct cli_args a;
	int rc = cli_parse("test", argc, argv, &a);

	if (rc)
		return rc;
	if (a.url && a.app)
		return cli_usage_error("test", "give an instance or --url, not both; got", a.app);
	if (!a.url && !a.app)
		return cli_usage_error("test", "give an instance name, or --url URL", NULL);
	if (a.arg2)
		return cli_usage_error("test", "unexpected argument", a.arg2);
	signal(SIGPIPE,
	       SIG_IGN); /* a server closing during the TLS probe is an answer, not a reason to die */
	if (a.url)
		return test_url(a.url);
	struct conf *c = cli_load("test", a.conf_path);
	if (!c)
		return 1;
	const struct conf_instance *inst = conf_instance_find(c, a.app);
	if (!inst) {
		fprintf(stderr, "pglane test: no [instance %s] in %s\n", a.app, c->path);
		conf_free(c);
		return 1;
	}
	colour_init();
	bool need_createdb = false;
	for (size_t i = 0; i < c->napps; i++)
		need_createdb |= c->apps[i].instance == inst && c->apps[i].provision == PROVISION_AUTO;
	int problems = test_instance(c, inst, c->connect_timeout_ms, need_createdb);
	printf("%s\n",
	       problems ? "not ready for routing: fix the above, then test again" : "ready for routing");
	conf_free(c);
	return problems ? 1 : 0;
}

/* ---------------------------------------------------------------- migrate */

struct target {
	struct timeline tl;
	char db[PG_NAMEDATALEN];
	char skip[256]; /* why it is skipped, or "" */
};

/*
 * Runs cmd under /bin/sh -c with the variables of e in its environment and stdin from /dev/null; its
 * stdout and stderr, merged, are printed line by line behind "[label] ".  Returns its wait status, or -1
 * with err set when it could not be started.
 */
static int run_prefixed(const char *cmd, const struct env_vars *e, const char *label, char *err,
                        size_t errlen)
{
	int fds[2], status;
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;

	if (pipe2(fds, O_CLOEXEC) != 0) {
		snprintf(err, errlen, "cannot make a pipe: %s", strerror(errno));
		return -1;
	}
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0) {
		snprintf(err, errlen, "cannot fork: %s", strerror(errno));
		close(fds[0]);
		close(fds[1]);
		return -1;
	}
	if (pid == 0) {
		int null = open("/dev/null", O_RDONLY);
		if (null < 0 || dup2(null, 0) < 0 || dup2(fds[1], 1) < 0 || dup2(fds[1], 2) < 0)
			_exit(126);
		for (int i = 0; i < ENV_NVARS; i++)
			setenv(e->names[i], e->values[i], 1);
		unsetenv("PGHOSTADDR"); /* either would steer libpq away from PGHOST */
		unsetenv("PGSERVICE");
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		fprintf(stderr, "cannot run /bin/sh: %s\n", strerror(errno));
		_exit(127);
	}
	close(fds[1]);
	FILE *f = fdopen(fds[0], "r");
	while (f && (n = getline(&line, &cap, f)) > 0) {
		printf("[%s] %s%s", label, line, line[n - 1] == '\n' ? "" : "\n");
		fflush(stdout);
	}
	free(line);
	if (f)
		fclose(f);
	else
		close(fds[0]);
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return snprintf(err, errlen, "lost the command: %s", strerror(errno)), -1;
	return status;
}

/* Fills targets for --all: every existing database of app, those that cannot be mapped back skipped. */
static bool migrate_targets_all(PGconn *pg, const struct conf_app *app, struct target **out, size_t *n)
{
	struct provision_db *dbs;
	struct provision_error e;
	size_t ndbs;

	if (!provision_list_app_databases(pg, app->instance, app->id, &dbs, &ndbs, &e)) {
		printf("pglane migrate: cannot list the databases of app %s: ", app->id);
		print_problem(&e);
		return false;
	}
	if (!(*out = calloc(ndbs ? ndbs : 1, sizeof(**out))))
		abort();
	for (size_t i = 0; i < ndbs; i++) {
		struct target *t = &(*out)[i];
		snprintf(t->db, sizeof(t->db), "%s", dbs[i].name);
		if (!provision_timeline_of(app, dbs[i].name, &t->tl, t->skip, sizeof(t->skip)) && !t->skip[0])
			snprintf(t->skip, sizeof(t->skip), "cannot be mapped to a timeline");
	}
	*n = ndbs;
	free(dbs);
	return true;
}

/* Migrates one database under its migration lock; prints its result line; returns true when it passed. */
static bool migrate_one(const struct conf *c, const struct conf_app *app, PGconn *pg, const struct target *t)
{
	struct route r;
	struct env_vars env;
	struct provision_error e;
	char label[TIMELINE_BRANCH_MAX + 16], err[256];
	bool got;
	int status = -1;

	timeline_label(&t->tl, label, sizeof(label));
	if (!route_for(app, &t->tl, &r, err, sizeof(err))) {
		printf("%s: %sfailed%s: %s\n", t->db, paint("failed"), unpaint(), err);
		return false;
	}
	if (provision_try_lock(pg, app->instance, PROVISION_LOCK_MIGRATE, t->db, &got, &e) && !got) {
		printf("[%s] waiting: another `pglane migrate` is migrating %s\n", label, t->db);
		fflush(stdout);
		got = provision_lock(pg, app->instance, PROVISION_LOCK_MIGRATE, t->db, 0, &e);
	}
	if (!got) {
		printf("%s: %sfailed%s: not migrated, the migration lock is out of reach: ", t->db,
		       paint("failed"), unpaint());
		print_problem(&e);
		return false;
	}
	cli_env_build(c, &r, &env);
	long long t0 = now_ms();
	status = run_prefixed(app->migrate, &env, label, err, sizeof(err));
	double secs = (double)(now_ms() - t0) / 1000.0;
	OPENSSL_cleanse(&env, sizeof(env));
	OPENSSL_cleanse(&r, sizeof(r));
	provision_unlock(pg, PROVISION_LOCK_MIGRATE, t->db);

	bool passed = status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
	printf("%s: %s%s%s (", t->db, paint(passed ? "ok" : "failed"), passed ? "ok" : "failed", unpaint());
	if (status < 0)
		printf("%s, ", err);
	else if (WIFSIGNALED(status))
		printf("killed by signal %d, ", WTERMSIG(status));
	else if (!passed)
		printf("exit status %d, ", WEXITSTATUS(status));
	printf("%.1f s)\n", secs);
	return passed;
}

int cmd_migrate(int argc, char **argv)
{
	struct cli_args a;
	struct provision_error e;
	struct target *targets = NULL;
	size_t ntargets = 0;
	char err[512];
	int rc = cli_parse("migrate", argc, argv, &a), ok = 0, failed = 0, skipped = 0;

	if (rc)
		return rc;
	if (!a.app)
		return cli_usage_error("migrate", "give an app", NULL);
	if (a.arg2)
		return cli_usage_error("migrate", "unexpected argument", a.arg2);
	if (a.all && a.have_timeline)
		return cli_usage_error("migrate", "give a timeline or --all, not both", NULL);
	struct conf *c = cli_load("migrate", a.conf_path);
	if (!c)
		return 1;
	const struct conf_app *app = conf_app_find(c, a.app);
	if (!app || !app->migrate) {
		fprintf(stderr,
		        app ? "pglane migrate: app \"%s\" has no migrate = COMMAND in %s\n"
		            : "pglane migrate: no app \"%s\" in %s\n",
		        a.app, c->path);
		conf_free(c);
		return 1;
	}
	colour_init();
	/* The command connects through pglane; without it every run would fail the same way. */
	int fd = tcp_connect(c->public_host, c->public_port, c->connect_timeout_ms, err, sizeof(err));
	if (fd < 0) {
		fprintf(stderr,
		        "pglane migrate: pglane is not accepting connections at %s:%d (%s); start it (pglane "
		        "-c %s): "
		        "migrations connect through it, as the app does\n",
		        c->public_host, c->public_port, err, c->path);
		conf_free(c);
		return 1;
	}
	close(fd);
	PGconn *pg = provision_connect(app->instance, c->connect_timeout_ms, &e);
	if (!pg) {
		printf("pglane migrate: the migration locks live on instance %s, which is out of reach: ",
		       app->instance->name);
		print_problem(&e);
		conf_free(c);
		return 1;
	}
	if (a.all) {
		if (!migrate_targets_all(pg, app, &targets, &ntargets))
			failed++;
	} else {
		if (!(targets = calloc(1, sizeof(*targets))))
			abort();
		if (!timeline_set(&targets[0].tl, a.have_timeline ? a.kind : TIMELINE_PRODUCTION, a.branch,
		                  app->production_branch, err, sizeof(err))) {
			fprintf(stderr, "pglane migrate: %s\n", err);
			failed++;
		} else {
			timeline_dbname(app->id, &targets[0].tl, targets[0].db, sizeof(targets[0].db));
			ntargets = 1;
		}
	}
	if (a.all && !failed && ntargets == 0)
		printf("app %s has no timeline database on instance %s yet\n", app->id, app->instance->name);
	for (size_t i = 0; i < ntargets; i++) {
		if (targets[i].skip[0]) {
			printf("%s: %sskipped%s: %s\n", targets[i].db, paint("skipped"), unpaint(),
			       targets[i].skip);
			skipped++;
		} else if (migrate_one(c, app, pg, &targets[i])) {
			ok++;
		} else {
			failed++;
		}
	}
	if (ntargets > 1)
		printf("migrate %s: %d ok, %d failed, %d skipped\n", app->id, ok, failed, skipped);
	free(targets);
	PQfinish(pg);
	conf_free(c);
	return failed ? 1 : 0;
}
