/* worker/rendezvous against a real etcd: an id published by rank 0 reaches the other ranks,
 * keyed by generation; a stale or foreign id is refused; waiting ends in time; two ranks 0 of one
 * generation are an error; the id goes with rank 0's lease. Ranks started one by one agree on a
 * generation, a new one whenever a rank restarts; a rank whose older self still holds its key
 * waits for it; a missing rank or a bad name is a clear error. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/etcd.h"
#include "common/log.h"
#include "common/status.h"
#include "worker/rendezvous.h"

static struct tsr_etcd_server srv;
static tsr_etcd_t *etcd;
static char tmpdir[] = "/tmp/tsr-rdv-test-XXXXXX";

static int setup(void **state)
{
    (void)state;
    if (!mkdtemp(tmpdir) || tsr_etcd_server_start(tmpdir, &srv) ||
        tsr_etcd_open(srv.endpoint, &etcd)) {
        fprintf(stderr, "test_rendezvous: no etcd: %s\n", tsr_last_error());
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tsr_etcd_close(etcd);
    tsr_etcd_server_stop(&srv);
    return 0;
}

/* 128 bytes, as an ncclUniqueId */
static void make_id(uint8_t *id, int seed)
{
    for (int i = 0; i < 128; i++) id[i] = (uint8_t)(seed * 31 + i * 7);
}

static void test_publish_wait(void **state)
{
    (void)state;
    uint8_t id[128], got[128];
    make_id(id, 1);
    assert_int_equal(tsr_rdv_publish(etcd, "/t1", "g0", 7, 0, id, sizeof id), 0);
    memset(got, 0, sizeof got);
    assert_int_equal(tsr_rdv_wait(etcd, "/t1", "g0", 7, 1000, got, sizeof got), 0);
    assert_memory_equal(got, id, sizeof id);
    /* a second rank 0 of the same generation */
    assert_int_equal(tsr_rdv_publish(etcd, "/t1", "g0", 7, 0, id, sizeof id), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "already has an id"));
}

static void test_generations(void **state)
{
    (void)state;
    uint8_t old[128], now[128], got[128];
    make_id(old, 2);
    make_id(now, 3);
    assert_int_equal(tsr_rdv_publish(etcd, "/t2", "g1", 1, 0, old, sizeof old), 0);
    /* a rank of generation 2 does not take generation 1's id: it waits, and times out */
    double t0 = tsr_now();
    assert_int_equal(tsr_rdv_wait(etcd, "/t2", "g1", 2, 300, got, sizeof got), TSR_ETIMEDOUT);
    double took = tsr_now() - t0;
    assert_true(took >= 0.29 && took < 3);
    assert_non_null(strstr(tsr_last_error(), "group g1 did not publish generation 2"));
    /* a waiter that started first gets the id once it comes */
    assert_int_equal(tsr_rdv_publish(etcd, "/t2", "g1", 2, 0, now, sizeof now), 0);
    assert_int_equal(tsr_rdv_wait(etcd, "/t2", "g1", 2, 1000, got, sizeof got), 0);
    assert_memory_equal(got, now, sizeof now);
}

static void test_stale_refused(void **state)
{
    (void)state;
    /* generation 5's key holding a value written for generation 4 */
    uint8_t val[8 + 128] = {4};
    assert_int_equal(tsr_etcd_put(etcd, "/t3/rendezvous/g2/5", val, sizeof val, 0, NULL), 0);
    uint8_t got[128];
    assert_int_equal(tsr_rdv_wait(etcd, "/t3", "g2", 5, 500, got, sizeof got), TSR_EFORMAT);
    assert_non_null(strstr(tsr_last_error(), "generation 4"));
    /* the wrong size */
    assert_int_equal(tsr_rdv_wait(etcd, "/t3", "g2", 5, 500, got, 64), TSR_EFORMAT);
}

static void test_goes_with_lease(void **state)
{
    (void)state;
    int64_t lease;
    assert_int_equal(tsr_etcd_lease_grant(etcd, 5, &lease), 0);
    uint8_t id[128], got[128];
    make_id(id, 4);
    assert_int_equal(tsr_rdv_publish(etcd, "/t4", "g3", 1, lease, id, sizeof id), 0);
    assert_int_equal(tsr_rdv_wait(etcd, "/t4", "g3", 1, 500, got, sizeof got), 0);
    assert_int_equal(tsr_etcd_lease_revoke(etcd, lease), 0); /* rank 0 is gone */
    assert_int_equal(tsr_rdv_wait(etcd, "/t4", "g3", 1, 200, got, sizeof got), TSR_ETIMEDOUT);
}

/* Without CUDA (or without a GPU) rank 0 fails clearly and publishes nothing; a size-1 group on a
 * GPU machine would publish its id and join. */
static void test_nccl_rank0(void **state)
{
    (void)state;
    tsr_comm_t *c = NULL;
    int rc = tsr_rdv_nccl(etcd, "/t5", "g4", 1, 0, 0, 1, 0, NULL, 100, &c);
    int published = tsr_etcd_get(etcd, "/t5/rendezvous/g4/1", NULL, NULL, NULL) == 0;
    if (rc) {
        assert_null(c);
        assert_false(published);
        assert_true(tsr_last_error()[0]);
    } else {
        assert_non_null(c);
        assert_true(published);
        tsr_comm_free(c);
    }
}

struct joiner {
    const char *prefix;
    int rank, size, timeout_ms, rc;
    int64_t lease, generation;
    pthread_t thread;
};

