/* The CPU backend, op by op, against naive double-precision references written here, on random
 * inputs, for every instruction set this CPU has (scalar, AVX2, AVX-512) and both matmul modes
 * (exact f32 activations, the default; TESSERA_CPU_ACT=q8). Outputs are filled with NaN before
 * each run, so an element an op forgets to write fails the comparison.
 *
 * Error measure: NMSE = Σ(out - ref)² / Σ ref². Thresholds (see each test):
 *   f32 ops (rmsnorm, swiglu, RoPE, attention, matmul on any weight type in the default mode)
 *     1e-10: only f32 rounding of sums of at most a few thousand terms (and, for Q4_1, the one
 *     rounding of d·q + m) separates them from the double reference on the dequantized weights
 *     (~1e-13);
 *   q8 mode, quantized-weight matmul vs the dequantized weights in double: 1e-4 on Gaussian rows:
 *     the activations are quantized to int8 per block of 32 (step d = amax/127), an error of
 *     variance d²/12 per value; for Gaussian rows E[amax] ≈ 2.46σ, so NMSE ≈ (2.46/127)²/12 ≈
 *     3.1e-5 (measured: 2.5e-5..3.7e-5). NMSE is asserted where at least 64 outputs come from
 *     Gaussian rows (fewer make it a noisy estimate). Every case, outlier rows included (a spike
 *     makes d large for its whole block), is also held to the error rounding predicts:
 *     Σ err² ≤ 5 Σ_outputs Σ_i w_i² d_i²/12 (the ratio is about 1: a chi-square over the
 *     outputs; 12x where there are fewer than 64, whose tail is heavier: 5.7x was seen once in
 *     150 seeds with 6 outputs);
 *   SIMD vs scalar                                                     1e-10: the same products
 *     (the dequantized weights, or the int8 products and byte-identical q8 rows, are exact), only
 *     the f32 accumulation order differs.
 * Batch invariance is exact: a row's result computed in a batch of any size, on 1 or 2 threads,
 * equals bitwise its result computed alone.
 * The seed is printed; TSR_TEST_SEED=<n> reruns one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/dtype.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_kernels.h"
#include "unit.h"
#include "backend_check.h" /* rng_int, fill_normal (seeded once in main), buf_from, buf_nan */

/* ---- backends, one per instruction set available ---- */

enum { N_ISA = 3 };
static tsr_backend_t *backends[N_ISA]; /* default (exact) mode; NULL where the CPU lacks the ISA */
static tsr_backend_t *backends_q8[N_ISA]; /* TESSERA_CPU_ACT=q8 */

/* A backend for isa (NULL if this CPU lacks it), in q8 mode if q8. */
static tsr_backend_t *backend_for(enum tsr_cpu_isa isa, int n_threads, int q8)
{
    setenv("TESSERA_CPU_ISA", tsr_cpu_isa_name(isa), 1);
    if (q8) setenv("TESSERA_CPU_ACT", "q8", 1);
    tsr_backend_t *b = tsr_backend_cpu_new(n_threads);
    unsetenv("TESSERA_CPU_ISA");
    unsetenv("TESSERA_CPU_ACT");
    assert_non_null(b);
    assert_int_equal(tsr_cpu_backend_act_q8(b), q8);
    if (tsr_cpu_backend_isa(b) != isa) {
        tsr_backend_free(b);
        return NULL;
    }
    return b;
}

