#include "model/config.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/status.h"
#include "model/files.h"

/* Reads "<arch>.<suffix>" as an int; missing → dflt if dflt >= 0, else an error. */
static int gguf_arch_int(const tsr_gguf_t *g, const char *arch, const char *suffix, int dflt,
                         int *out)
{
    char key[128];
    int64_t v;
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int rc = tsr_gguf_get_int(g, key, &v);
    if (rc == TSR_ENOTFOUND && dflt >= 0) {
        *out = dflt;
        return 0;
    }
    if (rc)
        return tsr_errorf(rc == TSR_ENOTFOUND ? TSR_EFORMAT : rc, "GGUF: %s %s", key,
                          rc == TSR_ENOTFOUND ? "missing" : "is not an integer");
    if (v < 0 || v > 0x7fffffff)
        return tsr_errorf(TSR_EFORMAT, "GGUF: %s = %lld is out of range", key, (long long)v);
    *out = (int)v;
    return 0;
}

static float gguf_arch_float(const tsr_gguf_t *g, const char *arch, const char *suffix, float dflt)
{
    char key[128];
    double v;
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    return tsr_gguf_get_float(g, key, &v) ? dflt : (float)v;
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
    if (strcmp(c->arch, "llama") && strcmp(c->arch, "qwen2") && strcmp(c->arch, "mistral"))
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "GGUF: architecture '%s' is not supported (llama, qwen2, mistral)",
                          c->arch);
    const char *a = c->arch;
    if ((rc = gguf_arch_int(g, a, "block_count", -1, &c->n_layer)) ||
        (rc = gguf_arch_int(g, a, "embedding_length", -1, &c->dim)) ||
        (rc = gguf_arch_int(g, a, "feed_forward_length", -1, &c->ffn_dim)) ||
        (rc = gguf_arch_int(g, a, "attention.head_count", -1, &c->n_head)) ||
        (rc = gguf_arch_int(g, a, "attention.head_count_kv", c->n_head, &c->n_kv_head)) ||
        (rc = gguf_arch_int(g, a, "context_length", 4096, &c->n_ctx_train)))
        return rc;
    int rot = 0;
    if (c->n_head && (rc = gguf_arch_int(g, a, "rope.dimension_count", c->dim / c->n_head, &rot)))
        return rc;
    if ((rc = gguf_arch_int(g, a, "attention.key_length", rot, &c->head_dim))) return rc;
    if (rot != c->head_dim)
        return tsr_errorf(TSR_EUNSUPPORTED, "GGUF: partial rotary (%d of %d dims) not supported",
                          rot, c->head_dim);
    c->norm_eps = gguf_arch_float(g, a, "attention.layer_norm_rms_epsilon", 1e-5f);
    c->rope_theta = gguf_arch_float(g, a, "rope.freq_base", 10000.0f);
    c->rope_neox = !strcmp(a, "qwen2"); /* llama.cpp's rope type per architecture */
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    if (!tsr_gguf_get_str(g, key, &s) && s.n == 6 && !memcmp(s.p, "linear", 6)) {
        c->rope_scaling = TSR_ROPE_LINEAR;
        c->rope_factor = gguf_arch_float(g, a, "rope.scaling.factor", 1.0f);
    }
    /* llama3 scaling arrives in GGUF as the rope_freqs.weight tensor, applied by the caller. */
    int64_t v;
    uint64_t n;
    enum tsr_gguf_vtype et;
    snprintf(key, sizeof key, "%s.vocab_size", a);
    if (!tsr_gguf_get_int(g, key, &v))
        c->n_vocab = (int)v;
    else if (!tsr_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n))
        c->n_vocab = (int)n;
    c->tied_embeddings = tsr_gguf_find_tensor(g, "output.weight") == NULL;
    c->qkv_bias = tsr_gguf_find_tensor(g, "blk.0.attn_q.bias") != NULL;
    return tsr_config_validate(c);
}

static int json_int(json_t *root, const char *key, int dflt, int *out, const char *path)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (dflt < 0) return tsr_errorf(TSR_EFORMAT, "%s: \"%s\" missing", path, key);
        *out = dflt;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 0x7fffffff)
        return tsr_errorf(TSR_EFORMAT, "%s: \"%s\" must be a non-negative integer", path, key);
    *out = (int)json_integer_value(v);
    return 0;
}

static float json_float(json_t *root, const char *key, float dflt)
{
    json_t *v = json_object_get(root, key);
    return json_is_number(v) ? (float)json_number_value(v) : dflt;
}

