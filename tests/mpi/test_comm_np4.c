/* kernels/comm.h over MPI on CPU buffers, with 4 ranks (test_comm_np3.c runs the same checks on 3:
 * the default model's TP layout). Every rank runs this whole program. A failed check prints the
 * rank, the line and the last error, then MPI_Abort()s, so mpirun ends every rank with a nonzero
 * exit instead of leaving the others blocked in a collective.
 *
 * Each rank can compute every rank's data (a counter-based hash of seed, rank and index), so it
 * checks sums and gathers against expectations it computes alone. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mpi.h>

#include "common/status.h"
#include "kernels/backend.h"
#include "kernels/backend_impl.h"
#include "kernels/comm.h"
#include "kernels/comm_impl.h"

#ifndef COMM_TEST_NP
#define COMM_TEST_NP 4
#endif

static int g_rank = -1;

static void fail(const char *file, int line, const char *what)
{
    fprintf(stderr, "rank %d: %s:%d: check failed: %s (last error: %s)\n", g_rank, file, line, what,
            tsr_last_error());
    fflush(stderr);
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin) MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
}

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) fail(__FILE__, __LINE__, #cond);                                              \
    } while (0)
#define CHECK_OK(call)       CHECK((call) == 0)
#define CHECK_RC(call, code) CHECK((call) == (code))

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Rank r's element i of test `seed`, in [-1, 1). */
static float val(uint64_t seed, int r, size_t i)
{
    uint64_t h = mix(mix(seed * 1000003u + (uint64_t)r) + i);
    return (float)((double)(h >> 40) / (double)(1ull << 23) - 1.0);
}

static uint8_t byte_of(uint64_t seed, int r, size_t i)
{
    return (uint8_t)mix(mix(seed ^ ((uint64_t)r << 32)) + i);
}

static tsr_backend_t *g_cpu;

static tsr_buf_t *alloc(size_t n)
{
    tsr_buf_t *b = tsr_buf_alloc(g_cpu, n);
    CHECK(b && tsr_buf_host(b));
    memset(tsr_buf_host(b), 0xAB, n); /* poison */
    return b;
}

/* All-reduce of n floats at a float offset inside a larger buffer: the sum of every rank's data,
 * the bytes around it untouched. world_ranks[r] is the world rank of group rank r. */
static void check_all_reduce(tsr_comm_t *c, const int *world_ranks, size_t n, uint64_t seed)
{
    const size_t pad = 3;
    tsr_buf_t *b = alloc((n + 2 * pad) * sizeof(float));
    float *f = tsr_buf_host(b);
    int me = world_ranks[tsr_comm_rank(c)];
    for (size_t i = 0; i < n; i++) f[pad + i] = val(seed, me, i);
    CHECK_OK(tsr_comm_all_reduce_sum(c, b, pad * sizeof(float), n));
    const uint8_t *raw = tsr_buf_host(b);
    for (size_t i = 0; i < pad * sizeof(float); i++) {
        CHECK(raw[i] == 0xAB);
        CHECK(raw[(pad + n) * sizeof(float) + i] == 0xAB);
    }
    for (size_t i = 0; i < n; i++) {
        double want = 0;
        for (int r = 0; r < tsr_comm_size(c); r++) want += val(seed, world_ranks[r], i);
        if (fabs(f[pad + i] - want) > 1e-5) {
            fprintf(stderr, "rank %d: element %zu of %zu: got %.9g want %.9g\n", g_rank, i, n,
                    f[pad + i], want);
            CHECK(!"all_reduce_sum result");
        }
    }
    tsr_buf_free(b);
}

static void check_all_gather(tsr_comm_t *c, size_t bpr, uint64_t seed, int in_place)
{
    int me = tsr_comm_rank(c), n = tsr_comm_size(c);
    size_t off = 5;
    tsr_buf_t *recv = alloc(off + bpr * (size_t)n + 7);
    tsr_buf_t *send = in_place ? recv : alloc(bpr + 1);
    size_t send_off = in_place ? off + (size_t)me * bpr : 1;
    uint8_t *s = (uint8_t *)tsr_buf_host(send) + send_off;
    for (size_t i = 0; i < bpr; i++) s[i] = byte_of(seed, me, i);
    CHECK_OK(tsr_comm_all_gather(c, send, send_off, recv, off, bpr));
    const uint8_t *r = tsr_buf_host(recv);
    for (size_t i = 0; i < off; i++) CHECK(r[i] == 0xAB);
    for (int k = 0; k < n; k++)
        for (size_t i = 0; i < bpr; i++) CHECK(r[off + (size_t)k * bpr + i] == byte_of(seed, k, i));
    for (size_t i = 0; i < 7; i++) CHECK(r[off + bpr * (size_t)n + i] == 0xAB);
    if (!in_place) tsr_buf_free(send);
    tsr_buf_free(recv);
}

