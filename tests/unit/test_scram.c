/*
 * test_scram: SCRAM-SHA-256(-PLUS) on both sides, the salted-password cache, md5 and the
 * tls-server-end-point hash.  The RFC 7677 section 3 exchange is replayed byte for byte through the
 * server.  PostgreSQL clients send "n=" where the RFC sends "n=user", which changes the AuthMessage, so
 * the client's known answers for the same password, salt and nonces were computed independently with
 * Python (hashlib.pbkdf2_hmac and hmac), as was the md5 answer.  Hostile input comes in tables: each
 * row names the words its error must contain, so a row cannot pass by failing for another reason.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "auth/scram.h"

#define PLAIN "SCRAM-SHA-256"
#define PLUS  "SCRAM-SHA-256-PLUS"
#define M(s)  s, sizeof(s) - 1 /* a literal and its length, embedded NULs included */

#define RFC_CNONCE       "rOprNGfwEbeRWgbNEkqO"
#define RFC_SNONCE       "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
#define RFC_NONCE        RFC_CNONCE RFC_SNONCE
#define RFC_SERVER_FIRST "r=" RFC_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
#define RFC_PROOF        "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
#define RFC_CLIENT_FINAL "c=biws,r=" RFC_NONCE ",p=" RFC_PROOF
#define RFC_SERVER_FINAL "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
/* The same exchange with "n=" instead of "n=user" (Python). */
#define PG_CLIENT_FINAL "c=biws,r=" RFC_NONCE ",p=qvT2SWdEH5Q06albL+hjSYuUhCG7VndFyzIb7CK4n9k="
#define PG_SERVER_FINAL "v=3HO6Qt1M4MKJrmlKaoOqLAI0/0TV0HZe7J9H3MBtSOg="
/* base64("p=tls-server-end-point,," + cert_hash) and the same with other_hash. */
#define CBIND_OK    "cD10bHMtc2VydmVyLWVuZC1wb2ludCwsAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define CBIND_OTHER "cD10bHMtc2VydmVyLWVuZC1wb2ludCwsAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="

static const uint8_t rfc_salt[SCRAM_SALT_LEN] = {0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e,
                                                 0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36, 0xfa, 0x81};
static const uint8_t cert_hash[32] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15,
                                      16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31};
static const uint8_t other_hash[32] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16,
                                       17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
static const char mechs_plain[] = PLAIN "\0"; /* with the literal's NUL: the wire list */
static const char mechs_both[] = PLUS "\0" PLAIN "\0";

static struct scram_secret rfc_secret; /* "pencil" with the RFC's salt and count, made once */

static int secret_setup(void **state)
{
	return scram_secret_make("pencil", rfc_salt, sizeof rfc_salt, 4096, &rfc_secret) ? 0 : -1;
}

/* Checks one row's outcome: success when want is NULL, otherwise failure with want in err. */
static void check_outcome(const char *name, bool ok, const char *err, const char *want)
{
	if (want == NULL && !ok)
		fail_msg("%s: refused: %s", name, err);
	if (want != NULL && ok)
		fail_msg("%s: accepted", name);
	if (want != NULL && strstr(err, want) == NULL)
		fail_msg("%s: error \"%s\" does not say \"%s\"", name, err, want);
}

/* A row's message: the literal followed by pad bytes of 'a' (to build oversized messages). */
static uint8_t *message_build(const char *msg, size_t len, size_t pad, size_t *total)
{
	uint8_t *buf = malloc(len + pad + 1);

	assert_non_null(buf);
	memcpy(buf, msg, len);
	memset(buf + len, 'a', pad);
	*total = len + pad;
	return buf;
}

/* A server for the RFC's password, salt and server nonce; with cert_hash as its channel binding data
 * when tls. */
static struct scram_server *rfc_server_new(bool tls)
{
	struct scram_server *s = scram_server_new(&rfc_secret, tls ? cert_hash : NULL, sizeof cert_hash);

	assert_non_null(s);
	assert_true(scram_server_set_nonce(s, RFC_SNONCE));
	return s;
}

static void test_rfc7677_server(void **state)
{
	struct scram_server *s = rfc_server_new(false);
	char out[SCRAM_MSG_MAX], err[256] = "";

	assert_true(scram_server_first(s, PLAIN, (const uint8_t *)M("n,,n=user,r=" RFC_CNONCE), out,
	                               sizeof out, err, sizeof err));
	assert_string_equal(out, RFC_SERVER_FIRST);
	assert_true(
	    scram_server_final(s, (const uint8_t *)M(RFC_CLIENT_FINAL), out, sizeof out, err, sizeof err));
	assert_string_equal(out, RFC_SERVER_FINAL);
	scram_server_free(s);
}

