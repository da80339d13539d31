/* The NCCL communicator on CUDA device buffers (TP inside a node over NVLink, PP across nodes).
 *
 * Operations are enqueued on the caller's stream and return. A dead peer must not hang a worker
 * forever (DESIGN §1: a group that lost a rank ends its requests with UNAVAILABLE), so:
 * - communicators are created non-blocking (ncclConfig_t.blocking = 0): NCCL calls that would wait
 *   on peers (init, split, lazy connection setup inside the first collectives, finalize) return
 *   ncclInProgress and we poll ncclCommGetAsyncError ourselves;
 * - every wait (tsr_comm_sync, barrier, the host messages, init) polls cudaStreamQuery and
 *   ncclCommGetAsyncError until done, an error, or c->timeout_s; on an error or the timeout the
 *   communicator is aborted (ncclCommAbort makes its kernels return), marked dead, and every later
 *   call fails with TSR_EIO. The stream may then hold garbage results; the group must be rebuilt.
 * Polling spins for the first millisecond, then sleeps 50 µs between polls: a collective that
 * finishes in microseconds is seen at once, a long wait costs little CPU.
 *
 * Host messages are staged through a pinned host buffer and a device buffer, both grown on demand,
 * so every copy is truly asynchronous and the only blocking point is our timed wait.
 *
 * NVLink SHARP (multicast) follows NCCL's environment: NCCL_NVLS_ENABLE=0 where it must stay off.
 * Nothing here sets environment variables. */
#include "kernels/comm_impl.h"

#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "common/log.h"
#include "common/status.h"

_Static_assert(TSR_COMM_NCCL_ID_BYTES == NCCL_UNIQUE_ID_BYTES, "NCCL unique id size changed");

struct nccl_ctx {
    ncclComm_t comm;
    cudaStream_t stream; /* not owned */
    int device;
    int dead;          /* aborted after an error or a timeout */
    void *dstage;      /* device staging for host messages and the barrier */
    void *hstage;      /* pinned host staging */
    size_t stage_size; /* bytes of each */
};

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void pause_poll(double waited_s)
{
    if (waited_s < 1e-3) {
        sched_yield();
        return;
    }
    struct timespec ts = {0, 50 * 1000};
    nanosleep(&ts, NULL);
}

static int cuda_fail(tsr_comm_t *c, const char *op, const char *call, cudaError_t e)
{
    return tsr_comm_errorf(c, TSR_EIO, op, "%s: %s (%s)", call, cudaGetErrorString(e),
                           cudaGetErrorName(e));
}

/* Aborts the communicator after a failure; later calls see dead and fail at once. */
static void kill_comm(struct nccl_ctx *n)
{
    if (n->comm && !n->dead) ncclCommAbort(n->comm);
    n->comm = NULL;
    n->dead = 1;
}

static int nccl_fail(tsr_comm_t *c, const char *op, const char *call, ncclResult_t r)
{
    const char *last = c ? ncclGetLastError(((struct nccl_ctx *)c->ctx)->comm) : NULL;
    int rc = tsr_comm_errorf(c, TSR_EIO, op, "%s: %s%s%s", call, ncclGetErrorString(r),
                             last && *last ? ": " : "", last && *last ? last : "");
    if (c) kill_comm(c->ctx);
    return rc;
}

/* Aborts comm, c's own or one being made for c (c may be NULL). */
static void abort_comm(tsr_comm_t *c, ncclComm_t comm)
{
    struct nccl_ctx *n = c ? c->ctx : NULL;
    if (n && n->comm == comm)
        kill_comm(n);
    else
        ncclCommAbort(comm);
}

/* Until comm has settled (not ncclInProgress): an error or the timeout aborts it. */
static int settle(tsr_comm_t *c, ncclComm_t comm, const char *op, const char *call, ncclResult_t r,
                  double timeout_s)
{
    double t0 = now_s();
    while (r == ncclInProgress) {
        double waited = now_s() - t0;
        if (timeout_s > 0 && waited > timeout_s) {
            int rc = tsr_comm_errorf(c, TSR_EIO, op, "%s: no answer from the other ranks in %.0f s",
                                     call, timeout_s);
            abort_comm(c, comm);
            return rc;
        }
        pause_poll(waited);
        ncclResult_t q = ncclCommGetAsyncError(comm, &r);
        if (q != ncclSuccess) r = q;
    }
    if (r == ncclSuccess) return 0;
    int rc = tsr_comm_errorf(c, TSR_EIO, op, "%s: %s: %s", call, ncclGetErrorString(r),
                             ncclGetLastError(comm));
    abort_comm(c, comm);
    return rc;
}

