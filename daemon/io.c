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

/*
 * libevent's memory, with freed buffer chains kept for reuse. A read into
 * an empty evbuffer makes libevent allocate a chain (IO_READ_CHUNK and its
 * header, rounded up to a power of two: 32 KiB), and draining the buffer
 * frees it again: twice per proxied round trip, each time through malloc's
 * slow path for a block that size (malloc's own per-thread cache stops at
 * about 1 KiB). Freed blocks of 4 to 64 KiB are kept per power of two and
 * thread, by their usable size; anything else is malloc's. Many are kept:
 * every client waiting for a server holds a chain with its first message,
 * and under a pool too small for its clients (256 pgbench clients on 20
 * connections) hundreds are taken and given back each second.
 */
#define IO_MM_MIN_SHIFT 12
#define IO_MM_MAX_SHIFT 16
#define IO_MM_KEEP      256 /* blocks kept per size: at most 8 MiB of 32 KiB chains */

static __thread struct {
    void *blk[IO_MM_KEEP];
    int n;
} io_mm_cache[IO_MM_MAX_SHIFT - IO_MM_MIN_SHIFT + 1];

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

static void io_mm_free(void *p)
{
    size_t usable;
    int k;

    if (!p)
        return;
    usable = malloc_usable_size(p);
    if (usable >= ((size_t)1 << IO_MM_MIN_SHIFT) && usable < ((size_t)2 << IO_MM_MAX_SHIFT)) {
        k = 63 - __builtin_clzl(usable) - IO_MM_MIN_SHIFT;
        if (io_mm_cache[k].n < IO_MM_KEEP) {
            io_mm_cache[k].blk[io_mm_cache[k].n++] = p;
            return;
        }
    }
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

/*
 * Send up to n bytes from the front of buf with one sendmsg() and drain what
 * went out. Sockets only: sendmsg skips the VFS layer that write()/writev()
 * go through, and MSG_NOSIGNAL spares a SIGPIPE. Returns bytes sent or -1.
 */
static ssize_t io_send_from(int fd, struct evbuffer *buf, size_t n)
{
    struct evbuffer_iovec v[16];
    struct iovec iov[16];
    struct msghdr msg;
    int nv = evbuffer_peek(buf, (ev_ssize_t)n, NULL, v, 16);
    size_t left = n;
    ssize_t w;

    if (nv > 16)
        nv = 16;
    for (int i = 0; i < nv; i++) {
        iov[i].iov_base = v[i].iov_base;
        iov[i].iov_len = v[i].iov_len < left ? v[i].iov_len : left;
        left -= iov[i].iov_len;
    }
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = iov;
    msg.msg_iovlen = (size_t)nv;
    w = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0)
        evbuffer_drain(buf, (size_t)w);
    return w;
}
static void io_on_writable(evutil_socket_t fd, short what, void *arg);

bool io_init(Io *io, struct event_base *base, int fd, IoHandler handler, void *owner)
{
    memset(io, 0, sizeof(*io));
    io->fd = fd;
    io->base = base;
    io->handler = handler;
    io->owner = owner;
    io->in = evbuffer_new();
    io->out = evbuffer_new();
    io->rev = event_new(base, fd, EV_READ | EV_PERSIST, io_on_readable, io);
    io->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, io_on_writable, io);
    if (!io->in || !io->out || !io->rev || !io->wev) {
        io_close(io);
        io_free(io);
        return false;
    }
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
    if (io->rev) {
        event_free(io->rev);
        io->rev = NULL;
    }
    if (io->wev) {
        event_free(io->wev);
        io->wev = NULL;
    }
    if (io->fd >= 0) {
        close(io->fd);
        io->fd = -1;
    }
}

void io_free(Io *io)
{
    if (io->in)
        evbuffer_free(io->in);
    if (io->out)
        evbuffer_free(io->out);
    io->in = io->out = NULL;
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
        evbuffer_add_buffer(bout, io->out);
        if (evbuffer_get_length(bout) > IO_HIGH_WATERMARK)
            io->congested = true;
        return;
    }
    if (evbuffer_get_length(io->out) > 0 && !io->connecting) {
        ssize_t n = io_send_from(io->fd, io->out, evbuffer_get_length(io->out));
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            io->err = errno;
            /* Reported from the write event, in this io's own callback. */
            event_active(io->wev, EV_WRITE, 0);
            return;
        }
    }
    left = evbuffer_get_length(io->out);
    if (left > 0) {
        if (!event_pending(io->wev, EV_WRITE, NULL))
            event_add(io->wev, NULL);
        if (left > IO_HIGH_WATERMARK)
            io->congested = true;
    } else if (!io->connecting && event_pending(io->wev, EV_WRITE, NULL)) {
        event_del(io->wev);
    }
}

