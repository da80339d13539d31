/* The CUDA backend: buffers, argument checks, step metadata staging and the matmul strategy; the
 * kernels are in cuda_ops.cu, cuda_matmul.cu and cuda_attention.cu. */
#include "kernels/cuda/cuda_backend.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "common/log.h"
#include "common/status.h"
#include "kernels/backend_impl.h"
#include "kernels/cuda/cuda_kernels.h"

enum {
    META_SLOTS = 16,            /* pinned staging areas in flight (ops the host may run ahead) */
    GEMM_TILE_BYTES = 64 << 20, /* bf16 weight tile for cuBLAS: rows decoded per GEMM call */
    DEQUANT_MIN_N = 192,        /* struct cuda_ctx's dequant_min_n */
    SCRATCH_ALIGN = 256,
    BLAS_WORKSPACE = 32 << 20, /* what cuBLAS asks for on Hopper */
};

/* Which op's metadata a device copy holds. Ops of one kind in a step (RoPE or attention in every
 * layer) see the same arrays, so each kind keeps its last upload and skips identical ones. */
enum meta_kind {
    META_EMBED,
    META_ROPE,
    META_ATTN,
    META_GATHER,
    META_SAMPLE,
    META_MOE, /* a MoE layer's routing */
    META_KINDS
};

struct meta_slot {
    void *host; /* pinned */
    size_t size;
    cudaEvent_t done; /* recorded after the copy out of host */
    int pending;
};

struct meta_cache {
    void *dev;
    size_t dev_size;
    void *shadow; /* host copy of what dev holds */
    size_t len, shadow_size;
    int valid;
};

struct cuda_ctx {
    int device, n_sms;
    int dequant_min_n; /* gemm(): rows of x from which Q8_0/F8 weights are decoded for cuBLAS */
    int attn_walk;     /* attention: the walk kernel at every head size (TSR_CUDA_ATTN_WALK=1) */
    char device_name[256];
    cudaStream_t stream;
    cublasHandle_t blas;
    struct meta_slot slots[META_SLOTS];
    int next_slot;
    struct meta_cache meta[META_KINDS];
    void *pack; /* host area where an op's arrays are packed before staging */
    size_t pack_size;
    void *scratch; /* device scratch shared by the ops (one op at a time) */
    size_t scratch_size;
    /* graphs: while recording, ops must not allocate, wait or stage host metadata; scratch that
     * a live graph may use is kept (retired) instead of freed when scratch grows */
    int recording, n_graphs;
    struct retired {
        void *p;
        struct retired *next;
    } * retired;
    void *blas_ws; /* cuBLAS workspace of our own: it then allocates nothing while recording */
    void *tiles;   /* host: attention's prefill tiles, reused from layer to layer */
    size_t tiles_size;
    void *moe_ws; /* device: a MoE layer's step buffers (the matmuls use scratch meanwhile) */
    size_t moe_ws_size;
    void *moe_host; /* host: its router logits and routing */
    size_t moe_host_size;
};

static struct cuda_ctx *ctx_of(tsr_backend_t *b)
{
    return b->ctx;
}

/* ---- errors ---- */

static int cuda_fail(cudaError_t e, const char *what)
{
    return tsr_errorf(e == cudaErrorMemoryAllocation ? TSR_ENOMEM : TSR_EIO, "cuda: %s: %s (%s)",
                      what, cudaGetErrorString(e), cudaGetErrorName(e));
}

#define CK(call, what)                                                                             \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) return cuda_fail(e_, what);                                         \
    } while (0)

#define CKB(call, what)                                                                            \
    do {                                                                                           \
        cublasStatus_t s_ = (call);                                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                           \
            return tsr_errorf(s_ == CUBLAS_STATUS_ALLOC_FAILED ? TSR_ENOMEM : TSR_EIO,             \
                              "cublas: %s: %s", what, cublasGetStatusString(s_));                  \
    } while (0)

static size_t align_up(size_t n)
{
    return (n + SCRATCH_ALIGN - 1) & ~(size_t)(SCRATCH_ALIGN - 1);
}

/* ---- scratch and metadata ---- */

/* At least n bytes of device scratch, valid for the current op. Growing waits for the stream
 * (the old area may still be in use by queued work). */
static int scratch(struct cuda_ctx *c, size_t n, void **out)
{
    if (n > c->scratch_size) {
        size_t want = align_up(n + n / 4);
        if (c->recording)
            return tsr_errorf(TSR_EINTERNAL,
                              "cuda: an op needs %zu bytes of scratch while recording a graph "
                              "(%zu held): run the step once before recording it",
                              n, c->scratch_size);
        CK(cudaStreamSynchronize(c->stream), "scratch: synchronize");
        if (c->scratch && c->n_graphs) { /* a graph may use it: keep it until the backend goes */
            struct retired *r = malloc(sizeof *r);
            if (!r) return tsr_errorf(TSR_ENOMEM, "cuda: out of host memory");
            r->p = c->scratch;
            r->next = c->retired;
            c->retired = r;
        } else if (c->scratch) {
            CK(cudaFree(c->scratch), "scratch: free");
        }
        c->scratch = NULL;
        c->scratch_size = 0;
        CK(cudaMalloc(&c->scratch, want), "scratch: allocate");
        c->scratch_size = want;
    }
    *out = c->scratch;
    return 0;
}

static int grow_host(void **p, size_t *size, size_t n)
{
    if (n <= *size) return 0;
    size_t want = n + n / 2 + 256;
    void *q = realloc(*p, want);
    if (!q)
        return tsr_errorf(TSR_ENOMEM, "cuda: out of host memory for %zu bytes of metadata", want);
    *p = q;
    *size = want;
    return 0;
}

/* Packs `count` host arrays (each starting SCRATCH_ALIGN-aligned) and makes them visible to the
 * device in the cache of `kind`; dev[i] receives array i's device address. The copy is queued on
 * the stream through a pinned slot, so the caller's arrays are free when this returns; identical
 * contents to the kind's last upload are not copied again. */
static int stage_meta(struct cuda_ctx *c, enum meta_kind kind, int count, const void *const *src,
                      const size_t *bytes, void **dev)
{
    if (c->recording)
        return tsr_errorf(TSR_EINVAL, "cuda: an op was recorded into a graph with host metadata "
                                      "(a replay would not see new values): pass meta->dev");
    size_t off[4], total = 0;
    for (int i = 0; i < count; i++) {
        off[i] = total;
        total += align_up(bytes[i] ? bytes[i] : 1);
    }
    int rc = grow_host(&c->pack, &c->pack_size, total);
    if (rc) return rc;
    memset(c->pack, 0, total);
    for (int i = 0; i < count; i++)
        if (bytes[i]) memcpy((char *)c->pack + off[i], src[i], bytes[i]);
    struct meta_cache *mc = &c->meta[kind];
    if (!(mc->valid && mc->len == total && !memcmp(mc->shadow, c->pack, total))) {
        struct meta_slot *s = &c->slots[c->next_slot];
        c->next_slot = (c->next_slot + 1) % META_SLOTS;
        if (s->pending) CK(cudaEventSynchronize(s->done), "metadata: wait for a staging slot");
        s->pending = 0;
        if (s->size < total) {
            if (s->host) CK(cudaFreeHost(s->host), "metadata: free pinned staging");
            s->host = NULL;
            s->size = 0;
            size_t want = align_up(total + total / 2 + 4096);
            CK(cudaMallocHost(&s->host, want), "metadata: allocate pinned staging");
            s->size = want;
        }
        if (mc->dev_size < total) {
            size_t want = align_up(total + total / 2 + 4096);
            CK(cudaStreamSynchronize(c->stream), "metadata: synchronize");
            if (mc->dev) CK(cudaFree(mc->dev), "metadata: free");
            mc->dev = NULL;
            mc->dev_size = 0;
            CK(cudaMalloc(&mc->dev, want), "metadata: allocate");
            mc->dev_size = want;
        }
        mc->valid = 0;
        if ((rc = grow_host(&mc->shadow, &mc->shadow_size, total))) return rc;
        memcpy(s->host, c->pack, total);
        CK(cudaMemcpyAsync(mc->dev, s->host, total, cudaMemcpyHostToDevice, c->stream),
           "metadata: copy to device");
        CK(cudaEventRecord(s->done, c->stream), "metadata: record");
        s->pending = 1;
        memcpy(mc->shadow, c->pack, total);
        mc->len = total;
        mc->valid = 1;
    }
    for (int i = 0; i < count; i++) dev[i] = (char *)mc->dev + off[i];
    return 0;
}

