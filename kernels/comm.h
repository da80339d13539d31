/* Collectives over a group of ranks (DESIGN §4): the tensor-parallel all-reduce inside a pipeline
 * stage, activations from stage to stage, and the leader's step descriptor to every rank.
 *
 * Two implementations behind one vtable (comm_impl.h):
 * - MPI (Open MPI) on host-visible buffers (tsr_buf_host() != NULL: the CPU backend). The world is
 *   the ranks mpirun or srun started; sub-groups come from tsr_comm_split().
 * - NCCL on CUDA device buffers, built when CUDA is found (kernels/cuda/comm_nccl.c). Bootstrapped
 *   by broadcasting the NCCL unique id over another communicator (MPI under mpirun/srun), or from
 * an id the caller got elsewhere (etcd under Kubernetes).
 *
 * Rules shared by every operation:
 * - Collectives are collective: every rank of the group calls them in the same order with the same
 *   counts and root. Argument checks happen before any communication and depend only on arguments
 *   every rank agrees on, so a bad call fails the same way on every rank instead of hanging.
 * - Offsets and sizes are in bytes unless the name says floats. A range outside its buffer is
 *   TSR_ERANGE; a bad root, peer, alignment or the wrong kind of buffer is TSR_EINVAL; a failure of
 *   the transport (a dead peer, a timeout) is TSR_EIO. Messages name the operation and the rank.
 * - MPI operations are blocking: when they return, the data is there. NCCL operations are enqueued
 *   on the communicator's CUDA stream and return; tsr_comm_sync() waits for them (with a timeout),
 *   and so does anything that reads the buffers on that stream. The *_host variants and barrier
 *   always complete before returning, on every implementation.
 * - One thread at a time per communicator. MPI is initialized with MPI_THREAD_SERIALIZED when we
 *   initialize it: calls may come from any thread, never two at once.
 * - The sum order of an all-reduce differs from a single-rank sum: tensor-parallel results match
 *   a single rank within f32 rounding, not bitwise. */
#ifndef TSR_KERNELS_COMM_H
#define TSR_KERNELS_COMM_H

#include <stddef.h>

#include "kernels/backend.h"

typedef struct tsr_comm tsr_comm_t;

/* color for tsr_comm_split(): this rank joins no group (*out = NULL). */
#define TSR_COMM_NO_COLOR (-1)

/* Bytes of an NCCL unique id (NCCL_UNIQUE_ID_BYTES). */
#define TSR_COMM_NCCL_ID_BYTES 128

/* The ranks mpirun or srun started (a duplicate of MPI_COMM_WORLD, errors returned as codes).
 * Initializes MPI if nobody has yet; then freeing the last MPI communicator finalizes it, after
 * which MPI cannot be used again in this process (an MPI rule). Caller frees with
 * tsr_comm_free(). */
int tsr_comm_mpi_world(tsr_comm_t **out);

/* Sub-groups: the ranks of c that pass the same color (>= 0) form one group, ordered by key then
 * by rank in c (MPI_Comm_split / ncclCommSplit): TP groups are the ranks of one PP stage, PP
 * groups the ranks with one TP index. Collective over c. A rank passing TSR_COMM_NO_COLOR gets
 * *out = NULL. The new communicator is independent of c; caller frees it with tsr_comm_free(). */
int tsr_comm_split(tsr_comm_t *c, int color, int key, tsr_comm_t **out);

int tsr_comm_rank(const tsr_comm_t *c);
int tsr_comm_size(const tsr_comm_t *c);
const char *tsr_comm_name(const tsr_comm_t *c); /* "mpi" or "nccl" */
void tsr_comm_free(tsr_comm_t *c);

/* Data operations on backend buffers: MPI takes host-visible ones, NCCL device ones. */

/* f32 sum over the group, in place: [off_bytes, off_bytes + 4·n_floats) of buf. off_bytes % 4 == 0.
 */
int tsr_comm_all_reduce_sum(tsr_comm_t *c, tsr_buf_t *buf, size_t off_bytes, size_t n_floats);
/* recv[recv_off + r·bytes_per_rank ...] = rank r's send[send_off ...], for every rank r. The send
 * range may be this rank's own slot of recv (in place); any other overlap is TSR_EINVAL. */
int tsr_comm_all_gather(tsr_comm_t *c, tsr_buf_t *send, size_t send_off, tsr_buf_t *recv,
                        size_t recv_off, size_t bytes_per_rank);
