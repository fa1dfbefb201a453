/*
 * Fuzz target: the logical replication decoder (proto/pgoutput.c):
 * pgo_decode_copy on a CopyData payload of a START_REPLICATION stream
 * (XLogData 'w', primary keepalive 'k'), pgo_decode on the pgoutput v1
 * message inside an XLogData, the tuple, relation and truncate iterators,
 * and pgo_status_update.
 *
 * Input: one CopyData payload as the server sends it (corpus: the unit
 * test's captured PostgreSQL 15 stream). The whole input is also decoded
 * as a bare pgoutput message, so mutations reach pgo_decode without
 * having to keep a 25-byte header intact.
 *
 * Checks:
 *  - pgo_decode_copy accepts exactly a 'w' of at least 25 bytes and a 'k'
 *    of exactly 18; every field is the big-endian value at its offset and
 *    XLogData's data is the rest of the input; a status update built from
 *    the fields carries them at their documented offsets and is no
 *    XLogData or keepalive itself;
 *  - a pgoutput message that decodes: its kind is its first byte, every
 *    pointer is inside the message at the offset the layout puts it, its
 *    parts add up to exactly the message's length (names end in a NUL
 *    inside the message, counts agree with the bytes); the iterators give
 *    exactly ncols / nrels items, each inside its part, consume their part
 *    to its last byte, and stay at the end when called again;
 *  - it decodes the same (same rendering) from a copy at another address,
 *    every strict prefix of it is rejected (no message has an optional
 *    tail: a truncated message never decodes as complete), and so is the
 *    message with one byte appended;
 *  - a rejection is repeatable and has a reason.
 */
#include "tests/fuzz/fuzz.h"

#include "proto/pgoutput.h"

static uint16_t be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t be64(const uint8_t *p)
{
    return (uint64_t)be32(p) << 32 | be32(p + 4);
}

/* A rendering of a decoded message by content (not address): FNV-1a. */
typedef struct Hash {
    uint64_t h;
} Hash;

static void h_bytes(Hash *h, const void *p, size_t n)
{
    const uint8_t *b = p;

    for (size_t i = 0; i < n; i++)
        h->h = (h->h ^ b[i]) * 0x100000001b3ULL;
}

static void h_u64(Hash *h, uint64_t v)
{
    h_bytes(h, &v, sizeof(v));
}

/* Is [q, q + n) inside [p, p + len)? */
static bool inside(const uint8_t *q, size_t n, const uint8_t *p, size_t len)
{
    return q >= p && q <= p + len && n <= (size_t)(p + len - q);
}

/* A NUL-terminated name that starts at q and ends (with its NUL) inside the message;
 * returns the bytes it takes with the NUL. */
static size_t name_inside(const char *s, const uint8_t *p, size_t len)
{
    const uint8_t *q = (const uint8_t *)s;
    const uint8_t *nul;

    FUZZ_CHECK(s && q >= p && q < p + len);
    nul = memchr(q, 0, (size_t)(p + len - q));
    FUZZ_CHECK(nul != NULL);
    return (size_t)(nul - q) + 1;
}

/* A decoded TupleData part: ncols values, each inside, the part consumed exactly. */
static void check_tuple(const PgoTuple *t, const uint8_t *p, size_t len, Hash *h)
{
    PgoIter it;
    PgoValue v;
    size_t pos = 0;
    int n = 0;

    FUZZ_CHECK(t->ncols >= 0 && t->ncols <= INT16_MAX);
    FUZZ_CHECK(inside(t->p, t->len, p, len));
    /* the count is the int16 just before the part */
    FUZZ_CHECK(t->p >= p + 2 && be16(t->p - 2) == (uint16_t)t->ncols);
    h_u64(h, (uint64_t)t->ncols);
    pgo_tuple_iter(t, &it);
    while (pgo_tuple_next(&it, &v)) {
        FUZZ_CHECK(n < t->ncols);
        FUZZ_CHECK(pos < t->len && t->p[pos] == (uint8_t)v.kind);
        h_bytes(h, &v.kind, 1);
        switch (v.kind) {
        case 'n':
        case 'u':
            FUZZ_CHECK(v.value == NULL && v.len == 0);
            pos += 1;
            break;
        case 't':
        case 'b':
            FUZZ_CHECK(pos + 5 <= t->len && be32(t->p + pos + 1) == v.len);
            FUZZ_CHECK(v.value == t->p + pos + 5 && inside(v.value, v.len, t->p, t->len));
            h_u64(h, v.len);
            h_bytes(h, v.value, v.len);
            pos += 5 + (size_t)v.len;
            break;
        default:
            FUZZ_CHECK(!"a tuple value of a kind other than n, u, t, b");
        }
        FUZZ_CHECK(it.pos == pos);
        n++;
    }
    FUZZ_CHECK(n == t->ncols && pos == t->len);
    FUZZ_CHECK(!pgo_tuple_next(&it, &v) && !pgo_tuple_next(&it, &v));
}

