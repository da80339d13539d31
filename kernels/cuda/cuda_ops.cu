/* The CUDA backend's small ops: embeddings, RMS norms, SwiGLU, row gathers, RoPE with the KV-cache
 * write, and the conversions matmul needs. All are memory-bound and simple; each computes what the
 * CPU backend computes, in the same order where that matters (the norm's sum of squares in double,
 * RoPE angles in double). */
#include <math.h>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

enum { NORM_THREADS = 1024, EW_THREADS = 256 };

static unsigned grid_for(size_t count, int threads, unsigned cap)
{
    size_t g = (count + (size_t)threads - 1) / (size_t)threads;
    if (g < 1) g = 1;
    return g > cap ? cap : (unsigned)g;
}

/* ---- embeddings ---- */

__global__ void embed_kernel(float *__restrict__ out, const uint8_t *__restrict__ table, int type,
                             size_t row_bytes, int cols, const int32_t *__restrict__ ids)
{
    int i = blockIdx.x, id = ids[i];
    float *o = out + (size_t)i * cols;
    const uint8_t *row = table + (size_t)(id < 0 ? 0 : id) * row_bytes;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        o[c] = id < 0 ? 0.0f : tsr_dev_elem(type, row, c);
}

extern "C" cudaError_t tsr_cuda_embed(cudaStream_t s, float *out, const void *table, int type,
                                      size_t row_bytes, int cols, const int32_t *ids, int n)
{
    if (n > 0)
        embed_kernel<<<n, 256, 0, s>>>(out, (const uint8_t *)table, type, row_bytes, cols, ids);
    return cudaGetLastError();
}

/* ---- RMS norm ---- */

/* Sum over the block; every thread gets the result. `sh` holds one double per warp. */
static __device__ double block_sum_d(double v, double *sh)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = tsr_warp_sum_d(v);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    double t = 0;
    for (int w = 0; w < nw; w++) t += sh[w];
    __syncthreads(); /* sh may be reused */
    return t;
}

/* One block per row; four elements a thread at a time where the row allows (dim % 4 == 0 and
 * 16-byte aligned rows), so that a 4,096-wide row at batch 1 is one load and one store per
 * thread, not a chain of 16 dependent ones: with one block the whole GPU waits on it. x and out
 * may be the same row: each thread reads its elements before it writes them, and only after the
 * reduction. */
template <int V> static __device__ __forceinline__ float4 load_v(const float *p, int j)
{
    if (V == 4) return reinterpret_cast<const float4 *>(p)[j];
    return make_float4(p[j], 0.0f, 0.0f, 0.0f);
}

template <int V> static __device__ __forceinline__ void store_v(float *p, int j, float4 v)
{
    if (V == 4)
        reinterpret_cast<float4 *>(p)[j] = v;
    else
        p[j] = v.x;
}

