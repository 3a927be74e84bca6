/*
 * directtls: a small OpenSSL client for PostgreSQL 17's direct TLS, so that a shell script can check that
 * pglane accepts a ClientHello as the very first bytes (no SSLRequest) with ALPN "postgresql", and refuses
 * one offering another protocol.
 *
 *   directtls [--alpn LIST] [--ca FILE] [--cert FILE --key FILE] [--timeout SEC] HOST PORT [USER [DATABASE]]
 *
 * It connects to HOST:PORT, runs the TLS handshake at once offering the comma-separated ALPN LIST (default
 * "postgresql"; "" offers none), verifies the server's certificate against --ca (chain and host name HOST)
 * when given, and prints
 *
 *   TLS <version> ALPN <protocol or "-">
 *
 * Then, when USER is given, it sends a protocol 3.0 StartupMessage (user USER, database DATABASE when given)
 * and prints the first message it gets back:
 *
 *   R:<code> [mechanisms]   an authentication request ("R:10 SCRAM-SHA-256-PLUS,SCRAM-SHA-256", "R:0")
 *   E:<SQLSTATE> <message>  an ErrorResponse
 *   <type letter>           anything else
 *   EOF                     the server closed the connection
 *
 * A failed handshake prints "HANDSHAKE-FAILED <OpenSSL's reason>" and exits 1; a failed verification
 * prints "HANDSHAKE-FAILED certificate verify failed: <reason>".  Exit status: 0 when the handshake worked
 * (whatever the server answered), 1 when the connection or the handshake failed, 2 for a usage error.
 */
#include <errno.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define DT_MSG_MAX (64 * 1024)

static void usage(void)
{
	fprintf(stderr, "usage: directtls [--alpn LIST] [--ca FILE] [--cert FILE --key FILE] [--timeout SEC] "
	                "HOST PORT [USER [DATABASE]]\n");
	exit(2);
}

static int dt_connect(const char *host, const char *port, double timeout)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res, *ai;
	struct timeval tv = {.tv_sec = (time_t)timeout,
	                     .tv_usec = (suseconds_t)((timeout - (time_t)timeout) * 1e6)};
	int fd = -1, rc = getaddrinfo(host, port, &hints, &res);

	if (rc != 0) {
		printf("CONNECT-FAILED %s\n", gai_strerror(rc));
		return -1;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
		if (fd < 0)
			continue;
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		close(fd);
		fd = -1;
	}
	if (fd < 0)
		printf("CONNECT-FAILED %s\n", strerror(errno));
	freeaddrinfo(res);
	return fd;
}

/* "a,b" into ALPN's wire form (length-prefixed names); returns the length, or -1 when a name is bad. */
static int dt_alpn_wire(const char *list, unsigned char *out, size_t outlen)
{
	size_t o = 0;

	while (*list) {
		size_t n = strcspn(list, ",");
		if (n == 0 || n > 255 || o + 1 + n > outlen)
			return -1;
		out[o++] = (unsigned char)n;
		memcpy(out + o, list, n);
		o += n;
		list += n;
		if (*list == ',')
			list++;
	}
	return (int)o;
}

static void dt_put_u32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

static uint32_t dt_get_u32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Reads exactly n bytes; false on EOF or an error. */
static bool dt_read(SSL *ssl, unsigned char *buf, size_t n)
{
	size_t got = 0;

	while (got < n) {
		size_t r = 0;
		if (SSL_read_ex(ssl, buf + got, n - got, &r) != 1)
			return false;
		got += r;
	}
	return true;
}

/* Prints the first message the server sends after the StartupMessage. */
static void dt_print_first_message(SSL *ssl)
{
	static unsigned char body[DT_MSG_MAX];
	unsigned char head[5];

	if (!dt_read(ssl, head, 5)) {
		printf("EOF\n");
		return;
	}
	uint32_t len = dt_get_u32(head + 1);
	if (len < 4 || len - 4 > sizeof(body) - 1 || !dt_read(ssl, body, len - 4)) {
		printf("%c (bad length %u or cut short)\n", head[0], len);
		return;
	}
	size_t blen = len - 4;
	body[blen] = '\0';
	if (head[0] == 'R' && blen >= 4) {
		printf("R:%u", dt_get_u32(body));
		/* AuthenticationSASL: the mechanisms, each NUL-terminated, then an empty one. */
		for (size_t i = 4, first = 1; dt_get_u32(body) == 10 && i < blen && body[i]; first = 0) {
			printf("%s%s", first ? " " : ",", (const char *)body + i);
			i += strlen((const char *)body + i) + 1;
		}
		putchar('\n');
	} else if (head[0] == 'E') {
		const char *code = "-----", *msg = "";
		for (size_t i = 0; i < blen && body[i];) {
			const char *val = (const char *)body + i + 1;
			if (body[i] == 'C')
				code = val;
			else if (body[i] == 'M')
				msg = val;
			i += 1 + strlen(val) + 1;
		}
		printf("E:%s %s\n", code, msg);
	} else {
		printf("%c\n", head[0]);
	}
}

