/* Hugging Face int8 checkpoints (config.json quantization_config quant_method
 * "compressed-tensors", format "int-quantized": what llm-compressor writes for W8A8 and W8A16):
 * 1. the safetensors reader takes dtype I8 as bare int8 codes, one byte an element;
 * 2. config.json's quantization_config: the int8 schemes accepted (channel, tensor, group; with
 *    or without input activations), every other format, bit width, asymmetry, activation order,
 *    block strategy, sparsity and transform refused naming the field;
 * 3. a tiny model directory whose projections are I8 codes with per-tensor F16 (layer 0),
 *    per-channel BF16 (layer 1, with all-zero zero points) and per-group F32 scales of 64
 *    columns (layer 2, values exact in f16) opens; every projection reads as TSR_Q8_0 blocks
 *    holding the file's codes and their scale, worth code * scale as computed here in float64
 *    from the codes' and scales' bits; row and column slices (a TP rank's share) are those
 *    bytes of the whole; --quantize q8_0 changes nothing, --quantize f16 and fp8 requantize the
 *    values; a forward pass on the CPU backend gives the logits of the same model with its
 *    weights in F32;
 * 4. scales that are not exactly f16s are refused at open with the way out (--quantize), which
 *    opens them requantized from code * scale;
 * 5. every malformed checkpoint is an error at open naming the tensor and what is wrong. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/dtype.h"
#include "common/status.h"
#include "model/config.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "unit.h"
#include "ckpt_check.h"

#define GROUP 64

/* llm-compressor's W8A8 config, with a second group of group scales for layer 2 */
#define QUANT_INT8                                                                                 \
    "{\"quant_method\":\"compressed-tensors\",\"format\":\"int-quantized\","                       \
    "\"quantization_status\":\"compressed\",\"global_compression_ratio\":1.2,"                     \
    "\"ignore\":[\"lm_head\"],\"kv_cache_scheme\":null,\"sparsity_config\":{},"                    \
    "\"config_groups\":{\"group_0\":{\"targets\":[\"Linear\"],\"output_activations\":null,"        \
    "\"input_activations\":{\"num_bits\":8,\"type\":\"int\",\"symmetric\":true,"                   \
    "\"strategy\":\"token\",\"dynamic\":true,\"group_size\":null,\"actorder\":null,"               \
    "\"observer\":null},"                                                                          \
    "\"weights\":{\"num_bits\":8,\"type\":\"int\",\"symmetric\":true,\"strategy\":\"channel\","    \
    "\"group_size\":null,\"dynamic\":false,\"actorder\":null,\"block_structure\":null,"            \
    "\"observer\":\"minmax\",\"observer_kwargs\":{}}},"                                            \
    "\"group_1\":{\"targets\":[\"re:.*layers.2.*\"],\"input_activations\":null,"                   \
    "\"weights\":{\"num_bits\":8,\"type\":\"int\",\"symmetric\":true,\"strategy\":\"group\","      \
    "\"group_size\":64,\"dynamic\":false}}}}"

/* A config of one group whose weights are W (a JSON object's members after num_bits 8, type int,
 * symmetric true), the rest as llm-compressor writes it; extra: more members of the config. */
static void quant_with(char *out, size_t cap, const char *w, const char *extra)
{
    snprintf(out, cap,
             "{\"quant_method\":\"compressed-tensors\",\"format\":\"int-quantized\"%s%s,"
             "\"config_groups\":{\"group_0\":{\"targets\":[\"Linear\"],\"weights\":{"
             "\"num_bits\":8,\"type\":\"int\",\"symmetric\":true%s%s}}}}",
             extra ? "," : "", extra ? extra : "", w ? "," : "", w ? w : "");
}

/* The value of an f32 as the nearest f16 holds it: what every group scale is here. */
static float f16_exact(float x)
{
    return tsr_f16_to_f32(tsr_f32_to_f16(x));
}

/* The checkpoint: bf16 embeddings and head, norms near 1, I8 projections whose weights have
 * about 1/sqrt(cols) spread, scaled per tensor in F16 in layer 0 (shapes [1] and []), per
 * channel in BF16 in layer 1 ([rows, 1] and [rows]; the even projections with all-zero I8 zero
 * points) and per 64-column group in F32 in layer 2 ([rows, cols / 64]). Deterministic. */
