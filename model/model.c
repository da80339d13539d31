#include "model/model.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <math.h>
#include <pthread.h>
#include <unistd.h>
#include <jansson.h>

#include "common/hash.h"
#include "common/status.h"
#include "model/files.h"
#include "model/safetensors.h"

enum source { SRC_GGUF, SRC_HF, SRC_SYNTHETIC };

struct synthetic_shape {
    const char *name;
    int n_layer, dim, ffn_dim, n_head, n_kv_head, n_vocab, n_ctx;
    float rope_theta;
    int llama3_scaling;
    enum tsr_dtype dtype; /* default weight type */
    /* mixture of experts (0: dense): experts, used a token, their FFN size, a shared expert's
     * (with its sigmoid gate: qwen2_moe); arch names the routing (mixtral renormalises) */
    int n_expert, n_expert_used, moe_ffn_dim, shared_ffn_dim;
    const char *arch;
    /* multi-head latent attention (NULL: none): q_lora_rank, kv_lora_rank, qk_nope_head_dim,
     * qk_rope_head_dim, v_head_dim, then the leading dense layers (first_k_dense_replace) */
    const int *mla;
};

static const int deepseek_tiny_mla[6] = {32, 32, 16, 16, 16, 1};

/* Public shapes (Llama 3 8B/70B as published) and tiny ones for tests. tiny-gqa4 has 4 KV heads
 * so tp = 2 and 4 divide it; tiny-4k is tiny with a context of 4,096 (long prompts, quickly);
 * tiny-128k has Llama 3.1's attention (head dim 128, 4 query heads a KV head, bf16, its RoPE
 * scaling and 131,072 positions) in two narrow layers and a small vocabulary, for long contexts
 * checked against the CPU in seconds;
 * stages has layers that outweigh its small head and vocabulary, for pipeline benchmarks on CPU
 * (a step's time grows with its rows). mixtral-tiny is tiny with 8 experts of which 2 a token
 * (renormalised, as Mixtral's); qwen2-moe-tiny has 8 narrow experts of which 4 (not
 * renormalised) and a gated shared expert, as Qwen2-MoE's layers (without Qwen2's QKV biases);
 * mixtral-8x7b is Mixtral 8x7B's published shape (46.7B parameters, 12.9B used a token; 93 GB in
 * bf16, so :fp8 on one 80 GB GPU); deepseek-tiny has DeepSeek V2's layers: multi-head latent
 * attention, a dense first layer, then 8 experts of which 2 (softmax, not renormalised) and a
 * shared expert. */
static const struct synthetic_shape synthetic_shapes[] = {
    {"tiny", 2, 64, 128, 4, 2, 256, 512, 10000.0f, 0, TSR_F32, 0, 0, 0, 0, NULL, NULL},
    {"tiny-gqa4", 4, 128, 256, 8, 4, 512, 1024, 10000.0f, 0, TSR_F32, 0, 0, 0, 0, NULL, NULL},
    {"tiny-4k", 2, 64, 128, 4, 2, 256, 4096, 10000.0f, 0, TSR_F32, 0, 0, 0, 0, NULL, NULL},
    {"tiny-128k", 2, 512, 1024, 4, 1, 2048, 131072, 500000.0f, 1, TSR_BF16, 0, 0, 0, 0, NULL, NULL},
    {"stages", 8, 256, 1024, 8, 4, 512, 1024, 10000.0f, 0, TSR_Q8_0, 0, 0, 0, 0, NULL, NULL},
    {"llama3-8b", 32, 4096, 14336, 32, 8, 128256, 8192, 500000.0f, 1, TSR_BF16, 0, 0, 0, 0, NULL,
     NULL},
    {"llama3-70b", 80, 8192, 28672, 64, 8, 128256, 8192, 500000.0f, 1, TSR_BF16, 0, 0, 0, 0, NULL,
     NULL},
    {"mixtral-tiny", 2, 64, 128, 4, 2, 256, 512, 10000.0f, 0, TSR_F32, 8, 2, 128, 0, "mixtral",
     NULL},
    {"mixtral-8x7b", 32, 4096, 14336, 32, 8, 32000, 32768, 1000000.0f, 0, TSR_BF16, 8, 2, 14336, 0,
     "mixtral", NULL},
    {"qwen2-moe-tiny", 2, 64, 128, 4, 2, 256, 512, 10000.0f, 0, TSR_F32, 8, 4, 32, 128, "qwen2_moe",
     NULL},
    {"deepseek-tiny", 3, 64, 128, 4, 4, 256, 512, 10000.0f, 0, TSR_F32, 8, 2, 32, 32, "deepseek_v2",
     deepseek_tiny_mla},
};

struct tsr_model {
    enum source src;
    char name[256];
    struct tsr_model_config cfg;
    tsr_gguf_t *gguf;
    tsr_st_t *st;
    tsr_tokenizer_t *tok;
    struct tsr_chat chat;
    const char *chat_family; /* of an unrecognised template, else NULL */
    enum tsr_dtype synth_dtype;
    uint64_t synth_seed;
    int quantize; /* tsr_model_quantize's type for the blocks' matrices; -1: as in the file */
    /* an int8 checkpoint's scale is not exactly an f16 (opened to be converted: its matrices are
     * then converted even to Q8_0, never copied into Q8_0 blocks) */
    int inexact_scales;
};

const char *tsr_synthetic_names(void)
{
    return "tiny, tiny-gqa4, tiny-4k, tiny-128k, stages, llama3-8b, llama3-70b, mixtral-tiny, "
           "mixtral-8x7b, qwen2-moe-tiny, deepseek-tiny";
}

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* An unrecognised template leaves the model serving raw prompts; it is marked so that rendering
 * a conversation with it is an error, never a silent plain-text prompt. */
static int load_chat(tsr_model_t *m, const char *template_text)
{
    if (tsr_chat_detect(template_text, m->cfg.arch, &m->chat)) {
        m->chat.kind = TSR_CHAT_UNRECOGNISED;
        m->chat_family = tsr_chat_family(template_text);
    }
    return 0;
}

static int open_gguf(tsr_model_t *m, const char *path)
{
    int rc = tsr_gguf_open(path, &m->gguf);
    if (rc) return rc;
    if ((rc = tsr_config_from_gguf(m->gguf, &m->cfg))) return tsr_error_prefix(rc, "%s", path);
    if ((rc = tsr_config_check_runnable(&m->cfg, path))) return rc;
    if ((rc = tsr_tokenizer_from_gguf(m->gguf, &m->tok))) return rc;
    struct tsr_str tmpl;
    char *t = NULL;
    if (!tsr_gguf_get_str(m->gguf, "tokenizer.chat_template", &tmpl)) {
        t = malloc(tmpl.n + 1);
        if (!t) return tsr_errorf(TSR_ENOMEM, "out of memory");
        memcpy(t, tmpl.p, tmpl.n);
        t[tmpl.n] = 0;
    }
    rc = load_chat(m, t);
    free(t);
    return rc;
}

static int open_hf(tsr_model_t *m, const char *dir)
{
    char path[4096];
    int rc;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((rc = tsr_config_from_json(path, &m->cfg)) ||
        (rc = tsr_config_check_runnable(&m->cfg, dir)))
        return rc;
    if ((rc = tsr_st_open_dir(dir, &m->st))) return rc;
    /* An untied model computes logits with its own head: falling back to the embeddings would
     * silently run a different model. */
    if (!m->cfg.tied_embeddings && !tsr_st_find_tensor(m->st, "lm_head.weight"))
        return tsr_errorf(TSR_EFORMAT,
                          "%s: tie_word_embeddings is false but there is no lm_head.weight", dir);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if ((rc = tsr_tokenizer_from_json(path, &m->tok))) return rc;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    json_t *tc = NULL;
    rc = tsr_json_load(path, "tokenizer_config.json", TSR_MAX_TOKCONFIG_JSON_BYTES, 0, &tc);
    if (rc && rc != TSR_ENOTFOUND) return rc; /* optional, but not when broken */
    json_t *tpl = json_object_get(tc, "chat_template");
    if (tpl && !json_is_string(tpl) && !json_is_null(tpl)) {
        json_decref(tc);
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "%s: chat_template is not a string (named templates are not supported)",
                          path);
    }
    rc = load_chat(m, json_string_value(tpl));
    json_decref(tc);
    return rc;
}

