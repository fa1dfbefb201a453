/*
 * The worker's Redis connections (daemon/redis.h): one for commands, one
 * for the invalidation channel, both hiredis async on the worker's loop.
 */
#include "daemon/redis.h"

#include <ctype.h>
#include <errno.h>
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "daemon/worker.h"

#define BACKOFF_MIN 0.1
#define BACKOFF_MAX 5.0

typedef struct RedisConn {
    Redis *r;
    redisAsyncContext *ac; /* NULL while disconnected */
    bool ready;            /* set up: AUTH, SELECT, scripts (and SUBSCRIBE) answered */
    bool is_sub;
    struct event *timer; /* connect timeout, then reconnect backoff */
    double backoff;
    int setup_errors; /* error replies during setup */
} RedisConn;

struct Redis {
    struct event_base *base;
    RedisTarget t;
    double connect_timeout;
    char *scripts[REDIS_MAX_SCRIPTS];
    char sha[REDIS_MAX_SCRIPTS][41];
    int nscripts;
    void (*on_ready)(void *arg);
    void *arg;
    RedisConn cmd, sub;
    char *channel; /* NULL: no subscription */
    void (*msg_fn)(void *arg, const char *msg, size_t len);
    void *msg_arg;
    bool freeing;
    RedisStats st;
};

/* One command in flight. */
typedef struct Req {
    Redis *r;
    RedisReplyFn fn;
    void *arg;
    double sent;
} Req;

/* ---- cache_url ---------------------------------------------------------------------------- */

static bool copy_part(char *dst, size_t cap, const char *s, size_t n)
{
    if (n >= cap)
        return false;
    memcpy(dst, s, n);
    dst[n] = '\0';
    return true;
}

static bool parse_db(const char *s, int *db)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (*s == '\0' || errno || v < 0 || v > 1000000)
        return false;
    *db = (int)v;
    return *end == '\0' || *end == '&';
}

static bool parse_unix(const char *url, RedisTarget *t, char *err, size_t errlen)
{
    const char *path = url + 5, *q = strchr(path, '?');
    size_t n = q ? (size_t)(q - path) : strlen(path);

    if (n == 0 || !copy_part(t->path, sizeof(t->path), path, n)) {
        snprintf(err, errlen, "cache_url: the unix socket path is empty or too long");
        return false;
    }
    while (q && *q) {
        q++;
        if (strncmp(q, "db=", 3) == 0) {
            if (!parse_db(q + 3, &t->db)) {
                snprintf(err, errlen, "cache_url: db= must be a number");
                return false;
            }
        } else if (strncmp(q, "password=", 9) == 0) {
            const char *e = strchr(q + 9, '&');
            size_t pl = e ? (size_t)(e - q - 9) : strlen(q + 9);
            if (!copy_part(t->password, sizeof(t->password), q + 9, pl)) {
                snprintf(err, errlen, "cache_url: password too long");
                return false;
            }
        } else {
            snprintf(err, errlen, "cache_url: unknown parameter after '?' (db=, password=)");
            return false;
        }
        q = strchr(q, '&');
    }
    return true;
}

/* Copy s[0..n) percent-decoded ("%40" is '@', as in a URL); false when bad or too long. */
static bool copy_decoded(char *dst, size_t cap, const char *s, size_t n)
{
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '%') {
            unsigned v;
            char hex[3];
            if (i + 2 >= n)
                return false;
            hex[0] = s[i + 1];
            hex[1] = s[i + 2];
            hex[2] = '\0';
            if (!isxdigit((unsigned char)hex[0]) || !isxdigit((unsigned char)hex[1]) ||
                sscanf(hex, "%x", &v) != 1 || v == 0)
                return false;
            ch = (char)v;
            i += 2;
        }
        if (o + 1 >= cap)
            return false;
        dst[o++] = ch;
    }
    dst[o] = '\0';
    return true;
}

static bool parse_userinfo(const char *s, size_t n, RedisTarget *t)
{
    const char *colon = memchr(s, ':', n);

    if (!colon)
        return copy_decoded(t->password, sizeof(t->password), s, n); /* redis://password@ */
    return copy_decoded(t->user, sizeof(t->user), s, (size_t)(colon - s)) &&
           copy_decoded(t->password, sizeof(t->password), colon + 1, n - (size_t)(colon - s) - 1);
}

