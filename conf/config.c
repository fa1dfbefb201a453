/*
 * The settings table and config_load: one table drives parsing, defaults,
 * validation, SHOW CONFIG and the file:line error messages.
 *
 * The INI syntax is inih's; a reader of our own feeds it one whole line at a
 * time so that we always know the line number, refuse what inih would
 * silently cut or merge (over-long lines, indented continuation lines,
 * unknown sections) and say what is wrong before inih sees it.
 */
#include "conf/config.h"
#include "conf/config_internal.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>

#include <ini.h>

/* Every duration setting is in seconds; this bound keeps milliseconds in an int. */
#define SECONDS_MAX 2147483.0

/* unix_socket_dir + "/.s.PGSQL.65535" must fit in sockaddr_un.sun_path. */
#define SOCKET_DIR_MAX (sizeof(((struct sockaddr_un *)0)->sun_path) - sizeof("/.s.PGSQL.65535"))

/* Longest client-facing database name PostgreSQL keeps (NAMEDATALEN - 1). */
#define DB_NAME_MAX 63

#define MSG_MAX 512

typedef enum { ST_STRING, ST_INT, ST_DOUBLE, ST_BOOL, ST_ENUM } SettingType;

typedef struct EnumWord {
    const char *word;
    int value;
} EnumWord;

/* Returns NULL when value is acceptable, else what it must be ("an absolute path"). */
typedef const char *(*StringCheck)(const char *value);

typedef struct Setting {
    const char *name;
    SettingType type;
    size_t offset;             /* of the field in Config */
    const char *default_value; /* written as in the file, parsed like any value */
    bool reloadable;           /* a reload applies it without a restart */
    double min, max;           /* ST_INT, ST_DOUBLE: allowed range, inclusive */
    bool above_min;            /* ST_DOUBLE: the value must be greater than min */
    bool minus_one_off;        /* ST_INT: -1 is also allowed and means "off" */
    const EnumWord *words;     /* ST_ENUM: allowed words, NULL-terminated */
    StringCheck check;         /* ST_STRING: optional validator */
} Setting;

static const EnumWord pool_mode_words[] = {
    {"session", POOL_SESSION},
    {"transaction", POOL_TRANSACTION},
    {NULL, 0},
};

static const EnumWord auth_type_words[] = {
    {"trust", AUTH_TRUST},
    {"md5", AUTH_MD5},
    {"scram-sha-256", AUTH_SCRAM},
    {NULL, 0},
};

static const EnumWord log_level_words[] = {
    {"error", LOG_ERROR},
    {"warning", LOG_WARNING},
    {"info", LOG_INFO},
    {"debug", LOG_DEBUG},
    {NULL, 0},
};

static const EnumWord client_tls_words[] = {
    {"disable", CLIENT_TLS_DISABLE},
    {"allow", CLIENT_TLS_ALLOW},
    {"prefer", CLIENT_TLS_PREFER},
    {"require", CLIENT_TLS_REQUIRE},
    {NULL, 0},
};

static const EnumWord server_tls_words[] = {
    {"disable", SERVER_TLS_DISABLE},         {"prefer", SERVER_TLS_PREFER},
    {"require", SERVER_TLS_REQUIRE},         {"verify-ca", SERVER_TLS_VERIFY_CA},
    {"verify-full", SERVER_TLS_VERIFY_FULL}, {NULL, 0},
};

static const EnumWord n1_mode_words[] = {
    {"off", N1_MODE_OFF},
    {"detect", N1_MODE_DETECT},
    {"batch", N1_MODE_BATCH},
    {NULL, 0},
};

static const EnumWord cache_inval_words[] = {
    {"proxy", CACHE_INVAL_PROXY},
    {"replication", CACHE_INVAL_REPLICATION},
    {NULL, 0},
};

static const EnumWord tls_version_words[] = {
    {"tlsv1.2", TLS_V1_2},
    {"tlsv1.3", TLS_V1_3},
    {NULL, 0},
};

/* Accepted spellings of a boolean; the first two are how they are written back. */
static const EnumWord bool_words[] = {
    {"on", 1}, {"off", 0}, {"true", 1}, {"false", 0}, {"yes", 1},
    {"no", 0}, {"1", 1},   {"0", 0},    {NULL, 0},
};

_Static_assert(sizeof(PoolMode) == sizeof(int), "enum settings are stored as int");
_Static_assert(sizeof(AuthType) == sizeof(int), "enum settings are stored as int");
_Static_assert(sizeof(LogLevel) == sizeof(int), "enum settings are stored as int");
_Static_assert(sizeof(N1Mode) == sizeof(int), "enum settings are stored as int");

static const char *check_listen_addr(const char *v)
{
    if (*v == '\0' || strpbrk(v, ", \t[]") != NULL)
        return "one IP address or host name (IPv6 without brackets), or * for all addresses";
    return NULL;
}

