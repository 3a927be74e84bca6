/*
 * frontend: the client's side of a login.  Reads SSLRequest / GSSENCRequest / CancelRequest /
 * StartupMessage, upgrades to TLS on request, routes the user name to a timeline, and runs the SCRAM
 * dialogue against that timeline's derived password.  On success it hands the connection to backend.c;
 * on failure the client gets an ErrorResponse with the SQLSTATE a driver acts on, and nothing else
 * (an unknown app is answered exactly like a wrong password, after a full mock exchange).
 */
#include "proxy/proxy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/hmac.h>
#include <openssl/lhash.h>
#include <openssl/rand.h>

#include "auth/scram.h"

#define FE_AUTH_MSG_MAX 8192 /* a SASL or password message is far smaller */

static void fe_read_cb(struct bufferevent *bev, void *arg);

static void fe_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;

	if (c->state == CONN_CLOSED)
		return;
	if (what & BEV_EVENT_CONNECTED) { /* the client's TLS handshake is done */
		c->state = CONN_STARTUP;
		c->client_tls = true;
		c->px->stats.tls_handshakes++;
		log_conn(LOG_DEBUG, c, "TLS %s", SSL_get_version(bufferevent_openssl_get_ssl(bev)));
		fe_read_cb(bev, c);
		return;
	}
	if (c->state == CONN_TLS && (what & BEV_EVENT_ERROR)) {
		conn_close(c, "client TLS handshake failed");
		return;
	}
	conn_close(c, what & BEV_EVENT_EOF ? "client closed the connection" : "client connection error");
}

void frontend_start(struct conn *c)
{
	bufferevent_setcb(c->client, fe_read_cb, NULL, fe_event_cb, c);
	bufferevent_enable(c->client, EV_READ);
}

/* ---------------------------------------------------------------- SCRAM secrets, cached per credential */

struct secret_entry {
	char token[AUTH_TOKEN_LEN + 1];
	struct scram_secret secret;
};

static unsigned long secret_hash(const void *p)
{
	return OPENSSL_LH_strhash(((const struct secret_entry *)p)->token);
}

static int secret_cmp(const void *a, const void *b)
{
	return strcmp(((const struct secret_entry *)a)->token, ((const struct secret_entry *)b)->token);
}

static void secret_entry_free(void *p)
{
	OPENSSL_clear_free(p, sizeof(struct secret_entry));
}

#define SECRET_CACHE_MAX 50000

/*
 * The SCRAM secret of a timeline's token.  The token is derived from the app's secret, so it doubles as
 * the cache key: a changed secret is a new key.  The salt is derived from the token, so the secret is
 * the same in every pglane process and after a restart.  The first login of a credential pays one
 * PBKDF2 run; every later one pays nothing here.
 */
static bool fe_secret_for(struct proxy *px, const char *token, struct scram_secret *out)
{
	struct secret_entry probe, *e;
	unsigned char salt[32];
	unsigned int saltlen = sizeof(salt);

	if (!px->secret_cache && !(px->secret_cache = OPENSSL_LH_new(secret_hash, secret_cmp)))
		return false;
	snprintf(probe.token, sizeof(probe.token), "%s", token);
	if ((e = OPENSSL_LH_retrieve(px->secret_cache, &probe))) {
		*out = e->secret;
		return true;
	}
	if (!HMAC(EVP_sha256(), token, (int)strlen(token), (const unsigned char *)"pglane-scram-salt", 17, salt,
		  &saltlen) ||
	    !scram_secret_make(token, salt, SCRAM_SALT_LEN, SCRAM_DEFAULT_ITERATIONS, out))
		return false;
	if (OPENSSL_LH_num_items(px->secret_cache) >= SECRET_CACHE_MAX)
		OPENSSL_LH_doall(px->secret_cache, secret_entry_free), OPENSSL_LH_flush(px->secret_cache);
	if ((e = malloc(sizeof(*e)))) {
		*e = probe;
		e->secret = *out;
		OPENSSL_LH_insert(px->secret_cache, e);
		if (OPENSSL_LH_error(px->secret_cache))
			secret_entry_free(e);
	}
	return true;
}

void frontend_caches_free(struct proxy *px)
{
	if (!px->secret_cache)
		return;
	OPENSSL_LH_doall(px->secret_cache, secret_entry_free);
	OPENSSL_LH_free(px->secret_cache);
	px->secret_cache = NULL;
}

/* A secret no password matches, with a salt that is stable per user name (as PostgreSQL's mock auth). */
static void fe_mock_secret(struct proxy *px, const char *user, struct scram_secret *out)
{
	unsigned char salt[32];
	unsigned int saltlen = sizeof(salt);

	HMAC(EVP_sha256(), px->mock_key, sizeof(px->mock_key), (const unsigned char *)user, strlen(user), salt, &saltlen);
	memcpy(out->salt, salt, SCRAM_SALT_LEN);
	out->iterations = SCRAM_DEFAULT_ITERATIONS;
	RAND_bytes(out->stored_key, sizeof(out->stored_key));
	RAND_bytes(out->server_key, sizeof(out->server_key));
}

