/* Sampling: greedy, seeded reproducibility, each filter's effect, validation, and the exact
 * quantities: logprobs against a float64 log-softmax, temperature against the draw frequencies it
 * implies (a stated binomial bound, seeded so the run is deterministic), the repetition penalty on
 * positive and negative logits. tests/mutation/run.sh shows each of these fails under the bug it
 * is for. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/status.h"
#include "worker/sampling.h"

#include "unit.h"

#define V 1000

static void fill_logits(float *l, uint32_t seed)
{
    for (int i = 0; i < V; i++) {
        seed = seed * 1664525u + 1013904223u;
        l[i] = (float)(seed >> 8) / (float)(1 << 24) * 8.0f - 4.0f;
    }
}

static int32_t draw(struct tsr_sampler *s, uint32_t seed)
{
    float l[V];
    fill_logits(l, seed);
    return tsr_sample(s, l, NULL, 0, tsr_sampler_uniform(s, seed), NULL);
}

static void test_greedy_is_argmax(void **state)
{
    struct tsr_sampler s;
    struct tsr_sampling p = tsr_sampling_default();
    assert_int_equal(tsr_sampler_init(&s, &p, V), 0);
    for (uint32_t k = 0; k < 20; k++) {
        float l[V];
        fill_logits(l, k);
        int32_t want = 0;
        for (int i = 1; i < V; i++)
            if (l[i] > l[want]) want = i;
        assert_int_equal(tsr_sample(&s, l, NULL, 0, 0, NULL), want);
    }
    tsr_sampler_free(&s);
}

/* The logprob of the picked token is its log-softmax over the whole penalised row, untempered and
 * unfiltered, for greedy and sampled picks alike. Tolerance: float rounding of the result. */
static void test_logprob_exact(void **state)
{
    struct tsr_sampling ps[3] = {tsr_sampling_default(), tsr_sampling_default(),
                                 tsr_sampling_default()};
    ps[1].temperature = 0.7f, ps[1].top_k = 40, ps[1].seed = 3;
    ps[2].temperature = 1.5f, ps[2].top_p = 0.9f, ps[2].repetition_penalty = 1.3f, ps[2].seed = 4;
    int32_t hist[] = {3, 17, 17, 250, 999};
    double worst = 0, highest = -1e30;
    for (int k = 0; k < 3; k++) {
        struct tsr_sampler s;
        assert_int_equal(tsr_sampler_init(&s, &ps[k], V), 0);
        for (uint32_t it = 0; it < 50; it++) {
            float l[V], pen[V];
            fill_logits(l, 100 + it);
            memcpy(pen, l, sizeof pen);
            for (int j = 0; j < 5 && ps[k].repetition_penalty != 1.0f; j++) {
                float *x = &pen[hist[j]];
                if (j != 2) /* 17 twice: penalised once */
                    *x = *x > 0 ? *x / ps[k].repetition_penalty : *x * ps[k].repetition_penalty;
            }
            float lp;
            int32_t t = tsr_sample(&s, l, hist, 5, tsr_sampler_uniform(&s, it), &lp);
            double want = tsr_test_log_softmax(pen, V, t), err = fabs(lp - want);
            if (err > 1e-5 + 1e-6 * fabs(want))
                fail_msg("sampler %d draw %u token %d: logprob %.7f, float64 log-softmax %.7f", k,
                         it, t, lp, want);
            if (err > worst) worst = err;
            if (want > highest) highest = want;
        }
        tsr_sampler_free(&s);
    }
    /* Rows of logits in [-4, 4] over 1000 tokens put every logprob, the argmax's included, well
     * below 0: a value that forgot the log-sum-exp term is off by more than 1. */
    print_message("logprob vs float64 log-softmax: worst error %.2g, highest logprob %.2f\n", worst,
                  highest);
    assert_true(highest < -1);
}