static int alive(tsr_comm_t *c, const char *op)
{
    struct nccl_ctx *n = c->ctx;
    if (n->dead)
        return tsr_comm_errorf(c, TSR_EIO, op,
                               "communicator was aborted after an earlier failure; rebuild the "
                               "group");
    return 0;
}

/* An NCCL call on this communicator, then settled. */
#define NCCL_DO(c, op, name, call)                                                                 \
    do {                                                                                           \
        int _rc = alive(c, op);                                                                    \
        if (!_rc)                                                                                  \
            _rc =                                                                                  \
                settle(c, ((struct nccl_ctx *)(c)->ctx)->comm, op, name, (call), (c)->timeout_s);  \
        if (_rc) return _rc;                                                                       \
    } while (0)

/* Waits for everything queued on the stream, watching for NCCL errors and the timeout. */
static int wait_stream(tsr_comm_t *c, const char *op)
{
    struct nccl_ctx *n = c->ctx;
    int rc = alive(c, op);
    if (rc) return rc;
    double t0 = now_s();
    for (;;) {
        cudaError_t e = cudaStreamQuery(n->stream);
        ncclResult_t ar = ncclSuccess;
        ncclResult_t q = ncclCommGetAsyncError(n->comm, &ar);
        if (q != ncclSuccess) ar = q;
        if (ar != ncclSuccess && ar != ncclInProgress)
            return nccl_fail(c, op, "asynchronous error", ar);
        if (e == cudaSuccess) return 0;
        if (e != cudaErrorNotReady) {
            rc = cuda_fail(c, op, "cudaStreamQuery", e);
            kill_comm(n);
            return rc;
        }
        double waited = now_s() - t0;
        if (c->timeout_s > 0 && waited > c->timeout_s) {
            rc = tsr_comm_errorf(c, TSR_EIO, op,
                                 "not done after %.0f s: a peer is dead or stuck; aborting the "
                                 "communicator",
                                 c->timeout_s);
            kill_comm(n);
            return rc;
        }
        pause_poll(waited);
    }
}

/* Runs with n->device current, restoring the caller's device. */
static int with_device(tsr_comm_t *c, const char *op, int device, int *prev)
{
    cudaError_t e = cudaGetDevice(prev);
    if (e == cudaSuccess && *prev != device) e = cudaSetDevice(device);
    return e == cudaSuccess ? 0 : cuda_fail(c, op, "cudaSetDevice", e);
}

static void free_stage(struct nccl_ctx *n)
{
    if (n->dstage) cudaFree(n->dstage);
    if (n->hstage) cudaFreeHost(n->hstage);
    n->dstage = n->hstage = NULL;
    n->stage_size = 0;
}

/* Staging buffers of at least bytes. cudaFree (and maybe the allocations) wait for the whole
 * device, which would hang untimed behind a collective whose peer died: so first our own timed
 * wait for the stream. Growth is rare (doubling from 4 KiB). */
static int need_stage(tsr_comm_t *c, const char *op, size_t bytes)
{
    struct nccl_ctx *n = c->ctx;
    if (n->stage_size >= bytes) return 0;
    size_t want = n->stage_size ? n->stage_size : 4096;
    while (want < bytes) want = want > SIZE_MAX / 2 ? bytes : want * 2;
    int prev, rc = wait_stream(c, op);
    if (!rc) rc = with_device(c, op, n->device, &prev);
    if (rc) return rc;
    free_stage(n);
    cudaError_t e = cudaMalloc(&n->dstage, want);
    if (e == cudaSuccess) e = cudaMallocHost(&n->hstage, want);
    if (e != cudaSuccess) {
        free_stage(n);
        rc = tsr_comm_errorf(c, TSR_ENOMEM, op, "staging %zu bytes: %s", want,
                             cudaGetErrorString(e));
    } else {
        n->stage_size = want;
    }
    cudaSetDevice(prev);
    return rc;
}

