/* Multi-head latent attention (DeepSeek V2/V3, Kimi K2) on the CPU: two tiny Hugging Face
 * models (tests/reference/make_mla_golden.py: DeepSeek V3 with q_lora_rank, V3's routing and
 * V3's YaRN; DeepSeek V2 with a plain q_proj and V2's routing; a dense first layer, then MoE
 * layers) against their float64 forward written from Hugging Face's expanded attention, while
 * tessera computes the absorbed form over a cache of latent rows: every logit of a 24-token
 * prompt in one step (NMSE within f32 rounding, 1e-10 as test_moe, and the argmax wherever the
 * reference's margin exceeds 1e-3); the same prompt as a prefill then one token a step through
 * the paged cache, against the same golden; greedy decoding through the cache equal to the
 * teacher-forced argmax of the sequence it made; a bf16 cache (close, not equal); two sequences
 * in every step, each in its own blocks; --quantize q8_0 (kv_b widened). Then the cache's size
 * (one latent row a position, all heads) and what is refused: tp or pp > 1, a backend without
 * the op (CUDA's case), an FP8 cache. synthetic:deepseek-tiny (prefill vs decode steps) is in
 * test_moe's test_synthetic. */
#include <jansson.h>
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
#include "kernels/backend_impl.h" /* test_refused empties the CPU's slot */
#include "model/model.h"
#include "model/shard_plan.h"
#include "worker/forward.h"

#include "unit.h"

#define REF(f) TSR_SOURCE_DIR "/tests/reference/" f
#define NMSE   1e-10 /* f32 rounding through 2-3 layers, as test_moe */
#define MARGIN 1e-3  /* argmax must agree where the reference's top two differ by more */
#define PREFIX 10    /* tokens of the prompt prefilled before decoding the rest one by one */

struct golden {
    int n, V;
    int32_t ids[64];
    float *ref;  /* (n, V) float64 logits rounded to f32 */
    json_t *pos; /* argmax and margin a position */
    json_t *root;
};

static void golden_load(const char *name, struct golden *g)
{
    char path[512];
    json_error_t err;
    snprintf(path, sizeof path, REF("mla_tiny_%s_golden.json"), name);
    g->root = json_load_file(path, 0, &err);
    assert_non_null(g->root);
    json_t *toks = json_object_get(g->root, "tokens");
    g->pos = json_object_get(g->root, "positions");
    g->n = (int)json_array_size(toks);
    g->V = (int)json_integer_value(json_object_get(g->root, "n_vocab"));
    assert_true(g->n <= 64 && g->n > PREFIX);
    for (int i = 0; i < g->n; i++)
        g->ids[i] = (int32_t)json_integer_value(json_array_get(toks, (size_t)i));
    g->ref = malloc(sizeof(float) * (size_t)g->n * g->V);
    snprintf(path, sizeof path, REF("mla_tiny_%s_logits.bin"), name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fread(g->ref, sizeof(float) * g->V, (size_t)g->n, f), (size_t)g->n);
    fclose(f);
}

static void golden_free(struct golden *g)
{
    free(g->ref);
    json_decref(g->root);
}

static int argmax(const float *l, int V)
{
    int best = 0;
    for (int v = 1; v < V; v++)
        if (l[v] > l[best]) best = v;
    return best;
}

/* NMSE of got (n, V) against the golden; *agree: positions whose argmax is the golden's. */
static double nmse(const struct golden *g, const float *got, int *agree)
{
    double num = 0, den = 0;
    *agree = 0;
    for (int t = 0; t < g->n; t++) {
        const float *l = got + (size_t)t * g->V, *r = g->ref + (size_t)t * g->V;
        for (int v = 0; v < g->V; v++) {
            num += ((double)l[v] - r[v]) * ((double)l[v] - r[v]);
            den += (double)r[v] * r[v];
        }
        *agree += argmax(l, g->V) == argmax(r, g->V);
    }
    return num / den;
}

/* NMSE of got (n, V) against the golden; *checked: positions whose argmax was compared (margin
 * over MARGIN), all equal or the test fails. */
static double compare(const struct golden *g, const float *got, int *checked)
{
    int agree;
    *checked = 0;
    for (int t = 0; t < g->n; t++) {
        const float *l = got + (size_t)t * g->V;
        json_t *e = json_array_get(g->pos, (size_t)t);
        if (json_number_value(json_object_get(e, "margin")) <= MARGIN) continue;
        if (argmax(l, g->V) != json_integer_value(json_object_get(e, "argmax")))
            fail_msg("position %d: argmax %d, reference %d", t, argmax(l, g->V),
                     (int)json_integer_value(json_object_get(e, "argmax")));
        (*checked)++;
    }
    return nmse(g, got, &agree);
}

