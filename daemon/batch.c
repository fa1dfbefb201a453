/*
 * N+1 batching (n1_mode = batch): when a client's statement continues an
 * N+1 run that has had n1_batch_after executions, the proxy sends one
 * batched statement (orm/batch.h) for the run's remaining keys instead, and
 * answers this and the following executions of the child from what came
 * back, byte for byte as the server would have answered each.
 *
 * Where this sits. client_process calls batch_client at the start of each
 * statement when nothing of the client's is in flight; it peeks at the
 * whole execution (a Query, or [Parse] Bind [Describe] Execute Sync) without
 * consuming it. Then:
 *   - a prefetch holds the answer: it is written to the client and the
 *     execution drained (BATCH_DONE);
 *   - a batch is due: the batched statement goes to the client's server
 *     (inside a savepoint when the client is in a transaction) and the
 *     execution stays in the client's input until its answer is back
 *     (BATCH_WAIT); then client_process runs again and finds the prefetch;
 *     on any failure the savepoint is rolled back and the execution goes to
 *     the server as it is (batch_skip).
 * The key type is what the server infers for the child's key parameter,
 * learned once per shape with Parse/Describe of the normalised text (one
 * extra round trip, inside the same savepoint).
 *
 * Prefetches are dropped on any statement that is not read-only (client
 * side, orm_feed.c), when the detector takes another statement as the
 * parent, when the transaction status differs from the one they were
 * filled in, and after n1_prefetch_ttl.
 */
#include "daemon/orm_feed.h"
#include "daemon/cache.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "orm/batch.h"
#include "proto/msg.h"

#define BATCH_MAX_BYTES    (16u << 20) /* answer bytes one prefetch may hold */
#define BATCH_MAX_MSG      (16u << 20) /* longest server message read whole */
#define BATCH_MAX_FAILURES 3           /* failed batches before a shape is given up on */
#define BATCH_SHAPES       4096        /* shapes remembered per worker */
#define BATCH_MIN_HINT     16          /* smallest batch sized from a loop's consumption */
#define BATCH_STMT         "__pgcoalesce_batch__" /* the proxy's statement on the server */
#define BATCH_SAVEPOINT    "__pgcoalesce_batch__"

/* ---- what the worker remembers per (shape, key parameter) ---------------------------------- */

typedef struct BatchShape {
    uint64_t key;      /* 0: free */
    uint32_t type_oid; /* the key's type, 0 until learned */
    uint8_t failures;
    bool never; /* given up on */
} BatchShape;

struct OrmBatchShapes {
    BatchShape *slots; /* BATCH_SHAPES, open addressing */
    uint32_t used;
};

bool batch_worker_init(OrmWorker *ow)
{
    ow->bshapes = calloc(1, sizeof(*ow->bshapes));
    if (!ow->bshapes)
        return false;
    ow->bshapes->slots = calloc(BATCH_SHAPES, sizeof(BatchShape));
    return ow->bshapes->slots != NULL;
}

void batch_worker_free(OrmWorker *ow)
{
    if (!ow->bshapes)
        return;
    free(ow->bshapes->slots);
    free(ow->bshapes);
    ow->bshapes = NULL;
}

/* The slot of (shape, param), made when missing; the table starts over when 3/4 full. */
static BatchShape *shape_slot(OrmWorker *ow, uint64_t hash, int param);

/* The shape slot of a batch in flight (looked up again: the table may have started over). */
static BatchShape *batch_shape(OrmWorker *ow, const OrmBatch *b);

static BatchShape *shape_slot(OrmWorker *ow, uint64_t hash, int param)
{
    OrmBatchShapes *t = ow->bshapes;
    uint64_t key = (hash ^ ((uint64_t)(param + 1) * 0x9e3779b97f4a7c15ULL)) | 1;
    uint32_t i = (uint32_t)(key >> 20) & (BATCH_SHAPES - 1);

    for (;;) {
        BatchShape *b = &t->slots[i];
        if (b->key == key)
            return b;
        if (b->key == 0) {
            if (t->used >= BATCH_SHAPES / 4 * 3) {
                memset(t->slots, 0, BATCH_SHAPES * sizeof(*t->slots));
                t->used = 0;
                return shape_slot(ow, hash, param);
            }
            t->used++;
            b->key = key;
            return b;
        }
        i = (i + 1) & (BATCH_SHAPES - 1);
    }
}

static void shape_failed(OrmWorker *ow, BatchShape *bs, bool for_good)
{
    if (bs->never)
        return;
    if (for_good || ++bs->failures >= BATCH_MAX_FAILURES) {
        bs->never = true;
        ow->batch.unbatchable++;
    }
}

/* ---- prefetches ------------------------------------------------------------------------------ */

typedef struct PfKey {
    uint64_t hash;
    uint32_t off, len; /* its DataRow messages, in rows */
    uint32_t nrows;
    uint32_t asked; /* times answered */
    bool ok;        /* its whole answer is here */
} PfKey;

struct OrmPrefetch {
    uint64_t child; /* shape hash */
    int param;      /* placeholder holding the key */
    uint8_t nparams;
    uint64_t params[ORM_STMT_PARAMS]; /* the others must be the same */
    uint8_t res_fmt;
    uint64_t res_bin;
    uint64_t gen;        /* parent it was made for */
    char status;         /* transaction status it was filled in */
    bool fixed_snapshot; /* filled in a REPEATABLE READ / SERIALIZABLE transaction: no ttl */
    double filled;
    uint8_t *rowdesc; /* the whole RowDescription message */
    uint32_t rowdesc_len;
    uint8_t *rows; /* DataRow messages, key after key */
    size_t rows_len, rows_cap;
    PfKey *keys;
    uint32_t nkeys;
    uint32_t next; /* where the next key is most likely */
};

