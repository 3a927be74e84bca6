/*
 * Unit tests of the wire codec: a table of startup packets (good and malformed), message framing,
 * and the builders' bytes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/pgproto.h"

#define MAXP 65536

struct startup_case {
	const char *name;
	const uint8_t *bytes;
	size_t len;
	enum pg_res want;
	uint32_t code;
	size_t nparams;
	const char *err_word; /* for PG_BAD */
};

#define B(...) (const uint8_t[]){__VA_ARGS__}, sizeof((const uint8_t[]){__VA_ARGS__})

static const struct startup_case startup_cases[] = {
    {"ssl request", B(0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f), PG_OK, PG_SSL_REQUEST, 0, NULL},
    {"gssenc request", B(0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30), PG_OK, PG_GSSENC_REQUEST, 0, NULL},
    {"cancel", B(0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 42, 1, 2, 3, 4), PG_OK, PG_CANCEL_REQUEST, 0,
     NULL},
    {"cancel truncated", B(0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 42), PG_NEED_MORE, 0, 0, NULL},
    {"cancel wrong size", B(0, 0, 0, 12, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 42), PG_BAD, 0, 0, "cancel"},
    {"ssl wrong size", B(0, 0, 0, 9, 0x04, 0xd2, 0x16, 0x2f, 0), PG_BAD, 0, 0, "length"},
    {"fewer than 8 bytes", B(0, 0, 0, 8, 0, 3), PG_NEED_MORE, 0, 0, NULL},
    {"length under 8", B(0, 0, 0, 4, 0, 3, 0, 0), PG_BAD, 0, 0, "length"},
    {"length 0", B(0, 0, 0, 0, 0, 3, 0, 0), PG_BAD, 0, 0, "length"},
    {"length over limit", B(0x40, 0, 0, 0, 0, 3, 0, 0), PG_BAD, 0, 0, "length"},
    {"startup user", B(0, 0, 0, 18, 0, 3, 0, 0, 'u', 's', 'e', 'r', 0, 'b', 'o', 'b', 0, 0), PG_OK,
     PG_PROTOCOL_3_0, 1, NULL},
    {"startup truncated", B(0, 0, 0, 18, 0, 3, 0, 0, 'u', 's', 'e', 'r', 0), PG_NEED_MORE, 0, 0, NULL},
    {"no terminator", B(0, 0, 0, 17, 0, 3, 0, 0, 'u', 's', 'e', 'r', 0, 'b', 'o', 'b', 'x'), PG_BAD, 0, 0,
     "terminated"},
    {"name, empty value, no terminator", B(0, 0, 0, 14, 0, 3, 0, 0, 'u', 's', 'e', 'r', 0, 0), PG_BAD, 0, 0, "terminated"},
    {"name at the very end", B(0, 0, 0, 13, 0, 3, 0, 0, 'u', 's', 'e', 'r', 0), PG_BAD, 0, 0, "value"},
    {"pair without terminator", B(0, 0, 0, 17, 0, 3, 0, 0, 'u', 's', 'e', 'r', 0, 'b', 'o', 'b', 0), PG_BAD, 0, 0, "terminated"},
    {"empty value is fine", B(0, 0, 0, 15, 0, 3, 0, 0, 'u', 's', 'e', 'r', 0, 0, 0), PG_OK, PG_PROTOCOL_3_0, 1, NULL},
    {"empty body", B(0, 0, 0, 8, 0, 3, 0, 0), PG_BAD, 0, 0, "terminated"},
    {"only terminator", B(0, 0, 0, 9, 0, 3, 0, 0, 0), PG_OK, PG_PROTOCOL_3_0, 0, NULL},
    {"bytes after terminator", B(0, 0, 0, 12, 0, 3, 0, 0, 0, 'x', 0, 0), PG_BAD, 0, 0, "after"},
    {"duplicate name", B(0, 0, 0, 18, 0, 3, 0, 0, 'a', 0, '1', 0, 'a', 0, '2', 0, 0, 0), PG_BAD, 0, 0,
     "twice"},
    {"protocol 3.2", B(0, 0, 0, 9, 0, 3, 0, 2, 0), PG_OK, 0x30002, 0, NULL},
    {"protocol 2.0 (caller refuses)", B(0, 0, 0, 9, 0, 2, 0, 0, 0), PG_OK, 0x20000, 0, NULL},
};

static void test_startup_table(void **state)
{
	for (size_t i = 0; i < sizeof(startup_cases) / sizeof(startup_cases[0]); i++) {
		const struct startup_case *t = &startup_cases[i];
		struct pg_startup su;
		char err[256] = "";
		enum pg_res r = pg_read_startup(t->bytes, t->len, MAXP, &su, err, sizeof(err));
		if (r != t->want)
			fail_msg("%s: got %d, want %d (%s)", t->name, r, t->want, err);
		if (r == PG_OK) {
			assert_int_equal(su.code, t->code);
			assert_int_equal(su.nparams, t->nparams);
		}
		if (r == PG_BAD && !strstr(err, t->err_word))
			fail_msg("%s: error \"%s\" does not mention \"%s\"", t->name, err, t->err_word);
	}
}

