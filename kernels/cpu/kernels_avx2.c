/* AVX2 kernels (with FMA and F16C: Haswell, Zen 1 and later), for CPUs without AVX-512. Built
 * with function-level target attributes; selected at run time.
 *
 * Same structure as the AVX-512 file on 256-bit registers, without VBMI and VNNI: see the
 * quantized section. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"

#define TSR_AVX2        __attribute__((target("avx2,fma,f16c")))
#define TSR_AVX2_INLINE static inline __attribute__((always_inline)) TSR_AVX2

TSR_AVX2_INLINE float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

TSR_AVX2_INLINE int hsum_i32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* ---- activation quantization ---- */

TSR_AVX2 static void quantize_q8(const float *x, uint8_t *q, int k)
{
    int nb = k / TSR_QK, nbp = tsr_cpu_q8_blocks(k);
    int8_t *qs = (int8_t *)q;
    float *d = (float *)(q + (size_t)nbp * TSR_QK), *sd = d + nbp;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int b = 0; b < nb; b++) {
        const float *xb = x + (size_t)b * TSR_QK;
        __m256 v[4], amax = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(xb + 8 * i);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[i]));
        }
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        float db = _mm_cvtss_f32(m) / 127.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
        __m256 vid = _mm256_set1_ps(id);
        __m256i iv[4];
        for (int i = 0; i < 4; i++) iv[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], vid));
        __m256i sum =
            _mm256_add_epi32(_mm256_add_epi32(iv[0], iv[1]), _mm256_add_epi32(iv[2], iv[3]));
        __m256i p =
            _mm256_packs_epi16(_mm256_packs_epi32(iv[0], iv[1]), _mm256_packs_epi32(iv[2], iv[3]));
        p = _mm256_permutevar8x32_epi32(p, perm);
        _mm_storeu_si128((__m128i *)(qs + tsr_cpu_q8_pos(b, 0)), _mm256_castsi256_si128(p));
        _mm_storeu_si128((__m128i *)(qs + tsr_cpu_q8_pos(b, 16)), _mm256_extracti128_si256(p, 1));
        d[b] = db;
        sd[b] = db * (float)hsum_i32(sum);
    }
    for (int b = nb; b < nbp; b++) {
        memset(qs + tsr_cpu_q8_pos(b, 0), 0, 16);
        memset(qs + tsr_cpu_q8_pos(b, 16), 0, 16);
        d[b] = sd[b] = 0.0f;
    }
}

/* 8 f16 values from the low 16 bits of each 32-bit lane of lo (and, in the high half of the
 * result, of hi), as two packed 128-bit halves. */
TSR_AVX2_INLINE __m256i pack_lo16(__m256i lo, __m256i hi)
{
    const __m256i m16 = _mm256_set1_epi32(0xffff);
    return _mm256_permute4x64_epi64(
        _mm256_packus_epi32(_mm256_and_si256(lo, m16), _mm256_and_si256(hi, m16)), 0xd8);
}

/* ---- quantized weights: one row against NC (1..2) q8 rows ----
 *
 * Full groups of 8 blocks: one gather fetches the 8 f16 scales (and Q4_1 offsets); blocks go two
 * at a time, their int32 sums in lanes 0-3 and 4-7. Q4: unsigned nibble x signed activation
 * (vpmaddubsw cannot saturate: 2*15*127 < 32767); Q8_0: |w| x (a with w's sign), each half of
 * a block summed to int32 before adding (two pairs of 128*127 could). The last blocks of a row
 * that do not fill a group go one by one, with scalar scales. */

enum { T_Q4_0, T_Q4_1, T_Q8_0 };

TSR_AVX2_INLINE int block_bytes(const int t)
{
    return t == T_Q8_0   ? (int)sizeof(struct tsr_block_q8_0)
           : t == T_Q4_1 ? (int)sizeof(struct tsr_block_q4_1)
                         : (int)sizeof(struct tsr_block_q4_0);
}

