/* Dispatch from the public op functions to a backend's vtable, with the argument checks every
 * backend would otherwise repeat. */
#include "kernels/backend_impl.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"

void tsr_backend_free(tsr_backend_t *b)
{
    if (b) b->i->free(b);
}

const char *tsr_backend_name(const tsr_backend_t *b)
{
    return b->i->name;
}

int tsr_backend_sync(tsr_backend_t *b)
{
    return b->i->sync ? b->i->sync(b) : 0;
}

int tsr_backend_memory(tsr_backend_t *b, size_t *free_bytes, size_t *total_bytes)
{
    if (!b->i->memory)
        return tsr_errorf(TSR_EUNSUPPORTED, "the %s backend does not measure its memory",
                          b->i->name);
    return b->i->memory(b, free_bytes, total_bytes);
}

struct tsr_graph {
    tsr_backend_t *b;
    void *handle;
};

int tsr_backend_graphs(const tsr_backend_t *b)
{
    return b->i->graph_begin != NULL;
}

int tsr_graph_begin(tsr_backend_t *b)
{
    if (!b->i->graph_begin) return tsr_errorf(TSR_EUNSUPPORTED, "%s has no graphs", b->i->name);
    return b->i->graph_begin(b);
}

int tsr_graph_end(tsr_backend_t *b, tsr_graph_t **out)
{
    *out = NULL;
    if (!b->i->graph_end) return tsr_errorf(TSR_EUNSUPPORTED, "%s has no graphs", b->i->name);
    tsr_graph_t *g = calloc(1, sizeof *g);
    void *h = NULL;
    int rc = b->i->graph_end(b, &h);
    if (rc || !g) {
        if (h) b->i->graph_free(b, h);
        free(g);
        return rc ? rc : tsr_errorf(TSR_ENOMEM, "out of memory for a graph");
    }
    g->b = b;
    g->handle = h;
    *out = g;
    return 0;
}

int tsr_graph_launch(tsr_graph_t *g)
{
    return g->b->i->graph_launch(g->b, g->handle);
}

void tsr_graph_free(tsr_graph_t *g)
{
    if (!g) return;
    g->b->i->graph_free(g->b, g->handle);
    free(g);
}

static tsr_buf_t *buf_new(tsr_backend_t *b, size_t nbytes)
{
    tsr_buf_t *buf = calloc(1, sizeof *buf);
    if (!buf) {
        tsr_errorf(TSR_ENOMEM, "out of memory allocating a buffer header");
        return NULL;
    }
    buf->b = b;
    buf->size = nbytes;
    return buf;
}

tsr_buf_t *tsr_buf_alloc(tsr_backend_t *b, size_t nbytes)
{
    tsr_buf_t *buf = buf_new(b, nbytes);
    if (buf && b->i->buf_alloc(b, buf)) {
        free(buf);
        return NULL;
    }
    return buf;
}

tsr_buf_t *tsr_buf_weights(tsr_backend_t *b, const void *host, size_t nbytes)
{
    tsr_buf_t *buf = buf_new(b, nbytes);
    if (buf && b->i->buf_weights(b, buf, host)) {
        free(buf);
        return NULL;
    }
    return buf;
}

void tsr_buf_free(tsr_buf_t *buf)
{
    if (!buf) return;
    buf->b->i->buf_free(buf->b, buf);
    free(buf);
}

size_t tsr_buf_size(const tsr_buf_t *buf)
{
    return buf->size;
}

void *tsr_buf_host(tsr_buf_t *buf)
{
    return buf->host;
}

static int check_range(const tsr_buf_t *buf, size_t off, size_t n)
{
    if (off > buf->size || n > buf->size - off)
        return tsr_errorf(TSR_ERANGE, "buffer access [%zu, +%zu) outside a %zu-byte buffer", off, n,
                          buf->size);
    return 0;
}

int tsr_buf_set(tsr_buf_t *buf, size_t off, const void *src, size_t n)
{
    int rc = check_range(buf, off, n);
    return rc ? rc : buf->b->i->buf_set(buf->b, buf, off, src, n);
}

