#include "worker/group.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "worker/rendezvous.h"
#if TSR_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

int tsr_group_under_mpi(void)
{
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}

/* The first of vars set, as a number; 0 when none is. */
static int env_rank(const char *const *vars, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return atoi(v);
    }
    return 0;
}

int tsr_group_local_rank(void)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
                                       "SLURM_LOCALID", "PMIX_LOCAL_RANK"};
    return env_rank(vars, sizeof vars / sizeof *vars);
}

int tsr_group_world_rank(void)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK",
                                       "SLURM_PROCID"};
    return env_rank(vars, sizeof vars / sizeof *vars);
}

static int type_of(void *ctx, const char *name)
{
    struct tsr_tensor_view v;
    return tsr_model_tensor(ctx, name, &v) ? -1 : (int)v.type;
}

/* Bytes per weight only size the plan's memory report; the loader reads the real types. */
static int make_plan(tsr_model_t *m, int tp, int ep, int pp, struct tsr_shard_plan *plan)
{
    int rc = tsr_shard_plan_make_ep(tsr_model_config(m), tp, ep, pp, 2.0, 4.0, plan);
    return rc ? rc : tsr_shard_plan_check_types(plan, type_of, m);
}

int tsr_group_check(tsr_model_t *m, int tp, int ep, int pp)
{
    struct tsr_shard_plan plan;
    int rc = make_plan(m, tp, ep, pp, &plan);
    tsr_shard_plan_free(&plan);
    return rc;
}

/* Joins world (taken over: tsr_group_leave frees it, also after a failure here) as one rank of
 * the tp x ep x pp plan; started_by names who started the ranks, for the error. */
static int join_world(tsr_model_t *m, int tp, int ep, int pp, tsr_comm_t *world,
                      const char *started_by, struct tsr_group *g)
{
    g->world = world;
    g->rank = tsr_comm_rank(world);
    int rc;
    if ((rc = make_plan(m, tp, ep, pp, &g->plan))) goto fail;
    const struct tsr_shard_plan *p = &g->plan;
    if (tsr_comm_size(world) != p->world) {
        char eps[32] = "";
        if (p->ep > p->tp) snprintf(eps, sizeof eps, " x ep %d / tp", p->ep);
        rc = tsr_errorf(TSR_EINVAL, "tp %d%s x pp %d needs %d ranks; %s started %d", tp, eps, pp,
                        p->world, started_by, tsr_comm_size(world));
        goto fail;
    }
    /* the attention group (a stage's ep / tp groups apart), and with ep > tp the stage */
    const struct tsr_rank_plan *rp = &p->ranks[g->rank];
    if ((rc = tsr_comm_split(world, rp->pp_stage * p->dp + rp->dp_rank, rp->tp_rank, &g->tp)))
        goto fail;
    if (p->ep > p->tp && (rc = tsr_comm_split(world, rp->pp_stage, rp->ep_rank, &g->ep))) goto fail;
    g->shard = (struct tsr_runner_shard){&g->plan, g->world, g->tp, g->ep};
    return 0;
fail:
    tsr_group_leave(g);
    return rc;
}

int tsr_group_join_mpi(tsr_model_t *m, int tp, int ep, int pp, struct tsr_group *g)
{
    memset(g, 0, sizeof *g);
    tsr_comm_t *world;
    int rc = tsr_comm_mpi_world(&world);
    return rc ? rc : join_world(m, tp, ep, pp, world, "mpirun", g);
}

int tsr_group_join_etcd(tsr_model_t *m, int tp, int ep, int pp, const struct tsr_group_rdv *r,
                        tsr_backend_t *b, struct tsr_group *g)
{
    memset(g, 0, sizeof *g);
#if TSR_HAVE_CUDA
    if (strncmp(tsr_backend_name(b), "cuda", 4))
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "a group started without MPI meets through NCCL: it needs a CUDA device, "
                          "not %s",
                          tsr_backend_name(b));
    int64_t gen = 0;
    tsr_comm_t *world = NULL;
    int ranks = (ep > tp ? ep : tp) * pp;
    int rc = tsr_group_check(m, tp, ep, pp);
    if (!rc)
        rc = tsr_rdv_join(r->etcd, r->prefix, r->name, r->rank, ranks, r->lease, r->timeout_ms,
                          &gen);
    if (!rc)
        rc = tsr_rdv_nccl(r->etcd, r->prefix, r->name, gen, r->lease, r->rank, ranks,
                          tsr_cuda_backend_device(b), tsr_cuda_backend_stream(b), r->timeout_ms,
                          &world);
    if (rc) return rc;
    tsr_log_info("group %s, generation %lld: rank %d of %d joined over NCCL", r->name,
                 (long long)gen, r->rank, ranks);
    return join_world(m, tp, ep, pp, world, "the group's etcd rendezvous", g);
#else
    (void)m, (void)tp, (void)ep, (void)pp, (void)r, (void)b;
    return tsr_errorf(TSR_EUNSUPPORTED,
                      "a group started without MPI meets through NCCL: this tessera was built "
                      "without CUDA");
#endif
}

int tsr_group_use_nccl(struct tsr_group *g, int device, void *cuda_stream)
{
    int rc = tsr_comm_nccl_from_mpi(g->tp, device, cuda_stream, &g->nccl_tp);
    if (!rc && g->plan.pp > 1)
        rc = tsr_comm_nccl_from_mpi(g->world, device, cuda_stream, &g->nccl_world);
    if (rc) return rc;
    g->shard.tp = g->nccl_tp;
    if (g->nccl_world) g->shard.world = g->nccl_world;
    return 0;
}

int tsr_group_backend(struct tsr_group *g, const char *device, int threads, tsr_backend_t **out)
{
    *out = NULL;
    if (!strcmp(device, "cpu")) {
        if (!(*out = tsr_backend_cpu_new(threads))) return TSR_ENOMEM;
        return 0;
    }
    long dev = 0;
    if (strncmp(device, "cuda", 4) || (device[4] && device[4] != ':'))
        return tsr_errorf(TSR_EINVAL, "unknown device '%s' (cpu, cuda, cuda:N)", device);
    if (device[4]) {
        char *end;
        dev = strtol(device + 5, &end, 10);
        if (end == device + 5 || *end || dev < 0 || dev > 1024)
            return tsr_errorf(TSR_EINVAL, "bad device '%s' (cuda:N, N a GPU number)", device);
    }
#if TSR_HAVE_CUDA
    int joined = g && g->world && tsr_comm_size(g->world) > 1;
    if (joined) dev += tsr_group_local_rank();
    if (!(*out = tsr_backend_cuda_new((int)dev))) return TSR_EIO;
    int rc = joined ? tsr_group_use_nccl(g, (int)dev, tsr_cuda_backend_stream(*out)) : 0;
    if (rc) {
        tsr_backend_free(*out);
        *out = NULL;
    }
    return rc;
#else
    (void)g;
    return tsr_errorf(TSR_EUNSUPPORTED, "device '%s': this tessera was built without CUDA", device);
#endif
}

void tsr_group_leave(struct tsr_group *g)
{
    /* NCCL first: freeing the last MPI communicator finalizes MPI. */
    tsr_comm_free(g->nccl_world);
    tsr_comm_free(g->nccl_tp);
    tsr_comm_free(g->ep);
    tsr_comm_free(g->tp);
    tsr_shard_plan_free(&g->plan);
    tsr_comm_free(g->world);
    memset(g, 0, sizeof *g);
}
