/* Portable C kernels: always built, the fallback on CPUs without AVX2, and what the SIMD kernels
 * are tested against. Written for clarity; the compiler may vectorize what it can. */
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"

void tsr_cpu_quantize_q8_scalar(const float *x, uint8_t *q, int k)
{
    int nb = k / TSR_QK, nbp = tsr_cpu_q8_blocks(k);
    int8_t *qs = (int8_t *)q;
    float *d = (float *)(q + (size_t)nbp * TSR_QK), *sd = d + nbp;
    for (int b = 0; b < nbp; b++) {
        const float *xb = b < nb ? x + (size_t)b * TSR_QK : x;
        float amax = 0.0f;
        if (b < nb)
            for (int j = 0; j < TSR_QK; j++) amax = fmaxf(amax, fabsf(xb[j]));
        float db = amax / 127.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
        int sum = 0;
        for (int j = 0; j < TSR_QK; j++) {
            int v = b < nb ? (int)nearbyintf(xb[j] * id) : 0;
            sum += v;
            qs[tsr_cpu_q8_pos(b, j)] = (int8_t)v;
        }
        d[b] = db;
        sd[b] = db * (float)sum;
    }
}

static void quantize_q8(const float *x, uint8_t *q, int k)
{
    tsr_cpu_quantize_q8_scalar(x, q, k);
}

/* One weight row against one q8 row: per block d_w*d_a*Σ(w·a) (+ m_w * sd for Q4_1, -8*d_w*sd
 * for Q4_0, whose nibbles are stored biased by 8). */
static float dot_q8(enum tsr_dtype wt, int nb, const uint8_t *w, const uint8_t *a, int nbp)
{
    const int8_t *qs = (const int8_t *)a;
    const float *d = (const float *)(a + (size_t)nbp * TSR_QK), *sd = d + nbp;
    float acc = 0.0f;
    for (int b = 0; b < nb; b++) {
        int isum = 0;
        if (wt == TSR_Q8_0) {
            const struct tsr_block_q8_0 *x = (const struct tsr_block_q8_0 *)w + b;
            for (int j = 0; j < TSR_QK; j++) isum += x->qs[j] * qs[tsr_cpu_q8_pos(b, j)];
            acc += tsr_f16_to_f32(x->d) * d[b] * (float)isum;
        } else {
            const uint8_t *nib;
            float dw, mw;
            if (wt == TSR_Q4_0) {
                const struct tsr_block_q4_0 *x = (const struct tsr_block_q4_0 *)w + b;
                nib = x->qs;
                dw = tsr_f16_to_f32(x->d);
                mw = -8.0f * dw;
            } else {
                const struct tsr_block_q4_1 *x = (const struct tsr_block_q4_1 *)w + b;
                nib = x->qs;
                dw = tsr_f16_to_f32(x->d);
                mw = tsr_f16_to_f32(x->m);
            }
            for (int j = 0; j < TSR_QK / 2; j++) {
                isum += (nib[j] & 0x0f) * qs[tsr_cpu_q8_pos(b, j)];
                isum += (nib[j] >> 4) * qs[tsr_cpu_q8_pos(b, j + 16)];
            }
            acc += dw * d[b] * (float)isum + mw * sd[b];
        }
    }
    return acc;
}

static void gemm_q8(enum tsr_dtype wt, int k, const uint8_t *w, size_t ws, int nr, const uint8_t *a,
                    size_t as, int nc, float *y, size_t ldy)
{
    int nb = k / TSR_QK, nbp = tsr_cpu_q8_blocks(k);
    for (int j = 0; j < nc; j++)
        for (int r = 0; r < nr; r++)
            y[(size_t)j * ldy + r] = dot_q8(wt, nb, w + (size_t)r * ws, a + (size_t)j * as, nbp);
}

static float weight_f(enum tsr_dtype wt, const uint8_t *w, int i)
{
    uint16_t h;
    switch (wt) {
    case TSR_F16:
        memcpy(&h, w + 2 * (size_t)i, 2);
        return tsr_f16_to_f32(h);
    case TSR_BF16:
        memcpy(&h, w + 2 * (size_t)i, 2);
        return tsr_bf16_to_f32(h);
    default: {
        float f;
        memcpy(&f, w + 4 * (size_t)i, 4);
        return f;
    }
    }
}

static void gemm_f(enum tsr_dtype wt, int k, const uint8_t *w, size_t ws, int nr, const float *x,
                   size_t ldx, int nc, float *y, size_t ldy)
{
    for (int j = 0; j < nc; j++)
        for (int r = 0; r < nr; r++) {
            const uint8_t *wr = w + (size_t)r * ws;
            const float *xj = x + (size_t)j * ldx;
            float acc = 0.0f;
            for (int i = 0; i < k; i++) acc += weight_f(wt, wr, i) * xj[i];
            y[(size_t)j * ldy + r] = acc;
        }
}

static void to_f32(enum tsr_dtype wt, const uint8_t *src, float *dst, int n)
{
    tsr_dequantize_row(wt, src, dst, n);
}

static void attn_scores(const float *q, const float *k, size_t ks, int n, int hd, float scale,
                        float *sc)
{
    for (int i = 0; i < n; i++) {
        const float *ki = k + (size_t)i * ks;
        float acc = 0.0f;
        for (int d = 0; d < hd; d++) acc += q[d] * ki[d];
        sc[i] = acc * scale;
    }
}

static void attn_accum(const float *p, const float *v, size_t vs, int n, int hd, float *acc)
{
    for (int i = 0; i < n; i++)
        for (int d = 0; d < hd; d++) acc[d] += p[i] * v[(size_t)i * vs + d];
}

static void scale(float a, float *y, int n)
{
    for (int i = 0; i < n; i++) y[i] *= a;
}

static float exp_sum(float *x, float m, int n)
{
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - m);
        sum += x[i];
    }
    return sum;
}

static void silu_mul(float *out, const float *g, const float *u, int n)
{
    for (int i = 0; i < n; i++) out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

const struct tsr_cpu_kernels tsr_cpu_kernels_scalar = {
    .isa = TSR_CPU_SCALAR,
    .init = NULL,
    .quantize_q8 = quantize_q8,
    .gemm_q8 = gemm_q8,
    .gemm_f = gemm_f,
    .to_f32 = to_f32,
    .attn_scores = attn_scores,
    .attn_accum = attn_accum,
    .scale = scale,
    .exp_sum = exp_sum,
    .silu_mul = silu_mul,
};
