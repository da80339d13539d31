/* The KV cache in bf16 and in FP8 on the CPU backend (kernels/backend.h: tsr_attn_shape.kv_type),
 * against references, on every instruction set this CPU has:
 * - rope_kv_write stores bf16(rotated k) and bf16(v) at the step's slots (v bit for bit as
 *   tsr_f32_to_bf16 rounds it; k within one bf16 rounding of the float64 rotation) and leaves
 *   every other slot as it was;
 * - attention over the bf16 cache equals, bit for bit, attention over an f32 cache holding the
 *   same values widened (the contract: the f32 path on the rounded K and V), and matches a
 *   float64 reference computed from the bf16 values (NMSE <= 1e-10, as test_cpu_ops holds f32);
 * - against the f32 cache of the unrounded values it is within NMSE 1e-4 (what rounding K and V
 *   to 8 significant bits costs: measured ~1e-6 here, printed);
 * - the same bits with 1 and 2 threads; outputs poisoned with NaN before each run;
 * - prefill chunks, decode, several sequences, GQA 1..20, several splits of the context;
 * - argument checks: a type the cache does not take, slot bounds counted in bf16 rows;
 * - FP8 (E4M3 codes, an f32 scale per slot and KV head): rope_kv_write stores each head of the
 *   step's rows with scale amax / 448 (v's codes and scale bit for bit as tsr_quantize_e4m3
 *   makes them; k's scale within f32 rounding of the float64 rotation's amax / 448, each k
 *   element within E4M3's rounding of it: relative 2^-4, or 2^-10 scale below 2^-6 scale),
 *   zeroes the rows' padding and leaves every other slot as it was; attention equals, bit for
 *   bit, the f32 path over the widened values (e4m3 * scale) and matches float64 on them
 *   (NMSE <= 1e-10); against the f32 cache of the unrounded values it is within NMSE 4e-3
 *   (an element's rounding error is at most 2^-4 relative, so its squared error at most 2^-8 =
 *   3.9e-3 of its square; attention's output, a weighted mean of V rows, does no worse on
 *   average: measured 1.5e-3 at most here, printed); 1 and 2 threads the same bits;
 * - argument checks: a type the cache does not take, slot bounds counted in bf16 rows and in
 *   fp8 rows (codes, scales, padding: tsr_kv_row_bytes);
 * - the runner: a bf16 cache takes half the bytes, an fp8 one tsr_kv_row_bytes's, and the
 *   default model's logits over a prompt and a few decode steps stay within NMSE 1e-3 (bf16)
 *   and 1e-2 (fp8; measured 1.2e-3) of the f32 cache's (skipped without the model). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "common/dtype.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/model.h"
#include "worker/forward.h"
#include "unit.h"
#include "backend_check.h"

enum { N_ISA = 3 };
static tsr_backend_t *backends[N_ISA]; /* NULL where the CPU lacks the ISA */
static tsr_backend_t *one_thread;      /* the best ISA, 1 thread */
static double worst_vs_f32[2];         /* the largest NMSE against the f32 cache: bf16, fp8 */

static tsr_backend_t *backend_for(enum tsr_cpu_isa isa, int n_threads)
{
    setenv("TESSERA_CPU_ISA", tsr_cpu_isa_name(isa), 1);
    tsr_backend_t *b = tsr_backend_cpu_new(n_threads);
    unsetenv("TESSERA_CPU_ISA");
    assert_non_null(b);
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
    print_message("test_kv_dtype: seed %llu (TSR_TEST_SEED=%llu reproduces)\n",
                  (unsigned long long)seed, (unsigned long long)seed);
    unsetenv("TESSERA_CPU_ACT");
    for (int i = 0; i < N_ISA; i++) backends[i] = backend_for((enum tsr_cpu_isa)i, 2);
    assert_non_null(backends[TSR_CPU_SCALAR]);
    one_thread = backend_for(tsr_cpu_isa_best(), 1);
    assert_non_null(one_thread);
    return 0;
}

static int teardown(void **state)
{
    for (int i = 0; i < N_ISA; i++) tsr_backend_free(backends[i]);
    tsr_backend_free(one_thread);
    if (worst_vs_f32[0] > 0)
        print_message("test_kv_dtype: largest NMSE against the f32 cache: bf16 %.3g, fp8 %.3g\n",
                      worst_vs_f32[0], worst_vs_f32[1]);
    return 0;
}

