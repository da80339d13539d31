/* The CPU backend: host buffers, the element-wise ops, and the choice of kernels. Matmul is in
 * matmul.c, RoPE and attention in attention.c, the SIMD kernels in kernels_*.c. */
#include "kernels/cpu/cpu_backend.h"

#include <cpuid.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "kernels/cpu/cpu_internal.h"

/* ---- instruction sets ---- */

static int has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

enum tsr_cpu_isa tsr_cpu_isa_best(void)
{
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
    if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi"))
        return TSR_CPU_AVX512;
    return avx2 ? TSR_CPU_AVX2 : TSR_CPU_SCALAR;
}

const char *tsr_cpu_isa_name(enum tsr_cpu_isa isa)
{
    switch (isa) {
    case TSR_CPU_AVX512:
        return "avx512";
    case TSR_CPU_AVX2:
        return "avx2";
    default:
        return "scalar";
    }
}

static const struct tsr_cpu_kernels *kernels_for(enum tsr_cpu_isa isa)
{
    switch (isa) {
    case TSR_CPU_AVX512:
        return &tsr_cpu_kernels_avx512;
    case TSR_CPU_AVX2:
        return &tsr_cpu_kernels_avx2;
    default:
        return &tsr_cpu_kernels_scalar;
    }
}

static enum tsr_cpu_isa choose_isa(void)
{
    enum tsr_cpu_isa best = tsr_cpu_isa_best(), want = best;
    const char *env = getenv("TESSERA_CPU_ISA");
    if (!env || !*env) return best;
    if (!strcmp(env, "scalar")) {
        want = TSR_CPU_SCALAR;
    } else if (!strcmp(env, "avx2")) {
        want = TSR_CPU_AVX2;
    } else if (!strcmp(env, "avx512")) {
        want = TSR_CPU_AVX512;
    } else {
        tsr_log_warn("TESSERA_CPU_ISA=%s: not scalar, avx2 or avx512; using %s", env,
                     tsr_cpu_isa_name(best));
        return best;
    }
    if (want > best) {
        tsr_log_warn("TESSERA_CPU_ISA=%s: this CPU lacks it; using %s", env,
                     tsr_cpu_isa_name(best));
        return best;
    }
    return want;
}

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void init_kernels(void)
{
    const struct tsr_cpu_kernels *all[] = {&tsr_cpu_kernels_scalar, &tsr_cpu_kernels_avx2,
                                           &tsr_cpu_kernels_avx512};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i]->init) all[i]->init();
}

/* TESSERA_CPU_ACT: "f32" (or unset) for the exact matmul, "q8" for int8 activations. */
static int choose_act_q8(void)
{
    const char *env = getenv("TESSERA_CPU_ACT");
    if (!env || !*env || !strcmp(env, "f32")) return 0;
    if (!strcmp(env, "q8")) return 1;
    tsr_log_warn("TESSERA_CPU_ACT=%s: not f32 or q8; using f32", env);
    return 0;
}

/* ---- helpers shared by the op files ---- */

void *tsr_cpu_scratch(struct tsr_cpu_ctx *c, size_t n)
{
    if (n <= c->scratch_size) return c->scratch;
    size_t want = n + n / 2 + 4096;
    want = (want + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, want);
    if (!p) {
        tsr_errorf(TSR_ENOMEM, "out of memory allocating %zu bytes of CPU scratch", want);
        return NULL;
    }
    free(c->scratch);
    c->scratch = p;
    c->scratch_size = want;
    return p;
}

int tsr_cpu_threads_for(const struct tsr_cpu_ctx *c, double work)
{
    if (c->n_threads <= 1 || work < 32768.0) return 1;
    int t = (int)(work / 16384.0);
    return t < c->n_threads ? (t < 1 ? 1 : t) : c->n_threads;
}

/* ---- backend and buffers ---- */

static void cpu_free(tsr_backend_t *b)
{
    struct tsr_cpu_ctx *c = tsr_cpu_ctx(b);
    free(c->scratch);
    free(c->rope_freq);
    free(c->rope_cos);
    free(c->rope_sin);
    free(c);
    free(b);
}

