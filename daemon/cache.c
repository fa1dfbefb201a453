/*
 * The identity-map cache: lookups, fills and invalidations (daemon/cache.h
 * has the Redis layout and where this sits in the client's stream).
 */
#include "daemon/cache.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "daemon/catalog.h"
#include "daemon/log.h"
#include "daemon/redis.h"
#include "daemon/repl.h"
#include "orm/cache_key.h"
#include "proto/msg.h"

#define CACHE_STMT        "__pgcoalesce_cache__" /* the proxy's statement for a named client's */
#define CACHE_MAX_INVAL   64                     /* writes remembered per transaction */
#define CACHE_MAX_MSG     (1u << 20) /* longer server messages in a fill are streamed, not kept */
#define CACHE_KEYNAME     1200       /* a Redis key name: prefix, names, pk */
#define ENTRY_HAS_ROWDESC 0x1

/* ---- the scripts: every key name is built here in C and passed as ARGV ------------------- */

enum { SCRIPT_LOOKUP, SCRIPT_FILL, SCRIPT_ROW, SCRIPT_BUMP, NSCRIPTS };

/* ARGV: ekey gkey vkey cprefix pk field ttl -> {e, g, v[, answer]} */
static const char lua_lookup[] =
    "local e = redis.call('GET', ARGV[1]) or '0'\n"
    "local g = redis.call('GET', ARGV[2]) or '0'\n"
    "local v = redis.call('GET', ARGV[3]) or '0'\n"
    "local val = redis.call('HGET', ARGV[4] .. e .. '.' .. g .. ':' .. ARGV[5], ARGV[6])\n"
    "if not val then return {e, g, v} end\n"
    "local a = string.find(val, '|', 1, true)\n"
    "local b = a and string.find(val, '|', a + 1, true)\n"
    "if not b or string.sub(val, 1, a - 1) ~= v then return {e, g, v} end\n"
    "local t = redis.call('TIME')\n"
    "if tonumber(t[1]) - tonumber(string.sub(val, a + 1, b - 1)) >= tonumber(ARGV[7]) then\n"
    "  return {e, g, v}\n"
    "end\n"
    "return {e, g, v, string.sub(val, b + 1)}\n";

/* ARGV: ekey gkey vkey cprefix pk field ttl e g v answer -> 1 stored, 0 refused */
static const char lua_fill[] =
    "if (redis.call('GET', ARGV[1]) or '0') ~= ARGV[8] or\n"
    "   (redis.call('GET', ARGV[2]) or '0') ~= ARGV[9] or\n"
    "   (redis.call('GET', ARGV[3]) or '0') ~= ARGV[10] then return 0 end\n"
    "local ck = ARGV[4] .. ARGV[8] .. '.' .. ARGV[9] .. ':' .. ARGV[5]\n"
    "local t = redis.call('TIME')\n"
    "redis.call('HSET', ck, ARGV[6], ARGV[10] .. '|' .. t[1] .. '|' .. ARGV[11])\n"
    "redis.call('EXPIRE', ck, ARGV[7])\n"
    "if ARGV[10] ~= '0' then redis.call('EXPIRE', ARGV[3], tonumber(ARGV[7]) + 60) end\n"
    "return 1\n";

/* ARGV: vkey ttl channel message: a row changed. The version outlives every
 * entry filled under it (entries live ttl from their fill). */
static const char lua_row[] = "local v = redis.call('INCR', ARGV[1])\n"
                              "redis.call('EXPIRE', ARGV[1], tonumber(ARGV[2]) + 60)\n"
                              "redis.call('PUBLISH', ARGV[3], ARGV[4])\n"
                              "return v\n";

/* ARGV: key channel message: a table generation or the epoch moves on. */
static const char lua_bump[] = "local v = redis.call('INCR', ARGV[1])\n"
                               "redis.call('PUBLISH', ARGV[2], ARGV[3])\n"
                               "return v\n";

static const char *const scripts[NSCRIPTS] = {lua_lookup, lua_fill, lua_row, lua_bump};

/* ---- objects ---------------------------------------------------------------------------- */

typedef struct CacheRepl {
    char *upstream; /* host:port/dbname */
    char *dbname;
    Repl *repl;
    struct CacheWorker *cw;
} CacheRepl;

struct CacheHold;

struct CacheWorker {
    Worker *w;
    Redis *redis;
    CacheStats st;
    uint64_t instance; /* names this process in published messages */
    bool lost;         /* an invalidation did not reach Redis: new epoch once it is back */
    char ekey[96];
    char channel[96];
    CacheRepl **repls;
    int nrepls;
    struct CacheHold *hold_reply_to; /* set while a commit's invalidations are sent */
};

/* Everything naming one entry, and the versions its lookup saw. */
typedef struct EntryAddr {
    uint32_t oid;
    char pk[CACHE_KEY_MAX];
    size_t pklen;
    char field[17];
    char e[24], g[24], v[24];
} EntryAddr;

/* A lookup's execution, then (on a miss) the fill running it on the server. */
typedef struct CacheFill {
    EntryAddr a;
    uint64_t exec_hash; /* of the execution's bytes, to know it again */
    OrmExec x;          /* its form, length and statement (no pointers into the input) */
    bool named;
    double started;
    /* what the server answered */
    uint8_t *rowdesc;
    uint32_t rowdesc_len;
    uint8_t *rows;
    size_t rows_len, rows_cap;
    uint32_t nrows;
    uint8_t tag[64];
    uint32_t tag_len;
    bool failed, too_big;
    size_t pass_left; /* bytes of a message too long to keep, still to forward */
} CacheFill;

typedef struct CacheReq {
    CacheClient *cc; /* NULL: abandoned (timeout, client gone); freed by the reply */
    CacheFill *f;
    struct event *timer;
} CacheReq;

/* A write to remember until its transaction ends. */
typedef struct CacheInval {
    char *schema, *name; /* the table as written */
    uint32_t oid;        /* when known */
    bool whole;          /* no row: the table's generation */
    bool all;            /* tables unknown: the epoch */
    size_t pklen;
    char *pk;
} CacheInval;

/* A commit's invalidations on their way: the client's ReadyForQuery waits for them. */
typedef struct CacheHold {
    struct CacheWorker *cw;
    CacheClient *cc; /* NULL: the client left; the last reply frees the hold */
    int pending;     /* replies still due */
    struct event *timer;
} CacheHold;

struct CacheClient {
    Client *c;
    CacheHold *hold; /* the ReadyForQuery of a commit waits for Redis */
    bool hold_done;  /* ... and may go now: the next cache_commit_hold lets it through */
    CacheReq *req;
    CacheFill *fill;    /* on its server */
    CacheFill *pending; /* a miss waiting for a server */
    bool skip;          /* the execution at the front (skip_hash) goes to the server as it is */
    uint64_t skip_hash;
    bool peeking; /* orm_exec_read is only looking: its Bind is no statement yet */
    bool session_changed;
    bool iso_changed; /* the session's default isolation was set */
    bool tx_wrote;
    bool tx_not_rc;
    CacheInval *inval;
    int ninval;
    bool inval_overflow;
    uint64_t out_digest; /* c->params.digest when out_hash was computed */
    uint64_t out_hash;   /* of the session parameters that change how values are written */
    bool out_known;
};

/* ---- small helpers ---------------------------------------------------------------------- */

