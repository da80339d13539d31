#include "common/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"

enum kind { COUNTER, GAUGE, HISTOGRAM };

struct tsr_series {
    struct tsr_series *next;
    struct tsr_metric *m;
    char *values[TSR_METRIC_MAX_LABELS]; /* copies, in one allocation with the series */
    double v;                            /* counter, gauge; a histogram's sum */
    uint64_t count;                      /* histogram */
    uint64_t *buckets;                   /* histogram: (n_bounds + 1), not cumulative; last +Inf */
};

struct tsr_metric {
    struct tsr_metric *next;
    struct tsr_metrics *r;
    enum kind kind;
    const char *name, *help;
    const char *labels[TSR_METRIC_MAX_LABELS];
    int n_labels;
    double *bounds;
    int n_bounds;
    struct tsr_series *series, **series_tail; /* creation order */
};

struct tsr_metrics {
    pthread_mutex_t mu;
    struct tsr_metric *families, **families_tail;
};

const double tsr_vllm_request_latency_buckets[TSR_VLLM_REQUEST_LATENCY_N] = {
    0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
const double tsr_vllm_ttft_buckets[TSR_VLLM_TTFT_N] = {
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
    1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
const double tsr_vllm_tpot_buckets[TSR_VLLM_TPOT_N] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                                       0.3,  0.4,   0.5,  0.75,  1.0, 2.5,  5.0,
                                                       7.5,  10.0,  20.0, 40.0,  80.0};

/* ---- text ---- */

static int text_reserve(struct tsr_metrics_text *t, size_t more)
{
    if (t->len + more + 1 <= t->cap) return 0;
    size_t cap = t->cap ? t->cap : 4096;
    while (cap < t->len + more + 1) cap *= 2;
    char *d = realloc(t->data, cap);
    if (!d) return tsr_errorf(TSR_ENOMEM, "out of memory for the metrics text");
    t->data = d;
    t->cap = cap;
    return 0;
}

int tsr_metrics_text_printf(struct tsr_metrics_text *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char small[256];
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return tsr_errorf(TSR_EINVAL, "bad format");
    if (text_reserve(t, (size_t)n)) return TSR_ENOMEM;
    if ((size_t)n < sizeof small) {
        memcpy(t->data + t->len, small, (size_t)n + 1);
    } else {
        va_start(ap, fmt);
        vsnprintf(t->data + t->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    t->len += (size_t)n;
    return 0;
}

static int text_put(struct tsr_metrics_text *t, const char *s, size_t n)
{
    if (text_reserve(t, n)) return TSR_ENOMEM;
    memcpy(t->data + t->len, s, n);
    t->len += n;
    t->data[t->len] = '\0';
    return 0;
}

/* s with \ and newline escaped, and " too when quoted (label values; help text leaves it). */
static int text_escaped(struct tsr_metrics_text *t, const char *s, int quoted)
{
    for (const char *run = s;; s++) {
        const char *esc = *s == '\\'            ? "\\\\"
                          : *s == '\n'          ? "\\n"
                          : *s == '"' && quoted ? "\\\""
                                                : NULL;
        if (!esc && *s) continue;
        if (text_put(t, run, (size_t)(s - run))) return TSR_ENOMEM;
        if (!*s) return 0;
        if (text_put(t, esc, 2)) return TSR_ENOMEM;
        run = s + 1;
    }
}

/* A sample value or bound the way Prometheus' Python client writes it (vLLM's /metrics): +Inf,
 * -Inf, NaN; integral values with ".0"; others in the fewest digits that read back the same. */
static void format_value(double v, char *out, size_t cap)
{
    if (isnan(v)) {
        snprintf(out, cap, "NaN");
    } else if (isinf(v)) {
        snprintf(out, cap, v > 0 ? "+Inf" : "-Inf");
    } else if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(out, cap, "%.1f", v);
    } else {
        for (int p = 1; p <= 17; p++) {
            snprintf(out, cap, "%.*g", p, v);
            if (strtod(out, NULL) == v) break;
        }
    }
}

/* ---- registry ---- */

tsr_metrics_t *tsr_metrics_new(void)
{
    struct tsr_metrics *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    pthread_mutex_init(&r->mu, NULL);
    r->families_tail = &r->families;
    return r;
}

void tsr_metrics_free(tsr_metrics_t *r)
{
    if (!r) return;
    for (struct tsr_metric *m = r->families, *mn; m; m = mn) {
        mn = m->next;
        for (struct tsr_series *s = m->series, *sn; s; s = sn) {
            sn = s->next;
            free(s);
        }
        free(m->bounds);
        free(m);
    }
    pthread_mutex_destroy(&r->mu);
    free(r);
}

static int valid_name(const char *s, int colon)
{
    if (!s || !*s || (*s >= '0' && *s <= '9')) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || (colon && *s == ':')))
            return 0;
    return 1;
}

