/*
 * Feeding the ORM layer: statements shaped on the way to the server, their
 * answers fed to the N+1 detector and the statement statistics on the way
 * back (the order and the RqItem bits are described in orm_feed.h).
 */
#include "daemon/orm_feed.h"
#include "daemon/cache.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/log.h"
#include "orm/batch.h"
#include "proto/msg.h"

/* ---- worker ------------------------------------------------------------------------------ */

bool orm_worker_init(Worker *w)
{
    const Config *cfg = w->cfg;
    OrmWorker *ow = calloc(1, sizeof(*ow));
    struct timespec ts;

    if (!ow)
        return false;
    w->orm = ow;
    ow->sb = malloc(sizeof(*ow->sb));
    ow->shapes = shapes_new((size_t)cfg->shape_cache_size);
    ow->n1 = n1_table_new((size_t)cfg->n1_max_patterns, cfg->n1_threshold, cfg->n1_result_memory);
    ow->queries = qstats_new((size_t)cfg->shape_cache_size);
    ow->msg = malloc(ORM_MAX_MSG);
    ow->binds = malloc(ORM_MAX_BINDS * sizeof(*ow->binds));
    ow->decimals = malloc(ORM_MAX_BINDS * sizeof(*ow->decimals));
    ow->hashes = malloc(SHAPE_MAX_PARAMS * sizeof(*ow->hashes));
    if (!ow->sb || !ow->shapes || !ow->n1 || !ow->queries || !ow->msg || !ow->binds ||
        !ow->decimals || !ow->hashes || !batch_worker_init(ow))
        return false; /* the caller frees what was made (orm_worker_free) */
    clock_gettime(CLOCK_REALTIME, &ts);
    ow->wall_offset = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 - now_sec();
    return true;
}

void orm_worker_free(Worker *w)
{
    OrmWorker *ow = w->orm;
    ShapeTableStats st = {0};

    if (!ow)
        return;
    if (ow->shapes)
        shapes_stats(ow->shapes, &st);
    batch_worker_free(ow);
    qstats_free(ow->queries);
    n1_table_free(ow->n1);
    shapes_free(ow->shapes);
    free(ow->sb);
    free(ow->msg);
    free(ow->binds);
    free(ow->decimals);
    free(ow->hashes);
    free(ow);
    w->orm = NULL;
    /* libpg_query's memory; its exit crashes when it never parsed anything */
    if (st.misses > 0)
        shape_analyze_thread_exit();
}

void orm_worker_configure(Worker *w)
{
    n1_table_configure(w->orm->n1, w->cfg->n1_threshold, w->cfg->n1_result_memory);
}

uint64_t orm_wall_us(const Worker *w, double mono)
{
    double t = mono + w->orm->wall_offset;

    return t > 0 ? (uint64_t)(t * 1e6) : 0;
}

/* ---- statements -------------------------------------------------------------------------- */

#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_UUID 2950

static bool oid_is_int(uint32_t oid)
{
    return oid == OID_INT2 || oid == OID_INT4 || oid == OID_INT8;
}

/* A binary integer of 2, 4 or 8 bytes (big-endian) as decimal text in buf
 * (24 bytes); the value to hash instead of the bytes (see orm_feed.h). */
static ShapeValue int_text(const uint8_t *p, int32_t len, char *buf)
{
    uint64_t u = 0;
    int64_t v;
    int n;

    for (int32_t i = 0; i < len; i++)
        u = u << 8 | p[i];
    if (len == 2)
        v = (int16_t)u;
    else if (len == 4)
        v = (int32_t)u;
    else
        v = (int64_t)u;
    n = snprintf(buf, 24, "%" PRId64, v);
    return (ShapeValue){buf, n};
}

/* A binary uuid declared as one (psycopg 3 sends them so, and reads text):
 * compared as its text. buf holds at least 37 bytes. */
static ShapeValue uuid_text(const uint8_t *p, char *buf)
{
    return (ShapeValue){buf, (int32_t)batch_uuid_text(p, buf)};
}

static bool int_sized(int32_t len)
{
    return len == 2 || len == 4 || len == 8;
}

void orm_stmt_release(OrmStmt *e)
{
    shape_info_unref(e->info);
    e->info = NULL;
}

/* A copy of e holding its own reference. */
void orm_stmt_copy(OrmStmt *dst, const OrmStmt *src)
{
    *dst = *src;
    if (dst->info)
        shape_info_ref(dst->info);
}

/*
 * *dst = *src without the parameter slots past src->nparams (the reference
 * moves, none is taken). The ring and cur are per-client memory, cold when
 * hundreds of clients take turns, and most statements have a few of the
 * 17 parameter slots: a whole copy writes 3 cache lines, this one 1 or 2.
 */
