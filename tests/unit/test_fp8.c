/* FP8 (E4M3) weights and --quantize:
 * 1. the E4M3 codec: every code decodes to the OCP value computed here from its fields in
 *    float64; every float of a dense sweep (all 256 codes' neighbourhoods, midpoints, the
 *    subnormals, beyond 448, infinities, NaN) encodes to the nearest code found by brute force,
 *    ties to the even code, saturating at 448;
 * 2. F8_E4M3 blocks: quantize/dequantize of Gaussian rows within the 3-bit mantissa's bound, a
 *    zero block, a block whose amax is 448 exactly (scale 1, codes exact);
 * 3. tsr_quantize_row_search (Q8_0 and F8_E4M3 with a searched scale): on many random blocks
 *    (Gaussian at scales from f16-subnormal to large, a Q4_1 file's 16 levels, one outlier, all
 *    zero, constant, sparse, E4M3 values, FP8 subnormals) its squared error is never above
 *    tsr_quantize_row's, it decodes to finite values, and over the Gaussian and Q4_1-like blocks
 *    it is clearly below (what the search is for); other types are tsr_quantize_row's bytes;
 * 4. tsr_model_quantize on the default model: the projections read as the target type, equal to
 *    requantizing the file's dequantized rows (tsr_quantize_row_search), a column slice equal to
 * those columns of the whole (what a TP rank reads), embeddings and norms untouched, widths a type
 * cannot take and synthetic models refused with clear errors, and the CLI's type names. (The F8
 * matmul of every ISA is in test_kquants' matmul test; refusing F8 in a GGUF file too.) */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/dtype.h"
#include "common/status.h"
#include "model/model.h"
#include "unit.h"

#define MODEL TSR_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf"

/* ---- 1. the codec ---- */

/* The code nearest x by brute force over the finite codes of x's sign: ties to the even code,
 * beyond 448 the largest. */
static int e4m3_nearest(double x)
{
    int sign = signbit(x) ? 0x80 : 0, best = -1;
    double a = fabs(x), bd = INFINITY;
    for (int q = 0; q < 0x7f; q++) {
        double d = fabs(tsr_test_e4m3_ref(q) - a);
        if (d < bd || (d == bd && (q & 1) == 0)) bd = d, best = q;
    }
    return sign | best;
}

static void test_codec(void **state)
{
    (void)state;
    int nan_codes = 0;
    for (int q = 0; q < 256; q++) {
        double want = tsr_test_e4m3_ref(q);
        float got = tsr_e4m3_to_f32((uint8_t)q);
        if (isnan(want)) {
            assert_true(isnan(got));
            nan_codes++;
            continue;
        }
        if ((double)got != want) fail_msg("code 0x%02x decodes to %g, want %g", q, got, want);
        /* a finite code encodes back to itself (-0 to 0x80) */
        if (tsr_f32_to_e4m3(got) != q)
            fail_msg("code 0x%02x (%g) encodes to 0x%02x", q, got, tsr_f32_to_e4m3(got));
    }
    assert_int_equal(nan_codes, 2);
    assert_true(tsr_e4m3_to_f32(0x7e) == 448.0f);
    assert_true(tsr_e4m3_to_f32(0x01) == 0x1p-9f);

    /* each code's neighbourhood: the code, its midpoints with both neighbours and the floats
     * just either side of them, quarter points */
    long checked = 0;
    for (int q = 0; q < 0x7f; q++) {
        double v = tsr_test_e4m3_ref(q), next = q < 0x7e ? tsr_test_e4m3_ref(q + 1) : 480.0;
        double pts[] = {v, (v + next) / 2, v + (next - v) / 4, v + 3 * (next - v) / 4};
        for (size_t i = 0; i < sizeof pts / sizeof pts[0]; i++)
            for (int side = -1; side <= 1; side++) {
                float f = (float)pts[i];
                if (side < 0) f = nextafterf(f, -INFINITY);
                if (side > 0) f = nextafterf(f, INFINITY);
                if (f < 0) continue;
                for (int neg = 0; neg < 2; neg++) {
                    float x = neg ? -f : f;
                    int want = e4m3_nearest(x), got = tsr_f32_to_e4m3(x);
                    if (got != want)
                        fail_msg("%.9g encodes to 0x%02x (%g), nearest is 0x%02x (%g)", x, got,
                                 tsr_e4m3_to_f32((uint8_t)got), want,
                                 tsr_e4m3_to_f32((uint8_t)want));
                    checked++;
                }
            }
    }
    /* a log sweep over the whole range and past it */
    for (double x = 1e-5; x < 1e4; x *= 1.0007, checked++) {
        int want = e4m3_nearest(x), got = tsr_f32_to_e4m3((float)x);
        if (got != want) fail_msg("%.9g encodes to 0x%02x, nearest is 0x%02x", x, got, want);
    }
    /* saturation, infinities, NaN, zero's sign */
    assert_int_equal(tsr_f32_to_e4m3(1e30f), 0x7e);
    assert_int_equal(tsr_f32_to_e4m3(-INFINITY), 0xfe);
    assert_int_equal(tsr_f32_to_e4m3(INFINITY), 0x7e);
    assert_int_equal(tsr_f32_to_e4m3(NAN) & 0x7f, 0x7f);
    assert_int_equal(tsr_f32_to_e4m3(-0.0f), 0x80);
    assert_int_equal(tsr_f32_to_e4m3(0x1p-11f), 0x00); /* a quarter of the smallest: to zero */
    assert_int_equal(tsr_f32_to_e4m3(0x1p-10f), 0x00); /* half of it: a tie, to even (zero) */
    assert_int_equal(tsr_f32_to_e4m3(0x3p-10f), 0x02); /* 1.5 steps: a tie, to even (2) */
    print_message(
        "  e4m3: 254 finite codes decode exactly; %ld floats encode to the nearest code\n",
        checked);
}

