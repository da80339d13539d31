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

/* ---- f32 activations (the exact path): one accumulator per output element, k in order ---- */

/* The f32 values of weights [i0, i0 + n) of a row at w; for quantized types i0 and n are whole
 * blocks (super-blocks of 256 for the k-quants; common/dtype.c decodes them and Q5_0/Q5_1). Q4_1's
 * d·q is exact in f32 (11 by 4 bits), so d·q + m rounds once, as the SIMD kernels' fused
 * multiply-add does. */
static void dequant_part(enum tsr_dtype wt, const uint8_t *w, int i0, float *dst, int n)
{
    uint16_t h;
    if (tsr_cpu_decoded(wt)) {
        tsr_dequantize_row(
            wt, w + (size_t)(i0 / tsr_dtype_block_elems(wt)) * tsr_dtype_block_bytes(wt), dst, n);
        return;
    }
    switch (wt) {
    case TSR_F16:
    case TSR_BF16:
        for (int i = 0; i < n; i++) {
            memcpy(&h, w + 2 * ((size_t)i0 + i), 2);
            dst[i] = wt == TSR_F16 ? tsr_f16_to_f32(h) : tsr_bf16_to_f32(h);
        }
        return;
    case TSR_F32:
        memcpy(dst, w + 4 * (size_t)i0, sizeof(float) * (size_t)n);
        return;
    default:
        break;
    }
    for (int b = 0; b < n / TSR_QK; b++) {
        float *o = dst + (size_t)b * TSR_QK;
        size_t blk = (size_t)(i0 / TSR_QK + b);
        if (wt == TSR_Q8_0) {
            const struct tsr_block_q8_0 *x = (const struct tsr_block_q8_0 *)w + blk;
            float d = tsr_f16_to_f32(x->d);
            for (int j = 0; j < TSR_QK; j++) o[j] = d * (float)x->qs[j];
        } else if (wt == TSR_Q4_0) {
            const struct tsr_block_q4_0 *x = (const struct tsr_block_q4_0 *)w + blk;
            float d = tsr_f16_to_f32(x->d);
            for (int j = 0; j < TSR_QK / 2; j++) {
                o[j] = d * (float)((x->qs[j] & 15) - 8);
                o[j + 16] = d * (float)((x->qs[j] >> 4) - 8);
            }
        } else {
            const struct tsr_block_q4_1 *x = (const struct tsr_block_q4_1 *)w + blk;
            float d = tsr_f16_to_f32(x->d), m = tsr_f16_to_f32(x->m);
            for (int j = 0; j < TSR_QK / 2; j++) {
                o[j] = (float)(x->qs[j] & 15) * d + m; /* the product is exact */
                o[j + 16] = (float)(x->qs[j] >> 4) * d + m;
            }
        }
    }
}

static void dequant(enum tsr_dtype wt, const uint8_t *src, float *dst, int n)
{
    dequant_part(wt, src, 0, dst, n);
}

enum { CHUNK = TSR_QK_K }; /* weights dequantized at a time (a multiple of every block size) */

static void gemv(enum tsr_dtype wt, int k, const uint8_t *w, size_t ws, int nr, const float *x,
                 size_t ldx, int nc, float *y, size_t ldy)
{
    float wf[CHUNK];
    for (int j = 0; j < nc; j++)
        for (int r = 0; r < nr; r++) {
            const float *xj = x + (size_t)j * ldx;
            float acc = 0.0f;
            for (int i0 = 0; i0 < k; i0 += CHUNK) {
                int len = k - i0 < CHUNK ? k - i0 : CHUNK;
                dequant_part(wt, w + (size_t)r * ws, i0, wf, len);
                for (int i = 0; i < len; i++) acc += wf[i] * xj[i0 + i];
            }
            y[(size_t)j * ldy + r] = acc;
        }
}

static void gemm_f32(int k, const float *w, size_t ldw, int nr, const float *x, size_t ldx, int nc,
                     float *y, size_t ldy)
{
    for (int j = 0; j < nc; j++)
        for (int r = 0; r < nr; r++) {
            const float *wr = w + (size_t)r * ldw, *xj = x + (size_t)j * ldx;
            float acc = 0.0f;
            for (int i = 0; i < k; i++) acc += wr[i] * xj[i];
            y[(size_t)j * ldy + r] = acc;
        }
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
    .gemv = gemv,
    .gemm_f32 = gemm_f32,
    .dequant = dequant,
    .attn_scores = attn_scores,
    .attn_accum = attn_accum,
    .scale = scale,
    .exp_sum = exp_sum,
    .silu_mul = silu_mul,
};
