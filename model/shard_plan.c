#include "model/shard_plan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/status.h"

static int check_config(const struct tsr_model_config *c)
{
    if (c->n_layer <= 0 || c->dim <= 0 || c->ffn_dim <= 0 || c->n_head <= 0 || c->n_kv_head <= 0 ||
        c->head_dim <= 0 || c->n_vocab <= 0)
        return tsr_errorf(TSR_EINVAL,
                          "shard plan: config sizes must be positive (layers %d, dim %d, ffn %d, "
                          "heads %d, KV heads %d, head dim %d, vocab %d)",
                          c->n_layer, c->dim, c->ffn_dim, c->n_head, c->n_kv_head, c->head_dim,
                          c->n_vocab);
    if (c->n_head % c->n_kv_head)
        return tsr_errorf(TSR_EINVAL,
                          "shard plan: %d attention heads do not group into %d KV heads", c->n_head,
                          c->n_kv_head);
    return 0;
}

/* FFN features are split in blocks of this many, so block formats split on block boundaries. */
static int64_t ffn_granule(const struct tsr_model_config *c)
{
    return c->ffn_dim % TSR_QK == 0 ? TSR_QK : 1;
}

/* The same for the shared expert's features. */
static int64_t shared_granule(const struct tsr_model_config *c)
{
    return c->shared_ffn_dim % TSR_QK == 0 ? TSR_QK : 1;
}

static int64_t vocab_stride(const struct tsr_model_config *c, int tp)
{
    return ((int64_t)c->n_vocab + tp - 1) / tp;
}

int tsr_shard_plan_check_tp(const struct tsr_model_config *c, int tp)
{
    int rc = check_config(c);
    if (rc) return rc;
    if (tp < 1) return tsr_errorf(TSR_EINVAL, "tp=%d: tensor parallelism must be at least 1", tp);
    if (c->n_head % tp)
        return tsr_errorf(TSR_EINVAL, "tp=%d does not divide %d attention heads", tp, c->n_head);
    if (tp <= c->n_kv_head && c->n_kv_head % tp)
        return tsr_errorf(TSR_EINVAL, "tp=%d does not divide %d KV heads", tp, c->n_kv_head);
    if (tp > c->n_kv_head && tp % c->n_kv_head)
        return tsr_errorf(TSR_EINVAL,
                          "tp=%d is not a multiple of %d KV heads (when tp exceeds the KV heads, "
                          "each is replicated on tp/%d ranks)",
                          tp, c->n_kv_head, c->n_kv_head);
    int64_t g = ffn_granule(c), nb = c->ffn_dim / g;
    if (tp > nb && (c->n_expert == 0 || c->n_dense_layer > 0)) /* a dense MLP to slice */
        return tsr_errorf(TSR_EINVAL, "tp=%d exceeds the %lld %s of the FFN (%d features)", tp,
                          (long long)nb, g > 1 ? "32-element blocks" : "features", c->ffn_dim);
    if (c->n_expert > 0 && c->n_expert % tp)
        return tsr_errorf(TSR_EINVAL,
                          "tp=%d does not divide %d experts (every rank of a stage holds an equal "
                          "share of them: ep is a multiple of tp)",
                          tp, c->n_expert);
    int64_t sg = shared_granule(c);
    if (c->shared_ffn_dim > 0 && tp > c->shared_ffn_dim / sg)
        return tsr_errorf(TSR_EINVAL,
                          "tp=%d exceeds the %lld %s of the shared expert (%d features)", tp,
                          (long long)(c->shared_ffn_dim / sg),
                          sg > 1 ? "32-element blocks" : "features", c->shared_ffn_dim);
    if ((int64_t)(tp - 1) * vocab_stride(c, tp) >= c->n_vocab)
        return tsr_errorf(
            TSR_EINVAL, "tp=%d leaves the last rank no vocabulary rows (%d rows in slices of %lld)",
            tp, c->n_vocab, (long long)vocab_stride(c, tp));
    return 0;
}

/* ---- the per-rank ranges ---- */

struct ranges {
    int q0, q1, k0, k1;
    int64_t f0, f1, v0, v1;
    int64_t s0, s1; /* shared expert features */
    int e0, e1;     /* routed experts */
};

static struct ranges tp_ranges(const struct tsr_model_config *c, int tp, int r)
{
    struct ranges x;
    x.q0 = r * (c->n_head / tp);
    x.q1 = x.q0 + c->n_head / tp;
    if (tp <= c->n_kv_head) {
        x.k0 = r * (c->n_kv_head / tp);
        x.k1 = x.k0 + c->n_kv_head / tp;
    } else {
        x.k0 = (int)((int64_t)r * c->n_kv_head / tp);
        x.k1 = x.k0 + 1;
    }
    int64_t g = ffn_granule(c), nb = c->ffn_dim / g;
    x.f0 = (int64_t)r * nb / tp * g;
    x.f1 = (int64_t)(r + 1) * nb / tp * g;
    int64_t vs = vocab_stride(c, tp);
    x.v0 = r * vs;
    x.v1 = (r + 1) * vs < c->n_vocab ? (r + 1) * vs : c->n_vocab;
    int64_t sg = shared_granule(c), ns = c->shared_ffn_dim / sg;
    x.s0 = (int64_t)r * ns / tp * sg;
    x.s1 = (int64_t)(r + 1) * ns / tp * sg;
    x.e0 = 0;
    x.e1 = c->n_expert;
    return x;
}

