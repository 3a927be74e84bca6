/*
 * conf: reads pglane.ini into one immutable struct conf, or explains every problem in it.
 *
 * inih does the key = value splitting; everything else happens here.  inih's handler is not told the line
 * number, so conf_read_line() (the ini_reader) hands inih one line at a time and counts them, and it also
 * takes the section headers for itself: that is how an empty or repeated section is noticed and how a
 * section-level problem gets the header's line.  Keys are collected raw per section and converted when the
 * section ends, so an instance's individual keys override its url whatever their order.  Cross-section
 * checks (an app's instance) run after the last line.  Errors never stop the parse: each becomes one
 * "file:line: message" line and conf_load() returns NULL when there was any.
 */
#include "conf/conf.h"

#include "routing/timeline.h"

#include <errno.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ini.h>
#include <libpq-fe.h>

#ifndef PGLANE_DATADIR
#define PGLANE_DATADIR "." /* where certs/ is installed; the build may override it */
#endif
#define AWS_RDS_BUNDLE_ENV  "PGLANE_AWS_RDS_BUNDLE"
#define AWS_RDS_BUNDLE_PATH PGLANE_DATADIR "/certs/aws-rds-global-bundle.pem"
#define MAX_SECONDS         86400 /* upper bound of every timeout */
#define MAX_KEYS            32    /* keys of the largest section */

enum section_kind { SEC_NONE, SEC_PGLANE, SEC_INSTANCE, SEC_APP, SEC_UNKNOWN };

enum pglane_key {
	GK_LISTEN,
	GK_PUBLIC_HOST,
	GK_PUBLIC_PORT,
	GK_CONNECT_TIMEOUT,
	GK_LOGIN_TIMEOUT,
	GK_SHUTDOWN_TIMEOUT,
	GK_MAX_CLIENTS,
	GK_MAX_PACKET_SIZE,
	GK_WORKERS,
	GK_TLS_MODE,
	GK_TLS_CERT,
	GK_TLS_KEY,
	GK_TLS_MIN_VERSION,
	GK_CLIENT_CA,
	GK_CLIENT_CA_KEY,
	GK_CLIENT_CRL,
	GK_ALLOW_CLEARTEXT,
	GK_ADMIN_USER,
	GK_ADMIN_PASSWORD,
	GK_HTTP_LISTEN,
	GK_LOG_FORMAT,
	GK_LOG_LEVEL,
	GK_LOG_FILE,
	GK_CLIENT_IDLE_TIMEOUT,
	GK_CLIENT_WRITE_TIMEOUT,
	GK_KERNEL_RELAY,
	GK_SERVER_IDLE_TIMEOUT,
	GK_POOL_MODE,
	GK_POOL_SIZE,
	GK_QUERY_WAIT_TIMEOUT,
	GK_MAX_PREPARED_STATEMENTS,
	GK_N
};
static const char *const pglane_keys[GK_N + 1] = {
    "listen",          "public_host",      "public_port",    "connect_timeout",
    "login_timeout",   "shutdown_timeout", "max_clients",    "max_packet_size",
    "workers",         "tls_mode",         "tls_cert",       "tls_key",
    "tls_min_version", "client_ca",        "client_ca_key",  "client_crl",
    "allow_cleartext", "admin_user",       "admin_password", "http_listen",
    "log_format",      "log_level",        "log_file",       "client_idle_timeout",
    "client_write_timeout", "kernel_relay",     "server_idle_timeout",
    "pool_mode",       "pool_size",        "query_wait_timeout", "max_prepared_statements", NULL};

enum instance_key {
	IK_URL,
	IK_HOST,
	IK_PORT,
	IK_USER,
	IK_PASSWORD,
	IK_DBNAME,
	IK_SSLMODE,
	IK_CA_FILE,
	IK_CA,
	IK_CLIENT_CERT,
	IK_CLIENT_KEY,
	IK_N
};
static const char *const instance_keys[IK_N + 1] = {"url",      "host",        "port",       "user",
                                                    "password", "dbname",      "sslmode",    "ca_file",
                                                    "ca",       "client_cert", "client_key", NULL};
/* The libpq connection parameter each key takes its value from when only the url sets it. */
static const char *const instance_libpq[IK_N] = {
    [IK_HOST] = "host",           [IK_PORT] = "port",           [IK_USER] = "user",
    [IK_PASSWORD] = "password",   [IK_DBNAME] = "dbname",       [IK_SSLMODE] = "sslmode",
    [IK_CA_FILE] = "sslrootcert", [IK_CLIENT_CERT] = "sslcert", [IK_CLIENT_KEY] = "sslkey",
};

enum app_key {
	AK_INSTANCE,
	AK_SECRET,
	AK_PRODUCTION_BRANCH,
	AK_PROVISION,
	AK_OWNER,
	AK_TEMPLATE,
	AK_MIGRATE,
	AK_MAX_CLIENTS,
	AK_POOL_MODE,
	AK_N
};
static const char *const app_keys[AK_N + 1] = {"instance",  "secret",      "production_branch",
                                               "provision", "owner",       "template",
                                               "migrate",   "max_clients", "pool_mode",
                                               NULL};

static const char *const sslmode_names[] = {"disable",   "allow",       "prefer", "require",
                                            "verify-ca", "verify-full", NULL};
