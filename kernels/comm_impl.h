/* What a communicator implementation provides: a vtable plus its context (the ggml shape, like
 * backend_impl.h). Only implementations (and tests reaching for hooks) include this; everyone else
 * sees kernels/comm.h.
 *
 * kernels/comm.c checks arguments (ranges inside buffers, roots, peers, the kind of buffer) and
 * turns buffers and offsets into addresses before calling a slot, so slots see valid pointers and
 * counts > 0 only. */
#ifndef TSR_KERNELS_COMM_IMPL_H
#define TSR_KERNELS_COMM_IMPL_H

#include <stddef.h>

#include "kernels/comm.h"

struct tsr_comm_iface {
    const char *name;
    /* 1: data operations take device addresses (buf->data, buffers with no host view);
     * 0: host-visible addresses (buf->host). */
    int device_buffers;
    void (*free)(tsr_comm_t *c); /* frees ctx; comm.c frees c */
    int (*split)(tsr_comm_t *c, int color, int key, tsr_comm_t **out); /* optional */
    int (*all_reduce_sum)(tsr_comm_t *c, float *p, size_t n);
    /* In place when send == recv + rank·bytes_per_rank; the ranges never overlap otherwise. */
    int (*all_gather)(tsr_comm_t *c, const void *send, void *recv, size_t bytes_per_rank);
    int (*broadcast)(tsr_comm_t *c, void *p, size_t bytes, int root);
    int (*send)(tsr_comm_t *c, const void *p, size_t bytes, int peer);
    int (*recv)(tsr_comm_t *c, void *p, size_t bytes, int peer);
    /* Either count may be 0 (nothing that way). */
    int (*sendrecv)(tsr_comm_t *c, const void *s, size_t sbytes, int dst, void *r, size_t rbytes,
                    int src);
    /* Segments back to back in rank order; sizes may be 0, and the slot is called even when every
     * size is (it is collective). */
    int (*all_to_all_v)(tsr_comm_t *c, const void *send, const size_t *send_bytes, void *recv,
                        const size_t *recv_bytes);
    int (*barrier)(tsr_comm_t *c);
    int (*sync)(tsr_comm_t *c); /* optional: NULL when operations complete before returning */
    /* Host-memory messages; NULL when device_buffers == 0 (the data slots take host memory). */
    int (*broadcast_host)(tsr_comm_t *c, void *p, size_t bytes, int root);
    int (*send_host)(tsr_comm_t *c, const void *p, size_t bytes, int peer);
    int (*recv_host)(tsr_comm_t *c, void *p, size_t bytes, int peer);
};

struct tsr_comm {
    const struct tsr_comm_iface *i;
    void *ctx;
    int rank, size;
    double timeout_s; /* <= 0: wait forever */
};

/* Seconds a blocking wait may last by default (tsr_comm_set_timeout()), init included. */
#define TSR_COMM_DEFAULT_TIMEOUT_S 600.0

/* A communicator around ctx with the default timeout; NULL (message set) when out of memory. */
tsr_comm_t *tsr_comm_new(const struct tsr_comm_iface *i, void *ctx, int rank, int size);

/* Records "comm <op> (<impl>, rank r of n): <message>" and returns code. */
int tsr_comm_errorf(const tsr_comm_t *c, int code, const char *op, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* MPI counts are int: the MPI implementation splits larger messages into pieces of at most this
 * many elements (INT_MAX by default). Tests lower it to exercise the splitting on small buffers;
 * every rank must use the same value. */
void tsr_comm_mpi_set_max_chunk(size_t elems);

#endif
