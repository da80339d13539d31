/* What a backend implements: a vtable plus its context (the ggml shape). Only backends include
 * this; everyone else sees kernels/backend.h. */
#ifndef TSR_KERNELS_BACKEND_IMPL_H
#define TSR_KERNELS_BACKEND_IMPL_H

#include "kernels/backend.h"

struct tsr_backend_iface {
    const char *name;
    void (*free)(tsr_backend_t *b);
    int (*sync)(tsr_backend_t *b);
    /* Optional (NULL: TSR_EUNSUPPORTED): the device's free and total bytes. */
    int (*memory)(tsr_backend_t *b, size_t *free_bytes, size_t *total_bytes);
    /* Buffers: alloc fills buf->data (device address) or fails; weights may alias host. */
    int (*buf_alloc)(tsr_backend_t *b, tsr_buf_t *buf);
    int (*buf_weights)(tsr_backend_t *b, tsr_buf_t *buf, const void *host);
    void (*buf_free)(tsr_backend_t *b, tsr_buf_t *buf);
    int (*buf_set)(tsr_backend_t *b, tsr_buf_t *buf, size_t off, const void *src, size_t n);
    int (*buf_get)(tsr_backend_t *b, tsr_buf_t *buf, size_t off, void *dst, size_t n);
    /* Ops: same contracts as tsr_op_* in backend.h. backend.c has already checked what every
     * backend would: token ids against the table (embed), and every block an attention token
     * reads against the cache (attention). */
    int (*embed)(tsr_backend_t *b, tsr_buf_t *out, const struct tsr_weight *table,
                 const int32_t *ids, int n);
    int (*rmsnorm)(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *x, const struct tsr_weight *w,
                   int n, int dim, float eps);
    int (*add_rmsnorm)(tsr_backend_t *b, tsr_buf_t *resid, tsr_buf_t *delta, tsr_buf_t *out,
                       const struct tsr_weight *w, int n, int dim, float eps);
    int (*matmul)(tsr_backend_t *b, tsr_buf_t *y, const struct tsr_weight *w, tsr_buf_t *x,
                  const struct tsr_weight *bias, int n);
    int (*rope_kv_write)(tsr_backend_t *b, tsr_buf_t *q, tsr_buf_t *k, tsr_buf_t *v, tsr_buf_t *kc,
                         tsr_buf_t *vc, const struct tsr_attn_shape *s,
                         const struct tsr_batch_meta *m);
    int (*attention)(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *q, tsr_buf_t *kc, tsr_buf_t *vc,
                     const struct tsr_attn_shape *s, const struct tsr_batch_meta *m);
    int (*swiglu)(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *gate, tsr_buf_t *up, int n,
                  int width);
    int (*gather_rows)(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *x, const int32_t *rows, int n,
                       int width);
    /* Optional (NULL: backend.c scans host-visible buffers itself). Arguments checked. */
    int (*argmax)(tsr_backend_t *b, tsr_buf_t *x, int n, int width, int32_t *out);
    /* Optional (NULL: backend.c runs matmul, and swiglu, one at a time). Arguments checked. */
    int (*matmul_many)(tsr_backend_t *b, int count, tsr_buf_t *const *y,
                       const struct tsr_weight *const *w, const struct tsr_weight *const *bias,
                       tsr_buf_t *x, int n);
    int (*matmul_swiglu)(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *tmp,
                         const struct tsr_weight *wg, const struct tsr_weight *wu, tsr_buf_t *x,
                         int n);
    /* Optional (NULL: TSR_EUNSUPPORTED). Routing checked (tsr_moe_route's). */
    int (*moe)(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *x, const struct tsr_moe *moe, int n);
    /* Optional (NULL: TSR_EUNSUPPORTED). Shapes, weights and blocks checked. */
    int (*mla_attention)(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *q, tsr_buf_t *kv,
                         tsr_buf_t *cache, const struct tsr_mla *mla,
                         const struct tsr_attn_shape *s, const struct tsr_batch_meta *m);
    /* Graphs, optional (all NULL: tsr_backend_graphs() is 0). end gives the backend's handle. */
    int (*graph_begin)(tsr_backend_t *b);
    int (*graph_end)(tsr_backend_t *b, void **handle);
    int (*graph_launch)(tsr_backend_t *b, void *handle);
    void (*graph_free)(tsr_backend_t *b, void *handle);
    /* Optional (NULL: TSR_EUNSUPPORTED). Arguments checked. */
    int (*sample)(tsr_backend_t *b, tsr_buf_t *x, int n, int width,
                  const struct tsr_sample_params *p, int32_t *ids, float *logprobs);
    /* Optional (NULL: TSR_EUNSUPPORTED). Arguments checked. */
    int (*top_logprobs)(tsr_backend_t *b, tsr_buf_t *x, int n, int width, int k, int32_t *ids,
                        float *logprobs);
};

struct tsr_backend {
    const struct tsr_backend_iface *i;
    void *ctx;
};

struct tsr_buf {
    tsr_backend_t *b;
    void *data; /* device address (host address on the CPU backend) */
    size_t size;
    void *host; /* host-visible address, or NULL: set by the backend */
    int owns;   /* 0 when data aliases caller memory */
};

/* Argument checks shared by the backends. */
/* 0 when buf holds at least n bytes, else TSR_ERANGE naming what. */
int tsr_buf_check_size(const tsr_buf_t *buf, size_t n, const char *what);
/* 0 when a MoE routing is consistent (kernels/moe.c), else TSR_EINVAL naming it. */
int tsr_moe_routing_check(const struct tsr_moe_routing *r);
/* Counting sort of the (token, choice) pairs [i0, i1) of ids (k choices a token) by expert:
 * expert e's pairs at [count[e], count[e + 1]) of rows (their tokens, in token order) and we
 * (their weights w). count has E + 1 entries, zeroed by the caller (kernels/moe.c). */
void tsr_moe_sort_by_expert(const int32_t *ids, const float *w, int i0, int i1, int k, int E,
                            int *count, int32_t *rows, float *we);
/* Bytes of n rows of width floats, or SIZE_MAX when negative or overflowing. */
size_t tsr_f32_bytes(int64_t n, int64_t width);

#endif
