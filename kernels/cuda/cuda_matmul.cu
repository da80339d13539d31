/* GEMV for decode: y[n][rows] = x[n][cols] · Wᵀ for n <= TSR_CUDA_GEMV_MAX_N activation rows,
 * reading each weight byte once from device memory. Decode is bound by weight bandwidth, so the
 * kernels are built around the weight stream:
 *
 * - One launch serves up to TSR_CUDA_GEMV_MAX_W weights of one type and width against the same x
 *   (a layer's Q, K and V projections): their rows form one range, each warp finds its rows'
 *   matrix, and the small K and V matrices ride in the Q projection's launch instead of paying a
 *   launch, a ramp-up and a tail of their own. With swiglu, two weights (gate, up) are read row by
 *   row together and the warp writes silu(gate) * up: the MLP's first half is one pass.
 * - Each warp computes R weight rows for all n activations (the activation values it loads serve
 *   R rows; R grows with n, where activation loads would otherwise outnumber weight loads);
 *   blocks of WARPS warps, no block-wide synchronization.
 * - F32/F16/BF16: each lane loads 16 bytes of a row at a time (4 or 8 weights), consecutive lanes
 *   consecutive 16 bytes, R rows' loads in flight per step (twice that unrolled), as streaming
 *   loads that skip L1 and ask L2 for 256-byte sectors.
 * - Q8_0/Q4_0/Q4_1/F8_E4M3: blocks of 34/18/20/36 bytes do not align to wide loads lane by lane, so
 * the warp copies a chunk of 32 quant blocks per row (1,088 bytes for Q8_0) into shared memory with
 *   cp.async, 16 bytes per lane where the row's alignment allows (else 4, else 2), double
 *   buffered: chunk c+1 streams in while chunk c is decoded. Lane l then decodes 4 consecutive
 *   weights of each of 8 blocks (weights 4l + 128i of the chunk), so its activation loads are 16
 *   bytes, coalesced across the warp, and each block's scale is a broadcast read. The chunk's
 *   activations are loaded before the wait for its weights (see gemv_quant).
 * - Q4_K/Q5_K/Q6_K: the same staging, a chunk being 4 super-blocks; a lane decodes 16 weights of
 *   a sub-block at a time (gemv_kquant).
 * - Other types (Q5_0, Q5_1) and rows whose length breaks these alignments (cols not a multiple
 *   of 8, 32 or 256) take a plain per-element kernel.
 * Accumulation is f32 over f32 activations and exactly decoded weights, in the same order whether
 * a weight shares its launch or not. */
#include <limits.h>

#include <cuda_fp8.h>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

enum { WARPS = 4, THREADS = WARPS * 32 };

/* What one launch computes (tsr_cuda_gemv's arguments, resolved for the device). A unit is one
 * output row: one weight row, or with swiglu the same row of both weights. */
struct job {
    const uint8_t *w[TSR_CUDA_GEMV_MAX_W];
    float *y[TSR_CUDA_GEMV_MAX_W];
    int rows[TSR_CUDA_GEMV_MAX_W], end[TSR_CUDA_GEMV_MAX_W]; /* end: cumulative rows */
    int units;
    size_t rb;
    int cols;
    const float *x;
};

/* Weight row k (of the warp's R) for the warp whose first unit is u0: with SW, rows 2i and 2i+1
 * are unit u0+i's gate and up rows; otherwise row k is unit u0+k of the joint range. Units past
 * the end re-read the last unit's rows; they are never stored. */
template <bool SW>
static __device__ __forceinline__ const uint8_t *weight_row(const job &j, int u0, int k)
{
    int u = min(u0 + (SW ? k / 2 : k), j.units - 1);
    if (SW) return (k & 1 ? j.w[1] : j.w[0]) + (size_t)u * j.rb;
    if (u < j.end[0]) return j.w[0] + (size_t)u * j.rb;
    if (u < j.end[1]) return j.w[1] + (size_t)(u - j.end[0]) * j.rb;
    return j.w[2] + (size_t)(u - j.end[1]) * j.rb;
}

/* Sums acc over the warp and stores the warp's units: y[j][row] of the row's matrix, or with SW
 * silu(gate) * up into y[0]. */
