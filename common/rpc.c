#include "common/rpc.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/string_util.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"

const char *tsr_rpc_code_name(int code)
{
    static const char *names[] = {"OK",
                                  "CANCELLED",
                                  "UNKNOWN",
                                  "INVALID_ARGUMENT",
                                  "DEADLINE_EXCEEDED",
                                  "NOT_FOUND",
                                  "ALREADY_EXISTS",
                                  "PERMISSION_DENIED",
                                  "RESOURCE_EXHAUSTED",
                                  "FAILED_PRECONDITION",
                                  "ABORTED",
                                  "OUT_OF_RANGE",
                                  "UNIMPLEMENTED",
                                  "INTERNAL",
                                  "UNAVAILABLE",
                                  "DATA_LOSS",
                                  "UNAUTHENTICATED"};
    return code >= 0 && code < (int)(sizeof names / sizeof *names) ? names[code] : "UNKNOWN";
}

void tsr_rpc_init(void)
{
    grpc_init();
}
void tsr_rpc_shutdown(void)
{
    grpc_shutdown();
}

/* A batch of ops in flight on a completion queue: its tag. */
struct op {
    int done, ok;
};

static gpr_timespec after_ms(int64_t ms)
{
    if (ms < 0) return gpr_inf_future(GPR_CLOCK_MONOTONIC);
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

/* Runs cq until op is done or the deadline passes (TSR_ETIMEDOUT). Other ops that complete on
 * the way are marked done: every op of a call is bound to the call's own queue. */
static int wait_op(grpc_completion_queue *cq, struct op *op, gpr_timespec deadline)
{
    while (!op->done) {
        grpc_event ev = grpc_completion_queue_next(cq, deadline, NULL);
        if (ev.type == GRPC_QUEUE_TIMEOUT) return TSR_ETIMEDOUT;
        if (ev.type != GRPC_OP_COMPLETE) return tsr_errorf(TSR_EINTERNAL, "rpc: queue shut down");
        struct op *o = ev.tag;
        o->done = 1;
        o->ok = ev.success;
    }
    return 0;
}

static void destroy_cq(grpc_completion_queue *cq)
{
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
           GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(cq);
}

static grpc_byte_buffer *bytes_to_bb(const void *p, size_t n)
{
    grpc_slice s = grpc_slice_from_copied_buffer(p, n);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

/* Copies a received message into *buf (realloc'ed, NUL-padded for safety). */
static int bb_to_bytes(grpc_byte_buffer *bb, uint8_t **buf, size_t *len)
{
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb)) return tsr_errorf(TSR_EFORMAT, "rpc: bad message");
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    size_t n = GRPC_SLICE_LENGTH(s);
    uint8_t *p = realloc(*buf, n + 1);
    if (!p) {
        grpc_slice_unref(s);
        return tsr_errorf(TSR_ENOMEM, "rpc: out of memory for a %zu-byte message", n);
    }
    if (n) memcpy(p, GRPC_SLICE_START_PTR(s), n);
    p[n] = 0;
    grpc_slice_unref(s);
    *buf = p;
    *len = n;
    return 0;
}

static uint8_t *pack(const ProtobufCMessage *m, size_t *len)
{
    return tsr_pb_pack_with_bytes(m, 0, NULL, 0, len);
}

uint8_t *tsr_pb_pack_with_bytes(const ProtobufCMessage *m, unsigned field, const void *bytes,
                                size_t n, size_t *len)
{
    size_t base = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(base + (field ? 20 + n : 1)); /* key and length: 10 bytes each at most */
    if (!buf) return NULL;
    *len = protobuf_c_message_pack(m, buf);
    if (field) {
        uint64_t v[2] = {(uint64_t)field << 3 | 2, n}; /* wire type 2: length-delimited */
        for (int i = 0; i < 2; i++) {
            for (; v[i] >= 0x80; v[i] >>= 7) buf[(*len)++] = (uint8_t)(v[i] | 0x80);
            buf[(*len)++] = (uint8_t)v[i];
        }
        if (n) memcpy(buf + *len, bytes, n);
        *len += n;
    }
    return buf;
}

/* ---- wire checks ---- */

static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) return 0;
    }
    return TSR_EFORMAT;
}

