/*
 * cli_certs: `pglane certs init|issue|inspect` (issue 3; not written yet).
 */
#include <stdio.h>

#include "proxy/cli.h"

int cmd_certs(int argc, char **argv)
{
	fprintf(stderr, "pglane certs: not implemented in this version yet\n");
	return 2;
}
