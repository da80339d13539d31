/* Causal attention over the paged KV cache ([slot][n_kv_head][head_dim] of f32, bf16 or FP8 E4M3
 * with a scale per slot and head, kernels/backend.h: the kernels are instantiated for each, an
 * element widened to f32 where it is used, an FP8 one as e4m3 * scale rounded to f32, as the CPU
 * backend widens it), prefill and decode alike: token t attends to positions 0..pos[t] of its
 * sequence through its block-table row.
 *
 * Two kernels, one block of WARPS warps per (token, KV head, group of up to MAX_G query heads
 * sharing it, split of the context), each keeping an online softmax per head (running max, sum,
 * unnormalized output in registers), merged over the block's walkers in shared memory at the end:
 * - wide_kernel, for head sizes 32, 64, 128 and 256 (a power of two, so a row splits evenly over
 *   lanes): a row of a position is read by L = head_dim / 8 lanes, 8 contiguous elements each
 *   (one 16-byte load for bf16, two for f32, one 8-byte load for FP8), so a warp reads 32 / L
 *   positions at once, and U such steps are loaded before any is used: a warp keeps U * 32 / L K
 *   and V rows in flight (8 of each at head size 128) where the walk below keeps one. A position's
 *   scores are summed over its L lanes; the softmax is updated once per U positions.
 * - walk_kernel, any head size: each warp walks its positions one at a time (lane d holds dims d,
 *   d+32, ...), the next position's rows prefetched while this one's are used.
 * When the grid of (token, KV head, head group) blocks is too small to fill the GPU (decode), each
 * token's context is split across blocks too, like flash-decoding: every split writes its partial
 * state (max, sum, output) to scratch and a second kernel merges them.
 *
 * Scores are computed on CUDA cores in f32 and K/V rows are read once per (token, KV head, split):
 * right for decode, where each token reads its own context once. Prompt chunks go to the
 * tensor-core kernel of cuda_attention_prefill.cu where it takes the head size; these kernels
 * serve them otherwise (re-reading the cache once per query token). A graph's steps plan their
 * splits for a bound on the positions (max_pos), not the step's own: splits past a token's
 * position find nothing to do and are skipped by the merge. */
#include <math.h>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

enum {
    WARPS = 4,
    THREADS = WARPS * 32,
    MAX_G = 8,      /* query heads per block */
    MIN_SPLIT = 32, /* walk_kernel: fewest positions worth a split (8 steps of each warp) */
    WALK_FILL = 2,  /* blocks per multiprocessor the splits aim at: walk_kernel */
    WIDE_FILL = 3,  /* wide_kernel */
    /* wide_kernel's steps loaded at once (the rows a lane keeps in flight): the same for every
     * cache type, so that a bf16 or FP8 cache computes as an f32 one holding its widened values,
     * bit for bit (the same order) */
    WIDE_STEPS = 4,
};

/* A cache element as f32: KV is float (an f32 cache) or uint16_t (bf16 bits). */
static __device__ __forceinline__ float kv_f32(float x, float)
{
    return x;
}

static __device__ __forceinline__ float kv_f32(uint16_t h, float)
{
    return tsr_dev_bf16(h);
}

/* An FP8 code times its head's scale d: rounded once, never fused into what uses it. */
static __device__ __forceinline__ float kv_f32(uint8_t q, float d)
{
    return __fmul_rn(d, tsr_dev_e4m3(q));
}

/* Lane `lane`'s dims (lane + 32 i) of the K and V rows of position p, KV head kvh, as stored
 * (widened where they are used: a conversion here would wait for the load at once, and the
 * prefetch below would hide nothing; so it measured, a bf16 cache decoding at a third of the f32
 * one's speed), and for FP8 the head's K and V scales (1 otherwise, unused). */
template <int D, typename KV>
static __device__ __forceinline__ void load_kv(const struct tsr_cuda_attn_args &a,
                                               const int32_t *bt, int p, int kvh, int lane,
                                               KV (&k)[D], KV (&v)[D], float &ks, float &vs)
{
    int hd = a.head_dim, bs = a.block_size;
    size_t slot = (size_t)bt[p / bs] * bs + p % bs;
    size_t row = slot * tsr_dev_kv_row<KV>(a.n_kv_head, hd) + (size_t)kvh * hd;
    const KV *kr = (const KV *)a.kc + row, *vr = (const KV *)a.vc + row;
    ks = vs = 1.0f;
    if constexpr (sizeof(KV) == 1) {
        size_t sc = (size_t)a.n_kv_head * hd + 4 * (size_t)kvh - (size_t)kvh * hd;
        ks = *(const float *)((const uint8_t *)kr + sc);
        vs = *(const float *)((const uint8_t *)vr + sc);
    }
#pragma unroll
    for (int i = 0; i < D; i++) {
        int d = lane + 32 * i;
        k[i] = d < hd ? kr[d] : KV(0);
        v[i] = d < hd ? vr[d] : KV(0);
    }
}