static const char *check_socket_dir(const char *v)
{
    if (*v == '\0')
        return NULL;
    if (*v != '/')
        return "an absolute directory path, or empty for no unix socket";
    if (strlen(v) > SOCKET_DIR_MAX)
        return "a directory path of at most 92 bytes, so that the socket path fits "
               "in a sockaddr_un";
    return NULL;
}

_Static_assert(SOCKET_DIR_MAX == 92, "the message above says 92");

/* admin_users, stats_users: "name, name" or empty. */
static const char *check_user_list(const char *v)
{
    const char *p = v;

    while (*p) {
        size_t n;
        while (*p == ' ' || *p == '\t')
            p++;
        n = strcspn(p, ",");
        while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        if (n == 0 || memchr(p, '"', n))
            return "a comma-separated list of user names, or empty";
        p += strcspn(p, ",");
        if (*p == ',' && *++p == '\0')
            return "a comma-separated list of user names, or empty";
    }
    return NULL;
}

static const char *check_ident(const char *v)
{
    if (*v == '\0' || strlen(v) > 64)
        return "a name of 1 to 64 characters";
    return NULL;
}

/* redis://[:password@]host[:port][/db], rediss is not supported; unix:/path[?db=N]. */
static const char *check_cache_url(const char *v)
{
    if (*v == '\0')
        return NULL;
    if (strncmp(v, "redis://", 8) == 0 && v[8] != '\0')
        return NULL;
    if (strncmp(v, "unix:/", 6) == 0)
        return NULL;
    return "empty, redis://[:password@]host[:port][/db] or unix:/path/to/redis.sock[?db=N]";
}

#define CFG(field) .offset = offsetof(Config, field)

