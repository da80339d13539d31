/* y = x · Wᵀ on the CPU, for every weight type.
 *
 * Quantized weights (Q8_0, Q4_0, Q4_1): each activation row is quantized once to a q8 row
 * (cpu_kernels.h), then the ISA's int8 kernel runs over weight rows. Threads split the weight
 * rows (each reads only its share of the matrix: decode is bound by memory bandwidth); for
 * batches, a tile of TILE_ROWS weight rows stays in cache while it meets every activation row.
 *
 * Float weights (F32, F16, BF16): the f32 kernels below SGEMM_MIN_N rows of activations; above,
 * OpenBLAS sgemm on tiles of SGEMM_TILE weight rows (converted to f32 first unless F32), one
 * OpenBLAS thread per tile. Tiles have fixed boundaries, so results do not depend on the number
 * of threads; neither do the quantized kernels', whose per-element arithmetic ignores tiling. */
#include <cblas.h>
#include <limits.h>
#include <omp.h>
#include <string.h>

#include "common/status.h"
#include "kernels/cpu/cpu_internal.h"

enum {
    TILE_ROWS = 16,   /* weight rows per tile for batched quantized matmul */
    ACT_CHUNK = 256,  /* activation rows per pass over the weights (keeps them in L2) */
    SGEMM_MIN_N = 16, /* activation rows from which float weights go to OpenBLAS */
    SGEMM_TILE = 64,  /* weight rows per sgemm call */
};

/* [lo, hi) of n items for thread t of nt, in multiples of `align` items. */
static void split(int n, int nt, int t, int align, int *lo, int *hi)
{
    int units = (n + align - 1) / align;
    *lo = (int)((int64_t)units * t / nt) * align;
    *hi = (int)((int64_t)units * (t + 1) / nt) * align;
    if (*lo > n) *lo = n;
    if (*hi > n) *hi = n;
}

/* One matmul's arguments, shared by the threads of its team. */
struct mm_job {
    const struct tsr_cpu_kernels *k;
    enum tsr_dtype type;
    int rows, cols, n;
    const uint8_t *w; /* weight rows of wrow bytes */
    size_t wrow;
    const float *x;
    float *y;
    uint8_t *qa; /* q8 rows of qrow bytes (quantized weights) */
    size_t qrow;
    int quantized; /* qa already holds x quantized */
    float *conv;   /* per-thread f32 tiles (sgemm on F16/BF16) */
};

static void q8_part(const struct mm_job *m, int t, int tn)
{
    int lo, hi;
    if (!m->quantized) {
        split(m->n, tn, t, 1, &lo, &hi);
        for (int j = lo; j < hi; j++)
            m->k->quantize_q8(m->x + (size_t)j * m->cols, m->qa + (size_t)j * m->qrow, m->cols);
#pragma omp barrier
    }
    split(m->rows, tn, t, 4, &lo, &hi);
    if (m->n <= 4) {
        if (hi > lo)
            m->k->gemm_q8(m->type, m->cols, m->w + (size_t)lo * m->wrow, m->wrow, hi - lo, m->qa,
                          m->qrow, m->n, m->y + lo, (size_t)m->rows);
        return;
    }
    for (int j0 = 0; j0 < m->n; j0 += ACT_CHUNK) {
        int nc = m->n - j0 < ACT_CHUNK ? m->n - j0 : ACT_CHUNK;
        for (int r = lo; r < hi; r += TILE_ROWS) {
            int nr = hi - r < TILE_ROWS ? hi - r : TILE_ROWS;
            m->k->gemm_q8(m->type, m->cols, m->w + (size_t)r * m->wrow, m->wrow, nr,
                          m->qa + (size_t)j0 * m->qrow, m->qrow, nc,
                          m->y + (size_t)j0 * m->rows + r, (size_t)m->rows);
        }
    }
}

static void f_part(const struct mm_job *m, int t, int tn)
{
    int lo, hi;
    split(m->rows, tn, t, 4, &lo, &hi);
    if (hi > lo)
        m->k->gemm_f(m->type, m->cols, m->w + (size_t)lo * m->wrow, m->wrow, hi - lo, m->x,
                     (size_t)m->cols, m->n, m->y + lo, (size_t)m->rows);
}

static void sgemm_part(const struct mm_job *m, int t, int tn)
{
    int ntiles = (m->rows + SGEMM_TILE - 1) / SGEMM_TILE, lo, hi;
    split(ntiles, tn, t, 1, &lo, &hi);
    for (int tile = lo; tile < hi; tile++) {
        int r0 = tile * SGEMM_TILE, nr = m->rows - r0 < SGEMM_TILE ? m->rows - r0 : SGEMM_TILE;
        const float *wt = (const float *)(m->w + (size_t)r0 * m->wrow);
        if (m->conv) {
            float *mine = m->conv + (size_t)t * SGEMM_TILE * m->cols;
            for (int r = 0; r < nr; r++)
                m->k->to_f32(m->type, m->w + (size_t)(r0 + r) * m->wrow, mine + (size_t)r * m->cols,
                             m->cols);
            wt = mine;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m->n, nr, m->cols, 1.0f, m->x, m->cols,
                    wt, m->cols, 0.0f, m->y + r0, m->rows);
    }
}

