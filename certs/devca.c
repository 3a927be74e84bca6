/*
 * devca: the certificates `pglane certs` makes and reads (see devca.h).  Every certificate is built the
 * same way (devca_cert_new(): a random 127-bit serial, the CN, extensions by kind, the SANs, signed with
 * SHA-256); files are written all or none, and never over an existing file.
 */
#include "certs/devca.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#define DEVCA_CURVE       "P-256"
#define DEVCA_SERIAL_BITS 127 /* positive, under the 20 bytes RFC 5280 allows, and unguessable */

enum devca_kind { DEVCA_KIND_CA, DEVCA_KIND_SERVER, DEVCA_KIND_CLIENT };

static const struct devca_ext {
	int nid;
	const char *value;
} devca_exts[][6] = {
    [DEVCA_KIND_CA] =
        {
            {NID_basic_constraints, "critical,CA:TRUE,pathlen:0"},
            {NID_key_usage, "critical,keyCertSign,cRLSign"},
            {NID_subject_key_identifier, "hash"},
        },
    [DEVCA_KIND_SERVER] =
        {
            {NID_basic_constraints, "critical,CA:FALSE"},
            {NID_key_usage, "critical,digitalSignature"},
            {NID_ext_key_usage, "serverAuth"},
            {NID_subject_key_identifier, "hash"},
            {NID_authority_key_identifier, "keyid:always"},
        },
    [DEVCA_KIND_CLIENT] =
        {
            {NID_basic_constraints, "critical,CA:FALSE"},
            {NID_key_usage, "critical,digitalSignature"},
            {NID_ext_key_usage, "clientAuth"},
            {NID_subject_key_identifier, "hash"},
            {NID_authority_key_identifier, "keyid:always"},
        },
};

struct devca_san {
	int type;          /* GEN_DNS, GEN_IPADD or GEN_URI */
	const char *value; /* as a2i_GENERAL_NAME() reads it: "localhost", "::1", "pglane:a/production" */
};

/* A file to write: a certificate (mode 0644) or a private key (mode 0600). */
struct devca_out {
	const char *path;
	X509 *cert;
	EVP_PKEY *key;
};

/* "what path: the OpenSSL error" into err; clears the error queue and returns false. */
static bool devca_ssl_err(const char *what, const char *path, char *err, size_t errlen)
{
	unsigned long e = ERR_peek_last_error();
	char buf[256];

	ERR_error_string_n(e, buf, sizeof(buf));
	ERR_clear_error();
	snprintf(err, errlen, "%s %s: %s", what, path, e ? buf : "unknown error");
	return false;
}

/*
 * A new certificate of kind for key, named cn, signed by issuer_key: self-signed when issuer is NULL.
 * Valid from now + from to now + until (seconds).  NULL on failure, with the reason in the error queue.
 */
static X509 *devca_cert_new(enum devca_kind kind, EVP_PKEY *key, const char *cn, X509 *issuer,
                            EVP_PKEY *issuer_key, const struct devca_san *sans, size_t nsans, long from,
                            long until)
{
	X509 *x = X509_new();
	BIGNUM *serial = BN_new();
	GENERAL_NAMES *gens = NULL;
	X509V3_CTX v3;

	bool ok =
	    x && serial && X509_set_version(x, X509_VERSION_3) &&
	    BN_rand(serial, DEVCA_SERIAL_BITS, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY) &&
	    BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(x)) &&
	    X509_gmtime_adj(X509_getm_notBefore(x), from) && X509_gmtime_adj(X509_getm_notAfter(x), until) &&
	    X509_NAME_add_entry_by_NID(X509_get_subject_name(x), NID_commonName, MBSTRING_UTF8,
	                               (const unsigned char *)cn, -1, -1, 0) &&
	    X509_set_issuer_name(x, X509_get_subject_name(issuer ? issuer : x)) && X509_set_pubkey(x, key);
	if (ok)
		X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
	for (const struct devca_ext *e = devca_exts[kind]; ok && e->nid; e++) {
		X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, &v3, e->nid, e->value);
		ok = ext && X509_add_ext(x, ext, -1);
		X509_EXTENSION_free(ext);
	}
	if (ok && nsans > 0)
		ok = (gens = sk_GENERAL_NAME_new_null()) != NULL;
	for (size_t i = 0; ok && i < nsans; i++) {
		GENERAL_NAME *g = a2i_GENERAL_NAME(NULL, NULL, NULL, sans[i].type, sans[i].value, 0);
		ok = g && sk_GENERAL_NAME_push(gens, g) > 0;
		if (!ok)
			GENERAL_NAME_free(g);
	}
	ok = ok && (!gens || X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_APPEND) == 1) &&
	     X509_sign(x, issuer_key, EVP_sha256()) > 0;
	GENERAL_NAMES_free(gens);
	BN_free(serial);
	if (!ok) {
		X509_free(x);
		return NULL;
	}
	return x;
}

