/* The CUDA backend, op by op, against the CPU backend (the reference) on random inputs, over many
 * shapes: the default model's (dim 576, 9 heads, 3 KV heads, head dim 64, FFN 1536, vocab 49152),
 * Llama-3-8B's (4096, 32, 8, 128, 14336) and odd ones that reach every kernel's fallback path.
 * Every output is filled with NaN on both backends before each run, so an element an op forgets to
 * write fails (NaN never passes). Without a CUDA device it prints why and exits 77 (ctest:
 * SKIP_RETURN_CODE 77), or 1 under TESSERA_REQUIRE_GPU=1 (gpu_count_or_exit in gpu_test.h).
 *
 * Error measure: NMSE = Σ(gpu - ref)² / Σ ref². Limits:
 *   embed, gather_rows                      0 (copies and exact decoding: bit for bit)
 *   rmsnorm, add_rmsnorm, swiglu, RoPE      1e-12: same f32 operations in the same order, the
 *     + cache write, attention               norm's sum in double on both sides; only expf's last
 *                                            bits and summation order differ (~1e-15)
 *   attention, decode-only steps and head   1e-10: f32 online softmax on both sides, different
 *     dims the prefill kernel doesn't take   summation order over up to 4,096 positions; past
 *                                            that, 1e-10 x positions / 4,096 (the rounding of
 *                                            sums grows with their terms; 3.2e-9 at 128k)
 *   attention prefill f16 (steps holding a  5e-6: tensor-core flash attention, Q·scale, K, V and
 *     run of 2+ consecutive tokens of one    P rounded to f16, f32 accumulation and softmax.
 *     sequence, head dim 64 or 128)          f16 keeps 11 significant bits: a relative error of
 *       RMS about 2^-11/sqrt(3)/1.44 = 2.0e-4 per rounding (the spacing over the mean mantissa),
 *       variance σ² ≈ 3.9e-8 (bf16's 2.5e-6 above, over 2^6). A score s = Σ q_i k_i · scale
 *       gets δs with variance Σ (q_i k_i scale)² · 2σ² = E[q²] E[k²] · 2σ² = 4 · 2σ² ≈ 3.1e-7
 *       for these inputs (q of σ 2, K of σ 1); δs perturbs each softmax weight by the relative
 *       factor δs, so over diffuse attention the output's NMSE ≈ Var(δs) ≈ 3e-7; rounding V
 *       and P adds about σ² each: ≈ 4e-7 in all (a host emulation of the kernel's fragment
 *       code measured 1.5e-7..4.2e-7 on these shapes). The limit leaves 12x for the tensor
 *       cores' accumulation and exp2 approximations, while indexing and mask errors give 1e-3
 *       and more (in that emulation: V's ldmatrix addresses swapped ~1, one diagonal mask term
 *       off by one 1e-2)
 *   matmul, n <= 8 (GEMV: f32 activations times exactly decoded weights, f32 accumulation):
 *     vs a double-precision reference on the same decoded weights: 1e-10 (measured ~1e-14);
 *   matmul, n > 8 (cuBLAS: bf16 operands, f32 accumulation), F16/BF16/Q weights:
 *     vs double: 2e-5. Rounding to bf16 (8 significant bits) is a relative error of variance
 *     about 2.5e-6 per operand, so NMSE ≈ 5e-6 when both x and W are rounded (measured on an
 *     H200: 5.8e-6..6.6e-6) and about half with BF16 weights (measured ≤ 3.7e-6);
 *   matmul with F32 weights, n > 8 (cuBLAS f32, no TF32): 1e-10;
 *   matmul vs the CPU backend: the same limits, except with quantized weights 3e-4, which admits
 *     the CPU's q8 mode (TESSERA_CPU_ACT=q8: activations rounded to int8 blocks, NMSE ≈ 3e-5 on
 *     Gaussian rows, tests/unit/test_cpu_ops.c); against its exact f32 mode (the default) the
 *     GEMV measures ~3e-13. The double reference is the strict check either way.
 * The double reference uses up to 64 sampled weight rows for every activation row.
 *
 * Usage: test_cuda_ops [--quick] [--bench | --bench-only] [--seed N] [--log FILE]
 *   --quick  small shapes only (for compute-sanitizer);
 *   --bench  also times GEMV, GEMM, decode attention and a 2,048-token causal prefill on
 *            Llama-3-8B shapes (informational); --bench-only times them and checks nothing
 *            (for profilers);
 *   --log    every comparison's row to FILE (the summary table is printed last either way). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>

#include "common/dtype.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "tests/gpu/attn_step.h"
#include "tests/gpu/gpu_test.h"

static tsr_backend_t *cpu, *gpu;
static int quick;
static FILE *log_file;

/* ---- results ---- */

/* One summary row per (op, path, type): the worst NMSE seen. */
struct summary {
    char key[48];
    double worst_cpu, worst_ref, lim_cpu, lim_ref;
    int runs, fails;
};
static struct summary sums[128];
static int n_sums, n_fails, n_checks;

/* NMSE of a against b; +inf when either holds a NaN or an infinity. */
static double nmse(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) return INFINITY;
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? num / den : num;
}

/* Records one comparison. ref < 0: no double reference for this one. */
static void record(const char *key, const char *shape, int n, double e_cpu, double lim_cpu,
                   double e_ref, double lim_ref)
{
    int ok = e_cpu <= lim_cpu && (e_ref < 0 || e_ref <= lim_ref);
    n_checks++;
    if (!ok) n_fails++;
    if (log_file)
        fprintf(log_file,
                "%-22s %-26s n=%-5d gpu~cpu %9.2e (<= %7.1e)  gpu~f64 %9.2e (<= %7.1e)  %s\n", key,
                shape, n, e_cpu, lim_cpu, e_ref, lim_ref, ok ? "ok" : "FAIL");
    if (!ok)
        fprintf(stderr, "FAIL %s %s n=%d: gpu~cpu %.3e (limit %.1e), gpu~f64 %.3e (limit %.1e)\n",
                key, shape, n, e_cpu, lim_cpu, e_ref, lim_ref);
    struct summary *s = NULL;
    for (int i = 0; i < n_sums; i++)
        if (!strcmp(sums[i].key, key)) s = &sums[i];
    if (!s) {
        if (n_sums == (int)(sizeof sums / sizeof sums[0])) return;
        s = &sums[n_sums++];
        snprintf(s->key, sizeof s->key, "%s", key);
        s->worst_ref = -1;
    }
    s->runs++;
    s->fails += !ok;
    if (e_cpu > s->worst_cpu || isnan(e_cpu)) s->worst_cpu = e_cpu;
    if (e_ref > s->worst_ref || isnan(e_ref)) s->worst_ref = e_ref;
    s->lim_cpu = lim_cpu;
    s->lim_ref = lim_ref;
}

