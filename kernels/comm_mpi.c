/* The MPI communicator (Open MPI) on host memory: CPU ranks under mpirun or srun.
 *
 * Every communicator is our own duplicate or split with MPI_ERRORS_RETURN, so a failure comes back
 * as a code and a message instead of aborting the job, and our traffic never matches messages the
 * application sends on MPI_COMM_WORLD. MPI counts are int: larger messages go in pieces of at most
 * max_chunk elements (a derived datatype keeps all_gather's rank slots in place). */
#include "kernels/comm_impl.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "common/log.h"
#include "common/status.h"

#define TAG     7 /* one tag for every point-to-point message: they stay in send order */
#define TAG_A2A 8 /* all_to_all_v's pieces, apart from the application's messages */

struct mpi_ctx {
    MPI_Comm comm;
};

static size_t max_chunk = INT_MAX;
/* MPI communicators we made and have not freed; MPI is finalized with the last one if we
 * initialized it. Communicator creation is serialized by the caller (one thread at a time). */
static int n_live;
static int we_initialized;

void tsr_comm_mpi_set_max_chunk(size_t elems)
{
    max_chunk = elems == 0 || elems > INT_MAX ? INT_MAX : elems;
}

static MPI_Comm comm_of(tsr_comm_t *c)
{
    return ((struct mpi_ctx *)c->ctx)->comm;
}

static int mpi_fail(tsr_comm_t *c, const char *op, int err)
{
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(err, s, &len) != MPI_SUCCESS) len = 0;
    s[len < (int)sizeof s ? len : (int)sizeof s - 1] = '\0';
    return tsr_comm_errorf(c, TSR_EIO, op, "MPI error %d: %s", err, len ? s : "(no description)");
}

#define MPI_TRY(c, op, call)                                                                       \
    do {                                                                                           \
        int _e = (call);                                                                           \
        if (_e != MPI_SUCCESS) return mpi_fail(c, op, _e);                                         \
    } while (0)

static size_t min_sz(size_t a, size_t b)
{
    return a < b ? a : b;
}

static int mpi_all_reduce_sum(tsr_comm_t *c, float *p, size_t n)
{
    for (size_t done = 0; done < n;) {
        size_t k = min_sz(n - done, max_chunk);
        MPI_TRY(c, "all_reduce_sum",
                MPI_Allreduce(MPI_IN_PLACE, p + done, (int)k, MPI_FLOAT, MPI_SUM, comm_of(c)));
        done += k;
    }
    return 0;
}

/* One piece [o, o + k) of every rank's slot: the receive type is k bytes with an extent of a whole
 * slot, so one count of it per rank lands at recv + r·slot + o. */
static int gather_piece(tsr_comm_t *c, const char *s, char *r, size_t slot, size_t o, size_t k,
                        int in_place)
{
    static const char op[] = "all_gather";
    MPI_Datatype piece, strided;
    MPI_TRY(c, op, MPI_Type_contiguous((int)k, MPI_BYTE, &piece));
    int e = MPI_Type_create_resized(piece, 0, (MPI_Aint)slot, &strided);
    if (e == MPI_SUCCESS) {
        e = MPI_Type_commit(&piece);
        if (e == MPI_SUCCESS) e = MPI_Type_commit(&strided);
        if (e == MPI_SUCCESS)
            e = MPI_Allgather(in_place ? MPI_IN_PLACE : s + o, 1, piece, r + o, 1, strided,
                              comm_of(c));
        MPI_Type_free(&strided);
    }
    MPI_Type_free(&piece);
    return e == MPI_SUCCESS ? 0 : mpi_fail(c, op, e);
}

static int mpi_all_gather(tsr_comm_t *c, const void *send, void *recv, size_t bpr)
{
    const char *s = send;
    char *r = recv;
    int in_place = s == r + (size_t)c->rank * bpr;
    if (bpr <= max_chunk) {
        MPI_TRY(c, "all_gather",
                MPI_Allgather(in_place ? MPI_IN_PLACE : s, (int)bpr, MPI_BYTE, r, (int)bpr,
                              MPI_BYTE, comm_of(c)));
        return 0;
    }
    for (size_t o = 0; o < bpr;) {
        size_t k = min_sz(bpr - o, max_chunk);
        int rc = gather_piece(c, s, r, bpr, o, k, in_place);
        if (rc) return rc;
        o += k;
    }
    return 0;
}