template <int N, int U, bool SW, int R>
static __device__ __forceinline__ void store_units(const job &j, float (&acc)[R][N], int u0,
                                                   int lane)
{
#pragma unroll
    for (int k = 0; k < R; k++)
#pragma unroll
        for (int n = 0; n < N; n++) acc[k][n] = tsr_warp_sum(acc[k][n]);
    if (lane) return;
#pragma unroll
    for (int i = 0; i < U; i++) {
        int u = u0 + i;
        if (u >= j.units) break;
        if (SW) {
#pragma unroll
            for (int n = 0; n < N; n++)
                j.y[0][(size_t)n * j.rows[0] + u] =
                    tsr_dev_swiglu(acc[2 * i][n], acc[2 * i + 1][n]);
            continue;
        }
        float *y = j.y[0];
        int rows = j.rows[0], r = u;
        if (u >= j.end[1]) {
            y = j.y[2], rows = j.rows[2], r = u - j.end[1];
        } else if (u >= j.end[0]) {
            y = j.y[1], rows = j.rows[1], r = u - j.end[0];
        }
#pragma unroll
        for (int n = 0; n < N; n++) y[(size_t)n * rows + r] = acc[i][n];
    }
}

/* 16 bytes of weights, read once: no L1 allocation, 256-byte L2 fetches. */
static __device__ __forceinline__ uint4 ld_stream(const uint4 *p)
{
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
}

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

/* cols % VEC == 0 and row_bytes % 16 == 0. U units per warp, R weight rows. */
template <int T, int N, int U, bool SW>
__global__ void __launch_bounds__(THREADS) gemv_float(const job j)
{
    constexpr int VEC = fvec<T>::VEC, R = SW ? 2 * U : U;
    int lane = threadIdx.x & 31, u0 = (blockIdx.x * WARPS + (threadIdx.x >> 5)) * U;
    if (u0 >= j.units) return;
    const uint4 *wr[R];
#pragma unroll
    for (int k = 0; k < R; k++) wr[k] = (const uint4 *)weight_row<SW>(j, u0, k);
    float acc[R][N] = {};
    int nv = j.cols / VEC;
#pragma unroll 2
    for (int v = lane; v < nv; v += 32) {
        uint4 raw[R];
#pragma unroll
        for (int k = 0; k < R; k++) raw[k] = ld_stream(wr[k] + v);
        float xv[N][VEC];
#pragma unroll
        for (int n = 0; n < N; n++)
#pragma unroll
            for (int e = 0; e < VEC; e += 4) {
                float4 f = __ldg((const float4 *)(j.x + (size_t)n * j.cols + (size_t)v * VEC + e));
                xv[n][e] = f.x;
                xv[n][e + 1] = f.y;
                xv[n][e + 2] = f.z;
                xv[n][e + 3] = f.w;
            }
#pragma unroll
        for (int k = 0; k < R; k++) {
            float wv[VEC];
            fvec<T>::decode(raw[k], wv);
#pragma unroll
            for (int n = 0; n < N; n++)
#pragma unroll
                for (int e = 0; e < VEC; e++) acc[k][n] = fmaf(wv[e], xv[n][e], acc[k][n]);
        }
    }
    store_units<N, U, SW, R>(j, acc, u0, lane);
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
template <> struct qfmt<TSR_F8_E4M3> {
    enum { BYTES = TSR_F8_BYTES };
};

/* Copies `bytes` (a multiple of W) from g to s: cp.async for W of 16 or 4, plain 2-byte copies
 * otherwise. One commit group per call. */
template <int W>
static __device__ __forceinline__ void stage_bytes(uint8_t *s, const uint8_t *g, int bytes,
                                                   int lane)
{
    if constexpr (W >= 4) {
        for (int o = lane * W; o < bytes; o += 32 * W) tsr_cp_async<W>(s + o, g + o);
    } else {
        for (int o = lane * 2; o < bytes; o += 64)
            *(uint16_t *)(s + o) = __ldg((const unsigned short *)(g + o));
    }
    tsr_cp_async_commit();
}

/* Byte k of u (< 2^8) as a float minus `bias`, exactly, without an int-to-float conversion
 * (those run at a quarter of the FMA rate and bound the kernel): 2^23 + b is the float whose
 * mantissa holds b. */
template <int K> static __device__ __forceinline__ float byte_f(uint32_t u, float bias)
{
    return __int_as_float((int)__byte_perm(u, 0x4B000000u, 0x7540 + K)) - (8388608.0f + bias);
}

/* Two E4M3 codes (the low 16 bits of v, the first in the low byte) as floats, NaN codes NaN. */
static __device__ __forceinline__ float2 e4m3x2(uint32_t v)
{
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(v & 0xffff), __NV_E4M3);
    return __half22float2(*(const __half2 *)&h);
}

