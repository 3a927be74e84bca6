/*
 * relay: forwarding both ways once the server said ReadyForQuery.
 *
 * A plaintext side leaves its bufferevent at relay_start() and relays on its raw socket: recv() into a
 * buffer on the stack and send() straight on to the other side, one system call each way, no ioctl
 * before each read, no write event armed and disarmed per message, no allocation per message, no parsing.
 * Only what a socket does not take goes into an evbuffer, with a write event until it drains.  A TLS side
 * stays a bufferevent_openssl; the four combinations share relay_deliver().
 *
 * Back-pressure: when what waits for one side passes RELAY_HIGH, pglane stops reading from the other side
 * until it drains below RELAY_HIGH / 2, so a client that stops reading holds at most about RELAY_HIGH bytes
 * of pglane's memory and the server feels it as a full socket (it waits on ClientWrite).  A client that
 * takes nothing for client_write_timeout is cut; a session silent both ways for client_idle_timeout ends.
 */
#include "proxy/proxy.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#define RELAY_CHUNK 16384 /* bytes per recv(); PostgreSQL writes in 8 kB pieces */
#define RELAY_READS 4     /* recv()s per wakeup while they come back full */
#define RELAY_TRIM_LOGINS 64 /* sessions started before the sweep returns freed login memory */

static void relay_read_cb(struct bufferevent *bev, void *arg);
static void relay_event_cb(struct bufferevent *bev, short what, void *arg);
static void relay_raw_write_cb(evutil_socket_t fd, short what, void *arg);
static bool relay_kr_wait(struct conn *c, bool to_client);
static bool relay_arm_write(struct conn *c, bool client);
static void relay_drained_cb(struct bufferevent *dst, void *arg);
static bool relay_deliver(struct conn *c, bool to_client, const uint8_t *p, size_t n, struct evbuffer *buf);
static bool relay_go_raw(struct conn *c, bool client, struct evbuffer *leftover);
static bool relay_go_tls(struct conn *c, bool client, struct evbuffer *leftover);
static void relay_raw_free(struct relay_raw *r, bool keep_fd);

static struct relay_raw *relay_raw_of(struct conn *c, bool client)
{
	return client ? &c->rc : &c->rs;
}

static struct bufferevent *relay_bev_of(struct conn *c, bool client)
{
	return client ? c->client : c->server;
}

size_t relay_pending(struct conn *c, bool client)
{
	struct relay_raw *r = relay_raw_of(c, client);
	struct bufferevent *b = relay_bev_of(c, client);

	size_t waiting = client || !c->psc ? 0 : ps_stashed(c->psc); /* (the client's bytes waiting in stmt.c) */

	if (r->fd >= 0)
		return waiting + (r->out ? evbuffer_get_length(r->out) : 0);
	return waiting + (b ? evbuffer_get_length(bufferevent_get_output(b)) : 0);
}

static void relay_reading(struct conn *c, bool client, bool on)
{
	struct relay_raw *r = relay_raw_of(c, client);
	struct bufferevent *b = relay_bev_of(c, client);

	if (r->fd >= 0) {
		on ? event_add(r->rev, NULL) : event_del(r->rev);
		/* OpenSSL may hold bytes it has read already (read-ahead): epoll will not say so. */
		if (on && r->ssl && SSL_has_pending(r->ssl))
			event_active(r->rev, EV_READ, 0);
	} else if (b)
		on ? bufferevent_enable(b, EV_READ) : bufferevent_disable(b, EV_READ);
}

/* Whether what the server sent ends in a ReadyForQuery ('Z', length 5, status): the stream to the client
 * then stands at a message boundary, where pglane may speak to the client itself (shutdown's 57P01), even
 * while the client waits for the answer to a query it has sent since. */
bool relay_is_ready_tail(const uint8_t t[6])
{
	return t[0] == PG_MSG_READY_FOR_QUERY && t[1] == 0 && t[2] == 0 && t[3] == 0 && t[4] == 5 &&
	       (t[5] == 'I' || t[5] == 'T' || t[5] == 'E');
}

static void relay_count(struct conn *c, bool from_client, const uint8_t *tail6, size_t n)
{
	c->last_active = c->px->clock_s;
	if (from_client) {
		c->bytes_in += n;
		c->client_waiting = true;
	} else {
		c->bytes_out += n;
		c->server_idle = tail6 && relay_is_ready_tail(tail6);
		c->server_status = c->server_idle ? (char)tail6[5] : 0;
		c->client_waiting &= !c->server_idle;
	}
}

/* The destination dst now holds a lot: stop reading its source until it drains. */
/* What pglane holds for one side of a session the kernel relays, at most: see relay_check_full(). */
#define RELAY_KR_HOLD_MAX (16 * 1024 * 1024)

