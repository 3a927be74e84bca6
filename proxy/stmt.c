/*
 * stmt.c: named prepared statements under transaction pooling (max_prepared_statements > 0).
 *
 * A named statement lives on one server process, and under transaction pooling a client's next transaction
 * may run on another.  So pglane keeps them, as PgBouncer 1.21's max_prepared_statements does: a Parse
 * with a name is recorded (the client's name -> the statement: its text and parameter types) and goes to
 * the server under pglane's own name for that statement, "pglane_<id>" (one per distinct statement in a
 * worker, shared by its clients).  Each server connection remembers what it has prepared (at most
 * max_prepared_statements; the least recently used is closed to make room).  A Bind or Describe naming a
 * client's statement is rewritten to pglane's name, behind a Parse when the connection at hand has not
 * prepared it yet.  A Parse the connection already has, and a Close, are answered by pglane itself.
 *
 * The answers reach the client in the order of its requests: each request sent to the server is queued
 * with what ends its answer and what becomes of it (forwarded; swallowed, being pglane's own; answered by
 * pglane in its place; or an error replaced), and the server's messages are framed to follow the queue.
 * An ErrorResponse to an extended-protocol message makes the server skip everything up to the next Sync:
 * the skipped requests are undone as the server ignored them (a Parse's name forgotten, a Close's name
 * back, the connection's set corrected).
 *
 * Ownership: a struct ps_stmt is counted (the worker's registry holds none; client names, server sets and
 * queued requests each hold one) and freed with its last reference.  struct ps_client is the session's
 * (c->psc); struct ps_server goes with its server connection (c->pss, or a parked struct pooled's).
 */
#include <event2/buffer.h>
#include <openssl/evp.h>
#include <openssl/lhash.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "proxy.h"

#define PS_PREFIX "pglane_"
#define PS_NAME_MAX 32 /* "pglane_" and a 64-bit id in hex, with its NUL */

struct ps_stmt {
	unsigned long hash; /* first: ps_lh_hash() reads it */
	struct proxy *px;
	uint64_t id;
	unsigned refs;
	uint32_t len;
	uint8_t body[]; /* Parse's body after the name: the query, NUL, parameter count and types */
};

struct ps_name {
	unsigned long hash; /* first, as in ps_stmt */
	struct ps_stmt *stmt; /* reference */
	char name[];
};

struct ps_slot {
	struct ps_stmt *stmt; /* reference */
	uint64_t used;
};

struct ps_server {
	struct ps_slot *v;
	unsigned n, cap;
	uint64_t clock;
	bool tainted; /* the client sent DISCARD or DEALLOCATE: what the server holds is unknown */
};

enum ps_how {
	PS_FORWARD, /* the server's answer goes to the client */
	PS_SWALLOW, /* pglane's own request: its answer goes nowhere (an error still goes to the client) */
	PS_SYNTH,   /* nothing went to the server: pglane answers once everything before it has been answered */
	PS_DUP,     /* a Parse of a name the client already has: the server's 42P05 is told with the client's name */
};

struct ps_req {
	uint8_t type;   /* the request: 'P' 'B' 'C' 'D' 'E' 'S' 'Q' 'F' */
	uint8_t how;    /* enum ps_how */
	bool srv_add;   /* a Parse that put stmt in the server's set */
	bool srv_del;   /* a Close that took stmt out of it */
	struct ps_stmt *stmt; /* reference, or NULL */
	char *name;     /* owned: the name a client's Parse added, a Close removed, a duplicate Parse repeated */
	/* A Query that begins DISCARD ALL or DEALLOCATE ALL: the names and the server's set before it, put
	 * back should the server skip it or fail it, dropped once it has run (its CommandComplete). */
	bool spec;      /* it changed the books (names, the server's set) on the bet that the server carries it out */
	uint32_t batch; /* the Sync that ends its batch: pc->batch then */
	bool has_saved;
	void *saved_names; /* OPENSSL_LHASH of struct ps_name */
	struct ps_slot *saved_v;
	unsigned saved_n, saved_cap;
};

struct ps_client {
	OPENSSL_LHASH *names; /* struct ps_name: the client's statements */
	struct ps_req *q;     /* ring: requests sent, answers not yet complete */
	unsigned head, count, cap;
	bool skipping; /* an extended-protocol error: the server ignores everything up to the next Sync */
	/* A batch that changed the books and is not yet answered may be skipped by the server, should an
	 * error come before its Sync; what the client sends behind that Sync is decided on those books, so it
	 * waits in stash until then (one round trip, for pipelines that prepare and use across a Sync). */
	uint32_t batch;          /* Syncs queued so far */
	unsigned nspec, nspec_open; /* queued requests with spec set; of those, in the batch still open */
	struct evbuffer *stash;
	/* the client's bytes */
	uint8_t hdr[5], have;
	uint8_t type;          /* of the message being streamed */
	uint32_t left;         /* its bytes still to come */
	uint8_t qtext[40], qhave; /* a Query's first bytes (DISCARD ALL, DEALLOCATE ALL) */
	bool qdone;            /* ... looked at */
	bool copy_in;          /* the server is in COPY FROM STDIN: it ignores Sync until CopyDone/CopyFail */
	bool force;            /* the client has gone: what waits goes to the server now (ps_release()) */
	struct evbuffer *part; /* a Parse, Bind, Describe or Close being gathered, header included */
	uint32_t part_need;
	struct evbuffer *msg;  /* what one Parse, Bind, Describe or Close becomes (pglane's messages included) */
	struct evbuffer *out;  /* what goes to the server from the bytes at hand, once they are not sent as read */
	/* the server's bytes */
	uint8_t shdr[5], shave;
	uint8_t stype;
	uint32_t sleft;
	bool sdrop;  /* the server message being read is not the client's */
	bool skeep;  /* ... but it is kept in serr: the error a duplicate Parse met */
	char stag[24];    /* a CommandComplete's tag (its first bytes) */
	uint8_t stag_have;
	struct evbuffer *serr;
};

/* ---------------------------------------------------------------- statements */

static unsigned long ps_lh_hash(const void *p)
{
	return *(const unsigned long *)p;
}

static int ps_stmt_cmp(const void *a, const void *b)
{
	const struct ps_stmt *x = a, *y = b;

	if (x->len != y->len)
		return x->len < y->len ? -1 : 1;
	return memcmp(x->body, y->body, x->len);
}

