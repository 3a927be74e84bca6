/*
 * admin: the console on the virtual database "pglane", for [pglane] admin_user after SCRAM with
 * admin_password.  pglane answers simple-protocol queries itself with ordinary row sets, so psql
 * prints them:
 *   SHOW INSTANCES | APPS | DATABASES | CLIENTS | SERVERS | POOLS | STATS | CONFIG | VERSION
 *   RELOAD, PAUSE [app], RESUME [app], KILL CLIENT id, SHUTDOWN
 * PAUSE holds new sessions (of one app, or all) after their login, before they reach an instance;
 * RESUME lets them go.  Sessions already running are not touched.
 * The console runs on the worker its connection landed on; the views gather every worker's sessions and
 * pools (worker_each()), and RELOAD, PAUSE, RESUME, KILL and SHUTDOWN reach every worker.
 */
#include "proxy/proxy.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#define ADMIN_QUERY_MAX 4096
#define ADMIN_MAX_COLS 12

struct admin_out {
	struct pgbuf b;
	size_t rows;
};

static void admin_columns(struct admin_out *o, const char *const *names, size_t n)
{
	size_t off = pgbuf_begin(&o->b, 'T');
	pgbuf_put_u8(&o->b, 0);
	o->b.len--; /* the int16 count is written below: two bytes, big-endian */
	pgbuf_put_u8(&o->b, (uint8_t)(n >> 8));
	pgbuf_put_u8(&o->b, (uint8_t)n);
	for (size_t i = 0; i < n; i++) {
		pgbuf_put_str(&o->b, names[i]);
		pgbuf_put_u32(&o->b, 0);             /* table oid */
		pgbuf_put(&o->b, "\0\0", 2);         /* column number */
		pgbuf_put_u32(&o->b, 25);            /* text */
		pgbuf_put(&o->b, "\xff\xff", 2);     /* typlen -1 */
		pgbuf_put_u32(&o->b, 0xffffffffu);   /* typmod -1 */
		pgbuf_put(&o->b, "\0\0", 2);         /* text format */
	}
	pgbuf_end(&o->b, off);
}

static void admin_row(struct admin_out *o, const char *const *vals, size_t n)
{
	size_t off = pgbuf_begin(&o->b, 'D');
	pgbuf_put_u8(&o->b, (uint8_t)(n >> 8));
	pgbuf_put_u8(&o->b, (uint8_t)n);
	for (size_t i = 0; i < n; i++) {
		if (!vals[i]) {
			pgbuf_put_u32(&o->b, 0xffffffffu);
			continue;
		}
		size_t len = strlen(vals[i]);
		pgbuf_put_u32(&o->b, (uint32_t)len);
		pgbuf_put(&o->b, vals[i], len);
	}
	pgbuf_end(&o->b, off);
	o->rows++;
}

static void admin_complete(struct admin_out *o, const char *tag)
{
	size_t off = pgbuf_begin(&o->b, 'C');
	pgbuf_put_str(&o->b, tag);
	pgbuf_end(&o->b, off);
}

static void admin_ready(struct pgbuf *b)
{
	size_t off = pgbuf_begin(b, PG_MSG_READY_FOR_QUERY);
	pgbuf_put_u8(b, 'I');
	pgbuf_end(b, off);
}

static void admin_error(struct admin_out *o, const char *sqlstate, const char *msg)
{
	pgbuf_free(&o->b);
	o->rows = 0;
	pg_put_error(&o->b, "ERROR", sqlstate, msg, NULL, NULL);
}

/* ---------------------------------------------------------------- SHOW */

#define NCOLS(a) (sizeof(a) / sizeof((a)[0]))
static _Thread_local char admin_num[ADMIN_MAX_COLS][32];

static const char *num(int slot, unsigned long long v)
{
	snprintf(admin_num[slot], sizeof(admin_num[slot]), "%llu", v);
	return admin_num[slot];
}

/* Sessions per app of conf, over the workers. */
struct app_clients {
	const struct conf *conf;
	size_t *n; /* by app index */
};