static void relay_check_full(struct conn *c, bool dst_client)
{
	size_t pending = relay_pending(c, dst_client);

	if (pending < RELAY_HIGH)
		return;
	if (conn_kr_on(c)) {
		/* A socket in the kernel relay's sockmap is never left unread: when pglane stopped reading one
		 * whose bytes the BPF program passes to it, this kernel (6.18) now and then handed them over out of
		 * order (tests/integration/t_krelay.sh, the slow reader).  So pglane holds more instead, up to a
		 * bound, and a side slower than that is cut. */
		if (pending >= RELAY_KR_HOLD_MAX)
			conn_close(c, dst_client ? "the client fell 16 MB behind the server (kernel_relay holds no more)"
						 : "the server fell 16 MB behind the client (kernel_relay holds no more)");
		return;
	}
	relay_reading(c, !dst_client, false);
	if (dst_client && !(c->relay_blocked & RELAY_BLOCKED_SERVER))
		c->stalled_since = c->px->clock_s;
	c->relay_blocked |= dst_client ? RELAY_BLOCKED_SERVER : RELAY_BLOCKED_CLIENT;
	struct bufferevent *b = relay_bev_of(c, dst_client);
	if (b && relay_raw_of(c, dst_client)->fd < 0)
		bufferevent_setwatermark(b, EV_WRITE, RELAY_HIGH / 2, 0);
}

/* dst drained below the low mark: its source may read again. */
static void relay_check_drained(struct conn *c, bool dst_client)
{
	unsigned bit = dst_client ? RELAY_BLOCKED_SERVER : RELAY_BLOCKED_CLIENT;

	if (!(c->relay_blocked & bit) || relay_pending(c, dst_client) > RELAY_HIGH / 2)
		return;
	c->relay_blocked &= ~bit;
	struct bufferevent *b = relay_bev_of(c, dst_client);
	if (b && relay_raw_of(c, dst_client)->fd < 0)
		bufferevent_setwatermark(b, EV_WRITE, 0, 0);
	relay_reading(c, !dst_client, true);
}

/* A side failed or ended: the client's end closes everything; the server's end delivers what the client
 * has yet to receive (a FATAL 57P01 the server sent before it went, say), then closes. */
static void relay_server_flushed_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	if (c->state != CONN_CLOSED)
		conn_close(c, c->close_reason);
}

static void relay_server_flush_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;

	if (c->state != CONN_CLOSED)
		conn_close(c, c->close_reason);
}

/* The client closed: what it sent last (a COMMIT, its Terminate) may still wait for a TLS or slow server
 * socket, and must reach the server before both close.  Bounded by the timer, as the other direction. */
static void relay_client_closed(struct conn *c)
{
	const char *reason = "client closed the connection";
	bool kernel = conn_kr_on(c) && relay_kr_wait(c, false);

	if (c->txn && c->tx.pinned && pool_txn_retire(c)) {
		conn_close(c, "client closed the connection; its server connection is reset for the pool");
		return;
	}
	ps_release(c); /* (a COMMIT waiting in stmt.c behind a Sync still reaches the server) */
	if (c->state == CONN_CLOSED)
		return;

	if (relay_pending(c, false) == 0 && !kernel) {
		conn_close(c, reason);
		return;
	}
	c->closing = c->flush_server = true;
	c->close_reason = reason;
	conn_arm_timer(c, 5000);
	relay_stop(c, false);
	if (c->client)
		bufferevent_disable(c->client, EV_READ | EV_WRITE);
	if (c->rs.fd >= 0) {
		if (!kernel)
			relay_arm_write(c, false);
		return;
	}
	bufferevent_disable(c->server, EV_READ);
	bufferevent_setwatermark(c->server, EV_WRITE, 0, 0);
	bufferevent_setcb(c->server, NULL, relay_server_flushed_cb, relay_server_flush_event_cb, c);
	bufferevent_enable(c->server, EV_WRITE);
}

static void relay_side_ended(struct conn *c, bool client, bool error)
{
	if (client && !error)
		relay_client_closed(c);
	else if (client)
		conn_close(c, "client connection error");
	else
		conn_close_after_flush(c, error ? "server connection error" : "server closed the connection");
}

#define RELAY_KR_DRAIN_S 5 /* seconds a socket may take to be handed what the kernel relayed to it */

/* The kernel still delivers bytes toward the client's (to_client) or the server's socket: pglane may not
 * write there yet; the timer looks again (1, 2, 4 ... 64 ms). */
static void relay_kr_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	bool again = false;

	if (c->state == CONN_CLOSED)
		return;
	for (int client = 0; client < 2 && c->state != CONN_CLOSED; client++) {
		struct relay_raw *r = relay_raw_of(c, client);
		bool queued = r->out && evbuffer_get_length(r->out) > 0;
		bool flushing = c->closing && (bool)client != c->flush_server;
		if (!queued && !flushing)
			continue;
		if (krelay_may_write(c, client) == KR_WAIT)
			again = true;
		else
			relay_raw_write_cb(r->fd, EV_WRITE, c);
	}
	if (!again || c->state == CONN_CLOSED)
		return;
	if (c->px->clock_s - c->kr->wait_since > RELAY_KR_DRAIN_S) {
		conn_close(c, "the kernel relay did not drain");
		return;
	}
	struct timeval tv = {0, c->kr->wait_ms * 1000};
	c->kr->wait_ms = c->kr->wait_ms < 64 ? c->kr->wait_ms * 2 : 64;
	evtimer_add(c->kr->timer, &tv);
}

