/*
 * fuzz_startup: pg_read_startup() and pg_startup_get() on arbitrary bytes, the first thing pglane parses
 * from an unauthenticated peer.
 *
 * Input: byte 0 picks max_len (the configured max_packet_size); the rest is the packet, copied to a heap
 * block of exactly its size so that any read past it is an AddressSanitizer report.
 *
 * Properties checked beyond memory safety:
 *   - PG_OK means a packet of 8..max_len bytes that lies within the input; parameters point inside the
 *     packet, are NUL-terminated there, have non-empty and distinct names, and pg_startup_get() finds each;
 *   - PG_BAD always comes with an error message free of control characters (frontend.c logs it: a
 *     refusal must not let an unauthenticated peer forge log lines), PG_NEED_MORE only while the packet's
 *     length is not all there;
 *   - the verdict does not depend on bytes past the packet, and every proper prefix of a packet that
 *     parses is PG_NEED_MORE (a packet split over two reads is never refused);
 *   - a StartupMessage rebuilt with pg_put_startup() from the parsed parameters parses to the same ones and
 *     has the same bytes after the protocol code.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "proxy/pgproto.h"
#include "tests/fuzz/fuzz_common.h"

static const size_t max_lens[] = {65536, 8, 9, 16, 1024, 1u << 30};

static bool check_ok(const uint8_t *p, size_t len, size_t max_len, const struct pg_startup *su)
{
	FUZZ_CHECK(su->len >= 8 && su->len <= len && su->len <= max_len, "len %zu of %zu, max %zu", su->len, len,
		   max_len);
	FUZZ_CHECK(su->len == pg_get_u32(p), "len %zu but the length word says %u", su->len, pg_get_u32(p));
	FUZZ_CHECK(su->code == pg_get_u32(p + 4), "code %u vs %u", su->code, pg_get_u32(p + 4));
	if (su->code == PG_SSL_REQUEST || su->code == PG_GSSENC_REQUEST)
		FUZZ_CHECK(su->len == 8, "encryption request of %zu bytes", su->len);
	if (su->code == PG_CANCEL_REQUEST) {
		FUZZ_CHECK(su->len == 16, "cancel request of %zu bytes", su->len);
		FUZZ_CHECK(su->cancel_pid == pg_get_u32(p + 8) && su->cancel_key == pg_get_u32(p + 12), "cancel fields");
	}
	if (su->code >> 16 != 3 || su->code == PG_CANCEL_REQUEST || su->code == PG_SSL_REQUEST ||
	    su->code == PG_GSSENC_REQUEST) {
		FUZZ_CHECK(su->nparams == 0, "%zu parameters in a packet of code %u", su->nparams, su->code);
		return false;
	}
	FUZZ_CHECK(su->nparams <= PG_STARTUP_MAX_PARAMS, "%zu parameters", su->nparams);
	const char *start = (const char *)p + 8, *end = (const char *)p + su->len;
	for (size_t i = 0; i < su->nparams; i++) {
		const char *n = su->names[i], *v = su->values[i];
		FUZZ_CHECK(n >= start && n < end && v >= start && v < end, "parameter %zu outside the packet", i);
		FUZZ_CHECK(memchr(n, 0, (size_t)(end - n)) != NULL && memchr(v, 0, (size_t)(end - v)) != NULL,
			   "parameter %zu not terminated inside the packet", i);
		FUZZ_CHECK(n[0] != '\0', "empty name at %zu", i);
		FUZZ_CHECK(v == n + strlen(n) + 1, "value %zu does not follow its name", i);
		for (size_t j = 0; j < i; j++)
			FUZZ_CHECK(strcmp(su->names[j], n) != 0, "name \"%s\" twice", n);
		FUZZ_CHECK(pg_startup_get(su, n) == v, "pg_startup_get(\"%s\") is not the parsed value", n);
	}
	/* Nothing is left over: the last value's NUL is followed by the terminator, the packet's last byte. */
	const char *after = su->nparams ? su->values[su->nparams - 1] + strlen(su->values[su->nparams - 1]) + 1 : start;
	/* PostgreSQL's ProcessStartupPacket: "expected terminator as last byte". */
	FUZZ_CHECK(FUZZ_SKIPPED("startup-terminator") || (after == end - 1 && *after == '\0'),
		   "no terminator after the last parameter (the last value's NUL is the packet's last byte)");
	return after == end - 1;
}