/* int32 sums (lanes 0-3: first block, 4-7: second) of weights w_lo/w_hi against activations at
 * a (the 32 bytes of two blocks' values 0-15) and a + 64 (values 16-31). For Q4, w_lo/w_hi are
 * the two blocks' low and high nibbles; for Q8_0 their values 0-15 and 16-31, signed. */
TSR_AVX2_INLINE __m256i pair_dot(const int t, __m256i w_lo, __m256i w_hi, const uint8_t *a)
{
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i x_lo = _mm256_loadu_si256((const __m256i *)a);
    __m256i x_hi = _mm256_loadu_si256((const __m256i *)(a + 64));
    if (t == T_Q8_0)
        return _mm256_add_epi32(
            _mm256_madd_epi16(
                _mm256_maddubs_epi16(_mm256_sign_epi8(w_lo, w_lo), _mm256_sign_epi8(x_lo, w_lo)),
                ones),
            _mm256_madd_epi16(
                _mm256_maddubs_epi16(_mm256_sign_epi8(w_hi, w_hi), _mm256_sign_epi8(x_hi, w_hi)),
                ones));
    return _mm256_madd_epi16(
        _mm256_add_epi16(_mm256_maddubs_epi16(w_lo, x_lo), _mm256_maddubs_epi16(w_hi, x_hi)), ones);
}

TSR_AVX2_INLINE __m256i load2x128(const uint8_t *p0, const uint8_t *p1)
{
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)p0)),
                                   _mm_loadu_si128((const __m128i *)p1), 1);
}

