/*
 * The statement lexer: one pass over an SQL text that writes its normalised
 * shape, the shape's hash and the values taken out (rules in shape.h).
 * Hot path: no allocation, a table-driven dispatch per token, bounded output,
 * and per-thread templates that spare the pass for a text seen again with
 * other integers.
 */
#include "orm/shape.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/*
 * For the helpers of the per-word path, which run for most bytes of a
 * statement: GCC's size limits would otherwise keep some out of line.
 */
#define HOT_INLINE inline __attribute__((always_inline))

/* Character classes of the token dispatch. */
enum {
    C_OTHER = 0,
    C_SPACE,
    C_WORD, /* letters, "_" and bytes >= 0x80 (identifier start) */
    C_DIGIT,
    C_QUOTE,  /* ' */
    C_DQUOTE, /* " */
    C_DOLLAR,
    C_DOT,
    C_OP,    /* operator characters + - * / < > = ~ ! @ # % ^ & | ` ? */
    C_PUNCT, /* ( ) , [ ] ; : */
};

static const unsigned char cls[256] = {
    [' '] = C_SPACE,
    ['\t'] = C_SPACE,
    ['\n'] = C_SPACE,
    ['\r'] = C_SPACE,
    ['\f'] = C_SPACE,
    ['\v'] = C_SPACE,
    ['a' ... 'z'] = C_WORD,
    ['A' ... 'Z'] = C_WORD,
    ['_'] = C_WORD,
    [0x80 ... 0xff] = C_WORD,
    ['0' ... '9'] = C_DIGIT,
    ['\''] = C_QUOTE,
    ['"'] = C_DQUOTE,
    ['$'] = C_DOLLAR,
    ['.'] = C_DOT,
    ['+'] = C_OP,
    ['-'] = C_OP,
    ['*'] = C_OP,
    ['/'] = C_OP,
    ['<'] = C_OP,
    ['>'] = C_OP,
    ['='] = C_OP,
    ['~'] = C_OP,
    ['!'] = C_OP,
    ['@'] = C_OP,
    ['#'] = C_OP,
    ['%'] = C_OP,
    ['^'] = C_OP,
    ['&'] = C_OP,
    ['|'] = C_OP,
    ['`'] = C_OP,
    ['?'] = C_OP,
    ['('] = C_PUNCT,
    [')'] = C_PUNCT,
    [','] = C_PUNCT,
    ['['] = C_PUNCT,
    [']'] = C_PUNCT,
    [';'] = C_PUNCT,
    [':'] = C_PUNCT,
};

/* Identifier continuation bytes mapped to their lower case; 0 for the rest. */
static const unsigned char wtab[256] = {
#define LC(c)   [c] = (c) + 32
#define SAME(c) [c] = (c)
    LC('A'),
    LC('B'),
    LC('C'),
    LC('D'),
    LC('E'),
    LC('F'),
    LC('G'),
    LC('H'),
    LC('I'),
    LC('J'),
    LC('K'),
    LC('L'),
    LC('M'),
    LC('N'),
    LC('O'),
    LC('P'),
    LC('Q'),
    LC('R'),
    LC('S'),
    LC('T'),
    LC('U'),
    LC('V'),
    LC('W'),
    LC('X'),
    LC('Y'),
    LC('Z'),
    SAME('a'),
    SAME('b'),
    SAME('c'),
    SAME('d'),
    SAME('e'),
    SAME('f'),
    SAME('g'),
    SAME('h'),
    SAME('i'),
    SAME('j'),
    SAME('k'),
    SAME('l'),
    SAME('m'),
    SAME('n'),
    SAME('o'),
    SAME('p'),
    SAME('q'),
    SAME('r'),
    SAME('s'),
    SAME('t'),
    SAME('u'),
    SAME('v'),
    SAME('w'),
    SAME('x'),
    SAME('y'),
    SAME('z'),
    SAME('0'),
    SAME('1'),
    SAME('2'),
    SAME('3'),
    SAME('4'),
    SAME('5'),
    SAME('6'),
    SAME('7'),
    SAME('8'),
    SAME('9'),
    SAME('_'),
    SAME('$'),
    [0x80 ... 0xff] = 1, /* fixed up in lex_word: bytes >= 0x80 are copied as they are */
#undef LC
#undef SAME
};

/* Keyword classes of the few words the lexer must recognise. */
enum {
    KW_NONE = 0, /* an identifier or a keyword of no interest: an operand */
    KW_EXPR,     /* a keyword after which an expression starts (minus is unary) */
    KW_IN,
    KW_IS,
    KW_NOT,
    KW_ARRAY,
    KW_NULL,
    KW_TRUE,
    KW_FALSE,
    KW_TYPE, /* date, time, timestamp, timestamptz, interval: TYPE 'x' literals */
};

#define NOT_FOUND ((size_t)-1)

/*
 * Statements up to this long cannot outgrow text[], so their tokens skip
 * the room checks. No input byte yields more than 6 bytes of output (a
 * 1-byte literal becomes " $1024", IN (1) becomes "in ($1" SHAPE_LIST_MARK ")"),
 * and no token asks for more room than the rest of the input plus 31
 * bytes: 7 * 4096 + 31 < SHAPE_TEXT_CAP, so none of the checks could fail.
 */
#define ROOMY_SQL 4096

/* Lexer state for one shape_normalize call. */
typedef struct Lex {
    const char *s;
    size_t len;
    size_t i; /* next byte to read */
    ShapeBuf *sb;
    char *out;
    size_t o;      /* bytes written to out */
    size_t word_o; /* where the last word token starts in out */
    int kw;        /* keyword class of the last token (KW_NONE if not a word) */
    bool space;    /* whitespace or a comment since the last token */
    bool operand;  /* the last token ends an operand: a minus after it is binary */
    bool semi;     /* a ";" waits for the next token to be written */
    bool roomy;    /* len <= ROOMY_SQL: out cannot overflow */
    ShapeStatus st;
} Lex;

static inline unsigned char at(const char *s, size_t len, size_t k)
{
    return k < len ? (unsigned char)s[k] : 0;
}

static inline bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static inline bool is_word_char(unsigned char c)
{
    return wtab[c] != 0;
}

static inline char lower(unsigned char c)
{
    return (char)((unsigned)(c - 'A') < 26u ? c + 32 : c);
}

/*
 * Words are most of the bytes of a statement: with SSE2 (every x86-64),
 * copy_word takes 16 of them a step. Elsewhere it goes byte by byte.
 */
#ifdef __SSE2__
#include <emmintrin.h>
#define WIDE_WORDS 1

/* How many of the 16 bytes at p start a run of word bytes; all 16 are
 * stored at o, in lower case (bytes >= 0x80 as they are). */
static HOT_INLINE size_t word_run16(const unsigned char *p, char *o)
{
    const __m128i k20 = _mm_set1_epi8(0x20);
    __m128i v = _mm_loadu_si128((const __m128i *)p), lc = _mm_or_si128(v, k20);
    /* x in [lo, lo + n) is one signed compare: x + (0x80 - lo) < -128 + n */
    __m128i letter =
        _mm_cmplt_epi8(_mm_add_epi8(lc, _mm_set1_epi8(0x80 - 'a')), _mm_set1_epi8(-128 + 26));
    __m128i digit =
        _mm_cmplt_epi8(_mm_add_epi8(v, _mm_set1_epi8(0x80 - '0')), _mm_set1_epi8(-128 + 10));
    __m128i other =
        _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('_')), _mm_cmpeq_epi8(v, _mm_set1_epi8('$')));
    __m128i high = _mm_cmplt_epi8(v, _mm_setzero_si128()); /* bytes >= 0x80 */
    __m128i word = _mm_or_si128(_mm_or_si128(letter, digit), _mm_or_si128(other, high));
    unsigned mask = (unsigned)_mm_movemask_epi8(word);

    /* letters get the 0x20 bit: A-Z become a-z, the rest stay */
    _mm_storeu_si128((__m128i *)o, _mm_or_si128(v, _mm_and_si128(letter, k20)));
    return (size_t)__builtin_ctz(~mask); /* bit 16 of ~mask is set: at most 16 */
}
#else
#define WIDE_WORDS 0
#endif

/*
 * Copy the word at p (*p a word byte, p < lim) to o in lower case, bytes
 * >= 0x80 as they are; returns its length. With wide, o has room for as
 * many bytes as there are from p to lim: vector steps store 16 bytes at
 * once (the ones past the word are overwritten later or never read).
 */
