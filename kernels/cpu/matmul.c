/* y = x · Wᵀ on the CPU, for every weight type.
 *
 * Exact path (the default; cpu_kernels.h): activations stay f32 and every weight is used at its
 * f32 value. Up to GEMV_MAX_N activation rows (decode), threads split the weight rows and the
 * ISA's gemv dequantizes blocks in registers: bound by memory bandwidth, each thread reads only
 * its share of the matrix once. Larger batches go by tiles of TILE_ROWS weight rows: a thread
 * dequantizes a tile into its own f32 scratch (TILE_ROWS * cols * 4 bytes, 96 KB at 1536
 * columns: it stays in L2) and runs the activation rows past it with gemm_f32, F32_CHUNK at a
 * time, so each weight is dequantized once per chunk, not once per token. F32 weights are used
 * in place. gemv and gemm_f32 do the same f32 operations per output element, so an element's
 * value depends on neither n, nor the tiling, nor the thread count: a sequence's tokens do not
 * change with what else shares its batch.
 *
 * Cost (2-core Zen 4, SmolLM2-135M): batches run near the FMA units' peak (~100 GFLOP/s a
 * core). Decode is bound by the dequantizing, not by memory: a Q4_1 block takes ~7 vector
 * operations (about as many cycles) against the q8 path's ~3, so the GEMV reads ~19 GB/s on
 * two cores where the q8 path reads ~30 and memory gives ~50.
 *
 * Q5_0, Q5_1 and the k-quants (Q4_K, Q5_K, Q6_K) take the exact path in either mode: the ISA's
 * gemv decodes each row's next 256 weights into a small stack buffer (common/dtype.c, scalar
 * code) and the batch path dequantizes tiles as for the other types; nothing is expanded at load.
 * Not tuned: the decode, not memory, bounds it.
 *
 * q8 path (TESSERA_CPU_ACT=q8, Q8_0/Q4_0/Q4_1 weights): each activation row is quantized once to
 * a q8 row, then the ISA's int8 kernel runs over weight rows, split between threads as above;
 * for batches, a tile of TILE_ROWS weight rows stays in cache while it meets every activation
 * row. Its per-element arithmetic ignores tiling too. */
#include <omp.h>
#include <string.h>

#include "common/status.h"
#include "kernels/cpu/cpu_internal.h"

enum {
    GEMV_MAX_N = 4,  /* activation rows up to which the exact path dequantizes in registers */
    TILE_ROWS = 16,  /* weight rows per tile for batches */
    ACT_CHUNK = 256, /* activation rows per pass over the weights (q8 path: keeps them in L2) */
    F32_CHUNK = 128, /* the same for f32 rows: 128 x 1536 floats are 768 KB */
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
    uint8_t *qa; /* q8 rows of qrow bytes (q8 path) */
    size_t qrow;
    int quantized; /* qa already holds x quantized */
    float *conv;   /* per-thread f32 tiles of TILE_ROWS * cols (exact path, batches) */
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

static void f32_part(const struct mm_job *m, int t, int tn)
{
    int lo, hi;
    if (m->n <= GEMV_MAX_N) {
        split(m->rows, tn, t, 4, &lo, &hi);
        if (hi > lo)
            m->k->gemv(m->type, m->cols, m->w + (size_t)lo * m->wrow, m->wrow, hi - lo, m->x,
                       (size_t)m->cols, m->n, m->y + lo, (size_t)m->rows);
        return;
    }
    int ntiles = (m->rows + TILE_ROWS - 1) / TILE_ROWS;
    split(ntiles, tn, t, 1, &lo, &hi);
    float *mine = m->conv ? m->conv + (size_t)t * TILE_ROWS * m->cols : NULL;
    for (int j0 = 0; j0 < m->n; j0 += F32_CHUNK) {
        int nc = m->n - j0 < F32_CHUNK ? m->n - j0 : F32_CHUNK;
        for (int tile = lo; tile < hi; tile++) {
            int r0 = tile * TILE_ROWS, nr = m->rows - r0 < TILE_ROWS ? m->rows - r0 : TILE_ROWS;
            const float *wf = (const float *)(const void *)(m->w + (size_t)r0 * m->wrow);
            if (mine) {
                for (int r = 0; r < nr; r++)
                    m->k->dequant(m->type, m->w + (size_t)(r0 + r) * m->wrow,
                                  mine + (size_t)r * m->cols, m->cols);
                wf = mine;
            }
            m->k->gemm_f32(m->cols, wf, (size_t)m->cols, nr, m->x + (size_t)j0 * m->cols,
                           (size_t)m->cols, nc, m->y + (size_t)j0 * m->rows + r0, (size_t)m->rows);
        }
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
    /* Arguments checked by tsr_op_matmul. */
    struct tsr_cpu_ctx *c = tsr_cpu_ctx(b);
    size_t wrow = tsr_dtype_row_bytes(w->type, w->cols);
    int rows = (int)w->rows, cols = (int)w->cols;
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
    /* the q8 kernels know these three; Q5_0, Q5_1 and the k-quants go the exact way */
    int quant = w->type == TSR_Q8_0 || w->type == TSR_Q4_0 || w->type == TSR_Q4_1;
    if (quant && c->act_q8) {
        m.qrow = tsr_cpu_q8_row_bytes(cols);
        if (!(m.qa = tsr_cpu_scratch(c, (size_t)n * m.qrow))) return TSR_ENOMEM;
        if (n <= 4 || nt == 1) { /* too little to split: no barrier */
            for (int j = 0; j < n; j++)
                c->k->quantize_q8(m.x + (size_t)j * cols, m.qa + (size_t)j * m.qrow, cols);
            m.quantized = 1;
        }
        run_parts(q8_part, &m, nt);
    } else {
        if (n > GEMV_MAX_N) {
            int ntiles = (rows + TILE_ROWS - 1) / TILE_ROWS;
            if (nt > ntiles) nt = ntiles;
            /* F32 weights in place, if aligned as floats (a GGUF tensor is) */
            if ((w->type != TSR_F32 || (uintptr_t)m.w % sizeof(float)) &&
                !(m.conv = tsr_cpu_scratch(c, (size_t)nt * TILE_ROWS * cols * sizeof(float))))
                return TSR_ENOMEM;
        }
        run_parts(f32_part, &m, nt);
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
