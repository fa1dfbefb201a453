/*
 * The one I/O boundary: a socket with an input and an output evbuffer,
 * reporting the project's own small event enum to its owner. Plain sockets
 * are read and written here directly (one syscall per read, writes tried at
 * once); TLS will differ only behind these functions.
 */
#ifndef PGC_DAEMON_IO_H
#define PGC_DAEMON_IO_H

#include <event2/buffer.h>
#include <event2/event.h>
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

struct Io;
struct ssl_st;
struct bufferevent;
typedef void (*IoHandler)(void *owner, IoEvent ev);

typedef struct Io {
    int fd;
    struct event_base *base;
    struct bufferevent *bev; /* TLS: libevent's OpenSSL bufferevent owns the socket */
    struct event *rev;
    struct event *wev;
    struct evbuffer *in;
    struct evbuffer *out;
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

/* Wrap fd (already non-blocking). Returns false on allocation failure. */
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
void io_forward(struct Io *io, struct evbuffer *src, size_t n);
size_t io_pending_output(const struct Io *io);
/* True when nothing waits to be written. */
bool io_flushed(const struct Io *io);
/* Bytes written to the socket so far (TLS: to the encrypting layer). */
static inline uint64_t io_sent(const struct Io *io)
{
    return io->out_total - io_pending_output(io);
}

/* Walks the bytes of an evbuffer without copying it whole. */
typedef struct IoCursor {
    struct evbuffer_iovec vec[32];
    int nvec;
    int idx;      /* current vector */
    size_t off;   /* offset inside it */
    size_t pos;   /* absolute position */
    size_t avail; /* bytes covered by vec[] */
} IoCursor;

void io_cursor_init(IoCursor *c, struct evbuffer *buf);
/* Copy len bytes from skip bytes past the cursor into dst without moving;
 * false if fewer are covered. */
bool io_cursor_peek_at(const IoCursor *c, size_t skip, void *dst, size_t len);
/* Move forward by n covered bytes (n <= remaining). */
void io_cursor_skip(IoCursor *c, size_t n);
static inline size_t io_cursor_left(const IoCursor *c)
{
    return c->avail - c->pos;
}
/* The len bytes from skip bytes past the cursor, in place, when they lie in
 * the cursor's current vector; else NULL (copy them with io_cursor_peek_at). */
static inline const uint8_t *io_cursor_span(const IoCursor *c, size_t skip, size_t len)
{
    if (c->idx < c->nvec && c->vec[c->idx].iov_len - c->off >= skip &&
        c->vec[c->idx].iov_len - c->off - skip >= len)
        return (const uint8_t *)c->vec[c->idx].iov_base + c->off + skip;
    return NULL;
}
/* Copy len bytes at the cursor into dst without moving; false if fewer are
 * covered. Inline for the common case of a header within one vector. */
static inline bool io_cursor_peek(const IoCursor *c, void *dst, size_t len)
{
    if (c->idx < c->nvec && c->vec[c->idx].iov_len - c->off >= len) {
        memcpy(dst, (const uint8_t *)c->vec[c->idx].iov_base + c->off, len);
        return true;
    }
    return io_cursor_peek_at(c, 0, dst, len);
}

#endif
