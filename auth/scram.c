/*
 * scram: SCRAM-SHA-256 and SCRAM-SHA-256-PLUS as PostgreSQL speaks them, for pglane's two roles: the
 * server that apps log in to, and the client that logs in to instances.  Every message arrives with an
 * explicit length and is treated as hostile: it is refused when empty, longer than SCRAM_MSG_MAX - 1 or
 * carrying a NUL, and is then parsed with a cursor that never reads past its end.  Anything PostgreSQL
 * does not send (authorization identities, extensions, channel binding types other than
 * tls-server-end-point) is refused rather than skipped.  An exchange that fails once stays failed, so a
 * caller cannot retry a proof against the same nonce.  The error texts end up in logs, so they never
 * quote a message (messages carry proofs); the one exception is a server's short e= error code.
 */
#include "auth/scram.h"

#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#define SCRAM_MECH           "SCRAM-SHA-256"
#define SCRAM_MECH_PLUS      "SCRAM-SHA-256-PLUS"
#define SCRAM_CBIND_TYPE     "tls-server-end-point"
#define SCRAM_GS2_MAX        32       /* "p=tls-server-end-point,," is the longest header accepted */
#define SCRAM_NONCE_RAW      18       /* random bytes in a nonce, 24 characters in base64 */
#define SCRAM_NONCE_MAX      64       /* characters of our own nonce (the test hook may set one) */
#define SCRAM_SALT_MAX       64       /* bytes of salt accepted from a server */
#define SCRAM_ITERATIONS_MAX 10000000 /* caps the PBKDF2 work a server can ask of us */
#define SCRAM_CACHE_SIZE     64

enum scram_state {
	SCRAM_STATE_INIT,  /* nothing exchanged yet */
	SCRAM_STATE_FIRST, /* first messages exchanged */
	SCRAM_STATE_FINAL, /* client only: client-final sent, server-final expected */
	SCRAM_STATE_DONE,  /* succeeded */
	SCRAM_STATE_FAILED /* a step failed; every later call fails too */
};

struct scram_server {
	enum scram_state state;
	struct scram_secret secret;     /* copied; cleansed on free */
	uint8_t cbind[EVP_MAX_MD_SIZE]; /* tls-server-end-point hash of our certificate */
	size_t cbind_len;               /* 0 without TLS: -PLUS was not offered */
	bool plus;                      /* the client chose SCRAM-SHA-256-PLUS */
	char server_nonce[SCRAM_NONCE_MAX + 1];
	char gs2_header[SCRAM_GS2_MAX]; /* as the client sent it, e.g. "n,," */
	char client_first_bare[SCRAM_MSG_MAX];
	char server_first[SCRAM_MSG_MAX]; /* "r=" and the nonce come first */
	size_t nonce_len;                 /* client nonce and server nonce, at server_first + 2 */
};

struct scram_cache_entry {
	bool used;
	uint8_t key[SHA256_DIGEST_LENGTH]; /* SHA-256(password NUL salt iterations) */
	uint8_t salted[SCRAM_KEY_LEN];     /* SaltedPassword */
};

struct scram_cache {
	pthread_mutex_t lock;
	struct scram_cache_entry entries[SCRAM_CACHE_SIZE]; /* cleansed on free */
	size_t next;                                        /* the entry replaced next (round robin) */
	uint64_t hits;
	uint64_t misses;
};

struct scram_client {
	enum scram_state state;
	char *password;                  /* owned; cleansed on free */
	struct scram_cache *cache;       /* borrowed, may be NULL */
	char nonce[SCRAM_NONCE_MAX + 1]; /* our part of the nonce */
	char gs2_header[SCRAM_GS2_MAX];
	uint8_t cbind[EVP_MAX_MD_SIZE]; /* the server certificate's hash, when -PLUS was chosen */
	size_t cbind_len;
	char client_first_bare[SCRAM_MSG_MAX];
	uint8_t server_signature[SCRAM_KEY_LEN]; /* expected in the server-final-message; cleansed on free */
};

/* A reading position in a message that is not NUL-terminated. */
struct cursor {
	const char *p;   /* borrowed: the next byte */
	const char *end; /* borrowed: one past the last byte */
};

__attribute__((format(printf, 3, 4))) static bool fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return false;
}

/* ---------------------------------------------------------------- parsing */

/* Refuses what no SCRAM message may be: absent, empty, too long, or holding a NUL (PostgreSQL treats
 * messages as C strings, so a NUL would make two parsers see two different messages). */
static bool message_check(const uint8_t *msg, size_t len, char *err, size_t errlen)
{
	if (msg == NULL || len == 0)
		return fail(err, errlen, "malformed SCRAM message: the message is empty");
	if (len >= SCRAM_MSG_MAX)
		return fail(err, errlen, "malformed SCRAM message: longer than %d bytes", SCRAM_MSG_MAX - 1);
	if (memchr(msg, '\0', len) != NULL)
		return fail(err, errlen, "malformed SCRAM message: the message contains a NUL byte");
	return true;
}