static void test_startup_params(void **state)
{
	static const uint8_t p[] = {0,   0,   0,   41,  0,   3,   0,   0,   'u', 's', 'e', 'r', 0,   'a',
	                            'p', 'p', '-', 'p', 'r', 'e', 'v', 'i', 'e', 'w', 0,   'x', '.', 'y',
	                            0,   'z', 0,   'o', 'p', 't', 'i', 'o', 'n', 's', 0,   0,   0};
	struct pg_startup su;
	char err[128];

	assert_int_equal(pg_read_startup(p, sizeof(p), MAXP, &su, err, sizeof(err)), PG_OK);
	assert_int_equal(su.nparams, 3);
	assert_string_equal(pg_startup_get(&su, "user"), "app-preview");
	assert_string_equal(pg_startup_get(&su, "x.y"), "z");
	assert_string_equal(pg_startup_get(&su, "options"), "");
	assert_null(pg_startup_get(&su, "database"));
}

static void test_cancel_fields(void **state)
{
	static const uint8_t p[] = {0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 1, 0, 0xde, 0xad, 0xbe, 0xef};
	struct pg_startup su;
	char err[128];

	assert_int_equal(pg_read_startup(p, sizeof(p), MAXP, &su, err, sizeof(err)), PG_OK);
	assert_int_equal(su.cancel_pid, 256);
	assert_int_equal(su.cancel_key, 0xdeadbeef);
}

static void test_too_many_params(void **state)
{
	struct pgbuf b = {0};
	char names[PG_STARTUP_MAX_PARAMS + 1][16];
	const char *n[PG_STARTUP_MAX_PARAMS + 1], *v[PG_STARTUP_MAX_PARAMS + 1];
	struct pg_startup su;
	char err[128];

	for (int i = 0; i <= PG_STARTUP_MAX_PARAMS; i++) {
		snprintf(names[i], sizeof(names[i]), "p%d", i);
		n[i] = names[i];
		v[i] = "v";
	}
	pg_put_startup(&b, n, v, PG_STARTUP_MAX_PARAMS);
	assert_int_equal(pg_read_startup(b.data, b.len, MAXP, &su, err, sizeof(err)), PG_OK);
	pgbuf_free(&b);
	pg_put_startup(&b, n, v, PG_STARTUP_MAX_PARAMS + 1);
	assert_int_equal(pg_read_startup(b.data, b.len, MAXP, &su, err, sizeof(err)), PG_BAD);
	pgbuf_free(&b);
}

static void test_msg_framing(void **state)
{
	struct pg_msg m;
	char err[128];
	static const uint8_t z[] = {'Z', 0, 0, 0, 5, 'I', 'X'};
	static const uint8_t short_len[] = {'Q', 0, 0, 0, 3};
	static const uint8_t huge[] = {'Q', 0x7f, 0xff, 0xff, 0xff};

	assert_int_equal(pg_read_msg(z, 4, 100, &m, err, sizeof(err)), PG_NEED_MORE);
	assert_int_equal(pg_read_msg(z, 5, 100, &m, err, sizeof(err)), PG_NEED_MORE);
	assert_int_equal(pg_read_msg(z, sizeof(z), 100, &m, err, sizeof(err)), PG_OK);
	assert_int_equal(m.type, 'Z');
	assert_int_equal(m.body_len, 1);
	assert_int_equal(m.total, 6);
	assert_int_equal(m.body[0], 'I');
	assert_int_equal(pg_read_msg(short_len, sizeof(short_len), 100, &m, err, sizeof(err)), PG_BAD);
	assert_int_equal(pg_read_msg(huge, sizeof(huge), 100, &m, err, sizeof(err)), PG_BAD);
}

static void test_builders(void **state)
{
	struct pgbuf b = {0};
	struct pg_msg m;
	char err[128];

	pg_put_error(&b, "FATAL", "28P01", "password authentication failed", NULL, "a hint");
	assert_int_equal(pg_read_msg(b.data, b.len, 1000, &m, err, sizeof(err)), PG_OK);
	assert_int_equal(m.type, 'E');
	assert_int_equal(m.total, b.len);
	assert_string_equal(pg_error_field(m.body, m.body_len, 'C'), "28P01");
	assert_string_equal(pg_error_field(m.body, m.body_len, 'H'), "a hint");
	assert_null(pg_error_field(m.body, m.body_len, 'D'));
	pgbuf_free(&b);

	pg_put_backend_key(&b, 7, 0xabcdef01);
	static const uint8_t want[] = {'K', 0, 0, 0, 12, 0, 0, 0, 7, 0xab, 0xcd, 0xef, 0x01};
	assert_int_equal(b.len, sizeof(want));
	assert_memory_equal(b.data, want, sizeof(want));
	pgbuf_free(&b);

	pg_put_cancel(&b, 1, 2);
	struct pg_startup su;
	assert_int_equal(pg_read_startup(b.data, b.len, MAXP, &su, err, sizeof(err)), PG_OK);
	assert_int_equal(su.code, PG_CANCEL_REQUEST);
	pgbuf_free(&b);
}