/* Rank j of a stage of ep ranks: the TP ranges of its tp rank j % tp, experts by its ep rank j. */
static struct ranges stage_ranges(const struct tsr_model_config *c, int tp, int ep, int j)
{
    struct ranges x = tp_ranges(c, tp, j % tp);
    x.e0 = j * (c->n_expert / ep);
    x.e1 = x.e0 + c->n_expert / ep;
    return x;
}

/* Parameters of one layer, of the embedding slice and of the head (slice + output norm) on a TP
 * rank; the head of a tied pp = 1 model shares the embedding slice. */
static double attn_params(const struct tsr_model_config *c, const struct ranges *x)
{
    double d = c->dim, h = x->q1 - x->q0;
    if (c->kv_lora_rank > 0) {
        double qr = c->q_lora_rank, kr = c->kv_lora_rank, qk = c->head_dim;
        double q = qr > 0 ? d * qr + qr + qr * h * qk : d * h * qk;
        return q + d * (kr + c->qk_rope_head_dim) + kr +
               kr * h * (c->qk_nope_head_dim + c->v_head_dim) + h * c->v_head_dim * d;
    }
    double hd = c->head_dim, q = h * hd, kv = (x->k1 - x->k0) * hd;
    return 2 * q * d + 2 * kv * d + (c->qkv_bias ? q + 2 * kv : 0);
}

/* moe: the layer has experts (router replicated, this rank's experts, its shared slice). */
static double layer_params(const struct tsr_model_config *c, const struct ranges *x, int moe)
{
    double d = c->dim;
    double ffn = moe ? (double)c->n_expert * d + 3.0 * (x->e1 - x->e0) * c->moe_ffn_dim * d +
                           3.0 * (double)(x->s1 - x->s0) * d + (c->shared_expert_gate ? d : 0)
                     : 3 * (double)(x->f1 - x->f0) * d;
    return 2 * d + attn_params(c, x) + ffn;
}

static int is_moe_layer(const struct tsr_model_config *c, int l)
{
    return c->n_expert > 0 && l >= c->n_dense_layer;
}

static double model_params(const struct tsr_model_config *c)
{
    struct ranges all = tp_ranges(c, 1, 0);
    double emb = (double)c->n_vocab * c->dim;
    int n_moe = tsr_config_n_moe_layer(c);
    return (c->n_layer - n_moe) * layer_params(c, &all, 0) + n_moe * layer_params(c, &all, 1) +
           emb * (c->tied_embeddings ? 1 : 2) + c->dim;
}

/* Splits n_layer into pp contiguous stages, at least one layer each, minimizing the largest
 * stage's parameters (layer cost lc, extras e0 on stage 0 and eN on the last). Adding each layer
 * to the currently lightest stage is optimal for this min-max; O(n_layer * pp). */
static void balance_layers(int n_layer, int pp, double lc, double e0, double eN, int *count)
{
    for (int s = 0; s < pp; s++) count[s] = 1;
    for (int l = pp; l < n_layer; l++) {
        int best = 0;
        double best_cost = 0;
        for (int s = 0; s < pp; s++) {
            double cost = count[s] * lc + (s == 0 ? e0 : 0) + (s == pp - 1 ? eN : 0);
            if (s == 0 || cost < best_cost) best = s, best_cost = cost;
        }
        count[best]++;
    }
}

static void put(struct tsr_rank_plan *r, const char *name, enum tsr_split split, int64_t offset,
                int64_t length, int64_t rows, int64_t cols)
{
    struct tsr_slice *s = &r->slices[r->n_slices++];
    snprintf(s->name, sizeof s->name, "%s", name);
    s->split = split;
    s->offset = offset;
    s->length = length;
    s->rows = rows;
    s->cols = cols;
    s->lm_head = 0;
    r->n_params += split == TSR_SPLIT_ROWS   ? (double)length * cols
                   : split == TSR_SPLIT_COLS ? (double)rows * length
                                             : (double)rows * cols;
}

/* MLA attention (llama.cpp's deepseek2 names): the latent projections and their norms are
 * replicated; q_b and kv_b are column-parallel by head, attn_output row-parallel by head. */