static void *get_bytes(tsr_buf_t *buf, size_t n)
{
    void *out = malloc(n);
    assert_non_null(out);
    assert_int_equal(tsr_buf_get(buf, 0, out, n), 0);
    return out;
}

static void expect_nmse(double e, double limit, const char *what, size_t c, const char *isa)
{
    if (!(e <= limit)) fail_msg("case %zu (%s): %s: NMSE %.3g above %.3g", c, isa, what, e, limit);
}

static const struct attn_case cases[] = {
    {9, 3, 64, 16, 0, 3, {0, 37, 100}, {20, 1, 1}},    /* SmolLM2's GQA 3: prefill + decode */
    {8, 8, 128, 16, 1, 2, {15, 0}, {2, 33}},           /* MHA, neox, chunks crossing blocks */
    {8, 2, 64, 7, 1, 4, {0, 5, 70, 3}, {1, 9, 1, 16}}, /* GQA 4, odd block size */
    {4, 1, 128, 32, 0, 1, {700}, {1}},                 /* long decode: many splits */
    {6, 2, 40, 5, 1, 2, {11, 0}, {3, 6}},              /* head dim not a multiple of 16 */
    {4, 2, 64, 16, 1, 2, {600, 250}, {1, 40}},         /* split boundaries, a chunk after */
    {20, 1, 32, 16, 0, 1, {40}, {3}},                  /* a KV group of 20 heads (> 16) */
    {16, 8, 256, 16, 1, 2, {130, 0}, {1, 12}},         /* head dim 256 */
};

struct setup {
    struct attn_setup s; /* kc, vc: the f32 cache, random rows everywhere */
    size_t kw, qw;
    uint16_t *kb, *vb; /* the bf16 cache: those rounded */
    size_t row8;       /* bytes of an fp8 row */
    uint8_t *k8, *v8;  /* the fp8 cache: those quantized, rows of row8 bytes */
    uint8_t *written;  /* slots this step writes */
};

/* Slot rows of x (n_slots rows of n_kv_head heads of head_dim) as fp8 rows of row8 bytes. */
static uint8_t *quantize_rows(const float *x, int n_slots, int n_kv_head, int hd, size_t row8)
{
    size_t kw = (size_t)n_kv_head * hd;
    uint8_t *q = malloc((size_t)n_slots * row8);
    assert_non_null(q);
    for (int s = 0; s < n_slots; s++) tsr_kv_fp8_store(x + s * kw, n_kv_head, hd, q + s * row8);
    return q;
}

/* An fp8 cache of n_slots rows widened to f32 (e4m3 * its head's scale, as the kernels do). */
static float *widen8(const uint8_t *q, int n_slots, int n_kv_head, int hd, size_t row8)
{
    size_t kw = (size_t)n_kv_head * hd;
    float *f = malloc(sizeof(float) * n_slots * kw);
    assert_non_null(f);
    for (int s = 0; s < n_slots; s++) tsr_kv_fp8_load(q + s * row8, n_kv_head, hd, f + s * kw);
    return f;
}

static void build(const struct attn_case *kc, struct setup *a)
{
    attn_build(kc, &a->s);
    a->kw = (size_t)kc->n_kv_head * kc->head_dim;
    a->qw = (size_t)kc->n_head * kc->head_dim;
    size_t cache = (size_t)a->s.n_slots * a->kw;
    a->kb = malloc(sizeof(uint16_t) * cache);
    a->vb = malloc(sizeof(uint16_t) * cache);
    for (size_t i = 0; i < cache; i++) {
        a->kb[i] = tsr_f32_to_bf16(a->s.kc[i]);
        a->vb[i] = tsr_f32_to_bf16(a->s.vc[i]);
    }
    a->row8 = tsr_kv_row_bytes(TSR_F8_E4M3, kc->n_kv_head, kc->head_dim);
    a->k8 = quantize_rows(a->s.kc, a->s.n_slots, kc->n_kv_head, kc->head_dim, a->row8);
    a->v8 = quantize_rows(a->s.vc, a->s.n_slots, kc->n_kv_head, kc->head_dim, a->row8);
    a->written = calloc((size_t)a->s.n_slots, 1);
    for (int t = 0; t < a->s.nt; t++) a->written[a->s.slot[t]] = 1;
}

