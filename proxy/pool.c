/*
 * pool: a server connection outlives its client (server_idle_timeout > 0).
 *
 * When a client ends its session with Terminate at a message boundary, outside a transaction, pglane keeps
 * the server connection instead of closing it: it sends DISCARD ALL (which ends everything the session set:
 * settings, prepared statements, temporary tables, advisory locks, LISTENs) and, once the server answers
 * ReadyForQuery idle, parks it.  The next client that logs in to the same timeline database of the same
 * instance, with the same startup parameters, gets it after its own SCRAM exchange with pglane: the
 * ParameterStatus messages the server last reported, a BackendKeyData with a new key of pglane's, and
 * ReadyForQuery.  No TCP or TLS handshake, no login to the instance, no backend process started.
 *
 * What keeps timelines apart: the key is the instance (the very struct of the configuration snapshot, so a
 * reload retires every parked connection), the database name and a digest of the startup parameters; the
 * client has proven its timeline's token before pglane looks.  A parked connection whose server speaks or
 * closes, that waits past server_idle_timeout, or whose reset fails is closed.
 *
 * Transaction pooling (below) parks a connection at the end of every transaction, without a reset; only a
 * session pinned to its connection (it named a prepared statement) leaves it reset with DISCARD ALL, which
 * then joins its group's idle ones (pool_txn_retire()).
 */
#include "proxy/proxy.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <openssl/evp.h>

#define POOL_RESET_S 5       /* seconds DISCARD ALL may take */
#define POOL_MSG_MAX 65536   /* the largest message expected during a reset (a ParameterStatus, a notice) */

struct pooled {
	TAILQ_ENTRY(pooled) link;
	TAILQ_ENTRY(pooled) glink;        /* g->idle */
	struct pgroup *g;                 /* reference: transaction pooling's group, or NULL (session mode) */
	struct proxy *px;
	struct snapshot *snap;            /* reference: inst points into it */
	const struct conf_instance *inst;
	char dbname[PG_NAMEDATALEN];
	uint8_t params_digest[16];
	evutil_socket_t fd;               /* plaintext: the socket (owned), else -1 */
	struct event *rev;                /* plaintext: owned */
	struct bufferevent *bev;          /* TLS: owned */
	SSL *ssl;                         /* TLS: owned by bev */
	struct evbuffer *in;              /* owned: the server's bytes while resetting */
	struct pgbuf *params;             /* owned: ParameterStatus messages for the next client */
	struct ps_server *pss;            /* owned: the named statements it has prepared (stmt.c) */
	uint32_t be_pid, be_key;
	union {
		struct sockaddr sa;
		struct sockaddr_in in;
		struct sockaddr_in6 in6;
	} be_addr;
	socklen_t be_addrlen;
	uint32_t since; /* px->clock_s when parked (or reset began) */
	bool ready;     /* DISCARD ALL answered: a client may have it */
};

/*
 * Transaction pooling (pool_mode = transaction): the sessions with one key (instance, database, startup
 * parameters) share at most pool_size server connections.  A session takes one when its client begins a
 * transaction and gives it back at the ReadyForQuery that ends it (relay.c frames both directions to know);
 * in between, the connection waits on idle.  A session logs in without one once the group has heard a
 * server's ParameterStatus messages: so ten thousand idle clients cost no server connection at all.
 * Each worker has its own groups; pool_size counts for the whole process, so a worker's group opens at most
 * its share, pool_size divided by workers and rounded up (pgroup_limit()).
 */
struct pgroup {
	unsigned long hash;        /* first: pool_lh_hash() reads it */
	struct proxy *px;
	struct snapshot *snap; /* reference: inst points into it */
	const struct conf_instance *inst;
	char dbname[PG_NAMEDATALEN];
	uint8_t digest[16];
	unsigned refs;             /* sessions of the group, parked or resetting connections, a kick under way */
	unsigned nsessions;        /* sessions of the group */
	unsigned nserver;          /* server connections: a session's, parked, resetting, or logging in */
	unsigned npinned;          /* sessions that keep theirs (named prepared statements) */
	struct pool_list idle;     /* parked, newest first */
	struct conn_list waiters;  /* sessions waiting for a server connection, or for the group's first login */
	struct params_blob *params; /* reference: what the group's sessions are told at login */
	uint8_t *startup;          /* owned: a StartupMessage of the group's, to open server connections with */
	size_t startup_len;
	bool kicking;
};

