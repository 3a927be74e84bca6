/*
 * autoprov: creating a timeline's database on its first connection (provision = auto), without
 * blocking the loop.  libpq runs asynchronously (PQconnectStartParams / PQconnectPoll, PQsendQueryParams
 * / PQconsumeInput) driven by events on PQsocket().
 *
 * One job per (instance, database): every connection that finds the database missing while a job is
 * running waits on that job, so twenty simultaneous first connections create it once.  Across pglane
 * processes and `pglane provision`, an advisory lock on the instance's maintenance database and
 * "duplicate_database counts as success" keep them from colliding.
 */
#include "proxy/proxy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>


#include "routing/provision.h"

#define AUTOPROV_TIMEOUT_MS 30000 /* beyond connect_timeout: CREATE DATABASE copies a template */

enum autoprov_step { AP_CONNECTING, AP_LOCK, AP_EXISTS, AP_CREATE };

struct autoprov {
	struct proxy *px;                 /* borrowed */
	struct snapshot *snap;            /* reference held */
	const struct conf_instance *inst; /* borrowed from snap */
	const struct conf_app *app;       /* borrowed from snap */
	char dbname[PG_NAMEDATALEN];
	PGconn *pg;                       /* owned */
	struct event *ev;                 /* owned: the socket, or the timeout */
	enum autoprov_step step;
	struct conn **waiters;            /* borrowed; a closing conn removes itself */
	size_t nwaiters, capwaiters;
	TAILQ_ENTRY(autoprov) link;
};

static void autoprov_io_cb(evutil_socket_t fd, short what, void *arg);

static void autoprov_free(struct autoprov *j)
{
	TAILQ_REMOVE(&j->px->autoprovs, j, link);
	for (size_t i = 0; i < j->nwaiters; i++)
		j->waiters[i]->autoprov = NULL;
	if (j->ev)
		event_free(j->ev);
	PQfinish(j->pg);
	snapshot_unref(j->snap);
	free(j->waiters);
	free(j);
}

/* Ends the job: every waiter retries its login (ok) or gets the error.  why is NULL when this job created
 * the database, "exists" when another process had (then nothing is counted). */
static void autoprov_finish(struct autoprov *j, bool ok, const char *sqlstate, const char *why)
{
	struct conn **w = j->waiters;
	size_t n = j->nwaiters;

	if (ok && !why) {
		j->px->stats.provisions_ok++;
		log_msg(LOG_INFO, "created database \"%s\" on instance %s for app %s", j->dbname, j->inst->name,
			j->app->id);
	} else if (ok) {
		log_msg(LOG_INFO, "database \"%s\" on instance %s was created by another process meanwhile",
			j->dbname, j->inst->name);
	} else {
		j->px->stats.provisions_failed++;
	}
	if (!ok)
		log_msg(LOG_WARNING, "cannot create database \"%s\" on instance %s: %s", j->dbname, j->inst->name, why);
	j->waiters = NULL;
	j->nwaiters = 0;
	for (size_t i = 0; i < n; i++)
		w[i]->autoprov = NULL;
	autoprov_free(j);
	for (size_t i = 0; i < n; i++) {
		if (w[i]->state == CONN_CLOSED)
			continue;
		if (ok)
			backend_start(w[i]);
		else
			conn_fail(w[i], sqlstate, "provisioning failed", "cannot create database \"%s\": %s",
				  w[i]->route.dbname, why);
	}
	free(w);
}

/* Fails the job with the operator's words for what went wrong: what is wrong, then what to try. */
static void autoprov_fail(struct autoprov *j, const char *sqlstate, const struct provision_error *e)
{
	char why[sizeof(e->msg) + sizeof(e->fix) + 8];

	snprintf(why, sizeof(why), "%s%s%s", e->msg, *e->fix ? "; " : "", e->fix);
	autoprov_finish(j, false, sqlstate, why);
}

static void autoprov_wait(struct autoprov *j, short what)
{
	int ms = j->snap->conf->connect_timeout_ms + AUTOPROV_TIMEOUT_MS;
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

	if (j->ev)
		event_free(j->ev);
	j->ev = event_new(j->px->base, PQsocket(j->pg), what, autoprov_io_cb, j);
	event_add(j->ev, &tv);
}

static void autoprov_send(struct autoprov *j, enum autoprov_step step)
{
	char sql[512];
	const char *params[1] = {j->dbname};

	j->step = step;
	switch (step) {
	case AP_LOCK: /* the same lock as `pglane provision`, so the two never collide (and status sees Creating) */
		provision_lock_sql("pg_advisory_lock", PROVISION_LOCK_CREATE, sql, sizeof(sql));
		break;
	case AP_EXISTS:
		snprintf(sql, sizeof(sql), "%s", PROVISION_SQL_EXISTS);
		break;
	case AP_CREATE: {
		char *create = provision_create_sql(j->pg, j->dbname, j->app->owner, j->app->template_db);
		bool sent = create && PQsendQuery(j->pg, create);
		PQfreemem(create);
		if (!sent)
			goto fail;
		autoprov_wait(j, EV_READ);
		return;
	}
	case AP_CONNECTING:
		return;
	}
	if (!PQsendQueryParams(j->pg, sql, 1, NULL, params, NULL, NULL, 0))
		goto fail;
	autoprov_wait(j, EV_READ);
	return;
fail:
	autoprov_finish(j, false, "08006", PQerrorMessage(j->pg));
}