/* ---- backend and buffers ---- */

static int cuda_memory(tsr_backend_t *b, size_t *free_bytes, size_t *total_bytes)
{
    struct cuda_ctx *c = ctx_of(b);
    CK(cudaSetDevice(c->device), "set device");
    CK(cudaStreamSynchronize(c->stream), "synchronize"); /* frees queued so far are done */
    CK(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
    return 0;
}

static void cuda_free(tsr_backend_t *b)
{
    struct cuda_ctx *c = ctx_of(b);
    cudaSetDevice(c->device);
    if (c->stream) cudaStreamSynchronize(c->stream);
    for (int i = 0; i < META_SLOTS; i++) {
        if (c->slots[i].host) cudaFreeHost(c->slots[i].host);
        if (c->slots[i].done) cudaEventDestroy(c->slots[i].done);
    }
    for (int i = 0; i < META_KINDS; i++) {
        if (c->meta[i].dev) cudaFree(c->meta[i].dev);
        free(c->meta[i].shadow);
    }
    if (c->scratch) cudaFree(c->scratch);
    if (c->moe_ws) cudaFree(c->moe_ws);
    free(c->moe_host);
    while (c->retired) {
        struct retired *r = c->retired;
        c->retired = r->next;
        cudaFree(r->p);
        free(r);
    }
    if (c->blas) cublasDestroy(c->blas);
    if (c->blas_ws) cudaFree(c->blas_ws);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c->pack);
    free(c->tiles);
    free(c);
    free(b);
}

static int cuda_sync(tsr_backend_t *b)
{
    struct cuda_ctx *c = ctx_of(b);
    CK(cudaSetDevice(c->device), "set device");
    CK(cudaStreamSynchronize(c->stream), "synchronize");
    return 0;
}

static int cuda_buf_alloc(tsr_backend_t *b, tsr_buf_t *buf)
{
    struct cuda_ctx *c = ctx_of(b);
    CK(cudaSetDevice(c->device), "set device");
    cudaError_t e = cudaMalloc(&buf->data, buf->size ? buf->size : 1);
    if (e != cudaSuccess) {
        buf->data = NULL;
        return cuda_fail(e, "allocate a buffer");
    }
    buf->host = NULL;
    buf->owns = 1;
    return 0;
}

static int cuda_buf_weights(tsr_backend_t *b, tsr_buf_t *buf, const void *host)
{
    int rc = cuda_buf_alloc(b, buf);
    if (rc) return rc;
    cudaError_t e =
        buf->size ? cudaMemcpy(buf->data, host, buf->size, cudaMemcpyHostToDevice) : cudaSuccess;
    if (e != cudaSuccess) {
        cudaFree(buf->data);
        buf->data = NULL;
        return cuda_fail(e, "copy weights to the device");
    }
    return 0;
}

static void cuda_buf_free(tsr_backend_t *b, tsr_buf_t *buf)
{
    struct cuda_ctx *c = ctx_of(b);
    if (buf->owns && buf->data) {
        cudaSetDevice(c->device);
        /* Queued ops may still use it. */
        cudaError_t e = cudaStreamSynchronize(c->stream);
        if (e == cudaSuccess) e = cudaFree(buf->data);
        if (e != cudaSuccess) tsr_log_warn("cuda: freeing a buffer: %s", cudaGetErrorString(e));
    }
    buf->data = NULL;
}

static int cuda_buf_set(tsr_backend_t *b, tsr_buf_t *buf, size_t off, const void *src, size_t n)
{
    struct cuda_ctx *c = ctx_of(b);
    if (!n) return 0;
    CK(cudaSetDevice(c->device), "set device");
    CK(cudaMemcpyAsync((char *)buf->data + off, src, n, cudaMemcpyHostToDevice, c->stream),
       "copy to the device");
    /* From pageable memory the copy has left src when the call returns; from pinned memory it
     * may not have, and src is only the caller's for the duration of this call. */
    struct cudaPointerAttributes at;
    cudaError_t e = cudaPointerGetAttributes(&at, src);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* not a CUDA pointer: clear the error, keep going */
        return 0;
    }
    if (at.type == cudaMemoryTypeHost) CK(cudaStreamSynchronize(c->stream), "copy to the device");
    return 0;
}

static int cuda_buf_get(tsr_backend_t *b, tsr_buf_t *buf, size_t off, void *dst, size_t n)
{
    struct cuda_ctx *c = ctx_of(b);
    if (!n) return 0;
    CK(cudaSetDevice(c->device), "set device");
    CK(cudaMemcpyAsync(dst, (const char *)buf->data + off, n, cudaMemcpyDeviceToHost, c->stream),
       "copy from the device");
    CK(cudaStreamSynchronize(c->stream), "copy from the device");
    return 0;
}

/* ---- element-wise ops ---- */

static int launched(cudaError_t e, const char *op)
{
    return e == cudaSuccess ? 0 : cuda_fail(e, op);
}

static int cuda_embed(tsr_backend_t *b, tsr_buf_t *out, const struct tsr_weight *table,
                      const int32_t *ids, int n)
{
    struct cuda_ctx *c = ctx_of(b);
    size_t row = tsr_dtype_row_bytes(table->type, table->cols);
    if (!tsr_dtype_valid(table->type) || !row || table->cols > INT_MAX || n < 0)
        return tsr_errorf(TSR_EINVAL, "embed: bad table (%s, %lld columns) or n %d",
                          tsr_dtype_name(table->type), (long long)table->cols, n);
    int rc = tsr_buf_check_size(table->buf, row * (size_t)table->rows, "embed table");
    if (!rc) rc = tsr_buf_check_size(out, tsr_f32_bytes(n, table->cols), "embed output");
    if (rc || n == 0) return rc;
    CK(cudaSetDevice(c->device), "set device");
    const void *src[1] = {ids};
    size_t bytes[1] = {(size_t)n * sizeof(int32_t)};
    void *dev[1];
    if ((rc = stage_meta(c, META_EMBED, 1, src, bytes, dev))) return rc;
    return launched(tsr_cuda_embed(c->stream, out->data, table->buf->data, table->type, row,
                                   (int)table->cols, dev[0], n),
                    "embed");
}

/* Checks a norm weight covering dim elements. */
static int norm_weight(const struct tsr_weight *w, int dim)
{
    size_t row = tsr_dtype_row_bytes(w->type, dim);
    if (!tsr_dtype_valid(w->type) || !row || w->rows * w->cols < dim)
        return tsr_errorf(TSR_EINVAL, "rmsnorm: weight (%s, %lld x %lld) does not cover dim %d",
                          tsr_dtype_name(w->type), (long long)w->rows, (long long)w->cols, dim);
    return tsr_buf_check_size(w->buf, row, "rmsnorm weight");
}

