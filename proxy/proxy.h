/*
 * proxy: the event-driven half of pglane, and the only part that includes <event2/...>.
 *
 * A connection's path: listener.c accepts -> conn_new() arms the login timeout -> frontend.c reads the
 * SSLRequest / StartupMessage / CancelRequest and runs the client's SCRAM dialogue against the route
 * from routing/ -> backend.c connects to the instance, does TLS and logs in -> relay.c forwards both
 * ways -> conn_close() logs the reason once -> the reaper frees the connection on the next loop turn.
 */
#ifndef PGLANE_PROXY_H
#define PGLANE_PROXY_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/event.h>
#include <event2/bufferevent.h>
#include <openssl/ssl.h>

#include "conf/conf.h"
#include "proxy/pgproto.h"
#include "routing/route.h"

#define PGLANE_VERSION "0.1.0"

struct evdns_base;
struct evconnlistener;
struct scram_server;
struct scram_client;
struct scram_cache;
struct scram_secret;

/*
 * Everything built from one version of the ini file.  Immutable once published; connections hold a
 * reference to the snapshot they were routed with, so a reload never pulls a route from under them.
 */
struct snapshot {
	atomic_int refs;      /* the workers' connections share it */
	uint64_t gen;         /* a later reload's snapshot has a larger one */
	struct conf *conf;    /* owned */
	SSL_CTX **inst_ctx;   /* owned: one per conf->instances[i], NULL where sslmode = disable */
	SSL_CTX *server_ctx;  /* owned: client-facing TLS, NULL when tls_cert is unset */
	uint8_t salt_key[32]; /* SCRAM salts and cache keys derive from it: SHA-256 of every app's id and secret */
};

struct snapshot *snapshot_new(struct conf *conf, char *err, size_t errlen); /* takes conf on success */
struct snapshot *snapshot_ref(struct snapshot *s);
void snapshot_unref(struct snapshot *s);
size_t snapshot_instance_index(const struct snapshot *s, const struct conf_instance *inst);

enum conn_state {
	CONN_STARTUP, /* waiting for SSLRequest / StartupMessage / CancelRequest */
	CONN_TLS,     /* the client's TLS handshake */
	CONN_AUTH,    /* the client's authentication dialogue */
	CONN_CONNECT, /* backend TCP, TLS and login */
	CONN_RELAY,   /* forwarding both ways */
	CONN_ADMIN,   /* the admin console: pglane answers itself */
	CONN_CLOSED,  /* on the reap list: every callback returns at once */
};
const char *conn_state_str(enum conn_state s);

enum backend_phase {
	BE_RESOLVING, /* TCP connect in progress (name resolution included) */
	BE_SSL_ANSWER, /* SSLRequest sent, waiting for 'S' or 'N' */
	BE_TLS,        /* TLS handshake */
	BE_LOGIN,      /* StartupMessage sent; authentication and parameter status */
	BE_READY,      /* ReadyForQuery seen */
	BE_PROVISION,  /* waiting for autoprov to create the database */
	BE_SHED,       /* the instance had no slot free: kept connections closed, the login starts again soon */
};

/* The login's state: allocated with the connection, freed when the relay (or the admin console) starts,
 * so an idle session keeps only what it needs. */
struct conn_login {
	uint8_t *startup;           /* owned copy of the StartupMessage; su points into it */
	struct pg_startup su;
	char route_err[256];
	struct scram_server *scram; /* owned: the client's SCRAM exchange */
	struct scram_client *bscram; /* owned: pglane's SCRAM exchange with the instance */
	bool cleartext;             /* a cleartext password exchange instead of SCRAM */
	bool sasl_first_done;       /* SASLInitialResponse handled; the next 'p' is the final message */
	uint32_t deferred_since;    /* px->clock_s of the first tarpit delay */
	struct pgbuf params;        /* the server's ParameterStatus messages so far (pool.c) */
};