static void *join_main(void *arg)
{
    struct joiner *j = arg;
    j->rc = tsr_rdv_join(etcd, j->prefix, "grp.ns", j->rank, j->size, j->lease, j->timeout_ms,
                         &j->generation);
    return NULL;
}

/* Ranks 0..n-1 of a group of n, each on a lease of its own, joining at once from threads. */
static void join_all(struct joiner *j, int n, const char *prefix)
{
    for (int r = 0; r < n; r++) {
        j[r] = (struct joiner){.prefix = prefix, .rank = r, .size = n, .timeout_ms = 5000};
        assert_int_equal(tsr_etcd_lease_grant(etcd, 10, &j[r].lease), 0);
        assert_int_equal(pthread_create(&j[r].thread, NULL, join_main, &j[r]), 0);
    }
    for (int r = 0; r < n; r++) {
        pthread_join(j[r].thread, NULL);
        assert_int_equal(j[r].rc, 0);
        assert_true(j[r].generation > 0);
        assert_true(j[r].generation == j[0].generation);
    }
}

static void test_join_generations(void **state)
{
    (void)state;
    struct joiner j[3];
    join_all(j, 3, "/t6");
    int64_t first = j[0].generation;
    /* rank 2 restarts: its key goes with its lease, the new process takes it, and the group's
     * generation moves on, so nobody of the new start takes the old start's id */
    assert_int_equal(tsr_etcd_lease_revoke(etcd, j[2].lease), 0);
    assert_int_equal(tsr_etcd_lease_grant(etcd, 10, &j[2].lease), 0);
    int64_t gen = 0;
    assert_int_equal(tsr_rdv_join(etcd, "/t6", "grp.ns", 2, 3, j[2].lease, 2000, &gen), 0);
    assert_true(gen > first);
    for (int r = 0; r < 3; r++) tsr_etcd_lease_revoke(etcd, j[r].lease);
    /* the whole group again (a LeaderWorkerSet recreating it): a newer generation still */
    join_all(j, 3, "/t6");
    assert_true(j[0].generation > gen);
    for (int r = 0; r < 3; r++) tsr_etcd_lease_revoke(etcd, j[r].lease);
}

static void test_join_waits_for_old_self(void **state)
{
    (void)state;
    int64_t old, lease, gen = 0;
    assert_int_equal(tsr_etcd_lease_grant(etcd, 10, &old), 0);
    assert_int_equal(tsr_etcd_lease_grant(etcd, 10, &lease), 0);
    assert_int_equal(tsr_rdv_join(etcd, "/t7", "g", 0, 1, old, 1000, &gen), 0);
    /* a second rank 0 while the first lives: refused in time, naming the rank */
    double t0 = tsr_now();
    assert_int_equal(tsr_rdv_join(etcd, "/t7", "g", 0, 1, lease, 300, &gen), TSR_ETIMEDOUT);
    assert_true(tsr_now() - t0 < 3);
    assert_non_null(strstr(tsr_last_error(), "rank 0 of group g stayed held"));
    /* the old process ends while the new one waits: the new one takes the key */
    struct joiner j = {.prefix = "/t7", .rank = 0, .size = 1, .timeout_ms = 5000, .lease = lease};
    assert_int_equal(pthread_create(&j.thread, NULL, join_main, &j), 0);
    usleep(300 * 1000);
    assert_int_equal(tsr_etcd_lease_revoke(etcd, old), 0);
    pthread_join(j.thread, NULL);
    assert_int_equal(j.rc, 0);
    assert_true(j.generation > gen);
    tsr_etcd_lease_revoke(etcd, lease);
}

static void test_join_errors(void **state)
{
    (void)state;
    int64_t lease, gen = 0;
    assert_int_equal(tsr_etcd_lease_grant(etcd, 10, &lease), 0);
    /* ranks 0 and 2 of 3 come, rank 1 never does */
    assert_int_equal(tsr_rdv_join(etcd, "/t8", "g", 2, 3, lease, 100, &gen), TSR_ETIMEDOUT);
    assert_non_null(strstr(tsr_last_error(), "has 1 of its 3 ranks"));
    assert_non_null(strstr(tsr_last_error(), "rank 0 is missing"));
    assert_int_equal(tsr_rdv_join(etcd, "/t8", "g", 0, 3, lease, 200, &gen), TSR_ETIMEDOUT);
    assert_non_null(strstr(tsr_last_error(), "rank 1 is missing"));
    assert_int_equal(tsr_rdv_join(etcd, "/t8", "g", 3, 3, lease, 100, &gen), TSR_EINVAL);
    assert_int_equal(tsr_rdv_join(etcd, "/t8", "a/b", 0, 1, lease, 100, &gen), TSR_EINVAL);
    assert_int_equal(tsr_rdv_join(etcd, "/t8", "", 0, 1, lease, 100, &gen), TSR_EINVAL);
    assert_int_equal(tsr_rdv_join(etcd, "/t8", "a b", 0, 1, lease, 100, &gen), TSR_EINVAL);
    tsr_etcd_lease_revoke(etcd, lease);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_publish_wait),
        cmocka_unit_test(test_generations),
        cmocka_unit_test(test_stale_refused),
        cmocka_unit_test(test_goes_with_lease),
        cmocka_unit_test(test_nccl_rank0),
        cmocka_unit_test(test_join_generations),
        cmocka_unit_test(test_join_waits_for_old_self),
        cmocka_unit_test(test_join_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