static HOT_INLINE size_t copy_word(const unsigned char *p, const unsigned char *lim, char *o,
                                   bool wide)
{
    const unsigned char *p0 = p;
    unsigned char m = 0;

#if WIDE_WORDS
    if (wide && lim - p >= 16) {
        /* most words end in the first step, which measures cheaper outside
         * the loop than in it */
        size_t n = word_run16(p, o);
        if (n < 16)
            return n;
        p += 16;
        o += 16;
        while (lim - p >= 16) {
            n = word_run16(p, o);
            p += n;
            o += n;
            if (n < 16)
                return (size_t)(p - p0);
        }
    }
#else
    (void)wide;
#endif
    for (;;) {
        /* ASCII word bytes map to 0x24 and above, bytes >= 0x80 to 1 */
        while (p < lim && (m = wtab[*p]) > 1) {
            *o++ = (char)m;
            p++;
        }
        if (p == lim || m == 0)
            break;
        *o++ = (char)*p++;
    }
    return (size_t)(p - p0);
}

/* ---- scanners: pure functions returning the index after a token ---- */

/* The first index at or after j of the byte c in s[0..len), or len. */
static inline size_t find_byte(const char *s, size_t len, size_t j, char c)
{
#if WIDE_WORDS
    /* the ends of quoted identifiers and strings: 16 bytes a step */
    const __m128i vc = _mm_set1_epi8(c);

    for (; len - j >= 16; j += 16) {
        unsigned m = (unsigned)_mm_movemask_epi8(
            _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(s + j)), vc));
        if (m)
            return j + (size_t)__builtin_ctz(m);
    }
#endif
    while (j < len && s[j] != c)
        j++;
    return j;
}

/* A quoted token whose opening quote is at q; NOT_FOUND when unterminated.
 * With backslash, "\x" escapes x (E'' strings); doubled quotes always do. */
static size_t scan_quoted(const char *s, size_t len, size_t q, bool backslash)
{
    char quote = s[q];
    size_t j = q + 1;

    if (!backslash) {
        for (;;) {
            j = find_byte(s, len, j, quote);
            if (j >= len)
                return NOT_FOUND;
            j++;
            if (at(s, len, j) != (unsigned char)quote)
                return j;
            j++;
        }
    }
    while (j < len) {
        char c = s[j];
        if (c == '\\') {
            j += 2;
        } else if (c == quote) {
            if (at(s, len, j + 1) != (unsigned char)quote)
                return j + 1;
            j += 2;
        } else {
            j++;
        }
    }
    return NOT_FOUND;
}

/* A nested block comment opening at i ("/" "*"); NOT_FOUND when unterminated. */
static size_t scan_block_comment(const char *s, size_t len, size_t i)
{
    int depth = 1;
    size_t j = i + 2;

    while (j + 1 < len) {
        if (s[j] == '*' && s[j + 1] == '/') {
            j += 2;
            if (--depth == 0)
                return j;
        } else if (s[j] == '/' && s[j + 1] == '*') {
            depth++;
            j += 2;
        } else {
            j++;
        }
    }
    return NOT_FOUND;
}

/* The end of a line comment starting at i. */
static size_t scan_line_comment(const char *s, size_t len, size_t i)
{
    const char *p = memchr(s + i, '\n', len - i);
    return p ? (size_t)(p - s) + 1 : len;
}

/*
 * A dollar quote starting at i ("$tag$ ... $tag$"). Returns 0 when s[i] does
 * not open one (e.g. a lone "$"), NOT_FOUND when it is never closed.
 */
static size_t scan_dollar(const char *s, size_t len, size_t i)
{
    size_t j = i + 1;
    const char *end;

    if (j < len && cls[(unsigned char)s[j]] == C_WORD) {
        while (j < len && (cls[(unsigned char)s[j]] == C_WORD || is_digit(s[j])))
            j++;
    }
    if (at(s, len, j) != '$')
        return 0;
    j++;
    end = memmem(s + j, len - j, s + i, j - i);
    return end ? (size_t)(end - s) + (j - i) : NOT_FOUND;
}

/* An identifier or keyword starting at i. */
static size_t scan_word(const char *s, size_t len, size_t i)
{
    size_t j = i + 1;
    while (j < len && is_word_char(s[j]))
        j++;
    return j;
}

/* A numeric constant starting at i (a digit, or "." and a digit). */
static size_t scan_number(const char *s, size_t len, size_t i)
{
    size_t j = i;
    unsigned char c1 = at(s, len, i + 1) | 0x20;

    if (s[i] == '0' && (c1 == 'x' || c1 == 'o' || c1 == 'b') && i + 2 < len &&
        (cls[(unsigned char)s[i + 2]] == C_DIGIT || cls[(unsigned char)s[i + 2]] == C_WORD)) {
        j = i + 2;
        while (j < len &&
               (is_digit(s[j]) || ((s[j] | 0x20) >= 'a' && (s[j] | 0x20) <= 'f') || s[j] == '_'))
            j++;
        return j;
    }
    /* digits, and a "_" between two digits */
    for (;;) {
        while (j < len && is_digit(s[j]))
            j++;
        if (j < len && s[j] == '_' && j > i && is_digit(at(s, len, j + 1)))
            j++;
        else
            break;
    }
    if (at(s, len, j) == '.' && at(s, len, j + 1) != '.') {
        j++;
        while (j < len && is_digit(s[j]))
            j++;
    }
    if ((at(s, len, j) | 0x20) == 'e') {
        size_t k = j + 1;
        if (at(s, len, k) == '+' || at(s, len, k) == '-')
            k++;
        if (is_digit(at(s, len, k))) {
            j = k;
            while (j < len && is_digit(s[j]))
                j++;
        }
    }
    return j;
}

/*
 * scan_number for a number starting with a digit at i, with the common
 * case inline: a run of digits that no ".", "_", exponent or radix letter
 * follows ends where the run does, as scan_number would say.
 */
static HOT_INLINE size_t scan_number_fast(const char *s, size_t len, size_t i)
{
    size_t j = i + 1;
    unsigned char c;

    while (j < len && is_digit(s[j]))
        j++;
    if (j == len)
        return j;
    c = (unsigned char)s[j];
    if (c == '.' || c == '_')
        return scan_number(s, len, i);
    switch (c | 0x20) {
    case 'e':
    case 'x':
    case 'o':
    case 'b':
        return scan_number(s, len, i);
    }
    return j;
}

/* The next index at or after j that is neither whitespace nor comment;
 * len at the end, NOT_FOUND inside an unterminated block comment. */
static size_t skip_blank(const char *s, size_t len, size_t j)
{
    while (j < len) {
        unsigned char c = s[j];
        if (cls[c] == C_SPACE) {
            j++;
        } else if (c == '-' && at(s, len, j + 1) == '-') {
            j = scan_line_comment(s, len, j);
        } else if (c == '/' && at(s, len, j + 1) == '*') {
            j = scan_block_comment(s, len, j);
            if (j == NOT_FOUND)
                return NOT_FOUND;
        } else {
            break;
        }
    }
    return j;
}

/* Does s[i..] start with the (lower-case) word w, as a whole word? */
static bool word_is(const char *s, size_t len, size_t i, const char *w)
{
    size_t n = strlen(w);
    if (i + n > len)
        return false;
    for (size_t k = 0; k < n; k++)
        if (lower(s[i + k]) != w[k])
            return false;
    return i + n == len || !is_word_char(s[i + n]);
}

/*
 * Are the n bytes (2..16) at w those of lit? Two overlapping loads a side,
 * which fold to constants for a literal: memcmp of 3, 5, 6 or 7 bytes is a
 * call, and "and", "where", "select" are compared for many words.
 */
static HOT_INLINE bool same_short(const char *w, const char *lit, size_t n)
{
    uint64_t a, b, c, d;
    uint32_t a4, b4, c4, d4;
    uint16_t a2, b2, c2, d2;

    if (n >= 8) {
        memcpy(&a, w, 8);
        memcpy(&b, lit, 8);
        memcpy(&c, w + n - 8, 8);
        memcpy(&d, lit + n - 8, 8);
        return a == b && c == d;
    }
    if (n >= 4) {
        memcpy(&a4, w, 4);
        memcpy(&b4, lit, 4);
        memcpy(&c4, w + n - 4, 4);
        memcpy(&d4, lit + n - 4, 4);
        return a4 == b4 && c4 == d4;
    }
    memcpy(&a2, w, 2);
    memcpy(&b2, lit, 2);
    memcpy(&c2, w + n - 2, 2);
    memcpy(&d2, lit + n - 2, 2);
    return a2 == b2 && c2 == d2;
}

/*
 * Keyword class of a lower-case word of n <= 11 bytes. A switch on the
 * length, then on the first letter, leaves one or two words to compare:
 * most words are no keyword, and they are out after the two jumps.
 */