/* Two tokens a, b with logits differing by d, every other token at -100 (weight e^-100): at
 * temperature T, a is drawn with p = 1 / (1 + exp(-d/T)), so the frequency ratio n_a/n_b estimates
 * exp(d/T). Bound: n_a is binomial(N, p); |n_a - N p| <= 5 sqrt(N p (1-p)) fails a correct
 * sampler with probability 6e-7 per case, and the seed makes the run deterministic anyway. With
 * N = 20000 the bound is at most 0.018 in p, while a sampler that ignores T (uses T = 1) is off
 * by at least 0.1 in every case with T != 1. */
static void test_temperature_ratio(void **state)
{
    static const struct {
        float d, t;
    } cases[] = {{1.0f, 0.5f}, {1.0f, 2.0f}, {2.0f, 4.0f}, {0.5f, 0.25f}, {3.0f, 1.0f}};
    const int N = 20000;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct tsr_sampling p = tsr_sampling_default();
        p.temperature = cases[c].t;
        p.seed = 1000 + c;
        struct tsr_sampler s;
        assert_int_equal(tsr_sampler_init(&s, &p, V), 0);
        int n_a = 0, n_b = 0;
        for (int it = 0; it < N; it++) {
            float l[V];
            for (int i = 0; i < V; i++) l[i] = -100.0f;
            l[11] = 1.0f + cases[c].d; /* a */
            l[500] = 1.0f;             /* b */
            int32_t t = tsr_sample(&s, l, NULL, 0, tsr_sampler_uniform(&s, it), NULL);
            assert_true(t == 11 || t == 500);
            n_a += t == 11, n_b += t == 500;
        }
        tsr_sampler_free(&s);
        double pa = 1.0 / (1.0 + exp(-(double)cases[c].d / cases[c].t));
        double bound = 5 * sqrt(N * pa * (1 - pa));
        print_message("d %.2f T %.2f: ratio %.3f, exp(d/T) %.3f; n_a %d, expected %.0f +- %.0f\n",
                      cases[c].d, cases[c].t, (double)n_a / n_b, exp(cases[c].d / cases[c].t), n_a,
                      N * pa, bound);
        if (fabs(n_a - N * pa) > bound)
            fail_msg("d %.2f T %.2f: %d of %d draws were the higher token, expected %.0f +- %.0f",
                     cases[c].d, cases[c].t, n_a, N, N * pa, bound);
    }
}

static void test_same_seed_same_tokens(void **state)
{
    struct tsr_sampling p = tsr_sampling_default();
    p.temperature = 1.0f;
    p.seed = 42;
    struct tsr_sampler a, b, c;
    assert_int_equal(tsr_sampler_init(&a, &p, V), 0);
    assert_int_equal(tsr_sampler_init(&b, &p, V), 0);
    p.seed = 43;
    assert_int_equal(tsr_sampler_init(&c, &p, V), 0);
    int differ = 0;
    for (uint32_t k = 0; k < 50; k++) {
        int32_t x = draw(&a, k), y = draw(&b, k), z = draw(&c, k);
        assert_int_equal(x, y);
        differ += x != z;
    }
    assert_true(differ > 10); /* another seed gives other tokens */
    tsr_sampler_free(&a);
    tsr_sampler_free(&b);
    tsr_sampler_free(&c);
}

/* The draw is a function of the seed and the position alone (what lets a request resume on
 * another replica): drawn in any order, or by another sampler with the same seed, position i
 * gives the same value; positions and seeds give different values, spread over [0, 1). */