/* A whole result is in: decide the next step. */
static void autoprov_on_result(struct autoprov *j, PGresult *res)
{
	ExecStatusType st = PQresultStatus(res);
	const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	struct provision_error e;

	if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
		if (j->step == AP_CREATE && code && strcmp(code, "42P04") == 0) { /* duplicate_database */
			autoprov_finish(j, true, NULL, "exists");
			return;
		}
		provision_classify_result(j->pg, res, j->inst, j->dbname, j->app->owner, j->app->template_db, &e);
		autoprov_fail(j, code ? code : "58000", &e);
		return;
	}
	switch (j->step) {
	case AP_LOCK:
		autoprov_send(j, AP_EXISTS);
		return;
	case AP_EXISTS:
		if (PQntuples(res) > 0)
			autoprov_finish(j, true, NULL, "exists");
		else
			autoprov_send(j, AP_CREATE);
		return;
	default:
		autoprov_finish(j, true, NULL, NULL);
		return;
	}
}

static void autoprov_io_cb(evutil_socket_t fd, short what, void *arg)
{
	struct autoprov *j = arg;

	if (what & EV_TIMEOUT) {
		autoprov_finish(j, false, "57014", "timeout while creating it");
		return;
	}
	if (j->step == AP_CONNECTING) {
		switch (PQconnectPoll(j->pg)) {
		case PGRES_POLLING_READING:
			autoprov_wait(j, EV_READ);
			return;
		case PGRES_POLLING_WRITING:
			autoprov_wait(j, EV_WRITE);
			return;
		case PGRES_POLLING_OK:
			autoprov_send(j, AP_LOCK);
			return;
		default: {
			struct provision_error e;
			provision_classify_conn(j->inst, PQerrorMessage(j->pg), &e);
			autoprov_fail(j, "08001", &e);
			return;
		}
		}
	}
	if (!PQconsumeInput(j->pg)) {
		autoprov_finish(j, false, "08006", PQerrorMessage(j->pg));
		return;
	}
	while (!PQisBusy(j->pg)) {
		PGresult *res = PQgetResult(j->pg), *extra;
		if (!res)
			return;
		while ((extra = PQgetResult(j->pg)))
			PQclear(extra);
		autoprov_on_result(j, res);
		PQclear(res);
		return; /* the job moved on (new query sent) or is freed */
	}
	autoprov_wait(j, EV_READ);
}

static bool autoprov_add_waiter(struct autoprov *j, struct conn *c)
{
	if (j->nwaiters == j->capwaiters) {
		size_t cap = j->capwaiters ? j->capwaiters * 2 : 4;
		struct conn **w = realloc(j->waiters, cap * sizeof(*w));
		if (!w)
			return false;
		j->waiters = w;
		j->capwaiters = cap;
	}
	j->waiters[j->nwaiters++] = c;
	c->autoprov = j;
	return true;
}

void autoprov_forget(struct conn *c)
{
	struct autoprov *j = c->autoprov;

	if (!j)
		return;
	for (size_t i = 0; i < j->nwaiters; i++) {
		if (j->waiters[i] == c) {
			j->waiters[i] = j->waiters[--j->nwaiters];
			break;
		}
	}
	c->autoprov = NULL;
}

void autoprov_start(struct conn *c)
{
	struct proxy *px = c->px;
	struct autoprov *j;

	if (c->server) {
		bufferevent_free(c->server);
		c->server = NULL;
	}
	c->be_ssl = NULL;
	c->be_phase = BE_PROVISION;
	conn_arm_timer(c, c->snap->conf->connect_timeout_ms + AUTOPROV_TIMEOUT_MS);
	TAILQ_FOREACH(j, &px->autoprovs, link)
	{
		if (j->inst == c->inst && strcmp(j->dbname, c->route.dbname) == 0) {
			if (!autoprov_add_waiter(j, c))
				conn_fail(c, "53200", "out of memory", "out of memory");
			return;
		}
	}
	if (!(j = calloc(1, sizeof(*j)))) {
		conn_fail(c, "53200", "out of memory", "out of memory");
		return;
	}
	j->px = px;
	j->snap = snapshot_ref(c->snap);
	j->inst = c->inst;
	j->app = c->route.app;
	snprintf(j->dbname, sizeof(j->dbname), "%s", c->route.dbname);
	TAILQ_INSERT_TAIL(&px->autoprovs, j, link);
	log_conn(LOG_INFO, c, "database \"%s\" does not exist on instance %s: creating it", j->dbname, j->inst->name);
	if (!autoprov_add_waiter(j, c)) {
		autoprov_finish(j, false, "53200", "out of memory");
		return;
	}
	struct provision_params pp;
	provision_conn_params(j->inst, j->snap->conf->connect_timeout_ms, &pp);
	j->pg = PQconnectStartParams(pp.keys, pp.vals, 0);
	if (!j->pg || PQstatus(j->pg) == CONNECTION_BAD) {
		autoprov_finish(j, false, "08001", j->pg ? PQerrorMessage(j->pg) : "out of memory");
		return;
	}
	j->step = AP_CONNECTING;
	autoprov_wait(j, EV_WRITE);
}

bool autoprov_creating(struct proxy *px, const struct conf_instance *inst, const char *dbname)
{
	struct autoprov *j;
	TAILQ_FOREACH(j, &px->autoprovs, link)
	if (strcmp(j->inst->name, inst->name) == 0 && strcmp(j->dbname, dbname) == 0)
		return true;
	return false;
}