TSR_AVX2_INLINE void q_row(const int t, const int nc, int nb, const uint8_t *wr, const uint8_t *a,
                           size_t as, int nbp, float *y, size_t ldy)
{
    const int bs = block_bytes(t), qoff = t == T_Q4_1 ? 4 : 2;
    const __m256i vidx = _mm256_setr_epi32(0, bs, 2 * bs, 3 * bs, 4 * bs, 5 * bs, 6 * bs, 7 * bs);
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    __m256 acc0[2], acc1[2], accm[2];
    float tm[2] = {0.0f, 0.0f};
    for (int j = 0; j < nc; j++) acc0[j] = acc1[j] = accm[j] = _mm256_setzero_ps();
    int ng = nb / 8;
    for (int g = 0; g < ng; g++) {
        const uint8_t *blk = wr + (size_t)g * 8 * bs;
        __m256i dmi = _mm256_i32gather_epi32((const int *)blk, vidx, 1);
        __m256i dm = pack_lo16(dmi, _mm256_srli_epi32(dmi, 16));
        __m256 dw = _mm256_cvtph_ps(_mm256_castsi256_si128(dm));
        __m256 mw = t == T_Q4_1 ? _mm256_cvtph_ps(_mm256_extracti128_si256(dm, 1))
                                : _mm256_mul_ps(dw, _mm256_set1_ps(-8.0f));
        __m256 s8[2];
        for (int j = 0; j < nc; j++) {
            const float *da = (const float *)(a + (size_t)j * as + (size_t)nbp * TSR_QK) + g * 8;
            s8[j] = _mm256_mul_ps(dw, _mm256_loadu_ps(da));
            if (t != T_Q8_0) accm[j] = _mm256_fmadd_ps(mw, _mm256_loadu_ps(da + nbp), accm[j]);
        }
#pragma GCC unroll 4
        for (int p = 0; p < 4; p++) {
            const uint8_t *b0 = blk + (size_t)(2 * p) * bs + qoff;
            __m256i w_lo, w_hi;
            if (t == T_Q8_0) {
                w_lo = load2x128(b0, b0 + bs);
                w_hi = load2x128(b0 + 16, b0 + bs + 16);
            } else {
                __m256i w = load2x128(b0, b0 + bs);
                w_lo = _mm256_and_si256(w, m4);
                w_hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), m4);
            }
            __m256i sidx = _mm256_setr_epi32(2 * p, 2 * p, 2 * p, 2 * p, 2 * p + 1, 2 * p + 1,
                                             2 * p + 1, 2 * p + 1);
            for (int j = 0; j < nc; j++) {
                const uint8_t *qa =
                    a + (size_t)j * as + (size_t)g * 256 + (size_t)(p / 2) * 128 + (p % 2) * 32;
                __m256 f = _mm256_cvtepi32_ps(pair_dot(t, w_lo, w_hi, qa));
                __m256 sc = _mm256_permutevar8x32_ps(s8[j], sidx);
                if (p & 1)
                    acc1[j] = _mm256_fmadd_ps(f, sc, acc1[j]);
                else
                    acc0[j] = _mm256_fmadd_ps(f, sc, acc0[j]);
            }
        }
    }
    for (int b = ng * 8; b < nb; b++) {
        const uint8_t *blk = wr + (size_t)b * bs;
        uint16_t hd, hm;
        memcpy(&hd, blk, 2);
        memcpy(&hm, blk + 2, 2);
        float dw = _cvtsh_ss(hd), mw = t == T_Q4_1 ? _cvtsh_ss(hm) : -8.0f * dw;
        __m256i w;
        if (t == T_Q8_0) {
            w = _mm256_loadu_si256((const __m256i *)(blk + 2));
        } else {
            __m128i q = _mm_loadu_si128((const __m128i *)(blk + qoff));
            w = _mm256_and_si256(
                _mm256_inserti128_si256(_mm256_castsi128_si256(q), _mm_srli_epi16(q, 4), 1),
                _mm256_set1_epi8(0x0f));
        }
        for (int j = 0; j < nc; j++) {
            const uint8_t *aj = a + (size_t)j * as;
            const float *da = (const float *)(aj + (size_t)nbp * TSR_QK);
            __m256i x = load2x128(aj + tsr_cpu_q8_pos(b, 0), aj + tsr_cpu_q8_pos(b, 16));
            __m256i prod =
                t == T_Q8_0 ? _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
                            : _mm256_maddubs_epi16(w, x);
            __m256 f = _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, _mm256_set1_epi16(1)));
            acc0[j] = _mm256_fmadd_ps(f, _mm256_set1_ps(dw * da[b]), acc0[j]);
            if (t != T_Q8_0) tm[j] += mw * da[nbp + b];
        }
    }
    for (int j = 0; j < nc; j++)
        y[(size_t)j * ldy] = hsum(_mm256_add_ps(acc0[j], acc1[j])) + hsum(accm[j]) + tm[j];
}

TSR_AVX2 static void gemm_q8(enum tsr_dtype wt, int k, const uint8_t *w, size_t ws, int nr,
                             const uint8_t *a, size_t as, int nc, float *y, size_t ldy)
{
    int nb = k / TSR_QK, nbp = tsr_cpu_q8_blocks(k);
    for (int j = 0; j < nc; j += 2) {
        int two = nc - j >= 2;
        const uint8_t *aj = a + (size_t)j * as;
        float *yj = y + (size_t)j * ldy;
        for (int r = 0; r < nr; r++) {
            const uint8_t *wr = w + (size_t)r * ws;
            if (wt == TSR_Q8_0) {
                if (two)
                    q_row(T_Q8_0, 2, nb, wr, aj, as, nbp, yj + r, ldy);
                else
                    q_row(T_Q8_0, 1, nb, wr, aj, as, nbp, yj + r, ldy);
            } else if (wt == TSR_Q4_1) {
                if (two)
                    q_row(T_Q4_1, 2, nb, wr, aj, as, nbp, yj + r, ldy);
                else
                    q_row(T_Q4_1, 1, nb, wr, aj, as, nbp, yj + r, ldy);
            } else {
                if (two)
                    q_row(T_Q4_0, 2, nb, wr, aj, as, nbp, yj + r, ldy);
                else
                    q_row(T_Q4_0, 1, nb, wr, aj, as, nbp, yj + r, ldy);
            }
        }
    }
}

