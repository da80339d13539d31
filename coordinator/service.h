/* The coordinator's public services (DESIGN §1, §4): tessera.v1.Inference (Generate, Tokenize,
 * ListModels, ClusterStatus) and grpc.health.v1.Health, on one gRPC server.
 *
 * Generate validates (INVALID_ARGUMENT naming the field), tokenizes, admits the request against a
 * bound on requests in flight (RESOURCE_EXHAUSTED beyond it), routes it to the least-loaded ready
 * group and relays the leader's token stream as text deltas (incremental detokenization; stop
 * strings end the text before their first match). A client that cancels or disconnects cancels
 * the leader's call. A group that fails before any token was sent is retried on another group;
 * after that the stream ends UNAVAILABLE. */
#ifndef TSR_COORDINATOR_SERVICE_H
#define TSR_COORDINATOR_SERVICE_H

#include "coordinator/router.h"
#include "model/model.h"

struct tsr_coord_opts {
    const char *listen; /* "127.0.0.1:50051" */
    int max_queue;      /* requests in flight and queued at once; more: RESOURCE_EXHAUSTED */
    int ready_wait_ms;  /* how long a request waits for a ready group before UNAVAILABLE */
};

typedef struct tsr_coord tsr_coord_t;

/* m gives the tokenizer, chat template and context (its weights are never read); m and r must
 * outlive the service. */
int tsr_coord_start(const tsr_model_t *m, tsr_router_t *r, const struct tsr_coord_opts *o,
                    tsr_coord_t **out, int *port);
/* Draining, for a clean stop: from the first call on, new Generate calls end UNAVAILABLE (the
 * client retries elsewhere) and Health says NOT_SERVING; requests in flight go on. Returns how
 * many are in flight: call until 0 (or a deadline), then tsr_coord_stop(). */
int64_t tsr_coord_drain(tsr_coord_t *c);
void tsr_coord_stop(tsr_coord_t *c);

#endif
