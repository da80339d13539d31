/* Quantized-weight GEMM for prefill and large decode batches: y[n][rows] = x[n][cols] · Wᵀ with W
 * in Q8_0 or F8_E4M3 blocks, read from device memory once per tile at its own size (1.06 and
 * 1.13 bytes a weight) instead of being decoded into bf16 copies first.
 *
 * - Tensor cores (mma.sync m16n8k16, bf16 operands, f32 accumulation). A block's 32 quants are
 *   integers (Q8_0: -127..127) or E4M3 values, both exact in bf16; each is multiplied by the
 *   block's scale (rounded to bf16) in registers as the A fragments are built, so a weight is
 *   d * q rounded to bf16 and x is rounded to bf16: the operands of a bf16 model's GEMM. (A first
 *   version kept q exact and applied d in f32 to each block's 32-deep partial sums: a zeroed
 *   partial accumulator and 2 FMAs per output per block, which with the tile below ran at 135
 *   TFLOP/s against cuBLAS bf16's 500 on an H100.)
 * - A block of 8 warps (4 where shared memory is smaller than Hopper's; where a block cannot have
 *   137 KiB, as on sm_86/89/120, the kernel is off) computes 256 (128) weight rows x 64
 *   activation rows; a warp 32 x 64 (2 x 8 mma tiles: its A fragments, built from the
 *   raw bytes, serve 8 B fragments each). K advances in chunks of 256 (8 quant blocks), staged in
 *   shared memory with 16-byte cp.async, double buffered: the raw quant rows (272 or 288 bytes a
 *   row) and the bf16 activations (512 bytes a row, padded to 528 so that ldmatrix rows fall in
 *   distinct banks). Tall tiles because every tile reads the activations again (from L2).
 * - When the tiles alone cannot fill the GPU (a batch of 64 against 4,096 rows is 16 tiles), K is
 *   split into S ranges; each writes its partial sums to a workspace and a second kernel adds them
 *   in range order, so a result depends on the shape only, never on timing.
 * Requirements (tsr_cuda_gemm_quant_fits): cols % 256 == 0, 16-byte aligned rows (then row_bytes
 * is a multiple of 16 too). */
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace
{

enum { BN = 64, BK = 256, BST = BK * 2 + 16 /* activation row stride */ };

/* A block is WM warps of 32 x 64 each: BM = 32 WM weight rows against BN activation rows. */
template <int WM> struct tile {
    enum { BM = 32 * WM, THREADS = 32 * WM };
};

template <int T> struct gfmt;
template <> struct gfmt<TSR_Q8_0> {
    enum { BB = TSR_Q8_0_BYTES, QOFF = 2, CHUNK = 8 * BB, AST = CHUNK };
};
template <> struct gfmt<TSR_F8_E4M3> {
    /* 288-byte rows would put rows g and g + 4 in one bank; 304 spreads the 8 rows */
    enum { BB = TSR_F8_BYTES, QOFF = 4, CHUNK = 8 * BB, AST = CHUNK + 16 };
};

template <int T, int WM> struct stage {
    enum { BYTES = tile<WM>::BM * gfmt<T>::AST + BN * BST };
};

/* Two quants (bytes lo, hi of v) as bf16x2, exactly (E4M3's NaN codes as NaN). */
template <int T> __device__ __forceinline__ uint32_t quant2(uint32_t v)
{
    uint32_t h = __byte_perm(v, 0, 0x4140); /* byte 0 -> bits 0..7, byte 1 -> bits 16..23 */
    __nv_bfloat162 r;
    if (T == TSR_Q8_0) {
        /* q in -128..127: bf16 128 + (q & 127), less 128 (q >= 0) or 256 (q < 0); exact */
        uint32_t a = (h & 0x007f007fu) | 0x43004300u, b = (h & 0x00800080u) | 0x43004300u;
        r = __hsub2(*(__nv_bfloat162 *)&a, *(__nv_bfloat162 *)&b);
    } else {
        /* E4M3 s.eeee.mmm into bf16's fields (exponent bias 127 for 7): the value times 2^-120,
         * subnormals included, then times 2^120 (exact: a power of two, no overflow) */
        uint32_t a = ((h << 4) & 0x07f007f0u) | ((h << 8) & 0x80008000u);
        a |= __vcmpeq2(h & 0x007f007fu, 0x007f007fu) & 0x7fc07fc0u; /* NaN codes: NaN */
        const uint32_t p120 = 0x7b807b80u;                          /* bf16 2^120, twice */
        r = __hmul2(*(__nv_bfloat162 *)&a, *(const __nv_bfloat162 *)&p120);
    }
    return *(uint32_t *)&r;
}

/* Two weights: the quants times the block's scale d, rounded to bf16. */
template <int T> __device__ __forceinline__ uint32_t weight2(uint32_t v, __nv_bfloat162 d)
{
    uint32_t q = quant2<T>(v);
    __nv_bfloat162 r = __hmul2(*(__nv_bfloat162 *)&q, d);
    return *(uint32_t *)&r;
}

template <int T> __device__ __forceinline__ float block_scale(const uint8_t *b)
{
    if (T == TSR_Q8_0) return __half2float(*(const __half *)b);
    return *(const float *)b;
}

__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix4(uint32_t (&r)[4], const void *p)
{
    uint32_t s = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

struct gq_args {
    const uint8_t *w;
    size_t rb;
    int rows, cols, n, chunks_per_split;
    const __nv_bfloat16 *x;
    float *y; /* [n][rows], or the workspace [S][n][rows] when split */
};

template <int T, int WM>
__device__ __forceinline__ void stage_in(uint8_t *st, const gq_args &a, int m0, int n0, int c)
{
    constexpr int AST = gfmt<T>::AST, CH16 = gfmt<T>::CHUNK / 16, BM = tile<WM>::BM,
                  THREADS = tile<WM>::THREADS;
    uint8_t *as = st, *bs = st + BM * AST;
    for (int i = threadIdx.x; i < BM * CH16; i += THREADS) {
        int r = i / CH16, sg = i % CH16, row = min(m0 + r, a.rows - 1);
        tsr_cp_async<16>(as + r * AST + sg * 16,
                         a.w + (size_t)row * a.rb + (size_t)c * gfmt<T>::CHUNK + sg * 16);
    }
    for (int i = threadIdx.x; i < BN * (BK / 8); i += THREADS) {
        int t = i / (BK / 8), sg = i % (BK / 8), tok = min(n0 + t, a.n - 1);
        tsr_cp_async<16>(bs + t * BST + sg * 16,
                         a.x + (size_t)tok * a.cols + (size_t)c * BK + sg * 8);
    }
    tsr_cp_async_commit();
}

template <int T, int WM>
__global__ void __launch_bounds__(tile<WM>::THREADS) gemm_quant(const gq_args a)
{
    constexpr int AST = gfmt<T>::AST, BB = gfmt<T>::BB, QOFF = gfmt<T>::QOFF, BM = tile<WM>::BM;
    constexpr int STAGE = stage<T, WM>::BYTES;
    extern __shared__ __align__(16) uint8_t smem[];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    int wm = warp * 32, n0 = blockIdx.x * BN, m0 = blockIdx.y * BM;
    int nchunks = a.cols / BK, c0 = blockIdx.z * a.chunks_per_split;
    int c1 = min(c0 + a.chunks_per_split, nchunks);
    float acc[2][8][4] = {};
    stage_in<T, WM>(smem, a, m0, n0, c0);
    for (int c = c0; c < c1; c++) {
        uint8_t *st = smem + ((c - c0) & 1) * STAGE;
        if (c + 1 < c1) {
            stage_in<T, WM>(smem + ((c + 1 - c0) & 1) * STAGE, a, m0, n0, c + 1);
            tsr_cp_async_wait<1>();
        } else {
            tsr_cp_async_wait<0>();
        }
        __syncthreads();
        const uint8_t *as = st, *bs = st + BM * AST;
#pragma unroll 2
        for (int blk = 0; blk < 8; blk++) {
            __nv_bfloat162 d[2][2]; /* the block's scale of rows g and g + 8 of each m tile */
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                const uint8_t *r = as + (wm + mt * 16 + g) * AST + blk * BB;
                d[mt][0] = __float2bfloat162_rn(block_scale<T>(r));
                d[mt][1] = __float2bfloat162_rn(block_scale<T>(r + 8 * AST));
            }
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int kk = blk * 32 + h * 16;
                uint32_t bf[4][4]; /* n tiles 2p, 2p + 1: b0, b1 each */
#pragma unroll
                for (int p = 0; p < 4; p++) {
                    int mat = lane >> 3, tok = p * 16 + (mat >> 1) * 8 + (lane & 7);
                    ldmatrix4(bf[p], bs + tok * BST + (kk + (mat & 1) * 8) * 2);
                }
#pragma unroll
                for (int mt = 0; mt < 2; mt++) {
                    const uint8_t *q =
                        as + (wm + mt * 16 + g) * AST + blk * BB + QOFF + h * 16 + 2 * t;
                    uint32_t af[4] = {weight2<T>(*(const uint16_t *)q, d[mt][0]),
                                      weight2<T>(*(const uint16_t *)(q + 8 * AST), d[mt][1]),
                                      weight2<T>(*(const uint16_t *)(q + 8), d[mt][0]),
                                      weight2<T>(*(const uint16_t *)(q + 8 * AST + 8), d[mt][1])};
#pragma unroll
                    for (int nt = 0; nt < 8; nt++)
                        mma16816(acc[mt][nt], af, bf[nt >> 1][(nt & 1) * 2],
                                 bf[nt >> 1][(nt & 1) * 2 + 1]);
                }
            }
        }
        __syncthreads(); /* the stage is refilled next iteration */
    }
    float *y = a.y + (size_t)blockIdx.z * a.n * a.rows;
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int row = m0 + wm + mt * 16 + g + (e >> 1) * 8, tok = n0 + nt * 8 + 2 * t + (e & 1);
                if (row < a.rows && tok < a.n) y[(size_t)tok * a.rows + row] = acc[mt][nt][e];
            }
}

