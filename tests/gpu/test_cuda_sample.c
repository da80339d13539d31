/* Sampling on the GPU (tsr_op_sample, kernels/cuda/cuda_sample.cu) against the host sampler
 * (worker/sampling.c's tsr_sample, repetition penalty 1), row by row, on random logits: Gaussian
 * rows from nearly flat (scale 0.1) to peaked (scale 16), rows of exact ties, rows with most
 * entries -inf (a masked vocabulary), rows with only five finite entries, and rows with one
 * outlier; widths 7, 1000, 49152 and 128256 (Llama 3), 1, 3 and 64 rows a call, every row its own
 * parameters out of temperature {0, 0.7, 1.3} x top_k {0, 1, 40, width + 5} x top_p {1, 0.9, 0.5}
 * x min_p {0, 0.05}. Each row's draw u is tsr_sampler_uniform() of its seed at position 0, and
 * the host samples with the same u.
 *
 * Checks:
 * - strict, not open to rounding: the id is in [0, width); greedy rows (temperature 0) equal the
 *   host's argmax; a sampled row's id is among the top_k (logit descending, lower index first on
 *   ties), has a probability > 0, lies inside the top-p prefix and above the min-p floor (1e-6 of
 *   slack), and is where u lands in the kept mass (computed in double, 1e-6 of slack, over every
 *   kept set the slack allows);
 * - agreement: the GPU's id equals the host's for >= 99.5% of the sampled rows; rows whose top-k
 *   boundary cuts a run of equal logits are left out (and counted): the host's quickselect keeps
 *   whichever of the equal logits its partition leaves in front, the GPU the lower indices;
 * - the log probability is within 1e-4 of the double-precision log-softmax at the GPU's id (and of
 *   the host's when the ids agree), everywhere;
 * - a fixed width-7 distribution, 20,000 rows with u = (i + 0.5) / 20000: >= 99.9% of the picks
 *   equal the host's for the same u (the host's generator is set to draw exactly u), and each
 *   token's share is its probability to 2/20000;
 * - the same call twice gives the same ids and log probabilities, bit for bit, and a call without
 *   log probabilities the same ids.
 * - top logprobs (tsr_op_top_logprobs, kernels/cuda/cuda_top_logprobs.cu) against the host's
 *   tsr_top_logprobs on the same rows (every kind; widths 7, 1000, 49152, 128256; k 1, 5, 20):
 *   the same ids in the same order, exactly (both order logit descending, lower id first, on the
 *   same floats), log probabilities within 1e-5 (both sum exp in double; -inf where both are), -1
 *   past a row narrower than k, the first equal to the greedy sample (id, and log probability
 *   within 1e-4 of tsr_op_sample's), descending, mass <= 1.
 * Outputs are poisoned (ids -7, log probabilities NaN) before every call. Without a CUDA device it
 * prints why and exits 77, or 1 under TESSERA_REQUIRE_GPU=1 (gpu_count_or_exit in gpu_test.h).
 *
 * Usage: test_cuda_sample [--seed N] */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/status.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "tests/gpu/gpu_test.h"
#include "worker/sampling.h"

static tsr_backend_t *gpu;
static int n_checks, n_fails;

/* A check; prints the first few failures. */
static int check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int check(int ok, const char *fmt, ...)
{
    n_checks++;
    if (ok) return 1;
    if (++n_fails <= 30) {
        va_list ap;
        va_start(ap, fmt);
        printf("FAIL: ");
        vprintf(fmt, ap);
        printf("\n");
        va_end(ap);
    }
    return 0;
}

/* ---- rows and parameters ---- */

struct combo {
    float temperature;
    int top_k; /* -1: width + 5 */
    float top_p, min_p;
};
static struct combo combos[72];
static int n_combos;

static void make_combos(void)
{
    static const float temps[] = {0, 0.7f, 1.3f}, top_ps[] = {1, 0.9f, 0.5f}, min_ps[] = {0, 0.05f};
    static const int top_ks[] = {0, 1, 40, -1};
    for (int t = 0; t < 3; t++)
        for (int k = 0; k < 4; k++)
            for (int p = 0; p < 3; p++)
                for (int m = 0; m < 2; m++)
                    combos[n_combos++] = (struct combo){temps[t], top_ks[k], top_ps[p], min_ps[m]};
}

enum { KIND_TIES = 6, KIND_MASKED, KIND_FEW, KIND_PEAKED, N_KINDS };