/* The 4 weights at positions p..p+3 (p % 4 == 0) of the block at b, as numbers q with
 * w = d * q (Q8_0, Q4_0: the -8 folded in; F8_E4M3: q the E4M3 values) or w = d * q + m (Q4_1);
 * *d and *m its scales. */
template <int T>
static __device__ __forceinline__ void quant4(const uint8_t *b, int p, float *q, float *d, float *m)
{
    if (T == TSR_F8_E4M3) {
        uint32_t u = *(const uint32_t *)(b + 4 + p);
        float2 lo = e4m3x2(u), hi = e4m3x2(u >> 16);
        *d = *(const float *)b;
        *m = 0.0f;
        q[0] = lo.x;
        q[1] = lo.y;
        q[2] = hi.x;
        q[3] = hi.y;
        return;
    }
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

/* The first of the 4 activations at position p of block b of a row of nb blocks; b past the row
 * is clamped to its last block (a load that is never used). */
static __device__ __forceinline__ size_t x_col(int b, int nb, int p)
{
    return (size_t)min(b, nb - 1) * TSR_QK + p;
}

/* cols % 32 == 0; W: bytes per staged copy, which divides row_bytes. R = 2 weight rows per warp
 * (one unit with SW, two without). */
template <int T, int N, int W, bool SW>
__global__ void __launch_bounds__(THREADS) gemv_quant(const job j)
{
    constexpr int BB = qfmt<T>::BYTES, CH = 32 * BB; /* chunk: 32 blocks of a row */
    constexpr int CHP = (CH + 15) / 16 * 16, R = 2, U = SW ? 1 : 2;
    __shared__ __align__(16) uint8_t stage[WARPS][2][R][CHP];
    int lane = threadIdx.x & 31, wi = threadIdx.x >> 5, u0 = (blockIdx.x * WARPS + wi) * U;
    if (u0 >= j.units) return; /* whole warp: only warp-level synchronization below */
    int nb = j.cols / TSR_QK, nchunks = (nb + 31) / 32;
    const uint8_t *wr[R];
#pragma unroll
    for (int k = 0; k < R; k++) wr[k] = weight_row<SW>(j, u0, k);

    float acc[R][N] = {};
#pragma unroll
    for (int k = 0; k < R; k++) stage_bytes<W>(stage[wi][0][k], wr[k], min(32, nb) * BB, lane);
    for (int c = 0; c < nchunks; c++) {
        int buf = c & 1;
        if (c + 1 < nchunks) {
            int bytes = min(32, nb - (c + 1) * 32) * BB;
#pragma unroll
            for (int k = 0; k < R; k++)
                stage_bytes<W>(stage[wi][buf ^ 1][k], wr[k] + (size_t)(c + 1) * CH, bytes, lane);
        }
        /* Lane l: weights 4l + 128i of the chunk, i < 8 (block l/8 + 4i, position 4(l%8)). The
         * activations are loaded ahead of their use, their latency hidden under the wait for the
         * chunk's weights instead of following it: with one or two activation rows all 8 of the
         * chunk's before that wait, with more (registers) the first before it and each next one
         * while the current one is used. Past the last block a load is clamped and never used. On
         * an H100 this took the Q8_0 GEMV of 14336 x 4096 from 0.46 to 0.73 of the copy bandwidth
         * at n = 1; a third staging buffer did not help. */
        int p = 4 * (lane & 7);
        constexpr int XP = N <= 2 ? 8 : 2; /* activation float4 sets in registers */
        float4 xr[XP][N];
#pragma unroll
        for (int i = 0; i < (XP == 8 ? 8 : 1); i++)
#pragma unroll
            for (int n = 0; n < N; n++)
                xr[i][n] = __ldg((const float4 *)(j.x + (size_t)n * j.cols +
                                                  x_col(c * 32 + (lane >> 3) + 4 * i, nb, p)));
        if (c + 1 < nchunks)
            tsr_cp_async_wait<R>(); /* the R groups just issued */
        else
            tsr_cp_async_wait<0>();
        __syncwarp();
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int blk = (lane >> 3) + 4 * i; /* block within the chunk */
            if constexpr (XP == 2) {
                if (i + 1 < 8)
#pragma unroll
                    for (int n = 0; n < N; n++)
                        xr[(i + 1) % 2][n] =
                            __ldg((const float4 *)(j.x + (size_t)n * j.cols +
                                                   x_col(c * 32 + blk + 4, nb, p)));
            }
            if (c * 32 + blk >= nb) break;
            float xv[N][4], xs[N];
#pragma unroll
            for (int n = 0; n < N; n++) {
                float4 f = xr[i % XP][n];
                xv[n][0] = f.x;
                xv[n][1] = f.y;
                xv[n][2] = f.z;
                xv[n][3] = f.w;
                xs[n] = (f.x + f.y) + (f.z + f.w);
            }
#pragma unroll
            for (int k = 0; k < R; k++) {
                float q[4], d, m;
                quant4<T>(stage[wi][buf][k] + blk * BB, p, q, &d, &m);
#pragma unroll
                for (int n = 0; n < N; n++) {
                    float s = q[0] * xv[n][0];
                    s = fmaf(q[1], xv[n][1], s);
                    s = fmaf(q[2], xv[n][2], s);
                    s = fmaf(q[3], xv[n][3], s);
                    acc[k][n] = fmaf(d, s, acc[k][n]);
                    if (T == TSR_Q4_1) acc[k][n] = fmaf(m, xs[n], acc[k][n]);
                }
            }
        }
        __syncwarp(); /* the buffer is refilled next iteration */
    }
    store_units<N, U, SW, R>(j, acc, u0, lane);
}

