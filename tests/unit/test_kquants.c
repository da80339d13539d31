/* The k-quants (Q4_K, Q5_K, Q6_K) and Q5_0/Q5_1 (what k-quant files hold where rows are not whole
 * super-blocks): decoding against gguf-py, the CPU matmul on their weights for every instruction
 * set this CPU has, and malformed inputs.
 *
 * 1. Decoding. tests/reference/kquant_golden.bin (make_kquant_golden.py: random blocks, gguf-py's
 *    numpy dequantize; Q5_0/Q5_1 rows of 576, not whole super-blocks) must come out of
 *    tsr_dequantize_row and of every ISA's dequant kernel bit for bit (0 ulp, signed zeros
 *    included): every product in these decodes is exact in f32 (common/dtype.h), so there is one
 *    rounding at most, the same in any order.
 * 2. Matmul. Weights of random blocks (random bytes, finite f16 scales), Gaussian activations;
 *    NMSE = Σ(out - ref)² / Σ ref² against the float64 product of the decoded weights must stay
 *    under 1e-10 (only f32 accumulation over at most 1,024 terms separates them; about 1e-14 is
 *    seen), for n = 1..4 (the GEMV path) and n > 4 (dequantized tiles, n = 130 past one
 *    activation chunk), Q5_0/Q5_1 also on widths of 96 and 576 (a GEMV's last chunk short of
 *    256), on scalar, AVX2 and AVX-512 where present; each SIMD result within 1e-10
 *    of scalar's; a row's result bitwise the same alone and in a batch (the GEMV and the tile
 *    path agree); TESSERA_CPU_ACT=q8 leaves k-quants on the exact path (bitwise equal).
 * 3. The quantizer (synthetic models): a Gaussian row survives quantize + dequantize within an
 *    NMSE bound per type (below).
 * 4. Malformed: a row that is not whole super-blocks (Q5_0/Q5_1: blocks of 32), in a GGUF file,
 *    a matmul or a column slice; a truncated tensor. Each is an error naming the problem. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_kernels.h"
#include "model/gguf.h"
#include "model/shard_plan.h"
#include "unit.h"

#define GOLDEN TSR_SOURCE_DIR "/tests/reference/kquant_golden.bin"

/* the golden's order */
static const enum tsr_dtype kq_types[] = {TSR_Q4_K, TSR_Q5_K, TSR_Q6_K, TSR_Q5_0, TSR_Q5_1};
#define N_KQ (sizeof kq_types / sizeof kq_types[0])

/* Random data: unit.h's stream from its fixed seed, so the test is deterministic. */

/* ---- the golden ---- */

struct golden_set {
    enum tsr_dtype type;
    int rows, cols;
    uint8_t *blocks;
    size_t nbytes;
    float *want; /* rows * cols */
};

static struct golden_set golden[N_KQ];
static int have_golden;