static int norm_checks(int n, int dim, tsr_buf_t *a, const char *an, tsr_buf_t *bb, const char *bn,
                       tsr_buf_t *cc, const char *cn)
{
    if (n < 0 || dim <= 0) return tsr_errorf(TSR_EINVAL, "rmsnorm: n %d, dim %d", n, dim);
    size_t need = tsr_f32_bytes(n, dim);
    int rc = tsr_buf_check_size(a, need, an);
    if (!rc) rc = tsr_buf_check_size(bb, need, bn);
    if (!rc && cc) rc = tsr_buf_check_size(cc, need, cn);
    return rc;
}

static int cuda_rmsnorm(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *x, const struct tsr_weight *w,
                        int n, int dim, float eps)
{
    struct cuda_ctx *c = ctx_of(b);
    int rc = norm_checks(n, dim, out, "rmsnorm output", x, "rmsnorm input", NULL, NULL);
    if (!rc) rc = norm_weight(w, dim);
    if (rc) return rc;
    CK(cudaSetDevice(c->device), "set device");
    return launched(
        tsr_cuda_rmsnorm(c->stream, out->data, x->data, w->buf->data, w->type, n, dim, eps),
        "rmsnorm");
}

static int cuda_add_rmsnorm(tsr_backend_t *b, tsr_buf_t *resid, tsr_buf_t *delta, tsr_buf_t *out,
                            const struct tsr_weight *w, int n, int dim, float eps)
{
    struct cuda_ctx *c = ctx_of(b);
    int rc = norm_checks(n, dim, resid, "add_rmsnorm residual", delta, "add_rmsnorm delta", out,
                         "add_rmsnorm output");
    if (!rc) rc = norm_weight(w, dim);
    if (rc) return rc;
    CK(cudaSetDevice(c->device), "set device");
    return launched(tsr_cuda_add_rmsnorm(c->stream, resid->data, delta->data, out->data,
                                         w->buf->data, w->type, n, dim, eps),
                    "add_rmsnorm");
}

static int cuda_swiglu(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *gate, tsr_buf_t *up, int n,
                       int width)
{
    struct cuda_ctx *c = ctx_of(b);
    if (n < 0 || width <= 0) return tsr_errorf(TSR_EINVAL, "swiglu: n %d, width %d", n, width);
    size_t need = tsr_f32_bytes(n, width);
    int rc = tsr_buf_check_size(out, need, "swiglu output");
    if (!rc) rc = tsr_buf_check_size(gate, need, "swiglu gate");
    if (!rc) rc = tsr_buf_check_size(up, need, "swiglu up");
    if (rc) return rc;
    CK(cudaSetDevice(c->device), "set device");
    return launched(tsr_cuda_swiglu(c->stream, out->data, gate->data, up->data, (size_t)n * width),
                    "swiglu");
}

static int cuda_gather_rows(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *x, const int32_t *rows,
                            int n, int width)
{
    struct cuda_ctx *c = ctx_of(b);
    if (n < 0 || width <= 0) return tsr_errorf(TSR_EINVAL, "gather_rows: n %d, width %d", n, width);
    size_t rb = (size_t)width * sizeof(float);
    int rc = tsr_buf_check_size(out, tsr_f32_bytes(n, width), "gather_rows output");
    for (int i = 0; !rc && i < n; i++)
        if (rows[i] < 0 || (size_t)rows[i] >= x->size / rb)
            rc = tsr_errorf(TSR_ERANGE, "gather_rows: row %d outside the %zu-row input", rows[i],
                            x->size / rb);
    if (rc || n == 0) return rc;
    CK(cudaSetDevice(c->device), "set device");
    const void *src[1] = {rows};
    size_t bytes[1] = {(size_t)n * sizeof(int32_t)};
    void *dev[1];
    if ((rc = stage_meta(c, META_GATHER, 1, src, bytes, dev))) return rc;
    if (out->data != x->data)
        return launched(tsr_cuda_gather_rows(c->stream, out->data, x->data, dev[0], n, width),
                        "gather_rows");
    /* In place: through scratch, since a later source row may already be overwritten. */
    void *tmp;
    if ((rc = scratch(c, (size_t)n * rb, &tmp))) return rc;
    if ((rc = launched(tsr_cuda_gather_rows(c->stream, tmp, x->data, dev[0], n, width),
                       "gather_rows")))
        return rc;
    CK(cudaMemcpyAsync(out->data, tmp, (size_t)n * rb, cudaMemcpyDeviceToDevice, c->stream),
       "gather_rows: copy");
    return 0;
}

/* ---- mixture of experts (kernels/backend.h tsr_op_moe) ----
 * The router's matmul on the GPU, the routing on the host (its n x n_expert logits cross and the
 * stream waits, so a MoE layer is never recorded into a graph: the runner turns graphs off), then
 * expert by expert in expert order, as tsr_cpu_moe: the rows routed to an expert gathered, its
 * SwiGLU MLP through the matmul ops (so every weight type and the GEMV/GEMM choice are theirs),
 * its outputs scaled and added to their rows (tsr_cuda_scatter_add, rounded as the CPU's
 * o += w * y). The sums are the CPU's in the CPU's order; only the matmuls round differently. */

/* A view of n bytes of the MoE workspace at *off (SCRATCH_ALIGN-aligned). */
static tsr_buf_t moe_view(tsr_backend_t *b, size_t *off, size_t n)
{
    struct cuda_ctx *c = ctx_of(b);
    tsr_buf_t v = {.b = b, .data = (char *)c->moe_ws + *off, .size = n};
    *off += align_up(n);
    return v;
}

/* One MoE call's step buffers (device) and routing (host). */
struct moe_step {
    tsr_buf_t logits, xe, ye, h, tmp, gate;
    float *hl, *w, *we;
    int32_t *ids, *rows;
    int *count;
};

static int moe_buffers(tsr_backend_t *b, const struct tsr_moe *moe, int n, struct moe_step *st)
{
    struct cuda_ctx *c = ctx_of(b);
    int E = moe->routing.n_expert, nk = n * moe->routing.n_used;
    int64_t dim = moe->router->cols, ffn = 0;
    for (int e = 0; e < E; e++) /* the widest expert, routed or shared */
        if (moe->gate[e].rows > ffn) ffn = moe->gate[e].rows;
    if (moe->shared_gate && moe->shared_gate->rows > ffn) ffn = moe->shared_gate->rows;
    size_t ws = align_up(sizeof(float) * (size_t)n * E) +
                2 * align_up(sizeof(float) * (size_t)nk * dim) +
                2 * align_up(sizeof(float) * (size_t)nk * ffn) + align_up(sizeof(float) * n);
    /* host: logits, w, we, ids, rows, count */
    size_t hs = sizeof(float) * (size_t)n * E + 4 * sizeof(int32_t) * (size_t)nk +
                sizeof(int) * ((size_t)E + 1);
    CK(cudaSetDevice(c->device), "set device");
    if (ws > c->moe_ws_size) {
        CK(cudaStreamSynchronize(c->stream), "moe: synchronize");
        if (c->moe_ws) CK(cudaFree(c->moe_ws), "moe: free");
        c->moe_ws = NULL;
        c->moe_ws_size = 0;
        size_t want = align_up(ws + ws / 4);
        CK(cudaMalloc(&c->moe_ws, want), "moe: allocate step buffers");
        c->moe_ws_size = want;
    }
    int rc = grow_host(&c->moe_host, &c->moe_host_size, hs);
    if (rc) return rc;
    size_t off = 0;
    st->logits = moe_view(b, &off, sizeof(float) * (size_t)n * E);
    st->xe = moe_view(b, &off, sizeof(float) * (size_t)nk * dim);
    st->ye = moe_view(b, &off, sizeof(float) * (size_t)nk * dim);
    st->h = moe_view(b, &off, sizeof(float) * (size_t)nk * ffn);
    st->tmp = moe_view(b, &off, sizeof(float) * (size_t)nk * ffn);
    st->gate = moe_view(b, &off, sizeof(float) * (size_t)n);
    st->hl = c->moe_host;
    st->w = st->hl + (size_t)n * E;
    st->we = st->w + nk;
    st->ids = (int32_t *)(st->we + nk);
    st->rows = st->ids + nk;
    st->count = (int *)(st->rows + nk);
    return 0;
}

