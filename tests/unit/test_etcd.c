/* The etcd client against a real etcd (started here with tsr_etcd_server_start; the test fails,
 * not skips, when etcd is missing): KV, txn, leases and keepalive, watches (order, lease expiry,
 * compaction, reconnect through a proxy that cuts the stream), and failures: nothing listening,
 * a peer that never answers, and servers that answer garbage. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/etcd.h"
#include "common/log.h"
#include "common/status.h"

static char tmpdir[] = "/tmp/tsr-etcd-test-XXXXXX";
static struct tsr_etcd_server srv;
static tsr_etcd_t *etcd;

/* ---- helpers ----------------------------------------------------------------------------- */

static void sleep_s(double s)
{
    usleep((useconds_t)(s * 1e6));
}

/* A loopback TCP socket bound to a free port; listening when backlog >= 0. */
static int tcp_socket(int backlog, int *port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    if (backlog >= 0) assert_int_equal(listen(fd, backlog), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static tsr_etcd_t *open_port(int port)
{
    char ep[64];
    tsr_etcd_t *e;
    snprintf(ep, sizeof ep, "http://127.0.0.1:%d", port);
    assert_int_equal(tsr_etcd_open(ep, &e), 0);
    return e;
}

/* Events seen by a watch, copied out of the callback. */
struct rec {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n;
    struct {
        enum tsr_etcd_event_type type;
        char key[64];
        char val[64];
        size_t val_len;
        int64_t rev, create_rev, lease;
    } ev[64];
};

static void rec_init(struct rec *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
}

static void rec_destroy(struct rec *r)
{
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
}

static void rec_cb(void *arg, const struct tsr_etcd_event *ev)
{
    struct rec *r = arg;
    pthread_mutex_lock(&r->mu);
    if (r->n < 64) {
        r->ev[r->n].type = ev->type;
        snprintf(r->ev[r->n].key, sizeof r->ev[r->n].key, "%s", ev->key);
        snprintf(r->ev[r->n].val, sizeof r->ev[r->n].val, "%s", ev->val);
        r->ev[r->n].val_len = ev->val_len;
        r->ev[r->n].rev = ev->mod_revision;
        r->ev[r->n].create_rev = ev->create_revision;
        r->ev[r->n].lease = ev->lease;
    }
    r->n++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Waits until the watch saw at least n events; returns how many it saw. */
static int rec_wait(struct rec *r, int n, double timeout_s)
{
    double end = tsr_now() + timeout_s;
    pthread_mutex_lock(&r->mu);
    while (r->n < n && tsr_now() < end) {
        pthread_mutex_unlock(&r->mu);
        usleep(10 * 1000);
        pthread_mutex_lock(&r->mu);
    }
    int got = r->n;
    pthread_mutex_unlock(&r->mu);
    return got;
}

static void expect_event(struct rec *r, int i, enum tsr_etcd_event_type type, const char *key,
                         const char *val, int64_t rev)
{
    assert_true(i < r->n);
    assert_int_equal(r->ev[i].type, type);
    assert_string_equal(r->ev[i].key, key);
    if (val) assert_string_equal(r->ev[i].val, val);
    if (rev) assert_int_equal(r->ev[i].rev, rev);
}

static int put_str(const char *key, const char *val, int64_t lease, int64_t *rev)
{
    return tsr_etcd_put(etcd, key, val, strlen(val), lease, rev);
}

/* ---- a fake HTTP server that answers every request with one canned response ---------------- */

struct fake {
    int fd, port;
    const char *reply; /* set before each request; the server thread only reads it */
    size_t reply_len;
    atomic_int stop, served;
    pthread_t th;
};

/* Reads one request: headers, then Content-Length bytes of body. */
static void read_request(int c)
{
    char buf[8192];
    size_t n = 0;
    char *hdr_end = NULL;
    while (!hdr_end && n + 1 < sizeof buf) {
        ssize_t r = read(c, buf + n, sizeof buf - 1 - n);
        if (r <= 0) return;
        n += (size_t)r;
        buf[n] = 0;
        hdr_end = strstr(buf, "\r\n\r\n");
    }
    if (!hdr_end) return;
    size_t body = 0;
    for (char *p = buf; p < hdr_end; p++)
        if (!strncasecmp(p, "\ncontent-length:", 16)) body = strtoul(p + 16, NULL, 10);
    size_t have = n - (size_t)(hdr_end + 4 - buf);
    while (have < body) {
        ssize_t r = read(c, buf, sizeof buf);
        if (r <= 0) return;
        have += (size_t)r;
    }
}

static void *fake_main(void *p)
{
    struct fake *f = p;
    while (!atomic_load(&f->stop)) {
        struct pollfd pfd = {.fd = f->fd, .events = POLLIN};
        if (poll(&pfd, 1, 50) <= 0) continue;
        int c = accept(f->fd, NULL, NULL);
        if (c < 0) continue;
        read_request(c);
        ssize_t w = write(c, f->reply, f->reply_len);
        (void)w;
        shutdown(c, SHUT_WR);
        usleep(20 * 1000); /* let the client read before the close */
        close(c);
        atomic_fetch_add(&f->served, 1);
    }
    return NULL;
}

static void fake_start(struct fake *f)
{
    memset(f, 0, sizeof *f);
    f->fd = tcp_socket(16, &f->port);
    f->reply = "";
    assert_int_equal(pthread_create(&f->th, NULL, fake_main, f), 0);
}

static void fake_set(struct fake *f, const char *reply)
{
    f->reply = reply;
    f->reply_len = strlen(reply);
}

static void fake_stop(struct fake *f)
{
    atomic_store(&f->stop, 1);
    pthread_join(f->th, NULL);
    close(f->fd);
}

/* ---- a TCP proxy in front of etcd that can cut its connections and refuse new ones -------- */

struct proxy {
    int lfd, port, upstream;
    atomic_int stop, cut, down; /* cut: set by the test, cleared once the connections are closed */
    atomic_int accepted, refused; /* connections passed through, and hung up while down */
    pthread_t th;
};

static void *proxy_main(void *p)
{
    struct proxy *px = p;
    int a[32], b[32], n = 0; /* pairs: client, upstream */
    while (!atomic_load(&px->stop)) {
        if (atomic_load(&px->cut)) {
            for (int i = 0; i < n; i++) close(a[i]), close(b[i]);
            n = 0;
            atomic_store(&px->cut, 0); /* after the closes: proxy_cut waits for this */
        }
        struct pollfd pfd[65];
        pfd[0] = (struct pollfd){.fd = px->lfd, .events = POLLIN};
        for (int i = 0; i < n; i++) {
            pfd[1 + 2 * i] = (struct pollfd){.fd = a[i], .events = POLLIN};
            pfd[2 + 2 * i] = (struct pollfd){.fd = b[i], .events = POLLIN};
        }
        if (poll(pfd, 1 + 2 * n, 20) <= 0) continue;
        for (int i = n - 1; i >= 0; i--) {
            for (int s = 0; s < 2; s++) {
                if (!(pfd[1 + 2 * i + s].revents & (POLLIN | POLLHUP | POLLERR))) continue;
                int from = s ? b[i] : a[i], to = s ? a[i] : b[i];
                char buf[65536];
                ssize_t r = read(from, buf, sizeof buf);
                if (r > 0 && write(to, buf, (size_t)r) == r) continue;
                close(a[i]);
                close(b[i]);
                a[i] = a[n - 1];
                b[i] = b[n - 1];
                n--;
                break;
            }
        }
        if (pfd[0].revents & POLLIN) {
            int c = accept(px->lfd, NULL, NULL);
            if (c < 0) continue;
            if (atomic_load(&px->down) || n == 32) {
                close(c);
                atomic_fetch_add(&px->refused, 1);
                continue;
            }
            int u = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            struct sockaddr_in sa = {.sin_family = AF_INET,
                                     .sin_port = htons((uint16_t)px->upstream),
                                     .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
            if (u < 0 || connect(u, (struct sockaddr *)&sa, sizeof sa)) {
                close(c);
                if (u >= 0) close(u);
                continue;
            }
            a[n] = c;
            b[n] = u;
            n++;
            atomic_fetch_add(&px->accepted, 1);
        }
    }
    for (int i = 0; i < n; i++) close(a[i]), close(b[i]);
    return NULL;
}

/* ---- KV ---------------------------------------------------------------------------------- */

static void test_put_get(void **state)
{
    int64_t rev1, rev2, mod;
    char *val;
    size_t len;
    assert_int_equal(put_str("kv/a", "hello", 0, &rev1), 0);
    assert_true(rev1 > 0);
    assert_int_equal(tsr_etcd_get(etcd, "kv/a", &val, &len, &mod), 0);
    assert_int_equal(len, 5);
    assert_string_equal(val, "hello");
    assert_int_equal(mod, rev1);
    free(val);

    assert_int_equal(put_str("kv/a", "again", 0, &rev2), 0);
    assert_true(rev2 > rev1);
    assert_int_equal(tsr_etcd_get(etcd, "kv/a", &val, &len, &mod), 0);
    assert_string_equal(val, "again");
    assert_int_equal(mod, rev2);
    free(val);
    /* outputs are optional */
    assert_int_equal(tsr_etcd_get(etcd, "kv/a", NULL, NULL, NULL), 0);
}

/* Values of every length mod 3 (base64 padding), with NUL and 0xff bytes, and the empty value. */
static void test_binary_values(void **state)
{
    unsigned char v[300];
    for (size_t i = 0; i < sizeof v; i++) v[i] = (unsigned char)(i * 37 + (i == 5 ? 0 : 1));
    v[0] = 0;
    v[1] = 0xff;
    size_t lens[] = {0, 1, 2, 3, 4, 5, 6, 7, 255, 300};
    for (size_t t = 0; t < sizeof lens / sizeof lens[0]; t++) {
        char *val;
        size_t len;
        assert_int_equal(tsr_etcd_put(etcd, "bin/k", v, lens[t], 0, NULL), 0);
        assert_int_equal(tsr_etcd_get(etcd, "bin/k", &val, &len, NULL), 0);
        assert_int_equal(len, lens[t]);
        if (lens[t]) assert_memory_equal(val, v, lens[t]);
        assert_int_equal(val[len], 0);
        free(val);
    }
    /* a value over 1 KiB (no 100-continue stall) */
    char *big = malloc(200000);
    assert_non_null(big);
    for (size_t i = 0; i < 200000; i++) big[i] = (char)('a' + i % 26);
    double t0 = tsr_now();
    assert_int_equal(tsr_etcd_put(etcd, "bin/big", big, 200000, 0, NULL), 0);
    char *val;
    size_t len;
    assert_int_equal(tsr_etcd_get(etcd, "bin/big", &val, &len, NULL), 0);
    assert_true(tsr_now() - t0 < 0.9);
    assert_int_equal(len, 200000);
    assert_memory_equal(val, big, 200000);
    free(val);
    free(big);
    assert_int_equal(tsr_etcd_delete(etcd, "bin/", 1), 0);
}

static void test_get_missing(void **state)
{
    char *val = (char *)1;
    size_t len = 7;
    int64_t mod = 7;
    assert_int_equal(tsr_etcd_get(etcd, "kv/missing", &val, &len, &mod), TSR_ENOTFOUND);
    assert_null(val);
    assert_int_equal(len, 0);
    assert_int_equal(mod, 0);
    assert_non_null(strstr(tsr_last_error(), "kv/missing"));
    assert_int_equal(tsr_etcd_get(etcd, "", &val, &len, &mod), TSR_EINVAL);
}

static void test_get_prefix(void **state)
{
    int64_t r1, r2, r3, rev;
    assert_int_equal(put_str("pf/2", "two", 0, &r2), 0);
    assert_int_equal(put_str("pf/1", "one", 0, &r1), 0);
    assert_int_equal(put_str("pf/3", "three", 0, &r3), 0);
    assert_int_equal(put_str("pf0", "outside", 0, NULL), 0); /* '0' follows '/' */
    assert_int_equal(put_str("pf", "outside", 0, NULL), 0);
    assert_int_equal(put_str("pf/1", "uno", 0, NULL), 0);

    struct tsr_etcd_kv *kvs;
    size_t n;
    assert_int_equal(tsr_etcd_get_prefix(etcd, "pf/", &kvs, &n, &rev), 0);
    assert_int_equal(n, 3);
    assert_string_equal(kvs[0].key, "pf/1");
    assert_string_equal(kvs[0].val, "uno");
    assert_int_equal(kvs[0].create_revision, r1);
    assert_true(kvs[0].mod_revision > r3);
    assert_int_equal(kvs[0].version, 2);
    assert_string_equal(kvs[1].key, "pf/2");
    assert_string_equal(kvs[1].val, "two");
    assert_int_equal(kvs[1].val_len, 3);
    assert_int_equal(kvs[1].mod_revision, r2);
    assert_string_equal(kvs[2].key, "pf/3");
    assert_int_equal(kvs[2].lease, 0);
    assert_true(rev >= kvs[0].mod_revision);
    tsr_etcd_kvs_free(kvs, n);

    assert_int_equal(tsr_etcd_get_prefix(etcd, "nothing-here/", &kvs, &n, &rev), 0);
    assert_int_equal(n, 0);
    assert_null(kvs);
    assert_true(rev > 0);

    /* "" lists everything */
    assert_int_equal(tsr_etcd_get_prefix(etcd, "", &kvs, &n, NULL), 0);
    assert_true(n >= 5);
    tsr_etcd_kvs_free(kvs, n);
}

static void test_delete(void **state)
{
    assert_int_equal(put_str("del/a", "1", 0, NULL), 0);
    assert_int_equal(put_str("del/b", "2", 0, NULL), 0);
    assert_int_equal(put_str("del/c/d", "3", 0, NULL), 0);
    assert_int_equal(put_str("del0", "keep", 0, NULL), 0);

    assert_int_equal(tsr_etcd_delete(etcd, "del/a", 0), 0);
    assert_int_equal(tsr_etcd_get(etcd, "del/a", NULL, NULL, NULL), TSR_ENOTFOUND);
    assert_int_equal(tsr_etcd_get(etcd, "del/b", NULL, NULL, NULL), 0);
    assert_int_equal(tsr_etcd_delete(etcd, "del/a", 0), 0); /* nothing to delete: fine */

    assert_int_equal(tsr_etcd_delete(etcd, "del/", 1), 0);
    struct tsr_etcd_kv *kvs;
    size_t n;
    assert_int_equal(tsr_etcd_get_prefix(etcd, "del/", &kvs, &n, NULL), 0);
    assert_int_equal(n, 0);
    assert_int_equal(tsr_etcd_get(etcd, "del0", NULL, NULL, NULL), 0);
}

static void test_put_if_absent(void **state)
{
    int created = -1;
    char *val;
    size_t len;
    assert_int_equal(tsr_etcd_put_if_absent(etcd, "elect/leader", "me", 2, 0, &created), 0);
    assert_int_equal(created, 1);
    assert_int_equal(tsr_etcd_put_if_absent(etcd, "elect/leader", "you", 3, 0, &created), 0);
    assert_int_equal(created, 0);
    assert_int_equal(tsr_etcd_get(etcd, "elect/leader", &val, &len, NULL), 0);
    assert_string_equal(val, "me");
    free(val);
    /* once gone, the next one wins */
    assert_int_equal(tsr_etcd_delete(etcd, "elect/leader", 0), 0);
    assert_int_equal(tsr_etcd_put_if_absent(etcd, "elect/leader", "you", 3, 0, &created), 0);
    assert_int_equal(created, 1);
}

/* Several threads on one handle. */
static void *hammer(void *arg)
{
    long id = (long)arg;
    for (int i = 0; i < 25; i++) {
        char key[64], v[64], *got;
        size_t len;
        snprintf(key, sizeof key, "mt/%ld/%d", id, i);
        snprintf(v, sizeof v, "v%ld-%d", id, i);
        if (put_str(key, v, 0, NULL)) return (void *)1;
        if (tsr_etcd_get(etcd, key, &got, &len, NULL)) return (void *)2;
        int bad = strcmp(got, v) != 0;
        free(got);
        if (bad) return (void *)3;
    }
    return NULL;
}

static void test_threads(void **state)
{
    pthread_t th[4];
    for (long i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, hammer, (void *)i), 0);
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(th[i], &r);
        assert_null(r);
    }
    struct tsr_etcd_kv *kvs;
    size_t n;
    assert_int_equal(tsr_etcd_get_prefix(etcd, "mt/", &kvs, &n, NULL), 0);
    assert_int_equal(n, 100);
    tsr_etcd_kvs_free(kvs, n);
}

/* ---- leases ------------------------------------------------------------------------------ */

static void on_lost(void *arg)
{
    atomic_fetch_add((atomic_int *)arg, 1);
}

static void test_lease_revoke(void **state)
{
    int64_t lease;
    assert_int_equal(tsr_etcd_lease_grant(etcd, 30, &lease), 0);
    assert_true(lease > 0);
    assert_int_equal(put_str("lr/k", "v", lease, NULL), 0);
    struct tsr_etcd_kv *kvs;
    size_t n;
    assert_int_equal(tsr_etcd_get_prefix(etcd, "lr/", &kvs, &n, NULL), 0);
    assert_int_equal(n, 1);
    assert_int_equal(kvs[0].lease, lease);
    tsr_etcd_kvs_free(kvs, n);

    assert_int_equal(tsr_etcd_lease_revoke(etcd, lease), 0);
    assert_int_equal(tsr_etcd_get(etcd, "lr/k", NULL, NULL, NULL), TSR_ENOTFOUND);
    assert_int_equal(tsr_etcd_lease_revoke(etcd, lease), TSR_ENOTFOUND);
    /* a key cannot go under a lease that is gone; a keepalive cannot start on one */
    assert_int_equal(put_str("lr/k", "v", lease, NULL), TSR_ENOTFOUND);
    tsr_etcd_keepalive_t *k;
    atomic_int lost = 0;
    assert_int_equal(tsr_etcd_keepalive_start(etcd, lease, 2, on_lost, &lost, &k), TSR_ENOTFOUND);
    assert_null(k);
    assert_int_equal(tsr_etcd_lease_grant(etcd, 0, &lease), TSR_EINVAL);
}

/* A watch sees the put, the keepalive holds the key past its TTL, and once the keepalive stops the
 * key expires and the watch sees that delete, in order. */
static void test_keepalive_and_expiry(void **state)
{
    struct rec r;
    rec_init(&r);
    tsr_etcd_watch_t *w;
    assert_int_equal(tsr_etcd_watch_start(etcd, "lx/", 0, rec_cb, &r, &w), 0);

    int64_t lease, rev;
    assert_int_equal(tsr_etcd_lease_grant(etcd, 2, &lease), 0);
    assert_int_equal(put_str("lx/k", "alive", lease, &rev), 0);
    tsr_etcd_keepalive_t *k;
    atomic_int lost = 0;
    assert_int_equal(tsr_etcd_keepalive_start(etcd, lease, 2, on_lost, &lost, &k), 0);
    sleep_s(3.5); /* well past the 2 s TTL */
    assert_int_equal(tsr_etcd_get(etcd, "lx/k", NULL, NULL, NULL), 0);
    double t0 = tsr_now();
    tsr_etcd_keepalive_stop(k);
    assert_true(tsr_now() - t0 < 1.5);
    assert_int_equal(atomic_load(&lost), 0);

    /* TTL 2 s from the last refresh; etcd checks expiry every 0.5 s */
    t0 = tsr_now();
    int rc;
    while ((rc = tsr_etcd_get(etcd, "lx/k", NULL, NULL, NULL)) == 0 && tsr_now() - t0 < 6)
        usleep(50 * 1000);
    assert_int_equal(rc, TSR_ENOTFOUND);
    assert_true(tsr_now() - t0 > 0.5);

    assert_int_equal(rec_wait(&r, 2, 3), 2);
    tsr_etcd_watch_stop(w);
    assert_int_equal(r.n, 2);
    expect_event(&r, 0, TSR_ETCD_PUT, "lx/k", "alive", rev);
    assert_int_equal(r.ev[0].lease, lease);
    assert_int_equal(r.ev[0].create_rev, rev);
    expect_event(&r, 1, TSR_ETCD_DELETE, "lx/k", "", 0);
    assert_int_equal(r.ev[1].val_len, 0);
    assert_true(r.ev[1].rev > rev);
    rec_destroy(&r);
}

/* etcd reports the lease gone: on_lost runs once. */
static void test_keepalive_lost(void **state)
{
    int64_t lease;
    assert_int_equal(tsr_etcd_lease_grant(etcd, 2, &lease), 0);
    tsr_etcd_keepalive_t *k;
    atomic_int lost = 0;
    assert_int_equal(tsr_etcd_keepalive_start(etcd, lease, 2, on_lost, &lost, &k), 0);
    assert_int_equal(tsr_etcd_lease_revoke(etcd, lease), 0);
    double t0 = tsr_now();
    while (atomic_load(&lost) == 0 && tsr_now() - t0 < 3) usleep(10 * 1000);
    assert_int_equal(atomic_load(&lost), 1);
    sleep_s(0.8); /* more than a refresh period: no second call */
    assert_int_equal(atomic_load(&lost), 1);
    tsr_etcd_keepalive_stop(k);
}

static void proxy_start(struct proxy *px)
{
    memset(px, 0, sizeof *px);
    px->upstream = srv.client_port;
    px->lfd = tcp_socket(16, &px->port);
    assert_int_equal(pthread_create(&px->th, NULL, proxy_main, px), 0);
}

/* Waits (up to 10 s) until *v >= want: the events the timed checks wait on instead of sleeps. */
static int wait_atomic(atomic_int *v, int want)
{
    double end = tsr_now() + 10;
    while (atomic_load(v) < want && tsr_now() < end) usleep(2 * 1000);
    return atomic_load(v);
}

/* Cuts every connection through the proxy and returns once they are closed. */
static void proxy_cut(struct proxy *px)
{
    atomic_store(&px->cut, 1);
    double end = tsr_now() + 10;
    while (atomic_load(&px->cut) && tsr_now() < end) usleep(2 * 1000);
    assert_int_equal(atomic_load(&px->cut), 0);
}

static void proxy_stop(struct proxy *px)
{
    atomic_store(&px->stop, 1);
    pthread_join(px->th, NULL);
    close(px->lfd);
}

/* etcd cannot be reached: refreshes are retried until the TTL since the last good one has run
 * out, then on_lost runs once (not at the first failed refresh). */
static void test_keepalive_unreachable(void **state)
{
    struct proxy px;
    proxy_start(&px);
    tsr_etcd_t *via = open_port(px.port);
    int64_t lease;
    assert_int_equal(tsr_etcd_lease_grant(etcd, 2, &lease), 0);
    tsr_etcd_keepalive_t *k;
    atomic_int lost = 0;
    assert_int_equal(tsr_etcd_keepalive_start(via, lease, 2, on_lost, &lost, &k), 0);
    sleep_s(0.3);
    atomic_store(&px.down, 1);
    atomic_store(&px.cut, 1);
    double t0 = tsr_now();
    while (atomic_load(&lost) == 0 && tsr_now() - t0 < 4) usleep(10 * 1000);
    double dt = tsr_now() - t0;
    assert_int_equal(atomic_load(&lost), 1);
    /* the last good refresh was at most a third of the TTL before the cut */
    assert_true(dt > 1.0 && dt < 3.0);
    tsr_etcd_keepalive_stop(k);
    assert_int_equal(atomic_load(&lost), 1);
    tsr_etcd_close(via);
    proxy_stop(&px);
    tsr_etcd_lease_revoke(etcd, lease); /* may already have expired */
}

/* ---- watch ------------------------------------------------------------------------------- */

static void test_watch_order(void **state)
{
    struct rec r;
    rec_init(&r);
    int64_t r0;
    assert_int_equal(put_str("wo/before", "x", 0, &r0), 0);
    tsr_etcd_watch_t *w;
    assert_int_equal(tsr_etcd_watch_start(etcd, "wo/", 0, rec_cb, &r, &w), 0);
    int64_t r1, r2, r3, r4, r5;
    assert_int_equal(put_str("wo/a", "1", 0, &r1), 0);
    assert_int_equal(put_str("wo/b", "2", 0, &r2), 0);
    assert_int_equal(put_str("wox", "outside", 0, NULL), 0);
    assert_int_equal(tsr_etcd_delete(etcd, "wo/a", 0), 0);
    assert_int_equal(put_str("wo/a", "3", 0, &r4), 0);
    assert_int_equal(tsr_etcd_delete(etcd, "wo/", 1), 0); /* one revision, three deletes */
    assert_int_equal(put_str("wo/c", "4", 0, &r5), 0);
    assert_int_equal(rec_wait(&r, 8, 5), 8);
    sleep_s(0.2);
    assert_int_equal(r.n, 8);
    expect_event(&r, 0, TSR_ETCD_PUT, "wo/a", "1", r1);
    expect_event(&r, 1, TSR_ETCD_PUT, "wo/b", "2", r2);
    expect_event(&r, 2, TSR_ETCD_DELETE, "wo/a", "", 0);
    r3 = r.ev[2].rev;
    assert_true(r3 > r2 && r3 < r4);
    expect_event(&r, 3, TSR_ETCD_PUT, "wo/a", "3", r4);
    assert_int_equal(r.ev[3].create_rev, r4);
    /* the prefix delete: every key in one revision, sorted by key */
    expect_event(&r, 4, TSR_ETCD_DELETE, "wo/a", "", 0);
    expect_event(&r, 5, TSR_ETCD_DELETE, "wo/b", "", r.ev[4].rev);
    expect_event(&r, 6, TSR_ETCD_DELETE, "wo/before", "", r.ev[4].rev);
    assert_true(r.ev[4].rev > r4 && r.ev[4].rev < r5);
    expect_event(&r, 7, TSR_ETCD_PUT, "wo/c", "4", r5);
    tsr_etcd_watch_stop(w);

    /* From a past revision the same history replays. */
    struct rec r2w;
    rec_init(&r2w);
    assert_int_equal(tsr_etcd_watch_start(etcd, "wo/", r1, rec_cb, &r2w, &w), 0);
    assert_int_equal(rec_wait(&r2w, 8, 5), 8);
    tsr_etcd_watch_stop(w);
    for (int i = 0; i < 8; i++) {
        expect_event(&r2w, i, r.ev[i].type, r.ev[i].key, r.ev[i].val, r.ev[i].rev);
    }
    rec_destroy(&r2w);
    rec_destroy(&r);
}

static void test_watch_stop_prompt(void **state)
{
    struct rec r;
    rec_init(&r);
    tsr_etcd_watch_t *w;
    assert_int_equal(tsr_etcd_watch_start(etcd, "idle/", 0, rec_cb, &r, &w), 0);
    sleep_s(0.3); /* stream open and idle */
    double t0 = tsr_now();
    tsr_etcd_watch_stop(w);
    assert_true(tsr_now() - t0 < 0.5);
    /* no callback after stop */
    assert_int_equal(put_str("idle/x", "1", 0, NULL), 0);
    sleep_s(0.1);
    assert_int_equal(r.n, 0);
    rec_destroy(&r);
}

/* A watch from compacted history reports the compaction, then goes on. */
static void test_watch_compacted(void **state)
{
    int64_t r1, r2, r3, r4;
    assert_int_equal(put_str("wc/a", "1", 0, &r1), 0);
    assert_int_equal(put_str("wc/a", "2", 0, &r2), 0);
    assert_int_equal(put_str("wc/b", "3", 0, &r3), 0);
    assert_int_equal(tsr_etcd_compact(etcd, r3), 0);
    assert_int_equal(tsr_etcd_compact(etcd, r2), TSR_ERANGE);
    assert_int_equal(tsr_etcd_compact(etcd, r3 + 1000), TSR_ERANGE);

    struct rec r;
    rec_init(&r);
    tsr_etcd_watch_t *w;
    assert_int_equal(tsr_etcd_watch_start(etcd, "wc/", r1, rec_cb, &r, &w), 0);
    assert_int_equal(rec_wait(&r, 1, 5), 1);
    assert_int_equal(r.ev[0].type, TSR_ETCD_COMPACTED);
    assert_int_equal(r.ev[0].rev, r3);
    assert_string_equal(r.ev[0].key, "");
    assert_int_equal(put_str("wc/c", "4", 0, &r4), 0);
    assert_int_equal(rec_wait(&r, 2, 5), 2);
    sleep_s(0.2);
    tsr_etcd_watch_stop(w);
    assert_int_equal(r.n, 2);
    expect_event(&r, 1, TSR_ETCD_PUT, "wc/c", "4", r4);
    rec_destroy(&r);
}

/* The stream breaks and new connections are refused for a while; meanwhile keys change. When the
 * watch gets through again it delivers exactly what it missed, once. */
static void test_watch_reconnect(void **state)
{
    struct proxy px;
    proxy_start(&px);
    tsr_etcd_t *via = open_port(px.port);

    struct rec r;
    rec_init(&r);
    tsr_etcd_watch_t *w;
    assert_int_equal(tsr_etcd_watch_start(via, "rc/", 0, rec_cb, &r, &w), 0);
    int64_t r1, r2, r4;
    assert_int_equal(put_str("rc/a", "1", 0, &r1), 0);
    assert_int_equal(rec_wait(&r, 1, 5), 1);

    atomic_store(&px.down, 1);
    proxy_cut(&px);
    assert_int_equal(put_str("rc/b", "2", 0, &r2), 0);
    assert_int_equal(tsr_etcd_delete(etcd, "rc/a", 0), 0);
    /* the watch retries against a proxy that hangs up: twice, then it may come through */
    assert_true(wait_atomic(&px.refused, 2) >= 2);
    assert_int_equal(r.n, 1);
    int accepted = atomic_load(&px.accepted);
    atomic_store(&px.down, 0);
    assert_int_equal(rec_wait(&r, 3, 5), 3);
    assert_int_equal(put_str("rc/c", "4", 0, &r4), 0);
    assert_int_equal(rec_wait(&r, 4, 5), 4);
    sleep_s(0.2);
    assert_int_equal(r.n, 4);
    expect_event(&r, 0, TSR_ETCD_PUT, "rc/a", "1", r1);
    expect_event(&r, 1, TSR_ETCD_PUT, "rc/b", "2", r2);
    expect_event(&r, 2, TSR_ETCD_DELETE, "rc/a", "", r2 + 1);
    expect_event(&r, 3, TSR_ETCD_PUT, "rc/c", "4", r4);

    assert_true(atomic_load(&px.accepted) > accepted);

    /* cut again while idle, without downtime: once the watch is through again, the next event
     * is the next change, nothing repeated */
    accepted = atomic_load(&px.accepted);
    proxy_cut(&px);
    assert_true(wait_atomic(&px.accepted, accepted + 1) > accepted);
    int64_t r5;
    assert_int_equal(put_str("rc/d", "5", 0, &r5), 0);
    assert_int_equal(rec_wait(&r, 5, 5), 5);
    sleep_s(0.2);
    assert_int_equal(r.n, 5);
    expect_event(&r, 4, TSR_ETCD_PUT, "rc/d", "5", r5);
    double t0 = tsr_now();
    tsr_etcd_watch_stop(w);
    assert_true(tsr_now() - t0 < 1.0);
    rec_destroy(&r);
    tsr_etcd_close(via);
    proxy_stop(&px);
}

/* ---- failures ---------------------------------------------------------------------------- */

static void test_open_errors(void **state)
{
    tsr_etcd_t *e = (tsr_etcd_t *)1;
    assert_int_equal(tsr_etcd_open("", &e), TSR_EINVAL);
    assert_null(e);
    assert_int_equal(tsr_etcd_open("http://a:1,,http://b:2", &e), TSR_EINVAL);
    assert_int_equal(tsr_etcd_open("ftp://a:1", &e), TSR_EINVAL);
    assert_int_equal(tsr_etcd_open(NULL, &e), TSR_EINVAL);
    /* a bare host:port means http */
    char ep[64];
    snprintf(ep, sizeof ep, "127.0.0.1:%d", srv.client_port);
    assert_int_equal(tsr_etcd_open(ep, &e), 0);
    assert_int_equal(tsr_etcd_get(e, "kv/a", NULL, NULL, NULL), 0);
    tsr_etcd_close(e);
}

static void test_nothing_listening(void **state)
{
    int port;
    close(tcp_socket(-1, &port)); /* a port nobody listens on */
    tsr_etcd_t *e = open_port(port);
    char needle[32];
    snprintf(needle, sizeof needle, "127.0.0.1:%d", port);
    double t0 = tsr_now();
    assert_int_equal(tsr_etcd_put(e, "k", "v", 1, 0, NULL), TSR_EIO);
    assert_non_null(strstr(tsr_last_error(), needle));
    assert_int_equal(tsr_etcd_get(e, "k", NULL, NULL, NULL), TSR_EIO);
    int64_t lease;
    assert_int_equal(tsr_etcd_lease_grant(e, 5, &lease), TSR_EIO);
    tsr_etcd_watch_t *w;
    struct rec r;
    rec_init(&r);
    assert_int_equal(tsr_etcd_watch_start(e, "x/", 0, rec_cb, &r, &w), TSR_EIO);
    assert_true(tsr_now() - t0 < 5);
    /* with a start revision the watch retries in the background and still stops promptly */
    assert_int_equal(tsr_etcd_watch_start(e, "x/", 5, rec_cb, &r, &w), 0);
    sleep_s(0.4);
    t0 = tsr_now();
    tsr_etcd_watch_stop(w);
    assert_true(tsr_now() - t0 < 1.0);
    assert_int_equal(r.n, 0);
    rec_destroy(&r);
    tsr_etcd_close(e);

    /* a dead endpoint first in the list: the call goes on to the live one */
    char eps[160];
    snprintf(eps, sizeof eps, "http://127.0.0.1:%d, %s/", port, srv.endpoint);
    assert_int_equal(tsr_etcd_open(eps, &e), 0);
    assert_int_equal(tsr_etcd_put(e, "kv/multi", "v", 1, 0, NULL), 0);
    assert_int_equal(tsr_etcd_get(e, "kv/multi", NULL, NULL, NULL), 0);
    tsr_etcd_close(e);
}

/* Accepts the connection (kernel backlog) but never answers: the call ends at its timeout. */
static void test_no_answer_timeout(void **state)
{
    int port;
    int fd = tcp_socket(4, &port);
    tsr_etcd_t *e = open_port(port);
    tsr_etcd_set_timeout_ms(e, 700);
    double t0 = tsr_now();
    assert_int_equal(tsr_etcd_get(e, "k", NULL, NULL, NULL), TSR_EIO);
    double dt = tsr_now() - t0;
    assert_true(dt > 0.6 && dt < 2.0);
    assert_non_null(strstr(tsr_last_error(), "127.0.0.1"));
    tsr_etcd_close(e);
    close(fd);
}

#define HTTP200(body)                                                                              \
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" body

static void test_garbage_server(void **state)
{
    struct fake f;
    fake_start(&f);
    tsr_etcd_t *e = open_port(f.port);
    tsr_etcd_set_timeout_ms(e, 2000);
    char *val = NULL;
    struct tsr_etcd_kv *kvs = NULL;
    size_t n;
    int64_t lease;
    int created;

    fake_set(&f, "garbage garbage garbage\r\n\r\n"); /* not HTTP */
    assert_int_equal(tsr_etcd_get(e, "k", &val, NULL, NULL), TSR_EIO);
    assert_null(val);
    fake_set(&f, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nnot json at all");
    assert_int_equal(tsr_etcd_get(e, "k", &val, NULL, NULL), TSR_EFORMAT);
    assert_non_null(strstr(tsr_last_error(), "/v3/kv/range"));
    fake_set(&f, HTTP200("[1, 2, 3]"));
    assert_int_equal(tsr_etcd_put(e, "k", "v", 1, 0, NULL), TSR_EFORMAT);
    fake_set(&f, HTTP200("{\"kvs\": []}")); /* no header: not etcd */
    assert_int_equal(tsr_etcd_get(e, "k", &val, NULL, NULL), TSR_EFORMAT);
    fake_set(&f, HTTP200("{\"header\": {\"revision\": \"12x\"}}"));
    assert_int_equal(tsr_etcd_put(e, "k", "v", 1, 0, NULL), TSR_EFORMAT);
    fake_set(&f, HTTP200("{\"header\": {\"revision\": \"3\"}, \"kvs\": [{\"key\": \"***\"}]}"));
    assert_int_equal(tsr_etcd_get(e, "k", &val, NULL, NULL), TSR_EFORMAT);
    fake_set(&f, HTTP200("{\"header\": {\"revision\": \"3\"}, \"kvs\": [{\"key\": \"aw==\", "
                         "\"value\": 12}]}"));
    assert_int_equal(tsr_etcd_get(e, "k", &val, NULL, NULL), TSR_EFORMAT);
    fake_set(&f, HTTP200("{\"header\": {\"revision\": \"3\"}, \"kvs\": [{\"key\": \"aw==\", "
                         "\"value\": \"YQ=\"}]}")); /* bad padding */
    assert_int_equal(tsr_etcd_get(e, "k", &val, NULL, NULL), TSR_EFORMAT);
    fake_set(&f, HTTP200("{\"header\": {\"revision\": \"3\"}, \"kvs\": [{\"key\": \"eg==\"}]}"));
    assert_int_equal(tsr_etcd_get(e, "k", &val, NULL, NULL), TSR_EFORMAT); /* another key */
    fake_set(&f, HTTP200("{\"header\": {\"revision\": \"3\"}, \"kvs\": {}}"));
    assert_int_equal(tsr_etcd_get_prefix(e, "p/", &kvs, &n, NULL), TSR_EFORMAT);
    assert_null(kvs);
    fake_set(&f, HTTP200("{\"header\": {\"revision\": \"3\"}, \"kvs\": [{\"key\": \"cC9h\"}, "
                         "{\"key\": \"eg==\"}]}")); /* "p/a" then "z": outside the prefix */
    assert_int_equal(tsr_etcd_get_prefix(e, "p/", &kvs, &n, NULL), TSR_EFORMAT);
    fake_set(&f, HTTP200("{\"header\": {\"revision\": \"3\"}, \"succeeded\": \"yes\"}"));
    assert_int_equal(tsr_etcd_put_if_absent(e, "k", "v", 1, 0, &created), TSR_EFORMAT);
    fake_set(&f, HTTP200("{\"header\": {\"revision\": \"3\"}, \"ID\": \"abc\", \"TTL\": \"5\"}"));
    assert_int_equal(tsr_etcd_lease_grant(e, 5, &lease), TSR_EFORMAT);
    fake_set(&f, HTTP200("{\"header\": {\"revision\": \"3\"}}")); /* no "result" wrapper */
    tsr_etcd_keepalive_t *k;
    assert_int_equal(tsr_etcd_keepalive_start(e, 77, 2, NULL, NULL, &k), TSR_EFORMAT);
    fake_set(&f, HTTP200("{\"header\": {\"revision\": \"3\"}, \"kvs\": [{\"key\": \"aw==\", "
                         "\"value\": \"YQ==\", \"mod_revision\": \"99999999999999999999999\"}]}"));
    assert_int_equal(tsr_etcd_get(e, "k", &val, NULL, NULL), TSR_EFORMAT);
    fake_set(&f, "HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n\r\noops");
    assert_int_equal(tsr_etcd_get(e, "k", &val, NULL, NULL), TSR_EIO);
    assert_non_null(strstr(tsr_last_error(), "HTTP 500"));
    fake_set(&f, "HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n"
                 "{\"error\":\"lease gone\",\"message\":\"lease gone\",\"code\":5}");
    assert_int_equal(tsr_etcd_lease_revoke(e, 5), TSR_ENOTFOUND);
    assert_non_null(strstr(tsr_last_error(), "lease gone"));
    /* a well-formed answer still works through the same checks */
    fake_set(&f, HTTP200("{\"header\": {\"revision\": \"3\"}, \"kvs\": [{\"key\": \"aw==\", "
                         "\"value\": \"YWI\", \"mod_revision\": \"2\"}]}"));
    size_t len;
    int64_t mod;
    assert_int_equal(tsr_etcd_get(e, "k", &val, &len, &mod), 0);
    assert_string_equal(val, "ab");
    assert_int_equal(mod, 2);
    free(val);

    /* a watch on garbage: no callback, no crash, prompt stop */
    struct rec r;
    rec_init(&r);
    tsr_etcd_watch_t *w;
    fake_set(&f, HTTP200("{\"result\": {\"created\": true}}\n{\"result\": {\"events\": "
                         "[{\"kv\": {\"key\": \"!!\"}}]}}\nnonsense\n"));
    int served = atomic_load(&f.served);
    assert_int_equal(tsr_etcd_watch_start(e, "w/", 3, rec_cb, &r, &w), 0);
    assert_true(wait_atomic(&f.served, served + 2) >= served + 2); /* it keeps trying */
    double t0 = tsr_now();
    tsr_etcd_watch_stop(w);
    assert_true(tsr_now() - t0 < 1.0);
    assert_int_equal(r.n, 0);
    rec_destroy(&r);

    tsr_etcd_close(e);
    fake_stop(&f);
}

/* Stopping and starting again on the same directory keeps the data (new ports). */
static void test_server_restart(void **state)
{
    assert_int_equal(put_str("persist/k", "kept", 0, NULL), 0);
    tsr_etcd_close(etcd);
    etcd = NULL;
    int old_port = srv.client_port;
    tsr_etcd_server_stop(&srv);
    assert_int_equal(srv.pid, 0);
    tsr_etcd_t *e = open_port(old_port);
    assert_int_equal(tsr_etcd_get(e, "persist/k", NULL, NULL, NULL), TSR_EIO);
    tsr_etcd_close(e);

    assert_int_equal(tsr_etcd_server_start(tmpdir, &srv), 0);
    assert_true(srv.pid > 0);
    assert_int_equal(tsr_etcd_open(srv.endpoint, &etcd), 0);
    char *val;
    size_t len;
    assert_int_equal(tsr_etcd_get(etcd, "persist/k", &val, &len, NULL), 0);
    assert_string_equal(val, "kept");
    free(val);
}

/* ---- setup ------------------------------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int teardown(void **state);

/* A missing etcd fails the whole group: CI installs etcd-server. */
static int setup(void **state)
{
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "mkdtemp failed\n");
        return -1;
    }
    if (tsr_etcd_server_start(tmpdir, &srv) || tsr_etcd_open(srv.endpoint, &etcd)) {
        fprintf(stderr, "cannot start etcd: %s\n", tsr_last_error());
        teardown(state);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    tsr_etcd_close(etcd);
    tsr_etcd_server_stop(&srv);
    tsr_etcd_server_stop(&srv); /* a second stop does nothing */
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get),
        cmocka_unit_test(test_binary_values),
        cmocka_unit_test(test_get_missing),
        cmocka_unit_test(test_get_prefix),
        cmocka_unit_test(test_delete),
        cmocka_unit_test(test_put_if_absent),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_lease_revoke),
        cmocka_unit_test(test_keepalive_and_expiry),
        cmocka_unit_test(test_keepalive_lost),
        cmocka_unit_test(test_keepalive_unreachable),
        cmocka_unit_test(test_watch_order),
        cmocka_unit_test(test_watch_stop_prompt),
        cmocka_unit_test(test_watch_compacted),
        cmocka_unit_test(test_watch_reconnect),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_nothing_listening),
        cmocka_unit_test(test_no_answer_timeout),
        cmocka_unit_test(test_garbage_server),
        cmocka_unit_test(test_server_restart),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