static struct tsr_series *series_new(struct tsr_metric *m, const char *const *values)
{
    size_t extra = 0, len[TSR_METRIC_MAX_LABELS];
    for (int i = 0; i < m->n_labels; i++) extra += (len[i] = strlen(values[i])) + 1;
    size_t nb = m->kind == HISTOGRAM ? (size_t)m->n_bounds + 1 : 0;
    struct tsr_series *s = calloc(1, sizeof *s + nb * sizeof(uint64_t) + extra);
    if (!s) return NULL;
    s->m = m;
    s->buckets = nb ? (uint64_t *)(s + 1) : NULL;
    char *p = (char *)(s + 1) + nb * sizeof(uint64_t);
    for (int i = 0; i < m->n_labels; i++) {
        memcpy(p, values[i], len[i] + 1);
        s->values[i] = p;
        p += len[i] + 1;
    }
    *m->series_tail = s;
    m->series_tail = &s->next;
    return s;
}

static tsr_metric_t *family(tsr_metrics_t *r, enum kind kind, const char *name, const char *help,
                            const char *const *labels, const double *bounds, int n_bounds)
{
    if (!valid_name(name, 1)) {
        tsr_errorf(TSR_EINVAL, "metric name '%s' is not [a-zA-Z_:][a-zA-Z0-9_:]*",
                   name ? name : "");
        return NULL;
    }
    struct tsr_metric *m = calloc(1, sizeof *m);
    if (!m) {
        tsr_errorf(TSR_ENOMEM, "out of memory");
        return NULL;
    }
    m->r = r;
    m->kind = kind;
    m->name = name;
    m->help = help ? help : "";
    m->series_tail = &m->series;
    for (; labels && labels[m->n_labels]; m->n_labels++) {
        const char *l = labels[m->n_labels];
        if (m->n_labels == TSR_METRIC_MAX_LABELS || !valid_name(l, 0) || !strncmp(l, "__", 2) ||
            (kind == HISTOGRAM && !strcmp(l, "le"))) {
            tsr_errorf(TSR_EINVAL, "metric %s: label '%s' is not allowed here", name, l);
            goto fail;
        }
        m->labels[m->n_labels] = l;
    }
    if (kind == HISTOGRAM) {
        if (n_bounds < 1 || !(m->bounds = malloc((size_t)n_bounds * sizeof *m->bounds))) {
            tsr_errorf(n_bounds < 1 ? TSR_EINVAL : TSR_ENOMEM, "metric %s: no buckets", name);
            goto fail;
        }
        for (int i = 0; i < n_bounds; i++) {
            if (!isfinite(bounds[i]) || (i && bounds[i] <= bounds[i - 1])) {
                tsr_errorf(TSR_EINVAL, "metric %s: bucket bounds must be finite and increasing",
                           name);
                goto fail;
            }
            m->bounds[i] = bounds[i];
        }
        m->n_bounds = n_bounds;
    }
    pthread_mutex_lock(&r->mu);
    for (struct tsr_metric *o = r->families; o; o = o->next)
        if (!strcmp(o->name, name)) {
            pthread_mutex_unlock(&r->mu);
            tsr_errorf(TSR_EINVAL, "metric %s is registered twice", name);
            goto fail;
        }
    if (m->n_labels == 0 && !series_new(m, NULL)) {
        pthread_mutex_unlock(&r->mu);
        tsr_errorf(TSR_ENOMEM, "out of memory");
        goto fail;
    }
    *r->families_tail = m;
    r->families_tail = &m->next;
    pthread_mutex_unlock(&r->mu);
    return m;
fail:
    free(m->bounds);
    free(m);
    return NULL;
}

tsr_metric_t *tsr_metrics_counter(tsr_metrics_t *r, const char *name, const char *help,
                                  const char *const *labels)
{
    return family(r, COUNTER, name, help, labels, NULL, 0);
}

tsr_metric_t *tsr_metrics_gauge(tsr_metrics_t *r, const char *name, const char *help,
                                const char *const *labels)
{
    return family(r, GAUGE, name, help, labels, NULL, 0);
}

tsr_metric_t *tsr_metrics_histogram(tsr_metrics_t *r, const char *name, const char *help,
                                    const char *const *labels, const double *bounds, int n_bounds)
{
    return family(r, HISTOGRAM, name, help, labels, bounds, n_bounds);
}

/* Under r->mu. */
static struct tsr_series *lookup(struct tsr_metric *m, const char *const *values)
{
    for (struct tsr_series *s = m->series; s; s = s->next) {
        int i = 0;
        while (i < m->n_labels && !strcmp(s->values[i], values[i])) i++;
        if (i == m->n_labels) return s;
    }
    return series_new(m, values);
}

tsr_series_t *tsr_metric_with(tsr_metric_t *m, const char *const *values)
{
    if (!m) return NULL;
    pthread_mutex_lock(&m->r->mu);
    struct tsr_series *s = lookup(m, values);
    pthread_mutex_unlock(&m->r->mu);
    return s;
}

enum op { ADD, SET, OBSERVE };

