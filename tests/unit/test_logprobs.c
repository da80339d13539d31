/* The logprobs the engine reports, on the default model, against an independent oracle: the
 * float64 log-softmax of the teacher-forced logits of
 * tests/reference/forward_exact_smollm2_rows.bin (the model's dequantized weights run in float64
 * numpy by make_exact_golden.py; 21 full rows).
 *
 * For each row's prefix the engine generates one token with a greedy sampler and with three
 * seeded samplers at temperature 1.2 (so that picks well below the argmax are checked too); the
 * reported logprob of the picked token must equal the oracle's log-softmax at that token. Bound:
 * our logits are within 5e-4 of the oracle's over each position's top 16 (test_forward_golden)
 * and a log-softmax moves by at most twice the largest logit error, so 1e-3; measured: printed.
 * A logprob without its log-sum-exp term (0 for every greedy pick) is off by the pick's whole
 * -logprob, which the test requires to exceed 0.1 at several greedy picks.
 *
 * Every sampler also asks for the top 5 alternatives: each must carry the oracle's log-softmax
 * at its id, and the j-th the oracle's j-th largest (both within the same bound, which near-ties
 * at the fifth place cannot break); the greedy pick is the first of them. */
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kernels/backend.h"
#include "model/model.h"
#include "worker/engine.h"

#include "unit.h"

#define MODEL      TSR_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define GOLDEN     TSR_SOURCE_DIR "/tests/reference/forward_exact_smollm2.json"
#define ROWS       TSR_SOURCE_DIR "/tests/reference/forward_exact_smollm2_rows.bin"
#define N_SAMPLERS 4
#define TOL        2e-3
#define TOP        5