/* ---- paired buffers: the same data on both backends ---- */

struct pbuf {
    tsr_buf_t *c, *g;
    size_t n; /* floats */
};

static struct pbuf pb_new(size_t n, const float *init)
{
    struct pbuf p = {tsr_buf_alloc(cpu, n * sizeof(float)), tsr_buf_alloc(gpu, n * sizeof(float)),
                     n};
    if (!p.c || !p.g) die("allocating buffers");
    if (init && (tsr_buf_set(p.c, 0, init, n * sizeof(float)) ||
                 tsr_buf_set(p.g, 0, init, n * sizeof(float))))
        die("setting buffers");
    return p;
}

static void pb_poison(struct pbuf p)
{
    float *nan = xmalloc(p.n * sizeof(float));
    memset(nan, 0xff, p.n * sizeof(float));
    if (tsr_buf_set(p.c, 0, nan, p.n * sizeof(float)) ||
        tsr_buf_set(p.g, 0, nan, p.n * sizeof(float)))
        die("poisoning");
    free(nan);
}

/* NMSE of the GPU's first n floats against the CPU's. */
static double pb_compare(struct pbuf p, size_t n)
{
    float *a = xmalloc(n * sizeof(float)), *b = xmalloc(n * sizeof(float));
    if (tsr_buf_get(p.g, 0, a, n * sizeof(float)) || tsr_buf_get(p.c, 0, b, n * sizeof(float)))
        die("reading buffers");
    double e = nmse(a, b, n);
    free(a);
    free(b);
    return e;
}

static void pb_free(struct pbuf p)
{
    tsr_buf_free(p.c);
    tsr_buf_free(p.g);
}

/* A weight on both backends; the CPU backend aliases `bytes`, which lives as long. */
struct pweight {
    struct tsr_weight c, g;
    void *bytes;
};

static struct pweight pw_from(enum tsr_dtype type, int64_t rows, int64_t cols, const float *f)
{
    size_t rb = tsr_dtype_row_bytes(type, cols);
    struct pweight w;
    w.bytes = xmalloc(rb * (size_t)rows);
    for (int64_t r = 0; r < rows; r++)
        tsr_quantize_row(type, f + (size_t)r * cols, (char *)w.bytes + (size_t)r * rb, cols);
    w.c = (struct tsr_weight){tsr_buf_weights(cpu, w.bytes, rb * rows), type, rows, cols};
    w.g = (struct tsr_weight){tsr_buf_weights(gpu, w.bytes, rb * rows), type, rows, cols};
    if (!w.c.buf || !w.g.buf) die("uploading weights");
    return w;
}

static void pw_free(struct pweight *w)
{
    tsr_buf_free(w->c.buf);
    tsr_buf_free(w->g.buf);
    free(w->bytes);
}

static void check_rc(int rc_c, int rc_g, const char *op)
{
    if (rc_c) die(op);
    if (rc_g) {
        fprintf(stderr, "FATAL: %s on the GPU: %s\n", op, tsr_last_error());
        exit(2);
    }
}

static const enum tsr_dtype all_types[] = {TSR_F32,  TSR_F16,  TSR_BF16, TSR_Q8_0,   TSR_Q4_0,
                                           TSR_Q4_1, TSR_Q5_0, TSR_Q5_1, TSR_F8_E4M3};
#define N_TYPES 9
/* The k-quants: rows of whole 256-weight super-blocks only; the GPU decodes them per element. */
static const enum tsr_dtype kq_types[] = {TSR_Q4_K, TSR_Q5_K, TSR_Q6_K};
#define N_KQ_TYPES 3

/* ---- element-wise ops ---- */

static void test_embed(enum tsr_dtype type, int vocab, int dim, int n)
{
    float *f = rand_floats((size_t)vocab * dim, 1.0f);
    struct pweight w = pw_from(type, vocab, dim, f);
    free(f);
    int32_t *ids = xmalloc((size_t)n * sizeof *ids);
    for (int i = 0; i < n; i++) ids[i] = i % 5 == 3 ? -1 : rng_int(vocab);
    ids[n - 1] = vocab - 1;
    struct pbuf out = pb_new((size_t)n * dim, NULL);
    pb_poison(out);
    check_rc(tsr_op_embed(cpu, out.c, &w.c, ids, n), tsr_op_embed(gpu, out.g, &w.g, ids, n),
             "embed");
    char key[48], shape[48];
    snprintf(key, sizeof key, "embed %s", tsr_dtype_name(type));
    snprintf(shape, sizeof shape, "vocab %d x %d", vocab, dim);
    record(key, shape, n, pb_compare(out, out.n), 0, -1, 0);
    pb_free(out);
    pw_free(&w);
    free(ids);
}

static struct pweight norm_weight(enum tsr_dtype type, int dim)
{
    float *f = xmalloc((size_t)dim * sizeof *f);
    for (int i = 0; i < dim; i++) f[i] = 1.0f + 0.2f * rng_gauss();
    struct pweight w = pw_from(type, 1, dim, f);
    free(f);
    return w;
}

static void test_rmsnorm(int n, int dim, enum tsr_dtype wtype, int inplace)
{
    struct pweight w = norm_weight(wtype, dim);
    float *xf = rand_floats((size_t)n * dim, 3.0f);
    struct pbuf x = pb_new((size_t)n * dim, xf), out = inplace ? x : pb_new((size_t)n * dim, NULL);
    if (!inplace) pb_poison(out);
    float eps = 1e-5f;
    check_rc(tsr_op_rmsnorm(cpu, out.c, x.c, &w.c, n, dim, eps),
             tsr_op_rmsnorm(gpu, out.g, x.g, &w.g, n, dim, eps), "rmsnorm");
    char key[48], shape[48];
    snprintf(key, sizeof key, "rmsnorm w %s", tsr_dtype_name(wtype));
    snprintf(shape, sizeof shape, "dim %d%s", dim, inplace ? " in place" : "");
    record(key, shape, n, pb_compare(out, out.n), 1e-12, -1, 0);
    if (!inplace) pb_free(out);
    pb_free(x);
    pw_free(&w);
    free(xf);
}

