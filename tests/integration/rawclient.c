/*
 * rawclient: a raw-socket client for hostile-input tests, so that a shell script can send pglane bytes no
 * driver would send and see what comes back.
 *
 *   rawclient [--conns N] [--timeout SEC] HOST PORT STEP...
 *   rawclient --pq-stall SEC CONNINFO SQL
 *
 * Steps run in the order given.  With --conns N, N connections are opened first and each step is applied
 * to every connection before the next step starts (so --hold holds them all at once).
 *
 *   --hex HEX             send these bytes in one write (hex digits; blanks, ':' and '-' are ignored)
 *   --file PATH           send a file's bytes in one write ("-": standard input)
 *   --garbage N           send N pseudo-random bytes (--seed S, default 1) in one write
 *   --startup K=V,K=V...  send a protocol 3.0 StartupMessage with these parameters
 *   --times N             repeat the send step just before it N times in all (separate writes)
 *   --hold SEC            wait SEC seconds (fractions allowed), reading nothing
 *   --read-byte           read one byte (the answer to an SSLRequest); an 'E' is read as a whole message
 *   --read                read one message
 *   --read-all            read messages until the server closes or --timeout passes
 *
 * Each read step prints one line per connection with what it got: "S" or "N" (a single byte), "E:28P01"
 * (an ErrorResponse and its SQLSTATE), "R:10" (an authentication request and its code; SASLContinue and
 * SASLFinal with their SCRAM message: "R:11:r=...,s=...,i=4096"), another message's
 * type letter, "EOF" (closed by the server), "RESET" (connection reset) or "TIMEOUT"; --read-all prints
 * them all on one line ("E:08P01 EOF").  A send that fails prints "SENDFAIL:<errno name>".  With --conns N
 * (N > 1) the lines are counted instead: "COUNT RESULT", one per distinct result, in order of appearance.
 *
 * --pq-stall connects with libpq (so SCRAM and TLS are libpq's), sends SQL with PQsendQuery(), prints
 * "SENT", then reads nothing for SEC seconds: a client that stops reading in the middle of a result.  It
 * prints "DONE" and exits 0, or "ERROR <message>" and exits 1.
 *
 * Exit status: 0 when every connection could be opened (whatever the server answered), 2 for a usage
 * error, 1 when a connection could not be opened.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#define RC_BUF_SIZE (64 * 1024) /* what one connection keeps of the server's bytes between reads */
#define RC_RESULT_MAX 512

enum step_kind { STEP_SEND, STEP_HOLD, STEP_READ_BYTE, STEP_READ, STEP_READ_ALL };

struct step {
	enum step_kind kind;
	uint8_t *data; /* owned: STEP_SEND's bytes */
	size_t len;
	int times;     /* STEP_SEND: how many writes of data */
	double secs;   /* STEP_HOLD */
};

struct rconn {
	int fd;
	bool eof, reset;      /* the server closed or reset the connection */
	uint8_t buf[RC_BUF_SIZE];
	size_t len;           /* bytes in buf */
	size_t skip;          /* bytes of an over-long message still to discard */
	char result[RC_RESULT_MAX];
};

static double rc_timeout = 10;

static void usage(void)
{
	fprintf(stderr, "usage: rawclient [--conns N] [--timeout SEC] [--seed S] HOST PORT STEP...\n"
			"       rawclient --pq-stall SEC CONNINFO SQL\n"
			"steps: --hex HEX | --file PATH | --garbage N | --startup K=V,... | --times N | --hold SEC |\n"
			"       --read-byte | --read | --read-all\n");
	exit(2);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_s(double secs)
{
	struct timespec ts = {(time_t)secs, (long)((secs - (double)(time_t)secs) * 1e9)};

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p) {
		fprintf(stderr, "rawclient: out of memory\n");
		exit(1);
	}
	return p;
}

/* ---------------------------------------------------------------- building steps */

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

