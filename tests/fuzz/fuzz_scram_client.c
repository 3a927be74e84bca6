/*
 * fuzz_scram_client: pglane as the SCRAM client that logs in to an instance, fed arbitrary server
 * messages: scram_client_first() with an arbitrary mechanism list, scram_client_final() with an arbitrary
 * server-first-message and scram_client_verify() with an arbitrary server-final-message.  An instance (or
 * whoever answers in its place before TLS is checked) is not trusted to send well-formed messages.
 *
 * Input: byte 0 holds flags, byte 1 the length L of the mechanism list that follows (AuthenticationSASL's
 * body), then server-first-message NUL server-final-message.
 *   bit 0  channel binding data is given (the instance connection is TLS)
 *   bit 1  a salted-password cache shared across inputs is used
 *   bit 2  small output buffers (bits 5-7 then pick their sizes)
 * Inputs whose i= asks for more than FUZZ_MAX_ITERATIONS are skipped: they cost PBKDF2 time, not coverage
 * (iterations_parse() caps the count at 10 000 000).
 *
 * Properties checked beyond memory safety:
 *   - the mechanism chosen is -PLUS exactly when channel binding data is given and the server offers it;
 *     with data but no -PLUS offer the gs2 header is "y,,"; without data it is "n,,"; a list that is not
 *     terminated by an empty name is refused;
 *   - scram_client_final() succeeds only for "r=NONCE,s=SALT,i=N" where NONCE extends ours, and then its
 *     client-final-message is exactly the reference's (c=, r=, p= computed from the password);
 *   - scram_client_verify() succeeds only when v= decodes to the reference server signature;
 *   - every output fits its buffer; nothing succeeds out of order.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "auth/scram.h"
#include "tests/fuzz/fuzz_common.h"
#include "tests/fuzz/fuzz_scram_ref.h"

#define FUZZ_MAX_ITERATIONS 5000

static struct scram_cache *cache;
static const uint8_t cbind_data[48] = {0xc0, 0xff, 0xee, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,
				       14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29,
				       30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	cache = scram_cache_new();
	if (!cache)
		abort();
	return 0;
}

/* The i= value in a server-first-message, saturated; 0 when there is none. */
static unsigned long iterations_in(const uint8_t *m, size_t len)
{
	unsigned long best = 0;

	for (size_t i = 0; i + 1 < len; i++) {
		if (m[i] == 'i' && m[i + 1] == '=' && (i == 0 || m[i - 1] == ',')) {
			unsigned long v = 0;
			for (size_t k = i + 2; k < len && m[k] >= '0' && m[k] <= '9'; k++)
				v = v > 100000000ul ? v : v * 10 + (m[k] - '0');
			if (v > best)
				best = v;
		}
	}
	return best;
}

/* What the reference expects of scram_client_first(): the mechanism, or NULL for a refusal. */
static const char *expected_mech(const uint8_t *mechs, size_t len, bool cb)
{
	bool plain = false, plus = false;
	size_t i = 0;

	for (;;) {
		const uint8_t *nul = i < len ? memchr(mechs + i, 0, len - i) : NULL;
		if (!nul)
			return NULL;
		if (nul == mechs + i)
			break;
		plain |= strcmp((const char *)mechs + i, "SCRAM-SHA-256") == 0;
		plus |= strcmp((const char *)mechs + i, "SCRAM-SHA-256-PLUS") == 0;
		i = (size_t)(nul - mechs) + 1;
	}
	if (plus && cb)
		return "SCRAM-SHA-256-PLUS";
	return plain ? "SCRAM-SHA-256" : NULL;
}

/*
 * After scram_client_final() succeeded on server-first sf: the reference client-final-message, and the
 * server signature into server_sig.  Aborts when sf is not what the client may accept.
 */
