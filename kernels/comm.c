/* Dispatch from the public collectives to an implementation's vtable, with the argument checks
 * every implementation would otherwise repeat. Every check here depends only on arguments the
 * ranks agree on, so a bad call fails on every rank before anything is sent. */
#include "kernels/comm_impl.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/status.h"
#include "kernels/backend_impl.h"

tsr_comm_t *tsr_comm_new(const struct tsr_comm_iface *i, void *ctx, int rank, int size)
{
    tsr_comm_t *c = calloc(1, sizeof *c);
    if (!c) {
        tsr_errorf(TSR_ENOMEM, "out of memory allocating a communicator");
        return NULL;
    }
    c->i = i;
    c->ctx = ctx;
    c->rank = rank;
    c->size = size;
    c->timeout_s = TSR_COMM_DEFAULT_TIMEOUT_S;
    return c;
}

int tsr_comm_errorf(const tsr_comm_t *c, int code, const char *op, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!c) return tsr_errorf(code, "comm %s: %s", op, msg);
    return tsr_errorf(code, "comm %s (%s, rank %d of %d): %s", op, c->i->name, c->rank, c->size,
                      msg);
}

int tsr_comm_rank(const tsr_comm_t *c)
{
    return c->rank;
}

int tsr_comm_size(const tsr_comm_t *c)
{
    return c->size;
}

const char *tsr_comm_name(const tsr_comm_t *c)
{
    return c->i->name;
}

void tsr_comm_free(tsr_comm_t *c)
{
    if (!c) return;
    c->i->free(c);
    free(c);
}

void tsr_comm_set_timeout(tsr_comm_t *c, double seconds)
{
    c->timeout_s = seconds;
}

int tsr_comm_split(tsr_comm_t *c, int color, int key, tsr_comm_t **out)
{
    if (!out) return tsr_comm_errorf(c, TSR_EINVAL, "split", "out is NULL");
    *out = NULL;
    if (!c) return tsr_comm_errorf(c, TSR_EINVAL, "split", "communicator is NULL");
    if (color < 0 && color != TSR_COMM_NO_COLOR)
        return tsr_comm_errorf(c, TSR_EINVAL, "split", "color %d is negative", color);
    if (!c->i->split)
        return tsr_comm_errorf(c, TSR_EUNSUPPORTED, "split",
                               "not supported by this implementation");
    return c->i->split(c, color, key, out);
}

/* The address of [off, off + n) of buf as this implementation's data slots take it. */
static int buf_addr(tsr_comm_t *c, const char *op, tsr_buf_t *buf, size_t off, size_t n,
                    void **addr)
{
    if (!buf) return tsr_comm_errorf(c, TSR_EINVAL, op, "buffer is NULL");
    if (off > buf->size || n > buf->size - off)
        return tsr_comm_errorf(c, TSR_ERANGE, op, "[%zu, +%zu) lies outside a %zu-byte buffer", off,
                               n, buf->size);
    char *base;
    if (c->i->device_buffers) {
        if (buf->host)
            return tsr_comm_errorf(c, TSR_EINVAL, op,
                                   "needs a device buffer; this one is host memory");
        base = buf->data;
    } else {
        if (!buf->host)
            return tsr_comm_errorf(c, TSR_EINVAL, op,
                                   "needs a host-visible buffer; this one is device memory");
        base = buf->host;
    }
    if (!base && buf->size) return tsr_comm_errorf(c, TSR_EINVAL, op, "buffer has no memory");
    *addr = base + off;
    return 0;
}

static int check_rank(tsr_comm_t *c, const char *op, const char *what, int r)
{
    if (r < 0 || r >= c->size)
        return tsr_comm_errorf(c, TSR_EINVAL, op, "%s %d is not a rank of this group (0..%d)", what,
                               r, c->size - 1);
    return 0;
}

static int check_peer(tsr_comm_t *c, const char *op, int peer)
{
    int rc = check_rank(c, op, "peer", peer);
    if (rc) return rc;
    if (peer == c->rank)
        return tsr_comm_errorf(c, TSR_EINVAL, op, "peer %d is this rank itself", peer);
    return 0;
}

#define CHECK_COMM(c, op)                                                                          \
    do {                                                                                           \
        if (!(c)) return tsr_comm_errorf(NULL, TSR_EINVAL, op, "communicator is NULL");            \
    } while (0)

int tsr_comm_all_reduce_sum(tsr_comm_t *c, tsr_buf_t *buf, size_t off_bytes, size_t n_floats)
{
    static const char op[] = "all_reduce_sum";
    CHECK_COMM(c, op);
    if (off_bytes % sizeof(float))
        return tsr_comm_errorf(c, TSR_EINVAL, op, "offset %zu is not a multiple of 4", off_bytes);
    if (n_floats > SIZE_MAX / sizeof(float))
        return tsr_comm_errorf(c, TSR_ERANGE, op, "%zu floats overflow a size", n_floats);
    void *p;
    int rc = buf_addr(c, op, buf, off_bytes, n_floats * sizeof(float), &p);
    if (rc || n_floats == 0) return rc;
    return c->i->all_reduce_sum(c, p, n_floats);
}