static inline void stmt_move(OrmStmt *dst, const OrmStmt *src)
{
    memcpy(dst, src, offsetof(OrmStmt, params) + src->nparams * sizeof(src->params[0]));
}

/* The hashes in ow->hashes[0..np) as e's parameters (folding those past N1_MAX_PARAMS). */
static void stmt_set_params(OrmWorker *ow, OrmStmt *e, int np)
{
    if (np > ORM_STMT_PARAMS) {
        memcpy(e->params, ow->hashes, N1_MAX_PARAMS * sizeof(*e->params));
        e->params[N1_MAX_PARAMS] = shape_hash_bytes(
            ow->hashes + N1_MAX_PARAMS, (size_t)(np - N1_MAX_PARAMS) * sizeof(uint64_t));
        np = ORM_STMT_PARAMS;
    } else {
        memcpy(e->params, ow->hashes, (size_t)np * sizeof(*e->params));
    }
    e->nparams = (uint8_t)np;
}

/*
 * Shape text[0..n) with Bind values binds into *e (whose old reference is
 * dropped). Returns false for an empty statement, which is not followed.
 */
bool orm_stmt_shape(OrmWorker *ow, const char *text, size_t n, const ShapeValue *binds, int nbinds,
                    OrmStmt *e)
{
    ShapeBuf *sb = ow->sb;
    const ShapeInfo *info;
    int np;

    orm_stmt_release(e);
    memset(e, 0, sizeof(*e));
    if (!shape_normalize(text, n, sb))
        return sb->status != SHAPE_EMPTY;
    if (sb->nstmts > 1) {
        e->no_result = true;
        return true;
    }
    info = shapes_get(ow->shapes, sb);
    if (!info)
        return true;
    np = shape_param_hashes(sb, text, binds, nbinds, ow->hashes, SHAPE_MAX_PARAMS);
    stmt_set_params(ow, e, np);
    shape_info_ref(info);
    e->info = info;
    return true;
}

void orm_shape_cache_free(OrmShapeCache *cache)
{
    if (!cache)
        return;
    shape_info_unref(cache->info);
    free(cache);
}

/* The shape just made in ow->sb from text, as a cache; NULL when a
 * placeholder folds a list (or out of memory). */
static OrmShapeCache *cache_build(OrmWorker *ow, const char *text, const ShapeInfo *info)
{
    const ShapeBuf *sb = ow->sb;
    OrmShapeCache *k;

    for (uint32_t i = 0; i < sb->nparams; i++)
        if (sb->params[i].n != 1)
            return NULL;
    k = malloc(sizeof(*k) + sb->nparams * sizeof(k->src[0]));
    if (!k)
        return NULL;
    k->nparams = sb->nparams;
    for (uint32_t i = 0; i < sb->nparams; i++) {
        const ShapeLit *lit = &sb->lits[sb->params[i].first];
        if (lit->kind == SHAPE_LIT_BIND)
            k->src[i] = (OrmParamSource){lit->bind, 0};
        else
            k->src[i] = (OrmParamSource){0, shape_lit_hash(text, lit, NULL, 0)};
    }
    shape_info_ref(info);
    k->info = info;
    return k;
}

/*
 * stmt_shape for an extended-protocol execution of text, through *cache:
 * from it when there is one, else shaping text and keeping a cache.
 */
static bool stmt_shape_cached(OrmWorker *ow, OrmShapeCache **cache, const char *text, size_t n,
                              const ShapeValue *binds, int nbinds, OrmStmt *e)
{
    const OrmShapeCache *k = *cache;

    if (!k) {
        if (!orm_stmt_shape(ow, text, n, binds, nbinds, e))
            return false;
        if (e->info && !e->no_result)
            *cache = cache_build(ow, text, e->info);
        return true;
    }
    orm_stmt_release(e);
    memset(e, 0, sizeof(*e));
    for (uint32_t i = 0; i < k->nparams; i++) {
        ShapeLit lit = {.kind = SHAPE_LIT_BIND, .bind = (uint16_t)k->src[i].bind};
        ow->hashes[i] = k->src[i].bind ? shape_lit_hash(NULL, &lit, binds, nbinds) : k->src[i].hash;
    }
    stmt_set_params(ow, e, (int)k->nparams);
    shape_info_ref(k->info);
    e->info = k->info;
    return true;
}

/* ---- clients ----------------------------------------------------------------------------- */

ClientOrm *orm_client_get(Client *c)
{
    ClientOrm *o = c->orm;

    if (o)
        return o;
    o = calloc(1, sizeof(*o));
    if (!o)
        return NULL;
    o->sess = n1_session_new(c->w->orm->n1, c->user, c->database,
                             params_get(&c->params, "application_name"));
    if (!o->sess) {
        free(o);
        return NULL;
    }
    o->params_digest = c->params.digest;
    client_stmts_init(&o->named);
    n1_session_keep_values(o->sess, c->w->cfg->n1_mode == N1_MODE_BATCH);
    c->orm = o;
    return o;
}