static HOT_INLINE int keyword(const char *w, size_t n)
{
#define IS(lit) same_short(w, lit, sizeof(lit) - 1) /* n, as the case says */
    switch (n) {
    case 2:
        switch (w[0]) {
        case 'i':
            return IS("in") ? KW_IN : IS("is") ? KW_IS : KW_NONE;
        case 'o':
            return IS("or") || IS("on") ? KW_EXPR : KW_NONE;
        case 'b':
            return IS("by") ? KW_EXPR : KW_NONE;
        }
        break;
    case 3:
        switch (w[0]) {
        case 'n':
            return IS("not") ? KW_NOT : KW_NONE;
        case 'a':
            return IS("and") ? KW_EXPR : KW_NONE;
        }
        break;
    case 4:
        switch (w[0]) {
        case 'n':
            return IS("null") ? KW_NULL : KW_NONE;
        case 't':
            return IS("true") ? KW_TRUE : IS("time") ? KW_TYPE : IS("then") ? KW_EXPR : KW_NONE;
        case 'd':
            return IS("date") ? KW_TYPE : KW_NONE;
        case 'w':
            return IS("when") ? KW_EXPR : KW_NONE;
        case 'e':
            return IS("else") ? KW_EXPR : KW_NONE;
        case 'l':
            return IS("like") ? KW_EXPR : KW_NONE;
        }
        break;
    case 5:
        switch (w[0]) {
        case 'f':
            return IS("false") ? KW_FALSE : KW_NONE;
        case 'a':
            return IS("array") ? KW_ARRAY : KW_NONE;
        case 'w':
            return IS("where") ? KW_EXPR : KW_NONE;
        case 'l':
            return IS("limit") ? KW_EXPR : KW_NONE;
        case 'i':
            return IS("ilike") ? KW_EXPR : KW_NONE;
        }
        break;
    case 6:
        switch (w[0]) {
        case 's':
            return IS("select") ? KW_EXPR : KW_NONE;
        case 'o':
            return IS("offset") ? KW_EXPR : KW_NONE;
        case 'v':
            return IS("values") ? KW_EXPR : KW_NONE;
        case 'r':
            return IS("return") ? KW_EXPR : KW_NONE;
        case 'h':
            return IS("having") ? KW_EXPR : KW_NONE;
        }
        break;
    case 7:
        return w[0] == 'b' && IS("between") ? KW_EXPR : KW_NONE;
    case 8:
        switch (w[0]) {
        case 'i':
            return IS("interval") ? KW_TYPE : KW_NONE;
        case 'd':
            return IS("distinct") ? KW_EXPR : KW_NONE;
        }
        break;
    case 9:
        return w[0] == 't' && IS("timestamp") ? KW_TYPE : KW_NONE;
    case 11:
        return w[0] == 't' && IS("timestamptz") ? KW_TYPE : KW_NONE;
    }
    return KW_NONE;
#undef IS
}

/* ---- output ---- */

/* Room for n more bytes and the NUL; sets SHAPE_TOO_LONG when there is none. */
static inline bool out_room(Lex *L, size_t n)
{
    if (!L->roomy && L->o + n + 1 > SHAPE_TEXT_CAP) {
        L->st = SHAPE_TOO_LONG;
        return false;
    }
    return true;
}

/* Is the space between a token ending in prev and one starting with first kept? */
static inline bool keeps_space(char prev, unsigned char first)
{
    return prev != '(' && prev != '[' && first != ')' && first != ']' && first != ',';
}

/*
 * Start a token of at most n bytes whose first byte is first: write a
 * pending ";" and the separator the source had, if the rules keep it.
 */
static inline bool tok_begin(Lex *L, unsigned char first, size_t n)
{
    if (!out_room(L, n + 2))
        return false;
    if (L->semi) {
        L->out[L->o++] = ';';
        L->sb->nstmts++;
        L->semi = false;
        L->space = true;
    }
    if (L->space && L->o > 0) {
        if (keeps_space(L->out[L->o - 1], first))
            L->out[L->o++] = ' ';
    } else if (first == '$' && L->o > 0 && is_word_char((unsigned char)L->out[L->o - 1])) {
        /* int'5' is int $1, not the identifier int$1 */
        L->out[L->o++] = ' ';
    }
    L->space = false;
    return true;
}

/*
 * Copy 2..16 bytes as two fixed-size moves that overlap when n is not a
 * power of two: tokens copied as written are mostly a byte or two
 * (". , ( ) =") or a quoted identifier, too short to pay for a memcpy call.
 */
static inline void copy_short(char *o, const char *p, size_t n)
{
    uint64_t a, b;
    uint32_t a4, b4;

    if (n >= 8) {
        memcpy(&a, p, 8);
        memcpy(&b, p + n - 8, 8);
        memcpy(o, &a, 8);
        memcpy(o + n - 8, &b, 8);
    } else if (n >= 4) {
        memcpy(&a4, p, 4);
        memcpy(&b4, p + n - 4, 4);
        memcpy(o, &a4, 4);
        memcpy(o + n - 4, &b4, 4);
    } else {
        o[0] = p[0];
        o[1] = p[1];
        o[n - 1] = p[n - 1];
    }
}

/* Copy n bytes, n >= 1. */
static inline void copy_short_or_long(char *o, const char *p, size_t n)
{
    if (n == 1)
        *o = *p;
    else if (n <= 16)
        copy_short(o, p, n);
    else
        memcpy(o, p, n);
}

/* Append raw bytes (room already checked). */
static inline void out_put(Lex *L, const char *p, size_t n)
{
    copy_short_or_long(L->out + L->o, p, n);
    L->o += n;
}

/* Append "$k" for placeholder k (1..SHAPE_MAX_PARAMS; room checked). */
static HOT_INLINE void out_placeholder(Lex *L, uint32_t k)
{
    char d[8];
    int n = 0;

    L->out[L->o++] = '$';
    if (k < 10) { /* most statements have fewer than ten */
        L->out[L->o++] = (char)('0' + k);
        return;
    }
    do {
        d[n++] = (char)('0' + k % 10);
        k /= 10;
    } while (k);
    while (n)
        L->out[L->o++] = d[--n];
}

/* Record one extracted value for the placeholder about to be written. */
static HOT_INLINE bool add_lit(Lex *L, size_t off, size_t len, ShapeLitKind kind, uint32_t bind)
{
    ShapeBuf *sb = L->sb;
    ShapeLit *lit;

    if (sb->nlits >= SHAPE_MAX_LITS || sb->nparams >= SHAPE_MAX_PARAMS) {
        L->st = SHAPE_TOO_LONG;
        return false;
    }
    lit = &sb->lits[sb->nlits++];
    lit->off = (uint32_t)off;
    lit->len = (uint32_t)len;
    lit->kind = (uint16_t)kind;
    lit->bind = (uint16_t)bind;
    lit->param = (uint16_t)(sb->nparams + 1);
    lit->pad = 0;
    if (bind > sb->max_bind)
        sb->max_bind = bind;
    return true;
}

/* Close the placeholder holding lits[first..nlits) and write "$k". */
static HOT_INLINE bool put_param(Lex *L, uint32_t first, uint32_t flags)
{
    ShapeBuf *sb = L->sb;
    ShapeParam *p = &sb->params[sb->nparams++];

    p->first = first;
    p->n = sb->nlits - first;
    p->flags = flags;
    out_placeholder(L, sb->nparams);
    return true;
}

/*
 * lit_token for a literal that takes no type word (a number, or any
 * literal not after DATE etc.): record the value, write "$k".
 */
static HOT_INLINE bool lit_untyped(Lex *L, size_t off, size_t end, ShapeLitKind kind, uint32_t bind)
{
    uint32_t first = L->sb->nlits;

    if (!add_lit(L, off, end - off, kind, bind))
        return false;
    if (!tok_begin(L, '$', 8))
        return false;
    put_param(L, first, 0);
    L->i = end;
    L->operand = true;
    L->kw = KW_NONE;
    return true;
}

/*
 * One literal token s[off..end) of the given kind becomes a placeholder.
 * After a type word (DATE 'x'), the word is taken back and the placeholder
 * written as $n::date so that the text keeps parsing.
 */
static bool lit_token(Lex *L, size_t off, size_t end, ShapeLitKind kind, uint32_t bind)
{
    char type[16];
    size_t tn;
    uint32_t first = L->sb->nlits;

    if (L->kw != KW_TYPE || kind > SHAPE_LIT_DOLLAR)
        return lit_untyped(L, off, end, kind, bind);
    tn = L->o - L->word_o;
    memcpy(type, L->out + L->word_o, tn);
    L->o = L->word_o;
    L->space = false;
    if (!add_lit(L, off, end - off, kind, bind))
        return false;
    if (!tok_begin(L, '$', 8 + tn))
        return false;
    put_param(L, first, SHAPE_PARAM_TYPED);
    if (tn) {
        out_put(L, "::", 2);
        memcpy(L->out + L->o, type, tn);
        L->o += tn;
    }
    L->i = end;
    L->operand = true;
    L->kw = KW_NONE;
    return true;
}

/* ---- token handlers ---- */

/* A token that is copied as written: a quoted identifier or a stray byte. */
static bool lex_verbatim(Lex *L, size_t end, bool operand)
{
    if (!tok_begin(L, (unsigned char)L->s[L->i], end - L->i))
        return false;
    out_put(L, L->s + L->i, end - L->i);
    L->i = end;
    L->operand = operand;
    L->kw = KW_NONE;
    return true;
}

