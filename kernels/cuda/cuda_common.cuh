/* Device helpers shared by the CUDA kernel files: decoding the weight types of common/dtype.h. */
#ifndef TSR_KERNELS_CUDA_COMMON_CUH
#define TSR_KERNELS_CUDA_COMMON_CUH

#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/dtype.h"

/* Bytes per 32-weight block. */
#define TSR_Q8_0_BYTES 34
#define TSR_Q4_0_BYTES 18
#define TSR_Q4_1_BYTES 20

static __device__ __forceinline__ float tsr_dev_bf16(uint16_t h)
{
    return __uint_as_float((uint32_t)h << 16);
}

static __device__ __forceinline__ float tsr_dev_f16(uint16_t h)
{
    return __half2float(__ushort_as_half(h));
}

/* Element i of a row of type t (any type; 2-byte aligned rows). One element at a time: for the
 * small ops (embeddings, norm weights, biases, dequantizing tiles), not for GEMV. */
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

#endif
