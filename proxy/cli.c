/*
 * cli: the subcommands that read the ini file and do one thing: check, env, exec.
 * Exit status: 0 done, 1 the file or the work failed (the message says which), 2 a usage error.
 */
#include "proxy/proxy.h"
#include "proxy/cli.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>


int cli_usage_error(const char *cmd, const char *msg, const char *arg)
{
	fprintf(stderr, "pglane %s: %s%s%s%s\n", cmd, msg, arg ? " \"" : "", arg ? arg : "", arg ? "\"" : "");
	fprintf(stderr, "run `pglane --help` for usage\n");
	return 2;
}

/* Where the value of an option that takes one goes (--format, --out, --url, --cert), or NULL. */
static const char **cli_valued_option(struct cli_args *a, const char *opt)
{
	const struct {
		const char *name;
		const char **dst;
	} opts[] = {{"--format", &a->format}, {"--out", &a->out_dir}, {"--url", &a->url}, {"--cert", &a->cert_dir}};

	for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++)
		if (strcmp(opt, opts[i].name) == 0)
			return opts[i].dst;
	return NULL;
}

int cli_parse(const char *cmd, int argc, char **argv, struct cli_args *a)
{
	memset(a, 0, sizeof(*a));
	a->conf_path = CONF_DEFAULT_PATH;
	for (int i = 1; i < argc; i++) {
		const char *s = argv[i];
		if (strcmp(s, "--") == 0) {
			a->rest = argv + i + 1;
			a->nrest = argc - i - 1;
			break;
		}
		bool has_value = i + 1 < argc;
		if (strcmp(s, "-c") == 0 || strcmp(s, "--config") == 0) {
			if (!has_value)
				return cli_usage_error(cmd, "missing file after", s);
			a->conf_path = argv[++i];
		} else if (strcmp(s, "--production") == 0 || strcmp(s, "--preview") == 0 || strcmp(s, "--branch") == 0) {
			if (a->have_timeline)
				return cli_usage_error(cmd, "more than one timeline given at", s);
			a->have_timeline = true;
			if (strcmp(s, "--production") == 0) {
				a->kind = TIMELINE_PRODUCTION;
			} else if (strcmp(s, "--preview") == 0) {
				a->kind = TIMELINE_PREVIEW;
			} else {
				if (!has_value)
					return cli_usage_error(cmd, "missing branch name after", s);
				a->kind = TIMELINE_BRANCH;
				a->branch = argv[++i];
			}
		} else if (cli_valued_option(a, s)) {
			if (!has_value)
				return cli_usage_error(cmd, "missing value after", s);
			*cli_valued_option(a, s) = argv[++i];
		} else if (strcmp(s, "--json") == 0) {
			a->json = true;
		} else if (strcmp(s, "--all") == 0) {
			a->all = true;
		} else if (strcmp(s, "--retry") == 0) {
			a->retry = true;
		} else if (s[0] == '-') {
			return cli_usage_error(cmd, "unknown option", s);
		} else if (!a->app) {
			a->app = s;
		} else if (!a->arg2) {
			a->arg2 = s;
		} else {
			return cli_usage_error(cmd, "unexpected argument", s);
		}
	}
	return 0;
}

struct conf *cli_load(const char *cmd, const char *path)
{
	static char err[16384];
	struct conf *c = conf_load(path, err, sizeof(err));

	if (!c) {
		fprintf(stderr, "%s\n", err);
		fprintf(stderr, "pglane %s: %s is not valid\n", cmd, path);
	}
	return c;
}

bool cli_route(const char *cmd, const struct conf *c, const struct cli_args *a, struct route *r)
{
	char err[256];
	struct timeline tl;

	if (!a->app || !a->have_timeline) {
		fprintf(stderr, "pglane %s: give an app and --production, --preview or --branch NAME\n", cmd);
		return false;
	}
	const struct conf_app *app = conf_app_find(c, a->app);
	if (!app) {
		fprintf(stderr, "pglane %s: no app \"%s\" in %s\n", cmd, a->app, c->path);
		return false;
	}
	if (!timeline_set(&tl, a->kind, a->branch, app->production_branch, err, sizeof(err)) ||
	    !route_for(app, &tl, r, err, sizeof(err))) {
		fprintf(stderr, "pglane %s: %s\n", cmd, err);
		return false;
	}
	return true;
}

