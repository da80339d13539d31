/* The op interface every backend implements (DESIGN §4). kernels/ knows nothing of requests or
 * models: it sees buffers, weights and a step's attention metadata.
 *
 * Conventions:
 * - Activations are row-major f32 [n_tokens][width] in buffers from tsr_buf_alloc() (a device
 *   backend may keep them in another float type internally; the host always sees f32).
 * - A weight matrix has `rows` rows of `cols` contiguous elements (GGUF ne[0] = cols,
 *   ne[1] = rows; safetensors shape [rows, cols]). matmul computes y = x · Wᵀ, so cols is the
 *   input width and rows the output width.
 * - The paged KV cache of one layer is two buffers K and V of n_slots rows, one per cache slot
 *   (multi-head latent attention: one buffer of latent rows, tsr_op_mla_attention);
 *   slot = block * block_size + (pos % block_size), the block coming from the sequence's block
 *   table. A row holds the slot's n_kv_head heads of head_dim elements of tsr_attn_shape.kv_type
 *   ([n_kv_head][head_dim]), and is tsr_kv_row_bytes() long:
 *   - TSR_F32 (4 bytes an element) or TSR_BF16 (2 bytes, the f32 value rounded to nearest even,
 *     as tsr_f32_to_bf16): rope_kv_write converts the rotated k and v rows to kv_type as it
 *     stores them (the only rounding a bf16 cache adds: relative 2^-9 at most per element);
 *     attention reads them back exactly (bf16 widens to f32 without rounding) and computes as
 *     it does with an f32 cache. So a bf16 cache gives the results of an f32 cache holding the
 *     bf16-rounded K and V, and an f32 cache's results do not depend on this field's existence.
 *   - TSR_F8_E4M3: one E4M3 code a byte ([n_kv_head][head_dim], as common/dtype.h's
 *     tsr_f32_to_e4m3), then n_kv_head f32 scales, one per head, the row padded to a multiple of
 *     16 bytes (so every row and head starts 16-byte aligned for head_dim % 16 == 0; the CUDA
 *     backend takes head_dim % 4 == 0 only, so that the scales are 4-byte aligned). A head's
 *     scale is its amax / 448, computed as rope_kv_write stores it (dynamic: no calibration, and
 *     no value saturates), and its codes the nearest to x / scale; an element reads as
 *     e4m3 * scale. The rounding is E4M3's 3-bit mantissa: relative 2^-4 at most per element
 *     (absolute 2^-10 scale at most for elements below 2^-6 scale, E4M3's subnormals). Llama 3
 *     8B rows (8 heads of 128): 1056 bytes against bf16's 2048.
 *   The number of slots is the buffers' size over tsr_kv_row_bytes(). By default
 *   (`--kv-cache-dtype auto`) the tools take bf16 on a GPU (half the bytes decode attention
 *   reads, twice the blocks in the same memory) and f32 on the CPU (the reference).
 * - Ops are asynchronous with respect to the host on device backends; tsr_buf_get() and
 *   tsr_backend_sync() wait. All return 0 or a negative TSR_E* code. */
#ifndef TSR_KERNELS_BACKEND_H
#define TSR_KERNELS_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"

typedef struct tsr_backend tsr_backend_t;
typedef struct tsr_buf tsr_buf_t;

struct tsr_weight {
    tsr_buf_t *buf;
    enum tsr_dtype type;
    int64_t rows, cols; /* a vector (norm weight, bias) has rows = 1 */
};

/* Geometry of attention in one layer. */
struct tsr_attn_shape {
    int n_head, n_kv_head, head_dim; /* n_head % n_kv_head == 0 (GQA) */
    int block_size;                  /* KV cache slots per block */
    int neox;            /* RoPE pairs (i, i + head_dim/2) if 1, (2i, 2i+1) if 0 (GGUF llama) */
    float scale;         /* softmax scale, usually 1/sqrt(head_dim) */
    tsr_buf_t *inv_freq; /* f32 [head_dim/2] RoPE inverse frequencies (scaling already applied) */
    enum tsr_dtype kv_type; /* the KV cache's: TSR_F32 (0, the default), TSR_BF16, TSR_F8_E4M3 */
};