static uint32_t rd_u32(FILE *f)
{
    uint8_t b[4];
    assert_int_equal(fread(b, 1, 4, f), 4);
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static void load_golden(void)
{
    FILE *f = fopen(GOLDEN, "rb");
    assert_non_null(f);
    char magic[4];
    assert_int_equal(fread(magic, 1, 4, f), 4);
    assert_memory_equal(magic, "TKQG", 4);
    assert_int_equal(rd_u32(f), 1);
    assert_int_equal(rd_u32(f), N_KQ);
    for (size_t s = 0; s < N_KQ; s++) {
        struct golden_set *g = &golden[s];
        g->type = (enum tsr_dtype)rd_u32(f);
        assert_int_equal(g->type, kq_types[s]);
        g->rows = (int)rd_u32(f);
        g->cols = (int)rd_u32(f);
        g->nbytes = rd_u32(f);
        assert_int_equal(g->nbytes, tsr_dtype_row_bytes(g->type, g->cols) * (size_t)g->rows);
        g->blocks = malloc(g->nbytes);
        g->want = malloc(sizeof(float) * (size_t)g->rows * g->cols);
        assert_non_null(g->blocks);
        assert_non_null(g->want);
        assert_int_equal(fread(g->blocks, 1, g->nbytes, f), g->nbytes);
        size_t nf = (size_t)g->rows * g->cols;
        assert_int_equal(fread(g->want, sizeof(float), nf, f), nf); /* little-endian host */
    }
    assert_int_equal(fgetc(f), EOF);
    fclose(f);
    have_golden = 1;
}

/* ---- backends, one per instruction set available ---- */

enum { N_ISA = 3 };
static tsr_backend_t *backends[N_ISA];    /* exact mode; NULL where the CPU lacks the ISA */
static tsr_backend_t *backends_q8[N_ISA]; /* TESSERA_CPU_ACT=q8 */
static const struct tsr_cpu_kernels *const kernels[N_ISA] = {
    &tsr_cpu_kernels_scalar, &tsr_cpu_kernels_avx2, &tsr_cpu_kernels_avx512};

static tsr_backend_t *backend_for(enum tsr_cpu_isa isa, int q8)
{
    setenv("TESSERA_CPU_ISA", tsr_cpu_isa_name(isa), 1);
    if (q8) setenv("TESSERA_CPU_ACT", "q8", 1);
    tsr_backend_t *b = tsr_backend_cpu_new(2);
    unsetenv("TESSERA_CPU_ISA");
    unsetenv("TESSERA_CPU_ACT");
    assert_non_null(b);
    if (tsr_cpu_backend_isa(b) != isa) {
        tsr_backend_free(b);
        return NULL;
    }
    return b;
}

static int setup(void **state)
{
    (void)state;
    if (!tsr_test_missing(GOLDEN, "python3 tests/reference/make_kquant_golden.py")) load_golden();
    for (int i = 0; i < N_ISA; i++) {
        backends[i] = backend_for((enum tsr_cpu_isa)i, 0);
        backends_q8[i] = backend_for((enum tsr_cpu_isa)i, 1);
        print_message("  %s: %s\n", tsr_cpu_isa_name((enum tsr_cpu_isa)i),
                      backends[i] ? "tested" : "not on this CPU, skipped");
    }
    assert_non_null(backends[TSR_CPU_SCALAR]);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < N_ISA; i++) {
        tsr_backend_free(backends[i]);
        tsr_backend_free(backends_q8[i]);
    }
    for (size_t s = 0; s < N_KQ; s++) {
        free(golden[s].blocks);
        free(golden[s].want);
    }
    return 0;
}

/* ---- 1. decoding ---- */

/* Bitwise comparison; fails naming the first differing weight. */
static void expect_same_bits(const float *got, const float *want, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], sizeof(float)))
            fail_msg("%s: weight %zu is %.9g, gguf-py says %.9g", what, i, (double)got[i],
                     (double)want[i]);
}

static void test_golden_dequant(void **state)
{
    (void)state;
    if (!have_golden) return;
    for (size_t s = 0; s < N_KQ; s++) {
        const struct golden_set *g = &golden[s];
        size_t rb = tsr_dtype_row_bytes(g->type, g->cols);
        float *got = malloc(sizeof(float) * (size_t)g->cols);
        assert_non_null(got);
        int nonzero = 0, negative = 0;
        for (int r = 0; r < g->rows; r++) {
            const float *want = g->want + (size_t)r * g->cols;
            char what[64];
            for (int i = 0; i < g->cols; i++) got[i] = NAN;
            tsr_dequantize_row(g->type, g->blocks + (size_t)r * rb, got, g->cols);
            snprintf(what, sizeof what, "tsr_dequantize_row %s row %d", tsr_dtype_name(g->type), r);
            expect_same_bits(got, want, (size_t)g->cols, what);
            for (int k = 0; k < N_ISA; k++) {
                if (!backends[k]) continue;
                for (int i = 0; i < g->cols; i++) got[i] = NAN;
                kernels[k]->dequant(g->type, g->blocks + (size_t)r * rb, got, g->cols);
                snprintf(what, sizeof what, "%s dequant %s row %d",
                         tsr_cpu_isa_name((enum tsr_cpu_isa)k), tsr_dtype_name(g->type), r);
                expect_same_bits(got, want, (size_t)g->cols, what);
            }
            for (int i = 0; i < g->cols; i++) nonzero += want[i] != 0, negative += want[i] < 0;
        }
        /* the golden is not degenerate: a decoder that wrote zeros could not pass */
        assert_true(nonzero > g->rows * g->cols * 9 / 10);
        assert_true(negative > g->rows * g->cols / 10);
        free(got);
        print_message("  decoding: %d %s weights, 0 ulp from gguf-py on every ISA\n",
                      g->rows * g->cols, tsr_dtype_name(g->type));
    }
}