static void test_draw_by_position(void **state)
{
    enum { N = 4096 };
    struct tsr_sampling p = tsr_sampling_default();
    p.temperature = 1.0f;
    p.seed = 7;
    struct tsr_sampler a, b, c;
    assert_int_equal(tsr_sampler_init(&a, &p, V), 0);
    assert_int_equal(tsr_sampler_init(&b, &p, V), 0);
    p.seed = 8;
    assert_int_equal(tsr_sampler_init(&c, &p, V), 0);
    static double fwd[N];
    for (int i = 0; i < N; i++) fwd[i] = tsr_sampler_uniform(&a, i);
    int same_seed_other = 0, repeats = 0, bins[16] = {0};
    double sum = 0;
    for (int i = N - 1; i >= 0; i--) {
        assert_true(tsr_sampler_uniform(&b, i) == fwd[i]);
        assert_true(fwd[i] >= 0 && fwd[i] < 1);
        same_seed_other += tsr_sampler_uniform(&c, i) == fwd[i];
        repeats += i && fwd[i] == fwd[i - 1];
        bins[(int)(fwd[i] * 16)]++;
        sum += fwd[i];
    }
    assert_int_equal(same_seed_other, 0);
    assert_int_equal(repeats, 0);
    /* each sixteenth holds 256 +- 5 sd (sd ~ 15.5) */
    for (int k = 0; k < 16; k++)
        if (bins[k] < 256 - 78 || bins[k] > 256 + 78)
            fail_msg("[%d/16, %d/16) holds %d of %d draws", k, k + 1, bins[k], N);
    assert_true(fabs(sum / N - 0.5) < 0.03);
    tsr_sampler_free(&a);
    tsr_sampler_free(&b);
    tsr_sampler_free(&c);
}

static void test_top_k_restricts(void **state)
{
    struct tsr_sampling p = tsr_sampling_default();
    p.temperature = 5.0f; /* flat: without top-k almost anything comes out */
    p.top_k = 3;
    struct tsr_sampler s;
    assert_int_equal(tsr_sampler_init(&s, &p, V), 0);
    float base[V];
    fill_logits(base, 7);
    int32_t top[3];
    for (int k = 0; k < 3; k++) {
        int32_t best = -1;
        for (int i = 0; i < V; i++) {
            int taken = 0;
            for (int j = 0; j < k; j++) taken |= top[j] == i;
            if (!taken && (best < 0 || base[i] > base[best])) best = i;
        }
        top[k] = best;
    }
    int seen[3] = {0};
    for (int it = 0; it < 300; it++) {
        float l[V];
        memcpy(l, base, sizeof l);
        int32_t t = tsr_sample(&s, l, NULL, 0, tsr_sampler_uniform(&s, it), NULL);
        assert_true(t == top[0] || t == top[1] || t == top[2]);
        for (int j = 0; j < 3; j++) seen[j] += t == top[j];
    }
    assert_true(seen[0] > 0 && seen[1] > 0 && seen[2] > 0);
    tsr_sampler_free(&s);
}

static void test_top_p_and_min_p(void **state)
{
    /* Probabilities 0.5, 0.3, 0.15, 0.05 over four tokens, the rest -inf-ish. */
    float probs[4] = {0.5f, 0.3f, 0.15f, 0.05f};
    struct tsr_sampling p = tsr_sampling_default();
    p.temperature = 1.0f;
    p.top_p = 0.75f; /* keeps 0 and 1 */
    struct tsr_sampler s;
    assert_int_equal(tsr_sampler_init(&s, &p, V), 0);
    int count[4] = {0};
    for (int it = 0; it < 2000; it++) {
        float l[V];
        for (int i = 0; i < V; i++) l[i] = -100.0f;
        for (int i = 0; i < 4; i++) l[i] = logf(probs[i]);
        int32_t t = tsr_sample(&s, l, NULL, 0, tsr_sampler_uniform(&s, it), NULL);
        assert_true(t >= 0 && t < 2);
        count[t]++;
    }
    /* renormalised 0.625 / 0.375 */
    assert_true(count[0] > 1100 && count[0] < 1400);
    tsr_sampler_free(&s);

    p.top_p = 1;
    p.min_p = 0.2f; /* keeps tokens with p >= 0.1: 0, 1, 2 */
    assert_int_equal(tsr_sampler_init(&s, &p, V), 0);
    int got2 = 0;
    for (int it = 0; it < 2000; it++) {
        float l[V];
        for (int i = 0; i < V; i++) l[i] = -100.0f;
        for (int i = 0; i < 4; i++) l[i] = logf(probs[i]);
        int32_t t = tsr_sample(&s, l, NULL, 0, tsr_sampler_uniform(&s, it), NULL);
        assert_true(t >= 0 && t < 3);
        got2 += t == 2;
    }
    assert_true(got2 > 100);
    tsr_sampler_free(&s);
}

