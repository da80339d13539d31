/* The shard plan and the cluster plan: slices per rank, coverage, balance, errors, and the
 * per-GPU numbers of Llama-3-405B and a 1T dense model checked against hand arithmetic. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/status.h"
#include "model/config.h"
#include "model/gguf.h"
#include "model/shard_plan.h"
#include "unit.h"

#define GiB     (1024.0 * 1024 * 1024)
#define CONFIGS TSR_SOURCE_DIR "/tests/reference/configs/"

static struct tsr_model_config load(const char *name)
{
    struct tsr_model_config c;
    char path[512];
    snprintf(path, sizeof path, CONFIGS "%s", name);
    int rc = tsr_config_from_json(path, &c);
    if (rc) fprintf(stderr, "%s\n", tsr_last_error());
    assert_int_equal(rc, 0);
    return c;
}

/* Qwen2.5-0.5B's shape: QKV biases, 2 KV heads, tied embeddings, 4864 = 152 blocks of FFN. */
static struct tsr_model_config qwen_like(void)
{
    struct tsr_model_config c = {.arch = "qwen2",
                                 .n_layer = 24,
                                 .dim = 896,
                                 .ffn_dim = 4864,
                                 .n_head = 14,
                                 .n_kv_head = 2,
                                 .head_dim = 64,
                                 .n_vocab = 151936,
                                 .n_ctx_train = 32768,
                                 .tied_embeddings = 1,
                                 .qkv_bias = 1};
    return c;
}

/* Nothing divides evenly: FFN not in 32-blocks, vocabulary 1001, untied, biases. */
static struct tsr_model_config odd(void)
{
    struct tsr_model_config c = {.arch = "llama",
                                 .n_layer = 5,
                                 .dim = 64,
                                 .ffn_dim = 1000,
                                 .n_head = 8,
                                 .n_kv_head = 2,
                                 .head_dim = 8,
                                 .n_vocab = 1001,
                                 .n_ctx_train = 256,
                                 .qkv_bias = 1};
    return c;
}

static void expect_error(const struct tsr_model_config *c, int tp, int pp, const char *msg)
{
    struct tsr_shard_plan p;
    assert_int_equal(tsr_shard_plan_make(c, tp, pp, 2, 2, &p), TSR_EINVAL);
    if (!strstr(tsr_last_error(), msg)) fail_msg("'%s' lacks '%s'", tsr_last_error(), msg);
    assert_null(p.ranks);
    tsr_shard_plan_free(&p);
}

static const struct tsr_slice *find(const struct tsr_rank_plan *r, const char *name)
{
    const struct tsr_slice *s = tsr_rank_plan_find(r, name);
    if (!s) fail_msg("rank %d lacks %s", r->rank, name);
    return s;
}

static void expect_slice(const struct tsr_rank_plan *r, const char *name, enum tsr_split split,
                         int64_t offset, int64_t length, int64_t rows, int64_t cols)
{
    const struct tsr_slice *s = find(r, name);
    assert_int_equal(s->split, split);
    assert_int_equal(s->offset, offset);
    assert_int_equal(s->length, length);
    assert_int_equal(s->rows, rows);
    assert_int_equal(s->cols, cols);
}

/* ---- SmolLM2-135M ---- */

static void test_smollm2_config(void **state)
{
    struct tsr_model_config c = load("smollm2-135m.json");
    assert_int_equal(c.n_layer, 30);
    assert_int_equal(c.dim, 576);
    assert_int_equal(c.ffn_dim, 1536);
    assert_int_equal(c.n_head, 9);
    assert_int_equal(c.n_kv_head, 3);
    assert_int_equal(c.head_dim, 64);
    assert_int_equal(c.n_vocab, 49152);
    assert_int_equal(c.n_ctx_train, 8192);
    assert_int_equal(c.tied_embeddings, 1);
    assert_true(fabsf(c.rope_theta - 100000.0f) < 1e-3f);
}

static void test_smollm2_tp3(void **state)
{
    struct tsr_model_config c = load("smollm2-135m.json");
    struct tsr_shard_plan p;
    assert_int_equal(tsr_shard_plan_make(&c, 3, 1, 2, 2, &p), 0);
    assert_int_equal(p.world, 3);
    /* 30 layers * (2*576*576 q,o + 2*576*192 k,v + 3*576*1536 ffn + 2*576 norms) + 49152*576
     * tied embedding + 576 output norm. */
    assert_true(p.n_params == 30.0 * 3540096 + 28311552 + 576);
    assert_true(p.n_params == tsr_config_n_params(&c));
    for (int r = 0; r < 3; r++) {
        const struct tsr_rank_plan *rp = &p.ranks[r];
        assert_int_equal(rp->rank, r);
        assert_int_equal(rp->tp_rank, r);
        assert_int_equal(rp->pp_stage, 0);
        assert_int_equal(rp->layer_begin, 0);
        assert_int_equal(rp->layer_end, 30);
        assert_true(rp->has_embedding && rp->has_head);
        assert_int_equal(rp->q_head_begin, 3 * r); /* 3 query heads */
        assert_int_equal(rp->q_head_end, 3 * r + 3);
        assert_int_equal(rp->kv_head_begin, r); /* one KV head */
        assert_int_equal(rp->kv_head_end, r + 1);
        assert_int_equal(rp->ffn_begin, 512 * r);
        assert_int_equal(rp->ffn_end, 512 * r + 512);
        assert_int_equal(rp->vocab_begin, 16384 * r);
        assert_int_equal(rp->vocab_end, 16384 * r + 16384);
        assert_int_equal(rp->vocab_stride, 16384);
        expect_slice(rp, "token_embd.weight", TSR_SPLIT_ROWS, 16384 * r, 16384, 49152, 576);
        assert_true(find(rp, "token_embd.weight")->lm_head); /* tied, pp = 1: one slice */
        assert_null(tsr_rank_plan_find(rp, "output.weight"));
        expect_slice(rp, "output_norm.weight", TSR_SPLIT_NONE, 0, 576, 1, 576);
        expect_slice(rp, "blk.7.attn_norm.weight", TSR_SPLIT_NONE, 0, 576, 1, 576);
        expect_slice(rp, "blk.7.attn_q.weight", TSR_SPLIT_ROWS, 192 * r, 192, 576, 576);
        expect_slice(rp, "blk.7.attn_k.weight", TSR_SPLIT_ROWS, 64 * r, 64, 192, 576);
        expect_slice(rp, "blk.7.attn_v.weight", TSR_SPLIT_ROWS, 64 * r, 64, 192, 576);
        expect_slice(rp, "blk.7.attn_output.weight", TSR_SPLIT_COLS, 192 * r, 192, 576, 576);
        expect_slice(rp, "blk.29.ffn_norm.weight", TSR_SPLIT_NONE, 0, 576, 1, 576);
        expect_slice(rp, "blk.29.ffn_gate.weight", TSR_SPLIT_ROWS, 512 * r, 512, 1536, 576);
        expect_slice(rp, "blk.29.ffn_up.weight", TSR_SPLIT_ROWS, 512 * r, 512, 1536, 576);
        expect_slice(rp, "blk.29.ffn_down.weight", TSR_SPLIT_COLS, 512 * r, 512, 576, 1536);
        assert_null(tsr_rank_plan_find(rp, "blk.30.ffn_down.weight"));
        assert_null(tsr_rank_plan_find(rp, "blk.0.attn_q.bias"));
        assert_int_equal(rp->n_slices, 30 * 9 + 2);
        /* per layer: 2*576 norms + 2*192*576 q,o + 2*64*576 k,v + 3*512*576 ffn = 1,180,800;
         * plus 16384*576 embedding rows and the 576 output norm. */
        double params =
            30.0 * (2 * 576 + 2 * 192 * 576 + 2 * 64 * 576 + 3 * 512 * 576) + 16384.0 * 576 + 576;
        assert_true(params == 44861760.0);
        assert_true(rp->n_params == params);
        assert_true(rp->weight_bytes == 2 * params);
        assert_true(rp->kv_bytes_per_token == 2.0 * 30 * 1 * 64 * 2); /* 7680 */
    }
    tsr_shard_plan_free(&p);
}

static void test_smollm2_tp9_kv_replicated(void **state)
{
    struct tsr_model_config c = load("smollm2-135m.json");
    struct tsr_shard_plan p;
    assert_int_equal(tsr_shard_plan_make(&c, 9, 1, 2, 2, &p), 0);
    int64_t ffn = 0;
    for (int r = 0; r < 9; r++) {
        const struct tsr_rank_plan *rp = &p.ranks[r];
        assert_int_equal(rp->q_head_begin, r);
        assert_int_equal(rp->q_head_end, r + 1);
        /* rank r uses KV head floor(r * 3 / 9): ranks 0-2 head 0, 3-5 head 1, 6-8 head 2 */
        assert_int_equal(rp->kv_head_begin, r / 3);
        assert_int_equal(rp->kv_head_end, r / 3 + 1);
        expect_slice(rp, "blk.0.attn_k.weight", TSR_SPLIT_ROWS, 64 * (r / 3), 64, 192, 576);
        expect_slice(rp, "blk.0.attn_q.weight", TSR_SPLIT_ROWS, 64 * r, 64, 576, 576);
        assert_true(rp->kv_bytes_per_token == 7680);
        /* 1536 = 48 blocks of 32 over 9 ranks: floor(r*48/9) blocks, so 5 or 6 blocks each. */
        assert_int_equal(rp->ffn_begin, (int64_t)r * 48 / 9 * 32);
        assert_int_equal(rp->ffn_end, (int64_t)(r + 1) * 48 / 9 * 32);
        assert_int_equal(rp->ffn_begin, ffn);
        assert_int_equal(rp->ffn_begin % 32, 0);
        int64_t n = rp->ffn_end - rp->ffn_begin;
        assert_true(n == 160 || n == 192);
        ffn = rp->ffn_end;
        /* vocab: stride ceil(49152/9) = 5462, the last rank 49152 - 8*5462 = 5456 */
        assert_int_equal(rp->vocab_stride, 5462);
        assert_int_equal(rp->vocab_begin, 5462 * r);
        assert_int_equal(rp->vocab_end, r < 8 ? 5462 * (r + 1) : 49152);
    }
    assert_int_equal(ffn, 1536);
    tsr_shard_plan_free(&p);
}