bool redis_url_parse(const char *url, RedisTarget *t, char *err, size_t errlen)
{
    const char *p, *at, *slash, *hostend;
    const char *colon;

    memset(t, 0, sizeof(*t));
    t->port = 6379;
    if (strncmp(url, "unix:/", 6) == 0)
        return parse_unix(url, t, err, errlen);
    if (strncmp(url, "redis://", 8) != 0) {
        snprintf(err, errlen, "cache_url must start with redis:// or unix:/");
        return false;
    }
    p = url + 8;
    slash = strchr(p, '/');
    at = memchr(p, '@', slash ? (size_t)(slash - p) : strlen(p));
    if (at) {
        if (!parse_userinfo(p, (size_t)(at - p), t)) {
            snprintf(err, errlen, "cache_url: user or password too long");
            return false;
        }
        p = at + 1;
    }
    hostend = slash ? slash : p + strlen(p);
    colon = NULL;
    if (*p == '[') {
        /* an IPv6 literal: [::1]:6379 */
        const char *close = memchr(p, ']', (size_t)(hostend - p));
        if (!close || (close + 1 < hostend && close[1] != ':')) {
            snprintf(err, errlen, "cache_url: an IPv6 address goes in brackets: [::1]:6379");
            return false;
        }
        if (close + 1 < hostend)
            colon = close + 1;
        if (!copy_part(t->host, sizeof(t->host), p + 1, (size_t)(close - p - 1)) ||
            t->host[0] == '\0') {
            snprintf(err, errlen, "cache_url: the host is empty or too long");
            return false;
        }
    } else {
        for (const char *c = p; c < hostend; c++)
            if (*c == ':')
                colon = c;
    }
    if (colon) {
        char *end;
        long port = strtol(colon + 1, &end, 10);
        if (end != hostend || port < 1 || port > 65535) {
            snprintf(err, errlen, "cache_url: port must be 1..65535");
            return false;
        }
        t->port = (int)port;
    }
    if (*p != '[' &&
        (!copy_part(t->host, sizeof(t->host), p, (size_t)((colon ? colon : hostend) - p)) ||
         t->host[0] == '\0')) {
        snprintf(err, errlen, "cache_url: the host is empty or too long");
        return false;
    }
    if (strpbrk(t->host, "[]@")) {
        snprintf(err, errlen,
                 "cache_url: the host may not hold '[', ']' or '@' (IPv6: [::1]:6379)");
        return false;
    }
    if (slash && slash[1] && (!parse_db(slash + 1, &t->db) || strchr(slash + 1, '&'))) {
        snprintf(err, errlen, "cache_url: the database after '/' must be a number");
        return false;
    }
    return true;
}

/* ---- connections -------------------------------------------------------------------------- */

static void conn_start(RedisConn *rc);

static const char *conn_name(const RedisConn *rc)
{
    return rc->is_sub ? "Redis (invalidation channel)" : "Redis";
}

static void set_error(Redis *r, const char *what, const char *why)
{
    snprintf(r->st.last_error, sizeof(r->st.last_error), "%s: %s", what, why ? why : "?");
}

static void on_timer(evutil_socket_t fd, short ev, void *arg);

static void arm(RedisConn *rc, double sec)
{
    struct timeval tv = {(time_t)sec, (suseconds_t)((sec - (double)(time_t)sec) * 1e6)};

    evtimer_add(rc->timer, &tv);
}

/* The connection is gone (or never came): try again after the backoff. */
static void conn_lost(RedisConn *rc, const char *why)
{
    Redis *r = rc->r;

    if (rc->ready || rc->backoff <= BACKOFF_MIN)
        log_warning("%s at %s: %s; bypassing the cache until it is back", conn_name(rc),
                    r->t.path[0] ? r->t.path : r->t.host, why);
    set_error(r, conn_name(rc), why);
    r->st.failures++;
    rc->ready = false;
    rc->ac = NULL;
    if (!rc->is_sub)
        r->st.ready = false;
    if (r->freeing)
        return;
    evtimer_del(rc->timer);
    arm(rc, rc->backoff);
    rc->backoff = rc->backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : rc->backoff * 2;
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    RedisConn *rc = ac->data;

    if (!rc || rc->ac != ac)
        return;
    conn_lost(rc, status == REDIS_OK ? "connection closed" : ac->errstr);
}

static void setup_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    RedisConn *rc = priv;
    redisReply *rep = reply;

    if (rc->ac != ac)
        return;
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        rc->setup_errors++;
        set_error(rc->r, conn_name(rc), rep ? rep->str : "no reply during setup");
    }
}

