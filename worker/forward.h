/* The forward pass over one step's batch: any mix of prompt chunks and single decode tokens from
 * many sequences, each attending through its own block table into the paged KV cache. The runner
 * owns the weights' backend buffers, the per-layer K/V caches and the step's scratch buffers. */
#ifndef TSR_WORKER_FORWARD_H
#define TSR_WORKER_FORWARD_H

#include <stdint.h>

#include "kernels/backend.h"
#include "kernels/comm.h"
#include "model/model.h"
#include "model/shard_plan.h"

typedef struct tsr_runner tsr_runner_t;

struct tsr_runner_opts {
    int n_blocks;   /* KV cache blocks in the pool; 0: from the device's memory (mem_util) */
    int block_size; /* positions per block */
    int max_tokens; /* most tokens in one step (the scheduler's budget) */
    /* With n_blocks 0: the fraction of the device's memory this process may use. The KV cache
     * gets what is free once the weights and the step's buffers are in, less the (1 - mem_util)
     * of the whole device that stays free; a group's ranks agree on the smallest count. */
    double mem_util;
    /* The KV cache's element type (kernels/backend.h): TSR_F32 (0, the default) or TSR_BF16,
     * which halves its bytes. */
    enum tsr_dtype kv_type;
};

/* One step. Token t is ids[t] at position pos[t] of sequence seq[t]; sequence s owns blocks
 * block_tables[s * max_blocks ...]. Logits are returned for the n_out tokens listed in out_rows. */
struct tsr_step {
    int n_tokens;
    const int32_t *ids, *pos, *seq;
    int n_seqs, max_blocks;
    const int32_t *block_tables;
    int n_out;
    const int32_t *out_rows;
    /* Set by tsr_runner_forward_sample on a group's step (NULL otherwise): the rows are sampled
     * on the last stage with these (n_out of them), each reporting its top most likely tokens,
     * and only what they pick travels back to the leader. */
    const struct tsr_sample_params *sample;
    int top;
};

/* One rank of a sharded group (DESIGN §2): the rank's slice of the plan and its communicators.
 * world holds every rank of the group, rank 0 the leader; tp holds the ranks of this rank's
 * pipeline stage (rank order = tp_rank). tp carries the backend's buffers (all-reduce,
 * all-gather), world the step, the logits and, with pp > 1, the activations from stage to
 * stage: on GPUs tp is NCCL, and so is world when pp > 1 (worker/group.h). The runner keeps
 * pointers: they must outlive it. */
struct tsr_runner_shard {
    const struct tsr_shard_plan *plan;
    tsr_comm_t *world, *tp;
    /* Mixture of experts with plan->ep > plan->tp: the ranks of this rank's stage (rank order =
     * ep_rank), over which the routed experts are spread (kernels/moe_ep.h), and tp is then this
     * rank's attention group (tp_rank order). NULL when ep = tp: tp is the stage. */
    tsr_comm_t *ep;
};

/* Uploads the weights to the backend, checking every tensor's shape against the config, and
 * allocates the caches. Mixture-of-experts models need a backend with tsr_backend_can_moe();
 * sharded, they run on the CPU backend over MPI (TSR_EUNSUPPORTED otherwise): each rank loads only
 * its stage's layers and its ep share of every layer's routed experts (plan->ranks[].expert_begin,
 * expert_end), tokens reach them by all-to-all (kernels/moe_ep.h); attention, the shared expert,
 * embedding and head are tp-sliced within the attention group. With ep > tp the stage's ep / tp
 * attention groups all run the leader's one batch (attention replicated, not data-parallel: the
 * groups do not serve sequences of their own yet). Multi-head latent attention needs a backend
 * with tsr_backend_can_mla() and an f32 or bf16 cache, and runs on one rank (shard NULL or a 1x1
 * plan): TSR_EUNSUPPORTED otherwise. With shard (NULL: the
 * whole model) it reads only this rank's slices: row ranges are used in place in the mapping,
 * column ranges are packed into memory of its own, a synthetic model's slices are generated
 * (tsr_model_read), one tensor at a time; on a device backend the host copies are freed once
 * uploaded. m and b must outlive the runner. Free with tsr_runner_free(). */
int tsr_runner_new(tsr_model_t *m, tsr_backend_t *b, const struct tsr_runner_opts *o,
                   const struct tsr_runner_shard *shard, tsr_runner_t **out);
/* The KV cache's blocks: opts.n_blocks, or what the device's memory gave. */
int tsr_runner_n_blocks(const tsr_runner_t *r);
/* On the leader of a sharded group this also tells the followers to stop. */
void tsr_runner_free(tsr_runner_t *r);

/* Runs the step; logits is (n_out, n_vocab) f32 on the host. Checks the step's indices first:
 * TSR_EINVAL for a bad token id, position or block id. In a sharded group only the leader calls
 * this: it sends the step to every rank (one message per step) and gets the logits back. */
