/* Token sampling from one row of logits. Order of the transforms (as llama.cpp's default chain
 * minus the ones we lack): repetition penalty over the sequence so far, then top-k, then
 * temperature, then top-p (nucleus), then min-p, then a draw from the remaining distribution.
 * temperature == 0 is greedy (argmax after the penalty; ties to the lowest id). The generator is
 * per sequence and seeded, so the same seed and inputs give the same tokens. */
#ifndef TSR_WORKER_SAMPLING_H
#define TSR_WORKER_SAMPLING_H

#include <stdint.h>

struct tsr_sampling {
    float temperature;        /* >= 0; 0 = greedy */
    int top_k;                /* 0 = off */
    float top_p;              /* (0, 1]; 1 = off */
    float min_p;              /* [0, 1); 0 = off */
    float repetition_penalty; /* 1 = off; > 1 discourages tokens already in the sequence */
    uint64_t seed;
};

/* Defaults: greedy, no filters. */
struct tsr_sampling tsr_sampling_default(void);
/* 0, or TSR_EINVAL with a message naming the bad field. */
int tsr_sampling_validate(const struct tsr_sampling *s);

struct tsr_sampler {
    struct tsr_sampling p;
    uint64_t rng[4]; /* xoshiro256** state */
    /* scratch sized to the vocabulary, reused across calls */
    int n_vocab;
    int32_t *idx;
    float *prob;
};

int tsr_sampler_init(struct tsr_sampler *s, const struct tsr_sampling *p, int n_vocab);
void tsr_sampler_free(struct tsr_sampler *s);

/* The sampler's next uniform draw in [0, 1) (53 bits), advancing its generator: the one draw
 * tsr_sample makes when temperature > 0, for callers that sample elsewhere (tsr_op_sample). */
double tsr_sampler_uniform(struct tsr_sampler *s);

/* Picks the next token. logits (n_vocab) is modified in place. history is the sequence so far
 * (prompt and generated), for the repetition penalty. If logprob is not NULL it receives the log
 * probability of the chosen token under the unfiltered, untempered softmax of the penalised
 * logits. */
int32_t tsr_sample(struct tsr_sampler *s, float *logits, const int32_t *history, int n_history,
                   float *logprob);

/* Index of the largest value (lowest index on ties). */
int32_t tsr_argmax(const float *x, int n);

#endif
