/*
 * fuzz_scram_ref: a second, deliberately plain SCRAM-SHA-256 computation (RFC 5802 section 3) that the
 * SCRAM harnesses compare auth/scram.c against: when pglane accepts a proof or a server signature, the
 * bytes it accepted must be the ones this reference computes from the messages actually exchanged.
 */
#ifndef PGLANE_FUZZ_SCRAM_REF_H
#define PGLANE_FUZZ_SCRAM_REF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#define REF_KEY_LEN 32

/* RFC 7677 section 3: password "pencil", this salt, 4096 iterations, these nonces. */
#define REF_PASSWORD "pencil"
#define REF_SALT_B64 "W22ZaJ0SNY7soEsUEjb6gQ=="
#define REF_CNONCE "rOprNGfwEbeRWgbNEkqO"
#define REF_SNONCE "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
#define REF_ITERATIONS 4096

/* Strict standard base64 with padding; false for anything else or more than outmax bytes. */
static inline bool ref_b64_decode(const char *in, size_t len, uint8_t *out, size_t outmax, size_t *outlen)
{
	static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t o = 0;

	if (len == 0 || len % 4 != 0)
		return false;
	for (size_t i = 0; i < len; i += 4) {
		int v[4];
		int pad = 0;
		for (int k = 0; k < 4; k++) {
			char ch = in[i + k];
			const char *pos = ch ? strchr(alpha, ch) : NULL;
			if (ch == '=' && i + 4 == len && k >= 2) {
				v[k] = 0;
				pad++;
				continue;
			}
			if (pos == NULL || pad > 0)
				return false;
			v[k] = (int)(pos - alpha);
		}
		uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
		uint8_t b[3] = {(uint8_t)(w >> 16), (uint8_t)(w >> 8), (uint8_t)w};
		for (int k = 0; k < 3 - pad; k++) {
			if (o == outmax)
				return false;
			out[o++] = b[k];
		}
	}
	*outlen = o;
	return true;
}

static inline void ref_b64_encode(const uint8_t *in, size_t len, char *out)
{
	EVP_EncodeBlock((unsigned char *)out, in, (int)len);
}

static inline void ref_hmac(const uint8_t *key, size_t keylen, const void *msg, size_t len, uint8_t out[REF_KEY_LEN])
{
	unsigned int n = REF_KEY_LEN;

	if (!HMAC(EVP_sha256(), key, (int)keylen, msg, len, out, &n))
		abort();
}

/* ClientKey, StoredKey, ServerKey for password, salt and iterations. */
static inline void ref_keys(const char *password, const uint8_t *salt, size_t saltlen, int iterations,
			    uint8_t client_key[REF_KEY_LEN], uint8_t stored_key[REF_KEY_LEN],
			    uint8_t server_key[REF_KEY_LEN])
{
	uint8_t salted[REF_KEY_LEN];

	if (PKCS5_PBKDF2_HMAC(password, (int)strlen(password), salt, (int)saltlen, iterations, EVP_sha256(),
			      REF_KEY_LEN, salted) != 1)
		abort();
	ref_hmac(salted, REF_KEY_LEN, "Client Key", 10, client_key);
	SHA256(client_key, REF_KEY_LEN, stored_key);
	ref_hmac(salted, REF_KEY_LEN, "Server Key", 10, server_key);
}

/* ClientProof and ServerSignature for an AuthMessage. */
static inline void ref_proof(const uint8_t client_key[REF_KEY_LEN], const uint8_t stored_key[REF_KEY_LEN],
			     const uint8_t server_key[REF_KEY_LEN], const char *auth, size_t auth_len,
			     uint8_t proof[REF_KEY_LEN], uint8_t server_sig[REF_KEY_LEN])
{
	uint8_t client_sig[REF_KEY_LEN];

	ref_hmac(stored_key, REF_KEY_LEN, auth, auth_len, client_sig);
	for (size_t i = 0; i < REF_KEY_LEN; i++)
		proof[i] = client_key[i] ^ client_sig[i];
	ref_hmac(server_key, REF_KEY_LEN, auth, auth_len, server_sig);
}

#endif
