/*
 * fuzz_scram_server: pglane as the SCRAM server an app logs in to, fed arbitrary client messages:
 * scram_server_first() and scram_server_final() against a fixed secret (RFC 7677's "pencil"), with and
 * without channel binding data.
 *
 * Input: byte 0 holds flags, the rest is client-first-message NUL client-final-message.
 *   bit 0     the connection is TLS: channel binding data is given and -PLUS is offered
 *   bits 1-2  the mechanism the client names: SCRAM-SHA-256, SCRAM-SHA-256-PLUS, none (NULL), SCRAM-SHA-1
 *   bit 3     the server nonce is RFC 7677's (scram_server_set_nonce), so a real proof can be replayed
 *   bit 4     split at the second NUL instead of the first (a first message holding a NUL)
 *   bit 5     small output buffers (bits 6-7 then pick their sizes)
 *   bits 4, 6, 7 all set (without bit 5): a final message before the first, which must fail
 *
 * Properties checked beyond memory safety:
 *   - the server-first-message is "r=" client nonce + server nonce ",s=" salt ",i=4096";
 *   - SCRAM-SHA-256-PLUS is never accepted without channel binding data, and with it a client that says
 *     "y" (a downgrade) is refused;
 *   - scram_server_final() succeeds only when the proof is the one the reference computes from the
 *     messages exchanged and the password, the c= attribute carries the gs2 header (and our certificate
 *     hash with -PLUS), and the nonce is the combined one; then "v=" carries the reference server
 *     signature.  With a random server nonce it can never succeed;
 *   - an exchange never succeeds twice or out of order.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "auth/scram.h"
#include "tests/fuzz/fuzz_common.h"
#include "tests/fuzz/fuzz_scram_ref.h"

static struct scram_secret secret;
static uint8_t client_key[REF_KEY_LEN], stored_key[REF_KEY_LEN], server_key[REF_KEY_LEN];
static const uint8_t cbind_data[32] = {0x5a, 0x11, 0xe0, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
				       0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13,
				       0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d};
static const char *const mechs[] = {"SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", NULL, "SCRAM-SHA-1"};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	uint8_t salt[64];
	size_t saltlen;

	if (!ref_b64_decode(REF_SALT_B64, strlen(REF_SALT_B64), salt, sizeof salt, &saltlen) ||
	    !scram_secret_make(REF_PASSWORD, salt, saltlen, REF_ITERATIONS, &secret))
		abort();
	ref_keys(REF_PASSWORD, salt, saltlen, REF_ITERATIONS, client_key, stored_key, server_key);
	FUZZ_CHECK(memcmp(stored_key, secret.stored_key, REF_KEY_LEN) == 0, "scram_secret_make's StoredKey");
	FUZZ_CHECK(memcmp(server_key, secret.server_key, REF_KEY_LEN) == 0, "scram_secret_make's ServerKey");
	return 0;
}

/*
 * After a successful scram_server_final(): the reference view of the exchange.  first/final are the
 * client's messages, server_first and server_final the server's.
 */
