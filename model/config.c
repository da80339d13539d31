#include "model/config.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "model/files.h"

/* What the largest real models have, for messages about a bound. */
struct bound {
    int max;
    const char *real;
};
static const struct bound B_LAYERS = {TSR_MAX_LAYERS, "Llama 3.1 405B has 126"};
static const struct bound B_DIM = {TSR_MAX_DIM, "Llama 3.1 405B has 16384"};
static const struct bound B_FFN = {TSR_MAX_FFN_DIM, "PaLM 540B has 73728"};
static const struct bound B_HEADS = {TSR_MAX_HEADS, "Llama 3.1 405B has 128"};
static const struct bound B_HEAD_DIM = {4 * TSR_MAX_HEAD_DIM, "real models use 64-256"};
static const struct bound B_VOCAB = {TSR_MAX_VOCAB, "Gemma 3 has 262144"};
static const struct bound B_CTX = {TSR_MAX_CONTEXT, "Llama 4 Scout has 10M"};
static const struct bound B_EXPERTS = {TSR_MAX_EXPERTS, "Kimi K2 has 384"};
static const struct bound B_LORA = {TSR_MAX_LORA_RANK, "DeepSeek V3 has 1536 and 512"};

#define CONTEXT_DEFAULT 4096

/* v read from field of src: 1..b->max, else an error naming all three. */
static int check_size(const char *src, const char *field, long long v, const struct bound *b,
                      int *out)
{
    if (v < 1) return tsr_errorf(TSR_EFORMAT, "%s: %s = %lld must be at least 1", src, field, v);
    if (v > b->max)
        return tsr_errorf(TSR_EINVAL, "%s: %s = %lld is over the limit of %d (%s)", src, field, v,
                          b->max, b->real);
    *out = (int)v;
    return 0;
}

/* Reads "<arch>.<suffix>" as a size within b; missing → dflt if dflt > 0, else an error. */
static int gguf_arch_int(const tsr_gguf_t *g, const char *arch, const char *suffix, int dflt,
                         const struct bound *b, int *out)
{
    char key[128];
    int64_t v;
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int rc = tsr_gguf_get_int(g, key, &v);
    if (rc == TSR_ENOTFOUND && dflt > 0) {
        *out = dflt;
        return 0;
    }
    if (rc)
        return tsr_errorf(rc == TSR_ENOTFOUND ? TSR_EFORMAT : rc, "GGUF: %s %s", key,
                          rc == TSR_ENOTFOUND ? "missing" : "is not an integer");
    return check_size("GGUF", key, (long long)v, b, out);
}

/* Reads "<arch>.<suffix>" as a float; missing → dflt, another type → an error. */
static int gguf_arch_float(const tsr_gguf_t *g, const char *arch, const char *suffix, float dflt,
                           float *out)
{
    char key[128];
    double v;
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int rc = tsr_gguf_get_float(g, key, &v);
    *out = rc ? dflt : (float)v;
    if (rc == TSR_ENOTFOUND) return 0;
    if (rc) return tsr_errorf(TSR_EFORMAT, "GGUF: %s is not a number", key);
    return 0;
}

static void warn_default_context(const char *src, const char *field)
{
    tsr_log_warn("%s: no %s: assuming a context of %d tokens", src, field, CONTEXT_DEFAULT);
}

/* Experts: a mixture-of-experts model read as a dense one would compute something else. */
static int no_experts(const char *src, const char *field, int n)
{
    if (n > 0)
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "%s: %s = %d: mixture-of-experts models are not supported yet", src,
                          field, n);
    return 0;
}

/* A GGUF's experts, as llama.cpp reads them: <arch>.expert_count and expert_used_count; each
 * expert expert_feed_forward_length wide (qwen2moe, qwen3moe; Mixtral's llama:
 * feed_forward_length), a shared expert of expert_shared_feed_forward_length with its gate
 * (qwen2moe). Routing as llama.cpp's for the architecture: softmax, top-k renormalised but in
 * qwen2moe. */
static int gguf_experts(const tsr_gguf_t *g, const char *a, struct tsr_model_config *c)
{
    int rc;
    if ((rc = gguf_arch_int(g, a, "expert_count", -1, &B_EXPERTS, &c->n_expert)) ||
        (rc = gguf_arch_int(g, a, "expert_used_count", -1, &B_EXPERTS, &c->n_expert_used)))
        return rc;
    if (c->n_expert_used > c->n_expert)
        return tsr_errorf(TSR_EFORMAT,
                          "GGUF: %s.expert_used_count = %d is more than the %d experts", a,
                          c->n_expert_used, c->n_expert);
    c->moe_ffn_dim = c->ffn_dim;
    if (strcmp(a, "llama") &&
        (rc = gguf_arch_int(g, a, "expert_feed_forward_length", -1, &B_FFN, &c->moe_ffn_dim)))
        return rc;
    /* Qwen2-MoE always has its gated shared expert: without the key its width is the dense one
     * (llama.cpp's default), and its tensors are required either way. */
    if (!strcmp(a, "qwen2moe") && (rc = gguf_arch_int(g, a, "expert_shared_feed_forward_length",
                                                      c->ffn_dim, &B_FFN, &c->shared_ffn_dim)))
        return rc;
    c->shared_expert_gate = c->shared_ffn_dim > 0;
    c->moe_norm_topk = strcmp(a, "qwen2moe") != 0;
    c->moe_scale = 1.0f;
    return 0;
}

