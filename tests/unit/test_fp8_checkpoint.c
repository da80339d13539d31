/* Hugging Face FP8 checkpoints (config.json quantization_config quant_method "fp8"):
 * 1. the safetensors reader takes dtype F8_E4M3 as bare codes, one byte an element;
 * 2. config.json's quantization_config: fp8 with or without weight_block_size, every other
 *    quant_method refused by name, malformed fields refused;
 * 3. a tiny model directory whose projections are F8_E4M3 codes with per-tensor (layer 0),
 *    per-channel (layer 1) and 128 x 128-block (layer 2: DeepSeek's weight_scale_inv, partial
 *    blocks included) scales in F32, BF16 and F16 opens; every projection reads as TSR_F8_E4M3
 *    blocks holding the file's codes and their scale, worth code * scale as computed here in
 *    float64 from the codes' and scales' bits; row and column slices (a TP rank's share) are
 *    those bytes of the whole; --quantize fp8 changes nothing, --quantize q8_0 and f16
 *    requantize the FP8 values; a forward pass on the CPU backend gives the logits of the same
 *    model with its weights in F32;
 * 4. every malformed checkpoint is an error at open naming the tensor and what is wrong. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "common/dtype.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "worker/forward.h"
#include "unit.h"
#include "ckpt_check.h"

/* ---- the tiny model ---- */

#define BLOCK 128

#define QUANT_FP8                                                                                  \
    "{\"quant_method\":\"fp8\",\"activation_scheme\":\"dynamic\",\"fmt\":\"e4m3\","                \
    "\"weight_block_size\":[128,128]}"

/* Scale dtypes, by layer and projection: every one of the three in each layout. */
static const char *const scale_dtype[N_LAYER][7] = {
    {"F32", "F32", "BF16", "F16", "F32", "BF16", "F32"},
    {"F32", "BF16", "F16", "F32", "BF16", "F32", "F16"},
    {"F32", "BF16", "F32", "F16", "F32", "F32", "BF16"}};

/* The checkpoint: bf16 embeddings and head, norms near 1, FP8 projections whose weights have
 * about 1/sqrt(cols) spread, with per-tensor scales in layer 0 (shapes [] and [1]), per-channel
 * in layer 1 ([rows, 1] and [rows]) and 128 x 128 blocks in layer 2. Deterministic. */
static void make_ckpt(struct ckpt *c)
{
    char name[160];
    tsr_test_rng_state = 0xf8c4ec7f00dULL;
    c->n = 0;
    fill_float(add(c, "model.embed_tokens.weight", "BF16", 2, VOCAB, DIM), 1.0f, 0);
    fill_float(add(c, "lm_head.weight", "BF16", 2, VOCAB, DIM), 0.06f, 0);
    fill_float(add(c, "model.norm.weight", "F32", 1, DIM, 0), 0.1f, 1.0f);
    for (int l = 0; l < N_LAYER; l++) {
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        fill_float(add(c, name, "BF16", 1, DIM, 0), 0.1f, 1.0f);
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        fill_float(add(c, name, "BF16", 1, DIM, 0), 0.1f, 1.0f);
        for (int p = 0; p < 7; p++) {
            int64_t rows = proj_shape[p][0], cols = proj_shape[p][1];
            hf_proj(name, sizeof name, l, p, "");
            struct tensor *w = add(c, name, "F8_E4M3", 2, rows, cols);
            for (int64_t i = 0; i < rows * cols; i++)
                w->data[i] = tsr_f32_to_e4m3(tsr_test_rng_normal() * 64.0f);
            float base = 1.0f / (64.0f * sqrtf((float)cols));
            struct tensor *s;
            const char *dt = scale_dtype[l][p];
            if (l == 0) {
                hf_proj(name, sizeof name, l, p, "_scale");
                s = add(c, name, dt, p % 2, 1, 0);
                if (p == 0) { /* activation_scheme static's input scales: ignored */
                    snprintf(name, sizeof name, "model.layers.%d.%s.input_scale", l, proj_hf[p]);
                    fill_float(add(c, name, "F32", 0, 0, 0), 0.0f, 0.5f);
                }
            } else if (l == 1) {
                hf_proj(name, sizeof name, l, p, "_scale");
                s = add(c, name, dt, p % 2 ? 1 : 2, rows, 1);
            } else {
                hf_proj(name, sizeof name, l, p, "_scale_inv");
                s = add(c, name, dt, 2, (rows + BLOCK - 1) / BLOCK, (cols + BLOCK - 1) / BLOCK);
            }
            for (int64_t i = 0; i < n_elems(s); i++)
                put(s, i, base * (float)(0.5 + tsr_test_rng_uniform()));
        }
    }
}

