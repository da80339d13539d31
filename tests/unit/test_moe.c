/* Mixture-of-experts layers on the CPU. The router (kernels/moe.c tsr_moe_route) on hand-made
 * scores: the tie rule (equal scores: the lower expert index wins, groups too), group-limited
 * sigmoid routing with DeepSeek's correction bias, renormalisation and scaling. Then four tiny
 * Hugging Face MoE models (tests/reference/make_moe_golden.py: Mixtral, Qwen2-MoE with a gated
 * shared expert, also as a GGUF with stacked experts, Qwen3-MoE with per-head q/k norms, DeepSeek
 * V3 routing on standard attention) against their float64 forward: every logit of a 24-token
 * prompt (NMSE within f32 rounding, as test_qwen2_bias: 1e-10, and the argmax wherever the
 * reference's margin exceeds 1e-3), and every token's chosen experts in every expert layer, in
 * order, including the constructed ties whose other resolution the golden shows would move the
 * logits. Then the synthetic MoE shapes (a step's rows do not change each other's logits); tp or
 * pp > 1 and a backend without the op (CUDA's case) refused; --quantize reaching the experts (not
 * the router); malformed models: more experts than the router has rows, a missing router or q/k
 * norm, a top-k over the experts, wrong expert widths, a sigmoid router without its correction
 * bias. */
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/status.h"
#include "kernels/backend_impl.h" /* test_backend_without_moe empties the CPU's slot */
#include "model/model.h"
#include "model/shard_plan.h"
#include "worker/forward.h"

#include "unit.h"

#define REF(f)    TSR_SOURCE_DIR "/tests/reference/" f
#define NMSE      1e-10 /* f32 rounding through 2-3 layers, as test_qwen2_bias */
#define MARGIN    1e-3  /* argmax must agree where the reference's top two differ by more */
#define ROUTE_GAP 1e-5  /* route order compared where the reference's scores differ by more */

static void test_route_ties(void **state)
{
    (void)state;
    struct tsr_moe_routing r = {.n_expert = 4, .n_used = 2, .norm_topk = 1, .scale = 1};
    /* token 0: experts 1 and 2 tie for the top; token 1: for the second place; token 2: all */
    float logits[12] = {1, 2, 2, 0, 3, 1, 1, 0, 0, 0, 0, 0};
    int32_t ids[6];
    float w[6];
    assert_int_equal(tsr_moe_route(&r, logits, NULL, 3, ids, w), 0);
    int32_t want[6] = {1, 2, 0, 1, 0, 1};
    assert_memory_equal(ids, want, sizeof want);
    assert_float_equal(w[0], 0.5, 1e-6);
    assert_float_equal(w[2] + w[3], 1.0, 1e-6);
    assert_float_equal(w[2], 1 / (1 + exp(-2.0)), 1e-6); /* e^3 / (e^3 + e^1) */
    /* not renormalised: the softmax over all four */
    r.norm_topk = 0;
    r.scale = 2;
    assert_int_equal(tsr_moe_route(&r, logits + 8, NULL, 1, ids, w), 0);
    assert_float_equal(w[0], 2 * 0.25, 1e-6);
    /* inconsistent routings are refused */
    r.n_used = 5;
    assert_int_equal(tsr_moe_route(&r, logits, NULL, 1, ids, w), TSR_EINVAL);
}