static uint8_t *parse_hex(const char *s, size_t *len)
{
	uint8_t *out = xmalloc(strlen(s) / 2 + 1);
	int hi = -1;

	*len = 0;
	for (; *s; s++) {
		if (strchr(" \t\n:-", *s))
			continue;
		int v = hexval(*s);
		if (v < 0) {
			fprintf(stderr, "rawclient: '%c' is not a hex digit\n", *s);
			exit(2);
		}
		if (hi < 0) {
			hi = v;
		} else {
			out[(*len)++] = (uint8_t)(hi << 4 | v);
			hi = -1;
		}
	}
	if (hi >= 0) {
		fprintf(stderr, "rawclient: odd number of hex digits\n");
		exit(2);
	}
	return out;
}

static uint8_t *read_file(const char *path, size_t *len)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
	size_t cap = 65536, n;
	uint8_t *buf;

	if (!f) {
		fprintf(stderr, "rawclient: %s: %s\n", path, strerror(errno));
		exit(2);
	}
	buf = xmalloc(cap);
	*len = 0;
	while ((n = fread(buf + *len, 1, cap - *len, f)) > 0) {
		*len += n;
		if (*len == cap) {
			cap *= 2;
			uint8_t *grown = realloc(buf, cap);
			if (!grown) {
				fprintf(stderr, "rawclient: out of memory\n");
				exit(1);
			}
			buf = grown;
		}
	}
	if (f != stdin)
		fclose(f);
	return buf;
}

static void put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static uint32_t get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* "user=a,database=b" into a StartupMessage (each '=' and ',' becomes the NUL between strings). */
static uint8_t *build_startup(const char *params, size_t *len)
{
	size_t plen = strlen(params);
	uint8_t *out = xmalloc(8 + plen + 2);
	size_t o = 8;

	for (const char *s = params; *s; s++)
		out[o++] = (*s == '=' || *s == ',') ? 0 : (uint8_t)*s;
	if (plen > 0)
		out[o++] = 0; /* the last value's NUL */
	out[o++] = 0;         /* the terminator */
	put_u32(out, (uint32_t)o);
	put_u32(out + 4, 196608);
	*len = o;
	return out;
}

static uint8_t *build_garbage(size_t n, uint64_t seed)
{
	uint8_t *out = xmalloc(n);
	uint64_t x = seed ? seed : 1;

	for (size_t i = 0; i < n; i++) {
		x ^= x << 13; /* xorshift64 */
		x ^= x >> 7;
		x ^= x << 17;
		out[i] = (uint8_t)(x >> 24);
	}
	return out;
}

/* ---------------------------------------------------------------- connections */

