/*
 * pgproto: see pgproto.h.  Parsing trusts nothing: each length is compared with what is there and
 * with a limit before any byte past it is read.
 */
#include "proxy/pgproto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum pg_res pg_read_startup(const uint8_t *p, size_t len, size_t max_len, struct pg_startup *out, char *err,
			    size_t errlen)
{
	memset(out, 0, sizeof(*out));
	if (len < 8)
		return PG_NEED_MORE;
	uint32_t plen = pg_get_u32(p);
	if (plen < 8 || plen > max_len) {
		snprintf(err, errlen, "invalid startup packet length %u (allowed 8 to %zu)", plen, max_len);
		return PG_BAD;
	}
	out->code = pg_get_u32(p + 4);
	out->len = plen;
	if (out->code == PG_SSL_REQUEST || out->code == PG_GSSENC_REQUEST) {
		if (plen != 8) {
			snprintf(err, errlen, "encryption request of length %u, expected 8", plen);
			return PG_BAD;
		}
		return PG_OK;
	}
	if (out->code == PG_CANCEL_REQUEST) {
		if (plen != 16) {
			snprintf(err, errlen, "cancel request of length %u, expected 16", plen);
			return PG_BAD;
		}
		if (len < 16)
			return PG_NEED_MORE;
		out->cancel_pid = pg_get_u32(p + 8);
		out->cancel_key = pg_get_u32(p + 12);
		return PG_OK;
	}
	if (len < plen)
		return PG_NEED_MORE;
	if (out->code >> 16 != 3)
		return PG_OK; /* the caller refuses other major versions by code */

	/* name NUL value NUL ... NUL: pairs, then an empty name, which must be the packet's last byte. */
	const char *s = (const char *)p + 8, *end = (const char *)p + plen;
	for (;;) {
		if (s >= end) {
			snprintf(err, errlen, "startup packet is not terminated");
			return PG_BAD;
		}
		if (*s == '\0') {
			if (s != end - 1) {
				snprintf(err, errlen, "data after the startup packet's terminator");
				return PG_BAD;
			}
			break;
		}
		const char *name = s, *value, *nul = memchr(s, '\0', (size_t)(end - s));
		if (!nul || nul + 1 >= end) {
			snprintf(err, errlen, nul ? "startup parameter has no value" : "startup packet is not terminated");
			return PG_BAD;
		}
		value = nul + 1;
		if (!(nul = memchr(value, '\0', (size_t)(end - value)))) {
			snprintf(err, errlen, "startup packet is not terminated");
			return PG_BAD;
		}
		s = nul + 1;
		if (out->nparams == PG_STARTUP_MAX_PARAMS) {
			snprintf(err, errlen, "more than %d startup parameters", PG_STARTUP_MAX_PARAMS);
			return PG_BAD;
		}
		for (size_t i = 0; i < out->nparams; i++) {
			if (strcmp(out->names[i], name) == 0) {
				snprintf(err, errlen, "startup parameter \"%.64s\" given twice", name);
				return PG_BAD;
			}
		}
		out->names[out->nparams] = name;
		out->values[out->nparams] = value;
		out->nparams++;
	}
	return PG_OK;
}

const char *pg_startup_get(const struct pg_startup *s, const char *name)
{
	for (size_t i = 0; i < s->nparams; i++)
		if (strcmp(s->names[i], name) == 0)
			return s->values[i];
	return NULL;
}

enum pg_res pg_read_msg(const uint8_t *p, size_t len, size_t max_body, struct pg_msg *out, char *err, size_t errlen)
{
	if (len < 5)
		return PG_NEED_MORE;
	uint32_t mlen = pg_get_u32(p + 1);
	if (mlen < 4 || mlen - 4 > max_body) {
		snprintf(err, errlen, "invalid length %u of message type '%c'", mlen,
			 p[0] >= 0x20 && p[0] < 0x7f ? p[0] : '?');
		return PG_BAD;
	}
	if (len < (size_t)mlen + 1)
		return PG_NEED_MORE;
	out->type = p[0];
	out->body = p + 5;
	out->body_len = mlen - 4;
	out->total = (size_t)mlen + 1;
	return PG_OK;
}