static void on_message(redisAsyncContext *ac, void *reply, void *priv)
{
    RedisConn *rc = priv;
    Redis *r = rc->r;
    redisReply *rep = reply;

    if (rc->ac != ac || !rep || rep->type != REDIS_REPLY_ARRAY || rep->elements < 3)
        return;
    if (rep->element[0]->type == REDIS_REPLY_STRING &&
        strcmp(rep->element[0]->str, "message") == 0 &&
        rep->element[2]->type == REDIS_REPLY_STRING && r->msg_fn)
        r->msg_fn(r->msg_arg, rep->element[2]->str, rep->element[2]->len);
}

/* The last setup command answered: ready, unless something in the setup failed. */
static void setup_done(redisAsyncContext *ac, void *reply, void *priv)
{
    RedisConn *rc = priv;
    Redis *r = rc->r;

    setup_reply(ac, reply, priv);
    if (rc->ac != ac)
        return;
    if (rc->setup_errors) {
        log_warning("%s setup failed: %s", conn_name(rc), r->st.last_error);
        rc->ac = NULL;
        redisAsyncDisconnect(ac);
        conn_lost(rc, "setup failed (AUTH, SELECT or SCRIPT LOAD)");
        return;
    }
    rc->ready = true;
    rc->backoff = BACKOFF_MIN;
    if (rc->is_sub) {
        const char *argv[] = {"SUBSCRIBE", r->channel};
        redisAsyncCommandArgv(ac, on_message, rc, 2, argv, NULL);
        return;
    }
    r->st.ready = true;
    r->st.connects++;
    log_info("%s at %s ready", conn_name(rc), r->t.path[0] ? r->t.path : r->t.host);
    if (r->on_ready)
        r->on_ready(r->arg);
}

static void send_setup(RedisConn *rc)
{
    Redis *r = rc->r;
    redisAsyncContext *ac = rc->ac;
    char db[16];

    rc->setup_errors = 0;
    if (r->t.password[0]) {
        const char *argv[] = {"AUTH", r->t.user, r->t.password};
        if (r->t.user[0])
            redisAsyncCommandArgv(ac, setup_reply, rc, 3, argv, NULL);
        else
            redisAsyncCommand(ac, setup_reply, rc, "AUTH %s", r->t.password);
    }
    if (r->t.db > 0 && !rc->is_sub) {
        snprintf(db, sizeof(db), "%d", r->t.db);
        redisAsyncCommand(ac, setup_reply, rc, "SELECT %s", db);
    }
    for (int i = 0; i < r->nscripts && !rc->is_sub; i++)
        redisAsyncCommand(ac, setup_reply, rc, "SCRIPT LOAD %s", r->scripts[i]);
    redisAsyncCommand(ac, setup_done, rc, "PING");
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    RedisConn *rc = ac->data;

    if (!rc || rc->ac != ac)
        return;
    evtimer_del(rc->timer);
    if (status != REDIS_OK) {
        conn_lost(rc, ac->errstr);
        return;
    }
    send_setup(rc);
}

