/*
 * provision: the control plane toward an instance.  Creates a timeline's database, finds an app's
 * databases by the naming scheme ("{app}-production", "{app}-preview", "{app}--{branch}"), checks what the
 * instance user may do, and explains every failure in the words an operator acts on: what is wrong, and
 * the fix to try.
 *
 * The functions taking a PGconn make blocking libpq calls (the command-line subcommands use them).  The
 * proxy, which must not block, drives the same steps itself: provision_conn_params() for
 * PQconnectStartParams(), the PROVISION_LOCK_* keys, and provision_classify_conn() /
 * provision_classify_result() for what comes back.  Never logs: errors fill a struct provision_error.
 */
#ifndef PGLANE_PROVISION_H
#define PGLANE_PROVISION_H

#include <stdbool.h>
#include <stddef.h>

#include <libpq-fe.h>

#include "conf/conf.h"
#include "routing/timeline.h"

/* libpq 15 has no sslrootcert=system: ca = system passes this bundle (Debian's ca-certificates). */
#define PROVISION_SYSTEM_CA_BUNDLE "/etc/ssl/certs/ca-certificates.crt"

/*
 * Advisory locks, all taken on the instance's maintenance database as pg_advisory_lock(class,
 * hashtext(dbname)): the two-key form never collides with an application's one-key (bigint) locks.
 */
#define PROVISION_LOCK_CREATE     0x70676c63 /* "pglc": held while a database is created */
#define PROVISION_LOCK_MIGRATE    0x70676c6d /* "pglm": held while `pglane migrate` runs on a database */
#define PROVISION_LOCK_TIMEOUT_MS 60000      /* how long provision_database() waits for another creator */

/* Whether dbname ($1) exists: a row when it does. */
#define PROVISION_SQL_EXISTS "SELECT 1 FROM pg_database WHERE datname = $1"

/* "SELECT fn(lock_class, hashtext($1))" for fn pg_advisory_lock, pg_try_advisory_lock or pg_advisory_unlock,
 * $1 being the database name: the one spelling of the lock keys, for callers sending it themselves. */
void provision_lock_sql(const char *fn, int lock_class, char *out, size_t outlen);

/* "CREATE DATABASE name [OWNER owner] [TEMPLATE template_db]", every name quoted with PQescapeIdentifier()
 * (owner and template_db may be NULL).  Returns a new string to free(), or NULL when out of memory. */
char *provision_create_sql(PGconn *pg, const char *dbname, const char *owner, const char *template_db);

enum provision_res { PROVISION_CREATED, PROVISION_EXISTED, PROVISION_FAILED };
const char *provision_res_str(enum provision_res r); /* "created", "exists", "error" */

/* Why something failed, as a category a program can branch on; the words are in provision_error. */
enum provision_fault {
	PROVISION_FAULT_NONE,
	PROVISION_FAULT_HOST,             /* the host name does not resolve */
	PROVISION_FAULT_REFUSED,          /* TCP connection refused */
	PROVISION_FAULT_NETWORK,          /* no route, network unreachable */
	PROVISION_FAULT_TIMEOUT,          /* no answer within connect_timeout */
	PROVISION_FAULT_AUTH,             /* wrong password, unknown role, no password given */
	PROVISION_FAULT_HBA,              /* no pg_hba.conf line lets this host/user in */
	PROVISION_FAULT_TLS_UNTRUSTED,    /* certificate not signed by a CA we trust */
	PROVISION_FAULT_TLS_HOSTNAME,     /* certificate valid, but not for the instance's host */
	PROVISION_FAULT_TLS_EXPIRED,      /* certificate expired or not yet valid */
	PROVISION_FAULT_TLS_UNSUPPORTED,  /* the server does not do TLS and sslmode requires it */
	PROVISION_FAULT_TLS,              /* any other TLS problem (CA file missing, handshake) */
	PROVISION_FAULT_NO_DATABASE,      /* the maintenance database does not exist */
	PROVISION_FAULT_NO_CREATEDB,      /* the instance user lacks CREATEDB */
	PROVISION_FAULT_NO_CONNECT,       /* the instance user lacks CONNECT on a database */
	PROVISION_FAULT_OWNER,            /* owner = names a missing role or one the user may not act as */
	PROVISION_FAULT_TEMPLATE_MISSING, /* template = names a database that does not exist */
	PROVISION_FAULT_TEMPLATE_IN_USE,  /* others are connected to the template */
	PROVISION_FAULT_TEMPLATE_DENIED,  /* the template is not a template and the user does not own it */
	PROVISION_FAULT_DISK_FULL,
	PROVISION_FAULT_TOO_MANY, /* max_connections reached */
	PROVISION_FAULT_STARTING, /* the server is starting up or shutting down */
	PROVISION_FAULT_BUSY,     /* another process held the creation lock too long */
	PROVISION_FAULT_OTHER,
};
const char *provision_fault_str(enum provision_fault f); /* "refused", "auth", "no-createdb", ... */

struct provision_error {
	enum provision_fault fault;
	char msg[512]; /* what is wrong, naming the instance, host, user or database; one line */
	char fix[512]; /* what to try, one line; may be empty */
};

