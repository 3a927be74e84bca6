/*
 * Unit tests for certs/devca and certs_client_uri(): `certs init` into a temporary directory (files, modes,
 * no overwriting), the server certificate checked against the CA with X509_verify_cert() and for its
 * names, client certificates issued, verified, expired and refused, `certs inspect`'s reading, and a table
 * of certificates that map to an app or to nothing.  Every key is generated here, in a directory removed
 * at the end.
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
#include <unistd.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "certs/devca.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static char tmp[] = "/tmp/pglane-test-devca-XXXXXX";
static char dev[PATH_MAX], cca[PATH_MAX], ccakey[PATH_MAX]; /* dev/, its client-ca.crt and client-ca.key */

static const char *in_dir(const char *name)
{
	static char bufs[4][PATH_MAX];
	static int next;
	char *b = bufs[next++ % 4];

	snprintf(b, PATH_MAX, "%s/%s", tmp, name);
	return b;
}

static X509 *read_cert(const char *path)
{
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	assert_non_null(x);
	return x;
}

static EVP_PKEY *read_key(const char *path)
{
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	assert_non_null(k);
	return k;
}

static mode_t file_mode(const char *path)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	return st.st_mode & 07777;
}

static bool exists(const char *path)
{
	return access(path, F_OK) == 0;
}

/* The verify error of cert against the certificates in ca_path, for purpose (X509_PURPOSE_SSL_...). */
static int verify(const char *ca_path, X509 *cert, int purpose)
{
	X509_STORE *store = X509_STORE_new();
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();

	assert_int_equal(X509_STORE_load_file(store, ca_path), 1);
	assert_int_equal(X509_STORE_CTX_init(ctx, store, cert, NULL), 1);
	X509_STORE_CTX_set_purpose(ctx, purpose);
	int ok = X509_verify_cert(ctx);
	int e = X509_STORE_CTX_get_error(ctx);
	assert_true(ok == 1 ? e == X509_V_OK : e != X509_V_OK);
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(store);
	return e;
}

