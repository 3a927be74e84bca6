/*
 * listener: the sockets pglane accepts on ([pglane] listen), and the accept callback that turns a
 * socket into a connection, refusing it with 53300 when max_clients are already connected.  With several
 * workers each binds its own socket to the same address with SO_REUSEPORT, and the kernel spreads new
 * connections over them.
 */
#include "proxy/proxy.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/listener.h>

static void listener_accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
			       void *arg)
{
	struct proxy *px = arg;
	int one = 1;

	if (px->stopping) {
		evutil_closesocket(fd);
		return;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	struct conn *c = conn_new(px, fd, sa, salen);
	if (!c) {
		log_msg(LOG_ERROR, "out of memory accepting a connection");
		return;
	}
	frontend_start(c);
	if (atomic_load_explicit(&px->lane->nclients, memory_order_relaxed) > (size_t)px->snap->conf->max_clients) {
		px->stats.refused_too_many++;
		conn_fail(c, "53300", "too many clients", "sorry, too many clients already (max_clients = %d)",
			  px->snap->conf->max_clients);
	}
}

static void listener_error_cb(struct evconnlistener *l, void *arg)
{
	int err = EVUTIL_SOCKET_ERROR();
	log_msg(LOG_ERROR, "accept failed: %s", evutil_socket_error_to_string(err));
}

/* The port worker 0's listener i is bound to: the others bind there too (it differs from the file's when
 * that says 0). */
static void listener_first_port(const struct proxy *px, size_t i, char *out, size_t outlen)
{
	const struct proxy *first = &px->lane->px[0];
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (i >= first->nlisteners ||
	    getsockname(evconnlistener_get_fd(first->listeners[i]), (struct sockaddr *)&ss, &len) != 0)
		return;
	snprintf(out, outlen, "%u",
		 ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
						: ((struct sockaddr_in *)&ss)->sin_port));
}

/* SO_REUSEPORT would let this process's listeners join another process's on the same port (a second pglane
 * started by mistake would take half the connections): worker 0 first binds a plain socket, which fails with
 * EADDRINUSE while anyone listens there. */
static bool listener_port_free(const struct evutil_addrinfo *ai)
{
	int one = 1, ok, fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return true; /* the real bind says what is wrong */
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	ok = bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 || errno != EADDRINUSE;
	close(fd);
	return ok;
}

bool listener_open_all(struct proxy *px, const struct conf *c, char *err, size_t errlen)
{
	unsigned flags = LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC;

	if (px->lane->n > 1)
		flags |= LEV_OPT_REUSEABLE_PORT;
	px->listeners = calloc(c->nlisten, sizeof(*px->listeners));
	if (!px->listeners) {
		snprintf(err, errlen, "out of memory");
		return false;
	}
	for (size_t i = 0; i < c->nlisten; i++) {
		struct evutil_addrinfo hints = {0}, *ai = NULL;
		hints.ai_family = AF_UNSPEC;
		hints.ai_socktype = SOCK_STREAM;
		hints.ai_flags = EVUTIL_AI_PASSIVE | EVUTIL_AI_ADDRCONFIG;
		char port[16];
		snprintf(port, sizeof(port), "%s", c->listen[i].port);
		if (px->wid > 0)
			listener_first_port(px, i, port, sizeof(port));
		int rc = evutil_getaddrinfo(c->listen[i].host, port, &hints, &ai);
		if (rc != 0) {
			snprintf(err, errlen, "listen %s:%s: %s", c->listen[i].host, c->listen[i].port,
				 evutil_gai_strerror(rc));
			return false;
		}
		if (px->wid == 0 && (flags & LEV_OPT_REUSEABLE_PORT) && !listener_port_free(ai)) {
			evutil_freeaddrinfo(ai);
			snprintf(err, errlen, "cannot listen on %s:%s: %s", c->listen[i].host, c->listen[i].port,
				 strerror(EADDRINUSE));
			return false;
		}
		struct evconnlistener *l = evconnlistener_new_bind(px->base, listener_accept_cb, px, flags, 1024,
								   ai->ai_addr, (int)ai->ai_addrlen);
		evutil_freeaddrinfo(ai);
		if (!l) {
			snprintf(err, errlen, "cannot listen on %s:%s: %s", c->listen[i].host, c->listen[i].port,
				 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
			return false;
		}
		evconnlistener_set_error_cb(l, listener_error_cb);
		px->listeners[px->nlisteners++] = l;
		if (px->wid == 0)
			log_msg(LOG_INFO, "listening on %s:%s%s", c->listen[i].host, port,
				px->lane->n > 1 ? " (SO_REUSEPORT, one socket per worker)" : "");
	}
	return true;
}

void listener_close_all(struct proxy *px)
{
	for (size_t i = 0; i < px->nlisteners; i++)
		evconnlistener_free(px->listeners[i]);
	free(px->listeners);
	px->listeners = NULL;
	px->nlisteners = 0;
}
