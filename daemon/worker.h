/*
 * The objects of one event loop: the worker, its pools, clients and server
 * connections. All per-loop state lives in Worker so that several workers
 * can run in one process; the only globals are configuration and logging.
 */
#ifndef PGC_DAEMON_WORKER_H
#define PGC_DAEMON_WORKER_H

#include <event2/event.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "conf/config.h"
#include "daemon/io.h"
#include "daemon/list.h"
#include "daemon/params.h"
#include "daemon/prepared.h"
#include "proto/auth.h"
#include "proto/pkt.h"

typedef struct Worker Worker;
typedef struct Pool Pool;
typedef struct Client Client;
typedef struct Server Server;
struct ClientOrm;
struct OrmWorker;
struct CacheWorker;
struct CacheClient;
struct Catalog;

/* Every client is on exactly one list; the state names the list. */
typedef enum {
    CL_FREE = 0,
    CL_LOGIN,   /* startup and auth; worker->login_clients */
    CL_IDLE,    /* logged in, no server; pool->idle_clients */
    CL_WAITING, /* wants a server; pool->waiting_clients */
    CL_ACTIVE,  /* linked to a server; pool->active_clients */
    CL_LINGER,  /* sent a fatal error, draining input until EOF; worker->linger_clients */
    CL_CLOSING, /* torn down, freed after the callback; worker->just_free_clients */
} ClientState;

/* Every server connection is on exactly one list. */
typedef enum {
    SV_FREE = 0,
    SV_CONNECTING, /* connect, startup, auth; pool->connecting_servers */
    SV_IDLE,       /* ready for a client; pool->idle_servers */
    SV_ACTIVE,     /* linked to a client; pool->active_servers */
    SV_TESTING,    /* pre-ping or reset query in flight; pool->testing_servers */
    SV_CLOSING,    /* torn down; worker->just_free_servers */
} ServerState;

/* Login progress of a client inside CL_LOGIN. */
typedef enum {
    LOGIN_STARTUP,      /* waiting for the startup packet */
    LOGIN_PASSWORD,     /* sent AuthenticationMD5Password */
    LOGIN_SASL_INITIAL, /* sent AuthenticationSASL */
    LOGIN_SASL_FINAL,   /* sent SASLContinue */
    LOGIN_WELCOME,      /* authenticated, waiting for the pool's first server */
} LoginPhase;

/* Histogram buckets of PoolStats (bounds in daemon/stats.c); the last is +Inf. */
#define STATS_HIST_BUCKETS 15

/* Pool statistics: plain counters, one writer (the worker), no locks. */
typedef struct PoolStats {
    uint64_t xact_count;
    uint64_t query_count;
    uint64_t bytes_in;  /* client to server */
    uint64_t bytes_out; /* server to client */
    uint64_t wait_usec; /* total time clients waited for a server */
    uint64_t max_wait_usec;
    uint64_t timeouts;       /* pool_timeout errors */
    uint64_t recycled;       /* closed by pool_recycle */
    uint64_t ping_failures;  /* pre-ping found a dead connection */
    uint64_t session_resets; /* DISCARD ALL after a client left session state (transaction mode) */
    uint64_t connect_failures;
    uint64_t query_usec;                     /* total time of query_hist's queries */
    uint64_t query_hist[STATS_HIST_BUCKETS]; /* request to ReadyForQuery */
    uint64_t wait_hist[STATS_HIST_BUCKETS];  /* waits for a server, as wait_usec */
    uint64_t n1_runs;                        /* N+1 runs detected (n1_threshold reached) */
} PoolStats;

struct Pool {
    ListNode node; /* worker->pools */
    Worker *w;
    char *db_name;   /* as the client named it */
    char *user_name; /* as the client logged in */
    /* upstream target, copied from the [databases] entry */
    char *host;
    int port;
    char *dbname;
    char *server_user;
    char *server_password; /* NULL: none known */
    int pool_size;
    int max_overflow;
    PoolMode mode;

    List idle_clients;
    List waiting_clients;
    List active_clients;
    List connecting_servers;
    List idle_servers;
    List active_servers;
    List testing_servers;

    ParamSet welcome; /* parameters reported by the first server login */
    bool have_welcome;
    double last_failure; /* when pre-ping last found a dead server */
    double last_connect_error_at;
    double connect_backoff; /* seconds before the next connection after a failed one; 0 = none */
    double retry_at;        /* no new connection before this (now_sec) */
    char last_connect_error[256];
    PoolStats stats;
    bool paused;             /* PAUSE of its database; see pool_paused() */
    struct Catalog *catalog; /* table facts for the cache (daemon/catalog.h); NULL until used */
    struct CacheRepl *cache_repl; /* its database's replication stream (daemon/cache.c), or NULL */
};

