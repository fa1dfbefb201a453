/*
 * HTTP/1.1 on the admin port: GET (or HEAD) /metrics, /stats, /n1, /queries, /healthz.
 * One bounded request per connection, answered whole and closed
 * ("Connection: close"); nothing here waits on anything but the socket.
 */
#include "daemon/admin.h"
#include "daemon/cache.h"
#include "daemon/log.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* Longest request head (request line and headers) read. */
#define HTTP_MAX_HEAD 8192

typedef struct HttpAnswer {
    int status;
    const char *content_type;
    struct evbuffer *body;
} HttpAnswer;

static void route_metrics(Ops *ops, HttpAnswer *ans)
{
    ans->content_type = "text/plain; version=0.0.4; charset=utf-8";
    stats_render_metrics(ops, ans->body);
}

static void route_stats(Ops *ops, HttpAnswer *ans)
{
    ans->content_type = "application/json";
    stats_render_json(ops, ans->body);
}

static void route_n1(Ops *ops, HttpAnswer *ans)
{
    ans->content_type = "application/json";
    orm_render_n1_json(ops, ans->body);
}

static void route_queries(Ops *ops, HttpAnswer *ans)
{
    ans->content_type = "application/json";
    orm_render_queries_json(ops, ans->body);
}

static void route_cache(Ops *ops, HttpAnswer *ans)
{
    ans->content_type = "application/json";
    cache_report_json(ops->w, ans->body);
}

/* 200 while new transactions are served; 503 while paused or shutting down. */
static void route_healthz(Ops *ops, HttpAnswer *ans)
{
    const char *why = ops->shutdown ? "shutting down" : ops_is_paused(ops) ? "paused" : NULL;

    ans->status = why ? 503 : 200;
    evbuffer_add_printf(ans->body, "%s\n", why ? why : "ok");
}

typedef struct HttpRoute {
    const char *path;
    void (*handler)(Ops *ops, HttpAnswer *ans);
} HttpRoute;

static const HttpRoute routes[] = {
    {"/metrics", route_metrics}, {"/stats", route_stats},     {"/n1", route_n1},
    {"/queries", route_queries}, {"/healthz", route_healthz}, {"/cache", route_cache},
};

static const char *http_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 431:
        return "Request Header Fields Too Large";
    case 503:
        return "Service Unavailable";
    }
    return "Error";
}

/* Send status, headers and (unless head_only) the body, then close when written. */
static void http_send(AdminConn *a, HttpAnswer *ans, bool head_only)
{
    size_t len = evbuffer_get_length(ans->body);
    char head[512];
    int n;

    n = snprintf(head, sizeof(head),
                 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                 "Cache-Control: no-store\r\n%sConnection: close\r\n\r\n",
                 ans->status, http_reason(ans->status), ans->content_type, len,
                 ans->status == 405 ? "Allow: GET, HEAD\r\n" : "");
    io_send(&a->io, head, (size_t)n);
    if (!head_only)
        io_send(&a->io, evbuffer_pullup(ans->body, -1), len);
    admin_finish(a);
}

/* An error answer with a one-line text body. */
static void http_fail(AdminConn *a, int status, const char *text)
{
    HttpAnswer ans = {status, "text/plain; charset=utf-8", evbuffer_new()};

    if (!ans.body) {
        admin_close(a, "out of memory");
        return;
    }
    evbuffer_add_printf(ans.body, "%s\n", text);
    http_send(a, &ans, false);
    evbuffer_free(ans.body);
}

/* The request line "METHOD TARGET HTTP/1.x": route it. */
static void http_request(AdminConn *a, char *line)
{
    char *method = line, *target, *version, *q;
    bool head_only;
    HttpAnswer ans = {200, "text/plain; charset=utf-8", NULL};

    target = strchr(method, ' ');
    if (!target) {
        http_fail(a, 400, "malformed request line");
        return;
    }
    *target++ = '\0';
    version = strchr(target, ' ');
    if (!version || strncmp(version + 1, "HTTP/1.", 7) != 0) {
        http_fail(a, 400, "malformed request line");
        return;
    }
    *version = '\0';
    head_only = strcmp(method, "HEAD") == 0;
    if (!head_only && strcmp(method, "GET") != 0) {
        http_fail(a, 405, "only GET and HEAD");
        return;
    }
    if ((q = strchr(target, '?')) != NULL)
        *q = '\0';
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        if (strcmp(target, routes[i].path) != 0)
            continue;
        ans.body = evbuffer_new();
        if (!ans.body) {
            admin_close(a, "out of memory");
            return;
        }
        routes[i].handler(a->ops, &ans);
        http_send(a, &ans, head_only);
        evbuffer_free(ans.body);
        return;
    }
    http_fail(a, 404, "not found; try /metrics, /stats, /n1, /queries or /healthz");
}

void http_input(AdminConn *a)
{
    const char *head = (const char *)iobuf_data(&a->io.in);
    size_t have = iobuf_len(&a->io.in);
    const char *end = have ? memmem(head, have, "\r\n\r\n", 4) : NULL;
    const char *lf = have ? memmem(head, have, "\n\n", 2) : NULL;
    const char *nl;
    char line[1024];
    size_t eol;

    /* The head ends at the first blank line, CRLF or bare LF: not at a later
     * CRLF one, which would make the answer depend on how the bytes arrived. */
    if (!end || (lf && lf < end))
        end = lf;
    if (!end) {
        /* Not yet: the last 3 bytes may begin a "\r\n\r\n" at the limit. */
        if (have > HTTP_MAX_HEAD + 3)
            http_fail(a, 431, "request head too large");
        return;
    }
    if ((size_t)(end - head) > HTTP_MAX_HEAD) {
        http_fail(a, 431, "request head too large");
        return;
    }
    /* the request line ends at its LF, or at the CR before it */
    nl = memchr(head, '\n', have);
    eol = (size_t)(nl - head);
    if (eol > 0 && head[eol - 1] == '\r')
        eol--;
    if (eol >= sizeof(line)) {
        http_fail(a, 400, "request line missing or too long");
        return;
    }
    memcpy(line, head, eol);
    line[eol] = '\0';
    iobuf_drain(&a->io.in, iobuf_len(&a->io.in));
    http_request(a, line);
}
