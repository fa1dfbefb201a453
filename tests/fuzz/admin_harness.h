/*
 * The admin port without a socket, for fuzz_admin.c and fuzz_http.c: a
 * real Worker and Ops built from a config file in a temporary directory
 * (trust logins, admin_users = admin, stats_users = stats, one pool "app"
 * whose server is a unix socket that does not exist, so nothing ever
 * connects), and AdminConns made with admin_conn_new over an eventfd. Input
 * goes into a->io.in and a->io.handler(a, IO_READ) runs as the event loop
 * would; what the connection answers stays in a->io.out (send on an
 * eventfd fails), where the targets check and drain it. The event loop
 * itself never runs.
 *
 * Not reached this way: accepting (admin_on_accept), socket errors and
 * partial writes, the timeouts of admin_tick, and TLS.
 */
#ifndef PGC_TESTS_FUZZ_ADMIN_HARNESS_H
#define PGC_TESTS_FUZZ_ADMIN_HARNESS_H

#include <sys/eventfd.h>
#include <unistd.h>

#include "daemon/admin.h"
#include "daemon/log.h"
#include "daemon/ops.h"
#include "daemon/worker.h"
#include "tests/fuzz/fuzz.h"

static Worker harness_worker;
static Ops *harness_ops;
static char harness_dir[64], harness_ini[96];

static const char harness_config[] = "[pgcoalesce]\n"
                                     "listen_addr = 127.0.0.1\n"
                                     "listen_port = 6432\n"
                                     "admin_port = 6433\n"
                                     "auth_type = trust\n"
                                     "admin_users = admin\n"
                                     "stats_users = stats\n"
                                     "log_level = error\n"
                                     "[databases]\n"
                                     "app = host=/nonexistent-pgc-fuzz port=5432 dbname=app\n"
                                     "* = host=/nonexistent-pgc-fuzz port=5432\n";

static void harness_cleanup(void)
{
    unlink(harness_ini);
    rmdir(harness_dir);
}

static void harness_init(void)
{
    char err[1024];
    Config *cfg;
    FILE *fp;

    log_level = LOG_ERROR;
    snprintf(harness_dir, sizeof(harness_dir), "%s/pgc-fuzz-admin-XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (!mkdtemp(harness_dir))
        abort();
    snprintf(harness_ini, sizeof(harness_ini), "%s/pgcoalesce.ini", harness_dir);
    atexit(harness_cleanup);
    fp = fopen(harness_ini, "w");
    if (!fp || fputs(harness_config, fp) < 0 || fclose(fp) != 0)
        abort();
    cfg = config_load(harness_ini, err, sizeof(err));
    if (!cfg) {
        fprintf(stderr, "admin harness: %s\n", err);
        abort();
    }
    if (!worker_init(&harness_worker, cfg))
        abort();
    harness_ops = ops_new(&harness_worker, harness_ini, false);
    if (!harness_ops || !pool_new(&harness_worker, "app", "app", config_find_db(cfg, "app")))
        abort();
}

/* A fresh connection; role ROLE_NONE starts at the first byte (ADM_SNIFF),
 * otherwise it is logged in as that role's user. */
static AdminConn *harness_conn(AdminRole role)
{
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    AdminConn *a;

    if (fd < 0)
        abort();
    a = admin_conn_new(harness_ops, fd, "fuzz");
    if (!a)
        abort();
    if (role != ROLE_NONE) {
        a->state = ADM_READY;
        a->role = role;
        a->user = strdup(role == ROLE_ADMIN ? "admin" : "stats");
        if (!a->user)
            abort();
    }
    return a;
}

/* Hand bytes to the connection as one read; false once it is closing. */
static bool harness_feed(AdminConn *a, const uint8_t *p, size_t n)
{
    if (a->state == ADM_CLOSING)
        return false;
    if (!iobuf_add(&a->io.in, p, n))
        abort();
    a->io.handler(a->io.owner, IO_READ);
    return a->state != ADM_CLOSING;
}

/* Close the connection, free it, and undo what commands changed (PAUSE,
 * SHUTDOWN) so that the next input starts from the same state. */
static void harness_done(AdminConn *a)
{
    Ops *ops = harness_ops;

    if (a->state != ADM_CLOSING)
        admin_close(a, "fuzz input done");
    admin_tick(ops, now_sec());
    ops_resume(ops, NULL);
    ops->shutdown = SHUTDOWN_NONE;
    ops->exiting = false;
    harness_worker.shutting_down = false;
}

#endif