int tsr_buf_get(tsr_buf_t *buf, size_t off, void *dst, size_t n)
{
    int rc = check_range(buf, off, n);
    return rc ? rc : buf->b->i->buf_get(buf->b, buf, off, dst, n);
}

int tsr_op_embed(tsr_backend_t *b, tsr_buf_t *out, const struct tsr_weight *table,
                 const int32_t *ids, int n)
{
    for (int i = 0; i < n; i++)
        if (ids[i] < -1 || ids[i] >= table->rows)
            return tsr_errorf(TSR_ERANGE, "token id %d outside the vocabulary (%lld)", ids[i],
                              (long long)table->rows);
    return b->i->embed(b, out, table, ids, n);
}

int tsr_op_rmsnorm(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *x, const struct tsr_weight *w,
                   int n, int dim, float eps)
{
    return b->i->rmsnorm(b, out, x, w, n, dim, eps);
}

int tsr_op_add_rmsnorm(tsr_backend_t *b, tsr_buf_t *resid, tsr_buf_t *delta, tsr_buf_t *out,
                       const struct tsr_weight *w, int n, int dim, float eps)
{
    return b->i->add_rmsnorm(b, resid, delta, out, w, n, dim, eps);
}

int tsr_buf_check_size(const tsr_buf_t *buf, size_t n, const char *what)
{
    if (!buf || buf->size < n)
        return tsr_errorf(TSR_ERANGE, "%s: needs %zu bytes, buffer holds %zu", what, n,
                          buf ? buf->size : 0);
    return 0;
}

size_t tsr_f32_bytes(int64_t n, int64_t width)
{
    if (n < 0 || width < 0) return SIZE_MAX;
    size_t r;
    if (__builtin_mul_overflow((size_t)n, (size_t)width, &r) ||
        __builtin_mul_overflow(r, sizeof(float), &r))
        return SIZE_MAX;
    return r;
}

/* The weight's type and shape, the buffers' sizes and no in-place use: checked once here, so
 * every backend's matmul can trust its arguments. */
static int check_matmul(tsr_buf_t *y, const struct tsr_weight *w, tsr_buf_t *x,
                        const struct tsr_weight *bias, int n)
{
    size_t wrow = tsr_dtype_row_bytes(w->type, w->cols);
    if (!tsr_dtype_valid(w->type) || !wrow || w->rows <= 0 || w->rows > INT_MAX ||
        w->cols > INT_MAX / 4 || n < 0)
        return tsr_errorf(TSR_EINVAL, "matmul: bad weight (%s, %lld x %lld) or n %d",
                          tsr_dtype_name(w->type), (long long)w->rows, (long long)w->cols, n);
    int rows = (int)w->rows, cols = (int)w->cols;
    int rc = tsr_buf_check_size(w->buf, wrow * (size_t)rows, "matmul weight");
    if (!rc) rc = tsr_buf_check_size(x, (size_t)n * cols * sizeof(float), "matmul input");
    if (!rc) rc = tsr_buf_check_size(y, (size_t)n * rows * sizeof(float), "matmul output");
    if (rc) return rc;
    if (n > 0 && y->data == x->data)
        return tsr_errorf(TSR_EINVAL, "matmul: output and input are the same buffer");
    if (bias) {
        size_t brow = tsr_dtype_row_bytes(bias->type, rows);
        if (!tsr_dtype_valid(bias->type) || !brow || bias->rows * bias->cols != rows)
            return tsr_errorf(TSR_EINVAL, "matmul: bias (%s, %lld x %lld) is not %d values",
                              tsr_dtype_name(bias->type), (long long)bias->rows,
                              (long long)bias->cols, rows);
        if ((rc = tsr_buf_check_size(bias->buf, brow, "matmul bias"))) return rc;
    }
    return 0;
}

int tsr_op_matmul(tsr_backend_t *b, tsr_buf_t *y, const struct tsr_weight *w, tsr_buf_t *x,
                  const struct tsr_weight *bias, int n)
{
    int rc = check_matmul(y, w, x, bias, n);
    return rc ? rc : b->i->matmul(b, y, w, x, bias, n);
}

