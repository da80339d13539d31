#include "coordinator/router.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/status.h"

struct tsr_route {
    struct tsr_route *next;
    char group[64], addr[128];
    int64_t generation, outstanding;
    tsr_rpc_channel_t *ch;
    int refs;     /* the table's (while alive) and each request's */
    int alive;    /* in routing */
    int draining; /* its leader finishes what it runs and takes nothing new: not picked */
};

struct tsr_router {
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
    if (!n->ch) {
        free(n);
        return TSR_EINVAL;
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

tsr_route_t *tsr_router_pick(tsr_router_t *r, int64_t load, const tsr_route_t *avoid)
{
    pthread_mutex_lock(&r->mu);
    struct tsr_route *best = NULL;
    /* O(groups) scan: a coordinator routes to tens of groups, not thousands. */
    for (struct tsr_route *g = r->routes; g; g = g->next)
        if (g != avoid && !g->draining && (!best || g->outstanding < best->outstanding)) best = g;
    if (best) {
        best->refs++;
        best->outstanding += load;
    }
    pthread_mutex_unlock(&r->mu);
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
