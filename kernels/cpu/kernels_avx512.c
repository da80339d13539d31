/* AVX-512 kernels (F, BW, VL, DQ, VNNI, VBMI: Ice Lake, Sapphire Rapids, Zen 4 and later), built
 * with function-level target attributes so the file compiles everywhere and runs only where
 * tsr_cpu_isa_best() says so.
 *
 * The exact matmul (f32 activations, the default) dequantizes each weight block in registers
 * through a 16-entry table and vpermps, and feeds 16-lane FMAs; see its section below.
 *
 * The q8 GEMV (TESSERA_CPU_ACT=q8) works on groups of 8 weight blocks: a few 64-byte loads cover
 * a group, VBMI byte permutes gather the weights of blocks 0-3 and 4-7 into registers and the 8
 * f16 scales (and Q4_1 offsets) into another, so the per-block scalar work of a plain loop (f16
 * loads and conversions, broadcasts) becomes a few vector instructions per 8 blocks. Products
 * are int8 (VNNI vpdpbusd: unsigned weight x signed activation), summed per block in int32,
 * scaled in f32. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"

#define TSR_AVX512                                                                                 \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,avx2,fma,"     \
                          "f16c")))
#define TSR_AVX512_INLINE static inline __attribute__((always_inline)) TSR_AVX512

/* ---- activation quantization ---- */

TSR_AVX512 static void quantize_q8(const float *x, uint8_t *q, int k)
{
    int nb = k / TSR_QK, nbp = tsr_cpu_q8_blocks(k);
    int8_t *qs = (int8_t *)q;
    float *d = (float *)(q + (size_t)nbp * TSR_QK), *sd = d + nbp;
    for (int b = 0; b < nb; b++) {
        __m512 v0 = _mm512_loadu_ps(x + (size_t)b * TSR_QK);
        __m512 v1 = _mm512_loadu_ps(x + (size_t)b * TSR_QK + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        float db = amax / 127.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
        __m512 vid = _mm512_set1_ps(id);
        __m512i i0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, vid));
        __m512i i1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, vid));
        _mm_storeu_si128((__m128i *)(qs + tsr_cpu_q8_pos(b, 0)), _mm512_cvtsepi32_epi8(i0));
        _mm_storeu_si128((__m128i *)(qs + tsr_cpu_q8_pos(b, 16)), _mm512_cvtsepi32_epi8(i1));
        d[b] = db;
        sd[b] = db * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
    }
    for (int b = nb; b < nbp; b++) {
        memset(qs + tsr_cpu_q8_pos(b, 0), 0, 16);
        memset(qs + tsr_cpu_q8_pos(b, 16), 0, 16);
        d[b] = sd[b] = 0.0f;
    }
}

/* ---- quantized weights ----
 *
 * A group of 8 blocks becomes four 64-byte vectors of unsigned 8-bit weights in the q8 layout
 * (values 0-15 of blocks 0-3, values 16-31 of blocks 0-3, the same for blocks 4-7) plus the 8
 * block scales dw and offsets mw, so that block b contributes dw*da*Σ(w·a) + mw*sd:
 *   Q4_0: w = nibble, mw = -8 dw;  Q4_1: w = nibble, mw = m;
 *   Q8_0: w = q + 128 (flipping the sign bit makes it unsigned for vpdpbusd), mw = -128 dw.
 * Sources: Q4 loads three 64-byte vectors L0 @0, L1 @64, L2 @ 8*bs-64 (the group's end); one
 * permute gathers blocks 0-3's 16 nibble bytes from L0|L1, another blocks 4-7's from L1|L2.
 * Q8_0 (34-byte blocks, 272 per group) loads eight, at 0, 64, 16, 80, 128, 192, 144, 208, one
 * pair per output vector. Scales come from two masked permutes. The last, partial group uses
 * byte-masked loads (no fault, no copy) and, when at most 4 blocks remain, only its first half. */

enum { T_Q4_0, T_Q4_1, T_Q8_0 };

struct grp_tab {
    uint8_t v[4][64];             /* permute indices of the four weight vectors (Q4: v[0], v[2]) */
    uint8_t dm_lo[64], dm_hi[64]; /* d of block k to bytes 2k.., m to 16+2k.. */
    __mmask64 mask_lo, mask_hi;
} __attribute__((aligned(64))); /* each table starts on a cache line */
static struct grp_tab grp_tabs[3];

static const int q8_src[8] = {0, 64, 16, 80, 128, 192, 144, 208}; /* Q8_0 loads, as in load_group */