static void fill_row(float *x, int width, int kind)
{
    static const float scales[] = {0.1f, 0.5f, 1, 2, 4, 16};
    for (int i = 0; i < width; i++) x[i] = rng_gauss();
    if (kind < KIND_TIES) {
        for (int i = 0; i < width; i++) x[i] *= scales[kind];
    } else if (kind == KIND_TIES) {
        for (int i = 0; i < width; i++) x[i] = roundf(x[i] * 2) * 0.5f; /* a few dozen values */
    } else if (kind == KIND_MASKED) {
        for (int i = 0; i < width; i++)
            if (rng_u64() % 10 < 7)
                x[i] = -INFINITY;
            else
                x[i] *= 3;
        x[rng_u64() % (uint64_t)width] = rng_gauss() * 3; /* at least one finite */
    } else if (kind == KIND_FEW) {
        for (int i = 0; i < width; i++) x[i] = -INFINITY;
        for (int j = 0; j < 5 && j < width; j++) x[rng_u64() % (uint64_t)width] = rng_gauss() * 2;
    } else {
        x[rng_u64() % (uint64_t)width] = 25;
    }
}

/* ---- references in double ---- */

static const float *sort_key;

/* The host's order: logit descending, lower index first on ties. */
static int by_rank(const void *a, const void *b)
{
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    float x = sort_key[i], y = sort_key[j];
    if (x != y) return x < y ? 1 : -1;
    return i < j ? -1 : i > j;
}

static double log_softmax_at(const float *x, int width, int id)
{
    float mx = x[tsr_argmax(x, width)];
    double s = 0;
    for (int i = 0; i < width; i++) s += exp((double)x[i] - mx);
    return (double)x[id] - mx - log(s);
}

/* Tokens kept (a prefix of the candidates) with top-p threshold tp and min-p floor fl. */
static int kept_count(const double *p, const double *cum, int k, double tp, int use_p, double fl,
                      int use_m)
{
    int kp = k, km = k;
    if (use_p)
        for (int i = 0; i < k; i++)
            if (cum[i + 1] >= tp) {
                kp = i + 1;
                break;
            }
    if (use_m) {
        km = 1;
        while (km < k && p[km] >= fl) km++;
    }
    return kp < km ? kp : km;
}

/* The strict checks of a sampled row (temperature > 0); ord is the row's order. 1 when all pass. */
static int strict_sampled(const float *x, const int32_t *ord, int width, const struct combo *cb,
                          int k, double u, int g, const char *where)
{
    int pos = -1;
    for (int i = 0; i < k; i++)
        if (ord[i] == g) {
            pos = i;
            break;
        }
    if (!check(pos >= 0, "%s: id %d (logit %g) is not among the top %d", where, g, x[g], k))
        return 0;
    double *p = xmalloc((size_t)k * sizeof *p), *cum = xmalloc(((size_t)k + 1) * sizeof *cum);
    double mx = x[ord[0]], s = 0;
    for (int i = 0; i < k; i++) s += p[i] = exp(((double)x[ord[i]] - mx) / cb->temperature);
    cum[0] = 0;
    for (int i = 0; i < k; i++) {
        p[i] /= s;
        cum[i + 1] = cum[i] + p[i];
    }
    const double eps = 1e-6;
    int ok = check(p[pos] > 0, "%s: id %d has probability 0", where, g);
    int use_p = cb->top_p<1, use_m = cb->min_p> 0;
    double fl = cb->min_p * p[0];
    if (use_p)
        ok &= check(cum[pos] < cb->top_p + eps,
                    "%s: id %d is past the top-p prefix (mass before it %.9f, top_p %g)", where, g,
                    cum[pos], cb->top_p);
    if (use_m)
        ok &= check(p[pos] >= fl - eps, "%s: id %d is below the min-p floor (%.9g < %.9g)", where,
                    g, p[pos], fl);
    /* the draw: some kept set within the slack puts u * mass inside [cum[pos], cum[pos + 1]) */
    int lo = kept_count(p, cum, k, cb->top_p - eps, use_p, fl + eps, use_m);
    int hi = kept_count(p, cum, k, cb->top_p + eps, use_p, fl - eps, use_m);
    int found = 0;
    for (int kk = lo; kk <= hi && !found; kk++) {
        double r = u * cum[kk];
        found = pos < kk && r >= cum[pos] - eps && r < cum[pos + 1] + eps;
    }
    ok &= check(found, "%s: u %.9f does not land on id %d (position %d, kept %d..%d)", where, u, g,
                pos, lo, hi);
    free(p);
    free(cum);
    return ok;
}