/* ---------------------------------------------------------------- startup */

static void fe_start_auth(struct conn *c)
{
	const struct conf *conf = c->snap->conf;
	const char *user = pg_startup_get(&c->su, "user");
	struct scram_secret sec;
	struct pgbuf b = {0};
	uint8_t cbind[EVP_MAX_MD_SIZE];
	size_t cbind_len = 0;

	c->state = CONN_AUTH;
	if (conf->allow_cleartext && c->client_tls) {
		c->cleartext = true;
		pg_put_auth(&b, PG_AUTH_CLEARTEXT, NULL, 0);
		conn_send(c, &b);
		return;
	}
	if (c->route_res == ROUTE_UNKNOWN_APP)
		fe_mock_secret(c->px, user, &sec);
	else if (!fe_secret_for(c->px, c->admin ? conf->admin_password : c->route.token, &sec)) {
		conn_fail(c, "53200", "out of memory", "out of memory");
		return;
	}
	if (c->client_tls) {
		X509 *cert = SSL_get_certificate(bufferevent_openssl_get_ssl(c->client));
		cbind_len = cert ? scram_cert_endpoint_hash(cert, cbind, sizeof(cbind)) : 0;
	}
	c->scram = scram_server_new(&sec, cbind_len ? cbind : NULL, cbind_len);
	OPENSSL_cleanse(&sec, sizeof(sec));
	if (!c->scram) {
		conn_fail(c, "53200", "out of memory", "out of memory");
		return;
	}
	char mechs[64];
	size_t n = scram_server_mechanisms(cbind_len > 0, mechs, sizeof(mechs));
	pg_put_auth(&b, PG_AUTH_SASL, mechs, n);
	conn_send(c, &b);
}

static void fe_on_startup_message(struct conn *c)
{
	const struct conf *conf = c->snap->conf;
	const char *user = pg_startup_get(&c->su, "user");
	const char *db = pg_startup_get(&c->su, "database");
	const char *repl = pg_startup_get(&c->su, "replication");
	uint32_t minor = c->su.code & 0xffff;
	const char *unknown[PG_STARTUP_MAX_PARAMS];
	size_t nunknown = 0;

	for (size_t i = 0; i < c->su.nparams; i++)
		if (strncmp(c->su.names[i], "_pq_.", 5) == 0)
			unknown[nunknown++] = c->su.names[i];
	if (minor > 0 || nunknown > 0) {
		struct pgbuf b = {0};
		pg_put_negotiate_version(&b, 0, unknown, nunknown);
		if (!conn_send(c, &b))
			return;
	}
	if (conf->tls_mode == TLS_MODE_REQUIRE && !c->client_tls) {
		conn_fail_hint(c, "28000", "connect with sslmode=require (PGSSLMODE=require)", "TLS required",
			       "pglane accepts only TLS connections");
		return;
	}
	if (!user || !*user) {
		conn_fail(c, "28000", "no user name", "no PostgreSQL user name specified in startup packet");
		return;
	}
	if (repl && strcmp(repl, "false") != 0 && strcmp(repl, "0") != 0 && strcmp(repl, "off") != 0 &&
	    strcmp(repl, "no") != 0) {
		conn_fail(c, "0A000", "replication refused", "pglane does not proxy replication connections");
		return;
	}
	if (db && strcmp(db, ADMIN_DBNAME) == 0 && conf->admin_user && strcmp(user, conf->admin_user) == 0 &&
	    conf->admin_password) {
		c->admin = true;
		c->route_res = ROUTE_OK;
		log_conn(LOG_DEBUG, c, "admin login as \"%s\"", user);
		fe_start_auth(c);
		return;
	}
	c->route_res = route_resolve(conf, user, db, &c->route, c->route_err, sizeof(c->route_err));
	if (c->route_res == ROUTE_BAD_USER) {
		c->px->stats.auth_fail_user++;
		conn_fail_hint(c, "28000",
			       "pglane user names are {app}-production, {app}-preview or {app}--{branch}; "
			       "`pglane env` prints them",
			       "bad user name", "%s", c->route_err);
		return;
	}
	log_conn(LOG_DEBUG, c, "login as \"%s\"", user);
	fe_start_auth(c);
}