/* ---------------------------------------------------------------- builders */

void pgbuf_free(struct pgbuf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

void pgbuf_put(struct pgbuf *b, const void *p, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n)
			cap *= 2;
		uint8_t *d = realloc(b->data, cap);
		if (!d) {
			b->oom = true;
			return;
		}
		b->data = d;
		b->cap = cap;
	}
	if (n)
		memcpy(b->data + b->len, p, n);
	b->len += n;
}

void pgbuf_put_u8(struct pgbuf *b, uint8_t v)
{
	pgbuf_put(b, &v, 1);
}

void pgbuf_put_u32(struct pgbuf *b, uint32_t v)
{
	uint8_t w[4] = {v >> 24, v >> 16, v >> 8, v};
	pgbuf_put(b, w, 4);
}

void pgbuf_put_str(struct pgbuf *b, const char *s)
{
	pgbuf_put(b, s, strlen(s) + 1);
}

size_t pgbuf_begin(struct pgbuf *b, uint8_t type)
{
	if (type)
		pgbuf_put_u8(b, type);
	size_t off = b->len;
	pgbuf_put_u32(b, 0);
	return off;
}

void pgbuf_end(struct pgbuf *b, size_t off)
{
	if (b->oom)
		return;
	uint32_t v = (uint32_t)(b->len - off);
	uint8_t w[4] = {v >> 24, v >> 16, v >> 8, v};
	memcpy(b->data + off, w, 4);
}

void pg_put_error(struct pgbuf *b, const char *severity, const char *sqlstate, const char *message,
		  const char *detail, const char *hint)
{
	size_t off = pgbuf_begin(b, PG_MSG_ERROR);
	pgbuf_put_u8(b, 'S');
	pgbuf_put_str(b, severity);
	pgbuf_put_u8(b, 'V');
	pgbuf_put_str(b, severity);
	pgbuf_put_u8(b, 'C');
	pgbuf_put_str(b, sqlstate);
	pgbuf_put_u8(b, 'M');
	pgbuf_put_str(b, message);
	if (detail) {
		pgbuf_put_u8(b, 'D');
		pgbuf_put_str(b, detail);
	}
	if (hint) {
		pgbuf_put_u8(b, 'H');
		pgbuf_put_str(b, hint);
	}
	pgbuf_put_u8(b, 0);
	pgbuf_end(b, off);
}

void pg_put_auth(struct pgbuf *b, uint32_t code, const void *data, size_t len)
{
	size_t off = pgbuf_begin(b, PG_MSG_AUTH);
	pgbuf_put_u32(b, code);
	pgbuf_put(b, data, len);
	pgbuf_end(b, off);
}

void pg_put_backend_key(struct pgbuf *b, uint32_t pid, uint32_t key)
{
	size_t off = pgbuf_begin(b, PG_MSG_BACKEND_KEY_DATA);
	pgbuf_put_u32(b, pid);
	pgbuf_put_u32(b, key);
	pgbuf_end(b, off);
}

void pg_put_negotiate_version(struct pgbuf *b, uint32_t newest_minor, const char *const *unknown, size_t nunknown)
{
	size_t off = pgbuf_begin(b, PG_MSG_NEGOTIATE_PROTOCOL);
	pgbuf_put_u32(b, newest_minor);
	pgbuf_put_u32(b, (uint32_t)nunknown);
	for (size_t i = 0; i < nunknown; i++)
		pgbuf_put_str(b, unknown[i]);
	pgbuf_end(b, off);
}

