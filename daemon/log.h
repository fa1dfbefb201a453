/*
 * Logging: one line per event, level-filtered, with the connection's
 * identity in front when there is one.
 */
#ifndef PGC_DAEMON_LOG_H
#define PGC_DAEMON_LOG_H

#include "conf/config.h"

#include <stdbool.h>
#include <stddef.h>

extern LogLevel log_level;

void log_write(LogLevel level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * Where lines go besides stderr: a logfile (appended to, reopened by every
 * call so that a reload after log rotation starts a new file) and syslog.
 * Returns false with the reason in err, keeping the previous targets.
 */
bool log_setup(const char *logfile, bool use_syslog, const char *ident, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Stop writing to stderr (daemon mode, where it is /dev/null). */
void log_quiet_stderr(void);
void log_shutdown(void);

#define log_error(...)                                                                             \
    do {                                                                                           \
        if (log_level >= LOG_ERROR)                                                                \
            log_write(LOG_ERROR, __VA_ARGS__);                                                     \
    } while (0)
#define log_warning(...)                                                                           \
    do {                                                                                           \
        if (log_level >= LOG_WARNING)                                                              \
            log_write(LOG_WARNING, __VA_ARGS__);                                                   \
    } while (0)
#define log_info(...)                                                                              \
    do {                                                                                           \
        if (log_level >= LOG_INFO)                                                                 \
            log_write(LOG_INFO, __VA_ARGS__);                                                      \
    } while (0)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_level >= LOG_DEBUG)                                                                \
            log_write(LOG_DEBUG, __VA_ARGS__);                                                     \
    } while (0)

#endif