static void pf_free(OrmPrefetch *pf)
{
    if (!pf)
        return;
    free(pf->rowdesc);
    free(pf->rows);
    free(pf->keys);
    free(pf);
}

/* Drop prefetch i: count what it fetched for nothing and size the next batch by it. */
static void pf_drop(Client *c, int i, bool expired)
{
    ClientOrm *o = c->orm;
    OrmBatchStats *st = &c->w->orm->batch;
    OrmPrefetch *pf = o->pf[i];
    uint32_t used = 0;
    int max = c->w->cfg->n1_batch_max;

    for (uint32_t k = 0; k < pf->nkeys; k++) {
        if (pf->keys[k].asked)
            used++;
        else if (pf->keys[k].ok)
            st->keys_wasted++;
    }
    if (used >= pf->nkeys)
        o->batch_hint = 0; /* all used: next time as many as allowed */
    else
        o->batch_hint = used * 2 > BATCH_MIN_HINT ? used * 2 : BATCH_MIN_HINT;
    if (o->batch_hint > (uint32_t)max)
        o->batch_hint = 0;
    st->dropped++;
    if (expired)
        st->expired++;
    pf_free(pf);
    o->pf[i] = o->pf[--o->npf];
    o->pf[o->npf] = NULL;
}

void batch_drop_all(Client *c)
{
    ClientOrm *o = c->orm;

    while (o && o->npf > 0)
        pf_drop(c, o->npf - 1, false);
}

static int pf_find(const ClientOrm *o, uint64_t child)
{
    for (int i = 0; i < o->npf; i++)
        if (o->pf[i]->child == child)
            return i;
    return -1;
}

static bool pf_usable(const ClientOrm *o, const OrmPrefetch *pf, const OrmStmt *e, char status,
                      double now, double ttl, bool *expired)
{
    *expired = !pf->fixed_snapshot && now - pf->filled > ttl;
    if (*expired || pf->gen != n1_parent_gen(o->sess) || pf->status != status ||
        e->nparams != pf->nparams || e->res_fmt != pf->res_fmt ||
        (e->res_fmt == ORM_RES_MIXED && e->res_bin != pf->res_bin))
        return false;
    for (int i = 0; i < e->nparams; i++)
        if (i != pf->param && e->params[i] != pf->params[i])
            return false;
    return true;
}

static PfKey *pf_lookup(OrmPrefetch *pf, uint64_t h)
{
    for (uint32_t n = 0; n < pf->nkeys; n++) {
        uint32_t k = (pf->next + n) % pf->nkeys;
        if (pf->keys[k].hash == h) {
            if (!pf->keys[k].ok)
                return NULL;
            pf->next = (k + 1) % pf->nkeys;
            return &pf->keys[k];
        }
    }
    return NULL;
}

/* ---- the client's execution, peeked at --------------------------------------------------------
 */

void orm_exec_free(OrmExec *x)
{
    orm_stmt_release(&x->stmt);
}

BatchResult orm_exec_read(Client *c, OrmExec *x)
{
    IoBuf *in = &c->io.in;
    size_t avail = iobuf_len(in), n, at = 0;
    const uint8_t *parse = NULL, *bind = NULL;
    uint32_t parse_len = 0, bind_len = 0;
    ClientOrm *o = c->orm;
    uint8_t type_prev = 0;

    memset(x, 0, sizeof(*x));
    n = avail < ORM_MAX_MSG ? avail : ORM_MAX_MSG;
    if (n < PROTO_HDR_LEN)
        return BATCH_INPUT;
    x->buf = c->w->orm->msg; /* the worker's one-message scratch: used and forgotten */
    iobuf_copyout(in, x->buf, n);
    for (int i = 0;; i++) {
        char type, prev = i > 0 ? (char)type_prev : 0;
        uint32_t len;
        const uint8_t *body;
        if (at + PROTO_HDR_LEN > n)
            return avail > n ? BATCH_PASS : BATCH_INPUT;
        if (proto_frame_header(x->buf + at, ORM_MAX_MSG - PROTO_HDR_LEN, &type, &len) != FRAME_OK)
            return BATCH_PASS; /* too long to look at, or bad: client_process deals with it */
        if (at + PROTO_HDR_LEN + len > n)
            return avail > n ? BATCH_PASS : BATCH_INPUT;
        body = x->buf + at + PROTO_HDR_LEN;
        at += PROTO_HDR_LEN + len;
        type_prev = (uint8_t)type;
        if (i == 0 && type == 'Q') {
            x->simple = true;
            x->text = (const char *)body;
            x->text_len = strnlen((const char *)body, len);
            break;
        }
        if (type == 'P' && i == 0 && len > 0 && body[0] == 0) {
            x->has_parse = true;
            parse = body;
            parse_len = len;
        } else if (type == 'B' && !bind && len >= 2 && body[0] == 0) {
            bind = body;
            bind_len = len;
        } else if (type == 'D' && bind && !x->has_describe && len == 2 && body[0] == 'P' &&
                   body[1] == 0) {
            x->has_describe = true;
        } else if (type == 'E' && bind && len == 5 && memcmp(body, "\0\0\0\0\0", 5) == 0) {
            continue;
        } else if (type == 'S' && prev == 'E') {
            break;
        } else {
            return BATCH_PASS;
        }
    }
    x->bytes = at;
    if (x->simple) {
        if (!orm_stmt_shape(c->w->orm, x->text, x->text_len, NULL, 0, &x->stmt))
            return BATCH_PASS;
        return BATCH_DONE;
    }
    /* the Bind names the statement after the portal's empty name */
    {
        const char *stmt = (const char *)bind + 1;
        size_t sl = strnlen(stmt, bind_len - 1);
        if (sl == bind_len - 1)
            return BATCH_PASS;
        x->bind = bind + 1 + sl + 1;
        x->bind_len = bind_len - 1 - sl - 1;
        if (stmt[0] == '\0') {
            const char *text;
            size_t tl;
            if (!parse)
                return BATCH_PASS; /* reuses an unnamed statement parsed earlier */
            text = (const char *)parse + 1;
            tl = strnlen(text, parse_len - 1);
            if (tl == parse_len - 1)
                return BATCH_PASS;
            x->text = text;
            x->text_len = tl;
            x->types = (const uint8_t *)text + tl + 1;
            x->types_len = parse_len - 1 - tl - 1;
            orm_client_parse_body(c, parse, parse_len);
            orm_client_bind_body(c, bind, bind_len);
        } else {
            PreparedStmt *ps;
            if (parse || c->pool->mode != POOL_TRANSACTION)
                return BATCH_PASS;
            ps = client_stmts_get(&c->stmts, stmt);
            if (!ps)
                return BATCH_PASS;
            x->text = (const char *)ps->body;
            x->text_len = strnlen((const char *)ps->body, ps->body_len);
            if (x->text_len == ps->body_len)
                return BATCH_PASS;
            x->types = ps->body + x->text_len + 1;
            x->types_len = ps->body_len - x->text_len - 1;
            orm_client_bind(c, ps, bind, bind_len);
        }
    }
    if (!o->bound_ok || !o->bound.info)
        return BATCH_PASS;
    orm_stmt_copy(&x->stmt, &o->bound);
    return BATCH_DONE;
}