static int ps_name_cmp(const void *a, const void *b)
{
	return strcmp(((const struct ps_name *)a)->name, ((const struct ps_name *)b)->name);
}

/* A reference to the worker's statement with this body, made if there is none; NULL when out of memory. */
static struct ps_stmt *ps_stmt_get(struct proxy *px, const uint8_t *body, size_t len)
{
	uint8_t digest[EVP_MAX_MD_SIZE];
	unsigned dlen = 0;
	struct ps_stmt *s, *found;

	if (len > UINT32_MAX || (!px->ps_stmts && !(px->ps_stmts = OPENSSL_LH_new(ps_lh_hash, ps_stmt_cmp))))
		return NULL;
	/* As blob_get() in pool.c: a collision costs a longer bucket, never a wrong statement. */
	if (EVP_Digest(body, len, digest, &dlen, EVP_sha256(), NULL) != 1 || !(s = malloc(sizeof(*s) + len)))
		return NULL;
	memcpy(&s->hash, digest, sizeof(s->hash));
	s->len = (uint32_t)len;
	memcpy(s->body, body, len);
	if ((found = OPENSSL_LH_retrieve(px->ps_stmts, s))) {
		free(s);
		found->refs++;
		return found;
	}
	s->px = px;
	s->id = ++px->ps_next_id;
	s->refs = 1;
	OPENSSL_LH_insert(px->ps_stmts, s);
	if (OPENSSL_LH_error(px->ps_stmts)) {
		free(s);
		return NULL;
	}
	return s;
}

static struct ps_stmt *ps_stmt_ref(struct ps_stmt *s)
{
	if (s)
		s->refs++;
	return s;
}

static void ps_stmt_put(struct ps_stmt *s)
{
	if (!s || --s->refs > 0)
		return;
	OPENSSL_LH_delete(s->px->ps_stmts, s);
	free(s);
}

static void ps_srv_name(const struct ps_stmt *s, char out[PS_NAME_MAX])
{
	snprintf(out, PS_NAME_MAX, PS_PREFIX "%llx", (unsigned long long)s->id);
}

/* ---------------------------------------------------------------- a server connection's statements */

static struct ps_slot *ps_server_find(struct ps_server *ss, const struct ps_stmt *s)
{
	for (unsigned i = 0; ss && i < ss->n; i++)
		if (ss->v[i].stmt == s)
			return &ss->v[i];
	return NULL;
}

static bool ps_server_add(struct ps_server *ss, struct ps_stmt *s)
{
	if (ss->n == ss->cap) {
		unsigned cap = ss->cap ? ss->cap * 2 : 16;
		struct ps_slot *v = realloc(ss->v, cap * sizeof(*v));
		if (!v)
			return false;
		ss->v = v;
		ss->cap = cap;
	}
	ss->v[ss->n].stmt = ps_stmt_ref(s);
	ss->v[ss->n++].used = ++ss->clock;
	return true;
}

/* Takes s out of the set; its reference goes to the caller. */
static struct ps_stmt *ps_server_del(struct ps_server *ss, struct ps_stmt *s)
{
	struct ps_slot *slot = ps_server_find(ss, s);

	if (!slot)
		return NULL;
	*slot = ss->v[--ss->n];
	return s;
}

void ps_server_free(struct ps_server *ss)
{
	if (!ss)
		return;
	for (unsigned i = 0; i < ss->n; i++)
		ps_stmt_put(ss->v[i].stmt);
	free(ss->v);
	free(ss);
}

bool ps_server_tainted(const struct ps_server *ss)
{
	return ss && ss->tainted;
}


/* ---------------------------------------------------------------- the client's side */

/* The buffers a struct ps_client owns (made together, freed together). */
#define PS_BUFFERS(pc) {&(pc)->part, &(pc)->out, &(pc)->msg, &(pc)->serr, &(pc)->stash}

struct ps_client *ps_client_new(void)
{
	struct ps_client *pc = calloc(1, sizeof(*pc));

	if (!pc)
		return NULL;
	struct evbuffer **bufs[] = PS_BUFFERS(pc);
	for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
		if (!(*bufs[i] = evbuffer_new())) {
			ps_client_free(pc);
			return NULL;
		}
	return pc;
}

static void ps_name_free(void *p)
{
	struct ps_name *n = p;

	ps_stmt_put(n->stmt);
	free(n);
}

static void ps_req_clear(struct ps_req *r)
{
	ps_stmt_put(r->stmt);
	free(r->name);
	memset(r, 0, sizeof(*r));
}

void ps_client_free(struct ps_client *pc)
{
	if (!pc)
		return;
	if (pc->names) {
		OPENSSL_LH_doall(pc->names, ps_name_free);
		OPENSSL_LH_free(pc->names);
	}
	for (unsigned i = 0; i < pc->count; i++)
		ps_req_clear(&pc->q[(pc->head + i) % pc->cap]);
	free(pc->q);
	struct evbuffer **bufs[] = PS_BUFFERS(pc);
	for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
		if (*bufs[i])
			evbuffer_free(*bufs[i]);
	free(pc);
}

static unsigned ps_client_count(const struct ps_client *pc)
{
	return pc && pc->names ? (unsigned)OPENSSL_LH_num_items(pc->names) : 0;
}

size_t ps_stashed(const struct ps_client *pc)
{
	return pc ? evbuffer_get_length(pc->stash) : 0;
}

bool ps_busy(const struct ps_client *pc)
{
	return pc && (pc->count > 0 || evbuffer_get_length(pc->stash) > 0 || pc->have > 0 || pc->left > 0 || pc->part_need > 0 || pc->shave > 0 ||
		      pc->sleft > 0);
}

static struct ps_name *ps_name_find(struct ps_client *pc, const char *name)
{
	_Alignas(struct ps_name) char stack[sizeof(struct ps_name) + 64]; /* most names: no allocation per Bind */
	size_t len = strlen(name);
	struct ps_name *probe = len < 64 ? (struct ps_name *)(void *)stack : malloc(sizeof(*probe) + len + 1), *found;

	if (!probe || !pc->names) {
		if (probe != (struct ps_name *)(void *)stack)
			free(probe);
		return NULL;
	}
	probe->hash = OPENSSL_LH_strhash(name);
	memcpy(probe->name, name, len + 1);
	found = OPENSSL_LH_retrieve(pc->names, probe);
	if (probe != (struct ps_name *)(void *)stack)
		free(probe);
	return found;
}

