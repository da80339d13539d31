/* RoPE + KV-cache write, and causal attention over the paged KV cache, on the CPU.
 *
 * RoPE angles are pos * inv_freq[i] with cos and sin taken in double and rounded to f32; a table
 * of them for the positions seen so far (up to ROPE_TABLE_MAX) is kept in the backend and
 * rebuilt when inv_freq changes.
 *
 * Attention (flash-decoding style): a task is one token over a split of at most SPLIT positions,
 * all heads. It walks the split in chunks of cache rows inside one KV block with an online
 * softmax per head, accumulating in f32. Within a chunk it takes one KV head at a time; that
 * head's rows stay in L1 while every query head of its group uses them, so GQA reads the cache
 * once, not once per query head. Splits give decode enough tasks to use every thread on one
 * sequence; their partial results (max, sum, unnormalized output per head) are merged at the
 * end. Split and chunk sizes are fixed, so results do not depend on the number of threads.
 *
 * Cost: once the cache outgrows L3, decode attention is bound by memory, and reading one KV
 * head's part of [slot][kv_head][head_dim] rows is a strided pattern that gets about half of
 * a sequential read's bandwidth (measured: 10 vs 21 GB/s on one core). Copying each chunk
 * first, or prefetching the next block, did not pay.
 *
 * A bf16 cache (tsr_attn_shape.kv_type): rope_kv_write rounds the rows it stores to bf16
 * (nearest even); attention widens each chunk's rows of one KV head to f32 in L1-sized buffers
 * (exact) and runs the f32 kernels on them. So its results are those of an f32 cache holding the
 * rounded values, and the f32 path is the same code as before. An FP8 cache (TSR_F8_E4M3, its
 * layout in kernels/backend.h): rope_kv_write quantizes each head of the rows it stores with
 * tsr_kv_fp8_store (tsr_quantize_e4m3: scale amax / 448), and attention widens a chunk's rows the
 * same way, each element e4m3 * its head's scale (rounded once, to f32). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "kernels/cpu/cpu_internal.h"

enum {
    MAX_HEAD_DIM = 512,
    CHUNK = 64,             /* cache rows scored at once in attention... */
    CHUNK_FLOATS = 4096,    /* ...at most 16 KB of K (and of V), to stay in L1 */
    MAX_GROUP = 16,         /* query heads scored together against one chunk */
    SPLIT = 64,             /* positions per attention task (decode splits its context) */
    ROPE_TABLE_MAX = 32768, /* positions beyond this are computed per call */
};

static int check_shape(const struct tsr_attn_shape *s, const struct tsr_batch_meta *m,
                       const char *op)
{
    if (!tsr_kv_row_bytes(s->kv_type, 1, 2))
        return tsr_errorf(TSR_EINVAL, "%s: KV cache type %s (F32, BF16 or F8_E4M3 only)", op,
                          tsr_dtype_name(s->kv_type));
    if (s->n_head <= 0 || s->n_kv_head <= 0 || s->n_head % s->n_kv_head || s->head_dim <= 0 ||
        s->head_dim % 2 || s->head_dim > MAX_HEAD_DIM || s->block_size <= 0 || m->n_tokens < 0)
        return tsr_errorf(TSR_EINVAL,
                          "%s: unsupported shape (heads %d, kv heads %d, head dim %d, block %d, "
                          "%d tokens)",
                          op, s->n_head, s->n_kv_head, s->head_dim, s->block_size, m->n_tokens);
    return 0;
}

/* Cache slots in kc and vc (the smaller, if they differ). */
static int64_t cache_slots(const tsr_buf_t *kc, const tsr_buf_t *vc, const struct tsr_attn_shape *s)
{
    size_t row = tsr_kv_row_bytes(s->kv_type, s->n_kv_head, s->head_dim);
    size_t n = kc->size < vc->size ? kc->size : vc->size;
    return (int64_t)(n / row);
}

