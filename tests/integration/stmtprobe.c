/*
 * stmtprobe: named prepared statements through libpq, step by step, for tests/integration/t_prepared.sh.
 *
 *   stmtprobe CONNINFO STEP...
 *
 * Steps run in order on one connection; each prints one line:
 *
 *   prepare NAME SQL     PQprepare(): "ok", or "ERROR <SQLSTATE> <message>"
 *   exec NAME [PARAM]    PQexecPrepared() with at most one text parameter: the first row's first column
 *                        ("ok" when there is none), or the error
 *   query SQL            PQexec(): as exec
 *   pipeline-fail NAME SQL
 *                        in pipeline mode: a query that fails (SELECT 1/0), then Parse NAME SQL, then one
 *                        Sync: prints what each got ("ERROR 22012 ..." then "skipped" when the server
 *                        skipped the Parse, as PostgreSQL does after an error, or "ok")
 *   copy-in TABLE N      COPY TABLE FROM STDIN through the extended protocol (PQexecParams), N rows of
 *                        one integer: "ok", or the error
 *   pipeline-use NAME SQL
 *                        in pipeline mode: Parse NAME SQL, Sync, then NAME executed, Sync: both results
 *   pipeline-batch N NAME...
 *                        in pipeline mode: each NAME executed in turn, N times over, behind one Sync:
 *                        the results joined by ","
 *
 * Exit status: 0 when every step ran (errors are results), 1 when the connection failed, 2 usage.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

static void print_error(const PGresult *r, PGconn *c)
{
	const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
	const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;

	printf("ERROR %s %s\n", state ? state : "-----", msg ? msg : PQerrorMessage(c));
}

/* One result: its first value, "ok", or the error. */
static void print_result(PGresult *r, PGconn *c)
{
	ExecStatusType st = PQresultStatus(r);

	if (st == PGRES_TUPLES_OK && PQntuples(r) > 0)
		printf("%s\n", PQgetvalue(r, 0, 0));
	else if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
		printf("ok\n");
	else
		print_error(r, c);
}

