#include "worker/forward.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/log.h"
#include "common/status.h"
#include "kernels/moe_ep.h"
#include "worker/sampling.h"
#include "worker/step.h"

#define TRY(call)                                                                                  \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_) return rc_;                                                                       \
    } while (0)

struct layer {
    struct tsr_weight attn_norm;      /* (dim) */
    struct tsr_weight wq;             /* (n_head*head_dim, dim), this rank's heads */
    struct tsr_weight wk, wv;         /* (n_kv_head*head_dim, dim) */
    struct tsr_weight bq, bk, bv;     /* biases (Qwen2); buf NULL when absent */
    struct tsr_weight q_norm, k_norm; /* (head_dim) per-head norms (Qwen3); buf NULL when absent */
    struct tsr_weight wo;             /* (dim, n_head*head_dim); MLA: (dim, n_head*v_head_dim) */
    /* Multi-head latent attention (kv_lora_rank > 0) instead of wk, wv and their biases; wq
     * (n_head*head_dim, dim) only without q_lora_rank */
    struct tsr_weight wq_a, q_a_norm; /* (q_lora_rank, dim), (q_lora_rank) */
    struct tsr_weight wq_b;           /* (n_head*head_dim, q_lora_rank) */
    struct tsr_weight wkv_a;          /* (kv_lora_rank + qk_rope_head_dim, dim) */
    struct tsr_weight kv_a_norm;      /* (kv_lora_rank) */
    struct tsr_weight wkv_b;          /* (n_head*(qk_nope + v_head_dim), kv_lora_rank) f32 */
    struct tsr_mla mla;               /* the op's view of the above */
    struct tsr_weight ffn_norm;       /* (dim) */
    struct tsr_weight w_gate, w_up;   /* (ffn_dim, dim) */
    struct tsr_weight w_down;         /* (dim, ffn_dim) */
    /* An expert layer (n_dense_layer and on) has these instead of w_gate, w_up, w_down. */
    struct tsr_weight router;                  /* (n_expert, dim) */
    struct tsr_weight *experts;                /* 3 n_expert: gates (moe_ffn, dim), ups, downs (dim,
                                                  moe_ffn); NULL in a dense layer */
    struct tsr_weight sh_gate, sh_up, sh_down; /* shared expert; buf NULL when none */
    struct tsr_weight sh_inp;                  /* (1, dim) its sigmoid gate (qwen2_moe) */
    struct tsr_moe moe;                        /* the op's view of the above */
    tsr_buf_t *k_cache, *v_cache;              /* ((n_blocks+1)*block_size) rows of
                                                  opts.kv_type (tsr_kv_row_bytes): block
                                                  n_blocks is where a graph's padding rows
                                                  write; MLA: k_cache holds the latent rows,
                                                  v_cache is NULL */
};

enum { MAX_GRAPHS = 24 };

/* A recorded decode step: `rows` token rows (the step's tokens padded up to a bucket) against
 * block-table rows `width` blocks wide. runs counts the steps seen; the first runs directly, to
 * size the backend's scratch before anything is recorded. */
struct graph_slot {
    int rows, width, runs;
    uint64_t used; /* the step clock when last used: the least recent is evicted */
    tsr_graph_t *g;
};

/* Memory a column slice was packed into or a synthetic slice generated into; the CPU backend's
 * weight buffers alias it. */
struct packed {
    void *data;
    struct packed *next;
};

/* A step the leader launched and has not collected. */
struct flight {
    int n_tokens, n_out, sample, top;
    int handed; /* sent down to the next stage (or run whole here: no next stage) */
};

struct tsr_runner {
    tsr_backend_t *b;
    struct tsr_model_config cfg; /* the whole model's */
    struct tsr_runner_opts opts;
    struct tsr_attn_shape shape; /* this rank's heads */
    /* this rank's part: every number below is local */
    int layer_begin, layer_end;
    int n_head, n_kv_head, ffn_dim;
    int64_t vocab_begin, vocab_end, vocab_stride;
    int has_embedding, has_head;
    struct tsr_weight tok_embd;    /* (vocab rows of this rank, dim) */
    struct tsr_weight output_norm; /* (dim): the last stage's */
    struct tsr_weight next_norm;   /* (dim): a middle stage's hand-off norm (the next stage's
                                      first attn_norm); the result is unused but keeps the
                                      fused add+norm op */
    struct tsr_weight output;      /* (vocab rows, dim): tok_embd when tied and held */
    struct layer *layers;          /* layer_end - layer_begin of them */
    struct packed *packed;
    size_t weight_bytes, kv_bytes, scratch_bytes;
    size_t embd_bytes;   /* of weight_bytes, the embedding table when it is not the LM head */
    size_t expert_bytes; /* of weight_bytes, the routed experts' */
    /* sharding: NULL comms when the runner holds the whole model */
    const struct tsr_rank_plan *rp;
    tsr_comm_t *world, *tp;
    int world_rank, world_size, tp_size, pp_size;
    int ep_size;              /* ranks a stage: tp_size, or more with expert parallelism */
    struct tsr_moe_ep moe_ep; /* the stage's ranks (experts) and attention group (shared) */
    /* step scratch, sized for opts.max_tokens rows */
    tsr_buf_t *x;            /* (T, dim) residual stream */
    tsr_buf_t *xn;           /* (T, dim) normed input of the next block */
    tsr_buf_t *q, *att;      /* (T, n_head*head_dim); MLA: att (T, n_head*v_head_dim) */
    tsr_buf_t *k, *v;        /* (T, n_kv_head*head_dim); MLA: k kv_a's rows, v q_a's */
    tsr_buf_t *o;            /* (T, dim) block output before the residual add */
    tsr_buf_t *gate, *up;    /* (T, ffn_dim) */
    tsr_buf_t *h_out;        /* (T, dim) rows whose logits are wanted */
    tsr_buf_t *logits;       /* (T, vocab_stride) this rank's logits */
    tsr_buf_t *gathered;     /* (tp, T, vocab_stride) every TP rank's logits; NULL when tp = 1 */
    int32_t *slot;           /* (T) host */
    int32_t *local_ids;      /* (T) host: ids relative to this rank's vocabulary rows, or -1 */
    struct tsr_step_msg msg; /* the step as sent to or received from the group */
    float *host_logits;      /* (n_out, n_vocab) host: tsr_runner_forward_argmax's when not on the
                                device, and a sampled step's on the rank that samples it */
    size_t host_logits_cap;
    /* a group's sampled steps (tsr_step.sample) */
    struct tsr_step_msg params; /* a follower's copy of the step's parameters */
    struct tsr_step_msg picks;  /* what the last stage sends back (picks_bytes) */
    int32_t *idx;               /* (n_vocab) host sampling scratch */
    float *prob;                /* (n_vocab) */
    uint64_t bytes_back;        /* leader: received from the last stage */
    /* the leader's steps in flight, oldest first (at most pp); only the newest may be not yet
     * handed to the next stage */
    struct flight *fl;
    int n_fl;
    int failed; /* a launch or collect failed: the chain is out of step, nothing is drained */
    /* Decode graphs: one rank on a backend with graphs, unless TESSERA_GRAPHS=0. */
    int graphs;
    struct graph_slot gslots[MAX_GRAPHS];
    uint64_t gclock;
    tsr_buf_t *gmeta; /* the graphed step's pos, seq, slot, block tables (tsr_batch_meta.dev) */
    int32_t *gpack;   /* host: ids, then what gmeta receives */
    size_t gpack_cap; /* int32s */
};

/* Drops the resident pages wholly inside [p, p+n) of a read-only file mapping: a column slice
 * read every row of its tensor, but the rank keeps only its packed copy. Unmodified private
 * file pages are simply re-read if touched again, so this is safe. */
static void drop_pages(const void *p, size_t n)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), a = (uintptr_t)p, e = a + n;
    a = (a + page - 1) & ~(page - 1);
    e &= ~(page - 1);
    if (e > a) madvise((void *)a, e - a, MADV_DONTNEED);
}

/* Keeps p on the runner's list of host memory it owns; returns p's data, or NULL when out of
 * memory (data is then freed). */
static void *keep(tsr_runner_t *r, void *data)
{
    struct packed *p = data ? malloc(sizeof *p) : NULL;
    if (!p) {
        free(data);
        return NULL;
    }
    p->data = data;
    p->next = r->packed;
    r->packed = p;
    return data;
}

/* This rank's slice of a synthetic tensor, generated into memory of its own: a rank makes only
 * its share, one tensor at a time, and a device backend's copy lets it go (load). */
static int generate_slice(tsr_runner_t *r, tsr_model_t *m, const char *name,
                          const struct tsr_tensor_view *v, const struct tsr_slice *sl,
                          const void **data, size_t *nbytes)
{
    int64_t r0 = 0, nr = v->rows, c0 = 0, nc = v->cols;
    if (sl && sl->split == TSR_SPLIT_ROWS) r0 = sl->offset, nr = sl->length;
    if (sl && sl->split == TSR_SPLIT_COLS) c0 = sl->offset, nc = sl->length;
    size_t n = tsr_dtype_row_bytes(v->type, nc) * (size_t)nr;
    char *dst = keep(r, malloc(n ? n : 1));
    if (!dst) return tsr_errorf(TSR_ENOMEM, "out of memory generating '%s' (%zu bytes)", name, n);
    int rc = tsr_model_read(m, name, r0, nr, c0, nc, dst);
    if (rc) return rc;
    *data = dst;
    *nbytes = n;
    return 0;
}

/* This rank's slice of a tensor in a file mapping: a row range is used in place, a column range
 * is packed into memory of its own, reading only its bytes. */