int tsr_config_from_gguf(const tsr_gguf_t *g, struct tsr_model_config *c)
{
    struct tsr_str s;
    int rc;
    memset(c, 0, sizeof *c);
    if (tsr_gguf_get_str(g, "general.architecture", &s))
        return tsr_errorf(TSR_EFORMAT, "GGUF: general.architecture missing");
    if (s.n >= sizeof c->arch) return tsr_errorf(TSR_EFORMAT, "GGUF: architecture name too long");
    memcpy(c->arch, s.p, s.n);
    c->arch[s.n] = 0;
    if (strcmp(c->arch, "llama") && strcmp(c->arch, "qwen2") && strcmp(c->arch, "mistral") &&
        strcmp(c->arch, "qwen2moe") && strcmp(c->arch, "qwen3moe"))
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "GGUF: architecture '%s' is not supported (llama, qwen2, mistral, "
                          "qwen2moe, qwen3moe)",
                          c->arch);
    const char *a = c->arch;
    char key[128];
    snprintf(key, sizeof key, "%s.context_length", a);
    if (tsr_gguf_find_kv(g, key) < 0) warn_default_context("GGUF", key);
    int n_expert = 0;
    if ((rc = gguf_arch_int(g, a, "block_count", -1, &B_LAYERS, &c->n_layer)) ||
        (rc = gguf_arch_int(g, a, "embedding_length", -1, &B_DIM, &c->dim)) ||
        (rc = gguf_arch_int(g, a, "feed_forward_length", -1, &B_FFN, &c->ffn_dim)) ||
        (rc = gguf_arch_int(g, a, "attention.head_count", -1, &B_HEADS, &c->n_head)) ||
        (rc = gguf_arch_int(g, a, "attention.head_count_kv", c->n_head, &B_HEADS, &c->n_kv_head)) ||
        (rc = gguf_arch_int(g, a, "context_length", CONTEXT_DEFAULT, &B_CTX, &c->n_ctx_train)))
        return rc;
    int moe_arch = !strcmp(a, "qwen2moe") || !strcmp(a, "qwen3moe");
    snprintf(key, sizeof key, "%s.expert_count", a);
    if (!strcmp(a, "qwen2") && tsr_gguf_find_kv(g, key) >= 0 &&
        ((rc = gguf_arch_int(g, a, "expert_count", -1, &B_EXPERTS, &n_expert)) ||
         (rc = no_experts("GGUF", key, n_expert))))
        return rc;
    if ((moe_arch || tsr_gguf_find_kv(g, key) >= 0) && strcmp(a, "qwen2") &&
        (rc = gguf_experts(g, a, c)))
        return rc;
    c->qk_norm = !strcmp(a, "qwen3moe");
    /* llama.cpp's defaults: the key width dim / n_head, the rotary width the key width (Qwen3's
     * files give key_length 128 where dim / n_head is 64, and no rope.dimension_count) */
    int rot = 0;
    if ((rc = gguf_arch_int(g, a, "attention.key_length", c->dim / c->n_head, &B_HEAD_DIM,
                            &c->head_dim)) ||
        (rc = gguf_arch_int(g, a, "rope.dimension_count", c->head_dim, &B_HEAD_DIM, &rot)))
        return rc;
    if (rot != c->head_dim)
        return tsr_errorf(TSR_EUNSUPPORTED, "GGUF: partial rotary (%d of %d dims) not supported",
                          rot, c->head_dim);
    if ((rc = gguf_arch_float(g, a, "attention.layer_norm_rms_epsilon", 1e-5f, &c->norm_eps)) ||
        (rc = gguf_arch_float(g, a, "rope.freq_base", 10000.0f, &c->rope_theta)))
        return rc;
    c->rope_neox = !strcmp(a, "qwen2") || moe_arch; /* llama.cpp's rope type per architecture */
    /* RoPE scaling: none or linear here; llama3 scaling arrives as the rope_freqs.weight tensor,
     * applied by the caller. Anything else (yarn, longrope) would be silently ignored. */
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    rc = tsr_gguf_get_str(g, key, &s);
    if (rc && rc != TSR_ENOTFOUND) return tsr_errorf(TSR_EFORMAT, "GGUF: %s is not a string", key);
    if (!rc && s.n == 6 && !memcmp(s.p, "linear", 6)) {
        c->rope_scaling = TSR_ROPE_LINEAR;
        if ((rc = gguf_arch_float(g, a, "rope.scaling.factor", 1.0f, &c->rope_factor))) return rc;
    } else if (!rc && !(s.n == 4 && !memcmp(s.p, "none", 4))) {
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "GGUF: %s '%.*s' is not supported (none, linear; llama3 scaling comes "
                          "as rope_freqs.weight)",
                          key, (int)(s.n < 64 ? s.n : 64), s.p);
    }
    int64_t v;
    uint64_t n;
    enum tsr_gguf_vtype et;
    snprintf(key, sizeof key, "%s.vocab_size", a);
    rc = tsr_gguf_get_int(g, key, &v);
    if (rc == TSR_ENOTFOUND && !tsr_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n)) {
        snprintf(key, sizeof key, "the tokenizer.ggml.tokens count");
        v = n > INT64_MAX ? INT64_MAX : (int64_t)n;
        rc = 0;
    }
    if (rc && rc != TSR_ENOTFOUND) return tsr_errorf(rc, "GGUF: %s is not an integer", key);
    if (!rc && (rc = check_size("GGUF", key, (long long)v, &B_VOCAB, &c->n_vocab))) return rc;
    c->tied_embeddings = tsr_gguf_find_tensor(g, "output.weight") == NULL;
    c->qkv_bias = tsr_gguf_find_tensor(g, "blk.0.attn_q.bias") != NULL;
    return tsr_config_validate(c);
}

/* A size from config.json within b; missing or null → dflt if dflt > 0, else an error. */
static int json_int(json_t *root, const char *key, int dflt, const struct bound *b, int *out,
                    const char *path)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (dflt <= 0) return tsr_errorf(TSR_EFORMAT, "%s: \"%s\" missing", path, key);
        *out = dflt;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return tsr_errorf(TSR_EFORMAT, "%s: \"%s\" must be a non-negative integer", path, key);
    return check_size(path, key, (long long)json_integer_value(v), b, out);
}

/* A float from config.json; missing or null → dflt, another type → an error. */
static int json_float(json_t *root, const char *key, float dflt, float *out, const char *path)
{
    json_t *v = json_object_get(root, key);
    *out = dflt;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v))
        return tsr_errorf(TSR_EFORMAT, "%s: \"%s\" must be a number", path, key);
    *out = (float)json_number_value(v);
    return 0;
}

/* rope_scaling: null, or an object whose type (rope_type, or the older type) is default, linear
 * or llama3, each with the parameters Hugging Face requires of it. Any other type or shape is an
 * error: ignoring it would run the model with other positions than it was trained for. */
static int json_rope_scaling(json_t *rs, int yarn_ok, struct tsr_model_config *c, const char *path)
{
    int rc;
    if (!rs || json_is_null(rs)) return 0;
    if (!json_is_object(rs))
        return tsr_errorf(TSR_EFORMAT, "%s: \"rope_scaling\" must be an object or null", path);
    json_t *tv = json_object_get(rs, "rope_type");
    if (!tv) tv = json_object_get(rs, "type");
    const char *t = json_string_value(tv);
    if (!t) return tsr_errorf(TSR_EFORMAT, "%s: \"rope_scaling\" has no rope_type", path);
    if (!strcmp(t, "default")) return 0;
    const char *need[] = {"factor", "low_freq_factor", "high_freq_factor",
                          "original_max_position_embeddings"};
    size_t n_need;
    if (!strcmp(t, "linear")) {
        c->rope_scaling = TSR_ROPE_LINEAR;
        n_need = 1;
    } else if (!strcmp(t, "llama3")) {
        c->rope_scaling = TSR_ROPE_LLAMA3;
        n_need = 4;
    } else if (yarn_ok && !strcmp(t, "yarn")) {
        c->rope_scaling = TSR_ROPE_YARN;
        n_need = 1;
    } else {
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "%s: rope_scaling type '%.64s' is not supported (default, linear, "
                          "llama3)",
                          path, t);
    }
    for (size_t i = 0; i < n_need; i++)
        if (!json_is_number(json_object_get(rs, need[i])))
            return tsr_errorf(TSR_EFORMAT, "%s: rope_scaling '%s' needs a number \"%s\"", path, t,
                              need[i]);
    if ((rc = json_float(rs, "factor", 1.0f, &c->rope_factor, path))) return rc;
    if (c->rope_scaling == TSR_ROPE_YARN) /* DeepSeek's defaults for what is absent */
        return (rc = json_int(rs, "original_max_position_embeddings", 4096, &B_CTX,
                              &c->rope_orig_ctx, path)) ||
                       (rc = json_float(rs, "beta_fast", 32.0f, &c->rope_beta_fast, path)) ||
                       (rc = json_float(rs, "beta_slow", 1.0f, &c->rope_beta_slow, path)) ||
                       (rc = json_float(rs, "mscale", 1.0f, &c->rope_mscale, path)) ||
                       (rc = json_float(rs, "mscale_all_dim", 0.0f, &c->rope_mscale_all_dim, path))
                   ? rc
                   : 0;
    if (c->rope_scaling != TSR_ROPE_LLAMA3) return 0;
    if ((rc = json_float(rs, "low_freq_factor", 1.0f, &c->rope_low_freq_factor, path)) ||
        (rc = json_float(rs, "high_freq_factor", 4.0f, &c->rope_high_freq_factor, path)) ||
        (rc =
             json_int(rs, "original_max_position_embeddings", -1, &B_CTX, &c->rope_orig_ctx, path)))
        return rc;
    return 0;
}

