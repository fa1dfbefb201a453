/*
 * What the identity-map cache must know about a table before caching reads
 * of it, asked of the catalog once per (pool, table name) through a
 * non-blocking libpq connection of the pool's own (never on an event loop
 * blocking call): its OID, its primary key's columns and their types, and
 * whether it may be cached at all (an ordinary or partitioned table, not
 * temporary or unlogged, no row-level security, not a system catalog, a
 * primary key of supported types: orm/cache_key.h).
 *
 * Names are resolved as the pool's server connections resolve them: with
 * the search_path the pool's user gets on login (clients that change it
 * bypass the cache, daemon/cache.c). Answers are kept CATALOG_TTL seconds
 * (a "no such table" too), and forgotten at once on DDL the proxy sees.
 */
#ifndef PGC_DAEMON_CATALOG_H
#define PGC_DAEMON_CATALOG_H

#include <stdbool.h>
#include <stdint.h>

#include "orm/cache_key.h"

struct Pool;

#define CATALOG_TTL       60.0 /* seconds a table's facts are trusted */
#define CATALOG_NAME_MAX  64   /* NAMEDATALEN */
#define CATALOG_MAX_QUEUE 256  /* tables waiting for their lookup; more are looked up later */

typedef struct TableInfo {
    uint32_t oid;    /* 0: no such table */
    bool cacheable;  /* the cache may hold reads of it */
    char reason[96]; /* why not, "" when cacheable */
    int npk;         /* primary key columns, in the key's order */
    char pk_name[CACHE_KEY_COLS][CATALOG_NAME_MAX];
    uint32_t pk_type[CACHE_KEY_COLS];
} TableInfo;

typedef struct Catalog Catalog;

typedef struct CatalogStats {
    uint64_t lookups;  /* catalog queries answered */
    uint64_t failures; /* connection or query failures */
    uint64_t tables;   /* entries held now */
    bool connected;
    char last_error[160];
} CatalogStats;

/* The catalog of pool p (one connection, opened at the first lookup); NULL when out of memory. */
Catalog *catalog_new(struct Pool *p);
void catalog_free(Catalog *cat);

/*
 * The facts about table schema.name (schema NULL: as search_path finds it),
 * names as PostgreSQL's parser has them (already folded: this quotes them).
 * Returns NULL while they are not known yet, and then starts (or keeps
 * waiting for) a lookup; the caller bypasses the cache meanwhile. The
 * pointer is valid until the next call on cat.
 */
const TableInfo *catalog_table(Catalog *cat, const char *schema, const char *name);

/*
 * Whether the pool's sessions start at READ COMMITTED
 * (default_transaction_isolation, as the pool's user gets it on login):
 * 1 yes, 0 no, -1 not known yet (asked with the first lookup).
 */
int catalog_read_committed(Catalog *cat);

/* DDL seen: forget everything (the next reads look again). */
void catalog_forget_all(Catalog *cat);

void catalog_stats(const Catalog *cat, CatalogStats *out);

#endif