/* Our client against our server, both with the RFC's nonces, and each message against Python's. */
static void test_rfc7677_client(void **state)
{
	struct scram_server *s = rfc_server_new(false);
	struct scram_client *c = scram_client_new("pencil", NULL);
	char mech[32], cmsg[SCRAM_MSG_MAX], smsg[SCRAM_MSG_MAX], err[256] = "";
	size_t used;

	assert_non_null(c);
	assert_true(scram_client_set_nonce(c, RFC_CNONCE));
	assert_true(scram_client_first(c, (const uint8_t *)mechs_plain, sizeof mechs_plain, NULL, 0, mech,
	                               sizeof mech, cmsg, sizeof cmsg, &used, err, sizeof err));
	assert_string_equal(mech, PLAIN);
	assert_string_equal(cmsg, "n,,n=,r=" RFC_CNONCE);
	assert_int_equal(used, strlen(cmsg));
	assert_true(
	    scram_server_first(s, mech, (const uint8_t *)cmsg, used, smsg, sizeof smsg, err, sizeof err));
	assert_string_equal(smsg, RFC_SERVER_FIRST);
	assert_true(scram_client_final(c, (const uint8_t *)smsg, strlen(smsg), cmsg, sizeof cmsg, &used, err,
	                               sizeof err));
	assert_string_equal(cmsg, PG_CLIENT_FINAL);
	assert_int_equal(used, strlen(cmsg));
	assert_true(scram_server_final(s, (const uint8_t *)cmsg, used, smsg, sizeof smsg, err, sizeof err));
	assert_string_equal(smsg, PG_SERVER_FINAL);
	assert_true(scram_client_verify(c, (const uint8_t *)smsg, strlen(smsg), err, sizeof err));
	scram_client_free(c);
	scram_server_free(s);
}

/* Full exchanges with random nonces: the server's TLS decides what it offers, the client's certificate
 * hash decides what it picks. */
static void test_round_trip(void **state)
{
	static const struct {
		const char *name;
		const uint8_t *server_cbind; /* NULL: no TLS, only SCRAM-SHA-256 is offered */
		const uint8_t *client_cbind; /* what the client saw of the server's certificate */
		const char *password;
		const char *mech; /* the client's pick */
		const char *err;  /* NULL: authenticated both ways */
	} cases[] = {
	    {"no TLS", NULL, NULL, "pencil", PLAIN, NULL},
	    {"TLS with channel binding", cert_hash, cert_hash, "pencil", PLUS, NULL},
	    {"client can bind, server cannot (y flag)", NULL, cert_hash, "pencil", PLAIN, NULL},
	    {"wrong password", NULL, NULL, "pencil2", PLAIN, "proof does not match"},
	    {"wrong password with channel binding", cert_hash, cert_hash, "Pencil", PLUS,
	     "proof does not match"},
	    {"man in the middle: another certificate", cert_hash, other_hash, "pencil", PLUS,
	     "channel binding"},
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		bool tls = cases[i].server_cbind != NULL;
		struct scram_server *s = scram_server_new(&rfc_secret, cases[i].server_cbind, 32);
		struct scram_client *c = scram_client_new(cases[i].password, NULL);
		char mechs[64], mech[32], cmsg[SCRAM_MSG_MAX], smsg[SCRAM_MSG_MAX], err[256] = "";
		size_t mechs_len = scram_server_mechanisms(tls, mechs, sizeof mechs), used;
		bool ok;

		assert_non_null(s);
		assert_non_null(c);
		assert_true(scram_client_first(c, (const uint8_t *)mechs, mechs_len, cases[i].client_cbind,
		                               32, mech, sizeof mech, cmsg, sizeof cmsg, &used, err,
		                               sizeof err));
		assert_string_equal(mech, cases[i].mech);
		assert_true(scram_server_first(s, mech, (const uint8_t *)cmsg, used, smsg, sizeof smsg, err,
		                               sizeof err));
		assert_true(scram_client_final(c, (const uint8_t *)smsg, strlen(smsg), cmsg, sizeof cmsg,
		                               &used, err, sizeof err));
		ok = scram_server_final(s, (const uint8_t *)cmsg, used, smsg, sizeof smsg, err, sizeof err);
		check_outcome(cases[i].name, ok, err, cases[i].err);
		if (ok)
			assert_true(
			    scram_client_verify(c, (const uint8_t *)smsg, strlen(smsg), err, sizeof err));
		scram_client_free(c);
		scram_server_free(s);
	}
}