static void make_ckpt(struct ckpt *c)
{
    char name[160];
    tsr_test_rng_state = 0x1e8c4ec7f00dULL;
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
            struct tensor *w = add(c, name, "I8", 2, rows, cols);
            for (int64_t i = 0; i < rows * cols; i++) {
                float x = roundf(tsr_test_rng_normal() * 40.0f);
                w->data[i] = (uint8_t)(int8_t)(x > 127 ? 127 : x < -127 ? -127 : x);
            }
            float base = 1.0f / (40.0f * sqrtf((float)cols));
            hf_proj(name, sizeof name, l, p, "_scale");
            struct tensor *s;
            if (l == 0)
                s = add(c, name, "F16", p % 2, 1, 0);
            else if (l == 1)
                s = add(c, name, "BF16", p % 2 ? 1 : 2, rows, 1);
            else
                s = add(c, name, "F32", 2, rows, cols / GROUP);
            for (int64_t i = 0; i < n_elems(s); i++)
                put(s, i, f16_exact(base * (float)(0.5 + tsr_test_rng_uniform())));
            if (l == 1 && p % 2 == 0) {
                hf_proj(name, sizeof name, l, p, "_zero_point");
                add(c, name, "I8", 2, rows, 1);
            }
        }
    }
    /* a static activation scheme's input scale: ignored */
    fill_float(add(c, "model.layers.0.self_attn.q_proj.input_scale", "F32", 1, 1, 0), 0.0f, 0.5f);
}

/* The scale of weight (r, col) of projection p of layer l, decoded from the file's bits. */
static double ref_scale(struct ckpt *c, int l, int p, int64_t r, int64_t col)
{
    char name[160];
    hf_proj(name, sizeof name, l, p, "_scale");
    int64_t si = l == 0 ? 0 : l == 1 ? r : r * (proj_shape[p][1] / GROUP) + col / GROUP;
    return get(find(c, name), si);
}

/* The value the checkpoint gives that weight: its code times its scale, in float64 (exact). */
static double ref_weight(struct ckpt *c, int l, int p, int64_t r, int64_t col)
{
    char name[160];
    hf_proj(name, sizeof name, l, p, "");
    const struct tensor *w = find(c, name);
    return (double)(int8_t)w->data[r * proj_shape[p][1] + col] * ref_scale(c, l, p, r, col);
}

/* ---- 1. the reader ---- */

static void test_reader(void **state)
{
    (void)state;
    ckpt_check_reader("I8", TSR_ST_INT8, TSR_Q8_0);
}

/* ---- 2. config.json ---- */