/* The largest stage's parameters over every split of n layers into pp stages of at least one. */
static double brute_minmax(int n, int pp, double lc, double e0, double eN, int s, double acc)
{
    if (s == pp - 1) return fmax(acc, n * lc + eN + (pp == 1 ? e0 : 0));
    double best = INFINITY;
    for (int k = 1; k <= n - (pp - 1 - s); k++) {
        double cost = k * lc + (s == 0 ? e0 : 0);
        best = fmin(best, brute_minmax(n - k, pp, lc, e0, eN, s + 1, fmax(acc, cost)));
    }
    return best;
}

static void test_smollm2_pp_balanced(void **state)
{
    struct tsr_model_config c = load("smollm2-135m.json");
    struct tsr_shard_plan p;
    assert_int_equal(tsr_shard_plan_make(&c, 1, 2, 2, 2, &p), 0);
    /* The embedding (stage 0) and the tied LM head copy + output norm (stage 1) weigh the same:
     * 15 and 15 layers. */
    assert_int_equal(p.ranks[0].layer_begin, 0);
    assert_int_equal(p.ranks[0].layer_end, 15);
    assert_int_equal(p.ranks[1].layer_begin, 15);
    assert_int_equal(p.ranks[1].layer_end, 30);
    assert_true(p.ranks[0].has_embedding && !p.ranks[0].has_head);
    assert_true(!p.ranks[1].has_embedding && p.ranks[1].has_head);
    const struct tsr_slice *head = find(&p.ranks[1], "token_embd.weight");
    assert_true(head->lm_head);
    assert_false(find(&p.ranks[0], "token_embd.weight")->lm_head);
    assert_null(tsr_rank_plan_find(&p.ranks[0], "output_norm.weight"));
    assert_null(tsr_rank_plan_find(&p.ranks[0], "blk.15.attn_q.weight"));
    assert_null(tsr_rank_plan_find(&p.ranks[1], "blk.14.attn_q.weight"));
    assert_true(p.ranks[1].n_params - p.ranks[0].n_params == 576); /* the output norm */
    assert_true(p.ranks[0].kv_bytes_per_token == 2.0 * 15 * 3 * 64 * 2);
    tsr_shard_plan_free(&p);

    /* pp = 2..5 against a brute-force min-max: the embedding weighs 28,311,552 / 3,540,096 = 8.0
     * layers, so the end stages get fewer layers. */
    double lc = 3540096, e = 49152.0 * 576;
    for (int pp = 2; pp <= 5; pp++) {
        assert_int_equal(tsr_shard_plan_make(&c, 1, pp, 2, 2, &p), 0);
        double worst = 0;
        for (int s = 0; s < pp; s++) {
            if (s) assert_int_equal(p.ranks[s].layer_begin, p.ranks[s - 1].layer_end);
            assert_true(p.ranks[s].layer_end > p.ranks[s].layer_begin);
            worst = fmax(worst, p.ranks[s].n_params);
        }
        assert_int_equal(p.ranks[0].layer_begin, 0);
        assert_int_equal(p.ranks[pp - 1].layer_end, 30);
        assert_true(worst == brute_minmax(30, pp, lc, e, e + 576, 0, 0));
        tsr_shard_plan_free(&p);
    }
    assert_int_equal(tsr_shard_plan_make(&c, 1, 4, 2, 2, &p), 0);
    /* 4 stages: the end stages carry 7.9975 layers' worth of embedding, so [4, 11, 11, 4]
     * (at most 11.998 layer-equivalents; anything else puts 12 on some stage). */
    assert_int_equal(p.ranks[0].layer_end, 4);
    assert_int_equal(p.ranks[1].layer_end, 15);
    assert_int_equal(p.ranks[2].layer_end, 26);
    tsr_shard_plan_free(&p);
}

static void test_tp3_pp2_numbering(void **state)
{
    struct tsr_model_config c = load("smollm2-135m.json");
    struct tsr_shard_plan p;
    assert_int_equal(tsr_shard_plan_make(&c, 3, 2, 2, 2, &p), 0);
    assert_int_equal(p.world, 6);
    for (int r = 0; r < 6; r++) {
        const struct tsr_rank_plan *rp = &p.ranks[r];
        assert_int_equal(rp->rank, r);
        assert_int_equal(rp->pp_stage, r / 3);
        assert_int_equal(rp->tp_rank, r % 3);
        assert_int_equal(rp->layer_begin, r < 3 ? 0 : 15);
        assert_int_equal(rp->layer_end, r < 3 ? 15 : 30);
        assert_int_equal(rp->has_embedding, r < 3);
        assert_int_equal(rp->has_head, r >= 3);
        expect_slice(rp, "token_embd.weight", TSR_SPLIT_ROWS, 16384 * (r % 3), 16384, 49152, 576);
        expect_slice(rp, r < 3 ? "blk.0.ffn_up.weight" : "blk.15.ffn_up.weight", TSR_SPLIT_ROWS,
                     512 * (r % 3), 512, 1536, 576);
    }
    tsr_shard_plan_free(&p);
}

/* ---- coverage: every tensor exactly once per replica ---- */

struct tensor {
    char name[64];
    int64_t rows, cols;
    int where; /* 0 stage 0, 1 last stage, 2 the layer's stage, 3 stage 0 and the last (tied) */
    int layer;
    enum tsr_split split;
    int kv; /* a K/V tensor: replicated when tp > n_kv_head */
};

/* The tensors of a model, written independently of shard_plan.c. */
static int model_tensors(const struct tsr_model_config *c, struct tensor *t)
{
    int n = 0;
    int64_t d = c->dim, q = (int64_t)c->n_head * c->head_dim;
    int64_t kv = (int64_t)c->n_kv_head * c->head_dim, f = c->ffn_dim, V = c->n_vocab;
#define T(nm, r, cc, w, l, sp, k)                                                                  \
    (snprintf(t[n].name, sizeof t[n].name, "%s", nm), t[n].rows = r, t[n].cols = cc,               \
     t[n].where = w, t[n].layer = l, t[n].split = sp, t[n].kv = k, n++)
    T("token_embd.weight", V, d, c->tied_embeddings ? 3 : 0, -1, TSR_SPLIT_ROWS, 0);
    for (int l = 0; l < c->n_layer; l++) {
        char nm[64];
#define L(s) (snprintf(nm, sizeof nm, "blk.%d.%s", l, s), nm)
        T(L("attn_norm.weight"), 1, d, 2, l, TSR_SPLIT_NONE, 0);
        T(L("ffn_norm.weight"), 1, d, 2, l, TSR_SPLIT_NONE, 0);
        T(L("attn_q.weight"), q, d, 2, l, TSR_SPLIT_ROWS, 0);
        T(L("attn_k.weight"), kv, d, 2, l, TSR_SPLIT_ROWS, 1);
        T(L("attn_v.weight"), kv, d, 2, l, TSR_SPLIT_ROWS, 1);
        T(L("attn_output.weight"), d, q, 2, l, TSR_SPLIT_COLS, 0);
        T(L("ffn_gate.weight"), f, d, 2, l, TSR_SPLIT_ROWS, 0);
        T(L("ffn_up.weight"), f, d, 2, l, TSR_SPLIT_ROWS, 0);
        T(L("ffn_down.weight"), d, f, 2, l, TSR_SPLIT_COLS, 0);
        if (c->qkv_bias) {
            T(L("attn_q.bias"), 1, q, 2, l, TSR_SPLIT_COLS, 0);
            T(L("attn_k.bias"), 1, kv, 2, l, TSR_SPLIT_COLS, 1);
            T(L("attn_v.bias"), 1, kv, 2, l, TSR_SPLIT_COLS, 1);
        }
#undef L
    }
    T("output_norm.weight", 1, d, 1, -1, TSR_SPLIT_NONE, 0);
    if (!c->tied_embeddings) T("output.weight", V, d, 1, -1, TSR_SPLIT_ROWS, 0);
#undef T
    return n;
}

static int in_stage(const struct tensor *t, const struct tsr_shard_plan *p, int s)
{
    const struct tsr_rank_plan *r = &p->ranks[s * p->tp];
    switch (t->where) {
    case 0:
        return s == 0;
    case 1:
        return s == p->pp - 1;
    case 2:
        return t->layer >= r->layer_begin && t->layer < r->layer_end;
    default:
        return s == 0 || s == p->pp - 1;
    }
}

