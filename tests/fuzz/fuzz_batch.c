/*
 * Fuzz target: orm/batch.c, the pure parts of N+1 batching: batch_sql
 * (wrapping a client's statement around a key array), batch_array_add /
 * batch_array_end (the key array literal from a parent's result values),
 * batch_cut_row and batch_cut_rowdesc (cutting the batched statement's
 * DataRow and RowDescription back into the single statement's).
 *
 * Input: one mode byte, then the mode's bytes.
 *  - 0: SQL text. For every placeholder the proxy could batch on (the
 *    statement normalises to one statement, libpg_query's analysis calls
 *    it batchable with a key on that placeholder, and the placeholder is
 *    one plain value) the statement is wrapped as daemon/batch.c does;
 *    the wrapped text must again be one statement that libpg_query parses.
 *  - 1: an arbitrary ShapeLit (offset, length, kind, bind: 12 bytes) and
 *    SQL text given to batch_sql as it is: it must refuse or stay inside.
 *  - 2: key type selector, buffer size, then values (a length byte and
 *    that many bytes, 0xff for NULL, bit 7 of the length for binary) added
 *    to an array literal.
 *  - 3: flags, then a DataRow body given to batch_cut_row.
 *  - 4: a RowDescription body given to batch_cut_rowdesc.
 * Output buffers are exactly the size the header promises is enough.
 */
#include "tests/fuzz/fuzz.h"

#include <pg_query.h>

#include "orm/analyze.h"
#include "orm/batch.h"
#include "orm/shape.h"

static ShapeBuf sb;

static const uint32_t type_oids[] = {16,   19,   20,   21,   23,   25,   26, 1042,
                                     1043, 1082, 1114, 1184, 1700, 2950, 0,  705};

/* Does sql parse (libpg_query), and into how many statements? */
static bool parses(const char *sql, int *nstmts)
{
    PgQuerySplitResult r = pg_query_split_with_parser(sql);
    bool ok = r.error == NULL;

    *nstmts = ok ? r.n_stmts : 0;
    pg_query_free_split_result(r);
    return ok;
}

static void wrap_batchable(const uint8_t *data, size_t size)
{
    char *sql = (char *)fuzz_dup(data, size);
    ShapeInfo *info = NULL;

    if (!shape_normalize(sql, size, &sb) || sb.nstmts != 1 || memchr(sql, 0, size))
        goto out;
    info = shape_analyze(sb.text, sb.text_len, sb.hash);
    if (!info || !info->batchable)
        goto out;
    for (uint32_t k = 0; k < sb.nparams; k++) {
        const ShapeParam *pp = &sb.params[k];
        ShapeLit lit = sb.lits[pp->first];
        char *out = NULL, *text;
        int nstmts;
        bool fence = !(info->flags & (SHAPE_F_LIMIT | SHAPE_F_OFFSET));

        if (!shape_info_key_for_param(info, (int)k + 1) || pp->n != 1 || pp->flags != 0 ||
            lit.kind == SHAPE_LIT_NULL)
            continue;
        if (!batch_sql(sql, size, &lit, sb.max_bind + 1, "pg_catalog.int8", fence, &out))
            continue;
        FUZZ_CHECK(out && strncmp(out, "SELECT pgc_k.pgc_ord, pgc_s.* FROM unnest($", 43) == 0);
        text = fuzz_str(sql, size);
        if (parses(text, &nstmts) && nstmts == 1) {
            int n2;
            if (!parses(out, &n2) || n2 != 1) {
                fprintf(stderr, "child:   %s\nbatched: %s\n", text, out);
                FUZZ_CHECK(!"a batchable statement wraps into one statement that parses");
            }
        }
        free(text);
        free(out);
    }
out:
    shape_info_unref(info);
    free(sql);
}

static void wrap_any(const uint8_t *data, size_t size)
{
    ShapeLit lit;
    char *sql, *out = NULL;

    if (size < 12)
        return;
    memset(&lit, 0, sizeof(lit));
    memcpy(&lit.off, data, 4);
    memcpy(&lit.len, data + 4, 4);
    lit.kind = data[8] % (SHAPE_LIT_BIND + 1);
    lit.bind = data[9];
    lit.param = 1;
    sql = (char *)fuzz_dup(data + 12, size - 12);
    if (batch_sql(sql, size - 12, &lit, data[10], "pg_catalog.text", data[11] & 1, &out)) {
        FUZZ_CHECK(out != NULL && (size_t)lit.off + lit.len <= size - 12);
        free(out);
    }
    free(sql);
}

static void array(const uint8_t *data, size_t size)
{
    uint32_t oid;
    size_t cap, used = 0;
    char *buf;
    bool ok = true;

    if (size < 2)
        return;
    oid = type_oids[data[0] % (sizeof(type_oids) / sizeof(type_oids[0]))];
    cap = data[1];
    buf = (char *)fuzz_alloc(cap);
    data += 2;
    size -= 2;
    while (size > 0 && ok) {
        size_t n = data[0] == 0xff ? 0 : data[0] & 0x7f;
        bool binary = data[0] != 0xff && (data[0] & 0x80);
        uint8_t *v;

        if (n > size - 1)
            n = size - 1;
        v = fuzz_dup(data + 1, n);
        ok = batch_array_add(buf, cap, &used, oid, v, data[0] == 0xff ? -1 : (int)n, binary);
        FUZZ_CHECK(used <= cap);
        free(v);
        data += 1 + n;
        size -= 1 + n;
    }
    if (ok && batch_array_end(buf, cap, &used)) {
        FUZZ_CHECK(used <= cap && used >= 2 && buf[0] == '{' && buf[used - 1] == '}');
        FUZZ_CHECK(memchr(buf, 0, used) == NULL);
    }
    free(buf);
}

static void cut_row(const uint8_t *data, size_t size)
{
    uint8_t *body, *out;
    int64_t ord = -1, n;

    if (size < 1)
        return;
    body = fuzz_dup(data + 1, size - 1);
    out = fuzz_alloc(size - 1);
    n = batch_cut_row(body, size - 1, data[0] & 1, &ord, out);
    FUZZ_CHECK(n == -1 || (n >= 2 && (size_t)n <= size - 1));
    free(body);
    free(out);
}

static void cut_rowdesc(const uint8_t *data, size_t size)
{
    uint8_t *body = fuzz_dup(data, size), *out = fuzz_alloc(size);
    int64_t n = batch_cut_rowdesc(body, size, out);

    FUZZ_CHECK(n == -1 || (n >= 2 && (size_t)n <= size));
    free(body);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    switch (data[0] % 5) {
    case 0:
        wrap_batchable(data + 1, size - 1);
        break;
    case 1:
        wrap_any(data + 1, size - 1);
        break;
    case 2:
        array(data + 1, size - 1);
        break;
    case 3:
        cut_row(data + 1, size - 1);
        break;
    case 4:
        cut_rowdesc(data + 1, size - 1);
        break;
    }
    return 0;
}