static void bypass(CacheWorker *cw, CacheBypass why)
{
    cw->st.bypass[why]++;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void fill_free(CacheFill *f)
{
    if (!f)
        return;
    orm_exec_free(&f->x);
    free(f->rowdesc);
    free(f->rows);
    free(f);
}

static void inval_clear(CacheClient *cc)
{
    for (int i = 0; i < cc->ninval; i++) {
        free(cc->inval[i].schema);
        free(cc->inval[i].name);
        free(cc->inval[i].pk);
    }
    cc->ninval = 0;
    cc->inval_overflow = false;
}

/* ---- key names ---------------------------------------------------------------------------- */

static const char *ns(const CacheWorker *cw)
{
    return cw->w->cfg->cache_namespace;
}

static void key_table(const CacheWorker *cw, const char *db, uint32_t oid, char *out, size_t cap)
{
    snprintf(out, cap, "%s:g:%zu:%s:%" PRIu32, ns(cw), strlen(db), db, oid);
}

/* NS:v:<db>:<oid>:<pk>; the pk may hold any byte: lengths returned. */
static size_t key_row(const CacheWorker *cw, const char *db, uint32_t oid, const char *pk,
                      size_t pklen, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s:v:%zu:%s:%" PRIu32 ":", ns(cw), strlen(db), db, oid);

    if (n < 0 || (size_t)n + pklen > cap)
        return 0;
    memcpy(out + n, pk, pklen);
    return (size_t)n + pklen;
}

static void key_entry_prefix(const CacheWorker *cw, const Pool *p, uint32_t oid, char *out,
                             size_t cap)
{
    snprintf(out, cap, "%s:c:%zu:%s:%zu:%s:%" PRIu32 ":", ns(cw), strlen(p->dbname), p->dbname,
             strlen(p->server_user), p->server_user, oid);
}

/* ---- invalidations ---------------------------------------------------------------------- */

static void inval_reply(void *arg, redisReply *reply, double latency)
{
    CacheWorker *cw = arg;

    if (!reply) {
        cw->lost = true;
        cw->st.inval_lost++;
    }
}

static void hold_reply(void *arg, redisReply *reply, double latency);

/* Send one invalidation script; a commit's (cw->hold_reply_to) are counted on its hold. */
static void send_inval(CacheWorker *cw, int script, int argc, const char **argv, const size_t *lens)
{
    struct CacheHold *h = cw->hold_reply_to;
    bool ok = h ? redis_eval(cw->redis, script, hold_reply, h, argc, argv, lens)
                : redis_eval(cw->redis, script, inval_reply, cw, argc, argv, lens);

    if (!ok) {
        cw->lost = true;
        cw->st.inval_lost++;
    } else if (h) {
        h->pending++;
    }
}

static void send_bump(CacheWorker *cw, const char *key, char kind, uint32_t oid, const char *db)
{
    char msg[256];
    const char *argv[3] = {key, cw->channel, msg};

    snprintf(msg, sizeof(msg), "%016" PRIx64 " %c %" PRIu32 " %s", cw->instance, kind, oid,
             db ? db : "");
    send_inval(cw, SCRIPT_BUMP, 3, argv, NULL);
}

static void inval_all(CacheWorker *cw)
{
    cw->st.epoch_bumps++;
    send_bump(cw, cw->ekey, 'e', 0, NULL);
}

static void inval_table(CacheWorker *cw, const char *db, uint32_t oid)
{
    char key[CACHE_KEYNAME];

    cw->st.table_bumps++;
    key_table(cw, db, oid, key, sizeof(key));
    send_bump(cw, key, 'g', oid, db);
}

static void inval_row(CacheWorker *cw, const char *db, uint32_t oid, const char *pk, size_t pklen)
{
    char key[CACHE_KEYNAME], ttl[16], msg[256];
    const char *argv[4] = {key, ttl, cw->channel, msg};
    size_t lens[4];

    lens[0] = key_row(cw, db, oid, pk, pklen, key, sizeof(key));
    if (lens[0] == 0) {
        inval_table(cw, db, oid);
        return;
    }
    snprintf(ttl, sizeof(ttl), "%d", cw->w->cfg->cache_ttl);
    snprintf(msg, sizeof(msg), "%016" PRIx64 " r %" PRIu32 " %s", cw->instance, oid, db);
    lens[1] = strlen(ttl);
    lens[2] = strlen(cw->channel);
    lens[3] = strlen(msg);
    send_inval(cw, SCRIPT_ROW, 4, argv, lens);
}

/* One remembered write, sent now if its table is known; false when it is not (yet). */
static bool inval_send(Client *c, const CacheInval *iv, bool force)
{
    CacheWorker *cw = c->w->cache;
    const char *db = c->pool->dbname;
    uint32_t oid = iv->oid;

    if (iv->all) {
        inval_all(cw);
        return true;
    }
    if (!oid) {
        const TableInfo *ti =
            c->pool->catalog ? catalog_table(c->pool->catalog, iv->schema, iv->name) : NULL;
        if (!ti) {
            if (force)
                inval_all(cw); /* not known even now: everything, to be safe */
            return force;
        }
        if (ti->oid == 0)
            return true; /* no such table: nothing of it is cached */
        oid = ti->oid;
    }
    if (iv->whole || !iv->pk)
        inval_table(cw, db, oid);
    else
        inval_row(cw, db, oid, iv->pk, iv->pklen);
    return true;
}

/* ---- replication and other instances --------------------------------------------------- */

static void repl_row(void *arg, uint32_t relid, const char *key, size_t keylen)
{
    CacheRepl *re = arg;

    re->cw->st.inval_replication++;
    inval_row(re->cw, re->dbname, relid, key, keylen);
}

static void repl_table(void *arg, uint32_t relid)
{
    CacheRepl *re = arg;

    re->cw->st.inval_replication++;
    inval_table(re->cw, re->dbname, relid);
}

static void repl_all(void *arg)
{
    CacheRepl *re = arg;

    re->cw->st.inval_replication++;
    inval_all(re->cw);
}

/* cache_invalidation = replication: one stream per upstream database, shared by its pools. */
static void ensure_repl(CacheWorker *cw, Pool *p)
{
    char up[512];
    CacheRepl *re, **n;
    ReplCallbacks cb = {repl_row, repl_table, repl_all, NULL};

    if (cw->w->cfg->cache_invalidation != CACHE_INVAL_REPLICATION || p->cache_repl)
        return;
    snprintf(up, sizeof(up), "%s:%d/%s", p->host, p->port, p->dbname);
    for (int i = 0; i < cw->nrepls; i++)
        if (strcmp(cw->repls[i]->upstream, up) == 0) {
            p->cache_repl = cw->repls[i];
            return;
        }
    n = realloc(cw->repls, sizeof(*n) * (size_t)(cw->nrepls + 1));
    if (!n)
        return;
    cw->repls = n;
    re = calloc(1, sizeof(*re));
    if (!re)
        return;
    re->cw = cw;
    re->upstream = strdup(up);
    re->dbname = strdup(p->dbname);
    cb.arg = re;
    re->repl = re->upstream && re->dbname ? repl_new(p, &cb) : NULL;
    if (!re->repl) {
        free(re->upstream);
        free(re->dbname);
        free(re);
        return;
    }
    cw->repls[cw->nrepls++] = re;
    p->cache_repl = re;
}

static void forget_catalogs(Worker *w)
{
    for (ListNode *ln = list_first(&w->pools); ln; ln = list_next(&w->pools, ln)) {
        Pool *p = list_entry(ln, Pool);
        if (p->catalog)
            catalog_forget_all(p->catalog);
    }
}

/* A message on NS:inval: "<instance> <kind> <oid> <db>". */
static void on_published(void *arg, const char *msg, size_t len)
{
    CacheWorker *cw = arg;
    char me[17];

    snprintf(me, sizeof(me), "%016" PRIx64, cw->instance);
    if (len < 18 || memcmp(msg, me, 16) == 0)
        return;
    cw->st.inval_remote++;
    if (msg[17] == 'd')
        forget_catalogs(cw->w); /* DDL elsewhere: primary keys may have changed */
}

static void on_redis_ready(void *arg)
{
    CacheWorker *cw = arg;

    if (cw->lost) {
        /* Invalidations were lost while Redis was away: nothing cached before may be trusted. */
        cw->lost = false;
        inval_all(cw);
    }
}

/* ---- worker ----------------------------------------------------------------------------- */

bool cache_worker_init(Worker *w)
{
    const Config *cfg = w->cfg;
    CacheWorker *cw;
    RedisTarget t;
    char err[256];

    if (!cfg->cache_url || !*cfg->cache_url)
        return true;
    if (cfg->n1_mode == N1_MODE_OFF) {
        log_warning("cache_url is set but n1_mode = off: the cache needs statement shapes "
                    "(n1_mode = detect or batch); running without the cache");
        return true;
    }
    if (!redis_url_parse(cfg->cache_url, &t, err, sizeof(err))) {
        log_error("%s", err);
        return false;
    }
    cw = calloc(1, sizeof(*cw));
    if (!cw)
        return false;
    cw->w = w;
    cw->instance =
        ((uint64_t)getpid() << 32) ^ (uint64_t)(now_sec() * 1e6) ^ (uint64_t)(uintptr_t)cw;
    snprintf(cw->ekey, sizeof(cw->ekey), "%s:e", cfg->cache_namespace);
    snprintf(cw->channel, sizeof(cw->channel), "%s:inval", cfg->cache_namespace);
    cw->redis =
        redis_new(w->base, &t, cfg->cache_connect_timeout, scripts, NSCRIPTS, on_redis_ready, cw);
    if (!cw->redis || !redis_subscribe(cw->redis, cw->channel, on_published, cw)) {
        redis_free(cw->redis);
        free(cw);
        return false;
    }
    w->cache = cw;
    log_info("identity-map cache on %s (namespace %s, invalidation: %s)",
             t.path[0] ? t.path : t.host, cfg->cache_namespace,
             cfg->cache_invalidation == CACHE_INVAL_REPLICATION ? "proxy and replication"
                                                                : "proxy");
    return true;
}

void cache_worker_free(Worker *w)
{
    CacheWorker *cw = w->cache;

    if (!cw)
        return;
    for (int i = 0; i < cw->nrepls; i++) {
        repl_free(cw->repls[i]->repl);
        free(cw->repls[i]->upstream);
        free(cw->repls[i]->dbname);
        free(cw->repls[i]);
    }
    free(cw->repls);
    redis_free(cw->redis); /* replies still due run now and find their clients gone */
    free(cw);
    w->cache = NULL;
}

void cache_pool_free(Pool *p)
{
    catalog_free(p->catalog);
    p->catalog = NULL;
}

/* ---- clients ---------------------------------------------------------------------------- */

/* Does a startup parameter move the session off what the catalog and the cache assume? */
static void note_startup(CacheClient *cc, const Client *c)
{
    for (int i = 0; i < c->startup.n; i++) {
        const char *n = c->startup.v[i].name, *v = c->startup.v[i].value;
        if (strcasecmp(n, "search_path") == 0 || strcasecmp(n, "role") == 0)
            cc->session_changed = true;
        else if (strcasecmp(n, "default_transaction_isolation") == 0)
            cc->iso_changed = true;
        else if (strcasecmp(n, "options") == 0 && v &&
                 (strcasestr(v, "search_path") || strcasestr(v, "role") ||
                  strcasestr(v, "session_authorization")))
            cc->session_changed = true;
        else if (strcasecmp(n, "options") == 0 && v && strcasestr(v, "isolation"))
            cc->iso_changed = true;
    }
}

static CacheClient *cc_get(Client *c)
{
    CacheClient *cc = c->cache;

    if (cc)
        return cc;
    cc = calloc(1, sizeof(*cc));
    if (!cc)
        return NULL;
    cc->c = c;
    note_startup(cc, c);
    c->cache = cc;
    return cc;
}

void cache_client_free(Client *c)
{
    CacheClient *cc = c->cache;

    if (!cc)
        return;
    if (cc->req) {
        cc->req->cc = NULL; /* its reply frees it */
        if (cc->req->timer)
            event_del(cc->req->timer);
    }
    if (cc->hold) {
        CacheHold *h = cc->hold;
        h->cc = NULL; /* its last reply frees it */
        if (h->timer)
            event_free(h->timer);
        h->timer = NULL;
        if (h->pending == 0)
            free(h);
    }
    /* A COMMIT whose answer the client did not wait for may still land:
     * invalidate what it wrote once more. */
    if (cc->ninval > 0 && c->pool && c->w->cache)
        for (int i = 0; i < cc->ninval; i++)
            inval_send(c, &cc->inval[i], true);
    inval_clear(cc);
    free(cc->inval);
    fill_free(cc->fill);
    fill_free(cc->pending);
    free(cc);
    c->cache = NULL;
}

void cache_client_forwarded(Client *c)
{
    if (c->cache) {
        c->cache->skip = false;
        fill_free(c->cache->pending);
        c->cache->pending = NULL;
    }
}

void cache_peek(Client *c, bool on)
{
    if (c->cache)
        c->cache->peeking = on;
}

/* ---- writes passing through ------------------------------------------------------------ */

/* Remember a write for the commit (and send it now when its table is known). */
static void note_write(Client *c, CacheClient *cc, const ShapeTableRef *t, const char *pk,
                       size_t pklen, bool all)
{
    CacheWorker *cw = c->w->cache;
    CacheInval *iv;

    if (cc->ninval >= CACHE_MAX_INVAL) {
        cc->inval_overflow = true; /* too many to list: the epoch at commit */
        return;
    }
    if (!cc->inval) {
        cc->inval = calloc(CACHE_MAX_INVAL, sizeof(*cc->inval));
        if (!cc->inval) {
            cc->inval_overflow = true;
            return;
        }
    }
    iv = &cc->inval[cc->ninval];
    memset(iv, 0, sizeof(*iv));
    iv->all = all || !t;
    if (t) {
        iv->schema = t->schema ? strdup(t->schema) : NULL;
        iv->name = strdup(t->name);
        if (!iv->name || (t->schema && !iv->schema)) {
            free(iv->schema);
            free(iv->name);
            iv->schema = iv->name = NULL;
            iv->all = true;
        }
    }
    iv->whole = !pk;
    if (pk && !iv->all) {
        iv->pk = malloc(pklen ? pklen : 1);
        if (iv->pk) {
            memcpy(iv->pk, pk, pklen);
            iv->pklen = pklen;
        } else {
            iv->whole = true;
        }
    }
    cc->ninval++;
    if (c->pool && !c->pool->catalog)
        c->pool->catalog = catalog_new(c->pool);
    /* now, when the table is known; the commit sends it again (or resolves it then) */
    if (inval_send(c, iv, false))
        cw->st.inval_statement++;
}

/* A placeholder's value as text: a literal of text, or a Bind value. False when none. */
static bool param_text(const char *text, const ShapeBuf *sb, const OrmShapeCache *k, int param,
                       const ShapeValue *binds, int nbinds, const uint8_t **v, size_t *len,
                       char *buf, size_t cap)
{
    uint32_t bind = 0;

    if (sb) {
        const ShapeParam *pp;
        const ShapeLit *lit;
        if (param < 1 || (uint32_t)param > sb->nparams)
            return false;
        pp = &sb->params[param - 1];
        if (pp->n != 1)
            return false;
        lit = &sb->lits[pp->first];
        if (lit->kind == SHAPE_LIT_NULL)
            return false;
        if (lit->kind != SHAPE_LIT_BIND) {
            size_t n = shape_lit_text(text, lit, buf, cap);
            if (n >= cap)
                return false;
            *v = (const uint8_t *)buf;
            *len = n;
            return true;
        }
        bind = lit->bind;
    } else if (k) {
        if (param < 1 || (uint32_t)param > k->nparams || k->src[param - 1].bind == 0)
            return false;
        bind = k->src[param - 1].bind;
    }
    if (bind < 1 || (int)bind > nbinds || binds[bind - 1].len < 0)
        return false;
    *v = binds[bind - 1].data;
    *len = (size_t)binds[bind - 1].len;
    return true;
}

/* The primary key of an UPDATE/DELETE's WHERE, canonical; false when it does not give it all. */
static bool write_key(const ShapeInfo *info, const TableInfo *ti, const char *text,
                      const ShapeBuf *sb, const OrmShapeCache *k, const ShapeValue *binds,
                      int nbinds, CacheKey *key)
{
    char buf[CACHE_KEY_MAX];

    cache_key_init(key, ti->npk);
    for (int j = 0; j < ti->npk; j++) {
        const ShapeKey *sk = NULL;
        const uint8_t *v;
        size_t len;
        for (int i = 0; i < info->nkeys && !sk; i++)
            if (info->keys[i].table == 0 && strcmp(info->keys[i].column, ti->pk_name[j]) == 0)
                sk = &info->keys[i];
        /* orm_feed.c made binary integers and uuids text already */
        if (!sk || !param_text(text, sb, k, sk->param, binds, nbinds, &v, &len, buf, sizeof(buf)) ||
            !cache_key_add(key, ti->pk_type[j], v, len, false))
            return false;
    }
    return cache_key_done(key);
}

/* UPDATE / DELETE (and INSERT ... ON CONFLICT): the row when the WHERE names it, else the table. */
static void note_dml(Client *c, CacheClient *cc, const ShapeInfo *info, const char *text,
                     const ShapeBuf *sb, const OrmShapeCache *k, const ShapeValue *binds,
                     int nbinds)
{
    const ShapeTableRef *t = info->ntables > 0 ? &info->tables[0] : NULL;
    const TableInfo *ti;
    CacheKey key;

    if (!t || (info->flags & SHAPE_F_MANY_TABLES)) {
        note_write(c, cc, NULL, NULL, 0, true);
        return;
    }
    if (!c->pool->catalog)
        c->pool->catalog = catalog_new(c->pool);
    ti = c->pool->catalog ? catalog_table(c->pool->catalog, t->schema, t->name) : NULL;
    if (info->kind != SHAPE_KIND_INSERT && ti && ti->oid && ti->npk > 0 &&
        write_key(info, ti, text, sb, k, binds, nbinds, &key))
        note_write(c, cc, t, key.buf, key.len, false);
    else
        note_write(c, cc, t, NULL, 0, false);
}

static bool has_word(const char *sql, const char *w)
{
    return strstr(sql, w) != NULL;
}

/*
 * Is this SET / RESET one that cannot change what a cached read answers?
 * Parameters the server reports (TimeZone, DateStyle, ...) are part of every
 * entry's field; timeouts and planner settings do not change answers. Any
 * other (search_path, role, extra_float_digits, bytea_output, ...) makes the
 * session bypass the cache.
 */
static bool set_harmless(const char *sql)
{
    static const char *const ok[] = {"application_name",
                                     "client_encoding",
                                     "datestyle",
                                     "timezone",
                                     "time zone",
                                     "intervalstyle",
                                     "standard_conforming_strings",
                                     "statement_timeout",
                                     "lock_timeout",
                                     "idle_in_transaction_session_timeout",
                                     "idle_session_timeout",
                                     "work_mem",
                                     "maintenance_work_mem",
                                     "jit",
                                     "random_page_cost",
                                     "enable_",
                                     "transaction",
                                     "default_transaction_isolation",
                                     "session characteristics",
                                     "names",
                                     "local statement",
                                     "local lock",
                                     "local work_mem",
                                     "local transaction",
                                     "constraints",
                                     "transaction_isolation",
                                     "synchronous_commit",
                                     "local synchronous_commit",
                                     "temp_buffers",
                                     "log_",
                                     "track_"};
    const char *w = sql + (strncmp(sql, "set ", 4) == 0 ? 4 : 6); /* "set " or "reset " */

    if (strncmp(w, "session ", 8) == 0 && strncmp(w, "session characteristics", 23) != 0 &&
        strncmp(w, "session authorization", 21) != 0)
        w += 8;
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        if (strncmp(w, ok[i], strlen(ok[i])) == 0)
            return true;
    return false;
}

/* SET, RESET, BEGIN, DISCARD ...: what they do to the session and the transaction. */
static void note_utility(CacheClient *cc, const ShapeInfo *info)
{
    const char *sql = info->sql;
    bool set = strncmp(sql, "set ", 4) == 0 || strncmp(sql, "reset ", 6) == 0;

    if (strcmp(sql, "discard all") == 0 || strcmp(sql, "reset all") == 0) {
        cc->session_changed = cc->iso_changed = false;
        note_startup(cc, cc->c);
        return;
    }
    if (set && !set_harmless(sql))
        cc->session_changed = true;
    if (set && (has_word(sql, "default_transaction_isolation") ||
                has_word(sql, "session characteristics")))
        cc->iso_changed = true;
    if ((strncmp(sql, "begin", 5) == 0 || strncmp(sql, "start transaction", 17) == 0 ||
         strncmp(sql, "set transaction", 15) == 0 ||
         (set && has_word(sql, " transaction_isolation"))) &&
        (has_word(sql, "repeatable read") || has_word(sql, "serializable") ||
         has_word(sql, "transaction_isolation")))
        cc->tx_not_rc = true;
}

void cache_note_statement(Client *c, const OrmStmt *e, const char *text, const ShapeBuf *sb,
                          const OrmShapeCache *k, const ShapeValue *binds, int nbinds)
{
    const ShapeInfo *info = e->info;
    CacheClient *cc;

    if (info && info->kind == SHAPE_KIND_SELECT && (info->flags & SHAPE_F_READ_ONLY) &&
        !(info->flags & SHAPE_F_VOLATILE))
        return; /* a read: the common case */
    if (!c->w->cache || !(cc = cc_get(c)) || cc->peeking)
        return;
    if (!info) {
        /* unknown or several statements: could write anything */
        cc->tx_wrote = true;
        note_write(c, cc, NULL, NULL, 0, true);
        return;
    }
    switch (info->kind) {
    case SHAPE_KIND_UTILITY:
        note_utility(cc, info);
        return;
    case SHAPE_KIND_SELECT:
        /* a function that may write: no cache for the rest of the transaction; its
         * writes are seen through replication only (README) */
        cc->tx_wrote = true;
        if (info->flags & SHAPE_F_WRITE_CTE)
            note_write(c, cc, NULL, NULL, 0, true);
        if (has_word(info->sql, "set_config"))
            cc->session_changed = true; /* a setting that may change answers (search_path, ...) */
        return;
    case SHAPE_KIND_INSERT:
        /* a plain INSERT makes new rows, and empty answers are never cached */
        cc->tx_wrote = true;
        if (has_word(info->sql, "on conflict"))
            note_dml(c, cc, info, text, sb, k, binds, nbinds);
        return;
    case SHAPE_KIND_UPDATE:
    case SHAPE_KIND_DELETE:
        cc->tx_wrote = true;
        note_dml(c, cc, info, text, sb, k, binds, nbinds);
        return;
    default:
        /* DDL, TRUNCATE, COPY, CALL, ...: everything, and the catalog's facts */
        cc->tx_wrote = true;
        if (has_word(info->sql, "temp"))
            cc->session_changed = true; /* a temp table may hide the table the catalog saw */
        note_write(c, cc, NULL, NULL, 0, true);
        if (c->pool->catalog)
            catalog_forget_all(c->pool->catalog);
        {
            CacheWorker *cw = c->w->cache;
            send_bump(cw, cw->ekey, 'd', 0, c->pool->dbname);
        }
        return;
    }
}

/* Let the held ReadyForQuery go: relay the server's input again. */
static void hold_release(CacheClient *cc)
{
    Client *c = cc->c;
    Server *s = c->server;
    CacheHold *h = cc->hold;

    cc->hold = NULL;
    h->cc = NULL;
    if (h->timer) {
        event_free(h->timer);
        h->timer = NULL;
    }
    if (h->pending == 0)
        free(h);
    cc->hold_done = true;
    if (s && s->client == c && s->state == SV_ACTIVE) {
        io_read(&s->io, true);
        server_relay(s);
    }
}

static void hold_reply(void *arg, redisReply *reply, double latency)
{
    CacheHold *h = arg;

    if (!reply) {
        h->cw->lost = true;
        h->cw->st.inval_lost++;
    }
    if (--h->pending > 0)
        return;
    if (h->cc)
        hold_release(h->cc);
    else
        free(h);
}

/* cache_timeout passed: Redis has the commands queued in order (or the
 * connection breaks, and the epoch moves on when it is back). */
static void hold_timeout(evutil_socket_t fd, short ev, void *arg)
{
    CacheHold *h = arg;

    if (h->cc)
        hold_release(h->cc);
}

bool cache_commit_hold(Client *c, char status)
{
    CacheClient *cc = c->cache;
    CacheWorker *cw = c->w->cache;
    CacheHold *h;
    double t = c->w->cfg->cache_timeout;
    struct timeval tv = {(time_t)t, (suseconds_t)((t - (double)(time_t)t) * 1e6)};

    if (!cc || status != 'I')
        return false;
    if (cc->hold)
        return true; /* still waiting for Redis */
    if (cc->hold_done) {
        cc->hold_done = false;
        return false;
    }
    cc->tx_wrote = false;
    cc->tx_not_rc = false;
    if (cc->ninval == 0 && !cc->inval_overflow)
        return false;
    h = calloc(1, sizeof(*h));
    if (h)
        h->cw = cw;
    cw->hold_reply_to = h; /* the invalidations below count their replies on h */
    if (cc->inval_overflow) {
        inval_all(cw);
    } else {
        for (int i = 0; i < cc->ninval; i++)
            inval_send(c, &cc->inval[i], true);
    }
    cw->hold_reply_to = NULL;
    cw->st.inval_commit += (uint64_t)cc->ninval;
    inval_clear(cc);
    if (!h)
        return false;
    if (h->pending == 0) {
        free(h); /* nothing reached Redis (it is away): the epoch moves on when it is back */
        return false;
    }
    h->cc = cc;
    h->timer = evtimer_new(c->w->base, hold_timeout, h);
    if (!h->timer) {
        h->cc = NULL; /* the replies free it */
        return false;
    }
    evtimer_add(h->timer, &tv);
    /* The commands go out at the end of this turn of the loop, from hiredis's
     * write event: replies (NULL ones too, when the write fails) therefore
     * always come from a callback of their own, never from inside this
     * server_relay, so hold_release may relay again. */
    cc->hold = h;
    return true;
}

/* ---- lookups ------------------------------------------------------------------------------- */

/* Value i of the client's Bind (the body after its names): bytes, length (-1 NULL), format. */
static bool bind_value(const OrmExec *x, int i, const uint8_t **v, int32_t *len, bool *binary)
{
    MsgReader r;
    int nfmt, nvals;
    const uint8_t *fmts;

    mr_init(&r, x->bind, x->bind_len);
    nfmt = mr_i16(&r);
    fmts = mr_bytes(&r, 2 * (size_t)(nfmt > 0 ? nfmt : 0));
    nvals = mr_i16(&r);
    if (r.bad || nfmt < 0 || i >= nvals || (nfmt > 1 && nfmt != nvals))
        return false;
    for (int j = 0; j <= i; j++) {
        *len = mr_i32(&r);
        *v = *len > 0 ? mr_bytes(&r, (size_t)*len) : (const uint8_t *)"";
        if (r.bad || !*v)
            return false;
    }
    *binary = nfmt > 0 && fmts && fmts[2 * (nfmt == 1 ? 0 : i) + 1] == 1;
    return true;
}

/* The entry's primary key from the statement's WHERE; false when it does not give it all. */
static bool read_key(OrmWorker *ow, const OrmExec *x, const ShapeInfo *info, const TableInfo *ti,
                     CacheKey *key, uint64_t *pk_params)
{
    ShapeBuf *sb = ow->sb;
    char buf[CACHE_KEY_MAX];

    /* a Query was just shaped from this very text by orm_exec_read (nothing shaped
     * since); an extended execution may have come from a shape cache */
    if (!(x->simple && sb->status == SHAPE_OK && sb->hash == info->hash) &&
        !shape_normalize(x->text, x->text_len, sb))
        return false;
    if (sb->nstmts != 1)
        return false;
    cache_key_init(key, ti->npk);
    *pk_params = 0;
    for (int j = 0; j < ti->npk; j++) {
        const ShapeKey *sk = NULL;
        const ShapeParam *pp;
        const ShapeLit *lit;
        for (int i = 0; i < info->nkeys && !sk; i++)
            if (info->keys[i].table == 0 && strcmp(info->keys[i].column, ti->pk_name[j]) == 0)
                sk = &info->keys[i];
        if (!sk || sk->param < 1 || (uint32_t)sk->param > sb->nparams)
            return false;
        pp = &sb->params[sk->param - 1];
        if (pp->n != 1)
            return false;
        if (sk->param <= 64)
            *pk_params |= 1ULL << (sk->param - 1);
        lit = &sb->lits[pp->first];
        if (lit->kind == SHAPE_LIT_NULL)
            return false;
        if (lit->kind == SHAPE_LIT_BIND) {
            const uint8_t *v = NULL;
            int32_t len = -1;
            bool binary = false;
            if (x->simple || !bind_value(x, lit->bind - 1, &v, &len, &binary) || len < 0 ||
                !cache_key_add(key, ti->pk_type[j], v, (size_t)len, binary))
                return false;
        } else {
            size_t n = shape_lit_text(x->text, lit, buf, sizeof(buf));
            if (n >= sizeof(buf) || !cache_key_add(key, ti->pk_type[j], buf, n, false))
                return false;
        }
    }
    return cache_key_done(key);
}

/*
 * The session parameters that change the bytes of an answer (how dates,
 * intervals and text are written), hashed: the reported ones the session
 * has now, and every startup parameter but application_name (drivers such as
 * JDBC set extra_float_digits there). SETs of anything else that could
 * matter make the session bypass (note_utility).
 */
static uint64_t output_hash(CacheClient *cc, const Client *c)
{
    static const char *const reported[] = {"client_encoding", "DateStyle", "IntervalStyle",
                                           "TimeZone", "standard_conforming_strings"};
    uint64_t h = 0x84222325cbf29ce4ULL;

    if (cc->out_known && cc->out_digest == c->params.digest)
        return cc->out_hash;
    for (size_t i = 0; i < sizeof(reported) / sizeof(reported[0]); i++) {
        const char *v = params_get(&c->params, reported[i]);
        h = h * 31 + shape_hash_bytes(v ? v : "", v ? strlen(v) : 0) + i;
    }
    for (int i = 0; i < c->startup.n; i++) {
        const char *n = c->startup.v[i].name, *v = c->startup.v[i].value;
        if (strcasecmp(n, "application_name") == 0 || strcasecmp(n, "user") == 0 ||
            strcasecmp(n, "database") == 0)
            continue;
        /* order-independent: the startup packet's order is the driver's */
        h += shape_hash_bytes(n, strlen(n)) ^ shape_hash_bytes(v ? v : "", v ? strlen(v) : 0);
    }
    cc->out_digest = c->params.digest;
    cc->out_hash = h;
    cc->out_known = true;
    return h;
}

/* The hash field: the shape, the result formats, the output parameters, every parameter
 * that is not the key. */
static void entry_field(const OrmStmt *e, uint64_t pk_params, uint64_t out_hash, char out[17])
{
    uint64_t h[ORM_STMT_PARAMS + 4];
    int n = 0;

    h[n++] = e->info->hash;
    h[n++] = out_hash;
    h[n++] = e->res_fmt;
    h[n++] = e->res_bin;
    /* params[N1_MAX_PARAMS] folds the rest: it stays in, key or not */
    for (int i = 0; i < e->nparams; i++)
        if (i >= N1_MAX_PARAMS || !(pk_params >> i & 1))
            h[n++] = e->params[i];
    snprintf(out, 17, "%016" PRIx64, shape_hash_bytes(h, (size_t)n * sizeof(h[0])));
}

/* May this client's statement use the cache now? The reason when not. */
static bool session_ok(Client *c, CacheClient *cc, CacheBypass *why)
{
    char st = orm_client_status(c);

    if (cc->session_changed) {
        *why = CACHE_BYPASS_SESSION;
        return false;
    }
    if (st == 'T' && cc->tx_wrote) {
        *why = CACHE_BYPASS_WROTE;
        return false;
    }
    if (st == 'T' &&
        (cc->tx_not_rc || cc->iso_changed || catalog_read_committed(c->pool->catalog) != 1)) {
        *why = CACHE_BYPASS_ISOLATION;
        return false;
    }
    return st == 'I' || st == 'T';
}

static void lookup_reply(void *arg, redisReply *reply, double latency);

static void lookup_timeout(evutil_socket_t fd, short ev, void *arg)
{
    CacheReq *q = arg;
    CacheClient *cc = q->cc;
    Client *c;

    if (!cc)
        return;
    c = cc->c;
    q->cc = NULL; /* the reply, when it comes, only frees q */
    cc->req = NULL;
    cc->skip = true;
    cc->skip_hash = q->f->exec_hash;
    bypass(c->w->cache, CACHE_BYPASS_TIMEOUT);
    client_continue(c);
}

/* Send the lookup for f; the client waits. False when it could not be sent. */
static bool lookup_send(Client *c, CacheClient *cc, CacheFill *f)
{
    CacheWorker *cw = c->w->cache;
    char gkey[CACHE_KEYNAME], vkey[CACHE_KEYNAME], cprefix[CACHE_KEYNAME], ttl[16];
    const char *argv[7] = {cw->ekey, gkey, vkey, cprefix, f->a.pk, f->a.field, ttl};
    size_t lens[7];
    CacheReq *q = calloc(1, sizeof(*q));
    double t = c->w->cfg->cache_timeout;
    struct timeval tv = {(time_t)t, (suseconds_t)((t - (double)(time_t)t) * 1e6)};

    if (!q)
        return false;
    key_table(cw, c->pool->dbname, f->a.oid, gkey, sizeof(gkey));
    lens[2] = key_row(cw, c->pool->dbname, f->a.oid, f->a.pk, f->a.pklen, vkey, sizeof(vkey));
    key_entry_prefix(cw, c->pool, f->a.oid, cprefix, sizeof(cprefix));
    snprintf(ttl, sizeof(ttl), "%d", c->w->cfg->cache_ttl);
    lens[0] = strlen(cw->ekey);
    lens[1] = strlen(gkey);
    lens[3] = strlen(cprefix);
    lens[4] = f->a.pklen;
    lens[5] = 16;
    lens[6] = strlen(ttl);
    q->timer = evtimer_new(c->w->base, lookup_timeout, q);
    if (!q->timer || lens[2] == 0 ||
        !redis_eval(cw->redis, SCRIPT_LOOKUP, lookup_reply, q, 7, argv, lens)) {
        if (q->timer)
            event_free(q->timer);
        free(q);
        return false;
    }
    q->cc = cc;
    q->f = f;
    cc->req = q;
    evtimer_add(q->timer, &tv);
    cw->st.lookups++;
    return true;
}

/* A new lookup for the client's execution x; BATCH_WAIT when sent. */
static BatchResult lookup_start(Client *c, CacheClient *cc, OrmExec *x)
{
    CacheWorker *cw = c->w->cache;
    const ShapeInfo *info = x->stmt.info;
    const ShapeTableRef *t = &info->tables[0];
    const TableInfo *ti;
    CacheBypass why = CACHE_BYPASS_SESSION;
    CacheKey key;
    uint64_t pk_params;
    CacheFill *f;

    if (!c->pool->catalog && !(c->pool->catalog = catalog_new(c->pool)))
        return BATCH_PASS;
    ensure_repl(cw, c->pool);
    if (c->w->cfg->cache_invalidation == CACHE_INVAL_REPLICATION &&
        (!c->pool->cache_repl || !repl_streaming(c->pool->cache_repl->repl))) {
        /* writes made elsewhere are not heard now: the contract cannot be kept */
        bypass(cw, CACHE_BYPASS_REPLICATION);
        return BATCH_PASS;
    }
    if (!session_ok(c, cc, &why)) {
        if (orm_client_status(c) != 'E')
            bypass(cw, why);
        return BATCH_PASS;
    }
    ti = catalog_table(c->pool->catalog, t->schema, t->name);
    if (!ti || !ti->cacheable) {
        bypass(cw, ti ? CACHE_BYPASS_TABLE : CACHE_BYPASS_CATALOG);
        return BATCH_PASS;
    }
    if (!read_key(c->w->orm, x, info, ti, &key, &pk_params)) {
        bypass(cw, CACHE_BYPASS_KEY);
        return BATCH_PASS;
    }
    if (!redis_ready(cw->redis) || !(f = calloc(1, sizeof(*f)))) {
        bypass(cw, CACHE_BYPASS_REDIS);
        return BATCH_PASS;
    }
    f->a.oid = ti->oid;
    memcpy(f->a.pk, key.buf, key.len);
    f->a.pklen = key.len;
    entry_field(&x->stmt, pk_params, output_hash(cc, c), f->a.field);
    f->exec_hash = shape_hash_bytes(x->buf, x->bytes);
    f->x.bytes = x->bytes;
    f->x.simple = x->simple;
    f->x.has_parse = x->has_parse;
    f->x.has_describe = x->has_describe;
    f->named = !x->simple && !x->has_parse;
    f->started = now_sec();
    orm_stmt_copy(&f->x.stmt, &x->stmt);
    if (!lookup_send(c, cc, f)) {
        fill_free(f);
        bypass(cw, CACHE_BYPASS_REDIS);
        return BATCH_PASS;
    }
    return BATCH_WAIT;
}

/* ---- answers -------------------------------------------------------------------------------- */

/*
 * The stored answer: flags u8, then RowDescription (u32 length, the whole
 * message), the DataRows (u32 length, the messages), rows u32, and the
 * CommandComplete message.
 */
typedef struct Entry {
    uint8_t flags;
    const uint8_t *rowdesc, *rows, *tag;
    uint32_t rowdesc_len, rows_len, nrows, tag_len;
} Entry;

static bool entry_read(const uint8_t *p, size_t n, Entry *e)
{
    size_t at = 1;

    if (n < 1 + 4)
        return false;
    e->flags = p[0];
    e->rowdesc_len = get_u32(p + at);
    at += 4;
    if (n - at < e->rowdesc_len + 4)
        return false;
    e->rowdesc = p + at;
    at += e->rowdesc_len;
    e->rows_len = get_u32(p + at);
    at += 4;
    if (n - at < (size_t)e->rows_len + 8)
        return false;
    e->rows = p + at;
    at += e->rows_len;
    e->nrows = get_u32(p + at);
    e->tag = p + at + 4;
    e->tag_len = (uint32_t)(n - at - 4);
    /* a whole CommandComplete whose tag ends in its NUL */
    return e->tag_len > PROTO_HDR_LEN && e->tag[0] == 'C' && e->tag[e->tag_len - 1] == '\0';
}

/* Answer the client's execution from e, as the server would have; drains it. */
static void answer(Client *c, CacheFill *f, const Entry *e)
{
    CacheWorker *cw = c->w->cache;

    cw->st.hits++;
    cw->st.bytes_served += orm_answer(c, &f->x, e->rowdesc, e->rowdesc_len, e->rows, e->rows_len,
                                      (const char *)e->tag + PROTO_HDR_LEN, e->nrows, f->started);
}

static void copy_version(char *dst, const redisReply *r)
{
    snprintf(dst, 24, "%s", r && r->type == REDIS_REPLY_STRING && r->len < 24 ? r->str : "bad");
}

static void lookup_reply(void *arg, redisReply *reply, double latency)
{
    CacheReq *q = arg;
    CacheClient *cc = q->cc;
    CacheFill *f = q->f;
    Client *c;
    Entry e;

    event_free(q->timer);
    free(q);
    if (!cc) {
        fill_free(f); /* abandoned: timed out or the client left */
        return;
    }
    c = cc->c;
    cc->req = NULL;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3) {
        bypass(c->w->cache, CACHE_BYPASS_ERROR);
        cc->skip = true;
        cc->skip_hash = f->exec_hash;
        fill_free(f);
        client_continue(c);
        return;
    }
    copy_version(f->a.e, reply->element[0]);
    copy_version(f->a.g, reply->element[1]);
    copy_version(f->a.v, reply->element[2]);
    if (reply->elements >= 4 && reply->element[3]->type == REDIS_REPLY_STRING &&
        entry_read((const uint8_t *)reply->element[3]->str, reply->element[3]->len, &e) &&
        ((e.flags & ENTRY_HAS_ROWDESC) || (!f->x.simple && !f->x.has_describe))) {
        answer(c, f, &e);
        fill_free(f);
    } else {
        c->w->cache->st.misses++;
        cc->pending = f; /* cache_client sends it to the server when it comes back */
    }
    client_continue(c);
}