static int nccl_all_reduce_sum(tsr_comm_t *c, float *p, size_t count)
{
    struct nccl_ctx *n = c->ctx;
    NCCL_DO(c, "all_reduce_sum", "ncclAllReduce",
            ncclAllReduce(p, p, count, ncclFloat, ncclSum, n->comm, n->stream));
    return 0;
}

static int nccl_all_gather(tsr_comm_t *c, const void *send, void *recv, size_t bpr)
{
    struct nccl_ctx *n = c->ctx; /* in place (send is this rank's slot) is NCCL's own case */
    NCCL_DO(c, "all_gather", "ncclAllGather",
            ncclAllGather(send, recv, bpr, ncclChar, n->comm, n->stream));
    return 0;
}

static int nccl_broadcast(tsr_comm_t *c, void *p, size_t bytes, int root)
{
    struct nccl_ctx *n = c->ctx;
    NCCL_DO(c, "broadcast", "ncclBroadcast",
            ncclBroadcast(p, p, bytes, ncclChar, root, n->comm, n->stream));
    return 0;
}

static int nccl_send(tsr_comm_t *c, const void *p, size_t bytes, int peer)
{
    struct nccl_ctx *n = c->ctx;
    NCCL_DO(c, "send", "ncclSend", ncclSend(p, bytes, ncclChar, peer, n->comm, n->stream));
    return 0;
}

static int nccl_recv(tsr_comm_t *c, void *p, size_t bytes, int peer)
{
    struct nccl_ctx *n = c->ctx;
    NCCL_DO(c, "recv", "ncclRecv", ncclRecv(p, bytes, ncclChar, peer, n->comm, n->stream));
    return 0;
}

static int nccl_sendrecv(tsr_comm_t *c, const void *s, size_t sbytes, int dst, void *r,
                         size_t rbytes, int src)
{
    static const char op[] = "sendrecv";
    struct nccl_ctx *n = c->ctx;
    int rc = alive(c, op);
    if (rc) return rc;
    /* Inside a group NCCL only records the calls (no waiting); ncclGroupEnd launches them. */
    ncclResult_t r1 = ncclGroupStart();
    if (r1 != ncclSuccess) return nccl_fail(c, op, "ncclGroupStart", r1);
    ncclResult_t r2 = sbytes ? ncclSend(s, sbytes, ncclChar, dst, n->comm, n->stream) : ncclSuccess;
    ncclResult_t r3 = rbytes ? ncclRecv(r, rbytes, ncclChar, src, n->comm, n->stream) : ncclSuccess;
    ncclResult_t r4 = ncclGroupEnd();
    if (r2 != ncclSuccess && r2 != ncclInProgress) return nccl_fail(c, op, "ncclSend", r2);
    if (r3 != ncclSuccess && r3 != ncclInProgress) return nccl_fail(c, op, "ncclRecv", r3);
    return settle(c, n->comm, op, "ncclGroupEnd", r4, c->timeout_s);
}

/* One group of sends and receives, a pair per peer; this rank's own segment is a device copy on
 * the stream. */