void orm_client_free(Client *c)
{
    ClientOrm *o = c->orm;

    if (!o)
        return;
    batch_client_free(c);
    for (uint32_t i = 0; i < o->len; i++)
        orm_stmt_release(&o->ring[(o->head + i) % o->cap]);
    free(o->ring);
    orm_stmt_release(&o->cur);
    orm_stmt_release(&o->bound);
    orm_shape_cache_free(o->unnamed_cache);
    free(o->unnamed);
    free(o->rd);
    client_stmts_clear(&o->named, &c->w->prepared);
    n1_session_free(o->sess);
    free(o);
    c->orm = NULL;
}

/* Queue e (taking over its reference) for the item just pushed on s. */
static void client_queue(Client *c, Server *s, OrmStmt *e)
{
    ClientOrm *o = c->orm;
    RqItem *it = rq_tail(s);

    /* Prefetched answers stay valid only across read-only statements: a
     * write, SET, BEGIN/COMMIT or an unknown statement drops them. */
    if (o->npf > 0 &&
        !(e->info && e->info->kind == SHAPE_KIND_SELECT && (e->info->flags & SHAPE_F_READ_ONLY)))
        batch_drop_all(c);
    o->batch_skip = false; /* a held execution after a failed batch went on as it was */
    if (c->cache)
        cache_client_forwarded(c);
    if (!it || (it->kind != RQ_QUERY && it->kind != RQ_EXECUTE))
        goto out_drop;
    if (o->len == o->cap) {
        uint32_t ncap = o->cap ? o->cap * 2 : 4;
        OrmStmt *n;
        if (ncap > ORM_MAX_QUEUED || !(n = malloc(ncap * sizeof(*n))))
            goto out_drop; /* not followed: as if it had not been seen */
        for (uint32_t i = 0; i < o->len; i++)
            stmt_move(&n[i], &o->ring[(o->head + i) % o->cap]);
        free(o->ring);
        o->ring = n;
        o->cap = ncap;
        o->head = 0;
    }
    e->seq = o->next_seq++;
    e->sent = worker_now(c->w);
    stmt_move(&o->ring[(o->head + o->len) % o->cap], e);
    o->len++;
    it->n1 = ORM_RQ_TRACK;
    it->n1_seq = e->seq;
    if (c->params.digest != o->params_digest) {
        n1_session_set_application(o->sess, params_get(&c->params, "application_name"));
        o->params_digest = c->params.digest;
    }
    return;
out_drop:
    orm_stmt_release(e);
}

/* The body of the message at cur, in place; NULL when it is too long to
 * follow or not all there. Read only, and only until the input is drained. */
static const uint8_t *client_body(const IoCursor *cur, uint32_t len)
{
    return len > ORM_MAX_MSG ? NULL : io_cursor_span(cur, PROTO_HDR_LEN, len);
}

/* Length of the NUL-terminated text in p[0..n), or n. (memchr rather than
 * strnlen, which libpg_query replaces with a byte loop for the process.) */
static size_t text_len(const void *p, size_t n)
{
    const uint8_t *z = memchr(p, 0, n);

    return z ? (size_t)(z - (const uint8_t *)p) : n;
}

bool orm_client_whole(Client *c, Server *s, char type, uint32_t len, IoCursor *cur, size_t *fwd)
{
    if (type != 'Q' && type != 'P' && type != 'B' && type != 'E' && type != 'C')
        return true;
    if (len > ORM_MAX_MSG || io_cursor_left(cur) >= PROTO_HDR_LEN + (size_t)len)
        return true;
    if (iobuf_len(&c->io.in) < *fwd + PROTO_HDR_LEN + len)
        return false;
    /* All there but past the cursor's vectors: cover it from its start. */
    s->pool->stats.bytes_in += *fwd;
    io_forward(&s->io, &c->io.in, *fwd);
    *fwd = 0;
    io_cursor_init(cur, &c->io.in);
    return true;
}

/* A simple Query: one statement shaped, or one "unknown". True with *session
 * set when its shape tells what it leaves in the session. */
static bool client_query(Client *c, Server *s, const IoCursor *cur, uint32_t len,
                         const char **session)
{
    const uint8_t *body = client_body(cur, len);
    OrmStmt e = {0};
    bool known = false;

    if (body && len > 0 &&
        !orm_stmt_shape(c->w->orm, (const char *)body, text_len(body, len), NULL, 0, &e))
        return false; /* an empty query */
    if (e.info && e.info->session_known) {
        *session = e.info->session;
        known = true;
    }
    if (cache_on(c->w) && body)
        cache_note_statement(c, &e, (const char *)body, e.info ? c->w->orm->sb : NULL, NULL, NULL,
                             0);
    client_queue(c, s, &e);
    return known;
}

