#include "worker/rendezvous.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/status.h"

enum { POLL_MS = 50 };

static void rdv_key(char *key, size_t cap, const char *prefix, const char *group,
                    int64_t generation)
{
    snprintf(key, cap, "%s/rendezvous/%s/%lld", prefix, group, (long long)generation);
}

int tsr_rdv_publish(tsr_etcd_t *e, const char *prefix, const char *group, int64_t generation,
                    int64_t lease, const void *blob, size_t len)
{
    if (len > TSR_RDV_MAX_BLOB)
        return tsr_errorf(TSR_EINVAL, "rendezvous: a %zu-byte blob; at most %d", len,
                          TSR_RDV_MAX_BLOB);
    char key[512];
    uint8_t val[8 + TSR_RDV_MAX_BLOB];
    rdv_key(key, sizeof key, prefix, group, generation);
    for (int i = 0; i < 8; i++) val[i] = (uint8_t)((uint64_t)generation >> (8 * i));
    memcpy(val + 8, blob, len);
    int created = 0, rc = tsr_etcd_put_if_absent(e, key, val, 8 + len, lease, &created);
    if (rc) return rc;
    if (!created)
        return tsr_errorf(TSR_EINVAL,
                          "rendezvous: group %s generation %lld already has an id: two ranks 0?",
                          group, (long long)generation);
    return 0;
}

int tsr_rdv_wait(tsr_etcd_t *e, const char *prefix, const char *group, int64_t generation,
                 int timeout_ms, void *blob, size_t len)
{
    char key[512];
    rdv_key(key, sizeof key, prefix, group, generation);
    double deadline = tsr_now() + timeout_ms / 1000.0;
    for (;;) {
        char *val = NULL;
        size_t n = 0;
        int rc = tsr_etcd_get(e, key, &val, &n, NULL);
        if (!rc) {
            int64_t g = 0;
            for (int i = 0; i < 8 && n >= 8; i++)
                g |= (int64_t)((uint64_t)(uint8_t)val[i] << (8 * i));
            if (n != 8 + len || g != generation) {
                free(val);
                return tsr_errorf(TSR_EFORMAT,
                                  "rendezvous: %s holds %zu bytes of generation %lld; want %zu "
                                  "of generation %lld (stale or foreign)",
                                  key, n, (long long)g, 8 + len, (long long)generation);
            }
            memcpy(blob, val + 8, len);
            free(val);
            return 0;
        }
        if (rc != TSR_ENOTFOUND) return rc;
        if (tsr_now() >= deadline)
            return tsr_errorf(TSR_ETIMEDOUT,
                              "rendezvous: rank 0 of group %s did not publish generation %lld's "
                              "id within %d ms",
                              group, (long long)generation, timeout_ms);
        usleep(POLL_MS * 1000);
    }
}

/* A group name is one path segment of a key: printable, no '/', not empty. */
int tsr_rdv_check_group(const char *group)
{
    size_t n = strlen(group);
    int ok = n > 0 && n <= 200;
    for (size_t i = 0; ok && i < n; i++)
        ok = group[i] != '/' && (unsigned char)group[i] > ' ' && group[i] != 0x7f;
    return ok ? 0
              : tsr_errorf(TSR_EINVAL,
                           "rendezvous: bad group name '%.64s' (1 to 200 printable characters, "
                           "no '/' or spaces)",
                           group);
}

/* Of the keys under base (base + a rank number), which ranks below size are held (seen[r]) and
 * the newest create revision among them. */
static int held_ranks(const struct tsr_etcd_kv *kvs, size_t n, size_t base_len, int size,
                      unsigned char *seen, int64_t *newest)
{
    int held = 0;
    memset(seen, 0, (size_t)size);
    *newest = 0;
    for (size_t i = 0; i < n; i++) {
        char *end;
        long r = strtol(kvs[i].key + base_len, &end, 10);
        if (*end || end == kvs[i].key + base_len || r < 0 || r >= size || seen[r]) continue;
        seen[r] = 1;
        held++;
        if (kvs[i].create_revision > *newest) *newest = kvs[i].create_revision;
    }
    return held;
}

int tsr_rdv_join(tsr_etcd_t *e, const char *prefix, const char *group, int rank, int size,
                 int64_t lease, int timeout_ms, int64_t *generation)
{
    if (size < 1 || size > 65536 || rank < 0 || rank >= size)
        return tsr_errorf(TSR_EINVAL, "rendezvous: rank %d of a group of %d", rank, size);
    int rc = tsr_rdv_check_group(group);
    if (rc) return rc;
    char base[512], key[560], val[32];
    snprintf(base, sizeof base, "%s/rendezvous/%s/ranks/", prefix, group);
    snprintf(key, sizeof key, "%s%d", base, rank);
    snprintf(val, sizeof val, "pid %d", (int)getpid());
    double deadline = tsr_now() + timeout_ms / 1000.0;
    for (int created = 0; !created;) {
        if ((rc = tsr_etcd_put_if_absent(e, key, val, strlen(val), lease, &created))) return rc;
        if (created) break;
        if (tsr_now() >= deadline)
            return tsr_errorf(TSR_ETIMEDOUT,
                              "rendezvous: rank %d of group %s stayed held by another process for "
                              "%d ms (two ranks %d, or its lease has not ended yet)",
                              rank, group, timeout_ms, rank);
        usleep(POLL_MS * 1000);
    }
    unsigned char *seen = malloc((size_t)size);
    if (!seen) return tsr_errorf(TSR_ENOMEM, "rendezvous: out of memory");
    for (;;) {
        struct tsr_etcd_kv *kvs = NULL;
        size_t n = 0;
        int64_t newest = 0;
        if ((rc = tsr_etcd_get_prefix(e, base, &kvs, &n, NULL))) break;
        int held = held_ranks(kvs, n, strlen(base), size, seen, &newest);
        tsr_etcd_kvs_free(kvs, n);
        if (held == size) {
            *generation = newest;
            break;
        }
        if (tsr_now() >= deadline) {
            int missing = 0;
            while (seen[missing]) missing++;
            rc = tsr_errorf(TSR_ETIMEDOUT,
                            "rendezvous: group %s has %d of its %d ranks after %d ms (rank %d is "
                            "missing)",
                            group, held, size, timeout_ms, missing);
            break;
        }
        usleep(POLL_MS * 1000);
    }
    free(seen);
    return rc;
}

int tsr_rdv_nccl(tsr_etcd_t *e, const char *prefix, const char *group, int64_t generation,
                 int64_t lease, int rank, int size, int device, void *cuda_stream, int timeout_ms,
                 tsr_comm_t **out)
{
    uint8_t id[TSR_COMM_NCCL_ID_BYTES];
    int rc = rank == 0 ? tsr_comm_nccl_unique_id(id) : 0;
    if (!rc)
        rc = rank == 0 ? tsr_rdv_publish(e, prefix, group, generation, lease, id, sizeof id)
                       : tsr_rdv_wait(e, prefix, group, generation, timeout_ms, id, sizeof id);
    if (rc || !(rc = tsr_comm_nccl_from_id(id, rank, size, device, cuda_stream, out)) || rank)
        return rc;
    /* rank 0 cannot join: take the id back, so the others time out with a message naming the
     * group instead of waiting in NCCL for a rank that will not come */
    char key[512];
    rdv_key(key, sizeof key, prefix, group, generation);
    tsr_etcd_delete(e, key, 0);
    return rc;
}
