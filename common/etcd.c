#include "common/etcd.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/status.h"

enum {
    ETCD_MAX_ENDPOINTS = 16,
    ETCD_MAX_ENDPOINT_LEN = 255,
    ETCD_POOL_MAX = 8, /* idle curl handles kept for reuse (each holds its connection) */
    ETCD_DEFAULT_TIMEOUT_MS = 5000,
    ETCD_CONNECT_TIMEOUT_MS = 2000,
    ETCD_WATCH_BACKOFF_MIN_MS = 100,
    ETCD_WATCH_BACKOFF_MAX_MS = 2000,
    ETCD_KEEPALIVE_RETRY_MS = 500,
    ETCD_SERVER_WAIT_MS = 15000,
};
/* A bound on what one response (or one watch message) may hold, against a peer that streams
 * without end. etcd's own limit on a request is 1.5 MiB; a range can be larger. */
#define ETCD_MAX_RESPONSE ((size_t)256 << 20)

struct tsr_etcd {
    char *endpoints[ETCD_MAX_ENDPOINTS]; /* "http://host:port", no trailing '/' */
    int n_endpoints;
    atomic_int preferred; /* the endpoint that answered last */
    atomic_long timeout_ms;
    struct curl_slist *headers; /* read-only once open: shared by all calls */
    /* etcdctl's environment (tsr_etcd_open): TLS files and a user; NULL when unset */
    char *cacert, *cert, *key, *user, *password;
    pthread_mutex_t mu; /* guards pool and token */
    char *token;        /* from Auth/Authenticate; NULL until asked for, or after it went stale */
    CURL *pool[ETCD_POOL_MAX];
    int n_pool;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init_once(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- base64 (RFC 4648), as grpc-gateway writes bytes fields ------------------------------- */

static const char b64_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* NUL-terminated, padded; NULL when out of memory. Caller frees. */
static char *b64_encode(const void *src, size_t n)
{
    const unsigned char *s = src;
    if (n > (SIZE_MAX / 4 - 1) * 3) return NULL;
    char *o = malloc((n + 2) / 3 * 4 + 1);
    if (!o) return NULL;
    size_t i = 0, j = 0;
    for (; n - i >= 3; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        o[j++] = b64_chars[v >> 18 & 63];
        o[j++] = b64_chars[v >> 12 & 63];
        o[j++] = b64_chars[v >> 6 & 63];
        o[j++] = b64_chars[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        o[j++] = b64_chars[v >> 18 & 63];
        o[j++] = b64_chars[v >> 12 & 63];
        o[j++] = '=';
        o[j++] = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
        o[j++] = b64_chars[v >> 18 & 63];
        o[j++] = b64_chars[v >> 12 & 63];
        o[j++] = b64_chars[v >> 6 & 63];
        o[j++] = '=';
    }
    o[j] = 0;
    return o;
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62; /* standard and URL alphabets */
    if (c == '/' || c == '_') return 63;
    return -1;
}

/* Decodes s[0..n) (padding optional) into a NUL-terminated buffer the caller frees. Returns 0,
 * TSR_EFORMAT (bad character, bad length, stray '=') or TSR_ENOMEM. */
static int b64_decode(const char *s, size_t n, char **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    size_t pad = 0;
    while (n > 0 && s[n - 1] == '=' && pad < 2) {
        n--;
        pad++;
    }
    if ((pad && (n + pad) % 4) || n % 4 == 1) return TSR_EFORMAT;
    size_t olen = n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0);
    char *o = malloc(olen + 1);
    if (!o) return TSR_ENOMEM;
    uint32_t acc = 0;
    int bits = 0;
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64_value((unsigned char)s[i]);
        if (v < 0) {
            free(o);
            return TSR_EFORMAT;
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[j++] = (char)(acc >> bits & 0xff);
        }
    }
    o[j] = 0;
    *out = o;
    *out_len = j;
    return 0;
}

/* ---- JSON field readers: proto3 leaves zero values out, so absent means 0 ------------------- */

/* int64 as the gateway writes it ("123"), or leniently a JSON integer. */
static int jget_i64(const json_t *obj, const char *name, int64_t *out)
{
    json_t *v = json_object_get(obj, name);
    *out = 0;
    if (!v || json_is_null(v)) return 0;
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return 0;
    }
    if (!json_is_string(v)) return TSR_EFORMAT;
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    if (len == 0 || len > 20 || !(s[0] == '-' || (s[0] >= '0' && s[0] <= '9'))) return TSR_EFORMAT;
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (errno || end != s + len) return TSR_EFORMAT;
    *out = x;
    return 0;
}

static int jget_bool(const json_t *obj, const char *name, int *out)
{
    json_t *v = json_object_get(obj, name);
    *out = 0;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return TSR_EFORMAT;
    *out = json_is_true(v);
    return 0;
}

/* A base64 bytes field, decoded and NUL-terminated; absent is "" unless required. */
static int jget_bytes(const json_t *obj, const char *name, int required, char **out, size_t *len)
{
    json_t *v = json_object_get(obj, name);
    *out = NULL;
    *len = 0;
    if (!v || json_is_null(v)) {
        if (required) return TSR_EFORMAT;
        *out = calloc(1, 1);
        return *out ? 0 : TSR_ENOMEM;
    }
    if (!json_is_string(v)) return TSR_EFORMAT;
    return b64_decode(json_string_value(v), json_string_length(v), out, len);
}

/* Fills kv from one mvccpb.KeyValue. On failure kv holds nothing and *what names the field. */
static int parse_kv(const json_t *j, struct tsr_etcd_kv *kv, const char **what)
{
    int rc;
    memset(kv, 0, sizeof *kv);
    *what = "kv";
    if (!json_is_object(j)) return TSR_EFORMAT;
    size_t klen;
    *what = "key";
    if ((rc = jget_bytes(j, "key", 1, &kv->key, &klen))) goto fail;
    *what = "value";
    if ((rc = jget_bytes(j, "value", 0, &kv->val, &kv->val_len))) goto fail;
    *what = "create_revision";
    if ((rc = jget_i64(j, "create_revision", &kv->create_revision))) goto fail;
    *what = "mod_revision";
    if ((rc = jget_i64(j, "mod_revision", &kv->mod_revision))) goto fail;
    *what = "version";
    if ((rc = jget_i64(j, "version", &kv->version))) goto fail;
    *what = "lease";
    if ((rc = jget_i64(j, "lease", &kv->lease))) goto fail;
    return 0;
fail:
    free(kv->key);
    free(kv->val);
    memset(kv, 0, sizeof *kv);
    return rc;
}

/* A copy of s fit for a log line: printable ASCII only, at most 200 characters. */
static void sanitize(char *dst, size_t cap, const char *s, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; i < n && j + 1 < cap && j < 200; i++) {
        unsigned char c = (unsigned char)s[i];
        dst[j++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    dst[j] = 0;
}

/* The end of the range holding every key that starts with prefix (clientv3's GetPrefixRangeEnd):
 * the prefix with its last byte below 0xff incremented; "\0" (all keys) when there is none. */
static char *prefix_end_b64(const char *prefix)
{
    size_t n = strlen(prefix);
    char *end = malloc(n + 1);
    if (!end) return NULL;
    memcpy(end, prefix, n + 1);
    while (n > 0 && (unsigned char)end[n - 1] == 0xff) n--;
    char *r;
    if (n == 0) {
        r = b64_encode("", 1); /* one zero byte */
    } else {
        end[n - 1] = (char)((unsigned char)end[n - 1] + 1);
        r = b64_encode(end, n);
    }
    free(end);
    return r;
}

/* The key of a prefix range: an empty prefix means from "\0". */
static char *prefix_key_b64(const char *prefix)
{
    return prefix[0] ? b64_encode(prefix, strlen(prefix)) : b64_encode("", 1);
}

static int sleep_until_stopped(pthread_mutex_t *mu, pthread_cond_t *cv, atomic_int *stop, long ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(mu);
    while (!atomic_load(stop)) {
        if (pthread_cond_timedwait(cv, mu, &ts) == ETIMEDOUT) break;
    }
    pthread_mutex_unlock(mu);
    return atomic_load(stop);
}

static int monotonic_cond_init(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    if (pthread_condattr_init(&a)) return -1;
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
    return rc ? -1 : 0;
}

/* ---- handle ------------------------------------------------------------------------------ */

static int add_endpoint(tsr_etcd_t *e, const char *tok, size_t n, const char *all)
{
    while (n && (tok[0] == ' ' || tok[0] == '\t')) tok++, n--;
    while (n && (tok[n - 1] == ' ' || tok[n - 1] == '\t' || tok[n - 1] == '/')) n--;
    if (n == 0) return tsr_errorf(TSR_EINVAL, "etcd endpoints \"%s\": empty endpoint", all);
    if (e->n_endpoints == ETCD_MAX_ENDPOINTS)
        return tsr_errorf(TSR_EINVAL, "etcd endpoints \"%s\": more than %d", all,
                          ETCD_MAX_ENDPOINTS);
    int has_scheme =
        (n > 7 && !strncmp(tok, "http://", 7)) || (n > 8 && !strncmp(tok, "https://", 8));
    if (!has_scheme && memmem(tok, n, "://", 3))
        return tsr_errorf(TSR_EINVAL, "etcd endpoint \"%.*s\": only http:// and https://", (int)n,
                          tok);
    size_t len = n + (has_scheme ? 0 : 7);
    if (len > ETCD_MAX_ENDPOINT_LEN)
        return tsr_errorf(TSR_EINVAL, "etcd endpoint \"%.*s\": too long", (int)n, tok);
    char *ep = malloc(len + 1);
    if (!ep) return tsr_errorf(TSR_ENOMEM, "etcd: out of memory");
    snprintf(ep, len + 1, "%s%.*s", has_scheme ? "" : "http://", (int)n, tok);
    e->endpoints[e->n_endpoints++] = ep;
    return 0;
}

/* $name when set and not empty, else NULL. */
static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v && v[0] ? v : NULL;
}