/* ---- the sweep ---- */

struct summary {
    char name[32];
    int rows, greedy, greedy_exact, sampled, agree, ambiguous, strict_fails;
    double worst_lp;
};
static struct summary sums[16];
static int n_sums;

/* One call: n rows of width, row r with combos[(off + r) % n_combos]. */
static void run_call(struct summary *sm, int width, int n, int off)
{
    size_t count = (size_t)n * width;
    float *x = xmalloc(count * sizeof *x), *copy = xmalloc((size_t)width * sizeof *copy);
    int32_t *ord = xmalloc((size_t)width * sizeof *ord), *ids = xmalloc((size_t)n * sizeof *ids);
    float *lps = xmalloc((size_t)n * sizeof *lps);
    struct tsr_sample_params *prm = xmalloc((size_t)n * sizeof *prm);
    uint64_t *seeds = xmalloc((size_t)n * sizeof *seeds);
    for (int r = 0; r < n; r++) {
        fill_row(x + (size_t)r * width, width, (int)(rng_u64() % N_KINDS));
        const struct combo *cb = &combos[(off + r) % n_combos];
        seeds[r] = rng_u64();
        struct tsr_sampling sp = {.temperature = cb->temperature,
                                  .top_k = cb->top_k < 0 ? width + 5 : cb->top_k,
                                  .top_p = cb->top_p,
                                  .min_p = cb->min_p,
                                  .repetition_penalty = 1,
                                  .seed = seeds[r]};
        struct tsr_sampler s;
        if (tsr_sampler_init(&s, &sp, width)) die("sampler");
        prm[r] = (struct tsr_sample_params){sp.temperature, sp.top_k, sp.top_p, sp.min_p,
                                            tsr_sampler_uniform(&s, 0)};
        tsr_sampler_free(&s);
    }
    tsr_buf_t *xb = tsr_buf_alloc(gpu, count * sizeof *x);
    if (!xb || tsr_buf_set(xb, 0, x, count * sizeof *x)) die("upload");
    for (int r = 0; r < n; r++) {
        ids[r] = -7;
        lps[r] = NAN;
    }
    if (tsr_op_sample(gpu, xb, n, width, prm, ids, lps)) die("tsr_op_sample");

    for (int r = 0; r < n; r++) {
        const float *row = x + (size_t)r * width;
        const struct combo *cb = &combos[(off + r) % n_combos];
        char where[96];
        snprintf(where, sizeof where, "w %d n %d row %d (T %g k %d p %g minp %g)", width, n, r,
                 prm[r].temperature, prm[r].top_k, prm[r].top_p, prm[r].min_p);
        sm->rows++;
        int g = ids[r];
        if (!check(g >= 0 && g < width, "%s: id %d out of range", where, g)) {
            sm->strict_fails++;
            continue;
        }
        /* the host */
        struct tsr_sampling sp = {.temperature = prm[r].temperature,
                                  .top_k = prm[r].top_k,
                                  .top_p = prm[r].top_p,
                                  .min_p = prm[r].min_p,
                                  .repetition_penalty = 1,
                                  .seed = seeds[r]};
        struct tsr_sampler s;
        if (tsr_sampler_init(&s, &sp, width)) die("sampler");
        memcpy(copy, row, (size_t)width * sizeof *copy);
        float lp_host;
        int32_t host = tsr_sample(&s, copy, NULL, 0, prm[r].u, &lp_host);
        tsr_sampler_free(&s);
        /* log probability */
        double ref = log_softmax_at(row, width, g);
        double d = fabs((double)lps[r] - ref);
        if (g == host && fabs((double)lps[r] - lp_host) > d) d = fabs((double)lps[r] - lp_host);
        if (!(d <= sm->worst_lp)) sm->worst_lp = d; /* NaN sticks */
        check(d < 1e-4, "%s: logprob %.7g, reference %.7g (host %.7g)", where, lps[r], ref,
              lp_host);
        int k = prm[r].top_k > 0 && prm[r].top_k < width ? prm[r].top_k : width;
        if (cb->temperature == 0) {
            sm->greedy++;
            int ok = check(g == host, "%s: greedy id %d, host %d", where, g, host);
            sm->greedy_exact += ok;
            sm->strict_fails += !ok;
            continue;
        }
        for (int i = 0; i < width; i++) ord[i] = i;
        sort_key = row;
        qsort(ord, (size_t)width, sizeof *ord, by_rank);
        if (k == 1) {
            int ok = check(g == ord[0], "%s: top_k 1 gives id %d, not the first max %d", where, g,
                           ord[0]);
            sm->strict_fails += !ok;
        } else if (!strict_sampled(row, ord, width, cb, k, prm[r].u, g, where)) {
            sm->strict_fails++;
        }
        /* the host's top-k keeps any of equal logits across its boundary: not comparable */
        if (k < width && row[ord[k - 1]] == row[ord[k]]) {
            sm->ambiguous++;
            continue;
        }
        sm->sampled++;
        if (g == host)
            sm->agree++;
        else if (sm->sampled - sm->agree <= 5)
            printf("note: %s: id %d (logit %.9g), host %d (logit %.9g), u %.17g\n", where, g,
                   row[g], host, row[host], prm[r].u);
    }
    tsr_buf_free(xb);
    free(x);
    free(copy);
    free(ord);
    free(ids);
    free(lps);
    free(prm);
    free(seeds);
}

