/* A thin layer over the gRPC C core (DESIGN §3: common/rpc): a server that runs each incoming call
 * on a thread of its own, and client calls with one unary request and a stream of responses.
 * Messages are opaque bytes here; callers pack and unpack them with protobuf-c.
 *
 * Why a thread per call: every call owns its own completion queue, so a handler reads top to
 * bottom (receive, send, send, finish) and can wait on its call and on client calls it makes
 * without a shared event loop. Costs a thread (≈64 KiB of touched stack) per stream in flight;
 * tessera's streams number in the hundreds per process, not the hundred thousands.
 *
 * Rules:
 * - One write in flight per stream: tsr_rpc_call_send() returns when the message is handed to the
 *   transport, so a slow reader slows its own writer and nobody else's.
 * - Every method here has a unary request (all of tessera's do, and grpc.health.v1's too).
 * - Status codes are gRPC's (enum tsr_rpc_code); the details string is for people.
 * - Clean shutdown: tsr_rpc_server_stop() stops accepting, cancels the calls in flight and
 *   returns after every handler has returned. */
#ifndef TSR_COMMON_RPC_H
#define TSR_COMMON_RPC_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "common/auth.h"

enum tsr_rpc_code {
    TSR_RPC_OK = 0,
    TSR_RPC_CANCELLED = 1,
    TSR_RPC_UNKNOWN = 2,
    TSR_RPC_INVALID_ARGUMENT = 3,
    TSR_RPC_DEADLINE_EXCEEDED = 4,
    TSR_RPC_NOT_FOUND = 5,
    TSR_RPC_RESOURCE_EXHAUSTED = 8,
    TSR_RPC_FAILED_PRECONDITION = 9,
    TSR_RPC_UNIMPLEMENTED = 12,
    TSR_RPC_INTERNAL = 13,
    TSR_RPC_UNAVAILABLE = 14,
    TSR_RPC_UNAUTHENTICATED = 16,
};

const char *tsr_rpc_code_name(int code); /* "INVALID_ARGUMENT" */

/* Starts and stops the gRPC library (reference counted; pair them). */
void tsr_rpc_init(void);
void tsr_rpc_shutdown(void);

/* ---- server ---- */

typedef struct tsr_rpc_server tsr_rpc_server_t;
typedef struct tsr_rpc_call tsr_rpc_call_t;

/* Runs on the call's own thread with the request already received. It must end the call with
 * tsr_rpc_call_finish() (if it returns without, the call ends with INTERNAL). The call is freed
 * after the handler returns. */
typedef void (*tsr_rpc_handler_fn)(tsr_rpc_call_t *call, void *arg);

struct tsr_rpc_method {
    const char *path; /* "/tessera.v1.Inference/Generate" */
    tsr_rpc_handler_fn fn;
    void *arg;
};

/* Listens on addr ("127.0.0.1:0" picks a free port, written to *port). Calls to a method not in
 * the table end with UNIMPLEMENTED; more than max_calls at once with RESOURCE_EXHAUSTED. The
 * table is copied. */
int tsr_rpc_server_start(const char *addr, const struct tsr_rpc_method *methods, int n_methods,
                         int max_calls, tsr_rpc_server_t **out, int *port);
/* The same over TLS when tls is not NULL and holds a certificate (common/auth.h): a client that
 * speaks plain text, or (with tls->client_ca_pem) shows no certificate that CA signed, fails its
 * handshake and never reaches a handler; the server goes on serving the others. */
int tsr_rpc_server_start_tls(const char *addr, const struct tsr_rpc_method *methods, int n_methods,
                             int max_calls, const struct tsr_tls_files *tls, tsr_rpc_server_t **out,
                             int *port);
/* Stops listening, cancels the calls in flight (their handlers see tsr_rpc_call_cancelled()),
 * waits for every handler to return, and frees the server. */
void tsr_rpc_server_stop(tsr_rpc_server_t *s);

/* The request's bytes, valid for the call's life. */
const void *tsr_rpc_call_request(const tsr_rpc_call_t *c, size_t *len);
/* Unpacks the request as desc's message; NULL if it does not parse (the caller answers
 * INVALID_ARGUMENT). Free with protobuf_c_message_free_unpacked(). */
ProtobufCMessage *tsr_rpc_call_unpack(const tsr_rpc_call_t *c,
                                      const ProtobufCMessageDescriptor *desc);
/* protobuf-c hands string fields to C as NUL-terminated strings, so a NUL inside one would cut it
 * short silently. 0 if no string field of the message (nested messages included) holds a NUL
 * byte; else TSR_EINVAL naming the field. Malformed wire data is TSR_EFORMAT. */