/* Makes the table cover positions < n_pos (clamped to ROPE_TABLE_MAX) for inv_freq f. */
static int rope_table(struct tsr_cpu_ctx *c, const float *f, int half, int n_pos)
{
    int same = c->rope_freq && c->rope_half == half &&
               !memcmp(c->rope_freq, f, (size_t)half * sizeof(float));
    if (n_pos > ROPE_TABLE_MAX) n_pos = ROPE_TABLE_MAX;
    if (same && n_pos <= c->rope_n_pos) return 0;
    int from = same ? c->rope_n_pos : 0;
    int grow = from + from / 2 + 64;
    if (n_pos < grow) n_pos = grow < ROPE_TABLE_MAX ? grow : ROPE_TABLE_MAX;
    if (!same) {
        float *nf = realloc(c->rope_freq, (size_t)half * sizeof(float));
        if (!nf) return tsr_errorf(TSR_ENOMEM, "out of memory for the RoPE table");
        c->rope_freq = nf;
        memcpy(nf, f, (size_t)half * sizeof(float));
        c->rope_half = half;
        c->rope_n_pos = 0;
    }
    size_t bytes = (size_t)n_pos * half * sizeof(float);
    float *nc = realloc(c->rope_cos, bytes);
    if (nc) c->rope_cos = nc;
    float *ns = nc ? realloc(c->rope_sin, bytes) : NULL;
    if (ns) c->rope_sin = ns;
    if (!nc || !ns) {
        c->rope_n_pos = 0;
        return tsr_errorf(TSR_ENOMEM, "out of memory for the RoPE table");
    }
    for (int p = from; p < n_pos; p++)
        for (int i = 0; i < half; i++) {
            double a = (double)p * (double)f[i];
            c->rope_cos[(size_t)p * half + i] = (float)cos(a);
            c->rope_sin[(size_t)p * half + i] = (float)sin(a);
        }
    c->rope_n_pos = n_pos;
    return 0;
}

static void rotate(float *x, const float *cs, const float *sn, int hd, int neox)
{
    int half = hd / 2;
    for (int i = 0; i < half; i++) {
        int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
        float x0 = x[i0], x1 = x[i1];
        x[i0] = x0 * cs[i] - x1 * sn[i];
        x[i1] = x0 * sn[i] + x1 * cs[i];
    }
}

/* The cos and sin of position pos's angles: the table's row, or computed into lcos and lsin
 * (half values each) beyond it. */
static void rope_angles(const struct tsr_cpu_ctx *c, const float *freq, int half, int pos,
                        float *lcos, float *lsin, const float **cs, const float **sn)
{
    if (pos < c->rope_n_pos) {
        *cs = c->rope_cos + (size_t)pos * half;
        *sn = c->rope_sin + (size_t)pos * half;
        return;
    }
    for (int i = 0; i < half; i++) {
        double a = (double)pos * (double)freq[i];
        lcos[i] = (float)cos(a);
        lsin[i] = (float)sin(a);
    }
    *cs = lcos;
    *sn = lsin;
}

/* Rotates token t's q and k heads and copies its k and v rows to the cache. */
static void rope_token(const struct tsr_cpu_ctx *c, tsr_buf_t *q, tsr_buf_t *k, tsr_buf_t *v,
                       tsr_buf_t *kc, tsr_buf_t *vc, const struct tsr_attn_shape *s,
                       const struct tsr_batch_meta *m, int t)
{
    int hd = s->head_dim, half = hd / 2, pos = m->pos[t];
    size_t qw = (size_t)s->n_head * hd, kw = (size_t)s->n_kv_head * hd;
    float *qt = (float *)q->data + t * qw, *kt = (float *)k->data + t * kw;
    const float *vt = (const float *)v->data + t * kw, *freq = s->inv_freq->data;
    float lcos[MAX_HEAD_DIM / 2], lsin[MAX_HEAD_DIM / 2];
    const float *cs, *sn;
    rope_angles(c, freq, half, pos, lcos, lsin, &cs, &sn);
    for (int h = 0; h < s->n_head; h++) rotate(qt + (size_t)h * hd, cs, sn, hd, s->neox);
    for (int h = 0; h < s->n_kv_head; h++) rotate(kt + (size_t)h * hd, cs, sn, hd, s->neox);
    if (s->kv_type == TSR_F8_E4M3) {
        size_t row = tsr_kv_row_bytes(s->kv_type, s->n_kv_head, hd);
        tsr_kv_fp8_store(kt, s->n_kv_head, hd, (uint8_t *)kc->data + (size_t)m->slot[t] * row);
        tsr_kv_fp8_store(vt, s->n_kv_head, hd, (uint8_t *)vc->data + (size_t)m->slot[t] * row);
        return;
    }
    if (s->kv_type == TSR_BF16) {
        uint16_t *kd = (uint16_t *)kc->data + (size_t)m->slot[t] * kw;
        uint16_t *vd = (uint16_t *)vc->data + (size_t)m->slot[t] * kw;
        for (size_t j = 0; j < kw; j++) {
            kd[j] = tsr_f32_to_bf16(kt[j]);
            vd[j] = tsr_f32_to_bf16(vt[j]);
        }
        return;
    }
    memcpy((float *)kc->data + (size_t)m->slot[t] * kw, kt, kw * sizeof(float));
    memcpy((float *)vc->data + (size_t)m->slot[t] * kw, vt, kw * sizeof(float));
}