static int check_strings(const ProtobufCMessageDescriptor *desc, const uint8_t *p,
                         const uint8_t *end, int depth)
{
    if (depth > 32) return tsr_errorf(TSR_EFORMAT, "message nested too deep");
    while (p < end) {
        uint64_t key, v;
        if (read_varint(&p, end, &key)) return tsr_errorf(TSR_EFORMAT, "bad field key");
        int wire = (int)(key & 7);
        uint64_t num = key >> 3;
        if (wire == 0) {
            if (read_varint(&p, end, &v)) return tsr_errorf(TSR_EFORMAT, "bad varint");
        } else if (wire == 1 || wire == 5) {
            size_t n = wire == 1 ? 8 : 4;
            if ((size_t)(end - p) < n) return tsr_errorf(TSR_EFORMAT, "truncated field");
            p += n;
        } else if (wire == 2) {
            if (read_varint(&p, end, &v) || v > (uint64_t)(end - p))
                return tsr_errorf(TSR_EFORMAT, "bad length");
            const ProtobufCFieldDescriptor *f =
                num <= UINT32_MAX ? protobuf_c_message_descriptor_get_field(desc, (unsigned)num)
                                  : NULL;
            if (f && f->type == PROTOBUF_C_TYPE_STRING && memchr(p, 0, (size_t)v))
                return tsr_errorf(TSR_EINVAL, "%s contains a NUL byte", f->name);
            if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
                int rc = check_strings(f->descriptor, p, p + v, depth + 1);
                if (rc) return rc;
            }
            p += v;
        } else {
            return tsr_errorf(TSR_EFORMAT, "unsupported wire type %d", wire);
        }
    }
    return 0;
}

int tsr_pb_check_strings(const ProtobufCMessageDescriptor *desc, const void *buf, size_t len)
{
    return check_strings(desc, buf, (const uint8_t *)buf + len, 0);
}

/* ---- server ---- */

/* An outstanding grpc_server_request_call: the tag its notification comes back with. */
struct pending {
    struct tsr_rpc_server *srv;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    grpc_completion_queue *cq; /* bound to the call: the handler thread's own */
};

struct tsr_rpc_server {
    grpc_server *server;
    grpc_completion_queue *cq; /* notifications of new calls and of shutdown */
    pthread_t acceptor;
    struct tsr_rpc_method *methods;
    int n_methods, max_calls;
    pthread_mutex_t mu;
    pthread_cond_t idle;
    int n_active; /* handler threads running */
    int n_pending;
    int stopping;
};

struct tsr_rpc_call {
    struct tsr_rpc_server *srv;
    grpc_call *call;
    grpc_completion_queue *cq;
    grpc_call_details details;
    grpc_metadata_array md;
    char method[256];
    uint8_t *req;
    size_t req_len;
    struct op close_op;
    int cancelled; /* written by RECV_CLOSE_ON_SERVER */
    int sent_md, finished;
};

/* Number of calls requested ahead, so a burst of new streams does not wait on one thread. */
enum { N_REQUESTED = 8 };

static int request_one(struct tsr_rpc_server *s)
{
    struct pending *p = calloc(1, sizeof *p);
    if (!p) return TSR_ENOMEM;
    p->srv = s;
    grpc_call_details_init(&p->details);
    grpc_metadata_array_init(&p->md);
    p->cq = grpc_completion_queue_create_for_next(NULL);
    grpc_call_error e =
        grpc_server_request_call(s->server, &p->call, &p->details, &p->md, p->cq, s->cq, p);
    if (e != GRPC_CALL_OK) {
        grpc_call_details_destroy(&p->details);
        grpc_metadata_array_destroy(&p->md);
        destroy_cq(p->cq);
        free(p);
        return tsr_errorf(TSR_EINTERNAL, "rpc: request_call failed (%d)", e);
    }
    s->n_pending++;
    return 0;
}

static int call_send_ops(struct tsr_rpc_call *c, grpc_op *ops, size_t n)
{
    struct op op = {0};
    if (grpc_call_start_batch(c->call, ops, n, &op, NULL) != GRPC_CALL_OK)
        return tsr_errorf(TSR_EINTERNAL, "rpc: start_batch failed");
    wait_op(c->cq, &op, gpr_inf_future(GPR_CLOCK_MONOTONIC));
    return op.ok ? 0 : TSR_ECANCELLED;
}