static void test_config(void **state)
{
    (void)state;
    struct tsr_model_config c;
    char q[2048];
    assert_int_equal(parse_quant(QUANT_INT8, &c), 0);
    assert_int_equal(c.weight_quant, TSR_WQ_INT8);
    assert_int_equal(c.int8_group, GROUP);
    assert_int_equal(c.fp8_block[0], 0);
    static const struct {
        const char *w, *extra;
        int group;
    } ok[] = {
        {"\"strategy\":\"channel\"", NULL, 0},
        {"\"strategy\":\"tensor\",\"group_size\":null,\"dynamic\":false,\"actorder\":false",
         "\"sparsity_config\":{\"format\":\"dense\",\"global_sparsity\":0.1}", 0},
        {"\"strategy\":\"group\",\"group_size\":128", "\"sparsity_config\":null", 128},
        {"\"strategy\":\"channel\",\"observer\":\"mse\",\"group_size\":-1",
         "\"transform_config\":null,\"ignore\":[\"lm_head\",\"re:.*gate\"]", 0},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        quant_with(q, sizeof q, ok[i].w, ok[i].extra);
        int rc = parse_quant(q, &c);
        if (rc) fail_msg("%s: %s", q, tsr_last_error());
        assert_int_equal(c.weight_quant, TSR_WQ_INT8);
        assert_int_equal(c.int8_group, ok[i].group);
    }

    /* refused, each naming the field */
    static const char *const formats[] = {"pack-quantized", "float-quantized", "naive-quantized",
                                          "marlin-24",      "mixed-precision", "dense"};
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++) {
        char want[160];
        snprintf(q, sizeof q, "{\"quant_method\":\"compressed-tensors\",\"format\":\"%s\"}",
                 formats[i]);
        snprintf(want, sizeof want,
                 "q/config.json: quantization_config format '%s' is not supported", formats[i]);
        EXPECT_ERR(parse_quant(q, &c), TSR_EUNSUPPORTED, want);
    }
    static const struct {
        const char *w, *extra;
        int code;
        const char *msg;
    } bad[] = {
        {"\"num_bits\":4,\"strategy\":\"channel\"", NULL, TSR_EUNSUPPORTED,
         "config_groups.group_0.weights.num_bits is not 8"},
        {"\"strategy\":\"channel\",\"type\":\"float\"", NULL, TSR_EUNSUPPORTED,
         "config_groups.group_0.weights.type 'float' is not supported"},
        {"\"strategy\":\"channel\",\"symmetric\":false", NULL, TSR_EUNSUPPORTED,
         "config_groups.group_0.weights.symmetric is not true: asymmetric"},
        {"\"strategy\":\"group\",\"group_size\":128,\"actorder\":\"group\"", NULL, TSR_EUNSUPPORTED,
         "config_groups.group_0.weights.actorder is not supported"},
        {"\"strategy\":\"block\",\"block_structure\":[128,128]", NULL, TSR_EUNSUPPORTED,
         "weights.block_structure is not supported"},
        {"\"strategy\":\"block\"", NULL, TSR_EUNSUPPORTED,
         "config_groups.group_0.weights.strategy 'block' is not supported (channel, tensor, "
         "group)"},
        {"\"strategy\":\"token\"", NULL, TSR_EUNSUPPORTED, "weights.strategy 'token'"},
        {"\"strategy\":\"tensor_group\",\"group_size\":16", NULL, TSR_EUNSUPPORTED,
         "weights.strategy 'tensor_group'"},
        {"\"group_size\":128", NULL, TSR_EUNSUPPORTED, "weights.strategy '?'"},
        {"\"strategy\":\"group\",\"group_size\":48", NULL, TSR_EUNSUPPORTED,
         "config_groups.group_0.weights.group_size must be a multiple of 32"},
        {"\"strategy\":\"group\"", NULL, TSR_EUNSUPPORTED, "weights.group_size must be"},
        {"\"strategy\":\"group\",\"group_size\":\"128\"", NULL, TSR_EUNSUPPORTED,
         "weights.group_size must be"},
        {"\"strategy\":\"channel\",\"group_size\":128", NULL, TSR_EFORMAT,
         "weights.group_size is for strategy group only"},
        {"\"strategy\":\"channel\",\"dynamic\":true", NULL, TSR_EUNSUPPORTED,
         "config_groups.group_0.weights.dynamic is not false"},
        {"\"strategy\":\"channel\"", "\"sparsity_config\":{\"format\":\"sparse-24-bitmask\"}",
         TSR_EUNSUPPORTED, "sparsity_config (format 'sparse-24-bitmask') is not supported"},
        {"\"strategy\":\"channel\"", "\"transform_config\":{\"config_groups\":{}}",
         TSR_EUNSUPPORTED, "quantization_config transform_config is not supported"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        quant_with(q, sizeof q, bad[i].w, bad[i].extra);
        EXPECT_ERR(parse_quant(q, &c), bad[i].code, bad[i].msg);
    }
    static const struct {
        const char *q;
        int code;
        const char *msg;
    } whole[] = {
        {"{\"quant_method\":\"compressed-tensors\"}", TSR_EFORMAT,
         "quantization_config (compressed-tensors) has no string \"format\""},
        {"{\"quant_method\":\"compressed-tensors\",\"format\":\"int-quantized\"}", TSR_EFORMAT,
         "\"config_groups\" must be an object of one or more groups"},
        {"{\"quant_method\":\"compressed-tensors\",\"format\":\"int-quantized\","
         "\"config_groups\":{}}",
         TSR_EFORMAT, "\"config_groups\" must be"},
        {"{\"quant_method\":\"compressed-tensors\",\"format\":\"int-quantized\","
         "\"config_groups\":{\"g\":{\"weights\":null}}}",
         TSR_EFORMAT, "config_groups.g has no \"weights\" object"},
        {"{\"quant_method\":\"compressed-tensors\",\"format\":\"int-quantized\","
         "\"config_groups\":{\"g\":{\"format\":\"pack-quantized\",\"weights\":{}}}}",
         TSR_EUNSUPPORTED, "config_groups.g.format 'pack-quantized' is not supported"},
        {"{\"quant_method\":\"compressed-tensors\",\"format\":\"int-quantized\","
         "\"config_groups\":{\"g\":{\"input_activations\":8,\"weights\":{\"num_bits\":8,"
         "\"type\":\"int\",\"symmetric\":true,\"strategy\":\"channel\"}}}}",
         TSR_EFORMAT, "config_groups.g.input_activations must be an object or null"},
        {"{\"quant_method\":\"compressed-tensors\",\"format\":\"int-quantized\","
         "\"config_groups\":{\"a\":{\"weights\":{\"num_bits\":8,\"type\":\"int\","
         "\"symmetric\":true,\"strategy\":\"group\",\"group_size\":64}},"
         "\"b\":{\"weights\":{\"num_bits\":8,\"type\":\"int\",\"symmetric\":true,"
         "\"strategy\":\"group\",\"group_size\":128}}}}",
         TSR_EUNSUPPORTED,
         "config_groups.b.weights.group_size 128 differs from another group's 64"},
    };
    for (size_t i = 0; i < sizeof whole / sizeof whole[0]; i++)
        EXPECT_ERR(parse_quant(whole[i].q, &c), whole[i].code, whole[i].msg);

    /* validation of a config made in code */
    assert_int_equal(parse_quant(QUANT_INT8, &c), 0);
    c.weight_quant = TSR_WQ_NONE;
    EXPECT_ERR(tsr_config_validate(&c), TSR_EFORMAT, "int8 group size 64");
    c.weight_quant = TSR_WQ_INT8;
    c.int8_group = 48;
    EXPECT_ERR(tsr_config_validate(&c), TSR_EFORMAT, "int8 group size 48");
}