int tsr_pb_check_strings(const ProtobufCMessageDescriptor *desc, const void *buf, size_t len);
/* Packs m, then field `field` (a string or bytes field m leaves unset) with n bytes that may hold
 * NULs, which a protobuf-c string cannot; parsers take fields in any order. field 0: m alone.
 * malloc'ed (caller frees), *len bytes; NULL when out of memory. */
uint8_t *tsr_pb_pack_with_bytes(const ProtobufCMessage *m, unsigned field, const void *bytes,
                                size_t n, size_t *len);
/* Sends one response message and waits until the transport took it. TSR_ECANCELLED when the
 * client cancelled, went away or the deadline passed. */
int tsr_rpc_call_send(tsr_rpc_call_t *c, const void *msg, size_t len);
int tsr_rpc_call_send_pb(tsr_rpc_call_t *c, const ProtobufCMessage *m);
/* Ends the call with a status (TSR_RPC_OK or an error code and a message for people). Once. */
int tsr_rpc_call_finish(tsr_rpc_call_t *c, int code, const char *details);
int tsr_rpc_call_finishf(tsr_rpc_call_t *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* 1 once the client cancelled, disconnected or the call's deadline passed, else 0; waits up to
 * wait_ms for that to happen (0: just looks). */
int tsr_rpc_call_cancelled(tsr_rpc_call_t *c, int wait_ms);
/* Milliseconds left before the client's deadline; INT64_MAX when it set none. */
int64_t tsr_rpc_call_time_left_ms(const tsr_rpc_call_t *c);
const char *tsr_rpc_call_method(const tsr_rpc_call_t *c);
/* The value of the request's metadata entry key (lower case, "authorization"): 1 with *val and
 * *len (not NUL-terminated, valid for the call's life) when the client sent it, else 0. */
int tsr_rpc_call_metadata(const tsr_rpc_call_t *c, const char *key, const char **val, size_t *len);

/* ---- client ---- */

typedef struct tsr_rpc_channel tsr_rpc_channel_t;
typedef struct tsr_rpc_stream tsr_rpc_stream_t;

/* A channel to target ("127.0.0.1:7000"); connects lazily and reconnects by itself. NULL on
 * failure. Thread-safe: many calls may share one channel. */
tsr_rpc_channel_t *tsr_rpc_channel_new(const char *target);
void tsr_rpc_channel_free(tsr_rpc_channel_t *ch);

/* How a channel reaches a server that wants TLS or a key. Every field may be NULL. */
struct tsr_rpc_channel_opts {
    const char *ca_pem; /* TLS, verifying the server's chain against these roots */
    /* TLS accepting exactly this server certificate (PEM, its first one), whoever signed it: a
     * process checking on a server it started with that certificate (tessera serve). */
    const char *pin_pem;
    const char *cert_pem, *key_pem; /* a client certificate, for servers that want one */
    const char *api_key;            /* sent as "authorization: Bearer KEY" on every call */
};
/* As tsr_rpc_channel_new; plain text when neither ca_pem nor pin_pem is set. */
tsr_rpc_channel_t *tsr_rpc_channel_new_opts(const char *target,
                                            const struct tsr_rpc_channel_opts *o);

/* Starts a call: sends the one request and half-closes. timeout_ms <= 0: no deadline. A server
 * that cannot be reached shows up as status UNAVAILABLE at the first tsr_rpc_stream_recv(). */
int tsr_rpc_stream_open(tsr_rpc_channel_t *ch, const char *method, const void *req, size_t len,
                        int64_t timeout_ms, tsr_rpc_stream_t **out);
int tsr_rpc_stream_open_pb(tsr_rpc_channel_t *ch, const char *method, const ProtobufCMessage *req,
                           int64_t timeout_ms, tsr_rpc_stream_t **out);
/* The next response: 0 with *msg, *len (valid until the next recv or free); 1 at the end of the
 * stream (then read tsr_rpc_stream_status()); TSR_ETIMEDOUT when none came within wait_ms
 * (wait_ms < 0: no limit) — the read stays posted, call again to keep waiting. */
int tsr_rpc_stream_recv(tsr_rpc_stream_t *s, const void **msg, size_t *len, int wait_ms);
/* After recv returned 1: the status code and its details (valid until free). */
int tsr_rpc_stream_status(const tsr_rpc_stream_t *s, const char **details);
/* Cancels the call (the server sees it); recv then ends with CANCELLED. Thread-safe. */
void tsr_rpc_stream_cancel(tsr_rpc_stream_t *s);
void tsr_rpc_stream_free(tsr_rpc_stream_t *s);

/* A unary call: *resp (caller frees) and the status code in *code. Returns 0 when the call ran
 * to a status (check *code), else a TSR_E* code. details, if not NULL, gets a malloc'ed copy. */
int tsr_rpc_unary(tsr_rpc_channel_t *ch, const char *method, const ProtobufCMessage *req,
                  int64_t timeout_ms, void **resp, size_t *resp_len, int *code, char **details);

#endif
