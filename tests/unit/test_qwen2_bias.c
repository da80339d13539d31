/* A Qwen2-shaped model with QKV biases (tests/reference/qwen2_tiny.gguf: 12 heads, 6 KV heads,
 * NEOX RoPE, tied embeddings) against the float64 forward written from the architecture in
 * tests/reference/make_qwen2_golden.py: every logit of a 20-token prompt. Dropping the biases
 * moves the logits by an NMSE of 0.84 (stored in the golden), so a lost bias cannot pass; the
 * same model at tp = 2 and 3 is held to this one-rank run by tests/mpi/test_shard_np2 and np3. */
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "common/status.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "worker/forward.h"

#include "unit.h"

#define REF(f)   TSR_SOURCE_DIR "/tests/reference/" f
#define MAX_DIFF 1e-4 /* logits of order 1 through 2 layers of f32 sums over <= 96 terms */
#define NMSE     1e-10

static void test_qwen2_bias(void **state)
{
    (void)state;
    json_error_t err;
    json_t *root = json_load_file(REF("qwen2_tiny_golden.json"), 0, &err);
    assert_non_null(root);
    json_t *toks = json_object_get(root, "tokens");
    int n = (int)json_array_size(toks),
        V = (int)json_integer_value(json_object_get(root, "n_vocab"));
    float *ref = malloc(sizeof(float) * (size_t)n * V),
          *got = malloc(sizeof(float) * (size_t)n * V);
    FILE *f = fopen(REF("qwen2_tiny_logits.bin"), "rb");
    assert_non_null(f);
    assert_int_equal(fread(ref, sizeof(float) * V, (size_t)n, f), (size_t)n);
    fclose(f);

    tsr_model_t *m;
    assert_int_equal(tsr_model_open(REF("qwen2_tiny.gguf"), &m), 0);
    assert_int_equal(tsr_model_config(m)->n_vocab, V);
    assert_true(tsr_model_config(m)->qkv_bias);
    tsr_backend_t *b = tsr_backend_cpu_new(1);
    struct tsr_runner_opts o = {.n_blocks = 2, .block_size = 16, .max_tokens = n};
    tsr_runner_t *r;
    assert_int_equal(tsr_runner_new(m, b, &o, NULL, &r), 0);
    int32_t ids[64];
    assert_true(n <= 64);
    for (int i = 0; i < n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(toks, (size_t)i));
    struct tsr_step st = tsr_test_step(ids, 0, n, 2);
    assert_int_equal(tsr_runner_forward(r, &st, got), 0);
    double num = 0, den = 0, worst = 0;
    for (size_t i = 0; i < (size_t)n * V; i++) {
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
        if (fabs(d) > worst) worst = fabs(d);
    }
    double without =
        json_number_value(json_object_get(json_object_get(root, "meta"), "nmse_without_bias"));
    printf("qwen2 with QKV bias vs float64: %d positions, max |diff| %.2g (bound %.0e), NMSE %.3g "
           "(bound %.0e; without the biases it would be %.2f)\n",
           n, worst, MAX_DIFF, num / den, NMSE, without);
    assert_true(worst <= MAX_DIFF);
    assert_true(num / den <= NMSE);
    assert_true(without > 1e3 * NMSE);
    tsr_runner_free(r);
    tsr_backend_free(b);
    tsr_model_free(m);
    free(ref);
    free(got);
    json_decref(root);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_qwen2_bias)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