/* Families of config.json. */
enum family { FAM_NONE, FAM_DENSE, FAM_MIXTRAL, FAM_QWEN_MOE, FAM_DEEPSEEK };

/* An optional size: missing or null → 0; else as json_int (0 is an error). */
static int json_opt_int(json_t *root, const char *key, const struct bound *b, int *out,
                        const char *path)
{
    json_t *v = json_object_get(root, key);
    *out = 0;
    if (!v || json_is_null(v)) return 0;
    return json_int(root, key, -1, b, out, path);
}

/* An integer that, when present, must be `want`: a layout the planner does not model (experts
 * every other layer, ...) is an error, not a silently wrong plan. */
static int json_must_be(json_t *root, const char *key, int want, const char *path)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v) || json_integer_value(v) != want)
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "%s: \"%s\" must be %d (other layouts of expert "
                          "layers are not supported)",
                          path, key, want);
    return 0;
}

/* A boolean from config.json; missing or null → dflt, another type → an error. */
static int json_bool(json_t *root, const char *key, int dflt, int *out, const char *path)
{
    json_t *v = json_object_get(root, key);
    *out = dflt;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v))
        return tsr_errorf(TSR_EFORMAT, "%s: \"%s\" must be true or false", path, key);
    *out = json_is_true(v);
    return 0;
}

/* DeepSeek's scoring: scoring_func "softmax" (V2, the default) or "sigmoid" (V3, Kimi K2), and
 * routed_scaling_factor (1 when absent). */
static int json_routing(json_t *root, struct tsr_model_config *c, const char *path)
{
    json_t *sf = json_object_get(root, "scoring_func");
    const char *f = json_string_value(sf);
    if (sf && !json_is_null(sf) && !f)
        return tsr_errorf(TSR_EFORMAT, "%s: \"scoring_func\" must be a string", path);
    if (f && strcmp(f, "softmax") && strcmp(f, "sigmoid"))
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "%s: scoring_func '%.64s' is not supported (softmax, sigmoid)", path, f);
    c->moe_sigmoid = f && !strcmp(f, "sigmoid");
    return json_float(root, "routed_scaling_factor", 1.0f, &c->moe_scale, path);
}

/* The expert and MLA fields of the MoE families, by their Hugging Face names:
 *   mixtral      num_local_experts, num_experts_per_tok; each expert is intermediate_size wide
 *   qwen2_moe    num_experts, num_experts_per_tok, moe_intermediate_size,
 *                shared_expert_intermediate_size (with its 1 x dim gate)
 *   qwen3_moe    the same without a shared expert
 *   deepseek_*   n_routed_experts, num_experts_per_tok, n_shared_experts, moe_intermediate_size,
 *   kimi_k2      first_k_dense_replace, n_group / topk_group; MLA: q_lora_rank (null: none),
 *                kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim */
static int json_moe(json_t *root, enum family fam, struct tsr_model_config *c, const char *path)
{
    int rc, n_shared = 0, n_group = 0, topk_group = 0;
    const char *experts = fam == FAM_MIXTRAL    ? "num_local_experts"
                          : fam == FAM_QWEN_MOE ? "num_experts"
                                                : "n_routed_experts";
    if ((rc = json_int(root, experts, -1, &B_EXPERTS, &c->n_expert, path)) ||
        (rc = json_int(root, "num_experts_per_tok", -1, &B_EXPERTS, &c->n_expert_used, path)))
        return rc;
    if (c->n_expert_used > c->n_expert)
        return tsr_errorf(TSR_EFORMAT,
                          "%s: num_experts_per_tok = %d is more than the %d experts "
                          "(%s)",
                          path, c->n_expert_used, c->n_expert, experts);
    c->moe_scale = 1.0f;
    if (fam == FAM_MIXTRAL) {
        c->moe_ffn_dim = c->ffn_dim;
        c->moe_norm_topk = 1; /* Mixtral renormalises its top-k always */
        return 0;
    }
    /* Qwen's default is false, DeepSeek V3's true (V2 configs say false) */
    if ((rc = json_bool(root, "norm_topk_prob",
                        fam == FAM_DEEPSEEK && strcmp(c->arch, "deepseek_v2"), &c->moe_norm_topk,
                        path)))
        return rc;
    /* DeepSeek's gate renormalises only a top-k of more than one (a sigmoid score alone is its
     * weight); Qwen's divides even a single choice by itself */
    if (fam == FAM_DEEPSEEK && c->n_expert_used == 1) c->moe_norm_topk = 0;
    if ((rc = json_int(root, "moe_intermediate_size", -1, &B_FFN, &c->moe_ffn_dim, path)))
        return rc;
    if (fam == FAM_QWEN_MOE) {
        json_t *mlp_only = json_object_get(root, "mlp_only_layers");
        if (mlp_only && !json_is_null(mlp_only) &&
            !(json_is_array(mlp_only) && json_array_size(mlp_only) == 0))
            return tsr_errorf(TSR_EUNSUPPORTED,
                              "%s: \"mlp_only_layers\" must be empty (dense "
                              "layers among expert layers are not supported)",
                              path);
        if ((rc = json_must_be(root, "decoder_sparse_step", 1, path))) return rc;
        if (!strcmp(c->arch, "qwen2_moe")) {
            if ((rc = json_opt_int(root, "shared_expert_intermediate_size", &B_FFN,
                                   &c->shared_ffn_dim, path)))
                return rc;
            c->shared_expert_gate = c->shared_ffn_dim > 0;
        }
        return 0;
    }
    /* DeepSeek V2/V3, Kimi K2 */
    if ((rc = json_opt_int(root, "n_shared_experts", &B_EXPERTS, &n_shared, path)) ||
        (rc = json_must_be(root, "moe_layer_freq", 1, path)))
        return rc;
    if ((int64_t)n_shared * c->moe_ffn_dim > TSR_MAX_FFN_DIM)
        return tsr_errorf(TSR_EINVAL,
                          "%s: n_shared_experts = %d x moe_intermediate_size = %d is "
                          "over the FFN limit of %d",
                          path, n_shared, c->moe_ffn_dim, TSR_MAX_FFN_DIM);
    c->shared_ffn_dim = n_shared * c->moe_ffn_dim;
    json_t *k = json_object_get(root, "first_k_dense_replace");
    if (k && !json_is_null(k) && !(json_is_integer(k) && json_integer_value(k) == 0) &&
        (rc = json_int(root, "first_k_dense_replace", -1, &B_LAYERS, &c->n_dense_layer, path)))
        return rc;
    if (c->n_dense_layer >= c->n_layer)
        return tsr_errorf(TSR_EFORMAT,
                          "%s: first_k_dense_replace = %d leaves none of the %d "
                          "layers with experts",
                          path, c->n_dense_layer, c->n_layer);
    /* Group-limited routing: experts in n_group groups, tokens routed within topk_group of them. */
    if ((rc = json_opt_int(root, "n_group", &B_EXPERTS, &n_group, path)) ||
        (rc = json_opt_int(root, "topk_group", &B_EXPERTS, &topk_group, path)))
        return rc;
    if (n_group && c->n_expert % n_group)
        return tsr_errorf(TSR_EFORMAT, "%s: n_group = %d does not divide %d routed experts", path,
                          n_group, c->n_expert);
    if (topk_group > (n_group ? n_group : 1))
        return tsr_errorf(TSR_EFORMAT, "%s: topk_group = %d is more than n_group = %d", path,
                          topk_group, n_group);
    if ((rc = json_routing(root, c, path))) return rc;
    /* topk_method "greedy" ignores the groups (DeepSeek V2-Lite: n_group 1) */
    const char *method = json_string_value(json_object_get(root, "topk_method"));
    if (n_group > 1 && (!method || strcmp(method, "greedy"))) {
        c->moe_n_group = n_group;
        c->moe_topk_group = topk_group ? topk_group : n_group;
    }
    /* MLA; without kv_lora_rank nor the other sizes, standard attention (a DeepSeek-routed model
     * on standard attention: tests/reference/make_moe_golden.py) */
    static const char *const mla_keys[] = {"kv_lora_rank", "q_lora_rank", "qk_nope_head_dim",
                                           "qk_rope_head_dim", "v_head_dim"};
    int any_mla = 0;
    for (size_t i = 0; i < sizeof mla_keys / sizeof mla_keys[0]; i++)
        any_mla |= json_object_get(root, mla_keys[i]) != NULL;
    if (!any_mla) return 0;
    json_t *q = json_object_get(root, "q_lora_rank"); /* null or 0: a plain query projection */
    if (q && !json_is_null(q) && !(json_is_integer(q) && json_integer_value(q) == 0) &&
        (rc = json_int(root, "q_lora_rank", -1, &B_LORA, &c->q_lora_rank, path)))
        return rc;
    if ((rc = json_int(root, "kv_lora_rank", -1, &B_LORA, &c->kv_lora_rank, path)) ||
        (rc = json_int(root, "qk_nope_head_dim", -1, &B_HEAD_DIM, &c->qk_nope_head_dim, path)) ||
        (rc = json_int(root, "qk_rope_head_dim", -1, &B_HEAD_DIM, &c->qk_rope_head_dim, path)) ||
        (rc = json_int(root, "v_head_dim", -1, &B_HEAD_DIM, &c->v_head_dim, path)))
        return rc;
    c->head_dim = c->qk_nope_head_dim + c->qk_rope_head_dim;
    return 0;
}

