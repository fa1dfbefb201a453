/*
 * Relaying a server's answers to its client. The response queue records
 * what the server still owes; it lets the proxy hide the answers to its own
 * messages (parameter sync, hidden Parse/Close, reset, pre-ping) and give
 * the client answers the server never sees (ParseComplete for a statement
 * the backend already has), each at the right place in the stream.
 */
#include "daemon/log.h"
#include "daemon/cache.h"
#include "daemon/orm_feed.h"
#include "daemon/worker.h"
#include "proto/msg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

bool rq_push(Server *s, RqKind kind, PreparedStmt *ps, const char *client_name)
{
    RqItem *it;

    if (s->rq_len == s->rq_cap) {
        uint32_t ncap = s->rq_cap ? s->rq_cap * 2 : 8;
        RqItem *n = malloc(sizeof(*n) * ncap);
        if (!n)
            return false;
        for (uint32_t i = 0; i < s->rq_len; i++)
            n[i] = s->rq[(s->rq_head + i) % s->rq_cap];
        free(s->rq);
        s->rq = n;
        s->rq_cap = ncap;
        s->rq_head = 0;
    }
    it = &s->rq[(s->rq_head + s->rq_len) % s->rq_cap];
    it->kind = kind;
    it->flags = 0;
    it->n1 = 0;
    it->ps = ps;
    it->client_name = NULL;
    if (client_name) {
        it->client_name = strdup(client_name);
        if (!it->client_name)
            return false;
    }
    if (ps)
        ps_ref(ps);
    s->rq_len++;
    return true;
}

/* Drop the head item, leaving its strings and reference to the caller's copy. */
static void rq_pop_keep(Server *s)
{
    RqItem *it = &s->rq[s->rq_head];

    if (it->ps)
        ps_unref(&s->w->prepared, it->ps);
    s->rq_head = (s->rq_head + 1) % s->rq_cap;
    s->rq_len--;
}

static void rq_pop(Server *s)
{
    free(s->rq[s->rq_head].client_name);
    rq_pop_keep(s);
}

void rq_pop_head(Server *s)
{
    rq_pop(s);
}

void rq_clear(Server *s)
{
    while (s->rq_len > 0)
        rq_pop(s);
}

/* The item at the head got an error, or was skipped after one: a Parse that
 * never happened leaves neither the backend nor the client a statement. */
static void rq_pop_failed(Server *s)
{
    RqItem *it = rq_head(s);

    if (it->ps && (it->kind == RQ_PARSE || it->kind == RQ_HIDDEN_PARSE)) {
        server_stmts_del(&s->stmts, &s->w->prepared, it->ps);
        if (it->client_name && s->client)
            client_stmts_del(&s->client->stmts, &s->w->prepared, it->client_name, it->ps);
    }
    rq_pop(s);
}

/* Answers to the proxy's own simple queries, read whole and swallowed.
 * Returns true when relaying may go on with s still linked and usable. */
static bool server_internal_input(Server *s)
{
    char type;
    const uint8_t *body;
    uint32_t len;
    int rc;
    char id[64];

    while (rq_head(s) && rq_head(s)->kind == RQ_INTERNAL &&
           (rc = server_whole_message(s, &type, &body, &len)) != 0) {
        ProtoError e;

        if (rc < 0) {
            server_close(s, "malformed message from server");
            return false;
        }
        switch (type) {
        case 'S':
            /* The client hears the values the proxy set for it: after a
             * RESET it was last told the backend's defaults. */
            server_note_param(s, body, len);
            if (s->client)
                io_send(&s->client->io, body - PROTO_HDR_LEN, PROTO_HDR_LEN + len);
            break;
        case 'E':
            s->internal_error = true;
            if (proto_parse_error(body, len, &e) && e.message) {
                snprintf(id, sizeof(id), "S-%p", (void *)s);
                log_warning("%s internal query failed: %s", id, e.message);
            }
            break;
        case 'Z':
            s->tx_status = len >= 1 ? (char)body[0] : 'I';
            rq_pop(s);
            break;
        default:
            break;
        }
        iobuf_drain(&s->io.in, PROTO_HDR_LEN + len);
    }
    if (rq_head(s) && rq_head(s)->kind == RQ_INTERNAL)
        return false; /* need more bytes */
    if (s->internal_error) {
        s->internal_error = false;
        server_close(s, "the proxy's reset, pre-ping or SET query failed");
        return false;
    }
    if (s->state == SV_TESTING) {
        if (s->tx_status != 'I') {
            server_close(s, "still in a transaction after reset");
            return false;
        }
        pool_server_ready(s);
        return false;
    }
    return true;
}