static const char *const tls_mode_names[] = {"disable", "allow", "require", NULL};
static const char *const tls_version_names[] = {"TLSv1.2", "TLSv1.3", NULL};
static const char *const ca_names[] = {"system", "aws-rds", NULL};
static const char *const provision_names[] = {"auto", "manual", NULL};
static const char *const log_format_names[] = {"text", "json", NULL};
static const char *const log_level_names[] = {"debug", "info", "warning", "error", NULL};
static const char *const kernel_relay_names[] = {"off", "auto", "on", NULL};
static const char *const pool_mode_names[] = {"session", "transaction", NULL};
static const char *const bool_names[] = {"false", "true", "no", "yes", "off", "on", "0", "1", NULL};

/* Lines of text appended to a caller's buffer: whole lines only, except that the first is cut to fit. */
struct msgbuf {
	char *buf;   /* borrowed */
	size_t size; /* of buf */
	size_t used; /* bytes written, without the NUL */
	bool full;   /* a line did not fit: the rest are dropped */
};

/* One error, kept until the end so that the caller gets them in line order. */
struct conf_msg {
	int line;
	size_t seq; /* order of discovery, to keep sorting stable */
	char *text; /* owned */
};

struct parser {
	struct conf *c;        /* owned until returned */
	const char *name;      /* borrowed: the file name in messages */
	const char *base_dir;  /* borrowed, may be NULL: relative paths resolve against it */
	const char *pos;       /* borrowed: the next unread byte of the text */
	int line;              /* the line conf_read_line() returned last */
	struct conf_msg *msgs; /* owned: the errors so far */
	size_t nmsgs;
	int nerr;                /* errors so far, including any that could not be stored */
	enum section_kind sec;   /* the section being read */
	char sec_title[128];     /* "[app myapp]", for messages */
	int sec_line;            /* its header's line */
	bool seen_pglane;        /* a [pglane] section was read */
	const char *const *keys; /* borrowed: the keys the current section accepts */
	char *val[MAX_KEYS];     /* owned: the current section's raw values, NULL when unset */
	int val_line[MAX_KEYS];  /* line of each value, 0 when unset */
	bool from_url[MAX_KEYS]; /* the value came from the instance's url, not from its own key */
	int *app_instance_line;  /* owned: line of each app's instance key, for errors after the last line */
};

static void msgbuf_add(struct msgbuf *m, const char *line)
{
	size_t len = strlen(line), sep = m->used > 0;

	if (m->size == 0 || m->full)
		return;
	if (m->used + sep + len >= m->size) {
		m->full = true;
		if (m->used > 0)
			return;
		len = m->size - 1;
	}
	if (sep)
		m->buf[m->used++] = '\n';
	memcpy(m->buf + m->used, line, len);
	m->used += len;
	m->buf[m->used] = '\0';
}

/* Records one error at line (0: about the whole file). */
__attribute__((format(printf, 3, 4))) static void conf_error(struct parser *p, int line, const char *fmt, ...)
{
	char msg[512], text[640];
	struct conf_msg *m;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (line > 0)
		snprintf(text, sizeof(text), "%s:%d: %s", p->name, line, msg);
	else
		snprintf(text, sizeof(text), "%s: %s", p->name, msg);
	p->nerr++;
	if (!(m = realloc(p->msgs, (p->nmsgs + 1) * sizeof(*m))))
		return;
	p->msgs = m;
	m += p->nmsgs;
	m->line = line;
	m->seq = p->nmsgs;
	if ((m->text = strdup(text)))
		p->nmsgs++;
}