/* Reads "name=value"; the value runs to the next ',' or the end, where the cursor is left. */
static bool cursor_read_attr(struct cursor *cur, char name, const char **val, size_t *vlen, char *err,
                             size_t errlen)
{
	const char *comma;

	if (cur->end - cur->p < 2 || cur->p[0] != name || cur->p[1] != '=')
		return fail(err, errlen, "malformed SCRAM message: expected attribute \"%c\"", name);
	*val = cur->p + 2;
	comma = memchr(*val, ',', (size_t)(cur->end - *val));
	cur->p = comma ? comma : cur->end;
	*vlen = (size_t)(cur->p - *val);
	return true;
}

/* Steps over the ',' that separates two attributes. */
static bool cursor_skip_comma(struct cursor *cur, char *err, size_t errlen)
{
	if (cur->p == cur->end || *cur->p != ',')
		return fail(err, errlen, "malformed SCRAM message: expected ','");
	cur->p++;
	return true;
}

/* True when the next byte is c: used to spot attributes that are refused by name. */
static bool cursor_peek(const struct cursor *cur, char c)
{
	return cur->p < cur->end && *cur->p == c;
}

static bool cursor_at_end(const struct cursor *cur, char *err, size_t errlen)
{
	if (cur->p != cur->end)
		return fail(err, errlen, "malformed SCRAM message: SCRAM extensions are not supported");
	return true;
}

/* RFC 5802's "printable" (what a nonce is made of): visible ASCII except ','. */
static bool value_printable(const char *s, size_t len)
{
	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++)
		if (s[i] < 0x21 || s[i] > 0x7e || s[i] == ',')
			return false;
	return true;
}

/* Standard base64 with padding, NUL-terminated, into out; false when it does not fit. */
static bool b64_encode(const uint8_t *in, size_t len, char *out, size_t outlen)
{
	if (len > SCRAM_MSG_MAX || (len + 2) / 3 * 4 + 1 > outlen)
		return false;
	EVP_EncodeBlock((unsigned char *)out, in, (int)len);
	return true;
}

/*
 * Strict base64 into out: whole groups of four from the standard alphabet, '=' only as the last one or
 * two characters, at most outmax decoded bytes.  (EVP_DecodeBlock alone would skip blanks and count the
 * padding as data.)  in is a value from a message, so inlen < SCRAM_MSG_MAX.
 */
static bool b64_decode(const char *in, size_t inlen, uint8_t *out, size_t outmax, size_t *outlen)
{
	uint8_t tmp[SCRAM_MSG_MAX / 4 * 3];
	size_t pad = 0;
	int n;
	bool ok;

	if (inlen == 0 || inlen % 4 != 0 || inlen > SCRAM_MSG_MAX)
		return false;
	if (in[inlen - 1] == '=')
		pad = in[inlen - 2] == '=' ? 2 : 1;
	for (size_t i = 0; i < inlen - pad; i++) {
		char ch = in[i];
		if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
		      ch == '+' || ch == '/'))
			return false;
	}
	n = EVP_DecodeBlock(tmp, (const unsigned char *)in, (int)inlen);
	ok = n >= 0 && (size_t)n - pad <= outmax;
	if (ok) {
		*outlen = (size_t)n - pad;
		memcpy(out, tmp, *outlen);
	}
	OPENSSL_cleanse(tmp, sizeof tmp);
	return ok;
}

/* A nonce: SCRAM_NONCE_RAW random bytes in base64, which has no ','. */
static bool nonce_make(char out[SCRAM_NONCE_MAX + 1])
{
	uint8_t raw[SCRAM_NONCE_RAW];

	return RAND_bytes(raw, sizeof raw) == 1 && b64_encode(raw, sizeof raw, out, SCRAM_NONCE_MAX + 1);
}

static bool nonce_set(char dst[SCRAM_NONCE_MAX + 1], const char *nonce)
{
	size_t len = nonce ? strlen(nonce) : 0;

	if (len > SCRAM_NONCE_MAX || !value_printable(nonce, len))
		return false;
	memcpy(dst, nonce, len + 1);
	return true;
}

/* ---------------------------------------------------------------- keys */

static bool hmac_sha256(const uint8_t *key, size_t keylen, const void *msg, size_t len,
                        uint8_t out[SCRAM_KEY_LEN])
{
	unsigned int n = 0;

	return HMAC(EVP_sha256(), key, (int)keylen, msg, len, out, &n) != NULL && n == SCRAM_KEY_LEN;
}

/* SaltedPassword := Hi(password, salt, i), which is PBKDF2 with HMAC-SHA-256. */
static bool salted_password_make(const char *password, const uint8_t *salt, size_t saltlen, int iterations,
                                 uint8_t out[SCRAM_KEY_LEN])
{
	size_t pwlen = strlen(password);

	if (pwlen > INT_MAX || saltlen > INT_MAX || iterations < 1)
		return false;
	return PKCS5_PBKDF2_HMAC(password, (int)pwlen, salt, (int)saltlen, iterations, EVP_sha256(),
	                         SCRAM_KEY_LEN, out) == 1;
}

