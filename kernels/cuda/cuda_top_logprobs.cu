/* The k most likely tokens of each row, for OpenAI's top_logprobs (k <= 20), under the host's
 * distribution (worker/sampling.c tsr_top_logprobs): the log-softmax of the raw row,
 * (x[i] - max) - log(sum exp(x - max)), exp in double.
 *
 * One block of TOP_THREADS threads per row. Nothing is sorted: round j finds the largest token
 * after round j-1's in the order (logit descending, index ascending), a block-wide reduction over
 * the row, so k rounds read the row k + 2 times (from L2 after the first: a 128k row is 512 KB).
 * That costs k passes where a select would cost a few, and is only run for rows that ask. NaN
 * logits are skipped, as on the host. */
#include <math.h>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

enum { TOP_THREADS = 256, TOP_WARPS = TOP_THREADS / 32 };

/* (v, i) before (w, j) in the order: larger value first, lower index on ties; i < 0 is nothing. */
static __device__ __forceinline__ bool before(float v, int i, float w, int j)
{
    if (j < 0) return i >= 0;
    if (i < 0) return false;
    return v > w || (v == w && i < j);
}

/* The block's first (value, index) in the order, to every thread. */
static __device__ void block_first(float &v, int &i, float *sv, int *si)
{
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, v, o);
        int j = __shfl_xor_sync(0xffffffffu, i, o);
        if (before(w, j, v, i)) v = w, i = j;
    }
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads(); /* the previous call's readers are done */
    if (lane == 0) sv[warp] = v, si[warp] = i;
    __syncthreads();
    v = sv[0];
    i = si[0];
    for (int w = 1; w < TOP_WARPS; w++)
        if (before(sv[w], si[w], v, i)) v = sv[w], i = si[w];
}

__global__ void __launch_bounds__(TOP_THREADS)
    top_logprobs_kernel(const float *__restrict__ x, int width, size_t ld, int k,
                        int32_t *__restrict__ ids, float *__restrict__ lps)
{
    __shared__ float sv[TOP_WARPS];
    __shared__ int si[TOP_WARPS];
    __shared__ double sd[TOP_WARPS];
    const float *row = x + (size_t)blockIdx.x * ld;
    /* the max (the first in the order) */
    float mv = 0;
    int mi = -1;
    for (int i = threadIdx.x; i < width; i += TOP_THREADS) {
        float v = __ldg(row + i);
        if (!isnan(v) && before(v, i, mv, mi)) mv = v, mi = i;
    }
    block_first(mv, mi, sv, si);
    /* sum exp(x - max) in double, NaN skipped */
    double sum = 0;
    for (int i = threadIdx.x; mi >= 0 && i < width; i += TOP_THREADS) {
        float v = __ldg(row + i);
        if (!isnan(v)) sum += exp((double)v - (double)mv);
    }
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (threadIdx.x % 32 == 0) sd[threadIdx.x / 32] = sum;
    __syncthreads();
    double total = 0;
    for (int w = 0; w < TOP_WARPS; w++) total += sd[w];
    double lse = log(total);
    /* round j: the first token after the previous round's */
    float pv = mv;
    int pi = mi;
    for (int j = 0; j < k; j++) {
        if (j > 0) {
            float bv = 0;
            int bi = -1;
            for (int i = threadIdx.x; pi >= 0 && i < width; i += TOP_THREADS) {
                float v = __ldg(row + i);
                if (isnan(v) || !before(pv, pi, v, i)) continue; /* not after the previous */
                if (before(v, i, bv, bi)) bv = v, bi = i;
            }
            block_first(bv, bi, sv, si);
            pv = bv;
            pi = bi;
        }
        if (threadIdx.x == 0) {
            ids[(size_t)blockIdx.x * k + j] = pi;
            lps[(size_t)blockIdx.x * k + j] =
                pi >= 0 ? (float)(((double)pv - (double)mv) - lse) : -INFINITY;
        }
    }
}

extern "C" cudaError_t tsr_cuda_top_logprobs(cudaStream_t s, const float *x, int n, int width,
                                             size_t ld, int k, int32_t *ids, float *lps)
{
    if (n > 0 && k > 0)
        top_logprobs_kernel<<<n, TOP_THREADS, 0, s>>>(x, width, ld, k, ids, lps);
    return cudaGetLastError();
}