const void *tsr_rpc_call_request(const tsr_rpc_call_t *c, size_t *len)
{
    *len = c->req_len;
    return c->req;
}

ProtobufCMessage *tsr_rpc_call_unpack(const tsr_rpc_call_t *c,
                                      const ProtobufCMessageDescriptor *desc)
{
    return protobuf_c_message_unpack(desc, NULL, c->req_len, c->req);
}

const char *tsr_rpc_call_method(const tsr_rpc_call_t *c)
{
    return c->method;
}

int64_t tsr_rpc_call_time_left_ms(const tsr_rpc_call_t *c)
{
    gpr_timespec d = c->details.deadline;
    if (gpr_time_cmp(d, gpr_inf_future(d.clock_type)) == 0) return INT64_MAX;
    gpr_timespec left = gpr_time_sub(d, gpr_now(d.clock_type));
    int64_t ms = (int64_t)left.tv_sec * 1000 + left.tv_nsec / 1000000;
    return ms;
}

int tsr_rpc_call_send(tsr_rpc_call_t *c, const void *msg, size_t len)
{
    if (c->finished) return tsr_errorf(TSR_EINVAL, "rpc: send after finish");
    if (c->close_op.done) return TSR_ECANCELLED;
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!c->sent_md) ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    grpc_byte_buffer *bb = bytes_to_bb(msg, len);
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = bb;
    int rc = call_send_ops(c, ops, n);
    grpc_byte_buffer_destroy(bb);
    c->sent_md = 1;
    return rc;
}

int tsr_rpc_call_send_pb(tsr_rpc_call_t *c, const ProtobufCMessage *m)
{
    size_t len;
    uint8_t *buf = pack(m, &len);
    if (!buf) return TSR_ENOMEM;
    int rc = tsr_rpc_call_send(c, buf, len);
    free(buf);
    return rc;
}

int tsr_rpc_call_finish(tsr_rpc_call_t *c, int code, const char *details)
{
    if (c->finished) return tsr_errorf(TSR_EINVAL, "rpc: finished twice");
    c->finished = 1;
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!c->sent_md) ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    grpc_slice det = grpc_slice_from_copied_string(details ? details : "");
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = (grpc_status_code)code;
    ops[n++].data.send_status_from_server.status_details = &det;
    int rc = call_send_ops(c, ops, n);
    grpc_slice_unref(det);
    c->sent_md = 1;
    return rc;
}

int tsr_rpc_call_finishf(tsr_rpc_call_t *c, int code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return tsr_rpc_call_finish(c, code, msg);
}

int tsr_rpc_call_metadata(const tsr_rpc_call_t *c, const char *key, const char **val, size_t *len)
{
    size_t kl = strlen(key);
    for (size_t i = 0; i < c->md.count; i++) {
        const grpc_metadata *m = &c->md.metadata[i];
        if (GRPC_SLICE_LENGTH(m->key) != kl || memcmp(GRPC_SLICE_START_PTR(m->key), key, kl))
            continue;
        *val = (const char *)GRPC_SLICE_START_PTR(m->value);
        *len = GRPC_SLICE_LENGTH(m->value);
        return 1;
    }
    return 0;
}

int tsr_rpc_call_cancelled(tsr_rpc_call_t *c, int wait_ms)
{
    if (!c->close_op.done) wait_op(c->cq, &c->close_op, after_ms(wait_ms));
    return c->close_op.done && (c->cancelled || !c->finished);
}

