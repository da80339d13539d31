/* Element types shared by the model readers and the backends. The numeric values are GGML's type
 * ids, so a GGUF tensor's type field maps to this enum directly.
 *
 * Block formats (GGML's layouts, little endian):
 *   Q8_0: 32 weights, { f16 d; int8 q[32]; }                 w = d * q
 *   Q4_0: 32 weights, { f16 d; uint8 qs[16]; }               w = d * (nibble - 8)
 *   Q4_1: 32 weights, { f16 d; f16 m; uint8 qs[16]; }        w = d * nibble + m
 *   Q5_0: 32 weights, { f16 d; uint8 qh[4]; uint8 qs[16]; }          w = d * (q - 16)
 *   Q5_1: 32 weights, { f16 d; f16 m; uint8 qh[4]; uint8 qs[16]; }   w = d * q + m
 * In Q4_0/Q4_1, byte j holds weight j in its low nibble and weight j+16 in its high nibble. Q5_0
 * and Q5_1 hold the low 4 bits of q the same way, and the fifth bit (worth 16) of weight j at bit
 * j of qh read as a little-endian uint32 (qh[j / 8] >> (j % 8)). The products are exact in f32
 * (11 by 5 bits), so a Q5_0 weight is exact and a Q5_1 weight one rounding (the addition), as in
 * ggml's dequantize_row_q5_0/q5_1. llama.cpp stores in them the tensors of a k-quant file whose
 * rows are not whole super-blocks (a width of 576, say).
 *
 * k-quants: super-blocks of TSR_QK_K = 256 weights, in sub-blocks with their own integer scales:
 *   Q4_K: { f16 d; f16 dmin; uint8 scales[12]; uint8 qs[128]; }             144 bytes
 *   Q5_K: { f16 d; f16 dmin; uint8 scales[12]; uint8 qh[32]; uint8 qs[128]; } 176 bytes
 *         8 sub-blocks of 32, each with a 6-bit scale sc_s and a 6-bit min m_s:
 *         w = (d * sc_s) * q - dmin * m_s. scales[] packs them: for s < 4, sc_s = scales[s] & 63
 *         and m_s = scales[s + 4] & 63; for s >= 4, sc_s = (scales[s + 4] & 15) | (scales[s - 4]
 *         >> 6) << 4 and m_s = (scales[s + 4] >> 4) | (scales[s] >> 6) << 4. Sub-blocks 2p and
 *         2p + 1 share qs[32p .. 32p + 32): the low nibbles are 2p's weights, the high ones 2p+1's.
 *         Q5_K adds a fifth bit: bit s of qh[l] is weight l of sub-block s, worth 16.
 *   Q6_K: { uint8 ql[128]; uint8 qh[64]; int8 scales[16]; f16 d; }          210 bytes
 *         16 sub-blocks of 16, w = (d * scales[i / 16]) * (q - 32) with q 6 bits: weight
 *         i = 128h + 32t + l (h < 2, t < 4, l < 32) has its low 4 bits in ql[64h + 32(t & 1) + l]
 *         (the low nibble for t < 2, the high one otherwise) and its top 2 bits at bit 2t of
 *         qh[32h + l].
 * Every product above is exact in f32 (at most 23 significant bits), so a k-quant weight is one
 * rounding of its real value in Q4_K/Q5_K (the subtraction) and none in Q6_K: any order of the
 * operations, fused or not, gives the same bits. The layouts and arithmetic are ggml's
 * (ggml-quants.c, dequantize_row_q4_K/q5_K/q6_K).
 *
 * F8_E4M3, tessera's own (no GGUF file holds it; its id is outside GGML's): 32 weights,
 *   { f32 d; uint8 q[32]; }  36 bytes, w = d * e4m3(q)
 * with q an OCP FP8 E4M3 ("e4m3fn": bias 7, no infinities, 0x7f/0xff NaN, largest 448). The
 * per-tensor, per-channel and 128 x 128-block scales of FP8 checkpoints all become one d per block
 * exactly (32 divides 128), so a checkpoint loads without rounding; quantizing a float row gives
 * each block d = amax / 448. The product is one rounding (4 by 24 significant bits). */
#ifndef TSR_COMMON_DTYPE_H
#define TSR_COMMON_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum tsr_dtype {
    TSR_F32 = 0,
    TSR_F16 = 1,
    TSR_Q4_0 = 2,
    TSR_Q4_1 = 3,
    TSR_Q5_0 = 6,
    TSR_Q5_1 = 7,
    TSR_Q8_0 = 8,
    TSR_Q4_K = 12,
    TSR_Q5_K = 13,
    TSR_Q6_K = 14,
    TSR_BF16 = 30,
    TSR_F8_E4M3 = 128, /* tessera's own: ids from TSR_DTYPE_OWN are never read from a GGUF file */
};
#define TSR_DTYPE_OWN 128

#define TSR_QK   32  /* weights per block in Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 */
#define TSR_QK_K 256 /* weights per super-block in Q4_K, Q5_K, Q6_K */

