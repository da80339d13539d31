/* A worker group (DESIGN §1-2): one replica of the model sharded tp x pp (and for a mixture of
 * experts its experts over ep >= tp ranks a stage: world = max(tp, ep) x pp) over the ranks mpirun
 * or srun started, or over ranks started one by one that meet through etcd. Every rank builds the
 * same shard plan; rank 0 is the leader, which runs the engine; the others follow its steps
 * (tsr_runner_follow). */
#ifndef TSR_WORKER_GROUP_H
#define TSR_WORKER_GROUP_H

#include "common/etcd.h"
#include "kernels/comm.h"
#include "model/model.h"
#include "model/shard_plan.h"
#include "worker/forward.h"

struct tsr_group {
    tsr_comm_t *world, *tp;
    tsr_comm_t *ep; /* a stage's ranks when ep > tp (the experts' all-to-all), else NULL */
    tsr_comm_t *nccl_tp, *nccl_world; /* tsr_group_use_nccl()'s; NULL otherwise */
    struct tsr_shard_plan plan;
    struct tsr_runner_shard shard; /* points into this struct: keep it in place */
    int rank;
};

/* Joins the MPI world as one rank of a tp x pp group over model m, its experts over ep ranks a
 * stage (0: tp; a multiple of tp, tsr_shard_plan_make_ep): the world must have exactly
 * max(tp, ep) * pp ranks; the plan is checked against the model's tensor types. Errors say
 * which. */
int tsr_group_join_mpi(tsr_model_t *m, int tp, int ep, int pp, struct tsr_group *g);
/* How a rank of a group started without an MPI launcher (a LeaderWorkerSet's pods) meets its
 * group through etcd (worker/rendezvous.h): the group's name, the same on every rank, and this
 * rank's number; lease: this rank's etcd lease, which must outlive the group (it holds the rank's
 * key, and on rank 0 the NCCL id). */
struct tsr_group_rdv {
    tsr_etcd_t *etcd;
    const char *prefix, *name;
    int rank;
    int64_t lease;
    int timeout_ms;
};
/* Joins such a group as rank r->rank of tp x pp over model m, on a CUDA backend b (made with
 * tsr_group_backend(NULL, ...)): the ranks agree on a generation (tsr_rdv_join), the world is one
 * NCCL communicator through etcd (tsr_rdv_nccl), and tp its split. Everything, the step messages
 * included, then goes through NCCL. TSR_EUNSUPPORTED without CUDA or on another backend. */
int tsr_group_join_etcd(tsr_model_t *m, int tp, int ep, int pp, const struct tsr_group_rdv *r,
                        tsr_backend_t *b, struct tsr_group *g);
/* Puts the group's device data on NCCL, for a CUDA backend on `device` whose stream is
 * `cuda_stream` (tsr_cuda_backend_stream()): the shard's tp becomes an NCCL communicator (the TP
 * all-reduces and all-gathers), and with pp > 1 so does its world (the activations between
 * stages; the step and the logits then go through NCCL's host staging). With pp = 1 the world
 * stays MPI. Collective over the world; call after tsr_group_join_mpi(). */
int tsr_group_use_nccl(struct tsr_group *g, int device, void *cuda_stream);
/* This rank's backend from a device spec: "cpu" (threads <= 0: one per core), "cuda" or "cuda:N"
 * (a group's ranks take GPUs N + their local rank). With g (joined, more than one rank) and a
 * CUDA device, also puts the group on NCCL (tsr_group_use_nccl). TSR_EINVAL for a bad spec,
 * TSR_EUNSUPPORTED for cuda in a build without it. Caller frees with tsr_backend_free(). */
int tsr_group_backend(struct tsr_group *g, const char *device, int threads, tsr_backend_t **out);
/* The same checks of the layout without MPI: TSR_EINVAL naming what does not divide. */
int tsr_group_check(tsr_model_t *m, int tp, int ep, int pp);
void tsr_group_leave(struct tsr_group *g);

/* 1 when this process was started by mpirun or srun (an MPI launcher's rank variables are set). */
int tsr_group_under_mpi(void);
/* This process's rank among the launcher's ranks on this node (0 when not launched so): which
 * GPU of the node a rank takes. */
int tsr_group_local_rank(void);
/* This process's rank among all of the launcher's ranks, read before MPI starts (0 when not
 * launched so). */
int tsr_group_world_rank(void);

#endif
