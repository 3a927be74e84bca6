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
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/hmac.h>
#include <openssl/lhash.h>
#include <openssl/rand.h>

#include "auth/scram.h"
#include "certs/certs.h"
#include "routing/certid.h"

#define FE_AUTH_MSG_MAX 8192 /* a SASL or password message is far smaller */

static void fe_read_cb(struct bufferevent *bev, void *arg);

static void fe_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;

	if (c->state == CONN_CLOSED)
		return;
	if (what & BEV_EVENT_CONNECTED) { /* the client's TLS handshake is done */
		const unsigned char *alpn = NULL;
		unsigned int alpn_len = 0;
		SSL_get0_alpn_selected(bufferevent_openssl_get_ssl(bev), &alpn, &alpn_len);
		/* Direct TLS must have negotiated "postgresql" (the context refuses any other offer). */
		if (c->direct_tls && (alpn_len != 10 || memcmp(alpn, "postgresql", 10) != 0)) {
			conn_close(c, "direct TLS without ALPN postgresql");
			return;
		}
		c->state = CONN_STARTUP;
		c->client_tls = true;
		c->px->stats.tls_handshakes++;
		log_conn(LOG_DEBUG, c, "TLS %s", SSL_get_version(bufferevent_openssl_get_ssl(bev)));
		fe_read_cb(bev, c);
		return;
	}
	if (c->state == CONN_TLS && (what & BEV_EVENT_ERROR)) {
		/* Over a filter (direct TLS) OpenSSL's alert (no_application_protocol, protocol_version ...) still
		 * sits in the plaintext bufferevent below: send it, so the client learns why. */
		struct bufferevent *under = bufferevent_get_underlying(bev);
		if (under) {
			struct evbuffer *out = bufferevent_get_output(under);
			evbuffer_unfreeze(out, 1);
			evbuffer_write(out, bufferevent_getfd(under));
		}
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

/*
 * SCRAM secrets, cached per credential.
 *
 * Known and unknown credentials are treated alike, so that nothing an unauthenticated peer can observe
 * (salt, timing, cost, delay) tells which apps exist:
 *   salt     = HMAC(snapshot salt key, user name): stable across restarts and processes, the same function
 *              for every user name, changing for all of them at once when apps or secrets change;
 *   password = the timeline's token, or for an unknown app HMAC(salt key, "mock" NUL user), which no
 *              client can know;
 *   key      = HMAC(salt key, password) in hex: a credential pays one PBKDF2 run the first time it is seen
 *              after a change and none after, whichever kind it is.
 */
struct secret_entry {
	char key[2 * SCRAM_KEY_LEN + 1];
	struct scram_secret secret;
};

static unsigned long secret_hash(const void *p)
{
	return OPENSSL_LH_strhash(((const struct secret_entry *)p)->key);
}

static int secret_cmp(const void *a, const void *b)
{
	return strcmp(((const struct secret_entry *)a)->key, ((const struct secret_entry *)b)->key);
}

static void secret_entry_free(void *p)
{
	OPENSSL_clear_free(p, sizeof(struct secret_entry));
}

#define SECRET_CACHE_MAX 50000

/* The password a login must prove: the route's token, the admin password, or (unknown app) a mock one. */
static void fe_password(const struct conn *c, const char *user, char *out, size_t outlen)
{
	unsigned char mac[SCRAM_KEY_LEN];
	unsigned int maclen = sizeof(mac);
	char msg[512];

	if (c->admin) {
		snprintf(out, outlen, "%s", c->snap->conf->admin_password);
	} else if (c->route_res != ROUTE_UNKNOWN_APP) {
		snprintf(out, outlen, "%s", c->route.token);
	} else {
		int n = snprintf(msg, sizeof(msg), "mock%c%s", '\0', user);
		HMAC(EVP_sha256(), c->snap->salt_key, sizeof(c->snap->salt_key), (unsigned char *)msg,
		     (size_t)(n < (int)sizeof(msg) ? n : (int)sizeof(msg) - 1), mac, &maclen);
		for (unsigned i = 0; i < maclen && 2 * i + 2 < outlen; i++)
			snprintf(out + 2 * i, 3, "%02x", mac[i]);
		OPENSSL_cleanse(mac, sizeof(mac));
	}
}

static void fe_secret_key(const struct conn *c, const char *password, char out[2 * SCRAM_KEY_LEN + 1])
{
	unsigned char mac[SCRAM_KEY_LEN];
	unsigned int maclen = sizeof(mac);

	HMAC(EVP_sha256(), c->snap->salt_key, sizeof(c->snap->salt_key), (const unsigned char *)password,
	     strlen(password), mac, &maclen);
	for (unsigned i = 0; i < SCRAM_KEY_LEN; i++)
		snprintf(out + 2 * i, 3, "%02x", mac[i]);
}

/* The cache is the process's (lane->secret_mu): a worker looks up under the lock, derives outside it. */
static bool fe_secret_cached(const struct conn *c, const char *password)
{
	struct lane *ln = c->px->lane;
	struct secret_entry probe;

	fe_secret_key(c, password, probe.key);
	pthread_mutex_lock(&ln->secret_mu);
	bool hit = ln->secret_cache && OPENSSL_LH_retrieve(ln->secret_cache, &probe);
	pthread_mutex_unlock(&ln->secret_mu);
	OPENSSL_cleanse(&probe, sizeof(probe));
	return hit;
}

/* The secret for password (cached, or one PBKDF2 run).  False only without memory. */
static bool fe_secret_for(struct conn *c, const char *user, const char *password, struct scram_secret *out)
{
	struct lane *ln = c->px->lane;
	struct secret_entry probe, *e;
	unsigned char salt[SCRAM_KEY_LEN];
	unsigned int saltlen = sizeof(salt);
	bool hit = false;

	fe_secret_key(c, password, probe.key);
	pthread_mutex_lock(&ln->secret_mu);
	if (!ln->secret_cache && !(ln->secret_cache = OPENSSL_LH_new(secret_hash, secret_cmp))) {
		pthread_mutex_unlock(&ln->secret_mu);
		return false;
	}
	if ((e = OPENSSL_LH_retrieve(ln->secret_cache, &probe))) {
		*out = e->secret;
		hit = true;
	}
	pthread_mutex_unlock(&ln->secret_mu);
	if (hit)
		return true;
	if (!HMAC(EVP_sha256(), c->snap->salt_key, sizeof(c->snap->salt_key), (const unsigned char *)user,
		  strlen(user), salt, &saltlen) ||
	    !scram_secret_make(password, salt, SCRAM_SALT_LEN, SCRAM_DEFAULT_ITERATIONS, out))
		return false;
	if (!(e = malloc(sizeof(*e))))
		return true;
	*e = probe;
	e->secret = *out;
	pthread_mutex_lock(&ln->secret_mu);
	if (OPENSSL_LH_retrieve(ln->secret_cache, &probe)) { /* another worker derived it meanwhile */
		secret_entry_free(e);
	} else {
		if (OPENSSL_LH_num_items(ln->secret_cache) >= SECRET_CACHE_MAX)
			OPENSSL_LH_doall(ln->secret_cache, secret_entry_free), OPENSSL_LH_flush(ln->secret_cache);
		OPENSSL_LH_insert(ln->secret_cache, e);
		if (OPENSSL_LH_error(ln->secret_cache))
			secret_entry_free(e);
	}
	pthread_mutex_unlock(&ln->secret_mu);
	return true;
}

void frontend_caches_free(struct lane *ln)
{
	if (!ln->secret_cache)
		return;
	OPENSSL_LH_doall(ln->secret_cache, secret_entry_free);
	OPENSSL_LH_free(ln->secret_cache);
	ln->secret_cache = NULL;
}

/* ---------------------------------------------------------------- startup */

/* Takes step later (RATELIMIT_DELAY_MS): the client hears nothing meanwhile and is not read. */
static void fe_defer(struct conn *c, int step)
{
	if (!c->deferred) {
		log_conn(LOG_WARNING, c, "peer over its %s budget: answer delayed %d ms",
			 step == DEFER_START_AUTH ? "new-credential" : "failed-login", RATELIMIT_DELAY_MS);
		c->lg->deferred_since = c->px->clock_s;
	}
	c->deferred = step;
	bufferevent_disable(c->client, EV_READ);
	conn_arm_timer(c, RATELIMIT_DELAY_MS);
}

static void fe_start_auth(struct conn *c)
{
	const struct conf *conf = c->snap->conf;
	const char *user = pg_startup_get(&c->lg->su, "user");
	struct scram_secret sec;
	struct pgbuf b = {0};
	uint8_t cbind[EVP_MAX_MD_SIZE];
	size_t cbind_len = 0;
	char password[AUTH_TOKEN_LEN + 2 * SCRAM_KEY_LEN + 256];

	c->state = CONN_AUTH;
	fe_password(c, user, password, sizeof(password));
	/* A credential not seen yet costs a PBKDF2 run before anything is proven: within the peer's and the
	 * process's budgets it runs now; past them the login waits, and waits again, until a token is free or
	 * login_timeout passes.  Known and unknown apps spend the same budget the same way. */
	if (!fe_secret_cached(c, password) && !ratelimit_take(c->px, c, RATELIMIT_DERIVE)) {
		OPENSSL_cleanse(password, sizeof(password));
		fe_defer(c, DEFER_START_AUTH);
		return;
	}
	c->deferred = DEFER_NONE;
	if (conf->allow_cleartext && c->client_tls) {
		OPENSSL_cleanse(password, sizeof(password));
		c->lg->cleartext = true;
		pg_put_auth(&b, PG_AUTH_CLEARTEXT, NULL, 0);
		conn_send(c, &b);
		return;
	}
	bool ok = fe_secret_for(c, user, password, &sec);
	OPENSSL_cleanse(password, sizeof(password));
	if (!ok) {
		conn_fail(c, "53200", "out of memory", "out of memory");
		return;
	}
	if (c->client_tls) {
		X509 *cert = SSL_get_certificate(bufferevent_openssl_get_ssl(c->client));
		cbind_len = cert ? scram_cert_endpoint_hash(cert, cbind, sizeof(cbind)) : 0;
	}
	c->lg->scram = scram_server_new(&sec, cbind_len ? cbind : NULL, cbind_len);
	OPENSSL_cleanse(&sec, sizeof(sec));
	if (!c->lg->scram) {
		conn_fail(c, "53200", "out of memory", "out of memory");
		return;
	}
	char mechs[64];
	size_t n = scram_server_mechanisms(cbind_len > 0, mechs, sizeof(mechs));
	pg_put_auth(&b, PG_AUTH_SASL, mechs, n);
	conn_send(c, &b);
}

static void fe_auth_done(struct conn *c);

static void fe_cert_refused(struct conn *c, const char *fmt, const char *why)
{
	c->px->stats.auth_fail_cert++;
	conn_fail(c, "28000", "client certificate refused", fmt, why);
}

/*
 * Login by client certificate: a valid certificate identifies (app, timeline) and no password is asked.
 * The user name must still be that timeline's user name, so a client cannot be confused about where it
 * lands; a present but invalid or unmapped certificate is refused, never ignored for a password login.
 */
static void fe_cert_login(struct conn *c, const char *user, const char *db)
{
	const struct conf *conf = c->snap->conf;
	SSL *ssl = bufferevent_openssl_get_ssl(c->client);
	X509 *cert = SSL_get0_peer_certificate(ssl);
	long v = SSL_get_verify_result(ssl);
	char uri[CERTS_URI_MAX], err[256], tl[TIMELINE_BRANCH_MAX + 16];
	struct identity id;

	if (v != X509_V_OK) {
		fe_cert_refused(c, "client certificate refused: %s", certs_client_verify_reason(v));
		return;
	}
	if (!certs_client_uri(cert, uri, sizeof(uri), err, sizeof(err)) ||
	    !identity_parse_uri(uri, &id, err, sizeof(err))) {
		fe_cert_refused(c, "client certificate does not map to an app: %s", err);
		return;
	}
	const struct conf_app *app = conf_app_find(conf, id.app);
	if (!app) {
		fe_cert_refused(c, "client certificate names app \"%s\", which pglane does not serve", id.app);
		return;
	}
	struct identity raw = id; /* timeline_set() must not copy a branch onto itself */
	if (!timeline_set(&id.tl, raw.tl.kind, raw.tl.branch, app->production_branch, err, sizeof(err))) {
		fe_cert_refused(c, "client certificate does not map to a timeline: %s", err);
		return;
	}
	c->route_res = route_resolve(conf, user, db, &c->route, c->lg->route_err, sizeof(c->lg->route_err));
	bool same = c->route_res != ROUTE_BAD_USER && c->route_res != ROUTE_UNKNOWN_APP &&
		    strcmp(c->route.id.app, id.app) == 0 && c->route.id.tl.kind == id.tl.kind &&
		    strcmp(c->route.id.tl.branch, id.tl.branch) == 0;
	if (!same) {
		timeline_label(&id.tl, tl, sizeof(tl));
		memset(&c->route, 0, sizeof(c->route));
		c->px->stats.auth_fail_cert++;
		conn_fail(c, "28000", "user does not match certificate",
			  "user name \"%s\" does not match the client certificate (app %s, %s)", user, id.app, tl);
		return;
	}
	log_conn(LOG_DEBUG, c, "identified by client certificate");
	c->state = CONN_AUTH;
	fe_auth_done(c);
}

static void fe_on_startup_message(struct conn *c)
{
	const struct conf *conf = c->snap->conf;
	const char *user = pg_startup_get(&c->lg->su, "user");
	const char *db = pg_startup_get(&c->lg->su, "database");
	const char *repl = pg_startup_get(&c->lg->su, "replication");
	uint32_t minor = c->lg->su.code & 0xffff;
	const char *unknown[PG_STARTUP_MAX_PARAMS];
	size_t nunknown = 0;

	for (size_t i = 0; i < c->lg->su.nparams; i++)
		if (strncmp(c->lg->su.names[i], "_pq_.", 5) == 0)
			unknown[nunknown++] = c->lg->su.names[i];
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
	if (c->client_tls && conf->client_ca &&
	    SSL_get0_peer_certificate(bufferevent_openssl_get_ssl(c->client))) {
		fe_cert_login(c, user, db);
		return;
	}
	c->route_res = route_resolve(conf, user, db, &c->route, c->lg->route_err, sizeof(c->lg->route_err));
	if (c->route_res == ROUTE_BAD_USER) {
		c->px->stats.auth_fail_user++;
		conn_fail_hint(c, "28000",
			       "pglane user names are {app}-production, {app}-preview or {app}--{branch}; "
			       "`pglane env` prints them",
			       "bad user name", "%s", c->lg->route_err);
		return;
	}
	log_conn(LOG_DEBUG, c, "login as \"%s\"", user);
	fe_start_auth(c);
}

static void fe_on_cancel(struct conn *c)
{
	c->px->stats.cancel_requests++;
	worker_cancel(c->px, c->lg->su.cancel_key, c->lg->su.cancel_pid, c->peer);
	conn_close(c, "cancel request handled");
}

void proxy_cancel(struct proxy *px, uint32_t key, uint32_t pid, const char *peer, unsigned via)
{
	struct conn *t = cancel_map_find(px, key);

	/* As PostgreSQL: an unknown key is dropped without a word, so keys cannot be probed. */
	/* In transaction mode the session may hold no server connection: then nothing runs to cancel. */
	if (t && t->client_pid == pid && t->state == CONN_RELAY && t->be_pid != 0) {
		log_conn(LOG_INFO, t, "cancel request from %s%s", peer, via != px->wid ? " (through another worker)" : "");
		px->stats.cancels_forwarded++;
		backend_forward_cancel(px, t);
	} else {
		log_msg(LOG_DEBUG, "cancel request from %s with an unknown key ignored", peer);
	}
}

/* Starts the client's handshake.  After an SSLRequest nothing is buffered, so TLS takes over the socket
 * itself.  With direct TLS the ClientHello already sits in the input buffer, so TLS runs as a filter over
 * the plaintext bufferevent, which hands it those bytes first. */
static void fe_start_tls(struct conn *c, bool filter)
{
	SSL *ssl = SSL_new(c->snap->server_ctx);
	struct bufferevent *tls = NULL;

	c->state = CONN_TLS;
	if (ssl && filter) {
		/* Without a high watermark below it, the filter would push TLS records into the plaintext
		 * bufferevent without bound when the client stops reading; with one, back-pressure holds. */
		bufferevent_setwatermark(c->client, EV_WRITE, 0, RELAY_HIGH);
		tls = bufferevent_openssl_filter_new(c->px->base, c->client, ssl, BUFFEREVENT_SSL_ACCEPTING,
						     BEV_OPT_CLOSE_ON_FREE);
		if (!tls)
			SSL_free(ssl);
	} else if (ssl) {
		tls = conn_upgrade_tls(c->px, c->client, ssl, true);
		c->client = NULL; /* freed by conn_upgrade_tls(), whatever happened */
	}
	if (!tls) {
		conn_close(c, "cannot start TLS");
		return;
	}
	c->client = tls;
	bufferevent_setcb(c->client, fe_read_cb, NULL, fe_event_cb, c);
	bufferevent_enable(c->client, EV_READ);
}

/*
 * The one-byte answer to SSLRequest / GSSENCRequest, written on the socket itself: before a TLS upgrade
 * the plaintext bufferevent is about to let go of the socket, and its output buffer is its own to drain.
 * One byte on a connection that has sent nothing else never blocks; if it fails, the client is gone.
 */
static bool fe_send_byte(struct conn *c, char b)
{
	if (send(bufferevent_getfd(c->client), &b, 1, MSG_NOSIGNAL) == 1)
		return true;
	conn_close(c, "client went away during SSL negotiation");
	return false;
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
			if (!c->snap->server_ctx || conf->tls_mode == TLS_MODE_DISABLE) {
				conn_close(c, "direct TLS is not enabled");
				return;
			}
			c->direct_tls = true;
			fe_start_tls(c, true);
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
				/* 'S' must be on the wire before the socket changes hands. */
				if (fe_send_byte(c, 'S'))
					fe_start_tls(c, false);
				return;
			}
			if (!fe_send_byte(c, 'N'))
				return;
			continue;
		case PG_GSSENC_REQUEST:
			evbuffer_drain(in, 8);
			if (!fe_send_byte(c, 'N'))
				return;
			continue;
		case PG_CANCEL_REQUEST:
			c->lg->su = su;
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
		if (!(c->lg->startup = malloc(plen))) {
			conn_fail(c, "53200", "out of memory", "out of memory");
			return;
		}
		evbuffer_remove(in, c->lg->startup, plen);
		pg_read_startup(c->lg->startup, plen, plen, &c->lg->su, err, sizeof(err));
		fe_on_startup_message(c);
		return;
	}
}

