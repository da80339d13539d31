/* The CPU backend's context and the ops that live in their own files (matmul.c, attention.c).
 * Only kernels/cpu/ includes this. */
#ifndef TSR_KERNELS_CPU_INTERNAL_H
#define TSR_KERNELS_CPU_INTERNAL_H

#include <stddef.h>

#include "kernels/backend_impl.h"
#include "kernels/cpu/cpu_kernels.h"

struct tsr_cpu_ctx {
    const struct tsr_cpu_kernels *k;
    int n_threads;
    int act_q8; /* TESSERA_CPU_ACT=q8: quantized weights meet q8 activations (matmul.c) */
    /* One growable scratch area shared by all ops (a backend runs one op at a time). */
    void *scratch;
    size_t scratch_size;
    /* RoPE table for the last inv_freq seen: cos and sin of pos * inv_freq[i], computed in
     * double, for positions < rope_n_pos; (rope_n_pos, rope_half) floats each. */
    float *rope_freq, *rope_cos, *rope_sin;
    int rope_half, rope_n_pos;
};

static inline struct tsr_cpu_ctx *tsr_cpu_ctx(tsr_backend_t *b)
{
    return b->ctx;
}

/* At least n bytes of 64-byte-aligned scratch, valid until the next call; NULL (error
 * recorded) when out of memory. */
void *tsr_cpu_scratch(struct tsr_cpu_ctx *c, size_t n);

/* Threads worth using for `work` multiply-adds (fork/join costs about a microsecond). */
int tsr_cpu_threads_for(const struct tsr_cpu_ctx *c, double work);

int tsr_cpu_matmul(tsr_backend_t *b, tsr_buf_t *y, const struct tsr_weight *w, tsr_buf_t *x,
                   const struct tsr_weight *bias, int n);
int tsr_cpu_rope_kv_write(tsr_backend_t *b, tsr_buf_t *q, tsr_buf_t *k, tsr_buf_t *v, tsr_buf_t *kc,
                          tsr_buf_t *vc, const struct tsr_attn_shape *s,
                          const struct tsr_batch_meta *m);
int tsr_cpu_moe(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *x, const struct tsr_moe *moe, int n);
int tsr_cpu_attention(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *q, tsr_buf_t *kc, tsr_buf_t *vc,
                      const struct tsr_attn_shape *s, const struct tsr_batch_meta *m);
int tsr_cpu_mla_attention(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *q, tsr_buf_t *kv,
                          tsr_buf_t *cache, const struct tsr_mla *mla,
                          const struct tsr_attn_shape *s, const struct tsr_batch_meta *m);

#endif