static int cuda_moe(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *x, const struct tsr_moe *moe,
                    int n)
{
    struct cuda_ctx *c = ctx_of(b);
    if (c->recording)
        return tsr_errorf(TSR_EINVAL, "cuda: a mixture-of-experts layer cannot be recorded into a "
                                      "graph (its routing runs on the host)");
    const struct tsr_moe_routing *r = &moe->routing;
    int E = r->n_expert, k = r->n_used, nk = n * k;
    int64_t dim = moe->router->cols;
    struct moe_step st;
    int rc = moe_buffers(b, moe, n, &st);
    if (rc || (rc = tsr_op_matmul(b, &st.logits, moe->router, x, NULL, n))) return rc;
    CK(cudaMemcpyAsync(st.hl, st.logits.data, sizeof(float) * (size_t)n * E, cudaMemcpyDeviceToHost,
                       c->stream),
       "moe: router logits to the host");
    CK(cudaStreamSynchronize(c->stream), "moe: router logits");
    if ((rc = tsr_moe_route(r, st.hl, moe->score_bias, n, st.ids, st.w))) return rc;
    if (moe->trace) memcpy(moe->trace, st.ids, sizeof *st.ids * (size_t)nk);
    int *count = st.count;
    memset(count, 0, sizeof *count * ((size_t)E + 1));
    tsr_moe_sort_by_expert(st.ids, st.w, 0, nk, k, E, count, st.rows, st.we);
    const void *src[2] = {st.rows, st.we};
    size_t bytes[2] = {sizeof(int32_t) * (size_t)nk, sizeof(float) * (size_t)nk};
    void *dev[2];
    if ((rc = stage_meta(c, META_MOE, 2, src, bytes, dev))) return rc;
    const int32_t *drows = dev[0];
    const float *dwe = dev[1];
    CK(cudaMemsetAsync(out->data, 0, sizeof(float) * (size_t)n * dim, c->stream), "moe: zero");
    for (int e = 0; e < E && !rc; e++) {
        int m = count[e + 1] - count[e];
        if (!m) continue;
        if (!(rc = launched(tsr_cuda_gather_rows(c->stream, st.xe.data, x->data, drows + count[e],
                                                 m, (int)dim),
                            "moe: gather")) &&
            !(rc =
                  tsr_op_matmul_swiglu(b, &st.h, &st.tmp, &moe->gate[e], &moe->up[e], &st.xe, m)) &&
            !(rc = tsr_op_matmul(b, &st.ye, &moe->down[e], &st.h, NULL, m)))
            rc = launched(tsr_cuda_scatter_add(c->stream, out->data, st.ye.data, drows + count[e],
                                               dwe + count[e], 0, m, (int)dim),
                          "moe: scatter-add");
    }
    if (rc || !moe->shared_gate) return rc;
    if ((rc = tsr_op_matmul_swiglu(b, &st.h, &st.tmp, moe->shared_gate, moe->shared_up, x, n)) ||
        (rc = tsr_op_matmul(b, &st.ye, moe->shared_down, &st.h, NULL, n)))
        return rc;
    if (moe->shared_inp && (rc = tsr_op_matmul(b, &st.gate, moe->shared_inp, x, NULL, n)))
        return rc;
    return launched(tsr_cuda_scatter_add(c->stream, out->data, st.ye.data, NULL,
                                         moe->shared_inp ? st.gate.data : NULL, 1, n, (int)dim),
                    "moe: shared expert");
}

/* Waits for the stream: only the n ids cross to the host. */
static int cuda_argmax(tsr_backend_t *b, tsr_buf_t *x, int n, int width, int32_t *out)
{
    struct cuda_ctx *c = ctx_of(b);
    int rc;
    CK(cudaSetDevice(c->device), "set device");
    void *ids;
    if ((rc = scratch(c, (size_t)n * sizeof(int32_t), &ids))) return rc;
    if ((rc = launched(tsr_cuda_argmax_rows(c->stream, x->data, n, width, (size_t)width, ids),
                       "argmax")))
        return rc;
    CK(cudaMemcpyAsync(out, ids, (size_t)n * sizeof(int32_t), cudaMemcpyDeviceToHost, c->stream),
       "argmax: copy the ids");
    CK(cudaStreamSynchronize(c->stream), "argmax: synchronize");
    return 0;
}

/* Only the ids and logprobs cross to the host; waits for the stream. */
static int cuda_sample(tsr_backend_t *b, tsr_buf_t *x, int n, int width,
                       const struct tsr_sample_params *p, int32_t *ids, float *logprobs)
{
    struct cuda_ctx *c = ctx_of(b);
    int rc;
    CK(cudaSetDevice(c->device), "set device");
    const void *src[1] = {p};
    size_t bytes[1] = {(size_t)n * sizeof *p};
    void *dev[1], *mem;
    if ((rc = stage_meta(c, META_SAMPLE, 1, src, bytes, dev))) return rc;
    size_t out_bytes = align_up((size_t)n * (sizeof(int32_t) + sizeof(float)));
    if ((rc = scratch(c, out_bytes + tsr_cuda_sample_scratch(n, width), &mem))) return rc;
    int32_t *d_ids = mem;
    float *d_lp = (float *)(d_ids + n);
    if ((rc = launched(tsr_cuda_sample(c->stream, x->data, n, width, (size_t)width, dev[0], d_ids,
                                       logprobs ? d_lp : NULL, (char *)mem + out_bytes),
                       "sample")))
        return rc;
    CK(cudaMemcpyAsync(ids, d_ids, (size_t)n * sizeof *ids, cudaMemcpyDeviceToHost, c->stream),
       "sample: copy the ids");
    if (logprobs)
        CK(cudaMemcpyAsync(logprobs, d_lp, (size_t)n * sizeof *logprobs, cudaMemcpyDeviceToHost,
                           c->stream),
           "sample: copy the logprobs");
    CK(cudaStreamSynchronize(c->stream), "sample: synchronize");
    return 0;
}

/* Only the n*k ids and logprobs cross to the host; waits for the stream. */
static int cuda_top_logprobs(tsr_backend_t *b, tsr_buf_t *x, int n, int width, int k, int32_t *ids,
                             float *logprobs)
{
    struct cuda_ctx *c = ctx_of(b);
    int rc;
    CK(cudaSetDevice(c->device), "set device");
    size_t count = (size_t)n * (size_t)k;
    void *mem;
    if ((rc = scratch(c, align_up(count * sizeof(int32_t)) + count * sizeof(float), &mem)))
        return rc;
    int32_t *d_ids = mem;
    float *d_lp = (float *)((char *)mem + align_up(count * sizeof(int32_t)));
    if ((rc = launched(
             tsr_cuda_top_logprobs(c->stream, x->data, n, width, (size_t)width, k, d_ids, d_lp),
             "top_logprobs")))
        return rc;
    CK(cudaMemcpyAsync(ids, d_ids, count * sizeof *ids, cudaMemcpyDeviceToHost, c->stream),
       "top_logprobs: copy the ids");
    CK(cudaMemcpyAsync(logprobs, d_lp, count * sizeof *logprobs, cudaMemcpyDeviceToHost, c->stream),
       "top_logprobs: copy the logprobs");
    CK(cudaStreamSynchronize(c->stream), "top_logprobs: synchronize");
    return 0;
}