/* The parameters rebuilt with pg_put_startup() give the same packet body and the same parse. */
static void check_rebuild(const uint8_t *p, const struct pg_startup *su)
{
	struct pgbuf b = {0};
	struct pg_startup again;
	char err[256] = "";

	pg_put_startup(&b, su->names, su->values, su->nparams);
	FUZZ_CHECK(!b.oom, "pgbuf out of memory");
	FUZZ_CHECK(b.len == su->len, "rebuilt %zu bytes, parsed %zu", b.len, su->len);
	FUZZ_CHECK(memcmp(b.data + 8, p + 8, su->len - 8) == 0, "rebuilt body differs");
	FUZZ_CHECK(pg_read_startup(b.data, b.len, b.len, &again, err, sizeof err) == PG_OK, "rebuilt: %s", err);
	FUZZ_CHECK(again.nparams == su->nparams, "rebuilt has %zu parameters, not %zu", again.nparams, su->nparams);
	pgbuf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pg_startup su, su2;
	char err[256], err2[256];

	if (size < 1)
		return 0;
	size_t max_len = max_lens[data[0] % (sizeof max_lens / sizeof max_lens[0])];
	size_t len = size - 1;
	uint8_t *p = fuzz_dup(data + 1, len);

	err[0] = '\0';
	enum pg_res r = pg_read_startup(p, len, max_len, &su, err, sizeof err);
	FUZZ_CHECK(r == PG_OK || r == PG_BAD || r == PG_NEED_MORE, "result %d", (int)r);
	if (r == PG_BAD) {
		FUZZ_CHECK(err[0] != '\0', "PG_BAD without a message");
		FUZZ_CHECK(FUZZ_SKIPPED("log-controls") || fuzz_no_controls(err), "the error text carries a control character from the packet: %s", err);
	}
	if (r == PG_NEED_MORE) {
		bool short_input = len < 8 || pg_get_u32(p) > len ||
				   (pg_get_u32(p + 4) == PG_CANCEL_REQUEST && len < 16);
		FUZZ_CHECK(short_input, "PG_NEED_MORE with %zu bytes and a length word of %u", len,
			   len >= 4 ? pg_get_u32(p) : 0);
	}
	if (r == PG_OK) {
		bool terminated = check_ok(p, len, max_len, &su);
		/* The same verdict from the packet alone, and NEED_MORE from each of its last few prefixes. */
		uint8_t *exact = fuzz_dup(p, su.len);
		err2[0] = '\0';
		FUZZ_CHECK(pg_read_startup(exact, su.len, max_len, &su2, err2, sizeof err2) == PG_OK,
			   "the packet alone: %s", err2);
		FUZZ_CHECK(su2.nparams == su.nparams && su2.code == su.code, "the packet alone parses differently");
		for (size_t cut = su.len > 4 ? su.len - 4 : 0; cut < su.len; cut++) {
			enum pg_res rp = pg_read_startup(exact, cut, max_len, &su2, err2, sizeof err2);
			FUZZ_CHECK(rp == PG_NEED_MORE, "prefix of %zu of %zu bytes gives %d (%s)", cut, su.len, (int)rp,
				   rp == PG_BAD ? err2 : "");
		}
		if (su.code == PG_PROTOCOL_3_0 && terminated)
			check_rebuild(p, &su);
		(void)pg_startup_get(&su, "user");
		(void)pg_startup_get(&su, "database");
		free(exact);
	}
	free(p);
	return 0;
}