static int setup(void **state)
{
    const char *env = getenv("TSR_TEST_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL) ^ (uint64_t)clock();
    if (!seed) seed = 1;
    tsr_test_rng_state = seed;
    print_message("test_cpu_ops: seed %llu (TSR_TEST_SEED=%llu reproduces)\n",
                  (unsigned long long)seed, (unsigned long long)seed);
    unsetenv("TESSERA_CPU_ACT"); /* the default mode must be the exact one */
    for (int i = 0; i < N_ISA; i++) {
        backends[i] = backend_for((enum tsr_cpu_isa)i, 2, 0);
        backends_q8[i] = backend_for((enum tsr_cpu_isa)i, 2, 1);
        print_message("  %s: %s\n", tsr_cpu_isa_name((enum tsr_cpu_isa)i),
                      backends[i] ? "tested" : "not on this CPU, skipped");
    }
    assert_non_null(backends[TSR_CPU_SCALAR]);
    return 0;
}

static int teardown(void **state)
{
    for (int i = 0; i < N_ISA; i++) {
        tsr_backend_free(backends[i]);
        tsr_backend_free(backends_q8[i]);
    }
    return 0;
}

/* ---- buffers and comparisons ---- */

static float *get_floats(tsr_buf_t *buf, size_t n)
{
    float *out = malloc(n * sizeof(float));
    assert_non_null(out);
    assert_int_equal(tsr_buf_get(buf, 0, out, n * sizeof(float)), 0);
    return out;
}

static void expect_nmse(double e, double limit, const char *what)
{
    if (!(e <= limit)) fail_msg("%s: NMSE %.3g above %.3g", what, e, limit);
}

/* Largest NMSE seen per op, printed at the end for the record. */
static double worst_q8, worst_f, worst_simd, worst_exact[2];

/* ---- weights: random blocks and an independent double dequantizer ---- */

struct wmat {
    enum tsr_dtype type;
    int rows, cols;
    uint8_t *data;
    size_t row_bytes;
    double *deq; /* (rows, cols) */
};

static double f16d(uint16_t h)
{
    return (double)tsr_f16_to_f32(h);
}

/* Random weights with every code a block can hold: any int8 in Q8_0 (-128 included), any
 * nibble in Q4, scales of varied size, the odd zero scale. */
static void make_weight(struct wmat *w, enum tsr_dtype t, int rows, int cols)
{
    w->type = t;
    w->rows = rows;
    w->cols = cols;
    w->row_bytes = tsr_dtype_row_bytes(t, cols);
    assert_true(w->row_bytes > 0);
    w->data = malloc(w->row_bytes * rows);
    w->deq = malloc(sizeof(double) * rows * cols);
    assert_non_null(w->data);
    assert_non_null(w->deq);
    for (int r = 0; r < rows; r++) {
        uint8_t *row = w->data + (size_t)r * w->row_bytes;
        double *dq = w->deq + (size_t)r * cols;
        for (int i = 0; i < cols; i++) {
            float f = 0.05f * tsr_test_rng_normal();
            if (t == TSR_F32) {
                memcpy(row + 4 * (size_t)i, &f, 4);
                dq[i] = f;
            } else if (t == TSR_F16 || t == TSR_BF16) {
                uint16_t h = t == TSR_F16 ? tsr_f32_to_f16(f) : tsr_f32_to_bf16(f);
                memcpy(row + 2 * (size_t)i, &h, 2);
                dq[i] = t == TSR_F16 ? f16d(h) : (double)tsr_bf16_to_f32(h);
            }
        }
        if (t == TSR_F32 || t == TSR_F16 || t == TSR_BF16) continue;
        for (int b = 0; b < cols / TSR_QK; b++) {
            float scale = (float)(0.0005 + 0.004 * tsr_test_rng_uniform());
            if (rng_int(50) == 0) scale = 0.0f;
            double *db = dq + (size_t)b * TSR_QK;
            if (t == TSR_Q8_0) {
                struct tsr_block_q8_0 *x = (struct tsr_block_q8_0 *)row + b;
                x->d = tsr_f32_to_f16(scale);
                for (int j = 0; j < TSR_QK; j++) {
                    x->qs[j] = (int8_t)(tsr_test_rng_u64() & 0xff);
                    db[j] = f16d(x->d) * x->qs[j];
                }
            } else if (t == TSR_Q4_0) {
                struct tsr_block_q4_0 *x = (struct tsr_block_q4_0 *)row + b;
                x->d = tsr_f32_to_f16(scale * 8);
                for (int j = 0; j < TSR_QK / 2; j++) {
                    x->qs[j] = (uint8_t)(tsr_test_rng_u64() & 0xff);
                    db[j] = f16d(x->d) * ((x->qs[j] & 15) - 8);
                    db[j + 16] = f16d(x->d) * ((x->qs[j] >> 4) - 8);
                }
            } else {
                struct tsr_block_q4_1 *x = (struct tsr_block_q4_1 *)row + b;
                x->d = tsr_f32_to_f16(scale * 8);
                /* m near -7.5 d, as quantizing zero-mean weights gives (min of the block) */
                x->m = tsr_f32_to_f16(-scale * 8 * (7.5f + 0.5f * tsr_test_rng_normal()));
                for (int j = 0; j < TSR_QK / 2; j++) {
                    x->qs[j] = (uint8_t)(tsr_test_rng_u64() & 0xff);
                    db[j] = f16d(x->d) * (x->qs[j] & 15) + f16d(x->m);
                    db[j + 16] = f16d(x->d) * (x->qs[j] >> 4) + f16d(x->m);
                }
            }
        }
    }
}

static void free_weight(struct wmat *w)
{
    free(w->data);
    free(w->deq);
}

/* Activations: Gaussian rows of varied scale, one row with outliers, one all-zero block. */
static float *make_acts(int n, int cols)
{
    float *x = malloc(sizeof(float) * n * cols);
    assert_non_null(x);
    for (int j = 0; j < n; j++)
        fill_normal(x + (size_t)j * cols, cols, (float)(0.1 + 3 * tsr_test_rng_uniform()));
    if (n > 1)
        for (int i = 0; i < cols; i += 97) x[(size_t)cols + i] *= 20.0f;
    memset(x, 0, TSR_QK * sizeof(float));
    return x;
}

static double *ref_matmul(const struct wmat *w, const float *x, const float *bias, int n)
{
    double *y = malloc(sizeof(double) * n * w->rows);
    assert_non_null(y);
    for (int j = 0; j < n; j++)
        for (int r = 0; r < w->rows; r++) {
            const double *wr = w->deq + (size_t)r * w->cols;
            const float *xj = x + (size_t)j * w->cols;
            double s = bias ? bias[r] : 0.0;
            for (int i = 0; i < w->cols; i++) s += wr[i] * xj[i];
            y[(size_t)j * w->rows + r] = s;
        }
    return y;
}

/* Expected squared error of each output from rounding the activations to q8: per block of 32,
 * step d = amax/127 and uniform rounding error of variance d²/12. */
static double *ref_q8_errvar(const struct wmat *w, const float *x, int n)
{
    double *v = calloc((size_t)n * w->rows, sizeof(double));
    assert_non_null(v);
    for (int j = 0; j < n; j++)
        for (int b = 0; b < w->cols / TSR_QK; b++) {
            const float *xb = x + (size_t)j * w->cols + (size_t)b * TSR_QK;
            double amax = 0;
            for (int i = 0; i < TSR_QK; i++) amax = fmax(amax, fabs(xb[i]));
            double d2 = (amax / 127) * (amax / 127) / 12;
            for (int r = 0; r < w->rows; r++) {
                const double *wb = w->deq + (size_t)r * w->cols + (size_t)b * TSR_QK;
                double s = 0;
                for (int i = 0; i < TSR_QK; i++) s += wb[i] * wb[i];
                v[(size_t)j * w->rows + r] += d2 * s;
            }
        }
    return v;
}

/* Checks a quantized matmul result: NMSE on the rows without outliers (all but row 1), and the
 * total squared error against the rounding model on all rows. Returns the NMSE. */
static double check_q8(const float *y, const double *ref, const double *errvar, int n, int rows,
                       const char *what)
{
    double num = 0, den = 0, err = 0, pred = 0;
    int gaussian = 0;
    for (int j = 0; j < n; j++)
        for (int r = 0; r < rows; r++) {
            size_t i = (size_t)j * rows + r;
            double d = (double)y[i] - ref[i];
            if (isnan(d)) fail_msg("%s: NaN at %zu", what, i);
            err += d * d;
            pred += errvar[i];
            if (j != 1) {
                gaussian++;
                num += d * d;
                den += ref[i] * ref[i];
            }
        }
    double limit = n * rows >= 64 ? 5 : 12; /* few outputs: a chi-square of few dof */
    if (err > limit * pred + 1e-12 * den)
        fail_msg("%s: squared error %.3g above %gx the %.3g int8 rounding predicts", what, err,
                 limit, pred);
    double e = den > 0 ? num / den : num;
    if (gaussian < 64) return 0;
    expect_nmse(e, 1e-4, what);
    return e;
}

/* Runs the backend's matmul; returns y (n, rows), malloc'ed. */
static float *run_matmul(tsr_backend_t *b, const struct wmat *w, const float *x, const float *bias,
                         int n)
{
    tsr_buf_t *wb = tsr_buf_weights(b, w->data, w->row_bytes * w->rows);
    tsr_buf_t *xb = buf_from(b, x, sizeof(float) * n * w->cols);
    tsr_buf_t *yb = buf_nan(b, (size_t)n * w->rows);
    tsr_buf_t *bb = bias ? buf_from(b, bias, sizeof(float) * w->rows) : NULL;
    assert_non_null(wb);
    struct tsr_weight wt = {wb, w->type, w->rows, w->cols};
    struct tsr_weight bt = {bb, TSR_F32, 1, w->rows};
    assert_int_equal(tsr_op_matmul(b, yb, &wt, xb, bias ? &bt : NULL, n), 0);
    float *y = get_floats(yb, (size_t)n * w->rows);
    tsr_buf_free(wb);
    tsr_buf_free(xb);
    tsr_buf_free(yb);
    tsr_buf_free(bb);
    return y;
}

static const enum tsr_dtype all_types[] = {TSR_F32,  TSR_F16,  TSR_BF16,
                                           TSR_Q8_0, TSR_Q4_0, TSR_Q4_1};

static int is_quant(enum tsr_dtype t)
{
    return t == TSR_Q8_0 || t == TSR_Q4_0 || t == TSR_Q4_1;
}

/* ---- tests ---- */

/* Every ISA quantizes activations to the same bytes as the scalar code. */
static void test_quantize_identical(void **state)
{
    const struct tsr_cpu_kernels *ks[N_ISA] = {&tsr_cpu_kernels_scalar, &tsr_cpu_kernels_avx2,
                                               &tsr_cpu_kernels_avx512};
    const int sizes[] = {32, 96, 256, 576, 1536, 4128};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        int k = sizes[si];
        float *x = make_acts(1, k);
        x[40 % k] = 1e-30f; /* tiny values next to zeros */
        size_t qb = tsr_cpu_q8_row_bytes(k);
        uint8_t *ref = malloc(qb), *got = malloc(qb);
        memset(ref, 0xa5, qb);
        ks[0]->quantize_q8(x, ref, k);
        for (int i = 1; i < N_ISA; i++) {
            if (!backends[i]) continue;
            memset(got, 0x5a, qb);
            ks[i]->quantize_q8(x, got, k);
            if (memcmp(ref, got, qb))
                fail_msg("%s quantizes %d values differently from scalar",
                         tsr_cpu_isa_name((enum tsr_cpu_isa)i), k);
        }
        free(ref);
        free(got);
        free(x);
    }
}