static tsr_runner_t *runner(tsr_model_t *m, tsr_backend_t *b, enum tsr_dtype kv, int max_tokens)
{
    struct tsr_runner_opts o = {
        .n_blocks = 4, .block_size = 16, .max_tokens = max_tokens, .kv_type = kv};
    tsr_runner_t *r;
    if (tsr_runner_new(m, b, &o, NULL, &r)) fail_msg("%s", tsr_last_error());
    return r;
}

/* The prompt as PREFIX tokens in one step, then one token a step: every position's logits. */
static void prefill_decode(tsr_runner_t *r, const struct golden *g, float *out)
{
    struct tsr_step st = tsr_test_step(g->ids, 0, PREFIX, 2);
    if (tsr_runner_forward(r, &st, out)) fail_msg("%s", tsr_last_error());
    for (int t = PREFIX; t < g->n; t++) {
        st = tsr_test_step(g->ids + t, t, 1, 2);
        if (tsr_runner_forward(r, &st, out + (size_t)t * g->V)) fail_msg("%s", tsr_last_error());
    }
}

static void check_golden(const char *name)
{
    struct golden g;
    golden_load(name, &g);
    char path[512];
    snprintf(path, sizeof path, REF("mla_tiny_%s"), name);
    tsr_model_t *m;
    if (tsr_model_open(path, &m)) fail_msg("%s", tsr_last_error());
    const struct tsr_model_config *c = tsr_model_config(m);
    assert_true(c->kv_lora_rank > 0 && c->n_expert > 0 && c->n_dense_layer == 1);
    tsr_backend_t *b = tsr_backend_cpu_new(1);
    float *got = malloc(sizeof(float) * (size_t)g.n * g.V);
    int checked;

    /* teacher forced, one step */
    tsr_runner_t *r = runner(m, b, TSR_F32, g.n);
    struct tsr_step st = tsr_test_step(g.ids, 0, g.n, 2);
    if (tsr_runner_forward(r, &st, got)) fail_msg("%s", tsr_last_error());
    double one = compare(&g, got, &checked);
    assert_true(checked >= g.n - 1);
    tsr_runner_free(r);

    /* through the cache: a prefill, then decode steps reading the latent rows written before */
    r = runner(m, b, TSR_F32, g.n);
    prefill_decode(r, &g, got);
    double cached = compare(&g, got, &checked);
    assert_true(checked >= g.n - 1);
    /* one latent row a position and layer: kv_lora_rank + qk_rope_head_dim f32, for all heads */
    assert_int_equal(tsr_runner_kv_bytes_per_pos(r),
                     (size_t)c->n_layer * (c->kv_lora_rank + c->qk_rope_head_dim) * 4);
    assert_int_equal(tsr_runner_kv_bytes(r), (size_t)(4 + 1) * 16 * tsr_runner_kv_bytes_per_pos(r));
    tsr_runner_free(r);

    /* a bf16 cache rounds the latent rows: close to the golden, not within f32 rounding */
    r = runner(m, b, TSR_BF16, g.n);
    prefill_decode(r, &g, got);
    int agree;
    double bf16 = nmse(&g, got, &agree);
    tsr_runner_free(r);
    printf("mla_tiny_%s vs float64 (%d positions, argmax at %d with margin > %g): NMSE %.3g in "
           "one step, %.3g as a prefill of %d then decode steps (bound %.0e); a bf16 cache: NMSE "
           "%.3g, argmax equal at %d\n",
           name, g.n, checked, MARGIN, one, cached, PREFIX, NMSE, bf16, agree);
    assert_true(one <= NMSE && cached <= NMSE);
    assert_true(bf16 <= 1e-3 && agree >= g.n - 2);

    /* greedy through the cache equals the teacher-forced argmax of the sequence it made */
    enum { GEN = 8 };
    int32_t seq[PREFIX + GEN];
    memcpy(seq, g.ids, sizeof(int32_t) * PREFIX);
    r = runner(m, b, TSR_F32, PREFIX + GEN);
    st = tsr_test_step(seq, 0, PREFIX, 2);
    if (tsr_runner_forward(r, &st, got)) fail_msg("%s", tsr_last_error());
    seq[PREFIX] = argmax(got + (size_t)(PREFIX - 1) * g.V, g.V);
    for (int t = PREFIX; t < PREFIX + GEN - 1; t++) {
        st = tsr_test_step(seq + t, t, 1, 2);
        if (tsr_runner_forward(r, &st, got)) fail_msg("%s", tsr_last_error());
        seq[t + 1] = argmax(got, g.V);
    }
    tsr_runner_free(r);
    r = runner(m, b, TSR_F32, PREFIX + GEN);
    st = tsr_test_step(seq, 0, PREFIX + GEN, 2);
    if (tsr_runner_forward(r, &st, got)) fail_msg("%s", tsr_last_error());
    for (int t = PREFIX - 1; t < PREFIX + GEN - 1; t++)
        if (argmax(got + (size_t)t * g.V, g.V) != seq[t + 1])
            fail_msg("greedy token %d: %d decoded, %d teacher forced", t + 1, seq[t + 1],
                     argmax(got + (size_t)t * g.V, g.V));
    tsr_runner_free(r);

    tsr_backend_free(b);
    tsr_model_free(m);
    free(got);
    golden_free(&g);
}

