/* GGUF reader: files built in memory with every metadata type, several tensor types and
 * alignments; the real default model; and malformed files, each of which must give the right
 * code and a message naming the problem. */
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
#include "model/gguf.h"
#include "unit.h"

/* ---- a small GGUF writer ---------------------------------------------------------------- */

struct wb {
    uint8_t *p;
    size_t n, cap;
};

static void put(struct wb *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    if (n) memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void put_u8(struct wb *b, uint8_t v)
{
    put(b, &v, 1);
}
static void put_u16(struct wb *b, uint16_t v)
{
    put(b, &v, 2);
}
static void put_u32(struct wb *b, uint32_t v)
{
    put(b, &v, 4);
}
static void put_u64(struct wb *b, uint64_t v)
{
    put(b, &v, 8);
}
static void put_f32(struct wb *b, float v)
{
    put(b, &v, 4);
}
static void put_f64(struct wb *b, double v)
{
    put(b, &v, 8);
}
static void put_str(struct wb *b, const char *s)
{
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void wb_free(struct wb *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* kv header: key and value type; the caller writes the value. */
static void kv(struct wb *b, const char *key, uint32_t type)
{
    put_str(b, key);
    put_u32(b, type);
}

struct tdesc {
    const char *name;
    uint32_t n_dims;
    uint64_t ne[5];
    uint32_t type;
    uint64_t nbytes; /* data bytes written for this tensor */
    uint64_t offset; /* UINT64_MAX: next aligned position */
};

#define AUTO UINT64_MAX

/* A whole file: header, n_kv pre-serialized kvs, tensor infos, padding to align, then each
 * tensor's nbytes of data (bytes i*7+k) at its offset. The file ends with the last data. */
static void gguf_file(struct wb *out, uint32_t version, uint64_t n_kv, const struct wb *kvs,
                      uint64_t n_tensors, struct tdesc *t, size_t nt, uint32_t align)
{
    put(out, "GGUF", 4);
    put_u32(out, version);
    put_u64(out, n_tensors);
    put_u64(out, n_kv);
    if (kvs) put(out, kvs->p, kvs->n);
    uint64_t next = 0, end = 0;
    for (size_t i = 0; i < nt; i++) {
        if (t[i].offset == AUTO) {
            t[i].offset = next;
        }
        if (t[i].nbytes) { /* nbytes 0: no data written, whatever the offset */
            next = (t[i].offset + t[i].nbytes + align - 1) / align * align;
            if (t[i].offset + t[i].nbytes > end) end = t[i].offset + t[i].nbytes;
        }
        put_str(out, t[i].name);
        put_u32(out, t[i].n_dims);
        for (uint32_t d = 0; d < t[i].n_dims; d++) put_u64(out, t[i].ne[d]);
        put_u32(out, t[i].type);
        put_u64(out, t[i].offset);
    }
    while (out->n % align) put_u8(out, 0);
    size_t data = out->n;
    for (uint64_t i = 0; i < end; i++) put_u8(out, 0);
    for (size_t i = 0; i < nt; i++)
        for (uint64_t k = 0; k < t[i].nbytes && t[i].offset + k < end; k++)
            out->p[data + t[i].offset + k] = (uint8_t)(i * 7 + k);
}

/* Opens a buffer that must fail with code and a message containing substr (and the file name). */
static void expect_open_fail(const struct wb *b, int code, const char *substr)
{
    tsr_gguf_t *g = (tsr_gguf_t *)1;
    EXPECT_ERR(tsr_gguf_open_mem(b->p, b->n, "bad.gguf", &g), code, substr);
    assert_null(g);
    assert_non_null(strstr(tsr_last_error(), "bad.gguf"));
}

/* ---- a file with everything ------------------------------------------------------------- */

static const char *const words[] = {"alpha", "", "gamma delta", "\xe2\x96\x81hi", "z"};

static uint64_t all_kvs(struct wb *k)
{
    uint64_t n = 0;
    kv(k, "t.u8", TSR_GGUF_U8), put_u8(k, 200), n++;
    kv(k, "t.i8", TSR_GGUF_I8), put_u8(k, (uint8_t)-5), n++;
    kv(k, "t.u16", TSR_GGUF_U16), put_u16(k, 60000), n++;
    kv(k, "t.i16", TSR_GGUF_I16), put_u16(k, (uint16_t)-300), n++;
    kv(k, "t.u32", TSR_GGUF_U32), put_u32(k, 4000000000u), n++;
    kv(k, "t.i32", TSR_GGUF_I32), put_u32(k, (uint32_t)-70000), n++;
    kv(k, "t.f32", TSR_GGUF_F32), put_f32(k, 1.5f), n++;
    kv(k, "t.bool", TSR_GGUF_BOOL), put_u8(k, 1), n++;
    kv(k, "t.str", TSR_GGUF_STRING), put_str(k, "hello"), n++;
    kv(k, "t.u64", TSR_GGUF_U64), put_u64(k, 1ull << 40), n++;
    kv(k, "t.u64big", TSR_GGUF_U64), put_u64(k, UINT64_MAX), n++;
    kv(k, "t.i64", TSR_GGUF_I64), put_u64(k, (uint64_t) - (1ll << 40)), n++;
    kv(k, "t.f64", TSR_GGUF_F64), put_f64(k, 2.25), n++;
    kv(k, "a.i32", TSR_GGUF_ARRAY), put_u32(k, TSR_GGUF_I32), put_u64(k, 3);
    put_u32(k, 1), put_u32(k, (uint32_t)-2), put_u32(k, 3), n++;
    kv(k, "a.f32", TSR_GGUF_ARRAY), put_u32(k, TSR_GGUF_F32), put_u64(k, 2);
    put_f32(k, 0.5f), put_f32(k, -4.0f), n++;
    kv(k, "a.u8", TSR_GGUF_ARRAY), put_u32(k, TSR_GGUF_U8), put_u64(k, 2), put_u8(k, 7);
    put_u8(k, 255), n++;
    kv(k, "a.bool", TSR_GGUF_ARRAY), put_u32(k, TSR_GGUF_BOOL), put_u64(k, 2), put_u8(k, 0);
    put_u8(k, 1), n++;
    kv(k, "a.str", TSR_GGUF_ARRAY), put_u32(k, TSR_GGUF_STRING), put_u64(k, 5);
    for (int i = 0; i < 5; i++) put_str(k, words[i]);
    n++;
    kv(k, "a.empty", TSR_GGUF_ARRAY), put_u32(k, TSR_GGUF_F64), put_u64(k, 0), n++;
    /* [[1, 2], [], [["x"]]] is not expressible (mixed depth); use [[1,2],[]] of i16 arrays and
     * a separate array of arrays of strings. */
    kv(k, "a.nested", TSR_GGUF_ARRAY), put_u32(k, TSR_GGUF_ARRAY), put_u64(k, 2);
    put_u32(k, TSR_GGUF_I16), put_u64(k, 2), put_u16(k, 1), put_u16(k, 2);
    put_u32(k, TSR_GGUF_I16), put_u64(k, 0), n++;
    kv(k, "a.nested_str", TSR_GGUF_ARRAY), put_u32(k, TSR_GGUF_ARRAY), put_u64(k, 1);
    put_u32(k, TSR_GGUF_STRING), put_u64(k, 2), put_str(k, "p"), put_str(k, "qq"), n++;
    kv(k, "general.alignment", TSR_GGUF_U32), put_u32(k, 64), n++;
    return n;
}

static struct tdesc all_tensors[] = {
    {"w.f32", 2, {4, 3}, TSR_F32, 4 * 3 * 4, AUTO},
    {"w.f16", 1, {8}, TSR_F16, 16, AUTO},
    {"w.bf16", 3, {2, 2, 2}, TSR_BF16, 16, AUTO},
    {"w.q8_0", 2, {64, 2}, TSR_Q8_0, 34 * 2 * 2, AUTO},
    {"w.q4_0", 1, {32}, TSR_Q4_0, 18, AUTO},
    {"w.q4_1", 4, {32, 1, 1, 2}, TSR_Q4_1, 20 * 2, AUTO},
};
#define N_ALL (sizeof all_tensors / sizeof all_tensors[0])

static void build_all(struct wb *f, uint32_t version)
{
    struct wb k = {0};
    struct tdesc t[N_ALL];
    memcpy(t, all_tensors, sizeof t);
    uint64_t n = all_kvs(&k);
    gguf_file(f, version, n, &k, N_ALL, t, N_ALL, 64);
    wb_free(&k);
}

static void test_getters(void **state)
{
    struct wb f = {0};
    build_all(&f, 3);
    tsr_gguf_t *g;
    int rc = tsr_gguf_open_mem(f.p, f.n, "all.gguf", &g);
    if (rc) fail_msg("open: %s", tsr_last_error());
    assert_int_equal(tsr_gguf_version(g), 3);
    assert_int_equal(tsr_gguf_alignment(g), 64);
    assert_int_equal(tsr_gguf_n_kv(g), 22);

    int64_t i;
    double d;
    struct tsr_str s;
    assert_int_equal(tsr_gguf_get_int(g, "t.u8", &i), 0), assert_int_equal(i, 200);
    assert_int_equal(tsr_gguf_get_int(g, "t.i8", &i), 0), assert_int_equal(i, -5);
    assert_int_equal(tsr_gguf_get_int(g, "t.u16", &i), 0), assert_int_equal(i, 60000);
    assert_int_equal(tsr_gguf_get_int(g, "t.i16", &i), 0), assert_int_equal(i, -300);
    assert_int_equal(tsr_gguf_get_int(g, "t.u32", &i), 0), assert_int_equal(i, 4000000000ll);
    assert_int_equal(tsr_gguf_get_int(g, "t.i32", &i), 0), assert_int_equal(i, -70000);
    assert_int_equal(tsr_gguf_get_int(g, "t.bool", &i), 0), assert_int_equal(i, 1);
    assert_int_equal(tsr_gguf_get_int(g, "t.u64", &i), 0), assert_int_equal(i, 1ll << 40);
    assert_int_equal(tsr_gguf_get_int(g, "t.i64", &i), 0), assert_int_equal(i, -(1ll << 40));
    EXPECT_ERR(tsr_gguf_get_int(g, "t.u64big", &i), TSR_EFORMAT, "int64");
    EXPECT_ERR(tsr_gguf_get_int(g, "t.f32", &i), TSR_EFORMAT, "f32");
    EXPECT_ERR(tsr_gguf_get_int(g, "t.str", &i), TSR_EFORMAT, "t.str");
    EXPECT_ERR(tsr_gguf_get_int(g, "a.i32", &i), TSR_EFORMAT, "array");
    EXPECT_ERR(tsr_gguf_get_int(g, "nope", &i), TSR_ENOTFOUND, "nope");

    assert_int_equal(tsr_gguf_get_float(g, "t.f32", &d), 0), assert_true(d == 1.5);
    assert_int_equal(tsr_gguf_get_float(g, "t.f64", &d), 0), assert_true(d == 2.25);
    assert_int_equal(tsr_gguf_get_float(g, "t.i32", &d), 0), assert_true(d == -70000.0);
    assert_int_equal(tsr_gguf_get_float(g, "t.u64big", &d), 0);
    assert_true(d == (double)UINT64_MAX);
    EXPECT_ERR(tsr_gguf_get_float(g, "t.str", &d), TSR_EFORMAT, "string");
    EXPECT_ERR(tsr_gguf_get_float(g, "t.bool", &d), TSR_EFORMAT, "bool");
    EXPECT_ERR(tsr_gguf_get_float(g, "missing.key", &d), TSR_ENOTFOUND, "missing.key");

    assert_int_equal(tsr_gguf_get_str(g, "t.str", &s), 0);
    assert_int_equal(s.n, 5), assert_memory_equal(s.p, "hello", 5);
    EXPECT_ERR(tsr_gguf_get_str(g, "t.u8", &s), TSR_EFORMAT, "not a string");
    EXPECT_ERR(tsr_gguf_get_str(g, "x", &s), TSR_ENOTFOUND, "all.gguf");

    enum tsr_gguf_vtype et;
    uint64_t n;
    assert_int_equal(tsr_gguf_get_arr(g, "a.i32", &et, &n), 0);
    assert_int_equal(et, TSR_GGUF_I32), assert_int_equal(n, 3);
    assert_int_equal(tsr_gguf_arr_int(g, "a.i32", 1, &i), 0), assert_int_equal(i, -2);
    assert_int_equal(tsr_gguf_arr_int(g, "a.i32", 2, &i), 0), assert_int_equal(i, 3);
    assert_int_equal(tsr_gguf_arr_float(g, "a.i32", 0, &d), 0), assert_true(d == 1.0);
    EXPECT_ERR(tsr_gguf_arr_int(g, "a.i32", 3, &i), TSR_ERANGE, "index 3");
    EXPECT_ERR(tsr_gguf_arr_str(g, "a.i32", 0, &s), TSR_EFORMAT, "string");
    EXPECT_ERR(tsr_gguf_get_arr(g, "t.u8", &et, &n), TSR_EFORMAT, "not an array");
    EXPECT_ERR(tsr_gguf_arr_int(g, "t.u8", 0, &i), TSR_EFORMAT, "not an array");
    EXPECT_ERR(tsr_gguf_get_arr(g, "zz", &et, &n), TSR_ENOTFOUND, "zz");
    assert_int_equal(tsr_gguf_arr_float(g, "a.f32", 1, &d), 0), assert_true(d == -4.0);
    EXPECT_ERR(tsr_gguf_arr_int(g, "a.f32", 0, &i), TSR_EFORMAT, "f32");
    assert_int_equal(tsr_gguf_arr_int(g, "a.u8", 1, &i), 0), assert_int_equal(i, 255);
    assert_int_equal(tsr_gguf_arr_int(g, "a.bool", 1, &i), 0), assert_int_equal(i, 1);
    assert_int_equal(tsr_gguf_arr_int(g, "a.bool", 0, &i), 0), assert_int_equal(i, 0);
    assert_int_equal(tsr_gguf_get_arr(g, "a.str", &et, &n), 0);
    assert_int_equal(et, TSR_GGUF_STRING), assert_int_equal(n, 5);
    for (int k = 4; k >= 0; k--) { /* any order: indexing is direct */
        assert_int_equal(tsr_gguf_arr_str(g, "a.str", (uint64_t)k, &s), 0);
        assert_int_equal(s.n, strlen(words[k]));
        assert_memory_equal(s.p, words[k], s.n);
    }
    EXPECT_ERR(tsr_gguf_arr_str(g, "a.str", 5, &s), TSR_ERANGE, "a.str");
    EXPECT_ERR(tsr_gguf_arr_int(g, "a.str", 0, &i), TSR_EFORMAT, "string");
    assert_int_equal(tsr_gguf_get_arr(g, "a.empty", &et, &n), 0);
    assert_int_equal(et, TSR_GGUF_F64), assert_int_equal(n, 0);
    EXPECT_ERR(tsr_gguf_arr_float(g, "a.empty", 0, &d), TSR_ERANGE, "out of range");
    assert_int_equal(tsr_gguf_get_arr(g, "a.nested", &et, &n), 0);
    assert_int_equal(et, TSR_GGUF_ARRAY), assert_int_equal(n, 2);
    EXPECT_ERR(tsr_gguf_arr_int(g, "a.nested", 0, &i), TSR_EFORMAT, "array");
    assert_int_equal(tsr_gguf_get_arr(g, "a.nested_str", &et, &n), 0);
    assert_int_equal(n, 1);

    /* Keys in file order, types, and the index. */
    assert_string_equal(tsr_gguf_kv_key(g, 0), "t.u8");
    assert_string_equal(tsr_gguf_kv_key(g, 21), "general.alignment");
    assert_null(tsr_gguf_kv_key(g, 22));
    assert_int_equal(tsr_gguf_kv_type(g, 8), TSR_GGUF_STRING);
    assert_int_equal(tsr_gguf_kv_type(g, 13), TSR_GGUF_ARRAY);
    for (uint64_t k = 0; k < tsr_gguf_n_kv(g); k++)
        assert_int_equal(tsr_gguf_find_kv(g, tsr_gguf_kv_key(g, k)), (int)k);
    assert_int_equal(tsr_gguf_find_kv(g, "t.u"), -1);
    assert_int_equal(tsr_gguf_find_kv(g, ""), -1);

    /* Tensors: shapes, types, sizes, and data at aligned offsets from the aligned data start. */
    assert_int_equal(tsr_gguf_n_tensors(g), N_ALL);
    const uint8_t *base = NULL;
    for (size_t k = 0; k < N_ALL; k++) {
        const struct tsr_gguf_tensor *t = tsr_gguf_tensor(g, k);
        assert_non_null(t);
        assert_ptr_equal(tsr_gguf_find_tensor(g, all_tensors[k].name), t);
        assert_string_equal(t->name, all_tensors[k].name);
        assert_int_equal(t->n_dims, all_tensors[k].n_dims);
        for (uint32_t dd = 0; dd < TSR_MAX_DIMS; dd++)
            assert_int_equal(t->ne[dd], dd < t->n_dims ? (int64_t)all_tensors[k].ne[dd] : 1);
        assert_int_equal(t->type, all_tensors[k].type);
        assert_int_equal(t->nbytes, all_tensors[k].nbytes);
        assert_int_equal(t->offset % 64, 0);
        if (k == 0) base = (const uint8_t *)t->data - t->offset;
        assert_ptr_equal(t->data, base + t->offset);
        assert_int_equal(((const uint8_t *)t->data)[0], (uint8_t)(k * 7));
        assert_int_equal(((const uint8_t *)t->data)[t->nbytes - 1],
                         (uint8_t)(k * 7 + t->nbytes - 1));
    }
    assert_int_equal((size_t)(base - f.p) % 64, 0);
    assert_int_equal(tsr_gguf_tensor(g, 5)->nbytes, 40);
    assert_null(tsr_gguf_tensor(g, N_ALL));
    assert_null(tsr_gguf_find_tensor(g, "w"));
    assert_null(tsr_gguf_find_tensor(g, "w.q4_1x"));
    tsr_gguf_close(g);
    wb_free(&f);
}

/* Version 2, default alignment 32, no kvs; also through a real file with tsr_gguf_open(). */
static void test_v2_default_alignment_and_file(void **state)
{
    struct wb f = {0};
    struct tdesc t[] = {{"a", 1, {3}, TSR_F32, 12, AUTO}, {"b", 2, {32, 3}, TSR_Q8_0, 102, AUTO}};
    gguf_file(&f, 2, 0, NULL, 2, t, 2, 32);
    char path[] = "/tmp/test_gguf_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, f.p, f.n), (ssize_t)f.n);
    close(fd);

    tsr_gguf_t *g;
    int rc = tsr_gguf_open(path, &g);
    if (rc) fail_msg("open: %s", tsr_last_error());
    assert_int_equal(tsr_gguf_version(g), 2);
    assert_int_equal(tsr_gguf_alignment(g), 32);
    assert_int_equal(tsr_gguf_n_kv(g), 0);
    assert_int_equal(tsr_gguf_find_kv(g, "general.alignment"), -1);
    const struct tsr_gguf_tensor *b = tsr_gguf_find_tensor(g, "b");
    assert_non_null(b);
    assert_int_equal(b->offset, 32);
    assert_int_equal(b->nbytes, 102);
    assert_memory_equal(b->data, f.p + f.n - 102, 102);
    tsr_gguf_close(g);
    unlink(path);

    EXPECT_ERR(tsr_gguf_open("/nonexistent/x.gguf", &g), TSR_ENOTFOUND, "/nonexistent/x.gguf");
    assert_null(g);
    EXPECT_ERR(tsr_gguf_open("/tmp", &g), TSR_EIO, "/tmp");
    wb_free(&f);
}

/* A file with no tensors may end right after its metadata (no padding). */
static void test_no_tensors(void **state)
{
    struct wb f = {0}, k = {0};
    kv(&k, "x", TSR_GGUF_STRING), put_str(&k, "y");
    gguf_file(&f, 3, 1, &k, 0, NULL, 0, 1);
    tsr_gguf_t *g;
    assert_int_equal(tsr_gguf_open_mem(f.p, f.n, "m", &g), 0);
    assert_int_equal(tsr_gguf_n_tensors(g), 0);
    assert_null(tsr_gguf_tensor(g, 0));
    assert_null(tsr_gguf_find_tensor(g, "x"));
    tsr_gguf_close(g);
    wb_free(&f);
    wb_free(&k);
}

/* ---- the real model --------------------------------------------------------------------- */

static void test_real_model(void **state)
{
    const char *path = TSR_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (tsr_test_missing(path, "run scripts/fetch_model.sh")) return;
    tsr_gguf_t *g;
    int rc = tsr_gguf_open(path, &g);
    if (rc) fail_msg("open: %s", tsr_last_error());
    assert_int_equal(tsr_gguf_version(g), 3);
    assert_int_equal(tsr_gguf_n_tensors(g), 272);
    int64_t v;
    assert_int_equal(tsr_gguf_get_int(g, "llama.block_count", &v), 0), assert_int_equal(v, 30);
    assert_int_equal(tsr_gguf_get_int(g, "llama.embedding_length", &v), 0);
    assert_int_equal(v, 576);
    struct tsr_str s;
    assert_int_equal(tsr_gguf_get_str(g, "general.architecture", &s), 0);
    assert_int_equal(s.n, 5), assert_memory_equal(s.p, "llama", 5);

    enum tsr_gguf_vtype et;
    uint64_t n;
    assert_int_equal(tsr_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n), 0);
    assert_int_equal(et, TSR_GGUF_STRING), assert_int_equal(n, 49152);
    size_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        assert_int_equal(tsr_gguf_arr_str(g, "tokenizer.ggml.tokens", i, &s), 0);
        total += s.n;
    }
    assert_true(total > 49152);
    assert_int_equal(tsr_gguf_arr_str(g, "tokenizer.ggml.tokens", 0, &s), 0);
    assert_int_equal(s.n, 13), assert_memory_equal(s.p, "<|endoftext|>", 13);

    const struct tsr_gguf_tensor *t = tsr_gguf_find_tensor(g, "token_embd.weight");
    assert_non_null(t);
    assert_int_equal(t->type, TSR_Q8_0);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->ne[0], 576), assert_int_equal(t->ne[1], 49152);
    assert_int_equal(t->nbytes, 576 / 32 * 34 * 49152ull);
    t = tsr_gguf_find_tensor(g, "blk.0.attn_q.weight");
    assert_non_null(t);
    assert_int_equal(t->type, TSR_Q4_1);
    assert_int_equal(t->ne[0], 576), assert_int_equal(t->ne[1], 576);
    assert_non_null(tsr_gguf_find_tensor(g, "blk.29.ffn_down.weight"));
    assert_null(tsr_gguf_find_tensor(g, "blk.30.ffn_down.weight"));
    for (uint64_t i = 0; i < tsr_gguf_n_tensors(g); i++)
        assert_ptr_equal(tsr_gguf_find_tensor(g, tsr_gguf_tensor(g, i)->name),
                         tsr_gguf_tensor(g, i));
    tsr_gguf_close(g);
}

