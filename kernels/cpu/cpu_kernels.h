/* The CPU backend's inner kernels, one table per instruction set (scalar, AVX2, AVX-512), chosen
 * once when the backend is made. Only kernels/cpu/ includes this.
 *
 * Two ways to multiply by a weight matrix:
 *
 * Exact (the default): f32 activations against the weights' f32 values. Every weight type is
 * read as the values tsr_cpu_kernels.dequant gives: F32, F16, BF16 and Q8_0 (d·q), Q4_0
 * (d·(q − 8)) exactly, Q4_1 as fl(d·q + m), one rounding, Q5_0, Q5_1 and the k-quants as
 * common/dtype.h says (every ISA decodes them with tsr_dequantize_row, up to 256 weights at a
 * time, into a stack buffer the accumulators then read: tsr_cpu_decoded); every ISA gives the
 * same bits. An
 * output element W[r]·x_j is then one fixed sequence of f32 operations per ISA: an accumulator
 * of L lanes (scalar 1, AVX2 8, AVX-512 16) adds w[c..c+L)·x[c..c+L) lane by lane (a fused
 * multiply-add in SIMD, multiply then add in scalar) for c = 0, L, 2L, ... in order (a last
 * partial chunk zero-padded), then one fixed horizontal sum. gemv, which
 * dequantizes blocks in registers, and gemm_f32, which reads dequantized rows, both compute
 * exactly that, so a result is bitwise the same whatever the batch, tile or thread count.
 *
 * Approximate (TESSERA_CPU_ACT=q8): quantized weights meet activations quantized to 8 bits
 * ("q8 rows", llama.cpp's Q8_0/Q8_1 idea): one row of k = nb*32 floats becomes nbp = nb rounded
 * up to 8 blocks of 32 int8 values, laid out
 *
 *   int8  qs[nbp*32]   x ≈ d[b] * q, grouped by 4 blocks as [values 0..15 of blocks 0-3]
 *                      [values 16..31 of blocks 0-3]: the order a Q4 block's low and high
 *                      nibbles unpack to, so one 64-byte vector meets 4 blocks
 *   float d[nbp]       block scale, amax/127
 *   float sd[nbp]      d * (sum of the block's q): the term Q4_1's offset m needs, and Q4_0's
 *                      bias of 8 (and Q8_0's of 128 where a kernel makes its weights unsigned)
 *
 * with padding blocks all zero, so kernels may run whole 8-block groups. The row takes
 * tsr_cpu_q8_row_bytes(k) bytes (a multiple of 64). The layout is the same for every weight
 * type, and every ISA quantizes to the same bytes: round to nearest even, same scale arithmetic.
 * Integer products make decode about 1.3x faster (int8 dot products need fewer instructions per
 * block than dequantizing to f32), but rounding the activations moves a model's logits by up
 * to a few units. */
#ifndef TSR_KERNELS_CPU_KERNELS_H
#define TSR_KERNELS_CPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "kernels/cpu/cpu_backend.h"

/* 1 for the weight types the kernels decode with common/dtype.c (no SIMD decoder of their own, no
 * q8 kernel): Q5_0, Q5_1, the k-quants and F8_E4M3. */
static inline int tsr_cpu_decoded(int t)
{
    return tsr_dtype_is_q5(t) || tsr_dtype_is_kquant(t) || t == TSR_F8_E4M3;
}

/* Blocks of a q8 row of k (a multiple of 32) values, padding included. */
static inline int tsr_cpu_q8_blocks(int64_t k)
{
    return (int)(((k / TSR_QK) + 7) / 8 * 8);
}

static inline size_t tsr_cpu_q8_row_bytes(int64_t k)
{
    return (size_t)tsr_cpu_q8_blocks(k) * (TSR_QK + 2 * sizeof(float));
}

/* Byte offset in qs of value j (< 32) of block b. */
static inline size_t tsr_cpu_q8_pos(int b, int j)
{
    return (size_t)(b / 4) * 128 + (size_t)(j / 16) * 64 + (size_t)(b % 4) * 16 + (size_t)(j % 16);
}

struct tsr_cpu_kernels {
    enum tsr_cpu_isa isa;
    void (*init)(void); /* builds constant tables; NULL if none; run once before any use */
    /* Quantizes x[k] into the q8 row q (layout above). */
    void (*quantize_q8)(const float *x, uint8_t *q, int k);
    /* y[j*ldy + r] = W[r]·x_j for r < nr, j < nc. W has rows of k values of quantized type wt at
     * w + r*ws; x_j is the q8 row at a + j*as. The result for one (r, j) never depends on nr,
     * nc or where the tile starts: threads may split the work any way. */
    void (*gemm_q8)(enum tsr_dtype wt, int k, const uint8_t *w, size_t ws, int nr, const uint8_t *a,
                    size_t as, int nc, float *y, size_t ldy);
    /* Exact path (see the top). y[j*ldy + r] = W[r]·x_j for r < nr, j < nc: W of any type with
     * rows at w + r*ws, k values each (whole blocks for quantized types), x_j at x + j*ldx,
     * blocks dequantized in registers. For few activation rows (decode). */
    void (*gemv)(enum tsr_dtype wt, int k, const uint8_t *w, size_t ws, int nr, const float *x,
                 size_t ldx, int nc, float *y, size_t ldy);
    /* The same with f32 weight rows at w + r*ldw (floats; from dequant, or F32 weights), for
     * batches: bitwise the results gemv gives for the weights they were dequantized from. */
    void (*gemm_f32)(int k, const float *w, size_t ldw, int nr, const float *x, size_t ldx, int nc,
                     float *y, size_t ldy);
    /* dst[i] = the f32 value of weight i of the row at src (n of them, whole blocks). */
    void (*dequant)(enum tsr_dtype wt, const uint8_t *src, float *dst, int n);
    /* Attention over n cache rows: sc[i] = scale * q·k_i (k_i = k + i*ks, hd floats each)... */
    void (*attn_scores)(const float *q, const float *k, size_t ks, int n, int hd, float scale,
                        float *sc);
    /* ...and acc[hd] += Σ p[i] v_i (v_i = v + i*vs). */
    void (*attn_accum)(const float *p, const float *v, size_t vs, int n, int hd, float *acc);
    void (*scale)(float a, float *y, int n); /* y *= a */
    /* x[i] = exp(x[i] - m) for i < n; returns their sum (f32, the kernel's order). */
    float (*exp_sum)(float *x, float m, int n);
    void (*silu_mul)(float *out, const float *g, const float *u, int n);
};

extern const struct tsr_cpu_kernels tsr_cpu_kernels_scalar;
extern const struct tsr_cpu_kernels tsr_cpu_kernels_avx2;
extern const struct tsr_cpu_kernels tsr_cpu_kernels_avx512;

/* The scalar quantizer (the others must match it byte for byte). */
void tsr_cpu_quantize_q8_scalar(const float *x, uint8_t *q, int k);

#endif
