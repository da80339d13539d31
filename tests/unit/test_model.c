/* Model sources: a Hugging Face directory (safetensors, rotate-half RoPE) computes the same
 * logits as the GGUF-layout model it was converted from; synthetic models are deterministic;
 * bad specs give clear errors. */
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
#include "kernels/backend.h"
#include "model/model.h"
#include "worker/forward.h"

#include "unit.h"

static tsr_backend_t *backend;
static char tmpdir[] = "/tmp/tsr_model_XXXXXX";

/* Teacher-forced logits of every position of ids, from a fresh runner. Caller frees. */
static float *all_logits(tsr_model_t *m, const int32_t *ids, int n)
{
    struct tsr_runner_opts o = {.n_blocks = 8, .block_size = 16, .max_tokens = n};
    tsr_runner_t *r;
    assert_int_equal(tsr_runner_new(m, backend, &o, NULL, &r), 0);
    struct tsr_step st = tsr_test_step(ids, 0, n, 8);
    int V = tsr_runner_n_vocab(r);
    float *out = malloc(sizeof(float) * (size_t)n * V);
    assert_int_equal(tsr_runner_forward(r, &st, out), 0);
    tsr_runner_free(r);
    return out;
}

struct st_entry {
    char name[96];
    int64_t rows, cols; /* cols = 0: a vector of rows elements */
    float *data;
};

/* Writes a safetensors file of F32 tensors. */
static void write_safetensors(const char *path, struct st_entry *e, int n)
{
    char header[65536];
    size_t hl = 0, off = 0;
    hl +=
        (size_t)snprintf(header + hl, sizeof header - hl, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < n; i++) {
        size_t bytes = (size_t)e[i].rows * (size_t)(e[i].cols ? e[i].cols : 1) * 4;
        if (e[i].cols)
            hl += (size_t)snprintf(header + hl, sizeof header - hl,
                                   ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld,%lld],"
                                   "\"data_offsets\":[%zu,%zu]}",
                                   e[i].name, (long long)e[i].rows, (long long)e[i].cols, off,
                                   off + bytes);
        else
            hl += (size_t)snprintf(header + hl, sizeof header - hl,
                                   ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld],"
                                   "\"data_offsets\":[%zu,%zu]}",
                                   e[i].name, (long long)e[i].rows, off, off + bytes);
        off += bytes;
    }
    hl += (size_t)snprintf(header + hl, sizeof header - hl, "}");
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint64_t len = hl;
    fwrite(&len, 8, 1, f);
    fwrite(header, 1, hl, f);
    for (int i = 0; i < n; i++)
        fwrite(e[i].data, 4, (size_t)e[i].rows * (size_t)(e[i].cols ? e[i].cols : 1), f);
    fclose(f);
}

/* GGUF orders each head's rows as interleaved pairs (2i, 2i+1); HF as halves (i, i + d/2).
 * HF row s*half + i of a head is GGUF row 2i + s. */
static void unpermute_rows(const float *src, float *dst, int n_heads, int head_dim, int cols)
{
    int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++)
        for (int s = 0; s < 2; s++)
            for (int i = 0; i < half; i++)
                memcpy(dst + ((size_t)h * head_dim + s * half + i) * cols,
                       src + ((size_t)h * head_dim + 2 * i + s) * cols, sizeof(float) * cols);
}

/* The whole tensor as f32 (read through tsr_model_read: synthetic views hold no data). */
static float *dequant(tsr_model_t *m, const char *name, const struct tsr_tensor_view *v)
{
    float *out = malloc(sizeof(float) * (size_t)(v->rows * v->cols));
    char *raw = malloc(v->nbytes);
    assert_int_equal(tsr_model_read(m, name, 0, v->rows, 0, v->cols, raw), 0);
    size_t rb = v->nbytes / (size_t)v->rows;
    for (int64_t r = 0; r < v->rows; r++)
        tsr_dequantize_row(v->type, raw + r * rb, out + r * v->cols, v->cols);
    free(raw);
    return out;
}

