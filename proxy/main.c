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

bool proxy_reload(struct proxy *px, char *err, size_t errlen)
{
	static char warn[16384];
	struct conf *conf = conf_load(px->conf_path, err, errlen);
	struct snapshot *s = NULL;

	if (conf && !(s = snapshot_new(conf, err, errlen)))
		conf_free(conf);
	if (!s) {
		px->stats.reloads_failed++;
		proxy_log_lines(LOG_ERROR, "reload rejected, old configuration kept: ", err);
		return false;
	}
	if (conf_warnings(conf, warn, sizeof(warn)) > 0)
		proxy_log_lines(LOG_WARNING, "", warn);
	const struct conf *old = px->snap->conf;
	bool listen_changed = old->nlisten != conf->nlisten;
	for (size_t i = 0; !listen_changed && i < conf->nlisten; i++)
		listen_changed = strcmp(old->listen[i].host, conf->listen[i].host) != 0 ||
				 strcmp(old->listen[i].port, conf->listen[i].port) != 0;
	if (listen_changed)
		log_msg(LOG_WARNING, "reload: a change of listen takes effect at the next restart");
	bool log_changed = !old->log_file || !conf->log_file || strcmp(old->log_file, conf->log_file) != 0 ||
			   strcmp(old->log_format, conf->log_format) != 0;
	snapshot_unref(px->snap); /* old is gone from here on */
	px->snap = s;
	px->stats.reloads_ok++;
	if (log_changed)
		log_reopen(conf);
	proxy_apply_log_level(conf);
	log_msg(LOG_INFO, "reloaded %s: %zu instances, %zu apps", px->conf_path, conf->ninstances, conf->napps);
	return true;
}

static void proxy_sweep_cb(evutil_socket_t fd, short what, void *arg)
{
	relay_sweep(arg);
	pool_sweep(arg);
}

static void proxy_sighup_cb(evutil_socket_t sig, short what, void *arg)
{
	static char err[16384];
	struct proxy *px = arg;

	/* logrotate's SIGHUP must reopen the log even when the new file is rejected. */
	log_reopen(px->snap->conf);
	proxy_reload(px, err, sizeof(err));
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
	if (px->nclients == 0) {
		event_base_loopexit(px->base, NULL);
		return;
	}
	if (proxy_ms(&now) < px->stop_deadline_ms)
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

static void proxy_sigterm_cb(evutil_socket_t sig, short what, void *arg)
{
	struct proxy *px = arg;

	if (sig == SIGINT || px->stopping) {
		log_msg(LOG_INFO, "stopping now (%s)", sig == SIGINT ? "SIGINT" : "second SIGTERM");
		px->unclean = px->nclients > 0;
		event_base_loopbreak(px->base);
		return;
	}
	proxy_begin_shutdown(px);
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
	log_msg(LOG_INFO, "shutting down: not accepting; waiting up to %d ms for %zu sessions",
		px->snap->conf->shutdown_timeout_ms, px->nclients);
	px->drain = event_new(px->base, -1, EV_PERSIST, proxy_drain_cb, px);
	event_add(px->drain, &tick);
}

int proxy_run(const char *path)
{
	static char err[16384];
	struct proxy px = {0};
	int status = 1;

	TAILQ_INIT(&px.conns);
	TAILQ_INIT(&px.reap);
	TAILQ_INIT(&px.autoprovs);
	TAILQ_INIT(&px.paused);
	TAILQ_INIT(&px.pool);
	px.conf_path = path;
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
	if (!(px.snap = snapshot_new(conf, err, sizeof(err)))) {
		fprintf(stderr, "pglane: %s\n", err);
		conf_free(conf);
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	px.base = event_base_new();
	px.dns = evdns_base_new(px.base, EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
	if (!px.dns && (px.dns = evdns_base_new(px.base, EVDNS_BASE_DISABLE_WHEN_INACTIVE)))
		evdns_base_load_hosts(px.dns, NULL);
	px.backend_scram = scram_cache_new();
	if (!px.base || !px.dns || !px.backend_scram) {
		fprintf(stderr, "pglane: cannot initialise the event loop\n");
		goto out;
	}
	if (!listener_open_all(&px, px.snap->conf, err, sizeof(err)) ||
	    (px.snap->conf->http_listen && !metrics_listen(&px, px.snap->conf->http_listen, err, sizeof(err)))) {
		fprintf(stderr, "pglane: %s\n", err);
		goto out;
	}
	if (px.snap->conf->kernel_relay != KERNEL_RELAY_OFF) {
		if (krelay_open(&px, (uint32_t)px.snap->conf->max_clients, err, sizeof(err))) {
			log_msg(LOG_INFO, "kernel relay on: plaintext sessions relay inside the kernel");
		} else if (px.snap->conf->kernel_relay == KERNEL_RELAY_ON) {
			fprintf(stderr, "pglane: kernel_relay = on, but %s\n", err);
			goto out;
		} else {
			log_msg(LOG_WARNING, "kernel relay unavailable, sessions relay in pglane: %s", err);
		}
	}
	px.sig_hup = evsignal_new(px.base, SIGHUP, proxy_sighup_cb, &px);
	px.sig_term = evsignal_new(px.base, SIGTERM, proxy_sigterm_cb, &px);
	px.sig_int = evsignal_new(px.base, SIGINT, proxy_sigterm_cb, &px);
	struct timeval second = {1, 0};
	px.sweep = event_new(px.base, -1, EV_PERSIST, proxy_sweep_cb, &px);
	event_add(px.sweep, &second);
	event_add(px.sig_hup, NULL);
	event_add(px.sig_term, NULL);
	event_add(px.sig_int, NULL);
	log_msg(LOG_INFO, "pglane %s started: %zu instances, %zu apps (pid %d)", PGLANE_VERSION, px.snap->conf->ninstances,
		px.snap->conf->napps, (int)getpid());
	event_base_dispatch(px.base);
	status = px.unclean ? 1 : 0;
	log_msg(LOG_INFO, "stopped%s", px.unclean ? " with sessions still open" : "");
out:;
	struct conn *c;
	while ((c = TAILQ_FIRST(&px.conns)))
		conn_close(c, "shutdown");
	while ((c = TAILQ_FIRST(&px.paused)))
		conn_close(c, "shutdown");
	conn_reap_now(&px);
	pool_free_all(&px);
	listener_close_all(&px);
	metrics_free(&px);
	inst_live_free(&px);
	for (size_t i = 0; i < px.npaused_apps; i++)
		free(px.paused_apps[i]);
	free(px.paused_apps);
	if (px.sig_hup)
		event_free(px.sig_hup), event_free(px.sig_term), event_free(px.sig_int);
	if (px.drain)
		event_free(px.drain);
	if (px.sweep)
		event_free(px.sweep);
	if (px.reaper)
		event_free(px.reaper);
	proxy_caches_free(&px);
	krelay_free(&px);
	scram_cache_free(px.backend_scram);
	if (px.dns)
		evdns_base_free(px.dns, 0);
	if (px.base)
		event_base_free(px.base);
	snapshot_unref(px.snap);
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