template <int V> static __device__ __forceinline__ double sum_sq(float4 v)
{
    double s = (double)v.x * v.x;
    if (V == 4) s += (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
    return s;
}

/* out[j..j+V) = v · scale · w[j..j+V) for the V elements of vector j */
template <int V>
static __device__ __forceinline__ void store_scaled(float *out, int j, float4 v, float scale,
                                                    const uint8_t *__restrict__ w, int wtype)
{
    int e = j * V;
    v.x = v.x * scale * tsr_dev_elem(wtype, w, e);
    if (V == 4) {
        v.y = v.y * scale * tsr_dev_elem(wtype, w, e + 1);
        v.z = v.z * scale * tsr_dev_elem(wtype, w, e + 2);
        v.w = v.w * scale * tsr_dev_elem(wtype, w, e + 3);
    }
    store_v<V>(out, j, v);
}

template <int V>
__global__ void __launch_bounds__(NORM_THREADS)
    rmsnorm_kernel(float *out, const float *x, const uint8_t *__restrict__ w, int wtype, int dim,
                   float eps)
{
    __shared__ double sh[NORM_THREADS / 32];
    const float *xr = x + (size_t)blockIdx.x * dim;
    float *orow = out + (size_t)blockIdx.x * dim;
    double ss = 0;
    for (int j = threadIdx.x; j < dim / V; j += blockDim.x) ss += sum_sq<V>(load_v<V>(xr, j));
    ss = block_sum_d(ss, sh);
    float scale = (float)(1.0 / sqrt(ss / dim + (double)eps));
    for (int j = threadIdx.x; j < dim / V; j += blockDim.x)
        store_scaled<V>(orow, j, load_v<V>(xr, j), scale, w, wtype);
}

template <int V>
__global__ void __launch_bounds__(NORM_THREADS)
    add_rmsnorm_kernel(float *resid, const float *delta, float *out, const uint8_t *__restrict__ w,
                       int wtype, int dim, float eps)
{
    __shared__ double sh[NORM_THREADS / 32];
    size_t off = (size_t)blockIdx.x * dim;
    float *rr = resid + off, *orow = out + off;
    const float *dr = delta + off;
    double ss = 0;
    for (int j = threadIdx.x; j < dim / V; j += blockDim.x) {
        float4 r = load_v<V>(rr, j), d = load_v<V>(dr, j);
        r.x += d.x;
        r.y += d.y;
        r.z += d.z;
        r.w += d.w;
        store_v<V>(rr, j, r);
        ss += sum_sq<V>(r);
    }
    ss = block_sum_d(ss, sh);
    float scale = (float)(1.0 / sqrt(ss / dim + (double)eps));
    for (int j = threadIdx.x; j < dim / V; j += blockDim.x)
        store_scaled<V>(orow, j, load_v<V>(rr, j), scale, w, wtype);
}

/* Rows of dim floats from these pointers can be read four at a time. */
static int rows_by4(int dim, const void *a, const void *b, const void *c)
{
    return dim % 4 == 0 && (((uintptr_t)a | (uintptr_t)b | (uintptr_t)c) & 15) == 0;
}

extern "C" cudaError_t tsr_cuda_rmsnorm(cudaStream_t s, float *out, const float *x, const void *w,
                                        int wtype, int n, int dim, float eps)
{
    if (n <= 0) return cudaGetLastError();
    if (rows_by4(dim, out, x, x))
        rmsnorm_kernel<4><<<n, NORM_THREADS, 0, s>>>(out, x, (const uint8_t *)w, wtype, dim, eps);
    else
        rmsnorm_kernel<1><<<n, NORM_THREADS, 0, s>>>(out, x, (const uint8_t *)w, wtype, dim, eps);
    return cudaGetLastError();
}

extern "C" cudaError_t tsr_cuda_add_rmsnorm(cudaStream_t s, float *resid, const float *delta,
                                            float *out, const void *w, int wtype, int n, int dim,
                                            float eps)
{
    if (n <= 0) return cudaGetLastError();
    if (rows_by4(dim, resid, delta, out))
        add_rmsnorm_kernel<4>
            <<<n, NORM_THREADS, 0, s>>>(resid, delta, out, (const uint8_t *)w, wtype, dim, eps);
    else
        add_rmsnorm_kernel<1>
            <<<n, NORM_THREADS, 0, s>>>(resid, delta, out, (const uint8_t *)w, wtype, dim, eps);
    return cudaGetLastError();
}

/* ---- SwiGLU, gathers ---- */

__global__ void swiglu_kernel(float *out, const float *gate, const float *up, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x) {
        out[i] = tsr_dev_swiglu(gate[i], up[i]);
    }
}

extern "C" cudaError_t tsr_cuda_swiglu(cudaStream_t s, float *out, const float *gate,
                                       const float *up, size_t count)
{
    if (count)
        swiglu_kernel<<<grid_for(count, EW_THREADS, 65535), EW_THREADS, 0, s>>>(out, gate, up,
                                                                                count);
    return cudaGetLastError();
}

__global__ void gather_kernel(float *__restrict__ out, const float *__restrict__ x,
                              const int32_t *__restrict__ rows, int width)
{
    const float *src = x + (size_t)rows[blockIdx.x] * width;
    float *dst = out + (size_t)blockIdx.x * width;
    for (int j = threadIdx.x; j < width; j += blockDim.x) dst[j] = src[j];
}

