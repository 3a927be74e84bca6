/*
 * main: the command line, and the proxy's event loop with its signals.
 *
 *   pglane [-c FILE]          run the proxy in the foreground (default FILE ./pglane.ini)
 *   pglane SUBCOMMAND ...     check, env, exec, ... (cli.c)
 *
 * SIGHUP reloads the file: a whole new snapshot is built and swapped in only if every part of it
 * built; sessions keep the snapshot they started with.  SIGTERM stops accepting and waits up to
 * shutdown_timeout for sessions to end; SIGINT stops at once.
 */
#include "proxy/proxy.h"

#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/dns.h>
#include <openssl/rand.h>

#include "auth/scram.h"


static void proxy_log_lines(enum log_level l, const char *prefix, const char *text)
{
	const char *s = text;
	while (*s) {
		const char *nl = strchr(s, '\n');
		int n = nl ? (int)(nl - s) : (int)strlen(s);
		if (n > 0)
			log_msg(l, "%s%.*s", prefix, n, s);
		s += n + (nl != NULL);
	}
}

static void proxy_apply_log_level(const struct conf *c)
{
	enum log_level l;
	if (c->log_level && log_parse_level(c->log_level, &l))
		log_set_level(l);
}

/* Installs s on px unless px already has a later reload's snapshot (two reloads may race to the workers). */
static void proxy_swap_snapshot(struct proxy *px, void *arg)
{
	struct snapshot *s = arg;

	if (px->snap && px->snap->gen >= s->gen)
		return;
	snapshot_unref(px->snap);
	px->snap = snapshot_ref(s);
}

bool proxy_reload(struct lane *ln, struct proxy *self, char *err, size_t errlen)
{
	struct conf *conf = conf_load(ln->conf_path, err, errlen);
	struct snapshot *s = NULL;
	char *warn;

	if (conf && !(s = snapshot_new(conf, err, errlen)))
		conf_free(conf);
	if (!s) {
		atomic_fetch_add(&ln->reloads_failed, 1);
		proxy_log_lines(LOG_ERROR, "reload rejected, old configuration kept: ", err);
		return false;
	}
	if ((warn = malloc(16384)) && conf_warnings(conf, warn, 16384) > 0)
		proxy_log_lines(LOG_WARNING, "", warn);
	free(warn);
	pthread_mutex_lock(&ln->shared_mu);
	s->gen = atomic_fetch_add(&ln->snap_gen, 1) + 1;
	struct snapshot *prev = ln->snap;
	ln->snap = snapshot_ref(s);
	pthread_mutex_unlock(&ln->shared_mu);
	const struct conf *old = prev->conf;
	bool listen_changed = old->nlisten != conf->nlisten || old->workers != conf->workers;
	for (size_t i = 0; !listen_changed && i < conf->nlisten; i++)
		listen_changed = strcmp(old->listen[i].host, conf->listen[i].host) != 0 ||
				 strcmp(old->listen[i].port, conf->listen[i].port) != 0;
	if (listen_changed)
		log_msg(LOG_WARNING, "reload: a change of listen or workers takes effect at the next restart");
	bool log_changed = !old->log_file || !conf->log_file || strcmp(old->log_file, conf->log_file) != 0 ||
			   strcmp(old->log_format, conf->log_format) != 0;
	snapshot_unref(prev);
	worker_each(ln, self, proxy_swap_snapshot, s);
	atomic_fetch_add(&ln->reloads_ok, 1);
	if (log_changed)
		log_reopen(conf);
	proxy_apply_log_level(conf);
	log_msg(LOG_INFO, "reloaded %s: %zu instances, %zu apps", ln->conf_path, conf->ninstances, conf->napps);
	snapshot_unref(s);
	return true;
}

static void proxy_sweep_cb(evutil_socket_t fd, short what, void *arg)
{
	relay_sweep(arg);
	pool_sweep(arg);
}

static int64_t proxy_ms(const struct timespec *t)
{
	return (int64_t)t->tv_sec * 1000 + t->tv_nsec / 1000000;
}