/* Reads results up to the pipeline's sync: what each query got, joined by ",". */
static void pipeline_results(PGconn *c, int queries)
{
	char line[4096] = "";
	size_t used = 0;

	for (int q = 0; q < queries; q++) {
		PGresult *r = PQgetResult(c);
		const char *what = "?";
		char buf[256];
		if (!r) {
			q--; /* the NULL between one query's results and the next */
			continue;
		}
		switch (PQresultStatus(r)) {
		case PGRES_PIPELINE_ABORTED:
			what = "skipped";
			break;
		case PGRES_TUPLES_OK:
			what = PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "ok";
			break;
		case PGRES_COMMAND_OK:
			what = "ok";
			break;
		default:
			snprintf(buf, sizeof(buf), "ERROR %s", PQresultErrorField(r, PG_DIAG_SQLSTATE));
			what = buf;
		}
		used += (size_t)snprintf(line + used, sizeof(line) - used, "%s%s", q ? "," : "", what);
		if (used >= sizeof(line))
			used = sizeof(line) - 1;
		PQclear(r);
	}
	for (int nulls = 0; nulls < 4;) { /* up to the sync's result (NULLs end each query's results) */
		PGresult *r = PQgetResult(c);
		if (!r) {
			nulls++;
			continue;
		}
		ExecStatusType st = PQresultStatus(r);
		PQclear(r);
		if (st == PGRES_PIPELINE_SYNC)
			break;
	}
	printf("%s\n", line);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: stmtprobe CONNINFO STEP...\n");
		return 2;
	}
	PGconn *c = PQconnectdb(argv[1]);
	if (PQstatus(c) != CONNECTION_OK) {
		printf("CONNECT %s", PQerrorMessage(c));
		PQfinish(c);
		return 1;
	}
	for (int i = 2; i < argc;) {
		const char *step = argv[i++];
		PGresult *r;
		if (strcmp(step, "prepare") == 0 && i + 2 <= argc) {
			r = PQprepare(c, argv[i], argv[i + 1], 0, NULL);
			i += 2;
			print_result(r, c);
			PQclear(r);
		} else if (strcmp(step, "exec") == 0 && i + 1 <= argc) {
			const char *name = argv[i++];
			const char *param = i < argc && strcmp(argv[i], "--") != 0 && argv[i][0] == '=' ? argv[i++] + 1 : NULL;
			r = PQexecPrepared(c, name, param ? 1 : 0, param ? &param : NULL, NULL, NULL, 0);
			print_result(r, c);
			PQclear(r);
		} else if (strcmp(step, "query") == 0 && i + 1 <= argc) {
			r = PQexec(c, argv[i++]);
			print_result(r, c);
			PQclear(r);
		} else if (strcmp(step, "pipeline-fail") == 0 && i + 2 <= argc) {
			if (!PQenterPipelineMode(c) || !PQsendQueryParams(c, "SELECT 1/0", 0, NULL, NULL, NULL, NULL, 0) ||
			    !PQsendPrepare(c, argv[i], argv[i + 1], 0, NULL) || !PQpipelineSync(c)) {
				printf("SENDFAIL %s", PQerrorMessage(c));
				return 1;
			}
			i += 2;
			pipeline_results(c, 2);
			PQexitPipelineMode(c);
		} else if (strcmp(step, "copy-in") == 0 && i + 2 <= argc) {
			char sql[256], row[32];
			snprintf(sql, sizeof(sql), "COPY %s FROM STDIN", argv[i]);
			int rows = atoi(argv[i + 1]);
			i += 2;
			r = PQexecParams(c, sql, 0, NULL, NULL, NULL, NULL, 0);
			if (PQresultStatus(r) != PGRES_COPY_IN) {
				print_result(r, c);
				PQclear(r);
				continue;
			}
			PQclear(r);
			for (int k = 0; k < rows; k++) {
				int len = snprintf(row, sizeof(row), "%d\n", k);
				PQputCopyData(c, row, len);
			}
			PQputCopyEnd(c, NULL);
			r = PQgetResult(c);
			print_result(r, c);
			PQclear(r);
			while ((r = PQgetResult(c)))
				PQclear(r);
		} else if (strcmp(step, "pipeline-use") == 0 && i + 2 <= argc) {
			if (!PQenterPipelineMode(c) || !PQsendPrepare(c, argv[i], argv[i + 1], 0, NULL) || !PQpipelineSync(c) ||
			    !PQsendQueryPrepared(c, argv[i], 0, NULL, NULL, NULL, 0) || !PQpipelineSync(c)) {
				printf("SENDFAIL %s", PQerrorMessage(c));
				return 1;
			}
			i += 2;
			pipeline_results(c, 1);
			pipeline_results(c, 1);
			PQexitPipelineMode(c);
		} else if (strcmp(step, "pipeline-batch") == 0 && i + 2 <= argc) {
			int times = atoi(argv[i++]), first = i, n = 0;
			while (i < argc && strcmp(argv[i], "--") != 0)
				i++;
			if (!PQenterPipelineMode(c))
				return 1;
			for (int t = 0; t < times; t++)
				for (int k = first; k < i; k++, n++)
					if (!PQsendQueryPrepared(c, argv[k], 0, NULL, NULL, NULL, 0)) {
						printf("SENDFAIL %s", PQerrorMessage(c));
						return 1;
					}
			if (!PQpipelineSync(c))
				return 1;
			pipeline_results(c, n);
			PQexitPipelineMode(c);
		} else if (strcmp(step, "--") == 0) {
			continue;
		} else {
			fprintf(stderr, "stmtprobe: bad step %s\n", step);
			PQfinish(c);
			return 2;
		}
		fflush(stdout);
	}
	PQfinish(c);
	return 0;
}