/* ClientKey, StoredKey and ServerKey from SaltedPassword (RFC 5802 section 3). */
static bool keys_make(const uint8_t salted[SCRAM_KEY_LEN], uint8_t client_key[SCRAM_KEY_LEN],
                      uint8_t stored_key[SCRAM_KEY_LEN], uint8_t server_key[SCRAM_KEY_LEN])
{
	return hmac_sha256(salted, SCRAM_KEY_LEN, "Client Key", 10, client_key) &&
	       SHA256(client_key, SCRAM_KEY_LEN, stored_key) != NULL &&
	       hmac_sha256(salted, SCRAM_KEY_LEN, "Server Key", 10, server_key);
}

/* AuthMessage := client-first-message-bare "," server-first-message "," client-final-message-without-proof,
 * into out (3 * SCRAM_MSG_MAX bytes, enough for three messages); returns its length. */
static size_t auth_message_format(char out[3 * SCRAM_MSG_MAX], const char *first_bare,
                                  const char *server_first, size_t server_first_len, const char *final,
                                  size_t final_len)
{
	return (size_t)snprintf(out, 3 * SCRAM_MSG_MAX, "%s,%.*s,%.*s", first_bare, (int)server_first_len,
	                        server_first, (int)final_len, final);
}

bool scram_secret_make(const char *password, const uint8_t *salt, size_t saltlen, int iterations,
                       struct scram_secret *out)
{
	uint8_t salted[SCRAM_KEY_LEN], client_key[SCRAM_KEY_LEN];
	bool ok;

	if (saltlen != SCRAM_SALT_LEN)
		return false;
	ok = salted_password_make(password, salt, saltlen, iterations, salted) &&
	     keys_make(salted, client_key, out->stored_key, out->server_key);
	memcpy(out->salt, salt, SCRAM_SALT_LEN);
	out->iterations = iterations;
	OPENSSL_cleanse(salted, sizeof salted);
	OPENSSL_cleanse(client_key, sizeof client_key);
	return ok;
}

/* ---------------------------------------------------------------- server side */

struct scram_server *scram_server_new(const struct scram_secret *secret, const uint8_t *cbind_data,
                                      size_t cbind_len)
{
	struct scram_server *s;

	if (secret == NULL || (cbind_data != NULL && (cbind_len == 0 || cbind_len > EVP_MAX_MD_SIZE)))
		return NULL;
	s = calloc(1, sizeof *s);
	if (s == NULL)
		return NULL;
	s->secret = *secret;
	if (cbind_data != NULL) {
		memcpy(s->cbind, cbind_data, cbind_len);
		s->cbind_len = cbind_len;
	}
	if (!nonce_make(s->server_nonce)) {
		scram_server_free(s);
		return NULL;
	}
	return s;
}

void scram_server_free(struct scram_server *s)
{
	if (s == NULL)
		return;
	OPENSSL_cleanse(s, sizeof *s);
	free(s);
}

bool scram_server_set_nonce(struct scram_server *s, const char *nonce)
{
	return s->state == SCRAM_STATE_INIT && nonce_set(s->server_nonce, nonce);
}

size_t scram_server_mechanisms(bool tls, char *out, size_t outlen)
{
	/* The literals' own terminating NUL is the empty name that ends the list. */
	static const char with_plus[] = SCRAM_MECH_PLUS "\0" SCRAM_MECH "\0";
	static const char plain[] = SCRAM_MECH "\0";
	const char *list = tls ? with_plus : plain;
	size_t len = tls ? sizeof with_plus : sizeof plain;

	if (out == NULL || outlen < len)
		return 0;
	memcpy(out, list, len);
	return len;
}

/* Reads the gs2 header ("n,,", "y,," or "p=tls-server-end-point,,") and checks its channel binding flag
 * against the mechanism the client chose. */
static bool server_read_gs2_header(struct scram_server *s, struct cursor *cur, char *err, size_t errlen)
{
	const char *start = cur->p;
	char flag = *cur->p;

	if (flag == 'p') {
		const char *name;
		size_t namelen;

		if (!cursor_read_attr(cur, 'p', &name, &namelen, err, errlen))
			return false;
		if (namelen != strlen(SCRAM_CBIND_TYPE) || memcmp(name, SCRAM_CBIND_TYPE, namelen) != 0)
			return fail(err, errlen,
			            "unsupported SCRAM channel binding type (only %s is supported)",
			            SCRAM_CBIND_TYPE);
	} else if (flag == 'n' || flag == 'y') {
		cur->p++;
	} else {
		return fail(err, errlen, "malformed SCRAM message: unknown channel binding flag");
	}
	if (!cursor_skip_comma(cur, err, errlen))
		return false;
	if (cursor_peek(cur, 'a'))
		return fail(err, errlen, "SCRAM authorization identities are not supported");
	if (!cursor_skip_comma(cur, err, errlen))
		return false;

	if (s->plus) {
		if (flag != 'p')
			return fail(err, errlen, "the client chose %s but sent no channel binding",
			            SCRAM_MECH_PLUS);
	} else if (flag == 'p') {
		return fail(err, errlen, "the client chose %s but sent channel binding data", SCRAM_MECH);
	} else if (flag == 'y' && s->cbind_len > 0) {
		return fail(err, errlen,
		            "SCRAM channel binding downgrade: %s was offered, but the client that supports "
		            "channel binding says the server does not",
		            SCRAM_MECH_PLUS);
	}
	memcpy(s->gs2_header, start, (size_t)(cur->p - start)); /* at most "p=tls-server-end-point,," */
	s->gs2_header[cur->p - start] = '\0';
	return true;
}

