/* A group's ranks meeting through etcd instead of MPI (DESIGN §1, §4: on Kubernetes each pod of
 * a LeaderWorkerSet starts on its own, with no MPI launcher): rank 0 publishes a blob (the NCCL
 * unique id) under the group's key and generation, the other ranks wait for it.
 *
 * Key: <prefix>/rendezvous/<group>/<generation>, attached to rank 0's lease, so it goes when rank
 * 0 does. Value: the generation (8 bytes, little-endian) and the blob. A new generation of the
 * group (a rank restarted) has a key of its own: a rank of generation G never takes the id of
 * G - 1, and a value whose own generation is not the key's is refused as stale. */
#ifndef TSR_WORKER_RENDEZVOUS_H
#define TSR_WORKER_RENDEZVOUS_H

#include <stddef.h>
#include <stdint.h>

#include "common/etcd.h"
#include "kernels/comm.h"

enum { TSR_RDV_MAX_BLOB = 1024 };

/* Rank 0: publishes blob[0, len) for (group, generation). TSR_EINVAL if one is there already
 * (two rank 0s of one generation: a configuration error). lease 0: none. */
int tsr_rdv_publish(tsr_etcd_t *e, const char *prefix, const char *group, int64_t generation,
                    int64_t lease, const void *blob, size_t len);

/* The other ranks: waits up to timeout_ms for (group, generation)'s blob of exactly len bytes.
 * TSR_ETIMEDOUT naming the group and generation when rank 0 did not publish in time; TSR_EFORMAT
 * when what is there is stale or of the wrong size. */
int tsr_rdv_wait(tsr_etcd_t *e, const char *prefix, const char *group, int64_t generation,
                 int timeout_ms, void *blob, size_t len);

/* TSR_EINVAL, saying why, unless group can name a group: 1 to 200 printable characters, no '/'
 * or spaces (it is one segment of a key). */
int tsr_rdv_check_group(const char *group);

/* A group whose ranks start on their own, in any order (a LeaderWorkerSet's pods), agreeing on a
 * generation: rank `rank` of `size` creates <prefix>/rendezvous/<group>/ranks/<rank> on its lease
 * (while an older process of that rank still holds the key, it waits for that lease to end), then
 * waits until all size ranks hold theirs. *generation is the newest of their create revisions:
 * the same on every rank of one start of the group, and new whenever any rank restarts, so ranks
 * of different starts never take each other's id. TSR_ETIMEDOUT after timeout_ms, naming the
 * ranks missing; TSR_EINVAL for a bad rank, size or group name. */
int tsr_rdv_join(tsr_etcd_t *e, const char *prefix, const char *group, int rank, int size,
                 int64_t lease, int timeout_ms, int64_t *generation);

/* A group's NCCL communicator through etcd (tsr_comm_nccl_from_id): rank 0 makes the unique id
 * and publishes it; the other ranks wait for it (timeout_ms); then all join. A rank 0 that cannot
 * join takes its id back. Without CUDA: TSR_EUNSUPPORTED. */
int tsr_rdv_nccl(tsr_etcd_t *e, const char *prefix, const char *group, int64_t generation,
                 int64_t lease, int rank, int size, int device, void *cuda_stream, int timeout_ms,
                 tsr_comm_t **out);

#endif
