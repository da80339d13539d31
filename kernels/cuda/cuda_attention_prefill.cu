/* Causal flash attention for prompt chunks on tensor cores, over the paged KV cache
 * (f32, bf16 or FP8 [slot][n_kv_head][head_dim], FP8 rows with a scale per head: kernels/backend.h;
 * slot = block_tables[seq][pos / block_size] * block_size + pos % block_size). A tile is up to 64
 * consecutive query tokens of one sequence; every query of the tile is scored against each K/V
 * chunk loaded once, where cuda_attention.cu re-reads the cache once per query token.
 *
 * Decomposition: one block of 4 warps per (tile, query head); warp w owns query rows 16w..16w+15
 * of the tile. The block walks key positions 0 .. the tile's last position in chunks of 64:
 *   1. the chunk's K and V rows (f32 or bf16, as the cache holds them) are copied from the cache
 *      into a shared-memory stage with 16-byte cp.async (4 or 8 elements), one warp per
 *      contiguous row run (coalesced); positions past the tile's last are zero-filled, never
 *      read;
 *   2. the stage is converted to f16 rows padded by 8 halves (16 bytes), so that the 8 row
 *      addresses of each ldmatrix phase fall in distinct banks;
 *   3. the next chunk's copy is issued, then each warp computes on this one: S = Q·Kᵀ with
 *      mma.m16n8k16 (Q fragments in registers for the whole walk, K fragments by ldmatrix), the
 *      causal mask (key position > query position → -inf), an f32 online softmax in base 2 (Q is
 *      pre-multiplied by scale·log2 e before its conversion to f16), P rounded to f16 in
 *      registers (the S accumulator layout is the A operand layout, no shuffle), O += P·V (V
 *      fragments by ldmatrix.trans).
 * So each chunk's global loads overlap the previous chunk's tensor-core work; a block holds one
 * stage and one f16 chunk (head_dim 128: 64 KB + 34 KB with an f32 cache, two blocks per H100 SM;
 * 32 KB + 34 KB with a bf16 one, three). bf16 to f16 is exact (8 significant bits into 11) for
 * |x| in f16's normal range, so a bf16 cache adds no rounding here.
 *
 * Why per query head and not a block per KV head with its query heads stacked as rows: the block
 * has 64 rows either way, so stacking g heads would mean 64/g tokens per block and the same K/V
 * bytes per row; what it would save is only the diagonal's partly masked work. Instead the
 * query heads sharing a KV head are adjacent block indices, so they run together and their K/V
 * reads after the first come from L2. Tiles are issued last first: later tiles of a sequence see
 * more context, and starting the longest blocks first shortens the tail.
 *
 * Fragment layouts (PTX ISA, mma.m16n8k16 .f16, groupID g = lane >> 2, t = lane % 4):
 *   A 16x16 row-major, 4 x .f16x2: {row g, cols 2t,2t+1}, {row g+8, same}, {row g, cols 2t+8,
 *     2t+9}, {row g+8, same}; low half = lower column;
 *   B 16x8 "col" (k contiguous per n), 2 x .f16x2: {k 2t,2t+1; n g}, {k 2t+8,2t+9; n g};
 *   C/D 16x8 f32: c0,c1 row g cols 2t,2t+1; c2,c3 row g+8 same cols.
 *   ldmatrix.x4: lane 8m+r gives the address of row r of matrix m; lane 4r+i receives halves
 *     (2i, 2i+1) of row r of matrix m in register m (.trans: of column r, i.e. rows 2i, 2i+1).
 *
 * Requirements (checked by the launcher): head_dim 64 or 128; kc and vc 16-byte aligned (the
 * cp.async source), q and out 8-byte aligned. K and V must fit f16 (|x| < 65504), in a bf16 cache
 * too (whose range is f32's).
 *
 * Precision: Q·scale, K, V and P are rounded to f16 (relative 2^-12 each), products and sums in
 * f32; tests/gpu/test_cuda_ops.c holds the error budget. */