/* Remember the text of an unnamed Parse (or, in session mode, a named one). */
static void client_parse(Client *c, const IoCursor *cur, uint32_t len)
{
    const uint8_t *body = client_body(cur, len);

    if (!body) {
        uint8_t first = 1;
        if (len > 0 && io_cursor_peek_at(cur, PROTO_HDR_LEN, &first, 1) && first == 0)
            c->orm->unnamed_ok = false; /* too long to shape: its executions are unknown */
        return;
    }
    orm_client_parse_body(c, body, len);
}

void orm_client_parse_body(Client *c, const uint8_t *body, uint32_t len)
{
    ClientOrm *o = c->orm;
    MsgReader r;
    const char *name, *text;
    size_t n;

    mr_init(&r, body, len);
    name = mr_str(&r);
    text = mr_str(&r);
    if (!name || !text)
        return;
    n = strlen(text);
    if (name[0] == '\0') {
        size_t size = len - (size_t)(text - (const char *)body); /* text, NUL, types */
        if (o->unnamed_ok && size == o->unnamed_size && memcmp(o->unnamed, text, size) == 0)
            return; /* the same statement again (psycopg 3): its shape is known */
        orm_shape_cache_free(o->unnamed_cache);
        o->unnamed_cache = NULL;
        if (size > o->unnamed_cap) {
            char *p = realloc(o->unnamed, size);
            if (!p) {
                o->unnamed_ok = false;
                return;
            }
            o->unnamed = p;
            o->unnamed_cap = (uint32_t)size;
        }
        memcpy(o->unnamed, text, size);
        o->unnamed_len = (uint32_t)n;
        o->unnamed_size = (uint32_t)size;
        o->unnamed_ok = true;
    } else if (c->pool->mode == POOL_SESSION) {
        PsRegistry *reg = &c->w->prepared;
        PreparedStmt *ps =
            ps_intern(reg, (const uint8_t *)text, len - (size_t)(text - (const char *)body));
        if (!ps || !client_stmts_put(&o->named, reg, name, ps))
            client_stmts_del(&o->named, reg, name, NULL);
        if (ps)
            ps_unref(reg, ps);
    }
}

/* Parameter type i of a Parse tail (text, NUL, int16 n, int32 oids[n]); 0 when not given. */
static uint32_t param_type(const uint8_t *tail, size_t size, size_t textlen, int i)
{
    MsgReader r;
    int n;

    mr_init(&r, tail, size);
    if (!mr_bytes(&r, textlen + 1))
        return 0;
    n = mr_i16(&r);
    if (i >= n || !mr_bytes(&r, (size_t)i * 4))
        return 0;
    return (uint32_t)mr_i32(&r);
}

static void bound_unknown(ClientOrm *o)
{
    orm_stmt_release(&o->bound);
    memset(&o->bound, 0, sizeof(o->bound));
    o->bound_ok = true;
}

/*
 * A Bind of the unnamed portal: shape the statement with its values. tail
 * is the statement's Parse body after its name (size bytes, text of textlen
 * first), NULL for an unknown statement; r is positioned after the
 * statement name in the Bind.
 */
static void client_bind_values(Client *c, const uint8_t *tail, size_t size, size_t textlen,
                               OrmShapeCache **cache, MsgReader *r)
{
    ClientOrm *o = c->orm;
    OrmWorker *ow = c->w->orm;
    const uint8_t *fmts;
    int nfmt, nvals, nres, nb = 0;
    uint8_t res_fmt = ORM_RES_TEXT;
    uint64_t res_bin = 0;

    if (!tail) {
        bound_unknown(o);
        return;
    }
    nfmt = mr_i16(r);
    fmts = nfmt > 0 ? mr_bytes(r, (size_t)nfmt * 2) : NULL;
    nvals = mr_i16(r);
    for (int i = 0; i < nvals && !r->bad; i++) {
        int32_t vlen = mr_i32(r);
        const uint8_t *v = vlen > 0 ? mr_bytes(r, (size_t)vlen) : (const uint8_t *)"";
        int k = nfmt == 1 ? 0 : i;
        bool binary = fmts && k < nfmt && fmts[2 * k] == 0 && fmts[2 * k + 1] == 1;
        if (i >= ORM_MAX_BINDS || !v)
            continue;
        if (vlen < 0)
            ow->binds[nb++] = (ShapeValue){NULL, -1};
        else if (binary && int_sized(vlen) &&
                 (param_type(tail, size, textlen, i) == 0 ||
                  oid_is_int(param_type(tail, size, textlen, i))))
            ow->binds[nb++] = int_text(v, vlen, ow->decimals[i]);
        else if (binary && vlen == 16 && param_type(tail, size, textlen, i) == OID_UUID)
            ow->binds[nb++] = uuid_text(v, ow->decimals[i]);
        else
            ow->binds[nb++] = (ShapeValue){v, vlen};
    }
    nres = mr_i16(r);
    for (int i = 0; i < nres && !r->bad; i++) {
        bool binary = mr_i16(r) == 1;
        if (nres == 1)
            res_fmt = binary ? ORM_RES_BINARY : ORM_RES_TEXT;
        else if (binary && i < 64)
            res_bin |= 1ULL << i;
    }
    if (nres > 1)
        res_fmt = ORM_RES_MIXED;
    if (r->bad) {
        bound_unknown(o);
        return;
    }
    {
        bool fresh = !*cache; /* shaped now: ow->sb holds the text's literals */
        o->bound_ok =
            stmt_shape_cached(ow, cache, (const char *)tail, textlen, ow->binds, nb, &o->bound);
        if (o->bound_ok && cache_on(c->w))
            cache_note_statement(c, &o->bound, (const char *)tail, fresh ? ow->sb : NULL, *cache,
                                 ow->binds, nb);
    }
    o->bound.res_fmt = res_fmt;
    o->bound.res_bin = res_bin;
}