/* ---- a known distribution, 20,000 draws ---- */

static void distribution(const char *name, const struct combo *cb)
{
    enum { W = 7, N = 20000 };
    static const float logits[W] = {1.0f, 2.0f, 0.5f, 2.0f, -1.0f, 0.0f, 1.5f};
    float *x = xmalloc((size_t)N * W * sizeof *x);
    struct tsr_sample_params *prm = xmalloc((size_t)N * sizeof *prm);
    int32_t *ids = xmalloc((size_t)N * sizeof *ids);
    struct tsr_sampling sp = {.temperature = cb->temperature,
                              .top_k = cb->top_k,
                              .top_p = cb->top_p,
                              .min_p = cb->min_p,
                              .repetition_penalty = 1,
                              .seed = 1};
    struct tsr_sampler s;
    if (tsr_sampler_init(&s, &sp, W)) die("sampler");
    for (int i = 0; i < N; i++) {
        memcpy(x + (size_t)i * W, logits, sizeof logits);
        uint64_t u53 = (uint64_t)(((double)i + 0.5) / N * 9007199254740992.0);
        prm[i] = (struct tsr_sample_params){cb->temperature, cb->top_k, cb->top_p, cb->min_p,
                                            (double)u53 / 9007199254740992.0};
        ids[i] = -7;
    }
    tsr_buf_t *xb = tsr_buf_alloc(gpu, (size_t)N * W * sizeof *x);
    if (!xb || tsr_buf_set(xb, 0, x, (size_t)N * W * sizeof *x)) die("upload");
    if (tsr_op_sample(gpu, xb, N, W, prm, ids, NULL)) die("tsr_op_sample");
    int agree = 0, counts[W] = {0};
    for (int i = 0; i < N; i++) {
        float row[W];
        memcpy(row, logits, sizeof row);
        int host = tsr_sample(&s, row, NULL, 0, prm[i].u, NULL);
        agree += ids[i] == host;
        if (ids[i] >= 0 && ids[i] < W) counts[ids[i]]++;
    }
    check(agree >= N - N / 1000, "%s: %d of %d picks equal the host's", name, agree, N);
    /* shares: the unfiltered softmax at T when no filter is on */
    double worst = 0;
    if (cb->top_k == 0 && cb->top_p == 1 && cb->min_p == 0) {
        double mx = 2, sum = 0, p[W];
        for (int j = 0; j < W; j++) sum += p[j] = exp((logits[j] - mx) / cb->temperature);
        for (int j = 0; j < W; j++) {
            double e = fabs((double)counts[j] / N - p[j] / sum);
            if (e > worst) worst = e;
        }
        check(worst <= 2.0 / N, "%s: a token's share is off by %.6f", name, worst);
    }
    printf("%-22s %6d draws %6d agree   worst share error %.2e\n", name, N, agree, worst);
    tsr_sampler_free(&s);
    tsr_buf_free(xb);
    free(x);
    free(prm);
    free(ids);
}

/* Twice the same call, then once without log probabilities: the same ids, bit-identical
 * log probabilities. */