int tsr_weight_type_parse(const char *s, enum tsr_dtype *out)
{
    static const struct {
        const char *name;
        enum tsr_dtype t;
    } names[] = {{"f32", TSR_F32},   {"f16", TSR_F16},   {"bf16", TSR_BF16}, {"q8_0", TSR_Q8_0},
                 {"q4_0", TSR_Q4_0}, {"q4_1", TSR_Q4_1}, {"q5_0", TSR_Q5_0}, {"q5_1", TSR_Q5_1},
                 {"q4_k", TSR_Q4_K}, {"q5_k", TSR_Q5_K}, {"q6_k", TSR_Q6_K}, {"fp8", TSR_F8_E4M3}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(s, names[i].name)) {
            *out = names[i].t;
            return 0;
        }
    return tsr_errorf(TSR_EINVAL, "unknown weight type '%s' (%s)", s, TSR_WEIGHT_TYPES);
}

static int open_synthetic(tsr_model_t *m, const char *spec)
{
    char name[64];
    const char *colon = strchr(spec, ':');
    size_t n = colon ? (size_t)(colon - spec) : strlen(spec);
    if (n >= sizeof name) return tsr_errorf(TSR_EINVAL, "synthetic model name too long");
    memcpy(name, spec, n);
    name[n] = 0;
    const struct synthetic_shape *s = NULL;
    for (size_t i = 0; i < sizeof synthetic_shapes / sizeof synthetic_shapes[0]; i++)
        if (!strcmp(synthetic_shapes[i].name, name)) s = &synthetic_shapes[i];
    if (!s)
        return tsr_errorf(TSR_EINVAL, "unknown synthetic model '%s' (known: %s)", name,
                          tsr_synthetic_names());
    m->synth_dtype = s->dtype;
    int rc;
    if (colon && (rc = tsr_weight_type_parse(colon + 1, &m->synth_dtype))) return rc;
    struct tsr_model_config *c = &m->cfg;
    snprintf(c->arch, sizeof c->arch, "%s", s->arch ? s->arch : "llama");
    if (s->n_expert) {
        c->n_expert = s->n_expert;
        c->n_expert_used = s->n_expert_used;
        c->moe_ffn_dim = s->moe_ffn_dim;
        c->shared_ffn_dim = s->shared_ffn_dim;
        c->shared_expert_gate = s->shared_ffn_dim > 0;
        c->moe_norm_topk = !strcmp(c->arch, "mixtral");
        c->moe_scale = 1.0f;
    }
    c->n_layer = s->n_layer;
    c->dim = s->dim;
    c->ffn_dim = s->ffn_dim;
    c->n_head = s->n_head;
    c->n_kv_head = s->n_kv_head;
    c->head_dim = s->dim / s->n_head;
    c->n_vocab = s->n_vocab;
    c->n_ctx_train = s->n_ctx;
    c->norm_eps = 1e-5f;
    c->rope_theta = s->rope_theta;
    c->rope_neox = 0;
    if (s->mla) {
        c->q_lora_rank = s->mla[0];
        c->kv_lora_rank = s->mla[1];
        c->qk_nope_head_dim = s->mla[2];
        c->qk_rope_head_dim = s->mla[3];
        c->v_head_dim = s->mla[4];
        c->n_dense_layer = s->mla[5];
        c->head_dim = c->qk_nope_head_dim + c->qk_rope_head_dim;
    }
    if (s->llama3_scaling) {
        c->rope_scaling = TSR_ROPE_LLAMA3;
        c->rope_factor = 8.0f;
        c->rope_low_freq_factor = 1.0f;
        c->rope_high_freq_factor = 4.0f;
        c->rope_orig_ctx = 8192;
    }
    m->synth_seed = 0x7e55e7a5eedULL;
    int be = tsr_dtype_block_elems(m->synth_dtype); /* every matrix's columns: dim or an FFN's */
    if (c->dim % be || c->ffn_dim % be || c->moe_ffn_dim % be || c->shared_ffn_dim % be ||
        c->q_lora_rank % be || c->kv_lora_rank % be || (c->n_head * c->v_head_dim) % be)
        return tsr_errorf(TSR_EINVAL,
                          "synthetic:%s: %s weights need widths that are multiples of %d (dim %d, "
                          "ffn %d)",
                          spec, tsr_dtype_name(m->synth_dtype), be, c->dim, c->ffn_dim);
    return tsr_config_validate(c);
}

/* Small tensors whose values steer every token, checked once at open: a NaN or zero here is no
 * crash, just a model that silently computes garbage (a rope_freqs of zeros made every token 0).
 * Norm weights: a float type, (1, dim), finite. rope_freqs.weight (optional): F32, head_dim / 2,
 * finite and positive (it divides the frequencies). O(n_layer * dim) reads of the mapping. */
static int check_vector(tsr_model_t *m, const char *name, int64_t n, int positive, int optional)
{
    struct tsr_tensor_view v;
    int rc = tsr_model_tensor(m, name, &v);
    if (rc == TSR_ENOTFOUND && optional) return 0;
    if (rc) return rc;
    if (v.type != TSR_F32 && v.type != TSR_F16 && v.type != TSR_BF16)
        return tsr_errorf(TSR_EFORMAT, "%s: '%s' is %s; it must be F32, F16 or BF16", m->name, name,
                          tsr_dtype_name(v.type));
    if (v.rows != 1 || v.cols != n)
        return tsr_errorf(TSR_EFORMAT, "%s: '%s' is %lldx%lld; it must be a vector of %lld",
                          m->name, name, (long long)v.rows, (long long)v.cols, (long long)n);
    float x[256];
    size_t eb = tsr_dtype_row_bytes(v.type, 1);
    for (int64_t i = 0; i < n; i += 256) {
        int64_t k = n - i < 256 ? n - i : 256;
        tsr_dequantize_row(v.type, (const char *)v.data + (size_t)i * eb, x, k);
        for (int64_t j = 0; j < k; j++)
            if (!isfinite(x[j]) || (positive && !(x[j] > 0)))
                return tsr_errorf(TSR_EFORMAT, "%s: '%s'[%lld] = %g; it must be finite%s", m->name,
                                  name, (long long)(i + j), (double)x[j],
                                  positive ? " and positive" : "");
    }
    return 0;
}

static int check_tensors(tsr_model_t *m)
{
    const struct tsr_model_config *c = &m->cfg;
    char name[64];
    int rc;
    if ((rc = check_vector(m, "output_norm.weight", c->dim, 0, 0))) return rc;
    for (int l = 0; l < c->n_layer; l++) {
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
        if ((rc = check_vector(m, name, c->dim, 0, 0))) return rc;
        for (int i = 0; i < 2 * c->qk_norm; i++) {
            snprintf(name, sizeof name, "blk.%d.attn_%c_norm.weight", l, "qk"[i]);
            if ((rc = check_vector(m, name, c->head_dim, 0, 0))) return rc;
        }
        snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
        if ((rc = check_vector(m, name, c->dim, 0, 0))) return rc;
    }
    struct tsr_tensor_view v;
    if (!tsr_model_tensor(m, "rope_freqs.weight", &v) && v.type != TSR_F32)
        return tsr_errorf(TSR_EFORMAT, "%s: 'rope_freqs.weight' is %s; it must be F32", m->name,
                          tsr_dtype_name(v.type));
    return check_vector(m, "rope_freqs.weight", c->head_dim / 2, 1, 1);
}