static void fe_on_cancel(struct conn *c)
{
	struct conn *t = cancel_map_find(c->px, c->su.cancel_key);

	c->px->stats.cancel_requests++;
	/* As PostgreSQL: an unknown key is dropped without a word, so keys cannot be probed. */
	if (t && t->be_pid == c->su.cancel_pid && t->state == CONN_RELAY) {
		log_conn(LOG_INFO, t, "cancel request from %s", c->peer);
		c->px->stats.cancels_forwarded++;
		backend_forward_cancel(c->px, t);
	} else {
		log_conn(LOG_DEBUG, c, "cancel request with an unknown key ignored");
	}
	conn_close(c, "cancel request handled");
}

static void fe_start_tls(struct conn *c)
{
	SSL *ssl = SSL_new(c->snap->server_ctx);

	c->state = CONN_TLS;
	if (!ssl || !(c->client = conn_upgrade_tls(c->px, c->client, ssl, true))) {
		c->client = NULL;
		conn_close(c, "cannot start TLS");
		return;
	}
	bufferevent_setcb(c->client, fe_read_cb, NULL, fe_event_cb, c);
	bufferevent_enable(c->client, EV_READ);
}

/* Handles each whole startup-phase packet in the client's input; returns when it needs more bytes. */
static void fe_on_startup(struct conn *c, struct evbuffer *in)
{
	const struct conf *conf = c->snap->conf;
	char err[256];
	uint8_t head[8];

	while (c->state == CONN_STARTUP && !c->closing) {
		size_t len = evbuffer_get_length(in);
		if (len == 0)
			return;
		evbuffer_copyout(in, head, len < 8 ? len : 8);
		if (head[0] == PG_TLS_HANDSHAKE_BYTE && !c->client_tls) {
			conn_close(c, "direct TLS is not enabled");
			return;
		}
		if (len < 8)
			return;
		uint32_t plen = pg_get_u32(head);
		if (plen < 8 || plen > (uint32_t)conf->max_packet_size) {
			conn_fail(c, "08P01", "bad startup packet", "invalid startup packet length %u", plen);
			return;
		}
		if (len < plen)
			return;
		uint8_t *p = evbuffer_pullup(in, plen);
		struct pg_startup su;
		if (pg_read_startup(p, plen, (size_t)conf->max_packet_size, &su, err, sizeof(err)) != PG_OK) {
			conn_fail(c, "08P01", "bad startup packet", "%s", err);
			return;
		}
		switch (su.code) {
		case PG_SSL_REQUEST:
			evbuffer_drain(in, 8);
			if (c->client_tls) {
				conn_fail(c, "08P01", "bad startup packet", "SSLRequest inside TLS");
				return;
			}
			if (c->snap->server_ctx && conf->tls_mode != TLS_MODE_DISABLE) {
				/* Bytes sent before the handshake could be injected by a man in the middle and would
				 * be taken as sent over TLS (CVE-2021-23214): refuse them. */
				if (evbuffer_get_length(in) > 0) {
					conn_close(c, "unencrypted data after SSLRequest");
					return;
				}
				bufferevent_write(c->client, "S", 1);
				fe_start_tls(c);
				return;
			}
			bufferevent_write(c->client, "N", 1);
			continue;
		case PG_GSSENC_REQUEST:
			evbuffer_drain(in, 8);
			bufferevent_write(c->client, "N", 1);
			continue;
		case PG_CANCEL_REQUEST:
			c->su = su;
			evbuffer_drain(in, 16);
			fe_on_cancel(c);
			return;
		}
		if (su.code >> 16 != 3) {
			conn_fail(c, "0A000", "bad protocol", "unsupported frontend protocol %u.%u: pglane supports 3.0",
				  su.code >> 16, su.code & 0xffff);
			return;
		}
		/* Keep a copy: the parameters are needed after the input buffer has moved on. */
		if (!(c->startup = malloc(plen))) {
			conn_fail(c, "53200", "out of memory", "out of memory");
			return;
		}
		evbuffer_remove(in, c->startup, plen);
		pg_read_startup(c->startup, plen, plen, &c->su, err, sizeof(err));
		fe_on_startup_message(c);
		return;
	}
}

/* ---------------------------------------------------------------- authentication */

static void fe_auth_failed(struct conn *c, const char *why)
{
	const char *user = pg_startup_get(&c->su, "user");

	c->px->stats.auth_fail_password++;
	log_conn(LOG_INFO, c, "authentication failed for \"%s\": %s", user, why);
	conn_fail(c, "28P01", "authentication failed", "password authentication failed for user \"%s\"", user);
}

/* Sessions of c's app past authentication, c included (a walk over the list: logins only, not the relay). */
static size_t fe_app_sessions(const struct conn *c)
{
	size_t n = 0;
	const struct conn *it;

	for (int list = 0; list < 2; list++)
		TAILQ_FOREACH(it, list ? &c->px->paused : &c->px->conns, link)
		n += it->route.app && !it->admin && (it->state >= CONN_CONNECT || it == c) &&
		     strcmp(it->route.id.app, c->route.id.app) == 0;
	return n;
}

