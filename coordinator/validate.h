/* Checks of a public request before anything is tokenized or routed (DESIGN §1: the coordinator
 * validates). Each failure is TSR_EINVAL with a message a person can act on, naming the field,
 * the value and what is allowed; the service answers INVALID_ARGUMENT with it. */
#ifndef TSR_COORDINATOR_VALIDATE_H
#define TSR_COORDINATOR_VALIDATE_H

#include <stddef.h>
#include <stdint.h>

#include "tessera/v1/inference.pb-c.h"
#include "model/sampling.h"

/* Size limits of one request. */
enum {
    TSR_MAX_PROMPT_BYTES = 1 << 20, /* prompt text, or all chat messages together */
    TSR_MAX_STOP_STRINGS = 16,
    TSR_MAX_STOP_BYTES = 256, /* one stop string */
    TSR_MAX_STOP_IDS = 64,
    TSR_MAX_MESSAGES = 1024,
    TSR_MAX_REQUEST_ID_BYTES = 256, /* echoed in every response, and logged */
    TSR_DEFAULT_MAX_TOKENS = 128,
};

/* 1 if s[0, n) is well-formed UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF). */
int tsr_utf8_valid(const char *s, size_t n);

/* The sampling fields, with defaults for those unset (NULL: all defaults); an unset seed is a
 * random one, so unseeded requests differ (OpenAI's and vLLM's meaning). */
int tsr_validate_sampling(const Tessera__V1__SamplingParams *p, struct tsr_sampling *out);

/* Everything that does not need the tokenizer: input present and non-empty, UTF-8, sizes, roles,
 * max_tokens >= 1, stop strings and ids, request_id; n_vocab bounds the token ids. *max_tokens gets
 * the value with its default. */
int tsr_validate_generate(const Tessera__V1__GenerateRequest *r, int n_vocab,
                          struct tsr_sampling *sampling, int *max_tokens);

/* After tokenizing: prompt plus max_tokens within the context. */
int tsr_validate_context(int n_prompt, int max_tokens, int n_ctx);

#endif