/* A block's end: its n walkers' states (max and sum per head in sm, unnormalized output per head
 * in sacc) merged per (head, dim) and written to out, or to part as split `split`'s state when
 * the context is split. */
template <int N, int W>
static __device__ __forceinline__ void
finish(const struct tsr_cuda_attn_args &a, int t, int h0, int g, int split, int splits,
       const float (&sm)[N][MAX_G][2], const float (&sacc)[N][MAX_G][W], float *part)
{
    int hd = a.head_dim;
    for (int idx = threadIdx.x; idx < g * hd; idx += THREADS) {
        int h = idx / hd, d = idx % hd;
        float m = -INFINITY;
        for (int w = 0; w < N; w++) m = fmaxf(m, sm[w][h][0]);
        float l = 0.0f, o = 0.0f;
        if (m != -INFINITY)
            for (int w = 0; w < N; w++) {
                float e = expf(sm[w][h][0] - m); /* 0 for a walker that saw no position */
                l = fmaf(sm[w][h][1], e, l);
                o = fmaf(sacc[w][h][d], e, o);
            }
        if (splits == 1) {
            a.out[((size_t)t * a.n_head + h0 + h) * hd + d] = o / l;
        } else {
            /* part: [token][split][head][hd + 2]: output, then max and sum */
            float *pp = part + (((size_t)t * splits + split) * a.n_head + h0 + h) * (hd + 2);
            pp[d] = o;
            if (d == 0) {
                pp[hd] = m;
                pp[hd + 1] = l;
            }
        }
    }
}

/* Dims per lane: head_dim <= 32 * D; KV the cache's element (float, uint16_t for bf16 or uint8_t
 * for FP8). */
template <int D, typename KV>
__global__ void __launch_bounds__(THREADS)
    walk_kernel(struct tsr_cuda_attn_args a, int split_len, int splits, float *part)
{
    __shared__ float sm[WARPS][MAX_G][2];
    __shared__ float sacc[WARPS][MAX_G][32 * D];
    int t = blockIdx.x, group = a.n_head / a.n_kv_head, hchunks = (group + MAX_G - 1) / MAX_G;
    int kvh = blockIdx.y / hchunks, h0 = kvh * group + (blockIdx.y % hchunks) * MAX_G;
    int g = min(MAX_G, (kvh + 1) * group - h0); /* query heads of this block: h0 .. h0+g */
    int split = blockIdx.z, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int hd = a.head_dim, pos = a.pos[t];
    int lo = split * split_len, hi = min(lo + split_len, pos + 1);
    const int32_t *bt = a.block_tables + (size_t)a.seq[t] * a.max_blocks;

    float q[MAX_G][D], acc[MAX_G][D], mx[MAX_G], sum[MAX_G];
    const float *qt = a.q + ((size_t)t * a.n_head + h0) * hd;
#pragma unroll
    for (int h = 0; h < MAX_G; h++) {
        mx[h] = -INFINITY;
        sum[h] = 0.0f;
#pragma unroll
        for (int i = 0; i < D; i++) {
            int d = lane + 32 * i;
            q[h][i] = h < g && d < hd ? qt[(size_t)h * hd + d] : 0.0f;
            acc[h][i] = 0.0f;
        }
    }
    /* The next position's K and V rows are loaded while this one's are used: a warp's walk is a
     * chain of dependent steps, and without the prefetch each step waits a memory round trip. */
    KV kn[D], vn[D];
    float ksn = 1.0f, vsn = 1.0f;
    if (lo + warp < hi) load_kv<D, KV>(a, bt, lo + warp, kvh, lane, kn, vn, ksn, vsn);
    for (int p = lo + warp; p < hi; p += WARPS) {
        float k[D], v[D];
#pragma unroll
        for (int i = 0; i < D; i++) k[i] = kv_f32(kn[i], ksn), v[i] = kv_f32(vn[i], vsn);
        if (p + WARPS < hi) load_kv<D, KV>(a, bt, p + WARPS, kvh, lane, kn, vn, ksn, vsn);
#pragma unroll
        for (int h = 0; h < MAX_G; h++) {
            if (h >= g) break;
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < D; i++) s = fmaf(q[h][i], k[i], s);
            s = tsr_warp_sum(s) * a.scale;
            float m = fmaxf(mx[h], s);
            float corr = expf(mx[h] - m), w = expf(s - m); /* first step: expf(-inf) = 0 */
            mx[h] = m;
            sum[h] = sum[h] * corr + w;
#pragma unroll
            for (int i = 0; i < D; i++) acc[h][i] = fmaf(acc[h][i], corr, w * v[i]);
        }
    }
    /* Merge the warps. */