/* ---- malformed files -------------------------------------------------------------------- */

/* Every strict prefix of a valid file is rejected cleanly (the file ends with tensor data). */
static void test_truncated(void **state)
{
    struct wb f = {0};
    build_all(&f, 3);
    for (size_t cut = 0; cut < f.n; cut++) {
        uint8_t *copy = malloc(cut ? cut : 1); /* exact size, so ASan sees any overread */
        memcpy(copy, f.p, cut);
        tsr_gguf_t *g = NULL;
        int rc = tsr_gguf_open_mem(copy, cut, "cut.gguf", &g);
        if (rc != TSR_EFORMAT) fail_msg("cut at %zu: rc %d: %s", cut, rc, tsr_last_error());
        assert_null(g);
        assert_non_null(strstr(tsr_last_error(), "cut.gguf"));
        free(copy);
    }
    tsr_gguf_t *g;
    assert_int_equal(tsr_gguf_open_mem(f.p, f.n, "whole.gguf", &g), 0);
    tsr_gguf_close(g);
    EXPECT_ERR(tsr_gguf_open_mem(f.p, 2, "tiny.gguf", &g), TSR_EFORMAT, "too short");
    EXPECT_ERR(tsr_gguf_open_mem(f.p, 30, "t.gguf", &g), TSR_EFORMAT, "kv count 22 is absurd");
    EXPECT_ERR(tsr_gguf_open_mem(f.p, 320, "t.gguf", &g), TSR_EFORMAT, "past end of file (320");
    EXPECT_ERR(tsr_gguf_open_mem(f.p, f.n - 1, "t.gguf", &g), TSR_EFORMAT, "'w.q4_1': data");
    wb_free(&f);
}

