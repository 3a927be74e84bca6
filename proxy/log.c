/*
 * log: one line per event to stderr, "2026-11-29T05:10:00.123Z info C-42 demo/production 127.0.0.1:5000 ...".
 * Lines carry the connection; they never carry a password, a token or a SCRAM message.
 */
#include "proxy/proxy.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

static enum log_level log_min = LOG_INFO;
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

static void log_vline(enum log_level l, const char *prefix, const char *fmt, va_list ap)
{
	struct timeval tv;
	struct tm tm;
	char ts[32], msg[1024];

	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	fprintf(stderr, "%s.%03dZ %s %s%s\n", ts, (int)(tv.tv_usec / 1000), log_names[l], prefix, msg);
}

void log_msg(enum log_level l, const char *fmt, ...)
{
	va_list ap;

	if (l < log_min)
		return;
	va_start(ap, fmt);
	log_vline(l, "", fmt, ap);
	va_end(ap);
}

void log_conn(enum log_level l, const struct conn *c, const char *fmt, ...)
{
	char prefix[512], tl[TIMELINE_BRANCH_MAX + 16];
	va_list ap;

	if (l < log_min)
		return;
	if (c->route.app) {
		timeline_label(&c->route.id.tl, tl, sizeof(tl));
		snprintf(prefix, sizeof(prefix), "C-%llu %s/%s %s ", (unsigned long long)c->id, c->route.id.app, tl,
			 c->peer);
	} else {
		snprintf(prefix, sizeof(prefix), "C-%llu %s ", (unsigned long long)c->id, c->peer);
	}
	va_start(ap, fmt);
	log_vline(l, prefix, fmt, ap);
	va_end(ap);
}