/* One float weight (F32, F16, BF16). */
static inline float weight_f(enum tsr_dtype wt, const uint8_t *w, int i)
{
    uint16_t h;
    float f;
    if (wt == TSR_F32) {
        memcpy(&f, w + 4 * (size_t)i, 4);
        return f;
    }
    memcpy(&h, w + 2 * (size_t)i, 2);
    return wt == TSR_F16 ? tsr_f16_to_f32(h) : tsr_bf16_to_f32(h);
}

/* ---- f32 activations: the exact path ----
 *
 * One 8-lane accumulator per output element, fed 8 weights at a time in k order (cpu_kernels.h);
 * a quantized block is four such chunks (a k-quant super-block 32). Q4 nibbles are widened to int32
 * and converted, then scaled: fma(q, d, m) for Q4_1, (q - 8)·d for Q4_0. A last partial chunk
 * (float weights) is loaded zero-padded. */

TSR_AVX2_INLINE int is_quant(const enum tsr_dtype wt)
{
    return wt == TSR_Q8_0 || wt == TSR_Q4_0 || wt == TSR_Q4_1;
}

TSR_AVX2_INLINE size_t block_size(const enum tsr_dtype wt)
{
    return wt == TSR_Q8_0   ? sizeof(struct tsr_block_q8_0)
           : wt == TSR_Q4_1 ? sizeof(struct tsr_block_q4_1)
                            : sizeof(struct tsr_block_q4_0);
}

TSR_AVX2_INLINE float f16_at(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* The block at blk as four chunks of 8 f32 weights. */
TSR_AVX2_INLINE void deq_block(const enum tsr_dtype wt, const uint8_t *blk, __m256 *w)
{
    __m256 d = _mm256_set1_ps(f16_at(blk));
    if (wt == TSR_Q8_0) {
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++)
            w[q] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                                     _mm_loadl_epi64((const __m128i *)(blk + 2 + 8 * (size_t)q)))),
                                 d);
        return;
    }
    const __m128i m4 = _mm_set1_epi8(0x0f);
    __m128i raw = _mm_loadu_si128((const __m128i *)(blk + (wt == TSR_Q4_1 ? 4 : 2)));
    __m128i q[4], lo = _mm_and_si128(raw, m4), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
    q[0] = lo;
    q[1] = _mm_srli_si128(lo, 8);
    q[2] = hi;
    q[3] = _mm_srli_si128(hi, 8);
    if (wt == TSR_Q4_1) {
        __m256 m = _mm256_set1_ps(f16_at(blk + 2));
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++)
            w[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q[i])), d, m);
    } else { /* (q - 8)·d, as the other ISAs round it (-0 included) */
        const __m128i eight = _mm_set1_epi8(8);
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++)
            w[i] = _mm256_mul_ps(
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_sub_epi8(q[i], eight))), d);
    }
}

/* n < 8 floats at p, zero-padded (no read past them). */
TSR_AVX2_INLINE __m256 load_part(const float *p, int n)
{
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lanes));
}

/* 8 float weights from i (F32, F16, BF16); n < 8 of them, zero-padded, when part. */
TSR_AVX2_INLINE __m256 load_wf(const enum tsr_dtype wt, const uint8_t *w, int i, const int part,
                               int n)
{
    if (part) {
        float t[8];
        for (int l = 0; l < n; l++) t[l] = weight_f(wt, w, i + l);
        return load_part(t, n);
    }
    if (wt == TSR_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + 2 * (size_t)i)));
    if (wt == TSR_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + 2 * (size_t)i))), 16));
    return _mm256_loadu_ps((const float *)(w + 4 * (size_t)i));
}