/* Whether pglane must hold what it has for side (to_client) because the kernel still delivers there. */
static bool relay_kr_wait(struct conn *c, bool to_client)
{
	if (!conn_kr_on(c) || krelay_may_write(c, to_client) == KR_WRITE)
		return false;
	if (!c->kr->timer && !(c->kr->timer = evtimer_new(c->px->base, relay_kr_timer_cb, c)))
		return false; /* cannot wait: write now rather than stall */
	if (!evtimer_pending(c->kr->timer, NULL)) {
		struct timeval tv = {0, 1000};
		c->kr->wait_ms = 2;
		c->kr->wait_since = c->px->clock_s;
		evtimer_add(c->kr->timer, &tv);
	}
	return true;
}

/* Waits for room on a raw side's socket.  Its write event is made on first need: most sessions never fill a
 * socket, and an idle session's memory is mostly its events.  False: out of memory (c is then closed). */
static bool relay_arm_write(struct conn *c, bool client)
{
	struct relay_raw *r = relay_raw_of(c, client);

	if (!r->wev && !(r->wev = event_new(c->px->base, r->fd, EV_WRITE, relay_raw_write_cb, c))) {
		conn_close(c, "out of memory");
		return false;
	}
	event_add(r->wev, NULL);
	return true;
}

/* SSL_write() of n bytes (partial writes on): bytes taken, 0 when the socket is full, -1 on failure. */
static ssize_t relay_tls_write(struct relay_raw *r, const void *p, size_t n)
{
	ERR_clear_error(); /* SSL_get_error() reads the queue: it must hold nothing older */
	int k = SSL_write(r->ssl, p, n > INT32_MAX ? INT32_MAX : (int)n);

	if (k > 0)
		return k;
	switch (SSL_get_error(r->ssl, k)) {
	case SSL_ERROR_WANT_WRITE:
	case SSL_ERROR_WANT_READ: /* renegotiation only, which is off: not expected; the bytes wait queued */
		return 0;
	default:
		ERR_clear_error();
		errno = EPIPE;
		return -1;
	}
}

/* Writes what buf holds through TLS, chunk by chunk, draining what went; -1 on failure. */
static int relay_tls_write_buf(struct relay_raw *r, struct evbuffer *buf)
{
	struct evbuffer_iovec v;
	int total = 0;

	while (evbuffer_peek(buf, -1, NULL, &v, 1) > 0 && v.iov_len > 0) {
		ssize_t k = relay_tls_write(r, v.iov_base, v.iov_len);
		if (k < 0)
			return -1;
		if (k == 0)
			break;
		evbuffer_drain(buf, (size_t)k);
		total += (int)k;
	}
	return total;
}

/* Sends what a raw side has queued.  Returns false when the socket failed (c is then closing). */
static bool relay_raw_flush(struct conn *c, bool client)
{
	struct relay_raw *r = relay_raw_of(c, client);

	if (!r->out || evbuffer_get_length(r->out) == 0 || relay_kr_wait(c, client))
		return true;
	int k = r->ssl ? relay_tls_write_buf(r, r->out) : evbuffer_write(r->out, r->fd);
	if (k < 0 && (r->ssl || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))) {
		relay_side_ended(c, client, true);
		return false;
	}
	if (k > 0)
		krelay_wrote(c, client, (size_t)k);
	if (evbuffer_get_length(r->out) > 0)
		return relay_arm_write(c, client);
	return true;
}

/* n bytes at p (or, when p is NULL, everything in buf) go to the client (to_client) or the server. */
static bool relay_send(struct conn *c, bool to_client, const uint8_t *p, size_t n, struct evbuffer *buf)
{
	struct relay_raw *r = relay_raw_of(c, to_client);
	struct bufferevent *b = relay_bev_of(c, to_client);

	if (r->fd < 0) {
		int rc = p ? bufferevent_write(b, p, n) : evbuffer_add_buffer(bufferevent_get_output(b), buf);
		if (rc != 0) {
			conn_close(c, "out of memory");
			return false;
		}
		relay_check_full(c, to_client);
		return true;
	}
	bool hold = relay_kr_wait(c, to_client);
	if (!hold && (!r->out || evbuffer_get_length(r->out) == 0)) {
		/* Nothing queued: straight to the socket; only the rest is queued. */
		ssize_t k;
		if (r->ssl)
			k = p ? relay_tls_write(r, p, n) : relay_tls_write_buf(r, buf);
		else
			k = p ? send(r->fd, p, n, MSG_NOSIGNAL) : evbuffer_write(buf, r->fd);
		if (k < 0 && (r->ssl || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))) {
			relay_side_ended(c, to_client, true);
			return false;
		}
		if (k > 0)
			krelay_wrote(c, to_client, (size_t)k);
		if (p && k > 0)
			p += k, n -= (size_t)k;
		if (p ? n == 0 : evbuffer_get_length(buf) == 0)
			return true;
	}
	if (!r->out && !(r->out = evbuffer_new())) {
		conn_close(c, "out of memory");
		return false;
	}
	if ((p ? evbuffer_add(r->out, p, n) : evbuffer_add_buffer(r->out, buf)) != 0) {
		conn_close(c, "out of memory");
		return false;
	}
	if (!hold && !relay_arm_write(c, to_client))
		return false;
	relay_check_full(c, to_client);
	return true;
}

