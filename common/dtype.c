#include "common/dtype.h"

#include <math.h>

_Static_assert(sizeof(struct tsr_block_q5_0) == 22, "Q5_0 block is 22 bytes");
_Static_assert(sizeof(struct tsr_block_q5_1) == 24, "Q5_1 block is 24 bytes");
_Static_assert(sizeof(struct tsr_block_q4_k) == 144, "Q4_K block is 144 bytes");
_Static_assert(sizeof(struct tsr_block_q5_k) == 176, "Q5_K block is 176 bytes");
_Static_assert(sizeof(struct tsr_block_q6_k) == 210, "Q6_K block is 210 bytes");
_Static_assert(sizeof(struct tsr_block_f8) == 36, "F8_E4M3 block is 36 bytes");

int tsr_dtype_valid(int t)
{
    return t == TSR_F32 || t == TSR_F16 || t == TSR_BF16 || t == TSR_Q8_0 || t == TSR_Q4_0 ||
           t == TSR_Q4_1 || tsr_dtype_is_q5(t) || tsr_dtype_is_kquant(t) || t == TSR_F8_E4M3;
}

const char *tsr_dtype_name(int t)
{
    switch (t) {
    case TSR_F32:
        return "F32";
    case TSR_F16:
        return "F16";
    case TSR_BF16:
        return "BF16";
    case TSR_Q8_0:
        return "Q8_0";
    case TSR_Q4_0:
        return "Q4_0";
    case TSR_Q4_1:
        return "Q4_1";
    case TSR_Q5_0:
        return "Q5_0";
    case TSR_Q5_1:
        return "Q5_1";
    case TSR_Q4_K:
        return "Q4_K";
    case TSR_Q5_K:
        return "Q5_K";
    case TSR_Q6_K:
        return "Q6_K";
    case TSR_F8_E4M3:
        return "F8_E4M3";
    default:
        return "unknown";
    }
}

int tsr_dtype_block_elems(enum tsr_dtype t)
{
    if (tsr_dtype_is_kquant(t)) return TSR_QK_K;
    return (t == TSR_Q8_0 || t == TSR_Q4_0 || t == TSR_Q4_1 || tsr_dtype_is_q5(t) ||
            t == TSR_F8_E4M3)
               ? TSR_QK
               : 1;
}

size_t tsr_dtype_block_bytes(enum tsr_dtype t)
{
    switch (t) {
    case TSR_F32:
        return 4;
    case TSR_F16:
    case TSR_BF16:
        return 2;
    case TSR_Q8_0:
        return sizeof(struct tsr_block_q8_0);
    case TSR_Q4_0:
        return sizeof(struct tsr_block_q4_0);
    case TSR_Q4_1:
        return sizeof(struct tsr_block_q4_1);
    case TSR_Q5_0:
        return sizeof(struct tsr_block_q5_0);
    case TSR_Q5_1:
        return sizeof(struct tsr_block_q5_1);
    case TSR_Q4_K:
        return sizeof(struct tsr_block_q4_k);
    case TSR_Q5_K:
        return sizeof(struct tsr_block_q5_k);
    case TSR_Q6_K:
        return sizeof(struct tsr_block_q6_k);
    case TSR_F8_E4M3:
        return sizeof(struct tsr_block_f8);
    }
    return 0;
}

size_t tsr_dtype_row_bytes(enum tsr_dtype t, int64_t n)
{
    int be = tsr_dtype_block_elems(t);
    if (n < 0 || n % be) return 0;
    return (size_t)(n / be) * tsr_dtype_block_bytes(t);
}

/* ---- Q5_0/Q5_1 and the k-quants (layouts in dtype.h). Blocks are read through byte offsets: a
 * row of 22-byte Q5_0 or 210-byte Q6_K blocks, or a slice of one, need not be aligned for a
 * struct. ---- */

static float f16_at(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return tsr_f16_to_f32(h);
}

/* One Q5_0 (one = 0) or Q5_1 (one = 1) block to 32 floats. */
static void deq_q5(const uint8_t *b, float *y, int one)
{
    float d = f16_at(b), m = one ? f16_at(b + 2) : 0.0f;
    const uint8_t *qh = b + (one ? 4 : 2), *qs = qh + 4;
    for (int j = 0; j < TSR_QK; j++) {
        int v = ((qs[j % 16] >> (j < 16 ? 0 : 4)) & 15) | ((qh[j / 8] >> (j % 8)) & 1) << 4;
        y[j] = one ? d * (float)v + m : d * (float)(v - 16); /* the products are exact */
    }
}

