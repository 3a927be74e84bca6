/*
 * fuzz_msg: the message framer pg_read_msg() over a stream of messages, and pg_error_field() over each
 * message body, as pglane reads them from clients (authentication) and from instances (login).
 *
 * Input: byte 0 picks max_body; byte 1 is an extra field code to look up; the rest is the stream, copied to
 * a heap block of exactly its size.
 *
 * Properties checked beyond memory safety:
 *   - PG_OK frames a message inside the input: total = 1 + length word, body right after the length word,
 *     body_len within max_body; framing the message alone gives the same result, and each proper prefix
 *     of it gives PG_NEED_MORE;
 *   - PG_BAD comes with an error message and only for a length word under 4 or a body over max_body;
 *   - pg_error_field() returns NULL or a pointer into the body at a string that ends inside the body;
 *   - an ErrorResponse built by pg_put_error() from strings taken from the input frames as one 'E' message
 *     whose fields read back as the same strings.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "proxy/pgproto.h"
#include "tests/fuzz/fuzz_common.h"

static const size_t max_bodies[] = {8192, 0, 1, 4, 65536, 1u << 30};
static const char field_codes[] = {'S', 'V', 'C', 'M', 'D', 'H', 'P', 'W', 'F', 'L', 'R', '\0'};

static void check_field(const struct pg_msg *m, char code)
{
	const char *v = pg_error_field(m->body, m->body_len, code);
	const char *b = (const char *)m->body;

	if (v == NULL)
		return;
	FUZZ_CHECK(v > b && v <= b + m->body_len, "field '%c' outside the body", code);
	FUZZ_CHECK(v < b + m->body_len && memchr(v, 0, (size_t)(b + m->body_len - v)) != NULL,
		   "field '%c' not terminated inside the body", code);
	FUZZ_CHECK(v[-1] == code, "field '%c' is not preceded by its code", code);
}

static void check_frame(const uint8_t *p, size_t len, size_t max_body, const struct pg_msg *m)
{
	uint32_t word = pg_get_u32(p + 1);
	struct pg_msg again;
	char err[256] = "";

	FUZZ_CHECK(m->total == (size_t)word + 1 && m->total <= len, "total %zu, word %u, %zu bytes", m->total, word,
		   len);
	FUZZ_CHECK(m->type == p[0] && m->body == p + 5 && m->body_len == word - 4 && m->body_len <= max_body,
		   "frame fields");
	uint8_t *exact = fuzz_dup(p, m->total);
	FUZZ_CHECK(pg_read_msg(exact, m->total, max_body, &again, err, sizeof err) == PG_OK, "alone: %s", err);
	FUZZ_CHECK(again.total == m->total && again.body_len == m->body_len, "alone frames differently");
	for (size_t cut = m->total > 3 ? m->total - 3 : 0; cut < m->total; cut++)
		FUZZ_CHECK(pg_read_msg(exact, cut, max_body, &again, err, sizeof err) == PG_NEED_MORE,
			   "prefix of %zu of %zu bytes", cut, m->total);
	free(exact);
}

/* Up to five NUL-separated strings from s[0..len) (missing ones are ""), into pg_put_error() and back. */
static void check_error_roundtrip(const uint8_t *s, size_t len)
{
	char *buf = malloc(len + 1);
	const char *f[5] = {"", "", "", "", ""};
	size_t nf = 0, start = 0;
	struct pgbuf b = {0};
	struct pg_msg m;
	char err[256] = "";

	if (!buf)
		abort();
	memcpy(buf, s, len);
	buf[len] = '\0';
	for (size_t i = 0; i <= len && nf < 5; i++) {
		if (buf[i] == '\0') {
			f[nf++] = buf + start;
			start = i + 1;
		}
	}
	/* severity, sqlstate, message, detail (NULL when empty), hint (NULL when empty) */
	pg_put_error(&b, f[0], f[1], f[2], f[3][0] ? f[3] : NULL, f[4][0] ? f[4] : NULL);
	FUZZ_CHECK(!b.oom, "pgbuf out of memory");
	FUZZ_CHECK(pg_read_msg(b.data, b.len, b.len, &m, err, sizeof err) == PG_OK, "built error: %s", err);
	FUZZ_CHECK(m.type == PG_MSG_ERROR && m.total == b.len, "built error frames as %zu of %zu bytes", m.total, b.len);
	const char *want[] = {f[0], f[0], f[1], f[2], f[3], f[4]};
	const char codes[] = {'S', 'V', 'C', 'M', 'D', 'H'};
	for (size_t i = 0; i < 6; i++) {
		const char *got = pg_error_field(m.body, m.body_len, codes[i]);
		if (codes[i] == 'D' || codes[i] == 'H') {
			if (!want[i][0]) {
				FUZZ_CHECK(got == NULL, "field '%c' present though not given", codes[i]);
				continue;
			}
		}
		FUZZ_CHECK(got != NULL && strcmp(got, want[i]) == 0, "field '%c' reads back as \"%s\", not \"%s\"",
			   codes[i], got ? got : "(null)", want[i]);
	}
	pgbuf_free(&b);
	free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	size_t max_body = max_bodies[data[0] % (sizeof max_bodies / sizeof max_bodies[0])];
	char extra = (char)data[1];
	size_t len = size - 2;
	uint8_t *p = fuzz_dup(data + 2, len);
	size_t off = 0;

	for (int n = 0; n < 4096; n++) {
		struct pg_msg m;
		char err[256] = "";
		enum pg_res r = pg_read_msg(p + off, len - off, max_body, &m, err, sizeof err);

		FUZZ_CHECK(r == PG_OK || r == PG_BAD || r == PG_NEED_MORE, "result %d", (int)r);
		if (r == PG_NEED_MORE) {
			FUZZ_CHECK(len - off < 5 || (size_t)pg_get_u32(p + off + 1) + 1 > len - off,
				   "NEED_MORE with the whole message present");
			break;
		}
		if (r == PG_BAD) {
			uint32_t word = pg_get_u32(p + off + 1);
			FUZZ_CHECK(err[0] != '\0' && fuzz_no_controls(err), "PG_BAD without a clean message: %s", err);
			FUZZ_CHECK(word < 4 || word - 4 > max_body, "PG_BAD for a length word of %u (max body %zu)", word,
				   max_body);
			break;
		}
		check_frame(p + off, len - off, max_body, &m);
		for (size_t i = 0; i < sizeof field_codes; i++)
			check_field(&m, field_codes[i]);
		check_field(&m, extra);
		off += m.total;
	}
	/* The input's tail also serves as the fields of an ErrorResponse to build and read back. */
	check_error_roundtrip(data + 2, len < 4096 ? len : 4096);
	free(p);
	return 0;
}
