/*
 * Unit tests for routing/provision's pure parts: which database names belong to an app, mapping a name
 * back to its timeline (cut names and production_branch refused), and the words for libpq's connection
 * failures, from messages as libpq 15 and PostgreSQL 15 write them (verbose, with the SQLSTATE).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "routing/provision.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static void test_name_is_app(void **state)
{
	static const struct {
		const char *app, *db;
		bool ok;
	} cases[] = {
	    {"demo", "demo-production", true},
	    {"demo", "demo-preview", true},
	    {"demo", "demo--feature/x", true},
	    {"demo", "demo--a~1234abcd", true},
	    {"demo", "demo-production2", false},
	    {"demo", "demo-previewx", false},
	    {"demo", "demo-", false},
	    {"demo", "demo", false},
	    {"demo", "demox-production", false},
	    {"demo", "demo-x-production", false}, /* app "demo-x" */
	    {"demo-x", "demo-x--b", true},
	    {"demo-x", "demo--x-production", false},
	    {"demo", "postgres", false},
	};

	for (size_t i = 0; i < N(cases); i++)
		if (provision_name_is_app(cases[i].app, cases[i].db) != cases[i].ok)
			fail_msg("provision_name_is_app(\"%s\", \"%s\") != %d", cases[i].app, cases[i].db,
			         cases[i].ok);
}

static void test_timeline_of(void **state)
{
	static const struct {
		const char *db;
		bool ok;
		enum timeline_kind kind;
		const char *branch; /* expected branch, or a word of the reason when !ok */
	} cases[] = {
	    {"demo-production", true, TIMELINE_PRODUCTION, ""},
	    {"demo-preview", true, TIMELINE_PREVIEW, ""},
	    {"demo--feature/Login-Page", true, TIMELINE_BRANCH, "feature/Login-Page"},
	    {"demo--user@example/fix_1.2", true, TIMELINE_BRANCH, "user@example/fix_1.2"},
	    {"demo--feature/JIRA-1234-a-really-long-branch-name-t~0a1b2c3d", false, 0, "cut name"},
	    {"demo--main", false, 0, "production_branch"},
	    {"demo--a..b", false, 0, "not a pglane timeline database"},
	    {"demo--", false, 0, "not a pglane timeline database"},
	    {"other-production", false, 0, "not a database of app"},
	};
	struct conf_app app = {.id = "demo", .production_branch = "main"};
	struct timeline tl;
	char why[256];

	for (size_t i = 0; i < N(cases); i++) {
		why[0] = '\0';
		bool ok = provision_timeline_of(&app, cases[i].db, &tl, why, sizeof(why));
		if (ok != cases[i].ok)
			fail_msg("provision_timeline_of(\"%s\") = %d (%s)", cases[i].db, ok, why);
		if (ok && (tl.kind != cases[i].kind || strcmp(tl.branch, cases[i].branch) != 0))
			fail_msg("\"%s\" mapped to %s \"%s\"", cases[i].db, timeline_kind_str(tl.kind),
			         tl.branch);
		if (!ok && !strstr(why, cases[i].branch))
			fail_msg("\"%s\": reason \"%s\" lacks \"%s\"", cases[i].db, why, cases[i].branch);
	}
}

