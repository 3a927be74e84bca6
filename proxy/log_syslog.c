/*
 * log_syslog: log_file = syslog.  A file of its own because <syslog.h> defines LOG_INFO and friends,
 * which are the names of pglane's own log levels.
 */
#include <syslog.h>

void log_syslog_open(void);
void log_syslog_close(void);
void log_syslog_line(int level, const char *line);

void log_syslog_open(void)
{
	openlog("pglane", LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

void log_syslog_close(void)
{
	closelog();
}

/* level: pglane's debug, info, warning, error as 0..3. */
void log_syslog_line(int level, const char *line)
{
	static const int prio[] = {LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERR};
	syslog(prio[level < 0 || level > 3 ? 1 : level], "%s", line);
}
