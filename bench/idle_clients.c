/*
 * idle_clients: opens N libpq connections (parameters from the PG* environment), completes each login,
 * then holds them all idle until SIGTERM or SIGINT.  bench/run.sh uses it to measure a proxy's memory
 * per idle logged-in client: RSS before, RSS with N idle clients, divided by N.
 *
 *   idle_clients N [IN_FLIGHT]     IN_FLIGHT logins at a time (default 32)
 *
 * Logins run without blocking (PQconnectStart/PQconnectPoll driven by poll(2)), so thousands of them take
 * seconds.  Once every login has finished, one line goes to stdout and is flushed:
 *   connected=C failed=F [first_error=...]
 * then the process sleeps until a signal; exiting closes the connections.  Exit status 0 when F is 0.
 * Built by bench/run.sh with `cc ... $(pkg-config --cflags --libs libpq)`; not part of `make`.
 */
#define _POSIX_C_SOURCE 200809L /* sigaction */

#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct pending {
	PGconn *conn;                   /* owned until the login ends, then moved to the held list */
	PostgresPollingStatusType want; /* what PQconnectPoll last asked to wait for */
};

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

int main(int argc, char **argv)
{
	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: %s N [IN_FLIGHT]\n", argv[0]);
		return 2;
	}
	long n = strtol(argv[1], NULL, 10), in_flight = argc == 3 ? strtol(argv[2], NULL, 10) : 32;
	if (n < 1 || n > 1000000 || in_flight < 1 || in_flight > 10000) {
		fprintf(stderr, "idle_clients: N must be 1..1000000 and IN_FLIGHT 1..10000\n");
		return 2;
	}

	PGconn **held = calloc((size_t)n, sizeof *held);
	struct pending *pend = calloc((size_t)in_flight, sizeof *pend);
	struct pollfd *pfd = calloc((size_t)in_flight, sizeof *pfd);
	int *slot_of = calloc((size_t)in_flight, sizeof *slot_of);
	if (!held || !pend || !pfd || !slot_of) {
		fprintf(stderr, "idle_clients: out of memory\n");
		return 1;
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	long started = 0, connected = 0, failed = 0;
	char first_error[512] = "";

	while (!stop) {
		/* Fill the free slots with new logins. */
		for (long i = 0; i < in_flight && started < n; i++) {
			if (pend[i].conn)
				continue;
			PGconn *c = PQconnectStart("");
			started++;
			if (!c || PQstatus(c) == CONNECTION_BAD) {
				if (!first_error[0])
					snprintf(first_error, sizeof first_error, "%s",
					         c ? PQerrorMessage(c) : "PQconnectStart: out of memory");
				PQfinish(c);
				failed++;
				continue;
			}
			pend[i].conn = c;
			pend[i].want = PGRES_POLLING_WRITING;
		}
		int nfds = 0;
		for (long i = 0; i < in_flight; i++) {
			if (!pend[i].conn)
				continue;
			pfd[nfds].fd = PQsocket(pend[i].conn);
			pfd[nfds].events = pend[i].want == PGRES_POLLING_READING ? POLLIN : POLLOUT;
			pfd[nfds].revents = 0;
			slot_of[nfds] = (int)i;
			nfds++;
		}
		if (nfds == 0)
			break;
		if (poll(pfd, (nfds_t)nfds, 30000) < 0) {
			if (errno == EINTR)
				continue;
			perror("idle_clients: poll");
			return 1;
		}
		for (int k = 0; k < nfds; k++) {
			if (!pfd[k].revents)
				continue;
			struct pending *p = &pend[slot_of[k]];
			p->want = PQconnectPoll(p->conn);
			if (p->want == PGRES_POLLING_OK) {
				held[connected++] = p->conn;
				p->conn = NULL;
			} else if (p->want == PGRES_POLLING_FAILED) {
				if (!first_error[0])
					snprintf(first_error, sizeof first_error, "%s",
					         PQerrorMessage(p->conn));
				PQfinish(p->conn);
				p->conn = NULL;
				failed++;
			}
		}
	}

	for (char *q = first_error; *q; q++)
		if (*q == '\n')
			*q = ' ';
	printf("connected=%ld failed=%ld%s%s\n", connected, failed, first_error[0] ? " first_error=" : "",
	       first_error);
	fflush(stdout);

	while (!stop)
		pause();
	for (long i = 0; i < connected; i++)
		PQfinish(held[i]);
	return failed ? 1 : 0;
}
