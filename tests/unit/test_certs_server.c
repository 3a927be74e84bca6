/*
 * Unit tests for certs_server_ctx_new(): TLS handshakes between it and an OpenSSL client over a BIO pair,
 * no socket.  The client-certificate table shows that every handshake finishes and that
 * SSL_get_verify_result() then says why a certificate is refused (expired, not yet valid, revoked, signed by
 * another CA, an out-of-date CRL), in TLS 1.3 and 1.2; a resumed session keeps its verdict; ALPN accepts
 * "postgresql" or nothing and refuses the rest; bad client_ca / client_crl files are named.  The CAs and
 * certificates come from certs/devca, the CRLs are signed here; all of it in a directory removed at the end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/stat.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "certs/certs.h"
#include "certs/devca.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static char tmp[] = "/tmp/pglane-test-certs-XXXXXX";

static const char *in_dir(const char *name)
{
	static char bufs[8][PATH_MAX];
	static int next;
	char *b = bufs[next++ % 8];

	snprintf(b, PATH_MAX, "%s/%s", tmp, name);
	return b;
}

static X509 *read_cert(const char *path)
{
	FILE *f = fopen(path, "r");
	X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;

	if (f)
		fclose(f);
	return x;
}

static EVP_PKEY *read_key(const char *path)
{
	FILE *f = fopen(path, "r");
	EVP_PKEY *k = f ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;

	if (f)
		fclose(f);
	return k;
}

/* Writes to out a CRL of the client CA in dir, revoking the certificate in revoked, next update in
 * next_update s. */
static bool write_crl(const char *dir, const char *revoked, long next_update, const char *out)
{
	char ca_path[PATH_MAX], key_path[PATH_MAX];
	snprintf(ca_path, sizeof(ca_path), "%s/client-ca.crt", dir);
	snprintf(key_path, sizeof(key_path), "%s/client-ca.key", dir);
	EVP_PKEY *key = read_key(key_path);
	X509 *ca = read_cert(ca_path), *rev = read_cert(revoked);
	X509_CRL *crl = X509_CRL_new();
	X509_REVOKED *r = X509_REVOKED_new();
	ASN1_TIME *now = X509_gmtime_adj(NULL, -60), *next = X509_gmtime_adj(NULL, next_update);
	FILE *f = NULL;

	bool ok = key && ca && rev && crl && r && now && next &&
	          X509_CRL_set_version(crl, X509_CRL_VERSION_2) &&
	          X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca)) &&
	          X509_CRL_set1_lastUpdate(crl, now) && X509_CRL_set1_nextUpdate(crl, next) &&
	          X509_REVOKED_set_serialNumber(r, X509_get_serialNumber(rev)) &&
	          X509_REVOKED_set_revocationDate(r, now) && X509_CRL_add0_revoked(crl, r);
	if (ok)
		r = NULL; /* the CRL has it */
	ok = ok && X509_CRL_sort(crl) && X509_CRL_sign(crl, key, EVP_sha256()) > 0 && (f = fopen(out, "w")) &&
	     PEM_write_X509_CRL(f, crl) == 1;
	if (f && fclose(f) != 0)
		ok = false;
	X509_REVOKED_free(r);
	X509_CRL_free(crl);
	ASN1_TIME_free(now);
	ASN1_TIME_free(next);
	X509_free(ca);
	X509_free(rev);
	EVP_PKEY_free(key);
	return ok;
}

static bool issue(const char *dir, const char *name, long from, long until)
{
	char ca[PATH_MAX], key[PATH_MAX], crt[PATH_MAX], out[PATH_MAX], err[1024];
	struct devca_client req = {"myapp", "pglane:myapp/production", from, until};

	snprintf(ca, sizeof(ca), "%s/client-ca.crt", dir);
	snprintf(key, sizeof(key), "%s/client-ca.key", dir);
	snprintf(crt, sizeof(crt), "%s/%s.crt", tmp, name);
	snprintf(out, sizeof(out), "%s/%s.key", tmp, name);
	if (devca_issue_client(ca, key, &req, crt, out, err, sizeof(err)))
		return true;
	fprintf(stderr, "%s: %s\n", name, err);
	return false;
}

