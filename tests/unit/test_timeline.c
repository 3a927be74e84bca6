/*
 * Unit tests for routing/timeline: app slugs, branch names, database names (including the 63-byte cut
 * and its hash, checked against values computed independently with Python's hashlib), and user names in
 * both directions, with the user names a client could forge.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "routing/timeline.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static void test_app_id_valid(void **state)
{
	static const struct {
		const char *id;
		bool ok;
	} cases[] = {
	    {"a", true},
	    {"myapp", true},
	    {"my-app", true},
	    {"a1-b2-c3", true},
	    {"0", true},
	    {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", true},   /* 40 bytes */
	    {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false}, /* 41 bytes */
	    {"", false},
	    {"-a", false},
	    {"a-", false},
	    {"-", false},
	    {"a--b", false},
	    {"MyApp", false},
	    {"my_app", false},
	    {"my.app", false},
	    {"my app", false},
	    {"my/app", false},
	    {"caf\xc3\xa9", false},
	};
	char err[256];

	for (size_t i = 0; i < N(cases); i++) {
		err[0] = '\0';
		if (app_id_valid(cases[i].id, err, sizeof(err)) != cases[i].ok)
			fail_msg("app_id_valid(\"%s\") != %d (%s)", cases[i].id, cases[i].ok, err);
		if (!cases[i].ok)
			assert_true(strlen(err) > 0);
	}
}

static void test_branch_name_valid(void **state)
{
	static const struct {
		const char *name;
		bool ok;
	} cases[] = {
	    {"main", true},
	    {"feature/login", true},
	    {"Feature/Login-Page", true},
	    {"release-1.2.3", true},
	    {"my_branch", true},
	    {"user@fix", true},
	    {"a", true},
	    {"caf\xc3\xa9", true},
	    {"\xe6\x97\xa5\xe6\x9c\xac/\xf0\x9f\x9a\x80", true}, /* CJK and an emoji */
	    {"x-", true},
	    {"", false},
	    {"a..b", false},
	    {"a b", false},
	    {"a~1", false},
	    {"a^b", false},
	    {"a:b", false},
	    {"a?b", false},
	    {"a*b", false},
	    {"a[b", false},
	    {"a\\b", false},
	    {"a@{b", false},
	    {"/a", false},
	    {"a/", false},
	    {".a", false},
	    {"a.", false},
	    {"a.lock", false},
	    {"-a", false},
	    {"a\tb", false},
	    {"a\nb", false},
	    {"a\x7f", false},
	    {"\xc3", false},         /* truncated sequence */
	    {"\xc3\x28", false},     /* bad continuation */
	    {"\xc0\xaf", false},     /* overlong '/' */
	    {"\xed\xa0\x80", false}, /* surrogate */
	    {"\xff", false},
	};
	char err[256], name[TIMELINE_BRANCH_MAX + 2];

	for (size_t i = 0; i < N(cases); i++) {
		err[0] = '\0';
		if (branch_name_valid(cases[i].name, err, sizeof(err)) != cases[i].ok)
			fail_msg("branch_name_valid(\"%s\") != %d (%s)", cases[i].name, cases[i].ok, err);
		if (!cases[i].ok)
			assert_true(strlen(err) > 0);
	}

	memset(name, 'b', TIMELINE_BRANCH_MAX);
	name[TIMELINE_BRANCH_MAX] = '\0';
	assert_true(branch_name_valid(name, err, sizeof(err)));
	strcat(name, "b");
	assert_false(branch_name_valid(name, err, sizeof(err)));
}