/* ---- 3. the model ---- */

static void test_model_reads(void **state)
{
    (void)state;
    struct ckpt c;
    make_ckpt(&c);
    write_dir(q_dir, &c, QUANT_INT8);
    tsr_model_t *m;
    int rc = tsr_model_open(q_dir, &m);
    if (rc) fail_msg("open: %s", tsr_last_error());
    assert_int_equal(tsr_model_config(m)->weight_quant, TSR_WQ_INT8);
    for (int l = 0; l < N_LAYER; l++)
        for (int p = 0; p < 7; p++) /* exact: 8 by at most 11 significant bits */
            ckpt_check_blocks(m, &c, l, p, TSR_Q8_0, ref_scale, ref_weight, 1);
    struct tsr_tensor_view v;
    assert_int_equal(tsr_model_tensor(m, "token_embd.weight", &v), 0);
    assert_int_equal(v.type, TSR_BF16);
    assert_int_equal(v.generated, 0);
    assert_int_equal(tsr_model_tensor(m, "blk.1.ffn_norm.weight", &v), 0);
    assert_int_equal(v.type, TSR_BF16);

    /* --quantize q8_0, at open or after: the same bytes */
    tsr_model_t *q;
    assert_int_equal(tsr_model_open_quantized(q_dir, TSR_Q8_0, &q), 0);
    for (int l = 0; l < N_LAYER; l++) {
        char gn[64];
        snprintf(gn, sizeof gn, "blk.%d.ffn_down.weight", l);
        assert_int_equal(tsr_model_tensor(m, gn, &v), 0);
        uint8_t *a = malloc(v.nbytes), *b = malloc(v.nbytes);
        assert_true(a && b);
        assert_int_equal(tsr_model_read(m, gn, 0, v.rows, 0, v.cols, a), 0);
        assert_int_equal(tsr_model_read(q, gn, 0, v.rows, 0, v.cols, b), 0);
        assert_memory_equal(a, b, v.nbytes);
        free(a);
        free(b);
    }
    tsr_model_free(q);
    tsr_model_free(m);
    ckpt_free(&c);
}

/* --quantize f16 / fp8 on an int8 checkpoint: each row's values requantized. */
static void test_model_requantize(void **state)
{
    (void)state;
    static const enum tsr_dtype targets[] = {TSR_F16, TSR_F8_E4M3};
    ckpt_check_quantize(make_ckpt, ref_weight, targets, 2);
}

/* The int8 model's forward pass equals the same model's with its weights stored as F32 (the
 * values computed here): the CPU backend's Q8_0 matmul against its F32 one. */
static void test_forward(void **state)
{
    (void)state;
    ckpt_forward_check(backend, make_ckpt, ref_weight, q_dir, f32_dir, "int8");
}

