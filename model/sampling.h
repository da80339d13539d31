/* Sampling parameters (DESIGN §4): what a request asks of the sampler, their defaults, limits
 * and their one validation. The coordinator checks a request with them (coordinator/validate.c);
 * the worker samples with them (worker/sampling.h). No sampling here. */
#ifndef TSR_MODEL_SAMPLING_H
#define TSR_MODEL_SAMPLING_H

#include <stdint.h>

enum {
    TSR_SAMPLING_MAX_TOP_LOGPROBS = 20, /* OpenAI's bound on top_logprobs */
    TSR_SAMPLING_MAX_LOGIT_BIAS = 300,  /* OpenAI's bound on logit_bias entries */
};

/* logits[id] += bias, bias in [-100, 100] (OpenAI's logit_bias). */
struct tsr_logit_bias {
    int32_t id;
    float bias;
};

/* Zero in every field after seed means off: a designated initialiser that leaves them out asks
 * for nothing new. */
struct tsr_sampling {
    float temperature;        /* >= 0; 0 = greedy */
    int top_k;                /* 0 = off */
    float top_p;              /* (0, 1]; 1 = off */
    float min_p;              /* [0, 1); 0 = off */
    float repetition_penalty; /* 1 = off; > 1 discourages tokens already in the sequence */
    uint64_t seed;
    float presence_penalty;  /* [-2, 2]; 0 = off: minus this once for each token generated */
    float frequency_penalty; /* [-2, 2]; 0 = off: minus this per time a token was generated */
    int top_logprobs;        /* [0, TSR_SAMPLING_MAX_TOP_LOGPROBS]: alternatives reported */
    const struct tsr_logit_bias *logit_bias; /* n_logit_bias entries, not owned (the sampler
                                              * keeps a copy); ids distinct */
    int n_logit_bias;
};

/* Defaults: greedy, no filters. */
struct tsr_sampling tsr_sampling_default(void);
/* A seed nobody chose: 64 random bits (OpenAI's and vLLM's meaning of an unset seed). */
uint64_t tsr_sampling_random_seed(void);
/* 0, or TSR_EINVAL with a message naming the bad field. */
int tsr_sampling_validate(const struct tsr_sampling *s);

#endif