static void admin_app_clients(struct proxy *px, void *arg)
{
	struct app_clients *a = arg;
	const struct conn *it;
	const struct conf_app *app;

	TAILQ_FOREACH(it, &px->conns, link)
	if (it->route.app && (app = conf_app_find(a->conf, it->route.id.app)))
		a->n[app - a->conf->apps]++;
}

static void show_instances(struct proxy *px, struct admin_out *o)
{
	static const char *const cols[] = {"name", "host", "port", "user", "dbname", "sslmode", "ca", "apps"};
	const struct conf *c = px->snap->conf;
	static const char *const ca[] = {"none", "file", "system", "aws-rds"};

	admin_columns(o, cols, NCOLS(cols));
	for (size_t i = 0; i < c->ninstances; i++) {
		const struct conf_instance *in = &c->instances[i];
		char apps[1024] = "";
		for (size_t a = 0; a < c->napps; a++)
			if (c->apps[a].instance == in)
				snprintf(apps + strlen(apps), sizeof(apps) - strlen(apps), "%s%s", *apps ? "," : "",
					 c->apps[a].id);
		const char *v[] = {in->name, in->host, num(0, (unsigned)in->port), in->user, in->dbname,
				   sslmode_str(in->sslmode), in->ca == CA_SOURCE_FILE ? in->ca_file : ca[in->ca], apps};
		admin_row(o, v, NCOLS(v));
	}
	admin_complete(o, "SHOW");
}

static void show_apps(struct proxy *px, struct admin_out *o)
{
	static const char *const cols[] = {"id", "instance", "provision", "production_branch", "clients", "paused"};
	const struct conf *c = px->snap->conf;
	struct app_clients ac = {c, calloc(c->napps + 1, sizeof(size_t))};

	if (!ac.n)
		return admin_error(o, "53200", "out of memory");
	worker_each(px->lane, px, admin_app_clients, &ac);
	admin_columns(o, cols, NCOLS(cols));
	for (size_t a = 0; a < c->napps; a++) {
		const struct conf_app *app = &c->apps[a];
		const char *v[] = {app->id,
				   app->instance_name,
				   app->provision == PROVISION_AUTO ? "auto" : "manual",
				   app->production_branch,
				   num(0, ac.n[a]),
				   admin_is_paused(px, app->id) ? "yes" : "no"};
		admin_row(o, v, NCOLS(v));
	}
	free(ac.n);
	admin_complete(o, "SHOW");
}

static void show_kept_server(void *arg, const char *instance, const char *dbname, uint32_t pid, bool tls,
			     const char *state)
{
	char spid[16];

	snprintf(spid, sizeof(spid), "%u", pid);
	const char *v[] = {NULL, instance, dbname, spid, tls ? "yes" : "no", state};
	admin_row(arg, v, NCOLS(v));
}

struct pool_rows {
	struct admin_out *o;
	unsigned wid;
};

static void show_pool_row(void *arg, const struct pool_info *in)
{
	const struct pool_rows *r = arg;
	const char *v[] = {in->instance,
			   in->dbname,
			   num(0, in->sessions),
			   num(1, in->waiting),
			   num(2, in->servers),
			   num(3, in->idle),
			   num(4, in->pool_size),
			   num(5, in->pinned),
			   num(6, r->wid)};
	admin_row(r->o, v, NCOLS(v));
}

static void show_pools_of(struct proxy *px, void *arg)
{
	struct pool_rows r = {arg, px->wid};
	pool_each_group(px, show_pool_row, &r);
}

/* Transaction pools: one per worker, instance, timeline database and set of startup parameters. */
static void show_pools(struct proxy *px, struct admin_out *o)
{
	static const char *const cols[] = {"instance", "database", "sessions",  "waiting",
					   "servers",  "idle",     "pool_size", "pinned", "worker"};

	admin_columns(o, cols, NCOLS(cols));
	worker_each(px->lane, px, show_pools_of, o);
	admin_complete(o, "SHOW");
}

struct client_rows {
	struct admin_out *o;
	bool servers;
};