/* NR weight rows x NC activation rows (at most 4 x 2), blocks dequantized in registers once for
 * the NC rows. */
TSR_AVX2_INLINE void gv_tile(const enum tsr_dtype wt, const int nr, const int nc, int k,
                             const uint8_t *w, size_t ws, const float *x, size_t ldx, float *y,
                             size_t ldy)
{
    __m256 acc[4][2];
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 2
        for (int j = 0; j < nc; j++) acc[r][j] = _mm256_setzero_ps();
    if (tsr_cpu_decoded(wt)) {
        /* Q5_0, Q5_1, k-quants: each row's next 256 weights (fewer at a Q5 row's end: whole
         * blocks of 32 all the same) are decoded to f32 on the stack by common/dtype.c (no SIMD
         * decoder yet), then fed in k order like float weights */
        const int be = tsr_dtype_block_elems(wt);
        const size_t bs = tsr_dtype_block_bytes(wt);
        float wf[4][TSR_QK_K];
        for (int i0 = 0; i0 < k; i0 += TSR_QK_K) {
            const int len = k - i0 < TSR_QK_K ? k - i0 : TSR_QK_K;
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++)
                tsr_dequantize_row(wt, w + (size_t)r * ws + (size_t)(i0 / be) * bs, wf[r], len);
            for (int i = 0; i < len; i += 8)
#pragma GCC unroll 4
                for (int r = 0; r < nr; r++) {
                    __m256 wv = _mm256_loadu_ps(wf[r] + i);
#pragma GCC unroll 2
                    for (int j = 0; j < nc; j++)
                        acc[r][j] = _mm256_fmadd_ps(
                            wv, _mm256_loadu_ps(x + (size_t)j * ldx + (size_t)i0 + i), acc[r][j]);
                }
        }
    } else if (is_quant(wt)) {
        /* prefetch PF bytes ahead in each row, as in the AVX-512 file */
        enum { PF = 4096 };
        const size_t bs = block_size(wt);
        for (int b = 0; b < k / TSR_QK; b++) {
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++) {
                if (b % 2 == 0)
                    _mm_prefetch((const char *)w + (size_t)r * ws + (size_t)b * bs + PF,
                                 _MM_HINT_T0);
                __m256 wv[4];
                deq_block(wt, w + (size_t)r * ws + (size_t)b * bs, wv);
#pragma GCC unroll 2
                for (int j = 0; j < nc; j++) {
                    const float *xj = x + (size_t)j * ldx + (size_t)b * TSR_QK;
#pragma GCC unroll 4
                    for (int q = 0; q < 4; q++)
                        acc[r][j] = _mm256_fmadd_ps(wv[q], _mm256_loadu_ps(xj + 8 * q), acc[r][j]);
                }
            }
        }
    } else {
        int i = 0;
        for (; i + 8 <= k; i += 8)
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++) {
                __m256 wv = load_wf(wt, w + (size_t)r * ws, i, 0, 8);
#pragma GCC unroll 2
                for (int j = 0; j < nc; j++)
                    acc[r][j] =
                        _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (size_t)j * ldx + i), acc[r][j]);
            }
        if (i < k)
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++) {
                __m256 wv = load_wf(wt, w + (size_t)r * ws, i, 1, k - i);
#pragma GCC unroll 2
                for (int j = 0; j < nc; j++)
                    acc[r][j] =
                        _mm256_fmadd_ps(wv, load_part(x + (size_t)j * ldx + i, k - i), acc[r][j]);
            }
    }
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 2
        for (int j = 0; j < nc; j++) y[(size_t)j * ldy + r] = hsum(acc[r][j]);
}