/* ---- answering from a prefetch -----------------------------------------------------------------
 */

size_t orm_answer(Client *c, const OrmExec *x, const uint8_t *rowdesc, size_t rowdesc_len,
                  const uint8_t *rows, size_t rows_len, const char *tag, uint64_t nrows,
                  double started)
{
    PktBuf *b = worker_pkt(c->w);

    if (x->has_parse) {
        pkt_begin(b, '1');
        pkt_end(b);
    }
    if (!x->simple) {
        pkt_begin(b, '2');
        pkt_end(b);
    }
    if (x->simple || x->has_describe)
        pkt_put_bytes(b, rowdesc, rowdesc_len);
    if (rows_len > 0)
        pkt_put_bytes(b, rows, rows_len);
    pkt_command_complete(b, tag);
    pkt_ready(b, orm_client_status(c));
    io_send(&c->io, b->data, b->len);
    iobuf_drain(&c->io.in, x->bytes);
    c->pool->stats.query_count++;
    orm_stmt_local(c, &x->stmt, nrows, started);
    return b->len;
}

static void answer(Client *c, OrmExec *x, OrmPrefetch *pf, PfKey *k)
{
    char tag[32];

    snprintf(tag, sizeof(tag), "SELECT %" PRIu32, k->nrows);
    orm_answer(c, x, pf->rowdesc, pf->rowdesc_len, pf->rows + k->off, k->len, tag, k->nrows,
               now_sec());
    k->asked++;
    c->w->orm->batch.keys_answered++;
}

/* ---- a batch on its way ------------------------------------------------------------------------
 */

struct OrmBatch {
    OrmPrefetch *pf;     /* being filled */
    uint64_t shape_hash; /* its shape and key parameter, for shape_slot */
    bool savepoint;      /* the client is in a transaction: all of it inside a savepoint */
    bool failed;         /* an ErrorResponse came */
    bool too_big;        /* the answer outgrew BATCH_MAX_BYTES */
    bool ord_binary;
    int32_t cur; /* key whose rows are arriving, -1 before the first */
    uint32_t type_oid;
    int key_param;  /* 0-based placeholder of the key */
    int col;        /* parent column of the keys */
    uint32_t *rows; /* parent rows of the keys, in order */
    char *sql;      /* the child's text */
    size_t sql_len;
    ShapeLit lit; /* the key in sql */
    bool simple;
    bool fence;     /* the child has no LIMIT/OFFSET: OFFSET 0 keeps it a per-key subquery */
    uint8_t *types; /* declared parameter types of the child: int16 n, int32[n] */
    size_t types_len;
    uint8_t *bind; /* the client's Bind body after its names */
    size_t bind_len;
};

static void batch_free(OrmBatch *b)
{
    if (!b)
        return;
    pf_free(b->pf);
    free(b->rows);
    free(b->sql);
    free(b->types);
    free(b->bind);
    free(b);
}

static BatchShape *batch_shape(OrmWorker *ow, const OrmBatch *b)
{
    return shape_slot(ow, b->shape_hash, b->key_param);
}

void batch_client_free(Client *c)
{
    ClientOrm *o = c->orm;

    if (!o)
        return;
    batch_drop_all(c); /* counted: keys fetched for nothing */
    batch_free(o->batch);
    o->batch = NULL;
}

static void *dup_bytes(const void *p, size_t n)
{
    void *d = malloc(n ? n : 1);

    if (d && n)
        memcpy(d, p, n);
    return d;
}