/* ---- fills ---------------------------------------------------------------------------------- */

/* The client's own statement, for the fill: the answer is relayed and kept. */
static BatchResult fill_start(Client *c, CacheClient *cc, OrmExec *x)
{
    Server *s = c->server;
    CacheFill *f = cc->pending;
    PktBuf *p;

    if (!s)
        return BATCH_SERVER;
    if (!rq_quiet(s) || s->dirty) {
        cache_client_forwarded(c);
        return BATCH_PASS;
    }
    p = worker_pkt(c->w);
    if (x->simple) {
        pkt_put_bytes(p, x->buf, x->bytes);
    } else {
        const char *name = f->named ? CACHE_STMT : "";
        pkt_begin(p, 'P');
        pkt_put_str(p, name);
        pkt_put_bytes(p, x->text, x->text_len);
        pkt_put_u8(p, 0);
        pkt_put_bytes(p, x->types, x->types_len);
        pkt_end(p);
        pkt_begin(p, 'B');
        pkt_put_u8(p, 0);
        pkt_put_str(p, name);
        pkt_put_bytes(p, x->bind, x->bind_len);
        pkt_end(p);
        pkt_begin(p, 'D');
        pkt_put_u8(p, 'P');
        pkt_put_u8(p, 0);
        pkt_end(p);
        pkt_begin(p, 'E');
        pkt_put_u8(p, 0);
        pkt_put_i32(p, 0);
        pkt_end(p);
        if (f->named) {
            pkt_begin(p, 'C');
            pkt_put_u8(p, 'S');
            pkt_put_str(p, CACHE_STMT);
            pkt_end(p);
        }
        pkt_begin(p, 'S');
        pkt_end(p);
    }
    if (!rq_push(s, RQ_CACHE_FILL, NULL, NULL)) {
        client_error_close(c, "53200", "out of memory");
        return BATCH_WAIT;
    }
    cc->fill = f;
    cc->pending = NULL;
    f->started = now_sec();
    stats_query_begin(s);
    server_send(s, p);
    return BATCH_WAIT;
}

