/* A worker group under MPI (DESIGN §1-2): the ranks mpirun or srun started, one replica of the
 * model sharded tp x pp. Every rank builds the same shard plan; rank 0 is the leader, which runs
 * the engine; the others follow its steps (tsr_runner_follow). */
#ifndef TSR_WORKER_GROUP_H
#define TSR_WORKER_GROUP_H

#include "kernels/comm.h"
#include "model/model.h"
#include "model/shard_plan.h"
#include "worker/forward.h"

struct tsr_group {
    tsr_comm_t *world, *tp;
    struct tsr_shard_plan plan;
    struct tsr_runner_shard shard; /* points into this struct: keep it in place */
    int rank;
};

/* Joins the MPI world as one rank of a tp x pp group over model m: the world must have exactly
 * tp * pp ranks; the plan is checked against the model's tensor types. Errors say which. */
int tsr_group_join_mpi(tsr_model_t *m, int tp, int pp, struct tsr_group *g);
/* The same checks of the layout without MPI: TSR_EINVAL naming what does not divide. */
int tsr_group_check(tsr_model_t *m, int tp, int pp);
void tsr_group_leave(struct tsr_group *g);

/* 1 when this process was started by mpirun or srun (an MPI launcher's rank variables are set). */
int tsr_group_under_mpi(void);

#endif