/* y[i] = sum over s < S of ws[s][i], in order. */
__global__ void sum_splits(float *__restrict__ y, const float *__restrict__ ws, size_t count, int S)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x) {
        float s = ws[i];
        for (int k = 1; k < S; k++) s += ws[(size_t)k * count + i];
        y[i] = s;
    }
}

/* Warps along M, per device: 8 (256-row tiles, two stages of 202 or 218 KiB) where a block may
 * have that much shared memory (Hopper), 4 (137 or 142 KiB: A100), else 0: the kernel does not
 * fit (sm_86/89/120 give a block 99 KiB) and tsr_cuda_gemm_quant_fits refuses, so those GPUs keep
 * the cuBLAS path. Set by tsr_cuda_gemm_quant_init. */
enum { MAX_DEVICES = 64 };
int g_wm[MAX_DEVICES];

int wm_here(void)
{
    int d = -1;
    if (cudaGetDevice(&d) != cudaSuccess || d < 0 || d >= MAX_DEVICES) return 0;
    return g_wm[d];
}

/* K ranges of whole chunks for at most S splits: *per chunks each; returns how many ranges. */
int ranges(int nchunks, int S, int *per)
{
    *per = (nchunks + S - 1) / S;
    return (nchunks + *per - 1) / *per;
}

