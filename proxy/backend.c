/*
 * backend: pglane's side of a login to an instance, and cancel requests toward it.
 *
 * Connects without blocking (names resolve through evdns), negotiates TLS as the instance's sslmode
 * says and verifies the certificate against the instance's own CA bundle, then logs in as the
 * instance's user to the timeline's database with every startup parameter the client sent.  The
 * server's ParameterStatus and notices go to the client as they come; its BackendKeyData goes out
 * with the server's real process id and a key of pglane's own.  ReadyForQuery hands over to relay.c.
 */
#include "proxy/proxy.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>

#include "auth/scram.h"
#include "certs/certs.h"

#define BE_LOGIN_MSG_MAX (1u << 20)

static void be_read_cb(struct bufferevent *bev, void *arg);
static void be_event_cb(struct bufferevent *bev, short what, void *arg);

static SSL_CTX *be_ctx(const struct conn *c)
{
	return c->snap->inst_ctx[snapshot_instance_index(c->snap, c->inst)];
}

void bev_set_nodelay(struct bufferevent *bev)
{
	int one = 1;
	evutil_socket_t fd = bufferevent_getfd(bev);
	if (fd >= 0)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void be_send_startup(struct conn *c)
{
	const char *names[PG_STARTUP_MAX_PARAMS + 2], *values[PG_STARTUP_MAX_PARAMS + 2];
	size_t n = 0;
	struct pgbuf b = {0};

	names[n] = "user", values[n++] = c->inst->user;
	names[n] = "database", values[n++] = c->route.dbname;
	for (size_t i = 0; i < c->lg->su.nparams; i++) {
		const char *k = c->lg->su.names[i];
		if (strcmp(k, "user") == 0 || strcmp(k, "database") == 0 || strncmp(k, "_pq_.", 5) == 0)
			continue;
		names[n] = k, values[n++] = c->lg->su.values[i];
	}
	pg_put_startup(&b, names, values, n);
	c->be_phase = BE_LOGIN;
	if (b.oom || bufferevent_write(c->server, b.data, b.len) != 0)
		conn_fail(c, "53200", "out of memory", "out of memory");
	pgbuf_free(&b);
}

/* A parked server connection (pool.c) stands in for a login: the client hears what the server's login
 * would have told it, with a new cancel key of pglane's, and the relay starts.  In transaction mode the
 * group's parameters do, and no server connection is the session's until its first transaction. */
static void be_resume(struct conn *c)
{
	struct pgbuf b = {0};
	static const uint8_t ready[6] = {PG_MSG_READY_FOR_QUERY, 0, 0, 0, 5, 'I'};

	if (!cancel_map_add(c->px, c)) {
		conn_fail(c, "53200", "out of memory", "out of memory");
		return;
	}
	if (!c->client_pid)
		c->client_pid = c->be_pid;
	size_t plen;
	const uint8_t *params = pool_params(c, &plen);
	pgbuf_put(&b, params, plen);
	pg_put_backend_key(&b, c->client_pid, c->cancel_key);
	pgbuf_put(&b, ready, sizeof(ready));
	if (b.oom || bufferevent_write(c->client, b.data, b.len) != 0) {
		pgbuf_free(&b);
		conn_fail(c, "53200", "out of memory", "out of memory");
		return;
	}
	pgbuf_free(&b);
	c->be_phase = BE_READY;
	c->px->stats.routed++;
	if (c->txn)
		log_conn(LOG_INFO, c, "routed to %s database \"%s\" (transaction pooling)", c->inst->name,
			 c->route.dbname);
	else
		log_conn(LOG_INFO, c, "routed to %s database \"%s\" (server pid %u, kept from an earlier client)",
			 c->inst->name, c->route.dbname, c->be_pid);
	relay_start(c);
}

void backend_start(struct conn *c)
{
	c->state = CONN_CONNECT;
	c->inst = c->route.app->instance;
	bufferevent_disable(c->client, EV_READ);
	pool_login_begins(c);
	if (c->txn) {
		switch (pool_txn_login(c)) {
		case POOL_LOGIN_DETACHED:
			be_resume(c);
			return;
		case POOL_LOGIN_WAIT:
			c->be_phase = BE_RESOLVING;
			conn_arm_timer(c, c->snap->conf->connect_timeout_ms);
			return;
		case POOL_LOGIN_CONNECT:
			break;
		}
	} else if (pool_take(c)) {
		be_resume(c);
		return;
	}
	if (!c->provisioned)
		clock_gettime(CLOCK_MONOTONIC, &c->be_started);
	backend_connect(c);
}

void backend_connect(struct conn *c)
{
	const struct conf_instance *in = c->inst;

	scram_client_free(c->lg->bscram); /* a retry after autoprov starts a new exchange */
	c->lg->bscram = NULL;
	c->be_phase = BE_RESOLVING;
	conn_arm_timer(c, c->snap->conf->connect_timeout_ms);
	c->server = bufferevent_socket_new(c->px->base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (!c->server) {
		conn_fail(c, "53200", "out of memory", "out of memory");
		return;
	}
	bufferevent_setcb(c->server, be_read_cb, NULL, be_event_cb, c);
	bufferevent_enable(c->server, EV_READ);
	log_conn(LOG_DEBUG, c, "connecting to instance %s (%s:%d) database \"%s\"", in->name, in->host, in->port,
		 c->route.dbname);
	if (bufferevent_socket_connect_hostname(c->server, c->px->dns, AF_UNSPEC, in->host, in->port) != 0)
		be_event_cb(c->server, BEV_EVENT_ERROR, c);
}

static void be_on_connected(struct conn *c)
{
	evutil_socket_t fd = bufferevent_getfd(c->server);
	struct pgbuf b = {0};

	c->be_addrlen = sizeof(c->be_addr);
	getpeername(fd, &c->be_addr.sa, &c->be_addrlen);
	bev_set_nodelay(c->server);
	if (c->inst->sslmode <= SSLMODE_ALLOW) {
		be_send_startup(c);
		return;
	}
	pg_put_ssl_request(&b);
	c->be_phase = BE_SSL_ANSWER;
	bufferevent_write(c->server, b.data, b.len);
	pgbuf_free(&b);
}

static void be_on_ssl_answer(struct conn *c, struct evbuffer *in)
{
	char answer;

	if (evbuffer_remove(in, &answer, 1) != 1)
		return;
	if (answer == 'N') {
		if (c->inst->sslmode >= SSLMODE_REQUIRE) {
			conn_fail(c, "08001", "instance without SSL",
				  "instance \"%s\" does not accept SSL connections, but its sslmode is %s", c->inst->name,
				  sslmode_str(c->inst->sslmode));
			return;
		}
		be_send_startup(c);
		return;
	}
	if (answer != 'S' || evbuffer_get_length(in) > 0) {
		/* Bytes after 'S' and before the handshake are a man in the middle's (CVE-2021-23222). */
		conn_fail(c, "08P01", "bad SSL answer", "instance \"%s\" answered the SSL request with unexpected data",
			  c->inst->name);
		return;
	}
	SSL *ssl = certs_instance_ssl_new(be_ctx(c), c->inst);
	c->be_phase = BE_TLS;
	if (!ssl || !(c->server = conn_upgrade_tls(c->px, c->server, ssl, false))) {
		c->server = NULL;
		conn_fail(c, "08001", "TLS setup failed", "cannot start TLS toward instance \"%s\"", c->inst->name);
		return;
	}
	c->be_ssl = ssl;
	bufferevent_setcb(c->server, be_read_cb, NULL, be_event_cb, c);
	bufferevent_enable(c->server, EV_READ);
}

static bool be_send_password_msg(struct conn *c, const void *data, size_t len)
{
	struct pgbuf b = {0};
	size_t off = pgbuf_begin(&b, PG_MSG_PASSWORD);
	pgbuf_put(&b, data, len);
	pgbuf_end(&b, off);
	bool ok = !b.oom && bufferevent_write(c->server, b.data, b.len) == 0;
	OPENSSL_cleanse(b.data, b.len);
	pgbuf_free(&b);
	return ok;
}

static void be_login_failed(struct conn *c, const char *fmt, const char *detail)
{
	conn_fail(c, "08001", "instance login failed", fmt, c->inst->name, detail);
}

/* One authentication request from the server.  Returns false when c failed. */
static bool be_on_auth(struct conn *c, const struct pg_msg *m)
{
	char out[SCRAM_MSG_MAX], err[256], mech[32];
	size_t used;
	struct pgbuf b = {0};

	if (m->body_len < 4) {
		be_login_failed(c, "instance \"%s\" sent %s", "a malformed authentication request");
		return false;
	}
	uint32_t code = pg_get_u32(m->body);
	const uint8_t *d = m->body + 4;
	size_t dlen = m->body_len - 4;
	const char *pw = c->inst->password;

	if (code == PG_AUTH_OK)
		return true;
	if (!pw && code != PG_AUTH_SASL_FINAL && code != PG_AUTH_SASL_CONTINUE) {
		be_login_failed(c, "instance \"%s\" asks for a password and none is configured%s", "");
		return false;
	}
	switch (code) {
	case PG_AUTH_CLEARTEXT:
		return be_send_password_msg(c, pw, strlen(pw) + 1);
	case PG_AUTH_MD5:
		if (dlen < 4)
			break;
		auth_md5_response(pw, c->inst->user, d, out);
		return be_send_password_msg(c, out, strlen(out) + 1);
	case PG_AUTH_SASL: {
		uint8_t cbind[EVP_MAX_MD_SIZE];
		size_t cbind_len = 0;
		if (c->be_ssl) {
			X509 *peer = SSL_get1_peer_certificate(c->be_ssl);
			cbind_len = peer ? scram_cert_endpoint_hash(peer, cbind, sizeof(cbind)) : 0;
			X509_free(peer);
		}
		if (!(c->lg->bscram = scram_client_new(pw, c->px->backend_scram)) ||
		    !scram_client_first(c->lg->bscram, d, dlen, cbind_len ? cbind : NULL, cbind_len, mech, sizeof(mech), out,
					sizeof(out), &used, err, sizeof(err))) {
			be_login_failed(c, "SCRAM with instance \"%s\" failed: %s", err);
			return false;
		}
		size_t off = pgbuf_begin(&b, PG_MSG_PASSWORD);
		pgbuf_put_str(&b, mech);
		pgbuf_put_u32(&b, (uint32_t)used);
		pgbuf_put(&b, out, used);
		pgbuf_end(&b, off);
		bool ok = !b.oom && bufferevent_write(c->server, b.data, b.len) == 0;
		pgbuf_free(&b);
		return ok;
	}
	case PG_AUTH_SASL_CONTINUE:
		if (!c->lg->bscram || !scram_client_final(c->lg->bscram, d, dlen, out, sizeof(out), &used, err, sizeof(err))) {
			be_login_failed(c, "SCRAM with instance \"%s\" failed: %s", c->lg->bscram ? err : "unexpected message");
			return false;
		}
		return be_send_password_msg(c, out, used);
	case PG_AUTH_SASL_FINAL:
		if (!c->lg->bscram || !scram_client_verify(c->lg->bscram, d, dlen, err, sizeof(err))) {
			be_login_failed(c, "instance \"%s\" could not prove it knows the password: %s",
					c->lg->bscram ? err : "unexpected message");
			return false;
		}
		scram_client_free(c->lg->bscram);
		c->lg->bscram = NULL;
		return true;
	}
	snprintf(err, sizeof(err), "an authentication method pglane does not support (request code %u)", code);
	be_login_failed(c, "instance \"%s\" asks for %s", err);
	return false;
}

/* An ErrorResponse during login: what the client may see of it.  The server's own text can name the
 * instance's real user, so authentication errors are reworded; the rest keeps its SQLSTATE. */
static void be_on_login_error(struct conn *c, const struct pg_msg *m)
{
	const char *code = pg_error_field(m->body, m->body_len, 'C');
	const char *msg = pg_error_field(m->body, m->body_len, 'M');

	if (!code || strlen(code) != 5)
		code = "08001";
	if (!msg)
		msg = "(no message)";
	if (strcmp(code, "53300") == 0 && !c->pool_shed) {
		/* Kept server connections (pool.c) may be what fills the instance: close them, try once more when
		 * their backends have had time to exit. */
		size_t n = pool_shed_all(c->px, c->inst);
		if (c->state == CONN_CLOSED) /* closed meanwhile (a KILL served while the other workers were asked) */
			return;
		if (n > 0) {
			c->pool_shed = true;
			log_conn(LOG_INFO, c, "instance %s has no connection slot free: closed %zu kept server connections; "
				 "logging in again", c->inst->name, n);
			if (c->server)
				bufferevent_free(c->server);
			c->server = NULL;
			c->be_ssl = NULL;
			c->be_phase = BE_SHED;
			conn_arm_timer(c, 100);
			return;
		}
	}
	if (strcmp(code, "3D000") != 0 || c->route.app->provision != PROVISION_AUTO)
		log_conn(LOG_WARNING, c, "instance %s refused the login: %s: %s", c->inst->name, code, msg);
	if (strncmp(code, "28", 2) == 0) {
		conn_fail(c, "08001", "instance refused credentials",
			  "instance \"%s\" refused pglane's credentials; the operator must check the instance's user "
			  "and password",
			  c->inst->name);
	} else if (strcmp(code, "3D000") == 0 && c->route.app->provision == PROVISION_AUTO && !c->provisioned) {
		c->provisioned = true; /* once: a database dropped again at once is an error, not a loop */
		autoprov_start(c);
	} else if (strcmp(code, "3D000") == 0) {
		conn_fail_hint(c, "3D000", "create it with `pglane provision`", "database missing",
			       "database \"%s\" does not exist on instance \"%s\"", c->route.dbname, c->inst->name);
	} else {
		conn_fail(c, code, "instance refused the login", "%s", msg);
	}
}

static void be_on_login(struct conn *c, struct evbuffer *in)
{
	char err[128];
	struct pg_msg m;
	uint8_t head[5];

	while (c->state == CONN_CONNECT && !c->closing) {
		size_t len = evbuffer_get_length(in);
		if (len < 5)
			return;
		evbuffer_copyout(in, head, 5);
		if (pg_read_msg(head, 5, BE_LOGIN_MSG_MAX, &m, err, sizeof(err)) == PG_BAD) {
			conn_fail(c, "08P01", "protocol violation", "instance \"%s\": %s", c->inst->name, err);
			return;
		}
		size_t total = (size_t)pg_get_u32(head + 1) + 1;
		if (len < total)
			return;
		uint8_t *p = evbuffer_pullup(in, (ssize_t)total);
		pg_read_msg(p, total, BE_LOGIN_MSG_MAX, &m, err, sizeof(err));
		switch (m.type) {
		case PG_MSG_AUTH:
			if (!be_on_auth(c, &m))
				return;
			break;
		case PG_MSG_ERROR:
			be_on_login_error(c, &m);
			return;
		case PG_MSG_BACKEND_KEY_DATA: {
			struct pgbuf b = {0};
			if (m.body_len != 8) {
				conn_fail(c, "08P01", "protocol violation", "malformed BackendKeyData from instance");
				return;
			}
			c->be_pid = pg_get_u32(m.body);
			c->be_key = pg_get_u32(m.body + 4);
			if (c->reopen) /* the client has its key from its own login */
				break;
			c->client_pid = c->be_pid;
			if (!cancel_map_add(c->px, c)) {
				conn_fail(c, "53200", "out of memory", "out of memory");
				return;
			}
			pg_put_backend_key(&b, c->client_pid, c->cancel_key);
			if (!conn_send(c, &b))
				return;
			break;
		}
		case PG_MSG_READY_FOR_QUERY:
			if (!c->reopen)
				bufferevent_write(c->client, p, total);
			evbuffer_drain(in, total);
			c->be_phase = BE_READY;
			c->px->stats.routed += !c->reopen; /* a session's new server connection is no new routing */
			struct inst_live *l = inst_live_lock(c->px, c->inst->name);
			if (l) {
				l->seen = l->reachable = true;
				l->error[0] = '\0';
				snprintf(l->tls, sizeof(l->tls), "%s", c->be_ssl ? SSL_get_version(c->be_ssl) : "");
				inst_live_unlock(c->px);
			}
			if (c->reopen) {
				c->reopen = false;
				log_conn(LOG_DEBUG, c, "transaction pooling: new server connection (pid %u)", c->be_pid);
				conn_login_done(c);
				relay_txn_resume(c);
				return;
			}
			stats_observe_connect(c->px, &c->be_started);
			log_conn(LOG_INFO, c, "routed to %s database \"%s\" (server pid %u)", c->inst->name,
				 c->route.dbname, c->be_pid);
			relay_start(c);
			return;
		default: /* ParameterStatus, NoticeResponse, NegotiateProtocolVersion: as the server sent them */
			if (m.type == PG_MSG_PARAMETER_STATUS && m.body_len > 15 &&
			    memcmp(m.body, "server_version", 15) == 0) {
				const char *v = (const char *)m.body + 15;
				struct inst_live *live;
				if (memchr(v, '\0', m.body_len - 15) && (live = inst_live_lock(c->px, c->inst->name))) {
					snprintf(live->server_version, sizeof(live->server_version), "%s", v);
					inst_live_unlock(c->px);
				}
			}
			if (c->reopen) /* the client heard its parameters at login */
				break;
			if (m.type == PG_MSG_PARAMETER_STATUS)
				pool_note_param(c, p, total);
			bufferevent_write(c->client, p, total);
			break;
		}
		evbuffer_drain(in, total);
	}
}

static void be_read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	if (c->state == CONN_CLOSED || c->closing)
		return;
	if (c->be_phase == BE_SSL_ANSWER)
		be_on_ssl_answer(c, in);
	else if (c->be_phase == BE_LOGIN)
		be_on_login(c, in);
}

static void be_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;
	char why[512];

	if (c->state == CONN_CLOSED || c->closing)
		return;
	if (what & BEV_EVENT_CONNECTED) {
		if (c->be_phase == BE_RESOLVING)
			be_on_connected(c);
		else if (c->be_phase == BE_TLS)
			be_send_startup(c);
		return;
	}
	const struct conf_instance *in = c->inst;
	switch (c->be_phase) {
	case BE_RESOLVING: {
		int dns = bufferevent_socket_get_dns_error(bev);
		if (dns)
			snprintf(why, sizeof(why), "cannot resolve host \"%s\": %s", in->host, evutil_gai_strerror(dns));
		else
			snprintf(why, sizeof(why), "%s", evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
		conn_fail(c, "08001", "instance unreachable", "could not connect to instance \"%s\" (%s:%d): %s",
			  in->name, in->host, in->port, why);
		return;
	}
	case BE_TLS:
		certs_describe_failure(c->be_ssl, in, why, sizeof(why));
		conn_fail(c, "08001", "instance TLS failed", "%s", why);
		return;
	default:
		conn_fail(c, "08001", "instance closed", "instance \"%s\" closed the connection during login",
			  in->name);
		return;
	}
}

/* ---------------------------------------------------------------- cancel requests */

/* One CancelRequest in flight toward an instance: connect, (TLS), send 16 bytes, wait for the close. */
struct cancel_job {
	struct proxy *px;          /* borrowed */
	struct snapshot *snap;     /* reference held */
	const struct conf_instance *inst; /* borrowed from snap */
	struct bufferevent *bev;   /* owned */
	uint32_t pid, key;
	bool tls;                  /* the session used TLS: so does its cancel */
	bool sent;
};

static void cancel_job_free(struct cancel_job *j)
{
	if (j->bev)
		bufferevent_free(j->bev);
	snapshot_unref(j->snap);
	free(j);
}

static void cancel_job_send(struct cancel_job *j)
{
	struct pgbuf b = {0};
	pg_put_cancel(&b, j->pid, j->key);
	bufferevent_write(j->bev, b.data, b.len);
	pgbuf_free(&b);
	j->sent = true;
}

static void cancel_job_event_cb(struct bufferevent *bev, short what, void *arg);

static void cancel_job_read_cb(struct bufferevent *bev, void *arg)
{
	struct cancel_job *j = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	char answer;

	if (j->sent) { /* the server says nothing; anything it does say ends the job */
		cancel_job_free(j);
		return;
	}
	if (evbuffer_remove(in, &answer, 1) != 1)
		return;
	if (answer != 'S') {
		log_msg(LOG_WARNING, "cancel toward instance %s: SSL refused", j->inst->name);
		cancel_job_free(j);
		return;
	}
	SSL *ssl = certs_instance_ssl_new(j->snap->inst_ctx[snapshot_instance_index(j->snap, j->inst)], j->inst);
	if (!ssl || !(j->bev = conn_upgrade_tls(j->px, j->bev, ssl, false))) {
		j->bev = NULL;
		cancel_job_free(j);
		return;
	}
	bufferevent_setcb(j->bev, cancel_job_read_cb, NULL, cancel_job_event_cb, j);
	bufferevent_enable(j->bev, EV_READ);
}

static void cancel_job_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct cancel_job *j = arg;

	if ((what & BEV_EVENT_CONNECTED) && !j->sent) {
		if (j->tls && !bufferevent_openssl_get_ssl(bev)) {
			struct pgbuf b = {0};
			pg_put_ssl_request(&b);
			bufferevent_write(bev, b.data, b.len);
			pgbuf_free(&b);
		} else {
			cancel_job_send(j);
		}
		return;
	}
	if (what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
		log_msg(LOG_WARNING, "cancel toward instance %s failed%s", j->inst->name,
			what & BEV_EVENT_TIMEOUT ? ": timeout" : "");
	cancel_job_free(j);
}

void backend_forward_cancel(struct proxy *px, const struct conn *target)
{
	struct cancel_job *j = calloc(1, sizeof(*j));
	struct timeval tv = {5, 0};

	if (!j)
		return;
	j->px = px;
	j->snap = snapshot_ref(target->snap);
	j->inst = target->inst;
	j->pid = target->be_pid;
	j->key = target->be_key;
	j->tls = target->be_ssl != NULL;
	if (!(j->bev = bufferevent_socket_new(px->base, -1, BEV_OPT_CLOSE_ON_FREE))) {
		cancel_job_free(j);
		return;
	}
	bufferevent_setcb(j->bev, cancel_job_read_cb, NULL, cancel_job_event_cb, j);
	bufferevent_set_timeouts(j->bev, &tv, &tv);
	bufferevent_enable(j->bev, EV_READ);
	if (bufferevent_socket_connect(j->bev, &target->be_addr.sa, (int)target->be_addrlen) != 0)
		cancel_job_free(j);
}
