#include "coordinator/http.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <jansson.h>
#include <microhttpd.h>

#include "common/auth.h"
#include "common/log.h"
#include "common/net.h"
#include "common/rpc.h"
#include "common/status.h"
#include "coordinator/metrics.h"
#include "coordinator/openai.h"

struct tsr_http {
    tsr_sessions_t *ss;
    char *api_key; /* NULL: open */
    int mtls;      /* client certificates are required (--tls-client-ca) */
    struct MHD_Daemon *d;
    json_int_t started; /* "created" of the model */
    atomic_int stopping;
    atomic_int in_flight; /* requests begun and not yet answered to their last byte */
};

/* What arrives of one request's body. */
struct body {
    char *data;
    size_t len, cap;
    int too_big;
};

static const char FINGERPRINT[] = "tessera";

/* ---- replies ---- */

static enum MHD_Result reply_text(struct MHD_Connection *conn, int status, char *text,
                                  const char *type)
{
    if (!text) return MHD_NO; /* out of memory: MHD drops the connection */
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result reply_json(struct MHD_Connection *conn, int status, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return reply_text(conn, status, s, "application/json");
}

static enum MHD_Result reply_error(struct MHD_Connection *conn, int status, const char *msg,
                                   const char *param)
{
    return reply_text(conn, status, tsr_openai_error_json(status, msg, param), "application/json");
}

/* 1 when the request carries the API key (or none is set). Every route but the probes' goes
 * through here (common/auth.h compares in constant time). */
static int authorized(const struct tsr_http *h, struct MHD_Connection *conn)
{
    const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    return tsr_auth_bearer_ok(h->api_key, v, v ? strlen(v) : 0);
}

/* Under mutual TLS, 1 when the client showed a certificate the client CA signed. MHD has GnuTLS
 * ask for one (MHD_OPTION_HTTPS_MEM_TRUST) but leaves checking it to us: a connection without
 * one is dropped at its first request, for every path, as gRPC refuses the handshake. */
static int client_cert_ok(const struct tsr_http *h, struct MHD_Connection *conn)
{
    if (!h->mtls) return 1;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    unsigned status = 0;
    if (!ci || !ci->tls_session ||
        gnutls_certificate_verify_peers2((gnutls_session_t)ci->tls_session, &status) < 0)
        return 0;
    return status == 0;
}

/* 401 as OpenAI answers a bad key: its error object with code "invalid_api_key", naming nothing
 * of ours (no model, no address, not the key sent), and the challenge RFC 6750 asks for. */
static enum MHD_Result reply_unauthorized(struct MHD_Connection *conn)
{
    int sent = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization") != NULL;
    char *text = tsr_openai_error_json(
        401,
        sent ? "Incorrect API key provided."
             : "You didn't provide an API key. You need to provide your API key in an "
               "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        NULL);
    if (!text) return MHD_NO;
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "application/json");
    MHD_add_response_header(r, "WWW-Authenticate",
                            sent ? "Bearer error=\"invalid_token\"" : "Bearer");
    enum MHD_Result rc = MHD_queue_response(conn, 401, r);
    MHD_destroy_response(r);
    return rc;
}

/* 1 when the peer closed its end (or the socket broke). Only on the connection's own thread, or
 * while that thread waits for us: the descriptor is the connection's. */
static int peer_gone(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return 0;
    if (p.revents & (POLLHUP | POLLERR | POLLRDHUP)) return 1;
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static int conn_fd(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

/* ---- a generation ---- */

/* One /v1/(chat/)completions request: parsed, then run by the session, on the connection's
 * thread (whole answers) or on a thread of its own feeding server-sent events (streams). */
struct gen {
    struct tsr_http *h;
    enum tsr_openai_kind kind;
    struct tsr_openai_request oa;
    char id[64], request_id[40];
    json_int_t created;
    int fd; /* the client's socket: read (peeked) only on the connection's thread */
    struct tsr_session_status st;
    struct tsr_openai_answer ans; /* the choices: whole, or what streams have sent */
    /* streams: the producer appends events to out, MHD's reader takes them */
    pthread_t thread;
    int has_thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char *out;
    size_t out_len, out_off, out_cap;
    int n_events, done;
    atomic_int gone; /* the client went away, or the server stops */
};

static json_t *envelope(const struct gen *g, const char *object)
{
    return json_pack("{s:s, s:s, s:I, s:s, s:s}", "id", g->id, "object", object, "created",
                     g->created, "model", tsr_sessions_model_id(g->h->ss), "system_fingerprint",
                     FINGERPRINT);
}

static int append(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t want = (*cap ? 2 * *cap : 4096);
        while (want < *len + n + 1) want *= 2;
        char *p = realloc(*buf, want);
        if (!p) return TSR_ENOMEM;
        *buf = p;
        *cap = want;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = 0;
    return 0;
}

static int gen_cancelled(void *arg)
{
    struct gen *g = arg;
    if (atomic_load(&g->gone) || atomic_load(&g->h->stopping)) return 1;
    if (!g->has_thread && g->fd >= 0 && peer_gone(g->fd)) atomic_store(&g->gone, 1);
    return atomic_load(&g->gone);
}

/* A request the server's stop ended (not its client) ends UNAVAILABLE: HTTP 503, or in a stream
 * that began, an error event of its own, then [DONE]. */
static void stopped_status(struct gen *g)
{
    if (g->st.code == TSR_RPC_CANCELLED && atomic_load(&g->h->stopping) && !atomic_load(&g->gone)) {
        g->st.code = TSR_RPC_UNAVAILABLE;
        snprintf(g->st.msg, sizeof g->st.msg, "the server is stopping");
    }
}

static int collect_chunk(void *arg, const struct tsr_session_chunk *c)
{
    struct gen *g = arg;
    if (tsr_openai_answer_add(&g->ans, c)) return TSR_ENOMEM;
    return gen_cancelled(g);
}

/* Appends one "data: ..." event (takes j). Called with g->mu held. */
static int push_event(struct gen *g, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!s) return TSR_ENOMEM;
    int rc = append(&g->out, &g->out_len, &g->out_cap, "data: ", 6);
    if (!rc) rc = append(&g->out, &g->out_len, &g->out_cap, s, strlen(s));
    if (!rc) rc = append(&g->out, &g->out_len, &g->out_cap, "\n\n", 2);
    free(s);
    g->n_events++;
    pthread_cond_broadcast(&g->cv);
    return rc;
}

static int stream_chunk(void *arg, const struct tsr_session_chunk *c)
{
    struct gen *g = arg;
    json_t *choice = tsr_openai_stream_choice(&g->ans, c);
    if (!choice) return gen_cancelled(g); /* ids, no text yet */
    json_t *j =
        envelope(g, g->kind == TSR_OPENAI_CHAT ? "chat.completion.chunk" : "text_completion");
    if (j)
        json_object_set_new(j, "choices", json_pack("[o]", choice));
    else
        json_decref(choice);
    if (j && g->oa.include_usage) json_object_set_new(j, "usage", json_null());
    pthread_mutex_lock(&g->mu);
    int rc = push_event(g, j);
    pthread_mutex_unlock(&g->mu);
    return rc ? rc : gen_cancelled(g);
}

static void *stream_main(void *arg)
{
    struct gen *g = arg;
    const struct tsr_session_io io = {.chunk = stream_chunk, .cancelled = gen_cancelled, .arg = g};
    tsr_openai_run(g->h->ss, &g->oa, &io, &g->st);
    stopped_status(g);
    pthread_mutex_lock(&g->mu);
    if (g->n_events && g->st.code == TSR_RPC_OK && g->oa.include_usage) {
        /* usage once every choice is over: the prompt once, the completions summed */
        json_t *u =
            envelope(g, g->kind == TSR_OPENAI_CHAT ? "chat.completion.chunk" : "text_completion");
        if (u) {
            json_object_set_new(u, "choices", json_array());
            json_object_set_new(u, "usage", tsr_openai_answer_usage(&g->ans));
        }
        push_event(g, u);
    }
    if (g->n_events) {
        /* a stream that broke after it began can only say so in an event of its own */
        if (g->st.code != TSR_RPC_OK) {
            char *e = tsr_openai_error_json(tsr_openai_http_status(g->st.code), g->st.msg, NULL);
            json_t *j = e ? json_loads(e, 0, NULL) : NULL;
            free(e);
            push_event(g, j);
        }
        append(&g->out, &g->out_len, &g->out_cap, "data: [DONE]\n\n", 14);
    }
    g->done = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

static void gen_free(struct gen *g)
{
    if (!g) return;
    if (g->has_thread) {
        atomic_store(&g->gone, 1);
        pthread_join(g->thread, NULL);
        pthread_cond_destroy(&g->cv);
        pthread_mutex_destroy(&g->mu);
    }
    tsr_openai_answer_free(&g->ans);
    tsr_openai_request_free(&g->oa);
    free(g->out);
    free(g);
}

/* MHD's reader of a stream's body, on the connection's thread. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct gen *g = cls;
    pthread_mutex_lock(&g->mu);
    while (g->out_off == g->out_len && !g->done) {
        /* the server's stop ends the producer's session: its last events still go out */
        if (peer_gone(g->fd)) {
            atomic_store(&g->gone, 1);
            pthread_mutex_unlock(&g->mu);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        t.tv_nsec += 50 * 1000 * 1000;
        if (t.tv_nsec >= 1000000000) t.tv_sec++, t.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&g->cv, &g->mu, &t);
    }
    ssize_t n;
    if (g->out_off == g->out_len) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        size_t k = g->out_len - g->out_off < max ? g->out_len - g->out_off : max;
        memcpy(buf, g->out + g->out_off, k);
        g->out_off += k;
        if (g->out_off == g->out_len) g->out_off = g->out_len = 0;
        n = (ssize_t)k;
    }
    pthread_mutex_unlock(&g->mu);
    return n;
}

