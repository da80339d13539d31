/* The group's step protocol (DESIGN §2), both sides of it in one place: the leader sends each step
 * (a header, then the step's arrays) down the chain of stages, each rank runs its part, the last
 * stage sends the logits or the picks home, until the leader sends a stop. A group's ranks must
 * build their runners from the same options, or they disagree about the step and hang: both sides
 * take them from tsr_engine_runner_opts(). */
#ifndef TSR_WORKER_STEP_H
#define TSR_WORKER_STEP_H

#include <stddef.h>

#include "kernels/comm.h"
#include "worker/forward.h"
#include "worker/group.h"

/* A reusable message buffer: a packed message of len bytes. */
struct tsr_step_msg {
    void *buf;
    size_t cap, len;
};
void tsr_step_msg_free(struct tsr_step_msg *m);
/* m->buf of at least n bytes (its contents kept). 0 or TSR_ENOMEM. */
int tsr_step_msg_reserve(struct tsr_step_msg *m, size_t n);

/* The messages travel down a chain: the leader sends each one to the other ranks of its stage and
 * to its successor in the next stage (rank + tp), and every rank of a stage but the last passes
 * it on to its successor, a step with the activations it made, once it has run its part. So each
 * stage may work on a different step at once (the leader keeps up to pp in flight). The last
 * stage's first rank answers the leader (worker/forward.c). */
enum tsr_step_kind { TSR_STEP_STOP, TSR_STEP_RUN, TSR_STEP_IDLE };
/* Packs st into m. */
int tsr_step_pack(const struct tsr_step *st, struct tsr_step_msg *m);
/* Packs a stop (the followers end) or an idle message. A follower waits for the next message only
 * as long as its communicator's timeout (NCCL's; MPI waits forever), so an idle group's leader
 * sends one every TSR_STEP_IDLE_S seconds, and a follower's timeout then bounds how long it
 * outlives a leader that died. */
enum { TSR_STEP_IDLE_S = 5 };
int tsr_step_pack_control(enum tsr_step_kind kind, struct tsr_step_msg *m);
/* Sends the packed m to peer. */
int tsr_step_send(tsr_comm_t *world, const struct tsr_step_msg *m, int peer);
/* Receives the next message from peer into m (packed as it came, to pass on): *kind, and for a
 * step st, its arrays pointing into m and its sampling parameters (if any) into params (valid
 * until the next receive). */
int tsr_step_recv(tsr_comm_t *world, int peer, struct tsr_step_msg *m, struct tsr_step_msg *params,
                  struct tsr_step *st, enum tsr_step_kind *kind);

/* A follower rank of group g: builds the runner its leader's engine builds (ro: from
 * tsr_engine_runner_opts of the same engine options) and serves the leader's steps until it
 * stops. 0, or the first error. */
int tsr_step_follow(tsr_model_t *m, tsr_backend_t *b, const struct tsr_runner_opts *ro,
                    struct tsr_group *g);

#endif