static void test_error_field_unterminated(void **state)
{
	static const uint8_t body[] = {'C', '2', '8'};
	assert_null(pg_error_field(body, sizeof(body), 'C'));
}

/* ---------------------------------------------------------------- transaction pooling's framing */

struct txn_step {
	int side;        /* 0 client, 1 server */
	char type;
	const char *body; /* bytes of the body (NULL: none) */
	size_t blen;
	uint32_t len;    /* the length word when it must be wrong; 0: 4 + blen */
	size_t repeat;   /* send the message this many times (0 = once) */
};
#define C_(t, b) {0, t, b, sizeof(b) - 1, 0, 0}
#define S_(t, b) {1, t, b, sizeof(b) - 1, 0, 0}
#define Z_(st) {1, 'Z', st, 1, 0, 0}
#define END_ {-1, 0, NULL, 0, 0, 0}

struct txn_case {
	const char *name;
	struct txn_step steps[12];
	bool idle;
	uint32_t owed;
	char status;
	bool lost;
	bool pinned;
};

static const struct txn_case txn_cases[] = {
    {"simple query answered", {C_('Q', "SELECT 1\0"), S_('T', "xx"), S_('D', "row"), S_('C', "SELECT 1\0"), Z_("I"), END_},
     true, 0, 'I', false, false},
    {"BEGIN: inside a transaction", {C_('Q', "BEGIN\0"), S_('C', "BEGIN\0"), Z_("T"), END_}, false, 0, 'T', false, false},
    {"failed transaction until ROLLBACK", {C_('Q', "SELECT 1/0\0"), S_('E', "SERROR\0\0"), Z_("E"), END_}, false, 0, 'E', false, false},
    {"two pipelined queries, one answered", {C_('Q', "SELECT 1\0"), C_('Q', "SELECT 2\0"), S_('C', "x\0"), Z_("I"), END_},
     false, 1, 'I', false, false},
    {"two pipelined queries, both answered",
     {C_('Q', "SELECT 1\0"), C_('Q', "SELECT 2\0"), Z_("I"), S_('C', "x\0"), Z_("I"), END_}, true, 0, 'I', false, false},
    {"extended batch without Sync", {C_('P', "\0q\0\0\0"), C_('B', "\0\0\0\0\0\0\0"), C_('E', "\0\0\0\0\0"), END_},
     false, 0, 'I', false, false},
    {"extended batch with Sync, answered",
     {C_('P', "\0q\0\0\0"), C_('B', "\0\0\0\0\0\0\0"), C_('E', "\0\0\0\0\0"), C_('S', ""), S_('1', ""), S_('2', ""),
      S_('C', "x\0"), Z_("I"), END_},
     true, 0, 'I', false, false},
    {"Describe and Flush: a batch the server holds", {C_('P', "\0q\0\0\0"), C_('D', "S\0"), C_('H', ""), S_('1', ""), S_('t', "\0\0"), END_},
     false, 0, 'I', false, false},
    {"COPY FROM STDIN", {C_('Q', "COPY t FROM STDIN\0"), S_('G', "\0\0\0"), C_('d', "1\n"), C_('d', "2\n"), C_('c', ""),
      S_('C', "COPY 2\0"), Z_("I"), END_},
     true, 0, 'I', false, false},
    {"FunctionCall answered", {C_('F', "\0\0\0\1\0\0\0\0\0\0"), S_('V', "\0\0\0\0"), Z_("I"), END_}, true, 0, 'I', false, false},
    {"a large DataRow in pieces", {C_('Q', "SELECT big\0"), {1, 'D', NULL, 0, 4 + 100000, 0}, END_}, false, 1, 'I', false, false},
    {"Terminate: never shared again", {C_('X', ""), END_}, false, 0, 'I', true, false},
    {"client length under 4", {{0, 'Q', NULL, 0, 3, 0}, END_}, false, 0, 'I', true, false},
    {"ReadyForQuery of the wrong length", {C_('Q', "x\0"), {1, 'Z', "II", 2, 0, 0}, END_}, false, 1, 'I', true, false},
    {"many queries, all answered", {{0, 'Q', "x\0", 2, 0, 50}, {1, 'Z', "I", 1, 0, 50}, END_}, true, 0, 'I', false, false},
    {"a named statement keeps the server connection",
     {C_('P', "s1\0SELECT 1\0\0\0"), C_('S', ""), S_('1', ""), Z_("I"), END_}, false, 0, 'I', false, true},
    {"... and later transactions do not free it",
     {C_('P', "s1\0q\0\0\0"), C_('S', ""), S_('1', ""), Z_("I"), C_('Q', "SELECT 1\0"), Z_("I"), END_}, false, 0, 'I',
      false, true},
    {"the unnamed statement does not", {C_('P', "\0s1\0\0\0"), C_('S', ""), S_('1', ""), Z_("I"), END_}, true, 0, 'I',
     false, false},
    {"a named portal does not (it ends with the transaction)",
     {C_('P', "\0q\0\0\0"), C_('B', "p1\0\0\0\0\0\0\0"), C_('E', "p1\0\0\0\0\0"), C_('S', ""), Z_("I"), END_},
     true, 0, 'I', false, false},
    {"pinned inside BEGIN: not quiet, its connection is not reset",
     {C_('P', "s1\0q\0\0\0"), C_('S', ""), Z_("I"), C_('Q', "BEGIN\0"), Z_("T"), END_}, false, 0, 'T', false, true},
    {"pinned in a failed transaction: not quiet either",
     {C_('P', "s1\0q\0\0\0"), C_('S', ""), Z_("I"), C_('Q', "x\0"), S_('E', "SERROR\0\0"), Z_("E"), END_}, false, 0, 'E',
      false, true},
    {"a Parse without a body names nothing", {C_('P', ""), C_('Q', "x\0"), C_('S', ""), Z_("I"), Z_("I"), END_}, true, 0,
     'I', false, false},
};

