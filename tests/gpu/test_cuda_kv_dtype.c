/* The KV cache in bf16 and in FP8 on the CUDA backend (kernels/backend.h: tsr_attn_shape.kv_type)
 * against the CPU backend with the same cache type, and the f32 cache's path beside it, on random
 * inputs: head dims
 * 64 and 128 (the tensor-core prefill kernel's) and 96 (decode kernel only), GQA groups 1..8,
 * decode steps over contexts up to 4,000 positions (split-K) and prompt chunks after a context.
 * Outputs are filled with NaN before every run (an element left unwritten fails). Without a CUDA
 * device it prints why and exits 77 (ctest: skipped), or 1 under TESSERA_REQUIRE_GPU=1.
 *
 * Checks and limits (NMSE = Σ(gpu - ref)² / Σ ref²):
 *   rope_kv_write, bf16 cache: v rows bit for bit (both round f32 to nearest even); k rows within
 *     one bf16 step of the CPU's (the rotation's f32 products may differ in the last bit and land
 *     on the other side of a rounding boundary), NMSE <= 1e-8; every other slot unchanged.
 *   attention, the same inputs on both backends (the CPU's rotated q and cache copied to the GPU):
 *     decode kernel (decode steps; head dims the prefill kernel doesn't take)  1e-10, as f32:
 *       bf16 widens to f32 exactly, then the same f32 arithmetic as the f32 cache's;
 *     prefill kernel (a run of 2+ consecutive tokens of one sequence, head dim 64/128)  5e-6, as
 *       f32 in test_cuda_ops.c: bf16 to f16 is exact, so Q, P and f16 accumulation are the only
 *       roundings there too.
 *   GPU, bf16 cache against an f32 cache holding the same values widened: bit for bit, both
 *     kernels (the contract: a bf16 cache computes as the f32 path on the rounded K and V).
 *   f32 cache, GPU against CPU: the limits above (1e-10 decode, 5e-6 prefill): the f32 path.
 *   GPU, bf16 against f32 caches of the unrounded values: 1e-4 (rounding K and V to 8
 *     significant bits: ~1e-6 expected; printed).
 *   FP8 cache (E4M3 codes, an f32 scale per slot and KV head):
 *     rope_kv_write: v rows (codes, scales, padding) bit for bit (both divide IEEE-rounded and
 *       round to nearest even); k: scales within relative 1e-6 of the CPU's and codes within one
 *       E4M3 step (the rotation's last bit, again), the widened k cache NMSE <= 1e-6; every other
 *       slot unchanged.
 *     attention on the same inputs: the limits above (1e-10 decode, 5e-6 prefill): both widen
 *       e4m3 * scale to f32 as the CPU does, then the f32 path.
 *     GPU, FP8 cache against an f32 cache holding the same values widened: bit for bit, both
 *       kernels.
 *     GPU, FP8 against f32 caches of the unrounded values: 1e-2. Rounding to E4M3 (3 mantissa
 *       bits) leaves a relative error of at most 2^-4 an element, variance s2 <= 2^-8 / 3 =
 *       1.3e-3 (uniform over the half step). It reaches the output through V (~s2) and through
 *       the scores: d(q.k) * scale has variance E[q^2] E[k^2] s2 = 4 s2 for these inputs (q of
 *       sigma 2, K of sigma 1), perturbing each softmax weight by that relative factor, so over
 *       diffuse attention the output's NMSE ~ 5 s2 <= 6.5e-3 (measured 5.4e-3 to 5.7e-3 on an
 *       H100 at GQA 8, head dim 64, 4,000 positions; printed).
 *
 * Usage: test_cuda_kv_dtype [--seed N] [--bench]
 *   --bench  also times decode attention (32 sequences x 4,096 positions, Llama-3-8B's heads) and
 *            a 2,048-token prefill with each cache type (informational). */
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
static int n_fails, n_checks;
static double worst_rounding[2]; /* GPU bf16 and fp8 against f32, the largest NMSE */

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

static void check(int ok, const char *what, const char *where, double value, double limit)
{
    n_checks++;
    if (!ok) n_fails++;
    printf("%-4s %-44s %-34s %9.2e (<= %7.1e)\n", ok ? "ok" : "FAIL", what, where, value, limit);
}

