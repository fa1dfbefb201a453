/*
 * N+1 batching, the pure parts: the batched statement built from a child
 * statement's text, the key array it is bound with, and the cutting of its
 * answer back into the single statements' answers. No I/O here; the
 * daemon (daemon/batch.c) decides when to batch and relays the messages.
 *
 * The batched statement (DESIGN.md "Batching"):
 *
 *   SELECT pgc_k.pgc_ord, pgc_s.*
 *   FROM unnest($N::KEYTYPE[]) WITH ORDINALITY AS pgc_k(pgc_val, pgc_ord)
 *   CROSS JOIN LATERAL (<child, its key replaced by pgc_k.pgc_val>) AS pgc_s
 *   ORDER BY pgc_k.pgc_ord
 *
 * The child text is the client's own (not the normalised one), so every
 * other literal keeps the type PostgreSQL gives it in the single statement,
 * and an extended-protocol child keeps its other $n, bound with the
 * client's values; $N is one past the highest $n of the child. The LATERAL
 * (fenced by OFFSET 0 when the child has no LIMIT/OFFSET, so that it stays a
 * subquery run once per key) keeps the child's ORDER BY, LIMIT, DISTINCT and
 * aggregates per key, and its rows in the order the child alone gives; the
 * ordinality column is ordered by construction, so PostgreSQL runs a nested
 * loop over the keys in their order with no sort, each key's rows in the
 * child's own order. The prefixed names keep the child's own aliases (a
 * table called k or s) from capturing the key.
 */
#ifndef PGC_ORM_BATCH_H
#define PGC_ORM_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "orm/shape.h"

/*
 * The SQL name of a key type (a ParameterDescription OID), or NULL when
 * batching does not support it: the integer, text-like, uuid, numeric,
 * boolean, date and time types of pg_catalog.
 */
const char *batch_type_name(uint32_t oid);

/*
 * The batched statement for child text sql[0..len), whose key is the value
 * of lit (from shape_normalize of the same text: an inline literal or a
 * $n), as a NUL-terminated malloc'd string in *out. array_param is N of
 * $N, the key array. fence appends OFFSET 0 to the child (give it when the
 * child has no LIMIT or OFFSET of its own): PostgreSQL would otherwise pull
 * a simple child up into a join with the keys, hash it and sort by the
 * ordinality, which keeps no order within a key. Only the statement goes in, without the ";" or
 * empty statements around it. Returns false when out of memory or when the text cannot be
 * wrapped (a $n key written more than once, or more than one statement).
 */
bool batch_sql(const char *sql, size_t len, const ShapeLit *lit, uint32_t array_param,
               const char *type_name, bool fence, char **out);

/* The text form of a binary uuid (16 bytes) into out (37 bytes); returns 36. */
size_t batch_uuid_text(const uint8_t *v, char *out);

/*
 * Append one key (len -1: NULL) to an array literal under construction in buf (cap bytes,
 * *used so far; start with *used = 0 and finish with batch_array_end).
 * v/len is the key as the parent's result gave it; binary says it came in
 * binary format (then written as the key type's text: integers of 2, 4 or
 * 8 bytes, uuid, bool and text types; anything else is refused).
 * Returns false when the value cannot be written as this key type's text
 * or buf is full.
 */
bool batch_array_add(char *buf, size_t cap, size_t *used, uint32_t type_oid, const uint8_t *v,
                     int len, bool binary);
/* Close the literal ("{}" when empty); false when buf is full. */
bool batch_array_end(char *buf, size_t cap, size_t *used);

/*
 * One DataRow body of the batched statement: its ordinality (column 0, in
 * text or binary int8) into *ord and the rest of the row, as the single
 * statement's DataRow body would be, written to out (the column count one
 * less, then the other columns' bytes as they came). out needs len bytes.
 * Returns the length written, or -1 for a malformed row.
 */
int64_t batch_cut_row(const uint8_t *body, size_t len, bool ord_binary, int64_t *ord, uint8_t *out);

/*
 * The batched statement's RowDescription body without its first field, as
 * the single statement's would be, into out (len bytes are enough).
 * Returns the length written, or -1 for a malformed message.
 */
int64_t batch_cut_rowdesc(const uint8_t *body, size_t len, uint8_t *out);

#endif