/* ---- 2. blocks ---- */

static void test_blocks(void **state)
{
    (void)state;
    enum { N = 8 * TSR_QK };
    float x[N], back[N];
    double ref[N];
    uint8_t q[8 * sizeof(struct tsr_block_f8)];
    assert_int_equal(tsr_dtype_block_elems(TSR_F8_E4M3), 32);
    assert_int_equal(tsr_dtype_block_bytes(TSR_F8_E4M3), 36);
    assert_int_equal(tsr_dtype_row_bytes(TSR_F8_E4M3, 576), 18 * 36);
    assert_int_equal(tsr_dtype_row_bytes(TSR_F8_E4M3, 48), 0);
    assert_string_equal(tsr_dtype_name(TSR_F8_E4M3), "F8_E4M3");
    assert_true(tsr_dtype_valid(TSR_F8_E4M3));
    for (int i = 0; i < N; i++) x[i] = tsr_test_rng_normal() * (i < 2 * TSR_QK ? 1e-3f : 1.0f);
    memset(x + 4 * TSR_QK, 0, TSR_QK * sizeof *x); /* block 4: all zero */
    for (int i = 0; i < TSR_QK; i++)               /* E4M3 values, amax 448: scale 1 */
        x[5 * TSR_QK + i] = (float)tsr_test_e4m3_ref(i ? (i & 1 ? 0x80 : 0) | (0x40 + i) : 0x7e);
    for (int i = 0; i < N; i++) ref[i] = x[i];
    tsr_quantize_row(TSR_F8_E4M3, x, q, N);
    tsr_dequantize_row(TSR_F8_E4M3, q, back, N);
    /* a Gaussian block: relative step 2^-3 at worst, NMSE about 2^-6 / 12 / 2 ~ 7e-4 */
    for (int b = 0; b < 8; b++) {
        if (b == 4 || b == 5) continue;
        double e = tsr_test_nmse(back + b * TSR_QK, ref + b * TSR_QK, TSR_QK);
        if (!(e <= 2e-3)) fail_msg("F8 block %d: NMSE %.3g above 2e-3", b, e);
    }
    float d;
    memcpy(&d, q + 4 * 36, 4);
    assert_true(d == 0.0f);
    for (int i = 0; i < TSR_QK; i++) assert_true(back[4 * TSR_QK + i] == 0.0f);
    memcpy(&d, q + 5 * 36, 4);
    assert_true(d == 1.0f);
    for (int i = 0; i < TSR_QK; i++) /* codes times 1: exact */
        if (back[5 * TSR_QK + i] != x[5 * TSR_QK + i])
            fail_msg("F8 exact block: %g came back as %g", x[5 * TSR_QK + i], back[5 * TSR_QK + i]);
}