struct tsr_block_q8_0 {
    uint16_t d;
    int8_t qs[TSR_QK];
};
struct tsr_block_q4_0 {
    uint16_t d;
    uint8_t qs[TSR_QK / 2];
};
struct tsr_block_q4_1 {
    uint16_t d, m;
    uint8_t qs[TSR_QK / 2];
};
/* Q5_0/Q5_1 blocks are 2-byte aligned at best (22 bytes): code reads them through byte offsets
 * too, these give their sizes. */
struct tsr_block_q5_0 {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[TSR_QK / 2];
};
struct tsr_block_q5_1 {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[TSR_QK / 2];
};
/* The k-quant layouts (above); code reads them through byte offsets, these give their sizes. */
struct tsr_block_q4_k {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qs[TSR_QK_K / 2];
};
struct tsr_block_q5_k {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[TSR_QK_K / 8];
    uint8_t qs[TSR_QK_K / 2];
};
struct tsr_block_q6_k {
    uint8_t ql[TSR_QK_K / 2];
    uint8_t qh[TSR_QK_K / 4];
    int8_t scales[TSR_QK_K / 16];
    uint16_t d;
};

struct tsr_block_f8 {
    float d;
    uint8_t qs[TSR_QK];
};

/* 1 for Q4_K, Q5_K, Q6_K. */
static inline int tsr_dtype_is_kquant(int t)
{
    return t == TSR_Q4_K || t == TSR_Q5_K || t == TSR_Q6_K;
}

/* 1 for Q5_0, Q5_1. */
static inline int tsr_dtype_is_q5(int t)
{
    return t == TSR_Q5_0 || t == TSR_Q5_1;
}

/* 1 if t is one of the types above. */
int tsr_dtype_valid(int t);
/* "F32", "Q4_1", ...; "unknown" for anything else. */
const char *tsr_dtype_name(int t);
/* Elements per block (1 for scalar types) and bytes per block. */
int tsr_dtype_block_elems(enum tsr_dtype t);
size_t tsr_dtype_block_bytes(enum tsr_dtype t);
/* Bytes of a row of n elements; 0 if n is not a multiple of the block size. */
size_t tsr_dtype_row_bytes(enum tsr_dtype t, int64_t n);

/* Converts n elements of a row of type t to f32 (used for embeddings, tests and loading). */
void tsr_dequantize_row(enum tsr_dtype t, const void *src, float *dst, int64_t n);
/* The reverse: n f32 values to a row of type t (n a multiple of the block size). Used to build
 * synthetic models and test data. GGML's reference rounding for Q8_0/Q4_0/Q4_1/Q5_0/Q5_1; for the
 * k-quants a plain min/max fit per sub-block (valid blocks, not llama.cpp's error-minimizing
 * search). */
void tsr_quantize_row(enum tsr_dtype t, const float *src, void *dst, int64_t n);
/* tsr_quantize_row with a searched scale for Q8_0 and F8_E4M3, for weights converted on load
 * (--quantize): each block's scale is chosen among candidates around the absmax one (each refitted
 * to its codes; a Q8_0 scale as the f16 it is stored as) for the least squared error of the
 * decoded block, which is then never above tsr_quantize_row's block (kept on a tie).
 * Deterministic; several times tsr_quantize_row's cost. Other types as tsr_quantize_row. The
 * synthetic models and the tests' data keep tsr_quantize_row's plain rounding. */
void tsr_quantize_row_search(enum tsr_dtype t, const float *src, void *dst, int64_t n);

static inline float tsr_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalize */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ff;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Round to nearest even. */
static inline uint16_t tsr_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t man = x & 0x7fffff;
    if (((x >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (exp >= 0x1f) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = sign | ((uint32_t)exp << 10) | (man >> 13), rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return (uint16_t)h;
}

/* An E4M3 byte's value (exact in f32); NaN for 0x7f and 0xff. Its exponent and mantissa bits,
 * put where an f32's go, read as that value times 2^-120 (bias 127 for 7; an exponent of 0 an f32
 * subnormal, as in E4M3), so one multiply by 2^120 makes it. */
static inline float tsr_e4m3_to_f32(uint8_t q)
{
    uint32_t bits = (uint32_t)(q & 0x80) << 24 | (uint32_t)(q & 0x7f) << 20;
    bits |= (q & 0x7f) == 0x7f ? 0x7fc00000u : 0; /* branch-free, so loops of it vectorize */
    float v;
    memcpy(&v, &bits, 4);
    return v * 0x1p120f;
}

/* Round to nearest even, saturating at +-448 (values beyond it, infinities included); NaN stays
 * NaN (0x7f with the sign). */
uint8_t tsr_f32_to_e4m3(float f);
/* q[j] = the E4M3 code nearest x[j] / d for j < n, d = amax / 448 (the largest |x[j]| maps to
 * 448, E4M3's largest: nothing saturates); returns d (0 for an all-zero x: every code 0). x[j]
 * reads back as d * tsr_e4m3_to_f32(q[j]). The F8_E4M3 weight blocks and the FP8 KV cache's heads.
 */
float tsr_quantize_e4m3(const float *x, int n, uint8_t *q);

static inline float tsr_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t tsr_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40); /* quiet NaN */
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

#endif