static void test_classify_conn(void **state)
{
	static const struct {
		const char *pqmsg;
		enum provision_fault fault;
		const char *word; /* must appear in msg or fix */
	} cases[] = {
	    {"connection to server at \"127.0.0.1\", port 5999 failed: Connection refused\n\tIs the server "
	     "running on that host and accepting TCP/IP connections?\n",
	     PROVISION_FAULT_REFUSED, "db:5432 refused"},
	    {"connection to server at \"localhost\" (::1), port 5432 failed: Connection refused\n"
	     "connection to server at \"localhost\" (127.0.0.1), port 5432 failed: FATAL:  28P01: password "
	     "authentication failed for user \"postgres\"\nLOCATION:  auth_failed, auth.c:334\n",
	     PROVISION_FAULT_AUTH, "refused the password of user \"app\""},
	    {"connection to server at \"10.0.0.1\", port 5432 failed: FATAL:  28000: no pg_hba.conf entry "
	     "for host \"10.0.0.2\", user \"app\", database \"postgres\", no encryption\n",
	     PROVISION_FAULT_HBA, "sslmode=require"},
	    {"connection to server at \"db\", port 5432 failed: FATAL:  3D000: database \"maint\" does not "
	     "exist\n",
	     PROVISION_FAULT_NO_DATABASE, "maintenance database \"maint\""},
	    {"connection to server at \"db\", port 5432 failed: FATAL:  53300: sorry, too many clients "
	     "already\n",
	     PROVISION_FAULT_TOO_MANY, "max_connections"},
	    {"connection to server at \"db\", port 5432 failed: FATAL:  57P03: the database system is "
	     "starting up\n",
	     PROVISION_FAULT_STARTING, "starting up"},
	    {"connection to server at \"db\", port 5432 failed: server does not support SSL, but SSL was "
	     "required\n",
	     PROVISION_FAULT_TLS_UNSUPPORTED, "ssl = on"},
	    {"connection to server at \"db\", port 5432 failed: SSL error: certificate verify failed\n",
	     PROVISION_FAULT_TLS_UNTRUSTED, "ca_file"},
	    {"connection to server at \"db\", port 5432 failed: server certificate for \"wrong.invalid\" "
	     "does not match host name \"db\"\n",
	     PROVISION_FAULT_TLS_HOSTNAME, "host name \"db\""},
	    {"connection to server at \"db\", port 5432 failed: root certificate file \"/x/ca.crt\" does "
	     "not exist\nEither provide the file or change sslmode to disable server certificate "
	     "verification.\n",
	     PROVISION_FAULT_TLS, "/x/ca.crt"},
	    {"could not translate host name \"db\" to address: Name or service not known\n",
	     PROVISION_FAULT_HOST, "does not resolve"},
	    {"connection to server at \"db\", port 5432 failed: timeout expired\n", PROVISION_FAULT_TIMEOUT,
	     "no answer"},
	    {"connection to server at \"db\", port 5432 failed: No route to host\n", PROVISION_FAULT_NETWORK,
	     "no route"},
	    {"connection to server at \"db\", port 5432 failed: fe_sendauth: no password supplied\n",
	     PROVISION_FAULT_AUTH, "password ="},
	    {"something new\n", PROVISION_FAULT_OTHER, "something new"},
	};
	struct conf_instance inst = {
	    .name = "main", .host = "db", .port = 5432, .user = "app", .dbname = "maint"};
	struct provision_error e;

	for (size_t i = 0; i < N(cases); i++) {
		memset(&e, 0, sizeof(e));
		enum provision_fault f = provision_classify_conn(&inst, cases[i].pqmsg, &e);
		if (f != cases[i].fault || e.fault != f)
			fail_msg("case %zu: fault %s, want %s (%s)", i, provision_fault_str(f),
			         provision_fault_str(cases[i].fault), e.msg);
		if (!strstr(e.msg, cases[i].word) && !strstr(e.fix, cases[i].word))
			fail_msg("case %zu: \"%s\" not in \"%s\" / \"%s\"", i, cases[i].word, e.msg, e.fix);
		if (strchr(e.msg, '\n') || strstr(e.msg, "LOCATION"))
			fail_msg("case %zu: message not flattened: \"%s\"", i, e.msg);
	}
}

static void test_conn_params(void **state)
{
	struct conf_instance inst = {.name = "main",
	                             .host = "db",
	                             .port = 6543,
	                             .user = "u",
	                             .password = "p",
	                             .dbname = "postgres",
	                             .sslmode = SSLMODE_REQUIRE,
	                             .ca = CA_SOURCE_FILE,
	                             .ca_file = "/ca.pem"};
	struct provision_params p;
	const char *root = NULL, *timeout = NULL, *port = NULL;

	provision_conn_params(&inst, 2500, &p);
	for (int i = 0; p.keys[i]; i++) {
		if (strcmp(p.keys[i], "sslrootcert") == 0)
			root = p.vals[i];
		if (strcmp(p.keys[i], "connect_timeout") == 0)
			timeout = p.vals[i];
		if (strcmp(p.keys[i], "port") == 0)
			port = p.vals[i];
	}
	assert_null(root); /* libpq would verify the chain under require when given a root file */
	assert_string_equal(timeout, "3");
	assert_string_equal(port, "6543");

	inst.sslmode = SSLMODE_VERIFY_FULL;
	inst.ca = CA_SOURCE_SYSTEM;
	inst.ca_file = NULL;
	provision_conn_params(&inst, 0, &p);
	for (int i = 0; p.keys[i]; i++)
		if (strcmp(p.keys[i], "sslrootcert") == 0)
			root = p.vals[i];
	assert_string_equal(root, PROVISION_SYSTEM_CA_BUNDLE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_name_is_app),
	    cmocka_unit_test(test_timeline_of),
	    cmocka_unit_test(test_classify_conn),
	    cmocka_unit_test(test_conn_params),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