int tsr_config_load(const char *spec, struct tsr_model_config *c)
{
    char path[4096];
    struct stat st;
    size_t n = strlen(spec);
    if (n > 5 && !strcmp(spec + n - 5, ".json")) return tsr_config_from_json(spec, c);
    snprintf(path, sizeof path, "%s/config.json", spec);
    if (is_dir(spec) && stat(path, &st) == 0) return tsr_config_from_json(path, c);
    tsr_model_t *m;
    int rc = tsr_model_open(spec, &m);
    if (rc) return rc;
    *c = m->cfg;
    tsr_model_free(m);
    return 0;
}

static int check_codes(tsr_model_t *m);

int tsr_model_open(const char *spec, tsr_model_t **out)
{
    return tsr_model_open_quantized(spec, -1, out);
}

int tsr_model_open_quantized(const char *spec, int type, tsr_model_t **out)
{
    *out = NULL;
    tsr_model_t *m = calloc(1, sizeof *m);
    if (!m) return tsr_errorf(TSR_ENOMEM, "out of memory");
    snprintf(m->name, sizeof m->name, "%s", spec);
    m->quantize = type; /* for check_codes: int8 scales need not be f16 when converted */
    int rc;
    if (!strncmp(spec, "synthetic:", 10)) {
        m->src = SRC_SYNTHETIC;
        rc = open_synthetic(m, spec + 10);
    } else if (is_dir(spec)) {
        m->src = SRC_HF;
        rc = open_hf(m, spec);
    } else {
        m->src = SRC_GGUF;
        rc = open_gguf(m, spec);
    }
    if (!rc && m->src == SRC_HF) rc = check_codes(m);
    m->quantize = -1;
    if (!rc && m->src != SRC_SYNTHETIC) rc = check_tensors(m);
    if (!rc) rc = tsr_model_quantize(m, type);
    if (rc) {
        tsr_model_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void tsr_model_free(tsr_model_t *m)
{
    if (!m) return;
    tsr_chat_free(&m->chat);
    tsr_tokenizer_free(m->tok);
    tsr_gguf_close(m->gguf);
    tsr_st_close(m->st);
    free(m);
}

const struct tsr_model_config *tsr_model_config(const tsr_model_t *m)
{
    return &m->cfg;
}

const char *tsr_model_chat_family(const tsr_model_t *m)
{
    return m->chat_family;
}

const char *tsr_model_name(const tsr_model_t *m)
{
    return m->name;
}

void tsr_model_id(const char *spec, char *out, size_t cap)
{
    size_t n = strlen(spec);
    while (n > 1 && spec[n - 1] == '/') n--;
    const char *base = spec;
    if (strncmp(spec, "synthetic:", 10))
        for (size_t i = 0; i < n; i++)
            if (spec[i] == '/') base = spec + i + 1;
    size_t len = (size_t)(spec + n - base);
    if (len > 5 && !strncmp(base + len - 5, ".gguf", 5)) len -= 5;
    snprintf(out, cap, "%.*s", (int)len, base);
}

const tsr_tokenizer_t *tsr_model_tokenizer(const tsr_model_t *m)
{
    return m->tok;
}

const struct tsr_chat *tsr_model_chat(const tsr_model_t *m)
{
    return &m->chat;
}

/* A mixture-of-experts layer's tensors, GGUF-style names → Hugging Face's (c's family):
 *   ffn_gate_inp.weight (n_expert, dim)         Mixtral block_sparse_moe.gate, else mlp.gate
 *   exp_probs_b.bias (n_expert)                 DeepSeek mlp.gate.e_score_correction_bias
 *   ffn_{gate,up,down}_exp.E.weight             expert E: Mixtral experts.E.w1/w3/w2, else
 *                                               mlp.experts.E.{gate,up,down}_proj
 *   ffn_{gate,up,down}_shexp.weight             mlp.shared_expert (Qwen), shared_experts (DeepSeek)
 *   ffn_gate_inp_shexp.weight (1, dim)          Qwen's mlp.shared_expert_gate
 * Returns 0 if the name is none of them. */
static int hf_moe_name(const struct tsr_model_config *c, int layer, const char *p, char *out,
                       size_t cap)
{
    static const char *const proj[3] = {"gate", "up", "down"}, *const w[3] = {"w1", "w3", "w2"};
    int mixtral = !strcmp(c->arch, "mixtral"), e, used = 0;
    const char *pre = mixtral ? "block_sparse_moe" : "mlp";
    const char *shared = strncmp(c->arch, "qwen", 4) ? "shared_experts" : "shared_expert";
    if (!strcmp(p, "ffn_gate_inp.weight"))
        return snprintf(out, cap, "model.layers.%d.%s.gate.weight", layer, pre) > 0;
    if (!strcmp(p, "exp_probs_b.bias"))
        return snprintf(out, cap, "model.layers.%d.mlp.gate.e_score_correction_bias", layer) > 0;
    if (!strcmp(p, "ffn_gate_inp_shexp.weight"))
        return snprintf(out, cap, "model.layers.%d.mlp.shared_expert_gate.weight", layer) > 0;
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(proj[i]);
        if (strncmp(p, "ffn_", 4) || strncmp(p + 4, proj[i], n)) continue;
        if (!strcmp(p + 4 + n, "_shexp.weight"))
            return snprintf(out, cap, "model.layers.%d.mlp.%s.%s_proj.weight", layer, shared,
                            proj[i]) > 0;
        if (sscanf(p + 4 + n, "_exp.%d.weight%n", &e, &used) == 1 && !p[4 + n + used] && e >= 0)
            return (mixtral ? snprintf(out, cap, "model.layers.%d.%s.experts.%d.%s.weight", layer,
                                       pre, e, w[i])
                            : snprintf(out, cap, "model.layers.%d.mlp.experts.%d.%s_proj.weight",
                                       layer, e, proj[i])) > 0;
    }
    return 0;
}

/* GGUF tensor name → Hugging Face name. Returns 0 if the name has no HF counterpart. */
static int hf_name(const struct tsr_model_config *c, const char *gguf, char *out, size_t cap)
{
    static const struct {
        const char *g, *h;
    } whole[] = {{"token_embd.weight", "model.embed_tokens.weight"},
                 {"output_norm.weight", "model.norm.weight"},
                 {"output.weight", "lm_head.weight"}},
      part[] = {{"attn_norm.weight", "input_layernorm.weight"},
                {"attn_q.weight", "self_attn.q_proj.weight"},
                {"attn_k.weight", "self_attn.k_proj.weight"},
                {"attn_v.weight", "self_attn.v_proj.weight"},
                {"attn_q.bias", "self_attn.q_proj.bias"},
                {"attn_k.bias", "self_attn.k_proj.bias"},
                {"attn_v.bias", "self_attn.v_proj.bias"},
                {"attn_output.weight", "self_attn.o_proj.weight"},
                {"attn_q_a.weight", "self_attn.q_a_proj.weight"},
                {"attn_q_a_norm.weight", "self_attn.q_a_layernorm.weight"},
                {"attn_q_b.weight", "self_attn.q_b_proj.weight"},
                {"attn_kv_a_mqa.weight", "self_attn.kv_a_proj_with_mqa.weight"},
                {"attn_kv_a_norm.weight", "self_attn.kv_a_layernorm.weight"},
                {"attn_kv_b.weight", "self_attn.kv_b_proj.weight"},
                {"attn_q_norm.weight", "self_attn.q_norm.weight"},
                {"attn_k_norm.weight", "self_attn.k_norm.weight"},
                {"ffn_norm.weight", "post_attention_layernorm.weight"},
                {"ffn_gate.weight", "mlp.gate_proj.weight"},
                {"ffn_up.weight", "mlp.up_proj.weight"},
                {"ffn_down.weight", "mlp.down_proj.weight"}};
    for (size_t i = 0; i < sizeof whole / sizeof whole[0]; i++)
        if (!strcmp(gguf, whole[i].g)) return snprintf(out, cap, "%s", whole[i].h) > 0;
    int layer, used = 0;
    if (sscanf(gguf, "blk.%d.%n", &layer, &used) != 1 || !used) return 0;
    for (size_t i = 0; i < sizeof part / sizeof part[0]; i++)
        if (!strcmp(gguf + used, part[i].g))
            return snprintf(out, cap, "model.layers.%d.%s", layer, part[i].h) > 0;
    return c->n_expert > 0 && hf_moe_name(c, layer, gguf + used, out, cap);
}

static void view_from_dims(struct tsr_tensor_view *v, uint32_t n_dims, const int64_t *ne)
{
    v->cols = ne[0];
    v->rows = 1;
    for (uint32_t d = 1; d < n_dims; d++) v->rows *= ne[d];
}

/* The matrices tsr_model_quantize converts: each block's attention (MLA's too) and MLP
 * projections. */
static const char *const quant_mats[] = {
    "attn_q.weight",   "attn_k.weight",    "attn_v.weight",       "attn_output.weight",
    "ffn_gate.weight", "ffn_up.weight",    "ffn_down.weight",     "attn_q_a.weight",
    "attn_q_b.weight", "attn_kv_b.weight", "attn_kv_a_mqa.weight"};

static int quantized_name(const char *name)
{
    int layer, used = 0;
    if (sscanf(name, "blk.%d.%n", &layer, &used) != 1 || !used) return 0;
    for (size_t i = 0; i < sizeof quant_mats / sizeof quant_mats[0]; i++)
        if (!strcmp(name + used, quant_mats[i])) return 1;
    /* experts' matrices too (not the routers: they stay as in the file, as llama.cpp keeps them) */
    static const char *const moe_mats[] = {"ffn_gate_exp.",       "ffn_up_exp.",
                                           "ffn_down_exp.",       "ffn_gate_shexp.weight",
                                           "ffn_up_shexp.weight", "ffn_down_shexp.weight"};
    for (size_t i = 0; i < sizeof moe_mats / sizeof moe_mats[0]; i++)
        if (!strncmp(name + used, moe_mats[i], strlen(moe_mats[i]))) return 1;
    return 0;
}

/* ---- quantized checkpoints: FP8 and int8 ------------------------------------------------------
 * Hugging Face checkpoints that keep their projection matrices as bare one-byte codes beside
 * scales that multiply them, w = code * s, the scales F32, BF16 or F16:
 *   FP8 (quantization_config quant_method "fp8"): E4M3 codes (safetensors F8_E4M3), scaled by
 *     <weight>_scale       per-tensor ([] or [1]) or per-channel ([rows] or [rows, 1])
 *     <weight>_scale_inv   DeepSeek's blocks: [ceil(rows / b0), ceil(cols / b1)] for
 *                          weight_block_size [b0, b1] ("inv" by name only: it multiplies too)
 *   int8 (compressed-tensors, format "int-quantized"): int8 codes (safetensors I8), scaled by
 *     <weight>_scale       per-tensor or per-channel as above, or per group of group_size columns
 *                          ([rows, ceil(cols / group_size)]); an optional <weight>_zero_point
 *                          must be all zeros (symmetric weights).
 * Such a matrix reads as blocks (generated): tsr_model_read writes each 32-column block as its
 * scale and its 32 codes copied as they are, TSR_F8_E4M3 blocks (an f32 scale) for FP8 and
 * TSR_Q8_0 blocks (an f16 scale: every int8 scale must be exactly an f16, checked at open) for
 * int8, so loading rounds nothing. Block and group widths are multiples of 32, so that a block
 * never straddles two scales. */

/* What each kind of codes is called, needs and loads as. */
static const struct codes_kind {
    const char *dtype, *what, *config;
    enum tsr_weight_quant quant;
    enum tsr_dtype blocks;
} codes_kinds[] = {
    [TSR_ST_E4M3] = {"F8_E4M3", "FP8", "quant_method \"fp8\"", TSR_WQ_FP8, TSR_F8_E4M3},
    [TSR_ST_INT8] = {"I8", "int8", "quant_method \"compressed-tensors\" (format \"int-quantized\")",
                     TSR_WQ_INT8, TSR_Q8_0},
};

/* A quantized matrix's codes (rows x cols bytes) and scales: element (r, c)'s scale is
 * scale[(r / srow) * n_scol + c / scol]; scol is the width or a multiple of 32. */
struct codes_src {
    const struct codes_kind *kind;
    const uint8_t *codes;
    const struct tsr_st_tensor *scale; /* NULL: not a quantized matrix */
    int64_t rows, cols, srow, scol, n_scol;
};

static float scale_at(const struct tsr_st_tensor *s, int64_t i)
{
    const char *p = s->data;
    uint16_t h;
    float f;
    if (s->type == TSR_F32) {
        memcpy(&f, p + (size_t)i * 4, 4);
        return f;
    }
    memcpy(&h, p + (size_t)i * 2, 2);
    return s->type == TSR_F16 ? tsr_f16_to_f32(h) : tsr_bf16_to_f32(h);
}

static int64_t scale_count(const struct tsr_st_tensor *s)
{
    return (int64_t)(s->nbytes / (s->type == TSR_F32 ? 4 : 2));
}

/* A tensor's shape as its file's JSON writes it, for messages: "[128, 1]". */
static const char *shape_str(const struct tsr_st_tensor *t, char *buf, size_t cap)
{
    int n = snprintf(buf, cap, "[");
    for (uint32_t d = t->n_dims; d-- > 0 && n > 0 && (size_t)n < cap;)
        n += snprintf(buf + n, cap - (size_t)n, "%lld%s", (long long)t->ne[d], d ? ", " : "");
    if (n > 0 && (size_t)n < cap) snprintf(buf + n, cap - (size_t)n, "]");
    return buf;
}

/* Checks an int8 matrix's scales (each exactly an f16, unless the model is converted as it
 * loads: then it is only noted) and its optional zero point (all zeros). O(scales). */
static int check_int8_values(tsr_model_t *m, const char *hf, const char *sname,
                             const struct tsr_st_tensor *s)
{
    for (int64_t i = 0; i < scale_count(s); i++) {
        float v = scale_at(s, i);
        if (tsr_f16_to_f32(tsr_f32_to_f16(v)) == v) continue;
        if (m->quantize >= 0) {
            m->inexact_scales = 1;
            break;
        }
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "%s: scale '%s'[%lld] = %.9g is not exactly an f16 (int8 weights load "
                          "losslessly as Q8_0 blocks, whose scale is an f16): load it with "
                          "--quantize q8_0 or --quantize bf16, which requantize the weights",
                          m->name, sname, (long long)i, (double)v);
    }
    char zn[300];
    snprintf(zn, sizeof zn, "%s_zero_point", hf);
    const struct tsr_st_tensor *z = tsr_st_find_tensor(m->st, zn);
    if (!z) return 0;
    int codes = z->codes != TSR_ST_NO_CODES;
    int64_t n = codes ? (int64_t)z->nbytes : scale_count(z);
    for (int64_t i = 0; i < n; i++) {
        double v = codes ? (double)((const uint8_t *)z->data)[i] : (double)scale_at(z, i);
        if (v != 0)
            return tsr_errorf(TSR_EUNSUPPORTED,
                              "%s: zero point '%s'[%lld] is not 0: asymmetric int8 weights are "
                              "not supported",
                              m->name, zn, (long long)i);
    }
    return 0;
}

