/* GEMV for decode: y[n][rows] = x[n][cols] · Wᵀ for n <= TSR_CUDA_GEMV_MAX_N activation rows,
 * reading each weight byte once from device memory. Decode is bound by weight bandwidth, so the
 * kernels are built around the weight stream:
 *
 * - Each warp computes ROWS output rows for all n activations (the activation values it loads
 *   serve ROWS rows); blocks of WARPS warps, no block-wide synchronization.
 * - F32/F16/BF16: each lane loads 16 bytes of a row at a time (4 or 8 weights), consecutive lanes
 *   consecutive 16 bytes, two rows' loads in flight per step.
 * - Q8_0/Q4_0/Q4_1: blocks of 34/18/20 bytes do not align to wide loads lane by lane, so the warp
 *   copies a chunk of 32 quant blocks per row (1,088 bytes for Q8_0) into shared memory with
 *   cp.async, 16 bytes per lane where the row's alignment allows (else 4, else 2), double
 *   buffered: chunk c+1 streams in while chunk c is decoded. Lane l then decodes 4 consecutive
 *   weights of each of 8 blocks (weights 4l + 128i of the chunk), so its activation loads are 16
 *   bytes, coalesced across the warp, and each block's scale is a broadcast read.
 * - Rows whose length breaks these alignments (cols not a multiple of 8 or 32) take a plain
 *   per-element kernel.
 * Accumulation is f32 over f32 activations and exactly decoded weights. */
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

enum { WARPS = 4, ROWS = 2, THREADS = WARPS * 32 };
static_assert(ROWS == 2, "gemv_quant's cp.async.wait_group count is ROWS");

/* ---- float weights ---- */

/* 16 bytes of weights as VEC floats. */
template <int T> struct fvec;
template <> struct fvec<TSR_F32> {
    enum { VEC = 4 };
    static __device__ __forceinline__ void decode(uint4 r, float *w)
    {
        w[0] = __uint_as_float(r.x);
        w[1] = __uint_as_float(r.y);
        w[2] = __uint_as_float(r.z);
        w[3] = __uint_as_float(r.w);
    }
};
template <> struct fvec<TSR_BF16> {
    enum { VEC = 8 };
    static __device__ __forceinline__ void decode(uint4 r, float *w)
    {
        uint32_t u[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            w[2 * i] = __uint_as_float(u[i] << 16);
            w[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
        }
    }
};
template <> struct fvec<TSR_F16> {
    enum { VEC = 8 };
    static __device__ __forceinline__ void decode(uint4 r, float *w)
    {
        uint32_t u[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float2 f = __half22float2(*reinterpret_cast<const __half2 *>(&u[i]));
            w[2 * i] = f.x;
            w[2 * i + 1] = f.y;
        }
    }
};

/* Sums acc over the warp and writes lane 0's totals: y[j][r0 + r]. */
template <int N>
static __device__ __forceinline__ void store_rows(float (&acc)[ROWS][N], float *y, int rows, int r0,
                                                  int lane)
{
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int j = 0; j < N; j++) {
            float v = tsr_warp_sum(acc[r][j]);
            if (lane == 0 && r0 + r < rows) y[(size_t)j * rows + r0 + r] = v;
        }
}