static int connect_to(const char *host, const char *port)
{
	struct addrinfo hints = {0}, *ai, *a;
	int fd = -1, rc;

	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	if ((rc = getaddrinfo(host, port, &hints, &ai)) != 0) {
		fprintf(stderr, "rawclient: %s:%s: %s\n", host, port, gai_strerror(rc));
		return -1;
	}
	for (a = ai; a; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
		if (fd < 0)
			continue;
		if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
			break;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	if (fd < 0) {
		fprintf(stderr, "rawclient: cannot connect to %s:%s: %s\n", host, port, strerror(errno));
		return -1;
	}
	/* A send into a server that stopped reading must not block the test forever. */
	struct timeval tv = {(time_t)rc_timeout, 0};
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	return fd;
}

static void result_add(struct rconn *c, const char *what)
{
	size_t n = strlen(c->result);

	snprintf(c->result + n, sizeof(c->result) - n, "%s%s", n ? " " : "", what);
}

/* Sends all of data; on failure records SENDFAIL and returns false. */
static bool send_all(struct rconn *c, const uint8_t *data, size_t len)
{
	size_t off = 0;

	while (off < len) {
		ssize_t n = send(c->fd, data + off, len - off, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			char what[64];
			snprintf(what, sizeof(what), "SENDFAIL:%s", n < 0 ? strerrorname_np(errno) : "0");
			result_add(c, what);
			return false;
		}
		off += (size_t)n;
	}
	return true;
}

/* A one-word summary of the message at c->buf (type byte, length word, body of blen bytes). */
static void summarize(struct rconn *c, uint8_t type, const uint8_t *body, size_t blen, bool whole)
{
	char what[64];

	if (type == 'E' && whole) {
		const char *code = "?????";
		for (size_t i = 0; i < blen && body[i];) {
			uint8_t f = body[i++];
			const uint8_t *nul = memchr(body + i, 0, blen - i);
			if (!nul)
				break;
			if (f == 'C') {
				code = (const char *)body + i;
				break;
			}
			i = (size_t)(nul - body) + 1;
		}
		snprintf(what, sizeof(what), "E:%.5s", code);
	} else if (type == 'R' && whole && blen >= 4 && (get_u32(body) == 11 || get_u32(body) == 12)) {
		/* SASLContinue / SASLFinal: the SCRAM message is printable ASCII; show it. */
		char sasl[RC_RESULT_MAX / 2];
		size_t n = 0;
		for (size_t i = 4; i < blen && n + 1 < sizeof(sasl); i++)
			sasl[n++] = body[i] >= 0x21 && body[i] < 0x7f ? (char)body[i] : '?';
		sasl[n] = '\0';
		char big[RC_RESULT_MAX];
		snprintf(big, sizeof(big), "R:%u:%s", get_u32(body), sasl);
		result_add(c, big);
		return;
	} else if (type == 'R' && whole && blen >= 4) {
		snprintf(what, sizeof(what), "R:%u", get_u32(body));
	} else if (type >= 0x21 && type < 0x7f) {
		snprintf(what, sizeof(what), "%c", type);
	} else {
		snprintf(what, sizeof(what), "0x%02x", type);
	}
	result_add(c, what);
}

/*
 * Takes what the step wants from c->buf: one byte, or one whole message.  Returns true when it took
 * something (the step's result is then recorded), false when more bytes are needed.
 */
static bool consume(struct rconn *c, enum step_kind kind)
{
	if (c->skip > 0) {
		size_t n = c->skip < c->len ? c->skip : c->len;
		memmove(c->buf, c->buf + n, c->len - n);
		c->len -= n;
		c->skip -= n;
		if (c->skip > 0)
			return false;
	}
	if (c->len == 0)
		return false;
	if (kind == STEP_READ_BYTE && c->buf[0] != 'E') {
		summarize(c, c->buf[0], NULL, 0, false);
		memmove(c->buf, c->buf + 1, c->len - 1);
		c->len--;
		return true;
	}
	if (c->len < 5)
		return false;
	uint32_t mlen = get_u32(c->buf + 1);
	if (mlen < 4) {
		result_add(c, "BADLEN");
		c->len = 0;
		return true;
	}
	if ((size_t)mlen + 1 > sizeof(c->buf)) {
		/* Longer than we keep: summarize from the header and discard the rest as it comes. */
		summarize(c, c->buf[0], NULL, 0, false);
		c->skip = (size_t)mlen + 1 - c->len;
		c->len = 0;
		return true;
	}
	if (c->len < (size_t)mlen + 1)
		return false;
	summarize(c, c->buf[0], c->buf + 5, mlen - 4, true);
	memmove(c->buf, c->buf + mlen + 1, c->len - mlen - 1);
	c->len -= mlen + 1;
	return true;
}

/* Runs one read step on every connection at once, each until it is done or the timeout passes. */
static void run_read(struct rconn *cs, int n, enum step_kind kind)
{
	bool *done = xmalloc((size_t)n * sizeof(bool));
	struct pollfd *pf = xmalloc((size_t)n * sizeof(struct pollfd));
	int *idx = xmalloc((size_t)n * sizeof(int));
	double deadline = now_s() + rc_timeout;

	for (int i = 0; i < n; i++) {
		struct rconn *c = &cs[i];
		done[i] = false;
		/* Whatever an earlier step left in the buffer counts first. */
		while (!done[i] && consume(c, kind))
			done[i] = kind != STEP_READ_ALL;
		if (!done[i] && (c->eof || c->reset)) {
			result_add(c, c->reset ? "RESET" : "EOF");
			done[i] = true;
		}
	}
	for (;;) {
		int np = 0;
		for (int i = 0; i < n; i++) {
			if (!done[i]) {
				pf[np].fd = cs[i].fd;
				pf[np].events = POLLIN;
				pf[np].revents = 0;
				idx[np++] = i;
			}
		}
		double left = deadline - now_s();
		if (np == 0)
			break;
		if (left <= 0) {
			for (int k = 0; k < np; k++)
				result_add(&cs[idx[k]], "TIMEOUT");
			break;
		}
		int rc = poll(pf, (nfds_t)np, (int)(left * 1000) + 1);
		if (rc < 0 && errno != EINTR) {
			perror("rawclient: poll");
			exit(1);
		}
		for (int k = 0; k < np && rc > 0; k++) {
			if (!pf[k].revents)
				continue;
			int i = idx[k];
			struct rconn *c = &cs[i];
			ssize_t got = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, MSG_DONTWAIT);
			if (got < 0 && (errno == EAGAIN || errno == EINTR))
				continue;
			if (got <= 0) {
				if (got < 0)
					c->reset = true;
				else
					c->eof = true;
				while (!done[i] && consume(c, kind))
					done[i] = kind != STEP_READ_ALL;
				if (!done[i]) {
					result_add(c, c->reset ? "RESET" : "EOF");
					done[i] = true;
				}
				continue;
			}
			c->len += (size_t)got;
			while (!done[i] && consume(c, kind))
				done[i] = kind != STEP_READ_ALL;
			if (c->len == sizeof(c->buf) && c->skip == 0 && !done[i]) {
				c->len = 0; /* a message over 64 KB cannot be ours to parse: drop it */
				result_add(c, "OVERFLOW");
			}
		}
	}
	free(done);
	free(pf);
	free(idx);
}