/* name -> s (a new reference); false when out of memory. */
static bool ps_name_add(struct ps_client *pc, const char *name, struct ps_stmt *s)
{
	size_t len = strlen(name);
	struct ps_name *n = malloc(sizeof(*n) + len + 1);

	if (!n || (!pc->names && !(pc->names = OPENSSL_LH_new(ps_lh_hash, ps_name_cmp)))) {
		free(n);
		return false;
	}
	n->hash = OPENSSL_LH_strhash(name);
	memcpy(n->name, name, len + 1);
	n->stmt = ps_stmt_ref(s);
	OPENSSL_LH_insert(pc->names, n);
	if (OPENSSL_LH_error(pc->names)) {
		ps_name_free(n);
		return false;
	}
	return true;
}

static void ps_name_del(struct ps_client *pc, const char *name)
{
	struct ps_name *n = ps_name_find(pc, name);

	if (n) {
		OPENSSL_LH_delete(pc->names, n);
		ps_name_free(n);
	}
}

/* ---------------------------------------------------------------- the queue of requests */

static struct ps_req *ps_head(struct ps_client *pc)
{
	return pc->count ? &pc->q[pc->head] : NULL;
}

static void ps_pop(struct ps_client *pc)
{
	struct ps_req *r = &pc->q[pc->head];

	if (r->spec) {
		pc->nspec--;
		if (r->batch == pc->batch)
			pc->nspec_open--;
	}
	ps_req_clear(r);
	pc->head = (pc->head + 1) % pc->cap;
	pc->count--;
}

static const uint8_t ps_parse_complete[5] = {'1', 0, 0, 0, 4};
static const uint8_t ps_close_complete[5] = {'3', 0, 0, 0, 4};

/* Answers the requests at the head that pglane answers itself; false when c closed. */
static bool ps_answer_head(struct conn *c)
{
	struct ps_client *pc = c->psc;
	struct ps_req *r;

	while ((r = ps_head(pc)) && r->how == PS_SYNTH) {
		bool parse = r->type == 'P';
		ps_pop(pc);
		if (!relay_out(c, true, parse ? ps_parse_complete : ps_close_complete, 5, NULL))
			return false;
		c->px->stats.ps_answered++;
	}
	return true;
}

/* Queues a request; its references (stmt) and name (owned) go to the queue.  False when out of memory. */
static bool ps_push(struct conn *c, uint8_t type, uint8_t how, struct ps_stmt *stmt, char *name)
{
	struct ps_client *pc = c->psc;

	if (pc->count == pc->cap) {
		unsigned cap = pc->cap ? pc->cap * 2 : 16;
		struct ps_req *q = malloc(cap * sizeof(*q));
		if (!q) {
			ps_stmt_put(stmt);
			free(name);
			return false;
		}
		for (unsigned i = 0; i < pc->count; i++)
			q[i] = pc->q[(pc->head + i) % pc->cap];
		free(pc->q);
		pc->q = q;
		pc->head = 0;
		pc->cap = cap;
	}
	struct ps_req *r = &pc->q[(pc->head + pc->count++) % pc->cap];
	memset(r, 0, sizeof(*r));
	r->type = type;
	r->how = how;
	r->stmt = stmt;
	r->name = name;
	r->batch = pc->batch;
	if (type == 'S') {
		pc->batch++;
		pc->nspec_open = 0;
	}
	return true;
}

/* The request queued last, or NULL. */
static struct ps_req *ps_last(struct ps_client *pc)
{
	return pc->count ? &pc->q[(pc->head + pc->count - 1) % pc->cap] : NULL;
}

/* The request just queued changed the books (see struct ps_client): it is returned. */
static struct ps_req *ps_spec(struct ps_client *pc)
{
	struct ps_req *r = ps_last(pc);

	if (!r->spec) {
		r->spec = true;
		pc->nspec++;
		pc->nspec_open++;
	}
	return r;
}

/* Whether what the client sends next must wait for the answers to a batch that changed the books. */
static bool ps_must_wait(const struct ps_client *pc)
{
	return pc->nspec > pc->nspec_open && !pc->force && !pc->copy_in;
}

/* The server did not carry out r (an error, or skipped to the next Sync): what it did to the books goes. */
static void ps_undo(struct conn *c, struct ps_req *r)
{
	struct ps_client *pc = c->psc;

	if (r->type == 'P' && r->srv_add && c->pss)
		ps_stmt_put(ps_server_del(c->pss, r->stmt));
	if (r->type == 'P' && r->name && r->how != PS_DUP)
		ps_name_del(pc, r->name);
	if (r->type == 'C' && r->srv_del && c->pss && !ps_server_find(c->pss, r->stmt))
		ps_server_add(c->pss, r->stmt); /* (out of memory: it is prepared again, and fails, at worst) */
	if (r->type == 'C' && r->name && r->stmt && !ps_name_find(pc, r->name))
		ps_name_add(pc, r->name, r->stmt);
}

/* ---------------------------------------------------------------- the client's messages */

static void ps_put_msg(struct evbuffer *out, uint8_t type, const void *a, size_t alen, const void *b, size_t blen,
		       const void *d, size_t dlen)
{
	uint8_t hdr[5] = {type};
	uint32_t len = (uint32_t)(4 + alen + blen + dlen);

	hdr[1] = (uint8_t)(len >> 24), hdr[2] = (uint8_t)(len >> 16), hdr[3] = (uint8_t)(len >> 8), hdr[4] = (uint8_t)len;
	evbuffer_add(out, hdr, 5);
	if (alen)
		evbuffer_add(out, a, alen);
	if (blen)
		evbuffer_add(out, b, blen);
	if (dlen)
		evbuffer_add(out, d, dlen);
}