int tsr_cpu_rope_kv_write(tsr_backend_t *b, tsr_buf_t *q, tsr_buf_t *k, tsr_buf_t *v, tsr_buf_t *kc,
                          tsr_buf_t *vc, const struct tsr_attn_shape *s,
                          const struct tsr_batch_meta *m)
{
    struct tsr_cpu_ctx *c = tsr_cpu_ctx(b);
    int rc = check_shape(s, m, "rope_kv_write");
    if (rc) return rc;
    int nt = m->n_tokens, hd = s->head_dim, half = hd / 2;
    size_t qw = (size_t)s->n_head * hd, kw = (size_t)s->n_kv_head * hd;
    rc = tsr_buf_check_size(q, nt * qw * sizeof(float), "rope q");
    if (!rc) rc = tsr_buf_check_size(k, nt * kw * sizeof(float), "rope k");
    if (!rc) rc = tsr_buf_check_size(v, nt * kw * sizeof(float), "rope v");
    if (!rc) rc = tsr_buf_check_size(s->inv_freq, (size_t)half * sizeof(float), "rope inv_freq");
    if (rc) return rc;
    int64_t n_slots = cache_slots(kc, vc, s);
    int max_pos = -1;
    for (int t = 0; t < nt; t++) {
        if (m->slot[t] < 0 || m->slot[t] >= n_slots)
            return tsr_errorf(TSR_ERANGE, "rope_kv_write: slot %d outside the %lld-slot cache",
                              m->slot[t], (long long)n_slots);
        if (m->pos[t] < 0) return tsr_errorf(TSR_ERANGE, "rope_kv_write: position %d", m->pos[t]);
        if (m->pos[t] > max_pos) max_pos = m->pos[t];
    }
    if ((rc = rope_table(c, s->inv_freq->data, half, max_pos + 1))) return rc;
    int threads = tsr_cpu_threads_for(c, 8.0 * nt * (qw + kw));
    if (threads > 1) {
#pragma omp parallel for num_threads(threads)
        for (int t = 0; t < nt; t++) rope_token(c, q, k, v, kc, vc, s, m, t);
    } else {
        for (int t = 0; t < nt; t++) rope_token(c, q, k, v, kc, vc, s, m, t);
    }
    return 0;
}

/* One attention task: every head of token t over positions [p_lo, p_hi). Its result is a
 * partial softmax per head: the running max, the sum of exp(score - max) and the unnormalized
 * output, merged with the token's other splits by merge_head(). */
struct attn_task {
    int t, p_lo, p_hi;
    float *part; /* acc[n_head][hd], then max[n_head], then sum[n_head] */
};

/* Rows of the chunk starting at position p0 (< end): up to the end of its KV block, of the
 * task, and `chunk` rows. */
static int chunk_rows(int p0, int end, int bs, int chunk)
{
    int cnt = bs - p0 % bs;
    if (cnt > end - p0) cnt = end - p0;
    return cnt < chunk ? cnt : chunk;
}

/* dst[r][0..hd) = src[r * stride + 0..hd) widened from bf16 (exact), for r < cnt. */
static void widen_rows(const uint16_t *src, size_t stride, int cnt, int hd, float *dst)
{
    for (int r = 0; r < cnt; r++)
        for (int d = 0; d < hd; d++)
            dst[(size_t)r * hd + d] = tsr_bf16_to_f32(src[(size_t)r * stride + d]);
}