/* cols % VEC == 0 and row_bytes % 16 == 0. */
template <int T, int N>
__global__ void __launch_bounds__(THREADS)
    gemv_float(const uint8_t *__restrict__ w, size_t row_bytes, int rows, int cols,
               const float *__restrict__ x, float *__restrict__ y)
{
    constexpr int VEC = fvec<T>::VEC;
    int lane = threadIdx.x & 31, r0 = (blockIdx.x * WARPS + (threadIdx.x >> 5)) * ROWS;
    if (r0 >= rows) return;
    const uint4 *wr[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) /* rows past the end re-read the last row; never stored */
        wr[r] = (const uint4 *)(w + (size_t)min(r0 + r, rows - 1) * row_bytes);
    float acc[ROWS][N] = {};
    int nv = cols / VEC;
#pragma unroll 2
    for (int v = lane; v < nv; v += 32) {
        uint4 raw[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; r++) raw[r] = __ldg(wr[r] + v);
        float xv[N][VEC];
#pragma unroll
        for (int j = 0; j < N; j++)
#pragma unroll
            for (int e = 0; e < VEC; e += 4) {
                float4 f = __ldg((const float4 *)(x + (size_t)j * cols + (size_t)v * VEC + e));
                xv[j][e] = f.x;
                xv[j][e + 1] = f.y;
                xv[j][e + 2] = f.z;
                xv[j][e + 3] = f.w;
            }
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            float wv[VEC];
            fvec<T>::decode(raw[r], wv);
#pragma unroll
            for (int j = 0; j < N; j++)
#pragma unroll
                for (int e = 0; e < VEC; e++) acc[r][j] = fmaf(wv[e], xv[j][e], acc[r][j]);
        }
    }
    store_rows<N>(acc, y, rows, r0, lane);
}

/* ---- quantized weights ---- */

template <int T> struct qfmt;
template <> struct qfmt<TSR_Q8_0> {
    enum { BYTES = TSR_Q8_0_BYTES };
};
template <> struct qfmt<TSR_Q4_0> {
    enum { BYTES = TSR_Q4_0_BYTES };
};
template <> struct qfmt<TSR_Q4_1> {
    enum { BYTES = TSR_Q4_1_BYTES };
};

static __device__ __forceinline__ void cp_async(void *smem, const void *gmem, int width)
{
    uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
    if (width == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem));
}

/* Copies `bytes` (a multiple of W) from g to s: cp.async for W of 16 or 4, plain 2-byte copies
 * otherwise. One commit group per call. */
template <int W>
static __device__ __forceinline__ void stage_bytes(uint8_t *s, const uint8_t *g, int bytes,
                                                   int lane)
{
    if (W >= 4) {
        for (int o = lane * W; o < bytes; o += 32 * W) cp_async(s + o, g + o, W);
    } else {
        for (int o = lane * 2; o < bytes; o += 64)
            *(uint16_t *)(s + o) = __ldg((const unsigned short *)(g + o));
    }
    asm volatile("cp.async.commit_group;\n" ::);
}

/* Byte k of u (< 2^8) as a float minus `bias`, exactly, without an int-to-float conversion
 * (those run at a quarter of the FMA rate and bound the kernel): 2^23 + b is the float whose
 * mantissa holds b. */
template <int K> static __device__ __forceinline__ float byte_f(uint32_t u, float bias)
{
    return __int_as_float((int)__byte_perm(u, 0x4B000000u, 0x7540 + K)) - (8388608.0f + bias);
}

/* The 4 weights at positions p..p+3 (p % 4 == 0) of the block at b, as numbers q with
 * w = d * q (Q8_0, Q4_0: the -8 folded in) or w = d * q + m (Q4_1); *d and *m its scales. */
template <int T>
static __device__ __forceinline__ void quant4(const uint8_t *b, int p, float *q, float *d, float *m)
{
    const uint16_t *h = (const uint16_t *)b;
    *d = tsr_dev_f16(h[0]);
    uint32_t u;
    float bias;
    if (T == TSR_Q8_0) {
        u = ((uint32_t)h[1 + p / 2] | ((uint32_t)h[2 + p / 2] << 16)) ^ 0x80808080u; /* q + 128 */
        bias = 128.0f;
        *m = 0.0f;
    } else {
        int base = T == TSR_Q4_1 ? 2 : 1; /* qs start, in uint16_t */
        int o = p & 15;
        uint32_t bytes = (uint32_t)h[base + o / 2] | ((uint32_t)h[base + o / 2 + 1] << 16);
        u = (p < 16 ? bytes : bytes >> 4) & 0x0f0f0f0fu;
        bias = T == TSR_Q4_0 ? 8.0f : 0.0f;
        *m = T == TSR_Q4_1 ? tsr_dev_f16(h[1]) : 0.0f;
    }
    q[0] = byte_f<0>(u, bias);
    q[1] = byte_f<1>(u, bias);
    q[2] = byte_f<2>(u, bias);
    q[3] = byte_f<3>(u, bias);
}