#include <atomic>
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace
{

enum {
    WARPS = 4,
    THREADS = WARPS * 32,
    ROWS = 16 * WARPS, /* query rows per block */
    CHUNK = 64,        /* key positions per step */
    PAD = 8,           /* halves of padding per f16 row */
};
static_assert(ROWS == TSR_CUDA_PREFILL_TILE, "one block row per tile token");

constexpr float LOG2E = 1.4426950408889634f;

/* KV: the cache's element, float, uint16_t (bf16 bits) or uint8_t (an E4M3 code). An FP8 stage
 * piece converts to f16 as e4m3 * scale rounded to f32 first, the value the f32 path would stage
 * for a cache holding the widened rows (so the same f16 bits), and f16 holds it as it holds f32
 * ones (K and V within f16's range). */
template <int HD, typename KV> struct layout {
    static constexpr int E = 16 / (int)sizeof(KV); /* elements per 16-byte copy */
    static constexpr int F4 = HD / E;              /* 16-byte pieces per K or V row */
    static constexpr int LD = HD + PAD; /* f16 row stride, halves (a multiple of 8: 16 bytes) */
    static constexpr size_t STAGE = (size_t)2 * CHUNK * HD * sizeof(KV); /* K then V, as cached */
    static constexpr size_t HALVES = (size_t)2 * CHUNK * LD * 2;         /* K then V, f16 */
    static constexpr size_t SMEM = STAGE + HALVES;
    static_assert(HD % 16 == 0 && (LD * 2) % 16 == 0, "ldmatrix rows must be 16-byte aligned");
    static_assert(CHUNK * F4 % THREADS == 0, "whole rounds of 16-byte copies");
};

__device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi)
{
    __half2_raw r = static_cast<__half2_raw>(__floats2half2_rn(lo, hi)); /* .x = lo */
    return (uint32_t)r.x | (uint32_t)r.y << 16;
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const __half *p)
{
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const __half *p)
{
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
}

/* 16 bytes of zeros at p (a stage piece past the tile's last position). */
__device__ __forceinline__ void zero_piece(float *p)
{
    *(float4 *)p = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
}

__device__ __forceinline__ void zero_piece(uint16_t *p)
{
    *(uint4 *)p = make_uint4(0, 0, 0, 0);
}

__device__ __forceinline__ void zero_piece(uint8_t *p)
{
    *(uint4 *)p = make_uint4(0, 0, 0, 0);
}

/* Piece i of the stage (E elements as cached) as f16 at dst (16-byte aligned when E is 8 or 16);
 * sc: the stage rows' scales (FP8 only). */
__device__ __forceinline__ void piece_to_f16(const float *stage, int i, __half *dst, const float *)
{
    float4 f = ((const float4 *)stage)[i];
    *(uint2 *)dst = make_uint2(pack_f16x2(f.x, f.y), pack_f16x2(f.z, f.w));
}

__device__ __forceinline__ void piece_to_f16(const uint16_t *stage, int i, __half *dst,
                                             const float *)
{
    uint4 u = ((const uint4 *)stage)[i]; /* 8 bf16, the lower element in each word's low half */
    uint32_t w[4] = {u.x, u.y, u.z, u.w}, h[4];
#pragma unroll
    for (int j = 0; j < 4; j++)
        h[j] = pack_f16x2(__uint_as_float(w[j] << 16), __uint_as_float(w[j] & 0xffff0000u));
    *(uint4 *)dst = make_uint4(h[0], h[1], h[2], h[3]);
}

template <int F4>
__device__ __forceinline__ void piece_to_f16(const uint8_t *stage, int i, __half *dst,
                                             const float *sc)
{
    uint4 u = ((const uint4 *)stage)[i]; /* 16 codes, the first in the low byte of u.x */
    float d = sc[i / F4];                /* its row's scale */
    uint32_t w[4] = {u.x, u.y, u.z, u.w}, h[8];
#pragma unroll
    for (int j = 0; j < 8; j++) {
        uint32_t b = w[j / 2] >> (16 * (j & 1));
        h[j] = pack_f16x2(__fmul_rn(d, tsr_dev_e4m3(b & 0xff)),
                          __fmul_rn(d, tsr_dev_e4m3((b >> 8) & 0xff)));
    }
    ((uint4 *)dst)[0] = make_uint4(h[0], h[1], h[2], h[3]);
    ((uint4 *)dst)[1] = make_uint4(h[4], h[5], h[6], h[7]);
}

