/*
 * token: derives a timeline's password from its app's secret (the formula is in token.h) and compares a
 * presented password with it in constant time.  The HMAC runs through OpenSSL's EVP_MAC so the three
 * parts of the message are fed in turn, with no buffer to size for arbitrary app and timeline names.
 */
#include "auth/token.h"

#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#define TOKEN_PREFIX "pgl_"
#define TOKEN_LABEL  "pglane-token-v1"

/* HMAC-SHA-256(secret, label NUL app NUL timeline_key) into mac. */
static bool token_hmac(const char *secret, const char *app, const char *timeline_key, unsigned char mac[32])
{
	OSSL_PARAM params[] = {
	    OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
	    OSSL_PARAM_construct_end(),
	};
	EVP_MAC *hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	EVP_MAC_CTX *ctx = hmac ? EVP_MAC_CTX_new(hmac) : NULL;
	size_t maclen = 0;
	bool ok = ctx && EVP_MAC_init(ctx, (const unsigned char *)secret, strlen(secret), params) &&
	          EVP_MAC_update(ctx, (const unsigned char *)TOKEN_LABEL, sizeof TOKEN_LABEL) &&
	          EVP_MAC_update(ctx, (const unsigned char *)app, strlen(app) + 1) &&
	          EVP_MAC_update(ctx, (const unsigned char *)timeline_key, strlen(timeline_key)) &&
	          EVP_MAC_final(ctx, mac, &maclen, 32) && maclen == 32;

	EVP_MAC_CTX_free(ctx);
	EVP_MAC_free(hmac);
	return ok;
}

bool auth_token_derive(const char *secret, const char *app, const char *timeline_key, char *out,
                       size_t outlen)
{
	unsigned char mac[32];
	char b64[45]; /* 32 bytes are 44 base64 characters, the last one '=' */
	const size_t prefix = strlen(TOKEN_PREFIX);

	if (outlen < AUTH_TOKEN_LEN + 1 || !token_hmac(secret, app, timeline_key, mac))
		return false;
	EVP_EncodeBlock((unsigned char *)b64, mac, sizeof mac);
	OPENSSL_cleanse(mac, sizeof mac);

	/* base64url without padding: the same alphabet with '-' and '_' for '+' and '/'. */
	memcpy(out, TOKEN_PREFIX, prefix);
	for (size_t i = 0; i < AUTH_TOKEN_LEN - prefix; i++)
		out[prefix + i] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : b64[i];
	out[AUTH_TOKEN_LEN] = '\0';
	OPENSSL_cleanse(b64, sizeof b64);
	return true;
}

bool auth_token_equal(const char *presented, const char *expected)
{
	size_t n;

	if (presented == NULL || expected == NULL)
		return false;
	/* Token lengths are public (always AUTH_TOKEN_LEN), so checking the length first leaks nothing. */
	n = strlen(expected);
	return strlen(presented) == n && CRYPTO_memcmp(presented, expected, n) == 0;
}