/* The key array as the key type's text; NULL when a key cannot be written so. */
static char *key_array(Client *c, const OrmBatch *b, size_t *len)
{
    N1Session *sess = c->orm->sess;
    bool binary = b->col < 64 && (c->orm->parent_bin >> b->col & 1);
    size_t cap = 16, used = 0;
    char *buf;

    for (uint32_t i = 0; i < b->pf->nkeys; i++) {
        const uint8_t *v;
        int n = n1_parent_value(sess, b->rows[i], b->col, &v);
        cap += (size_t)(n > 0 ? n : 0) * 2 + 48;
    }
    buf = malloc(cap);
    if (!buf)
        return NULL;
    for (uint32_t i = 0; i < b->pf->nkeys; i++) {
        const uint8_t *v = NULL;
        int n = n1_parent_value(sess, b->rows[i], b->col, &v);
        if (n < -1 || !batch_array_add(buf, cap, &used, b->type_oid, v, n, binary)) {
            free(buf);
            return NULL;
        }
    }
    if (!batch_array_end(buf, cap, &used)) {
        free(buf);
        return NULL;
    }
    *len = used;
    return buf;
}

static void put_close_stmt(PktBuf *p)
{
    pkt_begin(p, 'C');
    pkt_put_u8(p, 'S');
    pkt_put_str(p, BATCH_STMT);
    pkt_end(p);
}

/* Parse/Describe/Close/Sync of the normalised child, for its parameter types. */
static void put_learn(PktBuf *p, const ShapeInfo *info)
{
    put_close_stmt(p);
    pkt_begin(p, 'P');
    pkt_put_str(p, BATCH_STMT);
    pkt_put_bytes(p, info->sql, info->sql_len);
    pkt_put_u8(p, 0);
    pkt_put_i16(p, 0);
    pkt_end(p);
    pkt_begin(p, 'D');
    pkt_put_u8(p, 'S');
    pkt_put_str(p, BATCH_STMT);
    pkt_end(p);
    put_close_stmt(p);
    pkt_begin(p, 'S');
    pkt_end(p);
}

/* The parts of a client's Bind body after its two names. */
typedef struct BindParts {
    int nfmt, nvals, nres;
    const uint8_t *fmts; /* nfmt int16, as sent */
    const uint8_t *vals; /* nvals (int32 length, bytes), as sent */
    size_t vals_len;
    const uint8_t *res; /* nres int16, as sent */
} BindParts;

static bool read_bind(const uint8_t *body, size_t len, BindParts *bp)
{
    MsgReader r;

    mr_init(&r, body, len);
    bp->nfmt = mr_i16(&r);
    bp->fmts = mr_bytes(&r, 2 * (size_t)(bp->nfmt > 0 ? bp->nfmt : 0));
    bp->nvals = mr_i16(&r);
    bp->vals = r.p + r.pos;
    for (int i = 0; i < bp->nvals && !r.bad; i++) {
        int32_t l = mr_i32(&r);
        if (l > 0)
            mr_bytes(&r, (size_t)l);
    }
    bp->vals_len = (size_t)(r.p + r.pos - bp->vals);
    bp->nres = mr_i16(&r);
    bp->res = mr_bytes(&r, 2 * (size_t)(bp->nres > 0 ? bp->nres : 0));
    return !r.bad && bp->nfmt >= 0 && bp->nvals >= 0 && bp->nres >= 0 &&
           (bp->nfmt <= 1 || bp->nfmt == bp->nvals);
}

/*
 * The batched statement's messages (Close, Parse, Bind, Describe, Execute,
 * Close, Sync). False when a key cannot be written as the key type or the
 * client's Bind does not read right.
 */
static bool put_batch(Client *c, OrmBatch *b, PktBuf *p)
{
    const char *tname = batch_type_name(b->type_oid);
    BindParts bp = {0};
    MsgReader types;
    int ntypes = 0, keyidx = -1;
    size_t arr_len;
    char *sql, *arr;
    uint32_t array_param = 1;

    if (!tname)
        return false;
    if (!b->simple) {
        if (!read_bind(b->bind, b->bind_len, &bp))
            return false;
        if (b->lit.kind == SHAPE_LIT_BIND) {
            if (b->lit.bind < 1 || b->lit.bind > bp.nvals)
                return false;
            keyidx = b->lit.bind - 1;
        }
        mr_init(&types, b->types, b->types_len);
        ntypes = b->types_len >= 2 ? mr_i16(&types) : 0;
        if (ntypes < 0 || ntypes > bp.nvals || mr_remaining(&types) < 4 * (size_t)ntypes)
            return false;
        array_param = (uint32_t)bp.nvals + 1;
    }
    arr = key_array(c, b, &arr_len);
    if (!arr) {
        c->w->orm->batch.fb_keys++;
        return false;
    }
    if (!batch_sql(b->sql, b->sql_len, &b->lit, array_param, tname, b->fence, &sql)) {
        free(arr);
        return false;
    }
    put_close_stmt(p);
    pkt_begin(p, 'P');
    pkt_put_str(p, BATCH_STMT);
    pkt_put_str(p, sql);
    if (b->simple) {
        pkt_put_i16(p, 0);
    } else {
        /* the client's declared types; the key's own $n is no longer used, so
         * it must have one: text when the client left it open */
        pkt_put_i16(p, (int16_t)(bp.nvals + 1));
        for (int i = 0; i < bp.nvals; i++) {
            int32_t oid = i < ntypes ? mr_i32(&types) : 0;
            pkt_put_i32(p, i == keyidx && oid == 0 ? 25 : oid);
        }
        pkt_put_i32(p, 0);
    }
    pkt_end(p);
    free(sql);

    pkt_begin(p, 'B');
    pkt_put_u8(p, 0);
    pkt_put_str(p, BATCH_STMT);
    if (b->simple || bp.nfmt == 0) {
        pkt_put_i16(p, 0);
    } else {
        pkt_put_i16(p, (int16_t)(bp.nvals + 1));
        for (int i = 0; i < bp.nvals; i++)
            pkt_put_bytes(p, bp.fmts + 2 * (bp.nfmt == 1 ? 0 : i), 2);
        pkt_put_i16(p, 0);
    }
    pkt_put_i16(p, (int16_t)(bp.nvals + 1));
    if (!b->simple) {
        /* the values, the key's replaced by NULL */
        MsgReader v;
        mr_init(&v, bp.vals, bp.vals_len);
        for (int i = 0; i < bp.nvals; i++) {
            const uint8_t *at = v.p + v.pos;
            int32_t l = mr_i32(&v);
            if (l > 0)
                mr_bytes(&v, (size_t)l);
            if (i == keyidx)
                pkt_put_i32(p, -1);
            else
                pkt_put_bytes(p, at, (size_t)(v.p + v.pos - at));
        }
    }
    pkt_put_i32(p, (int32_t)arr_len);
    pkt_put_bytes(p, arr, arr_len);
    free(arr);
    if (bp.nres <= 1) {
        /* none (all text) or one code for all: the ordinality in that format too */
        pkt_put_i16(p, (int16_t)bp.nres);
        pkt_put_bytes(p, bp.res, 2 * (size_t)bp.nres);
        b->ord_binary = bp.nres == 1 && bp.res[0] == 0 && bp.res[1] == 1;
    } else {
        pkt_put_i16(p, (int16_t)(bp.nres + 1));
        pkt_put_i16(p, 0);
        pkt_put_bytes(p, bp.res, 2 * (size_t)bp.nres);
    }
    pkt_end(p);

    pkt_begin(p, 'D');
    pkt_put_u8(p, 'P');
    pkt_put_u8(p, 0);
    pkt_end(p);
    pkt_begin(p, 'E');
    pkt_put_u8(p, 0);
    pkt_put_i32(p, 0);
    pkt_end(p);
    put_close_stmt(p);
    pkt_begin(p, 'S');
    pkt_end(p);
    return true;
}

