/* Logging to stderr, a logfile and syslog, with a timestamp and level. */
#include "daemon/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* After conf/config.h: syslog.h's LOG_WARNING, LOG_INFO and LOG_DEBUG macros
 * shadow LogLevel's names from here on, so this file uses them only as
 * syslog priorities. */
#include <syslog.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

LogLevel log_level = LOG_INFO;

static const char *const level_names[] = {"ERROR", "WARNING", "LOG", "DEBUG"};
static const int syslog_prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};

static int log_fd = -1;         /* logfile, -1 = none */
static bool log_stderr = true;  /* false in daemon mode */
static bool log_syslog = false; /* openlog() done */
static char log_ident[65];      /* openlog keeps the pointer */

bool log_setup(const char *logfile, bool use_syslog, const char *ident, char *err, size_t errlen)
{
    int fd = -1;

    if (logfile && logfile[0]) {
        fd = open(logfile, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (fd < 0) {
            snprintf(err, errlen, "logfile \"%s\": cannot open: %s", logfile, strerror(errno));
            return false;
        }
    }
    if (log_fd >= 0)
        close(log_fd);
    log_fd = fd;
    if (log_syslog)
        closelog();
    log_syslog = use_syslog;
    if (use_syslog) {
        snprintf(log_ident, sizeof(log_ident), "%s", ident && ident[0] ? ident : "pgcoalesce");
        openlog(log_ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
    }
    return true;
}

void log_quiet_stderr(void)
{
    log_stderr = false;
}

void log_shutdown(void)
{
    if (log_fd >= 0)
        close(log_fd);
    log_fd = -1;
    if (log_syslog)
        closelog();
    log_syslog = false;
}

void log_write(LogLevel level, const char *fmt, ...)
{
    char line[2048];
    struct timeval tv;
    struct tm tm;
    va_list ap;
    int n, head;

    gettimeofday(&tv, NULL);
    localtime_r(&tv.tv_sec, &tm);
    n = snprintf(line, sizeof(line), "%04d-%02d-%02d %02d:%02d:%02d.%03d [%d] %s ",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 (int)(tv.tv_usec / 1000), (int)getpid(), level_names[level]);
    head = n;
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof(line) - 2)
        n = (int)sizeof(line) - 2;
    /* Names clients chose (users, databases, application names) may hold
     * control characters: one message stays one line, and never forges another. */
    for (int i = head; i < n; i++)
        if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
            line[i] = '?';
    if (log_syslog) {
        line[n] = '\0';
        syslog(syslog_prio[level], "%s", line + head); /* syslog adds time and pid */
    }
    line[n++] = '\n';
    /* One write per line so lines from several workers never interleave. */
    if (log_stderr && write(STDERR_FILENO, line, (size_t)n) < 0) {
        /* nowhere left to report it */
    }
    if (log_fd >= 0 && write(log_fd, line, (size_t)n) < 0) {
        /* nowhere left to report it */
    }
}
