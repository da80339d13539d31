/* Synthetic weights are generated per slice (tsr_model_read): any row or column range of a tensor
 * is byte for byte those elements of the whole tensor, in every weight type, so a rank of a
 * sharded group can make only its share. Also the views (no data until read) and range errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/status.h"
#include "model/model.h"
#include "model/shard_plan.h"

static const char *const specs[] = {"synthetic:tiny-gqa4", "synthetic:tiny-gqa4:bf16",
                                    "synthetic:tiny-gqa4:q8_0", "synthetic:tiny-gqa4:q4_1"};

static const char *const tensors[] = {"token_embd.weight",     "output.weight",
                                      "output_norm.weight",    "blk.0.attn_norm.weight",
                                      "blk.1.attn_q.weight",   "blk.2.attn_k.weight",
                                      "blk.3.attn_v.weight",   "blk.0.attn_output.weight",
                                      "blk.2.ffn_gate.weight", "blk.1.ffn_up.weight",
                                      "blk.3.ffn_down.weight", "blk.3.ffn_norm.weight"};

/* The whole tensor through tsr_model_read. Caller frees. */
static char *read_whole(tsr_model_t *m, const char *name, struct tsr_tensor_view *v)
{
    assert_int_equal(tsr_model_tensor(m, name, v), 0);
    char *w = malloc(v->nbytes);
    assert_non_null(w);
    assert_int_equal(tsr_model_read(m, name, 0, v->rows, 0, v->cols, w), 0);
    return w;
}

/* rows [r0, r0+nr) x columns [c0, c0+nc) read alone equal the same bytes of the whole tensor. */
static void check_slice(tsr_model_t *m, const char *name, const struct tsr_tensor_view *v,
                        const char *whole, int64_t r0, int64_t nr, int64_t c0, int64_t nc)
{
    size_t row = v->nbytes / (size_t)v->rows, piece = tsr_dtype_row_bytes(v->type, nc);
    size_t skip = c0 ? tsr_dtype_row_bytes(v->type, c0) : 0;
    assert_true(piece > 0);
    char *got = malloc(piece * (size_t)nr);
    assert_non_null(got);
    memset(got, 0xa5, piece * (size_t)nr); /* poisoned: every byte must be written */
    assert_int_equal(tsr_model_read(m, name, r0, nr, c0, nc, got), 0);
    for (int64_t i = 0; i < nr; i++)
        assert_memory_equal(got + (size_t)i * piece, whole + (size_t)(r0 + i) * row + skip, piece);
    free(got);
}

static void test_views_hold_no_data(void **state)
{
    (void)state;
    tsr_model_t *m;
    assert_int_equal(tsr_model_open("synthetic:tiny-gqa4:q4_1", &m), 0);
    struct tsr_tensor_view v;
    assert_int_equal(tsr_model_tensor(m, "blk.2.ffn_down.weight", &v), 0);
    assert_int_equal(v.generated, 1);
    assert_int_equal(v.mapped, 0);
    assert_null(v.data);
    assert_int_equal(v.type, TSR_Q4_1);
    assert_int_equal(v.rows, 128);
    assert_int_equal(v.cols, 256);
    assert_int_equal(v.nbytes, 128 * tsr_dtype_row_bytes(TSR_Q4_1, 256));
    assert_int_equal(tsr_model_tensor(m, "blk.2.ffn_norm.weight", &v), 0);
    assert_int_equal(v.type, TSR_F32); /* norms stay f32 */
    assert_int_equal(tsr_model_tensor(m, "blk.4.ffn_down.weight", &v), TSR_ENOTFOUND);
    tsr_model_free(m);
}

/* Row ranges, column ranges (on 32-element blocks), and both at once, in every weight type. */
static void test_slices_equal_whole(void **state)
{
    (void)state;
    for (size_t s = 0; s < sizeof specs / sizeof specs[0]; s++) {
        tsr_model_t *m;
        assert_int_equal(tsr_model_open(specs[s], &m), 0);
        for (size_t t = 0; t < sizeof tensors / sizeof tensors[0]; t++) {
            struct tsr_tensor_view v;
            char *whole = read_whole(m, tensors[t], &v);
            int64_t R = v.rows, C = v.cols;
            check_slice(m, tensors[t], &v, whole, 0, R, 0, C);
            check_slice(m, tensors[t], &v, whole, R / 4, R / 2 > 0 ? R / 2 : 1, 0, C); /* rows */
            check_slice(m, tensors[t], &v, whole, R - 1, 1, 0, C);
            check_slice(m, tensors[t], &v, whole, 0, R, 32, C - 64); /* columns */
            check_slice(m, tensors[t], &v, whole, 0, R, C - 32, 32);
            check_slice(m, tensors[t], &v, whole, R / 2, R - R / 2, 64, 32); /* a block */
            free(whole);
        }
        tsr_model_free(m);
    }
}

/* Every rank's slice under the shard plan (tp = 2 and 4), read alone, equals its bytes of the
 * whole tensor as tsr_slice_bytes places them: what the loader asks for on each rank. */