static void test_route_groups(void **state)
{
    (void)state;
    /* DeepSeek V3: sigmoid scores, 4 groups of 2 scored by the sum of their two best, the best 2
     * eligible. Expert 0 has the best score but its group (0: 1 + sigmoid(-5)) loses to groups
     * 1 (2 sigmoid(1)) and 2 (2 sigmoid(.5)); experts 2 and 3 tie: 2 first. */
    struct tsr_moe_routing r = {.n_expert = 8,
                                .n_used = 2,
                                .scoring = TSR_MOE_SIGMOID,
                                .norm_topk = 1,
                                .n_group = 4,
                                .topk_group = 2,
                                .scale = 2.5f};
    float logits[8] = {5, -5, 1, 1, 0.5f, 0.5f, -1, -1};
    int32_t ids[2];
    float w[2];
    assert_int_equal(tsr_moe_route(&r, logits, NULL, 1, ids, w), 0);
    assert_int_equal(ids[0], 2);
    assert_int_equal(ids[1], 3);
    assert_float_equal(w[0], 1.25, 1e-6);
    /* Groups 1 and 2 tie (all four scores alike): the lower group, 1, and then expert 2 */
    float flat[8] = {-9, -9, 1, 1, 1, 1, -9, -9};
    r.topk_group = 1;
    assert_int_equal(tsr_moe_route(&r, flat, NULL, 1, ids, w), 0);
    assert_int_equal(ids[0], 2);
    assert_int_equal(ids[1], 3);
    /* The correction bias chooses but does not weigh: experts 7 then 6, weights of the scores */
    float zero[8] = {0}, bias[8] = {0, 0, 0, 0, 0, 0, 0.1f, 0.2f};
    r.n_group = r.topk_group = 0;
    r.norm_topk = 0;
    r.scale = 1;
    assert_int_equal(tsr_moe_route(&r, zero, bias, 1, ids, w), 0);
    assert_int_equal(ids[0], 7);
    assert_int_equal(ids[1], 6);
    assert_float_equal(w[0], 0.5, 1e-6);
    /* groups the choice cannot fill from (1 group of 2 for 4 experts a token) are refused */
    r.n_used = 4, r.n_group = 4, r.topk_group = 1;
    assert_int_equal(tsr_moe_route(&r, zero, bias, 1, ids, w), TSR_EINVAL);
}

/* One sequence's step of n tokens ids at positions pos0.., the logits of all of them; blocks 1
 * and 0 (32 positions). Its arrays are static: one step at a time. */
/* The golden of tests/reference/moe_tiny_<name>: logits and routes of its prompt, for that
 * directory, or the file tests/reference/moe_tiny_<name><file> (the same model in a GGUF). */