static void check_broadcast(tsr_comm_t *c, size_t bytes, uint64_t seed)
{
    for (int root = 0; root < tsr_comm_size(c); root++) {
        tsr_buf_t *b = alloc(bytes + 2);
        uint8_t *p = tsr_buf_host(b);
        if (tsr_comm_rank(c) == root)
            for (size_t i = 0; i < bytes; i++) p[1 + i] = byte_of(seed, root, i);
        CHECK_OK(tsr_comm_broadcast(c, b, 1, bytes, root));
        CHECK(p[0] == 0xAB && p[bytes + 1] == 0xAB);
        for (size_t i = 0; i < bytes; i++) CHECK(p[1 + i] == byte_of(seed, root, i));
        tsr_buf_free(b);
    }
}

/* Rank r sends to r+1 and receives from r-1: with send/recv (rank 0 sends first, the others
 * receive first, so the chain unrolls) and with sendrecv (everyone at once). */
static void check_ring(tsr_comm_t *c, size_t bytes, uint64_t seed)
{
    int me = tsr_comm_rank(c), n = tsr_comm_size(c);
    int next = (me + 1) % n, prev = (me + n - 1) % n;
    tsr_buf_t *s = alloc(bytes), *r = alloc(bytes);
    uint8_t *sp = tsr_buf_host(s), *rp = tsr_buf_host(r);
    for (size_t i = 0; i < bytes; i++) sp[i] = byte_of(seed, me, i);
    if (me == 0) {
        CHECK_OK(tsr_comm_send(c, s, 0, bytes, next));
        CHECK_OK(tsr_comm_recv(c, r, 0, bytes, prev));
    } else {
        CHECK_OK(tsr_comm_recv(c, r, 0, bytes, prev));
        CHECK_OK(tsr_comm_send(c, s, 0, bytes, next));
    }
    for (size_t i = 0; i < bytes; i++) CHECK(rp[i] == byte_of(seed, prev, i));
    memset(rp, 0xAB, bytes);
    CHECK_OK(tsr_comm_sendrecv(c, s, 0, bytes, next, r, 0, bytes, prev));
    for (size_t i = 0; i < bytes; i++) CHECK(rp[i] == byte_of(seed, prev, i));
    /* Unequal sizes each way: send bytes/2 forward, receive bytes/2 from behind. */
    memset(rp, 0xAB, bytes);
    CHECK_OK(tsr_comm_sendrecv(c, s, 0, bytes / 2, next, r, 0, bytes / 2, prev));
    for (size_t i = 0; i < bytes / 2; i++) CHECK(rp[i] == byte_of(seed, prev, i));
    for (size_t i = bytes / 2; i < bytes; i++) CHECK(rp[i] == 0xAB);
    tsr_buf_free(s);
    tsr_buf_free(r);
}

