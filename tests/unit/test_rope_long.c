/* RoPE far past the CPU backend's cos/sin table (it covers positions < 32768; later ones are
 * computed per call), with Llama 3 and linear scaling, against float64 rotations
 * (tests/reference/make_rope_long_golden.py, rope_long_golden.json):
 *
 * 1. the inverse frequencies tessera derives from each config.json equal transformers' float64
 *    ones to float32 rounding (1e-6 relative);
 * 2. tsr_op_rope_kv_write, fed the golden's float32 frequencies, rotates q and k at positions 0
 *    to 500,000 (both pair layouts: halves for llama3, adjacent for linear) as the float64
 *    rotation does, within 1e-5 absolute on unit-sized inputs (float32 rounding of cos, sin and
 *    two products; measured: printed). An angle pos * f formed in float32 is off by up to
 *    pos * 2^-24 (0.03 rad at 500,000) and fails; so does any error in the per-call path. The k
 *    rows written to the cache are the rotated ones. */
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "kernels/backend.h"
#include "model/config.h"

#define GOLDEN TSR_SOURCE_DIR "/tests/reference/rope_long_golden.json"

static float *floats(json_t *arr, size_t n)
{
    assert_int_equal(json_array_size(arr), n);
    float *out = malloc(n * sizeof *out);
    for (size_t i = 0; i < n; i++) out[i] = (float)json_number_value(json_array_get(arr, i));
    return out;
}

/* A config.json of one small layer with the case's RoPE fields. */
static void config_of(json_t *fields, int hd, struct tsr_model_config *c)
{
    json_t *j = json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f}", "model_type", "llama",
                          "num_hidden_layers", 1, "hidden_size", 2 * hd, "intermediate_size", 128,
                          "num_attention_heads", 2, "num_key_value_heads", 1, "vocab_size", 100,
                          "max_position_embeddings", 524288, "rms_norm_eps", 1e-5);
    assert_non_null(j);
    assert_int_equal(json_object_update(j, fields), 0);
    char path[] = "/tmp/tsr-rope-long-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(json_dumpfd(j, fd, 0), 0);
    close(fd);
    json_decref(j);
    assert_int_equal(tsr_config_from_json(path, c), 0);
    unlink(path);
}

