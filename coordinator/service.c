#include "coordinator/service.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "coordinator/request.h"
#include "coordinator/textstream.h"
#include "coordinator/validate.h"
#include "grpc/health/v1/health.pb-c.h"
#include "model/tokenizer.h"
#include "tessera/v1/inference.pb-c.h"
#include "tessera/v1/worker.pb-c.h"

struct tsr_coord {
    const tsr_model_t *m;
    const tsr_tokenizer_t *tok; /* NULL for synthetic models: token ids only */
    const struct tsr_model_config *cfg;
    tsr_router_t *r;
    struct tsr_coord_opts o;
    tsr_rpc_server_t *srv;
    char model_id[256]; /* the file's name without .gguf, or the synthetic spec */
    pthread_mutex_t mu;
    int64_t in_flight, next_id;
    int draining;
};

enum { RETRIES = 3, POLL_MS = 20 };

static int code_of(int rc)
{
    switch (rc) {
    case TSR_EINVAL:
    case TSR_ERANGE:
    case TSR_EFORMAT:
        return TSR_RPC_INVALID_ARGUMENT;
    case TSR_ENOMEM:
    case TSR_EEXHAUSTED:
        return TSR_RPC_RESOURCE_EXHAUSTED;
    case TSR_ENOTFOUND:
        return TSR_RPC_NOT_FOUND;
    case TSR_EUNSUPPORTED: /* e.g. chat messages for a model whose template tessera cannot render */
        return TSR_RPC_UNIMPLEMENTED;
    case TSR_EUNAVAILABLE:
    case TSR_EIO:
        return TSR_RPC_UNAVAILABLE;
    default:
        return TSR_RPC_INTERNAL;
    }
}

/* "models/SmolLM2-135M-Instruct.Q4_1.gguf" → "SmolLM2-135M-Instruct.Q4_1"; a directory's last
 * name; a synthetic spec as it is. */
static void make_model_id(const char *name, char *out, size_t cap)
{
    size_t n = strlen(name);
    while (n > 1 && name[n - 1] == '/') n--;
    const char *base = name;
    if (strncmp(name, "synthetic:", 10))
        for (size_t i = 0; i < n; i++)
            if (name[i] == '/') base = name + i + 1;
    size_t len = (size_t)(name + n - base);
    if (len > 5 && !strncmp(base + len - 5, ".gguf", 5)) len -= 5;
    snprintf(out, cap, "%.*s", (int)len, base);
}

static int check_model(struct tsr_coord *c, tsr_rpc_call_t *call, const char *model)
{
    if (!model || !model[0] || !strcmp(model, c->model_id) || !strcmp(model, tsr_model_name(c->m)))
        return 0;
    tsr_rpc_call_finishf(call, TSR_RPC_NOT_FOUND,
                         "model '%s' is not served here; this server serves '%s' (ListModels)",
                         model, c->model_id);
    return 1;
}

/* ---- Generate ---- */

struct relay {
    struct tsr_coord *c;
    tsr_rpc_call_t *call;
    const char *request_id;
    int logprobs;
    int n_prompt;
    int n_done;   /* tokens relayed to the client */
    int sent_any; /* a token reached the client: no retry after this */
    tsr_textstream_t *text;
};

static Tessera__V1__FinishReason worker_finish(const Tessera__V1__WorkerGenerateResponse *w)
{
    return w->has_finish_reason ? w->finish_reason
                                : TESSERA__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED;
}

/* One message from the leader to the client. Returns 1 when the stream is over (finish reason
 * or stop string), 0 to go on, TSR_ECANCELLED when the client is gone, TSR_EFORMAT (message
 * set) when the leader's message makes no sense. */
