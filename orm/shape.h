/*
 * Statement shapes: the hot-path lexer that turns one SQL text into its
 * normalised form (literals replaced by $n placeholders), a 64-bit hash of
 * that form, and the list of values it took out. No I/O, no allocation:
 * everything lands in a caller-provided ShapeBuf.
 *
 * Numbering. Every parameter of the statement gets a placeholder numbered in
 * order of appearance, $1, $2, ...: inline literals (simple protocol) and the
 * statement's own $n (extended protocol, Bind values) alike. So
 * "WHERE id = 5 LIMIT 21" (psycopg2) and "WHERE id = $1 LIMIT $2" (asyncpg)
 * have one shape. Each placeholder records where its value comes from: an
 * inline literal (offset, length and kind in the original text) or Bind
 * parameter k (ShapeLit.bind). A $k written twice gets two placeholders.
 *
 * Folding. "IN (v, v, ...)" and "ARRAY[v, v, ...]" whose elements are all
 * literals or $n (each optionally with one ::type cast, the same for all)
 * become one placeholder followed by SHAPE_LIST_MARK (a comment), e.g.
 * "in ($3" SHAPE_LIST_MARK ")": lists of any length share a shape and the
 * text still parses. Every element is extracted.
 *
 * Other rules, all decided here so that the shape is stable:
 *  - unquoted words are lower-cased (keywords and identifiers alike: both are
 *    case-insensitive in PostgreSQL); quoted identifiers stay as written;
 *  - comments are dropped; runs of whitespace and comments become one space,
 *    none after "(" or "[" nor before ")", "]" or ",";
 *  - TRUE, FALSE and NULL are literals except right after IS or NOT;
 *  - "-5" is one literal when the minus cannot be binary: at the start, or
 *    after an operator, "(", ",", "[" or an expression keyword (SELECT,
 *    WHERE, AND, OR, NOT, WHEN, THEN, ELSE, LIMIT, OFFSET, BETWEEN, ...),
 *    and only with the digits right after the minus;
 *  - DATE/TIME/TIMESTAMP/TIMESTAMPTZ/INTERVAL 'x' becomes $n::date etc. so
 *    that the text keeps parsing; 'x'::type keeps its cast as written;
 *  - a trailing ";" is dropped; inner ones stay and count statements;
 *  - $0 (no Bind parameter) is kept as written, not a value; $n above
 *    65535 is $65535; a placeholder never touches a word ("int $1");
 *  - strings follow standard_conforming_strings = on (the default since
 *    9.1); adjacent string constants split by a newline are two literals.
 */
#ifndef PGC_ORM_SHAPE_H
#define PGC_ORM_SHAPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What follows the placeholder of a folded list in the normalised text. */
#define SHAPE_LIST_MARK " /*, ... */"

/* Longest statement shaped; longer ones are SHAPE_TOO_LONG ("unknown"). */
#define SHAPE_MAX_SQL 32768
/* Normalised text capacity, NUL included; more is SHAPE_TOO_LONG. */
#define SHAPE_TEXT_CAP 32768
/* Values extracted from one statement (each list element counts). */
#define SHAPE_MAX_LITS 4096
/* Placeholders in one normalised statement. */
#define SHAPE_MAX_PARAMS 1024

typedef enum {
    SHAPE_OK = 0,
    SHAPE_EMPTY,        /* only whitespace, comments or ";" */
    SHAPE_TOO_LONG,     /* over SHAPE_MAX_SQL, SHAPE_TEXT_CAP, _LITS or _PARAMS */
    SHAPE_UNTERMINATED, /* a string, quoted identifier, comment or $$ never closed */
} ShapeStatus;

typedef enum {
    SHAPE_LIT_STRING = 0, /* 'abc' (also N'abc') */
    SHAPE_LIT_ESTRING,    /* E'a\'b' */
    SHAPE_LIT_USTRING,    /* U&'d\0061t' [UESCAPE 'c'] */
    SHAPE_LIT_DOLLAR,     /* $tag$ ... $tag$ */
    SHAPE_LIT_BITSTRING,  /* B'0101' or X'1F' */
    SHAPE_LIT_NUMBER,     /* 42, -1.5e3, .5, 0x1F, 1_000 */
    SHAPE_LIT_BOOL,       /* TRUE / FALSE */
    SHAPE_LIT_NULL,       /* NULL */
    SHAPE_LIT_BIND,       /* an extended-protocol $n: the value is Bind parameter n */
} ShapeLitKind;

/* One extracted value. off/len cover the whole token in the original text
 * (prefix, quotes and sign included; a dollar quote's tags included). */
typedef struct ShapeLit {
    uint32_t off;
    uint32_t len;
    uint16_t kind;  /* ShapeLitKind */
    uint16_t bind;  /* SHAPE_LIT_BIND: n of $n (1-based); else 0 */
    uint16_t param; /* placeholder number (1-based) it belongs to */
    uint16_t pad;
} ShapeLit;