static void stream_free(void *cls)
{
    gen_free(cls);
}

static enum MHD_Result reply_status(struct MHD_Connection *conn,
                                    const struct tsr_session_status *st)
{
    return reply_error(conn, tsr_openai_http_status(st->code), st->msg,
                       st->code == TSR_RPC_NOT_FOUND ? "model" : NULL);
}

static enum MHD_Result whole_answer(struct MHD_Connection *conn, struct gen *g)
{
    const struct tsr_session_io io = {.chunk = collect_chunk, .cancelled = gen_cancelled, .arg = g};
    if (tsr_openai_run(g->h->ss, &g->oa, &io, &g->st) != TSR_RPC_OK) {
        stopped_status(g);
        return reply_status(conn, &g->st);
    }
    json_t *choices = tsr_openai_answer_choices(&g->ans);
    json_t *j = envelope(g, g->kind == TSR_OPENAI_CHAT ? "chat.completion" : "text_completion");
    if (!j || !choices) {
        json_decref(j);
        json_decref(choices);
        return reply_error(conn, 500, "out of memory", NULL);
    }
    json_object_set_new(j, "choices", choices);
    json_object_set_new(j, "usage", tsr_openai_answer_usage(&g->ans));
    return reply_json(conn, 200, j);
}

static enum MHD_Result stream_answer(struct MHD_Connection *conn, struct gen *g)
{
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->has_thread = 1;
    if (pthread_create(&g->thread, NULL, stream_main, g)) {
        g->has_thread = 0;
        pthread_cond_destroy(&g->cv);
        pthread_mutex_destroy(&g->mu);
        return reply_error(conn, 500, "cannot start a thread", NULL);
    }
    /* Wait for the first event: a request refused before it (a bad request, a full queue, no
     * replica) gets its own HTTP status, not a stream that says so. */
    pthread_mutex_lock(&g->mu);
    while (!g->n_events && !g->done) {
        if (peer_gone(g->fd)) atomic_store(&g->gone, 1);
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        t.tv_nsec += 50 * 1000 * 1000;
        if (t.tv_nsec >= 1000000000) t.tv_sec++, t.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&g->cv, &g->mu, &t);
    }
    int started = g->n_events > 0;
    pthread_mutex_unlock(&g->mu);
    if (!started) {
        pthread_join(g->thread, NULL);
        g->has_thread = 0;
        pthread_cond_destroy(&g->cv);
        pthread_mutex_destroy(&g->mu);
        enum MHD_Result rc = reply_status(conn, &g->st);
        gen_free(g);
        return rc;
    }
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_read, g, stream_free);
    if (!r) {
        gen_free(g);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "text/event-stream");
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    enum MHD_Result rc = MHD_queue_response(conn, 200, r);
    MHD_destroy_response(r); /* MHD keeps it, and frees g through stream_free, when done */
    return rc;
}