/* A key that may be absent or null and is then nothing: NULL. */
static json_t *json_present(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_null(v) ? NULL : v;
}

/* compressed-tensors' int-quantized checkpoints (what llm-compressor writes for W8A8 and W8A16
 * int8): format "int-quantized", no sparsity (sparsity_config absent, empty or of format "dense")
 * and no transform_config (rotations change the weights' meaning), and config_groups of weights
 * num_bits 8, type "int", symmetric, not dynamic, strategy channel, tensor or group (group_size a
 * multiple of 32, so that a 32-weight block has one scale; one size for all groups), without
 * actorder or block_structure. targets, ignore, observers and input_activations are not needed:
 * each tensor's dtype says whether it is int8, its scale's shape how it is scaled, and
 * activations are computed as they are. Anything else is refused naming the field. */
static int json_compressed_tensors(json_t *q, struct tsr_model_config *c, const char *path)
{
    const char *fmt = json_string_value(json_object_get(q, "format"));
    if (!fmt)
        return tsr_errorf(TSR_EFORMAT,
                          "%s: quantization_config (compressed-tensors) has no string \"format\"",
                          path);
    if (strcmp(fmt, "int-quantized"))
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "%s: quantization_config format '%.64s' is not supported (compressed-"
                          "tensors: only \"int-quantized\", int8 weights with scales)",
                          path, fmt);
    json_t *sp = json_present(q, "sparsity_config");
    const char *spf = json_string_value(json_object_get(sp, "format"));
    if (sp && !(json_is_object(sp) && (!json_object_size(sp) || (spf && !strcmp(spf, "dense")))))
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "%s: quantization_config sparsity_config (format '%.64s') is not "
                          "supported: only dense weights",
                          path, spf ? spf : "?");
    if (json_present(q, "transform_config"))
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "%s: quantization_config transform_config is not supported (its "
                          "rotations change what the weights mean)",
                          path);
    json_t *groups = json_object_get(q, "config_groups"), *g;
    if (!json_is_object(groups) || !json_object_size(groups))
        return tsr_errorf(TSR_EFORMAT,
                          "%s: quantization_config \"config_groups\" must be an object of one or "
                          "more groups",
                          path);
    const char *gn;
    json_object_foreach(groups, gn, g)
    {
        json_t *w = json_object_get(g, "weights"), *v;
        const char *gf = json_string_value(json_object_get(g, "format"));
        if (gf && strcmp(gf, "int-quantized"))
            return tsr_errorf(TSR_EUNSUPPORTED,
                              "%s: quantization_config config_groups.%.64s.format '%.64s' is not "
                              "supported (int-quantized)",
                              path, gn, gf);
        if (!json_is_object(w))
            return tsr_errorf(TSR_EFORMAT,
                              "%s: quantization_config config_groups.%.64s has no \"weights\" "
                              "object",
                              path, gn);
        v = json_object_get(w, "num_bits");
        if (!json_is_integer(v) || json_integer_value(v) != 8)
            return tsr_errorf(TSR_EUNSUPPORTED,
                              "%s: quantization_config config_groups.%.64s.weights.num_bits is "
                              "not 8 (only 8-bit weights are supported)",
                              path, gn);
        const char *type = json_string_value(json_object_get(w, "type"));
        if (!type || strcmp(type, "int"))
            return tsr_errorf(TSR_EUNSUPPORTED,
                              "%s: quantization_config config_groups.%.64s.weights.type '%.64s' "
                              "is not supported (\"int\")",
                              path, gn, type ? type : "?");
        if (!json_is_true(json_object_get(w, "symmetric")))
            return tsr_errorf(TSR_EUNSUPPORTED,
                              "%s: quantization_config config_groups.%.64s.weights.symmetric is "
                              "not true: asymmetric (zero-point) weights are not supported",
                              path, gn);
        v = json_present(w, "dynamic");
        if (v && !json_is_false(v))
            return tsr_errorf(TSR_EUNSUPPORTED,
                              "%s: quantization_config config_groups.%.64s.weights.dynamic is not "
                              "false: weights need their stored scales",
                              path, gn);
        v = json_present(w, "actorder");
        if (v && !json_is_false(v))
            return tsr_errorf(TSR_EUNSUPPORTED,
                              "%s: quantization_config config_groups.%.64s.weights.actorder is "
                              "not supported (activation ordering)",
                              path, gn);
        if (json_present(w, "block_structure"))
            return tsr_errorf(TSR_EUNSUPPORTED,
                              "%s: quantization_config config_groups.%.64s.weights.block_structure "
                              "is not supported (channel, tensor or group scales)",
                              path, gn);
        const char *strategy = json_string_value(json_object_get(w, "strategy"));
        int group = strategy && !strcmp(strategy, "group");
        if (!strategy || (!group && strcmp(strategy, "channel") && strcmp(strategy, "tensor")))
            return tsr_errorf(TSR_EUNSUPPORTED,
                              "%s: quantization_config config_groups.%.64s.weights.strategy "
                              "'%.64s' is not supported (channel, tensor, group)",
                              path, gn, strategy ? strategy : "?");
        v = json_present(w, "group_size");
        json_int_t gs = json_integer_value(v);
        if (group && (!json_is_integer(v) || gs < TSR_QK || gs % TSR_QK || gs > TSR_MAX_FFN_DIM))
            return tsr_errorf(TSR_EUNSUPPORTED,
                              "%s: quantization_config config_groups.%.64s.weights.group_size "
                              "must be a multiple of 32 within 32..%d for strategy group (each "
                              "32-weight block has one scale)",
                              path, gn, TSR_MAX_FFN_DIM);
        if (!group && v && !(json_is_integer(v) && gs == -1))
            return tsr_errorf(TSR_EFORMAT,
                              "%s: quantization_config config_groups.%.64s.weights.group_size is "
                              "for strategy group only",
                              path, gn);
        if (group && c->int8_group && c->int8_group != gs)
            return tsr_errorf(TSR_EUNSUPPORTED,
                              "%s: quantization_config config_groups.%.64s.weights.group_size %d "
                              "differs from another group's %d (one group size is supported)",
                              path, gn, (int)gs, c->int8_group);
        if (group) c->int8_group = (int)gs;
        v = json_present(g, "input_activations");
        if (v && !json_is_object(v))
            return tsr_errorf(TSR_EFORMAT,
                              "%s: quantization_config config_groups.%.64s.input_activations must "
                              "be an object or null",
                              path, gn);
    }
    c->weight_quant = TSR_WQ_INT8;
    return 0;
}