/* dequant gives the same f32 weights on every ISA (cpu_kernels.h), equal to the double
 * dequantization here (Q4_1 rounded once). */
static void test_dequant_identical(void **state)
{
    const struct tsr_cpu_kernels *ks[N_ISA] = {&tsr_cpu_kernels_scalar, &tsr_cpu_kernels_avx2,
                                               &tsr_cpu_kernels_avx512};
    for (size_t ti = 0; ti < sizeof all_types / sizeof all_types[0]; ti++) {
        enum tsr_dtype t = all_types[ti];
        int cols = is_quant(t) ? 352 : 333;
        struct wmat w;
        make_weight(&w, t, 3, cols);
        float *ref = malloc(sizeof(float) * cols), *got = malloc(sizeof(float) * cols);
        for (int r = 0; r < 3; r++) {
            const uint8_t *row = w.data + (size_t)r * w.row_bytes;
            for (int i = 0; i < cols; i++) ref[i] = NAN;
            ks[0]->dequant(t, row, ref, cols);
            for (int i = 0; i < cols; i++) {
                float want = (float)w.deq[(size_t)r * cols + i];
                if (memcmp(&ref[i], &want, sizeof want))
                    fail_msg("scalar dequant %s: weight %d is %.9g, want %.9g", tsr_dtype_name(t),
                             i, ref[i], want);
            }
            for (int k = 1; k < N_ISA; k++) {
                if (!backends[k]) continue;
                for (int i = 0; i < cols; i++) got[i] = NAN;
                ks[k]->dequant(t, row, got, cols);
                if (memcmp(ref, got, sizeof(float) * cols))
                    fail_msg("%s dequantizes %s differently from scalar",
                             tsr_cpu_isa_name((enum tsr_cpu_isa)k), tsr_dtype_name(t));
            }
        }
        free(ref);
        free(got);
        free_weight(&w);
    }
}

struct shape {
    int rows, cols, n;
};

/* Decode shapes of SmolLM2-135M, odd sizes, partial 8-block groups (cols 96, 320), batches on
 * both sides of the decode/tile switch (n <= 4, n > 4) with partial tiles and partial groups of
 * activation rows, and more activation rows than one q8 pass holds (n 300). Float weights get
 * cols + 13 (not a multiple of any vector width). */
static const struct shape mm_shapes[] = {
    {576, 576, 1},  {192, 576, 3},  {1536, 576, 7}, {576, 1536, 1}, {100, 96, 5},
    {37, 320, 17},  {64, 32, 1},    {70, 256, 33},  {40, 64, 300},  {3, 4096, 2},
    {150, 576, 64}, {45, 160, 200}, {17, 32, 4},    {5, 64, 1},
};

/* Checks y (n x rows) from ISA i against the double reference, and against the scalar result
 * when i is not scalar; keeps *scalar for the next ISA. */
static void check_exact(const float *y, const double *ref, float **scalar, int i, int n, int rows,
                        const char *what)
{
    double e = tsr_test_nmse(y, ref, (size_t)n * rows);
    expect_nmse(e, 1e-10, what);
    if (e > worst_f) worst_f = e;
    if (i == 0) {
        *scalar = malloc(sizeof(float) * n * rows);
        memcpy(*scalar, y, sizeof(float) * n * rows);
        return;
    }
    double *sd = malloc(sizeof(double) * n * rows);
    for (size_t q = 0; q < (size_t)n * rows; q++) sd[q] = (*scalar)[q];
    double es = tsr_test_nmse(y, sd, (size_t)n * rows);
    char vs[160];
    snprintf(vs, sizeof vs, "%s vs scalar", what);
    expect_nmse(es, 1e-10, vs);
    if (es > worst_simd) worst_simd = es;
    free(sd);
}

/* The default mode: every weight type against the double reference, to f32 rounding. */
static void test_matmul(void **state)
{
    for (size_t ti = 0; ti < sizeof all_types / sizeof all_types[0]; ti++) {
        enum tsr_dtype t = all_types[ti];
        for (size_t si = 0; si < sizeof mm_shapes / sizeof mm_shapes[0]; si++) {
            struct shape sh = mm_shapes[si];
            if (!is_quant(t)) sh.cols += 13;
            struct wmat w;
            make_weight(&w, t, sh.rows, sh.cols);
            float *x = make_acts(sh.n, sh.cols);
            double *ref = ref_matmul(&w, x, NULL, sh.n);
            float *scalar = NULL;
            for (int i = 0; i < N_ISA; i++) {
                if (!backends[i]) continue;
                float *y = run_matmul(backends[i], &w, x, NULL, sh.n);
                char what[128];
                snprintf(what, sizeof what, "matmul %s %dx%d n=%d on %s", tsr_dtype_name(t),
                         sh.rows, sh.cols, sh.n, tsr_cpu_isa_name((enum tsr_cpu_isa)i));
                check_exact(y, ref, &scalar, i, sh.n, sh.rows, what);
                double e = tsr_test_nmse(y, ref, (size_t)sh.n * sh.rows);
                if (e > worst_exact[is_quant(t)]) worst_exact[is_quant(t)] = e;
                free(y);
            }
            free(scalar);
            free(ref);
            free(x);
            free_weight(&w);
        }
    }
    print_message("  matmul worst NMSE: float weights %.3g, quantized weights %.3g (limit 1e-10); "
                  "SIMD vs scalar %.3g (limit 1e-10)\n",
                  worst_exact[0], worst_exact[1], worst_simd);
}

