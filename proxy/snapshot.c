/*
 * snapshot: a conf together with the TLS contexts built from it.  Built whole or not at all, then
 * shared by reference: the proxy holds the current one, each routed connection holds its own.
 */
#include "proxy/proxy.h"

#include <stdlib.h>

#include "certs/certs.h"

struct snapshot *snapshot_new(struct conf *conf, char *err, size_t errlen)
{
	struct snapshot *s = calloc(1, sizeof(*s));

	if (!s || !(s->inst_ctx = calloc(conf->ninstances ? conf->ninstances : 1, sizeof(SSL_CTX *)))) {
		snprintf(err, errlen, "out of memory");
		free(s);
		return NULL;
	}
	s->refs = 1;
	s->conf = conf;
	for (size_t i = 0; i < conf->ninstances; i++) {
		if (conf->instances[i].sslmode == SSLMODE_DISABLE)
			continue;
		if (!(s->inst_ctx[i] = certs_instance_ctx_new(&conf->instances[i], err, errlen)))
			goto fail;
	}
	if (conf->tls_cert && !(s->server_ctx = certs_server_ctx_new(conf, err, errlen)))
		goto fail;
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
	s->refs++;
	return s;
}

void snapshot_unref(struct snapshot *s)
{
	if (!s || --s->refs > 0)
		return;
	for (size_t i = 0; i < s->conf->ninstances; i++)
		SSL_CTX_free(s->inst_ctx[i]);
	free(s->inst_ctx);
	SSL_CTX_free(s->server_ctx);
	conf_free(s->conf);
	free(s);
}

size_t snapshot_instance_index(const struct snapshot *s, const struct conf_instance *inst)
{
	return (size_t)(inst - s->conf->instances);
}