/* Makes room in the server's set for one more statement: the least recently used is closed. */
static bool ps_make_room(struct conn *c)
{
	struct ps_server *ss = c->pss;
	int max = c->snap->conf->max_prepared_statements;
	char srv[PS_NAME_MAX];

	while (ss->n > 0 && ss->n >= (unsigned)(max > 0 ? max : 1)) {
		unsigned lru = 0;
		for (unsigned i = 1; i < ss->n; i++)
			if (ss->v[i].used < ss->v[lru].used)
				lru = i;
		struct ps_stmt *s = ss->v[lru].stmt;
		ps_server_del(ss, s);
		ps_srv_name(s, srv);
		ps_put_msg(c->psc->msg, 'C', "S", 1, srv, strlen(srv) + 1, NULL, 0);
		if (!ps_push(c, 'C', PS_SWALLOW, s, NULL))
			return false;
		ps_spec(c->psc)->srv_del = true;
		c->px->stats.ps_evicted++;
	}
	return true;
}

/* The server has s (prepared now, behind a Parse of pglane's, if it had not).  False when out of memory. */
static bool ps_ensure(struct conn *c, struct ps_stmt *s)
{
	struct ps_slot *slot = ps_server_find(c->pss, s);
	char srv[PS_NAME_MAX];

	if (slot) {
		slot->used = ++c->pss->clock;
		return true;
	}
	if (!ps_make_room(c) || !ps_server_add(c->pss, s))
		return false;
	ps_srv_name(s, srv);
	ps_put_msg(c->psc->msg, 'P', srv, strlen(srv) + 1, s->body, s->len, NULL, 0);
	if (!ps_push(c, 'P', PS_SWALLOW, ps_stmt_ref(s), NULL))
		return false;
	ps_spec(c->psc)->srv_add = true;
	c->px->stats.ps_prepared++;
	return true;
}

static char *ps_strdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *d = malloc(n);

	return d ? memcpy(d, s, n) : NULL;
}

/* A client's Parse with a name (body: the whole message's body). */
static bool ps_on_parse(struct conn *c, const uint8_t *body, size_t len, size_t namelen)
{
	struct ps_client *pc = c->psc;
	const char *name = (const char *)body;
	const uint8_t *rest = body + namelen + 1;
	size_t restlen = len - namelen - 1;
	char srv[PS_NAME_MAX];
	struct ps_name *have = ps_name_find(pc, name);
	char *dup = ps_strdup(name);

	if (!dup)
		return false;
	if (have) { /* PostgreSQL's own 42P05, from the server: a Parse of a name it has, in the same place */
		struct ps_stmt *s = have->stmt;
		if (!ps_ensure(c, s)) {
			free(dup);
			return false;
		}
		/* The new text under the name the server has: a syntax error comes first, as in PostgreSQL. */
		ps_srv_name(s, srv);
		ps_put_msg(pc->msg, 'P', srv, strlen(srv) + 1, rest, restlen, NULL, 0);
		return ps_push(c, 'P', PS_DUP, ps_stmt_ref(s), dup);
	}
	struct ps_stmt *s = ps_stmt_get(c->px, rest, restlen);
	if (!s || !ps_name_add(pc, name, s)) {
		ps_stmt_put(s);
		free(dup);
		return false;
	}
	struct ps_slot *slot = ps_server_find(c->pss, s);
	if (slot && c->tx.status == 'E' && pc->count == 0) {
		/* In a failed transaction PostgreSQL refuses a Parse (25P02): the server says so, and the name
		 * goes again (ps_undo()); pglane's name exists there, so it cannot succeed by mistake. */
		ps_srv_name(s, srv);
		ps_put_msg(pc->msg, 'P', srv, strlen(srv) + 1, rest, restlen, NULL, 0);
		if (!ps_push(c, 'P', PS_FORWARD, s, dup))
			return false;
		ps_spec(pc);
		return true;
	}
	if (slot) { /* prepared on this connection already: pglane answers */
		slot->used = ++c->pss->clock;
		if (!ps_push(c, 'P', PS_SYNTH, s, dup))
			return false;
		ps_spec(pc);
		ps_answer_head(c); /* (c closed: ps_feed() stops) */
		return true;
	}
	if (!ps_make_room(c) || !ps_server_add(c->pss, s)) {
		ps_stmt_put(s);
		free(dup);
		return false;
	}
	ps_srv_name(s, srv);
	ps_put_msg(pc->msg, 'P', srv, strlen(srv) + 1, rest, restlen, NULL, 0);
	if (!ps_push(c, 'P', PS_FORWARD, s, dup))
		return false;
	ps_spec(pc)->srv_add = true;
	c->px->stats.ps_prepared++;
	return true;
}

enum ps_fate { PS_NOMEM, PS_PASS, PS_REPLACED };

/* One whole Parse, Bind, Describe or Close (msg: header and body): sent as it is (PS_PASS), or replaced by
 * what pc->msg holds (PS_REPLACED; nothing when pglane answers it). */
static enum ps_fate ps_on_message(struct conn *c, const uint8_t *msg, size_t total)
{
	struct ps_client *pc = c->psc;
	uint8_t type = msg[0];
	const uint8_t *body = msg + 5;
	size_t len = total - 5;
	char srv[PS_NAME_MAX];
	const uint8_t *nul;