static void test_shard_plan_slices(void **state)
{
    (void)state;
    for (size_t s = 0; s < sizeof specs / sizeof specs[0]; s++) {
        tsr_model_t *m;
        assert_int_equal(tsr_model_open(specs[s], &m), 0);
        for (int tp = 2; tp <= 4; tp += 2) {
            struct tsr_shard_plan plan;
            assert_int_equal(tsr_shard_plan_make(tsr_model_config(m), tp, 1, 2.0, 4.0, &plan), 0);
            for (int k = 0; k < plan.world; k++) {
                const struct tsr_rank_plan *rp = &plan.ranks[k];
                for (int i = 0; i < rp->n_slices; i++) {
                    const struct tsr_slice *sl = &rp->slices[i];
                    struct tsr_tensor_view v;
                    if (tsr_model_tensor(m, sl->name, &v)) continue; /* output, when tied */
                    struct tsr_slice_bytes sb;
                    assert_int_equal(tsr_slice_bytes(sl, v.type, &sb), 0);
                    int64_t r0 = 0, nr = v.rows, c0 = 0, nc = v.cols;
                    if (sl->split == TSR_SPLIT_ROWS) r0 = sl->offset, nr = sl->length;
                    if (sl->split == TSR_SPLIT_COLS) c0 = sl->offset, nc = sl->length;
                    size_t n = tsr_dtype_row_bytes(v.type, nc) * (size_t)nr;
                    assert_int_equal(n, sb.row_bytes * (size_t)sb.n_rows);
                    char *whole = read_whole(m, sl->name, &v), *got = malloc(n);
                    assert_non_null(got);
                    assert_int_equal(tsr_model_read(m, sl->name, r0, nr, c0, nc, got), 0);
                    for (int64_t j = 0; j < sb.n_rows; j++)
                        assert_memory_equal(got + (size_t)j * sb.row_bytes,
                                            whole + sb.offset + (size_t)j * sb.stride,
                                            sb.row_bytes);
                    free(got);
                    free(whole);
                }
            }
            tsr_shard_plan_free(&plan);
        }
        tsr_model_free(m);
    }
}

/* Two models of the same spec make the same bytes; values are in the generator's range. */
static void test_deterministic_and_scaled(void **state)
{
    (void)state;
    tsr_model_t *a, *b;
    assert_int_equal(tsr_model_open("synthetic:tiny-gqa4", &a), 0);
    assert_int_equal(tsr_model_open("synthetic:tiny-gqa4", &b), 0);
    struct tsr_tensor_view v;
    float *x = (float *)read_whole(a, "blk.1.ffn_down.weight", &v); /* 128 x 256 */
    float *y = (float *)read_whole(b, "blk.1.ffn_down.weight", &v);
    assert_memory_equal(x, y, v.nbytes);
    float lim = 0.1083f; /* sqrt(3 / 256) = 0.10825 */
    double sum2 = 0;
    for (int64_t i = 0; i < v.rows * v.cols; i++) {
        assert_true(x[i] > -lim && x[i] < lim);
        sum2 += (double)x[i] * x[i];
    }
    assert_true(sum2 / (double)(v.rows * v.cols) > 0.8 / 256 && /* variance 1/cols */
                sum2 / (double)(v.rows * v.cols) < 1.2 / 256);
    float *ny = (float *)read_whole(a, "blk.1.attn_norm.weight", &v);
    for (int64_t i = 0; i < v.cols; i++) assert_true(ny[i] > 0.9f && ny[i] < 1.1f);
    free(ny);
    free(x);
    free(y);
    tsr_model_free(a);
    tsr_model_free(b);
}

static void test_bad_ranges(void **state)
{
    (void)state;
    tsr_model_t *m;
    assert_int_equal(tsr_model_open("synthetic:tiny-gqa4:q4_1", &m), 0);
    char buf[4096];
    const char *w = "blk.0.ffn_gate.weight"; /* 256 x 128 */
    assert_int_equal(tsr_model_read(m, w, 250, 7, 0, 32, buf), TSR_EINVAL);
    assert_int_equal(tsr_model_read(m, w, -1, 1, 0, 32, buf), TSR_EINVAL);
    assert_int_equal(tsr_model_read(m, w, 0, 1, 96, 64, buf), TSR_EINVAL);
    assert_int_equal(tsr_model_read(m, w, 0, 1, 16, 32, buf), TSR_EINVAL); /* off the blocks */
    assert_int_equal(tsr_model_read(m, w, 0, 1, 0, 48, buf), TSR_EINVAL);
    assert_int_equal(tsr_model_read(m, "blk.9.ffn_gate.weight", 0, 1, 0, 32, buf), TSR_ENOTFOUND);
    assert_int_equal(tsr_model_read(m, w, 3, 0, 0, 32, buf), 0); /* empty: nothing written */
    tsr_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_views_hold_no_data), cmocka_unit_test(test_slices_equal_whole),
        cmocka_unit_test(test_shard_plan_slices),  cmocka_unit_test(test_deterministic_and_scaled),
        cmocka_unit_test(test_bad_ranges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
