/* common/metrics: the exact exposition text for a known sequence of observations (HELP and TYPE
 * lines, label order, const labels first, cumulative buckets ending at +Inf, _sum and _count);
 * a value equal to a bound counts in that bound's bucket; label values and help text are escaped;
 * names Prometheus would refuse are refused; threads adding at once lose nothing. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/metrics.h"

static char *render(tsr_metrics_t *r, const char *const *cl)
{
    struct tsr_metrics_text t = {0};
    assert_int_equal(tsr_metrics_render(r, cl, &t), 0);
    assert_non_null(t.data);
    assert_int_equal(strlen(t.data), t.len);
    return t.data;
}

static void test_exact_text(void **state)
{
    (void)state;
    tsr_metrics_t *r = tsr_metrics_new();
    assert_non_null(r);
    tsr_metric_t *req = tsr_metrics_counter(r, "vllm:request_success_total", "Finished requests.",
                                            (const char *[]){"finished_reason", NULL});
    tsr_metric_t *run = tsr_metrics_gauge(r, "vllm:num_requests_running", "Running.", NULL);
    static const double b[] = {0.1, 0.5, 1, 2.5};
    tsr_metric_t *lat =
        tsr_metrics_histogram(r, "vllm:e2e_request_latency_seconds", "E2E.", NULL, b, 4);
    assert_non_null(req);
    assert_non_null(run);
    assert_non_null(lat);

    tsr_metric_add(req, (const char *[]){"stop"}, 1);
    tsr_metric_add(req, (const char *[]){"length"}, 1);
    tsr_metric_add(req, (const char *[]){"stop"}, 2);
    tsr_metric_set(run, NULL, 3);
    tsr_metric_set(run, NULL, 2); /* a gauge takes the last value */
    tsr_series_t *s = tsr_metric_with(lat, NULL);
    assert_ptr_equal(s, tsr_metric_with(lat, NULL)); /* one series per set of values */
    tsr_series_observe(s, 0.05);
    tsr_series_observe(s, 0.5); /* on a bound: in that bucket (le) */
    tsr_series_observe(s, 0.75);
    tsr_series_observe(s, 100); /* past every bound: +Inf only */

    char *text = render(r, (const char *[]){"model_name", "m1", NULL});
    const char *want =
        "# HELP vllm:request_success_total Finished requests.\n"
        "# TYPE vllm:request_success_total counter\n"
        "vllm:request_success_total{model_name=\"m1\",finished_reason=\"stop\"} 3.0\n"
        "vllm:request_success_total{model_name=\"m1\",finished_reason=\"length\"} 1.0\n"
        "# HELP vllm:num_requests_running Running.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        "vllm:num_requests_running{model_name=\"m1\"} 2.0\n"
        "# HELP vllm:e2e_request_latency_seconds E2E.\n"
        "# TYPE vllm:e2e_request_latency_seconds histogram\n"
        "vllm:e2e_request_latency_seconds_bucket{model_name=\"m1\",le=\"0.1\"} 1.0\n"
        "vllm:e2e_request_latency_seconds_bucket{model_name=\"m1\",le=\"0.5\"} 2.0\n"
        "vllm:e2e_request_latency_seconds_bucket{model_name=\"m1\",le=\"1.0\"} 3.0\n"
        "vllm:e2e_request_latency_seconds_bucket{model_name=\"m1\",le=\"2.5\"} 3.0\n"
        "vllm:e2e_request_latency_seconds_bucket{model_name=\"m1\",le=\"+Inf\"} 4.0\n"
        "vllm:e2e_request_latency_seconds_sum{model_name=\"m1\"} 101.3\n"
        "vllm:e2e_request_latency_seconds_count{model_name=\"m1\"} 4.0\n";
    assert_string_equal(text, want);
    free(text);

    /* without const labels a family with no labels has no braces at all */
    text = render(r, NULL);
    assert_non_null(strstr(text, "\nvllm:num_requests_running 2.0\n"));
    assert_non_null(strstr(text, "\nvllm:e2e_request_latency_seconds_bucket{le=\"0.5\"} 2.0\n"));
    assert_non_null(strstr(text, "\nvllm:e2e_request_latency_seconds_count 4.0\n"));
    free(text);
    tsr_metrics_free(r);
}

/* Every bound's own value lands in its bucket, a hair above it in the next one. */
static void test_bucket_edges(void **state)
{
    (void)state;
    tsr_metrics_t *r = tsr_metrics_new();
    static const double b[] = {0.001, 0.3, 7680};
    tsr_metric_t *h = tsr_metrics_histogram(r, "h_seconds", "h", NULL, b, 3);
    assert_non_null(h);
    for (int i = 0; i < 3; i++) tsr_metric_observe(h, NULL, b[i]);
    char *text = render(r, NULL);
    assert_non_null(strstr(text, "h_seconds_bucket{le=\"0.001\"} 1.0\n"
                                 "h_seconds_bucket{le=\"0.3\"} 2.0\n"
                                 "h_seconds_bucket{le=\"7680.0\"} 3.0\n"
                                 "h_seconds_bucket{le=\"+Inf\"} 3.0\n"));
    free(text);
    tsr_metric_observe(h, NULL, 0.30000000000000004); /* the next double after 0.3 */
    tsr_metric_observe(h, NULL, 7680.000001);
    tsr_metric_observe(h, NULL, -1); /* below every bound: the first bucket */
    text = render(r, NULL);
    assert_non_null(strstr(text, "h_seconds_bucket{le=\"0.001\"} 2.0\n"
                                 "h_seconds_bucket{le=\"0.3\"} 3.0\n"
                                 "h_seconds_bucket{le=\"7680.0\"} 5.0\n"
                                 "h_seconds_bucket{le=\"+Inf\"} 6.0\n"));
    assert_non_null(strstr(text, "h_seconds_count 6.0\n"));
    free(text);
    tsr_metrics_free(r);
}