/* ---- 2. matmul ---- */

/* Random blocks for rows x cols weights of type t: random bytes, with the f16 scales set to
 * finite values of varied size (log-uniform magnitudes 2^-16..2^-6, an eighth negative). */
static uint8_t *random_weights(enum tsr_dtype t, int rows, int cols)
{
    size_t bs = tsr_dtype_block_bytes(t), nb = (size_t)rows * cols / tsr_dtype_block_elems(t);
    uint8_t *w = malloc(nb * bs);
    assert_non_null(w);
    for (size_t i = 0; i < nb * bs; i++) w[i] = (uint8_t)tsr_test_rng_u64();
    for (size_t b = 0; b < nb && t == TSR_F8_E4M3; b++) { /* an f32 scale; no NaN codes */
        float v = exp2f((float)(-16.0 + 10.0 * tsr_test_rng_uniform()));
        if (tsr_test_rng_u64() % 8 == 0) v = -v;
        memcpy(w + b * bs, &v, 4);
        for (size_t i = 4; i < bs; i++)
            if ((w[b * bs + i] & 0x7f) == 0x7f) w[b * bs + i] = 0;
    }
    for (size_t b = 0; b < nb && t != TSR_F8_E4M3; b++) {
        int n = t == TSR_Q6_K || t == TSR_Q5_0 ? 1 : 2; /* d; or d and dmin/m at 0 and 2 */
        for (int k = 0; k < n; k++) {
            float v = exp2f((float)(-16.0 + 10.0 * tsr_test_rng_uniform()));
            if (tsr_test_rng_u64() % 8 == 0) v = -v;
            uint16_t h = tsr_f32_to_f16(v);
            memcpy(w + b * bs + (t == TSR_Q6_K ? 208 : 2 * (size_t)k), &h, 2);
        }
    }
    return w;
}

static tsr_buf_t *buf_from(tsr_backend_t *b, const void *src, size_t n)
{
    tsr_buf_t *buf = tsr_buf_alloc(b, n);
    assert_non_null(buf);
    assert_int_equal(tsr_buf_set(buf, 0, src, n), 0);
    return buf;
}

/* y (n x rows) = x · Wᵀ on backend b; malloc'ed. The output is NaN before the run. */
static float *run_matmul(tsr_backend_t *b, enum tsr_dtype t, const uint8_t *w, int rows, int cols,
                         const float *x, int n)
{
    size_t wbytes = tsr_dtype_row_bytes(t, cols) * (size_t)rows;
    tsr_buf_t *wb = tsr_buf_weights(b, w, wbytes);
    tsr_buf_t *xb = buf_from(b, x, sizeof(float) * (size_t)n * cols);
    tsr_buf_t *yb = tsr_buf_alloc(b, sizeof(float) * (size_t)n * rows);
    assert_non_null(wb);
    assert_non_null(yb);
    float *y = malloc(sizeof(float) * (size_t)n * rows);
    assert_non_null(y);
    for (size_t i = 0; i < (size_t)n * rows; i++) y[i] = NAN;
    assert_int_equal(tsr_buf_set(yb, 0, y, sizeof(float) * (size_t)n * rows), 0);
    struct tsr_weight wt = {wb, t, rows, cols};
    if (tsr_op_matmul(b, yb, &wt, xb, NULL, n)) fail_msg("matmul: %s", tsr_last_error());
    assert_int_equal(tsr_buf_get(yb, 0, y, sizeof(float) * (size_t)n * rows), 0);
    tsr_buf_free(wb);
    tsr_buf_free(xb);
    tsr_buf_free(yb);
    return y;
}

static void expect_nmse(double e, double limit, const char *what)
{
    if (!(e <= limit)) fail_msg("%s: NMSE %.3g above %.3g", what, e, limit);
}

struct shape {
    int rows, cols, n;
};

/* GEMV path (n <= 4) with partial 4-row tiles, the tile path (n > 4) with a partial 16-row tile
 * and, at n = 130, more rows than one 128-row activation chunk. The widths of 96 and 576 (Q5_0
 * and Q5_1 only: not whole super-blocks) end a GEMV on a chunk of 96 or 64 weights. */