static void test_timeline_dbname(void **state)
{
	static const struct {
		const char *app;
		enum timeline_kind kind;
		const char *branch;
		const char *want;
	} cases[] = {
	    {"myapp", TIMELINE_PRODUCTION, "", "myapp-production"},
	    {"myapp", TIMELINE_PREVIEW, "", "myapp-preview"},
	    {"myapp", TIMELINE_BRANCH, "feature/Login_v2.1@x", "myapp--feature/Login_v2.1@x"},
	    {"myapp", TIMELINE_BRANCH, "caf\xc3\xa9", "myapp--caf\xc3\xa9"},
	    /* exactly 63 bytes: kept */
	    {"myapp", TIMELINE_BRANCH, "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
	     "myapp--bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"},
	    /* 64 bytes: cut to 54 plus ~hash */
	    {"myapp", TIMELINE_BRANCH, "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
	     "myapp--bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb~2dd0a6d1"},
	    /* two branches sharing a 60-byte prefix: same cut, different hashes */
	    {"myapp", TIMELINE_BRANCH, "pppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp-one",
	     "myapp--ppppppppppppppppppppppppppppppppppppppppppppppp~1ef43a60"},
	    {"myapp", TIMELINE_BRANCH, "pppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp-two",
	     "myapp--ppppppppppppppppppppppppppppppppppppppppppppppp~07048d38"},
	    /* a 2-byte character at bytes 53..54: the cut backs off to 53 */
	    {"myapp", TIMELINE_BRANCH,
	     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\xc3\xa9zzzzzzzzzzzzzzzzzzzz",
	     "myapp--aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa~d37c381d"},
	    /* a 3-byte character at bytes 52..54: the cut backs off to 52 */
	    {"myapp", TIMELINE_BRANCH,
	     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\xe6\x97\xa5zzzzzzzzzzzzzzzzzzzz",
	     "myapp--aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa~cfbd3736"},
	    /* the longest app id */
	    {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", TIMELINE_BRANCH,
	     "mainmainmainmainmainmainmainmainmainmain",
	     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa--mainmainmain~7ae02e6c"},
	};
	char out[PG_NAMEDATALEN];

	for (size_t i = 0; i < N(cases); i++) {
		struct timeline tl = {.kind = cases[i].kind};

		strcpy(tl.branch, cases[i].branch);
		timeline_dbname(cases[i].app, &tl, out, sizeof(out));
		assert_string_equal(out, cases[i].want);
		assert_true(strlen(out) < PG_NAMEDATALEN);
	}
}

static void test_identity_parse_user(void **state)
{
	static const struct {
		const char *user;
		bool ok;
		const char *app;
		enum timeline_kind kind;
		const char *branch;
	} cases[] = {
	    {"myapp-production", true, "myapp", TIMELINE_PRODUCTION, ""},
	    {"myapp-preview", true, "myapp", TIMELINE_PREVIEW, ""},
	    {"my-app-production", true, "my-app", TIMELINE_PRODUCTION, ""},
	    {"myapp--main", true, "myapp", TIMELINE_BRANCH,
	     "main"}, /* production_branch is the caller's job */
	    {"myapp--feature/Login_v2.1@x", true, "myapp", TIMELINE_BRANCH, "feature/Login_v2.1@x"},
	    {"myapp--production", true, "myapp", TIMELINE_BRANCH, "production"},
	    {"a--b--c", true, "a", TIMELINE_BRANCH, "b--c"},
	    {"my--app-production", true, "my", TIMELINE_BRANCH, "app-production"},
	    {"myapp--caf\xc3\xa9", true, "myapp", TIMELINE_BRANCH, "caf\xc3\xa9"},
	    {.user = "myapp-prod"},
	    {.user = "MyApp-production"},
	    {.user = "-production"},
	    {.user = "-preview"},
	    {.user = "a---b"},
	    {.user = "myapp--"},
	    {.user = "myapp"},
	    {.user = ""},
	    {.user = "--main"},
	    {.user = "myapp--a..b"},
	    {.user = "myapp--.hidden"},
	    {.user = "myapp--a b"},
	    {.user = "myapp--\xff"},
	    {.user = "my_app-production"},
	    {.user = "myapp-production\n"},
	    {.user = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-production"}, /* 41-byte app */
	    {.user = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa--main"},
	};
	char err[512];

	for (size_t i = 0; i < N(cases); i++) {
		struct identity id;

		err[0] = '\0';
		if (identity_parse_user(cases[i].user, &id, err, sizeof(err)) != cases[i].ok)
			fail_msg("identity_parse_user(\"%s\") != %d (%s)", cases[i].user, cases[i].ok, err);
		if (!cases[i].ok) {
			assert_non_null(
			    strstr(err, "is not {app}-production, {app}-preview or {app}--{branch}"));
			continue;
		}
		assert_string_equal(id.app, cases[i].app);
		assert_int_equal(id.tl.kind, cases[i].kind);
		assert_string_equal(id.tl.branch, cases[i].branch);
	}

	/* A forged user name cannot break a log line: its control bytes come back escaped. */
	struct identity id;
	assert_false(identity_parse_user("evil\n\"-production", &id, err, sizeof(err)));
	assert_non_null(strstr(err, "\"evil\\x0a\\x22-production\" is not"));
}

/* format -> parse -> format gives back the same user name and the same identity. */
static void test_identity_round_trip(void **state)
{
	static const struct {
		const char *app;
		enum timeline_kind kind;
		const char *branch;
		const char *user;
	} cases[] = {
	    {"myapp", TIMELINE_PRODUCTION, "", "myapp-production"},
	    {"my-app", TIMELINE_PREVIEW, "", "my-app-preview"},
	    {"myapp", TIMELINE_BRANCH, "feature/x", "myapp--feature/x"},
	    {"x1", TIMELINE_BRANCH, "Fix_Bug@2.0", "x1--Fix_Bug@2.0"},
	    {"myapp", TIMELINE_BRANCH, "\xe6\x97\xa5\xe6\x9c\xac", "myapp--\xe6\x97\xa5\xe6\x9c\xac"},
	};
	char user[APP_ID_MAX + 2 + TIMELINE_BRANCH_MAX + 1], err[256];

	for (size_t i = 0; i < N(cases); i++) {
		struct identity in = {.tl.kind = cases[i].kind}, out;

		strcpy(in.app, cases[i].app);
		strcpy(in.tl.branch, cases[i].branch);
		assert_true(identity_format_user(&in, user, sizeof(user)));
		assert_string_equal(user, cases[i].user);
		assert_true(identity_parse_user(user, &out, err, sizeof(err)));
		assert_string_equal(out.app, in.app);
		assert_int_equal(out.tl.kind, in.tl.kind);
		assert_string_equal(out.tl.branch, in.tl.branch);
	}

	/* A buffer one byte short does not fit. */
	struct identity id = {.app = "myapp", .tl.kind = TIMELINE_PRODUCTION};
	assert_false(identity_format_user(&id, user, strlen("myapp-production")));
	assert_true(identity_format_user(&id, user, strlen("myapp-production") + 1));
}

static void test_timeline_set(void **state)
{
	static const struct {
		enum timeline_kind kind;
		const char *branch;
		const char *production_branch;
		bool ok;
		enum timeline_kind want_kind;
		const char *want_branch;
		const char *key;
		const char *label;
	} cases[] = {
	    {TIMELINE_PRODUCTION, NULL, NULL, true, TIMELINE_PRODUCTION, "", "production", "production"},
	    {TIMELINE_PREVIEW, NULL, "main", true, TIMELINE_PREVIEW, "", "preview", "preview"},
	    {TIMELINE_BRANCH, "main", "main", true, TIMELINE_PRODUCTION, "", "production", "production"},
	    {TIMELINE_BRANCH, "main", NULL, true, TIMELINE_BRANCH, "main", "branch:main", "branch main"},
	    {TIMELINE_BRANCH, "feature/x", "main", true, TIMELINE_BRANCH, "feature/x", "branch:feature/x",
	     "branch feature/x"},
	    {.kind = TIMELINE_BRANCH, .branch = "a..b", .production_branch = "main"},
	    {.kind = TIMELINE_BRANCH, .branch = "", .production_branch = NULL},
	};
	char err[256], key[300];

	for (size_t i = 0; i < N(cases); i++) {
		struct timeline tl;

		if (timeline_set(&tl, cases[i].kind, cases[i].branch, cases[i].production_branch, err,
		                 sizeof(err)) != cases[i].ok)
			fail_msg("case %zu: timeline_set != %d (%s)", i, cases[i].ok, err);
		if (!cases[i].ok)
			continue;
		assert_int_equal(tl.kind, cases[i].want_kind);
		assert_string_equal(tl.branch, cases[i].want_branch);
		timeline_key(&tl, key, sizeof(key));
		assert_string_equal(key, cases[i].key);
		timeline_label(&tl, key, sizeof(key));
		assert_string_equal(key, cases[i].label);
	}
	assert_string_equal(timeline_kind_str(TIMELINE_BRANCH), "branch");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_app_id_valid),        cmocka_unit_test(test_branch_name_valid),
	    cmocka_unit_test(test_timeline_dbname),     cmocka_unit_test(test_identity_parse_user),
	    cmocka_unit_test(test_identity_round_trip), cmocka_unit_test(test_timeline_set),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