/* ---------------------------------------------------------------- transaction pooling */

static void txn_scan_buf(struct pg_txn *t, int side, struct evbuffer *b)
{
	struct evbuffer_iovec v[16];
	struct evbuffer_ptr pos;
	size_t done = 0, total = evbuffer_get_length(b);

	while (done < total && evbuffer_ptr_set(b, &pos, done, EVBUFFER_PTR_SET) == 0) {
		int k = evbuffer_peek(b, -1, &pos, v, 16);
		if (k <= 0)
			return;
		for (int i = 0; i < k && i < 16; i++) {
			pg_txn_scan(t, side, v[i].iov_base, v[i].iov_len);
			done += v[i].iov_len;
		}
	}
}

/* The server answered: if the transaction is over, its connection goes back to the group. */
static void relay_txn_settle(struct conn *c)
{
	if (!c->txn || c->state != CONN_RELAY || c->closing || (c->rs.fd < 0 && !c->server) || !pg_txn_idle(&c->tx) ||
	    relay_pending(c, false) > 0 || relay_server_has_pending(c) || ps_busy(c->psc))
		return; /* (what OpenSSL holds of the server's is this session's: the read loop delivers it first) */
	/* After DISCARD or DEALLOCATE nobody knows which statements it holds: it is reset (DISCARD ALL) first. */
	if (ps_server_tainted(c->pss) ? !pool_txn_retire(c) : !pool_txn_park(c))
		return; /* out of memory: the session keeps it */
	c->relay_blocked &= ~RELAY_BLOCKED_CLIENT; /* nothing waits for the server any more */
	relay_reading(c, true, true);
}

/* The client's bytes with no server connection: held while one is found.  A lone Terminate just ends. */
static bool relay_txn_hold(struct conn *c, const uint8_t *p, size_t n, struct evbuffer *buf)
{
	static const uint8_t terminate[5] = {'X', 0, 0, 0, 4};
	uint8_t head[5];
	size_t len = p ? n : evbuffer_get_length(buf);

	if ((!c->held || evbuffer_get_length(c->held) == 0) && len == sizeof(terminate) &&
	    (p || evbuffer_copyout(buf, head, sizeof(head)) == (ev_ssize_t)sizeof(head)) &&
	    memcmp(p ? p : head, terminate, sizeof(terminate)) == 0) {
		conn_close(c, "client closed the connection");
		return false;
	}
	if ((!c->held && !(c->held = evbuffer_new())) || (p ? evbuffer_add(c->held, p, n) : evbuffer_add_buffer(c->held, buf))) {
		conn_close(c, "out of memory");
		return false;
	}
	if (!c->waiting && c->state == CONN_RELAY)
		pool_txn_attach(c);
	/* A parked connection was there (the usual case): relaying goes on.  Else the client waits, unread
	 * while a new connection logs in; in line, its read event stays (two epoll_ctl() a transaction saved,
	 * and a client that leaves is seen) until it has RELAY_HIGH bytes waiting. */
	if (c->state == CONN_CONNECT ||
	    (c->state == CONN_RELAY && c->waiting && evbuffer_get_length(c->held) >= RELAY_HIGH))
		relay_reading(c, true, false);
	return c->state == CONN_RELAY && !c->closing;
}

void relay_txn_resume(struct conn *c)
{
	struct evbuffer *from_server = NULL;

	c->state = CONN_RELAY;
	if (c->timer) { /* the new connection's deadline */
		event_free(c->timer);
		c->timer = NULL;
	}
	if (c->server && c->rs.fd < 0 &&
	    (!(from_server = evbuffer_new()) ||
	     (c->be_ssl ? !relay_go_tls(c, false, from_server) : !relay_go_raw(c, false, from_server)))) {
		if (from_server)
			evbuffer_free(from_server);
		conn_close(c, "out of memory");
		return;
	}
	bool read_server = !(c->relay_blocked & RELAY_BLOCKED_SERVER);
	if (c->rs.fd >= 0) {
		relay_reading(c, false, read_server); /* (and what OpenSSL already holds of a TLS server's) */
	} else {
		bufferevent_setcb(c->server, relay_read_cb, relay_drained_cb, relay_event_cb, c);
		bufferevent_setwatermark(c->server, EV_WRITE, 0, 0);
		bufferevent_enable(c->server, EV_WRITE | (read_server ? EV_READ : 0));
		if (!read_server)
			bufferevent_disable(c->server, EV_READ);
	}
	bool ok = true;
	if (from_server) { /* a server says nothing after ReadyForQuery; should it, the client hears it */
		if (evbuffer_get_length(from_server) > 0)
			ok = relay_deliver(c, true, NULL, 0, from_server);
		evbuffer_free(from_server);
	}
	if (ok && c->held && evbuffer_get_length(c->held) > 0)
		ok = c->ps_on ? ps_to_server(c, NULL, 0, c->held) : relay_send(c, false, NULL, 0, c->held);
	if (ok && c->state == CONN_RELAY && !c->closing) {
		relay_reading(c, true, !(c->relay_blocked & RELAY_BLOCKED_CLIENT));
		relay_txn_settle(c); /* what it sent may ask for no answer (a stray CopyData) */
	}
}