static void test_repetition_penalty(void **state)
{
    struct tsr_sampling p = tsr_sampling_default();
    p.repetition_penalty = 2.0f;
    struct tsr_sampler s;
    assert_int_equal(tsr_sampler_init(&s, &p, V), 0);
    float l[V];
    for (int i = 0; i < V; i++) l[i] = -1.0f;
    l[5] = 3.0f;
    l[9] = 2.0f;
    int32_t hist[] = {5, 5, 5};
    /* 3 / 2 = 1.5 < 2: token 9 wins; the penalty applies once however often 5 was seen. */
    assert_int_equal(tsr_sample(&s, l, hist, 3, 0, NULL), 9);
    assert_true(fabsf(l[5] - 1.5f) < 1e-6f);
    tsr_sampler_free(&s);
}

/* On a negative logit the penalty multiplies: it must push the token further down, never up. */
static void test_repetition_penalty_negative(void **state)
{
    struct tsr_sampling p = tsr_sampling_default();
    p.repetition_penalty = 2.0f;
    struct tsr_sampler s;
    assert_int_equal(tsr_sampler_init(&s, &p, V), 0);
    float l[V];
    for (int i = 0; i < V; i++) l[i] = -5.0f;
    l[3] = -1.0f;
    l[4] = -1.5f;
    int32_t hist[] = {3, 3};
    /* -1 * 2 = -2 < -1.5: token 4 wins; dividing (-0.5) would keep 3 on top. */
    assert_int_equal(tsr_sample(&s, l, hist, 2, 0, NULL), 4);
    assert_true(l[3] == -2.0f);
    assert_true(l[4] == -1.5f);
    tsr_sampler_free(&s);
}

static void test_validation(void **state)
{
    struct tsr_sampling p = tsr_sampling_default();
    p.temperature = -1;
    assert_int_equal(tsr_sampling_validate(&p), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "temperature"));
    p = tsr_sampling_default();
    p.top_p = 0;
    assert_int_equal(tsr_sampling_validate(&p), TSR_EINVAL);
    p.top_p = 1.5f;
    assert_int_equal(tsr_sampling_validate(&p), TSR_EINVAL);
    p = tsr_sampling_default();
    p.top_k = -2;
    assert_int_equal(tsr_sampling_validate(&p), TSR_EINVAL);
    p = tsr_sampling_default();
    p.min_p = 1;
    assert_int_equal(tsr_sampling_validate(&p), TSR_EINVAL);
    p = tsr_sampling_default();
    p.temperature = NAN;
    assert_int_equal(tsr_sampling_validate(&p), TSR_EINVAL);
}

/* The top alternatives: the k largest of the row in descending order (lower id first on ties),
 * each with its float64 log-softmax; the greedy pick is the first with the same logprob; their
 * probabilities sum to at most 1. Tolerance: float rounding of the result. */
