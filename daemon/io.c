/* Socket reads and writes, and the only place that sees libevent's flags. */
#include "daemon/io.h"

#include <errno.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <malloc.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define IO_READ_CHUNK      16384
#define IO_READS_PER_EVENT 4

static void io_on_readable(evutil_socket_t fd, short what, void *arg);
static void io_tls_fail(Io *io);
static void io_fail(Io *io, int err);

/*
 * Buffer blocks, with freed ones kept for reuse: a read into an empty
 * buffer takes a block and draining it gives the block back, twice per
 * proxied round trip, and malloc's slow path for a block that size (its own
 * per-thread cache stops at about 1 KiB) would run each time. Blocks of 4
 * to 64 KiB are kept per power of two and thread; anything else is
 * malloc's. Many are kept: every client waiting for a server holds one with
 * its first message, and under a pool too small for its clients (256
 * pgbench clients on 20 connections) hundreds are taken and given back each
 * second. libevent's own allocations (the evbuffers of TLS connections and
 * of admin replies) go through the same cache. The sanitizer build keeps
 * none, so that a use after a drain is a use after free it can see.
 */
#define IO_MM_MIN_SHIFT 12
#define IO_MM_MAX_SHIFT 16
#if defined(__SANITIZE_ADDRESS__)
#define IO_MM_KEEP 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define IO_MM_KEEP 0
#endif
#endif
#ifndef IO_MM_KEEP
#define IO_MM_KEEP 256 /* blocks kept per size: at most 4 MiB of 16 KiB blocks */
#endif

static __thread struct {
    void *blk[IO_MM_KEEP > 0 ? IO_MM_KEEP : 1];
    int n;
} io_mm_cache[IO_MM_MAX_SHIFT - IO_MM_MIN_SHIFT + 1];

/* The cache class of a block of exactly size bytes, or -1. */
static inline int io_mm_class(size_t size)
{
    if (size < ((size_t)1 << IO_MM_MIN_SHIFT) || size > ((size_t)1 << IO_MM_MAX_SHIFT) ||
        (size & (size - 1)) != 0)
        return -1;
    return 63 - __builtin_clzl(size) - IO_MM_MIN_SHIFT;
}

static void *io_mm_malloc(size_t size)
{
    if (size >= ((size_t)1 << IO_MM_MIN_SHIFT) && size <= ((size_t)1 << IO_MM_MAX_SHIFT)) {
        /* class k holds blocks of at least 2^(k + MIN) bytes: size's power of two */
        int k = 64 - __builtin_clzl(size - 1) - IO_MM_MIN_SHIFT;
        if (io_mm_cache[k].n > 0)
            return io_mm_cache[k].blk[--io_mm_cache[k].n];
    }
    return malloc(size);
}

/* Keep p (at least 2^(k + MIN) bytes) in class k, or free it. */
static void io_mm_keep(void *p, int k)
{
#if IO_MM_KEEP > 0
    if (k >= 0 && io_mm_cache[k].n < IO_MM_KEEP) {
        io_mm_cache[k].blk[io_mm_cache[k].n++] = p;
        return;
    }
#else
    (void)k;
#endif
    free(p);
}

static void io_mm_free(void *p)
{
    size_t usable;

    if (!p)
        return;
    usable = malloc_usable_size(p);
    if (usable >= ((size_t)1 << IO_MM_MIN_SHIFT) && usable < ((size_t)2 << IO_MM_MAX_SHIFT))
        io_mm_keep(p, 63 - __builtin_clzl(usable) - IO_MM_MIN_SHIFT);
    else
        free(p);
}

void io_global_init(void)
{
    event_set_mem_functions(io_mm_malloc, realloc, io_mm_free);
}

void io_global_free(void)
{
    for (size_t k = 0; k < sizeof(io_mm_cache) / sizeof(io_mm_cache[0]); k++)
        while (io_mm_cache[k].n > 0)
            free(io_mm_cache[k].blk[--io_mm_cache[k].n]);
}

void iobuf_release(IoBuf *b)
{
    if (b->data)
        io_mm_keep(b->data, io_mm_class(b->cap));
    memset(b, 0, sizeof(*b));
}