/* cols % 32 == 0; W: bytes per staged copy, which divides row_bytes. */
template <int T, int N, int W>
__global__ void __launch_bounds__(THREADS)
    gemv_quant(const uint8_t *__restrict__ w, size_t row_bytes, int rows, int cols,
               const float *__restrict__ x, float *__restrict__ y)
{
    constexpr int BB = qfmt<T>::BYTES, CH = 32 * BB; /* chunk: 32 blocks of a row */
    constexpr int CHP = (CH + 15) / 16 * 16;
    __shared__ __align__(16) uint8_t stage[WARPS][2][ROWS][CHP];
    int lane = threadIdx.x & 31, wi = threadIdx.x >> 5, r0 = (blockIdx.x * WARPS + wi) * ROWS;
    if (r0 >= rows) return; /* whole warp: only warp-level synchronization below */
    int nb = cols / TSR_QK, nchunks = (nb + 31) / 32;
    const uint8_t *wr[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) wr[r] = w + (size_t)min(r0 + r, rows - 1) * row_bytes;

    float acc[ROWS][N] = {};
#pragma unroll
    for (int r = 0; r < ROWS; r++) stage_bytes<W>(stage[wi][0][r], wr[r], min(32, nb) * BB, lane);
    for (int c = 0; c < nchunks; c++) {
        int buf = c & 1;
        if (c + 1 < nchunks) {
            int bytes = min(32, nb - (c + 1) * 32) * BB;
#pragma unroll
            for (int r = 0; r < ROWS; r++)
                stage_bytes<W>(stage[wi][buf ^ 1][r], wr[r] + (size_t)(c + 1) * CH, bytes, lane);
            asm volatile("cp.async.wait_group 2;\n" ::); /* the ROWS groups just issued */
        } else {
            asm volatile("cp.async.wait_group 0;\n" ::);
        }
        __syncwarp();
        /* Lane l: weights 4l + 128i of the chunk, i < 8 (block l/8 + 4i, position 4(l%8)). */
        int p = 4 * (lane & 7);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int blk = (lane >> 3) + 4 * i; /* block within the chunk */
            if (c * 32 + blk >= nb) break;
            size_t col = (size_t)(c * 32 + blk) * TSR_QK + p;
            float xv[N][4], xs[N];
#pragma unroll
            for (int j = 0; j < N; j++) {
                float4 f = __ldg((const float4 *)(x + (size_t)j * cols + col));
                xv[j][0] = f.x;
                xv[j][1] = f.y;
                xv[j][2] = f.z;
                xv[j][3] = f.w;
                xs[j] = (f.x + f.y) + (f.z + f.w);
            }
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                float q[4], d, m;
                quant4<T>(stage[wi][buf][r] + blk * BB, p, q, &d, &m);
#pragma unroll
                for (int j = 0; j < N; j++) {
                    float s = q[0] * xv[j][0];
                    s = fmaf(q[1], xv[j][1], s);
                    s = fmaf(q[2], xv[j][2], s);
                    s = fmaf(q[3], xv[j][3], s);
                    acc[r][j] = fmaf(d, s, acc[r][j]);
                    if (T == TSR_Q4_1) acc[r][j] = fmaf(m, xs[j], acc[r][j]);
                }
            }
        }
        __syncwarp(); /* the buffer is refilled next iteration */
    }
    store_rows<N>(acc, y, rows, r0, lane);
}

/* ---- any type, any alignment ---- */

template <int N>
__global__ void __launch_bounds__(THREADS)
    gemv_generic(int type, const uint8_t *__restrict__ w, size_t row_bytes, int rows, int cols,
                 const float *__restrict__ x, float *__restrict__ y)
{
    int lane = threadIdx.x & 31, r0 = (blockIdx.x * WARPS + (threadIdx.x >> 5)) * ROWS;
    if (r0 >= rows) return;
    float acc[ROWS][N] = {};
    for (int c = lane; c < cols; c += 32)
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            float wv = tsr_dev_elem(type, w + (size_t)min(r0 + r, rows - 1) * row_bytes, c);
#pragma unroll
            for (int j = 0; j < N; j++) acc[r][j] = fmaf(wv, x[(size_t)j * cols + c], acc[r][j]);
        }
    store_rows<N>(acc, y, rows, r0, lane);
}