static int nccl_all_to_all_v(tsr_comm_t *c, const void *send, const size_t *sb, void *recv,
                             const size_t *rb)
{
    static const char op[] = "all_to_all_v";
    struct nccl_ctx *n = c->ctx;
    const char *s = send;
    char *r = recv;
    int rc = alive(c, op);
    if (rc) return rc;
    if (sb[c->rank] != rb[c->rank])
        return tsr_comm_errorf(c, TSR_EINVAL, op, "sends %zu bytes to itself but receives %zu",
                               sb[c->rank], rb[c->rank]);
    ncclResult_t r1 = ncclGroupStart(), r2 = ncclSuccess;
    if (r1 != ncclSuccess) return nccl_fail(c, op, "ncclGroupStart", r1);
    size_t so = 0, ro = 0, self_s = 0, self_r = 0;
    for (int p = 0; p < c->size; p++) {
        if (p == c->rank) {
            self_s = so, self_r = ro;
        } else {
            if (sb[p] && r2 == ncclSuccess)
                r2 = ncclSend(s + so, sb[p], ncclChar, p, n->comm, n->stream);
            if (rb[p] && (r2 == ncclSuccess || r2 == ncclInProgress))
                r2 = ncclRecv(r + ro, rb[p], ncclChar, p, n->comm, n->stream);
            if (r2 == ncclInProgress) r2 = ncclSuccess;
        }
        so += sb[p], ro += rb[p];
    }
    ncclResult_t r3 = ncclGroupEnd();
    if (r2 != ncclSuccess) return nccl_fail(c, op, "ncclSend/ncclRecv", r2);
    rc = settle(c, n->comm, op, "ncclGroupEnd", r3, c->timeout_s);
    if (rc || !sb[c->rank]) return rc;
    cudaError_t e =
        cudaMemcpyAsync(r + self_r, s + self_s, sb[c->rank], cudaMemcpyDeviceToDevice, n->stream);
    return e == cudaSuccess ? 0 : cuda_fail(c, op, "cudaMemcpyAsync", e);
}

static int nccl_sync(tsr_comm_t *c)
{
    return wait_stream(c, "sync");
}

static int nccl_barrier(tsr_comm_t *c)
{
    static const char op[] = "barrier";
    struct nccl_ctx *n = c->ctx;
    int rc = alive(c, op);
    if (!rc) rc = need_stage(c, op, sizeof(float));
    if (rc) return rc;
    NCCL_DO(c, op, "ncclAllReduce",
            ncclAllReduce(n->dstage, n->dstage, 1, ncclFloat, ncclSum, n->comm, n->stream));
    return wait_stream(c, op);
}

static int stage_in(tsr_comm_t *c, const char *op, const void *p, size_t bytes)
{
    struct nccl_ctx *n = c->ctx;
    memcpy(n->hstage, p, bytes);
    cudaError_t e = cudaMemcpyAsync(n->dstage, n->hstage, bytes, cudaMemcpyHostToDevice, n->stream);
    return e == cudaSuccess ? 0 : cuda_fail(c, op, "cudaMemcpyAsync", e);
}

static int stage_out(tsr_comm_t *c, const char *op, void *p, size_t bytes)
{
    struct nccl_ctx *n = c->ctx;
    cudaError_t e = cudaMemcpyAsync(n->hstage, n->dstage, bytes, cudaMemcpyDeviceToHost, n->stream);
    if (e != cudaSuccess) return cuda_fail(c, op, "cudaMemcpyAsync", e);
    int rc = wait_stream(c, op);
    if (!rc) memcpy(p, n->hstage, bytes);
    return rc;
}

static int nccl_broadcast_host(tsr_comm_t *c, void *p, size_t bytes, int root)
{
    static const char op[] = "broadcast_host";
    struct nccl_ctx *n = c->ctx;
    int rc = alive(c, op);
    if (!rc) rc = need_stage(c, op, bytes);
    if (!rc && c->rank == root) rc = stage_in(c, op, p, bytes);
    if (rc) return rc;
    NCCL_DO(c, op, "ncclBroadcast",
            ncclBroadcast(n->dstage, n->dstage, bytes, ncclChar, root, n->comm, n->stream));
    return c->rank == root ? wait_stream(c, op) : stage_out(c, op, p, bytes);
}

static int nccl_send_host(tsr_comm_t *c, const void *p, size_t bytes, int peer)
{
    static const char op[] = "send_host";
    struct nccl_ctx *n = c->ctx;
    int rc = alive(c, op);
    if (!rc) rc = need_stage(c, op, bytes);
    if (!rc) rc = stage_in(c, op, p, bytes);
    if (rc) return rc;
    NCCL_DO(c, op, "ncclSend", ncclSend(n->dstage, bytes, ncclChar, peer, n->comm, n->stream));
    return wait_stream(c, op);
}

static int nccl_recv_host(tsr_comm_t *c, void *p, size_t bytes, int peer)
{
    static const char op[] = "recv_host";
    struct nccl_ctx *n = c->ctx;
    int rc = alive(c, op);
    if (!rc) rc = need_stage(c, op, bytes);
    if (rc) return rc;
    NCCL_DO(c, op, "ncclRecv", ncclRecv(n->dstage, bytes, ncclChar, peer, n->comm, n->stream));
    return stage_out(c, op, p, bytes);
}

