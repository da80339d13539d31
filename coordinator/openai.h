/* OpenAI's HTTP API as tessera requests (DESIGN §1, front ends): the JSON of a /v1/completions or
 * /v1/chat/completions body read into a public GenerateRequest, which the session then validates
 * as it does a gRPC one (one validation), and the JSON of the answers. No I/O here: the HTTP
 * server is coordinator/http.c.
 *
 * Read: model, prompt (a string, token ids, or a list of one of those), messages (content a string
 * or a list of text parts; role developer is read as system), max_tokens and
 * max_completion_tokens, temperature, top_p, top_k (-1 = off), min_p, repetition_penalty, stop (a
 * string or a list), seed, ignore_eos, stream, stream_options.include_usage. Accepted and without
 * effect: user, metadata, store, service_tier, parallel_tool_calls, and n = 1, logprobs =
 * false/null/0, top_logprobs = null, presence/frequency_penalty = 0, logit_bias = {}, echo = false,
 * best_of = 1, response_format {"type": "text"} (what changes nothing). Anything else, and any of
 * those with a value that would change the answer, is refused naming the field: tessera never
 * answers a different question than the one asked. */
#ifndef TSR_COORDINATOR_OPENAI_H
#define TSR_COORDINATOR_OPENAI_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "tessera/v1/inference.pb-c.h"

enum { TSR_OPENAI_MAX_BODY = 8 << 20 }; /* bytes of one request body; more is 413 */

enum tsr_openai_kind { TSR_OPENAI_COMPLETION, TSR_OPENAI_CHAT };

struct tsr_openai_request {
    Tessera__V1__GenerateRequest g; /* its strings point into root and the arrays below */
    Tessera__V1__SamplingParams sampling;
    Tessera__V1__ChatMessages chat;
    Tessera__V1__ChatMessage *msgs, **msgp;
    Tessera__V1__TokenIds tokens;
    int32_t *ids;
    char **stop;
    char **parts; /* chat contents joined from text parts */
    size_t n_parts;
    int stream, include_usage;
    json_t *root;
    char param[64]; /* after a failure: the field at fault ("" when none) */
};

/* Reads body[0, len) as kind's request into *r (zeroed first). 0, or TSR_EINVAL with the message
 * (tsr_last_error) and r->param set; free *r with tsr_openai_request_free() either way. */
int tsr_openai_parse(enum tsr_openai_kind kind, const char *body, size_t len,
                     struct tsr_openai_request *r);
void tsr_openai_request_free(struct tsr_openai_request *r);

/* OpenAI's error object {"error": {"message", "type", "param", "code"}} for an HTTP status;
 * param NULL or "" for none. Caller frees (free()). */
char *tsr_openai_error_json(int http_status, const char *message, const char *param);
/* The HTTP status for a status code of enum tsr_rpc_code. */
int tsr_openai_http_status(int rpc_code);
/* "stop" or "length" for a finish reason. */
const char *tsr_openai_finish(Tessera__V1__FinishReason f);

#endif