static float *read_rows(size_t *n_floats)
{
    FILE *f = fopen(ROWS, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *n_floats = (size_t)ftell(f) / 4;
    fseek(f, 0, SEEK_SET);
    float *rows = malloc(*n_floats * 4);
    assert_non_null(rows);
    assert_int_equal(fread(rows, 4, *n_floats, f), *n_floats);
    fclose(f);
    return rows;
}

static void test_logprobs_vs_float64(void **state)
{
    if (tsr_test_missing(MODEL, "run scripts/fetch_model.sh") ||
        tsr_test_missing(GOLDEN, "tests/reference/make_exact_golden.py") ||
        tsr_test_missing(ROWS, "tests/reference/make_exact_golden.py"))
        return;
    json_error_t jerr;
    json_t *root = json_load_file(GOLDEN, 0, &jerr);
    assert_non_null(root);
    size_t n_floats;
    float *rows = read_rows(&n_floats);
    tsr_backend_t *b = tsr_backend_cpu_new(2);
    tsr_model_t *m;
    assert_int_equal(tsr_model_open(MODEL, &m), 0);
    int V = tsr_model_config(m)->n_vocab;
    struct tsr_engine_opts o = {
        .n_blocks = 64, .block_size = 16, .max_step_tokens = 512, .max_seqs = N_SAMPLERS};
    tsr_engine_t *e;
    assert_int_equal(tsr_engine_new(m, b, &o, &e), 0);

    json_t *prompts = json_object_get(root, "prompts"),
           *index = json_object_get(root, "rows_index");
    double worst = 0, worst_top = 0;
    int checked = 0, not_argmax = 0, greedy_far = 0;
    for (size_t r = 0; r < json_array_size(index); r++) {
        json_t *ri = json_array_get(index, r);
        size_t p = (size_t)json_integer_value(json_object_get(ri, "prompt"));
        int pos = (int)json_integer_value(json_object_get(ri, "pos"));
        size_t off = (size_t)json_integer_value(json_object_get(ri, "offset")) / 4;
        assert_true(off + (size_t)V <= n_floats);
        const float *row = rows + off;
        json_t *toks = json_object_get(json_array_get(prompts, p), "tokens");
        assert_true((size_t)pos < json_array_size(toks));
        int32_t prompt[256];
        for (int i = 0; i <= pos; i++)
            prompt[i] = (int32_t)json_integer_value(json_array_get(toks, (size_t)i));
        /* the oracle's five largest log-softmax values, descending */
        double otop[TOP];
        for (int j = 0; j < TOP; j++) otop[j] = -INFINITY;
        for (int i = 0; i < V; i++) {
            double v = row[i];
            for (int j = 0; j < TOP; j++)
                if (v > otop[j]) {
                    for (int q = TOP - 1; q > j; q--) otop[q] = otop[q - 1];
                    otop[j] = v;
                    break;
                }
        }
        double olse = row[0] - tsr_test_log_softmax(row, V, 0);
        for (int j = 0; j < TOP; j++) otop[j] -= olse;
        int64_t ids[N_SAMPLERS];
        for (int k = 0; k < N_SAMPLERS; k++) {
            struct tsr_request q = {.prompt = prompt,
                                    .n_prompt = pos + 1,
                                    .sampling = tsr_sampling_default(),
                                    .max_tokens = 1,
                                    .ignore_eos = 1};
            if (k) q.sampling.temperature = 1.2f, q.sampling.seed = 7 * r + k;
            q.sampling.top_logprobs = TOP;
            assert_int_equal(tsr_engine_add(e, &q, &ids[k]), 0);
        }
        int done = 0;
        for (int steps = 0; done < N_SAMPLERS; steps++) {
            assert_true(steps < 100);
            struct tsr_token_event ev[N_SAMPLERS];
            int n_ev;
            assert_int_equal(tsr_engine_step(e, ev, N_SAMPLERS, &n_ev), 0);
            for (int j = 0; j < n_ev; j++) {
                if (ev[j].token < 0) continue;
                int k = 0;
                while (k < N_SAMPLERS && ids[k] != ev[j].id) k++;
                assert_true(k < N_SAMPLERS);
                done++;
                double want = tsr_test_log_softmax(row, V, ev[j].token),
                       err = fabs(ev[j].logprob - want);
                if (err > TOL)
                    fail_msg("prompt %zu position %d sampler %d token %d: logprob %.5f, float64 "
                             "log-softmax of the oracle's logits %.5f",
                             p, pos, k, ev[j].token, ev[j].logprob, want);
                if (err > worst) worst = err;
                assert_int_equal(ev[j].n_top, TOP);
                if (k == 0) {
                    assert_int_equal(ev[j].top_ids[0], ev[j].token);
                    assert_true(ev[j].top_logprobs[0] == ev[j].logprob);
                }
                for (int t = 0; t < TOP; t++) {
                    double at = tsr_test_log_softmax(row, V, ev[j].top_ids[t]);
                    double e1 = fabs(ev[j].top_logprobs[t] - at),
                           e2 = fabs(ev[j].top_logprobs[t] - otop[t]);
                    if (e1 > TOL || e2 > TOL)
                        fail_msg("prompt %zu position %d: top %d is token %d at %.5f; the "
                                 "oracle has %.5f there and %.5f as its top %d",
                                 p, pos, t, ev[j].top_ids[t], ev[j].top_logprobs[t], at, otop[t],
                                 t);
                    if (e1 > worst_top) worst_top = e1;
                    if (e2 > worst_top) worst_top = e2;
                }
                checked++;
                not_argmax += want < -0.1;
                greedy_far += k == 0 && want < -0.1;
            }
        }
    }
    printf("logprobs vs float64 log-softmax: %d picks, worst |diff| %.2g (bound %.1g); %d picks "
           "with logprob < -0.1, %d of them greedy\n",
           checked, worst, TOL, not_argmax, greedy_far);
    printf("top %d logprobs vs float64: worst |diff| %.2g\n", TOP, worst_top);
    assert_int_equal(checked, (int)json_array_size(index) * N_SAMPLERS);
    assert_true(checked >= 80);
    assert_true(greedy_far >= 3);
    assert_true(not_argmax >= 20);
    tsr_engine_free(e);
    tsr_model_free(m);
    tsr_backend_free(b);
    free(rows);
    json_decref(root);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logprobs_vs_float64),
    };
    return tsr_test_exit(cmocka_run_group_tests(tests, NULL, NULL));
}
