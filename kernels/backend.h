/* The op interface every backend implements (DESIGN §4). kernels/ knows nothing of requests or
 * models: it sees buffers, weights and a step's attention metadata.
 *
 * Conventions:
 * - Activations are row-major f32 [n_tokens][width] in buffers from tsr_buf_alloc() (a device
 *   backend may keep them in another float type internally; the host always sees f32).
 * - A weight matrix has `rows` rows of `cols` contiguous elements (GGUF ne[0] = cols,
 *   ne[1] = rows; safetensors shape [rows, cols]). matmul computes y = x · Wᵀ, so cols is the
 *   input width and rows the output width.
 * - The paged KV cache of one layer is two buffers K and V of f32 [n_slots][n_kv_head][head_dim];
 *   slot = block * block_size + (pos % block_size), the block coming from the sequence's block
 * table.
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
};

/* One step's tokens: host arrays, valid for the duration of the call. Token t belongs to sequence
 * seq[t] at absolute position pos[t] and attends causally to positions 0..pos[t] of that sequence,
 * all of which must already be in the cache (rope_kv_write writes the step's own tokens first). */
struct tsr_batch_meta {
    int n_tokens, n_seqs, max_blocks;
    const int32_t *pos;          /* (n_tokens) */
    const int32_t *seq;          /* (n_tokens) row of block_tables */
    const int32_t *slot;         /* (n_tokens) where token t's K and V go */
    const int32_t *block_tables; /* (n_seqs, max_blocks) block ids */
};

/* Backends. NULL on failure (message in tsr_last_error). Free with tsr_backend_free(). */
tsr_backend_t *tsr_backend_cpu_new(int n_threads); /* n_threads <= 0: one per core */
void tsr_backend_free(tsr_backend_t *b);
const char *tsr_backend_name(const tsr_backend_t *b);
int tsr_backend_sync(tsr_backend_t *b);

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
/* Greedy sampling where the logits are: out[i] (host) = the index of the largest of row i of x
 * (n rows of width floats; the lowest index on ties). Only the n ids cross to the host. */
int tsr_op_argmax(tsr_backend_t *b, tsr_buf_t *x, int n, int width, int32_t *out);

#endif
