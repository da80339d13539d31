#include "coordinator/router.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/hash.h"
#include "common/status.h"

/* Entries of a group's prefix index: direct-mapped, a newer block overwriting an older one in
 * its slot (an approximation of the group's LRU cache; 2^15 blocks of 16 = 512k positions). */
enum { INDEX_SLOTS = 1 << 15 };

struct tsr_route {
    struct tsr_route *next;
    char group[64], addr[128];
    int64_t generation, outstanding;
    tsr_rpc_channel_t *ch;
    int refs;        /* the table's (while alive) and each request's */
    int alive;       /* in routing */
    int draining;    /* its leader finishes what it runs and takes nothing new: not picked */
    uint64_t *index; /* (INDEX_SLOTS) chain hashes of prompt blocks routed here; 0: empty */
};

struct tsr_router {
    enum tsr_routing routing;
    pthread_mutex_t mu;
    pthread_cond_t changed;
    struct tsr_route *routes; /* alive ones; dead ones live on until their last release */
};

tsr_router_t *tsr_router_new(void)
{
    struct tsr_router *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->changed, NULL);
    return r;
}

static void unref(struct tsr_route *g)
{
    if (--g->refs == 0) {
        tsr_rpc_channel_free(g->ch);
        free(g->index);
        free(g);
    }
}

/* Under r->mu: takes g out of routing. */
static void kill_route(struct tsr_router *r, struct tsr_route *g)
{
    for (struct tsr_route **pp = &r->routes; *pp; pp = &(*pp)->next)
        if (*pp == g) {
            *pp = g->next;
            break;
        }
    g->alive = 0;
    unref(g);
}

void tsr_router_free(tsr_router_t *r)
{
    if (!r) return;
    while (r->routes) kill_route(r, r->routes);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->changed);
    free(r);
}

static struct tsr_route *find(struct tsr_router *r, const char *group)
{
    for (struct tsr_route *g = r->routes; g; g = g->next)
        if (!strcmp(g->group, group)) return g;
    return NULL;
}