static void *handler_main(void *arg)
{
    struct tsr_rpc_call *c = arg;
    struct tsr_rpc_server *s = c->srv;
    /* The request, and a watch for the end of the call (a cancel, or our status). */
    grpc_byte_buffer *bb = NULL;
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_MESSAGE;
    ops[0].data.recv_message.recv_message = &bb;
    struct op recv_op = {0};
    grpc_call_start_batch(c->call, ops, 1, &recv_op, NULL);
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[0].data.recv_close_on_server.cancelled = &c->cancelled;
    grpc_call_start_batch(c->call, ops, 1, &c->close_op, NULL);
    wait_op(c->cq, &recv_op, gpr_inf_future(GPR_CLOCK_MONOTONIC));

    const struct tsr_rpc_method *m = NULL;
    for (int i = 0; i < s->n_methods; i++)
        if (!strcmp(s->methods[i].path, c->method)) m = &s->methods[i];
    if (!recv_op.ok || !bb) {
        if (!c->close_op.done) tsr_rpc_call_finish(c, TSR_RPC_INVALID_ARGUMENT, "no request");
    } else if (bb_to_bytes(bb, &c->req, &c->req_len)) {
        tsr_rpc_call_finish(c, TSR_RPC_INTERNAL, tsr_last_error());
    } else if (!m) {
        tsr_rpc_call_finishf(c, TSR_RPC_UNIMPLEMENTED, "no method %s", c->method);
    } else {
        m->fn(c, m->arg);
        if (!c->finished) tsr_rpc_call_finish(c, TSR_RPC_INTERNAL, "handler ended no status");
    }
    if (bb) grpc_byte_buffer_destroy(bb);
    if (!c->finished) {
        grpc_call_cancel(c->call, NULL);
    }
    wait_op(c->cq, &c->close_op, gpr_inf_future(GPR_CLOCK_MONOTONIC));
    grpc_call_unref(c->call);
    destroy_cq(c->cq);
    grpc_call_details_destroy(&c->details);
    grpc_metadata_array_destroy(&c->md);
    free(c->req);
    free(c);
    pthread_mutex_lock(&s->mu);
    if (--s->n_active == 0) pthread_cond_broadcast(&s->idle);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Hands a new call to a thread of its own; refuses it when too many run or no thread starts
 * (RESOURCE_EXHAUSTED), or when the server is stopping (UNAVAILABLE: the caller may go elsewhere;
 * a coordinator moving a request off a worker that is re-registering must see that, not "busy"). */
static void dispatch(struct tsr_rpc_server *s, struct pending *p)
{
    struct tsr_rpc_call *c = calloc(1, sizeof *c);
    pthread_mutex_lock(&s->mu);
    int stopping = s->stopping, full = s->n_active >= s->max_calls || stopping;
    if (!full && c) s->n_active++;
    pthread_mutex_unlock(&s->mu);
    if (c && !full) {
        c->srv = s;
        c->call = p->call;
        c->cq = p->cq;
        c->details = p->details;
        c->md = p->md;
        size_t ml = GRPC_SLICE_LENGTH(p->details.method);
        if (ml >= sizeof c->method) ml = sizeof c->method - 1;
        memcpy(c->method, GRPC_SLICE_START_PTR(p->details.method), ml);
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 1 << 20);
        pthread_t t;
        int err = pthread_create(&t, &attr, handler_main, c);
        pthread_attr_destroy(&attr);
        if (!err) return;
        pthread_mutex_lock(&s->mu);
        s->n_active--;
        pthread_mutex_unlock(&s->mu);
    }
    free(c);
    if (stopping)
        grpc_call_cancel_with_status(p->call, GRPC_STATUS_UNAVAILABLE, "server shutting down",
                                     NULL);
    else
        grpc_call_cancel_with_status(p->call, GRPC_STATUS_RESOURCE_EXHAUSTED,
                                     "server busy: too many calls in flight", NULL);
    grpc_call_unref(p->call);
    destroy_cq(p->cq);
    grpc_call_details_destroy(&p->details);
    grpc_metadata_array_destroy(&p->md);
}

static int shutdown_tag;

static void *acceptor_main(void *arg)
{
    struct tsr_rpc_server *s = arg;
    int shut = 0;
    while (!shut || s->n_pending > 0) {
        grpc_event ev =
            grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        if (ev.type != GRPC_OP_COMPLETE) break;
        if (ev.tag == &shutdown_tag) {
            shut = 1;
            continue;
        }
        struct pending *p = ev.tag;
        s->n_pending--;
        if (!ev.success) { /* the server is shutting down */
            grpc_call_details_destroy(&p->details);
            grpc_metadata_array_destroy(&p->md);
            destroy_cq(p->cq);
            free(p);
            continue;
        }
        pthread_mutex_lock(&s->mu);
        int stopping = s->stopping;
        pthread_mutex_unlock(&s->mu);
        if (!stopping && request_one(s)) tsr_log_error("rpc: %s", tsr_last_error());
        dispatch(s, p);
        free(p);
    }
    return NULL;
}