/* ---- matmul ---- */

/* y = x · Wᵀ through cuBLAS with f32 accumulation and output. F32 weights stay f32 (no TF32).
 * BF16 weights are used in place against x rounded once to bf16: the usual bf16 prefill, whose
 * error (x to 8 bits) the GEMV path for decode does not have. Weights bf16 cannot hold (F16, the
 * quantized types) are decoded tile by tile into two bf16 terms, and x too, and three GEMMs sum
 * wh·xl + wl·xh + wh·xh: about 16 bits of each operand, close to the CPU's exact f32, for three
 * times the tensor-core work (such models are small; a rounded x and weight moved a trained
 * model's greedy argmax at 2% of prompt positions). Except Q8_0 and F8_E4M3 weights of the
 * shapes tsr_cuda_gemm_quant takes on this GPU (cols a multiple of 256: the large models these
 * types are for; elsewhere, as on GPUs with less shared memory, they stay on the split path),
 * at a bf16 model's precision (d * q and x rounded to bf16): below c->dequant_min_n rows
 * of x its own tensor-core GEMM reads them in their blocks and decodes them in registers (half
 * the bytes of bf16, where the weight stream bounds the time); from there on, where the
 * tensor-core rate does, each tile is decoded once to bf16 and multiplied by cuBLAS. */
static int gemm(struct cuda_ctx *c, float *y, const struct tsr_weight *w, size_t wrow,
                const float *x, int n)
{
    int rows = (int)w->rows, cols = (int)w->cols, rc;
    const float one = 1.0f, zero = 0.0f;
    if (w->type == TSR_F32) {
        CKB(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, n, cols, &one, w->buf->data,
                         CUDA_R_32F, cols, x, CUDA_R_32F, cols, &zero, y, CUDA_R_32F, rows,
                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "f32 GEMM");
        return 0;
    }
    void *mem;
    int quant = tsr_cuda_gemm_quant_fits(w->type, cols, wrow, w->buf->data);
    if (quant && n < c->dequant_min_n) {
        int S = tsr_cuda_gemm_quant_splits(rows, cols, n, c->n_sms);
        size_t xb_bytes = align_up((size_t)n * cols * 2);
        if ((rc = scratch(c, xb_bytes + (S > 1 ? (size_t)S * n * rows * sizeof(float) : 0), &mem)))
            return rc;
        uint16_t *xb = mem;
        if ((rc = launched(tsr_cuda_f32_to_bf16(c->stream, x, xb, (size_t)n * cols),
                           "matmul: round x")))
            return rc;
        return launched(tsr_cuda_gemm_quant(c->stream, w->type, w->buf->data, wrow, rows, cols, xb,
                                            n, y, S, (float *)((char *)mem + xb_bytes)),
                        "quantized GEMM");
    }
    int decode = w->type != TSR_BF16, split = decode && !quant, terms = split ? 2 : 1, tile = rows;
    if (decode) {
        size_t t = GEMM_TILE_BYTES / ((size_t)cols * 2 * terms);
        if (t >= 128) t &= ~(size_t)127;
        if (t < 1) t = 1;
        if (t < (size_t)rows) tile = (int)t;
    }
    size_t xb_bytes = align_up((size_t)n * cols * 2);
    size_t tile_bytes = decode ? align_up((size_t)tile * cols * 2) : 0;
    if ((rc = scratch(c, terms * (xb_bytes + tile_bytes), &mem))) return rc;
    uint16_t *xh = mem, *xl = (uint16_t *)((char *)mem + xb_bytes);
    uint16_t *wh = (uint16_t *)((char *)mem + terms * xb_bytes), *wl = wh + tile_bytes / 2;
    cudaError_t e = split ? tsr_cuda_f32_to_bf16_split(c->stream, x, xh, xl, (size_t)n * cols)
                          : tsr_cuda_f32_to_bf16(c->stream, x, xh, (size_t)n * cols);
    if ((rc = launched(e, "matmul: round x"))) return rc;
    for (int r0 = 0; r0 < rows; r0 += tile) {
        int nr = rows - r0 < tile ? rows - r0 : tile;
        float *yt = y + r0;
        if (!split) {
            const void *a = (const uint8_t *)w->buf->data + (size_t)r0 * wrow;
            if (decode) {
                if ((rc = launched(tsr_cuda_weight_to_bf16(c->stream, w->type, w->buf->data, wrow,
                                                           r0, nr, cols, wh),
                                   "matmul: decode weights")))
                    return rc;
                a = wh;
            }
            CKB(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, nr, n, cols, &one, a, CUDA_R_16BF,
                             cols, xh, CUDA_R_16BF, cols, &zero, yt, CUDA_R_32F, rows,
                             CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                "bf16 GEMM");
            continue;
        }
        if ((rc = launched(tsr_cuda_weight_to_bf16_split(c->stream, w->type, w->buf->data, wrow, r0,
                                                         nr, cols, wh, wl),
                           "matmul: decode weights")))
            return rc;
        const void *pa[3] = {wh, wl, wh}, *pb[3] = {xl, xh, xh};
        for (int k = 0; k < 3; k++)
            CKB(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, nr, n, cols, &one, pa[k],
                             CUDA_R_16BF, cols, pb[k], CUDA_R_16BF, cols, k ? &one : &zero, yt,
                             CUDA_R_32F, rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                "split bf16 GEMM");
    }
    return 0;
}

/* A GEMV launch over `count` weights of w (one type and width: the caller checked). */
static int gemv(struct cuda_ctx *c, int count, tsr_buf_t *const *y,
                const struct tsr_weight *const *w, int swiglu, tsr_buf_t *x, int n)
{
    struct tsr_cuda_gemv g = {.type = w[0]->type,
                              .row_bytes = tsr_dtype_row_bytes(w[0]->type, w[0]->cols),
                              .cols = (int)w[0]->cols,
                              .n_w = count,
                              .swiglu = swiglu,
                              .n = n,
                              .x = x->data};
    for (int i = 0; i < count; i++) {
        g.w[i] = w[i]->buf->data;
        g.y[i] = y[i]->data;
        g.rows[i] = (int)w[i]->rows;
    }
    return launched(tsr_cuda_gemv(c->stream, &g), "matmul (GEMV)");
}

static int add_bias(struct cuda_ctx *c, tsr_buf_t *y, const struct tsr_weight *w,
                    const struct tsr_weight *bias, int n)
{
    if (!bias) return 0;
    return launched(
        tsr_cuda_add_bias(c->stream, y->data, bias->buf->data, bias->type, (int)w->rows, n),
        "matmul bias");
}

static int cuda_matmul(tsr_backend_t *b, tsr_buf_t *y, const struct tsr_weight *w, tsr_buf_t *x,
                       const struct tsr_weight *bias, int n)
{
    /* Arguments checked by tsr_op_matmul. */
    struct cuda_ctx *c = ctx_of(b);
    int rc;
    if (n == 0) return 0;
    CK(cudaSetDevice(c->device), "set device");
    if (n <= TSR_CUDA_GEMV_MAX_N)
        rc = gemv(c, 1, &y, &w, 0, x, n);
    else
        rc = gemm(c, y->data, w, tsr_dtype_row_bytes(w->type, w->cols), x->data, n);
    return rc ? rc : add_bias(c, y, w, bias, n);
}

