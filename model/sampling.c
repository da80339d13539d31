#include "model/sampling.h"

#include <math.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "common/status.h"

struct tsr_sampling tsr_sampling_default(void)
{
    return (struct tsr_sampling){
        .temperature = 0, .top_k = 0, .top_p = 1, .min_p = 0, .repetition_penalty = 1, .seed = 0};
}

/* A seed nobody chose: 64 random bits (OpenAI's and vLLM's meaning of an unset seed). */
uint64_t tsr_sampling_random_seed(void)
{
    uint64_t v;
    if (getrandom(&v, sizeof v, 0) == (ssize_t)sizeof v) return v;
    struct timespec ts; /* no entropy source: time and pid still differ between requests */
    clock_gettime(CLOCK_REALTIME, &ts);
    return ((uint64_t)ts.tv_sec * 1000000007u) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32);
}

int tsr_sampling_validate(const struct tsr_sampling *s)
{
    if (!(s->temperature >= 0) || isinf(s->temperature))
        return tsr_errorf(TSR_EINVAL,
                          "temperature must be a finite number >= 0 (0 = greedy); got %g",
                          s->temperature);
    if (s->top_k < 0)
        return tsr_errorf(TSR_EINVAL, "top_k must be >= 0 (0 = off); got %d", s->top_k);
    if (!(s->top_p > 0 && s->top_p <= 1))
        return tsr_errorf(TSR_EINVAL, "top_p must be in (0, 1] (1 = off); got %g", s->top_p);
    if (!(s->min_p >= 0 && s->min_p < 1))
        return tsr_errorf(TSR_EINVAL, "min_p must be in [0, 1) (0 = off); got %g", s->min_p);
    if (!(s->repetition_penalty > 0) || isinf(s->repetition_penalty))
        return tsr_errorf(TSR_EINVAL,
                          "repetition_penalty must be a finite number > 0 (1 = off); got %g",
                          s->repetition_penalty);
    if (!(s->presence_penalty >= -2 && s->presence_penalty <= 2))
        return tsr_errorf(TSR_EINVAL, "presence_penalty must be in [-2, 2]; got %g",
                          s->presence_penalty);
    if (!(s->frequency_penalty >= -2 && s->frequency_penalty <= 2))
        return tsr_errorf(TSR_EINVAL, "frequency_penalty must be in [-2, 2]; got %g",
                          s->frequency_penalty);
    if (s->top_logprobs < 0 || s->top_logprobs > TSR_SAMPLING_MAX_TOP_LOGPROBS)
        return tsr_errorf(TSR_EINVAL, "top_logprobs must be in [0, %d]; got %d",
                          TSR_SAMPLING_MAX_TOP_LOGPROBS, s->top_logprobs);
    if (s->n_logit_bias < 0 || s->n_logit_bias > TSR_SAMPLING_MAX_LOGIT_BIAS ||
        (s->n_logit_bias && !s->logit_bias))
        return tsr_errorf(TSR_EINVAL, "logit_bias has %d entries; at most %d", s->n_logit_bias,
                          TSR_SAMPLING_MAX_LOGIT_BIAS);
    for (int i = 0; i < s->n_logit_bias; i++) {
        const struct tsr_logit_bias *b = &s->logit_bias[i];
        if (b->id < 0)
            return tsr_errorf(TSR_EINVAL, "logit_bias: %d is not a token id", (int)b->id);
        if (!(b->bias >= -100 && b->bias <= 100))
            return tsr_errorf(TSR_EINVAL, "logit_bias[%d] must be in [-100, 100]; got %g",
                              (int)b->id, b->bias);
        /* O(n^2), n <= 300: once per request */
        for (int j = 0; j < i; j++)
            if (s->logit_bias[j].id == b->id)
                return tsr_errorf(TSR_EINVAL, "logit_bias names token %d twice", (int)b->id);
    }
    return 0;
}
