/*
 * The one I/O boundary: a socket with an input and an output buffer,
 * reporting the project's own small event enum to its owner. Plain sockets
 * are read and written here directly (one syscall per read, writes tried at
 * once); TLS differs only behind these functions.
 */
#ifndef PGC_DAEMON_IO_H
#define PGC_DAEMON_IO_H

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

typedef enum {
    IO_READ,      /* new bytes are in io->in */
    IO_DRAINED,   /* output fell back under the watermark after being over it */
    IO_CONNECTED, /* a non-blocking connect finished */
    IO_EOF,       /* the peer closed its side */
    IO_ERROR,     /* a socket error; io->err holds errno */
} IoEvent;

/* Output above this makes the owner stop reading from the other side. */
#define IO_HIGH_WATERMARK (256 * 1024)

/*
 * A connection's bytes in one flat block: the live ones at data[off ..
 * off + len), room after them. Not an evbuffer: the relay reads, parses and
 * forwards a few small messages per round trip, and evbuffer's chains cost
 * ~7,000 instructions and dozens of cache misses per pgbench TPC-B
 * transaction in reserve/commit/peek/drain alone (bench/cpu_counts.py). The
 * block comes from io.c's cache of power-of-two blocks and goes back when
 * the buffer empties, so an idle connection holds none; it grows (doubling)
 * when a message needs more, and live bytes move to the front only when
 * that frees at least as much as it copies.
 */
typedef struct IoBuf {
    uint8_t *data;
    size_t off, len, cap;
} IoBuf;

static inline size_t iobuf_len(const IoBuf *b)
{
    return b->len;
}
/* The live bytes, contiguous; NULL when there are none. */
static inline const uint8_t *iobuf_data(const IoBuf *b)
{
    return b->len ? b->data + b->off : NULL;
}
/* Give the block back (the buffer must be empty, or its bytes are dropped). */
void iobuf_release(IoBuf *b);
/* Drop the first n bytes (all of them when n >= len). */
static inline void iobuf_drain(IoBuf *b, size_t n)
{
    if (n < b->len) {
        b->off += n;
        b->len -= n;
        return;
    }
    b->len = 0;
    b->off = 0;
    iobuf_release(b);
}
/* Copy up to n bytes from the front; returns how many. */
static inline size_t iobuf_copyout(const IoBuf *b, void *dst, size_t n)
{
    if (n > b->len)
        n = b->len;
    if (n)
        memcpy(dst, b->data + b->off, n);
    return n;
}
/* Copy up to n bytes from the front and drain them; returns how many. */
static inline size_t iobuf_remove(IoBuf *b, void *dst, size_t n)
{
    n = iobuf_copyout(b, dst, n);
    iobuf_drain(b, n);
    return n;
}
/* Room for at least n bytes after the live ones; NULL if memory ran out.
 * Pointers into the buffer are stale after it. */
uint8_t *iobuf_reserve(IoBuf *b, size_t n) __attribute__((warn_unused_result));
/* Count n bytes written into the reserved room as live. */
static inline void iobuf_commit(IoBuf *b, size_t n)
{
    b->len += n;
}
/* Append n bytes; false if memory ran out (nothing appended). */
bool iobuf_add(IoBuf *b, const void *src, size_t n) __attribute__((warn_unused_result));

struct Io;
struct ssl_st;
struct bufferevent;
typedef void (*IoHandler)(void *owner, IoEvent ev);

typedef struct Io {
    int fd;
    struct event_base *base;
    struct bufferevent *bev; /* TLS: libevent's OpenSSL bufferevent owns the socket */
    struct event *rev;       /* &rev_ev while the plain socket's events are set */
    struct event *wev;
    /* Inside the Io, not allocated: the events are read on every wakeup,
     * and next to the buffers they are in lines that are read anyway. */
    struct event rev_ev;
    struct event wev_ev;
    IoBuf in;
    IoBuf out;
    IoHandler handler;
    void *owner;
    int err;
    bool connecting;
    bool read_on;   /* read interest wanted by the owner */
    bool congested; /* output went over the watermark; owner told on drain */
    bool closed;
    bool tls;            /* traffic is encrypted (after io_start_tls) */
    uint64_t out_total;  /* bytes ever handed over for output */
    char tls_error[128]; /* last OpenSSL error, for messages */
} Io;