int tsr_comm_all_gather(tsr_comm_t *c, tsr_buf_t *send, size_t send_off, tsr_buf_t *recv,
                        size_t recv_off, size_t bytes_per_rank)
{
    static const char op[] = "all_gather";
    CHECK_COMM(c, op);
    if (bytes_per_rank > SIZE_MAX / (size_t)c->size)
        return tsr_comm_errorf(c, TSR_ERANGE, op, "%zu bytes times %d ranks overflow a size",
                               bytes_per_rank, c->size);
    size_t total = bytes_per_rank * (size_t)c->size;
    void *s, *r;
    int rc = buf_addr(c, op, send, send_off, bytes_per_rank, &s);
    if (!rc) rc = buf_addr(c, op, recv, recv_off, total, &r);
    if (rc || bytes_per_rank == 0) return rc;
    /* In place is this rank's own slot; MPI and NCCL forbid any other aliasing. The ranges are
     * compared as offsets within one buffer, which needs no pointer arithmetic across objects. */
    if (send == recv) {
        size_t own = recv_off + (size_t)c->rank * bytes_per_rank;
        if (send_off != own && send_off < recv_off + total && recv_off < send_off + bytes_per_rank)
            return tsr_comm_errorf(c, TSR_EINVAL, op,
                                   "send [%zu, +%zu) overlaps recv [%zu, +%zu) but is not this "
                                   "rank's slot (offset %zu)",
                                   send_off, bytes_per_rank, recv_off, total, own);
    }
    return c->i->all_gather(c, s, r, bytes_per_rank);
}

int tsr_comm_broadcast(tsr_comm_t *c, tsr_buf_t *buf, size_t off, size_t bytes, int root)
{
    static const char op[] = "broadcast";
    CHECK_COMM(c, op);
    int rc = check_rank(c, op, "root", root);
    void *p;
    if (!rc) rc = buf_addr(c, op, buf, off, bytes, &p);
    if (rc || bytes == 0) return rc;
    return c->i->broadcast(c, p, bytes, root);
}

int tsr_comm_send(tsr_comm_t *c, tsr_buf_t *buf, size_t off, size_t bytes, int peer)
{
    static const char op[] = "send";
    CHECK_COMM(c, op);
    int rc = check_peer(c, op, peer);
    void *p;
    if (!rc) rc = buf_addr(c, op, buf, off, bytes, &p);
    if (rc || bytes == 0) return rc;
    return c->i->send(c, p, bytes, peer);
}

int tsr_comm_recv(tsr_comm_t *c, tsr_buf_t *buf, size_t off, size_t bytes, int peer)
{
    static const char op[] = "recv";
    CHECK_COMM(c, op);
    int rc = check_peer(c, op, peer);
    void *p;
    if (!rc) rc = buf_addr(c, op, buf, off, bytes, &p);
    if (rc || bytes == 0) return rc;
    return c->i->recv(c, p, bytes, peer);
}

int tsr_comm_sendrecv(tsr_comm_t *c, tsr_buf_t *sbuf, size_t soff, size_t sbytes, int dst,
                      tsr_buf_t *rbuf, size_t roff, size_t rbytes, int src)
{
    static const char op[] = "sendrecv";
    CHECK_COMM(c, op);
    int rc = check_rank(c, op, "destination", dst);
    if (!rc) rc = check_rank(c, op, "source", src);
    void *s = NULL, *r = NULL;
    if (!rc && sbytes) rc = buf_addr(c, op, sbuf, soff, sbytes, &s);
    if (!rc && rbytes) rc = buf_addr(c, op, rbuf, roff, rbytes, &r);
    if (rc) return rc;
    if (sbytes && rbytes && sbuf == rbuf && soff < roff + rbytes && roff < soff + sbytes)
        return tsr_comm_errorf(c, TSR_EINVAL, op, "send [%zu, +%zu) overlaps recv [%zu, +%zu)",
                               soff, sbytes, roff, rbytes);
    if (sbytes == 0 && rbytes == 0) return 0;
    return c->i->sendrecv(c, s, sbytes, dst, r, rbytes, src);
}

/* The sum of the n sizes of s, or TSR_ERANGE when it overflows. */
static int sum_sizes(tsr_comm_t *c, const char *op, const char *what, const size_t *s, size_t *sum)
{
    *sum = 0;
    for (int i = 0; i < c->size; i++) {
        if (s[i] > SIZE_MAX - *sum)
            return tsr_comm_errorf(c, TSR_ERANGE, op, "%s sizes overflow a size at rank %d", what,
                                   i);
        *sum += s[i];
    }
    return 0;
}