static void reference_final(const char *gs2, bool plus, const char *sf, size_t sflen, const char *client_out,
			    uint8_t server_sig[REF_KEY_LEN])
{
	const char *c1 = memchr(sf, ',', sflen), *c2;
	FUZZ_CHECK(c1 != NULL, "accepted a server-first without ','");
	c2 = memchr(c1 + 1, ',', sflen - (size_t)(c1 + 1 - sf));
	FUZZ_CHECK(c2 != NULL && memchr(c2 + 1, ',', sflen - (size_t)(c2 + 1 - sf)) == NULL,
		   "accepted a server-first without exactly three attributes");
	FUZZ_CHECK(sflen > 2 && memcmp(sf, "r=", 2) == 0 && memcmp(c1, ",s=", 3) == 0 && memcmp(c2, ",i=", 3) == 0,
		   "accepted attributes other than r, s, i");
	size_t noncelen = (size_t)(c1 - sf - 2);
	FUZZ_CHECK(noncelen > strlen(REF_CNONCE) && memcmp(sf + 2, REF_CNONCE, strlen(REF_CNONCE)) == 0,
		   "accepted a nonce that does not extend ours");
	for (size_t i = 0; i < noncelen; i++)
		FUZZ_CHECK(sf[2 + i] > 0x20 && sf[2 + i] < 0x7f, "accepted an unprintable nonce");
	uint8_t salt[128];
	size_t saltlen;
	FUZZ_CHECK(ref_b64_decode(c1 + 3, (size_t)(c2 - c1 - 3), salt, sizeof salt, &saltlen), "salt not base64");
	FUZZ_CHECK(saltlen <= 64, "accepted a salt of %zu bytes", saltlen);
	unsigned long iter = 0;
	const char *d = c2 + 3, *end = sf + sflen;
	FUZZ_CHECK(d < end, "empty i=");
	for (; d < end; d++) {
		FUZZ_CHECK(*d >= '0' && *d <= '9', "i= is not decimal");
		iter = iter * 10 + (unsigned long)(*d - '0');
		FUZZ_CHECK(iter <= 10000000ul, "accepted i= over 10000000");
	}
	FUZZ_CHECK(iter >= 1, "accepted i=0");

	/* The reference's keys, remembered for the last salt and count (PBKDF2 dominates the run time). */
	static uint8_t last_salt[128], ck[REF_KEY_LEN], sk[REF_KEY_LEN], svk[REF_KEY_LEN];
	static size_t last_saltlen = SIZE_MAX;
	static unsigned long last_iter;
	uint8_t proof[REF_KEY_LEN];
	if (saltlen != last_saltlen || iter != last_iter || memcmp(salt, last_salt, saltlen) != 0) {
		ref_keys(REF_PASSWORD, salt, saltlen, (int)iter, ck, sk, svk);
		memcpy(last_salt, salt, saltlen);
		last_saltlen = saltlen;
		last_iter = iter;
	}

	/* client-final-message-without-proof: c=base64(gs2 [+ cbind]),r=nonce */
	uint8_t cb[128];
	size_t cblen = strlen(gs2);
	memcpy(cb, gs2, cblen);
	if (plus) {
		memcpy(cb + cblen, cbind_data, sizeof cbind_data);
		cblen += sizeof cbind_data;
	}
	char *want = malloc(4 * SCRAM_MSG_MAX);
	char *auth = malloc(4 * SCRAM_MSG_MAX);
	if (!want || !auth)
		abort();
	memcpy(want, "c=", 2);
	ref_b64_encode(cb, cblen, want + 2);
	size_t wl = strlen(want);
	memcpy(want + wl, ",r=", 3);
	memcpy(want + wl + 3, sf + 2, noncelen);
	wl += 3 + noncelen;
	want[wl] = '\0';
	/* AuthMessage: client-first-bare "n=,r=CNONCE" (PostgreSQL style) , server-first , without-proof */
	int al = snprintf(auth, 4 * SCRAM_MSG_MAX, "n=,r=%s,%.*s,%s", REF_CNONCE, (int)sflen, sf, want);
	ref_proof(ck, sk, svk, auth, (size_t)al, proof, server_sig);
	memcpy(want + wl, ",p=", 3);
	ref_b64_encode(proof, REF_KEY_LEN, want + wl + 3);
	FUZZ_CHECK(strcmp(client_out, want) == 0, "client-final \"%s\", reference \"%s\"", client_out, want);
	free(want);
	free(auth);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char mech[32], out1[SCRAM_MSG_MAX], out2[SCRAM_MSG_MAX], err[256];
	size_t used1 = 0, used2 = 0;

	if (size < 2)
		return 0;
	uint8_t flags = data[0];
	bool cb = flags & 1, small = flags & 4;
	size_t mlen = data[1];
	if (mlen > size - 2)
		mlen = size - 2;
	uint8_t *mechs = fuzz_dup(data + 2, mlen);
	const uint8_t *rest = data + 2 + mlen;
	size_t restlen = size - 2 - mlen;
	const uint8_t *sep = memchr(rest, 0, restlen);
	size_t sf_len = sep ? (size_t)(sep - rest) : restlen;
	size_t sfin_len = sep ? restlen - sf_len - 1 : 0;
	if (iterations_in(rest, sf_len) > FUZZ_MAX_ITERATIONS) {
		free(mechs);
		return 0;
	}
	uint8_t *sf = fuzz_dup(rest, sf_len);
	uint8_t *sfin = fuzz_dup(sep ? sep + 1 : rest, sfin_len);
	size_t out1len = small ? 1 + ((flags >> 5) & 7) * 8 : sizeof out1;
	size_t out2len = small ? 1 + ((flags >> 5) & 7) * 24 : sizeof out2;
	size_t mechlen = small ? 1 + ((flags >> 5) & 7) * 3 : sizeof mech;

	struct scram_client *c = scram_client_new(REF_PASSWORD, (flags & 2) ? cache : NULL);
	if (!c)
		abort();
	FUZZ_CHECK(scram_client_set_nonce(c, REF_CNONCE), "set_nonce");
	FUZZ_CHECK(!scram_client_final(c, sf, sf_len, out2, sizeof out2, &used2, err, sizeof err),
		   "final accepted before first");
	scram_client_free(c);
	c = scram_client_new(REF_PASSWORD, (flags & 2) ? cache : NULL);
	if (!c)
		abort();
	FUZZ_CHECK(scram_client_set_nonce(c, REF_CNONCE), "set_nonce");

	const char *want_mech = expected_mech(mechs, mlen, cb);
	err[0] = '\0';
	bool ok1 = scram_client_first(c, mechs, mlen, cb ? cbind_data : NULL, cb ? sizeof cbind_data : 0, mech, mechlen,
				      out1, out1len, &used1, err, sizeof err);
	FUZZ_NOTE("client_first: %s %s", ok1 ? "ok" : "refused", ok1 ? out1 : err);
	if (!ok1) {
		FUZZ_CHECK(err[0] != '\0', "first failed without a message");
		FUZZ_CHECK(want_mech == NULL || small, "refused a list offering %s: %s", want_mech ? want_mech : "-", err);
		goto done;
	}
	FUZZ_CHECK(want_mech != NULL && strcmp(mech, want_mech) == 0, "chose %s, reference %s", mech,
		   want_mech ? want_mech : "refusal");
	bool plus = strcmp(mech, "SCRAM-SHA-256-PLUS") == 0;
	const char *gs2 = plus ? "p=tls-server-end-point,," : cb ? "y,," : "n,,";
	char want1[128];
	snprintf(want1, sizeof want1, "%sn=,r=%s", gs2, REF_CNONCE);
	FUZZ_CHECK(used1 == strlen(out1) && used1 < out1len && strcmp(out1, want1) == 0, "client-first \"%s\"", out1);

	err[0] = '\0';
	bool ok2 = scram_client_final(c, sf, sf_len, out2, out2len, &used2, err, sizeof err);
	FUZZ_NOTE("client_final: %s %s", ok2 ? "ok" : "refused", ok2 ? out2 : err);
	if (!ok2) {
		FUZZ_CHECK(err[0] != '\0', "final failed without a message");
		goto done;
	}
	FUZZ_CHECK(used2 == strlen(out2) && used2 < out2len, "client-final length %zu of %zu", used2, out2len);
	uint8_t server_sig[REF_KEY_LEN];
	reference_final(gs2, plus, (const char *)sf, sf_len, out2, server_sig);

	err[0] = '\0';
	bool ok3 = scram_client_verify(c, sfin, sfin_len, err, sizeof err);
	FUZZ_NOTE("client_verify: %s %s", ok3 ? "ok" : "refused", ok3 ? "" : err);
	if (ok3) {
		uint8_t got[64];
		size_t gotlen;
		FUZZ_CHECK(sfin_len > 2 && memcmp(sfin, "v=", 2) == 0 &&
				   ref_b64_decode((const char *)sfin + 2, sfin_len - 2, got, sizeof got, &gotlen) &&
				   gotlen == REF_KEY_LEN && memcmp(got, server_sig, REF_KEY_LEN) == 0,
			   "accepted a server signature the reference does not compute");
	} else {
		FUZZ_CHECK(err[0] != '\0', "verify failed without a message");
		FUZZ_CHECK(fuzz_no_controls(err), "error text holds a control character");
	}
	FUZZ_CHECK(!scram_client_verify(c, sfin, sfin_len, err, sizeof err), "verified twice");
done:
	scram_client_free(c);
	free(mechs);
	free(sf);
	free(sfin);
	return 0;
}