static void determinism(int width, int n)
{
    size_t count = (size_t)n * width;
    float *x = xmalloc(count * sizeof *x), *lp1 = xmalloc((size_t)n * sizeof *lp1),
          *lp2 = xmalloc((size_t)n * sizeof *lp2);
    int32_t *id1 = xmalloc((size_t)n * sizeof *id1), *id2 = xmalloc((size_t)n * sizeof *id2),
            *id3 = xmalloc((size_t)n * sizeof *id3);
    struct tsr_sample_params *prm = xmalloc((size_t)n * sizeof *prm);
    for (int r = 0; r < n; r++) {
        fill_row(x + (size_t)r * width, width, r % N_KINDS);
        const struct combo *cb = &combos[r % n_combos];
        prm[r] = (struct tsr_sample_params){cb->temperature, cb->top_k < 0 ? width + 5 : cb->top_k,
                                            cb->top_p, cb->min_p, rng_uniform()};
    }
    tsr_buf_t *xb = tsr_buf_alloc(gpu, count * sizeof *x);
    if (!xb || tsr_buf_set(xb, 0, x, count * sizeof *x)) die("upload");
    if (tsr_op_sample(gpu, xb, n, width, prm, id1, lp1) ||
        tsr_op_sample(gpu, xb, n, width, prm, id2, lp2) ||
        tsr_op_sample(gpu, xb, n, width, prm, id3, NULL))
        die("tsr_op_sample");
    int same = 1;
    for (int r = 0; r < n; r++)
        same &= id1[r] == id2[r] && id1[r] == id3[r] && !memcmp(&lp1[r], &lp2[r], sizeof *lp1);
    check(same, "w %d n %d: repeated calls differ", width, n);
    tsr_buf_free(xb);
    free(x);
    free(lp1);
    free(lp2);
    free(id1);
    free(id2);
    free(id3);
    free(prm);
}

/* ---- top logprobs ---- */

static double worst_top_lp;

static void top_logprobs_call(int width, int n, int k)
{
    size_t count = (size_t)n * width, nk = (size_t)n * k;
    float *x = xmalloc(count * sizeof *x), *glp = xmalloc(nk * sizeof *glp);
    int32_t *gid = xmalloc(nk * sizeof *gid), *pick = xmalloc((size_t)n * sizeof *pick);
    float *pick_lp = xmalloc((size_t)n * sizeof *pick_lp);
    struct tsr_sample_params *prm = xmalloc((size_t)n * sizeof *prm);
    for (int r = 0; r < n; r++) {
        fill_row(x + (size_t)r * width, width, r % N_KINDS);
        prm[r] = (struct tsr_sample_params){.temperature = 0, .top_k = 0, .top_p = 1, .min_p = 0};
    }
    tsr_buf_t *xb = tsr_buf_alloc(gpu, count * sizeof *x);
    if (!xb || tsr_buf_set(xb, 0, x, count * sizeof *x)) die("upload");
    for (size_t i = 0; i < nk; i++) gid[i] = -7, glp[i] = NAN;
    if (tsr_op_top_logprobs(gpu, xb, n, width, k, gid, glp)) die("tsr_op_top_logprobs");
    if (tsr_op_sample(gpu, xb, n, width, prm, pick, pick_lp)) die("tsr_op_sample");
    for (int r = 0; r < n; r++) {
        const float *row = x + (size_t)r * width;
        const int32_t *g = gid + (size_t)r * k;
        const float *gl = glp + (size_t)r * k;
        int32_t hid[TSR_SAMPLING_MAX_TOP_LOGPROBS];
        float hlp[TSR_SAMPLING_MAX_TOP_LOGPROBS];
        int hn = tsr_top_logprobs(row, width, k, hid, hlp);
        double mass = 0;
        for (int j = 0; j < k; j++) {
            if (j >= hn) {
                check(g[j] == -1, "top w=%d k=%d row %d: entry %d is %d past the row's %d tokens",
                      width, k, r, j, g[j], hn);
                continue;
            }
            check(g[j] == hid[j], "top w=%d k=%d row %d kind %d: entry %d is token %d, host %d",
                  width, k, r, r % N_KINDS, j, g[j], hid[j]);
            int both_inf = isinf(gl[j]) && isinf(hlp[j]) && gl[j] < 0 && hlp[j] < 0;
            double d = both_inf ? 0 : fabs((double)gl[j] - hlp[j]);
            if (!(d <= worst_top_lp)) worst_top_lp = d;
            check(d <= 1e-5, "top w=%d k=%d row %d: entry %d logprob %.7g, host %.7g", width, k, r,
                  j, gl[j], hlp[j]);
            if (j)
                check(!(gl[j] > gl[j - 1]), "top w=%d row %d: not descending at %d", width, r, j);
            mass += exp(gl[j]);
        }
        check(mass <= 1 + 1e-5, "top w=%d k=%d row %d: mass %.7g", width, k, r, mass);
        check(g[0] == pick[r], "top w=%d row %d: first %d, greedy sample %d", width, r, g[0],
              pick[r]);
        check(fabs((double)gl[0] - pick_lp[r]) <= 1e-4 || (isinf(gl[0]) && isinf(pick_lp[r])),
              "top w=%d row %d: first's logprob %.7g, the sample's %.7g", width, r, gl[0],
              pick_lp[r]);
    }
    tsr_buf_free(xb);
    free(x);
    free(glp);
    free(gid);
    free(pick);
    free(pick_lp);
    free(prm);
}

