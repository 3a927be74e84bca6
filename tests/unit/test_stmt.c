/*
 * Unit tests for proxy/stmt.c: named prepared statements under transaction pooling.
 *
 * A small model of PostgreSQL's extended query protocol (struct sim: named statements, the unnamed one,
 * portals, errors that skip to the next Sync) stands for the server.  Each scenario is a client's script
 * of transactions.  Run directly against one model server, the script gives the answers PostgreSQL would
 * give; run through stmt.c, each transaction on whichever of two model servers the pool hands out (so
 * statements must follow the client), with the client's and the servers' bytes cut at random places and
 * interleaved at random, the client must read the very same bytes, and stmt.c must end each transaction
 * with nothing under way.  Scripts are drawn from a fixed seed (a table of hand-written ones first).
 *
 * relay_out() and conn_close() are this file's: stmt.o takes them from here, not from relay.o and conn.o.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <openssl/lhash.h>

#include "proxy/proxy.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* ---------------------------------------------------------------- what stmt.c writes */

static struct evbuffer *to_client, *to_server;

bool relay_out(struct conn *c, bool client, const uint8_t *p, size_t n, struct evbuffer *buf)
{
	struct evbuffer *dst = client ? to_client : to_server;

	if (p)
		evbuffer_add(dst, p, n);
	else
		evbuffer_add_buffer(dst, buf);
	return true;
}

void conn_close(struct conn *c, const char *reason)
{
	fail_msg("stmt.c closed the session: %s", reason);
}

/* ---------------------------------------------------------------- a model of PostgreSQL */

#define SIM_MAX 64
struct sim {
	char *name[SIM_MAX], *text[SIM_MAX]; /* prepared statements ("" the unnamed one) */
	char *portal_text;                   /* the unnamed portal's statement text, NULL when none */
	bool skipping;                       /* an error: everything up to the next Sync is ignored */
	struct evbuffer *in, *out;
};

static void sim_init(struct sim *s)
{
	memset(s, 0, sizeof(*s));
	s->in = evbuffer_new();
	s->out = evbuffer_new();
}

static void sim_free(struct sim *s)
{
	for (int i = 0; i < SIM_MAX; i++)
		free(s->name[i]), free(s->text[i]);
	free(s->portal_text);
	evbuffer_free(s->in);
	evbuffer_free(s->out);
}

static int sim_find(struct sim *s, const char *name)
{
	for (int i = 0; i < SIM_MAX; i++)
		if (s->name[i] && strcmp(s->name[i], name) == 0)
			return i;
	return -1;
}

static void sim_drop(struct sim *s, int i)
{
	free(s->name[i]), free(s->text[i]);
	s->name[i] = s->text[i] = NULL;
}

static void put(struct evbuffer *b, uint8_t type, const void *body, size_t len)
{
	uint8_t h[5] = {type, (uint8_t)((len + 4) >> 24), (uint8_t)((len + 4) >> 16), (uint8_t)((len + 4) >> 8),
			(uint8_t)(len + 4)};
	evbuffer_add(b, h, 5);
	evbuffer_add(b, body, len);
}

static void sim_error(struct sim *s, const char *code, const char *fmt, const char *arg, bool extended)
{
	struct pgbuf b = {0};
	char msg[256];

	snprintf(msg, sizeof(msg), fmt, arg);
	pg_put_error(&b, "ERROR", code, msg, NULL, NULL);
	evbuffer_add(s->out, b.data, b.len);
	pgbuf_free(&b);
	s->skipping = extended;
}