/* TESSERA_CPU_ACT=q8: quantized weights against the int8 rounding model, float weights exact. */
static void test_matmul_q8(void **state)
{
    double worst_simd_q8 = 0;
    for (size_t ti = 0; ti < sizeof all_types / sizeof all_types[0]; ti++) {
        enum tsr_dtype t = all_types[ti];
        for (size_t si = 0; si < sizeof mm_shapes / sizeof mm_shapes[0]; si++) {
            struct shape sh = mm_shapes[si];
            struct wmat w;
            make_weight(&w, t, sh.rows, sh.cols);
            float *x = make_acts(sh.n, sh.cols);
            double *ref = ref_matmul(&w, x, NULL, sh.n);
            double *errvar = is_quant(t) ? ref_q8_errvar(&w, x, sh.n) : NULL;
            float *scalar = NULL;
            for (int i = 0; i < N_ISA; i++) {
                if (!backends_q8[i]) continue;
                float *y = run_matmul(backends_q8[i], &w, x, NULL, sh.n);
                char what[128];
                snprintf(what, sizeof what, "q8 matmul %s %dx%d n=%d on %s", tsr_dtype_name(t),
                         sh.rows, sh.cols, sh.n, tsr_cpu_isa_name((enum tsr_cpu_isa)i));
                if (!is_quant(t)) {
                    check_exact(y, ref, &scalar, i, sh.n, sh.rows, what);
                    free(y);
                    continue;
                }
                double e = check_q8(y, ref, errvar, sh.n, sh.rows, what);
                if (e > worst_q8) worst_q8 = e;
                if (i == 0) {
                    scalar = y;
                    continue;
                }
                double *sd = malloc(sizeof(double) * sh.n * sh.rows);
                for (size_t q = 0; q < (size_t)sh.n * sh.rows; q++) sd[q] = scalar[q];
                double es = tsr_test_nmse(y, sd, (size_t)sh.n * sh.rows);
                strcat(what, " vs scalar");
                expect_nmse(es, 1e-10, what);
                if (es > worst_simd_q8) worst_simd_q8 = es;
                free(sd);
                free(y);
            }
            free(scalar);
            free(ref);
            free(errvar);
            free(x);
            free_weight(&w);
        }
    }
    print_message("  q8 matmul worst NMSE: quantized %.3g (limit 1e-4, Gaussian rows), SIMD vs "
                  "scalar %.3g (limit 1e-10)\n",
                  worst_q8, worst_simd_q8);
}

/* Batch invariance: row j of x computed in a batch of n rows (with whatever rows come before and
 * after it) equals bitwise row j computed alone, for every weight type, ISA, mode and 1 or 2
 * threads; so do 1 and 2 threads. The batch sizes cross the decode/tile switch, leave partial
 * groups and span two passes of activation rows (150); 150 weight rows make partial tiles and
 * enough work for 2 threads even at n = 1. F32 weights
 * are also run from a misaligned copy (converted, not used in place). */
static void test_batch_invariance(void **state)
{
    enum { ROWS = 150, NMAX = 150 };
    const int batches[][2] = {{0, 2}, {0, 3}, {1, 4}, {0, 5}, {3, 8}, {2, 17}, {9, 64}, {0, NMAX}};
    for (int q8 = 0; q8 < 2; q8++)
        for (int i = 0; i < N_ISA; i++) {
            if (!backends[i]) continue;
            tsr_backend_t *bt[2] = {backend_for((enum tsr_cpu_isa)i, 1, q8),
                                    backend_for((enum tsr_cpu_isa)i, 2, q8)};
            for (size_t ti = 0; ti < sizeof all_types / sizeof all_types[0]; ti++) {
                enum tsr_dtype t = all_types[ti];
                int cols = is_quant(t) ? 320 : 300;
                struct wmat w;
                make_weight(&w, t, ROWS, cols);
                float *x = make_acts(NMAX, cols);
                float *alone = malloc(sizeof(float) * NMAX * ROWS);
                for (int j = 0; j < NMAX; j++) {
                    float *y = run_matmul(bt[0], &w, x + (size_t)j * cols, NULL, 1);
                    memcpy(alone + (size_t)j * ROWS, y, sizeof(float) * ROWS);
                    free(y);
                }
                for (int th = 0; th < 2; th++)
                    for (size_t bi = 0; bi < sizeof batches / sizeof batches[0]; bi++) {
                        int j0 = batches[bi][0], n = batches[bi][1];
                        float *y = run_matmul(bt[th], &w, x + (size_t)j0 * cols, NULL, n);
                        for (int j = 0; j < n; j++)
                            if (memcmp(y + (size_t)j * ROWS, alone + (size_t)(j0 + j) * ROWS,
                                       sizeof(float) * ROWS))
                                fail_msg("%s matmul %s on %s, %d thread(s): row %d in a batch of "
                                         "%d differs from the row alone",
                                         q8 ? "q8" : "exact", tsr_dtype_name(t),
                                         tsr_cpu_isa_name((enum tsr_cpu_isa)i), th + 1, j0 + j, n);
                        free(y);
                    }
                if (t == TSR_F32) { /* misaligned weights: converted, the same results */
                    uint8_t *odd = malloc(w.row_bytes * ROWS + 2);
                    memcpy(odd + 2, w.data, w.row_bytes * ROWS);
                    uint8_t *keep = w.data;
                    w.data = odd + 2;
                    float *y = run_matmul(bt[1], &w, x, NULL, NMAX);
                    if (memcmp(y, alone, sizeof(float) * NMAX * ROWS))
                        fail_msg("misaligned F32 weights on %s give other results",
                                 tsr_cpu_isa_name((enum tsr_cpu_isa)i));
                    free(y);
                    w.data = keep;
                    free(odd);
                }
                free(alone);
                free(x);
                free_weight(&w);
            }
            tsr_backend_free(bt[0]);
            tsr_backend_free(bt[1]);
        }
}

static void test_matmul_bias(void **state)
{
    for (int q8 = 0; q8 < 2; q8++)
        for (int i = 0; i < N_ISA; i++) {
            tsr_backend_t *b = q8 ? backends_q8[i] : backends[i];
            if (!b) continue;
            for (int q = 0; q < 2; q++)
                for (int n = 1; n <= 20; n += 19) { /* decode and batch */
                    struct wmat w;
                    make_weight(&w, q ? TSR_Q4_1 : TSR_F16, 48, 128);
                    float *x = make_acts(n, 128), bias[48];
                    fill_normal(bias, 48, 1.0f);
                    double *ref = ref_matmul(&w, x, bias, n);
                    float *y = run_matmul(b, &w, x, bias, n);
                    if (q && q8) {
                        double *errvar = ref_q8_errvar(&w, x, n);
                        check_q8(y, ref, errvar, n, 48, "q8 matmul with bias");
                        free(errvar);
                    } else {
                        expect_nmse(tsr_test_nmse(y, ref, (size_t)n * 48), 1e-10,
                                    "matmul with bias");
                    }
                    free(y);
                    free(ref);
                    free(x);
                    free_weight(&w);
                }
        }
}

/* matmul_many and matmul_swiglu (the backend's generic fallbacks on the CPU): the same numbers as
 * the ops they stand for, bit for bit, and their argument checks. */
