/*
 * The worker's one connection to Redis for the identity-map cache: hiredis's
 * async API on the worker's libevent loop, never a blocking call. It
 * connects (and AUTHs and SELECTs) by itself, loads the cache's Lua scripts
 * on every connection, and after a failure reconnects with backoff (0.1 s
 * doubling to 5 s). While it is not ready, callers bypass the cache.
 *
 * Replies come back through a callback, exactly once per command, with a
 * NULL reply when the command failed or the connection went away. Callers
 * that stop caring (a client that timed out) keep the callback's argument
 * alive and mark it, since hiredis still calls back later.
 */
#ifndef PGC_DAEMON_REDIS_H
#define PGC_DAEMON_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

struct event_base;
struct Config;

#define REDIS_MAX_SCRIPTS  8
#define REDIS_MAX_INFLIGHT 20000 /* commands waiting for a reply; more are refused */

/* Where Redis is: parsed from cache_url. */
typedef struct RedisTarget {
    char host[256]; /* "" for a unix socket */
    int port;
    char path[256]; /* unix socket */
    char user[64];  /* "" for AUTH password alone */
    char password[128];
    int db;
} RedisTarget;

/*
 * Parse redis://[[user]:password@]host[:port][/db] or
 * unix:/path[?db=N][&password=P]. False with the reason in err.
 */
bool redis_url_parse(const char *url, RedisTarget *t, char *err, size_t errlen)
    __attribute__((warn_unused_result));

typedef struct Redis Redis;

/* reply: NULL on failure; latency: seconds from sending to the reply. */
typedef void (*RedisReplyFn)(void *arg, redisReply *reply, double latency);

typedef struct RedisStats {
    bool ready;
    uint64_t connects;    /* connections that became ready */
    uint64_t failures;    /* connection failures and losses */
    uint64_t errors;      /* commands answered with an error or no reply */
    uint64_t commands;    /* commands sent */
    uint64_t inflight;    /* waiting for their reply now */
    double latency_sum;   /* seconds, over replies */
    uint64_t latency_n;   /* replies measured */
    double latency_max;   /* seconds */
    char last_error[160]; /* the last connection or command error */
} RedisStats;

/*
 * A connection to t (copied), driven by base; connects at once. The scripts
 * are Lua texts loaded on every connection; redis_eval names them by index.
 * on_ready, when set, runs each time a connection becomes ready (after a
 * failure, invalidations may have been missed: the cache starts a new epoch).
 */
Redis *redis_new(struct event_base *base, const RedisTarget *t, double connect_timeout,
                 const char *const *scripts, int nscripts, void (*on_ready)(void *arg), void *arg);
void redis_free(Redis *r);
bool redis_ready(const Redis *r);

/*
 * EVALSHA of script i with no KEYS and the given ARGV. False when not sent
 * (not ready, too many in flight, out of memory): then fn is never called.
 */
bool redis_eval(Redis *r, int script, RedisReplyFn fn, void *arg, int argc, const char **argv,
                const size_t *argvlen) __attribute__((warn_unused_result));

/*
 * Subscribe to channel (on a second connection, made and remade like the
 * first): fn runs for every message with its payload (reply NULL while
 * unsubscribed after a failure).
 */
bool redis_subscribe(Redis *r, const char *channel,
                     void (*fn)(void *arg, const char *msg, size_t len), void *arg)
    __attribute__((warn_unused_result));

void redis_stats(const Redis *r, RedisStats *out);

#endif
