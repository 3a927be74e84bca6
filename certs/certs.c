/*
 * certs: see certs.h.
 */
#include "certs/certs.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#define ALPN_POSTGRESQL    "postgresql"
#define URI_SCHEME         "pglane:"
#define SESSION_ID_CONTEXT "pglane"

static void certs_err_queue(const char *what, const char *path, char *err, size_t errlen)
{
	unsigned long e = ERR_get_error();
	char buf[256];

	ERR_error_string_n(e, buf, sizeof(buf));
	ERR_clear_error();
	snprintf(err, errlen, "%s %s: %s", what, path, e ? buf : "unknown error");
}

SSL_CTX *certs_instance_ctx_new(const struct conf_instance *inst, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (!ctx) {
		certs_err_queue("cannot create a TLS context for instance", inst->name, err, errlen);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	/* Sessions toward the same instance resume (one RTT and no certificate chain per connection). */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT);
	switch (inst->ca) {
	case CA_SOURCE_FILE:
	case CA_SOURCE_AWS_RDS:
		if (SSL_CTX_load_verify_locations(ctx, inst->ca_file, NULL) != 1) {
			certs_err_queue("cannot load the CA bundle", inst->ca_file, err, errlen);
			goto fail;
		}
		break;
	case CA_SOURCE_SYSTEM:
		if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
			certs_err_queue("cannot load the system's trusted roots for", inst->name, err, errlen);
			goto fail;
		}
		break;
	case CA_SOURCE_NONE:
		break;
	}
	if (inst->client_cert) {
		if (SSL_CTX_use_certificate_chain_file(ctx, inst->client_cert) != 1) {
			certs_err_queue("cannot load the client certificate", inst->client_cert, err, errlen);
			goto fail;
		}
		const char *key = inst->client_key ? inst->client_key : inst->client_cert;
		if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
			certs_err_queue("cannot load the client key", key, err, errlen);
			goto fail;
		}
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

static bool certs_is_ip(const char *host)
{
	unsigned char buf[sizeof(struct in6_addr)];
	return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

SSL *certs_instance_ssl_new(SSL_CTX *ctx, const struct conf_instance *inst)
{
	SSL *ssl = SSL_new(ctx);

	if (!ssl)
		return NULL;
	if (!certs_is_ip(inst->host))
		SSL_set_tlsext_host_name(ssl, inst->host);
	if (inst->sslmode >= SSLMODE_VERIFY_CA)
		SSL_set_verify(ssl, SSL_VERIFY_PEER, NULL);
	else
		SSL_set_verify(ssl, SSL_VERIFY_NONE, NULL);
	/* SSL_set1_host() matches DNS names and, for an address, the IP SANs (X509_CHECK_FLAG via OpenSSL). */
	if (inst->sslmode == SSLMODE_VERIFY_FULL) {
		if (certs_is_ip(inst->host))
			X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), inst->host);
		else
			SSL_set1_host(ssl, inst->host);
		SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
	}
	return ssl;
}

bool certs_describe_failure(SSL *ssl, const struct conf_instance *inst, char *out, size_t outlen)
{
	long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
	unsigned long e = ERR_peek_last_error();
	char ebuf[256] = "";

	if (e)
		ERR_error_string_n(e, ebuf, sizeof(ebuf));
	ERR_clear_error();
	switch (v) {
	case X509_V_OK:
		snprintf(out, outlen, "TLS handshake with instance \"%s\" failed%s%s", inst->name, *ebuf ? ": " : "",
			 ebuf);
		return false;
	case X509_V_ERR_HOSTNAME_MISMATCH:
	case X509_V_ERR_IP_ADDRESS_MISMATCH:
		snprintf(out, outlen,
			 "the certificate of instance \"%s\" is not valid for host name \"%s\": set the instance's "
			 "host to a name the certificate lists, or use sslmode=verify-ca",
			 inst->name, inst->host);
		return true;
	case X509_V_ERR_CERT_HAS_EXPIRED:
		snprintf(out, outlen, "the certificate of instance \"%s\" has expired", inst->name);
		return true;
	case X509_V_ERR_CERT_NOT_YET_VALID:
		snprintf(out, outlen, "the certificate of instance \"%s\" is not yet valid (check the clocks)",
			 inst->name);
		return true;
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
	case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
	case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
	case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
	case X509_V_ERR_CERT_SIGNATURE_FAILURE:
		snprintf(out, outlen,
			 "the certificate of instance \"%s\" is not signed by a trusted CA (%s): upload the CA that "
			 "signed the server's certificate as the instance's ca_file",
			 inst->name, X509_verify_cert_error_string(v));
		return true;
	default:
		snprintf(out, outlen, "the certificate of instance \"%s\" was refused: %s", inst->name,
			 X509_verify_cert_error_string(v));
		return true;
	}
}