static void test_client_first_refused(void **state)
{
	static const struct {
		const char *name;
		const char *mech;
		bool tls; /* the server has channel binding data, so it offered -PLUS */
		const char *msg;
		size_t len;
		size_t pad; /* bytes of 'a' appended */
		const char *err;
	} cases[] = {
	    {"plain", PLAIN, false, M("n,,n=,r=abc"), 0, NULL},
	    {"any user name", PLAIN, false, M("n,,n=us=2Cer,r=abc"), 0, NULL},
	    {"y flag without TLS", PLAIN, false, M("y,,n=,r=abc"), 0, NULL},
	    {"n flag with TLS", PLAIN, true, M("n,,n=,r=abc"), 0, NULL},
	    {"channel binding", PLUS, true, M("p=tls-server-end-point,,n=,r=abc"), 0, NULL},
	    {"empty", PLAIN, false, M(""), 0, "empty"},
	    {"flag only", PLAIN, false, M("n"), 0, "expected ','"},
	    {"one comma", PLAIN, false, M("n,"), 0, "expected ','"},
	    {"header only", PLAIN, false, M("n,,"), 0, "expected attribute \"n\""},
	    {"no nonce", PLAIN, false, M("n,,n="), 0, "expected ','"},
	    {"cut before nonce", PLAIN, false, M("n,,n=,"), 0, "expected attribute \"r\""},
	    {"nonce without =", PLAIN, false, M("n,,n=,r"), 0, "expected attribute \"r\""},
	    {"empty nonce", PLAIN, false, M("n,,n=,r="), 0, "nonce is empty or not printable"},
	    {"no user attribute", PLAIN, false, M("n,,r=abc"), 0, "expected attribute \"n\""},
	    {"extra comma", PLAIN, false, M("n,,,n=,r=abc"), 0, "expected attribute \"n\""},
	    {"two-letter flag", PLAIN, false, M("nn,,n=,r=abc"), 0, "expected ','"},
	    {"unknown flag", PLAIN, false, M("x,,n=,r=abc"), 0, "unknown channel binding flag"},
	    {"authzid", PLAIN, false, M("n,a=bob,n=,r=abc"), 0, "authorization"},
	    {"mandatory extension", PLAIN, false, M("n,,m=ext,n=,r=abc"), 0, "mandatory"},
	    {"extension", PLAIN, false, M("n,,n=,r=abc,x=1"), 0, "extensions"},
	    {"trailing comma", PLAIN, false, M("n,,n=,r=abc,"), 0, "extensions"},
	    {"control character in nonce", PLAIN, false, M("n,,n=,r=ab\001c"), 0, "not printable"},
	    {"embedded NUL", PLAIN, false, M("n,,n=,r=abc\0def"), 0, "NUL"},
	    {"message too long", PLAIN, false, M("n,,n=,r="), 1 << 20, "longer than"},
	    {"message one byte too long", PLAIN, false, M("n,,n=,r="), SCRAM_MSG_MAX - 8, "longer than"},
	    {"nonce too long to answer", PLAIN, false, M("n,,n=,r="), 1000, "nonce is too long"},
	    {"unknown mechanism", "SCRAM-SHA-1", false, M("n,,n=,r=abc"), 0, "unsupported SASL mechanism"},
	    {"no mechanism", NULL, false, M("n,,n=,r=abc"), 0, "unsupported SASL mechanism"},
	    {"-PLUS without TLS", PLUS, false, M("p=tls-server-end-point,,n=,r=abc"), 0, "not offered"},
	    {"-PLUS with n flag", PLUS, true, M("n,,n=,r=abc"), 0, "sent no channel binding"},
	    {"-PLUS with y flag", PLUS, true, M("y,,n=,r=abc"), 0, "sent no channel binding"},
	    {"-PLUS with tls-unique", PLUS, true, M("p=tls-unique,,n=,r=abc"), 0,
	     "unsupported SCRAM channel binding"},
	    {"-PLUS with p but no name", PLUS, true, M("p,,n=,r=abc"), 0, "expected attribute \"p\""},
	    {"-PLUS cut after type", PLUS, true, M("p=tls-server-end-point"), 0, "expected ','"},
	    {"p flag with plain mechanism", PLAIN, true, M("p=tls-server-end-point,,n=,r=abc"), 0,
	     "sent channel binding data"},
	    {"downgrade: y flag when -PLUS was offered", PLAIN, true, M("y,,n=,r=abc"), 0, "downgrade"},
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct scram_server *s = rfc_server_new(cases[i].tls);
		char out[SCRAM_MSG_MAX], err[256] = "";
		size_t len;
		uint8_t *msg = message_build(cases[i].msg, cases[i].len, cases[i].pad, &len);
		bool ok = scram_server_first(s, cases[i].mech, msg, len, out, sizeof out, err, sizeof err);

		check_outcome(cases[i].name, ok, err, cases[i].err);
		if (!ok) /* a refused exchange stays refused */
			assert_false(scram_server_first(s, PLAIN, (const uint8_t *)M("n,,n=,r=abc"), out,
			                                sizeof out, err, sizeof err));
		free(msg);
		scram_server_free(s);
	}
}