static void check_golden(const char *name, const char *file)
{
    char path[512];
    json_error_t err;
    snprintf(path, sizeof path, REF("moe_tiny_%s_golden.json"), name);
    json_t *root = json_load_file(path, 0, &err);
    assert_non_null(root);
    json_t *toks = json_object_get(root, "tokens"), *pos = json_object_get(root, "positions");
    json_t *routes = json_object_get(root, "routes");
    int n = (int)json_array_size(toks),
        V = (int)json_integer_value(json_object_get(root, "n_vocab"));
    int k = (int)json_integer_value(json_object_get(root, "n_expert_used"));
    int n_layers = (int)json_array_size(routes);
    float *ref = malloc(sizeof(float) * (size_t)n * V),
          *got = malloc(sizeof(float) * (size_t)n * V);
    snprintf(path, sizeof path, REF("moe_tiny_%s_logits.bin"), name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fread(ref, sizeof(float) * V, (size_t)n, f), (size_t)n);
    fclose(f);

    snprintf(path, sizeof path, REF("moe_tiny_%s%s"), name, file);
    tsr_model_t *m;
    if (tsr_model_open(path, &m)) fail_msg("%s", tsr_last_error());
    assert_int_equal(tsr_model_config(m)->n_expert_used, k);
    tsr_backend_t *b = tsr_backend_cpu_new(1);
    struct tsr_runner_opts o = {.n_blocks = 2, .block_size = 16, .max_tokens = n};
    tsr_runner_t *r;
    if (tsr_runner_new(m, b, &o, NULL, &r)) fail_msg("%s", tsr_last_error());
    int32_t *trace = malloc(sizeof *trace * (size_t)n_layers * n * k);
    assert_int_equal(tsr_runner_trace_routes(r, trace), n_layers);
    int32_t ids[64];
    assert_true(n <= 64);
    for (int i = 0; i < n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(toks, (size_t)i));
    struct tsr_step st = tsr_test_step(ids, 0, n, 2);
    if (tsr_runner_forward(r, &st, got)) fail_msg("%s", tsr_last_error());
    double num = 0, den = 0;
    int checked = 0;
    for (int t = 0; t < n; t++) {
        const float *l = got + (size_t)t * V;
        for (int v = 0; v < V; v++) {
            double d = (double)l[v] - ref[(size_t)t * V + v];
            num += d * d;
            den += (double)ref[(size_t)t * V + v] * ref[(size_t)t * V + v];
        }
        json_t *e = json_array_get(pos, (size_t)t);
        if (json_number_value(json_object_get(e, "margin")) <= MARGIN) continue;
        int best = 0;
        for (int v = 1; v < V; v++)
            if (l[v] > l[best]) best = v;
        assert_int_equal(best, json_integer_value(json_object_get(e, "argmax")));
        checked++;
    }
    int ties = 0, compared = 0;
    for (int l = 0; l < n_layers; l++)
        for (int t = 0; t < n; t++) {
            json_t *e = json_array_get(json_array_get(routes, (size_t)l), (size_t)t);
            int tie = json_is_true(json_object_get(e, "tie"));
            if (!tie && json_number_value(json_object_get(e, "gap")) <= ROUTE_GAP) continue;
            const int32_t *ours = trace + ((size_t)l * n + t) * k;
            for (int j = 0; j < k; j++) {
                int want = (int)json_integer_value(json_array_get(json_object_get(e, "ids"), j));
                if (ours[j] != want)
                    fail_msg("%s layer %d token %d choice %d: expert %d, reference %d%s", name, l,
                             t, j, ours[j], want, tie ? " (a constructed tie)" : "");
            }
            ties += tie;
            compared++;
        }
    json_t *meta = json_object_get(root, "meta");
    double other = json_number_value(json_object_get(meta, "nmse_ties_to_higher_index"));
    printf("%s%s vs float64: %d positions, NMSE %.3g (bound %.0e), argmax at %d with margin > %g; "
           "routes of %d of %d token-layers equal, %d of them constructed ties (the other "
           "resolution: NMSE %.3g)\n",
           name, file, n, num / den, NMSE, checked, MARGIN, compared, n * n_layers, ties, other);
    assert_true(num / den <= NMSE);
    assert_true(ties > 0 && ties == json_integer_value(json_object_get(meta, "constructed_ties")));
    assert_true(other > 1e3 * NMSE);
    double plain = json_number_value(json_object_get(meta, "nmse_without_qk_norm"));
    if (plain > 0) printf("  (without Qwen3's q/k norms: NMSE %.3g)\n", plain);
    assert_true(plain == 0 || plain > 1e3 * NMSE);
    assert_true(compared >= n * n_layers - 2);
    assert_true(checked >= n - 2);
    tsr_runner_free(r);
    tsr_backend_free(b);
    tsr_model_free(m);
    free(trace), free(ref), free(got);
    json_decref(root);
}

static void test_golden_mixtral(void **state)
{
    (void)state;
    check_golden("mixtral", "");
}

static void test_golden_qwen2_moe(void **state)
{
    (void)state;
    check_golden("qwen2_moe", "");
}

static void test_golden_qwen2_moe_gguf(void **state)
{
    (void)state;
    check_golden("qwen2_moe", ".gguf");
}

static void test_golden_qwen3_moe(void **state)
{
    (void)state;
    check_golden("qwen3_moe", "");
}

static void test_golden_deepseek(void **state)
{
    (void)state;
    check_golden("deepseek", "");
}

/* A synthetic MoE shape: a prompt's logits in one step equal the same tokens decoded one at a
 * time (the expert blocking groups different rows per step; each row's arithmetic is its own). */