static void check_coverage(const struct tsr_model_config *c, int tp, int pp)
{
    struct tsr_shard_plan p;
    int rc = tsr_shard_plan_make(c, tp, pp, 2, 2, &p);
    if (rc) fail_msg("tp=%d pp=%d: %s", tp, pp, tsr_last_error());
    int cap = 4 + c->n_layer * 12;
    struct tensor *t = malloc((size_t)cap * sizeof *t);
    assert_non_null(t);
    int nt = model_tensors(c, t);
    int64_t maxdim = c->n_vocab;
    if (c->ffn_dim > maxdim) maxdim = c->ffn_dim;
    if ((int64_t)c->n_head * c->head_dim > maxdim) maxdim = (int64_t)c->n_head * c->head_dim;
    int *count = malloc((size_t)maxdim * sizeof *count);
    int *held = calloc((size_t)p.world, sizeof *held);
    assert_non_null(count);
    assert_non_null(held);
    double total = 0;
    for (int i = 0; i < nt; i++) {
        int stages = 0;
        total += (double)t[i].rows * t[i].cols;
        for (int s = 0; s < pp; s++) {
            int want = in_stage(&t[i], &p, s);
            stages += want;
            int64_t n = t[i].split == TSR_SPLIT_ROWS ? t[i].rows : t[i].cols;
            memset(count, 0, (size_t)n * sizeof *count);
            for (int r = s * tp; r < (s + 1) * tp; r++) {
                const struct tsr_slice *sl = tsr_rank_plan_find(&p.ranks[r], t[i].name);
                if (!want) {
                    if (sl) fail_msg("tp=%d pp=%d: rank %d holds %s", tp, pp, r, t[i].name);
                    continue;
                }
                if (!sl) fail_msg("tp=%d pp=%d: rank %d lacks %s", tp, pp, r, t[i].name);
                held[r]++;
                assert_int_equal(sl->split, t[i].split);
                assert_int_equal(sl->rows, t[i].rows);
                assert_int_equal(sl->cols, t[i].cols);
                assert_true(sl->length > 0 && sl->offset >= 0 && sl->offset + sl->length <= n);
                if (t[i].split == TSR_SPLIT_NONE) {
                    assert_int_equal(sl->offset, 0);
                    assert_int_equal(sl->length, t[i].cols);
                    continue;
                }
                for (int64_t e = sl->offset; e < sl->offset + sl->length; e++) count[e]++;
            }
            if (!want || t[i].split == TSR_SPLIT_NONE) continue;
            /* no gap, no overlap: once each, or tp/n_kv times for a replicated KV head */
            int rep = t[i].kv && tp > c->n_kv_head ? tp / c->n_kv_head : 1;
            for (int64_t e = 0; e < n; e++)
                if (count[e] != rep)
                    fail_msg("tp=%d pp=%d stage %d: %s element %lld held %d times, not %d", tp, pp,
                             s, t[i].name, (long long)e, count[e], rep);
        }
        assert_int_equal(stages, t[i].where == 3 && pp > 1 ? 2 : 1);
    }
    for (int r = 0; r < p.world; r++) assert_int_equal(held[r], p.ranks[r].n_slices);
    assert_true(total == p.n_params);
    free(held);
    free(count);
    free(t);
    tsr_shard_plan_free(&p);
}

static void test_coverage(void **state)
{
    struct tsr_model_config cs[4] = {load("smollm2-135m.json"), load("llama3-405b.json"),
                                     qwen_like(), odd()};
    static const int tps[] = {1, 2, 3, 4, 6, 7, 8, 9, 14, 16};
    static const int pps[] = {1, 2, 3, 5};
    int tried = 0;
    for (int i = 0; i < 4; i++)
        for (size_t a = 0; a < sizeof tps / sizeof tps[0]; a++)
            for (size_t b = 0; b < sizeof pps / sizeof pps[0]; b++) {
                if (tsr_shard_plan_check_tp(&cs[i], tps[a]) || pps[b] > cs[i].n_layer) continue;
                check_coverage(&cs[i], tps[a], pps[b]);
                tried++;
            }
    /* smollm2 tp 1,3,9; 405b 1,2,4,8,16; qwen 1,2,14; odd 1,2,4,8 - each with 4 pps */
    assert_int_equal(tried, (3 + 5 + 3 + 4) * 4);
}

static void test_uneven(void **state)
{
    struct tsr_model_config c = odd();
    struct tsr_shard_plan p;
    assert_int_equal(tsr_shard_plan_make(&c, 4, 1, 2, 2, &p), 0);
    /* FFN 1000 is not in 32-blocks: element split, 250 each. Vocab 1001: stride 251, the last
     * rank 1001 - 3*251 = 248 rows. */
    for (int r = 0; r < 4; r++) {
        assert_int_equal(p.ranks[r].ffn_begin, 250 * r);
        assert_int_equal(p.ranks[r].ffn_end, 250 * r + 250);
        assert_int_equal(p.ranks[r].vocab_stride, 251);
        expect_slice(&p.ranks[r], "output.weight", TSR_SPLIT_ROWS, 251 * r, r < 3 ? 251 : 248, 1001,
                     64);
        expect_slice(&p.ranks[r], "blk.2.attn_q.bias", TSR_SPLIT_COLS, 16 * r, 16, 1, 64);
        expect_slice(&p.ranks[r], "blk.2.attn_k.bias", TSR_SPLIT_COLS, 8 * (r / 2), 8, 1, 16);
    }
    tsr_shard_plan_free(&p);
}

/* ---- errors ---- */

static void test_errors(void **state)
{
    struct tsr_model_config c = load("smollm2-135m.json");
    expect_error(&c, 2, 1, "tp=2 does not divide 9 attention heads");
    expect_error(&c, 4, 1, "tp=4 does not divide 9 attention heads");
    expect_error(&c, 0, 1, "tp=0");
    expect_error(&c, -3, 1, "tp=-3");
    expect_error(&c, 1, 0, "pp=0");
    expect_error(&c, 3, 31, "pp=31 exceeds the 30 layers");
    struct tsr_model_config q = qwen_like();
    expect_error(&q, 7, 1, "tp=7 is not a multiple of 2 KV heads");
    struct tsr_model_config l = load("llama3-405b.json");
    struct tsr_model_config k6 = odd();
    k6.n_head = 24, k6.n_kv_head = 6;
    expect_error(&k6, 4, 1, "tp=4 does not divide 6 KV heads");
    expect_error(&l, 3, 1, "tp=3 does not divide 128 attention heads");
    /* FFN of 64 = 2 blocks cannot feed 4 ranks */
    struct tsr_model_config f = odd();
    f.ffn_dim = 64;
    expect_error(&f, 4, 1, "tp=4 exceeds the 2 32-element blocks of the FFN");
    /* ... unless every layer is an expert layer (no dense MLP to slice; experts stay whole) */
    f.n_expert = 8, f.n_expert_used = 2, f.moe_ffn_dim = 64, f.n_dense_layer = 0;
    assert_int_equal(tsr_shard_plan_check_tp(&f, 4), 0);
    f.n_dense_layer = 1;
    expect_error(&f, 4, 1, "tp=4 exceeds the 2 32-element blocks of the FFN");
    /* vocab 5 over 4 ranks: slices of 2 leave the last rank nothing */
    struct tsr_model_config v = odd();
    v.n_vocab = 5;
    expect_error(&v, 4, 1, "tp=4 leaves the last rank no vocabulary rows");
    struct tsr_model_config z = odd();
    z.n_layer = 0;
    expect_error(&z, 1, 1, "config sizes must be positive");
    struct tsr_shard_plan p;
    assert_int_equal(tsr_shard_plan_make(&c, 3, 1, 0, 2, &p), TSR_EINVAL);
    assert_int_equal(tsr_shard_plan_make(&c, 3, 1, 2, -1, &p), TSR_EINVAL);
    tsr_shard_plan_free(&p);
    tsr_shard_plan_free(NULL);
}

/* ---- quantized types ---- */

static int all_q4_1(void *ctx, const char *name)
{
    return strstr(name, "norm") || strstr(name, "bias") ? TSR_F32 : TSR_Q4_1;
}

static int gguf_type(void *ctx, const char *name)
{
    const struct tsr_gguf_tensor *t = tsr_gguf_find_tensor(ctx, name);
    return t ? (int)t->type : -1;
}

static void test_check_types(void **state)
{
    /* head_dim 80: attn_output's 160 columns split at 80 by tp = 2, inside a 32-block */
    struct tsr_model_config c = {.arch = "llama",
                                 .n_layer = 2,
                                 .dim = 160,
                                 .ffn_dim = 512,
                                 .n_head = 2,
                                 .n_kv_head = 2,
                                 .head_dim = 80,
                                 .n_vocab = 100,
                                 .n_ctx_train = 64};
    struct tsr_shard_plan p;
    assert_int_equal(tsr_shard_plan_make(&c, 2, 1, 2, 2, &p), 0);
    assert_int_equal(tsr_shard_plan_check_types(&p, all_q4_1, NULL), TSR_EINVAL);
    assert_string_equal(tsr_last_error(), "blk.0.attn_output.weight: tp=2 splits its 160 columns "
                                          "at 80 (tp rank 0), not on a 32-element Q4_1 block");
    tsr_shard_plan_free(&p);
    assert_int_equal(tsr_shard_plan_make(&c, 1, 1, 2, 2, &p), 0);
    assert_int_equal(tsr_shard_plan_check_types(&p, all_q4_1, NULL), 0);
    tsr_shard_plan_free(&p);
    /* FFN 1000 (element split at 250) and 16-column attention slices: not Q4_1-able */
    struct tsr_model_config o = odd();
    o.qkv_bias = 0;
    assert_int_equal(tsr_shard_plan_make(&o, 4, 1, 2, 2, &p), 0);
    assert_int_equal(tsr_shard_plan_check_types(&p, all_q4_1, NULL), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "not on a 32-element Q4_1 block"));
    tsr_shard_plan_free(&p);

    /* The real SmolLM2 Q4_1 file: tp = 3 and tp = 9 split on blocks everywhere. */
    const char *path = TSR_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (tsr_test_missing(path, "run scripts/fetch_model.sh")) return;
    tsr_gguf_t *g;
    assert_int_equal(tsr_gguf_open(path, &g), 0);
    struct tsr_model_config s;
    assert_int_equal(tsr_config_from_gguf(g, &s), 0);
    for (int tp = 1; tp <= 9; tp *= 3) {
        assert_int_equal(tsr_shard_plan_make(&s, tp, 2, 2, 2, &p), 0);
        assert_int_equal(tsr_shard_plan_check_types(&p, gguf_type, g), 0);
        /* every slice lies inside its tensor's bytes */
        for (int r = 0; r < p.world; r++)
            for (int i = 0; i < p.ranks[r].n_slices; i++) {
                const struct tsr_slice *sl = &p.ranks[r].slices[i];
                const struct tsr_gguf_tensor *t = tsr_gguf_find_tensor(g, sl->name);
                assert_non_null(t);
                assert_int_equal(t->ne[0], sl->cols);
                struct tsr_slice_bytes b;
                assert_int_equal(tsr_slice_bytes(sl, t->type, &b), 0);
                assert_true(b.offset + (b.n_rows - 1) * b.stride + b.row_bytes <= t->nbytes);
            }
        tsr_shard_plan_free(&p);
    }
    tsr_gguf_close(g);
}

