/*
 * Unit tests of daemon/io.c: the flat connection buffer (IoBuf: growth,
 * when live bytes move, the block given back when it empties), the cursor
 * over it, and an Io on a socketpair driven by a real event loop (reads,
 * EOF, output kept while the peer does not read, forwarding in order).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <event2/event.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "daemon/io.h"

static void fill(uint8_t *p, size_t n, size_t from)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)((from + i) * 131u >> 3);
}

static void test_iobuf_basics(void **state)
{
    IoBuf b = {0};
    uint8_t src[100], out[200];

    (void)state;
    assert_null(iobuf_data(&b));
    assert_int_equal(iobuf_len(&b), 0);
    fill(src, sizeof(src), 0);
    assert_true(iobuf_add(&b, src, 60));
    assert_true(iobuf_add(&b, src + 60, 40));
    assert_int_equal(iobuf_len(&b), 100);
    assert_memory_equal(iobuf_data(&b), src, 100);
    assert_int_equal(b.cap, 4096); /* the smallest block */

    assert_int_equal(iobuf_copyout(&b, out, 10), 10);
    assert_memory_equal(out, src, 10);
    assert_int_equal(iobuf_len(&b), 100); /* copyout does not drain */
    iobuf_drain(&b, 30);
    assert_int_equal(iobuf_len(&b), 70);
    assert_memory_equal(iobuf_data(&b), src + 30, 70);
    assert_int_equal(iobuf_remove(&b, out, 200), 70); /* at most what is there */
    assert_memory_equal(out, src + 30, 70);
    /* empty: the block went back */
    assert_int_equal(iobuf_len(&b), 0);
    assert_null(b.data);
    assert_int_equal(b.cap, 0);
    assert_int_equal(iobuf_copyout(&b, out, 5), 0);

    assert_true(iobuf_add(&b, src, 5));
    iobuf_drain(&b, 1000); /* more than is there: all of it */
    assert_null(b.data);
    assert_true(iobuf_add(&b, src, 0));
    assert_null(b.data); /* nothing to add, nothing taken */
    iobuf_release(&b);
}

static void test_iobuf_growth(void **state)
{
    IoBuf b = {0};
    size_t total = 300000, at = 0, drained = 0;
    uint8_t *big = malloc(total);

    (void)state;
    assert_non_null(big);
    fill(big, total, 0);
    /* Appends in odd pieces with drains in between: the bytes stay in order
     * through every move and growth, and the block stays a power of two. */
    while (at < total) {
        size_t n = total - at < 7777 ? total - at : 7777;
        assert_true(iobuf_add(&b, big + at, n));
        at += n;
        assert_int_equal(b.cap & (b.cap - 1), 0);
        assert_true(b.off + b.len <= b.cap);
        if (iobuf_len(&b) > 20000) {
            size_t d = iobuf_len(&b) / 3;
            assert_memory_equal(iobuf_data(&b), big + drained, iobuf_len(&b));
            iobuf_drain(&b, d);
            drained += d;
        }
    }
    assert_int_equal(drained + iobuf_len(&b), total);
    assert_memory_equal(iobuf_data(&b), big + drained, iobuf_len(&b));
    iobuf_release(&b);

    /* Room after the live bytes is used before anything moves. */
    uint8_t *room = iobuf_reserve(&b, 100);
    assert_non_null(room);
    memcpy(room, big, 100);
    iobuf_commit(&b, 100);
    iobuf_drain(&b, 90); /* off 90, len 10 */
    room = iobuf_reserve(&b, 1000);
    assert_ptr_equal(room, b.data + 100); /* still fits behind them */
    /* Not enough room behind them, and moving them frees more than it
     * copies: they move to the front of the same block. */
    uint8_t *block = b.data;
    room = iobuf_reserve(&b, b.cap - 10);
    assert_ptr_equal(b.data, block);
    assert_int_equal(b.off, 0);
    assert_ptr_equal(room, b.data + 10);
    assert_memory_equal(iobuf_data(&b), big + 90, 10);
    /* Live bytes that fill most of the block: it grows instead, and they
     * come along. */
    memset(room, 0xab, b.cap - 110);
    iobuf_commit(&b, b.cap - 110);
    iobuf_drain(&b, 50); /* off 50, len cap - 150: moving would not pay */
    size_t cap = b.cap, len = iobuf_len(&b);
    room = iobuf_reserve(&b, 200);
    assert_non_null(room);
    assert_int_equal(b.cap, cap * 2);
    assert_int_equal(b.off, 0);
    assert_int_equal(iobuf_len(&b), len);
    for (size_t i = 0; i < len; i++)
        assert_int_equal(iobuf_data(&b)[i], 0xab);
    iobuf_release(&b);
    free(big);
}

static void test_cursor(void **state)
{
    IoBuf b = {0};
    IoCursor c;
    uint8_t src[64], out[16];

    (void)state;
    io_cursor_init(&c, &b);
    assert_int_equal(io_cursor_left(&c), 0);
    assert_null(io_cursor_span(&c, 0, 0));
    assert_false(io_cursor_peek(&c, out, 1));

    fill(src, sizeof(src), 7);
    assert_true(iobuf_add(&b, src, sizeof(src)));
    io_cursor_init(&c, &b);
    assert_int_equal(io_cursor_left(&c), 64);
    assert_true(io_cursor_peek(&c, out, 5));
    assert_memory_equal(out, src, 5);
    assert_true(io_cursor_peek_at(&c, 60, out, 4));
    assert_memory_equal(out, src + 60, 4);
    assert_false(io_cursor_peek_at(&c, 60, out, 5));
    assert_false(io_cursor_peek_at(&c, 65, out, 0));
    io_cursor_skip(&c, 20);
    assert_int_equal(io_cursor_left(&c), 44);
    assert_ptr_equal(io_cursor_span(&c, 4, 40), iobuf_data(&b) + 24);
    assert_null(io_cursor_span(&c, 4, 41));
    assert_true(io_cursor_peek(&c, out, 16));
    assert_memory_equal(out, src + 20, 16);
    iobuf_release(&b);
}