static void conn_start(RedisConn *rc)
{
    Redis *r = rc->r;
    redisAsyncContext *ac;

    ac = r->t.path[0] ? redisAsyncConnectUnix(r->t.path) : redisAsyncConnect(r->t.host, r->t.port);
    if (!ac) {
        conn_lost(rc, "out of memory");
        return;
    }
    if (ac->err) {
        char why[128];
        snprintf(why, sizeof(why), "%s", ac->errstr);
        redisAsyncFree(ac);
        conn_lost(rc, why);
        return;
    }
    ac->data = rc;
    rc->ac = ac;
    if (redisLibeventAttach(ac, r->base) != REDIS_OK) {
        rc->ac = NULL;
        redisAsyncFree(ac);
        conn_lost(rc, "cannot attach to the event loop");
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    evtimer_del(rc->timer);
    arm(rc, r->connect_timeout);
}

/* Connect timeout while connecting, else the end of a backoff. */
static void on_timer(evutil_socket_t fd, short ev, void *arg)
{
    RedisConn *rc = arg;

    if (rc->ac && !rc->ready) {
        redisAsyncContext *ac = rc->ac;
        rc->ac = NULL;
        redisAsyncFree(ac);
        conn_lost(rc, "connect timed out (cache_connect_timeout)");
        return;
    }
    if (!rc->ac)
        conn_start(rc);
}

static bool conn_init(Redis *r, RedisConn *rc, bool is_sub)
{
    rc->r = r;
    rc->is_sub = is_sub;
    rc->backoff = BACKOFF_MIN;
    rc->timer = evtimer_new(r->base, on_timer, rc);
    return rc->timer != NULL;
}

static void conn_free(RedisConn *rc)
{
    if (rc->ac) {
        redisAsyncContext *ac = rc->ac;
        rc->ac = NULL;
        redisAsyncFree(ac); /* pending callbacks run now, with no reply */
    }
    if (rc->timer)
        event_free(rc->timer);
    rc->timer = NULL;
}

static void sha1_hex(const char *s, char out[41])
{
    unsigned char md[SHA_DIGEST_LENGTH];

    SHA1((const unsigned char *)s, strlen(s), md);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

Redis *redis_new(struct event_base *base, const RedisTarget *t, double connect_timeout,
                 const char *const *scripts, int nscripts, void (*on_ready)(void *arg), void *arg)
{
    Redis *r = calloc(1, sizeof(*r));

    if (!r || nscripts > REDIS_MAX_SCRIPTS)
        goto fail;
    r->base = base;
    r->t = *t;
    r->connect_timeout = connect_timeout;
    r->on_ready = on_ready;
    r->arg = arg;
    for (int i = 0; i < nscripts; i++) {
        r->scripts[i] = strdup(scripts[i]);
        if (!r->scripts[i])
            goto fail;
        r->nscripts++;
        sha1_hex(scripts[i], r->sha[i]);
    }
    if (!conn_init(r, &r->cmd, false) || !conn_init(r, &r->sub, true))
        goto fail;
    conn_start(&r->cmd);
    return r;
fail:
    redis_free(r);
    return NULL;
}

void redis_free(Redis *r)
{
    if (!r)
        return;
    r->freeing = true;
    conn_free(&r->cmd);
    conn_free(&r->sub);
    for (int i = 0; i < r->nscripts; i++)
        free(r->scripts[i]);
    free(r->channel);
    free(r);
}

bool redis_ready(const Redis *r)
{
    return r && r->cmd.ready;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    Req *q = priv;
    Redis *r = q->r;
    redisReply *rep = reply;
    double lat = now_sec() - q->sent;

    r->st.inflight--;
    if (rep) {
        r->st.latency_sum += lat;
        r->st.latency_n++;
        if (lat > r->st.latency_max)
            r->st.latency_max = lat;
    }
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        r->st.errors++;
        set_error(r, "Redis command", rep ? rep->str : (ac->errstr[0] ? ac->errstr : "no reply"));
        rep = NULL;
    }
    q->fn(q->arg, rep, lat);
    free(q);
}

bool redis_eval(Redis *r, int script, RedisReplyFn fn, void *arg, int argc, const char **argv,
                const size_t *argvlen)
{
    const char *av[24];
    size_t al[24];
    Req *q;

    if (!redis_ready(r) || script < 0 || script >= r->nscripts || argc + 3 > 24 ||
        r->st.inflight >= REDIS_MAX_INFLIGHT)
        return false;
    q = malloc(sizeof(*q));
    if (!q)
        return false;
    av[0] = "EVALSHA";
    al[0] = 7;
    av[1] = r->sha[script];
    al[1] = 40;
    av[2] = "0";
    al[2] = 1;
    for (int i = 0; i < argc; i++) {
        av[3 + i] = argv[i];
        al[3 + i] = argvlen ? argvlen[i] : strlen(argv[i]);
    }
    q->r = r;
    q->fn = fn;
    q->arg = arg;
    q->sent = now_sec();
    if (redisAsyncCommandArgv(r->cmd.ac, on_reply, q, argc + 3, av, al) != REDIS_OK) {
        free(q);
        return false;
    }
    r->st.commands++;
    r->st.inflight++;
    return true;
}

bool redis_subscribe(Redis *r, const char *channel,
                     void (*fn)(void *arg, const char *msg, size_t len), void *arg)
{
    free(r->channel);
    r->channel = strdup(channel);
    if (!r->channel)
        return false;
    r->msg_fn = fn;
    r->msg_arg = arg;
    if (!r->sub.ac)
        conn_start(&r->sub);
    return true;
}

void redis_stats(const Redis *r, RedisStats *out)
{
    *out = r->st;
    out->ready = redis_ready(r);
}