static const struct shape mm_shapes[] = {
    {37, 768, 1},   {37, 768, 2},   {6, 512, 3}, {37, 768, 4}, {37, 768, 5}, {19, 256, 9},
    {64, 1024, 33}, {21, 512, 130}, {7, 96, 1},  {37, 576, 2}, {9, 576, 4},  {19, 576, 9},
};

/* The types the ISAs decode with common/dtype.c: the golden's and F8_E4M3 (test_fp8 checks its
 * decoder). */
static const enum tsr_dtype mm_types[] = {TSR_Q4_K, TSR_Q5_K, TSR_Q6_K,
                                          TSR_Q5_0, TSR_Q5_1, TSR_F8_E4M3};

static void test_matmul(void **state)
{
    (void)state;
    double worst = 0, worst_simd = 0;
    for (size_t ti = 0; ti < sizeof mm_types / sizeof mm_types[0]; ti++) {
        enum tsr_dtype t = mm_types[ti];
        for (size_t si = 0; si < sizeof mm_shapes / sizeof mm_shapes[0]; si++) {
            struct shape sh = mm_shapes[si];
            if (sh.cols % tsr_dtype_block_elems(t)) continue;
            uint8_t *w = random_weights(t, sh.rows, sh.cols);
            size_t rb = tsr_dtype_row_bytes(t, sh.cols);
            float *wf = malloc(sizeof(float) * (size_t)sh.rows * sh.cols);
            float *x = malloc(sizeof(float) * (size_t)sh.n * sh.cols);
            double *ref = malloc(sizeof(double) * (size_t)sh.n * sh.rows);
            assert_true(wf && x && ref);
            for (int r = 0; r < sh.rows; r++)
                tsr_dequantize_row(t, w + (size_t)r * rb, wf + (size_t)r * sh.cols, sh.cols);
            for (int j = 0; j < sh.n; j++) {
                float sc = (float)(0.1 + 3 * tsr_test_rng_uniform());
                for (int i = 0; i < sh.cols; i++)
                    x[(size_t)j * sh.cols + i] = sc * tsr_test_rng_normal();
            }
            for (int j = 0; j < sh.n; j++)
                for (int r = 0; r < sh.rows; r++) {
                    double s = 0;
                    for (int i = 0; i < sh.cols; i++)
                        s += (double)wf[(size_t)r * sh.cols + i] * x[(size_t)j * sh.cols + i];
                    ref[(size_t)j * sh.rows + r] = s;
                }
            float *scalar = NULL;
            for (int k = 0; k < N_ISA; k++) {
                if (!backends[k]) continue;
                char what[128];
                snprintf(what, sizeof what, "%s matmul %s %dx%d n=%d",
                         tsr_cpu_isa_name((enum tsr_cpu_isa)k), tsr_dtype_name(t), sh.rows, sh.cols,
                         sh.n);
                size_t ny = (size_t)sh.n * sh.rows;
                float *y = run_matmul(backends[k], t, w, sh.rows, sh.cols, x, sh.n);
                double e = tsr_test_nmse(y, ref, ny);
                expect_nmse(e, 1e-10, what);
                if (e > worst) worst = e;
                /* batch invariance: the first and last rows alone give the same bits */
                for (int j = 0; j<sh.n; j += sh.n> 1 ? sh.n - 1 : 1) {
                    float *y1 =
                        run_matmul(backends[k], t, w, sh.rows, sh.cols, x + (size_t)j * sh.cols, 1);
                    if (memcmp(y1, y + (size_t)j * sh.rows, sizeof(float) * (size_t)sh.rows))
                        fail_msg("%s: activation row %d alone differs from it in the batch", what,
                                 j);
                    free(y1);
                }
                /* the q8 mode does not apply to these types: the exact result */
                float *yq = run_matmul(backends_q8[k], t, w, sh.rows, sh.cols, x, sh.n);
                if (memcmp(yq, y, sizeof(float) * ny))
                    fail_msg("%s: TESSERA_CPU_ACT=q8 changed the result", what);
                free(yq);
                if (!scalar) {
                    scalar = y;
                    continue;
                }
                double *sd = malloc(sizeof(double) * ny);
                assert_non_null(sd);
                for (size_t q = 0; q < ny; q++) sd[q] = scalar[q];
                double es = tsr_test_nmse(y, sd, ny);
                strncat(what, " vs scalar", sizeof what - strlen(what) - 1);
                expect_nmse(es, 1e-10, what);
                if (es > worst_simd) worst_simd = es;
                free(sd);
                free(y);
            }
            free(scalar);
            free(w);
            free(wf);
            free(x);
            free(ref);
        }
    }
    print_message("  matmul: worst NMSE %.3g vs float64, SIMD vs scalar %.3g (bound 1e-10)\n",
                  worst, worst_simd);
}

