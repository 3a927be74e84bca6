/*
 * worker: pglane's event loops, one per thread ([pglane] workers, default one per core), and what they share.
 *
 * Each worker is a whole struct proxy: its own event_base, SO_REUSEPORT listeners (the kernel spreads new
 * connections over them), connections, pools and caches, touched by its thread only.  What the process
 * shares lives in struct lane: client ids and the client count (atomics), the per-address login budgets and
 * what was last learned of each instance (under a mutex), the reload counters.
 *
 * Workers talk through a pipe each (the inbox).  Two kinds of message:
 *   - a CancelRequest for a session of another worker (a cancel key carries its worker's index in its low
 *     bits, lane->mask), posted and forgotten;
 *   - a call: run fn(px, arg) on the worker's own thread while the caller waits.  The admin console and
 *     /metrics gather their views this way, and reload, PAUSE, KILL and shutdown reach every worker.
 * One call runs at a time (lane->call_mu).  A worker that wants to call while another worker's call is in
 * flight keeps serving its own inbox until the mutex is free, so two callers never wait for each other; a
 * worker that has left its loop marks itself gone under the same mutex and is skipped from then on.
 */
#include "proxy/proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/lhash.h>

enum { WMSG_CALL, WMSG_CANCEL };

/* Written whole to a pipe (smaller than PIPE_BUF, so writers never interleave). */
struct wmsg {
	int type;
	worker_fn *fn;   /* WMSG_CALL */
	void *arg;
	uint32_t key;    /* WMSG_CANCEL: the cancel key and process id the client sent */
	uint32_t pid;
	unsigned via;    /* the worker it reached */
	char peer[64];   /* who sent it, for the log */
};

static void worker_run_msg(struct proxy *px, const struct wmsg *m)
{
	struct lane *ln = px->lane;

	if (m->type == WMSG_CANCEL) {
		proxy_cancel(px, m->key, m->pid, m->peer, m->via);
		return;
	}
	m->fn(px, m->arg);
	pthread_mutex_lock(&ln->done_mu);
	ln->call_done = true;
	pthread_cond_signal(&ln->done_cv);
	pthread_mutex_unlock(&ln->done_mu);
}

/* Runs what the inbox holds now. */
static void worker_serve(struct proxy *px)
{
	struct wmsg m;
	ssize_t n;

	while ((n = read(px->inbox[0], &m, sizeof(m))) == (ssize_t)sizeof(m))
		worker_run_msg(px, &m);
	if (n > 0) /* cannot happen: messages are written whole */
		log_msg(LOG_ERROR, "worker %u: a short message in its inbox", px->wid);
}

static void worker_inbox_cb(evutil_socket_t fd, short what, void *arg)
{
	worker_serve(arg);
}

/* A call waits for room in a full inbox (its worker is draining it, or serving it while it waits for the
 * call lock); a cancel request does not (it is dropped, logged, rather than stall its worker). */
static bool worker_post(struct proxy *t, const struct wmsg *m)
{
	ssize_t n;

	for (;;) {
		n = write(t->inbox[1], m, sizeof(*m));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN && m->type == WMSG_CALL) {
			sched_yield();
			continue;
		}
		return n == (ssize_t)sizeof(*m);
	}
}

/* Takes lane->call_mu; self (NULL for the main thread, which is no worker) serves its inbox meanwhile. */
static void worker_call_lock(struct proxy *self)
{
	struct lane *ln = self ? self->lane : NULL;

	if (!self)
		return;
	while (pthread_mutex_trylock(&ln->call_mu) != 0) {
		worker_serve(self);
		sched_yield();
	}
}

static bool worker_call_locked(struct proxy *self, struct proxy *t, worker_fn *fn, void *arg)
{
	struct lane *ln = t->lane;
	struct wmsg m = {.type = WMSG_CALL, .fn = fn, .arg = arg};

	if (t == self) {
		fn(t, arg);
		return true;
	}
	if (t->gone)
		return false;
	ln->call_done = false;
	if (!worker_post(t, &m)) {
		log_msg(LOG_ERROR, "worker %u: cannot reach its inbox: %s", t->wid, strerror(errno));
		return false;
	}
	pthread_mutex_lock(&ln->done_mu);
	while (!ln->call_done)
		pthread_cond_wait(&ln->done_cv, &ln->done_mu);
	pthread_mutex_unlock(&ln->done_mu);
	return true;
}

