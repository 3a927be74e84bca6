/*
 * metrics: the optional HTTP listener ([pglane] http_listen) with libevent's evhttp:
 *   /healthz  200 while the loop runs
 *   /readyz   200 while pglane accepts connections, 503 while it shuts down
 *   /metrics  Prometheus text format 0.0.4
 *   /status   the JSON of `pglane status --json`, from what the running proxy knows
 * Gauges are computed from the connection list at scrape time, so the hot path only bumps counters.  The
 * listener runs on worker 0, which gathers the other workers' lists and counters (worker_each()).
 */
#include "proxy/proxy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>

const double stats_connect_bounds[STATS_CONNECT_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
							    0.1,   0.25,   0.5,   1,    2.5,   5};

void stats_observe_connect(struct proxy *px, const struct timespec *since)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	double s = (double)(now.tv_sec - since->tv_sec) + (double)(now.tv_nsec - since->tv_nsec) / 1e9;
	size_t i = 0;
	while (i < STATS_CONNECT_BUCKETS && s > stats_connect_bounds[i])
		i++;
	px->stats.connect_hist[i]++;
	px->stats.connect_sum += s;
	px->stats.connect_count++;
}

static void metrics_send(struct evhttp_request *req, int code, const char *ctype, struct evbuffer *body)
{
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
	evhttp_send_reply(req, code, code == 200 ? "OK" : "Service Unavailable", body);
}

static void metrics_counter(struct evbuffer *b, const char *name, const char *help, uint64_t v)
{
	evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name,
			    (unsigned long long)v);
}

/* Label values: Prometheus escapes backslash, double quote and newline. */
static void metrics_label(struct evbuffer *b, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			evbuffer_add_printf(b, "\\%c", *s);
		else if (*s == '\n')
			evbuffer_add(b, "\\n", 2);
		else
			evbuffer_add(b, s, 1);
	}
}

void stats_gather(struct proxy *px, void *arg)
{
	struct stats_sum *sum = arg;
	const struct stats *s = &px->stats;
	struct stats *d = &sum->s;
	struct conn *it;

	d->accepted += s->accepted, d->routed += s->routed, d->refused_too_many += s->refused_too_many;
	d->protocol_errors += s->protocol_errors, d->login_timeouts += s->login_timeouts;
	d->auth_fail_password += s->auth_fail_password, d->auth_fail_user += s->auth_fail_user;
	d->auth_fail_database += s->auth_fail_database, d->auth_fail_cert += s->auth_fail_cert;
	d->tls_handshakes += s->tls_handshakes, d->cancel_requests += s->cancel_requests;
	d->cancels_forwarded += s->cancels_forwarded, d->backend_errors += s->backend_errors;
	d->provisions_ok += s->provisions_ok, d->provisions_failed += s->provisions_failed;
	d->pool_kept += s->pool_kept, d->pool_reused += s->pool_reused;
	d->ps_prepared += s->ps_prepared, d->ps_answered += s->ps_answered, d->ps_evicted += s->ps_evicted;
	d->bytes_in += s->bytes_in, d->bytes_out += s->bytes_out;
	for (size_t i = 0; i <= STATS_CONNECT_BUCKETS; i++)
		d->connect_hist[i] += s->connect_hist[i];
	d->connect_sum += s->connect_sum, d->connect_count += s->connect_count;
	sum->clients += px->nclients;
	sum->pooled += px->npooled;
	for (int list = 0; list < 2; list++)
		TAILQ_FOREACH(it, list ? &px->paused : &px->conns, link)
		{
			sum->live_in += it->bytes_in;
			sum->live_out += it->bytes_out;
		}
}

/* pglane_clients over the workers: counts by app (of conf), timeline kind and state. */
enum { METRICS_NS = CONN_CLOSED };
struct metrics_count {
	const struct conf *conf;
	uint64_t *n;
};

static void metrics_count_clients(struct proxy *px, void *arg)
{
	struct metrics_count *m = arg;
	const struct conf *c = m->conf;
	struct conn *it;

	for (int list = 0; list < 2; list++) {
		TAILQ_FOREACH(it, list ? &px->paused : &px->conns, link)
		{
			/* By id: a session routed before a reload points into the old conf. */
			const struct conf_app *app = it->route.app ? conf_app_find(c, it->route.id.app) : NULL;
			size_t a = app ? (size_t)(app - c->apps) : c->napps;
			m->n[(a * 3 + it->route.id.tl.kind) * METRICS_NS + it->state]++;
		}
	}
}

