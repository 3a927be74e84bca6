/*
 * log: one line per event, as text ("2026-11-29T05:10:00.123Z info C-42 demo/production 127.0.0.1:5000 ...")
 * or as JSON ({"ts":...,"level":...,"conn":42,"app":"demo","timeline":"production","peer":...,"msg":...}),
 * to stderr, to log_file (reopened on SIGHUP, for logrotate) or to syslog (log_file = syslog).  Lines carry the connection; they never
 * carry a password, a token or a SCRAM message.  The workers share the destination: a mutex keeps each line
 * whole and a reopen from pulling the file from under a line.
 */
#include "proxy/proxy.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

static _Atomic enum log_level log_min = LOG_INFO;
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER; /* what follows, and the lines written */
static bool log_json;
static bool log_syslog; /* log_file = syslog */
static FILE *log_out;   /* NULL: stderr (or syslog) */

void log_syslog_open(void);
void log_syslog_close(void);
void log_syslog_line(int level, const char *line);
static const char *const log_names[] = {"debug", "info", "warning", "error"};

void log_set_level(enum log_level l)
{
	log_min = l;
}

bool log_parse_level(const char *s, enum log_level *out)
{
	for (size_t i = 0; i < sizeof(log_names) / sizeof(log_names[0]); i++) {
		if (strcmp(s, log_names[i]) == 0) {
			*out = (enum log_level)i;
			return true;
		}
	}
	return false;
}

bool log_reopen(const struct conf *c)
{
	pthread_mutex_lock(&log_mu);
	log_json = c->log_format && strcmp(c->log_format, "json") == 0;
	bool to_syslog = c->log_file && strcmp(c->log_file, "syslog") == 0;
	if (to_syslog && !log_syslog)
		log_syslog_open();
	else if (!to_syslog && log_syslog)
		log_syslog_close();
	log_syslog = to_syslog;
	if (!c->log_file || to_syslog) {
		if (log_out)
			fclose(log_out);
		log_out = NULL;
		pthread_mutex_unlock(&log_mu);
		return true;
	}
	FILE *f = fopen(c->log_file, "a");
	if (!f) {
		pthread_mutex_unlock(&log_mu);
		log_msg(LOG_ERROR, "cannot open log_file %s; logging stays where it was", c->log_file);
		return false;
	}
	setvbuf(f, NULL, _IOLBF, 0);
	if (log_out)
		fclose(log_out);
	log_out = f;
	pthread_mutex_unlock(&log_mu);
	return true;
}

/* Length of the valid UTF-8 sequence at s, or 0 (overlong forms and surrogates count as invalid). */
static size_t log_utf8_len(const unsigned char *s)
{
	if (s[0] < 0x80)
		return 1;
	size_t n = s[0] >= 0xc2 && s[0] <= 0xdf ? 2 : s[0] >= 0xe0 && s[0] <= 0xef ? 3 : s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : 0;
	for (size_t i = 1; i < n; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	if ((n == 3 && ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] >= 0xa0))) ||
	    (n == 4 && ((s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] >= 0x90))))
		return 0;
	return n;
}

/* A JSON string: escapes as JSON wants, and a byte that is not part of valid UTF-8 (a client's) becomes
 * U+FFFD, so every line stays valid JSON whatever a client sent. */
static void log_json_string(FILE *f, const char *str)
{
	const unsigned char *s = (const unsigned char *)str;

	fputc('"', f);
	while (*s) {
		size_t n = log_utf8_len(s);
		if (n == 0) {
			fputs("\\ufffd", f);
			s++;
		} else if (*s == '"' || *s == '\\') {
			fprintf(f, "\\%c", *s++);
		} else if (*s < 0x20 || *s == 0x7f) {
			fprintf(f, "\\u%04x", *s++);
		} else {
			fwrite(s, 1, n, f);
			s += n;
		}
	}
	fputc('"', f);
}

/* A client's bytes (a user name, a parameter) must not start a line of their own in a text log: control
 * characters become '?', so every line is one event and none can be forged. */
static void log_escape_controls(char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			*s = '?';
}

static void log_vline(enum log_level l, const struct conn *c, const char *fmt, va_list ap)
{
	struct timeval tv;
	struct tm tm;
	char ts[40], msg[1024], tl[TIMELINE_BRANCH_MAX + 16] = "";
	FILE *f = log_out ? log_out : stderr;

	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	size_t n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts + n, sizeof(ts) - n, ".%03dZ", (int)(tv.tv_usec / 1000));
	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (!log_json)
		log_escape_controls(msg);
	bool routed = c && c->route.app;
	if (routed)
		timeline_label(&c->route.id.tl, tl, sizeof(tl));
	if (log_syslog) { /* syslog stamps the time and the level itself */
		char line[1600];
		if (!c)
			snprintf(line, sizeof(line), "%s", msg);
		else if (routed)
			snprintf(line, sizeof(line), "C-%llu %s/%s %s %s", (unsigned long long)c->id, c->route.id.app, tl,
				 c->peer, msg);
		else
			snprintf(line, sizeof(line), "C-%llu %s %s", (unsigned long long)c->id, c->peer, msg);
		log_syslog_line(l, line);
		return;
	}
	if (!log_json) {
		if (!c)
			fprintf(f, "%s %s %s\n", ts, log_names[l], msg);
		else if (routed)
			fprintf(f, "%s %s C-%llu %s/%s %s %s\n", ts, log_names[l], (unsigned long long)c->id,
				c->route.id.app, tl, c->peer, msg);
		else
			fprintf(f, "%s %s C-%llu %s %s\n", ts, log_names[l], (unsigned long long)c->id, c->peer, msg);
		return;
	}
	fprintf(f, "{\"ts\":\"%s\",\"level\":\"%s\"", ts, log_names[l]);
	if (c) {
		fprintf(f, ",\"conn\":%llu,\"peer\":", (unsigned long long)c->id);
		log_json_string(f, c->peer);
	}
	if (routed) {
		fprintf(f, ",\"app\":");
		log_json_string(f, c->route.id.app);
		fprintf(f, ",\"timeline\":");
		log_json_string(f, tl);
	}
	fprintf(f, ",\"msg\":");
	log_json_string(f, msg);
	fprintf(f, "}\n");
}

void log_msg(enum log_level l, const char *fmt, ...)
{
	va_list ap;

	if (l < log_min)
		return;
	va_start(ap, fmt);
	pthread_mutex_lock(&log_mu);
	log_vline(l, NULL, fmt, ap);
	pthread_mutex_unlock(&log_mu);
	va_end(ap);
}

void log_conn(enum log_level l, const struct conn *c, const char *fmt, ...)
{
	va_list ap;

	if (l < log_min)
		return;
	va_start(ap, fmt);
	pthread_mutex_lock(&log_mu);
	log_vline(l, c, fmt, ap);
	pthread_mutex_unlock(&log_mu);
	va_end(ap);
}