/* Small set of 64-bit hashes (never 0) for picking distinct keys. */
typedef struct HashSet {
    uint64_t *v;
    uint32_t mask;
} HashSet;

static bool hs_init(HashSet *h, uint32_t n)
{
    uint32_t cap = 16;

    while (cap < n * 2)
        cap <<= 1;
    h->v = calloc(cap, sizeof(*h->v));
    h->mask = cap - 1;
    return h->v != NULL;
}

static bool hs_has(const HashSet *h, uint64_t x)
{
    x |= 1;
    for (uint32_t i = (uint32_t)(x >> 32) & h->mask; h->v[i]; i = (i + 1) & h->mask)
        if (h->v[i] == x)
            return true;
    return false;
}

/* Add x; false when it was there. */
static bool hs_add(HashSet *h, uint64_t x)
{
    uint32_t i;

    x |= 1;
    for (i = (uint32_t)(x >> 32) & h->mask; h->v[i]; i = (i + 1) & h->mask)
        if (h->v[i] == x)
            return false;
    h->v[i] = x;
    return true;
}

/*
 * The keys to fetch: this statement's first, then the key column's values
 * further down, distinct, up to the session's batch size. NULL is a key like
 * any other (the child answers it, with no rows or an aggregate's one row).
 *
 * Values already seen above this row are left out when the ORM holds what
 * it loaded (SQLAlchemy's identity map: a key is asked for once), and kept
 * when it asks again for every row (Django's forward foreign keys). Which
 * one it is shows in the rows above: an identity map passed rows whose key
 * it had, so it asked fewer times than there are rows with a value. Until
 * the rows above show that, nothing is left out; a later batch knows
 * better. NULL likewise: left out once the ORM passed NULL rows without
 * asking (ORMs do not load a NULL foreign key).
 */
static uint32_t pick_keys(Client *c, const N1BatchPlan *plan, uint32_t **out)
{
    N1Session *sess = c->orm->sess;
    uint32_t nrows = n1_parent_rows(sess), n = 0, limit = (uint32_t)c->w->cfg->n1_batch_max;
    HashSet seen;
    uint32_t *rows;
    const uint8_t *cur;
    bool null_in;

    if (n1_parent_value(sess, plan->row, plan->col, &cur) < -1)
        return 0; /* this statement's own key was not kept */
    if (c->orm->batch_hint && c->orm->batch_hint < limit)
        limit = c->orm->batch_hint;
    if (!hs_init(&seen, nrows + 1))
        return 0;
    rows = malloc(sizeof(*rows) * (limit < nrows ? limit : nrows));
    if (!rows) {
        free(seen.v);
        return 0;
    }
    {
        /* What the ORM did with the rows above: rows with a value, distinct
         * values, NULL rows, against the times it asked. */
        uint32_t valued = 0, distinct = 0, nulls = 0;
        uint64_t cur_h = n1_parent_hash_at(sess, plan->row, plan->col);
        bool held, skip_null;
        for (uint32_t r = 0; r < plan->row; r++) {
            uint64_t h = n1_parent_hash_at(sess, r, plan->col);
            if (h == SHAPE_HASH_NULL) {
                nulls++;
                continue;
            }
            valued++;
            distinct += hs_add(&seen, h);
        }
        /* it passed rows whose key it had: an identity map */
        held = distinct < valued && plan->count < valued;
        /* it passed NULL rows without asking */
        skip_null = nulls > 0 && plan->count <= (held ? distinct : valued);
        if (!held || (cur_h != SHAPE_HASH_NULL && hs_has(&seen, cur_h))) {
            /* it may ask again for what it had: nothing above is left out */
            free(seen.v);
            if (!hs_init(&seen, nrows + 1)) {
                free(rows);
                return 0;
            }
        }
        if (cur_h != SHAPE_HASH_NULL)
            hs_add(&seen, cur_h);
        null_in = cur_h == SHAPE_HASH_NULL || skip_null;
    }
    rows[n++] = plan->row;
    for (uint32_t r = plan->row + 1; r < nrows && n < limit; r++) {
        const uint8_t *v;
        uint64_t h = n1_parent_hash_at(sess, r, plan->col);
        if (n1_parent_value(sess, r, plan->col, &v) < -1)
            continue; /* too long to have been kept */
        if (h == SHAPE_HASH_NULL ? null_in : !hs_add(&seen, h))
            continue;
        null_in = null_in || h == SHAPE_HASH_NULL;
        rows[n++] = r;
    }
    free(seen.v);
    *out = rows;
    return n;
}

