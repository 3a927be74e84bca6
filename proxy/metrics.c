/*
 * metrics: the optional HTTP listener ([pglane] http_listen) with libevent's evhttp:
 *   /healthz  200 while the loop runs
 *   /readyz   200 while pglane accepts connections, 503 while it shuts down
 *   /metrics  Prometheus text format 0.0.4
 *   /status   the JSON of `pglane status --json`, from what the running proxy knows
 * Gauges are computed from the connection list at scrape time, so the hot path only bumps counters.
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

static void metrics_clients(struct proxy *px, struct evbuffer *b, uint64_t *bytes_in, uint64_t *bytes_out)
{
	const struct conf *c = px->snap->conf;
	enum { NS = CONN_CLOSED };
	size_t napp = c->napps + 1; /* last: not routed (yet) */
	uint64_t *n = calloc(napp * 3 * NS, sizeof(uint64_t));
	struct conn *it;

	evbuffer_add_printf(b, "# HELP pglane_clients Client connections by app, timeline kind and state.\n"
			       "# TYPE pglane_clients gauge\n");
	if (!n)
		return;
	for (int list = 0; list < 2; list++) {
		TAILQ_FOREACH(it, list ? &px->paused : &px->conns, link)
		{
			*bytes_in += it->bytes_in;
			*bytes_out += it->bytes_out;
			/* By id: a session routed before a reload points into the old conf. */
			const struct conf_app *app = it->route.app ? conf_app_find(c, it->route.id.app) : NULL;
			size_t a = app ? (size_t)(app - c->apps) : c->napps;
			n[(a * 3 + it->route.id.tl.kind) * NS + it->state]++;
		}
	}
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
	evbuffer_add_printf(m->b, "\"} %u\n", v[m->field]);
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
		struct metrics_pools m = {b, f};
		char name[64];
		snprintf(name, sizeof(name), "%.*s", (int)strcspn(help[f], " "), help[f]);
		evbuffer_add_printf(b, "# HELP %s\n# TYPE %s gauge\n", help[f], name);
		pool_each_group(px, metrics_pool_row, &m);
	}
}

static void metrics_cb(struct evhttp_request *req, void *arg)
{
	struct proxy *px = arg;
	struct stats *s = &px->stats;
	struct evbuffer *b = evbuffer_new();
	uint64_t in = s->bytes_in, out = s->bytes_out;

	if (!b)
		return;
	metrics_clients(px, b, &in, &out);
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
	evbuffer_add_printf(b, "# HELP pglane_server_connections_idle Server connections waiting for a client.\n"
			       "# TYPE pglane_server_connections_idle gauge\npglane_server_connections_idle %zu\n",
			    px->npooled);
	metrics_pools(px, b);
	evbuffer_add_printf(b, "# HELP pglane_reloads_total Configuration reloads by result.\n"
			       "# TYPE pglane_reloads_total counter\n"
			       "pglane_reloads_total{result=\"ok\"} %llu\npglane_reloads_total{result=\"rejected\"} %llu\n",
			    (unsigned long long)s->reloads_ok, (unsigned long long)s->reloads_failed);
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

struct inst_live *inst_live_get(struct proxy *px, const char *name)
{
	struct inst_live *l;

	for (l = px->inst_live; l; l = l->next)
		if (strcmp(l->name, name) == 0)
			return l;
	if (!(l = calloc(1, sizeof(*l))))
		return NULL;
	snprintf(l->name, sizeof(l->name), "%s", name);
	l->next = px->inst_live;
	px->inst_live = l;
	return l;
}

void inst_live_free(struct proxy *px)
{
	struct inst_live *l, *next;

	for (l = px->inst_live; l; l = next) {
		next = l->next;
		free(l);
	}
	px->inst_live = NULL;
}

static void json_str_or_null(struct evbuffer *b, const char *s)
{
	if (s && *s)
		metrics_json_string(b, s);
	else
		evbuffer_add_printf(b, "null");
}

/* The databases of app on its instance that the running proxy knows of: those with sessions (Connected)
 * and those being created (Creating).  One entry each. */
static void status_app_databases(struct proxy *px, const struct conf_app *app, struct evbuffer *b)
{
	struct conn *it, *jt;
	bool first = true;

	TAILQ_FOREACH(it, &px->conns, link)
	{
		bool creating = it->state == CONN_CONNECT && it->be_phase == BE_PROVISION;
		if (!it->route.app || it->admin || strcmp(it->route.id.app, app->id) != 0 ||
		    (it->state != CONN_RELAY && !creating))
			continue;
		bool seen = false;
		TAILQ_FOREACH(jt, &px->conns, link)
		{
			if (jt == it)
				break;
			seen |= jt->route.app && !jt->admin && strcmp(jt->route.id.app, app->id) == 0 &&
				(jt->state == CONN_RELAY || (jt->state == CONN_CONNECT && jt->be_phase == BE_PROVISION)) &&
				strcmp(jt->route.dbname, it->route.dbname) == 0;
		}
		if (seen)
			continue;
		size_t n = 0;
		TAILQ_FOREACH(jt, &px->conns, link)
		n += jt->state == CONN_RELAY && jt->route.app && strcmp(jt->route.dbname, it->route.dbname) == 0 &&
		     strcmp(jt->route.id.app, app->id) == 0;
		const struct timeline *tl = &it->route.id.tl;
		evbuffer_add_printf(b, "%s{\"name\":", first ? "" : ",");
		metrics_json_string(b, it->route.dbname);
		evbuffer_add_printf(b, ",\"timeline\":\"%s\",\"branch\":", timeline_kind_str(tl->kind));
		json_str_or_null(b, tl->kind == TIMELINE_BRANCH ? tl->branch : NULL);
		evbuffer_add_printf(b, ",\"state\":\"%s\",\"error\":null,\"clients\":%zu}",
				    autoprov_creating(px, it->inst, it->route.dbname) ? "Creating" : "Connected", n);
		first = false;
	}
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
	const struct conf *c = px->snap->conf;
	struct evbuffer *b = evbuffer_new();

	if (!b)
		return;
	evbuffer_add_printf(b, "{\"config\":");
	metrics_json_string(b, c->path);
	evbuffer_add_printf(b, ",\"instances\":[");
	for (size_t i = 0; i < c->ninstances; i++) {
		const struct conf_instance *in = &c->instances[i];
		const struct inst_live *l = inst_live_get(px, in->name);
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
	evbuffer_add_printf(b, "],\"clients\":%zu,\"stopping\":%s}\n", px->nclients, px->stopping ? "true" : "false");
	metrics_send(req, 200, "application/json", b);
	evbuffer_free(b);
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