static void test_add_rmsnorm(int n, int dim)
{
    struct pweight w = norm_weight(TSR_F32, dim);
    float *rf = rand_floats((size_t)n * dim, 2.0f), *df = rand_floats((size_t)n * dim, 1.0f);
    struct pbuf r = pb_new((size_t)n * dim, rf), d = pb_new((size_t)n * dim, df),
                out = pb_new((size_t)n * dim, NULL);
    pb_poison(out);
    check_rc(tsr_op_add_rmsnorm(cpu, r.c, d.c, out.c, &w.c, n, dim, 1e-6f),
             tsr_op_add_rmsnorm(gpu, r.g, d.g, out.g, &w.g, n, dim, 1e-6f), "add_rmsnorm");
    char shape[48];
    snprintf(shape, sizeof shape, "dim %d", dim);
    double e1 = pb_compare(out, out.n), e2 = pb_compare(r, r.n);
    record("add_rmsnorm", shape, n, e1 > e2 ? e1 : e2, 1e-12, -1, 0);
    pb_free(r);
    pb_free(d);
    pb_free(out);
    pw_free(&w);
    free(rf);
    free(df);
}

static void test_swiglu(int n, int width, int inplace)
{
    float *gf = rand_floats((size_t)n * width, 3.0f), *uf = rand_floats((size_t)n * width, 1.0f);
    struct pbuf g = pb_new((size_t)n * width, gf), u = pb_new((size_t)n * width, uf);
    struct pbuf out = inplace ? g : pb_new((size_t)n * width, NULL);
    if (!inplace) pb_poison(out);
    check_rc(tsr_op_swiglu(cpu, out.c, g.c, u.c, n, width),
             tsr_op_swiglu(gpu, out.g, g.g, u.g, n, width), "swiglu");
    char shape[48];
    snprintf(shape, sizeof shape, "width %d%s", width, inplace ? " in place" : "");
    record("swiglu", shape, n, pb_compare(out, out.n), 1e-12, -1, 0);
    if (!inplace) pb_free(out);
    pb_free(g);
    pb_free(u);
    free(gf);
    free(uf);
}

static void test_gather(int n_in, int n, int width, int inplace)
{
    float *xf = rand_floats((size_t)n_in * width, 1.0f);
    struct pbuf x = pb_new((size_t)n_in * width, xf);
    struct pbuf out = inplace ? x : pb_new((size_t)n * width, NULL);
    if (!inplace) pb_poison(out);
    int32_t *rows = xmalloc((size_t)n * sizeof *rows);
    for (int i = 0; i < n; i++) rows[i] = rng_int(n_in);
    check_rc(tsr_op_gather_rows(cpu, out.c, x.c, rows, n, width),
             tsr_op_gather_rows(gpu, out.g, x.g, rows, n, width), "gather_rows");
    char shape[48];
    snprintf(shape, sizeof shape, "%d rows of %d%s", n_in, width, inplace ? " in place" : "");
    record("gather_rows", shape, n, pb_compare(out, (size_t)n * width), 0, -1, 0);
    if (!inplace) pb_free(out);
    pb_free(x);
    free(xf);
    free(rows);
}

/* ---- matmul ---- */

static int is_quant(enum tsr_dtype t)
{
    return t == TSR_Q8_0 || t == TSR_Q4_0 || t == TSR_Q4_1;
}

/* y = x · Wᵀ (+ bias) with W of `type` made from the floats wf. */
static void test_matmul_w(enum tsr_dtype type, int rows, int cols, const float *wf,
                          const struct pweight *wq, const int *ns, int n_ns, const char *label,
                          int bias_type)
{
    struct pweight bias = {.bytes = NULL};
    if (bias_type >= 0) {
        float *bf = rand_floats((size_t)rows, 0.5f);
        bias = pw_from((enum tsr_dtype)bias_type, 1, rows, bf);
        free(bf);
    }
    size_t rb = tsr_dtype_row_bytes(type, cols);
    /* Sampled rows of the decoded weight for the double reference. */
    int n_ref = rows < 64 ? rows : 64;
    int *ref_rows = xmalloc((size_t)n_ref * sizeof *ref_rows);
    float *ref_w = xmalloc((size_t)n_ref * cols * sizeof(float)), *bias_f = NULL;
    for (int i = 0; i < n_ref; i++) {
        ref_rows[i] = (int)((int64_t)i * (rows - 1) / (n_ref > 1 ? n_ref - 1 : 1));
        tsr_dequantize_row(type, (const char *)wq->bytes + (size_t)ref_rows[i] * rb,
                           ref_w + (size_t)i * cols, cols);
    }
    if (bias_type >= 0) {
        bias_f = xmalloc((size_t)rows * sizeof(float));
        tsr_dequantize_row((enum tsr_dtype)bias_type, bias.bytes, bias_f, rows);
    }
    (void)wf;
    for (int k = 0; k < n_ns; k++) {
        int n = ns[k];
        float *xf = rand_floats((size_t)n * cols, 1.0f);
        struct pbuf x = pb_new((size_t)n * cols, xf), y = pb_new((size_t)n * rows, NULL);
        pb_poison(y);
        const struct tsr_weight *bc = bias_f ? &bias.c : NULL, *bg = bias_f ? &bias.g : NULL;
        check_rc(tsr_op_matmul(cpu, y.c, &wq->c, x.c, bc, n),
                 tsr_op_matmul(gpu, y.g, &wq->g, x.g, bg, n), "matmul");
        float *yg = xmalloc(y.n * sizeof(float)), *yc = xmalloc(y.n * sizeof(float));
        if (tsr_buf_get(y.g, 0, yg, y.n * sizeof(float)) ||
            tsr_buf_get(y.c, 0, yc, y.n * sizeof(float)))
            die("reading matmul output");
        double e_cpu = nmse(yg, yc, y.n);
        /* Double reference on the sampled rows. */
        double num = 0, den = 0, cnum = 0;
        int bad = 0;
        for (int j = 0; j < n; j++)
            for (int i = 0; i < n_ref; i++) {
                const float *wr = ref_w + (size_t)i * cols, *xr = xf + (size_t)j * cols;
                double acc = bias_f ? bias_f[ref_rows[i]] : 0.0;
                for (int c = 0; c < cols; c++) acc += (double)wr[c] * xr[c];
                float g = yg[(size_t)j * rows + ref_rows[i]],
                      cc = yc[(size_t)j * rows + ref_rows[i]];
                if (!isfinite(g)) bad = 1;
                num += (g - acc) * (g - acc);
                cnum += (cc - acc) * (cc - acc);
                den += acc * acc;
            }
        double e_ref = bad ? INFINITY : num / den;
        int gemv = n <= TSR_CUDA_GEMV_MAX_N;
        double lim_ref = gemv || type == TSR_F32 ? 1e-10 : 2e-5;
        double lim_cpu = is_quant(type) ? 3e-4 : lim_ref;
        char key[48], shape[64];
        snprintf(key, sizeof key, "matmul %s %s%s", gemv ? "gemv" : "gemm", tsr_dtype_name(type),
                 bias_f ? "+bias" : "");
        snprintf(shape, sizeof shape, "%s %dx%d", label, rows, cols);
        record(key, shape, n, e_cpu, lim_cpu, e_ref, lim_ref);
        if (log_file) fprintf(log_file, "%54s cpu~f64 %9.2e\n", "", cnum / den);
        free(yg);
        free(yc);
        pb_free(x);
        pb_free(y);
        free(xf);
    }
    free(ref_rows);
    free(ref_w);
    free(bias_f);
    if (bias_type >= 0) pw_free(&bias);
}

