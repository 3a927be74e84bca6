/*
 * relay: forwarding both ways once the server said ReadyForQuery.
 *
 * Bytes move between evbuffers by handing over their chains (evbuffer_add_buffer): no copy, no
 * parsing, no allocation per message.  Back-pressure: when what waits for one side passes
 * RELAY_HIGH, pglane stops reading from the other side until it drains below RELAY_HIGH / 2, so a
 * client that stops reading holds at most about RELAY_HIGH bytes of pglane's memory.
 */
#include "proxy/proxy.h"

#include <event2/buffer.h>


static void relay_read_cb(struct bufferevent *bev, void *arg);
static void relay_event_cb(struct bufferevent *bev, short what, void *arg);

/* Whether what the server sent ends in a ReadyForQuery ('Z', length 5, status): the session is then idle
 * at a message boundary, where pglane may speak to the client itself (shutdown's 57P01).  Six bytes
 * copied per read: no parsing of the stream. */
static bool relay_ends_ready(struct evbuffer *in, size_t n)
{
	uint8_t tail[6];
	struct evbuffer_ptr pos;

	if (n < sizeof(tail) || evbuffer_ptr_set(in, &pos, n - sizeof(tail), EVBUFFER_PTR_SET) != 0 ||
	    evbuffer_copyout_from(in, &pos, tail, sizeof(tail)) != (ev_ssize_t)sizeof(tail))
		return false;
	return tail[0] == PG_MSG_READY_FOR_QUERY && tail[1] == 0 && tail[2] == 0 && tail[3] == 0 && tail[4] == 5 &&
	       (tail[5] == 'I' || tail[5] == 'T' || tail[5] == 'E');
}

/* The destination drained: the source may read again. */
static void relay_drained_cb(struct bufferevent *dst, void *arg)
{
	struct conn *c = arg;

	if (c->state == CONN_CLOSED || c->closing)
		return;
	struct bufferevent *src = dst == c->client ? c->server : c->client;
	bufferevent_setcb(dst, relay_read_cb, NULL, relay_event_cb, c);
	bufferevent_setwatermark(dst, EV_WRITE, 0, 0);
	bufferevent_enable(src, EV_READ);
}

static void relay_read_cb(struct bufferevent *src, void *arg)
{
	struct conn *c = arg;

	if (c->state == CONN_CLOSED || c->closing)
		return;
	bool from_client = src == c->client;
	struct bufferevent *dst = from_client ? c->server : c->client;
	struct evbuffer *in = bufferevent_get_input(src), *out = bufferevent_get_output(dst);
	size_t n = evbuffer_get_length(in);

	if (from_client) {
		c->bytes_in += n;
		c->server_idle = false;
	} else {
		c->bytes_out += n;
		c->server_idle = relay_ends_ready(in, n);
	}
	/* The common case, a plaintext peer with nothing queued: send now.  Handing the bytes to the output
	 * buffer instead would make the bufferevent arm a write event, wait a loop turn and disarm it again:
	 * two epoll_ctl calls and a wakeup per message.  What the socket does not take is queued as usual. */
	if (evbuffer_get_length(out) == 0 && !(from_client ? c->be_ssl != NULL : c->client_tls))
		evbuffer_write(in, bufferevent_getfd(dst));
	if (evbuffer_get_length(in) > 0)
		evbuffer_add_buffer(out, in);
	if (evbuffer_get_length(out) >= RELAY_HIGH) {
		bufferevent_disable(src, EV_READ);
		bufferevent_setwatermark(dst, EV_WRITE, RELAY_HIGH / 2, 0);
		bufferevent_setcb(dst, relay_read_cb, relay_drained_cb, relay_event_cb, c);
	}
}

static void relay_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;

	if (c->state == CONN_CLOSED || c->closing)
		return;
	if (bev == c->client) {
		conn_close(c, what & BEV_EVENT_EOF ? "client closed the connection" : "client connection error");
		return;
	}
	/* The server went away (a FATAL it sent, 57P01, is already in the client's output): deliver what is
	 * there, then close. */
	relay_read_cb(bev, c);
	conn_close_after_flush(c, what & BEV_EVENT_EOF ? "server closed the connection" : "server connection error");
}

void relay_start(struct conn *c)
{
	c->state = CONN_RELAY;
	c->server_idle = true; /* backend.c has just passed on the server's ReadyForQuery */
	evtimer_del(c->timer);
	conn_login_done(c);
	bufferevent_setcb(c->client, relay_read_cb, NULL, relay_event_cb, c);
	bufferevent_setcb(c->server, relay_read_cb, NULL, relay_event_cb, c);
	bufferevent_enable(c->client, EV_READ);
	bufferevent_enable(c->server, EV_READ);
	/* Whatever the client sent while the backend logged in (pipelined queries) goes now. */
	if (evbuffer_get_length(bufferevent_get_input(c->client)) > 0)
		relay_read_cb(c->client, c);
	if (c->state == CONN_RELAY && evbuffer_get_length(bufferevent_get_input(c->server)) > 0)
		relay_read_cb(c->server, c);
}
