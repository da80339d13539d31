/* Hugging Face checkpoints written in C, for the tests of quantized checkpoints
 * (test_fp8_checkpoint, test_int8_checkpoint): tensors in memory stored as their dtype holds them,
 * a safetensors writer, a tiny Llama (3 layers, width 256, FFN 320, 4 heads, 2 KV heads, vocabulary
 * 256) written as a model directory with the tiny BPE tokenizer, its teacher-forced logits against
 * the same model with F32 weights, and the check that a malformed one fails at open. Static: one
 * copy per program. Include after cmocka.h and unit.h. */
#ifndef TSR_TESTS_UNIT_CKPT_CHECK_H
#define TSR_TESTS_UNIT_CKPT_CHECK_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/dtype.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "worker/forward.h"

/* ---- reference decoding, from the bits ---- */

static inline double f16_ref(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e ? ldexp(1.0 + m / 1024.0, e - 15) : ldexp(m / 1024.0, -14);
    return h >> 15 ? -v : v;
}

/* The group's fixture: the CPU backend and, under one temporary directory removed at the end,
 * q_dir (the quantized checkpoint), f32_dir (it with F32 weights) and bad_dir (malformed ones). */
static tsr_backend_t *backend;
static char ckpt_tmp[] = "/tmp/tsr_ckpt_XXXXXX";
static char q_dir[600], f32_dir[600], bad_dir[600];

static inline int ckpt_setup(void **state)
{
    (void)state;
    backend = tsr_backend_cpu_new(2);
    if (!backend || !mkdtemp(ckpt_tmp)) return -1;
    snprintf(q_dir, sizeof q_dir, "%s/q", ckpt_tmp);
    snprintf(f32_dir, sizeof f32_dir, "%s/f32", ckpt_tmp);
    snprintf(bad_dir, sizeof bad_dir, "%s/bad", ckpt_tmp);
    return 0;
}

static inline int ckpt_teardown(void **state)
{
    (void)state;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", ckpt_tmp);
    tsr_backend_free(backend);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- checkpoints in memory ---- */

struct tensor {
    char name[160];
    char dtype[16]; /* F32, F16, BF16, F8_E4M3, I8, I32 */
    int n_dims;
    int64_t shape[2]; /* as the JSON writes it */
    uint8_t *data;
    size_t nbytes;
};

struct ckpt {
    struct tensor t[96];
    int n;
};

static inline size_t dtype_size(const char *dt)
{
    if (!strcmp(dt, "F32") || !strcmp(dt, "I32")) return 4;
    if (!strcmp(dt, "F8_E4M3") || !strcmp(dt, "I8")) return 1;
    return 2;
}

static inline int64_t n_elems(const struct tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->n_dims; d++) n *= t->shape[d];
    return n;
}