static void test_bad_magic_and_version(void **state)
{
    struct wb f = {0};
    build_all(&f, 3);
    f.p[0] = 'X';
    expect_open_fail(&f, TSR_EFORMAT, "magic");
    f.p[0] = 'G';
    f.p[4] = 1;
    expect_open_fail(&f, TSR_EUNSUPPORTED, "version 1");
    f.p[4] = 4;
    expect_open_fail(&f, TSR_EUNSUPPORTED, "version 4");
    memcpy(f.p + 4, "\0\0\0\3", 4);
    expect_open_fail(&f, TSR_EUNSUPPORTED, "big-endian");
    wb_free(&f);
}

static void test_absurd_counts(void **state)
{
    struct wb f = {0};
    build_all(&f, 3);
    uint64_t v = 1ull << 40;
    memcpy(f.p + 8, &v, 8);
    expect_open_fail(&f, TSR_EFORMAT, "tensor count");
    v = UINT64_MAX;
    memcpy(f.p + 8, &v, 8);
    expect_open_fail(&f, TSR_EFORMAT, "tensor count");
    v = N_ALL;
    memcpy(f.p + 8, &v, 8);
    v = 1ull << 50;
    memcpy(f.p + 16, &v, 8);
    expect_open_fail(&f, TSR_EFORMAT, "kv count");
    wb_free(&f);

    /* An array of strings / arrays longer than the file could hold. */
    struct wb k = {0};
    kv(&k, "big", TSR_GGUF_ARRAY), put_u32(&k, TSR_GGUF_STRING), put_u64(&k, 1ull << 60);
    gguf_file(&f, 3, 1, &k, 0, NULL, 0, 32);
    expect_open_fail(&f, TSR_EFORMAT, "cannot fit");
    wb_free(&f), wb_free(&k);
    kv(&k, "big", TSR_GGUF_ARRAY), put_u32(&k, TSR_GGUF_ARRAY), put_u64(&k, 1ull << 60);
    gguf_file(&f, 3, 1, &k, 0, NULL, 0, 32);
    expect_open_fail(&f, TSR_EFORMAT, "cannot fit");
    wb_free(&f), wb_free(&k);
    /* n * sizeof(u64) overflows. */
    kv(&k, "big", TSR_GGUF_ARRAY), put_u32(&k, TSR_GGUF_U64), put_u64(&k, 1ull << 61);
    gguf_file(&f, 3, 1, &k, 0, NULL, 0, 32);
    expect_open_fail(&f, TSR_EFORMAT, "runs past end of file");
    wb_free(&f), wb_free(&k);
}