/* A file named by $var: copied, after checking it can be read (one clear error at open, not a
 * TLS failure on every call). */
static int env_file(const char *var, char **out)
{
    const char *v = env(var);
    if (!v) return 0;
    if (access(v, R_OK)) return tsr_errorf(TSR_EINVAL, "etcd: $%s %s: %s", var, v, strerror(errno));
    return (*out = strdup(v)) ? 0 : tsr_errorf(TSR_ENOMEM, "etcd: out of memory");
}

/* etcdctl's conventions, so operators reuse what they have: https:// endpoints speak TLS,
 * verified against $ETCDCTL_CACERT (else the system's CAs), with the client certificate
 * $ETCDCTL_CERT and key $ETCDCTL_KEY; $ETCDCTL_USER "user:password" (or "user" and
 * $ETCDCTL_PASSWORD) authenticates and every call carries the token. */
static int security_from_env(tsr_etcd_t *e)
{
    int rc;
    if ((rc = env_file("ETCDCTL_CACERT", &e->cacert)) ||
        (rc = env_file("ETCDCTL_CERT", &e->cert)) || (rc = env_file("ETCDCTL_KEY", &e->key)))
        return rc;
    if (!e->cert != !e->key)
        return tsr_errorf(TSR_EINVAL, "etcd: $ETCDCTL_CERT and $ETCDCTL_KEY go together");
    const char *u = env("ETCDCTL_USER");
    if (!u) return 0;
    const char *colon = strchr(u, ':');
    const char *pw = colon ? colon + 1 : env("ETCDCTL_PASSWORD");
    if (colon && env("ETCDCTL_PASSWORD"))
        return tsr_errorf(TSR_EINVAL, "etcd: $ETCDCTL_USER holds a password and "
                                      "$ETCDCTL_PASSWORD is set too: give one");
    if (!pw)
        return tsr_errorf(TSR_EINVAL, "etcd: $ETCDCTL_USER without a password "
                                      "(\"user:password\", or $ETCDCTL_PASSWORD)");
    e->user = colon ? strndup(u, (size_t)(colon - u)) : strdup(u);
    e->password = strdup(pw);
    if (!e->user || !e->password) return tsr_errorf(TSR_ENOMEM, "etcd: out of memory");
    if (!e->user[0]) return tsr_errorf(TSR_EINVAL, "etcd: $ETCDCTL_USER: empty user name");
    return 0;
}

static void security_clear(tsr_etcd_t *e)
{
    free(e->cacert);
    free(e->cert);
    free(e->key);
    free(e->user);
    if (e->password) memset(e->password, 0, strlen(e->password));
    free(e->password);
    e->cacert = e->cert = e->key = e->user = e->password = NULL;
}

/* The TLS and auth settings of every request (the pool's handles and the watches' alike). */
static void set_security(const tsr_etcd_t *e, CURL *c)
{
    if (e->cacert) curl_easy_setopt(c, CURLOPT_CAINFO, e->cacert);
    if (e->cert) {
        curl_easy_setopt(c, CURLOPT_SSLCERT, e->cert);
        curl_easy_setopt(c, CURLOPT_SSLKEY, e->key);
    }
}

/* The headers of one request: the shared ones, plus the token when there is one. Caller frees
 * what is returned when it is not e->headers. */
static struct curl_slist *request_headers(const tsr_etcd_t *e, const char *token)
{
    if (!token) return e->headers;
    struct curl_slist *h = NULL;
    for (const struct curl_slist *p = e->headers; p; p = p->next) {
        struct curl_slist *n = curl_slist_append(h, p->data);
        if (!n) {
            curl_slist_free_all(h);
            return NULL;
        }
        h = n;
    }
    /* the gateway hands "Authorization" to etcd as the token (etcd's TokenFieldNameSwagger) */
    size_t len = strlen(token) + 16;
    char *line = malloc(len);
    struct curl_slist *n = NULL;
    if (line) {
        snprintf(line, len, "Authorization: %s", token);
        n = curl_slist_append(h, line); /* copies line */
        free(line);
    }
    if (!n) {
        curl_slist_free_all(h);
        return NULL;
    }
    return n;
}

int tsr_etcd_open(const char *endpoints, tsr_etcd_t **out)
{
    int rc;
    if (out) *out = NULL;
    if (!endpoints || !out) return tsr_errorf(TSR_EINVAL, "tsr_etcd_open: NULL argument");
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc != CURLE_OK)
        return tsr_errorf(TSR_EIO, "etcd: libcurl init failed: %s",
                          curl_easy_strerror(curl_init_rc));
    tsr_etcd_t *e = calloc(1, sizeof *e);
    if (!e) return tsr_errorf(TSR_ENOMEM, "etcd: out of memory");
    atomic_init(&e->preferred, 0);
    atomic_init(&e->timeout_ms, ETCD_DEFAULT_TIMEOUT_MS);
    if (pthread_mutex_init(&e->mu, NULL)) {
        free(e);
        return tsr_errorf(TSR_ENOMEM, "etcd: pthread_mutex_init failed");
    }
    for (const char *p = endpoints;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if ((rc = add_endpoint(e, p, n, endpoints))) goto fail;
        if (!comma) break;
        p = comma + 1;
    }
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    /* No "Expect: 100-continue" round trip before bodies over 1 KiB. */
    struct curl_slist *h2 = h ? curl_slist_append(h, "Expect:") : NULL;
    if (!h2) {
        curl_slist_free_all(h);
        rc = tsr_errorf(TSR_ENOMEM, "etcd: out of memory");
        goto fail;
    }
    e->headers = h2;
    if ((rc = security_from_env(e))) goto fail;
    *out = e;
    return 0;
fail:
    tsr_etcd_close(e);
    return rc;
}

void tsr_etcd_close(tsr_etcd_t *e)
{
    if (!e) return;
    for (int i = 0; i < e->n_pool; i++) curl_easy_cleanup(e->pool[i]);
    for (int i = 0; i < e->n_endpoints; i++) free(e->endpoints[i]);
    curl_slist_free_all(e->headers);
    security_clear(e);
    free(e->token);
    pthread_mutex_destroy(&e->mu);
    free(e);
}

void tsr_etcd_set_timeout_ms(tsr_etcd_t *e, long ms)
{
    if (e && ms > 0) atomic_store(&e->timeout_ms, ms);
}

static CURL *pool_get(tsr_etcd_t *e)
{
    CURL *c = NULL;
    pthread_mutex_lock(&e->mu);
    if (e->n_pool) c = e->pool[--e->n_pool];
    pthread_mutex_unlock(&e->mu);
    return c ? c : curl_easy_init();
}