extern "C" cudaError_t tsr_cuda_gather_rows(cudaStream_t s, float *out, const float *x,
                                            const int32_t *rows, int n, int width)
{
    if (n > 0) gather_kernel<<<n, 256, 0, s>>>(out, x, rows, width);
    return cudaGetLastError();
}

__global__ void scatter_add_kernel(float *__restrict__ out, const float *__restrict__ y,
                                   const int32_t *__restrict__ rows, const float *__restrict__ w,
                                   int sigmoid_w, int width)
{
    int i = blockIdx.x;
    float s = 1.0f;
    if (w) s = sigmoid_w ? 1.0f / (1.0f + expf(-w[i])) : w[i];
    float *dst = out + (size_t)(rows ? rows[i] : i) * width;
    const float *src = y + (size_t)i * width;
    /* the CPU's o += s * y, rounded as it is: a product, then a sum */
    for (int j = threadIdx.x; j < width; j += blockDim.x)
        dst[j] = __fadd_rn(dst[j], __fmul_rn(s, src[j]));
}

extern "C" cudaError_t tsr_cuda_scatter_add(cudaStream_t s, float *out, const float *y,
                                            const int32_t *rows, const float *w, int sigmoid_w,
                                            int n, int width)
{
    if (n > 0) scatter_add_kernel<<<n, 256, 0, s>>>(out, y, rows, w, sigmoid_w, width);
    return cudaGetLastError();
}

/* ---- matmul helpers ---- */

__global__ void weight_to_bf16_kernel(int type, const uint8_t *__restrict__ w, size_t row_bytes,
                                      int r0, int nr, int cols, __nv_bfloat16 *__restrict__ dst)
{
    size_t total = (size_t)nr * cols;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / cols, c = i % cols;
        dst[i] = __float2bfloat16_rn(tsr_dev_elem(type, w + (r0 + r) * row_bytes, (int64_t)c));
    }
}

/* The same for a type known at compile time and cols % 8 == 0: 8 weights per step, one 16-byte
 * store (the generic kernel's per-element type switch and 2-byte stores ran at ~0.6 TB/s). */
template <int T>
__global__ void weight_to_bf16_x8(const uint8_t *__restrict__ w, size_t row_bytes, int r0, int nr,
                                  int cols, __nv_bfloat16 *__restrict__ dst)
{
    size_t per_row = (size_t)cols / 8, total = (size_t)nr * per_row;
    for (size_t u = blockIdx.x * (size_t)blockDim.x + threadIdx.x; u < total;
         u += (size_t)gridDim.x * blockDim.x) {
        size_t r = u / per_row, c = (u % per_row) * 8;
        const uint8_t *row = w + (r0 + r) * row_bytes;
        __align__(16) __nv_bfloat16 o[8];
#pragma unroll
        for (int k = 0; k < 8; k++)
            o[k] = __float2bfloat16_rn(tsr_dev_elem(T, row, (int64_t)(c + k)));
        *(uint4 *)(dst + r * cols + c) = *(const uint4 *)o;
    }
}

