/*
 * fuzz_user: the user name a client sends, through identity_parse_user() and then the way routing uses
 * the identity (timeline_dbname, identity_format_user, timeline_set with production_branch, route_for and
 * route_resolve against a one-app conf).  This is where a credential is tied to a database, so the
 * properties are pglane's first promise: a credential never reaches another timeline's database.
 *
 * Input: byte 0 holds flags (bit 0: the app has production_branch = "main"; bit 1: err buffers of the
 * proxy's 256 bytes instead of 1024); the rest is user NUL database (database absent when there is no NUL).
 *
 * Properties checked beyond memory safety:
 *   - a parsed identity formats back to exactly the user name; its app id and branch are valid;
 *   - timeline_dbname() is at most 63 bytes, valid UTF-8, equal to "{app}--{branch}" when that fits and
 *     otherwise a prefix of it plus "~" and 8 hex digits; it is "{app}-production" / "{app}-preview"
 *     for those timelines;
 *   - refusals come with an error text free of control characters (it is logged and sent to the client);
 *   - route_resolve() returns ROUTE_OK only for no database, the user name, or the route's own database;
 *     the route's database and token are the timeline's (production_branch applied), and a branch's token
 *     is never production's unless the branch is the production branch.
 */
#include <stddef.h>
#include <stdint.h>
#include <ctype.h>
#include <string.h>

#include "conf/conf.h"
#include "routing/route.h"
#include "routing/timeline.h"
#include "tests/fuzz/fuzz_common.h"