/* The server connections g may hold: its worker's share of pool_size. */
static unsigned pgroup_limit(const struct pgroup *g)
{
	unsigned n = g->px->lane->n, size = (unsigned)g->snap->conf->pool_size;
	return (size + n - 1) / n;
}

/* ParameterStatus sets, shared: the sessions of one timeline almost always hear the same ones, and a copy
 * per session would be a quarter of an idle session's memory. */
static void pool_txn_join(struct conn *c);

struct params_blob {
	unsigned long hash; /* first, as in struct pgroup: pool_lh_hash() reads it */
	uint32_t refs;
	size_t len;
	uint8_t data[];
};

/* The hash of a params_blob or a pgroup, each of which begins with it. */
static unsigned long pool_lh_hash(const void *p)
{
	return *(const unsigned long *)p;
}

static int blob_cmp(const void *a, const void *b)
{
	const struct params_blob *x = a, *y = b;

	if (x->len != y->len)
		return x->len < y->len ? -1 : 1;
	return memcmp(x->data, y->data, x->len);
}

/* A reference to the shared blob holding d[0..n), made if none does; NULL when out of memory. */
static struct params_blob *blob_get(struct proxy *px, const uint8_t *d, size_t n)
{
	uint8_t digest[EVP_MAX_MD_SIZE];
	unsigned dlen = 0;
	struct params_blob *b, *found;

	if (!px->params_blobs && !(px->params_blobs = OPENSSL_LH_new(pool_lh_hash, blob_cmp)))
		return NULL;
	/* A keyed digest would be stronger; the values come from the server, and application_name from the
	 * client, so a collision costs a longer bucket, never a wrong answer (blob_cmp compares the bytes). */
	if (EVP_Digest(d, n, digest, &dlen, EVP_sha256(), NULL) != 1 || !(b = malloc(sizeof(*b) + n)))
		return NULL;
	memcpy(&b->hash, digest, sizeof(b->hash));
	b->len = n;
	b->refs = 1;
	memcpy(b->data, d, n);
	if ((found = OPENSSL_LH_retrieve(px->params_blobs, b))) {
		free(b);
		found->refs++;
		return found;
	}
	OPENSSL_LH_insert(px->params_blobs, b);
	if (OPENSSL_LH_error(px->params_blobs)) {
		free(b);
		return NULL;
	}
	return b;
}

static void blob_put(struct proxy *px, struct params_blob *b)
{
	if (!b || --b->refs > 0)
		return;
	OPENSSL_LH_delete(px->params_blobs, b);
	free(b);
}

/* Frees p and whatever it still owns; p is off the list. */
static void pool_destroy(struct pooled *p)
{
	if (p->rev)
		event_free(p->rev);
	if (p->fd >= 0)
		evutil_closesocket(p->fd);
	if (p->bev)
		bufferevent_free(p->bev);
	if (p->in)
		evbuffer_free(p->in);
	if (p->params) {
		pgbuf_free(p->params);
		free(p->params);
	}
	ps_server_free(p->pss);
	snapshot_unref(p->snap);
	free(p);
}

static void pgroup_put(struct pgroup *g);
static void pgroup_kick(struct pgroup *g);

static void pool_free(struct pooled *p, const char *why)
{
	struct pgroup *g = p->g;

	TAILQ_REMOVE(&p->px->pool, p, link);
	p->px->npooled--;
	if (g) {
		if (p->ready) /* (one being reset, pool_txn_retire(), is not on idle yet) */
			TAILQ_REMOVE(&g->idle, p, glink);
		g->nserver--;
	}
	log_msg(LOG_DEBUG, "pool: server pid %u of instance %s database \"%s\" closed: %s", p->be_pid, p->inst->name,
		p->dbname, why);
	pool_destroy(p);
	if (g) {
		/* A slot is free: a session waiting may open a connection.  Only once nothing else is parked, so
		 * that a kick never takes an entry of px->pool that pool_sweep() is walking. */
		if (TAILQ_EMPTY(&g->idle))
			pgroup_kick(g);
		pgroup_put(g);
	}
}