static int map_slice(tsr_runner_t *r, tsr_model_t *m, const char *name,
                     const struct tsr_tensor_view *v, const struct tsr_slice *sl, const void **data,
                     size_t *nbytes)
{
    struct tsr_slice_bytes sb;
    int rc = tsr_slice_bytes(sl, v->type, &sb);
    if (rc) return tsr_error_prefix(rc, "%s", tsr_model_name(m));
    *nbytes = sb.row_bytes * (size_t)sb.n_rows;
    if (sl->split == TSR_SPLIT_ROWS || v->rows == 1) {
        *data = (const char *)v->data + sb.offset; /* contiguous: used in place */
        return 0;
    }
    char *dst = keep(r, malloc(*nbytes));
    if (!dst) return tsr_errorf(TSR_ENOMEM, "out of memory packing '%s'", name);
    for (int64_t i = 0; i < sb.n_rows; i++)
        memcpy(dst + (size_t)i * sb.row_bytes,
               (const char *)v->data + sb.offset + (size_t)i * sb.stride, sb.row_bytes);
    if (v->mapped) drop_pages(v->data, v->nbytes);
    *data = dst;
    return 0;
}

/* Loads this rank's part of a tensor of full shape (rows, cols) as a backend weight, checking
 * the file's shape. optional: absent is not an error (w->buf stays NULL). */
static int load(tsr_runner_t *r, tsr_model_t *m, const char *name, int64_t rows, int64_t cols,
                int optional, struct tsr_weight *w)
{
    struct tsr_tensor_view v;
    memset(w, 0, sizeof *w);
    int rc = tsr_model_tensor(m, name, &v);
    if (rc == TSR_ENOTFOUND && optional) return 0;
    if (rc) return rc;
    if (v.rows != rows || v.cols != cols)
        return tsr_errorf(TSR_EFORMAT, "%s: tensor '%s' is %lldx%lld, the config says %lldx%lld",
                          tsr_model_name(m), name, (long long)v.rows, (long long)v.cols,
                          (long long)rows, (long long)cols);
    const struct tsr_slice *sl = r->rp ? tsr_rank_plan_find(r->rp, name) : NULL;
    if (sl && sl->split == TSR_SPLIT_NONE) sl = NULL;
    const void *data = v.data;
    size_t nbytes = v.nbytes;
    w->rows = sl && sl->split == TSR_SPLIT_ROWS ? sl->length : rows;
    w->cols = sl && sl->split == TSR_SPLIT_COLS ? sl->length : cols;
    if (v.generated)
        rc = generate_slice(r, m, name, &v, sl, &data, &nbytes);
    else if (sl)
        rc = map_slice(r, m, name, &v, sl, &data, &nbytes);
    if (rc) return rc;
    /* The ops read float elements through typed pointers: a safetensors tensor after 1-byte F8
     * ones may sit at an odd address in the mapping, and is copied to memory of its own. */
    size_t align = v.type == TSR_F32 ? 4 : v.type == TSR_F16 || v.type == TSR_BF16 ? 2 : 1;
    if ((uintptr_t)data % align) {
        void *copy = keep(r, malloc(nbytes));
        if (!copy) return tsr_errorf(TSR_ENOMEM, "out of memory copying '%s'", name);
        memcpy(copy, data, nbytes);
        data = copy;
    }
    w->buf = tsr_buf_weights(r->b, data, nbytes);
    if (!w->buf) return TSR_ENOMEM;
    if (!tsr_buf_host(w->buf) && r->packed && r->packed->data == data) {
        /* A device backend copied the slice: the host copy is no longer needed. */
        struct packed *p = r->packed;
        r->packed = p->next;
        free(p->data);
        free(p);
    }
    w->type = v.type;
    r->weight_bytes += nbytes;
    if (!strcmp(name, "token_embd.weight") && !r->cfg.tied_embeddings) r->embd_bytes = nbytes;
    return 0;
}

static int load_norm(tsr_runner_t *r, tsr_model_t *m, const char *name, int64_t n,
                     struct tsr_weight *w)
{
    int rc = load(r, m, name, 1, n, 0, w);
    if (rc || w->type == TSR_F32) return rc;
    if (w->type != TSR_F16 && w->type != TSR_BF16)
        return tsr_errorf(TSR_EUNSUPPORTED, "%s: norm weight '%s' is %s, expected F32, F16 or BF16",
                          tsr_model_name(m), name, tsr_dtype_name(w->type));
    /* Hugging Face bf16 and f16 checkpoints keep their norms in that type; the ops take f32
     * (n floats a norm: a few KB a layer). Norms are never sliced: the view is the tensor. */
    struct tsr_tensor_view v;
    float *f;
    if ((rc = tsr_model_tensor(m, name, &v))) return rc;
    if (!(f = keep(r, malloc(sizeof *f * (size_t)n)))) return TSR_ENOMEM;
    tsr_dequantize_row(v.type, v.data, f, n);
    tsr_buf_free(w->buf);
    if (!(w->buf = tsr_buf_weights(r->b, f, sizeof *f * (size_t)n))) return TSR_ENOMEM;
    w->type = TSR_F32;
    r->weight_bytes += sizeof *f * (size_t)n - v.nbytes;
    return 0;
}

/* An expert layer's router, experts, shared expert and (sigmoid scoring) score correction
 * bias, whose n_expert values go to host memory as f32 (the router's choice runs on the host). */
static int load_experts(tsr_runner_t *r, tsr_model_t *m, int l, struct layer *L)
{
    const struct tsr_model_config *c = &r->cfg;
    int E = c->n_expert, rc;
    int64_t f = c->moe_ffn_dim, sf = c->shared_ffn_dim, D = c->dim;
    char name[96];
    if (!(L->experts = calloc((size_t)E * 3, sizeof *L->experts)))
        return tsr_errorf(TSR_ENOMEM, "out of memory");
    snprintf(name, sizeof name, "blk.%d.ffn_gate_inp.weight", l);
    if ((rc = load(r, m, name, E, D, 0, &L->router))) return rc;
    static const char *const proj[3] = {"gate", "up", "down"};
    /* expert parallelism: only this rank's experts are read; the others' weights stay NULL */
    int e0 = r->rp ? r->rp->expert_begin : 0, e1 = r->rp ? r->rp->expert_end : E;
    for (int i = 0; i < 3; i++)
        for (int e = e0; e < e1; e++) {
            snprintf(name, sizeof name, "blk.%d.ffn_%s_exp.%d.weight", l, proj[i], e);
            size_t before = r->weight_bytes;
            if ((rc = load(r, m, name, i == 2 ? D : f, i == 2 ? f : D, 0, &L->experts[i * E + e])))
                return rc;
            r->expert_bytes += r->weight_bytes - before;
        }
    struct tsr_weight *sh[3] = {&L->sh_gate, &L->sh_up, &L->sh_down};
    for (int i = 0; i < 3 && sf > 0; i++) {
        snprintf(name, sizeof name, "blk.%d.ffn_%s_shexp.weight", l, proj[i]);
        if ((rc = load(r, m, name, i == 2 ? D : sf, i == 2 ? sf : D, 0, sh[i]))) return rc;
    }
    snprintf(name, sizeof name, "blk.%d.ffn_gate_inp_shexp.weight", l);
    if (c->shared_expert_gate && (rc = load(r, m, name, 1, D, 0, &L->sh_inp))) return rc;
    float *bias = NULL;
    if (c->moe_sigmoid) { /* DeepSeek V3's e_score_correction_bias: required with sigmoids */
        struct tsr_tensor_view v;
        snprintf(name, sizeof name, "blk.%d.exp_probs_b.bias", l);
        if ((rc = tsr_model_tensor(m, name, &v))) return rc;
        if (v.rows * v.cols != E || !v.data ||
            (v.type != TSR_F32 && v.type != TSR_F16 && v.type != TSR_BF16))
            return tsr_errorf(TSR_EFORMAT,
                              "%s: '%s' must be %d F32, F16 or BF16 values (one an expert)",
                              tsr_model_name(m), name, E);
        if (!(bias = keep(r, malloc(sizeof *bias * (size_t)E)))) return TSR_ENOMEM;
        tsr_dequantize_row(v.type, v.data, bias, E);
    }
    L->moe = (struct tsr_moe){.router = &L->router,
                              .score_bias = bias,
                              .gate = L->experts,
                              .up = L->experts + E,
                              .down = L->experts + 2 * E,
                              .shared_gate = sf > 0 ? &L->sh_gate : NULL,
                              .shared_up = &L->sh_up,
                              .shared_down = &L->sh_down,
                              .shared_inp = c->shared_expert_gate ? &L->sh_inp : NULL};
    tsr_config_moe_routing(c, &L->moe.routing);
    return 0;
}

/* A matrix an op reads as f32 on the host (MLA's kv_b), whatever its type in the file: loaded,
 * then widened (rows x cols floats the runner keeps) when it is not f32. */
static int load_f32(tsr_runner_t *r, tsr_model_t *m, const char *name, int64_t rows, int64_t cols,
                    struct tsr_weight *w)
{
    int rc = load(r, m, name, rows, cols, 0, w);
    if (rc || w->type == TSR_F32) return rc;
    size_t rb = tsr_dtype_row_bytes(w->type, cols), n = (size_t)rows * (size_t)cols;
    char *raw = malloc(rb * (size_t)rows);
    float *f = keep(r, malloc(n * sizeof *f));
    if (!raw || !f) {
        free(raw);
        return tsr_errorf(TSR_ENOMEM, "out of memory widening '%s'", name);
    }
    rc = tsr_model_read(m, name, 0, rows, 0, cols, raw);
    for (int64_t i = 0; !rc && i < rows; i++)
        tsr_dequantize_row(w->type, raw + (size_t)i * rb, f + (size_t)i * cols, cols);
    free(raw);
    if (rc) return rc;
    const void *old = tsr_buf_host(w->buf);
    tsr_buf_free(w->buf);
    struct packed **p = &r->packed; /* the copy load made, if any (a generated or packed slice) */
    while (*p && (*p)->data != old) p = &(*p)->next;
    if (*p) {
        struct packed *dead = *p;
        *p = dead->next;
        free(dead->data);
        free(dead);
    }
    if (!(w->buf = tsr_buf_weights(r->b, f, n * sizeof *f))) return TSR_ENOMEM;
    r->weight_bytes += n * sizeof *f - rb * (size_t)rows;
    w->type = TSR_F32;
    return 0;
}