int main(int argc, char **argv)
{
    uint64_t seed = (uint64_t)time(NULL);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            seed = strtoull(argv[++i], NULL, 10);
        } else {
            fprintf(stderr, "usage: %s [--seed N]\n", argv[0]);
            return 2;
        }
    }
    gpu_count_or_exit("test_cuda_sample");
    rng_seed(seed);
    gpu = tsr_backend_cuda_new(0);
    if (!gpu) die("creating the CUDA backend");
    printf("test_cuda_sample: seed %llu\n", (unsigned long long)seed);
    fflush(stdout);
    double t0 = now_s();
    make_combos();

    /* Calls per (width, n): every combination once for n = 1 and 3, twice 64 rows for n = 64. */
    static const int widths[] = {7, 1000, 49152, 128256};
    static const int ns[] = {1, 3, 64};
    for (int w = 0; w < 4; w++)
        for (int j = 0; j < 3; j++) {
            struct summary *sm = &sums[n_sums++];
            snprintf(sm->name, sizeof sm->name, "w=%d n=%d", widths[w], ns[j]);
            int calls = ns[j] == 64 ? 2 : (n_combos + ns[j] - 1) / ns[j];
            for (int c = 0; c < calls; c++)
                run_call(sm, widths[w], ns[j], c * ns[j] + (int)(rng_u64() % 7));
        }
    int sampled = 0, agree = 0;
    for (int i = 0; i < n_sums; i++) {
        sampled += sums[i].sampled;
        agree += sums[i].agree;
    }
    check(agree * 1000 >= sampled * 995, "sampled rows: %d of %d agree with the host (< 99.5%%)",
          agree, sampled);

    static const struct combo plain = {1, 0, 1, 0}, filtered = {0.7f, 5, 0.9f, 0.05f};
    printf("\n");
    distribution("width 7, T 1", &plain);
    distribution("width 7, T .7 k5 p.9 m.05", &filtered);
    determinism(128256, 64);
    determinism(1000, 17);
    static const int top_widths[] = {7, 1000, 49152, 128256}, top_ks[] = {1, 5, 20};
    for (int w = 0; w < 4; w++)
        for (int j = 0; j < 3; j++) top_logprobs_call(top_widths[w], 2 * N_KINDS, top_ks[j]);
    printf("top logprobs vs the host: worst |dlp| %.2e\n", worst_top_lp);

    printf("\n%-16s %5s %7s %9s %8s %9s %7s %12s\n", "case", "rows", "greedy", "sampled", "agree",
           "ambiguous", "strict", "worst |dlp|");
    for (int i = 0; i < n_sums; i++) {
        const struct summary *s = &sums[i];
        printf("%-16s %5d %3d/%-3d %9d %8d %9d %7s %12.2e\n", s->name, s->rows, s->greedy_exact,
               s->greedy, s->sampled, s->agree, s->ambiguous, s->strict_fails ? "FAIL" : "ok",
               s->worst_lp);
    }
    printf("sampled rows agreeing with the host: %d of %d (%.2f%%)\n", agree, sampled,
           sampled ? 100.0 * agree / sampled : 100.0);
    printf("test_cuda_sample: %d checks, %d failed (%.1f s)\n", n_checks, n_fails, now_s() - t0);
    tsr_backend_free(gpu);
    return n_fails ? 1 : 0;
}
