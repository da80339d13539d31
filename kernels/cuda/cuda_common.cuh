/* Device helpers shared by the CUDA kernel files: decoding the weight types of common/dtype.h. */
#ifndef TSR_KERNELS_CUDA_COMMON_CUH
#define TSR_KERNELS_CUDA_COMMON_CUH

#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "common/dtype.h"

/* Bytes per 32-weight block. */
#define TSR_Q8_0_BYTES 34
#define TSR_Q4_0_BYTES 18
#define TSR_Q4_1_BYTES 20
#define TSR_Q5_0_BYTES 22
#define TSR_Q5_1_BYTES 24
/* Bytes per 256-weight super-block (layouts in common/dtype.h). */
#define TSR_Q4_K_BYTES 144
#define TSR_Q5_K_BYTES 176
#define TSR_Q6_K_BYTES 210
/* Bytes per 32-weight F8_E4M3 block: an f32 scale, 32 codes. */
#define TSR_F8_BYTES 36

static __device__ __forceinline__ float tsr_dev_bf16(uint16_t h)
{
    return __uint_as_float((uint32_t)h << 16);
}

static __device__ __forceinline__ float tsr_dev_f16(uint16_t h)
{
    return __half2float(__ushort_as_half(h));
}

/* An E4M3 code's value, as common/dtype.h's tsr_e4m3_to_f32 (the same bits, NaN codes NaN): its
 * fields where an f32's go read as the value times 2^-120. Integer and one multiply, so the same
 * on every architecture (sm_80 has no FP8 conversion instructions). */
static __device__ __forceinline__ float tsr_dev_e4m3(uint32_t q)
{
    uint32_t bits = (q & 0x80) << 24 | (q & 0x7f) << 20;
    if ((q & 0x7f) == 0x7f) bits |= 0x7fc00000u;
    return __uint_as_float(bits) * 0x1p120f;
}

/* The E4M3 code nearest x, to nearest even, saturating at +-448: tsr_f32_to_e4m3's rounding
 * (cuda_fp8.h: a cvt instruction on sm_89 and later, its software version on sm_80). */
static __device__ __forceinline__ uint8_t tsr_dev_f32_to_e4m3(float x)
{
    return (uint8_t)__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
}

/* Elements (bytes for FP8) from one slot's row of a KV cache to the next: kernels/backend.h's
 * tsr_kv_row_bytes over the element size (F8_E4M3: codes, a scale per head, padding to 16). */
template <typename KV>
static __device__ __forceinline__ size_t tsr_dev_kv_row(int n_kv_head, int hd)
{
    size_t kw = (size_t)n_kv_head * hd;
    return sizeof(KV) == 1 ? (kw + 4 * (size_t)n_kv_head + 15) & ~(size_t)15 : kw;
}

/* Weight j (< 256) of a Q4_K (five = 0) or Q5_K block: (d * sc) * q - dmin * m, the products
 * exact, as common/dtype.c computes it (so the same bits). */
static __device__ __forceinline__ float tsr_dev_q45_k(const uint8_t *b, int j, bool five)
{
    const uint8_t *q = b + 4; /* the 12 scale bytes */
    int s = j / 32, l = j % 32, sc, m;
    if (s < 4) {
        sc = q[s] & 63;
        m = q[s + 4] & 63;
    } else {
        sc = (q[s + 4] & 15) | (q[s - 4] >> 6) << 4;
        m = (q[s + 4] >> 4) | (q[s] >> 6) << 4;
    }
    int v = (b[(five ? 48 : 16) + 32 * (s / 2) + l] >> (4 * (s & 1))) & 15;
    if (five) v |= ((b[16 + l] >> s) & 1) << 4;
    float d1 = tsr_dev_f16(*(const uint16_t *)b) * (float)sc;
    float m1 = tsr_dev_f16(((const uint16_t *)b)[1]) * (float)m;
    return d1 * (float)v - m1;
}

/* Weight j (< 256) of a Q6_K block: (d * scales[j / 16]) * (q - 32), exact. */
static __device__ __forceinline__ float tsr_dev_q6_k(const uint8_t *b, int j)
{
    int h = j / 128, t = j % 128 / 32, l = j % 32;
    int v = (b[64 * h + 32 * (t & 1) + l] >> (4 * (t >> 1))) & 15;
    v |= ((b[128 + 32 * h + l] >> (2 * t)) & 3) << 4;
    float d = tsr_dev_f16(*(const uint16_t *)(b + 208)) * (float)(int8_t)b[192 + j / 16];
    return d * (float)(v - 32);
}
/* Weight j (< 32) of a Q5_0 (one = false) or Q5_1 block: d * (q - 16) or d * q + m, the product
 * exact (common/dtype.h), so the same bits as common/dtype.c. The fifth bit of weight j is bit j
 * of qh, read a byte at a time (a 22-byte Q5_0 block leaves qh 2-byte aligned only). */
