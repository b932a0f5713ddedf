/* log — process-wide logging for every braidfs program.
 *
 * One sink per process, chosen once by log_init() before threads start:
 * stderr (foreground tools), a file, or syslog (daemonized mounts).
 * log_msg() is thread-safe (one write(2) per line). Library code logs at
 * LOG_DEBUG; only programs and the FUSE edge log above that.
 */
#ifndef BRAIDFS_LOG_H
#define BRAIDFS_LOG_H

#include <syslog.h>

enum log_sink { LOG_SINK_STDERR, LOG_SINK_FILE, LOG_SINK_SYSLOG };

/* ident: program name; level: highest LOG_* level shown; path: for LOG_SINK_FILE. */
int log_init(const char *ident, int level, enum log_sink sink, const char *path);
void log_set_level(int level);
int log_get_level(void);
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_err(...)   log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARNING, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
