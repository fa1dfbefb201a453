/*
 * N+1 batching, the pure parts (see batch.h).
 */
#include "orm/batch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OID_BOOL        16
#define OID_NAME        19
#define OID_INT8        20
#define OID_INT2        21
#define OID_INT4        23
#define OID_TEXT        25
#define OID_OID         26
#define OID_BPCHAR      1042
#define OID_VARCHAR     1043
#define OID_DATE        1082
#define OID_TIMESTAMP   1114
#define OID_TIMESTAMPTZ 1184
#define OID_NUMERIC     1700
#define OID_UUID        2950

const char *batch_type_name(uint32_t oid)
{
    switch (oid) {
    case OID_BOOL:
        return "pg_catalog.bool";
    case OID_NAME:
        return "pg_catalog.name";
    case OID_INT8:
        return "pg_catalog.int8";
    case OID_INT2:
        return "pg_catalog.int2";
    case OID_INT4:
        return "pg_catalog.int4";
    case OID_TEXT:
        return "pg_catalog.text";
    case OID_OID:
        return "pg_catalog.oid";
    case OID_BPCHAR:
        return "pg_catalog.bpchar";
    case OID_VARCHAR:
        return "pg_catalog.varchar";
    case OID_DATE:
        return "pg_catalog.date";
    case OID_TIMESTAMP:
        return "pg_catalog.timestamp";
    case OID_TIMESTAMPTZ:
        return "pg_catalog.timestamptz";
    case OID_NUMERIC:
        return "pg_catalog.numeric";
    case OID_UUID:
        return "pg_catalog.uuid";
    default:
        return NULL;
    }
}

/* Does $n (n = bind) appear in sql other than at the key's own token? */
static bool bind_used_elsewhere(const char *sql, size_t len, const ShapeLit *lit)
{
    ShapeBuf *sb = malloc(sizeof(*sb));
    bool other = true;

    if (!sb)
        return true;
    if (shape_normalize(sql, len, sb)) {
        other = false;
        for (uint32_t i = 0; i < sb->nlits && !other; i++)
            other = sb->lits[i].kind == SHAPE_LIT_BIND && sb->lits[i].bind == lit->bind &&
                    sb->lits[i].off != lit->off;
    }
    free(sb);
    return other;
}

bool batch_sql(const char *sql, size_t len, const ShapeLit *lit, uint32_t array_param,
               const char *type_name, bool fence, char **out)
{
    static const char head[] = "SELECT pgc_k.pgc_ord, pgc_s.* FROM unnest($%u::%s[]) WITH "
                               "ORDINALITY AS pgc_k(pgc_val, pgc_ord) CROSS JOIN LATERAL (";
    static const char key[] = " pgc_k.pgc_val ";
    static const char tail[] = "\n) AS pgc_s ORDER BY pgc_k.pgc_ord";
    static const char offset0[] = "\nOFFSET 0";
    size_t start, end, cap, n;
    ShapeSpan span;
    char *buf;
    int h;

    *out = NULL;
    if ((size_t)lit->off + lit->len > len)
        return false;
    /* Only the statement itself goes in: a ";" before or after it would end
     * the subquery (";SELECT ..." is one statement for shape_normalize). */
    if (shape_split(sql, len, &span, 1) != 1 || lit->off < span.off ||
        (size_t)lit->off + lit->len > (size_t)span.off + span.len)
        return false;
    start = span.off;
    end = (size_t)span.off + span.len;
    if (lit->kind == SHAPE_LIT_BIND && bind_used_elsewhere(sql, len, lit))
        return false;
    /* nor the blanks after it */
    while (end > (size_t)lit->off + lit->len &&
           (sql[end - 1] == ';' || sql[end - 1] == ' ' || sql[end - 1] == '\t' ||
            sql[end - 1] == '\n' || sql[end - 1] == '\r'))
        end--;
    cap =
        sizeof(head) + strlen(type_name) + 16 + end + sizeof(key) + sizeof(offset0) + sizeof(tail);
    buf = malloc(cap);
    if (!buf)
        return false;
    h = snprintf(buf, cap, head, array_param, type_name);
    if (h < 0 || (size_t)h >= cap) {
        free(buf);
        return false;
    }
    n = (size_t)h;
    memcpy(buf + n, sql + start, lit->off - start);
    n += lit->off - start;
    memcpy(buf + n, key, sizeof(key) - 1);
    n += sizeof(key) - 1;
    memcpy(buf + n, sql + lit->off + lit->len, end - lit->off - lit->len);
    n += end - lit->off - lit->len;
    if (fence) {
        memcpy(buf + n, offset0, sizeof(offset0) - 1);
        n += sizeof(offset0) - 1;
    }
    memcpy(buf + n, tail, sizeof(tail));
    *out = buf;
    return true;
}