/* Every relayed byte passes here: transaction pooling follows the messages, and holds what the client
 * sends while it has no server connection. */
static bool relay_deliver(struct conn *c, bool to_client, const uint8_t *p, size_t n, struct evbuffer *buf)
{
	if (c->txn) {
		bool pinned = c->tx.pinned;
		if (p)
			pg_txn_scan(&c->tx, to_client, p, n);
		else
			txn_scan_buf(&c->tx, to_client, buf);
		if (!pinned && c->tx.pinned) {
			pool_txn_pinned(c);
			log_conn(LOG_INFO, c, "a named prepared statement: this session keeps its server connection "
					      "until it ends (transaction pooling)");
		}
		if (!to_client && c->rs.fd < 0 && !c->server)
			return relay_txn_hold(c, p, n, buf);
		if (c->ps_on) { /* stmt.c; what it holds back counts as the server's pending bytes */
			if (!(to_client ? ps_from_server(c, p, n, buf) : ps_to_server(c, p, n, buf)))
				return false;
			if (to_client)
				relay_check_drained(c, false);
			else
				relay_check_full(c, false);
			return c->state != CONN_CLOSED;
		}
	}
	return relay_send(c, to_client, p, n, buf);
}

/* The client sent Terminate, alone, at a message boundary, outside a transaction: with pooling on, the
 * server connection stays for the next client (pool.c) and only the client's side closes; in transaction
 * pooling, only a pinned session still holds one, which is reset for its group.  True when c has been
 * closed that way; false: relay the bytes as any others. */
static bool relay_client_terminates(struct conn *c, const uint8_t *p, size_t n)
{
	static const uint8_t terminate[5] = {'X', 0, 0, 0, 4};

	if (!c->be_params || n != sizeof(terminate) || memcmp(p, terminate, n) != 0)
		return false;
	if (c->txn) { /* a pinned session's connection is reset for the group (others hold none by now) */
		if (!c->tx.pinned || !pool_txn_retire(c))
			return false;
		conn_close(c, "client closed the connection; its server connection is reset for the pool");
		return true;
	}
	krelay_refresh(c);
	if (c->client_waiting || !c->server_idle || c->server_status != 'I' || !pool_release(c))
		return false;
	conn_close(c, "client closed the connection; the server connection is kept for the next client");
	return true;
}

/* One SSL_read() into buf: bytes, 0 at the end of the stream (close_notify, or EOF: dirty shutdowns are
 * allowed, as PostgreSQL does), -1 with errno EAGAIN when nothing is there, or -1 on failure. */
static ssize_t relay_tls_read(struct conn *c, struct relay_raw *r, uint8_t *buf, size_t len)
{
	ERR_clear_error();
	int k = SSL_read(r->ssl, buf, (int)len);

	if (k > 0)
		return k;
	switch (SSL_get_error(r->ssl, k)) {
	case SSL_ERROR_WANT_READ:
		errno = EAGAIN;
		return -1;
	case SSL_ERROR_WANT_WRITE: /* renegotiation is off; a key update's answer waits for room */
		r->read_wants_write = true;
		relay_arm_write(c, r == &c->rc);
		errno = EAGAIN;
		return -1;
	case SSL_ERROR_ZERO_RETURN:
		return 0;
	case SSL_ERROR_SYSCALL:
		ERR_clear_error();
		if (errno == 0 || k == 0)
			return 0;
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			errno = EPIPE; /* left over from earlier: OpenSSL says WANT_READ for a would-block */
		return -1;
	default:
		ERR_clear_error();
		errno = EPROTO;
		return -1;
	}
}

static void relay_raw_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	bool from_client = fd == c->rc.fd;
	struct relay_raw *src = relay_raw_of(c, from_client);
	uint8_t buf[RELAY_CHUNK];

	for (int i = 0; i < RELAY_READS && c->state == CONN_RELAY && !c->closing; i++) {
		ssize_t n = src->ssl ? relay_tls_read(c, src, buf, sizeof(buf)) : recv(fd, buf, sizeof(buf), 0);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
			if (n < 0)
				log_conn(LOG_DEBUG, c, "recv from the %s: %s", from_client ? "client" : "server", strerror(errno));
			relay_side_ended(c, from_client, n < 0);
			return;
		}
		if (n < 0)
			return;
		if (from_client && relay_client_terminates(c, buf, (size_t)n))
			return;
		relay_count(c, from_client, n >= 6 ? buf + n - 6 : NULL, (size_t)n);
		if (!relay_deliver(c, !from_client, buf, (size_t)n, NULL))
			return;
		if (c->txn) {
			if (!from_client)
				relay_txn_settle(c);
			if (c->state != CONN_RELAY || c->waiting || fd != (from_client ? c->rc.fd : c->rs.fd))
				return;
		}
		unsigned blocked = from_client ? RELAY_BLOCKED_CLIENT : RELAY_BLOCKED_SERVER;
		if (c->relay_blocked & blocked)
			return;
		/* A TLS side reads on while OpenSSL holds decrypted or undecrypted bytes: epoll sees only the
		 * socket.  Otherwise a short read emptied the socket, and epoll says when more comes. */
		if (src->ssl ? !SSL_has_pending(src->ssl) && (size_t)n < sizeof(buf) : (size_t)n < sizeof(buf))
			return;
	}
	if (src->ssl && SSL_has_pending(src->ssl) && c->state == CONN_RELAY && !c->closing &&
	    !(c->relay_blocked & (from_client ? RELAY_BLOCKED_CLIENT : RELAY_BLOCKED_SERVER)))
		event_active(src->rev, EV_READ, 0); /* the rest on the next turn, after other sessions */
}

