/*
 * route: see route.h.  The one place that decides which database a credential may reach; the first
 * promise of pglane (a branch's credential never reaches production data) rests on this file and on
 * the token being derived from the timeline that is routed to.
 */
#include "routing/route.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *route_res_str(enum route_res r)
{
	switch (r) {
	case ROUTE_OK:
		return "ok";
	case ROUTE_BAD_USER:
		return "bad user name";
	case ROUTE_UNKNOWN_APP:
		return "unknown app";
	case ROUTE_DB_NOT_ALLOWED:
		return "database not allowed";
	}
	return "?";
}

bool route_for(const struct conf_app *app, const struct timeline *tl, struct route *out, char *err, size_t errlen)
{
	char key[TIMELINE_BRANCH_MAX + 16];

	memset(out, 0, sizeof(*out));
	out->app = app;
	snprintf(out->id.app, sizeof(out->id.app), "%s", app->id);
	out->id.tl = *tl;
	timeline_dbname(app->id, tl, out->dbname, sizeof(out->dbname));
	timeline_key(tl, key, sizeof(key));
	if (!auth_token_derive(app->secret, app->id, key, out->token, sizeof(out->token))) {
		snprintf(err, errlen, "could not derive the credential");
		return false;
	}
	return true;
}

/* Whether a client asking for database may have it: its timeline's database, or its user name (what libpq
 * and node's pg send when none is set).  Node's pg decodes a DATABASE_URL's path with decodeURI, which keeps
 * "%2F" as it is, so a branch "feature/x" arrives as "feature%2Fx": a percent-encoded name that decodes to
 * one of the two is the same name, not another database. */
static bool route_db_allowed(const char *database, const char *user, const char *dbname)
{
	char decoded[PG_NAMEDATALEN * 3 + TIMELINE_BRANCH_MAX * 3];
	size_t o = 0;

	if (strcmp(database, user) == 0 || strcmp(database, dbname) == 0)
		return true;
	if (!strchr(database, '%') || strlen(database) >= sizeof(decoded))
		return false;
	for (const char *s = database; *s; s++) {
		/* Exactly two hex digits (sscanf's %x would skip blanks and take a sign). */
		if (s[0] == '%' && isxdigit((unsigned char)s[1]) && isxdigit((unsigned char)s[2])) {
			char hex[3] = {s[1], s[2], '\0'};
			decoded[o++] = (char)strtoul(hex, NULL, 16);
			s += 2;
		} else {
			decoded[o++] = *s;
		}
	}
	decoded[o] = '\0';
	return strlen(decoded) == o && (strcmp(decoded, user) == 0 || strcmp(decoded, dbname) == 0);
}

enum route_res route_resolve(const struct conf *c, const char *user, const char *database, struct route *out,
			     char *err, size_t errlen)
{
	struct identity id;

	memset(out, 0, sizeof(*out));
	if (!identity_parse_user(user, &id, err, errlen))
		return ROUTE_BAD_USER;
	const struct conf_app *app = conf_app_find(c, id.app);
	if (!app) {
		snprintf(err, errlen, "no app \"%s\"", id.app);
		return ROUTE_UNKNOWN_APP;
	}
	struct timeline tl;
	if (!timeline_set(&tl, id.tl.kind, id.tl.branch, app->production_branch, err, errlen))
		return ROUTE_BAD_USER;
	if (!route_for(app, &tl, out, err, errlen))
		return ROUTE_BAD_USER;
	if (database && *database && !route_db_allowed(database, user, out->dbname)) {
		snprintf(err, errlen, "user \"%s\" may connect only to database \"%s\", not \"%s\"", user,
			 out->dbname, database);
		return ROUTE_DB_NOT_ALLOWED;
	}
	return ROUTE_OK;
}