int tsr_op_matmul_many(tsr_backend_t *b, int count, tsr_buf_t *const *y,
                       const struct tsr_weight *const *w, const struct tsr_weight *const *bias,
                       tsr_buf_t *x, int n)
{
    if (count < 1 || count > 3)
        return tsr_errorf(TSR_EINVAL, "matmul_many: %d weights (1..3)", count);
    for (int i = 0; i < count; i++) {
        int rc = check_matmul(y[i], w[i], x, bias ? bias[i] : NULL, n);
        if (rc) return rc;
    }
    if (b->i->matmul_many) return b->i->matmul_many(b, count, y, w, bias, x, n);
    for (int i = 0; i < count; i++) {
        int rc = b->i->matmul(b, y[i], w[i], x, bias ? bias[i] : NULL, n);
        if (rc) return rc;
    }
    return 0;
}

int tsr_op_matmul_swiglu(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *tmp,
                         const struct tsr_weight *wg, const struct tsr_weight *wu, tsr_buf_t *x,
                         int n)
{
    int rc = check_matmul(out, wg, x, NULL, n);
    if (!rc) rc = check_matmul(tmp, wu, x, NULL, n);
    if (rc) return rc;
    if (wg->rows != wu->rows || wg->cols != wu->cols || (n > 0 && out->data == tmp->data))
        return tsr_errorf(
            TSR_EINVAL, "matmul_swiglu: gate %lld x %lld and up %lld x %lld differ, or out is tmp",
            (long long)wg->rows, (long long)wg->cols, (long long)wu->rows, (long long)wu->cols);
    if (b->i->matmul_swiglu) return b->i->matmul_swiglu(b, out, tmp, wg, wu, x, n);
    if ((rc = b->i->matmul(b, out, wg, x, NULL, n)) || (rc = b->i->matmul(b, tmp, wu, x, NULL, n)))
        return rc;
    return b->i->swiglu(b, out, out, tmp, n, (int)wg->rows);
}

void tsr_kv_fp8_store(const float *x, int n_kv_head, int head_dim, uint8_t *row)
{
    size_t kw = (size_t)n_kv_head * head_dim, sc = kw + 4 * (size_t)n_kv_head;
    for (int h = 0; h < n_kv_head; h++) {
        float d = tsr_quantize_e4m3(x + (size_t)h * head_dim, head_dim, row + (size_t)h * head_dim);
        memcpy(row + kw + 4 * (size_t)h, &d, 4);
    }
    memset(row + sc, 0, tsr_kv_row_bytes(TSR_F8_E4M3, n_kv_head, head_dim) - sc);
}

void tsr_kv_fp8_load(const uint8_t *row, int n_kv_head, int head_dim, float *x)
{
    size_t kw = (size_t)n_kv_head * head_dim;
    for (size_t i = 0; i < kw; i++) {
        float d;
        memcpy(&d, row + kw + 4 * (i / (size_t)head_dim), 4);
        x[i] = d * tsr_e4m3_to_f32(row[i]);
    }
}

int tsr_op_rope_kv_write(tsr_backend_t *b, tsr_buf_t *q, tsr_buf_t *k, tsr_buf_t *v, tsr_buf_t *kc,
                         tsr_buf_t *vc, const struct tsr_attn_shape *s,
                         const struct tsr_batch_meta *m)
{
    return b->i->rope_kv_write(b, q, k, v, kc, vc, s, m);
}

/* Every block token t reads must lie inside the cache (K and V of n_slots rows each, of
 * tsr_kv_row_bytes() each). */
