/* Mixture-of-experts FFN on the CPU (kernels/backend.h tsr_op_moe), and its expert-parallel form
 * over MPI (kernels/moe_ep.h tsr_op_moe_ep), which shares the routing, the expert-order sum and
 * the shared expert with it. Blocked by expert: the rows routed to an expert are gathered and run
 * through it with one matmul per weight, so each expert's weights are read once a step however
 * many tokens chose it (a decode step of one token reads only its n_used experts). Outputs are
 * scaled and added to their rows in expert order: the sum's order differs from a token-by-token
 * loop by f32 rounding only. Step buffers are allocated per call (n_tokens x (dim + 2 ffn)
 * floats: small next to the experts' weights; the expert-parallel form adds its all-to-all
 * rows). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "kernels/comm.h"
#include "kernels/cpu/cpu_internal.h"
#include "kernels/moe_ep.h"

struct moe_scratch {
    tsr_buf_t *logits, *xe, *h, *tmp, *ye;
};

static void scratch_free(struct moe_scratch *s)
{
    tsr_buf_t *all[] = {s->logits, s->xe, s->h, s->tmp, s->ye};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) tsr_buf_free(all[i]);
}

/* out rows[i] += w[i] * y[i] for the n rows of y (dim floats each); w NULL: 1. */
static void scatter_add(float *out, const float *y, const int32_t *rows, const float *w, int n,
                        int64_t dim)
{
    for (int i = 0; i < n; i++) {
        float *o = out + (size_t)rows[i] * dim;
        const float *yi = y + (size_t)i * dim;
        float s = w ? w[i] : 1.0f;
        for (int64_t d = 0; d < dim; d++) o[d] += s * yi[d];
    }
}

/* One SwiGLU MLP over the n rows of xe: ye = down(silu(xe · gateᵀ) * (xe · upᵀ)). */
static int mlp(tsr_backend_t *b, struct moe_scratch *s, const struct tsr_weight *gate,
               const struct tsr_weight *up, const struct tsr_weight *down, tsr_buf_t *xe, int n)
{
    int rc = tsr_op_matmul_swiglu(b, s->h, s->tmp, gate, up, xe, n);
    return rc ? rc : tsr_op_matmul(b, s->ye, down, s->h, NULL, n);
}

/* Router logits of the n rows of x and their routing: ids and w (n, n_used); the trace too. */
static int route(tsr_backend_t *b, struct moe_scratch *s, const struct tsr_moe *moe, tsr_buf_t *x,
                 int n, int32_t *ids, float *w)
{
    int rc = tsr_op_matmul(b, s->logits, moe->router, x, NULL, n);
    if (!rc) rc = tsr_moe_route(&moe->routing, s->logits->data, moe->score_bias, n, ids, w);
    if (!rc && moe->trace) memcpy(moe->trace, ids, sizeof *ids * (size_t)n * moe->routing.n_used);
    return rc;
}

/* o (n rows) += the shared expert over the n rows of x, gated when moe->shared_inp; rows and we
 * are scratch of n entries. */
static int add_shared(tsr_backend_t *b, struct moe_scratch *s, const struct tsr_moe *moe,
                      tsr_buf_t *x, int n, int64_t dim, float *o, int32_t *rows, float *we)
{
    int rc = mlp(b, s, moe->shared_gate, moe->shared_up, moe->shared_down, x, n);
    if (rc) return rc;
    for (int i = 0; i < n; i++) rows[i] = i;
    if (moe->shared_inp) { /* qwen2_moe: sigmoid(x · gate) scales the shared expert's rows */
        if ((rc = tsr_op_matmul(b, s->logits, moe->shared_inp, x, NULL, n))) return rc;
        const float *g = s->logits->data;
        for (int i = 0; i < n; i++) we[i] = 1.0f / (1.0f + expf(-g[i]));
    }
    scatter_add(o, s->ye->data, rows, moe->shared_inp ? we : NULL, n, dim);
    return 0;
}

/* The widest FFN of the layer's experts, routed or shared. */
static int64_t moe_ffn(const struct tsr_moe *moe, int64_t routed)
{
    return moe->shared_gate && moe->shared_gate->rows > routed ? moe->shared_gate->rows : routed;
}

/* Step buffers: router logits of n rows (unless there already), and the MLP's of `rows` rows (n
 * at least: the shared expert's). */
static int scratch_alloc(tsr_backend_t *b, struct moe_scratch *s, int n, int rows, int E,
                         int64_t dim, int64_t ffn)
{
    if (rows < n) rows = n;
    if ((s->logits || (s->logits = tsr_buf_alloc(b, sizeof(float) * (size_t)n * E))) &&
        (s->xe = tsr_buf_alloc(b, sizeof(float) * (size_t)rows * dim)) &&
        (s->h = tsr_buf_alloc(b, sizeof(float) * (size_t)rows * ffn)) &&
        (s->tmp = tsr_buf_alloc(b, sizeof(float) * (size_t)rows * ffn)) &&
        (s->ye = tsr_buf_alloc(b, sizeof(float) * (size_t)rows * dim)))
        return 0;
    return tsr_errorf(TSR_ENOMEM, "moe: out of memory for %d rows", rows);
}

