/* pgcoalesce: command line, signals, and the main loop. */
#include "conf/config.h"
#include "daemon/log.h"
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
            "  pgcoalesce --check -c FILE    validate a config file and exit\n"
            "  pgcoalesce --upstream URL [--listen HOST:PORT]\n"
            "                                quick start in front of one PostgreSQL\n"
            "                                (URL: postgresql://user:pass@host:port/db)\n"
            "  pgcoalesce --version | --help\n",
            PGC_VERSION);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    Worker *w = arg;
    log_info("got signal %d, shutting down", (int)sig);
    w->shutting_down = true;
    event_base_loopexit(w->base, NULL);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"check", no_argument, NULL, 'k'},
        {"upstream", required_argument, NULL, 'u'}, {"listen", required_argument, NULL, 'l'},
        {"version", no_argument, NULL, 'V'},        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *config_path = NULL, *upstream = NULL, *listen_at = NULL;
    bool check = false;
    char err[1024];
    Config *cfg;
    Worker w;
    struct event *sigterm, *sigint;
    int opt;

    while ((opt = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config_path = optarg;
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
    if (listen_at && !upstream) {
        fprintf(stderr, "pgcoalesce: --listen goes with --upstream; set listen_addr and "
                        "listen_port in the config file instead\n");
        return 2;
    }
    cfg = config_path ? config_load(config_path, err, sizeof(err))
                      : config_from_url(upstream, listen_at, err, sizeof(err));
    if (!cfg) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (check) {
        printf("%s: configuration is valid\n", config_path ? config_path : "--upstream");
        config_free(cfg);
        return 0;
    }
    log_level = cfg->log_level;
    signal(SIGPIPE, SIG_IGN);
    srandom((unsigned)time(NULL) ^ (unsigned)getpid());
    if (!worker_init(&w, cfg)) {
        log_error("could not set up the event loop");
        return 1;
    }
    if (!worker_listen(&w)) {
        worker_free(&w);
        config_free(cfg);
        return 1;
    }
    sigterm = evsignal_new(w.base, SIGTERM, on_signal, &w);
    sigint = evsignal_new(w.base, SIGINT, on_signal, &w);
    evsignal_add(sigterm, NULL);
    evsignal_add(sigint, NULL);
    log_info("pgcoalesce %s started", PGC_VERSION);
    worker_run(&w);
    event_free(sigterm);
    event_free(sigint);
    worker_free(&w);
    config_free(cfg);
    log_info("pgcoalesce stopped");
    return 0;
}