static tsr_buf_t *upload(tsr_backend_t *b, const void *src, size_t n)
{
    tsr_buf_t *buf = tsr_buf_alloc(b, n);
    if (!buf || (src && tsr_buf_set(buf, 0, src, n))) die("uploading");
    return buf;
}

static void *download(tsr_buf_t *buf, size_t n)
{
    void *p = xmalloc(n);
    if (tsr_buf_get(buf, 0, p, n)) die("downloading");
    return p;
}

static void poison(tsr_buf_t *buf, size_t n)
{
    void *p = xmalloc(n);
    memset(p, 0xff, n);
    if (tsr_buf_set(buf, 0, p, n)) die("poisoning");
    free(p);
}

static void op(int rc, const char *what, tsr_backend_t *b)
{
    if (rc) {
        fprintf(stderr, "FATAL: %s on %s: %s\n", what, tsr_backend_name(b), tsr_last_error());
        exit(2);
    }
}

/* Whether the GPU runs this step's attention on the prefill kernel (test_cuda_ops.c's rule). */
static int prefill_step(const struct shape *sh, const struct step *st)
{
    if (sh->head_dim != 64 && sh->head_dim != 128) return 0;
    for (int t = 1; t < st->m.n_tokens; t++)
        if (st->seq[t] == st->seq[t - 1] && st->pos[t] == st->pos[t - 1] + 1) return 1;
    return 0;
}

static struct tsr_attn_shape attn_shape(const struct shape *sh, tsr_buf_t *inv_freq,
                                        enum tsr_dtype t)
{
    return (struct tsr_attn_shape){.n_head = sh->n_head,
                                   .n_kv_head = sh->n_kv_head,
                                   .head_dim = sh->head_dim,
                                   .block_size = sh->block_size,
                                   .neox = 1,
                                   .scale = 1.0f / sqrtf((float)sh->head_dim),
                                   .inv_freq = inv_freq,
                                   .kv_type = t};
}

/* One backend's run: rope_kv_write then attention, cache of type t with initial bytes c0. */
struct run {
    float *q;      /* rotated */
    void *kc, *vc; /* the caches after */
    float *out;
};

static struct run run_on(tsr_backend_t *b, const struct shape *sh, const struct step *st,
                         enum tsr_dtype t, const float *q, const float *k, const float *v,
                         const void *kc0, const void *vc0, const float *freq)
{
    int nt = st->m.n_tokens, hd = sh->head_dim;
    size_t qw = (size_t)sh->n_head * hd, kw = (size_t)sh->n_kv_head * hd;
    size_t cache = (size_t)st->n_slots * tsr_kv_row_bytes(t, sh->n_kv_head, hd);
    tsr_buf_t *qb = upload(b, q, nt * qw * 4), *kb = upload(b, k, nt * kw * 4),
              *vb = upload(b, v, nt * kw * 4), *kcb = upload(b, kc0, cache),
              *vcb = upload(b, vc0, cache), *fb = upload(b, freq, (size_t)hd / 2 * 4),
              *ob = upload(b, NULL, nt * qw * 4);
    poison(ob, nt * qw * 4);
    struct tsr_attn_shape s = attn_shape(sh, fb, t);
    op(tsr_op_rope_kv_write(b, qb, kb, vb, kcb, vcb, &s, &st->m), "rope_kv_write", b);
    op(tsr_op_attention(b, ob, qb, kcb, vcb, &s, &st->m), "attention", b);
    struct run r = {download(qb, nt * qw * 4), download(kcb, cache), download(vcb, cache),
                    download(ob, nt * qw * 4)};
    tsr_buf_t *bufs[] = {qb, kb, vb, kcb, vcb, fb, ob};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) tsr_buf_free(bufs[i]);
    return r;
}