static void test_top_logprobs(void **state)
{
    struct tsr_sampling p = tsr_sampling_default();
    p.top_logprobs = 5;
    struct tsr_sampler s;
    assert_int_equal(tsr_sampler_init(&s, &p, V), 0);
    double worst = 0;
    for (uint32_t k = 0; k < 50; k++) {
        float l[V];
        fill_logits(l, 100 + k);
        if (k == 7) l[11] = l[12] = 9.0f; /* a tie at the top: id 11 first */
        float lp;
        int32_t pick = tsr_sample(&s, l, NULL, 0, tsr_sampler_uniform(&s, k), &lp);
        int32_t ids[TSR_SAMPLING_MAX_TOP_LOGPROBS];
        float lps[TSR_SAMPLING_MAX_TOP_LOGPROBS];
        int n = tsr_top_logprobs(l, V, p.top_logprobs, ids, lps);
        assert_int_equal(n, 5);
        assert_int_equal(ids[0], pick);
        assert_true(lps[0] == lp);
        if (k == 7) assert_true(ids[0] == 11 && ids[1] == 12);
        double mass = 0;
        for (int j = 0; j < n; j++) {
            double want = tsr_test_log_softmax(l, V, ids[j]);
            if (fabs(lps[j] - want) > worst) worst = fabs(lps[j] - want);
            if (j) assert_true(lps[j] <= lps[j - 1]);
            mass += exp(lps[j]);
            /* nothing outside the list beats its last */
            for (int i = 0; i < V; i++) {
                int in = 0;
                for (int q = 0; q < n; q++) in |= ids[q] == i;
                if (!in) assert_true(l[i] <= l[ids[n - 1]]);
            }
        }
        assert_true(mass <= 1.0 + 1e-6);
    }
    assert_true(worst < 1e-5);
    /* k larger than the row, and k = 0 */
    float tiny[3] = {1, 3, 2};
    int32_t ids[TSR_SAMPLING_MAX_TOP_LOGPROBS];
    float lps[TSR_SAMPLING_MAX_TOP_LOGPROBS];
    assert_int_equal(tsr_top_logprobs(tiny, 3, 20, ids, lps), 3);
    assert_true(ids[0] == 1 && ids[1] == 2 && ids[2] == 0);
    assert_true(fabs(exp(lps[0]) + exp(lps[1]) + exp(lps[2]) - 1) < 1e-6);
    assert_int_equal(tsr_top_logprobs(tiny, 3, 0, ids, lps), 0);
    tsr_sampler_free(&s);
}

/* OpenAI's presence and frequency penalties: l[t] -= count[t] * frequency + presence over the
 * generated tokens only (the prompt's do not count). */
static void test_presence_frequency(void **state)
{
    struct tsr_sampling p = tsr_sampling_default();
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    struct tsr_sampler s;
    assert_int_equal(tsr_sampler_init(&s, &p, V), 0);
    s.n_prompt = 2;
    float l[V];
    for (int i = 0; i < V; i++) l[i] = 0;
    l[1] = 1.0f; /* in the prompt only: untouched, and the greedy pick */
    int32_t hist[] = {1, 3, 3, 3, 4};
    float lp;
    assert_int_equal(tsr_sample(&s, l, hist, 5, 0, &lp), 1);
    assert_true(l[1] == 1.0f);
    assert_true(fabsf(l[3] - -1.0f) < 1e-6f); /* 2 * 0.25 + 0.5: hist[1] is the prompt's */
    assert_true(fabsf(l[4] - -0.75f) < 1e-6f);
    assert_true(l[5] == 0.0f);
    /* the counts start again from zero at the next call */
    for (int i = 0; i < V; i++) l[i] = 0;
    assert_int_equal(tsr_sample(&s, l, hist, 5, 0, NULL), 0);
    assert_true(fabsf(l[3] - -1.0f) < 1e-6f);
    /* a negative presence penalty encourages: token 4 wins */
    tsr_sampler_free(&s);
    p.presence_penalty = -2;
    p.frequency_penalty = 0;
    assert_int_equal(tsr_sampler_init(&s, &p, V), 0);
    s.n_prompt = 4;
    for (int i = 0; i < V; i++) l[i] = 0;
    l[1] = 1.0f;
    assert_int_equal(tsr_sample(&s, l, hist, 5, 0, NULL), 4);
    tsr_sampler_free(&s);
}

