#include "worker/group.h"

#include <stdlib.h>
#include <string.h>

#include "common/status.h"

int tsr_group_under_mpi(void)
{
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}

static int type_of(void *ctx, const char *name)
{
    struct tsr_tensor_view v;
    return tsr_model_tensor(ctx, name, &v) ? -1 : (int)v.type;
}

/* Bytes per weight only size the plan's memory report; the loader reads the real types. */
static int make_plan(tsr_model_t *m, int tp, int pp, struct tsr_shard_plan *plan)
{
    int rc = tsr_shard_plan_make(tsr_model_config(m), tp, pp, 2.0, 4.0, plan);
    return rc ? rc : tsr_shard_plan_check_types(plan, type_of, m);
}

int tsr_group_check(tsr_model_t *m, int tp, int pp)
{
    struct tsr_shard_plan plan;
    int rc = make_plan(m, tp, pp, &plan);
    tsr_shard_plan_free(&plan);
    return rc;
}

int tsr_group_join_mpi(tsr_model_t *m, int tp, int pp, struct tsr_group *g)
{
    memset(g, 0, sizeof *g);
    int rc = tsr_comm_mpi_world(&g->world);
    if (rc) return rc;
    g->rank = tsr_comm_rank(g->world);
    if (tsr_comm_size(g->world) != tp * pp) {
        rc = tsr_errorf(TSR_EINVAL, "tp %d x pp %d needs %d ranks; mpirun started %d", tp, pp,
                        tp * pp, tsr_comm_size(g->world));
        goto fail;
    }
    if ((rc = make_plan(m, tp, pp, &g->plan))) goto fail;
    const struct tsr_rank_plan *rp = &g->plan.ranks[g->rank];
    if ((rc = tsr_comm_split(g->world, rp->pp_stage, rp->tp_rank, &g->tp))) goto fail;
    g->shard = (struct tsr_runner_shard){&g->plan, g->world, g->tp};
    return 0;
fail:
    tsr_group_leave(g);
    return rc;
}

void tsr_group_leave(struct tsr_group *g)
{
    tsr_comm_free(g->tp);
    tsr_shard_plan_free(&g->plan);
    tsr_comm_free(g->world);
    memset(g, 0, sizeof *g);
}
