#include "worker/sampling.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "common/status.h"

double tsr_sampler_uniform(const struct tsr_sampler *s, int64_t pos)
{
    /* splitmix64 at index pos of the stream the mixed seed starts: no state carried from one
     * draw to the next */
    uint64_t z =
        tsr_mix64(tsr_mix64(s->p.seed + TSR_GOLDEN64) + ((uint64_t)pos + 1) * TSR_GOLDEN64);
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

int tsr_sampler_init(struct tsr_sampler *s, const struct tsr_sampling *p, int n_vocab)
{
    memset(s, 0, sizeof *s);
    int rc = tsr_sampling_validate(p);
    if (rc) return rc;
    s->p = *p;
    s->n_vocab = n_vocab;
    for (int i = 0; i < p->n_logit_bias; i++)
        if (p->logit_bias[i].id >= n_vocab)
            return tsr_errorf(TSR_EINVAL,
                              "logit_bias: %d is not a token id (the vocabulary has %d)",
                              (int)p->logit_bias[i].id, n_vocab);
    s->p.logit_bias = NULL;
    if (p->n_logit_bias) {
        if (!(s->bias = malloc((size_t)p->n_logit_bias * sizeof *s->bias)))
            return tsr_errorf(TSR_ENOMEM, "out of memory for a sampler");
        memcpy(s->bias, p->logit_bias, (size_t)p->n_logit_bias * sizeof *s->bias);
        s->p.logit_bias = s->bias;
    }
    if (p->presence_penalty != 0 || p->frequency_penalty != 0) {
        if (!(s->counts = calloc((size_t)n_vocab, sizeof *s->counts))) {
            tsr_sampler_free(s);
            return tsr_errorf(TSR_ENOMEM, "out of memory for a sampler");
        }
    }
    if (p->temperature > 0) {
        s->idx = malloc((size_t)n_vocab * sizeof *s->idx);
        s->prob = malloc((size_t)n_vocab * sizeof *s->prob);
        if (!s->idx || !s->prob) {
            tsr_sampler_free(s);
            return tsr_errorf(TSR_ENOMEM, "out of memory for a sampler");
        }
    }
    return 0;
}

void tsr_sampler_free(struct tsr_sampler *s)
{
    free(s->idx);
    free(s->prob);
    free(s->bias);
    free(s->counts);
    s->idx = NULL;
    s->prob = NULL;
    s->bias = NULL;
    s->counts = NULL;
    s->p.logit_bias = NULL;
    s->p.n_logit_bias = 0;
}

int32_t tsr_argmax(const float *x, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static int by_logit_desc(const void *a, const void *b, void *ctx)
{
    const float *key = ctx;
    float x = key[*(const int32_t *)a], y = key[*(const int32_t *)b];
    if (x != y) return x < y ? 1 : -1;
    return *(const int32_t *)a - *(const int32_t *)b;
}

/* Moves the k largest logits' indices to idx[0..k), sorted descending. O(n) partition first
 * when k is small, then a sort of the survivors. */
static int top_candidates(const float *logits, int32_t *idx, int n, int k)
{
    for (int i = 0; i < n; i++) idx[i] = i;
    if (k <= 0 || k > n) k = n;
    if (k < n) {
        /* Threshold = k-th largest via a partial quickselect on copies of the indices. */
        int lo = 0, hi = n - 1;
        while (lo < hi) {
            int32_t pivot = idx[(lo + hi) / 2];
            int i = lo, j = hi;
            /* (logit, lower index) order, so that ties at the k-th place keep the lower ids */
            while (i <= j) {
                while (by_logit_desc(&idx[i], &pivot, (void *)logits) < 0) i++;
                while (by_logit_desc(&idx[j], &pivot, (void *)logits) > 0) j--;
                if (i <= j) {
                    int32_t t = idx[i];
                    idx[i++] = idx[j];
                    idx[j--] = t;
                }
            }
            if (k - 1 <= j)
                hi = j;
            else if (k - 1 >= i)
                lo = i;
            else
                break;
        }
    }
    qsort_r(idx, (size_t)k, sizeof *idx, by_logit_desc, (void *)logits);
    return k;
}

int tsr_sampler_penalises(const struct tsr_sampler *s)
{
    return s->p.repetition_penalty != 1.0f || s->p.presence_penalty != 0 ||
           s->p.frequency_penalty != 0 || s->p.n_logit_bias > 0;
}

static void penalise(struct tsr_sampler *s, float *logits, const int32_t *history, int n_history)
{
    int n = s->n_vocab;
    float pen = s->p.repetition_penalty;
    if (pen != 1.0f) {
        /* A token seen several times is penalised once, as in llama.cpp and transformers. */
        for (int i = 0; i < n_history; i++) {
            int32_t t = history[i];
            if (t < 0 || t >= n) continue;
            float *l = &logits[t];
            if (isnan(*l)) continue;
            int seen = 0;
            for (int j = 0; j < i && !seen; j++) seen = history[j] == t;
            if (!seen) *l = *l > 0 ? *l / pen : *l * pen;
        }
    }
    if (s->counts) {
        /* OpenAI's: l[t] -= count[t] * frequency + (count[t] > 0) * presence, counting the
         * generated tokens only; counts back to zero after, O(generated) a call */
        int from = s->n_prompt < n_history ? s->n_prompt : n_history;
        if (from < 0) from = 0;
        for (int i = from; i < n_history; i++)
            if (history[i] >= 0 && history[i] < n) s->counts[history[i]]++;
        for (int i = from; i < n_history; i++) {
            int32_t t = history[i];
            if (t < 0 || t >= n || !s->counts[t]) continue;
            logits[t] -= (float)s->counts[t] * s->p.frequency_penalty + s->p.presence_penalty;
            s->counts[t] = 0;
        }
    }
    for (int i = 0; i < s->p.n_logit_bias; i++) logits[s->bias[i].id] += s->bias[i].bias;
}

/* The pick after the penalties: greedy, or top-k, temperature, top-p, min-p and the draw u, with
 * idx and prob (n entries) as scratch; the logprob from the unfiltered, untempered row. */
static int32_t pick(float temperature, int top_k, float top_p, float min_p, double u,
                    const float *logits, int n, int32_t *idx, float *prob, float *logprob)
{
    int32_t choice;
    if (temperature == 0) {
        choice = tsr_argmax(logits, n);
    } else {
        /* top-k */
        int k = top_candidates(logits, idx, n, top_k);
        /* temperature and softmax over the candidates */
        float maxl = logits[idx[0]];
        double sum = 0;
        for (int i = 0; i < k; i++) {
            prob[i] = expf((logits[idx[i]] - maxl) / temperature);
            sum += prob[i];
        }
        for (int i = 0; i < k; i++) prob[i] = (float)(prob[i] / sum);
        /* top-p: the smallest prefix whose mass reaches p (at least one token) */
        if (top_p < 1) {
            double cum = 0;
            int keep = k;
            for (int i = 0; i < k; i++) {
                cum += prob[i];
                if (cum >= top_p) {
                    keep = i + 1;
                    break;
                }
            }
            k = keep;
        }
        /* min-p: drop tokens below min_p times the top probability */
        if (min_p > 0) {
            float floor = min_p * prob[0];
            int keep = 1;
            while (keep < k && prob[keep] >= floor) keep++;
            k = keep;
        }
        double mass = 0;
        for (int i = 0; i < k; i++) mass += prob[i];
        double r = u * mass;
        choice = idx[k - 1];
        for (int i = 0; i < k; i++) {
            r -= prob[i];
            if (r < 0) {
                choice = idx[i];
                break;
            }
        }
    }
    if (logprob) {
        float maxl = logits[tsr_argmax(logits, n)];
        double sum = 0;
        for (int i = 0; i < n; i++) sum += exp((double)logits[i] - maxl);
        *logprob = (float)((double)logits[choice] - maxl - log(sum));
    }
    return choice;
}

int32_t tsr_sample(struct tsr_sampler *s, float *logits, const int32_t *history, int n_history,
                   double u, float *logprob)
{
    penalise(s, logits, history, n_history);
    const struct tsr_sampling *p = &s->p;
    return pick(p->temperature, p->top_k, p->top_p, p->min_p, u, logits, s->n_vocab, s->idx,
                s->prob, logprob);
}

int32_t tsr_sample_row(const struct tsr_sample_params *p, const float *logits, int n, int32_t *idx,
                       float *prob, float *logprob)
{
    return pick(p->temperature, p->top_k, p->top_p, p->min_p, p->u, logits, n, idx, prob, logprob);
}

int tsr_top_logprobs(const float *logits, int n, int top, int32_t *ids, float *lps)
{
    int k = top < n ? top : n;
    if (k > TSR_SAMPLING_MAX_TOP_LOGPROBS) k = TSR_SAMPLING_MAX_TOP_LOGPROBS;
    if (k <= 0) return 0;
    /* insertion into a sorted list of k: a row's values mostly fall below the k-th at once */
    int have = 0;
    for (int i = 0; i < n; i++) {
        float v = logits[i];
        if (isnan(v)) continue;
        if (have == k && !(v > logits[ids[k - 1]])) continue; /* ties: the lower id stays */
        int j = have < k ? have++ : k - 1;
        while (j > 0 && v > logits[ids[j - 1]]) {
            ids[j] = ids[j - 1];
            j--;
        }
        ids[j] = i;
    }
    float maxl = have ? logits[ids[0]] : 0;
    double sum = 0;
    for (int i = 0; i < n; i++)
        if (!isnan(logits[i])) sum += exp((double)logits[i] - maxl);
    double lse = log(sum);
    for (int j = 0; j < have; j++) lps[j] = (float)((double)logits[ids[j]] - maxl - lse);
    return have;
}
