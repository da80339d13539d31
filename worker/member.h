/* A worker unit's membership in the cluster (DESIGN §1), through etcd: it registers under a lease
 * kept alive in the background, waits for the controller's assignment, and publishes its group as
 * ready (its leader's address and the generation). Key layout: coordinator/cluster.h. If the lease
 * is lost (etcd unreachable longer than the TTL), every key of this worker is gone: the process
 * should exit and be restarted, registering afresh. */
#ifndef TSR_WORKER_MEMBER_H
#define TSR_WORKER_MEMBER_H

#include "common/etcd.h"

struct tsr_member_opts {
    const char *prefix; /* "/tessera" */
    const char *id;     /* unique worker id ("w0", "host-gpu3") */
    const char *addr;   /* where this unit's leader serves tessera.v1.Worker */
    const char *model;
    int ranks, tp, pp;
    int ttl_s; /* lease TTL: how long a dead worker stays routed at most */
};

typedef struct tsr_member tsr_member_t;

/* Registers and starts watching for the assignment; returns at once. e must outlive it. */
int tsr_member_join(tsr_etcd_t *e, const struct tsr_member_opts *o, tsr_member_t **out);
/* 1 once this worker serves a group that coordinators can route to. */
int tsr_member_ready(tsr_member_t *m);
/* 1 once the lease is lost. */
int tsr_member_lost(tsr_member_t *m);
/* A clean stop begins: says in etcd that this unit's group drains (coordinators route nothing new
 * to it, and let its requests in flight finish) and publishes no new assignment. */
int tsr_member_drain(tsr_member_t *m);
/* Revokes the lease (the worker leaves routing at once) and frees m. */
void tsr_member_leave(tsr_member_t *m);

#endif