static int cpu_buf_alloc(tsr_backend_t *b, tsr_buf_t *buf)
{
    size_t n = (buf->size + 63) & ~(size_t)63;
    if (n < buf->size) return tsr_errorf(TSR_ENOMEM, "buffer size %zu overflows", buf->size);
    buf->data = aligned_alloc(64, n ? n : 64);
    if (!buf->data) return tsr_errorf(TSR_ENOMEM, "out of memory allocating %zu bytes", n);
    buf->host = buf->data;
    buf->owns = 1;
    return 0;
}

static int cpu_buf_weights(tsr_backend_t *b, tsr_buf_t *buf, const void *host)
{
    buf->data = buf->host = (void *)host;
    buf->owns = 0;
    return 0;
}

static void cpu_buf_free(tsr_backend_t *b, tsr_buf_t *buf)
{
    if (buf->owns) free(buf->data);
    buf->data = buf->host = NULL;
}

static int cpu_buf_set(tsr_backend_t *b, tsr_buf_t *buf, size_t off, const void *src, size_t n)
{
    if (n) memmove((char *)buf->data + off, src, n);
    return 0;
}

static int cpu_buf_get(tsr_backend_t *b, tsr_buf_t *buf, size_t off, void *dst, size_t n)
{
    if (n) memmove(dst, (const char *)buf->data + off, n);
    return 0;
}

/* ---- element-wise ops ---- */

/* Row id of the table as f32; id -1 (a token another rank's vocabulary slice holds) is zeros. */
static void embed_row(enum tsr_dtype type, const uint8_t *t, size_t row, int32_t id, float *o,
                      int64_t cols)
{
    if (id < 0)
        memset(o, 0, sizeof *o * (size_t)cols);
    else
        tsr_dequantize_row(type, t + (size_t)id * row, o, cols);
}

static int cpu_embed(tsr_backend_t *b, tsr_buf_t *out, const struct tsr_weight *table,
                     const int32_t *ids, int n)
{
    struct tsr_cpu_ctx *c = tsr_cpu_ctx(b);
    size_t row = tsr_dtype_row_bytes(table->type, table->cols);
    if (!tsr_dtype_valid(table->type) || !row || table->cols > INT_MAX)
        return tsr_errorf(TSR_EINVAL, "embed: bad table (%s, %lld columns)",
                          tsr_dtype_name(table->type), (long long)table->cols);
    int rc = tsr_buf_check_size(table->buf, row * (size_t)table->rows, "embed table");
    if (!rc) rc = tsr_buf_check_size(out, tsr_f32_bytes(n, table->cols), "embed output");
    if (rc) return rc;
    const uint8_t *t = table->buf->data;
    float *o = out->data;
    int64_t cols = table->cols;
    int nt = tsr_cpu_threads_for(c, (double)n * cols);
    if (nt > 1) {
#pragma omp parallel for num_threads(nt)
        for (int i = 0; i < n; i++)
            embed_row(table->type, t, row, ids[i], o + (size_t)i * cols, cols);
    } else {
        for (int i = 0; i < n; i++)
            embed_row(table->type, t, row, ids[i], o + (size_t)i * cols, cols);
    }
    return 0;
}

/* The norm weight as f32: the buffer itself when F32, else converted into scratch. */
static const float *norm_weight(struct tsr_cpu_ctx *c, const struct tsr_weight *w, int dim, int *rc)
{
    size_t row = tsr_dtype_row_bytes(w->type, dim);
    *rc = 0;
    if (!tsr_dtype_valid(w->type) || !row || w->rows * w->cols < dim) {
        *rc = tsr_errorf(TSR_EINVAL, "rmsnorm: weight (%s, %lld x %lld) does not cover dim %d",
                         tsr_dtype_name(w->type), (long long)w->rows, (long long)w->cols, dim);
        return NULL;
    }
    if ((*rc = tsr_buf_check_size(w->buf, row, "rmsnorm weight"))) return NULL;
    if (w->type == TSR_F32) return w->buf->data;
    float *f = tsr_cpu_scratch(c, (size_t)dim * sizeof(float));
    if (!f) {
        *rc = TSR_ENOMEM;
        return NULL;
    }
    tsr_dequantize_row(w->type, w->buf->data, f, dim);
    return f;
}

/* 1/rms of a row. The mean square is summed in double (as llama.cpp's ggml_float does), the
 * scale rounded to f32 once. */