/* Replaces (or adds) the ParameterStatus message for its parameter in params. */
static void pool_param_set(struct pgbuf *params, const uint8_t *msg, size_t len)
{
	const char *name = (const char *)msg + 5;
	size_t namelen = strnlen(name, len - 5);
	struct pgbuf out = {0};

	for (size_t off = 0; off + 5 <= params->len;) {
		size_t mlen = (size_t)pg_get_u32(params->data + off + 1) + 1;
		const char *n = (const char *)params->data + off + 5;
		if (!(mlen - 5 > namelen && memcmp(n, name, namelen) == 0 && n[namelen] == '\0'))
			pgbuf_put(&out, params->data + off, mlen);
		off += mlen;
	}
	pgbuf_put(&out, msg, len);
	if (out.oom) {
		pgbuf_free(&out);
		params->oom = true;
		return;
	}
	pgbuf_free(params);
	*params = out;
}

void pool_login_begins(struct conn *c)
{
	EVP_MD_CTX *md;
	uint8_t digest[EVP_MAX_MD_SIZE];
	unsigned dlen = 0;

	if (c->snap->conf->server_idle_timeout_s <= 0 || !c->lg || c->pool_on)
		return;
	/* The startup parameters the server session is made of (user and database are the key's own). */
	if (!(md = EVP_MD_CTX_new()) || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(md);
		return;
	}
	for (size_t i = 0; i < c->lg->su.nparams; i++) {
		const char *k = c->lg->su.names[i], *v = c->lg->su.values[i];
		if (strcmp(k, "user") == 0 || strcmp(k, "database") == 0 || strncmp(k, "_pq_.", 5) == 0)
			continue;
		EVP_DigestUpdate(md, k, strlen(k) + 1);
		EVP_DigestUpdate(md, v, strlen(v) + 1);
	}
	bool ok = EVP_DigestFinal_ex(md, digest, &dlen) == 1 && dlen >= sizeof(c->be_params_digest);
	EVP_MD_CTX_free(md);
	if (!ok)
		return;
	memcpy(c->be_params_digest, digest, sizeof(c->be_params_digest));
	c->pool_on = true;
	pool_txn_join(c);
}

void pool_note_param(struct conn *c, const uint8_t *msg, size_t len)
{
	if (c->pool_on && c->lg && len > 5)
		pool_param_set(&c->lg->params, msg, len);
}

void pool_session_starts(struct conn *c)
{
	struct pgroup *g = c->group;

	if (c->pool_on && !c->be_params && c->lg &&
	    (c->lg->params.oom || !(c->be_params = blob_get(c->px, c->lg->params.data, c->lg->params.len))))
		c->pool_on = false;
	if (g && !g->params && c->be_params) {
		/* The group's first login: the sessions waiting for it may log in now. */
		g->params = c->be_params;
		g->params->refs++;
		pgroup_kick(g);
	}
}

void pool_session_ends(struct conn *c)
{
	blob_put(c->px, c->be_params);
	c->be_params = NULL;
}

const uint8_t *pool_params(const struct conn *c, size_t *len)
{
	*len = c->be_params ? c->be_params->len : 0;
	return c->be_params ? c->be_params->data : NULL;
}

/* The server's bytes while resetting or parked. */
static void pool_on_bytes(struct pooled *p)
{
	uint8_t head[5];
	struct pg_msg m;
	char err[128];

	for (;;) {
		size_t have = evbuffer_get_length(p->in);
		if (have < 5)
			return;
		evbuffer_copyout(p->in, head, 5);
		if (pg_read_msg(head, 5, POOL_MSG_MAX, &m, err, sizeof(err)) == PG_BAD) {
			pool_free(p, "malformed message during reset");
			return;
		}
		size_t total = (size_t)pg_get_u32(head + 1) + 1;
		if (have < total)
			return;
		uint8_t *msg = evbuffer_pullup(p->in, (ev_ssize_t)total);
		if (!msg) {
			pool_free(p, "out of memory");
			return;
		}
		switch (p->ready ? 0 : msg[0]) {
		case PG_MSG_PARAMETER_STATUS:
			if (p->params) /* (a group's sessions hear the group's set, not this connection's) */
				pool_param_set(p->params, msg, total);
			break;
		case 'C': /* CommandComplete of DISCARD ALL */
		case 'N': /* NoticeResponse */
		case 'A': /* NotificationResponse of a LISTEN that DISCARD ALL has just ended */
			break;
		case PG_MSG_READY_FOR_QUERY:
			if (total != 6 || msg[5] != 'I' || evbuffer_get_length(p->in) != total || (p->params && p->params->oom)) {
				pool_free(p, "the reset did not end idle");
				return;
			}
			p->ready = true;
			p->since = p->px->clock_s;
			if (p->g) { /* a retired connection joins its group's idle ones */
				evbuffer_drain(p->in, total);
				TAILQ_INSERT_HEAD(&p->g->idle, p, glink);
				pgroup_kick(p->g);
				return;
			}
			break;
		default: /* an error, or anything at all once parked (a FATAL as the server shuts down) */
			pool_free(p, msg[0] == PG_MSG_ERROR ? "the server sent an error" : "the server spoke while parked");
			return;
		}
		evbuffer_drain(p->in, total);
	}
}

