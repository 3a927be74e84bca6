/*
 * conn: a client connection's life: creation, timers, errors to the client, closing and reaping, and
 * the map from the cancel keys pglane hands out to the connections that hold them.
 *
 * Closing never frees: conn_close() marks the connection CONN_CLOSED, releases what other parties could
 * still touch (the cancel key), disables both bufferevents and puts it on the reap list; the reaper
 * frees it on the next loop turn, outside any callback of its own (as PgBouncer and Redis do).
 */
#include "proxy/proxy.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/lhash.h>
#include <openssl/rand.h>

#include "auth/scram.h"

const char *conn_state_str(enum conn_state s)
{
	switch (s) {
	case CONN_STARTUP:
		return "startup";
	case CONN_TLS:
		return "tls";
	case CONN_AUTH:
		return "auth";
	case CONN_CONNECT:
		return "connect";
	case CONN_RELAY:
		return "active";
	case CONN_ADMIN:
		return "admin";
	case CONN_CLOSED:
		return "closed";
	}
	return "?";
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;

	if (c->state == CONN_CLOSED)
		return;
	if (c->closing) {
		conn_close(c, "client did not read its error");
		return;
	}
	if (c->deferred) {
		frontend_deferred(c);
		return;
	}
	if (c->state == CONN_CONNECT && c->be_phase == BE_SHED) {
		c->reopen ? backend_connect(c) : backend_start(c);
		return;
	}
	if (c->state == CONN_CONNECT && c->be_phase == BE_PROVISION) {
		conn_fail(c, "57014", "provisioning timeout", "timed out waiting for database \"%s\" to be created",
			  c->route.dbname);
		return;
	}
	if (c->state == CONN_CONNECT && c->waiting) { /* transaction pooling: the pool's first login never ended */
		conn_fail(c, "08001", "connect timeout",
			  "no server connection for this login within connect_timeout (%d ms): the first login to "
			  "database \"%s\" is still under way", c->snap->conf->connect_timeout_ms, c->route.dbname);
		return;
	}
	if (c->state == CONN_CONNECT) {
		const struct conf_instance *in = c->inst;
		conn_fail(c, "08001", "connect timeout",
			  "could not connect to instance \"%s\" (%s:%d) within %d ms", in->name, in->host, in->port,
			  c->snap->conf->connect_timeout_ms);
		return;
	}
	c->px->stats.login_timeouts++;
	conn_fail(c, "08P01", "login timeout", "login timeout: no complete login within %d ms",
		  c->snap->conf->login_timeout_ms);
}

void conn_arm_timer(struct conn *c, int ms)
{
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

	/* A session frees its timer when the relay starts (relay_start()); a later deadline makes it anew.
	 * Without memory for it, the deadline is not kept, and the session still ends when its sockets do. */
	if (!c->timer && !(c->timer = evtimer_new(c->px->base, conn_timer_cb, c)))
		return;
	evtimer_add(c->timer, &tv);
}