/* THE settings table: order here is the order of SHOW CONFIG and of the docs. */
static const Setting settings[] = {
    {"listen_addr", ST_STRING, CFG(listen_addr), "127.0.0.1", false, .check = check_listen_addr},
    {"listen_port", ST_INT, CFG(listen_port), "6432", false, 1, 65535},
    {"unix_socket_dir", ST_STRING, CFG(unix_socket_dir), "", false, .check = check_socket_dir},
    {"admin_addr", ST_STRING, CFG(admin_addr), "127.0.0.1", false, .check = check_listen_addr},
    {"admin_port", ST_INT, CFG(admin_port), "6433", false, 0, 65535},
    {"admin_users", ST_STRING, CFG(admin_users), "", true, .check = check_user_list},
    {"stats_users", ST_STRING, CFG(stats_users), "", true, .check = check_user_list},
    {"pool_mode", ST_ENUM, CFG(pool_mode), "transaction", true, .words = pool_mode_words},
    {"auth_type", ST_ENUM, CFG(auth_type), "scram-sha-256", true, .words = auth_type_words},
    {"auth_file", ST_STRING, CFG(auth_file), "", true},
    {"pool_size", ST_INT, CFG(pool_size), "5", true, 1, CONF_POOL_SIZE_MAX},
    {"max_overflow", ST_INT, CFG(max_overflow), "10", true, 0, CONF_MAX_OVERFLOW_MAX},
    {"pool_timeout", ST_DOUBLE, CFG(pool_timeout), "30", true, 0, SECONDS_MAX, .above_min = true},
    {"pool_recycle", ST_INT, CFG(pool_recycle), "-1", true, 1, INT_MAX, .minus_one_off = true},
    {"pool_pre_ping", ST_BOOL, CFG(pool_pre_ping), "off", true},
    {"pre_ping_idle", ST_DOUBLE, CFG(pre_ping_idle), "1", true, 0, SECONDS_MAX},
    {"max_client_conn", ST_INT, CFG(max_client_conn), "10000", true, 1, 1000000},
    {"client_login_timeout", ST_DOUBLE, CFG(client_login_timeout), "60", true, 0, SECONDS_MAX},
    {"client_write_timeout", ST_DOUBLE, CFG(client_write_timeout), "0", true, 0, SECONDS_MAX},
    {"idle_transaction_timeout", ST_DOUBLE, CFG(idle_transaction_timeout), "0", true, 0,
     SECONDS_MAX},
    {"server_connect_timeout", ST_DOUBLE, CFG(server_connect_timeout), "15", true, 0, SECONDS_MAX,
     .above_min = true},
    {"max_packet_size", ST_INT, CFG(max_packet_size), "268435456", true, 1024, 1073741824},
    {"max_prepared_statements", ST_INT, CFG(max_prepared_statements), "200", true, 1, 100000},
    {"client_tls_sslmode", ST_ENUM, CFG(client_tls_sslmode), "disable", true,
     .words = client_tls_words},
    {"client_tls_cert_file", ST_STRING, CFG(client_tls_cert_file), "", true},
    {"client_tls_key_file", ST_STRING, CFG(client_tls_key_file), "", true},
    {"client_tls_min_version", ST_ENUM, CFG(client_tls_min_version), "tlsv1.2", true,
     .words = tls_version_words},
    {"server_tls_sslmode", ST_ENUM, CFG(server_tls_sslmode), "prefer", true,
     .words = server_tls_words},
    {"server_tls_ca_file", ST_STRING, CFG(server_tls_ca_file), "", true},
    {"server_tls_cert_file", ST_STRING, CFG(server_tls_cert_file), "", true},
    {"server_tls_key_file", ST_STRING, CFG(server_tls_key_file), "", true},
    {"server_tls_min_version", ST_ENUM, CFG(server_tls_min_version), "tlsv1.2", true,
     .words = tls_version_words},
    {"shutdown_timeout", ST_DOUBLE, CFG(shutdown_timeout), "30", true, 0, SECONDS_MAX},
    {"pidfile", ST_STRING, CFG(pidfile), "", false},
    {"log_level", ST_ENUM, CFG(log_level), "info", true, .words = log_level_words},
    {"logfile", ST_STRING, CFG(logfile), "", true},
    {"syslog", ST_BOOL, CFG(syslog), "off", true},
    {"syslog_ident", ST_STRING, CFG(syslog_ident), "pgcoalesce", true, .check = check_ident},
    {"n1_mode", ST_ENUM, CFG(n1_mode), "batch", true, .words = n1_mode_words},
    {"n1_threshold", ST_INT, CFG(n1_threshold), "5", true, 2, 1000000},
    {"n1_result_memory", ST_INT, CFG(n1_result_memory), "20000", true, 0, 10000000},
    {"n1_max_patterns", ST_INT, CFG(n1_max_patterns), "1000", false, 1, 1000000},
    {"n1_batch_after", ST_INT, CFG(n1_batch_after), "2", true, 2, 1000000},
    {"n1_batch_max", ST_INT, CFG(n1_batch_max), "500", true, 2, 100000},
    {"n1_prefetch_ttl", ST_DOUBLE, CFG(n1_prefetch_ttl), "0.1", true, 0, SECONDS_MAX,
     .above_min = true},
    {"shape_cache_size", ST_INT, CFG(shape_cache_size), "10000", false, 1, 10000000},
    {"cache_url", ST_STRING, CFG(cache_url), "", false, .check = check_cache_url},
    {"cache_connect_timeout", ST_DOUBLE, CFG(cache_connect_timeout), "1", true, 0, SECONDS_MAX,
     .above_min = true},
    {"cache_timeout", ST_DOUBLE, CFG(cache_timeout), "0.005", true, 0, SECONDS_MAX,
     .above_min = true},
    {"cache_ttl", ST_INT, CFG(cache_ttl), "300", true, 1, 31536000},
    {"cache_max_value", ST_INT, CFG(cache_max_value), "65536", true, 64, 536870912},
    {"cache_invalidation", ST_ENUM, CFG(cache_invalidation), "proxy", false,
     .words = cache_inval_words},
    {"cache_publication", ST_STRING, CFG(cache_publication), "", false},
    {"cache_namespace", ST_STRING, CFG(cache_namespace), "pgc", false, .check = check_ident},
};

#define NSETTINGS ((int)(sizeof(settings) / sizeof(settings[0])))

void conf_msgf(char *msg, size_t msglen, const char *fmt, ...)
{
    va_list ap;

    if (msglen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, msglen, fmt, ap);
    va_end(ap);
}

bool conf_parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    long v;

    if (*s == '\0' || isspace((unsigned char)*s))
        return false;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

bool conf_parse_port(const char *s, int *out)
{
    long v;

    if (!conf_parse_long(s, 1, 65535, &v))
        return false;
    *out = (int)v;
    return true;
}

/* Full-string strtod that refuses inf, nan and anything with text after the number. */
CONF_CHECK static bool parse_double(const char *s, double *out)
{
    char *end;
    double v;

    if (*s == '\0' || isspace((unsigned char)*s))
        return false;
    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || *end != '\0' || !isfinite(v))
        return false;
    *out = v;
    return true;
}

static const EnumWord *word_find(const EnumWord *words, const char *s)
{
    for (; words->word; words++)
        if (strcasecmp(words->word, s) == 0)
            return words;
    return NULL;
}

static const char *word_name(const EnumWord *words, int value)
{
    for (; words->word; words++)
        if (words->value == value)
            return words->word;
    return "?";
}

bool conf_pool_mode_from_word(const char *s, int *out)
{
    const EnumWord *w = word_find(pool_mode_words, s);

    if (!w)
        return false;
    *out = w->value;
    return true;
}