static float inv_rms(const float *x, int dim, float eps)
{
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int i = 0;
    for (; i + 4 <= dim; i += 4) {
        s0 += (double)x[i] * x[i];
        s1 += (double)x[i + 1] * x[i + 1];
        s2 += (double)x[i + 2] * x[i + 2];
        s3 += (double)x[i + 3] * x[i + 3];
    }
    for (; i < dim; i++) s0 += (double)x[i] * x[i];
    return (float)(1.0 / sqrt((s0 + s1 + s2 + s3) / dim + (double)eps));
}

static void rmsnorm_row(float *out, const float *x, const float *w, int dim, float eps)
{
    float s = inv_rms(x, dim, eps);
    for (int j = 0; j < dim; j++) out[j] = x[j] * s * w[j];
}

static void add_rmsnorm_row(float *resid, const float *delta, float *out, const float *w, int dim,
                            float eps)
{
    for (int j = 0; j < dim; j++) resid[j] += delta[j];
    rmsnorm_row(out, resid, w, dim, eps);
}

static int norm_checks(int n, int dim, tsr_buf_t *a, const char *an, tsr_buf_t *bb, const char *bn,
                       tsr_buf_t *cc, const char *cn)
{
    if (n < 0 || dim <= 0) return tsr_errorf(TSR_EINVAL, "rmsnorm: n %d, dim %d", n, dim);
    size_t need = tsr_f32_bytes(n, dim);
    int rc = tsr_buf_check_size(a, need, an);
    if (!rc) rc = tsr_buf_check_size(bb, need, bn);
    if (!rc && cc) rc = tsr_buf_check_size(cc, need, cn);
    return rc;
}

static int cpu_rmsnorm(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *x, const struct tsr_weight *w,
                       int n, int dim, float eps)
{
    struct tsr_cpu_ctx *c = tsr_cpu_ctx(b);
    int rc = norm_checks(n, dim, out, "rmsnorm output", x, "rmsnorm input", NULL, NULL);
    if (rc) return rc;
    const float *wf = norm_weight(c, w, dim, &rc);
    if (!wf) return rc;
    const float *xf = x->data;
    float *of = out->data;
    int nt = tsr_cpu_threads_for(c, 4.0 * n * dim);
    if (nt > 1) {
#pragma omp parallel for num_threads(nt)
        for (int i = 0; i < n; i++)
            rmsnorm_row(of + (size_t)i * dim, xf + (size_t)i * dim, wf, dim, eps);
    } else {
        for (int i = 0; i < n; i++)
            rmsnorm_row(of + (size_t)i * dim, xf + (size_t)i * dim, wf, dim, eps);
    }
    return 0;
}

static int cpu_add_rmsnorm(tsr_backend_t *b, tsr_buf_t *resid, tsr_buf_t *delta, tsr_buf_t *out,
                           const struct tsr_weight *w, int n, int dim, float eps)
{
    struct tsr_cpu_ctx *c = tsr_cpu_ctx(b);
    int rc = norm_checks(n, dim, resid, "add_rmsnorm residual", delta, "add_rmsnorm delta", out,
                         "add_rmsnorm output");
    if (rc) return rc;
    const float *wf = norm_weight(c, w, dim, &rc);
    if (!wf) return rc;
    float *rf = resid->data, *of = out->data;
    const float *df = delta->data;
    int nt = tsr_cpu_threads_for(c, 5.0 * n * dim);
    if (nt > 1) {
#pragma omp parallel for num_threads(nt)
        for (int i = 0; i < n; i++) {
            size_t off = (size_t)i * dim;
            add_rmsnorm_row(rf + off, df + off, of + off, wf, dim, eps);
        }
    } else {
        for (int i = 0; i < n; i++) {
            size_t off = (size_t)i * dim;
            add_rmsnorm_row(rf + off, df + off, of + off, wf, dim, eps);
        }
    }
    return 0;
}

