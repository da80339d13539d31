#include "coordinator/validate.h"

#include <stdio.h>
#include <string.h>

#include "common/status.h"

int tsr_utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned min, cp;
        if ((c & 0xE0) == 0xC0)
            len = 2, min = 0x80, cp = c & 0x1F;
        else if ((c & 0xF0) == 0xE0)
            len = 3, min = 0x800, cp = c & 0x0F;
        else if ((c & 0xF8) == 0xF0)
            len = 4, min = 0x10000, cp = c & 0x07;
        else
            return 0;
        if (n - i < len) return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += len;
    }
    return 1;
}

int tsr_validate_sampling(const Tessera__V1__SamplingParams *p, struct tsr_sampling *out)
{
    *out = tsr_sampling_default();
    out->seed = tsr_sampling_random_seed(); /* unless the request sets one */
    if (!p) return 0;
    if (p->has_temperature) out->temperature = p->temperature;
    if (p->has_top_k) out->top_k = p->top_k;
    if (p->has_top_p) out->top_p = p->top_p;
    if (p->has_min_p) out->min_p = p->min_p;
    if (p->has_repetition_penalty) out->repetition_penalty = p->repetition_penalty;
    if (p->has_seed) out->seed = p->seed;
    if (p->has_presence_penalty) out->presence_penalty = p->presence_penalty;
    if (p->has_frequency_penalty) out->frequency_penalty = p->frequency_penalty;
    if (p->n_logit_bias > TSR_SAMPLING_MAX_LOGIT_BIAS)
        return tsr_errorf(TSR_EINVAL, "sampling.logit_bias has %zu entries; at most %d",
                          p->n_logit_bias, TSR_SAMPLING_MAX_LOGIT_BIAS);
    struct tsr_logit_bias bias[TSR_SAMPLING_MAX_LOGIT_BIAS];
    for (size_t i = 0; i < p->n_logit_bias; i++)
        bias[i] = (struct tsr_logit_bias){p->logit_bias[i]->token_id, p->logit_bias[i]->bias};
    out->logit_bias = bias;
    out->n_logit_bias = (int)p->n_logit_bias;
    int rc = tsr_sampling_validate(out); /* the one validation (model/sampling.h) */
    /* checked, not kept: the request's own entries travel on to the leader */
    out->logit_bias = NULL;
    out->n_logit_bias = 0;
    if (rc) {
        char m[256];
        snprintf(m, sizeof m, "%s", tsr_last_error());
        return tsr_errorf(TSR_EINVAL, "sampling.%s", m);
    }
    return 0;
}

static int check_text(const char *what, const char *s, size_t *total)
{
    size_t n = strlen(s);
    if (!tsr_utf8_valid(s, n)) return tsr_errorf(TSR_EINVAL, "%s is not valid UTF-8", what);
    *total += n;
    if (*total > TSR_MAX_PROMPT_BYTES)
        return tsr_errorf(TSR_EINVAL,
                          "the prompt (prompt, or all messages' contents) is over %d bytes",
                          TSR_MAX_PROMPT_BYTES);
    return 0;
}