/* The quantized source of model tensor `name`, held as HF tensor t (hf) of bare codes: its scale
 * found and its dtype and shape checked against the matrix and the config; with check_values
 * every scale read and found finite too, and an int8 one exact in f16 and its zero point zero
 * (O(scales): once, at open). */
static int codes_source(tsr_model_t *m, const char *name, const char *hf,
                        const struct tsr_st_tensor *t, int check_values, struct codes_src *q)
{
    char sn[300], sin[300], shape[128], group[96] = "";
    const struct codes_kind *k = &codes_kinds[t->codes];
    memset(q, 0, sizeof *q);
    if (!quantized_name(name))
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "%s: tensor '%s' is %s: only the layers' projection matrices may be %s "
                          "(embeddings, lm_head, norms and biases must be F32, F16 or BF16)",
                          m->name, hf, k->dtype, k->what);
    if (m->cfg.weight_quant != k->quant)
        return tsr_errorf(TSR_EFORMAT,
                          "%s: tensor '%s' is %s but config.json has no quantization_config with "
                          "%s",
                          m->name, hf, k->dtype, k->config);
    if (t->n_dims != 2)
        return tsr_errorf(TSR_EFORMAT, "%s: %s tensor '%s' has shape %s; a matrix has 2 dimensions",
                          m->name, k->what, hf, shape_str(t, shape, sizeof shape));
    int64_t rows = t->ne[1], cols = t->ne[0];
    if (cols % TSR_QK)
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "%s: %s tensor '%s' is %lld columns wide, not a multiple of 32 (%s "
                          "weights load as blocks of 32)",
                          m->name, k->what, hf, (long long)cols, k->what);
    snprintf(sn, sizeof sn, "%s_scale", hf);
    snprintf(sin, sizeof sin, "%s_scale_inv", hf);
    const struct tsr_st_tensor *s = tsr_st_find_tensor(m->st, sn),
                               *inv = tsr_st_find_tensor(m->st, sin);
    if (s && inv)
        return tsr_errorf(TSR_EFORMAT,
                          "%s: %s tensor '%s' has both '%s' and '%s': which one scales it is "
                          "unclear",
                          m->name, k->what, hf, sn, sin);
    if (!s && !inv)
        return tsr_errorf(TSR_EFORMAT,
                          "%s: %s tensor '%s' has no scale: neither '%s' nor '%s' is in the "
                          "checkpoint",
                          m->name, k->what, hf, sn, sin);
    const char *sname = s ? sn : sin;
    if (!s) s = inv;
    if (s->codes != TSR_ST_NO_CODES ||
        (s->type != TSR_F32 && s->type != TSR_F16 && s->type != TSR_BF16))
        return tsr_errorf(TSR_EFORMAT, "%s: scale '%s' is %s; it must be F32, BF16 or F16", m->name,
                          sname, s->codes ? codes_kinds[s->codes].dtype : tsr_dtype_name(s->type));
    *q = (struct codes_src){.kind = k, .codes = t->data, .scale = s, .rows = rows, .cols = cols};
    int gs = k->quant == TSR_WQ_INT8 ? m->cfg.int8_group : 0;
    int64_t n_groups = gs ? (cols + gs - 1) / gs : 0;
    if (inv) {
        int b0 = m->cfg.fp8_block[0], b1 = m->cfg.fp8_block[1];
        if (!b0)
            return tsr_errorf(TSR_EFORMAT,
                              "%s: '%s' holds block scales but config.json's quantization_config "
                              "has no weight_block_size",
                              m->name, sname);
        if (b1 % TSR_QK)
            return tsr_errorf(TSR_EUNSUPPORTED,
                              "%s: weight_block_size [%d, %d]: its columns must be a multiple of "
                              "32, so that each 32-weight block of '%s' has one scale",
                              m->name, b0, b1, hf);
        int64_t n0 = (rows + b0 - 1) / b0, n1 = (cols + b1 - 1) / b1;
        if (s->n_dims != 2 || s->ne[1] != n0 || s->ne[0] != n1)
            return tsr_errorf(TSR_EFORMAT,
                              "%s: scale '%s' has shape %s; '%s' (%lld x %lld) in blocks of "
                              "%d x %d needs [%lld, %lld]",
                              m->name, sname, shape_str(s, shape, sizeof shape), hf,
                              (long long)rows, (long long)cols, b0, b1, (long long)n0,
                              (long long)n1);
        q->srow = b0, q->scol = b1, q->n_scol = n1;
    } else if (s->n_dims <= 2 && s->ne[0] == 1 && s->ne[1] == 1) { /* per-tensor */
        q->srow = rows > 0 ? rows : 1, q->scol = cols > 0 ? cols : 1, q->n_scol = 1;
    } else if ((s->n_dims == 1 && s->ne[0] == rows) ||
               (s->n_dims == 2 && s->ne[1] == rows && s->ne[0] == 1)) { /* per-channel */
        q->srow = 1, q->scol = cols > 0 ? cols : 1, q->n_scol = 1;
    } else if (gs && s->n_dims == 2 && s->ne[1] == rows && s->ne[0] == n_groups) { /* groups */
        q->srow = 1, q->scol = gs, q->n_scol = n_groups;
    } else {
        if (gs)
            snprintf(group, sizeof group, ", a per-group one (group_size %d) [%lld, %lld]", gs,
                     (long long)rows, (long long)n_groups);
        return tsr_errorf(TSR_EFORMAT,
                          "%s: scale '%s' has shape %s; for '%s' (%lld x %lld) a per-tensor scale "
                          "is [] or [1], a per-channel one [%lld] or [%lld, 1]%s",
                          m->name, sname, shape_str(s, shape, sizeof shape), hf, (long long)rows,
                          (long long)cols, (long long)rows, (long long)rows, group);
    }
    for (int64_t i = 0; check_values && i < scale_count(s); i++) {
        float v = scale_at(s, i);
        if (!isfinite(v))
            return tsr_errorf(TSR_EFORMAT, "%s: scale '%s'[%lld] is %g; %s scales must be finite",
                              m->name, sname, (long long)i, (double)v, k->what);
    }
    return check_values && k->quant == TSR_WQ_INT8 ? check_int8_values(m, hf, sname, s) : 0;
}