static int mpi_broadcast(tsr_comm_t *c, void *p, size_t bytes, int root)
{
    for (size_t o = 0; o < bytes;) {
        size_t k = min_sz(bytes - o, max_chunk);
        MPI_TRY(c, "broadcast", MPI_Bcast((char *)p + o, (int)k, MPI_BYTE, root, comm_of(c)));
        o += k;
    }
    return 0;
}

static int mpi_send(tsr_comm_t *c, const void *p, size_t bytes, int peer)
{
    for (size_t o = 0; o < bytes;) {
        size_t k = min_sz(bytes - o, max_chunk);
        MPI_TRY(c, "send", MPI_Send((const char *)p + o, (int)k, MPI_BYTE, peer, TAG, comm_of(c)));
        o += k;
    }
    return 0;
}

static int mpi_recv(tsr_comm_t *c, void *p, size_t bytes, int peer)
{
    for (size_t o = 0; o < bytes;) {
        size_t k = min_sz(bytes - o, max_chunk);
        MPI_Status st;
        int got = 0;
        MPI_TRY(c, "recv", MPI_Recv((char *)p + o, (int)k, MPI_BYTE, peer, TAG, comm_of(c), &st));
        MPI_TRY(c, "recv", MPI_Get_count(&st, MPI_BYTE, &got));
        if ((size_t)got != k)
            return tsr_comm_errorf(c, TSR_EINVAL, "recv",
                                   "rank %d sent %d bytes where %zu were expected (at byte %zu)",
                                   peer, got, k, o);
        o += k;
    }
    return 0;
}

/* All receives are posted before the first send, so two ranks exchanging (or a ring) cannot both
 * block in a send. One request per piece: one each way below 2 GiB. */
static int mpi_sendrecv(tsr_comm_t *c, const void *s, size_t sbytes, int dst, void *r,
                        size_t rbytes, int src)
{
    static const char op[] = "sendrecv";
    size_t n_req = rbytes ? (rbytes - 1) / max_chunk + 1 : 0;
    MPI_Request one, *req = n_req > 1 ? malloc(n_req * sizeof *req) : &one;
    if (!req) return tsr_comm_errorf(c, TSR_ENOMEM, op, "out of memory for %zu requests", n_req);
    size_t posted = 0;
    int e = MPI_SUCCESS;
    for (size_t o = 0; o < rbytes && e == MPI_SUCCESS; posted++) {
        size_t k = min_sz(rbytes - o, max_chunk);
        e = MPI_Irecv((char *)r + o, (int)k, MPI_BYTE, src, TAG, comm_of(c), &req[posted]);
        if (e != MPI_SUCCESS) break;
        o += k;
    }
    int rc = e == MPI_SUCCESS ? mpi_send(c, s, sbytes, dst) : mpi_fail(c, op, e);
    if (rc) {
        /* Leave no receive posted into memory the caller may free. */
        for (size_t j = 0; j < posted; j++) {
            MPI_Cancel(&req[j]);
            MPI_Request_free(&req[j]);
        }
    } else if (posted) {
        e = MPI_Waitall((int)posted, req, MPI_STATUSES_IGNORE);
        if (e != MPI_SUCCESS) rc = mpi_fail(c, op, e);
    }
    if (req != &one) free(req);
    return rc;
}

/* Pieces of at most max_chunk bytes a segment of n bytes goes in. */
static size_t n_pieces(size_t n)
{
    return n ? (n - 1) / max_chunk + 1 : 0;
}

/* Nonblocking receives from every peer, then sends to every peer, then one wait: counts and
 * displacements of any size (MPI_Alltoallv's are int), and no rank's choice depends on sizes the
 * others do not know. Pieces between two ranks match in order (one tag, MPI's non-overtaking
 * rule). This rank's own segment is copied. */
