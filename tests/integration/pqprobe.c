/*
 * pqprobe: a small libpq client for the integration tests, so that a shell script can see exactly what
 * a real libpq application sees through pglane, including the SQLSTATE of a refused connection.
 *
 *   pqprobe [--timeout SEC] [--cancel-after MS] CONNINFO [SQL]
 *
 * It connects with PQconnectStart()/PQconnectPoll() after PQsetErrorVerbosity(PQERRORS_VERBOSE), because
 * only verbose messages carry the SQLSTATE of an error that arrives during the login ("FATAL:  28P01: ...").
 * On success it runs SQL (default "SELECT current_database()"), prints every row of every result with the
 * columns separated by tabs, and exits 0.  Any error prints one line "ERROR <SQLSTATE> <message>" (the
 * message flattened to one line; "-----" when the error carries no SQLSTATE, e.g. a refused TCP connection
 * or a certificate that does not verify) and exits 1.
 *
 * With --fire it sends SQL and closes at once without waiting for the result (PQfinish: Terminate, close).
 * With --cancel-after MS it sends SQL with PQsendQuery(), waits MS milliseconds, sends a CancelRequest with
 * PQcancel() and prints "SQLSTATE <code> ELAPSED_MS <ms>" for the query's result, the time counted from
 * the moment the query was sent; it exits 0 only when the query ended in 57014 (query_canceled).
 * --timeout bounds the connection and every wait (default 30 s) so that a hung proxy fails a test
 * instead of hanging it.
 */
#ifndef _GNU_SOURCE
#define _POSIX_C_SOURCE 200809L /* clock_gettime, poll */
#endif
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#define PROBE_DEFAULT_SQL   "SELECT current_database()"
#define PROBE_SQLSTATE_NONE "-----"

static long long probe_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* True when s[0..4] looks like a SQLSTATE: five digits or upper-case letters. */
static bool probe_is_sqlstate(const char *s)
{
	for (int i = 0; i < 5; i++) {
		char ch = s[i];
		if (!((ch >= '0' && ch <= '9') || (ch >= 'A' && ch <= 'Z')))
			return false;
	}
	return true;
}

/*
 * Finds the SQLSTATE in a verbose libpq message ("...failed: FATAL:  28P01: password authentication
 * failed...").  Copies the first one found into out (6 bytes) or "-----" when there is none.
 */
static void probe_sqlstate_from_message(const char *msg, char out[6])
{
	static const char *const severities[] = {"FATAL:  ", "ERROR:  ", "PANIC:  "};

	strcpy(out, PROBE_SQLSTATE_NONE);
	const char *best = NULL;
	for (size_t i = 0; i < sizeof(severities) / sizeof(severities[0]); i++) {
		const char *p = msg;
		while ((p = strstr(p, severities[i])) != NULL) {
			const char *code = p + strlen(severities[i]);
			if (strlen(code) >= 7 && probe_is_sqlstate(code) && code[5] == ':' &&
			    code[6] == ' ') {
				if (best == NULL || code < best)
					best = code;
				break;
			}
			p = code;
		}
	}
	if (best != NULL) {
		memcpy(out, best, 5);
		out[5] = '\0';
	}
}

/* Prints "ERROR <sqlstate> <msg>" with the message on one line (newlines and tabs become spaces). */
static void probe_print_error(const char *sqlstate, const char *msg)
{
	printf("ERROR %s ", sqlstate);
	bool space = false;
	for (const char *p = msg; *p != '\0'; p++) {
		if (*p == '\n' || *p == '\r' || *p == '\t') {
			space = true;
			continue;
		}
		if (space) {
			putchar(' ');
			space = false;
		}
		putchar(*p);
	}
	putchar('\n');
	fflush(stdout);
}

/* Prints a failed connection's error and returns the exit status (1). */
static int probe_fail_conn(PGconn *conn, const char *fallback)
{
	const char *msg = conn != NULL ? PQerrorMessage(conn) : "";
	char code[6];

	if (msg[0] == '\0')
		msg = fallback;
	probe_sqlstate_from_message(msg, code);
	probe_print_error(code, msg);
	return 1;
}