static void test_golden_deepseek_v3(void **state)
{
    (void)state;
    check_golden("deepseek_v3");
}

static void test_golden_deepseek_v2(void **state)
{
    (void)state;
    check_golden("deepseek_v2");
}

/* Two sequences in every step, each with its own blocks of the latent cache: A, the golden's
 * prompt (a prefill of PREFIX, then a token a step), and B (6 tokens, then a token a step, 20 in
 * all) beside it. A's logits are the golden's; B's those of B alone in one step. */
static void test_batched(void **state)
{
    (void)state;
    enum { B0 = 6, NB = 20 };
    struct golden g;
    golden_load("deepseek_v2", &g);
    tsr_model_t *m;
    assert_int_equal(tsr_model_open(REF("mla_tiny_deepseek_v2"), &m), 0);
    tsr_backend_t *b = tsr_backend_cpu_new(1);
    int V = g.V, steps = g.n - PREFIX + 1;
    int32_t idb[NB], ids[PREFIX + B0], pos[PREFIX + B0], seq[PREFIX + B0], rows[PREFIX + B0];
    int32_t bt[4] = {3, 1, 0, 2}; /* A: blocks 3, 1; B: 0, 2 */
    for (int i = 0; i < NB; i++) idb[i] = (int32_t)(7 + 31 * i) % V;
    float *a = malloc(sizeof(float) * (size_t)g.n * V), *bb = malloc(sizeof(float) * NB * V);
    float *out = malloc(sizeof(float) * (PREFIX + B0) * V), *solo = malloc(sizeof(float) * NB * V);
    tsr_runner_t *r = runner(m, b, TSR_F32, PREFIX + B0);
    for (int k = 0; k < steps; k++) {
        int na = k ? 1 : PREFIX, nb = k ? 1 : B0, a0 = k ? PREFIX + k - 1 : 0,
            b0 = k ? B0 + k - 1 : 0;
        for (int i = 0; i < na + nb; i++) {
            int isb = i >= na, p = isb ? b0 + i - na : a0 + i;
            ids[i] = isb ? idb[p] : g.ids[p], pos[i] = p, seq[i] = isb, rows[i] = i;
        }
        struct tsr_step st = {.n_tokens = na + nb,
                              .ids = ids,
                              .pos = pos,
                              .seq = seq,
                              .n_seqs = 2,
                              .max_blocks = 2,
                              .block_tables = bt,
                              .n_out = na + nb,
                              .out_rows = rows};
        if (tsr_runner_forward(r, &st, out)) fail_msg("%s", tsr_last_error());
        memcpy(a + (size_t)a0 * V, out, sizeof(float) * na * V);
        memcpy(bb + (size_t)b0 * V, out + (size_t)na * V, sizeof(float) * nb * V);
    }
    tsr_runner_free(r);
    int checked;
    double na = compare(&g, a, &checked);
    r = runner(m, b, TSR_F32, NB);
    struct tsr_step st = tsr_test_step(idb, 0, NB, 2);
    if (tsr_runner_forward(r, &st, solo)) fail_msg("%s", tsr_last_error());
    double worst = 0;
    for (int i = 0; i < NB * V; i++)
        worst = fabs((double)bb[i] - solo[i]) > worst ? fabs((double)bb[i] - solo[i]) : worst;
    printf("two sequences a step: A vs float64 NMSE %.3g (argmax at %d), B vs B alone max |diff| "
           "%.2g\n",
           na, checked, worst);
    assert_true(na <= NMSE && checked >= g.n - 1 && worst <= 1e-4);
    tsr_runner_free(r);
    tsr_backend_free(b);
    tsr_model_free(m);
    free(a), free(bb), free(out), free(solo);
    golden_free(&g);
}

/* --quantize reaches MLA's matrices; kv_b, read as f32 by the op, is widened from its Q8_0
 * blocks: the logits stay near the golden, as far as Q8_0 rounding takes them (on this model
 * Q8_0 emulated in numpy, absmax scales, moves them by NMSE 0.056, 0.030 with kv_b left f32:
 * its random weights round coarsely and the rounding flips expert choices); a widening that
 * misplaced or dropped kv_b's values would be off by the logits' size. */