/* A layer's multi-head latent attention (llama.cpp's deepseek2 names, model/shard_plan.h):
 * the query's latent projection, norm and up-projection (or one projection without
 * q_lora_rank), kv_a with its norm, kv_b (f32: tsr_op_mla_attention reads it) and the output.
 * The two latent norms take eps 1e-6 whatever rms_norm_eps says, as Hugging Face's DeepSeek code
 * builds them (DeepseekV3RMSNorm(rank): its default; every released config says 1e-6 too). */
static int load_mla(tsr_runner_t *r, tsr_model_t *m, int l, struct layer *L)
{
    const struct tsr_model_config *c = &r->cfg;
    int64_t D = c->dim, H = c->n_head, qr = c->q_lora_rank, kr = c->kv_lora_rank;
    int64_t rope = c->qk_rope_head_dim, nope = c->qk_nope_head_dim, v = c->v_head_dim;
    char n[7][96];
    static const char *const fmt[7] = {
        "blk.%d.attn_q_a.weight", "blk.%d.attn_q_a_norm.weight", "blk.%d.attn_q_b.weight",
        "blk.%d.attn_q.weight",   "blk.%d.attn_kv_a_mqa.weight", "blk.%d.attn_kv_a_norm.weight",
        "blk.%d.attn_kv_b.weight"};
    for (int i = 0; i < 7; i++) snprintf(n[i], sizeof n[i], fmt[i], l);
    char wo[96];
    snprintf(wo, sizeof wo, "blk.%d.attn_output.weight", l);
    int rc;
    if (qr > 0 ? (rc = load(r, m, n[0], qr, D, 0, &L->wq_a)) ||
                     (rc = load_norm(r, m, n[1], qr, &L->q_a_norm)) ||
                     (rc = load(r, m, n[2], H * (nope + rope), qr, 0, &L->wq_b))
               : (rc = load(r, m, n[3], H * (nope + rope), D, 0, &L->wq)))
        return rc;
    if ((rc = load(r, m, n[4], kr + rope, D, 0, &L->wkv_a)) ||
        (rc = load_norm(r, m, n[5], kr, &L->kv_a_norm)) ||
        (rc = load_f32(r, m, n[6], H * (nope + v), kr, &L->wkv_b)) ||
        (rc = load(r, m, wo, D, H * v, 0, &L->wo)))
        return rc;
    L->mla = (struct tsr_mla){.kv_lora_rank = (int)kr,
                              .qk_nope = (int)nope,
                              .qk_rope = (int)rope,
                              .v_dim = (int)v,
                              .kv_norm = &L->kv_a_norm,
                              .kv_b = &L->wkv_b,
                              .eps = 1e-6f};
    return 0;
}

static int load_layer(tsr_runner_t *r, tsr_model_t *m, int l, struct layer *L)
{
    const struct tsr_model_config *c = &r->cfg;
    int64_t qd = (int64_t)c->n_head * c->head_dim, kvd = (int64_t)c->n_kv_head * c->head_dim;
    static const char *fmt[12] = {
        "blk.%d.attn_norm.weight", "blk.%d.attn_q.weight",      "blk.%d.attn_k.weight",
        "blk.%d.attn_v.weight",    "blk.%d.attn_q.bias",        "blk.%d.attn_k.bias",
        "blk.%d.attn_v.bias",      "blk.%d.attn_output.weight", "blk.%d.ffn_norm.weight",
        "blk.%d.ffn_gate.weight",  "blk.%d.ffn_up.weight",      "blk.%d.ffn_down.weight"};
    char n[12][96];
    for (int i = 0; i < 12; i++) snprintf(n[i], sizeof n[i], fmt[i], l);
    int rc, bias_optional = !c->qkv_bias;
    if (c->kv_lora_rank > 0) {
        if ((rc = load_norm(r, m, n[0], c->dim, &L->attn_norm)) || (rc = load_mla(r, m, l, L)) ||
            (rc = load_norm(r, m, n[8], c->dim, &L->ffn_norm)))
            return rc;
    } else if ((rc = load_norm(r, m, n[0], c->dim, &L->attn_norm)) ||
               (rc = load(r, m, n[1], qd, c->dim, 0, &L->wq)) ||
               (rc = load(r, m, n[2], kvd, c->dim, 0, &L->wk)) ||
               (rc = load(r, m, n[3], kvd, c->dim, 0, &L->wv)) ||
               (rc = load(r, m, n[4], 1, qd, bias_optional, &L->bq)) ||
               (rc = load(r, m, n[5], 1, kvd, bias_optional, &L->bk)) ||
               (rc = load(r, m, n[6], 1, kvd, bias_optional, &L->bv)) ||
               (rc = load(r, m, n[7], c->dim, qd, 0, &L->wo)) ||
               (rc = load_norm(r, m, n[8], c->dim, &L->ffn_norm)))
        return rc;
    for (int i = 0; i < 2 * c->qk_norm; i++) {
        char qk[64];
        snprintf(qk, sizeof qk, "blk.%d.attn_%c_norm.weight", l, "qk"[i]);
        if ((rc = load_norm(r, m, qk, c->head_dim, i ? &L->k_norm : &L->q_norm))) return rc;
    }
    if (c->n_expert > 0 && l >= c->n_dense_layer) return load_experts(r, m, l, L);
    if ((rc = load(r, m, n[9], c->ffn_dim, c->dim, 0, &L->w_gate)) ||
        (rc = load(r, m, n[10], c->ffn_dim, c->dim, 0, &L->w_up)) ||
        (rc = load(r, m, n[11], c->dim, c->ffn_dim, 0, &L->w_down)))
        return rc;
    /* Biases are vectors: their local length is in cols. */
    return 0;
}

/* Bytes of one KV block of one of a layer's caches on this rank (K or V, or MLA's latent rows);
 * *caches: how many a layer has (2, or 1 with MLA). */
static size_t kv_block_bytes(const tsr_runner_t *r, int *caches)
{
    int heads, width;
    *caches = tsr_config_kv_rows(&r->cfg, r->n_kv_head, &heads, &width);
    return (size_t)r->opts.block_size * tsr_kv_row_bytes(r->opts.kv_type, heads, width);
}

/* The KV cache of every layer: n_blocks plus the padding block. */
static int alloc_kv(tsr_runner_t *r)
{
    int caches;
    size_t kv = (size_t)(r->opts.n_blocks + 1) * kv_block_bytes(r, &caches);
    for (int l = 0; l < r->layer_end - r->layer_begin; l++) {
        struct layer *L = &r->layers[l];
        L->k_cache = tsr_buf_alloc(r->b, kv);
        L->v_cache = caches > 1 ? tsr_buf_alloc(r->b, kv) : NULL;
        if (!L->k_cache || (caches > 1 && !L->v_cache))
            return tsr_errorf(TSR_ENOMEM, "no memory for the KV cache (%d blocks, %.2f GB)",
                              r->opts.n_blocks,
                              (double)caches * kv * (r->layer_end - r->layer_begin) / 1e9);
        r->kv_bytes += (size_t)caches * kv;
    }
    return 0;
}

/* opts.n_blocks from the device's memory once the weights and scratch are in (opts.mem_util);
 * in a group, every rank takes the smallest of their counts (the leader's block tables index
 * every rank's cache). Collective over the world. */
static int size_kv(tsr_runner_t *r)
{
    size_t free_b = 0, total_b = 0;
    int rc = tsr_backend_memory(r->b, &free_b, &total_b);
    if (rc) {
        char why[256];
        snprintf(why, sizeof why, "%s", tsr_last_error());
        return tsr_errorf(rc, "sizing the KV cache from device memory: %s (give the block count)",
                          why);
    }
    double keep = (1.0 - r->opts.mem_util) * (double)total_b;
    int caches;
    double per = (double)kv_block_bytes(r, &caches);
    per *= (double)caches * (r->layer_end - r->layer_begin);
    double n = ((double)free_b - keep) / per - 1; /* less the padding block */
    int64_t blocks = n < 0 ? 0 : n > (1 << 24) ? (1 << 24) : (int64_t)n;
    if (r->world_size > 1) {
        if (r->world_rank == 0) {
            for (int i = 1; i < r->world_size && !rc; i++) {
                int64_t theirs;
                rc = tsr_comm_recv_host(r->world, &theirs, sizeof theirs, i);
                if (!rc && theirs < blocks) blocks = theirs;
            }
        } else {
            rc = tsr_comm_send_host(r->world, &blocks, sizeof blocks, 0);
        }
        if (!rc) rc = tsr_comm_broadcast_host(r->world, &blocks, sizeof blocks, 0);
        if (rc) return rc;
    }
    int need = (r->opts.max_tokens + r->opts.block_size - 1) / r->opts.block_size;
    if (blocks < need)
        return tsr_errorf(TSR_ENOMEM,
                          "the KV cache would get %lld blocks of %d positions, fewer than one "
                          "step's %d tokens need: %.2f of %.2f GB free after the weights (%.2f "
                          "GB), and %.0f%% of the device's memory is the most to use (GPU memory "
                          "utilization %.2f)",
                          (long long)blocks, r->opts.block_size, r->opts.max_tokens, free_b / 1e9,
                          total_b / 1e9, r->weight_bytes / 1e9, 100 * r->opts.mem_util,
                          r->opts.mem_util);
    r->opts.n_blocks = (int)blocks;
    tsr_log_info("KV cache: %d blocks of %d positions (%s, %.2f GB) from %.2f GB free of %.2f "
                 "GB, GPU memory utilization %.2f",
                 r->opts.n_blocks, r->opts.block_size, tsr_dtype_name(r->opts.kv_type),
                 (r->opts.n_blocks + 1) * per / 1e9, free_b / 1e9, total_b / 1e9, r->opts.mem_util);
    return 0;
}