/* ---- k-quants ----
 *
 * Q4_K, Q5_K, Q6_K (layouts in common/dtype.h): the staging of gemv_quant, a chunk being 4
 * super-blocks (1,024 weights) of a row, and lane l decoding 16 consecutive weights of each half
 * of it (weights 16l + 512r, r < 2: super-block 2r + l/16, position 16(l % 16)), so that a
 * sub-block's 6-bit scale and min (Q4_K, Q5_K; Q6_K: a 16-weight group's int8 scale) are unpacked
 * once for 16 weights, and the lane's activations are 64 contiguous bytes, the warp's contiguous
 * too. A weight is d * q + m with d and m exact products (the bits common/dtype.c decodes), the
 * sum taken as d * (q . x) + m * sum(x), as for Q4_1. */

template <int T> struct kfmt;
template <> struct kfmt<TSR_Q4_K> {
    enum { BYTES = TSR_Q4_K_BYTES };
};
template <> struct kfmt<TSR_Q5_K> {
    enum { BYTES = TSR_Q5_K_BYTES };
};
template <> struct kfmt<TSR_Q6_K> {
    enum { BYTES = TSR_Q6_K_BYTES };
};

/* The 4 bytes at b (2-byte aligned). */
static __device__ __forceinline__ uint32_t ld_u32_2(const uint8_t *b)
{
    const uint16_t *h = (const uint16_t *)b;
    return (uint32_t)h[0] | ((uint32_t)h[1] << 16);
}

/* Weights j .. j + 15 (j % 16 == 0) of the super-block at b (in shared memory, 16-byte aligned
 * for Q4_K and Q5_K, 2-byte for Q6_K) as q[e] with w = d * q[e] + m. */