static void test_slice_bytes(void **state)
{
    struct tsr_slice down = {.name = "blk.0.ffn_down.weight",
                             .split = TSR_SPLIT_COLS,
                             .offset = 512,
                             .length = 512,
                             .rows = 576,
                             .cols = 1536};
    struct tsr_slice_bytes b;
    assert_int_equal(tsr_slice_bytes(&down, TSR_Q4_1, &b), 0);
    assert_int_equal(b.offset, 512 / 32 * 20); /* 16 Q4_1 blocks of 20 bytes */
    assert_int_equal(b.row_bytes, 320);
    assert_int_equal(b.stride, 1536 / 32 * 20);
    assert_int_equal(b.n_rows, 576);
    assert_int_equal(tsr_slice_bytes(&down, TSR_BF16, &b), 0);
    assert_int_equal(b.offset, 1024);
    assert_int_equal(b.row_bytes, 1024);
    assert_int_equal(b.stride, 3072);
    struct tsr_slice emb = {.name = "token_embd.weight",
                            .split = TSR_SPLIT_ROWS,
                            .offset = 16384,
                            .length = 16384,
                            .rows = 49152,
                            .cols = 576};
    assert_int_equal(tsr_slice_bytes(&emb, TSR_Q8_0, &b), 0);
    assert_int_equal(b.offset, 16384 * (576 / 32 * 34));
    assert_int_equal(b.row_bytes, 16384 * (576 / 32 * 34));
    assert_int_equal(b.n_rows, 1);
    down.offset = 80;
    assert_int_equal(tsr_slice_bytes(&down, TSR_Q4_0, &b), TSR_EINVAL);
}

/* ---- the cluster plan on 16 nodes x 8 GPUs x 80 GiB ---- */

static struct tsr_cluster cluster(int nodes, double bpw)
{
    struct tsr_cluster cl = {.nodes = nodes,
                             .gpus_per_node = 8,
                             .gpu_mem = 80 * GiB,
                             .bytes_per_weight = bpw,
                             .kv_bytes_per_elem = 2,
                             .reserve = -1};
    return cl;
}

static void test_cluster_405b(void **state)
{
    struct tsr_model_config c = load("llama3-405b.json");
    /* Parameters: per layer 2*16384*16384 (q, o) + 2*16384*1024 (k, v: 8 heads x 128)
     * + 3*16384*53248 (gate, up, down) + 2*16384 (norms) = 3,187,703,808;
     * x 126 = 401,650,679,808; + 2*128256*16384 (embedding, head) + 16384 = 405,853,388,800. */
    double layer = 2.0 * 16384 * 16384 + 2.0 * 16384 * 1024 + 3.0 * 16384 * 53248 + 2 * 16384;
    assert_true(layer == 3187703808.0);
    double params = 126 * layer + 2.0 * 128256 * 16384 + 16384;
    assert_true(params == 405853388800.0);
    assert_true(tsr_config_n_params(&c) == params);

    struct tsr_cluster cl = cluster(16, 2);
    struct tsr_cluster_plan p;
    int rc = tsr_cluster_plan_make(&c, &cl, &p);
    if (rc) fail_msg("%s", tsr_last_error());
    assert_true(p.n_params == params);
    assert_true(p.weight_bytes == 2 * params); /* 811.7e9 bytes = 756.0 GiB at bf16 */
    /* tp = 8 (8 KV heads, 128 heads); pp = 1 would need 126 layers of ~0.76 GiB: no. pp = 2:
     * 63 layers a stage; 16 TP groups / 2 = 8 replicas. */
    assert_int_equal(p.tp, 8);
    assert_int_equal(p.pp, 2);
    assert_int_equal(p.replicas, 8);
    assert_int_equal(p.gpus, 128);
    assert_int_equal(p.gpus_used, 128);
    assert_int_equal(p.context, 131072);
    assert_true(p.reserve == 4 * GiB);
    /* whole-model KV: 2 * 126 layers * 8 heads * 128 * 2 bytes = 516,096 bytes/token */
    assert_true(p.kv_bytes_per_token == 516096);

    /* Per GPU, per layer: (3,187,671,040 matrices)/8 + 32,768 norms = 398,491,648 params;
     * embedding / head rows 128256/8 = 16032 x 16384 = 262,668,288 params. */
    double layer_rank =
        (2.0 * 16384 * 16384 + 2.0 * 16384 * 1024 + 3.0 * 16384 * 53248) / 8 + 2 * 16384;
    assert_true(layer_rank == 398491648.0);
    double emb_rank = 16032.0 * 16384;
    double w0 = 2 * (63 * layer_rank + emb_rank);         /* 50,735,284,224 B = 47.25 GiB */
    double w1 = 2 * (63 * layer_rank + emb_rank + 16384); /* + output norm: 50,735,316,992 B */
    assert_true(w0 == 50735284224.0);
    assert_true(w1 == 50735316992.0);
    double kvt = 2.0 * 63 * 1 * 128 * 2; /* one KV head per GPU: 32,256 B/token */
    assert_int_equal(p.stages[0].layer_begin, 0);
    assert_int_equal(p.stages[0].layer_end, 63);
    assert_int_equal(p.stages[1].layer_begin, 63);
    assert_int_equal(p.stages[1].layer_end, 126);
    assert_true(p.stages[0].weight_bytes == w0);
    assert_true(p.stages[1].weight_bytes == w1);
    assert_true(p.stages[0].kv_bytes_per_token == kvt);
    assert_true(p.stages[1].kv_bytes_per_token == kvt);
    /* KV room: 80 GiB - 4 GiB - weights = 30,869,094,400 B (28.75 GiB) on stage 0,
     * 30,869,061,632 B on stage 1; / 32,256 = 957,003 and 957,002 tokens. */
    assert_true(p.stages[0].kv_room == 76 * GiB - w0);
    assert_true(p.stages[0].kv_room == 30869094400.0);
    assert_true(p.stages[1].kv_room == 30869061632.0);
    assert_int_equal(p.stages[0].kv_tokens, 957003);
    assert_int_equal(p.stages[1].kv_tokens, 957002);
    assert_int_equal(p.kv_tokens, 957002); /* per replica: 7.3 full 128k contexts */
    tsr_cluster_plan_free(&p);

    /* fp8 weights: pp = 1 fits (47.25 GiB weights + 4 + 7.875 GiB KV for 128k), 16 replicas */
    cl = cluster(16, 1);
    assert_int_equal(tsr_cluster_plan_make(&c, &cl, &p), 0);
    assert_int_equal(p.tp, 8);
    assert_int_equal(p.pp, 1);
    assert_int_equal(p.replicas, 16);
    double w = 126 * layer_rank + 2 * emb_rank + 16384; /* 50,735,300,608 B */
    assert_true(p.stages[0].weight_bytes == w);
    assert_true(p.stages[0].kv_bytes_per_token == 2.0 * 126 * 128 * 2);    /* 64,512 */
    assert_int_equal(p.kv_tokens, (int64_t)floor((76 * GiB - w) / 64512)); /* 478,501 */
    assert_int_equal(p.kv_tokens, 478501);
    tsr_cluster_plan_free(&p);

    /* explicit tp = 4, pp = 4: 2 groups a node, 32 groups, 8 replicas */
    cl = cluster(16, 2);
    cl.tp = 4;
    cl.pp = 4;
    assert_int_equal(tsr_cluster_plan_make(&c, &cl, &p), 0);
    assert_int_equal(p.replicas, 8);
    assert_int_equal(p.gpus_used, 128);
    assert_true(p.stages[1].kv_bytes_per_token ==
                2.0 * (p.stages[1].layer_end - p.stages[1].layer_begin) * 2 * 128 * 2);
    tsr_cluster_plan_free(&p);
}