/* Attention alone on b over the given (already rotated) q and caches of type t. */
static float *attend_on(tsr_backend_t *b, const struct shape *sh, const struct step *st,
                        enum tsr_dtype t, const float *q, const void *kc, const void *vc,
                        const float *freq)
{
    int nt = st->m.n_tokens, hd = sh->head_dim;
    size_t qw = (size_t)sh->n_head * hd;
    size_t cache = (size_t)st->n_slots * tsr_kv_row_bytes(t, sh->n_kv_head, hd);
    tsr_buf_t *qb = upload(b, q, nt * qw * 4), *kcb = upload(b, kc, cache),
              *vcb = upload(b, vc, cache), *fb = upload(b, freq, (size_t)hd / 2 * 4),
              *ob = upload(b, NULL, nt * qw * 4);
    poison(ob, nt * qw * 4);
    struct tsr_attn_shape s = attn_shape(sh, fb, t);
    op(tsr_op_attention(b, ob, qb, kcb, vcb, &s, &st->m), "attention", b);
    float *out = download(ob, nt * qw * 4);
    tsr_buf_t *bufs[] = {qb, kcb, vcb, fb, ob};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) tsr_buf_free(bufs[i]);
    return out;
}

static float *widen(const uint16_t *x, size_t n)
{
    float *f = xmalloc(n * sizeof *f);
    for (size_t i = 0; i < n; i++) f[i] = tsr_bf16_to_f32(x[i]);
    return f;
}

static void free_run(struct run *r)
{
    free(r->q);
    free(r->kc);
    free(r->vc);
    free(r->out);
}

/* The FP8 cache's checks for one step (test_step's inputs: q, k, v, the f32 caches kc32, vc32
 * and the GPU's f32 output g32 for them, the slots the step writes). */
static void test_fp8(const struct shape *sh, const struct step *st, const char *where,
                     const char *kern, double lim, const float *q, const float *k, const float *v,
                     const float *kc32, const float *vc32, const float *freq, const float *g32,
                     const uint8_t *written)
{
    int nt = st->m.n_tokens, hd = sh->head_dim, nkv = sh->n_kv_head;
    size_t kw = (size_t)nkv * hd, row = tsr_kv_row_bytes(TSR_F8_E4M3, nkv, hd);
    size_t n_out = (size_t)nt * sh->n_head * hd, cache = (size_t)st->n_slots * kw;
    uint8_t *kc8 = xmalloc(st->n_slots * row), *vc8 = xmalloc(st->n_slots * row);
    for (int s = 0; s < st->n_slots; s++) {
        tsr_kv_fp8_store(kc32 + s * kw, nkv, hd, kc8 + s * row);
        tsr_kv_fp8_store(vc32 + s * kw, nkv, hd, vc8 + s * row);
    }
    struct run c8 = run_on(cpu, sh, st, TSR_F8_E4M3, q, k, v, kc8, vc8, freq);
    struct run g8 = run_on(gpu, sh, st, TSR_F8_E4M3, q, k, v, kc8, vc8, freq);
    const uint8_t *gk = g8.kc, *gv = g8.vc, *ck = c8.kc, *cv = c8.vc;
    int v_same = 1, k_far = 0, others_same = 1;
    for (int s = 0; s < st->n_slots; s++) {
        size_t o = (size_t)s * row;
        if (!written[s]) {
            others_same &= !memcmp(gk + o, kc8 + o, row) && !memcmp(gv + o, vc8 + o, row);
            continue;
        }
        v_same &= !memcmp(gv + o, cv + o, row);
        for (int h = 0; h < nkv; h++) {
            float dg, dc;
            memcpy(&dg, gk + o + kw + 4 * h, 4);
            memcpy(&dc, ck + o + kw + 4 * h, 4);
            k_far += !(fabsf(dg - dc) <= 1e-6f * dc);
        }
        for (size_t i = 0; i < kw; i++) {
            int g = gk[o + i], c = ck[o + i], dm = (g & 0x7f) - (c & 0x7f);
            /* magnitudes adjacent, signs alike (or both within a step of zero) */
            k_far += dm > 1 || dm < -1 || ((g ^ c) & 0x80 && ((g & 0x7f) > 1 || (c & 0x7f) > 1));
        }
    }
    check(v_same, "fp8 rope_kv_write: v rows bit for bit", where, !v_same, 0);
    check(!k_far, "fp8 rope_kv_write: k within 1 e4m3 step", where, k_far, 0);
    check(others_same, "fp8 rope_kv_write: other slots unchanged", where, !others_same, 0);
    float *gkw = xmalloc(cache * sizeof(float)), *ckw = xmalloc(cache * sizeof(float));
    float *cvw = xmalloc(cache * sizeof(float));
    for (int s = 0; s < st->n_slots; s++) {
        tsr_kv_fp8_load(gk + s * row, nkv, hd, gkw + s * kw);
        tsr_kv_fp8_load(ck + s * row, nkv, hd, ckw + s * kw);
        tsr_kv_fp8_load(cv + s * row, nkv, hd, cvw + s * kw);
    }
    double e = nmse(gkw, ckw, cache);
    check(e <= 1e-6, "fp8 rope_kv_write: k cache gpu ~ cpu", where, e, 1e-6);

    char what[64];
    float *ga = attend_on(gpu, sh, st, TSR_F8_E4M3, c8.q, c8.kc, c8.vc, freq);
    e = nmse(ga, c8.out, n_out);
    snprintf(what, sizeof what, "fp8 cache, %s: gpu ~ cpu", kern);
    check(e <= lim, what, where, e, lim);
    float *gw = attend_on(gpu, sh, st, TSR_F32, c8.q, ckw, cvw, freq);
    int same = !memcmp(ga, gw, n_out * sizeof(float));
    snprintf(what, sizeof what, "fp8 = f32 over widened, %s (gpu)", kern);
    check(same, what, where, !same, 0);
    e = nmse(g8.out, g32, n_out);
    if (e > worst_rounding[1]) worst_rounding[1] = e;
    check(e <= 1e-2 && e > 0, "gpu fp8 ~ gpu f32 (unrounded K, V)", where, e, 1e-2);

    free_run(&c8);
    free_run(&g8);
    void *p[] = {kc8, vc8, gkw, ckw, cvw, ga, gw};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) free(p[i]);
}