static enum MHD_Result handle_generate(struct tsr_http *h, struct MHD_Connection *conn,
                                       enum tsr_openai_kind kind, const struct body *b)
{
    struct gen *g = calloc(1, sizeof *g);
    if (!g) return MHD_NO;
    g->h = h;
    g->kind = kind;
    g->fd = conn_fd(conn);
    g->created = (json_int_t)time(NULL);
    if (tsr_openai_parse(kind, b->data ? b->data : "", b->len, &g->oa)) {
        enum MHD_Result rc = reply_error(conn, 400, tsr_last_error(), g->oa.param);
        gen_free(g);
        return rc;
    }
    uint64_t rnd[2] = {0, 0};
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) rnd[0] ^= (uint64_t)time(NULL);
    snprintf(g->request_id, sizeof g->request_id, "%016llx%08llx", (unsigned long long)rnd[0],
             (unsigned long long)(rnd[1] & 0xffffffffu));
    snprintf(g->id, sizeof g->id, "%s-%s", kind == TSR_OPENAI_CHAT ? "chatcmpl" : "cmpl",
             g->request_id);
    g->oa.g.request_id = g->request_id;
    tsr_openai_answer_init(&g->ans, kind, &g->oa, tsr_model_tokenizer(tsr_sessions_model(h->ss)));
    if (g->oa.stream) return stream_answer(conn, g);
    enum MHD_Result rc = whole_answer(conn, g);
    gen_free(g);
    return rc;
}