static void fill_reply(void *arg, redisReply *reply, double latency)
{
    CacheWorker *cw = arg;

    if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer == 1)
        cw->st.fills++;
    else if (reply && reply->type == REDIS_REPLY_INTEGER)
        cw->st.fills_refused++;
}

/* Store what the fill's statement answered, unless it is not a plain answer. */
static void fill_store(Client *c, CacheFill *f)
{
    CacheWorker *cw = c->w->cache;
    char gkey[CACHE_KEYNAME], vkey[CACHE_KEYNAME], cprefix[CACHE_KEYNAME], ttl[16];
    const char *argv[11] = {cw->ekey, gkey,   vkey,   cprefix, f->a.pk, f->a.field,
                            ttl,      f->a.e, f->a.g, f->a.v,  NULL};
    size_t lens[11];
    size_t n = 1 + 4 + f->rowdesc_len + 4 + f->rows_len + 4 + f->tag_len;
    uint8_t *v;
    size_t at = 0;

    if (f->failed || f->too_big || f->nrows == 0 || f->tag_len == 0 ||
        n > (size_t)c->w->cfg->cache_max_value || !(v = malloc(n))) {
        cw->st.fills_skipped++;
        return;
    }
    v[at++] = f->rowdesc ? ENTRY_HAS_ROWDESC : 0;
    put_u32(v + at, f->rowdesc_len);
    at += 4;
    if (f->rowdesc_len)
        memcpy(v + at, f->rowdesc, f->rowdesc_len);
    at += f->rowdesc_len;
    put_u32(v + at, (uint32_t)f->rows_len);
    at += 4;
    memcpy(v + at, f->rows, f->rows_len);
    at += f->rows_len;
    put_u32(v + at, f->nrows);
    at += 4;
    memcpy(v + at, f->tag, f->tag_len);
    key_table(cw, c->pool->dbname, f->a.oid, gkey, sizeof(gkey));
    lens[2] = key_row(cw, c->pool->dbname, f->a.oid, f->a.pk, f->a.pklen, vkey, sizeof(vkey));
    key_entry_prefix(cw, c->pool, f->a.oid, cprefix, sizeof(cprefix));
    snprintf(ttl, sizeof(ttl), "%d", c->w->cfg->cache_ttl);
    argv[10] = (const char *)v;
    lens[0] = strlen(cw->ekey);
    lens[1] = strlen(gkey);
    lens[3] = strlen(cprefix);
    lens[4] = f->a.pklen;
    lens[5] = 16;
    lens[6] = strlen(ttl);
    lens[7] = strlen(f->a.e);
    lens[8] = strlen(f->a.g);
    lens[9] = strlen(f->a.v);
    lens[10] = n;
    if (lens[2] > 0 && redis_eval(cw->redis, SCRIPT_FILL, fill_reply, cw, 11, argv, lens))
        cw->st.bytes_stored += n;
    else
        cw->st.fills_skipped++;
    free(v);
}