void server_idle_input(Server *s)
{
    char type;
    const uint8_t *body;
    uint32_t len;
    int rc;

    while ((rc = server_whole_message(s, &type, &body, &len)) != 0) {
        ProtoError e;
        if (rc < 0 || (type != 'S' && type != 'N' && type != 'A')) {
            const char *why = "unexpected data from idle server";
            if (rc > 0 && type == 'E' && proto_parse_error(body, len, &e) && e.message)
                why = e.message;
            if (s->pool->w->cfg->pool_pre_ping) {
                s->pool->stats.ping_failures++;
                s->pool->last_failure = now_sec();
            }
            server_close(s, why);
            return;
        }
        if (type == 'S')
            server_note_param(s, body, len);
        iobuf_drain(&s->io.in, PROTO_HDR_LEN + len);
    }
}

/* May the server go back to the pool after this ReadyForQuery? */
bool server_releasable(const Server *s)
{
    return s->pool->mode == POOL_TRANSACTION && s->tx_status == 'I' && s->rq_len == 0 &&
           !s->dirty && !s->copy_in;
}

/* After the transaction ended: unlink, let the client carry on with what it
 * already sent, and give the server back. */
void server_end_of_transaction(Server *s)
{
    Client *c = s->client;

    s->pool->stats.xact_count++;
    pool_release(s);
    if (c)
        client_resume(c);
}

/* Has rq_settle anything to do? (It runs before every server message.) */
static inline bool rq_settle_due(const Server *s)
{
    const RqItem *it = rq_head(s);

    return it && (s->skip_until_sync || it->kind == RQ_FAKE_PARSE || it->kind == RQ_FAKE_CLOSE ||
                  it->kind == RQ_FAKE_DEALLOCATE);
}

/*
 * Deal with the head of the queue when it needs no server message: answers
 * the proxy owes (sent after *fwd bytes of server output are passed on) and
 * items the server skips after an error. Returns true if it wrote anything
 * to the client or drained input (the caller's cursor is then stale).
 */
static bool rq_settle(Server *s, size_t *fwd)
{
    bool moved = false;
    RqItem *it;

    while ((it = rq_head(s)) != NULL) {
        PktBuf *b;
        if (s->skip_until_sync && it->kind != RQ_SYNC && it->kind != RQ_QUERY &&
            it->kind != RQ_INTERNAL) {
            rq_pop_failed(s);
            continue;
        }
        if (it->kind != RQ_FAKE_PARSE && it->kind != RQ_FAKE_CLOSE &&
            it->kind != RQ_FAKE_DEALLOCATE)
            break;
        if (*fwd > 0) {
            io_forward(&s->client->io, &s->io.in, *fwd);
            *fwd = 0;
        }
        b = worker_pkt(s->w);
        if (it->kind == RQ_FAKE_DEALLOCATE) {
            pkt_command_complete(b, "DEALLOCATE");
            pkt_ready(b, s->tx_status);
        } else {
            pkt_begin(b, it->kind == RQ_FAKE_PARSE ? '1' : '3');
            pkt_end(b);
        }
        io_send(&s->client->io, b->data, b->len);
        rq_pop(s);
        moved = true;
    }
    return moved;
}

void server_settle(Server *s)
{
    size_t fwd = 0;

    if (!s->client || s->pkt_left != 0 || s->rq_len == 0)
        return;
    /* A transaction answered wholly by the proxy (DEALLOCATE of the
     * client's own statement) ends here, as a real ReadyForQuery would. */
    if (rq_settle_due(s) && rq_settle(s, &fwd) && server_releasable(s))
        server_end_of_transaction(s);
}