static int mpi_all_to_all_v(tsr_comm_t *c, const void *send, const size_t *sb, void *recv,
                            const size_t *rb)
{
    static const char op[] = "all_to_all_v";
    const char *s = send;
    char *r = recv;
    size_t n_req = 0, so = 0, ro = 0;
    /* The sizes first: every rank learns what each peer will send it, and all agree (one flag,
     * reduced) whether every pair matches, so a mismatch fails on every rank alike instead of
     * leaving a receive waiting for bytes that never come or taking bytes it did not expect. */
    uint64_t *told = malloc(2 * (size_t)c->size * sizeof *told), *mine = told + c->size;
    if (!told) return tsr_comm_errorf(c, TSR_ENOMEM, op, "out of memory for %d sizes", c->size);
    for (int p = 0; p < c->size; p++) mine[p] = sb[p];
    int e = MPI_Alltoall(mine, 1, MPI_UINT64_T, told, 1, MPI_UINT64_T, comm_of(c)), bad = -1;
    for (int p = 0; e == MPI_SUCCESS && p < c->size && bad < 0; p++)
        if (told[p] != rb[p]) bad = p;
    size_t sent = bad >= 0 ? (size_t)told[bad] : 0;
    int any = bad >= 0;
    free(told);
    if (e == MPI_SUCCESS) e = MPI_Allreduce(MPI_IN_PLACE, &any, 1, MPI_INT, MPI_MAX, comm_of(c));
    if (e != MPI_SUCCESS) return mpi_fail(c, op, e);
    if (bad == c->rank)
        return tsr_comm_errorf(c, TSR_EINVAL, op, "sends %zu bytes to itself but receives %zu",
                               sent, rb[bad]);
    if (bad >= 0)
        return tsr_comm_errorf(c, TSR_EINVAL, op, "expects %zu bytes from rank %d, which sends %zu",
                               rb[bad], bad, sent);
    if (any)
        return tsr_comm_errorf(c, TSR_EINVAL, op, "another rank's sizes do not match its peer's");
    for (int p = 0; p < c->size; p++)
        if (p != c->rank) n_req += n_pieces(sb[p]) + n_pieces(rb[p]);
    MPI_Request *req = malloc((n_req ? n_req : 1) * sizeof *req);
    if (!req) return tsr_comm_errorf(c, TSR_ENOMEM, op, "out of memory for %zu requests", n_req);
    size_t posted = 0;
    for (int pass = 0; pass < 2 && e == MPI_SUCCESS; pass++) { /* receives, then sends */
        size_t off = 0;
        for (int p = 0; p < c->size && e == MPI_SUCCESS; p++) {
            size_t n = pass ? sb[p] : rb[p];
            if (p == c->rank) {
                *(pass ? &so : &ro) = off;
            } else {
                for (size_t o = 0; o < n && e == MPI_SUCCESS; o += max_chunk) {
                    int k = (int)min_sz(n - o, max_chunk);
                    e = pass ? MPI_Isend(s + off + o, k, MPI_BYTE, p, TAG_A2A, comm_of(c),
                                         &req[posted])
                             : MPI_Irecv(r + off + o, k, MPI_BYTE, p, TAG_A2A, comm_of(c),
                                         &req[posted]);
                    if (e == MPI_SUCCESS) posted++;
                }
            }
            off += n;
        }
    }
    if (e == MPI_SUCCESS && sb[c->rank]) memcpy(r + ro, s + so, sb[c->rank]);
    int rc = 0;
    if (e != MPI_SUCCESS) {
        /* Leave nothing posted on memory the caller may free. */
        for (size_t j = 0; j < posted; j++) {
            MPI_Cancel(&req[j]);
            MPI_Request_free(&req[j]);
        }
        rc = mpi_fail(c, op, e);
    } else if (posted && (e = MPI_Waitall((int)posted, req, MPI_STATUSES_IGNORE)) != MPI_SUCCESS) {
        for (size_t j = 0; j < posted; j++) /* those still pending: completed ones are null */
            if (req[j] != MPI_REQUEST_NULL) {
                MPI_Cancel(&req[j]);
                MPI_Request_free(&req[j]);
            }
        rc = mpi_fail(c, op, e);
    }
    free(req);
    return rc;
}