static void put_mla(struct tsr_rank_plan *r, const struct tsr_model_config *c,
                    const struct ranges *x, int l)
{
    int64_t d = c->dim, h = c->n_head, qk = c->head_dim, qr = c->q_lora_rank;
    int64_t kr = c->kv_lora_rank, kvb = c->qk_nope_head_dim + c->v_head_dim, v = c->v_head_dim;
    int64_t h0 = x->q0, hl = x->q1 - x->q0;
    char n[64];
#define NAME(suffix) (snprintf(n, sizeof n, "blk.%d." suffix, l), n)
    if (qr > 0) {
        put(r, NAME("attn_q_a.weight"), TSR_SPLIT_NONE, 0, qr, qr, d);
        put(r, NAME("attn_q_a_norm.weight"), TSR_SPLIT_NONE, 0, qr, 1, qr);
        put(r, NAME("attn_q_b.weight"), TSR_SPLIT_ROWS, h0 * qk, hl * qk, h * qk, qr);
    } else {
        put(r, NAME("attn_q.weight"), TSR_SPLIT_ROWS, h0 * qk, hl * qk, h * qk, d);
    }
    put(r, NAME("attn_kv_a_mqa.weight"), TSR_SPLIT_NONE, 0, kr + c->qk_rope_head_dim,
        kr + c->qk_rope_head_dim, d);
    put(r, NAME("attn_kv_a_norm.weight"), TSR_SPLIT_NONE, 0, kr, 1, kr);
    put(r, NAME("attn_kv_b.weight"), TSR_SPLIT_ROWS, h0 * kvb, hl * kvb, h * kvb, kr);
    put(r, NAME("attn_output.weight"), TSR_SPLIT_COLS, h0 * v, hl * v, d, h * v);
#undef NAME
}

/* An expert layer: the router (replicated), this rank's whole experts as row ranges of the
 * stacked tensors, the shared expert split like a dense FFN. */
static void put_moe(struct tsr_rank_plan *r, const struct tsr_model_config *c,
                    const struct ranges *x, int l)
{
    int64_t d = c->dim, E = c->n_expert, mf = c->moe_ffn_dim, sf = c->shared_ffn_dim;
    int64_t e0 = x->e0, el = x->e1 - x->e0;
    char n[64];
#define NAME(suffix) (snprintf(n, sizeof n, "blk.%d." suffix, l), n)
    put(r, NAME("ffn_gate_inp.weight"), TSR_SPLIT_NONE, 0, E, E, d);
    put(r, NAME("ffn_gate_exps.weight"), TSR_SPLIT_ROWS, e0 * mf, el * mf, E * mf, d);
    put(r, NAME("ffn_up_exps.weight"), TSR_SPLIT_ROWS, e0 * mf, el * mf, E * mf, d);
    put(r, NAME("ffn_down_exps.weight"), TSR_SPLIT_ROWS, e0 * d, el * d, E * d, mf);
    if (sf > 0) {
        put(r, NAME("ffn_gate_shexp.weight"), TSR_SPLIT_ROWS, x->s0, x->s1 - x->s0, sf, d);
        put(r, NAME("ffn_up_shexp.weight"), TSR_SPLIT_ROWS, x->s0, x->s1 - x->s0, sf, d);
        put(r, NAME("ffn_down_shexp.weight"), TSR_SPLIT_COLS, x->s0, x->s1 - x->s0, d, sf);
    }
    if (c->shared_expert_gate)
        put(r, NAME("ffn_gate_inp_shexp.weight"), TSR_SPLIT_NONE, 0, d, 1, d);
#undef NAME
}

static void put_layer(struct tsr_rank_plan *r, const struct tsr_model_config *c,
                      const struct ranges *x, int l)
{
    int64_t hd = c->head_dim, d = c->dim, q = (int64_t)c->n_head * hd;
    int64_t kv = (int64_t)c->n_kv_head * hd, f = c->ffn_dim;
    int64_t qo = x->q0 * hd, ql = (x->q1 - x->q0) * hd, ko = x->k0 * hd, kl = (x->k1 - x->k0) * hd;
    char n[64];
#define NAME(suffix) (snprintf(n, sizeof n, "blk.%d." suffix, l), n)
    put(r, NAME("attn_norm.weight"), TSR_SPLIT_NONE, 0, d, 1, d);
    if (c->kv_lora_rank > 0) {
        put_mla(r, c, x, l);
    } else {
        put(r, NAME("attn_q.weight"), TSR_SPLIT_ROWS, qo, ql, q, d);
        put(r, NAME("attn_k.weight"), TSR_SPLIT_ROWS, ko, kl, kv, d);
        put(r, NAME("attn_v.weight"), TSR_SPLIT_ROWS, ko, kl, kv, d);
        if (c->qkv_bias) {
            put(r, NAME("attn_q.bias"), TSR_SPLIT_COLS, qo, ql, 1, q);
            put(r, NAME("attn_k.bias"), TSR_SPLIT_COLS, ko, kl, 1, kv);
            put(r, NAME("attn_v.bias"), TSR_SPLIT_COLS, ko, kl, 1, kv);
        }
        put(r, NAME("attn_output.weight"), TSR_SPLIT_COLS, qo, ql, d, q);
    }
    put(r, NAME("ffn_norm.weight"), TSR_SPLIT_NONE, 0, d, 1, d);
    if (is_moe_layer(c, l)) {
        put_moe(r, c, x, l);
    } else {
        put(r, NAME("ffn_gate.weight"), TSR_SPLIT_ROWS, x->f0, x->f1 - x->f0, f, d);
        put(r, NAME("ffn_up.weight"), TSR_SPLIT_ROWS, x->f0, x->f1 - x->f0, f, d);
        put(r, NAME("ffn_down.weight"), TSR_SPLIT_COLS, x->f0, x->f1 - x->f0, d, f);
    }
#undef NAME
}