/* The bytes of one step's message (a DataRow's 100000-byte body is zeros). */
static size_t txn_step_bytes(const struct txn_step *st, uint8_t *out, size_t cap)
{
	uint32_t len = st->len ? st->len : (uint32_t)(4 + st->blen);
	size_t body = st->len ? (st->len >= 4 ? st->len - 4 : 0) : st->blen;
	assert_true(1 + 4 + body <= cap);
	out[0] = (uint8_t)st->type;
	out[1] = (uint8_t)(len >> 24), out[2] = (uint8_t)(len >> 16), out[3] = (uint8_t)(len >> 8), out[4] = (uint8_t)len;
	memset(out + 5, 0, body);
	if (st->body)
		memcpy(out + 5, st->body, st->blen < body ? st->blen : body);
	return st->len && st->len < 4 ? 5 : 5 + body;
}

static void test_txn_table(void **state)
{
	static uint8_t buf[200000];

	for (size_t i = 0; i < sizeof(txn_cases) / sizeof(txn_cases[0]); i++) {
		const struct txn_case *tc = &txn_cases[i];
		/* Each message whole, then each message one byte at a time: the result must not depend on how
		 * the bytes arrive. */
		for (int bytewise = 0; bytewise < 2; bytewise++) {
			struct pg_txn t = {.status = 'I'};
			for (const struct txn_step *st = tc->steps; st->side >= 0; st++) {
				size_t n = txn_step_bytes(st, buf, sizeof(buf));
				for (size_t r = 0; r < (st->repeat ? st->repeat : 1); r++) {
					if (!bytewise)
						pg_txn_scan(&t, st->side, buf, n);
					else
						for (size_t k = 0; k < n; k++)
							pg_txn_scan(&t, st->side, buf + k, 1);
				}
			}
			/* quiet: idle but for the pin (a pinned session's connection could be reset) */
			bool quiet = tc->idle || (tc->pinned && tc->status == 'I');
			if (pg_txn_idle(&t) != tc->idle || t.owed != tc->owed || t.status != tc->status ||
			    t.lost != tc->lost || t.pinned != tc->pinned || pg_txn_quiet(&t) != quiet)
				fail_msg("%s (%s): idle %d owed %u status %c lost %d pinned %d; want %d %u %c %d %d", tc->name,
					 bytewise ? "byte by byte" : "whole", pg_txn_idle(&t), t.owed, t.status, t.lost,
					 t.pinned, tc->idle, tc->owed, tc->status, tc->lost, tc->pinned);
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_startup_table),
	    cmocka_unit_test(test_startup_params),
	    cmocka_unit_test(test_cancel_fields),
	    cmocka_unit_test(test_too_many_params),
	    cmocka_unit_test(test_msg_framing),
	    cmocka_unit_test(test_builders),
	    cmocka_unit_test(test_error_field_unterminated),
	    cmocka_unit_test(test_txn_table),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