static void pool_fd_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pooled *p = arg;

	if (!p->in && !(p->in = evbuffer_new())) {
		pool_free(p, "out of memory");
		return;
	}
	int n = evbuffer_read(p->in, fd, 4096);

	if (n <= 0) {
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
			return;
		pool_free(p, n == 0 ? "the server closed the connection" : "server connection error");
		return;
	}
	pool_on_bytes(p);
}

static void pool_bev_read_cb(struct bufferevent *bev, void *arg)
{
	struct pooled *p = arg;

	if ((!p->in && !(p->in = evbuffer_new())) || evbuffer_add_buffer(p->in, bufferevent_get_input(bev)) != 0) {
		pool_free(p, "out of memory");
		return;
	}
	pool_on_bytes(p);
}

static void pool_bev_event_cb(struct bufferevent *bev, short what, void *arg)
{
	pool_free(arg, (what & BEV_EVENT_EOF) ? "the server closed the connection" : "server connection error");
}

/* What a parked connection keeps of the session it leaves: its key and the server's identity (pid, cancel
 * key, address), with a reference to the snapshot its instance lives in. */
static void pool_keep(struct pooled *p, struct conn *c)
{
	p->px = c->px;
	p->snap = snapshot_ref(c->snap);
	p->inst = c->inst;
	memcpy(p->dbname, c->route.dbname, sizeof(p->dbname));
	memcpy(p->params_digest, c->be_params_digest, sizeof(p->params_digest));
	p->be_pid = c->be_pid;
	p->be_key = c->be_key;
	memcpy(&p->be_addr, &c->be_addr, sizeof(p->be_addr));
	p->be_addrlen = c->be_addrlen;
	p->since = c->px->clock_s;
	p->pss = c->pss;
	c->pss = NULL;
}

/* The server's identity goes to the session that takes the parked connection. */
static void pool_give(struct pooled *p, struct conn *c)
{
	c->be_pid = p->be_pid;
	c->be_key = p->be_key;
	memcpy(&c->be_addr, &p->be_addr, sizeof(c->be_addr));
	c->be_addrlen = p->be_addrlen;
	ps_server_free(c->pss);
	c->pss = p->pss;
	p->pss = NULL;
}

/* c's TLS server connection moves to p as its bufferevent (back from the socket relay first, when it was
 * there), with p's callbacks and no write watermark; the caller enables it. */
static void pool_move_bev(struct pooled *p, struct conn *c)
{
	if (c->rs.fd >= 0)
		relay_server_to_bev(c, pool_bev_read_cb, pool_bev_event_cb, p);
	p->bev = c->server;
	p->ssl = c->be_ssl;
	c->server = NULL;
	c->be_ssl = NULL;
	bufferevent_setcb(p->bev, pool_bev_read_cb, NULL, pool_bev_event_cb, p);
	bufferevent_setwatermark(p->bev, EV_WRITE, 0, 0);
}

/* c's server connection moves to p, which sends it DISCARD ALL and reads the answer (pool_on_bytes()).
 * False when the reset could not be sent; the connection is p's either way. */
static bool pool_reset_from(struct pooled *p, struct conn *c)
{
	static const char discard[] = "Q\0\0\0\20DISCARD ALL"; /* length 16: 4 + 11 + NUL */

	ps_server_free(p->pss); /* DISCARD ALL closes them all */
	p->pss = NULL;
	if (c->rs.fd >= 0 && !c->rs.ssl) {
		p->fd = c->rs.fd;
		p->rev = event_new(c->px->base, p->fd, EV_READ | EV_PERSIST, pool_fd_read_cb, p);
		if (p->rev)
			event_add(p->rev, NULL); /* before the session's goes: epoll's registration stays */
		relay_release_server(c); /* c no longer owns the socket */
		return p->rev && send(p->fd, discard, sizeof(discard), MSG_NOSIGNAL) == (ssize_t)sizeof(discard);
	}
	pool_move_bev(p, c);
	return bufferevent_write(p->bev, discard, sizeof(discard)) == 0 &&
	       bufferevent_enable(p->bev, EV_READ | EV_WRITE) == 0;
}

