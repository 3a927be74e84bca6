/*
 * conf: the ini file, read with inih into one immutable struct conf.
 *
 * A loaded conf is never modified; a reload builds a new one and the proxy swaps it in only when
 * conf_load() succeeded.  Connection URLs go through libpq's PQconninfoParse(), so postgres:// and
 * key=value forms, percent-decoding and query parameters behave exactly as libpq users expect.
 * This module never logs: errors come back as "file:line: message" lines in a caller's buffer.
 */
#ifndef PGLANE_CONF_H
#define PGLANE_CONF_H

#include <stdbool.h>
#include <stddef.h>

#define CONF_DEFAULT_PATH "./pglane.ini"

enum sslmode { SSLMODE_DISABLE, SSLMODE_ALLOW, SSLMODE_PREFER, SSLMODE_REQUIRE, SSLMODE_VERIFY_CA, SSLMODE_VERIFY_FULL };
const char *sslmode_str(enum sslmode m);
/* Parses a libpq sslmode name; returns false for anything else. */
bool sslmode_parse(const char *s, enum sslmode *out);

enum ca_source {
	CA_SOURCE_NONE,   /* no CA configured: verify-ca / verify-full are then a config error */
	CA_SOURCE_FILE,   /* ca_file = PATH: a PEM bundle of one or more certificates */
	CA_SOURCE_SYSTEM, /* ca = system: the system's trusted roots */
	CA_SOURCE_AWS_RDS /* ca = aws-rds: the Amazon RDS global bundle shipped in certs/ */
};

enum provision_mode { PROVISION_AUTO, PROVISION_MANUAL };

enum tls_mode { TLS_MODE_DISABLE, TLS_MODE_ALLOW, TLS_MODE_REQUIRE };
/* kernel_relay: off (default), auto (when the kernel and privileges allow), on (refuse to start without it) */
enum kernel_relay { KERNEL_RELAY_OFF, KERNEL_RELAY_AUTO, KERNEL_RELAY_ON };
/* pool_mode: a session holds its server connection from login to the end (session, default), or only from
 * a transaction's first message to its end (transaction; proxy/pool.c) */
enum pool_mode { POOL_MODE_SESSION, POOL_MODE_TRANSACTION };

struct conf_listen {
	char *host; /* owned; numeric address or name, "::1" without brackets */
	char *port; /* owned */
};

struct conf_instance {
	char *name;     /* owned: the NAME of [instance NAME] */
	int line;       /* line of the section header */
	char *host;     /* owned */
	int port;       /* default 5432 */
	char *user;     /* owned; default "postgres" */
	char *password; /* owned; may be NULL (trust) */
	char *dbname;   /* owned: the maintenance database, default "postgres" */
	enum sslmode sslmode; /* default prefer, as libpq */
	enum ca_source ca;
	char *ca_file;     /* owned: resolved path of the bundle (CA_SOURCE_FILE and CA_SOURCE_AWS_RDS), else NULL */
	char *client_cert; /* owned, may be NULL */
	char *client_key;  /* owned, may be NULL */
	bool used;         /* some app names this instance */
};

struct conf_app {
	char *id;   /* owned: the slug of [app ID] */
	int line;   /* line of the section header */
	char *instance_name;              /* owned */
	struct conf_instance *instance;   /* borrowed from the same conf */
	char *secret;                     /* owned: per-timeline passwords derive from it */
	char *production_branch;          /* owned, may be NULL: --branch NAME means production */
	enum provision_mode provision;    /* default auto */
	char *owner;                      /* owned, may be NULL: owner of created databases */
	char *template_db;                /* owned, may be NULL: template = NAME */
	char *migrate;                    /* owned, may be NULL: migrate = COMMAND */
	int max_clients;                  /* 0 = no per-app limit */
	enum pool_mode pool_mode;         /* [pglane]'s unless the app sets its own */
	int pool_mode_line;               /* line of the app's pool_mode, or 0 */
};