/* ---- dispatch ---- */

template <int N>
static void launch_n(cudaStream_t s, int type, const uint8_t *w, size_t rb, int rows, int cols,
                     const float *x, float *y)
{
    unsigned grid = (unsigned)((rows + WARPS * ROWS - 1) / (WARPS * ROWS));
    int aligned16 = rb % 16 == 0 && ((uintptr_t)w & 15) == 0 && ((uintptr_t)x & 15) == 0;
    int quant = type == TSR_Q8_0 || type == TSR_Q4_0 || type == TSR_Q4_1;
    if (quant && cols % TSR_QK == 0 && ((uintptr_t)x & 15) == 0 && ((uintptr_t)w & 15) == 0) {
        int W = rb % 16 == 0 ? 16 : rb % 4 == 0 ? 4 : 2;
#define TSR_Q(TT)                                                                                  \
    if (type == TT) {                                                                              \
        if (W == 16)                                                                               \
            gemv_quant<TT, N, 16><<<grid, THREADS, 0, s>>>(w, rb, rows, cols, x, y);               \
        else if (W == 4)                                                                           \
            gemv_quant<TT, N, 4><<<grid, THREADS, 0, s>>>(w, rb, rows, cols, x, y);                \
        else                                                                                       \
            gemv_quant<TT, N, 2><<<grid, THREADS, 0, s>>>(w, rb, rows, cols, x, y);                \
        return;                                                                                    \
    }
        TSR_Q(TSR_Q8_0)
        TSR_Q(TSR_Q4_0)
        TSR_Q(TSR_Q4_1)
#undef TSR_Q
    }
    if (aligned16 && type == TSR_F32 && cols % 4 == 0) {
        gemv_float<TSR_F32, N><<<grid, THREADS, 0, s>>>(w, rb, rows, cols, x, y);
        return;
    }
    if (aligned16 && type == TSR_BF16 && cols % 8 == 0) {
        gemv_float<TSR_BF16, N><<<grid, THREADS, 0, s>>>(w, rb, rows, cols, x, y);
        return;
    }
    if (aligned16 && type == TSR_F16 && cols % 8 == 0) {
        gemv_float<TSR_F16, N><<<grid, THREADS, 0, s>>>(w, rb, rows, cols, x, y);
        return;
    }
    gemv_generic<N><<<grid, THREADS, 0, s>>>(type, w, rb, rows, cols, x, y);
}

static_assert(TSR_CUDA_GEMV_MAX_N == 8, "tsr_cuda_gemv dispatches n = 1..8");

extern "C" cudaError_t tsr_cuda_gemv(cudaStream_t s, int type, const void *w, size_t row_bytes,
                                     int rows, int cols, const float *x, float *y, int n)
{
    const uint8_t *wb = (const uint8_t *)w;
    switch (n) {
    case 1:
        launch_n<1>(s, type, wb, row_bytes, rows, cols, x, y);
        break;
    case 2:
        launch_n<2>(s, type, wb, row_bytes, rows, cols, x, y);
        break;
    case 3:
        launch_n<3>(s, type, wb, row_bytes, rows, cols, x, y);
        break;
    case 4:
        launch_n<4>(s, type, wb, row_bytes, rows, cols, x, y);
        break;
    case 5:
        launch_n<5>(s, type, wb, row_bytes, rows, cols, x, y);
        break;
    case 6:
        launch_n<6>(s, type, wb, row_bytes, rows, cols, x, y);
        break;
    case 7:
        launch_n<7>(s, type, wb, row_bytes, rows, cols, x, y);
        break;
    case 8:
        launch_n<8>(s, type, wb, row_bytes, rows, cols, x, y);
        break;
    default:
        return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}