/* Everything a batch needs that the client's input holds, copied. */
static OrmBatch *batch_new(Client *c, const OrmExec *x, const N1BatchPlan *plan, BatchShape *bs,
                           const ShapeLit *lit)
{
    OrmBatch *b = calloc(1, sizeof(*b));
    OrmPrefetch *pf = calloc(1, sizeof(*pf));
    N1Session *sess = c->orm->sess;

    if (!b || !pf)
        goto fail;
    b->pf = pf;
    b->shape_hash = x->stmt.info->hash;
    b->cur = -1;
    b->type_oid = bs->type_oid;
    b->key_param = plan->param;
    b->col = plan->col;
    b->lit = *lit;
    b->simple = x->simple;
    b->fence = !(x->stmt.info->flags & (SHAPE_F_LIMIT | SHAPE_F_OFFSET));
    b->sql = dup_bytes(x->text, x->text_len);
    b->sql_len = x->text_len;
    b->types = dup_bytes(x->types, x->types_len);
    b->types_len = x->types_len;
    b->bind = dup_bytes(x->bind, x->bind_len);
    b->bind_len = x->bind_len;
    if (!b->sql || !b->types || !b->bind)
        goto fail;
    pf->nkeys = pick_keys(c, plan, &b->rows);
    if (pf->nkeys < 2)
        goto fail;
    pf->keys = calloc(pf->nkeys, sizeof(*pf->keys));
    if (!pf->keys)
        goto fail;
    for (uint32_t i = 0; i < pf->nkeys; i++)
        pf->keys[i].hash = n1_parent_hash_at(sess, b->rows[i], plan->col);
    pf->child = x->stmt.info->hash;
    pf->param = plan->param;
    pf->nparams = x->stmt.nparams;
    memcpy(pf->params, x->stmt.params, sizeof(pf->params));
    pf->res_fmt = x->stmt.res_fmt;
    pf->res_bin = x->stmt.res_bin;
    pf->gen = plan->gen;
    return b;
fail:
    if (b)
        b->pf = NULL;
    batch_free(b);
    pf_free(pf);
    return NULL;
}

/* Is placeholder param of the client's text one plain value (not a list, not typed)? */
static bool key_literal(OrmWorker *ow, const OrmExec *x, int param, ShapeLit *out)
{
    ShapeBuf *sb = ow->sb;
    const ShapeParam *pp;

    if (!shape_normalize(x->text, x->text_len, sb) || sb->nstmts != 1 ||
        (uint32_t)param >= sb->nparams)
        return false;
    pp = &sb->params[param];
    if (pp->n != 1 || pp->flags != 0)
        return false;
    *out = sb->lits[pp->first];
    return out->kind != SHAPE_LIT_NULL && (out->kind != SHAPE_LIT_BIND || !x->simple);
}

/* Send the batch (or first the key type's learning) for the client's execution. */
static BatchResult launch(Client *c, OrmExec *x, const N1BatchPlan *plan, BatchShape *bs,
                          const ShapeLit *lit)
{
    Server *s = c->server;
    OrmBatch *b = batch_new(c, x, plan, bs, lit);
    PktBuf *p;
    bool ok;

    if (!b)
        return BATCH_PASS;
    p = worker_pkt(c->w);
    b->savepoint = s->tx_status == 'T';
    if (b->savepoint)
        pkt_query(p, "SAVEPOINT " BATCH_SAVEPOINT "; SHOW transaction_isolation");
    if (bs->type_oid == 0) {
        put_learn(p, x->stmt.info);
    } else if (!put_batch(c, b, p)) {
        shape_failed(c->w->orm, bs, false);
        batch_free(b);
        return BATCH_PASS;
    }
    ok = (!b->savepoint || rq_push(s, RQ_BATCH_SAVEPOINT, NULL, NULL)) &&
         rq_push(s, bs->type_oid == 0 ? RQ_BATCH_TYPES : RQ_BATCH, NULL, NULL);
    if (!ok)
        goto oom;
    c->orm->batch = b;
    server_send(s, p);
    return BATCH_WAIT;
oom:
    batch_free(b);
    client_error_close(c, "53200", "out of memory");
    return BATCH_WAIT;
}