static void test_fused_matmuls(void **state)
{
    tsr_backend_t *b = backends[TSR_CPU_SCALAR];
    enum { COLS = 96 };
    static const int rows[3] = {40, 8, 8};
    for (int n = 1; n <= 20; n += 19) {
        struct wmat w[3];
        tsr_buf_t *wb[3], *yb[3];
        struct tsr_weight wt[3];
        const struct tsr_weight *wp[3];
        float *x = make_acts(n, COLS), bias[3][40];
        tsr_buf_t *xb = buf_from(b, x, sizeof(float) * n * COLS);
        for (int i = 0; i < 3; i++) {
            make_weight(&w[i], i ? TSR_Q8_0 : TSR_F16, rows[i], COLS);
            wb[i] = tsr_buf_weights(b, w[i].data, w[i].row_bytes * w[i].rows);
            assert_non_null(wb[i]);
            wt[i] = (struct tsr_weight){wb[i], w[i].type, rows[i], COLS};
            wp[i] = &wt[i];
            yb[i] = buf_nan(b, (size_t)n * rows[i]);
            fill_normal(bias[i], rows[i], 1.0f);
        }
        tsr_buf_t *bb = buf_from(b, bias[1], sizeof(float) * rows[1]);
        struct tsr_weight bt = {bb, TSR_F32, 1, rows[1]};
        const struct tsr_weight *bp[3] = {NULL, &bt, NULL};
        assert_int_equal(tsr_op_matmul_many(b, 3, yb, wp, bp, xb, n), 0);
        for (int i = 0; i < 3; i++) {
            float *got = get_floats(yb[i], (size_t)n * rows[i]);
            float *want = run_matmul(b, &w[i], x, i == 1 ? bias[1] : NULL, n);
            assert_memory_equal(got, want, sizeof(float) * n * rows[i]);
            free(got);
            free(want);
        }
        /* swiglu over weights 1 and 2 (8 x 96 each): against silu(x·W1ᵀ) * (x·W2ᵀ) in double */
        tsr_buf_t *out = buf_nan(b, (size_t)n * 8), *tmp = buf_nan(b, (size_t)n * 8);
        assert_int_equal(tsr_op_matmul_swiglu(b, out, tmp, &wt[1], &wt[2], xb, n), 0);
        float *got = get_floats(out, (size_t)n * 8);
        double *g = ref_matmul(&w[1], x, NULL, n), *u = ref_matmul(&w[2], x, NULL, n);
        for (int i = 0; i < n * 8; i++) g[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
        expect_nmse(tsr_test_nmse(got, g, (size_t)n * 8), 1e-10, "matmul_swiglu");
        /* checks: weight count, out aliasing tmp, shapes that differ */
        assert_int_equal(tsr_op_matmul_many(b, 0, yb, wp, NULL, xb, n), TSR_EINVAL);
        assert_int_equal(tsr_op_matmul_many(b, 4, yb, wp, NULL, xb, n), TSR_EINVAL);
        assert_int_equal(tsr_op_matmul_swiglu(b, out, out, &wt[1], &wt[2], xb, n), TSR_EINVAL);
        assert_int_equal(tsr_op_matmul_swiglu(b, yb[0], tmp, &wt[0], &wt[2], xb, n), TSR_EINVAL);
        free(got);
        free(g);
        free(u);
        tsr_buf_free(out);
        tsr_buf_free(tmp);
        tsr_buf_free(bb);
        for (int i = 0; i < 3; i++) {
            tsr_buf_free(wb[i]);
            tsr_buf_free(yb[i]);
            free_weight(&w[i]);
        }
        tsr_buf_free(xb);
        free(x);
    }
}

/* The CPU backend samples on the host (tsr_op_sample: TSR_EUNSUPPORTED), and bad parameters are
 * refused before any backend sees them; it has no graphs. */
static void test_sample_graphs_unsupported(void **state)
{
    tsr_backend_t *b = backends[TSR_CPU_SCALAR];
    float x[4] = {1, 2, 3, 4};
    tsr_buf_t *xb = buf_from(b, x, sizeof x);
    int32_t id = -1;
    struct tsr_sample_params ok = {0.8f, 0, 1.0f, 0.0f, 0.5}, bad = ok;
    assert_int_equal(tsr_op_sample(b, xb, 1, 4, &ok, &id, NULL), TSR_EUNSUPPORTED);
    bad.u = 1.0;
    assert_int_equal(tsr_op_sample(b, xb, 1, 4, &bad, &id, NULL), TSR_EINVAL);
    bad = ok;
    bad.top_p = 0;
    assert_int_equal(tsr_op_sample(b, xb, 1, 4, &bad, &id, NULL), TSR_EINVAL);
    struct tsr_sample_params two[2] = {ok, ok};
    two[1].temperature = -1;
    assert_int_equal(tsr_op_sample(b, xb, 1, 4, two, &id, NULL), TSR_EUNSUPPORTED);
    assert_int_equal(tsr_op_sample(b, xb, 1, 2 * 4, two, &id, NULL), TSR_ERANGE);
    float x2[8] = {0};
    tsr_buf_t *x2b = buf_from(b, x2, sizeof x2);
    assert_int_equal(tsr_op_sample(b, x2b, 2, 4, two, &id, NULL), TSR_EINVAL);
    tsr_buf_free(x2b);
    assert_int_equal(tsr_backend_graphs(b), 0);
    assert_int_equal(tsr_graph_begin(b), TSR_EUNSUPPORTED);
    tsr_buf_free(xb);
}

static void test_embed(void **state)
{
    for (int i = 0; i < N_ISA; i++) {
        tsr_backend_t *b = backends[i];
        if (!b) continue;
        for (size_t ti = 0; ti < sizeof all_types / sizeof all_types[0]; ti++) {
            struct wmat w;
            make_weight(&w, all_types[ti], 50, 96);
            int32_t ids[7] = {0, 49, 3, 3, 17, 25, 1};
            tsr_buf_t *tb = tsr_buf_weights(b, w.data, w.row_bytes * w.rows);
            tsr_buf_t *ob = buf_nan(b, 7 * 96);
            struct tsr_weight wt = {tb, w.type, w.rows, w.cols};
            assert_int_equal(tsr_op_embed(b, ob, &wt, ids, 7), 0);
            float *o = get_floats(ob, 7 * 96);
            double ref[7 * 96];
            for (int r = 0; r < 7; r++)
                for (int c = 0; c < 96; c++) ref[r * 96 + c] = w.deq[(size_t)ids[r] * 96 + c];
            expect_nmse(tsr_test_nmse(o, ref, 7 * 96), 0.0, "embed");
            int32_t bad = 50;
            assert_int_equal(tsr_op_embed(b, ob, &wt, &bad, 1), TSR_ERANGE);
            free(o);
            tsr_buf_free(tb);
            tsr_buf_free(ob);
            free_weight(&w);
        }
    }
}

static void ref_rmsnorm(const float *x, const float *w, int dim, float eps, double *out)
{
    double s = 0;
    for (int i = 0; i < dim; i++) s += (double)x[i] * x[i];
    double inv = 1.0 / sqrt(s / dim + eps);
    for (int i = 0; i < dim; i++) out[i] = x[i] * inv * w[i];
}

static void test_rmsnorm(void **state)
{
    const int dims[] = {576, 64, 17, 4096};
    const int ns[] = {1, 5, 33, 2};
    for (int i = 0; i < N_ISA; i++) {
        tsr_backend_t *b = backends[i];
        if (!b) continue;
        for (int c = 0; c < 4; c++) {
            int dim = dims[c], n = ns[c];
            float eps = 1e-5f;
            float *x = make_acts(n, dim), *wv = malloc(sizeof(float) * dim);
            float *delta = malloc(sizeof(float) * n * dim);
            fill_normal(wv, dim, 1.0f);
            fill_normal(delta, (size_t)n * dim, 1.0f);
            double *ref = malloc(sizeof(double) * n * dim);
            tsr_buf_t *xb = buf_from(b, x, sizeof(float) * n * dim);
            tsr_buf_t *wb = tsr_buf_weights(b, wv, sizeof(float) * dim);
            tsr_buf_t *ob = buf_nan(b, (size_t)n * dim);
            struct tsr_weight wt = {wb, TSR_F32, 1, dim};

            /* x is all zeros in its first block: rms of row 0 stays well defined with eps */
            assert_int_equal(tsr_op_rmsnorm(b, ob, xb, &wt, n, dim, eps), 0);
            for (int r = 0; r < n; r++)
                ref_rmsnorm(x + (size_t)r * dim, wv, dim, eps, ref + (size_t)r * dim);
            float *o = get_floats(ob, (size_t)n * dim);
            expect_nmse(tsr_test_nmse(o, ref, (size_t)n * dim), 1e-10, "rmsnorm");
            free(o);

            /* in place */
            assert_int_equal(tsr_op_rmsnorm(b, xb, xb, &wt, n, dim, eps), 0);
            o = get_floats(xb, (size_t)n * dim);
            expect_nmse(tsr_test_nmse(o, ref, (size_t)n * dim), 1e-10, "rmsnorm in place");
            free(o);

            /* fused residual add */
            assert_int_equal(tsr_buf_set(xb, 0, x, sizeof(float) * n * dim), 0);
            tsr_buf_t *db = buf_from(b, delta, sizeof(float) * n * dim);
            float *o2 = tsr_buf_host(ob);
            for (size_t q = 0; q < (size_t)n * dim; q++) o2[q] = NAN;
            assert_int_equal(tsr_op_add_rmsnorm(b, xb, db, ob, &wt, n, dim, eps), 0);
            float *res = get_floats(xb, (size_t)n * dim);
            for (size_t q = 0; q < (size_t)n * dim; q++) {
                float want = x[q] + delta[q];
                if (memcmp(&res[q], &want, sizeof want)) fail_msg("add_rmsnorm residual %zu", q);
            }
            for (int r = 0; r < n; r++)
                ref_rmsnorm(res + (size_t)r * dim, wv, dim, eps, ref + (size_t)r * dim);
            o = get_floats(ob, (size_t)n * dim);
            expect_nmse(tsr_test_nmse(o, ref, (size_t)n * dim), 1e-10, "add_rmsnorm");
            free(o);
            free(res);
            tsr_buf_free(db);
            tsr_buf_free(xb);
            tsr_buf_free(wb);
            tsr_buf_free(ob);
            free(ref);
            free(x);
            free(wv);
            free(delta);
        }
    }
}

static void test_swiglu(void **state)
{
    const int widths[] = {1536, 7, 33, 16};
    const int ns[] = {1, 3, 5, 2};
    for (int i = 0; i < N_ISA; i++) {
        tsr_backend_t *b = backends[i];
        if (!b) continue;
        for (int c = 0; c < 4; c++) {
            int wd = widths[c], n = ns[c];
            size_t len = (size_t)wd * n;
            float *g = malloc(sizeof(float) * len), *u = malloc(sizeof(float) * len);
            fill_normal(g, len, 4.0f);
            fill_normal(u, len, 1.0f);
            g[0] = 100.0f; /* far tails of exp */
            g[len - 1] = -100.0f;
            double *ref = malloc(sizeof(double) * len);
            for (size_t q = 0; q < len; q++) ref[q] = g[q] / (1.0 + exp(-(double)g[q])) * u[q];
            tsr_buf_t *gb = buf_from(b, g, sizeof(float) * len);
            tsr_buf_t *ub = buf_from(b, u, sizeof(float) * len);
            tsr_buf_t *ob = buf_nan(b, len);
            assert_int_equal(tsr_op_swiglu(b, ob, gb, ub, n, wd), 0);
            float *o = get_floats(ob, len);
            expect_nmse(tsr_test_nmse(o, ref, len), 1e-10, "swiglu");
            free(o);
            assert_int_equal(tsr_op_swiglu(b, gb, gb, ub, n, wd), 0); /* out == gate */
            o = get_floats(gb, len);
            expect_nmse(tsr_test_nmse(o, ref, len), 1e-10, "swiglu in place");
            free(o);
            tsr_buf_free(gb);
            tsr_buf_free(ub);
            tsr_buf_free(ob);
            free(ref);
            free(g);
            free(u);
        }
    }
}

static void test_gather_rows(void **state)
{
    tsr_backend_t *b = backends[TSR_CPU_SCALAR];
    float x[6 * 5];
    fill_normal(x, 30, 1.0f);
    int32_t rows[4] = {5, 0, 5, 2};
    tsr_buf_t *xb = buf_from(b, x, sizeof x);
    tsr_buf_t *ob = buf_nan(b, 4 * 5);
    assert_int_equal(tsr_op_gather_rows(b, ob, xb, rows, 4, 5), 0);
    float *o = get_floats(ob, 20);
    for (int i = 0; i < 4; i++) assert_memory_equal(o + i * 5, x + rows[i] * 5, 5 * sizeof(float));
    free(o);
    assert_int_equal(tsr_op_gather_rows(b, xb, xb, rows, 4, 5), 0); /* in place */
    o = get_floats(xb, 20);
    for (int i = 0; i < 4; i++) assert_memory_equal(o + i * 5, x + rows[i] * 5, 5 * sizeof(float));
    free(o);
    int32_t bad = 6;
    assert_int_equal(tsr_op_gather_rows(b, ob, xb, &bad, 1, 5), TSR_ERANGE);
    tsr_buf_free(xb);
    tsr_buf_free(ob);
}

/* ---- RoPE and attention ---- */

static const struct attn_case attn_cases[] = {
    {9, 3, 64, 16, 0, 3, {0, 37, 100}, {20, 1, 1}},    /* SmolLM2: GQA 3, prefill + decode */
    {8, 8, 128, 16, 1, 2, {15, 0}, {2, 33}},           /* MHA, neox, crossing blocks */
    {8, 2, 64, 7, 1, 4, {0, 5, 70, 3}, {1, 9, 1, 16}}, /* GQA 4, odd block size */
    {4, 1, 128, 32, 0, 1, {190}, {1}},                 /* long decode over many blocks */
    {6, 2, 40, 5, 1, 2, {11, 0}, {3, 6}},              /* head dim not a multiple of 16 */
    {4, 2, 64, 16, 1, 2, {600, 250}, {1, 10}},         /* several splits, split boundaries */
    {20, 1, 32, 16, 0, 1, {40}, {3}},                  /* a KV group of 20 heads (> 16) */
};

static void ref_rotate(double *x, int hd, int pos, const float *freq, int neox)
{
    for (int i = 0; i < hd / 2; i++) {
        double a = (double)pos * freq[i], c = cos(a), s = sin(a);
        int i0 = neox ? i : 2 * i, i1 = neox ? i + hd / 2 : 2 * i + 1;
        double x0 = x[i0], x1 = x[i1];
        x[i0] = x0 * c - x1 * s;
        x[i1] = x0 * s + x1 * c;
    }
}

/* Runs rope_kv_write + attention on backend b and checks both against references. Returns
 * the attention output (nt, n_head*head_dim) and leaves the caches in kc_out/vc_out. */
static float *attn_run(tsr_backend_t *b, const struct attn_case *ac, const struct attn_setup *a,
                       int check)
{
    int hd = ac->head_dim, nt = a->nt;
    size_t kw = (size_t)ac->n_kv_head * hd, qw = (size_t)ac->n_head * hd;
    tsr_buf_t *qb = buf_from(b, a->q, sizeof(float) * nt * qw);
    tsr_buf_t *kb = buf_from(b, a->k, sizeof(float) * nt * kw);
    tsr_buf_t *vb = buf_from(b, a->v, sizeof(float) * nt * kw);
    tsr_buf_t *kcb = buf_from(b, a->kc, sizeof(float) * a->n_slots * kw);
    tsr_buf_t *vcb = buf_from(b, a->vc, sizeof(float) * a->n_slots * kw);
    tsr_buf_t *fb = buf_from(b, a->freq, sizeof(float) * hd / 2);
    tsr_buf_t *ob = buf_nan(b, nt * qw);
    struct tsr_attn_shape s = {.n_head = ac->n_head,
                               .n_kv_head = ac->n_kv_head,
                               .head_dim = hd,
                               .block_size = ac->block_size,
                               .neox = ac->neox,
                               .scale = (float)(1.0 / sqrt(hd)),
                               .inv_freq = fb};
    struct tsr_batch_meta m = {nt,      ac->n_seqs, a->max_blocks, a->pos, a->seq,
                               a->slot, a->bt,      NULL,          0};
    assert_int_equal(tsr_op_rope_kv_write(b, qb, kb, vb, kcb, vcb, &s, &m), 0);
    assert_int_equal(tsr_op_attention(b, ob, qb, kcb, vcb, &s, &m), 0);
    float *out = get_floats(ob, nt * qw);
    if (check) {
        /* RoPE on q and k, and the cache: written slots hold rotated k and v, others unchanged */
        double *rq = malloc(sizeof(double) * nt * qw), *rk = malloc(sizeof(double) * nt * kw);
        for (int t = 0; t < nt; t++) {
            for (size_t i = 0; i < qw; i++) rq[t * qw + i] = a->q[t * qw + i];
            for (size_t i = 0; i < kw; i++) rk[t * kw + i] = a->k[t * kw + i];
            for (int h = 0; h < ac->n_head; h++)
                ref_rotate(rq + t * qw + (size_t)h * hd, hd, a->pos[t], a->freq, ac->neox);
            for (int h = 0; h < ac->n_kv_head; h++)
                ref_rotate(rk + t * kw + (size_t)h * hd, hd, a->pos[t], a->freq, ac->neox);
        }
        float *gq = get_floats(qb, nt * qw), *gkc = get_floats(kcb, a->n_slots * kw);
        float *gvc = get_floats(vcb, a->n_slots * kw);
        expect_nmse(tsr_test_nmse(gq, rq, nt * qw), 1e-10, "rope q");
        double *ck = malloc(sizeof(double) * a->n_slots * kw);
        float *cv = malloc(sizeof(float) * a->n_slots * kw);
        for (size_t i = 0; i < a->n_slots * kw; i++) ck[i] = a->kc[i];
        memcpy(cv, a->vc, sizeof(float) * a->n_slots * kw);
        for (int t = 0; t < nt; t++) {
            for (size_t i = 0; i < kw; i++) ck[(size_t)a->slot[t] * kw + i] = rk[t * kw + i];
            memcpy(cv + (size_t)a->slot[t] * kw, a->v + t * kw, sizeof(float) * kw);
        }
        expect_nmse(tsr_test_nmse(gkc, ck, a->n_slots * kw), 1e-10, "rope k into the cache");
        assert_memory_equal(gvc, cv, sizeof(float) * a->n_slots * kw);

        /* attention in double over the reference cache */
        double *ref = malloc(sizeof(double) * nt * qw), *sc = malloc(sizeof(double) * 4096);
        int group = ac->n_head / ac->n_kv_head, bs = ac->block_size;
        for (int t = 0; t < nt; t++)
            for (int h = 0; h < ac->n_head; h++) {
                const double *qv = rq + t * qw + (size_t)h * hd;
                int kvh = h / group, np = a->pos[t] + 1;
                double mx = -INFINITY, sum = 0;
                for (int p = 0; p < np; p++) {
                    size_t slot = (size_t)a->bt[a->seq[t] * a->max_blocks + p / bs] * bs + p % bs;
                    double d = 0;
                    for (int i = 0; i < hd; i++) d += qv[i] * ck[(slot * kw) + kvh * hd + i];
                    sc[p] = d / sqrt(hd);
                    if (sc[p] > mx) mx = sc[p];
                }
                double *o = ref + t * qw + (size_t)h * hd;
                for (int i = 0; i < hd; i++) o[i] = 0;
                for (int p = 0; p < np; p++) {
                    size_t slot = (size_t)a->bt[a->seq[t] * a->max_blocks + p / bs] * bs + p % bs;
                    double e = exp(sc[p] - mx);
                    sum += e;
                    for (int i = 0; i < hd; i++) o[i] += e * cv[slot * kw + kvh * hd + i];
                }
                for (int i = 0; i < hd; i++) o[i] /= sum;
            }
        expect_nmse(tsr_test_nmse(out, ref, nt * qw), 1e-10, "attention");
        free(ref);
        free(sc);
        free(ck);
        free(cv);
        free(gq);
        free(gkc);
        free(gvc);
        free(rq);
        free(rk);
    }
    tsr_buf_free(qb);
    tsr_buf_free(kb);
    tsr_buf_free(vb);
    tsr_buf_free(kcb);
    tsr_buf_free(vcb);
    tsr_buf_free(fb);
    tsr_buf_free(ob);
    return out;
}

static void test_rope_attention(void **state)
{
    for (size_t c = 0; c < sizeof attn_cases / sizeof attn_cases[0]; c++) {
        struct attn_setup a;
        attn_build(&attn_cases[c], &a);
        for (int i = 0; i < N_ISA; i++)
            if (backends[i]) free(attn_run(backends[i], &attn_cases[c], &a, 1));
        attn_free(&a);
    }
}

/* tsr_op_argmax on the CPU (the generic scan in backend.c): each row's largest, the lowest index
 * on ties, and its argument checks. */
static void test_argmax(void **state)
{
    tsr_backend_t *b = tsr_backend_cpu_new(1);
    assert_non_null(b);
    float x[3][5] = {{-3, -1, -2, -1, -9}, {0, 0, 0, 0, 0}, {1, 2, 3, 4, 5}};
    tsr_buf_t *xb = buf_from(b, x, sizeof x);
    int32_t ids[3] = {-7, -7, -7};
    assert_int_equal(tsr_op_argmax(b, xb, 3, 5, ids), 0);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 0);
    assert_int_equal(ids[2], 4);
    assert_int_equal(tsr_op_argmax(b, xb, 0, 5, ids), 0);
    assert_int_equal(tsr_op_argmax(b, xb, 4, 5, ids), TSR_ERANGE);
    assert_int_equal(tsr_op_argmax(b, xb, 1, 0, ids), TSR_EINVAL);
    assert_int_equal(tsr_op_argmax(b, xb, -1, 5, ids), TSR_EINVAL);
    tsr_buf_free(xb);
    tsr_backend_free(b);
}