static void check_synthetic(const char *spec)
{
    enum { N = 6 };
    tsr_model_t *m;
    if (tsr_model_open(spec, &m)) fail_msg("%s", tsr_last_error());
    const struct tsr_model_config *c = tsr_model_config(m);
    assert_true(c->n_expert > 0);
    int V = c->n_vocab;
    tsr_backend_t *b = tsr_backend_cpu_new(1);
    struct tsr_runner_opts o = {.n_blocks = 2, .block_size = 16, .max_tokens = N};
    tsr_runner_t *r1, *r2;
    if (tsr_runner_new(m, b, &o, NULL, &r1) || tsr_runner_new(m, b, &o, NULL, &r2))
        fail_msg("%s", tsr_last_error());
    int32_t ids[N] = {5, 17, 200, 3, 99, 42};
    float *all = malloc(sizeof(float) * N * V), *one = malloc(sizeof(float) * V);
    struct tsr_step st = tsr_test_step(ids, 0, N, 2);
    assert_int_equal(tsr_runner_forward(r1, &st, all), 0);
    double worst = 0;
    for (int i = 0; i < N; i++) {
        struct tsr_step s1 = tsr_test_step(ids + i, i, 1, 2);
        assert_int_equal(tsr_runner_forward(r2, &s1, one), 0);
        for (int v = 0; v < V; v++) {
            double d = fabs((double)one[v] - all[(size_t)i * V + v]);
            worst = d > worst ? d : worst;
        }
    }
    /* a decode step reads, of the routed experts' bytes (3 x moe_ffn x dim f32 weights each),
     * n_used / n_expert, and of the untied embedding table nothing counted */
    size_t experts =
        (size_t)tsr_config_n_moe_layer(c) * c->n_expert * 3 * c->moe_ffn_dim * c->dim * 4;
    size_t embd = c->tied_embeddings ? 0 : (size_t)c->n_vocab * c->dim * 4; /* a row a token */
    assert_int_equal(tsr_runner_weight_bytes(r1) - tsr_runner_step_weight_bytes(r1),
                     embd + experts / c->n_expert * (c->n_expert - c->n_expert_used));
    printf("%s: %d experts, %d a token: prefill vs decode max |diff| %.2g\n", spec, c->n_expert,
           c->n_expert_used, worst);
    assert_true(worst <= 1e-4);
    tsr_runner_free(r1);
    tsr_runner_free(r2);
    tsr_backend_free(b);
    tsr_model_free(m);
    free(all), free(one);
}

static void test_synthetic(void **state)
{
    (void)state;
    check_synthetic("synthetic:mixtral-tiny");
    check_synthetic("synthetic:qwen2-moe-tiny");
    check_synthetic("synthetic:deepseek-tiny"); /* a dense layer, then MLA layers' experts */
}

/* A backend without the op (the CUDA backend's case: its moe slot is NULL) refuses a MoE model
 * when the runner is made, and the op itself, by name: here the CPU backend with its slot
 * emptied, the one way to reach that path on a machine without a GPU. */
static void test_backend_without_moe(void **state)
{
    (void)state;
    tsr_model_t *m;
    assert_int_equal(tsr_model_open("synthetic:mixtral-tiny", &m), 0);
    tsr_backend_t *b = tsr_backend_cpu_new(1);
    const struct tsr_backend_iface *cpu = b->i;
    struct tsr_backend_iface no_moe = *cpu;
    no_moe.moe = NULL;
    no_moe.name = "cuda";
    b->i = &no_moe;
    assert_int_equal(tsr_backend_can_moe(b), 0);
    struct tsr_runner_opts o = {.n_blocks = 2, .block_size = 16, .max_tokens = 4};
    tsr_runner_t *r = NULL;
    assert_int_equal(tsr_runner_new(m, b, &o, NULL, &r), TSR_EUNSUPPORTED);
    assert_string_equal(tsr_last_error(), "synthetic:mixtral-tiny: mixture-of-experts layers are "
                                          "not implemented on the cuda backend yet");
    struct tsr_moe moe = {.routing = {.n_expert = 2, .n_used = 1, .scale = 1}};
    assert_int_equal(tsr_op_moe(b, NULL, NULL, &moe, 1), TSR_EUNSUPPORTED);
    b->i = cpu;
    assert_int_equal(tsr_backend_can_moe(b), 1);
    tsr_backend_free(b);
    tsr_model_free(m);
}

/* --quantize converts the experts' matrices (routed and shared), not the router or the shared
 * expert's gate, as llama.cpp keeps them. */