/* Runs every whole message the model has received. */
static void sim_run(struct sim *s)
{
	for (;;) {
		uint8_t h[5];
		if (evbuffer_copyout(s->in, h, 5) < 5)
			return;
		size_t total = 1 + pg_get_u32(h + 1);
		if (evbuffer_get_length(s->in) < total)
			return;
		uint8_t *m = evbuffer_pullup(s->in, (ev_ssize_t)total);
		const char *a = (const char *)m + 5, *b = total > 5 ? a + strlen(a) + 1 : a; /* (bodies: strings) */
		if (s->skipping && m[0] != 'S') {
			evbuffer_drain(s->in, total);
			continue;
		}
		int i = -1;
		switch (m[0]) {
		case 'P': /* name, text: the text is checked first, then the name */
			if (strcmp(b, "ERR") == 0) {
				sim_error(s, "42601", "syntax error at or near \"%s\"", "ERR", true);
			} else if (a[0] && sim_find(s, a) >= 0) {
				sim_error(s, "42P05", "prepared statement \"%s\" already exists", a, true);
			} else {
				if ((i = sim_find(s, a)) >= 0) /* the unnamed one is replaced */
					sim_drop(s, i);
				for (i = 0; i < SIM_MAX && s->name[i]; i++)
					;
				assert_true(i < SIM_MAX);
				s->name[i] = strdup(a), s->text[i] = strdup(b);
				put(s->out, '1', "", 0);
			}
			break;
		case 'B': /* portal "", statement */
			if ((i = sim_find(s, b)) < 0) {
				sim_error(s, "26000", "prepared statement \"%s\" does not exist", b, true);
			} else {
				free(s->portal_text);
				s->portal_text = strdup(s->text[i]);
				put(s->out, '2', "", 0);
			}
			break;
		case 'D': /* 'S' name or 'P' portal */
			if (a[0] == 'S' && (i = sim_find(s, a + 1)) < 0)
				sim_error(s, "26000", "prepared statement \"%s\" does not exist", a + 1, true);
			else if (a[0] == 'S')
				put(s->out, 't', "\0\0", 2), put(s->out, 'T', s->text[i], strlen(s->text[i]) + 1);
			else if (!s->portal_text)
				sim_error(s, "34000", "portal \"%s\" does not exist", "", true);
			else
				put(s->out, 'T', s->portal_text, strlen(s->portal_text) + 1);
			break;
		case 'E':
			if (!s->portal_text) {
				sim_error(s, "34000", "portal \"%s\" does not exist", "", true);
			} else if (strcmp(s->portal_text, "FAIL") == 0) {
				sim_error(s, "22012", "division by zero%s", "", true);
			} else {
				put(s->out, 'D', s->portal_text, strlen(s->portal_text) + 1);
				put(s->out, 'C', "SELECT 1", 9);
			}
			break;
		case 'C': /* 'S' name: closing what does not exist is no error */
			if (a[0] == 'S' && (i = sim_find(s, a + 1)) >= 0)
				sim_drop(s, i);
			put(s->out, '3', "", 0);
			break;
		case 'S': /* the implicit transaction ends, and the unnamed portal with it; the unnamed statement
			   * outlives it in PostgreSQL, not under transaction pooling (README: Limits): the model
			   * drops it too, so that scripts compare what pglane promises */
			s->skipping = false;
			free(s->portal_text);
			s->portal_text = NULL;
			if ((i = sim_find(s, "")) >= 0)
				sim_drop(s, i);
			put(s->out, 'Z', "I", 1);
			break;
		case 'Q': /* a simple Query drops the unnamed statement */
			if ((i = sim_find(s, "")) >= 0)
				sim_drop(s, i);
			if (strcmp(a, "DISCARD ALL") == 0) {
				for (i = 0; i < SIM_MAX; i++)
					if (s->name[i])
						sim_drop(s, i);
				put(s->out, 'C', "DISCARD ALL", 12);
			} else {
				put(s->out, 'T', a, strlen(a) + 1), put(s->out, 'D', a, strlen(a) + 1), put(s->out, 'C', "SELECT 1", 9);
			}
			put(s->out, 'Z', "I", 1);
			break;
		case 'H':
			break;
		default:
			fail_msg("the model got a message '%c'", m[0]);
		}
		evbuffer_drain(s->in, total);
	}
}

/* ---------------------------------------------------------------- client scripts */

/* Message builders into b. */
static void m_parse(struct evbuffer *b, const char *name, const char *text)
{
	struct pgbuf p = {0};
	pgbuf_put_str(&p, name);
	pgbuf_put_str(&p, text);
	pgbuf_put(&p, "\0", 2); /* no parameter types */
	put(b, 'P', p.data, p.len);
	pgbuf_free(&p);
}

static void m_bind(struct evbuffer *b, const char *name)
{
	struct pgbuf p = {0};
	pgbuf_put_str(&p, "");
	pgbuf_put_str(&p, name);
	pgbuf_put(&p, "\0\0\0\0\0\0", 6); /* no formats, parameters, result formats */
	put(b, 'B', p.data, p.len);
	pgbuf_free(&p);
}

static void m_named(struct evbuffer *b, uint8_t type, char kind, const char *name)
{
	struct pgbuf p = {0};
	pgbuf_put_u8(&p, (uint8_t)kind);
	pgbuf_put_str(&p, name);
	put(b, type, p.data, p.len);
	pgbuf_free(&p);
}