static void test_quantized(void **state)
{
    (void)state;
    struct golden g;
    golden_load("deepseek_v3", &g);
    tsr_model_t *m;
    assert_int_equal(tsr_model_open(REF("mla_tiny_deepseek_v3"), &m), 0);
    assert_int_equal(tsr_model_quantize(m, TSR_Q8_0), 0);
    static const char *const mats[] = {"blk.1.attn_q_a.weight", "blk.1.attn_q_b.weight",
                                       "blk.1.attn_kv_a_mqa.weight", "blk.1.attn_kv_b.weight",
                                       "blk.1.attn_output.weight"};
    for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++) {
        struct tsr_tensor_view v;
        assert_int_equal(tsr_model_tensor(m, mats[i], &v), 0);
        if (v.type != TSR_Q8_0) fail_msg("%s is %s", mats[i], tsr_dtype_name(v.type));
    }
    tsr_backend_t *b = tsr_backend_cpu_new(1);
    float *got = malloc(sizeof(float) * (size_t)g.n * g.V);
    tsr_runner_t *r = runner(m, b, TSR_F32, g.n);
    struct tsr_step st = tsr_test_step(g.ids, 0, g.n, 2);
    if (tsr_runner_forward(r, &st, got)) fail_msg("%s", tsr_last_error());
    int agree;
    double q8 = nmse(&g, got, &agree);
    printf("mla_tiny_deepseek_v3 --quantize q8_0: NMSE %.3g, argmax equal at %d of %d\n", q8, agree,
           g.n);
    assert_true(q8 <= 5e-2 && q8 > NMSE && agree >= g.n - 4);
    tsr_runner_free(r);
    tsr_backend_free(b);
    tsr_model_free(m);
    free(got);
    golden_free(&g);
}

/* tp or pp > 1, a backend without the op (CUDA's: its slot is NULL; here the CPU's emptied) and
 * an FP8 cache are refused by name when the runner is made. */
static void test_refused(void **state)
{
    (void)state;
    tsr_model_t *m;
    assert_int_equal(tsr_model_open("synthetic:deepseek-tiny", &m), 0);
    tsr_backend_t *b = tsr_backend_cpu_new(1);
    struct tsr_runner_opts o = {.n_blocks = 2, .block_size = 16, .max_tokens = 4};
    tsr_runner_t *r = NULL;
    struct tsr_shard_plan p;
    if (tsr_shard_plan_make(tsr_model_config(m), 1, 2, 4, 4, &p)) fail_msg("%s", tsr_last_error());
    struct tsr_runner_shard sh = {.plan = &p};
    assert_int_equal(tsr_runner_new(m, b, &o, &sh, &r), TSR_EUNSUPPORTED);
    assert_string_equal(tsr_last_error(),
                        "deepseek_v2 uses multi-head latent attention: it runs "
                        "on one rank for now (tp = pp = ep = 1), not on a 1x2 plan "
                        "(ep 1)");
    tsr_shard_plan_free(&p);
    o.kv_type = TSR_F8_E4M3;
    assert_int_equal(tsr_runner_new(m, b, &o, NULL, &r), TSR_EUNSUPPORTED);
    assert_string_equal(tsr_last_error(), "synthetic:deepseek-tiny: multi-head latent attention "
                                          "caches f32 or bf16, not F8_E4M3 (--kv-cache-dtype)");
    o.kv_type = TSR_F32;
    const struct tsr_backend_iface *cpu = b->i;
    struct tsr_backend_iface no_mla = *cpu;
    no_mla.mla_attention = NULL;
    no_mla.name = "cuda";
    b->i = &no_mla;
    assert_int_equal(tsr_backend_can_mla(b), 0);
    assert_int_equal(tsr_runner_new(m, b, &o, NULL, &r), TSR_EUNSUPPORTED);
    assert_string_equal(tsr_last_error(), "synthetic:deepseek-tiny: multi-head latent attention "
                                          "is not implemented on the cuda backend yet");
    struct tsr_mla mla = {0};
    struct tsr_attn_shape s = {0};
    struct tsr_batch_meta meta = {0};
    assert_int_equal(tsr_op_mla_attention(b, NULL, NULL, NULL, NULL, &mla, &s, &meta),
                     TSR_EUNSUPPORTED);
    assert_null(r);
    b->i = cpu;
    assert_int_equal(tsr_backend_can_mla(b), 1);
    tsr_backend_free(b);
    tsr_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_deepseek_v3), cmocka_unit_test(test_golden_deepseek_v2),
        cmocka_unit_test(test_batched), cmocka_unit_test(test_quantized),
        cmocka_unit_test(test_refused)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