/* "a, b or c" for the enum's words. */
static void words_join(const EnumWord *words, char *buf, size_t len)
{
    size_t used = 0;

    buf[0] = '\0';
    for (int i = 0; words[i].word && used < len; i++) {
        const char *sep = i == 0 ? "" : words[i + 1].word ? ", " : " or ";
        int n = snprintf(buf + used, len - used, "%s%s", sep, words[i].word);

        if (n < 0)
            break;
        used += (size_t)n;
    }
}

/* What s accepts, for "x must be <this>, not ..." messages. */
static void setting_allowed(const Setting *s, const char *value, char *buf, size_t len)
{
    switch (s->type) {
    case ST_STRING:
        conf_msgf(buf, len, "%s", s->check ? s->check(value) : "a string");
        break;
    case ST_INT:
        conf_msgf(buf, len, "%san integer from %.0f to %.0f",
                  s->minus_one_off ? "-1 (off) or " : "", s->min, s->max);
        break;
    case ST_DOUBLE:
        conf_msgf(buf, len,
                  s->above_min ? "a number of seconds greater than %g and at most %.0f"
                               : "a number of seconds from %g to %.0f",
                  s->min, s->max);
        break;
    case ST_BOOL:
        conf_msgf(buf, len, "on or off (or true/false, yes/no, 1/0)");
        break;
    case ST_ENUM:
        words_join(s->words, buf, len);
        break;
    }
}

static void setting_refuse(const Setting *s, const char *value, char *msg, size_t msglen)
{
    char allowed[256];

    setting_allowed(s, value, allowed, sizeof(allowed));
    conf_msgf(msg, msglen, "%s must be %s, not \"%s\"", s->name, allowed, value);
}

static void *setting_field(const Config *cfg, const Setting *s)
{
    return (char *)cfg + s->offset;
}

/* Parse text as s's type and store it in cfg; false with msg set when refused. */
CONF_CHECK static bool setting_apply(Config *cfg, const Setting *s, const char *text, char *msg,
                                     size_t msglen)
{
    void *field = setting_field(cfg, s);
    const EnumWord *w;
    long lv;
    double dv;
    char *copy;

    switch (s->type) {
    case ST_STRING:
        if (s->check && s->check(text))
            break;
        copy = strdup(text);
        if (!copy) {
            conf_msgf(msg, msglen, "out of memory");
            return false;
        }
        free(*(char **)field);
        *(char **)field = copy;
        return true;
    case ST_INT:
        if (!conf_parse_long(text, s->minus_one_off ? -1 : (long)s->min, (long)s->max, &lv))
            break;
        if (s->minus_one_off && lv < (long)s->min && lv != -1)
            break;
        *(int *)field = (int)lv;
        return true;
    case ST_DOUBLE:
        if (!parse_double(text, &dv) || dv < s->min || dv > s->max ||
            (s->above_min && dv <= s->min))
            break;
        *(double *)field = dv;
        return true;
    case ST_BOOL:
        if (!(w = word_find(bool_words, text)))
            break;
        *(bool *)field = w->value != 0;
        return true;
    case ST_ENUM:
        if (!(w = word_find(s->words, text)))
            break;
        *(int *)field = w->value;
        return true;
    }
    setting_refuse(s, text, msg, msglen);
    return false;
}

/* The value of s in cfg, written as it would be in the file. */
static void setting_format(const Config *cfg, const Setting *s, char *buf, size_t len)
{
    const void *field = setting_field(cfg, s);
    const char *str;

    switch (s->type) {
    case ST_STRING:
        str = *(char *const *)field;
        conf_msgf(buf, len, "%s", str ? str : "");
        break;
    case ST_INT:
        conf_msgf(buf, len, "%d", *(const int *)field);
        break;
    case ST_DOUBLE:
        conf_msgf(buf, len, "%.15g", *(const double *)field);
        break;
    case ST_BOOL:
        conf_msgf(buf, len, "%s", *(const bool *)field ? "on" : "off");
        break;
    case ST_ENUM:
        conf_msgf(buf, len, "%s", word_name(s->words, *(const int *)field));
        break;
    }
}

static const Setting *setting_find(const char *name)
{
    for (int i = 0; i < NSETTINGS; i++)
        if (strcmp(settings[i].name, name) == 0)
            return &settings[i];
    return NULL;
}

bool conf_set(Config *cfg, const char *name, const char *value, char *msg, size_t msglen)
{
    const Setting *s = setting_find(name);

    if (!s) {
        conf_msgf(msg, msglen, "unknown setting \"%s\"", name);
        return false;
    }
    return setting_apply(cfg, s, value, msg, msglen);
}

bool config_set(Config *cfg, const char *name, const char *value, char *err, size_t errlen)
{
    return conf_set(cfg, name, value, err, errlen);
}