static void show_clients_of(struct proxy *px, void *arg)
{
	struct client_rows *r = arg;
	struct admin_out *o = r->o;
	bool servers = r->servers;
	struct timespec now;
	struct conn *it;

	clock_gettime(CLOCK_MONOTONIC, &now);
	for (int list = 0; list < 2; list++) {
		TAILQ_FOREACH(it, list ? &px->paused : &px->conns, link)
		{
			char tl[TIMELINE_BRANCH_MAX + 16] = "";
			bool routed = it->route.app != NULL;
			if (routed)
				timeline_label(&it->route.id.tl, tl, sizeof(tl));
			if (servers) {
				if (!it->server && it->rs.fd < 0)
					continue;
				const char *v[] = {num(0, it->id), it->inst->name, it->route.dbname, num(1, it->be_pid),
						   it->be_ssl ? "yes" : "no",
						   it->state == CONN_RELAY ? "active" : "login"};
				admin_row(o, v, NCOLS(v));
				continue;
			}
			const char *state = list ? "paused" : conn_state_str(it->state);
			if (!list && it->txn && it->state == CONN_RELAY && !it->server && it->rs.fd < 0)
				state = it->waiting ? "waiting" : "idle"; /* transaction pooling: no server connection now */
			else if (!list && it->txn && it->state == CONN_RELAY && it->tx.pinned)
				state = "pinned"; /* it named a prepared statement: its server connection stays */
			const char *v[] = {num(0, it->id),
					   it->peer,
					   routed ? it->route.id.app : (it->admin ? "(admin)" : NULL),
					   routed ? tl : NULL,
					   routed ? it->route.dbname : NULL,
					   state,
					   num(1, (unsigned long long)(now.tv_sec - it->started.tv_sec)),
					   num(2, it->bytes_in),
					   num(3, it->bytes_out),
					   it->client_tls ? "yes" : "no"};
			admin_row(o, v, NCOLS(v));
		}
	}
	if (servers) /* and the server connections no client holds now (server_idle_timeout) */
		pool_each(px, show_kept_server, o);
}

static void show_clients(struct proxy *px, struct admin_out *o, bool servers)
{
	static const char *const ccols[] = {"id",    "peer",  "app",      "timeline",  "database",
					    "state", "since", "bytes_in", "bytes_out", "tls"};
	static const char *const scols[] = {"client_id", "instance", "database", "server_pid", "tls", "state"};
	struct client_rows r = {o, servers};

	if (servers)
		admin_columns(o, scols, NCOLS(scols));
	else
		admin_columns(o, ccols, NCOLS(ccols));
	worker_each(px->lane, px, show_clients_of, &r);
	admin_complete(o, "SHOW");
}

/* The timeline databases sessions are routed to, over the workers: one entry per instance and database. */
struct db_entry {
	char app[APP_ID_MAX + 1], tl[TIMELINE_BRANCH_MAX + 16], dbname[128], instance[64];
	bool creating;
	size_t clients; /* relaying now */
};
struct db_rows {
	struct db_entry *e;
	size_t n, cap;
	bool oom;
};

static void show_databases_of(struct proxy *px, void *arg)
{
	struct db_rows *r = arg;
	struct conn *it;

	TAILQ_FOREACH(it, &px->conns, link)
	{
		if (!it->route.app || it->state < CONN_CONNECT || it->admin)
			continue;
		size_t i = 0;
		while (i < r->n && !(strcmp(r->e[i].instance, it->inst->name) == 0 &&
				     strcmp(r->e[i].dbname, it->route.dbname) == 0))
			i++;
		if (i == r->n) {
			if (r->n == r->cap) {
				size_t cap = r->cap ? r->cap * 2 : 16;
				struct db_entry *e = realloc(r->e, cap * sizeof(*e));
				if (!e) {
					r->oom = true;
					return;
				}
				r->e = e, r->cap = cap;
			}
			struct db_entry *e = &r->e[r->n++];
			memset(e, 0, sizeof(*e));
			snprintf(e->app, sizeof(e->app), "%s", it->route.id.app);
			timeline_label(&it->route.id.tl, e->tl, sizeof(e->tl));
			snprintf(e->dbname, sizeof(e->dbname), "%s", it->route.dbname);
			snprintf(e->instance, sizeof(e->instance), "%s", it->inst->name);
		}
		r->e[i].clients += it->state == CONN_RELAY;
		r->e[i].creating |= autoprov_creating(px, it->inst, it->route.dbname);
	}
}