static int check_blocks(const struct tsr_attn_shape *s, const struct tsr_batch_meta *m,
                        const tsr_buf_t *kc, const tsr_buf_t *vc)
{
    int bs = s->block_size;
    if (!tsr_kv_row_bytes(s->kv_type, 1, 2))
        return tsr_errorf(TSR_EINVAL, "attention: KV cache type %s (F32, BF16 or F8_E4M3 only)",
                          tsr_dtype_name(s->kv_type));
    size_t row = tsr_kv_row_bytes(s->kv_type, s->n_kv_head, s->head_dim);
    if (bs <= 0 || s->n_head <= 0 || s->n_kv_head <= 0 || s->n_head % s->n_kv_head ||
        s->head_dim <= 0 || s->head_dim % 2)
        return tsr_errorf(TSR_EINVAL,
                          "attention: unsupported shape (heads %d, kv heads %d, head dim %d, "
                          "block %d)",
                          s->n_head, s->n_kv_head, s->head_dim, bs);
    int64_t n_slots = (int64_t)((kc->size < vc->size ? kc->size : vc->size) / row);
    for (int t = 0; t < m->n_tokens; t++) {
        int pos = m->pos[t], seq = m->seq[t];
        if (seq < 0 || seq >= m->n_seqs)
            return tsr_errorf(TSR_ERANGE, "attention: token %d: sequence %d of %d", t, seq,
                              m->n_seqs);
        if (pos < 0 || pos / bs >= m->max_blocks)
            return tsr_errorf(TSR_ERANGE, "attention: token %d: position %d beyond %d blocks", t,
                              pos, m->max_blocks);
        const int32_t *bt = m->block_tables + (size_t)seq * m->max_blocks;
        for (int i = 0; i <= pos / bs; i++) {
            int last = i < pos / bs ? bs - 1 : pos % bs;
            if (bt[i] < 0 || (int64_t)bt[i] * bs + last >= n_slots)
                return tsr_errorf(TSR_ERANGE, "attention: block %d outside the %lld-slot cache",
                                  bt[i], (long long)n_slots);
        }
    }
    return 0;
}

int tsr_op_attention(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *q, tsr_buf_t *kc, tsr_buf_t *vc,
                     const struct tsr_attn_shape *s, const struct tsr_batch_meta *m)
{
    int rc = check_blocks(s, m, kc, vc);
    return rc ? rc : b->i->attention(b, out, q, kc, vc, s, m);
}

int tsr_backend_can_mla(const tsr_backend_t *b)
{
    return b->i->mla_attention != NULL;
}

int tsr_op_mla_attention(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *q, tsr_buf_t *kv,
                         tsr_buf_t *cache, const struct tsr_mla *mla,
                         const struct tsr_attn_shape *s, const struct tsr_batch_meta *m)
{
    if (!b->i->mla_attention)
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "multi-head latent attention is not implemented on the %s backend yet",
                          b->i->name);
    if (s->kv_type != TSR_F32 && s->kv_type != TSR_BF16)
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "multi-head latent attention: a %s KV cache is not supported (f32 or "
                          "bf16)",
                          tsr_dtype_name(s->kv_type));
    int kr = mla->kv_lora_rank, rope = mla->qk_rope;
    const struct tsr_weight *kb = mla->kv_b, *kn = mla->kv_norm;
    if (kr <= 0 || rope <= 0 || rope % 2 || mla->qk_nope <= 0 || mla->v_dim <= 0 ||
        s->n_kv_head != 1 || s->head_dim != kr + rope || kb->type != TSR_F32 ||
        kb->rows != (int64_t)s->n_head * (mla->qk_nope + mla->v_dim) || kb->cols != kr ||
        kn->type != TSR_F32 || kn->cols != kr)
        return tsr_errorf(TSR_EINVAL,
                          "mla_attention: inconsistent shape (kv_lora_rank %d, qk_nope %d, "
                          "qk_rope %d, v %d; %d heads, %d kv heads of %d; kv_b %lld x %lld %s, "
                          "norm %lld %s; both f32)",
                          kr, mla->qk_nope, rope, mla->v_dim, s->n_head, s->n_kv_head, s->head_dim,
                          (long long)kb->rows, (long long)kb->cols, tsr_dtype_name(kb->type),
                          (long long)kn->cols, tsr_dtype_name(kn->type));
    int rc = check_blocks(s, m, cache, cache);
    return rc ? rc : b->i->mla_attention(b, out, q, kv, cache, mla, s, m);
}

int tsr_op_swiglu(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *gate, tsr_buf_t *up, int n,
                  int width)
{
    return b->i->swiglu(b, out, gate, up, n, width);
}

int tsr_op_gather_rows(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *x, const int32_t *rows, int n,
                       int width)
{
    return b->i->gather_rows(b, out, x, rows, n, width);
}