static void nccl_free(tsr_comm_t *c)
{
    struct nccl_ctx *n = c->ctx;
    if (!n->dead) {
        /* Finalize flushes queued work and may need the peers: bounded like any wait. */
        ncclResult_t r = ncclCommFinalize(n->comm);
        if (settle(c, n->comm, "free", "ncclCommFinalize", r, c->timeout_s) == 0)
            ncclCommDestroy(n->comm);
        else
            tsr_log_warn("%s", tsr_last_error());
    }
    int prev;
    if (with_device(c, "free", n->device, &prev) == 0) {
        free_stage(n);
        cudaSetDevice(prev);
    }
    free(n);
}

static int nccl_split(tsr_comm_t *c, int color, int key, tsr_comm_t **out);

static const struct tsr_comm_iface nccl_iface = {
    .name = "nccl",
    .device_buffers = 1,
    .free = nccl_free,
    .split = nccl_split,
    .all_reduce_sum = nccl_all_reduce_sum,
    .all_gather = nccl_all_gather,
    .broadcast = nccl_broadcast,
    .send = nccl_send,
    .recv = nccl_recv,
    .sendrecv = nccl_sendrecv,
    .all_to_all_v = nccl_all_to_all_v,
    .barrier = nccl_barrier,
    .sync = nccl_sync,
    .broadcast_host = nccl_broadcast_host,
    .send_host = nccl_send_host,
    .recv_host = nccl_recv_host,
};

/* Wraps a settled communicator; aborts it on failure. */
static int wrap(tsr_comm_t *parent, const char *op, ncclComm_t comm, int device,
                cudaStream_t stream, double timeout_s, tsr_comm_t **out)
{
    int rank = 0, size = 0;
    ncclResult_t r = ncclCommUserRank(comm, &rank);
    if (r == ncclSuccess) r = ncclCommCount(comm, &size);
    struct nccl_ctx *n = r == ncclSuccess ? calloc(1, sizeof *n) : NULL;
    tsr_comm_t *c = n ? tsr_comm_new(&nccl_iface, n, rank, size) : NULL;
    if (!c) {
        free(n);
        ncclCommAbort(comm);
        if (r != ncclSuccess)
            return tsr_comm_errorf(parent, TSR_EIO, op, "rank/size: %s", ncclGetErrorString(r));
        return tsr_comm_errorf(parent, TSR_ENOMEM, op, "out of memory");
    }
    n->comm = comm;
    n->stream = stream;
    n->device = device;
    c->timeout_s = timeout_s;
    *out = c;
    return 0;
}

static ncclConfig_t nonblocking_config(void)
{
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    return config;
}

/* Non-blocking split (as PyTorch does it, NVIDIA/nccl#1472): the parent is in progress until the
 * split is done, and the child's handle is written from NCCL's thread after that, so wait for the
 * parent, then for the handle, then for the child to settle. */
static int nccl_split(tsr_comm_t *c, int color, int key, tsr_comm_t **out)
{
    static const char op[] = "split";
    struct nccl_ctx *n = c->ctx;
    int rc = alive(c, op);
    if (rc) return rc;
    ncclConfig_t config = nonblocking_config();
    ncclComm_t sub = NULL;
    ncclResult_t r = ncclCommSplit(n->comm, color == TSR_COMM_NO_COLOR ? NCCL_SPLIT_NOCOLOR : color,
                                   key, &sub, &config);
    if (r != ncclSuccess && r != ncclInProgress) return nccl_fail(c, op, "ncclCommSplit", r);
    rc = settle(c, n->comm, op, "ncclCommSplit", r, c->timeout_s);
    if (rc || color == TSR_COMM_NO_COLOR) return rc;
    double t0 = now_s();
    ncclComm_t child;
    while (!(child = __atomic_load_n(&sub, __ATOMIC_ACQUIRE))) {
        double waited = now_s() - t0;
        if (c->timeout_s > 0 && waited > c->timeout_s)
            return tsr_comm_errorf(c, TSR_EIO, op, "ncclCommSplit: no communicator after %.0f s",
                                   c->timeout_s);
        pause_poll(waited);
    }
    rc = settle(NULL, child, op, "ncclCommSplit (child)", ncclInProgress, c->timeout_s);
    if (rc) return rc;
    return wrap(c, op, child, n->device, n->stream, c->timeout_s, out);
}

