/*
 * cli_lifecycle: `pglane provision|status|test|migrate` (issue 4; not written yet).
 */
#include <stdio.h>

#include "proxy/cli.h"

static int cli_not_yet(const char *cmd)
{
	fprintf(stderr, "pglane %s: not implemented in this version yet\n", cmd);
	return 2;
}

int cmd_provision(int argc, char **argv)
{
	return cli_not_yet("provision");
}

int cmd_status(int argc, char **argv)
{
	return cli_not_yet("status");
}

int cmd_test(int argc, char **argv)
{
	return cli_not_yet("test");
}

int cmd_migrate(int argc, char **argv)
{
	return cli_not_yet("migrate");
}
