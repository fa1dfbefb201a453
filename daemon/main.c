/* pgcoalesce: command line, start-up and the main loop (signals: daemon/signals.c). */
#include "conf/config.h"
#include "daemon/log.h"
#include "daemon/ops.h"
#include "daemon/worker.h"

#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void usage(FILE *out)
{
    fprintf(out,
            "pgcoalesce %s: a PostgreSQL connection pooler that understands ORM traffic\n"
            "\n"
            "Usage:\n"
            "  pgcoalesce -c FILE            run with a config file (foreground, logs to "
            "stderr)\n"
            "  pgcoalesce -d -c FILE         the same as a daemon in the background (needs\n"
            "                                logfile or syslog; see pidfile)\n"
            "  pgcoalesce --check -c FILE    validate a config file and exit\n"
            "  pgcoalesce --upstream URL [--listen HOST:PORT] [--set NAME=VALUE]...\n"
            "                                quick start in front of one PostgreSQL\n"
            "                                (URL: postgresql://user:pass@host:port/db);\n"
            "                                --set gives any setting of the config file\n"
            "                                (e.g. --set cache_url=redis://127.0.0.1:6379)\n"
            "  pgcoalesce --version | --help\n",
            PGC_VERSION);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"check", no_argument, NULL, 'k'},
                                         {"upstream", required_argument, NULL, 'u'},
                                         {"listen", required_argument, NULL, 'l'},
                                         {"version", no_argument, NULL, 'V'},
                                         {"help", no_argument, NULL, 'h'},
                                         {"daemon", no_argument, NULL, 'd'},
                                         {"set", required_argument, NULL, 's'},
                                         {NULL, 0, NULL, 0}};
    const char *sets[64];
    int nsets = 0;
    const char *config_path = NULL, *upstream = NULL, *listen_at = NULL;
    bool check = false, daemonize = false;
    char err[1024];
    Config *cfg;
    Worker w;
    Ops *ops;
    int opt;

    io_global_init(); /* before anything of libevent */
    while ((opt = getopt_long(argc, argv, "c:dhV", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config_path = optarg;
            break;
        case 'd':
            daemonize = true;
            break;
        case 'k':
            check = true;
            break;
        case 'u':
            upstream = optarg;
            break;
        case 'l':
            listen_at = optarg;
            break;
        case 's':
            if (!strchr(optarg, '=') || nsets == (int)(sizeof(sets) / sizeof(sets[0]))) {
                fprintf(stderr, "pgcoalesce: --set takes NAME=VALUE (at most 64 of them)\n");
                return 2;
            }
            sets[nsets++] = optarg;
            break;
        case 'V':
            printf("pgcoalesce %s\n", PGC_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "pgcoalesce: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (!config_path == !upstream) {
        fprintf(stderr, "pgcoalesce: give either -c FILE or --upstream URL\n");
        usage(stderr);
        return 2;
    }
    if ((listen_at || nsets) && !upstream) {
        fprintf(stderr, "pgcoalesce: --listen and --set go with --upstream; with -c FILE put "
                        "the settings in the file\n");
        return 2;
    }
    cfg = config_path ? config_load(config_path, err, sizeof(err))
                      : config_from_url(upstream, listen_at, err, sizeof(err));
    if (!cfg) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    for (int i = 0; i < nsets; i++) {
        char name[128];
        const char *eq = strchr(sets[i], '=');
        snprintf(name, sizeof(name), "%.*s", (int)(eq - sets[i]), sets[i]);
        if (!config_set(cfg, name, eq + 1, err, sizeof(err))) {
            fprintf(stderr, "pgcoalesce: --set %s: %s\n", sets[i], err);
            config_free(cfg);
            return 1;
        }
    }
    if (check) {
        printf("%s: configuration is valid\n", config_path ? config_path : "--upstream");
        config_free(cfg);
        return 0;
    }
    log_level = cfg->log_level;
    if (!log_setup(cfg->logfile, cfg->syslog, cfg->syslog_ident, err, sizeof(err))) {
        fprintf(stderr, "pgcoalesce: %s\n", err);
        config_free(cfg);
        return 1;
    }
    if (daemonize) {
        if (!cfg->logfile[0] && !cfg->syslog) {
            fprintf(stderr, "pgcoalesce: -d needs logfile or syslog = on in the config file; "
                            "a daemon has no stderr\n");
            config_free(cfg);
            return 1;
        }
        if (!daemon_start(err, sizeof(err))) {
            fprintf(stderr, "pgcoalesce: %s\n", err);
            config_free(cfg);
            return 1;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    srandom((unsigned)time(NULL) ^ (unsigned)getpid());
    if (!worker_init(&w, cfg)) {
        log_error("could not set up the event loop");
        return 1;
    }
    ops = ops_new(&w, config_path, daemonize);
    if (!ops || !ops_start(ops)) {
        ops_free(ops);
        worker_free(&w);
        config_free(cfg);
        return 1;
    }
    log_info("pgcoalesce %s started", PGC_VERSION);
    daemon_ready(true);
    worker_run(&w);
    ops_free(ops);
    /* A reload may have replaced the Config: free the one in use now. */
    cfg = (Config *)w.cfg;
    worker_free(&w);
    io_global_free();
    config_free(cfg);
    log_info("pgcoalesce stopped");
    log_shutdown();
    return 0;
}