static void pool_put(tsr_etcd_t *e, CURL *c)
{
    curl_easy_reset(c); /* keeps the live connection */
    pthread_mutex_lock(&e->mu);
    if (e->n_pool < ETCD_POOL_MAX) {
        e->pool[e->n_pool++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&e->mu);
    if (c) curl_easy_cleanup(c);
}

/* ---- one unary call ---------------------------------------------------------------------- */

struct buf {
    char *p;
    size_t n, cap;
    int too_big, oom;
};

static int buf_append(struct buf *b, const char *d, size_t n)
{
    if (n > ETCD_MAX_RESPONSE - b->n) {
        b->too_big = 1;
        return -1;
    }
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return -1;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

static size_t buf_write(char *data, size_t size, size_t nmemb, void *ud)
{
    return buf_append(ud, data, size * nmemb) ? 0 : size * nmemb;
}

static int abort_xferinfo(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    return atomic_load((atomic_int *)ud) ? 1 : 0;
}

/* A parsed 200 response. obj is root, or root's "result" for a streaming endpoint. */
struct reply {
    json_t *root, *obj;
    const char *endpoint, *path;
    int64_t revision; /* header.revision */
};

static int reply_bad(const struct reply *r, int rc, const char *what)
{
    if (rc == TSR_ENOMEM) return tsr_errorf(TSR_ENOMEM, "etcd %s: out of memory", r->path);
    return tsr_errorf(TSR_EFORMAT, "etcd %s%s: malformed response: bad %s", r->endpoint, r->path,
                      what);
}

static int grpc_code_to_tsr(int64_t code)
{
    switch (code) {
    case 3: /* INVALID_ARGUMENT */
        return TSR_EINVAL;
    case 5: /* NOT_FOUND */
        return TSR_ENOTFOUND;
    case 8: /* RESOURCE_EXHAUSTED */
        return TSR_EEXHAUSTED;
    case 11: /* OUT_OF_RANGE: compacted or future revision */
        return TSR_ERANGE;
    default:
        return TSR_EIO;
    }
}

/* A gateway error body, {"error":"..","message":"..","code":N} or, from a stream,
 * {"error":{"grpc_code":N,"message":".."}}. Sets msg and *grpc_code (-1 if not one of those). */
static void gateway_error(const char *body, size_t n, char *msg, size_t cap, int64_t *grpc_code)
{
    *grpc_code = -1;
    msg[0] = 0;
    json_t *root = json_loadb(body, n, 0, NULL);
    if (!root) { /* plain text, e.g. the gateway refusing a client certificate */
        while (n && (body[n - 1] == '\n' || body[n - 1] == ' ')) n--;
        sanitize(msg, cap, body, n);
        return;
    }
    json_t *o = root;
    if (json_is_object(o) && json_is_object(json_object_get(o, "error")))
        o = json_object_get(o, "error");
    json_t *m = json_is_object(o) ? json_object_get(o, "message") : NULL;
    if (!json_is_string(m) && json_is_object(o)) m = json_object_get(o, "error");
    if (json_is_string(m)) {
        sanitize(msg, cap, json_string_value(m), json_string_length(m));
        int64_t code;
        if (!jget_i64(o, "code", &code) && json_object_get(o, "code"))
            *grpc_code = code;
        else if (!jget_i64(o, "grpc_code", &code) && json_object_get(o, "grpc_code"))
            *grpc_code = code;
    }
    json_decref(root);
}

/* 1 when etcd refused the call's token: invalid, expired, or from an older auth revision (as
 * clientv3 retries after re-authenticating). */
static int token_stale(int64_t code, const char *msg)
{
    return code == 16 || strstr(msg, "invalid auth token") || strstr(msg, "auth store is old");
}

/* POSTs req (consumed) to path, trying each endpoint in turn while they cannot be reached. On 0,
 * *r holds the response (free r->root with json_decref), whose header has been checked. stream:
 * the endpoint is a gRPC stream and its one message is wrapped in "result". abort_flag (may be
 * NULL) cancels the call within ~1 s when it becomes non-zero. */
static int etcd_post_try(tsr_etcd_t *e, const char *path, json_t *req, int stream, long timeout_ms,
                         atomic_int *abort_flag, const char *token, int *unauth, struct reply *r)
{
    int rc;
    memset(r, 0, sizeof *r);
    r->path = path;
    *unauth = 0;
    if (!req) return tsr_errorf(TSR_ENOMEM, "etcd %s: out of memory", path);
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    if (!body) return tsr_errorf(TSR_ENOMEM, "etcd %s: out of memory", path);
    struct curl_slist *headers = request_headers(e, token);
    CURL *c = headers ? pool_get(e) : NULL;
    if (!c) {
        free(body);
        if (headers != e->headers) curl_slist_free_all(headers);
        return tsr_errorf(TSR_ENOMEM, "etcd %s: curl_easy_init failed", path);
    }
    if (timeout_ms <= 0) timeout_ms = atomic_load(&e->timeout_ms);
    struct buf b = {0};
    long status = 0;
    int start = atomic_load(&e->preferred) % e->n_endpoints;
    rc = TSR_EIO;
    for (int k = 0; k < e->n_endpoints; k++) {
        int i = (start + k) % e->n_endpoints;
        const char *ep = e->endpoints[i];
        char url[ETCD_MAX_ENDPOINT_LEN + 64];
        char cerr[CURL_ERROR_SIZE] = "";
        snprintf(url, sizeof url, "%s%s", ep, path);
        b.n = 0;
        b.too_big = b.oom = 0;
        curl_easy_reset(c);
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
        set_security(e, c);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, buf_write);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
                         timeout_ms < ETCD_CONNECT_TIMEOUT_MS ? timeout_ms
                                                              : (long)ETCD_CONNECT_TIMEOUT_MS);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        if (abort_flag) {
            curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
            curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, abort_xferinfo);
            curl_easy_setopt(c, CURLOPT_XFERINFODATA, abort_flag);
        }
        CURLcode cc = curl_easy_perform(c);
        if (cc != CURLE_OK) {
            if (b.oom) {
                rc = tsr_errorf(TSR_ENOMEM, "etcd %s%s: out of memory", ep, path);
                goto done;
            }
            if (b.too_big) {
                rc = tsr_errorf(TSR_EFORMAT, "etcd %s%s: response larger than %zu MiB", ep, path,
                                ETCD_MAX_RESPONSE >> 20);
                goto done;
            }
            if (abort_flag && atomic_load(abort_flag)) {
                rc = tsr_errorf(TSR_EIO, "etcd %s%s: cancelled", ep, path);
                goto done;
            }
            rc = tsr_errorf(TSR_EIO, "etcd %s%s: %s%s", ep, path,
                            cerr[0] ? cerr : curl_easy_strerror(cc),
                            e->n_endpoints > 1 ? " (no endpoint answered)" : "");
            continue;
        }
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        r->endpoint = ep;
        if (status == 200) {
            atomic_store(&e->preferred, i);
            rc = 0;
            break;
        }
        char msg[256];
        int64_t code;
        gateway_error(b.p ? b.p : "", b.n, msg, sizeof msg, &code);
        if (code < 0) {
            rc = tsr_errorf(TSR_EIO, "etcd %s%s: HTTP %ld%s%s", ep, path, status,
                            msg[0] ? ": " : "", msg);
        } else {
            rc = tsr_errorf(grpc_code_to_tsr(code), "etcd %s%s: %s (gRPC code %" PRId64 ")", ep,
                            path, msg, code);
            *unauth = token_stale(code, msg);
        }
        if (code != 14) goto done; /* UNAVAILABLE (e.g. no leader): another member may serve */
    }
    if (rc) goto done;

    json_error_t jerr;
    r->root = json_loadb(b.p ? b.p : "", b.n, 0, &jerr);
    if (!json_is_object(r->root)) {
        rc = tsr_errorf(TSR_EFORMAT, "etcd %s%s: response is not a JSON object (%s)", r->endpoint,
                        path, r->root ? "another JSON value" : jerr.text);
        goto done;
    }
    r->obj = r->root;
    if (stream) {
        r->obj = json_object_get(r->root, "result");
        if (!json_is_object(r->obj)) {
            char msg[256];
            int64_t code;
            gateway_error(b.p, b.n, msg, sizeof msg, &code);
            rc = msg[0] ? tsr_errorf(code >= 0 ? grpc_code_to_tsr(code) : TSR_EIO, "etcd %s%s: %s",
                                     r->endpoint, path, msg)
                        : reply_bad(r, TSR_EFORMAT, "result");
            goto done;
        }
    }
    json_t *hdr = json_object_get(r->obj, "header");
    if (!json_is_object(hdr)) {
        rc = reply_bad(r, TSR_EFORMAT, "header");
        goto done;
    }
    if (jget_i64(hdr, "revision", &r->revision) || r->revision < 0) {
        rc = reply_bad(r, TSR_EFORMAT, "header.revision");
        goto done;
    }
    rc = 0;
done:
    if (rc) {
        json_decref(r->root);
        r->root = r->obj = NULL;
    }
    free(b.p);
    free(body);
    pool_put(e, c);
    if (headers != e->headers) curl_slist_free_all(headers);
    return rc;
}