static bool is_hex(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

static void check_dbname(const struct identity *id)
{
	char db[PG_NAMEDATALEN + 16], full[APP_ID_MAX + 2 + TIMELINE_BRANCH_MAX + 1];

	memset(db, 'Z', sizeof db);
	timeline_dbname(id->app, &id->tl, db, PG_NAMEDATALEN);
	size_t n = strnlen(db, PG_NAMEDATALEN);
	FUZZ_CHECK(n <= PG_NAMEDATALEN - 1, "database name of %zu bytes", n);
	FUZZ_CHECK(fuzz_utf8_valid(db, n), "database name \"%s\" is not valid UTF-8", db);
	for (size_t i = PG_NAMEDATALEN; i < sizeof db; i++)
		FUZZ_CHECK(db[i] == 'Z', "timeline_dbname wrote past outlen");
	if (id->tl.kind != TIMELINE_BRANCH) {
		snprintf(full, sizeof full, "%s-%s", id->app, timeline_kind_str(id->tl.kind));
		FUZZ_CHECK(strcmp(db, full) == 0, "database \"%s\", expected \"%s\"", db, full);
		return;
	}
	snprintf(full, sizeof full, "%s--%s", id->app, id->tl.branch);
	if (strlen(full) <= PG_NAMEDATALEN - 1) {
		FUZZ_CHECK(strcmp(db, full) == 0, "database \"%s\" for a name that fits, \"%s\"", db, full);
		return;
	}
	const char *tilde = strrchr(db, '~');
	FUZZ_CHECK(tilde && strlen(tilde) == 9 && is_hex(tilde + 1, 8), "cut name \"%s\" does not end in ~hash", db);
	size_t keep = (size_t)(tilde - db);
	FUZZ_CHECK(keep >= strlen(id->app) + 2 && memcmp(db, full, keep) == 0, "cut name \"%s\" is not a prefix", db);
}

/* %XX (two hex digits) to its byte, everything else as it is; false when the result does not fit or holds a
 * NUL.  Written apart from routing/route.c's on purpose: the property checks that code. */
static bool fuzz_pct_decode(const char *in, char *out, size_t outlen)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	for (size_t i = 0; in[i]; i++) {
		const char *h = in[i] == '%' && in[i + 1] ? strchr(hex, tolower((unsigned char)in[i + 1])) : NULL;
		const char *l = h && in[i + 2] ? strchr(hex, tolower((unsigned char)in[i + 2])) : NULL;
		if (o + 1 >= outlen)
			return false;
		if (h && l) {
			out[o++] = (char)((h - hex) << 4 | (l - hex));
			i += 2;
		} else {
			out[o++] = in[i];
		}
		if (out[o - 1] == '\0')
			return false;
	}
	out[o] = '\0';
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t flags = data[0];
	size_t errlen = flags & 2 ? 256 : 1024;
	char *user = fuzz_cstr(data + 1, size - 1);
	const uint8_t *nul = memchr(data + 1, 0, size - 1);
	char *database = nul ? fuzz_cstr(nul + 1, size - 1 - (size_t)(nul + 1 - (data + 1))) : NULL;
	char err[1024], back[TIMELINE_BRANCH_MAX + APP_ID_MAX + 16];
	struct identity id;

	memset(err, 0, sizeof err);
	if (!identity_parse_user(user, &id, err, errlen)) {
		FUZZ_NOTE("refused: %s", err);
		FUZZ_CHECK(err[0] != '\0', "refused without a message");
		FUZZ_CHECK(fuzz_no_controls(err), "error text holds a control character: %s", err);
		if (errlen == 1024)
			FUZZ_CHECK(fuzz_utf8_valid(err, strlen(err)), "error text is not valid UTF-8");
		goto out;
	}
	FUZZ_CHECK(identity_format_user(&id, back, sizeof back), "a parsed identity does not format");
	FUZZ_CHECK(strcmp(back, user) == 0, "\"%s\" formats back as \"%s\"", user, back);
	FUZZ_CHECK(app_id_valid(id.app, err, sizeof err), "parsed app id: %s", err);
	if (id.tl.kind == TIMELINE_BRANCH)
		FUZZ_CHECK(branch_name_valid(id.tl.branch, err, sizeof err), "parsed branch: %s", err);
	else
		FUZZ_CHECK(id.tl.branch[0] == '\0', "branch set for %s", timeline_kind_str(id.tl.kind));
	check_dbname(&id);

	/* A conf with this one app, its instance and its secret. */
	struct conf_instance inst = {.name = "main", .host = "127.0.0.1", .port = 5432};
	struct conf_app app = {.id = id.app, .instance_name = "main", .instance = &inst, .secret = "fuzz-secret",
			       .production_branch = (flags & 1) ? "main" : NULL};
	struct conf conf = {.instances = &inst, .ninstances = 1, .apps = &app, .napps = 1};
	struct route r, prod;
	struct timeline tl, prod_tl = {.kind = TIMELINE_PRODUCTION};

	FUZZ_CHECK(timeline_set(&tl, id.tl.kind, id.tl.branch, app.production_branch, err, errlen), "timeline_set: %s",
		   err);
	enum route_res rr = route_resolve(&conf, user, database, &r, err, errlen);
	FUZZ_NOTE("route_resolve: %s, database \"%s\" %s", route_res_str(rr), r.dbname, rr == ROUTE_OK ? "" : err);
	FUZZ_CHECK(rr == ROUTE_OK || rr == ROUTE_DB_NOT_ALLOWED, "route_resolve gives %s for a parsed user: %s",
		   route_res_str(rr), err);
	FUZZ_CHECK(r.app == &app, "routed to another app");
	FUZZ_CHECK(route_for(&app, &prod_tl, &prod, err, errlen), "route_for production");
	char want_db[PG_NAMEDATALEN];
	timeline_dbname(id.app, &tl, want_db, sizeof want_db);
	FUZZ_CHECK(strcmp(r.dbname, want_db) == 0, "routed to \"%s\", the timeline's database is \"%s\"", r.dbname, want_db);
	FUZZ_CHECK(r.id.tl.kind == tl.kind && strcmp(r.id.tl.branch, tl.branch) == 0, "routed timeline differs");
	FUZZ_CHECK(strlen(r.token) == AUTH_TOKEN_LEN && strncmp(r.token, "pgl_", 4) == 0, "token \"%s\"", r.token);
	bool is_prod = tl.kind == TIMELINE_PRODUCTION;
	FUZZ_CHECK(is_prod == (strcmp(r.token, prod.token) == 0), "token shared with production: %d", is_prod);
	FUZZ_CHECK(is_prod == (strcmp(r.dbname, prod.dbname) == 0), "database shared with production: %d", is_prod);
	if (rr == ROUTE_OK) {
		/* A percent-encoded spelling of the user name or of its own database is that name (node's pg
		 * sends "feature%2Fx" for a branch "feature/x"); nothing else is. */
		char plain[1024];
		bool decoded = database && fuzz_pct_decode(database, plain, sizeof plain);
		FUZZ_CHECK(database == NULL || database[0] == '\0' || strcmp(database, user) == 0 ||
				   strcmp(database, r.dbname) == 0 ||
				   (decoded && (strcmp(plain, user) == 0 || strcmp(plain, r.dbname) == 0)),
			   "user \"%s\" allowed into database \"%s\" (its own is \"%s\")", user, database, r.dbname);
	} else {
		FUZZ_CHECK(FUZZ_SKIPPED("log-controls") || fuzz_no_controls(err),
			   "refusal text holds a control character: %s", err);
	}
	/* The same user with its own database and with the user name as database always routes. */
	FUZZ_CHECK(route_resolve(&conf, user, r.dbname, &prod, err, errlen) == ROUTE_OK, "own database refused");
	FUZZ_CHECK(route_resolve(&conf, user, user, &prod, err, errlen) == ROUTE_OK, "user name as database refused");
	FUZZ_CHECK(route_resolve(&conf, user, NULL, &prod, err, errlen) == ROUTE_OK, "no database refused");

	char key[TIMELINE_BRANCH_MAX + 16], label[TIMELINE_BRANCH_MAX + 16];
	timeline_key(&id.tl, key, sizeof key);
	timeline_label(&id.tl, label, sizeof label);
out:
	free(user);
	free(database);
	return 0;
}