static void test_cluster_1t(void **state)
{
    struct tsr_model_config c = load("dense-1t.json");
    /* Per layer 2*20480*20480 (q, o) + 2*20480*2048 (k, v: 16 heads x 128)
     * + 3*20480*86016 (ffn) + 2*20480 = 6,207,610,880; x 160 = 993,217,740,800;
     * + 2*128256*20480 + 20480 = 998,471,127,040 parameters (1.82 TiB at bf16). */
    double mats = 2.0 * 20480 * 20480 + 2.0 * 20480 * 2048 + 3.0 * 20480 * 86016;
    double params = 160 * (mats + 2 * 20480) + 2.0 * 128256 * 20480 + 20480;
    assert_true(params == 998471127040.0);
    struct tsr_cluster cl = cluster(16, 2);
    struct tsr_cluster_plan p;
    int rc = tsr_cluster_plan_make(&c, &cl, &p);
    if (rc) fail_msg("%s", tsr_last_error());
    assert_true(p.n_params == params);
    /* Per GPU with tp = 8: a layer is mats/8 + 40,960 = 775,987,200 params (1.445 GiB) and
     * 2 * 2 KV heads * 128 * 2 = 1,024 B of KV per token (128 MiB for 128k tokens). 76 GiB holds
     * ~48 such layers: pp = 3 (54 layers) does not fit, pp = 4 (40 each) does; 4 replicas. */
    double layer_rank = mats / 8 + 2 * 20480;
    assert_true(layer_rank == 775987200.0);
    assert_int_equal(p.tp, 8);
    assert_int_equal(p.pp, 4);
    assert_int_equal(p.replicas, 4);
    assert_int_equal(p.gpus_used, 128);
    double emb_rank = 16032.0 * 20480;          /* 328,335,360 */
    double w_mid = 2 * 40 * layer_rank;         /* 62,078,976,000 B = 57.82 GiB */
    double w0 = w_mid + 2 * emb_rank;           /* 62,735,646,720 B = 58.43 GiB */
    double w3 = w_mid + 2 * (emb_rank + 20480); /* 62,735,687,680 B */
    double kvt = 2.0 * 40 * 2 * 128 * 2;        /* 40,960 B/token */
    for (int s = 0; s < 4; s++) {
        assert_int_equal(p.stages[s].layer_begin, 40 * s);
        assert_int_equal(p.stages[s].layer_end, 40 * s + 40);
        assert_true(p.stages[s].weight_bytes == (s == 0 ? w0 : s == 3 ? w3 : w_mid));
        assert_true(p.stages[s].kv_bytes_per_token == kvt);
    }
    /* tokens: (76 GiB - w) / 40,960 = 460,662 (stage 0), 476,694 (1, 2), 460,661 (3) */
    assert_int_equal(p.stages[0].kv_tokens, 460662);
    assert_int_equal(p.stages[1].kv_tokens, 476694);
    assert_int_equal(p.stages[3].kv_tokens, 460661);
    assert_int_equal(p.kv_tokens, 460661);
    tsr_cluster_plan_free(&p);

    /* int4 (Q4_0 with scales, 0.5625 B/param, 523 GiB in all): pp = 1 needs 65.0 GiB weights
     * + 4 GiB + 20 GiB KV (160 layers * 1 KiB/token * 128k) = 89.4 GiB: no; pp = 2 fits. */
    cl = cluster(16, 18.0 / 32);
    assert_int_equal(tsr_cluster_plan_make(&c, &cl, &p), 0);
    assert_int_equal(p.pp, 2);
    assert_int_equal(p.replicas, 8);
    tsr_cluster_plan_free(&p);
}

static void test_cluster_not_fit(void **state)
{
    /* 405B at bf16 on one 8 x 80 GiB node: tp = 8, pp = 1 at most. The GPU needs
     * 126 * 398,491,648 * 2 + 2 * 262,668,288 * 2 + 16384 * 2 = 101,470,601,216 B (94.5 GiB)
     * + 4 GiB + 131072 * 64,512 B (7.875 GiB) = 106.38 GiB: 26.4 GiB over. */
    struct tsr_model_config c = load("llama3-405b.json");
    struct tsr_cluster cl = cluster(1, 2);
    struct tsr_cluster_plan p;
    assert_int_equal(tsr_cluster_plan_make(&c, &cl, &p), TSR_EEXHAUSTED);
    double need = 101470601216.0 + 4 * GiB + 131072.0 * 64512;
    char over[32], msg[512];
    snprintf(over, sizeof over, "%.1f GiB over", (need - 80 * GiB) / GiB);
    assert_string_equal(over, "26.4 GiB over");
    snprintf(msg, sizeof msg,
             "needs 756.0 GiB of weights across 8 GPUs with 80.0 GiB each: the fullest GPU "
             "(tp=8 x pp=1, stage 0) needs 106.4 GiB (94.5 GiB weights + 4.0 GiB reserve + 7.9 "
             "GiB KV for 131072 tokens), %s",
             over);
    assert_string_equal(tsr_last_error(), msg);
    assert_null(p.stages);

    /* 1T on 2 nodes: pp = 2 at most, 80 layers of 1.445 GiB = 116.2 GiB a GPU before KV */
    struct tsr_model_config t = load("dense-1t.json");
    cl = cluster(2, 2);
    assert_int_equal(tsr_cluster_plan_make(&t, &cl, &p), TSR_EEXHAUSTED);
    assert_non_null(strstr(tsr_last_error(), "needs 1.8 TiB of weights across 16 GPUs"));
    assert_non_null(strstr(tsr_last_error(), "116.2 GiB weights"));

    /* A short context does not rescue weights that do not fit. */
    cl.context = 1;
    assert_int_equal(tsr_cluster_plan_make(&t, &cl, &p), TSR_EEXHAUSTED);

    /* bad requests */
    cl = cluster(16, 2);
    cl.tp = 16;
    assert_int_equal(tsr_cluster_plan_make(&c, &cl, &p), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "tp=16 exceeds the 8 GPUs of a node"));
    cl.tp = 8;
    cl.pp = 17;
    assert_int_equal(tsr_cluster_plan_make(&c, &cl, &p), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "tp=8 x pp=17 needs 17 groups of 8 GPUs"));
    cl.tp = 6;
    cl.pp = 0;
    assert_int_equal(tsr_cluster_plan_make(&c, &cl, &p), TSR_EINVAL);
    cl = cluster(0, 2);
    assert_int_equal(tsr_cluster_plan_make(&c, &cl, &p), TSR_EINVAL);
}

static void test_cluster_small(void **state)
{
    /* SmolLM2 on 1 node of 8: tp = 3 (largest divisor of 9 <= 8 with 3 KV heads), two groups a
     * node (2 GPUs idle), pp = 1, 2 replicas. */
    struct tsr_model_config c = load("smollm2-135m.json");
    struct tsr_cluster cl = cluster(1, 2);
    struct tsr_cluster_plan p;
    assert_int_equal(tsr_cluster_plan_make(&c, &cl, &p), 0);
    assert_int_equal(p.tp, 3);
    assert_int_equal(p.pp, 1);
    assert_int_equal(p.replicas, 2);
    assert_int_equal(p.gpus_used, 6);
    assert_int_equal(p.context, 8192);
    assert_int_equal(p.stages[0].kv_tokens, (int64_t)floor((76 * GiB - 2 * 44861760.0) / 7680));
    tsr_cluster_plan_free(&p);
    /* reserve given; explicit pp */
    cl.reserve = 0;
    cl.pp = 2;
    assert_int_equal(tsr_cluster_plan_make(&c, &cl, &p), 0);
    assert_int_equal(p.replicas, 1);
    assert_true(p.reserve == 0);
    tsr_cluster_plan_free(&p);
}

static void test_units(void **state)
{
    double b;
    assert_int_equal(tsr_plan_parse_size("80GiB", &b), 0);
    assert_true(b == 80 * GiB);
    assert_int_equal(tsr_plan_parse_size("80GB", &b), 0);
    assert_true(b == 80e9);
    assert_int_equal(tsr_plan_parse_size("141G", &b), 0);
    assert_true(b == 141 * GiB);
    assert_int_equal(tsr_plan_parse_size("1.5TiB", &b), 0);
    assert_true(b == 1.5 * 1024 * GiB);
    assert_int_equal(tsr_plan_parse_size("512mib", &b), 0);
    assert_true(b == 512.0 * 1024 * 1024);
    assert_int_equal(tsr_plan_parse_size("100B", &b), 0);
    assert_true(b == 100);
    assert_int_equal(tsr_plan_parse_size("80", &b), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "needs a unit"));
    assert_int_equal(tsr_plan_parse_size("80XB", &b), TSR_EINVAL);
    assert_int_equal(tsr_plan_parse_size("-1GiB", &b), TSR_EINVAL);
    assert_int_equal(tsr_plan_parse_size("GiB", &b), TSR_EINVAL);
    assert_int_equal(tsr_plan_parse_size("inf GiB", &b), TSR_EINVAL);

    assert_int_equal(tsr_plan_dtype_bytes("bf16", &b), 0);
    assert_true(b == 2);
    assert_int_equal(tsr_plan_dtype_bytes("fp8", &b), 0);
    assert_true(b == 1);
    assert_int_equal(tsr_plan_dtype_bytes("int8", &b), 0);
    assert_true(b == 1.0625);
    assert_int_equal(tsr_plan_dtype_bytes("int4", &b), 0);
    assert_true(b == 0.5625);
    assert_int_equal(tsr_plan_dtype_bytes("int3", &b), TSR_EINVAL);

    char buf[32];
    assert_string_equal(tsr_plan_format_size(12, buf, sizeof buf), "12 B");
    assert_string_equal(tsr_plan_format_size(80 * GiB, buf, sizeof buf), "80.0 GiB");
    assert_string_equal(tsr_plan_format_size(516096, buf, sizeof buf), "504.0 KiB");
    assert_string_equal(tsr_plan_format_size(2 * 998471127040.0, buf, sizeof buf), "1.8 TiB");
}