static int alloc_scratch(tsr_runner_t *r)
{
    const struct tsr_model_config *c = &r->cfg;
    size_t T = (size_t)r->opts.max_tokens, f = sizeof(float);
    size_t qd = (size_t)r->n_head * c->head_dim, kvd = (size_t)r->n_kv_head * c->head_dim;
    size_t vs = (size_t)r->vocab_stride, ad = qd;
    if (c->kv_lora_rank > 0) { /* MLA: k holds kv_a's rows, v q_a's, att the heads' values */
        size_t kva = (size_t)c->kv_lora_rank + c->qk_rope_head_dim;
        kvd = kvd > kva ? kvd : kva;
        kvd = kvd > (size_t)c->q_lora_rank ? kvd : (size_t)c->q_lora_rank;
        ad = (size_t)r->n_head * c->v_head_dim > qd ? (size_t)r->n_head * c->v_head_dim : qd;
    }
    struct {
        tsr_buf_t **buf;
        size_t width;
    } s[] = {{&r->x, c->dim},      {&r->xn, c->dim},    {&r->q, qd},     {&r->att, ad},
             {&r->k, kvd},         {&r->v, kvd},        {&r->o, c->dim}, {&r->gate, r->ffn_dim},
             {&r->up, r->ffn_dim}, {&r->h_out, c->dim}, {&r->logits, vs}};
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++) {
        if (!(*s[i].buf = tsr_buf_alloc(r->b, T * s[i].width * f))) return TSR_ENOMEM;
        r->scratch_bytes += T * s[i].width * f;
    }
    if (r->has_head && r->tp_size > 1) {
        if (!(r->gathered = tsr_buf_alloc(r->b, (size_t)r->tp_size * T * vs * f)))
            return TSR_ENOMEM;
        r->scratch_bytes += (size_t)r->tp_size * T * vs * f;
    }
    r->slot = malloc(T * sizeof *r->slot);
    r->local_ids = malloc(T * sizeof *r->local_ids);
    return r->slot && r->local_ids ? 0 : tsr_errorf(TSR_ENOMEM, "out of memory");
}

/* This rank's part, from the plan or the whole model. */
static int set_part(tsr_runner_t *r, const struct tsr_runner_shard *sh)
{
    const struct tsr_model_config *c = &r->cfg;
    r->layer_begin = 0;
    r->layer_end = c->n_layer;
    r->n_head = c->n_head;
    r->n_kv_head = c->n_kv_head;
    r->ffn_dim = c->ffn_dim;
    r->vocab_begin = 0;
    r->vocab_end = r->vocab_stride = c->n_vocab;
    r->has_embedding = r->has_head = 1;
    r->world_size = r->tp_size = r->pp_size = r->ep_size = 1;
    if (!sh) return 0;
    const struct tsr_shard_plan *pl = sh->plan;
    if (c->kv_lora_rank > 0 && pl->world > 1)
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "%s uses multi-head latent attention: it runs on one rank for now (tp = "
                          "pp = ep = 1), not on a %dx%d plan (ep %d)",
                          c->arch, pl->tp, pl->pp, pl->ep);
    if (!sh->world || !sh->tp || (pl->ep > pl->tp && !sh->ep))
        return tsr_errorf(TSR_EINVAL, "a %dx%d plan (ep %d) needs its %s communicators", pl->tp,
                          pl->pp, pl->ep, pl->ep > pl->tp ? "world, TP and EP" : "world and TP");
    r->world = sh->world;
    r->tp = sh->tp;
    r->world_rank = tsr_comm_rank(sh->world);
    r->world_size = tsr_comm_size(sh->world);
    r->tp_size = pl->tp;
    r->pp_size = pl->pp;
    r->ep_size = pl->ep;
    tsr_comm_t *ep = pl->ep > pl->tp ? sh->ep : sh->tp;
    if (r->world_size != pl->world || tsr_comm_size(sh->tp) != pl->tp ||
        tsr_comm_size(ep) != pl->ep)
        return tsr_errorf(TSR_EINVAL,
                          "a %dx%d plan (ep %d) run on %d ranks with TP groups of %d and stages "
                          "of %d",
                          pl->tp, pl->pp, pl->ep, r->world_size, tsr_comm_size(sh->tp),
                          tsr_comm_size(ep));
    /* Mixture of experts sharded (kernels/moe_ep.h): ep ranks a stage, each with its share of the
     * routed experts, tp-sliced attention in every attention group of tp ranks; the ep / tp
     * groups all run the one batch the leader sends (replicated attention). ep = 1 (tp = 1)
     * with pp > 1 holds every expert of its layers and runs tsr_op_moe. The all-to-all takes
     * host buffers: the CPU backend over MPI only. */
    if (c->n_expert > 0 && pl->ep > 1 &&
        (strcmp(tsr_comm_name(ep), "mpi") || strcmp(tsr_backend_name(r->b), "cpu")))
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "%s has %d experts: expert parallelism (ep = %d) runs on the CPU backend "
                          "over MPI only, not on %s over %s",
                          c->arch, c->n_expert, pl->ep, tsr_backend_name(r->b), tsr_comm_name(ep));
    r->moe_ep = (struct tsr_moe_ep){.ep = ep, .tp = pl->tp > 1 ? sh->tp : NULL};
    const struct tsr_rank_plan *p = &sh->plan->ranks[r->world_rank];
    r->rp = p;
    r->layer_begin = p->layer_begin;
    r->layer_end = p->layer_end;
    r->n_head = p->q_head_end - p->q_head_begin;
    r->n_kv_head = p->kv_head_end - p->kv_head_begin;
    r->ffn_dim = (int)(p->ffn_end - p->ffn_begin);
    r->has_embedding = p->has_embedding;
    r->has_head = p->has_head;
    r->vocab_begin = p->vocab_begin;
    r->vocab_end = p->vocab_end;
    r->vocab_stride = p->vocab_stride;
    return 0;
}

static int load_ends(tsr_runner_t *r, tsr_model_t *m)
{
    const struct tsr_model_config *c = &r->cfg;
    int rc;
    if (r->has_embedding &&
        (rc = load(r, m, "token_embd.weight", c->n_vocab, c->dim, 0, &r->tok_embd)))
        return rc;
    if (r->has_head) {
        if ((rc = load_norm(r, m, "output_norm.weight", c->dim, &r->output_norm))) return rc;
        if (!c->tied_embeddings)
            return load(r, m, "output.weight", c->n_vocab, c->dim, 0, &r->output);
        if (r->has_embedding) {
            r->output = r->tok_embd;
            return 0;
        }
        return load(r, m, "token_embd.weight", c->n_vocab, c->dim, 0, &r->output);
    }
    /* A middle stage hands off after add+norm with the next stage's first norm. */
    char name[64];
    snprintf(name, sizeof name, "blk.%d.attn_norm.weight", r->layer_end);
    struct tsr_rank_plan whole = {0};
    const struct tsr_rank_plan *saved = r->rp;
    r->rp = &whole; /* replicated: read it whole */
    rc = load_norm(r, m, name, c->dim, &r->next_norm);
    r->rp = saved;
    return rc;
}

enum { LOAD_PROGRESS_S = 3 }; /* seconds between progress lines while loading weights */