/* Under r->mu. */
static void apply(struct tsr_series *s, enum op op, double v)
{
    const struct tsr_metric *m = s->m;
    if (op == ADD) {
        s->v += v;
    } else if (op == SET) {
        s->v = v;
    } else if (m->kind == HISTOGRAM) {
        int i = 0; /* linear: vLLM's longest list has 22 bounds */
        while (i < m->n_bounds && !(v <= m->bounds[i])) i++;
        s->buckets[i]++;
        s->count++;
        s->v += v;
    }
}

static void series_op(tsr_series_t *s, enum op op, double v)
{
    if (!s) return;
    pthread_mutex_lock(&s->m->r->mu);
    apply(s, op, v);
    pthread_mutex_unlock(&s->m->r->mu);
}

static void metric_op(tsr_metric_t *m, const char *const *values, enum op op, double v)
{
    if (!m) return;
    pthread_mutex_lock(&m->r->mu);
    struct tsr_series *s = lookup(m, values);
    if (s) apply(s, op, v);
    pthread_mutex_unlock(&m->r->mu);
}

void tsr_series_add(tsr_series_t *s, double v)
{
    series_op(s, ADD, v);
}
void tsr_series_set(tsr_series_t *s, double v)
{
    series_op(s, SET, v);
}
void tsr_series_observe(tsr_series_t *s, double v)
{
    series_op(s, OBSERVE, v);
}
void tsr_metric_add(tsr_metric_t *m, const char *const *values, double v)
{
    metric_op(m, values, ADD, v);
}
void tsr_metric_set(tsr_metric_t *m, const char *const *values, double v)
{
    metric_op(m, values, SET, v);
}
void tsr_metric_observe(tsr_metric_t *m, const char *const *values, double v)
{
    metric_op(m, values, OBSERVE, v);
}

/* ---- rendering ---- */

/* name{const labels,labels[,le="bound"]} value\n */
static int sample(struct tsr_metrics_text *t, const struct tsr_metric *m, const char *suffix,
                  const char *const *cl, const struct tsr_series *s, const char *le, double v)
{
    char num[40];
    int rc = tsr_metrics_text_printf(t, "%s%s", m->name, suffix);
    const char *sep = "{";
    for (int i = 0; !rc && cl && cl[i]; i += 2) {
        rc = tsr_metrics_text_printf(t, "%s%s=\"", sep, cl[i]);
        if (!rc) rc = text_escaped(t, cl[i + 1] ? cl[i + 1] : "", 1);
        if (!rc) rc = text_put(t, "\"", 1);
        sep = ",";
    }
    for (int i = 0; !rc && i < m->n_labels; i++) {
        rc = tsr_metrics_text_printf(t, "%s%s=\"", sep, m->labels[i]);
        if (!rc) rc = text_escaped(t, s->values[i], 1);
        if (!rc) rc = text_put(t, "\"", 1);
        sep = ",";
    }
    if (!rc && le) {
        rc = tsr_metrics_text_printf(t, "%sle=\"%s\"", sep, le);
        sep = ",";
    }
    if (!rc && *sep == ',') rc = text_put(t, "}", 1);
    format_value(v, num, sizeof num);
    if (!rc) rc = tsr_metrics_text_printf(t, " %s\n", num);
    return rc;
}

static int render_family(struct tsr_metrics_text *t, const struct tsr_metric *m,
                         const char *const *cl)
{
    static const char *const types[] = {"counter", "gauge", "histogram"};
    int rc = tsr_metrics_text_printf(t, "# HELP %s ", m->name);
    if (!rc) rc = text_escaped(t, m->help, 0);
    if (!rc) rc = tsr_metrics_text_printf(t, "\n# TYPE %s %s\n", m->name, types[m->kind]);
    for (const struct tsr_series *s = m->series; s && !rc; s = s->next) {
        if (m->kind != HISTOGRAM) {
            rc = sample(t, m, "", cl, s, NULL, s->v);
            continue;
        }
        uint64_t cum = 0;
        char le[40];
        for (int i = 0; i <= m->n_bounds && !rc; i++) {
            cum += s->buckets[i];
            format_value(i < m->n_bounds ? m->bounds[i] : INFINITY, le, sizeof le);
            rc = sample(t, m, "_bucket", cl, s, le, (double)cum);
        }
        if (!rc) rc = sample(t, m, "_sum", cl, s, NULL, s->v);
        if (!rc) rc = sample(t, m, "_count", cl, s, NULL, (double)s->count);
    }
    return rc;
}

int tsr_metrics_render(tsr_metrics_t *r, const char *const *const_labels,
                       struct tsr_metrics_text *out)
{
    int rc = text_reserve(out, 0); /* data is never NULL after a render */
    if (rc) return rc;
    out->data[out->len] = '\0';
    pthread_mutex_lock(&r->mu);
    for (const struct tsr_metric *m = r->families; m && !rc; m = m->next)
        rc = render_family(out, m, const_labels);
    pthread_mutex_unlock(&r->mu);
    return rc;
}