static void test_attention_errors(void **state)
{
    tsr_backend_t *b = backends[TSR_CPU_SCALAR];
    const struct attn_case *ac = &attn_cases[0];
    struct attn_setup a;
    attn_build(ac, &a);
    int hd = ac->head_dim;
    size_t kw = (size_t)ac->n_kv_head * hd, qw = (size_t)ac->n_head * hd;
    tsr_buf_t *qb = buf_from(b, a.q, sizeof(float) * a.nt * qw);
    tsr_buf_t *kb = buf_from(b, a.k, sizeof(float) * a.nt * kw);
    tsr_buf_t *kcb = buf_from(b, a.kc, sizeof(float) * a.n_slots * kw);
    tsr_buf_t *fb = buf_from(b, a.freq, sizeof(float) * hd / 2);
    tsr_buf_t *ob = buf_nan(b, a.nt * qw);
    struct tsr_attn_shape s = {.n_head = ac->n_head,
                               .n_kv_head = ac->n_kv_head,
                               .head_dim = hd,
                               .block_size = ac->block_size,
                               .neox = ac->neox,
                               .scale = 0.125f,
                               .inv_freq = fb};
    struct tsr_batch_meta m = {a.nt, ac->n_seqs, a.max_blocks, a.pos, a.seq, a.slot, a.bt, NULL, 0};
    a.slot[0] = a.n_slots; /* one past the cache */
    assert_int_equal(tsr_op_rope_kv_write(b, qb, kb, kb, kcb, kcb, &s, &m), TSR_ERANGE);
    a.bt[0] = a.n_blocks; /* a block past the cache */
    assert_int_equal(tsr_op_attention(b, ob, qb, kcb, kcb, &s, &m), TSR_ERANGE);
    a.bt[0] = 0;
    a.pos[0] = a.max_blocks * ac->block_size; /* beyond the block table */
    assert_int_equal(tsr_op_attention(b, ob, qb, kcb, kcb, &s, &m), TSR_ERANGE);
    s.n_kv_head = 2; /* 9 heads do not group over 2 */
    assert_int_equal(tsr_op_attention(b, ob, qb, kcb, kcb, &s, &m), TSR_EINVAL);
    tsr_buf_free(qb);
    tsr_buf_free(kb);
    tsr_buf_free(kcb);
    tsr_buf_free(fb);
    tsr_buf_free(ob);
    attn_free(&a);
}