/* Keep one server message of the fill's answer. */
static void fill_capture(Client *c, CacheFill *f, char type, const uint8_t *msg, uint32_t len)
{
    size_t whole = PROTO_HDR_LEN + (size_t)len;

    switch (type) {
    case 'T':
        free(f->rowdesc);
        f->rowdesc = malloc(whole);
        if (!f->rowdesc) {
            f->failed = true;
            return;
        }
        memcpy(f->rowdesc, msg, whole);
        f->rowdesc_len = (uint32_t)whole;
        return;
    case 'D':
        if (f->too_big || f->rows_len + whole > (size_t)c->w->cfg->cache_max_value) {
            f->too_big = true;
            return;
        }
        if (f->rows_len + whole > f->rows_cap) {
            size_t cap = f->rows_cap ? f->rows_cap * 2 : 1024;
            uint8_t *nr;
            while (cap < f->rows_len + whole)
                cap *= 2;
            nr = realloc(f->rows, cap);
            if (!nr) {
                f->too_big = true;
                return;
            }
            f->rows = nr;
            f->rows_cap = cap;
        }
        memcpy(f->rows + f->rows_len, msg, whole);
        f->rows_len += whole;
        f->nrows++;
        return;
    case 'C':
        if (whole > sizeof(f->tag)) {
            f->failed = true;
            return;
        }
        memcpy(f->tag, msg, whole);
        f->tag_len = (uint32_t)whole;
        return;
    case '1':
    case '2':
    case '3':
    case 'Z':
        return;
    default:
        /* an error, a notice, a parameter change, no rows: not a plain answer */
        f->failed = true;
        return;
    }
}