/* The scale of weight (r, col) of projection p of layer l, decoded from the file's bits. */
static double ref_scale(struct ckpt *c, int l, int p, int64_t r, int64_t col)
{
    char name[160];
    int64_t cols = proj_shape[p][1];
    hf_proj(name, sizeof name, l, p, l == 2 ? "_scale_inv" : "_scale");
    int64_t si = l == 0 ? 0 : l == 1 ? r : r / BLOCK * ((cols + BLOCK - 1) / BLOCK) + col / BLOCK;
    return get(find(c, name), si);
}

/* The value the checkpoint gives that weight: its code's value times its scale, in float64
 * (exact: 4 by at most 24 significant bits). */
static double ref_weight(struct ckpt *c, int l, int p, int64_t r, int64_t col)
{
    char name[160];
    hf_proj(name, sizeof name, l, p, "");
    const struct tensor *w = find(c, name);
    return tsr_test_e4m3_ref(w->data[r * proj_shape[p][1] + col]) * ref_scale(c, l, p, r, col);
}

/* ---- 1. the reader ---- */

static void test_reader(void **state)
{
    (void)state;
    ckpt_check_reader("F8_E4M3", TSR_ST_E4M3, TSR_F8_E4M3);
}

/* ---- 2. config.json ---- */

static void test_config(void **state)
{
    (void)state;
    struct tsr_model_config c;
    assert_int_equal(parse_quant(QUANT_FP8, &c), 0);
    assert_int_equal(c.weight_quant, TSR_WQ_FP8);
    assert_int_equal(c.fp8_block[0], 128);
    assert_int_equal(c.fp8_block[1], 128);
    assert_int_equal(parse_quant("{\"quant_method\":\"fp8\",\"activation_scheme\":\"static\"}", &c),
                     0);
    assert_int_equal(c.weight_quant, TSR_WQ_FP8);
    assert_int_equal(c.fp8_block[0], 0);
    assert_int_equal(c.fp8_block[1], 0);
    assert_int_equal(parse_quant("{\"quant_method\":\"fp8\",\"weight_block_size\":null,"
                                 "\"modules_to_not_convert\":[\"lm_head\"]}",
                                 &c),
                     0);
    assert_int_equal(c.weight_quant, TSR_WQ_FP8);
    assert_int_equal(parse_quant("null", &c), 0);
    assert_int_equal(c.weight_quant, TSR_WQ_NONE);
    assert_int_equal(parse_quant(NULL, &c), 0);
    assert_int_equal(c.weight_quant, TSR_WQ_NONE);

    static const char *const others[] = {"gptq", "awq", "bitsandbytes", "fbgemm_fp8"};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        char q[128], want[128];
        snprintf(q, sizeof q, "{\"quant_method\":\"%s\",\"bits\":4}", others[i]);
        snprintf(want, sizeof want,
                 "q/config.json: quantization_config quant_method '%s' is not "
                 "supported",
                 others[i]);
        EXPECT_ERR(parse_quant(q, &c), TSR_EUNSUPPORTED, want);
    }
    EXPECT_ERR(parse_quant("{\"quant_method\":\"fp8\",\"fmt\":\"e5m2\"}", &c), TSR_EUNSUPPORTED,
               "fmt 'e5m2' is not supported");
    static const struct {
        const char *q, *msg;
    } bad[] = {
        {"[]", "\"quantization_config\" must be an object"},
        {"\"fp8\"", "\"quantization_config\" must be an object"},
        {"{}", "no string \"quant_method\""},
        {"{\"quant_method\":8}", "no string \"quant_method\""},
        {"{\"quant_method\":\"fp8\",\"fmt\":4}", "\"fmt\" must be a string"},
        {"{\"quant_method\":\"fp8\",\"activation_scheme\":\"sometimes\"}",
         "\"activation_scheme\" must be \"dynamic\" or \"static\""},
        {"{\"quant_method\":\"fp8\",\"activation_scheme\":1}", "\"activation_scheme\" must be"},
        {"{\"quant_method\":\"fp8\",\"weight_block_size\":[128]}", "\"weight_block_size\" must be"},
        {"{\"quant_method\":\"fp8\",\"weight_block_size\":[128,128,1]}", "\"weight_block_size\""},
        {"{\"quant_method\":\"fp8\",\"weight_block_size\":[0,128]}", "\"weight_block_size\""},
        {"{\"quant_method\":\"fp8\",\"weight_block_size\":[128,-128]}", "\"weight_block_size\""},
        {"{\"quant_method\":\"fp8\",\"weight_block_size\":[128,128.0]}", "\"weight_block_size\""},
        {"{\"quant_method\":\"fp8\",\"weight_block_size\":[128,\"128\"]}", "\"weight_block_size\""},
        {"{\"quant_method\":\"fp8\",\"weight_block_size\":\"128x128\"}", "\"weight_block_size\""},
        {"{\"quant_method\":\"fp8\",\"weight_block_size\":{\"0\":128}}", "\"weight_block_size\""},
        {"{\"quant_method\":\"fp8\",\"weight_block_size\":[128,1000000000]}",
         "two integers within 1..262144"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        EXPECT_ERR(parse_quant(bad[i].q, &c), TSR_EFORMAT, bad[i].msg);

    /* validation of a config made in code */
    assert_int_equal(parse_quant(QUANT_FP8, &c), 0);
    c.weight_quant = TSR_WQ_NONE;
    EXPECT_ERR(tsr_config_validate(&c), TSR_EFORMAT, "FP8 weight blocks");
}

/* ---- 3. the model ---- */

static void test_model_reads(void **state)
{
    (void)state;
    struct ckpt c;
    make_ckpt(&c);
    write_dir(q_dir, &c, QUANT_FP8);
    tsr_model_t *m;
    int rc = tsr_model_open(q_dir, &m);
    if (rc) fail_msg("open: %s", tsr_last_error());
    assert_int_equal(tsr_model_config(m)->weight_quant, TSR_WQ_FP8);
    for (int l = 0; l < N_LAYER; l++)
        for (int p = 0; p < 7; p++) /* bf16 and f16 scales: 4 by 8 or 11 significant bits */
            ckpt_check_blocks(m, &c, l, p, TSR_F8_E4M3, ref_scale, ref_weight,
                              strcmp(scale_dtype[l][p], "F32") != 0);
    /* what stays as the file has it */
    struct tsr_tensor_view v;
    assert_int_equal(tsr_model_tensor(m, "token_embd.weight", &v), 0);
    assert_int_equal(v.type, TSR_BF16);
    assert_int_equal(v.generated, 0);
    assert_int_equal(tsr_model_tensor(m, "output.weight", &v), 0);
    assert_int_equal(v.type, TSR_BF16);
    assert_int_equal(tsr_model_tensor(m, "blk.1.ffn_norm.weight", &v), 0);
    assert_int_equal(v.type, TSR_BF16);

    /* --quantize fp8: the same bytes */
    assert_int_equal(tsr_model_tensor(m, "blk.2.ffn_down.weight", &v), 0);
    uint8_t *a = malloc(v.nbytes), *b = malloc(v.nbytes);
    assert_true(a && b);
    assert_int_equal(tsr_model_read(m, "blk.2.ffn_down.weight", 0, v.rows, 0, v.cols, a), 0);
    assert_int_equal(tsr_model_quantize(m, TSR_F8_E4M3), 0);
    assert_int_equal(tsr_model_read(m, "blk.2.ffn_down.weight", 0, v.rows, 0, v.cols, b), 0);
    assert_memory_equal(a, b, v.nbytes);
    free(a);
    free(b);
    tsr_model_free(m);
    ckpt_free(&c);
}

/* --quantize q8_0 / f16 on an FP8 checkpoint: each row's FP8 values requantized, any slice the
 * whole's columns. */
static void test_model_requantize(void **state)
{
    (void)state;
    static const enum tsr_dtype targets[] = {TSR_Q8_0, TSR_F16};
    ckpt_check_quantize(make_ckpt, ref_weight, targets, 2);
}

/* The FP8 model's forward pass equals the same model's with its weights stored as F32 (the
 * values computed here): the CPU backend's F8 matmul against its F32 one. */
static void test_forward(void **state)
{
    (void)state;
    ckpt_forward_check(backend, make_ckpt, ref_weight, q_dir, f32_dir, "FP8");
}

/* ---- 4. malformed checkpoints ---- */

static void expect_open_fails(void (*mutate)(struct ckpt *), const char *quant, int code,
                              const char *substr)
{
    ckpt_open_fails(make_ckpt, mutate, quant, bad_dir, code, substr);
}

static void no_scale(struct ckpt *c)
{
    drop(c, "model.layers.1.mlp.up_proj.weight_scale");
}
static void channel_shape(struct ckpt *c)
{
    replace(c, "model.layers.1.self_attn.k_proj.weight_scale", "F32", 1, 127, 0, 0.01f);
}
static void channel_shape_cols(struct ckpt *c)
{
    replace(c, "model.layers.1.self_attn.k_proj.weight_scale", "F32", 2, 1, 256, 0.01f);
}
static void tensor_shape(struct ckpt *c)
{
    replace(c, "model.layers.0.mlp.down_proj.weight_scale", "F32", 1, 2, 0, 0.01f);
}
static void block_shape(struct ckpt *c)
{
    replace(c, "model.layers.2.mlp.down_proj.weight_scale_inv", "F32", 2, 2, 2, 0.01f);
}
static void block_shape_1d(struct ckpt *c)
{
    replace(c, "model.layers.2.mlp.up_proj.weight_scale_inv", "F32", 1, 6, 0, 0.01f);
}
static void scale_i32(struct ckpt *c)
{
    replace(c, "model.layers.0.mlp.gate_proj.weight_scale", "I32", 0, 0, 0, 0);
}
static void scale_f8(struct ckpt *c)
{
    replace(c, "model.layers.0.mlp.gate_proj.weight_scale", "F8_E4M3", 0, 0, 0, 0);
    find(c, "model.layers.0.mlp.gate_proj.weight_scale")->data[0] = 0x38; /* 1.0 */
}
static void scale_nan(struct ckpt *c)
{
    put(find(c, "model.layers.1.self_attn.o_proj.weight_scale"), 5, NAN);
}
static void scale_inf(struct ckpt *c)
{
    put(find(c, "model.layers.2.mlp.gate_proj.weight_scale_inv"), 4, -INFINITY);
}
static void scale_bf16_inf(struct ckpt *c)
{
    put(find(c, "model.layers.0.self_attn.v_proj.weight_scale"), 0, INFINITY);
}
static void both_scales(struct ckpt *c)
{
    add(c, "model.layers.2.self_attn.q_proj.weight_scale", "F32", 0, 0, 0);
}
static void fp8_embeddings(struct ckpt *c)
{
    replace(c, "model.embed_tokens.weight", "F8_E4M3", 2, VOCAB, DIM, 0);
    add(c, "model.embed_tokens.weight_scale", "F32", 0, 0, 0);
}
static void fp8_head(struct ckpt *c)
{
    replace(c, "lm_head.weight", "F8_E4M3", 2, VOCAB, DIM, 0);
}
static void fp8_norm(struct ckpt *c)
{
    replace(c, "model.layers.1.post_attention_layernorm.weight", "F8_E4M3", 1, DIM, 0, 0);
}
static void narrow_matrix(struct ckpt *c)
{
    replace(c, "model.layers.0.self_attn.q_proj.weight", "F8_E4M3", 2, 256, 48, 0);
}
static void vector_matrix(struct ckpt *c)
{
    replace(c, "model.layers.0.self_attn.q_proj.weight", "F8_E4M3", 1, 256 * 256, 0, 0);
}

static void test_malformed(void **state)
{
    (void)state;
    expect_open_fails(no_scale, QUANT_FP8, TSR_EFORMAT,
                      "FP8 tensor 'model.layers.1.mlp.up_proj.weight' has no scale: neither "
                      "'model.layers.1.mlp.up_proj.weight_scale' nor "
                      "'model.layers.1.mlp.up_proj.weight_scale_inv' is in the checkpoint");
    expect_open_fails(channel_shape, QUANT_FP8, TSR_EFORMAT,
                      "scale 'model.layers.1.self_attn.k_proj.weight_scale' has shape [127]; for "
                      "'model.layers.1.self_attn.k_proj.weight' (128 x 256) a per-tensor scale is "
                      "[] or [1], a per-channel one [128] or [128, 1]");
    expect_open_fails(channel_shape_cols, QUANT_FP8, TSR_EFORMAT, "has shape [1, 256]");
    expect_open_fails(tensor_shape, QUANT_FP8, TSR_EFORMAT,
                      "scale 'model.layers.0.mlp.down_proj.weight_scale' has shape [2]");
    expect_open_fails(block_shape, QUANT_FP8, TSR_EFORMAT,
                      "scale 'model.layers.2.mlp.down_proj.weight_scale_inv' has shape [2, 2]; "
                      "'model.layers.2.mlp.down_proj.weight' (256 x 320) in blocks of 128 x 128 "
                      "needs [2, 3]");
    expect_open_fails(block_shape_1d, QUANT_FP8, TSR_EFORMAT, "has shape [6]");
    expect_open_fails(scale_i32, QUANT_FP8, TSR_EUNSUPPORTED,
                      "tensor 'model.layers.0.mlp.gate_proj.weight_scale': dtype I32 is not "
                      "supported");
    expect_open_fails(scale_f8, QUANT_FP8, TSR_EFORMAT,
                      "scale 'model.layers.0.mlp.gate_proj.weight_scale' is F8_E4M3; it must be "
                      "F32, BF16 or F16");
    expect_open_fails(scale_nan, QUANT_FP8, TSR_EFORMAT,
                      "'model.layers.1.self_attn.o_proj.weight_scale'[5] is ");
    expect_open_fails(scale_nan, QUANT_FP8, TSR_EFORMAT, "FP8 scales must be finite");
    expect_open_fails(scale_inf, QUANT_FP8, TSR_EFORMAT,
                      "scale 'model.layers.2.mlp.gate_proj.weight_scale_inv'[4] is -inf; FP8 "
                      "scales must be finite");
    expect_open_fails(scale_bf16_inf, QUANT_FP8, TSR_EFORMAT,
                      "scale 'model.layers.0.self_attn.v_proj.weight_scale'[0] is inf");
    expect_open_fails(both_scales, QUANT_FP8, TSR_EFORMAT,
                      "FP8 tensor 'model.layers.2.self_attn.q_proj.weight' has both");
    expect_open_fails(NULL, NULL, TSR_EFORMAT,
                      "is F8_E4M3 but config.json has no quantization_config with quant_method "
                      "\"fp8\"");
    expect_open_fails(NULL, "{\"quant_method\":\"fp8\"}", TSR_EFORMAT,
                      "'model.layers.2.self_attn.q_proj.weight_scale_inv' holds block scales but "
                      "config.json's quantization_config has no weight_block_size");
    expect_open_fails(NULL, "{\"quant_method\":\"fp8\",\"weight_block_size\":[128,48]}",
                      TSR_EUNSUPPORTED,
                      "weight_block_size [128, 48]: its columns must be a multiple of 32");
    expect_open_fails(NULL, "{\"quant_method\":\"fp8\",\"weight_block_size\":[128]}", TSR_EFORMAT,
                      "\"weight_block_size\" must be [rows, cols]");
    expect_open_fails(NULL, "{\"quant_method\":\"gptq\",\"bits\":4}", TSR_EUNSUPPORTED,
                      "quant_method 'gptq' is not supported");
    expect_open_fails(fp8_embeddings, QUANT_FP8, TSR_EUNSUPPORTED,
                      "tensor 'model.embed_tokens.weight' is F8_E4M3: only the layers' "
                      "projection matrices may be FP8");
    expect_open_fails(fp8_head, QUANT_FP8, TSR_EUNSUPPORTED,
                      "tensor 'lm_head.weight' is F8_E4M3: only");
    expect_open_fails(fp8_norm, QUANT_FP8, TSR_EUNSUPPORTED,
                      "tensor 'model.layers.1.post_attention_layernorm.weight' is F8_E4M3");
    expect_open_fails(narrow_matrix, QUANT_FP8, TSR_EUNSUPPORTED,
                      "FP8 tensor 'model.layers.0.self_attn.q_proj.weight' is 48 columns wide, "
                      "not a multiple of 32");
    expect_open_fails(vector_matrix, QUANT_FP8, TSR_EFORMAT,
                      "FP8 tensor 'model.layers.0.self_attn.q_proj.weight' has shape [65536]; a "
                      "matrix has 2 dimensions");
}

/* quantization_config fp8 over a checkpoint with no FP8 tensor: fine (the F32 one). */
static void test_fp8_config_without_fp8_tensors(void **state)
{
    (void)state;
    char path[700], cfg[2048];
    config_json(cfg, sizeof cfg, QUANT_FP8);
    snprintf(path, sizeof path, "%s/config.json", f32_dir);
    write_file(path, cfg, strlen(cfg));
    tsr_model_t *m;
    int rc = tsr_model_open(f32_dir, &m);
    if (rc) fail_msg("open: %s", tsr_last_error());
    struct tsr_tensor_view v;
    assert_int_equal(tsr_model_tensor(m, "blk.0.attn_q.weight", &v), 0);
    assert_int_equal(v.type, TSR_F32);
    assert_int_equal(v.generated, 0);
    tsr_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reader),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_model_reads),
        cmocka_unit_test(test_model_requantize),
        cmocka_unit_test(test_forward),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_fp8_config_without_fp8_tensors),
    };
    return tsr_test_exit(cmocka_run_group_tests(tests, ckpt_setup, ckpt_teardown));
}