extern "C" cudaError_t tsr_cuda_weight_to_bf16(cudaStream_t s, int type, const void *w,
                                               size_t row_bytes, int r0, int nr, int cols,
                                               uint16_t *dst)
{
    size_t total = (size_t)nr * cols;
    if (!total) return cudaGetLastError();
    const uint8_t *wb = (const uint8_t *)w;
    __nv_bfloat16 *d = (__nv_bfloat16 *)dst;
    unsigned g8 = grid_for(total / 8, EW_THREADS, 65535);
    if (cols % 8 == 0 && ((uintptr_t)dst & 15) == 0) {
        switch (type) {
        case TSR_F32:
            weight_to_bf16_x8<TSR_F32><<<g8, EW_THREADS, 0, s>>>(wb, row_bytes, r0, nr, cols, d);
            return cudaGetLastError();
        case TSR_F16:
            weight_to_bf16_x8<TSR_F16><<<g8, EW_THREADS, 0, s>>>(wb, row_bytes, r0, nr, cols, d);
            return cudaGetLastError();
        case TSR_BF16:
            weight_to_bf16_x8<TSR_BF16><<<g8, EW_THREADS, 0, s>>>(wb, row_bytes, r0, nr, cols, d);
            return cudaGetLastError();
        case TSR_Q8_0:
            weight_to_bf16_x8<TSR_Q8_0><<<g8, EW_THREADS, 0, s>>>(wb, row_bytes, r0, nr, cols, d);
            return cudaGetLastError();
        case TSR_Q4_0:
            weight_to_bf16_x8<TSR_Q4_0><<<g8, EW_THREADS, 0, s>>>(wb, row_bytes, r0, nr, cols, d);
            return cudaGetLastError();
        case TSR_Q4_1:
            weight_to_bf16_x8<TSR_Q4_1><<<g8, EW_THREADS, 0, s>>>(wb, row_bytes, r0, nr, cols, d);
            return cudaGetLastError();
        case TSR_F8_E4M3:
            weight_to_bf16_x8<TSR_F8_E4M3>
                <<<g8, EW_THREADS, 0, s>>>(wb, row_bytes, r0, nr, cols, d);
            return cudaGetLastError();
        default:
            break;
        }
    }
    weight_to_bf16_kernel<<<grid_for(total, EW_THREADS, 65535), EW_THREADS, 0, s>>>(
        type, wb, row_bytes, r0, nr, cols, d);
    return cudaGetLastError();
}

__global__ void f32_to_bf16_kernel(const float *__restrict__ x, __nv_bfloat16 *__restrict__ dst,
                                   size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(x[i]);
}

extern "C" cudaError_t tsr_cuda_f32_to_bf16(cudaStream_t s, const float *x, uint16_t *dst,
                                            size_t count)
{
    if (count)
        f32_to_bf16_kernel<<<grid_for(count, EW_THREADS, 65535), EW_THREADS, 0, s>>>(
            x, (__nv_bfloat16 *)dst, count);
    return cudaGetLastError();
}

__global__ void add_bias_kernel(float *y, const uint8_t *__restrict__ bias, int btype, int rows,
                                size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] += tsr_dev_elem(btype, bias, (int64_t)(i % rows));
}

extern "C" cudaError_t tsr_cuda_add_bias(cudaStream_t s, float *y, const void *bias, int btype,
                                         int rows, int n)
{
    size_t count = (size_t)rows * n;
    if (count)
        add_bias_kernel<<<grid_for(count, EW_THREADS, 65535), EW_THREADS, 0, s>>>(
            y, (const uint8_t *)bias, btype, rows, count);
    return cudaGetLastError();
}

/* ---- RoPE and the KV-cache write ---- */

/* One block per token: the token's half head_dim angles (pos * inv_freq, sin and cos in double,
 * as the CPU backend's table) once into shared memory, then every q and k head rotated with them,
 * then the rotated k row and the v row copied to the cache slot (f32), or rounded to bf16 there
 * (nearest even, the CPU's tsr_f32_to_bf16 for every finite value), or quantized to FP8 there
 * (a warp per head of k or v: scale amax / 448, each code the nearest to x / scale, both divisions
 * IEEE-rounded, as tsr_quantize_e4m3 computes them; the row's padding zeroed). */
enum { ROPE_THREADS = 1024 };

