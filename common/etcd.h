/* etcd v3 client over etcd's HTTP/JSON gRPC gateway (libcurl + jansson), and a private etcd server
 * for `tessera serve` and tests.
 *
 * Wire: every call is a POST of one JSON object to <endpoint>/v3/...; keys and values travel as
 * base64, int64 fields come back as JSON strings and fields equal to their zero value are left out
 * (a missing "TTL" is 0, a missing "succeeded" is false). Every response is parsed defensively: a
 * malformed or unexpected one is TSR_EFORMAT with a message naming the endpoint and the call,
 * never a crash.
 *
 * Errors: an endpoint that does not answer (refused, timed out, not HTTP) is TSR_EIO with a
 * message naming the endpoint; etcd's own errors map by gRPC code (NOT_FOUND -> TSR_ENOTFOUND,
 * INVALID_ARGUMENT -> TSR_EINVAL, OUT_OF_RANGE (compacted / future revision) -> TSR_ERANGE,
 * RESOURCE_EXHAUSTED -> TSR_EEXHAUSTED, the rest -> TSR_EIO).
 *
 * Threads: one tsr_etcd_t may be used by any number of threads at once (each call borrows a curl
 * handle from a small pool, so connections are reused). Keepalives and watches run on their own
 * threads and use the handle they were started with: stop them before tsr_etcd_close(). */
#ifndef TSR_COMMON_ETCD_H
#define TSR_COMMON_ETCD_H

#include <stddef.h>
#include <stdint.h>

typedef struct tsr_etcd tsr_etcd_t;

/* endpoints: "http://127.0.0.1:2379", or a comma-separated list tried in order (a call that cannot
 * reach one endpoint tries the next; the one that answered is tried first next time). A missing
 * scheme means http://. Nothing is contacted here. Caller frees with tsr_etcd_close(). */
int tsr_etcd_open(const char *endpoints, tsr_etcd_t **out);
void tsr_etcd_close(tsr_etcd_t *e);

/* Per-call time limit for each endpoint tried (default 5000 ms). Not for watches, whose streams
 * stay open. Thread-safe. */
void tsr_etcd_set_timeout_ms(tsr_etcd_t *e, long ms);

/* Sets key to val[0..len) (binary-safe), attached to lease (0 = none). *revision (may be NULL)
 * gets the store revision of the write. */
int tsr_etcd_put(tsr_etcd_t *e, const char *key, const void *val, size_t len, int64_t lease,
                 int64_t *revision);

/* TSR_ENOTFOUND when key is absent. *val (may be NULL) is a NUL-terminated copy (the NUL is not
 * counted in *len); caller frees it with free(). len and mod_revision may be NULL. */
int tsr_etcd_get(tsr_etcd_t *e, const char *key, char **val, size_t *len, int64_t *mod_revision);

struct tsr_etcd_kv {
    char *key; /* NUL-terminated */
    char *val; /* NUL-terminated copy; val_len does not count the NUL */
    size_t val_len;
    int64_t create_revision, mod_revision, version;
    int64_t lease; /* 0 = none */
};

/* Every key starting with prefix ("" = all keys), sorted by key, as of one revision (*revision,
 * may be NULL): list at R, then watch from R + 1 to follow changes without a gap. *kvs is NULL
 * when *n is 0; caller frees with tsr_etcd_kvs_free(). */
int tsr_etcd_get_prefix(tsr_etcd_t *e, const char *prefix, struct tsr_etcd_kv **kvs, size_t *n,
                        int64_t *revision);
void tsr_etcd_kvs_free(struct tsr_etcd_kv *kvs, size_t n);

/* Deletes key, or every key starting with key when prefix != 0. Deleting nothing is not an error.
 */
int tsr_etcd_delete(tsr_etcd_t *e, const char *key, int prefix);

/* Puts only if key does not exist (one txn comparing create_revision == 0); returns 0 and sets
 * *created to 1 if this call created it, 0 if the key was already there (left unchanged). With a
 * lease this is the controller's leader election: whoever created the key leads until its lease
 * ends. */
int tsr_etcd_put_if_absent(tsr_etcd_t *e, const char *key, const void *val, size_t len,
                           int64_t lease, int *created);

/* Drops the history before revision (watches that start earlier then see TSR_ETCD_COMPACTED).
 * TSR_ERANGE if revision is already compacted or in the future. */
int tsr_etcd_compact(tsr_etcd_t *e, int64_t revision);