static void test_bad_strings(void **state)
{
    struct wb f = {0}, k = {0};
    put_u64(&k, 1ull << 62); /* key length */
    put(&k, "abcdefghijklmnop", 16);
    gguf_file(&f, 3, 1, &k, 0, NULL, 0, 32);
    expect_open_fail(&f, TSR_EFORMAT, "string length");
    wb_free(&f), wb_free(&k);

    kv(&k, "s", TSR_GGUF_STRING), put_u64(&k, UINT64_MAX);
    gguf_file(&f, 3, 1, &k, 0, NULL, 0, 32);
    expect_open_fail(&f, TSR_EFORMAT, "string length");
    wb_free(&f), wb_free(&k);

    put_u64(&k, 3), put(&k, "a\0b", 3), put_u32(&k, TSR_GGUF_U8), put_u8(&k, 0);
    gguf_file(&f, 3, 1, &k, 0, NULL, 0, 32);
    expect_open_fail(&f, TSR_EFORMAT, "NUL");
    wb_free(&f), wb_free(&k);
}

static void test_bad_value_type(void **state)
{
    struct wb f = {0}, k = {0};
    kv(&k, "odd", 13), put_u32(&k, 0);
    gguf_file(&f, 3, 1, &k, 0, NULL, 0, 32);
    expect_open_fail(&f, TSR_EFORMAT, "bad value type 13");
    assert_non_null(strstr(tsr_last_error(), "'odd'"));
    wb_free(&f), wb_free(&k);
    kv(&k, "odd", TSR_GGUF_ARRAY), put_u32(&k, 99), put_u64(&k, 0);
    gguf_file(&f, 3, 1, &k, 0, NULL, 0, 32);
    expect_open_fail(&f, TSR_EFORMAT, "element type 99");
    wb_free(&f), wb_free(&k);
}

