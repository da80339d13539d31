#include "coordinator/service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/auth.h"
#include "common/log.h"
#include "common/status.h"
#include "grpc/health/v1/health.pb-c.h"
#include "model/tokenizer.h"
#include "tessera/v1/inference.pb-c.h"
#include "tessera/v1/worker.pb-c.h"

/* A public method behind the API key. */
struct guarded {
    struct tsr_coord *c;
    tsr_rpc_handler_fn fn;
};

struct tsr_coord {
    tsr_sessions_t *ss;
    const struct tsr_model_config *cfg;
    tsr_rpc_server_t *srv;
    char *api_key; /* NULL: open */
    struct guarded guarded[4];
};

static void finish_status(tsr_rpc_call_t *call, const struct tsr_session_status *st)
{
    tsr_rpc_call_finish(call, st->code, st->code == TSR_RPC_OK ? NULL : st->msg);
}

/* ---- Generate ---- */

/* One chunk as a GenerateResponse message. */
static int send_chunk(void *arg, const struct tsr_session_chunk *ch)
{
    tsr_rpc_call_t *call = arg;
    Tessera__V1__GenerateResponse m = TESSERA__V1__GENERATE_RESPONSE__INIT;
    Tessera__V1__Usage u = TESSERA__V1__USAGE__INIT;
    m.request_id = (char *)ch->request_id;
    m.n_token_ids = ch->n_ids;
    m.token_ids = (int32_t *)ch->ids;
    if (ch->logprobs) {
        m.n_logprobs = ch->n_ids;
        m.logprobs = (float *)ch->logprobs;
    }
    if (ch->top_logprobs) {
        m.n_top_logprobs = ch->n_ids;
        m.top_logprobs = (Tessera__V1__TopLogprobs **)ch->top_logprobs;
    }
    if (ch->over) {
        m.has_finish_reason = 1;
        m.finish_reason = ch->finish;
        u.has_prompt_tokens = u.has_completion_tokens = u.has_cached_tokens = 1;
        u.prompt_tokens = ch->prompt_tokens;
        u.completion_tokens = ch->completion_tokens;
        u.cached_tokens = ch->cached_tokens;
        m.usage = &u;
    }
    size_t len;
    /* the text may hold U+0000, which a protobuf-c string cannot */
    unsigned text_field = protobuf_c_message_descriptor_get_field_by_name(
                              &tessera__v1__generate_response__descriptor, "text")
                              ->id;
    uint8_t *buf = tsr_pb_pack_with_bytes(&m.base, text_field, ch->text, ch->n_text, &len);
    if (!buf) return TSR_ENOMEM;
    int rc = tsr_rpc_call_send(call, buf, len);
    free(buf);
    return rc;
}

static int call_cancelled(void *arg)
{
    return tsr_rpc_call_cancelled(arg, 0);
}

static int64_t call_time_left(void *arg)
{
    return tsr_rpc_call_time_left_ms(arg);
}