/* The text length of a prepared statement (its Parse body starts with the text). */
static size_t ps_textlen(const PreparedStmt *ps)
{
    return text_len(ps->body, ps->body_len);
}

/* A Bind of the unnamed portal to the named statement ps (NULL: unknown). */
static void client_bind_named(Client *c, PreparedStmt *ps, MsgReader *r)
{
    if (!ps) {
        client_bind_values(c, NULL, 0, 0, NULL, r);
        return;
    }
    client_bind_values(c, ps->body, ps->body_len, ps_textlen(ps), &ps->orm, r);
}

static void client_bind(Client *c, const IoCursor *cur, uint32_t len)
{
    const uint8_t *body = client_body(cur, len);

    if (!body) {
        bound_unknown(c->orm); /* too long to read: the unnamed portal (most likely) is unknown */
        return;
    }
    orm_client_bind_body(c, body, len);
}

void orm_client_bind_body(Client *c, const uint8_t *body, uint32_t len)
{
    ClientOrm *o = c->orm;
    const char *portal, *stmt;
    MsgReader r;

    mr_init(&r, body, len);
    portal = mr_str(&r);
    stmt = mr_str(&r);
    if (!portal || !stmt || portal[0] != '\0')
        return; /* named portals are not followed */
    if (stmt[0] != '\0')
        client_bind_named(c, client_stmts_get(&o->named, stmt), &r);
    else if (o->unnamed_ok)
        client_bind_values(c, (const uint8_t *)o->unnamed, o->unnamed_size, o->unnamed_len,
                           &o->unnamed_cache, &r);
    else
        client_bind_values(c, NULL, 0, 0, NULL, &r);
}

void orm_client_bind(Client *c, PreparedStmt *ps, const uint8_t *body, uint32_t len)
{
    const char *portal;
    MsgReader r;

    if (!orm_client_get(c))
        return;
    mr_init(&r, body, len);
    portal = mr_str(&r);
    if (!portal || !mr_str(&r) || portal[0] != '\0')
        return;
    client_bind_named(c, ps, &r);
}

/* An Execute of the unnamed portal runs the statement bound last. */
static void client_execute(Client *c, Server *s, const IoCursor *cur, uint32_t len)
{
    ClientOrm *o = c->orm;
    const uint8_t *body = client_body(cur, len);
    OrmStmt e = {0};
    RqItem *prev;

    if (!body || len < 1 || body[0] != '\0' || !o->bound_ok)
        return;
    orm_stmt_copy(&e, &o->bound);
    client_queue(c, s, &e);
    /* A Describe just before it answers with this statement's columns. */
    if (rq_tail(s) && rq_tail(s)->n1 && s->rq_len >= 2) {
        prev = &s->rq[(s->rq_head + s->rq_len - 2) % s->rq_cap];
        if (prev->kind == RQ_DESCRIBE && prev->n1 == 0)
            prev->n1 = ORM_RQ_DESCRIBE;
    }
}

/* Session mode: Close of a named statement. */
static void client_close_stmt(Client *c, const IoCursor *cur, uint32_t len)
{
    const uint8_t *body = client_body(cur, len);
    MsgReader r;
    const char *name;

    if (!body || len < 2 || body[0] != 'S' || c->pool->mode != POOL_SESSION)
        return;
    mr_init(&r, body + 1, len - 1);
    name = mr_str(&r);
    if (name && name[0])
        client_stmts_del(&c->orm->named, &c->w->prepared, name, NULL);
}