static void test_duplicate_key(void **state)
{
    struct wb f = {0}, k = {0};
    kv(&k, "same", TSR_GGUF_U8), put_u8(&k, 1);
    kv(&k, "other", TSR_GGUF_U8), put_u8(&k, 1);
    kv(&k, "same", TSR_GGUF_U32), put_u32(&k, 2);
    gguf_file(&f, 3, 3, &k, 0, NULL, 0, 32);
    expect_open_fail(&f, TSR_EFORMAT, "duplicate metadata key 'same'");
    wb_free(&f), wb_free(&k);
}

static void test_deep_nesting(void **state)
{
    struct wb f = {0}, k = {0};
    /* 3 levels of arrays are fine; 4 are not. */
    for (int depth = 3; depth <= 4; depth++) {
        kv(&k, "deep", TSR_GGUF_ARRAY);
        for (int d = 1; d < depth; d++) put_u32(&k, TSR_GGUF_ARRAY), put_u64(&k, 1);
        put_u32(&k, TSR_GGUF_U8), put_u64(&k, 1), put_u8(&k, 9);
        gguf_file(&f, 3, 1, &k, 0, NULL, 0, 32);
        tsr_gguf_t *g;
        if (depth == 3) {
            assert_int_equal(tsr_gguf_open_mem(f.p, f.n, "ok.gguf", &g), 0);
            tsr_gguf_close(g);
        } else {
            expect_open_fail(&f, TSR_EFORMAT, "nested deeper");
        }
        wb_free(&f), wb_free(&k);
    }
    /* Endless nesting (each level claims one array) must not recurse without bound. */
    kv(&k, "deeper", TSR_GGUF_ARRAY);
    for (int d = 0; d < 100000; d++) put_u32(&k, TSR_GGUF_ARRAY), put_u64(&k, 1);
    gguf_file(&f, 3, 1, &k, 0, NULL, 0, 32);
    expect_open_fail(&f, TSR_EFORMAT, "nested deeper");
    wb_free(&f), wb_free(&k);
}