	if (pc->skipping) /* the server ignores it: so does pglane */
		return PS_PASS;
	switch (type) {
	case 'P':
		if (len > 0 && body[0] != 0 && (nul = memchr(body, 0, len)))
			return ps_on_parse(c, body, len, (size_t)(nul - body)) ? PS_REPLACED : PS_NOMEM;
		break;
	case 'B': {
		const uint8_t *end = body + len, *pnul = memchr(body, 0, len), *sname, *snul;
		if (!pnul || (sname = pnul + 1) >= end || !(snul = memchr(sname, 0, (size_t)(end - sname))) || snul == sname)
			break; /* malformed (the server says so) or the unnamed statement */
		struct ps_name *n = ps_name_find(pc, (const char *)sname);
		if (!n) /* not the client's: the server answers 26000, as PostgreSQL would */
			break;
		if (!ps_ensure(c, n->stmt))
			return PS_NOMEM;
		ps_srv_name(n->stmt, srv);
		ps_put_msg(pc->msg, 'B', body, (size_t)(sname - body), srv, strlen(srv) + 1, snul + 1,
			   (size_t)(end - snul - 1));
		return ps_push(c, 'B', PS_FORWARD, NULL, NULL) ? PS_REPLACED : PS_NOMEM;
	}
	case 'D':
		if (len >= 2 && body[0] == 'S' && body[1] != 0 && memchr(body + 1, 0, len - 1)) {
			struct ps_name *n = ps_name_find(pc, (const char *)body + 1);
			if (!n)
				break;
			if (!ps_ensure(c, n->stmt))
				return PS_NOMEM;
			ps_srv_name(n->stmt, srv);
			ps_put_msg(pc->msg, 'D', "S", 1, srv, strlen(srv) + 1, NULL, 0);
			return ps_push(c, 'D', PS_FORWARD, NULL, NULL) ? PS_REPLACED : PS_NOMEM;
		}
		break;
	case 'C':
		if (len >= 2 && body[0] == 'S' && body[1] != 0 && memchr(body + 1, 0, len - 1)) {
			/* The server keeps pglane's statement for whoever prepares it next; the name goes now, so
			 * that a Bind behind it finds none (26000), and comes back should the server skip this. */
			const char *name = (const char *)body + 1;
			struct ps_name *n = ps_name_find(pc, name);
			char *dup = n ? ps_strdup(name) : NULL;
			struct ps_stmt *s = n ? ps_stmt_ref(n->stmt) : NULL;
			if (n && !dup) {
				ps_stmt_put(s);
				return PS_NOMEM;
			}
			if (n)
				ps_name_del(pc, name);
			if (!ps_push(c, 'C', PS_SYNTH, s, dup))
				return PS_NOMEM;
			if (n)
				ps_spec(pc);
			ps_answer_head(c); /* (c closed: ps_feed() stops) */
			return PS_REPLACED;
		}
		break;
	}
	return ps_push(c, type, PS_FORWARD, NULL, NULL) ? PS_PASS : PS_NOMEM;
}

/* A message the client streams (anything but Parse, Bind, Describe, Close) begins. */
static bool ps_on_stream_header(struct conn *c, uint8_t type)
{
	struct ps_client *pc = c->psc;

	pc->qhave = 0;
	pc->qdone = false;
	switch (type) {
	case 'S': /* Sync: the server answers again (but not during COPY FROM STDIN, which ignores it) */
		if (pc->copy_in) {
			c->tx.owed -= c->tx.owed > 0;
			return true;
		}
		pc->skipping = false;
		return ps_push(c, type, PS_FORWARD, NULL, NULL);
	case 'c': /* CopyDone, CopyFail */
	case 'f':
		pc->copy_in = false;
		return true;
	case 'D': /* (too long to be gathered) */
	case 'C':
	case 'E': /* Execute */
	case 'Q': /* Query */
	case 'F': /* FunctionCall */
		if (pc->skipping) { /* ignored by the server: no ReadyForQuery for a Query either */
			if (type == 'Q' || type == 'F')
				c->tx.owed -= c->tx.owed > 0;
			return true;
		}
		return ps_push(c, type, PS_FORWARD, NULL, NULL);
	default: /* Flush, CopyData, CopyDone, CopyFail, Terminate: no answer of their own */
		return true;
	}
}

/* The next word of a Query's first bytes at *i (letters, digits, '_'), lowercased into w. */
static void ps_word(const struct ps_client *pc, size_t *i, char *w, size_t wlen)
{
	size_t k = 0;

	while (*i < pc->qhave && strchr(" \t\r\n", pc->qtext[*i]))
		(*i)++;
	while (*i < pc->qhave && k + 1 < wlen &&
	       ((pc->qtext[*i] >= 'a' && pc->qtext[*i] <= 'z') || (pc->qtext[*i] >= 'A' && pc->qtext[*i] <= 'Z') ||
		(pc->qtext[*i] >= '0' && pc->qtext[*i] <= '9') || pc->qtext[*i] == '_'))
	{
		uint8_t ch = pc->qtext[(*i)++];
		w[k++] = (char)(ch >= 'A' && ch <= 'Z' ? ch | 0x20 : ch);
	}
	w[k] = 0;
}

/* A Query's first bytes, once known (once per Query).  DISCARD ALL and DEALLOCATE ALL drop every prepared
 * statement when they run, which pglane learns from their CommandComplete (ps_on_tag()); what the client
 * sends behind such a Query is decided once it has been answered, as behind a Sync (ps_must_wait()). */
static void ps_on_query_text(struct conn *c)
{
	struct ps_client *pc = c->psc;
	char w1[16], w2[16];
	size_t i = 0;

	pc->qdone = true;
	ps_word(pc, &i, w1, sizeof(w1));
	ps_word(pc, &i, w2, sizeof(w2));
	if (strcmp(w1, "discard") != 0 && strcmp(w1, "deallocate") != 0)
		return;
	struct ps_req *r = ps_last(pc);
	if (pc->skipping || !r || r->type != 'Q')
		return; /* (ignored by the server) */
	ps_spec(pc);
	pc->batch++; /* what follows waits for it */
	pc->nspec_open = 0;
}

/* A CommandComplete's tag: DISCARD ALL and DEALLOCATE ALL have dropped every prepared statement, the
 * client's and the connection's; a DEALLOCATE of one name may have dropped one of pglane's (a client may
 * name them): the connection is reset (DISCARD ALL) before another session gets it. */
static void ps_on_tag(struct conn *c, const char *tag)
{
	struct ps_client *pc = c->psc;
	struct ps_server *ss = c->pss;

	if (!ss)
		return;
	if (strcmp(tag, "DEALLOCATE") == 0) {
		ss->tainted = true;
		return;
	}
	if (strcmp(tag, "DISCARD ALL") != 0 && strcmp(tag, "DEALLOCATE ALL") != 0)
		return;
	if (pc->names) {
		OPENSSL_LH_doall(pc->names, ps_name_free);
		OPENSSL_LH_free(pc->names);
		pc->names = NULL;
	}
	for (unsigned k = 0; k < ss->n; k++)
		ps_stmt_put(ss->v[k].stmt);
	ss->n = 0;
	ss->tainted = true;
}

/* The client's bytes as read are sent on as they are (one write, no copy) until something in them is not:
 * from then on what goes is gathered in pc->out, the bytes read so far first. */
struct ps_run {
	const uint8_t *from, *to; /* read bytes to send as they are */
	bool copying;             /* pc->out has taken over */
};

static bool ps_copying(struct ps_client *pc, struct ps_run *r)
{
	if (r->copying)
		return true;
	r->copying = true;
	return r->to == r->from || evbuffer_add(pc->out, r->from, (size_t)(r->to - r->from)) == 0;
}