/* A copy of the token to send (caller frees), authenticating first when there is none yet; NULL
 * with *rc 0 when no user is set. */
static char *current_token(tsr_etcd_t *e, int *rc)
{
    *rc = 0;
    if (!e->user) return NULL;
    pthread_mutex_lock(&e->mu);
    char *t = e->token ? strdup(e->token) : NULL;
    pthread_mutex_unlock(&e->mu);
    if (t) return t;
    struct reply r;
    int unauth;
    *rc = etcd_post_try(e, "/v3/auth/authenticate",
                        json_pack("{s:s, s:s}", "name", e->user, "password", e->password), 0, 0,
                        NULL, NULL, &unauth, &r);
    if (*rc) {
        *rc = tsr_error_prefix(*rc, "etcd: authenticating as %s", e->user);
        return NULL;
    }
    json_t *tok = json_object_get(r.obj, "token");
    if (!json_is_string(tok) || !json_string_length(tok)) {
        *rc = reply_bad(&r, TSR_EFORMAT, "token");
        json_decref(r.root);
        return NULL;
    }
    t = strdup(json_string_value(tok));
    json_decref(r.root);
    if (!t) {
        *rc = tsr_errorf(TSR_ENOMEM, "etcd: out of memory");
        return NULL;
    }
    pthread_mutex_lock(&e->mu);
    free(e->token);
    e->token = strdup(t);
    pthread_mutex_unlock(&e->mu);
    return t;
}

/* Forgets the token if it is still stale (another thread may have replaced it already). */
static void drop_token(tsr_etcd_t *e, const char *stale)
{
    pthread_mutex_lock(&e->mu);
    if (e->token && stale && !strcmp(e->token, stale)) {
        free(e->token);
        e->token = NULL;
    }
    pthread_mutex_unlock(&e->mu);
}

/* POSTs req (consumed) as etcd_post_try does, with the token when a user is set; a token etcd
 * calls invalid or expired (its TTL is 5 minutes by default) is replaced once and the call
 * retried. */
static int etcd_post(tsr_etcd_t *e, const char *path, json_t *req, int stream, long timeout_ms,
                     atomic_int *abort_flag, struct reply *r)
{
    for (int attempt = 0;; attempt++) {
        int rc, unauth = 0;
        char *token = current_token(e, &rc);
        if (rc) {
            json_decref(req);
            memset(r, 0, sizeof *r);
            return rc;
        }
        int last = attempt == 1 || !e->user;
        if (!last) json_incref(req); /* a reference kept for the retry */
        rc = etcd_post_try(e, path, req, stream, timeout_ms, abort_flag, token, &unauth, r);
        if (unauth && token) drop_token(e, token);
        free(token);
        if (last || !unauth) {
            if (!last) json_decref(req);
            return rc;
        }
    }
}

/* ---- KV ---------------------------------------------------------------------------------- */

static int oom(void)
{
    return tsr_errorf(TSR_ENOMEM, "etcd: out of memory");
}

/* {"key": b64(key)} plus "range_end" for a prefix. */
static json_t *key_req(const char *key, int prefix)
{
    char *k = prefix ? prefix_key_b64(key) : b64_encode(key, strlen(key));
    char *end = prefix ? prefix_end_b64(key) : NULL;
    json_t *req = NULL;
    if (k && (!prefix || end))
        req = prefix ? json_pack("{s:s, s:s}", "key", k, "range_end", end)
                     : json_pack("{s:s}", "key", k);
    free(k);
    free(end);
    return req;
}

/* A PutRequest body: {"key","value"[,"lease"]}. */
static json_t *put_req(const char *key, const void *val, size_t len, int64_t lease)
{
    char *k = b64_encode(key, strlen(key));
    char *v = b64_encode(val ? val : "", val ? len : 0);
    json_t *req = NULL;
    if (k && v) req = json_pack("{s:s, s:s}", "key", k, "value", v);
    if (req && lease) {
        char l[24];
        snprintf(l, sizeof l, "%" PRId64, lease);
        if (json_object_set_new(req, "lease", json_string(l))) {
            json_decref(req);
            req = NULL;
        }
    }
    free(k);
    free(v);
    return req;
}

int tsr_etcd_put(tsr_etcd_t *e, const char *key, const void *val, size_t len, int64_t lease,
                 int64_t *revision)
{
    if (revision) *revision = 0;
    if (!e || !key || !key[0] || (!val && len))
        return tsr_errorf(TSR_EINVAL, "tsr_etcd_put: bad argument");
    json_t *req = put_req(key, val, len, lease);
    if (!req) return oom();
    struct reply r;
    int rc = etcd_post(e, "/v3/kv/put", req, 0, 0, NULL, &r);
    if (rc) return rc;
    if (revision) *revision = r.revision;
    json_decref(r.root);
    return 0;
}

int tsr_etcd_get(tsr_etcd_t *e, const char *key, char **val, size_t *len, int64_t *mod_revision)
{
    if (val) *val = NULL;
    if (len) *len = 0;
    if (mod_revision) *mod_revision = 0;
    if (!e || !key || !key[0]) return tsr_errorf(TSR_EINVAL, "tsr_etcd_get: bad argument");
    json_t *req = key_req(key, 0);
    if (!req) return oom();
    struct reply r;
    int rc = etcd_post(e, "/v3/kv/range", req, 0, 0, NULL, &r);
    if (rc) return rc;
    json_t *kvs = json_object_get(r.obj, "kvs");
    if (kvs && !json_is_array(kvs)) {
        rc = reply_bad(&r, TSR_EFORMAT, "kvs");
        goto done;
    }
    if (json_array_size(kvs) == 0) {
        rc = tsr_errorf(TSR_ENOTFOUND, "etcd: no key \"%s\"", key);
        goto done;
    }
    struct tsr_etcd_kv kv;
    const char *what;
    if ((rc = parse_kv(json_array_get(kvs, 0), &kv, &what))) {
        rc = reply_bad(&r, rc, what);
        goto done;
    }
    if (json_array_size(kvs) != 1 || strcmp(kv.key, key)) {
        rc = reply_bad(&r, TSR_EFORMAT, "kvs (not the key asked for)");
        free(kv.key);
        free(kv.val);
        goto done;
    }
    free(kv.key);
    if (val)
        *val = kv.val;
    else
        free(kv.val);
    if (len) *len = kv.val_len;
    if (mod_revision) *mod_revision = kv.mod_revision;
done:
    json_decref(r.root);
    return rc;
}

void tsr_etcd_kvs_free(struct tsr_etcd_kv *kvs, size_t n)
{
    if (!kvs) return;
    for (size_t i = 0; i < n; i++) {
        free(kvs[i].key);
        free(kvs[i].val);
    }
    free(kvs);
}

int tsr_etcd_get_prefix(tsr_etcd_t *e, const char *prefix, struct tsr_etcd_kv **kvs, size_t *n,
                        int64_t *revision)
{
    if (kvs) *kvs = NULL;
    if (n) *n = 0;
    if (revision) *revision = 0;
    if (!e || !prefix || !kvs || !n)
        return tsr_errorf(TSR_EINVAL, "tsr_etcd_get_prefix: bad argument");
    json_t *req = key_req(prefix, 1);
    if (!req) return oom();
    struct reply r;
    int rc = etcd_post(e, "/v3/kv/range", req, 0, 0, NULL, &r);
    if (rc) return rc;
    json_t *arr = json_object_get(r.obj, "kvs");
    struct tsr_etcd_kv *out = NULL;
    size_t cnt = json_array_size(arr), i = 0;
    if (arr && !json_is_array(arr)) {
        rc = reply_bad(&r, TSR_EFORMAT, "kvs");
        goto done;
    }
    if (cnt) {
        out = calloc(cnt, sizeof *out);
        if (!out) {
            rc = oom();
            goto done;
        }
    }
    for (; i < cnt; i++) {
        const char *what;
        if ((rc = parse_kv(json_array_get(arr, i), &out[i], &what))) {
            rc = reply_bad(&r, rc, what);
            goto done;
        }
        if (strncmp(out[i].key, prefix, strlen(prefix))) {
            rc = reply_bad(&r, TSR_EFORMAT, "kvs (a key outside the prefix)");
            i++;
            goto done;
        }
    }
    *kvs = out;
    *n = cnt;
    if (revision) *revision = r.revision;
    out = NULL;
done:
    tsr_etcd_kvs_free(out, i);
    json_decref(r.root);
    return rc;
}