bool scram_server_first(struct scram_server *s, const char *mech, const uint8_t *msg, size_t len, char *out,
                        size_t outlen, char *err, size_t errlen)
{
	struct cursor cur = {(const char *)msg, (const char *)msg + len};
	const char *bare, *user, *cnonce;
	size_t userlen, cnoncelen;
	char salt[SCRAM_SALT_LEN * 2];
	int n;

	if (s->state != SCRAM_STATE_INIT)
		return fail(err, errlen, "SCRAM exchange out of order");
	s->state = SCRAM_STATE_FAILED; /* until this step succeeds */

	if (mech != NULL && strcmp(mech, SCRAM_MECH_PLUS) == 0) {
		if (s->cbind_len == 0)
			return fail(err, errlen, "the client chose %s, which was not offered",
			            SCRAM_MECH_PLUS);
		s->plus = true;
	} else if (mech == NULL || strcmp(mech, SCRAM_MECH) != 0) {
		return fail(err, errlen, "unsupported SASL mechanism (only %s and %s are supported)",
		            SCRAM_MECH, SCRAM_MECH_PLUS);
	}
	if (!message_check(msg, len, err, errlen) || !server_read_gs2_header(s, &cur, err, errlen))
		return false;

	bare = cur.p;
	if (cursor_peek(&cur, 'm'))
		return fail(err, errlen, "mandatory SCRAM extensions are not supported");
	/* PostgreSQL takes the user name from the StartupMessage, so n= is read and ignored. */
	if (!cursor_read_attr(&cur, 'n', &user, &userlen, err, errlen) ||
	    !cursor_skip_comma(&cur, err, errlen) ||
	    !cursor_read_attr(&cur, 'r', &cnonce, &cnoncelen, err, errlen) ||
	    !cursor_at_end(&cur, err, errlen))
		return false;
	if (!value_printable(cnonce, cnoncelen))
		return fail(err, errlen,
		            "malformed SCRAM message: the client nonce is empty or not printable");

	memcpy(s->client_first_bare, bare, (size_t)(cur.end - bare)); /* shorter than the message */
	s->client_first_bare[cur.end - bare] = '\0';
	if (!b64_encode(s->secret.salt, SCRAM_SALT_LEN, salt, sizeof salt))
		return fail(err, errlen, "SCRAM: base64 encoding failed");
	n = snprintf(s->server_first, sizeof s->server_first, "r=%.*s%s,s=%s,i=%d", (int)cnoncelen, cnonce,
	             s->server_nonce, salt, s->secret.iterations);
	if (n < 0 || (size_t)n >= sizeof s->server_first)
		return fail(err, errlen, "malformed SCRAM message: the client nonce is too long");
	s->nonce_len = cnoncelen + strlen(s->server_nonce);
	if ((size_t)n >= outlen)
		return fail(err, errlen, "SCRAM server-first-message does not fit the output buffer");
	memcpy(out, s->server_first, (size_t)n + 1);
	s->state = SCRAM_STATE_FIRST;
	return true;
}

/* Checks the decoded c= attribute: the gs2 header again, followed by our certificate hash with -PLUS. */
static bool server_check_cbind(const struct scram_server *s, const char *val, size_t vlen, char *err,
                               size_t errlen)
{
	uint8_t got[SCRAM_GS2_MAX + EVP_MAX_MD_SIZE];
	size_t gotlen, gs2len = strlen(s->gs2_header);

	if (!b64_decode(val, vlen, got, sizeof got, &gotlen))
		return fail(err, errlen, "malformed SCRAM message: bad channel binding attribute");
	if (gotlen != gs2len + (s->plus ? s->cbind_len : 0) || memcmp(got, s->gs2_header, gs2len) != 0 ||
	    (s->plus && memcmp(got + gs2len, s->cbind, s->cbind_len) != 0))
		return fail(err, errlen, "SCRAM channel binding check failed");
	return true;
}