bool pool_release(struct conn *c)
{
	struct proxy *px = c->px;
	struct pooled *p;

	if (!c->be_params || c->state != CONN_RELAY || px->stopping ||
	    c->snap != px->snap || c->server_status != 'I' || relay_pending(c, false) > 0 || relay_server_has_pending(c) ||
	    (c->rs.fd < 0 && !(c->server && c->be_ssl)))
		return false;
	if (!(p = calloc(1, sizeof(*p))))
		return false;
	p->fd = -1;
	if ((p->in = evbuffer_new()) && (p->params = calloc(1, sizeof(*p->params))))
		pgbuf_put(p->params, c->be_params->data, c->be_params->len); /* DISCARD ALL may change some */
	if (!p->in || !p->params || p->params->oom) {
		pool_destroy(p); /* holds nothing of c's yet */
		return false;
	}
	/* The kernel relay lets the server's socket go: every byte the client sent has been answered. */
	krelay_detach(c);
	pool_keep(p, c);
	pool_session_ends(c);
	bool sent = pool_reset_from(p, c);
	TAILQ_INSERT_TAIL(&px->pool, p, link);
	px->npooled++;
	if (!sent) {
		log_conn(LOG_DEBUG, c, "pool: cannot send DISCARD ALL: %s", strerror(errno));
		pool_free(p, "cannot send DISCARD ALL");
		return true; /* the connection was taken from c all the same */
	}
	px->stats.pool_kept++;
	return true;
}

bool pool_take(struct conn *c)
{
	struct proxy *px = c->px;
	const struct conf_instance *in = c->route.app->instance;
	struct pooled *p;

	if (!c->pool_on)
		return false;
	TAILQ_FOREACH(p, &px->pool, link) {
		if (p->ready && !p->g && p->inst == in && strcmp(p->dbname, c->route.dbname) == 0 &&
		    memcmp(p->params_digest, c->be_params_digest, sizeof(p->params_digest)) == 0)
			break;
	}
	if (!p)
		return false;
	struct params_blob *params = blob_get(px, p->params->data, p->params->len);
	if (!params || (p->fd >= 0 && !relay_adopt_server(c, p->fd))) {
		blob_put(px, params);
		return false;
	}
	TAILQ_REMOVE(&px->pool, p, link);
	px->npooled--;
	c->inst = in;
	pool_give(p, c);
	pool_session_ends(c);
	c->be_params = params;
	if (p->fd >= 0) {
		event_free(p->rev);
		p->rev = NULL;
		p->fd = -1; /* c's now (relay_adopt_server() above) */
	} else {
		c->server = p->bev;
		c->be_ssl = p->ssl;
		p->bev = NULL;
		bufferevent_setcb(c->server, NULL, NULL, NULL, NULL);
		bufferevent_disable(c->server, EV_READ | EV_WRITE);
	}
	px->stats.pool_reused++;
	pool_destroy(p);
	return true;
}

void pool_sweep(struct proxy *px)
{
	struct pooled *p, *next;
	int idle = px->snap->conf->server_idle_timeout_s;

	for (p = TAILQ_FIRST(&px->pool); p; p = next) {
		next = TAILQ_NEXT(p, link);
		if (p->snap != px->snap && !(p->g && p->g->nsessions > 0))
			pool_free(p, "the configuration was reloaded");
		else if (!p->ready && px->clock_s - p->since > POOL_RESET_S)
			pool_free(p, "DISCARD ALL took too long");
		else if (p->ready && (idle <= 0 || px->clock_s - p->since > (uint32_t)idle))
			pool_free(p, "server_idle_timeout");
	}
}

void pool_each(struct proxy *px, pool_each_fn *fn, void *arg)
{
	struct pooled *p;

	TAILQ_FOREACH(p, &px->pool, link)
		fn(arg, p->inst->name, p->dbname, p->be_pid, p->ssl != NULL,
		   !p->ready ? "resetting" : p->g ? "idle" : "kept");
}

