/* Mixture-of-experts FFN on the CPU (kernels/backend.h tsr_op_moe). Blocked by expert: the rows
 * routed to an expert are gathered and run through it with one matmul per weight, so each
 * expert's weights are read once a step however many tokens chose it (a decode step of one token
 * reads only its n_used experts). Outputs are scaled and added to their rows in expert order:
 * the sum's order differs from a token-by-token loop by f32 rounding only. Step buffers are
 * allocated per call (n_tokens x (dim + 2 ffn) floats: small next to the experts' weights). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "kernels/cpu/cpu_internal.h"

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

int tsr_cpu_moe(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *x, const struct tsr_moe *moe, int n)
{
    const struct tsr_moe_routing *r = &moe->routing;
    int E = r->n_expert, k = r->n_used;
    int64_t dim = moe->router->cols, ffn = moe->gate[0].rows;
    if (moe->shared_gate && moe->shared_gate->rows > ffn) ffn = moe->shared_gate->rows;
    struct moe_scratch s = {0};
    int32_t *ids = malloc(sizeof *ids * (size_t)n * k),
            *rows = malloc(sizeof *rows * (size_t)n * k);
    int *count = calloc((size_t)E + 1, sizeof *count);
    float *w = malloc(sizeof *w * (size_t)n * k), *we = malloc(sizeof *we * (size_t)n * k);
    int rc = 0;
    if (!ids || !rows || !count || !w || !we ||
        !(s.logits = tsr_buf_alloc(b, sizeof(float) * (size_t)n * E)) ||
        !(s.xe = tsr_buf_alloc(b, sizeof(float) * (size_t)n * dim)) ||
        !(s.h = tsr_buf_alloc(b, sizeof(float) * (size_t)n * ffn)) ||
        !(s.tmp = tsr_buf_alloc(b, sizeof(float) * (size_t)n * ffn)) ||
        !(s.ye = tsr_buf_alloc(b, sizeof(float) * (size_t)n * dim))) {
        rc = tsr_errorf(TSR_ENOMEM, "moe: out of memory for %d rows", n);
        goto out;
    }
    if ((rc = tsr_op_matmul(b, s.logits, moe->router, x, NULL, n)) ||
        (rc = tsr_moe_route(r, s.logits->data, moe->score_bias, n, ids, w)))
        goto out;
    if (moe->trace) memcpy(moe->trace, ids, sizeof *ids * (size_t)n * k);
    float *o = out->data;
    memset(o, 0, sizeof(float) * (size_t)n * dim);
    /* counting sort of the (token, choice) pairs by expert: expert e's rows at [count[e],
     * count[e + 1]) of rows, in token order */
    for (int i = 0; i < n * k; i++) count[ids[i] + 1]++;
    for (int e = 0; e < E; e++) count[e + 1] += count[e];
    for (int i = 0; i < n * k; i++) {
        int at = count[ids[i]]++;
        rows[at] = i / k;
        we[at] = w[i];
    }
    for (int e = E; e > 0; e--) count[e] = count[e - 1]; /* back to the starts */
    count[0] = 0;
    for (int e = 0; e < E && !rc; e++) {
        int m = count[e + 1] - count[e];
        if (!m) continue;
        if (!(rc = tsr_op_gather_rows(b, s.xe, x, rows + count[e], m, (int)dim)) &&
            !(rc = mlp(b, &s, &moe->gate[e], &moe->up[e], &moe->down[e], s.xe, m)))
            scatter_add(o, s.ye->data, rows + count[e], we + count[e], m, dim);
    }
    if (rc || !moe->shared_gate) goto out;
    if ((rc = mlp(b, &s, moe->shared_gate, moe->shared_up, moe->shared_down, x, n))) goto out;
    for (int i = 0; i < n; i++) rows[i] = i;
    if (moe->shared_inp) { /* qwen2_moe: sigmoid(x · gate) scales the shared expert's rows */
        if ((rc = tsr_op_matmul(b, s.logits, moe->shared_inp, x, NULL, n))) goto out;
        const float *g = s.logits->data;
        for (int i = 0; i < n; i++) we[i] = 1.0f / (1.0f + expf(-g[i]));
    }
    scatter_add(o, s.ye->data, rows, moe->shared_inp ? we : NULL, n, dim);
out:
    scratch_free(&s);
    free(ids), free(rows), free(count), free(w), free(we);
    return rc;
}