struct Client {
    ListNode node;
    ClientState state;
    LoginPhase phase;
    Worker *w;
    Pool *pool;
    Server *server;
    Io io;
    char addr[64];
    char *user;
    char *database;
    ParamSet startup;  /* parameters from the startup packet */
    ParamSet params;   /* what the session should see: welcome + startup + SETs */
    ClientStmts stmts; /* named prepared statements (transaction mode) */
    int32_t cancel_pid;
    int32_t cancel_key;
    uint8_t md5_salt[4];
    ScramServer *scram;
    double connect_time;
    double wait_since; /* when it started waiting for a server */
    uint32_t pkt_left; /* bytes of the current message still to forward */
    bool discarding;   /* an error was sent for a query that never ran: drop until Query/Sync */
    double linger_since;
    uint64_t reads;            /* read events so far: the janitor's sign of activity */
    double idle_since;         /* janitor: idle in a transaction since (0: not idle) */
    uint64_t idle_reads;       /* reads when idle_since was set */
    double stall_since;        /* janitor: output over the cap and unread since (0: not) */
    uint64_t stall_sent;       /* bytes it had been sent at stall_since */
    struct ClientOrm *orm;     /* shapes and N+1 session (daemon/orm_feed.h); NULL until used */
    bool session_warned;       /* logged that its session state does not survive transaction mode */
    struct CacheClient *cache; /* identity-map cache state (daemon/cache.c); NULL until used */
};

/*
 * What the server still owes: one item per message that gets a completion,
 * so that answers the proxy gives itself (or hides) land at the right place
 * in the client's stream.
 */
typedef enum {
    RQ_QUERY,        /* Query or FunctionCall: done at ReadyForQuery */
    RQ_SYNC,         /* Sync: done at ReadyForQuery */
    RQ_PARSE,        /* forwarded Parse: ParseComplete */
    RQ_BIND,         /* BindComplete */
    RQ_DESCRIBE,     /* RowDescription or NoData */
    RQ_EXECUTE,      /* CommandComplete, EmptyQueryResponse or PortalSuspended */
    RQ_CLOSE,        /* CloseComplete */
    RQ_HIDDEN_PARSE, /* the proxy's own Parse: ParseComplete swallowed */
    RQ_HIDDEN_CLOSE, /* the proxy's own Close: CloseComplete swallowed */
    RQ_FAKE_PARSE,   /* the client's Parse answered by the proxy */
    RQ_FAKE_CLOSE,   /* the client's Close answered by the proxy */
    RQ_INTERNAL,     /* the proxy's own simple query: all swallowed up to ReadyForQuery */
    RQ_PARSE_DUP,    /* client's Parse of a name it already has: the server's error is replaced */
    RQ_FAKE_DEALLOCATE, /* client's DEALLOCATE of its own statement: answered by the proxy */
    RQ_BATCH_SAVEPOINT, /* the proxy's SAVEPOINT before a batch in a transaction (batch.c) */
    RQ_BATCH_TYPES,     /* the proxy's Parse/Describe/Close/Sync learning a key type (batch.c) */
    RQ_BATCH,           /* the proxy's batched statement, up to its ReadyForQuery (batch.c) */
    RQ_CACHE_FILL,      /* the client's statement run by the cache for a fill (cache.c) */
} RqKind;

/* RQ_QUERY flags: the query resets session parameters (client_name names
 * the one parameter for RQ_RESET_ONE). */
#define RQ_RESET_ALL 0x1
#define RQ_RESET_ONE 0x2

typedef struct RqItem {
    RqKind kind;
    uint8_t flags;
    uint8_t n1;        /* ORM_RQ_* (daemon/orm_feed.h): 0 unless the ORM layer follows this item */
    uint32_t n1_seq;   /* with ORM_RQ_TRACK: the client's statement it carries */
    PreparedStmt *ps;  /* Parse items: the statement (a reference) */
    char *client_name; /* RQ_PARSE, RQ_PARSE_DUP: the client's statement name; RQ_RESET_ONE: the
                          parameter */
} RqItem;