/* quantization_config: absent or null, compressed-tensors' int8 (above), or quant_method "fp8"
 * with optional fmt "e4m3", activation_scheme "dynamic" or "static" (activations are computed as
 * they are either way) and weight_block_size [rows, cols]. Other methods (gptq, awq,
 * bitsandbytes, ...) store weights tessera does not decode: refused by name, never loaded as
 * garbage. Keys tessera does not need (modules_to_not_convert, ...) are ignored: each tensor's
 * dtype says whether it is quantized. */
static int json_quantization(json_t *q, struct tsr_model_config *c, const char *path)
{
    if (!q || json_is_null(q)) return 0;
    if (!json_is_object(q))
        return tsr_errorf(TSR_EFORMAT, "%s: \"quantization_config\" must be an object", path);
    const char *method = json_string_value(json_object_get(q, "quant_method"));
    if (!method)
        return tsr_errorf(TSR_EFORMAT, "%s: quantization_config has no string \"quant_method\"",
                          path);
    if (!strcmp(method, "compressed-tensors")) return json_compressed_tensors(q, c, path);
    if (strcmp(method, "fp8"))
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "%s: quantization_config quant_method '%.64s' is not supported (only "
                          "\"fp8\": E4M3 weights with scales, and \"compressed-tensors\" "
                          "int-quantized: int8 weights with scales)",
                          path, method);
    json_t *fmt = json_object_get(q, "fmt");
    if (fmt && !json_is_null(fmt) && !json_is_string(fmt))
        return tsr_errorf(TSR_EFORMAT, "%s: quantization_config \"fmt\" must be a string", path);
    if (json_is_string(fmt) && strcmp(json_string_value(fmt), "e4m3"))
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "%s: quantization_config fmt '%.64s' is not supported (e4m3)", path,
                          json_string_value(fmt));
    json_t *as = json_object_get(q, "activation_scheme");
    const char *scheme = json_string_value(as);
    if (as && !json_is_null(as) &&
        (!scheme || (strcmp(scheme, "dynamic") && strcmp(scheme, "static"))))
        return tsr_errorf(TSR_EFORMAT,
                          "%s: quantization_config \"activation_scheme\" must be \"dynamic\" or "
                          "\"static\"",
                          path);
    c->weight_quant = TSR_WQ_FP8;
    json_t *bs = json_object_get(q, "weight_block_size");
    if (!bs || json_is_null(bs)) return 0;
    for (size_t i = 0; i < 2; i++) {
        json_t *v = json_array_get(bs, i);
        if (!json_is_array(bs) || json_array_size(bs) != 2 || !json_is_integer(v) ||
            json_integer_value(v) < 1 || json_integer_value(v) > TSR_MAX_FFN_DIM)
            return tsr_errorf(TSR_EFORMAT,
                              "%s: quantization_config \"weight_block_size\" must be [rows, "
                              "cols]: two integers within 1..%d",
                              path, TSR_MAX_FFN_DIM);
        c->fp8_block[i] = (int)json_integer_value(v);
    }
    return 0;
}

static int config_from_root(json_t *root, const char *path, struct tsr_model_config *c);

int tsr_config_from_json(const char *path, struct tsr_model_config *c)
{
    json_t *root;
    memset(c, 0, sizeof *c);
    int rc = tsr_json_load(path, "config.json", TSR_MAX_CONFIG_JSON_BYTES, 0, &root);
    if (rc) return rc;
    rc = config_from_root(root, path, c);
    json_decref(root);
    return rc;
}

int tsr_config_from_json_text(const char *text, size_t len, const char *name,
                              struct tsr_model_config *c)
{
    json_error_t err;
    memset(c, 0, sizeof *c);
    if (len > TSR_MAX_CONFIG_JSON_BYTES)
        return tsr_errorf(TSR_EINVAL, "%s: config.json is %zu bytes, over the limit of %u", name,
                          len, TSR_MAX_CONFIG_JSON_BYTES);
    json_t *root = json_loadb(text, len, 0, &err);
    if (!root)
        return tsr_errorf(TSR_EFORMAT, "%s: not valid JSON: %s (line %d, column %d)", name,
                          err.text, err.line, err.column);
    int rc = config_from_root(root, name, c);
    json_decref(root);
    return rc;
}