/*
 * A script: transactions separated by '|', messages by ';':
 *   P name text   B name   DS name   DP   E   CS name   H   S   Q text   (a Sync ends each transaction)
 * "-" stands for the empty name.
 */
static int script_parse(const char *script, struct evbuffer **tx, int max)
{
	char *copy = strdup(script), *save1 = NULL;
	int n = 0;

	for (char *t = strtok_r(copy, "|", &save1); t && n < max; t = strtok_r(NULL, "|", &save1), n++) {
		tx[n] = evbuffer_new();
		char *save2 = NULL;
		for (char *m = strtok_r(t, ";", &save2); m; m = strtok_r(NULL, ";", &save2)) {
			char op[4] = "", x[64] = "", y[64] = "";
			sscanf(m, " %3s %63s %63[^;]", op, x, y);
			for (size_t k = strlen(y); k > 0 && y[k - 1] == ' '; k--)
				y[k - 1] = 0;
			const char *name = strcmp(x, "-") == 0 ? "" : x;
			if (strcmp(op, "P") == 0)
				m_parse(tx[n], name, y);
			else if (strcmp(op, "B") == 0)
				m_bind(tx[n], name);
			else if (strcmp(op, "DS") == 0)
				m_named(tx[n], 'D', 'S', name);
			else if (strcmp(op, "DP") == 0)
				m_named(tx[n], 'D', 'P', "");
			else if (strcmp(op, "E") == 0)
				put(tx[n], 'E', "\0\0\0\0", 5);
			else if (strcmp(op, "CS") == 0)
				m_named(tx[n], 'C', 'S', name);
			else if (strcmp(op, "H") == 0)
				put(tx[n], 'H', "", 0);
			else if (strcmp(op, "S") == 0) /* a Sync inside: pipelined, on the same server connection */
				put(tx[n], 'S', "", 0);
			else if (strcmp(op, "Q") == 0) {
				char q[130];
				snprintf(q, sizeof(q), "%s%s%s", x, y[0] ? " " : "", y);
				put(tx[n], 'Q', q, strlen(q) + 1);
			} else
				fail_msg("bad script step '%s'", m);
		}
		put(tx[n], 'S', "", 0);
	}
	free(copy);
	return n;
}

/* What the client reads when it talks to one model server directly. */
static struct evbuffer *run_direct(struct evbuffer **tx, int n)
{
	struct sim s;
	struct evbuffer *seen = evbuffer_new();

	sim_init(&s);
	for (int i = 0; i < n; i++) {
		struct evbuffer *copy = evbuffer_new();
		evbuffer_add(copy, evbuffer_pullup(tx[i], -1), evbuffer_get_length(tx[i]));
		evbuffer_add_buffer(s.in, copy);
		evbuffer_free(copy);
		sim_run(&s);
		evbuffer_add_buffer(seen, s.out);
	}
	sim_free(&s);
	return seen;
}

static unsigned rnd_state;
static unsigned rnd(unsigned n)
{
	rnd_state = rnd_state * 1103515245u + 12345u;
	return (rnd_state >> 16) % n;
}

/* Moves up to max bytes (at least one) from src through f. */
static void feed(struct conn *c, struct evbuffer *src, bool client, size_t max)
{
	size_t len = evbuffer_get_length(src), k = 1 + rnd((unsigned)(max < len ? max : len));
	uint8_t *chunk = malloc(k);

	evbuffer_remove(src, chunk, k);
	assert_true(client ? ps_to_server(c, chunk, k, NULL) : ps_from_server(c, chunk, k, NULL));
	free(chunk);
}

/* What the client reads through stmt.c: transactions on the pool's two model servers, bytes cut and
 * interleaved at random (cut: largest piece; 0 for whole buffers at once). */
static struct evbuffer *run_pooled(struct evbuffer **tx, int n, int max_statements, size_t cut, unsigned seed)
{
	static struct proxy px;
	static struct conf conf;
	static struct snapshot snap;
	struct conn *c = calloc(1, sizeof(*c));
	struct sim srv[2];
	struct ps_server *pss[2] = {NULL, NULL};
	struct evbuffer *seen = evbuffer_new(), *pending_client = evbuffer_new();