void worker_each(struct lane *ln, struct proxy *self, worker_fn *fn, void *arg)
{
	if (self)
		worker_call_lock(self);
	else
		pthread_mutex_lock(&ln->call_mu);
	for (unsigned i = 0; i < ln->n; i++)
		worker_call_locked(self, &ln->px[i], fn, arg);
	pthread_mutex_unlock(&ln->call_mu);
}

void worker_cancel(struct proxy *self, uint32_t key, uint32_t pid, const char *peer)
{
	struct lane *ln = self->lane;
	unsigned wid = key & ln->mask;

	if (wid == self->wid) {
		proxy_cancel(self, key, pid, peer, self->wid);
		return;
	}
	if (wid >= ln->n || atomic_load(&ln->px[wid].gone)) /* no session can hold the key: dropped, as unknown */
		return;
	struct wmsg m = {.type = WMSG_CANCEL, .key = key, .pid = pid, .via = self->wid};
	snprintf(m.peer, sizeof(m.peer), "%s", peer);
	if (!worker_post(&ln->px[wid], &m))
		log_msg(LOG_WARNING, "cancel request from %s dropped: worker %u's inbox is full", peer, wid);
}

bool worker_open(struct proxy *px)
{
	if (pipe2(px->inbox, O_CLOEXEC) != 0) {
		px->inbox[0] = px->inbox[1] = -1;
		return false;
	}
	/* The read side never blocks the loop; the write side never blocks a sender either: a full inbox
	 * drops a cancel request rather than stall a worker (a call waits anyway, one at a time). */
	fcntl(px->inbox[0], F_SETFL, O_NONBLOCK);
	fcntl(px->inbox[1], F_SETFL, O_NONBLOCK);
	px->inbox_ev = event_new(px->base, px->inbox[0], EV_READ | EV_PERSIST, worker_inbox_cb, px);
	return px->inbox_ev && event_add(px->inbox_ev, NULL) == 0;
}

/* The worker left its loop: from now on no call waits for it. */
void worker_leave(struct proxy *px)
{
	worker_call_lock(px);
	px->gone = true;
	pthread_mutex_unlock(&px->lane->call_mu);
}

void worker_mark_gone(struct lane *ln, unsigned from)
{
	pthread_mutex_lock(&ln->call_mu);
	for (unsigned i = from; i < ln->n; i++)
		ln->px[i].gone = true;
	pthread_mutex_unlock(&ln->call_mu);
}

void worker_close(struct proxy *px)
{
	if (px->inbox_ev)
		event_free(px->inbox_ev);
	px->inbox_ev = NULL;
}

/* Another worker may still post a cancel request after this one left its loop: the pipe stays open (its
 * descriptor number cannot go to a new socket) until every thread has been joined. */
void worker_close_inbox(struct proxy *px)
{
	for (int i = 0; i < 2; i++)
		if (px->inbox[i] >= 0)
			close(px->inbox[i]);
	px->inbox[0] = px->inbox[1] = -1;
}

/* ---------------------------------------------------------------- shared state */

struct inst_live *inst_live_lock(struct proxy *px, const char *name)
{
	struct lane *ln = px->lane;
	struct inst_live *l;

	pthread_mutex_lock(&ln->shared_mu);
	for (l = ln->inst_live; l; l = l->next)
		if (strcmp(l->name, name) == 0)
			return l;
	if (!(l = calloc(1, sizeof(*l)))) {
		pthread_mutex_unlock(&ln->shared_mu);
		return NULL;
	}
	snprintf(l->name, sizeof(l->name), "%s", name);
	l->next = ln->inst_live;
	ln->inst_live = l;
	return l;
}

void inst_live_unlock(struct proxy *px)
{
	pthread_mutex_unlock(&px->lane->shared_mu);
}

struct app_count {
	char app[APP_ID_MAX + 1];
	size_t n;
};