/* The fields of a parsed config.json; path names it in messages. */
static int config_from_root(json_t *root, const char *path, struct tsr_model_config *c)
{
    int rc;
    if (!json_is_object(root)) {
        rc = tsr_errorf(TSR_EFORMAT, "%s: not a JSON object", path);
        goto out;
    }
    const char *mt = json_string_value(json_object_get(root, "model_type"));
    if (!mt) mt = "llama";
    static const struct {
        const char *name;
        enum family fam;
    } types[] = {
        {"llama", FAM_DENSE},          {"mistral", FAM_DENSE},        {"qwen2", FAM_DENSE},
        {"mixtral", FAM_MIXTRAL},      {"qwen2_moe", FAM_QWEN_MOE},   {"qwen3_moe", FAM_QWEN_MOE},
        {"deepseek_v2", FAM_DEEPSEEK}, {"deepseek_v3", FAM_DEEPSEEK}, {"kimi_k2", FAM_DEEPSEEK}};
    enum family fam = FAM_NONE;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(mt, types[i].name)) fam = types[i].fam;
    if (fam == FAM_NONE) {
        rc = tsr_errorf(TSR_EUNSUPPORTED,
                        "%s: model_type '%.64s' is not supported (llama, mistral, qwen2, mixtral, "
                        "qwen2_moe, qwen3_moe, deepseek_v2, deepseek_v3, kimi_k2)",
                        path, mt);
        goto out;
    }
    snprintf(c->arch, sizeof c->arch, "%s", mt);
    json_t *ctx = json_object_get(root, "max_position_embeddings");
    if (!ctx || json_is_null(ctx)) warn_default_context(path, "max_position_embeddings");
    if ((rc = json_int(root, "num_hidden_layers", -1, &B_LAYERS, &c->n_layer, path)) ||
        (rc = json_int(root, "hidden_size", -1, &B_DIM, &c->dim, path)) ||
        (rc = json_int(root, "intermediate_size", -1, &B_FFN, &c->ffn_dim, path)) ||
        (rc = json_int(root, "num_attention_heads", -1, &B_HEADS, &c->n_head, path)) ||
        (rc = json_int(root, "num_key_value_heads", c->n_head, &B_HEADS, &c->n_kv_head, path)) ||
        (rc = json_int(root, "vocab_size", -1, &B_VOCAB, &c->n_vocab, path)) ||
        (rc = json_int(root, "max_position_embeddings", CONTEXT_DEFAULT, &B_CTX, &c->n_ctx_train,
                       path)) ||
        (rc = json_int(root, "head_dim", c->dim / c->n_head, &B_HEAD_DIM, &c->head_dim, path)))
        goto out;
    if (fam != FAM_DENSE) {
        if ((rc = json_moe(root, fam, c, path))) goto out;
    }
    static const char *const expert_keys[] = {"num_local_experts", "num_experts",
                                              "n_routed_experts"};
    for (size_t i = 0; fam == FAM_DENSE && i < sizeof expert_keys / sizeof expert_keys[0]; i++) {
        int n_expert = 0;
        json_t *e = json_object_get(root, expert_keys[i]);
        if (!e || json_is_null(e) || (json_is_integer(e) && json_integer_value(e) == 0)) continue;
        if ((rc = json_int(root, expert_keys[i], -1, &B_EXPERTS, &n_expert, path)) ||
            (rc = no_experts(path, expert_keys[i], n_expert)))
            goto out;
    }
    if ((rc = json_float(root, "rms_norm_eps", 1e-5f, &c->norm_eps, path)) ||
        (rc = json_float(root, "rope_theta", 10000.0f, &c->rope_theta, path)))
        goto out;
    /* HF checkpoints keep q/k in rotate-half order; DeepSeek's MLA code first interleaves its
     * RoPE parts (view(d/2, 2).transpose: pairs (2i, 2i+1) become (i, i + d/2)) and rotates
     * halves, which is rotating adjacent pairs in place (the scores are the same) */
    c->rope_neox = c->kv_lora_rank == 0;
    json_t *tie = json_object_get(root, "tie_word_embeddings");
    if (tie && !json_is_boolean(tie) && !json_is_null(tie)) {
        rc = tsr_errorf(TSR_EFORMAT, "%s: \"tie_word_embeddings\" must be true or false", path);
        goto out;
    }
    c->tied_embeddings = json_is_true(tie);
    c->qk_norm = !strcmp(mt, "qwen3_moe");
    c->qkv_bias = !strcmp(mt, "qwen2") || !strcmp(mt, "qwen2_moe") ||
                  json_is_true(json_object_get(root, "attention_bias"));
    if ((rc = json_rope_scaling(json_object_get(root, "rope_scaling"), fam != FAM_DENSE, c, path)))
        goto out;
    if ((rc = json_quantization(json_object_get(root, "quantization_config"), c, path))) goto out;
    if ((rc = tsr_config_validate(c))) rc = tsr_error_prefix(rc, "%s", path);
out:
    return rc;
}

/* Experts and MLA: all zero for a dense model; within bounds and consistent otherwise. */
static int validate_moe_mla(const struct tsr_model_config *c)
{
    if (c->n_expert < 0 || c->n_expert_used < 0 || c->moe_ffn_dim < 0 || c->n_dense_layer < 0 ||
        c->shared_ffn_dim < 0 || c->q_lora_rank < 0 || c->kv_lora_rank < 0 ||
        c->qk_nope_head_dim < 0 || c->qk_rope_head_dim < 0 || c->v_head_dim < 0)
        return tsr_errorf(TSR_EFORMAT, "config: expert and latent-attention sizes must not be "
                                       "negative");
    if (c->n_expert == 0) {
        if (c->n_expert_used || c->moe_ffn_dim || c->n_dense_layer || c->shared_ffn_dim ||
            c->shared_expert_gate || c->moe_n_group || c->moe_topk_group || c->moe_sigmoid)
            return tsr_errorf(TSR_EFORMAT, "config: expert sizes without experts");
    } else {
        if (c->n_expert > TSR_MAX_EXPERTS)
            return tsr_errorf(TSR_EINVAL, "config: %d experts is over the limit of %d (%s)",
                              c->n_expert, TSR_MAX_EXPERTS, B_EXPERTS.real);
        if (c->n_expert_used < 1 || c->n_expert_used > c->n_expert)
            return tsr_errorf(TSR_EFORMAT,
                              "config: %d experts per token must be between 1 and the %d experts",
                              c->n_expert_used, c->n_expert);
        if (c->moe_ffn_dim < 1 || c->moe_ffn_dim > TSR_MAX_FFN_DIM ||
            c->shared_ffn_dim > TSR_MAX_FFN_DIM)
            return tsr_errorf(TSR_EFORMAT,
                              "config: expert FFN size %d and shared expert FFN size %d must be "
                              "within 1..%d",
                              c->moe_ffn_dim, c->shared_ffn_dim, TSR_MAX_FFN_DIM);
        if (c->n_dense_layer >= c->n_layer)
            return tsr_errorf(TSR_EFORMAT,
                              "config: %d dense layers leave none of the %d with "
                              "experts",
                              c->n_dense_layer, c->n_layer);
        if (!(c->moe_scale > 0) || !isfinite(c->moe_scale))
            return tsr_errorf(TSR_EFORMAT,
                              "config: routed_scaling_factor %g must be finite and positive",
                              (double)c->moe_scale);
        int g = c->moe_n_group, tg = c->moe_topk_group;
        if (g < 0 || tg < 0 || (g == 0) != (tg == 0) ||
            (g > 0 && (c->n_expert % g || tg > g || (c->moe_sigmoid && c->n_expert / g < 2) ||
                       (int64_t)tg * (c->n_expert / g) < c->n_expert_used)))
            return tsr_errorf(TSR_EFORMAT,
                              "config: routing groups (n_group %d, topk_group %d) must divide the "
                              "%d experts, %sleave at least the %d experts per token eligible",
                              g, tg, c->n_expert, c->moe_sigmoid ? "hold two each and " : "",
                              c->n_expert_used);
    }
    if (c->kv_lora_rank == 0) {
        if (c->q_lora_rank || c->qk_nope_head_dim || c->qk_rope_head_dim || c->v_head_dim)
            return tsr_errorf(TSR_EFORMAT, "config: latent-attention sizes without kv_lora_rank");
        return 0;
    }
    if (c->kv_lora_rank > TSR_MAX_LORA_RANK || c->q_lora_rank > TSR_MAX_LORA_RANK)
        return tsr_errorf(TSR_EINVAL,
                          "config: kv_lora_rank %d or q_lora_rank %d is over the "
                          "limit of %d (%s)",
                          c->kv_lora_rank, c->q_lora_rank, TSR_MAX_LORA_RANK, B_LORA.real);
    if (c->qk_nope_head_dim < 1 || c->qk_rope_head_dim < 2 || c->qk_rope_head_dim % 2 ||
        c->v_head_dim < 1 || c->v_head_dim > TSR_MAX_HEAD_DIM ||
        c->head_dim != c->qk_nope_head_dim + c->qk_rope_head_dim)
        return tsr_errorf(TSR_EFORMAT,
                          "config: latent attention needs qk_nope_head_dim (%d) >= 1, an even "
                          "qk_rope_head_dim (%d) >= 2, v_head_dim (%d) within 1..%d and head dim "
                          "%d = their sum",
                          c->qk_nope_head_dim, c->qk_rope_head_dim, c->v_head_dim, TSR_MAX_HEAD_DIM,
                          c->head_dim);
    return 0;
}