/* k bytes at p, read, go as they are. */
static bool ps_pass(struct ps_client *pc, struct ps_run *r, const uint8_t *p, size_t k)
{
	if (r->copying)
		return evbuffer_add(pc->out, p, k) == 0;
	r->to = p + k; /* (contiguous: anything else since would have set copying) */
	return true;
}

/* What a whole Parse, Bind, Describe or Close becomes; in_place: it lies in the bytes read (pass them),
 * else in pc->part. */
static bool ps_message(struct conn *c, struct ps_run *r, const uint8_t *msg, size_t total, bool in_place)
{
	struct ps_client *pc = c->psc;
	enum ps_fate fate = ps_on_message(c, msg, total);

	if (fate == PS_NOMEM)
		return false;
	if (fate == PS_PASS && in_place)
		return ps_pass(pc, r, msg, total);
	if (!ps_copying(pc, r))
		return false;
	if (fate == PS_PASS)
		return evbuffer_add_buffer(pc->out, pc->part) == 0;
	evbuffer_drain(pc->part, evbuffer_get_length(pc->part));
	return evbuffer_add_buffer(pc->out, pc->msg) == 0;
}

/* Takes the client's n bytes at p up to where they must wait (ps_must_wait()): *used of them. */
static bool ps_feed(struct conn *c, const uint8_t *p, size_t n, size_t *used)
{
	struct ps_client *pc = c->psc;
	struct ps_run r = {p, p, evbuffer_get_length(pc->out) > 0};
	const uint8_t *start = p;

	while (n > 0 && c->state != CONN_CLOSED) {
		if (pc->part_need == 0 && pc->left == 0 && pc->have == 0 && ps_must_wait(pc))
			break; /* at a message's start */
		if (pc->part_need > 0) {
			size_t k = n < pc->part_need ? n : pc->part_need;
			if (evbuffer_add(pc->part, p, k) != 0)
				return false;
			p += k, n -= k;
			pc->part_need -= (uint32_t)k;
			if (pc->part_need > 0)
				continue;
			size_t total = evbuffer_get_length(pc->part);
			uint8_t *msg = evbuffer_pullup(pc->part, -1);
			if (!msg || !ps_message(c, &r, msg, total, false))
				return false;
			continue;
		}
		if (pc->left > 0) {
			size_t k = n < pc->left ? n : pc->left;
			if (pc->type == 'Q' && !pc->qdone && pc->qhave < sizeof(pc->qtext)) {
				size_t q = sizeof(pc->qtext) - pc->qhave;
				q = q < k ? q : k;
				memcpy(pc->qtext + pc->qhave, p, q);
				pc->qhave += (uint8_t)q;
			}
			if (!ps_pass(pc, &r, p, k))
				return false;
			p += k, n -= k;
			pc->left -= (uint32_t)k;
			if (pc->type == 'Q' && !pc->qdone && (pc->left == 0 || pc->qhave == sizeof(pc->qtext)))
				ps_on_query_text(c);
			continue;
		}
		/* A header: whole in the bytes read (the usual case), or gathered across reads. */
		const uint8_t *h = p;
		bool in_place = pc->have == 0 && n >= 5;
		if (!in_place) {
			size_t k = 5 - pc->have;
			k = n < k ? n : k;
			memcpy(pc->hdr + pc->have, p, k);
			pc->have += (uint8_t)k;
			p += k, n -= k;
			if (pc->have < 5) /* (the end of what was read) */
				continue;
			h = pc->hdr;
		}
		pc->have = 0;
		uint32_t len = pg_get_u32(h + 1);
		uint8_t type = h[0];
		if (len < 4) { /* not the protocol: the server ends the session; pglane stops following */
			c->tx.lost = true;
			if (!ps_copying(pc, &r) || evbuffer_add(pc->out, h, 5) != 0 ||
			    evbuffer_add(pc->out, in_place ? p + 5 : p, in_place ? n - 5 : n) != 0)
				return false;
			p += n, n = 0;
			break;
		}
		/* (a Describe or Close past PostgreSQL's 10000 bytes for them streams: the server refuses it) */
		if (type == 'P' || type == 'B' || ((type == 'D' || type == 'C') && len <= 10000)) {
			if (in_place && n >= (size_t)len + 1) { /* whole where it was read */
				if (!ps_message(c, &r, p, (size_t)len + 1, true))
					return false;
				p += (size_t)len + 1, n -= (size_t)len + 1;
				continue;
			}
			if (evbuffer_add(pc->part, h, 5) != 0)
				return false;
			if (in_place)
				p += 5, n -= 5;
			pc->part_need = len - 4; /* (not 0: a message of 4 bytes is whole where it was read) */
			if (pc->part_need == 0) {
				uint8_t *msg = evbuffer_pullup(pc->part, -1);
				if (!msg || !ps_message(c, &r, msg, 5, false))
					return false;
			}
			continue;
		}
		pc->type = type;
		pc->left = len - 4;
		if (in_place) {
			if (!ps_pass(pc, &r, p, 5))
				return false;
			p += 5, n -= 5;
		} else if (!ps_copying(pc, &r) || evbuffer_add(pc->out, pc->hdr, 5) != 0) {
			return false;
		}
		if (!ps_on_stream_header(c, type))
			return false;
	}
	*used = (size_t)(p - start);
	if (c->state != CONN_CLOSED && !r.copying && r.to > r.from)
		relay_out(c, false, r.from, (size_t)(r.to - r.from), NULL); /* (failing, it closes c: the caller sees) */
	return true;
}

/* Sends what pc->out gathered. */
static bool ps_flush_out(struct conn *c)
{
	struct ps_client *pc = c->psc;

	return evbuffer_get_length(pc->out) == 0 || relay_out(c, false, NULL, 0, pc->out);
}

/* Takes what waited in the stash, as far as it may go now.  False when c closed. */
static bool ps_refeed(struct conn *c)
{
	struct ps_client *pc = c->psc;

	while (c->state != CONN_CLOSED && evbuffer_get_length(pc->stash) > 0 && !ps_must_wait(pc)) {
		size_t len = evbuffer_get_length(pc->stash), used = 0;
		uint8_t *p = evbuffer_pullup(pc->stash, -1);
		if (!p || !ps_feed(c, p, len, &used)) {
			if (c->state != CONN_CLOSED)
				conn_close(c, "out of memory");
			return false;
		}
		evbuffer_drain(pc->stash, used);
		if (used == 0)
			break;
	}
	return c->state != CONN_CLOSED && ps_flush_out(c);
}