static void setup_free(struct setup *a)
{
    attn_free(&a->s);
    free(a->kb);
    free(a->vb);
    free(a->k8);
    free(a->v8);
    free(a->written);
}

static struct tsr_attn_shape shape_of(const struct attn_case *kc, tsr_buf_t *freq, enum tsr_dtype t)
{
    return (struct tsr_attn_shape){.n_head = kc->n_head,
                                   .n_kv_head = kc->n_kv_head,
                                   .head_dim = kc->head_dim,
                                   .block_size = kc->block_size,
                                   .neox = kc->neox,
                                   .scale = (float)(1.0 / sqrt(kc->head_dim)),
                                   .inv_freq = freq,
                                   .kv_type = t};
}

static struct tsr_batch_meta meta_of(const struct attn_case *kc, const struct setup *a)
{
    return (struct tsr_batch_meta){.n_tokens = a->s.nt,
                                   .n_seqs = kc->n_seqs,
                                   .max_blocks = a->s.max_blocks,
                                   .pos = a->s.pos,
                                   .seq = a->s.seq,
                                   .slot = a->s.slot,
                                   .block_tables = a->s.bt};
}

/* One run: rope_kv_write then attention with a cache of type t (initial contents from a).
 * Returns the output; *q_out the rotated q, *kc_out and *vc_out the caches' bytes after. */
static float *run(tsr_backend_t *b, const struct attn_case *kc, const struct setup *a,
                  enum tsr_dtype t, float **q_out, void **kc_out, void **vc_out)
{
    size_t cache = (size_t)a->s.n_slots * tsr_kv_row_bytes(t, kc->n_kv_head, kc->head_dim);
    const void *k0 = t == TSR_BF16 ? (void *)a->kb : t == TSR_F8_E4M3 ? (void *)a->k8 : a->s.kc;
    const void *v0 = t == TSR_BF16 ? (void *)a->vb : t == TSR_F8_E4M3 ? (void *)a->v8 : a->s.vc;
    tsr_buf_t *qb = buf_from(b, a->s.q, sizeof(float) * a->s.nt * a->qw);
    tsr_buf_t *kb = buf_from(b, a->s.k, sizeof(float) * a->s.nt * a->kw);
    tsr_buf_t *vb = buf_from(b, a->s.v, sizeof(float) * a->s.nt * a->kw);
    tsr_buf_t *kcb = buf_from(b, k0, cache), *vcb = buf_from(b, v0, cache);
    tsr_buf_t *fb = buf_from(b, a->s.freq, sizeof(float) * kc->head_dim / 2);
    tsr_buf_t *ob = buf_nan(b, a->s.nt * a->qw);
    struct tsr_attn_shape s = shape_of(kc, fb, t);
    struct tsr_batch_meta m = meta_of(kc, a);
    assert_int_equal(tsr_op_rope_kv_write(b, qb, kb, vb, kcb, vcb, &s, &m), 0);
    assert_int_equal(tsr_op_attention(b, ob, qb, kcb, vcb, &s, &m), 0);
    float *out = get_bytes(ob, sizeof(float) * a->s.nt * a->qw);
    if (q_out) *q_out = get_bytes(qb, sizeof(float) * a->s.nt * a->qw);
    if (kc_out) *kc_out = get_bytes(kcb, cache);
    if (vc_out) *vc_out = get_bytes(vcb, cache);
    tsr_buf_t *bufs[] = {qb, kb, vb, kcb, vcb, fb, ob};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) tsr_buf_free(bufs[i]);
    return out;
}

/* Attention alone over an f32 cache kc/vc (the contents given), q already rotated. */
static float *attend_f32(tsr_backend_t *b, const struct attn_case *kc, const struct setup *a,
                         const float *q, const float *kcf, const float *vcf)
{
    size_t cache = (size_t)a->s.n_slots * a->kw * sizeof(float);
    tsr_buf_t *qb = buf_from(b, q, sizeof(float) * a->s.nt * a->qw);
    tsr_buf_t *kcb = buf_from(b, kcf, cache), *vcb = buf_from(b, vcf, cache);
    tsr_buf_t *fb = buf_from(b, a->s.freq, sizeof(float) * kc->head_dim / 2);
    tsr_buf_t *ob = buf_nan(b, a->s.nt * a->qw);
    struct tsr_attn_shape s = shape_of(kc, fb, TSR_F32);
    struct tsr_batch_meta m = meta_of(kc, a);
    assert_int_equal(tsr_op_attention(b, ob, qb, kcb, vcb, &s, &m), 0);
    float *out = get_bytes(ob, sizeof(float) * a->s.nt * a->qw);
    tsr_buf_t *bufs[] = {qb, kcb, vcb, fb, ob};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) tsr_buf_free(bufs[i]);
    return out;
}