/* Columns [col0, col0 + n) of row r as the kind's blocks: each block's d its columns' scale
 * (for Q8_0 as the f16 it is exactly), its 32 codes copied as they are. col0 and n are multiples
 * of 32. */
static void codes_blocks(const struct codes_src *q, int64_t r, int64_t col0, int64_t n, char *dst)
{
    const uint8_t *codes = q->codes + (size_t)r * (size_t)q->cols;
    int64_t base = r / q->srow * q->n_scol;
    int q8 = q->kind->blocks == TSR_Q8_0;
    size_t bytes = q8 ? sizeof(struct tsr_block_q8_0) : sizeof(struct tsr_block_f8);
    for (int64_t k = 0; k < n / TSR_QK; k++) {
        int64_t c = col0 + k * TSR_QK;
        float d = scale_at(q->scale, base + c / q->scol);
        char *b = dst + (size_t)k * bytes;
        if (q8) {
            uint16_t h = tsr_f32_to_f16(d);
            memcpy(b + offsetof(struct tsr_block_q8_0, d), &h, sizeof h);
            memcpy(b + offsetof(struct tsr_block_q8_0, qs), codes + c, TSR_QK);
        } else {
            memcpy(b + offsetof(struct tsr_block_f8, d), &d, sizeof d);
            memcpy(b + offsetof(struct tsr_block_f8, qs), codes + c, TSR_QK);
        }
    }
}

/* Row r's values, code * scale in f32 (what the blocks decode to, before any f16 rounding of an
 * int8 scale), for converting it to another type. */
static void codes_row(const struct codes_src *q, int64_t r, float *dst)
{
    const uint8_t *codes = q->codes + (size_t)r * (size_t)q->cols;
    int64_t base = r / q->srow * q->n_scol;
    int e4m3 = q->kind->blocks == TSR_F8_E4M3;
    for (int64_t c = 0; c < q->cols; c++) {
        float d = scale_at(q->scale, base + c / q->scol);
        dst[c] = d * (e4m3 ? tsr_e4m3_to_f32(codes[c]) : (float)(int8_t)codes[c]);
    }
}