/* ---- 3. the quantizer ---- */

static void test_quantize_roundtrip(void **state)
{
    (void)state;
    /* Gaussian rows; the step of a 32-value (Q4_K/Q5_K: min..max over 2^b - 1) or 16-value
     * (Q6_K: ±amax over 31) fit gives NMSE ≈ step²/12: ~8e-3, ~2e-3, ~6e-4; bounds 2x that.
     * Q5_0 (amax over 16) and Q5_1 (min..max over 31) blocks of 32: ~1.5e-3 and ~1.2e-3. */
    static const double bound[N_KQ] = {1.6e-2, 4e-3, 1.2e-3, 4e-3, 3e-3};
    enum { N = 4 * TSR_QK_K };
    float x[N], back[N];
    double ref[N];
    for (int i = 0; i < N; i++)
        x[i] = tsr_test_rng_normal() * (i < TSR_QK_K ? 0.01f : 1.0f), ref[i] = x[i];
    x[5] = 0.0f; /* a super-block with a different scale, a zero, an all-zero sub-block */
    memset(x + 2 * TSR_QK_K, 0, 32 * sizeof(float));
    for (int i = 0; i < 32; i++) ref[2 * TSR_QK_K + i] = 0, ref[5] = 0;
    for (size_t ti = 0; ti < N_KQ; ti++) {
        enum tsr_dtype t = kq_types[ti];
        uint8_t q[4 * 210];
        tsr_quantize_row(t, x, q, N);
        tsr_dequantize_row(t, q, back, N);
        /* per super-block, so the small one is held to the same relative bound */
        for (int b = 0; b < 4; b++) {
            char what[64];
            snprintf(what, sizeof what, "quantize %s super-block %d", tsr_dtype_name(t), b);
            double e = tsr_test_nmse(back + b * TSR_QK_K, ref + b * TSR_QK_K, TSR_QK_K);
            expect_nmse(e, bound[ti], what);
            print_message("  %s: NMSE %.3g (bound %.3g)\n", what, e, bound[ti]);
        }
        for (int i = 0; i < 32; i++)
            if (back[2 * TSR_QK_K + i] != 0)
                fail_msg("quantize %s: zero sub-block came back as %g", tsr_dtype_name(t),
                         (double)back[2 * TSR_QK_K + i]);
    }
}

/* ---- 4. malformed inputs ---- */

static size_t put(uint8_t *p, size_t n, const void *v, size_t size)
{
    memcpy(p + n, v, size);
    return n + size;
}

/* A GGUF v3 file, no metadata, one tensor of type `type` and dims ne[0..n_dims), with `data`
 * bytes of data after the 32-byte aligned header. */
static uint8_t *gguf_one(const char *name, uint32_t type, int n_dims, const uint64_t *ne,
                         size_t data, size_t *len)
{
    uint8_t *p = calloc(1, 256 + data);
    assert_non_null(p);
    uint32_t version = 3, nd = (uint32_t)n_dims;
    uint64_t nt = 1, nkv = 0, nl = strlen(name), off = 0;
    size_t n = put(p, 0, "GGUF", 4);
    n = put(p, n, &version, 4);
    n = put(p, n, &nt, 8);
    n = put(p, n, &nkv, 8);
    n = put(p, n, &nl, 8);
    n = put(p, n, name, nl);
    n = put(p, n, &nd, 4);
    for (int d = 0; d < n_dims; d++) n = put(p, n, &ne[d], 8);
    n = put(p, n, &type, 4);
    n = put(p, n, &off, 8);
    n = (n + 31) / 32 * 32;
    for (size_t i = 0; i < data; i++) p[n + i] = (uint8_t)(i * 7);
    *len = n + data;
    return p;
}