size_t pool_shed(struct proxy *px, const struct conf_instance *in)
{
	struct pooled *p, *next;
	size_t n = 0;

	for (p = TAILQ_FIRST(&px->pool); p; p = next) {
		next = TAILQ_NEXT(p, link);
		if (strcmp(p->inst->name, in->name) == 0) {
			pool_free(p, "the instance needs the slot for another timeline");
			n++;
		}
	}
	return n;
}

struct shed_req {
	const struct conf_instance *in; /* only its name is compared: each worker has its own snapshot */
	size_t n;
};

static void pool_shed_fn(struct proxy *px, void *arg)
{
	struct shed_req *r = arg;
	r->n += pool_shed(px, r->in);
}

size_t pool_shed_all(struct proxy *self, const struct conf_instance *in)
{
	struct shed_req r = {in, 0};

	worker_each(self->lane, self, pool_shed_fn, &r);
	return r.n;
}

void pool_free_all(struct proxy *px)
{
	while (!TAILQ_EMPTY(&px->pool))
		pool_free(TAILQ_FIRST(&px->pool), "pglane stops");
	OPENSSL_LH_free(px->params_blobs); /* empty: every session has gone */
	px->params_blobs = NULL;
	OPENSSL_LH_free(px->pgroups); /* empty too: groups go with their last session and parked connection */
	px->pgroups = NULL;
	OPENSSL_LH_free(px->ps_stmts); /* empty too: statements go with their last name and server connection */
	px->ps_stmts = NULL;
}

/* ---------------------------------------------------------------- transaction pooling */

static int pgroup_cmp(const void *a, const void *b)
{
	const struct pgroup *x = a, *y = b;

	if (x->inst != y->inst)
		return x->inst < y->inst ? -1 : 1;
	int d = memcmp(x->digest, y->digest, sizeof(x->digest));
	return d ? d : strcmp(x->dbname, y->dbname);
}

/* c's group, made if there is none; NULL when out of memory. */
static struct pgroup *pgroup_get(struct conn *c)
{
	struct proxy *px = c->px;
	struct pgroup key = {.inst = c->inst}, *g;

	if (!px->pgroups && !(px->pgroups = OPENSSL_LH_new(pool_lh_hash, pgroup_cmp)))
		return NULL;
	snprintf(key.dbname, sizeof(key.dbname), "%s", c->route.dbname);
	memcpy(key.digest, c->be_params_digest, sizeof(key.digest));
	memcpy(&key.hash, key.digest, sizeof(key.hash)); /* a digest already: its bytes hash well */
	key.hash ^= (unsigned long)(uintptr_t)c->inst;
	if ((g = OPENSSL_LH_retrieve(px->pgroups, &key))) {
		g->refs++;
		return g;
	}
	if (!c->lg || !(g = malloc(sizeof(*g))))
		return NULL;
	*g = key;
	if (!(g->startup = malloc(c->lg->su.len))) {
		free(g);
		return NULL;
	}
	memcpy(g->startup, c->lg->startup, c->lg->su.len);
	g->startup_len = c->lg->su.len;
	g->px = px;
	g->snap = snapshot_ref(c->snap);
	g->refs = 1;
	TAILQ_INIT(&g->idle);
	TAILQ_INIT(&g->waiters);
	OPENSSL_LH_insert(px->pgroups, g);
	if (OPENSSL_LH_error(px->pgroups)) {
		snapshot_unref(g->snap);
		free(g->startup);
		free(g);
		return NULL;
	}
	return g;
}

static void pgroup_put(struct pgroup *g)
{
	if (--g->refs > 0)
		return;
	OPENSSL_LH_delete(g->px->pgroups, g);
	blob_put(g->px, g->params);
	snapshot_unref(g->snap);
	free(g->startup);
	free(g);
}

static void pgroup_unwait(struct conn *c)
{
	if (c->waiting)
		TAILQ_REMOVE(&c->group->waiters, c, wait_link);
	c->waiting = false;
}

static void pgroup_wait(struct conn *c)
{
	if (!c->waiting) {
		TAILQ_INSERT_TAIL(&c->group->waiters, c, wait_link);
		c->wait_since = c->px->clock_s;
	}
	c->waiting = true;
}

/* Lets waiting sessions go as far as the group allows: logins once its parameters are known (or its first
 * login failed, when the next tries), transactions while a connection is parked or a slot is free. */