/* The 6-bit scale and min of sub-block s (< 8) from a Q4_K/Q5_K block's 12 scale bytes. */
static void kq_scale_min(const uint8_t *q, int s, int *sc, int *m)
{
    if (s < 4) {
        *sc = q[s] & 63;
        *m = q[s + 4] & 63;
    } else {
        *sc = (q[s + 4] & 15) | (q[s - 4] >> 6) << 4;
        *m = (q[s + 4] >> 4) | (q[s] >> 6) << 4;
    }
}

/* One Q4_K (five = 0) or Q5_K (five = 1) block to 256 floats. */
static void deq_q45_k(const uint8_t *b, float *y, int five)
{
    float d = f16_at(b), dmin = f16_at(b + 2);
    const uint8_t *scales = b + 4, *qh = b + 16, *qs = b + (five ? 48 : 16);
    for (int s = 0; s < 8; s++) {
        int sc, m;
        kq_scale_min(scales, s, &sc, &m);
        float d1 = d * (float)sc, m1 = dmin * (float)m; /* both exact */
        const uint8_t *q = qs + 32 * (s / 2);
        int shift = 4 * (s & 1);
        float *o = y + 32 * s;
        for (int l = 0; l < 32; l++) {
            int v = (q[l] >> shift) & 15;
            if (five) v |= ((qh[l] >> s) & 1) << 4;
            o[l] = d1 * (float)v - m1; /* the product is exact: one rounding */
        }
    }
}

static void deq_q6_k(const uint8_t *b, float *y)
{
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = f16_at(b + 208);
    for (int h = 0; h < 2; h++)
        for (int t = 0; t < 4; t++) {
            const uint8_t *lo = ql + 64 * h + 32 * (t & 1), *hi = qh + 32 * h;
            int shift = 4 * (t >> 1);
            float d0 = d * (float)sc[8 * h + 2 * t], d1 = d * (float)sc[8 * h + 2 * t + 1];
            float *o = y + 128 * h + 32 * t;
            for (int l = 0; l < 32; l++) {
                int v = ((lo[l] >> shift) & 15) | ((hi[l] >> (2 * t)) & 3) << 4;
                o[l] = (l < 16 ? d0 : d1) * (float)(v - 32); /* exact */
            }
        }
}

/* Quantizers for synthetic models and tests: every value a plain fit, no search. */

static int clampi(long v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : (int)v;
}

/* GGML's reference rounding: Q5_0 scales by the signed value of largest magnitude over -16 (so it
 * is code 0), Q5_1 spans min..max in 31 steps. */
static void quant_q5(const float *x, uint8_t *b, int one)
{
    float lo = x[0], hi = x[0], amax = 0, max = 0;
    for (int j = 0; j < TSR_QK; j++) {
        lo = fminf(lo, x[j]), hi = fmaxf(hi, x[j]);
        if (fabsf(x[j]) > amax) amax = fabsf(x[j]), max = x[j];
    }
    float d = one ? (hi - lo) / 31.0f : max / -16.0f, id = d != 0 ? 1.0f / d : 0.0f;
    uint16_t dh = tsr_f32_to_f16(d), mh = tsr_f32_to_f16(lo);
    memcpy(b, &dh, 2);
    if (one) memcpy(b + 2, &mh, 2);
    uint8_t *qh = b + (one ? 4 : 2), *qs = qh + 4;
    memset(qh, 0, 4 + TSR_QK / 2);
    for (int j = 0; j < TSR_QK; j++) {
        float f = one ? (x[j] - lo) * id + 0.5f : x[j] * id + 16.5f;
        int v = clampi((long)f, 0, 31); /* truncation, as ggml's casts */
        qs[j % 16] |= (uint8_t)((v & 15) << (j < 16 ? 0 : 4));
        qh[j / 8] |= (uint8_t)((v >> 4) << (j % 8));
    }
}