static void show_databases(struct proxy *px, struct admin_out *o)
{
	static const char *const cols[] = {"app", "timeline", "database", "instance", "state", "clients"};
	struct db_rows r = {0};

	worker_each(px->lane, px, show_databases_of, &r);
	if (r.oom) {
		free(r.e);
		return admin_error(o, "53200", "out of memory");
	}
	admin_columns(o, cols, NCOLS(cols));
	for (size_t i = 0; i < r.n; i++) {
		const struct db_entry *e = &r.e[i];
		const char *v[] = {e->app, e->tl, e->dbname, e->instance, e->creating ? "Creating" : "Connected",
				   num(0, e->clients)};
		admin_row(o, v, NCOLS(v));
	}
	free(r.e);
	admin_complete(o, "SHOW");
}

static void show_stats(struct proxy *px, struct admin_out *o)
{
	static const char *const cols[] = {"name", "value"};
	struct stats_sum sum = {0};
	const struct stats *s = &sum.s;

	worker_each(px->lane, px, stats_gather, &sum);
	const struct {
		const char *name;
		uint64_t v;
	} rows[] = {
		{"clients", sum.clients},
		{"accepted", s->accepted},
		{"routed", s->routed},
		{"refused_too_many", s->refused_too_many},
		{"auth_fail_password", s->auth_fail_password},
		{"auth_fail_user", s->auth_fail_user},
		{"auth_fail_database", s->auth_fail_database},
		{"auth_fail_certificate", s->auth_fail_cert},
		{"protocol_errors", s->protocol_errors},
		{"login_timeouts", s->login_timeouts},
		{"tls_handshakes", s->tls_handshakes},
		{"cancel_requests", s->cancel_requests},
		{"cancels_forwarded", s->cancels_forwarded},
		{"backend_errors", s->backend_errors},
		{"provisions", s->provisions_ok},
		{"provision_failures", s->provisions_failed},
		{"server_connections_kept", s->pool_kept},
		{"server_connections_reused", s->pool_reused},
		{"server_connections_idle", sum.pooled},
		{"prepared_statements_prepared", s->ps_prepared},
		{"prepared_statements_answered", s->ps_answered},
		{"prepared_statements_closed", s->ps_evicted},
		{"reloads", atomic_load(&px->lane->reloads_ok)},
		{"reloads_rejected", atomic_load(&px->lane->reloads_failed)},
		{"bytes_in_closed", s->bytes_in},
		{"bytes_out_closed", s->bytes_out},
	};

	admin_columns(o, cols, NCOLS(cols));
	for (size_t i = 0; i < NCOLS(rows); i++) {
		const char *v[] = {rows[i].name, num(0, rows[i].v)};
		admin_row(o, v, 2);
	}
	admin_complete(o, "SHOW");
}

static void show_config(struct proxy *px, struct admin_out *o)
{
	static const char *const cols[] = {"key", "value"};
	const struct conf *c = px->snap->conf;
	static const char *const tls[] = {"disable", "allow", "require"};
	char listen[512] = "";

	for (size_t i = 0; i < c->nlisten; i++)
		snprintf(listen + strlen(listen), sizeof(listen) - strlen(listen), "%s%s:%s", i ? "," : "",
			 c->listen[i].host, c->listen[i].port);
	const char *rows[][2] = {
		{"config_file", c->path},
		{"listen", listen},
		{"workers", num(9, px->lane->n)}, /* running: 0 in the file means one per core */
		{"public_host", c->public_host},
		{"public_port", num(0, (unsigned)c->public_port)},
		{"connect_timeout_ms", num(1, (unsigned)c->connect_timeout_ms)},
		{"login_timeout_ms", num(2, (unsigned)c->login_timeout_ms)},
		{"shutdown_timeout_ms", num(3, (unsigned)c->shutdown_timeout_ms)},
		{"max_clients", num(4, (unsigned)c->max_clients)},
		{"max_packet_size", num(5, (unsigned)c->max_packet_size)},
		{"server_idle_timeout", num(6, (unsigned)c->server_idle_timeout_s)},
		{"pool_mode", c->pool_mode == POOL_MODE_TRANSACTION ? "transaction" : "session"},
		{"pool_size", num(7, (unsigned)c->pool_size)},
		{"query_wait_timeout", num(8, (unsigned)c->query_wait_timeout_s)},
		{"max_prepared_statements", num(10, (unsigned)c->max_prepared_statements)},
		{"kernel_relay", c->kernel_relay == KERNEL_RELAY_ON ? "on" : c->kernel_relay == KERNEL_RELAY_AUTO ? "auto" : "off"},
		{"tls_mode", tls[c->tls_mode]},
		{"tls_cert", c->tls_cert},
		{"client_ca", c->client_ca},
		{"allow_cleartext", c->allow_cleartext ? "true" : "false"},
		{"admin_user", c->admin_user},
		{"admin_password", c->admin_password ? "********" : NULL},
		{"http_listen", c->http_listen},
		{"log_format", c->log_format},
		{"log_level", c->log_level},
		{"log_file", c->log_file},
	};
	admin_columns(o, cols, NCOLS(cols));
	for (size_t i = 0; i < NCOLS(rows); i++)
		admin_row(o, rows[i], 2);
	admin_complete(o, "SHOW");
}