static void init_tables(void)
{
    for (int t = 0; t < 3; t++) {
        struct grp_tab *tab = &grp_tabs[t];
        memset(tab, 0, sizeof *tab);
        int bs = t == T_Q8_0   ? (int)sizeof(struct tsr_block_q8_0)
                 : t == T_Q4_1 ? (int)sizeof(struct tsr_block_q4_1)
                               : (int)sizeof(struct tsr_block_q4_0);
        int qoff = t == T_Q4_1 ? 4 : 2, l2off = 8 * bs - 64;
        /* source offsets of the (first, second) table of each permute */
        int src[4][2], dsrc[2][2];
        if (t == T_Q8_0) {
            for (int v = 0; v < 4; v++) {
                src[v][0] = q8_src[2 * v];
                src[v][1] = q8_src[2 * v + 1];
            }
            dsrc[0][0] = 0, dsrc[0][1] = 64, dsrc[1][0] = 128, dsrc[1][1] = 192;
        } else {
            src[0][0] = 0, src[0][1] = 64, src[2][0] = 64, src[2][1] = l2off;
            dsrc[0][0] = 0, dsrc[0][1] = 64, dsrc[1][0] = 64, dsrc[1][1] = l2off;
        }
        for (int v = 0; v < 4; v++) {
            if (t != T_Q8_0 && (v & 1)) continue; /* Q4: the high nibbles come from v[v-1] */
            for (int p = 0; p < 64; p++) {
                int blk = (v >= 2 ? 4 : 0) + p / 16, j = p % 16 + (t == T_Q8_0 && (v & 1) ? 16 : 0);
                int abs = blk * bs + qoff + j;
                int idx = abs - src[v][0] < 64 ? abs - src[v][0] : 64 + abs - src[v][1];
                tab->v[v][p] = (uint8_t)idx;
            }
        }
        for (int k = 0; k < 8; k++)
            for (int h = 0; h < 2; h++) {
                int half = k >= 4;
                int dpos = 2 * k + h, mpos = 16 + 2 * k + h;
                int dabs = k * bs + h, mabs = k * bs + 2 + h;
                const int *ds = dsrc[half];
                uint8_t *idx = half ? tab->dm_hi : tab->dm_lo;
                __mmask64 *mask = half ? &tab->mask_hi : &tab->mask_lo;
                idx[dpos] = (uint8_t)(dabs - ds[0] < 64 ? dabs - ds[0] : 64 + dabs - ds[1]);
                *mask |= 1ull << dpos;
                if (t == T_Q4_1) {
                    idx[mpos] = (uint8_t)(mabs - ds[0] < 64 ? mabs - ds[0] : 64 + mabs - ds[1]);
                    *mask |= 1ull << mpos;
                }
            }
    }
}

struct wgroup {
    __m512i w[4];  /* unsigned weights in q8 order: lo 0-3, hi 0-3, lo 4-7, hi 4-7 */
    __m256 dw, mw; /* block scales and offsets */
};

/* 64 bytes at p, or (masked) only those of [p, end). */
TSR_AVX512_INLINE __m512i load64(const uint8_t *p, const int masked, const uint8_t *end)
{
    if (!masked) return _mm512_loadu_si512(p);
    int64_t n = end - p;
    __mmask64 m = n >= 64 ? ~(__mmask64)0 : n <= 0 ? 0 : (((__mmask64)1 << n) - 1);
    return _mm512_maskz_loadu_epi8(m, p);
}

/* Loads the group at blk (all 8 blocks unless masked; then only bytes before end, and only
 * blocks 0-3 when half). */