/*
 * U&'...' (a literal) or U&"..." (an identifier, kept as written), with the
 * UESCAPE 'c' clause that may follow either.
 */
static bool lex_unicode(Lex *L)
{
    const char *s = L->s;
    size_t i = L->i, end = scan_quoted(s, L->len, i + 2, false), k, q;

    if (end == NOT_FOUND) {
        L->st = SHAPE_UNTERMINATED;
        return false;
    }
    k = skip_blank(s, L->len, end);
    if (k != NOT_FOUND && word_is(s, L->len, k, "uescape")) {
        q = skip_blank(s, L->len, k + 7);
        if (q != NOT_FOUND && at(s, L->len, q) == '\'') {
            size_t e2 = scan_quoted(s, L->len, q, false);
            if (e2 != NOT_FOUND)
                end = e2;
        }
    }
    if (s[i + 2] == '\'')
        return lit_token(L, i, end, SHAPE_LIT_USTRING, 0);
    return lex_verbatim(L, end, true);
}

/* Does the word at i prefix a quoted token: E'', B'', X'', N'', U&'' or U&""? */
static inline bool quote_prefix(const char *s, size_t len, size_t i)
{
    unsigned char c1 = at(s, len, i + 1);

    switch (s[i] | 0x20) { /* only these letters can: the rest need no look-ahead */
    case 'e':
    case 'b':
    case 'x':
    case 'n':
        return c1 == '\'';
    case 'u':
        return c1 == '&' && (at(s, len, i + 2) == '\'' || at(s, len, i + 2) == '"');
    }
    return false;
}

/* Is a word of keyword class kw, after a token of class prev, a TRUE/FALSE/NULL literal? */
static inline bool word_is_literal(int kw, int prev)
{
    return (kw == KW_NULL || kw == KW_TRUE || kw == KW_FALSE) && prev != KW_IS && prev != KW_NOT;
}

/* Does a word of keyword class kw end an operand (a minus after it is binary)? */
static inline bool kw_ends_operand(int kw)
{
    return !(kw == KW_EXPR || kw == KW_IN || kw == KW_IS || kw == KW_NOT);
}

/* A word: identifier, keyword, TRUE/FALSE/NULL literal, or a string prefix. */
static bool lex_word(Lex *L)
{
    const char *s = L->s;
    size_t i = L->i, end, n;
    unsigned char c = s[i] | 0x20;
    bool wide;
    int kw;

    if (quote_prefix(s, L->len, i)) {
        if (c == 'u')
            return lex_unicode(L);
        end = scan_quoted(s, L->len, i + 1, c == 'e');
        if (end == NOT_FOUND) {
            L->st = SHAPE_UNTERMINATED;
            return false;
        }
        return lit_token(L, i, end,
                         c == 'e'   ? SHAPE_LIT_ESTRING
                         : c == 'n' ? SHAPE_LIT_STRING
                                    : SHAPE_LIT_BITSTRING,
                         0);
    }
    /* Room for the rest of the text is room for the word: then one pass finds
     * its end and copies it in lower case (bytes >= 0x80 as they are). */
    n = L->len - i;
    wide = L->roomy || L->o + n + 3 <= SHAPE_TEXT_CAP;
    if (!wide)
        n = scan_word(s, L->len, i) - i;
    if (!tok_begin(L, 'a', n))
        return false;
    L->word_o = L->o;
    n = copy_word((const unsigned char *)s + i, (const unsigned char *)s + L->len, L->out + L->o,
                  wide);
    end = i + n;
    L->o += n;
    kw = end - i <= 11 ? keyword(L->out + L->word_o, end - i) : KW_NONE;
    if (word_is_literal(kw, L->kw)) {
        L->o = L->word_o;
        L->kw = KW_NONE;
        return lit_token(L, i, end, kw == KW_NULL ? SHAPE_LIT_NULL : SHAPE_LIT_BOOL, 0);
    }
    L->i = end;
    L->kw = kw;
    L->operand = kw_ends_operand(kw);
    return true;
}

/* A number at L->i, or at the "-" before it (then the minus is unary). */
static bool lex_number(Lex *L, size_t start)
{
    size_t digits = L->s[start] == '-' ? start + 1 : start;
    return lit_token(L, start, scan_number(L->s, L->len, digits), SHAPE_LIT_NUMBER, 0);
}

/* Is there a number right at j (a digit, or "." and a digit)? */
static bool number_at(const char *s, size_t len, size_t j)
{
    unsigned char c = at(s, len, j);
    return is_digit(c) || (c == '.' && is_digit(at(s, len, j + 1)));
}

/* An operator character other than + - * / < > = (see lex_operator). */
static inline bool op_special(unsigned char c)
{
    switch (c) {
    case '~':
    case '!':
    case '@':
    case '#':
    case '%':
    case '^':
    case '&':
    case '|':
    case '`':
    case '?':
        return true;
    }
    return false;
}

/*
 * An operator: the longest run of operator characters not starting a
 * comment; a run that ends in + or - and has none of ~ ! @ # % ^ & | ` ?
 * loses those, as in PostgreSQL's lexer (so "=-5" is "=" then "-5").
 */
static bool lex_operator(Lex *L)
{
    const char *s = L->s;
    size_t i = L->i, j = i;
    bool special = false;

    while (j < L->len && cls[(unsigned char)s[j]] == C_OP) {
        unsigned char n = at(s, L->len, j + 1);
        if (j > i && ((s[j] == '-' && n == '-') || (s[j] == '/' && n == '*')))
            break;
        if (op_special((unsigned char)s[j]))
            special = true;
        j++;
    }
    if (!special)
        while (j - i > 1 && (s[j - 1] == '+' || s[j - 1] == '-'))
            j--;
    if (j - i == 1 && s[i] == '-' && !L->operand && number_at(s, L->len, i + 1))
        return lex_number(L, i);
    if (!tok_begin(L, (unsigned char)s[i], j - i))
        return false;
    out_put(L, s + i, j - i);
    L->i = j;
    L->operand = false;
    L->kw = KW_NONE;
    return true;
}

/*
 * One plain value of a foldable list at j: a literal, a NULL/TRUE/FALSE, or
 * a $n. Returns the index after it, NOT_FOUND when there is none (or it is
 * unterminated); *kind and *bind describe it.
 */
static size_t scan_list_value(const char *s, size_t len, size_t j, ShapeLitKind *kind,
                              uint32_t *bind)
{
    unsigned char c = s[j], c1 = at(s, len, j + 1);
    size_t end;

    *bind = 0;
    if (c == '\'') {
        *kind = SHAPE_LIT_STRING;
        return scan_quoted(s, len, j, false);
    }
    if ((c | 0x20) == 'e' && c1 == '\'') {
        *kind = SHAPE_LIT_ESTRING;
        return scan_quoted(s, len, j + 1, true);
    }
    if (c == '$' && is_digit(c1)) {
        /* as lex_dollar reads it: above 65535 is 65535 */
        *kind = SHAPE_LIT_BIND;
        for (end = j + 1; end < len && is_digit(s[end]); end++)
            if (*bind <= 65535)
                *bind = *bind * 10 + (uint32_t)(s[end] - '0');
        if (*bind > 65535)
            *bind = 65535;
        return *bind == 0 ? NOT_FOUND : end;
    }
    if (number_at(s, len, j) || (c == '-' && number_at(s, len, j + 1))) {
        *kind = SHAPE_LIT_NUMBER;
        return scan_number(s, len, c == '-' ? j + 1 : j);
    }
    if (word_is(s, len, j, "true") || word_is(s, len, j, "false")) {
        *kind = SHAPE_LIT_BOOL;
        return scan_word(s, len, j);
    }
    if (word_is(s, len, j, "null")) {
        *kind = SHAPE_LIT_NULL;
        return j + 4;
    }
    return NOT_FOUND;
}

/*
 * An optional "::type" (one word) after a list value at j. Returns the index
 * after it and the blanks that follow, NOT_FOUND when the list cannot fold:
 * the first value's cast is recorded in cast and castn, later ones repeat it.
 */
static size_t scan_list_cast(const char *s, size_t len, size_t j, bool first, size_t *cast,
                             size_t *castn)
{
    size_t w, we;

    if (at(s, len, j) != ':' || at(s, len, j + 1) != ':')
        return *castn ? NOT_FOUND : j;
    w = skip_blank(s, len, j + 2);
    if (w == NOT_FOUND || w >= len || cls[(unsigned char)s[w]] != C_WORD)
        return NOT_FOUND;
    we = scan_word(s, len, w);
    if (first) {
        *cast = w;
        *castn = we - w;
    } else if (we - w != *castn || strncasecmp(s + w, s + *cast, *castn) != 0) {
        return NOT_FOUND;
    }
    return skip_blank(s, len, we);
}