/* Is this message of the fill one the client would have had from its own execution? */
static bool fill_forwards(const CacheFill *f, char type)
{
    switch (type) {
    case '1':
        return f->x.has_parse || f->x.simple;
    case '3':
        return false; /* the Close of the proxy's statement */
    case 'T':
    case 'n':
        return f->x.simple || f->x.has_describe;
    default:
        return true;
    }
}

/* The fill's ReadyForQuery: store, let the client go on. False when s is no longer usable. */
static bool fill_end(Server *s, Client *c)
{
    CacheClient *cc = c->cache;
    CacheFill *f = cc->fill;

    cc->fill = NULL;
    iobuf_drain(&c->io.in, f->x.bytes);
    c->pool->stats.query_count++;
    stats_query_end(s);
    orm_stmt_local(c, &f->x.stmt, f->nrows, f->started);
    fill_store(c, f);
    fill_free(f);
    if (server_releasable(s)) {
        server_end_of_transaction(s);
        return false;
    }
    client_continue(c);
    return s->client == c && s->state != SV_CLOSING;
}

bool cache_server_input(Server *s)
{
    Client *c = s->client;
    CacheFill *f = c && c->cache ? c->cache->fill : NULL;

    while (cache_item(rq_head(s))) {
        uint8_t hdr[PROTO_HDR_LEN];
        const uint8_t *msg;
        char type;
        uint32_t len;

        if (!f) {
            server_close(s, "cache fill without its client");
            return false;
        }
        if (f->pass_left > 0) {
            /* a message too big to keep goes on as it comes (the answer is not stored) */
            size_t n = iobuf_len(&s->io.in);
            if (n > f->pass_left)
                n = f->pass_left;
            io_forward(&c->io, &s->io.in, n);
            s->pool->stats.bytes_out += n;
            f->pass_left -= n;
            if (f->pass_left > 0)
                return false;
            continue;
        }
        if (iobuf_len(&s->io.in) < PROTO_HDR_LEN)
            return false;
        iobuf_copyout(&s->io.in, hdr, PROTO_HDR_LEN);
        if (proto_frame_header(hdr, 0x7fffffff - PROTO_HDR_LEN, &type, &len) != FRAME_OK) {
            server_close(s, "malformed message from server in a cache fill");
            return false;
        }
        if (len > CACHE_MAX_MSG && type != 'Z') {
            f->too_big = true;
            f->pass_left = PROTO_HDR_LEN + (size_t)len;
            continue;
        }
        if (iobuf_len(&s->io.in) < PROTO_HDR_LEN + len)
            return false;
        msg = iobuf_data(&s->io.in);
        fill_capture(c, f, type, msg, len);
        if (type == 'S')
            server_note_param(s, msg + PROTO_HDR_LEN, len);
        if (type == 'Z')
            s->tx_status = len >= 1 ? (char)msg[PROTO_HDR_LEN] : 'I';
        if (fill_forwards(f, type)) {
            io_send(&c->io, msg, PROTO_HDR_LEN + len);
            s->pool->stats.bytes_out += PROTO_HDR_LEN + len;
        }
        iobuf_drain(&s->io.in, PROTO_HDR_LEN + len);
        if (type == 'Z') {
            rq_pop_head(s);
            return fill_end(s, c);
        }
    }
    return true;
}