int tsr_runner_new(tsr_model_t *m, tsr_backend_t *b, const struct tsr_runner_opts *o,
                   const struct tsr_runner_shard *shard, tsr_runner_t **out)
{
    *out = NULL;
    if (o->n_blocks < 0 || (o->n_blocks == 0 && !(o->mem_util > 0 && o->mem_util <= 1)) ||
        o->block_size <= 0 || o->max_tokens <= 0)
        return tsr_errorf(TSR_EINVAL, "runner needs positive blocks (or a memory fraction in (0, "
                                      "1]), block size and step tokens");
    if (!tsr_kv_row_bytes(o->kv_type, 1, 2))
        return tsr_errorf(TSR_EINVAL, "KV cache type %s (F32, BF16 or F8_E4M3 only)",
                          tsr_dtype_name(o->kv_type));
    tsr_runner_t *r = calloc(1, sizeof *r);
    if (!r) return tsr_errorf(TSR_ENOMEM, "out of memory");
    r->b = b;
    r->cfg = *tsr_model_config(m);
    r->opts = *o;
    const struct tsr_model_config *c = &r->cfg;
    int rc = set_part(r, shard);
    if (!rc && c->n_expert > 0 && !tsr_backend_can_moe(b))
        rc = tsr_errorf(TSR_EUNSUPPORTED,
                        "%s: mixture-of-experts layers are not implemented on the %s backend yet",
                        tsr_model_name(m), tsr_backend_name(b));
    if (!rc && c->kv_lora_rank > 0 && !tsr_backend_can_mla(b))
        rc = tsr_errorf(TSR_EUNSUPPORTED,
                        "%s: multi-head latent attention is not implemented on the %s backend yet",
                        tsr_model_name(m), tsr_backend_name(b));
    if (!rc && c->kv_lora_rank > 0 && o->kv_type != TSR_F32 && o->kv_type != TSR_BF16)
        rc = tsr_errorf(TSR_EUNSUPPORTED,
                        "%s: multi-head latent attention caches f32 or bf16, not %s "
                        "(--kv-cache-dtype)",
                        tsr_model_name(m), tsr_dtype_name(o->kv_type));
    if (rc) goto fail;
    int n_local = r->layer_end - r->layer_begin;
    r->layers = calloc((size_t)(n_local > 0 ? n_local : 1), sizeof *r->layers);
    if (!r->layers) {
        rc = tsr_errorf(TSR_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = load_ends(r, m))) goto fail;
    double t_shown = tsr_now();
    for (int l = r->layer_begin; l < r->layer_end; l++) {
        if ((rc = load_layer(r, m, l, &r->layers[l - r->layer_begin]))) goto fail;
        /* progress on long loads: a line every few seconds (every layer at debug level) */
        int done = l + 1 - r->layer_begin;
        int last = l + 1 == r->layer_end, due = tsr_now() - t_shown >= LOAD_PROGRESS_S;
        if (due && !last)
            tsr_log_info("loading weights: %.2f GB, layer %d of %d (%d%%)", r->weight_bytes / 1e9,
                         done, n_local, 100 * done / n_local);
        else
            tsr_log_debug("loading weights: %.2f GB, layer %d of %d (%d%%)", r->weight_bytes / 1e9,
                          done, n_local, 100 * done / n_local);
        if (due) t_shown = tsr_now();
    }
    /* RoPE frequencies, with GGUF's llama3 frequency factors when the file has them. */
    int half = tsr_config_rope_dim(c) / 2;
    float *inv = malloc((size_t)half * sizeof *inv);
    struct tsr_tensor_view ff;
    const float *factors = NULL;
    if (!inv) {
        rc = tsr_errorf(TSR_ENOMEM, "out of memory");
        goto fail;
    }
    if (!tsr_model_tensor(m, "rope_freqs.weight", &ff)) {
        if (ff.type != TSR_F32 || ff.cols * ff.rows != half || !ff.data) {
            free(inv);
            rc = tsr_errorf(TSR_EFORMAT, "%s: rope_freqs.weight must be %d F32 values",
                            tsr_model_name(m), half);
            goto fail;
        }
        factors = ff.data;
    }
    tsr_rope_inv_freq(c, factors, inv);
    /* MLA attends over its latent rows: one KV head of kv_lora_rank + qk_rope_head_dim, scaled
     * by the query/key width (c->head_dim, qk_nope + qk_rope) as Hugging Face's softmax_scale
     * (and YaRN's mscale) */
    int kv_heads, kv_width;
    tsr_config_kv_rows(c, r->n_kv_head, &kv_heads, &kv_width);
    r->shape = (struct tsr_attn_shape){.n_head = r->n_head,
                                       .n_kv_head = kv_heads,
                                       .head_dim = kv_width,
                                       .block_size = o->block_size,
                                       .neox = c->rope_neox,
                                       .scale = tsr_config_attn_scale(c),
                                       .kv_type = o->kv_type,
                                       .inv_freq = tsr_buf_alloc(b, (size_t)half * sizeof *inv)};
    rc = r->shape.inv_freq ? tsr_buf_set(r->shape.inv_freq, 0, inv, (size_t)half * sizeof *inv)
                           : TSR_ENOMEM;
    free(inv);
    if (!rc && !(r->fl = calloc((size_t)r->pp_size, sizeof *r->fl)))
        rc = tsr_errorf(TSR_ENOMEM, "out of memory");
    if (rc || (rc = alloc_scratch(r))) goto fail;
    if ((r->opts.n_blocks == 0 && (rc = size_kv(r))) || (rc = alloc_kv(r))) goto fail;
    const char *g = getenv("TESSERA_GRAPHS");
    /* not with experts: a MoE layer's routing runs on the host between its matmuls */
    r->graphs =
        r->world_size == 1 && tsr_backend_graphs(b) && !(g && !strcmp(g, "0")) && c->n_expert == 0;
    *out = r;
    return 0;
fail:
    r->world_size = 1; /* a failed runner sends no stop */
    tsr_runner_free(r);
    return rc;
}

/* The rank this one's step messages come from: the leader for its own stage, else the same rank
 * of the previous stage (a stage is ep_size ranks: tp_size, or more with expert parallelism). */
static int step_source(const tsr_runner_t *r)
{
    return r->world_rank < r->ep_size ? 0 : r->world_rank - r->ep_size;
}

/* The rank this one passes steps on to (the same rank of the next stage), or -1 on the last
 * stage. */
static int step_next(const tsr_runner_t *r)
{
    return r->world_rank / r->ep_size < r->pp_size - 1 ? r->world_rank + r->ep_size : -1;
}

/* The leader: a control message to its stage's other ranks and down the stages. */
static int send_control(tsr_runner_t *r, enum tsr_step_kind kind)
{
    TRY(tsr_step_pack_control(kind, &r->msg));
    for (int p = 1; p < r->ep_size; p++) TRY(tsr_step_send(r->world, &r->msg, p));
    return step_next(r) < 0 ? 0 : tsr_step_send(r->world, &r->msg, step_next(r));
}

int tsr_runner_idle(tsr_runner_t *r)
{
    if (r->world_size == 1 || r->world_rank != 0) return 0;
    if (r->n_fl) return tsr_errorf(TSR_EINVAL, "%d steps still in flight", r->n_fl);
    return send_control(r, TSR_STEP_IDLE);
}

static void stop_followers(tsr_runner_t *r)
{
    if (r->world_size == 1 || r->world_rank != 0) return;
    /* what is in flight comes back first, or the chain would be out of step; after a failure a
     * rank may be gone, and waiting for its answer would never end */
    while (r->n_fl && !r->failed && !tsr_runner_collect(r, NULL, NULL, NULL, NULL, NULL)) {
    }
    if (!r->failed) send_control(r, TSR_STEP_STOP);
}

static void free_graphs(tsr_runner_t *r)
{
    for (int i = 0; i < MAX_GRAPHS; i++) {
        tsr_graph_free(r->gslots[i].g);
        memset(&r->gslots[i], 0, sizeof r->gslots[i]);
    }
}

void tsr_runner_free(tsr_runner_t *r)
{
    if (!r) return;
    stop_followers(r);
    free_graphs(r); /* before the buffers they use */
    tsr_buf_free(r->gmeta);
    free(r->gpack);
    if (r->layers) {
        for (int l = 0; l < r->layer_end - r->layer_begin; l++) {
            struct layer *L = &r->layers[l];
            struct tsr_weight *w[] = {&L->attn_norm, &L->wq,     &L->wk,   &L->wv,
                                      &L->bq,        &L->bk,     &L->bv,   &L->wo,
                                      &L->ffn_norm,  &L->w_gate, &L->w_up, &L->w_down};
            for (size_t i = 0; i < sizeof w / sizeof w[0]; i++) tsr_buf_free(w[i]->buf);
            struct tsr_weight *x[] = {&L->router,   &L->sh_gate, &L->sh_up,  &L->sh_down,
                                      &L->sh_inp,   &L->q_norm,  &L->k_norm, &L->wq_a,
                                      &L->q_a_norm, &L->wq_b,    &L->wkv_a,  &L->kv_a_norm,
                                      &L->wkv_b};
            for (size_t i = 0; i < sizeof x / sizeof x[0]; i++) tsr_buf_free(x[i]->buf);
            for (int i = 0; L->experts && i < 3 * r->cfg.n_expert; i++)
                tsr_buf_free(L->experts[i].buf);
            free(L->experts);
            tsr_buf_free(L->k_cache);
            tsr_buf_free(L->v_cache);
        }
        free(r->layers);
    }
    if (r->output.buf != r->tok_embd.buf) tsr_buf_free(r->output.buf);
    tsr_buf_free(r->tok_embd.buf);
    tsr_buf_free(r->output_norm.buf);
    tsr_buf_free(r->next_norm.buf);
    tsr_buf_free(r->shape.inv_freq);
    tsr_buf_t *s[] = {r->x, r->xn,   r->q,  r->att,   r->k,      r->v,
                      r->o, r->gate, r->up, r->h_out, r->logits, r->gathered};
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++) tsr_buf_free(s[i]);
    while (r->packed) {
        struct packed *p = r->packed;
        r->packed = p->next;
        free(p->data);
        free(p);
    }
    free(r->slot);
    free(r->local_ids);
    tsr_step_msg_free(&r->msg);
    tsr_step_msg_free(&r->params);
    free(r->fl);
    tsr_step_msg_free(&r->picks);
    free(r->idx);
    free(r->prob);
    free(r->host_logits);
    free(r);
}

int tsr_runner_trace_routes(tsr_runner_t *r, int32_t *ids)
{
    size_t stride = (size_t)r->opts.max_tokens * r->cfg.n_expert_used, i = 0;
    for (int l = 0; l < r->layer_end - r->layer_begin; l++)
        if (r->layers[l].experts) r->layers[l].moe.trace = ids ? ids + stride * i++ : NULL;
    return (int)i;
}

int tsr_runner_n_vocab(const tsr_runner_t *r)
{
    return r->cfg.n_vocab;
}

int tsr_runner_n_blocks(const tsr_runner_t *r)
{
    return r->opts.n_blocks;
}

size_t tsr_runner_weight_bytes(const tsr_runner_t *r)
{
    return r->weight_bytes;
}

size_t tsr_runner_expert_bytes(const tsr_runner_t *r)
{
    return r->expert_bytes;
}

size_t tsr_runner_kv_bytes(const tsr_runner_t *r)
{
    return r->kv_bytes;
}

size_t tsr_runner_step_weight_bytes(const tsr_runner_t *r)
{
    /* one token's decode reads n_expert_used of each layer's routed experts */
    size_t unread = r->cfg.n_expert > 0
                        ? (size_t)((double)r->expert_bytes *
                                   (r->cfg.n_expert - r->cfg.n_expert_used) / r->cfg.n_expert)
                        : 0;
    return r->weight_bytes - r->embd_bytes - unread;
}

size_t tsr_runner_kv_bytes_per_pos(const tsr_runner_t *r)
{
    int caches;
    size_t block = kv_block_bytes(r, &caches);
    return (size_t)caches * (size_t)(r->layer_end - r->layer_begin) * block /
           (size_t)r->opts.block_size;
}

