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
        for (int64_t i = 0; i < n / TSR_QK; i++) {
            const float *x = src + i * TSR_QK;
            float amax = 0;
            for (int j = 0; j < TSR_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
            float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
            b[i].d = tsr_f32_to_f16(d);
            for (int j = 0; j < TSR_QK; j++) b[i].qs[j] = (int8_t)roundf(x[j] * id);
        }
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
        for (int64_t i = 0; i < n / TSR_QK; i++) {
            const float *x = src + i * TSR_QK;
            uint8_t *blk = b + (size_t)i * sizeof(struct tsr_block_f8);
            float amax = 0;
            for (int j = 0; j < TSR_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
            float d = amax / 448.0f;
            memcpy(blk, &d, 4);
            for (int j = 0; j < TSR_QK; j++) blk[4 + j] = tsr_f32_to_e4m3(d ? x[j] / d : 0.0f);
        }
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