TSR_AVX512_INLINE void load_group(const int t, const int masked, const int half, const uint8_t *blk,
                                  const uint8_t *end, struct wgroup *g)
{
    const struct grp_tab *tab = &grp_tabs[t];
    __m512i dm;
    if (t == T_Q8_0) {
        const __m512i flip = _mm512_set1_epi8((char)0x80);
        __m512i s0 = load64(blk, masked, end), s1 = load64(blk + 64, masked, end);
        __m512i s2 = load64(blk + 16, masked, end), s3 = load64(blk + 80, masked, end);
        g->w[0] =
            _mm512_xor_si512(_mm512_permutex2var_epi8(s0, _mm512_load_si512(tab->v[0]), s1), flip);
        g->w[1] =
            _mm512_xor_si512(_mm512_permutex2var_epi8(s2, _mm512_load_si512(tab->v[1]), s3), flip);
        dm = _mm512_maskz_permutex2var_epi8(tab->mask_lo, s0, _mm512_load_si512(tab->dm_lo), s1);
        if (!half) {
            __m512i s4 = load64(blk + 128, masked, end), s5 = load64(blk + 192, masked, end);
            __m512i s6 = load64(blk + 144, masked, end), s7 = load64(blk + 208, masked, end);
            g->w[2] = _mm512_xor_si512(
                _mm512_permutex2var_epi8(s4, _mm512_load_si512(tab->v[2]), s5), flip);
            g->w[3] = _mm512_xor_si512(
                _mm512_permutex2var_epi8(s6, _mm512_load_si512(tab->v[3]), s7), flip);
            dm = _mm512_or_si512(dm, _mm512_maskz_permutex2var_epi8(
                                         tab->mask_hi, s4, _mm512_load_si512(tab->dm_hi), s5));
        }
        g->dw = _mm256_cvtph_ps(_mm512_castsi512_si128(dm));
        g->mw = _mm256_mul_ps(g->dw, _mm256_set1_ps(-128.0f));
        return;
    }
    const int bs =
        t == T_Q4_1 ? (int)sizeof(struct tsr_block_q4_1) : (int)sizeof(struct tsr_block_q4_0);
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512i l0 = load64(blk, masked, end), l1 = load64(blk + 64, masked, end);
    __m512i q03 = _mm512_permutex2var_epi8(l0, _mm512_load_si512(tab->v[0]), l1);
    g->w[0] = _mm512_and_si512(q03, m4);
    g->w[1] = _mm512_and_si512(_mm512_srli_epi16(q03, 4), m4);
    dm = _mm512_maskz_permutex2var_epi8(tab->mask_lo, l0, _mm512_load_si512(tab->dm_lo), l1);
    if (!half) {
        __m512i l2 = load64(blk + 8 * bs - 64, masked, end);
        __m512i q47 = _mm512_permutex2var_epi8(l1, _mm512_load_si512(tab->v[2]), l2);
        g->w[2] = _mm512_and_si512(q47, m4);
        g->w[3] = _mm512_and_si512(_mm512_srli_epi16(q47, 4), m4);
        dm = _mm512_or_si512(dm, _mm512_maskz_permutex2var_epi8(tab->mask_hi, l1,
                                                                _mm512_load_si512(tab->dm_hi), l2));
    }
    g->dw = _mm256_cvtph_ps(_mm512_castsi512_si128(dm));
    g->mw = t == T_Q4_1 ? _mm256_cvtph_ps(_mm512_extracti32x4_epi32(dm, 1))
                        : _mm256_mul_ps(g->dw, _mm256_set1_ps(-8.0f));
}

/* acc += one group's contribution for one q8 row (qa: the group's 256 bytes; da: its 8 d's,
 * with the 8 sd's at da + nbp). Block k's int32 sums sit in lanes 4k..4k+3 of p03 (k < 4) and
 * p47; each lane is scaled by its block's dw*da. */
TSR_AVX512_INLINE void group_dot(const int half, const struct wgroup *g, const uint8_t *qa,
                                 const float *da, int nbp, __m512 *acc0, __m512 *acc1, __m256 *accm)
{
    const __m512i zero = _mm512_setzero_si512();
    const __m512i s03 = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    __m512 s = _mm512_castps256_ps512(_mm256_mul_ps(g->dw, _mm256_loadu_ps(da)));
    *accm = _mm256_fmadd_ps(g->mw, _mm256_loadu_ps(da + nbp), *accm);
    __m512i p03 = _mm512_dpbusd_epi32(zero, g->w[0], _mm512_loadu_si512(qa));
    p03 = _mm512_dpbusd_epi32(p03, g->w[1], _mm512_loadu_si512(qa + 64));
    *acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p03), _mm512_permutexvar_ps(s03, s), *acc0);
    if (!half) {
        const __m512i s47 = _mm512_add_epi32(s03, _mm512_set1_epi32(4));
        __m512i p47 = _mm512_dpbusd_epi32(zero, g->w[2], _mm512_loadu_si512(qa + 128));
        p47 = _mm512_dpbusd_epi32(p47, g->w[3], _mm512_loadu_si512(qa + 192));
        *acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p47), _mm512_permutexvar_ps(s47, s), *acc1);
    }
}

/* The sums of 4 accumulator sets (acc0 + acc1 + accm each), as 4 lanes. Every result goes
 * through the same additions whichever other sets share the call, so an output element is
 * bitwise the same whatever tile computed it. */