/* dst[r][0..hd) = the E4M3 codes at src + r * row widened to f32, each times the f32 scale at
 * src + r * row + scale (its head's), for r < cnt. */
static void widen_rows_e4m3(const uint8_t *src, size_t row, size_t scale, int cnt, int hd,
                            float *dst)
{
    for (int r = 0; r < cnt; r++) {
        const uint8_t *q = src + (size_t)r * row;
        float d;
        memcpy(&d, q + scale, 4);
        for (int j = 0; j < hd; j++) dst[(size_t)r * hd + j] = d * tsr_e4m3_to_f32(q[j]);
    }
}

/* kcf and vcf point at the cache: f32, or bf16 or fp8 rows when s->kv_type says so. */
static void attend_task(const struct tsr_cpu_kernels *k, const struct attn_task *tk,
                        const void *kcf, const void *vcf, const float *qf, const int32_t *bt,
                        const struct tsr_attn_shape *s)
{
    int hd = s->head_dim, bs = s->block_size, nh = s->n_head, group = nh / s->n_kv_head;
    size_t kw = (size_t)s->n_kv_head * hd;
    int chunk = CHUNK_FLOATS / hd < CHUNK ? CHUNK_FLOATS / hd : CHUNK;
    float *acc = tk->part, *mx = acc + (size_t)nh * hd, *sum = mx + nh;
    float sc[MAX_GROUP][CHUNK];
    float kwide[CHUNK_FLOATS], vwide[CHUNK_FLOATS]; /* a bf16 or fp8 chunk's rows, widened */
    int bf16 = s->kv_type == TSR_BF16, fp8 = s->kv_type == TSR_F8_E4M3;
    size_t kstride = bf16 || fp8 ? (size_t)hd : kw; /* from one row the kernels read to the next */
    size_t row8 = tsr_kv_row_bytes(s->kv_type, s->n_kv_head, hd); /* fp8: bytes a slot */
    const float *q = qf + (size_t)tk->t * nh * hd;
    memset(acc, 0, (size_t)nh * hd * sizeof(float));
    for (int h = 0; h < nh; h++) {
        mx[h] = -INFINITY;
        sum[h] = 0.0f;
    }
    for (int p0 = tk->p_lo; p0 < tk->p_hi;) {
        int cnt = chunk_rows(p0, tk->p_hi, bs, chunk);
        size_t slot = (size_t)bt[p0 / bs] * bs + p0 % bs;
        for (int kvh = 0; kvh < s->n_kv_head; kvh++) {
            size_t off = slot * kw + (size_t)kvh * hd;
            const float *kr, *vr;
            if (fp8) {
                size_t o8 = slot * row8 + (size_t)kvh * hd,
                       sc = kw + 4 * (size_t)kvh - (size_t)kvh * hd;
                widen_rows_e4m3((const uint8_t *)kcf + o8, row8, sc, cnt, hd, kwide);
                widen_rows_e4m3((const uint8_t *)vcf + o8, row8, sc, cnt, hd, vwide);
                kr = kwide;
                vr = vwide;
            } else if (bf16) {
                widen_rows((const uint16_t *)kcf + off, kw, cnt, hd, kwide);
                widen_rows((const uint16_t *)vcf + off, kw, cnt, hd, vwide);
                kr = kwide;
                vr = vwide;
            } else {
                kr = (const float *)kcf + off;
                vr = (const float *)vcf + off;
            }
            for (int h0 = kvh * group; h0 < (kvh + 1) * group; h0 += MAX_GROUP) {
                int g = (kvh + 1) * group - h0 < MAX_GROUP ? (kvh + 1) * group - h0 : MAX_GROUP;
                for (int h = 0; h < g; h++)
                    k->attn_scores(q + (size_t)(h0 + h) * hd, kr, kstride, cnt, hd, s->scale,
                                   sc[h]);
                for (int h = 0; h < g; h++) {
                    int H = h0 + h;
                    float cm = -INFINITY;
                    for (int i = 0; i < cnt; i++)
                        if (sc[h][i] > cm) cm = sc[h][i];
                    if (cm > mx[H]) {
                        if (mx[H] != -INFINITY) {
                            float corr = expf(mx[H] - cm);
                            k->scale(corr, acc + (size_t)H * hd, hd);
                            sum[H] *= corr;
                        }
                        mx[H] = cm;
                    }
                    sum[H] += k->exp_sum(sc[h], mx[H], cnt);
                    k->attn_accum(sc[h], vr, kstride, cnt, hd, acc + (size_t)H * hd);
                }
            }
        }
        p0 += cnt;
    }
}

