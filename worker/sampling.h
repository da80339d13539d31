/* Token sampling from one row of logits. Order of the transforms (as llama.cpp's default chain
 * minus the ones we lack): the penalties (repetition over the sequence so far, then OpenAI's
 * presence and frequency over the generated tokens, then the logit biases), then top-k, then
 * temperature, then top-p (nucleus), then min-p, then a draw from the remaining distribution.
 * temperature == 0 is greedy (argmax after the penalty; ties to the lowest id). The draw is a
 * function of the seed and the position alone (counter-based), so the same seed and inputs give
 * the same tokens, and a sequence resumed on another replica from its tokens so far goes on
 * exactly as it would have. */
#ifndef TSR_WORKER_SAMPLING_H
#define TSR_WORKER_SAMPLING_H

#include <stdint.h>

#include "kernels/backend.h"
#include "model/sampling.h"

struct tsr_sampler {
    struct tsr_sampling p; /* p.logit_bias points to bias */
    struct tsr_logit_bias *bias;
    int n_prompt;    /* history[0, n_prompt) is the prompt: presence and frequency penalties count
                      * only the tokens after it. 0 after init (the caller sets it). */
    int32_t *counts; /* (n_vocab) zero between calls; only with a presence/frequency penalty */
    /* scratch sized to the vocabulary, reused across calls */
    int n_vocab;
    int32_t *idx;
    float *prob;
};

/* Validates p (logit_bias ids < n_vocab too) and copies it. 0, TSR_EINVAL or TSR_ENOMEM. */
int tsr_sampler_init(struct tsr_sampler *s, const struct tsr_sampling *p, int n_vocab);
void tsr_sampler_free(struct tsr_sampler *s);

/* The uniform draw in [0, 1) (53 bits) for the token at position pos of a sequence (its index
 * among prompt and generated tokens): a function of the seed and pos alone. The u to pass
 * tsr_sample, or a device sampler (tsr_op_sample). */
double tsr_sampler_uniform(const struct tsr_sampler *s, int64_t pos);

/* Picks the next token with draw u (tsr_sampler_uniform at position n_history; unused when
 * greedy). logits (n_vocab) is modified in place. history is the sequence so far (prompt and
 * generated), for the penalties. If logprob is not NULL it receives the log probability of the
 * chosen token under the unfiltered, untempered softmax of the penalised logits. */
int32_t tsr_sample(struct tsr_sampler *s, float *logits, const int32_t *history, int n_history,
                   double u, float *logprob);

/* The same pick for a row a device sampler takes (tsr_op_sample: no penalty, no bias), where the
 * logits are on the host: p's filters and draw, idx and prob n entries of scratch. */
int32_t tsr_sample_row(const struct tsr_sample_params *p, const float *logits, int n, int32_t *idx,
                       float *prob, float *logprob);

/* 1 when the sampler changes the logits before sampling (a penalty or a bias): what a device
 * sampler (tsr_op_sample) does not do. */
int tsr_sampler_penalises(const struct tsr_sampler *s);

/* The k most likely tokens of a row under the same distribution as tsr_sample's logprob (the
 * unfiltered, untempered softmax; pass the row tsr_sample left, penalised): ids[0, k) and
 * lps[0, k) in descending order (the lower id first on ties), k = min(top, n). Returns k.
 * O(n·k) worst case, O(n) typically; k <= TSR_SAMPLING_MAX_TOP_LOGPROBS. */
int tsr_top_logprobs(const float *logits, int n, int top, int32_t *ids, float *lps);

/* Index of the largest value (lowest index on ties). */
int32_t tsr_argmax(const float *x, int n);

#endif