/* Offset of q in the message. */
#define OFF(q) ((size_t)((const uint8_t *)(q)-p))

/* A message that decoded: layout and iterators. Returns its content hash. */
static uint64_t check_decoded(const uint8_t *p, size_t len, const PgoMsg *m)
{
    Hash h = {0xcbf29ce484222325ULL};
    size_t off, n;

    FUZZ_CHECK(len >= 1 && (uint8_t)m->kind == p[0]);
    h_bytes(&h, p, 1);
    switch (m->kind) {
    case PGO_BEGIN:
        FUZZ_CHECK(len == 21);
        FUZZ_CHECK(m->u.begin.final_lsn == be64(p + 1));
        FUZZ_CHECK((uint64_t)m->u.begin.commit_time == be64(p + 9));
        FUZZ_CHECK(m->u.begin.xid == be32(p + 17));
        h_u64(&h, m->u.begin.final_lsn);
        h_u64(&h, (uint64_t)m->u.begin.commit_time);
        h_u64(&h, m->u.begin.xid);
        break;
    case PGO_COMMIT:
        FUZZ_CHECK(len == 26);
        FUZZ_CHECK(m->u.commit.flags == p[1]);
        FUZZ_CHECK(m->u.commit.commit_lsn == be64(p + 2));
        FUZZ_CHECK(m->u.commit.end_lsn == be64(p + 10));
        FUZZ_CHECK((uint64_t)m->u.commit.commit_time == be64(p + 18));
        h_u64(&h, m->u.commit.flags);
        h_u64(&h, m->u.commit.commit_lsn);
        h_u64(&h, m->u.commit.end_lsn);
        h_u64(&h, (uint64_t)m->u.commit.commit_time);
        break;
    case PGO_RELATION: {
        PgoIter it;
        PgoColumn c;
        int cols = 0;
        size_t pos;

        FUZZ_CHECK(len >= 5 && m->u.relation.relid == be32(p + 1));
        FUZZ_CHECK(OFF(m->u.relation.nspname) == 5);
        off = 5 + name_inside(m->u.relation.nspname, p, len);
        FUZZ_CHECK(OFF(m->u.relation.relname) == off);
        off += name_inside(m->u.relation.relname, p, len);
        FUZZ_CHECK(off + 3 <= len && (uint8_t)m->u.relation.replident == p[off]);
        FUZZ_CHECK(m->u.relation.ncols >= 0 && be16(p + off + 1) == (uint16_t)m->u.relation.ncols);
        off += 3;
        FUZZ_CHECK(m->u.relation.cols == p + off && off + m->u.relation.cols_len == len);
        h_bytes(&h, p + 1, off - 1);
        pgo_relation_iter(m, &it);
        pos = 0;
        while (pgo_relation_next(&it, &c)) {
            const uint8_t *cp = m->u.relation.cols;
            FUZZ_CHECK(cols < m->u.relation.ncols);
            FUZZ_CHECK(pos < m->u.relation.cols_len && c.flags == cp[pos]);
            FUZZ_CHECK((const uint8_t *)c.name == cp + pos + 1);
            n = name_inside(c.name, cp, m->u.relation.cols_len);
            pos += 1 + n;
            FUZZ_CHECK(pos + 8 <= m->u.relation.cols_len);
            FUZZ_CHECK(c.type_oid == be32(cp + pos) && (uint32_t)c.typmod == be32(cp + pos + 4));
            pos += 8;
            FUZZ_CHECK(it.pos == pos);
            h_u64(&h, c.flags);
            h_bytes(&h, c.name, n);
            h_u64(&h, c.type_oid);
            h_u64(&h, (uint32_t)c.typmod);
            cols++;
        }
        FUZZ_CHECK(cols == m->u.relation.ncols && pos == m->u.relation.cols_len);
        FUZZ_CHECK(!pgo_relation_next(&it, &c) && !pgo_relation_next(&it, &c));
        break;
    }
    case PGO_INSERT:
    case PGO_UPDATE:
    case PGO_DELETE:
        FUZZ_CHECK(len >= 8 && m->u.change.relid == be32(p + 1));
        h_u64(&h, m->u.change.relid);
        off = 5;
        if (m->kind == PGO_INSERT)
            FUZZ_CHECK(m->u.change.old_kind == 0);
        if (m->kind == PGO_DELETE)
            FUZZ_CHECK(m->u.change.old_kind != 0 && !m->u.change.has_new);
        else
            FUZZ_CHECK(m->u.change.has_new);
        if (m->u.change.old_kind) {
            FUZZ_CHECK(m->u.change.old_kind == 'K' || m->u.change.old_kind == 'O');
            FUZZ_CHECK(p[off] == (uint8_t)m->u.change.old_kind);
            FUZZ_CHECK(m->u.change.old_row.p == p + off + 3);
            check_tuple(&m->u.change.old_row, p, len, &h);
            h_bytes(&h, &m->u.change.old_kind, 1);
            off += 3 + m->u.change.old_row.len;
        }
        if (m->u.change.has_new) {
            FUZZ_CHECK(off + 3 <= len && p[off] == 'N');
            FUZZ_CHECK(m->u.change.new_row.p == p + off + 3);
            check_tuple(&m->u.change.new_row, p, len, &h);
            off += 3 + m->u.change.new_row.len;
        }
        FUZZ_CHECK(off == len);
        break;
    case PGO_TRUNCATE:
        FUZZ_CHECK(len >= 6 && m->u.truncate.nrels == be32(p + 1));
        FUZZ_CHECK(m->u.truncate.options == p[5]);
        FUZZ_CHECK(m->u.truncate.nrels <= (len - 6) / 4 &&
                   len == 6 + 4 * (size_t)m->u.truncate.nrels);
        FUZZ_CHECK(m->u.truncate.nrels == 0 || m->u.truncate.relids == p + 6);
        h_u64(&h, m->u.truncate.options);
        for (uint32_t i = 0; i < m->u.truncate.nrels; i++) {
            uint32_t relid = pgo_truncate_relid(m, i);
            FUZZ_CHECK(relid == be32(p + 6 + 4 * (size_t)i));
            h_u64(&h, relid);
        }
        FUZZ_CHECK(pgo_truncate_relid(m, m->u.truncate.nrels) == 0);
        FUZZ_CHECK(pgo_truncate_relid(m, UINT32_MAX) == 0);
        break;
    case PGO_ORIGIN:
        FUZZ_CHECK(len >= 10 && len == 9 + name_inside((const char *)p + 9, p, len));
        h_bytes(&h, p + 1, len - 1);
        break;
    case PGO_TYPE:
        FUZZ_CHECK(len >= 6);
        off = 5 + name_inside((const char *)p + 5, p, len);
        FUZZ_CHECK(off < len && len == off + name_inside((const char *)p + off, p, len));
        h_bytes(&h, p + 1, len - 1);
        break;
    case PGO_MESSAGE:
        FUZZ_CHECK(len >= 11);
        off = 10 + name_inside((const char *)p + 10, p, len);
        FUZZ_CHECK(off + 4 <= len && be32(p + off) <= INT32_MAX);
        FUZZ_CHECK(len == off + 4 + be32(p + off));
        h_bytes(&h, p + 1, len - 1);
        break;
    default:
        FUZZ_CHECK(!"a message of an unknown kind decoded");
    }
    return h.h;
}