static void test_rope_long(void **state)
{
    json_error_t err;
    json_t *root = json_load_file(GOLDEN, 0, &err);
    if (!root)
        fail_msg("%s: %s (tests/reference/make_rope_long_golden.py makes it)", GOLDEN, err.text);
    json_t *jpos = json_object_get(root, "positions"), *cases = json_object_get(root, "cases");
    int n = (int)json_array_size(jpos);
    assert_true(n >= 10);
    int32_t pos[64], seq[64] = {0}, slot[64], bt[1] = {0};
    assert_true(n <= 64);
    int beyond = 0;
    for (int t = 0; t < n; t++) {
        pos[t] = (int32_t)json_integer_value(json_array_get(jpos, (size_t)t));
        slot[t] = t;
        beyond += pos[t] >= 32768;
    }
    assert_true(beyond >= 6);
    tsr_backend_t *b = tsr_backend_cpu_new(1);
    assert_non_null(b);
    for (size_t k = 0; k < json_array_size(cases); k++) {
        json_t *cs = json_array_get(cases, k);
        const char *name = json_string_value(json_object_get(cs, "name"));
        int hd = (int)json_integer_value(json_object_get(cs, "head_dim")), half = hd / 2;
        int neox = (int)json_integer_value(json_object_get(cs, "neox"));

        /* 1. the frequencies from the config */
        struct tsr_model_config c;
        config_of(json_object_get(cs, "config"), hd, &c);
        assert_int_equal(c.head_dim, hd);
        assert_int_equal(c.rope_scaling,
                         strcmp(name, "llama3") ? TSR_ROPE_LINEAR : TSR_ROPE_LLAMA3);
        float inv[256];
        tsr_rope_inv_freq(&c, NULL, inv);
        json_t *exact = json_object_get(cs, "inv_freq_exact");
        for (int i = 0; i < half; i++) {
            double want = json_number_value(json_array_get(exact, (size_t)i));
            if (fabs(inv[i] - want) > 1e-6 * want)
                fail_msg("%s: inv_freq[%d] %.9g, transformers %.9g", name, i, inv[i], want);
        }

        /* 2. the rotation: q and k the same vector (one head each), every position in one call */
        float *freq = floats(json_object_get(cs, "inv_freq_f32"), (size_t)half);
        float *x = floats(json_object_get(cs, "x"), (size_t)hd);
        float *qk = malloc(sizeof(float) * (size_t)n * hd);
        for (int t = 0; t < n; t++) memcpy(qk + (size_t)t * hd, x, sizeof(float) * hd);
        size_t bytes = sizeof(float) * (size_t)n * hd;
        tsr_buf_t *q = tsr_buf_alloc(b, bytes), *kb = tsr_buf_alloc(b, bytes),
                  *v = tsr_buf_alloc(b, bytes), *kc = tsr_buf_alloc(b, bytes),
                  *vc = tsr_buf_alloc(b, bytes), *fb = tsr_buf_alloc(b, sizeof(float) * half);
        assert_true(q && kb && v && kc && vc && fb);
        assert_int_equal(tsr_buf_set(q, 0, qk, bytes), 0);
        assert_int_equal(tsr_buf_set(kb, 0, qk, bytes), 0);
        assert_int_equal(tsr_buf_set(v, 0, qk, bytes), 0);
        assert_int_equal(tsr_buf_set(fb, 0, freq, sizeof(float) * half), 0);
        struct tsr_attn_shape s = {.n_head = 1,
                                   .n_kv_head = 1,
                                   .head_dim = hd,
                                   .block_size = n,
                                   .neox = neox,
                                   .scale = 1.0f,
                                   .inv_freq = fb};
        struct tsr_batch_meta m = {n, 1, 1, pos, seq, slot, bt, NULL, 0};
        assert_int_equal(tsr_op_rope_kv_write(b, q, kb, v, kc, vc, &s, &m), 0);
        float *gq = malloc(bytes), *gk = malloc(bytes);
        assert_int_equal(tsr_buf_get(q, 0, gq, bytes), 0);
        assert_int_equal(tsr_buf_get(kc, 0, gk, bytes), 0);
        json_t *rot = json_object_get(cs, "rotated");
        double worst = 0, worst_table = 0;
        for (int t = 0; t < n; t++) {
            json_t *row = json_array_get(rot, (size_t)t);
            for (int i = 0; i < hd; i++) {
                double want = json_number_value(json_array_get(row, (size_t)i));
                double e =
                    fmax(fabs(gq[(size_t)t * hd + i] - want), fabs(gk[(size_t)t * hd + i] - want));
                if (e > 1e-5)
                    fail_msg("%s: position %d element %d: q %.7f k %.7f, float64 %.7f", name,
                             pos[t], i, gq[(size_t)t * hd + i], gk[(size_t)t * hd + i], want);
                if (pos[t] >= 32768 && e > worst) worst = e;
                if (pos[t] < 32768 && e > worst_table) worst_table = e;
            }
        }
        printf("%s (head dim %d, %s pairs): %d positions; worst |diff| %.2g below 32768 (table), "
               "%.2g at 32768..%d (per call); bound 1e-5\n",
               name, hd, neox ? "half" : "adjacent", n, worst_table, worst, pos[n - 1]);
        tsr_buf_free(q), tsr_buf_free(kb), tsr_buf_free(v), tsr_buf_free(kc), tsr_buf_free(vc),
            tsr_buf_free(fb);
        free(gq), free(gk), free(qk), free(x), free(freq);
    }
    tsr_backend_free(b);
    json_decref(root);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rope_long),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