#define SHAPE_PARAM_LIST  0x1 /* a folded IN (...) / ARRAY[...] list */
#define SHAPE_PARAM_TYPED 0x2 /* written TYPE 'x', shaped as $n::type */

/* Placeholder $k is params[k-1]: its values are lits[first .. first+n). */
typedef struct ShapeParam {
    uint32_t first;
    uint32_t n;
    uint32_t flags; /* SHAPE_PARAM_* */
} ShapeParam;

/*
 * The result of shape_normalize. Big (about 110 KiB): keep one per worker
 * and reuse it; nothing in it needs clearing between calls.
 */
typedef struct ShapeBuf {
    ShapeStatus status;
    uint64_t hash;     /* of text[0..text_len); 0 unless SHAPE_OK */
    uint32_t text_len; /* text is NUL-terminated */
    uint32_t nparams;
    uint32_t nlits;
    uint32_t nstmts;   /* statements in the text: > 1 means split with shape_split */
    uint32_t max_bind; /* highest $n written in the original, 0 if none */
    char text[SHAPE_TEXT_CAP];
    ShapeParam params[SHAPE_MAX_PARAMS];
    ShapeLit lits[SHAPE_MAX_LITS];
} ShapeBuf;

/* A parameter value as the protocol carries it: len -1 is NULL. */
typedef struct ShapeValue {
    const void *data;
    int32_t len;
} ShapeValue;

/* One statement of a multi-statement text: sql[off .. off+len), no ";". */
typedef struct ShapeSpan {
    uint32_t off;
    uint32_t len;
} ShapeSpan;

/* Hash of an SQL NULL value (never equal to the hash of any bytes). */
#define SHAPE_HASH_NULL 0x9e3779b97f4a7c15ULL

/*
 * Normalise sql[0..len) into out (see the rules at the top). Returns true
 * when out->status is SHAPE_OK; otherwise the statement's shape is unknown
 * and out holds only the status. Does not allocate; cost is linear in len.
 * A text that differs from one of the thread's recent statements only in
 * its integer literals takes that statement's result without the lexer
 * (orm/shape.c: templates), with the same output as the lexer's.
 */
__attribute__((warn_unused_result)) bool shape_normalize(const char *sql, size_t len,
                                                         ShapeBuf *out);
/*
 * The same without the fast lane (orm/shape.c: lex_run) nor templates,
 * every token through the general step: for the tests and the fuzzer,
 * which hold the two to the same output, as the fast lane repeats the
 * general rules.
 */
__attribute__((warn_unused_result)) bool shape_normalize_stepwise(const char *sql, size_t len,
                                                                  ShapeBuf *out);
/* Do a and b hold the same result (status, and for SHAPE_OK all of it)? */
bool shape_same(const ShapeBuf *a, const ShapeBuf *b);

/*
 * Split a simple-protocol text at the ";" outside quotes, comments and
 * dollar quotes. Writes up to cap spans (statements holding no token are
 * left out) and returns how many statements there are, which may exceed
 * cap (then only the first cap were written). An unterminated quote runs to
 * the end of the text and shape_normalize will call that statement unknown.
 */
__attribute__((warn_unused_result)) int shape_split(const char *sql, size_t len, ShapeSpan *spans,
                                                    int cap);

/* The 64-bit hash used for shapes and for values. */
uint64_t shape_hash_bytes(const void *p, size_t n);

/*
 * Hash of a value as PostgreSQL's text output would show it, so that a
 * literal's hash equals the hash of a text-format result column holding the
 * same value: strings are unescaped ('' -> ', E'' backslash escapes),
 * dollar quotes lose their tags, TRUE/FALSE hash as "t"/"f", NULL as
 * SHAPE_HASH_NULL. Bind values are hashed as sent (text or binary: the
 * result column must then use the same format). binds may be NULL when
 * nbinds is 0; a $n beyond nbinds hashes as NULL.
 */
uint64_t shape_lit_hash(const char *sql, const ShapeLit *lit, const ShapeValue *binds, int nbinds);

/*
 * The hashes of the placeholders' values, in placeholder order (a list
 * combines its elements in order). Returns how many were written:
 * min(sb->nparams, cap).
 */
int shape_param_hashes(const ShapeBuf *sb, const char *sql, const ShapeValue *binds, int nbinds,
                       uint64_t *out, int cap);

/*
 * A literal's value as text into out (cap bytes, NUL-terminated, cut when
 * longer), unescaped as for shape_lit_hash; a Bind reference gives "$n".
 * Returns the full length of the value.
 */
size_t shape_lit_text(const char *sql, const ShapeLit *lit, char *out, size_t cap);

const char *shape_status_name(ShapeStatus st);
const char *shape_lit_kind_name(ShapeLitKind kind);

#endif
