/*
 * pgproto: the PostgreSQL v3 wire codec over plain bytes.  No libevent, no sockets: parsers take a
 * pointer and a length and are tri-state (PG_NEED_MORE until a whole packet is there), builders append
 * to a caller's struct pgbuf.  Every length on the wire is checked before it is trusted.
 */
#ifndef PGLANE_PGPROTO_H
#define PGLANE_PGPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum pg_res { PG_BAD = -1, PG_NEED_MORE = 0, PG_OK = 1 };

/* Request codes carried where a StartupMessage carries its protocol version. */
#define PG_PROTOCOL_3_0 196608u      /* 3 << 16 */
#define PG_CANCEL_REQUEST 80877102u  /* 1234 << 16 | 5678 */
#define PG_SSL_REQUEST 80877103u     /* 1234 << 16 | 5679 */
#define PG_GSSENC_REQUEST 80877104u  /* 1234 << 16 | 5680 */
#define PG_TLS_HANDSHAKE_BYTE 0x16   /* first byte of a TLS record: direct TLS (PostgreSQL 17) */

/* Message types (the first byte of a regular message). */
enum {
	PG_MSG_AUTH = 'R',
	PG_MSG_BACKEND_KEY_DATA = 'K',
	PG_MSG_PARAMETER_STATUS = 'S',
	PG_MSG_READY_FOR_QUERY = 'Z',
	PG_MSG_ERROR = 'E',
	PG_MSG_NOTICE = 'N',
	PG_MSG_NEGOTIATE_PROTOCOL = 'v',
	PG_MSG_PASSWORD = 'p', /* PasswordMessage, SASLInitialResponse, SASLResponse */
	PG_MSG_TERMINATE = 'X',
};

/* Authentication request codes (the int32 after 'R'). */
enum {
	PG_AUTH_OK = 0,
	PG_AUTH_CLEARTEXT = 3,
	PG_AUTH_MD5 = 5,
	PG_AUTH_SASL = 10,
	PG_AUTH_SASL_CONTINUE = 11,
	PG_AUTH_SASL_FINAL = 12,
};

#define PG_STARTUP_MAX_PARAMS 64

/* A parsed startup-phase packet.  Strings point into the caller's bytes and live only as long as they do. */
struct pg_startup {
	uint32_t code;   /* PG_PROTOCOL_3_0 (or another version), PG_SSL_REQUEST, ... */
	size_t len;      /* the whole packet, length word included */
	uint32_t cancel_pid, cancel_key; /* PG_CANCEL_REQUEST only */
	size_t nparams;  /* StartupMessage only: name/value pairs in order, user and database included */
	const char *names[PG_STARTUP_MAX_PARAMS];
	const char *values[PG_STARTUP_MAX_PARAMS];
};

/*
 * Parses a startup-phase packet at p.  PG_NEED_MORE until len covers it; PG_BAD with err set for a
 * length under 8 or over max_len, a cancel or SSL request of the wrong size, a StartupMessage whose
 * strings are not terminated, an odd name without value, too many parameters, or duplicated names.
 */
enum pg_res pg_read_startup(const uint8_t *p, size_t len, size_t max_len, struct pg_startup *out, char *err,
			    size_t errlen);

/* The value of a startup parameter, or NULL. */
const char *pg_startup_get(const struct pg_startup *s, const char *name);

/* A regular message: type, body and total length (type byte + length word + body). */
struct pg_msg {
	uint8_t type;
	const uint8_t *body; /* points into the caller's bytes */
	size_t body_len;
	size_t total;
};

/* Frames one message at p.  PG_BAD (err set) when the length word is under 4 or the body over max_body. */
enum pg_res pg_read_msg(const uint8_t *p, size_t len, size_t max_body, struct pg_msg *out, char *err, size_t errlen);

/* ---------------------------------------------------------------- builders */

/* A growable byte buffer.  Owned by whoever declared it; pgbuf_free() releases the bytes. */
struct pgbuf {
	uint8_t *data;
	size_t len, cap;
	bool oom; /* an allocation failed: the contents are incomplete and must not be sent */
};

void pgbuf_free(struct pgbuf *b);
void pgbuf_put(struct pgbuf *b, const void *p, size_t n);
void pgbuf_put_u8(struct pgbuf *b, uint8_t v);
void pgbuf_put_u32(struct pgbuf *b, uint32_t v);
void pgbuf_put_str(struct pgbuf *b, const char *s); /* with its NUL */
/* Begins a message of type (0 for an untyped startup packet); returns the offset to pass to pgbuf_end(). */
size_t pgbuf_begin(struct pgbuf *b, uint8_t type);
/* Patches the length word of the message begun at off. */
void pgbuf_end(struct pgbuf *b, size_t off);

/* Builders of whole messages. */
void pg_put_error(struct pgbuf *b, const char *severity, const char *sqlstate, const char *message,
		  const char *detail, const char *hint);
void pg_put_auth(struct pgbuf *b, uint32_t code, const void *data, size_t len);
void pg_put_backend_key(struct pgbuf *b, uint32_t pid, uint32_t key);
void pg_put_negotiate_version(struct pgbuf *b, uint32_t newest_minor, const char *const *unknown, size_t nunknown);
void pg_put_startup(struct pgbuf *b, const char *const *names, const char *const *values, size_t n);
void pg_put_cancel(struct pgbuf *b, uint32_t pid, uint32_t key);
void pg_put_ssl_request(struct pgbuf *b);

/* ---------------------------------------------------------------- readers of message bodies */

/* ErrorResponse / NoticeResponse fields: returns the value of field code ('C' sqlstate, 'M' message,
 * 'S' severity ...) as a pointer into body, or NULL when absent or unterminated. */
const char *pg_error_field(const uint8_t *body, size_t len, char code);

static inline uint32_t pg_get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/*
 * Transaction pooling's view of a session: where each direction stands in its messages (headers only; bodies
 * are stepped over), and what the server still owes.  Side 0 is the client's bytes, side 1 the server's.
 */
struct pg_txn {
	uint32_t left[2];  /* bytes of the current message's body still to come */
	uint8_t hdr[2][5]; /* a message header being gathered */
	uint8_t have[2];   /* bytes of it so far */
	uint8_t type[2];   /* the current message's type */
	uint32_t owed;     /* Query, FunctionCall and Sync messages not yet answered with ReadyForQuery */
	bool batch;        /* extended-protocol messages sent since the last Sync */
	bool lost;         /* a length under 4, a malformed ReadyForQuery, or a Terminate: never between
	                    * transactions again (the server connection must not be shared) */
	bool pinned;       /* the client named a prepared statement (a Parse with a name): it lives on this
	                    * server connection, which therefore stays with the session to its end */
	bool name_next;    /* the next client byte is the first of a Parse's statement name */
	bool names_kept;   /* pglane keeps named statements (stmt.c): a name does not pin */
	char status;       /* the last ReadyForQuery's status */
};

/* Follows n bytes of side (0 client, 1 server) through their messages. */
void pg_txn_scan(struct pg_txn *t, int side, const uint8_t *p, size_t n);
/* Both streams between messages, every request answered, no extended batch open, the last ReadyForQuery
 * idle ('I'), and nothing lost: the server connection could be reset and shared. */
bool pg_txn_quiet(const struct pg_txn *t);
/* True between transactions: quiet, and no named prepared statement ties the session to its connection. */
bool pg_txn_idle(const struct pg_txn *t);

#endif