/* Bytes of one slot's row of K (or of V) in a KV cache of type t (the layout above): n_kv_head *
 * head_dim elements, and for TSR_F8_E4M3 their scales and padding; 0 for a type the cache does
 * not take (ops refuse it with TSR_EINVAL). */
static inline size_t tsr_kv_row_bytes(enum tsr_dtype t, int n_kv_head, int head_dim)
{
    size_t kw = (size_t)n_kv_head * (size_t)head_dim;
    switch (t) {
    case TSR_F32:
        return kw * 4;
    case TSR_BF16:
        return kw * 2;
    case TSR_F8_E4M3:
        return (kw + 4 * (size_t)n_kv_head + 15) & ~(size_t)15;
    default:
        return 0;
    }
}

/* One slot's row of an FP8 cache (tsr_kv_row_bytes(TSR_F8_E4M3, n_kv_head, head_dim) bytes at
 * row) from x (n_kv_head heads of head_dim f32): each head's codes and scale by
 * tsr_quantize_e4m3, the padding zero. What rope_kv_write stores on the CPU. */
void tsr_kv_fp8_store(const float *x, int n_kv_head, int head_dim, uint8_t *row);
/* x = an FP8 row read back: each element e4m3 * its head's scale, rounded to f32 (as attention
 * reads it, on the CPU and the GPU). */
void tsr_kv_fp8_load(const uint8_t *row, int n_kv_head, int head_dim, float *x);

/* One step's tokens: host arrays, valid for the duration of the call. Token t belongs to sequence
 * seq[t] at absolute position pos[t] and attends causally to positions 0..pos[t] of that sequence,
 * all of which must already be in the cache (rope_kv_write writes the step's own tokens first). */
struct tsr_batch_meta {
    int n_tokens, n_seqs, max_blocks;
    const int32_t *pos;          /* (n_tokens) */
    const int32_t *seq;          /* (n_tokens) row of block_tables */
    const int32_t *slot;         /* (n_tokens) where token t's K and V go */
    const int32_t *block_tables; /* (n_seqs, max_blocks) block ids */
    /* Optional, for graphs: dev holds the same pos, seq, slot and block_tables as int32 arrays
     * back to back from its offset 0 (pos at 0, seq at 4 n_tokens, slot at 8 n_tokens, block
     * tables at 12 n_tokens bytes), and ops read them there instead of copying the host arrays,
     * which are still given and checked. pos_bound (> every pos[t]) is what attention plans for,
     * so that the same plan serves every step a graph replays. NULL and 0 otherwise. */
    tsr_buf_t *dev;
    int pos_bound;
};

/* Backends. NULL on failure (message in tsr_last_error). Free with tsr_backend_free(). */
tsr_backend_t *tsr_backend_cpu_new(int n_threads); /* n_threads <= 0: one per core */
void tsr_backend_free(tsr_backend_t *b);
const char *tsr_backend_name(const tsr_backend_t *b);
int tsr_backend_sync(tsr_backend_t *b);
/* The device's free and total memory in bytes, after the work queued so far (a GPU's, as
 * cudaMemGetInfo says); TSR_EUNSUPPORTED on the CPU, whose memory the OS shares out. */
int tsr_backend_memory(tsr_backend_t *b, size_t *free_bytes, size_t *total_bytes);

/* Graphs (CUDA graphs on a GPU): the ops queued between tsr_graph_begin() and tsr_graph_end()
 * are recorded instead of run, and tsr_graph_launch() runs them again with one launch, on the
 * buffers' contents at that time. So a recorded op must take what changes from run to run from
 * buffers: step metadata through tsr_batch_meta.dev (ops refuse host metadata while recording).
 * Ops that bring data to the host (tsr_buf_get, argmax, sample) and buffer allocation or release
 * must not be recorded. tsr_backend_graphs() is 0 for a backend without graphs (the CPU's), whose
 * caller runs the ops directly. A graph holds on to the backend's memory it uses; free graphs
 * before their backend and their buffers. */