static void test_quantize_experts(void **state)
{
    (void)state;
    tsr_model_t *m;
    assert_int_equal(tsr_model_open(REF("moe_tiny_qwen2_moe"), &m), 0);
    assert_int_equal(tsr_model_quantize(m, TSR_Q8_0), 0);
    static const struct {
        const char *name;
        enum tsr_dtype type;
    } want[] = {{"blk.1.ffn_gate_exp.7.weight", TSR_Q8_0},
                {"blk.1.ffn_down_exp.0.weight", TSR_Q8_0},
                {"blk.0.ffn_up_shexp.weight", TSR_Q8_0},
                {"blk.0.ffn_gate_inp.weight", TSR_F32},
                {"blk.0.ffn_gate_inp_shexp.weight", TSR_F32}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        struct tsr_tensor_view v;
        assert_int_equal(tsr_model_tensor(m, want[i].name, &v), 0);
        if (v.type != want[i].type) fail_msg("%s is %s", want[i].name, tsr_dtype_name(v.type));
    }
    tsr_model_free(m);
}

/* Sharded, a mixture-of-experts runner needs the plan's communicators: without them it is refused
 * by name before any weight is read (tests/mpi/test_moe_ep_np*.c run the layouts themselves). */
static void test_sharded_refused(void **state)
{
    (void)state;
    tsr_model_t *m;
    assert_int_equal(tsr_model_open("synthetic:mixtral-tiny", &m), 0);
    tsr_backend_t *b = tsr_backend_cpu_new(1);
    struct tsr_runner_opts o = {.n_blocks = 2, .block_size = 16, .max_tokens = 4};
    static const struct {
        int tp, ep, pp;
        const char *want;
    } cases[] = {{1, 1, 2, "a 1x2 plan (ep 1) needs its world and TP communicators"},
                 {2, 2, 1, "a 2x1 plan (ep 2) needs its world and TP communicators"},
                 {1, 2, 1, "a 1x1 plan (ep 2) needs its world, TP and EP communicators"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct tsr_shard_plan p;
        assert_int_equal(tsr_shard_plan_make_ep(tsr_model_config(m), cases[i].tp, cases[i].ep,
                                                cases[i].pp, 4, 4, &p),
                         0);
        struct tsr_runner_shard sh = {.plan = &p};
        tsr_runner_t *r = NULL;
        assert_int_equal(tsr_runner_new(m, b, &o, &sh, &r), TSR_EINVAL);
        assert_string_equal(tsr_last_error(), cases[i].want);
        assert_null(r);
        tsr_shard_plan_free(&p);
    }
    tsr_backend_free(b);
    tsr_model_free(m);
}

/* A copy of a golden model directory (links to its weights and tokenizer) with another
 * config.json; opening it and making its runner must fail with rc and a message containing msg. */
static void expect_broken(const char *model, const char *config, int rc, const char *msg)
{
    char dir[] = "/tmp/tsr_moe_XXXXXX", path[600], src[600];
    assert_non_null(mkdtemp(dir));
    static const char *const linked[] = {"model.safetensors", "tokenizer.json"};
    for (int i = 0; i < 2; i++) {
        snprintf(src, sizeof src, REF("moe_tiny_%s/%s"), model, linked[i]);
        snprintf(path, sizeof path, "%s/%s", dir, linked[i]);
        assert_int_equal(symlink(src, path), 0);
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(config, f);
    fclose(f);
    tsr_model_t *m = NULL;
    tsr_backend_t *b = tsr_backend_cpu_new(1);
    struct tsr_runner_opts o = {.n_blocks = 2, .block_size = 16, .max_tokens = 4};
    tsr_runner_t *r = NULL;
    int got = tsr_model_open(dir, &m);
    if (!got) got = tsr_runner_new(m, b, &o, NULL, &r);
    if (got != rc || !strstr(tsr_last_error(), msg))
        fail_msg("rc %d '%s', expected %d '%s'", got, tsr_last_error(), rc, msg);
    tsr_runner_free(r);
    tsr_model_free(m);
    tsr_backend_free(b);
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, i < 2 ? linked[i] : "config.json");
        unlink(path);
    }
    rmdir(dir);
}