int tsr_comm_nccl_unique_id(void *id)
{
    if (!id) return tsr_comm_errorf(NULL, TSR_EINVAL, "nccl_unique_id", "id is NULL");
    ncclUniqueId u;
    ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess)
        return tsr_comm_errorf(NULL, TSR_EIO, "nccl_unique_id", "ncclGetUniqueId: %s",
                               ncclGetErrorString(r));
    memcpy(id, u.internal, sizeof u.internal);
    return 0;
}

int tsr_comm_nccl_from_id(const void *id, int rank, int size, int device, void *cuda_stream,
                          tsr_comm_t **out)
{
    static const char op[] = "nccl_from_id";
    if (!out) return tsr_comm_errorf(NULL, TSR_EINVAL, op, "out is NULL");
    *out = NULL;
    if (!id || size < 1 || rank < 0 || rank >= size || device < 0)
        return tsr_comm_errorf(NULL, TSR_EINVAL, op, "bad arguments: rank %d of %d, device %d",
                               rank, size, device);
    int prev = 0;
    cudaError_t e = cudaGetDevice(&prev);
    if (e == cudaSuccess) e = cudaSetDevice(device);
    if (e != cudaSuccess)
        return tsr_comm_errorf(NULL, TSR_EIO, op, "rank %d of %d: cudaSetDevice(%d): %s", rank,
                               size, device, cudaGetErrorString(e));
    ncclUniqueId u;
    memcpy(u.internal, id, sizeof u.internal);
    ncclConfig_t config = nonblocking_config();
    ncclComm_t comm = NULL;
    ncclResult_t r = ncclCommInitRankConfig(&comm, size, u, rank, &config);
    int rc;
    if (r != ncclSuccess && r != ncclInProgress) {
        rc = tsr_comm_errorf(NULL, TSR_EIO, op, "rank %d of %d: ncclCommInitRankConfig: %s", rank,
                             size, ncclGetErrorString(r));
        if (comm) ncclCommAbort(comm);
    } else {
        rc = settle(NULL, comm, op, "ncclCommInitRankConfig", r, TSR_COMM_DEFAULT_TIMEOUT_S);
        if (!rc)
            rc = wrap(NULL, op, comm, device, (cudaStream_t)cuda_stream, TSR_COMM_DEFAULT_TIMEOUT_S,
                      out);
    }
    cudaSetDevice(prev);
    return rc;
}

int tsr_comm_nccl_from_mpi(tsr_comm_t *boot, int device, void *cuda_stream, tsr_comm_t **out)
{
    static const char op[] = "nccl_from_mpi";
    if (!out) return tsr_comm_errorf(boot, TSR_EINVAL, op, "out is NULL");
    *out = NULL;
    if (!boot) return tsr_comm_errorf(NULL, TSR_EINVAL, op, "boot communicator is NULL");
    /* The root's status travels with the id, so a root that cannot make one fails every rank
     * instead of leaving them waiting. */
    struct {
        int32_t status;
        unsigned char id[NCCL_UNIQUE_ID_BYTES];
    } msg;
    memset(&msg, 0, sizeof msg);
    if (tsr_comm_rank(boot) == 0) msg.status = tsr_comm_nccl_unique_id(msg.id);
    int rc = tsr_comm_broadcast_host(boot, &msg, sizeof msg, 0);
    if (rc) return rc;
    if (msg.status)
        return tsr_comm_errorf(boot, msg.status, op, "rank 0 could not make an NCCL id%s%s",
                               tsr_comm_rank(boot) == 0 ? ": " : "",
                               tsr_comm_rank(boot) == 0 ? tsr_last_error() : "");
    return tsr_comm_nccl_from_id(msg.id, tsr_comm_rank(boot), tsr_comm_size(boot), device,
                                 cuda_stream, out);
}
