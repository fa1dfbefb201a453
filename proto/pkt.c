/*
 * Growable output buffer that PostgreSQL messages are framed in.
 *
 * A message is opened with pkt_begin (which reserves the length word) and
 * closed with pkt_end (which patches it). Once an allocation fails the
 * buffer is marked failed and stays so until pkt_reset.
 */
#include "proto/pkt.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PKT_MIN_CAP 256

/* Make room for n more bytes; false (and b->failed) if that is impossible. */
static bool pkt_reserve(PktBuf *b, size_t n)
{
    size_t want, cap;
    uint8_t *p;

    if (b->failed)
        return false;
    if (n <= b->cap - b->len)
        return true;
    if (n > SIZE_MAX - b->len)
        goto fail;
    want = b->len + n;
    cap = b->cap ? b->cap : PKT_MIN_CAP;
    while (cap < want) {
        if (cap > SIZE_MAX / 2) {
            cap = want;
            break;
        }
        cap *= 2;
    }
    p = realloc(b->data, cap);
    if (!p)
        goto fail;
    b->data = p;
    b->cap = cap;
    return true;
fail:
    b->failed = true;
    return false;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

void pkt_init(PktBuf *b)
{
    memset(b, 0, sizeof(*b));
}

void pkt_free(PktBuf *b)
{
    free(b->data);
    pkt_init(b);
}

/* Also clears failed: the failure concerned contents that are now gone. */
void pkt_reset(PktBuf *b)
{
    b->len = 0;
    b->msg_start = 0;
    b->typed = false;
    b->failed = false;
}

void pkt_begin(PktBuf *b, char type)
{
    if (!pkt_reserve(b, 5))
        return;
    b->msg_start = b->len;
    b->typed = type != 0;
    if (b->typed)
        b->data[b->len++] = (uint8_t)type;
    memset(b->data + b->len, 0, 4);
    b->len += 4;
}

/* The length word counts itself and the body, never the type byte. */
void pkt_end(PktBuf *b)
{
    size_t at, n;

    if (b->failed)
        return;
    at = b->msg_start + (b->typed ? 1 : 0);
    n = b->len - at;
    if (n > INT32_MAX) {
        b->failed = true;
        return;
    }
    put_be32(b->data + at, (uint32_t)n);
}

void pkt_put_u8(PktBuf *b, uint8_t v)
{
    if (!pkt_reserve(b, 1))
        return;
    b->data[b->len++] = v;
}

void pkt_put_i16(PktBuf *b, int16_t v)
{
    uint16_t u = (uint16_t)v;

    if (!pkt_reserve(b, 2))
        return;
    b->data[b->len++] = (uint8_t)(u >> 8);
    b->data[b->len++] = (uint8_t)u;
}

void pkt_put_i32(PktBuf *b, int32_t v)
{
    if (!pkt_reserve(b, 4))
        return;
    put_be32(b->data + b->len, (uint32_t)v);
    b->len += 4;
}

void pkt_put_bytes(PktBuf *b, const void *p, size_t n)
{
    if (n == 0 || !pkt_reserve(b, n))
        return;
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void pkt_put_str(PktBuf *b, const char *s)
{
    pkt_put_bytes(b, s, strlen(s) + 1);
}