/* The session's state, made at its first bytes (an idle client that has sent nothing holds none). */
static bool ps_ready(struct conn *c)
{
	if ((!c->psc && !(c->psc = ps_client_new())) || (!c->pss && !(c->pss = calloc(1, sizeof(*c->pss))))) {
		conn_close(c, "out of memory");
		return false;
	}
	return true;
}

void ps_trim(struct conn *c)
{
	if (c->psc && !ps_busy(c->psc) && ps_client_count(c->psc) == 0 && !c->psc->copy_in && !c->psc->skipping) {
		ps_client_free(c->psc);
		c->psc = NULL;
	}
}

bool ps_to_server(struct conn *c, const uint8_t *p, size_t n, struct evbuffer *buf)
{
	if (!ps_ready(c))
		return false;
	struct ps_client *pc = c->psc;
	bool ok = true;

	if (evbuffer_get_length(pc->stash) > 0) { /* behind what waits */
		ok = (p ? evbuffer_add(pc->stash, p, n) : evbuffer_add_buffer(pc->stash, buf)) == 0;
		if (!ok) {
			conn_close(c, "out of memory");
			return false;
		}
		return ps_refeed(c);
	}
	if (p) {
		size_t used = 0;
		ok = ps_feed(c, p, n, &used) && (used == n || evbuffer_add(pc->stash, p + used, n - used) == 0);
	} else {
		struct evbuffer_iovec v;
		while (ok && c->state != CONN_CLOSED && evbuffer_peek(buf, -1, NULL, &v, 1) > 0 && v.iov_len > 0) {
			size_t used = 0;
			ok = ps_feed(c, v.iov_base, v.iov_len, &used);
			evbuffer_drain(buf, used);
			if (ok && used < v.iov_len) {
				ok = evbuffer_add_buffer(pc->stash, buf) == 0;
				break;
			}
		}
	}
	if (c->state == CONN_CLOSED)
		return false;
	if (!ok) {
		conn_close(c, "out of memory");
		return false;
	}
	return ps_flush_out(c);
}

void ps_release(struct conn *c)
{
	if (!c->psc || evbuffer_get_length(c->psc->stash) == 0)
		return;
	c->psc->force = true;
	ps_refeed(c);
}

/* ---------------------------------------------------------------- the server's messages */

/* Whether a server message of type t completes the answer to request r. */
static bool ps_ends(const struct ps_req *r, uint8_t t)
{
	switch (r->type) {
	case 'P':
		return t == '1';
	case 'B':
		return t == '2';
	case 'C':
		return t == '3';
	case 'D':
		return t == 'T' || t == 'n';
	case 'E':
		return t == 'C' || t == 'I' || t == 's';
	default: /* Sync, Query, FunctionCall */
		return t == 'Z';
	}
}

/* An ErrorResponse for the head request (extended protocol): it fails, and the server skips up to the
 * next Sync. */
static void ps_on_error(struct conn *c)
{
	struct ps_client *pc = c->psc;
	unsigned k = 1; /* the failed request and those behind it up to the next Sync */

	while (k < pc->count && pc->q[(pc->head + k) % pc->cap].type != 'S')
		k++;
	for (unsigned j = k; j-- > 0;) { /* the last first: each undo finds the books as its request left them */
		struct ps_req *r = &pc->q[(pc->head + j) % pc->cap];
		ps_undo(c, r);
		if (j > 0 && (r->type == 'Q' || r->type == 'F')) /* skipped: no ReadyForQuery of its own */
			c->tx.owed -= c->tx.owed > 0;
	}
	for (unsigned j = 0; j < k; j++)
		ps_pop(pc);
	pc->skipping = pc->count == 0;
	pc->copy_in = false; /* (a COPY FROM STDIN that failed has ended) */
}

/* COPY FROM STDIN began (CopyInResponse): the server ignores Sync until the client's CopyDone or CopyFail,
 * so the Syncs the client sent behind the Execute get no ReadyForQuery. */
static void ps_on_copy_in(struct conn *c)
{
	struct ps_client *pc = c->psc;
	unsigned kept = 1;

	pc->copy_in = true;
	for (unsigned j = 1; j < pc->count; j++) {
		struct ps_req *r = &pc->q[(pc->head + j) % pc->cap];
		if (r->type == 'S') {
			c->tx.owed -= c->tx.owed > 0;
			ps_req_clear(r);
			continue;
		}
		pc->q[(pc->head + kept++) % pc->cap] = *r;
	}
	pc->count = kept;
}

/* The error a duplicate Parse met (in pc->serr): PostgreSQL's 42P05 names the client's statement; any
 * other (a syntax error in the new text, which PostgreSQL reports first) goes as the server said it. */
static bool ps_dup_error(struct conn *c, const char *name)
{
	struct ps_client *pc = c->psc;
	size_t len = evbuffer_get_length(pc->serr);
	uint8_t *m = evbuffer_pullup(pc->serr, -1);
	const char *code = m && len > 5 ? pg_error_field(m + 5, len - 5, 'C') : NULL;
	struct pgbuf b = {0};
	char msg[256];
	bool ok;

	if (!code || strcmp(code, "42P05") != 0) {
		ok = relay_out(c, true, NULL, 0, pc->serr);
		evbuffer_drain(pc->serr, evbuffer_get_length(pc->serr));
		return ok;
	}
	evbuffer_drain(pc->serr, len);
	snprintf(msg, sizeof(msg), "prepared statement \"%s\" already exists", name);
	pg_put_error(&b, "ERROR", "42P05", msg, NULL, NULL);
	ok = !b.oom && relay_out(c, true, b.data, b.len, NULL);
	pgbuf_free(&b);
	if (!ok && c->state != CONN_CLOSED)
		conn_close(c, "out of memory");
	return ok;
}

/* A server message's header: whether it goes to the client. */
static bool ps_server_header(struct conn *c, uint8_t t)
{
	struct ps_req *r = ps_head(c->psc);

	if (!r || t == 'N' || t == 'A' || t == 'S')
		return true; /* notices, notifications, parameters: whenever they come */
	if (t == 'E')
		return r->how != PS_DUP;
	return !(r->how == PS_SWALLOW && ps_ends(r, t));
}