int tsr_cpu_moe(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *x, const struct tsr_moe *moe, int n)
{
    const struct tsr_moe_routing *r = &moe->routing;
    int E = r->n_expert, k = r->n_used;
    int64_t dim = moe->router->cols, ffn = moe_ffn(moe, moe->gate[0].rows);
    struct moe_scratch s = {0};
    int32_t *ids = malloc(sizeof *ids * (size_t)n * k),
            *rows = malloc(sizeof *rows * (size_t)n * k);
    int *count = calloc((size_t)E + 1, sizeof *count);
    float *w = malloc(sizeof *w * (size_t)n * k), *we = malloc(sizeof *we * (size_t)n * k);
    int rc = !ids || !rows || !count || !w || !we
                 ? tsr_errorf(TSR_ENOMEM, "moe: out of memory for %d rows", n)
                 : scratch_alloc(b, &s, n, n, E, dim, ffn);
    if (rc || (rc = route(b, &s, moe, x, n, ids, w))) goto out;
    float *o = out->data;
    memset(o, 0, sizeof(float) * (size_t)n * dim);
    tsr_moe_sort_by_expert(ids, w, 0, n * k, k, E, count, rows, we);
    for (int e = 0; e < E && !rc; e++) {
        int m = count[e + 1] - count[e];
        if (!m) continue;
        if (!(rc = tsr_op_gather_rows(b, s.xe, x, rows + count[e], m, (int)dim)) &&
            !(rc = mlp(b, &s, &moe->gate[e], &moe->up[e], &moe->down[e], s.xe, m)))
            scatter_add(o, s.ye->data, rows + count[e], we + count[e], m, dim);
    }
    if (!rc && moe->shared_gate) rc = add_shared(b, &s, moe, x, n, dim, o, rows, we);
out:
    scratch_free(&s);
    free(ids), free(rows), free(count), free(w), free(we);
    return rc;
}

/* ---- expert parallelism (kernels/moe_ep.h) ---- */

/* The step buffers of one expert-parallel call: rows sent from this home (send, back) and rows
 * received by this owner (recv, res), and the stage's gathered outputs. */
struct ep_bufs {
    tsr_buf_t *send, *recv, *res, *back, *gathered;
};

static int ep_alloc(tsr_backend_t *b, struct ep_bufs *e, size_t home, size_t owned, size_t all)
{
    size_t one = 1;
    if ((e->send = tsr_buf_alloc(b, home ? home : one)) &&
        (e->back = tsr_buf_alloc(b, home ? home : one)) &&
        (e->recv = tsr_buf_alloc(b, owned ? owned : one)) &&
        (e->res = tsr_buf_alloc(b, owned ? owned : one)) && (e->gathered = tsr_buf_alloc(b, all)))
        return 0;
    return tsr_errorf(TSR_ENOMEM, "moe: out of memory for the all-to-all (%zu + %zu bytes)", home,
                      owned);
}

static void ep_free(struct ep_bufs *e)
{
    tsr_buf_t *all[] = {e->send, e->recv, e->res, e->back, e->gathered};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) tsr_buf_free(all[i]);
}

/* The owner's part: each local expert once over the rows it received (from every rank in rank
 * order, so in token order), results in res where the rows were in recv. from[s * per + j]: rows
 * rank s sent for local expert j; each rank's rows are by expert. idx: scratch of every received
 * row. */
static int ep_experts(tsr_backend_t *b, struct moe_scratch *s, const struct tsr_moe *moe,
                      struct ep_bufs *eb, const int *from, int P, int per, int e0, int64_t dim,
                      int32_t *idx)
{
    size_t row = sizeof(float) * (size_t)dim;
    for (int j = 0; j < per; j++) {
        int m = 0, base = 0;
        for (int src = 0; src < P; src++) {
            const int *f = from + (size_t)src * per;
            int at = base;
            for (int q = 0; q < j; q++) at += f[q];
            for (int i = 0; i < f[j]; i++) idx[m++] = at + i;
            for (int q = 0; q < per; q++) base += f[q];
        }
        if (!m) continue;
        int e = e0 + j;
        int rc = tsr_op_gather_rows(b, s->xe, eb->recv, idx, m, (int)dim);
        if (!rc) rc = mlp(b, s, &moe->gate[e], &moe->up[e], &moe->down[e], s->xe, m);
        if (rc) return rc;
        for (int i = 0; i < m; i++)
            memcpy((char *)eb->res->data + (size_t)idx[i] * row,
                   (const char *)s->ye->data + (size_t)i * row, row);
    }
    return 0;
}