static void proxy_drain_cb(evutil_socket_t fd, short what, void *arg)
{
	struct proxy *px = arg;
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	/* Every worker waits for the whole process's sessions: worker 0's /readyz answers 503 to the end. */
	if (atomic_load(&px->lane->nclients) == 0) {
		event_base_loopexit(px->base, NULL);
		return;
	}
	if (proxy_ms(&now) < px->stop_deadline_ms || px->nclients == 0)
		return;
	log_msg(LOG_WARNING, "shutdown_timeout reached: ending %zu sessions", px->nclients);
	struct conn *c, *next;
	for (int list = 0; list < 2; list++) {
		for (c = TAILQ_FIRST(list ? &px->paused : &px->conns); c; c = next) {
			next = TAILQ_NEXT(c, link);
			conn_terminate(c);
		}
	}
	px->unclean = true;
	/* A last turn of the loop delivers the 57P01 errors; the drain timer then finds no clients. */
	px->stop_deadline_ms = proxy_ms(&now) + 1000;
}

void proxy_begin_shutdown(struct proxy *px)
{
	struct timespec now;
	struct timeval tick = {0, 100 * 1000};

	if (px->stopping)
		return;
	px->stopping = true;
	listener_close_all(px);
	clock_gettime(CLOCK_MONOTONIC, &now);
	px->stop_deadline_ms = proxy_ms(&now) + px->snap->conf->shutdown_timeout_ms;
	/* Admin consoles do not hold the stop: they end once what they were sent is flushed. */
	struct conn *c, *next;
	for (c = TAILQ_FIRST(&px->conns); c; c = next) {
		next = TAILQ_NEXT(c, link);
		if (c->state == CONN_ADMIN)
			conn_close_after_flush(c, "shutdown");
	}
	if (px->nclients)
		log_msg(LOG_INFO, "shutting down: worker %u not accepting; waiting up to %d ms for %zu sessions", px->wid,
			px->snap->conf->shutdown_timeout_ms, px->nclients);
	px->drain = event_new(px->base, -1, EV_PERSIST, proxy_drain_cb, px);
	event_add(px->drain, &tick);
}

static void proxy_begin_shutdown_fn(struct proxy *px, void *arg)
{
	proxy_begin_shutdown(px);
}

void proxy_shutdown_all(struct lane *ln, struct proxy *self)
{
	if (!atomic_exchange(&ln->stopping, true))
		log_msg(LOG_INFO, "shutting down: not accepting; sessions have up to shutdown_timeout to end");
	worker_each(ln, self, proxy_begin_shutdown_fn, NULL);
}

static void proxy_stop_now_fn(struct proxy *px, void *arg)
{
	px->unclean |= px->nclients > 0;
	event_base_loopbreak(px->base);
}

