/*
 * provision: see provision.h.  Most of this file is words: libpq and the server say what failed in their
 * terms ("FATAL:  28P01", "certificate verify failed", SQLSTATE 42501), and an operator needs to hear
 * which setting or privilege to change.  Login failures are read from verbose messages, which carry the
 * SQLSTATE whatever language the server speaks; libpq's own messages are matched as libpq 15 words them
 * (this process never calls setlocale, so they are not translated).
 */
#include "routing/provision.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *provision_res_str(enum provision_res r)
{
	switch (r) {
	case PROVISION_CREATED:
		return "created";
	case PROVISION_EXISTED:
		return "exists";
	case PROVISION_FAILED:
		return "error";
	}
	return "?";
}

const char *provision_fault_str(enum provision_fault f)
{
	static const char *const names[] = {
	    [PROVISION_FAULT_NONE] = "none",
	    [PROVISION_FAULT_HOST] = "host-unknown",
	    [PROVISION_FAULT_REFUSED] = "refused",
	    [PROVISION_FAULT_NETWORK] = "network",
	    [PROVISION_FAULT_TIMEOUT] = "timeout",
	    [PROVISION_FAULT_AUTH] = "auth",
	    [PROVISION_FAULT_HBA] = "hba",
	    [PROVISION_FAULT_TLS_UNTRUSTED] = "tls-untrusted-ca",
	    [PROVISION_FAULT_TLS_HOSTNAME] = "tls-hostname",
	    [PROVISION_FAULT_TLS_EXPIRED] = "tls-expired",
	    [PROVISION_FAULT_TLS_UNSUPPORTED] = "tls-unsupported",
	    [PROVISION_FAULT_TLS] = "tls",
	    [PROVISION_FAULT_NO_DATABASE] = "no-database",
	    [PROVISION_FAULT_NO_CREATEDB] = "no-createdb",
	    [PROVISION_FAULT_NO_CONNECT] = "no-connect",
	    [PROVISION_FAULT_OWNER] = "owner",
	    [PROVISION_FAULT_TEMPLATE_MISSING] = "template-missing",
	    [PROVISION_FAULT_TEMPLATE_IN_USE] = "template-in-use",
	    [PROVISION_FAULT_TEMPLATE_DENIED] = "template-denied",
	    [PROVISION_FAULT_DISK_FULL] = "disk-full",
	    [PROVISION_FAULT_TOO_MANY] = "too-many-connections",
	    [PROVISION_FAULT_STARTING] = "starting-up",
	    [PROVISION_FAULT_BUSY] = "busy",
	    [PROVISION_FAULT_OTHER] = "other",
	};
	return (size_t)f < sizeof(names) / sizeof(names[0]) && names[f] ? names[f] : "other";
}

/* ---------------------------------------------------------------- words */

