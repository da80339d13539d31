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

static tsr_backend_t *backend;
static char tmpdir[] = "/tmp/tsr_fp8ckpt_XXXXXX";

/* ---- reference decoding, from the bits ---- */

static double f16_ref(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e ? ldexp(1.0 + m / 1024.0, e - 15) : ldexp(m / 1024.0, -14);
    return h >> 15 ? -v : v;
}

/* ---- checkpoints in memory ---- */

struct tensor {
    char name[128];
    char dtype[16]; /* F32, F16, BF16, F8_E4M3, I32 */
    int n_dims;
    int64_t shape[2]; /* as the JSON writes it */
    uint8_t *data;
    size_t nbytes;
};

struct ckpt {
    struct tensor t[96];
    int n;
};

static size_t dtype_size(const char *dt)
{
    if (!strcmp(dt, "F32") || !strcmp(dt, "I32")) return 4;
    if (!strcmp(dt, "F8_E4M3")) return 1;
    return 2;
}

static int64_t n_elems(const struct tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->n_dims; d++) n *= t->shape[d];
    return n;
}

static struct tensor *add(struct ckpt *c, const char *name, const char *dtype, int n_dims,
                          int64_t s0, int64_t s1)
{
    assert_true(c->n < (int)(sizeof c->t / sizeof c->t[0]));
    struct tensor *t = &c->t[c->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    snprintf(t->dtype, sizeof t->dtype, "%s", dtype);
    t->n_dims = n_dims;
    t->shape[0] = s0;
    t->shape[1] = s1;
    t->nbytes = (size_t)n_elems(t) * dtype_size(dtype);
    t->data = calloc(1, t->nbytes ? t->nbytes : 1);
    assert_non_null(t->data);
    return t;
}

static struct tensor *find(struct ckpt *c, const char *name)
{
    for (int i = 0; i < c->n; i++)
        if (!strcmp(c->t[i].name, name)) return &c->t[i];
    return NULL;
}

static void drop(struct ckpt *c, const char *name)
{
    struct tensor *t = find(c, name);
    assert_non_null(t);
    free(t->data);
    *t = c->t[--c->n];
}

static void ckpt_free(struct ckpt *c)
{
    for (int i = 0; i < c->n; i++) free(c->t[i].data);
    c->n = 0;
}

/* Element i of a float tensor, stored as its dtype holds it. */
static void put(struct tensor *t, int64_t i, float v)
{
    if (!strcmp(t->dtype, "F32")) {
        memcpy(t->data + i * 4, &v, 4);
    } else {
        uint16_t h = !strcmp(t->dtype, "BF16") ? tsr_f32_to_bf16(v) : tsr_f32_to_f16(v);
        memcpy(t->data + i * 2, &h, 2);
    }
}

/* Element i of a float tensor, decoded from its bits here. */
static double get(const struct tensor *t, int64_t i)
{
    if (!strcmp(t->dtype, "F32")) {
        float f;
        memcpy(&f, t->data + i * 4, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, t->data + i * 2, 2);
    if (!strcmp(t->dtype, "F16")) return f16_ref(h);
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static void write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

static void write_safetensors(const char *path, const struct ckpt *c)
{
    size_t cap = 256 + (size_t)c->n * 256, hl = 0, off = 0;
    char *h = malloc(cap);
    assert_non_null(h);
    hl += (size_t)snprintf(h + hl, cap - hl, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < c->n; i++) {
        const struct tensor *t = &c->t[i];
        hl += (size_t)snprintf(h + hl, cap - hl, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t->name,
                               t->dtype);
        for (int d = 0; d < t->n_dims; d++)
            hl +=
                (size_t)snprintf(h + hl, cap - hl, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        hl += (size_t)snprintf(h + hl, cap - hl, "],\"data_offsets\":[%zu,%zu]}", off,
                               off + t->nbytes);
        off += t->nbytes;
    }
    hl += (size_t)snprintf(h + hl, cap - hl, "}");
    assert_true(hl < cap);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint64_t len = hl;
    fwrite(&len, 8, 1, f);
    fwrite(h, 1, hl, f);
    for (int i = 0; i < c->n; i++) fwrite(c->t[i].data, 1, c->t[i].nbytes, f);
    fclose(f);
    free(h);
}

/* ---- the tiny model ---- */

enum { N_LAYER = 3, DIM = 256, FFN = 320, N_HEAD = 4, N_KV = 2, HEAD_DIM = 64, VOCAB = 256 };
#define BLOCK 128

#define QUANT_FP8                                                                                  \
    "{\"quant_method\":\"fp8\",\"activation_scheme\":\"dynamic\",\"fmt\":\"e4m3\","                \
    "\"weight_block_size\":[128,128]}"

static const char *const proj_hf[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                       "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                       "mlp.down_proj"};
static const char *const proj_gguf[7] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                         "ffn_gate", "ffn_up", "ffn_down"};
static const int64_t proj_shape[7][2] = {{N_HEAD * HEAD_DIM, DIM},
                                         {N_KV * HEAD_DIM, DIM},
                                         {N_KV * HEAD_DIM, DIM},
                                         {DIM, N_HEAD *HEAD_DIM},
                                         {FFN, DIM},
                                         {FFN, DIM},
                                         {DIM, FFN}};
/* Scale dtypes, by layer and projection: every one of the three in each layout. */
static const char *const scale_dtype[N_LAYER][7] = {
    {"F32", "F32", "BF16", "F16", "F32", "BF16", "F32"},
    {"F32", "BF16", "F16", "F32", "BF16", "F32", "F16"},
    {"F32", "BF16", "F32", "F16", "F32", "F32", "BF16"}};

static void config_json(char *buf, size_t cap, const char *quant)
{
    int n = snprintf(buf, cap,
                     "{\"model_type\":\"llama\",\"num_hidden_layers\":%d,\"hidden_size\":%d,"
                     "\"intermediate_size\":%d,\"num_attention_heads\":%d,"
                     "\"num_key_value_heads\":%d,\"vocab_size\":%d,"
                     "\"max_position_embeddings\":512,\"rms_norm_eps\":1e-5,"
                     "\"rope_theta\":10000.0,\"tie_word_embeddings\":false",
                     N_LAYER, DIM, FFN, N_HEAD, N_KV, VOCAB);
    if (quant) n += snprintf(buf + n, cap - (size_t)n, ",\"quantization_config\":%s", quant);
    snprintf(buf + n, cap - (size_t)n, "}");
}

static void hf_proj(char *out, size_t cap, int l, int p, const char *suffix)
{
    snprintf(out, cap, "model.layers.%d.%s.weight%s", l, proj_hf[p], suffix);
}

static void fill_float(struct tensor *t, float scale, float offset)
{
    for (int64_t i = 0; i < n_elems(t); i++) put(t, i, offset + scale * tsr_test_rng_normal());
}

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

static void write_dir(const char *dir, const struct ckpt *c, const char *quant)
{
    char path[600], cfg[2048];
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    write_safetensors(path, c);
    config_json(cfg, sizeof cfg, quant);
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_file(path, cfg, strlen(cfg));
    /* the tokenizer: a copy of the tiny BPE one */
    FILE *in = fopen(TSR_SOURCE_DIR "/tests/reference/spm_tiny_tokenizer.json", "rb");
    assert_non_null(in);
    static char tok[1 << 16];
    size_t n = fread(tok, 1, sizeof tok, in);
    assert_true(n > 0 && n < sizeof tok);
    fclose(in);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    write_file(path, tok, n);
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

static char fp8_dir[600], f32_dir[600], bad_dir[600];

/* ---- 1. the reader ---- */

static void test_reader(void **state)
{
    (void)state;
    static const char json[] =
        "{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[2,3],\"data_offsets\":[0,6]},"
        "\"s\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[6,8]}}";
    uint8_t buf[8 + sizeof json + 8];
    uint64_t hl = sizeof json - 1;
    memcpy(buf, &hl, 8);
    memcpy(buf + 8, json, hl);
    for (int i = 0; i < 8; i++) buf[8 + hl + i] = (uint8_t)(0x30 + i);
    tsr_st_t *st;
    int rc = tsr_st_open_mem(buf, 8 + hl + 8, "f8.safetensors", &st);
    if (rc) fail_msg("open: %s", tsr_last_error());
    const struct tsr_st_tensor *w = tsr_st_find_tensor(st, "w"), *s = tsr_st_find_tensor(st, "s");
    assert_non_null(w);
    assert_int_equal(w->type, TSR_F8_E4M3);
    assert_int_equal(w->e4m3_codes, 1);
    assert_int_equal(w->nbytes, 6);
    assert_int_equal(w->ne[0], 3);
    assert_int_equal(w->ne[1], 2);
    assert_ptr_equal(w->data, buf + 8 + hl);
    assert_int_equal(s->type, TSR_BF16);
    assert_int_equal(s->e4m3_codes, 0);
    tsr_st_close(st);
    /* one byte an element: 6 elements in 8 bytes is a malformed file */
    static const char bad[] =
        "{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[2,3],\"data_offsets\":[0,8]}}";
    hl = sizeof bad - 1;
    memcpy(buf, &hl, 8);
    memcpy(buf + 8, bad, hl);
    EXPECT_ERR(tsr_st_open_mem(buf, 8 + hl + 8, "bad.safetensors", &st), TSR_EFORMAT,
               "'w': shape holds 6 F8_E4M3 elements but data_offsets [0, 8] span 8 bytes");
}

/* ---- 2. config.json ---- */

static int parse_quant(const char *quant, struct tsr_model_config *c)
{
    char cfg[2048];
    config_json(cfg, sizeof cfg, quant);
    return tsr_config_from_json_text(cfg, strlen(cfg), "q/config.json", c);
}

static void test_config(void **state)
{
    (void)state;
    struct tsr_model_config c;
    assert_int_equal(parse_quant(QUANT_FP8, &c), 0);
    assert_int_equal(c.fp8, 1);
    assert_int_equal(c.fp8_block[0], 128);
    assert_int_equal(c.fp8_block[1], 128);
    assert_int_equal(parse_quant("{\"quant_method\":\"fp8\",\"activation_scheme\":\"static\"}", &c),
                     0);
    assert_int_equal(c.fp8, 1);
    assert_int_equal(c.fp8_block[0], 0);
    assert_int_equal(c.fp8_block[1], 0);
    assert_int_equal(parse_quant("{\"quant_method\":\"fp8\",\"weight_block_size\":null,"
                                 "\"modules_to_not_convert\":[\"lm_head\"]}",
                                 &c),
                     0);
    assert_int_equal(c.fp8, 1);
    assert_int_equal(parse_quant("null", &c), 0);
    assert_int_equal(c.fp8, 0);
    assert_int_equal(parse_quant(NULL, &c), 0);
    assert_int_equal(c.fp8, 0);

    static const char *const others[] = {"gptq", "awq", "bitsandbytes", "compressed-tensors",
                                         "fbgemm_fp8"};
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
    c.fp8 = 0;
    EXPECT_ERR(tsr_config_validate(&c), TSR_EFORMAT, "FP8 weight blocks");
}

/* ---- 3. the model ---- */

static void check_whole_and_slices(tsr_model_t *m, struct ckpt *c, int l, int p)
{
    char gn[64];
    snprintf(gn, sizeof gn, "blk.%d.%s.weight", l, proj_gguf[p]);
    int64_t rows = proj_shape[p][0], cols = proj_shape[p][1];
    struct tsr_tensor_view v;
    assert_int_equal(tsr_model_tensor(m, gn, &v), 0);
    assert_int_equal(v.type, TSR_F8_E4M3);
    assert_int_equal(v.generated, 1);
    assert_null(v.data);
    assert_int_equal(v.rows, rows);
    assert_int_equal(v.cols, cols);
    size_t rb = (size_t)cols / 32 * sizeof(struct tsr_block_f8);
    assert_int_equal(v.nbytes, rb * (size_t)rows);
    uint8_t *whole = malloc(v.nbytes);
    float *row = malloc(sizeof(float) * (size_t)cols);
    assert_true(whole && row);
    assert_int_equal(tsr_model_read(m, gn, 0, rows, 0, cols, whole), 0);

    char name[160];
    hf_proj(name, sizeof name, l, p, "");
    const struct tensor *w = find(c, name);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *b = whole + (size_t)r * rb;
        /* lossless: each block is its scale and the file's 32 codes */
        for (int64_t k = 0; k < cols / 32; k++) {
            float d;
            memcpy(&d, b + k * 36, 4);
            double want = ref_scale(c, l, p, r, k * 32);
            if ((double)d != want)
                fail_msg("%s row %lld block %lld: scale %.9g, want %.9g", gn, (long long)r,
                         (long long)k, (double)d, want);
            if (memcmp(b + k * 36 + 4, w->data + r * cols + k * 32, 32))
                fail_msg("%s row %lld block %lld: codes differ from the file's", gn, (long long)r,
                         (long long)k);
        }
        /* the values: code * scale, one rounding to f32 of the exact float64 product (none at
         * all for bf16 and f16 scales: 4 by 8 or 11 significant bits) */
        tsr_dequantize_row(TSR_F8_E4M3, b, row, cols);
        int narrow = strcmp(scale_dtype[l][p], "F32") != 0;
        for (int64_t col = 0; col < cols; col++) {
            double want = ref_weight(c, l, p, r, col);
            if ((double)row[col] != (double)(float)want || (narrow && (double)row[col] != want))
                fail_msg("%s (%lld, %lld) = %.9g, want %.17g", gn, (long long)r, (long long)col,
                         (double)row[col], want);
        }
    }
    /* slices: a TP rank's column half, a block-aligned column window, a row range; the same
     * bytes as the whole's */
    const int64_t sl[][4] = {{0, rows, cols / 2, cols / 2},
                             {0, rows, 0, cols / 2},
                             {3, 70, 32, 96},
                             {rows - 5, 5, cols - 64, 64}};
    for (size_t i = 0; i < sizeof sl / sizeof sl[0]; i++) {
        int64_t r0 = sl[i][0], nr = sl[i][1], c0 = sl[i][2], nc = sl[i][3];
        size_t srb = (size_t)nc / 32 * 36, skip = (size_t)c0 / 32 * 36;
        uint8_t *s = malloc(srb * (size_t)nr);
        assert_non_null(s);
        int rc = tsr_model_read(m, gn, r0, nr, c0, nc, s);
        if (rc) fail_msg("%s slice %zu: %s", gn, i, tsr_last_error());
        for (int64_t r = 0; r < nr; r++)
            if (memcmp(s + (size_t)r * srb, whole + (size_t)(r0 + r) * rb + skip, srb))
                fail_msg("%s slice [%lld +%lld) x [%lld +%lld): row %lld differs from the whole",
                         gn, (long long)r0, (long long)nr, (long long)c0, (long long)nc,
                         (long long)r);
        free(s);
    }
    EXPECT_ERR(tsr_model_read(m, gn, 0, 1, 16, 32, row), TSR_EINVAL, "not on F8_E4M3 blocks");
    free(whole);
    free(row);
}

static void test_model_reads(void **state)
{
    (void)state;
    struct ckpt c;
    make_ckpt(&c);
    write_dir(fp8_dir, &c, QUANT_FP8);
    tsr_model_t *m;
    int rc = tsr_model_open(fp8_dir, &m);
    if (rc) fail_msg("open: %s", tsr_last_error());
    assert_int_equal(tsr_model_config(m)->fp8, 1);
    for (int l = 0; l < N_LAYER; l++)
        for (int p = 0; p < 7; p++) check_whole_and_slices(m, &c, l, p);
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
 * whole's columns (f16 slices need not fall on 32-column blocks). */
static void test_model_requantize(void **state)
{
    (void)state;
    static const enum tsr_dtype targets[] = {TSR_Q8_0, TSR_F16};
    for (size_t ti = 0; ti < 2; ti++) {
        tsr_model_t *m, *f;
        assert_int_equal(tsr_model_open(fp8_dir, &m), 0);
        assert_int_equal(tsr_model_open(fp8_dir, &f), 0);
        int rc = tsr_model_quantize(m, targets[ti]);
        if (rc) fail_msg("quantize: %s", tsr_last_error());
        for (int l = 0; l < N_LAYER; l++)
            for (int p = 0; p < 7; p += 3) {
                char gn[64];
                snprintf(gn, sizeof gn, "blk.%d.%s.weight", l, proj_gguf[p]);
                struct tsr_tensor_view v, fv;
                assert_int_equal(tsr_model_tensor(m, gn, &v), 0);
                assert_int_equal(tsr_model_tensor(f, gn, &fv), 0);
                assert_int_equal(v.type, targets[ti]);
                assert_int_equal(v.generated, 1);
                size_t rb = tsr_dtype_row_bytes(v.type, v.cols);
                uint8_t *got = malloc(v.nbytes), *fp8 = malloc(fv.nbytes), *want = malloc(rb);
                float *row = malloc(sizeof(float) * (size_t)v.cols);
                assert_true(got && fp8 && want && row);
                assert_int_equal(tsr_model_read(m, gn, 0, v.rows, 0, v.cols, got), 0);
                assert_int_equal(tsr_model_read(f, gn, 0, v.rows, 0, v.cols, fp8), 0);
                size_t frb = fv.nbytes / (size_t)fv.rows;
                for (int64_t r = 0; r < v.rows; r++) {
                    tsr_dequantize_row(TSR_F8_E4M3, fp8 + (size_t)r * frb, row, v.cols);
                    tsr_quantize_row_search(v.type, row, want, v.cols);
                    if (memcmp(got + (size_t)r * rb, want, rb))
                        fail_msg("%s as %s: row %lld is not the FP8 row requantized", gn,
                                 tsr_dtype_name(v.type), (long long)r);
                }
                int64_t c0 = targets[ti] == TSR_F16 ? 8 : v.cols / 2, nc = v.cols / 2;
                size_t srb = tsr_dtype_row_bytes(v.type, nc),
                       skip = tsr_dtype_row_bytes(v.type, c0);
                uint8_t *s = malloc(srb * 9);
                assert_non_null(s);
                assert_int_equal(tsr_model_read(m, gn, 11, 9, c0, nc, s), 0);
                for (int64_t r = 0; r < 9; r++)
                    assert_memory_equal(s + (size_t)r * srb, got + (size_t)(11 + r) * rb + skip,
                                        srb);
                free(s);
                free(got);
                free(fp8);
                free(want);
                free(row);
            }
        tsr_model_free(m);
        tsr_model_free(f);
    }
}

/* Teacher-forced logits of every position of ids. Caller frees. */
static float *all_logits(tsr_model_t *m, const int32_t *ids, int n)
{
    struct tsr_runner_opts o = {.n_blocks = 8, .block_size = 16, .max_tokens = n};
    tsr_runner_t *r;
    int rc = tsr_runner_new(m, backend, &o, NULL, &r);
    if (rc) fail_msg("runner: %s", tsr_last_error());
    struct tsr_step st = tsr_test_step(ids, 0, n, 8);
    float *out = malloc(sizeof(float) * (size_t)n * VOCAB);
    assert_non_null(out);
    rc = tsr_runner_forward(r, &st, out);
    if (rc) fail_msg("forward: %s", tsr_last_error());
    tsr_runner_free(r);
    return out;
}

/* The FP8 model's forward pass equals the same model's with its weights stored as F32 (the
 * values computed here): the CPU backend's F8 matmul against its F32 one. */
static void test_forward(void **state)
{
    (void)state;
    struct ckpt c;
    make_ckpt(&c);
    char name[160];
    for (int l = 0; l < N_LAYER; l++)
        for (int p = 0; p < 7; p++) {
            int64_t rows = proj_shape[p][0], cols = proj_shape[p][1];
            float *vals = malloc(sizeof(float) * (size_t)(rows * cols));
            assert_non_null(vals);
            for (int64_t r = 0; r < rows; r++)
                for (int64_t col = 0; col < cols; col++)
                    vals[r * cols + col] = (float)ref_weight(&c, l, p, r, col);
            hf_proj(name, sizeof name, l, p, "");
            drop(&c, name);
            struct tensor *t = add(&c, name, "F32", 2, rows, cols);
            memcpy(t->data, vals, t->nbytes);
            free(vals);
            hf_proj(name, sizeof name, l, p, l == 2 ? "_scale_inv" : "_scale");
            drop(&c, name);
        }
    write_dir(f32_dir, &c, NULL);
    ckpt_free(&c);

    tsr_model_t *q, *f;
    assert_int_equal(tsr_model_open(fp8_dir, &q), 0);
    int rc = tsr_model_open(f32_dir, &f);
    if (rc) fail_msg("open f32: %s", tsr_last_error());
    int32_t ids[24];
    for (int i = 0; i < 24; i++) ids[i] = (i * 37 + 11) % VOCAB;
    float *a = all_logits(q, ids, 24), *b = all_logits(f, ids, 24);
    double *ref = malloc(sizeof(double) * 24 * VOCAB);
    assert_non_null(ref);
    double amax = 0;
    for (int i = 0; i < 24 * VOCAB; i++) {
        assert_true(isfinite(a[i]));
        ref[i] = b[i];
        amax = fmax(amax, fabs(b[i]));
    }
    double e = tsr_test_nmse(a, ref, 24 * VOCAB);
    print_message("  FP8 vs F32 weights: logits NMSE %.3g (max |logit| %.3g)\n", e, amax);
    /* the same weights: only the order of the sums differs */
    if (!(e < 1e-9)) fail_msg("logits NMSE %.3g over 1e-9", e);
    assert_true(amax > 0.1);
    free(a);
    free(b);
    free(ref);
    tsr_model_free(q);
    tsr_model_free(f);
}

/* ---- 4. malformed checkpoints ---- */

/* The checkpoint after mutate(), with config quant; opening it must fail with code and a message
 * holding substr and the directory. */
static void expect_open_fails(void (*mutate)(struct ckpt *), const char *quant, int code,
                              const char *substr)
{
    struct ckpt c;
    make_ckpt(&c);
    if (mutate) mutate(&c);
    write_dir(bad_dir, &c, quant);
    ckpt_free(&c);
    tsr_model_t *m = (tsr_model_t *)1;
    EXPECT_ERR(tsr_model_open(bad_dir, &m), code, substr);
    assert_null(m);
    assert_non_null(strstr(tsr_last_error(), bad_dir));
}

static void replace(struct ckpt *c, const char *name, const char *dtype, int n_dims, int64_t s0,
                    int64_t s1, float v)
{
    drop(c, name);
    struct tensor *t = add(c, name, dtype, n_dims, s0, s1);
    for (int64_t i = 0; i < n_elems(t) && strcmp(dtype, "I32") && strcmp(dtype, "F8_E4M3"); i++)
        put(t, i, v);
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

static int setup(void **state)
{
    (void)state;
    backend = tsr_backend_cpu_new(2);
    if (!backend || !mkdtemp(tmpdir)) return -1;
    snprintf(fp8_dir, sizeof fp8_dir, "%s/fp8", tmpdir);
    snprintf(f32_dir, sizeof f32_dir, "%s/f32", tmpdir);
    snprintf(bad_dir, sizeof bad_dir, "%s/bad", tmpdir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    tsr_backend_free(backend);
    return system(cmd) == 0 ? 0 : -1;
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
    return tsr_test_exit(cmocka_run_group_tests(tests, setup, teardown));
}