/* A server message has been read whole (dropped or forwarded): the queue moves on.  False when c closed. */
static bool ps_server_message_end(struct conn *c, uint8_t t)
{
	struct ps_client *pc = c->psc;
	struct ps_req *r = ps_head(pc);

	if (t == 'C' && pc->stag_have > 0 && memchr(pc->stag, 0, pc->stag_have))
		ps_on_tag(c, pc->stag);
	if (!r || t == 'N' || t == 'A' || t == 'S')
		return true;
	if (t == 'G' && (r->type == 'E' || r->type == 'Q')) {
		ps_on_copy_in(c);
		return true;
	}
	if (t == 'E') {
		if (r->type == 'S' || r->type == 'Q' || r->type == 'F')
			return true; /* its ReadyForQuery still comes */
		if (r->how == PS_DUP) {
			char *name = r->name;
			r->name = NULL;
			ps_on_error(c);
			bool ok = ps_dup_error(c, name);
			free(name);
			return ok && ps_answer_head(c);
		}
		ps_on_error(c);
		return ps_answer_head(c);
	}
	if (!ps_ends(r, t)) {
		if (t == 'Z' || t == '1' || t == '2' || t == '3') {
			conn_close(c, "transaction pooling lost track of the server's answers");
			return false;
		}
		return true;
	}
	if (r->how == PS_DUP) { /* the server had not the statement: it has the client's new text under its name */
		conn_close(c, "transaction pooling lost track of the server's prepared statements");
		return false;
	}
	ps_pop(pc);
	return ps_answer_head(c);
}

/* Whether the end of a server message of type t makes pglane write to the client (an answer of its own, an
 * error in place of the server's): the bytes forwarded so far must go first. */
static bool ps_end_writes(struct ps_client *pc, uint8_t t)
{
	struct ps_req *r = ps_head(pc);

	if (!r || t == 'N' || t == 'A' || t == 'S')
		return false;
	if (t == 'E')
		return true;
	if (!ps_ends(r, t))
		return false;
	return r->how == PS_DUP || (pc->count > 1 && pc->q[(pc->head + 1) % pc->cap].how == PS_SYNTH);
}

static bool ps_flush_run(struct conn *c, const uint8_t *from, const uint8_t *to)
{
	return from == to || relay_out(c, true, from, (size_t)(to - from), NULL);
}

/* A server message ends at p: the queue moves on, after the bytes before p when pglane writes too. */
static bool ps_message_done(struct conn *c, const uint8_t **run, const uint8_t *p)
{
	if (!ps_end_writes(c->psc, c->psc->stype))
		return ps_server_message_end(c, c->psc->stype);
	if (!ps_flush_run(c, *run, p))
		return false;
	*run = p;
	return ps_server_message_end(c, c->psc->stype);
}

static bool ps_from_server_bytes(struct conn *c, const uint8_t *p, size_t n)
{
	struct ps_client *pc = c->psc;
	const uint8_t *run = p; /* forwarded bytes not yet written: one write for many messages */

	while (n > 0) {
		if (pc->sleft > 0) {
			size_t k = n < pc->sleft ? n : pc->sleft;
			if (pc->sdrop) {
				if (!ps_flush_run(c, run, p))
					return false;
				if (pc->skeep && evbuffer_add(pc->serr, p, k) != 0) {
					conn_close(c, "out of memory");
					return false;
				}
				run = p + k;
			}
			if (pc->stype == 'C' && pc->stag_have < sizeof(pc->stag)) {
				size_t t = sizeof(pc->stag) - pc->stag_have;
				t = t < k ? t : k;
				memcpy(pc->stag + pc->stag_have, p, t);
				pc->stag_have += (uint8_t)t;
			}
			p += k, n -= k;
			pc->sleft -= (uint32_t)k;
			if (pc->sleft == 0 && !ps_message_done(c, &run, p))
				return false;
			continue;
		}
		bool in_place = pc->shave == 0 && n >= 5;
		const uint8_t *h = p;
		if (!in_place) {
			if (pc->shave == 0) { /* a header split between reads: held until whole */
				if (!ps_flush_run(c, run, p))
					return false;
			}
			size_t k = 5 - pc->shave;
			k = n < k ? n : k;
			memcpy(pc->shdr + pc->shave, p, k);
			pc->shave += (uint8_t)k;
			p += k, n -= k;
			run = p;
			if (pc->shave < 5)
				continue;
			h = pc->shdr;
		}
		pc->shave = 0;
		uint32_t len = pg_get_u32(h + 1);
		if (len < 4) {
			conn_close(c, "the server broke the protocol");
			return false;
		}
		pc->stype = h[0];
		pc->stag_have = 0;
		pc->sdrop = !ps_server_header(c, pc->stype);
		pc->skeep = pc->sdrop && pc->stype == 'E'; /* (a duplicate Parse's) */
		pc->sleft = len - 4;
		if (pc->skeep && evbuffer_add(pc->serr, h, 5) != 0) {
			conn_close(c, "out of memory");
			return false;
		}
		if (in_place) {
			if (pc->sdrop) {
				if (!ps_flush_run(c, run, p))
					return false;
				run = p + 5;
			}
			p += 5, n -= 5;
		} else if (!pc->sdrop && !relay_out(c, true, pc->shdr, 5, NULL)) {
			return false;
		}
		if (pc->sleft == 0 && !ps_message_done(c, &run, p))
			return false;
	}
	return ps_flush_run(c, run, p);
}

bool ps_from_server(struct conn *c, const uint8_t *p, size_t n, struct evbuffer *buf)
{
	if (!ps_ready(c))
		return false;
	if (p) {
		if (!ps_from_server_bytes(c, p, n))
			return false;
	} else {
		struct evbuffer_iovec v;
		while (c->state != CONN_CLOSED && evbuffer_peek(buf, -1, NULL, &v, 1) > 0 && v.iov_len > 0) {
			if (!ps_from_server_bytes(c, v.iov_base, v.iov_len))
				return false;
			evbuffer_drain(buf, v.iov_len);
		}
	}
	/* Answers that settle what the client's waiting bytes depend on: they go on (after every byte of the
	 * server's forwarded above, for pglane may answer some of them itself). */
	return c->state != CONN_CLOSED && ps_refeed(c);
}