int tsr_validate_generate(const Tessera__V1__GenerateRequest *r, int n_vocab,
                          struct tsr_sampling *sampling, int *max_tokens)
{
    int rc;
    size_t total = 0;
    switch (r->input_case) {
    case TESSERA__V1__GENERATE_REQUEST__INPUT_PROMPT:
        if (!r->prompt || !r->prompt[0])
            return tsr_errorf(TSR_EINVAL, "the prompt is empty: set prompt, messages or token_ids");
        if ((rc = check_text("prompt", r->prompt, &total))) return rc;
        break;
    case TESSERA__V1__GENERATE_REQUEST__INPUT_MESSAGES: {
        const Tessera__V1__ChatMessages *m = r->messages;
        if (!m || m->n_messages == 0)
            return tsr_errorf(TSR_EINVAL, "messages is empty: give at least one message");
        if (m->n_messages > TSR_MAX_MESSAGES)
            return tsr_errorf(TSR_EINVAL, "messages has %zu entries; at most %d", m->n_messages,
                              TSR_MAX_MESSAGES);
        for (size_t i = 0; i < m->n_messages; i++) {
            const char *role = m->messages[i]->role ? m->messages[i]->role : "";
            if (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant"))
                return tsr_errorf(TSR_EINVAL,
                                  "messages[%zu].role must be system, user or assistant", i);
            if ((rc = check_text("a message's content",
                                 m->messages[i]->content ? m->messages[i]->content : "", &total)))
                return rc;
        }
        break;
    }
    case TESSERA__V1__GENERATE_REQUEST__INPUT_TOKEN_IDS: {
        const Tessera__V1__TokenIds *t = r->token_ids;
        if (!t || t->n_ids == 0) return tsr_errorf(TSR_EINVAL, "token_ids is empty");
        for (size_t i = 0; i < t->n_ids; i++)
            if (t->ids[i] < 0 || t->ids[i] >= n_vocab)
                return tsr_errorf(TSR_EINVAL,
                                  "token_ids[%zu] = %d is outside the vocabulary (0..%d)", i,
                                  t->ids[i], n_vocab - 1);
        break;
    }
    default:
        return tsr_errorf(TSR_EINVAL, "no input: set prompt, messages or token_ids");
    }
    if ((rc = tsr_validate_sampling(r->sampling, sampling))) return rc;
    for (size_t i = 0; r->sampling && i < r->sampling->n_logit_bias; i++)
        if (r->sampling->logit_bias[i]->token_id >= n_vocab)
            return tsr_errorf(TSR_EINVAL,
                              "sampling.logit_bias: %d is outside the vocabulary (0..%d)",
                              r->sampling->logit_bias[i]->token_id, n_vocab - 1);
    if (r->has_top_logprobs) {
        if (r->top_logprobs < 0 || r->top_logprobs > TSR_SAMPLING_MAX_TOP_LOGPROBS)
            return tsr_errorf(TSR_EINVAL, "top_logprobs must be in [0, %d]; got %d",
                              TSR_SAMPLING_MAX_TOP_LOGPROBS, r->top_logprobs);
        sampling->top_logprobs = r->top_logprobs;
    }
    *max_tokens = r->has_max_tokens ? r->max_tokens : TSR_DEFAULT_MAX_TOKENS;
    if (*max_tokens < 1)
        return tsr_errorf(TSR_EINVAL, "max_tokens must be >= 1; got %d", *max_tokens);
    if (r->n_stop > TSR_MAX_STOP_STRINGS)
        return tsr_errorf(TSR_EINVAL, "stop has %zu strings; at most %d", r->n_stop,
                          TSR_MAX_STOP_STRINGS);
    for (size_t i = 0; i < r->n_stop; i++) {
        size_t n = strlen(r->stop[i]);
        if (n == 0) return tsr_errorf(TSR_EINVAL, "stop[%zu] is empty", i);
        if (n > TSR_MAX_STOP_BYTES)
            return tsr_errorf(TSR_EINVAL, "stop[%zu] is %zu bytes; at most %d", i, n,
                              TSR_MAX_STOP_BYTES);
        if (!tsr_utf8_valid(r->stop[i], n))
            return tsr_errorf(TSR_EINVAL, "stop[%zu] is not valid UTF-8", i);
    }
    if (r->request_id) {
        size_t n = strlen(r->request_id);
        if (n > TSR_MAX_REQUEST_ID_BYTES)
            return tsr_errorf(TSR_EINVAL, "request_id is %zu bytes; at most %d", n,
                              TSR_MAX_REQUEST_ID_BYTES);
        if (!tsr_utf8_valid(r->request_id, n))
            return tsr_errorf(TSR_EINVAL, "request_id is not valid UTF-8");
    }
    if (r->n_stop_token_ids > TSR_MAX_STOP_IDS)
        return tsr_errorf(TSR_EINVAL, "stop_token_ids has %zu ids; at most %d", r->n_stop_token_ids,
                          TSR_MAX_STOP_IDS);
    for (size_t i = 0; i < r->n_stop_token_ids; i++)
        if (r->stop_token_ids[i] < 0 || r->stop_token_ids[i] >= n_vocab)
            return tsr_errorf(TSR_EINVAL,
                              "stop_token_ids[%zu] = %d is outside the vocabulary (0..%d)", i,
                              r->stop_token_ids[i], n_vocab - 1);
    return 0;
}

int tsr_validate_context(int n_prompt, int max_tokens, int n_ctx)
{
    if ((int64_t)n_prompt + max_tokens > n_ctx)
        return tsr_errorf(TSR_EINVAL,
                          "the prompt (%d tokens) plus max_tokens (%d) is over the model's "
                          "context of %d tokens: shorten the prompt or lower max_tokens",
                          n_prompt, max_tokens, n_ctx);
    return 0;
}