int tsr_etcd_delete(tsr_etcd_t *e, const char *key, int prefix)
{
    if (!e || !key || (!prefix && !key[0]))
        return tsr_errorf(TSR_EINVAL, "tsr_etcd_delete: bad argument");
    json_t *req = key_req(key, prefix);
    if (!req) return oom();
    struct reply r;
    int rc = etcd_post(e, "/v3/kv/deleterange", req, 0, 0, NULL, &r);
    if (rc) return rc;
    int64_t deleted;
    if (jget_i64(r.obj, "deleted", &deleted) || deleted < 0)
        rc = reply_bad(&r, TSR_EFORMAT, "deleted");
    json_decref(r.root);
    return rc;
}

int tsr_etcd_put_if_absent(tsr_etcd_t *e, const char *key, const void *val, size_t len,
                           int64_t lease, int *created)
{
    if (created) *created = 0;
    if (!e || !key || !key[0] || (!val && len) || !created)
        return tsr_errorf(TSR_EINVAL, "tsr_etcd_put_if_absent: bad argument");
    char *k = b64_encode(key, strlen(key));
    json_t *put = put_req(key, val, len, lease);
    json_t *req = NULL;
    if (k && put) {
        /* "o" hands put to json_pack, which frees it even when it fails. */
        req = json_pack("{s:[{s:s, s:s, s:s, s:s}], s:[{s:o}]}", "compare", "target", "CREATE",
                        "result", "EQUAL", "key", k, "create_revision", "0", "success",
                        "request_put", put);
    } else {
        json_decref(put);
    }
    free(k);
    if (!req) return oom();
    struct reply r;
    int rc = etcd_post(e, "/v3/kv/txn", req, 0, 0, NULL, &r);
    if (rc) return rc;
    if (jget_bool(r.obj, "succeeded", created)) rc = reply_bad(&r, TSR_EFORMAT, "succeeded");
    json_decref(r.root);
    return rc;
}

int tsr_etcd_compact(tsr_etcd_t *e, int64_t revision)
{
    if (!e || revision <= 0) return tsr_errorf(TSR_EINVAL, "tsr_etcd_compact: bad argument");
    char rev[24];
    snprintf(rev, sizeof rev, "%" PRId64, revision);
    struct reply r;
    int rc = etcd_post(e, "/v3/kv/compaction",
                       json_pack("{s:s, s:b}", "revision", rev, "physical", 1), 0, 0, NULL, &r);
    if (rc) return rc;
    json_decref(r.root);
    return 0;
}

/* ---- leases ------------------------------------------------------------------------------ */

int tsr_etcd_lease_grant(tsr_etcd_t *e, int ttl_s, int64_t *lease)
{
    if (lease) *lease = 0;
    if (!e || ttl_s <= 0 || !lease)
        return tsr_errorf(TSR_EINVAL, "tsr_etcd_lease_grant: bad argument");
    char ttl[16];
    snprintf(ttl, sizeof ttl, "%d", ttl_s);
    struct reply r;
    int rc = etcd_post(e, "/v3/lease/grant", json_pack("{s:s}", "TTL", ttl), 0, 0, NULL, &r);
    if (rc) return rc;
    json_t *err = json_object_get(r.obj, "error");
    int64_t id, got_ttl;
    if (json_is_string(err) && json_string_length(err)) {
        char msg[256];
        sanitize(msg, sizeof msg, json_string_value(err), json_string_length(err));
        rc = tsr_errorf(TSR_EIO, "etcd %s/v3/lease/grant: %s", r.endpoint, msg);
    } else if (jget_i64(r.obj, "ID", &id) || id <= 0) {
        rc = reply_bad(&r, TSR_EFORMAT, "ID");
    } else if (jget_i64(r.obj, "TTL", &got_ttl) || got_ttl <= 0) {
        rc = reply_bad(&r, TSR_EFORMAT, "TTL");
    } else {
        *lease = id;
    }
    json_decref(r.root);
    return rc;
}

int tsr_etcd_lease_revoke(tsr_etcd_t *e, int64_t lease)
{
    if (!e || lease <= 0) return tsr_errorf(TSR_EINVAL, "tsr_etcd_lease_revoke: bad argument");
    char id[24];
    snprintf(id, sizeof id, "%" PRId64, lease);
    struct reply r;
    int rc = etcd_post(e, "/v3/lease/revoke", json_pack("{s:s}", "ID", id), 0, 0, NULL, &r);
    if (rc) return rc;
    json_decref(r.root);
    return 0;
}

struct tsr_etcd_keepalive {
    tsr_etcd_t *e;
    int64_t lease;
    long max_ttl_ms; /* the caller's ttl: refresh at least every third of it */
    void (*on_lost)(void *);
    void *arg;
    atomic_int stop;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    double deadline; /* tsr_now() by which the lease ends unless refreshed */
    long period_ms;
};

/* One refresh; *ttl is what etcd reports left (0: the lease is gone). */
static int keepalive_once(struct tsr_etcd_keepalive *k, long timeout_ms, int64_t *ttl)
{
    char id[24];
    snprintf(id, sizeof id, "%" PRId64, k->lease);
    struct reply r;
    *ttl = 0;
    int rc = etcd_post(k->e, "/v3/lease/keepalive", json_pack("{s:s}", "ID", id), 1, timeout_ms,
                       &k->stop, &r);
    if (rc) return rc;
    if (jget_i64(r.obj, "TTL", ttl)) rc = reply_bad(&r, TSR_EFORMAT, "TTL");
    json_decref(r.root);
    return rc;
}

/* A refresh sent at `sent` that got ttl seconds. */
static void keepalive_refreshed(struct tsr_etcd_keepalive *k, double sent, int64_t ttl)
{
    k->deadline = sent + (double)ttl;
    long ttl_ms = ttl > 1000000 ? 1000000000L : (long)ttl * 1000;
    if (ttl_ms > k->max_ttl_ms) ttl_ms = k->max_ttl_ms;
    k->period_ms = ttl_ms / 3 > 100 ? ttl_ms / 3 : 100;
}

static void *keepalive_main(void *p)
{
    struct tsr_etcd_keepalive *k = p;
    int failing = 0;
    char why[256] = "";
    while (!sleep_until_stopped(&k->mu, &k->cv, &k->stop, k->period_ms)) {
        double sent = tsr_now();
        long left_ms = (long)((k->deadline - sent) * 1000);
        if (left_ms <= 0) break;
        long timeout = atomic_load(&k->e->timeout_ms);
        int64_t ttl;
        int rc = keepalive_once(k, left_ms < timeout ? left_ms : timeout, &ttl);
        if (atomic_load(&k->stop)) return NULL;
        if (rc == 0 && ttl > 0) {
            if (failing) tsr_log_info("etcd lease %" PRId64 ": refreshed again", k->lease);
            failing = 0;
            keepalive_refreshed(k, sent, ttl);
            continue;
        }
        if (rc == 0 || rc == TSR_ENOTFOUND) {
            snprintf(why, sizeof why, "etcd reports it gone (expired or revoked)");
            break;
        }
        snprintf(why, sizeof why, "%s", tsr_last_error());
        if (!failing)
            tsr_log_warn("etcd lease %" PRId64 ": refresh failed, retrying: %s", k->lease, why);
        failing = 1;
        left_ms = (long)((k->deadline - tsr_now()) * 1000);
        if (left_ms <= 0) break;
        k->period_ms = left_ms < ETCD_KEEPALIVE_RETRY_MS ? left_ms : ETCD_KEEPALIVE_RETRY_MS;
    }
    if (atomic_load(&k->stop)) return NULL;
    tsr_log_warn("etcd lease %" PRId64 " lost: %s", k->lease, why[0] ? why : "its TTL ran out");
    if (k->on_lost) k->on_lost(k->arg);
    return NULL;
}