/* Weights one GEMV launch can stream together: one type and width. */
static int same_kind(int count, const struct tsr_weight *const *w)
{
    for (int i = 1; i < count; i++)
        if (w[i]->type != w[0]->type || w[i]->cols != w[0]->cols) return 0;
    return 1;
}

static int cuda_matmul_many(tsr_backend_t *b, int count, tsr_buf_t *const *y,
                            const struct tsr_weight *const *w, const struct tsr_weight *const *bias,
                            tsr_buf_t *x, int n)
{
    struct cuda_ctx *c = ctx_of(b);
    int rc = 0;
    if (n == 0) return 0;
    if (n > TSR_CUDA_GEMV_MAX_N || !same_kind(count, w)) {
        for (int i = 0; i < count && !rc; i++)
            rc = cuda_matmul(b, y[i], w[i], x, bias ? bias[i] : NULL, n);
        return rc;
    }
    CK(cudaSetDevice(c->device), "set device");
    rc = gemv(c, count, y, w, 0, x, n);
    for (int i = 0; i < count && !rc && bias; i++) rc = add_bias(c, y[i], w[i], bias[i], n);
    return rc;
}

static int cuda_matmul_swiglu(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *tmp,
                              const struct tsr_weight *wg, const struct tsr_weight *wu,
                              tsr_buf_t *x, int n)
{
    struct cuda_ctx *c = ctx_of(b);
    const struct tsr_weight *w[2] = {wg, wu};
    tsr_buf_t *y[2] = {out, tmp};
    int rc;
    if (n == 0) return 0;
    if (n <= TSR_CUDA_GEMV_MAX_N && same_kind(2, w)) {
        CK(cudaSetDevice(c->device), "set device");
        return gemv(c, 2, y, w, 1, x, n);
    }
    if ((rc = cuda_matmul(b, out, wg, x, NULL, n)) || (rc = cuda_matmul(b, tmp, wu, x, NULL, n)))
        return rc;
    return cuda_swiglu(b, out, out, tmp, n, (int)wg->rows);
}

/* ---- RoPE, attention ---- */

static int check_shape(const struct tsr_attn_shape *s, const struct tsr_batch_meta *m,
                       const char *op)
{
    if (!tsr_kv_row_bytes(s->kv_type, 1, 2))
        return tsr_errorf(TSR_EINVAL, "%s: KV cache type %s (F32, BF16 or F8_E4M3 only)", op,
                          tsr_dtype_name(s->kv_type));
    if (s->n_head <= 0 || s->n_kv_head <= 0 || s->n_head % s->n_kv_head || s->head_dim <= 0 ||
        s->head_dim % 2 || s->head_dim > TSR_CUDA_ATTN_MAX_HEAD_DIM || s->block_size <= 0 ||
        m->n_tokens < 0)
        return tsr_errorf(TSR_EINVAL,
                          "%s: unsupported shape (heads %d, kv heads %d, head dim %d (at most %d), "
                          "block %d, %d tokens)",
                          op, s->n_head, s->n_kv_head, s->head_dim, TSR_CUDA_ATTN_MAX_HEAD_DIM,
                          s->block_size, m->n_tokens);
    if (s->kv_type == TSR_F8_E4M3 && s->head_dim % 4)
        return tsr_errorf(TSR_EINVAL,
                          "%s: an FP8 KV cache needs head dim %% 4 == 0 (%d): its "
                          "scales are read as aligned f32",
                          op, s->head_dim);
    return 0;
}

/* Cache slots in kc and vc (the smaller, if they differ). */
static int64_t cache_slots(const tsr_buf_t *kc, const tsr_buf_t *vc, const struct tsr_attn_shape *s)
{
    size_t row = tsr_kv_row_bytes(s->kv_type, s->n_kv_head, s->head_dim);
    size_t n = kc->size < vc->size ? kc->size : vc->size;
    return (int64_t)(n / row);
}

/* The step's arrays in meta->dev (backend.h's layout): pos, seq, slot and block tables. */
struct dev_meta {
    const int32_t *pos, *seq, *slot, *bt;
};

static int dev_meta(const struct tsr_batch_meta *m, struct dev_meta *d)
{
    size_t nt = (size_t)m->n_tokens, n = 3 * nt + (size_t)m->n_seqs * m->max_blocks;
    int rc = tsr_buf_check_size(m->dev, n * sizeof(int32_t), "step metadata on the device");
    if (rc) return rc;
    const int32_t *p = m->dev->data;
    *d = (struct dev_meta){p, p + nt, p + 2 * nt, p + 3 * nt};
    return 0;
}

static int cuda_rope_kv_write(tsr_backend_t *b, tsr_buf_t *q, tsr_buf_t *k, tsr_buf_t *v,
                              tsr_buf_t *kc, tsr_buf_t *vc, const struct tsr_attn_shape *s,
                              const struct tsr_batch_meta *m)
{
    struct cuda_ctx *c = ctx_of(b);
    int rc = check_shape(s, m, "rope_kv_write");
    if (rc) return rc;
    int nt = m->n_tokens, hd = s->head_dim;
    size_t qw = (size_t)s->n_head * hd, kw = (size_t)s->n_kv_head * hd;
    rc = tsr_buf_check_size(q, nt * qw * sizeof(float), "rope q");
    if (!rc) rc = tsr_buf_check_size(k, nt * kw * sizeof(float), "rope k");
    if (!rc) rc = tsr_buf_check_size(v, nt * kw * sizeof(float), "rope v");
    if (!rc)
        rc = tsr_buf_check_size(s->inv_freq, (size_t)(hd / 2) * sizeof(float), "rope inv_freq");
    if (rc) return rc;
    int64_t n_slots = cache_slots(kc, vc, s);
    for (int t = 0; t < nt; t++) {
        if (m->slot[t] < 0 || m->slot[t] >= n_slots)
            return tsr_errorf(TSR_ERANGE, "rope_kv_write: slot %d outside the %lld-slot cache",
                              m->slot[t], (long long)n_slots);
        if (m->pos[t] < 0) return tsr_errorf(TSR_ERANGE, "rope_kv_write: position %d", m->pos[t]);
    }
    if (nt == 0) return 0;
    CK(cudaSetDevice(c->device), "set device");
    void *dev[2];
    struct dev_meta dm;
    if (m->dev) {
        if ((rc = dev_meta(m, &dm))) return rc;
        dev[0] = (void *)dm.pos;
        dev[1] = (void *)dm.slot;
    } else {
        const void *src[2] = {m->pos, m->slot};
        size_t bytes[2] = {(size_t)nt * sizeof(int32_t), (size_t)nt * sizeof(int32_t)};
        if ((rc = stage_meta(c, META_ROPE, 2, src, bytes, dev))) return rc;
    }
    struct tsr_cuda_rope_args a = {.q = q->data,
                                   .k = k->data,
                                   .v = v->data,
                                   .kc = kc->data,
                                   .vc = vc->data,
                                   .kv_type = s->kv_type,
                                   .inv_freq = s->inv_freq->data,
                                   .pos = dev[0],
                                   .slot = dev[1],
                                   .n_tokens = nt,
                                   .n_head = s->n_head,
                                   .n_kv_head = s->n_kv_head,
                                   .head_dim = hd,
                                   .neox = s->neox};
    return launched(tsr_cuda_rope_kv_write(c->stream, &a), "rope_kv_write");
}

/* Splits the step's tokens into runs of consecutive positions of one sequence, at most
 * TSR_CUDA_PREFILL_TILE long: the prefill kernel's tiles. Returns their number, or 0 when no run
 * is longer than one token (a decode step: the decode kernel's splits fill the GPU better). */