#define MIXTRAL(extra)                                                                             \
    "{\"model_type\":\"mixtral\",\"num_hidden_layers\":2,\"hidden_size\":64,"                      \
    "\"intermediate_size\":32,\"num_attention_heads\":4,\"num_key_value_heads\":2,"                \
    "\"vocab_size\":704,\"max_position_embeddings\":256,\"tie_word_embeddings\":true,"             \
    "\"num_local_experts\":8,\"num_experts_per_tok\":2" extra "}"

static void test_malformed(void **state)
{
    (void)state;
    expect_broken("mixtral", MIXTRAL(""), 0, ""); /* the copy itself loads */
    /* more experts than the file holds: the router's rows do not fit */
    expect_broken("mixtral", MIXTRAL(",\"num_local_experts\":9"), TSR_EFORMAT,
                  "tensor 'blk.0.ffn_gate_inp.weight' is 8x64, the config says 9x64");
    expect_broken("mixtral", MIXTRAL(",\"num_experts_per_tok\":9"), TSR_EFORMAT,
                  "num_experts_per_tok = 9 is more than the 8 experts (num_local_experts)");
    expect_broken("mixtral", MIXTRAL(",\"intermediate_size\":64"), TSR_EFORMAT,
                  "tensor 'blk.0.ffn_gate_exp.0.weight' is 32x64, the config says 64x64");
    /* Qwen3 on Mixtral's tensors: its q/k norms are not there; Mixtral on Qwen2-MoE's: the router
     */
    expect_broken("mixtral",
                  MIXTRAL(",\"model_type\":\"qwen3_moe\",\"num_experts\":8,"
                          "\"moe_intermediate_size\":32"),
                  TSR_ENOTFOUND,
                  "no tensor 'model.layers.0.self_attn.q_norm.weight' (blk.0.attn_q_norm.weight)");
    expect_broken("qwen2_moe", MIXTRAL(""), TSR_ENOTFOUND,
                  "no tensor 'model.layers.0.block_sparse_moe.gate.weight' "
                  "(blk.0.ffn_gate_inp.weight)");
    /* DeepSeek's sigmoid router needs its correction bias (Qwen's tensors have none) */
    expect_broken("qwen2_moe",
                  "{\"model_type\":\"deepseek_v3\",\"num_hidden_layers\":2,\"hidden_size\":64,"
                  "\"intermediate_size\":128,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
                  "\"vocab_size\":704,\"max_position_embeddings\":256,\"tie_word_embeddings\":"
                  "true,\"attention_bias\":true,\"n_routed_experts\":8,\"num_experts_per_tok\":2,"
                  "\"moe_intermediate_size\":32,\"scoring_func\":\"sigmoid\"}",
                  TSR_ENOTFOUND, "no tensor 'model.layers.0.mlp.gate.e_score_correction_bias'");
}

static int cfg(const char *json)
{
    struct tsr_model_config c;
    return tsr_config_from_json_text(json, strlen(json), "c.json", &c);
}