/* ---------------------------------------------------------------- PAUSE / RESUME */

bool admin_is_paused(const struct proxy *px, const char *app)
{
	if (px->pause_all)
		return true;
	for (size_t i = 0; i < px->npaused_apps; i++)
		if (strcmp(px->paused_apps[i], app) == 0)
			return true;
	return false;
}

void admin_park(struct conn *c)
{
	TAILQ_REMOVE(&c->px->conns, c, link);
	TAILQ_INSERT_TAIL(&c->px->paused, c, link);
	c->parked = true;
	if (c->timer)
		evtimer_del(c->timer);
	log_conn(LOG_INFO, c, "held by PAUSE");
}

static void admin_release(struct proxy *px)
{
	struct conn *c, *next;

	for (c = TAILQ_FIRST(&px->paused); c; c = next) {
		next = TAILQ_NEXT(c, link);
		if (admin_is_paused(px, c->route.id.app))
			continue;
		TAILQ_REMOVE(&px->paused, c, link);
		TAILQ_INSERT_TAIL(&px->conns, c, link);
		c->parked = false;
		backend_start(c);
	}
}

struct pause_req {
	const char *app; /* "" for all */
	bool pause;
	bool oom;        /* a worker could not note it */
};

static void admin_pause_fn(struct proxy *px, void *arg)
{
	struct pause_req *r = arg;
	const char *app = r->app;
	bool pause = r->pause;

	if (!*app) {
		px->pause_all = pause;
		if (!pause) {
			for (size_t i = 0; i < px->npaused_apps; i++)
				free(px->paused_apps[i]);
			px->npaused_apps = 0;
		}
	} else if (pause && !admin_is_paused(px, app)) {
		char **a = realloc(px->paused_apps, (px->npaused_apps + 1) * sizeof(*a));
		if (!a || !(a[px->npaused_apps] = strdup(app))) {
			if (a)
				px->paused_apps = a;
			r->oom = true;
			return;
		}
		px->paused_apps = a;
		px->npaused_apps++;
	} else if (!pause) {
		for (size_t i = 0; i < px->npaused_apps; i++) {
			if (strcmp(px->paused_apps[i], app) == 0) {
				free(px->paused_apps[i]);
				px->paused_apps[i] = px->paused_apps[--px->npaused_apps];
				break;
			}
		}
	}
	if (!pause)
		admin_release(px);
}

static bool admin_pause(struct proxy *px, const char *app, bool pause, char *err, size_t errlen)
{
	struct pause_req r = {app, pause, false};

	if (*app && !conf_app_find(px->snap->conf, app)) {
		snprintf(err, errlen, "no app \"%s\"", app);
		return false;
	}
	worker_each(px->lane, px, admin_pause_fn, &r);
	if (r.oom) {
		snprintf(err, errlen, "out of memory");
		return false;
	}
	log_msg(LOG_INFO, "%s %s", pause ? "PAUSE" : "RESUME", *app ? app : "all");
	return true;
}

struct kill_req {
	uint64_t id;
	const struct conn *self; /* the console asking */
	int found;               /* 0 none, 1 killed, -1 it is the console itself */
};