/*
 * A client's RESET or DISCARD ALL finished. The backend now has its own
 * defaults, not the client's startup values: forget what the proxy had set
 * there, bring the client's expectations back to its startup values, and
 * re-apply them at once if the server stays with this client.
 */
static void server_after_reset(Server *s, Client *c, const RqItem *it)
{
    Pool *p = s->pool;
    const char *v;
    bool ok = true;

    if (it->flags & RQ_RESET_ALL) {
        for (int i = s->params.n - 1; i >= 0; i--)
            if (!params_get(&p->welcome, s->params.v[i].name))
                params_remove(&s->params, s->params.v[i].name);
        ok = params_assign(&c->params, &p->welcome) && params_copy(&c->params, &c->startup);
    } else if (it->client_name) {
        if (!params_get(&p->welcome, it->client_name))
            params_remove(&s->params, it->client_name);
        v = params_get(&c->startup, it->client_name);
        if (!v)
            v = params_get(&p->welcome, it->client_name);
        if (v)
            ok = params_set(&c->params, it->client_name, v);
        else
            params_remove(&c->params, it->client_name);
    }
    if (!ok) {
        server_close(s, "out of memory");
        return;
    }
    if (!server_releasable(s))
        server_sync_params(s, c);
}

/* Is the CommandComplete tag one after which the backend has no prepared statements? */
static bool tag_drops_statements(const uint8_t *tag, uint32_t len)
{
    return (len >= 12 && strncasecmp((const char *)tag, "DISCARD ALL", 11) == 0) ||
           (len >= 15 && strncasecmp((const char *)tag, "DEALLOCATE ALL", 14) == 0);
}

