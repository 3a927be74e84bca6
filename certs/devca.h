/*
 * devca: certificates for development, made with OpenSSL's API (never the openssl command): a CA and a
 * server certificate for this machine, a client CA, client certificates carrying an app and a timeline,
 * and a reading of any PEM certificate for `pglane certs inspect`.
 *
 * Keys are EC P-256, signatures ECDSA with SHA-256.  Private keys are written with mode 0600 and nothing
 * is ever overwritten: a file that exists already is an error.  No logging: errors name the file and
 * what is wrong, in a caller's buffer.
 */
#ifndef PGLANE_DEVCA_H
#define PGLANE_DEVCA_H

#include <stdbool.h>
#include <stddef.h>

#include "certs/certs.h"

#define DEVCA_BACKDATE_S  (60 * 60) /* certificates start an hour early, for clocks behind ours */
#define DEVCA_CA_DAYS     3650      /* the dev CA and the client CA */
#define DEVCA_SERVER_DAYS 825       /* the server certificate */
#define DEVCA_CLIENT_DAYS 365       /* what `pglane certs issue` gives */
#define DEVCA_DAY_S       (24L * 60 * 60)

/* The files devca_init() writes into its directory. */
#define DEVCA_CA_CRT        "ca.crt"
#define DEVCA_SERVER_CRT    "server.crt"
#define DEVCA_SERVER_KEY    "server.key"
#define DEVCA_CLIENT_CA_CRT "client-ca.crt"
#define DEVCA_CLIENT_CA_KEY "client-ca.key"

/*
 * Creates dir (mode 0700) unless it exists and writes into it a development CA (ca.crt), a server
 * certificate for localhost, 127.0.0.1 and ::1 signed by it (server.crt, server.key) and a client CA
 * (client-ca.crt, client-ca.key).  The dev CA's key is not kept: it signs the server certificate and is
 * gone, so ca.crt can vouch for nothing else.  Returns false (err set, nothing left behind) when any of the
 * files exists or cannot be written.
 */
bool devca_init(const char *dir, char *err, size_t errlen);

/* A client certificate to issue. */
struct devca_client {
	const char *cn;  /* borrowed: the subject CN, the app id */
	const char *uri; /* borrowed: the one subjectAltName URI ("pglane:..."), or NULL for none */
	long from,
	    until; /* validity, in seconds from now: an until below zero makes an expired certificate */
};

/*
 * Issues req to cert_out and key_out (a new key), signed by the certificate in the PEM bundle ca_cert whose
 * public key matches the private key in ca_key.  Returns false (err set, nothing left behind) when the CA
 * files cannot be read or do not belong together, or an output file exists or cannot be written.
 */
bool devca_issue_client(const char *ca_cert, const char *ca_key, const struct devca_client *req,
                        const char *cert_out, const char *key_out, char *err, size_t errlen);

/* What a certificate says, for people. */
struct devca_info {
	char subject[512]; /* RFC 2253: "CN=myapp" */
	char issuer[512];
	char serial[96];     /* hex */
	char not_before[32]; /* "2025-01-31 12:00:00 UTC" */
	char not_after[32];
	int validity; /* below zero: not valid yet; zero: valid now; above zero: expired */
	bool is_ca;
	char sans[2048];         /* "DNS:localhost, IP:127.0.0.1, URI:pglane:a/production" ("" when none) */
	char uri[CERTS_URI_MAX]; /* what certs_client_uri() returns, "" when it refuses the certificate */
	char unmapped[512];      /* why certs_client_uri() refuses it, when uri is "" */
};

/* Reads the first certificate of the PEM file at path into out; returns false (err set) if there is none. */
bool devca_inspect(const char *path, struct devca_info *out, char *err, size_t errlen);

#endif