/*
 * After IN or ARRAY, at "(" or "[": fold a list of plain values into one
 * placeholder. Returns 1 when folded, 0 when the list is not foldable
 * (nothing changed), -1 on overflow (status set).
 */
static int lex_fold(Lex *L, char close)
{
    const char *s = L->s;
    size_t len = L->len, j = L->i + 1;
    uint32_t first = L->sb->nlits;
    size_t cast = 0, castn = 0;

    for (;;) {
        ShapeLitKind kind;
        uint32_t bind;
        size_t start = skip_blank(s, len, j), end;

        if (start == NOT_FOUND || start >= len)
            goto undo;
        end = scan_list_value(s, len, start, &kind, &bind);
        if (end == NOT_FOUND)
            goto undo;
        if (!add_lit(L, start, end - start, kind, bind))
            return -1;
        j = skip_blank(s, len, end);
        if (j != NOT_FOUND)
            j = scan_list_cast(s, len, j, L->sb->nlits - first == 1, &cast, &castn);
        if (j == NOT_FOUND)
            goto undo;
        if (at(s, len, j) == (unsigned char)close)
            break;
        if (at(s, len, j) != ',')
            goto undo;
        j++;
    }
    if (!tok_begin(L, (unsigned char)s[L->i], 16 + castn + sizeof(SHAPE_LIST_MARK)))
        return -1;
    L->out[L->o++] = s[L->i];
    put_param(L, first, SHAPE_PARAM_LIST);
    if (castn) {
        out_put(L, "::", 2);
        for (size_t k = 0; k < castn; k++)
            L->out[L->o++] = lower(s[cast + k]);
    }
    out_put(L, SHAPE_LIST_MARK, sizeof(SHAPE_LIST_MARK) - 1);
    L->out[L->o++] = close;
    L->i = j + 1;
    L->operand = true;
    L->kw = KW_NONE;
    return 1;
undo:
    L->sb->nlits = first;
    return 0;
}

/* Punctuation: ( ) , [ ] ; and the ":" / "::" of casts and slices. */
static bool lex_punct(Lex *L)
{
    char c = L->s[L->i];
    size_t n = 1;

    if (c == ';') {
        if (L->o > 0) /* a token was written: every token writes a byte */
            L->semi = true;
        L->i++;
        L->operand = false;
        L->kw = KW_NONE;
        return true;
    }
    if ((c == '(' && L->kw == KW_IN) || (c == '[' && L->kw == KW_ARRAY)) {
        int r = lex_fold(L, c == '(' ? ')' : ']');
        if (r != 0)
            return r > 0;
    }
    if (c == ':' && at(L->s, L->len, L->i + 1) == ':')
        n = 2;
    if (!tok_begin(L, (unsigned char)c, n))
        return false;
    out_put(L, L->s + L->i, n);
    L->i += n;
    L->operand = c == ')' || c == ']';
    L->kw = KW_NONE;
    return true;
}

/* "$": a Bind parameter $n, a dollar quote, or a stray "$" kept as is. */
static bool lex_dollar(Lex *L)
{
    const char *s = L->s;
    size_t i = L->i, end;

    if (is_digit(at(s, L->len, i + 1))) {
        uint32_t n = 0;
        end = i + 1;
        while (end < L->len && is_digit(s[end])) {
            if (n <= 65535)
                n = n * 10 + (uint32_t)(s[end] - '0');
            end++;
        }
        if (n > 65535)
            n = 65535;
        /* $0 refers to no Bind value (PostgreSQL refuses it): kept as written, as in a list */
        if (n == 0)
            return lex_verbatim(L, end, true);
        return lit_token(L, i, end, SHAPE_LIT_BIND, n);
    }
    end = scan_dollar(s, L->len, i);
    if (end == NOT_FOUND) {
        L->st = SHAPE_UNTERMINATED;
        return false;
    }
    if (end)
        return lit_token(L, i, end, SHAPE_LIT_DOLLAR, 0);
    if (!tok_begin(L, '$', 1))
        return false;
    L->out[L->o++] = '$';
    L->i++;
    L->operand = false;
    L->kw = KW_NONE;
    return true;
}

/* Dispatch one token (or skip blank/comment) at L->i. False: stop, L->st says why. */
static bool lex_step(Lex *L)
{
    const char *s = L->s;
    size_t i = L->i, end;
    unsigned char c = s[i];

    /* Blanks only set L->space (one space at most comes of a run): skip the
     * run and go on to the token after it, saving a dispatch per blank. */
    if (cls[c] == C_SPACE) {
        while (++i < L->len && cls[(unsigned char)s[i]] == C_SPACE)
            ;
        L->space = true;
        L->i = i;
        if (i == L->len)
            return true;
        c = s[i];
    }
    switch (cls[c]) {
    case C_WORD:
        return lex_word(L);
    case C_DIGIT:
        return lex_number(L, i);
    case C_QUOTE:
        end = scan_quoted(s, L->len, i, false);
        if (end == NOT_FOUND)
            break;
        return lit_token(L, i, end, SHAPE_LIT_STRING, 0);
    case C_DQUOTE:
        end = scan_quoted(s, L->len, i, false);
        if (end == NOT_FOUND)
            break;
        return lex_verbatim(L, end, true);
    case C_DOLLAR:
        return lex_dollar(L);
    case C_DOT:
        if (is_digit(at(s, L->len, i + 1)) && !(L->operand && !L->space))
            return lex_number(L, i);
        return lex_verbatim(L, i + 1, false);
    case C_OP:
        if (c == '-' && at(s, L->len, i + 1) == '-') {
            L->i = scan_line_comment(s, L->len, i);
            L->space = true;
            return true;
        }
        if (c == '/' && at(s, L->len, i + 1) == '*') {
            end = scan_block_comment(s, L->len, i);
            if (end == NOT_FOUND)
                break;
            L->i = end;
            L->space = true;
            return true;
        }
        return lex_operator(L);
    case C_PUNCT:
        return lex_punct(L);
    default:
        return lex_verbatim(L, i + 1, false);
    }
    L->st = SHAPE_UNTERMINATED;
    return false;
}

/*
 * Is the byte c (class k) at i a token of its own that lex_step would copy
 * as it is: the "." of table.column (not of a number), a "," or ")", a "("
 * not after IN, or an operator of one character other than "-" (lex_operator
 * takes a "-" before a number with it)?
 */
static inline bool one_byte_token(const Lex *L, size_t i, unsigned char c, int k)
{
    const char *s = L->s;

    switch (k) {
    case C_DOT:
        return !(is_digit(at(s, L->len, i + 1)) && !(L->operand && !L->space));
    case C_PUNCT:
        return c == ',' || c == ')' || (c == '(' && L->kw != KW_IN);
    case C_OP:
        return c != '-' && (i + 1 == L->len || cls[(unsigned char)s[i + 1]] != C_OP);
    }
    return false;
}

/*
 * The lexer loop. Blanks, plain words and the ". , ( )" between them are
 * most of the bytes of an ORM statement: when the room checks are moot
 * (L->roomy) they are lexed here, by the rules of tok_begin and lex_word,
 * with the two indexes in locals; every other token goes to lex_step.
 * Stops at the end or when a step fails (L->st says why).
 */