int tsr_shard_plan_make(const struct tsr_model_config *c, int tp, int pp, double bytes_per_weight,
                        double kv_bytes_per_elem, struct tsr_shard_plan *out)
{
    return tsr_shard_plan_make_ep(c, tp, 0, pp, bytes_per_weight, kv_bytes_per_elem, out);
}

int tsr_shard_plan_check_ep(const struct tsr_model_config *c, int tp, int ep)
{
    if (c->n_expert == 0) {
        if (ep != tp)
            return tsr_errorf(TSR_EINVAL,
                              "ep=%d: expert parallelism applies to mixture-of-experts models; "
                              "this one is dense",
                              ep);
        return 0;
    }
    if (ep < tp || ep % tp)
        return tsr_errorf(TSR_EINVAL,
                          "ep=%d is not a multiple of tp=%d (the experts of a stage are spread "
                          "over all its ranks, tp of them per attention group)",
                          ep, tp);
    if (c->n_expert % ep)
        return tsr_errorf(TSR_EINVAL, "ep=%d does not divide %d experts", ep, c->n_expert);
    return 0;
}

/* KV cache bytes per token of `layers` layers on one rank with KV heads [k0, k1). MLA caches one
 * latent (kv_lora_rank) and one RoPE key (qk_rope_head_dim) per token per layer, shared by all
 * heads, so every TP rank holds all of it. */
static double kv_per_token(const struct tsr_model_config *c, int layers, int kv_heads, double kvb)
{
    if (c->kv_lora_rank > 0) return (double)layers * (c->kv_lora_rank + c->qk_rope_head_dim) * kvb;
    return 2.0 * layers * kv_heads * c->head_dim * kvb;
}

int tsr_shard_plan_make_ep(const struct tsr_model_config *c, int tp, int ep, int pp,
                           double bytes_per_weight, double kv_bytes_per_elem,
                           struct tsr_shard_plan *out)
{
    memset(out, 0, sizeof *out);
    int rc = tsr_shard_plan_check_tp(c, tp);
    if (rc) return rc;
    if (ep == 0) ep = tp;
    if ((rc = tsr_shard_plan_check_ep(c, tp, ep))) return rc;
    if (pp < 1) return tsr_errorf(TSR_EINVAL, "pp=%d: pipeline stages must be at least 1", pp);
    if (pp > c->n_layer)
        return tsr_errorf(TSR_EINVAL, "pp=%d exceeds the %d layers (each stage holds at least one)",
                          pp, c->n_layer);
    if (!(bytes_per_weight > 0) || !(kv_bytes_per_elem > 0))
        return tsr_errorf(TSR_EINVAL,
                          "shard plan: bytes per weight (%g) and per KV element (%g) "
                          "must be positive",
                          bytes_per_weight, kv_bytes_per_elem);

    /* Balance by the fullest TP rank's parameters (ranks differ when FFN blocks or vocabulary
     * rows do not divide evenly). */
    /* A MoE model is balanced as if every layer cost an expert layer: its few leading dense
     * layers are lighter (Kimi K2: 0.5 B parameters against 17 B), which at worst leaves stage 0
     * a layer short of optimal; the fit below counts each stage's real bytes. */
    double lc = 0, e0 = 0, eN = 0;
    for (int t = 0; t < ep; t++) {
        struct ranges x = stage_ranges(c, tp, ep, t);
        double emb = (double)(x.v1 - x.v0) * c->dim;
        lc = fmax(lc, layer_params(c, &x, c->n_expert > 0));
        e0 = fmax(e0, emb);
        eN = fmax(eN, emb + c->dim);
    }
    int *count = malloc((size_t)pp * sizeof *count);
    out->ranks = calloc((size_t)ep * pp, sizeof *out->ranks);
    if (!count || !out->ranks) {
        free(count);
        free(out->ranks);
        out->ranks = NULL;
        return tsr_errorf(TSR_ENOMEM, "shard plan: out of memory");
    }
    balance_layers(c->n_layer, pp, lc, e0, eN, count);
    out->tp = tp;
    out->ep = ep;
    out->dp = ep / tp;
    out->pp = pp;
    out->world = ep * pp;
    out->bytes_per_weight = bytes_per_weight;
    out->kv_bytes_per_elem = kv_bytes_per_elem;
    out->n_params = model_params(c);