/* ---- 3. the searched quantizer ---- */

/* Block kind k (of SEARCH_KINDS) into x[32]. */
enum { SEARCH_KINDS = 11 };
static void search_block(int k, float *x)
{
    static const float scales[] = {1e-6f, 3e-3f, 1.0f, 40.0f, 1e4f};
    float s = scales[tsr_test_rng_u64() % 5];
    for (int j = 0; j < TSR_QK; j++) x[j] = tsr_test_rng_normal() * s;
    switch (k) {
    case 0: /* Gaussian */
        break;
    case 1: { /* a Q4_1 file's block: 16 levels, d * n + m (the default model's weights) */
        float d = (float)tsr_test_rng_uniform() * 0.02f + 1e-4f;
        float m = -d * (float)(6 + 4 * tsr_test_rng_uniform());
        for (int j = 0; j < TSR_QK; j++) x[j] = d * (float)(tsr_test_rng_u64() % 16) + m;
        break;
    }
    case 2: /* one outlier */
        x[tsr_test_rng_u64() % TSR_QK] *= 50.0f;
        break;
    case 3: /* all zero */
        memset(x, 0, TSR_QK * sizeof *x);
        break;
    case 4: /* constant */
        for (int j = 1; j < TSR_QK; j++) x[j] = x[0];
        break;
    case 5: /* sparse: a few nonzero */
        for (int j = 0; j < TSR_QK; j++)
            if (tsr_test_rng_u64() % 8) x[j] = 0;
        break;
    case 6: /* E4M3 values times a power of two */
        for (int j = 0; j < TSR_QK; j++)
            x[j] = (float)tsr_test_e4m3_ref((int)(tsr_test_rng_u64() % 0x7f) | (j & 1) << 7) * s;
        break;
    case 7: /* FP8 subnormals: one weight of 1, the rest under 2^-6 of it, down to 2^-12 */
        for (int j = 0; j < TSR_QK; j++) x[j] = ldexpf(tsr_test_rng_normal(), -6 - (j % 7));
        x[0] = 1.0f;
        break;
    case 8: /* uniform in [-1, 1] */
        for (int j = 0; j < TSR_QK; j++) x[j] = (float)(2 * tsr_test_rng_uniform() - 1);
        break;
    case 9: /* int8 values: Q8_0's absmax block is exact */
        for (int j = 0; j < TSR_QK; j++) x[j] = (float)((int)(tsr_test_rng_u64() % 255) - 127);
        x[0] = 127.0f;
        break;
    default: /* f32 subnormal and tiny weights */
        for (int j = 0; j < TSR_QK; j++) x[j] = tsr_test_rng_normal() * 1e-39f;
        break;
    }
}

static double block_err(enum tsr_dtype t, const float *x, const void *q)
{
    float back[TSR_QK];
    tsr_dequantize_row(t, q, back, TSR_QK);
    double e = 0;
    for (int j = 0; j < TSR_QK; j++) {
        if (!isfinite(back[j]))
            fail_msg("%s: weight %d decodes to %g", tsr_dtype_name(t), j, back[j]);
        double d = (double)x[j] - back[j];
        e += d * d;
    }
    return e;
}