void server_relay(Server *s)
{
    Client *c = s->client;
    IoCursor cur;
    size_t fwd = 0;
    uint8_t hdr[PROTO_HDR_LEN + 1];
    char type;
    uint32_t len;

    if (rq_head(s) && rq_head(s)->kind == RQ_INTERNAL && !server_internal_input(s))
        return;
    if (!c) {
        server_idle_input(s);
        return;
    }
    io_cursor_init(&cur, &s->io.in);
    for (;;) {
        RqItem *head;
        bool swallow = false;

        if (s->pkt_left > 0) {
            size_t n = io_cursor_left(&cur);
            if (n == 0)
                break;
            if (n > s->pkt_left)
                n = s->pkt_left;
            io_cursor_skip(&cur, n);
            fwd += n;
            s->pkt_left -= (uint32_t)n;
            continue;
        }
        if (rq_settle_due(s) && rq_settle(s, &fwd)) {
            io_cursor_init(&cur, &s->io.in);
            io_cursor_skip(&cur, fwd);
        }
        if (batch_item(rq_head(s))) {
            /* The proxy's batched statement for the client's N+1 loop. */
            if (fwd > 0) {
                io_forward(&c->io, &s->io.in, fwd);
                fwd = 0;
            }
            if (!batch_server_input(s) || s->client != c)
                return;
            io_cursor_init(&cur, &s->io.in);
            continue;
        }
        if (cache_item(rq_head(s))) {
            /* The client's statement run by the cache for a fill. */
            if (fwd > 0) {
                io_forward(&c->io, &s->io.in, fwd);
                fwd = 0;
            }
            if (!cache_server_input(s) || s->client != c)
                return;
            io_cursor_init(&cur, &s->io.in);
            continue;
        }
        if (rq_head(s) && rq_head(s)->kind == RQ_INTERNAL) {
            /* The proxy's own query queued behind the client's (a re-sync
             * after RESET): its answers are swallowed. */
            if (fwd > 0) {
                io_forward(&c->io, &s->io.in, fwd);
                fwd = 0;
            }
            if (!server_internal_input(s) || s->client != c)
                return;
            io_cursor_init(&cur, &s->io.in);
            continue;
        }
        if (!io_cursor_peek(&cur, hdr, PROTO_HDR_LEN))
            break;
        if (proto_frame_header(hdr, 0x7fffffff - PROTO_HDR_LEN, &type, &len) != FRAME_OK) {
            server_close(s, "malformed message from server");
            return;
        }
        head = rq_head(s);
        /* The ORM layer follows this answer: before the switch pops the item. */
        if (head && orm_follows(head, type) && !orm_server_message(s, type, len, &cur, &fwd))
            goto out;
        switch (type) {
        case 'Z':
            if (!io_cursor_peek(&cur, hdr, PROTO_HDR_LEN + 1))
                goto out;
            if (c->cache && cache_commit_hold(c, (char)hdr[PROTO_HDR_LEN])) {
                /* The commit's cache invalidations must be in Redis before the
                 * client hears of it; cache.c relays again once they are. */
                s->pool->stats.bytes_out += fwd;
                io_forward(&c->io, &s->io.in, fwd);
                io_read(&s->io, false);
                return;
            }
            s->tx_status = (char)hdr[PROTO_HDR_LEN];
            stats_query_end(s);
            s->skip_until_sync = false;
            if (head && head->flags && s->tx_status != 'E') {
                RqItem done = *head;
                rq_pop_keep(s);
                server_after_reset(s, c, &done);
                free(done.client_name);
                if (s->state == SV_CLOSING)
                    return;
            } else if (head) {
                rq_pop(s);
            }
            if (server_releasable(s)) {
                fwd += PROTO_HDR_LEN + len;
                s->pool->stats.bytes_out += fwd;
                io_forward(&c->io, &s->io.in, fwd);
                server_end_of_transaction(s);
                return;
            }
            break;
        case '1':
        case '3':
            if (head && (head->kind == RQ_HIDDEN_PARSE || head->kind == RQ_HIDDEN_CLOSE))
                swallow = true;
            if (head)
                rq_pop(s);
            break;
        case '2':
        case 'n':
        case 'I':
        case 's':
            if (head && head->kind != RQ_QUERY)
                rq_pop(s);
            break;
        case 'C':
            if (len <= 64 && s->stmts.lru.count > 0) {
                const uint8_t *tag = io_cursor_span(&cur, PROTO_HDR_LEN, len);
                if (!tag)
                    goto out;
                if (tag_drops_statements(tag, len))
                    server_stmts_clear(&s->stmts, &s->w->prepared);
            }
            if (head && head->kind == RQ_EXECUTE)
                rq_pop(s);
            break;
        case 'T':
            if (head && head->kind == RQ_DESCRIBE)
                rq_pop(s);
            break;
        case 'E':
            if (head && head->kind == RQ_PARSE_DUP) {
                /* The server refused a duplicate of pgc_N; the client hears
                 * of its own name, as PostgreSQL would have said it. */
                PktBuf *b;
                if (io_cursor_left(&cur) < PROTO_HDR_LEN + len)
                    goto out;
                if (fwd > 0) {
                    io_forward(&c->io, &s->io.in, fwd);
                    fwd = 0;
                }
                b = worker_pkt(s->w);
                pkt_error(b, "ERROR", "42P05", "prepared statement \"%s\" already exists",
                          head->client_name ? head->client_name : "");
                io_send(&c->io, b->data, b->len);
                rq_pop(s);
                s->skip_until_sync = true;
                iobuf_drain(&s->io.in, PROTO_HDR_LEN + len);
                io_cursor_init(&cur, &s->io.in);
                continue;
            }
            if (head && head->kind != RQ_QUERY) {
                rq_pop_failed(s);
                s->skip_until_sync = true;
            }
            break;
        case 'S': {
            const uint8_t *body;
            if (len <= 1024) {
                if (!(body = io_cursor_span(&cur, PROTO_HDR_LEN, len)))
                    goto out;
                server_note_param(s, body, len);
            }
            break;
        }
        case 'G':
        case 'W':
            s->copy_in = true;
            break;
        default:
            break;
        }
        if (swallow) {
            if (fwd > 0) {
                io_forward(&c->io, &s->io.in, fwd);
                fwd = 0;
            }
            iobuf_drain(&s->io.in, PROTO_HDR_LEN + len);
            io_cursor_init(&cur, &s->io.in);
            continue;
        }
        s->pkt_left = PROTO_HDR_LEN + len;
    }
out:
    s->pool->stats.bytes_out += fwd;
    io_forward(&c->io, &s->io.in, fwd);
    if (c->io.congested)
        io_read(&s->io, false); /* resumed when the client drains */
}