/* A side during the relay on its own socket (relay.c): plaintext, or the client's TLS through SSL_read and
 * SSL_write on the SSL its bufferevent_openssl made (which keeps owning the SSL and the socket, disabled). */
struct relay_raw {
	evutil_socket_t fd;   /* owned (borrowed when ssl is set); -1 while this side is a bufferevent (or gone) */
	SSL *ssl;             /* borrowed from the client's bufferevent, or NULL for plaintext */
	bool read_wants_write; /* SSL_read asked for the socket to take bytes first */
	struct event *rev;    /* owned: EV_READ | EV_PERSIST */
	struct event *wev;    /* owned: EV_WRITE, pending only while out holds bytes */
	struct evbuffer *out; /* owned: what the socket has not taken yet; NULL until first needed */
};
/* A session relayed by the kernel (krelay.c); index [0] is toward the server, [1] toward the client. */
struct krelay_conn {
	int pair;             /* the pair of sockmap slots, -1 when the kernel does not relay this session */
	uint64_t cookie[2];   /* SO_COOKIE of the client's and the server's socket */
	uint64_t e0[2];       /* bytes the destination socket had been given when the kernel began */
	uint64_t user[2];     /* bytes pglane has written to it itself since */
	uint64_t seen[2];     /* the kernel's byte counts already added to bytes_in / bytes_out */
	uint64_t ns[2];       /* the kernel's last-segment times already looked at */
	uint64_t credited[2]; /* the kernel's byte counts at the last credit */
	unsigned own;         /* bit 1: the server's socket is pglane's to write; bit 2: the client's */
	unsigned checked;     /* the same bits: one drained check has passed */
	struct event *timer;  /* owned: waiting for a drain */
	int wait_ms;          /* the timer's next interval */
	uint32_t wait_since;  /* clock_s when the wait began */
};
enum { KR_WRITE, KR_WAIT };

#define RELAY_BLOCKED_CLIENT 1u /* not reading the client: the server's side is full */
#define RELAY_BLOCKED_SERVER 2u /* not reading the server: the client's side is full */

struct conn {
	uint64_t id;
	enum conn_state state;
	struct proxy *px;           /* borrowed */
	struct snapshot *snap;      /* reference held from routing on */
	struct bufferevent *client; /* owned; NULL once a plaintext client relays on rc */
	struct bufferevent *server; /* owned; NULL once a plaintext server relays on rs */
	struct relay_raw rc, rs;    /* the client's and the server's raw sockets during the relay */
	unsigned relay_blocked;     /* RELAY_BLOCKED_* */
	struct event *timer;        /* owned: login, then connect timeout */
	char peer[64];              /* "10.0.0.7:51234" */
	struct timespec started;
	const char *close_reason;   /* static string, set once by conn_close() */
	bool closing;               /* an error is being flushed to the client; then conn_close() */
	bool flush_server;          /* closing: it is the server's side that is being flushed (the client left) */

	struct conn_login *lg;      /* owned: what only the login needs; freed when the session starts */
	bool client_tls;
	bool direct_tls;            /* TLS began with the ClientHello, no SSLRequest (PostgreSQL 17) */

	/* routing */
	struct route route;
	enum route_res route_res;
	bool parked;                /* on px->paused (PAUSE) */
	bool admin_ignore_until_sync; /* admin console: an extended-protocol message was refused */
	enum { DEFER_NONE, DEFER_START_AUTH, DEFER_AUTH_FAILED } deferred; /* a tarpitted step (ratelimit.c) */
	bool admin;                 /* logging in to the virtual database "pglane" as admin_user */
	bool app_counted;           /* counted in lane->app_sessions (app_session_take()) */

