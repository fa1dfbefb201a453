/* Bookkeeping of prepared statements: registry, client names, server LRUs. */
#include "daemon/prepared.h"
#include "orm/session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    while (n--)
        h = (h ^ *p++) * 1099511628211ULL;
    return h;
}

/* Grow a chained hash table to twice its size when count reaches it. */
#define REHASH(m, type, hashof)                                                                    \
    do {                                                                                           \
        size_t nb_ = (m)->nbuckets ? (m)->nbuckets * 2 : 16;                                       \
        type **b_ = calloc(nb_, sizeof(*b_));                                                      \
        if (!b_)                                                                                   \
            break;                                                                                 \
        for (size_t i_ = 0; i_ < (m)->nbuckets; i_++) {                                            \
            type *e_ = (m)->buckets[i_], *n_;                                                      \
            for (; e_; e_ = n_) {                                                                  \
                n_ = e_->next;                                                                     \
                size_t k_ = (size_t)(hashof(e_)) & (nb_ - 1);                                      \
                e_->next = b_[k_];                                                                 \
                b_[k_] = e_;                                                                       \
            }                                                                                      \
        }                                                                                          \
        free((m)->buckets);                                                                        \
        (m)->buckets = b_;                                                                         \
        (m)->nbuckets = nb_;                                                                       \
    } while (0)

void ps_registry_init(PsRegistry *r)
{
    memset(r, 0, sizeof(*r));
    r->next_id = 1;
}

void ps_registry_free(PsRegistry *r)
{
    for (size_t i = 0; i < r->nbuckets; i++) {
        PreparedStmt *ps = r->buckets[i], *next;
        for (; ps; ps = next) {
            next = ps->next;
            orm_shape_cache_free(ps->orm);
            free(ps->body);
            free(ps);
        }
    }
    free(r->buckets);
    memset(r, 0, sizeof(*r));
}

#define PS_HASH(e) ((e)->hash)

PreparedStmt *ps_intern(PsRegistry *r, const uint8_t *body, size_t len)
{
    uint64_t h = fnv1a(body, len);
    PreparedStmt *ps;

    if (r->nbuckets) {
        for (ps = r->buckets[h & (r->nbuckets - 1)]; ps; ps = ps->next)
            if (ps->hash == h && ps->body_len == len && memcmp(ps->body, body, len) == 0) {
                ps->refs++;
                return ps;
            }
    }
    if (r->count >= r->nbuckets)
        REHASH(r, PreparedStmt, PS_HASH);
    if (!r->nbuckets)
        return NULL;
    ps = calloc(1, sizeof(*ps));
    if (!ps)
        return NULL;
    ps->body = malloc(len ? len : 1);
    if (!ps->body) {
        free(ps);
        return NULL;
    }
    memcpy(ps->body, body, len);
    ps->body_len = len;
    ps->hash = h;
    ps->id = r->next_id++;
    snprintf(ps->server_name, sizeof(ps->server_name), "pgc_%llu", (unsigned long long)ps->id);
    ps->refs = 1;
    ps->session = session_state_sql((const char *)body, strnlen((const char *)body, len));
    ps->next = r->buckets[h & (r->nbuckets - 1)];
    r->buckets[h & (r->nbuckets - 1)] = ps;
    r->count++;
    return ps;
}

void ps_ref(PreparedStmt *ps)
{
    ps->refs++;
}

void ps_unref(PsRegistry *r, PreparedStmt *ps)
{
    PreparedStmt **pp;

    if (--ps->refs > 0)
        return;
    for (pp = &r->buckets[ps->hash & (r->nbuckets - 1)]; *pp; pp = &(*pp)->next) {
        if (*pp == ps) {
            *pp = ps->next;
            r->count--;
            break;
        }
    }
    orm_shape_cache_free(ps->orm);
    free(ps->body);
    free(ps);
}

void client_stmts_init(ClientStmts *m)
{
    memset(m, 0, sizeof(*m));
}

static uint64_t name_hash(const char *name)
{
    return fnv1a((const uint8_t *)name, strlen(name));
}

#define CS_HASH(e) name_hash((e)->name)

void client_stmts_clear(ClientStmts *m, PsRegistry *r)
{
    for (size_t i = 0; i < m->nbuckets; i++) {
        ClientStmt *e = m->buckets[i], *next;
        for (; e; e = next) {
            next = e->next;
            ps_unref(r, e->ps);
            free(e);
        }
    }
    free(m->buckets);
    memset(m, 0, sizeof(*m));
}