static void test_step(const struct shape *sh, const char *label, int n_seqs, const int *ctx,
                      const int *newt)
{
    struct step st = make_step(sh, n_seqs, ctx, newt);
    int nt = st.m.n_tokens, hd = sh->head_dim, pf = prefill_step(sh, &st);
    size_t qw = (size_t)sh->n_head * hd, kw = (size_t)sh->n_kv_head * hd;
    size_t n_out = (size_t)nt * qw, cache = (size_t)st.n_slots * kw;
    char where[96];
    snprintf(where, sizeof where, "%s %s", sh->name, label);
    float *q = rand_floats(n_out, 2.0f), *k = rand_floats((size_t)nt * kw, 1.0f),
          *v = rand_floats((size_t)nt * kw, 1.0f);
    float *kc32 = rand_floats(cache, 1.0f), *vc32 = rand_floats(cache, 1.0f);
    uint16_t *kc16 = xmalloc(cache * 2), *vc16 = xmalloc(cache * 2);
    for (size_t i = 0; i < cache; i++) {
        kc16[i] = tsr_f32_to_bf16(kc32[i]);
        vc16[i] = tsr_f32_to_bf16(vc32[i]);
    }
    float *freq = xmalloc((size_t)hd / 2 * sizeof *freq);
    for (int i = 0; i < hd / 2; i++) freq[i] = (float)pow(500000.0, -2.0 * i / hd);
    double lim = pf ? 5e-6 : 1e-10;
    const char *kern = pf ? "prefill" : "decode";
    char what[64];

    /* f32 cache: the GPU against the CPU */
    struct run c32 = run_on(cpu, sh, &st, TSR_F32, q, k, v, kc32, vc32, freq);
    struct run g32 = run_on(gpu, sh, &st, TSR_F32, q, k, v, kc32, vc32, freq);
    double e = nmse(g32.out, c32.out, n_out);
    snprintf(what, sizeof what, "f32 cache, %s: gpu ~ cpu", kern);
    check(e <= lim, what, where, e, lim);

    /* bf16 cache: rope_kv_write */
    struct run c16 = run_on(cpu, sh, &st, TSR_BF16, q, k, v, kc16, vc16, freq);
    struct run g16 = run_on(gpu, sh, &st, TSR_BF16, q, k, v, kc16, vc16, freq);
    const uint16_t *gk = g16.kc, *gv = g16.vc, *ck = c16.kc, *cv = c16.vc;
    uint8_t *written = calloc((size_t)st.n_slots, 1); /* the slots this step writes */
    if (!written) die("out of memory");
    for (int t = 0; t < nt; t++) written[st.slot[t]] = 1;
    int v_same = 1, k_far = 0, others_same = 1;
    for (int s = 0; s < st.n_slots; s++) {
        size_t o = (size_t)s * kw;
        if (!written[s]) {
            others_same &= !memcmp(gk + o, kc16 + o, kw * 2) && !memcmp(gv + o, vc16 + o, kw * 2);
            continue;
        }
        v_same &= !memcmp(gv + o, cv + o, kw * 2);
        for (size_t i = 0; i < kw; i++) {
            int d = (int)gk[o + i] - (int)ck[o + i]; /* same sign: adjacent bf16 values */
            k_far += d > 1 || d < -1;
        }
    }
    check(v_same, "bf16 rope_kv_write: v rows bit for bit", where, !v_same, 0);
    check(!k_far, "bf16 rope_kv_write: k within 1 bf16 step", where, k_far, 0);
    check(others_same, "bf16 rope_kv_write: other slots unchanged", where, !others_same, 0);
    float *gkw = widen(gk, cache), *ckw = widen(ck, cache);
    e = nmse(gkw, ckw, cache);
    check(e <= 1e-8, "bf16 rope_kv_write: k cache gpu ~ cpu", where, e, 1e-8);

    /* bf16 attention on the same inputs: the CPU's rotated q and caches on both */
    float *ga = attend_on(gpu, sh, &st, TSR_BF16, c16.q, c16.kc, c16.vc, freq);
    e = nmse(ga, c16.out, n_out);
    snprintf(what, sizeof what, "bf16 cache, %s: gpu ~ cpu", kern);
    check(e <= lim, what, where, e, lim);
    /* ... and bit for bit the GPU's f32 path over the widened values */
    float *cvw = widen(cv, cache);
    float *gw = attend_on(gpu, sh, &st, TSR_F32, c16.q, ckw, cvw, freq);
    int same = !memcmp(ga, gw, n_out * sizeof(float));
    snprintf(what, sizeof what, "bf16 = f32 over widened, %s (gpu)", kern);
    check(same, what, where, !same, 0);
    /* what rounding costs: the GPU's bf16 run against its f32 run */
    e = nmse(g16.out, g32.out, n_out);
    if (e > worst_rounding[0]) worst_rounding[0] = e;
    check(e <= 1e-4 && e > 0, "gpu bf16 ~ gpu f32 (unrounded K, V)", where, e, 1e-4);
    test_fp8(sh, &st, where, kern, lim, q, k, v, kc32, vc32, freq, g32.out, written);

    free_run(&c32);
    free_run(&g32);
    free_run(&c16);
    free_run(&g16);
    void *p[] = {q, k, v, kc32, vc32, kc16, vc16, freq, gkw, ckw, ga, cvw, gw, written};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) free(p[i]);
    free_step(&st);
}