static unsigned long app_count_hash(const void *p)
{
	return OPENSSL_LH_strhash(((const struct app_count *)p)->app);
}

static int app_count_cmp(const void *a, const void *b)
{
	return strcmp(((const struct app_count *)a)->app, ((const struct app_count *)b)->app);
}

bool app_session_take(struct conn *c, int max)
{
	struct lane *ln = c->px->lane;
	struct app_count probe, *a;
	bool ok = true;

	if (c->app_counted)
		return true;
	snprintf(probe.app, sizeof(probe.app), "%s", c->route.id.app);
	pthread_mutex_lock(&ln->shared_mu);
	if (!ln->app_sessions)
		ln->app_sessions = OPENSSL_LH_new(app_count_hash, app_count_cmp);
	if (ln->app_sessions && !(a = OPENSSL_LH_retrieve(ln->app_sessions, &probe)) && (a = calloc(1, sizeof(*a)))) {
		*a = probe;
		a->n = 0;
		OPENSSL_LH_insert(ln->app_sessions, a);
		if (OPENSSL_LH_error(ln->app_sessions)) {
			free(a);
			a = NULL;
		}
	}
	if (!ln->app_sessions || !a) { /* without memory: only the limit's own count is lost */
		pthread_mutex_unlock(&ln->shared_mu);
		return true;
	}
	if (max > 0 && a->n >= (size_t)max)
		ok = false;
	else
		a->n++, c->app_counted = true;
	pthread_mutex_unlock(&ln->shared_mu);
	return ok;
}

void app_session_put(struct conn *c)
{
	struct lane *ln = c->px->lane;
	struct app_count probe, *a;

	if (!c->app_counted)
		return;
	c->app_counted = false;
	snprintf(probe.app, sizeof(probe.app), "%s", c->route.id.app);
	pthread_mutex_lock(&ln->shared_mu);
	if ((a = OPENSSL_LH_retrieve(ln->app_sessions, &probe)) && --a->n == 0) {
		OPENSSL_LH_delete(ln->app_sessions, a);
		free(a);
	}
	pthread_mutex_unlock(&ln->shared_mu);
}

bool lane_init(struct lane *ln, unsigned n, const char *conf_path)
{
	memset(ln, 0, sizeof(*ln));
	ln->n = n;
	ln->conf_path = conf_path;
	while (ln->mask + 1 < n)
		ln->mask = ln->mask << 1 | 1;
	pthread_mutex_init(&ln->call_mu, NULL);
	pthread_mutex_init(&ln->done_mu, NULL);
	pthread_cond_init(&ln->done_cv, NULL);
	pthread_mutex_init(&ln->shared_mu, NULL);
	pthread_mutex_init(&ln->secret_mu, NULL);
	if (!(ln->px = calloc(n, sizeof(*ln->px))))
		return false;
	for (unsigned i = 0; i < n; i++) {
		struct proxy *px = &ln->px[i];
		px->lane = ln;
		px->wid = i;
		px->inbox[0] = px->inbox[1] = -1;
		px->conf_path = conf_path;
		TAILQ_INIT(&px->conns);
		TAILQ_INIT(&px->reap);
		TAILQ_INIT(&px->autoprovs);
		TAILQ_INIT(&px->paused);
		TAILQ_INIT(&px->pool);
	}
	return true;
}

void lane_free(struct lane *ln)
{
	struct inst_live *l, *next;

	for (l = ln->inst_live; l; l = next) {
		next = l->next;
		free(l);
	}
	ln->inst_live = NULL;
	ratelimit_free(ln);
	frontend_caches_free(ln);
	if (ln->app_sessions) {
		OPENSSL_LH_doall(ln->app_sessions, free);
		OPENSSL_LH_free(ln->app_sessions);
	}
	free(ln->px);
	ln->px = NULL;
	pthread_mutex_destroy(&ln->call_mu);
	pthread_mutex_destroy(&ln->done_mu);
	pthread_cond_destroy(&ln->done_cv);
	pthread_mutex_destroy(&ln->shared_mu);
	pthread_mutex_destroy(&ln->secret_mu);
}