static int cmd_check(int argc, char **argv)
{
	static char err[16384];
	struct cli_args a;
	int rc = cli_parse("check", argc, argv, &a);

	if (rc)
		return rc;
	struct conf *c = cli_load("check", a.conf_path);
	if (!c)
		return 1;
	if (conf_warnings(c, err, sizeof(err)) > 0)
		fprintf(stderr, "%s\n", err);
	struct snapshot *s = snapshot_new(c, err, sizeof(err));
	if (!s) {
		fprintf(stderr, "%s: %s\n", a.conf_path, err);
		conf_free(c);
		return 1;
	}
	printf("%s: ok (%zu instances, %zu apps)\n", a.conf_path, c->ninstances, c->napps);
	snapshot_unref(s);
	return 0;
}

/* ---------------------------------------------------------------- env and exec */

static void url_encode(const char *s, char *out, size_t outlen)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;

	for (; *s && o + 4 < outlen; s++) {
		unsigned char ch = (unsigned char)*s;
		if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
		    ch == '.' || ch == '_' || ch == '~') {
			out[o++] = (char)ch;
		} else {
			out[o++] = '%';
			out[o++] = hex[ch >> 4];
			out[o++] = hex[ch & 15];
		}
	}
	out[o] = '\0';
}

void cli_env_build(const struct conf *c, const struct route *r, struct env_vars *e)
{
	static const char *const names[ENV_NVARS] = {"PGHOST",     "PGPORT",    "PGDATABASE",  "PGUSER",
						     "PGPASSWORD", "PGSSLMODE", "DATABASE_URL"};
	char user[512], euser[1536], edb[256];
	struct identity id = r->id;
	const char *sslmode = c->tls_mode == TLS_MODE_REQUIRE || (c->tls_cert && c->tls_mode != TLS_MODE_DISABLE)
				      ? "require"
				      : "disable";

	memcpy(e->names, names, sizeof(names));
	identity_format_user(&id, user, sizeof(user));
	snprintf(e->values[0], sizeof(e->values[0]), "%s", c->public_host);
	snprintf(e->values[1], sizeof(e->values[1]), "%d", c->public_port);
	snprintf(e->values[2], sizeof(e->values[2]), "%s", r->dbname);
	snprintf(e->values[3], sizeof(e->values[3]), "%s", user);
	snprintf(e->values[4], sizeof(e->values[4]), "%s", r->token);
	snprintf(e->values[5], sizeof(e->values[5]), "%s", sslmode);
	url_encode(user, euser, sizeof(euser));
	url_encode(r->dbname, edb, sizeof(edb));
	bool v6 = strchr(c->public_host, ':') != NULL;
	snprintf(e->values[6], sizeof(e->values[6]), "postgresql://%s:%s@%s%s%s:%d/%s?sslmode=%s", euser, r->token,
		 v6 ? "[" : "", c->public_host, v6 ? "]" : "", c->public_port, edb, sslmode);
}

#define DOTENV_SAFE "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.:/@%?=&+,~"

static void print_shell_quoted(const char *s)
{
	putchar('\'');
	for (; *s; s++) {
		if (*s == '\'')
			fputs("'\\''", stdout);
		else
			putchar(*s);
	}
	putchar('\'');
}

void cli_print_json_string(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			printf("\\%c", ch);
		else if (ch < 0x20)
			printf("\\u%04x", ch);
		else
			putchar(ch);
	}
	putchar('"');
}

/* What `env --cert DIR` prints instead of PGPASSWORD: absolute paths, and a URL that carries them. */
struct env_cert {
	char file[3][PATH_MAX];            /* DIR/client.crt, DIR/client.key, DIR/ca.crt */
	char url[2048 + 3 * 3 * PATH_MAX]; /* DATABASE_URL */
	const char *names[ENV_NVARS + 2], *values[ENV_NVARS + 2];
	int n;
};