struct conf {
	char *path; /* owned: the file it was read from */

	struct conf_listen *listen; /* owned array */
	size_t nlisten;
	char *public_host;  /* owned: the host apps are told to use (env); default: first listen host */
	int public_port;    /* default: first listen port */

	int connect_timeout_ms; /* connect_timeout (seconds in the file, fractions allowed), default 10 s */
	int login_timeout_ms;   /* login_timeout, default 15 s */
	int max_clients;        /* default 10000 */
	int client_idle_timeout_s;  /* a session with no traffic either way this long ends (57P05); 0 = never */
	int client_write_timeout_s; /* a client that takes none of what waits for it this long is cut; 60 */
	int server_idle_timeout_s;  /* a server connection a client left waits this long for the next (pool.c); 0 = none */
	int max_packet_size;    /* bytes, default 65536 for startup-phase messages */
	int workers;            /* 0 = number of cores */
	enum kernel_relay kernel_relay; /* relay plaintext sessions inside the kernel (proxy/krelay.c); off */
	enum pool_mode pool_mode; /* apps' default, session */
	int pool_mode_line;       /* line of [pglane]'s pool_mode, or 0 */
	int pool_size;            /* transaction mode: server connections per timeline database at most; 20 */
	int query_wait_timeout_s; /* transaction mode: seconds a transaction may wait for a server connection; 120 */
	int max_prepared_statements; /* transaction mode: named statements kept per server connection; 0: pin; 200 */

	/* client-side TLS (issue 3) */
	enum tls_mode tls_mode; /* default: allow when tls_cert is set, else disable */
	char *tls_cert, *tls_key;               /* owned, may be NULL */
	char *client_ca, *client_ca_key, *client_crl; /* owned, may be NULL */
	char *tls_min_version;                  /* owned: "TLSv1.2" (default) or "TLSv1.3" */
	bool allow_cleartext;                   /* cleartext passwords over TLS only; default false */

	/* admin and logging (issue 5) */
	char *admin_user, *admin_password; /* owned, may be NULL */
	char *http_listen;                 /* owned, may be NULL */
	char *log_format;                  /* owned: "text" (default) or "json" */
	char *log_level;                   /* owned: "info" (default) */
	char *log_file;                    /* owned, may be NULL: stderr */
	int shutdown_timeout_ms;           /* default 30 s */

	struct conf_instance *instances; /* owned array */
	size_t ninstances;
	struct conf_app *apps; /* owned array */
	size_t napps;
};

/*
 * Reads and validates the file at path.  Returns a new conf (free with conf_free()) or NULL; on NULL,
 * err holds one line per problem, each "path:line: what is wrong", as many as fit in errlen.
 * Relative paths inside the file (ca_file, tls_cert, ...) are resolved against the file's directory.
 */
struct conf *conf_load(const char *path, char *err, size_t errlen);

/* Same as conf_load(), from a string; name is used in error lines and base_dir resolves relative paths. */
struct conf *conf_load_string(const char *text, const char *name, const char *base_dir, char *err, size_t errlen);

void conf_free(struct conf *c);

const struct conf_app *conf_app_find(const struct conf *c, const char *id);
const struct conf_instance *conf_instance_find(const struct conf *c, const char *name);

/*
 * Warnings that do not make the file invalid (a file holding secrets that other users can read).
 * Fills warn with lines like errors; returns the number of warnings.
 */
int conf_warnings(const struct conf *c, char *warn, size_t warnlen);

/*
 * Splits "host:port" or "[ipv6]:port" into newly allocated host (brackets removed) and port strings, which
 * the caller frees.  The port must be a number from 1 to 65535.  Returns false (err set, nothing
 * allocated) for anything else, including an IPv6 address without brackets.
 */
bool conf_parse_hostport(const char *s, char **host, char **port, char *err, size_t errlen);

#endif