static void test_matmul_errors(void **state)
{
    tsr_backend_t *b = backends[TSR_CPU_SCALAR];
    struct wmat w;
    make_weight(&w, TSR_Q4_1, 8, 64);
    tsr_buf_t *wb = tsr_buf_weights(b, w.data, w.row_bytes * w.rows);
    tsr_buf_t *xb = buf_nan(b, 2 * 64), *yb = buf_nan(b, 2 * 8), *small = buf_nan(b, 8);
    struct tsr_weight wt = {wb, TSR_Q4_1, 8, 64};
    assert_int_equal(tsr_op_matmul(b, small, &wt, xb, NULL, 2), TSR_ERANGE);
    assert_int_equal(tsr_op_matmul(b, yb, &wt, small, NULL, 2), TSR_ERANGE);
    assert_int_equal(tsr_op_matmul(b, xb, &wt, xb, NULL, 1), TSR_EINVAL);
    struct tsr_weight odd = {wb, TSR_Q4_1, 8, 48}; /* not whole blocks */
    assert_int_equal(tsr_op_matmul(b, yb, &odd, xb, NULL, 1), TSR_EINVAL);
    struct tsr_weight big = {wb, TSR_Q4_1, 9, 64}; /* more rows than the buffer holds */
    assert_int_equal(tsr_op_matmul(b, yb, &big, xb, NULL, 1), TSR_ERANGE);
    tsr_buf_free(wb);
    tsr_buf_free(xb);
    tsr_buf_free(yb);
    tsr_buf_free(small);
    free_weight(&w);
}