static void test_matmul_shape(int rows, int cols, const char *label, const int *ns, int n_ns,
                              int float_only)
{
    float *wf = rand_floats((size_t)rows * cols, 1.0f / sqrtf((float)cols));
    for (int t = 0; t < N_TYPES + N_KQ_TYPES; t++) {
        enum tsr_dtype type = t < N_TYPES ? all_types[t] : kq_types[t - N_TYPES];
        if (!tsr_dtype_row_bytes(type, cols) ||
            (float_only && type != TSR_F32 && type != TSR_F16 && type != TSR_BF16))
            continue;
        struct pweight w = pw_from(type, rows, cols, wf);
        test_matmul_w(type, rows, cols, wf, &w, ns, n_ns, label, -1);
        pw_free(&w);
    }
    free(wf);
}

static void test_matmul_bias(enum tsr_dtype type, int btype, int rows, int cols)
{
    float *wf = rand_floats((size_t)rows * cols, 1.0f / sqrtf((float)cols));
    struct pweight w = pw_from(type, rows, cols, wf);
    const int ns[] = {1, 5, 20};
    test_matmul_w(type, rows, cols, wf, &w, ns, 3, "bias", btype);
    pw_free(&w);
    free(wf);
}

/* 0 when the first n floats of two GPU buffers are the same bits, else 1 (an NMSE-like number
 * for record() with limit 0). */
static double differs(tsr_buf_t *a, tsr_buf_t *b, size_t n)
{
    float *x = xmalloc(n * sizeof(float)), *y = xmalloc(n * sizeof(float));
    if (tsr_buf_get(a, 0, x, n * sizeof(float)) || tsr_buf_get(b, 0, y, n * sizeof(float)))
        die("reading");
    double d = memcmp(x, y, n * sizeof(float)) ? 1.0 : 0.0;
    free(x);
    free(y);
    return d;
}

/* The fused decode matmuls: matmul_many over Q, K, V-shaped weights and matmul_swiglu over gate
 * and up, on the GPU against the CPU (the matmul limits) and against the same ops one at a time
 * on the GPU, which they must equal bit for bit (each row is summed in the same order whichever
 * rows share its launch). */
static void test_fused(enum tsr_dtype type, int qrows, int kvrows, int ffn, int cols,
                       const char *label, const int *ns, int n_ns)
{
    if (!tsr_dtype_row_bytes(type, cols)) return;
    int rows[3] = {qrows, kvrows, kvrows};
    struct pweight w[3], gu[2];
    for (int i = 0; i < 3; i++) {
        float *f = rand_floats((size_t)rows[i] * cols, 1.0f / sqrtf((float)cols));
        w[i] = pw_from(type, rows[i], cols, f);
        free(f);
    }
    for (int i = 0; i < 2; i++) {
        float *f = rand_floats((size_t)ffn * cols, 1.0f / sqrtf((float)cols));
        gu[i] = pw_from(type, ffn, cols, f);
        free(f);
    }
    int gemm_limit = !is_quant(type) && type != TSR_F32; /* bf16 operands above the GEMV sizes */
    for (int k = 0; k < n_ns; k++) {
        int n = ns[k];
        float *xf = rand_floats((size_t)n * cols, 1.0f);
        struct pbuf x = pb_new((size_t)n * cols, xf), y[3], one = pb_new((size_t)n * qrows, NULL);
        const struct tsr_weight *wc[3], *wg[3];
        tsr_buf_t *yc[3], *yg[3];
        for (int i = 0; i < 3; i++) {
            y[i] = pb_new((size_t)n * rows[i], NULL);
            pb_poison(y[i]);
            wc[i] = &w[i].c, wg[i] = &w[i].g, yc[i] = y[i].c, yg[i] = y[i].g;
        }
        check_rc(tsr_op_matmul_many(cpu, 3, yc, wc, NULL, x.c, n),
                 tsr_op_matmul_many(gpu, 3, yg, wg, NULL, x.g, n), "matmul_many");
        double lim = is_quant(type) ? 3e-4 : n > TSR_CUDA_GEMV_MAX_N && gemm_limit ? 2e-5 : 1e-10;
        char shape[64];
        for (int i = 0; i < 3; i++) {
            snprintf(shape, sizeof shape, "%s %s w%d %dx%d", label, tsr_dtype_name(type), i,
                     rows[i], cols);
            record("matmul_many gpu~cpu", shape, n, pb_compare(y[i], y[i].n), lim, -1, 0);
            /* the same weight alone, on the GPU: bit for bit */
            struct pbuf solo = {one.c, one.g, (size_t)n * rows[i]};
            check_rc(0, tsr_op_matmul(gpu, solo.g, &w[i].g, x.g, NULL, n), "matmul");
            record("matmul_many = one by one", shape, n, differs(solo.g, y[i].g, solo.n), 0, -1, 0);
        }
        /* gate/up + SwiGLU */
        struct pbuf out = pb_new((size_t)n * ffn, NULL), tmp = pb_new((size_t)n * ffn, NULL),
                    g2 = pb_new((size_t)n * ffn, NULL), u2 = pb_new((size_t)n * ffn, NULL);
        pb_poison(out);
        check_rc(tsr_op_matmul_swiglu(cpu, out.c, tmp.c, &gu[0].c, &gu[1].c, x.c, n),
                 tsr_op_matmul_swiglu(gpu, out.g, tmp.g, &gu[0].g, &gu[1].g, x.g, n),
                 "matmul_swiglu");
        snprintf(shape, sizeof shape, "%s %s %dx%d", label, tsr_dtype_name(type), ffn, cols);
        record("matmul_swiglu gpu~cpu", shape, n, pb_compare(out, out.n), lim * 4, -1, 0);
        check_rc(0,
                 tsr_op_matmul(gpu, g2.g, &gu[0].g, x.g, NULL, n) ||
                     tsr_op_matmul(gpu, u2.g, &gu[1].g, x.g, NULL, n) ||
                     tsr_op_swiglu(gpu, g2.g, g2.g, u2.g, n, ffn),
                 "matmul + swiglu");
        record("matmul_swiglu = unfused", shape, n, differs(out.g, g2.g, out.n), 0, -1, 0);
        pb_free(out);
        pb_free(tmp);
        pb_free(g2);
        pb_free(u2);
        for (int i = 0; i < 3; i++) pb_free(y[i]);
        pb_free(one);
        pb_free(x);
        free(xf);
    }
    for (int i = 0; i < 3; i++) pw_free(&w[i]);
    for (int i = 0; i < 2; i++) pw_free(&gu[i]);
}