    int per_layer = c->n_expert > 0 || c->kv_lora_rank > 0 ? 20 : c->qkv_bias ? 12 : 9, layer = 0;
    for (int s = 0; s < pp; s++) {
        int lb = layer, le = layer + count[s];
        layer = le;
        for (int j = 0; j < ep; j++) {
            struct tsr_rank_plan *r = &out->ranks[s * ep + j];
            struct ranges x = stage_ranges(c, tp, ep, j);
            int t = j % tp;
            r->rank = s * ep + j;
            r->tp_rank = t;
            r->dp_rank = j / tp;
            r->ep_rank = j;
            r->expert_begin = x.e0, r->expert_end = x.e1;
            r->pp_stage = s;
            r->layer_begin = lb;
            r->layer_end = le;
            r->has_embedding = s == 0;
            r->has_head = s == pp - 1;
            r->q_head_begin = x.q0, r->q_head_end = x.q1;
            r->kv_head_begin = x.k0, r->kv_head_end = x.k1;
            r->ffn_begin = x.f0, r->ffn_end = x.f1;
            r->vocab_begin = x.v0, r->vocab_end = x.v1;
            r->vocab_stride = vocab_stride(c, tp);
            r->slices = malloc(((size_t)(le - lb) * per_layer + 3) * sizeof *r->slices);
            if (!r->slices) {
                free(count);
                tsr_shard_plan_free(out);
                return tsr_errorf(TSR_ENOMEM, "shard plan: out of memory");
            }
            int64_t vl = x.v1 - x.v0, V = c->n_vocab, d = c->dim;
            if (r->has_embedding) put(r, "token_embd.weight", TSR_SPLIT_ROWS, x.v0, vl, V, d);
            for (int l = lb; l < le; l++) put_layer(r, c, &x, l);
            if (r->has_head) {
                put(r, "output_norm.weight", TSR_SPLIT_NONE, 0, d, 1, d);
                if (c->tied_embeddings && r->has_embedding) {
                    r->slices[0].lm_head = 1; /* pp = 1: one slice, both roles */
                } else {
                    put(r, c->tied_embeddings ? "token_embd.weight" : "output.weight",
                        TSR_SPLIT_ROWS, x.v0, vl, V, d);
                    r->slices[r->n_slices - 1].lm_head = 1;
                }
            }
            r->weight_bytes = r->n_params * bytes_per_weight;
            r->kv_bytes_per_token = kv_per_token(c, le - lb, x.k1 - x.k0, kv_bytes_per_elem);
        }
    }
    free(count);
    return 0;
}

void tsr_shard_plan_free(struct tsr_shard_plan *p)
{
    if (!p) return;
    if (p->ranks)
        for (int i = 0; i < p->world; i++) free(p->ranks[i].slices);
    free(p->ranks);
    memset(p, 0, sizeof *p);
}

const struct tsr_slice *tsr_rank_plan_find(const struct tsr_rank_plan *r, const char *name)
{
    for (int i = 0; i < r->n_slices; i++)
        if (!strcmp(r->slices[i].name, name)) return &r->slices[i];
    return NULL;
}

int tsr_shard_plan_check_types(const struct tsr_shard_plan *p,
                               int (*type_of)(void *ctx, const char *name), void *ctx)
{
    for (int i = 0; i < p->world; i++) {
        const struct tsr_rank_plan *r = &p->ranks[i];
        for (int j = 0; j < r->n_slices; j++) {
            const struct tsr_slice *s = &r->slices[j];
            if (s->split != TSR_SPLIT_COLS) continue;
            int t = type_of(ctx, s->name);
            if (t < 0 || !tsr_dtype_valid(t)) continue;
            int64_t be = tsr_dtype_block_elems((enum tsr_dtype)t);
            if (be <= 1 || (s->offset % be == 0 && s->length % be == 0)) continue;
            int64_t at = s->offset % be ? s->offset : s->offset + s->length;
            return tsr_errorf(TSR_EINVAL,
                              "%s: tp=%d splits its %lld columns at %lld (tp rank %d), not on a "
                              "%lld-element %s block",
                              s->name, p->tp, (long long)s->cols, (long long)at, r->tp_rank,
                              (long long)be, tsr_dtype_name(t));
        }
    }
    return 0;
}

int tsr_slice_bytes(const struct tsr_slice *s, enum tsr_dtype t, struct tsr_slice_bytes *out)
{
    int64_t be = tsr_dtype_block_elems(t);
    if (be < 1 || s->cols % be)
        return tsr_errorf(TSR_EINVAL, "%s: %lld columns are not whole %s blocks", s->name,
                          (long long)s->cols, tsr_dtype_name(t));
    size_t row = tsr_dtype_row_bytes(t, s->cols);
    if (s->split == TSR_SPLIT_COLS) {
        if (s->offset % be || s->length % be)
            return tsr_errorf(TSR_EINVAL, "%s: columns [%lld, %lld) are not on %s blocks", s->name,
                              (long long)s->offset, (long long)(s->offset + s->length),
                              tsr_dtype_name(t));
        out->offset = (size_t)(s->offset / be) * tsr_dtype_block_bytes(t);
        out->row_bytes = tsr_dtype_row_bytes(t, s->length);
        out->stride = row;
        out->n_rows = s->rows;
    } else {
        int64_t r0 = s->split == TSR_SPLIT_ROWS ? s->offset : 0;
        int64_t n = s->split == TSR_SPLIT_ROWS ? s->length : s->rows;
        out->offset = (size_t)r0 * row;
        out->row_bytes = (size_t)n * row;
        out->stride = out->row_bytes;
        out->n_rows = 1;
    }
    return 0;
}