static void test_bad_alignment(void **state)
{
    static const uint32_t bad[] = {0, 3, 48, 0x80000001u};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct wb f = {0}, k = {0};
        kv(&k, "general.alignment", TSR_GGUF_U32), put_u32(&k, bad[i]);
        struct tdesc t[] = {{"a", 1, {4}, TSR_F32, 16, AUTO}};
        gguf_file(&f, 3, 1, &k, 1, t, 1, 32);
        expect_open_fail(&f, TSR_EFORMAT, "general.alignment");
        assert_non_null(strstr(tsr_last_error(), "power of two"));
        wb_free(&f), wb_free(&k);
    }
    struct wb f = {0}, k = {0};
    kv(&k, "general.alignment", TSR_GGUF_STRING), put_str(&k, "32");
    gguf_file(&f, 3, 1, &k, 0, NULL, 0, 32);
    expect_open_fail(&f, TSR_EFORMAT, "not an integer");
    wb_free(&f), wb_free(&k);
    /* Alignment 1 is legal: no padding at all. */
    kv(&k, "general.alignment", TSR_GGUF_U32), put_u32(&k, 1);
    struct tdesc t[] = {{"a", 1, {3}, TSR_F16, 6, AUTO}, {"b", 1, {1}, TSR_F32, 4, AUTO}};
    gguf_file(&f, 3, 1, &k, 2, t, 2, 1);
    tsr_gguf_t *g;
    assert_int_equal(tsr_gguf_open_mem(f.p, f.n, "a1.gguf", &g), 0);
    assert_int_equal(tsr_gguf_alignment(g), 1);
    assert_int_equal(tsr_gguf_find_tensor(g, "b")->offset, 6);
    tsr_gguf_close(g);
    wb_free(&f), wb_free(&k);
}

