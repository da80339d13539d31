/* Safetensors reader: files built in memory, malformed headers of every kind, and Hugging Face
 * directories (one file, shards with an index, shards without one) in a temporary directory. */
#include <dirent.h>
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
#include "model/safetensors.h"
#include "unit.h"

struct wb {
    uint8_t *p;
    size_t n;
};

/* u64 header length, the JSON, then data_len bytes of data (byte i is i & 0xff). */
static struct wb st_file(const char *json, size_t data_len)
{
    size_t h = strlen(json);
    struct wb b = {malloc(8 + h + data_len), 8 + h + data_len};
    assert_non_null(b.p);
    uint64_t hl = h;
    memcpy(b.p, &hl, 8);
    memcpy(b.p + 8, json, h);
    for (size_t i = 0; i < data_len; i++) b.p[8 + h + i] = (uint8_t)i;
    return b;
}

/* A header (with data_len data bytes) that must fail with code and a message naming the file
 * and containing substr. */
static void expect_fail(const char *json, size_t data_len, int code, const char *substr)
{
    struct wb b = st_file(json, data_len);
    tsr_st_t *st = (tsr_st_t *)1;
    EXPECT_ERR(tsr_st_open_mem(b.p, b.n, "bad.safetensors", &st), code, substr);
    assert_null(st);
    assert_non_null(strstr(tsr_last_error(), "bad.safetensors"));
    free(b.p);
}

static const char good_json[] =
    "{\"__metadata__\": {\"format\": \"pt\"},"
    " \"a\": {\"dtype\": \"F32\", \"shape\": [2, 3], \"data_offsets\": [0, 24]},"
    " \"b\": {\"dtype\": \"BF16\", \"shape\": [4], \"data_offsets\": [24, 32]},"
    " \"c\": {\"dtype\": \"F16\", \"shape\": [], \"data_offsets\": [32, 34]},"
    " \"e\": {\"dtype\": \"F32\", \"shape\": [0, 5], \"data_offsets\": [34, 34]},"
    " \"d\": {\"dtype\": \"F16\", \"shape\": [1, 2, 1, 3], \"data_offsets\": [34, 46]}}   ";
#define GOOD_DATA 46

static void test_good_file(void **state)
{
    struct wb b = st_file(good_json, GOOD_DATA);
    tsr_st_t *st;
    int rc = tsr_st_open_mem(b.p, b.n, "good.safetensors", &st);
    if (rc) fail_msg("open: %s", tsr_last_error());
    assert_int_equal(tsr_st_n_tensors(st), 5);
    const uint8_t *data = b.p + 8 + strlen(good_json);

    /* In file order: by offset, then name. */
    static const char *const order[] = {"a", "b", "c", "d", "e"};
    for (uint64_t i = 0; i < 5; i++) {
        assert_string_equal(tsr_st_tensor(st, i)->name, order[i]);
        assert_ptr_equal(tsr_st_find_tensor(st, order[i]), tsr_st_tensor(st, i));
    }
    assert_null(tsr_st_tensor(st, 5));
    assert_null(tsr_st_find_tensor(st, "__metadata__"));
    assert_null(tsr_st_find_tensor(st, "f"));

    const struct tsr_st_tensor *t = tsr_st_find_tensor(st, "a");
    assert_int_equal(t->type, TSR_F32);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->ne[0], 3), assert_int_equal(t->ne[1], 2);
    assert_int_equal(t->ne[2], 1), assert_int_equal(t->ne[3], 1);
    assert_int_equal(t->nbytes, 24);
    assert_ptr_equal(t->data, data);
    t = tsr_st_find_tensor(st, "b");
    assert_int_equal(t->type, TSR_BF16);
    assert_int_equal(t->n_dims, 1), assert_int_equal(t->ne[0], 4);
    assert_ptr_equal(t->data, data + 24);
    assert_int_equal(((const uint8_t *)t->data)[0], 24);
    t = tsr_st_find_tensor(st, "c");
    assert_int_equal(t->type, TSR_F16);
    assert_int_equal(t->n_dims, 0), assert_int_equal(t->ne[0], 1);
    assert_int_equal(t->nbytes, 2);
    t = tsr_st_find_tensor(st, "d");
    assert_int_equal(t->n_dims, 4);
    assert_int_equal(t->ne[0], 3), assert_int_equal(t->ne[1], 1);
    assert_int_equal(t->ne[2], 2), assert_int_equal(t->ne[3], 1);
    assert_int_equal(t->nbytes, 12);
    t = tsr_st_find_tensor(st, "e");
    assert_int_equal(t->nbytes, 0);
    assert_int_equal(t->ne[0], 5), assert_int_equal(t->ne[1], 0);
    tsr_st_close(st);

    /* Only a header, no tensors: fine. */
    struct wb e = st_file("{}", 0);
    assert_int_equal(tsr_st_open_mem(e.p, e.n, "empty", &st), 0);
    assert_int_equal(tsr_st_n_tensors(st), 0);
    assert_null(tsr_st_find_tensor(st, "a"));
    tsr_st_close(st);
    free(e.p);
    free(b.p);
}

