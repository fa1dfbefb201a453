/*
 * The configuration model: one table of settings drives loading, reload,
 * SHOW CONFIG and error messages with file:line.
 */
#ifndef PGC_CONF_CONFIG_H
#define PGC_CONF_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

typedef enum { POOL_SESSION = 0, POOL_TRANSACTION = 1 } PoolMode;
typedef enum { AUTH_TRUST = 0, AUTH_MD5 = 1, AUTH_SCRAM = 2 } AuthType;
/* TLS towards clients: disable answers SSLRequest 'N'; allow/prefer accept
 * TLS or plain; require refuses plain connections. */
typedef enum {
    CLIENT_TLS_DISABLE = 0,
    CLIENT_TLS_ALLOW,
    CLIENT_TLS_PREFER,
    CLIENT_TLS_REQUIRE
} ClientTlsMode;
/* TLS towards PostgreSQL, with libpq's meanings. */
typedef enum {
    SERVER_TLS_DISABLE = 0,
    SERVER_TLS_PREFER,
    SERVER_TLS_REQUIRE,
    SERVER_TLS_VERIFY_CA,
    SERVER_TLS_VERIFY_FULL
} ServerTlsMode;
typedef enum { TLS_V1_2 = 0, TLS_V1_3 = 1 } TlsVersion;
typedef enum { LOG_ERROR = 0, LOG_WARNING = 1, LOG_INFO = 2, LOG_DEBUG = 3 } LogLevel;
/* ORM awareness: off (no shapes at all), detect (shapes, N+1 reports and
 * statement statistics), batch (detect, and later answer N+1 runs with one
 * batched query; until then the same as detect). */
typedef enum { N1_MODE_OFF = 0, N1_MODE_DETECT = 1, N1_MODE_BATCH = 2 } N1Mode;
/* How the identity-map cache learns of writes: only those passing through
 * the proxy, or also every other one through logical replication. */
typedef enum { CACHE_INVAL_PROXY = 0, CACHE_INVAL_REPLICATION = 1 } CacheInvalidation;

/* One [databases] entry. Unset numeric overrides are -1, strings NULL. */
typedef struct DbConf {
    char *name;     /* client-facing database name, or "*" */
    char *host;     /* hostname, IP, or a directory for a unix socket */
    int port;       /* default 5432 */
    char *dbname;   /* upstream name; NULL = same as the client's */
    char *user;     /* upstream user; NULL = the client's */
    char *password; /* upstream password; NULL = look in auth_file */
    int pool_size;
    int max_overflow;
    int pool_mode; /* -1 or a PoolMode */
    int line;      /* where it was defined, for messages */
} DbConf;

/* One auth_file entry: a plain password, an md5 hash or a SCRAM secret. */
typedef struct AuthUser {
    char *name;
    char *secret;
} AuthUser;