TSR_AVX2_INLINE void gv_type(const enum tsr_dtype wt, int k, const uint8_t *w, size_t ws, int nr,
                             const float *x, size_t ldx, int nc, float *y, size_t ldy)
{
    for (int j = 0; j < nc; j += 2) {
        const float *xj = x + (size_t)j * ldx;
        float *yj = y + (size_t)j * ldy;
        int two = nc - j >= 2, r = 0;
        for (; r + 4 <= nr; r += 4) {
            if (two)
                gv_tile(wt, 4, 2, k, w + (size_t)r * ws, ws, xj, ldx, yj + r, ldy);
            else
                gv_tile(wt, 4, 1, k, w + (size_t)r * ws, ws, xj, ldx, yj + r, ldy);
        }
        for (; r < nr; r++) {
            if (two)
                gv_tile(wt, 1, 2, k, w + (size_t)r * ws, ws, xj, ldx, yj + r, ldy);
            else
                gv_tile(wt, 1, 1, k, w + (size_t)r * ws, ws, xj, ldx, yj + r, ldy);
        }
    }
}

TSR_AVX2 static void gemv(enum tsr_dtype wt, int k, const uint8_t *w, size_t ws, int nr,
                          const float *x, size_t ldx, int nc, float *y, size_t ldy)
{
    switch (wt) {
    case TSR_Q5_0:
        gv_type(TSR_Q5_0, k, w, ws, nr, x, ldx, nc, y, ldy);
        break;
    case TSR_Q5_1:
        gv_type(TSR_Q5_1, k, w, ws, nr, x, ldx, nc, y, ldy);
        break;
    case TSR_Q4_K:
        gv_type(TSR_Q4_K, k, w, ws, nr, x, ldx, nc, y, ldy);
        break;
    case TSR_Q5_K:
        gv_type(TSR_Q5_K, k, w, ws, nr, x, ldx, nc, y, ldy);
        break;
    case TSR_Q6_K:
        gv_type(TSR_Q6_K, k, w, ws, nr, x, ldx, nc, y, ldy);
        break;
    case TSR_F8_E4M3:
        gv_type(TSR_F8_E4M3, k, w, ws, nr, x, ldx, nc, y, ldy);
        break;
    case TSR_Q4_1:
        gv_type(TSR_Q4_1, k, w, ws, nr, x, ldx, nc, y, ldy);
        break;
    case TSR_Q4_0:
        gv_type(TSR_Q4_0, k, w, ws, nr, x, ldx, nc, y, ldy);
        break;
    case TSR_Q8_0:
        gv_type(TSR_Q8_0, k, w, ws, nr, x, ldx, nc, y, ldy);
        break;
    case TSR_F16:
        gv_type(TSR_F16, k, w, ws, nr, x, ldx, nc, y, ldy);
        break;
    case TSR_BF16:
        gv_type(TSR_BF16, k, w, ws, nr, x, ldx, nc, y, ldy);
        break;
    default:
        gv_type(TSR_F32, k, w, ws, nr, x, ldx, nc, y, ldy);
        break;
    }
}

/* NR x NC (at most 2 x 4) on f32 weight rows: the NC activation chunks stay in registers while
 * the NR weight chunks meet them (16 registers: 8 accumulators, 4 + 2 operands). */
TSR_AVX2_INLINE void gm_tile(const int nr, const int nc, int k, const float *w, size_t ldw,
                             const float *x, size_t ldx, float *y, size_t ldy)
{
    __m256 acc[2][4], xv[4];
#pragma GCC unroll 2
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int j = 0; j < nc; j++) acc[r][j] = _mm256_setzero_ps();
    for (int i = 0; i < k; i += 8) {
        int n = k - i < 8 ? k - i : 8;
#pragma GCC unroll 4
        for (int j = 0; j < nc; j++)
            xv[j] = n == 8 ? _mm256_loadu_ps(x + (size_t)j * ldx + i)
                           : load_part(x + (size_t)j * ldx + i, n);
#pragma GCC unroll 2
        for (int r = 0; r < nr; r++) {
            const float *wr = w + (size_t)r * ldw + i;
            __m256 wv = n == 8 ? _mm256_loadu_ps(wr) : load_part(wr, n);
#pragma GCC unroll 4
            for (int j = 0; j < nc; j++) acc[r][j] = _mm256_fmadd_ps(wv, xv[j], acc[r][j]);
        }
    }