static void dt_print_ssl_error(SSL *ssl)
{
	unsigned long e = ERR_peek_last_error();
	long v = SSL_get_verify_result(ssl);
	char buf[256] = "unknown error";

	if (e)
		ERR_error_string_n(e, buf, sizeof(buf));
	if (v != X509_V_OK)
		printf("HANDSHAKE-FAILED certificate verify failed: %s\n", X509_verify_cert_error_string(v));
	else
		printf("HANDSHAKE-FAILED %s\n", e ? buf : "the server closed the connection");
}

/* Builds the startup message into msg; returns its length. */
static size_t dt_startup(unsigned char *msg, const char *user, const char *db)
{
	const char *kv[4] = {"user", user, "database", db};
	size_t o = 8;

	for (int k = 0; k < (db ? 4 : 2); k++) {
		size_t n = strlen(kv[k]) + 1;
		memcpy(msg + o, kv[k], n);
		o += n;
	}
	msg[o++] = '\0';
	dt_put_u32(msg, (uint32_t)o);
	dt_put_u32(msg + 4, 3u << 16);
	return o;
}

/* One connection: handshake, then the StartupMessage when user is set.  Returns the exit status. */
static int dt_session(SSL_CTX *ctx, const char *host, const char *port, double timeout, bool verify,
                      const char *user, const char *db)
{
	unsigned char addr[sizeof(struct in6_addr)], msg[2048];
	const unsigned char *sel = NULL;
	unsigned int sel_len = 0;
	int rc = 1, fd = dt_connect(host, port, timeout);
	SSL *ssl;

	if (fd < 0)
		return 1;
	if (!(ssl = SSL_new(ctx))) {
		printf("HANDSHAKE-FAILED cannot create a TLS connection\n");
		close(fd);
		return 1;
	}
	bool is_ip = inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1;
	if (!is_ip)
		SSL_set_tlsext_host_name(ssl, host);
	if (verify && is_ip)
		X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host);
	else if (verify)
		SSL_set1_host(ssl, host);
	SSL_set_fd(ssl, fd);
	if (SSL_connect(ssl) != 1) {
		dt_print_ssl_error(ssl);
		goto out;
	}
	SSL_get0_alpn_selected(ssl, &sel, &sel_len);
	printf("TLS %s ALPN %.*s\n", SSL_get_version(ssl), sel_len ? (int)sel_len : 1,
	       sel_len ? (const char *)sel : "-");
	fflush(stdout);
	if (user) {
		size_t len = dt_startup(msg, user, db);
		if (SSL_write(ssl, msg, (int)len) != (int)len) {
			printf("SENDFAIL\n");
			goto out;
		}
		dt_print_first_message(ssl);
	}
	SSL_shutdown(ssl);
	rc = 0;
out:
	SSL_free(ssl);
	close(fd);
	return rc;
}

int main(int argc, char **argv)
{
	const char *alpn = "postgresql", *ca = NULL, *cert = NULL, *key = NULL;
	double timeout = 10;
	unsigned char wire[512];
	int i = 1, rc = 2;

	for (; i < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
		if (i + 1 >= argc)
			usage();
		if (strcmp(argv[i], "--alpn") == 0)
			alpn = argv[i + 1];
		else if (strcmp(argv[i], "--ca") == 0)
			ca = argv[i + 1];
		else if (strcmp(argv[i], "--cert") == 0)
			cert = argv[i + 1];
		else if (strcmp(argv[i], "--key") == 0)
			key = argv[i + 1];
		else if (strcmp(argv[i], "--timeout") == 0)
			timeout = atof(argv[i + 1]);
		else
			usage();
	}
	if (argc - i < 2 || argc - i > 4 || timeout <= 0)
		usage();
	const char *host = argv[i], *port = argv[i + 1];
	const char *user = argc - i > 2 ? argv[i + 2] : NULL, *db = argc - i > 3 ? argv[i + 3] : NULL;
	int wlen = dt_alpn_wire(alpn, wire, sizeof(wire));
	if (wlen < 0 || (user && strlen(user) + (db ? strlen(db) : 0) > 1000))
		usage();

	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx || SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
		printf("HANDSHAKE-FAILED cannot create a TLS context\n");
		rc = 1;
	} else if (ca && SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
		fprintf(stderr, "directtls: cannot load %s\n", ca);
	} else if (cert && (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
	                    SSL_CTX_use_PrivateKey_file(ctx, key ? key : cert, SSL_FILETYPE_PEM) != 1)) {
		fprintf(stderr, "directtls: cannot load %s / %s\n", cert, key ? key : cert);
	} else if (wlen > 0 && SSL_CTX_set_alpn_protos(ctx, wire, (unsigned int)wlen) != 0) {
		printf("HANDSHAKE-FAILED cannot set ALPN\n");
		rc = 1;
	} else {
		if (ca)
			SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
		rc = dt_session(ctx, host, port, timeout, ca != NULL, user, db);
	}
	SSL_CTX_free(ctx);
	return rc;
}