TSR_AVX512_INLINE __m128 reduce4(const __m512 *acc0, const __m512 *acc1, const __m256 *accm)
{
    __m256 v[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        __m512 z = _mm512_add_ps(acc0[i], acc1[i]);
        v[i] = _mm256_add_ps(_mm256_add_ps(_mm512_castps512_ps256(z), _mm512_extractf32x8_ps(z, 1)),
                             accm[i]);
    }
    __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* NR weight rows x NC q8 rows (NR*NC <= 4, constants after inlining): y[j*ldy + r]. */
TSR_AVX512_INLINE void q_tile(const int t, const int nr, const int nc, int nb, const uint8_t *w,
                              size_t ws, const uint8_t *a, size_t as, int nbp, float *y, size_t ldy)
{
    const int bs = t == T_Q8_0   ? (int)sizeof(struct tsr_block_q8_0)
                   : t == T_Q4_1 ? (int)sizeof(struct tsr_block_q4_1)
                                 : (int)sizeof(struct tsr_block_q4_0);
    __m512 acc0[4], acc1[4];
    __m256 accm[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        acc0[i] = acc1[i] = _mm512_setzero_ps();
        accm[i] = _mm256_setzero_ps();
    }
    struct wgroup g;
    int ng = nb / 8, rem = nb % 8;
    /* Row by row, so the tile's weights stream in address order (interleaving the rows group
     * by group made the hardware prefetcher lose track of wide rows). */
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++) {
        for (int gi = 0; gi < ng; gi++) {
            load_group(t, 0, 0, w + (size_t)r * ws + (size_t)gi * 8 * bs, NULL, &g);
#pragma GCC unroll 4
            for (int j = 0; j < nc; j++) {
                const uint8_t *aj = a + (size_t)j * as;
                int i = r * nc + j;
                group_dot(0, &g, aj + (size_t)gi * 256,
                          (const float *)(aj + (size_t)nbp * TSR_QK) + (size_t)gi * 8, nbp,
                          &acc0[i], &acc1[i], &accm[i]);
            }
        }
        if (rem) {
            const uint8_t *blk = w + (size_t)r * ws + (size_t)ng * 8 * bs;
            const uint8_t *end = blk + (size_t)rem * bs;
            if (rem <= 4)
                load_group(t, 1, 1, blk, end, &g);
            else
                load_group(t, 1, 0, blk, end, &g);
#pragma GCC unroll 4
            for (int j = 0; j < nc; j++) {
                const uint8_t *aj = a + (size_t)j * as;
                const uint8_t *qa = aj + (size_t)ng * 256;
                const float *da = (const float *)(aj + (size_t)nbp * TSR_QK) + (size_t)ng * 8;
                int i = r * nc + j;
                if (rem <= 4)
                    group_dot(1, &g, qa, da, nbp, &acc0[i], &acc1[i], &accm[i]);
                else
                    group_dot(0, &g, qa, da, nbp, &acc0[i], &acc1[i], &accm[i]);
            }
        }
    }
    float out[4];
    _mm_storeu_ps(out, reduce4(acc0, acc1, accm));
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int j = 0; j < nc; j++) y[(size_t)j * ldy + r] = out[r * nc + j];
}

/* Decode (one q8 row): weight rows 4 at a time. Batches: q8 rows 4 at a time, each weight
 * group unpacked once per 4. */
TSR_AVX512_INLINE void q_gemm(const int t, int nb, const uint8_t *w, size_t ws, int nr,
                              const uint8_t *a, size_t as, int nc, int nbp, float *y, size_t ldy)
{
    if (nc == 1) {
        int r = 0;
        for (; r + 4 <= nr; r += 4)
            q_tile(t, 4, 1, nb, w + (size_t)r * ws, ws, a, as, nbp, y + r, ldy);
        for (; r < nr; r++) q_tile(t, 1, 1, nb, w + (size_t)r * ws, ws, a, as, nbp, y + r, ldy);
        return;
    }
    for (int j = 0; j < nc; j += 4) {
        const uint8_t *aj = a + (size_t)j * as;
        float *yj = y + (size_t)j * ldy;
        int m = nc - j;
        for (int r = 0; r < nr; r++) {
            const uint8_t *wr = w + (size_t)r * ws;
            if (m >= 4)
                q_tile(t, 1, 4, nb, wr, ws, aj, as, nbp, yj + r, ldy);
            else if (m == 3)
                q_tile(t, 1, 3, nb, wr, ws, aj, as, nbp, yj + r, ldy);
            else if (m == 2)
                q_tile(t, 1, 2, nb, wr, ws, aj, as, nbp, yj + r, ldy);
            else
                q_tile(t, 1, 1, nb, wr, ws, aj, as, nbp, yj + r, ldy);
        }
    }
}

TSR_AVX512 static void gemm_q8(enum tsr_dtype wt, int k, const uint8_t *w, size_t ws, int nr,
                               const uint8_t *a, size_t as, int nc, float *y, size_t ldy)
{
    int nb = k / TSR_QK, nbp = tsr_cpu_q8_blocks(k);
    if (wt == TSR_Q8_0)
        q_gemm(T_Q8_0, nb, w, ws, nr, a, as, nc, nbp, y, ldy);
    else if (wt == TSR_Q4_1)
        q_gemm(T_Q4_1, nb, w, ws, nr, a, as, nc, nbp, y, ldy);
    else
        q_gemm(T_Q4_0, nb, w, ws, nr, a, as, nc, nbp, y, ldy);
}

/* ---- f32 activations: the exact path ----
 *
 * One 16-lane accumulator per output element, fed 16 weights at a time in k order (cpu_kernels.h);
 * a quantized block is two such chunks: weights 0-15 and 16-31. Q4 blocks dequantize through a
 * 16-entry table: lane l of tab = the block's weight value for nibble l (Q4_1: fma(l, d, m);
 * Q4_0: (l - 8)·d), and vpermps picks w_j = tab[nibble j] for 16 nibbles at once (it reads the
 * low 4 bits of each index, so the high nibbles only need a shift). Q8_0: d·(float)q. */