template <int T>
static __device__ __forceinline__ void kquant16(const uint8_t *b, int j, float (&q)[16], float *d,
                                                float *m)
{
    uint32_t u[4];
    if (T == TSR_Q6_K) {
        int h = j >> 7, t = (j >> 5) & 3, l = j & 31; /* l is 0 or 16 */
        const uint8_t *ql = b + 64 * h + 32 * (t & 1) + l, *qh = b + 128 + 32 * h + l;
#pragma unroll
        for (int k = 0; k < 4; k++)
            u[k] = ((ld_u32_2(ql + 4 * k) >> (4 * (t >> 1))) & 0x0f0f0f0fu) |
                   (((ld_u32_2(qh + 4 * k) >> (2 * t)) & 0x03030303u) << 4);
        *d = tsr_dev_f16(*(const uint16_t *)(b + 208)) * (float)(int8_t)b[192 + j / 16];
        *m = 0.0f;
    } else {
        const bool five = T == TSR_Q5_K;
        int s = j >> 5;
        const uint8_t *sc6 = b + 4;
        int sc, mn;
        if (s < 4) {
            sc = sc6[s] & 63;
            mn = sc6[s + 4] & 63;
        } else {
            sc = (sc6[s + 4] & 15) | (sc6[s - 4] >> 6) << 4;
            mn = (sc6[s + 4] >> 4) | (sc6[s] >> 6) << 4;
        }
        uint4 raw = *(const uint4 *)(b + (five ? 48 : 16) + 32 * (s >> 1) + (j & 31));
        uint32_t r[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
        for (int k = 0; k < 4; k++) u[k] = (r[k] >> (4 * (s & 1))) & 0x0f0f0f0fu;
        if (five) {
            uint4 hr = *(const uint4 *)(b + 16 + (j & 31));
            uint32_t hb[4] = {hr.x, hr.y, hr.z, hr.w};
#pragma unroll
            for (int k = 0; k < 4; k++) u[k] |= ((hb[k] >> s) & 0x01010101u) << 4;
        }
        *d = tsr_dev_f16(*(const uint16_t *)b) * (float)sc;
        *m = -(tsr_dev_f16(((const uint16_t *)b)[1]) * (float)mn);
    }
    const float bias = T == TSR_Q6_K ? 32.0f : 0.0f;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        q[4 * k] = byte_f<0>(u[k], bias);
        q[4 * k + 1] = byte_f<1>(u[k], bias);
        q[4 * k + 2] = byte_f<2>(u[k], bias);
        q[4 * k + 3] = byte_f<3>(u[k], bias);
    }
}

/* cols % 256 == 0; W: bytes per staged copy, dividing row_bytes and the chunk. */
template <int T, int N, int W, bool SW>
__global__ void __launch_bounds__(THREADS) gemv_kquant(const job j)
{
    constexpr int BYTES = kfmt<T>::BYTES, CH = 4 * BYTES; /* chunk: 4 super-blocks of a row */
    constexpr int CHP = (CH + 15) / 16 * 16, R = 2, U = SW ? 1 : 2;
    __shared__ __align__(16) uint8_t stage[WARPS][2][R][CHP];
    int lane = threadIdx.x & 31, wi = threadIdx.x >> 5, u0 = (blockIdx.x * WARPS + wi) * U;
    if (u0 >= j.units) return; /* whole warp: only warp-level synchronization below */
    int nsb = j.cols / TSR_QK_K, nchunks = (nsb + 3) / 4;
    const uint8_t *wr[R];
#pragma unroll
    for (int k = 0; k < R; k++) wr[k] = weight_row<SW>(j, u0, k);

    float acc[R][N] = {};
#pragma unroll
    for (int k = 0; k < R; k++) stage_bytes<W>(stage[wi][0][k], wr[k], min(4, nsb) * BYTES, lane);
    int jj = 16 * (lane & 15); /* position in the super-block */
    for (int c = 0; c < nchunks; c++) {
        int buf = c & 1;
        if (c + 1 < nchunks) {
            int bytes = min(4, nsb - (c + 1) * 4) * BYTES;
#pragma unroll
            for (int k = 0; k < R; k++)
                stage_bytes<W>(stage[wi][buf ^ 1][k], wr[k] + (size_t)(c + 1) * CH, bytes, lane);
        }
        /* The lane's activations (both halves with one or two rows, as gemv_quant), a super-block
         * past the row clamped to the last one and never used. */
        constexpr int XP = N <= 2 ? 2 : 1;
        float4 xr[XP][N][4];
        if constexpr (XP == 2) {
#pragma unroll
            for (int r = 0; r < 2; r++) {
                size_t col = (size_t)min(4 * c + 2 * r + (lane >> 4), nsb - 1) * TSR_QK_K + jj;
#pragma unroll
                for (int n = 0; n < N; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        xr[r][n][e] =
                            __ldg((const float4 *)(j.x + (size_t)n * j.cols + col + 4 * e));
            }
        }
        if (c + 1 < nchunks)
            tsr_cp_async_wait<R>(); /* the R groups just issued */
        else
            tsr_cp_async_wait<0>();
        __syncwarp();
#pragma unroll
        for (int r = 0; r < 2; r++) {
            int sb = 2 * r + (lane >> 4); /* super-block within the chunk */
            if (4 * c + sb >= nsb) break;
            size_t col = (size_t)(4 * c + sb) * TSR_QK_K + jj;
            float xv[N][16], xs[N];
#pragma unroll
            for (int n = 0; n < N; n++) {
                xs[n] = 0.0f;
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    float4 f;
                    if constexpr (XP == 2)
                        f = xr[r][n][e];
                    else
                        f = __ldg((const float4 *)(j.x + (size_t)n * j.cols + col + 4 * e));
                    xv[n][4 * e] = f.x;
                    xv[n][4 * e + 1] = f.y;
                    xv[n][4 * e + 2] = f.z;
                    xv[n][4 * e + 3] = f.w;
                    xs[n] += (f.x + f.y) + (f.z + f.w);
                }
            }
#pragma unroll
            for (int k = 0; k < R; k++) {
                float q[16], d, m;
                kquant16<T>(stage[wi][buf][k] + sb * BYTES, jj, q, &d, &m);
#pragma unroll
                for (int n = 0; n < N; n++) {
                    float s = q[0] * xv[n][0];
#pragma unroll
                    for (int e = 1; e < 16; e++) s = fmaf(q[e], xv[n][e], s);
                    acc[k][n] = fmaf(d, s, acc[k][n]);
                    if (T != TSR_Q6_K) acc[k][n] = fmaf(m, xs[n], acc[k][n]);
                }
            }
        }
        __syncwarp(); /* the buffer is refilled next iteration */
    }
    store_units<N, U, SW, R>(j, acc, u0, lane);
}