static void lex_run(Lex *L)
{
    const char *s = L->s;
    char *out = L->out;
    size_t len = L->len, i = L->i, o = L->o, n, sep;
    unsigned char c;
    int k;

    if (!L->roomy) {
        while (L->i < len)
            if (!lex_step(L))
                return;
        return;
    }
    while (i < len) {
        c = (unsigned char)s[i];
        k = cls[c];
        if (k == C_WORD && !L->semi) {
            /* The word goes after the space if one is kept; a word of one
             * letter may be the prefix of a quoted token instead (E'x'):
             * then nothing counts as written and lex_step takes it. */
            sep = L->space && o > 0 && keeps_space(out[o - 1], 'a');
            out[o] = ' ';
            n = copy_word((const unsigned char *)s + i, (const unsigned char *)s + len,
                          out + o + sep, true);
            if (n == 1 && quote_prefix(s, len, i))
                goto step;
            L->space = false;
            o += sep;
            k = n <= 11 ? keyword(out + o, n) : KW_NONE;
            if (word_is_literal(k, L->kw)) {
                /* as lex_word does: the word is taken back for a placeholder */
                L->o = L->word_o = o;
                L->kw = KW_NONE;
                if (!lit_token(L, i, i + n, k == KW_NULL ? SHAPE_LIT_NULL : SHAPE_LIT_BOOL, 0))
                    return;
                i = L->i;
                o = L->o;
                continue;
            }
            L->word_o = o;
            o += n;
            i += n;
            L->kw = k;
            L->operand = kw_ends_operand(k);
            if (i < len && cls[(unsigned char)s[i]] == C_SPACE) {
                /* most words have a blank after them: the run below, without a
                 * second dispatch */
                while (++i < len && cls[(unsigned char)s[i]] == C_SPACE)
                    ;
                L->space = true;
            }
            continue;
        }
        if (k == C_SPACE) { /* a run of blanks is one step */
            while (++i < len && cls[(unsigned char)s[i]] == C_SPACE)
                ;
            L->space = true;
            continue;
        }
        if (L->semi)
            goto step;
        if (one_byte_token(L, i, c, k)) {
            if (L->space && o > 0 && keeps_space(out[o - 1], c))
                out[o++] = ' ';
            L->space = false;
            out[o++] = (char)c;
            i++;
            L->operand = c == ')';
            L->kw = KW_NONE;
            continue;
        }
        if (k == C_DQUOTE) {
            n = scan_quoted(s, len, i, false);
            if (n == NOT_FOUND)
                goto step;
            /* a quoted identifier, copied as written (lex_verbatim) */
            n -= i;
            if (L->space && o > 0 && keeps_space(out[o - 1], '"'))
                out[o++] = ' ';
            L->space = false;
            copy_short_or_long(out + o, s + i, n);
            o += n;
            i += n;
            L->operand = true;
            L->kw = KW_NONE;
            continue;
        }
        if (k == C_DIGIT || (k == C_QUOTE && L->kw != KW_TYPE)) {
            /* a number or a string: a placeholder (lex_number, lit_token) */
            n = k == C_DIGIT ? scan_number_fast(s, len, i) : scan_quoted(s, len, i, false);
            if (n == NOT_FOUND)
                goto step;
            L->o = o;
            if (!lit_untyped(L, i, n, k == C_DIGIT ? SHAPE_LIT_NUMBER : SHAPE_LIT_STRING, 0))
                return;
            i = L->i;
            o = L->o;
            continue;
        }
        if (c == '-' && !L->operand && i + 1 < len && is_digit((unsigned char)s[i + 1])) {
            /* a minus that cannot be binary, then digits: one literal, as
             * lex_operator finds it (its operator is "-" alone) and hands it
             * to lex_number */
            n = scan_number_fast(s, len, i + 1);
            L->o = o;
            if (!lit_untyped(L, i, n, SHAPE_LIT_NUMBER, 0))
                return;
            i = L->i;
            o = L->o;
            continue;
        }
        if (c == ';') { /* as lex_punct does: written before the next token */
            if (o > 0)
                L->semi = true;
            i++;
            L->operand = false;
            L->kw = KW_NONE;
            continue;
        }
    step:
        L->i = i;
        L->o = o;
        if (!lex_step(L))
            return;
        i = L->i;
        o = L->o;
    }
    L->i = i;
    L->o = o;
}

/* shape_normalize, with (fast) or without the fast lane of lex_run. */
static bool normalize(const char *sql, size_t len, ShapeBuf *out, bool fast)
{
    Lex L = {.s = sql,
             .len = len,
             .sb = out,
             .out = out->text,
             .roomy = fast && len <= ROOMY_SQL,
             .st = SHAPE_OK};

    out->hash = 0;
    out->text_len = 0;
    out->nparams = 0;
    out->nlits = 0;
    out->nstmts = 0;
    out->max_bind = 0;
    out->text[0] = '\0';
    if (len > SHAPE_MAX_SQL) {
        out->status = SHAPE_TOO_LONG;
        return false;
    }
    lex_run(&L);
    if (L.st == SHAPE_OK && L.o == 0)
        L.st = SHAPE_EMPTY;
    out->status = L.st;
    if (L.st != SHAPE_OK) {
        out->nparams = out->nlits = 0;
        return false;
    }
    out->text[L.o] = '\0';
    out->text_len = (uint32_t)L.o;
    out->nstmts++;
    out->hash = shape_hash_bytes(out->text, L.o);
    return true;
}

/* ---- templates: a statement seen again with other integers ---- */

/*
 * pgbench and ORMs send one text again and again with only its integers
 * changed. Such a text lexes into the same tokens, so its result is that of
 * the earlier text with the literals' offsets and lengths moved: a text
 * whose bytes outside its integers are those of a recent statement's takes
 * that statement's result (a template) without the lexer.
 *
 * A result becomes a template when every literal is a NUMBER written
 * -?[0-9]+, a placeholder of its own, followed by a blank, "," ")" "]" ";"
 * or the end (so that no other digits, nor ".", "_", "e" or a radix letter,
 * could have made it a longer number). The lexer's state at a literal is
 * then set by the bytes before it, which match, and every literal before
 * it ends that state the same way (an operand). A text matches when the
 * bytes between its literals are the template's and each literal is digits,
 * with a "-" before them only where the template had one: the lexer took
 * that minus as unary, and a number without it lexes to the same placeholder
 * -- unless the byte before the minus could join a digit where it does not
 * join a minus (a word, "$", "."), which templates_learn does not allow.
 * Per thread (a worker's statements), TMPL_SLOTS of them. A new one takes
 * a slot that no text has used for TMPL_KEEP statements, or none: when more
 * templatable texts take turns than there are slots, the ones kept still
 * match (instead of each evicting the next to come), and the others pay
 * for the lexer but not for becoming templates.
 */
#define TMPL_SLOTS    8
#define TMPL_MAX_SQL  512 /* longer texts (and normalised texts) are not kept */
#define TMPL_MAX_LITS 32
#define TMPL_KEEP     (4 * TMPL_SLOTS)

typedef struct Template {
    uint64_t head[2], mask[2]; /* the text's first bytes, up to 16 before any literal */
    uint32_t len;              /* of sql; 0: an unused slot */
    uint32_t text_len, nlits, nstmts;
    uint32_t used; /* template_clock when it was made or last matched */
    uint64_t hash;
    struct {
        uint16_t off, len; /* in sql, the "-" included */
    } lits[TMPL_MAX_LITS];
    char sql[TMPL_MAX_SQL];
    char text[TMPL_MAX_SQL + 1]; /* NUL-terminated */
} Template;

static __thread Template templates[TMPL_SLOTS];
static __thread unsigned template_next;  /* where the search for a slot to take starts */
static __thread uint32_t template_clock; /* statements seen */
/* Slot + 1 of the template a text with these first 16 bytes matched last,
 * by a hash of them: tried first, as a worker's clients interleave their
 * statements in no order the slots could follow. */
static __thread uint8_t template_hint[64];

/* The first 16 bytes of sql[0..len), zeros past len. */
static inline void template_head(const char *sql, size_t len, uint64_t h[2])
{
    char b[16] = {0};

    if (len >= 16) {
        memcpy(h, sql, 16);
        return;
    }
    memcpy(b, sql, len);
    memcpy(h, b, 16);
}

/* May a template's literal s[off..off+n) stand for other integers? */
static bool template_literal(const char *s, size_t len, size_t off, size_t n)
{
    size_t k = s[off] == '-' ? 1 : 0, end = off + n;
    unsigned char next = at(s, len, end), prev = off ? (unsigned char)s[off - 1] : ' ';

    if (n <= k)
        return false;
    for (size_t j = off + k; j < end; j++)
        if (!is_digit(s[j]))
            return false;
    if (end < len && cls[next] != C_SPACE && next != ',' && next != ')' && next != ']' &&
        next != ';')
        return false;
    return !k || cls[prev] == C_SPACE || prev == '(' || prev == ',' || prev == '[' || prev == '=' ||
           prev == '<' || prev == '>' || prev == '+' || prev == '*' || prev == '/';
}

/* Keep the result in sb of sql[0..len) as a template, if it can be one. */
static void templates_learn(const char *sql, size_t len, const ShapeBuf *sb)
{
    static const unsigned char ones[32] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                           0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    Template *t = NULL;
    uint64_t head[2], mask[2];
    size_t first;

    if (len > TMPL_MAX_SQL || sb->text_len > TMPL_MAX_SQL || sb->nlits > TMPL_MAX_LITS ||
        sb->nlits != sb->nparams || sb->max_bind != 0)
        return;
    for (uint32_t k = 0; k < sb->nlits; k++)
        if (sb->lits[k].kind != SHAPE_LIT_NUMBER || sb->params[k].n != 1 ||
            sb->params[k].flags != 0)
            return;
    first = sb->nlits ? sb->lits[0].off : len;
    memcpy(mask, ones + 16 - (first < 16 ? first : 16), sizeof(mask)); /* first bytes 0xff */
    template_head(sql, len, head);
    head[0] &= mask[0];
    head[1] &= mask[1];
    /* a template with the same text before its first literal is replaced
     * (one without a minus where this text has one, say), else a free or
     * stale slot's */
    for (unsigned i = 0; i < TMPL_SLOTS && !t; i++)
        if (templates[i].len && templates[i].head[0] == head[0] &&
            templates[i].head[1] == head[1] &&
            (templates[i].nlits ? templates[i].lits[0].off : templates[i].len) == first &&
            memcmp(templates[i].sql, sql, first) == 0)
            t = &templates[i];
    for (unsigned j = 0; j < TMPL_SLOTS && !t; j++) {
        Template *v = &templates[(template_next + j) % TMPL_SLOTS];
        if (!v->len || template_clock - v->used >= TMPL_KEEP) {
            t = v;
            template_next += j + 1;
        }
    }
    if (!t)
        return; /* all in use */
    for (uint32_t k = 0; k < sb->nlits; k++)
        if (!template_literal(sql, len, sb->lits[k].off, sb->lits[k].len))
            return;
    memcpy(t->head, head, sizeof(head));
    memcpy(t->mask, mask, sizeof(mask));
    t->used = template_clock;
    t->len = (uint32_t)len;
    t->text_len = sb->text_len;
    t->nlits = sb->nlits;
    t->nstmts = sb->nstmts;
    t->hash = sb->hash;
    for (uint32_t k = 0; k < sb->nlits; k++)
        t->lits[k].off = (uint16_t)sb->lits[k].off, t->lits[k].len = (uint16_t)sb->lits[k].len;
    memcpy(t->sql, sql, len);
    memcpy(t->text, sb->text, sb->text_len + 1);
}