/* ---- RoPE and attention ---- */

static struct tsr_attn_shape attn_shape(const struct shape *sh, int neox, struct pbuf *inv_freq,
                                        int gpu_side)
{
    return (struct tsr_attn_shape){.n_head = sh->n_head,
                                   .n_kv_head = sh->n_kv_head,
                                   .head_dim = sh->head_dim,
                                   .block_size = sh->block_size,
                                   .neox = neox,
                                   .scale = 1.0f / sqrtf((float)sh->head_dim),
                                   .inv_freq = gpu_side ? inv_freq->g : inv_freq->c,
                                   .kv_type = TSR_F32};
}

static struct pbuf make_inv_freq(int hd, double theta)
{
    float *f = xmalloc((size_t)(hd / 2) * sizeof(float));
    for (int i = 0; i < hd / 2; i++) f[i] = (float)pow(theta, -2.0 * i / hd);
    struct pbuf p = pb_new((size_t)(hd / 2), f);
    free(f);
    return p;
}

static void test_rope(const struct shape *sh, int neox, const char *label, int n_seqs,
                      const int *ctx, const int *newt)
{
    struct step st = make_step(sh, n_seqs, ctx, newt);
    int nt = st.m.n_tokens, hd = sh->head_dim;
    size_t qw = (size_t)sh->n_head * hd, kw = (size_t)sh->n_kv_head * hd;
    float *qf = rand_floats(nt * qw, 1.0f), *kf = rand_floats(nt * kw, 1.0f),
          *vf = rand_floats(nt * kw, 1.0f), *cf = rand_floats((size_t)st.n_slots * kw, 1.0f);
    struct pbuf q = pb_new(nt * qw, qf), k = pb_new(nt * kw, kf), v = pb_new(nt * kw, vf);
    struct pbuf kc = pb_new((size_t)st.n_slots * kw, cf), vc = pb_new((size_t)st.n_slots * kw, cf);
    struct pbuf inv = make_inv_freq(hd, hd == 128 ? 500000.0 : 10000.0);
    struct tsr_attn_shape sc = attn_shape(sh, neox, &inv, 0), sg = attn_shape(sh, neox, &inv, 1);
    check_rc(tsr_op_rope_kv_write(cpu, q.c, k.c, v.c, kc.c, vc.c, &sc, &st.m),
             tsr_op_rope_kv_write(gpu, q.g, k.g, v.g, kc.g, vc.g, &sg, &st.m), "rope_kv_write");
    double e[4] = {pb_compare(q, q.n), pb_compare(k, k.n), pb_compare(kc, kc.n),
                   pb_compare(vc, vc.n)};
    double worst = 0;
    for (int i = 0; i < 4; i++)
        if (e[i] > worst || isnan(e[i])) worst = e[i];
    char key[48], shape[64];
    snprintf(key, sizeof key, "rope_kv_write %s", neox ? "neox" : "gguf");
    snprintf(shape, sizeof shape, "%s %s", sh->name, label);
    record(key, shape, nt, worst, 1e-12, -1, 0);
    pb_free(q);
    pb_free(k);
    pb_free(v);
    pb_free(kc);
    pb_free(vc);
    pb_free(inv);
    free(qf);
    free(kf);
    free(vf);
    free(cf);
    free_step(&st);
}

/* Whether the CUDA backend runs this step's attention on its f16 tensor-core prefill kernel
 * (kernels/cuda/cuda_attention_prefill.cu): steps holding a run of 2 or more consecutive tokens
 * of one sequence, when the kernel takes the head dim (tsr_cuda_attention_prefill_ok: 64, 128).
 * The rest run on the f32 kernel, with the f32 limit. */
static int prefill_step(const struct shape *sh, const struct step *st)
{
    if (sh->head_dim != 64 && sh->head_dim != 128) return 0;
    for (int t = 1; t < st->m.n_tokens; t++)
        if (st->seq[t] == st->seq[t - 1] && st->pos[t] == st->pos[t - 1] + 1) return 1;
    return 0;
}

static void test_attention(const struct shape *sh, const char *label, int n_seqs, const int *ctx,
                           const int *newt)
{
    struct step st = make_step(sh, n_seqs, ctx, newt);
    int nt = st.m.n_tokens, hd = sh->head_dim, pf = prefill_step(sh, &st), longest = 0;
    for (int i = 0; i < n_seqs; i++)
        if (ctx[i] + newt[i] > longest) longest = ctx[i] + newt[i];
    double limit = pf ? 5e-6 : 1e-10 * (longest > 4096 ? longest / 4096.0 : 1.0);
    size_t qw = (size_t)sh->n_head * hd, kw = (size_t)sh->n_kv_head * hd;
    float *kf = rand_floats((size_t)st.n_slots * kw, 1.0f),
          *vf = rand_floats((size_t)st.n_slots * kw, 1.0f);
    struct pbuf kc = pb_new((size_t)st.n_slots * kw, kf), vc = pb_new((size_t)st.n_slots * kw, vf);
    struct pbuf out = pb_new(nt * qw, NULL), inv = make_inv_freq(hd, 10000.0);
    struct tsr_attn_shape sc = attn_shape(sh, 0, &inv, 0), sg = attn_shape(sh, 0, &inv, 1);
    /* Twice with fresh queries: the second run reuses the uploaded metadata. */
    for (int rep = 0; rep < 2; rep++) {
        float *qf = rand_floats(nt * qw, 2.0f);
        struct pbuf q = pb_new(nt * qw, qf);
        pb_poison(out);
        check_rc(tsr_op_attention(cpu, out.c, q.c, kc.c, vc.c, &sc, &st.m),
                 tsr_op_attention(gpu, out.g, q.g, kc.g, vc.g, &sg, &st.m), "attention");
        char shape[64];
        snprintf(shape, sizeof shape, "%s %s%s", sh->name, label, rep ? " (again)" : "");
        record(pf ? "attention prefill f16" : "attention", shape, nt, pb_compare(out, out.n), limit,
               -1, 0);
        pb_free(q);
        free(qf);
    }
    pb_free(kc);
    pb_free(vc);
    pb_free(out);
    pb_free(inv);
    free(kf);
    free(vf);
    free_step(&st);
}