static void admin_kill_fn(struct proxy *px, void *arg)
{
	struct kill_req *r = arg;
	struct conn *it;

	for (int list = 0; list < 2 && !r->found; list++)
		TAILQ_FOREACH(it, list ? &px->paused : &px->conns, link)
		if (it->id == r->id) {
			r->found = it == r->self ? -1 : 1;
			if (it != r->self)
				conn_close(it, "killed by admin");
			return;
		}
}

/* ---------------------------------------------------------------- dispatch */

/* Splits "show   clients ;" into lower-cased words; returns how many. */
static size_t admin_words(char *q, char **w, size_t max)
{
	size_t n = 0;
	char *save = NULL;

	for (char *p = q; *p; p++)
		if (*p == ';')
			*p = ' ';
	for (char *t = strtok_r(q, " \t\r\n", &save); t && n < max; t = strtok_r(NULL, " \t\r\n", &save))
		w[n++] = t;
	for (size_t i = 0; i + 1 < n || (i < n && i == 0); i++)
		for (char *p = w[i]; *p; p++)
			*p = (char)tolower((unsigned char)*p);
	if (n >= 2) /* the second word of SHOW/KILL too; app ids and ids are lower-case anyway */
		for (char *p = w[1]; *p; p++)
			*p = (char)tolower((unsigned char)*p);
	return n;
}

static void admin_query_run(struct conn *c, char *q, struct admin_out *o)
{
	struct proxy *px = c->px;
	char *w[4], err[256];
	size_t n = admin_words(q, w, 4);

	if (n == 0) {
		size_t off = pgbuf_begin(&o->b, 'I'); /* EmptyQueryResponse */
		pgbuf_end(&o->b, off);
		return;
	}
	if (strcmp(w[0], "show") == 0 && n == 2) {
		if (strcmp(w[1], "instances") == 0)
			return show_instances(px, o);
		if (strcmp(w[1], "apps") == 0)
			return show_apps(px, o);
		if (strcmp(w[1], "databases") == 0)
			return show_databases(px, o);
		if (strcmp(w[1], "clients") == 0)
			return show_clients(px, o, false);
		if (strcmp(w[1], "servers") == 0)
			return show_clients(px, o, true);
		if (strcmp(w[1], "pools") == 0)
			return show_pools(px, o);
		if (strcmp(w[1], "stats") == 0)
			return show_stats(px, o);
		if (strcmp(w[1], "config") == 0)
			return show_config(px, o);
		if (strcmp(w[1], "version") == 0) {
			static const char *const cols[] = {"version"};
			static const char *const v[] = {"pglane " PGLANE_VERSION};
			admin_columns(o, cols, 1);
			admin_row(o, v, 1);
			return admin_complete(o, "SHOW");
		}
	} else if (strcmp(w[0], "reload") == 0 && n == 1) {
		static _Thread_local char rerr[16384];
		if (!proxy_reload(px->lane, px, rerr, sizeof(rerr))) {
			char *nl = strchr(rerr, '\n');
			if (nl)
				*nl = '\0';
			return admin_error(o, "F0000", rerr);
		}
		return admin_complete(o, "RELOAD");
	} else if ((strcmp(w[0], "pause") == 0 || strcmp(w[0], "resume") == 0) && n <= 2) {
		bool pause = w[0][0] == 'p';
		if (!admin_pause(px, n == 2 ? w[1] : "", pause, err, sizeof(err)))
			return admin_error(o, "42704", err);
		return admin_complete(o, pause ? "PAUSE" : "RESUME");
	} else if (strcmp(w[0], "kill") == 0 && n == 3 && strcmp(w[1], "client") == 0) {
		char *end;
		struct kill_req r = {strtoull(w[2], &end, 10), c, 0};
		if (*end == '\0')
			worker_each(px->lane, px, admin_kill_fn, &r);
		if (r.found < 0)
			return admin_error(o, "42601", "KILL CLIENT: that is this connection");
		if (r.found > 0)
			return admin_complete(o, "KILL");
		return admin_error(o, "42704", "KILL CLIENT: no client with that id");
	} else if (strcmp(w[0], "shutdown") == 0 && n == 1) {
		proxy_shutdown_all(px->lane, px);
		return admin_complete(o, "SHUTDOWN");
	}
	admin_error(o, "42601",
		    "unknown admin command; try SHOW INSTANCES|APPS|DATABASES|CLIENTS|SERVERS|POOLS|STATS|CONFIG|VERSION, "
		    "RELOAD, PAUSE [app], RESUME [app], KILL CLIENT id, SHUTDOWN");
}