static ClientStmt **client_stmts_slot(const ClientStmts *m, const char *name)
{
    ClientStmt **pp;

    if (!m->nbuckets)
        return NULL;
    for (pp = &m->buckets[name_hash(name) & (m->nbuckets - 1)]; *pp; pp = &(*pp)->next)
        if (strcmp((*pp)->name, name) == 0)
            return pp;
    return NULL;
}

PreparedStmt *client_stmts_get(const ClientStmts *m, const char *name)
{
    ClientStmt **pp = client_stmts_slot(m, name);
    return pp ? (*pp)->ps : NULL;
}

bool client_stmts_put(ClientStmts *m, PsRegistry *r, const char *name, PreparedStmt *ps)
{
    ClientStmt **pp = client_stmts_slot(m, name);
    ClientStmt *e;
    size_t k;

    if (pp) {
        ps_ref(ps);
        ps_unref(r, (*pp)->ps);
        (*pp)->ps = ps;
        return true;
    }
    if (m->count >= m->nbuckets)
        REHASH(m, ClientStmt, CS_HASH);
    if (!m->nbuckets)
        return false;
    e = malloc(sizeof(*e) + strlen(name) + 1);
    if (!e)
        return false;
    strcpy(e->name, name);
    e->ps = ps;
    ps_ref(ps);
    k = name_hash(name) & (m->nbuckets - 1);
    e->next = m->buckets[k];
    m->buckets[k] = e;
    m->count++;
    return true;
}

void client_stmts_del(ClientStmts *m, PsRegistry *r, const char *name, PreparedStmt *ps)
{
    ClientStmt **pp = client_stmts_slot(m, name), *e;

    if (!pp || (ps && (*pp)->ps != ps))
        return;
    e = *pp;
    *pp = e->next;
    m->count--;
    ps_unref(r, e->ps);
    free(e);
}

void server_stmts_init(ServerStmts *m)
{
    m->buckets = NULL;
    m->nbuckets = 0;
    list_init(&m->lru);
}

void server_stmts_clear(ServerStmts *m, PsRegistry *r)
{
    ListNode *n;

    while ((n = list_first(&m->lru)) != NULL) {
        ServerStmt *e = container_of(n, ServerStmt, lru);
        list_remove(&m->lru, n);
        ps_unref(r, e->ps);
        free(e);
    }
    free(m->buckets);
    server_stmts_init(m);
}

static ServerStmt **server_stmts_slot(const ServerStmts *m, const PreparedStmt *ps)
{
    ServerStmt **pp;

    if (!m->nbuckets)
        return NULL;
    for (pp = &m->buckets[ps->id & (m->nbuckets - 1)]; *pp; pp = &(*pp)->next)
        if ((*pp)->ps == ps)
            return pp;
    return NULL;
}

bool server_stmts_has(ServerStmts *m, PreparedStmt *ps)
{
    ServerStmt **pp = server_stmts_slot(m, ps);

    if (!pp)
        return false;
    list_remove(&m->lru, &(*pp)->lru);
    list_append(&m->lru, &(*pp)->lru);
    return true;
}

#define SS_HASH(e) ((e)->ps->id)

bool server_stmts_add(ServerStmts *m, PsRegistry *r, PreparedStmt *ps)
{
    ServerStmt *e;
    size_t k;

    if (server_stmts_has(m, ps))
        return true;
    if ((size_t)m->lru.count >= m->nbuckets)
        REHASH(m, ServerStmt, SS_HASH);
    if (!m->nbuckets)
        return false;
    e = malloc(sizeof(*e));
    if (!e)
        return false;
    e->ps = ps;
    ps_ref(ps);
    k = ps->id & (m->nbuckets - 1);
    e->next = m->buckets[k];
    m->buckets[k] = e;
    list_append(&m->lru, &e->lru);
    return true;
}

void server_stmts_del(ServerStmts *m, PsRegistry *r, PreparedStmt *ps)
{
    ServerStmt **pp = server_stmts_slot(m, ps), *e;

    if (!pp)
        return;
    e = *pp;
    *pp = e->next;
    list_remove(&m->lru, &e->lru);
    ps_unref(r, e->ps);
    free(e);
}

PreparedStmt *server_stmts_oldest(const ServerStmts *m)
{
    ListNode *n = list_first(&m->lru);
    return n ? container_of(n, ServerStmt, lru)->ps : NULL;
}
