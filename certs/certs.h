/*
 * certs: the SSL_CTX objects of both sides and the words for what went wrong with a certificate.
 *
 * Toward instances: one client SSL_CTX per instance, trusting exactly the CA bundle its operator
 * uploaded (ca_file), the system's roots (ca = system) or the shipped Amazon RDS bundle (ca = aws-rds),
 * with the instance's client certificate when it has one.  Hostname checks and SNI are per connection
 * (certs_instance_ssl_new()).  No sockets here and no logging: errors come back in a caller's buffer.
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

/* The server SSL_CTX clients handshake with ([pglane] tls_cert, tls_key, client_ca ...). */
SSL_CTX *certs_server_ctx_new(const struct conf *c, char *err, size_t errlen);

#endif