/* Every strict prefix of the good file fails cleanly (its data ends with the last tensor). */
static void test_truncated(void **state)
{
    struct wb b = st_file(good_json, GOOD_DATA);
    for (size_t cut = 0; cut < b.n; cut++) {
        uint8_t *copy = malloc(cut ? cut : 1);
        memcpy(copy, b.p, cut);
        tsr_st_t *st = NULL;
        int rc = tsr_st_open_mem(copy, cut, "cut.safetensors", &st);
        if (rc != TSR_EFORMAT) fail_msg("cut at %zu: rc %d: %s", cut, rc, tsr_last_error());
        assert_null(st);
        free(copy);
    }
    tsr_st_t *st;
    EXPECT_ERR(tsr_st_open_mem(b.p, 5, "short.st", &st), TSR_EFORMAT, "too short");
    EXPECT_ERR(tsr_st_open_mem(b.p, 100, "short.st", &st), TSR_EFORMAT,
               "runs past end of file (100 bytes)");
    EXPECT_ERR(tsr_st_open_mem(b.p, b.n - 1, "short.st", &st), TSR_EFORMAT,
               "'d': data_offsets [34, 46] run past the end of the data section (45 bytes)");
    free(b.p);
}

static void test_bad_header(void **state)
{
    expect_fail("{", 0, TSR_EFORMAT, "not valid JSON");
    expect_fail("{\"a\": 1,}", 0, TSR_EFORMAT, "not valid JSON");
    expect_fail("", 0, TSR_EFORMAT, "not valid JSON");
    expect_fail("{} x", 0, TSR_EFORMAT, "not valid JSON");
    expect_fail("[1, 2]", 0, TSR_EFORMAT, "not a JSON object");
    expect_fail("\"str\"", 0, TSR_EFORMAT, "not valid JSON"); /* jansson wants array/object */
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
                " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
                4, TSR_EFORMAT, "duplicate");

    /* Header length larger than the file, and larger than the header bound (EINVAL). */
    struct wb b = st_file("{}", 0);
    uint64_t hl = 1000;
    memcpy(b.p, &hl, 8);
    tsr_st_t *st;
    EXPECT_ERR(tsr_st_open_mem(b.p, b.n, "h.st", &st), TSR_EFORMAT,
               "header length 1000 runs past end of file (10 bytes)");
    hl = UINT64_MAX;
    memcpy(b.p, &hl, 8);
    EXPECT_ERR(tsr_st_open_mem(b.p, b.n, "h.st", &st), TSR_EFORMAT, "runs past end of file");
    free(b.p);
    size_t big = (100u << 20) + 16;
    uint8_t *huge = calloc(1, big); /* untouched zero pages: cheap */
    assert_non_null(huge);
    hl = 100u << 20;
    memcpy(huge, &hl, 8);
    EXPECT_ERR(tsr_st_open_mem(huge, big, "huge.st", &st), TSR_EINVAL, "limit");
    free(huge);
}