static const float iota16[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
static const float iota16m8[16] = {-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7};

/* 16 float weights from i (F32, F16, BF16), zero where m is clear. */
TSR_AVX512_INLINE __m512 load_w_mask(enum tsr_dtype wt, const uint8_t *w, int i, __mmask16 m)
{
    if (wt == TSR_F16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w + 2 * (size_t)i));
    if (wt == TSR_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, w + 2 * (size_t)i)), 16));
    return _mm512_maskz_loadu_ps(m, w + 4 * (size_t)i);
}

TSR_AVX512_INLINE int is_quant(const enum tsr_dtype wt)
{
    return wt == TSR_Q8_0 || wt == TSR_Q4_0 || wt == TSR_Q4_1;
}

TSR_AVX512_INLINE float f16_at(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

TSR_AVX512_INLINE size_t block_size(const enum tsr_dtype wt)
{
    return wt == TSR_Q8_0   ? sizeof(struct tsr_block_q8_0)
           : wt == TSR_Q4_1 ? sizeof(struct tsr_block_q4_1)
                            : sizeof(struct tsr_block_q4_0);
}

/* The block's scale d (and Q4_1's offset m) as f32 at *d (*m). */
TSR_AVX512_INLINE void block_scales(const enum tsr_dtype wt, const uint8_t *blk, float *d, float *m)
{
    if (wt == TSR_Q4_1) {
        uint32_t dm;
        memcpy(&dm, blk, 4);
        __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128((int)dm));
        *d = _mm_cvtss_f32(f);
        *m = _mm_cvtss_f32(_mm_movehdup_ps(f));
    } else {
        *d = f16_at(blk);
    }
}

/* The same for a whole group of 8 blocks at g, into d[0..7] (m[0..7]): the q8 kernels' permutes
 * gather the 8 f16 scales (and offsets) into one vector, converted at once. */
TSR_AVX512_INLINE void group_scales(const enum tsr_dtype wt, const uint8_t *g, float *d, float *m)
{
    const int t = wt == TSR_Q8_0 ? T_Q8_0 : wt == TSR_Q4_1 ? T_Q4_1 : T_Q4_0;
    const struct grp_tab *tab = &grp_tabs[t];
    const size_t bs = block_size(wt);
    /* sources as init_tables has them: Q4 0, 64, 8*bs - 64; Q8_0 0, 64 and 128, 192 */
    __m512i l0 = _mm512_loadu_si512(g), l1 = _mm512_loadu_si512(g + 64);
    __m512i l2 = _mm512_loadu_si512(g + (t == T_Q8_0 ? 128 : 8 * bs - 64));
    __m512i hi0 = t == T_Q8_0 ? l2 : l1, hi1 = t == T_Q8_0 ? _mm512_loadu_si512(g + 192) : l2;
    __m512i dm =
        _mm512_maskz_permutex2var_epi8(tab->mask_lo, l0, _mm512_load_si512(tab->dm_lo), l1);
    dm = _mm512_or_si512(
        dm, _mm512_maskz_permutex2var_epi8(tab->mask_hi, hi0, _mm512_load_si512(tab->dm_hi), hi1));
    _mm256_storeu_ps(d, _mm256_cvtph_ps(_mm512_castsi512_si128(dm)));
    if (wt == TSR_Q4_1) _mm256_storeu_ps(m, _mm256_cvtph_ps(_mm512_extracti32x4_epi32(dm, 1)));
}

/* Weights 0-15 and 16-31 of the block at blk, as f32, given its scale (and offset) in memory:
 * broadcast from memory, they cost a load rather than a vector operation. */
TSR_AVX512_INLINE void deq_block_s(const enum tsr_dtype wt, const uint8_t *blk, const float *d,
                                   const float *m, __m512 *lo, __m512 *hi)
{
    if (wt == TSR_Q8_0) {
        __m512 vd = _mm512_set1_ps(*d);
        __m128i q0 = _mm_loadu_si128((const __m128i *)(blk + 2));
        __m128i q1 = _mm_loadu_si128((const __m128i *)(blk + 18));
        *lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0)), vd);
        *hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1)), vd);
        return;
    }
    __m512 tab = wt == TSR_Q4_1 ? _mm512_fmadd_ps(_mm512_loadu_ps(iota16), _mm512_set1_ps(*d),
                                                  _mm512_set1_ps(*m))
                                : _mm512_mul_ps(_mm512_loadu_ps(iota16m8), _mm512_set1_ps(*d));
    const size_t qoff = wt == TSR_Q4_1 ? 4 : 2;
    __m512i nib = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk + qoff)));
    *lo = _mm512_permutexvar_ps(nib, tab);
    *hi = _mm512_permutexvar_ps(_mm512_srli_epi32(nib, 4), tab);
}

