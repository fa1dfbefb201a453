/*
 * Canonical primary-key values for the identity-map cache (orm/cache_key.h).
 */
#include "orm/cache_key.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

bool cache_key_type_ok(uint32_t type_oid)
{
    switch (type_oid) {
    case CACHE_OID_INT2:
    case CACHE_OID_INT4:
    case CACHE_OID_INT8:
    case CACHE_OID_OID:
    case CACHE_OID_TEXT:
    case CACHE_OID_VARCHAR:
    case CACHE_OID_UUID:
        return true;
    default:
        return false;
    }
}

static bool is_blank(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v';
}

/* Decimal text of an integer in [min, max]: blanks around, one sign, digits only. */
static bool parse_int(const char *s, size_t n, int64_t min, uint64_t max_abs_pos, int64_t *out)
{
    size_t i = 0;
    bool neg = false;
    uint64_t v = 0;
    size_t digits = 0;

    while (i < n && is_blank(s[i]))
        i++;
    if (i < n && (s[i] == '+' || s[i] == '-'))
        neg = s[i++] == '-';
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++, digits++) {
        if (v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    while (i < n && is_blank(s[i]))
        i++;
    if (digits == 0 || i != n)
        return false;
    if (neg) {
        if (v > (uint64_t)(-(min + 1)) + 1)
            return false;
        *out = v == 0 ? 0 : -(int64_t)(v - 1) - 1;
    } else {
        if (v > max_abs_pos)
            return false;
        *out = (int64_t)v;
    }
    return true;
}

static int int_value(uint32_t type, const uint8_t *p, size_t len, bool binary, char *out,
                     size_t cap)
{
    int64_t v = 0;
    int64_t min = type == CACHE_OID_INT2   ? INT16_MIN
                  : type == CACHE_OID_INT4 ? INT32_MIN
                  : type == CACHE_OID_OID  ? 0
                                           : INT64_MIN;
    uint64_t max = type == CACHE_OID_INT2   ? INT16_MAX
                   : type == CACHE_OID_INT4 ? INT32_MAX
                   : type == CACHE_OID_OID  ? UINT32_MAX
                                            : INT64_MAX;
    int n;

    if (binary) {
        /* A driver may send any integer width for an integer key (psycopg 3 sends
         * a small int as int2): the comparison is by value, and so is the key. */
        uint64_t u = 0;
        if (type == CACHE_OID_OID ? len != 4 : len != 2 && len != 4 && len != 8)
            return -1;
        for (size_t i = 0; i < len; i++)
            u = u << 8 | p[i];
        if (type == CACHE_OID_OID)
            v = (int64_t)(uint32_t)u;
        else if (len == 2)
            v = (int16_t)u;
        else if (len == 4)
            v = (int32_t)u;
        else
            v = (int64_t)u;
    } else if (type == CACHE_OID_OID) {
        /* oidin takes what strtoul takes, negatives wrapping: keep to plain decimals */
        if (!parse_int((const char *)p, len, 0, UINT32_MAX, &v))
            return -1;
    } else if (!parse_int((const char *)p, len, min, max, &v)) {
        return -1;
    }
    {
        char tmp[24]; /* "-9223372036854775808" and a NUL */
        n = snprintf(tmp, sizeof(tmp), "%" PRId64, v);
        if (n < 0 || (size_t)n > cap)
            return -1;
        memcpy(out, tmp, (size_t)n); /* the key is not NUL-terminated: it may fill cap */
    }
    return n;
}

static int hex_digit(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/*
 * uuid_in: optional braces around 32 hex digits, a hyphen allowed after
 * any group of four digits.
 */
static bool parse_uuid(const char *s, size_t n, uint8_t out[16])
{
    size_t i = 0, nd = 0, last_hyphen = 0;
    bool brace = n > 0 && s[0] == '{';

    if (brace) {
        if (n < 2 || s[n - 1] != '}')
            return false;
        i = 1;
        n--;
    }
    while (i < n) {
        int hi, lo;
        /* one hyphen after a group of four digits (not after the last), as uuid_in */
        if (nd > 0 && nd < 32 && nd % 4 == 0 && s[i] == '-' && nd != last_hyphen) {
            last_hyphen = nd;
            i++;
            continue;
        }
        if (nd == 32 || i + 1 >= n || (hi = hex_digit(s[i])) < 0 || (lo = hex_digit(s[i + 1])) < 0)
            return false;
        out[nd / 2] = (uint8_t)(hi << 4 | lo);
        nd += 2;
        i += 2;
    }
    return nd == 32;
}

static int uuid_value(const uint8_t *p, size_t len, bool binary, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    uint8_t u[16];
    size_t o = 0;

    if (binary) {
        if (len != 16)
            return -1;
        memcpy(u, p, 16);
    } else if (!parse_uuid((const char *)p, len, u)) {
        return -1;
    }
    if (cap < 36)
        return -1;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[u[i] >> 4];
        out[o++] = hex[u[i] & 15];
    }
    return (int)o;
}

int cache_key_value(uint32_t type_oid, const void *value, size_t len, bool binary, char *out,
                    size_t cap)
{
    const uint8_t *p = value;

    if (!value && len > 0)
        return -1;
    switch (type_oid) {
    case CACHE_OID_INT2:
    case CACHE_OID_INT4:
    case CACHE_OID_INT8:
    case CACHE_OID_OID:
        return int_value(type_oid, p, len, binary, out, cap);
    case CACHE_OID_TEXT:
    case CACHE_OID_VARCHAR:
        /* text's binary form is its text; a NUL cannot be in a PostgreSQL string */
        if (len > cap || len > INT32_MAX || (len > 0 && memchr(p, 0, len)))
            return -1;
        if (len > 0)
            memcpy(out, p, len);
        return (int)len;
    case CACHE_OID_UUID:
        return uuid_value(p, len, binary, out, cap);
    default:
        return -1;
    }
}

void cache_key_init(CacheKey *k, int ncols)
{
    k->ncols = ncols;
    k->added = 0;
    k->len = 0;
    k->bad = ncols < 1 || ncols > CACHE_KEY_COLS;
}

bool cache_key_add(CacheKey *k, uint32_t type_oid, const void *value, size_t len, bool binary)
{
    char val[CACHE_KEY_MAX];
    int n;

    if (k->bad || k->added >= k->ncols) {
        k->bad = true;
        return false;
    }
    n = cache_key_value(type_oid, value, len, binary, val, sizeof(val));
    if (n < 0)
        goto bad;
    if (k->ncols == 1) {
        memcpy(k->buf, val, (size_t)n);
        k->len = (size_t)n;
    } else {
        char pre[16];
        int pl = snprintf(pre, sizeof(pre), "%d:", n);
        if (k->len + (size_t)pl + (size_t)n > sizeof(k->buf))
            goto bad;
        memcpy(k->buf + k->len, pre, (size_t)pl);
        memcpy(k->buf + k->len + (size_t)pl, val, (size_t)n);
        k->len += (size_t)pl + (size_t)n;
    }
    k->added++;
    return true;
bad:
    k->bad = true;
    return false;
}

bool cache_key_done(const CacheKey *k)
{
    return !k->bad && k->added == k->ncols;
}