/* One tessera name's tensor, if the checkpoint holds it as codes: its scale checked. */
static int check_codes_one(tsr_model_t *m, const char *name, char *hf, size_t hf_size)
{
    struct codes_src q;
    const struct tsr_st_tensor *t =
        hf_name(&m->cfg, name, hf, hf_size) ? tsr_st_find_tensor(m->st, hf) : NULL;
    return t && t->codes ? codes_source(m, name, hf, t, 1, &q) : 0;
}

/* Quantized checkpoints, checked once at open so that a broken one fails here and not at a
 * rank's first read: every tensor of codes needs its quantization_config, and every one tessera
 * reads must be a projection matrix with a scale of the right dtype, shape and values. */
static int check_codes(tsr_model_t *m)
{
    for (uint64_t i = 0; i < tsr_st_n_tensors(m->st); i++) {
        const struct tsr_st_tensor *t = tsr_st_tensor(m->st, i);
        const struct codes_kind *k = &codes_kinds[t->codes];
        if (t->codes && m->cfg.weight_quant != k->quant)
            return tsr_errorf(TSR_EFORMAT,
                              "%s: tensor '%s' is %s but config.json has no quantization_config "
                              "with %s",
                              m->name, t->name, k->dtype, k->config);
    }
    static const char *const whole[] = {"token_embd.weight", "output.weight", "output_norm.weight"};
    static const char *const part[] = {"attn_norm.weight", "ffn_norm.weight", "attn_q.bias",
                                       "attn_k.bias", "attn_v.bias"};
    int n_whole = (int)(sizeof whole / sizeof whole[0]),
        n_part = (int)(sizeof part / sizeof part[0]),
        n_mat = (int)(sizeof quant_mats / sizeof quant_mats[0]);
    char name[96], hf[256];
    for (int l = -1; l < m->cfg.n_layer; l++) /* layer -1: the tensors outside the layers */
        for (int i = 0; i < (l < 0 ? n_whole : n_part + n_mat); i++) {
            if (l < 0)
                snprintf(name, sizeof name, "%s", whole[i]);
            else
                snprintf(name, sizeof name, "blk.%d.%s", l,
                         i < n_part ? part[i] : quant_mats[i - n_part]);
            int rc;
            if ((rc = check_codes_one(m, name, hf, sizeof hf))) return rc;
        }
    /* the experts' matrices, routed (E < n_expert) and shared, of the MoE layers */
    static const char *const what[] = {"gate", "up", "down"};
    for (int l = m->cfg.n_dense_layer; m->cfg.n_expert > 0 && l < m->cfg.n_layer; l++)
        for (int e = -1; e < m->cfg.n_expert; e++) /* -1: the shared expert */
            for (int i = 0; i < 3; i++) {
                if (e < 0 && m->cfg.shared_ffn_dim <= 0) break;
                if (e < 0)
                    snprintf(name, sizeof name, "blk.%d.ffn_%s_shexp.weight", l, what[i]);
                else
                    snprintf(name, sizeof name, "blk.%d.ffn_%s_exp.%d.weight", l, what[i], e);
                int rc;
                if ((rc = check_codes_one(m, name, hf, sizeof hf))) return rc;
            }
    return 0;
}

/* splitmix64: a counter-based generator, so any rank can make any slice of a tensor alone. */
static uint64_t mix64(uint64_t x)
{
    return tsr_mix64(x + TSR_GOLDEN64);
}

static uint64_t name_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    while (*s) h = (h ^ (uint8_t)*s++) * 0x100000001b3ULL;
    return h;
}

/* Shape of an expert layer's tensor p (hf_moe_name's names); 0 if it has none such. */
static int moe_shape(const struct tsr_model_config *c, const char *p, int64_t *rows, int64_t *cols)
{
    int e, used = 0;
    char what[8];
    int64_t f = c->moe_ffn_dim;
    *rows = c->n_expert, *cols = c->dim;
    if (!strcmp(p, "ffn_gate_inp.weight")) return 1;
    *rows = 1;
    if (!strcmp(p, "ffn_gate_inp_shexp.weight")) return c->shared_expert_gate;
    if (sscanf(p, "ffn_%4[a-z]_shexp.weight%n", what, &used) == 1 && !p[used] &&
        c->shared_ffn_dim > 0)
        f = c->shared_ffn_dim;
    else if (!(sscanf(p, "ffn_%4[a-z]_exp.%d.weight%n", what, &e, &used) == 2 && !p[used] &&
               e >= 0 && e < c->n_expert))
        return 0;
    if (!strcmp(what, "down")) {
        *rows = c->dim, *cols = f;
        return 1;
    }
    *rows = f, *cols = c->dim;
    return !strcmp(what, "gate") || !strcmp(what, "up");
}

/* Shape of a latent-attention layer's tensor p (model/shard_plan.h's names; attn_q, without
 * q_lora_rank, has the standard shape); 0 if it is not one. */