int tsr_comm_all_to_all_v(tsr_comm_t *c, tsr_buf_t *send, size_t send_off, const size_t *send_bytes,
                          tsr_buf_t *recv, size_t recv_off, const size_t *recv_bytes)
{
    static const char op[] = "all_to_all_v";
    CHECK_COMM(c, op);
    if (!send_bytes || !recv_bytes)
        return tsr_comm_errorf(c, TSR_EINVAL, op, "size arrays are NULL");
    if (!c->i->all_to_all_v)
        return tsr_comm_errorf(c, TSR_EUNSUPPORTED, op, "not supported by this implementation");
    size_t st, rt;
    void *s = NULL, *r = NULL;
    int rc = sum_sizes(c, op, "send", send_bytes, &st);
    if (!rc) rc = sum_sizes(c, op, "recv", recv_bytes, &rt);
    if (!rc && st) rc = buf_addr(c, op, send, send_off, st, &s);
    if (!rc && rt) rc = buf_addr(c, op, recv, recv_off, rt, &r);
    if (rc) return rc;
    if (send == recv && st && rt && send_off < recv_off + rt && recv_off < send_off + st)
        return tsr_comm_errorf(c, TSR_EINVAL, op, "send [%zu, +%zu) overlaps recv [%zu, +%zu)",
                               send_off, st, recv_off, rt);
    return c->i->all_to_all_v(c, s, send_bytes, r, recv_bytes);
}

int tsr_comm_barrier(tsr_comm_t *c)
{
    CHECK_COMM(c, "barrier");
    return c->i->barrier(c);
}

int tsr_comm_sync(tsr_comm_t *c)
{
    CHECK_COMM(c, "sync");
    return c->i->sync ? c->i->sync(c) : 0;
}

int tsr_comm_broadcast_host(tsr_comm_t *c, void *p, size_t bytes, int root)
{
    static const char op[] = "broadcast_host";
    CHECK_COMM(c, op);
    int rc = check_rank(c, op, "root", root);
    if (rc || bytes == 0) return rc;
    if (!p) return tsr_comm_errorf(c, TSR_EINVAL, op, "pointer is NULL");
    return c->i->broadcast_host ? c->i->broadcast_host(c, p, bytes, root)
                                : c->i->broadcast(c, p, bytes, root);
}

int tsr_comm_send_host(tsr_comm_t *c, const void *p, size_t bytes, int peer)
{
    static const char op[] = "send_host";
    CHECK_COMM(c, op);
    int rc = check_peer(c, op, peer);
    if (rc || bytes == 0) return rc;
    if (!p) return tsr_comm_errorf(c, TSR_EINVAL, op, "pointer is NULL");
    return c->i->send_host ? c->i->send_host(c, p, bytes, peer) : c->i->send(c, p, bytes, peer);
}

int tsr_comm_recv_host(tsr_comm_t *c, void *p, size_t bytes, int peer)
{
    static const char op[] = "recv_host";
    CHECK_COMM(c, op);
    int rc = check_peer(c, op, peer);
    if (rc || bytes == 0) return rc;
    if (!p) return tsr_comm_errorf(c, TSR_EINVAL, op, "pointer is NULL");
    return c->i->recv_host ? c->i->recv_host(c, p, bytes, peer) : c->i->recv(c, p, bytes, peer);
}

int tsr_comm_agree(tsr_comm_t *c, int status)
{
    static const char op[] = "agree";
    CHECK_COMM(c, op);
    /* (status, rank) of the first failed rank, gathered at rank 0 and broadcast */
    int32_t mine[2] = {status, status ? c->rank : -1}, first[2] = {mine[0], mine[1]}, rc = 0;
    if (c->rank != 0) {
        rc = tsr_comm_send_host(c, mine, sizeof mine, 0);
    } else {
        for (int p = 1; p < c->size && !rc; p++) {
            int32_t got[2];
            rc = tsr_comm_recv_host(c, got, sizeof got, p);
            if (!rc && got[0] && !first[0]) first[0] = got[0], first[1] = got[1];
        }
    }
    if (!rc) rc = tsr_comm_broadcast_host(c, first, sizeof first, 0);
    if (rc) return rc;
    if (status) return status;
    return first[0] ? tsr_comm_errorf(c, TSR_EIO, op, "rank %d failed (%d)", (int)first[1],
                                      (int)first[0])
                    : 0;
}

#ifndef TSR_HAVE_CUDA
/* Built without CUDA: the NCCL entry points exist so callers link, and say why they fail. */
int tsr_comm_nccl_from_mpi(tsr_comm_t *boot, int device, void *cuda_stream, tsr_comm_t **out)
{
    if (out) *out = NULL;
    return tsr_comm_errorf(boot, TSR_EUNSUPPORTED, "nccl_from_mpi",
                           "tessera was built without CUDA (TESSERA_CUDA=OFF)");
}

int tsr_comm_nccl_from_id(const void *id, int rank, int size, int device, void *cuda_stream,
                          tsr_comm_t **out)
{
    if (out) *out = NULL;
    return tsr_comm_errorf(NULL, TSR_EUNSUPPORTED, "nccl_from_id",
                           "tessera was built without CUDA (TESSERA_CUDA=OFF)");
}

int tsr_comm_nccl_unique_id(void *id)
{
    return tsr_comm_errorf(NULL, TSR_EUNSUPPORTED, "nccl_unique_id",
                           "tessera was built without CUDA (TESSERA_CUDA=OFF)");
}
#endif