#pragma unroll
    for (int h = 0; h < MAX_G; h++) {
        if (lane == 0) {
            sm[warp][h][0] = mx[h];
            sm[warp][h][1] = sum[h];
        }
#pragma unroll
        for (int i = 0; i < D; i++) sacc[warp][h][lane + 32 * i] = acc[h][i];
    }
    __syncthreads();
    finish<WARPS, 32 * D>(a, t, h0, g, split, splits, sm, sacc, part);
}

/* Eight elements of a cache row as stored (see wide_kernel): 8, 4 or 2 words for f32, bf16, FP8. */
template <typename KV> struct raw8 {
    uint32_t w[2 * sizeof(KV)];
};

template <typename KV> static __device__ __forceinline__ void load8(const KV *p, raw8<KV> &r)
{
    if constexpr (sizeof(KV) == 1) {
        uint2 x = __ldg((const uint2 *)p);
        r.w[0] = x.x, r.w[1] = x.y;
    } else {
#pragma unroll
        for (int i = 0; i < (int)sizeof(KV) / 2; i++) {
            uint4 x = __ldg((const uint4 *)p + i);
            r.w[4 * i] = x.x, r.w[4 * i + 1] = x.y, r.w[4 * i + 2] = x.z, r.w[4 * i + 3] = x.w;
        }
    }
}

/* Element i of r as f32 (d: the FP8 head's scale). */
template <typename KV>
static __device__ __forceinline__ float elem8(const raw8<KV> &r, int i, float d)
{
    if constexpr (sizeof(KV) == 4)
        return __uint_as_float(r.w[i]);
    else if constexpr (sizeof(KV) == 2)
        return kv_f32((uint16_t)(r.w[i >> 1] >> 16 * (i & 1)), d);
    else
        return kv_f32((uint8_t)(r.w[i >> 2] >> 8 * (i & 3)), d);
}

/* HD: the head size (64, 128 or 256); KV the cache's element as for walk_kernel. A walker is a
 * group of L = HD / 8 lanes; the block's NS walkers read NS consecutive positions per step. */