static void pgroup_kick(struct pgroup *g)
{
	struct conn *c, *next;

	if (g->kicking)
		return;
	g->kicking = true;
	g->refs++;
	for (c = TAILQ_FIRST(&g->waiters); c; c = next) {
		next = TAILQ_NEXT(c, wait_link);
		if (c->closing || c->state == CONN_CLOSED) { /* ending: a connection now would serve no one */
			pgroup_unwait(c);
			continue;
		}
		if (c->state == CONN_CONNECT) {
			if (!g->params && g->nserver > 0)
				continue;
			pgroup_unwait(c);
			backend_start(c);
		} else {
			if (TAILQ_EMPTY(&g->idle) && g->nserver >= pgroup_limit(g))
				break;
			pgroup_unwait(c);
			pool_txn_attach(c);
		}
	}
	g->kicking = false;
	pgroup_put(g);
}

/* pool_login_begins(), for a transaction-mode app: c joins its group (or, without memory, stays a session). */
static void pool_txn_join(struct conn *c)
{
	if (c->group || c->admin || c->route.app->pool_mode != POOL_MODE_TRANSACTION)
		return;
	if (!(c->group = pgroup_get(c))) {
		log_conn(LOG_WARNING, c, "out of memory for transaction pooling: this session keeps its server connection");
		return;
	}
	c->txn = true;
	c->group->nsessions++;
	/* Named statements are kept by pglane (stmt.c); without memory for that, they pin the session. */
	c->ps_on = c->snap->conf->max_prepared_statements > 0; /* (relay_start() tells c->tx) */
}

enum pool_login pool_txn_login(struct conn *c)
{
	struct pgroup *g = c->group;

	if (g->params) {
		if (c->holds_slot) { /* a retry whose group has learned its parameters meanwhile */
			c->holds_slot = false;
			g->nserver--;
		}
		c->be_params = g->params;
		g->params->refs++;
		c->be_pid = c->be_key = 0;
		/* The client still gets a process id for its cancel requests: pglane's own, never a backend's. */
		c->client_pid = (uint32_t)(c->id % 0x7ffffffe) + 1;
		return POOL_LOGIN_DETACHED;
	}
	if (c->holds_slot) /* again, after autoprov or a shed */
		return POOL_LOGIN_CONNECT;
	if (g->nserver == 0) {
		g->nserver++;
		c->holds_slot = true;
		return POOL_LOGIN_CONNECT;
	}
	pgroup_wait(c); /* the group's first login is under way: its parameters will do for c too */
	return POOL_LOGIN_WAIT;
}

bool pool_txn_park(struct conn *c)
{
	struct proxy *px = c->px;
	struct pgroup *g = c->group;
	struct pooled *p;

	if (!g || !g->params || !c->holds_slot || (c->rs.fd < 0 && !(c->server && c->be_ssl)) ||
	    !(p = calloc(1, sizeof(*p))))
		return false;
	p->fd = -1;
	pool_keep(p, c);
	p->ready = true;
	if (c->rs.fd >= 0 && !c->rs.ssl) {
		if (!(p->rev = event_new(px->base, c->rs.fd, EV_READ | EV_PERSIST, pool_fd_read_cb, p))) {
			pool_destroy(p);
			return false;
		}
		p->fd = c->rs.fd;
		/* Added before the session's event goes: libevent then leaves epoll's registration alone, and
		 * a transaction costs no epoll_ctl(). */
		event_add(p->rev, NULL);
		relay_release_server(c);
	} else {
		pool_move_bev(p, c);
		bufferevent_enable(p->bev, EV_READ);
	}
	c->be_pid = c->be_key = 0;
	c->holds_slot = false; /* the slot goes with the connection */
	p->g = g;
	g->refs++;
	TAILQ_INSERT_TAIL(&px->pool, p, link);
	TAILQ_INSERT_HEAD(&g->idle, p, glink); /* the warmest first */
	px->npooled++;
	pgroup_kick(g);
	return true;
}

bool pool_txn_retire(struct conn *c)
{
	struct proxy *px = c->px;
	struct pgroup *g = c->group;
	struct pooled *p;

	if (!g || !g->params || !c->holds_slot || c->state != CONN_RELAY || c->closing || px->stopping ||
	    !pg_txn_quiet(&c->tx) ||
	    relay_pending(c, false) > 0 || relay_server_has_pending(c) || (c->rs.fd < 0 && !(c->server && c->be_ssl)))
		return false;
	if (!(p = calloc(1, sizeof(*p))))
		return false;
	p->fd = -1;
	if (!(p->in = evbuffer_new())) {
		free(p);
		return false;
	}
	pool_keep(p, c);
	bool sent = pool_reset_from(p, c);
	c->be_pid = c->be_key = 0;
	c->holds_slot = false; /* the slot goes with the connection, which is not on idle until reset */
	p->g = g;
	g->refs++;
	TAILQ_INSERT_TAIL(&px->pool, p, link);
	px->npooled++;
	if (!sent) {
		pool_free(p, "cannot send DISCARD ALL");
		return true; /* taken from c all the same */
	}
	px->stats.pool_kept++;
	return true;
}

