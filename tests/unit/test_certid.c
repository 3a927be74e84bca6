/*
 * Unit tests for routing/certid: the pglane: URI a client certificate carries, formatted and parsed, with
 * the percent-encoding of branch names and the URIs a forged or careless certificate could hold.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "routing/certid.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static const struct {
	const char *app;
	enum timeline_kind kind;
	const char *branch;
	const char *uri;
} formatted[] = {
    {"myapp", TIMELINE_PRODUCTION, "", "pglane:myapp/production"},
    {"my-app", TIMELINE_PREVIEW, "", "pglane:my-app/preview"},
    {"a", TIMELINE_BRANCH, "main", "pglane:a/branch/main"},
    {"a", TIMELINE_BRANCH, "feature/login", "pglane:a/branch/feature%2Flogin"},
    {"a", TIMELINE_BRANCH, "Release-1.2_x", "pglane:a/branch/Release-1.2_x"},
    {"a", TIMELINE_BRANCH, "user@fix", "pglane:a/branch/user%40fix"},
    {"a", TIMELINE_BRANCH, "a+b%c", "pglane:a/branch/a%2Bb%25c"},
    {"a", TIMELINE_BRANCH, "x-", "pglane:a/branch/x-"},
    {"a", TIMELINE_BRANCH, "caf\xc3\xa9", "pglane:a/branch/caf%C3%A9"},
    {"a", TIMELINE_BRANCH, "\xf0\x9f\x9a\x80/a", "pglane:a/branch/%F0%9F%9A%80%2Fa"},
};

static struct identity make_id(const char *app, enum timeline_kind kind, const char *branch)
{
	struct identity id;

	memset(&id, 0, sizeof(id));
	strcpy(id.app, app);
	id.tl.kind = kind;
	strcpy(id.tl.branch, branch);
	return id;
}

static void test_format(void **state)
{
	char uri[IDENTITY_URI_MAX];

	for (size_t i = 0; i < N(formatted); i++) {
		struct identity id = make_id(formatted[i].app, formatted[i].kind, formatted[i].branch);
		assert_true(identity_format_uri(&id, uri, sizeof(uri)));
		assert_string_equal(uri, formatted[i].uri);
	}
}

static void test_format_short_buffer(void **state)
{
	char uri[IDENTITY_URI_MAX];
	struct identity prod = make_id("myapp", TIMELINE_PRODUCTION, "");
	struct identity br = make_id("a", TIMELINE_BRANCH, "b/c"); /* "pglane:a/branch/b%2Fc" */

	assert_false(identity_format_uri(&prod, uri, strlen("pglane:myapp/production")));
	assert_true(identity_format_uri(&prod, uri, strlen("pglane:myapp/production") + 1));
	assert_false(identity_format_uri(&br, uri, strlen("pglane:a/branch/b%2F"))); /* cut inside the %XX */
	assert_false(identity_format_uri(&br, uri, strlen("pglane:a/branch/b%2Fc")));
	assert_true(identity_format_uri(&br, uri, strlen("pglane:a/branch/b%2Fc") + 1));
	assert_false(identity_format_uri(&br, uri, strlen("pglane:a/")));

	/* The longest identity: a 40-byte app and 255 bytes that all need encoding. */
	struct identity big = make_id("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", TIMELINE_BRANCH, "");
	memset(big.tl.branch, '@', TIMELINE_BRANCH_MAX);
	assert_true(identity_format_uri(&big, uri, sizeof(uri)));
	assert_int_equal(strlen(uri), IDENTITY_URI_MAX - 1);
}

