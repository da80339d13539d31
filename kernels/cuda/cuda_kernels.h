/* Kernel launchers of the CUDA backend (cuda_ops.cu, cuda_matmul.cu, cuda_attention.cu), called
 * from cuda_backend.c. Each queues its kernels on `s` and returns cudaGetLastError(); pointers are
 * device addresses and every argument has been checked by the caller. Only kernels/cuda/ includes
 * this. */
#ifndef TSR_KERNELS_CUDA_KERNELS_H
#define TSR_KERNELS_CUDA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Weight types are enum tsr_dtype values (common/dtype.h); `row_bytes` is one row's size. */

/* out[i][0..cols) = row ids[i] of table as f32, zeros for id -1. */
cudaError_t tsr_cuda_embed(cudaStream_t s, float *out, const void *table, int type,
                           size_t row_bytes, int cols, const int32_t *ids, int n);
/* out = x / rms(x) * w per row (sum of squares in double); w is `dim` elements of wtype. */
cudaError_t tsr_cuda_rmsnorm(cudaStream_t s, float *out, const float *x, const void *w, int wtype,
                             int n, int dim, float eps);
/* resid += delta, then out = rmsnorm(resid) * w. */
cudaError_t tsr_cuda_add_rmsnorm(cudaStream_t s, float *resid, const float *delta, float *out,
                                 const void *w, int wtype, int n, int dim, float eps);
/* out[i] = silu(gate[i]) * up[i] for i < count. */
cudaError_t tsr_cuda_swiglu(cudaStream_t s, float *out, const float *gate, const float *up,
                            size_t count);
/* out[i] = x[rows[i]], rows of width floats; out must not overlap x. */
cudaError_t tsr_cuda_gather_rows(cudaStream_t s, float *out, const float *x, const int32_t *rows,
                                 int n, int width);

/* out[rows[i]] += w[i] * y[i] for the n rows of y (width floats each); rows NULL: row i; w NULL:
 * 1; sigmoid_w: sigmoid(w[i]) instead of w[i]. rows must be distinct (one thread a column). */
cudaError_t tsr_cuda_scatter_add(cudaStream_t s, float *out, const float *y, const int32_t *rows,
                                 const float *w, int sigmoid_w, int n, int width);

/* Decode matmuls in one launch (cuda_matmul.cu): y[i][n][rows[i]] = x[n][cols] · W[i]ᵀ for the
 * n_w weights (1..TSR_CUDA_GEMV_MAX_W, one type and row size), f32 accumulation, n in
 * 1..TSR_CUDA_GEMV_MAX_N. With swiglu (n_w = 2, equal rows): y[0] = silu(x · W[0]ᵀ) * (x · W[1]ᵀ),
 * y[1] unused. */
#define TSR_CUDA_GEMV_MAX_W 3
struct tsr_cuda_gemv {
    int type;
    size_t row_bytes;
    int cols, n_w, swiglu, n;
    const void *w[TSR_CUDA_GEMV_MAX_W];
    float *y[TSR_CUDA_GEMV_MAX_W];
    int rows[TSR_CUDA_GEMV_MAX_W];
    const float *x;
};
cudaError_t tsr_cuda_gemv(cudaStream_t s, const struct tsr_cuda_gemv *g);
/* Quantized-weight GEMM (cuda_gemm_quant.cu): y[n][rows] = x[n][cols] · Wᵀ with W Q8_0 or
 * F8_E4M3 decoded in registers to bf16 (d * q rounded), x bf16, f32 accumulation and output. It
 * takes the shapes tsr_cuda_gemm_quant_fits accepts. With splits > 1 (what
 * tsr_cuda_gemm_quant_splits chose for the shape) K is cut into that many ranges whose partial
 * sums go to ws (splits x n x rows floats) and are then added in order into y. */
int tsr_cuda_gemm_quant_fits(int type, int cols, size_t row_bytes, const void *w);
/* Raises the kernels' shared-memory limit (137 KiB and more) and picks their tile for `device`,
 * or leaves the kernel off there where a block cannot have that much (fits() then refuses); once
 * per device, before any launch. Fails only when the device cannot be queried. */
cudaError_t tsr_cuda_gemm_quant_init(int device);
int tsr_cuda_gemm_quant_splits(int rows, int cols, int n, int n_sms);
cudaError_t tsr_cuda_gemm_quant(cudaStream_t s, int type, const void *w, size_t row_bytes, int rows,
                                int cols, const uint16_t *x, int n, float *y, int splits,
                                float *ws);
/* dst[r][0..cols) = weight rows [r0, r0 + nr) as bf16 (round to nearest even). */
cudaError_t tsr_cuda_weight_to_bf16(cudaStream_t s, int type, const void *w, size_t row_bytes,
                                    int r0, int nr, int cols, uint16_t *dst);
/* The same as two terms: hi = bf16(w), lo = bf16(w - hi), so hi + lo holds w to about 16 bits
 * (a weight type bf16 cannot hold exactly: F16, the quantized types). */
cudaError_t tsr_cuda_weight_to_bf16_split(cudaStream_t s, int type, const void *w, size_t row_bytes,
                                          int r0, int nr, int cols, uint16_t *hi, uint16_t *lo);
/* hi[i] = bf16(x[i]), lo[i] = bf16(x[i] - hi[i]) for i < count. */
cudaError_t tsr_cuda_f32_to_bf16_split(cudaStream_t s, const float *x, uint16_t *hi, uint16_t *lo,
                                       size_t count);
