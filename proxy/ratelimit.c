/*
 * ratelimit: what one peer address may make pglane spend before it has authenticated.
 *
 * Two token buckets per address: failed logins (RATELIMIT_FAIL_BURST, then one per
 * RATELIMIT_FAIL_REFILL_MS) and first logins of a credential pglane has not seen yet, each of which costs a
 * PBKDF2 run (RATELIMIT_DERIVE_BURST, then one per RATELIMIT_DERIVE_REFILL_MS).  A peer over budget is not
 * refused, which would tell it something: its answer is delayed by RATELIMIT_DELAY_MS (a tarpit), so the
 * reply is the same whether or not the app or timeline exists, and a flood costs the flooder time, not us
 * CPU.  The table is bounded: past RATELIMIT_PEERS addresses it starts over.  The workers share it (under
 * lane->shared_mu): a peer's budget is the process's, whichever worker its connections land on.
 */
#include "proxy/proxy.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/lhash.h>

#define RATELIMIT_PEERS 65536

static const struct {
	double burst, refill_ms;
} ratelimit_rules[] = {
	[RATELIMIT_FAIL] = {RATELIMIT_FAIL_BURST, RATELIMIT_FAIL_REFILL_MS},
	[RATELIMIT_DERIVE] = {RATELIMIT_DERIVE_BURST, RATELIMIT_DERIVE_REFILL_MS},
};

struct peer_budget {
	char addr[64];     /* the peer's address without its port */
	double tokens[2];  /* by enum ratelimit_kind */
	int64_t last_ms[2];
};

static unsigned long peer_hash(const void *p)
{
	return OPENSSL_LH_strhash(((const struct peer_budget *)p)->addr);
}

static int peer_cmp(const void *a, const void *b)
{
	return strcmp(((const struct peer_budget *)a)->addr, ((const struct peer_budget *)b)->addr);
}

/* "10.0.0.7:51234" -> "10.0.0.7", "[::1]:5000" -> "::1" */
static void peer_addr(const char *peer, char *out, size_t outlen)
{
	const char *colon = strrchr(peer, ':');
	size_t n = colon ? (size_t)(colon - peer) : strlen(peer);
	if (peer[0] == '[' && n >= 2)
		peer++, n -= 2;
	snprintf(out, outlen, "%.*s", (int)n, peer);
}

/* One bucket: the peer's, or "*", the whole process's (RATELIMIT_DERIVE only, so that many addresses
 * together cannot make pglane spend more than one core's tenth on PBKDF2 either). */
static bool ratelimit_take_addr(struct lane *ln, const char *addr, enum ratelimit_kind kind, double burst,
				double refill_ms)
{
	struct peer_budget probe, *p;
	struct timespec now;

	if (!ln->peers && !(ln->peers = OPENSSL_LH_new(peer_hash, peer_cmp)))
		return true;
	snprintf(probe.addr, sizeof(probe.addr), "%s", addr);
	clock_gettime(CLOCK_MONOTONIC, &now);
	int64_t ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
	if (!(p = OPENSSL_LH_retrieve(ln->peers, &probe))) {
		if (OPENSSL_LH_num_items(ln->peers) >= RATELIMIT_PEERS)
			ratelimit_free(ln);
		if ((!ln->peers && !(ln->peers = OPENSSL_LH_new(peer_hash, peer_cmp))) || !(p = malloc(sizeof(*p))))
			return true;
		*p = probe;
		for (int k = 0; k < 2; k++) {
			p->tokens[k] = k == (int)kind ? burst : ratelimit_rules[k].burst;
			p->last_ms[k] = ms;
		}
		OPENSSL_LH_insert(ln->peers, p);
		if (OPENSSL_LH_error(ln->peers)) {
			free(p);
			return true;
		}
	}
	double t = p->tokens[kind] + (double)(ms - p->last_ms[kind]) / refill_ms;
	p->tokens[kind] = t > burst ? burst : t;
	p->last_ms[kind] = ms;
	if (p->tokens[kind] < 1)
		return false;
	p->tokens[kind] -= 1;
	return true;
}

bool ratelimit_take(struct proxy *px, const struct conn *c, enum ratelimit_kind kind)
{
	struct lane *ln = px->lane;
	char addr[64];

	peer_addr(c->peer, addr, sizeof(addr));
	pthread_mutex_lock(&ln->shared_mu);
	bool ok = ratelimit_take_addr(ln, addr, kind, ratelimit_rules[kind].burst, ratelimit_rules[kind].refill_ms) &&
		  (kind != RATELIMIT_DERIVE ||
		   ratelimit_take_addr(ln, "*", kind, RATELIMIT_DERIVE_ALL_BURST, RATELIMIT_DERIVE_ALL_REFILL_MS));
	pthread_mutex_unlock(&ln->shared_mu);
	return ok;
}

void ratelimit_free(struct lane *ln)
{
	if (!ln->peers)
		return;
	OPENSSL_LH_doall(ln->peers, free);
	OPENSSL_LH_free(ln->peers);
	ln->peers = NULL;
}