/* Prints each connection's result of the step just run (counted when there are several), then clears it. */
static void print_results(struct rconn *cs, int n)
{
	if (n == 1) {
		printf("%s\n", cs[0].result);
	} else {
		bool *printed = xmalloc((size_t)n * sizeof(bool));
		memset(printed, 0, (size_t)n * sizeof(bool));
		for (int i = 0; i < n; i++) {
			if (printed[i])
				continue;
			int count = 0;
			for (int j = i; j < n; j++) {
				if (!printed[j] && strcmp(cs[i].result, cs[j].result) == 0) {
					printed[j] = true;
					count++;
				}
			}
			printf("%d %s\n", count, cs[i].result);
		}
		free(printed);
	}
	fflush(stdout);
	for (int i = 0; i < n; i++)
		cs[i].result[0] = '\0';
}

/* ---------------------------------------------------------------- --pq-stall */

static int pq_stall(double secs, const char *conninfo, const char *sql)
{
	PGconn *conn = PQconnectdb(conninfo);

	if (PQstatus(conn) != CONNECTION_OK) {
		char *msg = PQerrorMessage(conn);
		msg[strcspn(msg, "\n")] = '\0';
		printf("ERROR %s\n", msg);
		PQfinish(conn);
		return 1;
	}
	if (!PQsendQuery(conn, sql)) {
		printf("ERROR %s\n", PQerrorMessage(conn));
		PQfinish(conn);
		return 1;
	}
	while (PQflush(conn) == 1)
		sleep_s(0.01);
	printf("SENT\n");
	fflush(stdout);
	sleep_s(secs); /* reading nothing: the server's rows pile up wherever pglane lets them */
	printf("DONE\n");
	fflush(stdout);
	PQfinish(conn);
	return 0;
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv)
{
	int nsteps = 0, nconns = 1, i = 1;
	uint64_t seed = 1;
	const char *host = NULL, *port = NULL;

	signal(SIGPIPE, SIG_IGN);
	if (argc >= 2 && strcmp(argv[1], "--pq-stall") == 0) {
		if (argc != 5)
			usage();
		return pq_stall(atof(argv[2]), argv[3], argv[4]);
	}
	struct step *steps = xmalloc((size_t)argc * sizeof(struct step));
	for (; i < argc; i++) {
		const char *a = argv[i];
		bool has_arg = i + 1 < argc;
		struct step *s = &steps[nsteps];

		memset(s, 0, sizeof(*s));
		s->times = 1;
		if (strcmp(a, "--conns") == 0 && has_arg) {
			nconns = atoi(argv[++i]);
			if (nconns < 1)
				usage();
		} else if (strcmp(a, "--timeout") == 0 && has_arg) {
			rc_timeout = atof(argv[++i]);
		} else if (strcmp(a, "--seed") == 0 && has_arg) {
			seed = strtoull(argv[++i], NULL, 10);
		} else if (strcmp(a, "--hex") == 0 && has_arg) {
			s->kind = STEP_SEND;
			s->data = parse_hex(argv[++i], &s->len);
			nsteps++;
		} else if (strcmp(a, "--file") == 0 && has_arg) {
			s->kind = STEP_SEND;
			s->data = read_file(argv[++i], &s->len);
			nsteps++;
		} else if (strcmp(a, "--garbage") == 0 && has_arg) {
			s->kind = STEP_SEND;
			s->len = strtoul(argv[++i], NULL, 10);
			s->data = build_garbage(s->len, seed);
			nsteps++;
		} else if (strcmp(a, "--startup") == 0 && has_arg) {
			s->kind = STEP_SEND;
			s->data = build_startup(argv[++i], &s->len);
			nsteps++;
		} else if (strcmp(a, "--times") == 0 && has_arg) {
			if (nsteps == 0 || steps[nsteps - 1].kind != STEP_SEND)
				usage();
			steps[nsteps - 1].times = atoi(argv[++i]);
		} else if (strcmp(a, "--hold") == 0 && has_arg) {
			s->kind = STEP_HOLD;
			s->secs = atof(argv[++i]);
			nsteps++;
		} else if (strcmp(a, "--read-byte") == 0) {
			s->kind = STEP_READ_BYTE;
			nsteps++;
		} else if (strcmp(a, "--read") == 0) {
			s->kind = STEP_READ;
			nsteps++;
		} else if (strcmp(a, "--read-all") == 0) {
			s->kind = STEP_READ_ALL;
			nsteps++;
		} else if (a[0] == '-' && a[1] == '-') {
			usage();
		} else if (!host) {
			host = a;
		} else if (!port) {
			port = a;
		} else {
			usage();
		}
	}
	if (!host || !port)
		usage();

	struct rconn *cs = calloc((size_t)nconns, sizeof(struct rconn));
	if (!cs) {
		fprintf(stderr, "rawclient: out of memory\n");
		return 1;
	}
	for (int k = 0; k < nconns; k++) {
		cs[k].fd = connect_to(host, port);
		if (cs[k].fd < 0) {
			fprintf(stderr, "rawclient: %d of %d connections opened\n", k, nconns);
			return 1;
		}
	}
	for (int st = 0; st < nsteps; st++) {
		struct step *s = &steps[st];
		switch (s->kind) {
		case STEP_SEND: {
			bool failed = false;
			for (int k = 0; k < nconns; k++) {
				for (int t = 0; t < s->times; t++) {
					if (!send_all(&cs[k], s->data, s->len)) {
						failed = true;
						break;
					}
				}
			}
			if (failed)
				print_results(cs, nconns);
			break;
		}
		case STEP_HOLD:
			sleep_s(s->secs);
			break;
		case STEP_READ_BYTE:
		case STEP_READ:
		case STEP_READ_ALL:
			run_read(cs, nconns, s->kind);
			print_results(cs, nconns);
			break;
		}
	}
	for (int k = 0; k < nconns; k++)
		close(cs[k].fd);
	for (int st = 0; st < nsteps; st++)
		free(steps[st].data);
	free(steps);
	free(cs);
	return 0;
}
