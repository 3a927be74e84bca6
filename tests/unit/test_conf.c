/*
 * Unit tests for conf/: a file using every key, connection URLs (percent-decoding, query parameters, keys
 * overriding the URL), defaults, and a table of broken files, each with the "name:line:" its first error
 * must carry and a word of the message.  Files the configuration names (certificates, CA bundles) are
 * created in a temporary directory that serves as the base for relative paths.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "conf/conf.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* Two lines: a valid instance; three lines: a valid app using it. */
#define INST "[instance main]\nhost = db\n"
#define APP  "[app myapp]\ninstance = main\nsecret = s3cret\n"

static char dir[64]; /* the temporary directory: base_dir of every test */
static const char *const files[] = {"server.crt",  "server.key", "ca.crt",     "ca.key", "crl.pem",
                                    "inst-ca.pem", "client.crt", "client.key", "rds.pem"};

static char *path_in_dir(const char *name)
{
	static char buf[256];

	snprintf(buf, sizeof(buf), "%s/%s", dir, name);
	return buf;
}

static void write_file(const char *path, const char *text, mode_t mode)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	assert_int_equal(chmod(path, mode), 0);
}

static int setup(void **state)
{
	strcpy(dir, "/tmp/pglane-test-conf-XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	for (size_t i = 0; i < N(files); i++)
		write_file(path_in_dir(files[i]), "not checked here\n", 0600);
	return 0;
}

static int teardown(void **state)
{
	for (size_t i = 0; i < N(files); i++)
		unlink(path_in_dir(files[i]));
	unlink(path_in_dir("pglane.ini"));
	return rmdir(dir);
}

static struct conf *load(const char *text, char *err, size_t errlen)
{
	return conf_load_string(text, "t.ini", dir, err, errlen);
}

static void test_all_keys(void **state)
{
	static const char text[] = "; every key pglane knows\n"
	                           "[pglane]\n"
	                           "listen = 127.0.0.1:6432, [::1]:6433\n"
	                           "public_host = db.example.test\n"
	                           "public_port = 5433\n"
	                           "connect_timeout = 2.5\n"
	                           "login_timeout = 20\n"
	                           "shutdown_timeout = 0.25\n"
	                           "max_clients = 500\n"
	                           "max_packet_size = 16384\n"
	                           "workers = 4\n"
	                           "kernel_relay = auto\n"
	                           "server_idle_timeout = 0\n"
	                           "pool_size = 5\n"
	                           "tls_mode = require\n"
	                           "tls_cert = server.crt\n"
	                           "tls_key = server.key\n"
	                           "tls_min_version = TLSv1.3\n"
	                           "client_ca = ca.crt\n"
	                           "client_ca_key = ca.key\n"
	                           "client_crl = crl.pem\n"
	                           "allow_cleartext = yes\n"
	                           "admin_user = admin\n"
	                           "admin_password = adminpw\n"
	                           "http_listen = 127.0.0.1:9187\n"
	                           "log_format = json\n"
	                           "log_level = debug\n"
	                           "log_file = /var/log/pglane.log\n"
	                           "\n"
	                           "[instance main]\n"
	                           "host = db1.internal ; an inline comment\n"
	                           "port = 5433\n"
	                           "user = pglane\n"
	                           "password = inst;pw\n"
	                           "dbname = maint\n"
	                           "sslmode = verify-full\n"
	                           "ca_file = inst-ca.pem\n"
	                           "client_cert = client.crt\n"
	                           "client_key = client.key\n"
	                           "\n"
	                           "[instance sys]\n"
	                           "  host = db2.internal\n" /* indented, not a continuation */
	                           "ca = system\n"
	                           "sslmode = verify-ca\n"
	                           "\n"
	                           "[instance spare]\n"
	                           "host = db3.internal\n"
	                           "\n"
	                           "[app myapp]\n"
	                           "instance = main\n"
	                           "secret = s3cret-s3cret-s3cret\n"
	                           "production_branch = main\n"
	                           "provision = manual\n"
	                           "owner = myapp_owner\n"
	                           "template = template0\n"
	                           "migrate = npm run migrate\n"
	                           "max_clients = 50\n"
	                           "pool_mode = session\n"
	                           "\n"
	                           "[app other-app]\n"
	                           "instance = sys\n"
	                           "secret = another\n";
	char err[1024] = "";
	struct conf *c = load(text, err, sizeof(err));
	const struct conf_instance *in;
	const struct conf_app *app;

	if (!c)
		fail_msg("%s", err);
	assert_string_equal(c->path, "t.ini");
	assert_int_equal(c->nlisten, 2);
	assert_string_equal(c->listen[0].host, "127.0.0.1");
	assert_string_equal(c->listen[0].port, "6432");
	assert_string_equal(c->listen[1].host, "::1");
	assert_string_equal(c->listen[1].port, "6433");
	assert_string_equal(c->public_host, "db.example.test");
	assert_int_equal(c->public_port, 5433);
	assert_int_equal(c->connect_timeout_ms, 2500);
	assert_int_equal(c->login_timeout_ms, 20000);
	assert_int_equal(c->shutdown_timeout_ms, 250);
	assert_int_equal(c->max_clients, 500);
	assert_int_equal(c->max_packet_size, 16384);
	assert_int_equal(c->workers, 4);
	assert_int_equal(c->kernel_relay, KERNEL_RELAY_AUTO);
	assert_int_equal(c->server_idle_timeout_s, 0);
	assert_int_equal(c->pool_size, 5);
	assert_int_equal(c->pool_mode, POOL_MODE_SESSION);
	assert_int_equal(c->tls_mode, TLS_MODE_REQUIRE);
	assert_string_equal(c->tls_cert, path_in_dir("server.crt"));
	assert_string_equal(c->tls_key, path_in_dir("server.key"));
	assert_string_equal(c->tls_min_version, "TLSv1.3");
	assert_string_equal(c->client_ca, path_in_dir("ca.crt"));
	assert_string_equal(c->client_ca_key, path_in_dir("ca.key"));
	assert_string_equal(c->client_crl, path_in_dir("crl.pem"));
	assert_true(c->allow_cleartext);
	assert_string_equal(c->admin_user, "admin");
	assert_string_equal(c->admin_password, "adminpw");
	assert_string_equal(c->http_listen, "127.0.0.1:9187");
	assert_string_equal(c->log_format, "json");
	assert_string_equal(c->log_level, "debug");
	assert_string_equal(c->log_file, "/var/log/pglane.log");

	assert_int_equal(c->ninstances, 3);
	in = conf_instance_find(c, "main");
	assert_non_null(in);
	assert_int_equal(in->line, 30);
	assert_string_equal(in->host, "db1.internal");
	assert_int_equal(in->port, 5433);
	assert_string_equal(in->user, "pglane");
	assert_string_equal(in->password, "inst;pw");
	assert_string_equal(in->dbname, "maint");
	assert_int_equal(in->sslmode, SSLMODE_VERIFY_FULL);
	assert_int_equal(in->ca, CA_SOURCE_FILE);
	assert_string_equal(in->ca_file, path_in_dir("inst-ca.pem"));
	assert_string_equal(in->client_cert, path_in_dir("client.crt"));
	assert_string_equal(in->client_key, path_in_dir("client.key"));
	assert_true(in->used);
	in = conf_instance_find(c, "sys");
	assert_string_equal(in->host, "db2.internal");
	assert_int_equal(in->ca, CA_SOURCE_SYSTEM);
	assert_null(in->ca_file);
	assert_int_equal(in->sslmode, SSLMODE_VERIFY_CA);
	assert_true(in->used);
	assert_false(conf_instance_find(c, "spare")->used);
	assert_null(conf_instance_find(c, "nope"));

	assert_int_equal(c->napps, 2);
	app = conf_app_find(c, "myapp");
	assert_non_null(app);
	assert_int_equal(app->line, 49);
	assert_string_equal(app->instance_name, "main");
	assert_ptr_equal(app->instance, conf_instance_find(c, "main"));
	assert_string_equal(app->secret, "s3cret-s3cret-s3cret");
	assert_string_equal(app->production_branch, "main");
	assert_int_equal(app->provision, PROVISION_MANUAL);
	assert_string_equal(app->owner, "myapp_owner");
	assert_string_equal(app->template_db, "template0");
	assert_string_equal(app->migrate, "npm run migrate");
	assert_int_equal(app->max_clients, 50);
	assert_int_equal(app->pool_mode, POOL_MODE_SESSION);
	assert_ptr_equal(conf_app_find(c, "other-app")->instance, conf_instance_find(c, "sys"));
	assert_null(conf_app_find(c, "nope"));
	conf_free(c);
}

static void test_defaults(void **state)
{
	char err[512] = "";
	struct conf *c = load(INST APP, err, sizeof(err));
	const struct conf_instance *in;

	if (!c)
		fail_msg("%s", err);
	assert_int_equal(c->nlisten, 1);
	assert_string_equal(c->listen[0].host, "127.0.0.1");
	assert_string_equal(c->listen[0].port, "6432");
	assert_string_equal(c->public_host, "127.0.0.1");
	assert_int_equal(c->public_port, 6432);
	assert_int_equal(c->connect_timeout_ms, 10000);
	assert_int_equal(c->login_timeout_ms, 15000);
	assert_int_equal(c->shutdown_timeout_ms, 30000);
	assert_int_equal(c->max_clients, 10000);
	assert_int_equal(c->max_packet_size, 65536);
	assert_int_equal(c->workers, 0);
	assert_int_equal(c->kernel_relay, KERNEL_RELAY_OFF);
	assert_int_equal(c->server_idle_timeout_s, 60);
	assert_int_equal(c->pool_mode, POOL_MODE_SESSION);
	assert_int_equal(c->pool_size, 20);
	assert_int_equal(c->query_wait_timeout_s, 120);
	assert_int_equal(c->max_prepared_statements, 200);
	assert_int_equal(c->tls_mode, TLS_MODE_DISABLE);
	assert_string_equal(c->tls_min_version, "TLSv1.2");
	assert_false(c->allow_cleartext);
	assert_null(c->admin_user);
	assert_null(c->log_file);
	assert_string_equal(c->log_format, "text");
	assert_string_equal(c->log_level, "info");
	in = conf_instance_find(c, "main");
	assert_int_equal(in->port, 5432);
	assert_string_equal(in->user, "postgres");
	assert_null(in->password);
	assert_string_equal(in->dbname, "postgres");
	assert_int_equal(in->sslmode, SSLMODE_PREFER);
	assert_int_equal(in->ca, CA_SOURCE_NONE);
	assert_int_equal(conf_app_find(c, "myapp")->provision, PROVISION_AUTO);
	assert_null(conf_app_find(c, "myapp")->production_branch);
	conf_free(c);

	/* tls_mode defaults to allow once there is a certificate; public_* follow the first listen address.
	 */
	c = load("[pglane]\nlisten = [::1]:7000\ntls_cert = server.crt\ntls_key = server.key\n", err,
	         sizeof(err));
	if (!c)
		fail_msg("%s", err);
	assert_int_equal(c->tls_mode, TLS_MODE_ALLOW);
	assert_string_equal(c->public_host, "::1");
	assert_int_equal(c->public_port, 7000);
	conf_free(c);
}

/* An app takes [pglane]'s pool_mode unless it sets its own, wherever [pglane] stands in the file. */
static void test_pool_mode(void **state)
{
	const char *text = INST APP "[app sess]\ninstance = main\nsecret = s\npool_mode = session\n"
	                   "[pglane]\npool_mode = transaction\npool_size = 7\n";
	char err[512] = "";
	struct conf *c = load(text, err, sizeof(err));

	if (!c)
		fail_msg("%s", err);
	assert_int_equal(c->pool_mode, POOL_MODE_TRANSACTION);
	assert_int_equal(c->pool_size, 7);
	assert_int_equal(conf_app_find(c, "myapp")->pool_mode, POOL_MODE_TRANSACTION);
	assert_int_equal(conf_app_find(c, "sess")->pool_mode, POOL_MODE_SESSION);
	conf_free(c);
}

static void test_instance_url(void **state)
{
	static const struct {
		const char *body; /* the lines of [instance main] */
		const char *host;
		int port;
		const char *user, *password, *dbname;
		enum sslmode sslmode;
		enum ca_source ca;
		const char *ca_file; /* name inside dir */
	} cases[] = {
	    {"url = postgres://admin:p%40ss%3Aw%2Fd@db.example.com:6543/maint"
	     "?sslmode=verify-full&sslrootcert=inst-ca.pem\n",
	     "db.example.com", 6543, "admin", "p@ss:w/d", "maint", SSLMODE_VERIFY_FULL, CA_SOURCE_FILE,
	     "inst-ca.pem"},
	    {"url = postgresql://db.example.com\n", "db.example.com", 5432, "postgres", NULL, "postgres",
	     SSLMODE_PREFER, CA_SOURCE_NONE, NULL},
	    {"url = host=h port=7000 user=u password='a b' dbname=d sslmode=require\n", "h", 7000, "u", "a b",
	     "d", SSLMODE_REQUIRE, CA_SOURCE_NONE, NULL},
	    {"url = postgres://[::1]:5433/db\n", "::1", 5433, "postgres", NULL, "db", SSLMODE_PREFER,
	     CA_SOURCE_NONE, NULL},
	    /* keys override the url, before it or after it */
	    {"port = 6000\nurl = postgres://u:pw@h:5555/db?sslmode=require\nuser = other\nsslmode = "
	     "disable\n",
	     "h", 6000, "other", "pw", "db", SSLMODE_DISABLE, CA_SOURCE_NONE, NULL},
	    {"password = mine\nhost = real\nurl = postgres://u:pw@h/db\n", "real", 5432, "u", "mine", "db",
	     SSLMODE_PREFER, CA_SOURCE_NONE, NULL},
	    /* libpq's sslrootcert=system, and ca overriding the url's sslrootcert */
	    {"url = postgres://h/db?sslmode=verify-full&sslrootcert=system\n", "h", 5432, "postgres", NULL,
	     "db", SSLMODE_VERIFY_FULL, CA_SOURCE_SYSTEM, NULL},
	    {"url = postgres://h/db?sslmode=verify-ca&sslrootcert=inst-ca.pem\nca = system\n", "h", 5432,
	     "postgres", NULL, "db", SSLMODE_VERIFY_CA, CA_SOURCE_SYSTEM, NULL},
	    {"url = postgres://h/db?sslmode=verify-ca\nca_file = inst-ca.pem\n", "h", 5432, "postgres", NULL,
	     "db", SSLMODE_VERIFY_CA, CA_SOURCE_FILE, "inst-ca.pem"},
	};
	char text[1024], err[1024];

	for (size_t i = 0; i < N(cases); i++) {
		struct conf *c;
		const struct conf_instance *in;

		snprintf(text, sizeof(text), "[instance main]\n%s" APP, cases[i].body);
		c = load(text, err, sizeof(err));
		if (!c)
			fail_msg("case %zu: %s", i, err);
		in = conf_instance_find(c, "main");
		assert_string_equal(in->host, cases[i].host);
		assert_int_equal(in->port, cases[i].port);
		assert_string_equal(in->user, cases[i].user);
		if (cases[i].password)
			assert_string_equal(in->password, cases[i].password);
		else
			assert_null(in->password);
		assert_string_equal(in->dbname, cases[i].dbname);
		assert_int_equal(in->sslmode, cases[i].sslmode);
		assert_int_equal(in->ca, cases[i].ca);
		if (cases[i].ca_file)
			assert_string_equal(in->ca_file, path_in_dir(cases[i].ca_file));
		else
			assert_null(in->ca_file);
		conf_free(c);
	}
}

static void test_aws_rds(void **state)
{
	char err[1024];
	struct conf *c;

	setenv("PGLANE_AWS_RDS_BUNDLE", path_in_dir("rds.pem"), 1);
	c = load("[instance main]\nhost = x.rds.amazonaws.com\nsslmode = verify-full\nca = aws-rds\n" APP,
	         err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	assert_int_equal(c->instances[0].ca, CA_SOURCE_AWS_RDS);
	assert_string_equal(c->instances[0].ca_file, path_in_dir("rds.pem"));
	conf_free(c);

	setenv("PGLANE_AWS_RDS_BUNDLE", path_in_dir("missing.pem"), 1);
	assert_null(load("[instance main]\nhost = x\nca = aws-rds\n" APP, err, sizeof(err)));
	assert_true(strncmp(err, "t.ini:3: ca: ", 13) == 0);
	assert_non_null(strstr(err, "PGLANE_AWS_RDS_BUNDLE"));
	unsetenv("PGLANE_AWS_RDS_BUNDLE");
}

static void test_bad_files(void **state)
{
	static const struct {
		const char *text;
		int line;         /* of the (only) error */
		const char *word; /* in its message */
	} cases[] = {
	    {"[pglane]\nlisten = 127.0.0.1:6432\nbogus = 1\n", 3, "unknown key \"bogus\" in [pglane]"},
	    {INST "[app myapp]\ninstance = other\nsecret = s\n", 4, "instance \"other\" is not defined"},
	    {INST "[app myapp]\ninstance = main\n", 3, "no secret"},
	    {INST "[app myapp]\nsecret = s\n", 3, "no instance"},
	    {INST APP "[app myapp]\ninstance = main\nsecret = t\n", 6, "duplicate section [app myapp]"},
	    {INST INST APP, 3, "duplicate section [instance main] (first at line 1)"},
	    {INST "port = 1\nport = 2\n" APP, 4, "duplicate key \"port\" (first at line 3)"},
	    {INST "ca_file = nope.pem\n" APP, 3, "cannot read"},
	    {INST "port = 70000\n" APP, 3, "port: \"70000\" is not a whole number from 1 to 65535"},
	    {"[instance main]\nurl = postgres://db:abc/x\n" APP, 2, "url: port: \"abc\""},
	    {INST "sslmode = verify\n" APP, 3, "sslmode: \"verify\" is not disable, allow, prefer"},
	    {INST "[app My_App]\ninstance = main\nsecret = s\n", 3, "app id \"My_App\""},
	    {INST "[app a--b]\ninstance = main\nsecret = s\n", 3, "app id"},
	    {INST "sslmode = verify-full\n" APP, 3, "needs a CA"},
	    {"[instance main]\nport = 5432\n" APP, 1, "[instance main] has no host"},
	    {"[instance main]\nhost = a,b\n" APP, 2, "one host"},
	    {INST "ca = system\nca_file = inst-ca.pem\n" APP, 3, "not both"},
	    {INST "ca = corporate\n" APP, 3, "system or aws-rds"},
	    {INST "client_cert = client.crt\n" APP, 3, "client_key"},
	    {"[instance main]\nurl = postgres://db/x?application_name=y\n" APP, 2, "application_name"},
	    {"[instance main]\nurl = postgres://db:5432/x?bogus=1\n" APP, 2, "bogus"},
	    {"[instance main]\nhost =\n" APP, 2, "host has no value"},
	    {INST APP "production_branch = a..b\n", 6, "\"..\""},
	    {INST APP "provision = sometimes\n", 6, "auto or manual"},
	    {INST APP "max_clients = -1\n", 6, "from 0 to"},
	    {INST APP "owner = oooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooo\n", 6,
	     "63 bytes"},
	    {"[pglane]\ntls_cert = server.crt\n", 2, "tls_cert needs tls_key"},
	    {"[pglane]\ntls_key = server.key\n", 2, "tls_key needs tls_cert"},
	    {"[pglane]\ntls_mode = require\n", 2, "tls_mode = require needs tls_cert"},
	    {"[pglane]\ntls_mode = sometimes\n", 2, "disable, allow or require"},
	    {"[pglane]\nkernel_relay = fast\n", 2, "off, auto or on"},
	    {"[pglane]\nserver_idle_timeout = -1\n", 2, "server_idle_timeout"},
	    {"[pglane]\nserver_idle_timeout = 1e9\n", 2, "server_idle_timeout"},
	    {"[pglane]\npool_mode = statement\n", 2, "session or transaction"},
	    {INST APP "pool_mode = sometimes\n", 6, "session or transaction"},
	    {"[pglane]\npool_size = 0\n", 2, "pool_size"},
	    {"[pglane]\nquery_wait_timeout = soon\n", 2, "query_wait_timeout"},
	    {"[pglane]\nmax_prepared_statements = -1\n", 2, "max_prepared_statements"},
	    {"[pglane]\n\nmax_prepared_statements = 100001\n", 3, "max_prepared_statements"},
	    {"[pglane]\nserver_idle_timeout = 0\n" INST APP "pool_mode = transaction\n", 8,
	     "pool_mode = transaction needs server_idle_timeout above 0"},
	    {"[pglane]\nserver_idle_timeout = 0\npool_mode = transaction\n" INST APP, 3,
	     "pool_mode = transaction needs server_idle_timeout above 0"},
	    {"[pglane]\ntls_cert = missing.crt\ntls_key = server.key\n", 2, "No such file"},
	    {"[pglane]\ntls_min_version = TLSv1.1\n", 2, "TLSv1.2 or TLSv1.3"},
	    {"[pglane]\nclient_crl = crl.pem\n", 2, "needs client_ca"},
	    {"[pglane]\nlisten = ::1:6432\n", 2, "brackets"},
	    {"[pglane]\nlisten = 127.0.0.1\n", 2, "no port"},
	    {"[pglane]\nlisten = 127.0.0.1:0\n", 2, "port \"0\""},
	    {"[pglane]\nlisten = ,\n", 2, "no address"},
	    {"[pglane]\nhttp_listen = localhost\n", 2, "http_listen"},
	    {"[pglane]\nconnect_timeout = 0\n", 2, "seconds"},
	    {"[pglane]\nlogin_timeout = -1\n", 2, "seconds"},
	    {"[pglane]\nshutdown_timeout = 1.2.3\n", 2, "seconds"},
	    {"[pglane]\nshutdown_timeout = inf\n", 2, "seconds"},
	    {"[pglane]\nmax_clients = 10k\n", 2, "whole number"},
	    {"[pglane]\nallow_cleartext = maybe\n", 2, "allow_cleartext"},
	    {"[pglane]\nlog_level = verbose\n", 2, "debug, info, warning or error"},
	    {"[pglane]\n[frontend]\nx = 1\n", 2, "unknown section [frontend]"},
	    {"[pglane]\n[pglane]\n", 2, "duplicate section [pglane]"},
	    {"[instance]\nhost = x\n", 1, "needs one name"},
	    {"[app a b]\n", 1, "needs one name"},
	    {"listen = 127.0.0.1:6432\n[pglane]\n", 1, "before any section"},
	    {"[pglane]\nlisten\n", 2, "expected \"key = value\""},
	    {"[pglane]\nworkers ; = 4\n", 2, "expected \"key = value\""},
	    {"[pglane\n", 1, "']'"},
	    {"[pglane]\r\nworkers = 4\r\nbogus = 1\r\n", 3, "bogus"},
	    {"[instance main]\nhost = "
	     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
	     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
	     "x"
	     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\nhost = db\n" APP,
	     2, "longer than"},
	};
	char err[1024], prefix[32];

	for (size_t i = 0; i < N(cases); i++) {
		struct conf *c = load(cases[i].text, err, sizeof(err));

		snprintf(prefix, sizeof(prefix), "t.ini:%d: ", cases[i].line);
		if (c)
			fail_msg("case %zu loaded", i);
		if (strncmp(err, prefix, strlen(prefix)) != 0 || !strstr(err, cases[i].word) ||
		    strchr(err, '\n'))
			fail_msg("case %zu: want one error \"%s... %s ...\", got:\n%s", i, prefix,
			         cases[i].word, err);
	}
}

/* Every error is reported, in line order, whatever the order they were found in. */
static void test_many_errors(void **state)
{
	static const char text[] = "[pglane]\n"             /* 1 */
	                           "max_clients = lots\n"   /* 2 */
	                           "colour = blue\n"        /* 3 */
	                           "[instance main]\n"      /* 4 */
	                           "port = 99999\n"         /* 5 */
	                           "[app myapp]\n"          /* 6 */
	                           "instance = elsewhere\n" /* 7 */
	                           "[app BAD]\n"            /* 8 */
	                           "instance = main\n"      /* 9 */
	                           "secret = x\n";          /* 10 */
	static const char *const want[] = {
	    "t.ini:2: max_clients: \"lots\" is not a whole number",
	    "t.ini:3: unknown key \"colour\"",
	    "t.ini:4: [instance main] has no host",
	    "t.ini:5: port: \"99999\"",
	    "t.ini:6: [app myapp] has no secret",
	    "t.ini:7: instance \"elsewhere\" is not defined",
	    "t.ini:8: app id \"BAD\"",
	};
	char err[2048], small[40];
	const char *line = err;

	assert_null(load(text, err, sizeof(err)));
	for (size_t i = 0; i < N(want); i++) {
		if (!line || strncmp(line, want[i], strlen(want[i])) != 0)
			fail_msg("error %zu: want \"%s\", got:\n%s", i, want[i], err);
		line = strchr(line, '\n');
		line = line ? line + 1 : NULL;
	}
	assert_null(line);

	/* A short buffer keeps whole lines only, but never stays empty. */
	assert_null(load(text, small, sizeof(small)));
	assert_int_equal(strlen(small), sizeof(small) - 1);
	assert_true(strncmp(small, "t.ini:2: ", 9) == 0);
	assert_null(load(text, err, 120));
	assert_null(strchr(strchr(err, '\n') + 1, '\n'));
}

static void test_load_file(void **state)
{
	char err[1024], warn[1024], want[512], *ini = strdup(path_in_dir("pglane.ini"));
	struct conf *c;

	write_file(ini, "[pglane]\ntls_cert = server.crt\ntls_key = server.key\n" INST APP, 0644);
	c = conf_load(ini, err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	assert_string_equal(c->tls_cert, path_in_dir("server.crt")); /* relative to the file's directory */
	assert_int_equal(conf_warnings(c, warn, sizeof(warn)), 1);
	snprintf(want, sizeof(want), "%s: mode 0644 lets other users read the secrets in it; chmod 600 %s",
	         ini, ini);
	assert_string_equal(warn, want);
	conf_free(c);

	assert_int_equal(chmod(ini, 0600), 0);
	c = conf_load(ini, err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(conf_warnings(c, warn, sizeof(warn)), 0);
	assert_string_equal(warn, "");
	conf_free(c);

	/* Transaction pooling with pool_size below workers: the bound is workers, and check says so. */
	write_file(ini, "[pglane]\nworkers = 4\npool_size = 2\npool_mode = transaction\nserver_idle_timeout = 30\n" INST APP, 0600);
	c = conf_load(ini, err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	assert_int_equal(conf_warnings(c, warn, sizeof(warn)), 1);
	snprintf(want, sizeof(want),
	         "%s: pool_size = 2 is below workers (4): each worker opens at least one server connection per "
	         "transaction pool, so a pool may hold 4; set workers = 2 or raise pool_size",
	         ini);
	assert_string_equal(warn, want);
	conf_free(c);
	write_file(ini, "[pglane]\nworkers = 2\npool_size = 2\npool_mode = transaction\nserver_idle_timeout = 30\n" INST APP, 0600);
	c = conf_load(ini, err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(conf_warnings(c, warn, sizeof(warn)), 0);
	conf_free(c);

	/* Errors carry the path it was loaded from. */
	write_file(ini, "[pglane]\nworkers = many\n", 0600);
	assert_null(conf_load(ini, err, sizeof(err)));
	snprintf(want, sizeof(want), "%s:2: workers:", ini);
	assert_true(strncmp(err, want, strlen(want)) == 0);

	assert_null(conf_load(path_in_dir("absent.ini"), err, sizeof(err)));
	assert_non_null(strstr(err, "absent.ini: No such file or directory"));
	free(ini);
	conf_free(NULL);
}

static void test_parse_hostport(void **state)
{
	static const struct {
		const char *in;
		const char *host, *port; /* NULL: refused */
	} cases[] = {
	    {"127.0.0.1:6432", "127.0.0.1", "6432"},
	    {"localhost:1", "localhost", "1"},
	    {"[::1]:6432", "::1", "6432"},
	    {"[fe80::1%eth0]:65535", "fe80::1%eth0", "65535"},
	    {"db.example.com:5432", "db.example.com", "5432"},
	    {.in = "::1:6432"},
	    {.in = "127.0.0.1"},
	    {.in = ":6432"},
	    {.in = "[]:6432"},
	    {.in = "[::1]"},
	    {.in = "[::1]6432"},
	    {.in = "host:0"},
	    {.in = "host:65536"},
	    {.in = "host:-1"},
	    {.in = "host:08x"},
	    {.in = "host:"},
	    {.in = ""},
	};
	char err[256], *host, *port;

	for (size_t i = 0; i < N(cases); i++) {
		bool ok = conf_parse_hostport(cases[i].in, &host, &port, err, sizeof(err));

		if (ok != (cases[i].host != NULL))
			fail_msg("conf_parse_hostport(\"%s\") = %d", cases[i].in, ok);
		if (!ok)
			continue;
		assert_string_equal(host, cases[i].host);
		assert_string_equal(port, cases[i].port);
		free(host);
		free(port);
	}
}

static void test_sslmode(void **state)
{
	static const struct {
		const char *name;
		enum sslmode mode;
	} cases[] = {
	    {"disable", SSLMODE_DISABLE},     {"allow", SSLMODE_ALLOW},
	    {"prefer", SSLMODE_PREFER},       {"require", SSLMODE_REQUIRE},
	    {"verify-ca", SSLMODE_VERIFY_CA}, {"verify-full", SSLMODE_VERIFY_FULL},
	};
	enum sslmode m;

	for (size_t i = 0; i < N(cases); i++) {
		assert_true(sslmode_parse(cases[i].name, &m));
		assert_int_equal(m, cases[i].mode);
		assert_string_equal(sslmode_str(m), cases[i].name);
	}
	assert_false(sslmode_parse("VERIFY-FULL", &m));
	assert_false(sslmode_parse("", &m));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_all_keys),     cmocka_unit_test(test_defaults),
	    cmocka_unit_test(test_instance_url), cmocka_unit_test(test_aws_rds),
	    cmocka_unit_test(test_bad_files),    cmocka_unit_test(test_many_errors),
	    cmocka_unit_test(test_load_file),    cmocka_unit_test(test_parse_hostport),
	    cmocka_unit_test(test_sslmode),      cmocka_unit_test(test_pool_mode),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