/* Route libevent's allocations through io.c's cache of buffer chains: first
 * thing in main(), before any other libevent call. */
void io_global_init(void);
/* Free the calling thread's cached chains; at exit, after the event loops. */
void io_global_free(void);

/* Wrap fd (already non-blocking). Returns false if libevent refuses it; fd
 * is then still the caller's to close. */
bool io_init(struct Io *io, struct event_base *base, int fd, IoHandler handler, void *owner)
    __attribute__((warn_unused_result));
/* Start a non-blocking connect; IO_CONNECTED or IO_ERROR follows. */
bool io_connect(struct Io *io, const struct sockaddr *sa, socklen_t salen)
    __attribute__((warn_unused_result));
/* Stop all events and close the socket. Safe inside the io's own callback. */
void io_close(struct Io *io);
/* Free the buffers; only after io_close, outside the io's callbacks. */
void io_free(struct Io *io);

void io_read(struct Io *io, bool on);
/*
 * Switch an open plain socket to TLS (OpenSSL through a libevent
 * bufferevent); takes ownership of ssl. accept: we are the TLS server.
 * IO_CONNECTED follows when the handshake is done, IO_ERROR if it fails.
 * Nothing may be queued for output at the time.
 */
bool io_start_tls(struct Io *io, struct ssl_st *ssl, bool accept)
    __attribute__((warn_unused_result));
/* Append bytes to the output and try to send them now. */
void io_send(struct Io *io, const void *data, size_t len);
/* Append bytes to the output; they go with the next io_push/io_send/io_forward,
 * so that several messages leave in one syscall. */
void io_queue(struct Io *io, const void *data, size_t len);
/* Send whatever io_queue left waiting. */
void io_push(struct Io *io);
/* Forward the first n bytes of src: written straight from src when the
 * output is empty, queued otherwise. src is drained by n. */
void io_forward(struct Io *io, IoBuf *src, size_t n);
size_t io_pending_output(const struct Io *io);
/* True when nothing waits to be written. */
bool io_flushed(const struct Io *io);
/* Bytes written to the socket so far (TLS: to the encrypting layer). */
static inline uint64_t io_sent(const struct Io *io)
{
    return io->out_total - io_pending_output(io);
}

/* Walks the bytes of a buffer without moving them (valid until the buffer
 * is drained or grows). */
typedef struct IoCursor {
    const uint8_t *p;
    size_t pos;   /* offset from p */
    size_t avail; /* bytes at p */
} IoCursor;

static inline void io_cursor_init(IoCursor *c, const IoBuf *buf)
{
    c->p = iobuf_data(buf);
    c->pos = 0;
    c->avail = buf->len;
}
static inline size_t io_cursor_left(const IoCursor *c)
{
    return c->avail - c->pos;
}
/* Move forward by n bytes (n <= io_cursor_left). */
static inline void io_cursor_skip(IoCursor *c, size_t n)
{
    c->pos += n;
}
/* The len bytes from skip bytes past the cursor, in place; NULL if fewer
 * are there. */
static inline const uint8_t *io_cursor_span(const IoCursor *c, size_t skip, size_t len)
{
    size_t left = io_cursor_left(c);

    if (!c->p || left < skip || left - skip < len)
        return NULL;
    return c->p + c->pos + skip;
}
/* Copy len bytes from skip bytes past the cursor into dst without moving;
 * false if fewer are there. */
static inline bool io_cursor_peek_at(const IoCursor *c, size_t skip, void *dst, size_t len)
{
    const uint8_t *at = io_cursor_span(c, skip, len);

    if (!at)
        return false;
    if (len)
        memcpy(dst, at, len);
    return true;
}
static inline bool io_cursor_peek(const IoCursor *c, void *dst, size_t len)
{
    return io_cursor_peek_at(c, 0, dst, len);
}

#endif