/* Head h's output from the partials of the n tasks (splits) of its token. */
static void merge_head(const struct attn_task *tasks, int n, int h, int nh, int hd, float *out)
{
    float mx = -INFINITY, sum = 0.0f;
    for (int i = 0; i < n; i++) {
        float m = tasks[i].part[(size_t)nh * hd + h];
        if (m > mx) mx = m;
    }
    for (int d = 0; d < hd; d++) out[d] = 0.0f;
    for (int i = 0; i < n; i++) {
        const float *acc = tasks[i].part + (size_t)h * hd, *ms = tasks[i].part + (size_t)nh * hd;
        float w = expf(ms[h] - mx);
        sum += w * ms[nh + h];
        for (int d = 0; d < hd; d++) out[d] += w * acc[d];
    }
    float inv = 1.0f / sum;
    for (int d = 0; d < hd; d++) out[d] *= inv;
}

/* Tasks and partials of attend() for m's tokens: *n_tasks of them in scratch bytes. */
static size_t attend_bytes(const struct tsr_attn_shape *s, const struct tsr_batch_meta *m,
                           size_t *n_tasks, double *work)
{
    size_t n = 0, part = (size_t)s->n_head * (s->head_dim + 2);
    *work = 0;
    for (int t = 0; t < m->n_tokens; t++) {
        n += (size_t)(m->pos[t] / SPLIT + 1);
        *work += 2.0 * (m->pos[t] + 1) * s->n_head * s->head_dim;
    }
    *n_tasks = n;
    return ((n * sizeof(struct attn_task) + 63) & ~(size_t)63) + n * part * sizeof(float);
}

/* of [n][n_head*head_dim] = attention of qf over the cache kcf/vcf, in mem (attend_bytes). */
static void attend(struct tsr_cpu_ctx *c, float *of, const float *qf, const void *kcf,
                   const void *vcf, const struct tsr_attn_shape *s, const struct tsr_batch_meta *m,
                   char *mem)
{
    const struct tsr_cpu_kernels *k = c->k;
    int nt = m->n_tokens, nh = s->n_head, hd = s->head_dim;
    size_t n_tasks, part = (size_t)nh * (hd + 2), qw = (size_t)nh * hd;
    double work;
    size_t task_bytes = attend_bytes(s, m, &n_tasks, &work) - n_tasks * part * sizeof(float);
    struct attn_task *tasks = (struct attn_task *)mem;
    float *parts = (float *)(mem + task_bytes);
    size_t ti = 0;
    for (int t = 0; t < nt; t++)
        for (int p0 = 0; p0 <= m->pos[t]; p0 += SPLIT, ti++) {
            int end = p0 + SPLIT < m->pos[t] + 1 ? p0 + SPLIT : m->pos[t] + 1;
            tasks[ti] = (struct attn_task){t, p0, end, parts + ti * part};
        }
    int threads = tsr_cpu_threads_for(c, work);
    if (threads > 1) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
        for (size_t i = 0; i < n_tasks; i++)
            attend_task(k, &tasks[i], kcf, vcf, qf,
                        m->block_tables + (size_t)m->seq[tasks[i].t] * m->max_blocks, s);
    } else {
        for (size_t i = 0; i < n_tasks; i++)
            attend_task(k, &tasks[i], kcf, vcf, qf,
                        m->block_tables + (size_t)m->seq[tasks[i].t] * m->max_blocks, s);
    }
    /* Merge: a token's splits are consecutive tasks. */
    for (size_t i = 0; i < n_tasks;) {
        int t = tasks[i].t, splits = m->pos[t] / SPLIT + 1;
        for (int h = 0; h < nh; h++)
            merge_head(tasks + i, splits, h, nh, hd, of + (size_t)t * qw + (size_t)h * hd);
        i += (size_t)splits;
    }
}