static void quant_q45_k(const float *x, uint8_t *b, int five)
{
    const int nmax = five ? 31 : 15;
    float scale[8], mn[8], smax = 0, mmax = 0;
    for (int s = 0; s < 8; s++) { /* w ≈ scale * q - mn, q in [0, nmax], mn >= 0 */
        float lo = 0, hi = x[32 * s];
        for (int l = 0; l < 32; l++) lo = fminf(lo, x[32 * s + l]), hi = fmaxf(hi, x[32 * s + l]);
        scale[s] = (hi - lo) / (float)nmax;
        mn[s] = -lo;
        smax = fmaxf(smax, scale[s]);
        mmax = fmaxf(mmax, mn[s]);
    }
    uint16_t dh = tsr_f32_to_f16(smax / 63), mh = tsr_f32_to_f16(mmax / 63);
    memcpy(b, &dh, 2);
    memcpy(b + 2, &mh, 2);
    float d = tsr_f16_to_f32(dh), dmin = tsr_f16_to_f32(mh);
    uint8_t *scales = b + 4, *qh = b + 16, *qs = b + (five ? 48 : 16);
    memset(scales, 0, 12);
    memset(qs, 0, 128);
    if (five) memset(qh, 0, 32);
    for (int s = 0; s < 8; s++) {
        int sc = d > 0 ? clampi(lrintf(scale[s] / d), 0, 63) : 0;
        int m = dmin > 0 ? clampi(lrintf(mn[s] / dmin), 0, 63) : 0;
        if (s < 4) {
            scales[s] |= (uint8_t)sc;
            scales[s + 4] |= (uint8_t)m;
        } else {
            scales[s + 4] = (uint8_t)((sc & 15) | (m & 15) << 4);
            scales[s - 4] |= (uint8_t)((sc >> 4) << 6);
            scales[s] |= (uint8_t)((m >> 4) << 6);
        }
        float ds = d * (float)sc, dm = dmin * (float)m;
        for (int l = 0; l < 32; l++) {
            int v = ds > 0 ? clampi(lrintf((x[32 * s + l] + dm) / ds), 0, nmax) : 0;
            qs[32 * (s / 2) + l] |= (uint8_t)((v & 15) << 4 * (s & 1));
            if (five) qh[l] |= (uint8_t)((v >> 4) << s);
        }
    }
}

static void quant_q6_k(const float *x, uint8_t *b)
{
    float scale[16], smax = 0;
    for (int s = 0; s < 16; s++) { /* w ≈ scale * q, q in [-31, 31] */
        float amax = 0;
        for (int l = 0; l < 16; l++) amax = fmaxf(amax, fabsf(x[16 * s + l]));
        scale[s] = amax / 31;
        smax = fmaxf(smax, scale[s]);
    }
    uint16_t dh = tsr_f32_to_f16(smax / 127);
    memcpy(b + 208, &dh, 2);
    float d = tsr_f16_to_f32(dh);
    uint8_t *ql = b, *qh = b + 128;
    int8_t *sc = (int8_t *)(b + 192);
    memset(b, 0, 192);
    for (int s = 0; s < 16; s++) sc[s] = (int8_t)(d > 0 ? clampi(lrintf(scale[s] / d), 0, 127) : 0);
    for (int i = 0; i < TSR_QK_K; i++) {
        float ds = d * (float)sc[i / 16];
        int v = (ds > 0 ? clampi(lrintf(x[i] / ds), -32, 31) : 0) + 32;
        int h = i / 128, t = i % 128 / 32, l = i % 32;
        ql[64 * h + 32 * (t & 1) + l] |= (uint8_t)((v & 15) << 4 * (t >> 1));
        qh[32 * h + l] |= (uint8_t)((v >> 4) << 2 * t);
    }
}

