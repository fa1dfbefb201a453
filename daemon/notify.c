/*
 * Living with a service manager: sd_notify (READY, RELOADING, STOPPING,
 * STATUS, WATCHDOG), listen sockets passed by systemd (socket activation),
 * the pidfile, and daemon mode (-d) for hosts without systemd.
 */
#include "daemon/log.h"
#include "daemon/ops.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

/* "clients: 3 (active 1, waiting 0), servers: 2" and the run state. */
static void notify_status_text(const Ops *ops, char *buf, size_t len)
{
    int clients, active, waiting, servers;

    ops_count(ops->w, &clients, &active, &waiting, &servers);
    snprintf(buf, len, "clients: %d (active %d, waiting %d), servers: %d%s", clients, active,
             waiting, servers,
             ops->shutdown      ? "; shutting down"
             : ops->paused      ? "; paused"
             : ops->npaused_dbs ? "; some databases paused"
                                : "");
}

void notify_ready(const Ops *ops)
{
    char status[256];

    notify_status_text(ops, status, sizeof(status));
    sd_notifyf(0, "READY=1\nSTATUS=%s", status);
}

void notify_reloading(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading the configuration",
               (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
}

void notify_stopping(void)
{
    sd_notify(0, "STOPPING=1\nSTATUS=shutting down");
}

void notify_status(const Ops *ops)
{
    char status[256];

    if (!getenv("NOTIFY_SOCKET"))
        return;
    notify_status_text(ops, status, sizeof(status));
    sd_notifyf(0, "STATUS=%s", status);
}

void notify_watchdog(void)
{
    sd_notify(0, "WATCHDOG=1");
}

double notify_watchdog_interval(void)
{
    uint64_t usec = 0;

    /* Ping at half the interval systemd allows. */
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0)
        return (double)usec / 2e6;
    return 0;
}

/* "127.0.0.1:6432" or "unix socket /run/x" for log lines. */
static void sock_describe(int fd, char *buf, size_t len)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char ip[INET6_ADDRSTRLEN] = "?";

    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) {
        snprintf(buf, len, "fd %d", fd);
        return;
    }
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
        snprintf(buf, len, "%s:%d", ip, ntohs(sin->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
        snprintf(buf, len, "[%s]:%d", ip, ntohs(sin6->sin6_port));
    } else if (ss.ss_family == AF_UNIX) {
        snprintf(buf, len, "unix socket %s", ((const struct sockaddr_un *)&ss)->sun_path);
    } else {
        snprintf(buf, len, "fd %d", fd);
    }
}

int notify_take_sockets(Ops *ops)
{
    const Config *cfg = ops->w->cfg;
    int n = sd_listen_fds(1), clients = 0;
    char what[256];

    if (n < 0) {
        log_error("sockets from systemd (LISTEN_FDS): %s", strerror(-n));
        return -1;
    }
    for (int fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + n; fd++) {
        sock_describe(fd, what, sizeof(what));
        if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
            log_warning("ignoring %s from systemd: not a listening stream socket", what);
            close(fd);
            continue;
        }
        evutil_make_socket_nonblocking(fd);
        evutil_make_socket_closeonexec(fd);
        if (cfg->admin_port > 0 && ops->admin_fd < 0 &&
            sd_is_socket_inet(fd, AF_UNSPEC, SOCK_STREAM, 1, (uint16_t)cfg->admin_port) > 0) {
            ops->admin_fd = fd;
            log_info("admin port: %s, from systemd", what);
            continue;
        }
        strncat(what, ", from systemd", sizeof(what) - strlen(what) - 1);
        if (!worker_adopt_listener(ops->w, fd, what))
            return -1;
        clients++;
    }
    if (clients > 0)
        log_info("client sockets come from systemd; listen_addr, listen_port and "
                 "unix_socket_dir are not used");
    return clients;
}

/* The pid in a pidfile, or 0. */
static long pidfile_read(const char *path)
{
    FILE *f = fopen(path, "r");
    long pid = 0;

    if (!f)
        return 0;
    if (fscanf(f, "%ld", &pid) != 1 || pid <= 0)
        pid = 0;
    fclose(f);
    return pid;
}

bool pidfile_write(Ops *ops, const char *path, char *err, size_t errlen)
{
    long other;
    char buf[32];
    int fd, n;

    if (!path || !path[0])
        return true;
    other = pidfile_read(path);
    if (other > 0 && other != (long)getpid() && (kill((pid_t)other, 0) == 0 || errno == EPERM)) {
        snprintf(err, errlen, "pidfile %s: pgcoalesce already runs as pid %ld", path, other);
        return false;
    }
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "pidfile %s: cannot create: %s", path, strerror(errno));
        return false;
    }
    n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
    if (write(fd, buf, (size_t)n) != n) {
        snprintf(err, errlen, "pidfile %s: cannot write: %s", path, strerror(errno));
        close(fd);
        unlink(path);
        return false;
    }
    close(fd);
    free(ops->pidfile);
    ops->pidfile = strdup(path);
    return true;
}

void pidfile_remove(Ops *ops)
{
    if (!ops->pidfile)
        return;
    /* Only our own: a successor may have written its pid already. */
    if (pidfile_read(ops->pidfile) == (long)getpid())
        unlink(ops->pidfile);
    free(ops->pidfile);
    ops->pidfile = NULL;
}

/* Write end of the pipe the waiting parent reads; -1 when not daemonized. */
static int daemon_pipe = -1;

bool daemon_start(char *err, size_t errlen)
{
    int fds[2], null;
    pid_t pid;

    if (pipe2(fds, O_CLOEXEC) != 0) {
        snprintf(err, errlen, "daemon mode: pipe: %s", strerror(errno));
        return false;
    }
    pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "daemon mode: fork: %s", strerror(errno));
        return false;
    }
    if (pid > 0) {
        /* The parent exits with the daemon's verdict on its start. */
        char c = 0;
        ssize_t n;
        close(fds[1]);
        do
            n = read(fds[0], &c, 1);
        while (n < 0 && errno == EINTR);
        if (n == 1 && c == '1')
            _exit(0);
        fprintf(stderr, "pgcoalesce: the daemon did not start; see its logfile or syslog\n");
        _exit(1);
    }
    close(fds[0]);
    setsid();
    pid = fork(); /* not a session leader: can never get a controlling tty */
    if (pid < 0)
        _exit(1);
    if (pid > 0)
        _exit(0);
    if (chdir("/") != 0) {
        /* paths were made absolute before; nothing depends on the cwd */
    }
    null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, STDIN_FILENO);
        dup2(null, STDOUT_FILENO);
        dup2(null, STDERR_FILENO);
        if (null > STDERR_FILENO)
            close(null);
    }
    log_quiet_stderr();
    daemon_pipe = fds[1];
    return true;
}

void daemon_ready(bool ok)
{
    if (daemon_pipe < 0)
        return;
    if (write(daemon_pipe, ok ? "1" : "0", 1) != 1) {
        /* the parent is gone; nothing to tell */
    }
    close(daemon_pipe);
    daemon_pipe = -1;
}