/* d += a · b for one 16x8x16 step: f16 operands, f32 accumulator. */
__device__ __forceinline__ void mma16816(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <int HD, typename KV>
__global__ void __launch_bounds__(THREADS)
    prefill_kernel(struct tsr_cuda_attn_args a, const struct tsr_cuda_attn_tile *tiles, int n_tiles,
                   float qscale)
{
    typedef layout<HD, KV> L;
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ float scales[sizeof(KV) == 1 ? 2 * CHUNK : 1]; /* FP8: the stage rows' scales */
    KV *stage = (KV *)smem;                   /* [2][CHUNK][HD]: K rows, then V rows */
    __half *kh = (__half *)(smem + L::STAGE); /* [CHUNK][LD] */
    __half *vh = kh + CHUNK * L::LD;          /* [CHUNK][LD], directly after kh */

    int tile = n_tiles - 1 - (int)(blockIdx.x / a.n_head), h = (int)(blockIdx.x % a.n_head);
    struct tsr_cuda_attn_tile tl = tiles[tile];
    int len = min(tl.len, ROWS);
    if (len <= 0) return; /* the whole block, before any barrier */
    int kvh = h / (a.n_head / a.n_kv_head), bs = a.block_size;
    int last = tl.pos0 + len - 1, n_chunks = last / CHUNK + 1;
    const int32_t *bt = a.block_tables + (size_t)tl.seq * a.max_blocks;
    size_t kw = tsr_dev_kv_row<KV>(a.n_kv_head, HD), koff = (size_t)kvh * HD;
    /* FP8: from a head's codes to its scale, bytes */
    size_t soff = (size_t)a.n_kv_head * HD + 4 * (size_t)kvh - (size_t)kvh * HD;
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, tq = lane & 3;

    /* Copies chunk c's K and V rows into the stage (or zeros past `last`): 16 bytes a thread,
     * consecutive threads along a row. */
    const KV *kc = (const KV *)a.kc, *vc = (const KV *)a.vc;
    auto load_chunk = [&](int c) {
#pragma unroll 4
        for (int i = tid; i < CHUNK * L::F4; i += THREADS) {
            int r = i / L::F4, c4 = i % L::F4, p = c * CHUNK + r;
            KV *dk = stage + r * HD + c4 * L::E, *dv = dk + CHUNK * HD;
            if (p <= last) {
                size_t off = ((size_t)bt[p / bs] * bs + p % bs) * kw + koff + c4 * L::E;
                tsr_cp_async<16>(dk, kc + off);
                tsr_cp_async<16>(dv, vc + off);
            } else {
                zero_piece(dk);
                zero_piece(dv);
            }
        }
        if constexpr (sizeof(KV) == 1) {
            if (tid < CHUNK) {
                int p = c * CHUNK + tid;
                if (p <= last) {
                    size_t off = ((size_t)bt[p / bs] * bs + p % bs) * kw + koff + soff;
                    tsr_cp_async<4>(&scales[tid], (const uint8_t *)kc + off);
                    tsr_cp_async<4>(&scales[CHUNK + tid], (const uint8_t *)vc + off);
                } else {
                    scales[tid] = scales[CHUNK + tid] = 0.0f;
                }
            }
        }
        tsr_cp_async_commit();
    };
    load_chunk(0);

    /* This warp's rows of Q (zeros past len) as A fragments, times scale·log2 e. */
    int row0 = 16 * warp + g, row1 = row0 + 8;
    bool active = 16 * warp < len;
    int wmin = tl.pos0 + 16 * warp, wmax = tl.pos0 + min(16 * warp + 15, len - 1);
    uint32_t qf[HD / 16][4];
    {
        const float *q0 = row0 < len ? a.q + ((size_t)(tl.t0 + row0) * a.n_head + h) * HD : NULL;
        const float *q1 = row1 < len ? a.q + ((size_t)(tl.t0 + row1) * a.n_head + h) * HD : NULL;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            int c = kk * 16 + 2 * tq;
            float2 x00 = q0 ? *(const float2 *)(q0 + c) : make_float2(0.0f, 0.0f);
            float2 x10 = q1 ? *(const float2 *)(q1 + c) : make_float2(0.0f, 0.0f);
            float2 x01 = q0 ? *(const float2 *)(q0 + c + 8) : make_float2(0.0f, 0.0f);
            float2 x11 = q1 ? *(const float2 *)(q1 + c + 8) : make_float2(0.0f, 0.0f);
            qf[kk][0] = pack_f16x2(x00.x * qscale, x00.y * qscale);
            qf[kk][1] = pack_f16x2(x10.x * qscale, x10.y * qscale);
            qf[kk][2] = pack_f16x2(x01.x * qscale, x01.y * qscale);
            qf[kk][3] = pack_f16x2(x11.x * qscale, x11.y * qscale);
        }
    }

    float o[HD / 8][4]; /* O, rows g and g+8, dims 8·db + 2t, +1 */
#pragma unroll
    for (int db = 0; db < HD / 8; db++) o[db][0] = o[db][1] = o[db][2] = o[db][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY; /* running max (base 2) of rows g, g+8 */
    float l0 = 0.0f, l1 = 0.0f;           /* this thread's part of the running sums */

    for (int j = 0; j < n_chunks; j++) {
        tsr_cp_async_wait<0>();
        __syncthreads(); /* the stage holds chunk j; every warp is done with the last f16 chunk */
#pragma unroll 4
        for (int i = tid; i < 2 * CHUNK * L::F4; i += THREADS) {
            int r = i / L::F4, c4 = i % L::F4; /* rows CHUNK.. are V, which follows K */
            if constexpr (sizeof(KV) == 1)
                piece_to_f16<L::F4>(stage, i, kh + r * L::LD + c4 * L::E, scales);
            else
                piece_to_f16(stage, i, kh + r * L::LD + c4 * L::E, scales);
        }
        __syncthreads(); /* the f16 chunk is ready; the stage is free */
        if (j + 1 < n_chunks) load_chunk(j + 1);

        int c0 = j * CHUNK;
        if (!active || c0 > wmax) continue; /* warp-uniform: every key here is masked */

        /* S = Q·Kᵀ: 16 rows x 64 keys, s[nb] the keys 8·nb .. 8·nb+7. */
        float s[CHUNK / 8][4];
#pragma unroll
        for (int nb = 0; nb < CHUNK / 8; nb++) s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
#pragma unroll
            for (int n2 = 0; n2 < CHUNK / 16; n2++) {
                /* Matrices: keys +0 dims +0, keys +0 dims +8, keys +8 dims +0, keys +8 dims +8. */
                uint32_t b[4];
                ldmatrix_x4(b, kh + (n2 * 16 + (lane >> 4) * 8 + (lane & 7)) * L::LD + kk * 16 +
                                   ((lane >> 3) & 1) * 8);
                mma16816(s[2 * n2], qf[kk], b[0], b[1]);
                mma16816(s[2 * n2 + 1], qf[kk], b[2], b[3]);
            }
        }
        if (c0 + CHUNK - 1 > wmin) { /* the chunk reaches past some row's position */
            int qp0 = tl.pos0 + row0, qp1 = tl.pos0 + row1;
#pragma unroll
            for (int nb = 0; nb < CHUNK / 8; nb++) {
                int kp = c0 + nb * 8 + 2 * tq;
                if (kp > qp0) s[nb][0] = -INFINITY;
                if (kp + 1 > qp0) s[nb][1] = -INFINITY;
                if (kp > qp1) s[nb][2] = -INFINITY;
                if (kp + 1 > qp1) s[nb][3] = -INFINITY;
            }
        }

        /* Online softmax; the 4 lanes of a group hold a row between them. */
        float x0 = -INFINITY, x1 = -INFINITY;
#pragma unroll
        for (int nb = 0; nb < CHUNK / 8; nb++) {
            x0 = fmaxf(x0, fmaxf(s[nb][0], s[nb][1]));
            x1 = fmaxf(x1, fmaxf(s[nb][2], s[nb][3]));
        }
#pragma unroll
        for (int off = 1; off < 4; off <<= 1) {
            x0 = fmaxf(x0, __shfl_xor_sync(0xffffffffu, x0, off));
            x1 = fmaxf(x1, __shfl_xor_sync(0xffffffffu, x1, off));
        }
        float n0 = fmaxf(m0, x0), n1 = fmaxf(m1, x1);
        /* A row with nothing unmasked yet keeps max -inf: subtract 0 so no inf - inf appears. */
        float z0 = n0 == -INFINITY ? 0.0f : n0, z1 = n1 == -INFINITY ? 0.0f : n1;
        float corr0 = exp2f(m0 - z0), corr1 = exp2f(m1 - z1); /* exp2(-inf) = 0 at the start */
        m0 = n0;
        m1 = n1;
        float r0 = 0.0f, r1 = 0.0f;
#pragma unroll
        for (int nb = 0; nb < CHUNK / 8; nb++) {
            s[nb][0] = exp2f(s[nb][0] - z0);
            s[nb][1] = exp2f(s[nb][1] - z0);
            s[nb][2] = exp2f(s[nb][2] - z1);
            s[nb][3] = exp2f(s[nb][3] - z1);
            r0 += s[nb][0] + s[nb][1];
            r1 += s[nb][2] + s[nb][3];
        }
        l0 = l0 * corr0 + r0;
        l1 = l1 * corr1 + r1;
#pragma unroll
        for (int db = 0; db < HD / 8; db++) {
            o[db][0] *= corr0;
            o[db][1] *= corr0;
            o[db][2] *= corr1;
            o[db][3] *= corr1;
        }

        /* O += P·V, 16 keys a step; P's accumulator layout is the A fragment layout. */
#pragma unroll
        for (int ks = 0; ks < CHUNK / 16; ks++) {
            uint32_t pa[4] = {pack_f16x2(s[2 * ks][0], s[2 * ks][1]),
                              pack_f16x2(s[2 * ks][2], s[2 * ks][3]),
                              pack_f16x2(s[2 * ks + 1][0], s[2 * ks + 1][1]),
                              pack_f16x2(s[2 * ks + 1][2], s[2 * ks + 1][3])};
#pragma unroll
            for (int d2 = 0; d2 < HD / 16; d2++) {
                /* Matrices (transposed): keys +0 dims +0, keys +8 dims +0, keys +0 dims +8,
                 * keys +8 dims +8. */
                uint32_t b[4];
                ldmatrix_x4_trans(b, vh + (ks * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * L::LD +
                                         d2 * 16 + (lane >> 4) * 8);
                mma16816(o[2 * d2], pa, b[0], b[1]);
                mma16816(o[2 * d2 + 1], pa, b[2], b[3]);
            }
        }
    }
    if (!active) return; /* then O / l, rows below len only */
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
    if (row0 < len) {
        float *out = a.out + ((size_t)(tl.t0 + row0) * a.n_head + h) * HD + 2 * tq;
#pragma unroll
        for (int db = 0; db < HD / 8; db++)
            *(float2 *)(out + db * 8) = make_float2(o[db][0] * inv0, o[db][1] * inv0);
    }
    if (row1 < len) {
        float *out = a.out + ((size_t)(tl.t0 + row1) * a.n_head + h) * HD + 2 * tq;
#pragma unroll
        for (int db = 0; db < HD / 8; db++)
            *(float2 *)(out + db * 8) = make_float2(o[db][2] * inv1, o[db][3] * inv1);
    }
}

template <int HD, typename KV>
cudaError_t launch(cudaStream_t s, const struct tsr_cuda_attn_args *a,
                   const struct tsr_cuda_attn_tile *tiles, int n_tiles)
{
    typedef layout<HD, KV> L;
    /* The dynamic shared-memory limit is a per-device attribute of the function: raise it once
     * per device (bit d for device d < 64; beyond that, every launch). */
    static std::atomic<unsigned long long> raised{0};
    int dev;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return e;
    unsigned long long bit = dev >= 0 && dev < 64 ? 1ull << dev : 0;
    if (!bit || !(raised.load() & bit)) {
        e = cudaFuncSetAttribute(prefill_kernel<HD, KV>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)L::SMEM);
        if (e != cudaSuccess) {
            cudaGetLastError(); /* returned here; don't leave it for the next op to report */
            return e;
        }
        raised.fetch_or(bit);
    }
    long blocks = (long)n_tiles * a->n_head;
    if (blocks > 0x7fffffffL) return cudaErrorInvalidConfiguration;
    prefill_kernel<HD, KV>
        <<<(unsigned)blocks, THREADS, L::SMEM, s>>>(*a, tiles, n_tiles, a->scale * LOG2E);
    return cudaGetLastError();
}

} // namespace