/* GGML's reference Q8_0 block: d = amax / 127, q rounded half away from zero. */
static void quant_q8_0(const float *x, struct tsr_block_q8_0 *b)
{
    float amax = 0;
    for (int j = 0; j < TSR_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
    b->d = tsr_f32_to_f16(d);
    for (int j = 0; j < TSR_QK; j++) b->qs[j] = (int8_t)roundf(x[j] * id);
}

float tsr_quantize_e4m3(const float *x, int n, uint8_t *q)
{
    float amax = 0;
    for (int j = 0; j < n; j++) amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 448.0f;
    for (int j = 0; j < n; j++) q[j] = tsr_f32_to_e4m3(d ? x[j] / d : 0.0f);
    return d;
}

/* An F8_E4M3 block (36 bytes at blk): tsr_quantize_e4m3's scale, then its codes. */
static void quant_f8(const float *x, uint8_t *blk)
{
    float d = tsr_quantize_e4m3(x, TSR_QK, blk + 4);
    memcpy(blk, &d, 4);
}

void tsr_dequantize_row(enum tsr_dtype t, const void *src, float *dst, int64_t n)
{
    switch (t) {
    case TSR_F32:
        memcpy(dst, src, (size_t)n * 4);
        break;
    case TSR_F16:
    case TSR_BF16: { /* a safetensors tensor after 1-byte F8 ones may sit at an odd address */
        const uint8_t *s = src;
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = t == TSR_F16 ? tsr_f16_to_f32(h) : tsr_bf16_to_f32(h);
        }
        break;
    }
    case TSR_Q8_0: {
        const struct tsr_block_q8_0 *b = src;
        for (int64_t i = 0; i < n / TSR_QK; i++) {
            float d = tsr_f16_to_f32(b[i].d);
            for (int j = 0; j < TSR_QK; j++) dst[i * TSR_QK + j] = d * (float)b[i].qs[j];
        }
        break;
    }
    case TSR_Q4_0: {
        const struct tsr_block_q4_0 *b = src;
        for (int64_t i = 0; i < n / TSR_QK; i++) {
            float d = tsr_f16_to_f32(b[i].d);
            for (int j = 0; j < TSR_QK / 2; j++) {
                dst[i * TSR_QK + j] = d * (float)((b[i].qs[j] & 0x0f) - 8);
                dst[i * TSR_QK + j + 16] = d * (float)((b[i].qs[j] >> 4) - 8);
            }
        }
        break;
    }
    case TSR_Q4_1: {
        const struct tsr_block_q4_1 *b = src;
        for (int64_t i = 0; i < n / TSR_QK; i++) {
            float d = tsr_f16_to_f32(b[i].d), m = tsr_f16_to_f32(b[i].m);
            for (int j = 0; j < TSR_QK / 2; j++) {
                dst[i * TSR_QK + j] = d * (float)(b[i].qs[j] & 0x0f) + m;
                dst[i * TSR_QK + j + 16] = d * (float)(b[i].qs[j] >> 4) + m;
            }
        }
        break;
    }
    case TSR_Q5_0:
    case TSR_Q5_1: {
        const uint8_t *b = src;
        size_t bs = tsr_dtype_block_bytes(t);
        for (int64_t i = 0; i < n / TSR_QK; i++)
            deq_q5(b + (size_t)i * bs, dst + i * TSR_QK, t == TSR_Q5_1);
        break;
    }
    case TSR_Q4_K:
    case TSR_Q5_K:
    case TSR_Q6_K: {
        const uint8_t *b = src;
        size_t bs = tsr_dtype_block_bytes(t);
        for (int64_t i = 0; i < n / TSR_QK_K; i++) {
            if (t == TSR_Q6_K)
                deq_q6_k(b + (size_t)i * bs, dst + i * TSR_QK_K);
            else
                deq_q45_k(b + (size_t)i * bs, dst + i * TSR_QK_K, t == TSR_Q5_K);
        }
        break;
    }
    case TSR_F8_E4M3: {
        const uint8_t *b = src;
        for (int64_t i = 0; i < n / TSR_QK; i++) {
            const uint8_t *blk = b + (size_t)i * sizeof(struct tsr_block_f8);
            float d;
            memcpy(&d, blk, 4);
            for (int j = 0; j < TSR_QK; j++) dst[i * TSR_QK + j] = d * tsr_e4m3_to_f32(blk[4 + j]);
        }
        break;
    }
    }
}