static void test_search(void **state)
{
    (void)state;
    static const enum tsr_dtype types[] = {TSR_Q8_0, TSR_F8_E4M3};
    enum { BLOCKS = 4000 };
    for (size_t ti = 0; ti < 2; ti++) {
        enum tsr_dtype t = types[ti];
        double sum_plain[SEARCH_KINDS] = {0}, sum_search[SEARCH_KINDS] = {0};
        long better = 0;
        for (int i = 0; i < BLOCKS * SEARCH_KINDS; i++) {
            int k = i % SEARCH_KINDS;
            float x[TSR_QK];
            uint8_t plain[64], searched[64];
            search_block(k, x);
            tsr_quantize_row(t, x, plain, TSR_QK);
            tsr_quantize_row_search(t, x, searched, TSR_QK);
            double ep = block_err(t, x, plain), es = block_err(t, x, searched);
            if (es > ep)
                fail_msg(
                    "%s, block kind %d: searched squared error %.9g above the absmax one's %.9g",
                    tsr_dtype_name(t), k, es, ep);
            better += es < ep;
            sum_plain[k] += ep;
            sum_search[k] += es;
            uint8_t again[64];
            tsr_quantize_row_search(t, x, again, TSR_QK);
            assert_memory_equal(again, searched, tsr_dtype_block_bytes(t));
            if (k == 3) /* all zero: zero scale, zero codes, as tsr_quantize_row's */
                assert_memory_equal(searched, plain, tsr_dtype_block_bytes(t));
        }
        /* the Gaussian blocks and a Q4_1 file's: the search must pay (the default model's
         * weights: -70% for Q8_0, -59% for F8_E4M3) */
        for (int k = 0; k < 2; k++)
            if (!(sum_search[k] < 0.9 * sum_plain[k]))
                fail_msg("%s, block kind %d: searched error %.4g of the absmax one's",
                         tsr_dtype_name(t), k, sum_search[k] / sum_plain[k]);
        print_message(
            "  %s: %ld of %d blocks improved; relative error Gaussian %.3f, Q4_1 levels %.3f, "
            "one outlier %.3f\n",
            tsr_dtype_name(t), better, BLOCKS * SEARCH_KINDS, sum_search[0] / sum_plain[0],
            sum_search[1] / sum_plain[1], sum_search[2] / sum_plain[2]);
    }
    /* other types: tsr_quantize_row's bytes */
    static const enum tsr_dtype others[] = {TSR_F32,  TSR_F16,  TSR_BF16,
                                            TSR_Q4_0, TSR_Q4_1, TSR_Q6_K};
    float x[TSR_QK_K];
    for (int j = 0; j < TSR_QK_K; j++) x[j] = tsr_test_rng_normal();
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        size_t rb = tsr_dtype_row_bytes(others[i], TSR_QK_K);
        uint8_t a[1024], b[1024];
        tsr_quantize_row(others[i], x, a, TSR_QK_K);
        tsr_quantize_row_search(others[i], x, b, TSR_QK_K);
        assert_memory_equal(a, b, rb);
    }
}

/* ---- 4. --quantize ---- */