#pragma GCC unroll 2
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int j = 0; j < nc; j++) y[(size_t)j * ldy + r] = hsum(acc[r][j]);
}

TSR_AVX2 static void gemm_f32(int k, const float *w, size_t ldw, int nr, const float *x, size_t ldx,
                              int nc, float *y, size_t ldy)
{
    for (int j = 0; j < nc; j += 4) {
        const float *xj = x + (size_t)j * ldx;
        float *yj = y + (size_t)j * ldy;
        int m = nc - j < 4 ? nc - j : 4, r = 0;
        for (; r + 2 <= nr; r += 2) {
            const float *wr = w + (size_t)r * ldw;
            if (m == 4)
                gm_tile(2, 4, k, wr, ldw, xj, ldx, yj + r, ldy);
            else if (m == 3)
                gm_tile(2, 3, k, wr, ldw, xj, ldx, yj + r, ldy);
            else if (m == 2)
                gm_tile(2, 2, k, wr, ldw, xj, ldx, yj + r, ldy);
            else
                gm_tile(2, 1, k, wr, ldw, xj, ldx, yj + r, ldy);
        }
        if (r < nr) {
            const float *wr = w + (size_t)r * ldw;
            if (m == 4)
                gm_tile(1, 4, k, wr, ldw, xj, ldx, yj + r, ldy);
            else if (m == 3)
                gm_tile(1, 3, k, wr, ldw, xj, ldx, yj + r, ldy);
            else if (m == 2)
                gm_tile(1, 2, k, wr, ldw, xj, ldx, yj + r, ldy);
            else
                gm_tile(1, 1, k, wr, ldw, xj, ldx, yj + r, ldy);
        }
    }
}

TSR_AVX2 static void dequant(enum tsr_dtype wt, const uint8_t *src, float *dst, int n)
{
    if (tsr_cpu_decoded(wt)) {
        tsr_dequantize_row(wt, src, dst, n);
        return;
    }
    if (is_quant(wt)) {
        const size_t bs = block_size(wt);
        for (int b = 0; b < n / TSR_QK; b++) {
            __m256 w[4];
            if (wt == TSR_Q4_1)
                deq_block(TSR_Q4_1, src + (size_t)b * bs, w);
            else if (wt == TSR_Q4_0)
                deq_block(TSR_Q4_0, src + (size_t)b * bs, w);
            else
                deq_block(TSR_Q8_0, src + (size_t)b * bs, w);
            for (int q = 0; q < 4; q++) _mm256_storeu_ps(dst + (size_t)b * TSR_QK + 8 * q, w[q]);
        }
        return;
    }
    int i = 0;
    if (wt == TSR_F16)
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_wf(TSR_F16, src, i, 0, 8));
    else if (wt == TSR_BF16)
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_wf(TSR_BF16, src, i, 0, 8));
    for (; i < n; i++) dst[i] = weight_f(wt, src, i);
}

/* ---- vector helpers ---- */