int tsr_cpu_attention(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *q, tsr_buf_t *kc, tsr_buf_t *vc,
                      const struct tsr_attn_shape *s, const struct tsr_batch_meta *m)
{
    struct tsr_cpu_ctx *c = tsr_cpu_ctx(b);
    int rc = check_shape(s, m, "attention");
    if (rc) return rc;
    size_t qw = (size_t)s->n_head * s->head_dim, n_tasks;
    rc = tsr_buf_check_size(q, m->n_tokens * qw * sizeof(float), "attention q");
    if (!rc) rc = tsr_buf_check_size(out, m->n_tokens * qw * sizeof(float), "attention output");
    if (rc) return rc;
    double work;
    char *mem = tsr_cpu_scratch(c, attend_bytes(s, m, &n_tasks, &work));
    if (!mem) return TSR_ENOMEM;
    attend(c, out->data, q->data, kc->data, vc->data, s, m, mem);
    return 0;
}

/* ---- multi-head latent attention (kernels/backend.h tsr_op_mla_attention) ----
 * The latent cache is one KV head of kv_lora_rank + qk_rope, K and V alike: attend() scores the
 * absorbed queries [W_UK^T q_nope | rope(q_pe)] against it (MQA, every head in one group) and
 * sums the rows, whose first kv_lora_rank values are the latent output W_UV takes (the summed
 * k_pe part, qk_rope of kv_lora_rank + qk_rope, is computed and dropped). */

/* Token t: kv's latent normed and k_pe rotated (in place) and stored at its slot; its absorbed
 * query heads written to qa (n_head rows of kv_lora_rank + qk_rope). */
static void mla_token(const struct tsr_cpu_ctx *c, float *kvt, const float *qt, float *qa,
                      void *cache, const struct tsr_mla *mla, const struct tsr_attn_shape *s,
                      const struct tsr_batch_meta *m, int t)
{
    int kr = mla->kv_lora_rank, rope = mla->qk_rope, nope = mla->qk_nope, row = kr + rope;
    int half = rope / 2, pos = m->pos[t];
    const float *wn = mla->kv_norm->buf->data, *wkb = mla->kv_b->buf->data;
    float lcos[MAX_HEAD_DIM / 2], lsin[MAX_HEAD_DIM / 2];
    const float *cs, *sn;
    rope_angles(c, s->inv_freq->data, half, pos, lcos, lsin, &cs, &sn);
    double ss = 0;
    for (int j = 0; j < kr; j++) ss += (double)kvt[j] * kvt[j];
    float inv = (float)(1.0 / sqrt(ss / kr + mla->eps));
    for (int j = 0; j < kr; j++) kvt[j] = kvt[j] * inv * wn[j];
    rotate(kvt + kr, cs, sn, rope, s->neox);
    if (s->kv_type == TSR_BF16) {
        uint16_t *d = (uint16_t *)cache + (size_t)m->slot[t] * row;
        for (int j = 0; j < row; j++) d[j] = tsr_f32_to_bf16(kvt[j]);
    } else {
        memcpy((float *)cache + (size_t)m->slot[t] * row, kvt, (size_t)row * sizeof(float));
    }
    for (int h = 0; h < s->n_head; h++) {
        const float *qh = qt + (size_t)h * (nope + rope);
        const float *uk = wkb + (size_t)h * (nope + mla->v_dim) * kr; /* W_UK: nope rows of kr */
        float *o = qa + (size_t)h * row;
        memset(o, 0, (size_t)kr * sizeof(float));
        for (int i = 0; i < nope; i++)
            for (int j = 0; j < kr; j++) o[j] += qh[i] * uk[(size_t)i * kr + j];
        memcpy(o + kr, qh + nope, (size_t)rope * sizeof(float));
        rotate(o + kr, cs, sn, rope, s->neox);
    }
}

/* Token t's output heads: W_UV times each head's latent output (the first kv_lora_rank of its
 * row of oa). */
