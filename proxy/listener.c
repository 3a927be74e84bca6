/*
 * listener: the sockets pglane accepts on ([pglane] listen), and the accept callback that turns a
 * socket into a connection, refusing it with 53300 when max_clients are already connected.
 */
#include "proxy/proxy.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
	if (px->nclients > (size_t)px->snap->conf->max_clients) {
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

bool listener_open_all(struct proxy *px, const struct conf *c, char *err, size_t errlen)
{
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
		int rc = evutil_getaddrinfo(c->listen[i].host, c->listen[i].port, &hints, &ai);
		if (rc != 0) {
			snprintf(err, errlen, "listen %s:%s: %s", c->listen[i].host, c->listen[i].port,
				 evutil_gai_strerror(rc));
			return false;
		}
		struct evconnlistener *l = evconnlistener_new_bind(
			px->base, listener_accept_cb, px, LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
			1024, ai->ai_addr, (int)ai->ai_addrlen);
		evutil_freeaddrinfo(ai);
		if (!l) {
			snprintf(err, errlen, "cannot listen on %s:%s: %s", c->listen[i].host, c->listen[i].port,
				 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
			return false;
		}
		evconnlistener_set_error_cb(l, listener_error_cb);
		px->listeners[px->nlisteners++] = l;
		log_msg(LOG_INFO, "listening on %s:%s", c->listen[i].host, c->listen[i].port);
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