bool orm_client_message(Client *c, Server *s, char type, const IoCursor *cur, uint32_t len,
                        const char **session)
{
    if (!orm_client_get(c))
        return false;
    switch (type) {
    case 'Q':
        return client_query(c, s, cur, len, session);
    case 'P':
        client_parse(c, cur, len);
        break;
    case 'B':
        client_bind(c, cur, len);
        break;
    case 'E':
        client_execute(c, s, cur, len);
        break;
    case 'C':
        client_close_stmt(c, cur, len);
        break;
    default:
        break;
    }
    return false;
}

/* ---- relay ------------------------------------------------------------------------------- */

static void log_new_pattern(Client *c, const N1Pattern *p)
{
    char fix[768];

    n1_pattern_fix(p, fix, sizeof(fix));
    log_info("N+1 pattern found (application \"%s\", user %s, database %s): %" PRIu64
             " executions of [%.450s] for the rows of [%.450s]; key %s from %s; fix: %s",
             p->application_name, p->user, p->database, p->max_run_len, p->child_sql, p->parent_sql,
             p->key_column, p->key_source, fix);
}

/* The statement of item it begins: hand it to the detector. */
static void stmt_start(Client *c, RqItem *it)
{
    ClientOrm *o = c->orm;
    OrmWorker *ow = c->w->orm;
    const N1Pattern *pat = NULL;
    OrmStmt *e = NULL;
    N1Event ev;

    /* entries older than it: their items never got an answer */
    while (o->len > 0) {
        e = &o->ring[o->head];
        if (e->seq == it->n1_seq)
            break;
        if ((int32_t)(e->seq - it->n1_seq) > 0) {
            e = NULL; /* its entry is gone already */
            break;
        }
        orm_stmt_release(e);
        o->head = (o->head + 1) % o->cap;
        o->len--;
        e = NULL;
    }
    if (!e) {
        it->n1 = 0;
        return;
    }
    orm_stmt_release(&o->cur);
    stmt_move(&o->cur, e); /* the reference moves */
    o->head = (o->head + 1) % o->cap;
    o->len--;
    o->cur_open = true;
    o->cols_typed = false;
    o->col_int = 0;
    o->col_uuid = 0;
    o->cur_start = o->cur.sent > o->last_done ? o->cur.sent : o->last_done;
    it->n1 |= ORM_RQ_STARTED;
    ev = n1_statement(o->sess, o->cur.info, o->cur.params, o->cur.nparams,
                      orm_wall_us(c->w, o->cur.sent), &pat);
    if (ev != N1_NONE) {
        ow->runs++;
        c->pool->stats.n1_runs++;
        if (ev == N1_NEW_PATTERN && pat) {
            ow->new_patterns++;
            log_new_pattern(c, pat);
        }
    }
    if (n1_wants_result(o->sess) && !o->cur.no_result) {
        it->n1 |= ORM_RQ_WANT;
        o->parent_bin = o->cur.res_fmt == ORM_RES_TEXT     ? 0
                        : o->cur.res_fmt == ORM_RES_BINARY ? ~0ULL
                                                           : o->cur.res_bin;
    }
}

void orm_stmt_local(Client *c, const OrmStmt *e, uint64_t rows, double started)
{
    ClientOrm *o = c->orm;
    OrmWorker *ow = c->w->orm;
    const N1Pattern *pat = NULL;
    double now = worker_now(c->w);
    uint64_t us = now > started ? (uint64_t)((now - started) * 1e6) : 0;
    N1Event ev;

    ev = n1_statement(o->sess, e->info, e->params, e->nparams, orm_wall_us(c->w, started), &pat);
    if (ev != N1_NONE) {
        ow->runs++;
        c->pool->stats.n1_runs++;
        if (ev == N1_NEW_PATTERN && pat) {
            ow->new_patterns++;
            log_new_pattern(c, pat);
        }
    }
    n1_statement_batched(o->sess);
    n1_statement_done(o->sess, us, rows);
    qstats_record(ow->queries, e->info, us, rows, orm_wall_us(c->w, now));
    ow->statements++;
    o->last_done = now;
}

/* The statement of item it ended, with rows rows. */
static void stmt_done(Client *c, RqItem *it, uint64_t rows)
{
    ClientOrm *o = c->orm;
    OrmWorker *ow = c->w->orm;
    double now = worker_now(c->w);
    uint64_t us = now > o->cur_start ? (uint64_t)((now - o->cur_start) * 1e6) : 0;

    it->n1 = (uint8_t)((it->n1 & ~ORM_RQ_WANT) | ORM_RQ_DONE);
    if (!o->cur_open)
        return;
    n1_statement_done(o->sess, us, rows);
    qstats_record(ow->queries, o->cur.info, us, rows, orm_wall_us(c->w, now));
    ow->statements++;
    if (!o->cur.info)
        ow->unknown++;
    o->last_done = now;
    o->cur_open = false;
    orm_stmt_release(&o->cur);
}