uint8_t *iobuf_reserve(IoBuf *b, size_t n)
{
    size_t cap;
    uint8_t *data;

    if (b->data && b->cap - b->off - b->len >= n)
        return b->data + b->off + b->len;
    /* Moving the live bytes to the front is worth it when it frees at least
     * as much as it copies (so each byte is moved a bounded number of times). */
    if (b->off >= b->len && b->len + n <= b->cap) {
        memmove(b->data, b->data + b->off, b->len);
        b->off = 0;
        return b->data + b->len;
    }
    if (n > SIZE_MAX / 4 - b->len)
        return NULL;
    for (cap = (size_t)1 << IO_MM_MIN_SHIFT; cap < b->len + n; cap <<= 1)
        ;
    data = io_mm_malloc(cap);
    if (!data)
        return NULL;
    if (b->len)
        memcpy(data, b->data + b->off, b->len);
    if (b->data)
        io_mm_keep(b->data, io_mm_class(b->cap));
    b->data = data;
    b->off = 0;
    b->cap = cap;
    return data + b->len;
}

bool iobuf_add(IoBuf *b, const void *src, size_t n)
{
    uint8_t *room;

    if (n == 0)
        return true;
    room = iobuf_reserve(b, n);
    if (!room)
        return false;
    memcpy(room, src, n);
    b->len += n;
    return true;
}

/*
 * Send up to n bytes from the front of buf with one send() and drain what
 * went out. MSG_NOSIGNAL spares a SIGPIPE. Returns bytes sent or -1.
 */
static ssize_t io_send_from(int fd, IoBuf *buf, size_t n)
{
    ssize_t w = send(fd, buf->data + buf->off, n, MSG_NOSIGNAL | MSG_DONTWAIT);

    if (w > 0)
        iobuf_drain(buf, (size_t)w);
    return w;
}

static void io_on_writable(evutil_socket_t fd, short what, void *arg);

/* Take the plain socket's events off the loop (they live in the Io). */
static void io_drop_events(Io *io)
{
    if (io->rev) {
        event_del(io->rev);
        io->rev = NULL;
    }
    if (io->wev) {
        event_del(io->wev);
        io->wev = NULL;
    }
}

bool io_init(Io *io, struct event_base *base, int fd, IoHandler handler, void *owner)
{
    memset(io, 0, sizeof(*io));
    io->fd = fd;
    io->base = base;
    io->handler = handler;
    io->owner = owner;
    if (event_assign(&io->rev_ev, base, fd, EV_READ | EV_PERSIST, io_on_readable, io) < 0 ||
        event_assign(&io->wev_ev, base, fd, EV_WRITE | EV_PERSIST, io_on_writable, io) < 0) {
        io->fd = -1; /* the caller still owns fd */
        io->closed = true;
        return false;
    }
    io->rev = &io->rev_ev;
    io->wev = &io->wev_ev;
    return true;
}

bool io_connect(Io *io, const struct sockaddr *sa, socklen_t salen)
{
    if (connect(io->fd, sa, salen) == 0 || errno == EINPROGRESS) {
        io->connecting = true;
        return event_add(io->wev, NULL) == 0;
    }
    io->err = errno;
    return false;
}

void io_close(Io *io)
{
    if (io->closed)
        return;
    io->closed = true;
    if (io->bev) {
        /* Frees the SSL object and closes the socket. */
        bufferevent_free(io->bev);
        io->bev = NULL;
        io->fd = -1;
    }
    io_drop_events(io);
    if (io->fd >= 0) {
        close(io->fd);
        io->fd = -1;
    }
}

void io_free(Io *io)
{
    iobuf_release(&io->in);
    iobuf_release(&io->out);
}

void io_read(Io *io, bool on)
{
    if (io->closed || io->read_on == on)
        return;
    io->read_on = on;
    if (io->bev) {
        if (on)
            bufferevent_enable(io->bev, EV_READ);
        else
            bufferevent_disable(io->bev, EV_READ);
        return;
    }
    if (on)
        event_add(io->rev, NULL);
    else
        event_del(io->rev);
}