/* A worker's loop and everything it owns; errors go to err (the proxy does not start). */
static bool proxy_worker_init(struct proxy *px, char *err, size_t errlen)
{
	struct timeval second = {1, 0};

	px->snap = snapshot_ref(px->lane->snap);
	px->base = event_base_new();
	if (px->base) {
		px->dns = evdns_base_new(px->base, EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
		if (!px->dns && (px->dns = evdns_base_new(px->base, EVDNS_BASE_DISABLE_WHEN_INACTIVE)))
			evdns_base_load_hosts(px->dns, NULL);
	}
	px->backend_scram = scram_cache_new();
	if (!px->base || !px->dns || !px->backend_scram || !worker_open(px) ||
	    !(px->sweep = event_new(px->base, -1, EV_PERSIST, proxy_sweep_cb, px))) {
		snprintf(err, errlen, "cannot initialise the event loop");
		return false;
	}
	event_add(px->sweep, &second);
	const struct conf *c = px->snap->conf;
	if (!listener_open_all(px, c, err, errlen) ||
	    (px->wid == 0 && c->http_listen && !metrics_listen(px, c->http_listen, err, errlen)))
		return false;
	if (c->kernel_relay != KERNEL_RELAY_OFF && px->lane->n > 1) {
		if (c->kernel_relay == KERNEL_RELAY_ON) {
			snprintf(err, errlen, "kernel_relay = on needs workers = 1");
			return false;
		}
		if (px->wid == 0)
			log_msg(LOG_WARNING, "kernel relay off: it needs workers = 1 (there are %u)", px->lane->n);
	} else if (c->kernel_relay != KERNEL_RELAY_OFF) {
		char why[512];
		if (krelay_open(px, (uint32_t)c->max_clients, why, sizeof(why))) {
			log_msg(LOG_INFO, "kernel relay on: plaintext sessions relay inside the kernel");
		} else if (c->kernel_relay == KERNEL_RELAY_ON) {
			snprintf(err, errlen, "kernel_relay = on, but %s", why);
			return false;
		} else {
			log_msg(LOG_WARNING, "kernel relay unavailable, sessions relay in pglane: %s", why);
		}
	}
	return true;
}

/* Frees what proxy_worker_init() made, closing what is left of the worker's sessions. */
static void proxy_worker_fini(struct proxy *px)
{
	struct conn *c;
	while ((c = TAILQ_FIRST(&px->conns)))
		conn_close(c, "shutdown");
	while ((c = TAILQ_FIRST(&px->paused)))
		conn_close(c, "shutdown");
	conn_reap_now(px);
	pool_free_all(px);
	listener_close_all(px);
	metrics_free(px);
	for (size_t i = 0; i < px->npaused_apps; i++)
		free(px->paused_apps[i]);
	free(px->paused_apps);
	px->paused_apps = NULL;
	if (px->drain)
		event_free(px->drain);
	if (px->sweep)
		event_free(px->sweep);
	if (px->reaper)
		event_free(px->reaper);
	px->drain = px->sweep = px->reaper = NULL;
	worker_close(px);
	proxy_caches_free(px);
	krelay_free(px);
	scram_cache_free(px->backend_scram);
	px->backend_scram = NULL;
	if (px->dns)
		evdns_base_free(px->dns, 0);
	if (px->base)
		event_base_free(px->base);
	px->dns = NULL;
	px->base = NULL;
	snapshot_unref(px->snap);
	px->snap = NULL;
}

static void *proxy_worker_main(void *arg)
{
	struct proxy *px = arg;

	event_base_dispatch(px->base);
	worker_leave(px);
	proxy_worker_fini(px);
	atomic_fetch_sub(&px->lane->running, 1);
	return NULL;
}

static unsigned proxy_nworkers(const struct conf *c)
{
	long cores = sysconf(_SC_NPROCESSORS_ONLN);

	if (c->workers > 0)
		return (unsigned)c->workers;
	return cores > 0 ? (unsigned)cores : 1;
}

/* The main thread is no worker: it starts them, then takes the signals (blocked in every worker) until
 * the last worker has left its loop. */
static void proxy_signals(struct lane *ln, const sigset_t *set)
{
	static char err[16384];
	struct timespec tick = {0, 100 * 1000 * 1000};
	bool stopping = false;

	while (atomic_load(&ln->running) > 0) {
		int sig = sigtimedwait(set, NULL, &tick);
		if (sig == SIGHUP) {
			/* logrotate's SIGHUP must reopen the log even when the new file is rejected. */
			pthread_mutex_lock(&ln->shared_mu);
			struct snapshot *s = snapshot_ref(ln->snap);
			pthread_mutex_unlock(&ln->shared_mu);
			log_reopen(s->conf);
			snapshot_unref(s);
			proxy_reload(ln, NULL, err, sizeof(err));
		} else if (sig == SIGTERM && !stopping && !atomic_load(&ln->stopping)) {
			stopping = true;
			proxy_shutdown_all(ln, NULL);
		} else if (sig == SIGTERM || sig == SIGINT) {
			log_msg(LOG_INFO, "stopping now (%s)", sig == SIGINT ? "SIGINT" : "second SIGTERM");
			worker_each(ln, NULL, proxy_stop_now_fn, NULL);
		}
	}
}

int proxy_run(const char *path)
{
	static char err[16384];
	struct lane ln;
	int status = 1;
	unsigned started = 0;
	sigset_t set, old;

	struct conf *conf = conf_load(path, err, sizeof(err));
	if (!conf) {
		fprintf(stderr, "%s\n", err);
		fprintf(stderr, "pglane: %s is not valid; not starting\n", path);
		return 1;
	}
	proxy_apply_log_level(conf);
	if (!log_reopen(conf)) {
		fprintf(stderr, "pglane: cannot open log_file %s\n", conf->log_file);
		conf_free(conf);
		return 1;
	}
	if (conf_warnings(conf, err, sizeof(err)) > 0)
		proxy_log_lines(LOG_WARNING, "", err);
	if (!lane_init(&ln, proxy_nworkers(conf), path)) {
		fprintf(stderr, "pglane: out of memory\n");
		conf_free(conf);
		lane_free(&ln);
		return 1;
	}
	if (!(ln.snap = snapshot_new(conf, err, sizeof(err)))) {
		fprintf(stderr, "pglane: %s\n", err);
		conf_free(conf);
		lane_free(&ln);
		return 1;
	}
	/* One malloc arena for every worker: a session's memory is allocated once, at its login, and pglane relays
	 * without allocating per message, so the arena's lock is hardly ever taken; per-thread arenas would
	 * instead keep each worker's freed memory apart (0.1 kB more per idle client, measured by make bench).
	 * MALLOC_ARENA_MAX in the environment overrides this. */
	if (!getenv("MALLOC_ARENA_MAX"))
		mallopt(M_ARENA_MAX, 1);
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&set);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, &old); /* the workers inherit the mask */
	for (unsigned i = 0; i < ln.n; i++) {
		if (!proxy_worker_init(&ln.px[i], err, sizeof(err))) {
			fprintf(stderr, "pglane: %s\n", err);
			goto out;
		}
	}
	log_msg(LOG_INFO, "pglane %s started: %zu instances, %zu apps, %u worker%s (pid %d)", PGLANE_VERSION,
		ln.snap->conf->ninstances, ln.snap->conf->napps, ln.n, ln.n == 1 ? "" : "s", (int)getpid());
	for (; started < ln.n; started++) {
		atomic_fetch_add(&ln.running, 1);
		if (pthread_create(&ln.px[started].thread, NULL, proxy_worker_main, &ln.px[started]) != 0) {
			atomic_fetch_sub(&ln.running, 1);
			log_msg(LOG_ERROR, "cannot start worker %u: stopping", started);
			worker_mark_gone(&ln, started);
			worker_each(&ln, NULL, proxy_stop_now_fn, NULL);
			break;
		}
	}
	proxy_signals(&ln, &set);
	status = started < ln.n;
	for (unsigned i = 0; i < started; i++) {
		pthread_join(ln.px[i].thread, NULL);
		status |= ln.px[i].unclean;
	}
	log_msg(LOG_INFO, "stopped%s", status ? " with sessions still open" : "");