/* ---------------------------------------------------------------- authentication */

static void fe_auth_failed(struct conn *c, const char *why)
{
	const char *user = pg_startup_get(&c->lg->su, "user");

	if (!c->deferred) {
		c->px->stats.auth_fail_password++;
		log_conn(LOG_INFO, c, "authentication failed for \"%s\": %s", user, why);
		if (!ratelimit_take(c->px, c, RATELIMIT_FAIL)) {
			fe_defer(c, DEFER_AUTH_FAILED);
			return;
		}
	}
	conn_fail(c, "28P01", "authentication failed", "password authentication failed for user \"%s\"", user);
}

/* Sessions of c's app past authentication, c included (a walk over the list: logins only, not the relay). */
static void fe_auth_done(struct conn *c)
{
	struct pgbuf b = {0};

	scram_server_free(c->lg->scram);
	c->lg->scram = NULL;
	if (c->route_res == ROUTE_UNKNOWN_APP) { /* unreachable with a mock secret, but never routed */
		fe_auth_failed(c, c->lg->route_err);
		return;
	}
	if (c->route_res == ROUTE_DB_NOT_ALLOWED) {
		c->px->stats.auth_fail_database++;
		conn_fail(c, "42501", "database not allowed", "%s", c->lg->route_err);
		return;
	}
	if (!c->admin && !app_session_take(c, c->route.app->max_clients)) {
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
	if (c->lg->cleartext) {
		if (m->body_len == 0 || m->body[m->body_len - 1] != '\0') {
			conn_fail(c, "08P01", "protocol violation", "malformed password message");
			return;
		}
		const char *want = c->admin ? c->snap->conf->admin_password : c->route.token;
		if (c->route_res == ROUTE_UNKNOWN_APP || !auth_token_equal((const char *)m->body, want)) {
			fe_auth_failed(c, c->route_res == ROUTE_UNKNOWN_APP ? c->lg->route_err : "wrong password");
			return;
		}
		fe_auth_done(c);
		return;
	}
	if (!c->lg->sasl_first_done) {
		/* First 'p': SASLInitialResponse: mechanism NUL, int32 length, data. */
		const uint8_t *nul = memchr(m->body, 0, m->body_len);
		size_t off = nul ? (size_t)(nul - m->body) + 1 : 0;
		if (!nul || m->body_len - off < 4 || pg_get_u32(m->body + off) != m->body_len - off - 4) {
			conn_fail(c, "08P01", "protocol violation", "malformed SASLInitialResponse");
			return;
		}
		if (!scram_server_first(c->lg->scram, (const char *)m->body, m->body + off + 4, m->body_len - off - 4, out,
					sizeof(out), err, sizeof(err))) {
			conn_fail(c, "08P01", "bad SCRAM message", "%s", err);
			return;
		}
		c->lg->sasl_first_done = true;
		pg_put_auth(&b, PG_AUTH_SASL_CONTINUE, out, strlen(out));
		conn_send(c, &b);
		return;
	}
	if (!scram_server_final(c->lg->scram, m->body, m->body_len, out, sizeof(out), err, sizeof(err))) {
		fe_auth_failed(c, c->route_res == ROUTE_UNKNOWN_APP ? c->lg->route_err : err);
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

	/* A session held by PAUSE stays in CONN_AUTH with its login done: what its client sends meanwhile waits
	 * in the buffer for the relay, as in CONN_CONNECT. */
	while (c->state == CONN_AUTH && !c->closing && !c->parked) {
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
		/* Take the message out before acting on it: what follows it (the admin console's first query,
		 * pipelined bytes) must find the input buffer past it. */
		uint8_t msg[FE_AUTH_MSG_MAX + 5];
		evbuffer_remove(in, msg, total);
		pg_read_msg(msg, total, FE_AUTH_MSG_MAX, &m, err, sizeof(err));
		fe_on_auth_msg(c, &m);
		OPENSSL_cleanse(msg, total);
	}
}

void frontend_deferred(struct conn *c)
{
	int step = c->deferred;

	/* A login kept waiting for budget is bounded by login_timeout; a failed one always gets its 28P01. */
	if (step == DEFER_START_AUTH &&
	    c->px->clock_s - c->lg->deferred_since > (uint32_t)(c->snap->conf->login_timeout_ms / 1000)) {
		c->px->stats.login_timeouts++;
		conn_fail(c, "08P01", "login timeout", "login timeout: no complete login within %d ms",
			  c->snap->conf->login_timeout_ms);
		return;
	}
	conn_arm_timer(c, c->snap->conf->login_timeout_ms);
	bufferevent_enable(c->client, EV_READ);
	if (step == DEFER_START_AUTH)
		fe_start_auth(c); /* c->deferred still set: no second wait */
	else
		fe_auth_failed(c, NULL);
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