/* Writes o as PEM to o->path, which must not exist. */
static bool devca_write(const struct devca_out *o, char *err, size_t errlen)
{
	int fd = open(o->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, o->key ? 0600 : 0644);
	FILE *f = NULL;

	/* fchmod: a umask such as 0277 must not leave a key that its owner cannot read back. */
	if (fd < 0 || (o->key && fchmod(fd, 0600) != 0) || !(f = fdopen(fd, "w"))) {
		int e = errno;
		snprintf(err, errlen, "cannot create %s: %s", o->path, strerror(e));
		if (fd >= 0) {
			close(fd);
			unlink(o->path);
		}
		return false;
	}
	bool ok = o->key ? PEM_write_PrivateKey(f, o->key, NULL, NULL, 0, NULL, NULL) == 1
	                 : PEM_write_X509(f, o->cert) == 1;
	if (fclose(f) != 0 || !ok) {
		snprintf(err, errlen, "cannot write %s: %s", o->path,
		         errno ? strerror(errno) : "OpenSSL error");
		ERR_clear_error();
		unlink(o->path);
		return false;
	}
	return true;
}

/* Writes every file of out or none: refuses when one exists, and removes what it wrote when one fails. */
static bool devca_write_all(const struct devca_out *out, size_t n, char *err, size_t errlen)
{
	struct stat st;

	for (size_t i = 0; i < n; i++) {
		if (lstat(out[i].path, &st) == 0) {
			snprintf(err, errlen,
			         "%s exists already: pglane never overwrites a certificate or a key; remove "
			         "it or choose "
			         "another directory",
			         out[i].path);
			return false;
		}
	}
	for (size_t i = 0; i < n; i++) {
		errno = 0;
		if (!devca_write(&out[i], err, errlen)) {
			while (i-- > 0)
				unlink(out[i].path);
			return false;
		}
	}
	return true;
}