/* ---- timings (informational) ---- */

/* Median seconds of one call of fn over reps, after a warm-up. */
static double time_median(void (*fn)(void *), void *arg, int reps)
{
    double t[64];
    if (reps > 64) reps = 64;
    fn(arg);
    if (tsr_backend_sync(gpu)) die("sync");
    for (int i = 0; i < reps; i++) {
        double t0 = now_s();
        fn(arg);
        if (tsr_backend_sync(gpu)) die("sync");
        t[i] = now_s() - t0;
    }
    for (int i = 1; i < reps; i++)
        for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
            double x = t[j];
            t[j] = t[j - 1];
            t[j - 1] = x;
        }
    return t[reps / 2];
}

struct mm_arg {
    struct tsr_weight *w;
    tsr_buf_t *x, *y;
    int n, iters;
};

static void run_mm(void *p)
{
    struct mm_arg *a = p;
    for (int i = 0; i < a->iters; i++)
        if (tsr_op_matmul(gpu, a->y, a->w, a->x, NULL, a->n)) die("matmul");
}

struct attn_arg {
    tsr_buf_t *out, *q, *kc, *vc;
    struct tsr_attn_shape *s;
    struct tsr_batch_meta *m;
    int iters;
};

static void run_attn(void *p)
{
    struct attn_arg *a = p;
    for (int i = 0; i < a->iters; i++)
        if (tsr_op_attention(gpu, a->out, a->q, a->kc, a->vc, a->s, a->m)) die("attention");
}

/* Seconds of one tsr_op_attention on the GPU (median of 7 runs of `iters`) for a step of n_seqs
 * sequences, sequence i with ctx[i] cached tokens and newt[i] new ones, random q and cache. */
static double time_attention(const struct shape *sh, int n_seqs, const int *ctx, const int *newt,
                             int iters)
{
    struct step st = make_step(sh, n_seqs, ctx, newt);
    size_t kw = (size_t)sh->n_kv_head * sh->head_dim, qw = (size_t)sh->n_head * sh->head_dim;
    size_t nt = (size_t)st.m.n_tokens, cache = (size_t)st.n_slots * kw * 4;
    tsr_buf_t *kc = tsr_buf_alloc(gpu, cache), *vc = tsr_buf_alloc(gpu, cache),
              *q = tsr_buf_alloc(gpu, nt * qw * 4), *out = tsr_buf_alloc(gpu, nt * qw * 4);
    if (!kc || !vc || !q || !out) die("bench attention buffers");
    float *qf = rand_floats(nt * qw, 1.0f), *cf = rand_floats((size_t)st.n_slots * kw, 1.0f);
    if (tsr_buf_set(q, 0, qf, nt * qw * 4) || tsr_buf_set(kc, 0, cf, cache) ||
        tsr_buf_set(vc, 0, cf, cache))
        die("bench attention data");
    struct tsr_attn_shape s = {.n_head = sh->n_head,
                               .n_kv_head = sh->n_kv_head,
                               .head_dim = sh->head_dim,
                               .block_size = sh->block_size,
                               .scale = 1.0f / sqrtf((float)sh->head_dim),
                               .kv_type = TSR_F32};
    struct attn_arg arg = {out, q, kc, vc, &s, &st.m, iters};
    double sec = time_median(run_attn, &arg, 7) / iters;
    tsr_buf_free(kc);
    tsr_buf_free(vc);
    tsr_buf_free(q);
    tsr_buf_free(out);
    free(qf);
    free(cf);
    free_step(&st);
    return sec;
}

