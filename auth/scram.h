/*
 * scram: SCRAM-SHA-256 (RFC 5802, RFC 7677) for both sides of pglane, with the -PLUS variant and
 * tls-server-end-point channel binding (RFC 5929).  OpenSSL crypto only: no sockets, no logging.
 *
 * Server side (pglane authenticating an app): pglane knows the app's password (a derived token), so it
 * builds a struct scram_secret once per credential with scram_secret_make() (one PBKDF2 run) and caches
 * it; each login then costs a few HMACs.
 *
 * Client side (pglane logging in to an instance): the salted password depends on the server's salt and
 * iteration count; struct scram_cache remembers the last few so a reconnect skips PBKDF2.
 *
 * Every function that can fail returns false and writes a sentence for a person into err.
 * Messages are never logged by this module and must never be logged by callers (they carry proofs).
 */
#ifndef PGLANE_SCRAM_H
#define PGLANE_SCRAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SCRAM_KEY_LEN 32
#define SCRAM_SALT_LEN 16
#define SCRAM_DEFAULT_ITERATIONS 4096
#define SCRAM_MSG_MAX 1024 /* largest message either side produces, NUL included */

struct scram_secret {
	uint8_t salt[SCRAM_SALT_LEN];
	int iterations;
	uint8_t stored_key[SCRAM_KEY_LEN];
	uint8_t server_key[SCRAM_KEY_LEN];
};

/* One PBKDF2-HMAC-SHA-256 run: derives the stored and server keys for password with the given salt.
 * The password is used as given (pglane's tokens are ASCII, so SASLprep leaves them unchanged). */
bool scram_secret_make(const char *password, const uint8_t *salt, size_t saltlen, int iterations,
		       struct scram_secret *out);

/* ---------------------------------------------------------------- server side */

struct scram_server;

/*
 * A new exchange against secret (copied).  cbind_data is the tls-server-end-point hash of pglane's own
 * certificate (NULL when the connection is not TLS); when it is given, SCRAM-SHA-256-PLUS is acceptable.
 */
struct scram_server *scram_server_new(const struct scram_secret *secret, const uint8_t *cbind_data,
				      size_t cbind_len);
void scram_server_free(struct scram_server *s); /* cleanses keys; NULL is fine */

/* The mechanisms to offer in AuthenticationSASL, as a sequence of NUL-terminated names ending in an
 * empty one (the wire format), and its length (0 when out is too small). */
size_t scram_server_mechanisms(bool tls, char *out, size_t outlen);

/*
 * The client-first-message of SASLInitialResponse for mechanism mech.  On success out holds the
 * server-first-message (NUL-terminated).  Refuses: unknown mechanism, a channel-binding flag that
 * contradicts the mechanism ("y" when the server offered -PLUS is a downgrade attack), malformed
 * attributes, an authzid, extensions.
 */
bool scram_server_first(struct scram_server *s, const char *mech, const uint8_t *msg, size_t len, char *out,
			size_t outlen, char *err, size_t errlen);

/*
 * The client-final-message.  On success (proof verified, channel binding matches) out holds the
 * server-final-message "v=..." for AuthenticationSASLFinal.  False for a wrong password as for a
 * malformed message; err tells them apart for the log.
 */
bool scram_server_final(struct scram_server *s, const uint8_t *msg, size_t len, char *out, size_t outlen,
			char *err, size_t errlen);

/* ---------------------------------------------------------------- client side */

struct scram_cache;
struct scram_cache *scram_cache_new(void);
void scram_cache_free(struct scram_cache *c);

/* How many salted passwords came from the cache and how many were computed (for metrics). */
void scram_cache_stats(struct scram_cache *c, uint64_t *hits, uint64_t *misses);

struct scram_client;

/* A new exchange with password (copied).  cache may be NULL; it is borrowed and must outlive the client.
 * Thread-safe cache access is the cache's business. */
struct scram_client *scram_client_new(const char *password, struct scram_cache *cache);
void scram_client_free(struct scram_client *c);

/*
 * Picks a mechanism from the server's list (AuthenticationSASL body: NUL-terminated names, empty last).
 * cbind_data is the tls-server-end-point hash of the server's certificate, or NULL without TLS.
 * With cbind_data and a -PLUS offer it chooses SCRAM-SHA-256-PLUS.  On success mech_out names the
 * mechanism and out holds the client-first-message (its length in *outlen_used).
 */
bool scram_client_first(struct scram_client *c, const uint8_t *mechs, size_t mechs_len, const uint8_t *cbind_data,
			size_t cbind_len, char *mech_out, size_t mech_outlen, char *out, size_t outlen,
			size_t *out_used, char *err, size_t errlen);

/* The server-first-message (AuthenticationSASLContinue body) in; the client-final-message out. */
bool scram_client_final(struct scram_client *c, const uint8_t *msg, size_t len, char *out, size_t outlen,
			size_t *out_used, char *err, size_t errlen);

/* The server-final-message (AuthenticationSASLFinal body): true only when the server's signature checks. */
bool scram_client_verify(struct scram_client *c, const uint8_t *msg, size_t len, char *err, size_t errlen);

/* ---------------------------------------------------------------- md5 and helpers */

/* PostgreSQL's md5 password response: "md5" + hex(md5(hex(md5(password || user)) || salt[4])). */
void auth_md5_response(const char *password, const char *user, const uint8_t salt[4], char out[36]);

/*
 * The tls-server-end-point hash of a DER certificate: SHA-256 when it was signed with MD5, SHA-1 or
 * SHA-256, otherwise the hash of its own signature algorithm.  Returns the hash length, or 0.
 * (Takes an X509 * as void * so this header stays free of OpenSSL includes.)
 */
size_t scram_cert_endpoint_hash(const void *x509, uint8_t *out, size_t outlen);

/* ---------------------------------------------------------------- for tests only */

/* Replace the random nonce of an exchange that has not started, so tests can replay RFC 7677's
 * messages.  The nonce must be 1..64 printable ASCII characters other than ','; false otherwise. */
bool scram_server_set_nonce(struct scram_server *s, const char *nonce);
bool scram_client_set_nonce(struct scram_client *c, const char *nonce);

#endif