static void test_bad_entries(void **state)
{
    expect_fail("{\"a\": 5}", 0, TSR_EFORMAT, "'a': entry is not a JSON object");
    expect_fail("{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, TSR_EFORMAT,
                "'a': missing or non-string \"dtype\"");
    expect_fail("{\"a\": {\"dtype\": 3, \"shape\": [1], \"data_offsets\": [0, 4]}}", 4, TSR_EFORMAT,
                "\"dtype\"");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4, TSR_EFORMAT,
                "'a': missing or non-array \"shape\"");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4, TSR_EFORMAT,
                "'a': \"data_offsets\" must be");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}", 4,
                TSR_EFORMAT, "\"data_offsets\" must be");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4, 8]}}", 8,
                TSR_EFORMAT, "\"data_offsets\" must be");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4.0]}}", 4,
                TSR_EFORMAT, "\"data_offsets\" must be");
    /* Offsets. */
    expect_fail("{\"w\": {\"dtype\": \"F32\", \"shape\": [250], \"data_offsets\": [0, 1000]}}", 8,
                TSR_EFORMAT, "'w': data_offsets [0, 1000] run past the end of the data section");
    expect_fail("{\"w\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [8, 4]}}", 8,
                TSR_EFORMAT, "'w': bad data_offsets [8, 4]");
    expect_fail("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 8,
                TSR_EFORMAT, "bad data_offsets [-4, 0]");
    expect_fail("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": "
                "[9223372036854775807, 9223372036854775807]}}",
                8, TSR_EFORMAT, "run past the end");
    expect_fail("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": "
                "[0, 99999999999999999999]}}",
                8, TSR_EFORMAT, "not valid JSON"); /* too big for an integer */
    /* Shapes. */
    expect_fail("{\"w\": {\"dtype\": \"F32\", \"shape\": [2, 3], \"data_offsets\": [0, 20]}}", 24,
                TSR_EFORMAT, "'w': shape holds 6 F32 elements but data_offsets [0, 20] span 20");
    expect_fail("{\"w\": {\"dtype\": \"BF16\", \"shape\": [2, 3], \"data_offsets\": [0, 24]}}", 24,
                TSR_EFORMAT, "shape holds 6 BF16 elements");
    expect_fail("{\"w\": {\"dtype\": \"F32\", \"shape\": [-1, 3], \"data_offsets\": [0, 12]}}", 24,
                TSR_EFORMAT, "'w': shape[0] is not a non-negative integer");
    expect_fail("{\"w\": {\"dtype\": \"F32\", \"shape\": [3, 1.5], \"data_offsets\": [0, 12]}}", 24,
                TSR_EFORMAT, "shape[1] is not a non-negative integer");
    expect_fail("{\"w\": {\"dtype\": \"F32\", \"shape\": [\"3\"], \"data_offsets\": [0, 12]}}", 24,
                TSR_EFORMAT, "shape[0]");
    expect_fail("{\"w\": {\"dtype\": \"F32\", \"shape\": [1099511627776, 1099511627776], "
                "\"data_offsets\": [0, 12]}}",
                24, TSR_EFORMAT, "'w': element count overflows");
    expect_fail("{\"w\": {\"dtype\": \"F32\", \"shape\": [4611686018427387904], "
                "\"data_offsets\": [0, 0]}}",
                24, TSR_EFORMAT, "shape holds");
    expect_fail("{\"w\": {\"dtype\": \"F32\", \"shape\": [1, 1, 1, 1, 1], "
                "\"data_offsets\": [0, 4]}}",
                4, TSR_EUNSUPPORTED, "'w': 5 dimensions");
    /* Dtypes. */
    /* I8 is read (as bare int8 codes: test_int8_checkpoint); the other integer types are not. */
    expect_fail("{\"q\": {\"dtype\": \"I16\", \"shape\": [4], \"data_offsets\": [0, 8]}}", 8,
                TSR_EUNSUPPORTED, "'q': dtype I16 is not supported");
    expect_fail("{\"q\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [0, 4]}}", 4,
                TSR_EUNSUPPORTED, "'q': dtype U8 is not supported");
    expect_fail("{\"q\": {\"dtype\": \"I8\", \"shape\": [4], \"data_offsets\": [0, 8]}}", 8,
                TSR_EFORMAT, "shape holds 4 I8 elements but data_offsets [0, 8] span 8 bytes");
    expect_fail("{\"q\": {\"dtype\": \"F64\", \"shape\": [1], \"data_offsets\": [0, 8]}}", 8,
                TSR_EUNSUPPORTED, "'q': dtype F64");
    /* F8_E4M3 is read (as bare codes: test_fp8_checkpoint); the other FP8 formats are not. */
    expect_fail("{\"q\": {\"dtype\": \"F8_E5M2\", \"shape\": [4], \"data_offsets\": [0, 4]}}", 4,
                TSR_EUNSUPPORTED, "'q': dtype F8_E5M2 is not supported");
    expect_fail("{\"q\": {\"dtype\": \"F8_E8M0\", \"shape\": [4], \"data_offsets\": [0, 4]}}", 4,
                TSR_EUNSUPPORTED, "'q': dtype F8_E8M0 is not supported");
    expect_fail("{\"q\": {\"dtype\": \"f32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
                TSR_EFORMAT, "'q': unknown dtype");
}