/* ---- the client's statement ---------------------------------------------------------------- */

BatchResult cache_client(Client *c)
{
    CacheClient *cc;
    OrmExec x;
    BatchResult r;
    uint64_t h;

    if (!c->w->cache || !(cc = cc_get(c)) || !orm_client_get(c))
        return BATCH_PASS;
    if (cc->req || cc->fill)
        return BATCH_WAIT;
    cc->peeking = true;
    r = orm_exec_read(c, &x);
    cc->peeking = false;
    if (r != BATCH_DONE) {
        orm_exec_free(&x);
        return r;
    }
    r = BATCH_PASS;
    h = shape_hash_bytes(x.buf, x.bytes);
    if (cc->skip && cc->skip_hash == h)
        goto out; /* decided already; cleared when the execution is forwarded */
    cc->skip = false;
    if (!x.stmt.info || !x.stmt.info->cacheable || x.stmt.info->ntables != 1)
        goto out;
    if (cc->pending) {
        if (cc->pending->exec_hash == h && cc->pending->x.bytes == x.bytes) {
            r = fill_start(c, cc, &x);
            goto out;
        }
        cache_client_forwarded(c);
    }
    r = lookup_start(c, cc, &x);
    /* decided once: the same execution coming back (after a checkout) goes on as it is */
    cc->skip = r == BATCH_PASS;
    cc->skip_hash = h;
out:
    orm_exec_free(&x);
    return r;
}

/* ---- reports -------------------------------------------------------------------------------- */

static const char *const bypass_names[CACHE_BYPASS_N] = {
    "redis", "timeout", "error",     "catalog", "table",
    "key",   "wrote",   "isolation", "session", "replication",
};

static double hit_ratio(const CacheStats *st)
{
    return st->hits + st->misses ? (double)st->hits / (double)(st->hits + st->misses) : 0.0;
}

