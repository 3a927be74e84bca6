/*
 * certid: the "pglane:{app}/{timeline}" URI a client certificate carries, in both directions (see certid.h).
 * The URI comes from a certificate a client presented, so the parser treats it as hostile input: every byte
 * is accounted for, %00 is refused, and the decoded names pass the same checks as a user name's.
 */
#include "routing/certid.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#define SCHEME_LEN    (sizeof(IDENTITY_URI_SCHEME) - 1)
#define BRANCH_PREFIX "branch/"
#define STR(x)        #x
#define XSTR(x)       STR(x)
#define URI_FORMS     "pglane:{app}/production, pglane:{app}/preview or pglane:{app}/branch/{branch}"

static bool is_unreserved(unsigned char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       ch == '-' || ch == '.' || ch == '_' || ch == '~';
}

static int hex_value(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* uri for an error message: bytes outside printable ASCII, '"' and '\\' become \xNN; long input is cut. */
static const char *escape(const char *s, char *out, size_t outlen)
{
	size_t o = 0;

	for (const unsigned char *u = (const unsigned char *)s; *u && o + 5 < outlen; u++) {
		if (*u < 0x20 || *u >= 0x7F || *u == '"' || *u == '\\')
			o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", *u);
		else
			out[o++] = (char)*u;
	}
	out[o] = '\0';
	return out;
}

bool identity_format_uri(const struct identity *id, char *out, size_t outlen)
{
	static const char hex[] = "0123456789ABCDEF";
	int n;

	if (id->tl.kind != TIMELINE_BRANCH) {
		n = snprintf(out, outlen, IDENTITY_URI_SCHEME "%s/%s", id->app,
		             timeline_kind_str(id->tl.kind));
		return n >= 0 && (size_t)n < outlen;
	}
	n = snprintf(out, outlen, IDENTITY_URI_SCHEME "%s/" BRANCH_PREFIX, id->app);
	if (n < 0 || (size_t)n >= outlen)
		return false;
	size_t o = (size_t)n;
	for (const unsigned char *u = (const unsigned char *)id->tl.branch; *u; u++) {
		if (o + (is_unreserved(*u) ? 1 : 3) >= outlen)
			return false;
		if (is_unreserved(*u)) {
			out[o++] = (char)*u;
		} else {
			out[o++] = '%';
			out[o++] = hex[*u >> 4];
			out[o++] = hex[*u & 15];
		}
	}
	out[o] = '\0';
	return true;
}

/* Percent-decodes s into out (TIMELINE_BRANCH_MAX + 1 bytes); on failure returns a static reason. */
static const char *decode_branch(const char *s, char *out)
{
	size_t o = 0;

	for (; *s; o++) {
		if (o == TIMELINE_BRANCH_MAX)
			return "the branch name is longer than " XSTR(TIMELINE_BRANCH_MAX) " bytes";
		if (is_unreserved((unsigned char)*s)) {
			out[o] = *s++;
			continue;
		}
		if (*s != '%')
			return "the branch has a character that must be percent-encoded";
		int hi = hex_value(s[1]), lo = hi < 0 ? -1 : hex_value(s[2]);
		if (lo < 0)
			return "the branch has a '%' not followed by two hex digits";
		if (hi == 0 && lo == 0)
			return "the branch contains %00";
		out[o] = (char)(hi << 4 | lo);
		s += 3;
	}
	out[o] = '\0';
	return NULL;
}

/* The part after "{app}/" into tl; returns NULL, or why it is not a timeline. */
static const char *parse_timeline(const char *s, struct timeline *tl, char *why, size_t whylen)
{
	const char *bad;

	if (strcmp(s, "production") == 0) {
		tl->kind = TIMELINE_PRODUCTION;
	} else if (strcmp(s, "preview") == 0) {
		tl->kind = TIMELINE_PREVIEW;
	} else if (strncmp(s, BRANCH_PREFIX, strlen(BRANCH_PREFIX)) != 0) {
		return "the timeline is not production, preview or branch/{branch}";
	} else if ((bad = decode_branch(s + strlen(BRANCH_PREFIX), tl->branch))) {
		return bad;
	} else {
		tl->kind = TIMELINE_BRANCH;
		if (!branch_name_valid(tl->branch, why, whylen))
			return why;
	}
	return NULL;
}

bool identity_parse_uri(const char *uri, struct identity *out, char *err, size_t errlen)
{
	const char *app, *slash, *bad;
	char why[256], q[128];

	memset(out, 0, sizeof(*out));
	if (strncasecmp(uri, IDENTITY_URI_SCHEME, SCHEME_LEN) != 0 ||
	    !(slash = strchr(uri + SCHEME_LEN, '/'))) {
		snprintf(err, errlen, "URI \"%s\" is not " URI_FORMS, escape(uri, q, sizeof(q)));
		return false;
	}
	app = uri + SCHEME_LEN;
	size_t applen = (size_t)(slash - app);
	if (applen > APP_ID_MAX) {
		bad = "the app id is longer than " XSTR(APP_ID_MAX) " bytes";
	} else {
		memcpy(out->app, app, applen);
		bad = app_id_valid(out->app, why, sizeof(why))
		          ? parse_timeline(slash + 1, &out->tl, why, sizeof(why))
		          : why;
	}
	if (!bad)
		return true;
	snprintf(err, errlen, "URI \"%s\" is not " URI_FORMS ": %s", escape(uri, q, sizeof(q)), bad);
	memset(out, 0, sizeof(*out));
	return false;
}