BatchResult batch_client(Client *c)
{
    const Config *cfg = c->w->cfg;
    OrmWorker *ow = c->w->orm;
    ClientOrm *o = orm_client_get(c);
    BatchResult r;
    N1BatchPlan plan;
    BatchShape *bs;
    ShapeLit lit;
    OrmExec x;
    int i;
    char status = orm_client_status(c);
    double now;

    if (!o)
        return BATCH_PASS;
    if (o->batch)
        return BATCH_WAIT;
    n1_session_keep_values(o->sess, true);
    if (o->npf == 0 && !n1_runs_ready(o->sess, cfg->n1_batch_after))
        return BATCH_PASS; /* the common case: no run to batch, nothing prefetched */
    cache_peek(c, true);
    r = orm_exec_read(c, &x);
    cache_peek(c, false);
    if (r != BATCH_DONE) {
        orm_exec_free(&x);
        return r;
    }
    r = BATCH_PASS;
    if (!x.stmt.info || x.stmt.info->kind != SHAPE_KIND_SELECT ||
        !(x.stmt.info->flags & SHAPE_F_READ_ONLY) || status == 'E') {
        batch_drop_all(c);
        goto out;
    }
    now = now_sec();
    i = pf_find(o, x.stmt.info->hash);
    if (i >= 0) {
        bool expired;
        if (!pf_usable(o, o->pf[i], &x.stmt, status, now, cfg->n1_prefetch_ttl, &expired)) {
            pf_drop(c, i, expired);
        } else {
            PfKey *k = pf_lookup(o->pf[i], x.stmt.params[o->pf[i]->param]);
            if (k) {
                answer(c, &x, o->pf[i], k);
                r = BATCH_DONE;
                goto out;
            }
        }
    }
    if (o->batch_skip)
        goto out; /* cleared when the execution is forwarded (orm_feed.c) */
    if (!x.stmt.info->batchable || !n1_batch_plan(o->sess, x.stmt.info, x.stmt.params,
                                                  x.stmt.nparams, cfg->n1_batch_after, &plan))
        goto out;
    bs = shape_slot(ow, x.stmt.info->hash, plan.param);
    if (bs->never || !key_literal(ow, &x, plan.param, &lit))
        goto out;
    if (!c->server) {
        r = BATCH_SERVER;
        goto out;
    }
    if (!rq_quiet(c->server) || c->server->dirty)
        goto out;
    r = launch(c, &x, &plan, bs, &lit);
out:
    orm_exec_free(&x);
    return r;
}

/* ---- the server's answers ----------------------------------------------------------------------
 */

/* A DataRow of the batch: cut off the ordinality and file it under its key. */
static void batch_row(OrmBatch *b, const uint8_t *body, uint32_t len)
{
    OrmPrefetch *pf = b->pf;
    int64_t ord, n;
    int32_t k;

    if (b->failed || b->too_big)
        return;
    if (pf->rows_len + PROTO_HDR_LEN + len > BATCH_MAX_BYTES) {
        b->too_big = true;
        return;
    }
    if (pf->rows_len + PROTO_HDR_LEN + len > pf->rows_cap) {
        size_t cap = pf->rows_cap ? pf->rows_cap : 8192;
        uint8_t *nr;
        while (cap < pf->rows_len + PROTO_HDR_LEN + len)
            cap *= 2;
        nr = realloc(pf->rows, cap);
        if (!nr) {
            b->too_big = true;
            return;
        }
        pf->rows = nr;
        pf->rows_cap = cap;
    }
    n = batch_cut_row(body, len, b->ord_binary, &ord, pf->rows + pf->rows_len + PROTO_HDR_LEN);
    if (n < 0 || ord < 1 || ord > (int64_t)pf->nkeys || ord - 1 < b->cur) {
        b->failed = true; /* not the answer the statement promises */
        return;
    }
    k = (int32_t)(ord - 1);
    if (k != b->cur) {
        b->cur = k;
        pf->keys[k].off = (uint32_t)pf->rows_len;
    }
    pf->rows[pf->rows_len] = 'D';
    pf->rows[pf->rows_len + 1] = (uint8_t)((uint32_t)(n + 4) >> 24);
    pf->rows[pf->rows_len + 2] = (uint8_t)((uint32_t)(n + 4) >> 16);
    pf->rows[pf->rows_len + 3] = (uint8_t)((uint32_t)(n + 4) >> 8);
    pf->rows[pf->rows_len + 4] = (uint8_t)(n + 4);
    pf->rows_len += PROTO_HDR_LEN + (size_t)n;
    pf->keys[k].len += PROTO_HDR_LEN + (uint32_t)n;
    pf->keys[k].nrows++;
}

static void batch_rowdesc(OrmBatch *b, const uint8_t *body, uint32_t len)
{
    OrmPrefetch *pf = b->pf;
    int64_t n;

    free(pf->rowdesc);
    pf->rowdesc = malloc(PROTO_HDR_LEN + len);
    if (!pf->rowdesc) {
        b->failed = true;
        return;
    }
    n = batch_cut_rowdesc(body, len, pf->rowdesc + PROTO_HDR_LEN);
    if (n < 0) {
        b->failed = true;
        return;
    }
    pf->rowdesc[0] = 'T';
    pf->rowdesc[1] = (uint8_t)((uint32_t)(n + 4) >> 24);
    pf->rowdesc[2] = (uint8_t)((uint32_t)(n + 4) >> 16);
    pf->rowdesc[3] = (uint8_t)((uint32_t)(n + 4) >> 8);
    pf->rowdesc[4] = (uint8_t)(n + 4);
    pf->rowdesc_len = (uint32_t)(PROTO_HDR_LEN + n);
}

/* SHOW transaction_isolation: a snapshot that cannot move keeps answers valid. */
static void batch_isolation(OrmBatch *b, const uint8_t *body, uint32_t len)
{
    MsgReader r;
    const char *v;
    int32_t n;

    mr_init(&r, body, len);
    if (mr_i16(&r) != 1 || (n = mr_i32(&r)) < 0 || !(v = (const char *)mr_bytes(&r, (size_t)n)))
        return;
    b->pf->fixed_snapshot =
        ((size_t)n == strlen("repeatable read") && memcmp(v, "repeatable read", (size_t)n) == 0) ||
        ((size_t)n == strlen("serializable") && memcmp(v, "serializable", (size_t)n) == 0);
}