static void mla_out(const float *oa, float *out, const struct tsr_mla *mla, int n_head)
{
    int kr = mla->kv_lora_rank, row = kr + mla->qk_rope, v = mla->v_dim;
    const float *wkb = mla->kv_b->buf->data;
    for (int h = 0; h < n_head; h++) {
        const float *uv = wkb + ((size_t)h * (mla->qk_nope + v) + mla->qk_nope) * kr;
        const float *o = oa + (size_t)h * row;
        for (int d = 0; d < v; d++) {
            float acc = 0;
            for (int j = 0; j < kr; j++) acc += uv[(size_t)d * kr + j] * o[j];
            out[(size_t)h * v + d] = acc;
        }
    }
}

int tsr_cpu_mla_attention(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *q, tsr_buf_t *kv,
                          tsr_buf_t *cache, const struct tsr_mla *mla,
                          const struct tsr_attn_shape *s, const struct tsr_batch_meta *m)
{
    struct tsr_cpu_ctx *c = tsr_cpu_ctx(b);
    int nt = m->n_tokens, nh = s->n_head, kr = mla->kv_lora_rank, rope = mla->qk_rope;
    size_t row = (size_t)kr + rope, qw = (size_t)nh * (mla->qk_nope + rope);
    /* attend()'s chunks hold CHUNK_FLOATS / row cache rows: at least one */
    if (row > CHUNK_FLOATS || rope / 2 > MAX_HEAD_DIM / 2 || s->block_size <= 0 || nt < 0)
        return tsr_errorf(TSR_EINVAL,
                          "mla_attention: a latent row of %zu (at most %d) or RoPE of %d (at most "
                          "%d)",
                          row, CHUNK_FLOATS, rope, MAX_HEAD_DIM);
    int rc = tsr_buf_check_size(q, nt * qw * sizeof(float), "mla q");
    if (!rc) rc = tsr_buf_check_size(kv, nt * row * sizeof(float), "mla kv");
    if (!rc)
        rc = tsr_buf_check_size(out, (size_t)nt * nh * mla->v_dim * sizeof(float), "mla output");
    if (!rc) rc = tsr_buf_check_size(s->inv_freq, (size_t)rope / 2 * sizeof(float), "mla inv_freq");
    if (rc) return rc;
    int64_t n_slots = (int64_t)(cache->size / tsr_kv_row_bytes(s->kv_type, 1, (int)row));
    int max_pos = -1;
    for (int t = 0; t < nt; t++) {
        if (m->slot[t] < 0 || m->slot[t] >= n_slots)
            return tsr_errorf(TSR_ERANGE, "mla_attention: slot %d outside the %lld-slot cache",
                              m->slot[t], (long long)n_slots);
        if (m->pos[t] > max_pos) max_pos = m->pos[t];
    }
    if ((rc = rope_table(c, s->inv_freq->data, rope / 2, max_pos + 1))) return rc;
    size_t n_tasks, lat = (size_t)nt * nh * row * sizeof(float);
    double work;
    size_t att = attend_bytes(s, m, &n_tasks, &work);
    char *mem = tsr_cpu_scratch(c, 2 * lat + att);
    if (!mem) return TSR_ENOMEM;
    float *qa = (float *)mem, *oa = (float *)(mem + lat);
    float *kvf = kv->data, *of = out->data;
    const float *qf = q->data;
    int threads = tsr_cpu_threads_for(c, 2.0 * nt * nh * (mla->qk_nope + mla->v_dim) * kr);
    if (threads > 1) {
#pragma omp parallel for num_threads(threads)
        for (int t = 0; t < nt; t++)
            mla_token(c, kvf + t * row, qf + t * qw, qa + t * nh * row, cache->data, mla, s, m, t);
    } else {
        for (int t = 0; t < nt; t++)
            mla_token(c, kvf + t * row, qf + t * qw, qa + t * nh * row, cache->data, mla, s, m, t);
    }
    attend(c, oa, qa, cache->data, cache->data, s, m, mem + 2 * lat);
    size_t ow = (size_t)nh * mla->v_dim;
    if (threads > 1) {
#pragma omp parallel for num_threads(threads)
        for (int t = 0; t < nt; t++) mla_out(oa + t * nh * row, of + t * ow, mla, nh);
    } else {
        for (int t = 0; t < nt; t++) mla_out(oa + t * nh * row, of + t * ow, mla, nh);
    }
    return 0;
}
