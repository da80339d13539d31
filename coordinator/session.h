/* The coordinator's request pipeline, transport-neutral (DESIGN §1, front ends): one call takes a
 * public GenerateRequest and gives its answer as a stream of chunks to a callback. gRPC
 * (coordinator/service.c) and OpenAI HTTP (coordinator/http.c) are thin adapters over it.
 *
 * tsr_session_run: checks the model name, validates (INVALID_ARGUMENT naming the field),
 * tokenizes, admits the request against a bound on requests in flight (RESOURCE_EXHAUSTED beyond
 * it; UNAVAILABLE while draining), routes it to the least-loaded ready group and relays the
 * leader's token stream as text deltas (incremental detokenization; stop strings end the text
 * before their first match). A client gone (the cancel callback says so, or the chunk callback
 * fails) cancels the leader's call. A group that fails before any chunk was delivered is retried
 * on another group; after that the request ends UNAVAILABLE.
 *
 * Status codes are gRPC's canonical ones (enum tsr_rpc_code), whatever the transport: HTTP maps
 * them to its own. */
#ifndef TSR_COORDINATOR_SESSION_H
#define TSR_COORDINATOR_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "coordinator/router.h"
#include "model/model.h"
#include "tessera/v1/inference.pb-c.h"

/* What every session of one coordinator shares: the model, the router, admission. Thread-safe. */
typedef struct tsr_sessions tsr_sessions_t;

struct tsr_session_opts {
    int max_queue;           /* requests in flight and queued at once; more: RESOURCE_EXHAUSTED */
    int ready_wait_ms;       /* how long a request waits for a ready group before UNAVAILABLE */
    const char *served_name; /* the model's id for clients; NULL: from its file (model_id) */
    int max_model_len;       /* prompt plus max_tokens at most; 0: the model's context */
    int no_migration;        /* a stream whose replica fails after it sent tokens ends UNAVAILABLE,
                              * instead of going on from another replica (coordinator/session.c) */
};

/* m gives the tokenizer, chat template and context (its weights are never read); m and r must
 * outlive the result. NULL when out of memory. */
tsr_sessions_t *tsr_sessions_new(const tsr_model_t *m, tsr_router_t *r,
                                 const struct tsr_session_opts *o);
/* Every session must have returned. */
void tsr_sessions_free(tsr_sessions_t *s);

/* Draining, for a clean stop: from the first call on, new requests end UNAVAILABLE and
 * tsr_sessions_serving() says 0; requests in flight go on. Returns how many are in flight. */
int64_t tsr_sessions_drain(tsr_sessions_t *s);
int64_t tsr_sessions_in_flight(tsr_sessions_t *s);
/* 1 when not draining and at least one group is ready. */
int tsr_sessions_serving(tsr_sessions_t *s);
/* The served model's id: served_name, or the file's name without .gguf, a directory's last
 * name, or the synthetic spec. */
const char *tsr_sessions_model_id(const tsr_sessions_t *s);
/* The longest request (prompt plus max_tokens) served: max_model_len, or the model's context. */
int tsr_sessions_max_model_len(const tsr_sessions_t *s);
const tsr_model_t *tsr_sessions_model(const tsr_sessions_t *s);
tsr_router_t *tsr_sessions_router(const tsr_sessions_t *s);

/* The status of a request that ended, and its message for people. */
struct tsr_session_status {
    int code; /* enum tsr_rpc_code; TSR_RPC_CANCELLED when the client went away */
    char msg[512];
};

/* 0 when model is unset, empty, or names the served model (its id; without a served_name also
 * the model's path); else NOT_FOUND in *st. */
int tsr_session_check_model(tsr_sessions_t *s, const char *model, struct tsr_session_status *st);

/* The request's prompt as token ids, after the same checks as a Generate (model name included);
 * the TokenizeRequest path. *ids malloc'ed (caller frees). 0, or the status in *st. */
int tsr_session_tokens(tsr_sessions_t *s, const Tessera__V1__GenerateRequest *r, int32_t **ids,
                       size_t *n, struct tsr_session_status *st);

/* One step of a request's answer. Pointers are valid during the callback only. */
struct tsr_session_chunk {
    const char *request_id;
    const int32_t *ids; /* the token ids this chunk relays */
    size_t n_ids;
    const float *logprobs; /* one per id when the request asked for them, else NULL */
    /* one per id when the request asked for top_logprobs > 0, else NULL */
    Tessera__V1__TopLogprobs *const *top_logprobs;
    const char *text; /* the text they add: whole UTF-8 characters, may hold U+0000 */
    size_t n_text;
    int over;                             /* the last chunk */
    Tessera__V1__FinishReason finish;     /* set when over */
    int prompt_tokens, completion_tokens; /* usage, set when over */
    int cached_tokens; /* usage: of prompt_tokens, those the worker found in its cache */
    int index;         /* the choice this chunk belongs to: 0, or 0..n-1 under tsr_session_run_n */
};

struct tsr_session_io {
    /* Delivers one chunk; non-zero: the client is gone (the request is cancelled). */
    int (*chunk)(void *arg, const struct tsr_session_chunk *c);
    /* Polled while waiting on the leader (every 20 ms); 1: the client is gone or out of time.
     * NULL: never. */
    int (*cancelled)(void *arg);
    void *arg;
    /* Milliseconds the client gives the request from now; INT64_MAX: no deadline. */
    int64_t (*time_left_ms)(void *arg); /* NULL: none */
};

/* Runs the request to its end on the calling thread. Chunks go to io->chunk; the last one (over)
 * only when the request ends well (st->code TSR_RPC_OK). Returns st->code. */
int tsr_session_run(tsr_sessions_t *s, const Tessera__V1__GenerateRequest *r,
                    const struct tsr_session_io *io, struct tsr_session_status *st);

#endif
