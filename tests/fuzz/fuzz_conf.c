/*
 * fuzz_conf: conf_load_string() on arbitrary text.  The ini file is written by an operator, not an
 * attacker, but it is also what `pglane check` runs on in CI for files from pull requests, and a reload
 * must never crash the running proxy however wrong the new file is.
 *
 * Input: byte 0 picks the size of the error buffer (to exercise the cut of long error lists); the rest,
 * up to the first NUL, is the file's text (conf_load() refuses files holding a NUL).
 *
 * Properties checked beyond memory safety and leaks:
 *   - NULL comes with an error text (when the buffer has room), whose lines each start with the file
 *     name and name a line of the text (or none);
 *   - a conf that loads is complete: at least one listen address with a numeric port, valid app ids,
 *     every app's instance resolved to an instance of the same conf, no empty secret, valid production
 *     branches, sane timeouts and limits; conf_app_find()/conf_instance_find() find every entry;
 *   - loading is deterministic: the same text gives the same errors again.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "conf/conf.h"
#include "routing/timeline.h"
#include "tests/fuzz/fuzz_common.h"

#define NAME "fuzz.ini"

static const size_t errlens[] = {4096, 0, 1, 16, 100, 65536};

static void check_conf(const struct conf *c)
{
	char why[512];

	FUZZ_CHECK(c->nlisten >= 1 && c->listen != NULL, "no listen address");
	for (size_t i = 0; i < c->nlisten; i++) {
		const char *port = c->listen[i].port;
		char *end;
		long n = strtol(port, &end, 10);
		FUZZ_CHECK(c->listen[i].host && c->listen[i].host[0], "listen %zu without host", i);
		FUZZ_CHECK(*port && !*end && n >= 1 && n <= 65535, "listen port \"%s\"", port);
	}
	FUZZ_CHECK(c->public_host != NULL && c->public_port >= 1 && c->public_port <= 65535, "public host/port");
	FUZZ_CHECK(c->connect_timeout_ms >= 1 && c->login_timeout_ms >= 1 && c->shutdown_timeout_ms >= 1,
		   "timeouts %d %d %d", c->connect_timeout_ms, c->login_timeout_ms, c->shutdown_timeout_ms);
	FUZZ_CHECK(c->max_clients >= 1 && c->max_packet_size >= 1024 && c->workers >= 0, "limits");
	FUZZ_CHECK(c->tls_min_version && c->log_format && c->log_level, "defaults missing");
	if (c->tls_mode != TLS_MODE_DISABLE)
		FUZZ_CHECK(c->tls_cert && c->tls_key, "TLS on without a certificate");
	for (size_t i = 0; i < c->ninstances; i++) {
		const struct conf_instance *in = &c->instances[i];
		FUZZ_CHECK(in->name && in->host && in->host[0] && !strchr(in->host, ','), "instance %zu host", i);
		FUZZ_CHECK(in->port >= 1 && in->port <= 65535, "instance port %d", in->port);
		FUZZ_CHECK(in->user && in->dbname, "instance user/dbname");
		FUZZ_CHECK((unsigned)in->sslmode <= SSLMODE_VERIFY_FULL, "sslmode %d", (int)in->sslmode);
		if (in->sslmode >= SSLMODE_VERIFY_CA)
			FUZZ_CHECK(in->ca != CA_SOURCE_NONE, "verify-ca/full without a CA");
		FUZZ_CHECK(conf_instance_find(c, in->name) == in, "instance \"%s\" not found by name", in->name);
	}
	for (size_t i = 0; i < c->napps; i++) {
		const struct conf_app *a = &c->apps[i];
		FUZZ_CHECK(app_id_valid(a->id, why, sizeof why), "loaded app id: %s", why);
		FUZZ_CHECK(a->secret && a->secret[0], "app %s without a secret", a->id);
		FUZZ_CHECK(a->instance && a->instance >= c->instances && a->instance < c->instances + c->ninstances &&
				   strcmp(a->instance->name, a->instance_name) == 0 && a->instance->used,
			   "app %s: instance not resolved", a->id);
		if (a->production_branch)
			FUZZ_CHECK(branch_name_valid(a->production_branch, why, sizeof why), "production_branch: %s", why);
		if (a->owner)
			FUZZ_CHECK(strlen(a->owner) < PG_NAMEDATALEN, "owner too long");
		if (a->template_db)
			FUZZ_CHECK(strlen(a->template_db) < PG_NAMEDATALEN, "template too long");
		FUZZ_CHECK(a->max_clients >= 0, "max_clients %d", a->max_clients);
		FUZZ_CHECK(conf_app_find(c, a->id) == a, "app \"%s\" not found by id", a->id);
	}
}

/* Each error line is "fuzz.ini:N: ..." with 1 <= N <= lines + 1, or "fuzz.ini: ..." */
static void check_errors(const char *err, size_t errlen, size_t nlines)
{
	if (errlen == 0)
		return;
	FUZZ_CHECK(strlen(err) < errlen, "error text overruns its buffer");
	FUZZ_CHECK(errlen == 1 || err[0] != '\0', "NULL without an error");
	if (errlen < 512)
		return; /* the first line may be cut anywhere */
	for (const char *line = err; *line;) {
		const char *nl = strchr(line, '\n');
		size_t len = nl ? (size_t)(nl - line) : strlen(line);
		FUZZ_CHECK(len > strlen(NAME) && memcmp(line, NAME ":", strlen(NAME) + 1) == 0,
			   "error line \"%.*s\" does not start with the file name", (int)len, line);
		const char *num = line + strlen(NAME) + 1;
		if (*num >= '0' && *num <= '9') {
			unsigned long n = strtoul(num, NULL, 10);
			FUZZ_CHECK(n >= 1 && n <= nlines + 1, "error at line %lu of %zu", n, nlines);
		}
		line = nl ? nl + 1 : line + len;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t errlen = errlens[data[0] % (sizeof errlens / sizeof errlens[0])];
	char *text = fuzz_cstr(data + 1, size - 1);
	char *err = malloc(errlen ? errlen : 1), *err2 = malloc(errlen ? errlen : 1);
	size_t nlines = 1;

	if (!err || !err2)
		abort();
	for (const char *p = text; *p; p++)
		nlines += *p == '\n';
	struct conf *c = conf_load_string(text, NAME, "/nonexistent-pglane-fuzz", err, errlen);
	FUZZ_NOTE("%s", c ? "loads" : errlen ? err : "refused");
	if (c) {
		if (errlen > 0)
			FUZZ_CHECK(err[0] == '\0', "a conf and an error: %s", err);
		check_conf(c);
		char warn[256];
		(void)conf_warnings(c, warn, sizeof warn);
		conf_free(c);
	} else {
		check_errors(err, errlen, nlines);
	}
	struct conf *c2 = conf_load_string(text, NAME, "/nonexistent-pglane-fuzz", err2, errlen);
	FUZZ_CHECK((c == NULL) == (c2 == NULL), "a second load gives a different verdict");
	if (errlen > 0)
		FUZZ_CHECK(strcmp(err, err2) == 0, "a second load gives different errors");
	conf_free(c2);
	free(err);
	free(err2);
	free(text);
	return 0;
}