/* The fixed horizontal sum of an accumulator. */
TSR_AVX512_INLINE float reduce16(__m512 v)
{
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    b = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

/* NR weight rows x NC activation rows (constants after inlining, at most 4 x 4), blocks
 * dequantized in registers, once for all NC rows. */
TSR_AVX512_INLINE void gv_tile(const enum tsr_dtype wt, const int nr, const int nc, int k,
                               const uint8_t *w, size_t ws, const float *x, size_t ldx, float *y,
                               size_t ldy)
{
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int j = 0; j < nc; j++) acc[r][j] = _mm512_setzero_ps();
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
            for (int i = 0; i < len; i += 16)
#pragma GCC unroll 4
                for (int r = 0; r < nr; r++) {
                    __m512 wv = _mm512_loadu_ps(wf[r] + i);
#pragma GCC unroll 4
                    for (int j = 0; j < nc; j++)
                        acc[r][j] = _mm512_fmadd_ps(
                            wv, _mm512_loadu_ps(x + (size_t)j * ldx + (size_t)i0 + i), acc[r][j]);
                }
        }
    } else if (is_quant(wt)) {
        /* A group's scales are converted first, for the blocks' loop to broadcast them from
         * memory. Each row prefetches PF bytes ahead: four rows read at once lose the hardware
         * prefetcher on wide rows (1536 columns ran at half speed). */
        enum { G = 8, PF = 4096 };
        const size_t bs = block_size(wt);
        const int nb = k / TSR_QK;
        float sd[4][G], sm[4][G];
        for (int b0 = 0; b0 < nb; b0 += G) {
            const int gb = nb - b0 < G ? nb - b0 : G;
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++) {
                const uint8_t *g = w + (size_t)r * ws + (size_t)b0 * bs;
                for (size_t o = 0; o < G * bs; o += 64)
                    _mm_prefetch((const char *)g + PF + o, _MM_HINT_T0);
                if (gb == G)
                    group_scales(wt, g, sd[r], sm[r]);
                else
                    for (int b = 0; b < gb; b++) block_scales(wt, g + b * bs, &sd[r][b], &sm[r][b]);
            }
            for (int b = 0; b < gb; b++) {
#pragma GCC unroll 4
                for (int r = 0; r < nr; r++) {
                    __m512 lo, hi;
                    deq_block_s(wt, w + (size_t)r * ws + (size_t)(b0 + b) * bs, &sd[r][b],
                                &sm[r][b], &lo, &hi);
#pragma GCC unroll 4
                    for (int j = 0; j < nc; j++) {
                        const float *xj = x + (size_t)j * ldx + (size_t)(b0 + b) * TSR_QK;
                        acc[r][j] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xj), acc[r][j]);
                        acc[r][j] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xj + 16), acc[r][j]);
                    }
                }
            }
        }
    } else {
        for (int i = 0; i < k; i += 16) {
            __mmask16 m = k - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (k - i)) - 1);
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++) {
                __m512 wv = load_w_mask(wt, w + (size_t)r * ws, i, m);
#pragma GCC unroll 4
                for (int j = 0; j < nc; j++)
                    acc[r][j] = _mm512_fmadd_ps(
                        wv, _mm512_maskz_loadu_ps(m, x + (size_t)j * ldx + i), acc[r][j]);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int j = 0; j < nc; j++) y[(size_t)j * ldy + r] = reduce16(acc[r][j]);
}

TSR_AVX512_INLINE void gv_type(const enum tsr_dtype wt, int k, const uint8_t *w, size_t ws, int nr,
                               const float *x, size_t ldx, int nc, float *y, size_t ldy)
{
    for (int j = 0; j < nc; j += 4) {
        const float *xj = x + (size_t)j * ldx;
        float *yj = y + (size_t)j * ldy;
        int m = nc - j < 4 ? nc - j : 4, r = 0;
        for (; r + 4 <= nr; r += 4) {
            const uint8_t *wr = w + (size_t)r * ws;
            if (m == 4)
                gv_tile(wt, 4, 4, k, wr, ws, xj, ldx, yj + r, ldy);
            else if (m == 3)
                gv_tile(wt, 4, 3, k, wr, ws, xj, ldx, yj + r, ldy);
            else if (m == 2)
                gv_tile(wt, 4, 2, k, wr, ws, xj, ldx, yj + r, ldy);
            else
                gv_tile(wt, 4, 1, k, wr, ws, xj, ldx, yj + r, ldy);
        }
        for (; r < nr; r++) {
            const uint8_t *wr = w + (size_t)r * ws;
            if (m == 4)
                gv_tile(wt, 1, 4, k, wr, ws, xj, ldx, yj + r, ldy);
            else if (m == 3)
                gv_tile(wt, 1, 3, k, wr, ws, xj, ldx, yj + r, ldy);
            else if (m == 2)
                gv_tile(wt, 1, 2, k, wr, ws, xj, ldx, yj + r, ldy);
            else
                gv_tile(wt, 1, 1, k, wr, ws, xj, ldx, yj + r, ldy);
        }
    }
}