/*
 * The body of the server message at cur, in place: valid until the input is
 * drained (the callers are done with it before). NULL with *wait set when
 * more bytes must arrive first; NULL alone when the message is too long to
 * read (go on without it).
 */
static const uint8_t *server_body(uint32_t len, const IoCursor *cur, bool *wait)
{
    *wait = false;
    if (len > ORM_MAX_MSG)
        return NULL;
    if (io_cursor_left(cur) < PROTO_HDR_LEN + (size_t)len) {
        *wait = true;
        return NULL;
    }
    return io_cursor_span(cur, PROTO_HDR_LEN, len);
}

/*
 * The last RowDescription a client's statement got, as read: a loop runs one
 * shape after another and each answer describes the same columns, so a
 * byte-identical one is not read again.
 */
struct OrmRowDesc {
    uint32_t len, cap; /* of body */
    int ncols;         /* names in name */
    uint64_t col_int;  /* as ClientOrm's */
    uint64_t col_uuid; /* ... */
    uint16_t name[N1_MAX_COLS];
    uint8_t body[];
};

#define ORM_ROWDESC_MAX 2048 /* longer ones are read every time */

/* Read a RowDescription body into rd (names as offsets into body). */
static bool rowdesc_read(OrmRowDesc *rd, const uint8_t *body, uint32_t len)
{
    MsgReader r;
    int n;

    rd->ncols = 0;
    rd->col_int = rd->col_uuid = 0;
    mr_init(&r, body, len);
    n = mr_i16(&r);
    for (int i = 0; i < n && !r.bad; i++) {
        const char *name = mr_str(&r);
        uint32_t type;
        int16_t format;
        mr_bytes(&r, 6); /* table oid, attnum */
        type = (uint32_t)mr_i32(&r);
        mr_bytes(&r, 6); /* typlen, typmod */
        format = mr_i16(&r);
        if (name && rd->ncols < N1_MAX_COLS) {
            int k = rd->ncols++;
            if (format == 1 && oid_is_int(type))
                rd->col_int |= 1ULL << k;
            if (format == 1 && type == OID_UUID)
                rd->col_uuid |= 1ULL << k;
            rd->name[k] = (uint16_t)((const uint8_t *)name - body);
        }
    }
    return !r.bad && n >= 0;
}

/*
 * The RowDescription body as read: o->rd when it is the same as the last one
 * or could be kept as the new last one, else *tmp (read in place).
 */
static const OrmRowDesc *rowdesc_get(ClientOrm *o, OrmRowDesc *tmp, const uint8_t *body,
                                     uint32_t len, const uint8_t **names_base)
{
    OrmRowDesc *rd = o->rd;

    if (rd && rd->len == len && memcmp(rd->body, body, len) == 0) {
        *names_base = rd->body;
        return rd;
    }
    if (len <= ORM_ROWDESC_MAX && (!rd || rd->cap < len)) {
        /* grown to the longest seen, so that a loop's alternating shapes settle */
        OrmRowDesc *n = realloc(rd, sizeof(*rd) + len);
        if (n) {
            o->rd = rd = n;
            rd->cap = len;
        }
    }
    if (rd && rd->cap >= len) {
        rd->len = 0; /* until read: never equal to a message */
        if (!rowdesc_read(rd, body, len))
            return NULL;
        memcpy(rd->body, body, len);
        rd->len = len;
        *names_base = rd->body;
        return rd;
    }
    *names_base = body;
    return rowdesc_read(tmp, body, len) ? tmp : NULL;
}

/* RowDescription: the column names go to the detector. */
static void feed_columns(Client *c, RqItem *it, const uint8_t *body, uint32_t len)
{
    const char *names[N1_MAX_COLS];
    ClientOrm *o = c->orm;
    const OrmRowDesc *rd;
    OrmRowDesc tmp;
    const uint8_t *base;

    it->n1 |= ORM_RQ_COLS;
    if (!body)
        return; /* too long: the first DataRow gives the count */
    rd = rowdesc_get(o, &tmp, body, len, &base);
    if (!rd) {
        it->n1 &= (uint8_t)~ORM_RQ_COLS;
        o->col_int = 0;
        o->col_uuid = 0;
        return;
    }
    o->col_int = rd->col_int;
    o->col_uuid = rd->col_uuid;
    o->cols_typed = true;
    for (int k = 0; k < rd->ncols; k++)
        names[k] = (const char *)base + rd->name[k];
    n1_result_columns(o->sess, rd->ncols, names);
}