static void fe_auth_done(struct conn *c)
{
	struct pgbuf b = {0};

	scram_server_free(c->scram);
	c->scram = NULL;
	if (c->route_res == ROUTE_UNKNOWN_APP) { /* unreachable with a mock secret, but never routed */
		fe_auth_failed(c, c->route_err);
		return;
	}
	if (c->route_res == ROUTE_DB_NOT_ALLOWED) {
		c->px->stats.auth_fail_database++;
		conn_fail(c, "42501", "database not allowed", "%s", c->route_err);
		return;
	}
	if (!c->admin && c->route.app->max_clients > 0 && fe_app_sessions(c) > (size_t)c->route.app->max_clients) {
		c->px->stats.refused_too_many++;
		conn_fail(c, "53300", "too many clients for the app", "too many clients for app \"%s\" (max_clients = %d)",
			  c->route.id.app, c->route.app->max_clients);
		return;
	}
	pg_put_auth(&b, PG_AUTH_OK, NULL, 0);
	if (!conn_send(c, &b))
		return;
	if (c->admin)
		admin_start(c);
	else if (admin_is_paused(c->px, c->route.id.app))
		admin_park(c);
	else
		backend_start(c);
}

static void fe_on_auth_msg(struct conn *c, const struct pg_msg *m)
{
	char out[SCRAM_MSG_MAX], err[256];
	struct pgbuf b = {0};

	if (m->type != PG_MSG_PASSWORD) {
		conn_fail(c, "08P01", "protocol violation", "expected a password response, got message type 0x%02x",
			  m->type);
		return;
	}
	if (c->cleartext) {
		if (m->body_len == 0 || m->body[m->body_len - 1] != '\0') {
			conn_fail(c, "08P01", "protocol violation", "malformed password message");
			return;
		}
		const char *want = c->admin ? c->snap->conf->admin_password : c->route.token;
		if (c->route_res == ROUTE_UNKNOWN_APP || !auth_token_equal((const char *)m->body, want)) {
			fe_auth_failed(c, c->route_res == ROUTE_UNKNOWN_APP ? c->route_err : "wrong password");
			return;
		}
		fe_auth_done(c);
		return;
	}
	if (!c->sasl_first_done) {
		/* First 'p': SASLInitialResponse: mechanism NUL, int32 length, data. */
		const uint8_t *nul = memchr(m->body, 0, m->body_len);
		size_t off = nul ? (size_t)(nul - m->body) + 1 : 0;
		if (!nul || m->body_len - off < 4 || pg_get_u32(m->body + off) != m->body_len - off - 4) {
			conn_fail(c, "08P01", "protocol violation", "malformed SASLInitialResponse");
			return;
		}
		if (!scram_server_first(c->scram, (const char *)m->body, m->body + off + 4, m->body_len - off - 4, out,
					sizeof(out), err, sizeof(err))) {
			conn_fail(c, "08P01", "bad SCRAM message", "%s", err);
			return;
		}
		c->sasl_first_done = true;
		pg_put_auth(&b, PG_AUTH_SASL_CONTINUE, out, strlen(out));
		conn_send(c, &b);
		return;
	}
	if (!scram_server_final(c->scram, m->body, m->body_len, out, sizeof(out), err, sizeof(err))) {
		fe_auth_failed(c, c->route_res == ROUTE_UNKNOWN_APP ? c->route_err : err);
		return;
	}
	pg_put_auth(&b, PG_AUTH_SASL_FINAL, out, strlen(out));
	if (conn_send(c, &b))
		fe_auth_done(c);
}

static void fe_on_auth(struct conn *c, struct evbuffer *in)
{
	char err[128];
	struct pg_msg m;

	while (c->state == CONN_AUTH && !c->closing) {
		size_t len = evbuffer_get_length(in);
		if (len < 5)
			return;
		uint8_t head[5];
		evbuffer_copyout(in, head, 5);
		if (pg_read_msg(head, 5, FE_AUTH_MSG_MAX, &m, err, sizeof(err)) == PG_BAD) {
			conn_fail(c, "08P01", "protocol violation", "%s", err);
			return;
		}
		uint32_t total = pg_get_u32(head + 1) + 1;
		if (len < total)
			return;
		uint8_t *p = evbuffer_pullup(in, total);
		pg_read_msg(p, total, FE_AUTH_MSG_MAX, &m, err, sizeof(err));
		fe_on_auth_msg(c, &m);
		evbuffer_drain(in, total);
	}
}

static void fe_read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	if (c->state == CONN_CLOSED || c->closing)
		return;
	if (c->state == CONN_STARTUP)
		fe_on_startup(c, in);
	if (c->state == CONN_AUTH && !c->closing)
		fe_on_auth(c, in);
	/* In CONN_CONNECT the client's early bytes wait in the buffer; relay.c forwards them. */
}
