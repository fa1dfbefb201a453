/*
 * Fuzz target: the statement lexer, orm/shape.c: shape_normalize,
 * shape_split, shape_param_hashes, shape_lit_hash and shape_lit_text, as
 * the proxy runs them on every Query and Parse text a client sends.
 *
 * Input: SQL text (not NUL-terminated: the proxy hands over message
 * bytes). Bind values for the $n are cut out of the same bytes. Checks:
 * every extracted value lies inside the text, placeholders and values
 * agree, the normalised text is terminated where text_len says and hashes
 * to hash, every span of shape_split lies inside the text and shapes the
 * way a statement of its own would, the normalised text of a shape
 * normalises to itself (but for lists that only the second pass folds), and
 * the lexer's fast lane agrees with its general step (shape_same).
 */
#include "tests/fuzz/fuzz.h"

#include "orm/shape.h"

#define MAX_SPANS 16
#define MAX_BINDS 8

static ShapeBuf sb, sb2;

static void check_shape(const ShapeBuf *b, size_t len)
{
    uint32_t covered = 0;

    FUZZ_CHECK(b->status == SHAPE_OK);
    FUZZ_CHECK(b->text_len < SHAPE_TEXT_CAP && b->text[b->text_len] == '\0');
    FUZZ_CHECK(b->hash == shape_hash_bytes(b->text, b->text_len));
    FUZZ_CHECK(b->nparams <= SHAPE_MAX_PARAMS && b->nlits <= SHAPE_MAX_LITS);
    FUZZ_CHECK(b->nstmts >= 1);
    for (uint32_t i = 0; i < b->nlits; i++) {
        const ShapeLit *l = &b->lits[i];
        FUZZ_CHECK((size_t)l->off + l->len <= len && l->len > 0);
        FUZZ_CHECK(l->kind <= SHAPE_LIT_BIND);
        FUZZ_CHECK(l->param >= 1 && l->param <= b->nparams);
        FUZZ_CHECK((l->kind == SHAPE_LIT_BIND) == (l->bind != 0));
        FUZZ_CHECK(l->bind <= b->max_bind);
    }
    for (uint32_t k = 0; k < b->nparams; k++) {
        const ShapeParam *p = &b->params[k];
        FUZZ_CHECK(p->n >= 1 && p->first == covered && p->first + p->n <= b->nlits);
        for (uint32_t e = 0; e < p->n; e++)
            FUZZ_CHECK(b->lits[p->first + e].param == k + 1);
        covered += p->n;
    }
    FUZZ_CHECK(covered == b->nlits);
}

/* How many lists were folded in a normalised text. */
static int count_marks(const char *text)
{
    int n = 0;

    for (const char *p = text; (p = strstr(p, SHAPE_LIST_MARK)) != NULL; p++)
        n++;
    return n;
}

/* Values of the statement's $n: slices of the input, every third NULL. */
static int make_binds(const uint8_t *data, size_t size, ShapeValue *binds)
{
    int n = size ? data[0] % (MAX_BINDS + 1) : 0;

    for (int i = 0; i < n; i++) {
        size_t off = (size_t)i * 7 % size, len = (size_t)i * 5 % (size - off + 1);
        binds[i].data = data + off;
        binds[i].len = i % 3 == 2 ? -1 : (int32_t)len;
    }
    return n;
}

static void check_values(const char *sql, size_t len, const ShapeValue *binds, int nbinds)
{
    uint64_t hashes[SHAPE_MAX_PARAMS];
    char small[8], big[600];

    FUZZ_CHECK(shape_param_hashes(&sb, sql, binds, nbinds, hashes, SHAPE_MAX_PARAMS) ==
               (int)sb.nparams);
    FUZZ_CHECK(shape_param_hashes(&sb, sql, binds, nbinds, hashes, 1) == (sb.nparams ? 1 : 0));
    for (uint32_t i = 0; i < sb.nlits; i++) {
        const ShapeLit *l = &sb.lits[i];
        size_t full = shape_lit_text(sql, l, big, sizeof(big));
        size_t cut = shape_lit_text(sql, l, small, sizeof(small));

        (void)shape_lit_hash(sql, l, binds, nbinds);
        FUZZ_CHECK(full == cut);
        FUZZ_CHECK(strlen(small) <= (full < sizeof(small) ? full : sizeof(small) - 1));
        FUZZ_CHECK(shape_lit_text(sql, l, NULL, 0) == full);
        /* an inline value has no more bytes than its token (unescaping shrinks) */
        if (l->kind != SHAPE_LIT_BIND && l->kind != SHAPE_LIT_BOOL && l->kind != SHAPE_LIT_NULL)
            FUZZ_CHECK(full <= l->len);
    }
    (void)len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *sql = (char *)fuzz_dup(data, size);
    ShapeSpan spans[MAX_SPANS];
    ShapeValue binds[MAX_BINDS];
    int nspans, nbinds;

    /* the fast lane of the lexer gives what the general step gives */
    FUZZ_CHECK(shape_normalize(sql, size, &sb) == shape_normalize_stepwise(sql, size, &sb2));
    FUZZ_CHECK(shape_same(&sb, &sb2));
    if (sb.status == SHAPE_OK) {
        check_shape(&sb, size);
        nbinds = make_binds(data, size, binds);
        check_values(sql, size, binds, nbinds);
        /* a shape's text is its own shape, but for lists the second pass
         * folds: a list of N'', B'', X'', U&'', $$ or TYPE 'x' values does not
         * fold, yet its placeholders do (a known gap, see README) */
        if (memchr(sb.text, 0, sb.text_len) == NULL && sb.nstmts == 1) {
            FUZZ_CHECK(shape_normalize(sb.text, sb.text_len, &sb2));
            if (strcmp(sb.text, sb2.text) != 0 && count_marks(sb2.text) <= count_marks(sb.text)) {
                fprintf(stderr, "shape:   %s\nreshape: %s\n", sb.text, sb2.text);
                FUZZ_CHECK(!"a shape normalises to itself");
            }
        }
    } else {
        FUZZ_CHECK(sb.status != SHAPE_OK && sb.nparams == 0 && sb.nlits == 0);
    }

    nspans = shape_split(sql, size, spans, MAX_SPANS);
    FUZZ_CHECK(nspans >= 0);
    for (int i = 0; i < nspans && i < MAX_SPANS; i++) {
        FUZZ_CHECK((size_t)spans[i].off + spans[i].len <= size);
        FUZZ_CHECK(i == 0 || spans[i].off > spans[i - 1].off);
        if (shape_normalize(sql + spans[i].off, spans[i].len, &sb2))
            check_shape(&sb2, spans[i].len);
    }
    free(sql);
    return 0;
}