out:
	for (unsigned i = started; i < ln.n; i++)
		proxy_worker_fini(&ln.px[i]);
	for (unsigned i = 0; i < ln.n; i++)
		worker_close_inbox(&ln.px[i]);
	/* The signal mask stays: a SIGHUP that came after the last sigtimedwait() must not kill the exit. */
	(void)old;
	snapshot_unref(ln.snap);
	lane_free(&ln);
	return status;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: pglane [-c FILE]                 run the proxy (default FILE %s)\n"
		   "       pglane check -c FILE             validate the configuration\n"
		   "       pglane env -c FILE APP TIMELINE [--format shell|dotenv|json]\n"
		   "       pglane exec -c FILE APP TIMELINE -- COMMAND [ARGS...]\n"
		   "       pglane provision|migrate|status|test|certs ...   (see README.md)\n"
		   "       pglane --version\n"
		   "TIMELINE is --production, --preview or --branch NAME.\n",
		CONF_DEFAULT_PATH);
}

int main(int argc, char **argv)
{
	const char *path = CONF_DEFAULT_PATH;

	if (argc >= 2 && argv[1][0] != '-')
		return cli_main(argc - 1, argv + 1);
	for (int i = 1; i < argc; i++) {
		if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < argc) {
			path = argv[++i];
		} else if (strcmp(argv[i], "--version") == 0) {
			printf("pglane %s\n", PGLANE_VERSION);
			return 0;
		} else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			return 0;
		} else {
			fprintf(stderr, "pglane: unknown argument \"%s\"\n", argv[i]);
			usage(stderr);
			return 2;
		}
	}
	return proxy_run(path);
}