static void set_msg(struct provision_error *e, enum provision_fault f, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_fix(struct provision_error *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void set_msg(struct provision_error *e, enum provision_fault f, const char *fmt, ...)
{
	va_list ap;

	e->fault = f;
	e->fix[0] = '\0';
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
}

static void set_fix(struct provision_error *e, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(e->fix, sizeof(e->fix), fmt, ap);
	va_end(ap);
}

/* An identifier as it must be written in a statement the operator will paste: bare when it is all
 * lowercase letters, digits and '_' (not starting with a digit), else double-quoted. */
static const char *ident(const char *s, char *buf, size_t len)
{
	size_t o = 0;
	bool bare = (*s >= 'a' && *s <= 'z') || *s == '_';

	for (const char *p = s; *p && bare; p++)
		bare = (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_';
	if (bare) {
		snprintf(buf, len, "%s", s);
		return buf;
	}
	if (len < 3)
		return "";
	buf[o++] = '"';
	for (; *s && o + 3 < len; s++) {
		if (*s == '"')
			buf[o++] = '"';
		buf[o++] = *s;
	}
	buf[o++] = '"';
	buf[o] = '\0';
	return buf;
}

/* libpq's message on one line: newlines and tabs become spaces, trailing blanks go. */
static void flatten(const char *in, char *out, size_t outlen)
{
	size_t o = 0;

	for (; *in && o + 1 < outlen; in++) {
		char ch = *in == '\n' || *in == '\t' || *in == '\r' ? ' ' : *in;
		if (ch == ' ' && (o == 0 || out[o - 1] == ' '))
			continue;
		out[o++] = ch;
	}
	while (o > 0 && out[o - 1] == ' ')
		o--;
	out[o] = '\0';
}

/* The SQLSTATE of a verbose "FATAL:  28P01: ..." (or ERROR) in a libpq message; false when there is none. */
static bool find_sqlstate(const char *msg, char code[6])
{
	static const char *const tags[] = {"FATAL:  ", "ERROR:  ", "PANIC:  "};

	for (size_t t = 0; t < sizeof(tags) / sizeof(tags[0]); t++) {
		for (const char *p = strstr(msg, tags[t]); p; p = strstr(p + 1, tags[t])) {
			const char *c = p + strlen(tags[t]);
			size_t n = 0;
			while (n < 5 && ((c[n] >= '0' && c[n] <= '9') || (c[n] >= 'A' && c[n] <= 'Z')))
				n++;
			if (n == 5 && c[5] == ':') {
				memcpy(code, c, 5);
				code[5] = '\0';
				return true;
			}
		}
	}
	return false;
}

static const char *ca_words(const struct conf_instance *inst)
{
	switch (inst->ca) {
	case CA_SOURCE_FILE:
		return inst->ca_file;
	case CA_SOURCE_SYSTEM:
		return "the system's trusted roots (ca = system)";
	case CA_SOURCE_AWS_RDS:
		return "the Amazon RDS bundle (ca = aws-rds)";
	case CA_SOURCE_NONE:
		break;
	}
	return "no CA (set ca_file)";
}

enum provision_fault provision_classify_conn(const struct conf_instance *inst, const char *pqmsg,
                                             struct provision_error *e)
{
	char code[6], flat[400], q[160];
	const char *n = inst->name, *u = inst->user;

	if (!pqmsg)
		pqmsg = "";
	flatten(pqmsg, flat, sizeof(flat));
	/* A verbose message goes on with "LOCATION: file.c:line": of no use to an operator. */
	char *loc = strstr(flat, " LOCATION: ");
	if (loc)
		*loc = '\0';
	if (find_sqlstate(pqmsg, code)) {
		if (strcmp(code, "28P01") == 0) {
			set_msg(e, PROVISION_FAULT_AUTH,
			        "authentication failed: instance \"%s\" refused the password of user \"%s\"",
			        n, u);
			set_fix(e, "check the instance's user and password (password = or the url)");
		} else if (strcmp(code, "28000") == 0 && strstr(flat, "pg_hba.conf")) {
			bool plain = strstr(flat, "no encryption") != NULL;
			set_msg(e, PROVISION_FAULT_HBA,
			        "the pg_hba.conf of instance \"%s\" does not let this host in (user \"%s\", "
			        "database \"%s\"%s)",
			        n, u, inst->dbname, plain ? " without TLS" : "");
			set_fix(e,
			        "add a line for this host to pg_hba.conf (e.g. hostssl all %s ADDRESS/32 "
			        "scram-sha-256) and reload the server%s",
			        u, plain ? ", or connect with TLS (sslmode=require or stricter)" : "");
		} else if (strcmp(code, "28000") == 0 && strstr(flat, "certificate")) {
			set_msg(e, PROVISION_FAULT_TLS,
			        "instance \"%s\" requires a client certificate for user \"%s\"", n, u);
			set_fix(e, "set client_cert and client_key to a certificate its CA signed, for CN=%s",
			        u);
		} else if (code[0] == '2' && code[1] == '8') {
			set_msg(e, PROVISION_FAULT_AUTH,
			        "authentication failed on instance \"%s\" for user \"%s\": %s", n, u, flat);
			set_fix(e, "check that role %s exists and can log in, and its password",
			        ident(u, q, sizeof(q)));
		} else if (strcmp(code, "3D000") == 0) {
			set_msg(e, PROVISION_FAULT_NO_DATABASE,
			        "the maintenance database \"%s\" does not exist on instance \"%s\"",
			        inst->dbname, n);
			set_fix(e, "set the instance's dbname to an existing database (usually postgres)");
		} else if (strcmp(code, "42501") == 0) {
			set_msg(e, PROVISION_FAULT_NO_CONNECT,
			        "permission denied: user \"%s\" may not connect to \"%s\" on instance \"%s\"",
			        u, inst->dbname, n);
			set_fix(e, "as a superuser: GRANT CONNECT ON DATABASE %s TO %s",
			        ident(inst->dbname, flat, sizeof(flat)), ident(u, q, sizeof(q)));
		} else if (strcmp(code, "53300") == 0) {
			set_msg(e, PROVISION_FAULT_TOO_MANY,
			        "instance \"%s\" has no connection slot left (max_connections reached)", n);
			set_fix(e, "raise max_connections on the instance, or close idle sessions");
		} else if (strcmp(code, "57P03") == 0) {
			set_msg(e, PROVISION_FAULT_STARTING,
			        "instance \"%s\" is starting up, shutting down or in recovery", n);
			set_fix(e, "try again when it is up; a standby cannot create databases: point the "
			           "instance at the primary");
		} else {
			set_msg(e, PROVISION_FAULT_OTHER, "instance \"%s\" refused the login: %s", n, flat);
		}
		return e->fault;
	}
	if (strstr(flat, "does not support SSL")) {
		set_msg(e, PROVISION_FAULT_TLS_UNSUPPORTED,
		        "instance \"%s\" (%s:%d) does not accept TLS, and sslmode is %s", n, inst->host,
		        inst->port, sslmode_str(inst->sslmode));
		set_fix(e, "turn ssl = on in the server's postgresql.conf, or (only on a private network) "
		           "lower sslmode to prefer");
	} else if (strstr(flat, "does not match host name")) {
		set_msg(e, PROVISION_FAULT_TLS_HOSTNAME,
		        "the certificate of instance \"%s\" is not valid for host name \"%s\"", n,
		        inst->host);
		set_fix(e,
		        "set the instance's host to a name the certificate lists, or use sslmode=verify-ca");
	} else if (strstr(flat, "certificate verify failed")) {
		set_msg(e, PROVISION_FAULT_TLS_UNTRUSTED,
		        "the certificate of instance \"%s\" did not verify against %s (signed by another CA, "
		        "or expired)",
		        n, ca_words(inst));
		set_fix(e, "set ca_file to the CA that signed the server's certificate (`pglane test` tells "
		           "the two apart)");
	} else if (strstr(flat, "root certificate file") || strstr(flat, "certificate file \"")) {
		set_msg(e, PROVISION_FAULT_TLS, "instance \"%s\": a certificate file cannot be used: %s", n,
		        flat);
		set_fix(e, "check the paths of ca_file, client_cert and client_key");
	} else if (strstr(flat, "SSL")) {
		set_msg(e, PROVISION_FAULT_TLS, "TLS with instance \"%s\" failed: %s", n, flat);
	} else if (strstr(flat, "Connection refused")) {
		set_msg(e, PROVISION_FAULT_REFUSED,
		        "connection failed: %s:%d refused the connection (instance \"%s\")", inst->host,
		        inst->port, n);
		set_fix(e, "check the host and port, and that PostgreSQL runs there and listens on that "
		           "address (listen_addresses, port)");
	} else if (strstr(flat, "timeout expired") || strstr(flat, "timed out")) {
		set_msg(e, PROVISION_FAULT_TIMEOUT,
		        "connection failed: no answer from %s:%d in time (instance \"%s\")", inst->host,
		        inst->port, n);
		set_fix(e, "check the host, the port and any firewall in between; raise connect_timeout for "
		           "a slow link");
	} else if (strstr(flat, "could not translate host name")) {
		set_msg(e, PROVISION_FAULT_HOST,
		        "connection failed: host name \"%s\" of instance \"%s\" does not resolve", inst->host,
		        n);
		set_fix(e, "check the spelling of host, and this machine's DNS");
	} else if (strstr(flat, "No route to host") || strstr(flat, "Network is unreachable")) {
		set_msg(e, PROVISION_FAULT_NETWORK, "connection failed: no route to %s:%d (instance \"%s\")",
		        inst->host, inst->port, n);
		set_fix(e, "check the network path (VPN, security groups, firewall)");
	} else if (strstr(flat, "no password supplied")) {
		set_msg(
		    e, PROVISION_FAULT_AUTH,
		    "authentication failed: instance \"%s\" asks user \"%s\" for a password and none is set",
		    n, u);
		set_fix(e, "set password = (or put it in the url)");
	} else if (strstr(flat, "closed the connection unexpectedly")) {
		set_msg(e, PROVISION_FAULT_OTHER,
		        "%s:%d closed the connection during the login (instance \"%s\")", inst->host,
		        inst->port, n);
		set_fix(e, "check that the port is PostgreSQL's, and the server's log");
	} else {
		set_msg(e, PROVISION_FAULT_OTHER, "cannot connect to instance \"%s\": %s", n,
		        flat[0] ? flat : "unknown error");
	}
	return e->fault;
}

enum provision_fault provision_classify_result(PGconn *pg, const PGresult *res,
                                               const struct conf_instance *inst, const char *dbname,
                                               const char *owner, const char *template_db,
                                               struct provision_error *e)
{
	const char *code = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	const char *n = inst->name, *db = dbname ? dbname : "?";
	char flat[400], q1[160], q2[160];

	flatten(primary ? primary : PQerrorMessage(pg), flat, sizeof(flat));
	if (!code) {
		if (PQstatus(pg) == CONNECTION_BAD)
			set_msg(e, PROVISION_FAULT_NETWORK, "lost the connection to instance \"%s\": %s", n,
			        flat);
		else
			set_msg(e, PROVISION_FAULT_OTHER, "instance \"%s\": %s", n, flat);
	} else if (strcmp(code, "42501") == 0 && owner &&
	           (strstr(flat, "member of role") || strstr(flat, "SET ROLE"))) {
		set_msg(e, PROVISION_FAULT_OWNER,
		        "the instance user \"%s\" may not create databases owned by \"%s\" (owner =)",
		        inst->user, owner);
		set_fix(e, "as a superuser: GRANT %s TO %s", ident(owner, q1, sizeof(q1)),
		        ident(inst->user, q2, sizeof(q2)));
	} else if (strcmp(code, "42501") == 0 && template_db && strstr(flat, "copy database")) {
		set_msg(e, PROVISION_FAULT_TEMPLATE_DENIED,
		        "the instance user \"%s\" may not copy database \"%s\" (template =)", inst->user,
		        template_db);
		set_fix(e, "as a superuser: ALTER DATABASE %s IS_TEMPLATE true",
		        ident(template_db, q1, sizeof(q1)));
	} else if (strcmp(code, "42501") == 0) {
		set_msg(e, PROVISION_FAULT_NO_CREATEDB,
		        "permission denied: the instance user \"%s\" lacks CREATEDB on instance \"%s\"",
		        inst->user, n);
		set_fix(e, "as a superuser: ALTER ROLE %s CREATEDB", ident(inst->user, q1, sizeof(q1)));
	} else if (strcmp(code, "53100") == 0) {
		set_msg(e, PROVISION_FAULT_DISK_FULL,
		        "instance \"%s\" is out of disk space (creating \"%s\")", n, db);
		set_fix(e, "free space on the instance's data volume or grow it");
	} else if (strcmp(code, "55006") == 0) {
		set_msg(e, PROVISION_FAULT_TEMPLATE_IN_USE,
		        "the template database \"%s\" is in use by other sessions",
		        template_db ? template_db : "template1");
		set_fix(e, "disconnect everyone from it (CREATE DATABASE copies a template only while no one "
		           "is connected)");
	} else if (strcmp(code, "3D000") == 0 && template_db) {
		set_msg(e, PROVISION_FAULT_TEMPLATE_MISSING,
		        "the template database \"%s\" does not exist on instance \"%s\"", template_db, n);
		set_fix(e, "create it, or change template = in the app's section");
	} else if (strcmp(code, "42704") == 0 && owner) {
		set_msg(e, PROVISION_FAULT_OWNER,
		        "the role \"%s\" (owner =) does not exist on instance \"%s\"", owner, n);
		set_fix(e, "as a superuser: CREATE ROLE %s, or change owner = in the app's section",
		        ident(owner, q1, sizeof(q1)));
	} else if (strcmp(code, "55P03") == 0) {
		set_msg(e, PROVISION_FAULT_BUSY,
		        "another process has held the creation lock of \"%s\" on instance \"%s\" too long",
		        db, n);
		set_fix(e, "look for a stuck CREATE DATABASE in pg_stat_activity, then try again");
	} else if (strcmp(code, "53300") == 0) {
		set_msg(e, PROVISION_FAULT_TOO_MANY,
		        "instance \"%s\" has no connection slot left (max_connections reached)", n);
		set_fix(e, "raise max_connections on the instance, or close idle sessions");
	} else if (strcmp(code, "25006") == 0) {
		set_msg(e, PROVISION_FAULT_STARTING, "instance \"%s\" is read-only (a standby?)", n);
		set_fix(e, "point the instance at the primary");
	} else {
		set_msg(e, PROVISION_FAULT_OTHER, "instance \"%s\": %s (SQLSTATE %s)", n, flat, code);
	}
	return e->fault;
}

/* ---------------------------------------------------------------- connecting */

void provision_conn_params(const struct conf_instance *inst, int timeout_ms, struct provision_params *p)
{
	int n = 0;

	memset(p, 0, sizeof(*p));
#define ADD(k, v)                                                                                            \
	do {                                                                                                 \
		if (v) {                                                                                     \
			p->keys[n] = (k);                                                                    \
			p->vals[n++] = (v);                                                                  \
		}                                                                                            \
	} while (0)
	snprintf(p->port, sizeof(p->port), "%d", inst->port);
	snprintf(p->timeout, sizeof(p->timeout), "%d", timeout_ms > 0 ? (timeout_ms + 999) / 1000 : 0);
	ADD("host", inst->host);
	ADD("port", p->port);
	ADD("user", inst->user);
	ADD("password", inst->password);
	ADD("dbname", inst->dbname);
	ADD("sslmode", sslmode_str(inst->sslmode));
	/* Only when the chain is checked: with a root file present, libpq would check it under require too,
	 * which pglane's own TLS (certs/) does not. */
	if (inst->sslmode >= SSLMODE_VERIFY_CA)
		ADD("sslrootcert", inst->ca == CA_SOURCE_SYSTEM ? PROVISION_SYSTEM_CA_BUNDLE : inst->ca_file);
	ADD("sslcert", inst->client_cert);
	ADD("sslkey", inst->client_key);
	ADD("connect_timeout", p->timeout);
	ADD("gssencmode", "disable"); /* pglane speaks no GSSAPI; don't wait for a Kerberos attempt */
	ADD("application_name", "pglane");
#undef ADD
}

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

PGconn *provision_connect(const struct conf_instance *inst, int timeout_ms, struct provision_error *e)
{
	struct provision_params p;
	long long deadline = now_ms() + timeout_ms;
	PostgresPollingStatusType st = PGRES_POLLING_WRITING;

	memset(e, 0, sizeof(*e));
	provision_conn_params(inst, timeout_ms, &p);
	PGconn *pg = PQconnectStartParams(p.keys, p.vals, 0);
	if (!pg) {
		set_msg(e, PROVISION_FAULT_OTHER, "out of memory connecting to instance \"%s\"", inst->name);
		return NULL;
	}
	PQsetErrorVerbosity(pg, PQERRORS_VERBOSE);
	while (PQstatus(pg) != CONNECTION_BAD && st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
		struct pollfd pfd = {.fd = PQsocket(pg),
		                     .events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT};
		long long left = deadline - now_ms();

		if (timeout_ms > 0 && left <= 0) {
			provision_classify_conn(inst, "timeout expired", e);
			PQfinish(pg);
			return NULL;
		}
		if (pfd.fd >= 0 && poll(&pfd, 1, timeout_ms > 0 ? (int)left : -1) < 0 && errno != EINTR)
			break;
		if (pfd.fd < 0 || pfd.revents)
			st = PQconnectPoll(pg);
	}
	if (PQstatus(pg) != CONNECTION_OK) {
		provision_classify_conn(inst, PQerrorMessage(pg), e);
		PQfinish(pg);
		return NULL;
	}
	return pg;
}

/* ---------------------------------------------------------------- queries */

/* Runs a one-row query with text parameters; returns the result when it is PGRES_TUPLES_OK (PQclear it),
 * else NULL with e filled. */
static PGresult *query(PGconn *pg, const struct conf_instance *inst, const char *sql, int nparams,
                       const char *const *params, struct provision_error *e)
{
	PGresult *res = PQexecParams(pg, sql, nparams, NULL, params, NULL, NULL, 0);

	if (res && PQresultStatus(res) == PGRES_TUPLES_OK)
		return res;
	provision_classify_result(pg, res, inst, NULL, NULL, NULL, e);
	PQclear(res);
	return NULL;
}

/* 1 when dbname exists, 0 when not, -1 with e filled when the question failed. */
static int db_exists(PGconn *pg, const struct conf_instance *inst, const char *dbname,
                     struct provision_error *e)
{
	PGresult *res = query(pg, inst, PROVISION_SQL_EXISTS, 1, &dbname, e);
	int n = res ? PQntuples(res) > 0 : -1;

	PQclear(res);
	return n;
}

char *provision_create_sql(PGconn *pg, const char *dbname, const char *owner, const char *template_db)
{
	char *qd = PQescapeIdentifier(pg, dbname, strlen(dbname));
	char *qo = owner ? PQescapeIdentifier(pg, owner, strlen(owner)) : NULL;
	char *qt = template_db ? PQescapeIdentifier(pg, template_db, strlen(template_db)) : NULL;
	char *sql = NULL;

	if (qd && (!owner || qo) && (!template_db || qt) &&
	    asprintf(&sql, "CREATE DATABASE %s%s%s%s%s", qd, qo ? " OWNER " : "", qo ? qo : "",
	             qt ? " TEMPLATE " : "", qt ? qt : "") < 0)
		sql = NULL;
	PQfreemem(qd);
	PQfreemem(qo);
	PQfreemem(qt);
	return sql;
}

enum provision_res provision_database(PGconn *pg, const struct conf_instance *inst, const char *dbname,
                                      const char *owner, const char *template_db, struct provision_error *e)
{
	enum provision_res r = PROVISION_FAILED;
	int exists;

	memset(e, 0, sizeof(*e));
	/* The common case, a database that exists, takes no lock. */
	if ((exists = db_exists(pg, inst, dbname, e)) != 0)
		return exists > 0 ? PROVISION_EXISTED : PROVISION_FAILED;
	if (!provision_lock(pg, inst, PROVISION_LOCK_CREATE, dbname, PROVISION_LOCK_TIMEOUT_MS, e))
		return PROVISION_FAILED;
	if ((exists = db_exists(pg, inst, dbname, e)) > 0) {
		r = PROVISION_EXISTED;
	} else if (exists == 0) {
		char *sql = provision_create_sql(pg, dbname, owner, template_db);
		PGresult *res = sql ? PQexec(pg, sql) : NULL;
		const char *code = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

		if (!sql)
			set_msg(e, PROVISION_FAULT_OTHER, "out of memory creating \"%s\"", dbname);
		else if (res && PQresultStatus(res) == PGRES_COMMAND_OK)
			r = PROVISION_CREATED;
		else if (code && strcmp(code, "42P04") == 0) /* created by someone not taking our lock */
			r = PROVISION_EXISTED;
		else
			provision_classify_result(pg, res, inst, dbname, owner, template_db, e);
		PQclear(res);
		free(sql);
	}
	provision_unlock(pg, PROVISION_LOCK_CREATE, dbname);
	if (r != PROVISION_FAILED)
		memset(e, 0, sizeof(*e));
	return r;
}

bool provision_name_is_app(const char *app, const char *dbname)
{
	size_t n = strlen(app);

	if (strncmp(dbname, app, n) != 0)
		return false;
	return strcmp(dbname + n, "-production") == 0 || strcmp(dbname + n, "-preview") == 0 ||
	       strncmp(dbname + n, "--", 2) == 0;
}

bool provision_list_app_databases(PGconn *pg, const struct conf_instance *inst, const char *app,
                                  struct provision_db **out, size_t *n, struct provision_error *e)
{
	char prod[PG_NAMEDATALEN + 16], prev[PG_NAMEDATALEN + 16], prefix[PG_NAMEDATALEN + 16];
	const char *params[3] = {prod, prev, prefix};
	PGresult *res;

	*out = NULL;
	*n = 0;
	snprintf(prod, sizeof(prod), "%s-production", app);
	snprintf(prev, sizeof(prev), "%s-preview", app);
	snprintf(prefix, sizeof(prefix), "%s--", app);
	res = query(pg, inst,
	            "SELECT datname, datallowconn, has_database_privilege(oid, 'CONNECT') FROM pg_database"
	            " WHERE datname = $1 OR datname = $2 OR left(datname, length($3)) = $3"
	            " ORDER BY datname <> $1, datname <> $2, datname",
	            3, params, e);
	if (!res)
		return false;
	int rows = PQntuples(res);
	if (rows > 0 && !(*out = calloc((size_t)rows, sizeof(**out)))) {
		PQclear(res);
		set_msg(e, PROVISION_FAULT_OTHER, "out of memory listing the databases of app \"%s\"", app);
		return false;
	}
	for (int i = 0; i < rows; i++) {
		struct provision_db *d = &(*out)[*n];
		/* The SQL prefix test counts characters; check again in bytes, as the naming scheme does. */
		if (!provision_name_is_app(app, PQgetvalue(res, i, 0)))
			continue;
		snprintf(d->name, sizeof(d->name), "%s", PQgetvalue(res, i, 0));
		d->allow_conn = PQgetvalue(res, i, 1)[0] == 't';
		d->can_connect = PQgetvalue(res, i, 2)[0] == 't';
		(*n)++;
	}
	PQclear(res);
	return true;
}

bool provision_timeline_of(const struct conf_app *app, const char *dbname, struct timeline *tl, char *why,
                           size_t whylen)
{
	size_t n = strlen(app->id);
	char back[PG_NAMEDATALEN], err[256];
	const char *branch;

	memset(tl, 0, sizeof(*tl));
	if (!provision_name_is_app(app->id, dbname)) {
		snprintf(why, whylen, "\"%s\" is not a database of app \"%s\"", dbname, app->id);
		return false;
	}
	if (strcmp(dbname + n, "-production") == 0) {
		tl->kind = TIMELINE_PRODUCTION;
		return true;
	}
	if (strcmp(dbname + n, "-preview") == 0) {
		tl->kind = TIMELINE_PREVIEW;
		return true;
	}
	branch = dbname + n + 2;
	/* Git forbids '~' in branch names: a '~' means timeline_dbname() cut a long name and added a hash. */
	if (strchr(branch, '~')) {
		snprintf(why, whylen,
		         "a cut name (its branch name is too long to fit): name the branch with --branch");
		return false;
	}
	if (!timeline_set(tl, TIMELINE_BRANCH, branch, app->production_branch, err, sizeof(err))) {
		snprintf(why, whylen, "not a pglane timeline database: %s", err);
		return false;
	}
	if (tl->kind == TIMELINE_PRODUCTION) {
		snprintf(why, whylen,
		         "branch %s is the app's production_branch, whose timeline uses %s-production",
		         branch, app->id);
		return false;
	}
	timeline_dbname(app->id, tl, back, sizeof(back));
	if (strcmp(back, dbname) != 0) {
		snprintf(why, whylen, "branch %s would use database \"%s\"", branch, back);
		return false;
	}
	return true;
}

const char *provision_server_version(PGconn *pg)
{
	const char *v = PQparameterStatus(pg, "server_version");

	return v ? v : "unknown";
}

bool provision_tls_in_use(PGconn *pg, const char **protocol)
{
	bool on = PQsslInUse(pg) != 0;
	const char *p = on ? PQsslAttribute(pg, "protocol") : NULL;

	if (protocol)
		*protocol = p ? p : "TLS";
	return on;
}

/* ---------------------------------------------------------------- privileges */

bool provision_check_createdb(PGconn *pg, const struct conf_instance *inst, struct provision_error *e)
{
	char q[160];
	PGresult *res =
	    query(pg, inst, "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user", 0,
	          NULL, e);
	bool yes = res && PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';

	if (res && !yes) {
		set_msg(e, PROVISION_FAULT_NO_CREATEDB,
		        "permission denied: the instance user \"%s\" lacks CREATEDB on instance \"%s\"",
		        inst->user, inst->name);
		set_fix(e, "as a superuser: ALTER ROLE %s CREATEDB", ident(inst->user, q, sizeof(q)));
	}
	PQclear(res);
	return yes;
}

bool provision_check_connect(PGconn *pg, const struct conf_instance *inst, const char *dbname,
                             struct provision_error *e)
{
	char q1[160], q2[160];
	PGresult *res = query(
	    pg, inst,
	    "SELECT has_database_privilege(oid, 'CONNECT'), datallowconn FROM pg_database WHERE datname = $1",
	    1, &dbname, e);
	bool yes = false;

	if (!res)
		return false;
	if (PQntuples(res) == 0) {
		set_msg(e, PROVISION_FAULT_NO_DATABASE, "database \"%s\" does not exist on instance \"%s\"",
		        dbname, inst->name);
	} else if (PQgetvalue(res, 0, 1)[0] != 't') {
		set_msg(e, PROVISION_FAULT_NO_CONNECT,
		        "database \"%s\" does not allow connections (datallowconn is false)", dbname);
		set_fix(e, "as a superuser: ALTER DATABASE %s ALLOW_CONNECTIONS true",
		        ident(dbname, q1, sizeof(q1)));
	} else if (PQgetvalue(res, 0, 0)[0] != 't') {
		set_msg(e, PROVISION_FAULT_NO_CONNECT,
		        "permission denied: the instance user \"%s\" has no CONNECT on database \"%s\"",
		        inst->user, dbname);
		set_fix(e, "as its owner: GRANT CONNECT ON DATABASE %s TO %s", ident(dbname, q1, sizeof(q1)),
		        ident(inst->user, q2, sizeof(q2)));
	} else {
		yes = true;
	}
	PQclear(res);
	return yes;
}

bool provision_check_owner(PGconn *pg, const struct conf_instance *inst, const char *owner,
                           struct provision_error *e)
{
	char q1[160], q2[160];
	PGresult *res = query(pg, inst, "SELECT pg_has_role(oid, 'MEMBER') FROM pg_roles WHERE rolname = $1",
	                      1, &owner, e);
	bool yes = false;

	if (!res)
		return false;
	if (PQntuples(res) == 0) {
		set_msg(e, PROVISION_FAULT_OWNER,
		        "the role \"%s\" (owner =) does not exist on instance \"%s\"", owner, inst->name);
		set_fix(e, "as a superuser: CREATE ROLE %s, or change owner = in the app's section",
		        ident(owner, q1, sizeof(q1)));
	} else if (PQgetvalue(res, 0, 0)[0] != 't') {
		set_msg(e, PROVISION_FAULT_OWNER,
		        "the instance user \"%s\" may not create databases owned by \"%s\" (owner =)",
		        inst->user, owner);
		set_fix(e, "as a superuser: GRANT %s TO %s", ident(owner, q1, sizeof(q1)),
		        ident(inst->user, q2, sizeof(q2)));
	} else {
		yes = true;
	}
	PQclear(res);
	return yes;
}

bool provision_check_template(PGconn *pg, const struct conf_instance *inst, const char *template_db,
                              struct provision_error *e)
{
	char q[160];
	PGresult *res =
	    query(pg, inst,
	          "SELECT datistemplate OR pg_has_role(datdba, 'USAGE') FROM pg_database WHERE datname = $1",
	          1, &template_db, e);
	bool yes = false;

	if (!res)
		return false;
	if (PQntuples(res) == 0) {
		set_msg(e, PROVISION_FAULT_TEMPLATE_MISSING,
		        "the template database \"%s\" does not exist on instance \"%s\"", template_db,
		        inst->name);
		set_fix(e, "create it, or change template = in the app's section");
	} else if (PQgetvalue(res, 0, 0)[0] != 't') {
		set_msg(e, PROVISION_FAULT_TEMPLATE_DENIED,
		        "the instance user \"%s\" may not copy database \"%s\" (template =)", inst->user,
		        template_db);
		set_fix(e, "as a superuser: ALTER DATABASE %s IS_TEMPLATE true",
		        ident(template_db, q, sizeof(q)));
	} else {
		yes = true;
	}
	PQclear(res);
	return yes;
}

/* ---------------------------------------------------------------- advisory locks */

void provision_lock_sql(const char *fn, int lock_class, char *out, size_t outlen)
{
	snprintf(out, outlen, "SELECT %s(%d, hashtext($1))", fn, lock_class);
}

/* Runs provision_lock_sql(fn, class) for dbname; returns the result or NULL with e filled. */
static PGresult *lock_call(PGconn *pg, const struct conf_instance *inst, const char *fn, int lock_class,
                           const char *dbname, struct provision_error *e)
{
	char sql[96];

	provision_lock_sql(fn, lock_class, sql, sizeof(sql));
	return query(pg, inst, sql, 1, &dbname, e);
}

bool provision_lock(PGconn *pg, const struct conf_instance *inst, int lock_class, const char *dbname,
                    int timeout_ms, struct provision_error *e)
{
	char set[64];

	snprintf(set, sizeof(set), "SET lock_timeout = %d", timeout_ms > 0 ? timeout_ms : 0);
	PQclear(PQexec(pg, set));
	PGresult *res = lock_call(pg, inst, "pg_advisory_lock", lock_class, dbname, e);
	PQclear(PQexec(pg, "RESET lock_timeout"));
	if (!res && e->fault == PROVISION_FAULT_BUSY) /* name the database the lock is about */
		set_msg(e, PROVISION_FAULT_BUSY,
		        "another process has held the %s lock of \"%s\" on instance \"%s\" for over %d s",
		        lock_class == PROVISION_LOCK_MIGRATE ? "migration" : "creation", dbname, inst->name,
		        timeout_ms / 1000);
	PQclear(res);
	return res != NULL;
}

bool provision_try_lock(PGconn *pg, const struct conf_instance *inst, int lock_class, const char *dbname,
                        bool *got, struct provision_error *e)
{
	PGresult *res = lock_call(pg, inst, "pg_try_advisory_lock", lock_class, dbname, e);

	*got = res && PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';
	PQclear(res);
	return res != NULL;
}

void provision_unlock(PGconn *pg, int lock_class, const char *dbname)
{
	char sql[96];

	provision_lock_sql("pg_advisory_unlock", lock_class, sql, sizeof(sql));
	PQclear(PQexecParams(pg, sql, 1, NULL, &dbname, NULL, NULL, 0));
}

bool provision_lock_held(PGconn *pg, int lock_class, const char *dbname)
{
	char sql[512];

	/* The two-key form shows as classid = key1, objid = key2 (as an unsigned 32-bit oid), objsubid = 2.
	 */
	snprintf(sql, sizeof(sql),
	         "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
	         " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
	         " AND classid = %d AND objid = (hashtext($1)::bigint & 4294967295)::oid AND objsubid = 2",
	         lock_class);
	PGresult *res = PQexecParams(pg, sql, 1, NULL, &dbname, NULL, NULL, 0);
	bool held = res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0;

	PQclear(res);
	return held;
}