bool scram_server_final(struct scram_server *s, const uint8_t *msg, size_t len, char *out, size_t outlen,
                        char *err, size_t errlen)
{
	struct cursor cur = {(const char *)msg, (const char *)msg + len};
	const char *cbind, *nonce, *proof_b64;
	size_t cbindlen, noncelen, proof_b64len, prooflen, final_len, auth_len;
	uint8_t proof[SCRAM_KEY_LEN], client_sig[SCRAM_KEY_LEN], client_key[SCRAM_KEY_LEN];
	uint8_t stored_key[SCRAM_KEY_LEN], server_sig[SCRAM_KEY_LEN];
	char auth[3 * SCRAM_MSG_MAX];
	bool ok = false;

	if (s->state != SCRAM_STATE_FIRST)
		return fail(err, errlen, "SCRAM exchange out of order");
	s->state = SCRAM_STATE_FAILED;

	if (!message_check(msg, len, err, errlen) ||
	    !cursor_read_attr(&cur, 'c', &cbind, &cbindlen, err, errlen) ||
	    !server_check_cbind(s, cbind, cbindlen, err, errlen) || !cursor_skip_comma(&cur, err, errlen) ||
	    !cursor_read_attr(&cur, 'r', &nonce, &noncelen, err, errlen))
		return false;
	if (noncelen != s->nonce_len || memcmp(nonce, s->server_first + 2, noncelen) != 0)
		return fail(err, errlen, "SCRAM nonce mismatch");
	final_len = (size_t)(cur.p - (const char *)msg);
	if (!cursor_skip_comma(&cur, err, errlen) ||
	    !cursor_read_attr(&cur, 'p', &proof_b64, &proof_b64len, err, errlen) ||
	    !cursor_at_end(&cur, err, errlen))
		return false;
	if (!b64_decode(proof_b64, proof_b64len, proof, sizeof proof, &prooflen) || prooflen != SCRAM_KEY_LEN)
		return fail(err, errlen, "malformed SCRAM message: bad proof attribute");

	/* ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage); the proof holds when H(ClientKey) is
	 * the StoredKey. */
	auth_len = auth_message_format(auth, s->client_first_bare, s->server_first, strlen(s->server_first),
	                               (const char *)msg, final_len);
	if (!hmac_sha256(s->secret.stored_key, SCRAM_KEY_LEN, auth, auth_len, client_sig) ||
	    !hmac_sha256(s->secret.server_key, SCRAM_KEY_LEN, auth, auth_len, server_sig)) {
		fail(err, errlen, "SCRAM: HMAC-SHA-256 failed");
		goto out;
	}
	for (size_t i = 0; i < SCRAM_KEY_LEN; i++)
		client_key[i] = proof[i] ^ client_sig[i];
	if (SHA256(client_key, SCRAM_KEY_LEN, stored_key) == NULL) {
		fail(err, errlen, "SCRAM: SHA-256 failed");
		goto out;
	}
	if (CRYPTO_memcmp(stored_key, s->secret.stored_key, SCRAM_KEY_LEN) != 0) {
		fail(err, errlen, "password authentication failed: the SCRAM proof does not match");
		goto out;
	}
	if (outlen < 2 || !b64_encode(server_sig, SCRAM_KEY_LEN, out + 2, outlen - 2)) {
		fail(err, errlen, "SCRAM server-final-message does not fit the output buffer");
		goto out;
	}
	memcpy(out, "v=", 2);
	s->state = SCRAM_STATE_DONE;
	ok = true;
out:
	OPENSSL_cleanse(proof, sizeof proof);
	OPENSSL_cleanse(client_sig, sizeof client_sig);
	OPENSSL_cleanse(client_key, sizeof client_key);
	OPENSSL_cleanse(server_sig, sizeof server_sig);
	return ok;
}

/* ---------------------------------------------------------------- client side: the cache */

struct scram_cache *scram_cache_new(void)
{
	struct scram_cache *c = calloc(1, sizeof *c);

	if (c != NULL && pthread_mutex_init(&c->lock, NULL) != 0) {
		free(c);
		return NULL;
	}
	return c;
}

void scram_cache_free(struct scram_cache *c)
{
	if (c == NULL)
		return;
	pthread_mutex_destroy(&c->lock);
	OPENSSL_cleanse(c->entries, sizeof c->entries);
	free(c);
}

void scram_cache_stats(struct scram_cache *c, uint64_t *hits, uint64_t *misses)
{
	pthread_mutex_lock(&c->lock);
	*hits = c->hits;
	*misses = c->misses;
	pthread_mutex_unlock(&c->lock);
}

/* The cache key: SHA-256(password NUL salt iterations).  The NUL (never inside a C string) and the
 * fixed-size iteration count at the end keep different triples from running together. */
