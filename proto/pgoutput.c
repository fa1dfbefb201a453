/*
 * Decoding of logical replication bytes: the replication stream's
 * CopyData messages and the pgoutput v1 messages inside them.
 */
#include "proto/pgoutput.h"

#include "proto/msg.h"

static uint64_t mr_u64(MsgReader *r)
{
    uint64_t hi = (uint32_t)mr_i32(r);
    uint64_t lo = (uint32_t)mr_i32(r);

    return hi << 32 | lo;
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

/* The message must have been read exactly: no overrun, nothing left over. */
static const char *mr_finish(const MsgReader *r, const char *what)
{
    if (r->bad)
        return what;
    if (mr_remaining(r))
        return "trailing bytes after the message";
    return NULL;
}

/* ---- replication CopyData --------------------------------------------- */

const char *pgo_decode_copy(const uint8_t *p, size_t len, PgoCopy *out)
{
    MsgReader r;

    mr_init(&r, p, len);
    *out = (PgoCopy){0};
    out->kind = (char)mr_u8(&r);
    if (r.bad)
        return "empty replication message";
    switch (out->kind) {
    case 'w':
        out->start_lsn = mr_u64(&r);
        out->end_lsn = mr_u64(&r);
        out->send_time = (int64_t)mr_u64(&r);
        if (r.bad)
            return "XLogData header truncated";
        out->len = mr_remaining(&r);
        out->data = mr_bytes(&r, out->len);
        return NULL;
    case 'k':
        out->end_lsn = mr_u64(&r);
        out->send_time = (int64_t)mr_u64(&r);
        out->reply_request = mr_u8(&r) != 0;
        return mr_finish(&r, "keepalive truncated");
    default:
        return "unknown replication message type";
    }
}

size_t pgo_status_update(uint8_t out[PGO_STATUS_LEN], uint64_t written, uint64_t flushed,
                         uint64_t applied, int64_t now_usec, bool reply)
{
    out[0] = 'r';
    put_u64(out + 1, written);
    put_u64(out + 9, flushed);
    put_u64(out + 17, applied);
    put_u64(out + 25, (uint64_t)now_usec);
    out[33] = reply ? 1 : 0;
    return PGO_STATUS_LEN;
}

/* ---- pgoutput parts ---------------------------------------------------- */

/* Read one column of a TupleData; false on an overrun or an unknown kind. */
static bool read_value(MsgReader *r, PgoValue *out)
{
    int32_t len;

    out->kind = (char)mr_u8(r);
    out->value = NULL;
    out->len = 0;
    switch (out->kind) {
    case 'n':
    case 'u':
        return !r->bad;
    case 't':
    case 'b':
        len = mr_i32(r);
        if (r->bad || len < 0)
            return false;
        out->value = mr_bytes(r, (size_t)len);
        out->len = (uint32_t)len;
        return !r->bad;
    default:
        return false;
    }
}

/* A TupleData part at r's position: validated, and recorded in out. */
static bool read_tuple(MsgReader *r, PgoTuple *out)
{
    int16_t ncols = mr_i16(r);
    size_t start = r->pos;
    PgoValue v;

    if (r->bad || ncols < 0)
        return false;
    for (int i = 0; i < ncols; i++)
        if (!read_value(r, &v))
            return false;
    out->ncols = ncols;
    out->p = r->p + start;
    out->len = r->pos - start;
    return true;
}

static bool read_column(MsgReader *r, PgoColumn *out)
{
    out->flags = mr_u8(r);
    out->name = mr_str(r);
    out->type_oid = (uint32_t)mr_i32(r);
    out->typmod = mr_i32(r);
    return !r->bad;
}

static const char *decode_relation(MsgReader *r, PgoMsg *m)
{
    int16_t ncols;
    size_t start;
    PgoColumn c;

    m->u.relation.relid = (uint32_t)mr_i32(r);
    m->u.relation.nspname = mr_str(r);
    m->u.relation.relname = mr_str(r);
    m->u.relation.replident = (char)mr_u8(r);
    ncols = mr_i16(r);
    if (r->bad)
        return "Relation truncated";
    if (ncols < 0)
        return "Relation with a negative column count";
    start = r->pos;
    for (int i = 0; i < ncols; i++)
        if (!read_column(r, &c))
            return "Relation column truncated";
    m->u.relation.ncols = ncols;
    m->u.relation.cols = r->p + start;
    m->u.relation.cols_len = r->pos - start;
    return mr_finish(r, "Relation truncated");
}

/* The optional old-row part of an Update, the mandatory one of a Delete. */
static const char *decode_old_row(MsgReader *r, PgoMsg *m, bool optional)
{
    const uint8_t *peek = r->bad || !mr_remaining(r) ? NULL : r->p + r->pos;

    if (peek && (*peek == 'K' || *peek == 'O')) {
        m->u.change.old_kind = (char)mr_u8(r);
        if (!read_tuple(r, &m->u.change.old_row))
            return "old tuple malformed";
        return NULL;
    }
    if (!optional)
        return peek ? "Delete without a 'K' or 'O' tuple" : "Delete truncated";
    return NULL;
}

static const char *decode_new_row(MsgReader *r, PgoMsg *m)
{
    if (mr_u8(r) != 'N')
        return r->bad ? "change truncated" : "change without its 'N' tuple";
    if (!read_tuple(r, &m->u.change.new_row))
        return "new tuple malformed";
    m->u.change.has_new = true;
    return NULL;
}

/* Insert, Update and Delete. */
static const char *decode_change(MsgReader *r, PgoMsg *m)
{
    const char *err = NULL;

    m->u.change.relid = (uint32_t)mr_i32(r);
    if (r->bad)
        return "change truncated";
    if (m->kind == PGO_UPDATE)
        err = decode_old_row(r, m, true);
    else if (m->kind == PGO_DELETE)
        err = decode_old_row(r, m, false);
    if (!err && m->kind != PGO_DELETE)
        err = decode_new_row(r, m);
    return err ? err : mr_finish(r, "change truncated");
}

static const char *decode_truncate(MsgReader *r, PgoMsg *m)
{
    int32_t n = mr_i32(r);

    m->u.truncate.options = mr_u8(r);
    if (r->bad)
        return "Truncate truncated";
    if (n < 0)
        return "Truncate with a negative relation count";
    m->u.truncate.nrels = (uint32_t)n;
    /* a count that does not fit the message is caught here before any read */
    if ((size_t)n > mr_remaining(r) / 4)
        return "Truncate relation list truncated";
    m->u.truncate.relids = mr_bytes(r, (size_t)n * 4);
    return mr_finish(r, "Truncate truncated");
}

/* Messages read only to be skipped: their shape is checked all the same. */
static const char *decode_skipped(MsgReader *r, PgoMsg *m)
{
    int32_t len;

    switch (m->kind) {
    case PGO_ORIGIN:
        (void)mr_u64(r);
        (void)mr_str(r);
        return mr_finish(r, "Origin truncated");
    case PGO_TYPE:
        (void)mr_i32(r);
        (void)mr_str(r);
        (void)mr_str(r);
        return mr_finish(r, "Type truncated");
    default: /* PGO_MESSAGE: v1 has no xid */
        (void)mr_u8(r);
        (void)mr_u64(r);
        (void)mr_str(r);
        len = mr_i32(r);
        if (r->bad || len < 0)
            return "Message truncated";
        (void)mr_bytes(r, (size_t)len);
        return mr_finish(r, "Message truncated");
    }
}

const char *pgo_decode(const uint8_t *p, size_t len, PgoMsg *out)
{
    MsgReader r;

    mr_init(&r, p, len);
    *out = (PgoMsg){0};
    out->kind = (PgoKind)mr_u8(&r);
    if (r.bad)
        return "empty pgoutput message";
    switch (out->kind) {
    case PGO_BEGIN:
        out->u.begin.final_lsn = mr_u64(&r);
        out->u.begin.commit_time = (int64_t)mr_u64(&r);
        out->u.begin.xid = (uint32_t)mr_i32(&r);
        return mr_finish(&r, "Begin truncated");
    case PGO_COMMIT:
        out->u.commit.flags = mr_u8(&r);
        out->u.commit.commit_lsn = mr_u64(&r);
        out->u.commit.end_lsn = mr_u64(&r);
        out->u.commit.commit_time = (int64_t)mr_u64(&r);
        return mr_finish(&r, "Commit truncated");
    case PGO_RELATION:
        return decode_relation(&r, out);
    case PGO_INSERT:
    case PGO_UPDATE:
    case PGO_DELETE:
        return decode_change(&r, out);
    case PGO_TRUNCATE:
        return decode_truncate(&r, out);
    case PGO_ORIGIN:
    case PGO_TYPE:
    case PGO_MESSAGE:
        return decode_skipped(&r, out);
    }
    return "unknown pgoutput message type (not protocol version 1?)";
}

/* ---- iterators over validated parts ------------------------------------ */

void pgo_tuple_iter(const PgoTuple *t, PgoIter *it)
{
    *it = (PgoIter){t->p, t->len, 0, t->ncols};
}

bool pgo_tuple_next(PgoIter *it, PgoValue *out)
{
    MsgReader r;

    if (it->left <= 0)
        return false;
    mr_init(&r, it->p, it->len);
    r.pos = it->pos;
    if (!read_value(&r, out)) {
        it->left = 0;
        return false;
    }
    it->pos = r.pos;
    it->left--;
    return true;
}

void pgo_relation_iter(const PgoMsg *m, PgoIter *it)
{
    *it = (PgoIter){m->u.relation.cols, m->u.relation.cols_len, 0, m->u.relation.ncols};
}

bool pgo_relation_next(PgoIter *it, PgoColumn *out)
{
    MsgReader r;

    if (it->left <= 0)
        return false;
    mr_init(&r, it->p, it->len);
    r.pos = it->pos;
    if (!read_column(&r, out)) {
        it->left = 0;
        return false;
    }
    it->pos = r.pos;
    it->left--;
    return true;
}

uint32_t pgo_truncate_relid(const PgoMsg *m, uint32_t i)
{
    const uint8_t *p;

    if (i >= m->u.truncate.nrels)
        return 0;
    p = m->u.truncate.relids + (size_t)i * 4;
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