static int prefill_tiles(const struct tsr_batch_meta *m, struct tsr_cuda_attn_tile *tiles)
{
    int n = 0, longest = 0;
    for (int t = 0; t < m->n_tokens; t++) {
        struct tsr_cuda_attn_tile *last = n ? &tiles[n - 1] : NULL;
        if (last && last->seq == m->seq[t] && last->pos0 + last->len == m->pos[t] &&
            last->len < TSR_CUDA_PREFILL_TILE) {
            last->len++;
            if (last->len > longest) longest = last->len;
            continue;
        }
        tiles[n++] = (struct tsr_cuda_attn_tile){t, 1, m->pos[t], m->seq[t]};
    }
    return longest > 1 ? n : 0;
}

static int cuda_attention(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *q, tsr_buf_t *kc,
                          tsr_buf_t *vc, const struct tsr_attn_shape *s,
                          const struct tsr_batch_meta *m)
{
    struct cuda_ctx *c = ctx_of(b);
    int rc = check_shape(s, m, "attention");
    if (rc) return rc;
    int nt = m->n_tokens;
    size_t qw = (size_t)s->n_head * s->head_dim;
    rc = tsr_buf_check_size(q, nt * qw * sizeof(float), "attention q");
    if (!rc) rc = tsr_buf_check_size(out, nt * qw * sizeof(float), "attention output");
    if (rc || nt == 0) return rc;
    int max_pos = 0, max_seq = 0;
    for (int t = 0; t < nt; t++) {
        if (m->pos[t] > max_pos) max_pos = m->pos[t];
        if (m->seq[t] > max_seq) max_seq = m->seq[t];
    }
    CK(cudaSetDevice(c->device), "set device");
    int mb = m->max_blocks, n_tiles = 0;
    struct tsr_cuda_attn_tile *tiles = NULL;
    void *dev[4];
    if (m->dev) { /* a graph's step: plan for the bound, read the arrays where they are */
        struct dev_meta dm;
        if (m->pos_bound <= max_pos)
            return tsr_errorf(TSR_EINVAL, "attention: position %d beyond the bound %d", max_pos,
                              m->pos_bound);
        if ((rc = dev_meta(m, &dm))) return rc;
        max_pos = m->pos_bound - 1;
        dev[0] = (void *)dm.pos;
        dev[1] = (void *)dm.seq;
        dev[2] = (void *)dm.bt;
    } else {
        /* Upload only the block-table columns and rows this step reads, and the prefill tiles
         * when the step has prompt chunks. */
        int ns = max_seq + 1;
        mb = max_pos / s->block_size + 1;
        int32_t *bt = NULL;
        size_t bt_bytes = (size_t)ns * mb * sizeof(int32_t);
        const void *bt_src = m->block_tables;
        if (tsr_cuda_attention_prefill_ok(s->head_dim)) {
            if ((rc = grow_host(&c->tiles, &c->tiles_size, (size_t)nt * sizeof *tiles))) return rc;
            tiles = c->tiles;
            n_tiles = prefill_tiles(m, tiles);
        }
        if (mb != m->max_blocks) {
            if (!(bt = malloc(bt_bytes)))
                return tsr_errorf(TSR_ENOMEM, "attention: out of memory for block tables");
            for (int i = 0; i < ns; i++)
                memcpy(bt + (size_t)i * mb, m->block_tables + (size_t)i * m->max_blocks,
                       (size_t)mb * sizeof(int32_t));
            bt_src = bt;
        }
        const void *src[4] = {m->pos, m->seq, bt_src, tiles};
        size_t bytes[4] = {(size_t)nt * sizeof(int32_t), (size_t)nt * sizeof(int32_t), bt_bytes,
                           (size_t)n_tiles * sizeof *tiles};
        rc = stage_meta(c, META_ATTN, n_tiles ? 4 : 3, src, bytes, dev);
        free(bt);
        if (rc) return rc;
    }
    struct tsr_cuda_attn_args a = {.out = out->data,
                                   .q = q->data,
                                   .kc = kc->data,
                                   .vc = vc->data,
                                   .kv_type = s->kv_type,
                                   .pos = dev[0],
                                   .seq = dev[1],
                                   .block_tables = dev[2],
                                   .n_tokens = nt,
                                   .n_head = s->n_head,
                                   .n_kv_head = s->n_kv_head,
                                   .head_dim = s->head_dim,
                                   .block_size = s->block_size,
                                   .max_blocks = mb,
                                   .scale = s->scale,
                                   .max_pos = max_pos,
                                   .walk = c->attn_walk};
    if (n_tiles)
        return launched(tsr_cuda_attention_prefill(c->stream, &a, dev[3], n_tiles),
                        "attention (prefill)");
    int splits;
    size_t floats = tsr_cuda_attention_scratch(&a, c->n_sms, &splits);
    void *part = NULL;
    if (floats && (rc = scratch(c, floats * sizeof(float), &part))) return rc;
    return launched(tsr_cuda_attention(c->stream, &a, splits, part), "attention");
}

/* ---- ceilings for benchmarks ---- */

enum { MEASURE_WARM = 3, MEASURE_RUNS = 10 };

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* What one measured operation needs: its buffers, and what to run. */
struct measure {
    struct cuda_ctx *c;
    void *a, *b, *d;
    size_t bytes;
    int m, n, k;
};

static int measure_run(struct measure *ms, int gemm)
{
    struct cuda_ctx *c = ms->c;
    if (!gemm) {
        CK(cudaMemcpyAsync(ms->d, ms->a, ms->bytes, cudaMemcpyDeviceToDevice, c->stream),
           "measure: copy");
        return 0;
    }
    const float one = 1.0f, zero = 0.0f;
    CKB(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, ms->m, ms->n, ms->k, &one, ms->a,
                     CUDA_R_16BF, ms->k, ms->b, CUDA_R_16BF, ms->k, &zero, ms->d, CUDA_R_16BF,
                     ms->m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "measure: bf16 GEMM");
    return 0;
}

/* Median milliseconds of one run. */
static int measure_time(struct measure *ms, int gemm, float *ms_out)
{
    struct cuda_ctx *c = ms->c;
    cudaEvent_t ev[2 * MEASURE_RUNS];
    float t[MEASURE_RUNS];
    int rc = 0, made = 0;
    for (; made < 2 * MEASURE_RUNS; made++)
        if (cudaEventCreate(&ev[made]) != cudaSuccess) {
            rc = tsr_errorf(TSR_EIO, "cuda: measure: create events");
            goto out;
        }
    for (int i = 0; i < MEASURE_WARM && !rc; i++) rc = measure_run(ms, gemm);
    for (int i = 0; i < MEASURE_RUNS && !rc; i++) {
        cudaEventRecord(ev[2 * i], c->stream);
        rc = measure_run(ms, gemm);
        cudaEventRecord(ev[2 * i + 1], c->stream);
    }
    if (!rc && cudaStreamSynchronize(c->stream) != cudaSuccess)
        rc = tsr_errorf(TSR_EIO, "cuda: measure: synchronize");
    for (int i = 0; i < MEASURE_RUNS && !rc; i++)
        if (cudaEventElapsedTime(&t[i], ev[2 * i], ev[2 * i + 1]) != cudaSuccess)
            rc = tsr_errorf(TSR_EIO, "cuda: measure: read events");
    if (!rc) {
        qsort(t, MEASURE_RUNS, sizeof *t, cmp_float);
        *ms_out = 0.5f * (t[MEASURE_RUNS / 2 - 1] + t[MEASURE_RUNS / 2]);
    }
out:
    while (made > 0) cudaEventDestroy(ev[--made]);
    return rc;
}