static void test_hf_dir_matches_gguf_layout(void **state)
{
    tsr_model_t *g;
    assert_int_equal(tsr_model_open("synthetic:tiny", &g), 0);
    const struct tsr_model_config *c = tsr_model_config(g);
    static const char *names[][2] = {
        {"token_embd.weight", "model.embed_tokens.weight"},
        {"output.weight", "lm_head.weight"},
        {"output_norm.weight", "model.norm.weight"},
    };
    static const char *layer_names[][2] = {
        {"attn_norm.weight", "input_layernorm.weight"},
        {"attn_q.weight", "self_attn.q_proj.weight"},
        {"attn_k.weight", "self_attn.k_proj.weight"},
        {"attn_v.weight", "self_attn.v_proj.weight"},
        {"attn_output.weight", "self_attn.o_proj.weight"},
        {"ffn_norm.weight", "post_attention_layernorm.weight"},
        {"ffn_gate.weight", "mlp.gate_proj.weight"},
        {"ffn_up.weight", "mlp.up_proj.weight"},
        {"ffn_down.weight", "mlp.down_proj.weight"},
    };
    struct st_entry e[64];
    int n = 0;
    for (int i = 0; i < 3; i++) {
        struct tsr_tensor_view v;
        assert_int_equal(tsr_model_tensor(g, names[i][0], &v), 0);
        snprintf(e[n].name, sizeof e[n].name, "%s", names[i][1]);
        e[n].rows = v.rows > 1 ? v.rows : v.cols;
        e[n].cols = v.rows > 1 ? v.cols : 0;
        e[n++].data = dequant(g, names[i][0], &v);
    }
    for (int l = 0; l < c->n_layer; l++)
        for (int i = 0; i < 9; i++) {
            char gn[96];
            struct tsr_tensor_view v;
            snprintf(gn, sizeof gn, "blk.%d.%s", l, layer_names[i][0]);
            assert_int_equal(tsr_model_tensor(g, gn, &v), 0);
            snprintf(e[n].name, sizeof e[n].name, "model.layers.%d.%s", l, layer_names[i][1]);
            e[n].rows = v.rows > 1 ? v.rows : v.cols;
            e[n].cols = v.rows > 1 ? v.cols : 0;
            float *d = dequant(g, gn, &v);
            if (i == 1 || i == 2) { /* q and k */
                float *p = malloc(sizeof(float) * (size_t)(v.rows * v.cols));
                unpermute_rows(d, p, (int)(v.rows / c->head_dim), c->head_dim, (int)v.cols);
                free(d);
                d = p;
            }
            e[n++].data = d;
        }
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", tmpdir);
    write_safetensors(path, e, n);
    for (int i = 0; i < n; i++) free(e[i].data);
    snprintf(path, sizeof path, "%s/config.json", tmpdir);
    FILE *f = fopen(path, "w");
    fprintf(f,
            "{\"model_type\":\"llama\",\"num_hidden_layers\":%d,\"hidden_size\":%d,"
            "\"intermediate_size\":%d,\"num_attention_heads\":%d,\"num_key_value_heads\":%d,"
            "\"vocab_size\":%d,\"max_position_embeddings\":%d,\"rms_norm_eps\":%g,"
            "\"rope_theta\":%g,\"tie_word_embeddings\":false}",
            c->n_layer, c->dim, c->ffn_dim, c->n_head, c->n_kv_head, c->n_vocab, c->n_ctx_train,
            c->norm_eps, c->rope_theta);
    fclose(f);
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "cp %s/tests/reference/spm_tiny_tokenizer.json %s/tokenizer.json",
             TSR_SOURCE_DIR, tmpdir);
    assert_int_equal(system(cmd), 0);

    tsr_model_t *h;
    assert_int_equal(tsr_model_open(tmpdir, &h), 0);
    assert_int_equal(tsr_model_config(h)->rope_neox, 1);
    assert_non_null(tsr_model_tokenizer(h));
    int32_t ids[40];
    for (int i = 0; i < 40; i++) ids[i] = (i * 37 + 11) % c->n_vocab;
    float *a = all_logits(g, ids, 40), *b = all_logits(h, ids, 40);
    double num = 0, den = 0;
    for (size_t i = 0; i < (size_t)40 * c->n_vocab; i++) {
        num += (double)(a[i] - b[i]) * (a[i] - b[i]);
        den += (double)a[i] * a[i];
    }
    /* Same weights, same math; only the order of the head-dim sums differs. */
    assert_true(num / den < 1e-10);
    free(a);
    free(b);
    tsr_model_free(h);
    tsr_model_free(g);
}