static int relay_message(struct relay *rl, const Tessera__V1__WorkerGenerateResponse *w)
{
    if (rl->logprobs && w->n_logprobs != w->n_token_ids)
        return tsr_errorf(TSR_EFORMAT, "%zu logprobs for %zu token ids", w->n_logprobs,
                          w->n_token_ids);
    struct tsr_text_delta d;
    int rc = tsr_textstream_push(rl->text, w->token_ids, w->n_token_ids, worker_finish(w), &d);
    if (rc) return rc == TSR_EINVAL ? TSR_EFORMAT : rc; /* its message stands */
    rl->n_done += (int)d.n_ids;
    if (!d.n_ids && !d.n_text && !d.over) return 0;
    Tessera__V1__GenerateResponse m = TESSERA__V1__GENERATE_RESPONSE__INIT;
    Tessera__V1__Usage u = TESSERA__V1__USAGE__INIT;
    m.request_id = (char *)rl->request_id;
    m.n_token_ids = d.n_ids;
    m.token_ids = w->token_ids;
    if (rl->logprobs) {
        m.n_logprobs = d.n_ids;
        m.logprobs = w->logprobs;
    }
    if (d.over) {
        m.has_finish_reason = 1;
        m.finish_reason = d.finish;
        u.has_prompt_tokens = u.has_completion_tokens = 1;
        u.prompt_tokens = rl->n_prompt;
        u.completion_tokens = rl->n_done;
        m.usage = &u;
    }
    size_t len;
    /* the text may hold U+0000, which a protobuf-c string cannot */
    unsigned text_field = protobuf_c_message_descriptor_get_field_by_name(
                              &tessera__v1__generate_response__descriptor, "text")
                              ->id;
    uint8_t *buf = tsr_pb_pack_with_bytes(&m.base, text_field, d.text, d.n_text, &len);
    if (!buf) return tsr_errorf(TSR_ENOMEM, "out of memory");
    rc = tsr_rpc_call_send(rl->call, buf, len);
    free(buf);
    rl->sent_any = 1;
    if (rc) return TSR_ECANCELLED;
    return d.over;
}

enum upstream_end { UP_DONE, UP_CLIENT_GONE, UP_RETRY, UP_FAILED };

/* Streams one attempt from group g. */
static enum upstream_end relay_attempt(struct relay *rl, tsr_route_t *g,
                                       const Tessera__V1__WorkerGenerateRequest *wr, int *code,
                                       char *msg, size_t msg_cap)
{
    struct tsr_coord *c = rl->c;
    int64_t left = tsr_rpc_call_time_left_ms(rl->call);
    tsr_rpc_stream_t *s;
    if (tsr_rpc_stream_open_pb(tsr_route_channel(g), "/tessera.v1.Worker/Generate", &wr->base,
                               left == INT64_MAX ? 0 : (left > 0 ? left : 1), &s)) {
        snprintf(msg, msg_cap, "%s", tsr_last_error());
        *code = TSR_RPC_INTERNAL;
        return UP_FAILED;
    }
    enum upstream_end end = UP_DONE;
    for (;;) {
        const void *buf;
        size_t len;
        int rc = tsr_rpc_stream_recv(s, &buf, &len, POLL_MS);
        if (rc == TSR_ETIMEDOUT) {
            if (tsr_rpc_call_cancelled(rl->call, 0)) {
                end = UP_CLIENT_GONE;
                break;
            }
            if (!tsr_route_alive(c->r, g)) {
                /* etcd says the group is gone (a rank died, its lease expired) */
                snprintf(msg, msg_cap, "replica %s left the cluster mid-request",
                         tsr_route_name(g));
                *code = TSR_RPC_UNAVAILABLE;
                end = rl->sent_any ? UP_FAILED : UP_RETRY;
                break;
            }
            continue;
        }
        if (rc == 1) {
            const char *d;
            int st = tsr_rpc_stream_status(s, &d);
            if (st == TSR_RPC_OK) {
                /* the leader ended without a finish reason: count it as a failure */
                snprintf(msg, msg_cap, "replica %s ended the stream early", tsr_route_name(g));
                *code = TSR_RPC_UNAVAILABLE;
                end = rl->sent_any ? UP_FAILED : UP_RETRY;
            } else if (st == TSR_RPC_UNAVAILABLE || st == TSR_RPC_CANCELLED ||
                       st == TSR_RPC_UNKNOWN || st == TSR_RPC_INTERNAL) {
                snprintf(msg, msg_cap, "replica %s (%s) failed: %s: %s", tsr_route_name(g),
                         tsr_route_addr(g), tsr_rpc_code_name(st), d);
                *code = TSR_RPC_UNAVAILABLE;
                end = rl->sent_any ? UP_FAILED : UP_RETRY;
            } else {
                snprintf(msg, msg_cap, "%s", d);
                *code = st;
                end = UP_FAILED;
            }
            break;
        }
        if (rc) {
            snprintf(msg, msg_cap, "reading from replica %s: %s", tsr_route_name(g),
                     tsr_last_error());
            *code = TSR_RPC_INTERNAL;
            end = UP_FAILED;
            break;
        }
        Tessera__V1__WorkerGenerateResponse *w =
            tessera__v1__worker_generate_response__unpack(NULL, len, buf);
        if (!w) {
            snprintf(msg, msg_cap, "replica %s sent a malformed message", tsr_route_name(g));
            *code = TSR_RPC_INTERNAL;
            end = UP_FAILED;
            break;
        }
        int before = rl->n_done;
        int over = relay_message(rl, w);
        tsr_route_progress(c->r, g, rl->n_done - before);
        tessera__v1__worker_generate_response__free_unpacked(w, NULL);
        if (over == TSR_ECANCELLED) {
            end = UP_CLIENT_GONE;
            break;
        }
        if (over < 0) {
            if (over == TSR_EFORMAT)
                snprintf(msg, msg_cap, "replica %s sent a bad message: %s", tsr_route_name(g),
                         tsr_last_error());
            else
                snprintf(msg, msg_cap, "%s", tsr_last_error());
            *code = over == TSR_EFORMAT ? TSR_RPC_INTERNAL : code_of(over);
            end = UP_FAILED;
            break;
        }
        if (over) {
            end = UP_DONE;
            break;
        }
    }
    tsr_rpc_stream_cancel(s); /* a no-op when the stream already ended */
    tsr_rpc_stream_free(s);
    return end;
}