static int measure_alloc(struct cuda_ctx *c, void **p, size_t n_bf16, uint64_t seed)
{
    CK(cudaMalloc(p, n_bf16 * 2), "measure: allocate");
    return launched(tsr_cuda_fill_random_bf16(c->stream, *p, n_bf16, seed), "measure: fill");
}

int tsr_cuda_measure_copy(tsr_backend_t *b, size_t bytes, double *bytes_per_s)
{
    struct cuda_ctx *c = ctx_of(b);
    struct measure ms = {.c = c, .bytes = bytes & ~(size_t)1};
    CK(cudaSetDevice(c->device), "set device");
    int rc = measure_alloc(c, &ms.a, ms.bytes / 2, 1);
    if (!rc) rc = measure_alloc(c, &ms.d, ms.bytes / 2, 2);
    float t = 0;
    if (!rc) rc = measure_time(&ms, 0, &t);
    if (!rc) *bytes_per_s = 2.0 * (double)ms.bytes / (t * 1e-3);
    cudaFree(ms.a);
    cudaFree(ms.d);
    return rc;
}

int tsr_cuda_measure_gemm(tsr_backend_t *b, int m, int n, int k, double *flops_per_s)
{
    struct cuda_ctx *c = ctx_of(b);
    struct measure ms = {.c = c, .m = m, .n = n, .k = k};
    CK(cudaSetDevice(c->device), "set device");
    int rc = measure_alloc(c, &ms.a, (size_t)m * k, 3);
    if (!rc) rc = measure_alloc(c, &ms.b, (size_t)k * n, 4);
    if (!rc) rc = measure_alloc(c, &ms.d, (size_t)m * n, 5);
    float t = 0;
    if (!rc) rc = measure_time(&ms, 1, &t);
    if (!rc) *flops_per_s = 2.0 * m * n * (double)k / (t * 1e-3);
    cudaFree(ms.a);
    cudaFree(ms.b);
    cudaFree(ms.d);
    return rc;
}

/* ---- graphs ---- */

static int cuda_graph_begin(tsr_backend_t *b)
{
    struct cuda_ctx *c = ctx_of(b);
    CK(cudaSetDevice(c->device), "set device");
    /* Thread-local: this thread may not call what a capture forbids (allocations, waits);
     * other threads (the gRPC layer's) are not affected. */
    CK(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal),
       "graph: begin recording");
    c->recording = 1;
    return 0;
}

static int cuda_graph_end(tsr_backend_t *b, void **handle)
{
    struct cuda_ctx *c = ctx_of(b);
    cudaGraph_t g = NULL;
    cudaGraphExec_t x = NULL;
    c->recording = 0;
    cudaError_t e = cudaStreamEndCapture(c->stream, &g);
    if (e == cudaSuccess) e = cudaGraphInstantiate(&x, g, 0);
    if (g) cudaGraphDestroy(g);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* a broken capture leaves a sticky-looking error: clear it */
        return cuda_fail(e, "graph: end recording");
    }
    c->n_graphs++;
    *handle = x;
    return 0;
}

static int cuda_graph_launch(tsr_backend_t *b, void *handle)
{
    struct cuda_ctx *c = ctx_of(b);
    CK(cudaSetDevice(c->device), "set device");
    CK(cudaGraphLaunch((cudaGraphExec_t)handle, c->stream), "graph: launch");
    return 0;
}

static void cuda_graph_free(tsr_backend_t *b, void *handle)
{
    struct cuda_ctx *c = ctx_of(b);
    cudaSetDevice(c->device);
    cudaStreamSynchronize(c->stream); /* a replay may still be running */
    cudaGraphExecDestroy((cudaGraphExec_t)handle);
    c->n_graphs--;
}

static const struct tsr_backend_iface cuda_iface = {
    .name = "cuda",
    .free = cuda_free,
    .sync = cuda_sync,
    .memory = cuda_memory,
    .buf_alloc = cuda_buf_alloc,
    .buf_weights = cuda_buf_weights,
    .buf_free = cuda_buf_free,
    .buf_set = cuda_buf_set,
    .buf_get = cuda_buf_get,
    .embed = cuda_embed,
    .rmsnorm = cuda_rmsnorm,
    .add_rmsnorm = cuda_add_rmsnorm,
    .matmul = cuda_matmul,
    .rope_kv_write = cuda_rope_kv_write,
    .attention = cuda_attention,
    .swiglu = cuda_swiglu,
    .gather_rows = cuda_gather_rows,
    .moe = cuda_moe,
    .argmax = cuda_argmax,
    .sample = cuda_sample,
    .top_logprobs = cuda_top_logprobs,
    .matmul_many = cuda_matmul_many,
    .matmul_swiglu = cuda_matmul_swiglu,
    .graph_begin = cuda_graph_begin,
    .graph_end = cuda_graph_end,
    .graph_launch = cuda_graph_launch,
    .graph_free = cuda_graph_free,
};

int tsr_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

static int init_ctx(struct cuda_ctx *c, int device)
{
    int count = 0;
    CK(cudaGetDeviceCount(&count), "count devices");
    if (device < 0 || device >= count)
        return tsr_errorf(TSR_EINVAL, "cuda: device %d of %d", device, count);
    c->device = device;
    CK(cudaSetDevice(device), "set device");
    struct cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, device), "device properties");
    c->n_sms = p.multiProcessorCount;
    /* Measured on an H100 (docs/benchmarks.md); TSR_CUDA_DEQUANT_MIN_N moves it, for benchmarks
     * that time both paths. */
    const char *dq = getenv("TSR_CUDA_DEQUANT_MIN_N");
    c->dequant_min_n = dq && *dq ? atoi(dq) : DEQUANT_MIN_N;
    const char *aw = getenv("TSR_CUDA_ATTN_WALK"); /* the same, for the two attention kernels */
    c->attn_walk = aw && *aw == '1';
    snprintf(c->device_name, sizeof c->device_name, "%s", p.name);
    CK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), "create a stream");
    for (int i = 0; i < META_SLOTS; i++)
        CK(cudaEventCreateWithFlags(&c->slots[i].done, cudaEventDisableTiming), "create an event");
    CK(tsr_cuda_gemm_quant_init(device), "quantized GEMM: shared memory");
    CKB(cublasCreate(&c->blas), "create a handle");
    CKB(cublasSetStream(c->blas, c->stream), "set the stream");
    CK(cudaMalloc(&c->blas_ws, BLAS_WORKSPACE), "allocate the cuBLAS workspace");
    CKB(cublasSetWorkspace(c->blas, c->blas_ws, BLAS_WORKSPACE), "set the workspace");
    tsr_log_info("cuda backend: device %d, %s, %d SMs, compute %d.%d, %.1f GiB", device, p.name,
                 p.multiProcessorCount, p.major, p.minor,
                 (double)p.totalGlobalMem / (1024.0 * 1024 * 1024));
    return 0;
}

tsr_backend_t *tsr_backend_cuda_new(int device)
{
    tsr_backend_t *b = calloc(1, sizeof *b);
    struct cuda_ctx *c = calloc(1, sizeof *c);
    if (!b || !c) {
        free(b);
        free(c);
        tsr_errorf(TSR_ENOMEM, "out of memory creating the CUDA backend");
        return NULL;
    }
    b->i = &cuda_iface;
    b->ctx = c;
    c->device = device;
    if (init_ctx(c, device)) { /* the message is recorded; cuda_free takes what init made */
        cuda_free(b);
        return NULL;
    }
    return b;
}

void *tsr_cuda_backend_stream(tsr_backend_t *b)
{
    return ctx_of(b)->stream;
}

int tsr_cuda_backend_device(const tsr_backend_t *b)
{
    return ((const struct cuda_ctx *)b->ctx)->device;
}