/*
 * The variables of e with DIR's client certificate (from `pglane certs issue --out DIR`) in place of the
 * password: PGSSLCERT, PGSSLKEY, and PGSSLROOTCERT with PGSSLMODE=verify-full when DIR/ca.crt exists (else
 * require).  Returns false after printing why when the directory or a client file cannot be read.
 */
static bool env_cert_build(const char *dir, const struct env_vars *e, struct env_cert *ec)
{
	static const char *const base[3] = {"client.crt", "client.key", "ca.crt"};
	static const char *const var[3] = {"PGSSLCERT", "PGSSLKEY", "PGSSLROOTCERT"};
	static const char *const param[3] = {"sslcert", "sslkey", "sslrootcert"};
	char abs[PATH_MAX], enc[3 * PATH_MAX], euser[1536], edb[256];

	if (!realpath(dir, abs)) {
		fprintf(stderr, "pglane env: --cert %s: %s\n", dir, strerror(errno));
		return false;
	}
	for (int i = 0; i < 3; i++) {
		if ((size_t)snprintf(ec->file[i], PATH_MAX, "%s/%s", abs, base[i]) >= PATH_MAX) {
			fprintf(stderr, "pglane env: --cert %s: name too long\n", abs);
			return false;
		}
		if (i < 2 && access(ec->file[i], R_OK) != 0) {
			fprintf(stderr, "pglane env: cannot read %s: %s (`pglane certs issue ... --out DIR` writes it)\n",
				ec->file[i], strerror(errno));
			return false;
		}
	}
	bool root = access(ec->file[2], R_OK) == 0;
	const char *sslmode = root ? "verify-full" : "require";
	url_encode(e->values[3], euser, sizeof(euser));
	url_encode(e->values[2], edb, sizeof(edb));
	bool v6 = strchr(e->values[0], ':') != NULL;
	int len = snprintf(ec->url, sizeof(ec->url), "postgresql://%s@%s%s%s:%s/%s?sslmode=%s", euser, v6 ? "[" : "",
			   e->values[0], v6 ? "]" : "", e->values[1], edb, sslmode);
	ec->n = 0;
	for (int i = 0; i < 4; i++) { /* PGHOST PGPORT PGDATABASE PGUSER */
		ec->names[ec->n] = e->names[i];
		ec->values[ec->n++] = e->values[i];
	}
	for (int i = 0; i < (root ? 3 : 2); i++) {
		ec->names[ec->n] = var[i];
		ec->values[ec->n++] = ec->file[i];
		url_encode(ec->file[i], enc, sizeof(enc));
		if (len >= 0 && (size_t)len < sizeof(ec->url))
			len += snprintf(ec->url + len, sizeof(ec->url) - (size_t)len, "&%s=%s", param[i], enc);
	}
	if (len < 0 || (size_t)len >= sizeof(ec->url)) {
		fprintf(stderr, "pglane env: DATABASE_URL would be too long\n");
		return false;
	}
	ec->names[ec->n] = e->names[5];
	ec->values[ec->n++] = sslmode;
	ec->names[ec->n] = e->names[6];
	ec->values[ec->n++] = ec->url;
	return true;
}

/* The variables for route r: with cert_dir, the certificate ones instead of the password.  Prints why not
 * and returns false when cert_dir is unusable. */
static bool env_collect(const struct conf *c, const struct route *r, const char *cert_dir, struct env_vars *e,
			struct env_cert *ec)
{
	cli_env_build(c, r, e);
	ec->n = ENV_NVARS;
	for (int i = 0; i < ENV_NVARS; i++) {
		ec->names[i] = e->names[i];
		ec->values[i] = e->values[i];
	}
	return !cert_dir || env_cert_build(cert_dir, e, ec);
}