static void test_client_final_refused(void **state)
{
	static const struct {
		const char *name;
		bool tls; /* the client chose -PLUS and the server binds to cert_hash */
		const char *msg;
		size_t len;
		size_t pad;
		const char *err;
	} cases[] = {
	    {"RFC 7677", false, M(RFC_CLIENT_FINAL), 0, NULL},
	    {"empty", false, M(""), 0, "empty"},
	    {"no proof", false, M("c=biws,r=" RFC_NONCE), 0, "expected ','"},
	    {"empty proof", false, M("c=biws,r=" RFC_NONCE ",p="), 0, "bad proof"},
	    {"short proof", false, M("c=biws,r=" RFC_NONCE ",p=dHzb"), 0, "bad proof"},
	    {"proof one byte short", false,
	     M("c=biws,r=" RFC_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7And"), 0, "bad proof"},
	    {"proof with a blank", false, M("c=biws,r=" RFC_NONCE ",p= " RFC_PROOF), 0, "bad proof"},
	    {"proof not base64", false,
	     M("c=biws,r=" RFC_NONCE ",p=dHzbZapWIk4jUhN*Ute9ytag9zjfMHgsqmmiz7AndVQ="), 0, "bad proof"},
	    {"wrong proof", false, M("c=biws,r=" RFC_NONCE ",p=eHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="),
	     0, "proof does not match"},
	    {"channel binding only", false, M("c=biws"), 0, "expected ','"},
	    {"no nonce", false, M("c=biws,p=" RFC_PROOF), 0, "expected attribute \"r\""},
	    {"no channel binding", false, M("r=" RFC_NONCE ",p=" RFC_PROOF), 0, "expected attribute \"c\""},
	    {"channel binding not base64", false, M("c=b!ws,r=" RFC_NONCE ",p=" RFC_PROOF), 0,
	     "bad channel binding"},
	    {"channel binding cut", false, M("c=biw,r=" RFC_NONCE ",p=" RFC_PROOF), 0, "bad channel binding"},
	    {"channel binding empty", false, M("c=,r=" RFC_NONCE ",p=" RFC_PROOF), 0, "bad channel binding"},
	    {"y header instead of n", false, M("c=eSws,r=" RFC_NONCE ",p=" RFC_PROOF), 0,
	     "channel binding check failed"},
	    {"wrong nonce", false, M("c=biws,r=" RFC_NONCE "x,p=" RFC_PROOF), 0, "nonce mismatch"},
	    {"client nonce only", false, M("c=biws,r=" RFC_CNONCE ",p=" RFC_PROOF), 0, "nonce mismatch"},
	    {"altered nonce", false, M("c=biws,r=" RFC_CNONCE "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k1,p=" RFC_PROOF),
	     0, "nonce mismatch"},
	    {"extension before proof", false, M("c=biws,r=" RFC_NONCE ",x=1,p=" RFC_PROOF), 0,
	     "expected attribute \"p\""},
	    {"attribute after proof", false, M(RFC_CLIENT_FINAL ",x=1"), 0, "extensions"},
	    {"embedded NUL", false, M("c=biws\0,r=" RFC_NONCE ",p=" RFC_PROOF), 0, "NUL"},
	    {"message too long", false, M("c=biws,r="), 1 << 20, "longer than"},
	    {"-PLUS: header without certificate hash", true,
	     M("c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws,r=" RFC_NONCE ",p=" RFC_PROOF), 0,
	     "channel binding check failed"},
	    {"-PLUS: n header", true, M("c=biws,r=" RFC_NONCE ",p=" RFC_PROOF), 0,
	     "channel binding check failed"},
	    {"-PLUS: another certificate", true, M("c=" CBIND_OTHER ",r=" RFC_NONCE ",p=" RFC_PROOF), 0,
	     "channel binding check failed"},
	    {"-PLUS: right certificate, proof for n", true, M("c=" CBIND_OK ",r=" RFC_NONCE ",p=" RFC_PROOF),
	     0, "proof does not match"},
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct scram_server *s = rfc_server_new(cases[i].tls);
		char out[SCRAM_MSG_MAX], err[256] = "";
		size_t len;
		uint8_t *msg = message_build(cases[i].msg, cases[i].len, cases[i].pad, &len);
		bool ok;

		if (cases[i].tls)
			assert_true(scram_server_first(
			    s, PLUS, (const uint8_t *)M("p=tls-server-end-point,,n=user,r=" RFC_CNONCE), out,
			    sizeof out, err, sizeof err));
		else
			assert_true(scram_server_first(s, PLAIN,
			                               (const uint8_t *)M("n,,n=user,r=" RFC_CNONCE), out,
			                               sizeof out, err, sizeof err));
		ok = scram_server_final(s, msg, len, out, sizeof out, err, sizeof err);
		check_outcome(cases[i].name, ok, err, cases[i].err);
		/* One try per nonce: not even the right proof is accepted after a failure. */
		if (!ok)
			assert_false(scram_server_final(s, (const uint8_t *)M(RFC_CLIENT_FINAL), out,
			                                sizeof out, err, sizeof err));
		free(msg);
		scram_server_free(s);
	}
}

static void test_mechanism_choice(void **state)
{
	static const struct {
		const char *name;
		const char *mechs;
		size_t len;
		const uint8_t *cbind;
		const char *mech;         /* the client's pick */
		const char *client_first; /* what it sends */
		const char *err;
	} cases[] = {
	    {"plain", M(PLAIN "\0\0"), NULL, PLAIN, "n,,n=,r=" RFC_CNONCE, NULL},
	    {"both, with TLS", M(PLUS "\0" PLAIN "\0\0"), cert_hash, PLUS,
	     "p=tls-server-end-point,,n=,r=" RFC_CNONCE, NULL},
	    {"both, without TLS", M(PLUS "\0" PLAIN "\0\0"), NULL, PLAIN, "n,,n=,r=" RFC_CNONCE, NULL},
	    {"plain only, with TLS", M(PLAIN "\0\0"), cert_hash, PLAIN, "y,,n=,r=" RFC_CNONCE, NULL},
	    {"plain listed first", M(PLAIN "\0" PLUS "\0\0"), NULL, PLAIN, "n,,n=,r=" RFC_CNONCE, NULL},
	    {"unknown ones skipped", M("OAUTHBEARER\0" PLAIN "\0\0"), NULL, PLAIN, "n,,n=,r=" RFC_CNONCE,
	     NULL},
	    {"-PLUS only, without TLS", M(PLUS "\0\0"), NULL, NULL, NULL, "requires SCRAM channel binding"},
	    {"nothing known", M("SCRAM-SHA-1\0SCRAM-SHA-2560\0SCRAM-SHA-25\0\0"), NULL, NULL, NULL,
	     "no SASL mechanism"},
	    {"empty list", M("\0"), NULL, NULL, NULL, "no SASL mechanism"},
	    {"no bytes", M(""), NULL, NULL, NULL, "malformed SASL mechanism list"},
	    {"name without NUL", M(PLAIN), NULL, NULL, NULL, "malformed SASL mechanism list"},
	    {"list without end", M(PLAIN "\0"), NULL, NULL, NULL, "malformed SASL mechanism list"},
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct scram_client *c = scram_client_new("pencil", NULL);
		char mech[32], out[SCRAM_MSG_MAX], err[256] = "";
		size_t used;
		bool ok;

		assert_non_null(c);
		assert_true(scram_client_set_nonce(c, RFC_CNONCE));
		ok = scram_client_first(c, (const uint8_t *)cases[i].mechs, cases[i].len, cases[i].cbind,
		                        sizeof cert_hash, mech, sizeof mech, out, sizeof out, &used, err,
		                        sizeof err);
		check_outcome(cases[i].name, ok, err, cases[i].err);
		if (ok) {
			assert_string_equal(mech, cases[i].mech);
			assert_string_equal(out, cases[i].client_first);
			assert_int_equal(used, strlen(out));
		}
		scram_client_free(c);
	}
}

/* A client that has sent "n,,n=,r=" RFC_CNONCE. */
static struct scram_client *rfc_client_new(struct scram_cache *cache)
{
	struct scram_client *c = scram_client_new("pencil", cache);
	char mech[32], out[SCRAM_MSG_MAX], err[256] = "";
	size_t used;

	assert_non_null(c);
	assert_true(scram_client_set_nonce(c, RFC_CNONCE));
	assert_true(scram_client_first(c, (const uint8_t *)mechs_plain, sizeof mechs_plain, NULL, 0, mech,
	                               sizeof mech, out, sizeof out, &used, err, sizeof err));
	return c;
}

/* What a hostile or broken server may send the client. */
static void test_server_first_refused(void **state)
{
	static const struct {
		const char *name;
		const char *msg;
		size_t len;
		size_t pad;
		const char *err;
	} cases[] = {
	    {"RFC 7677", M(RFC_SERVER_FIRST), 0, NULL},
	    {"empty", M(""), 0, "empty"},
	    {"nonce not extended", M("r=" RFC_CNONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"), 0,
	     "does not extend"},
	    {"another nonce", M("r=xOprNGfwEbeRWgbNEkqOabc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"), 0,
	     "does not extend"},
	    {"nonce not printable", M("r=" RFC_CNONCE "a\177,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"), 0,
	     "does not extend"},
	    {"mandatory extension", M("m=x,r=" RFC_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"), 0,
	     "mandatory"},
	    {"no salt", M("r=" RFC_NONCE ",i=4096"), 0, "expected attribute \"s\""},
	    {"empty salt", M("r=" RFC_NONCE ",s=,i=4096"), 0, "bad salt"},
	    {"salt not base64", M("r=" RFC_NONCE ",s=W22Z!J0SNY7soEsUEjb6gQ==,i=4096"), 0, "bad salt"},
	    {"salt too long",
	     M("r=" RFC_NONCE ",s="
	       "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA,"
	       "i=4096"),
	     0, "bad salt"},
	    {"no iterations", M("r=" RFC_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ=="), 0, "expected ','"},
	    {"empty iterations", M("r=" RFC_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i="), 0, "iteration count"},
	    {"zero iterations", M("r=" RFC_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0"), 0, "iteration count"},
	    {"negative iterations", M("r=" RFC_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1"), 0,
	     "iteration count"},
	    {"iterations not a number", M("r=" RFC_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4k"), 0,
	     "iteration count"},
	    {"iterations overflow", M("r=" RFC_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999999999999"), 0,
	     "iteration count"},
	    {"extension", M(RFC_SERVER_FIRST ",x=1"), 0, "extensions"},
	    {"embedded NUL", M("r=" RFC_NONCE "\0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"), 0, "NUL"},
	    {"message too long", M("r=" RFC_NONCE), 1 << 20, "longer than"},
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct scram_client *c = rfc_client_new(NULL);
		char out[SCRAM_MSG_MAX], err[256] = "";
		size_t len, used;
		uint8_t *msg = message_build(cases[i].msg, cases[i].len, cases[i].pad, &len);

		check_outcome(cases[i].name,
		              scram_client_final(c, msg, len, out, sizeof out, &used, err, sizeof err), err,
		              cases[i].err);
		free(msg);
		scram_client_free(c);
	}
}

static void test_server_final_checked(void **state)
{
	static const struct {
		const char *name;
		const char *msg;
		size_t len;
		const char *err;
	} cases[] = {
	    {"right signature", M(PG_SERVER_FINAL), NULL},
	    {"signature for another message", M(RFC_SERVER_FINAL), "signature is wrong"},
	    {"server error", M("e=invalid-proof"), "refused the SCRAM exchange: invalid-proof"},
	    {"empty", M(""), "empty"},
	    {"no verifier", M("x=1"), "expected attribute \"v\""},
	    {"short verifier", M("v=AAAA"), "bad verifier"},
	    {"verifier not base64", M("v=3HO6Qt1M4MKJrmlKaoOqLAI0/0TV0HZe7J9H3MBtSO"), "bad verifier"},
	    {"extension", M(PG_SERVER_FINAL ",x=1"), "extensions"},
	    {"embedded NUL", M(PG_SERVER_FINAL "\0"), "NUL"},
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct scram_client *c = rfc_client_new(NULL);
		char out[SCRAM_MSG_MAX], err[256] = "";
		size_t used;

		assert_true(scram_client_final(c, (const uint8_t *)M(RFC_SERVER_FIRST), out, sizeof out,
		                               &used, err, sizeof err));
		check_outcome(
		    cases[i].name,
		    scram_client_verify(c, (const uint8_t *)cases[i].msg, cases[i].len, err, sizeof err), err,
		    cases[i].err);
		scram_client_free(c);
	}
}

static void test_out_of_order(void **state)
{
	struct scram_server *s = rfc_server_new(false);
	struct scram_client *c = scram_client_new("pencil", NULL);
	char out[SCRAM_MSG_MAX], err[256] = "";
	size_t used;

	assert_false(
	    scram_server_final(s, (const uint8_t *)M(RFC_CLIENT_FINAL), out, sizeof out, err, sizeof err));
	assert_non_null(strstr(err, "out of order"));
	assert_false(scram_client_final(c, (const uint8_t *)M(RFC_SERVER_FIRST), out, sizeof out, &used, err,
	                                sizeof err));
	assert_false(scram_client_verify(c, (const uint8_t *)M(PG_SERVER_FINAL), err, sizeof err));
	scram_client_free(c);
	scram_server_free(s);

	s = rfc_server_new(false);
	assert_true(scram_server_first(s, PLAIN, (const uint8_t *)M("n,,n=user,r=" RFC_CNONCE), out,
	                               sizeof out, err, sizeof err));
	assert_false(scram_server_set_nonce(s, "late"));
	assert_false(scram_server_final(s, (const uint8_t *)M(RFC_CLIENT_FINAL), out, 8, err, sizeof err));
	assert_non_null(strstr(err, "does not fit"));
	scram_server_free(s);

	s = rfc_server_new(false);
	assert_true(scram_server_first(s, PLAIN, (const uint8_t *)M("n,,n=user,r=" RFC_CNONCE), out,
	                               sizeof out, err, sizeof err));
	assert_true(
	    scram_server_final(s, (const uint8_t *)M(RFC_CLIENT_FINAL), out, sizeof out, err, sizeof err));
	assert_false(
	    scram_server_final(s, (const uint8_t *)M(RFC_CLIENT_FINAL), out, sizeof out, err, sizeof err));
	scram_server_free(s);

	c = rfc_client_new(NULL);
	assert_false(
	    scram_client_final(c, (const uint8_t *)M(RFC_SERVER_FIRST), out, 64, &used, err, sizeof err));
	assert_non_null(strstr(err, "does not fit"));
	scram_client_free(c);
}

static void test_arguments(void **state)
{
	struct scram_secret secret;
	struct scram_server *s;
	char many[66];

	assert_false(scram_secret_make("pencil", rfc_salt, sizeof rfc_salt - 1, 4096, &secret));
	assert_false(scram_secret_make("pencil", rfc_salt, sizeof rfc_salt, 0, &secret));
	assert_null(scram_server_new(NULL, NULL, 0));
	assert_null(scram_server_new(&rfc_secret, cert_hash, 0));
	assert_null(scram_server_new(&rfc_secret, cert_hash, 65));
	assert_null(scram_client_new(NULL, NULL));

	s = scram_server_new(&rfc_secret, NULL, 0);
	assert_non_null(s);
	memset(many, 'a', sizeof many - 1);
	many[sizeof many - 1] = '\0';
	assert_false(scram_server_set_nonce(s, ""));
	assert_false(scram_server_set_nonce(s, "a,b"));
	assert_false(scram_server_set_nonce(s, "a b"));
	assert_false(scram_server_set_nonce(s, many));
	assert_true(scram_server_set_nonce(s, many + 1));
	scram_server_free(s);

	scram_server_free(NULL);
	scram_client_free(NULL);
	scram_cache_free(NULL);
}

static void test_mechanisms(void **state)
{
	char out[64];

	assert_int_equal(scram_server_mechanisms(true, out, sizeof out), sizeof mechs_both);
	assert_memory_equal(out, mechs_both, sizeof mechs_both);
	assert_int_equal(scram_server_mechanisms(false, out, sizeof out), sizeof mechs_plain);
	assert_memory_equal(out, mechs_plain, sizeof mechs_plain);
	assert_int_equal(scram_server_mechanisms(true, out, sizeof mechs_both - 1), 0);
	assert_int_equal(scram_server_mechanisms(false, out, sizeof mechs_plain - 1), 0);
}

/* The RFC's exchange as our client, "pencil" against salt and iterations; the client-final into out. */
static void cached_client_run(struct scram_cache *cache, const uint8_t salt[SCRAM_SALT_LEN], int iterations,
                              char out[SCRAM_MSG_MAX])
{
	struct scram_client *c = rfc_client_new(cache);
	char salt_b64[32], first[SCRAM_MSG_MAX], err[256] = "";
	size_t used;

	EVP_EncodeBlock((unsigned char *)salt_b64, salt, SCRAM_SALT_LEN);
	snprintf(first, sizeof first, "r=%s,s=%s,i=%d", RFC_NONCE, salt_b64, iterations);
	assert_true(scram_client_final(c, (const uint8_t *)first, strlen(first), out, SCRAM_MSG_MAX, &used,
	                               err, sizeof err));
	scram_client_free(c);
}

static void cache_stats_check(struct scram_cache *cache, uint64_t want_hits, uint64_t want_misses)
{
	uint64_t hits, misses;

	scram_cache_stats(cache, &hits, &misses);
	assert_int_equal(hits, want_hits);
	assert_int_equal(misses, want_misses);
}

static void test_cache(void **state)
{
	struct scram_cache *cache = scram_cache_new();
	char out[SCRAM_MSG_MAX];

	assert_non_null(cache);
	cached_client_run(cache, rfc_salt, 4096, out);
	assert_string_equal(out, PG_CLIENT_FINAL);
	cache_stats_check(cache, 0, 1);
	cached_client_run(cache, rfc_salt, 4096, out); /* the hit gives the same keys, so the same proof */
	assert_string_equal(out, PG_CLIENT_FINAL);
	cache_stats_check(cache, 1, 1);
	cached_client_run(cache, rfc_salt, 4097, out);
	assert_string_not_equal(out, PG_CLIENT_FINAL);
	cache_stats_check(cache, 1, 2);
	scram_cache_free(cache);
}

/* 65 salts through a 64-entry cache: only the oldest is gone. */
static void test_cache_eviction(void **state)
{
	static const struct {
		uint8_t salt_id;
		uint64_t hits, misses; /* after this run */
	} after_fill[] = {{64, 1, 65}, {1, 2, 65}, {63, 3, 65}, {0, 3, 66}};
	struct scram_cache *cache = scram_cache_new();
	uint8_t salt[SCRAM_SALT_LEN] = {0};
	char out[SCRAM_MSG_MAX];

	assert_non_null(cache);
	for (int i = 0; i < 65; i++) {
		salt[0] = (uint8_t)i;
		cached_client_run(cache, salt, 1, out);
	}
	cache_stats_check(cache, 0, 65);
	for (size_t i = 0; i < sizeof after_fill / sizeof after_fill[0]; i++) {
		salt[0] = after_fill[i].salt_id;
		cached_client_run(cache, salt, 1, out);
		cache_stats_check(cache, after_fill[i].hits, after_fill[i].misses);
	}
	scram_cache_free(cache);
}

static void test_md5(void **state)
{
	static const uint8_t salt[4] = {1, 2, 3, 4};
	char out[36];

	auth_md5_response("secret", "postgres", salt, out);
	assert_string_equal(out, "md5bb41a296aab6baccb36ff243a562abff");
}

/* A self-signed certificate for key, signed with md (RSA-PSS padding when pss). */
static X509 *cert_make(EVP_PKEY *key, const EVP_MD *md, bool pss)
{
	X509 *x = X509_new();
	X509_NAME *name = X509_get_subject_name(x);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	EVP_PKEY_CTX *pctx;

	assert_non_null(ctx);
	assert_true(X509_set_version(x, 2) && ASN1_INTEGER_set(X509_get_serialNumber(x), 1) &&
	            X509_gmtime_adj(X509_getm_notBefore(x), 0) &&
	            X509_gmtime_adj(X509_getm_notAfter(x), 3600) &&
	            X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"pglane test",
	                                       -1, -1, 0) &&
	            X509_set_issuer_name(x, name) && X509_set_pubkey(x, key));
	assert_true(EVP_DigestSignInit(ctx, &pctx, md, NULL, key));
	if (pss)
		assert_true(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING));
	assert_true(X509_sign_ctx(x, ctx) > 0);
	EVP_MD_CTX_free(ctx);
	return x;
}

static void test_cert_endpoint_hash(void **state)
{
	enum { EC, RSA, ED25519 };
	static const struct {
		const char *name;
		int key;
		bool pss;
		const EVP_MD *(*sign)(void);
		const EVP_MD *(*want)(void); /* NULL: no hash can be chosen */
	} cases[] = {
	    {"ecdsa-with-SHA1", EC, false, EVP_sha1, EVP_sha256},
	    {"ecdsa-with-SHA256", EC, false, EVP_sha256, EVP_sha256},
	    {"ecdsa-with-SHA384", EC, false, EVP_sha384, EVP_sha384},
	    {"ecdsa-with-SHA512", EC, false, EVP_sha512, EVP_sha512},
	    {"md5WithRSAEncryption", RSA, false, EVP_md5, EVP_sha256},
	    {"sha384WithRSAEncryption", RSA, false, EVP_sha384, EVP_sha384},
	    {"RSASSA-PSS with SHA-384", RSA, true, EVP_sha384, EVP_sha384},
	    {"Ed25519", ED25519, false, NULL, NULL},
	};
	EVP_PKEY *keys[] = {EVP_EC_gen("P-256"), EVP_RSA_gen(2048), EVP_PKEY_Q_keygen(NULL, NULL, "ED25519")};

	for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
		assert_non_null(keys[i]);
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		X509 *x = cert_make(keys[cases[i].key], cases[i].sign ? cases[i].sign() : NULL, cases[i].pss);
		uint8_t got[EVP_MAX_MD_SIZE], want[EVP_MAX_MD_SIZE];
		unsigned int want_len = 0;
		size_t got_len = scram_cert_endpoint_hash(x, got, sizeof got);

		if (cases[i].want == NULL) {
			if (got_len != 0)
				fail_msg("%s: a hash of %zu bytes", cases[i].name, got_len);
		} else {
			assert_true(X509_digest(x, cases[i].want(), want, &want_len));
			if (got_len != want_len || memcmp(got, want, want_len) != 0)
				fail_msg("%s: not the expected hash", cases[i].name);
			assert_int_equal(scram_cert_endpoint_hash(x, got, want_len - 1), 0);
		}
		X509_free(x);
	}
	assert_int_equal(scram_cert_endpoint_hash(NULL, (uint8_t[64]){0}, 64), 0);
	for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
		EVP_PKEY_free(keys[i]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_rfc7677_server),       cmocka_unit_test(test_rfc7677_client),
	    cmocka_unit_test(test_round_trip),           cmocka_unit_test(test_client_first_refused),
	    cmocka_unit_test(test_client_final_refused), cmocka_unit_test(test_mechanism_choice),
	    cmocka_unit_test(test_server_first_refused), cmocka_unit_test(test_server_final_checked),
	    cmocka_unit_test(test_out_of_order),         cmocka_unit_test(test_arguments),
	    cmocka_unit_test(test_mechanisms),           cmocka_unit_test(test_cache),
	    cmocka_unit_test(test_cache_eviction),       cmocka_unit_test(test_md5),
	    cmocka_unit_test(test_cert_endpoint_hash),
	};

	return cmocka_run_group_tests(tests, secret_setup, NULL);
}