bool devca_init(const char *dir, char *err, size_t errlen)
{
	static const char *const names[] = {DEVCA_CA_CRT, DEVCA_SERVER_CRT, DEVCA_SERVER_KEY,
	                                    DEVCA_CLIENT_CA_CRT, DEVCA_CLIENT_CA_KEY};
	static const struct devca_san server_sans[] = {
	    {GEN_DNS, "localhost"}, {GEN_IPADD, "127.0.0.1"}, {GEN_IPADD, "::1"}};
	char paths[5][PATH_MAX], ca_cn[64], client_ca_cn[64];
	unsigned char tag[4];
	X509 *ca = NULL, *server = NULL, *client_ca = NULL;
	bool ok = false;

	if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
		snprintf(err, errlen, "cannot create directory %s: %s", dir, strerror(errno));
		return false;
	}
	for (size_t i = 0; i < 5; i++) {
		if ((size_t)snprintf(paths[i], sizeof(paths[i]), "%s/%s", dir, names[i]) >=
		    sizeof(paths[i])) {
			snprintf(err, errlen, "directory name %s is too long", dir);
			return false;
		}
	}
	/* A random tag in the CA names, so that the CAs of two `certs init` runs never pass for each other.
	 */
	if (RAND_bytes(tag, sizeof(tag)) != 1)
		return devca_ssl_err("cannot make random bytes for", dir, err, errlen);
	snprintf(ca_cn, sizeof(ca_cn), "pglane development CA %02x%02x%02x%02x", tag[0], tag[1], tag[2],
	         tag[3]);
	snprintf(client_ca_cn, sizeof(client_ca_cn), "pglane client CA %02x%02x%02x%02x", tag[0], tag[1],
	         tag[2], tag[3]);

	EVP_PKEY *ca_key = EVP_EC_gen(DEVCA_CURVE), *server_key = EVP_EC_gen(DEVCA_CURVE),
	         *client_ca_key = EVP_EC_gen(DEVCA_CURVE);
	if (ca_key && server_key && client_ca_key) {
		ca = devca_cert_new(DEVCA_KIND_CA, ca_key, ca_cn, NULL, ca_key, NULL, 0, -DEVCA_BACKDATE_S,
		                    DEVCA_CA_DAYS * DEVCA_DAY_S);
		server =
		    ca ? devca_cert_new(DEVCA_KIND_SERVER, server_key, "localhost", ca, ca_key, server_sans,
		                        3, -DEVCA_BACKDATE_S, DEVCA_SERVER_DAYS * DEVCA_DAY_S)
		       : NULL;
		client_ca = devca_cert_new(DEVCA_KIND_CA, client_ca_key, client_ca_cn, NULL, client_ca_key,
		                           NULL, 0, -DEVCA_BACKDATE_S, DEVCA_CA_DAYS * DEVCA_DAY_S);
	}
	if (!ca || !server || !client_ca) {
		devca_ssl_err("cannot make the certificates for", dir, err, errlen);
	} else {
		const struct devca_out out[] = {
		    {paths[0], ca, NULL},
		    {paths[1], server, NULL},
		    {paths[2], NULL, server_key},
		    {paths[3], client_ca, NULL},
		    {paths[4], NULL, client_ca_key},
		};
		ok = devca_write_all(out, 5, err, errlen);
	}
	X509_free(ca);
	X509_free(server);
	X509_free(client_ca);
	EVP_PKEY_free(ca_key);
	EVP_PKEY_free(server_key);
	EVP_PKEY_free(client_ca_key);
	return ok;
}

/* Refuses to ask for a pass phrase: a CA key for development is not encrypted. */
static int devca_no_password(char *buf, int size, int rwflag, void *u)
{
	return -1;
}

/* The certificate in the bundle at path whose public key belongs to key, or NULL with err set. */
static X509 *devca_find_issuer(const char *path, EVP_PKEY *key, const char *key_path, char *err,
                               size_t errlen)
{
	FILE *f = fopen(path, "r");
	X509 *x = NULL;

	if (!f) {
		snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
		return NULL;
	}
	while ((x = PEM_read_X509(f, NULL, NULL, NULL)) && X509_check_private_key(x, key) != 1)
		X509_free(x);
	fclose(f);
	ERR_clear_error(); /* the end of the file, and keys that did not match */
	if (!x)
		snprintf(err, errlen, "no certificate in %s belongs to the key in %s", path, key_path);
	else if (X509_check_ca(x) != 1)
		snprintf(err, errlen, "the certificate in %s that belongs to %s is not a CA certificate",
		         path, key_path);
	else
		return x;
	X509_free(x);
	return NULL;
}

bool devca_issue_client(const char *ca_cert, const char *ca_key, const struct devca_client *req,
                        const char *cert_out, const char *key_out, char *err, size_t errlen)
{
	const struct devca_san san = {GEN_URI, req->uri};
	FILE *f = fopen(ca_key, "r");
	EVP_PKEY *issuer_key = NULL, *key = NULL;
	X509 *issuer = NULL, *cert = NULL;
	bool ok = false;

	if (!f) {
		snprintf(err, errlen, "cannot open %s: %s", ca_key, strerror(errno));
		return false;
	}
	issuer_key = PEM_read_PrivateKey(f, NULL, devca_no_password, NULL);
	fclose(f);
	if (!issuer_key) {
		devca_ssl_err("no unencrypted PEM private key in", ca_key, err, errlen);
	} else if (!(issuer = devca_find_issuer(ca_cert, issuer_key, ca_key, err, errlen))) {
		/* err is set */
	} else if (!(key = EVP_EC_gen(DEVCA_CURVE)) ||
	           !(cert = devca_cert_new(DEVCA_KIND_CLIENT, key, req->cn, issuer, issuer_key, &san,
	                                   req->uri ? 1 : 0, req->from, req->until))) {
		devca_ssl_err("cannot make the certificate", cert_out, err, errlen);
	} else {
		const struct devca_out out[] = {{cert_out, cert, NULL}, {key_out, NULL, key}};
		ok = devca_write_all(out, 2, err, errlen);
	}
	X509_free(cert);
	X509_free(issuer);
	EVP_PKEY_free(key);
	EVP_PKEY_free(issuer_key);
	return ok;
}

