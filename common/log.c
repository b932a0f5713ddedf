#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int log_level = LOG_INFO;
static enum log_sink log_sink = LOG_SINK_STDERR;
static int log_fd = 2;
static char log_ident[32] = "braidfs";

int log_init(const char *ident, int level, enum log_sink sink, const char *path)
{
	snprintf(log_ident, sizeof(log_ident), "%s", ident ? ident : "braidfs");
	log_level = level;
	if (log_sink == LOG_SINK_FILE && log_fd > 2)
		close(log_fd);
	log_sink = sink;
	log_fd = 2;
	if (sink == LOG_SINK_FILE) {
		int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
		if (fd < 0)
			return -errno;
		log_fd = fd;
	} else if (sink == LOG_SINK_SYSLOG) {
		openlog(log_ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
	}
	return 0;
}

void log_set_level(int level)
{
	log_level = level;
}

int log_get_level(void)
{
	return log_level;
}

static const char *level_name(int level)
{
	switch (level) {
	case LOG_EMERG:
	case LOG_ALERT:
	case LOG_CRIT:
	case LOG_ERR:
		return "error";
	case LOG_WARNING:
		return "warning";
	case LOG_NOTICE:
	case LOG_INFO:
		return "info";
	default:
		return "debug";
	}
}

void log_msg(int level, const char *fmt, ...)
{
	if (level > log_level)
		return;
	int saved = errno;
	va_list ap;
	va_start(ap, fmt);
	if (log_sink == LOG_SINK_SYSLOG) {
		vsyslog(level, fmt, ap);
	} else {
		char line[2048];
		size_t n = 0;
		if (log_sink == LOG_SINK_FILE) {
			struct timespec ts;
			struct tm tm;
			clock_gettime(CLOCK_REALTIME, &ts);
			gmtime_r(&ts.tv_sec, &tm);
			n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
			n += snprintf(line + n, sizeof(line) - n, ".%03ldZ [%d] ",
				      ts.tv_nsec / 1000000, (int)getpid());
		}
		n += snprintf(line + n, sizeof(line) - n, "%s: %s: ", log_ident, level_name(level));
		if (n < sizeof(line))
			n += vsnprintf(line + n, sizeof(line) - n, fmt, ap);
		if (n >= sizeof(line) - 1)
			n = sizeof(line) - 2;
		line[n++] = '\n';
		ssize_t r = write(log_fd, line, n);
		(void)r;
	}
	va_end(ap);
	errno = saved;
}