/* ---- any type, any alignment ---- */

template <int N, bool SW>
__global__ void __launch_bounds__(THREADS) gemv_generic(int type, const job j)
{
    constexpr int R = 2, U = SW ? 1 : 2;
    int lane = threadIdx.x & 31, u0 = (blockIdx.x * WARPS + (threadIdx.x >> 5)) * U;
    if (u0 >= j.units) return;
    const uint8_t *wr[R];
#pragma unroll
    for (int k = 0; k < R; k++) wr[k] = weight_row<SW>(j, u0, k);
    float acc[R][N] = {};
    for (int c = lane; c < j.cols; c += 32)
#pragma unroll
        for (int k = 0; k < R; k++) {
            float wv = tsr_dev_elem(type, wr[k], c);
#pragma unroll
            for (int n = 0; n < N; n++)
                acc[k][n] = fmaf(wv, j.x[(size_t)n * j.cols + c], acc[k][n]);
        }
    store_units<N, U, SW, R>(j, acc, u0, lane);
}

/* ---- dispatch ---- */

static unsigned grid_of(int units, int per_warp)
{
    return (unsigned)((units + WARPS * per_warp - 1) / (WARPS * per_warp));
}

/* Float weights: units per warp, so that a warp's R weight rows amortize its activation loads
 * (one row of x per weight row at n = 1; four rows at n >= 2). */
template <int T, int N, bool SW> static void launch_float(cudaStream_t s, const job &j)
{
    constexpr int U = SW ? (N == 1 ? 1 : 2) : (N == 1 ? 2 : 4);
    gemv_float<T, N, U, SW><<<grid_of(j.units, U), THREADS, 0, s>>>(j);
}

template <int T, int N, bool SW> static void launch_quant(cudaStream_t s, const job &j)
{
    constexpr int U = SW ? 1 : 2;
    unsigned grid = grid_of(j.units, U);
    if (j.rb % 16 == 0)
        gemv_quant<T, N, 16, SW><<<grid, THREADS, 0, s>>>(j);
    else if (T == TSR_F8_E4M3 || j.rb % 4 == 0) /* F8_E4M3 rows: 36-byte blocks */
        gemv_quant<T, N, 4, SW><<<grid, THREADS, 0, s>>>(j);
    else if constexpr (T != TSR_F8_E4M3)
        gemv_quant<T, N, 2, SW><<<grid, THREADS, 0, s>>>(j);
}

template <int T, int N, bool SW> static void launch_kquant(cudaStream_t s, const job &j)
{
    constexpr int U = SW ? 1 : 2, CH = 4 * kfmt<T>::BYTES;
    unsigned grid = grid_of(j.units, U);
    if constexpr (CH % 16 == 0) /* Q4_K, Q5_K: 144 and 176 bytes a super-block, 16-byte rows */
        gemv_kquant<T, N, 16, SW><<<grid, THREADS, 0, s>>>(j);
    else if (j.rb % 4 == 0) /* Q6_K (210 bytes) with an even count of super-blocks a row */
        gemv_kquant<T, N, 4, SW><<<grid, THREADS, 0, s>>>(j);
    else
        gemv_kquant<T, N, 2, SW><<<grid, THREADS, 0, s>>>(j);
}