int tsr_backend_can_moe(const tsr_backend_t *b)
{
    return b->i->moe != NULL;
}

int tsr_op_moe(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *x, const struct tsr_moe *moe, int n)
{
    if (!b->i->moe)
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "mixture-of-experts layers are not implemented on the %s backend yet",
                          b->i->name);
    int rc = tsr_moe_routing_check(&moe->routing);
    if (rc) return rc;
    int64_t dim = moe->router->cols;
    if (n < 0 || moe->router->rows != moe->routing.n_expert || out->data == x->data)
        return tsr_errorf(TSR_EINVAL,
                          "moe: %d rows, a router of %lld rows for %d experts, or out "
                          "is x",
                          n, (long long)moe->router->rows, moe->routing.n_expert);
    if ((rc = tsr_buf_check_size(x, tsr_f32_bytes(n, dim), "moe input")) ||
        (rc = tsr_buf_check_size(out, tsr_f32_bytes(n, dim), "moe output")))
        return rc;
    return n ? b->i->moe(b, out, x, moe, n) : 0;
}

int tsr_op_argmax(tsr_backend_t *b, tsr_buf_t *x, int n, int width, int32_t *out)
{
    if (n < 0 || width <= 0) return tsr_errorf(TSR_EINVAL, "argmax: n %d, width %d", n, width);
    int rc = tsr_buf_check_size(x, tsr_f32_bytes(n, width), "argmax input");
    if (rc || n == 0) return rc;
    if (b->i->argmax) return b->i->argmax(b, x, n, width, out);
    const float *p = tsr_buf_host(x);
    if (!p) return tsr_errorf(TSR_EUNSUPPORTED, "argmax: %s has no argmax", b->i->name);
    for (int i = 0; i < n; i++, p += width) {
        int best = 0;
        for (int j = 1; j < width; j++)
            if (p[j] > p[best]) best = j;
        out[i] = best;
    }
    return 0;
}

int tsr_backend_can_sample(const tsr_backend_t *b)
{
    return b->i->sample != NULL;
}

int tsr_backend_can_top_logprobs(const tsr_backend_t *b)
{
    return b->i->top_logprobs != NULL;
}

int tsr_op_top_logprobs(tsr_backend_t *b, tsr_buf_t *x, int n, int width, int k, int32_t *ids,
                        float *logprobs)
{
    if (n < 0 || width <= 0 || k < 1 || k > 20)
        return tsr_errorf(TSR_EINVAL, "top_logprobs: n %d, width %d, k %d", n, width, k);
    int rc = tsr_buf_check_size(x, tsr_f32_bytes(n, width), "top_logprobs input");
    if (rc || n == 0) return rc;
    if (!b->i->top_logprobs)
        return tsr_errorf(TSR_EUNSUPPORTED, "top_logprobs: %s computes them on the host",
                          b->i->name);
    return b->i->top_logprobs(b, x, n, width, k, ids, logprobs);
}

int tsr_op_sample(tsr_backend_t *b, tsr_buf_t *x, int n, int width,
                  const struct tsr_sample_params *p, int32_t *ids, float *logprobs)
{
    if (n < 0 || width <= 0) return tsr_errorf(TSR_EINVAL, "sample: n %d, width %d", n, width);
    for (int i = 0; i < n; i++)
        if (!(p[i].temperature >= 0) || p[i].top_k < 0 || !(p[i].top_p > 0 && p[i].top_p <= 1) ||
            !(p[i].min_p >= 0 && p[i].min_p < 1) || !(p[i].u >= 0 && p[i].u < 1))
            return tsr_errorf(TSR_EINVAL,
                              "sample: row %d: temperature %g, top_k %d, top_p %g, min_p %g, u %g",
                              i, p[i].temperature, p[i].top_k, p[i].top_p, p[i].min_p, p[i].u);
    int rc = tsr_buf_check_size(x, tsr_f32_bytes(n, width), "sample input");
    if (rc || n == 0) return rc;
    if (!b->i->sample)
        return tsr_errorf(TSR_EUNSUPPORTED, "sample: %s samples on the host", b->i->name);
    return b->i->sample(b, x, n, width, p, ids, logprobs);
}