/*
 * Decode p (len bytes, ending at the end of its allocation) as a pgoutput
 * message and check what comes back.
 */
static void check_msg(const uint8_t *p, size_t len)
{
    PgoMsg m;
    const char *err = pgo_decode(p, len, &m);
    uint8_t *work;
    uint64_t hash;

    if (err) {
        PgoMsg m2;
        const char *again = pgo_decode(p, len, &m2);
        FUZZ_CHECK(err[0] != '\0' && again && strcmp(err, again) == 0);
        return;
    }
    hash = check_decoded(p, len, &m);

    /* The same bytes elsewhere (and one more after them): the same message. */
    work = fuzz_alloc(len + 1);
    memcpy(work, p, len);
    work[len] = 0;
    {
        PgoMsg m2;
        FUZZ_CHECK(pgo_decode(work, len, &m2) == NULL);
        FUZZ_CHECK(check_decoded(work, len, &m2) == hash);
        /* a trailing byte is malformed, whatever it is */
        FUZZ_CHECK(pgo_decode(work, len + 1, &m2) != NULL);
        work[len] = p[0];
        FUZZ_CHECK(pgo_decode(work, len + 1, &m2) != NULL);
    }

    /* Every strict prefix (a sample of them for long messages) is refused;
     * each sits at the very end of the allocation, so ASan sees an overrun. */
    for (size_t n = 0; n < len; n++) {
        PgoMsg m2;

        if (len > 300 && n > 64 && n < len - 64 && n % (len / 64 + 1) != 0)
            continue;
        memcpy(work + len + 1 - n, p, n);
        if (pgo_decode(work + len + 1 - n, n, &m2) == NULL) {
            fprintf(stderr, "a %zu-byte prefix of a %zu-byte '%c' message decoded\n", n, len, p[0]);
            FUZZ_CHECK(!"a truncated message never decodes as complete");
        }
    }
    free(work);
}