template <int HD, typename KV>
__global__ void __launch_bounds__(THREADS)
    wide_kernel(struct tsr_cuda_attn_args a, int split_len, int splits, float *part)
{
    constexpr int L = HD / 8, NS = WARPS * 32 / L, U = WIDE_STEPS;
    __shared__ float sm[NS][MAX_G][2];
    __shared__ float sacc[NS][MAX_G][HD];
    int t = blockIdx.x, group = a.n_head / a.n_kv_head, hchunks = (group + MAX_G - 1) / MAX_G;
    int kvh = blockIdx.y / hchunks, h0 = kvh * group + (blockIdx.y % hchunks) * MAX_G;
    int g = min(MAX_G, (kvh + 1) * group - h0); /* query heads of this block: h0 .. h0+g */
    int split = blockIdx.z, lane = threadIdx.x & 31, d0 = (lane % L) * 8;
    int walker = (threadIdx.x >> 5) * (32 / L) + lane / L;
    int pos = a.pos[t], bs = a.block_size;
    int lo = split * split_len, hi = min(lo + split_len, pos + 1);
    const int32_t *bt = a.block_tables + (size_t)a.seq[t] * a.max_blocks;
    /* an FP8 row's scale of this KV head, in bytes from the row's start */
    size_t row = tsr_dev_kv_row<KV>(a.n_kv_head, HD), soff = (size_t)a.n_kv_head * HD + 4 * kvh;

    float q[MAX_G][8], acc[MAX_G][8], mx[MAX_G], sum[MAX_G];
    const float *qt = a.q + ((size_t)t * a.n_head + h0) * HD + d0;
#pragma unroll
    for (int h = 0; h < MAX_G; h++) {
        mx[h] = -INFINITY;
        sum[h] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            q[h][e] = h < g ? qt[(size_t)h * HD + e] : 0.0f;
            acc[h][e] = 0.0f;
        }
    }
    for (int r0 = lo; r0 < hi; r0 += NS * U) {
        /* All U steps' rows are requested before any is used. */
        raw8<KV> kr[U], vr[U];
        float ks[U], vs[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int p = r0 + u * NS + walker;
            ks[u] = vs[u] = 1.0f;
            if (p < hi) {
                size_t slot = (size_t)bt[p / bs] * bs + p % bs;
                const KV *kp = (const KV *)a.kc + slot * row, *vp = (const KV *)a.vc + slot * row;
                load8<KV>(kp + (size_t)kvh * HD + d0, kr[u]);
                load8<KV>(vp + (size_t)kvh * HD + d0, vr[u]);
                if constexpr (sizeof(KV) == 1) {
                    ks[u] = __ldg((const float *)((const uint8_t *)kp + soff));
                    vs[u] = __ldg((const float *)((const uint8_t *)vp + soff));
                }
            } else {
#pragma unroll
                for (int i = 0; i < 2 * (int)sizeof(KV); i++) kr[u].w[i] = vr[u].w[i] = 0;
            }
        }
        /* Per head: the U positions' scores, one softmax update, their V rows. The bookkeeping's
         * products and sums are rounded as written (__fmul_rn, __fadd_rn: never contracted into an
         * FMA, which the compiler may do differently in each instantiation) so that every cache
         * type computes alike. */
#pragma unroll
        for (int h = 0; h < MAX_G; h++) {
            if (h >= g) break;
            float sc[U], m = mx[h];
#pragma unroll
            for (int u = 0; u < U; u++) {
                float x = 0.0f;
#pragma unroll
                for (int e = 0; e < 8; e++) x = fmaf(q[h][e], elem8<KV>(kr[u], e, ks[u]), x);
#pragma unroll
                for (int o = L / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
                sc[u] = r0 + u * NS + walker < hi ? __fmul_rn(x, a.scale) : -INFINITY;
                m = fmaxf(m, sc[u]);
            }
            if (m == -INFINITY) continue; /* nothing seen yet */
            float corr = expf(mx[h] - m); /* first positions: expf(-inf) = 0 */
            float l = __fmul_rn(sum[h], corr);
            mx[h] = m;
#pragma unroll
            for (int e = 0; e < 8; e++) acc[h][e] = __fmul_rn(acc[h][e], corr);
#pragma unroll
            for (int u = 0; u < U; u++) {
                float w = expf(sc[u] - m);
                l = __fadd_rn(l, w);
#pragma unroll
                for (int e = 0; e < 8; e++)
                    acc[h][e] = fmaf(w, elem8<KV>(vr[u], e, vs[u]), acc[h][e]);
            }
            sum[h] = l;
        }
    }
#pragma unroll
    for (int h = 0; h < MAX_G; h++) {
        if (lane % L == 0) {
            sm[walker][h][0] = mx[h];
            sm[walker][h][1] = sum[h];
        }
#pragma unroll
        for (int e = 0; e < 8; e++) sacc[walker][h][d0 + e] = acc[h][e];
    }
    __syncthreads();
    finish<NS, HD>(a, t, h0, g, split, splits, sm, sacc, part);
}

/* One block per (token, head): out = the splits' outputs weighted by exp(max - overall max). */
__global__ void merge_kernel(struct tsr_cuda_attn_args a, int splits, const float *part)
{
    int t = blockIdx.x, h = blockIdx.y, hd = a.head_dim;
    const float *pp = part + ((size_t)t * splits * a.n_head + h) * (hd + 2);
    size_t stride = (size_t)a.n_head * (hd + 2); /* from one split to the next */
    float m = -INFINITY;
    for (int s = 0; s < splits; s++) m = fmaxf(m, pp[s * stride + hd]);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float l = 0.0f, o = 0.0f;
        for (int s = 0; s < splits; s++) {
            float ms = pp[s * stride + hd];
            if (ms == -INFINITY) continue; /* a split past pos[t] */
            float e = expf(ms - m);
            l = fmaf(pp[s * stride + hd + 1], e, l);
            o = fmaf(pp[s * stride + d], e, o);
        }
        a.out[((size_t)t * a.n_head + h) * hd + d] = o / l;
    }
}

/* Whether wide_kernel takes this launch: its head sizes, and caches aligned for its 16-byte loads
 * (rows are multiples of 16 bytes at these sizes, FP8 ones padded to it). */