/* Prints a result's error; the SQLSTATE field is preferred over parsing the text. */
static void probe_print_result_error(const PGresult *res)
{
	const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	const char *msg = PQresultErrorMessage(res);
	char parsed[6];

	if (code == NULL || strlen(code) != 5) {
		probe_sqlstate_from_message(msg, parsed);
		code = parsed;
	}
	probe_print_error(code, msg);
}

/*
 * Waits until the socket is ready for what PQconnectPoll() asked, or the deadline passes.
 * Returns 1 when ready, 0 on timeout, -1 on error.
 */
static int probe_wait(int fd, bool for_write, long long deadline_ms)
{
	for (;;) {
		long long left = deadline_ms - probe_now_ms();
		if (left <= 0)
			return 0;
		struct pollfd pfd = {.fd = fd, .events = for_write ? POLLOUT : POLLIN};
		int n = poll(&pfd, 1, left > 1000 ? 1000 : (int)left);
		if (n > 0)
			return 1;
		if (n < 0 && errno != EINTR)
			return -1;
	}
}

/* Connects asynchronously.  Returns the connection (CONNECTION_OK) or NULL after printing the error. */
static PGconn *probe_connect(const char *conninfo, long long deadline_ms)
{
	PGconn *conn = PQconnectStart(conninfo);

	if (conn == NULL) {
		probe_fail_conn(NULL, "out of memory");
		return NULL;
	}
	PQsetErrorVerbosity(conn, PQERRORS_VERBOSE);
	if (PQstatus(conn) == CONNECTION_BAD) {
		probe_fail_conn(conn, "connection failed");
		PQfinish(conn);
		return NULL;
	}

	PostgresPollingStatusType st = PGRES_POLLING_WRITING;
	for (;;) {
		if (st == PGRES_POLLING_OK)
			break;
		if (st == PGRES_POLLING_FAILED) {
			probe_fail_conn(conn, "connection failed");
			PQfinish(conn);
			return NULL;
		}
		int w = probe_wait(PQsocket(conn), st == PGRES_POLLING_WRITING, deadline_ms);
		if (w <= 0) {
			probe_print_error(PROBE_SQLSTATE_NONE,
			                  w == 0 ? "timeout while connecting" : "poll failed");
			PQfinish(conn);
			return NULL;
		}
		st = PQconnectPoll(conn);
	}
	PQsetErrorVerbosity(conn, PQERRORS_DEFAULT);
	return conn;
}

/*
 * Reads every pending result until the query is done, printing rows and remembering the first error.
 * Returns 0 when no result failed, 1 otherwise (the error is printed), and stores the first error's
 * SQLSTATE in first_error (empty when none).
 */
static int probe_drain(PGconn *conn, long long deadline_ms, bool print_rows, char first_error[6])
{
	int rc = 0;

	first_error[0] = '\0';
	for (;;) {
		while (PQisBusy(conn)) {
			int w = probe_wait(PQsocket(conn), false, deadline_ms);
			if (w <= 0) {
				probe_print_error(PROBE_SQLSTATE_NONE,
				                  w == 0 ? "timeout waiting for a result" : "poll failed");
				return 1;
			}
			if (!PQconsumeInput(conn)) {
				probe_fail_conn(conn, "connection lost");
				return 1;
			}
		}
		PGresult *res = PQgetResult(conn);
		if (res == NULL)
			break;
		ExecStatusType est = PQresultStatus(res);
		if (est == PGRES_TUPLES_OK || est == PGRES_SINGLE_TUPLE) {
			if (print_rows) {
				for (int r = 0; r < PQntuples(res); r++) {
					for (int c = 0; c < PQnfields(res); c++)
						printf("%s%s", c > 0 ? "\t" : "",
						       PQgetisnull(res, r, c) ? "" : PQgetvalue(res, r, c));
					putchar('\n');
				}
			}
		} else if (est != PGRES_COMMAND_OK && est != PGRES_EMPTY_QUERY) {
			if (rc == 0) {
				const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
				snprintf(first_error, 6, "%s", code != NULL ? code : PROBE_SQLSTATE_NONE);
				if (print_rows)
					probe_print_result_error(res);
			}
			rc = 1;
		}
		PQclear(res);
		if (PQstatus(conn) == CONNECTION_BAD)
			break;
	}
	fflush(stdout);
	return rc;
}