static void check_host_variants(tsr_comm_t *c)
{
    int me = tsr_comm_rank(c), n = tsr_comm_size(c);
    struct {
        int32_t step, n_tokens;
        int64_t ids[37];
    } d;
    for (int root = 0; root < n; root++) {
        memset(&d, 0, sizeof d);
        if (me == root) {
            d.step = 1000 + root;
            d.n_tokens = 37;
            for (int i = 0; i < 37; i++) d.ids[i] = (int64_t)root << 40 | i;
        }
        CHECK_OK(tsr_comm_broadcast_host(c, &d, sizeof d, root));
        CHECK(d.step == 1000 + root && d.n_tokens == 37);
        for (int i = 0; i < 37; i++) CHECK(d.ids[i] == ((int64_t)root << 40 | i));
    }
    /* The last rank sends sampled ids back to the leader (PP's return path). */
    int32_t toks[5] = {0};
    if (me == n - 1) {
        for (int i = 0; i < 5; i++) toks[i] = 7 * i + n;
        CHECK_OK(tsr_comm_send_host(c, toks, sizeof toks, 0));
    } else if (me == 0) {
        CHECK_OK(tsr_comm_recv_host(c, toks, sizeof toks, n - 1));
        for (int i = 0; i < 5; i++) CHECK(toks[i] == 7 * i + n);
    }
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The last rank arrives 0.2 s late: nobody may leave the barrier before it arrives. */
static void check_barrier(tsr_comm_t *c)
{
    CHECK_OK(tsr_comm_barrier(c));
    double t0 = now_s();
    if (tsr_comm_rank(c) == tsr_comm_size(c) - 1) {
        struct timespec ts = {0, 200 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    CHECK_OK(tsr_comm_barrier(c));
    CHECK(now_s() - t0 >= 0.1);
}

/* Bytes rank i sends rank j in check_all_to_all_v: some pairs nothing, the others unequal. */
static size_t a2a_bytes(int i, int j, size_t unit)
{
    return (size_t)((i + 2 * j) % 3) * unit + (size_t)(i == j) * 5;
}

/* Segments of unequal sizes (some empty) between every pair, self included, at offsets inside
 * larger buffers: each rank's recv holds every sender's segment for it, in rank order, and the
 * bytes around are untouched. */
static void check_all_to_all_v(tsr_comm_t *c, size_t unit, uint64_t seed)
{
    int me = tsr_comm_rank(c), n = tsr_comm_size(c);
    size_t sb[64], rb[64], st = 0, rt = 0;
    CHECK(n <= 64);
    for (int j = 0; j < n; j++) {
        st += sb[j] = a2a_bytes(me, j, unit);
        rt += rb[j] = a2a_bytes(j, me, unit);
    }
    tsr_buf_t *s = alloc(st + 3), *r = alloc(rt + 5 + 7);
    uint8_t *sp = (uint8_t *)tsr_buf_host(s) + 3, *rp = tsr_buf_host(r);
    for (int j = 0, o = 0; j < n; o += (int)sb[j++])
        for (size_t i = 0; i < sb[j]; i++) sp[o + i] = byte_of(seed, me * 64 + j, i);
    CHECK_OK(tsr_comm_all_to_all_v(c, s, 3, sb, r, 5, rb));
    for (size_t i = 0; i < 5; i++) CHECK(rp[i] == 0xAB);
    size_t o = 5;
    for (int j = 0; j < n; o += rb[j++])
        for (size_t i = 0; i < rb[j]; i++) CHECK(rp[o + i] == byte_of(seed, j * 64 + me, i));
    for (size_t i = 0; i < 7; i++) CHECK(rp[o + i] == 0xAB);
    tsr_buf_free(s);
    tsr_buf_free(r);
}

static void check_core(tsr_comm_t *c, const int *world_ranks, uint64_t seed)
{
    static const size_t sizes[] = {1, 1000, 1u << 20};
    for (size_t k = 0; k < 3; k++) check_all_reduce(c, world_ranks, sizes[k], seed + k);
    check_all_gather(c, 1, seed + 10, 0);
    check_all_gather(c, 1000, seed + 11, 0);
    check_all_gather(c, (1u << 18) + 3, seed + 12, 0);
    check_all_gather(c, 1000, seed + 13, 1);
    check_broadcast(c, 1, seed + 20);
    check_broadcast(c, 100000, seed + 21);
    check_ring(c, 1000, seed + 30);
    check_ring(c, (1u << 20) + 1, seed + 31);
    check_all_to_all_v(c, 1, seed + 40);
    check_all_to_all_v(c, 2500, seed + 41);
    check_host_variants(c);
    check_barrier(c);
}

/* Bad arguments fail on every rank alike, before anything is sent, and leave the group usable. */
static void check_bad_args(tsr_comm_t *c, const int *world_ranks)
{
    int me = tsr_comm_rank(c), n = tsr_comm_size(c);
    tsr_buf_t *b = alloc(64);
    char host[8];
    CHECK_RC(tsr_comm_broadcast(c, b, 0, 8, n), TSR_EINVAL);
    CHECK(strstr(tsr_last_error(), "broadcast") && strstr(tsr_last_error(), "rank"));
    CHECK_RC(tsr_comm_broadcast(c, b, 0, 8, -1), TSR_EINVAL);
    CHECK_RC(tsr_comm_broadcast_host(c, host, sizeof host, n), TSR_EINVAL);
    CHECK_RC(tsr_comm_broadcast(c, b, 60, 8, 0), TSR_ERANGE);
    CHECK_RC(tsr_comm_broadcast(c, b, SIZE_MAX, 2, 0), TSR_ERANGE);
    CHECK_RC(tsr_comm_all_reduce_sum(c, b, 0, 17), TSR_ERANGE);
    CHECK_RC(tsr_comm_all_reduce_sum(c, b, 0, SIZE_MAX / 2), TSR_ERANGE);
    CHECK_RC(tsr_comm_all_reduce_sum(c, b, 2, 4), TSR_EINVAL);
    CHECK_RC(tsr_comm_all_reduce_sum(c, NULL, 0, 4), TSR_EINVAL);
    CHECK_RC(tsr_comm_all_gather(c, b, 0, b, 0, 64), TSR_ERANGE); /* recv needs 64·n */
    CHECK_RC(tsr_comm_all_gather(c, b, 10, b, 8, 4), TSR_EINVAL); /* overlaps, not a slot */
    CHECK_RC(tsr_comm_all_gather(c, b, 0, b, 0, SIZE_MAX / 2), TSR_ERANGE);
    CHECK_RC(tsr_comm_send(c, b, 0, 8, me), TSR_EINVAL);
    CHECK_RC(tsr_comm_recv(c, b, 0, 8, n), TSR_EINVAL);
    CHECK_RC(tsr_comm_recv(c, b, 0, 65, (me + 1) % n), TSR_ERANGE);
    CHECK_RC(tsr_comm_send_host(c, host, sizeof host, -1), TSR_EINVAL);
    CHECK_RC(tsr_comm_sendrecv(c, b, 0, 8, 0, b, 4, 8, 0), TSR_EINVAL); /* overlapping */
    CHECK_RC(tsr_comm_sendrecv(c, b, 0, 8, n, b, 8, 8, 0), TSR_EINVAL);
    CHECK_RC(tsr_comm_split(c, -5, 0, &(tsr_comm_t *){NULL}), TSR_EINVAL);
    size_t big[64], eight[64], zero[64] = {0}, self[64] = {0};
    for (int j = 0; j < n; j++) big[j] = 30, eight[j] = 8;
    self[me] = 4; /* 4 bytes to itself, none from itself */
    CHECK_RC(tsr_comm_all_to_all_v(c, b, 0, big, b, 0, zero), TSR_ERANGE);
    CHECK_RC(tsr_comm_all_to_all_v(c, b, 0, eight, b, 4, eight), TSR_EINVAL); /* overlapping */
    CHECK_RC(tsr_comm_all_to_all_v(c, b, 0, zero, b, 0, NULL), TSR_EINVAL);
    CHECK_RC(tsr_comm_all_to_all_v(c, b, 0, self, b, 32, zero), TSR_EINVAL);
    CHECK(strstr(tsr_last_error(), "to itself"));
    /* tsr_comm_agree: all succeed, or rank 1 fails alone and every rank hears of it. */
    CHECK_OK(tsr_comm_agree(c, 0));
    int st = me == 1 ? tsr_errorf(TSR_ENOMEM, "rank 1 ran out") : 0;
    CHECK_RC(tsr_comm_agree(c, st), me == 1 ? TSR_ENOMEM : TSR_EIO);
    CHECK(strstr(tsr_last_error(), me == 1 ? "rank 1 ran out" : "rank 1 failed"));
    /* Rank 0 expects 8 bytes from rank 1, which sends it 4: every rank fails, none waits. */
    size_t s4[64] = {0}, r8[64] = {0};
    if (me == 1) s4[0] = 4;
    if (me == 0) r8[1] = 8;
    CHECK_RC(tsr_comm_all_to_all_v(c, b, 0, s4, b, 32, r8), TSR_EINVAL);
    CHECK(strstr(tsr_last_error(), me == 0 ? "expects 8 bytes from rank 1, which sends 4"
                                           : "another rank's sizes do not match"));
    /* A buffer with no host view (a device backend's) is not for MPI. */
    struct tsr_buf dev = {.data = host, .size = sizeof host};
    CHECK_RC(tsr_comm_broadcast(c, &dev, 0, 4, 0), TSR_EINVAL);
    CHECK(strstr(tsr_last_error(), "host-visible"));
    /* Zero-size operations are no-ops on every rank. */
    CHECK_OK(tsr_comm_all_reduce_sum(c, b, 64, 0));
    CHECK_OK(tsr_comm_broadcast(c, b, 64, 0, 0));
    CHECK_OK(tsr_comm_all_to_all_v(c, NULL, 0, zero, NULL, 0, zero));
    tsr_buf_free(b);
    check_all_reduce(c, world_ranks, 10, 99); /* still in step */
}

/* Groups of the ranks with one color, ordered by key. */
static void check_split(tsr_comm_t *world, int color, int key, uint64_t seed)
{
    int me = tsr_comm_rank(world), n = tsr_comm_size(world);
    /* Every rank computes everyone's (color, key) to know its group's members in order. */
    int colors[64], keys[64];
    CHECK(n <= 64);
    colors[me] = color;
    keys[me] = key;
    for (int r = 0; r < n; r++) {
        CHECK_OK(tsr_comm_broadcast_host(world, &colors[r], sizeof colors[r], r));
        CHECK_OK(tsr_comm_broadcast_host(world, &keys[r], sizeof keys[r], r));
    }
    tsr_comm_t *g = (tsr_comm_t *)1;
    CHECK_OK(tsr_comm_split(world, color, key, &g));
    if (color == TSR_COMM_NO_COLOR) {
        CHECK(g == NULL);
        return;
    }
    int members[64], m = 0;
    for (int r = 0; r < n; r++)
        if (colors[r] == color) members[m++] = r;
    for (int i = 1; i < m; i++) /* insertion sort by (key, world rank) */
        for (int j = i;
             j > 0 && (keys[members[j]] < keys[members[j - 1]] ||
                       (keys[members[j]] == keys[members[j - 1]] && members[j] < members[j - 1]));
             j--) {
            int t = members[j];
            members[j] = members[j - 1];
            members[j - 1] = t;
        }
    CHECK(g != NULL);
    CHECK(tsr_comm_size(g) == m);
    CHECK(members[tsr_comm_rank(g)] == me);
    check_all_reduce(g, members, 1000, seed);
    check_all_reduce(g, members, 1u << 16, seed + 1);
    if (m > 1) check_ring(g, 4096, seed + 2);
    check_all_gather(g, 100, seed + 3, 0);
    tsr_comm_free(g);
}

int main(void)
{
    tsr_comm_t *world = NULL;
    CHECK_OK(tsr_comm_mpi_world(&world));
    g_rank = tsr_comm_rank(world);
    int n = tsr_comm_size(world);
    if (n != COMM_TEST_NP) {
        fprintf(stderr, "rank %d: expected %d ranks, got %d (run under mpirun -np %d)\n", g_rank,
                COMM_TEST_NP, n, COMM_TEST_NP);
        CHECK(n == COMM_TEST_NP);
    }
    CHECK(strcmp(tsr_comm_name(world), "mpi") == 0);
    g_cpu = tsr_backend_cpu_new(1);
    CHECK(g_cpu);
    int identity[64];
    for (int r = 0; r < 64; r++) identity[r] = r;

    check_core(world, identity, 1);
    check_bad_args(world, identity);

    /* MPI counts are int: with pieces lowered to 1000 elements the same checks cross piece
     * boundaries, unaligned ones included (all_gather slots of 2^18 + 3 bytes). */
    tsr_comm_mpi_set_max_chunk(1000);
    check_core(world, identity, 2);
    tsr_comm_mpi_set_max_chunk(0);

    /* TP groups (one PP stage) and PP groups (one TP index); keys reversed to check ordering. */
    check_split(world, g_rank / 2, g_rank, 100);
    check_split(world, g_rank % 2, -g_rank, 200);
    check_split(world, g_rank == 0 ? TSR_COMM_NO_COLOR : 1, 0, 300);

#ifndef TSR_HAVE_CUDA
    tsr_comm_t *nc = (tsr_comm_t *)1;
    CHECK_RC(tsr_comm_nccl_from_mpi(world, 0, NULL, &nc), TSR_EUNSUPPORTED);
    CHECK(nc == NULL);
#endif

    tsr_backend_free(g_cpu);
    tsr_comm_free(world); /* finalizes MPI: we initialized it */
    int fin = 0;
    MPI_Finalized(&fin);
    CHECK(fin);
    printf("rank %d of %d: comm checks passed\n", g_rank, n);
    return 0;
}