extern "C" int tsr_cuda_attention_prefill_ok(int head_dim)
{
    return head_dim == 64 || head_dim == 128;
}

extern "C" cudaError_t tsr_cuda_attention_prefill(cudaStream_t s,
                                                  const struct tsr_cuda_attn_args *a,
                                                  const struct tsr_cuda_attn_tile *tiles,
                                                  int n_tiles)
{
    if (n_tiles <= 0 || a->n_tokens <= 0) return cudaGetLastError();
    if (((uintptr_t)a->kc | (uintptr_t)a->vc) & 15 || ((uintptr_t)a->q | (uintptr_t)a->out) & 7)
        return cudaErrorMisalignedAddress;
    int hd = a->head_dim;
    if (hd != 64 && hd != 128) return cudaErrorInvalidValue;
    switch (a->kv_type) {
    case TSR_F32:
        return hd == 64 ? launch<64, float>(s, a, tiles, n_tiles)
                        : launch<128, float>(s, a, tiles, n_tiles);
    case TSR_BF16:
        return hd == 64 ? launch<64, uint16_t>(s, a, tiles, n_tiles)
                        : launch<128, uint16_t>(s, a, tiles, n_tiles);
    case TSR_F8_E4M3:
        return hd == 64 ? launch<64, uint8_t>(s, a, tiles, n_tiles)
                        : launch<128, uint8_t>(s, a, tiles, n_tiles);
    default:
        return cudaErrorInvalidValue;
    }
}