static bool put(char *buf, size_t cap, size_t *used, const void *p, size_t n)
{
    if (*used + n > cap)
        return false;
    memcpy(buf + *used, p, n);
    *used += n;
    return true;
}

/* Append v as one double-quoted array element. */
static bool put_element(char *buf, size_t cap, size_t *used, const uint8_t *v, size_t n)
{
    if (!put(buf, cap, used, *used == 0 ? "{\"" : ",\"", 2))
        return false;
    for (size_t i = 0; i < n; i++) {
        if ((v[i] == '"' || v[i] == '\\') && !put(buf, cap, used, "\\", 1))
            return false;
        if (v[i] == 0 || !put(buf, cap, used, &v[i], 1))
            return false;
    }
    return put(buf, cap, used, "\"", 1);
}

size_t batch_uuid_text(const uint8_t *v, char *out)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;

    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[n++] = '-';
        out[n++] = hex[v[i] >> 4];
        out[n++] = hex[v[i] & 15];
    }
    out[n] = '\0';
    return n;
}

static bool is_int_type(uint32_t oid)
{
    return oid == OID_INT2 || oid == OID_INT4 || oid == OID_INT8 || oid == OID_OID;
}

static bool is_text_type(uint32_t oid)
{
    return oid == OID_TEXT || oid == OID_VARCHAR || oid == OID_BPCHAR || oid == OID_NAME;
}

bool batch_array_add(char *buf, size_t cap, size_t *used, uint32_t type_oid, const uint8_t *v,
                     int len, bool binary)
{
    char text[40];

    if (len == -1)
        return put(buf, cap, used, *used == 0 ? "{NULL" : ",NULL", 5);
    if (len < 0)
        return false;
    if (!binary || is_text_type(type_oid))
        return put_element(buf, cap, used, v, (size_t)len);
    if (is_int_type(type_oid)) {
        /* a big-endian int2, int4 or int8 */
        uint64_t u = 0;
        int64_t x;
        int n;
        if (len != 2 && len != 4 && len != 8)
            return false;
        for (int i = 0; i < len; i++)
            u = u << 8 | v[i];
        x = len == 2 ? (int16_t)u : len == 4 ? (int32_t)u : (int64_t)u;
        n = snprintf(text, sizeof(text), "%lld", (long long)x);
        return put_element(buf, cap, used, (const uint8_t *)text, (size_t)n);
    }
    if (type_oid == OID_UUID && len == 16)
        return put_element(buf, cap, used, (const uint8_t *)text, batch_uuid_text(v, text));
    if (type_oid == OID_BOOL && len == 1)
        return put_element(buf, cap, used, (const uint8_t *)(v[0] ? "t" : "f"), 1);
    return false;
}

bool batch_array_end(char *buf, size_t cap, size_t *used)
{
    if (*used == 0)
        return put(buf, cap, used, "{}", 2);
    return put(buf, cap, used, "}", 1);
}

static int32_t get_i32(const uint8_t *p)
{
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
                     (uint32_t)p[3]);
}

int64_t batch_cut_row(const uint8_t *body, size_t len, bool ord_binary, int64_t *ord, uint8_t *out)
{
    int ncols;
    int32_t olen;
    const uint8_t *v;
    int64_t x = 0;
    size_t rest;

    if (len < 6)
        return -1;
    ncols = (int16_t)((body[0] << 8) | body[1]);
    olen = get_i32(body + 2);
    if (ncols < 1 || olen < 1 || (size_t)olen > len - 6 || olen > 20)
        return -1;
    v = body + 6;
    if (ord_binary) {
        if (olen != 8)
            return -1;
        for (int i = 0; i < 8; i++)
            x = (int64_t)((uint64_t)x << 8 | v[i]);
    } else {
        for (int32_t i = 0; i < olen; i++) {
            if (v[i] < '0' || v[i] > '9')
                return -1;
            x = x * 10 + (v[i] - '0');
        }
    }
    *ord = x;
    rest = len - 6 - (size_t)olen;
    out[0] = (uint8_t)((ncols - 1) >> 8);
    out[1] = (uint8_t)(ncols - 1);
    memcpy(out + 2, v + olen, rest);
    return (int64_t)(2 + rest);
}

int64_t batch_cut_rowdesc(const uint8_t *body, size_t len, uint8_t *out)
{
    int n;
    const uint8_t *name_end;
    size_t first, rest;

    if (len < 2)
        return -1;
    n = (int16_t)((body[0] << 8) | body[1]);
    if (n < 1)
        return -1;
    name_end = memchr(body + 2, 0, len - 2);
    if (!name_end)
        return -1;
    first = (size_t)(name_end - body) + 1 + 18; /* NUL, then 18 bytes of attributes */
    if (first > len)
        return -1;
    rest = len - first;
    out[0] = (uint8_t)((n - 1) >> 8);
    out[1] = (uint8_t)(n - 1);
    memcpy(out + 2, body + first, rest);
    return (int64_t)(2 + rest);
}