	/* backend */
	enum backend_phase be_phase;
	const struct conf_instance *inst; /* borrowed from snap->conf */
	SSL *be_ssl;                      /* borrowed: owned by the openssl bufferevent */
	uint32_t be_pid, be_key;          /* the server's BackendKeyData */
	bool provisioned;                 /* autoprov ran once for this connection */
	uint32_t cancel_key;              /* the key pglane handed the client; 0 = none */
	struct timespec be_started;       /* backend_start(): for the connect-time histogram */
	union {                           /* where the server is, for cancel requests (TCP: v4 or v6) */
		struct sockaddr sa;
		struct sockaddr_in in;
		struct sockaddr_in6 in6;
	} be_addr;
	socklen_t be_addrlen;

	/* relay */
	uint64_t bytes_in, bytes_out; /* from the client, to the client */
	bool server_idle;             /* the server's last bytes were a ReadyForQuery: a message boundary */
	bool client_waiting;          /* the client sent something the server has not answered with ReadyForQuery */
	uint32_t last_active;         /* px->clock_s of the last bytes either way */
	uint32_t stalled_since;       /* px->clock_s when the client's side filled up (RELAY_BLOCKED_SERVER) */
	struct krelay_conn *kr;       /* owned: the kernel's part of the relay, from its first attach; or NULL */
	char server_status;           /* the status byte of the server's last ReadyForQuery: 'I', 'T' or 'E' */

	/* server connection pooling (pool.c), when server_idle_timeout is set */
	struct params_blob *be_params; /* reference: the server's ParameterStatus messages, for the next client */
	uint8_t be_params_digest[16]; /* of the client's startup parameters: part of the pool's key */
	bool pool_on;                 /* this session's server connection may be kept (server_idle_timeout) */
	bool pool_shed;               /* the login has already closed kept connections to free a slot once */

	/* transaction pooling (pool_mode = transaction): the server connection is the session's only from a
	 * transaction's first message to the ReadyForQuery that ends it */
	bool txn;                     /* this session is pooled by transaction */
	bool holds_slot;              /* one of the group's pool_size server connections is this session's */
	bool waiting;                 /* on group->waiters */
	bool reopen;                  /* CONN_CONNECT for a new server connection in the middle of a session */
	struct pgroup *group;         /* reference: the sessions and server connections sharing one pool */
	struct pg_txn tx;
	struct evbuffer *held;        /* owned: the client's bytes waiting for a server connection */
	bool ps_on;                   /* named prepared statements kept by stmt.c (max_prepared_statements > 0) */
	struct ps_client *psc;        /* owned: stmt.c's state for the session, made at its first bytes */
	struct ps_server *pss;        /* owned: what the attached server connection has prepared */
	uint32_t client_pid;          /* the process id the client was told (BackendKeyData) */
	uint32_t wait_since;          /* px->clock_s when it began waiting (query_wait_timeout) */
	TAILQ_ENTRY(conn) wait_link;  /* group->waiters */

	struct autoprov *autoprov;   /* borrowed: the job this connection waits on, or NULL */

	TAILQ_ENTRY(conn) link;      /* px->conns or px->reap */
};
/* The kernel relays this session now (krelay.c). */
static inline bool conn_kr_on(const struct conn *c)
{
	return c->kr && c->kr->pair >= 0;
}
TAILQ_HEAD(conn_list, conn);
struct pooled;
TAILQ_HEAD(pool_list, pooled);
TAILQ_HEAD(autoprov_list, autoprov);

/* Counters for SHOW STATS and /metrics.  Bytes of closed connections; live ones add their own. */
#define STATS_CONNECT_BUCKETS 12
extern const double stats_connect_bounds[STATS_CONNECT_BUCKETS]; /* seconds */
struct stats {
	uint64_t accepted, routed, refused_too_many, protocol_errors, login_timeouts;
	uint64_t auth_fail_password, auth_fail_user, auth_fail_database, auth_fail_cert;
	uint64_t tls_handshakes, cancel_requests, cancels_forwarded;
	uint64_t backend_errors, provisions_ok, provisions_failed;
	uint64_t pool_kept, pool_reused; /* server connections kept when their client left; handed to a new one */
	uint64_t ps_prepared, ps_answered, ps_evicted; /* named statements: Parses sent, answered by pglane, closed */
	uint64_t bytes_in, bytes_out;
	uint64_t connect_hist[STATS_CONNECT_BUCKETS + 1]; /* backend connect + login time; last = +Inf */
	double connect_sum;
	uint64_t connect_count;
};