static int mla_shape(const struct tsr_model_config *c, const char *p, int64_t *rows, int64_t *cols,
                     int *is_norm)
{
    int64_t h = c->n_head, qk = c->head_dim, qr = c->q_lora_rank, kr = c->kv_lora_rank;
    const struct {
        const char *name;
        int64_t rows, cols;
        int norm;
    } t[] = {{"attn_q_a.weight", qr, c->dim, 0},
             {"attn_q_a_norm.weight", 1, qr, 1},
             {"attn_q_b.weight", h * qk, qr, 0},
             {"attn_kv_a_mqa.weight", kr + c->qk_rope_head_dim, c->dim, 0},
             {"attn_kv_a_norm.weight", 1, kr, 1},
             {"attn_kv_b.weight", h * (c->qk_nope_head_dim + c->v_head_dim), kr, 0},
             {"attn_output.weight", c->dim, h * c->v_head_dim, 0}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (!strcmp(p, t[i].name)) {
            *rows = t[i].rows, *cols = t[i].cols, *is_norm = t[i].norm;
            return 1;
        }
    return 0;
}

/* Shape of a synthetic tensor by name; 0 if the model has no such tensor. */
static int synthetic_shape(const struct tsr_model_config *c, const char *name, int64_t *rows,
                           int64_t *cols, int *is_norm)
{
    int layer, used = 0;
    *is_norm = 0;
    if (!strcmp(name, "token_embd.weight") || !strcmp(name, "output.weight")) {
        *rows = c->n_vocab;
        *cols = c->dim;
        return 1;
    }
    if (!strcmp(name, "output_norm.weight")) {
        *rows = 1;
        *cols = c->dim;
        *is_norm = 1;
        return 1;
    }
    if (sscanf(name, "blk.%d.%n", &layer, &used) != 1 || !used || layer < 0 || layer >= c->n_layer)
        return 0;
    const char *p = name + used;
    if (c->n_expert > 0 && layer >= c->n_dense_layer) {
        if (!strncmp(p, "ffn_gate.", 9) || !strncmp(p, "ffn_up.", 7) || !strncmp(p, "ffn_down.", 9))
            return 0; /* an expert layer has no dense MLP */
        if (moe_shape(c, p, rows, cols)) return 1;
    }
    if (c->kv_lora_rank > 0 && mla_shape(c, p, rows, cols, is_norm)) return 1;
    int64_t q = (int64_t)c->n_head * c->head_dim, kv = (int64_t)c->n_kv_head * c->head_dim;
    if (!strcmp(p, "attn_norm.weight") || !strcmp(p, "ffn_norm.weight")) {
        *rows = 1, *cols = c->dim, *is_norm = 1;
    } else if (!strcmp(p, "attn_q.weight")) {
        *rows = q, *cols = c->dim;
    } else if (!strcmp(p, "attn_k.weight") || !strcmp(p, "attn_v.weight")) {
        *rows = kv, *cols = c->dim;
    } else if (!strcmp(p, "attn_output.weight")) {
        *rows = c->dim, *cols = q;
    } else if (!strcmp(p, "ffn_gate.weight") || !strcmp(p, "ffn_up.weight")) {
        *rows = c->ffn_dim, *cols = c->dim;
    } else if (!strcmp(p, "ffn_down.weight")) {
        *rows = c->dim, *cols = c->ffn_dim;
    } else {
        return 0;
    }
    return 1;
}

/* Rows [r0, r1) of a slice of a synthetic tensor: element (r, c) depends only on the seed and
 * r * cols + c, so any slice can be made in any order by any thread, and equals those elements of
 * the whole tensor (block formats quantize each 32-element block alone). */
struct gen_job {
    enum tsr_dtype t;
    int is_norm;
    uint64_t seed;
    float scale;
    int64_t cols;          /* the whole tensor's */
    int64_t row0, col0, n; /* the slice: its first row and column, its columns */
    int64_t r0, r1;        /* this job's rows, relative to row0 */
    size_t row_bytes;      /* of n columns */
    char *data;            /* the slice's first row */
    /* Conversion (tsr_model_quantize) instead of generation: whole rows of src, `stride` bytes
     * apart, are decoded and columns [col0, col0 + n) requantized to t. */
    const struct tsr_tensor_view *src;
    size_t stride;
    /* Or a quantized checkpoint's matrix (FP8, int8): with copy its blocks copied (lossless); else
     * whole rows of its values (code * scale) requantized to t as src's are. */
    const struct codes_src *q;
    int copy;
    int failed;
};

static void *gen_rows(void *arg)
{
    struct gen_job *j = arg;
    int whole = j->src || j->q;
    float *tmp = malloc((size_t)(whole ? j->cols : j->n) * sizeof *tmp);
    if (!tmp) {
        j->failed = 1;
        return NULL;
    }
    for (int64_t i = j->r0; i < j->r1; i++) {
        char *out = j->data + (size_t)i * j->row_bytes;
        int64_t r = j->row0 + i;
        if (j->q && j->copy) {
            codes_blocks(j->q, r, j->col0, j->n, out);
        } else if (whole) {
            if (j->q)
                codes_row(j->q, r, tmp);
            else
                tsr_dequantize_row(j->src->type, (const char *)j->src->data + (size_t)r * j->stride,
                                   tmp, j->cols);
            tsr_quantize_row_search(j->t, tmp + j->col0, out, j->n);
        } else {
            uint64_t base = j->seed + (uint64_t)(r * j->cols + j->col0);
            for (int64_t c = 0; c < j->n; c++) {
                uint64_t u = mix64(base + (uint64_t)c);
                float x = (float)((double)(u >> 11) * (2.0 / 9007199254740992.0) - 1.0) * j->scale;
                tmp[c] = j->is_norm ? 1.0f + x : x;
            }
            tsr_quantize_row(j->t, tmp, out, j->n);
        }
    }
    free(tmp);
    return NULL;
}

enum { GEN_MAX_THREADS = 32, GEN_ROWS_PER_THREAD = 256 };

/* Generates the rows with up to one thread per core (a TP=4 rank of the 70B shape makes 1.8e10
 * values: minutes on one core). Returns 0, or -1 when out of memory. */
static int gen_tensor(struct gen_job *whole, int64_t rows)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int64_t nt = rows / GEN_ROWS_PER_THREAD;
    if (nt > cores) nt = cores;
    if (nt > GEN_MAX_THREADS) nt = GEN_MAX_THREADS;
    if (nt < 1) nt = 1;
    struct gen_job jobs[GEN_MAX_THREADS];
    pthread_t th[GEN_MAX_THREADS];
    int started[GEN_MAX_THREADS] = {0}, failed = 0;
    for (int64_t i = 0; i < nt; i++) {
        jobs[i] = *whole;
        jobs[i].r0 = rows * i / nt;
        jobs[i].r1 = rows * (i + 1) / nt;
        started[i] = i > 0 && !pthread_create(&th[i], NULL, gen_rows, &jobs[i]);
        if (i > 0 && !started[i]) gen_rows(&jobs[i]); /* no thread: do it here */
    }
    gen_rows(&jobs[0]);
    for (int64_t i = 0; i < nt; i++) {
        if (started[i]) pthread_join(th[i], NULL);
        failed |= jobs[i].failed;
    }
    return failed ? -1 : 0;
}

/* Norms stay f32 (as in every GGUF); matrices take the chosen type. */
static enum tsr_dtype synthetic_type(const tsr_model_t *m, int is_norm)
{
    return is_norm ? TSR_F32 : m->synth_dtype;
}

static int synthetic_view(tsr_model_t *m, const char *name, struct tsr_tensor_view *out,
                          int *is_norm)
{
    int64_t rows, cols;
    if (!strcmp(name, "output.weight") && m->cfg.tied_embeddings)
        return tsr_errorf(TSR_ENOTFOUND, "%s: embeddings are tied", m->name);
    if (!synthetic_shape(&m->cfg, name, &rows, &cols, is_norm))
        return tsr_errorf(TSR_ENOTFOUND, "%s: no tensor '%s'", m->name, name);
    enum tsr_dtype t = synthetic_type(m, *is_norm);
    size_t row_bytes = tsr_dtype_row_bytes(t, cols);
    if (!row_bytes)
        return tsr_errorf(TSR_EINVAL, "%s: %lld columns do not divide into %s blocks", m->name,
                          (long long)cols, tsr_dtype_name(t));
    *out = (struct tsr_tensor_view){
        .type = t, .rows = rows, .cols = cols, .nbytes = row_bytes * (size_t)rows, .generated = 1};
    return 0;
}

/* Expert E of a GGUF's stacked expert tensor, for blk.N.ffn_{gate,up,down}_exp.E.weight:
 * blk.N.ffn_{gate,up,down}_exps.weight holds every expert's matrix one after another (ne = [cols,
 * rows, n_expert]), so expert E's rows are a contiguous range of the mapping. */
static int gguf_expert_view(tsr_model_t *m, const char *name, struct tsr_tensor_view *out)
{
    int l, e, used = 0;
    char what[8], stacked[96];
    if (sscanf(name, "blk.%d.ffn_%4[a-z]_exp.%d.weight%n", &l, what, &e, &used) != 3 ||
        name[used] || e < 0)
        return tsr_errorf(TSR_ENOTFOUND, "%s: no tensor '%s'", m->name, name);
    snprintf(stacked, sizeof stacked, "blk.%d.ffn_%s_exps.weight", l, what);
    const struct tsr_gguf_tensor *t = tsr_gguf_find_tensor(m->gguf, stacked);
    if (!t || t->n_dims != 3 || e >= t->ne[2])
        return tsr_errorf(TSR_ENOTFOUND, "%s: no tensor '%s' (expert %d of a 3-dimensional '%s')",
                          m->name, name, e, stacked);
    size_t rows = tsr_dtype_row_bytes(t->type, t->ne[0]) * (size_t)t->ne[1];
    *out = (struct tsr_tensor_view){.type = t->type,
                                    .rows = t->ne[1],
                                    .cols = t->ne[0],
                                    .data = (const char *)t->data + (size_t)e * rows,
                                    .nbytes = rows,
                                    .mapped = 1};
    return 0;
}

/* A file tensor's view. A quantized checkpoint's matrix is its blocks' type (TSR_F8_E4M3,
 * TSR_Q8_0) with no data (generated), its codes and scales in *q for tsr_model_read; q->scale is
 * NULL for every other tensor. */