static void test_malformed(void **state)
{
    (void)state;
    for (size_t ti = 0; ti < N_KQ; ti++) {
        enum tsr_dtype t = kq_types[ti];
        assert_true(tsr_dtype_valid(t));
        if (tsr_dtype_is_q5(t)) {
            assert_int_equal(tsr_dtype_block_elems(t), 32);
            assert_int_equal(tsr_dtype_row_bytes(t, 48), 0);
            assert_int_equal(tsr_dtype_row_bytes(t, 576), 18 * tsr_dtype_block_bytes(t));
            continue;
        }
        assert_int_equal(tsr_dtype_block_elems(t), 256);
        assert_int_equal(tsr_dtype_row_bytes(t, 320), 0);
        assert_int_equal(tsr_dtype_row_bytes(t, 512), 2 * tsr_dtype_block_bytes(t));
    }
    assert_int_equal(tsr_dtype_block_bytes(TSR_Q4_K), 144);
    assert_int_equal(tsr_dtype_block_bytes(TSR_Q5_K), 176);
    assert_int_equal(tsr_dtype_block_bytes(TSR_Q6_K), 210);
    assert_int_equal(tsr_dtype_block_bytes(TSR_Q5_0), 22);
    assert_int_equal(tsr_dtype_block_bytes(TSR_Q5_1), 24);
    assert_string_equal(tsr_dtype_name(TSR_Q5_K), "Q5_K");
    assert_string_equal(tsr_dtype_name(TSR_Q5_0), "Q5_0");
    assert_string_equal(tsr_dtype_name(TSR_Q5_1), "Q5_1");
    assert_int_equal(TSR_Q5_0, 6); /* GGML's ids: a GGUF type field maps straight to the enum */
    assert_int_equal(TSR_Q5_1, 7);

    /* GGUF: a valid k-quant tensor opens with its size; a row of 320 weights, or the data one
     * byte short, is TSR_EFORMAT naming the tensor. */
    size_t len;
    tsr_gguf_t *g;
    uint64_t ok_ne[2] = {512, 3}, bad_ne[2] = {320, 3};
    uint8_t *f = gguf_one("blk.0.ffn_down.weight", TSR_Q5_K, 2, ok_ne, 176 * 2 * 3, &len);
    if (tsr_gguf_open_mem(f, len, "ok.gguf", &g)) fail_msg("open: %s", tsr_last_error());
    const struct tsr_gguf_tensor *gt = tsr_gguf_find_tensor(g, "blk.0.ffn_down.weight");
    assert_non_null(gt);
    assert_int_equal(gt->type, TSR_Q5_K);
    assert_int_equal(gt->nbytes, 176 * 2 * 3);
    tsr_gguf_close(g);
    free(f);
    /* F8_E4M3 is tessera's own type: a GGUF file naming its id is refused */
    f = gguf_one("blk.0.ffn_down.weight", TSR_F8_E4M3, 2, ok_ne, 36 * 16 * 3, &len);
    EXPECT_ERR(tsr_gguf_open_mem(f, len, "own.gguf", &g), TSR_EUNSUPPORTED,
               "tensor 'blk.0.ffn_down.weight': type 128");
    free(f);
    f = gguf_one("blk.0.ffn_down.weight", TSR_Q4_K, 2, bad_ne, 144 * 3, &len);
    EXPECT_ERR(tsr_gguf_open_mem(f, len, "bad.gguf", &g), TSR_EFORMAT,
               "tensor 'blk.0.ffn_down.weight': row length 320 is not a multiple of the Q4_K "
               "block size 256");
    free(f);
    f = gguf_one("output.weight", TSR_Q6_K, 2, ok_ne, 210 * 2 * 3 - 1, &len);
    EXPECT_ERR(tsr_gguf_open_mem(f, len, "short.gguf", &g), TSR_EFORMAT, "runs past end of file");
    assert_non_null(strstr(tsr_last_error(), "output.weight"));
    free(f);
    /* Q5_0/Q5_1: a 576-wide tensor (SmolLM2's width, no whole super-blocks) opens; a row of 40,
     * or the data one byte short, does not */
    uint64_t q5_ne[2] = {576, 3}, q5_bad[2] = {40, 3};
    f = gguf_one("blk.0.attn_q.weight", TSR_Q5_0, 2, q5_ne, 22 * 18 * 3, &len);
    if (tsr_gguf_open_mem(f, len, "q5.gguf", &g)) fail_msg("open: %s", tsr_last_error());
    gt = tsr_gguf_find_tensor(g, "blk.0.attn_q.weight");
    assert_non_null(gt);
    assert_int_equal(gt->type, TSR_Q5_0);
    assert_int_equal(gt->nbytes, 22 * 18 * 3);
    tsr_gguf_close(g);
    free(f);
    f = gguf_one("blk.0.attn_k.weight", TSR_Q5_1, 2, q5_bad, 24 * 3, &len);
    EXPECT_ERR(tsr_gguf_open_mem(f, len, "bad.gguf", &g), TSR_EFORMAT,
               "tensor 'blk.0.attn_k.weight': row length 40 is not a multiple of the Q5_1 block "
               "size 32");
    free(f);
    f = gguf_one("blk.0.attn_v.weight", TSR_Q5_1, 2, q5_ne, 24 * 18 * 3 - 1, &len);
    EXPECT_ERR(tsr_gguf_open_mem(f, len, "short.gguf", &g), TSR_EFORMAT, "runs past end of file");
    assert_non_null(strstr(tsr_last_error(), "blk.0.attn_v.weight"));
    free(f);

    /* matmul: a k-quant weight of 320 columns is refused before any kernel sees it */
    tsr_backend_t *b = backends[TSR_CPU_SCALAR];
    uint8_t blocks[3 * 144] = {0};
    float xs[320] = {0};
    tsr_buf_t *wb = tsr_buf_weights(b, blocks, sizeof blocks);
    tsr_buf_t *xb = buf_from(b, xs, sizeof xs);
    tsr_buf_t *yb = tsr_buf_alloc(b, 4 * sizeof(float));
    struct tsr_weight odd = {wb, TSR_Q4_K, 1, 320};
    EXPECT_ERR(tsr_op_matmul(b, yb, &odd, xb, NULL, 1), TSR_EINVAL, "Q4_K, 1 x 320");
    struct tsr_weight big = {wb, TSR_Q4_K, 4, 256}; /* more rows than the buffer holds */
    EXPECT_ERR(tsr_op_matmul(b, yb, &big, xb, NULL, 1), TSR_ERANGE, "needs 576 bytes");
    struct tsr_weight odd5 = {wb, TSR_Q5_0, 1, 48}; /* a block and a half */
    EXPECT_ERR(tsr_op_matmul(b, yb, &odd5, xb, NULL, 1), TSR_EINVAL, "Q5_0, 1 x 48");
    tsr_buf_free(wb);
    tsr_buf_free(xb);
    tsr_buf_free(yb);

    /* a tensor-parallel column slice must cut on a super-block */
    struct tsr_slice s = {.name = "blk.0.ffn_down.weight",
                          .split = TSR_SPLIT_COLS,
                          .offset = 128,
                          .length = 384,
                          .rows = 4,
                          .cols = 512};
    struct tsr_slice_bytes sb;
    EXPECT_ERR(tsr_slice_bytes(&s, TSR_Q6_K, &sb), TSR_EINVAL, "are not on Q6_K blocks");
    s.offset = 256, s.length = 256;
    assert_int_equal(tsr_slice_bytes(&s, TSR_Q6_K, &sb), 0);
    assert_int_equal(sb.offset, 210);
    assert_int_equal(sb.row_bytes, 210);
    assert_int_equal(sb.stride, 420);
    /* and a Q5_1 one on a block of 32 */
    s.cols = 576, s.offset = 16, s.length = 288;
    EXPECT_ERR(tsr_slice_bytes(&s, TSR_Q5_1, &sb), TSR_EINVAL, "are not on Q5_1 blocks");
    s.offset = 288;
    assert_int_equal(tsr_slice_bytes(&s, TSR_Q5_1, &sb), 0);
    assert_int_equal(sb.offset, 9 * 24);
    assert_int_equal(sb.row_bytes, 9 * 24);
    assert_int_equal(sb.stride, 18 * 24);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_dequant),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_quantize_roundtrip),
        cmocka_unit_test(test_malformed),
    };
    return tsr_test_exit(cmocka_run_group_tests(tests, setup, teardown));
}