static bool cache_key_make(const char *password, const uint8_t *salt, size_t saltlen, int iterations,
                           uint8_t key[SHA256_DIGEST_LENGTH])
{
	const uint8_t iter[4] = {(uint8_t)(iterations >> 24), (uint8_t)(iterations >> 16),
	                         (uint8_t)(iterations >> 8), (uint8_t)iterations};
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) &&
	          EVP_DigestUpdate(ctx, password, strlen(password) + 1) &&
	          EVP_DigestUpdate(ctx, salt, saltlen) && EVP_DigestUpdate(ctx, iter, sizeof iter) &&
	          EVP_DigestFinal_ex(ctx, key, NULL);

	EVP_MD_CTX_free(ctx);
	return ok;
}

/* SaltedPassword from the cache, or computed and remembered.  PBKDF2 runs outside the lock, so two
 * threads missing on the same key both compute it; the duplicate entry is harmless. */
static bool cache_salted_password(struct scram_cache *c, const char *password, const uint8_t *salt,
                                  size_t saltlen, int iterations, uint8_t out[SCRAM_KEY_LEN])
{
	uint8_t key[SHA256_DIGEST_LENGTH];
	bool found = false;

	if (c == NULL)
		return salted_password_make(password, salt, saltlen, iterations, out);
	if (!cache_key_make(password, salt, saltlen, iterations, key))
		return false;

	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < SCRAM_CACHE_SIZE && !found; i++) {
		struct scram_cache_entry *e = &c->entries[i];
		if (e->used && CRYPTO_memcmp(e->key, key, sizeof key) == 0) {
			memcpy(out, e->salted, SCRAM_KEY_LEN);
			c->hits++;
			found = true;
		}
	}
	pthread_mutex_unlock(&c->lock);
	if (found)
		return true;

	if (!salted_password_make(password, salt, saltlen, iterations, out))
		return false;
	pthread_mutex_lock(&c->lock);
	c->entries[c->next].used = true;
	memcpy(c->entries[c->next].key, key, sizeof key);
	memcpy(c->entries[c->next].salted, out, SCRAM_KEY_LEN);
	c->next = (c->next + 1) % SCRAM_CACHE_SIZE;
	c->misses++;
	pthread_mutex_unlock(&c->lock);
	return true;
}

/* ---------------------------------------------------------------- client side: the exchange */

struct scram_client *scram_client_new(const char *password, struct scram_cache *cache)
{
	struct scram_client *c;

	if (password == NULL)
		return NULL;
	c = calloc(1, sizeof *c);
	if (c == NULL)
		return NULL;
	c->cache = cache;
	c->password = strdup(password);
	if (c->password == NULL || !nonce_make(c->nonce)) {
		scram_client_free(c);
		return NULL;
	}
	return c;
}

void scram_client_free(struct scram_client *c)
{
	if (c == NULL)
		return;
	if (c->password != NULL) {
		OPENSSL_cleanse(c->password, strlen(c->password));
		free(c->password);
	}
	OPENSSL_cleanse(c, sizeof *c);
	free(c);
}

bool scram_client_set_nonce(struct scram_client *c, const char *nonce)
{
	return c->state == SCRAM_STATE_INIT && nonce_set(c->nonce, nonce);
}

bool scram_client_first(struct scram_client *c, const uint8_t *mechs, size_t mechs_len,
                        const uint8_t *cbind_data, size_t cbind_len, char *mech_out, size_t mech_outlen,
                        char *out, size_t outlen, size_t *out_used, char *err, size_t errlen)
{
	bool plain = false, plus = false;
	const char *mech;
	size_t i = 0;
	int n;

	if (c->state != SCRAM_STATE_INIT)
		return fail(err, errlen, "SCRAM exchange out of order");
	c->state = SCRAM_STATE_FAILED;
	if (cbind_data != NULL && (cbind_len == 0 || cbind_len > EVP_MAX_MD_SIZE))
		return fail(err, errlen, "SCRAM channel binding data of %zu bytes is not a certificate hash",
		            cbind_len);

	for (;;) {
		const uint8_t *nul = i < mechs_len ? memchr(mechs + i, '\0', mechs_len - i) : NULL;
		size_t namelen;

		if (nul == NULL)
			return fail(err, errlen, "malformed SASL mechanism list from the server");
		namelen = (size_t)(nul - (mechs + i));
		if (namelen == 0)
			break;
		plain |= strcmp((const char *)mechs + i, SCRAM_MECH) == 0;
		plus |= strcmp((const char *)mechs + i, SCRAM_MECH_PLUS) == 0;
		i += namelen + 1;
	}

	/* Like libpq: -PLUS when both sides can; "y" when we could but the server did not offer it. */
	if (plus && cbind_data != NULL) {
		mech = SCRAM_MECH_PLUS;
		strcpy(c->gs2_header, "p=" SCRAM_CBIND_TYPE ",,");
		memcpy(c->cbind, cbind_data, cbind_len);
		c->cbind_len = cbind_len;
	} else if (plain) {
		mech = SCRAM_MECH;
		strcpy(c->gs2_header, cbind_data != NULL ? "y,," : "n,,");
	} else if (plus) {
		return fail(err, errlen, "the server requires SCRAM channel binding, which needs TLS");
	} else {
		return fail(err, errlen, "the server offers no SASL mechanism pglane supports (%s)",
		            SCRAM_MECH);
	}
	if (strlen(mech) >= mech_outlen)
		return fail(err, errlen, "SASL mechanism name does not fit the output buffer");
	strcpy(mech_out, mech);

	/* The user name goes in the StartupMessage; PostgreSQL ignores n=, so libpq leaves it empty. */
	snprintf(c->client_first_bare, sizeof c->client_first_bare, "n=,r=%s", c->nonce);
	n = snprintf(out, outlen, "%s%s", c->gs2_header, c->client_first_bare);
	if (n < 0 || (size_t)n >= outlen)
		return fail(err, errlen, "SCRAM client-first-message does not fit the output buffer");
	*out_used = (size_t)n;
	c->state = SCRAM_STATE_FIRST;
	return true;
}