static void relay_raw_write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	bool to_client = fd == c->rc.fd;

	if (c->state == CONN_CLOSED || !relay_raw_flush(c, to_client))
		return;
	struct relay_raw *r = relay_raw_of(c, to_client);
	unsigned blocked = to_client ? RELAY_BLOCKED_CLIENT : RELAY_BLOCKED_SERVER;
	if (r->read_wants_write && !c->waiting && c->state == CONN_RELAY && !(c->relay_blocked & blocked)) {
		r->read_wants_write = false;
		relay_raw_read_cb(r->fd, EV_READ, c);
		if (c->state == CONN_CLOSED)
			return;
	}
	/* Closing by flushing one side (to_client: the server ended; else the client did): done once it is. */
	if (relay_pending(c, to_client) == 0 && c->closing && to_client != c->flush_server) {
		conn_close(c, c->close_reason);
		return;
	}
	relay_check_drained(c, to_client);
	if (!to_client && c->state == CONN_RELAY)
		relay_txn_settle(c);
}

/* The destination bufferevent drained below its low watermark. */
static void relay_drained_cb(struct bufferevent *dst, void *arg)
{
	struct conn *c = arg;

	if (c->state == CONN_CLOSED || c->closing)
		return;
	relay_check_drained(c, dst == c->client);
}

static void relay_read_cb(struct bufferevent *src, void *arg)
{
	struct conn *c = arg;
	uint8_t tail[6];
	struct evbuffer_ptr pos;

	if (c->state == CONN_CLOSED || c->closing)
		return;
	bool from_client = src == c->client;
	struct evbuffer *in = bufferevent_get_input(src);
	size_t n = evbuffer_get_length(in);
	bool have_tail = !from_client && n >= 6 && evbuffer_ptr_set(in, &pos, n - 6, EVBUFFER_PTR_SET) == 0 &&
			 evbuffer_copyout_from(in, &pos, tail, 6) == 6;

	if (from_client && n == 5 && c->be_params) {
		uint8_t msg[5];
		if (evbuffer_copyout(in, msg, 5) == 5 && relay_client_terminates(c, msg, 5))
			return;
	}

	relay_count(c, from_client, have_tail ? tail : NULL, n);
	if (relay_deliver(c, !from_client, NULL, n, in) && !from_client)
		relay_txn_settle(c);
}

static void relay_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;

	if (c->state == CONN_CLOSED || c->closing)
		return;
	if (bev == c->server) {
		c->tx.lost = true; /* the connection is gone: what it said last is delivered, it is not pooled */
		relay_read_cb(bev, c);
	}
	relay_side_ended(c, bev == c->client, !(what & BEV_EVENT_EOF));
}

/*
 * Takes side's socket out of its plaintext bufferevent: what the bufferevent still had to write is queued
 * on the raw side, what it had read is moved to leftover for relay_start() to deliver.
 */
static bool relay_go_raw(struct conn *c, bool client, struct evbuffer *leftover)
{
	struct bufferevent **bp = client ? &c->client : &c->server;
	struct relay_raw *r = relay_raw_of(c, client);
	evutil_socket_t fd = bufferevent_getfd(*bp);
	struct evbuffer *bout = bufferevent_get_output(*bp);

	r->rev = event_new(c->px->base, fd, EV_READ | EV_PERSIST, relay_raw_read_cb, c);
	if (!r->rev)
		return false;
	if (evbuffer_get_length(bout) > 0) {
		if (!(r->out = evbuffer_new()))
			return false;
		evbuffer_unfreeze(bout, 1); /* the bufferevent keeps its output's front to itself */
		evbuffer_add_buffer(r->out, bout);
	}
	evbuffer_add_buffer(leftover, bufferevent_get_input(*bp));
	bufferevent_setfd(*bp, -1);
	bufferevent_free(*bp);
	*bp = NULL;
	r->fd = fd;
	return true;
}

/*
 * A TLS side leaves its bufferevent_openssl for SSL_read()/SSL_write() on the socket: one write per message
 * instead of a write event added and removed around each (two epoll_ctl() and a loop turn), and one read
 * instead of a header and a body read (read-ahead).  The bufferevent stays, disabled, owning the SSL and the
 * socket (a server connection goes back to the pool as that bufferevent); what it had read goes to
 * leftover, what it had yet to write is queued here.  The raw read event is added before the bufferevent's
 * goes when it was reading, so that epoll's registration stays as it was.
 */