static int setup(void **state)
{
	char err[1024];

	umask(022);
	if (!mkdtemp(tmp))
		return -1;
	snprintf(dev, sizeof(dev), "%s/dev", tmp);
	snprintf(cca, sizeof(cca), "%s/dev/client-ca.crt", tmp);
	snprintf(ccakey, sizeof(ccakey), "%s/dev/client-ca.key", tmp);
	if (!devca_init(dev, err, sizeof(err))) {
		fprintf(stderr, "devca_init: %s\n", err);
		return -1;
	}
	return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static int teardown(void **state)
{
	return nftw(tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void test_init_files(void **state)
{
	static const char *const certs[] = {"dev/ca.crt", "dev/server.crt", "dev/client-ca.crt"};
	static const char *const keys[] = {"dev/server.key", "dev/client-ca.key"};
	char err[1024];

	assert_int_equal(file_mode(dev), 0700);
	for (size_t i = 0; i < N(certs); i++)
		assert_int_equal(file_mode(in_dir(certs[i])), 0644);
	for (size_t i = 0; i < N(keys); i++)
		assert_int_equal(file_mode(in_dir(keys[i])), 0600);
	assert_false(exists(in_dir("dev/ca.key"))); /* the dev CA's key is not kept */

	/* A second run refuses, naming the file, and changes nothing. */
	X509 *before = read_cert(in_dir("dev/ca.crt"));
	assert_false(devca_init(dev, err, sizeof(err)));
	assert_non_null(strstr(err, "/dev/ca.crt exists already"));
	X509 *after = read_cert(in_dir("dev/ca.crt"));
	assert_int_equal(X509_cmp(before, after), 0);
	X509_free(before);
	X509_free(after);

	/* One existing file stops the whole run: nothing else is written. */
	assert_int_equal(mkdir(in_dir("partial"), 0700), 0);
	FILE *f = fopen(in_dir("partial/client-ca.key"), "w");
	fclose(f);
	assert_false(devca_init(in_dir("partial"), err, sizeof(err)));
	assert_non_null(strstr(err, "client-ca.key exists already"));
	assert_false(exists(in_dir("partial/ca.crt")));
	assert_false(exists(in_dir("partial/server.key")));

	/* Keys are 0600 whatever the umask, and a missing parent directory is named. */
	mode_t old = umask(0277);
	assert_true(devca_init(in_dir("umask"), err, sizeof(err)));
	umask(old);
	assert_int_equal(file_mode(in_dir("umask/server.key")), 0600);
	assert_int_equal(file_mode(in_dir("umask/client-ca.key")), 0600);
	assert_false(devca_init(in_dir("no/such/dir"), err, sizeof(err)));
	assert_non_null(strstr(err, "no/such/dir"));
}

static void test_server_cert(void **state)
{
	X509 *ca = read_cert(in_dir("dev/ca.crt")), *server = read_cert(in_dir("dev/server.crt"));
	EVP_PKEY *key = read_key(in_dir("dev/server.key"));

	assert_int_equal(verify(in_dir("dev/ca.crt"), server, X509_PURPOSE_SSL_SERVER), X509_V_OK);
	assert_int_not_equal(verify(cca, server, X509_PURPOSE_SSL_SERVER), X509_V_OK);
	assert_int_equal(X509_check_private_key(server, key), 1);
	assert_int_equal(X509_check_ca(ca), 1);
	assert_int_equal(X509_check_ca(server), 0);
	assert_int_equal(X509_check_host(server, "localhost", 0, 0, NULL), 1);
	assert_int_equal(X509_check_ip_asc(server, "127.0.0.1", 0), 1);
	assert_int_equal(X509_check_ip_asc(server, "::1", 0), 1);
	assert_int_equal(X509_check_host(server, "example.com", 0, 0, NULL), 0);
	assert_int_equal(X509_check_ip_asc(server, "10.0.0.1", 0), 0);
	X509_free(ca);
	X509_free(server);
	EVP_PKEY_free(key);
}

static void test_issue(void **state)
{
	struct devca_client req = {"myapp", "pglane:myapp/branch/feature%2Flogin", -60, DEVCA_DAY_S};
	char err[1024], uri[CERTS_URI_MAX];

	assert_true(
	    devca_issue_client(cca, ccakey, &req, in_dir("c.crt"), in_dir("c.key"), err, sizeof(err)));
	assert_int_equal(file_mode(in_dir("c.key")), 0600);
	assert_int_equal(file_mode(in_dir("c.crt")), 0644);

	X509 *c = read_cert(in_dir("c.crt"));
	EVP_PKEY *k = read_key(in_dir("c.key"));
	assert_int_equal(X509_check_private_key(c, k), 1);
	assert_int_equal(verify(cca, c, X509_PURPOSE_SSL_CLIENT), X509_V_OK);
	assert_int_equal(verify(in_dir("dev/ca.crt"), c, X509_PURPOSE_SSL_CLIENT),
	                 X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
	assert_int_not_equal(verify(cca, c, X509_PURPOSE_SSL_SERVER), X509_V_OK); /* clientAuth only */
	assert_true(certs_client_uri(c, uri, sizeof(uri), err, sizeof(err)));
	assert_string_equal(uri, "pglane:myapp/branch/feature%2Flogin");
	X509_free(c);
	EVP_PKEY_free(k);

	/* Expired and not yet valid. */
	struct devca_client old = {"myapp", "pglane:myapp/production", -2 * DEVCA_DAY_S, -DEVCA_DAY_S};
	struct devca_client future = {"myapp", "pglane:myapp/production", DEVCA_DAY_S, 2 * DEVCA_DAY_S};
	assert_true(
	    devca_issue_client(cca, ccakey, &old, in_dir("old.crt"), in_dir("old.key"), err, sizeof(err)));
	assert_true(
	    devca_issue_client(cca, ccakey, &future, in_dir("new.crt"), in_dir("new.key"), err, sizeof(err)));
	c = read_cert(in_dir("old.crt"));
	assert_int_equal(verify(cca, c, X509_PURPOSE_SSL_CLIENT), X509_V_ERR_CERT_HAS_EXPIRED);
	X509_free(c);
	c = read_cert(in_dir("new.crt"));
	assert_int_equal(verify(cca, c, X509_PURPOSE_SSL_CLIENT), X509_V_ERR_CERT_NOT_YET_VALID);
	X509_free(c);
}

static void test_issue_refused(void **state)
{
	static const struct {
		const char *ca, *key, *out;
		const char *why;
	} cases[] = {
	    {"dev/ca.crt", "dev/client-ca.key", "r1", "no certificate in"}, /* not the key's certificate */
	    {"dev/server.crt", "dev/server.key", "r2", "is not a CA certificate"},
	    {"dev/client-ca.crt", "dev/missing.key", "r3", "cannot open"},
	    {"dev/missing.crt", "dev/client-ca.key", "r4", "cannot open"},
	    {"dev/client-ca.crt", "dev/ca.crt", "r5", "no unencrypted PEM private key in"},
	    {"dev/client-ca.crt", "dev/client-ca.key", "dev", "dev/server.key exists already"},
	    {"dev/client-ca.crt", "dev/client-ca.key", "no/such", "cannot create"},
	};
	struct devca_client req = {"myapp", "pglane:myapp/production", 0, DEVCA_DAY_S};
	char err[1024], crt[PATH_MAX], key[PATH_MAX];

	for (size_t i = 0; i < N(cases); i++) {
		snprintf(crt, sizeof(crt), "%s/%s.crt", tmp, cases[i].out);
		snprintf(key, sizeof(key), "%s/%s", tmp,
		         strcmp(cases[i].out, "dev") ? "x.key" : "dev/server.key");
		err[0] = '\0';
		if (devca_issue_client(in_dir(cases[i].ca), in_dir(cases[i].key), &req, crt, key, err,
		                       sizeof(err)))
			fail_msg("case %zu: issued", i);
		if (!strstr(err, cases[i].why))
			fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err, cases[i].why);
		assert_false(exists(crt));
		assert_false(exists(in_dir("x.key")));
	}
	assert_int_equal(ERR_peek_error(), 0);
}

static void test_inspect(void **state)
{
	struct devca_info info;
	char err[1024];

	assert_true(devca_inspect(in_dir("dev/server.crt"), &info, err, sizeof(err)));
	assert_string_equal(info.subject, "CN=localhost");
	assert_non_null(strstr(info.issuer, "CN=pglane development CA "));
	assert_string_equal(info.sans, "DNS:localhost, IP:127.0.0.1, IP:::1");
	assert_int_equal(info.validity, 0);
	assert_false(info.is_ca);
	assert_string_equal(info.uri, "");
	assert_non_null(strstr(info.unmapped, "no pglane: URI"));
	assert_int_equal(strlen(info.not_before), strlen("2025-01-31 12:00:00 UTC"));
	assert_true(strlen(info.serial) > 20);

	assert_true(devca_inspect(in_dir("dev/ca.crt"), &info, err, sizeof(err)));
	assert_true(info.is_ca);
	assert_string_equal(info.subject, info.issuer);
	assert_string_equal(info.sans, "");

	struct devca_client req = {"myapp", "pglane:myapp/preview", -60, DEVCA_DAY_S};
	assert_true(
	    devca_issue_client(cca, ccakey, &req, in_dir("i.crt"), in_dir("i.key"), err, sizeof(err)));
	assert_true(devca_inspect(in_dir("i.crt"), &info, err, sizeof(err)));
	assert_string_equal(info.subject, "CN=myapp");
	assert_non_null(strstr(info.issuer, "CN=pglane client CA "));
	assert_string_equal(info.sans, "URI:pglane:myapp/preview");
	assert_string_equal(info.uri, "pglane:myapp/preview");
	assert_string_equal(info.unmapped, "");

	/* Issued by test_issue. */
	assert_true(devca_inspect(in_dir("old.crt"), &info, err, sizeof(err)));
	assert_int_equal(info.validity, 1);
	assert_true(devca_inspect(in_dir("new.crt"), &info, err, sizeof(err)));
	assert_int_equal(info.validity, -1);

	assert_false(devca_inspect(in_dir("dev/none.crt"), &info, err, sizeof(err)));
	assert_non_null(strstr(err, "cannot open"));
	assert_non_null(strstr(err, "dev/none.crt"));
	assert_false(devca_inspect(in_dir("dev/server.key"), &info, err, sizeof(err)));
	assert_non_null(strstr(err, "no PEM certificate in"));
	assert_non_null(strstr(err, "dev/server.key"));
}

/* An unsigned certificate with the given CNs (up to two) and subjectAltName (X509V3 config syntax). */
static X509 *make_cert(const char *cn1, const char *cn2, const char *san)
{
	X509 *x = X509_new();
	X509_NAME *name = X509_get_subject_name(x);
	X509V3_CTX v3;

	X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)"pglane", -1, -1, 0);
	if (cn1)
		X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8, (const unsigned char *)cn1,
		                           -1, -1, 0);
	if (cn2)
		X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8, (const unsigned char *)cn2,
		                           -1, -1, 0);
	X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
	if (san) {
		X509_EXTENSION *e = X509V3_EXT_nconf_nid(NULL, &v3, NID_subject_alt_name, san);
		assert_non_null(e);
		X509_add_ext(x, e, -1);
		X509_EXTENSION_free(e);
	}
	return x;
}