template <int T, int WM> cudaError_t launch_wm(cudaStream_t s, const gq_args &a, int S)
{
    constexpr int BM = tile<WM>::BM;
    dim3 grid((unsigned)((a.n + BN - 1) / BN), (unsigned)((a.rows + BM - 1) / BM), (unsigned)S);
    gemm_quant<T, WM><<<grid, tile<WM>::THREADS, 2 * stage<T, WM>::BYTES, s>>>(a);
    return cudaGetLastError();
}

/* S: ranges(); a.y is the workspace when S > 1. */
template <int T> cudaError_t launch(cudaStream_t s, const gq_args &a, int S, float *y, int wm)
{
    cudaError_t e = wm == 8 ? launch_wm<T, 8>(s, a, S) : launch_wm<T, 4>(s, a, S);
    if (e != cudaSuccess) return e;
    if (S > 1) {
        size_t count = (size_t)a.n * a.rows;
        size_t blocks = (count + 255) / 256;
        unsigned grid1 = (unsigned)(blocks < 65535 ? blocks : 65535);
        sum_splits<<<grid1, 256, 0, s>>>(y, a.y, count, S);
    }
    return cudaGetLastError();
}

template <int WM> cudaError_t allow_smem()
{
    cudaError_t e =
        cudaFuncSetAttribute(gemm_quant<TSR_Q8_0, WM>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             2 * stage<TSR_Q8_0, WM>::BYTES);
    if (e != cudaSuccess) return e;
    return cudaFuncSetAttribute(gemm_quant<TSR_F8_E4M3, WM>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize,
                                2 * stage<TSR_F8_E4M3, WM>::BYTES);
}

} // namespace