/* Causal attention in float64 over f32 caches kcf/vcf with rotated q. */
static double *attend_ref(const struct attn_case *kc, const struct setup *a, const float *q,
                          const float *kcf, const float *vcf)
{
    int hd = kc->head_dim, group = kc->n_head / kc->n_kv_head, bs = kc->block_size;
    double *ref = malloc(sizeof(double) * a->s.nt * a->qw);
    int max_np = 0;
    for (int t = 0; t < a->s.nt; t++)
        if (a->s.pos[t] + 1 > max_np) max_np = a->s.pos[t] + 1;
    double *sc = malloc(sizeof(double) * (size_t)max_np);
    for (int t = 0; t < a->s.nt; t++)
        for (int h = 0; h < kc->n_head; h++) {
            const float *qv = q + t * a->qw + (size_t)h * hd;
            int kvh = h / group, np = a->s.pos[t] + 1;
            double mx = -INFINITY, sum = 0;
            for (int p = 0; p < np; p++) {
                size_t slot = (size_t)a->s.bt[a->s.seq[t] * a->s.max_blocks + p / bs] * bs + p % bs;
                const float *kr = kcf + slot * a->kw + (size_t)kvh * hd;
                double d = 0;
                for (int i = 0; i < hd; i++) d += (double)qv[i] * kr[i];
                sc[p] = d / sqrt(hd);
                if (sc[p] > mx) mx = sc[p];
            }
            double *o = ref + t * a->qw + (size_t)h * hd;
            for (int i = 0; i < hd; i++) o[i] = 0;
            for (int p = 0; p < np; p++) {
                size_t slot = (size_t)a->s.bt[a->s.seq[t] * a->s.max_blocks + p / bs] * bs + p % bs;
                const float *vr = vcf + slot * a->kw + (size_t)kvh * hd;
                double e = exp(sc[p] - mx);
                sum += e;
                for (int i = 0; i < hd; i++) o[i] += e * vr[i];
            }
            for (int i = 0; i < hd; i++) o[i] /= sum;
        }
    free(sc);
    return ref;
}

static void rotate_ref(double *x, int hd, int pos, const float *freq, int neox)
{
    for (int i = 0; i < hd / 2; i++) {
        double ang = (double)pos * freq[i], c = cos(ang), s = sin(ang);
        int i0 = neox ? i : 2 * i, i1 = neox ? i + hd / 2 : 2 * i + 1;
        double x0 = x[i0], x1 = x[i1];
        x[i0] = x0 * c - x1 * s;
        x[i1] = x0 * s + x1 * c;
    }
}

/* The bf16 cache after rope_kv_write: the step's slots hold bf16(rotated k) (within one bf16
 * rounding of the float64 rotation, plus f32's) and exactly tsr_f32_to_bf16(v); every other slot
 * is unchanged. */
static void check_written(const struct attn_case *kc, const struct setup *a, const uint16_t *gk,
                          const uint16_t *gv, size_t c, const char *isa)
{
    int hd = kc->head_dim;
    double *rk = malloc(sizeof(double) * a->kw);
    for (int s = 0; s < a->s.n_slots; s++) {
        if (a->written[s]) continue;
        size_t o = (size_t)s * a->kw;
        if (memcmp(gk + o, a->kb + o, a->kw * 2) || memcmp(gv + o, a->vb + o, a->kw * 2))
            fail_msg("case %zu (%s): slot %d changed, not one the step writes", c, isa, s);
    }
    for (int t = 0; t < a->s.nt; t++) {
        size_t o = (size_t)a->s.slot[t] * a->kw;
        for (size_t i = 0; i < a->kw; i++) rk[i] = a->s.k[t * a->kw + i];
        for (int h = 0; h < kc->n_kv_head; h++)
            rotate_ref(rk + (size_t)h * hd, hd, a->s.pos[t], a->s.freq, kc->neox);
        for (size_t i = 0; i < a->kw; i++) {
            double got = tsr_bf16_to_f32(gk[o + i]);
            if (!(fabs(got - rk[i]) <= fabs(rk[i]) * 0x1p-8 + 1e-6))
                fail_msg("case %zu (%s): token %d k[%zu] = %.9g in the cache, %.9g rotated", c, isa,
                         t, i, got, rk[i]);
            if (gv[o + i] != tsr_f32_to_bf16(a->s.v[t * a->kw + i]))
                fail_msg("case %zu (%s): token %d v[%zu] = 0x%04x in the cache, want 0x%04x", c,
                         isa, t, i, gv[o + i], tsr_f32_to_bf16(a->s.v[t * a->kw + i]));
        }
    }
    free(rk);
}

