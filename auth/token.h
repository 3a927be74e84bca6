/*
 * token: the per-timeline password.  pglane stores one secret per app and derives every timeline's
 * password from it, so no per-branch secret is ever stored anywhere:
 *
 *   token = "pgl_" + base64url_nopad( HMAC-SHA-256(key = app secret,
 *                                                  msg = "pglane-token-v1" NUL app NUL timeline_key) )
 *
 * timeline_key is "production", "preview" or "branch:NAME" (routing/timeline.h, timeline_key()).
 * The token is URL-safe (no percent-encoding needed in DATABASE_URL) and 47 characters long.
 */
#ifndef PGLANE_TOKEN_H
#define PGLANE_TOKEN_H

#include <stdbool.h>
#include <stddef.h>

#define AUTH_TOKEN_LEN 47 /* characters, without the terminating NUL */

/* Writes the token into out (at least AUTH_TOKEN_LEN + 1 bytes).  Returns false only if out is too small
 * or OpenSSL fails. */
bool auth_token_derive(const char *secret, const char *app, const char *timeline_key, char *out, size_t outlen);

/* Constant-time comparison of a presented password with the expected token (CRYPTO_memcmp). */
bool auth_token_equal(const char *presented, const char *expected);

#endif