size_t tsr_runner_scratch_bytes(const tsr_runner_t *r)
{
    return r->scratch_bytes;
}

/* Validates the step and fills r->slot. */
static int check_step(tsr_runner_t *r, const struct tsr_step *st)
{
    int T = st->n_tokens, bs = r->opts.block_size;
    if (T <= 0 || T > r->opts.max_tokens)
        return tsr_errorf(TSR_EINVAL, "step of %d tokens (1..%d allowed)", T, r->opts.max_tokens);
    if (st->n_out < 0 || st->n_out > T)
        return tsr_errorf(TSR_EINVAL, "%d logit rows asked of a %d-token step", st->n_out, T);
    if (st->n_seqs <= 0 || st->max_blocks <= 0)
        return tsr_errorf(TSR_EINVAL, "step without sequences or block tables");
    for (int t = 0; t < T; t++) {
        if (st->ids[t] < 0 || st->ids[t] >= r->cfg.n_vocab)
            return tsr_errorf(TSR_EINVAL, "token id %d is outside the vocabulary (%d)", st->ids[t],
                              r->cfg.n_vocab);
        if (st->seq[t] < 0 || st->seq[t] >= st->n_seqs)
            return tsr_errorf(TSR_EINVAL, "token %d names sequence %d of %d", t, st->seq[t],
                              st->n_seqs);
        int p = st->pos[t];
        if (p < 0 || p / bs >= st->max_blocks)
            return tsr_errorf(TSR_EINVAL, "position %d is outside the block table", p);
        /* Every block the token attends to must be a real block. */
        const int32_t *bt = st->block_tables + (size_t)st->seq[t] * st->max_blocks;
        for (int j = 0; j <= p / bs; j++)
            if (bt[j] < 0 || bt[j] >= r->opts.n_blocks)
                return tsr_errorf(TSR_EINVAL, "block id %d outside the pool (%d)", bt[j],
                                  r->opts.n_blocks);
        r->slot[t] = bt[p / bs] * bs + p % bs;
    }
    for (int i = 0; i < st->n_out; i++)
        if (st->out_rows[i] < 0 || st->out_rows[i] >= T)
            return tsr_errorf(TSR_EINVAL, "logit row %d outside the step", st->out_rows[i]);
    return 0;
}

static const struct tsr_weight *opt(const struct tsr_weight *w)
{
    return w->buf ? w : NULL;
}

/* Sums a row-parallel layer's partial outputs over the stage's TP ranks. */
static int tp_sum(tsr_runner_t *r, tsr_buf_t *buf, size_t n_floats)
{
    return r->tp_size > 1 ? tsr_comm_all_reduce_sum(r->tp, buf, 0, n_floats) : 0;
}

/* The whole vocabulary's logits of n_out rows into host memory: the TP ranks' slices gathered,
 * each rank's rows being (n_out, its vocab length) at the start of its stride-sized part. */
static int collect_logits(tsr_runner_t *r, int n_out, float *logits)
{
    int V = r->cfg.n_vocab;
    size_t vs = (size_t)r->vocab_stride, part = (size_t)n_out * vs * sizeof(float);
    if (r->tp_size == 1)
        return tsr_buf_get(r->logits, 0, logits, (size_t)n_out * V * sizeof(float));
    TRY(tsr_comm_all_gather(r->tp, r->logits, 0, r->gathered, 0, part));
    for (int q = 0; q < r->tp_size; q++) {
        int64_t v0 = (int64_t)q * vs, len = V - v0 < (int64_t)vs ? V - v0 : (int64_t)vs;
        for (int i = 0; i < n_out && len > 0; i++)
            TRY(tsr_buf_get(r->gathered, (size_t)q * part + (size_t)i * len * sizeof(float),
                            logits + (size_t)i * V + v0, (size_t)len * sizeof(float)));
    }
    return 0;
}

/* Multi-head latent attention of the T rows of xn into att: q_a (into v) and kv_a (into k) from
 * xn at once, q_a's norm and q_b into q (or wq alone without q_lora_rank), then the absorbed
 * attention over the latent cache (tsr_op_mla_attention), which writes the step's rows to it. */
static int mla_attention(tsr_runner_t *r, struct layer *L, const struct tsr_batch_meta *meta, int T)
{
    tsr_backend_t *b = r->b;
    const struct tsr_model_config *c = &r->cfg;
    int lora = L->wq_a.buf != NULL;
    tsr_buf_t *y[2] = {r->k, lora ? r->v : r->q};
    const struct tsr_weight *w[2] = {&L->wkv_a, lora ? &L->wq_a : &L->wq}, *bias[2] = {NULL, NULL};
    TRY(tsr_op_matmul_many(b, 2, y, w, bias, r->xn, T));
    if (lora) {
        TRY(tsr_op_rmsnorm(b, r->v, r->v, &L->q_a_norm, T, c->q_lora_rank, L->mla.eps));
        TRY(tsr_op_matmul(b, r->q, &L->wq_b, r->v, NULL, T));
    }
    return tsr_op_mla_attention(b, r->att, r->q, r->k, L->k_cache, &L->mla, &r->shape, meta);
}

/* This rank's layers over the T rows of the residual stream x: xn = the first layer's attention
 * norm of x, then every layer; at the end xn holds the final norm's output (last stage) or the
 * hand-off norm's, and x the residual stream. */
static int run_layers(tsr_runner_t *r, const struct tsr_batch_meta *meta, int T)
{
    const struct tsr_model_config *c = &r->cfg;
    tsr_backend_t *b = r->b;
    int D = c->dim, n_local = r->layer_end - r->layer_begin;
    float eps = c->norm_eps;
    size_t hidden = (size_t)T * D;
    TRY(tsr_op_rmsnorm(b, r->xn, r->x, &r->layers[0].attn_norm, T, D, eps));
    for (int l = 0; l < n_local; l++) {
        struct layer *L = &r->layers[l];
        /* attention block: xn is attn_norm(x); this rank's heads */
        if (L->wkv_a.buf) {
            TRY(mla_attention(r, L, meta, T));
        } else {
            tsr_buf_t *qkv[3] = {r->q, r->k, r->v};
            const struct tsr_weight *wqkv[3] = {&L->wq, &L->wk, &L->wv};
            const struct tsr_weight *bqkv[3] = {opt(&L->bq), opt(&L->bk), opt(&L->bv)};
            TRY(tsr_op_matmul_many(b, 3, qkv, wqkv, bqkv, r->xn, T));
            if (L->q_norm.buf) { /* per head: q is (T * n_head) rows of head_dim */
                TRY(tsr_op_rmsnorm(b, r->q, r->q, &L->q_norm, T * r->n_head, c->head_dim, eps));
                TRY(tsr_op_rmsnorm(b, r->k, r->k, &L->k_norm, T * r->n_kv_head, c->head_dim, eps));
            }
            TRY(tsr_op_rope_kv_write(b, r->q, r->k, r->v, L->k_cache, L->v_cache, &r->shape, meta));
            TRY(tsr_op_attention(b, r->att, r->q, L->k_cache, L->v_cache, &r->shape, meta));
        }
        TRY(tsr_op_matmul(b, r->o, &L->wo, r->att, NULL, T));
        TRY(tp_sum(r, r->o, hidden));
        TRY(tsr_op_add_rmsnorm(b, r->x, r->o, r->xn, &L->ffn_norm, T, D, eps));
        /* MLP block: xn is ffn_norm(x); this rank's intermediate features, or the experts */
        if (L->experts && r->ep_size > 1) {
            TRY(tsr_op_moe_ep(b, r->o, r->xn, &L->moe, T, &r->moe_ep));
        } else if (L->experts) {
            TRY(tsr_op_moe(b, r->o, r->xn, &L->moe, T));
        } else {
            TRY(tsr_op_matmul_swiglu(b, r->gate, r->up, &L->w_gate, &L->w_up, r->xn, T));
            TRY(tsr_op_matmul(b, r->o, &L->w_down, r->gate, NULL, T));
            TRY(tp_sum(r, r->o, hidden));
        }
        /* the residual add fused with the next block's norm (or the final norm) */
        const struct tsr_weight *next = l + 1 < n_local ? &r->layers[l + 1].attn_norm
                                        : r->has_head   ? &r->output_norm
                                                        : &r->next_norm;
        TRY(tsr_op_add_rmsnorm(b, r->x, r->o, r->xn, next, T, D, eps));
    }
    return 0;
}

/* Whether the logit rows are the step's tokens in order (a decode step): the head then reads xn
 * as it is, with no gather. */
static int rows_in_order(const struct tsr_step *st)
{
    if (st->n_out != st->n_tokens) return 0;
    for (int i = 0; i < st->n_out; i++)
        if (st->out_rows[i] != i) return 0;
    return 1;
}

/* What a step returns: the logits to the host, or (one rank only) ids taken where the logits
 * are: the argmax, or with p a sample and its logprob. */
struct step_out {
    float *logits;
    int32_t *ids;
    const struct tsr_sample_params *p;
    float *logprobs;
    int top; /* with p: also each row's top most likely tokens */
    int32_t *top_ids;
    float *top_lps;
};

/* The n rows of r->logits delivered as o asks. */
static int deliver(tsr_runner_t *r, int n, const struct step_out *o)
{
    int V = r->cfg.n_vocab;
    if (o->p && o->top > 0) {
        int rc = tsr_op_top_logprobs(r->b, r->logits, n, V, o->top, o->top_ids, o->top_lps);
        if (rc) return rc;
    }
    if (o->p) return tsr_op_sample(r->b, r->logits, n, V, o->p, o->ids, o->logprobs);
    if (o->ids) return tsr_op_argmax(r->b, r->logits, n, V, o->ids);
    return collect_logits(r, n, o->logits);
}

/* The forward pass of this rank's part. Logits land in o->logits on the last stage's ranks, or
 * become ids on the backend (one rank only). */