static void bench(void)
{
    /* The bandwidth ceiling: a device-to-device copy, bytes read plus written. */
    size_t bytes = (size_t)1 << 30;
    void *a, *b;
    cudaEvent_t e0, e1;
    if (cudaMalloc(&a, bytes) || cudaMalloc(&b, bytes) || cudaEventCreate(&e0) ||
        cudaEventCreate(&e1)) {
        fprintf(stderr, "bench: cuda setup failed\n");
        return;
    }
    cudaMemset(a, 1, bytes);
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e0, 0);
    for (int i = 0; i < 10; i++) cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e1, 0);
    cudaEventSynchronize(e1);
    float ms;
    cudaEventElapsedTime(&ms, e0, e1);
    double copy_bw = 2.0 * bytes * 10 / (ms * 1e-3);
    cudaFree(a);
    cudaFree(b);
    printf("\nbench: device-to-device copy %.0f GB/s (read + write)\n", copy_bw / 1e9);
    printf("%-34s %6s %10s %10s %8s\n", "matmul (Llama-3-8B shapes)", "n", "us", "GB/s | TF/s",
           "of copy");
    static const int shapes[][2] = {{14336, 4096}, {4096, 14336}, {4096, 4096}, {1024, 4096}};
    for (int si = 0; si < 4; si++) {
        int rows = shapes[si][0], cols = shapes[si][1];
        float *wf = rand_floats((size_t)rows * cols, 1.0f / sqrtf((float)cols));
        for (int t = 0; t < N_TYPES + N_KQ_TYPES; t++) {
            enum tsr_dtype type = t < N_TYPES ? all_types[t] : kq_types[t - N_TYPES];
            size_t rb = tsr_dtype_row_bytes(type, cols);
            void *wb = xmalloc(rb * rows);
            for (int r = 0; r < rows; r++)
                tsr_quantize_row(type, wf + (size_t)r * cols, (char *)wb + (size_t)r * rb, cols);
            struct tsr_weight w = {tsr_buf_weights(gpu, wb, rb * rows), type, rows, cols};
            free(wb);
            if (!w.buf) die("bench weights");
            static const int ns[] = {1, 8, 64, 128, 256, 512, 2048};
            for (int k = 0; k < 7; k++) {
                int n = ns[k];
                if ((n == 128 || n >= 512) && si > 0) continue;
                float *xf = rand_floats((size_t)n * cols, 1.0f);
                tsr_buf_t *x = tsr_buf_alloc(gpu, (size_t)n * cols * 4),
                          *y = tsr_buf_alloc(gpu, (size_t)n * rows * 4);
                if (!x || !y || tsr_buf_set(x, 0, xf, (size_t)n * cols * 4)) die("bench buffers");
                struct mm_arg arg = {&w, x, y, n, 10};
                double s = time_median(run_mm, &arg, 7) / arg.iters;
                char name[64];
                snprintf(name, sizeof name, "%s %dx%d", tsr_dtype_name(type), rows, cols);
                if (n <= TSR_CUDA_GEMV_MAX_N) {
                    double bw = (double)rb * rows / s;
                    printf("%-34s %6d %10.1f %10.0f %7.0f%%\n", name, n, s * 1e6, bw / 1e9,
                           100.0 * bw / copy_bw);
                } else { /* TF/s, and the weight stream's share of the copy bandwidth */
                    double tf = 2.0 * rows * cols * n / s, bw = (double)rb * rows / s;
                    printf("%-34s %6d %10.1f %10.1f %7.0f%%\n", name, n, s * 1e6, tf / 1e12,
                           100.0 * bw / copy_bw);
                }
                tsr_buf_free(x);
                tsr_buf_free(y);
                free(xf);
            }
            tsr_buf_free(w.buf);
        }
        free(wf);
    }
    /* Decode attention: 32 sequences of 2,048 cached tokens, Llama-3-8B heads. */
    struct shape sh = {"llama3-8b", 32, 8, 128, 16};
    int ctx[32], newt[32];
    for (int i = 0; i < 32; i++) {
        ctx[i] = 2047;
        newt[i] = 1;
    }
    double sec = time_attention(&sh, 32, ctx, newt, 10);
    double kv_bytes = 2.0 * 32 * 2048 * 8 * 128 * 4;
    printf("%-34s %6d %10.1f %10.0f %7.0f%%\n", "attention decode 32 x ctx 2048", 32, sec * 1e6,
           kv_bytes / sec / 1e9, 100.0 * kv_bytes / sec / copy_bw);
    /* Prefill attention: one 2,048-token prompt, causal, the same heads; FLOPs of QKᵀ and PV over
     * the L(L+1)/2 unmasked (query, key) pairs, 2 each per dim. */
    enum { L = 2048 };
    int cp[] = {0}, np[] = {L};
    sec = time_attention(&sh, 1, cp, np, 5);
    double flops = 4.0 * 32 * 128 * ((double)L * (L + 1) / 2);
    printf("%-34s %6d %10.1f %10.1f %8s\n", "attention prefill 2048 (causal)", L, sec * 1e6,
           flops / sec / 1e12, "-");
}

/* ---- main ---- */