/* Runs part(m, t, nt) on nt threads; inline when nt is 1 (a one-thread OpenMP region still
 * costs ~0.3 us, and decode makes hundreds of calls per token). */
static void run_parts(void (*part)(const struct mm_job *, int, int), const struct mm_job *m, int nt)
{
    if (nt <= 1) {
        part(m, 0, 1);
        return;
    }
#pragma omp parallel num_threads(nt)
    part(m, omp_get_thread_num(), omp_get_num_threads());
}

int tsr_cpu_matmul(tsr_backend_t *b, tsr_buf_t *y, const struct tsr_weight *w, tsr_buf_t *x,
                   const struct tsr_weight *bias, int n)
{
    struct tsr_cpu_ctx *c = tsr_cpu_ctx(b);
    size_t wrow = tsr_dtype_row_bytes(w->type, w->cols);
    if (!tsr_dtype_valid(w->type) || !wrow || w->rows <= 0 || w->rows > INT_MAX ||
        w->cols > INT_MAX / 4 || n < 0)
        return tsr_errorf(TSR_EINVAL, "matmul: bad weight (%s, %lld x %lld) or n %d",
                          tsr_dtype_name(w->type), (long long)w->rows, (long long)w->cols, n);
    int rows = (int)w->rows, cols = (int)w->cols;
    int rc = tsr_cpu_check_size(w->buf, wrow * (size_t)rows, "matmul weight");
    if (!rc) rc = tsr_cpu_check_size(x, (size_t)n * cols * sizeof(float), "matmul input");
    if (!rc) rc = tsr_cpu_check_size(y, (size_t)n * rows * sizeof(float), "matmul output");
    if (rc) return rc;
    if (n > 0 && y->data == x->data)
        return tsr_errorf(TSR_EINVAL, "matmul: output and input are the same buffer");
    size_t brow = 0;
    if (bias) {
        brow = tsr_dtype_row_bytes(bias->type, rows);
        if (!tsr_dtype_valid(bias->type) || !brow || bias->rows * bias->cols != rows)
            return tsr_errorf(TSR_EINVAL, "matmul: bias (%s, %lld x %lld) is not %d values",
                              tsr_dtype_name(bias->type), (long long)bias->rows,
                              (long long)bias->cols, rows);
        if ((rc = tsr_cpu_check_size(bias->buf, brow, "matmul bias"))) return rc;
    }
    if (n == 0) return 0;
    float *yf = y->data;
    struct mm_job m = {.k = c->k,
                       .type = w->type,
                       .rows = rows,
                       .cols = cols,
                       .n = n,
                       .w = w->buf->data,
                       .wrow = wrow,
                       .x = x->data,
                       .y = yf};
    int nt = tsr_cpu_threads_for(c, (double)rows * cols * n);
    if (w->type == TSR_Q8_0 || w->type == TSR_Q4_0 || w->type == TSR_Q4_1) {
        m.qrow = tsr_cpu_q8_row_bytes(cols);
        if (!(m.qa = tsr_cpu_scratch(c, (size_t)n * m.qrow))) return TSR_ENOMEM;
        if (n <= 4 || nt == 1) { /* too little to split: no barrier */
            for (int j = 0; j < n; j++)
                c->k->quantize_q8(m.x + (size_t)j * cols, m.qa + (size_t)j * m.qrow, cols);
            m.quantized = 1;
        }
        run_parts(q8_part, &m, nt);
    } else if (n >= SGEMM_MIN_N) {
        int ntiles = (rows + SGEMM_TILE - 1) / SGEMM_TILE;
        nt = c->n_threads < ntiles ? c->n_threads : ntiles;
        if (w->type != TSR_F32 &&
            !(m.conv = tsr_cpu_scratch(c, (size_t)nt * SGEMM_TILE * cols * sizeof(float))))
            return TSR_ENOMEM;
        run_parts(sgemm_part, &m, nt);
    } else {
        run_parts(f_part, &m, nt);
    }
    if (!bias) return 0;
    const float *bf = bias->buf->data;
    if (bias->type != TSR_F32) {
        float *conv = tsr_cpu_scratch(c, (size_t)rows * sizeof(float));
        if (!conv) return TSR_ENOMEM;
        tsr_dequantize_row(bias->type, bias->buf->data, conv, rows);
        bf = conv;
    }
    for (int j = 0; j < n; j++)
        for (int r = 0; r < rows; r++) yf[(size_t)j * rows + r] += bf[r];
    return 0;
}
