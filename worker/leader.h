/* A group leader's service (DESIGN §1–2): the engine on a thread of its own, and the internal
 * `tessera.v1.Worker` gRPC service in front of it.
 *
 * Each Worker.Generate call is one sequence. Its handler thread puts the request in the leader's
 * inbox; the engine thread admits requests at step boundaries (continuous batching: a new request
 * joins the running batch at the next step), runs steps while any sequence is running, and hands
 * each step's tokens to their handlers, which stream them out (one write in flight per stream;
 * tokens a slow reader has not taken yet go out together in its next message). A call that is
 * cancelled, disconnected or past its deadline ends its sequence at the next step and its KV blocks
 * return to the pool. Requests beyond the engine's max_seqs wait in the leader, in arrival order.
 *
 * The engine is touched by the engine thread only; handlers and Stats talk to it through the
 * leader's lock. */
#ifndef TSR_WORKER_LEADER_H
#define TSR_WORKER_LEADER_H

#include "common/metrics.h"
#include "worker/engine.h"

typedef struct tsr_leader tsr_leader_t;

/* Starts the engine thread and the Worker service on listen ("127.0.0.1:0": any free port, written
 * to *port). The leader borrows e: it must outlive tsr_leader_stop(). */
int tsr_leader_start(tsr_engine_t *e, const char *listen, tsr_leader_t **out, int *port);
/* Stops the service (calls in flight end CANCELLED/UNAVAILABLE), ends every sequence and joins the
 * engine thread. */
void tsr_leader_stop(tsr_leader_t *l);
/* 0 while healthy; the first engine error once a step failed (the group is broken: every request
 * then ends UNAVAILABLE and the process should exit so its supervisor restarts it). */
int tsr_leader_failed(tsr_leader_t *l);
/* How long the step running now has run, in seconds (0 between steps): in a group, a step that
 * never ends means a rank is hung or cannot be reached (the leader waits in a collective). */
double tsr_leader_step_seconds(tsr_leader_t *l);
/* Generate calls in flight: waiting, running, or sending their last tokens (what a drain waits
 * for). */
int tsr_leader_calls(tsr_leader_t *l);
/* The engine's counters as of the last step, with the requests running (admitted and not done)
 * and waiting in the leader (what the Worker service's Stats returns). */
void tsr_leader_stats(tsr_leader_t *l, struct tsr_engine_stats *s, int *n_waiting);
/* Appends the leader's Prometheus metrics (docs/operations.md, Metrics: running and waiting
 * requests, KV-cache usage, preemptions, queue time, prompt and generated tokens), each sample
 * labelled model_name. 0 or TSR_ENOMEM. Any thread. */
int tsr_leader_metrics_render(tsr_leader_t *l, const char *model_name,
                              struct tsr_metrics_text *out);

#endif