/* ---- directories ------------------------------------------------------------------------ */

static void write_file(const char *dir, const char *name, const void *p, size_t n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

static void write_st(const char *dir, const char *name, const char *json, size_t data_len)
{
    struct wb b = st_file(json, data_len);
    write_file(dir, name, b.p, b.n);
    free(b.p);
}

static void write_text(const char *dir, const char *name, const char *text)
{
    write_file(dir, name, text, strlen(text));
}

static void remove_file(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    assert_int_equal(unlink(path), 0);
}

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) remove_file(dir, de->d_name);
    closedir(d);
    assert_int_equal(rmdir(dir), 0);
}

#define SHARD1 "model-00001-of-00002.safetensors"
#define SHARD2 "model-00002-of-00002.safetensors"
static const char shard1_json[] =
    "{\"x.weight\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
    " \"x.bias\": {\"dtype\": \"F16\", \"shape\": [2], \"data_offsets\": [8, 12]}}";
static const char shard2_json[] =
    "{\"__metadata__\": {\"format\": \"pt\"},"
    " \"y.weight\": {\"dtype\": \"BF16\", \"shape\": [3, 2], \"data_offsets\": [0, 12]}}";

static void test_dir_index(void **state)
{
    char dir[] = "/tmp/test_st_XXXXXX";
    assert_non_null(mkdtemp(dir));
    write_st(dir, SHARD1, shard1_json, 12);
    write_st(dir, SHARD2, shard2_json, 12);
    write_text(dir, "config.json", "{}");
    write_text(dir, "model.safetensors.index.json",
               "{\"metadata\": {\"total_size\": 24}, \"weight_map\": {"
               "\"x.weight\": \"" SHARD1 "\", \"y.weight\": \"" SHARD2 "\","
               " \"x.bias\": \"" SHARD1 "\"}}");
    tsr_st_t *st;
    int rc = tsr_st_open_dir(dir, &st);
    if (rc) fail_msg("open_dir: %s", tsr_last_error());
    assert_int_equal(tsr_st_n_tensors(st), 3);
    assert_string_equal(tsr_st_tensor(st, 0)->name, "x.weight");
    assert_string_equal(tsr_st_tensor(st, 1)->name, "x.bias");
    assert_string_equal(tsr_st_tensor(st, 2)->name, "y.weight");
    const struct tsr_st_tensor *t = tsr_st_find_tensor(st, "y.weight");
    assert_non_null(t);
    assert_int_equal(t->type, TSR_BF16);
    assert_int_equal(t->ne[0], 2), assert_int_equal(t->ne[1], 3);
    for (int i = 0; i < 12; i++) assert_int_equal(((const uint8_t *)t->data)[i], i);
    t = tsr_st_find_tensor(st, "x.bias");
    assert_int_equal(((const uint8_t *)t->data)[0], 8);
    tsr_st_close(st);

    /* The index names the wrong shard for a tensor. */
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"x.weight\": \"" SHARD2 "\", \"y.weight\": \"" SHARD1 "\"}}");
    EXPECT_ERR(tsr_st_open_dir(dir, &st), TSR_EFORMAT,
               "tensor 'x.weight' is listed in " SHARD2 " but found in");
    assert_null(st);
    /* ... or a tensor no shard has. */
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"z\": \"" SHARD2 "\", \"y.weight\": \"" SHARD2 "\"}}");
    EXPECT_ERR(tsr_st_open_dir(dir, &st), TSR_EFORMAT,
               "tensor 'z' is listed in " SHARD2 " but missing");
    /* ... or a shard that is not there. */
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"z\": \"model-00003-of-00003.safetensors\"}}");
    EXPECT_ERR(tsr_st_open_dir(dir, &st), TSR_ENOTFOUND, "model-00003-of-00003.safetensors");
    /* ... or a path out of the directory. */
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": {\"z\": \"../x\"}}");
    EXPECT_ERR(tsr_st_open_dir(dir, &st), TSR_EFORMAT, "not a plain file name");
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": {\"z\": 3}}");
    EXPECT_ERR(tsr_st_open_dir(dir, &st), TSR_EFORMAT, "weight_map['z'] is not a string");
    write_text(dir, "model.safetensors.index.json", "{\"weight\": {}}");
    EXPECT_ERR(tsr_st_open_dir(dir, &st), TSR_EFORMAT, "no \"weight_map\"");
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": ");
    EXPECT_ERR(tsr_st_open_dir(dir, &st), TSR_EFORMAT, "model.safetensors.index.json: not valid");
    /* A malformed shard names itself. */
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"y.weight\": \"" SHARD2 "\"}}");
    write_text(dir, SHARD2, "junk");
    EXPECT_ERR(tsr_st_open_dir(dir, &st), TSR_EFORMAT, SHARD2 ": file is 4 bytes");
    remove_dir(dir);
}