int tsr_etcd_keepalive_start(tsr_etcd_t *e, int64_t lease, int ttl_s, void (*on_lost)(void *),
                             void *arg, tsr_etcd_keepalive_t **out)
{
    int rc;
    if (out) *out = NULL;
    if (!e || lease <= 0 || ttl_s <= 0 || !out)
        return tsr_errorf(TSR_EINVAL, "tsr_etcd_keepalive_start: bad argument");
    struct tsr_etcd_keepalive *k = calloc(1, sizeof *k);
    if (!k) return oom();
    k->e = e;
    k->lease = lease;
    k->max_ttl_ms = (long)ttl_s * 1000;
    k->on_lost = on_lost;
    k->arg = arg;
    atomic_init(&k->stop, 0);
    if (pthread_mutex_init(&k->mu, NULL)) {
        rc = tsr_errorf(TSR_EINTERNAL, "etcd keepalive: pthread_mutex_init failed");
        goto fail_mutex;
    }
    if (monotonic_cond_init(&k->cv)) {
        rc = tsr_errorf(TSR_EINTERNAL, "etcd keepalive: pthread_cond_init failed");
        goto fail_cond;
    }
    double sent = tsr_now();
    int64_t ttl;
    if ((rc = keepalive_once(k, 0, &ttl))) goto fail_refresh;
    if (ttl <= 0) {
        rc = tsr_errorf(TSR_ENOTFOUND, "etcd lease %" PRId64 ": not found (expired or revoked)",
                        lease);
        goto fail_refresh;
    }
    keepalive_refreshed(k, sent, ttl);
    if (pthread_create(&k->thread, NULL, keepalive_main, k)) {
        rc = tsr_errorf(TSR_EINTERNAL, "etcd keepalive: pthread_create failed");
        goto fail_refresh;
    }
    *out = k;
    return 0;
fail_refresh:
    pthread_cond_destroy(&k->cv);
fail_cond:
    pthread_mutex_destroy(&k->mu);
fail_mutex:
    free(k);
    return rc;
}

void tsr_etcd_keepalive_stop(tsr_etcd_keepalive_t *k)
{
    if (!k) return;
    pthread_mutex_lock(&k->mu);
    atomic_store(&k->stop, 1);
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->mu);
    pthread_join(k->thread, NULL);
    pthread_cond_destroy(&k->cv);
    pthread_mutex_destroy(&k->mu);
    free(k);
}

/* ---- watch ------------------------------------------------------------------------------- */

/* How one stream ended. */
enum { STREAM_FAILED, STREAM_STOPPED, STREAM_COMPACTED };

struct tsr_etcd_watch {
    tsr_etcd_t *e;
    char *prefix; /* for messages */
    char *key_b64, *end_b64;
    void (*cb)(void *arg, const struct tsr_etcd_event *ev);
    void *arg;
    int64_t next_rev; /* the first revision not yet delivered */
    atomic_int stop;
    CURLM *multi; /* woken by stop */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* the current stream */
    struct buf in; /* bytes received, not yet a whole line */
    int created;   /* etcd confirmed the watch on this stream */
    int bad_data;  /* the stream ended on a malformed message */
    int failing;   /* the last stream failed; logged once until one works again */
    char err[512]; /* why the stream failed */
};

struct parsed_event {
    enum tsr_etcd_event_type type;
    struct tsr_etcd_kv kv;
};

static void watch_fail(struct tsr_etcd_watch *w, const char *fmt, const char *detail)
{
    if (!w->err[0]) snprintf(w->err, sizeof w->err, fmt, detail);
}

/* The same for a message that is not what etcd sends. */
static void watch_bad(struct tsr_etcd_watch *w, const char *fmt, const char *detail)
{
    watch_fail(w, fmt, detail);
    w->bad_data = 1;
}

static int parse_event_type(const json_t *t, enum tsr_etcd_event_type *out)
{
    *out = TSR_ETCD_PUT; /* absent: proto3's zero value, PUT */
    if (!t || json_is_null(t)) return 0;
    if (json_is_string(t)) {
        if (!strcmp(json_string_value(t), "PUT")) return 0;
        if (!strcmp(json_string_value(t), "DELETE")) {
            *out = TSR_ETCD_DELETE;
            return 0;
        }
        return TSR_EFORMAT;
    }
    if (json_is_integer(t) && (json_integer_value(t) == 0 || json_integer_value(t) == 1)) {
        *out = json_integer_value(t) ? TSR_ETCD_DELETE : TSR_ETCD_PUT;
        return 0;
    }
    return TSR_EFORMAT;
}

static void deliver(struct tsr_etcd_watch *w, enum tsr_etcd_event_type type,
                    const struct tsr_etcd_kv *kv)
{
    struct tsr_etcd_event ev = {
        .type = type,
        .key = kv->key,
        .val = type == TSR_ETCD_PUT ? kv->val : "",
        .val_len = type == TSR_ETCD_PUT ? kv->val_len : 0,
        .mod_revision = kv->mod_revision,
        .create_revision = kv->create_revision,
        .lease = kv->lease,
    };
    w->cb(w->arg, &ev);
}

/* Handles one WatchResponse line. Returns -1 to end the stream (w->err says why, or
 * compaction), 0 to go on. Events are all parsed before any is delivered, so a malformed
 * message delivers nothing and the resumed stream sends it again. */
static int watch_line(struct tsr_etcd_watch *w, const char *line, size_t n, int *compacted)
{
    size_t i = 0;
    while (i < n && (line[i] == ' ' || line[i] == '\r' || line[i] == '\t')) i++;
    if (i == n) return 0;
    json_error_t jerr;
    json_t *root = json_loadb(line, n, 0, &jerr);
    struct parsed_event *evs = NULL;
    size_t n_ev = 0;
    int rc = -1;
    if (!json_is_object(root)) {
        watch_bad(w, "malformed message (%s)", root ? "not an object" : jerr.text);
        goto done;
    }
    json_t *res = json_object_get(root, "result");
    if (!json_is_object(res)) {
        char msg[256];
        int64_t code;
        gateway_error(line, n, msg, sizeof msg, &code);
        if (msg[0])
            watch_fail(w, "etcd: %s", msg);
        else
            watch_bad(w, "malformed message (%s)", "no result");
        goto done;
    }
    int canceled, created;
    int64_t compact_rev;
    if (jget_bool(res, "canceled", &canceled) || jget_bool(res, "created", &created) ||
        jget_i64(res, "compact_revision", &compact_rev)) {
        watch_bad(w, "malformed message (%s)", "canceled/created/compact_revision");
        goto done;
    }
    if (canceled) {
        if (compact_rev > 0) {
            struct tsr_etcd_kv kv = {.key = "", .val = "", .mod_revision = compact_rev};
            if (!atomic_load(&w->stop)) deliver(w, TSR_ETCD_COMPACTED, &kv);
            if (compact_rev + 1 > w->next_rev) w->next_rev = compact_rev + 1;
            *compacted = 1;
            goto done;
        }
        json_t *why = json_object_get(res, "cancel_reason");
        char msg[256] = "no reason given";
        if (json_is_string(why) && json_string_length(why))
            sanitize(msg, sizeof msg, json_string_value(why), json_string_length(why));
        watch_fail(w, "etcd canceled the watch: %s", msg);
        goto done;
    }
    if (created) {
        w->created = 1;
        if (w->failing)
            tsr_log_info("etcd watch on \"%s\": connected again, from revision %" PRId64, w->prefix,
                         w->next_rev);
        w->failing = 0;
    }
    json_t *arr = json_object_get(res, "events");
    if (arr && !json_is_array(arr)) {
        watch_bad(w, "malformed message (%s)", "events");
        goto done;
    }
    if (json_array_size(arr) && !w->created) {
        watch_bad(w, "malformed stream (%s)", "events before the watch was created");
        goto done;
    }
    if (json_array_size(arr)) {
        evs = calloc(json_array_size(arr), sizeof *evs);
        if (!evs) {
            watch_fail(w, "%s", "out of memory");
            goto done;
        }
    }
    int64_t last = 0;
    for (size_t k = 0; k < json_array_size(arr); k++) {
        json_t *ev = json_array_get(arr, k);
        const char *what = "event";
        int prc = json_is_object(ev) ? 0 : TSR_EFORMAT;
        if (!prc) {
            what = "event type";
            prc = parse_event_type(json_object_get(ev, "type"), &evs[n_ev].type);
        }
        if (!prc) prc = parse_kv(json_object_get(ev, "kv"), &evs[n_ev].kv, &what);
        if (prc) {
            watch_bad(w, "malformed event (bad %s)", what);
            goto done;
        }
        n_ev++;
        int64_t rev = evs[n_ev - 1].kv.mod_revision;
        if (rev <= 0 || rev < last) {
            watch_bad(w, "malformed stream (%s)", "event revisions out of order");
            goto done;
        }
        last = rev;
    }
    /* A revision's events all come in one message, so next_rev moves once the message is done;
     * events below it were delivered before a reconnect and are not repeated. */
    int64_t from = w->next_rev;
    for (size_t k = 0; k < n_ev; k++) {
        if (evs[k].kv.mod_revision < from) continue;
        if (atomic_load(&w->stop)) goto done;
        deliver(w, evs[k].type, &evs[k].kv);
    }
    if (last >= w->next_rev) w->next_rev = last + 1;
    rc = 0;
done:
    for (size_t k = 0; k < n_ev; k++) {
        free(evs[k].kv.key);
        free(evs[k].kv.val);
    }
    free(evs);
    json_decref(root);
    return rc;
}