typedef struct tsr_graph tsr_graph_t;
int tsr_backend_graphs(const tsr_backend_t *b);
int tsr_graph_begin(tsr_backend_t *b);
/* Ends the recording. *out is the graph, or NULL when it could not be made (message recorded). An
 * op that failed while recording has already returned its error; end the recording anyway. */
int tsr_graph_end(tsr_backend_t *b, tsr_graph_t **out);
int tsr_graph_launch(tsr_graph_t *g);
void tsr_graph_free(tsr_graph_t *g);

/* Buffers. alloc: uninitialized device memory. weights: a buffer holding a copy of host bytes; the
 * CPU backend wraps the pointer without copying, so host must outlive the buffer (an mmap).
 * tsr_buf_host() is the host-visible address, or NULL on device backends. */
tsr_buf_t *tsr_buf_alloc(tsr_backend_t *b, size_t nbytes);
tsr_buf_t *tsr_buf_weights(tsr_backend_t *b, const void *host, size_t nbytes);
void tsr_buf_free(tsr_buf_t *buf);
size_t tsr_buf_size(const tsr_buf_t *buf);
void *tsr_buf_host(tsr_buf_t *buf);
int tsr_buf_set(tsr_buf_t *buf, size_t off, const void *src, size_t n);
int tsr_buf_get(tsr_buf_t *buf, size_t off, void *dst, size_t n);

/* out[i] = row ids[i] of table, converted to f32; out is [n][table->cols]. An id of -1 gives a
 * row of zeros (vocab-parallel embedding: the token is in another rank's slice). */
int tsr_op_embed(tsr_backend_t *b, tsr_buf_t *out, const struct tsr_weight *table,
                 const int32_t *ids, int n);
/* out[i] = x[i] / rms(x[i]) * w, rms over dim with eps. w is f32 [dim]. out may equal x. */
int tsr_op_rmsnorm(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *x, const struct tsr_weight *w,
                   int n, int dim, float eps);
/* resid += delta; then out = rmsnorm(resid) * w. Fused: one pass over the rows. */
int tsr_op_add_rmsnorm(tsr_backend_t *b, tsr_buf_t *resid, tsr_buf_t *delta, tsr_buf_t *out,
                       const struct tsr_weight *w, int n, int dim, float eps);
/* y[n][w->rows] = x[n][w->cols] · Wᵀ (+ bias[w->rows] when bias != NULL), any weight dtype. */
int tsr_op_matmul(tsr_backend_t *b, tsr_buf_t *y, const struct tsr_weight *w, tsr_buf_t *x,
                  const struct tsr_weight *bias, int n);
/* y[i] = x · W[i]ᵀ (+ bias[i] when bias and bias[i] are not NULL) for i < count (1..3): as
 * tsr_op_matmul each, the same x. A backend may run them together (a GPU streams a layer's Q, K
 * and V weights in one launch at decode); the results are the same. */
int tsr_op_matmul_many(tsr_backend_t *b, int count, tsr_buf_t *const *y,
                       const struct tsr_weight *const *w, const struct tsr_weight *const *bias,
                       tsr_buf_t *x, int n);
/* out[n][wg->rows] = silu(x · Wgᵀ) * (x · Wuᵀ), the MLP's first half; Wg and Wu have the same
 * shape. tmp (as large as out, not out) is where a backend that does not fuse the two keeps
 * x · Wuᵀ. */
int tsr_op_matmul_swiglu(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *tmp,
                         const struct tsr_weight *wg, const struct tsr_weight *wu, tsr_buf_t *x,
                         int n);
/* Rotates q [n][n_head*head_dim] and k [n][n_kv_head*head_dim] in place by each token's position,
 * then writes k and v rows into kc/vc at meta->slot. */
int tsr_op_rope_kv_write(tsr_backend_t *b, tsr_buf_t *q, tsr_buf_t *k, tsr_buf_t *v, tsr_buf_t *kc,
                         tsr_buf_t *vc, const struct tsr_attn_shape *s,
                         const struct tsr_batch_meta *m);