extern "C" cudaError_t tsr_cuda_gemm_quant_init(int device)
{
    int optin = 0;
    if (device < 0 || device >= MAX_DEVICES) return cudaSuccess; /* the kernel stays off there */
    g_wm[device] = 0;
    cudaError_t e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (e != cudaSuccess) return e;
    int wm = optin >= 2 * stage<TSR_F8_E4M3, 8>::BYTES   ? 8
             : optin >= 2 * stage<TSR_F8_E4M3, 4>::BYTES ? 4
                                                         : 0;
    if (wm && (wm == 8 ? allow_smem<8>() : allow_smem<4>()) != cudaSuccess) {
        cudaGetLastError(); /* not an error of the backend: this device keeps the cuBLAS path */
        wm = 0;
    }
    g_wm[device] = wm;
    return cudaSuccess;
}

extern "C" int tsr_cuda_gemm_quant_fits(int type, int cols, size_t row_bytes, const void *w)
{
    return (type == TSR_Q8_0 || type == TSR_F8_E4M3) && cols > 0 && cols % BK == 0 &&
           row_bytes % 16 == 0 && ((uintptr_t)w & 15) == 0 && wm_here() != 0;
}

extern "C" int tsr_cuda_gemm_quant_splits(int rows, int cols, int n, int n_sms)
{
    int wm = wm_here(), bm = 32 * (wm ? wm : 4), nchunks = cols / BK, per;
    int tiles = ((n + BN - 1) / BN) * ((rows + bm - 1) / bm), S = 1;
    /* one tile a multiprocessor (its shared memory holds one), at least 2 chunks a range */
    while (tiles * S * 2 <= n_sms && S * 2 * 2 <= nchunks && S < 16) S *= 2;
    return ranges(nchunks, S, &per);
}

extern "C" cudaError_t tsr_cuda_gemm_quant(cudaStream_t s, int type, const void *w,
                                           size_t row_bytes, int rows, int cols, const uint16_t *x,
                                           int n, float *y, int splits, float *ws)
{
    int wm = wm_here(), per, S = ranges(cols / BK, splits < 1 ? 1 : splits, &per);
    if (!wm || S > splits) return cudaErrorInvalidValue; /* fits() said no; ws holds `splits` */
    gq_args a = {(const uint8_t *)w,       row_bytes,     rows, cols, n, per,
                 (const __nv_bfloat16 *)x, S > 1 ? ws : y};
    if (type == TSR_Q8_0) return launch<TSR_Q8_0>(s, a, S, y, wm);
    if (type == TSR_F8_E4M3) return launch<TSR_F8_E4M3>(s, a, S, y, wm);
    return cudaErrorInvalidValue;
}
