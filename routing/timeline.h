/*
 * timeline: app ids, timelines, the database name each timeline gets, and the identity scheme that
 * carries (app, timeline) in a PostgreSQL user name.
 *
 *   production  -> database "{app}-production", user "{app}-production"
 *   preview     -> database "{app}-preview",    user "{app}-preview"
 *   branch B    -> database "{app}--{B}",       user "{app}--{B}"   (B verbatim: '/', '.', '_', '@', capitals)
 *
 * App ids are slugs (lowercase letters, digits, single hyphens, no leading/trailing hyphen, no "--"), so
 * the first "--" of a user name always ends the app id and no two apps' databases can collide.  A database
 * name longer than 63 bytes is cut (never inside a UTF-8 sequence) and ends in "~" plus 8 hex digits of the
 * SHA-256 of the full branch name; Git forbids "~" in branch names, so a cut name never equals a real one.
 * Pure functions over bytes: no sockets, no logging.
 */
#ifndef PGLANE_TIMELINE_H
#define PGLANE_TIMELINE_H

#include <stdbool.h>
#include <stddef.h>

#define PG_NAMEDATALEN 64     /* PostgreSQL identifiers hold at most 63 bytes */
#define TIMELINE_BRANCH_MAX 255 /* bytes of a branch name */
#define APP_ID_MAX 40         /* bytes of an app id */

enum timeline_kind { TIMELINE_PRODUCTION, TIMELINE_PREVIEW, TIMELINE_BRANCH };
const char *timeline_kind_str(enum timeline_kind k); /* "production", "preview", "branch" */

struct timeline {
	enum timeline_kind kind;
	char branch[TIMELINE_BRANCH_MAX + 1]; /* only for TIMELINE_BRANCH */
};

struct identity {
	char app[APP_ID_MAX + 1];
	struct timeline tl;
};

/* True when id is a valid app slug (see above); on false, err says why. */
bool app_id_valid(const char *id, char *err, size_t errlen);

/*
 * True when name is acceptable as a Git branch name here: 1..255 bytes, no control characters, none of
 * " ~^:?*[\\", no "..", no "@{", not starting or ending with '/' or '.', not ending in ".lock".
 */
bool branch_name_valid(const char *name, char *err, size_t errlen);

/* Fills tl for --production / --preview / --branch NAME; a branch equal to production_branch (may be NULL)
 * becomes TIMELINE_PRODUCTION.  Returns false (err set) when the branch name is invalid. */
bool timeline_set(struct timeline *tl, enum timeline_kind kind, const char *branch, const char *production_branch,
		  char *err, size_t errlen);

/* The timeline's database name for app into out (at least PG_NAMEDATALEN bytes). */
void timeline_dbname(const char *app, const struct timeline *tl, char *out, size_t outlen);

/* The user name that carries (app, timeline) into out; returns false if it does not fit. */
bool identity_format_user(const struct identity *id, char *out, size_t outlen);

/*
 * Parses a user name into an identity.  Returns false (err names what is wrong) for anything that is not
 * "{app}-production", "{app}-preview" or "{app}--{branch}" with a valid app id and branch name.
 * Does not apply production_branch: callers do (timeline_set) once they know the app.
 */
bool identity_parse_user(const char *user, struct identity *out, char *err, size_t errlen);

/* The string the timeline's credential is derived from: "production", "preview" or "branch:NAME". */
void timeline_key(const struct timeline *tl, char *out, size_t outlen);

/* A human label: "production", "preview" or "branch feature/x". */
void timeline_label(const struct timeline *tl, char *out, size_t outlen);

#endif