/* Runs every whole line in w->in. Returns -1 when the stream must end. */
static int watch_drain(struct tsr_etcd_watch *w, int *compacted)
{
    size_t off = 0;
    int rc = 0;
    while (off < w->in.n) {
        char *nl = memchr(w->in.p + off, '\n', w->in.n - off);
        if (!nl) break;
        size_t len = (size_t)(nl - (w->in.p + off));
        rc = watch_line(w, w->in.p + off, len, compacted);
        off += len + 1;
        if (rc) break;
    }
    if (off) { /* off > 0 means the buffer exists; an empty one may still be NULL */
        memmove(w->in.p, w->in.p + off, w->in.n - off);
        w->in.n -= off;
    }
    return rc;
}

/* One streaming POST /v3/watch from w->next_rev until it fails, compaction ends it, or stop. */
static int watch_stream(struct tsr_etcd_watch *w, const char *ep)
{
    char rev[24], url[ETCD_MAX_ENDPOINT_LEN + 64], cerr[CURL_ERROR_SIZE] = "";
    snprintf(rev, sizeof rev, "%" PRId64, w->next_rev);
    snprintf(url, sizeof url, "%s/v3/watch", ep);
    w->in.n = 0;
    w->in.too_big = w->in.oom = 0;
    w->created = w->bad_data = 0;
    w->err[0] = 0;
    json_t *req = json_pack("{s:{s:s, s:s, s:s}}", "create_request", "key", w->key_b64, "range_end",
                            w->end_b64, "start_revision", rev);
    char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    CURL *c = body ? curl_easy_init() : NULL;
    if (!c) {
        free(body);
        watch_fail(w, "%s", "out of memory");
        return STREAM_FAILED;
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    int trc;
    char *token = current_token(w->e, &trc);
    struct curl_slist *headers = trc ? NULL : request_headers(w->e, token);
    if (!headers) {
        watch_fail(w, "%s", trc ? tsr_last_error() : "out of memory");
        free(token);
        curl_easy_cleanup(c);
        free(body);
        return STREAM_FAILED;
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    set_security(w->e, c);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, buf_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &w->in);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)ETCD_CONNECT_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    /* An idle stream is normal; TCP keepalive notices a peer that vanished without a FIN. */
    curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(c, CURLOPT_TCP_KEEPIDLE, 10L);
    curl_easy_setopt(c, CURLOPT_TCP_KEEPINTVL, 5L);
    if (curl_multi_add_handle(w->multi, c) != CURLM_OK) {
        curl_easy_cleanup(c);
        free(body);
        if (headers != w->e->headers) curl_slist_free_all(headers);
        free(token);
        watch_fail(w, "%s", "curl_multi_add_handle failed");
        return STREAM_FAILED;
    }
    int end = STREAM_FAILED, compacted = 0, running = 1;
    long status = 0;
    while (!atomic_load(&w->stop)) {
        CURLMcode mc = curl_multi_perform(w->multi, &running);
        if (mc != CURLM_OK) {
            watch_fail(w, "curl: %s", curl_multi_strerror(mc));
            break;
        }
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        /* A non-200 answer is one error object: read it whole once the transfer ends. */
        if (status == 200 && watch_drain(w, &compacted)) break;
        if (!running) break;
        mc = curl_multi_poll(w->multi, NULL, 0, 1000, NULL);
        if (mc != CURLM_OK) {
            watch_fail(w, "curl: %s", curl_multi_strerror(mc));
            break;
        }
    }
    CURLcode cc = CURLE_OK;
    CURLMsg *m;
    int q;
    while ((m = curl_multi_info_read(w->multi, &q)))
        if (m->msg == CURLMSG_DONE) cc = m->data.result;
    if (atomic_load(&w->stop)) {
        end = STREAM_STOPPED;
    } else if (compacted) {
        end = STREAM_COMPACTED;
    } else if (!w->err[0]) {
        if (w->in.oom) {
            watch_fail(w, "%s", "out of memory");
        } else if (w->in.too_big) {
            watch_fail(w, "%s", "a message larger than 256 MiB");
        } else if (status != 200 && status != 0) {
            char msg[256];
            int64_t code;
            gateway_error(w->in.p ? w->in.p : "", w->in.n, msg, sizeof msg, &code);
            snprintf(w->err, sizeof w->err, "HTTP %ld%s%s", status, msg[0] ? ": " : "", msg);
            if (token && token_stale(code, msg)) drop_token(w->e, token); /* next try: a new one */
        } else if (cc != CURLE_OK) {
            watch_fail(w, "%s", cerr[0] ? cerr : curl_easy_strerror(cc));
        } else {
            watch_fail(w, "%s", "etcd closed the stream");
        }
    }
    curl_multi_remove_handle(w->multi, c);
    curl_easy_cleanup(c);
    free(body);
    if (headers != w->e->headers) curl_slist_free_all(headers);
    free(token);
    return end;
}

static void *watch_main(void *p)
{
    struct tsr_etcd_watch *w = p;
    tsr_etcd_t *e = w->e;
    int ep = atomic_load(&e->preferred) % e->n_endpoints;
    long backoff = 0;
    while (!atomic_load(&w->stop)) {
        if (backoff && sleep_until_stopped(&w->mu, &w->cv, &w->stop, backoff)) break;
        int end = watch_stream(w, e->endpoints[ep]);
        if (end == STREAM_STOPPED) break;
        if (end == STREAM_COMPACTED) {
            backoff = 0;
            continue;
        }
        if (!w->failing)
            tsr_log_warn("etcd watch on \"%s\" via %s: %s; reconnecting from revision %" PRId64,
                         w->prefix, e->endpoints[ep], w->err, w->next_rev);
        w->failing = 1;
        /* A stream that worked and then broke is retried soon; failures in a row, and peers
         * that send what etcd does not, back off. */
        if (w->created && !w->bad_data)
            backoff = ETCD_WATCH_BACKOFF_MIN_MS;
        else if (!backoff)
            backoff = ETCD_WATCH_BACKOFF_MIN_MS;
        else
            backoff =
                backoff * 2 > ETCD_WATCH_BACKOFF_MAX_MS ? ETCD_WATCH_BACKOFF_MAX_MS : backoff * 2;
        ep = (ep + 1) % e->n_endpoints;
    }
    return NULL;
}

static void watch_free(struct tsr_etcd_watch *w)
{
    if (w->multi) curl_multi_cleanup(w->multi);
    free(w->in.p);
    free(w->prefix);
    free(w->key_b64);
    free(w->end_b64);
    free(w);
}

int tsr_etcd_watch_start(tsr_etcd_t *e, const char *prefix, int64_t start_revision,
                         void (*cb)(void *arg, const struct tsr_etcd_event *ev), void *arg,
                         tsr_etcd_watch_t **out)
{
    int rc;
    if (out) *out = NULL;
    if (!e || !prefix || start_revision < 0 || !cb || !out)
        return tsr_errorf(TSR_EINVAL, "tsr_etcd_watch_start: bad argument");
    struct tsr_etcd_watch *w = calloc(1, sizeof *w);
    if (!w) return oom();
    w->e = e;
    w->cb = cb;
    w->arg = arg;
    atomic_init(&w->stop, 0);
    w->prefix = strdup(prefix);
    w->key_b64 = prefix_key_b64(prefix);
    w->end_b64 = prefix_end_b64(prefix);
    w->multi = curl_multi_init();
    if (!w->prefix || !w->key_b64 || !w->end_b64 || !w->multi) {
        rc = oom();
        goto fail_alloc;
    }
    w->next_rev = start_revision;
    if (start_revision == 0) {
        /* "From now" pinned to a revision, so a reconnect cannot skip what happened meanwhile.
         */
        struct reply r;
        json_t *req = json_pack("{s:s, s:b}", "key", w->key_b64, "count_only", 1);
        if ((rc = etcd_post(e, "/v3/kv/range", req, 0, 0, NULL, &r))) goto fail_alloc;
        w->next_rev = r.revision + 1;
        json_decref(r.root);
    }
    if (pthread_mutex_init(&w->mu, NULL)) {
        rc = tsr_errorf(TSR_EINTERNAL, "etcd watch: pthread_mutex_init failed");
        goto fail_alloc;
    }
    if (monotonic_cond_init(&w->cv)) {
        rc = tsr_errorf(TSR_EINTERNAL, "etcd watch: pthread_cond_init failed");
        goto fail_cond;
    }
    if (pthread_create(&w->thread, NULL, watch_main, w)) {
        rc = tsr_errorf(TSR_EINTERNAL, "etcd watch: pthread_create failed");
        goto fail_thread;
    }
    *out = w;
    return 0;
fail_thread:
    pthread_cond_destroy(&w->cv);
fail_cond:
    pthread_mutex_destroy(&w->mu);
fail_alloc:
    watch_free(w);
    return rc;
}