int tsr_op_moe_ep(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *x, const struct tsr_moe *moe, int n,
                  const struct tsr_moe_ep *ep)
{
    const struct tsr_moe_routing *r = &moe->routing;
    int E = r->n_expert, k = r->n_used, P = tsr_comm_size(ep->ep), me = tsr_comm_rank(ep->ep);
    if (!tsr_buf_host(out) || !tsr_buf_host(x))
        return tsr_errorf(TSR_EUNSUPPORTED, "moe: expert parallelism runs on host-visible buffers "
                                            "(the CPU backend with MPI) only");
    if (E < 1 || E % P || n < 1)
        return tsr_errorf(TSR_EINVAL, "moe: %d ranks do not divide %d experts (%d rows)", P, E, n);
    int per = E / P, e0 = me * per;
    for (int e = e0; e < e0 + per; e++)
        if (!moe->gate[e].buf || !moe->up[e].buf || !moe->down[e].buf)
            return tsr_errorf(TSR_EINVAL, "moe: expert %d of rank %d of %d is not loaded", e, me,
                              P);
    int64_t dim = moe->router->cols, ffn = moe_ffn(moe, moe->gate[e0].rows);
    size_t row = sizeof(float) * (size_t)dim;
    int c = (n + P - 1) / P, t0 = me * c < n ? me * c : n, t1 = t0 + c < n ? t0 + c : n;
    int H = (t1 - t0) * k, R = 0; /* pairs this rank is the home of; rows it owns */
    struct moe_scratch s = {0};
    struct ep_bufs eb = {0};
    int32_t *ids = malloc(sizeof *ids * (size_t)n * k),
            *rows = malloc(sizeof *rows * (size_t)n * k);
    float *w = malloc(sizeof *w * (size_t)n * k), *we = malloc(sizeof *we * (size_t)n * k);
    int *count = calloc((size_t)E + 1, sizeof *count),
        *from = calloc((size_t)P * per, sizeof *from);
    size_t *sb = calloc((size_t)2 * P, sizeof *sb), *rb = sb + P;
    int32_t *idx = NULL;
    int rc = !ids || !rows || !w || !we || !count || !from || !sb ||
                     !(s.logits = tsr_buf_alloc(b, sizeof(float) * (size_t)n * E))
                 ? tsr_errorf(TSR_ENOMEM, "moe: out of memory for %d rows", n)
                 : route(b, &s, moe, x, n, ids, w);
    /* dispatch: this home's pairs by expert, so by owner; what each rank sends this owner */
    if (!rc) {
        tsr_moe_sort_by_expert(ids, w, t0 * k, t1 * k, k, E, count, rows, we);
        for (int d = 0; d < P; d++) sb[d] = (size_t)(count[(d + 1) * per] - count[d * per]) * row;
        for (int src = 0; src < P; src++) {
            int s0 = src * c < n ? src * c : n, s1 = s0 + c < n ? s0 + c : n;
            for (int i = s0 * k; i < s1 * k; i++)
                if (ids[i] >= e0 && ids[i] < e0 + per) from[src * per + ids[i] - e0]++, R++;
            rb[src] = 0;
            for (int j = 0; j < per; j++) rb[src] += (size_t)from[src * per + j] * row;
        }
        if (!(idx = malloc(sizeof *idx * (size_t)(R ? R : 1))))
            rc = tsr_errorf(TSR_ENOMEM, "moe: out of memory for %d rows", R);
    }
    if (!rc && !(rc = scratch_alloc(b, &s, n, R, E, dim, ffn))) /* the largest expert batch */
        rc = ep_alloc(b, &eb, (size_t)H * row, (size_t)R * row, (size_t)P * c * row);
    if (!rc && H) rc = tsr_op_gather_rows(b, eb.send, x, rows, H, (int)dim);
    /* R and H differ by rank, so memory can run out on one alone: all fail, none waits */
    if ((rc = tsr_comm_agree(ep->ep, rc)) ||
        (rc = tsr_comm_all_to_all_v(ep->ep, eb.send, 0, sb, eb.recv, 0, rb)) ||
        (rc = ep_experts(b, &s, moe, &eb, from, P, per, e0, dim, idx)) ||
        (rc = tsr_comm_all_to_all_v(ep->ep, eb.res, 0, rb, eb.back, 0, sb)))
        goto out;
    /* combine: the home adds its rows' results in expert order, as tsr_cpu_moe */
    float *slot = (float *)eb.gathered->data + (size_t)me * c * dim;
    memset(slot, 0, (size_t)c * row);
    for (int i = 0; i < H; i++) rows[i] -= t0;
    scatter_add(slot, eb.back->data, rows, we, H, dim);
    if ((rc = tsr_comm_all_gather(ep->ep, eb.gathered, (size_t)me * c * row, eb.gathered, 0,
                                  (size_t)c * row)))
        goto out;
    float *o = out->data;
    memcpy(o, eb.gathered->data, (size_t)n * row);
    if (!moe->shared_gate) goto out;
    /* the shared expert: this rank's slice over every row, summed over the attention group */
    int tp = ep->tp && tsr_comm_size(ep->tp) > 1;
    if (tp && tsr_comm_rank(ep->tp) != 0) memset(o, 0, (size_t)n * row);
    if (!(rc = add_shared(b, &s, moe, x, n, dim, o, rows, we)) && tp)
        rc = tsr_comm_all_reduce_sum(ep->tp, out, 0, (size_t)n * dim);
out:
    scratch_free(&s);
    ep_free(&eb);
    free(ids), free(rows), free(w), free(we), free(count), free(from), free(sb), free(idx);
    return rc;
}