/* ---- the cluster plan ---- */

/* Fills out->stages from out->shard; 1 if every stage holds `context` tokens. */
static int evaluate(const struct tsr_cluster *cl, struct tsr_cluster_plan *out)
{
    const struct tsr_shard_plan *sp = &out->shard;
    int fits = 1;
    out->kv_tokens = INT64_MAX;
    for (int s = 0; s < sp->pp; s++) {
        struct tsr_stage_fit *f = &out->stages[s];
        memset(f, 0, sizeof *f);
        for (int t = 0; t < sp->ep; t++) {
            const struct tsr_rank_plan *r = &sp->ranks[s * sp->ep + t];
            f->layer_begin = r->layer_begin;
            f->layer_end = r->layer_end;
            f->weight_bytes = fmax(f->weight_bytes, r->weight_bytes);
            f->kv_bytes_per_token = fmax(f->kv_bytes_per_token, r->kv_bytes_per_token);
        }
        f->kv_room = cl->gpu_mem - out->reserve - f->weight_bytes;
        double n = f->kv_room > 0 ? floor(f->kv_room / f->kv_bytes_per_token) : 0;
        f->kv_tokens = n < (double)INT64_MAX ? (int64_t)n : INT64_MAX;
        if (f->kv_tokens < out->kv_tokens) out->kv_tokens = f->kv_tokens;
        if (f->kv_tokens < out->context) fits = 0;
    }
    return fits;
}

static int not_fit_error(const struct tsr_model_config *c, const struct tsr_cluster *cl,
                         const struct tsr_cluster_plan *p)
{
    int worst = 0;
    double need = 0;
    for (int s = 0; s < p->pp; s++) {
        const struct tsr_stage_fit *f = &p->stages[s];
        double n = f->weight_bytes + p->reserve + (double)p->context * f->kv_bytes_per_token;
        if (s == 0 || n > need) worst = s, need = n;
    }
    const struct tsr_stage_fit *f = &p->stages[worst];
    char b[7][32], ep[32] = "";
    if (c->n_expert > 0) snprintf(ep, sizeof ep, ", ep=%d", p->ep);
    return tsr_errorf(
        TSR_EEXHAUSTED,
        "needs %s of weights across %d GPUs with %s each: the fullest GPU (tp=%d x pp=%d%s, "
        "stage %d) needs %s (%s weights + %s reserve + %s KV for %lld tokens), %s over",
        tsr_plan_format_size(p->weight_bytes, b[0], sizeof b[0]), p->gpus,
        tsr_plan_format_size(cl->gpu_mem, b[1], sizeof b[1]), p->tp, p->pp, ep, worst,
        tsr_plan_format_size(need, b[2], sizeof b[2]),
        tsr_plan_format_size(f->weight_bytes, b[3], sizeof b[3]),
        tsr_plan_format_size(p->reserve, b[4], sizeof b[4]),
        tsr_plan_format_size((double)p->context * f->kv_bytes_per_token, b[5], sizeof b[5]),
        (long long)p->context, tsr_plan_format_size(need - cl->gpu_mem, b[6], sizeof b[6]));
}

/* The whole-model numbers of a layout whose shard plan is out->shard. */
static void fill(const struct tsr_model_config *c, const struct tsr_cluster *cl, int pp,
                 struct tsr_cluster_plan *out)
{
    out->pp = pp;
    out->ep = out->shard.ep;
    out->dp = out->shard.dp;
    out->n_params = out->shard.n_params;
    out->weight_bytes = out->n_params * cl->bytes_per_weight;
    out->kv_bytes_per_token = kv_per_token(c, c->n_layer, c->n_kv_head, cl->kv_bytes_per_elem);
    out->experts_per_gpu = c->n_expert / out->shard.ep;
    /* dispatch (hidden state to each chosen expert) + combine (its output back), bf16 */
    out->a2a_bytes_per_token =
        tsr_config_n_moe_layer(c) * 2.0 * c->n_expert_used * c->dim * TSR_PLAN_ACT_BYTES;
}

/* A MoE layout to try: k TP groups a replica, pp stages of ep ranks. */
struct cand {
    int k, pp, ep;
};

static int cmp_cand(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    return x->k != y->k ? (x->k > y->k) - (x->k < y->k) : (x->pp > y->pp) - (x->pp < y->pp);
}

/* The layout of a MoE model: replicas of k TP groups, k = 1, 2, ... (fewest GPUs first), each
 * k = pp x (ep / tp) tried with the fewest stages first (expert parallelism costs an all-to-all
 * per layer, pipelining a bubble per stage and a KV cache split; serving stacks (DeepSeek, SGLang)
 * prefer EP). ep must divide the experts; cl->ep and cl->pp, when given, are kept. 0 with the
 * plan, 1 when none fits (out holds the last tried, for the message), or an error. */
