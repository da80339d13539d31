/* The coordinator's Prometheus metrics (docs/operations.md, Metrics): requests as its clients see
 * them (time to first token, inter-token latency, end-to-end latency, how they ended, their
 * tokens) under vLLM's names where vLLM has one, so its dashboards read a tessera coordinator;
 * the rest under tessera:. The engine's own (running, waiting, KV cache, queue time, tokens
 * computed) are each group leader's (tsr_leader_metrics_render).
 *
 * One set per process, made on first use: a coordinator serves one model, and the session pipeline
 * (tsr_session_run, coordinator/session.c) observes into it without a handle of its own. Every
 * sample carries model_name, the sessions' model id, added when rendered. Thread-safe. */
#ifndef TSR_COORDINATOR_METRICS_H
#define TSR_COORDINATOR_METRICS_H

#include "common/metrics.h"
#include "coordinator/session.h"

/* A chunk of n tokens is about to reach the client, gap_s seconds after the previous chunk with
 * tokens, or, first set, after the request arrived (its time to first token). Counts one
 * time-to-first-token for the first chunk, and n inter-token latencies of gap_s / n (n - 1 of 0 for
 * a first chunk of several). */
void tsr_coordinator_metrics_tokens(tsr_sessions_t *s, int first, double gap_s, int n);

/* A request moved to another replica after its own failed: resumed (a migration) when it had
 * streamed tokens, else a retry. */
void tsr_coordinator_metrics_moved(tsr_sessions_t *s, int resumed);

/* How one request ended, as tsr_session_run returns it. */
struct tsr_request_end {
    int code;                             /* enum tsr_rpc_code */
    Tessera__V1__FinishReason finish;     /* the last chunk's, when code is TSR_RPC_OK */
    double e2e_s;                         /* arrival to end */
    int prompt_tokens, completion_tokens; /* usage, when code is TSR_RPC_OK */
};
/* Counts it by status code; one that ended OK also by finish reason, with its latency and token
 * counts; one the client gave up on (CANCELLED) as finish reason "abort". */
void tsr_coordinator_metrics_end(tsr_sessions_t *s, const struct tsr_request_end *e);

/* Appends the coordinator's metrics in the text format 0.0.4 (TSR_METRICS_CONTENT_TYPE), with
 * the gauges read now: ready groups (the router) and requests in flight. 0 or TSR_ENOMEM. */
int tsr_coordinator_metrics_render(tsr_sessions_t *s, struct tsr_metrics_text *out);

#endif
