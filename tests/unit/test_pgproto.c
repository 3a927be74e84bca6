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
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
