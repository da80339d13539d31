/* Prometheus metrics (DESIGN §1: the coordinator's and the leaders' /metrics), in the text
 * exposition format 0.0.4, written here (no client library): a registry of families (counters,
 * gauges, histograms), each with a fixed list of label names, and one series (a "child") per set
 * of label values, made on first use. docs/operations.md lists what tessera exports.
 *
 * One mutex per registry guards every value: an observation is a lookup (O(children) string
 * compares, a handful per family) and an add under it. Hot paths can hold on to a child
 * (tsr_metric_with) and skip the lookup. Children live as long as the registry. Thread-safe. */
#ifndef TSR_COMMON_METRICS_H
#define TSR_COMMON_METRICS_H

#include <stddef.h>

enum { TSR_METRIC_MAX_LABELS = 4 };

typedef struct tsr_metrics tsr_metrics_t; /* a registry */
typedef struct tsr_metric tsr_metric_t;   /* a family, owned by its registry */
typedef struct tsr_series tsr_series_t;   /* one set of label values, owned by its family */

/* A growing text buffer: data is NUL-terminated (or NULL while empty); the caller frees data. */
struct tsr_metrics_text {
    char *data;
    size_t len, cap;
};

/* Appends formatted text; 0 or TSR_ENOMEM (the buffer then holds what fitted before). */
int tsr_metrics_text_printf(struct tsr_metrics_text *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* NULL when out of memory. */
tsr_metrics_t *tsr_metrics_new(void);
void tsr_metrics_free(tsr_metrics_t *r);

/* Families, rendered in the order they were made. name, help and the label names are borrowed
 * (string literals): they must outlive r. labels is NULL-terminated (NULL: no labels; at most
 * TSR_METRIC_MAX_LABELS). A counter's name is written as given, so it carries its _total. NULL
 * (message set) for a name or label name Prometheus would refuse, a duplicate name, a label "le"
 * on a histogram, or out of memory. A family without labels has its one series from the start
 * (it renders 0 before any observation). */
tsr_metric_t *tsr_metrics_counter(tsr_metrics_t *r, const char *name, const char *help,
                                  const char *const *labels);
tsr_metric_t *tsr_metrics_gauge(tsr_metrics_t *r, const char *name, const char *help,
                                const char *const *labels);
/* bounds: the buckets' upper bounds, strictly increasing and finite, copied; the +Inf bucket is
 * implied. A value equal to a bound falls in that bound's bucket (le: less or equal). */
tsr_metric_t *tsr_metrics_histogram(tsr_metrics_t *r, const char *name, const char *help,
                                    const char *const *labels, const double *bounds, int n_bounds);

/* The series of these label values (one per label, in the family's order; NULL for a family
 * without labels), made on first use (the values are copied). NULL when out of memory. */
tsr_series_t *tsr_metric_with(tsr_metric_t *m, const char *const *values);

/* A counter or gauge goes up by v (a counter's v must not be negative). */
void tsr_series_add(tsr_series_t *s, double v);
/* A gauge takes v; a counter too, for a total kept elsewhere that never goes down. */
void tsr_series_set(tsr_series_t *s, double v);
/* A histogram counts v. */
void tsr_series_observe(tsr_series_t *s, double v);

/* The same, looking the series up first (nothing happens when out of memory). */
void tsr_metric_add(tsr_metric_t *m, const char *const *values, double v);
void tsr_metric_set(tsr_metric_t *m, const char *const *values, double v);
void tsr_metric_observe(tsr_metric_t *m, const char *const *values, double v);

/* Appends every family to out: "# HELP", "# TYPE", then its samples; a histogram's as cumulative
 * _bucket{le=...} lines ending at le="+Inf", then _sum and _count. const_labels: name/value
 * pairs, NULL-terminated (NULL: none), written first on every sample (e.g. model_name, which the
 * registry's owner knows only when scraped). Label values and help text are escaped (\\, \",
 * \n). 0 or TSR_ENOMEM. */
int tsr_metrics_render(tsr_metrics_t *r, const char *const *const_labels,
                       struct tsr_metrics_text *out);

/* vLLM's bucket bounds (vllm/v1/metrics/loggers.py), so that panels made for vLLM read ours:
 * request latencies (e2e, queue time), time to first token, and time per output token (also
 * inter-token latency). */
enum { TSR_VLLM_REQUEST_LATENCY_N = 21, TSR_VLLM_TTFT_N = 22, TSR_VLLM_TPOT_N = 19 };
extern const double tsr_vllm_request_latency_buckets[TSR_VLLM_REQUEST_LATENCY_N];
extern const double tsr_vllm_ttft_buckets[TSR_VLLM_TTFT_N];
extern const double tsr_vllm_tpot_buckets[TSR_VLLM_TPOT_N];

/* The content type of what tsr_metrics_render writes, for an HTTP reply. */
#define TSR_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

#endif