static void test_routing_config(void **state)
{
    (void)state;
    struct tsr_model_config c;
    const char *ds = "{\"model_type\":\"deepseek_v3\",\"num_hidden_layers\":2,\"hidden_size\":64,"
                     "\"intermediate_size\":128,\"num_attention_heads\":4,\"vocab_size\":100,"
                     "\"n_routed_experts\":8,\"num_experts_per_tok\":2,\"moe_intermediate_size\":"
                     "32,\"n_group\":4,\"topk_group\":2,\"scoring_func\":\"sigmoid\","
                     "\"routed_scaling_factor\":2.5}";
    assert_int_equal(tsr_config_from_json_text(ds, strlen(ds), "c.json", &c), 0);
    assert_int_equal(c.moe_sigmoid, 1);
    assert_int_equal(c.moe_norm_topk, 1); /* V3's default */
    assert_int_equal(c.moe_n_group, 4);
    assert_int_equal(c.moe_topk_group, 2);
    assert_float_equal(c.moe_scale, 2.5, 0);
    assert_int_equal(c.kv_lora_rank, 0); /* standard attention */
    assert_int_equal(tsr_config_check_runnable(&c, "m"), 0);
    /* DeepSeek renormalises only a top-k of more than one: a single expert keeps its sigmoid
     * score (times the scale), norm_topk_prob or not */
    const char *ds1 = "{\"model_type\":\"deepseek_v3\",\"num_hidden_layers\":2,\"hidden_size\":64,"
                      "\"intermediate_size\":128,\"num_attention_heads\":4,\"vocab_size\":100,"
                      "\"n_routed_experts\":8,\"num_experts_per_tok\":1,\"moe_intermediate_size\":"
                      "32,\"scoring_func\":\"sigmoid\",\"norm_topk_prob\":true}";
    assert_int_equal(tsr_config_from_json_text(ds1, strlen(ds1), "c.json", &c), 0);
    assert_int_equal(c.moe_norm_topk, 0);
    assert_int_equal(cfg(MIXTRAL("")), 0);
    assert_int_equal(cfg(MIXTRAL(",\"model_type\":\"deepseek_v3\",\"n_routed_experts\":8,"
                                 "\"moe_intermediate_size\":32,\"scoring_func\":\"max\"")),
                     TSR_EUNSUPPORTED);
    assert_string_equal(tsr_last_error(),
                        "c.json: scoring_func 'max' is not supported (softmax, sigmoid)");
    assert_int_equal(cfg(MIXTRAL(",\"model_type\":\"qwen3_moe\",\"num_experts\":8,"
                                 "\"moe_intermediate_size\":32,\"norm_topk_prob\":1")),
                     TSR_EFORMAT);
    assert_string_equal(tsr_last_error(), "c.json: \"norm_topk_prob\" must be true or false");
    assert_int_equal(cfg(MIXTRAL(",\"model_type\":\"deepseek_v3\",\"n_routed_experts\":8,"
                                 "\"moe_intermediate_size\":32,\"routed_scaling_factor\":-1")),
                     TSR_EFORMAT);
    /* sigmoid groups of one expert have no best two; 1 group of 2 cannot give 4 a token */
    assert_int_equal(cfg(MIXTRAL(",\"model_type\":\"deepseek_v3\",\"n_routed_experts\":8,"
                                 "\"moe_intermediate_size\":32,\"scoring_func\":\"sigmoid\","
                                 "\"n_group\":8,\"topk_group\":4")),
                     TSR_EFORMAT);
    assert_int_equal(cfg(MIXTRAL(",\"model_type\":\"deepseek_v3\",\"n_routed_experts\":8,"
                                 "\"moe_intermediate_size\":32,\"num_experts_per_tok\":4,"
                                 "\"n_group\":4,\"topk_group\":1")),
                     TSR_EFORMAT);
    /* MLA sizes without kv_lora_rank are no standard attention */
    assert_int_equal(cfg(MIXTRAL(",\"model_type\":\"deepseek_v3\",\"n_routed_experts\":8,"
                                 "\"moe_intermediate_size\":32,\"v_head_dim\":16")),
                     TSR_EFORMAT);
    assert_string_equal(tsr_last_error(), "c.json: \"kv_lora_rank\" missing");
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_route_ties),
                                       cmocka_unit_test(test_route_groups),
                                       cmocka_unit_test(test_golden_mixtral),
                                       cmocka_unit_test(test_golden_qwen2_moe),
                                       cmocka_unit_test(test_golden_qwen2_moe_gguf),
                                       cmocka_unit_test(test_golden_qwen3_moe),
                                       cmocka_unit_test(test_golden_deepseek),
                                       cmocka_unit_test(test_synthetic),
                                       cmocka_unit_test(test_sharded_refused),
                                       cmocka_unit_test(test_quantize_experts),
                                       cmocka_unit_test(test_backend_without_moe),
                                       cmocka_unit_test(test_malformed),
                                       cmocka_unit_test(test_routing_config)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