/* ---- the rest of the routes ---- */

static json_t *model_json(struct tsr_http *h)
{
    return json_pack("{s:s, s:s, s:I, s:s, s:i}", "id", tsr_sessions_model_id(h->ss), "object",
                     "model", "created", h->started, "owned_by", "tessera", "max_model_len",
                     tsr_sessions_max_model_len(h->ss));
}

static enum MHD_Result route(struct tsr_http *h, struct MHD_Connection *conn, const char *url,
                             const char *method, const struct body *b)
{
    int get = !strcmp(method, "GET") || !strcmp(method, "HEAD"), post = !strcmp(method, "POST");
    if (!client_cert_ok(h, conn)) return MHD_NO;
    /* the probes stay open; everything else, unknown paths too, needs the key */
    if (strcmp(url, "/health") && strcmp(url, "/ready") && !authorized(h, conn))
        return reply_unauthorized(conn);
    if (!strcmp(url, "/v1/completions") || !strcmp(url, "/v1/chat/completions")) {
        if (!post) return reply_error(conn, 405, "use POST", NULL);
        if (b->too_big) {
            char msg[128];
            snprintf(msg, sizeof msg, "the request body is over %d bytes", TSR_OPENAI_MAX_BODY);
            return reply_error(conn, 413, msg, NULL);
        }
        return handle_generate(
            h, conn, url[4] == 'c' && url[5] == 'h' ? TSR_OPENAI_CHAT : TSR_OPENAI_COMPLETION, b);
    }
    if (!strcmp(url, "/v1/models")) {
        if (!get) return reply_error(conn, 405, "use GET", NULL);
        return reply_json(conn, 200,
                          json_pack("{s:s, s:[o]}", "object", "list", "data", model_json(h)));
    }
    if (!strncmp(url, "/v1/models/", 11)) {
        if (!get) return reply_error(conn, 405, "use GET", NULL);
        if (strcmp(url + 11, tsr_sessions_model_id(h->ss)) &&
            strcmp(url + 11, tsr_model_name(tsr_sessions_model(h->ss)))) {
            char msg[512];
            snprintf(msg, sizeof msg, "model '%.200s' is not served here; this server serves '%s'",
                     url + 11, tsr_sessions_model_id(h->ss));
            return reply_error(conn, 404, msg, "model");
        }
        return reply_json(conn, 200, model_json(h));
    }
    if (!strcmp(url, "/metrics")) {
        if (!get) return reply_error(conn, 405, "use GET", NULL);
        struct tsr_metrics_text t = {0};
        if (tsr_coordinator_metrics_render(h->ss, &t)) {
            free(t.data);
            return reply_error(conn, 500, "cannot render the metrics", NULL);
        }
        return reply_text(conn, 200, t.data, TSR_METRICS_CONTENT_TYPE);
    }
    if (!strcmp(url, "/health")) return reply_json(conn, 200, json_pack("{s:s}", "status", "ok"));
    if (!strcmp(url, "/ready")) {
        int ok = tsr_sessions_serving(h->ss);
        return reply_json(conn, ok ? 200 : 503,
                          json_pack("{s:s}", "status", ok ? "ready" : "not ready"));
    }
    char msg[300];
    snprintf(msg, sizeof msg, "no such path: %.200s", url);
    return reply_error(conn, 404, msg, NULL);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    struct tsr_http *h = cls;
    struct body *b = *con_cls;
    if (!b) {
        if (!(b = calloc(1, sizeof *b))) return MHD_NO;
        *con_cls = b;
        atomic_fetch_add(&h->in_flight, 1);
        const char *cl =
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > TSR_OPENAI_MAX_BODY) b->too_big = 1;
        return MHD_YES;
    }
    if (*upload_size) {
        if (!b->too_big && b->len + *upload_size > TSR_OPENAI_MAX_BODY) {
            b->too_big = 1;
            free(b->data);
            b->data = NULL;
            b->len = b->cap = 0;
        }
        if (!b->too_big && append(&b->data, &b->len, &b->cap, upload, *upload_size)) return MHD_NO;
        *upload_size = 0;
        return MHD_YES;
    }
    return route(h, conn, url, method, b);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct tsr_http *h = cls;
    struct body *b = *con_cls;
    if (!b) return;
    atomic_fetch_sub(&h->in_flight, 1);
    free(b->data);
    free(b);
    *con_cls = NULL;
}