/* Reads the i= attribute: a decimal in 1..SCRAM_ITERATIONS_MAX. */
static bool iterations_parse(const char *val, size_t len, int *out)
{
	long v = 0;

	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (val[i] < '0' || val[i] > '9')
			return false;
		v = v * 10 + (val[i] - '0');
		if (v > SCRAM_ITERATIONS_MAX)
			return false;
	}
	*out = (int)v;
	return v >= 1;
}

bool scram_client_final(struct scram_client *c, const uint8_t *msg, size_t len, char *out, size_t outlen,
                        size_t *out_used, char *err, size_t errlen)
{
	struct cursor cur = {(const char *)msg, (const char *)msg + len};
	const char *nonce, *salt_b64, *iter;
	size_t noncelen, salt_b64len, iterlen, saltlen, cnoncelen = strlen(c->nonce), used, auth_len;
	uint8_t salt[SCRAM_SALT_MAX], cbind[SCRAM_GS2_MAX + EVP_MAX_MD_SIZE];
	uint8_t salted[SCRAM_KEY_LEN], client_key[SCRAM_KEY_LEN], stored_key[SCRAM_KEY_LEN];
	uint8_t server_key[SCRAM_KEY_LEN], proof[SCRAM_KEY_LEN];
	size_t gs2len = strlen(c->gs2_header);
	char auth[3 * SCRAM_MSG_MAX];
	int iterations, n;
	bool ok = false;

	if (c->state != SCRAM_STATE_FIRST)
		return fail(err, errlen, "SCRAM exchange out of order");
	c->state = SCRAM_STATE_FAILED;

	if (!message_check(msg, len, err, errlen))
		return false;
	if (cursor_peek(&cur, 'm'))
		return fail(err, errlen,
		            "the server sent a mandatory SCRAM extension, which is not supported");
	if (!cursor_read_attr(&cur, 'r', &nonce, &noncelen, err, errlen) ||
	    !cursor_skip_comma(&cur, err, errlen) ||
	    !cursor_read_attr(&cur, 's', &salt_b64, &salt_b64len, err, errlen) ||
	    !cursor_skip_comma(&cur, err, errlen) ||
	    !cursor_read_attr(&cur, 'i', &iter, &iterlen, err, errlen) || !cursor_at_end(&cur, err, errlen))
		return false;
	if (noncelen <= cnoncelen || memcmp(nonce, c->nonce, cnoncelen) != 0 ||
	    !value_printable(nonce, noncelen))
		return fail(err, errlen, "the server's SCRAM nonce does not extend ours");
	if (!b64_decode(salt_b64, salt_b64len, salt, sizeof salt, &saltlen))
		return fail(err, errlen, "malformed SCRAM message: bad salt attribute");
	if (!iterations_parse(iter, iterlen, &iterations))
		return fail(err, errlen, "SCRAM iteration count is not a number in 1..%d",
		            SCRAM_ITERATIONS_MAX);

	/* client-final-message-without-proof: c=base64(gs2 header [cbind data]),r=nonce */
	memcpy(cbind, c->gs2_header, gs2len);
	memcpy(cbind + gs2len, c->cbind, c->cbind_len);
	if (outlen < 2 || !b64_encode(cbind, gs2len + c->cbind_len, out + 2, outlen - 2))
		return fail(err, errlen, "SCRAM client-final-message does not fit the output buffer");
	memcpy(out, "c=", 2);
	used = strlen(out);
	n = snprintf(out + used, outlen - used, ",r=%.*s", (int)noncelen, nonce);
	if (n < 0 || (size_t)n >= outlen - used)
		return fail(err, errlen, "SCRAM client-final-message does not fit the output buffer");
	used += (size_t)n;

	auth_len = auth_message_format(auth, c->client_first_bare, (const char *)msg, len, out, used);
	if (!cache_salted_password(c->cache, c->password, salt, saltlen, iterations, salted) ||
	    !keys_make(salted, client_key, stored_key, server_key) ||
	    !hmac_sha256(stored_key, SCRAM_KEY_LEN, auth, auth_len, proof) ||
	    !hmac_sha256(server_key, SCRAM_KEY_LEN, auth, auth_len, c->server_signature)) {
		fail(err, errlen, "SCRAM key derivation failed");
		goto out;
	}
	for (size_t i = 0; i < SCRAM_KEY_LEN; i++)
		proof[i] ^= client_key[i]; /* ClientProof = ClientKey XOR ClientSignature */
	if (outlen - used < 3 || !b64_encode(proof, SCRAM_KEY_LEN, out + used + 3, outlen - used - 3)) {
		fail(err, errlen, "SCRAM client-final-message does not fit the output buffer");
		goto out;
	}
	memcpy(out + used, ",p=", 3);
	*out_used = strlen(out);
	c->state = SCRAM_STATE_FINAL;
	ok = true;
out:
	OPENSSL_cleanse(salted, sizeof salted);
	OPENSSL_cleanse(client_key, sizeof client_key);
	OPENSSL_cleanse(stored_key, sizeof stored_key);
	OPENSSL_cleanse(server_key, sizeof server_key);
	OPENSSL_cleanse(proof, sizeof proof);
	return ok;
}