/* A lease of ttl_s seconds (etcd may raise a very short TTL to its minimum, ~2 s). */
int tsr_etcd_lease_grant(tsr_etcd_t *e, int ttl_s, int64_t *lease);
/* Ends the lease now and deletes its keys. TSR_ENOTFOUND if it is unknown (expired, revoked). */
int tsr_etcd_lease_revoke(tsr_etcd_t *e, int64_t lease);

/* Keeps lease alive from a background thread. keepalive_start refreshes once before it returns (so
 * an unknown lease is TSR_ENOTFOUND here), then the thread refreshes every TTL/3. A refresh that
 * cannot reach etcd is retried every ~0.5 s until the lease's TTL, counted from the last refresh
 * that succeeded, has run out; then, or at once when etcd reports the lease gone (TTL 0), the
 * thread calls on_lost(arg) once and stops refreshing. on_lost (may be NULL) runs on that thread
 * and must not call tsr_etcd_keepalive_stop(). Caller frees with tsr_etcd_keepalive_stop(), which
 * returns within ~1 s and after which on_lost no longer runs; it does not revoke the lease. */
typedef struct tsr_etcd_keepalive tsr_etcd_keepalive_t;
int tsr_etcd_keepalive_start(tsr_etcd_t *e, int64_t lease, int ttl_s, void (*on_lost)(void *),
                             void *arg, tsr_etcd_keepalive_t **out);
void tsr_etcd_keepalive_stop(tsr_etcd_keepalive_t *k);

enum tsr_etcd_event_type {
    TSR_ETCD_PUT,
    TSR_ETCD_DELETE,
    /* etcd has compacted history the watch still needed: events before and at mod_revision (the
     * compaction revision) are lost, key is "". The watch goes on from mod_revision + 1; the
     * caller re-lists (tsr_etcd_get_prefix, at revision R >= mod_revision) and ignores the events
     * that follow with mod_revision <= R. */
    TSR_ETCD_COMPACTED,
};

/* Valid only during the callback. key and val are NUL-terminated; val is "" for a delete. */
struct tsr_etcd_event {
    enum tsr_etcd_event_type type;
    const char *key;
    const char *val;
    size_t val_len;
    int64_t mod_revision; /* the delete's revision for a delete */
    int64_t create_revision;
    int64_t lease;
};

/* Watches every key starting with prefix ("" = all) from start_revision (0 = changes after now;
 * resolved to an explicit revision before this returns, so any write made after it returns is
 * seen). cb(arg, &ev) runs on the watch's thread, once per event, in revision order. If the
 * stream breaks (etcd restarted, network), the thread reconnects (backing off up to 2 s) and
 * resumes after the last revision it delivered, so no event is lost or repeated. With
 * start_revision != 0 nothing is contacted here. Caller frees with tsr_etcd_watch_stop(), which
 * returns within ~1 s even while the stream is idle; no callback runs after it returns. cb must
 * not call tsr_etcd_watch_stop() on its own watch. */
typedef struct tsr_etcd_watch tsr_etcd_watch_t;
int tsr_etcd_watch_start(tsr_etcd_t *e, const char *prefix, int64_t start_revision,
                         void (*cb)(void *arg, const struct tsr_etcd_event *ev), void *arg,
                         tsr_etcd_watch_t **out);
void tsr_etcd_watch_stop(tsr_etcd_watch_t *w);

/* A private single-member etcd: on two free loopback ports, data in <dir>/etcd-data, output to
 * <dir>/etcd.log (dir is created if missing). The binary is $TESSERA_ETCD_BIN or /usr/bin/etcd.
 * tsr_etcd_server_start returns once etcd answers at s->endpoint (or fails within ~15 s with a
 * message naming the log). The child gets SIGKILL if the thread that started it exits, so start
 * it from a thread that outlives it (the main thread). Stop with tsr_etcd_server_stop(), which
 * terminates and reaps it (SIGTERM, then SIGKILL after 5 s) and leaves dir in place; stopping a
 * stopped server does nothing. */
struct tsr_etcd_server {
    int pid; /* 0 when not running */
    int client_port;
    char endpoint[64]; /* "http://127.0.0.1:<client_port>" */
    char dir[512];
};
int tsr_etcd_server_start(const char *dir, struct tsr_etcd_server *s);
void tsr_etcd_server_stop(struct tsr_etcd_server *s);

#endif