/* ---- timings (informational) ---- */

static double time_attention(const struct shape *sh, enum tsr_dtype t, int n_seqs, int ctx,
                             int newt, int iters)
{
    int *c = xmalloc((size_t)n_seqs * sizeof *c), *n = xmalloc((size_t)n_seqs * sizeof *n);
    for (int i = 0; i < n_seqs; i++) c[i] = ctx, n[i] = newt;
    struct step st = make_step(sh, n_seqs, c, n);
    size_t qw = (size_t)sh->n_head * sh->head_dim;
    size_t nt = (size_t)st.m.n_tokens,
           cache = (size_t)st.n_slots * tsr_kv_row_bytes(t, sh->n_kv_head, sh->head_dim);
    void *zeros = calloc(1, cache > nt * qw * 4 ? cache : nt * qw * 4);
    if (!zeros) die("out of memory");
    tsr_buf_t *kc = upload(gpu, zeros, cache), *vc = upload(gpu, zeros, cache),
              *q = upload(gpu, zeros, nt * qw * 4), *out = upload(gpu, NULL, nt * qw * 4);
    free(zeros);
    struct tsr_attn_shape s = attn_shape(sh, NULL, t);
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) {
        op(tsr_backend_sync(gpu), "sync", gpu);
        double t0 = now_s();
        for (int i = 0; i < iters; i++)
            op(tsr_op_attention(gpu, out, q, kc, vc, &s, &st.m), "attention", gpu);
        op(tsr_backend_sync(gpu), "sync", gpu);
        double dt = (now_s() - t0) / iters;
        if (dt < best) best = dt;
    }
    tsr_buf_t *bufs[] = {kc, vc, q, out};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) tsr_buf_free(bufs[i]);
    free_step(&st);
    free(c);
    free(n);
    return best;
}

