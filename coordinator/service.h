/* The coordinator's gRPC front end (DESIGN §1): tessera.v1.Inference (Generate, Tokenize,
 * ListModels, ClusterStatus) and grpc.health.v1.Health, on one gRPC server. A thin adapter over
 * coordinator/session.h, which does the work: Generate is one session whose chunks become
 * GenerateResponse messages and whose status is the call's; a client that cancels or disconnects
 * (or whose deadline passes) cancels the session. */
#ifndef TSR_COORDINATOR_SERVICE_H
#define TSR_COORDINATOR_SERVICE_H

#include "common/auth.h"
#include "coordinator/session.h"

struct tsr_coord_opts {
    const char *listen; /* "127.0.0.1:50051" */
    int max_calls;      /* calls at once (the sessions' max_queue plus room to refuse the rest) */
    /* The API key every tessera.v1.Inference call must send as "authorization: Bearer KEY"
     * (else UNAUTHENTICATED); grpc.health.v1 stays open for probes. NULL: no key. Copied. */
    const char *api_key;
    const struct tsr_tls_files *tls; /* NULL or no cert: plain text (common/auth.h) */
};

typedef struct tsr_coord tsr_coord_t;

/* ss must outlive the service. The port bound is written to *port. */
int tsr_coord_start(tsr_sessions_t *ss, const struct tsr_coord_opts *o, tsr_coord_t **out,
                    int *port);
/* Stops listening, cancels the calls in flight and waits for their handlers. */
void tsr_coord_stop(tsr_coord_t *c);

#endif