/* Four dot products of q with rows k0..k3 (hd floats), scaled. */
TSR_AVX2 static void attn_scores(const float *q, const float *k, size_t ks, int n, int hd,
                                 float scale, float *sc)
{
    int i = 0, d8 = hd / 8 * 8;
    for (; i + 4 <= n; i += 4) {
        const float *kr = k + (size_t)i * ks;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int d = 0; d < d8; d += 8) {
            __m256 qv = _mm256_loadu_ps(q + d);
            a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr + d), a0);
            a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr + ks + d), a1);
            a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr + 2 * ks + d), a2);
            a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr + 3 * ks + d), a3);
        }
        __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
        __m128 r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        float t[4];
        _mm_storeu_ps(t, r);
        for (int j = 0; j < 4; j++) {
            for (int d = d8; d < hd; d++) t[j] += q[d] * kr[(size_t)j * ks + d];
            sc[i + j] = t[j] * scale;
        }
    }
    for (; i < n; i++) {
        const float *kr = k + (size_t)i * ks;
        __m256 a0 = _mm256_setzero_ps();
        for (int d = 0; d < d8; d += 8)
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(kr + d), a0);
        float t = hsum(a0);
        for (int d = d8; d < hd; d++) t += q[d] * kr[d];
        sc[i] = t * scale;
    }
}

/* acc += Σ p[i] v_i, 32 columns of acc in registers at a time. */
TSR_AVX2 static void attn_accum(const float *p, const float *v, size_t vs, int n, int hd,
                                float *acc)
{
    int d = 0;
    for (; d + 32 <= hd; d += 32) {
        __m256 a0 = _mm256_loadu_ps(acc + d), a1 = _mm256_loadu_ps(acc + d + 8);
        __m256 a2 = _mm256_loadu_ps(acc + d + 16), a3 = _mm256_loadu_ps(acc + d + 24);
        for (int i = 0; i < n; i++) {
            const float *vr = v + (size_t)i * vs + d;
            __m256 pi = _mm256_set1_ps(p[i]);
            a0 = _mm256_fmadd_ps(pi, _mm256_loadu_ps(vr), a0);
            a1 = _mm256_fmadd_ps(pi, _mm256_loadu_ps(vr + 8), a1);
            a2 = _mm256_fmadd_ps(pi, _mm256_loadu_ps(vr + 16), a2);
            a3 = _mm256_fmadd_ps(pi, _mm256_loadu_ps(vr + 24), a3);
        }
        _mm256_storeu_ps(acc + d, a0);
        _mm256_storeu_ps(acc + d + 8, a1);
        _mm256_storeu_ps(acc + d + 16, a2);
        _mm256_storeu_ps(acc + d + 24, a3);
    }
    for (; d + 8 <= hd; d += 8) {
        __m256 a0 = _mm256_loadu_ps(acc + d);
        for (int i = 0; i < n; i++)
            a0 = _mm256_fmadd_ps(_mm256_set1_ps(p[i]), _mm256_loadu_ps(v + (size_t)i * vs + d), a0);
        _mm256_storeu_ps(acc + d, a0);
    }
    for (; d < hd; d++)
        for (int i = 0; i < n; i++) acc[d] += p[i] * v[(size_t)i * vs + d];
}

TSR_AVX2 static void scale(float a, float *y, int n)
{
    __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(va, _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] *= a;
}

/* e^x, Cephes' expf as in the AVX-512 file; the input is clamped to [-87.3, 88.3] so 2^n is a
 * normal float built from exponent bits (e^-87.3 ~ 1e-38 stands in for smaller results). */
TSR_AVX2_INLINE __m256 exp256(__m256 x)
{
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500E-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
    __m256 e = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i bits =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(e, _mm256_castsi256_ps(bits));
}

TSR_AVX2 static float exp_sum(float *x, float mx, int n)
{
    __m256 vm = _mm256_set1_ps(mx), acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
        _mm256_storeu_ps(x + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    float t = 0.0f;
    for (; i < n; i++) {
        x[i] = expf(x[i] - mx);
        t += x[i];
    }
    return hsum(acc) + t;
}

TSR_AVX2 static void silu_mul(float *out, const float *g, const float *u, int n)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 vg = _mm256_loadu_ps(g + i);
        __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), vg));
        __m256 s = _mm256_div_ps(vg, _mm256_add_ps(one, e));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

const struct tsr_cpu_kernels tsr_cpu_kernels_avx2 = {
    .isa = TSR_CPU_AVX2,
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