/* ---- Mixture of experts and multi-head latent attention ---- */

/* The DeepSeek V3 shape (Kimi K2 differs in heads, experts, vocabulary, dense layers), for the
 * hand arithmetic below; written from the published shapes, not from the code under test. */
struct ds_shape {
    double heads, experts, vocab, dense_layers, moe_layers;
};
static const struct ds_shape KIMI = {64, 384, 163840, 1, 60};
static const struct ds_shape DSV3 = {128, 256, 129280, 3, 58};

/* Parameters on one GPU: tp ranks split heads, dense FFN (18432), shared expert (2048) and
 * vocabulary; ep ranks hold experts / ep whole experts of 3 x 7168 x 2048 each; the router
 * (experts x 7168) and MLA's latent projections are replicated. stage_layers: {dense, moe}. */
static double ds_rank(const struct ds_shape *m, double tp, double ep, double dense, double moe,
                      int emb, int head)
{
    double d = 7168, h = m->heads / tp;
    double attn = d * 1536 + 1536 + 1536 * h * (128 + 64)        /* q_a, q_a_norm, q_b */
                  + d * (512 + 64) + 512 + 512 * h * (128 + 128) /* kv_a, kv_a_norm, kv_b */
                  + h * 128 * d /* o */ + 2 * d /* attn_norm, ffn_norm */;
    double dense_ffn = 3 * d * 18432 / tp;
    double moe_ffn = m->experts * d + (m->experts / ep) * 3 * d * 2048 + 3 * d * 2048 / tp;
    double vocab_rows = m->vocab / tp;
    return dense * (attn + dense_ffn) + moe * (attn + moe_ffn) + (emb ? vocab_rows * d : 0) +
           (head ? vocab_rows * d + d : 0);
}

static void test_moe_kimi_deepseek(void **state)
{
    struct tsr_model_config k = load("kimi-k2.json");
    assert_string_equal(k.arch, "kimi_k2");
    assert_int_equal(k.n_expert, 384);
    assert_int_equal(k.n_expert_used, 8);
    assert_int_equal(k.moe_ffn_dim, 2048);
    assert_int_equal(k.shared_ffn_dim, 2048);
    assert_int_equal(k.n_dense_layer, 1);
    assert_int_equal(k.kv_lora_rank, 512);
    assert_int_equal(k.head_dim, 192);
    assert_int_equal(k.rope_scaling, TSR_ROPE_YARN);
    /* DeepSeek's YaRN runs: the softmax scale takes yarn_get_mscale(32, 1)^2 */
    assert_int_equal(tsr_config_check_runnable(&k, "k"), 0);
    assert_int_equal(k.rope_orig_ctx, 4096);
    assert_float_equal(k.rope_mscale_all_dim, 1.0, 0);
    assert_float_equal(tsr_config_attn_scale(&k), pow(0.1 * log(32.0) + 1, 2) / sqrt(192.0), 1e-7);
    /* Kimi K2, per layer:
     *   MLA: q_a 7168*1536 = 11,010,048 + q_a_norm 1536 + q_b 1536*64*192 = 18,874,368
     *        + kv_a 7168*576 = 4,128,768 + kv_a_norm 512 + kv_b 512*64*256 = 8,388,608
     *        + o 64*128*7168 = 58,720,256 = 101,124,096; + 2 norms of 7168 = 101,138,432
     *   dense FFN 3*7168*18432 = 396,361,728 (layer 0)
     *   experts: router 384*7168 = 2,752,512 + 384 experts * 3*7168*2048 (44,040,192 each)
     *        = 16,911,433,728 + shared 44,040,192 = 16,958,226,432 (layers 1-60)
     * total 497,500,160 + 60 * 17,059,364,864 + 2 * 163840*7168 (untied) + 7168
     *   = 1,026,408,209,408: 1.026 T, 1.3% under the published 1.04 T (within 2%: Moonshot
     *   rounds; "1T total" in its card). */
    double attn = 7168.0 * 1536 + 1536 + 1536.0 * 64 * 192 + 7168.0 * 576 + 512 + 512.0 * 64 * 256 +
                  64.0 * 128 * 7168 + 2 * 7168;
    assert_true(attn == 101138432.0);
    double expert = 3.0 * 7168 * 2048;
    assert_true(expert == 44040192.0);
    double moe = attn + 384.0 * 7168 + 384 * expert + expert;
    assert_true(moe == 17059364864.0);
    double kimi = attn + 3.0 * 7168 * 18432 + 60 * moe + 2.0 * 163840 * 7168 + 7168;
    assert_true(kimi == 1026408209408.0);
    assert_true(fabs(kimi / 1.04e12 - 1) < 0.02);
    assert_true(tsr_config_n_params(&k) == kimi);

    /* Kimi K2 fp8 on 16 x 8 x 80 GiB: ep = 8 (48 experts a GPU, ~2.1e9 params a layer) is far
     * over; the next replica size, 2 TP groups, takes pp = 1 and ep = 16: 24 experts a GPU.
     * Per GPU: MLA with 8 heads 25,888,768 + norms 14,336; layer 0's FFN 3*7168*2304 =
     * 49,545,216; an expert layer 2,752,512 + 24 * 44,040,192 + 3*7168*256 = 1,065,222,144;
     * vocabulary rows 20480 * 7168 twice + 7168:
     * 75,448,320 + 60 * 1,091,125,248 + 293,601,280 + 7168 = 65,836,571,648 B = 61.3 GiB. */
    struct tsr_cluster cl = cluster(16, 1);
    struct tsr_cluster_plan p;
    int rc = tsr_cluster_plan_make(&k, &cl, &p);
    if (rc) fail_msg("%s", tsr_last_error());
    assert_true(p.n_params == kimi);
    assert_int_equal(p.tp, 8);
    assert_int_equal(p.ep, 16);
    assert_int_equal(p.dp, 2);
    assert_int_equal(p.pp, 1);
    assert_int_equal(p.replicas, 8);
    assert_int_equal(p.gpus_used, 128);
    assert_int_equal(p.experts_per_gpu, 24);
    assert_int_equal(p.shard.world, 16);
    double w = 75448320.0 + 60 * 1091125248.0 + 2 * 20480.0 * 7168 + 7168;
    assert_true(w == 65836571648.0);
    assert_true(w == ds_rank(&KIMI, 8, 16, 1, 60, 1, 1));
    assert_true(p.stages[0].weight_bytes == w);
    for (int r = 0; r < 16; r++) assert_true(p.shard.ranks[r].weight_bytes == w);
    /* MLA KV: 61 layers * (512 + 64) * 2 bytes = 70,272 B a token, whole on every GPU (not
     * 2 * 64 heads * 192 * 2 * 61 = 2,998,272 of a GQA cache) */
    assert_true(p.kv_bytes_per_token == 61.0 * 576 * 2);
    assert_true(p.stages[0].kv_bytes_per_token == 70272);
    assert_int_equal(p.kv_tokens, (int64_t)floor((76 * GiB - w) / 70272)); /* 224,382 */
    assert_int_equal(p.kv_tokens, 224382);
    /* all-to-all: 60 expert layers * 2 (dispatch, combine) * 8 experts * 7168 * 2 B */
    assert_true(p.a2a_bytes_per_token == 60.0 * 2 * 8 * 7168 * 2);
    assert_true(p.a2a_bytes_per_token == 13762560.0);
    /* rank 9: tp rank 1 of attention group 1, experts 216-239 */
    const struct tsr_rank_plan *r9 = &p.shard.ranks[9];
    assert_int_equal(r9->tp_rank, 1);
    assert_int_equal(r9->dp_rank, 1);
    assert_int_equal(r9->expert_begin, 216);
    assert_int_equal(r9->expert_end, 240);
    const struct tsr_slice *s = find(r9, "blk.5.ffn_down_exps.weight");
    assert_int_equal(s->split, TSR_SPLIT_ROWS);
    assert_int_equal(s->offset, 216 * 7168);
    assert_int_equal(s->length, 24 * 7168);
    assert_int_equal(s->rows, 384 * 7168);
    assert_int_equal(s->cols, 2048);
    s = find(r9, "blk.5.attn_q_b.weight"); /* heads 8-15 of 64, 192 rows each */
    assert_int_equal(s->offset, 8 * 192);
    assert_int_equal(s->length, 8 * 192);
    assert_null(tsr_rank_plan_find(r9, "blk.0.ffn_gate_exps.weight")); /* layer 0 is dense */
    assert_non_null(tsr_rank_plan_find(r9, "blk.0.ffn_gate.weight"));
    tsr_cluster_plan_free(&p);

    /* Kimi K2 bf16 on 16 x 8 x 80 GiB: ep = 32 (12 experts a GPU), 4 replicas */
    cl = cluster(16, 2);
    assert_int_equal(tsr_cluster_plan_make(&k, &cl, &p), 0);
    assert_int_equal(p.ep, 32);
    assert_int_equal(p.pp, 1);
    assert_int_equal(p.replicas, 4);
    assert_true(p.stages[0].weight_bytes == 2 * ds_rank(&KIMI, 8, 32, 1, 60, 1, 1));
    tsr_cluster_plan_free(&p);
    /* Kimi K2 on 4 x 8 x 141 GiB: bf16 ep = 16 (2 replicas); fp8 ep = 8 (4 replicas) */
    cl = cluster(4, 2);
    cl.gpu_mem = 141 * GiB;
    assert_int_equal(tsr_cluster_plan_make(&k, &cl, &p), 0);
    assert_int_equal(p.ep, 16);
    assert_int_equal(p.replicas, 2);
    assert_true(p.stages[0].weight_bytes == 2 * ds_rank(&KIMI, 8, 16, 1, 60, 1, 1));
    tsr_cluster_plan_free(&p);
    cl.bytes_per_weight = 1;
    assert_int_equal(tsr_cluster_plan_make(&k, &cl, &p), 0);
    assert_int_equal(p.ep, 8);
    assert_int_equal(p.dp, 1);
    assert_int_equal(p.replicas, 4);
    assert_true(p.stages[0].weight_bytes == ds_rank(&KIMI, 8, 8, 1, 60, 1, 1));
    tsr_cluster_plan_free(&p);

    /* DeepSeek V3: attention with 128 heads 187,107,328 + norms 14,336 = 187,121,664; 3 dense
     * layers of + 396,361,728; 58 expert layers of + 256*7168 + 257 * 44,040,192; untied
     * 129280 * 7168 twice; 671,026,404,352 = 671.0 B (published 671 B: within 0.1%). */
    struct tsr_model_config d = load("deepseek-v3.json");
    double dattn = 7168.0 * 1536 + 1536 + 1536.0 * 128 * 192 + 7168.0 * 576 + 512 +
                   512.0 * 128 * 256 + 128.0 * 128 * 7168 + 2 * 7168;
    assert_true(dattn == 187121664.0);
    double dsv3 = 3 * (dattn + 3.0 * 7168 * 18432) + 58 * (dattn + 256.0 * 7168 + 257 * expert) +
                  2.0 * 129280 * 7168 + 7168;
    assert_true(dsv3 == 671026404352.0);
    assert_true(fabs(dsv3 / 671e9 - 1) < 0.001);
    assert_true(tsr_config_n_params(&d) == dsv3);
    /* 4 x 8 x 141 GiB bf16: ep = 8 needs 32 experts a GPU (~157 GiB): no; ep = 16:
     * 3 * 86,196,224 + 58 * 748,634,112 + 2 * 16160*7168 + 7168 = 43,911,044,096 params,
     * 87,822,088,192 B (81.8 GiB); 2 replicas. */
    cl = cluster(4, 2);
    cl.gpu_mem = 141 * GiB;
    assert_int_equal(tsr_cluster_plan_make(&d, &cl, &p), 0);
    assert_true(p.n_params == dsv3);
    assert_int_equal(p.ep, 16);
    assert_int_equal(p.pp, 1);
    assert_int_equal(p.replicas, 2);
    w = 2 * (3 * 86196224.0 + 58 * 748634112.0 + 2 * 16160.0 * 7168 + 7168);
    assert_true(w == 87822088192.0);
    assert_true(w == 2 * ds_rank(&DSV3, 8, 16, 3, 58, 1, 1));
    assert_true(p.stages[0].weight_bytes == w);
    assert_int_equal(p.kv_tokens, (int64_t)floor((137 * GiB - w) / 70272));
    assert_true(p.a2a_bytes_per_token == 58.0 * 2 * 8 * 7168 * 2);
    tsr_cluster_plan_free(&p);
    /* fp8: ep = 8 fits, 4 replicas: 3 * 86,196,224 + 58 * 1,453,277,184 + 231,669,760 + 7168 */
    cl.bytes_per_weight = 1;
    assert_int_equal(tsr_cluster_plan_make(&d, &cl, &p), 0);
    assert_int_equal(p.ep, 8);
    assert_int_equal(p.replicas, 4);
    w = 3 * 86196224.0 + 58 * 1453277184.0 + 2 * 16160.0 * 7168 + 7168;
    assert_true(w == 84780342272.0);
    assert_true(w == ds_rank(&DSV3, 8, 8, 3, 58, 1, 1));
    assert_true(p.stages[0].weight_bytes == w);
    tsr_cluster_plan_free(&p);
    /* 16 x 8 x 80 GiB fp8: ep = 16, 8 replicas */
    cl = cluster(16, 1);
    assert_int_equal(tsr_cluster_plan_make(&d, &cl, &p), 0);
    assert_int_equal(p.ep, 16);
    assert_int_equal(p.pp, 1);
    assert_int_equal(p.replicas, 8);
    assert_true(p.stages[0].weight_bytes == ds_rank(&DSV3, 8, 16, 3, 58, 1, 1));
    tsr_cluster_plan_free(&p);
    /* bf16: 2 TP groups (~80 GiB of weights a GPU) do not fit; 3 do as pp = 3 x ep = 8 (ep = 24
     * does not divide 256), 5 replicas and 8 GPUs idle. Layers balance as if all were expert
     * layers: 20 / 21 / 20, stage 0 holding the 3 dense layers and the embedding. */
    cl = cluster(16, 2);
    assert_int_equal(tsr_cluster_plan_make(&d, &cl, &p), 0);
    assert_int_equal(p.ep, 8);
    assert_int_equal(p.pp, 3);
    assert_int_equal(p.replicas, 5);
    assert_int_equal(p.gpus_used, 120);
    assert_int_equal(p.stages[0].layer_end, 20);
    assert_int_equal(p.stages[1].layer_end, 41);
    assert_true(p.stages[0].weight_bytes == 2 * ds_rank(&DSV3, 8, 8, 3, 17, 1, 0));
    assert_true(p.stages[1].weight_bytes == 2 * ds_rank(&DSV3, 8, 8, 0, 21, 0, 0));
    assert_true(p.stages[2].weight_bytes == 2 * ds_rank(&DSV3, 8, 8, 0, 20, 0, 1));
    assert_true(p.stages[1].kv_bytes_per_token == 21.0 * 576 * 2);
    tsr_cluster_plan_free(&p);
}