static float *widen(const uint16_t *x, size_t n)
{
    float *f = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) f[i] = tsr_bf16_to_f32(x[i]);
    return f;
}

/* The fp8 cache after rope_kv_write (gk, gv: its bytes): every slot but the step's as it was;
 * the step's rows hold, per KV head, v's codes and scale as tsr_quantize_e4m3 makes them, k's
 * scale the rotated head's amax / 448 and its elements within E4M3's rounding of the rotation
 * (float64), and zero padding. */
static void check_written8(const struct attn_case *kc, const struct setup *a, const uint8_t *gk,
                           const uint8_t *gv, size_t c, const char *isa)
{
    int hd = kc->head_dim;
    size_t r8 = a->row8, kw = a->kw;
    double *rk = malloc(sizeof(double) * kw);
    uint8_t *want = malloc(r8);
    for (int s = 0; s < a->s.n_slots; s++) {
        if (a->written[s]) continue;
        size_t o = (size_t)s * r8;
        if (memcmp(gk + o, a->k8 + o, r8) || memcmp(gv + o, a->v8 + o, r8))
            fail_msg("case %zu (%s): fp8 slot %d changed, not one the step writes", c, isa, s);
    }
    for (int t = 0; t < a->s.nt; t++) {
        const uint8_t *k = gk + (size_t)a->s.slot[t] * r8, *v = gv + (size_t)a->s.slot[t] * r8;
        for (size_t i = kw + 4 * (size_t)kc->n_kv_head; i < r8; i++)
            if (k[i] || v[i]) fail_msg("case %zu (%s): token %d: padding byte %zu", c, isa, t, i);
        for (size_t i = 0; i < kw; i++) rk[i] = a->s.k[t * kw + i];
        for (int h = 0; h < kc->n_kv_head; h++) {
            double *x = rk + (size_t)h * hd, amax = 0;
            rotate_ref(x, hd, a->s.pos[t], a->s.freq, kc->neox);
            for (int i = 0; i < hd; i++) amax = fmax(amax, fabs(x[i]));
            float dk, dv, wd;
            memcpy(&dk, k + kw + 4 * (size_t)h, 4);
            memcpy(&dv, v + kw + 4 * (size_t)h, 4);
            if (!(fabs(dk - amax / 448) <= amax / 448 * 1e-5))
                fail_msg("case %zu (%s): token %d head %d: k scale %.9g, amax / 448 = %.9g", c, isa,
                         t, h, dk, amax / 448);
            for (int i = 0; i < hd; i++) {
                double got = dk * (double)tsr_e4m3_to_f32(k[(size_t)h * hd + i]);
                double tol = fabs(x[i]) * 0x1p-4 + dk * 0x1p-10 + amax * 1e-6;
                if (!(fabs(got - x[i]) <= tol))
                    fail_msg("case %zu (%s): token %d k[%d][%d] = %.9g in the cache, %.9g "
                             "rotated",
                             c, isa, t, h, i, got, x[i]);
            }
            wd = tsr_quantize_e4m3(a->s.v + t * kw + (size_t)h * hd, hd, want);
            if (memcmp(&wd, &dv, 4) || memcmp(want, v + (size_t)h * hd, (size_t)hd))
                fail_msg("case %zu (%s): token %d head %d: v's codes or scale (%.9g, want %.9g) "
                         "not tsr_quantize_e4m3's",
                         c, isa, t, h, dv, wd);
        }
    }
    free(rk);
    free(want);
}

/* A rounded cache of type t (TSR_BF16 or TSR_F8_E4M3) on every ISA against f32 and float64
 * references; lim: the NMSE allowed against the f32 cache of the unrounded values. */