static void bench(void)
{
    const struct shape l8 = {"llama3-8b", 32, 8, 128, 16};
    printf("\ntimings (informational), Llama-3-8B heads, one layer:\n");
    enum tsr_dtype types[3] = {TSR_F32, TSR_BF16, TSR_F8_E4M3};
    for (int i = 0; i < 3; i++) {
        double d = time_attention(&l8, types[i], 32, 4095, 1, 20);
        double bytes = 32.0 * 4096 * 2 * tsr_kv_row_bytes(types[i], 8, 128);
        double p = time_attention(&l8, types[i], 1, 0, 2048, 5);
        printf("  %-7s cache: decode 32 x 4096 %.3f ms (%.0f GB/s of K/V), prefill 2048 %.3f ms\n",
               tsr_dtype_name(types[i]), d * 1e3, bytes / d / 1e9, p * 1e3);
    }
}

int main(int argc, char **argv)
{
    uint64_t seed = (uint64_t)time(NULL);
    int do_bench = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--bench"))
            do_bench = 1;
        else {
            fprintf(stderr, "usage: test_cuda_kv_dtype [--seed N] [--bench]\n");
            return 2;
        }
    }
    gpu_count_or_exit("test_cuda_kv_dtype");
    rng_seed(seed);
    printf("test_cuda_kv_dtype: seed %llu (--seed reproduces)\n", (unsigned long long)seed);
    cpu = tsr_backend_cpu_new(0);
    gpu = tsr_backend_cuda_new(0);
    if (!cpu || !gpu) die("creating the backends");

    const struct shape shapes[] = {
        {"smollm2", 9, 3, 64, 16},     /* GQA 3 */
        {"llama3-8b", 32, 8, 128, 16}, /* GQA 4 */
        {"mha-128", 8, 8, 128, 16},    /* no grouping */
        {"gqa8-64", 16, 2, 64, 16},    /* GQA 8 */
        {"hd96", 12, 4, 96, 16},       /* decode kernel only (prefill kernel takes 64, 128) */
    };
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        const struct shape *sh = &shapes[i];
        int c1[] = {0, 1, 37, 1000, 3000}, n1[] = {1, 1, 1, 1, 1};
        test_step(sh, "decode x5, ctx to 3000", 5, c1, n1);
        int c2[] = {4000}, n2[] = {1};
        test_step(sh, "decode, ctx 4000 (split-K)", 1, c2, n2);
        int c3[] = {0}, n3[] = {200};
        test_step(sh, "prefill 200", 1, c3, n3);
        int c4[] = {1500, 700, 63}, n4[] = {130, 1, 1};
        test_step(sh, "chunk 130 after 1500 + 2 decode", 3, c4, n4);
    }
    if (do_bench) bench();
    printf("largest NMSE against the GPU's f32 cache: bf16 %.3g, fp8 %.3g\n", worst_rounding[0],
           worst_rounding[1]);
    tsr_backend_free(gpu);
    tsr_backend_free(cpu);
    if (n_fails) {
        printf("test_cuda_kv_dtype: FAILED (%d of %d checks)\n", n_fails, n_checks);
        return 1;
    }
    printf("test_cuda_kv_dtype: ok (%d checks)\n", n_checks);
    return 0;
}