static void check_success(bool tls, bool plus, const char *first, size_t first_len, const char *server_first,
			  const char *final, size_t final_len, const char *server_final)
{
	char expect_gs2[64];
	const char *bare;
	size_t gs2_len;

	/* gs2 header: everything up to and including the second ','. */
	const char *c1 = memchr(first, ',', first_len);
	FUZZ_CHECK(c1 != NULL, "accepted a client-first without ','");
	const char *c2 = memchr(c1 + 1, ',', first_len - (size_t)(c1 + 1 - first));
	FUZZ_CHECK(c2 != NULL, "accepted a client-first with one ','");
	bare = c2 + 1;
	gs2_len = (size_t)(bare - first);
	FUZZ_CHECK(gs2_len < sizeof expect_gs2, "gs2 header of %zu bytes", gs2_len);
	memcpy(expect_gs2, first, gs2_len);
	expect_gs2[gs2_len] = '\0';
	if (plus)
		FUZZ_CHECK(tls && strcmp(expect_gs2, "p=tls-server-end-point,,") == 0, "-PLUS accepted with \"%s\"",
			   expect_gs2);
	else
		FUZZ_CHECK(strcmp(expect_gs2, "n,,") == 0 || (!tls && strcmp(expect_gs2, "y,,") == 0),
			   "SCRAM-SHA-256 accepted with gs2 header \"%s\" (tls %d)", expect_gs2, tls);

	/* client-final: c=CB,r=NONCE,p=PROOF with no other attribute. */
	FUZZ_CHECK(final_len > 2 && memcmp(final, "c=", 2) == 0, "final without c=");
	const char *comma = memchr(final, ',', final_len);
	FUZZ_CHECK(comma != NULL, "final without ','");
	uint8_t cb[256];
	size_t cblen;
	FUZZ_CHECK(ref_b64_decode(final + 2, (size_t)(comma - final - 2), cb, sizeof cb, &cblen), "c= not base64");
	FUZZ_CHECK(cblen == gs2_len + (plus ? sizeof cbind_data : 0) && memcmp(cb, first, gs2_len) == 0 &&
			   (!plus || memcmp(cb + gs2_len, cbind_data, sizeof cbind_data) == 0),
		   "c= does not carry the gs2 header%s", plus ? " and the certificate hash" : "");
	const char *last = NULL;
	for (const char *q = final; q < final + final_len; q++)
		if (*q == ',')
			last = q;
	FUZZ_CHECK(last != NULL && last != comma && final + final_len - last > 3 && memcmp(last, ",p=", 3) == 0,
		   "final does not end in ,p=");
	FUZZ_CHECK(memcmp(comma, ",r=", 3) == 0, "second attribute is not r=");
	size_t noncelen = (size_t)(last - (comma + 3));
	/* server-first starts with "r=" and the combined nonce, up to ",s=". */
	const char *sf_end = strstr(server_first, ",s=");
	FUZZ_CHECK(sf_end != NULL, "server-first without ,s=");
	FUZZ_CHECK(noncelen == (size_t)(sf_end - server_first - 2) && memcmp(comma + 3, server_first + 2, noncelen) == 0,
		   "accepted a nonce that is not the combined one");

	/* The proof, recomputed from the messages and the password. */
	size_t bare_len = first_len - gs2_len, wp_len = (size_t)(last - final);
	size_t auth_len = bare_len + 1 + strlen(server_first) + 1 + wp_len;
	char *auth = malloc(auth_len);
	uint8_t proof[REF_KEY_LEN], server_sig[REF_KEY_LEN], got[64];
	size_t gotlen;
	if (!auth)
		abort();
	memcpy(auth, bare, bare_len);
	auth[bare_len] = ',';
	memcpy(auth + bare_len + 1, server_first, strlen(server_first));
	auth[bare_len + 1 + strlen(server_first)] = ',';
	memcpy(auth + bare_len + 2 + strlen(server_first), final, wp_len);
	ref_proof(client_key, stored_key, server_key, auth, auth_len, proof, server_sig);
	free(auth);
	FUZZ_CHECK(ref_b64_decode(last + 3, (size_t)(final + final_len - last - 3), got, sizeof got, &gotlen) &&
			   gotlen == REF_KEY_LEN && memcmp(got, proof, REF_KEY_LEN) == 0,
		   "accepted a proof the reference does not compute");
	char want_final[64] = "v=";
	ref_b64_encode(server_sig, REF_KEY_LEN, want_final + 2);
	FUZZ_CHECK(strcmp(server_final, want_final) == 0, "server-final \"%s\", reference \"%s\"", server_final,
		   want_final);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char out1[SCRAM_MSG_MAX], out2[SCRAM_MSG_MAX], err[256];
	if (size < 1)
		return 0;
	uint8_t flags = data[0];
	bool tls = flags & 1, fixed_nonce = flags & 8, small = flags & 32;
	const char *mech = mechs[(flags >> 1) & 3];
	const uint8_t *rest = data + 1;
	size_t restlen = size - 1;

	/* Split into the two client messages. */
	const uint8_t *sep = memchr(rest, 0, restlen);
	if (sep && (flags & 16)) {
		const uint8_t *sep2 = memchr(sep + 1, 0, restlen - (size_t)(sep + 1 - rest));
		sep = sep2;
	}
	size_t first_len = sep ? (size_t)(sep - rest) : restlen;
	size_t final_len = sep ? restlen - first_len - 1 : 0;
	uint8_t *first = fuzz_dup(rest, first_len);
	uint8_t *final = fuzz_dup(sep ? sep + 1 : rest, final_len);
	size_t out1len = small ? 1 + (flags >> 6) * 40 : sizeof out1;
	size_t out2len = small ? 1 + (flags >> 6) * 20 : sizeof out2;

	struct scram_server *s = scram_server_new(&secret, tls ? cbind_data : NULL, tls ? sizeof cbind_data : 0);
	if (!s)
		abort();
	if (fixed_nonce)
		FUZZ_CHECK(scram_server_set_nonce(s, REF_SNONCE), "set_nonce");

	/* Out of order: a final before the first must fail and poison nothing it should not. */
	if ((flags & 0xD0) == 0xD0 && !small) {
		FUZZ_CHECK(!scram_server_final(s, final, final_len, out2, sizeof out2, err, sizeof err),
			   "final accepted before first");
		scram_server_free(s);
		free(first);
		free(final);
		return 0;
	}

	err[0] = '\0';
	bool ok1 = scram_server_first(s, mech, first, first_len, out1, out1len, err, sizeof err);
	FUZZ_NOTE("server_first: %s %s", ok1 ? "ok" : "refused", ok1 ? out1 : err);
	if (!ok1) {
		FUZZ_CHECK(err[0] != '\0', "first failed without a message");
	} else {
		bool plus = mech && strcmp(mech, "SCRAM-SHA-256-PLUS") == 0;
		FUZZ_CHECK(mech != NULL && (strcmp(mech, "SCRAM-SHA-256") == 0 || (plus && tls)),
			   "mechanism %s accepted (tls %d)", mech ? mech : "(null)", tls);
		FUZZ_CHECK(!(tls && !plus && first_len > 0 && first[0] == 'y'), "channel binding downgrade accepted");
		FUZZ_CHECK(!(!plus && first_len > 0 && first[0] == 'p'), "channel binding data without -PLUS accepted");
		FUZZ_CHECK(strlen(out1) < out1len, "server-first overflows its buffer");
		FUZZ_CHECK(strncmp(out1, "r=", 2) == 0 && strstr(out1, ",s=" REF_SALT_B64 ",i=4096") != NULL,
			   "server-first \"%s\"", out1);
		if (fixed_nonce) {
			const char *s_at = strstr(out1, REF_SNONCE ",s=");
			FUZZ_CHECK(s_at != NULL, "server-first lacks our nonce");
		}

		err[0] = '\0';
		bool ok2 = scram_server_final(s, final, final_len, out2, out2len, err, sizeof err);
		FUZZ_NOTE("server_final: %s %s", ok2 ? "ok" : "refused", ok2 ? out2 : err);
		if (!ok2) {
			FUZZ_CHECK(err[0] != '\0', "final failed without a message");
		} else {
			FUZZ_CHECK(fixed_nonce, "a proof against a random server nonce was accepted");
			FUZZ_CHECK(strlen(out2) < out2len, "server-final overflows its buffer");
			check_success(tls, plus, (const char *)first, first_len, out1, (const char *)final, final_len, out2);
		}
		/* Never twice. */
		FUZZ_CHECK(!scram_server_final(s, final, final_len, out2, sizeof out2, err, sizeof err),
			   "a second final accepted");
	}
	FUZZ_CHECK(!scram_server_first(s, mech, first, first_len, out1, sizeof out1, err, sizeof err),
		   "a second first accepted");
	scram_server_free(s);
	free(first);
	free(final);
	return 0;
}
