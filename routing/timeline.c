/*
 * timeline: the naming rules that tie an app and one of its timelines (production, preview, a Git
 * branch) to a PostgreSQL user name and a database name.  The user name is what a client sends, so
 * identity_parse_user() treats it as hostile input; the database name must fit PostgreSQL's 63-byte
 * identifiers, so long branch names are cut and made unique again with a hash of the full name.
 * Pure functions over bytes: no sockets, no logging.
 */
#include "routing/timeline.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <openssl/sha.h>

#define SUFFIX_PRODUCTION "-production"
#define SUFFIX_PREVIEW    "-preview"
#define DBNAME_HASH_HEX   8 /* hex digits of SHA-256(branch) after the "~" of a cut name */
#define STR(x)            #x
#define XSTR(x)           STR(x)

const char *timeline_kind_str(enum timeline_kind k)
{
	switch (k) {
	case TIMELINE_PRODUCTION:
		return "production";
	case TIMELINE_PREVIEW:
		return "preview";
	case TIMELINE_BRANCH:
		return "branch";
	}
	return "unknown";
}

/* Length of the well-formed UTF-8 sequence at s (shortest form, no surrogates, at most U+10FFFF), or 0. */
static size_t utf8_seq_len(const unsigned char *s)
{
	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xC2 && s[0] <= 0xDF)
		return (s[1] & 0xC0) == 0x80 ? 2 : 0;
	if (s[0] >= 0xE0 && s[0] <= 0xEF) {
		if ((s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80)
			return 0;
		if ((s[0] == 0xE0 && s[1] < 0xA0) || (s[0] == 0xED && s[1] >= 0xA0))
			return 0;
		return 3;
	}
	if (s[0] >= 0xF0 && s[0] <= 0xF4) {
		if ((s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
			return 0;
		if ((s[0] == 0xF0 && s[1] < 0x90) || (s[0] == 0xF4 && s[1] >= 0x90))
			return 0;
		return 4;
	}
	return 0;
}

/*
 * s for an error message: control bytes, quotes, backslashes and bytes outside valid UTF-8 become \xNN, so a
 * forged user name cannot break a log line.  Long input is cut to fit out.
 */
static const char *escape(const char *s, char *out, size_t outlen)
{
	size_t o = 0;

	for (const unsigned char *u = (const unsigned char *)s; *u && o + 5 < outlen;) {
		size_t n = utf8_seq_len(u);

		if (n == 0 || *u < 0x20 || *u == 0x7F || *u == '"' || *u == '\\') {
			o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", *u++);
			continue;
		}
		if (o + n >= outlen)
			break;
		memcpy(out + o, u, n);
		o += n;
		u += n;
	}
	out[o] = '\0';
	return out;
}

static bool is_slug_char(char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9');
}

bool app_id_valid(const char *id, char *err, size_t errlen)
{
	size_t len = strlen(id);
	const char *why = NULL;
	char q[128];

	if (len == 0)
		why = "is empty";
	else if (len > APP_ID_MAX)
		why = "is longer than " XSTR(APP_ID_MAX) " bytes";
	for (size_t i = 0; i < len && !why; i++) {
		/* A hyphen must sit between two slug characters: none leading, trailing or doubled. */
		if (!is_slug_char(id[i]) && !(id[i] == '-' && i > 0 && i + 1 < len &&
		                              is_slug_char(id[i - 1]) && is_slug_char(id[i + 1])))
			why = "must be lowercase letters and digits joined by single hyphens";
	}
	if (!why)
		return true;
	snprintf(err, errlen, "app id \"%s\" %s", escape(id, q, sizeof(q)), why);
	return false;
}

/*
 * Beyond the rules in the header, a branch may not start with '-' (Git refuses such branch names, and
 * "app---x" must not parse) and must be valid UTF-8, because it ends up in a database name.
 */
bool branch_name_valid(const char *name, char *err, size_t errlen)
{
	size_t len = strlen(name);
	const char *why = NULL;
	char what[32], q[128];

	if (len == 0)
		why = "is empty";
	else if (len > TIMELINE_BRANCH_MAX)
		why = "is longer than " XSTR(TIMELINE_BRANCH_MAX) " bytes";
	for (size_t i = 0, n; i < len && !why; i += n) {
		unsigned char ch = (unsigned char)name[i];

		n = utf8_seq_len((const unsigned char *)name + i);
		if (ch < 0x20 || ch == 0x7F)
			why = "contains a control character";
		else if (n == 0)
			why = "is not valid UTF-8";
		else if (strchr(" ~^:?*[\\", ch))
			why = (snprintf(what, sizeof(what), "contains '%c'", ch), what);
	}
	if (why)
		;
	else if (strstr(name, ".."))
		why = "contains \"..\"";
	else if (strstr(name, "@{"))
		why = "contains \"@{\"";
	else if (strchr("/.-", name[0]))
		why = (snprintf(what, sizeof(what), "starts with '%c'", name[0]), what);
	else if (strchr("/.", name[len - 1]))
		why = (snprintf(what, sizeof(what), "ends with '%c'", name[len - 1]), what);
	else if (len >= 5 && strcmp(name + len - 5, ".lock") == 0)
		why = "ends in \".lock\"";
	if (!why)
		return true;
	snprintf(err, errlen, "branch name \"%s\" %s", escape(name, q, sizeof(q)), why);
	return false;
}

bool timeline_set(struct timeline *tl, enum timeline_kind kind, const char *branch,
                  const char *production_branch, char *err, size_t errlen)
{
	if (kind != TIMELINE_BRANCH) {
		tl->kind = kind;
		tl->branch[0] = '\0';
		return true;
	}
	if (!branch_name_valid(branch, err, errlen))
		return false;
	if (production_branch && strcmp(branch, production_branch) == 0) {
		tl->kind = TIMELINE_PRODUCTION;
		tl->branch[0] = '\0';
		return true;
	}
	tl->kind = TIMELINE_BRANCH;
	snprintf(tl->branch, sizeof(tl->branch), "%s", branch);
	return true;
}

/*
 * A branch's name is "{app}--{branch}" when that fits in 63 bytes.  Otherwise it is cut to 54 bytes, one
 * step further back for each byte that would split a UTF-8 sequence, and "~" plus 8 hex digits of
 * SHA-256(branch) are appended, so two long branches sharing a prefix still get different databases.
 * The cut always falls inside the branch: an app id with "--" is at most 42 bytes.
 */
void timeline_dbname(const char *app, const struct timeline *tl, char *out, size_t outlen)
{
	char full[APP_ID_MAX + 2 + TIMELINE_BRANCH_MAX + 1];
	unsigned char md[SHA256_DIGEST_LENGTH];
	size_t cut = PG_NAMEDATALEN - 1 - 1 - DBNAME_HASH_HEX;

	if (tl->kind != TIMELINE_BRANCH) {
		snprintf(out, outlen, "%s-%s", app, timeline_kind_str(tl->kind));
		return;
	}
	int n = snprintf(full, sizeof(full), "%s--%s", app, tl->branch);
	if (n < PG_NAMEDATALEN) {
		snprintf(out, outlen, "%s", full);
		return;
	}
	while (cut > 0 && ((unsigned char)full[cut] & 0xC0) == 0x80)
		cut--;
	SHA256((const unsigned char *)tl->branch, strlen(tl->branch), md);
	snprintf(out, outlen, "%.*s~%02x%02x%02x%02x", (int)cut, full, md[0], md[1], md[2], md[3]);
}

bool identity_format_user(const struct identity *id, char *out, size_t outlen)
{
	int n;

	if (id->tl.kind == TIMELINE_BRANCH)
		n = snprintf(out, outlen, "%s--%s", id->app, id->tl.branch);
	else
		n = snprintf(out, outlen, "%s-%s", id->app, timeline_kind_str(id->tl.kind));
	return n >= 0 && (size_t)n < outlen;
}

static bool has_suffix(const char *s, size_t len, const char *suffix)
{
	size_t n = strlen(suffix);

	return len >= n && memcmp(s + len - n, suffix, n) == 0;
}

bool identity_parse_user(const char *user, struct identity *out, char *err, size_t errlen)
{
	const char *sep = strstr(user, "--");
	size_t len = strlen(user), applen;
	char why[256], q[128];

	memset(out, 0, sizeof(*out));
	if (sep) {
		applen = (size_t)(sep - user);
		out->tl.kind = TIMELINE_BRANCH;
	} else if (has_suffix(user, len, SUFFIX_PRODUCTION)) {
		applen = len - strlen(SUFFIX_PRODUCTION);
		out->tl.kind = TIMELINE_PRODUCTION;
	} else if (has_suffix(user, len, SUFFIX_PREVIEW)) {
		applen = len - strlen(SUFFIX_PREVIEW);
		out->tl.kind = TIMELINE_PREVIEW;
	} else {
		snprintf(err, errlen,
		         "user name \"%s\" is not {app}-production, {app}-preview or {app}--{branch}",
		         escape(user, q, sizeof(q)));
		return false;
	}

	if (applen > APP_ID_MAX) {
		snprintf(why, sizeof(why), "the app id is longer than %d bytes", APP_ID_MAX);
	} else {
		memcpy(out->app, user, applen);
		out->app[applen] = '\0';
		if (app_id_valid(out->app, why, sizeof(why)) &&
		    (!sep || branch_name_valid(sep + 2, why, sizeof(why)))) {
			if (sep)
				snprintf(out->tl.branch, sizeof(out->tl.branch), "%s", sep + 2);
			return true;
		}
	}
	snprintf(err, errlen,
	         "user name \"%s\" is not {app}-production, {app}-preview or {app}--{branch}: %s",
	         escape(user, q, sizeof(q)), why);
	memset(out, 0, sizeof(*out));
	return false;
}

void timeline_key(const struct timeline *tl, char *out, size_t outlen)
{
	if (tl->kind == TIMELINE_BRANCH)
		snprintf(out, outlen, "branch:%s", tl->branch);
	else
		snprintf(out, outlen, "%s", timeline_kind_str(tl->kind));
}

void timeline_label(const struct timeline *tl, char *out, size_t outlen)
{
	if (tl->kind == TIMELINE_BRANCH)
		snprintf(out, outlen, "branch %s", tl->branch);
	else
		snprintf(out, outlen, "%s", timeline_kind_str(tl->kind));
}