Config *conf_new_defaults(char *err, size_t errlen)
{
    char msg[MSG_MAX];
    Config *cfg = calloc(1, sizeof(*cfg));

    if (!cfg) {
        conf_msgf(err, errlen, "out of memory");
        return NULL;
    }
    for (int i = 0; i < NSETTINGS; i++) {
        if (!setting_apply(cfg, &settings[i], settings[i].default_value, msg, sizeof(msg))) {
            conf_msgf(err, errlen, "default of %s: %s", settings[i].name, msg);
            config_free(cfg);
            return NULL;
        }
    }
    return cfg;
}

void conf_dbconf_init(DbConf *db)
{
    memset(db, 0, sizeof(*db));
    db->port = 5432;
    db->pool_size = -1;
    db->max_overflow = -1;
    db->pool_mode = -1;
}

void conf_dbconf_clear(DbConf *db)
{
    free(db->name);
    free(db->host);
    free(db->dbname);
    free(db->user);
    free(db->password);
    conf_dbconf_init(db);
}

void config_free(Config *cfg)
{
    if (!cfg)
        return;
    for (int i = 0; i < NSETTINGS; i++)
        if (settings[i].type == ST_STRING)
            free(*(char **)setting_field(cfg, &settings[i]));
    for (int i = 0; i < cfg->ndbs; i++)
        conf_dbconf_clear(&cfg->dbs[i]);
    free(cfg->dbs);
    for (int i = 0; i < cfg->nusers; i++) {
        free(cfg->users[i].name);
        free(cfg->users[i].secret);
    }
    free(cfg->users);
    free(cfg->path);
    free(cfg);
}

/* ---- loading a file ------------------------------------------------------------------ */

/* State shared by the line reader and the inih handler during one config_load. */
typedef struct LoadState {
    Config *cfg;
    const char *path;
    FILE *fp;
    char *buf; /* getline's buffer: the current line */
    size_t bufcap;
    int lineno;              /* line last handed to inih, which the handler is called for */
    int pgc_line;            /* first [pgcoalesce] header, 0 if none */
    int set_line[NSETTINGS]; /* where each setting was set, 0 = default */
    int dbcap;               /* allocated length of cfg->dbs */
    bool failed;             /* the first error is in err_line/msg; stop reading */
    int err_line;            /* 0 when the error is about the whole file */
    char msg[MSG_MAX];
} LoadState;

/* Record the first error, at the current line; returns 0 for inih. */
__attribute__((format(printf, 2, 3))) static int load_fail(LoadState *st, const char *fmt, ...)
{
    va_list ap;

    if (st->failed)
        return 0;
    st->failed = true;
    st->err_line = st->lineno;
    va_start(ap, fmt);
    vsnprintf(st->msg, sizeof(st->msg), fmt, ap);
    va_end(ap);
    return 0;
}

/* True if an inline comment (';' after whitespace) starts before the end of s. */
static bool has_inline_comment(const char *s)
{
    for (const char *p = s; *p; p++)
        if (*p == ';' && p > s && isspace((unsigned char)p[-1]))
            return true;
    return false;
}

/* Check a section header line; a section other than ours is refused right here. */
CONF_CHECK static bool precheck_section(LoadState *st, const char *p)
{
    const char *close = strchr(p, ']');
    const char *rest;
    size_t len;

    if (!close) {
        load_fail(st, "section header has no closing ']'");
        return false;
    }
    rest = close + 1;
    while (isspace((unsigned char)*rest))
        rest++;
    if (*rest != '\0' && *rest != ';' && *rest != '#') {
        load_fail(st, "unexpected text after the section header: \"%s\"", rest);
        return false;
    }
    len = (size_t)(close - p - 1);
    if (len == strlen("pgcoalesce") && strncmp(p + 1, "pgcoalesce", len) == 0) {
        if (!st->pgc_line)
            st->pgc_line = st->lineno;
        return true;
    }
    if (len == strlen("databases") && strncmp(p + 1, "databases", len) == 0)
        return true;
    load_fail(st, "unknown section [%.*s]; the sections are [pgcoalesce] and [databases]", (int)len,
              p + 1);
    return false;
}

/*
 * Refuse what inih would either reject with no reason or take the wrong way:
 * a line that is not blank, a comment, a [section] or name=value.
 */
CONF_CHECK static bool precheck_line(LoadState *st, const char *p)
{
    bool was_space = false;

    if (*p == '\0' || *p == ';' || *p == '#')
        return true;
    if (*p == '[')
        return precheck_section(st, p);
    for (const char *q = p; *q; q++) {
        if (*q == '=' || *q == ':')
            return true;
        if (*q == ';' && was_space)
            break;
        was_space = isspace((unsigned char)*q);
    }
    load_fail(st, "expected \"name = value\", a [section] or a comment, not \"%.60s\"", p);
    return false;
}

/*
 * inih's reader: hand over one whole line (newline and leading whitespace
 * removed, so inih never joins lines), or NULL to stop after an error.
 */