/* What the running proxy last learned of an instance, by name (it outlives reloads): for /status. */
struct inst_live {
	char name[64];
	bool seen;               /* a login was attempted */
	bool reachable;          /* the last login reached ReadyForQuery */
	char server_version[32]; /* from the server's ParameterStatus */
	char tls[16];            /* "TLSv1.3", or "" without TLS */
	char error[256];         /* why the last login failed, when it did */
	struct inst_live *next;
};

/* What the workers share (worker.c). */
struct lane {
	struct proxy *px;          /* owned array of n workers */
	unsigned n;
	uint32_t mask;             /* a cancel key's low bits name the worker that handed it out */
	const char *conf_path;     /* borrowed from argv */
	struct snapshot *snap;     /* reference held, under shared_mu: the newest configuration */
	atomic_bool stopping;      /* SIGTERM or SHUTDOWN reached the workers */
	atomic_uint_fast64_t next_id; /* client ids, unique over the workers */
	atomic_size_t nclients;    /* over the workers: max_clients */
	atomic_uint_fast64_t reloads_ok, reloads_failed, snap_gen;
	atomic_uint running;       /* workers still in their loops */
	pthread_mutex_t call_mu;   /* one worker_each() at a time */
	pthread_mutex_t done_mu;   /* with done_cv: the call in flight has run */
	pthread_cond_t done_cv;
	bool call_done;
	pthread_mutex_t shared_mu; /* snap, peers, inst_live, app_sessions */
	void *peers;               /* OPENSSL_LHASH of per-address budgets (ratelimit.c) */
	void *app_sessions;        /* OPENSSL_LHASH of sessions per app, for its max_clients (worker.c) */
	pthread_mutex_t secret_mu; /* secret_cache */
	void *secret_cache;        /* OPENSSL_LHASH of derived SCRAM secrets (frontend.c): one PBKDF2 run per
				    * credential for the process, whichever worker its logins land on */
	struct inst_live *inst_live; /* owned list */
};

/* One event loop (a worker) with its listeners, connections and caches. */
struct proxy {
	struct lane *lane;         /* borrowed: what the workers share */
	unsigned wid;              /* this worker's index in lane->px */
	pthread_t thread;
	int inbox[2];              /* owned: a pipe other threads post calls and cancel requests to */
	struct event *inbox_ev;    /* owned */
	atomic_bool gone;          /* left its loop (set under lane->call_mu): no call or cancel reaches it */
	struct event_base *base;   /* owned */
	struct evdns_base *dns;    /* owned */
	struct evconnlistener **listeners; /* owned */
	size_t nlisteners;
	struct snapshot *snap;     /* reference held: the current configuration */
	const char *conf_path;     /* borrowed from argv */
	struct conn_list conns;    /* live connections */
	struct conn_list reap;     /* closed, freed on the next loop turn */
	struct autoprov_list autoprovs; /* databases being created (autoprov.c) */
	struct event *reaper;      /* owned */
	size_t nclients;           /* this worker's */
	void *cancel_map;          /* OPENSSL_LHASH of struct conn by cancel_key */
	struct scram_cache *backend_scram; /* owned: salted passwords toward instances */
	struct krelay *kr;         /* owned: the kernel relay's maps and program; NULL when off */
	struct pool_list pool;     /* server connections waiting for their next client (pool.c) */
	size_t npooled;
	void *params_blobs;        /* OPENSSL_LHASH of struct params_blob: sessions share identical ones */
	void *ps_stmts;            /* OPENSSL_LHASH of struct ps_stmt: named statements' texts (stmt.c) */
	uint64_t ps_next_id;       /* the last ps_stmt id given */
	void *pgroups;             /* OPENSSL_LHASH of struct pgroup: transaction pools (pool.c) */
	struct stats stats;
	uint32_t clock_s;          /* seconds since start, ticked by the sweep: timestamps cost nothing */
	uint32_t logins_since_trim; /* sessions started since the sweep last called malloc_trim() */
	struct event *sweep;       /* owned: once a second, idle and stalled sessions */
	struct evhttp *http;       /* owned: [pglane] http_listen, or NULL */
	struct conn_list paused;   /* logged-in clients held by PAUSE until RESUME */
	bool pause_all;            /* PAUSE without an app */
	char **paused_apps;        /* owned: PAUSE APP */
	size_t npaused_apps;
	bool stopping;             /* SIGTERM: no new connections */
	bool unclean;              /* sessions were cut at the stop: exit status 1 */
	int64_t stop_deadline_ms;  /* CLOCK_MONOTONIC milliseconds */
	struct event *drain;       /* owned: checks for the end of the sessions after SIGTERM */
};