/* Write what is queued; arm or disarm the write event to match. */
static void io_flush(Io *io)
{
    size_t left;

    if (io->closed)
        return;
    if (io->bev) {
        struct evbuffer *bout = bufferevent_get_output(io->bev);
        if (io->out.len > 0 && evbuffer_add(bout, iobuf_data(&io->out), io->out.len) < 0) {
            io_fail(io, ENOMEM);
            return;
        }
        iobuf_drain(&io->out, io->out.len);
        if (evbuffer_get_length(bout) > IO_HIGH_WATERMARK)
            io->congested = true;
        return;
    }
    if (io->out.len > 0 && !io->connecting) {
        ssize_t n = io_send_from(io->fd, &io->out, io->out.len);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            io->err = errno;
            /* Reported from the write event, in this io's own callback. */
            event_active(io->wev, EV_WRITE, 0);
            return;
        }
    }
    left = io->out.len;
    if (left > 0) {
        if (!event_pending(io->wev, EV_WRITE, NULL))
            event_add(io->wev, NULL);
        if (left > IO_HIGH_WATERMARK)
            io->congested = true;
    } else if (!io->connecting && event_pending(io->wev, EV_WRITE, NULL)) {
        event_del(io->wev);
    }
}

/* Output that cannot be kept (out of memory) ends the connection: reported
 * as IO_ERROR from the write event, in the io's own callback. */
static void io_fail(Io *io, int err)
{
    if (io->err == 0)
        io->err = err;
    if (io->wev)
        event_active(io->wev, EV_WRITE, 0);
    else if (io->bev)
        io_tls_fail(io);
}

void io_queue(Io *io, const void *data, size_t len)
{
    if (io->closed)
        return;
    io->out_total += len;
    if (!iobuf_add(&io->out, data, len))
        io_fail(io, ENOMEM);
}

void io_push(Io *io)
{
    if (io->out.len > 0)
        io_flush(io);
}

void io_send(Io *io, const void *data, size_t len)
{
    io_queue(io, data, len);
    io_push(io);
}

void io_forward(Io *io, IoBuf *src, size_t n)
{
    if (n == 0)
        return;
    if (n > src->len)
        n = src->len;
    if (io->closed) {
        iobuf_drain(src, n);
        return;
    }
    io->out_total += n;
    if (io->out.len == 0 && !io->connecting && !io->bev) {
        ssize_t w = io_send_from(io->fd, src, n);
        if (w > 0)
            n -= (size_t)w;
        if (n == 0)
            return;
    }
    if (!iobuf_add(&io->out, iobuf_data(src), n)) {
        iobuf_drain(src, n);
        io_fail(io, ENOMEM);
        return;
    }
    iobuf_drain(src, n);
    io_flush(io);
}

size_t io_pending_output(const Io *io)
{
    size_t n = io->out.len;
    if (io->bev)
        n += evbuffer_get_length(bufferevent_get_output(io->bev));
    return n;
}

bool io_flushed(const Io *io)
{
    return io_pending_output(io) == 0;
}

static void io_on_readable(evutil_socket_t fd, short what, void *arg)
{
    Io *io = arg;
    int i;

    for (i = 0; i < IO_READS_PER_EVENT; i++) {
        uint8_t *room = iobuf_reserve(&io->in, IO_READ_CHUNK);
        size_t want;
        ssize_t n;

        if (!room) {
            /* Out of memory: what is in the buffer is handed over, and the
             * connection ends as a socket error would end it. */
            if (io->in.len > 0) {
                io->handler(io->owner, IO_READ);
                if (io->closed)
                    return;
            }
            io->err = ENOMEM;
            io_read(io, false);
            io->handler(io->owner, IO_ERROR);
            return;
        }
        want = io->in.cap - io->in.off - io->in.len;
        n = recv(fd, room, want, MSG_DONTWAIT);
        if (n > 0) {
            iobuf_commit(&io->in, (size_t)n);
            if ((size_t)n < want)
                break;
            continue;
        }
        if (io->in.len == 0)
            iobuf_release(&io->in);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            break;
        /* EOF or error: hand over what was read first. */
        if (i > 0 || io->in.len > 0) {
            io->handler(io->owner, IO_READ);
            if (io->closed)
                return;
        }
        io->err = n < 0 ? errno : 0;
        io_read(io, false);
        io->handler(io->owner, n < 0 ? IO_ERROR : IO_EOF);
        return;
    }
    io->handler(io->owner, IO_READ);
}