static char *load_read_line(char *str, int num, void *stream)
{
    LoadState *st = stream;
    ssize_t n;
    char *p;

    if (st->failed)
        return NULL;
    errno = 0;
    n = getline(&st->buf, &st->bufcap, st->fp);
    if (n < 0) {
        if (ferror(st->fp))
            load_fail(st, "read error: %s", strerror(errno ? errno : EIO));
        return NULL;
    }
    st->lineno++;
    if (memchr(st->buf, '\0', (size_t)n)) {
        load_fail(st, "line contains a NUL byte; is this a text file?");
        return NULL;
    }
    while (n > 0 && (st->buf[n - 1] == '\n' || st->buf[n - 1] == '\r'))
        st->buf[--n] = '\0';
    p = st->buf;
    if (st->lineno == 1 && strncmp(p, "\xEF\xBB\xBF", 3) == 0)
        p += 3;
    while (isspace((unsigned char)*p))
        p++;
    if (strlen(p) >= (size_t)num) {
        load_fail(st, "line is %zu characters long; the limit is %d", strlen(p), num - 1);
        return NULL;
    }
    if (!precheck_line(st, p))
        return NULL;
    memcpy(str, p, strlen(p) + 1);
    return str;
}

static int load_unknown_setting(LoadState *st, const char *name)
{
    for (int i = 0; i < NSETTINGS; i++)
        if (strcasecmp(settings[i].name, name) == 0)
            return load_fail(st, "unknown setting \"%s\" in [pgcoalesce]; did you mean \"%s\"?",
                             name, settings[i].name);
    return load_fail(st,
                     "unknown setting \"%s\" in [pgcoalesce]; the settings are listed in "
                     "docs/configuration.md",
                     name);
}

/* One name = value line of [pgcoalesce]. */
static int load_setting(LoadState *st, const char *name, const char *value)
{
    const Setting *s = setting_find(name);
    char msg[MSG_MAX];
    int idx;

    if (!s)
        return load_unknown_setting(st, name);
    idx = (int)(s - settings);
    if (st->set_line[idx])
        return load_fail(st, "%s is already set on line %d", name, st->set_line[idx]);
    if (!setting_apply(st->cfg, s, value, msg, sizeof(msg))) {
        if (strstr(value, " #") || strstr(value, "\t#"))
            return load_fail(st, "%s (a comment after a value starts with ';', not '#')", msg);
        return load_fail(st, "%s", msg);
    }
    st->set_line[idx] = st->lineno;
    return 1;
}

/* Make room for one more [databases] entry. */
CONF_CHECK static bool load_grow_dbs(LoadState *st)
{
    Config *cfg = st->cfg;
    DbConf *dbs;
    int cap;

    if (cfg->ndbs < st->dbcap)
        return true;
    cap = st->dbcap ? st->dbcap * 2 : 8;
    dbs = realloc(cfg->dbs, (size_t)cap * sizeof(*dbs));
    if (!dbs)
        return false;
    cfg->dbs = dbs;
    st->dbcap = cap;
    return true;
}

/* One "name = key=value ..." line of [databases]. */
static int load_database(LoadState *st, const char *name, const char *value)
{
    Config *cfg = st->cfg;
    char msg[MSG_MAX];
    DbParseResult r;
    DbConf *db;

    if (strlen(name) > DB_NAME_MAX)
        return load_fail(st, "database name \"%s\" is longer than %d bytes", name, DB_NAME_MAX);
    for (int i = 0; i < cfg->ndbs; i++)
        if (strcmp(cfg->dbs[i].name, name) == 0)
            return load_fail(st, "database \"%s\" is already defined on line %d", name,
                             cfg->dbs[i].line);
    if (!load_grow_dbs(st))
        return load_fail(st, "out of memory");
    db = &cfg->dbs[cfg->ndbs];
    conf_dbconf_init(db);
    db->line = st->lineno;
    db->name = strdup(name);
    if (!db->name)
        return load_fail(st, "out of memory");
    r = conf_parse_db(value, db, msg, sizeof(msg));
    if (r != DBPARSE_OK) {
        conf_dbconf_clear(db);
        return load_fail(st, "database \"%s\": %s%s", name, msg,
                         r == DBPARSE_UNTERMINATED && has_inline_comment(st->buf)
                             ? " (\" ;\" starts a comment, even inside quotes)"
                             : "");
    }
    cfg->ndbs++;
    return 1;
}

/* inih's handler: one name=value pair of the line just read. */
static int load_handle(void *user, const char *section, const char *name, const char *value)
{
    LoadState *st = user;

    if (st->failed)
        return 0;
    if (*name == '\0')
        return load_fail(st, "a name is missing before '='");
    if (strcmp(section, "pgcoalesce") == 0)
        return load_setting(st, name, value);
    if (strcmp(section, "databases") == 0)
        return load_database(st, name, value);
    return load_fail(st,
                     "\"%s\" is outside any section; settings go under [pgcoalesce] and "
                     "databases under [databases]",
                     name);
}