static void check_cache(enum tsr_dtype t, double lim)
{
    int f8 = t == TSR_F8_E4M3;
    const char *name = f8 ? "fp8" : "bf16";
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const struct attn_case *kc = &cases[c];
        struct setup a;
        build(kc, &a);
        size_t n_out = a.s.nt * a.qw, cache = (size_t)a.s.n_slots * a.kw;
        int hd = kc->head_dim, nkv = kc->n_kv_head;
        for (int i = 0; i < N_ISA; i++) {
            tsr_backend_t *b = backends[i];
            if (!b) continue;
            const char *isa = tsr_cpu_isa_name((enum tsr_cpu_isa)i);
            float *q, *q32;
            void *gk, *gv;
            float *out = run(b, kc, &a, t, &q, &gk, &gv);
            float *o32 = run(b, kc, &a, TSR_F32, &q32, NULL, NULL);
            /* rope of q does not depend on the cache's type */
            assert_memory_equal(q, q32, sizeof(float) * n_out);
            if (f8)
                check_written8(kc, &a, gk, gv, c, isa);
            else
                check_written(kc, &a, gk, gv, c, isa);
            float *kf = f8 ? widen8(gk, a.s.n_slots, nkv, hd, a.row8) : widen(gk, cache);
            float *vf = f8 ? widen8(gv, a.s.n_slots, nkv, hd, a.row8) : widen(gv, cache);
            /* the f32 path on the widened values: the same bits */
            float *same = attend_f32(b, kc, &a, q, kf, vf);
            if (memcmp(out, same, sizeof(float) * n_out))
                fail_msg("case %zu (%s): %s attention differs from f32 attention over the "
                         "widened cache",
                         c, isa, name);
            double *ref = attend_ref(kc, &a, q, kf, vf);
            expect_nmse(tsr_test_nmse(out, ref, n_out), 1e-10, "against float64", c, isa);
            /* against the f32 cache (unrounded K and V: every context row and this step's) */
            double *r32 = malloc(sizeof(double) * n_out);
            for (size_t j = 0; j < n_out; j++) r32[j] = o32[j];
            double e = tsr_test_nmse(out, r32, n_out);
            if (e > worst_vs_f32[f8]) worst_vs_f32[f8] = e;
            expect_nmse(e, lim, "against the f32 cache", c, isa);
            if (!(e > 0))
                fail_msg("case %zu (%s): %s equals f32 exactly: not rounded?", c, isa, name);
            free(out);
            free(q);
            free(q32);
            free(gk);
            free(gv);
            free(o32);
            free(kf);
            free(vf);
            free(same);
            free(ref);
            free(r32);
        }
        /* 1 thread, the same bits as 2 (fixed splits and chunks) for the best ISA */
        float *o1 = run(one_thread, kc, &a, t, NULL, NULL, NULL);
        float *o2 = run(backends[tsr_cpu_isa_best()], kc, &a, t, NULL, NULL, NULL);
        if (memcmp(o1, o2, sizeof(float) * n_out))
            fail_msg("case %zu: %s attention differs between 1 and 2 threads", c, name);
        free(o1);
        free(o2);
        setup_free(&a);
    }
}

static void test_bf16_cache(void **state)
{
    check_cache(TSR_BF16, 1e-4);
}

static void test_fp8_cache(void **state)
{
    check_cache(TSR_F8_E4M3, 4e-3);
}

/* A type the cache does not take, and slots counted in bf16 rows (a cache of n rows of bf16 has
 * n slots, not n / 2). */