void io_queue(Io *io, const void *data, size_t len)
{
    if (io->closed)
        return;
    io->out_total += len;
    evbuffer_add(io->out, data, len);
}

void io_push(Io *io)
{
    if (evbuffer_get_length(io->out) > 0)
        io_flush(io);
}

void io_send(Io *io, const void *data, size_t len)
{
    if (io->closed)
        return;
    io->out_total += len;
    evbuffer_add(io->out, data, len);
    io_flush(io);
}

void io_forward(Io *io, struct evbuffer *src, size_t n)
{
    if (n == 0)
        return;
    if (io->closed) {
        evbuffer_drain(src, n);
        return;
    }
    io->out_total += n;
    if (evbuffer_get_length(io->out) == 0 && !io->connecting && !io->bev) {
        ssize_t w = io_send_from(io->fd, src, n);
        if (w > 0)
            n -= (size_t)w;
        if (n == 0)
            return;
    }
    evbuffer_remove_buffer(src, io->out, n);
    io_flush(io);
}

size_t io_pending_output(const Io *io)
{
    size_t n = io->out ? evbuffer_get_length(io->out) : 0;
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
        struct evbuffer_iovec v;
        ssize_t n;

        if (evbuffer_reserve_space(io->in, IO_READ_CHUNK, &v, 1) < 1)
            break;
        n = recv(fd, v.iov_base, v.iov_len, MSG_DONTWAIT);
        if (n > 0) {
            v.iov_len = (size_t)n;
            evbuffer_commit_space(io->in, &v, 1);
            if ((size_t)n < IO_READ_CHUNK)
                break;
            continue;
        }
        evbuffer_commit_space(io->in, &v, 0);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            break;
        /* EOF or error: hand over what was read first. */
        if (i > 0 || evbuffer_get_length(io->in) > 0) {
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
    if (io->congested && evbuffer_get_length(io->out) <= IO_HIGH_WATERMARK / 2) {
        io->congested = false;
        io->handler(io->owner, IO_DRAINED);
    }
}

void io_cursor_init(IoCursor *c, struct evbuffer *buf)
{
    int i;

    c->nvec = evbuffer_peek(buf, -1, NULL, c->vec, 32);
    if (c->nvec > 32)
        c->nvec = 32;
    c->idx = 0;
    c->off = 0;
    c->pos = 0;
    c->avail = 0;
    for (i = 0; i < c->nvec; i++)
        c->avail += c->vec[i].iov_len;
}

bool io_cursor_peek_at(const IoCursor *c, size_t skip, void *dst, size_t len)
{
    uint8_t *d = dst;
    int idx = c->idx;
    size_t off = c->off;

    if (io_cursor_left(c) < skip || io_cursor_left(c) - skip < len)
        return false;
    while (skip > 0) {
        size_t here = c->vec[idx].iov_len - off;
        if (here > skip) {
            off += skip;
            break;
        }
        skip -= here;
        idx++;
        off = 0;
    }
    while (len > 0) {
        size_t here = c->vec[idx].iov_len - off;
        if (here > len)
            here = len;
        memcpy(d, (const uint8_t *)c->vec[idx].iov_base + off, here);
        d += here;
        len -= here;
        off += here;
        if (off == c->vec[idx].iov_len) {
            idx++;
            off = 0;
        }
    }
    return true;
}

void io_cursor_skip(IoCursor *c, size_t n)
{
    c->pos += n;
    while (n > 0 && c->idx < c->nvec) {
        size_t here = c->vec[c->idx].iov_len - c->off;
        if (here > n) {
            c->off += n;
            return;
        }
        n -= here;
        c->idx++;
        c->off = 0;
    }
}

static void io_tls_read_cb(struct bufferevent *bev, void *arg)
{
    Io *io = arg;

    evbuffer_add_buffer(io->in, bufferevent_get_input(bev));
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
        evbuffer_add_buffer(io->in, bufferevent_get_input(bev));
        io->handler(io->owner, IO_READ);
        if (io->closed)
            return;
    }
    if (what & BEV_EVENT_EOF) {
        io->handler(io->owner, IO_EOF);
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
    if (io->closed || evbuffer_get_length(io->out) > 0) {
        SSL_free(ssl);
        return false;
    }
    event_free(io->rev);
    event_free(io->wev);
    io->rev = io->wev = NULL;
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