static void metrics_clients(struct proxy *px, const struct conf *c, struct evbuffer *b)
{
	enum { NS = METRICS_NS };
	size_t napp = c->napps + 1; /* last: not routed (yet) */
	uint64_t *n = calloc(napp * 3 * NS, sizeof(uint64_t));
	struct metrics_count mc = {c, n};

	evbuffer_add_printf(b, "# HELP pglane_clients Client connections by app, timeline kind and state.\n"
			       "# TYPE pglane_clients gauge\n");
	if (!n)
		return;
	worker_each(px->lane, px, metrics_count_clients, &mc);
	for (size_t a = 0; a < napp; a++)
		for (int k = 0; k < 3; k++)
			for (int s = 0; s < NS; s++) {
				uint64_t v = n[(a * 3 + (size_t)k) * NS + (size_t)s];
				if (!v)
					continue;
				evbuffer_add_printf(b, "pglane_clients{app=\"");
				metrics_label(b, a < c->napps ? c->apps[a].id : "");
				evbuffer_add_printf(b, "\",timeline=\"%s\",state=\"%s\"} %llu\n",
						    a < c->napps ? timeline_kind_str((enum timeline_kind)k) : "",
						    conn_state_str((enum conn_state)s), (unsigned long long)v);
			}
	free(n);
}

/* Transaction pools: one line per pool and gauge. */
struct metrics_pools {
	struct evbuffer *b;
	int field; /* 0 sessions, 1 waiting, 2 servers, 3 idle, 4 pinned */
	int wid;   /* the worker whose pools these are; -1 with one worker (no label) */
};

static void metrics_pool_row(void *arg, const struct pool_info *in)
{
	const struct metrics_pools *m = arg;
	static const char *const names[] = {"pglane_pool_sessions", "pglane_pool_waiting", "pglane_pool_servers",
					    "pglane_pool_idle", "pglane_pool_pinned"};
	unsigned v[] = {in->sessions, in->waiting, in->servers, in->idle, in->pinned};

	evbuffer_add_printf(m->b, "%s{instance=\"", names[m->field]);
	metrics_label(m->b, in->instance);
	evbuffer_add_printf(m->b, "\",database=\"");
	metrics_label(m->b, in->dbname);
	if (m->wid >= 0)
		evbuffer_add_printf(m->b, "\",worker=\"%d", m->wid);
	evbuffer_add_printf(m->b, "\"} %u\n", v[m->field]);
}

static void metrics_pools_of(struct proxy *px, void *arg)
{
	struct metrics_pools m = *(struct metrics_pools *)arg;

	if (px->lane->n > 1)
		m.wid = (int)px->wid;
	pool_each_group(px, metrics_pool_row, &m);
}

static void metrics_pools(struct proxy *px, struct evbuffer *b)
{
	static const char *const help[] = {
	    "pglane_pool_sessions Sessions of a transaction pool (pool_mode = transaction).",
	    "pglane_pool_waiting Sessions of a transaction pool waiting for a server connection.",
	    "pglane_pool_servers Server connections of a transaction pool: in a transaction, idle or logging in.",
	    "pglane_pool_idle Server connections of a transaction pool between transactions.",
	    "pglane_pool_pinned Sessions of a transaction pool that keep their server connection (named prepared "
	    "statements)."};

	for (int f = 0; f < 5; f++) {
		struct metrics_pools m = {b, f, -1};
		char name[64];
		snprintf(name, sizeof(name), "%.*s", (int)strcspn(help[f], " "), help[f]);
		evbuffer_add_printf(b, "# HELP %s\n# TYPE %s gauge\n", help[f], name);
		worker_each(px->lane, px, metrics_pools_of, &m);
	}
}