int tsr_rpc_server_start(const char *addr, const struct tsr_rpc_method *methods, int n_methods,
                         int max_calls, tsr_rpc_server_t **out, int *port)
{
    return tsr_rpc_server_start_tls(addr, methods, n_methods, max_calls, NULL, out, port);
}

static grpc_server_credentials *server_credentials(const struct tsr_tls_files *tls)
{
    if (!tls || !tls->cert_pem) return grpc_insecure_server_credentials_create();
    grpc_ssl_pem_key_cert_pair pair = {.private_key = tls->key_pem, .cert_chain = tls->cert_pem};
    return grpc_ssl_server_credentials_create_ex(
        tls->client_ca_pem, &pair, 1,
        tls->client_ca_pem ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                           : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
        NULL);
}

int tsr_rpc_server_start_tls(const char *addr, const struct tsr_rpc_method *methods, int n_methods,
                             int max_calls, const struct tsr_tls_files *tls, tsr_rpc_server_t **out,
                             int *port)
{
    struct tsr_rpc_server *s = calloc(1, sizeof *s);
    if (!s) return TSR_ENOMEM;
    s->methods = calloc((size_t)n_methods + 1, sizeof *s->methods);
    if (!s->methods) {
        free(s);
        return TSR_ENOMEM;
    }
    memcpy(s->methods, methods, (size_t)n_methods * sizeof *methods);
    s->n_methods = n_methods;
    s->max_calls = max_calls > 0 ? max_calls : 1024;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->idle, NULL);
    tsr_rpc_init();
    grpc_arg arg = {.type = GRPC_ARG_INTEGER,
                    .key = GRPC_ARG_ALLOW_REUSEPORT,
                    .value.integer = 0}; /* a port in use is an error, not a shared port */
    grpc_channel_args args = {1, &arg};
    s->server = grpc_server_create(&args, NULL);
    s->cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(s->server, s->cq, NULL);
    grpc_server_credentials *cred = server_credentials(tls);
    int p = cred ? grpc_server_add_http2_port(s->server, addr, cred) : 0;
    if (cred) grpc_server_credentials_release(cred);
    if (p <= 0) {
        grpc_server_destroy(s->server);
        destroy_cq(s->cq);
        tsr_rpc_shutdown();
        free(s->methods);
        free(s);
        return tsr_errorf(TSR_EIO, "rpc: cannot listen on %s (address in use or invalid%s)", addr,
                          tls && tls->cert_pem ? ", or the TLS files refused" : "");
    }
    grpc_server_start(s->server);
    for (int i = 0; i < N_REQUESTED; i++)
        if (request_one(s)) break;
    pthread_create(&s->acceptor, NULL, acceptor_main, s);
    if (port) *port = p;
    *out = s;
    return 0;
}

void tsr_rpc_server_stop(tsr_rpc_server_t *s)
{
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_mutex_unlock(&s->mu);
    grpc_server_shutdown_and_notify(s->server, s->cq, &shutdown_tag);
    grpc_server_cancel_all_calls(s->server);
    pthread_join(s->acceptor, NULL);
    pthread_mutex_lock(&s->mu);
    while (s->n_active > 0) pthread_cond_wait(&s->idle, &s->mu);
    pthread_mutex_unlock(&s->mu);
    grpc_server_destroy(s->server);
    destroy_cq(s->cq);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->idle);
    free(s->methods);
    free(s);
    tsr_rpc_shutdown();
}

/* ---- client ---- */

struct tsr_rpc_channel {
    grpc_channel *ch;
    char *authorization; /* "Bearer KEY", sent on every call; NULL for none */
};

/* The first certificate of a PEM text, its base64 alone (no armour, no whitespace), so two copies
 * compare equal however their lines were wrapped. malloc'ed; NULL when there is none. */