/* out [n][n_head*head_dim] = softmax(q·Kᵀ·scale) · V per head, causal over the paged cache. */
int tsr_op_attention(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *q, tsr_buf_t *kc, tsr_buf_t *vc,
                     const struct tsr_attn_shape *s, const struct tsr_batch_meta *m);
/* out[n][width] = silu(gate) * up. out may equal gate. */
int tsr_op_swiglu(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *gate, tsr_buf_t *up, int n,
                  int width);
/* out[i] = x[rows[i]] for i < n; rows of width floats. */
int tsr_op_gather_rows(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *x, const int32_t *rows, int n,
                       int width);
/* Mixture-of-experts routing of one layer (model/config.h names its fields after config.json).
 * Per token: scores s[e] = softmax(logits)[e] (scoring TSR_MOE_SOFTMAX) or sigmoid(logits[e])
 * (TSR_MOE_SIGMOID); choice scores c[e] = s[e] + bias[e] (bias NULL: 0), used for choosing only.
 * With n_group > 0 the experts form n_group equal groups, each scored by its best choice score
 * (softmax) or the sum of its best two (sigmoid), and only the topk_group best groups are
 * eligible. The n_used eligible experts of highest c are chosen; their weights are s, divided by
 * their sum when norm_topk, then multiplied by scale. Ties: on equal scores the lower expert
 * (and the lower group) index wins, so the choice is a function of the scores alone. */
enum tsr_moe_scoring { TSR_MOE_SOFTMAX, TSR_MOE_SIGMOID };
struct tsr_moe_routing {
    int n_expert, n_used;
    enum tsr_moe_scoring scoring;
    int norm_topk;
    int n_group, topk_group; /* 0, 0: no groups */
    float scale;
};
/* The routing of n tokens from their router logits (n, n_expert) on the host: ids[t*n_used + j]
 * the chosen experts in descending choice score (ties: lower index first), w[...] their weights.
 * bias (n_expert) may be NULL. TSR_EINVAL for an inconsistent r (as tsr_config_validate). */
int tsr_moe_route(const struct tsr_moe_routing *r, const float *logits, const float *bias, int n,
                  int32_t *ids, float *w);

/* One mixture-of-experts FFN layer: router (n_expert, dim); routed SwiGLU experts gate[e],
 * up[e] (ffn, dim) and down[e] (dim, ffn) for e < n_expert; optionally a shared SwiGLU expert
 * (shared_gate NULL: none) that every token goes through, scaled by sigmoid(x · shared_inp)
 * when shared_inp (1, dim) is not NULL (qwen2_moe). score_bias: host f32 (n_expert) or NULL
 * (DeepSeek V3's e_score_correction_bias). trace: host (n, n_used) or NULL; gets the chosen
 * experts as tsr_moe_route orders them (tests, statistics). */
struct tsr_moe {
    struct tsr_moe_routing routing;
    const struct tsr_weight *router;
    const float *score_bias;
    const struct tsr_weight *gate, *up, *down;
    const struct tsr_weight *shared_gate, *shared_up, *shared_down, *shared_inp;
    int32_t *trace;
};
/* out[n][dim] = Σ_chosen w · down[e](silu(x · gate[e]ᵀ) * (x · up[e]ᵀ)) (+ the shared expert) for
 * the n rows of x [n][dim]; out is not x. The CPU and the GPU run each expert once over the rows
 * routed to it, in expert order; the GPU routes on the host (the stream waits for the router's
 * logits: not inside a graph). TSR_EUNSUPPORTED on a backend without it:
 * tsr_backend_can_moe() is 0 there. */