struct Server {
    ListNode node;
    ServerState state;
    Worker *w;
    Pool *pool;
    Client *client;
    Io io;
    int32_t be_pid;
    int32_t be_key;
    ParamSet params; /* values this backend currently has */
    double connect_time;
    double idle_since; /* last time it became idle */
    double recycle_at; /* close when next idle after this; 0 = never */
    ScramClient *scram;
    bool logged_in;
    uint32_t pkt_left; /* bytes of the current message still to forward */
    char tx_status;    /* from the last ReadyForQuery */
    RqItem *rq;        /* answers still due from the server, oldest first (a ring) */
    uint32_t rq_head;
    uint32_t rq_len;
    uint32_t rq_cap;
    bool skip_until_sync; /* the server reported an error and ignores messages up to Sync */
    ServerStmts stmts;    /* named statements prepared on this backend (transaction mode) */
    bool dirty;           /* extended-protocol messages forwarded since the last Sync */
    bool copy_in;         /* in COPY FROM STDIN: client sends data */
    bool internal_error;  /* one of the proxy's own queries failed */
    bool close_when_idle;
    bool discard_on_release;      /* its client left session state behind: DISCARD ALL first */
    struct sockaddr_storage addr; /* where it connected, for CancelRequest */
    socklen_t addrlen;
    struct evdns_getaddrinfo_request *dns_req;
    enum { SV_TLS_NONE, SV_TLS_ASKED, SV_TLS_HANDSHAKE } tls_phase;
    char fail_sqlstate[6]; /* set when a failure waits for the janitor to report it */
    char fail_msg[256];
    double query_start; /* first client message not yet answered by ReadyForQuery; 0 = none */
};

struct Worker {
    struct event_base *base;
    const Config *cfg;
    struct evconnlistener **listeners;
    int nlisteners;
    struct event *janitor;
    struct event *reaper;
    struct evdns_base *dns;
    List pools;
    List login_clients;
    List linger_clients;
    List just_free_clients;
    List just_free_servers;
    int nclients;                  /* every client not yet freed, for max_client_conn */
    PktBuf scratch;                /* reused for every message the proxy builds */
    PsRegistry prepared;           /* every named statement any client prepared */
    struct ssl_ctx_st *client_tls; /* NULL: client_tls_sslmode = disable */
    struct ssl_ctx_st *server_tls; /* NULL: server_tls_sslmode = disable */
    bool shutting_down;
    struct Ops *ops;           /* admin port, signals, reload, shutdown: daemon/ops.h */
    struct OrmWorker *orm;     /* shapes, N+1 patterns, statement statistics: daemon/orm_feed.h */
    struct CacheWorker *cache; /* identity-map cache: daemon/cache.h; NULL when off */
    double turn_now;           /* now_sec() of this turn of the event loop, when turn_now_set */
    bool turn_now_set;
};

double now_sec(void);

/*
 * now_sec() as of the event loop's current turn: read once per turn (one
 * epoll_wait and the callbacks it wakes), for the timings taken several
 * times per statement (query and wait times, idle_since, N+1 statement
 * times), which need no finer grain than a turn and cost a clock read each.
 * Deadlines and timeouts read now_sec() itself.
 */
static inline double worker_now(Worker *w)
{
    if (!w->turn_now_set) {
        w->turn_now = now_sec();
        w->turn_now_set = true;
    }
    return w->turn_now;
}

/* worker.c */
bool worker_init(Worker *w, const Config *cfg) __attribute__((warn_unused_result));
bool worker_listen(Worker *w) __attribute__((warn_unused_result));
/* Accept clients on fd, a socket already listening (from systemd). */
bool worker_adopt_listener(Worker *w, int fd, const char *what) __attribute__((warn_unused_result));
void worker_run(Worker *w);
void worker_free(Worker *w);
void worker_schedule_reap(Worker *w);
Pool *worker_find_pool(Worker *w, const char *db, const char *user, const char **err);
/* Begin a fresh scratch message buffer. */
PktBuf *worker_pkt(Worker *w);

/* tls.c */
/* (Re)build the TLS contexts from cfg; on error keeps the old ones. */
bool worker_load_tls(Worker *w, const Config *cfg, char *err, size_t len)
    __attribute__((warn_unused_result));
void worker_free_tls(Worker *w);
struct ssl_st *tls_new_server_conn(Worker *w, const char *host, ServerTlsMode mode);
struct ssl_st *tls_new_client_conn(Worker *w);