static int msg_cmp(const void *a, const void *b)
{
	const struct conf_msg *x = a, *y = b;

	if (x->line != y->line)
		return x->line < y->line ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Writes the errors into the caller's buffer, sorted by line, and frees them. */
static void flush_errors(struct parser *p, char *err, size_t errlen)
{
	struct msgbuf m = {.buf = err, .size = errlen};
	char oom[256];

	if (p->nmsgs > 0)
		qsort(p->msgs, p->nmsgs, sizeof(*p->msgs), msg_cmp);
	for (size_t i = 0; i < p->nmsgs; i++) {
		msgbuf_add(&m, p->msgs[i].text);
		free(p->msgs[i].text);
	}
	free(p->msgs);
	if ((size_t)p->nerr > p->nmsgs) {
		snprintf(oom, sizeof(oom), "%s: out of memory", p->name);
		msgbuf_add(&m, oom);
	}
}

/* Records an error about key k of the current section, naming the url's parameter when it came from there. */
__attribute__((format(printf, 3, 4))) static void key_error(struct parser *p, int k, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (p->from_url[k])
		conf_error(p, p->val_line[k], "url: %s: %s", instance_libpq[k], msg);
	else
		conf_error(p, p->val_line[k], "%s: %s", p->keys[k], msg);
}

static char *conf_strdup(struct parser *p, const char *s)
{
	char *d = strdup(s);

	if (!d)
		conf_error(p, p->line, "out of memory");
	return d;
}

static void *conf_grow(struct parser *p, void *arr, size_t n, size_t size)
{
	void *a = realloc(arr, (n + 1) * size);

	if (!a) {
		conf_error(p, p->line, "out of memory");
		return NULL;
	}
	memset((char *)a + n * size, 0, size);
	return a;
}

static int name_index(const char *const *names, const char *s)
{
	for (int i = 0; names[i]; i++)
		if (strcmp(names[i], s) == 0)
			return i;
	return -1;
}

/* "a, b or c" */
static void names_list(const char *const *names, char *out, size_t outlen)
{
	size_t used = 0;

	out[0] = '\0';
	for (int i = 0; names[i] && used < outlen; i++)
		used += snprintf(out + used, outlen - used, "%s%s",
		                 i == 0         ? ""
		                 : names[i + 1] ? ", "
		                                : " or ",
		                 names[i]);
}

/* The key's value, now owned by the caller (NULL when unset). */
static char *take(struct parser *p, int k)
{
	char *v = p->val[k];

	p->val[k] = NULL;
	return v;
}

static void take_string(struct parser *p, int k, char **dst)
{
	if (p->val[k]) {
		free(*dst);
		*dst = take(p, k);
	}
}

static void take_int(struct parser *p, int k, long min, long max, int *dst)
{
	const char *v = p->val[k];
	char *end;
	long n;

	if (!v)
		return;
	errno = 0;
	n = strtol(v, &end, 10);
	if (errno || end == v || *end || n < min || n > max)
		key_error(p, k, "\"%s\" is not a whole number from %ld to %ld", v, min, max);
	else
		*dst = (int)n;
}

/* Seconds in the file ("2", "0.5"), milliseconds in the struct. */
static void take_ms(struct parser *p, int k, int *dst)
{
	const char *v = p->val[k];
	char *end;
	double s;

	if (!v)
		return;
	s = strtod(v, &end);
	if (v[strspn(v, "0123456789.")] || end == v || *end || !(s > 0 && s <= MAX_SECONDS)) {
		key_error(p, k, "\"%s\" is not a number of seconds greater than 0 and at most %d", v,
		          MAX_SECONDS);
		return;
	}
	*dst = s * 1000 < 1 ? 1 : (int)(s * 1000 + 0.5);
}

/* Index of the value in names (NULL-terminated), or -1 (error recorded) or -2 (unset). */
static int take_choice(struct parser *p, int k, const char *const *names)
{
	char list[256];
	int i;

	if (!p->val[k])
		return -2;
	i = name_index(names, p->val[k]);
	if (i < 0) {
		names_list(names, list, sizeof(list));
		key_error(p, k, "\"%s\" is not %s", p->val[k], list);
	}
	return i;
}

/* A choice kept as its string, such as log_level. */
static void take_choice_string(struct parser *p, int k, const char *const *names, char **dst)
{
	if (take_choice(p, k, names) >= 0)
		take_string(p, k, dst);
}

static void take_bool(struct parser *p, int k, bool *dst)
{
	int i = take_choice(p, k, bool_names);

	if (i >= 0)
		*dst = i % 2;
}

/* base_dir/path for a relative path; the result is owned by the caller. */
static char *resolve_path(struct parser *p, const char *path)
{
	char *out;

	if (path[0] == '/' || !p->base_dir)
		return conf_strdup(p, path);
	if (asprintf(&out, "%s/%s", p->base_dir, path) < 0) {
		conf_error(p, p->line, "out of memory");
		return NULL;
	}
	return out;
}

/* A path key, resolved; with must_read, the file must be readable now (certificates, keys, CRLs). */
static void take_path(struct parser *p, int k, bool must_read, char **dst)
{
	char *path;

	if (!p->val[k] || !(path = resolve_path(p, p->val[k])))
		return;
	if (must_read && access(path, R_OK) != 0) {
		key_error(p, k, "cannot read %s: %s", path, strerror(errno));
		free(path);
		return;
	}
	free(*dst);
	*dst = path;
}

static void parse_listen(struct parser *p)
{
	struct conf *c = p->c;
	char *list = p->val[GK_LISTEN], *save = NULL, *tok, why[256];

	for (tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		struct conf_listen *l;

		tok += strspn(tok, " \t");
		tok[strcspn(tok, " \t")] = '\0';
		if (!(l = conf_grow(p, c->listen, c->nlisten, sizeof(*l))))
			return;
		c->listen = l;
		if (!conf_parse_hostport(tok, &l[c->nlisten].host, &l[c->nlisten].port, why, sizeof(why))) {
			key_error(p, GK_LISTEN, "%s", why);
			return;
		}
		c->nlisten++;
	}
	if (c->nlisten == 0)
		key_error(p, GK_LISTEN, "no address given");
}

static void finish_pglane(struct parser *p)
{
	struct conf *c = p->c;
	const int *line = p->val_line;
	char *host, *port, why[256];
	int mode;

	if (p->val[GK_LISTEN])
		parse_listen(p);
	take_string(p, GK_PUBLIC_HOST, &c->public_host);
	take_int(p, GK_PUBLIC_PORT, 1, 65535, &c->public_port);
	take_ms(p, GK_CONNECT_TIMEOUT, &c->connect_timeout_ms);
	take_ms(p, GK_LOGIN_TIMEOUT, &c->login_timeout_ms);
	take_ms(p, GK_SHUTDOWN_TIMEOUT, &c->shutdown_timeout_ms);
	take_int(p, GK_CLIENT_IDLE_TIMEOUT, 0, MAX_SECONDS, &c->client_idle_timeout_s);
	take_int(p, GK_CLIENT_WRITE_TIMEOUT, 1, MAX_SECONDS, &c->client_write_timeout_s);
	take_int(p, GK_SERVER_IDLE_TIMEOUT, 0, MAX_SECONDS, &c->server_idle_timeout_s);
	take_int(p, GK_MAX_CLIENTS, 1, 1000000, &c->max_clients);
	take_int(p, GK_MAX_PACKET_SIZE, 1024, 1 << 30, &c->max_packet_size);
	take_int(p, GK_WORKERS, 0, 1024, &c->workers);
	if ((mode = take_choice(p, GK_KERNEL_RELAY, kernel_relay_names)) >= 0)
		c->kernel_relay = (enum kernel_relay)mode;
	if ((mode = take_choice(p, GK_POOL_MODE, pool_mode_names)) >= 0) {
		c->pool_mode = (enum pool_mode)mode;
		c->pool_mode_line = line[GK_POOL_MODE];
	}
	take_int(p, GK_POOL_SIZE, 1, 100000, &c->pool_size);
	take_int(p, GK_QUERY_WAIT_TIMEOUT, 0, MAX_SECONDS, &c->query_wait_timeout_s);
	take_int(p, GK_MAX_PREPARED_STATEMENTS, 0, 100000, &c->max_prepared_statements);
	take_path(p, GK_TLS_CERT, true, &c->tls_cert);
	take_path(p, GK_TLS_KEY, true, &c->tls_key);
	take_path(p, GK_CLIENT_CA, true, &c->client_ca);
	take_path(p, GK_CLIENT_CA_KEY, true, &c->client_ca_key);
	take_path(p, GK_CLIENT_CRL, true, &c->client_crl);
	take_choice_string(p, GK_TLS_MIN_VERSION, tls_version_names, &c->tls_min_version);
	take_bool(p, GK_ALLOW_CLEARTEXT, &c->allow_cleartext);
	take_string(p, GK_ADMIN_USER, &c->admin_user);
	take_string(p, GK_ADMIN_PASSWORD, &c->admin_password);
	if (p->val[GK_HTTP_LISTEN]) {
		if (conf_parse_hostport(p->val[GK_HTTP_LISTEN], &host, &port, why, sizeof(why))) {
			free(host);
			free(port);
			take_string(p, GK_HTTP_LISTEN, &c->http_listen);
		} else {
			key_error(p, GK_HTTP_LISTEN, "%s", why);
		}
	}
	take_choice_string(p, GK_LOG_FORMAT, log_format_names, &c->log_format);
	take_choice_string(p, GK_LOG_LEVEL, log_level_names, &c->log_level);
	if (p->val[GK_LOG_FILE] && strcmp(p->val[GK_LOG_FILE], "syslog") == 0)
		c->log_file = strdup("syslog"); /* not a path: log to syslog */
	else
		take_path(p, GK_LOG_FILE, false, &c->log_file);

	/* What was written decides these checks, even where the value itself was bad. */
	if (line[GK_TLS_CERT] && !line[GK_TLS_KEY])
		conf_error(p, line[GK_TLS_CERT], "tls_cert needs tls_key");
	if (line[GK_TLS_KEY] && !line[GK_TLS_CERT])
		conf_error(p, line[GK_TLS_KEY], "tls_key needs tls_cert");
	mode = take_choice(p, GK_TLS_MODE, tls_mode_names);
	if (mode == -2)
		c->tls_mode = line[GK_TLS_CERT] ? TLS_MODE_ALLOW : TLS_MODE_DISABLE;
	else if (mode >= 0)
		c->tls_mode = mode;
	if (mode > 0 && !line[GK_TLS_CERT])
		conf_error(p, line[GK_TLS_MODE], "tls_mode = %s needs tls_cert and tls_key",
		           tls_mode_names[mode]);
	if (line[GK_CLIENT_CA] && !line[GK_TLS_CERT])
		conf_error(p, line[GK_CLIENT_CA], "client_ca needs TLS: set tls_cert and tls_key");
	if (line[GK_CLIENT_CA_KEY] && !line[GK_CLIENT_CA])
		conf_error(p, line[GK_CLIENT_CA_KEY], "client_ca_key needs client_ca");
	if (line[GK_CLIENT_CRL] && !line[GK_CLIENT_CA])
		conf_error(p, line[GK_CLIENT_CRL], "client_crl needs client_ca");
}

/*
 * Copies the url's parameters into the instance's unset keys, so that keys win whatever their order.
 * Returns false when libpq could not parse the url at all.
 */
static bool merge_url(struct parser *p)
{
	PQconninfoOption *opts, *o;
	char *msg = NULL;
	int line = p->val_line[IK_URL], k;

	opts = PQconninfoParse(p->val[IK_URL], &msg);
	if (!opts) {
		if (msg)
			msg[strcspn(msg, "\n")] = '\0';
		conf_error(p, line, "url: %s", msg ? msg : "out of memory");
		PQfreemem(msg);
		return false;
	}
	for (o = opts; o->keyword; o++) {
		if (!o->val || !o->val[0])
			continue;
		for (k = 0; k < IK_N && !(instance_libpq[k] && strcmp(instance_libpq[k], o->keyword) == 0);
		     k++)
			;
		if (k == IK_N)
			conf_error(
			    p, line,
			    "url: parameter \"%s\" is not supported here (only host, port, user, password, "
			    "dbname, sslmode, sslrootcert, sslcert and sslkey)",
			    o->keyword);
		else if (!p->val_line[k] && (p->val[k] = conf_strdup(p, o->val))) {
			p->val_line[k] = line;
			p->from_url[k] = true;
		}
	}
	PQconninfoFree(opts);
	return true;
}

static void finish_instance(struct parser *p)
{
	struct conf_instance *in = &p->c->instances[p->c->ninstances - 1];
	const char *bundle;
	int i;

	if (p->val[IK_URL] && !merge_url(p))
		; /* a missing host would only repeat the url's error */
	else if (!p->val_line[IK_HOST])
		conf_error(p, p->sec_line, "%s has no host: set host or url", p->sec_title);
	else if (p->val[IK_HOST] && strchr(p->val[IK_HOST], ','))
		key_error(p, IK_HOST, "\"%s\": one host per instance", p->val[IK_HOST]);
	else
		take_string(p, IK_HOST, &in->host);
	take_int(p, IK_PORT, 1, 65535, &in->port);
	take_string(p, IK_USER, &in->user);
	take_string(p, IK_PASSWORD, &in->password);
	take_string(p, IK_DBNAME, &in->dbname);
	if ((i = take_choice(p, IK_SSLMODE, sslmode_names)) >= 0)
		in->sslmode = i;

	if (p->val_line[IK_CA] && p->from_url[IK_CA_FILE]) {
		free(take(p, IK_CA_FILE)); /* the ca key overrides the url's sslrootcert */
		p->val_line[IK_CA_FILE] = 0;
	}
	if (p->val_line[IK_CA] && p->val_line[IK_CA_FILE]) {
		key_error(p, IK_CA, "set ca or ca_file, not both");
	} else if ((i = take_choice(p, IK_CA, ca_names)) == 0 ||
	           (p->val[IK_CA_FILE] && strcmp(p->val[IK_CA_FILE], "system") == 0)) {
		in->ca = CA_SOURCE_SYSTEM; /* libpq spells ca = system as sslrootcert=system */
	} else if (i == 1) {
		bundle = getenv(AWS_RDS_BUNDLE_ENV);
		if (!bundle || !bundle[0])
			bundle = AWS_RDS_BUNDLE_PATH;
		if (access(bundle, R_OK) != 0)
			key_error(p, IK_CA,
			          "the Amazon RDS bundle %s is missing (%s); install certs/ or set %s",
			          bundle, strerror(errno), AWS_RDS_BUNDLE_ENV);
		else if ((in->ca_file = conf_strdup(p, bundle)))
			in->ca = CA_SOURCE_AWS_RDS;
	} else {
		take_path(p, IK_CA_FILE, true, &in->ca_file);
		if (in->ca_file)
			in->ca = CA_SOURCE_FILE;
	}
	if ((in->sslmode == SSLMODE_VERIFY_CA || in->sslmode == SSLMODE_VERIFY_FULL) && !p->val_line[IK_CA] &&
	    !p->val_line[IK_CA_FILE])
		key_error(p, IK_SSLMODE, "%s needs a CA: set ca_file, or ca = system or aws-rds",
		          sslmode_str(in->sslmode));

	if (p->val_line[IK_CLIENT_CERT] && !p->val_line[IK_CLIENT_KEY])
		key_error(p, IK_CLIENT_CERT, "needs client_key as well");
	if (p->val_line[IK_CLIENT_KEY] && !p->val_line[IK_CLIENT_CERT])
		key_error(p, IK_CLIENT_KEY, "needs client_cert as well");
	take_path(p, IK_CLIENT_CERT, true, &in->client_cert);
	take_path(p, IK_CLIENT_KEY, true, &in->client_key);
}

static void finish_app(struct parser *p)
{
	struct conf_app *app = &p->c->apps[p->c->napps - 1];
	char why[256];
	int i;

	if (!p->val_line[AK_INSTANCE])
		conf_error(p, p->sec_line, "%s has no instance", p->sec_title);
	if (!p->val_line[AK_SECRET])
		conf_error(p, p->sec_line, "%s has no secret", p->sec_title);
	p->app_instance_line[p->c->napps - 1] = p->val_line[AK_INSTANCE];
	take_string(p, AK_INSTANCE, &app->instance_name);
	take_string(p, AK_SECRET, &app->secret);
	if (p->val[AK_PRODUCTION_BRANCH] &&
	    !branch_name_valid(p->val[AK_PRODUCTION_BRANCH], why, sizeof(why)))
		key_error(p, AK_PRODUCTION_BRANCH, "%s", why);
	else
		take_string(p, AK_PRODUCTION_BRANCH, &app->production_branch);
	if ((i = take_choice(p, AK_PROVISION, provision_names)) >= 0)
		app->provision = i;
	for (int k = AK_OWNER; k <= AK_TEMPLATE; k++)
		if (p->val[k] && strlen(p->val[k]) >= PG_NAMEDATALEN)
			key_error(p, k, "\"%s\" is longer than %d bytes", p->val[k], PG_NAMEDATALEN - 1);
	take_string(p, AK_OWNER, &app->owner);
	take_string(p, AK_TEMPLATE, &app->template_db);
	take_string(p, AK_MIGRATE, &app->migrate);
	take_int(p, AK_MAX_CLIENTS, 0, 1000000, &app->max_clients);
	if ((i = take_choice(p, AK_POOL_MODE, pool_mode_names)) >= 0) {
		app->pool_mode = (enum pool_mode)i;
		app->pool_mode_line = p->val_line[AK_POOL_MODE];
	}
}

/* Converts the section just read and forgets its raw values. */
static void section_end(struct parser *p)
{
	switch (p->sec) {
	case SEC_PGLANE:
		finish_pglane(p);
		break;
	case SEC_INSTANCE:
		finish_instance(p);
		break;
	case SEC_APP:
		finish_app(p);
		break;
	case SEC_NONE:
	case SEC_UNKNOWN:
		break;
	}
	for (int k = 0; k < MAX_KEYS; k++)
		free(p->val[k]);
	memset(p->val, 0, sizeof(p->val));
	memset(p->val_line, 0, sizeof(p->val_line));
	memset(p->from_url, 0, sizeof(p->from_url));
	p->sec = SEC_UNKNOWN;
	p->keys = NULL;
}

static bool begin_instance(struct parser *p, const char *name)
{
	struct conf *c = p->c;
	struct conf_instance *in;
	const struct conf_instance *dup = conf_instance_find(c, name);

	if (dup) {
		conf_error(p, p->line, "duplicate section [instance %s] (first at line %d)", name, dup->line);
		return false;
	}
	if (!(in = conf_grow(p, c->instances, c->ninstances, sizeof(*in))))
		return false;
	c->instances = in;
	in += c->ninstances;
	if (!(in->name = conf_strdup(p, name)))
		return false;
	c->ninstances++;
	in->line = p->line;
	in->port = 5432;
	in->sslmode = SSLMODE_PREFER;
	in->user = conf_strdup(p, "postgres");
	in->dbname = conf_strdup(p, "postgres");
	p->keys = instance_keys;
	return true;
}

static bool begin_app(struct parser *p, const char *id)
{
	struct conf *c = p->c;
	struct conf_app *app;
	const struct conf_app *dup = conf_app_find(c, id);
	char why[256];
	int *lines;

	if (dup) {
		conf_error(p, p->line, "duplicate section [app %s] (first at line %d)", id, dup->line);
		return false;
	}
	if (!app_id_valid(id, why, sizeof(why)))
		conf_error(p, p->line, "%s", why);
	if (!(lines = conf_grow(p, p->app_instance_line, c->napps, sizeof(*lines))))
		return false;
	p->app_instance_line = lines;
	if (!(app = conf_grow(p, c->apps, c->napps, sizeof(*app))))
		return false;
	c->apps = app;
	app += c->napps;
	if (!(app->id = conf_strdup(p, id)))
		return false;
	c->napps++;
	app->line = p->line;
	app->provision = PROVISION_AUTO;
	p->keys = app_keys;
	return true;
}

/* Ends the current section and starts the one whose header is hdr (the text between the brackets). */
static void section_begin(struct parser *p, char *hdr)
{
	char *type = hdr + strspn(hdr, " \t"), *name;
	size_t n;

	section_end(p);
	for (n = strlen(type); n > 0 && strchr(" \t", type[n - 1]); n--)
		type[n - 1] = '\0';
	name = type + strcspn(type, " \t");
	if (*name) {
		*name++ = '\0';
		name += strspn(name, " \t");
	}
	snprintf(p->sec_title, sizeof(p->sec_title), *name ? "[%s %s]" : "[%s]", type, name);
	p->sec_line = p->line;

	if (strcmp(type, "pglane") == 0 && !*name) {
		if (p->seen_pglane) {
			conf_error(p, p->line, "duplicate section [pglane]");
			return;
		}
		p->seen_pglane = true;
		p->keys = pglane_keys;
		p->sec = SEC_PGLANE;
	} else if ((strcmp(type, "instance") == 0 || strcmp(type, "app") == 0) &&
	           (!*name || name[strcspn(name, " \t")])) {
		conf_error(p, p->line, "section [%s] needs one name: [%s NAME]", type, type);
	} else if (strcmp(type, "instance") == 0) {
		if (begin_instance(p, name))
			p->sec = SEC_INSTANCE;
	} else if (strcmp(type, "app") == 0) {
		if (begin_app(p, name))
			p->sec = SEC_APP;
	} else {
		conf_error(p, p->line, "unknown section %s: expected [pglane], [instance NAME] or [app ID]",
		           p->sec_title);
	}
}

/*
 * The ini_reader: copies the next line into buf for inih and counts it.  Section headers are handled here
 * and reach inih as empty lines, as do lines with an error of their own (too long for inih's buffer, not
 * "key = value"), so inih itself never fails and every handler call is a key of the current section.
 * Leading blanks are dropped, which also keeps inih from joining indented lines as continuations.
 */
static char *conf_read_line(char *buf, int size, void *stream)
{
	struct parser *p = stream;
	const char *start = p->pos, *s, *sep;
	size_t len, content;

	if (*start == '\0')
		return NULL;
	p->line++;
	len = strcspn(start, "\n");
	p->pos = start + len + (start[len] == '\n');
	s = start + strspn(start, " \t");
	for (content = len - (size_t)(s - start); content > 0 && strchr(" \t\r", s[content - 1]); content--)
		;
	strcpy(buf, "\n");
	if (content + 2 > (size_t)size) {
		conf_error(p, p->line, "line is longer than %d bytes", size - 2);
		return buf;
	}
	memcpy(buf, s, content);
	strcpy(buf + content, "\n");
	if (content == 0 || buf[0] == ';' || buf[0] == '#')
		return buf;
	if (buf[0] == '[') {
		char *close = strchr(buf, ']');

		if (close) {
			*close = '\0';
			section_begin(p, buf + 1);
		} else {
			conf_error(p, p->line, "section header without ']'");
		}
		strcpy(buf, "\n");
		return buf;
	}
	/* inih wants '=' or ':' before any inline comment (";" after a blank). */
	for (sep = buf; *sep && !strchr("=:", *sep) && !(*sep == ';' && strchr(" \t", sep[-1])); sep++)
		;
	if (!*sep || *sep == ';') {
		conf_error(p, p->line, "expected \"key = value\" or a [section]");
		strcpy(buf, "\n");
	}
	return buf;
}

/* The ini_handler: records a key of the current section, unconverted. */
static int conf_handle(void *user, const char *section, const char *key, const char *value)
{
	struct parser *p = user;
	int k;

	if (p->sec == SEC_UNKNOWN)
		return 1; /* the header's error is enough */
	if (p->sec == SEC_NONE) {
		conf_error(p, p->line, "\"%s\" comes before any section", key);
		return 1;
	}
	k = name_index(p->keys, key);
	if (k < 0)
		conf_error(p, p->line, "unknown key \"%s\" in %s", key, p->sec_title);
	else if (p->val_line[k])
		conf_error(p, p->line, "duplicate key \"%s\" (first at line %d)", key, p->val_line[k]);
	else if (!value[0])
		conf_error(p, p->line, "%s has no value", key);
	else
		p->val[k] = conf_strdup(p, value);
	if (k >= 0 && !p->val_line[k])
		p->val_line[k] =
		    p->line; /* written, even if wrongly: later checks need not repeat the error */
	return 1;
}

/* Defaults that depend on the whole file, and each app's instance. */
static void conf_finish(struct parser *p)
{
	struct conf *c = p->c;
	struct conf_listen *l;
	bool told_global = false;

	if (c->nlisten == 0 && (l = conf_grow(p, c->listen, 0, sizeof(*l)))) {
		c->listen = l;
		c->nlisten = 1;
		l->host = conf_strdup(p, "127.0.0.1");
		l->port = conf_strdup(p, "6432");
	}
	if (c->nlisten > 0 && c->listen[0].host && c->listen[0].port) {
		if (!c->public_host)
			c->public_host = conf_strdup(p, c->listen[0].host);
		if (!c->public_port)
			c->public_port = atoi(c->listen[0].port);
	}
	for (size_t i = 0; i < c->napps; i++) {
		struct conf_app *app = &c->apps[i];

		if (!app->pool_mode_line)
			app->pool_mode = c->pool_mode;
		/* A transaction-mode session leaves its server connection idle after each transaction: it must
		 * be allowed to wait for the next. */
		if (app->pool_mode == POOL_MODE_TRANSACTION && c->server_idle_timeout_s == 0 &&
		    (app->pool_mode_line || !told_global)) {
			told_global |= !app->pool_mode_line;
			conf_error(p, app->pool_mode_line ? app->pool_mode_line : c->pool_mode_line,
			           "pool_mode = transaction needs server_idle_timeout above 0 (it is 0)");
		}
		if (!app->instance_name)
			continue;
		app->instance = (struct conf_instance *)conf_instance_find(c, app->instance_name);
		if (app->instance)
			app->instance->used = true;
		else
			conf_error(p, p->app_instance_line[i],
			           "instance \"%s\" is not defined (no [instance %s])", app->instance_name,
			           app->instance_name);
	}
}

struct conf *conf_load_string(const char *text, const char *name, const char *base_dir, char *err,
                              size_t errlen)
{
	struct parser p = {
	    .name = name,
	    .base_dir = base_dir,
	    .pos = text,
	    .sec = SEC_NONE,
	};
	struct conf *c;
	int rc;

	if (errlen > 0)
		err[0] = '\0';
	if (!(c = p.c = calloc(1, sizeof(*c))) || !(c->path = strdup(name)) ||
	    !(c->tls_min_version = strdup(tls_version_names[0])) || !(c->log_format = strdup("text")) ||
	    !(c->log_level = strdup("info"))) {
		conf_free(c);
		snprintf(err, errlen, "%s: out of memory", name);
		return NULL;
	}
	c->connect_timeout_ms = 10000;
	c->login_timeout_ms = 15000;
	c->shutdown_timeout_ms = 30000;
	c->client_write_timeout_s = 60;
	c->server_idle_timeout_s = 60;
	c->pool_size = 20;
	c->max_prepared_statements = 200;
	c->query_wait_timeout_s = 120;
	c->max_clients = 10000;
	c->max_packet_size = 65536;
	if (strncmp(p.pos, "\xEF\xBB\xBF", 3) == 0)
		p.pos += 3;
	rc = ini_parse_stream(conf_read_line, &p, conf_handle, &p);
	section_end(&p);
	if (rc != 0)
		conf_error(&p, rc > 0 ? rc : 0, rc > 0 ? "syntax error" : "out of memory");
	conf_finish(&p);
	free(p.app_instance_line);
	flush_errors(&p, err, errlen);
	if (p.nerr > 0) {
		conf_free(c);
		return NULL;
	}
	return c;
}

struct conf *conf_load(const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	char *text = NULL, *dir = NULL, *grown;
	size_t len = 0, cap = 0, n;
	struct conf *c = NULL;

	if (!f) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return NULL;
	}
	do {
		if (len + 1 >= cap) {
			cap = cap ? cap * 2 : 8192;
			if (!(grown = realloc(text, cap))) {
				snprintf(err, errlen, "%s: out of memory", path);
				goto out;
			}
			text = grown;
		}
		n = fread(text + len, 1, cap - len - 1, f);
		len += n;
	} while (n > 0);
	if (ferror(f)) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		goto out;
	}
	text[len] = '\0';
	if (strlen(text) != len) {
		snprintf(err, errlen, "%s: contains a NUL byte", path);
		goto out;
	}
	if (!(dir = strdup(path))) {
		snprintf(err, errlen, "%s: out of memory", path);
		goto out;
	}
	c = conf_load_string(text, path, dirname(dir), err, errlen);
