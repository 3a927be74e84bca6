/*
 * route: from what a client presents (user name, requested database) to where it goes (app, timeline,
 * instance, database) and the password it must prove.  Reads an immutable struct conf; the caller
 * holds a reference to the snapshot the conf belongs to for as long as it uses the route.
 */
#ifndef PGLANE_ROUTE_H
#define PGLANE_ROUTE_H

#include "auth/token.h"
#include "conf/conf.h"
#include "routing/timeline.h"

enum route_res {
	ROUTE_OK,
	ROUTE_BAD_USER,       /* not a pglane user name at all: 28000 */
	ROUTE_UNKNOWN_APP,    /* well-formed, but no such app: answered like a wrong password */
	ROUTE_DB_NOT_ALLOWED, /* asks for a database that is not its timeline's: 42501 */
};
const char *route_res_str(enum route_res r);

struct route {
	const struct conf_app *app; /* borrowed from the conf; set for ROUTE_OK and ROUTE_DB_NOT_ALLOWED */
	struct identity id;         /* the timeline after production_branch is applied */
	char dbname[PG_NAMEDATALEN];
	char token[AUTH_TOKEN_LEN + 1]; /* the password the client must prove */
};

/*
 * Resolves user (and database, which may be NULL or empty) against c.  The database may be the
 * timeline's database name or the user name itself (libpq and node's pg send the user name when
 * none is set).  err says what is wrong in words fit for the client.  ROUTE_DB_NOT_ALLOWED still fills
 * the route, so the caller can authenticate first and refuse after (as PostgreSQL checks CONNECT only
 * after authentication, which keeps an unauthenticated peer from learning which apps exist).
 */
enum route_res route_resolve(const struct conf *c, const char *user, const char *database, struct route *out,
			     char *err, size_t errlen);

/* Fills out for (app, timeline) directly: for `pglane env` and friends. */
bool route_for(const struct conf_app *app, const struct timeline *tl, struct route *out, char *err, size_t errlen);

#endif
