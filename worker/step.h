/* The group's SPMD step protocol (DESIGN §2), both sides of it in one place: the leader sends each
 * step to every rank as one message (a header, then the step's arrays), the followers receive it,
 * run it and send the logits home, until the leader sends a stop. A group's ranks must build their
 * runners from the same options, or they disagree about the step and hang: both sides take them
 * from tsr_engine_runner_opts(). */
#ifndef TSR_WORKER_STEP_H
#define TSR_WORKER_STEP_H

#include <stddef.h>

#include "kernels/comm.h"
#include "worker/forward.h"
#include "worker/group.h"

/* A reusable message buffer. */
struct tsr_step_msg {
    void *buf;
    size_t cap;
};
void tsr_step_msg_free(struct tsr_step_msg *m);

/* Leader: broadcasts st to every rank of world (rank 0 is the leader). */
int tsr_step_send(tsr_comm_t *world, const struct tsr_step *st, struct tsr_step_msg *m);
/* Leader: tells the followers to stop. */
int tsr_step_send_stop(tsr_comm_t *world);
/* Leader, while it has nothing to run: tells the followers it is alive. A follower waits for the
 * next message only as long as its communicator's timeout (NCCL's; MPI waits forever), so an idle
 * group's leader sends this every TSR_STEP_IDLE_S seconds, and a follower's timeout then bounds how
 * long it outlives a leader that died. */
enum { TSR_STEP_IDLE_S = 5 };
int tsr_step_send_idle(tsr_comm_t *world);
/* Follower: the next step, its arrays pointing into m and its sampling parameters (if any) into
 * params (valid until the next receive); idle messages are consumed here. *stop is 1 when the
 * leader stopped (st is then untouched). */
int tsr_step_recv(tsr_comm_t *world, struct tsr_step_msg *m, struct tsr_step_msg *params,
                  struct tsr_step *st, int *stop);

/* A follower rank of group g: builds the runner its leader's engine builds (ro: from
 * tsr_engine_runner_opts of the same engine options) and serves the leader's steps until it
 * stops. 0, or the first error. */
int tsr_step_follow(tsr_model_t *m, tsr_backend_t *b, const struct tsr_runner_opts *ro,
                    struct tsr_group *g);

#endif