/* Opens a new server connection for c in the middle of its session, with the group's startup packet. */
static void pool_txn_open(struct conn *c)
{
	struct pgroup *g = c->group;
	char err[128];

	if (!(c->lg = calloc(1, sizeof(*c->lg))) || !(c->lg->startup = malloc(g->startup_len))) {
		conn_close(c, "out of memory");
		return;
	}
	memcpy(c->lg->startup, g->startup, g->startup_len);
	if (pg_read_startup(c->lg->startup, g->startup_len, g->startup_len, &c->lg->su, err, sizeof(err)) != PG_OK) {
		conn_close(c, "the group's startup packet no longer parses");
		return;
	}
	ps_server_free(c->pss); /* a new connection has prepared nothing */
	c->pss = NULL;
	c->reopen = true;
	c->provisioned = true; /* a database that disappears mid-session is an error, not a reason to create it */
	c->state = CONN_CONNECT;
	backend_connect(c);
}

void pool_txn_attach(struct conn *c)
{
	struct proxy *px = c->px;
	struct pgroup *g = c->group;
	struct pooled *p = TAILQ_FIRST(&g->idle);

	if (p) {
		if (p->fd >= 0 && !relay_adopt_server(c, p->fd)) {
			conn_close(c, "out of memory");
			return;
		}
		TAILQ_REMOVE(&px->pool, p, link);
		TAILQ_REMOVE(&g->idle, p, glink);
		px->npooled--;
		pool_give(p, c);
		if (p->fd >= 0) {
			if (!(c->relay_blocked & RELAY_BLOCKED_SERVER))
				event_add(c->rs.rev, NULL); /* first, as in pool_txn_park() */
			event_free(p->rev);
			p->rev = NULL;
			p->fd = -1;
		} else {
			c->server = p->bev;
			c->be_ssl = p->ssl;
			p->bev = NULL;
		}
		c->holds_slot = true; /* the parked connection's slot */
		p->g = NULL;
		pool_destroy(p);
		pgroup_put(g); /* p's reference; c holds its own */
		relay_txn_resume(c);
		return;
	}
	if (g->nserver < pgroup_limit(g)) {
		g->nserver++;
		c->holds_slot = true;
		pool_txn_open(c);
		return;
	}
	pgroup_wait(c);
}

void pool_txn_pinned(struct conn *c)
{
	if (c->group)
		c->group->npinned++;
}

unsigned pool_txn_npinned(const struct conn *c)
{
	return c->group ? c->group->npinned : 0;
}

void pool_conn_gone(struct conn *c)
{
	struct pgroup *g = c->group;

	if (!g)
		return;
	pgroup_unwait(c);
	if (c->holds_slot)
		g->nserver--;
	if (c->tx.pinned)
		g->npinned--;
	c->holds_slot = false;
	c->group = NULL;
	g->nsessions--;
	pgroup_kick(g);
	pgroup_put(g);
}

struct group_walk {
	pool_group_fn *fn;
	void *arg;
};

static void pool_group_visit(void *p, void *arg)
{
	const struct pgroup *g = p;
	const struct group_walk *w = arg;
	struct pool_info in = {.instance = g->inst->name, .dbname = g->dbname, .sessions = g->nsessions,
			       .servers = g->nserver, .pool_size = pgroup_limit(g),
			       .pinned = g->npinned};
	const struct conn *c;
	const struct pooled *q;

	TAILQ_FOREACH(c, &g->waiters, wait_link)
		in.waiting++;
	TAILQ_FOREACH(q, &g->idle, glink)
		in.idle++;
	w->fn(w->arg, &in);
}

void pool_each_group(struct proxy *px, pool_group_fn *fn, void *arg)
{
	struct group_walk w = {fn, arg};

	if (px->pgroups)
		OPENSSL_LH_doall_arg(px->pgroups, pool_group_visit, &w);
}
