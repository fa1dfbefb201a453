/*
 * Building PostgreSQL protocol messages into a growable byte buffer.
 *
 * The codec knows bytes, not sockets: callers hand the finished bytes to
 * whatever transport they own. A failed allocation sets b->failed and makes
 * every later call a no-op, so builders can be chained and checked once.
 */
#ifndef PGC_PROTO_PKT_H
#define PGC_PROTO_PKT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct PktBuf {
    uint8_t *data;
    size_t len;
    size_t cap;
    size_t msg_start; /* offset of the message being built (its type byte) */
    bool typed;       /* message being built has a type byte */
    bool failed;      /* an allocation failed; contents are not usable */
} PktBuf;

void pkt_init(PktBuf *b);
void pkt_free(PktBuf *b);
/* Forget the contents, keep the allocation. */
void pkt_reset(PktBuf *b);

/* Start a message; type 0 starts an untyped one (startup, cancel, SSLRequest). */
void pkt_begin(PktBuf *b, char type);
/* Patch the length word of the message started by pkt_begin. */
void pkt_end(PktBuf *b);

void pkt_put_u8(PktBuf *b, uint8_t v);
void pkt_put_i16(PktBuf *b, int16_t v);
void pkt_put_i32(PktBuf *b, int32_t v);
void pkt_put_bytes(PktBuf *b, const void *p, size_t n);
/* A C string including its terminating NUL. */
void pkt_put_str(PktBuf *b, const char *s);

#endif