static void test_moe_not_fit_and_errors(void **state)
{
    /* Kimi K2 bf16 on one 8 x 80 GiB node: tp = ep = 8, 48 experts a GPU:
     * 75,448,320 + 60 * (25,902,104 + 2,752,512 + 48 * 44,040,192 + 5,505,024) + 293,608,448
     * = 129,254,448,128 params = 258,508,896,256 B (240.8 GiB) + 4 GiB + 131072 * 70,272 B
     * (8.6 GiB) of KV = 253.3 GiB: 173.3 GiB over. */
    struct tsr_model_config k = load("kimi-k2.json");
    struct tsr_cluster cl = cluster(1, 2);
    struct tsr_cluster_plan p;
    double w = 2 * ds_rank(&KIMI, 8, 8, 1, 60, 1, 1);
    assert_true(w == 258508896256.0);
    double need = w + 4 * GiB + 131072.0 * 70272;
    assert_int_equal(tsr_cluster_plan_make(&k, &cl, &p), TSR_EEXHAUSTED);
    char msg[512];
    snprintf(msg, sizeof msg,
             "needs 1.9 TiB of weights across 8 GPUs with 80.0 GiB each: the fullest GPU "
             "(tp=8 x pp=1, ep=8, stage 0) needs %.1f GiB (240.8 GiB weights + 4.0 GiB reserve + "
             "8.6 GiB KV for 131072 tokens), %.1f GiB over",
             need / GiB, (need - 80 * GiB) / GiB);
    assert_string_equal(tsr_last_error(), msg);
    assert_non_null(strstr(msg, "253.3 GiB (240.8"));
    assert_non_null(strstr(msg, "173.3 GiB over"));
    assert_null(p.stages);

    /* ep given: kept, and its rules named */
    cl = cluster(16, 1);
    cl.ep = 12;
    assert_int_equal(tsr_cluster_plan_make(&k, &cl, &p), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "ep=12 is not a multiple of tp=8"));
    cl.ep = 40;
    assert_int_equal(tsr_cluster_plan_make(&k, &cl, &p), TSR_EINVAL);
    assert_string_equal(tsr_last_error(), "ep=40 does not divide 384 experts");
    cl.ep = 256;
    assert_int_equal(tsr_cluster_plan_make(&k, &cl, &p), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "ep=256 does not divide 384 experts"));
    cl.ep = 384;
    assert_int_equal(tsr_cluster_plan_make(&k, &cl, &p), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "needs 48 groups of 8 GPUs"));
    cl.ep = 64;
    assert_int_equal(tsr_cluster_plan_make(&k, &cl, &p), 0);
    assert_int_equal(p.ep, 64);
    assert_int_equal(p.experts_per_gpu, 6);
    assert_int_equal(p.replicas, 2);
    tsr_cluster_plan_free(&p);
    struct tsr_model_config dense = load("llama3-405b.json");
    cl.ep = 16;
    assert_int_equal(tsr_cluster_plan_make(&dense, &cl, &p), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "applies to mixture-of-experts models"));

    /* Mixtral 8x7B: 32 layers of GQA attention (4096*4096*2 + 4096*1024*2) + router 8*4096 + 8
     * experts of 3*4096*14336 + 2 norms; 2 * 32000*4096 + 4096 = 46,702,792,704 (46.7 B). */
    struct tsr_model_config m = load("mixtral-8x7b.json");
    double layer =
        2.0 * 4096 * 4096 + 2.0 * 4096 * 1024 + 8.0 * 4096 + 8 * 3.0 * 4096 * 14336 + 2 * 4096;
    double mix = 32 * layer + 2.0 * 32000 * 4096 + 4096;
    assert_true(mix == 46702792704.0);
    assert_true(tsr_config_n_params(&m) == mix);
    struct tsr_shard_plan sp;
    assert_int_equal(tsr_shard_plan_make(&m, 8, 1, 2, 2, &sp), 0);
    assert_true(sp.n_params == mix);
    assert_int_equal(sp.ep, 8);
    assert_int_equal(sp.ranks[3].expert_begin, 3); /* one expert a GPU */
    assert_int_equal(sp.ranks[3].expert_end, 4);
    tsr_shard_plan_free(&sp);
    /* tp must divide the experts: 6 does not divide 8 */
    assert_int_equal(tsr_shard_plan_make(&m, 4, 1, 2, 2, &sp), 0);
    tsr_shard_plan_free(&sp);
    m.n_head = 48; /* so that heads allow tp = 6 */
    m.n_kv_head = 6;
    expect_error(&m, 6, 1, "tp=6 does not divide 8 experts");
}

