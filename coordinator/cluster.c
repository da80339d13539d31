#include "coordinator/cluster.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/status.h"

struct tsr_cluster {
    tsr_etcd_t *e;
    tsr_router_t *r;
    struct tsr_cluster_opts o;
    char prefix[256], id[128];
    tsr_etcd_watch_t *watch;
    int64_t listed_rev; /* events at or before it are in the router already */
    pthread_t controller;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
    int64_t lease;
    tsr_etcd_keepalive_t *ka;
    int lease_lost;
};

/* ---- the router's feed ---- */

static int ready_apply(struct tsr_cluster *c, const char *key, const char *val)
{
    size_t pl = strlen(c->prefix) + strlen("/ready/");
    const char *group = key + pl;
    json_error_t err;
    json_t *j = json_loads(val, 0, &err);
    const char *addr = j ? json_string_value(json_object_get(j, "addr")) : NULL;
    json_t *gen = j ? json_object_get(j, "generation") : NULL;
    int rc = 0;
    if (!addr || !json_is_integer(gen)) {
        tsr_log_warn("cluster: ignoring malformed %s: %s", key, val);
        rc = TSR_EFORMAT;
    } else {
        int draining = json_is_true(json_object_get(j, "draining"));
        rc = tsr_router_upsert(c->r, group, addr, json_integer_value(gen));
        if (!rc && draining) {
            tsr_router_drain(c->r, group, json_integer_value(gen));
            tsr_log_info("cluster: group %s at %s drains: no new requests", group, addr);
        } else if (!rc) {
            tsr_log_info("cluster: group %s ready at %s", group, addr);
        }
    }
    json_decref(j);
    return rc;
}

/* (Re)lists every ready group; groups no longer listed leave routing. */
static int relist(struct tsr_cluster *c)
{
    char p[300];
    snprintf(p, sizeof p, "%s/ready/", c->prefix);
    struct tsr_etcd_kv *kvs;
    size_t n;
    int64_t rev;
    int rc = tsr_etcd_get_prefix(c->e, p, &kvs, &n, &rev);
    if (rc) return rc;
    const char **names = calloc(n ? n : 1, sizeof *names);
    if (!names) {
        tsr_etcd_kvs_free(kvs, n);
        return TSR_ENOMEM;
    }
    int k = 0;
    for (size_t i = 0; i < n; i++)
        if (!ready_apply(c, kvs[i].key, kvs[i].val)) names[k++] = kvs[i].key + strlen(p);
    tsr_router_retain(c->r, names, k);
    free(names);
    tsr_etcd_kvs_free(kvs, n);
    c->listed_rev = rev;
    return 0;
}

static void on_ready_event(void *arg, const struct tsr_etcd_event *ev)
{
    struct tsr_cluster *c = arg;
    if (ev->type == TSR_ETCD_COMPACTED) {
        if (relist(c)) tsr_log_error("cluster: re-listing ready groups: %s", tsr_last_error());
        return;
    }
    if (ev->mod_revision <= c->listed_rev) return;
    if (ev->type == TSR_ETCD_PUT) {
        ready_apply(c, ev->key, ev->val);
    } else {
        const char *group = ev->key + strlen(c->prefix) + strlen("/ready/");
        tsr_log_warn("cluster: group %s left (its leader's lease ended)", group);
        tsr_router_remove(c->r, group);
    }
}

/* ---- the controller ---- */

static int64_t json_int(json_t *o, const char *k, int64_t dflt)
{
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) ? json_integer_value(v) : dflt;
}

/* Assigns every registered worker unit that has no assignment for its current generation. */
static void plan(struct tsr_cluster *c)
{
    char wp[300], ap[300];
    snprintf(wp, sizeof wp, "%s/workers/", c->prefix);
    snprintf(ap, sizeof ap, "%s/assign/", c->prefix);
    struct tsr_etcd_kv *w = NULL, *a = NULL;
    size_t nw = 0, na = 0;
    int64_t rev;
    if (tsr_etcd_get_prefix(c->e, wp, &w, &nw, &rev) ||
        tsr_etcd_get_prefix(c->e, ap, &a, &na, &rev)) {
        tsr_log_warn("controller: listing workers: %s", tsr_last_error());
        goto out;
    }
    for (size_t i = 0; i < nw; i++) {
        const char *id = w[i].key + strlen(wp);
        int64_t gen = w[i].mod_revision; /* a re-registration (same key, new lease) is new */
        int assigned = 0;
        for (size_t k = 0; k < na && !assigned; k++) {
            if (strcmp(a[k].key + strlen(ap), id)) continue;
            json_t *j = json_loads(a[k].val, 0, NULL);
            assigned = j && json_int(j, "generation", -1) == gen;
            json_decref(j);
        }
        if (assigned) continue;
        json_t *j = json_loads(w[i].val, 0, NULL);
        int64_t tp = j ? json_int(j, "tp", -1) : -1, pp = j ? json_int(j, "pp", -1) : -1;
        json_decref(j);
        if (tp != c->o.tp || pp != c->o.pp) {
            tsr_log_warn("controller: worker %s is tp %lld x pp %lld; groups here are %d x %d", id,
                         (long long)tp, (long long)pp, c->o.tp, c->o.pp);
            continue;
        }
        char gid[160], key[512], val[640];
        snprintf(gid, sizeof gid, "g-%s", id);
        snprintf(key, sizeof key, "%s/groups/%s", c->prefix, gid);
        snprintf(val, sizeof val, "{\"members\":[\"%s\"],\"tp\":%d,\"pp\":%d,\"generation\":%lld}",
                 id, c->o.tp, c->o.pp, (long long)gen);
        int rc = tsr_etcd_put(c->e, key, val, strlen(val), w[i].lease, NULL);
        snprintf(key, sizeof key, "%s%s", ap, id);
        snprintf(val, sizeof val, "{\"group\":\"%s\",\"generation\":%lld}", gid, (long long)gen);
        if (!rc) rc = tsr_etcd_put(c->e, key, val, strlen(val), w[i].lease, NULL);
        if (rc)
            tsr_log_warn("controller: assigning %s: %s", id, tsr_last_error());
        else
            tsr_log_info("controller: worker %s forms group %s (generation %lld)", id, gid,
                         (long long)gen);
    }
out:
    tsr_etcd_kvs_free(w, nw);
    tsr_etcd_kvs_free(a, na);
}