static void test_errors(void **state)
{
    tsr_backend_t *b = backends[TSR_CPU_SCALAR];
    const struct attn_case kc = {2, 1, 64, 16, 0, 1, {0}, {1}};
    struct setup a;
    build(&kc, &a);
    enum { SLOTS = 32 };
    tsr_buf_t *qb = buf_from(b, a.s.q, sizeof(float) * a.qw);
    tsr_buf_t *kb = buf_from(b, a.s.k, sizeof(float) * a.kw);
    tsr_buf_t *vb = buf_from(b, a.s.v, sizeof(float) * a.kw);
    tsr_buf_t *kcb = buf_from(b, NULL, SLOTS * a.kw * 2),
              *vcb = buf_from(b, NULL, SLOTS * a.kw * 2);
    tsr_buf_t *fb = buf_from(b, a.s.freq, sizeof(float) * kc.head_dim / 2);
    tsr_buf_t *ob = buf_nan(b, a.qw);
    struct tsr_attn_shape s = shape_of(&kc, fb, TSR_F16);
    int32_t pos = 0, seq = 0, slot = 16, bt[2] = {1, 0}; /* position 0 in block 1 */
    struct tsr_batch_meta m = {.n_tokens = 1,
                               .n_seqs = 1,
                               .max_blocks = 2,
                               .pos = &pos,
                               .seq = &seq,
                               .slot = &slot,
                               .block_tables = bt};
    EXPECT_ERR(tsr_op_rope_kv_write(b, qb, kb, vb, kcb, vcb, &s, &m), TSR_EINVAL,
               "KV cache type F16");
    EXPECT_ERR(tsr_op_attention(b, ob, qb, kcb, vcb, &s, &m), TSR_EINVAL, "KV cache type F16");
    s.kv_type = TSR_BF16;
    assert_int_equal(tsr_op_rope_kv_write(b, qb, kb, vb, kcb, vcb, &s, &m), 0);
    assert_int_equal(tsr_op_attention(b, ob, qb, kcb, vcb, &s, &m), 0);
    /* one position: the output is v itself, rounded to bf16 */
    float *out = get_bytes(ob, sizeof(float) * a.qw);
    for (int h = 0; h < kc.n_head; h++)
        for (int i = 0; i < kc.head_dim; i++)
            assert_true(out[h * kc.head_dim + i] == tsr_bf16_to_f32(tsr_f32_to_bf16(a.s.v[i])));
    free(out);
    pos = 15;
    slot = SLOTS - 1; /* the last bf16 row */
    assert_int_equal(tsr_op_rope_kv_write(b, qb, kb, vb, kcb, vcb, &s, &m), 0);
    slot = SLOTS;
    EXPECT_ERR(tsr_op_rope_kv_write(b, qb, kb, vb, kcb, vcb, &s, &m), TSR_ERANGE,
               "outside the 32-slot cache");
    s.kv_type = TSR_F32; /* the same bytes hold 16 f32 slots */
    slot = SLOTS / 2;
    EXPECT_ERR(tsr_op_rope_kv_write(b, qb, kb, vb, kcb, vcb, &s, &m), TSR_ERANGE,
               "outside the 16-slot cache");
    /* fp8 rows of one head of 64: 64 codes, a 4-byte scale, padded to 80 bytes: 4096 / 80 = 51
     * slots in the same bytes */
    s.kv_type = TSR_F8_E4M3;
    assert_int_equal(tsr_kv_row_bytes(TSR_F8_E4M3, 1, 64), 80);
    slot = 51;
    EXPECT_ERR(tsr_op_rope_kv_write(b, qb, kb, vb, kcb, vcb, &s, &m), TSR_ERANGE,
               "outside the 51-slot cache");
    slot = 50;
    pos = 0;
    int32_t bt8[2] = {3, 0}; /* position 0 in block 3: slot 48 */
    m.block_tables = bt8;
    slot = 48;
    assert_int_equal(tsr_op_rope_kv_write(b, qb, kb, vb, kcb, vcb, &s, &m), 0);
    assert_int_equal(tsr_op_attention(b, ob, qb, kcb, vcb, &s, &m), 0);
    /* one position: the output is v itself, quantized and widened */
    uint8_t codes[64];
    float d = tsr_quantize_e4m3(a.s.v, kc.head_dim, codes);
    out = get_bytes(ob, sizeof(float) * a.qw);
    for (int h = 0; h < kc.n_head; h++)
        for (int i = 0; i < kc.head_dim; i++)
            assert_true(out[h * kc.head_dim + i] == d * tsr_e4m3_to_f32(codes[i]));
    free(out);
    tsr_buf_t *bufs[] = {qb, kb, vb, kcb, vcb, fb, ob};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) tsr_buf_free(bufs[i]);
    setup_free(&a);
}

/* The runner with a bf16 cache on the default model: half the bytes, and logits close to the
 * f32 cache's over a prompt step and decode steps. */
