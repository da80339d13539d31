#include "worker/member.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/status.h"

struct tsr_member {
    tsr_etcd_t *e;
    char prefix[256], id[128], addr[128];
    int64_t lease;
    tsr_etcd_keepalive_t *ka;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop, lost, ready, draining;
    char group[200]; /* the group published ready, and its generation */
    int64_t generation;
};

static void on_lost(void *arg)
{
    struct tsr_member *m = arg;
    pthread_mutex_lock(&m->mu);
    m->lost = 1;
    m->ready = 0;
    pthread_mutex_unlock(&m->mu);
    tsr_log_error("worker %s: lost its etcd lease", m->id);
}

/* Puts <prefix>/ready/<group> on the lease: the leader's address and generation, and whether it
 * drains. */
static int publish(struct tsr_member *m, const char *group, int64_t gen, int draining)
{
    char rk[400], rv[600];
    snprintf(rk, sizeof rk, "%s/ready/%s", m->prefix, group);
    snprintf(rv, sizeof rv, "{\"addr\":\"%s\",\"generation\":%lld,\"worker\":\"%s\"%s}", m->addr,
             (long long)gen, m->id, draining ? ",\"draining\":true" : "");
    return tsr_etcd_put(m->e, rk, rv, strlen(rv), m->lease, NULL);
}

/* Polls the assignment key (a few keys, every 200 ms) and publishes readiness for each new one. */
static void *member_main(void *arg)
{
    struct tsr_member *m = arg;
    char key[400];
    snprintf(key, sizeof key, "%s/assign/%s", m->prefix, m->id);
    int64_t published = -1;
    pthread_mutex_lock(&m->mu);
    while (!m->stop && !m->lost) {
        pthread_mutex_unlock(&m->mu);
        char *val = NULL;
        size_t len;
        if (!tsr_etcd_get(m->e, key, &val, &len, NULL)) {
            json_t *j = json_loads(val, 0, NULL);
            const char *group = j ? json_string_value(json_object_get(j, "group")) : NULL;
            json_t *g = j ? json_object_get(j, "generation") : NULL;
            if (group && json_is_integer(g) && json_integer_value(g) != published) {
                int64_t gen = json_integer_value(g);
                pthread_mutex_lock(&m->mu);
                int ok = !m->draining && !publish(m, group, gen, 0);
                if (ok) {
                    published = gen;
                    m->ready = 1;
                    snprintf(m->group, sizeof m->group, "%s", group);
                    m->generation = gen;
                }
                pthread_mutex_unlock(&m->mu);
                if (ok)
                    tsr_log_info("worker %s: serving group %s (generation %lld) at %s", m->id,
                                 group, (long long)gen, m->addr);
            }
            json_decref(j);
            free(val);
        }
        pthread_mutex_lock(&m->mu);
        if (m->stop) break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&m->cv, &m->mu, &ts);
    }
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

int tsr_member_join(tsr_etcd_t *e, const struct tsr_member_opts *o, tsr_member_t **out)
{
    struct tsr_member *m = calloc(1, sizeof *m);
    if (!m) return tsr_errorf(TSR_ENOMEM, "out of memory");
    m->e = e;
    snprintf(m->prefix, sizeof m->prefix, "%s", o->prefix);
    snprintf(m->id, sizeof m->id, "%s", o->id);
    snprintf(m->addr, sizeof m->addr, "%s", o->addr);
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->cv, NULL);
    int ttl = o->ttl_s > 0 ? o->ttl_s : 3;
    int rc = tsr_etcd_lease_grant(e, ttl, &m->lease);
    if (rc) goto fail;
    if ((rc = tsr_etcd_keepalive_start(e, m->lease, ttl, on_lost, m, &m->ka))) goto fail_lease;
    char key[400];
    json_t *v = json_pack("{s:s, s:i, s:i, s:i, s:s, s:i}", "addr", o->addr, "ranks", o->ranks,
                          "tp", o->tp, "pp", o->pp, "model", o->model, "pid", (int)getpid());
    char *val = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    if (!val) {
        rc = tsr_errorf(TSR_ENOMEM, "out of memory");
        goto fail_ka;
    }
    snprintf(key, sizeof key, "%s/workers/%s", m->prefix, m->id);
    rc = tsr_etcd_put(e, key, val, strlen(val), m->lease, NULL);
    free(val);
    if (rc) goto fail_ka;
    if (pthread_create(&m->thread, NULL, member_main, m)) {
        rc = tsr_errorf(TSR_EINTERNAL, "cannot start the membership thread");
        goto fail_ka;
    }
    *out = m;
    return 0;
fail_ka:
    tsr_etcd_keepalive_stop(m->ka);
fail_lease:
    tsr_etcd_lease_revoke(e, m->lease);
fail:
    pthread_mutex_destroy(&m->mu);
    pthread_cond_destroy(&m->cv);
    free(m);
    return rc;
}

int tsr_member_drain(tsr_member_t *m)
{
    if (!m) return 0;
    pthread_mutex_lock(&m->mu);
    m->draining = 1;
    m->ready = 0;
    int rc = m->group[0] ? publish(m, m->group, m->generation, 1) : 0;
    pthread_mutex_unlock(&m->mu);
    return rc;
}

int tsr_member_ready(tsr_member_t *m)
{
    pthread_mutex_lock(&m->mu);
    int r = m->ready;
    pthread_mutex_unlock(&m->mu);
    return r;
}

int tsr_member_lost(tsr_member_t *m)
{
    pthread_mutex_lock(&m->mu);
    int l = m->lost;
    pthread_mutex_unlock(&m->mu);
    return l;
}

void tsr_member_leave(tsr_member_t *m)
{
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->stop = 1;
    pthread_cond_signal(&m->cv);
    pthread_mutex_unlock(&m->mu);
    pthread_join(m->thread, NULL);
    tsr_etcd_keepalive_stop(m->ka);
    tsr_etcd_lease_revoke(m->e, m->lease);
    pthread_mutex_destroy(&m->mu);
    pthread_cond_destroy(&m->cv);
    free(m);
}
