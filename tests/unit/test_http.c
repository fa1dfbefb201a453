/*
 * Unit tests of HTTP on the admin port (daemon/http.c), driven without a
 * socket through the fuzz targets' admin harness (tests/fuzz/admin_harness.h):
 * where a request head ends, its size limit, methods and routes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "tests/fuzz/admin_harness.h"

/* Send req in reads cut at the given offsets (ascending, ending with
 * strlen(req)); the answer's status, 0 when none. */
static int http_status(const char *req, const size_t *cuts, int ncuts)
{
    AdminConn *a = harness_conn(ROLE_NONE);
    size_t from = 0, len;
    char head[16] = "";
    int status = 0;

    for (int i = 0; i < ncuts; i++) {
        if (!harness_feed(a, (const uint8_t *)req + from, cuts[i] - from))
            break;
        from = cuts[i];
    }
    len = iobuf_len(&a->io.out);
    if (len >= 12) {
        iobuf_copyout(&a->io.out, head, 12);
        sscanf(head, "HTTP/1.1 %d", &status);
    }
    harness_done(a);
    return status;
}

static int status_whole(const char *req)
{
    size_t n = strlen(req);

    return http_status(req, &n, 1);
}

static void test_routes(void **state)
{
    assert_int_equal(status_whole("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
    assert_int_equal(status_whole("HEAD /metrics HTTP/1.0\n\n"), 200);
    assert_int_equal(status_whole("GET /n1?x=1 HTTP/1.1\r\n\r\n"), 200);
    assert_int_equal(status_whole("GET /nope HTTP/1.1\r\n\r\n"), 404);
    assert_int_equal(status_whole("POST /stats HTTP/1.1\r\n\r\n"), 405);
    assert_int_equal(status_whole("GET /stats\r\n\r\n"), 400);
    /* no blank line yet: no answer */
    assert_int_equal(status_whole("GET /stats HTTP/1.1\r\n"), 0);
}

/* The head ends at its first blank line, LF or CRLF, however the bytes
 * arrive: a later CRLF blank line beyond the size limit used to win when
 * everything came in one read (431), but not in two (200). Found by fuzz_http. */
static void test_first_blank_line(void **state)
{
    char *req = malloc(9000);
    size_t n, cuts[2];

    assert_non_null(req);
    n = (size_t)snprintf(req, 9000, "GET /healthz HTTP/1.1\n\nX: ");
    memset(req + n, 'a', 8500 - n);
    memcpy(req + 8500, "\r\n\r\n", 5);
    n = strlen(req);
    cuts[0] = 100;
    cuts[1] = n;
    assert_int_equal(http_status(req, &n, 1), 200);
    assert_int_equal(http_status(req, cuts, 2), 200);
    free(req);
}

/* A blank line that starts right at the limit is accepted whether the head
 * arrives whole or with the limit crossed in the middle of its "\r\n\r\n"
 * (then it used to be 431 already). Found by fuzz_http. */
static void test_blank_line_at_limit(void **state)
{
    char *req = malloc(9000);
    size_t n, cuts[2];

    assert_non_null(req);
    n = (size_t)snprintf(req, 9000, "GET /healthz HTTP/1.1\r\nX: ");
    memset(req + n, 'a', 8192 - n);
    memcpy(req + 8192, "\r\n\r\n", 5); /* the head is 8192 bytes */
    n = strlen(req);
    cuts[0] = 8195;
    cuts[1] = n;
    assert_int_equal(http_status(req, &n, 1), 200);
    assert_int_equal(http_status(req, cuts, 2), 200);
    memcpy(req + 8192, "a\r\n\r\n", 6); /* one byte more: too large either way */
    n = strlen(req);
    cuts[1] = n;
    assert_int_equal(http_status(req, &n, 1), 431);
    assert_int_equal(http_status(req, cuts, 2), 431);
    free(req);
}

static void test_head_too_large(void **state)
{
    char *req = malloc(9000);
    size_t n;

    assert_non_null(req);
    n = (size_t)snprintf(req, 9000, "GET /healthz HTTP/1.1\r\nX: ");
    memset(req + n, 'a', 8900 - n);
    memcpy(req + 8900, "\r\n\r\n", 5);
    assert_int_equal(status_whole(req), 431);
    req[8300] = '\0'; /* no blank line, but already over the limit */
    assert_int_equal(status_whole(req), 431);
    free(req);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routes),
        cmocka_unit_test(test_first_blank_line),
        cmocka_unit_test(test_blank_line_at_limit),
        cmocka_unit_test(test_head_too_large),
    };

    harness_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