int main(int argc, char **argv)
{
    int do_bench = 0;
    uint64_t seed = (uint64_t)time(NULL);
    const char *log_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else if (!strcmp(argv[i], "--bench"))
            do_bench = 1;
        else if (!strcmp(argv[i], "--bench-only"))
            do_bench = 2;
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--log") && i + 1 < argc)
            log_path = argv[++i];
        else {
            fprintf(stderr,
                    "usage: %s [--quick] [--bench | --bench-only] [--seed N] [--log FILE]\n",
                    argv[0]);
            return 2;
        }
    }
    gpu_count_or_exit("test_cuda_ops");
    rng_seed(seed);
    if (log_path && !(log_file = fopen(log_path, "w"))) {
        perror(log_path);
        return 2;
    }
    cpu = tsr_backend_cpu_new(0);
    gpu = tsr_backend_cuda_new(0);
    if (!cpu || !gpu) die("creating the backends");
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    printf("test_cuda_ops: device %s, seed %llu%s\n", prop.name, (unsigned long long)seed,
           quick ? " (quick)" : "");
    fflush(stdout);
    if (do_bench == 2) {
        bench();
        return 0;
    }
    double t0 = now_s();

    /* Element-wise ops. */
    for (int t = 0; t < N_TYPES; t++) {
        test_embed(all_types[t], 1000, 576, 37);
        test_embed(all_types[t], 300, 4096, 5);
    }
    for (int t = 0; t < N_KQ_TYPES; t++) {
        test_embed(kq_types[t], 1000, 512, 37);
        test_embed(kq_types[t], 300, 4096, 5);
    }
    if (!quick) {
        test_embed(TSR_Q8_0, 49152, 576, 64);
        test_embed(TSR_BF16, 49152, 576, 64);
    }
    static const int dims[] = {576, 4096, 100, 5120};
    for (int i = 0; i < 4; i++) {
        test_rmsnorm(1, dims[i], TSR_F32, 0);
        test_rmsnorm(7, dims[i], TSR_F32, 1);
        test_rmsnorm(64, dims[i], dims[i] % 32 ? TSR_BF16 : TSR_Q8_0, 0);
        test_rmsnorm(3, dims[i], TSR_F16, 0);
        test_add_rmsnorm(1, dims[i]);
        test_add_rmsnorm(33, dims[i]);
    }
    static const int widths[] = {1536, 14336, 7};
    for (int i = 0; i < 3; i++) {
        test_swiglu(1, widths[i], 0);
        test_swiglu(33, widths[i], 1);
        test_gather(50, 17, widths[i], 0);
        test_gather(50, 17, widths[i], 1);
    }

    /* Matmul: every weight type, GEMV (n <= 8) and cuBLAS (n > 8). */
    static const int ns_small[] = {1, 2, 3, 8, 9, 64, 257};
    static const int ns_quick[] = {1, 3, 8, 9, 33};
    static const int ns_big[] = {1, 8, 64};
    const int *nss = quick ? ns_quick : ns_small;
    int n_nss = quick ? 5 : 7;
    test_matmul_shape(576, 576, "smol q/o", nss, n_nss, 0);
    test_matmul_shape(192, 576, "smol k/v", nss, n_nss, 0);
    test_matmul_shape(1536, 576, "smol gate/up", nss, n_nss, 0);
    test_matmul_shape(576, 1536, "smol down", nss, n_nss, 0);
    test_matmul_shape(100, 96, "odd (3 blocks/row)", nss, n_nss, 0);
    /* Odd counts of k-quant super-blocks a row (Q6_K rows then take 2-byte staging) and last
     * chunks of 1 and 3 super-blocks, as Qwen2's 8960- and 4864-wide FFNs have. */
    test_matmul_shape(64, 2304, "9 super-blocks/row", nss, n_nss, 0);
    test_matmul_shape(48, 8960, "35 super-blocks/row", nss, n_nss, 0);
    /* The quantized tensor-core GEMM (Q8_0, F8_E4M3; cols % 256 == 0): row and batch tails of its
     * 64 x 64 tiles, and K split into ranges (few tiles against 16 chunks of 256); at 200 rows of
     * x (past the backend's default dequant_min_n) the same weights decoded to bf16 for cuBLAS. */
    static const int ns_gq[] = {9, 70, 130, 200};
    test_matmul_shape(300, 4096, "GEMM tiles, split K", ns_gq, 4, 0);
    test_matmul_shape(37, 100, "odd (cols % 8)", nss, n_nss, 1);
    test_matmul_shape(7, 6, "tiny", nss, n_nss, 1);
    test_matmul_bias(TSR_BF16, TSR_F32, 576, 576);
    test_matmul_bias(TSR_Q8_0, TSR_BF16, 192, 576);
    if (!quick) {
        test_matmul_shape(49152, 576, "smol lm_head", ns_big, 3, 0);
        test_matmul_shape(4096, 4096, "llama3 q/o", ns_big, 3, 0);
        test_matmul_shape(1024, 4096, "llama3 k/v", ns_big, 3, 0);
        test_matmul_shape(14336, 4096, "llama3 gate/up", ns_big, 3, 0);
        test_matmul_shape(4096, 14336, "llama3 down", ns_big, 3, 0);
    }

    /* The fused decode matmuls. */
    static const int ns_fused[] = {1, 2, 5, 8, 9, 40};
    for (int t = 0; t < N_TYPES; t++) {
        test_fused(all_types[t], 576, 192, 1536, 576, "smol", ns_fused, quick ? 3 : 6);
        test_fused(all_types[t], 40, 8, 24, 100, "odd", ns_fused, 3);
        if (!quick) test_fused(all_types[t], 4096, 1024, 14336, 4096, "llama3", ns_fused, 4);
    }

    /* RoPE + cache write, attention. */
    static const struct shape shapes[] = {
        {"smol", 9, 3, 64, 16},       {"llama3-8b", 32, 8, 128, 16},
        {"mqa g16", 16, 1, 128, 16},  {"mha hd128 bs32", 8, 8, 128, 32},
        {"g2 hd64 bs7", 4, 2, 64, 7}, {"hd256", 8, 4, 256, 32},
        {"hd80", 10, 2, 80, 16},      {"hd32 bs1", 4, 4, 32, 1},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const struct shape *sh = &shapes[i];
        int c1[] = {0}, n1[] = {37};
        int c5[] = {0, 16, 99, 1000, 3000}, n5[] = {1, 1, 1, 1, 1};
        int cm[] = {200, 5, 511, 2047}, nm[] = {64, 1, 1, 1};
        if (quick) {
            c5[3] = 300;
            c5[4] = 129;
            cm[2] = 70;
            cm[3] = 100;
        }
        for (int neox = 0; neox < 2; neox++) {
            test_rope(sh, neox, "prefill 37", 1, c1, n1);
            test_rope(sh, neox, "mixed", 4, cm, nm);
        }
        test_attention(sh, "prefill 37", 1, c1, n1);
        test_attention(sh, "decode x5", 5, c5, n5);
        test_attention(sh, "prefill 64 @200 + 3 decodes", 4, cm, nm);
        if (!quick && sh->head_dim == 128 && sh->n_kv_head == 8) {
            int cp[] = {0}, np[] = {512};
            test_attention(sh, "prefill 512", 1, cp, np);
            /* Long contexts, to Llama 3.1's 128k: decodes at 8k, 32k and 128k positions. */
            int cd[] = {8191, 32767, 131071}, nd[] = {1, 1, 1};
            test_attention(sh, "decode 8k + 32k + 128k", 3, cd, nd);
        }
        /* Prompt chunks after cached context (several 64-token tiles per sequence, the last one
         * short, starting off a 64 boundary), two sequences; runs of 2 and 3 tokens beside
         * decodes; a chunk that ends past position 3,000. */
        int cc[] = {1000, 0}, nc[] = {100, 77};
        int cr[] = {10, 500, 33, 0}, nr[] = {2, 1, 3, 1};
        int cl[] = {2900}, nl[] = {130};
        if (quick) {
            cc[0] = 100;
            cl[0] = 200;
        }
        char label[64];
        snprintf(label, sizeof label, "chunks %d @%d + %d @%d", nc[0], cc[0], nc[1], cc[1]);
        test_attention(sh, label, 2, cc, nc);
        test_attention(sh, "runs 2, 3 + 2 decodes", 4, cr, nr);
        snprintf(label, sizeof label, "chunk %d @%d", nl[0], cl[0]);
        test_attention(sh, label, 1, cl, nl);
    }
    double secs = now_s() - t0;
    if (do_bench) bench();

    /* The summary, last. */
    printf("\n%-26s %5s %11s %9s %11s %9s %s\n", "op (path, weight type)", "runs", "gpu~cpu",
           "limit", "gpu~f64", "limit", "");
    for (int i = 0; i < n_sums; i++) {
        const struct summary *s = &sums[i];
        char ref[16] = "-", lref[16] = "-";
        if (s->worst_ref >= 0) {
            snprintf(ref, sizeof ref, "%.2e", s->worst_ref);
            snprintf(lref, sizeof lref, "%.0e", s->lim_ref);
        }
        printf("%-26s %5d %11.2e %9.0e %11s %9s %s\n", s->key, s->runs, s->worst_cpu, s->lim_cpu,
               ref, lref, s->fails ? "FAIL" : "ok");
    }
    printf("%d comparisons, %d failed (%.1f s)\n", n_checks, n_fails, secs);
    if (log_file) fclose(log_file);
    tsr_backend_free(gpu);
    tsr_backend_free(cpu);
    return n_fails ? 1 : 0;
}