/* dst[i] = bf16(x[i]) for i < count. */
cudaError_t tsr_cuda_f32_to_bf16(cudaStream_t s, const float *x, uint16_t *dst, size_t count);
/* y[j][r] += bias[r] for j < n, r < rows; bias is `rows` elements of btype. */
cudaError_t tsr_cuda_add_bias(cudaStream_t s, float *y, const void *bias, int btype, int rows,
                              int n);

/* out[i] = the index of the largest of x[i * ld + 0 .. width) (the lowest index on ties; NaN
 * never wins), for i < n rows. out is a device array. */
cudaError_t tsr_cuda_argmax_rows(cudaStream_t s, const float *x, int n, int width, size_t ld,
                                 int32_t *out);

/* p[i] = uniform in [-1, 1) as bf16, from a counter-based generator (benchmark inputs). */
cudaError_t tsr_cuda_fill_random_bf16(cudaStream_t s, uint16_t *p, size_t count, uint64_t seed);

/* RoPE of q and k, then k and v rows into the cache at slot[t], converted to kv_type (TSR_F32,
 * TSR_BF16 rounded to nearest even, or TSR_F8_E4M3 rows with their scales: kernels/backend.h). pos
 * and slot are device arrays of n_tokens. */
struct tsr_cuda_rope_args {
    float *q, *k;
    const float *v;
    void *kc, *vc; /* kv_type elements */
    int kv_type;
    const float *inv_freq; /* head_dim / 2 */
    const int32_t *pos, *slot;
    int n_tokens, n_head, n_kv_head, head_dim, neox;
};
cudaError_t tsr_cuda_rope_kv_write(cudaStream_t s, const struct tsr_cuda_rope_args *a);

/* Largest head_dim the attention kernel takes. */
#define TSR_CUDA_ATTN_MAX_HEAD_DIM 256

/* Causal paged attention; see cuda_attention.cu. pos, seq and block_tables are device arrays. The
 * cache holds kv_type rows (TSR_F32, TSR_BF16 or TSR_F8_E4M3: kernels/backend.h), read as f32. */
struct tsr_cuda_attn_args {
    float *out;
    const float *q;
    const void *kc, *vc;
    int kv_type;
    const int32_t *pos, *seq, *block_tables;
    int n_tokens, n_head, n_kv_head, head_dim, block_size, max_blocks;
    float scale;
    int max_pos; /* largest pos[t] */
    int walk;    /* tsr_cuda_attention: nonzero, its walk kernel at every head size (benchmarks) */
};
/* Floats of scratch the launch needs (0: none) for a device of n_sms multiprocessors; *splits is
 * set to the number of context splits per token it will use. */
size_t tsr_cuda_attention_scratch(const struct tsr_cuda_attn_args *a, int n_sms, int *splits);
cudaError_t tsr_cuda_attention(cudaStream_t s, const struct tsr_cuda_attn_args *a, int splits,
                               float *scratch);

/* Causal attention for prompt chunks on tensor cores (kernels/cuda/cuda_attention_prefill.cu):
 * a tile is a run of consecutive query tokens of one sequence, tokens t0 .. t0+len-1 at positions
 * pos0 .. pos0+len-1 (len <= TSR_CUDA_PREFILL_TILE), each attending to positions 0 .. its own of
 * its sequence through block-table row `seq`. Q, K and V enter the tensor cores as f16 with f32
 * accumulation and an f32 online softmax. a->pos, a->seq and a->block_tables are device arrays as
 * for tsr_cuda_attention; tiles is a device array of n_tiles. */
#define TSR_CUDA_PREFILL_TILE 64
struct tsr_cuda_attn_tile {
    int32_t t0, len, pos0, seq;
};
/* Nonzero when the prefill kernel takes this head_dim (others use tsr_cuda_attention). */
int tsr_cuda_attention_prefill_ok(int head_dim);
cudaError_t tsr_cuda_attention_prefill(cudaStream_t s, const struct tsr_cuda_attn_args *a,
                                       const struct tsr_cuda_attn_tile *tiles, int n_tiles);

/* Sampling where the logits are (kernels/cuda/cuda_sample.cu), with worker/sampling.c's
 * transforms in its order except the repetition penalty: top-k, temperature, softmax, top-p,
 * min-p, then the draw p->u (uniform in [0, 1)) times the kept mass walked in descending order of
 * probability; temperature 0 is the argmax (lowest index on ties). For rows i < n of x (row
 * stride ld floats): ids[i], and logprobs[i] (when not NULL) the log-softmax of the unfiltered,
 * untempered row at ids[i]. params, ids and logprobs are device arrays; scratch holds at least
 * tsr_cuda_sample_scratch(n, width) bytes. */
struct tsr_sample_params;
size_t tsr_cuda_sample_scratch(int n, int width);
cudaError_t tsr_cuda_sample(cudaStream_t s, const float *x, int n, int width, size_t ld,
                            const struct tsr_sample_params *params, int32_t *ids, float *logprobs,
                            void *scratch);

/* The k most likely tokens of rows i < n of x (row stride ld floats) under the log-softmax of the
 * raw row (worker/sampling.c tsr_top_logprobs): ids[i*k + j] and lps[i*k + j] for j < k, in
 * descending order (the lower index first on ties); -1 and -inf past the row's non-NaN tokens.
 * ids and lps are device arrays. */
cudaError_t tsr_cuda_top_logprobs(cudaStream_t s, const float *x, int n, int width, size_t ld,
                                  int k, int32_t *ids, float *lps);

#ifdef __cplusplus
}
#endif

#endif