int tsr_runner_forward(tsr_runner_t *r, const struct tsr_step *st, float *logits);
/* The same step, greedy: ids[i] = the argmax of logit row i (ties to the lowest id), for the n_out
 * rows. On a single rank the argmax runs where the logits are (tsr_op_argmax: on a GPU only the
 * ids come back); in a sharded group the logits come to the host first. */
int tsr_runner_forward_argmax(tsr_runner_t *r, const struct tsr_step *st, int32_t *ids);
/* The same step, sampled where the logits are: ids[i] and logprobs[i] (may be NULL) of the n_out
 * rows, row i with p[i] (no penalty, no bias: those need the logits, tsr_runner_forward). One
 * rank samples on its backend (tsr_op_sample); a sharded group on its last stage (on the host,
 * worker/sampling.h tsr_sample_row), which sends the leader the ids, their logprobs and the top
 * tokens alone, never the logits. Only when tsr_runner_samples_on_device(): a group, or one rank
 * on a backend with a sampler; otherwise TSR_EUNSUPPORTED, nothing run (use tsr_runner_forward
 * and sample on the host). */
int tsr_runner_samples_on_device(const tsr_runner_t *r);
/* With top > 0 (only when tsr_runner_top_logprobs_on_device()), also the top most likely tokens
 * of each row (tsr_op_top_logprobs; tsr_top_logprobs on a last stage): top_ids[i*top + j],
 * top_lps[i*top + j]. */
int tsr_runner_forward_sample(tsr_runner_t *r, const struct tsr_step *st,
                              const struct tsr_sample_params *p, int32_t *ids, float *logprobs,
                              int top, int32_t *top_ids, float *top_lps);
int tsr_runner_top_logprobs_on_device(const tsr_runner_t *r);
/* Pipelining, on a group's leader: up to tsr_runner_depth() steps in flight (pp: one a stage; 1
 * on one rank or one stage), so that every stage works on a different one at once. Launch runs
 * the leader's stage of st and sends it on down (st->sample set: sampled on the last stage);
 * collect waits for the oldest step in flight and gives what came back: its n_out rows of
 * logits, or its picks (ids, logprobs, top ids and logprobs as tsr_runner_forward_sample gives
 * them). Launch is refused while depth steps are in flight, or while the newest has not gone down
 * (collect first). A sequence must be in one step in flight at most. tsr_runner_forward and
 * tsr_runner_forward_sample are a launch and a collect. */
int tsr_runner_depth(const tsr_runner_t *r);
int tsr_runner_launch(tsr_runner_t *r, const struct tsr_step *st);
int tsr_runner_collect(tsr_runner_t *r, float *logits, int32_t *ids, float *logprobs,
                       int32_t *top_ids, float *top_lps);

/* Bytes the leader of a group received from its last stage since the runner was made: the logits
 * of tsr_runner_forward's steps, the picks of tsr_runner_forward_sample's. 0 on one rank. */
uint64_t tsr_runner_bytes_back(const tsr_runner_t *r);
/* The leader of a sharded group with nothing to run: tells the followers it is alive
 * (tsr_step_send_idle). Does nothing on one rank. */
int tsr_runner_idle(tsr_runner_t *r);
/* A follower's loop: runs every step the leader sends until the leader frees its runner.
 * Returns 0 then, or the first error. */
int tsr_runner_follow(tsr_runner_t *r);

/* Mixture-of-experts models: from the next step on, the experts each token chose in each expert
 * layer of this rank go to ids (host; NULL: no more): layer i (of the expert layers, in order),
 * row t's n_expert_used choices at ids[(i * opts.max_tokens + t) * n_expert_used ...], in
 * tsr_moe_route's order. Returns the number of expert layers (tests). */
int tsr_runner_trace_routes(tsr_runner_t *r, int32_t *ids);
int tsr_runner_n_vocab(const tsr_runner_t *r);
/* Bytes of weights and of KV cache the runner holds on its backend. */
size_t tsr_runner_weight_bytes(const tsr_runner_t *r);
/* Of those, the routed experts' (this rank's share of them with expert parallelism). */
size_t tsr_runner_expert_bytes(const tsr_runner_t *r);
size_t tsr_runner_kv_bytes(const tsr_runner_t *r);
/* What one decode step reads on this rank, for rooflines: the weights other than the embedding
 * table (a row per token of it) unless that table is also the LM head, and of the routed experts
 * only n_expert_used / n_expert (one token's); and the K and V bytes of
 * one cached position of one sequence (this rank's layers and KV heads, in opts.kv_type). */
size_t tsr_runner_step_weight_bytes(const tsr_runner_t *r);
size_t tsr_runner_kv_bytes_per_pos(const tsr_runner_t *r);
/* Bytes of the step's activation and logit buffers. */
size_t tsr_runner_scratch_bytes(const tsr_runner_t *r);

#endif