	memset(&px, 0, sizeof(px));
	conf.max_prepared_statements = max_statements;
	snap.conf = &conf;
	c->px = &px;
	c->snap = &snap;
	c->state = CONN_RELAY;
	c->psc = ps_client_new();
	assert_non_null(c->psc);
	rnd_state = seed;
	sim_init(&srv[0]);
	sim_init(&srv[1]);
	for (int i = 0; i < n; i++) {
		int k = (int)rnd(2); /* the pool hands out either */
		c->pss = pss[k];
		pss[k] = NULL;
		struct sim *s = &srv[k];
		evbuffer_add(pending_client, evbuffer_pullup(tx[i], -1), evbuffer_get_length(tx[i]));
		/* Until the transaction's bytes are all sent and all answered: one step at a time, at random. */
		while (evbuffer_get_length(pending_client) > 0 || evbuffer_get_length(to_server) > 0 ||
		       evbuffer_get_length(s->out) > 0) {
			unsigned pick = rnd(3);
			if (pick == 0 && evbuffer_get_length(pending_client) > 0) {
				if (cut)
					feed(c, pending_client, true, cut);
				else
					assert_true(ps_to_server(c, NULL, 0, pending_client));
			} else if (pick == 1 && evbuffer_get_length(to_server) > 0) {
				evbuffer_add_buffer(s->in, to_server);
				sim_run(s);
			} else if (pick == 2 && evbuffer_get_length(s->out) > 0) {
				if (cut)
					feed(c, s->out, false, cut);
				else
					assert_true(ps_from_server(c, NULL, 0, s->out));
			}
		}
		assert_false(ps_busy(c->psc)); /* between transactions: the connection may go back */
		pss[k] = c->pss;
		c->pss = NULL;
		evbuffer_add_buffer(seen, to_client);
	}
	ps_client_free(c->psc);
	ps_server_free(pss[0]);
	ps_server_free(pss[1]);
	assert_int_equal(px.ps_stmts ? OPENSSL_LH_num_items(px.ps_stmts) : 0, 0); /* every reference given back */
	OPENSSL_LH_free(px.ps_stmts);
	sim_free(&srv[0]);
	sim_free(&srv[1]);
	evbuffer_free(pending_client);
	free(c);
	return seen;
}

/* Asserts that script reads the same through stmt.c as directly, whole and cut in many ways. */
static void check_script(const char *script, int max_statements, int tries)
{
	struct evbuffer *tx[64];
	int n = script_parse(script, tx, (int)N(tx));
	struct evbuffer *want = run_direct(tx, n);
	size_t wlen = evbuffer_get_length(want);
	const uint8_t *w = evbuffer_pullup(want, -1);

	for (int t = 0; t < tries; t++) {
		size_t cut = t == 0 ? 0 : t % 3 == 1 ? 1 : 1 + (size_t)(t * 7 % 40);
		struct evbuffer *got = run_pooled(tx, n, max_statements, cut, 1000u + (unsigned)t);
		size_t glen = evbuffer_get_length(got);
		const uint8_t *g = evbuffer_pullup(got, -1);
		if (glen != wlen || (wlen && memcmp(g, w, wlen) != 0)) {
			if (getenv("TEST_STMT_DUMP")) {
				for (int side = 0; side < 2; side++) {
					const uint8_t *q = side ? g : w;
					size_t ql = side ? glen : wlen;
					fprintf(stderr, "%s:", side ? "pglane" : "direct");
					for (size_t o = 0; o + 5 <= ql; o += 1 + pg_get_u32(q + o + 1)) {
						fprintf(stderr, " %c", q[o]);
						if (q[o] == 'E') {
							const char *code = pg_error_field(q + o + 5, pg_get_u32(q + o + 1) - 4, 'M');
							fprintf(stderr, "(%s)", code ? code : "?");
						}
					}
					fprintf(stderr, "\n");
				}
			}
			size_t at = 0;
			while (at < glen && at < wlen && g[at] == w[at])
				at++;
			fail_msg("script \"%s\" (max %d, try %d, cut %zu): the client read %zu bytes, PostgreSQL's answer is "
				 "%zu; they differ at byte %zu ('%c' for '%c')",
				 script, max_statements, t, cut, glen, wlen, at, at < glen ? g[at] : '-', at < wlen ? w[at] : '-');
		}
		evbuffer_free(got);
	}
	evbuffer_free(want);
	for (int i = 0; i < n; i++)
		evbuffer_free(tx[i]);
}

static int setup(void **state)
{
	to_client = evbuffer_new();
	to_server = evbuffer_new();
	return 0;
}

static int teardown(void **state)
{
	evbuffer_free(to_client);
	evbuffer_free(to_server);
	return 0;
}

