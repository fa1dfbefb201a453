/*
 * Helpers shared by the fuzz targets (tests/fuzz/fuzz_*.c): cutting one
 * input into parts, exact-size copies (so that AddressSanitizer sees a read
 * one byte past what the code was given), and a check that aborts with a
 * message, which libFuzzer reports as a crash like any other.
 *
 * Every target defines LLVMFuzzerTestOneInput and may define
 * LLVMFuzzerInitialize; the same file links either with libFuzzer
 * (PGC_FUZZ=ON, clang) or with standalone.c, which replays corpus files
 * (the ctest "fuzz/..." tests of the normal builds).
 */
#ifndef PGC_TESTS_FUZZ_H
#define PGC_TESTS_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Between the parts of a multi-part input (see each target's comment). */
#define FUZZ_SEP     "\n%%\n"
#define FUZZ_SEP_LEN 4

typedef struct FuzzPart {
    const uint8_t *p;
    size_t n;
} FuzzPart;

/* Cut data at FUZZ_SEP into at most max parts (the last takes the rest);
 * returns how many. */
static inline int fuzz_split(const uint8_t *data, size_t size, FuzzPart *parts, int max)
{
    int n = 0;

    while (n < max - 1) {
        const uint8_t *sep = memmem(data, size, FUZZ_SEP, FUZZ_SEP_LEN);
        if (!sep)
            break;
        parts[n].p = data;
        parts[n].n = (size_t)(sep - data);
        n++;
        size -= (size_t)(sep - data) + FUZZ_SEP_LEN;
        data = sep + FUZZ_SEP_LEN;
    }
    parts[n].p = data;
    parts[n].n = size;
    return n + 1;
}

/* A malloc'd copy of exactly n bytes (malloc(0) for none: nothing in it may
 * be read). Not inlined: gcc would call an empty copy "uninitialized". */
__attribute__((noinline, unused)) static uint8_t *fuzz_dup(const void *p, size_t n)
{
    uint8_t *c = malloc(n);

    if (!c && n)
        abort();
    if (n)
        memcpy(c, p, n);
    return c;
}

/* n bytes of malloc'd scratch (output buffers of exactly the promised size). */
__attribute__((unused)) static uint8_t *fuzz_alloc(size_t n)
{
    uint8_t *c = malloc(n ? n : 1);

    if (!c)
        abort();
    return c;
}

/* A malloc'd NUL-terminated copy; stops at the first NUL of p. */
static inline char *fuzz_str(const void *p, size_t n)
{
    const uint8_t *nul = n ? memchr(p, 0, n) : NULL;
    char *s;

    if (nul)
        n = (size_t)(nul - (const uint8_t *)p);
    s = malloc(n + 1);
    if (!s)
        abort();
    if (n)
        memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

/* A property the code under test promises; a violation is a finding. */
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: fuzz check failed: %s\n", __FILE__, __LINE__, #cond);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