static void test_runner(void **state)
{
    const char *path = TSR_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (tsr_test_missing(path, "scripts/fetch_model.sh")) return;
    tsr_model_t *m;
    assert_int_equal(tsr_model_open(path, &m), 0);
    tsr_backend_t *b = backends[tsr_cpu_isa_best()];
    const struct tsr_model_config *c = tsr_model_config(m);
    enum { N = 40, PROMPT = 32, BLOCKS = 4 };
    int32_t ids[N], pos[N], seq[N], bt[BLOCKS] = {2, 0, 3, 1};
    for (int i = 0; i < N; i++) {
        ids[i] = (int32_t)((i * 7919 + 13) % c->n_vocab);
        pos[i] = i;
        seq[i] = 0;
    }
    float *logits[3];
    size_t kv_bytes[3], per_pos[3];
    enum tsr_dtype types[3] = {TSR_F32, TSR_BF16, TSR_F8_E4M3};
    for (int k = 0; k < 3; k++) {
        struct tsr_runner_opts o = {
            .n_blocks = BLOCKS, .block_size = 16, .max_tokens = PROMPT, .kv_type = types[k]};
        tsr_runner_t *r;
        assert_int_equal(tsr_runner_new(m, b, &o, NULL, &r), 0);
        kv_bytes[k] = tsr_runner_kv_bytes(r);
        per_pos[k] = tsr_runner_kv_bytes_per_pos(r);
        logits[k] = malloc(sizeof(float) * (N - PROMPT + 1) * c->n_vocab);
        int32_t last = PROMPT - 1;
        struct tsr_step st = {.n_tokens = PROMPT,
                              .ids = ids,
                              .pos = pos,
                              .seq = seq,
                              .n_seqs = 1,
                              .max_blocks = BLOCKS,
                              .block_tables = bt,
                              .n_out = 1,
                              .out_rows = &last};
        assert_int_equal(tsr_runner_forward(r, &st, logits[k]), 0);
        for (int i = PROMPT; i < N; i++) { /* decode steps, teacher-forced */
            int32_t zero = 0;
            st = (struct tsr_step){.n_tokens = 1,
                                   .ids = ids + i,
                                   .pos = pos + i,
                                   .seq = seq + i,
                                   .n_seqs = 1,
                                   .max_blocks = BLOCKS,
                                   .block_tables = bt,
                                   .n_out = 1,
                                   .out_rows = &zero};
            assert_int_equal(
                tsr_runner_forward(r, &st, logits[k] + (size_t)(i - PROMPT + 1) * c->n_vocab), 0);
        }
        tsr_runner_free(r);
    }
    assert_int_equal(kv_bytes[1] * 2, kv_bytes[0]);
    assert_int_equal(per_pos[1] * 2, per_pos[0]);
    assert_int_equal(per_pos[1], 2 * (size_t)c->n_layer * c->n_kv_head * c->head_dim * 2);
    size_t row8 = tsr_kv_row_bytes(TSR_F8_E4M3, c->n_kv_head, c->head_dim);
    assert_int_equal(per_pos[2], 2 * (size_t)c->n_layer * row8);
    assert_int_equal(kv_bytes[2] / row8, kv_bytes[0] / (4 * (size_t)c->n_kv_head * c->head_dim));
    size_t n = (size_t)(N - PROMPT + 1) * c->n_vocab;
    double *ref = malloc(sizeof(double) * n);
    for (size_t i = 0; i < n; i++) ref[i] = logits[0][i];
    double e = tsr_test_nmse(logits[1], ref, n), e8 = tsr_test_nmse(logits[2], ref, n);
    print_message("test_kv_dtype: default model, logits of %d steps: NMSE against the f32 "
                  "cache: bf16 %.3g, fp8 %.3g\n",
                  N - PROMPT + 1, e, e8);
    if (!(e <= 1e-3)) fail_msg("logits: bf16: NMSE %.3g above 1e-3", e);
    if (!(e > 0)) fail_msg("logits: bf16 and f32 caches gave the same bits: not rounded?");
    if (!(e8 <= 1e-2)) fail_msg("logits: fp8: NMSE %.3g above 1e-2", e8);
    if (!(e8 > e)) fail_msg("logits: fp8 (NMSE %.3g) no further from f32 than bf16 (%.3g)", e8, e);
    free(ref);
    for (int k = 0; k < 3; k++) free(logits[k]);
    tsr_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bf16_cache),
        cmocka_unit_test(test_fp8_cache),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_runner),
    };
    return tsr_test_exit(cmocka_run_group_tests(tests, setup, teardown));
}