/* The command runs with a reference to the snapshot it began with: while it gathers from the other workers,
 * this worker serves their calls, a reload's among them. */
static void admin_query(struct conn *c, char *q, struct admin_out *o)
{
	struct snapshot *s = snapshot_ref(c->px->snap);
	admin_query_run(c, q, o);
	snapshot_unref(s);
}

static void admin_read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	char err[128];
	uint8_t head[5];
	struct pg_msg m;

	while (c->state == CONN_ADMIN && !c->closing) {
		size_t len = evbuffer_get_length(in);
		if (len < 5)
			return;
		evbuffer_copyout(in, head, 5);
		if (pg_read_msg(head, 5, ADMIN_QUERY_MAX, &m, err, sizeof(err)) == PG_BAD) {
			conn_fail(c, "08P01", "protocol violation", "%s", err);
			return;
		}
		size_t total = (size_t)pg_get_u32(head + 1) + 1;
		if (len < total)
			return;
		uint8_t *p = evbuffer_pullup(in, (ssize_t)total);
		pg_read_msg(p, total, ADMIN_QUERY_MAX, &m, err, sizeof(err));
		struct admin_out o = {0};
		if (m.type == PG_MSG_TERMINATE) {
			conn_close(c, "admin logged out");
			return;
		}
		if (m.type == 'Q' && m.body_len > 0 && m.body[m.body_len - 1] == '\0') {
			char q[ADMIN_QUERY_MAX];
			memcpy(q, m.body, m.body_len);
			evbuffer_drain(in, total);
			admin_query(c, q, &o);
			admin_ready(&o.b);
		} else if (m.type == 'S') { /* Sync after a refused extended-protocol message */
			evbuffer_drain(in, total);
			admin_ready(&o.b);
		} else {
			evbuffer_drain(in, total);
			if (c->admin_ignore_until_sync)
				continue;
			c->admin_ignore_until_sync = m.type != 'Q';
			pg_put_error(&o.b, "ERROR", "0A000", "the admin console takes simple queries only", NULL, NULL);
			if (m.type == 'Q')
				admin_ready(&o.b);
		}
		if (m.type == 'S')
			c->admin_ignore_until_sync = false;
		if (c->state == CONN_CLOSED) { /* a KILL from another console, served while this one gathered */
			pgbuf_free(&o.b);
			return;
		}
		if (!conn_send(c, &o.b))
			return;
	}
}

static void admin_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;
	if (c->state != CONN_CLOSED)
		conn_close(c, "admin closed the connection");
}

void admin_start(struct conn *c)
{
	struct pgbuf b = {0};
	static const char *const params[][2] = {
		{"server_version", "15.0 (pglane " PGLANE_VERSION ")"},
		{"server_encoding", "UTF8"},
		{"client_encoding", "UTF8"},
		{"DateStyle", "ISO, MDY"},
		{"integer_datetimes", "on"},
		{"standard_conforming_strings", "on"},
	};

	c->state = CONN_ADMIN;
	if (c->timer)
		evtimer_del(c->timer);
	conn_login_done(c);
	for (size_t i = 0; i < NCOLS(params); i++) {
		size_t off = pgbuf_begin(&b, PG_MSG_PARAMETER_STATUS);
		pgbuf_put_str(&b, params[i][0]);
		pgbuf_put_str(&b, params[i][1]);
		pgbuf_end(&b, off);
	}
	admin_ready(&b);
	log_conn(LOG_INFO, c, "admin console");
	if (!conn_send(c, &b))
		return;
	bufferevent_setcb(c->client, admin_read_cb, NULL, admin_event_cb, c);
	bufferevent_enable(c->client, EV_READ);
	admin_read_cb(c->client, c);
}