static void test_synthetic_deterministic(void **state)
{
    tsr_model_t *a, *b;
    assert_int_equal(tsr_model_open("synthetic:tiny-gqa4:q4_1", &a), 0);
    assert_int_equal(tsr_model_open("synthetic:tiny-gqa4:q4_1", &b), 0);
    assert_int_equal(tsr_model_config(a)->n_kv_head, 4);
    assert_null(tsr_model_tokenizer(a));
    struct tsr_tensor_view x, y;
    assert_int_equal(tsr_model_tensor(a, "blk.3.ffn_down.weight", &x), 0);
    assert_int_equal(tsr_model_tensor(b, "blk.3.ffn_down.weight", &y), 0);
    assert_int_equal(x.type, TSR_Q4_1);
    assert_int_equal(x.nbytes, y.nbytes);
    char *dx = malloc(x.nbytes), *dy = malloc(y.nbytes); /* synthetic views hold no data */
    assert_int_equal(tsr_model_read(a, "blk.3.ffn_down.weight", 0, x.rows, 0, x.cols, dx), 0);
    assert_int_equal(tsr_model_read(b, "blk.3.ffn_down.weight", 0, y.rows, 0, y.cols, dy), 0);
    assert_memory_equal(dx, dy, x.nbytes);
    free(dx);
    free(dy);
    assert_int_equal(tsr_model_tensor(a, "blk.4.ffn_down.weight", &x), TSR_ENOTFOUND);
    tsr_model_free(a);
    tsr_model_free(b);
}

static void test_bad_specs(void **state)
{
    tsr_model_t *m;
    assert_int_equal(tsr_model_open("synthetic:nope", &m), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "nope"));
    assert_int_equal(tsr_model_open("synthetic:tiny:q2_k", &m), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "q2_k"));
    /* k-quants need widths of whole 256-weight super-blocks: tiny's are 64 and 128 */
    assert_int_equal(tsr_model_open("synthetic:tiny:q5_k", &m), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "multiples of 256"));
    /* Q5_0/Q5_1 blocks are 32 wide: tiny takes them */
    static const char *const q5[] = {"synthetic:tiny:q5_0", "synthetic:tiny:q5_1"};
    for (int i = 0; i < 2; i++) {
        struct tsr_tensor_view v;
        if (tsr_model_open(q5[i], &m)) fail_msg("%s: %s", q5[i], tsr_last_error());
        assert_int_equal(tsr_model_tensor(m, "blk.0.ffn_down.weight", &v), 0);
        assert_int_equal(v.type, i ? TSR_Q5_1 : TSR_Q5_0);
        assert_int_equal(v.nbytes, (size_t)v.rows * tsr_dtype_row_bytes(v.type, v.cols));
        tsr_model_free(m);
    }
    assert_true(tsr_model_open("/nonexistent/model.gguf", &m) < 0);
    assert_non_null(strstr(tsr_last_error(), "/nonexistent/model.gguf"));
    assert_null(m);
}

/* A KV cache sized from device memory (n_blocks 0) needs a backend that measures it: the CPU's
 * does not, and says so; without a fraction either, the options are refused. */
static void test_kv_from_memory_needs_a_device(void **state)
{
    tsr_model_t *m;
    assert_int_equal(tsr_model_open("synthetic:tiny", &m), 0);
    tsr_runner_t *r = NULL;
    struct tsr_runner_opts o = {.n_blocks = 0, .block_size = 16, .max_tokens = 8, .mem_util = 0.5};
    assert_int_equal(tsr_runner_new(m, backend, &o, NULL, &r), TSR_EUNSUPPORTED);
    assert_non_null(strstr(tsr_last_error(), "does not measure its memory"));
    assert_null(r);
    o.mem_util = 0;
    assert_int_equal(tsr_runner_new(m, backend, &o, NULL, &r), TSR_EINVAL);
    assert_null(r);
    tsr_model_free(m);
}

static int setup(void **state)
{
    backend = tsr_backend_cpu_new(2);
    return backend && mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    tsr_backend_free(backend);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hf_dir_matches_gguf_layout),
        cmocka_unit_test(test_synthetic_deterministic),
        cmocka_unit_test(test_bad_specs),
        cmocka_unit_test(test_kv_from_memory_needs_a_device),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