int tsr_config_check_runnable(const struct tsr_model_config *c, const char *name)
{
    int deepseek = !strncmp(c->arch, "deepseek", 8) || !strcmp(c->arch, "kimi_k2");
    if (c->rope_scaling == TSR_ROPE_YARN && !deepseek)
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "%s: YaRN rope scaling of %s can be planned (tessera plan) but not run "
                          "yet (only DeepSeek's)",
                          name, c->arch);
    if (c->rope_scaling == TSR_ROPE_YARN && c->rope_mscale != c->rope_mscale_all_dim)
        return tsr_errorf(
            TSR_EUNSUPPORTED,
            "%s: YaRN with mscale %g and mscale_all_dim %g scales RoPE's cos and sin, "
            "which tessera does not compute (they are equal in DeepSeek V2/V3 and "
            "Kimi K2)",
            name, (double)c->rope_mscale, (double)c->rope_mscale_all_dim);
    return 0;
}

void tsr_config_moe_routing(const struct tsr_model_config *c, struct tsr_moe_routing *r)
{
    *r = (struct tsr_moe_routing){.n_expert = c->n_expert,
                                  .n_used = c->n_expert_used,
                                  .scoring = c->moe_sigmoid ? TSR_MOE_SIGMOID : TSR_MOE_SOFTMAX,
                                  .norm_topk = c->moe_norm_topk,
                                  .n_group = c->moe_n_group,
                                  .topk_group = c->moe_topk_group,
                                  .scale = c->moe_scale};
}

int tsr_config_n_moe_layer(const struct tsr_model_config *c)
{
    return c->n_expert > 0 ? c->n_layer - c->n_dense_layer : 0;
}