int tsr_router_upsert(tsr_router_t *r, const char *group, const char *addr, int64_t generation)
{
    pthread_mutex_lock(&r->mu);
    struct tsr_route *g = find(r, group);
    if (g && g->generation == generation && !strcmp(g->addr, addr)) {
        pthread_mutex_unlock(&r->mu);
        return 0;
    }
    if (g) kill_route(r, g);
    pthread_mutex_unlock(&r->mu);
    struct tsr_route *n = calloc(1, sizeof *n);
    if (!n) return tsr_errorf(TSR_ENOMEM, "out of memory");
    snprintf(n->group, sizeof n->group, "%s", group);
    snprintf(n->addr, sizeof n->addr, "%s", addr);
    n->generation = generation;
    n->ch = tsr_rpc_channel_new(addr);
    n->index = calloc(INDEX_SLOTS, sizeof *n->index); /* a new generation starts cold */
    if (!n->ch || !n->index) {
        int rc = n->ch ? tsr_errorf(TSR_ENOMEM, "out of memory") : TSR_EINVAL;
        tsr_rpc_channel_free(n->ch);
        free(n->index);
        free(n);
        return rc;
    }
    n->refs = 1;
    n->alive = 1;
    pthread_mutex_lock(&r->mu);
    if ((g = find(r, group))) kill_route(r, g); /* raced with another upsert */
    n->next = r->routes;
    r->routes = n;
    pthread_cond_broadcast(&r->changed);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

void tsr_router_remove(tsr_router_t *r, const char *group)
{
    pthread_mutex_lock(&r->mu);
    struct tsr_route *g = find(r, group);
    if (g) kill_route(r, g);
    pthread_cond_broadcast(&r->changed);
    pthread_mutex_unlock(&r->mu);
}

void tsr_router_retain(tsr_router_t *r, const char *const *names, int n)
{
    pthread_mutex_lock(&r->mu);
    for (struct tsr_route *g = r->routes, *next; g; g = next) {
        next = g->next;
        int keep = 0;
        for (int i = 0; i < n && !keep; i++) keep = !strcmp(names[i], g->group);
        if (!keep) kill_route(r, g);
    }
    pthread_cond_broadcast(&r->changed);
    pthread_mutex_unlock(&r->mu);
}

void tsr_router_set_routing(tsr_router_t *r, enum tsr_routing routing)
{
    pthread_mutex_lock(&r->mu);
    r->routing = routing;
    pthread_mutex_unlock(&r->mu);
}

int tsr_routing_parse(const char *s, enum tsr_routing *out)
{
    if (!strcmp(s, "cache"))
        *out = TSR_ROUTING_CACHE;
    else if (!strcmp(s, "load"))
        *out = TSR_ROUTING_LOAD;
    else
        return tsr_errorf(TSR_EINVAL, "routing '%.32s': want cache or load", s);
    return 0;
}

static uint64_t *slot(const struct tsr_route *g, uint64_t h)
{
    return &g->index[(h ^ (h >> 29)) & (INDEX_SLOTS - 1)];
}

/* The prompt blocks g likely holds: the leading ones in its index. */
static int64_t cached_tokens(const struct tsr_route *g, const struct tsr_route_prompt *p)
{
    int i = 0;
    while (p && i < p->n_blocks && p->blocks[i] && *slot(g, p->blocks[i]) == p->blocks[i]) i++;
    return (int64_t)i * TSR_KV_BLOCK;
}

/* Requests holding g (the table holds one reference while g is in routing). */
static int requests(const struct tsr_route *g)
{
    return g->refs - 1;
}

tsr_route_t *tsr_router_pick(tsr_router_t *r, int64_t load, const struct tsr_route_prompt *p,
                             const tsr_route_t *avoid, int64_t *booked)
{
    pthread_mutex_lock(&r->mu);
    struct tsr_route *least = NULL, *holder = NULL;
    int64_t holder_hit = 0;
    if (r->routing == TSR_ROUTING_LOAD) p = NULL;
    /* O(groups x leading blocks) under the lock: a coordinator routes to tens of groups, not
     * thousands, and the scan stops at a group's first miss. */
    for (struct tsr_route *g = r->routes; g; g = g->next) {
        if (g == avoid || g->draining) continue;
        if (!least || g->outstanding < least->outstanding) least = g;
        int64_t hit = cached_tokens(g, p);
        if (hit > holder_hit ||
            (hit && hit == holder_hit && g->outstanding < holder->outstanding)) {
            holder = g;
            holder_hit = hit;
        }
    }
    /* The group holding the longest part of the prompt, unless it runs more than SPILL requests
     * more than the least loaded one: then a hot prefix spreads to it (which then holds it too). */
    enum { SPILL = 4 };
    struct tsr_route *best = least;
    if (holder && holder != least && requests(holder) <= requests(least) + SPILL) best = holder;
    int64_t hit = best == holder ? holder_hit : best ? cached_tokens(best, p) : 0;
    if (best) {
        best->refs++;
        best->outstanding += load - hit;
        for (int i = 0; p && i < p->n_blocks; i++)
            if (p->blocks[i]) *slot(best, p->blocks[i]) = p->blocks[i];
    }
    pthread_mutex_unlock(&r->mu);
    if (booked) *booked = load - hit;
    return best;
}

/* Under r->mu: the groups a request can be routed to. */
static int n_ready(const struct tsr_router *r)
{
    int n = 0;
    for (const struct tsr_route *g = r->routes; g; g = g->next) n += !g->draining;
    return n;
}

int tsr_router_n_ready(tsr_router_t *r)
{
    pthread_mutex_lock(&r->mu);
    int n = n_ready(r);
    pthread_mutex_unlock(&r->mu);
    return n;
}

void tsr_router_drain(tsr_router_t *r, const char *group, int64_t generation)
{
    pthread_mutex_lock(&r->mu);
    struct tsr_route *g = find(r, group);
    if (g && g->generation == generation) g->draining = 1;
    pthread_cond_broadcast(&r->changed);
    pthread_mutex_unlock(&r->mu);
}

int tsr_router_wait_ready(tsr_router_t *r, int wait_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += wait_ms / 1000;
    ts.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&r->mu);
    while (!n_ready(r))
        if (pthread_cond_timedwait(&r->changed, &r->mu, &ts)) break;
    int n = n_ready(r);
    pthread_mutex_unlock(&r->mu);
    return n;
}

void tsr_route_progress(tsr_router_t *r, tsr_route_t *g, int64_t delta)
{
    pthread_mutex_lock(&r->mu);
    g->outstanding -= delta;
    pthread_mutex_unlock(&r->mu);
}

void tsr_route_release(tsr_router_t *r, tsr_route_t *g, int64_t load_left)
{
    if (!g) return;
    pthread_mutex_lock(&r->mu);
    g->outstanding -= load_left;
    unref(g);
    pthread_mutex_unlock(&r->mu);
}

int tsr_route_alive(tsr_router_t *r, const tsr_route_t *g)
{
    pthread_mutex_lock(&r->mu);
    int a = g->alive;
    pthread_mutex_unlock(&r->mu);
    return a;
}

const char *tsr_route_name(const tsr_route_t *g)
{
    return g->group;
}
const char *tsr_route_addr(const tsr_route_t *g)
{
    return g->addr;
}
tsr_rpc_channel_t *tsr_route_channel(const tsr_route_t *g)
{
    return g->ch;
}

int tsr_router_list(tsr_router_t *r, struct tsr_route_info *out, int cap)
{
    pthread_mutex_lock(&r->mu);
    int n = 0;
    for (struct tsr_route *g = r->routes; g; g = g->next) {
        if (g->draining) continue;
        if (n < cap) {
            memcpy(out[n].group, g->group, sizeof out[n].group);
            memcpy(out[n].addr, g->addr, sizeof out[n].addr);
            out[n].generation = g->generation;
            out[n].outstanding = g->outstanding;
        }
        n++;
    }
    pthread_mutex_unlock(&r->mu);
    return n;
}