/* An Io on one end of a socketpair, its events recorded. */
typedef struct {
    Io io;
    int reads, eofs, errors, drained;
} Probe;

static void probe_handler(void *owner, IoEvent ev)
{
    Probe *p = owner;

    if (ev == IO_READ)
        p->reads++;
    else if (ev == IO_EOF)
        p->eofs++;
    else if (ev == IO_ERROR)
        p->errors++;
    else if (ev == IO_DRAINED)
        p->drained++;
}

static void probe_open(Probe *p, struct event_base *base, int *peer)
{
    int sv[2];

    memset(p, 0, sizeof(*p));
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(fcntl(sv[0], F_SETFL, O_NONBLOCK), 0);
    assert_true(io_init(&p->io, base, sv[0], probe_handler, p));
    *peer = sv[1];
}

static void probe_close(Probe *p)
{
    io_close(&p->io);
    io_free(&p->io);
}

static void loop_once(struct event_base *base)
{
    event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
}

static void test_io_read_and_eof(void **state)
{
    struct event_base *base = event_base_new();
    Probe p;
    int peer;
    uint8_t msg[40000];

    (void)state;
    assert_non_null(base);
    probe_open(&p, base, &peer);
    io_read(&p.io, true);
    fill(msg, sizeof(msg), 3);
    assert_int_equal(write(peer, msg, 1000), 1000);
    for (int i = 0; i < 10 && p.reads == 0; i++)
        loop_once(base);
    assert_int_equal(p.reads, 1);
    assert_int_equal(iobuf_len(&p.io.in), 1000);
    assert_memory_equal(iobuf_data(&p.io.in), msg, 1000);
    /* More than one read's worth arrives behind what is not yet consumed. */
    assert_int_equal(write(peer, msg + 1000, sizeof(msg) - 1000), (ssize_t)(sizeof(msg) - 1000));
    for (int i = 0; i < 20 && iobuf_len(&p.io.in) < sizeof(msg); i++)
        loop_once(base);
    assert_int_equal(iobuf_len(&p.io.in), sizeof(msg));
    assert_memory_equal(iobuf_data(&p.io.in), msg, sizeof(msg));
    iobuf_drain(&p.io.in, sizeof(msg));
    assert_null(p.io.in.data);
    /* EOF: reported, reading stops. */
    close(peer);
    for (int i = 0; i < 10 && p.eofs == 0; i++)
        loop_once(base);
    assert_int_equal(p.eofs, 1);
    assert_int_equal(p.errors, 0);
    assert_false(p.io.read_on);
    probe_close(&p);
    event_base_free(base);
}

static void test_io_output_kept_and_forwarded(void **state)
{
    struct event_base *base = event_base_new();
    Probe p;
    int peer;
    size_t total = 3 * IO_HIGH_WATERMARK, got = 0;
    uint8_t *data = malloc(total), *recvd = malloc(total);
    IoBuf src = {0};

    (void)state;
    assert_non_null(base);
    assert_non_null(data);
    assert_non_null(recvd);
    fill(data, total, 11);
    probe_open(&p, base, &peer);
    /* The peer reads nothing yet: what the socket does not take is kept,
     * and the Io says it is over the watermark. */
    io_send(&p.io, data, total / 3);
    assert_true(iobuf_add(&src, data + total / 3, total - total / 3));
    io_forward(&p.io, &src, 1000);
    assert_int_equal(iobuf_len(&src), total - total / 3 - 1000);
    io_forward(&p.io, &src, iobuf_len(&src));
    assert_int_equal(iobuf_len(&src), 0);
    assert_null(src.data);
    assert_true(io_pending_output(&p.io) > 0);
    assert_true(p.io.congested);
    assert_int_equal(io_sent(&p.io) + io_pending_output(&p.io), total);
    /* The peer reads: everything arrives in order, and the drain is told. */
    assert_int_equal(fcntl(peer, F_SETFL, O_NONBLOCK), 0);
    for (int i = 0; i < 10000 && got < total; i++) {
        ssize_t n = read(peer, recvd + got, total - got);
        if (n > 0)
            got += (size_t)n;
        loop_once(base);
    }
    assert_int_equal(got, total);
    assert_memory_equal(recvd, data, total);
    assert_true(io_flushed(&p.io));
    assert_int_equal(p.drained, 1);
    assert_false(p.io.congested);
    assert_null(p.io.out.data); /* emptied: the block went back */
    close(peer);
    probe_close(&p);
    event_base_free(base);
    free(data);
    free(recvd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_iobuf_basics),
        cmocka_unit_test(test_iobuf_growth),
        cmocka_unit_test(test_cursor),
        cmocka_unit_test(test_io_read_and_eof),
        cmocka_unit_test(test_io_output_kept_and_forwarded),
    };
    io_global_init();
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    io_global_free();
    return rc;
}
