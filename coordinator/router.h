/* The coordinator's table of worker groups (DESIGN §1): which groups are ready, where their
 * leaders listen, and how much work each has (outstanding tokens: prompt tokens to compute plus
 * tokens still to come of every request routed there). Routing (TSR_ROUTING_CACHE, the
 * default) picks the group that likely holds the longest part of the request's prompt in its
 * prefix cache (the router keeps, per group, an approximate index of the prompt blocks it sent
 * there), unless that group runs more than 4 requests more than the least loaded one, or none
 * holds any: then the least loaded; TSR_ROUTING_LOAD always the least loaded. Groups come
 * and go as etcd says (tsr_router_upsert/remove); a request keeps a reference to its group, and
 * sees tsr_route_alive() turn 0 when the group leaves routing (a rank died, its lease expired).
 * Thread-safe. */
#ifndef TSR_COORDINATOR_ROUTER_H
#define TSR_COORDINATOR_ROUTER_H

#include <stdint.h>

#include "common/rpc.h"

typedef struct tsr_router tsr_router_t;
typedef struct tsr_route tsr_route_t;

enum tsr_routing { TSR_ROUTING_CACHE, TSR_ROUTING_LOAD };

tsr_router_t *tsr_router_new(void);
/* TSR_ROUTING_CACHE unless set. */
void tsr_router_set_routing(tsr_router_t *r, enum tsr_routing routing);
/* "cache" or "load": 0, or TSR_EINVAL. */
int tsr_routing_parse(const char *s, enum tsr_routing *out);
/* Every route must have been released. */
void tsr_router_free(tsr_router_t *r);

/* A group is ready at addr in this generation. A new generation of a known group replaces it
 * (requests on the old one see it dead). */
int tsr_router_upsert(tsr_router_t *r, const char *group, const char *addr, int64_t generation);
/* The group's leader drains (a clean stop): it is no longer picked nor counted ready, and its
 * requests go on (tsr_route_alive stays 1) until it leaves. No-op for another generation. */
void tsr_router_drain(tsr_router_t *r, const char *group, int64_t generation);
/* The group left: its requests see it dead. No-op for an unknown group. */
void tsr_router_remove(tsr_router_t *r, const char *group);
/* Removes every group not in names[0, n) (after re-listing etcd). */
void tsr_router_retain(tsr_router_t *r, const char *const *names, int n);

/* A request's prompt as the router sees it: the chain hashes (common/hash.h) of the whole
 * TSR_KV_BLOCK-token blocks a worker could take from its cache (those before the block of the
 * last token). */
struct tsr_route_prompt {
    const uint64_t *blocks;
    int n_blocks;
};
/* The ready group other than `avoid` (NULL: any) for a request of `load` tokens (prompt plus
 * max_tokens) and prompt `p` (NULL: nothing known of it), as the routing says; it is booked there:
 * *booked (the load less the tokens its cache is expected to hold) is added to the group's
 * outstanding tokens, and p's blocks to its index. NULL when none is ready. Release with
 * tsr_route_release(). */
tsr_route_t *tsr_router_pick(tsr_router_t *r, int64_t load, const struct tsr_route_prompt *p,
                             const tsr_route_t *avoid, int64_t *booked);
/* Waits up to wait_ms for a ready group; returns how many are ready. */
int tsr_router_wait_ready(tsr_router_t *r, int wait_ms);
int tsr_router_n_ready(tsr_router_t *r);

/* Takes delta off the route's load (tokens arrived). */
void tsr_route_progress(tsr_router_t *r, tsr_route_t *g, int64_t delta);
/* Drops the request's remaining load and its reference. */
void tsr_route_release(tsr_router_t *r, tsr_route_t *g, int64_t load_left);
int tsr_route_alive(tsr_router_t *r, const tsr_route_t *g);
const char *tsr_route_name(const tsr_route_t *g);
const char *tsr_route_addr(const tsr_route_t *g);
/* The channel to the group's leader (owned by the route). */
tsr_rpc_channel_t *tsr_route_channel(const tsr_route_t *g);

/* A snapshot of the ready groups (not draining ones), for status pages. */
struct tsr_route_info {
    char group[64], addr[128];
    int64_t generation, outstanding;
};
/* Up to cap entries; returns how many there are. */
int tsr_router_list(tsr_router_t *r, struct tsr_route_info *out, int cap);

#endif