static void on_lease_lost(void *arg)
{
    struct tsr_cluster *c = arg;
    pthread_mutex_lock(&c->mu);
    c->lease_lost = 1;
    pthread_mutex_unlock(&c->mu);
}

/* Elects itself when no controller holds the key, then plans every 300 ms (a poll: a handful of
 * keys, and it also repairs anything a failed write left behind). */
static void *controller_main(void *arg)
{
    struct tsr_cluster *c = arg;
    char key[300];
    snprintf(key, sizeof key, "%s/controller", c->prefix);
    int leader = 0;
    pthread_mutex_lock(&c->mu);
    while (!c->stop) {
        int lost = c->lease_lost;
        pthread_mutex_unlock(&c->mu);
        if (lost || !c->lease) {
            if (c->ka) tsr_etcd_keepalive_stop(c->ka);
            c->ka = NULL;
            leader = 0;
            c->lease = 0;
            if (!tsr_etcd_lease_grant(c->e, c->o.ttl_s, &c->lease) &&
                tsr_etcd_keepalive_start(c->e, c->lease, c->o.ttl_s, on_lease_lost, c, &c->ka)) {
                tsr_etcd_lease_revoke(c->e, c->lease);
                c->lease = 0;
            }
            pthread_mutex_lock(&c->mu);
            c->lease_lost = 0;
            pthread_mutex_unlock(&c->mu);
        }
        if (c->lease && !leader) {
            int created = 0;
            if (!tsr_etcd_put_if_absent(c->e, key, c->id, strlen(c->id), c->lease, &created) &&
                created) {
                leader = 1;
                tsr_log_info("controller: %s is the controller", c->id);
            }
        }
        if (leader) plan(c);
        pthread_mutex_lock(&c->mu);
        if (c->stop) break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 300 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&c->cv, &c->mu, &ts);
    }
    pthread_mutex_unlock(&c->mu);
    if (c->ka) tsr_etcd_keepalive_stop(c->ka);
    if (c->lease) tsr_etcd_lease_revoke(c->e, c->lease); /* hand the role over at once */
    return NULL;
}

int tsr_cluster_start(tsr_etcd_t *e, tsr_router_t *r, const struct tsr_cluster_opts *o,
                      tsr_cluster_t **out)
{
    struct tsr_cluster *c = calloc(1, sizeof *c);
    if (!c) return tsr_errorf(TSR_ENOMEM, "out of memory");
    c->e = e;
    c->r = r;
    c->o = *o;
    snprintf(c->prefix, sizeof c->prefix, "%s", o->prefix);
    snprintf(c->id, sizeof c->id, "%s", o->id);
    c->o.prefix = c->prefix;
    c->o.id = c->id;
    if (c->o.ttl_s <= 0) c->o.ttl_s = 3;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    char p[300];
    snprintf(p, sizeof p, "%s/ready/", c->prefix);
    int rc = relist(c);
    if (!rc) rc = tsr_etcd_watch_start(e, p, c->listed_rev + 1, on_ready_event, c, &c->watch);
    if (rc) goto fail;
    if (pthread_create(&c->controller, NULL, controller_main, c)) {
        tsr_etcd_watch_stop(c->watch);
        rc = tsr_errorf(TSR_EINTERNAL, "cannot start the controller thread");
        goto fail;
    }
    *out = c;
    return 0;
fail:
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
    return rc;
}

void tsr_cluster_stop(tsr_cluster_t *c)
{
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    c->stop = 1;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->controller, NULL);
    tsr_etcd_watch_stop(c->watch);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}