/* One tensor described by t (offset AUTO means 0) must fail with code and substr. */
static void one_tensor_fails(struct tdesc t, int code, const char *substr)
{
    struct wb f = {0};
    gguf_file(&f, 3, 0, NULL, 1, &t, 1, 32);
    expect_open_fail(&f, code, substr);
    if (t.name) assert_non_null(strstr(tsr_last_error(), t.name));
    wb_free(&f);
}

static void test_bad_tensors(void **state)
{
    one_tensor_fails((struct tdesc){"blk.0.q2k", 2, {256, 2}, 10, 168, AUTO}, TSR_EUNSUPPORTED,
                     "type 10 (Q2_K)");
    one_tensor_fails((struct tdesc){"weird", 1, {4}, 1000, 16, AUTO}, TSR_EUNSUPPORTED,
                     "type 1000");
    one_tensor_fails((struct tdesc){"neg", 1, {4}, 0x80000000u, 16, AUTO}, TSR_EUNSUPPORTED,
                     "type 2147483648");
    one_tensor_fails((struct tdesc){"nd0", 0, {0}, TSR_F32, 4, AUTO}, TSR_EFORMAT, "n_dims 0");
    one_tensor_fails((struct tdesc){"nd5", 5, {1, 1, 1, 1, 1}, TSR_F32, 4, AUTO}, TSR_EFORMAT,
                     "n_dims 5");
    one_tensor_fails((struct tdesc){"dim0", 2, {4, 0}, TSR_F32, 0, AUTO}, TSR_EFORMAT,
                     "dimension 1 is 0");
    one_tensor_fails((struct tdesc){"dimneg", 1, {1ull << 63}, TSR_F32, 0, AUTO}, TSR_EFORMAT,
                     "dimension 0");
    one_tensor_fails((struct tdesc){"ovf", 3, {32, 1ull << 40, 1ull << 40}, TSR_F32, 0, AUTO},
                     TSR_EFORMAT, "element count overflows");
    one_tensor_fails((struct tdesc){"ovf2", 4, {2, 1ull << 31, 1ull << 31, 2}, TSR_F32, 0, AUTO},
                     TSR_EFORMAT, "element count overflows");
    /* Element count fits in int64 but bytes do not: 2^62 f32s. */
    one_tensor_fails((struct tdesc){"ovfb", 2, {1ull << 30, 1ull << 31}, TSR_F32, 0, AUTO},
                     TSR_EFORMAT, "runs past end of file");
    one_tensor_fails((struct tdesc){"ovfc", 2, {1ull << 32, 1ull << 30}, TSR_F32, 0, AUTO},
                     TSR_EFORMAT, "byte size overflows");
    one_tensor_fails((struct tdesc){"blk", 1, {33}, TSR_Q8_0, 34, AUTO}, TSR_EFORMAT,
                     "not a multiple of the Q8_0 block size 32");
    one_tensor_fails((struct tdesc){"blk.0.q4k", 2, {320, 2}, TSR_Q4_K, 288, AUTO}, TSR_EFORMAT,
                     "row length 320 is not a multiple of the Q4_K block size 256");
    one_tensor_fails((struct tdesc){"past", 1, {4}, TSR_F32, 0, 1024}, TSR_EFORMAT,
                     "data [offset 1024, 16 bytes) runs past end of file");
    one_tensor_fails((struct tdesc){"wrap", 1, {4}, TSR_F32, 0, UINT64_MAX - 31}, TSR_EFORMAT,
                     "runs past end of file");
    one_tensor_fails((struct tdesc){"mis", 1, {4}, TSR_F32, 32, 8}, TSR_EFORMAT,
                     "offset 8 is not a multiple of the alignment 32");

    /* Data one byte short. */
    struct wb f = {0};
    struct tdesc t = {"short", 1, {8}, TSR_F32, 32, AUTO};
    gguf_file(&f, 3, 0, NULL, 1, &t, 1, 32);
    f.n--;
    expect_open_fail(&f, TSR_EFORMAT, "'short': data [offset 0, 32 bytes) runs past end of file");
    wb_free(&f);
}