/* ---------------------------------------------------------------- inspect */

/* Moves what b holds into out (cut to fit) and empties b. */
static void devca_bio_take(BIO *b, char *out, size_t outlen)
{
	int n = BIO_read(b, out, (int)outlen - 1);

	out[n > 0 ? n : 0] = '\0';
	(void)BIO_reset(b);
}

static void devca_time(const ASN1_TIME *t, char *out, size_t outlen)
{
	struct tm tm;

	if (ASN1_TIME_to_tm(t, &tm) != 1 || strftime(out, outlen, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
		snprintf(out, outlen, "(unreadable)");
}

/* The SANs of x into b: "DNS:localhost, IP:::1, URI:pglane:a/production"; odd bytes escaped. */
static void devca_print_sans(X509 *x, BIO *b)
{
	const unsigned long esc = ASN1_STRFLGS_ESC_CTRL | ASN1_STRFLGS_ESC_MSB;
	GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	char ip[INET6_ADDRSTRLEN];

	for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
		GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
		BIO_puts(b, i ? ", " : "");
		switch (g->type) {
		case GEN_DNS:
		case GEN_URI:
		case GEN_EMAIL:
			BIO_puts(b, g->type == GEN_DNS ? "DNS:" : g->type == GEN_URI ? "URI:" : "email:");
			ASN1_STRING_print_ex(b, g->d.ia5, esc);
			break;
		case GEN_IPADD: {
			int len = g->d.iPAddress->length;
			if ((len == 4 || len == 16) &&
			    inet_ntop(len == 4 ? AF_INET : AF_INET6, g->d.iPAddress->data, ip, sizeof(ip)))
				BIO_printf(b, "IP:%s", ip);
			else
				BIO_puts(b, "IP:(malformed)");
			break;
		}
		default:
			GENERAL_NAME_print(b, g);
		}
	}
	GENERAL_NAMES_free(gens);
}

bool devca_inspect(const char *path, struct devca_info *out, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	BIO *b = NULL;
	X509 *x = NULL;

	memset(out, 0, sizeof(*out));
	if (!f) {
		snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
		return false;
	}
	x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	if (!x)
		return devca_ssl_err("no PEM certificate in", path, err, errlen);
	if (!(b = BIO_new(BIO_s_mem()))) {
		X509_free(x);
		return devca_ssl_err("cannot inspect", path, err, errlen);
	}
	X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253);
	devca_bio_take(b, out->subject, sizeof(out->subject));
	X509_NAME_print_ex(b, X509_get_issuer_name(x), 0, XN_FLAG_RFC2253);
	devca_bio_take(b, out->issuer, sizeof(out->issuer));
	i2a_ASN1_INTEGER(b, X509_get0_serialNumber(x));
	devca_bio_take(b, out->serial, sizeof(out->serial));
	devca_print_sans(x, b);
	devca_bio_take(b, out->sans, sizeof(out->sans));
	devca_time(X509_get0_notBefore(x), out->not_before, sizeof(out->not_before));
	devca_time(X509_get0_notAfter(x), out->not_after, sizeof(out->not_after));
	out->validity = X509_cmp_current_time(X509_get0_notBefore(x)) > 0  ? -1
	                : X509_cmp_current_time(X509_get0_notAfter(x)) < 0 ? 1
	                                                                   : 0;
	out->is_ca = X509_check_ca(x) == 1;
	if (!certs_client_uri(x, out->uri, sizeof(out->uri), out->unmapped, sizeof(out->unmapped)))
		out->uri[0] = '\0';
	BIO_free(b);
	X509_free(x);
	ERR_clear_error();
	return true;
}