static void conn_format_peer(const struct sockaddr *sa, char *out, size_t outlen)
{
	char host[INET6_ADDRSTRLEN] = "?";

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		snprintf(out, outlen, "%s:%u", host, ntohs(in->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		snprintf(out, outlen, "[%s]:%u", host, ntohs(in6->sin6_port));
	} else {
		snprintf(out, outlen, "unix");
	}
}

struct conn *conn_new(struct proxy *px, evutil_socket_t fd, const struct sockaddr *sa, int salen)
{
	struct conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->id = atomic_fetch_add_explicit(&px->lane->next_id, 1, memory_order_relaxed) + 1;
	c->px = px;
	c->state = CONN_STARTUP;
	clock_gettime(CLOCK_MONOTONIC, &c->started);
	conn_format_peer(sa, c->peer, sizeof(c->peer));
	c->snap = snapshot_ref(px->snap);
	c->rc.fd = c->rs.fd = -1;
	c->client = bufferevent_socket_new(px->base, fd, BEV_OPT_CLOSE_ON_FREE);
	c->timer = evtimer_new(px->base, conn_timer_cb, c);
	c->lg = calloc(1, sizeof(*c->lg));
	if (!c->client || !c->timer || !c->lg) {
		free(c->lg);
		if (c->timer)
			event_free(c->timer);
		if (c->client)
			bufferevent_free(c->client);
		else
			evutil_closesocket(fd);
		free(c);
		return NULL;
	}
	TAILQ_INSERT_TAIL(&px->conns, c, link);
	px->nclients++;
	atomic_fetch_add_explicit(&px->lane->nclients, 1, memory_order_relaxed);
	px->stats.accepted++;
	conn_arm_timer(c, px->snap->conf->login_timeout_ms);
	return c;
}

static void conn_free(struct conn *c)
{
	if (c->client)
		bufferevent_free(c->client);
	if (c->server)
		bufferevent_free(c->server);
	relay_free(c);
	if (c->held)
		evbuffer_free(c->held);
	ps_client_free(c->psc);
	ps_server_free(c->pss);
	if (c->timer)
		event_free(c->timer);
	conn_login_done(c);
	snapshot_unref(c->snap);
	OPENSSL_cleanse(c->route.token, sizeof(c->route.token));
	pool_session_ends(c);
	free(c);
}

void conn_login_done(struct conn *c)
{
	if (!c->lg)
		return;
	scram_server_free(c->lg->scram);
	scram_client_free(c->lg->bscram);
	free(c->lg->startup);
	pgbuf_free(&c->lg->params);
	free(c->lg);
	c->lg = NULL;
}

static void conn_reaper_cb(evutil_socket_t fd, short what, void *arg)
{
	conn_reap_now(arg);
}

void conn_reap_now(struct proxy *px)
{
	struct conn *c;

	while ((c = TAILQ_FIRST(&px->reap))) {
		TAILQ_REMOVE(&px->reap, c, link);
		conn_free(c);
	}
}

void conn_close(struct conn *c, const char *reason)
{
	struct timespec now;

	if (c->state == CONN_CLOSED)
		return;
	krelay_refresh(c);
	clock_gettime(CLOCK_MONOTONIC, &now);
	double secs = (double)(now.tv_sec - c->started.tv_sec) + (double)(now.tv_nsec - c->started.tv_nsec) / 1e9;
	log_conn(c->state == CONN_RELAY ? LOG_INFO : LOG_DEBUG, c,
		 "closed in state %s: %s (%.3f s, %llu bytes in, %llu bytes out)", conn_state_str(c->state), reason,
		 secs, (unsigned long long)c->bytes_in, (unsigned long long)c->bytes_out);
	c->close_reason = reason;
	c->state = CONN_CLOSED;
	cancel_map_remove(c->px, c);
	autoprov_forget(c);
	pool_conn_gone(c);
	app_session_put(c);
	if (c->client)
		bufferevent_disable(c->client, EV_READ | EV_WRITE);
	if (c->server)
		bufferevent_disable(c->server, EV_READ | EV_WRITE);
	relay_stop(c, false);
	if (c->timer)
		evtimer_del(c->timer);
	c->px->nclients--;
	atomic_fetch_sub_explicit(&c->px->lane->nclients, 1, memory_order_relaxed);
	c->px->stats.bytes_in += c->bytes_in;
	c->px->stats.bytes_out += c->bytes_out;
	if (c->parked)
		TAILQ_REMOVE(&c->px->paused, c, link);
	else
		TAILQ_REMOVE(&c->px->conns, c, link);
	TAILQ_INSERT_TAIL(&c->px->reap, c, link);
	if (!c->px->reaper)
		c->px->reaper = event_new(c->px->base, -1, 0, conn_reaper_cb, c->px);
	event_active(c->px->reaper, 0, 0);
}

bool conn_send(struct conn *c, struct pgbuf *b)
{
	if (c->rc.fd >= 0) { /* a raw client: relay.c queues and sends */
		bool ok = !b->oom && relay_client_write(c, b->data, b->len);
		if (b->oom)
			conn_close(c, "out of memory");
		pgbuf_free(b);
		return ok && c->state != CONN_CLOSED;
	}
	bool ok = !b->oom && bufferevent_write(c->client, b->data, b->len) == 0;

	pgbuf_free(b);
	if (!ok)
		conn_close(c, "out of memory");
	return ok;
}

static void conn_flushed_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	if (c->state != CONN_CLOSED)
		conn_close(c, c->close_reason ? c->close_reason : "error sent");
}

static void conn_flush_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;

	if (c->state != CONN_CLOSED)
		conn_close(c, c->close_reason ? c->close_reason : "error sent");
}

static void conn_vfail(struct conn *c, const char *sqlstate, const char *hint, const char *reason, const char *fmt,
		       va_list ap)
{
	char msg[1024];
	struct pgbuf b = {0};

	if (c->state == CONN_CLOSED || c->closing)
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	/* One line for the client and the log: libpq's texts end in a newline, a client's own bytes quoted
	 * back may hold any control character. */
	for (char *m = msg; *m; m++)
		if ((unsigned char)*m < 0x20 || *m == 0x7f)
			*m = *m == '\n' || *m == '\t' ? ' ' : '?';
	for (size_t n = strlen(msg); n > 0 && msg[n - 1] == ' '; n--)
		msg[n - 1] = '\0';
	log_conn(sqlstate[0] == '2' || sqlstate[0] == '4' ? LOG_INFO : LOG_WARNING, c, "refused (%s): %s", sqlstate,
		 msg);
	if (strcmp(sqlstate, "08P01") == 0)
		c->px->stats.protocol_errors++;
	else if (c->state == CONN_CONNECT)
		c->px->stats.backend_errors++;
	struct inst_live *l;
	if (c->state == CONN_CONNECT && strcmp(sqlstate, "08001") == 0 && c->inst &&
	    (l = inst_live_lock(c->px, c->inst->name))) { /* the instance could not be reached or refused us */
		l->seen = true;
		l->reachable = false;
		snprintf(l->error, sizeof(l->error), "%.255s", msg);
		inst_live_unlock(c->px);
	}
	pg_put_error(&b, "FATAL", sqlstate, msg, NULL, hint);
	relay_close_server(c); /* its events first: a TLS server's socket is the bufferevent's to close */
	if (c->server) {
		bufferevent_free(c->server);
		c->server = NULL;
	}
	if (conn_send(c, &b))
		conn_close_after_flush(c, reason);
}