static char *first_cert_b64(const char *pem)
{
    const char *b = pem ? strstr(pem, "-----BEGIN CERTIFICATE-----") : NULL;
    const char *e = b ? strstr(b, "-----END CERTIFICATE-----") : NULL;
    if (!e) return NULL;
    b += strlen("-----BEGIN CERTIFICATE-----");
    char *o = malloc((size_t)(e - b) + 1), *p = o;
    if (!o) return NULL;
    for (; b < e; b++)
        if (*b != '\n' && *b != '\r' && *b != ' ' && *b != '\t') *p++ = *b;
    *p = 0;
    return o;
}

/* The pinning verifier: the server's leaf certificate must be the pinned one. gRPC owns it once
 * made and calls destruct, which frees it whole. */
struct pin {
    grpc_tls_certificate_verifier_external ext;
    char *b64;
};

static int pin_verify(void *user_data, grpc_tls_custom_verification_check_request *request,
                      grpc_tls_on_custom_verification_check_done_cb callback, void *callback_arg,
                      grpc_status_code *sync_status, char **sync_error_details)
{
    char *got = first_cert_b64(request->peer_info.peer_cert);
    int ok = got && !strcmp(got, ((struct pin *)user_data)->b64);
    free(got);
    *sync_status = ok ? GRPC_STATUS_OK : GRPC_STATUS_UNAUTHENTICATED;
    if (!ok) *sync_error_details = gpr_strdup("the server's certificate is not the pinned one");
    return 1;
}

static void pin_destruct(void *user_data)
{
    struct pin *p = user_data;
    free(p->b64);
    free(p);
}

static grpc_channel_credentials *pinned_credentials(const struct tsr_rpc_channel_opts *o)
{
    struct pin *pin = calloc(1, sizeof *pin);
    if (!pin || !(pin->b64 = first_cert_b64(o->pin_pem))) {
        free(pin);
        return NULL;
    }
    pin->ext = (grpc_tls_certificate_verifier_external){
        .user_data = pin, .verify = pin_verify, .destruct = pin_destruct};
    grpc_tls_credentials_options *opts = grpc_tls_credentials_options_create();
    grpc_tls_identity_pairs *pairs = NULL;
    if (o->cert_pem && o->key_pem) {
        pairs = grpc_tls_identity_pairs_create();
        grpc_tls_identity_pairs_add_pair(pairs, o->key_pem, o->cert_pem);
    }
    if (pairs) {
        grpc_tls_certificate_provider *prov =
            grpc_tls_certificate_provider_static_data_create(NULL, pairs);
        grpc_tls_credentials_options_set_certificate_provider(opts, prov);
        grpc_tls_credentials_options_watch_identity_key_cert_pairs(opts);
        grpc_tls_certificate_provider_release(prov);
    }
    grpc_tls_credentials_options_set_verify_server_cert(opts, 0);
    grpc_tls_credentials_options_set_check_call_host(opts, 0);
    grpc_tls_certificate_verifier *v = grpc_tls_certificate_verifier_external_create(&pin->ext);
    grpc_tls_credentials_options_set_certificate_verifier(opts, v);
    grpc_tls_certificate_verifier_release(v);
    return grpc_tls_credentials_create(opts);
}

static grpc_channel_credentials *channel_credentials(const struct tsr_rpc_channel_opts *o)
{
    if (!o || (!o->ca_pem && !o->pin_pem)) return grpc_insecure_credentials_create();
    if (o->pin_pem) return pinned_credentials(o);
    grpc_ssl_pem_key_cert_pair pair = {.private_key = o->key_pem, .cert_chain = o->cert_pem};
    return grpc_ssl_credentials_create_ex(o->ca_pem, o->cert_pem && o->key_pem ? &pair : NULL, NULL,
                                          NULL);
}

struct tsr_rpc_stream {
    grpc_call *call;
    grpc_completion_queue *cq;
    grpc_metadata_array init_md, trailing_md;
    grpc_status_code status;
    grpc_slice details;
    char *details_str;
    struct op start_op, status_op, recv_op;
    grpc_byte_buffer *recv_bb;
    int recv_posted, got_init_md, ended;
    uint8_t *msg;
    size_t msg_len;
};

tsr_rpc_channel_t *tsr_rpc_channel_new(const char *target)
{
    return tsr_rpc_channel_new_opts(target, NULL);
}