TSR_AVX512 static void gemv(enum tsr_dtype wt, int k, const uint8_t *w, size_t ws, int nr,
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

/* NR x NC (at most 4 x 4) on f32 weight rows: per 16 values, NC activation loads and NR weight
 * loads feed NR*NC multiply-adds. */
TSR_AVX512_INLINE void gm_tile(const int nr, const int nc, int k, const float *w, size_t ldw,
                               const float *x, size_t ldx, float *y, size_t ldy)
{
    __m512 acc[4][4], xv[4];
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int j = 0; j < nc; j++) acc[r][j] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= k; i += 16) {
#pragma GCC unroll 4
        for (int j = 0; j < nc; j++) xv[j] = _mm512_loadu_ps(x + (size_t)j * ldx + i);
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            __m512 wv = _mm512_loadu_ps(w + (size_t)r * ldw + i);
#pragma GCC unroll 4
            for (int j = 0; j < nc; j++) acc[r][j] = _mm512_fmadd_ps(wv, xv[j], acc[r][j]);
        }
    }
    if (i < k) {
        __mmask16 m = (__mmask16)((1u << (k - i)) - 1);
#pragma GCC unroll 4
        for (int j = 0; j < nc; j++) xv[j] = _mm512_maskz_loadu_ps(m, x + (size_t)j * ldx + i);
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            __m512 wv = _mm512_maskz_loadu_ps(m, w + (size_t)r * ldw + i);
#pragma GCC unroll 4
            for (int j = 0; j < nc; j++) acc[r][j] = _mm512_fmadd_ps(wv, xv[j], acc[r][j]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int j = 0; j < nc; j++) y[(size_t)j * ldy + r] = reduce16(acc[r][j]);
}

/* Activation rows 4 at a time (they stay in L1 while the weight rows stream past), weight rows
 * 4 at a time within. */
TSR_AVX512 static void gemm_f32(int k, const float *w, size_t ldw, int nr, const float *x,
                                size_t ldx, int nc, float *y, size_t ldy)
{
    for (int j = 0; j < nc; j += 4) {
        const float *xj = x + (size_t)j * ldx;
        float *yj = y + (size_t)j * ldy;
        int m = nc - j < 4 ? nc - j : 4, r = 0;
        for (; r + 4 <= nr; r += 4) {
            const float *wr = w + (size_t)r * ldw;
            if (m == 4)
                gm_tile(4, 4, k, wr, ldw, xj, ldx, yj + r, ldy);
            else if (m == 3)
                gm_tile(4, 3, k, wr, ldw, xj, ldx, yj + r, ldy);
            else if (m == 2)
                gm_tile(4, 2, k, wr, ldw, xj, ldx, yj + r, ldy);
            else
                gm_tile(4, 1, k, wr, ldw, xj, ldx, yj + r, ldy);
        }
        for (; r < nr; r++) {
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

/* ---- vector helpers for attention and SwiGLU ---- */

static inline __mmask16 tail_mask(int n)
{
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
}

/* A row's quantized blocks to f32, 8 blocks' scales converted at once as in gv_tile. */
TSR_AVX512_INLINE void deq_row(const enum tsr_dtype wt, const uint8_t *src, float *dst, int nb)
{
    const size_t bs = block_size(wt);
    float sd[8], sm[8];
    for (int b0 = 0; b0 < nb; b0 += 8) {
        const int gb = nb - b0 < 8 ? nb - b0 : 8;
        const uint8_t *g = src + (size_t)b0 * bs;
        if (gb == 8)
            group_scales(wt, g, sd, sm);
        else
            for (int b = 0; b < gb; b++) block_scales(wt, g + b * bs, &sd[b], &sm[b]);
        for (int b = 0; b < gb; b++) {
            __m512 lo, hi;
            deq_block_s(wt, g + b * bs, &sd[b], &sm[b], &lo, &hi);
            _mm512_storeu_ps(dst + (size_t)(b0 + b) * TSR_QK, lo);
            _mm512_storeu_ps(dst + (size_t)(b0 + b) * TSR_QK + 16, hi);
        }
    }
}

TSR_AVX512 static void dequant(enum tsr_dtype wt, const uint8_t *src, float *dst, int n)
{
    if (tsr_cpu_decoded(wt)) {
        tsr_dequantize_row(wt, src, dst, n);
        return;
    }
    switch (wt) {
    case TSR_Q4_1:
        deq_row(TSR_Q4_1, src, dst, n / TSR_QK);
        return;
    case TSR_Q4_0:
        deq_row(TSR_Q4_0, src, dst, n / TSR_QK);
        return;
    case TSR_Q8_0:
        deq_row(TSR_Q8_0, src, dst, n / TSR_QK);
        return;
    default:
        break;
    }
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 v = wt == TSR_F16    ? load_w_mask(TSR_F16, src, i, m)
                   : wt == TSR_BF16 ? load_w_mask(TSR_BF16, src, i, m)
                                    : load_w_mask(TSR_F32, src, i, m);
        _mm512_mask_storeu_ps(dst + i, m, v);
    }
}

/* Scores 4 rows at a time: 4 accumulators, one reduction for the 4. */
TSR_AVX512 static void attn_scores(const float *q, const float *k, size_t ks, int n, int hd,
                                   float scale, float *sc)
{
    const __m128 vs = _mm_set1_ps(scale);
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        const float *kr = k + (size_t)i * ks;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int d = 0; d < hd; d += 16) {
            __mmask16 m = tail_mask(hd - d);
            __m512 qv = _mm512_maskz_loadu_ps(m, q + d);
            a0 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, kr + d), a0);
            a1 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, kr + ks + d), a1);
            a2 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, kr + 2 * ks + d), a2);
            a3 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, kr + 3 * ks + d), a3);
        }
        __m512 acc0[4] = {a0, a1, a2, a3}, acc1[4];
        __m256 accm[4];
        for (int j = 0; j < 4; j++) {
            acc1[j] = _mm512_setzero_ps();
            accm[j] = _mm256_setzero_ps();
        }
        _mm_storeu_ps(sc + i, _mm_mul_ps(reduce4(acc0, acc1, accm), vs));
    }
    for (; i < n; i++) {
        const float *kr = k + (size_t)i * ks;
        __m512 a0 = _mm512_setzero_ps();
        for (int d = 0; d < hd; d += 16) {
            __mmask16 m = tail_mask(hd - d);
            a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + d), _mm512_maskz_loadu_ps(m, kr + d),
                                 a0);
        }
        sc[i] = _mm512_reduce_add_ps(a0) * scale;
    }
}