static void test_escaping(void **state)
{
    (void)state;
    tsr_metrics_t *r = tsr_metrics_new();
    tsr_metric_t *c =
        tsr_metrics_counter(r, "c_total", "a \\ back\nslash \"q\"", (const char *[]){"code", NULL});
    assert_non_null(c);
    tsr_metric_add(c, (const char *[]){"a\"b\\c\nd"}, 1);
    char *text = render(r, (const char *[]){"model_name", "x\"y", NULL});
    assert_string_equal(text, "# HELP c_total a \\\\ back\\nslash \"q\"\n"
                              "# TYPE c_total counter\n"
                              "c_total{model_name=\"x\\\"y\",code=\"a\\\"b\\\\c\\nd\"} 1.0\n");
    free(text);
    tsr_metrics_free(r);
}

static void test_values(void **state)
{
    (void)state;
    tsr_metrics_t *r = tsr_metrics_new();
    tsr_metric_t *g = tsr_metrics_gauge(r, "g", "", (const char *[]){"k", NULL});
    tsr_metric_set(g, (const char *[]){"a"}, 0.1);
    tsr_metric_set(g, (const char *[]){"b"}, 1e-5);
    tsr_metric_set(g, (const char *[]){"c"}, 123456789012);
    tsr_metric_set(g, (const char *[]){"d"}, -2.5);
    char *text = render(r, NULL);
    assert_string_equal(text, "# HELP g \n# TYPE g gauge\n"
                              "g{k=\"a\"} 0.1\ng{k=\"b\"} 1e-05\ng{k=\"c\"} 123456789012.0\n"
                              "g{k=\"d\"} -2.5\n");
    free(text);
    tsr_metrics_free(r);
}

static void test_refused(void **state)
{
    (void)state;
    tsr_metrics_t *r = tsr_metrics_new();
    static const double b[] = {1, 2}, bad[] = {2, 1};
    assert_null(tsr_metrics_counter(r, "1abc", "", NULL));
    assert_null(tsr_metrics_counter(r, "a-b", "", NULL));
    assert_null(tsr_metrics_gauge(r, "g", "", (const char *[]){"a:b", NULL}));
    assert_null(tsr_metrics_gauge(r, "g", "", (const char *[]){"__x", NULL}));
    assert_null(tsr_metrics_histogram(r, "h", "", (const char *[]){"le", NULL}, b, 2));
    assert_null(tsr_metrics_histogram(r, "h", "", NULL, bad, 2));
    assert_null(tsr_metrics_histogram(r, "h", "", NULL, b, 0));
    assert_null(
        tsr_metrics_gauge(r, "g", "", (const char *[]){"a", "b", "c", "d", "e", NULL})); /* > 4 */
    assert_non_null(tsr_metrics_gauge(r, "tessera:g", "", NULL));
    assert_null(tsr_metrics_counter(r, "tessera:g", "", NULL)); /* twice */
    char *text = render(r, NULL);
    assert_string_equal(text, "# HELP tessera:g \n# TYPE tessera:g gauge\ntessera:g 0.0\n");
    free(text);
    tsr_metrics_free(r);
}

enum { THREADS = 8, ITERS = 20000 };

struct worker_arg {
    tsr_metric_t *c, *h;
};

static void *adder(void *p)
{
    struct worker_arg *a = p;
    const char *const vals[][1] = {{"x"}, {"y"}};
    for (int i = 0; i < ITERS; i++) {
        tsr_metric_add(a->c, vals[i & 1], 1);
        tsr_metric_observe(a->h, NULL, (double)(i % 3));
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    tsr_metrics_t *r = tsr_metrics_new();
    static const double b[] = {0, 1};
    struct worker_arg a = {tsr_metrics_counter(r, "n_total", "n", (const char *[]){"k", NULL}),
                           tsr_metrics_histogram(r, "v", "v", NULL, b, 2)};
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) assert_int_equal(pthread_create(&t[i], NULL, adder, &a), 0);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    char *text = render(r, NULL);
    char want[512];
    /* i % 3 over 20000 iterations: 6667 zeros, 6667 ones, 6666 twos, in each thread */
    snprintf(want, sizeof want,
             "n_total{k=\"x\"} %d.0\nn_total{k=\"y\"} %d.0\n# HELP v v\n# TYPE v histogram\n"
             "v_bucket{le=\"0.0\"} %d.0\nv_bucket{le=\"1.0\"} %d.0\nv_bucket{le=\"+Inf\"} %d.0\n"
             "v_sum %d.0\nv_count %d.0\n",
             THREADS * ITERS / 2, THREADS * ITERS / 2, THREADS * 6667, THREADS * 2 * 6667,
             THREADS * ITERS, THREADS * (6667 + 2 * 6666), THREADS * ITERS);
    assert_non_null(strstr(text, want));
    free(text);
    tsr_metrics_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_text), cmocka_unit_test(test_bucket_edges),
        cmocka_unit_test(test_escaping),   cmocka_unit_test(test_values),
        cmocka_unit_test(test_refused),    cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