bool scram_client_verify(struct scram_client *c, const uint8_t *msg, size_t len, char *err, size_t errlen)
{
	struct cursor cur = {(const char *)msg, (const char *)msg + len};
	const char *val;
	size_t vlen, siglen;
	uint8_t sig[SCRAM_KEY_LEN];

	if (c->state != SCRAM_STATE_FINAL)
		return fail(err, errlen, "SCRAM exchange out of order");
	c->state = SCRAM_STATE_FAILED;

	if (!message_check(msg, len, err, errlen))
		return false;
	if (cursor_peek(&cur, 'e')) {
		if (!cursor_read_attr(&cur, 'e', &val, &vlen, err, errlen) || !value_printable(val, vlen) ||
		    vlen > 64)
			return fail(err, errlen, "the server refused the SCRAM exchange");
		return fail(err, errlen, "the server refused the SCRAM exchange: %.*s", (int)vlen, val);
	}
	if (!cursor_read_attr(&cur, 'v', &val, &vlen, err, errlen) || !cursor_at_end(&cur, err, errlen))
		return false;
	if (!b64_decode(val, vlen, sig, sizeof sig, &siglen) || siglen != SCRAM_KEY_LEN)
		return fail(err, errlen, "malformed SCRAM message: bad verifier attribute");
	if (CRYPTO_memcmp(sig, c->server_signature, SCRAM_KEY_LEN) != 0)
		return fail(err, errlen,
		            "the server's SCRAM signature is wrong: it does not know the password");
	c->state = SCRAM_STATE_DONE;
	return true;
}

/* ---------------------------------------------------------------- md5 and helpers */

/* hex(md5(a || b)) into hex (33 bytes). */
static bool md5_hex(const void *a, size_t alen, const void *b, size_t blen, char hex[33])
{
	static const char digits[] = "0123456789abcdef";
	uint8_t md[16];
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_md5(), NULL) && EVP_DigestUpdate(ctx, a, alen) &&
	          EVP_DigestUpdate(ctx, b, blen) && EVP_DigestFinal_ex(ctx, md, NULL);

	EVP_MD_CTX_free(ctx);
	if (!ok)
		return false;
	for (size_t i = 0; i < sizeof md; i++) {
		hex[2 * i] = digits[md[i] >> 4];
		hex[2 * i + 1] = digits[md[i] & 0xf];
	}
	hex[32] = '\0';
	return true;
}

/* Without MD5 in OpenSSL (a FIPS provider) out is "", which the server refuses like a wrong password. */
void auth_md5_response(const char *password, const char *user, const uint8_t salt[4], char out[36])
{
	char inner[33];

	memcpy(out, "md5", 3);
	if (!md5_hex(password, strlen(password), user, strlen(user), inner) ||
	    !md5_hex(inner, 32, salt, 4, out + 3))
		out[0] = '\0';
	OPENSSL_cleanse(inner, sizeof inner);
}

size_t scram_cert_endpoint_hash(const void *x509, uint8_t *out, size_t outlen)
{
	/* X509_get_signature_info() takes a non-const certificate only to fill its cache of extensions.
	 * Unlike OBJ_find_sigid_algs() it also sees through RSA-PSS parameters to the real digest. */
	X509 *cert = (X509 *)x509;
	const EVP_MD *md;
	unsigned int n = 0;
	int mdnid;

	if (cert == NULL || !X509_get_signature_info(cert, &mdnid, NULL, NULL, NULL))
		return 0;
	/* RFC 5929 section 4.1: MD5 and SHA-1 are replaced by SHA-256. */
	md = mdnid == NID_md5 || mdnid == NID_sha1 ? EVP_sha256() : EVP_get_digestbynid(mdnid);
	if (md == NULL || (size_t)EVP_MD_get_size(md) > outlen || !X509_digest(cert, md, out, &n))
		return 0;
	return n;
}