int tsr_config_validate(const struct tsr_model_config *c)
{
    if (c->n_layer <= 0 || c->dim <= 0 || c->ffn_dim <= 0 || c->n_head <= 0 || c->n_kv_head <= 0 ||
        c->head_dim <= 0 || c->n_vocab <= 0 || c->n_ctx_train <= 0)
        return tsr_errorf(TSR_EFORMAT,
                          "config: sizes must be positive (layers %d, dim %d, ffn %d, heads %d, "
                          "kv heads %d, head dim %d, vocab %d, context %d)",
                          c->n_layer, c->dim, c->ffn_dim, c->n_head, c->n_kv_head, c->head_dim,
                          c->n_vocab, c->n_ctx_train);
    const struct {
        const char *what;
        int v;
        const struct bound *b;
    } sizes[] = {{"layers", c->n_layer, &B_LAYERS},    {"hidden size", c->dim, &B_DIM},
                 {"FFN size", c->ffn_dim, &B_FFN},     {"heads", c->n_head, &B_HEADS},
                 {"KV heads", c->n_kv_head, &B_HEADS}, {"vocabulary", c->n_vocab, &B_VOCAB},
                 {"context", c->n_ctx_train, &B_CTX}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (sizes[i].v > sizes[i].b->max)
            return tsr_errorf(TSR_EINVAL, "config: %s = %d is over the limit of %d (%s)",
                              sizes[i].what, sizes[i].v, sizes[i].b->max, sizes[i].b->real);
    if (c->n_head % c->n_kv_head)
        return tsr_errorf(TSR_EFORMAT, "config: %d heads do not divide into %d KV heads", c->n_head,
                          c->n_kv_head);
    if (c->head_dim % 2) return tsr_errorf(TSR_EFORMAT, "config: head dim %d is odd", c->head_dim);
    int rc = validate_moe_mla(c);
    if (rc) return rc;
    int blocks = c->fp8_block[0] || c->fp8_block[1], fp8 = c->weight_quant == TSR_WQ_FP8;
    if ((c->weight_quant != TSR_WQ_NONE && !fp8 && c->weight_quant != TSR_WQ_INT8) ||
        (blocks && !fp8) ||
        (blocks && (c->fp8_block[0] < 1 || c->fp8_block[0] > TSR_MAX_FFN_DIM ||
                    c->fp8_block[1] < 1 || c->fp8_block[1] > TSR_MAX_FFN_DIM)))
        return tsr_errorf(TSR_EFORMAT,
                          "config: FP8 weight blocks %d x %d (weight quantization %d): a "
                          "weight_block_size is two sizes within 1..%d, and only in an FP8 model",
                          c->fp8_block[0], c->fp8_block[1], (int)c->weight_quant, TSR_MAX_FFN_DIM);
    if (c->int8_group && (c->weight_quant != TSR_WQ_INT8 || c->int8_group < TSR_QK ||
                          c->int8_group % TSR_QK || c->int8_group > TSR_MAX_FFN_DIM))
        return tsr_errorf(TSR_EFORMAT,
                          "config: int8 group size %d (weight quantization %d): a multiple of 32 "
                          "within 32..%d, and only in an int8 model",
                          c->int8_group, (int)c->weight_quant, TSR_MAX_FFN_DIM);
    if (c->head_dim > TSR_MAX_HEAD_DIM)
        return tsr_errorf(TSR_EUNSUPPORTED, "config: head dim %d is over %d", c->head_dim,
                          TSR_MAX_HEAD_DIM);
    if (!(c->norm_eps > 0) || !isfinite(c->norm_eps) || !(c->rope_theta > 0) ||
        !isfinite(c->rope_theta))
        return tsr_errorf(TSR_EFORMAT,
                          "config: rms epsilon (%g) and rope theta (%g) must be finite and "
                          "positive",
                          (double)c->norm_eps, (double)c->rope_theta);
    if (c->rope_scaling != TSR_ROPE_NONE && (!(c->rope_factor > 0) || !isfinite(c->rope_factor)))
        return tsr_errorf(TSR_EFORMAT, "config: rope scaling factor %g must be finite and positive",
                          (double)c->rope_factor);
    /* llama3 blends between the two wavelengths: (high - low) divides, and both scale a length. */
    if (c->rope_scaling == TSR_ROPE_LLAMA3 &&
        (!(c->rope_low_freq_factor > 0) || !isfinite(c->rope_high_freq_factor) ||
         !(c->rope_high_freq_factor > c->rope_low_freq_factor) || c->rope_orig_ctx <= 0))
        return tsr_errorf(TSR_EFORMAT,
                          "config: llama3 rope scaling needs 0 < low_freq_factor (%g) < "
                          "high_freq_factor (%g) and original_max_position_embeddings > 0 (%d)",
                          (double)c->rope_low_freq_factor, (double)c->rope_high_freq_factor,
                          c->rope_orig_ctx);
    /* YaRN's correction range takes log(ctx / beta): both betas positive (0 made every frequency
     * NaN), the mscales finite and not negative. */
    if (c->rope_scaling == TSR_ROPE_YARN &&
        (!(c->rope_beta_fast > 0) || !isfinite(c->rope_beta_fast) || !(c->rope_beta_slow > 0) ||
         !isfinite(c->rope_beta_slow) || !(c->rope_mscale >= 0) || !isfinite(c->rope_mscale) ||
         !(c->rope_mscale_all_dim >= 0) || !isfinite(c->rope_mscale_all_dim) ||
         c->rope_orig_ctx <= 0))
        return tsr_errorf(
            TSR_EFORMAT,
            "config: yarn rope scaling needs finite beta_fast (%g) and beta_slow (%g) "
            "> 0, finite mscale (%g) and mscale_all_dim (%g) >= 0 and "
            "original_max_position_embeddings > 0 (%d)",
            (double)c->rope_beta_fast, (double)c->rope_beta_slow, (double)c->rope_mscale,
            (double)c->rope_mscale_all_dim, c->rope_orig_ctx);
    return 0;
}

int tsr_config_rope_dim(const struct tsr_model_config *c)
{
    return c->kv_lora_rank > 0 ? c->qk_rope_head_dim : c->head_dim;
}

int tsr_config_kv_rows(const struct tsr_model_config *c, int n_kv_head, int *heads, int *width)
{
    if (c->kv_lora_rank > 0) {
        *heads = 1;
        *width = c->kv_lora_rank + c->qk_rope_head_dim;
        return 1;
    }
    *heads = n_kv_head;
    *width = c->head_dim;
    return 2;
}

/* DeepSeek's yarn_get_mscale. */
static double yarn_mscale(double factor, double mscale)
{
    return factor <= 1 ? 1.0 : 0.1 * mscale * log(factor) + 1.0;
}

/* DeepSeek's yarn_find_correction_dim: the dimension whose wavelength turns `rotations` times in
 * the original context. */
static double yarn_correction_dim(double rotations, int dim, double base, int orig_ctx)
{
    return dim * log(orig_ctx / (rotations * 2 * M_PI)) / (2 * log(base));
}

float tsr_config_attn_scale(const struct tsr_model_config *c)
{
    double s = 1.0 / sqrt((double)c->head_dim);
    if (c->rope_scaling == TSR_ROPE_YARN && c->rope_mscale_all_dim != 0) {
        double m = yarn_mscale(c->rope_factor, c->rope_mscale_all_dim);
        s *= m * m;
    }
    return (float)s;
}

void tsr_rope_inv_freq(const struct tsr_model_config *c, const float *freq_factors, float *out)
{
    int dim = tsr_config_rope_dim(c), half = dim / 2;
    double lo = 0, hi = 0; /* yarn: the ramp from interpolated to extrapolated frequencies */
    if (c->rope_scaling == TSR_ROPE_YARN) {
        lo = floor(yarn_correction_dim(c->rope_beta_fast, dim, c->rope_theta, c->rope_orig_ctx));
        hi = ceil(yarn_correction_dim(c->rope_beta_slow, dim, c->rope_theta, c->rope_orig_ctx));
        lo = lo > 0 ? lo : 0;
        hi = hi < dim - 1 ? hi : dim - 1;
        if (lo == hi) hi += 0.001;
    }
    for (int i = 0; i < half; i++) {
        double f = pow((double)c->rope_theta, -2.0 * i / dim);
        if (c->rope_scaling == TSR_ROPE_YARN) {
            double ramp = ((double)i - lo) / (hi - lo), extra = 1 - (ramp < 0   ? 0
                                                                     : ramp > 1 ? 1
                                                                                : ramp);
            f = f / c->rope_factor * (1 - extra) + f * extra;
        } else if (c->rope_scaling == TSR_ROPE_LINEAR) {
            f /= c->rope_factor;
        } else if (c->rope_scaling == TSR_ROPE_LLAMA3) {
            /* Meta's llama3 scaling: long wavelengths divided by factor, short ones kept,
             * a smooth blend between. */
            double lo_wl = c->rope_orig_ctx / c->rope_low_freq_factor;
            double hi_wl = c->rope_orig_ctx / c->rope_high_freq_factor;
            double wl = 2 * M_PI / f;
            if (wl > lo_wl) {
                f /= c->rope_factor;
            } else if (wl >= hi_wl) {
                double smooth = (c->rope_orig_ctx / wl - c->rope_low_freq_factor) /
                                (c->rope_high_freq_factor - c->rope_low_freq_factor);
                f = (1 - smooth) * f / c->rope_factor + smooth * f;
            }
        }
        if (freq_factors) f /= freq_factors[i];
        out[i] = (float)f;
    }
}

double tsr_config_n_params(const struct tsr_model_config *c)
{
    double d = c->dim, kv = (double)c->n_kv_head * c->head_dim, q = (double)c->n_head * c->head_dim;
    double attn = d * q + 2 * d * kv + q * d + (c->qkv_bias ? q + 2 * kv : 0);
    if (c->kv_lora_rank > 0) { /* MLA: see shard_plan.h for the tensors */
        double h = c->n_head, qr = c->q_lora_rank, kr = c->kv_lora_rank;
        double qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
        attn = (qr > 0 ? d * qr + qr + qr * h * qk : d * h * qk) + d * (kr + c->qk_rope_head_dim) +
               kr + kr * h * (c->qk_nope_head_dim + c->v_head_dim) + h * c->v_head_dim * d;
    }
    double dense = attn + 3 * d * c->ffn_dim + 2 * d;
    double emb = (double)c->n_vocab * d * (c->tied_embeddings ? 1 : 2);
    int n_moe = tsr_config_n_moe_layer(c);
    double moe = attn + 2 * d + (double)c->n_expert * d + 3.0 * c->n_expert * d * c->moe_ffn_dim +
                 3 * d * c->shared_ffn_dim + (c->shared_expert_gate ? d : 0);
    return (c->n_layer - n_moe) * dense + n_moe * moe + emb + d;
}