static void metrics_cb(struct evhttp_request *req, void *arg)
{
	struct proxy *px = arg;
	struct stats_sum sum = {0};
	const struct stats *s = &sum.s;
	struct evbuffer *b = evbuffer_new();
	struct snapshot *snap = snapshot_ref(px->snap); /* px->snap may change while the others are asked */

	if (!b) {
		snapshot_unref(snap);
		return;
	}
	worker_each(px->lane, px, stats_gather, &sum);
	uint64_t in = s->bytes_in + sum.live_in, out = s->bytes_out + sum.live_out;
	metrics_clients(px, snap->conf, b);
	metrics_counter(b, "pglane_connections_accepted_total", "Client connections accepted.", s->accepted);
	metrics_counter(b, "pglane_connections_routed_total", "Client sessions routed to an instance.", s->routed);
	metrics_counter(b, "pglane_connections_refused_too_many_total", "Connections refused with 53300.",
			s->refused_too_many);
	evbuffer_add_printf(b, "# HELP pglane_auth_failures_total Authentication failures by reason.\n"
			       "# TYPE pglane_auth_failures_total counter\n"
			       "pglane_auth_failures_total{reason=\"password\"} %llu\n"
			       "pglane_auth_failures_total{reason=\"user\"} %llu\n"
			       "pglane_auth_failures_total{reason=\"database\"} %llu\n"
			       "pglane_auth_failures_total{reason=\"certificate\"} %llu\n",
			    (unsigned long long)s->auth_fail_password, (unsigned long long)s->auth_fail_user,
			    (unsigned long long)s->auth_fail_database, (unsigned long long)s->auth_fail_cert);
	metrics_counter(b, "pglane_protocol_errors_total", "Clients refused with 08P01.", s->protocol_errors);
	metrics_counter(b, "pglane_login_timeouts_total", "Clients that did not log in within login_timeout.",
			s->login_timeouts);
	metrics_counter(b, "pglane_tls_handshakes_total", "Client TLS handshakes completed.", s->tls_handshakes);
	metrics_counter(b, "pglane_cancel_requests_total", "CancelRequests received.", s->cancel_requests);
	metrics_counter(b, "pglane_cancel_forwarded_total", "CancelRequests forwarded to an instance.",
			s->cancels_forwarded);
	metrics_counter(b, "pglane_backend_errors_total", "Sessions that could not connect or log in to an instance.",
			s->backend_errors);
	metrics_counter(b, "pglane_provisions_total", "Databases created on first connection.", s->provisions_ok);
	metrics_counter(b, "pglane_provision_failures_total", "Databases that could not be created.",
			s->provisions_failed);
	metrics_counter(b, "pglane_server_connections_kept_total",
			"Server connections kept for the next client when theirs left (server_idle_timeout).", s->pool_kept);
	metrics_counter(b, "pglane_server_connections_reused_total",
			"Client logins served by a kept server connection: no connection or login to the instance.",
			s->pool_reused);
	metrics_counter(b, "pglane_prepared_statements_prepared_total",
			"Named statements prepared on server connections (transaction pooling).", s->ps_prepared);
	metrics_counter(b, "pglane_prepared_statements_answered_total",
			"Parse and Close messages of named statements pglane answered itself (transaction pooling).",
			s->ps_answered);
	metrics_counter(b, "pglane_prepared_statements_closed_total",
			"Named statements closed on server connections to stay within max_prepared_statements.",
			s->ps_evicted);
	evbuffer_add_printf(b, "# HELP pglane_server_connections_idle Server connections waiting for a client.\n"
			       "# TYPE pglane_server_connections_idle gauge\npglane_server_connections_idle %zu\n",
			    (size_t)sum.pooled);
	metrics_pools(px, b);
	evbuffer_add_printf(b, "# HELP pglane_reloads_total Configuration reloads by result.\n"
			       "# TYPE pglane_reloads_total counter\n"
			       "pglane_reloads_total{result=\"ok\"} %llu\npglane_reloads_total{result=\"rejected\"} %llu\n",
			    (unsigned long long)atomic_load(&px->lane->reloads_ok),
			    (unsigned long long)atomic_load(&px->lane->reloads_failed));
	evbuffer_add_printf(b, "# HELP pglane_bytes_total Bytes relayed, by direction.\n"
			       "# TYPE pglane_bytes_total counter\n"
			       "pglane_bytes_total{direction=\"from_client\"} %llu\n"
			       "pglane_bytes_total{direction=\"to_client\"} %llu\n",
			    (unsigned long long)in, (unsigned long long)out);
	evbuffer_add_printf(b, "# HELP pglane_backend_connect_seconds Time from routing to the server's ReadyForQuery.\n"
			       "# TYPE pglane_backend_connect_seconds histogram\n");
	uint64_t cum = 0;
	for (size_t i = 0; i <= STATS_CONNECT_BUCKETS; i++) {
		cum += s->connect_hist[i];
		if (i < STATS_CONNECT_BUCKETS)
			evbuffer_add_printf(b, "pglane_backend_connect_seconds_bucket{le=\"%g\"} %llu\n",
					    stats_connect_bounds[i], (unsigned long long)cum);
		else
			evbuffer_add_printf(b, "pglane_backend_connect_seconds_bucket{le=\"+Inf\"} %llu\n",
					    (unsigned long long)cum);
	}
	evbuffer_add_printf(b, "pglane_backend_connect_seconds_sum %.6f\npglane_backend_connect_seconds_count %llu\n",
			    s->connect_sum, (unsigned long long)s->connect_count);
	metrics_send(req, 200, "text/plain; version=0.0.4; charset=utf-8", b);
	evbuffer_free(b);
	snapshot_unref(snap);
}