static __device__ __forceinline__ float tsr_dev_q5(const uint8_t *b, int j, bool one)
{
    const uint8_t *qh = b + (one ? 4 : 2), *qs = qh + 4;
    int q = ((qs[j & 15] >> (j < 16 ? 0 : 4)) & 15) | ((qh[j / 8] >> (j % 8)) & 1) << 4;
    float d = tsr_dev_f16(((const uint16_t *)b)[0]);
    return one ? d * (float)q + tsr_dev_f16(((const uint16_t *)b)[1]) : d * (float)(q - 16);
}

/* Element i of a row of type t (any type; 2-byte aligned rows, 4-byte for F8_E4M3). One element
 * at a time: for the small ops (embeddings, norm weights, biases, dequantizing tiles), not for
 * GEMV (Q5_0 and Q5_1 meet it there: tsr_cuda_gemv has no kernel of its own for them yet, so
 * its generic one decodes them here, a block's scale once per weight: correct, not fast). */
static __device__ __forceinline__ float tsr_dev_elem(int t, const uint8_t *row, int64_t i)
{
    switch (t) {
    case TSR_F32:
        return ((const float *)row)[i];
    case TSR_F16:
        return tsr_dev_f16(((const uint16_t *)row)[i]);
    case TSR_BF16:
        return tsr_dev_bf16(((const uint16_t *)row)[i]);
    case TSR_Q8_0: {
        const uint8_t *b = row + (i / TSR_QK) * TSR_Q8_0_BYTES;
        return tsr_dev_f16(*(const uint16_t *)b) * (float)(int8_t)b[2 + i % TSR_QK];
    }
    case TSR_Q4_0: {
        const uint8_t *b = row + (i / TSR_QK) * TSR_Q4_0_BYTES;
        int j = (int)(i % TSR_QK), q = b[2 + (j & 15)];
        q = j < 16 ? q & 15 : q >> 4;
        return tsr_dev_f16(*(const uint16_t *)b) * (float)(q - 8);
    }
    case TSR_Q4_1: {
        const uint8_t *b = row + (i / TSR_QK) * TSR_Q4_1_BYTES;
        int j = (int)(i % TSR_QK), q = b[4 + (j & 15)];
        q = j < 16 ? q & 15 : q >> 4;
        return tsr_dev_f16(((const uint16_t *)b)[0]) * (float)q +
               tsr_dev_f16(((const uint16_t *)b)[1]);
    }
    case TSR_Q5_0:
        return tsr_dev_q5(row + (i / TSR_QK) * TSR_Q5_0_BYTES, (int)(i % TSR_QK), false);
    case TSR_Q5_1:
        return tsr_dev_q5(row + (i / TSR_QK) * TSR_Q5_1_BYTES, (int)(i % TSR_QK), true);
    case TSR_Q4_K:
        return tsr_dev_q45_k(row + (i / TSR_QK_K) * TSR_Q4_K_BYTES, (int)(i % TSR_QK_K), false);
    case TSR_Q5_K:
        return tsr_dev_q45_k(row + (i / TSR_QK_K) * TSR_Q5_K_BYTES, (int)(i % TSR_QK_K), true);
    case TSR_Q6_K:
        return tsr_dev_q6_k(row + (i / TSR_QK_K) * TSR_Q6_K_BYTES, (int)(i % TSR_QK_K));
    case TSR_F8_E4M3: { /* d * e4m3(q) as common/dtype.h decodes it (the same bits) */
        const uint8_t *b = row + (i / TSR_QK) * TSR_F8_BYTES;
        return *(const float *)b * tsr_dev_e4m3(b[4 + i % TSR_QK]);
    }
    default:
        return __int_as_float(0x7fc00000); /* NaN: the host checked types */
    }
}

/* SwiGLU's gate activation times up: silu(g) * u, as the CPU backend computes it. */
static __device__ __forceinline__ float tsr_dev_swiglu(float g, float u)
{
    return g / (1.0f + expf(-g)) * u;
}

static __device__ __forceinline__ float tsr_warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ double tsr_warp_sum_d(double v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Asynchronous global-to-shared copies (sm_80 and later) of BYTES = 16 (cached in L2 only) or 4
 * (in L1 too). A commit closes the copies issued since the last one into a group; a wait returns
 * when at most N groups are still in flight. The copy itself has no "memory" clobber, so that the
 * compiler may schedule the loads around it; the commit and the wait have one, so that no
 * shared-memory read moves above the wait that makes its data visible. */
template <int BYTES>
static __device__ __forceinline__ void tsr_cp_async(void *smem, const void *gmem)
{
    static_assert(BYTES == 16 || BYTES == 4, "cp.async copies 4 or 16 bytes here");
    uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
    size_t g = __cvta_generic_to_global(gmem);
    if constexpr (BYTES == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(g));
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(g));
}

static __device__ __forceinline__ void tsr_cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int N> static __device__ __forceinline__ void tsr_cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

#endif
