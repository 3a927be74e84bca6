/*
 * snapshot: a conf together with the TLS contexts built from it.  Built whole or not at all, then
 * shared by reference: the proxy holds the current one, each routed connection holds its own.
 */
#include "proxy/proxy.h"

#include <stdlib.h>

#include "certs/certs.h"

#include <string.h>
#include <openssl/evp.h>

/* SHA-256 over every app's id and secret: stable while they are, secret while any one is.  Every user
 * name's salt changes at once when an app or a secret changes, so no change singles out one name. */
static void snapshot_salt_key(const struct conf *conf, uint8_t out[32])
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned int n = 32;

	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	EVP_DigestUpdate(md, "pglane-salt-v1", 15);
	for (size_t i = 0; i < conf->napps; i++) {
		EVP_DigestUpdate(md, conf->apps[i].id, strlen(conf->apps[i].id) + 1);
		EVP_DigestUpdate(md, conf->apps[i].secret, strlen(conf->apps[i].secret) + 1);
	}
	if (conf->admin_password)
		EVP_DigestUpdate(md, conf->admin_password, strlen(conf->admin_password) + 1);
	EVP_DigestFinal_ex(md, out, &n);
	EVP_MD_CTX_free(md);
}

struct snapshot *snapshot_new(struct conf *conf, char *err, size_t errlen)
{
	struct snapshot *s = calloc(1, sizeof(*s));

	if (!s || !(s->inst_ctx = calloc(conf->ninstances ? conf->ninstances : 1, sizeof(SSL_CTX *)))) {
		snprintf(err, errlen, "out of memory");
		free(s);
		return NULL;
	}
	atomic_init(&s->refs, 1);
	s->conf = conf;
	for (size_t i = 0; i < conf->ninstances; i++) {
		if (conf->instances[i].sslmode == SSLMODE_DISABLE)
			continue;
		if (!(s->inst_ctx[i] = certs_instance_ctx_new(&conf->instances[i], err, errlen)))
			goto fail;
	}
	if (conf->tls_cert && !(s->server_ctx = certs_server_ctx_new(conf, err, errlen)))
		goto fail;
	snapshot_salt_key(conf, s->salt_key);
	return s;
fail:
	for (size_t i = 0; i < conf->ninstances; i++)
		SSL_CTX_free(s->inst_ctx[i]);
	free(s->inst_ctx);
	free(s); /* conf stays the caller's */
	return NULL;
}

struct snapshot *snapshot_ref(struct snapshot *s)
{
	atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
	return s;
}

void snapshot_unref(struct snapshot *s)
{
	if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) > 1)
		return;
	for (size_t i = 0; i < s->conf->ninstances; i++)
		SSL_CTX_free(s->inst_ctx[i]);
	free(s->inst_ctx);
	SSL_CTX_free(s->server_ctx);
	OPENSSL_cleanse(s->salt_key, sizeof(s->salt_key));
	conf_free(s->conf);
	free(s);
}

size_t snapshot_instance_index(const struct snapshot *s, const struct conf_instance *inst)
{
	return (size_t)(inst - s->conf->instances);
}