static void metrics_json_string(struct evbuffer *b, const char *s)
{
	evbuffer_add(b, "\"", 1);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			evbuffer_add_printf(b, "\\%c", ch);
		else if (ch < 0x20)
			evbuffer_add_printf(b, "\\u%04x", ch);
		else
			evbuffer_add(b, s, 1);
	}
	evbuffer_add(b, "\"", 1);
}

static void json_str_or_null(struct evbuffer *b, const char *s)
{
	if (s && *s)
		metrics_json_string(b, s);
	else
		evbuffer_add_printf(b, "null");
}

/* The databases of app on its instance that the running proxy knows of, over the workers: those with
 * sessions (Connected) and those being created (Creating).  One entry each. */
struct status_db {
	char dbname[128];
	enum timeline_kind kind;
	char branch[TIMELINE_BRANCH_MAX + 1];
	bool creating;
	size_t clients;
};
struct status_dbs {
	const char *app;
	struct status_db *e;
	size_t n, cap;
};

static void status_app_databases_of(struct proxy *px, void *arg)
{
	struct status_dbs *r = arg;
	struct conn *it;

	TAILQ_FOREACH(it, &px->conns, link)
	{
		bool creating = it->state == CONN_CONNECT && it->be_phase == BE_PROVISION;
		if (!it->route.app || it->admin || strcmp(it->route.id.app, r->app) != 0 ||
		    (it->state != CONN_RELAY && !creating))
			continue;
		size_t i = 0;
		while (i < r->n && strcmp(r->e[i].dbname, it->route.dbname) != 0)
			i++;
		if (i == r->n) {
			if (r->n == r->cap) {
				size_t cap = r->cap ? r->cap * 2 : 8;
				struct status_db *e = realloc(r->e, cap * sizeof(*e));
				if (!e)
					return;
				r->e = e, r->cap = cap;
			}
			struct status_db *e = &r->e[r->n++];
			memset(e, 0, sizeof(*e));
			snprintf(e->dbname, sizeof(e->dbname), "%s", it->route.dbname);
			e->kind = it->route.id.tl.kind;
			if (e->kind == TIMELINE_BRANCH)
				snprintf(e->branch, sizeof(e->branch), "%s", it->route.id.tl.branch);
		}
		r->e[i].clients += it->state == CONN_RELAY;
		r->e[i].creating |= autoprov_creating(px, it->inst, it->route.dbname);
	}
}

static void status_app_databases(struct proxy *px, const struct conf_app *app, struct evbuffer *b)
{
	struct status_dbs r = {app->id, NULL, 0, 0};

	worker_each(px->lane, px, status_app_databases_of, &r);
	for (size_t i = 0; i < r.n; i++) {
		const struct status_db *e = &r.e[i];
		evbuffer_add_printf(b, "%s{\"name\":", i ? "," : "");
		metrics_json_string(b, e->dbname);
		evbuffer_add_printf(b, ",\"timeline\":\"%s\",\"branch\":", timeline_kind_str(e->kind));
		json_str_or_null(b, e->kind == TIMELINE_BRANCH ? e->branch : NULL);
		evbuffer_add_printf(b, ",\"state\":\"%s\",\"error\":null,\"clients\":%zu}",
				    e->creating ? "Creating" : "Connected", e->clients);
	}
	free(r.e);
}

/*
 * The shape of `pglane status --json` (proxy/cli_lifecycle.c), from what the running proxy knows rather
 * than from polling: an instance is Connected when its last login succeeded, Error (with why) when it failed,
 * Unassigned when no app uses it, and "state": null before any session tried it; server_version and tls come
 * from those logins.  Databases are the ones sessions use now (with "clients") or that are being created.
 * Two fields the CLI does not have: "clients" (all sessions) and "stopping".
 */
