/* Causal attention over the paged KV cache ([slot][n_kv_head][head_dim] of f32, bf16 or FP8 E4M3
 * with a scale per slot and head, kernels/backend.h: the kernel is instantiated for each, an
 * element widened to f32 where it is used, an FP8 one as e4m3 * scale rounded to f32, as the CPU
 * backend widens it), prefill and decode alike: token t attends to positions 0..pos[t] of its
 * sequence through its block-table row.
 *
 * One block of WARPS warps per (token, KV head, group of up to MAX_G query heads sharing it, split
 * of the context). Each warp walks its share of the split's positions one at a time: it loads the
 * K row (lane d holds dims d, d+32, ...), scores all its query heads against it (warp sums),
 * updates an online softmax per head (running max, sum, unnormalized output in registers), and
 * accumulates the V row. The warps' states are merged in shared memory at the end. When the grid
 * of (token, KV head, head group) blocks is too small to fill the GPU (decode), each token's
 * context is split across blocks too, like flash-decoding: every split writes its partial state
 * (max, sum, output) to scratch and a second kernel merges them.
 *
 * Scores are computed on CUDA cores in f32, one K row per warp step, and K/V rows are read once
 * per (token, KV head, split): right for decode, where each token reads its own context once.
 * Prompt chunks go to the tensor-core kernel of cuda_attention_prefill.cu where it takes the head
 * size; this kernel serves them otherwise (re-reading the cache once per query token). A graph's
 * steps plan their splits for a bound on the positions (max_pos), not the step's own: splits past
 * a token's position find nothing to do and are skipped by the merge. */
#include <math.h>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

enum {
    WARPS = 4,
    THREADS = WARPS * 32,
    MAX_G = 8,      /* query heads per block */
    MIN_SPLIT = 32, /* fewest positions worth a split of their own (8 steps of each warp) */
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

/* Dims per lane: head_dim <= 32 * D; KV the cache's element (float, uint16_t for bf16 or uint8_t
 * for FP8). */
template <int D, typename KV>
__global__ void __launch_bounds__(THREADS)
    attn_kernel(struct tsr_cuda_attn_args a, int split_len, int splits, float *part)
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
    for (int idx = threadIdx.x; idx < g * hd; idx += THREADS) {
        int h = idx / hd, d = idx % hd;
        float m = -INFINITY;
        for (int w = 0; w < WARPS; w++) m = fmaxf(m, sm[w][h][0]);
        float l = 0.0f, o = 0.0f;
        if (m != -INFINITY)
            for (int w = 0; w < WARPS; w++) {
                float e = expf(sm[w][h][0] - m); /* 0 for a warp that saw no position */
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

/* Splits per token and positions per split. */
static void plan(const struct tsr_cuda_attn_args *a, int n_sms, int *splits, int *split_len)
{
    int group = a->n_head / a->n_kv_head, hchunks = (group + MAX_G - 1) / MAX_G;
    long base = (long)a->n_tokens * a->n_kv_head * hchunks, ctx = (long)a->max_pos + 1;
    long s = 1;
    if (base < n_sms) {
        s = (2L * n_sms + base - 1) / base;
        long cap = (ctx + MIN_SPLIT - 1) / MIN_SPLIT;
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
    int d = (a->head_dim + 31) / 32;
    if (d <= 1)
        attn_kernel<1, KV><<<grid, THREADS, 0, s>>>(*a, len, splits, scratch);
    else if (d <= 2)
        attn_kernel<2, KV><<<grid, THREADS, 0, s>>>(*a, len, splits, scratch);
    else if (d <= 4)
        attn_kernel<4, KV><<<grid, THREADS, 0, s>>>(*a, len, splits, scratch);
    else
        attn_kernel<8, KV><<<grid, THREADS, 0, s>>>(*a, len, splits, scratch);
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