void tsr_quantize_row(enum tsr_dtype t, const float *src, void *dst, int64_t n)
{
    switch (t) {
    case TSR_F32:
        memcpy(dst, src, (size_t)n * 4);
        break;
    case TSR_F16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = tsr_f32_to_f16(src[i]);
        break;
    }
    case TSR_BF16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = tsr_f32_to_bf16(src[i]);
        break;
    }
    case TSR_Q8_0: {
        struct tsr_block_q8_0 *b = dst;
        for (int64_t i = 0; i < n / TSR_QK; i++) quant_q8_0(src + i * TSR_QK, &b[i]);
        break;
    }
    case TSR_Q4_0: {
        struct tsr_block_q4_0 *b = dst;
        for (int64_t i = 0; i < n / TSR_QK; i++) {
            const float *x = src + i * TSR_QK;
            float amax = 0, max = 0;
            for (int j = 0; j < TSR_QK; j++)
                if (fabsf(x[j]) > amax) amax = fabsf(x[j]), max = x[j];
            float d = max / -8.0f, id = d ? 1.0f / d : 0.0f;
            b[i].d = tsr_f32_to_f16(d);
            for (int j = 0; j < TSR_QK / 2; j++) {
                int lo = (int)(x[j] * id + 8.5f), hi = (int)(x[j + 16] * id + 8.5f);
                lo = lo > 15 ? 15 : lo;
                hi = hi > 15 ? 15 : hi;
                b[i].qs[j] = (uint8_t)(lo | (hi << 4));
            }
        }
        break;
    }
    case TSR_Q4_1: {
        struct tsr_block_q4_1 *b = dst;
        for (int64_t i = 0; i < n / TSR_QK; i++) {
            const float *x = src + i * TSR_QK;
            float min = x[0], max = x[0];
            for (int j = 1; j < TSR_QK; j++) min = fminf(min, x[j]), max = fmaxf(max, x[j]);
            float d = (max - min) / 15.0f, id = d ? 1.0f / d : 0.0f;
            b[i].d = tsr_f32_to_f16(d);
            b[i].m = tsr_f32_to_f16(min);
            for (int j = 0; j < TSR_QK / 2; j++) {
                int lo = (int)((x[j] - min) * id + 0.5f), hi = (int)((x[j + 16] - min) * id + 0.5f);
                lo = lo > 15 ? 15 : lo;
                hi = hi > 15 ? 15 : hi;
                b[i].qs[j] = (uint8_t)(lo | (hi << 4));
            }
        }
        break;
    }
    case TSR_Q5_0:
    case TSR_Q5_1: {
        uint8_t *b = dst;
        size_t bs = tsr_dtype_block_bytes(t);
        for (int64_t i = 0; i < n / TSR_QK; i++)
            quant_q5(src + i * TSR_QK, b + (size_t)i * bs, t == TSR_Q5_1);
        break;
    }
    case TSR_Q4_K:
    case TSR_Q5_K:
    case TSR_Q6_K: {
        uint8_t *b = dst;
        size_t bs = tsr_dtype_block_bytes(t);
        for (int64_t i = 0; i < n / TSR_QK_K; i++) {
            if (t == TSR_Q6_K)
                quant_q6_k(src + i * TSR_QK_K, b + (size_t)i * bs);
            else
                quant_q45_k(src + i * TSR_QK_K, b + (size_t)i * bs, t == TSR_Q5_K);
        }
        break;
    }
    case TSR_F8_E4M3: {
        uint8_t *b = dst;
        for (int64_t i = 0; i < n / TSR_QK; i++)
            quant_f8(src + i * TSR_QK, b + (size_t)i * sizeof(struct tsr_block_f8));
        break;
    }
    }
}

uint8_t tsr_f32_to_e4m3(float f)
{
    uint8_t sign = signbit(f) ? 0x80 : 0;
    if (isnan(f)) return sign | 0x7f;
    float a = fabsf(f);
    if (a < 0x1p-6f) /* subnormal (or 0): multiples of 2^-9; 8 of them is the smallest normal */
        return sign | (uint8_t)rintf(a * 0x1p9f);
    if (a > 448.0f) return sign | 0x7e;
    int k;
    float fr = frexpf(a, &k); /* a = fr * 2^k, fr in [0.5, 1) */
    int e = k - 1, m = (int)rintf((fr * 2.0f - 1.0f) * 8.0f);
    if (m == 8) e++, m = 0;
    if (e + 7 > 15 || (e + 7 == 15 && m == 7)) return sign | 0x7e;
    return sign | (uint8_t)((e + 7) << 3 | m);
}