int tsr_config_from_json(const char *path, struct tsr_model_config *c)
{
    json_t *root;
    memset(c, 0, sizeof *c);
    int rc = tsr_json_load(path, "config.json", TSR_MAX_CONFIG_JSON_BYTES, 0, &root);
    if (rc) return rc;
    if (!json_is_object(root)) {
        rc = tsr_errorf(TSR_EFORMAT, "%s: not a JSON object", path);
        goto out;
    }
    const char *mt = json_string_value(json_object_get(root, "model_type"));
    if (!mt) mt = "llama";
    if (!strcmp(mt, "llama") || !strcmp(mt, "mistral") || !strcmp(mt, "qwen2")) {
        snprintf(c->arch, sizeof c->arch, "%s", mt);
    } else {
        rc = tsr_errorf(TSR_EUNSUPPORTED,
                        "%s: model_type '%s' is not supported (llama, mistral, qwen2)", path, mt);
        goto out;
    }
    if ((rc = json_int(root, "num_hidden_layers", -1, &c->n_layer, path)) ||
        (rc = json_int(root, "hidden_size", -1, &c->dim, path)) ||
        (rc = json_int(root, "intermediate_size", -1, &c->ffn_dim, path)) ||
        (rc = json_int(root, "num_attention_heads", -1, &c->n_head, path)) ||
        (rc = json_int(root, "num_key_value_heads", c->n_head, &c->n_kv_head, path)) ||
        (rc = json_int(root, "vocab_size", -1, &c->n_vocab, path)) ||
        (rc = json_int(root, "max_position_embeddings", 4096, &c->n_ctx_train, path)))
        goto out;
    if (c->n_head == 0) {
        rc = tsr_errorf(TSR_EFORMAT, "%s: num_attention_heads must be positive", path);
        goto out;
    }
    if ((rc = json_int(root, "head_dim", c->dim / c->n_head, &c->head_dim, path))) goto out;
    c->norm_eps = json_float(root, "rms_norm_eps", 1e-5f);
    c->rope_theta = json_float(root, "rope_theta", 10000.0f);
    c->rope_neox = 1; /* HF checkpoints keep q/k in rotate-half order */
    c->tied_embeddings = json_is_true(json_object_get(root, "tie_word_embeddings"));
    c->qkv_bias = !strcmp(mt, "qwen2") || json_is_true(json_object_get(root, "attention_bias"));
    json_t *rs = json_object_get(root, "rope_scaling");
    if (json_is_object(rs)) {
        const char *t = json_string_value(json_object_get(rs, "rope_type"));
        if (!t) t = json_string_value(json_object_get(rs, "type"));
        c->rope_factor = json_float(rs, "factor", 1.0f);
        if (t && !strcmp(t, "llama3")) {
            c->rope_scaling = TSR_ROPE_LLAMA3;
            c->rope_low_freq_factor = json_float(rs, "low_freq_factor", 1.0f);
            c->rope_high_freq_factor = json_float(rs, "high_freq_factor", 4.0f);
            if ((rc = json_int(rs, "original_max_position_embeddings", 8192, &c->rope_orig_ctx,
                               path)))
                goto out;
        } else if (t && !strcmp(t, "linear")) {
            c->rope_scaling = TSR_ROPE_LINEAR;
        } else if (t && strcmp(t, "default")) {
            rc = tsr_errorf(TSR_EUNSUPPORTED, "%s: rope_scaling type '%s' is not supported", path,
                            t);
            goto out;
        }
    }
    rc = tsr_config_validate(c);
out:
    json_decref(root);
    return rc;
}

int tsr_config_validate(const struct tsr_model_config *c)
{
    if (c->n_layer <= 0 || c->dim <= 0 || c->ffn_dim <= 0 || c->n_head <= 0 || c->n_kv_head <= 0 ||
        c->head_dim <= 0 || c->n_vocab <= 0)
        return tsr_errorf(TSR_EFORMAT,
                          "config: sizes must be positive (layers %d, dim %d, ffn %d, heads %d, "
                          "kv heads %d, head dim %d, vocab %d)",
                          c->n_layer, c->dim, c->ffn_dim, c->n_head, c->n_kv_head, c->head_dim,
                          c->n_vocab);
    if (c->n_head % c->n_kv_head)
        return tsr_errorf(TSR_EFORMAT, "config: %d heads do not divide into %d KV heads", c->n_head,
                          c->n_kv_head);
    if (c->head_dim % 2) return tsr_errorf(TSR_EFORMAT, "config: head dim %d is odd", c->head_dim);
    if (c->head_dim > 512)
        return tsr_errorf(TSR_EUNSUPPORTED, "config: head dim %d is over 512", c->head_dim);
    if (!(c->norm_eps > 0) || !(c->rope_theta > 0))
        return tsr_errorf(TSR_EFORMAT, "config: rms epsilon and rope theta must be positive");
    if (c->rope_scaling != TSR_ROPE_NONE && !(c->rope_factor > 0))
        return tsr_errorf(TSR_EFORMAT, "config: rope scaling factor must be positive");
    return 0;
}

void tsr_rope_inv_freq(const struct tsr_model_config *c, const float *freq_factors, float *out)
{
    int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        double f = pow((double)c->rope_theta, -2.0 * i / c->head_dim);
        if (c->rope_scaling == TSR_ROPE_LINEAR) {
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
    double layer = d * q + 2 * d * kv + q * d + 3 * d * c->ffn_dim + 2 * d;
    double emb = (double)c->n_vocab * d * (c->tied_embeddings ? 1 : 2);
    return c->n_layer * layer + emb + d;
}