static bool relay_go_tls(struct conn *c, bool client, struct evbuffer *leftover)
{
	struct relay_raw *r = relay_raw_of(c, client);
	struct bufferevent *bev = relay_bev_of(c, client);
	SSL *ssl = bufferevent_openssl_get_ssl(bev);
	struct evbuffer *bout = bufferevent_get_output(bev);

	if (!ssl)
		return false;
	r->fd = bufferevent_getfd(bev);
	if (!(r->rev = event_new(c->px->base, r->fd, EV_READ | EV_PERSIST, relay_raw_read_cb, c))) {
		r->fd = -1;
		return false;
	}
	if (bufferevent_get_enabled(bev) & EV_READ)
		event_add(r->rev, NULL);
	bufferevent_disable(bev, EV_READ | EV_WRITE);
	bufferevent_setcb(bev, NULL, NULL, NULL, NULL); /* (a pooled one's point at what it was parked in) */
	r->ssl = ssl;
	SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
	SSL_set_read_ahead(ssl, 1);
	SSL_set_options(ssl, SSL_OP_IGNORE_UNEXPECTED_EOF); /* a peer that closes without close_notify just ends */
	if (evbuffer_get_length(bout) > 0) {
		if (!(r->out = evbuffer_new()))
			return false;
		evbuffer_unfreeze(bout, 1);
		evbuffer_add_buffer(r->out, bout);
	}
	evbuffer_add_buffer(leftover, bufferevent_get_input(bev));
	return true;
}

bool relay_server_has_pending(struct conn *c)
{
	return c->rs.ssl && SSL_has_pending(c->rs.ssl);
}

/* A TLS server connection goes back to its bufferevent (the pool's form of it), for callbacks and events
 * the caller sets: the bufferevent's read event is added before the raw one goes (no epoll_ctl()). */
void relay_server_to_bev(struct conn *c, bufferevent_data_cb readcb, bufferevent_event_cb eventcb, void *arg)
{
	/* bufferevent_openssl reads a record at a time and moves on to its next iovec after any write: neither
	 * read-ahead nor partial writes are for it (nothing is buffered or half-sent here: the callers checked). */
	SSL_set_read_ahead(c->rs.ssl, 0);
	SSL_clear_mode(c->rs.ssl, SSL_MODE_ENABLE_PARTIAL_WRITE);
	bufferevent_setcb(c->server, readcb, NULL, eventcb, arg);
	bufferevent_setwatermark(c->server, EV_WRITE, 0, 0);
	bufferevent_enable(c->server, EV_READ);
	relay_raw_free(&c->rs, true);
}

void relay_start(struct conn *c)
{
	struct evbuffer *from_client = evbuffer_new(), *from_server = evbuffer_new();

	c->state = CONN_RELAY;
	c->px->logins_since_trim++;
	c->server_idle = true; /* backend.c has just passed on the server's ReadyForQuery */
	c->server_status = 'I';
	c->last_active = c->px->clock_s;
	memset(&c->tx, 0, sizeof(c->tx));
	c->tx.status = 'I';
	c->tx.names_kept = c->ps_on;
	/* The login's deadline is over; an idle session keeps no timer (conn_arm_timer() makes one if needed). */
	event_free(c->timer);
	c->timer = NULL;
	pool_session_starts(c);
	conn_login_done(c);
	if (!from_client || !from_server ||
	    (c->client_tls ? !relay_go_tls(c, true, from_client) : !relay_go_raw(c, true, from_client)) ||
	    (c->server && c->rs.fd < 0 &&
	     (c->be_ssl ? !relay_go_tls(c, false, from_server) : !relay_go_raw(c, false, from_server)))) {
		conn_close(c, "out of memory");
		goto out;
	}
	/* Both sides quiet (the client waits for the ReadyForQuery below, the server has sent it) and plaintext:
	 * the kernel may take the session over.  The ReadyForQuery goes out only after. */
	if (c->px->kr && c->snap->conf->kernel_relay != KERNEL_RELAY_OFF && !c->txn && c->rc.fd >= 0 && !c->rc.ssl && c->rs.fd >= 0 &&
	    !c->rs.ssl &&
	    evbuffer_get_length(from_client) == 0 && evbuffer_get_length(from_server) == 0 && krelay_attach(c) &&
	    c->rc.out) {
		int k = evbuffer_write(c->rc.out, c->rc.fd);
		if (k > 0)
			krelay_wrote(c, true, (size_t)k);
	}
	for (int client = 0; client < 2; client++) {
		struct relay_raw *r = relay_raw_of(c, client);
		struct bufferevent *b = relay_bev_of(c, client);
		if (r->fd >= 0) {
			event_add(r->rev, NULL);
			if (r->ssl && SSL_has_pending(r->ssl)) /* read by OpenSSL during the login */
				event_active(r->rev, EV_READ, 0);
			if (r->out && evbuffer_get_length(r->out) > 0 && !relay_arm_write(c, client))
				goto out;
		} else if (b) { /* (a transaction-mode session may start without a server connection) */
			bufferevent_setcb(b, relay_read_cb, relay_drained_cb, relay_event_cb, c);
			bufferevent_enable(b, EV_READ | EV_WRITE);
		}
	}
	/* Whatever the client sent while the backend logged in (pipelined queries) goes now. */
	if (evbuffer_get_length(from_client) > 0)
		relay_deliver(c, false, NULL, 0, from_client);
	if (c->state == CONN_RELAY && !c->closing && evbuffer_get_length(from_server) > 0)
		relay_deliver(c, true, NULL, 0, from_server);
	relay_txn_settle(c);
out:
	if (from_client)
		evbuffer_free(from_client);
	if (from_server)
		evbuffer_free(from_server);
}