void tsr_etcd_watch_stop(tsr_etcd_watch_t *w)
{
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    atomic_store(&w->stop, 1);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    curl_multi_wakeup(w->multi);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    watch_free(w);
}

/* ---- private server ---------------------------------------------------------------------- */

static int mkdir_p(const char *dir)
{
    char path[512];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof path) return -1;
    memcpy(path, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (path[i] != '/' && path[i] != 0) continue;
        char c = path[i];
        path[i] = 0;
        if (mkdir(path, 0755) && errno != EEXIST) return -1;
        path[i] = c;
    }
    return 0;
}

/* Two distinct free loopback ports (held open together so they differ; etcd may still lose a
 * race for them, which the caller retries). */
static int free_ports(int ports[2])
{
    int fds[2] = {-1, -1}, rc = -1;
    for (int i = 0; i < 2; i++) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof a;
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fds[i] < 0 || bind(fds[i], (struct sockaddr *)&a, sizeof a) ||
            getsockname(fds[i], (struct sockaddr *)&a, &len))
            goto done;
        ports[i] = ntohs(a.sin_port);
    }
    rc = 0;
done:
    for (int i = 0; i < 2; i++)
        if (fds[i] >= 0) close(fds[i]);
    return rc;
}

/* 1 if the log, from offset on, says a port was taken. */
static int log_says_port_taken(const char *log, off_t offset)
{
    FILE *f = fopen(log, "r");
    if (!f) return 0;
    char line[4096];
    int found = 0;
    if (fseeko(f, offset, SEEK_SET) == 0) {
        while (!found && fgets(line, sizeof line, f))
            found = strstr(line, "address already in use") != NULL;
    }
    fclose(f);
    return found;
}

static void reap(int pid, int sig)
{
    int st;
    kill(pid, sig);
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
}

extern char **environ;

/* One attempt on fresh ports; *port_taken is set when etcd could not bind them. */
static int server_try(const char *bin, struct tsr_etcd_server *s, int *port_taken)
{
    int ports[2], rc;
    *port_taken = 0;
    if (free_ports(ports))
        return tsr_errorf(TSR_EIO, "etcd server: no free port: %s", strerror(errno));
    char data[600], log[600], curl_[64], purl[64], cluster[96];
    snprintf(data, sizeof data, "%s/etcd-data", s->dir);
    snprintf(log, sizeof log, "%s/etcd.log", s->dir);
    snprintf(curl_, sizeof curl_, "http://127.0.0.1:%d", ports[0]);
    snprintf(purl, sizeof purl, "http://127.0.0.1:%d", ports[1]);
    snprintf(cluster, sizeof cluster, "tessera=%s", purl);
    char *argv[] = {(char *)bin, "--name",
                    "tessera",   "--data-dir",
                    data,        "--listen-client-urls",
                    curl_,       "--advertise-client-urls",
                    curl_,       "--listen-peer-urls",
                    purl,        "--initial-advertise-peer-urls",
                    purl,        "--initial-cluster",
                    cluster,     "--initial-cluster-state",
                    "new",       "--logger",
                    "zap",       "--log-outputs",
                    "stderr",    NULL};
    /* ETCD_* variables would fight the flags (etcd refuses to start when both are set). */
    size_t n_env = 0, j = 0;
    while (environ && environ[n_env]) n_env++;
    char **envp = calloc(n_env + 1, sizeof *envp);
    if (!envp) return oom();
    for (size_t i = 0; i < n_env; i++)
        if (strncmp(environ[i], "ETCD_", 5)) envp[j++] = environ[i];

    int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int log_fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (null_fd < 0 || log_fd < 0) {
        rc = tsr_errorf(TSR_EIO, "etcd server: %s: %s", log, strerror(errno));
        goto fail_fds;
    }
    struct stat st;
    off_t log_start = fstat(log_fd, &st) ? 0 : st.st_size;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        rc = tsr_errorf(TSR_EIO, "etcd server: fork: %s", strerror(errno));
        goto fail_fds;
    }
    if (pid == 0) {
        /* Only async-signal-safe calls between fork and exec. */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        struct sigaction dfl = {.sa_handler = SIG_DFL};
        int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGPIPE};
        for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaction(sigs[i], &dfl, NULL);
        dup2(null_fd, 0);
        dup2(log_fd, 1);
        dup2(log_fd, 2);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        execve(bin, argv, envp);
        _exit(127);
    }
    close(null_fd);
    close(log_fd);
    null_fd = log_fd = -1;
    free(envp);
    envp = NULL;
    s->pid = (int)pid;
    s->client_port = ports[0];
    snprintf(s->endpoint, sizeof s->endpoint, "%s", curl_);

    tsr_etcd_t *cl;
    if ((rc = tsr_etcd_open(s->endpoint, &cl))) goto fail_child;
    security_clear(cl); /* our own etcd is plain, whatever the environment says of others */
    tsr_etcd_set_timeout_ms(cl, 1000);
    double deadline = tsr_now() + ETCD_SERVER_WAIT_MS / 1000.0;
    for (;;) {
        int wst;
        pid_t r = waitpid(pid, &wst, WNOHANG);
        if (r == pid) {
            s->pid = 0;
            *port_taken = log_says_port_taken(log, log_start);
            rc = tsr_errorf(TSR_EIO, "etcd server %s exited (%s %d) before answering; see %s", bin,
                            WIFEXITED(wst) ? "status" : "signal",
                            WIFEXITED(wst) ? WEXITSTATUS(wst) : WTERMSIG(wst), log);
            break;
        }
        int grc = tsr_etcd_get(cl, "tessera/.probe", NULL, NULL, NULL);
        if (grc == 0 || grc == TSR_ENOTFOUND) {
            rc = 0;
            break;
        }
        if (tsr_now() > deadline) {
            rc = tsr_errorf(TSR_EIO, "etcd server %s did not answer at %s within %d s; see %s", bin,
                            s->endpoint, ETCD_SERVER_WAIT_MS / 1000, log);
            break;
        }
        usleep(50 * 1000);
    }
    tsr_etcd_close(cl);
    if (rc) goto fail_child;
    return 0;
fail_child:
    if (s->pid > 0) reap(s->pid, SIGKILL);
    s->pid = 0;
    return rc;
fail_fds:
    if (null_fd >= 0) close(null_fd);
    if (log_fd >= 0) close(log_fd);
    free(envp);
    return rc;
}

int tsr_etcd_server_start(const char *dir, struct tsr_etcd_server *s)
{
    if (!s) return tsr_errorf(TSR_EINVAL, "tsr_etcd_server_start: NULL server");
    memset(s, 0, sizeof *s);
    if (!dir || !dir[0] || strlen(dir) >= sizeof s->dir - 32)
        return tsr_errorf(TSR_EINVAL, "etcd server: bad directory \"%s\"", dir ? dir : "(null)");
    snprintf(s->dir, sizeof s->dir, "%s", dir);
    if (mkdir_p(dir)) return tsr_errorf(TSR_EIO, "etcd server: mkdir %s: %s", dir, strerror(errno));
    const char *bin = getenv("TESSERA_ETCD_BIN");
    if (!bin || !bin[0]) bin = "/usr/bin/etcd";
    if (access(bin, X_OK))
        return tsr_errorf(TSR_ENOTFOUND,
                          "etcd server: %s: %s (install etcd-server or set TESSERA_ETCD_BIN)", bin,
                          strerror(errno));
    int rc = TSR_EIO, port_taken = 1;
    for (int attempt = 0; attempt < 3 && port_taken; attempt++)
        rc = server_try(bin, s, &port_taken);
    if (rc) {
        char keep[sizeof s->dir];
        memcpy(keep, s->dir, sizeof keep);
        memset(s, 0, sizeof *s);
        memcpy(s->dir, keep, sizeof keep);
    }
    return rc;
}

void tsr_etcd_server_stop(struct tsr_etcd_server *s)
{
    if (!s || s->pid <= 0) return;
    pid_t pid = s->pid;
    int st;
    kill(pid, SIGTERM);
    for (int i = 0; i < 500; i++) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid || (r < 0 && errno != EINTR)) goto done;
        usleep(10 * 1000);
    }
    tsr_log_warn("etcd server %d ignored SIGTERM for 5 s; killing it", (int)pid);
    reap(pid, SIGKILL);
done:
    s->pid = 0;
}
