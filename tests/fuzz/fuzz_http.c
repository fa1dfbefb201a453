/*
 * Fuzz target: HTTP on the admin port (daemon/http.c): finding the end of
 * the request head, its size limits, the request line, method and route,
 * and the answer (GET/HEAD /metrics, /stats, /n1, /queries, /healthz,
 * rendered from a live but idle Worker). See admin_harness.h for how this
 * runs without a socket.
 *
 * Input: the bytes a client sends from the connection's first byte on
 * (a method's capital letter makes it HTTP). They are handed over twice,
 * on two connections: as one read, and as two reads cut in the middle.
 * Checks: exactly one answer, with a status line, headers ending in a blank
 * line, Connection: close, and a Content-Length equal to the body's length
 * (a HEAD answer has no body); both connections get the same status.
 */
#include "tests/fuzz/admin_harness.h"

/* The status of the one answer in out, checked and drained; 0 when none. */
static int check_answer(AdminConn *a)
{
    size_t len = iobuf_len(&a->io.out);
    char *text, *end, *cl;
    int status = 0;
    unsigned long body_len;
    size_t head_len;
    bool head_only;

    if (len == 0)
        return 0;
    text = malloc(len + 1);
    if (!text)
        abort();
    iobuf_remove(&a->io.out, text, len);
    text[len] = '\0';
    FUZZ_CHECK(sscanf(text, "HTTP/1.1 %3d ", &status) == 1 && status >= 200 && status < 600);
    end = strstr(text, "\r\n\r\n");
    FUZZ_CHECK(end != NULL);
    head_len = (size_t)(end - text) + 4;
    *end = '\0';
    FUZZ_CHECK(strstr(text, "\r\nConnection: close") != NULL);
    cl = strstr(text, "\r\nContent-Length: ");
    FUZZ_CHECK(cl && sscanf(cl, "\r\nContent-Length: %lu", &body_len) == 1);
    head_only = len - head_len == 0 && body_len > 0;
    FUZZ_CHECK(head_only || len - head_len == body_len);
    free(text);
    return status;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    harness_init();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    AdminConn *a;
    int whole, split;
    size_t cut = size / 2;

    if (size < 1 || data[0] < 'A' || data[0] > 'Z')
        return 0; /* not HTTP: fuzz_admin's */

    a = harness_conn(ROLE_NONE);
    harness_feed(a, data, size);
    whole = check_answer(a);
    harness_done(a);

    a = harness_conn(ROLE_NONE);
    if (harness_feed(a, data, cut))
        harness_feed(a, data + cut, size - cut);
    split = check_answer(a);
    harness_done(a);

    /* how the bytes arrive changes nothing */
    if (whole != split)
        fprintf(stderr, "one read: %d, two reads: %d\n", whole, split);
    FUZZ_CHECK(whole == split);
    return 0;
}