static int moe_layout(const struct tsr_model_config *c, const struct tsr_cluster *cl, int groups,
                      struct tsr_cluster_plan *out)
{
    int tp = out->tp, rc, tried = 0;
    if (cl->ep) {
        if ((rc = tsr_shard_plan_check_ep(c, tp, cl->ep))) return rc;
        int64_t k = (int64_t)(cl->ep / tp) * (cl->pp ? cl->pp : 1);
        if (k > groups)
            return tsr_errorf(TSR_EINVAL,
                              "ep=%d x pp=%d needs %lld groups of %d GPUs; %d node%s x %d GPUs "
                              "make %d",
                              cl->ep, cl->pp ? cl->pp : 1, (long long)k, tp, cl->nodes,
                              cl->nodes == 1 ? "" : "s", cl->gpus_per_node, groups);
    }
    if (cl->pp > groups)
        return tsr_errorf(
            TSR_EINVAL, "tp=%d x pp=%d needs %d groups of %d GPUs; %d node%s x %d GPUs make %d", tp,
            cl->pp, cl->pp, tp, cl->nodes, cl->nodes == 1 ? "" : "s", cl->gpus_per_node, groups);
    /* Candidates (pp, d = ep / tp): d a divisor of n_expert / tp (at most a few dozen), pp up to
     * the layers; sorted by GPUs per replica, then stages. */
    int n_d = 0, *ds = malloc((size_t)(c->n_expert / tp) * sizeof *ds);
    int pp_max = c->n_layer < groups ? c->n_layer : groups;
    struct cand *cand = NULL;
    size_t n_cand = 0;
    if (!ds) return tsr_errorf(TSR_ENOMEM, "cluster plan: out of memory");
    for (int d = 1; d <= c->n_expert / tp && d <= groups; d++)
        if (c->n_expert % (d * tp) == 0 && (!cl->ep || d * tp == cl->ep)) ds[n_d++] = d;
    if (n_d && !(cand = malloc((size_t)n_d * (size_t)pp_max * sizeof *cand))) {
        free(ds);
        return tsr_errorf(TSR_ENOMEM, "cluster plan: out of memory");
    }
    for (int pp = cl->pp ? cl->pp : 1; pp <= (cl->pp ? cl->pp : pp_max); pp++)
        for (int i = 0; i < n_d && (int64_t)pp * ds[i] <= groups; i++)
            cand[n_cand++] = (struct cand){pp * ds[i], pp, ds[i] * tp};
    free(ds);
    qsort(cand, n_cand, sizeof *cand, cmp_cand);
    rc = 1;
    for (size_t i = 0; i < n_cand && rc == 1; i++) {
        int pp = cand[i].pp, ep = cand[i].ep;
        tsr_shard_plan_free(&out->shard);
        free(out->stages);
        out->stages = NULL;
        if ((rc = tsr_shard_plan_make_ep(c, tp, ep, pp, cl->bytes_per_weight, cl->kv_bytes_per_elem,
                                         &out->shard)))
            break;
        if (!(out->stages = calloc((size_t)pp, sizeof *out->stages))) {
            rc = tsr_errorf(TSR_ENOMEM, "cluster plan: out of memory");
            break;
        }
        fill(c, cl, pp, out);
        tried = 1;
        rc = 1;
        if (evaluate(cl, out)) {
            out->replicas = groups / cand[i].k;
            out->gpus_used = out->replicas * cand[i].k * tp;
            rc = 0;
        }
    }
    free(cand);
    if (rc != 1) return rc;
    if (!tried) /* cl->pp exceeds the layers: as the dense path says */
        return tsr_errorf(TSR_EINVAL, "pp=%d exceeds the %d layers (each stage holds at least one)",
                          cl->pp, c->n_layer);
    return 1;
}

int tsr_cluster_plan_make(const struct tsr_model_config *c, const struct tsr_cluster *cl,
                          struct tsr_cluster_plan *out)
{
    memset(out, 0, sizeof *out);
    int rc = check_config(c);
    if (rc) return rc;
    if (cl->nodes < 1 || cl->gpus_per_node < 1 || !(cl->gpu_mem > 0))
        return tsr_errorf(TSR_EINVAL,
                          "cluster: nodes (%d), GPUs per node (%d) and GPU memory "
                          "must be positive",
                          cl->nodes, cl->gpus_per_node);
    if (cl->context < 0) return tsr_errorf(TSR_EINVAL, "context must not be negative");
    out->gpus = cl->nodes * cl->gpus_per_node;
    out->reserve = cl->reserve < 0 ? TSR_PLAN_RESERVE : cl->reserve;
    out->context = cl->context ? cl->context : c->n_ctx_train; /* validated: >= 1 */

