/*
 * cli_certs: `pglane certs`, the certificates for local development with TLS and client certificates.
 *
 *   pglane certs init DIR          a dev CA, a server certificate for localhost, a client CA
 *   pglane certs issue [-c FILE] APP --production|--preview|--branch NAME --out DIR
 *                                  DIR/client.crt and DIR/client.key for that timeline
 *   pglane certs inspect FILE      what a certificate says, and the app and timeline it maps to
 *
 * The work is in certs/devca.c; this file checks the arguments and prints.  Exit status: 0 done, 1 the
 * work failed (the message names the file and what is wrong), 2 a usage error.
 */
#include "proxy/cli.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/crypto.h>

#include "certs/devca.h"
#include "routing/certid.h"

#define CLIENT_CRT "client.crt"
#define CLIENT_KEY "client.key"

/* The absolute name of path when it resolves (what a file elsewhere can point to), else path itself. */
static const char *certs_abs(const char *path, char *buf)
{
	return realpath(path, buf) ? buf : path;
}

/* Prints "NAME='value'" for a POSIX shell, with sep after it: branch names may hold '$', '&' or quotes. */
static void certs_print_var(const char *name, const char *value, const char *sep)
{
	printf("%s='", name);
	for (; *value; value++) {
		if (*value == '\'')
			fputs("'\\''", stdout);
		else
			putchar(*value);
	}
	printf("'%s", sep);
}

static int certs_init(const struct cli_args *a)
{
	char err[1024], buf[PATH_MAX], path[PATH_MAX + 16];

	if (!a->arg2)
		return cli_usage_error("certs", "give the directory to write to: pglane certs init DIR",
		                       NULL);
	if (!devca_init(a->arg2, err, sizeof(err))) {
		fprintf(stderr, "pglane certs init: %s\n", err);
		return 1;
	}
	const char *dir = certs_abs(a->arg2, buf);
	printf("wrote %s/{" DEVCA_CA_CRT ", " DEVCA_SERVER_CRT ", " DEVCA_SERVER_KEY ", " DEVCA_CLIENT_CA_CRT
	       ", " DEVCA_CLIENT_CA_KEY "}\n\n",
	       dir);
	printf("# in the [pglane] section of pglane.ini:\n");
	printf("tls_cert = %s/" DEVCA_SERVER_CRT "\n", dir);
	printf("tls_key = %s/" DEVCA_SERVER_KEY "\n", dir);
	printf("client_ca = %s/" DEVCA_CLIENT_CA_CRT "\n", dir);
	printf("client_ca_key = %s/" DEVCA_CLIENT_CA_KEY "\n\n", dir);
	printf("# clients check that they talk to pglane with:\n");
	snprintf(path, sizeof(path), "%s/" DEVCA_CA_CRT, dir);
	printf("export ");
	certs_print_var("PGSSLROOTCERT", path, " PGSSLMODE=verify-full\n");
	return 0;
}