static void fill_worker_request(Tessera__V1__WorkerGenerateRequest *wr, const char *request_id,
                                int32_t *ids, size_t n, const struct tsr_sampling *sp,
                                int max_tokens, const Tessera__V1__GenerateRequest *r)
{
    wr->request_id = (char *)request_id;
    wr->n_prompt_ids = n;
    wr->prompt_ids = ids;
    wr->has_temperature = wr->has_top_k = wr->has_top_p = wr->has_min_p = 1;
    wr->has_repetition_penalty = wr->has_seed = wr->has_max_tokens = wr->has_ignore_eos = 1;
    wr->temperature = sp->temperature;
    wr->top_k = sp->top_k;
    wr->top_p = sp->top_p;
    wr->min_p = sp->min_p;
    wr->repetition_penalty = sp->repetition_penalty;
    wr->seed = sp->seed;
    wr->max_tokens = max_tokens;
    wr->n_stop_ids = r->n_stop_token_ids;
    wr->stop_ids = r->stop_token_ids;
    wr->ignore_eos = r->has_ignore_eos && r->ignore_eos;
}

static void relay(struct tsr_coord *c, tsr_rpc_call_t *call, const Tessera__V1__GenerateRequest *r,
                  const char *request_id, int32_t *ids, size_t n, const struct tsr_sampling *sp,
                  int max_tokens)
{
    struct relay rl = {.c = c,
                       .call = call,
                       .request_id = request_id,
                       .logprobs = r->has_logprobs && r->logprobs,
                       .n_prompt = (int)n};
    if (!(rl.text = tsr_textstream_new(c->tok, r->stop, r->n_stop))) {
        tsr_rpc_call_finish(call, TSR_RPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    Tessera__V1__WorkerGenerateRequest wr = TESSERA__V1__WORKER_GENERATE_REQUEST__INIT;
    fill_worker_request(&wr, request_id, ids, n, sp, max_tokens, r);
    int64_t load = (int64_t)n + max_tokens;
    tsr_route_t *avoid = NULL;
    int code = TSR_RPC_UNAVAILABLE;
    char msg[512] = "no replica is ready to serve";
    enum upstream_end end = UP_FAILED;
    for (int attempt = 0; attempt < RETRIES; attempt++) {
        tsr_route_t *g = tsr_router_pick(c->r, load, avoid);
        if (!g && tsr_router_wait_ready(c->r, c->o.ready_wait_ms) > 0)
            g = tsr_router_pick(c->r, load, avoid);
        if (!g) {
            if (avoid) snprintf(msg + strlen(msg), sizeof msg - strlen(msg), "; no other replica");
            end = UP_FAILED;
            break;
        }
        int done_before = rl.n_done;
        end = relay_attempt(&rl, g, &wr, &code, msg, sizeof msg);
        /* what this group was booked for and did not stream */
        tsr_route_progress(c->r, g, load - (rl.n_done - done_before));
        if (end != UP_RETRY) {
            tsr_route_release(c->r, g, 0);
            break;
        }
        tsr_log_warn("coordinator: %s: %s; retrying on another replica", request_id, msg);
        tsr_route_release(c->r, avoid, 0);
        avoid = g; /* keeps its reference, so the identity stays valid */
    }
    tsr_route_release(c->r, avoid, 0);
    if (end == UP_DONE)
        tsr_rpc_call_finish(call, TSR_RPC_OK, NULL);
    else if (end == UP_CLIENT_GONE)
        tsr_rpc_call_finish(call, TSR_RPC_CANCELLED, "cancelled");
    else
        tsr_rpc_call_finish(call, code, msg);
    tsr_textstream_free(rl.text);
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
    int32_t *ids = NULL;
    size_t n = 0;
    struct tsr_sampling sp;
    int max_tokens, rc, admitted = 0;
    char generated_id[32];
    size_t raw_len;
    const void *raw = tsr_rpc_call_request(call, &raw_len);
    if (check_model(c, call, r->model)) goto out;
    if ((rc = tsr_pb_check_strings(&tessera__v1__generate_request__descriptor, raw, raw_len)) ||
        (rc = tsr_validate_generate(r, c->cfg->n_vocab, &sp, &max_tokens)) ||
        (rc = tsr_request_tokens(c->tok, tsr_model_chat(c->m), tsr_model_name(c->m), r->input_case,
                                 r->prompt, r->messages, r->token_ids, &ids, &n)) ||
        (rc = tsr_validate_context((int)n, max_tokens, c->cfg->n_ctx_train))) {
        tsr_rpc_call_finish(call, code_of(rc), tsr_last_error());
        goto out;
    }
    pthread_mutex_lock(&c->mu);
    int draining = c->draining;
    if (!draining && c->in_flight < c->o.max_queue) {
        c->in_flight++;
        admitted = 1;
    }
    int64_t seq = ++c->next_id, in_flight = c->in_flight;
    pthread_mutex_unlock(&c->mu);
    if (draining) {
        tsr_rpc_call_finish(call, TSR_RPC_UNAVAILABLE,
                            "this coordinator is shutting down (draining): send the request to "
                            "another coordinator, or retry once it is back");
        goto out;
    }
    if (!admitted) {
        tsr_rpc_call_finishf(call, TSR_RPC_RESOURCE_EXHAUSTED,
                             "the server is full: %lld requests in flight (its --max-queue); "
                             "retry later",
                             (long long)in_flight);
        goto out;
    }
    const char *request_id = r->request_id;
    if (!request_id || !request_id[0]) {
        snprintf(generated_id, sizeof generated_id, "req-%lld", (long long)seq);
        request_id = generated_id;
    }
    relay(c, call, r, request_id, ids, n, &sp, max_tokens);
    pthread_mutex_lock(&c->mu);
    c->in_flight--;
    pthread_mutex_unlock(&c->mu);
out:
    free(ids);
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
    if (check_model(c, call, r->model)) goto out;
    /* Reuse Generate's checks on the same input. */
    Tessera__V1__GenerateRequest g = TESSERA__V1__GENERATE_REQUEST__INIT;
    g.input_case = (Tessera__V1__GenerateRequest__InputCase)r->input_case;
    if (r->input_case == TESSERA__V1__TOKENIZE_REQUEST__INPUT_PROMPT)
        g.prompt = r->prompt;
    else
        g.messages = r->messages;
    struct tsr_sampling sp;
    int mt, rc;
    size_t raw_len;
    const void *raw = tsr_rpc_call_request(call, &raw_len);
    if ((rc = tsr_pb_check_strings(&tessera__v1__tokenize_request__descriptor, raw, raw_len)) ||
        (rc = tsr_validate_generate(&g, c->cfg->n_vocab, &sp, &mt)) ||
        (rc = tsr_request_tokens(c->tok, tsr_model_chat(c->m), tsr_model_name(c->m), g.input_case,
                                 g.prompt, g.messages, NULL, &ids, &n))) {
        tsr_rpc_call_finish(call, code_of(rc), tsr_last_error());
        goto out;
    }
    pieces = calloc(n ? n : 1, sizeof *pieces);
    if (!pieces) {
        tsr_rpc_call_finish(call, TSR_RPC_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const char *p = tsr_tokenizer_piece(c->tok, ids[i]);
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
    mi.id = c->model_id;
    mi.has_context_length = mi.has_vocab_size = mi.has_ready_replicas = 1;
    mi.context_length = c->cfg->n_ctx_train;
    mi.vocab_size = c->cfg->n_vocab;
    mi.ready_replicas = tsr_router_n_ready(c->r);
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
    int n = tsr_router_list(c->r, info, MAX_LISTED);
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
    resp.model = c->model_id;
    resp.n_groups = (size_t)n;
    resp.groups = gp;
    pthread_mutex_lock(&c->mu);
    resp.has_in_flight = resp.has_queued = 1;
    resp.in_flight = c->in_flight;
    pthread_mutex_unlock(&c->mu);
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

static int health_status(struct tsr_coord *c, const char *service)
{
    if (service && service[0] && strcmp(service, "tessera.v1.Inference")) return -1;
    pthread_mutex_lock(&c->mu);
    int draining = c->draining;
    pthread_mutex_unlock(&c->mu);
    return !draining && tsr_router_n_ready(c->r) > 0
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

int tsr_coord_start(const tsr_model_t *m, tsr_router_t *r, const struct tsr_coord_opts *o,
                    tsr_coord_t **out, int *port)
{
    struct tsr_coord *c = calloc(1, sizeof *c);
    if (!c) return tsr_errorf(TSR_ENOMEM, "out of memory");
    c->m = m;
    c->tok = tsr_model_tokenizer(m);
    c->cfg = tsr_model_config(m);
    c->r = r;
    c->o = *o;
    make_model_id(tsr_model_name(m), c->model_id, sizeof c->model_id);
    if (c->o.max_queue <= 0) c->o.max_queue = 256;
    if (c->o.ready_wait_ms <= 0) c->o.ready_wait_ms = 5000;
    pthread_mutex_init(&c->mu, NULL);
    const struct tsr_rpc_method methods[] = {
        {"/tessera.v1.Inference/Generate", handle_generate, c},
        {"/tessera.v1.Inference/Tokenize", handle_tokenize, c},
        {"/tessera.v1.Inference/ListModels", handle_list_models, c},
        {"/tessera.v1.Inference/ClusterStatus", handle_cluster_status, c},
        {"/grpc.health.v1.Health/Check", handle_health_check, c},
        {"/grpc.health.v1.Health/Watch", handle_health_watch, c},
    };
    /* Calls beyond the queue bound still get a thread, to be told RESOURCE_EXHAUSTED. */
    int rc = tsr_rpc_server_start(o->listen, methods, (int)(sizeof methods / sizeof *methods),
                                  c->o.max_queue + 256, &c->srv, port);
    if (rc) {
        pthread_mutex_destroy(&c->mu);
        free(c);
        return rc;
    }
    *out = c;
    return 0;
}

int64_t tsr_coord_drain(tsr_coord_t *c)
{
    pthread_mutex_lock(&c->mu);
    c->draining = 1;
    int64_t n = c->in_flight;
    pthread_mutex_unlock(&c->mu);
    return n;
}

void tsr_coord_stop(tsr_coord_t *c)
{
    if (!c) return;
    tsr_rpc_server_stop(c->srv);
    pthread_mutex_destroy(&c->mu);
    free(c);
}