/* ParameterDescription of the normalised child: the key's type. */
static void batch_types(OrmBatch *b, const uint8_t *body, uint32_t len)
{
    MsgReader r;
    int32_t oid = 0;

    mr_init(&r, body, len);
    if (mr_i16(&r) <= b->key_param)
        return;
    for (int i = 0; i <= b->key_param; i++)
        oid = mr_i32(&r);
    if (!r.bad)
        b->type_oid = (uint32_t)oid;
}

/* After the batch: let the client carry on. False when s is no longer the client's. */
static bool client_go_on(Server *s, Client *c)
{
    if (server_releasable(s)) {
        server_end_of_transaction(s);
        return false;
    }
    client_continue(c);
    return s->client == c && s->state != SV_CLOSING;
}

/* The batch is over, answered or not. */
static bool batch_end(Server *s, Client *c, bool ok)
{
    ClientOrm *o = c->orm;
    OrmBatch *b = o->batch;
    OrmWorker *ow = c->w->orm;
    PktBuf *p = worker_pkt(c->w);

    if (b->savepoint) {
        pkt_query(p, s->tx_status == 'E' ? "ROLLBACK TO SAVEPOINT " BATCH_SAVEPOINT
                                           "; RELEASE SAVEPOINT " BATCH_SAVEPOINT
                                         : "RELEASE SAVEPOINT " BATCH_SAVEPOINT);
        if (!rq_push(s, RQ_INTERNAL, NULL, NULL)) {
            server_close(s, "out of memory");
            return false;
        }
    }
    if (ok) {
        int i = pf_find(o, b->pf->child);
        OrmPrefetch *pf = b->pf;
        if (i >= 0)
            pf_drop(c, i, false);
        else if (o->npf == ORM_MAX_PREFETCH)
            pf_drop(c, 0, false);
        for (uint32_t k = 0; k < pf->nkeys; k++)
            pf->keys[k].ok = true;
        pf->status = b->savepoint ? 'T' : 'I';
        pf->filled = now_sec();
        o->pf[o->npf++] = pf;
        b->pf = NULL;
        ow->batch.batches++;
        ow->batch.keys_prefetched += pf->nkeys;
    } else {
        o->batch_skip = true;
    }
    batch_free(b);
    o->batch = NULL;
    if (p->len > 0)
        server_send(s, p);
    if (s->state == SV_CLOSING)
        return false;
    return client_go_on(s, c);
}

bool batch_server_input(Server *s)
{
    Client *c = s->client;
    OrmBatch *b = c && c->orm ? c->orm->batch : NULL;
    OrmWorker *ow = s->w->orm;

    while (batch_item(rq_head(s))) {
        uint8_t hdr[PROTO_HDR_LEN];
        const uint8_t *body;
        char type;
        uint32_t len;
        RqKind kind = rq_head(s)->kind;

        if (!b) {
            server_close(s, "batched statement without its client");
            return false;
        }
        if (iobuf_len(&s->io.in) < PROTO_HDR_LEN)
            return false;
        iobuf_copyout(&s->io.in, hdr, PROTO_HDR_LEN);
        if (proto_frame_header(hdr, BATCH_MAX_MSG, &type, &len) != FRAME_OK) {
            server_close(s, "malformed or oversized message from server in a batch");
            return false;
        }
        if (iobuf_len(&s->io.in) < PROTO_HDR_LEN + len)
            return false;
        body = iobuf_data(&s->io.in) + PROTO_HDR_LEN;
        switch (type) {
        case 't':
            if (kind == RQ_BATCH_TYPES)
                batch_types(b, body, len);
            break;
        case 'T':
            if (kind == RQ_BATCH)
                batch_rowdesc(b, body, len);
            break;
        case 'D':
            if (kind == RQ_BATCH)
                batch_row(b, body, len);
            else if (kind == RQ_BATCH_SAVEPOINT)
                batch_isolation(b, body, len);
            break;
        case 'E': {
            ProtoError e;
            b->failed = true;
            if (proto_parse_error(body, len, &e) && e.message)
                log_debug("batched statement failed, sending the single one: %s", e.message);
            break;
        }
        case 'S':
            server_note_param(s, body, len);
            break;
        case 'Z':
            s->tx_status = len >= 1 ? (char)body[0] : 'I';
            break;
        default:
            break;
        }
        iobuf_drain(&s->io.in, PROTO_HDR_LEN + len);
        if (type != 'Z')
            continue;
        rq_pop_head(s);
        if (kind == RQ_BATCH_SAVEPOINT)
            continue; /* the learning or the batch follows, already sent */
        if (kind == RQ_BATCH_TYPES) {
            PktBuf *p;
            if (b->failed || !batch_type_name(b->type_oid)) {
                ow->batch.fb_type++;
                shape_failed(ow, batch_shape(ow, b), true);
                return batch_end(s, c, false);
            }
            batch_shape(ow, b)->type_oid = b->type_oid;
            ow->batch.types_learned++;
            p = worker_pkt(s->w);
            if (!put_batch(c, b, p)) {
                shape_failed(ow, batch_shape(ow, b), false);
                return batch_end(s, c, false);
            }
            if (!rq_push(s, RQ_BATCH, NULL, NULL)) {
                server_close(s, "out of memory");
                return false;
            }
            server_send(s, p);
            continue;
        }
        if (b->failed || b->too_big || !b->pf->rowdesc) {
            ow->batch.fb_error++;
            shape_failed(ow, batch_shape(ow, b), false);
            return batch_end(s, c, false);
        }
        return batch_end(s, c, true);
    }
    return true;
}