static int certs_issue(const struct cli_args *a)
{
	char err[1024], uri[IDENTITY_URI_MAX], user[512], label[300], crt[PATH_MAX], key[PATH_MAX];
	char abs_crt[PATH_MAX], abs_key[PATH_MAX];
	struct cli_args app = *a;
	struct route r;
	int rc = 1;

	if (!a->arg2 || !a->have_timeline || !a->out_dir)
		return cli_usage_error("certs",
		                       "give the app, its timeline and the directory: pglane certs issue APP "
		                       "--production|--preview|--branch NAME --out DIR",
		                       NULL);
	if ((size_t)snprintf(crt, sizeof(crt), "%s/" CLIENT_CRT, a->out_dir) >= sizeof(crt) ||
	    (size_t)snprintf(key, sizeof(key), "%s/" CLIENT_KEY, a->out_dir) >= sizeof(key))
		return cli_usage_error("certs", "directory name too long", a->out_dir);
	struct conf *c = cli_load("certs issue", a->conf_path);
	if (!c)
		return 1;
	app.app = a->arg2;
	if (!c->client_ca || !c->client_ca_key) {
		fprintf(stderr,
		        "pglane certs issue: %s: [pglane] needs client_ca and client_ca_key to issue client "
		        "certificates (`pglane certs init DIR` makes a pair)\n",
		        c->path);
	} else if (cli_route("certs issue", c, &app, &r)) {
		struct devca_client req = {.cn = r.id.app,
		                           .uri = uri,
		                           .from = -DEVCA_BACKDATE_S,
		                           .until = DEVCA_CLIENT_DAYS * DEVCA_DAY_S};
		identity_format_uri(&r.id, uri, sizeof(uri)); /* IDENTITY_URI_MAX always fits */
		identity_format_user(&r.id, user, sizeof(user));
		timeline_label(&r.id.tl, label, sizeof(label));
		if (mkdir(a->out_dir, 0700) != 0 && errno != EEXIST)
			fprintf(stderr, "pglane certs issue: cannot create directory %s: %s\n", a->out_dir,
			        strerror(errno));
		else if (!devca_issue_client(c->client_ca, c->client_ca_key, &req, crt, key, err,
		                             sizeof(err)))
			fprintf(stderr, "pglane certs issue: %s\n", err);
		else
			rc = 0;
	}
	if (rc == 0) {
		printf("wrote %s and %s: app %s, timeline %s (%s), valid for %d days, signed by %s\n\n", crt,
		       key, r.id.app, label, uri, DEVCA_CLIENT_DAYS, c->client_ca);
		printf("# the app connects with:\n");
		printf("export ");
		certs_print_var("PGUSER", user, " ");
		certs_print_var("PGSSLCERT", certs_abs(crt, abs_crt), " ");
		certs_print_var("PGSSLKEY", certs_abs(key, abs_key), "\n");
	}
	OPENSSL_cleanse(&r, sizeof(r));
	conf_free(c);
	return rc;
}

static int certs_inspect(const struct cli_args *a)
{
	char err[1024], user[512], label[300];
	struct devca_info info;
	struct identity id;

	if (!a->arg2)
		return cli_usage_error("certs", "give the certificate file: pglane certs inspect FILE", NULL);
	if (!devca_inspect(a->arg2, &info, err, sizeof(err))) {
		fprintf(stderr, "pglane certs inspect: %s\n", err);
		return 1;
	}
	printf("subject:  %s\n", info.subject);
	printf("issuer:   %s\n", info.issuer);
	printf("serial:   %s\n", info.serial);
	printf("validity: %s to %s%s\n", info.not_before, info.not_after,
	       info.validity < 0   ? " (not valid yet)"
	       : info.validity > 0 ? " (expired)"
	                           : "");
	printf("SANs:     %s\n", info.sans[0] ? info.sans : "(none)");
	printf("CA:       %s\n", info.is_ca ? "yes" : "no");
	if (!info.uri[0]) {
		printf("maps to:  nothing: %s\n", info.unmapped);
	} else if (!identity_parse_uri(info.uri, &id, err, sizeof(err))) {
		printf("maps to:  nothing: %s\n", err);
	} else {
		identity_format_user(&id, user, sizeof(user));
		timeline_label(&id.tl, label, sizeof(label));
		printf("maps to:  app %s, timeline %s (the client logs in as user \"%s\")\n", id.app, label,
		       user);
	}
	return 0;
}

int cmd_certs(int argc, char **argv)
{
	struct cli_args a;
	int rc = cli_parse("certs", argc, argv, &a);

	if (rc)
		return rc;
	if (!a.app)
		return cli_usage_error("certs", "give init, issue or inspect", NULL);
	if (strcmp(a.app, "init") == 0)
		return certs_init(&a);
	if (strcmp(a.app, "issue") == 0)
		return certs_issue(&a);
	if (strcmp(a.app, "inspect") == 0)
		return certs_inspect(&a);
	return cli_usage_error("certs", "unknown command (init, issue or inspect)", a.app);
}
