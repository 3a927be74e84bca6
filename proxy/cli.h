/*
 * cli: what the subcommands share: argument parsing, loading the file, the route of APP TIMELINE,
 * and the PG* variables an app is given.  Exit status of every subcommand: 0 done, 1 the file or the
 * work failed (the message says which), 2 a usage error.
 */
#ifndef PGLANE_CLI_H
#define PGLANE_CLI_H

#include <stdbool.h>

#include "conf/conf.h"
#include "routing/route.h"

struct cli_args {
	const char *conf_path; /* -c FILE, default ./pglane.ini */
	const char *app;       /* first positional argument */
	const char *arg2;      /* second positional argument (certs: DIR or FILE, test: INSTANCE ...) */
	bool have_timeline;
	enum timeline_kind kind;
	const char *branch;
	const char *format;  /* --format F */
	const char *out_dir; /* --out DIR */
	const char *url;     /* --url URL */
	const char *cert_dir; /* --cert DIR */
	bool json, all, retry;
	char **rest; /* after "--" */
	int nrest;
};

/* Parses the common options; returns 0, or 2 after printing a usage error. */
int cli_parse(const char *cmd, int argc, char **argv, struct cli_args *a);
int cli_usage_error(const char *cmd, const char *msg, const char *arg);
/* Loads and validates the file; prints every error and returns NULL when it is not valid. */
struct conf *cli_load(const char *cmd, const char *path);
/* The route of the app and timeline the arguments name; prints why not and returns false. */
bool cli_route(const char *cmd, const struct conf *c, const struct cli_args *a, struct route *r);

#define ENV_NVARS 7
struct env_vars {
	const char *names[ENV_NVARS]; /* PGHOST PGPORT PGDATABASE PGUSER PGPASSWORD PGSSLMODE DATABASE_URL */
	char values[ENV_NVARS][2048];
};
/* The variables an app on route r is given: pointing at pglane, never at the instance. */
void cli_env_build(const struct conf *c, const struct route *r, struct env_vars *e);
/* Prints s as a JSON string (quotes and escapes included) on stdout. */
void cli_print_json_string(const char *s);

/* Subcommands implemented in other files. */
int cmd_certs(int argc, char **argv);     /* cli_certs.c */
int cmd_provision(int argc, char **argv); /* cli_lifecycle.c */
int cmd_status(int argc, char **argv);
int cmd_test(int argc, char **argv);
int cmd_migrate(int argc, char **argv);

#endif