/* logit_bias: -100 bans the argmax, +100 forces a low token; logprobs see the biased row. */
static void test_logit_bias(void **state)
{
    float l[V];
    fill_logits(l, 5);
    int32_t top = tsr_argmax(l, V);
    int32_t low = top == 0 ? 1 : 0;
    struct tsr_logit_bias b[2] = {{top, -100}, {low, 100}};
    struct tsr_sampling p = tsr_sampling_default();
    p.logit_bias = b;
    p.n_logit_bias = 1;
    struct tsr_sampler s;
    assert_int_equal(tsr_sampler_init(&s, &p, V), 0);
    b[0].bias = 0; /* the sampler kept its own copy */
    float row[V];
    memcpy(row, l, sizeof row);
    int32_t t = tsr_sample(&s, row, NULL, 0, 0, NULL);
    assert_true(t != top);
    assert_true(row[top] == l[top] - 100);
    tsr_sampler_free(&s);
    b[0].bias = -100;
    p.n_logit_bias = 2;
    p.temperature = 0.8f;
    assert_int_equal(tsr_sampler_init(&s, &p, V), 0);
    for (int k = 0; k < 20; k++) {
        memcpy(row, l, sizeof row);
        float lp;
        assert_int_equal(tsr_sample(&s, row, NULL, 0, tsr_sampler_uniform(&s, k), &lp), low);
        assert_true(fabs(lp - tsr_test_log_softmax(row, V, low)) < 1e-5);
    }
    tsr_sampler_free(&s);
}

static void test_validation_new_fields(void **state)
{
    struct tsr_sampling p = tsr_sampling_default();
    p.presence_penalty = 2.5f;
    assert_int_equal(tsr_sampling_validate(&p), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "presence_penalty"));
    p = tsr_sampling_default();
    p.frequency_penalty = NAN;
    assert_int_equal(tsr_sampling_validate(&p), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "frequency_penalty"));
    p = tsr_sampling_default();
    p.top_logprobs = 21;
    assert_int_equal(tsr_sampling_validate(&p), TSR_EINVAL);
    p.top_logprobs = 20;
    assert_int_equal(tsr_sampling_validate(&p), 0);
    struct tsr_logit_bias b[2] = {{3, 101}, {3, 1}};
    p = tsr_sampling_default();
    p.logit_bias = b;
    p.n_logit_bias = 1;
    assert_int_equal(tsr_sampling_validate(&p), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "[-100, 100]"));
    b[0].bias = 1;
    p.n_logit_bias = 2;
    assert_int_equal(tsr_sampling_validate(&p), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "twice"));
    p.n_logit_bias = TSR_SAMPLING_MAX_LOGIT_BIAS + 1;
    assert_int_equal(tsr_sampling_validate(&p), TSR_EINVAL);
    b[0].id = V;
    p.n_logit_bias = 1;
    assert_int_equal(tsr_sampling_validate(&p), 0);
    struct tsr_sampler s;
    assert_int_equal(tsr_sampler_init(&s, &p, V), TSR_EINVAL); /* outside the vocabulary */
    assert_non_null(strstr(tsr_last_error(), "not a token id"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_is_argmax),
        cmocka_unit_test(test_logprob_exact),
        cmocka_unit_test(test_temperature_ratio),
        cmocka_unit_test(test_same_seed_same_tokens),
        cmocka_unit_test(test_draw_by_position),
        cmocka_unit_test(test_top_k_restricts),
        cmocka_unit_test(test_top_p_and_min_p),
        cmocka_unit_test(test_repetition_penalty),
        cmocka_unit_test(test_repetition_penalty_negative),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_top_logprobs),
        cmocka_unit_test(test_presence_frequency),
        cmocka_unit_test(test_logit_bias),
        cmocka_unit_test(test_validation_new_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