static int forward_local(tsr_runner_t *r, const struct tsr_step *st, const struct step_out *o)
{
    const struct tsr_model_config *c = &r->cfg;
    tsr_backend_t *b = r->b;
    int T = st->n_tokens, D = c->dim;
    size_t hidden = (size_t)T * D;
    struct tsr_batch_meta meta = {.n_tokens = T,
                                  .n_seqs = st->n_seqs,
                                  .max_blocks = st->max_blocks,
                                  .pos = st->pos,
                                  .seq = st->seq,
                                  .slot = r->slot,
                                  .block_tables = st->block_tables};

    if (r->has_embedding) {
        /* Vocab-parallel embedding: rows this rank does not hold are zero, then the sum. */
        for (int t = 0; t < T; t++)
            r->local_ids[t] = st->ids[t] >= r->vocab_begin && st->ids[t] < r->vocab_end
                                  ? (int32_t)(st->ids[t] - r->vocab_begin)
                                  : -1;
        TRY(tsr_op_embed(b, r->x, &r->tok_embd, r->local_ids, T));
        TRY(tp_sum(r, r->x, hidden));
    } else {
        TRY(tsr_comm_recv(r->world, r->x, 0, hidden * sizeof(float), step_source(r)));
    }
    TRY(run_layers(r, &meta, T));
    if (!r->has_head) return 0; /* the caller hands x on to the next stage (handoff) */
    if (st->n_out == 0) return tsr_backend_sync(b);
    tsr_buf_t *h = r->xn;
    if (!rows_in_order(st)) {
        TRY(tsr_op_gather_rows(b, r->h_out, r->xn, st->out_rows, st->n_out, D));
        h = r->h_out;
    }
    TRY(tsr_op_matmul(b, r->logits, &r->output, h, NULL, st->n_out));
    return deliver(r, st->n_out, o);
}

/* ---- decode graphs ---- */

/* Rows a step of T decode tokens is padded to: exact up to 8 (the GEMV kernels' sizes), then
 * multiples of 16 up to 128 and of 64 beyond, so a few graphs cover every batch. */
static int graph_rows(int T)
{
    if (T <= 8) return T;
    return T <= 128 ? (T + 15) / 16 * 16 : (T + 63) / 64 * 64;
}

/* A step the graphs take: one rank with graphs on, and a decode step: one token per sequence (in
 * sequence order), each token's logits wanted, in order. */
static int graphable(const tsr_runner_t *r, const struct tsr_step *st)
{
    if (!r->graphs || !rows_in_order(st) || graph_rows(st->n_tokens) > r->opts.max_tokens) return 0;
    for (int t = 1; t < st->n_tokens; t++)
        if (st->seq[t] <= st->seq[t - 1]) return 0;
    return 1;
}

/* The recorded part of a graphed step: the layers and the LM head over all `rows` rows. */
static int graph_body(tsr_runner_t *r, const struct tsr_batch_meta *meta, int rows)
{
    TRY(run_layers(r, meta, rows));
    return tsr_op_matmul(r->b, r->logits, &r->output, r->xn, NULL, rows);
}

/* The slot for (rows, width), a free or the least recently used one when new. */
static struct graph_slot *graph_slot(tsr_runner_t *r, int rows, int width)
{
    struct graph_slot *lru = &r->gslots[0];
    for (int i = 0; i < MAX_GRAPHS; i++) {
        struct graph_slot *g = &r->gslots[i];
        if (g->runs && g->rows == rows && g->width == width) return g;
        if (!g->runs || (lru->runs && g->used < lru->used)) lru = g;
    }
    tsr_graph_free(lru->g);
    *lru = (struct graph_slot){.rows = rows, .width = width};
    return lru;
}

/* Records the body into g->g (the stream is released even when an op fails) and launches it. */
static int graph_record(tsr_runner_t *r, struct graph_slot *g, const struct tsr_batch_meta *meta)
{
    TRY(tsr_graph_begin(r->b));
    int rc = graph_body(r, meta, g->rows);
    tsr_graph_t *made = NULL;
    int rc_end = tsr_graph_end(r->b, &made);
    if (rc || rc_end) {
        tsr_graph_free(made);
        return rc ? rc : rc_end;
    }
    g->g = made;
    return tsr_graph_launch(g->g);
}

/* A decode step through a graph. The T tokens are padded to R rows whose K and V go to the spare
 * block n_blocks and whose logits are never read; each row gets its own block-table row, W blocks
 * wide (a power of two covering every token's position). */
static int forward_graph(tsr_runner_t *r, const struct tsr_step *st, const struct step_out *o)
{
    int T = st->n_tokens, R = graph_rows(T), bs = r->opts.block_size, spare = r->opts.n_blocks;
    int need = 1, W = 1;
    for (int t = 0; t < T; t++)
        if (st->pos[t] / bs + 1 > need) need = st->pos[t] / bs + 1;
    while (W < need) W *= 2;
    size_t n_dev = 3 * (size_t)R + (size_t)R * W; /* pos, seq, slot, block tables */
    if (R + n_dev > r->gpack_cap) {
        int32_t *p = realloc(r->gpack, (R + n_dev) * sizeof *p);
        if (!p) return tsr_errorf(TSR_ENOMEM, "out of memory for a decode step");
        r->gpack = p;
        r->gpack_cap = R + n_dev;
    }
    if (!r->gmeta || tsr_buf_size(r->gmeta) < n_dev * sizeof(int32_t)) {
        /* The graphs read the old buffer: record them again against the new one. */
        free_graphs(r);
        tsr_buf_free(r->gmeta);
        r->gmeta = tsr_buf_alloc(r->b, 2 * n_dev * sizeof(int32_t));
        if (!r->gmeta) return TSR_ENOMEM;
    }
    int32_t *ids_in = r->gpack, *pos = ids_in + R, *seq = pos + R, *slot = seq + R, *bt = slot + R;
    for (int t = 0; t < R; t++) {
        int real = t < T, nb = real ? st->pos[t] / bs + 1 : 0;
        ids_in[t] = real ? st->ids[t] : 0;
        pos[t] = real ? st->pos[t] : 0;
        seq[t] = t;
        slot[t] = real ? r->slot[t] : spare * bs;
        int32_t *row = bt + (size_t)t * W;
        if (real)
            memcpy(row, st->block_tables + (size_t)st->seq[t] * st->max_blocks,
                   (size_t)nb * sizeof *row);
        for (int j = nb; j < W; j++) row[j] = spare;
    }
    TRY(tsr_buf_set(r->gmeta, 0, pos, n_dev * sizeof(int32_t)));
    TRY(tsr_op_embed(r->b, r->x, &r->tok_embd, ids_in, R));
    struct tsr_batch_meta meta = {.n_tokens = R,
                                  .n_seqs = R,
                                  .max_blocks = W,
                                  .pos = pos,
                                  .seq = seq,
                                  .slot = slot,
                                  .block_tables = bt,
                                  .dev = r->gmeta,
                                  .pos_bound = W * bs};
    struct graph_slot *g = graph_slot(r, R, W);
    g->used = ++r->gclock;
    if (g->g)
        TRY(tsr_graph_launch(g->g));
    else if (g->runs++ == 0)
        TRY(graph_body(r, &meta, R));
    else
        TRY(graph_record(r, g, &meta));
    return deliver(r, T, o);
}

/* One rank's step: through a graph when it can. */
static int forward_one(tsr_runner_t *r, const struct tsr_step *st, const struct step_out *o)
{
    return graphable(r, st) ? forward_graph(r, st, o) : forward_local(r, st, o);
}

/* The last stage's first rank sends the logits to the leader when they are not one rank. */
static int logits_home(const tsr_runner_t *r)
{
    return (r->pp_size - 1) * r->ep_size;
}

/* A sampled step's picks, as the logits home sends them: n ids, their n logprobs, then top ids
 * and top logprobs per row (all 4-byte values). */
static size_t picks_bytes(int n, int top)
{
    return (size_t)n * (2 + 2 * (size_t)top) * sizeof(int32_t);
}

/* (n_out, n_vocab) floats of host scratch. */
static float *host_logits(tsr_runner_t *r, int n_out)
{
    size_t need = (size_t)(n_out > 0 ? n_out : 1) * r->cfg.n_vocab;
    if (need > r->host_logits_cap) {
        float *p = realloc(r->host_logits, need * sizeof *p);
        if (!p) {
            tsr_errorf(TSR_ENOMEM, "out of memory for %zu logits", need);
            return NULL;
        }
        r->host_logits = p;
        r->host_logits_cap = need;
    }
    return r->host_logits;
}

/* The logits home of a group: samples st's n_out rows of host logits with st->sample, as the
 * device sampler would (tsr_sample_row, tsr_top_logprobs; -1 and -inf past a row's tokens), into
 * r->picks. */
static int sample_host(tsr_runner_t *r, const struct tsr_step *st, const float *logits)
{
    int n = st->n_out, top = st->top, V = r->cfg.n_vocab;
    if (!r->idx) r->idx = malloc((size_t)V * sizeof *r->idx);
    if (!r->prob) r->prob = malloc((size_t)V * sizeof *r->prob);
    if (!r->idx || !r->prob) return tsr_errorf(TSR_ENOMEM, "out of memory for a sampler");
    TRY(tsr_step_msg_reserve(&r->picks, picks_bytes(n, top)));
    int32_t *ids = r->picks.buf, *tids = ids + 2 * (size_t)n;
    float *lps = (float *)(ids + n), *tlps = (float *)(tids + (size_t)n * top);
    for (int i = 0; i < n; i++) {
        const float *row = logits + (size_t)i * V;
        ids[i] = tsr_sample_row(&st->sample[i], row, V, r->idx, r->prob, &lps[i]);
        int k =
            top ? tsr_top_logprobs(row, V, top, tids + (size_t)i * top, tlps + (size_t)i * top) : 0;
        for (int j = k; j < top; j++) {
            tids[(size_t)i * top + j] = -1;
            tlps[(size_t)i * top + j] = -INFINITY;
        }
    }
    return 0;
}