void conn_close_after_flush(struct conn *c, const char *reason)
{
	if (c->state == CONN_CLOSED)
		return;
	c->closing = true;
	c->close_reason = reason;
	if (!relay_unflushed(c, true)) {
		conn_close(c, reason);
		return;
	}
	/* Flush, then close; the timer bounds how long a client that does not read can hold us. */
	conn_arm_timer(c, 5000);
	if (c->server)
		bufferevent_disable(c->server, EV_READ);
	if (c->rc.fd >= 0) { /* a raw client: relay.c's write event closes it once flushed */
		relay_stop(c, true);
		return;
	}
	bufferevent_disable(c->client, EV_READ);
	bufferevent_setwatermark(c->client, EV_WRITE, 0, 0);
	bufferevent_setcb(c->client, NULL, conn_flushed_cb, conn_flush_event_cb, c);
	bufferevent_enable(c->client, EV_WRITE);
}

struct bufferevent *conn_upgrade_tls(struct proxy *px, struct bufferevent *plain, SSL *ssl, bool accepting)
{
	evutil_socket_t fd = bufferevent_getfd(plain);

	/* Detach the socket from the plaintext bufferevent, so TLS runs on the socket itself rather than as
	 * a filter over another buffer: one copy less on every byte relayed. */
	bufferevent_setfd(plain, -1);
	bufferevent_free(plain);
	struct bufferevent *bev = bufferevent_openssl_socket_new(
		px->base, fd, ssl, accepting ? BUFFEREVENT_SSL_ACCEPTING : BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
	if (!bev) {
		SSL_free(ssl);
		evutil_closesocket(fd);
		return NULL;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

void conn_fail(struct conn *c, const char *sqlstate, const char *reason, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	conn_vfail(c, sqlstate, NULL, reason, fmt, ap);
	va_end(ap);
}

void conn_fail_hint(struct conn *c, const char *sqlstate, const char *hint, const char *reason, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	conn_vfail(c, sqlstate, hint, reason, fmt, ap);
	va_end(ap);
}

/* ---------------------------------------------------------------- cancel keys */

static unsigned long cancel_hash(const void *p)
{
	return ((const struct conn *)p)->cancel_key;
}

static int cancel_cmp(const void *a, const void *b)
{
	uint32_t x = ((const struct conn *)a)->cancel_key, y = ((const struct conn *)b)->cancel_key;
	return x < y ? -1 : x > y;
}

/* Picks a random key no live session of px holds and registers c under it.  Its low bits are px's worker
 * index (lane->mask), so a CancelRequest that lands on another worker finds its way here. */
bool cancel_map_add(struct proxy *px, struct conn *c)
{
	uint32_t mask = px->lane->mask;

	if (!px->cancel_map && !(px->cancel_map = OPENSSL_LH_new(cancel_hash, cancel_cmp)))
		return false;
	for (int tries = 0; tries < 16; tries++) {
		if (RAND_bytes((unsigned char *)&c->cancel_key, sizeof(c->cancel_key)) != 1)
			return false;
		c->cancel_key = (c->cancel_key & ~mask) | px->wid;
		if (c->cancel_key && !cancel_map_find(px, c->cancel_key)) {
			OPENSSL_LH_insert(px->cancel_map, c);
			if (!OPENSSL_LH_error(px->cancel_map))
				return true;
			break;
		}
	}
	c->cancel_key = 0;
	return false;
}

void cancel_map_remove(struct proxy *px, struct conn *c)
{
	if (c->cancel_key && px->cancel_map)
		OPENSSL_LH_delete(px->cancel_map, c);
	c->cancel_key = 0;
}

struct conn *cancel_map_find(struct proxy *px, uint32_t key)
{
	struct conn probe;

	if (!px->cancel_map || !key)
		return NULL;
	probe.cancel_key = key;
	return OPENSSL_LH_retrieve(px->cancel_map, &probe);
}

void proxy_caches_free(struct proxy *px)
{
	OPENSSL_LH_free(px->cancel_map);
	px->cancel_map = NULL;
}

void conn_terminate(struct conn *c)
{
	krelay_refresh(c);
	if (c->state == CONN_RELAY && c->server_idle && relay_pending(c, true) == 0) {
		conn_fail(c, "57P01", "shutdown", "terminating connection due to administrator command");
		return;
	}
	if (c->state == CONN_RELAY || c->state == CONN_ADMIN) {
		conn_close(c, "shutdown");
		return;
	}
	/* Still logging in (or held by PAUSE): nothing of the server's has reached the client yet. */
	if (c->parked) {
		TAILQ_REMOVE(&c->px->paused, c, link);
		TAILQ_INSERT_TAIL(&c->px->conns, c, link);
		c->parked = false;
	}
	conn_fail(c, "57P01", "shutdown", "terminating connection due to administrator command");
}