/* config.json of MoE / MLA models: read for planning and running (YaRN with cos/sin scaling and
 * outside DeepSeek refused for running), malformed ones named. */
static int cfg(const char *json, struct tsr_model_config *c)
{
    return tsr_config_from_json_text(json, strlen(json), "c.json", c);
}

#define MOE(extra)                                                                                 \
    "{\"model_type\":\"qwen3_moe\",\"num_hidden_layers\":2,\"hidden_size\":64,"                    \
    "\"intermediate_size\":128,\"num_attention_heads\":4,\"num_key_value_heads\":2,"               \
    "\"vocab_size\":100,\"num_experts\":8,\"num_experts_per_tok\":2,"                              \
    "\"moe_intermediate_size\":32,\"max_position_embeddings\":64" extra "}"
#define MLA(extra)                                                                                 \
    "{\"model_type\":\"deepseek_v3\",\"num_hidden_layers\":3,\"hidden_size\":64,"                  \
    "\"intermediate_size\":128,\"num_attention_heads\":4,\"vocab_size\":100,"                      \
    "\"n_routed_experts\":8,\"num_experts_per_tok\":2,\"moe_intermediate_size\":64,"               \
    "\"n_shared_experts\":1,\"first_k_dense_replace\":1,\"kv_lora_rank\":16,"                      \
    "\"qk_nope_head_dim\":16,\"qk_rope_head_dim\":8,\"v_head_dim\":16,\"max_position_"             \
    "embeddings\":64" extra "}"

static void expect_cfg(const char *json, int rc, const char *msg)
{
    struct tsr_model_config c;
    assert_int_equal(cfg(json, &c), rc);
    if (msg && strcmp(tsr_last_error(), msg)) fail_msg("'%s' is not '%s'", tsr_last_error(), msg);
}

static void test_moe_config(void **state)
{
    struct tsr_model_config c;
    assert_int_equal(cfg(MOE(""), &c), 0);
    assert_int_equal(c.n_expert, 8);
    assert_int_equal(c.moe_ffn_dim, 32);
    assert_int_equal(c.shared_ffn_dim, 0);
    /* Experts on standard attention run (tests/unit/test_moe.c); MLA below too. */
    assert_int_equal(tsr_config_check_runnable(&c, "m"), 0);
    assert_int_equal(cfg(MOE(",\"model_type\":\"qwen2_moe\","
                             "\"shared_expert_intermediate_size\":64"),
                         &c),
                     0);
    assert_int_equal(c.shared_ffn_dim, 64);
    assert_int_equal(c.shared_expert_gate, 1);
    assert_int_equal(c.qkv_bias, 1);
    assert_int_equal(cfg(MLA(""), &c), 0);
    assert_int_equal(c.q_lora_rank, 0); /* absent: a plain query projection */
    assert_int_equal(c.head_dim, 24);
    assert_int_equal(c.shared_ffn_dim, 64);
    struct tsr_shard_plan sp;
    assert_int_equal(tsr_shard_plan_make(&c, 2, 1, 1, 1, &sp), 0);
    assert_non_null(tsr_rank_plan_find(&sp.ranks[1], "blk.1.attn_q.weight"));
    assert_null(tsr_rank_plan_find(&sp.ranks[1], "blk.1.attn_q_a.weight"));
    assert_true(sp.n_params == tsr_config_n_params(&c));
    tsr_shard_plan_free(&sp);
    /* MLA runs (tests/unit/test_mla.c); its RoPE turns adjacent pairs of qk_rope_head_dim */
    assert_int_equal(tsr_config_check_runnable(&c, "m"), 0);
    assert_int_equal(c.rope_neox, 0);
    assert_int_equal(tsr_config_rope_dim(&c), c.qk_rope_head_dim);

    /* Malformed */
    expect_cfg(MOE(",\"num_experts_per_tok\":9"), TSR_EFORMAT,
               "c.json: num_experts_per_tok = 9 is more than the 8 experts (num_experts)");
    expect_cfg(MOE(",\"num_experts_per_tok\":0"), TSR_EFORMAT,
               "c.json: num_experts_per_tok = 0 must be at least 1");
    expect_cfg(MOE(",\"num_experts\":0"), TSR_EFORMAT,
               "c.json: num_experts = 0 must be at least 1");
    expect_cfg(MOE(",\"num_experts\":5000"), TSR_EINVAL,
               "c.json: num_experts = 5000 is over the limit of 4096 (Kimi K2 has 384)");
    expect_cfg(MOE(",\"moe_intermediate_size\":null"), TSR_EFORMAT,
               "c.json: \"moe_intermediate_size\" missing");
    expect_cfg(MOE(",\"decoder_sparse_step\":2"), TSR_EUNSUPPORTED,
               "c.json: \"decoder_sparse_step\" must be 1 (other layouts of expert layers are not "
               "supported)");
    expect_cfg(MOE(",\"mlp_only_layers\":[0]"), TSR_EUNSUPPORTED, NULL);
    expect_cfg(MLA(",\"kv_lora_rank\":0"), TSR_EFORMAT,
               "c.json: kv_lora_rank = 0 must be at least 1");
    expect_cfg(MLA(",\"kv_lora_rank\":null"), TSR_EFORMAT, "c.json: \"kv_lora_rank\" missing");
    expect_cfg(MLA(",\"q_lora_rank\":100000"), TSR_EINVAL,
               "c.json: q_lora_rank = 100000 is over the limit of 16384 (DeepSeek V3 has 1536 and "
               "512)");
    expect_cfg(MLA(",\"qk_rope_head_dim\":7"), TSR_EFORMAT, NULL);
    expect_cfg(MLA(",\"v_head_dim\":-1"), TSR_EFORMAT,
               "c.json: \"v_head_dim\" must be a non-negative integer");
    expect_cfg(MLA(",\"first_k_dense_replace\":3"), TSR_EFORMAT,
               "c.json: first_k_dense_replace = 3 leaves none of the 3 layers with experts");
    expect_cfg(MLA(",\"n_group\":3"), TSR_EFORMAT,
               "c.json: n_group = 3 does not divide 8 routed experts");
    expect_cfg(MLA(",\"n_group\":2,\"topk_group\":3"), TSR_EFORMAT,
               "c.json: topk_group = 3 is more than n_group = 2");
    expect_cfg(MLA(",\"moe_layer_freq\":2"), TSR_EUNSUPPORTED, NULL);
    expect_cfg(MLA(",\"rope_scaling\":{\"type\":\"yarn\"}"), TSR_EFORMAT,
               "c.json: rope_scaling 'yarn' needs a number \"factor\"");
    /* yarn with mscale other than mscale_all_dim would scale cos and sin: refused to run */
    struct tsr_model_config y;
    assert_int_equal(cfg(MLA(",\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4,"
                             "\"mscale\":0.7}"),
                         &y),
                     0);
    assert_int_equal(tsr_config_check_runnable(&y, "m"), TSR_EUNSUPPORTED);
    assert_string_equal(tsr_last_error(), "m: YaRN with mscale 0.7 and mscale_all_dim 0 scales "
                                          "RoPE's cos and sin, which tessera does not compute "
                                          "(they are equal in DeepSeek V2/V3 and Kimi K2)");
    /* Qwen's YaRN is another computation: planned, not run */
    assert_int_equal(cfg(MOE(",\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4}"), &y), 0);
    assert_int_equal(tsr_config_check_runnable(&y, "m"), TSR_EUNSUPPORTED);
    /* yarn stays refused for dense models; experts on a dense model_type stay refused */
    expect_cfg("{\"num_hidden_layers\":2,\"hidden_size\":64,\"intermediate_size\":128,"
               "\"num_attention_heads\":4,\"vocab_size\":100,\"max_position_embeddings\":64,"
               "\"rope_scaling\":{\"type\":\"yarn\","
               "\"factor\":4}}",
               TSR_EUNSUPPORTED, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_smollm2_config),
        cmocka_unit_test(test_smollm2_tp3),
        cmocka_unit_test(test_smollm2_tp9_kv_replicated),
        cmocka_unit_test(test_smollm2_pp_balanced),
        cmocka_unit_test(test_tp3_pp2_numbering),
        cmocka_unit_test(test_coverage),
        cmocka_unit_test(test_uneven),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_check_types),
        cmocka_unit_test(test_slice_bytes),
        cmocka_unit_test(test_cluster_405b),
        cmocka_unit_test(test_cluster_1t),
        cmocka_unit_test(test_cluster_not_fit),
        cmocka_unit_test(test_cluster_small),
        cmocka_unit_test(test_units),
        cmocka_unit_test(test_moe_kimi_deepseek),
        cmocka_unit_test(test_moe_not_fit_and_errors),
        cmocka_unit_test(test_moe_config),
    };
    return tsr_test_exit(cmocka_run_group_tests(tests, NULL, NULL));
}