static int mpi_barrier(tsr_comm_t *c)
{
    MPI_TRY(c, "barrier", MPI_Barrier(comm_of(c)));
    return 0;
}

static void mpi_free(tsr_comm_t *c)
{
    struct mpi_ctx *m = c->ctx;
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Comm_free(&m->comm);
    free(m);
    if (--n_live == 0 && we_initialized && !fin) {
        MPI_Finalize();
        we_initialized = 0;
    }
}

static int mpi_split(tsr_comm_t *c, int color, int key, tsr_comm_t **out);

static const struct tsr_comm_iface mpi_iface = {
    .name = "mpi",
    .device_buffers = 0,
    .free = mpi_free,
    .split = mpi_split,
    .all_reduce_sum = mpi_all_reduce_sum,
    .all_gather = mpi_all_gather,
    .broadcast = mpi_broadcast,
    .send = mpi_send,
    .recv = mpi_recv,
    .sendrecv = mpi_sendrecv,
    .all_to_all_v = mpi_all_to_all_v,
    .barrier = mpi_barrier,
};

/* Takes ownership of comm (freed on failure). */
static int wrap(tsr_comm_t *parent, const char *op, MPI_Comm comm, tsr_comm_t **out)
{
    int rank = 0, size = 0, e;
    struct mpi_ctx *m = NULL;
    e = MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    if (e == MPI_SUCCESS) e = MPI_Comm_rank(comm, &rank);
    if (e == MPI_SUCCESS) e = MPI_Comm_size(comm, &size);
    if (e != MPI_SUCCESS) {
        int rc = mpi_fail(parent, op, e);
        MPI_Comm_free(&comm);
        return rc;
    }
    m = malloc(sizeof *m);
    tsr_comm_t *c = m ? tsr_comm_new(&mpi_iface, m, rank, size) : NULL;
    if (!c) {
        free(m);
        MPI_Comm_free(&comm);
        return tsr_comm_errorf(parent, TSR_ENOMEM, op, "out of memory");
    }
    m->comm = comm;
    n_live++;
    *out = c;
    return 0;
}

static int mpi_split(tsr_comm_t *c, int color, int key, tsr_comm_t **out)
{
    MPI_Comm sub = MPI_COMM_NULL;
    MPI_TRY(
        c, "split",
        MPI_Comm_split(comm_of(c), color == TSR_COMM_NO_COLOR ? MPI_UNDEFINED : color, key, &sub));
    if (sub == MPI_COMM_NULL) return 0;
    int rc = wrap(c, "split", sub, out);
    if (!rc) (*out)->timeout_s = c->timeout_s;
    return rc;
}

int tsr_comm_mpi_world(tsr_comm_t **out)
{
    static const char op[] = "mpi_world";
    if (!out) return tsr_comm_errorf(NULL, TSR_EINVAL, op, "out is NULL");
    *out = NULL;
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (fin)
        return tsr_comm_errorf(NULL, TSR_EUNSUPPORTED, op,
                               "MPI was already finalized in this process and cannot restart");
    if (!init) {
        int provided = MPI_THREAD_SINGLE;
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS)
            return tsr_comm_errorf(NULL, TSR_EIO, op, "MPI_Init_thread failed");
        we_initialized = 1;
        if (provided < MPI_THREAD_SERIALIZED)
            tsr_log_warn("MPI gives thread level %d < SERIALIZED: make every MPI call from the "
                         "thread that created the world",
                         provided);
    }
    /* MPI_COMM_WORLD's error handler is the application's; the duplicate gets ours in wrap(). */
    MPI_Comm dup = MPI_COMM_NULL;
    int e = MPI_Comm_dup(MPI_COMM_WORLD, &dup);
    int rc = e == MPI_SUCCESS ? wrap(NULL, op, dup, out)
                              : tsr_errorf(TSR_EIO, "comm %s: MPI_Comm_dup failed (%d)", op, e);
    if (rc && n_live == 0 && we_initialized) {
        MPI_Finalize();
        we_initialized = 0;
    }
    return rc;
}