static void io_on_writable(evutil_socket_t fd, short what, void *arg)
{
    Io *io = arg;

    if (io->connecting) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        io->connecting = false;
        if (err) {
            io->err = err;
            event_del(io->wev);
            io->handler(io->owner, IO_ERROR);
            return;
        }
        io_flush(io);
        io->handler(io->owner, IO_CONNECTED);
        return;
    }
    if (io->err) {
        event_del(io->wev);
        io->handler(io->owner, IO_ERROR);
        return;
    }
    io_flush(io);
    if (io->err)
        return; /* reported on the activation io_flush scheduled */
    if (io->congested && io->out.len <= IO_HIGH_WATERMARK / 2) {
        io->congested = false;
        io->handler(io->owner, IO_DRAINED);
    }
}

/* Move what OpenSSL decrypted into io->in; false (and IO_ERROR told) if
 * memory ran out. */
static bool io_tls_take_input(Io *io, struct bufferevent *bev)
{
    struct evbuffer *bin = bufferevent_get_input(bev);
    size_t n = evbuffer_get_length(bin);
    uint8_t *room;

    if (n == 0)
        return true;
    room = iobuf_reserve(&io->in, n);
    if (!room) {
        io->err = ENOMEM;
        snprintf(io->tls_error, sizeof(io->tls_error), "out of memory");
        io->handler(io->owner, IO_ERROR);
        return false;
    }
    evbuffer_remove(bin, room, n);
    iobuf_commit(&io->in, n);
    return true;
}

/* Report io->err from the bufferevent's own (deferred) event callback. */
static void io_tls_fail(Io *io)
{
    bufferevent_trigger_event(io->bev, BEV_EVENT_ERROR, BEV_TRIG_DEFER_CALLBACKS);
}

static void io_tls_read_cb(struct bufferevent *bev, void *arg)
{
    Io *io = arg;

    if (!io_tls_take_input(io, bev))
        return;
    io->handler(io->owner, IO_READ);
}

static void io_tls_write_cb(struct bufferevent *bev, void *arg)
{
    Io *io = arg;

    if (io->congested) {
        io->congested = false;
        io->handler(io->owner, IO_DRAINED);
    }
}

static void io_tls_event_cb(struct bufferevent *bev, short what, void *arg)
{
    Io *io = arg;
    unsigned long e;

    if (what & BEV_EVENT_CONNECTED) {
        io->handler(io->owner, IO_CONNECTED);
        return;
    }
    /* Bytes that arrived with the close are handed over first. */
    if (evbuffer_get_length(bufferevent_get_input(bev)) > 0) {
        if (!io_tls_take_input(io, bev))
            return;
        io->handler(io->owner, IO_READ);
        if (io->closed)
            return;
    }
    if (what & BEV_EVENT_EOF) {
        io->handler(io->owner, IO_EOF);
        return;
    }
    if (io->err == ENOMEM) { /* io_fail: output that could not be kept */
        snprintf(io->tls_error, sizeof(io->tls_error), "out of memory");
        io->handler(io->owner, IO_ERROR);
        return;
    }
    e = bufferevent_get_openssl_error(bev);
    if (e)
        ERR_error_string_n(e, io->tls_error, sizeof(io->tls_error));
    else
        snprintf(io->tls_error, sizeof(io->tls_error), "%s",
                 EVUTIL_SOCKET_ERROR() ? strerror(EVUTIL_SOCKET_ERROR()) : "TLS connection failed");
    io->err = EVUTIL_SOCKET_ERROR() ? EVUTIL_SOCKET_ERROR() : EPROTO;
    io->handler(io->owner, IO_ERROR);
}

bool io_start_tls(Io *io, SSL *ssl, bool accept)
{
    if (io->closed || io->out.len > 0) {
        SSL_free(ssl);
        return false;
    }
    io_drop_events(io);
    io->bev = bufferevent_openssl_socket_new(
        io->base, io->fd, ssl, accept ? BUFFEREVENT_SSL_ACCEPTING : BUFFEREVENT_SSL_CONNECTING,
        BEV_OPT_CLOSE_ON_FREE);
    if (!io->bev) {
        SSL_free(ssl);
        return false;
    }
    bufferevent_openssl_set_allow_dirty_shutdown(io->bev, 1);
    bufferevent_setcb(io->bev, io_tls_read_cb, io_tls_write_cb, io_tls_event_cb, io);
    /* Hear about the output draining below half the watermark. */
    bufferevent_setwatermark(io->bev, EV_WRITE, IO_HIGH_WATERMARK / 2, 0);
    io->tls = true;
    io->read_on = true;
    return bufferevent_enable(io->bev, EV_READ | EV_WRITE) == 0;
}