static inline struct tensor *add(struct ckpt *c, const char *name, const char *dtype, int n_dims,
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

static inline struct tensor *find(struct ckpt *c, const char *name)
{
    for (int i = 0; i < c->n; i++)
        if (!strcmp(c->t[i].name, name)) return &c->t[i];
    return NULL;
}

static inline void drop(struct ckpt *c, const char *name)
{
    struct tensor *t = find(c, name);
    assert_non_null(t);
    free(t->data);
    *t = c->t[--c->n];
}

static inline void ckpt_free(struct ckpt *c)
{
    for (int i = 0; i < c->n; i++) free(c->t[i].data);
    c->n = 0;
}

/* Element i of a float tensor, stored as its dtype holds it. */
static inline void put(struct tensor *t, int64_t i, float v)
{
    if (!strcmp(t->dtype, "F32")) {
        memcpy(t->data + i * 4, &v, 4);
    } else {
        uint16_t h = !strcmp(t->dtype, "BF16") ? tsr_f32_to_bf16(v) : tsr_f32_to_f16(v);
        memcpy(t->data + i * 2, &h, 2);
    }
}

/* Element i of a float tensor, decoded from its bits here. */
static inline double get(const struct tensor *t, int64_t i)
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

static inline void write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

static inline void write_safetensors(const char *path, const struct ckpt *c)
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

/* The safetensors reader on a tensor of dtype (one of bare codes): read as codes of the blocks
 * type, one byte an element, pointing into the file, beside a float tensor that is no codes;
 * and 6 elements in 8 bytes refused as malformed. */
static inline void ckpt_check_reader(const char *dtype, enum tsr_st_codes codes,
                                     enum tsr_dtype type)
{
    char json[256], want[128];
    int n = snprintf(json, sizeof json,
                     "{\"w\":{\"dtype\":\"%s\",\"shape\":[2,3],\"data_offsets\":[0,6]},"
                     "\"s\":{\"dtype\":\"BF16\",\"shape\":[2,1],\"data_offsets\":[6,10]}}",
                     dtype);
    uint8_t buf[8 + sizeof json + 10];
    uint64_t hl = (uint64_t)n;
    memcpy(buf, &hl, 8);
    memcpy(buf + 8, json, hl);
    for (int i = 0; i < 10; i++) buf[8 + hl + i] = (uint8_t)(0xf0 + i);
    tsr_st_t *st;
    int rc = tsr_st_open_mem(buf, 8 + hl + 10, "codes.safetensors", &st);
    if (rc) fail_msg("open: %s", tsr_last_error());
    const struct tsr_st_tensor *w = tsr_st_find_tensor(st, "w"), *s = tsr_st_find_tensor(st, "s");
    assert_non_null(w);
    assert_int_equal(w->type, type);
    assert_int_equal(w->codes, codes);
    assert_int_equal(w->nbytes, 6);
    assert_int_equal(w->ne[0], 3);
    assert_int_equal(w->ne[1], 2);
    assert_ptr_equal(w->data, buf + 8 + hl);
    assert_int_equal(s->type, TSR_BF16);
    assert_int_equal(s->codes, TSR_ST_NO_CODES);
    tsr_st_close(st);
    n = snprintf(json, sizeof json,
                 "{\"w\":{\"dtype\":\"%s\",\"shape\":[2,3],\"data_offsets\":[0,8]}}", dtype);
    hl = (uint64_t)n;
    memcpy(buf, &hl, 8);
    memcpy(buf + 8, json, hl);
    snprintf(want, sizeof want,
             "'w': shape holds 6 %s elements but data_offsets [0, 8] span 8 bytes", dtype);
    EXPECT_ERR(tsr_st_open_mem(buf, 8 + hl + 8, "bad.safetensors", &st), TSR_EFORMAT, want);
}

/* ---- the tiny model ---- */

enum { N_LAYER = 3, DIM = 256, FFN = 320, N_HEAD = 4, N_KV = 2, HEAD_DIM = 64, VOCAB = 256 };

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

static inline void config_json(char *buf, size_t cap, const char *quant)
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

/* The tiny model's config.json with quantization_config quant (JSON text, or NULL: none), read
 * as "q/config.json". */
static inline int parse_quant(const char *quant, struct tsr_model_config *c)
{
    char cfg[4096];
    config_json(cfg, sizeof cfg, quant);
    return tsr_config_from_json_text(cfg, strlen(cfg), "q/config.json", c);
}

static inline void hf_proj(char *out, size_t cap, int l, int p, const char *suffix)
{
    snprintf(out, cap, "model.layers.%d.%s.weight%s", l, proj_hf[p], suffix);
}

static inline void fill_float(struct tensor *t, float scale, float offset)
{
    for (int64_t i = 0; i < n_elems(t); i++) put(t, i, offset + scale * tsr_test_rng_normal());
}

static inline void write_dir(const char *dir, const struct ckpt *c, const char *quant)
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

/* Teacher-forced logits of every position of ids. Caller frees. */
static inline float *all_logits(tsr_backend_t *backend, tsr_model_t *m, const int32_t *ids, int n)
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

/* Row and column slices of model tensor gn (rows x cols of type, read whole into whole): a TP
 * rank's column half, a block-aligned column window, a row range; the same bytes as the whole's.
 * A slice off type's blocks is refused. */
static inline void ckpt_check_slices(tsr_model_t *m, const char *gn, enum tsr_dtype type,
                                     int64_t rows, int64_t cols, const uint8_t *whole)
{
    const int64_t sl[][4] = {{0, rows, cols / 2, cols / 2},
                             {0, rows, 0, cols / 2},
                             {3, 70, 32, 96},
                             {rows - 5, 5, cols - 64, 64}};
    size_t rb = tsr_dtype_row_bytes(type, cols);
    for (size_t i = 0; i < sizeof sl / sizeof sl[0]; i++) {
        int64_t r0 = sl[i][0], nr = sl[i][1], c0 = sl[i][2], nc = sl[i][3];
        size_t srb = tsr_dtype_row_bytes(type, nc), skip = c0 ? tsr_dtype_row_bytes(type, c0) : 0;
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
    char want[64], buf[64];
    snprintf(want, sizeof want, "not on %s blocks", tsr_dtype_name(type));
    EXPECT_ERR(tsr_model_read(m, gn, 0, 1, 16, 32, buf), TSR_EINVAL, want);
}

/* What a checkpoint gives weight (r, col) of projection p of layer l, in float64 from the bits. */
typedef double (*ckpt_value_fn)(struct ckpt *c, int l, int p, int64_t r, int64_t col);

/* Projection p of layer l of m read whole as blocks of type (TSR_F8_E4M3, TSR_Q8_0), lossless:
 * each 32-column block holds its scale (scale(); a Q8_0 block as the f16 it holds) and the
 * file's 32 codes as they are, and decodes to weight() rounded once to f32 (not rounded at all
 * when exact); then ckpt_check_slices. */
static inline void ckpt_check_blocks(tsr_model_t *m, struct ckpt *c, int l, int p,
                                     enum tsr_dtype type, ckpt_value_fn scale, ckpt_value_fn weight,
                                     int exact)
{
    char gn[64], name[160];
    snprintf(gn, sizeof gn, "blk.%d.%s.weight", l, proj_gguf[p]);
    int64_t rows = proj_shape[p][0], cols = proj_shape[p][1];
    struct tsr_tensor_view v;
    assert_int_equal(tsr_model_tensor(m, gn, &v), 0);
    assert_int_equal(v.type, type);
    assert_int_equal(v.generated, 1);
    assert_null(v.data);
    assert_int_equal(v.rows, rows);
    assert_int_equal(v.cols, cols);
    int q8 = type == TSR_Q8_0;
    size_t bb = tsr_dtype_row_bytes(type, 32), rb = (size_t)cols / 32 * bb,
           qs = q8 ? offsetof(struct tsr_block_q8_0, qs) : offsetof(struct tsr_block_f8, qs);
    assert_int_equal(v.nbytes, rb * (size_t)rows);
    uint8_t *whole = malloc(v.nbytes);
    float *row = malloc(sizeof(float) * (size_t)cols);
    assert_true(whole && row);
    assert_int_equal(tsr_model_read(m, gn, 0, rows, 0, cols, whole), 0);

    hf_proj(name, sizeof name, l, p, "");
    const struct tensor *w = find(c, name);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *b = whole + (size_t)r * rb;
        for (int64_t k = 0; k < cols / 32; k++) {
            const uint8_t *blk = b + (size_t)k * bb;
            uint16_t h;
            float f;
            memcpy(&h, blk, 2);
            memcpy(&f, blk, 4);
            double d = q8 ? f16_ref(h) : (double)f, want = scale(c, l, p, r, k * 32);
            if (d != want)
                fail_msg("%s row %lld block %lld: scale %.9g, want %.9g", gn, (long long)r,
                         (long long)k, d, want);
            if (memcmp(blk + qs, w->data + r * cols + k * 32, 32))
                fail_msg("%s row %lld block %lld: codes differ from the file's", gn, (long long)r,
                         (long long)k);
        }
        tsr_dequantize_row(type, b, row, cols);
        for (int64_t col = 0; col < cols; col++) {
            double want = weight(c, l, p, r, col);
            if ((double)row[col] != (double)(float)want || (exact && (double)row[col] != want))
                fail_msg("%s (%lld, %lld) = %.9g, want %.17g", gn, (long long)r, (long long)col,
                         (double)row[col], want);
        }
    }
    ckpt_check_slices(m, gn, type, rows, cols, whole);
    free(whole);
    free(row);
}

/* m converted to type (tsr_model_quantize or tsr_model_open_quantized): every layer's q, output
 * and down projections read as type, each row the checkpoint's values (weight(), rounded once to
 * f32) requantized by tsr_quantize_row_search, and a slice the whole's columns (f16 slices need
 * not fall on 32-column blocks). */
static inline void ckpt_check_requantized(tsr_model_t *m, struct ckpt *c, enum tsr_dtype type,
                                          double (*weight)(struct ckpt *, int, int, int64_t,
                                                           int64_t))
{
    for (int l = 0; l < N_LAYER; l++)
        for (int p = 0; p < 7; p += 3) {
            char gn[64];
            snprintf(gn, sizeof gn, "blk.%d.%s.weight", l, proj_gguf[p]);
            struct tsr_tensor_view v;
            assert_int_equal(tsr_model_tensor(m, gn, &v), 0);
            assert_int_equal(v.type, type);
            assert_int_equal(v.generated, 1);
            size_t rb = tsr_dtype_row_bytes(v.type, v.cols);
            uint8_t *got = malloc(v.nbytes), *want = malloc(rb);
            float *row = malloc(sizeof(float) * (size_t)v.cols);
            assert_true(got && want && row);
            assert_int_equal(tsr_model_read(m, gn, 0, v.rows, 0, v.cols, got), 0);
            for (int64_t r = 0; r < v.rows; r++) {
                for (int64_t col = 0; col < v.cols; col++)
                    row[col] = (float)weight(c, l, p, r, col);
                tsr_quantize_row_search(v.type, row, want, v.cols);
                if (memcmp(got + (size_t)r * rb, want, rb))
                    fail_msg("%s as %s: row %lld is not the checkpoint's row requantized", gn,
                             tsr_dtype_name(v.type), (long long)r);
            }
            int64_t c0 = type == TSR_F16 ? 8 : v.cols / 2, nc = v.cols / 2;
            size_t srb = tsr_dtype_row_bytes(v.type, nc), skip = tsr_dtype_row_bytes(v.type, c0);
            uint8_t *s = malloc(srb * 9);
            assert_non_null(s);
            assert_int_equal(tsr_model_read(m, gn, 11, 9, c0, nc, s), 0);
            for (int64_t r = 0; r < 9; r++)
                assert_memory_equal(s + (size_t)r * srb, got + (size_t)(11 + r) * rb + skip, srb);
            free(s);
            free(got);
            free(want);
            free(row);
        }
}

/* q_dir opened then converted to each of targets (tsr_model_quantize): ckpt_check_requantized
 * against make's checkpoint. */
static inline void ckpt_check_quantize(void (*make)(struct ckpt *),
                                       double (*weight)(struct ckpt *, int, int, int64_t, int64_t),
                                       const enum tsr_dtype *targets, size_t n)
{
    struct ckpt c;
    make(&c);
    for (size_t ti = 0; ti < n; ti++) {
        tsr_model_t *m;
        assert_int_equal(tsr_model_open(q_dir, &m), 0);
        int rc = tsr_model_quantize(m, targets[ti]);
        if (rc) fail_msg("quantize: %s", tsr_last_error());
        ckpt_check_requantized(m, &c, targets[ti], weight);
        tsr_model_free(m);
    }
    ckpt_free(&c);
}

/* The quantized checkpoint in q_dir (make's) against the same model with F32 weights: each
 * projection replaced by the values weight() computes from the bits, the tensors beside it
 * (<weight>_scale, _scale_inv, _zero_point) dropped, written to f32_dir. The teacher-forced logits
 * of the two through backend must agree to an NMSE of 1e-9: the same weights, only the order of
 * the sums differs. */
static inline void ckpt_forward_check(tsr_backend_t *backend, void (*make)(struct ckpt *),
                                      double (*weight)(struct ckpt *, int, int, int64_t, int64_t),
                                      const char *q_dir, const char *f32_dir, const char *what)
{
    struct ckpt c;
    make(&c);
    char name[160];
    for (int l = 0; l < N_LAYER; l++)
        for (int p = 0; p < 7; p++) {
            int64_t rows = proj_shape[p][0], cols = proj_shape[p][1];
            float *vals = malloc(sizeof(float) * (size_t)(rows * cols));
            assert_non_null(vals);
            for (int64_t r = 0; r < rows; r++)
                for (int64_t col = 0; col < cols; col++)
                    vals[r * cols + col] = (float)weight(&c, l, p, r, col);
            hf_proj(name, sizeof name, l, p, "");
            drop(&c, name);
            struct tensor *t = add(&c, name, "F32", 2, rows, cols);
            memcpy(t->data, vals, t->nbytes);
            free(vals);
            hf_proj(name, sizeof name, l, p, "_");
            for (int i = c.n - 1; i >= 0; i--)
                if (!strncmp(c.t[i].name, name, strlen(name))) drop(&c, c.t[i].name);
        }
    write_dir(f32_dir, &c, NULL);
    ckpt_free(&c);

    tsr_model_t *q, *f;
    int rc = tsr_model_open(q_dir, &q);
    if (rc) fail_msg("open %s: %s", what, tsr_last_error());
    if ((rc = tsr_model_open(f32_dir, &f))) fail_msg("open f32: %s", tsr_last_error());
    int32_t ids[24];
    for (int i = 0; i < 24; i++) ids[i] = (i * 37 + 11) % VOCAB;
    float *a = all_logits(backend, q, ids, 24), *b = all_logits(backend, f, ids, 24);
    double *ref = malloc(sizeof(double) * 24 * VOCAB);
    assert_non_null(ref);
    double amax = 0;
    for (int i = 0; i < 24 * VOCAB; i++) {
        assert_true(isfinite(a[i]));
        ref[i] = b[i];
        amax = fmax(amax, fabs(b[i]));
    }
    double e = tsr_test_nmse(a, ref, 24 * VOCAB);
    print_message("  %s vs F32 weights: logits NMSE %.3g (max |logit| %.3g)\n", what, e, amax);
    if (!(e < 1e-9)) fail_msg("logits NMSE %.3g over 1e-9", e);
    assert_true(amax > 0.1);
    free(a);
    free(b);
    free(ref);
    tsr_model_free(q);
    tsr_model_free(f);
}

/* make's checkpoint after mutate(), with config quant, written to dir; opening it must fail with
 * code and a message holding substr and the directory. */
static inline void ckpt_open_fails(void (*make)(struct ckpt *), void (*mutate)(struct ckpt *),
                                   const char *quant, const char *dir, int code, const char *substr)
{
    struct ckpt c;
    make(&c);
    if (mutate) mutate(&c);
    write_dir(dir, &c, quant);
    ckpt_free(&c);
    tsr_model_t *m = (tsr_model_t *)1;
    EXPECT_ERR(tsr_model_open(dir, &m), code, substr);
    assert_null(m);
    assert_non_null(strstr(tsr_last_error(), dir));
}

static inline void replace(struct ckpt *c, const char *name, const char *dtype, int n_dims,
                           int64_t s0, int64_t s1, float v)
{
    drop(c, name);
    struct tensor *t = add(c, name, dtype, n_dims, s0, s1);
    for (int64_t i = 0; i < n_elems(t) && dtype_size(dtype) != 1 && strcmp(dtype, "I32"); i++)
        put(t, i, v);
}

#endif
