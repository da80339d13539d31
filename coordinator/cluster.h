/* The coordinator's side of etcd (DESIGN §1): it feeds the router from the groups that are ready,
 * and, on the one coordinator elected for it, runs the controller that turns registered workers
 * into groups.
 *
 * Keys, under prefix P (values are JSON; every key but the election's lives on a worker's lease,
 * so it disappears when that worker does):
 *   P/workers/<id>  a worker unit registered: {"addr", "ranks", "tp", "pp", "model", "pid"}
 *   P/groups/<gid>  the controller's plan for a group: {"members": [id], "tp", "pp", "generation"}
 *   P/assign/<id>   a worker's assignment: {"group", "generation"}
 *   P/ready/<gid>   the group's leader serves: {"addr", "generation", "worker"}
 *   P/controller    the elected controller's id (on the coordinator's lease)
 * A generation is the etcd revision of the worker's registration (its last put: a restarted
 * worker overwrites its key, possibly before its old lease has expired), so a worker that restarts
 * forms a new generation of its group and stale keys can never be mistaken for it.
 *
 * The plan: a worker unit is the ranks one launcher started together (mpirun for CPU groups: a
 * world of tp x pp ranks, rank 0 registering for it), and one unit of the model's tp x pp forms one
 * group; a unit of another shape is refused (logged) and left unassigned. */
#ifndef TSR_COORDINATOR_CLUSTER_H
#define TSR_COORDINATOR_CLUSTER_H

#include "common/etcd.h"
#include "coordinator/router.h"

struct tsr_cluster_opts {
    const char *prefix; /* "/tessera" */
    const char *id;     /* this coordinator's name, for the election */
    int tp, pp;         /* the layout groups must have */
    int ttl_s;          /* the controller lease's TTL */
};

typedef struct tsr_cluster tsr_cluster_t;

/* Lists the ready groups into r, then watches for changes; starts the controller's election.
 * e and r must outlive the cluster. */
int tsr_cluster_start(tsr_etcd_t *e, tsr_router_t *r, const struct tsr_cluster_opts *o,
                      tsr_cluster_t **out);
void tsr_cluster_stop(tsr_cluster_t *c);

#endif