typedef struct Config {
    char *path; /* file loaded, NULL when built from the command line */

    char *listen_addr;
    int listen_port;
    char *unix_socket_dir;
    char *admin_addr;  /* admin port: console and HTTP (daemon/admin.c) */
    int admin_port;    /* 0 = no admin port */
    char *admin_users; /* comma-separated: may run every admin command */
    char *stats_users; /* comma-separated: may only SHOW */
    PoolMode pool_mode;
    AuthType auth_type;
    char *auth_file;
    int pool_size;
    int max_overflow;
    double pool_timeout; /* seconds */
    int pool_recycle;    /* seconds, -1 = never */
    bool pool_pre_ping;
    double pre_ping_idle; /* seconds */
    int max_client_conn;
    double client_login_timeout;     /* seconds, 0 = none */
    double client_write_timeout;     /* seconds a full output may stay unread; 0 = none */
    double idle_transaction_timeout; /* seconds idle in a transaction; 0 = none */
    double server_connect_timeout;   /* seconds */
    int max_packet_size;             /* bytes; larger client messages are refused */
    int max_prepared_statements;     /* per server connection, transaction mode */
    ClientTlsMode client_tls_sslmode;
    char *client_tls_cert_file; /* paths resolved against the config's directory */
    char *client_tls_key_file;
    TlsVersion client_tls_min_version;
    ServerTlsMode server_tls_sslmode;
    char *server_tls_ca_file;
    char *server_tls_cert_file; /* client certificate shown to PostgreSQL, optional */
    char *server_tls_key_file;
    TlsVersion server_tls_min_version;
    LogLevel log_level;
    double shutdown_timeout; /* seconds SIGTERM/SHUTDOWN waits for running transactions */
    char *pidfile;           /* empty = none */
    char *logfile;           /* empty = stderr only */
    bool syslog;
    char *syslog_ident;
    N1Mode n1_mode;
    int n1_threshold;       /* executions of a run that make it an N+1 report */
    int n1_result_memory;   /* result values remembered per client session */
    int n1_max_patterns;    /* N+1 patterns kept per worker */
    int n1_batch_after;     /* n1_mode = batch: executions of a run before it is batched */
    int n1_batch_max;       /* keys per batched statement */
    double n1_prefetch_ttl; /* seconds a prefetched answer may be used */
    int shape_cache_size;   /* analysed shapes kept per worker (also SHOW QUERIES rows) */
    /* identity-map cache (daemon/cache.c); cache_url empty = no cache */
    char *cache_url;              /* redis://[:password@]host[:port][/db] or unix:/path[?db=N] */
    double cache_connect_timeout; /* seconds */
    double cache_timeout;         /* seconds a lookup may take before it is bypassed */
    int cache_ttl;                /* seconds an answer lives in Redis */
    int cache_max_value;          /* bytes; larger answers are not stored */
    CacheInvalidation cache_invalidation;
    char *cache_publication; /* replication: publication to use; empty = the proxy's own */
    char *cache_namespace;   /* prefix of every Redis key and channel */

    DbConf *dbs;
    int ndbs;
    AuthUser *users;
    int nusers;
} Config;

/*
 * Load and validate a config file (and the auth_file it names, relative
 * paths resolved against the config's directory). On error returns NULL and
 * writes "file:line: message" into err.
 */
Config *config_load(const char *path, char *err, size_t errlen);

/*
 * Build a config for the quick start: one "*" database pointing at a
 * postgresql:// URL, listening on listen ("host:port", "port",
 * "[ipv6]:port" or NULL for 127.0.0.1:6432). Clients log in with trust
 * when the URL has no password, else with scram-sha-256 as the URL's user
 * and password (one in-memory AuthUser). On error returns NULL with the
 * reason in err (never echoing the password).
 */
Config *config_from_url(const char *url, const char *listen, char *err, size_t errlen);

/*
 * Set one [pgcoalesce] setting by name from its text (the quick start's
 * --set NAME=VALUE), with the checks of a file. False with "NAME must be
 * ..." in err.
 */
bool config_set(Config *cfg, const char *name, const char *value, char *err, size_t errlen)
    __attribute__((warn_unused_result));

void config_free(Config *cfg);

/* The [databases] entry for a client's database name: exact match, else "*", else NULL. */
const DbConf *config_find_db(const Config *cfg, const char *name);
/* The auth_file secret for a user, or NULL. */
const char *config_find_user(const Config *cfg, const char *user);

/* Effective per-database values (entry override or global). */
int dbconf_pool_size(const Config *cfg, const DbConf *db);
int dbconf_max_overflow(const Config *cfg, const DbConf *db);
PoolMode dbconf_pool_mode(const Config *cfg, const DbConf *db);

/*
 * For a reload: give next the current value of every setting that cannot
 * change without a restart, so that next describes what really runs. The
 * names of those that differed go into changed (comma-separated, cut to
 * len); returns how many differed, or -1 when out of memory.
 */
int config_carry_fixed(Config *next, const Config *cur, char *changed, size_t len);

/* Settings table iteration, for SHOW CONFIG and the docs. */
typedef struct ConfigItem {
    const char *name;
    char value[256];
    const char *default_value;
    bool reloadable;
} ConfigItem;
/* Fills item for setting i; returns false past the end. With cfg NULL, value is the default. */
bool config_item(const Config *cfg, int i, ConfigItem *item);

#endif