/* ---- tsr_quantize_row_search: Q8_0 and F8_E4M3 blocks with a searched scale ----
 *
 * Each candidate scale takes one pass over the block: its codes (nearest, clamped), then the
 * sums s_xq = sum x q and s_qq = sum q q. The scale that best fits those codes is s_xq / s_qq,
 * and its squared error s_xx - s_xq^2 / s_qq, so one pass ranks a candidate with its scale
 * refitted. The winner's refitted scale (rounded to f16 for Q8_0, as stored) has its codes made
 * anew, each the nearest again, and the block is kept only if its decoded squared error is under
 * the absmax block's. The passes use 4-float vectors (one SSE or NEON register: GCC's -O2
 * vectoriser leaves these loops scalar), in f32: the ranking only picks a candidate, the final
 * comparison is exact (in double, on the decoded values, as tsr_dequantize_row decodes them). */

typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

/* Adding and taking away 1.5 * 2^23 rounds a float under 2^22 in magnitude to an integer
 * (to nearest even). */
#define RNE_MAGIC 12582912.0f

static v4f v4_load(const float *p)
{
    v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static v4f v4_select(v4i m, v4f a, v4f b) /* a where m, else b */
{
    return (v4f)(((v4i)a & m) | ((v4i)b & ~m));
}

static float v4_sum(v4f a)
{
    return (a[0] + a[2]) + (a[1] + a[3]);
}

/* The largest |x| (NaN if there is one) and the sum of squares of a block. */
static void block_amax_sxx(const float *x, float *amax, float *sxx)
{
    const v4f z = {0, 0, 0, 0};
    const v4i abs = (v4i){0, 0, 0, 0} + INT32_MAX;
    v4f m = z, s = z;
    for (int j = 0; j < TSR_QK; j += 4) {
        v4f xv = v4_load(x + j), a = (v4f)((v4i)xv & abs);
        m = v4_select(a > m, a, v4_select(a == a, m, a)); /* a NaN stays */
        s += xv * xv;
    }
    float r = m[0];
    for (int l = 1; l < 4; l++) r = m[l] > r || m[l] != m[l] ? m[l] : r;
    *amax = r;
    *sxx = v4_sum(s);
}

/* q = x * ic rounded to nearest even and clamped to +-127: the codes for a scale 1 / ic. */
static void q8_codes(const float *x, float ic, int8_t *q)
{
    const v4f z = {0, 0, 0, 0}, m = z + RNE_MAGIC, lim = z + 127.0f;
    for (int j = 0; j < TSR_QK; j += 4) {
        v4f v = (v4_load(x + j) * ic + m) - m;
        v = v4_select(v > lim, lim, v4_select(v < -lim, -lim, v));
        for (int l = 0; l < 4; l++) q[j + l] = (int8_t)v[l];
    }
}

/* quant_q8_0's block, its roundf (half away from zero) made from the nearest-even rounding. */
static void quant_q8_0_v4(const float *x, float amax, struct tsr_block_q8_0 *b)
{
    float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
    b->d = tsr_f32_to_f16(d);
    const v4f z = {0, 0, 0, 0}, m = z + RNE_MAGIC, half = z + 0.5f;
    for (int j = 0; j < TSR_QK; j += 4) {
        v4f v = v4_load(x + j) * id, r = (v + m) - m, t = v - r;
        v4f away = v + v4_select(v < z, -half, half);
        r = v4_select((t == half) | (t == -half), away, r);
        for (int l = 0; l < 4; l++) b->qs[j + l] = (int8_t)r[l];
    }
}

/* For 4 scales 1 / ic[g]: s_xq and s_qq of the codes (q8_codes' without the clamp, which the
 * candidates' codes never reach). 4 candidates a pass keep 8 chains of adds going, where one
 * would wait on its adds' latency (twice as fast per candidate). */
static void q8_sums4(const float *x, const float *ic, float *sxq, float *sqq)
{
    const v4f z = {0, 0, 0, 0}, m = z + RNE_MAGIC;
    /* named, not arrays: GCC keeps these in registers */
    v4f a0 = z, a1 = z, a2 = z, a3 = z, c0 = z, c1 = z, c2 = z, c3 = z;
    for (int j = 0; j < TSR_QK; j += 4) {
        v4f xv = v4_load(x + j), q0 = (xv * ic[0] + m) - m, q1 = (xv * ic[1] + m) - m;
        v4f q2 = (xv * ic[2] + m) - m, q3 = (xv * ic[3] + m) - m;
        a0 += xv * q0, a1 += xv * q1, a2 += xv * q2, a3 += xv * q3;
        c0 += q0 * q0, c1 += q1 * q1, c2 += q2 * q2, c3 += q3 * q3;
    }
    sxq[0] = v4_sum(a0), sxq[1] = v4_sum(a1), sxq[2] = v4_sum(a2), sxq[3] = v4_sum(a3);
    sqq[0] = v4_sum(c0), sqq[1] = v4_sum(c1), sqq[2] = v4_sum(c2), sqq[3] = v4_sum(c3);
}

/* Squared error of a Q8_0 block against x, decoded as tsr_dequantize_row does. */
static double q8_err(const float *x, const struct tsr_block_q8_0 *b)
{
    float d = tsr_f16_to_f32(b->d);
    double e = 0;
    for (int j = 0; j < TSR_QK; j++) {
        double t = (double)x[j] - (double)(d * (float)b->qs[j]);
        e += t * t;
    }
    return e;
}

/* Candidates amax / (127 - k) for k < Q8_CANDIDATES (a multiple of 4): the largest weight on
 * code 127 - k before the refit. Smaller scales (the largest weight clamped) almost never win
 * on the default model. On its weights 24 candidates cut the Q8_0 squared error by 70% (8: 44%,
 * 32: 76%) at about twice tsr_quantize_row's time. */
enum { Q8_CANDIDATES = 24 };

static void quant_q8_0_search(const float *x, struct tsr_block_q8_0 *b)
{
    float amax = 0, sxx = 0;
    block_amax_sxx(x, &amax, &sxx);
    if (!(amax > 0) || !isfinite(sxx)) {
        quant_q8_0(x, b);
        return;
    }
    quant_q8_0_v4(x, amax, b);
    float best = -1, best_d = 0, ia = 1.0f / amax;
    for (int k = 0; k < Q8_CANDIDATES; k += 4) {
        float ic[4], sxq[4], sqq[4];
        for (int g = 0; g < 4; g++) ic[g] = (float)(127 - k - g) * ia;
        q8_sums4(x, ic, sxq, sqq);
        for (int g = 0; g < 4; g++) {
            float fit = sxq[g] * (sxq[g] / sqq[g]); /* the error is s_xx - fit: the largest wins */
            if (sqq[g] > 0 && fit > best) best = fit, best_d = sxq[g] / sqq[g];
        }
    }
    struct tsr_block_q8_0 c;
    c.d = tsr_f32_to_f16(best_d);
    float d = tsr_f16_to_f32(c.d);
    if (!(d > 0)) return;
    q8_codes(x, 1.0f / d, c.qs);
    if (q8_err(x, &c) < q8_err(x, b)) *b = c;
}

/* Each lane's nearest E4M3 value (to nearest even; 448 above 448), as tsr_f32_to_e4m3 rounds:
 * normals keep 3 fraction bits, rounded in the f32 bits; under 2^-6 multiples of 2^-9. */
static v4f e4m3_round(v4f v)
{
    const v4f z = {0, 0, 0, 0};
    const v4i sign = (v4i){0, 0, 0, 0} + INT32_MIN;
    v4f a = (v4f)((v4i)v & ~sign);
    a = v4_select(a > z + 448.0f, z + 448.0f, a);
    v4i u = (v4i)a;
    u = (u + 0x7ffff + ((u >> 20) & 1)) & ~0xfffff;
    v4f sub = (a + 0x1p14f) - 0x1p14f;
    a = v4_select(a < z + 0x1p-6f, sub, (v4f)u);
    return (v4f)((v4i)a | ((v4i)v & sign));
}

/* The E4M3 code of a value e4m3_round made. */
static uint8_t e4m3_code(float r)
{
    uint32_t u;
    memcpy(&u, &r, 4);
    uint8_t sign = (uint8_t)(u >> 24 & 0x80);
    float a = fabsf(r);
    if (a < 0x1p-6f) return sign | (uint8_t)(a * 0x1p9f); /* exact: 0..7 */
    return sign | (uint8_t)((((u >> 23 & 0xff) - 127 + 7) << 3) | (u >> 20 & 7));
}

/* The codes of x * ic, each the nearest. */
static void f8_codes(const float *x, float ic, uint8_t *q)
{
    for (int j = 0; j < TSR_QK; j += 4) {
        v4f r = e4m3_round(v4_load(x + j) * ic);
        for (int l = 0; l < 4; l++) q[j + l] = e4m3_code(r[l]);
    }
}

/* For 4 scales 1 / ic[g]: s_xr and s_rr of the nearest E4M3 values r (as q8_sums4). */
static void f8_sums4(const float *x, const float *ic, float *sxr, float *srr)
{
    const v4f z = {0, 0, 0, 0};
    v4f a0 = z, a1 = z, a2 = z, a3 = z, c0 = z, c1 = z, c2 = z, c3 = z;
    for (int j = 0; j < TSR_QK; j += 4) {
        v4f xv = v4_load(x + j), r0 = e4m3_round(xv * ic[0]), r1 = e4m3_round(xv * ic[1]);
        v4f r2 = e4m3_round(xv * ic[2]), r3 = e4m3_round(xv * ic[3]);
        a0 += xv * r0, a1 += xv * r1, a2 += xv * r2, a3 += xv * r3;
        c0 += r0 * r0, c1 += r1 * r1, c2 += r2 * r2, c3 += r3 * r3;
    }
    sxr[0] = v4_sum(a0), sxr[1] = v4_sum(a1), sxr[2] = v4_sum(a2), sxr[3] = v4_sum(a3);
    srr[0] = v4_sum(c0), srr[1] = v4_sum(c1), srr[2] = v4_sum(c2), srr[3] = v4_sum(c3);
}

static double f8_err(const float *x, const uint8_t *blk)
{
    float d;
    memcpy(&d, blk, 4);
    double e = 0;
    for (int j = 0; j < TSR_QK; j++) {
        double t = (double)x[j] - (double)(d * tsr_e4m3_to_f32(blk[4 + j]));
        e += t * t;
    }
    return e;
}

/* Candidates amax / 448 * (1 + k / F8_CANDIDATES), k < F8_CANDIDATES (a multiple of 4): one
 * octave, as E4M3's grid repeats itself at twice the scale (but for the subnormals and the top
 * code). On the default model's weights 16 cut the squared error by 59% (8: 54%, 24: 61%). */
enum { F8_CANDIDATES = 16 };

static void quant_f8_search(const float *x, uint8_t *blk)
{
    float amax = 0, sxx = 0;
    block_amax_sxx(x, &amax, &sxx);
    float best = -1, best_d = 0, d0 = amax / 448.0f;
    if (!(d0 > 0) || !isfinite(sxx)) {
        quant_f8(x, blk);
        return;
    }
    memcpy(blk, &d0, 4); /* quant_f8's block: x / d0 (divided, as it does), rounded alike */
    for (int j = 0; j < TSR_QK; j += 4) {
        v4f r = e4m3_round(v4_load(x + j) / d0);
        for (int l = 0; l < 4; l++) blk[4 + j + l] = e4m3_code(r[l]);
    }
    for (int k = 0; k < F8_CANDIDATES; k += 4) {
        float ic[4], sxr[4], srr[4];
        for (int g = 0; g < 4; g++) ic[g] = 1.0f / (d0 * (1.0f + (float)(k + g) / F8_CANDIDATES));
        f8_sums4(x, ic, sxr, srr);
        for (int g = 0; g < 4; g++) {
            float fit = sxr[g] * (sxr[g] / srr[g]);
            if (srr[g] > 0 && fit > best) best = fit, best_d = sxr[g] / srr[g];
        }
    }
    if (!(best_d > 0) || !isfinite(1.0f / best_d)) return;
    uint8_t c[sizeof(struct tsr_block_f8)];
    memcpy(c, &best_d, 4);
    f8_codes(x, 1.0f / best_d, c + 4);
    if (f8_err(x, c) < f8_err(x, blk)) memcpy(blk, c, sizeof c);
}

void tsr_quantize_row_search(enum tsr_dtype t, const float *src, void *dst, int64_t n)
{
    if (t == TSR_Q8_0) {
        struct tsr_block_q8_0 *b = dst;
        for (int64_t i = 0; i < n / TSR_QK; i++) quant_q8_0_search(src + i * TSR_QK, &b[i]);
    } else if (t == TSR_F8_E4M3) {
        uint8_t *b = dst;
        for (int64_t i = 0; i < n / TSR_QK; i++)
            quant_f8_search(src + i * TSR_QK, b + (size_t)i * sizeof(struct tsr_block_f8));
    } else {
        tsr_quantize_row(t, src, dst, n);
    }
}