/* ---- 4. scales that are not f16s ---- */

static void inexact_ckpt(struct ckpt *c)
{
    make_ckpt(c);
    /* layer 2's F32 group scales off the f16 grid; layer 1's q scale a bf16 under f16's range */
    struct tensor *s = find(c, "model.layers.2.mlp.down_proj.weight_scale");
    for (int64_t i = 0; i < n_elems(s); i++) put(s, i, (float)get(s, i) * 1.0001f);
    put(find(c, "model.layers.1.self_attn.q_proj.weight_scale"), 3, 1e-9f);
}

static void test_inexact_scales(void **state)
{
    (void)state;
    ckpt_open_fails(inexact_ckpt, NULL, QUANT_INT8, bad_dir, TSR_EUNSUPPORTED,
                    "scale 'model.layers.1.self_attn.q_proj.weight_scale'[3] = 9.96806193e-10 is "
                    "not exactly an f16 (int8 weights load losslessly as Q8_0 blocks, whose scale "
                    "is an f16): load it with --quantize q8_0 or --quantize bf16, which "
                    "requantize the weights");
    struct ckpt c;
    inexact_ckpt(&c);
    static const enum tsr_dtype targets[] = {TSR_Q8_0, TSR_BF16};
    for (size_t ti = 0; ti < 2; ti++) {
        tsr_model_t *m;
        int rc = tsr_model_open_quantized(bad_dir, targets[ti], &m);
        if (rc) fail_msg("open as %s: %s", tsr_dtype_name(targets[ti]), tsr_last_error());
        ckpt_check_requantized(m, &c, targets[ti], ref_weight);
        tsr_model_free(m);
    }
    ckpt_free(&c);
}

/* ---- 5. malformed checkpoints ---- */

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
    replace(c, "model.layers.1.self_attn.k_proj.weight_scale", "BF16", 1, 127, 0, 0.01f);
}
static void group_shape(struct ckpt *c)
{
    replace(c, "model.layers.2.mlp.down_proj.weight_scale", "F32", 2, DIM, 4, 0.01f);
}
static void scale_i8(struct ckpt *c)
{
    replace(c, "model.layers.0.mlp.gate_proj.weight_scale", "I8", 0, 0, 0, 0);
}
static void scale_i32(struct ckpt *c)
{
    replace(c, "model.layers.0.mlp.gate_proj.weight_scale", "I32", 0, 0, 0, 0);
}
static void scale_nan(struct ckpt *c)
{
    put(find(c, "model.layers.1.self_attn.o_proj.weight_scale"), 5, NAN);
}
static void zero_point_i8(struct ckpt *c)
{
    find(c, "model.layers.1.mlp.gate_proj.weight_zero_point")->data[3] = 0xff; /* -1 */
}
static void zero_point_f32(struct ckpt *c)
{
    struct tensor *z = add(c, "model.layers.2.self_attn.v_proj.weight_zero_point", "F32", 2,
                           N_KV * HEAD_DIM, DIM / GROUP);
    put(z, 7, 2.0f);
}
static void i8_embeddings(struct ckpt *c)
{
    replace(c, "model.embed_tokens.weight", "I8", 2, VOCAB, DIM, 0);
    add(c, "model.embed_tokens.weight_scale", "F32", 2, VOCAB, 1);
}
static void i8_head(struct ckpt *c)
{
    replace(c, "lm_head.weight", "I8", 2, VOCAB, DIM, 0);
}
static void i8_norm(struct ckpt *c)
{
    replace(c, "model.layers.1.post_attention_layernorm.weight", "I8", 1, DIM, 0, 0);
}
static void narrow_matrix(struct ckpt *c)
{
    replace(c, "model.layers.0.self_attn.q_proj.weight", "I8", 2, 256, 48, 0);
}
static void fp8_matrix(struct ckpt *c)
{
    replace(c, "model.layers.0.self_attn.q_proj.weight", "F8_E4M3", 2, 256, 256, 0);
}