static void test_duplicate_tensor(void **state)
{
    struct wb f = {0};
    struct tdesc t[] = {{"x", 1, {4}, TSR_F32, 16, AUTO},
                        {"y", 1, {4}, TSR_F32, 16, AUTO},
                        {"x", 1, {8}, TSR_F16, 16, AUTO}};
    gguf_file(&f, 3, 0, NULL, 3, t, 3, 32);
    expect_open_fail(&f, TSR_EFORMAT, "duplicate tensor name 'x'");
    wb_free(&f);
}

/* The smallest valid file: a header with no kvs and no tensors. (60 s of fuzzing found no
 * crash; inputs that ever do belong here.) */
static void test_minimal_file(void **state)
{
    /* Header claims 0 tensors and kvs, file ends after the counts. */
    struct wb f = {0};
    gguf_file(&f, 3, 0, NULL, 0, NULL, 0, 32);
    tsr_gguf_t *g;
    assert_int_equal(tsr_gguf_open_mem(f.p, f.n, "empty.gguf", &g), 0);
    assert_int_equal(tsr_gguf_n_kv(g), 0);
    assert_int_equal(tsr_gguf_find_kv(g, "a"), -1);
    tsr_gguf_close(g);
    wb_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_getters),        cmocka_unit_test(test_v2_default_alignment_and_file),
        cmocka_unit_test(test_no_tensors),     cmocka_unit_test(test_real_model),
        cmocka_unit_test(test_truncated),      cmocka_unit_test(test_bad_magic_and_version),
        cmocka_unit_test(test_absurd_counts),  cmocka_unit_test(test_bad_strings),
        cmocka_unit_test(test_bad_value_type), cmocka_unit_test(test_duplicate_key),
        cmocka_unit_test(test_deep_nesting),   cmocka_unit_test(test_bad_alignment),
        cmocka_unit_test(test_bad_tensors),    cmocka_unit_test(test_duplicate_tensor),
        cmocka_unit_test(test_minimal_file),
    };
    return tsr_test_exit(cmocka_run_group_tests(tests, NULL, NULL));
}
