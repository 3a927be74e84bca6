/*
 * certs: the SSL_CTX objects of both sides and the words for what went wrong with a certificate.
 *
 * Toward instances: one client SSL_CTX per instance, trusting exactly the CA bundle its operator
 * uploaded (ca_file), the system's roots (ca = system) or the shipped Amazon RDS bundle (ca = aws-rds),
 * with the instance's client certificate when it has one.  Hostname checks and SNI are per connection
 * (certs_instance_ssl_new()).  No sockets here and no logging: errors come back in a caller's buffer.
 *
 * Toward clients: one server SSL_CTX.  With client_ca set, every client is asked for a certificate; one
 * that has a valid certificate is identified by it: the subject CN is the app id, and exactly one
 * subjectAltName URI "pglane:{app}/{timeline}" (routing/certid.h) names the timeline.
 */
#ifndef PGLANE_CERTS_H
#define PGLANE_CERTS_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

#include "conf/conf.h"

/* A client SSL_CTX for inst (NULL with err set when a file cannot be loaded).  Free with SSL_CTX_free(). */
SSL_CTX *certs_instance_ctx_new(const struct conf_instance *inst, char *err, size_t errlen);

/* A new SSL for one connection to inst: SNI set to its host (unless it is an IP address), the host name
 * checked under verify-full, the chain checked under verify-ca and verify-full, nothing checked below. */
SSL *certs_instance_ssl_new(SSL_CTX *ctx, const struct conf_instance *inst);

/*
 * After a failed or finished handshake toward an instance: writes what a person must fix into out,
 * from SSL_get_verify_result() and the OpenSSL error queue (which it clears).  Returns false when the
 * certificate was fine (then out holds the handshake error, if any).
 */
bool certs_describe_failure(SSL *ssl, const struct conf_instance *inst, char *out, size_t outlen);

/*
 * The server SSL_CTX clients handshake with ([pglane] tls_cert, tls_key, tls_min_version, client_ca,
 * client_crl); NULL with err set when a file cannot be loaded.  Free with SSL_CTX_free().
 *
 * ALPN: a client offering protocols must offer "postgresql" (PostgreSQL 17's direct TLS), or the handshake
 * fails with a no_application_protocol alert; a client offering none (libpq before 17) is accepted.
 *
 * With client_ca, the handshake finishes whatever the client's certificate is worth, so that pglane can
 * answer a bad one with a 28000 ErrorResponse saying why instead of a bare TLS alert, and a client without
 * one can still log in with a password.  So a finished handshake proves nothing: the caller must treat a
 * client as identified only when SSL_get0_peer_certificate() is not NULL and SSL_get_verify_result() is
 * X509_V_OK, and refuse a client whose certificate is present but failed (certs_client_verify_reason()).
 * With client_crl, the CRLs it holds are checked for the client's certificate (not its CAs).
 */
SSL_CTX *certs_server_ctx_new(const struct conf *c, char *err, size_t errlen);

/* Words for a client with a verify result other than X509_V_OK: "the client certificate has expired" ... */
const char *certs_client_verify_reason(long verify_result);

/* Room for any URI pglane issues (routing's IDENTITY_URI_MAX), with its NUL. */
#define CERTS_URI_MAX 1024

/*
 * The pglane: URI of a client certificate into out (a URI that does not fit is refused as too long),
 * after checking, as strings, what maps it: the subject has exactly one CN, the subjectAltName exactly one
 * URI starting with "pglane:" (in any case), and the CN equals the app between "pglane:" and the first '/'.
 * So on success the CN is the app of the URI; turning the URI into an identity is routing's job
 * (identity_parse_uri()).  Returns false with err saying why the certificate maps to nothing, in words fit
 * for the client.
 */
bool certs_client_uri(X509 *cert, char *out, size_t outlen, char *err, size_t errlen);

#endif
