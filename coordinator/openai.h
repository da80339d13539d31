/* OpenAI's HTTP API as tessera requests (DESIGN §1, front ends): the JSON of a /v1/completions or
 * /v1/chat/completions body read into a public GenerateRequest, which the session then validates
 * as it does a gRPC one (one validation), and the JSON of the answers. No I/O here: the HTTP
 * server is coordinator/http.c.
 *
 * Read: model, prompt (a string, token ids, or a list of one of those), messages (content a string
 * or a list of text parts; role developer is read as system), max_tokens and
 * max_completion_tokens, temperature, top_p, top_k (-1 = off), min_p, repetition_penalty,
 * presence_penalty, frequency_penalty, logit_bias, stop (a string or a list), seed, ignore_eos, n
 * (1..8: n sessions, choice i seeded seed + i), logprobs (chat: true/false, with top_logprobs
 * 0..20; completions: an integer 0..20, the alternatives per token), stream,
 * stream_options.include_usage. Accepted and without effect: user, metadata, store, service_tier,
 * parallel_tool_calls, and echo = false, best_of = 1, response_format {"type": "text"} (what
 * changes nothing). Anything else, and any of those with a value that would change the answer, is
 * refused naming the field: tessera never answers a different question than the one asked.
 *
 * "No I/O here" holds for the parsing and the JSON; tsr_openai_run runs the sessions. */
#ifndef TSR_COORDINATOR_OPENAI_H
#define TSR_COORDINATOR_OPENAI_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "coordinator/session.h"
#include "model/tokenizer.h"
#include "tessera/v1/inference.pb-c.h"

enum {
    TSR_OPENAI_MAX_BODY = 8 << 20, /* bytes of one request body; more is 413 */
    TSR_OPENAI_MAX_N = 8,          /* choices of one request */
};

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
    Tessera__V1__LogitBias *bias, **biasp;
    int stream, include_usage;
    int n;                                        /* choices, 1..TSR_OPENAI_MAX_N */
    int logprobs, top_logprobs, has_top_logprobs; /* as asked (completions: logprobs = k) */
    json_t *root;
    char param[64]; /* after a failure: the field at fault ("" when none) */
};

/* Reads body[0, len) as kind's request into *r (zeroed first). 0, or TSR_EINVAL with the message
 * (tsr_last_error) and r->param set; free *r with tsr_openai_request_free() either way. */
int tsr_openai_parse(enum tsr_openai_kind kind, const char *body, size_t len,
                     struct tsr_openai_request *r);
void tsr_openai_request_free(struct tsr_openai_request *r);

/* Runs r's n choices as n sessions of tsr_session_run (choice 0 on the calling thread, the others
 * on threads of their own), choice i with seed + i when the request set a seed (unseeded, each
 * draws its own) and request id "<id>-<i>" for i > 0. Chunks reach io->chunk one at a time
 * (serialised), with c->index the choice. A choice that fails cancels the others; the status is
 * the first failure's, else OK. io->cancelled and io->time_left_ms are called under the same lock.
 * Returns st->code. */
int tsr_openai_run(tsr_sessions_t *ss, const struct tsr_openai_request *r,
                   const struct tsr_session_io *io, struct tsr_session_status *st);

/* An answer being put together from the chunks of tsr_openai_run: per choice its text,
 * OpenAI's logprobs object, finish reason and completion tokens; the prompt is counted once. */
struct tsr_openai_answer {
    enum tsr_openai_kind kind;
    const struct tsr_openai_request *r;
    const tsr_tokenizer_t *tok; /* for each token's text; NULL: ids as "token_id:<id>" */
    struct tsr_openai_choice {
        char *text;
        size_t n_text, cap_text;
        json_t *lp;  /* chat: {"content": [...]}; completions: {"tokens", ...}; NULL: none */
        int started; /* a stream event went out for it */
        int over;
        Tessera__V1__FinishReason finish;
        int completion_tokens;
    } c[TSR_OPENAI_MAX_N];
    int prompt_tokens;
    int cached_tokens; /* of prompt_tokens, found in the worker's cache (the last choice over) */
};

void tsr_openai_answer_init(struct tsr_openai_answer *a, enum tsr_openai_kind kind,
                            const struct tsr_openai_request *r, const tsr_tokenizer_t *tok);
void tsr_openai_answer_free(struct tsr_openai_answer *a);
/* Whole answers: adds a chunk to its choice. 0 or TSR_ENOMEM. */
int tsr_openai_answer_add(struct tsr_openai_answer *a, const struct tsr_session_chunk *c);
/* The "choices" array of a whole answer (new reference; NULL when out of memory). */
json_t *tsr_openai_answer_choices(const struct tsr_openai_answer *a);
/* {"prompt_tokens", "completion_tokens", "total_tokens"}: the prompt once, completions summed. */
json_t *tsr_openai_answer_usage(const struct tsr_openai_answer *a);
/* Streams: the choice object of one chunk's event (delta or text, logprobs, finish_reason), or
 * NULL when the chunk carries nothing to send (ids without text or logprobs yet, once the choice
 * has started). Records usage as tsr_openai_answer_add does. */
json_t *tsr_openai_stream_choice(struct tsr_openai_answer *a, const struct tsr_session_chunk *c);

/* OpenAI's error object {"error": {"message", "type", "param", "code"}} for an HTTP status;
 * param NULL or "" for none. Caller frees (free()). */
char *tsr_openai_error_json(int http_status, const char *message, const char *param);
/* The HTTP status for a status code of enum tsr_rpc_code. */
int tsr_openai_http_status(int rpc_code);
/* "stop" or "length" for a finish reason. */
const char *tsr_openai_finish(Tessera__V1__FinishReason f);

#endif