#define PROVISION_MAX_PARAMS 16
struct provision_params {
	const char *keys[PROVISION_MAX_PARAMS + 1]; /* NULL-terminated, for PQconnect*Params */
	const char *vals[PROVISION_MAX_PARAMS + 1]; /* borrowed from inst, or from the buffers below */
	char port[8], timeout[16];
};

/*
 * Fills p with the libpq parameters of a connection to inst's maintenance database: host, port, user,
 * password, dbname, sslmode, sslrootcert (ca_file, or PROVISION_SYSTEM_CA_BUNDLE for ca = system),
 * sslcert/sslkey, connect_timeout (timeout_ms rounded up to seconds), application_name "pglane".
 * p must outlive the connection attempt; inst must outlive p.
 */
void provision_conn_params(const struct conf_instance *inst, int timeout_ms, struct provision_params *p);

/*
 * Connects to inst's maintenance database, giving up after timeout_ms.  Returns the connection
 * (PQfinish() it) or NULL with e filled.  Error messages are verbose, so the SQLSTATE of a login
 * failure is known.
 */
PGconn *provision_connect(const struct conf_instance *inst, int timeout_ms, struct provision_error *e);

/* Fills e from the PQerrorMessage() of a failed connection attempt (verbose or not); returns e->fault. */
enum provision_fault provision_classify_conn(const struct conf_instance *inst, const char *pqmsg,
                                             struct provision_error *e);

/*
 * Fills e from a failed command's result (res may be NULL: then pg's error message is used).  dbname,
 * owner and template_db (each may be NULL) name what the command was about.  Returns e->fault.
 */
enum provision_fault provision_classify_result(PGconn *pg, const PGresult *res,
                                               const struct conf_instance *inst, const char *dbname,
                                               const char *owner, const char *template_db,
                                               struct provision_error *e);

/*
 * Creates database dbname on pg's instance unless it exists: CREATE DATABASE with the name, owner and
 * template (either may be NULL) quoted as identifiers, under the PROVISION_LOCK_CREATE lock so that
 * several pglane processes create it once; duplicate_database (42P04) counts as existing.  Returns
 * PROVISION_FAILED with e filled on any failure.
 */
enum provision_res provision_database(PGconn *pg, const struct conf_instance *inst, const char *dbname,
                                      const char *owner, const char *template_db, struct provision_error *e);

/* One database found by provision_list_app_databases(). */
struct provision_db {
	char name[PG_NAMEDATALEN];
	bool allow_conn;  /* pg_database.datallowconn */
	bool can_connect; /* the instance user has CONNECT on it */
};

/* True when dbname follows app's naming scheme (exactly "{app}-production", "{app}-preview", or
 * starting "{app}--"); app ids contain no "--", so no other app's database matches. */
bool provision_name_is_app(const char *app, const char *dbname);

/*
 * The databases on pg's instance that belong to app by the naming scheme: production, preview, then
 * branches in name order.  *out is a new array of *n entries (free() it; NULL when none).  Returns
 * false with e filled when the query fails.
 */
bool provision_list_app_databases(PGconn *pg, const struct conf_instance *inst, const char *app,
                                  struct provision_db **out, size_t *n, struct provision_error *e);

/*
 * Maps a database name of app back to its timeline (after production_branch).  Returns false, with why
 * set, for a name that cannot be mapped: a cut name ending in "~hash", a branch name Git would refuse, or
 * a branch that is the app's production_branch (its timeline uses "{app}-production").
 */
bool provision_timeline_of(const struct conf_app *app, const char *dbname, struct timeline *tl, char *why,
                           size_t whylen);

/* The server's version ("15.8"), or "unknown". */
const char *provision_server_version(PGconn *pg);
/* True when the connection is encrypted; *protocol (may be NULL) is then "TLSv1.3" or the like. */
bool provision_tls_in_use(PGconn *pg, const char **protocol);

/* Each returns true when the instance user may do it, else false with e filled (the permission missing
 * and the statement that grants it, or why the question could not be asked). */
bool provision_check_createdb(PGconn *pg, const struct conf_instance *inst, struct provision_error *e);
bool provision_check_connect(PGconn *pg, const struct conf_instance *inst, const char *dbname,
                             struct provision_error *e);
bool provision_check_owner(PGconn *pg, const struct conf_instance *inst, const char *owner,
                           struct provision_error *e);
bool provision_check_template(PGconn *pg, const struct conf_instance *inst, const char *template_db,
                              struct provision_error *e);

/*
 * Advisory lock class/hashtext(dbname) on pg's database (the maintenance database).  provision_lock()
 * waits at most timeout_ms (0: without limit); provision_try_lock() sets *got and never waits.  Both
 * return false with e filled when the lock could not be asked for or the wait timed out.
 */
bool provision_lock(PGconn *pg, const struct conf_instance *inst, int lock_class, const char *dbname,
                    int timeout_ms, struct provision_error *e);
bool provision_try_lock(PGconn *pg, const struct conf_instance *inst, int lock_class, const char *dbname,
                        bool *got, struct provision_error *e);
void provision_unlock(PGconn *pg, int lock_class, const char *dbname);
/* True when another session holds the lock (a database being created, a migration running). */
bool provision_lock_held(PGconn *pg, int lock_class, const char *dbname);

#endif
