/* The engine: sequences, the scheduler and sampling over one runner. Each step takes one decode
 * token from every running sequence and prompt chunks from the others (chunked prefill) under a
 * token budget, allocates KV blocks as positions are reached, and when blocks run out preempts
 * the youngest sequence (its blocks are freed and it is recomputed later; results do not change).
 * A group leader drives one engine; `tessera generate` drives one directly. Not thread-safe: one
 * thread calls everything. */
#ifndef TSR_WORKER_ENGINE_H
#define TSR_WORKER_ENGINE_H

#include <stdint.h>

#include "kernels/backend.h"
#include "model/model.h"
#include "worker/forward.h"
#include "worker/sampling.h"

typedef struct tsr_engine tsr_engine_t;

enum tsr_finish {
    TSR_FINISH_NONE = 0, /* still running */
    TSR_FINISH_STOP,     /* end-of-generation token or a stop id */
    TSR_FINISH_LENGTH,   /* max_tokens reached */
    TSR_FINISH_CANCELLED,
    TSR_FINISH_ERROR,
};

const char *tsr_finish_name(enum tsr_finish f); /* "stop", "length", ... */

struct tsr_engine_opts {
    int n_blocks;                         /* KV blocks in the pool; 0: from device memory */
    int block_size;                       /* positions per block */
    int max_step_tokens;                  /* token budget of one step */
    int max_seqs;                         /* sequences admitted at once */
    int max_context;                      /* longest sequence; 0 = the model's training context */
    const struct tsr_runner_shard *shard; /* this leader's group, or NULL for one process */
    double mem_util; /* with n_blocks 0: the device memory fraction (tsr_runner_opts) */
    /* 1: no prefix caching. Otherwise (the default) full blocks of computed K/V are kept and
     * shared by later sequences that begin with the same tokens (worker/kv_pool.h) */
    int no_prefix_cache;
};

/* The runner options of an engine with options o: what its group's followers must build theirs
 * from too (worker/step.h). */
struct tsr_runner_opts tsr_engine_runner_opts(const struct tsr_engine_opts *o);

struct tsr_request {
    const int32_t *prompt; /* copied by tsr_engine_add */
    int n_prompt;
    struct tsr_sampling sampling;
    int max_tokens; /* >= 1 */
    int ignore_eos; /* keep going past end-of-generation tokens */
    const int32_t *stop_ids;
    int n_stop_ids;
};

/* One token produced, or the end of a sequence that produced none this step (token = -1). */
struct tsr_token_event {
    int64_t id;
    int32_t token;
    float logprob;
    enum tsr_finish finish; /* TSR_FINISH_NONE while running */
    int n_cached; /* with a finish: prompt tokens whose K/V the sequence found in the cache
                   * instead of computing them (0 until prompts share a prefix: issue 15) */
    /* the sampling's top_logprobs most likely tokens at this step (tsr_top_logprobs) */
    int n_top;
    int32_t top_ids[TSR_SAMPLING_MAX_TOP_LOGPROBS];
    float top_logprobs[TSR_SAMPLING_MAX_TOP_LOGPROBS];
};

struct tsr_engine_stats {
    int n_blocks, n_free_blocks;
    int n_running; /* sequences admitted and not finished */
    uint64_t steps, prompt_tokens, decode_tokens, preemptions;
    /* prefix caching: prompt positions looked up, those found; blocks kept for reuse (part of
     * n_free_blocks) */
    uint64_t prefix_queries, prefix_hits;
    int n_cached_blocks;
};

int tsr_engine_new(tsr_model_t *m, tsr_backend_t *b, const struct tsr_engine_opts *o,
                   tsr_engine_t **out);
void tsr_engine_free(tsr_engine_t *e);

/* Admits a request. TSR_EINVAL for bad sampling or an empty prompt, TSR_ERANGE when prompt plus
 * max_tokens exceeds the context or the whole cache, TSR_EEXHAUSTED when max_seqs are running. */
int tsr_engine_add(tsr_engine_t *e, const struct tsr_request *req, int64_t *id);
/* Ends the sequence at the next step (an event with TSR_FINISH_CANCELLED) and frees its blocks.
 * TSR_ENOTFOUND if no such running sequence. */
int tsr_engine_cancel(tsr_engine_t *e, int64_t id);
/* Runs one step. Writes at most cap events (cap >= max_seqs guarantees none is dropped). With no
 * sequences it returns 0 and no events. */
int tsr_engine_step(tsr_engine_t *e, struct tsr_token_event *ev, int cap, int *n_ev);
/* Nothing to run for a while: on the leader of a group, tells the followers it is alive
 * (tsr_runner_idle), at least every TSR_STEP_IDLE_S seconds. Same thread as tsr_engine_step. */
int tsr_engine_idle(tsr_engine_t *e);
void tsr_engine_get_stats(const tsr_engine_t *e, struct tsr_engine_stats *s);
/* The KV cache's blocks (the option, or what device memory gave). */
int tsr_engine_n_blocks(const tsr_engine_t *e);

#endif