void relay_sweep(struct proxy *px)
{
	const struct conf *conf = px->snap->conf;
	struct conn *c, *next;

	px->clock_s++;
#ifdef __GLIBC__
	/* A burst of logins leaves its login state (startup copies, SCRAM exchanges, bufferevents and their
	 * read buffers) free but resident between the sessions that stay; hand those pages back. */
	if (px->logins_since_trim >= RELAY_TRIM_LOGINS) {
		malloc_trim(0);
		px->logins_since_trim = 0;
	}
#endif
	for (c = TAILQ_FIRST(&px->conns); c; c = next) {
		next = TAILQ_NEXT(c, link);
		if (c->state != CONN_RELAY || c->closing)
			continue;
		if (conn_kr_on(c)) {
			krelay_refresh(c);
			krelay_credit(c);
		}
		if (c->psc && c->rs.fd < 0 && !c->server && px->clock_s - c->last_active > 1)
			ps_trim(c); /* idle without a server connection: stmt.c's buffers go (made again at need) */
		/* The clock ticks once a second, so "more than N ticks" is between N and N + 1 seconds. */
		if (c->waiting && conf->query_wait_timeout_s > 0 &&
		    px->clock_s - c->wait_since > (uint32_t)conf->query_wait_timeout_s) {
			unsigned pinned = pool_txn_npinned(c);
			char hint[200];
			snprintf(hint, sizeof(hint),
				 "%u session%s of this pool keep%s a server connection to %s end for named prepared "
				 "statements: raise pool_size, or use pool_mode = session for this app",
				 pinned, pinned == 1 ? "" : "s", pinned == 1 ? "s" : "", pinned == 1 ? "its" : "their");
			conn_fail_hint(c, "57014", pinned ? hint : NULL, "query_wait_timeout",
				       "canceling statement: no server connection became free within query_wait_timeout "
				       "(%d s)",
				       conf->query_wait_timeout_s);
			continue;
		}
		if (c->relay_blocked & RELAY_BLOCKED_SERVER) {
			if (px->clock_s - c->stalled_since > (uint32_t)conf->client_write_timeout_s)
				conn_close(c, "client took nothing for client_write_timeout");
		} else if (conf->client_idle_timeout_s > 0 && !c->client_waiting &&
			   px->clock_s - c->last_active > (uint32_t)conf->client_idle_timeout_s) {
			if (c->server_idle && relay_pending(c, true) == 0)
				conn_fail(c, "57P05", "idle timeout",
					  "terminating connection due to idle-session timeout (client_idle_timeout)");
			else
				conn_close(c, "idle timeout");
		}
	}
}

bool relay_client_write(struct conn *c, const void *p, size_t n)
{
	if (c->psc) { /* pglane's own message, not an answer of the server's that stmt.c follows */
		pg_txn_scan(&c->tx, 1, p, n);
		return relay_send(c, true, p, n, NULL);
	}
	return relay_deliver(c, true, p, n, NULL);
}

bool relay_out(struct conn *c, bool to_client, const uint8_t *p, size_t n, struct evbuffer *buf)
{
	return relay_send(c, to_client, p, n, buf);
}

bool relay_unflushed(struct conn *c, bool client)
{
	return relay_pending(c, client) > 0 || (conn_kr_on(c) && relay_kr_wait(c, client));
}

void relay_stop(struct conn *c, bool keep_client_writes)
{
	for (int client = 0; client < 2; client++) {
		struct relay_raw *r = relay_raw_of(c, client);
		if (r->rev)
			event_del(r->rev);
		if (r->wev && !(client && keep_client_writes))
			event_del(r->wev);
	}
}

/* Frees a raw side's events and buffer; its socket too unless keep_fd (the pool takes it). */
static void relay_raw_free(struct relay_raw *r, bool keep_fd)
{
	if (r->rev)
		event_free(r->rev);
	if (r->wev)
		event_free(r->wev);
	if (r->out)
		evbuffer_free(r->out);
	if (r->fd >= 0 && !keep_fd && !r->ssl) /* a TLS side's socket is its bufferevent's */
		evutil_closesocket(r->fd);
	memset(r, 0, sizeof(*r));
	r->fd = -1;
}

void relay_release_server(struct conn *c)
{
	relay_raw_free(&c->rs, true);
}

bool relay_adopt_server(struct conn *c, evutil_socket_t fd)
{
	if (!(c->rs.rev = event_new(c->px->base, fd, EV_READ | EV_PERSIST, relay_raw_read_cb, c)))
		return false;
	c->rs.fd = fd;
	return true;
}

void relay_close_server(struct conn *c)
{
	krelay_detach(c);
	relay_raw_free(&c->rs, false);
}

void relay_free(struct conn *c)
{
	krelay_detach(c);
	if (c->kr && c->kr->timer)
		event_free(c->kr->timer);
	free(c->kr);
	c->kr = NULL;
	relay_raw_free(&c->rc, false);
	relay_raw_free(&c->rs, false);
}
