/*
 * certs: see certs.h.
 */
#include "certs/certs.h"

#include <stdio.h>
#include <string.h>

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

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
	if (SSL_CTX_use_certificate_chain_file(ctx, c->tls_cert) != 1) {
		certs_err_queue("cannot load tls_cert", c->tls_cert, err, errlen);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, c->tls_key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
		certs_err_queue("cannot load tls_key", c->tls_key, err, errlen);
		goto fail;
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}
