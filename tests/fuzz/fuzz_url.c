/*
 * fuzz_url: connection URLs, as written in "[instance x] url = ...", through conf_load_string() and so
 * through libpq's PQconninfoParse() and conf.c's merge of its parameters into the instance's keys.
 *
 * Input: byte 0 holds flags (which extra instance keys to write after the url, to exercise the rule that
 * the instance's own keys win over the url's parameters); the rest, up to the first NUL or newline, is the
 * url's value.
 *
 * Properties checked beyond memory safety and leaks:
 *   - a url libpq cannot parse, or one with a parameter pglane does not support, is refused;
 *   - when the file loads, every field the url sets (and no key overrides) equals libpq's parse of the same
 *     value: host (one host, no ','), port, user, password, dbname, sslmode; a key written in the section
 *     wins over the url's parameter.
 */
#include <ctype.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "conf/conf.h"
#include "tests/fuzz/fuzz_common.h"

static const char *const supported[] = {"host", "port", "user", "password", "dbname", "sslmode",
					"sslrootcert", "sslcert", "sslkey", NULL};

/* The value inih hands conf.c: blanks trimmed at both ends. */
static char *ini_value(const uint8_t *data, size_t n)
{
	size_t len = 0;

	while (len < n && data[len] != 0 && data[len] != '\n')
		len++;
	size_t b = 0, e = len;
	while (b < e && isspace(data[b]))
		b++;
	while (e > b && isspace(data[e - 1]))
		e--;
	char *s = malloc(e - b + 1);
	if (!s)
		abort();
	memcpy(s, data + b, e - b);
	s[e - b] = '\0';
	return s;
}

static const char *opt(const PQconninfoOption *o, const char *kw)
{
	for (; o->keyword; o++)
		if (strcmp(o->keyword, kw) == 0)
			return o->val && o->val[0] ? o->val : NULL;
	return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char text[8192], err[8192];

	if (size < 1)
		return 0;
	uint8_t flags = data[0];
	char *url = ini_value(data + 1, size - 1);
	/* inih would take " ;" as the start of a comment, and '#'/';' first as a comment line: leave those
	 * to fuzz_conf, so that the value compared here is the value conf.c sees. */
	if (strchr(url, ';') || url[0] == '#' || url[0] == '[' || strlen(url) > 150) {
		free(url);
		return 0;
	}
	int n = snprintf(text, sizeof text,
			 "[pglane]\nlisten = 127.0.0.1:6432\n\n[instance x]\nurl = %s\n%s%s%s\n[app a]\ninstance = x\n"
			 "secret = s3cret\n",
			 url, flags & 1 ? "host = override.example\n" : "", flags & 2 ? "port = 6543\n" : "",
			 flags & 4 ? "sslmode = require\n" : "");
	if (n < 0 || (size_t)n >= sizeof text)
		abort();

	struct conf *c = conf_load_string(text, "fuzz.ini", "/nonexistent-pglane-fuzz", err, sizeof err);
	FUZZ_NOTE("url \"%s\": %s", url, c ? "loads" : err);
	char *msg = NULL;
	PQconninfoOption *opts = PQconninfoParse(url, &msg);

	if (!opts) {
		FUZZ_CHECK(c == NULL, "libpq refuses url \"%s\" (%s) but the file loads", url, msg ? msg : "");
		PQfreemem(msg);
		free(url);
		return 0;
	}
	if (c) {
		for (const PQconninfoOption *o = opts; o->keyword; o++) {
			bool ok = false;
			if (!o->val || !o->val[0])
				continue;
			for (size_t i = 0; supported[i]; i++)
				ok |= strcmp(o->keyword, supported[i]) == 0;
			FUZZ_CHECK(ok, "url parameter %s=%s accepted", o->keyword, o->val);
		}
		const struct conf_instance *in = conf_instance_find(c, "x");
		FUZZ_CHECK(in != NULL, "no instance x");
		const char *h = opt(opts, "host"), *p = opt(opts, "port"), *u = opt(opts, "user"),
			   *pw = opt(opts, "password"), *d = opt(opts, "dbname"), *sm = opt(opts, "sslmode");
		if (flags & 1)
			FUZZ_CHECK(strcmp(in->host, "override.example") == 0, "host key lost to the url");
		else
			FUZZ_CHECK(h && strcmp(in->host, h) == 0, "host \"%s\", libpq \"%s\"", in->host, h ? h : "(none)");
		FUZZ_CHECK(!strchr(in->host, ','), "several hosts accepted: %s", in->host);
		if (flags & 2)
			FUZZ_CHECK(in->port == 6543, "port key lost to the url");
		else if (p)
			FUZZ_CHECK(atoi(p) == in->port && in->port >= 1 && in->port <= 65535, "port %d, libpq \"%s\"",
				   in->port, p);
		else
			FUZZ_CHECK(in->port == 5432, "default port %d", in->port);
		FUZZ_CHECK(strcmp(in->user, u ? u : "postgres") == 0, "user \"%s\"", in->user);
		FUZZ_CHECK(pw ? in->password && strcmp(in->password, pw) == 0 : in->password == NULL, "password");
		FUZZ_CHECK(strcmp(in->dbname, d ? d : "postgres") == 0, "dbname \"%s\"", in->dbname);
		if (flags & 4)
			FUZZ_CHECK(in->sslmode == SSLMODE_REQUIRE, "sslmode key lost to the url");
		else
			FUZZ_CHECK(strcmp(sslmode_str(in->sslmode), sm ? sm : "prefer") == 0, "sslmode %s, libpq %s",
				   sslmode_str(in->sslmode), sm ? sm : "(none)");
		conf_free(c);
	} else {
		FUZZ_CHECK(err[0] != '\0', "NULL without an error");
	}
	PQconninfoFree(opts);
	free(url);
	return 0;
}