static bool wide_ok(const struct tsr_cuda_attn_args *a)
{
    int hd = a->head_dim;
    return !a->walk && (hd == 64 || hd == 128 || hd == 256) &&
           ((uintptr_t)a->kc | (uintptr_t)a->vc) % 16 == 0;
}

/* Positions one round of a wide_kernel block reads. */
static int wide_round(const struct tsr_cuda_attn_args *a)
{
    return WARPS * 32 / (a->head_dim / 8) * WIDE_STEPS;
}

/* Splits per token and positions per split: when the (token, KV head, head group) blocks are
 * fewer than `fill` per multiprocessor, enough splits to make them so, each of at least `least`
 * positions (two rounds of wide_kernel's block). */
static void plan(const struct tsr_cuda_attn_args *a, int n_sms, int *splits, int *split_len)
{
    bool wide = wide_ok(a);
    int group = a->n_head / a->n_kv_head, hchunks = (group + MAX_G - 1) / MAX_G;
    long fill = (long)(wide ? WIDE_FILL : WALK_FILL) * n_sms;
    long least = wide ? 2 * wide_round(a) : MIN_SPLIT;
    long base = (long)a->n_tokens * a->n_kv_head * hchunks, ctx = (long)a->max_pos + 1;
    long s = 1;
    if (base < fill) {
        s = (fill + base - 1) / base;
        long cap = (ctx + least - 1) / least;
        if (s > cap) s = cap;
        if (s < 1) s = 1;
    }
    long len = (ctx + s - 1) / s;
    *split_len = (int)len;
    *splits = (int)((ctx + len - 1) / len);
}

extern "C" size_t tsr_cuda_attention_scratch(const struct tsr_cuda_attn_args *a, int n_sms,
                                             int *splits)
{
    int len;
    plan(a, n_sms, splits, &len);
    if (*splits == 1) return 0;
    return (size_t)a->n_tokens * *splits * a->n_head * (a->head_dim + 2);
}

template <typename KV>
static void launch_attn(cudaStream_t s, const struct tsr_cuda_attn_args *a, dim3 grid, int len,
                        int splits, float *scratch)
{
    int hd = a->head_dim, d = (hd + 31) / 32;
    if (wide_ok(a) && hd == 64)
        wide_kernel<64, KV><<<grid, THREADS, 0, s>>>(*a, len, splits, scratch);
    else if (wide_ok(a) && hd == 128)
        wide_kernel<128, KV><<<grid, THREADS, 0, s>>>(*a, len, splits, scratch);
    else if (wide_ok(a))
        wide_kernel<256, KV><<<grid, THREADS, 0, s>>>(*a, len, splits, scratch);
    else if (d <= 1)
        walk_kernel<1, KV><<<grid, THREADS, 0, s>>>(*a, len, splits, scratch);
    else if (d <= 2)
        walk_kernel<2, KV><<<grid, THREADS, 0, s>>>(*a, len, splits, scratch);
    else if (d <= 4)
        walk_kernel<4, KV><<<grid, THREADS, 0, s>>>(*a, len, splits, scratch);
    else
        walk_kernel<8, KV><<<grid, THREADS, 0, s>>>(*a, len, splits, scratch);
}

extern "C" cudaError_t tsr_cuda_attention(cudaStream_t s, const struct tsr_cuda_attn_args *a,
                                          int splits, float *scratch)
{
    if (a->n_tokens <= 0) return cudaGetLastError();
    if (a->kv_type != TSR_F32 && a->kv_type != TSR_BF16 && a->kv_type != TSR_F8_E4M3)
        return cudaErrorInvalidValue;
    int ctx = a->max_pos + 1, len = (ctx + splits - 1) / splits;
    int group = a->n_head / a->n_kv_head, hchunks = (group + MAX_G - 1) / MAX_G;
    dim3 grid(a->n_tokens, a->n_kv_head * hchunks, splits);
    if (a->kv_type == TSR_BF16)
        launch_attn<uint16_t>(s, a, grid, len, splits, scratch);
    else if (a->kv_type == TSR_F8_E4M3)
        launch_attn<uint8_t>(s, a, grid, len, splits, scratch);
    else
        launch_attn<float>(s, a, grid, len, splits, scratch);
    if (splits > 1) {
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return e;
        merge_kernel<<<dim3(a->n_tokens, a->n_head), 128, 0, s>>>(*a, splits, scratch);
    }
    return cudaGetLastError();
}
