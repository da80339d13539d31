/* The coordinator's OpenAI-compatible HTTP front end (DESIGN §1), on libmicrohttpd: a thin adapter
 * over coordinator/session.h, as the gRPC service is.
 *
 *   POST /v1/completions, /v1/chat/completions  one session each (coordinator/openai.h reads the
 *        body); "stream": true answers as server-sent events ending with "data: [DONE]", with a
 *        last usage chunk when stream_options.include_usage is set.
 *   GET  /v1/models, /v1/models/{id}             the served model.
 *   GET  /health  200 while the process runs; /ready  200 when it serves (503 draining or with no
 *        ready replica).
 * Errors are OpenAI's error object, with the HTTP status of the session's status code (400, 404,
 * 429 for RESOURCE_EXHAUSTED, 503 for UNAVAILABLE...); a body over TSR_OPENAI_MAX_BODY is 413. A
 * client that disconnects cancels its request on the worker. A thread per connection
 * (libmicrohttpd's), as gRPC has a thread per call. */
#ifndef TSR_COORDINATOR_HTTP_H
#define TSR_COORDINATOR_HTTP_H

#include "common/auth.h"
#include "coordinator/session.h"

struct tsr_http_opts {
    const char *listen;  /* "127.0.0.1:8000", "[::]:8000"; port 0 picks a free one */
    int max_connections; /* at once; more are refused */
    /* Every path but /health and /ready needs "Authorization: Bearer KEY", else 401 with
     * OpenAI's invalid_api_key error. NULL: no key. Copied. */
    const char *api_key;
    const struct tsr_tls_files *tls; /* NULL or no cert: plain HTTP (common/auth.h) */
};

typedef struct tsr_http tsr_http_t;

/* ss must outlive the server. The port bound is written to *port. */
int tsr_http_start(tsr_sessions_t *ss, const struct tsr_http_opts *o, tsr_http_t **out, int *port);
/* Cancels the requests in flight, waits for their threads, stops listening and frees. */
void tsr_http_stop(tsr_http_t *h);

#endif