static void test_model_quantize(void **state)
{
    (void)state;
    enum tsr_dtype t;
    assert_int_equal(tsr_weight_type_parse("fp8", &t), 0);
    assert_int_equal(t, TSR_F8_E4M3);
    assert_int_equal(tsr_weight_type_parse("q8_0", &t), 0);
    assert_int_equal(t, TSR_Q8_0);
    EXPECT_ERR(tsr_weight_type_parse("int8", &t), TSR_EINVAL, "unknown weight type 'int8'");

    tsr_model_t *m;
    assert_int_equal(tsr_model_open("synthetic:tiny", &m), 0);
    EXPECT_ERR(tsr_model_quantize(m, TSR_F8_E4M3), TSR_EINVAL, "synthetic:NAME:TYPE");
    tsr_model_free(m);
    if (tsr_test_missing(MODEL, "scripts/fetch_model.sh")) return;

    /* the default model's widths (576, 1536) are not whole k-quant super-blocks */
    assert_int_equal(tsr_model_open(MODEL, &m), 0);
    EXPECT_ERR(tsr_model_quantize(m, TSR_Q4_K), TSR_EINVAL,
               "tensor 'blk.0.attn_q.weight' has 576 columns, not a multiple of Q4_K's "
               "256-weight blocks");
    struct tsr_tensor_view v, file;
    assert_int_equal(tsr_model_tensor(m, "blk.0.attn_q.weight", &file), 0); /* still the file's */
    assert_int_equal(file.type, TSR_Q4_1);
    assert_int_equal(tsr_model_quantize(m, -1), 0);

    static const enum tsr_dtype targets[] = {TSR_F8_E4M3, TSR_Q8_0, TSR_BF16};
    static const char *const names[] = {"blk.3.ffn_down.weight", "blk.0.attn_k.weight"};
    for (size_t ti = 0; ti < sizeof targets / sizeof targets[0]; ti++) {
        tsr_model_t *q;
        assert_int_equal(tsr_model_open(MODEL, &q), 0);
        assert_int_equal(tsr_model_quantize(q, targets[ti]), 0);
        for (size_t ni = 0; ni < sizeof names / sizeof names[0]; ni++) {
            assert_int_equal(tsr_model_tensor(m, names[ni], &file), 0);
            assert_int_equal(tsr_model_tensor(q, names[ni], &v), 0);
            assert_int_equal(v.type, targets[ti]);
            assert_int_equal(v.generated, 1);
            assert_int_equal(v.rows, file.rows);
            assert_int_equal(v.cols, file.cols);
            size_t rb = tsr_dtype_row_bytes(v.type, v.cols);
            assert_int_equal(v.nbytes, rb * (size_t)v.rows);
            /* the whole tensor: each file row decoded and requantized */
            uint8_t *got = malloc(v.nbytes), *want = malloc(rb);
            float *row = malloc(sizeof(float) * (size_t)v.cols);
            assert_true(got && want && row);
            assert_int_equal(tsr_model_read(q, names[ni], 0, v.rows, 0, v.cols, got), 0);
            size_t frb = file.nbytes / (size_t)file.rows;
            long long searched = 0;
            for (int64_t r = 0; r < v.rows; r++) {
                tsr_dequantize_row(file.type, (const uint8_t *)file.data + (size_t)r * frb, row,
                                   v.cols);
                tsr_quantize_row_search(v.type, row, want, v.cols);
                if (memcmp(got + (size_t)r * rb, want, rb))
                    fail_msg("%s as %s: row %lld differs from the file's row requantized",
                             names[ni], tsr_dtype_name(v.type), (long long)r);
                tsr_quantize_row(v.type, row, want, v.cols);
                searched += memcmp(got + (size_t)r * rb, want, rb) != 0;
            }
            /* the conversion searches (bf16 has nothing to search) */
            if ((v.type == TSR_BF16) != (searched == 0))
                fail_msg("%s as %s: %lld rows differ from the absmax quantizer's", names[ni],
                         tsr_dtype_name(v.type), searched);
            /* a TP rank's column slice (the second half, on blocks) and a row slice */
            int64_t c0 = v.cols / 2, nc = v.cols - c0, r0 = 5, nr = 7;
            size_t srb = tsr_dtype_row_bytes(v.type, nc), skip = tsr_dtype_row_bytes(v.type, c0);
            uint8_t *slice = malloc(srb * (size_t)nr);
            assert_non_null(slice);
            assert_int_equal(tsr_model_read(q, names[ni], r0, nr, c0, nc, slice), 0);
            for (int64_t r = 0; r < nr; r++)
                if (memcmp(slice + (size_t)r * srb, got + (size_t)(r0 + r) * rb + skip, srb))
                    fail_msg("%s as %s: slice row %lld differs from the whole tensor's", names[ni],
                             tsr_dtype_name(v.type), (long long)r);
            free(slice);
            free(got);
            free(want);
            free(row);
        }
        /* embeddings and norms keep the file's types */
        assert_int_equal(tsr_model_tensor(m, "token_embd.weight", &file), 0);
        assert_int_equal(tsr_model_tensor(q, "token_embd.weight", &v), 0);
        assert_int_equal(v.type, file.type);
        assert_int_equal(v.generated, 0);
        assert_int_equal(tsr_model_tensor(q, "blk.0.attn_norm.weight", &v), 0);
        assert_int_equal(v.type, TSR_F32);
        tsr_model_free(q);
    }
    tsr_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codec),
        cmocka_unit_test(test_blocks),
        cmocka_unit_test(test_search),
        cmocka_unit_test(test_model_quantize),
    };
    return tsr_test_exit(cmocka_run_group_tests(tests, NULL, NULL));
}