static int cmd_env(int argc, char **argv)
{
	static struct env_cert ec;
	struct cli_args a;
	struct route r;
	struct env_vars e;
	int rc = cli_parse("env", argc, argv, &a);

	if (rc)
		return rc;
	const char *fmt = a.format ? a.format : "shell";
	if (strcmp(fmt, "shell") != 0 && strcmp(fmt, "dotenv") != 0 && strcmp(fmt, "json") != 0)
		return cli_usage_error("env", "--format is shell, dotenv or json, not", fmt);
	struct conf *c = cli_load("env", a.conf_path);
	if (!c)
		return 1;
	if (!cli_route("env", c, &a, &r)) {
		conf_free(c);
		return 1;
	}
	if (!env_collect(c, &r, a.cert_dir, &e, &ec)) {
		OPENSSL_cleanse(&e, sizeof(e));
		OPENSSL_cleanse(&r, sizeof(r));
		conf_free(c);
		return 1;
	}
	if (strcmp(fmt, "json") == 0)
		putchar('{');
	for (int i = 0; i < ec.n; i++) {
		if (strcmp(fmt, "json") == 0) {
			printf("%s", i ? ", " : "");
			cli_print_json_string(ec.names[i]);
			printf(": ");
			cli_print_json_string(ec.values[i]);
		} else if (strcmp(fmt, "dotenv") == 0) {
			/* Bare when nothing in it needs quoting (every value pglane makes, but for odd branches). */
			printf("%s=", ec.names[i]);
			if (strspn(ec.values[i], DOTENV_SAFE) == strlen(ec.values[i]))
				fputs(ec.values[i], stdout);
			else
				print_shell_quoted(ec.values[i]);
			putchar('\n');
		} else {
			printf("export %s=", ec.names[i]);
			print_shell_quoted(ec.values[i]);
			putchar('\n');
		}
	}
	if (strcmp(fmt, "json") == 0)
		printf("}\n");
	OPENSSL_cleanse(&e, sizeof(e));
	OPENSSL_cleanse(&r, sizeof(r));
	conf_free(c);
	return 0;
}

static int cmd_exec(int argc, char **argv)
{
	struct cli_args a;
	struct route r;
	struct env_vars e;
	struct env_cert ec;
	int rc = cli_parse("exec", argc, argv, &a);

	if (rc)
		return rc;
	if (a.nrest == 0)
		return cli_usage_error("exec", "give the command after --", NULL);
	struct conf *c = cli_load("exec", a.conf_path);
	if (!c)
		return 1;
	if (!cli_route("exec", c, &a, &r)) {
		conf_free(c);
		return 1;
	}
	if (!env_collect(c, &r, a.cert_dir, &e, &ec)) {
		conf_free(c);
		return 1;
	}
	if (a.cert_dir)
		unsetenv("PGPASSWORD"); /* a certificate login: no password from the parent either */
	for (int i = 0; i < ec.n; i++)
		setenv(ec.names[i], ec.values[i], 1);
	conf_free(c);
	execvp(a.rest[0], a.rest);
	fprintf(stderr, "pglane exec: cannot run \"%s\": %s\n", a.rest[0], strerror(errno));
	return errno == ENOENT ? 127 : 126;
}

int cli_main(int argc, char **argv)
{
	const char *cmd = argv[0];

	if (strcmp(cmd, "check") == 0)
		return cmd_check(argc, argv);
	if (strcmp(cmd, "env") == 0)
		return cmd_env(argc, argv);
	if (strcmp(cmd, "exec") == 0)
		return cmd_exec(argc, argv);
	if (strcmp(cmd, "provision") == 0)
		return cmd_provision(argc, argv);
	if (strcmp(cmd, "status") == 0)
		return cmd_status(argc, argv);
	if (strcmp(cmd, "test") == 0)
		return cmd_test(argc, argv);
	if (strcmp(cmd, "migrate") == 0)
		return cmd_migrate(argc, argv);
	if (strcmp(cmd, "certs") == 0)
		return cmd_certs(argc, argv);
	fprintf(stderr, "pglane: unknown subcommand \"%s\"; run `pglane --help`\n", cmd);
	return 2;
}