static int probe_cancel_after(PGconn *conn, const char *sql, long cancel_ms, long long deadline_ms)
{
	long long start = probe_now_ms();

	if (!PQsendQuery(conn, sql))
		return probe_fail_conn(conn, "PQsendQuery failed");

	/* Wait for the delay, reading whatever arrives so a quick result is not mistaken for a hang. */
	long long cancel_at = start + cancel_ms;
	while (probe_now_ms() < cancel_at) {
		int w = probe_wait(PQsocket(conn), false, cancel_at);
		if (w < 0)
			return probe_fail_conn(conn, "poll failed");
		if (w > 0 && !PQconsumeInput(conn))
			return probe_fail_conn(conn, "connection lost");
		if (!PQisBusy(conn))
			break;
	}

	if (PQisBusy(conn)) {
		PGcancel *cancel = PQgetCancel(conn);
		char errbuf[256];
		if (cancel == NULL) {
			probe_print_error(PROBE_SQLSTATE_NONE, "PQgetCancel failed");
			return 1;
		}
		int sent = PQcancel(cancel, errbuf, sizeof(errbuf));
		PQfreeCancel(cancel);
		if (!sent) {
			char msg[300];
			snprintf(msg, sizeof(msg), "PQcancel: %s", errbuf);
			probe_print_error(PROBE_SQLSTATE_NONE, msg);
			return 1;
		}
	}

	char code[6];
	int rc = probe_drain(conn, deadline_ms, false, code);
	long long elapsed = probe_now_ms() - start;
	if (rc != 0 && code[0] == '\0')
		return 1; /* drain printed a connection-level error */
	printf("SQLSTATE %s ELAPSED_MS %lld\n", code[0] != '\0' ? code : "00000", elapsed);
	fflush(stdout);
	return strcmp(code, "57014") == 0 ? 0 : 1;
}

static void probe_usage(void)
{
	fprintf(stderr, "usage: pqprobe [--timeout SEC] [--cancel-after MS | --fire] CONNINFO [SQL]\n");
}

int main(int argc, char **argv)
{
	long cancel_ms = -1;
	long timeout_s = 30;
	int i = 1;

	bool fire = false;
	for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
		char *end = NULL;
		if (strcmp(argv[i], "--") == 0) {
			i++;
			break;
		}
		if (strcmp(argv[i], "--fire") == 0) {
			fire = true;
			continue;
		}
		if (i + 1 >= argc) {
			probe_usage();
			return 2;
		}
		if (strcmp(argv[i], "--cancel-after") == 0) {
			cancel_ms = strtol(argv[++i], &end, 10);
			if (*end != '\0' || cancel_ms < 0) {
				probe_usage();
				return 2;
			}
		} else if (strcmp(argv[i], "--timeout") == 0) {
			timeout_s = strtol(argv[++i], &end, 10);
			if (*end != '\0' || timeout_s <= 0) {
				probe_usage();
				return 2;
			}
		} else {
			probe_usage();
			return 2;
		}
	}
	if (i >= argc || argc - i > 2) {
		probe_usage();
		return 2;
	}
	const char *conninfo = argv[i];
	const char *sql = i + 1 < argc ? argv[i + 1] : PROBE_DEFAULT_SQL;

	long long deadline = probe_now_ms() + timeout_s * 1000;
	PGconn *conn = probe_connect(conninfo, deadline);
	if (conn == NULL)
		return 1;

	int rc;
	if (fire) { /* send SQL and hang up at once (Terminate, close): nothing sent may be lost */
		rc = PQsendQuery(conn, sql) ? 0 : probe_fail_conn(conn, "PQsendQuery failed");
		while (rc == 0 && PQflush(conn) > 0)
			;
	} else if (cancel_ms >= 0) {
		rc = probe_cancel_after(conn, sql, cancel_ms, deadline);
	} else if (!PQsendQuery(conn, sql)) {
		rc = probe_fail_conn(conn, "PQsendQuery failed");
	} else {
		char code[6];
		rc = probe_drain(conn, deadline, true, code);
	}
	PQfinish(conn);
	return rc;
}