/* root's [off, off + bytes) of buf to every rank's. */
int tsr_comm_broadcast(tsr_comm_t *c, tsr_buf_t *buf, size_t off, size_t bytes, int root);
/* All-to-all with a size per pair (dispatch and combine of expert parallelism). send holds, from
 * send_off, one segment per rank in rank order, back to back: send_bytes[r] bytes for rank r. recv
 * gets, from recv_off, the segments from every rank the same way: recv_bytes[r] bytes from rank r.
 * Both arrays have size(c) entries; any may be 0 (a rank with nothing to exchange still calls,
 * and a buffer with nothing in it may be NULL).
 * The ranks agree pairwise: send_bytes[j] on rank i equals recv_bytes[i] on rank j. MPI exchanges
 * the sizes first and fails every rank alike on a mismatch (TSR_EINVAL, naming the peer on the
 * rank that found it) before any data moves; NCCL does not check, and a mismatch may hang until
 * the timeout. The send and recv ranges must not overlap. */
int tsr_comm_all_to_all_v(tsr_comm_t *c, tsr_buf_t *send, size_t send_off, const size_t *send_bytes,
                          tsr_buf_t *recv, size_t recv_off, const size_t *recv_bytes);
/* Point to point. Messages between two ranks arrive in the order they were sent; bytes must match
 * on both sides. A blocking send may wait for its recv: two ranks sending to each other first
 * deadlock. Use tsr_comm_sendrecv() for exchanges and rings. */
int tsr_comm_send(tsr_comm_t *c, tsr_buf_t *buf, size_t off, size_t bytes, int peer);
int tsr_comm_recv(tsr_comm_t *c, tsr_buf_t *buf, size_t off, size_t bytes, int peer);
/* Sends to dst and receives from src at once (the ranges must not overlap). */
int tsr_comm_sendrecv(tsr_comm_t *c, tsr_buf_t *sbuf, size_t soff, size_t sbytes, int dst,
                      tsr_buf_t *rbuf, size_t roff, size_t rbytes, int src);
/* Returns once every rank has entered it (and, on NCCL, once this rank's queued work is done). */
int tsr_comm_barrier(tsr_comm_t *c);
/* Every rank passes its own status (0 or a TSR_E* code); all return the same verdict: 0 when every
 * rank passed 0, else the failed ranks keep their code and message and the others get TSR_EIO
 * naming the first failed rank. For a rank-local failure (out of memory, say) before a
 * collective: agreeing first fails every rank instead of leaving the others waiting in it. */
int tsr_comm_agree(tsr_comm_t *c, int status);
/* Waits until this rank's queued operations are complete: a no-op on MPI; on NCCL it waits for
 * the stream, polling for asynchronous errors, and fails with TSR_EIO after the timeout. */
int tsr_comm_sync(tsr_comm_t *c);

/* Host memory control messages (the leader's step descriptor, sampled token ids) on any
 * implementation; NCCL stages them through a device buffer. All complete before returning. */
int tsr_comm_broadcast_host(tsr_comm_t *c, void *p, size_t bytes, int root);
int tsr_comm_send_host(tsr_comm_t *c, const void *p, size_t bytes, int peer);
int tsr_comm_recv_host(tsr_comm_t *c, void *p, size_t bytes, int peer);

/* How long a blocking wait may last before it fails with TSR_EIO (a dead or stuck peer), in
 * seconds; <= 0 waits forever. Default 600 s. Honoured by NCCL (which polls); MPI waits inside
 * the library, and Open MPI ends the whole job when a rank dies. */
void tsr_comm_set_timeout(tsr_comm_t *c, double seconds);

/* NCCL (kernels/cuda/comm_nccl.c). Without CUDA these return TSR_EUNSUPPORTED.
 *
 * from_mpi: one communicator over the ranks of boot (any communicator; rank 0 of boot makes the
 * unique id and broadcasts it with tsr_comm_broadcast_host), same rank order. Collective over
 * boot. device: the CUDA device of this rank; cuda_stream: a cudaStream_t the operations run on
 * (NULL: the legacy default stream), not owned. NVLink SHARP/multicast follows NCCL's own
 * environment (NCCL_NVLS_ENABLE=0 where it must stay off); nothing here sets variables.
 * from_id: the same from a TSR_COMM_NCCL_ID_BYTES id made by tsr_comm_nccl_unique_id() on one
 * rank and handed to the others by other means (etcd). All ranks call it with the same id and
 * size. Both wait at most the default timeout for every rank to join.
 * One process per GPU (the design) is the tested layout. Several GPUs in one process work too, but
 * then no rank may free a communicator while a collective that waits for it is running on another
 * GPU of the process: NCCL's teardown frees peer-mapped memory, which waits for that kernel. */
int tsr_comm_nccl_from_mpi(tsr_comm_t *boot, int device, void *cuda_stream, tsr_comm_t **out);
int tsr_comm_nccl_from_id(const void *id, int rank, int size, int device, void *cuda_stream,
                          tsr_comm_t **out);
int tsr_comm_nccl_unique_id(void *id);

#endif