/* Passes the step in r->msg and its n_tokens rows of activations in x on to the next stage. */
static int handoff(tsr_runner_t *r, int n_tokens)
{
    int next = step_next(r);
    TRY(tsr_step_send(r->world, &r->msg, next));
    return tsr_comm_send(r->world, r->x, 0, (size_t)n_tokens * r->cfg.dim * sizeof(float), next);
}

int tsr_runner_depth(const tsr_runner_t *r)
{
    return r->world_size > 1 ? r->pp_size : 1;
}

static int launch_step(tsr_runner_t *r, const struct tsr_step *st)
{
    if (r->world_size == 1 || r->world_rank != 0)
        return tsr_errorf(TSR_EINVAL, "only a group's leader launches steps");
    if (r->n_fl == r->pp_size || (r->n_fl && !r->fl[r->n_fl - 1].handed))
        return tsr_errorf(TSR_EINVAL, "%d steps in flight: collect one first", r->n_fl);
    TRY(check_step(r, st));
    TRY(tsr_step_pack(st, &r->msg));
    for (int p = 1; p < r->ep_size; p++) TRY(tsr_step_send(r->world, &r->msg, p));
    struct flight *f = &r->fl[r->n_fl];
    *f = (struct flight){st->n_tokens, st->n_out, st->sample != NULL, st->sample ? st->top : 0, 1};
    if (logits_home(r) == 0) { /* one stage: the leader holds the logits too */
        float *host = host_logits(r, st->n_out);
        if (!host) return TSR_ENOMEM;
        TRY(forward_local(r, st, &(struct step_out){.logits = host}));
        if (st->sample && st->n_out > 0) TRY(sample_host(r, st, host));
        r->n_fl++;
        return 0;
    }
    TRY(forward_local(r, st, &(struct step_out){0}));
    /* down the stages at once while one stage ahead is free; else after the oldest comes back
     * (tsr_runner_collect), so that the last stage's answer is never waiting on this send */
    f->handed = r->n_fl < r->pp_size - 1;
    r->n_fl++;
    return f->handed ? handoff(r, st->n_tokens) : 0;
}

static int collect_step(tsr_runner_t *r, float *logits, int32_t *ids, float *logprobs,
                        int32_t *top_ids, float *top_lps)
{
    if (!r->n_fl) return tsr_errorf(TSR_EINVAL, "no step in flight");
    struct flight f = r->fl[0];
    int home = logits_home(r), V = r->cfg.n_vocab;
    if (!f.handed) TRY(handoff(r, f.n_tokens));
    if (home != 0 && f.n_out > 0) {
        size_t nb = f.sample ? picks_bytes(f.n_out, f.top) : (size_t)f.n_out * V * sizeof(float);
        if (f.sample || !logits) TRY(tsr_step_msg_reserve(&r->picks, nb));
        TRY(tsr_comm_recv_host(r->world, f.sample || !logits ? r->picks.buf : (void *)logits, nb,
                               home));
        r->bytes_back += nb;
    } else if (home == 0 && !f.sample && f.n_out > 0 && logits) {
        memcpy(logits, r->host_logits, (size_t)f.n_out * V * sizeof *logits);
    }
    memmove(r->fl, r->fl + 1, (size_t)(r->n_fl - 1) * sizeof *r->fl);
    r->n_fl--;
    if (r->n_fl && !r->fl[r->n_fl - 1].handed) { /* room ahead now */
        r->fl[r->n_fl - 1].handed = 1;
        TRY(handoff(r, r->fl[r->n_fl - 1].n_tokens));
    }
    if (!f.sample || !f.n_out || !ids) return 0;
    const int32_t *pi = r->picks.buf, *ti = pi + 2 * (size_t)f.n_out;
    const float *pl = (const float *)(pi + f.n_out),
                *tl = (const float *)(ti + (size_t)f.n_out * f.top);
    memcpy(ids, pi, (size_t)f.n_out * sizeof *ids);
    if (logprobs) memcpy(logprobs, pl, (size_t)f.n_out * sizeof *logprobs);
    if (f.top && top_ids) {
        memcpy(top_ids, ti, (size_t)f.n_out * f.top * sizeof *top_ids);
        memcpy(top_lps, tl, (size_t)f.n_out * f.top * sizeof *top_lps);
    }
    return 0;
}

int tsr_runner_launch(tsr_runner_t *r, const struct tsr_step *st)
{
    if (r->failed) return tsr_errorf(TSR_EUNAVAILABLE, "the group failed at an earlier step");
    int rc = launch_step(r, st);
    if (rc && r->world_size > 1 && r->world_rank == 0) r->failed = 1;
    return rc;
}

int tsr_runner_collect(tsr_runner_t *r, float *logits, int32_t *ids, float *logprobs,
                       int32_t *top_ids, float *top_lps)
{
    if (r->failed) return tsr_errorf(TSR_EUNAVAILABLE, "the group failed at an earlier step");
    int rc = collect_step(r, logits, ids, logprobs, top_ids, top_lps);
    if (rc && r->n_fl) r->failed = 1;
    return rc;
}

int tsr_runner_forward(tsr_runner_t *r, const struct tsr_step *st, float *logits)
{
    if (r->world_size == 1) {
        TRY(check_step(r, st));
        return forward_one(r, st, &(struct step_out){.logits = logits});
    }
    struct tsr_step plain = *st; /* checked by the launch */
    plain.sample = NULL;
    TRY(tsr_runner_launch(r, &plain));
    return tsr_runner_collect(r, logits, NULL, NULL, NULL, NULL);
}

int tsr_runner_follow(tsr_runner_t *r)
{
    if (r->world_size == 1 || r->world_rank == 0)
        return tsr_errorf(TSR_EINVAL, "tsr_runner_follow is for the followers of a group");
    float *logits = NULL;
    int rc = 0, src = step_source(r), next = step_next(r);
    if (r->has_head &&
        !(logits = malloc((size_t)r->opts.max_tokens * r->cfg.n_vocab * sizeof(float))))
        return tsr_errorf(TSR_ENOMEM, "out of memory for logits");
    for (;;) {
        struct tsr_step st;
        enum tsr_step_kind kind;
        if ((rc = tsr_step_recv(r->world, src, &r->msg, &r->params, &st, &kind))) break;
        if (kind != TSR_STEP_RUN) { /* stop or idle: passed on down the stages */
            if (next >= 0 && (rc = tsr_step_send(r->world, &r->msg, next))) break;
            if (kind == TSR_STEP_STOP) break;
            continue;
        }
        /* Every rank checked the same step on the leader's side; a follower that disagrees is
         * out of step with its group, and stops. */
        struct step_out o = {.logits = logits};
        if ((rc = check_step(r, &st)) || (rc = forward_local(r, &st, &o))) break;
        if (next >= 0) {
            if ((rc = handoff(r, st.n_tokens))) break;
            continue;
        }
        if (r->world_rank != logits_home(r) || st.n_out == 0) continue;
        if (st.sample) { /* the picks alone go back */
            if ((rc = sample_host(r, &st, logits)) ||
                (rc = tsr_comm_send_host(r->world, r->picks.buf, picks_bytes(st.n_out, st.top), 0)))
                break;
        } else if ((rc = tsr_comm_send_host(
                        r->world, logits, (size_t)st.n_out * r->cfg.n_vocab * sizeof(float), 0))) {
            break;
        }
    }
    free(logits);
    return rc;
}

int tsr_runner_forward_argmax(tsr_runner_t *r, const struct tsr_step *st, int32_t *ids)
{
    if (r->world_size == 1) { /* the argmax where the logits are: only the ids come back */
        TRY(check_step(r, st));
        struct step_out o = {.ids = ids};
        return forward_one(r, st, &o);
    }
    size_t V = (size_t)r->cfg.n_vocab;
    if (!host_logits(r, st->n_out)) return TSR_ENOMEM;
    TRY(tsr_runner_forward(r, st, r->host_logits));
    for (int i = 0; i < st->n_out; i++) ids[i] = tsr_argmax(r->host_logits + (size_t)i * V, (int)V);
    return 0;
}

int tsr_runner_samples_on_device(const tsr_runner_t *r)
{
    return r->world_size > 1 || tsr_backend_can_sample(r->b);
}

int tsr_runner_top_logprobs_on_device(const tsr_runner_t *r)
{
    return r->world_size > 1 ||
           (tsr_backend_can_sample(r->b) && tsr_backend_can_top_logprobs(r->b));
}

uint64_t tsr_runner_bytes_back(const tsr_runner_t *r)
{
    return r->bytes_back;
}

int tsr_runner_forward_sample(tsr_runner_t *r, const struct tsr_step *st,
                              const struct tsr_sample_params *p, int32_t *ids, float *logprobs,
                              int top, int32_t *top_ids, float *top_lps)
{
    if (!tsr_runner_samples_on_device(r))
        return tsr_errorf(TSR_EUNSUPPORTED, "this runner samples on the host");
    if (top > 0 && !tsr_runner_top_logprobs_on_device(r))
        return tsr_errorf(TSR_EUNSUPPORTED, "this runner gives top logprobs on the host");
    if (r->world_size > 1) { /* checked by the launch */
        struct tsr_step s2 = *st;
        s2.sample = p;
        s2.top = top;
        TRY(tsr_runner_launch(r, &s2));
        return tsr_runner_collect(r, NULL, ids, logprobs, top_ids, top_lps);
    }
    TRY(check_step(r, st));
    struct step_out o = {.ids = ids,
                         .p = p,
                         .logprobs = logprobs,
                         .top = top,
                         .top_ids = top_ids,
                         .top_lps = top_lps};
    return forward_one(r, st, &o);
}