tsr_rpc_channel_t *tsr_rpc_channel_new_opts(const char *target,
                                            const struct tsr_rpc_channel_opts *o)
{
    struct tsr_rpc_channel *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    tsr_rpc_init();
    /* Reconnect quickly after a worker restarts: the default backoff grows to two minutes. */
    grpc_arg args[2] = {
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, .value.integer = 1000},
        {.type = GRPC_ARG_INTEGER,
         .key = GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
         .value.integer = 100},
    };
    grpc_channel_args ca = {2, args};
    if (o && o->api_key) {
        size_t n = strlen(o->api_key) + 8;
        c->authorization = malloc(n);
        if (c->authorization) snprintf(c->authorization, n, "Bearer %s", o->api_key);
    }
    grpc_channel_credentials *cred = channel_credentials(o);
    c->ch = cred ? grpc_channel_create(target, cred, &ca) : NULL;
    if (cred) grpc_channel_credentials_release(cred);
    if (!c->ch || (o && o->api_key && !c->authorization)) {
        if (c->ch) grpc_channel_destroy(c->ch);
        free(c->authorization);
        free(c);
        tsr_rpc_shutdown();
        tsr_errorf(TSR_EINVAL, "rpc: bad target %s, or TLS files gRPC refused", target);
        return NULL;
    }
    return c;
}

void tsr_rpc_channel_free(tsr_rpc_channel_t *c)
{
    if (!c) return;
    grpc_channel_destroy(c->ch);
    free(c->authorization);
    free(c);
    tsr_rpc_shutdown();
}

int tsr_rpc_stream_open(tsr_rpc_channel_t *ch, const char *method, const void *req, size_t len,
                        int64_t timeout_ms, tsr_rpc_stream_t **out)
{
    struct tsr_rpc_stream *s = calloc(1, sizeof *s);
    if (!s) return TSR_ENOMEM;
    s->cq = grpc_completion_queue_create_for_next(NULL);
    gpr_timespec deadline = timeout_ms > 0
                                ? gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
                                               gpr_time_from_millis(timeout_ms, GPR_TIMESPAN))
                                : gpr_inf_future(GPR_CLOCK_REALTIME);
    grpc_slice m = grpc_slice_from_copied_string(method);
    s->call = grpc_channel_create_call(ch->ch, NULL, GRPC_PROPAGATE_DEFAULTS, s->cq, m, NULL,
                                       deadline, NULL);
    grpc_slice_unref(m);
    if (!s->call) {
        destroy_cq(s->cq);
        free(s);
        return tsr_errorf(TSR_EINTERNAL, "rpc: cannot create a call to %s", method);
    }
    grpc_metadata_array_init(&s->init_md);
    grpc_metadata_array_init(&s->trailing_md);
    grpc_byte_buffer *bb = bytes_to_bb(req, len);
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    grpc_metadata auth = {.key = grpc_slice_from_static_string("authorization")};
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    if (ch->authorization) {
        auth.value = grpc_slice_from_copied_string(ch->authorization);
        ops[0].data.send_initial_metadata.count = 1;
        ops[0].data.send_initial_metadata.metadata = &auth;
    }
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    grpc_call_start_batch(s->call, ops, 3, &s->start_op, NULL);
    grpc_byte_buffer_destroy(bb);                        /* the call holds its own reference */
    if (ch->authorization) grpc_slice_unref(auth.value); /* copied by start_batch */
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[0].data.recv_status_on_client.trailing_metadata = &s->trailing_md;
    ops[0].data.recv_status_on_client.status = &s->status;
    ops[0].data.recv_status_on_client.status_details = &s->details;
    grpc_call_start_batch(s->call, ops, 1, &s->status_op, NULL);
    *out = s;
    return 0;
}

int tsr_rpc_stream_open_pb(tsr_rpc_channel_t *ch, const char *method, const ProtobufCMessage *req,
                           int64_t timeout_ms, tsr_rpc_stream_t **out)
{
    size_t len;
    uint8_t *buf = pack(req, &len);
    if (!buf) return TSR_ENOMEM;
    int rc = tsr_rpc_stream_open(ch, method, buf, len, timeout_ms, out);
    free(buf);
    return rc;
}