/* One thread and two give bitwise the same results, for every op that threads. */
static void test_threads_bitwise(void **state)
{
    for (int i = 0; i < N_ISA; i++) {
        if (!backends[i]) continue;
        tsr_backend_t *b1 = backend_for((enum tsr_cpu_isa)i, 1, 0);
        tsr_backend_t *b2 = backend_for((enum tsr_cpu_isa)i, 2, 0);
        for (size_t ti = 0; ti < sizeof all_types / sizeof all_types[0]; ti++) {
            const struct shape shapes[] = {{576, 576, 1}, {1536, 576, 7}, {200, 320, 40}};
            for (int si = 0; si < 3; si++) {
                struct wmat w;
                make_weight(&w, all_types[ti], shapes[si].rows, shapes[si].cols);
                float *x = make_acts(shapes[si].n, shapes[si].cols);
                float *y1 = run_matmul(b1, &w, x, NULL, shapes[si].n);
                float *y2 = run_matmul(b2, &w, x, NULL, shapes[si].n);
                if (memcmp(y1, y2, sizeof(float) * shapes[si].n * shapes[si].rows))
                    fail_msg("matmul %s n=%d on %s: 1 and 2 threads differ",
                             tsr_dtype_name(all_types[ti]), shapes[si].n,
                             tsr_cpu_isa_name((enum tsr_cpu_isa)i));
                free(y1);
                free(y2);
                free(x);
                free_weight(&w);
            }
        }
        for (size_t c = 0; c < sizeof attn_cases / sizeof attn_cases[0]; c++) {
            struct attn_setup a;
            attn_build(&attn_cases[c], &a);
            float *o1 = attn_run(b1, &attn_cases[c], &a, 0);
            float *o2 = attn_run(b2, &attn_cases[c], &a, 0);
            size_t len = (size_t)a.nt * attn_cases[c].n_head * attn_cases[c].head_dim;
            if (memcmp(o1, o2, sizeof(float) * len))
                fail_msg("attention case %zu: 1 and 2 threads differ", c);
            free(o1);
            free(o2);
            attn_free(&a);
        }
        tsr_backend_free(b1);
        tsr_backend_free(b2);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quantize_identical),
        cmocka_unit_test(test_dequant_identical),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_matmul_q8),
        cmocka_unit_test(test_batch_invariance),
        cmocka_unit_test(test_matmul_bias),
        cmocka_unit_test(test_matmul_errors),
        cmocka_unit_test(test_fused_matmuls),
        cmocka_unit_test(test_sample_graphs_unsupported),
        cmocka_unit_test(test_embed),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_gather_rows),
        cmocka_unit_test(test_rope_attention),
        cmocka_unit_test(test_attention_errors),
        cmocka_unit_test(test_argmax),
        cmocka_unit_test(test_threads_bitwise),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