__global__ void __launch_bounds__(ROPE_THREADS) rope_kv_kernel(struct tsr_cuda_rope_args a)
{
    __shared__ float cs_sh[TSR_CUDA_ATTN_MAX_HEAD_DIM / 2], sn_sh[TSR_CUDA_ATTN_MAX_HEAD_DIM / 2];
    int t = blockIdx.x, hd = a.head_dim, half = hd / 2, pos = a.pos[t];
    size_t qw = (size_t)a.n_head * hd, kw = (size_t)a.n_kv_head * hd;
    float *qt = a.q + t * qw, *kt = a.k + t * kw;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        double sd, cd;
        sincos((double)pos * (double)a.inv_freq[i], &sd, &cd);
        cs_sh[i] = (float)cd;
        sn_sh[i] = (float)sd;
    }
    __syncthreads();
    int pairs = (a.n_head + a.n_kv_head) * half;
    for (int idx = threadIdx.x; idx < pairs; idx += blockDim.x) {
        int h = idx / half, i = idx % half;
        float *x = h < a.n_head ? qt + (size_t)h * hd : kt + (size_t)(h - a.n_head) * hd;
        float cs = cs_sh[i], sn = sn_sh[i];
        int i0 = a.neox ? i : 2 * i, i1 = a.neox ? i + half : 2 * i + 1;
        float x0 = x[i0], x1 = x[i1];
        x[i0] = __fsub_rn(__fmul_rn(x0, cs), __fmul_rn(x1, sn));
        x[i1] = __fadd_rn(__fmul_rn(x0, sn), __fmul_rn(x1, cs));
    }
    __syncthreads();
    const float *vt = a.v + t * kw;
    if (a.kv_type == TSR_F8_E4M3) {
        size_t row = tsr_dev_kv_row<uint8_t>(a.n_kv_head, hd), sc = kw + 4 * (size_t)a.n_kv_head;
        uint8_t *kd = (uint8_t *)a.kc + (size_t)a.slot[t] * row;
        uint8_t *vd = (uint8_t *)a.vc + (size_t)a.slot[t] * row;
        int lane = threadIdx.x & 31;
        for (int w = threadIdx.x >> 5; w < 2 * a.n_kv_head; w += blockDim.x >> 5) {
            int h = w % a.n_kv_head;
            const float *x = (w < a.n_kv_head ? kt : vt) + (size_t)h * hd;
            uint8_t *d8 = w < a.n_kv_head ? kd : vd;
            float amax = 0.0f;
            for (int j = lane; j < hd; j += 32) amax = fmaxf(amax, fabsf(x[j]));
#pragma unroll
            for (int o = 16; o > 0; o >>= 1)
                amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
            float d = __fdiv_rn(amax, 448.0f);
            for (int j = lane; j < hd; j += 32)
                d8[(size_t)h * hd + j] = tsr_dev_f32_to_e4m3(d != 0.0f ? __fdiv_rn(x[j], d) : 0.0f);
            if (lane == 0) *(float *)(d8 + kw + 4 * (size_t)h) = d;
        }
        for (size_t j = sc + threadIdx.x; j < row; j += blockDim.x) kd[j] = vd[j] = 0;
        return;
    }
    if (a.kv_type == TSR_BF16) {
        __nv_bfloat16 *kd = (__nv_bfloat16 *)a.kc + (size_t)a.slot[t] * kw;
        __nv_bfloat16 *vd = (__nv_bfloat16 *)a.vc + (size_t)a.slot[t] * kw;
        for (size_t j = threadIdx.x; j < kw; j += blockDim.x) {
            kd[j] = __float2bfloat16_rn(kt[j]);
            vd[j] = __float2bfloat16_rn(vt[j]);
        }
        return;
    }
    float *kd = (float *)a.kc + (size_t)a.slot[t] * kw,
          *vd = (float *)a.vc + (size_t)a.slot[t] * kw;
    for (size_t j = threadIdx.x; j < kw; j += blockDim.x) {
        kd[j] = kt[j];
        vd[j] = vt[j];
    }
}

extern "C" cudaError_t tsr_cuda_rope_kv_write(cudaStream_t s, const struct tsr_cuda_rope_args *a)
{
    if (a->head_dim > TSR_CUDA_ATTN_MAX_HEAD_DIM || a->head_dim % 2 ||
        (a->kv_type != TSR_F32 && a->kv_type != TSR_BF16 && a->kv_type != TSR_F8_E4M3))
        return cudaErrorInvalidValue;
    if (a->n_tokens > 0) rope_kv_kernel<<<a->n_tokens, ROPE_THREADS, 0, s>>>(*a);
    return cudaGetLastError();
}

/* ---- greedy sampling ---- */

/* The better of two candidates: the larger value, the lower index on ties; NaN never wins. */
static __device__ __forceinline__ void arg_better(float &v, int &i, float v2, int i2)
{
    if (v2 > v || (v2 == v && i2 < i)) {
        v = v2;
        i = i2;
    }
}

enum { ARGMAX_THREADS = 1024 };