/* DataRow: its values go to the detector while it wants them. */
static void feed_row(Client *c, RqItem *it, const uint8_t *body, uint32_t len)
{
    ShapeValue vals[N1_MAX_COLS], sent[N1_MAX_COLS];
    char dec[N1_MAX_COLS][40];
    const ClientOrm *o = c->orm;
    MsgReader r;
    int n, k = 0;

    if (!body) {
        it->n1 &= (uint8_t)~ORM_RQ_WANT;
        return;
    }
    mr_init(&r, body, len);
    n = mr_i16(&r);
    for (int i = 0; i < n && !r.bad; i++) {
        int32_t vlen = mr_i32(&r);
        const uint8_t *v = vlen > 0 ? mr_bytes(&r, (size_t)vlen) : (const uint8_t *)"";
        bool as_int;
        if (k >= N1_MAX_COLS || !v)
            continue;
        if (o->cols_typed)
            as_int = (o->col_int >> k & 1) && int_sized(vlen);
        else
            as_int =
                int_sized(vlen) && (o->cur.res_fmt == ORM_RES_BINARY ||
                                    (o->cur.res_fmt == ORM_RES_MIXED && (o->cur.res_bin >> k & 1)));
        if (vlen < 0)
            vals[k] = (ShapeValue){NULL, -1};
        else if (as_int)
            vals[k] = int_text(v, vlen, dec[k]);
        else if (o->cols_typed && (o->col_uuid >> k & 1) && vlen == 16)
            vals[k] = uuid_text(v, dec[k]);
        else
            vals[k] = (ShapeValue){v, vlen};
        sent[k] = vlen < 0 ? vals[k] : (ShapeValue){v, vlen};
        k++;
    }
    if (r.bad || n < 0) {
        it->n1 &= (uint8_t)~ORM_RQ_WANT;
        return;
    }
    if (!(it->n1 & ORM_RQ_COLS)) {
        n1_result_columns(c->orm->sess, k, NULL);
        it->n1 |= ORM_RQ_COLS;
    }
    if (!n1_result_row(c->orm->sess, vals, sent, k))
        it->n1 &= (uint8_t)~ORM_RQ_WANT;
}

/* Rows of a CommandComplete tag: its last word when it is a number ("SELECT 5", "INSERT 0 5"). */
static uint64_t tag_rows(const uint8_t *tag, uint32_t len)
{
    uint64_t rows = 0;
    size_t n = text_len(tag, len), i = n;

    while (i > 0 && tag[i - 1] >= '0' && tag[i - 1] <= '9')
        i--;
    if (i == n || i == 0 || tag[i - 1] != ' ')
        return 0;
    for (; i < n; i++)
        rows = rows * 10 + (uint64_t)(tag[i] - '0');
    return rows;
}

/* The head is a Describe answering for the next item: start that one at its RowDescription. */
static bool describe_message(Server *s, char type, uint32_t len, IoCursor *cur, size_t *fwd)
{
    RqItem *next = s->rq_len >= 2 ? &s->rq[(s->rq_head + 1) % s->rq_cap] : NULL;
    const uint8_t *body = NULL;
    bool wait;

    if ((type != 'T' && type != 'n') || !next || !(next->n1 & ORM_RQ_TRACK) ||
        (next->n1 & ORM_RQ_STARTED))
        return true;
    if (type == 'T') {
        body = server_body(len, cur, &wait);
        if (wait)
            return false;
    }
    stmt_start(s->client, next);
    if (type == 'T' && (next->n1 & ORM_RQ_WANT))
        feed_columns(s->client, next, body, len);
    return true;
}

bool orm_server_message(Server *s, char type, uint32_t len, IoCursor *cur, size_t *fwd)
{
    Client *c = s->client;
    RqItem *it = rq_head(s);
    const uint8_t *body = NULL;
    bool wait = false;

    if (!c->orm) {
        it->n1 = 0;
        return true;
    }
    if (it->n1 & ORM_RQ_DESCRIBE)
        return describe_message(s, type, len, cur, fwd);
    if (!(it->n1 & ORM_RQ_TRACK) || (it->n1 & ORM_RQ_DONE))
        return true;
    if (!(it->n1 & ORM_RQ_STARTED)) {
        stmt_start(c, it);
        if (!(it->n1 & ORM_RQ_TRACK))
            return true;
    }
    switch (type) {
    case 'T':
        if (!(it->n1 & ORM_RQ_WANT) || (it->n1 & ORM_RQ_COLS))
            break;
        body = server_body(len, cur, &wait);
        if (wait)
            return false;
        feed_columns(c, it, body, len);
        break;
    case 'D':
        if (!(it->n1 & ORM_RQ_WANT))
            break;
        body = server_body(len, cur, &wait);
        if (wait)
            return false;
        feed_row(c, it, body, len);
        break;
    case 'C':
        body = server_body(len, cur, &wait);
        if (wait)
            return false;
        stmt_done(c, it, body ? tag_rows(body, len) : 0);
        break;
    case 'E':
    case 'I':
    case 's':
    case 'Z':
        stmt_done(c, it, 0);
        break;
    default:
        break;
    }
    return true;
}