int tsr_backend_can_moe(const tsr_backend_t *b);
int tsr_op_moe(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *x, const struct tsr_moe *moe, int n);
/* Multi-head latent attention (DeepSeek V2/V3, Kimi K2) of one layer, in the absorbed form: the
 * cache holds one row a position shared by every head, [c | k_pe]: the latent c
 * (kv_lora_rank, kv_a_layernorm applied) and the rotated RoPE key k_pe (qk_rope), of
 * tsr_kv_row_bytes(s->kv_type, 1, kv_lora_rank + qk_rope) bytes (f32 or bf16). kv_b
 * (n_head * (qk_nope + v_dim), kv_lora_rank) holds each head's W_UK (its first qk_nope rows) and
 * W_UV (the next v_dim). Per token and head, with q = [q_nope | q_pe]:
 *   score(p) = ((W_UK^T q_nope) . c_p + rope(q_pe) . k_pe_p) * s->scale
 *   out      = W_UV (sum_p softmax(score)_p c_p)
 * which is Hugging Face's expanded attention (k_nope = W_UK c, v = W_UV c) regrouped. */
struct tsr_mla {
    int kv_lora_rank, qk_nope, qk_rope, v_dim;
    const struct tsr_weight *kv_norm; /* f32 (kv_lora_rank): kv_a_layernorm */
    const struct tsr_weight *kv_b;    /* f32 (n_head * (qk_nope + v_dim), kv_lora_rank) */
    float eps;                        /* kv_a_layernorm's */
};
/* q [n][n_head * (qk_nope + qk_rope)] (q_b_proj's output), kv [n][kv_lora_rank + qk_rope]
 * (kv_a_proj_with_mqa's: normed and rotated in place, then written to cache at meta->slot), out
 * [n][n_head * v_dim]. s: n_head, n_kv_head 1, head_dim kv_lora_rank + qk_rope, RoPE (inv_freq
 * qk_rope / 2 values, neox as for standard attention) on the qk_rope parts only, the scale,
 * block_size and kv_type. TSR_EUNSUPPORTED on a backend without it (tsr_backend_can_mla() 0)
 * and for an FP8 cache. */
int tsr_backend_can_mla(const tsr_backend_t *b);
int tsr_op_mla_attention(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *q, tsr_buf_t *kv,
                         tsr_buf_t *cache, const struct tsr_mla *mla,
                         const struct tsr_attn_shape *s, const struct tsr_batch_meta *m);
/* Greedy sampling where the logits are: out[i] (host) = the index of the largest of row i of x
 * (n rows of width floats; the lowest index on ties). Only the n ids cross to the host. */
int tsr_op_argmax(tsr_backend_t *b, tsr_buf_t *x, int n, int width, int32_t *out);

/* One row's sampling (worker/sampling.h's parameters minus the repetition penalty, which the
 * caller applies on the host when it wants one): u is the row's draw, uniform in [0, 1), from the
 * caller's seeded generator, so the same seed gives the same tokens on every backend. */
struct tsr_sample_params {
    float temperature; /* 0: greedy */
    int top_k;         /* 0: off */
    float top_p;       /* (0, 1]; 1: off */
    float min_p;       /* [0, 1); 0: off */
    double u;
};
/* Samples row i of x (n rows of width floats) with p[i] where the logits are: ids[i] (host), and
 * logprobs[i] (host, may be NULL) the log-softmax of the unfiltered row at ids[i]. Only ids and
 * logprobs cross to the host. TSR_EUNSUPPORTED when the backend has no sampler
 * (tsr_backend_can_sample() is 0: the caller then fetches the logits and samples on the host). */
int tsr_backend_can_sample(const tsr_backend_t *b);
int tsr_op_sample(tsr_backend_t *b, tsr_buf_t *x, int n, int width,
                  const struct tsr_sample_params *p, int32_t *ids, float *logprobs);
/* OpenAI's top_logprobs where the logits are: the k (1..20) most likely tokens of each of the n
 * rows of x (width floats) under the log-softmax of the raw row, ids[i*k + j] and
 * logprobs[i*k + j] (host) in descending order, the lower id first on ties (worker/sampling.c
 * tsr_top_logprobs is the reference); -1 and -inf past a row's non-NaN tokens. Only those cross
 * to the host. TSR_EUNSUPPORTED where tsr_backend_can_top_logprobs() is 0. */
int tsr_backend_can_top_logprobs(const tsr_backend_t *b);
int tsr_op_top_logprobs(tsr_backend_t *b, tsr_buf_t *x, int n, int width, int k, int32_t *ids,
                        float *logprobs);

#endif