void pg_put_startup(struct pgbuf *b, const char *const *names, const char *const *values, size_t n)
{
	size_t off = pgbuf_begin(b, 0);
	pgbuf_put_u32(b, PG_PROTOCOL_3_0);
	for (size_t i = 0; i < n; i++) {
		pgbuf_put_str(b, names[i]);
		pgbuf_put_str(b, values[i]);
	}
	pgbuf_put_u8(b, 0);
	pgbuf_end(b, off);
}

void pg_put_cancel(struct pgbuf *b, uint32_t pid, uint32_t key)
{
	pgbuf_put_u32(b, 16);
	pgbuf_put_u32(b, PG_CANCEL_REQUEST);
	pgbuf_put_u32(b, pid);
	pgbuf_put_u32(b, key);
}

void pg_put_ssl_request(struct pgbuf *b)
{
	pgbuf_put_u32(b, 8);
	pgbuf_put_u32(b, PG_SSL_REQUEST);
}

const char *pg_error_field(const uint8_t *body, size_t len, char code)
{
	size_t i = 0;
	while (i < len && body[i]) {
		char c = (char)body[i++];
		const uint8_t *nul = memchr(body + i, 0, len - i);
		if (!nul)
			return NULL;
		if (c == code)
			return (const char *)body + i;
		i = (size_t)(nul - body) + 1;
	}
	return NULL;
}

/* ---------------------------------------------------------------- transaction pooling's framing */

/* A message header from side (0: the client, 1: the server) is complete: what it means for the transaction. */
static void txn_on_header(struct pg_txn *t, int side)
{
	uint8_t type = t->hdr[side][0];
	uint32_t len = pg_get_u32(t->hdr[side] + 1);

	t->have[side] = 0;
	if (len < 4 || (side == 1 && type == PG_MSG_READY_FOR_QUERY && len != 5)) {
		t->lost = true;
		return;
	}
	t->type[side] = type;
	t->left[side] = len - 4;
	if (side == 1)
		return;
	switch (type) {
	case 'X': /* Terminate: the server process ends; its connection must never go back to the pool */
		t->lost = true;
		break;
	case 'Q': /* Query */
	case 'F': /* FunctionCall */
		t->owed++;
		break;
	case 'S': /* Sync */
		t->owed++;
		t->batch = false;
		break;
	case 'P': /* Parse, Bind, Describe, Execute, Close, Flush: a batch the server holds until its Sync */
		t->name_next = len > 4;
		/* fall through */
	case 'B':
	case 'D':
	case 'E':
	case 'C':
	case 'H':
		t->batch = true;
		break;
	}
}

void pg_txn_scan(struct pg_txn *t, int side, const uint8_t *p, size_t n)
{
	while (n > 0 && !t->lost) {
		if (t->left[side] > 0) {
			if (side == 1 && t->type[1] == PG_MSG_READY_FOR_QUERY) {
				t->status = (char)p[0]; /* the only byte of its body */
				t->owed -= t->owed > 0;
			} else if (side == 0 && t->name_next) { /* a named statement outlives the transaction */
				t->pinned |= p[0] != 0 && !t->names_kept;
				t->name_next = false;
			}
			size_t k = n < t->left[side] ? n : t->left[side];
			p += k, n -= k;
			t->left[side] -= (uint32_t)k;
			continue;
		}
		size_t k = 5 - t->have[side];
		k = n < k ? n : k;
		memcpy(t->hdr[side] + t->have[side], p, k);
		t->have[side] += (uint8_t)k;
		p += k, n -= k;
		if (t->have[side] == 5)
			txn_on_header(t, side);
	}
}

bool pg_txn_quiet(const struct pg_txn *t)
{
	return !t->lost && t->owed == 0 && !t->batch && t->status == 'I' && t->left[0] == 0 && t->have[0] == 0 &&
	       t->left[1] == 0 && t->have[1] == 0;
}

bool pg_txn_idle(const struct pg_txn *t)
{
	return pg_txn_quiet(t) && !t->pinned;
}