static void test_dir_single_and_glob(void **state)
{
    char dir[] = "/tmp/test_st_XXXXXX";
    assert_non_null(mkdtemp(dir));
    tsr_st_t *st;
    EXPECT_ERR(tsr_st_open_dir(dir, &st), TSR_ENOTFOUND, "no model.safetensors.index.json");
    EXPECT_ERR(tsr_st_open_dir("/nonexistent/dir", &st), TSR_ENOTFOUND, "/nonexistent/dir");

    /* Shards without an index: all of them, in name order. */
    write_st(dir, SHARD2, shard2_json, 12);
    write_st(dir, SHARD1, shard1_json, 12);
    int rc = tsr_st_open_dir(dir, &st);
    if (rc) fail_msg("open_dir: %s", tsr_last_error());
    assert_int_equal(tsr_st_n_tensors(st), 3);
    assert_string_equal(tsr_st_tensor(st, 0)->name, "x.weight");
    assert_string_equal(tsr_st_tensor(st, 2)->name, "y.weight");
    tsr_st_close(st);

    /* A tensor in two shards. */
    write_st(dir, "extra.safetensors", shard1_json, 12);
    EXPECT_ERR(tsr_st_open_dir(dir, &st), TSR_EFORMAT, "appears in both");
    assert_non_null(strstr(tsr_last_error(), "extra.safetensors"));
    assert_non_null(strstr(tsr_last_error(), SHARD1));

    /* model.safetensors wins over the other files. */
    write_st(dir, "model.safetensors", good_json, GOOD_DATA);
    rc = tsr_st_open_dir(dir, &st);
    if (rc) fail_msg("open_dir: %s", tsr_last_error());
    assert_int_equal(tsr_st_n_tensors(st), 5);
    assert_non_null(tsr_st_find_tensor(st, "d"));
    assert_null(tsr_st_find_tensor(st, "x.weight"));
    tsr_st_close(st);

    /* One file by path. */
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, "model.safetensors");
    rc = tsr_st_open(path, &st);
    if (rc) fail_msg("open: %s", tsr_last_error());
    assert_int_equal(tsr_st_n_tensors(st), 5);
    tsr_st_close(st);
    write_text(dir, "model.safetensors", "");
    EXPECT_ERR(tsr_st_open(path, &st), TSR_EFORMAT, "model.safetensors: file is 0 bytes");
    EXPECT_ERR(tsr_st_open_dir(dir, &st), TSR_EFORMAT, "too short");
    EXPECT_ERR(tsr_st_open("/nonexistent.safetensors", &st), TSR_ENOTFOUND,
               "/nonexistent.safetensors");
    EXPECT_ERR(tsr_st_open(dir, &st), TSR_EIO, "not a readable regular file");
    remove_dir(dir);
}

/* Edge inputs: empty, and a NUL inside the JSON. (60 s of fuzzing found no crash; inputs that
 * ever do belong here.) */
static void test_edge_inputs(void **state)
{
    tsr_st_t *st;
    /* Zero-length input and a NUL inside the header. */
    EXPECT_ERR(tsr_st_open_mem("", 0, "z", &st), TSR_EFORMAT, "too short");
    static const uint8_t nul[] = {4, 0, 0, 0, 0, 0, 0, 0, '{', 0, '}', ' '};
    EXPECT_ERR(tsr_st_open_mem(nul, sizeof nul, "nul", &st), TSR_EFORMAT, "not valid JSON");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_file),   cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_bad_header),  cmocka_unit_test(test_bad_entries),
        cmocka_unit_test(test_dir_index),   cmocka_unit_test(test_dir_single_and_glob),
        cmocka_unit_test(test_edge_inputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