/* One block per row: out[row] = the index of the row's largest value (the lowest on ties). */
__global__ void __launch_bounds__(ARGMAX_THREADS)
    argmax_kernel(const float *__restrict__ x, int width, size_t ld, int32_t *__restrict__ out)
{
    __shared__ float sv[ARGMAX_THREADS / 32];
    __shared__ int si[ARGMAX_THREADS / 32];
    const float *row = x + (size_t)blockIdx.x * ld;
    float v = -INFINITY;
    int i = 0;
    for (int c = threadIdx.x; c < width; c += blockDim.x) arg_better(v, i, row[c], c);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        arg_better(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        sv[warp] = v;
        si[warp] = i;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++) arg_better(v, i, sv[w], si[w]);
        out[blockIdx.x] = i;
    }
}

extern "C" cudaError_t tsr_cuda_argmax_rows(cudaStream_t s, const float *x, int n, int width,
                                            size_t ld, int32_t *out)
{
    if (n > 0) argmax_kernel<<<n, ARGMAX_THREADS, 0, s>>>(x, width, ld, out);
    return cudaGetLastError();
}

/* ---- benchmark inputs ---- */

__global__ void fill_random_bf16_kernel(__nv_bfloat16 *p, size_t count, uint64_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x) {
        uint64_t x = seed + i * 0x9e3779b97f4a7c15ULL; /* splitmix64 */
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
        x ^= x >> 31;
        p[i] = __float2bfloat16_rn((float)(x >> 40) * (2.0f / 16777216.0f) - 1.0f);
    }
}

extern "C" cudaError_t tsr_cuda_fill_random_bf16(cudaStream_t s, uint16_t *p, size_t count,
                                                 uint64_t seed)
{
    if (count)
        fill_random_bf16_kernel<<<grid_for(count, EW_THREADS, 65535), EW_THREADS, 0, s>>>(
            (__nv_bfloat16 *)p, count, seed);
    return cudaGetLastError();
}

/* ---- two-term bf16 splits (v = hi + lo to about 16 bits) for precise tensor-core GEMMs ---- */

static __device__ __forceinline__ void split_bf16(float v, __nv_bfloat16 *hi, __nv_bfloat16 *lo)
{
    __nv_bfloat16 h = __float2bfloat16_rn(v);
    *hi = h;
    *lo = __float2bfloat16_rn(v - __bfloat162float(h));
}

__global__ void weight_to_bf16_split_kernel(int type, const uint8_t *__restrict__ w,
                                            size_t row_bytes, int r0, int nr, int cols,
                                            __nv_bfloat16 *__restrict__ hi,
                                            __nv_bfloat16 *__restrict__ lo)
{
    size_t total = (size_t)nr * cols;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / (size_t)cols, c = i % (size_t)cols;
        split_bf16(tsr_dev_elem(type, w + (r0 + r) * row_bytes, (int64_t)c), hi + i, lo + i);
    }
}

extern "C" cudaError_t tsr_cuda_weight_to_bf16_split(cudaStream_t s, int type, const void *w,
                                                     size_t row_bytes, int r0, int nr, int cols,
                                                     uint16_t *hi, uint16_t *lo)
{
    size_t total = (size_t)nr * cols;
    if (total)
        weight_to_bf16_split_kernel<<<grid_for(total, EW_THREADS, 65535), EW_THREADS, 0, s>>>(
            type, (const uint8_t *)w, row_bytes, r0, nr, cols, (__nv_bfloat16 *)hi,
            (__nv_bfloat16 *)lo);
    return cudaGetLastError();
}

__global__ void f32_to_bf16_split_kernel(const float *__restrict__ x,
                                         __nv_bfloat16 *__restrict__ hi,
                                         __nv_bfloat16 *__restrict__ lo, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x)
        split_bf16(x[i], hi + i, lo + i);
}

extern "C" cudaError_t tsr_cuda_f32_to_bf16_split(cudaStream_t s, const float *x, uint16_t *hi,
                                                  uint16_t *lo, size_t count)
{
    if (count)
        f32_to_bf16_split_kernel<<<grid_for(count, EW_THREADS, 65535), EW_THREADS, 0, s>>>(
            x, (__nv_bfloat16 *)hi, (__nv_bfloat16 *)lo, count);
    return cudaGetLastError();
}
