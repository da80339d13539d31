/* Mixture-of-experts routing (kernels/backend.h tsr_moe_route) and the sort of its choices by
 * expert (kernels/backend_impl.h): the same on every backend, on the host, over the router's
 * logits. O(n_used * n_expert) a token: a few hundred experts at most. */
#include <math.h>
#include <stdlib.h>

#include "common/status.h"
#include "kernels/backend.h"
#include "kernels/backend_impl.h"

int tsr_moe_routing_check(const struct tsr_moe_routing *r)
{
    int E = r->n_expert, G = r->n_group, TG = r->topk_group;
    if (E < 1 || r->n_used < 1 || r->n_used > E || G < 0 || TG < 0 || (G == 0) != (TG == 0) ||
        (G > 0 && (E % G || TG > G || (r->scoring == TSR_MOE_SIGMOID && E / G < 2) ||
                   (int64_t)TG * (E / G) < r->n_used)) ||
        !(r->scale > 0) || !isfinite(r->scale))
        return tsr_errorf(TSR_EINVAL,
                          "moe: routing of %d of %d experts in %d groups (best %d), scale %g is "
                          "inconsistent",
                          r->n_used, E, G, TG, (double)r->scale);
    return 0;
}

/* The index of the largest of v[i] where ok[i] (ok NULL: all), lower index on ties; -1 if none. */
static int best_of(const double *v, const unsigned char *ok, int n)
{
    int best = -1;
    for (int i = 0; i < n; i++)
        if ((!ok || ok[i]) && (best < 0 || v[i] > v[best])) best = i;
    return best;
}

static int chosen(const int32_t *id, int j, int e)
{
    for (int i = 0; i < j; i++)
        if (id[i] == e) return 1;
    return 0;
}

int tsr_moe_route(const struct tsr_moe_routing *r, const float *logits, const float *bias, int n,
                  int32_t *ids, float *w)
{
    int rc = tsr_moe_routing_check(r);
    if (rc) return rc;
    int E = r->n_expert, k = r->n_used, G = r->n_group;
    double *s = malloc(sizeof(double) * (size_t)(3 * E + G + 1));
    unsigned char *ok = malloc((size_t)(E + G + 1));
    if (!s || !ok) {
        free(s), free(ok);
        return tsr_errorf(TSR_ENOMEM, "out of memory");
    }
    double *c = s + E, *tmp = c + E, *gs = tmp + E;
    unsigned char *gok = ok + E;
    for (int t = 0; t < n; t++) {
        const float *l = logits + (size_t)t * E;
        if (r->scoring == TSR_MOE_SOFTMAX) {
            double mx = l[0], sum = 0;
            for (int e = 1; e < E; e++) mx = l[e] > mx ? l[e] : mx;
            for (int e = 0; e < E; e++) sum += (s[e] = exp((double)l[e] - mx));
            for (int e = 0; e < E; e++) s[e] /= sum;
        } else {
            for (int e = 0; e < E; e++) s[e] = 1.0 / (1.0 + exp(-(double)l[e]));
        }
        for (int e = 0; e < E; e++) {
            c[e] = s[e] + (bias ? bias[e] : 0.0);
            ok[e] = 1;
        }
        if (G > 0) { /* a group's score: its best (softmax) or best two (sigmoid) choice scores */
            int gsz = E / G;
            for (int g = 0; g < G; g++) {
                const double *cg = c + (size_t)g * gsz;
                int a = best_of(cg, NULL, gsz);
                gs[g] = cg[a];
                if (r->scoring == TSR_MOE_SIGMOID) {
                    for (int e = 0; e < gsz; e++) tmp[e] = e == a ? -INFINITY : cg[e];
                    gs[g] += tmp[best_of(tmp, NULL, gsz)];
                }
                gok[g] = 0;
            }
            for (int j = 0; j < r->topk_group; j++) {
                for (int g = 0; g < G; g++) tmp[g] = gok[g] ? -INFINITY : gs[g];
                gok[best_of(tmp, NULL, G)] = 1;
            }
            for (int e = 0; e < E; e++) ok[e] = gok[e / gsz];
        }
        double sum = 0;
        int32_t *id = ids + (size_t)t * k;
        for (int j = 0; j < k; j++) {
            int e = best_of(c, ok, E); /* strict >: the lower index wins a tie */
            if (e < 0) /* NaN scores left too few eligible: the lowest index not chosen yet */
                for (e = 0; chosen(id, j, e); e++) {
                }
            ok[e] = 0;
            id[j] = e;
            sum += s[e];
        }
        for (int j = 0; j < k; j++) {
            double v = s[id[j]];
            if (r->norm_topk) v /= sum;
            w[(size_t)t * k + j] = (float)(v * r->scale);
        }
    }
    free(s);
    free(ok);
    return 0;
}

void tsr_moe_sort_by_expert(const int32_t *ids, const float *w, int i0, int i1, int k, int E,
                            int *count, int32_t *rows, float *we)
{
    for (int i = i0; i < i1; i++) count[ids[i] + 1]++;
    for (int e = 0; e < E; e++) count[e + 1] += count[e];
    for (int i = i0; i < i1; i++) {
        int at = count[ids[i]]++;
        rows[at] = i / k;
        we[at] = w[i];
    }
    for (int e = E; e > 0; e--) count[e] = count[e - 1]; /* back to the starts */
    count[0] = 0;
}