/* Does sql[0..len) match template t? Then its result is written to out. */
static bool template_apply(const Template *t, const char *sql, size_t len, ShapeBuf *out)
{
    size_t pos = 0, tpos = 0, seg;

    for (uint32_t k = 0; k < t->nlits; k++) {
        size_t start;
        seg = t->lits[k].off - tpos;
        if (len - pos < seg || memcmp(sql + pos, t->sql + tpos, seg) != 0)
            return false;
        pos += seg;
        start = pos;
        if (pos < len && sql[pos] == '-') {
            if (t->sql[t->lits[k].off] != '-')
                return false;
            pos++;
        }
        if (pos == len || !is_digit(sql[pos]))
            return false;
        while (++pos < len && is_digit(sql[pos]))
            ;
        out->lits[k] = (ShapeLit){
            (uint32_t)start, (uint32_t)(pos - start), SHAPE_LIT_NUMBER, 0, (uint16_t)(k + 1), 0};
        tpos = t->lits[k].off + t->lits[k].len;
    }
    seg = t->len - tpos;
    if (len - pos != seg || memcmp(sql + pos, t->sql + tpos, seg) != 0)
        return false;
    for (uint32_t k = 0; k < t->nlits; k++)
        out->params[k] = (ShapeParam){k, 1, 0};
    out->status = SHAPE_OK;
    out->hash = t->hash;
    out->text_len = t->text_len;
    out->nparams = out->nlits = t->nlits;
    out->nstmts = t->nstmts;
    out->max_bind = 0;
    memcpy(out->text, t->text, t->text_len + 1);
    return true;
}

/* The result of a template sql[0..len) matches, written to out; false when none does. */
static bool templates_apply(const char *sql, size_t len, ShapeBuf *out)
{
    Template *t;
    uint64_t head[2];
    unsigned hint;

    template_clock++;
    if (len > TMPL_MAX_SQL || len == 0)
        return false;
    template_head(sql, len, head);
    hint = (unsigned)(((head[0] ^ (head[1] >> 7)) * 0x9e3779b97f4a7c15ULL) >> 58);
    if (template_hint[hint]) {
        t = &templates[template_hint[hint] - 1];
        if ((head[0] & t->mask[0]) == t->head[0] && (head[1] & t->mask[1]) == t->head[1] &&
            template_apply(t, sql, len, out)) {
            t->used = template_clock;
            return true;
        }
    }
    for (unsigned i = 0; i < TMPL_SLOTS; i++) {
        t = &templates[i];
        if (t->len && (head[0] & t->mask[0]) == t->head[0] &&
            (head[1] & t->mask[1]) == t->head[1] && template_apply(t, sql, len, out)) {
            template_hint[hint] = (uint8_t)(i + 1);
            t->used = template_clock;
            return true;
        }
    }
    return false;
}

bool shape_normalize(const char *sql, size_t len, ShapeBuf *out)
{
    if (templates_apply(sql, len, out))
        return true;
    if (!normalize(sql, len, out, true))
        return false;
    templates_learn(sql, len, out);
    return true;
}

bool shape_normalize_stepwise(const char *sql, size_t len, ShapeBuf *out)
{
    return normalize(sql, len, out, false);
}

bool shape_same(const ShapeBuf *a, const ShapeBuf *b)
{
    if (a->status != b->status)
        return false;
    if (a->status != SHAPE_OK)
        return true; /* nothing else is defined */
    return a->hash == b->hash && a->text_len == b->text_len && a->nparams == b->nparams &&
           a->nlits == b->nlits && a->nstmts == b->nstmts && a->max_bind == b->max_bind &&
           memcmp(a->text, b->text, a->text_len) == 0 &&
           memcmp(a->params, b->params, a->nparams * sizeof(a->params[0])) == 0 &&
           memcmp(a->lits, b->lits, a->nlits * sizeof(a->lits[0])) == 0;
}

int shape_split(const char *sql, size_t len, ShapeSpan *spans, int cap)
{
    size_t i = 0, start = 0, end;
    bool tok = false;
    int n = 0;

    while (i < len) {
        unsigned char c = sql[i], c1 = at(sql, len, i + 1);

        if (cls[c] == C_SPACE) {
            i++;
            continue;
        }
        if ((c == '-' && c1 == '-') || (c == '/' && c1 == '*')) {
            end = skip_blank(sql, len, i);
            i = end == NOT_FOUND ? len : end;
            continue;
        }
        if (c == ';') {
            if (tok && n < cap)
                spans[n] = (ShapeSpan){(uint32_t)start, (uint32_t)(i - start)};
            n += tok;
            tok = false;
            start = ++i;
            continue;
        }
        tok = true;
        if (c == '\'' || c == '"') {
            end = scan_quoted(sql, len, i, false);
        } else if (c == '$') {
            end = scan_dollar(sql, len, i);
            if (end == 0)
                end = i + 1;
        } else if (cls[c] == C_WORD) {
            if ((c | 0x20) == 'e' && c1 == '\'')
                end = scan_quoted(sql, len, i + 1, true);
            else if ((c | 0x20) == 'u' && c1 == '&' && at(sql, len, i + 2) == '\'')
                end = scan_quoted(sql, len, i + 2, false);
            else if (c1 == '\'' && strchr("bBxXnN", c))
                end = scan_quoted(sql, len, i + 1, false);
            else
                end = scan_word(sql, len, i);
        } else {
            end = i + 1;
        }
        i = end == NOT_FOUND ? len : end;
    }
    if (tok) {
        if (n < cap)
            spans[n] = (ShapeSpan){(uint32_t)start, (uint32_t)(len - start)};
        n++;
    }
    return n;
}

/* ---- hashing and values ---- */

#define K1 0x9fb21c651e98df25ULL
#define K2 0xc2b2ae3d27d4eb4fULL
#define K3 0x165667b19e3779f9ULL