static int setting_index(const char *name)
{
    const Setting *s = setting_find(name);

    return s ? (int)(s - settings) : -1;
}

/* Line to blame for a problem with a setting: where it was set, else its section. */
static int load_blame_line(const LoadState *st, const char *name)
{
    int idx = setting_index(name);

    if (idx >= 0 && st->set_line[idx])
        return st->set_line[idx];
    if (st->pgc_line)
        return st->pgc_line;
    return st->lineno > 0 ? st->lineno : 1;
}

/* A file setting relative to the config file's directory; replaces *field. */
CONF_CHECK static bool load_resolve_path(LoadState *st, char **field)
{
    const char *slash = strrchr(st->path, '/');
    char *joined;

    if ((*field)[0] == '\0' || (*field)[0] == '/' || !slash)
        return true;
    if (asprintf(&joined, "%.*s/%s", (int)(slash - st->path), st->path, *field) < 0)
        return false;
    free(*field);
    *field = joined;
    return true;
}

CONF_CHECK static bool load_resolve_auth_file(LoadState *st)
{
    return load_resolve_path(st, &st->cfg->auth_file);
}

/* TLS settings that only make sense together. false with err set. */
CONF_CHECK static bool load_check_tls(LoadState *st, char *err, size_t errlen)
{
    Config *cfg = st->cfg;

    if (!load_resolve_path(st, &cfg->client_tls_cert_file) ||
        !load_resolve_path(st, &cfg->client_tls_key_file) ||
        !load_resolve_path(st, &cfg->server_tls_ca_file) ||
        !load_resolve_path(st, &cfg->server_tls_cert_file) ||
        !load_resolve_path(st, &cfg->server_tls_key_file)) {
        conf_msgf(err, errlen, "%s: out of memory", st->path);
        return false;
    }
    if (cfg->client_tls_sslmode != CLIENT_TLS_DISABLE &&
        (!cfg->client_tls_cert_file[0] || !cfg->client_tls_key_file[0])) {
        conf_msgf(err, errlen,
                  "%s:%d: client_tls_sslmode %s needs client_tls_cert_file and "
                  "client_tls_key_file",
                  st->path, load_blame_line(st, "client_tls_sslmode"),
                  word_name(client_tls_words, cfg->client_tls_sslmode));
        return false;
    }
    if (cfg->server_tls_sslmode >= SERVER_TLS_VERIFY_CA && !cfg->server_tls_ca_file[0]) {
        conf_msgf(err, errlen,
                  "%s:%d: server_tls_sslmode %s needs server_tls_ca_file, the CA that signed "
                  "PostgreSQL's certificate",
                  st->path, load_blame_line(st, "server_tls_sslmode"),
                  word_name(server_tls_words, cfg->server_tls_sslmode));
        return false;
    }
    if (!cfg->server_tls_cert_file[0] != !cfg->server_tls_key_file[0]) {
        conf_msgf(err, errlen, "%s:%d: server_tls_cert_file and server_tls_key_file go together",
                  st->path,
                  load_blame_line(st, cfg->server_tls_cert_file[0] ? "server_tls_cert_file"
                                                                   : "server_tls_key_file"));
        return false;
    }
    return true;
}

/* Checks that need the whole file, then the auth_file. false with err set. */
CONF_CHECK static bool load_finish(LoadState *st, char *err, size_t errlen)
{
    Config *cfg = st->cfg;
    char origin[MSG_MAX];

    if (cfg->ndbs == 0) {
        conf_msgf(err, errlen,
                  "%s:%d: no databases are defined; add a [databases] section with at least one "
                  "entry, such as \"* = host=127.0.0.1 port=5432\"",
                  st->path, st->lineno > 0 ? st->lineno : 1);
        return false;
    }
    if (!load_check_tls(st, err, errlen))
        return false;
    if (!load_resolve_path(st, &cfg->logfile) || !load_resolve_path(st, &cfg->pidfile)) {
        conf_msgf(err, errlen, "%s: out of memory", st->path);
        return false;
    }
    if (cfg->auth_type != AUTH_TRUST && cfg->auth_file[0] == '\0') {
        conf_msgf(err, errlen,
                  "%s:%d: auth_type %s%s needs auth_file, a list of \"user\" \"password\" lines; "
                  "set auth_file or use auth_type = trust",
                  st->path, load_blame_line(st, "auth_type"),
                  word_name(auth_type_words, cfg->auth_type),
                  st->set_line[setting_index("auth_type")] ? "" : " (the default)");
        return false;
    }
    if (cfg->auth_file[0] == '\0')
        return true;
    if (!load_resolve_auth_file(st)) {
        conf_msgf(err, errlen, "%s: out of memory", st->path);
        return false;
    }
    conf_msgf(origin, sizeof(origin), "auth_file, set on line %d of %s",
              st->set_line[setting_index("auth_file")], st->path);
    return conf_load_auth_file(cfg, cfg->auth_file, origin, err, errlen);
}