static void test_parse(void **state)
{
	static const struct {
		const char *uri;
		const char *app; /* NULL: refused */
		enum timeline_kind kind;
		const char *what; /* the branch, or part of the error when refused */
	} cases[] = {
	    {"pglane:myapp/production", "myapp", TIMELINE_PRODUCTION, ""},
	    {"pglane:my-app/preview", "my-app", TIMELINE_PREVIEW, ""},
	    {"PGLANE:myapp/production", "myapp", TIMELINE_PRODUCTION, ""}, /* schemes ignore case */
	    {"pglane:a/branch/feature%2Flogin", "a", TIMELINE_BRANCH, "feature/login"},
	    {"pglane:a/branch/feature%2flogin", "a", TIMELINE_BRANCH, "feature/login"},
	    {"pglane:a/branch/%41", "a", TIMELINE_BRANCH, "A"},
	    {"pglane:a/branch/caf%C3%A9", "a", TIMELINE_BRANCH, "caf\xc3\xa9"},
	    {"pglane:a/branch/main", "a", TIMELINE_BRANCH, "main"},
	    {"", NULL, 0, "is not pglane:"},
	    {"pglane:", NULL, 0, "is not pglane:"},
	    {"pglane:myapp", NULL, 0, "is not pglane:"},
	    {"http://myapp/production", NULL, 0, "is not pglane:"},
	    {"pglan:myapp/production", NULL, 0, "is not pglane:"},
	    {"pglane:/production", NULL, 0, "is empty"},
	    {"pglane://myapp/production", NULL, 0, "is empty"},
	    {"pglane:MyApp/production", NULL, 0, "lowercase"},
	    {"pglane:my--app/production", NULL, 0, "lowercase"},
	    {"pglane:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/production", NULL, 0, "longer than 40"},
	    {"pglane:myapp/", NULL, 0, "timeline"},
	    {"pglane:myapp/Production", NULL, 0, "timeline"},
	    {"pglane:myapp/production/", NULL, 0, "timeline"},
	    {"pglane:myapp/production?x=1", NULL, 0, "timeline"},
	    {"pglane:myapp/staging", NULL, 0, "timeline"},
	    {"pglane:myapp/branch", NULL, 0, "timeline"},
	    {"pglane:myapp/branch/", NULL, 0, "is empty"},
	    {"pglane:a/branch/feature/login", NULL, 0, "percent-encoded"},
	    {"pglane:a/branch/a b", NULL, 0, "percent-encoded"},
	    {"pglane:a/branch/a#b", NULL, 0, "percent-encoded"},
	    {"pglane:a/branch/a%2", NULL, 0, "two hex digits"},
	    {"pglane:a/branch/a%", NULL, 0, "two hex digits"},
	    {"pglane:a/branch/a%zz", NULL, 0, "two hex digits"},
	    {"pglane:a/branch/a%00b", NULL, 0, "%00"},
	    {"pglane:a/branch/%2Fa", NULL, 0, "starts with '/'"},
	    {"pglane:a/branch/a%20b", NULL, 0, "contains ' '"},
	    {"pglane:a/branch/a..b", NULL, 0, "\"..\""},
	    {"pglane:a/branch/a%0Ab", NULL, 0, "control character"},
	    {"pglane:a/branch/%FF", NULL, 0, "UTF-8"},
	    {"pglane:a/branch/~1", NULL, 0, "'~'"},
	    {"pglane:a\n/production", NULL, 0, "\\x0a"}, /* escaped in the message */
	};
	struct identity id;
	char err[512];

	for (size_t i = 0; i < N(cases); i++) {
		err[0] = '\0';
		bool ok = identity_parse_uri(cases[i].uri, &id, err, sizeof(err));
		if (ok != (cases[i].app != NULL))
			fail_msg("identity_parse_uri(\"%s\") = %d (%s)", cases[i].uri, ok, err);
		if (ok) {
			assert_string_equal(id.app, cases[i].app);
			assert_int_equal(id.tl.kind, cases[i].kind);
			assert_string_equal(id.tl.branch, cases[i].what);
		} else {
			if (!strstr(err, cases[i].what))
				fail_msg("identity_parse_uri(\"%s\"): \"%s\" lacks \"%s\"", cases[i].uri, err,
				         cases[i].what);
			assert_string_equal(id.app, "");
			assert_null(strchr(err, '\n'));
		}
	}
}

static void test_parse_lengths(void **state)
{
	char uri[IDENTITY_URI_MAX + 8], err[512];
	struct identity id;

	/* 255 encoded bytes are a branch; 256 are not. */
	strcpy(uri, "pglane:a/branch/");
	for (int i = 0; i < TIMELINE_BRANCH_MAX; i++)
		strcat(uri, "%40");
	assert_true(identity_parse_uri(uri, &id, err, sizeof(err)));
	assert_int_equal(strlen(id.tl.branch), TIMELINE_BRANCH_MAX);
	strcat(uri, "b");
	assert_false(identity_parse_uri(uri, &id, err, sizeof(err)));
	assert_non_null(strstr(err, "longer than 255"));
}

static void test_round_trip(void **state)
{
	char uri[IDENTITY_URI_MAX], err[512];
	struct identity out;

	for (size_t i = 0; i < N(formatted); i++) {
		struct identity id = make_id(formatted[i].app, formatted[i].kind, formatted[i].branch);
		assert_true(identity_format_uri(&id, uri, sizeof(uri)));
		if (!identity_parse_uri(uri, &out, err, sizeof(err)))
			fail_msg("%s: %s", uri, err);
		assert_memory_equal(&out, &id, sizeof(id));
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_format),     cmocka_unit_test(test_format_short_buffer),
	    cmocka_unit_test(test_parse),      cmocka_unit_test(test_parse_lengths),
	    cmocka_unit_test(test_round_trip),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