/* Queue one of the proxy's own simple queries. */
static bool server_internal_query(Server *s, PktBuf *b, const char *sql)
{
    pkt_query(b, sql);
    return rq_push(s, RQ_INTERNAL, NULL, NULL);
}

void server_ping(Server *s)
{
    PktBuf *b = worker_pkt(s->w);

    server_set_state(s, SV_TESTING);
    if (!server_internal_query(s, b, "")) {
        server_close(s, "out of memory");
        return;
    }
    server_send(s, b);
}

void server_reset(Server *s, bool discard_all)
{
    PktBuf *b = worker_pkt(s->w);
    bool ok = true;

    server_set_state(s, SV_TESTING);
    s->dirty = false;
    if (s->discard_on_release && s->pool->mode == POOL_TRANSACTION) {
        /* A transaction-mode client left a temp table, a SET of an
         * unreported parameter, a LISTEN, ... (orm/session.c): nobody
         * else may see it. The backend returns to its defaults: reported
         * parameters announce themselves again, the other values the proxy
         * had set there are forgotten. */
        discard_all = true;
        for (int i = s->params.n - 1; i >= 0; i--)
            if (!params_get(&s->pool->welcome, s->params.v[i].name))
                params_remove(&s->params, s->params.v[i].name);
        s->pool->stats.session_resets++;
    }
    s->discard_on_release = false;
    if (s->tx_status != 'I')
        ok = server_internal_query(s, b, "ROLLBACK");
    if (ok && discard_all) {
        ok = server_internal_query(s, b, "DISCARD ALL");
        server_stmts_clear(&s->stmts, &s->w->prepared);
    }
    if (!ok) {
        server_close(s, "out of memory");
        return;
    }
    if (s->rq_len == 0) {
        pool_server_ready(s);
        return;
    }
    server_send(s, b);
}

void server_sync_params(Server *s, Client *c)
{
    char *sql = NULL;
    int n;
    PktBuf *b;

    if (params_same(&s->params, &c->params))
        return;
    n = params_sync_sql(&s->params, &c->params, &sql);
    if (n < 0 || !params_assign(&s->params, &c->params)) {
        free(sql);
        server_close(s, "out of memory");
        return;
    }
    if (n == 0)
        return;
    b = worker_pkt(s->w);
    if (!server_internal_query(s, b, sql)) {
        free(sql);
        server_close(s, "out of memory");
        return;
    }
    free(sql);
    server_send(s, b);
}

bool server_ensure_prepared(Server *s, PreparedStmt *ps, const char *client_name)
{
    PktBuf *b;
    int limit = s->w->cfg->max_prepared_statements;

    if (server_stmts_has(&s->stmts, ps)) {
        if (client_name && !rq_push(s, RQ_FAKE_PARSE, NULL, NULL))
            goto oom;
        return true;
    }
    b = worker_pkt(s->w);
    /* Make room: close the least recently used statement on this backend. */
    while (server_stmts_count(&s->stmts) >= limit) {
        PreparedStmt *old = server_stmts_oldest(&s->stmts);
        pkt_begin(b, 'C');
        pkt_put_u8(b, 'S');
        pkt_put_str(b, old->server_name);
        pkt_end(b);
        if (!rq_push(s, RQ_HIDDEN_CLOSE, NULL, NULL))
            goto oom;
        server_stmts_del(&s->stmts, &s->w->prepared, old);
    }
    pkt_begin(b, 'P');
    pkt_put_str(b, ps->server_name);
    pkt_put_bytes(b, ps->body, ps->body_len);
    pkt_end(b);
    if (!server_stmts_add(&s->stmts, &s->w->prepared, ps) ||
        !rq_push(s, client_name ? RQ_PARSE : RQ_HIDDEN_PARSE, ps, client_name))
        goto oom;
    /* Leaves with the client's Bind/Describe that needed it (io_push). */
    server_queue(s, b);
    return s->state != SV_CLOSING;
oom:
    server_close(s, "out of memory");
    return false;
}