    int tp = cl->tp;
    if (tp) {
        if (tp > cl->gpus_per_node)
            return tsr_errorf(TSR_EINVAL,
                              "tp=%d exceeds the %d GPUs of a node (tensor parallelism stays "
                              "inside a node)",
                              tp, cl->gpus_per_node);
        if ((rc = tsr_shard_plan_check_tp(c, tp))) return rc;
    } else {
        for (tp = cl->gpus_per_node < c->n_head ? cl->gpus_per_node : c->n_head; tp > 1; tp--)
            if (!tsr_shard_plan_check_tp(c, tp)) break;
    }
    int groups = cl->nodes * (cl->gpus_per_node / tp);
    int pp_lo = cl->pp ? cl->pp : 1, pp_hi = cl->pp ? cl->pp : groups;
    if (pp_hi > c->n_layer && !cl->pp) pp_hi = c->n_layer;
    if (cl->pp > groups)
        return tsr_errorf(
            TSR_EINVAL, "tp=%d x pp=%d needs %d groups of %d GPUs; %d node%s x %d GPUs make %d", tp,
            cl->pp, cl->pp, tp, cl->nodes, cl->nodes == 1 ? "" : "s", cl->gpus_per_node, groups);

    out->tp = tp;
    if (c->n_expert > 0) {
        rc = moe_layout(c, cl, groups, out);
        if (rc == 0) return 0;
        if (rc != 1) goto fail;
        rc = not_fit_error(c, cl, out);
        goto fail;
    }
    if (cl->ep && (rc = tsr_shard_plan_check_ep(c, tp, cl->ep))) return rc;
    for (int pp = pp_lo; pp <= pp_hi; pp++) {
        tsr_shard_plan_free(&out->shard);
        free(out->stages);
        out->stages = NULL;
        if ((rc = tsr_shard_plan_make(c, tp, pp, cl->bytes_per_weight, cl->kv_bytes_per_elem,
                                      &out->shard)))
            goto fail;
        if (!(out->stages = calloc((size_t)pp, sizeof *out->stages))) {
            rc = tsr_errorf(TSR_ENOMEM, "cluster plan: out of memory");
            goto fail;
        }
        fill(c, cl, pp, out);
        if (evaluate(cl, out)) {
            out->replicas = groups / pp;
            out->gpus_used = out->replicas * tp * pp;
            return 0;
        }
    }
    rc = not_fit_error(c, cl, out);
fail:
    tsr_cluster_plan_free(out);
    return rc;
}

void tsr_cluster_plan_free(struct tsr_cluster_plan *p)
{
    if (!p) return;
    tsr_shard_plan_free(&p->shard);
    free(p->stages);
    memset(p, 0, sizeof *p);
}

/* ---- units ---- */

int tsr_plan_parse_size(const char *s, double *bytes)
{
    static const struct {
        const char *unit;
        double mult;
    } units[] = {{"b", 1},        {"k", 0x1p10},   {"kib", 0x1p10}, {"kb", 1e3},
                 {"m", 0x1p20},   {"mib", 0x1p20}, {"mb", 1e6},     {"g", 0x1p30},
                 {"gib", 0x1p30}, {"gb", 1e9},     {"t", 0x1p40},   {"tib", 0x1p40},
                 {"tb", 1e12},    {"p", 0x1p50},   {"pib", 0x1p50}, {"pb", 1e15}};
    char *end;
    double v = strtod(s, &end);
    if (end == s || !isfinite(v) || v <= 0)
        return tsr_errorf(TSR_EINVAL, "'%s' is not a positive size (80GiB, 80GB, 141G, 1.5TiB)", s);
    while (*end == ' ') end++;
    if (!*end) return tsr_errorf(TSR_EINVAL, "'%s' needs a unit (80GiB, 80GB, 141G, 1.5TiB)", s);
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (!strcasecmp(end, units[i].unit)) {
            *bytes = v * units[i].mult;
            return 0;
        }
    return tsr_errorf(TSR_EINVAL, "'%s': unknown unit '%s' (B, KiB/KB/K, MiB, GiB, TiB, ...)", s,
                      end);
}

int tsr_plan_dtype_bytes(const char *name, double *bytes)
{
    static const struct {
        const char *name;
        double bytes;
    } types[] = {{"bf16", 2},         {"f16", 2},          {"fp16", 2},         {"f32", 4},
                 {"fp32", 4},         {"fp8", 1},          {"int8", 34.0 / 32}, {"q8_0", 34.0 / 32},
                 {"int4", 18.0 / 32}, {"q4_0", 18.0 / 32}, {"q4_1", 20.0 / 32}};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcasecmp(name, types[i].name)) {
            *bytes = types[i].bytes;
            return 0;
        }
    return tsr_errorf(TSR_EINVAL, "unknown dtype '%s' (bf16, f16, f32, fp8, int8, int4, q4_1)",
                      name);
}

const char *tsr_plan_format_size(double bytes, char *buf, size_t n)
{
    static const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    int u = 0;
    double v = bytes;
    while (fabs(v) >= 1024 && u < 6) v /= 1024, u++;
    if (u == 0)
        snprintf(buf, n, "%.0f B", v);
    else
        snprintf(buf, n, "%.1f %s", v, unit[u]);
    return buf;
}