static inline uint64_t rotl64(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

/* Final avalanche so that every input bit reaches every output bit. */
static inline uint64_t fmix64(uint64_t x)
{
    x ^= x >> 31;
    x *= K1;
    x ^= x >> 29;
    x *= K2;
    x ^= x >> 32;
    return x;
}

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define HASH_SHORT 1
/*
 * shape_hash_bytes of n <= 8 bytes, inline: most values hashed are short
 * numbers and keys, and the general function's entry (the lanes' registers
 * saved) costs as much as their one round. The same rounds: one block of
 * the n bytes (8 of them as one word, as the general loop reads them) and
 * the final mix.
 */
static HOT_INLINE uint64_t hash_short(const unsigned char *b, size_t n)
{
    uint64_t h = K3 ^ ((uint64_t)n * K1), w;
    uint32_t lo, hi;

    if (n == 0)
        return fmix64(h);
    if (n >= 4) {
        memcpy(&lo, b, 4);
        memcpy(&hi, b + n - 4, 4);
        w = lo | (uint64_t)hi << (8 * (n - 4));
    } else {
        w = b[0] | (uint64_t)b[n / 2] << (8 * (n / 2)) | (uint64_t)b[n - 1] << (8 * (n - 1));
    }
    return fmix64(rotl64(h ^ (w * K2), 29) * K1);
}
#else
#define HASH_SHORT 0
#endif

uint64_t shape_hash_bytes(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = K3 ^ ((uint64_t)n * K1);
    uint64_t w, w1, w2, w3;

#if HASH_SHORT
    if (n <= 8)
        return hash_short(b, n);
#endif
    /* four independent lanes over 32-byte blocks keep the multipliers busy */
    if (n >= 32) {
        uint64_t a0 = h, a1 = h ^ K2, a2 = h ^ K3, a3 = h ^ K1;
        while (n >= 32) {
            memcpy(&w, b, 8);
            memcpy(&w1, b + 8, 8);
            memcpy(&w2, b + 16, 8);
            memcpy(&w3, b + 24, 8);
            a0 = rotl64(a0 ^ (w * K2), 29) * K1;
            a1 = rotl64(a1 ^ (w1 * K2), 29) * K1;
            a2 = rotl64(a2 ^ (w2 * K2), 29) * K1;
            a3 = rotl64(a3 ^ (w3 * K2), 29) * K1;
            b += 32;
            n -= 32;
        }
        h = fmix64(a0) ^ rotl64(fmix64(a1), 16) ^ rotl64(fmix64(a2), 32) ^ rotl64(fmix64(a3), 48);
    }
    while (n >= 8) {
        memcpy(&w, b, 8);
        h = rotl64(h ^ (w * K2), 29) * K1;
        b += 8;
        n -= 8;
    }
    if (n) {
        w = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        /* What the memcpy below does on this byte order, without a call or a
         * loop for the few bytes of every short value: the 8 bytes ending at
         * the end when there are, else two overlapping loads. */
        if (b - (const unsigned char *)p >= 8) {
            memcpy(&w, b + n - 8, 8);
            w >>= 8 * (8 - n);
        } else if (n >= 4) {
            uint32_t lo, hi;
            memcpy(&lo, b, 4);
            memcpy(&hi, b + n - 4, 4);
            w = lo | (uint64_t)hi << (8 * (n - 4));
        } else {
            w = b[0] | (uint64_t)b[n / 2] << (8 * (n / 2)) | (uint64_t)b[n - 1] << (8 * (n - 1));
        }
#else
        memcpy(&w, b, n);
#endif
        h = rotl64(h ^ (w * K2), 29) * K1;
    }
    return fmix64(h);
}

/* Where a literal's value text is: a view into the SQL, or decoded into buf. */
typedef struct LitView {
    const char *p;
    size_t n;
    bool null;
} LitView;

static int hexval(unsigned char c)
{
    if (is_digit(c))
        return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Decode E'' escapes of s[0..n) into buf (cap bytes); returns the decoded length. */
static size_t decode_escapes(const char *s, size_t n, char *buf, size_t cap)
{
    size_t o = 0;

    for (size_t k = 0; k < n; k++) {
        char c = s[k];
        if (c == '\\' && k + 1 < n) {
            char e = s[++k];
            int v;
            switch (e) {
            case 'b':
                c = '\b';
                break;
            case 'f':
                c = '\f';
                break;
            case 'n':
                c = '\n';
                break;
            case 'r':
                c = '\r';
                break;
            case 't':
                c = '\t';
                break;
            case 'x':
                v = k + 1 < n ? hexval(s[k + 1]) : -1;
                if (v < 0) {
                    c = e;
                    break;
                }
                k++;
                if (k + 1 < n && hexval(s[k + 1]) >= 0)
                    v = v * 16 + hexval(s[++k]);
                c = (char)v;
                break;
            default:
                if (e >= '0' && e <= '7') {
                    v = e - '0';
                    for (int d = 0; d < 2 && k + 1 < n && s[k + 1] >= '0' && s[k + 1] <= '7'; d++)
                        v = v * 8 + (s[++k] - '0');
                    c = (char)v;
                } else {
                    c = e;
                }
            }
        } else if (c == '\'' && k + 1 < n && s[k + 1] == '\'') {
            k++;
        }
        if (o < cap)
            buf[o] = c;
        o++;
    }
    return o;
}

/* Collapse doubled quotes of s[0..n) into buf; returns the decoded length. */
static size_t decode_doubled(const char *s, size_t n, char *buf, size_t cap)
{
    size_t o = 0;

    for (size_t k = 0; k < n; k++) {
        if (s[k] == '\'' && k + 1 < n && s[k + 1] == '\'')
            k++;
        if (o < cap)
            buf[o] = s[k];
        o++;
    }
    return o;
}

/*
 * The value text of a non-Bind literal. Decoded forms longer than cap are
 * left raw (a value that long is no key worth matching).
 */
static LitView lit_view(const char *sql, const ShapeLit *lit, char *buf, size_t cap)
{
    const char *t = sql + lit->off;
    size_t n = lit->len, k, d;
    LitView v = {t, n, false};

    switch ((ShapeLitKind)lit->kind) {
    case SHAPE_LIT_STRING:
        k = t[0] == '\'' ? 1 : 2;
        v.p = t + k;
        v.n = n - k - 1;
        if (memchr(v.p, '\'', v.n)) {
            d = decode_doubled(v.p, v.n, buf, cap);
            if (d <= cap)
                v = (LitView){buf, d, false};
        }
        break;
    case SHAPE_LIT_ESTRING:
        v.p = t + 2;
        v.n = n - 3;
        if (memchr(v.p, '\\', v.n) || memchr(v.p, '\'', v.n)) {
            d = decode_escapes(v.p, v.n, buf, cap);
            if (d <= cap)
                v = (LitView){buf, d, false};
        }
        break;
    case SHAPE_LIT_USTRING:
        k = scan_quoted(t, n, 2, false); /* the string before any UESCAPE */
        v.p = t + 3;
        v.n = (k == NOT_FOUND ? n : k) - 4;
        break;
    case SHAPE_LIT_DOLLAR:
        k = (size_t)((const char *)memchr(t + 1, '$', n - 1) - t) + 1; /* tag length */
        v.p = t + k;
        v.n = n - 2 * k;
        break;
    case SHAPE_LIT_BITSTRING:
        v.p = t + 2;
        v.n = n - 3;
        break;
    case SHAPE_LIT_BOOL:
        v.p = (t[0] | 0x20) == 't' ? "t" : "f";
        v.n = 1;
        break;
    case SHAPE_LIT_NULL:
        v.null = true;
        break;
    case SHAPE_LIT_NUMBER:
    case SHAPE_LIT_BIND:
        break;
    }
    return v;
}

uint64_t shape_lit_hash(const char *sql, const ShapeLit *lit, const ShapeValue *binds, int nbinds)
{
    char buf[512];
    LitView v;

    if (lit->kind == SHAPE_LIT_NUMBER) { /* most literals: the value is the token as written */
#if HASH_SHORT
        if (lit->len <= 8)
            return hash_short((const unsigned char *)sql + lit->off, lit->len);
#endif
        return shape_hash_bytes(sql + lit->off, lit->len);
    }
    if (lit->kind == SHAPE_LIT_BIND) {
        if (lit->bind == 0 || lit->bind > nbinds || binds[lit->bind - 1].len < 0)
            return SHAPE_HASH_NULL;
        return shape_hash_bytes(binds[lit->bind - 1].data, (size_t)binds[lit->bind - 1].len);
    }
    v = lit_view(sql, lit, buf, sizeof(buf));
    return v.null ? SHAPE_HASH_NULL : shape_hash_bytes(v.p, v.n);
}

int shape_param_hashes(const ShapeBuf *sb, const char *sql, const ShapeValue *binds, int nbinds,
                       uint64_t *out, int cap)
{
    int n = (int)sb->nparams < cap ? (int)sb->nparams : cap;

    for (int k = 0; k < n; k++) {
        const ShapeParam *p = &sb->params[k];
        if (p->n == 1) {
            out[k] = shape_lit_hash(sql, &sb->lits[p->first], binds, nbinds);
            continue;
        }
        uint64_t h = K3 ^ p->n;
        for (uint32_t e = 0; e < p->n; e++)
            h = fmix64(h * K2 + shape_lit_hash(sql, &sb->lits[p->first + e], binds, nbinds));
        out[k] = h;
    }
    return n;
}

size_t shape_lit_text(const char *sql, const ShapeLit *lit, char *out, size_t cap)
{
    char buf[512];
    LitView v;
    size_t n;

    if (lit->kind == SHAPE_LIT_BIND) {
        int k = snprintf(out, cap, "$%u", (unsigned)lit->bind);
        return k < 0 ? 0 : (size_t)k;
    }
    v = lit_view(sql, lit, buf, sizeof(buf));
    if (v.null)
        v = (LitView){"NULL", 4, false};
    if (cap == 0)
        return v.n;
    n = v.n < cap ? v.n : cap - 1;
    memcpy(out, v.p, n);
    out[n] = '\0';
    return v.n;
}

const char *shape_status_name(ShapeStatus st)
{
    switch (st) {
    case SHAPE_OK:
        return "ok";
    case SHAPE_EMPTY:
        return "empty";
    case SHAPE_TOO_LONG:
        return "too long";
    case SHAPE_UNTERMINATED:
        return "unterminated";
    }
    return "?";
}

const char *shape_lit_kind_name(ShapeLitKind kind)
{
    static const char *const names[] = {"string", "estring", "ustring", "dollar", "bitstring",
                                        "number", "bool",    "null",    "bind"};
    return (unsigned)kind < sizeof(names) / sizeof(names[0]) ? names[kind] : "?";
}