static void test_malformed(void **state)
{
    (void)state;
    expect_open_fails(no_scale, QUANT_INT8, TSR_EFORMAT,
                      "int8 tensor 'model.layers.1.mlp.up_proj.weight' has no scale: neither "
                      "'model.layers.1.mlp.up_proj.weight_scale' nor "
                      "'model.layers.1.mlp.up_proj.weight_scale_inv' is in the checkpoint");
    expect_open_fails(channel_shape, QUANT_INT8, TSR_EFORMAT,
                      "scale 'model.layers.1.self_attn.k_proj.weight_scale' has shape [127]; for "
                      "'model.layers.1.self_attn.k_proj.weight' (128 x 256) a per-tensor scale is "
                      "[] or [1], a per-channel one [128] or [128, 1], a per-group one "
                      "(group_size 64) [128, 4]");
    expect_open_fails(group_shape, QUANT_INT8, TSR_EFORMAT,
                      "scale 'model.layers.2.mlp.down_proj.weight_scale' has shape [256, 4]; for "
                      "'model.layers.2.mlp.down_proj.weight' (256 x 320) a per-tensor scale is "
                      "[] or [1], a per-channel one [256] or [256, 1], a per-group one "
                      "(group_size 64) [256, 5]");
    /* group scales where no config group has a group size */
    char q[1024];
    quant_with(q, sizeof q, "\"strategy\":\"channel\"", NULL);
    expect_open_fails(NULL, q, TSR_EFORMAT,
                      "scale 'model.layers.2.self_attn.q_proj.weight_scale' has shape [256, 4]; "
                      "for 'model.layers.2.self_attn.q_proj.weight' (256 x 256) a per-tensor "
                      "scale is [] or [1], a per-channel one [256] or [256, 1]");
    expect_open_fails(scale_i8, QUANT_INT8, TSR_EFORMAT,
                      "scale 'model.layers.0.mlp.gate_proj.weight_scale' is I8; it must be F32, "
                      "BF16 or F16");
    expect_open_fails(scale_i32, QUANT_INT8, TSR_EUNSUPPORTED,
                      "tensor 'model.layers.0.mlp.gate_proj.weight_scale': dtype I32 is not "
                      "supported");
    expect_open_fails(scale_nan, QUANT_INT8, TSR_EFORMAT,
                      "scale 'model.layers.1.self_attn.o_proj.weight_scale'[5] is nan; int8 "
                      "scales must be finite");
    expect_open_fails(zero_point_i8, QUANT_INT8, TSR_EUNSUPPORTED,
                      "zero point 'model.layers.1.mlp.gate_proj.weight_zero_point'[3] is not 0: "
                      "asymmetric int8 weights are not supported");
    expect_open_fails(zero_point_f32, QUANT_INT8, TSR_EUNSUPPORTED,
                      "zero point 'model.layers.2.self_attn.v_proj.weight_zero_point'[7] is not 0");
    expect_open_fails(i8_embeddings, QUANT_INT8, TSR_EUNSUPPORTED,
                      "tensor 'model.embed_tokens.weight' is I8: only the layers' projection "
                      "matrices may be int8");
    expect_open_fails(i8_head, QUANT_INT8, TSR_EUNSUPPORTED, "tensor 'lm_head.weight' is I8: only");
    expect_open_fails(i8_norm, QUANT_INT8, TSR_EUNSUPPORTED,
                      "tensor 'model.layers.1.post_attention_layernorm.weight' is I8");
    expect_open_fails(narrow_matrix, QUANT_INT8, TSR_EUNSUPPORTED,
                      "int8 tensor 'model.layers.0.self_attn.q_proj.weight' is 48 columns wide, "
                      "not a multiple of 32");
    expect_open_fails(NULL, NULL, TSR_EFORMAT,
                      "is I8 but config.json has no quantization_config with quant_method "
                      "\"compressed-tensors\" (format \"int-quantized\")");
    expect_open_fails(NULL, "{\"quant_method\":\"fp8\"}", TSR_EFORMAT,
                      "is I8 but config.json has no quantization_config with quant_method "
                      "\"compressed-tensors\"");
    expect_open_fails(fp8_matrix, QUANT_INT8, TSR_EFORMAT,
                      "tensor 'model.layers.0.self_attn.q_proj.weight' is F8_E4M3 but config.json "
                      "has no quantization_config with quant_method \"fp8\"");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reader),      cmocka_unit_test(test_config),
        cmocka_unit_test(test_model_reads), cmocka_unit_test(test_model_requantize),
        cmocka_unit_test(test_forward),     cmocka_unit_test(test_inexact_scales),
        cmocka_unit_test(test_malformed),
    };
    return tsr_test_exit(cmocka_run_group_tests(tests, ckpt_setup, ckpt_teardown));
}