/* client.c */
void client_accept(Worker *w, int fd, const struct sockaddr *sa, int salen);
void client_close(Client *c, const char *reason);
void client_error_close(Client *c, const char *sqlstate, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void client_set_state(Client *c, ClientState st);
/* The pool linked a server to a waiting client: start forwarding. */
void client_linked(Client *c);
/* pool_timeout ran out while waiting. */
void client_wait_timeout(Client *c);
/* The pool's first server login finished: send the welcome. */
void client_welcome(Client *c);
/* No server could be had: a logging-in client is refused, a waiting one
 * gets an error for its query and stays. */
void client_server_failed(Client *c, const char *sqlstate, const char *message);
/* Its server went back to the pool: carry on with input already received. */
void client_resume(Client *c);
/* Something the client waited for without a ReadyForQuery (a batch) is done: read on. */
void client_continue(Client *c);
void client_free(Client *c);
void client_check_login_timeout(Client *c, double now);
/* Janitor, for a client linked to a server: idle_transaction_timeout and
 * client_write_timeout. May close c. */
void client_check_linked(Client *c, double now);
Client *client_find_cancel(Worker *w, int32_t pid, int32_t key);

/* server.c */
Server *server_connect(Pool *p);
void server_close(Server *s, const char *reason);
void server_set_state(Server *s, ServerState st);
/* Forward what the server sent to its client. */
void server_relay(Server *s);
/* Pre-ping: send an empty query; the pool hears back through pool_server_tested. */
void server_ping(Server *s);
/* Reset before reuse after its client left (ROLLBACK/DISCARD ALL), then idle. */
void server_reset(Server *s, bool discard_all);
/* Bring the backend's parameters to the client's before its first message. */
void server_sync_params(Server *s, Client *c);
void server_free(Server *s);
/* Read one whole message from the front of s's input: 1 and type/body
 * (valid until the next drain), 0 when incomplete, -1 on a bad frame. */
int server_whole_message(Server *s, char *type, const uint8_t **body, uint32_t *len);
/* A ParameterStatus: note the value on the backend and on its client.
 * Returns true when the client's value changed. */
bool server_note_param(Server *s, const uint8_t *body, uint32_t len);
/* Send a message the proxy built; closes s if building it failed. */
void server_send(Server *s, PktBuf *b);
/* The same, but leave it queued to go with the client's next bytes. */
void server_queue(Server *s, PktBuf *b);
/* Idle input: parameters and notices are fine, anything else ends s. */
void server_idle_input(Server *s);

/* relay.c: the response queue */
bool rq_push(Server *s, RqKind kind, PreparedStmt *ps, const char *client_name)
    __attribute__((warn_unused_result));
void rq_clear(Server *s);
/* The head item is done. */
void rq_pop_head(Server *s);
static inline RqItem *rq_head(const Server *s)
{
    return s->rq_len ? &s->rq[s->rq_head] : NULL;
}
static inline RqItem *rq_tail(const Server *s)
{
    return s->rq_len ? &s->rq[(s->rq_head + s->rq_len - 1) % s->rq_cap] : NULL;
}
/* Nothing but the proxy's own simple queries (a parameter sync, a reset) is due from s. */
static inline bool rq_quiet(const Server *s)
{
    for (uint32_t i = 0; i < s->rq_len; i++)
        if (s->rq[(s->rq_head + i) % s->rq_cap].kind != RQ_INTERNAL)
            return false;
    return true;
}
/* May the server go back to the pool now? */
bool server_releasable(const Server *s);
/* Give a releasable server back and let its client carry on. */
void server_end_of_transaction(Server *s);
/* Emit answers the proxy owes the client that are now due (client side). */
void server_settle(Server *s);
/*
 * Make sure ps is prepared on s. For the client's own Parse (client_name set)
 * the client gets ParseComplete either way: from the proxy when s already has
 * it, else from the server. Otherwise a hidden Parse is sent when needed.
 * Returns false if s was closed.
 */
bool server_ensure_prepared(Server *s, PreparedStmt *ps, const char *client_name);
/* Report a deferred failure or a connect timeout; called by the janitor. */
void server_check_timeout(Server *s, double now);
/* Send a CancelRequest for the backend's current query. */
void server_cancel(Server *s);

/* pool.c */
Pool *pool_new(Worker *w, const char *db, const char *user, const DbConf *dbc);
void pool_free(Pool *p);
/* A client needs a server: link one now, or queue it. */
void pool_checkout(Pool *p, Client *c);
/* A linked server finished its transaction (or the session ended). */
void pool_release(Server *s);
/* A server finished connecting/resetting/testing and is usable. */
void pool_server_ready(Server *s);
/* A server connection failed before it was usable. */
void pool_server_failed(Pool *p, const char *sqlstate, const char *message);
void pool_janitor(Pool *p, double now);
/* Open connections needed by waiting clients and min pool. */
void pool_grow(Pool *p);
int pool_server_count(const Pool *p);

/* ops.c: may the pool hand out servers? Not while paused or shutting down. */
bool pool_paused(const Pool *p);
/* ops.c: periodic work of the operations side; called by the janitor. */
void ops_tick(Worker *w, double now);
/* stats.c: hot-path statistics, no allocation */
void stats_observe(uint64_t *hist, uint64_t usec);
/* Append s (NULL: empty) as a JSON string literal. */
struct evbuffer;
void stats_json_string(struct evbuffer *out, const char *s);
/* A client message is forwarded to s: starts the query clock if idle. */
void stats_query_begin(Server *s);
/* s sent ReadyForQuery: the query clock stops. */
void stats_query_end(Server *s);

#endif