int tsr_http_start(tsr_sessions_t *ss, const struct tsr_http_opts *o, tsr_http_t **out, int *port)
{
    char host[TSR_HOST_MAX], port_s[16];
    int p;
    int rc = tsr_net_split(o->listen, host, sizeof host, &p);
    if (rc) return rc;
    snprintf(port_s, sizeof port_s, "%d", p);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV},
                    *ai = NULL;
    int gai = getaddrinfo(host, port_s, &hints, &ai);
    if (gai)
        return tsr_errorf(TSR_EINVAL, "HTTP listen address %s: %s", o->listen, gai_strerror(gai));
    struct tsr_http *h = calloc(1, sizeof *h);
    if (!h) {
        freeaddrinfo(ai);
        return tsr_errorf(TSR_ENOMEM, "out of memory");
    }
    h->ss = ss;
    h->started = (json_int_t)time(NULL);
    const struct tsr_tls_files *tls = o->tls && o->tls->cert_pem ? o->tls : NULL;
    if ((o->api_key && !(h->api_key = strdup(o->api_key))) ||
        (tls && !MHD_is_feature_supported(MHD_FEATURE_TLS))) {
        freeaddrinfo(ai);
        free(h);
        return tls ? tsr_errorf(TSR_EUNSUPPORTED, "HTTP: this libmicrohttpd has no TLS")
                   : tsr_errorf(TSR_ENOMEM, "out of memory");
    }
    h->mtls = tls && tls->client_ca_pem;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_POLL | (ai->ai_family == AF_INET6 ? MHD_USE_IPv6 : 0) |
                     (tls ? MHD_USE_TLS : 0);
    /* TLS options come last and only with TLS: MHD refuses them on a plain daemon. With a client
     * CA, GnuTLS asks for a client certificate and the handshake fails without one it signed. */
    struct MHD_OptionItem tls_opts[4] = {{MHD_OPTION_END, 0, NULL}};
    int k = 0;
    if (tls) {
        tls_opts[k++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, tls->cert_pem};
        tls_opts[k++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, tls->key_pem};
        if (tls->client_ca_pem)
            tls_opts[k++] =
                (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_TRUST, 0, tls->client_ca_pem};
    }
    tls_opts[k] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
    h->d = MHD_start_daemon(
        flags, (uint16_t)p, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)(o->max_connections > 0 ? o->max_connections : 512),
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_ARRAY, tls_opts, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!h->d) {
        free(h->api_key);
        free(h);
        return tsr_errorf(TSR_EIO, "HTTP: cannot listen on %s (in use, or not this host's)",
                          o->listen);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    *port = di ? di->port : p;
    *out = h;
    return 0;
}

void tsr_http_stop(tsr_http_t *h)
{
    if (!h) return;
    atomic_store(&h->stopping, 1);
    /* Every session now ends (UNAVAILABLE): give their answers, 503s and streams' last events,
     * up to 3 s to reach the clients before the sockets close. */
    for (int i = 0; i < 300 && atomic_load(&h->in_flight) > 0; i++) usleep(10 * 1000);
    MHD_stop_daemon(h->d); /* joins every connection's thread */
    free(h->api_key);
    free(h);
}