/* Hand-written scripts: each a case the queue must get right. */
static void test_scripts(void **state)
{
	static const char *const scripts[] = {
	    /* a statement prepared once, executed in later transactions on either server */
	    "P s1 one | B s1; E | B s1; E | B s1; DS s1; E",
	    /* the same text under two names; one name for two texts in turn */
	    "P a same; P b same | B a; E; B b; E | CS a; P a other | B a; E; B b; E",
	    /* a Parse of a name in use: 42P05, and the batch skipped to its Sync */
	    "P s1 one | P s1 two; B s1; E | B s1; E",
	    /* a failing Parse leaves no name; the retry prepares it */
	    "P s1 ERR | B s1; E | P s1 one; B s1; E",
	    /* a duplicate Parse whose new text fails: the syntax error comes first */
	    "P s1 one | P s1 ERR | B s1; E",
	    /* an error in a pipeline: the Parse and Close behind it are skipped, names as they were */
	    "P s1 one | P - FAIL; B -; E; P s2 two; CS s1 | B s1; E; B s2; E",
	    /* unknown names: the server's own 26000, for Bind and Describe */
	    "B nope; E | DS nope | P s1 one; DS s1",
	    /* Close, then a Bind of the closed name in the same batch; Close of a name never prepared */
	    "P s1 one | CS s1; B s1; E | CS never | P s1 again; B s1; E",
	    /* pglane answers (the server has it) between answers the server gives, with Flush */
	    "P a x; P b y | B a; E; P c x; H; B c; E; P d y; B d; E",
	    /* more statements than a connection keeps: closed and prepared again as they are used */
	    "P a 1; P b 2; P c 3; P d 4 | B a; E; B b; E; B c; E; B d; E | B d; E; B a; E; B c; E",
	    /* DISCARD ALL forgets them (simple protocol between) */
	    "P a x | Q SELECT 1 | B a; E | Q DISCARD ALL | B a; E | P a y; B a; E",
	    /* an error before a Sync skips what follows it up to the Sync: what comes after the Sync is
	     * decided on the books as the server left them (pglane waits for that batch's answers) */
	    "B nope; E; P a x; S; B a; E",
	    "P a x | B nope; CS a; S; P a y; B a; E",
	    "P a x; P b y | B nope; E; B a; E; S; B a; E | B a; E",
	    "B nope; Q DISCARD ALL; S; P a x",
	    /* several Syncs in one pipeline, an error between them */
	    "P a x; S; B a; E; S; P b FAIL; B b; E; S; B a; E | B b; E",
	    /* unnamed statements pass as they are */
	    "P - u; B -; E | P s1 one; P - v; B -; DP; E; B s1; E",
	};

	for (size_t i = 0; i < N(scripts); i++) {
		check_script(scripts[i], 200, 12);
		check_script(scripts[i], 2, 12);
	}
}

/* Random scripts over a few names and texts. */
static void test_random_scripts(void **state)
{
	static const char *const names[] = {"a", "b", "c", "d", "-"};
	static const char *const texts[] = {"x", "y", "z", "w", "ERR", "FAIL"};
	char script[2048];
	const char *env = getenv("TEST_STMT_SEEDS"); /* more for a longer hunt; 300 in make test */
	unsigned seeds = env ? (unsigned)strtoul(env, NULL, 10) : 300;

	for (unsigned seed = 1; seed <= seeds; seed++) {
		size_t used = 0;
		rnd_state = seed * 7919u;
		int ntx = 2 + (int)rnd(6);
		for (int t = 0; t < ntx; t++) {
			int nmsg = 1 + (int)rnd(5);
			for (int m = 0; m < nmsg; m++) {
				const char *nm = names[rnd(N(names))];
				char step[96];
				switch (rnd(8)) {
				case 0:
				case 1:
					snprintf(step, sizeof(step), "P %s %s", nm, texts[rnd(N(texts))]);
					break;
				case 2:
				case 3:
					snprintf(step, sizeof(step), "B %s; E", nm);
					break;
				case 4:
					snprintf(step, sizeof(step), "DS %s", nm);
					break;
				case 5:
					snprintf(step, sizeof(step), "CS %s", nm);
					break;
				case 6:
					snprintf(step, sizeof(step), rnd(2) ? "H" : "S");
					break;
				default:
					snprintf(step, sizeof(step), rnd(4) ? "Q SELECT 1" : "Q DISCARD ALL");
				}
				used += (size_t)snprintf(script + used, sizeof(script) - used, "%s%s", m ? "; " : (t ? " | " : ""), step);
			}
		}
		unsigned saved = rnd_state;
		check_script(script, 1 + (int)(seed % 4), 4);
		rnd_state = saved;
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_scripts, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_random_scripts, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
