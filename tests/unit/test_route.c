/*
 * Unit tests for routing/route: which database names a user may ask for.  Its own timeline's database, its
 * user name (what libpq and node's pg send when none is set), or a percent-encoded spelling of either (node's
 * pg sends "feature%2Fx" for a branch "feature/x", decodeURI keeping "%2F"); nothing else, whatever the
 * encoding tries.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "conf/conf.h"
#include "routing/route.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static void test_database_allowed(void **state)
{
	static const struct {
		const char *user, *database;
		enum route_res want;
	} cases[] = {
	    {"demo-production", NULL, ROUTE_OK},
	    {"demo-production", "", ROUTE_OK},
	    {"demo-production", "demo-production", ROUTE_OK},
	    {"demo-preview", "demo-preview", ROUTE_OK},
	    {"demo-preview", "demo-production", ROUTE_DB_NOT_ALLOWED}, /* another timeline's */
	    {"demo--feature/x", "demo--feature/x", ROUTE_OK},
	    {"demo--feature/x", "demo--feature%2Fx", ROUTE_OK},       /* node's pg, DATABASE_URL */
	    {"demo--feature/x", "demo--feature%2fx", ROUTE_OK},       /* lower-case hex */
	    {"demo--feature/x", "%64emo--feature%2Fx", ROUTE_OK},     /* any byte may be encoded */
	    {"demo--feature/x", "demo--feature%2", ROUTE_DB_NOT_ALLOWED},   /* cut %XX */
	    {"demo--feature/x", "demo--feature%2G", ROUTE_DB_NOT_ALLOWED},  /* not hex */
	    {"demo--feature/x", "demo--feature% 2F", ROUTE_DB_NOT_ALLOWED}, /* a blank inside %XX */
	    {"demo--feature/x", "demo--feature%+2F", ROUTE_DB_NOT_ALLOWED}, /* a sign inside %XX */
	    {"demo--feature/x", "demo--feature%252Fx", ROUTE_DB_NOT_ALLOWED}, /* decoded once, not twice */
	    {"demo--feature/x", "demo--feature%00x", ROUTE_DB_NOT_ALLOWED}, /* a NUL */
	    {"demo--feature/x", "demo-production", ROUTE_DB_NOT_ALLOWED},
	    {"demo--feature/x", "demo-%70roduction", ROUTE_DB_NOT_ALLOWED}, /* production, encoded */
	    {"demo--feature/x", "postgres", ROUTE_DB_NOT_ALLOWED},
	    {"demo--feature/x", "template1", ROUTE_DB_NOT_ALLOWED},
	};
	struct conf_instance inst = {.name = "main", .host = "127.0.0.1", .port = 5432};
	struct conf_app app = {.id = "demo", .instance_name = "main", .instance = &inst, .secret = "unit-secret"};
	struct conf conf = {.instances = &inst, .ninstances = 1, .apps = &app, .napps = 1};

	for (size_t i = 0; i < N(cases); i++) {
		struct route r;
		char err[256];
		enum route_res got = route_resolve(&conf, cases[i].user, cases[i].database, &r, err, sizeof(err));
		if (got != cases[i].want)
			fail_msg("case %zu: user \"%s\", database \"%s\": %s, want %s (%s)", i, cases[i].user,
				 cases[i].database ? cases[i].database : "(none)", route_res_str(got),
				 route_res_str(cases[i].want), err);
		if (got == ROUTE_OK)
			assert_string_equal(r.dbname, cases[i].user); /* routed to its own database whatever it asked */
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_database_allowed),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