static void stream_end(struct tsr_rpc_stream *s)
{
    wait_op(s->cq, &s->status_op, gpr_inf_future(GPR_CLOCK_MONOTONIC));
    if (!s->details_str) {
        size_t n = GRPC_SLICE_LENGTH(s->details);
        s->details_str = malloc(n + 1);
        if (s->details_str) {
            memcpy(s->details_str, GRPC_SLICE_START_PTR(s->details), n);
            s->details_str[n] = 0;
        }
    }
    s->ended = 1;
}

int tsr_rpc_stream_recv(tsr_rpc_stream_t *s, const void **msg, size_t *len, int wait_ms)
{
    if (s->ended) return 1;
    if (!s->recv_posted) {
        grpc_op ops[2];
        memset(ops, 0, sizeof ops);
        size_t n = 0;
        if (!s->got_init_md) {
            ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
            ops[n++].data.recv_initial_metadata.recv_initial_metadata = &s->init_md;
            s->got_init_md = 1;
        }
        ops[n].op = GRPC_OP_RECV_MESSAGE;
        ops[n++].data.recv_message.recv_message = &s->recv_bb;
        s->recv_op = (struct op){0};
        if (grpc_call_start_batch(s->call, ops, n, &s->recv_op, NULL) != GRPC_CALL_OK)
            return tsr_errorf(TSR_EINTERNAL, "rpc: cannot post a read");
        s->recv_posted = 1;
    }
    int rc = wait_op(s->cq, &s->recv_op, after_ms(wait_ms));
    if (rc) return rc;
    s->recv_posted = 0;
    if (!s->recv_bb) {
        stream_end(s);
        return 1;
    }
    rc = bb_to_bytes(s->recv_bb, &s->msg, &s->msg_len);
    grpc_byte_buffer_destroy(s->recv_bb);
    s->recv_bb = NULL;
    if (rc) return rc;
    *msg = s->msg;
    *len = s->msg_len;
    return 0;
}

int tsr_rpc_stream_status(const tsr_rpc_stream_t *s, const char **details)
{
    if (details) *details = s->details_str ? s->details_str : "";
    return s->ended ? (int)s->status : TSR_RPC_UNKNOWN;
}

void tsr_rpc_stream_cancel(tsr_rpc_stream_t *s)
{
    grpc_call_cancel(s->call, NULL);
}

void tsr_rpc_stream_free(tsr_rpc_stream_t *s)
{
    if (!s) return;
    if (!s->status_op.done) grpc_call_cancel(s->call, NULL);
    gpr_timespec inf = gpr_inf_future(GPR_CLOCK_MONOTONIC);
    wait_op(s->cq, &s->status_op, inf);
    wait_op(s->cq, &s->start_op, inf);
    if (s->recv_posted) wait_op(s->cq, &s->recv_op, inf);
    if (s->recv_bb) grpc_byte_buffer_destroy(s->recv_bb);
    grpc_call_unref(s->call);
    destroy_cq(s->cq);
    grpc_metadata_array_destroy(&s->init_md);
    grpc_metadata_array_destroy(&s->trailing_md);
    grpc_slice_unref(s->details);
    free(s->details_str);
    free(s->msg);
    free(s);
}

int tsr_rpc_unary(tsr_rpc_channel_t *ch, const char *method, const ProtobufCMessage *req,
                  int64_t timeout_ms, void **resp, size_t *resp_len, int *code, char **details)
{
    tsr_rpc_stream_t *s;
    *resp = NULL;
    *resp_len = 0;
    int rc = tsr_rpc_stream_open_pb(ch, method, req, timeout_ms, &s);
    if (rc) return rc;
    const void *msg;
    size_t len;
    while ((rc = tsr_rpc_stream_recv(s, &msg, &len, -1)) == 0) {
        if (*resp) continue; /* a unary method sends one; ignore extras */
        *resp = malloc(len ? len : 1);
        if (!*resp) {
            rc = TSR_ENOMEM;
            break;
        }
        memcpy(*resp, msg, len);
        *resp_len = len;
    }
    if (rc == 1) {
        const char *d;
        *code = tsr_rpc_stream_status(s, &d);
        if (details) *details = strdup(d);
        rc = 0;
    }
    tsr_rpc_stream_free(s);
    return rc;
}