static void handle_generate(tsr_rpc_call_t *call, void *arg)
{
    struct tsr_coord *c = arg;
    Tessera__V1__GenerateRequest *r = (Tessera__V1__GenerateRequest *)tsr_rpc_call_unpack(
        call, &tessera__v1__generate_request__descriptor);
    if (!r) {
        tsr_rpc_call_finish(call, TSR_RPC_INVALID_ARGUMENT,
                            "malformed GenerateRequest: the bytes are not a valid protobuf "
                            "message of that type");
        return;
    }
    struct tsr_session_status st;
    size_t raw_len;
    const void *raw = tsr_rpc_call_request(call, &raw_len);
    int rc = tsr_pb_check_strings(&tessera__v1__generate_request__descriptor, raw, raw_len);
    if (rc) {
        tsr_rpc_call_finish(call, TSR_RPC_INVALID_ARGUMENT, tsr_last_error());
    } else {
        const struct tsr_session_io io = {.chunk = send_chunk,
                                          .cancelled = call_cancelled,
                                          .time_left_ms = call_time_left,
                                          .arg = call};
        tsr_session_run(c->ss, r, &io, &st);
        finish_status(call, &st);
    }
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

/* ---- Tokenize, ListModels, ClusterStatus ---- */

static void handle_tokenize(tsr_rpc_call_t *call, void *arg)
{
    struct tsr_coord *c = arg;
    Tessera__V1__TokenizeRequest *r = (Tessera__V1__TokenizeRequest *)tsr_rpc_call_unpack(
        call, &tessera__v1__tokenize_request__descriptor);
    if (!r) {
        tsr_rpc_call_finish(call, TSR_RPC_INVALID_ARGUMENT, "malformed TokenizeRequest");
        return;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    char **pieces = NULL;
    struct tsr_session_status st;
    /* Generate's checks on the same input (a TokenizeRequest's cases have the same numbers). */
    Tessera__V1__GenerateRequest g = TESSERA__V1__GENERATE_REQUEST__INIT;
    g.model = r->model;
    g.input_case = (Tessera__V1__GenerateRequest__InputCase)r->input_case;
    if (r->input_case == TESSERA__V1__TOKENIZE_REQUEST__INPUT_PROMPT)
        g.prompt = r->prompt;
    else
        g.messages = r->messages;
    size_t raw_len;
    const void *raw = tsr_rpc_call_request(call, &raw_len);
    if (tsr_pb_check_strings(&tessera__v1__tokenize_request__descriptor, raw, raw_len)) {
        tsr_rpc_call_finish(call, TSR_RPC_INVALID_ARGUMENT, tsr_last_error());
        goto out;
    }
    if (tsr_session_tokens(c->ss, &g, &ids, &n, &st)) {
        finish_status(call, &st);
        goto out;
    }
    pieces = calloc(n ? n : 1, sizeof *pieces);
    if (!pieces) {
        tsr_rpc_call_finish(call, TSR_RPC_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    const tsr_tokenizer_t *tok = tsr_model_tokenizer(tsr_sessions_model(c->ss));
    for (size_t i = 0; i < n; i++) {
        const char *p = tsr_tokenizer_piece(tok, ids[i]);
        pieces[i] = (char *)(p ? p : "");
    }
    Tessera__V1__TokenizeResponse resp = TESSERA__V1__TOKENIZE_RESPONSE__INIT;
    resp.n_token_ids = resp.n_pieces = n;
    resp.token_ids = ids;
    resp.pieces = pieces;
    tsr_rpc_call_send_pb(call, &resp.base);
    tsr_rpc_call_finish(call, TSR_RPC_OK, NULL);
out:
    free(pieces);
    free(ids);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void handle_list_models(tsr_rpc_call_t *call, void *arg)
{
    struct tsr_coord *c = arg;
    Tessera__V1__ModelInfo mi = TESSERA__V1__MODEL_INFO__INIT;
    mi.id = (char *)tsr_sessions_model_id(c->ss);
    mi.has_context_length = mi.has_vocab_size = mi.has_ready_replicas = 1;
    mi.context_length = tsr_sessions_max_model_len(c->ss);
    mi.vocab_size = c->cfg->n_vocab;
    mi.ready_replicas = tsr_router_n_ready(tsr_sessions_router(c->ss));
    Tessera__V1__ModelInfo *list[1] = {&mi};
    Tessera__V1__ListModelsResponse resp = TESSERA__V1__LIST_MODELS_RESPONSE__INIT;
    resp.n_models = 1;
    resp.models = list;
    tsr_rpc_call_send_pb(call, &resp.base);
    tsr_rpc_call_finish(call, TSR_RPC_OK, NULL);
}

enum { MAX_LISTED = 256 };

static void handle_cluster_status(tsr_rpc_call_t *call, void *arg)
{
    struct tsr_coord *c = arg;
    struct tsr_route_info *info = calloc(MAX_LISTED, sizeof *info);
    Tessera__V1__GroupStatus *gs = calloc(MAX_LISTED, sizeof *gs);
    Tessera__V1__GroupStatus **gp = calloc(MAX_LISTED, sizeof *gp);
    Tessera__V1__WorkerStats **ws = calloc(MAX_LISTED, sizeof *ws);
    if (!info || !gs || !gp || !ws) {
        tsr_rpc_call_finish(call, TSR_RPC_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    int n = tsr_router_list(tsr_sessions_router(c->ss), info, MAX_LISTED);
    if (n > MAX_LISTED) n = MAX_LISTED;
    for (int i = 0; i < n; i++) {
        tessera__v1__group_status__init(&gs[i]);
        gs[i].group = info[i].group;
        gs[i].address = info[i].addr;
        gs[i].has_generation = gs[i].has_ready = gs[i].has_outstanding_tokens = 1;
        gs[i].generation = info[i].generation;
        gs[i].ready = 1;
        gs[i].outstanding_tokens = info[i].outstanding;
        /* Ask the leader; a short timeout, so one stuck group does not stall the page. */
        tsr_rpc_channel_t *ch = tsr_rpc_channel_new(info[i].addr);
        Tessera__V1__WorkerStatsRequest req = TESSERA__V1__WORKER_STATS_REQUEST__INIT;
        void *resp = NULL;
        size_t len;
        int code = -1;
        if (ch &&
            !tsr_rpc_unary(ch, "/tessera.v1.Worker/Stats", &req.base, 2000, &resp, &len, &code,
                           NULL) &&
            code == TSR_RPC_OK && resp)
            ws[i] = tessera__v1__worker_stats__unpack(NULL, len, resp);
        free(resp);
        tsr_rpc_channel_free(ch);
        gs[i].stats = ws[i];
        gp[i] = &gs[i];
    }
    Tessera__V1__ClusterStatusResponse resp = TESSERA__V1__CLUSTER_STATUS_RESPONSE__INIT;
    resp.model = (char *)tsr_sessions_model_id(c->ss);
    resp.n_groups = (size_t)n;
    resp.groups = gp;
    resp.has_in_flight = resp.has_queued = 1;
    resp.in_flight = tsr_sessions_in_flight(c->ss);
    tsr_rpc_call_send_pb(call, &resp.base);
    tsr_rpc_call_finish(call, TSR_RPC_OK, NULL);
    for (int i = 0; i < n; i++)
        if (ws[i]) tessera__v1__worker_stats__free_unpacked(ws[i], NULL);
out:
    free(info);
    free(gs);
    free(gp);
    free(ws);
}

/* ---- grpc.health.v1.Health ---- */

/* Liveness and readiness apart (docs/api.md): "liveness" is SERVING while the process answers,
 * draining or not; "", "readiness" and "tessera.v1.Inference" once it serves (a ready group, not
 * draining). */
static int health_status(struct tsr_coord *c, const char *service)
{
    if (service && !strcmp(service, "liveness"))
        return GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    if (service && service[0] && strcmp(service, "readiness") &&
        strcmp(service, "tessera.v1.Inference"))
        return -1;
    return tsr_sessions_serving(c->ss)
               ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
               : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
}

static void handle_health(tsr_rpc_call_t *call, void *arg, int watch)
{
    struct tsr_coord *c = arg;
    Grpc__Health__V1__HealthCheckRequest *r =
        (Grpc__Health__V1__HealthCheckRequest *)tsr_rpc_call_unpack(
            call, &grpc__health__v1__health_check_request__descriptor);
    if (!r) {
        tsr_rpc_call_finish(call, TSR_RPC_INVALID_ARGUMENT, "malformed HealthCheckRequest");
        return;
    }
    int st = health_status(c, r->service);
    if (st < 0 && !watch) {
        tsr_rpc_call_finishf(call, TSR_RPC_NOT_FOUND, "unknown service '%s'", r->service);
        goto out;
    }
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    int last = -2;
    do {
        int now = st < 0 ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN
                         : health_status(c, r->service);
        if (now != last) {
            resp.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)now;
            if (tsr_rpc_call_send_pb(call, &resp.base)) break;
            last = now;
        }
    } while (watch && !tsr_rpc_call_cancelled(call, 200));
    tsr_rpc_call_finish(call, TSR_RPC_OK, NULL);
out:
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void handle_health_check(tsr_rpc_call_t *call, void *arg)
{
    handle_health(call, arg, 0);
}
static void handle_health_watch(tsr_rpc_call_t *call, void *arg)
{
    handle_health(call, arg, 1);
}

/* Every method of tessera.v1.Inference needs the key; a call without it is told only that (no
 * model name, no address: the caller has proved nothing yet). grpc.health.v1 stays open so load
 * balancers and Kubernetes probes need no secret; it tells SERVING or not, nothing else. */
static void handle_guarded(tsr_rpc_call_t *call, void *arg)
{
    const struct guarded *g = arg;
    const char *v = NULL;
    size_t n = 0;
    if (!tsr_rpc_call_metadata(call, "authorization", &v, &n)) v = NULL;
    if (!tsr_auth_bearer_ok(g->c->api_key, v, n)) {
        tsr_rpc_call_finish(call, TSR_RPC_UNAUTHENTICATED,
                            v ? "invalid API key"
                              : "missing API key: send the metadata "
                                "'authorization: Bearer <key>'");
        return;
    }
    g->fn(call, g->c);
}

int tsr_coord_start(tsr_sessions_t *ss, const struct tsr_coord_opts *o, tsr_coord_t **out,
                    int *port)
{
    struct tsr_coord *c = calloc(1, sizeof *c);
    if (!c) return tsr_errorf(TSR_ENOMEM, "out of memory");
    c->ss = ss;
    c->cfg = tsr_model_config(tsr_sessions_model(ss));
    if (o->api_key && !(c->api_key = strdup(o->api_key))) {
        free(c);
        return tsr_errorf(TSR_ENOMEM, "out of memory");
    }
    const tsr_rpc_handler_fn public_fns[4] = {handle_generate, handle_tokenize, handle_list_models,
                                              handle_cluster_status};
    for (int i = 0; i < 4; i++) c->guarded[i] = (struct guarded){c, public_fns[i]};
    const struct tsr_rpc_method methods[] = {
        {"/tessera.v1.Inference/Generate", handle_guarded, &c->guarded[0]},
        {"/tessera.v1.Inference/Tokenize", handle_guarded, &c->guarded[1]},
        {"/tessera.v1.Inference/ListModels", handle_guarded, &c->guarded[2]},
        {"/tessera.v1.Inference/ClusterStatus", handle_guarded, &c->guarded[3]},
        {"/grpc.health.v1.Health/Check", handle_health_check, c},
        {"/grpc.health.v1.Health/Watch", handle_health_watch, c},
    };
    /* Calls beyond the queue bound still get a thread, to be told RESOURCE_EXHAUSTED. */
    int rc = tsr_rpc_server_start_tls(o->listen, methods, (int)(sizeof methods / sizeof *methods),
                                      o->max_calls, o->tls, &c->srv, port);
    if (rc) {
        free(c->api_key);
        free(c);
        return rc;
    }
    *out = c;
    return 0;
}

void tsr_coord_stop(tsr_coord_t *c)
{
    if (!c) return;
    tsr_rpc_server_stop(c->srv);
    free(c->api_key);
    free(c);
}