/* log.c */
enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERROR };
void log_set_level(enum log_level l);
bool log_parse_level(const char *s, enum log_level *out);
/* Applies log_format and (re)opens log_file; false (old destination kept) when it cannot be opened. */
bool log_reopen(const struct conf *c);
void log_msg(enum log_level l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_conn(enum log_level l, const struct conn *c, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* listener.c */
bool listener_open_all(struct proxy *px, const struct conf *c, char *err, size_t errlen);
void listener_close_all(struct proxy *px);

/* conn.c */
struct conn *conn_new(struct proxy *px, evutil_socket_t fd, const struct sockaddr *sa, int salen);
/* Marks c closed, logs reason once, releases its sockets; the reaper frees it later. Safe to call twice. */
void conn_close(struct conn *c, const char *reason);
/* Queues an ErrorResponse (FATAL) to the client, then closes c once it is flushed. */
void conn_fail(struct conn *c, const char *sqlstate, const char *reason, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
void conn_fail_hint(struct conn *c, const char *sqlstate, const char *hint, const char *reason, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
/* Closes c once its client output is flushed (bounded by a timer); reading stops at once. */
void conn_close_after_flush(struct conn *c, const char *reason);
/* Replaces plain (freed; its socket kept) by a TLS bufferevent on the same socket; NULL on failure
 * (then the socket is closed and ssl freed). */
struct bufferevent *conn_upgrade_tls(struct proxy *px, struct bufferevent *plain, SSL *ssl, bool accepting);
/* Ends c for a shutdown: a session whose server stream stands at a message boundary (ReadyForQuery last,
 * the client idle or waiting for an answer) gets FATAL 57P01 as PostgreSQL sends it; one in the middle of
 * a reply is closed, since an error there would corrupt the stream. */
void conn_terminate(struct conn *c);
/* Queues b to the client; false (and c closed) if it could not be queued. */
bool conn_send(struct conn *c, struct pgbuf *b);
void conn_arm_timer(struct conn *c, int ms);
void conn_reap_now(struct proxy *px);

/* frontend.c */
void frontend_start(struct conn *c);
void frontend_caches_free(struct lane *ln);
/* The timer of a connection with c->deferred set: take the delayed step now. */
void frontend_deferred(struct conn *c);

/* backend.c */
void bev_set_nodelay(struct bufferevent *bev);
void backend_start(struct conn *c);
void backend_forward_cancel(struct proxy *px, const struct conn *target);
/* Transaction pooling: a new server connection for a session in the middle of it (c->lg rebuilt by pool.c). */
void backend_connect(struct conn *c);

/* autoprov.c: create the route's missing database, then retry backend_start() (or fail c). */
void autoprov_start(struct conn *c);
/* A closing connection stops waiting. */
void autoprov_forget(struct conn *c);
bool autoprov_creating(struct proxy *px, const struct conf_instance *inst, const char *dbname);

/* admin.c: the console on the virtual database "pglane" */
#define ADMIN_DBNAME "pglane"
void admin_start(struct conn *c);
/* PAUSE: true when new sessions of app must wait; admin_resume() lets them go. */
bool admin_is_paused(const struct proxy *px, const char *app);
void admin_park(struct conn *c);

/* metrics.c: HTTP /healthz /readyz /status /metrics */
bool metrics_listen(struct proxy *px, const char *hostport, char *err, size_t errlen);
void metrics_free(struct proxy *px);
void stats_observe_connect(struct proxy *px, const struct timespec *since);
/* The workers' counters added up (a worker_fn over a struct stats_sum); bytes of live sessions included
 * in live_in/live_out. */
struct stats_sum {
	struct stats s;
	uint64_t clients, pooled, live_in, live_out;
};
void stats_gather(struct proxy *px, void *arg);
/* worker.c: the live record of instance name (created on first use), with the lock that guards every
 * record held; NULL (and no lock) only without memory.  inst_live_unlock() once done with it. */
struct inst_live *inst_live_lock(struct proxy *px, const char *name);
void inst_live_unlock(struct proxy *px);
/* c's session counts toward its app's max_clients over all workers: false (nothing counted) when the app
 * already has max (> 0) sessions.  app_session_put() at the end; it does nothing for an uncounted c. */
bool app_session_take(struct conn *c, int max);
void app_session_put(struct conn *c);

/* relay.c: the once-a-second sweep (client_idle_timeout, client_write_timeout) */
void relay_sweep(struct proxy *px);

/* main.c.  Reload builds one snapshot and gives it to every worker before it returns; self is the calling
 * worker, or NULL on the main thread (as for worker_each()). */
bool proxy_reload(struct lane *ln, struct proxy *self, char *err, size_t errlen);
/* Every worker stops accepting and ends once its sessions have (or shutdown_timeout passed). */
void proxy_shutdown_all(struct lane *ln, struct proxy *self);
void proxy_begin_shutdown(struct proxy *px);
/* A CancelRequest for a session of px's, received by worker via (px's own index, or another's). */
void proxy_cancel(struct proxy *px, uint32_t key, uint32_t pid, const char *peer, unsigned via);

/* worker.c */
typedef void worker_fn(struct proxy *px, void *arg);
bool lane_init(struct lane *ln, unsigned n, const char *conf_path);
void lane_free(struct lane *ln);
bool worker_open(struct proxy *px);   /* the inbox, on px->base */
void worker_close(struct proxy *px);  /* its event (on the worker's thread, before its base goes) */
void worker_close_inbox(struct proxy *px); /* the pipe, once no thread can write to it (all joined) */
/* Marks the workers from index `from` on gone (never started): calls and cancels skip them. */
void worker_mark_gone(struct lane *ln, unsigned from);
void worker_leave(struct proxy *px);  /* px left its loop */
/* Runs fn(px, arg) on every worker in turn, each on its own thread, and returns once all have run (a gone
 * worker is skipped).  self: the calling worker, which runs fn itself, or NULL on the main thread.  fn must
 * not call worker_each(). */
void worker_each(struct lane *ln, struct proxy *self, worker_fn *fn, void *arg);
/* Passes a CancelRequest to the worker whose index its key carries. */
void worker_cancel(struct proxy *self, uint32_t key, uint32_t pid, const char *peer);

/* Frees c->lg: the session no longer needs its login state. */
void conn_login_done(struct conn *c);

/* ratelimit.c: per-peer budgets before authentication; over budget, answers are delayed. */
enum ratelimit_kind { RATELIMIT_FAIL, RATELIMIT_DERIVE };
#define RATELIMIT_FAIL_BURST 20
#define RATELIMIT_FAIL_REFILL_MS 3000.0  /* 20 failed logins a minute, after a burst of 20 */
#define RATELIMIT_DERIVE_BURST 100
#define RATELIMIT_DERIVE_REFILL_MS 100.0 /* ten new credentials a second (1% of a core), after 100 */
#define RATELIMIT_DERIVE_ALL_BURST 500
#define RATELIMIT_DERIVE_ALL_REFILL_MS 10.0 /* a hundred new credentials a second over all peers */
#define RATELIMIT_DELAY_MS 2000
/* True when c's peer may spend one more of kind now. */
bool ratelimit_take(struct proxy *px, const struct conn *c, enum ratelimit_kind kind);
void ratelimit_free(struct lane *ln);

/* relay.c: what waits for one side past RELAY_HIGH stops reading from the other. */
#define RELAY_HIGH (256 * 1024)
void relay_start(struct conn *c);

/* pool.c: server connections outlive their clients (server_idle_timeout) */
void pool_login_begins(struct conn *c); /* backend_start(): the key of this login's server session */
void pool_note_param(struct conn *c, const uint8_t *msg, size_t len); /* a ParameterStatus at login */
bool pool_take(struct conn *c);    /* a parked server connection for c, which then goes on to relay */
void pool_session_starts(struct conn *c); /* relay_start(), before the login's state goes */
void pool_session_ends(struct conn *c);   /* conn_free() */
const uint8_t *pool_params(const struct conn *c, size_t *len); /* what a resumed client is told */
bool pool_release(struct conn *c); /* c's client ended with Terminate: true when its server was kept */
/* Transaction pooling.  At login: whether c can be told the group's parameters without a server (DETACHED),
 * must log in to the instance (CONNECT: a slot is c's), or waits for the first login of its group (WAIT). */
enum pool_login { POOL_LOGIN_DETACHED, POOL_LOGIN_CONNECT, POOL_LOGIN_WAIT };
enum pool_login pool_txn_login(struct conn *c);
bool pool_txn_park(struct conn *c);   /* the transaction ended: the server connection goes back */
/* A pinned session ends quiet: its server connection is reset (DISCARD ALL) and then parked for the group;
 * true when it was taken from c. */
bool pool_txn_retire(struct conn *c);
void pool_txn_attach(struct conn *c); /* the client's next transaction began (its bytes in c->held) */
void pool_conn_gone(struct conn *c);  /* conn_close(): c's slot, place in line and group go */
void pool_txn_pinned(struct conn *c); /* c has just been pinned to its server connection */
unsigned pool_txn_npinned(const struct conn *c); /* sessions of c's group pinned to their connections */
void pool_sweep(struct proxy *px);
size_t pool_shed(struct proxy *px, const struct conf_instance *in); /* closes in's kept connections */
size_t pool_shed_all(struct proxy *self, const struct conf_instance *in); /* ... on every worker */
/* Calls fn for each server connection no session holds (SHOW SERVERS); state: "kept" (reset, for the next
 * client), "resetting", or "idle" (a transaction pool's). */
typedef void pool_each_fn(void *arg, const char *instance, const char *dbname, uint32_t pid, bool tls,
			  const char *state);
void pool_each(struct proxy *px, pool_each_fn *fn, void *arg);
/* Calls fn for each transaction pool (SHOW POOLS). */
struct pool_info {
	const char *instance, *dbname;
	unsigned sessions, waiting, servers, idle, pool_size, pinned;
};
typedef void pool_group_fn(void *arg, const struct pool_info *in);
void pool_each_group(struct proxy *px, pool_group_fn *fn, void *arg);
void pool_free_all(struct proxy *px);

/* relay.c, for pool.c: the server's raw socket leaves c (not closed), or a parked one joins c. */
void relay_release_server(struct conn *c);
/* A TLS server relayed on its socket goes back to its bufferevent, reading, with these callbacks (pool.c). */
void relay_server_to_bev(struct conn *c, bufferevent_data_cb readcb, bufferevent_event_cb eventcb, void *arg);
/* OpenSSL holds bytes of a TLS server's that the session has not read yet: its connection cannot go back. */
bool relay_server_has_pending(struct conn *c);
bool relay_adopt_server(struct conn *c, evutil_socket_t fd); /* false: out of memory, fd not taken */
/* Transaction pooling: a server connection joined c (adopted, or logged in): relay what the client sent. */
void relay_txn_resume(struct conn *c);

/* stmt.c: named prepared statements under transaction pooling.  ps_to_server() takes the client's bytes for
 * the attached server connection, ps_from_server() the server's for the client; both false once c closed. */
struct ps_client *ps_client_new(void);
void ps_client_free(struct ps_client *pc);
void ps_server_free(struct ps_server *ss);
bool ps_to_server(struct conn *c, const uint8_t *p, size_t n, struct evbuffer *buf);
bool ps_from_server(struct conn *c, const uint8_t *p, size_t n, struct evbuffer *buf);
bool ps_busy(const struct ps_client *pc);          /* a message or an answer is under way */
size_t ps_stashed(const struct ps_client *pc);     /* the client's bytes waiting for a batch's answers */
void ps_release(struct conn *c); /* the client has gone: what it sent goes to the server without waiting */
void ps_trim(struct conn *c);    /* an idle session without named statements gives its state back */
bool ps_server_tainted(const struct ps_server *ss); /* DISCARD/DEALLOCATE: reset before it is shared again */
/* relay.c: bytes (p, or all of buf) to the client or the server, as they are. */
bool relay_out(struct conn *c, bool to_client, const uint8_t *p, size_t n, struct evbuffer *buf);

/* krelay.c: the kernel relays plaintext sessions (kernel_relay) */
bool krelay_open(struct proxy *px, uint32_t npairs, char *err, size_t errlen);
void krelay_free(struct proxy *px);
bool krelay_attach(struct conn *c);  /* both sides raw and quiet; false: the session relays in user space */
void krelay_detach(struct conn *c);  /* before the sockets close */
void krelay_refresh(struct conn *c); /* the kernel's counts into bytes_in/out, last_active, server_idle */
void krelay_credit(struct conn *c);  /* let the kernel relay further as the destinations take bytes */
int krelay_may_write(struct conn *c, bool to_client); /* KR_WRITE, or KR_WAIT: the kernel still delivers */
void krelay_wrote(struct conn *c, bool to_client, size_t n);
/* What the client (client = true) or the server has yet to be sent. */
size_t relay_pending(struct conn *c, bool client);
/* Whether 6 bytes are a ReadyForQuery: where a server's output stands at a message boundary. */
bool relay_is_ready_tail(const uint8_t t[6]);
/* Bytes for side client still wait in pglane or in the kernel relay (whose drain it then waits for). */
bool relay_unflushed(struct conn *c, bool client);
/* Queues bytes to a raw client; false (c closed) on failure. */
bool relay_client_write(struct conn *c, const void *p, size_t n);
/* Stops the raw sides' events; keep_client_writes leaves the client's write event to flush. */
void relay_stop(struct conn *c, bool keep_client_writes);
void relay_close_server(struct conn *c);
void relay_free(struct conn *c);

/* cancel map and caches (conn.c) */
void proxy_caches_free(struct proxy *px);
bool cancel_map_add(struct proxy *px, struct conn *c);
void cancel_map_remove(struct proxy *px, struct conn *c);
struct conn *cancel_map_find(struct proxy *px, uint32_t key);

/* main.c: run the proxy on the file at path until stopped; returns the exit status. */
int proxy_run(const char *path);

/* cli.c: subcommands; argv[0] is the subcommand name. */
int cli_main(int argc, char **argv);

#endif