static int file_view(tsr_model_t *m, const char *name, struct tsr_tensor_view *out,
                     struct codes_src *q)
{
    memset(out, 0, sizeof *out);
    memset(q, 0, sizeof *q);
    if (m->src == SRC_GGUF) {
        const struct tsr_gguf_tensor *t = tsr_gguf_find_tensor(m->gguf, name);
        if (!t) return gguf_expert_view(m, name, out);
        out->type = t->type;
        out->data = t->data;
        out->nbytes = t->nbytes;
        out->mapped = 1;
        view_from_dims(out, t->n_dims, t->ne);
        return 0;
    }
    char hf[256];
    int mapped = hf_name(&m->cfg, name, hf, sizeof hf);
    const struct tsr_st_tensor *t = mapped ? tsr_st_find_tensor(m->st, hf) : NULL;
    if (!t && mapped)
        return tsr_errorf(TSR_ENOTFOUND, "%s: no tensor '%s' (%s)", m->name, hf, name);
    if (!t) return tsr_errorf(TSR_ENOTFOUND, "%s: no tensor '%s'", m->name, name);
    if (t->codes) {
        int rc = codes_source(m, name, hf, t, 0, q);
        if (rc) return rc;
        enum tsr_dtype bt = q->kind->blocks;
        *out =
            (struct tsr_tensor_view){.type = bt,
                                     .rows = q->rows,
                                     .cols = q->cols,
                                     .nbytes = tsr_dtype_row_bytes(bt, q->cols) * (size_t)q->rows,
                                     .generated = 1};
        return 0;
    }
    out->type = t->type;
    out->data = t->data;
    out->nbytes = t->nbytes;
    out->mapped = 1;
    view_from_dims(out, t->n_dims ? t->n_dims : 1, t->ne);
    return 0;
}

/* The view of a file tensor; under tsr_model_quantize a converted matrix's view (type the
 * target's, no data: tsr_model_read makes it), and the file's own in *src (and *q). A quantized
 * checkpoint's matrix is converted even to its own blocks' type when some int8 scale is not
 * exactly an f16 (inexact_scales): its blocks could not hold it. */
static int model_view(tsr_model_t *m, const char *name, struct tsr_tensor_view *out,
                      struct tsr_tensor_view *src, struct codes_src *q)
{
    int rc = file_view(m, name, src, q);
    if (rc) return rc;
    *out = *src;
    if (m->quantize < 0 || !quantized_name(name) ||
        (src->type == (enum tsr_dtype)m->quantize && !(q->scale && m->inexact_scales)))
        return 0;
    enum tsr_dtype t = (enum tsr_dtype)m->quantize;
    size_t row_bytes = tsr_dtype_row_bytes(t, src->cols);
    if (!row_bytes)
        return tsr_errorf(TSR_EINVAL,
                          "%s: --quantize %s: tensor '%s' has %lld columns, not a multiple of "
                          "%s's %d-weight blocks",
                          m->name, tsr_dtype_name(t), name, (long long)src->cols, tsr_dtype_name(t),
                          tsr_dtype_block_elems(t));
    *out = (struct tsr_tensor_view){.type = t,
                                    .rows = src->rows,
                                    .cols = src->cols,
                                    .nbytes = row_bytes * (size_t)src->rows,
                                    .generated = 1};
    return 0;
}

int tsr_model_quantize(tsr_model_t *m, int type)
{
    if (type < 0) return 0;
    if (!tsr_dtype_valid(type))
        return tsr_errorf(TSR_EINVAL, "%s: --quantize: unknown weight type %d", m->name, type);
    if (m->src == SRC_SYNTHETIC)
        return tsr_errorf(TSR_EINVAL,
                          "%s: --quantize is for model files: a synthetic model takes its weight "
                          "type in its name (synthetic:NAME:TYPE)",
                          m->name);
    m->quantize = type;
    /* every matrix now, so that a width the type cannot take is an error at load, not later */
    char name[64];
    struct tsr_tensor_view v, src;
    struct codes_src q;
    for (int l = 0; l < m->cfg.n_layer; l++)
        for (size_t i = 0; i < sizeof quant_mats / sizeof quant_mats[0]; i++) {
            snprintf(name, sizeof name, "blk.%d.%s", l, quant_mats[i]);
            int rc = model_view(m, name, &v, &src, &q);
            if (rc && rc != TSR_ENOTFOUND) {
                m->quantize = -1;
                return rc;
            }
        }
    return 0;
}

int tsr_model_tensor(tsr_model_t *m, const char *name, struct tsr_tensor_view *out)
{
    int is_norm;
    struct tsr_tensor_view src;
    struct codes_src q;
    memset(out, 0, sizeof *out);
    return m->src == SRC_SYNTHETIC ? synthetic_view(m, name, out, &is_norm)
                                   : model_view(m, name, out, &src, &q);
}

int tsr_model_read(tsr_model_t *m, const char *name, int64_t row0, int64_t n_rows, int64_t col0,
                   int64_t n_cols, void *dst)
{
    struct tsr_tensor_view v, src;
    struct codes_src q;
    int is_norm = 0;
    memset(&v, 0, sizeof v);
    memset(&src, 0, sizeof src);
    memset(&q, 0, sizeof q);
    int rc = m->src == SRC_SYNTHETIC ? synthetic_view(m, name, &v, &is_norm)
                                     : model_view(m, name, &v, &src, &q);
    if (rc) return rc;
    if (row0 < 0 || n_rows < 0 || row0 > v.rows - n_rows || col0 < 0 || n_cols < 0 ||
        col0 > v.cols - n_cols)
        return tsr_errorf(TSR_EINVAL,
                          "%s: rows [%lld, +%lld) x columns [%lld, +%lld) are outside "
                          "'%s' (%lldx%lld)",
                          m->name, (long long)row0, (long long)n_rows, (long long)col0,
                          (long long)n_cols, name, (long long)v.rows, (long long)v.cols);
    if (!n_rows || !n_cols) return 0;
    size_t row_bytes = tsr_dtype_row_bytes(v.type, n_cols);
    size_t skip = col0 ? tsr_dtype_row_bytes(v.type, col0) : 0;
    if (!row_bytes || (col0 && !skip))
        return tsr_errorf(TSR_EINVAL, "%s: columns [%lld, +%lld) of '%s' are not on %s blocks",
                          m->name, (long long)col0, (long long)n_cols, name,
                          tsr_dtype_name(v.type));
    if (!v.generated) {
        size_t stride = v.nbytes / (size_t)v.rows;
        for (int64_t i = 0; i < n_rows; i++)
            memcpy((char *)dst + (size_t)i * row_bytes,
                   (const char *)v.data + (size_t)(row0 + i) * stride + skip, row_bytes);
        return 0;
    }
    if (m->src != SRC_SYNTHETIC) { /* a converted matrix, or a quantized checkpoint's */
        struct gen_job job = {.t = v.type,
                              .cols = v.cols,
                              .row0 = row0,
                              .col0 = col0,
                              .n = n_cols,
                              .row_bytes = row_bytes,
                              .data = dst,
                              .src = q.scale ? NULL : &src,
                              .stride = q.scale ? 0 : src.nbytes / (size_t)src.rows,
                              .q = q.scale ? &q : NULL,
                              .copy = q.scale && v.type == q.kind->blocks && !m->inexact_scales};
        if (gen_tensor(&job, n_rows))
            return tsr_errorf(TSR_ENOMEM, "%s: out of memory converting '%s'", m->name, name);
        return 0;
    }
    /* Uniform in ±sqrt(3/cols): unit-variance outputs for unit-variance inputs. */
    struct gen_job job = {.t = v.type,
                          .is_norm = is_norm,
                          .seed = m->synth_seed ^ name_hash(name),
                          .scale = is_norm ? 0.1f : sqrtf(3.0f / (float)v.cols),
                          .cols = v.cols,
                          .row0 = row0,
                          .col0 = col0,
                          .n = n_cols,
                          .row_bytes = row_bytes,
                          .data = dst};
    if (gen_tensor(&job, n_rows))
        return tsr_errorf(TSR_ENOMEM, "%s: out of memory generating '%s'", m->name, name);
    return 0;
}