out:
	fclose(f);
	free(text);
	free(dir);
	return c;
}

void conf_free(struct conf *c)
{
	if (!c)
		return;
	free(c->path);
	for (size_t i = 0; i < c->nlisten; i++) {
		free(c->listen[i].host);
		free(c->listen[i].port);
	}
	free(c->listen);
	free(c->public_host);
	free(c->tls_cert);
	free(c->tls_key);
	free(c->client_ca);
	free(c->client_ca_key);
	free(c->client_crl);
	free(c->tls_min_version);
	free(c->admin_user);
	free(c->admin_password);
	free(c->http_listen);
	free(c->log_format);
	free(c->log_level);
	free(c->log_file);
	for (size_t i = 0; i < c->ninstances; i++) {
		struct conf_instance *in = &c->instances[i];

		free(in->name);
		free(in->host);
		free(in->user);
		free(in->password);
		free(in->dbname);
		free(in->ca_file);
		free(in->client_cert);
		free(in->client_key);
	}
	free(c->instances);
	for (size_t i = 0; i < c->napps; i++) {
		struct conf_app *app = &c->apps[i];

		free(app->id);
		free(app->instance_name);
		free(app->secret);
		free(app->production_branch);
		free(app->owner);
		free(app->template_db);
		free(app->migrate);
	}
	free(c->apps);
	free(c);
}