static void status_cb(struct evhttp_request *req, void *arg)
{
	struct proxy *px = arg;
	struct snapshot *snap = snapshot_ref(px->snap); /* px->snap may change while the others are asked */
	const struct conf *c = snap->conf;
	struct evbuffer *b = evbuffer_new();

	if (!b) {
		snapshot_unref(snap);
		return;
	}
	evbuffer_add_printf(b, "{\"config\":");
	metrics_json_string(b, c->path);
	evbuffer_add_printf(b, ",\"instances\":[");
	for (size_t i = 0; i < c->ninstances; i++) {
		const struct conf_instance *in = &c->instances[i];
		struct inst_live copy = {0}, *l = inst_live_lock(px, in->name);
		if (l) {
			copy = *l;
			inst_live_unlock(px);
			l = &copy;
		}
		bool seen = l && l->seen;
		evbuffer_add_printf(b, "%s{\"name\":", i ? "," : "");
		metrics_json_string(b, in->name);
		evbuffer_add_printf(b, ",\"host\":");
		metrics_json_string(b, in->host);
		evbuffer_add_printf(b, ",\"port\":%d,\"state\":", in->port);
		if (!in->used)
			evbuffer_add_printf(b, "\"Unassigned\"");
		else if (seen)
			evbuffer_add_printf(b, "\"%s\"", l->reachable ? "Connected" : "Error");
		else
			evbuffer_add_printf(b, "null");
		evbuffer_add_printf(b, ",\"reachable\":%s,\"server_version\":",
				    seen ? (l->reachable ? "true" : "false") : "null");
		json_str_or_null(b, seen ? l->server_version : NULL);
		evbuffer_add_printf(b, ",\"tls\":%s,\"tls_protocol\":",
				    seen && l->reachable ? (*l->tls ? "true" : "false") : "null");
		json_str_or_null(b, seen ? l->tls : NULL);
		evbuffer_add_printf(b, ",\"error\":");
		if (seen && !l->reachable) {
			evbuffer_add_printf(b, "{\"fault\":\"connect\",\"message\":");
			metrics_json_string(b, l->error);
			evbuffer_add_printf(b, ",\"fix\":\"run pglane test -c CONFIG %s\"}", in->name);
		} else {
			evbuffer_add_printf(b, "null");
		}
		evbuffer_add_printf(b, ",\"apps\":[");
		bool first = true;
		for (size_t a = 0; a < c->napps; a++) {
			const struct conf_app *app = &c->apps[a];
			if (app->instance != in)
				continue;
			evbuffer_add_printf(b, "%s{\"id\":", first ? "" : ",");
			metrics_json_string(b, app->id);
			evbuffer_add_printf(b, ",\"provision\":\"%s\",\"databases\":[",
					    app->provision == PROVISION_AUTO ? "auto" : "manual");
			status_app_databases(px, app, b);
			evbuffer_add_printf(b, "]}");
			first = false;
		}
		evbuffer_add_printf(b, "]}");
	}
	evbuffer_add_printf(b, "],\"clients\":%zu,\"stopping\":%s}\n", atomic_load(&px->lane->nclients),
			    px->stopping ? "true" : "false");
	metrics_send(req, 200, "application/json", b);
	evbuffer_free(b);
	snapshot_unref(snap);
}

static void healthz_cb(struct evhttp_request *req, void *arg)
{
	struct evbuffer *b = evbuffer_new();
	if (!b)
		return;
	evbuffer_add_printf(b, "ok\n");
	metrics_send(req, 200, "text/plain", b);
	evbuffer_free(b);
}

static void readyz_cb(struct evhttp_request *req, void *arg)
{
	struct proxy *px = arg;
	struct evbuffer *b = evbuffer_new();
	if (!b)
		return;
	evbuffer_add_printf(b, px->stopping ? "shutting down\n" : "ready\n");
	metrics_send(req, px->stopping ? 503 : 200, "text/plain", b);
	evbuffer_free(b);
}

bool metrics_listen(struct proxy *px, const char *hostport, char *err, size_t errlen)
{
	char *host = NULL, *port = NULL;

	if (!conf_parse_hostport(hostport, &host, &port, err, errlen))
		return false;
	px->http = evhttp_new(px->base);
	bool ok = px->http && evhttp_bind_socket(px->http, host, (ev_uint16_t)atoi(port)) == 0;
	if (!ok)
		snprintf(err, errlen, "cannot listen for HTTP on %s", hostport);
	else
		log_msg(LOG_INFO, "HTTP on %s: /healthz /readyz /status /metrics", hostport);
	free(host);
	free(port);
	if (!ok)
		return false;
	evhttp_set_allowed_methods(px->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
	evhttp_set_cb(px->http, "/metrics", metrics_cb, px);
	evhttp_set_cb(px->http, "/status", status_cb, px);
	evhttp_set_cb(px->http, "/healthz", healthz_cb, px);
	evhttp_set_cb(px->http, "/readyz", readyz_cb, px);
	return true;
}

void metrics_free(struct proxy *px)
{
	if (px->http)
		evhttp_free(px->http);
	px->http = NULL;
}