static int cpu_swiglu(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *gate, tsr_buf_t *up, int n,
                      int width)
{
    struct tsr_cpu_ctx *c = tsr_cpu_ctx(b);
    if (n < 0 || width <= 0) return tsr_errorf(TSR_EINVAL, "swiglu: n %d, width %d", n, width);
    size_t need = tsr_f32_bytes(n, width);
    int rc = tsr_buf_check_size(out, need, "swiglu output");
    if (!rc) rc = tsr_buf_check_size(gate, need, "swiglu gate");
    if (!rc) rc = tsr_buf_check_size(up, need, "swiglu up");
    if (rc) return rc;
    float *o = out->data;
    const float *g = gate->data, *u = up->data;
    int nt = tsr_cpu_threads_for(c, 16.0 * n * width);
    if (nt > 1) {
#pragma omp parallel for num_threads(nt)
        for (int i = 0; i < n; i++) {
            size_t off = (size_t)i * width;
            c->k->silu_mul(o + off, g + off, u + off, width);
        }
    } else {
        c->k->silu_mul(o, g, u, n * width);
    }
    return 0;
}

static int cpu_gather_rows(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *x, const int32_t *rows,
                           int n, int width)
{
    struct tsr_cpu_ctx *c = tsr_cpu_ctx(b);
    if (n < 0 || width <= 0) return tsr_errorf(TSR_EINVAL, "gather_rows: n %d, width %d", n, width);
    size_t rb = (size_t)width * sizeof(float);
    int rc = tsr_buf_check_size(out, tsr_f32_bytes(n, width), "gather_rows output");
    for (int i = 0; !rc && i < n; i++)
        if (rows[i] < 0 || (size_t)rows[i] >= x->size / rb)
            rc = tsr_errorf(TSR_ERANGE, "gather_rows: row %d outside the %zu-row input", rows[i],
                            x->size / rb);
    if (rc) return rc;
    const char *src = x->data;
    char *dst = out->data;
    if (out->data != x->data) {
        for (int i = 0; i < n; i++) memcpy(dst + i * rb, src + (size_t)rows[i] * rb, rb);
        return 0;
    }
    /* In place: copy through scratch, since a later source row may already be overwritten. */
    char *tmp = tsr_cpu_scratch(c, (size_t)n * rb);
    if (!tmp) return TSR_ENOMEM;
    for (int i = 0; i < n; i++) memcpy(tmp + i * rb, src + (size_t)rows[i] * rb, rb);
    memcpy(dst, tmp, (size_t)n * rb);
    return 0;
}

static const struct tsr_backend_iface cpu_iface = {
    .name = "cpu",
    .free = cpu_free,
    .sync = NULL,
    .buf_alloc = cpu_buf_alloc,
    .buf_weights = cpu_buf_weights,
    .buf_free = cpu_buf_free,
    .buf_set = cpu_buf_set,
    .buf_get = cpu_buf_get,
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .add_rmsnorm = cpu_add_rmsnorm,
    .matmul = tsr_cpu_matmul,
    .rope_kv_write = tsr_cpu_rope_kv_write,
    .attention = tsr_cpu_attention,
    .swiglu = cpu_swiglu,
    .gather_rows = cpu_gather_rows,
    .moe = tsr_cpu_moe,
    .mla_attention = tsr_cpu_mla_attention,
};

tsr_backend_t *tsr_backend_cpu_new(int n_threads)
{
    pthread_once(&init_once, init_kernels);
    tsr_backend_t *b = calloc(1, sizeof *b);
    struct tsr_cpu_ctx *c = calloc(1, sizeof *c);
    if (!b || !c) {
        free(b);
        free(c);
        tsr_errorf(TSR_ENOMEM, "out of memory creating the CPU backend");
        return NULL;
    }
    c->k = kernels_for(choose_isa());
    c->act_q8 = choose_act_q8();
    c->n_threads = n_threads > 0 ? n_threads : omp_get_num_procs();
    b->i = &cpu_iface;
    b->ctx = c;
    tsr_log_debug("cpu backend: %s kernels, %s activations, %d threads",
                  tsr_cpu_isa_name(c->k->isa), c->act_q8 ? "q8" : "f32", c->n_threads);
    return b;
}

enum tsr_cpu_isa tsr_cpu_backend_isa(const tsr_backend_t *b)
{
    return ((const struct tsr_cpu_ctx *)b->ctx)->k->isa;
}

int tsr_cpu_backend_act_q8(const tsr_backend_t *b)
{
    return ((const struct tsr_cpu_ctx *)b->ctx)->act_q8;
}