static void test_client_uri(void **state)
{
	static const struct {
		const char *cn1, *cn2, *san;
		const char *want; /* the URI, or part of the error */
		bool ok;
	} cases[] = {
	    {"myapp", NULL, "URI:pglane:myapp/production", "pglane:myapp/production", true},
	    {"myapp", NULL, "DNS:x, URI:https://example.com/, URI:pglane:myapp/preview",
	     "pglane:myapp/preview", true},
	    {"myapp", NULL, "URI:PGLANE:myapp/production", "PGLANE:myapp/production", true},
	    {"myapp", NULL, "URI:pglane:myapp", "pglane:myapp",
	     true}, /* the strings match; routing refuses it */
	    {"myapp", NULL, NULL, "no pglane: URI", false},
	    {"myapp", NULL, "DNS:myapp", "no pglane: URI", false},
	    {"myapp", NULL, "URI:https://pglane:myapp/production", "no pglane: URI", false},
	    {"myapp", NULL, "URI:pglane:myapp/production, URI:pglane:myapp/preview", "2 pglane: URIs", false},
	    {"other", NULL, "URI:pglane:myapp/production", "CN \"other\" is not the app", false},
	    {"myap", NULL, "URI:pglane:myapp/production", "CN \"myap\" is not the app", false},
	    {"myapp2", NULL, "URI:pglane:myapp/production", "is not the app", false},
	    {"myapp/production", NULL, "URI:pglane:myapp/production", "is not the app", false},
	    {"My\"app\n", NULL, "URI:pglane:myapp/production", "CN \"My\\x22app\\x0a\"", false},
	    {NULL, NULL, "URI:pglane:myapp/production", "exactly one CN", false},
	    {"myapp", "myapp", "URI:pglane:myapp/production", "exactly one CN", false},
	};
	char uri[CERTS_URI_MAX], err[1024];

	for (size_t i = 0; i < N(cases); i++) {
		X509 *x = make_cert(cases[i].cn1, cases[i].cn2, cases[i].san);
		err[0] = uri[0] = '\0';
		bool ok = certs_client_uri(x, uri, sizeof(uri), err, sizeof(err));
		if (ok != cases[i].ok)
			fail_msg("case %zu: certs_client_uri = %d (%s)", i, ok, err);
		if (ok)
			assert_string_equal(uri, cases[i].want);
		else if (!strstr(err, cases[i].want))
			fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err, cases[i].want);
		X509_free(x);
	}

	/* Two subjectAltName extensions, a URI cut by a NUL byte, a URI too long for the caller's buffer. */
	X509 *x = make_cert("myapp", NULL, "URI:pglane:myapp/production");
	X509 *y = make_cert("myapp", NULL, "URI:pglane:myapp/preview");
	X509_add_ext(x, X509_get_ext(y, X509_get_ext_by_NID(y, NID_subject_alt_name, -1)), -1);
	assert_false(certs_client_uri(x, uri, sizeof(uri), err, sizeof(err)));
	assert_non_null(strstr(err, "more than one subjectAltName"));
	X509_free(x);
	X509_free(y);

	static const char nul[] = "pglane:myapp/production\0.evil";
	GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
	GENERAL_NAME *g = GENERAL_NAME_new();
	ASN1_IA5STRING *s = ASN1_IA5STRING_new();
	ASN1_STRING_set(s, nul, sizeof(nul) - 1);
	GENERAL_NAME_set0_value(g, GEN_URI, s);
	sk_GENERAL_NAME_push(gens, g);
	x = make_cert("myapp", NULL, NULL);
	X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT);
	GENERAL_NAMES_free(gens);
	assert_false(certs_client_uri(x, uri, sizeof(uri), err, sizeof(err)));
	assert_non_null(strstr(err, "cut by a NUL byte"));
	assert_non_null(strstr(err, "production\\x00.evil"));
	X509_free(x);

	x = make_cert("myapp", NULL, "URI:pglane:myapp/production");
	assert_false(certs_client_uri(x, uri, strlen("pglane:myapp/production"), err, sizeof(err)));
	assert_non_null(strstr(err, "too long"));
	assert_true(certs_client_uri(x, uri, strlen("pglane:myapp/production") + 1, err, sizeof(err)));
	X509_free(x);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_init_files), cmocka_unit_test(test_server_cert),
	    cmocka_unit_test(test_issue),      cmocka_unit_test(test_issue_refused),
	    cmocka_unit_test(test_inspect),    cmocka_unit_test(test_client_uri),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