/* Selects "postgresql" when the client offers it; refuses a client offering only other protocols. */
static int certs_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                             const unsigned char *in, unsigned int inlen, void *arg)
{
	const size_t n = strlen(ALPN_POSTGRESQL);

	for (unsigned int i = 0; i < inlen; i += 1u + in[i]) {
		if (in[i] == n && i + 1 + n <= inlen && memcmp(in + i + 1, ALPN_POSTGRESQL, n) == 0) {
			*out = in + i + 1;
			*outlen = in[i];
			return SSL_TLSEXT_ERR_OK;
		}
	}
	return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* Lets the handshake go on whatever verification found; the result stays in SSL_get_verify_result(). */
static int certs_client_verify_cb(int ok, X509_STORE_CTX *store)
{
	return 1;
}

static bool certs_server_client_ca(SSL_CTX *ctx, const struct conf *c, char *err, size_t errlen)
{
	STACK_OF(X509_NAME) *names = NULL;

	if (SSL_CTX_load_verify_locations(ctx, c->client_ca, NULL) != 1 ||
	    !(names = SSL_load_client_CA_file(c->client_ca))) {
		certs_err_queue("cannot load client_ca", c->client_ca, err, errlen);
		return false;
	}
	SSL_CTX_set_client_CA_list(ctx, names);
	if (c->client_crl) {
		X509_STORE *store = SSL_CTX_get_cert_store(ctx);
		X509_LOOKUP *lookup = X509_STORE_add_lookup(store, X509_LOOKUP_file());
		if (!lookup || X509_load_crl_file(lookup, c->client_crl, X509_FILETYPE_PEM) <= 0) {
			certs_err_queue("cannot load client_crl", c->client_crl, err, errlen);
			return false;
		}
		X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, certs_client_verify_cb);
	/* Without a session id context, OpenSSL refuses to resume a session once peers are verified. */
	SSL_CTX_set_session_id_context(ctx, (const unsigned char *)SESSION_ID_CONTEXT,
	                               strlen(SESSION_ID_CONTEXT));
	return true;
}

SSL_CTX *certs_server_ctx_new(const struct conf *c, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	if (!ctx) {
		certs_err_queue("cannot create a TLS context for", "clients", err, errlen);
		return NULL;
	}
	int minv = c->tls_min_version && strcmp(c->tls_min_version, "TLSv1.3") == 0 ? TLS1_3_VERSION : TLS1_2_VERSION;
	SSL_CTX_set_min_proto_version(ctx, minv);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_alpn_select_cb(ctx, certs_alpn_select, NULL);
	if (SSL_CTX_use_certificate_chain_file(ctx, c->tls_cert) != 1) {
		certs_err_queue("cannot load tls_cert", c->tls_cert, err, errlen);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, c->tls_key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
		certs_err_queue("cannot load tls_key", c->tls_key, err, errlen);
		goto fail;
	}
	if (c->client_ca && !certs_server_client_ca(ctx, c, err, errlen))
		goto fail;
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

const char *certs_client_verify_reason(long verify_result)
{
	switch (verify_result) {
	case X509_V_OK:
		return "the client certificate is valid";
	case X509_V_ERR_CERT_HAS_EXPIRED:
		return "the client certificate has expired";
	case X509_V_ERR_CERT_NOT_YET_VALID:
		return "the client certificate is not valid yet (check the clocks)";
	case X509_V_ERR_CERT_REVOKED:
		return "the client certificate has been revoked";
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
	case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
	case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
	case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
	case X509_V_ERR_CERT_SIGNATURE_FAILURE:
	case X509_V_ERR_CERT_UNTRUSTED:
	case X509_V_ERR_CERT_REJECTED:
		return "the client certificate is not signed by a CA in pglane's client_ca";
	case X509_V_ERR_INVALID_PURPOSE:
		return "the client certificate is not for client authentication (see its extendedKeyUsage)";
	case X509_V_ERR_UNABLE_TO_GET_CRL:
		return "pglane's client_crl has no revocation list from the client certificate's issuer";
	case X509_V_ERR_CRL_HAS_EXPIRED:
		return "pglane's client_crl is out of date (past its next update)";
	case X509_V_ERR_CRL_NOT_YET_VALID:
		return "pglane's client_crl is not valid yet (check the clocks)";
	default:
		return X509_verify_cert_error_string(verify_result);
	}
}

/* len bytes from a certificate, fit for a message: bytes outside printable ASCII, '"', '\\' become \xNN. */
static const char *certs_escape(const unsigned char *s, size_t len, char *out, size_t outlen)
{
	size_t o = 0;

	for (size_t i = 0; i < len && o + 5 < outlen; i++) {
		if (s[i] < 0x20 || s[i] >= 0x7F || s[i] == '"' || s[i] == '\\')
			o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", s[i]);
		else
			out[o++] = (char)s[i];
	}
	out[o] = '\0';
	return out;
}

/* The one pglane: URI among sans (crit as X509_get_ext_d2i() set it), or NULL with err set. */
static const ASN1_IA5STRING *certs_find_uri(const GENERAL_NAMES *sans, int crit, char *err, size_t errlen)
{
	const ASN1_IA5STRING *uri = NULL;
	int found = 0;

	if (crit == -2) {
		snprintf(err, errlen, "the certificate has more than one subjectAltName extension");
		return NULL;
	}
	for (int i = 0; i < sk_GENERAL_NAME_num(sans); i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
		const ASN1_IA5STRING *s = g->d.uniformResourceIdentifier;
		if (g->type == GEN_URI && s->length >= (int)strlen(URI_SCHEME) &&
		    strncasecmp((const char *)s->data, URI_SCHEME, strlen(URI_SCHEME)) == 0) {
			uri = s;
			found++;
		}
	}
	if (found == 1)
		return uri;
	if (found == 0)
		snprintf(err, errlen,
		         "the certificate has no " URI_SCHEME " URI among its subject alternative names");
	else
		snprintf(err, errlen, "the certificate has %d " URI_SCHEME " URIs; it must have exactly one",
		         found);
	return NULL;
}

/* Copies uri into out when the subject's one CN is the app of uri; else false with err set. */
static bool certs_check_cn(X509 *cert, const ASN1_IA5STRING *uri, char *out, size_t outlen, char *err,
                           size_t errlen)
{
	const X509_NAME *subject = X509_get_subject_name(cert);
	int at = X509_NAME_get_index_by_NID(subject, NID_commonName, -1), cnlen = -1;
	const char *app = (const char *)uri->data + strlen(URI_SCHEME);
	size_t len = (size_t)uri->length, applen = strcspn(app, "/");
	unsigned char *cn = NULL;
	char q1[128], q2[256];

	if (memchr(uri->data, '\0', len) || len >= outlen) {
		snprintf(err, errlen, "the certificate's URI \"%s\" is %s",
		         certs_escape(uri->data, len, q2, sizeof(q2)),
		         len >= outlen ? "too long" : "cut by a NUL byte");
		return false;
	}
	if (at >= 0 && X509_NAME_get_index_by_NID(subject, NID_commonName, at) < 0)
		cnlen = ASN1_STRING_to_UTF8(&cn, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, at)));
	bool ok = cnlen >= 0 && (size_t)cnlen == applen && memcmp(cn, app, applen) == 0;
	if (ok) {
		memcpy(out, uri->data, len);
		out[len] = '\0';
	} else if (cnlen < 0) {
		snprintf(err, errlen, "the certificate's subject must have exactly one CN, the app id");
	} else {
		snprintf(err, errlen, "the certificate's CN \"%s\" is not the app of its URI \"%s\"",
		         certs_escape(cn, (size_t)cnlen, q1, sizeof(q1)),
		         certs_escape(uri->data, len, q2, sizeof(q2)));
	}
	OPENSSL_free(cn);
	return ok;
}

bool certs_client_uri(X509 *cert, char *out, size_t outlen, char *err, size_t errlen)
{
	int crit = -1;
	GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, &crit, NULL);
	const ASN1_IA5STRING *uri = certs_find_uri(sans, crit, err, errlen);
	bool ok = uri && certs_check_cn(cert, uri, out, outlen, err, errlen);

	GENERAL_NAMES_free(sans);
	return ok;
}