const struct conf_app *conf_app_find(const struct conf *c, const char *id)
{
	for (size_t i = 0; i < c->napps; i++)
		if (strcmp(c->apps[i].id, id) == 0)
			return &c->apps[i];
	return NULL;
}

const struct conf_instance *conf_instance_find(const struct conf *c, const char *name)
{
	for (size_t i = 0; i < c->ninstances; i++)
		if (strcmp(c->instances[i].name, name) == 0)
			return &c->instances[i];
	return NULL;
}

int conf_warnings(const struct conf *c, char *warn, size_t warnlen)
{
	struct msgbuf m = {.buf = warn, .size = warnlen};
	bool secrets = c->admin_password || c->napps > 0;
	char line[1024];
	struct stat st;

	int n = 0;

	if (warnlen > 0)
		warn[0] = '\0';
	for (size_t i = 0; i < c->ninstances; i++)
		secrets = secrets || c->instances[i].password;
	if (secrets && stat(c->path, &st) == 0 && (st.st_mode & 077)) {
		snprintf(line, sizeof(line), "%s: mode %04o lets other users read the secrets in it; chmod 600 %s",
		         c->path, (unsigned)(st.st_mode & 07777), c->path);
		msgbuf_add(&m, line);
		n++;
	}
	/* Each worker opens at most pool_size / workers (rounded up) of a transaction pool's connections, and
	 * at least one: below workers, pool_size is not the bound it reads as. */
	bool txn = false;
	for (size_t a = 0; a < c->napps; a++)
		txn = txn || c->apps[a].pool_mode == POOL_MODE_TRANSACTION;
	long workers = c->workers > 0 ? c->workers : sysconf(_SC_NPROCESSORS_ONLN);
	if (txn && workers > c->pool_size) {
		snprintf(line, sizeof(line),
		         "%s: pool_size = %d is below workers (%ld): each worker opens at least one server connection "
		         "per transaction pool, so a pool may hold %ld; set workers = %d or raise pool_size",
		         c->path, c->pool_size, workers, workers, c->pool_size);
		msgbuf_add(&m, line);
		n++;
	}
	return n;
}

