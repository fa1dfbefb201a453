/* Socket reads and writes, and the only place that sees libevent's flags. */
#include "daemon/io.h"

#include <errno.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define IO_READ_CHUNK 16384
#define IO_READS_PER_EVENT 4

static void io_on_readable(evutil_socket_t fd, short what, void *arg);
static void io_on_writable(evutil_socket_t fd, short what, void *arg);

bool io_init(Io *io, struct event_base *base, int fd, IoHandler handler, void *owner)
{
    memset(io, 0, sizeof(*io));
    io->fd = fd;
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
    if (evbuffer_get_length(io->out) > 0 && !io->connecting) {
        int n = evbuffer_write(io->out, io->fd);
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

void io_send(Io *io, const void *data, size_t len)
{
    if (io->closed)
        return;
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
    if (evbuffer_get_length(io->out) == 0 && !io->connecting) {
        int w = evbuffer_write_atmost(src, io->fd, (ev_ssize_t)n);
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
    return io->out ? evbuffer_get_length(io->out) : 0;
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
        n = read(fd, v.iov_base, v.iov_len);
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

bool io_cursor_peek(const IoCursor *c, void *dst, size_t len)
{
    uint8_t *d = dst;
    int idx = c->idx;
    size_t off = c->off;

    if (io_cursor_left(c) < len)
        return false;
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
