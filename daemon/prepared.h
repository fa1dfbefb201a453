/*
 * Named prepared statements in transaction mode. Every distinct statement
 * (query text + parameter types) gets one proxy-wide server-side name; each
 * client keeps its own names mapped onto those; each server connection
 * keeps a bounded LRU of the statements it has prepared.
 */
#ifndef PGC_DAEMON_PREPARED_H
#define PGC_DAEMON_PREPARED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/list.h"

/* Server-side names are "pgc_" + up to 20 digits. */
#define PS_SERVER_NAME_LEN 32

typedef struct PreparedStmt {
    struct PreparedStmt *next; /* registry hash chain */
    uint64_t hash;
    uint64_t id;
    char server_name[PS_SERVER_NAME_LEN];
    /* The Parse body after the statement name: query\0 int16 n, int32 oids[n]. */
    uint8_t *body;
    size_t body_len;
    int refs;                  /* client names + server entries + queued items */
    struct OrmShapeCache *orm; /* the ORM layer's shape of the text, from its first Bind; or NULL */
    const char *session;       /* session state its text leaves (orm/session.h), or NULL */
} PreparedStmt;

/* daemon/orm_feed.c: frees PreparedStmt.orm. */
void orm_shape_cache_free(struct OrmShapeCache *cache);

/* All statements of one worker, found by content. */
typedef struct PsRegistry {
    PreparedStmt **buckets;
    size_t nbuckets;
    size_t count;
    uint64_t next_id;
} PsRegistry;

/* A client's statement names. */
typedef struct ClientStmt {
    struct ClientStmt *next;
    PreparedStmt *ps;
    char name[];
} ClientStmt;

typedef struct ClientStmts {
    ClientStmt **buckets;
    size_t nbuckets;
    size_t count;
} ClientStmts;

/* One statement prepared on one server connection. */
typedef struct ServerStmt {
    struct ServerStmt *next; /* hash chain */
    ListNode lru;            /* most recently used at the tail */
    PreparedStmt *ps;
} ServerStmt;

typedef struct ServerStmts {
    ServerStmt **buckets;
    size_t nbuckets;
    List lru;
} ServerStmts;

void ps_registry_init(PsRegistry *r);
void ps_registry_free(PsRegistry *r);
/* Find or create the statement for a Parse body tail; NULL on OOM. Takes a reference. */
PreparedStmt *ps_intern(PsRegistry *r, const uint8_t *body, size_t len);
void ps_ref(PreparedStmt *ps);
void ps_unref(PsRegistry *r, PreparedStmt *ps);

void client_stmts_init(ClientStmts *m);
/* Drop every name (DEALLOCATE ALL, disconnect). */
void client_stmts_clear(ClientStmts *m, PsRegistry *r);
PreparedStmt *client_stmts_get(const ClientStmts *m, const char *name);
/* Map name to ps (replacing any previous mapping); takes its own reference. */
bool client_stmts_put(ClientStmts *m, PsRegistry *r, const char *name, PreparedStmt *ps)
    __attribute__((warn_unused_result));
/* Remove name if it maps to ps (or to anything when ps is NULL). */
void client_stmts_del(ClientStmts *m, PsRegistry *r, const char *name, PreparedStmt *ps);

void server_stmts_init(ServerStmts *m);
void server_stmts_clear(ServerStmts *m, PsRegistry *r);
/* True (and marked most recently used) when ps is prepared there. */
bool server_stmts_has(ServerStmts *m, PreparedStmt *ps);
bool server_stmts_add(ServerStmts *m, PsRegistry *r, PreparedStmt *ps)
    __attribute__((warn_unused_result));
void server_stmts_del(ServerStmts *m, PsRegistry *r, PreparedStmt *ps);
/* The least recently used statement, to evict when over the limit. */
PreparedStmt *server_stmts_oldest(const ServerStmts *m);
static inline int server_stmts_count(const ServerStmts *m)
{
    return m->lru.count;
}

#endif