const char *sslmode_str(enum sslmode m)
{
	return (unsigned)m < sizeof(sslmode_names) / sizeof(sslmode_names[0]) - 1 ? sslmode_names[m]
	                                                                          : "unknown";
}

bool sslmode_parse(const char *s, enum sslmode *out)
{
	int i = name_index(sslmode_names, s);

	if (i < 0)
		return false;
	*out = i;
	return true;
}

bool conf_parse_hostport(const char *s, char **host, char **port, char *err, size_t errlen)
{
	const char *h = s, *colon, *close;
	size_t hlen;
	char *end;
	long n;

	if (s[0] == '[') {
		close = strchr(s, ']');
		if (!close || close[1] != ':') {
			snprintf(err, errlen, "\"%s\" is not [IPV6]:PORT", s);
			return false;
		}
		h = s + 1;
		colon = close + 1;
	} else if (!(colon = strrchr(s, ':'))) {
		snprintf(err, errlen, "\"%s\" has no port: write HOST:PORT", s);
		return false;
	} else if (memchr(s, ':', (size_t)(colon - s))) {
		snprintf(err, errlen, "\"%s\": put an IPv6 address in brackets, as in [::1]:6432", s);
		return false;
	}
	hlen = (size_t)((s[0] == '[' ? colon - 1 : colon) - h);
	if (hlen == 0) {
		snprintf(err, errlen, "\"%s\" has no host", s);
		return false;
	}
	errno = 0;
	n = strtol(colon + 1, &end, 10);
	if (colon[1] < '1' || colon[1] > '9' || *end || errno || n > 65535) {
		snprintf(err, errlen, "\"%s\": port \"%s\" is not a number from 1 to 65535", s, colon + 1);
		return false;
	}
	*host = strndup(h, hlen);
	*port = strdup(colon + 1);
	if (!*host || !*port) {
		free(*host);
		free(*port);
		*host = *port = NULL;
		snprintf(err, errlen, "out of memory");
		return false;
	}
	return true;
}