static void repl_sum(const CacheWorker *cw, ReplStats *sum, int *streaming)
{
    memset(sum, 0, sizeof(*sum));
    *streaming = 0;
    for (int i = 0; i < cw->nrepls; i++) {
        ReplStats rs;
        repl_stats(cw->repls[i]->repl, &rs);
        *streaming += rs.streaming;
        sum->connects += rs.connects;
        sum->failures += rs.failures;
        sum->transactions += rs.transactions;
        sum->rows += rs.rows;
        sum->tables += rs.tables;
        sum->rechecked += rs.rechecked;
        sum->unchecked += rs.unchecked;
        if (rs.max_lag > sum->max_lag)
            sum->max_lag = rs.max_lag;
        sum->last_lag = rs.last_lag;
        if (rs.last_error[0])
            snprintf(sum->last_error, sizeof(sum->last_error), "%s", rs.last_error);
    }
}

bool cache_report_row(const Worker *w, int i, const char **name, char *value, size_t cap)
{
    const CacheWorker *cw = w->cache;
    const CacheStats *st;
    RedisStats rs;
    ReplStats rp;
    int streaming;

    if (!cw)
        return false;
    st = &cw->st;
    redis_stats(cw->redis, &rs);
    repl_sum(cw, &rp, &streaming);
#define ROW(n, fmt, ...)                                                                           \
    if (i-- == 0) {                                                                                \
        *name = (n);                                                                               \
        snprintf(value, cap, fmt, __VA_ARGS__);                                                    \
        return true;                                                                               \
    }
    ROW("redis_ready", "%s", rs.ready ? "yes" : "no");
    ROW("lookups", "%" PRIu64, st->lookups);
    ROW("hits", "%" PRIu64, st->hits);
    ROW("misses", "%" PRIu64, st->misses);
    ROW("hit_ratio", "%.4f", hit_ratio(st));
    ROW("fills", "%" PRIu64, st->fills);
    ROW("fills_refused", "%" PRIu64, st->fills_refused);
    ROW("fills_skipped", "%" PRIu64, st->fills_skipped);
    for (int b = 0; b < CACHE_BYPASS_N; b++) {
        static __thread char n[40];
        if (i-- == 0) {
            snprintf(n, sizeof(n), "bypass_%s", bypass_names[b]);
            *name = n;
            snprintf(value, cap, "%" PRIu64, st->bypass[b]);
            return true;
        }
    }
    ROW("invalidations_statement", "%" PRIu64, st->inval_statement);
    ROW("invalidations_commit", "%" PRIu64, st->inval_commit);
    ROW("invalidations_replication", "%" PRIu64, st->inval_replication);
    ROW("invalidations_remote", "%" PRIu64, st->inval_remote);
    ROW("invalidations_lost", "%" PRIu64, st->inval_lost);
    ROW("table_bumps", "%" PRIu64, st->table_bumps);
    ROW("epoch_bumps", "%" PRIu64, st->epoch_bumps);
    ROW("bytes_stored", "%" PRIu64, st->bytes_stored);
    ROW("bytes_served", "%" PRIu64, st->bytes_served);
    ROW("redis_commands", "%" PRIu64, rs.commands);
    ROW("redis_errors", "%" PRIu64, rs.errors);
    ROW("redis_failures", "%" PRIu64, rs.failures);
    ROW("redis_latency_avg_ms", "%.3f",
        rs.latency_n ? rs.latency_sum / (double)rs.latency_n * 1e3 : 0.0);
    ROW("redis_latency_max_ms", "%.3f", rs.latency_max * 1e3);
    ROW("redis_last_error", "%s", rs.last_error);
    ROW("replication_streams", "%d", streaming);
    ROW("replication_transactions", "%" PRIu64, rp.transactions);
    ROW("replication_lag_ms", "%.1f", rp.last_lag * 1e3);
    ROW("replication_max_lag_ms", "%.1f", rp.max_lag * 1e3);
    ROW("replication_failures", "%" PRIu64, rp.failures);
    ROW("replication_rechecked", "%" PRIu64, rp.rechecked);
    ROW("replication_unchecked", "%" PRIu64, rp.unchecked);
    ROW("replication_last_error", "%s", rp.last_error);
#undef ROW
    return false;
}

void cache_report_json(const Worker *w, struct evbuffer *out)
{
    const char *name;
    char value[256];

    evbuffer_add_printf(out, "{\"enabled\":%s", w->cache ? "true" : "false");
    for (int i = 0; cache_report_row(w, i, &name, value, sizeof(value)); i++) {
        char *end;
        double d = strtod(value, &end);
        evbuffer_add_printf(out, ",\"%s\":", name);
        if (strcmp(value, "yes") == 0 || strcmp(value, "no") == 0)
            evbuffer_add_printf(out, "%s", value[0] == 'y' ? "true" : "false");
        else if (*value && *end == '\0')
            evbuffer_add_printf(out, "%.17g", d);
        else
            stats_json_string(out, value);
    }
    evbuffer_add_printf(out, "}");
}

void cache_report_metrics(const Worker *w, struct evbuffer *out)
{
    const CacheWorker *cw = w->cache;
    const CacheStats *st;
    RedisStats rs;
    ReplStats rp;
    int streaming;

    if (!cw)
        return;
    st = &cw->st;
    redis_stats(cw->redis, &rs);
    repl_sum(cw, &rp, &streaming);
#define COUNTER(n, help, v)                                                                        \
    evbuffer_add_printf(out,                                                                       \
                        "# HELP pgcoalesce_cache_" n " " help "\n# TYPE pgcoalesce_cache_" n       \
                        " counter\npgcoalesce_cache_" n " %" PRIu64 "\n",                          \
                        (uint64_t)(v))
#define GAUGE(n, help, fmt, v)                                                                     \
    evbuffer_add_printf(out,                                                                       \
                        "# HELP pgcoalesce_cache_" n " " help "\n# TYPE pgcoalesce_cache_" n       \
                        " gauge\npgcoalesce_cache_" n " " fmt "\n",                                \
                        v)
    GAUGE("redis_up", "1 when the Redis connection is ready.", "%d", rs.ready ? 1 : 0);
    COUNTER("lookups_total", "Cache lookups sent to Redis.", st->lookups);
    COUNTER("hits_total", "Statements answered from the cache.", st->hits);
    COUNTER("misses_total", "Lookups that found no usable entry.", st->misses);
    COUNTER("fills_total", "Answers stored in the cache.", st->fills);
    COUNTER("fills_refused_total", "Fills refused: an invalidation came after the read began.",
            st->fills_refused);
    COUNTER("fills_skipped_total", "Answers not stored (error, no rows, too big).",
            st->fills_skipped);
    evbuffer_add_printf(out, "# HELP pgcoalesce_cache_bypass_total Cacheable-looking statements "
                             "sent to PostgreSQL without the cache, by reason.\n"
                             "# TYPE pgcoalesce_cache_bypass_total counter\n");
    for (int b = 0; b < CACHE_BYPASS_N; b++)
        evbuffer_add_printf(out, "pgcoalesce_cache_bypass_total{reason=\"%s\"} %" PRIu64 "\n",
                            bypass_names[b], st->bypass[b]);
    evbuffer_add_printf(out, "# HELP pgcoalesce_cache_invalidations_total Invalidations, by "
                             "source.\n# TYPE pgcoalesce_cache_invalidations_total counter\n");
    evbuffer_add_printf(out,
                        "pgcoalesce_cache_invalidations_total{source=\"statement\"} %" PRIu64 "\n"
                        "pgcoalesce_cache_invalidations_total{source=\"commit\"} %" PRIu64 "\n"
                        "pgcoalesce_cache_invalidations_total{source=\"replication\"} %" PRIu64
                        "\npgcoalesce_cache_invalidations_total{source=\"remote\"} %" PRIu64 "\n",
                        st->inval_statement, st->inval_commit, st->inval_replication,
                        st->inval_remote);
    COUNTER("invalidations_lost_total", "Invalidations Redis did not take.", st->inval_lost);
    COUNTER("table_bumps_total", "Table generations bumped.", st->table_bumps);
    COUNTER("epoch_bumps_total", "Whole-cache invalidations.", st->epoch_bumps);
    COUNTER("redis_errors_total", "Redis commands that failed.", rs.errors);
    COUNTER("redis_failures_total", "Redis connection failures.", rs.failures);
    GAUGE("redis_latency_seconds_max", "Slowest Redis reply.", "%.6f", rs.latency_max);
    GAUGE("replication_lag_seconds", "Commit to arrival of the last replicated transaction.",
          "%.6f", rp.last_lag);
    GAUGE("replication_streams", "Replication streams running.", "%d", streaming);
#undef COUNTER
#undef GAUGE
}