Config *config_load(const char *path, char *err, size_t errlen)
{
    LoadState st = {0};
    int rc;

    if (!path) {
        conf_msgf(err, errlen, "no config file given");
        return NULL;
    }
    st.path = path;
    st.cfg = conf_new_defaults(err, errlen);
    if (!st.cfg)
        return NULL;
    st.cfg->path = strdup(path);
    if (!st.cfg->path) {
        conf_msgf(err, errlen, "%s: out of memory", path);
        goto out_free_cfg;
    }
    st.fp = fopen(path, "r");
    if (!st.fp) {
        conf_msgf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        goto out_free_cfg;
    }
    rc = ini_parse_stream(load_read_line, &st, load_handle, &st);
    if (rc != 0 && !st.failed) {
        /* Our precheck should have caught anything inih refuses. */
        st.lineno = rc > 0 ? rc : 0;
        load_fail(&st, "cannot parse this line (inih error %d)", rc);
    }
    if (st.failed) {
        if (st.err_line > 0)
            conf_msgf(err, errlen, "%s:%d: %s", path, st.err_line, st.msg);
        else
            conf_msgf(err, errlen, "%s: %s", path, st.msg);
        goto out_close;
    }
    if (!load_finish(&st, err, errlen))
        goto out_close;
    fclose(st.fp);
    free(st.buf);
    return st.cfg;

out_close:
    fclose(st.fp);
    free(st.buf);
out_free_cfg:
    config_free(st.cfg);
    return NULL;
}

/* ---- lookups ------------------------------------------------------------------------- */

const DbConf *config_find_db(const Config *cfg, const char *name)
{
    const DbConf *fallback = NULL;

    if (!cfg || !name)
        return NULL;
    for (int i = 0; i < cfg->ndbs; i++) {
        if (strcmp(cfg->dbs[i].name, name) == 0)
            return &cfg->dbs[i];
        if (strcmp(cfg->dbs[i].name, "*") == 0)
            fallback = &cfg->dbs[i];
    }
    return fallback;
}

const char *config_find_user(const Config *cfg, const char *user)
{
    if (!cfg || !user)
        return NULL;
    for (int i = 0; i < cfg->nusers; i++)
        if (strcmp(cfg->users[i].name, user) == 0)
            return cfg->users[i].secret;
    return NULL;
}

int dbconf_pool_size(const Config *cfg, const DbConf *db)
{
    return db && db->pool_size >= 0 ? db->pool_size : cfg->pool_size;
}

int dbconf_max_overflow(const Config *cfg, const DbConf *db)
{
    return db && db->max_overflow >= 0 ? db->max_overflow : cfg->max_overflow;
}

PoolMode dbconf_pool_mode(const Config *cfg, const DbConf *db)
{
    return db && db->pool_mode >= 0 ? (PoolMode)db->pool_mode : cfg->pool_mode;
}

/* Setting i of cfg; with cfg NULL the value is the default (for generating docs). */
bool config_item(const Config *cfg, int i, ConfigItem *item)
{
    const Setting *s;

    if (i < 0 || i >= NSETTINGS)
        return false;
    s = &settings[i];
    item->name = s->name;
    item->default_value = s->default_value;
    item->reloadable = s->reloadable;
    if (cfg)
        setting_format(cfg, s, item->value, sizeof(item->value));
    else
        conf_msgf(item->value, sizeof(item->value), "%s", s->default_value);
    return true;
}

int config_carry_fixed(Config *next, const Config *cur, char *changed, size_t len)
{
    int n = 0;
    size_t used = 0;

    if (len > 0)
        changed[0] = '\0';
    for (int i = 0; i < NSETTINGS; i++) {
        const Setting *s = &settings[i];
        char a[256], b[256];

        if (s->reloadable)
            continue;
        setting_format(cur, s, a, sizeof(a));
        setting_format(next, s, b, sizeof(b));
        if (strcmp(a, b) == 0 &&
            (s->type != ST_STRING ||
             strcmp(*(char **)setting_field(cur, s), *(char **)setting_field(next, s)) == 0))
            continue;
        if (s->type == ST_STRING) {
            char *copy = strdup(*(char **)setting_field(cur, s));
            if (!copy)
                return -1;
            free(*(char **)setting_field(next, s));
            *(char **)setting_field(next, s) = copy;
        } else {
            size_t size = s->type == ST_DOUBLE ? sizeof(double)
                          : s->type == ST_BOOL ? sizeof(bool)
                                               : sizeof(int);
            memcpy(setting_field(next, s), setting_field(cur, s), size);
        }
        if (used < len) {
            int w = snprintf(changed + used, len - used, "%s%s", n ? ", " : "", s->name);
            if (w > 0)
                used += (size_t)w;
        }
        n++;
    }
    return n;
}
