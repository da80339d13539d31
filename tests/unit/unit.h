/* Helpers the unit test programs share (static: one copy per program, each uses what it needs).
 *
 * Skips that ctest can see. cmocka's skip() lets the program exit 0, which ctest counts as a
 * pass; a test whose input (the default model, an oracle's golden) is missing instead says why on
 * stderr, returns, and main ends with tsr_test_exit(): 77 when something was skipped and nothing
 * failed, which tests/CMakeLists.txt declares as SKIP_RETURN_CODE. scripts/test.sh prints the
 * reasons (the lines with "skipped"). One copy per test program. */
#ifndef TSR_TESTS_UNIT_UNIT_H
#define TSR_TESTS_UNIT_UNIT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "worker/forward.h"

static int tsr_test_n_skipped;

/* 1 (and the reason printed) when path cannot be read; how says what makes it. */
static inline int tsr_test_missing(const char *path, const char *how)
{
    if (access(path, R_OK) == 0) return 0;
    fprintf(stderr, "skipped: %s is missing (%s)\n", path, how);
    tsr_test_n_skipped++;
    return 1;
}

/* main's exit status from cmocka_run_group_tests' result. */
static inline int tsr_test_exit(int failed)
{
    return failed ? failed : tsr_test_n_skipped ? 77 : 0;
}

/* log softmax(x)[t] in float64: the reference for every logprob. */
static inline double tsr_test_log_softmax(const float *x, int n, int t)
{
    double m = x[0], sum = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > m) m = x[i];
    for (int i = 0; i < n; i++) sum += exp((double)x[i] - m);
    return (double)x[t] - m - log(sum);
}

/* Normalized mean squared error of out against a float64 reference: sum (out - ref)^2 over
 * sum ref^2 (the plain sum when ref is all zero); infinity when out holds a NaN. */
static inline double tsr_test_nmse(const float *out, const double *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)out[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    if (isnan(num)) return INFINITY;
    return den > 0 ? num / den : num;
}

/* Test data: xorshift64*, one stream per program. tsr_test_rng_state is its state: a program
 * that wants a seed of its own (nonzero) sets it before the first draw. */
static uint64_t tsr_test_rng_state = 0x6b7175616e7473ull;

static inline uint64_t tsr_test_rng_u64(void)
{
    tsr_test_rng_state ^= tsr_test_rng_state >> 12;
    tsr_test_rng_state ^= tsr_test_rng_state << 25;
    tsr_test_rng_state ^= tsr_test_rng_state >> 27;
    return tsr_test_rng_state * 2685821657736338717ull;
}

static inline double tsr_test_rng_uniform(void) /* [0, 1) */
{
    return (double)(tsr_test_rng_u64() >> 11) * (1.0 / 9007199254740992.0);
}

/* Standard normal (Box-Muller). */
static inline float tsr_test_rng_normal(void)
{
    double u1 = tsr_test_rng_uniform() + 1e-300, u2 = tsr_test_rng_uniform();
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

/* A call's status and message: fails unless expr returns code and tsr_last_error() holds substr
 * (cmocka's fail_msg, common/status.h's tsr_last_error and tsr_strerror where it is used). */
#define EXPECT_ERR(expr, code, substr)                                                             \
    do {                                                                                           \
        int rc_ = (expr);                                                                          \
        if (rc_ != (code) || !strstr(tsr_last_error(), (substr)))                                  \
            fail_msg("%s: got %d (%s) \"%s\", want %d and \"%s\"", #expr, rc_, tsr_strerror(rc_),  \
                     tsr_last_error(), (code), (substr));                                          \
    } while (0)

/* The OCP FP8 E4M3 value of code q from its fields, in float64; NaN for S.1111.111. */
static inline double tsr_test_e4m3_ref(int q)
{
    int s = q >> 7, e = (q >> 3) & 15, m = q & 7;
    if (e == 15 && m == 7) return NAN;
    double v = e ? ldexp(1.0 + m / 8.0, e - 7) : ldexp(m / 8.0, -6);
    return s ? -v : v;
}

/* One sequence's step: ids at positions pos0 .. pos0 + n - 1, every row's logits out, its
 * n_blocks KV blocks taken in reverse order (scattered, not 0, 1, ...). The arrays are this
 * program's, reused by the next call. */
static inline struct tsr_step tsr_test_step(const int32_t *ids, int pos0, int n, int n_blocks)
{
    static int32_t pos[128], rows[128], seq[128], bt[64];
    if (n > 128 || n_blocks > 64) {
        fprintf(stderr, "tsr_test_step: %d tokens, %d blocks: at most 128 and 64\n", n, n_blocks);
        abort();
    }
    for (int i = 0; i < n; i++) pos[i] = pos0 + i, rows[i] = i, seq[i] = 0;
    for (int i = 0; i < n_blocks; i++) bt[i] = n_blocks - 1 - i;
    return (struct tsr_step){.n_tokens = n,
                             .ids = ids,
                             .pos = pos,
                             .seq = seq,
                             .n_seqs = 1,
                             .max_blocks = n_blocks,
                             .block_tables = bt,
                             .n_out = n,
                             .out_rows = rows};
}

#endif