template <int N, bool SW> static void launch_n(cudaStream_t s, int type, const job &j)
{
    int x16 = ((uintptr_t)j.x & 15) == 0, w16 = 1;
    for (int i = 0; i < TSR_CUDA_GEMV_MAX_W; i++)
        if (((uintptr_t)j.w[i] & 15) != 0) w16 = 0;
    int aligned16 = x16 && w16 && j.rb % 16 == 0;
    if (x16 && w16 && j.cols % TSR_QK == 0) {
        if (type == TSR_Q8_0) return launch_quant<TSR_Q8_0, N, SW>(s, j);
        if (type == TSR_Q4_0) return launch_quant<TSR_Q4_0, N, SW>(s, j);
        if (type == TSR_Q4_1) return launch_quant<TSR_Q4_1, N, SW>(s, j);
        if (type == TSR_F8_E4M3) return launch_quant<TSR_F8_E4M3, N, SW>(s, j);
    }
    if (x16 && w16 && j.cols % TSR_QK_K == 0) {
        if (type == TSR_Q4_K) return launch_kquant<TSR_Q4_K, N, SW>(s, j);
        if (type == TSR_Q5_K) return launch_kquant<TSR_Q5_K, N, SW>(s, j);
        if (type == TSR_Q6_K) return launch_kquant<TSR_Q6_K, N, SW>(s, j);
    }
    if (aligned16 && type == TSR_F32 && j.cols % 4 == 0) return launch_float<TSR_F32, N, SW>(s, j);
    if (aligned16 && type == TSR_BF16 && j.cols % 8 == 0)
        return launch_float<TSR_BF16, N, SW>(s, j);
    if (aligned16 && type == TSR_F16 && j.cols % 8 == 0) return launch_float<TSR_F16, N, SW>(s, j);
    unsigned grid = grid_of(j.units, SW ? 1 : 2);
    gemv_generic<N, SW><<<grid, THREADS, 0, s>>>(type, j);
}

template <bool SW> static cudaError_t launch(cudaStream_t s, int type, const job &j, int n)
{
    switch (n) {
    case 1:
        launch_n<1, SW>(s, type, j);
        break;
    case 2:
        launch_n<2, SW>(s, type, j);
        break;
    case 3:
        launch_n<3, SW>(s, type, j);
        break;
    case 4:
        launch_n<4, SW>(s, type, j);
        break;
    case 5:
        launch_n<5, SW>(s, type, j);
        break;
    case 6:
        launch_n<6, SW>(s, type, j);
        break;
    case 7:
        launch_n<7, SW>(s, type, j);
        break;
    case 8:
        launch_n<8, SW>(s, type, j);
        break;
    default:
        return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

static_assert(TSR_CUDA_GEMV_MAX_N == 8, "tsr_cuda_gemv dispatches n = 1..8");

extern "C" cudaError_t tsr_cuda_gemv(cudaStream_t s, const struct tsr_cuda_gemv *g)
{
    if (g->n_w < 1 || g->n_w > TSR_CUDA_GEMV_MAX_W || (g->swiglu && g->n_w != 2))
        return cudaErrorInvalidValue;
    job j = {};
    int total = 0;
    for (int i = 0; i < TSR_CUDA_GEMV_MAX_W; i++) {
        int k = i < g->n_w ? i : g->n_w - 1; /* unused slots repeat the last weight, never read */
        j.w[i] = (const uint8_t *)g->w[k];
        j.y[i] = g->y[k];
        j.rows[i] = g->rows[k];
        total += i < g->n_w ? g->rows[i] : 0;
        j.end[i] = i < g->n_w ? total : INT_MAX;
    }
    if (g->swiglu && g->rows[0] != g->rows[1]) return cudaErrorInvalidValue;
    j.units = g->swiglu ? g->rows[0] : total;
    j.rb = g->row_bytes;
    j.cols = g->cols;
    j.x = g->x;
    return g->swiglu ? launch<true>(s, g->type, j, g->n) : launch<false>(s, g->type, j, g->n);
}