/* acc += Σ p[i] v_i, 64 columns of acc in registers at a time. */
TSR_AVX512 static void attn_accum(const float *p, const float *v, size_t vs, int n, int hd,
                                  float *acc)
{
    int d = 0;
    for (; d + 64 <= hd; d += 64) {
        __m512 a0 = _mm512_loadu_ps(acc + d), a1 = _mm512_loadu_ps(acc + d + 16);
        __m512 a2 = _mm512_loadu_ps(acc + d + 32), a3 = _mm512_loadu_ps(acc + d + 48);
        for (int i = 0; i < n; i++) {
            const float *vr = v + (size_t)i * vs + d;
            __m512 pi = _mm512_set1_ps(p[i]);
            a0 = _mm512_fmadd_ps(pi, _mm512_loadu_ps(vr), a0);
            a1 = _mm512_fmadd_ps(pi, _mm512_loadu_ps(vr + 16), a1);
            a2 = _mm512_fmadd_ps(pi, _mm512_loadu_ps(vr + 32), a2);
            a3 = _mm512_fmadd_ps(pi, _mm512_loadu_ps(vr + 48), a3);
        }
        _mm512_storeu_ps(acc + d, a0);
        _mm512_storeu_ps(acc + d + 16, a1);
        _mm512_storeu_ps(acc + d + 32, a2);
        _mm512_storeu_ps(acc + d + 48, a3);
    }
    for (; d < hd; d += 16) {
        __mmask16 m = tail_mask(hd - d);
        __m512 a0 = _mm512_maskz_loadu_ps(m, acc + d);
        for (int i = 0; i < n; i++)
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(p[i]),
                                 _mm512_maskz_loadu_ps(m, v + (size_t)i * vs + d), a0);
        _mm512_mask_storeu_ps(acc + d, m, a0);
    }
}

TSR_AVX512 static void scale(float a, float *y, int n)
{
    __m512 va = _mm512_set1_ps(a);
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m, y + i)));
    }
}

/* e^x for f32 lanes: Cephes' expf (range reduction by ln 2 in two parts, degree-5 polynomial,
 * about 1 ulp), 2^n applied with vscalefps so overflow gives inf and underflow 0. */
TSR_AVX512_INLINE __m512 exp512(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(89.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500E-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
    __m512 e = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(e, n);
}

TSR_AVX512 static float exp_sum(float *x, float mx, int n)
{
    __m512 vm = _mm512_set1_ps(mx), acc = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm));
        _mm512_mask_storeu_ps(x + i, m, e);
        acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(m, e));
    }
    return _mm512_reduce_add_ps(acc);
}

TSR_AVX512 static void silu_mul(float *out, const float *g, const float *u, int n)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 vg = _mm512_maskz_loadu_ps(m, g + i), vu = _mm512_maskz_loadu_ps(m, u + i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), vg));
        __m512 s = _mm512_div_ps(vg, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(s, vu));
    }
}

const struct tsr_cpu_kernels tsr_cpu_kernels_avx512 = {
    .isa = TSR_CPU_AVX512,
    .init = init_tables,
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