static int setup(void **state)
{
	char err[1024], dev[PATH_MAX], other[PATH_MAX], revoked[PATH_MAX], crl[PATH_MAX], stale[PATH_MAX];

	if (!mkdtemp(tmp))
		return -1;
	snprintf(dev, sizeof(dev), "%s/dev", tmp);
	snprintf(other, sizeof(other), "%s/other", tmp);
	snprintf(revoked, sizeof(revoked), "%s/revoked.crt", tmp);
	snprintf(crl, sizeof(crl), "%s/crl.pem", tmp);
	snprintf(stale, sizeof(stale), "%s/stale-crl.pem", tmp);
	if (!devca_init(dev, err, sizeof(err)) || !devca_init(other, err, sizeof(err))) {
		fprintf(stderr, "devca_init: %s\n", err);
		return -1;
	}
	bool ok = issue(dev, "good", -60, DEVCA_DAY_S) &&
	          issue(dev, "expired", -2 * DEVCA_DAY_S, -DEVCA_DAY_S) &&
	          issue(dev, "future", DEVCA_DAY_S, 2 * DEVCA_DAY_S) &&
	          issue(dev, "revoked", -60, DEVCA_DAY_S) && issue(other, "foreign", -60, DEVCA_DAY_S) &&
	          write_crl(dev, revoked, DEVCA_DAY_S, crl) && write_crl(dev, revoked, -30, stale);
	return ok ? 0 : -1;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static int teardown(void **state)
{
	return nftw(tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* The server's [pglane] settings: TLS from dev/, client_ca and client_crl as given (NULL: unset). */
static SSL_CTX *server_ctx(const char *client_ca, const char *client_crl)
{
	struct conf c;
	char err[1024];
	char cert[PATH_MAX], key[PATH_MAX], ca[PATH_MAX], crl[PATH_MAX];

	memset(&c, 0, sizeof(c));
	snprintf(cert, sizeof(cert), "%s", in_dir("dev/server.crt"));
	snprintf(key, sizeof(key), "%s", in_dir("dev/server.key"));
	snprintf(ca, sizeof(ca), "%s", client_ca ? in_dir(client_ca) : "");
	snprintf(crl, sizeof(crl), "%s", client_crl ? in_dir(client_crl) : "");
	c.tls_cert = cert;
	c.tls_key = key;
	c.client_ca = client_ca ? ca : NULL;
	c.client_crl = client_crl ? crl : NULL;
	SSL_CTX *ctx = certs_server_ctx_new(&c, err, sizeof(err));
	if (!ctx)
		fail_msg("certs_server_ctx_new: %s", err);
	return ctx;
}

struct client {
	const char *cert;    /* NAME for NAME.crt and NAME.key in tmp, or NULL */
	const char *alpn;    /* wire format, or NULL for no ALPN */
	int max_version;     /* 0: TLS 1.3 */
	SSL_SESSION *resume; /* a session to resume, or NULL */
};

struct result {
	bool done;   /* the server finished its handshake */
	long verify; /* SSL_get_verify_result() on the server */
	bool peer;   /* the server has the client's certificate */
	bool reused;
	char alpn[32];        /* what the server selected */
	SSL_SESSION *session; /* the client's session, when asked for */
};

static bool want_more(SSL *ssl, int rc)
{
	int e = SSL_get_error(ssl, rc);
	return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE;
}

/* One handshake between sctx and a client as cl describes, over a BIO pair. */
static struct result handshake(SSL_CTX *sctx, const struct client *cl, bool keep_session)
{
	struct result r = {.verify = -1};
	SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
	char path[PATH_MAX];
	BIO *bc, *bs;

	assert_non_null(cctx);
	if (cl->max_version)
		SSL_CTX_set_max_proto_version(cctx, cl->max_version);
	if (cl->cert) {
		snprintf(path, sizeof(path), "%s/%s.crt", tmp, cl->cert);
		assert_int_equal(SSL_CTX_use_certificate_file(cctx, path, SSL_FILETYPE_PEM), 1);
		snprintf(path, sizeof(path), "%s/%s.key", tmp, cl->cert);
		assert_int_equal(SSL_CTX_use_PrivateKey_file(cctx, path, SSL_FILETYPE_PEM), 1);
	}
	if (cl->alpn)
		assert_int_equal(
		    SSL_CTX_set_alpn_protos(cctx, (const unsigned char *)cl->alpn, strlen(cl->alpn)), 0);
	SSL *c = SSL_new(cctx), *s = SSL_new(sctx);
	assert_int_equal(BIO_new_bio_pair(&bc, 0, &bs, 0), 1);
	SSL_set_bio(c, bc, bc);
	SSL_set_bio(s, bs, bs);
	SSL_set_connect_state(c);
	SSL_set_accept_state(s);
	if (cl->resume)
		assert_int_equal(SSL_set_session(c, cl->resume), 1);

	int rc = 0, rs = 0;
	for (int i = 0; i < 20 && (rc != 1 || rs != 1); i++) {
		if (rc != 1 && (rc = SSL_do_handshake(c)) != 1 && !want_more(c, rc))
			break;
		if (rs != 1 && (rs = SSL_do_handshake(s)) != 1 && !want_more(s, rs))
			break;
	}
	r.done = rs == 1;
	if (r.done) {
		const unsigned char *sel;
		unsigned int len;
		r.verify = SSL_get_verify_result(s);
		r.peer = SSL_get0_peer_certificate(s) != NULL;
		r.reused = SSL_session_reused(s);
		SSL_get0_alpn_selected(s, &sel, &len);
		snprintf(r.alpn, sizeof(r.alpn), "%.*s", (int)len, sel ? (const char *)sel : "");
		if (keep_session)
			r.session = SSL_get1_session(c);
		/* An orderly end: SSL_free() of a session without one marks it not resumable. */
		SSL_shutdown(c);
		SSL_shutdown(s);
	}
	SSL_free(c);
	SSL_free(s);
	SSL_CTX_free(cctx);
	ERR_clear_error();
	return r;
}

static void test_client_certificates(void **state)
{
	static const struct {
		const char *cert;
		int max_version;
		long verify;
		const char *reason; /* part of certs_client_verify_reason() */
	} cases[] = {
	    {"good", 0, X509_V_OK, "is valid"},
	    {"good", TLS1_2_VERSION, X509_V_OK, "is valid"},
	    {"expired", 0, X509_V_ERR_CERT_HAS_EXPIRED, "has expired"},
	    {"expired", TLS1_2_VERSION, X509_V_ERR_CERT_HAS_EXPIRED, "has expired"},
	    {"future", 0, X509_V_ERR_CERT_NOT_YET_VALID, "not valid yet"},
	    {"revoked", 0, X509_V_ERR_CERT_REVOKED, "has been revoked"},
	    {"revoked", TLS1_2_VERSION, X509_V_ERR_CERT_REVOKED, "has been revoked"},
	    {"foreign", 0, X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE,
	     "not signed by a CA in pglane's client_ca"},
	    {"dev/server", 0, X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE, "not signed by a CA"},
	    {NULL, 0, X509_V_OK, "is valid"}, /* no certificate: on to the password */
	};
	SSL_CTX *ctx = server_ctx("dev/client-ca.crt", "crl.pem");

	for (size_t i = 0; i < N(cases); i++) {
		struct client cl = {.cert = cases[i].cert, .max_version = cases[i].max_version};
		struct result r = handshake(ctx, &cl, false);
		if (!r.done)
			fail_msg("case %zu (%s): the handshake failed", i, cases[i].cert);
		if (r.verify != cases[i].verify)
			fail_msg("case %zu (%s): verify %ld (%s), want %ld", i, cases[i].cert, r.verify,
			         X509_verify_cert_error_string(r.verify), cases[i].verify);
		assert_int_equal(r.peer, cases[i].cert != NULL);
		if (!strstr(certs_client_verify_reason(r.verify), cases[i].reason))
			fail_msg("case %zu: \"%s\" lacks \"%s\"", i, certs_client_verify_reason(r.verify),
			         cases[i].reason);
	}
	SSL_CTX_free(ctx);

	/* Without client_crl nothing is revoked; a CRL past its next update refuses everyone. */
	ctx = server_ctx("dev/client-ca.crt", NULL);
	struct client revoked = {.cert = "revoked"};
	assert_int_equal(handshake(ctx, &revoked, false).verify, X509_V_OK);
	SSL_CTX_free(ctx);
	ctx = server_ctx("dev/client-ca.crt", "stale-crl.pem");
	struct client good = {.cert = "good"};
	struct result r = handshake(ctx, &good, false);
	assert_true(r.done);
	assert_int_equal(r.verify, X509_V_ERR_CRL_HAS_EXPIRED);
	assert_non_null(strstr(certs_client_verify_reason(r.verify), "client_crl is out of date"));
	SSL_CTX_free(ctx);

	/* Without client_ca no certificate is asked for, so none arrives. */
	ctx = server_ctx(NULL, NULL);
	r = handshake(ctx, &good, false);
	assert_true(r.done);
	assert_false(r.peer);
	SSL_CTX_free(ctx);
}

/* A resumed session (which needs a session id context once peers are verified) keeps its verdict. */
static void test_resumption(void **state)
{
	static const char *const certs[] = {"good", "expired"};
	SSL_CTX *ctx = server_ctx("dev/client-ca.crt", "crl.pem");

	for (size_t i = 0; i < N(certs); i++) {
		struct client cl = {.cert = certs[i], .max_version = TLS1_2_VERSION};
		struct result first = handshake(ctx, &cl, true);
		assert_true(first.done);
		assert_non_null(first.session);
		cl.resume = first.session;
		struct result again = handshake(ctx, &cl, false);
		assert_true(again.done);
		assert_true(again.reused);
		assert_true(again.peer);
		assert_int_equal(again.verify, first.verify);
		SSL_SESSION_free(first.session);
	}
	SSL_CTX_free(ctx);
}

static void test_alpn(void **state)
{
	static const struct {
		const char *alpn;
		int max_version;
		bool done;
		const char *selected;
	} cases[] = {
	    {NULL, 0, true, ""},
	    {NULL, TLS1_2_VERSION, true, ""},
	    {"\x0apostgresql", 0, true, "postgresql"},
	    {"\x0apostgresql", TLS1_2_VERSION, true, "postgresql"},
	    {"\x08http/1.1\x0apostgresql", 0, true, "postgresql"},
	    {"\x08http/1.1", 0, false, ""},
	    {"\x08http/1.1", TLS1_2_VERSION, false, ""},
	    {"\x02h2\x08http/1.1", 0, false, ""},
	    {"\x08postgres", 0, false, ""},
	    {"\x0bpostgresql2", 0, false, ""},
	};

	for (int with_ca = 0; with_ca < 2; with_ca++) {
		SSL_CTX *ctx = server_ctx(with_ca ? "dev/client-ca.crt" : NULL, NULL);
		for (size_t i = 0; i < N(cases); i++) {
			struct client cl = {.alpn = cases[i].alpn, .max_version = cases[i].max_version};
			struct result r = handshake(ctx, &cl, false);
			if (r.done != cases[i].done)
				fail_msg("case %zu: done %d", i, r.done);
			assert_string_equal(r.alpn, cases[i].selected);
		}
		SSL_CTX_free(ctx);
	}
}

static void test_bad_files(void **state)
{
	static const struct {
		const char *client_ca, *client_crl;
		const char *why;
	} cases[] = {
	    {"missing.crt", NULL, "cannot load client_ca"},
	    {"dev/server.key", NULL, "cannot load client_ca"},
	    {"dev/client-ca.crt", "missing.pem", "cannot load client_crl"},
	    {"dev/client-ca.crt", "dev/client-ca.crt", "cannot load client_crl"}, /* a certificate, no CRL */
	};
	char err[1024], ca[PATH_MAX], crl[PATH_MAX];
	struct conf c;

	for (size_t i = 0; i < N(cases); i++) {
		memset(&c, 0, sizeof(c));
		c.tls_cert = (char *)in_dir("dev/server.crt");
		c.tls_key = (char *)in_dir("dev/server.key");
		snprintf(ca, sizeof(ca), "%s", in_dir(cases[i].client_ca));
		c.client_ca = ca;
		if (cases[i].client_crl) {
			snprintf(crl, sizeof(crl), "%s", in_dir(cases[i].client_crl));
			c.client_crl = crl;
		}
		err[0] = '\0';
		SSL_CTX *ctx = certs_server_ctx_new(&c, err, sizeof(err));
		if (ctx)
			fail_msg("case %zu: loaded", i);
		if (!strstr(err, cases[i].why) || !strstr(err, cases[i].client_crl ? crl : ca))
			fail_msg("case %zu: \"%s\"", i, err);
	}
	assert_int_equal(ERR_peek_error(), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_client_certificates),
	    cmocka_unit_test(test_resumption),
	    cmocka_unit_test(test_alpn),
	    cmocka_unit_test(test_bad_files),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