static void check_copy(const uint8_t *p, size_t len)
{
    PgoCopy c, c2;
    const char *err = pgo_decode_copy(p, len, &c);
    bool want = len >= 1 && ((p[0] == 'w' && len >= 25) || (p[0] == 'k' && len == 18));
    uint8_t st[PGO_STATUS_LEN];

    if (err) {
        FUZZ_CHECK(err[0] != '\0' && !want);
        FUZZ_CHECK((err = pgo_decode_copy(p, len, &c2)) != NULL);
        return;
    }
    FUZZ_CHECK(want && (uint8_t)c.kind == p[0]);
    if (c.kind == 'w') {
        FUZZ_CHECK(c.start_lsn == be64(p + 1) && c.end_lsn == be64(p + 9));
        FUZZ_CHECK((uint64_t)c.send_time == be64(p + 17) && !c.reply_request);
        FUZZ_CHECK(c.len == len - 25 && (c.len == 0 || c.data == p + 25));
        check_msg(p + 25, len - 25);
    } else {
        FUZZ_CHECK(c.start_lsn == 0 && c.end_lsn == be64(p + 1));
        FUZZ_CHECK((uint64_t)c.send_time == be64(p + 9));
        FUZZ_CHECK(c.reply_request == (p[17] != 0) && c.data == NULL && c.len == 0);
    }

    /* The answer a consumer sends back. */
    FUZZ_CHECK(pgo_status_update(st, c.end_lsn, c.start_lsn, c.end_lsn ^ c.start_lsn, c.send_time,
                                 c.reply_request) == PGO_STATUS_LEN);
    FUZZ_CHECK(st[0] == 'r' && be64(st + 1) == c.end_lsn && be64(st + 9) == c.start_lsn);
    FUZZ_CHECK(be64(st + 17) == (c.end_lsn ^ c.start_lsn));
    FUZZ_CHECK(be64(st + 25) == (uint64_t)c.send_time && st[33] == (c.reply_request ? 1 : 0));
    FUZZ_CHECK(pgo_decode_copy(st, sizeof(st), &c2) != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy = fuzz_dup(data, size);

    check_copy(copy, size);
    check_msg(copy, size);
    free(copy);
    return 0;
}
