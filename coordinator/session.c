#include "coordinator/session.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "common/log.h"
#include "common/rpc.h"
#include "common/status.h"
#include "coordinator/metrics.h"
#include "coordinator/request.h"
#include "coordinator/textstream.h"
#include "coordinator/validate.h"
#include "model/tokenizer.h"
#include "tessera/v1/worker.pb-c.h"

struct tsr_sessions {
    const tsr_model_t *m;
    const tsr_tokenizer_t *tok; /* NULL for synthetic models: token ids only */
    const struct tsr_model_config *cfg;
    tsr_router_t *r;
    struct tsr_session_opts o;
    char model_id[256];
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

static int set_status(struct tsr_session_status *st, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int set_status(struct tsr_session_status *st, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(st->msg, sizeof st->msg, fmt, ap);
    va_end(ap);
    st->code = code;
    return code;
}

tsr_sessions_t *tsr_sessions_new(const tsr_model_t *m, tsr_router_t *r,
                                 const struct tsr_session_opts *o)
{
    struct tsr_sessions *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->m = m;
    s->tok = tsr_model_tokenizer(m);
    s->cfg = tsr_model_config(m);
    s->r = r;
    s->o = *o;
    if (s->o.max_queue <= 0) s->o.max_queue = 256;
    if (s->o.ready_wait_ms <= 0) s->o.ready_wait_ms = 5000;
    if (s->o.served_name)
        snprintf(s->model_id, sizeof s->model_id, "%s", s->o.served_name);
    else
        tsr_model_id(tsr_model_name(m), s->model_id, sizeof s->model_id);
    if (s->o.max_model_len <= 0 || s->o.max_model_len > s->cfg->n_ctx_train)
        s->o.max_model_len = s->cfg->n_ctx_train;
    pthread_mutex_init(&s->mu, NULL);
    return s;
}

void tsr_sessions_free(tsr_sessions_t *s)
{
    if (!s) return;
    pthread_mutex_destroy(&s->mu);
    free(s);
}

int64_t tsr_sessions_drain(tsr_sessions_t *s)
{
    pthread_mutex_lock(&s->mu);
    s->draining = 1;
    int64_t n = s->in_flight;
    pthread_mutex_unlock(&s->mu);
    return n;
}

int64_t tsr_sessions_in_flight(tsr_sessions_t *s)
{
    pthread_mutex_lock(&s->mu);
    int64_t n = s->in_flight;
    pthread_mutex_unlock(&s->mu);
    return n;
}

int tsr_sessions_serving(tsr_sessions_t *s)
{
    pthread_mutex_lock(&s->mu);
    int draining = s->draining;
    pthread_mutex_unlock(&s->mu);
    return !draining && tsr_router_n_ready(s->r) > 0;
}

const char *tsr_sessions_model_id(const tsr_sessions_t *s)
{
    return s->model_id;
}
int tsr_sessions_max_model_len(const tsr_sessions_t *s)
{
    return s->o.max_model_len;
}
const tsr_model_t *tsr_sessions_model(const tsr_sessions_t *s)
{
    return s->m;
}
tsr_router_t *tsr_sessions_router(const tsr_sessions_t *s)
{
    return s->r;
}

int tsr_session_check_model(tsr_sessions_t *s, const char *model, struct tsr_session_status *st)
{
    if (!model || !model[0] || !strcmp(model, s->model_id) ||
        (!s->o.served_name && !strcmp(model, tsr_model_name(s->m))))
        return 0;
    return set_status(st, TSR_RPC_NOT_FOUND,
                      "model '%s' is not served here; this server serves '%s' (ListModels)", model,
                      s->model_id);
}

/* The checks and the tokens of a request; *max_tokens and *sp with their defaults. */
static int prepare(tsr_sessions_t *s, const Tessera__V1__GenerateRequest *r, int32_t **ids,
                   size_t *n, struct tsr_sampling *sp, int *max_tokens,
                   struct tsr_session_status *st)
{
    int rc;
    *ids = NULL;
    *n = 0;
    if (tsr_session_check_model(s, r->model, st)) return st->code;
    if ((rc = tsr_validate_generate(r, s->cfg->n_vocab, sp, max_tokens)) ||
        (rc = tsr_request_tokens(s->tok, tsr_model_chat(s->m), tsr_model_name(s->m), r->input_case,
                                 r->prompt, r->messages, r->token_ids, ids, n))) {
        free(*ids);
        *ids = NULL;
        return set_status(st, code_of(rc), "%s", tsr_last_error());
    }
    return 0;
}

int tsr_session_tokens(tsr_sessions_t *s, const Tessera__V1__GenerateRequest *r, int32_t **ids,
                       size_t *n, struct tsr_session_status *st)
{
    struct tsr_sampling sp;
    int max_tokens;
    return prepare(s, r, ids, n, &sp, &max_tokens, st);
}

/* ---- relaying one request ---- */

struct relay {
    struct tsr_sessions *s;
    const struct tsr_session_io *io;
    const char *request_id;
    int logprobs, top_logprobs;
    int n_prompt;
    int n_done;    /* tokens relayed to the client: sent[0, n_done) */
    int32_t *sent; /* (cap_sent) */
    int cap_sent;
    int n_cached; /* of n_prompt, found in the worker's cache (its last message says) */
    int sent_any; /* a chunk reached the client: only a migration resumes it elsewhere */
    int migrate;  /* a stream cut after it sent tokens may move to another replica */
    int resumed;  /* this attempt resumes the request: its cached count is not the client's */
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
    if (rl->top_logprobs && w->n_top_logprobs != w->n_token_ids)
        return tsr_errorf(TSR_EFORMAT, "%zu top logprobs for %zu token ids", w->n_top_logprobs,
                          w->n_token_ids);
    for (size_t i = 0; rl->top_logprobs && i < w->n_top_logprobs; i++)
        if (w->top_logprobs[i]->n_token_ids != w->top_logprobs[i]->n_logprobs ||
            w->top_logprobs[i]->n_token_ids > (size_t)rl->top_logprobs)
            return tsr_errorf(TSR_EFORMAT, "token %zu: %zu top ids, %zu logprobs (asked %d)", i,
                              w->top_logprobs[i]->n_token_ids, w->top_logprobs[i]->n_logprobs,
                              rl->top_logprobs);
    /* a resumed attempt's prompt holds the tokens sent before: the first attempt's count stands */
    if (w->has_cached_tokens && w->cached_tokens >= 0 && w->cached_tokens <= rl->n_prompt &&
        !rl->resumed)
        rl->n_cached = w->cached_tokens;
    struct tsr_text_delta d;
    int rc = tsr_textstream_push(rl->text, w->token_ids, w->n_token_ids, worker_finish(w), &d);
    if (rc) return rc == TSR_EINVAL ? TSR_EFORMAT : rc; /* its message stands */
    if (rl->n_done + (int64_t)d.n_ids > rl->cap_sent) {
        int cap = rl->n_done + (int)d.n_ids + 64;
        int32_t *g = realloc(rl->sent, (size_t)cap * sizeof *g);
        if (!g) return tsr_errorf(TSR_ENOMEM, "out of memory");
        rl->sent = g;
        rl->cap_sent = cap;
    }
    if (d.n_ids) memcpy(rl->sent + rl->n_done, w->token_ids, d.n_ids * sizeof *rl->sent);
    rl->n_done += (int)d.n_ids;
    if (!d.n_ids && !d.n_text && !d.over) return 0;
    struct tsr_session_chunk c = {.request_id = rl->request_id,
                                  .ids = w->token_ids,
                                  .n_ids = d.n_ids,
                                  .logprobs = rl->logprobs ? w->logprobs : NULL,
                                  .top_logprobs = rl->top_logprobs ? w->top_logprobs : NULL,
                                  .text = d.text,
                                  .n_text = d.n_text,
                                  .over = d.over,
                                  .finish = d.finish,
                                  .prompt_tokens = rl->n_prompt,
                                  .completion_tokens = rl->n_done,
                                  .cached_tokens = rl->n_cached};
    rc = rl->io->chunk(rl->io->arg, &c);
    rl->sent_any = 1;
    if (rc) return TSR_ECANCELLED;
    return d.over;
}

static int client_gone(const struct relay *rl)
{
    return rl->io->cancelled && rl->io->cancelled(rl->io->arg);
}

enum upstream_end { UP_DONE, UP_CLIENT_GONE, UP_RETRY, UP_FAILED };

/* A replica failed (died, left, broke the stream): another may take the request over, unless it
 * already sent tokens and migration is off. */
static enum upstream_end replica_lost(const struct relay *rl)
{
    return rl->sent_any && !rl->migrate ? UP_FAILED : UP_RETRY;
}

/* Streams one attempt from group g. */
static enum upstream_end relay_attempt(struct relay *rl, tsr_route_t *g,
                                       const Tessera__V1__WorkerGenerateRequest *wr,
                                       struct tsr_session_status *st)
{
    struct tsr_sessions *s = rl->s;
    int64_t left = rl->io->time_left_ms ? rl->io->time_left_ms(rl->io->arg) : INT64_MAX;
    tsr_rpc_stream_t *up;
    if (tsr_rpc_stream_open_pb(tsr_route_channel(g), "/tessera.v1.Worker/Generate", &wr->base,
                               left == INT64_MAX ? 0 : (left > 0 ? left : 1), &up)) {
        set_status(st, TSR_RPC_INTERNAL, "%s", tsr_last_error());
        return UP_FAILED;
    }
    enum upstream_end end = UP_DONE;
    for (;;) {
        const void *buf;
        size_t len;
        int rc = tsr_rpc_stream_recv(up, &buf, &len, POLL_MS);
        if (rc == TSR_ETIMEDOUT) {
            if (client_gone(rl)) {
                end = UP_CLIENT_GONE;
                break;
            }
            if (!tsr_route_alive(s->r, g)) {
                /* etcd says the group is gone (a rank died, its lease expired) */
                set_status(st, TSR_RPC_UNAVAILABLE, "replica %s left the cluster mid-request",
                           tsr_route_name(g));
                end = replica_lost(rl);
                break;
            }
            continue;
        }
        if (rc == 1) {
            const char *d;
            int code = tsr_rpc_stream_status(up, &d);
            if (code == TSR_RPC_OK) {
                /* the leader ended without a finish reason: count it as a failure */
                set_status(st, TSR_RPC_UNAVAILABLE, "replica %s ended the stream early",
                           tsr_route_name(g));
                end = replica_lost(rl);
            } else if (code == TSR_RPC_UNAVAILABLE || code == TSR_RPC_CANCELLED ||
                       code == TSR_RPC_UNKNOWN || code == TSR_RPC_INTERNAL) {
                set_status(st, TSR_RPC_UNAVAILABLE, "replica %s (%s) failed: %s: %s",
                           tsr_route_name(g), tsr_route_addr(g), tsr_rpc_code_name(code), d);
                end = replica_lost(rl);
            } else {
                set_status(st, code, "%s", d);
                end = UP_FAILED;
            }
            break;
        }
        if (rc) {
            set_status(st, TSR_RPC_INTERNAL, "reading from replica %s: %s", tsr_route_name(g),
                       tsr_last_error());
            end = UP_FAILED;
            break;
        }
        Tessera__V1__WorkerGenerateResponse *w =
            tessera__v1__worker_generate_response__unpack(NULL, len, buf);
        if (!w) {
            set_status(st, TSR_RPC_INTERNAL, "replica %s sent a malformed message",
                       tsr_route_name(g));
            end = UP_FAILED;
            break;
        }
        int before = rl->n_done;
        int over = relay_message(rl, w);
        tsr_route_progress(s->r, g, rl->n_done - before);
        tessera__v1__worker_generate_response__free_unpacked(w, NULL);
        if (over == TSR_ECANCELLED) {
            end = UP_CLIENT_GONE;
            break;
        }
        if (over < 0) {
            if (over == TSR_EFORMAT)
                set_status(st, TSR_RPC_INTERNAL, "replica %s sent a bad message: %s",
                           tsr_route_name(g), tsr_last_error());
            else
                set_status(st, code_of(over), "%s", tsr_last_error());
            end = UP_FAILED;
            break;
        }
        if (over) {
            end = UP_DONE;
            break;
        }
    }
    tsr_rpc_stream_cancel(up); /* a no-op when the stream already ended */
    tsr_rpc_stream_free(up);
    return end;
}

/* How the tokens already sent end the request, when they do (UNSPECIFIED when not): its replica
 * failed after sending the last token it was allowed, an end-of-generation token or a stop id, and
 * before its finish reason came. */
static Tessera__V1__FinishReason ended_by(const struct relay *rl,
                                          const Tessera__V1__GenerateRequest *r, int max_tokens)
{
    int32_t last = rl->sent[rl->n_done - 1];
    int ignore_eos = r->has_ignore_eos && r->ignore_eos;
    int stop = !ignore_eos && rl->s->tok && tsr_tokenizer_is_eog(rl->s->tok, last);
    for (size_t i = 0; i < r->n_stop_token_ids; i++) stop |= r->stop_token_ids[i] == last;
    if (stop) return TESSERA__V1__FINISH_REASON__FINISH_REASON_STOP;
    if (rl->n_done >= max_tokens) return TESSERA__V1__FINISH_REASON__FINISH_REASON_LENGTH;
    return TESSERA__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED;
}

/* wr for the rest of a request whose replica failed after sending rl->n_done tokens: the prompt
 * then those tokens (in *buf, the caller's to free), marked as generated, and what is left of
 * max_tokens. The sampler's draws depend on the seed and the position alone
 * (worker/sampling.h), so the next replica goes on exactly as this one would have. 0 or
 * TSR_ENOMEM. */
static int resume_request(const struct relay *rl, Tessera__V1__WorkerGenerateRequest *wr,
                          const int32_t *ids, size_t n, int max_tokens, int32_t **buf)
{
    int32_t *p = realloc(*buf, (n + (size_t)rl->n_done) * sizeof *p);
    if (!p) return tsr_errorf(TSR_ENOMEM, "out of memory");
    memcpy(p, ids, n * sizeof *p);
    memcpy(p + n, rl->sent, (size_t)rl->n_done * sizeof *p);
    *buf = p;
    wr->prompt_ids = p;
    wr->n_prompt_ids = n + (size_t)rl->n_done;
    wr->has_resumed_tokens = 1;
    wr->resumed_tokens = rl->n_done;
    wr->max_tokens = max_tokens - rl->n_done;
    return 0;
}

/* wr's sampling: the validated values, every field set (the seed the coordinator drew too), and
 * the request's own logit_bias entries. */
static void fill_worker_request(Tessera__V1__WorkerGenerateRequest *wr,
                                Tessera__V1__SamplingParams *wsp, const char *request_id,
                                int32_t *ids, size_t n, const struct tsr_sampling *sp,
                                int max_tokens, const Tessera__V1__GenerateRequest *r)
{
    wr->request_id = (char *)request_id;
    wr->n_prompt_ids = n;
    wr->prompt_ids = ids;
    wsp->has_temperature = wsp->has_top_k = wsp->has_top_p = wsp->has_min_p = 1;
    wsp->has_repetition_penalty = wsp->has_seed = 1;
    wsp->has_presence_penalty = wsp->has_frequency_penalty = 1;
    wsp->temperature = sp->temperature;
    wsp->top_k = sp->top_k;
    wsp->top_p = sp->top_p;
    wsp->min_p = sp->min_p;
    wsp->repetition_penalty = sp->repetition_penalty;
    wsp->seed = sp->seed;
    wsp->presence_penalty = sp->presence_penalty;
    wsp->frequency_penalty = sp->frequency_penalty;
    if (r->sampling) { /* validated, and not copied by it (tsr_validate_sampling) */
        wsp->n_logit_bias = r->sampling->n_logit_bias;
        wsp->logit_bias = r->sampling->logit_bias;
    }
    wr->sampling = wsp;
    wr->has_max_tokens = wr->has_ignore_eos = wr->has_top_logprobs = 1;
    wr->max_tokens = max_tokens;
    wr->n_stop_ids = r->n_stop_token_ids;
    wr->stop_ids = r->stop_token_ids;
    wr->ignore_eos = r->has_ignore_eos && r->ignore_eos;
    wr->top_logprobs = sp->top_logprobs;
}

static int relay(struct tsr_sessions *s, const struct tsr_session_io *io,
                 const Tessera__V1__GenerateRequest *r, const char *request_id, int32_t *ids,
                 size_t n, const struct tsr_sampling *sp, int max_tokens,
                 struct tsr_session_status *st)
{
    struct relay rl = {.s = s,
                       .io = io,
                       .request_id = request_id,
                       .logprobs = (r->has_logprobs && r->logprobs) || sp->top_logprobs > 0,
                       .top_logprobs = sp->top_logprobs,
                       .n_prompt = (int)n,
                       .migrate = !s->o.no_migration};
    if (!(rl.text = tsr_textstream_new(s->tok, r->stop, r->n_stop)))
        return set_status(st, TSR_RPC_RESOURCE_EXHAUSTED, "out of memory");
    Tessera__V1__WorkerGenerateRequest wr = TESSERA__V1__WORKER_GENERATE_REQUEST__INIT;
    Tessera__V1__SamplingParams wsp = TESSERA__V1__SAMPLING_PARAMS__INIT;
    fill_worker_request(&wr, &wsp, request_id, ids, n, sp, max_tokens, r);
    int64_t load = (int64_t)n + max_tokens, booked = load;
    /* the prompt's blocks a worker could take from its prefix cache, for the router's index */
    struct tsr_route_prompt rp = {.n_blocks = n > 1 ? (int)((n - 1) / TSR_KV_BLOCK) : 0};
    uint64_t *blocks = rp.n_blocks ? malloc((size_t)rp.n_blocks * sizeof *blocks) : NULL;
    for (int i = 0; blocks && i < rp.n_blocks; i++)
        blocks[i] =
            tsr_chain_hash(i ? blocks[i - 1] : 0, ids + (size_t)i * TSR_KV_BLOCK, TSR_KV_BLOCK);
    rp.blocks = blocks;
    if (!blocks) rp.n_blocks = 0; /* out of memory: routed by load alone */
    tsr_route_t *avoid = NULL;
    int32_t *resumed = NULL; /* the prompt of a resumed attempt */
    set_status(st, TSR_RPC_UNAVAILABLE, "no replica is ready to serve");
    enum upstream_end end = UP_FAILED;
    for (int attempt = 0; attempt < RETRIES; attempt++) {
        tsr_route_t *g = tsr_router_pick(s->r, load, &rp, avoid, &booked);
        /* a stream under way moves only to a replica ready now: it does not stall waiting */
        if (!g && !rl.n_done && tsr_router_wait_ready(s->r, s->o.ready_wait_ms) > 0)
            g = tsr_router_pick(s->r, load, &rp, avoid, &booked);
        if (!g) {
            size_t k = strlen(st->msg);
            if (avoid) snprintf(st->msg + k, sizeof st->msg - k, "; no other replica");
            end = UP_FAILED;
            break;
        }
        if (avoid) tsr_coordinator_metrics_moved(s, rl.n_done > 0); /* it goes on here */
        int done_before = rl.n_done;
        end = relay_attempt(&rl, g, &wr, st);
        /* what this group was booked for and did not stream */
        tsr_route_progress(s->r, g, booked - (rl.n_done - done_before));
        if (end == UP_RETRY && rl.n_done) {
            Tessera__V1__FinishReason f = ended_by(&rl, r, max_tokens);
            if (f) { /* nothing left to run: end the stream here */
                Tessera__V1__WorkerGenerateResponse fin =
                    TESSERA__V1__WORKER_GENERATE_RESPONSE__INIT;
                fin.has_finish_reason = 1;
                fin.finish_reason = f;
                int rc = relay_message(&rl, &fin);
                end = rc == TSR_ECANCELLED ? UP_CLIENT_GONE : rc < 0 ? UP_FAILED : UP_DONE;
                if (end == UP_FAILED) set_status(st, code_of(rc), "%s", tsr_last_error());
            } else if (resume_request(&rl, &wr, ids, n, max_tokens, &resumed)) {
                set_status(st, TSR_RPC_RESOURCE_EXHAUSTED, "%s", tsr_last_error());
                end = UP_FAILED;
            } else {
                rl.resumed = 1;
            }
        }
        if (end != UP_RETRY) {
            tsr_route_release(s->r, g, 0);
            break;
        }
        if (rl.n_done)
            tsr_log_warn("coordinator: %s: %s; resuming on another replica after %d tokens",
                         request_id, st->msg, rl.n_done);
        else
            tsr_log_warn("coordinator: %s: %s; retrying on another replica", request_id, st->msg);
        tsr_route_release(s->r, avoid, 0);
        avoid = g; /* keeps its reference, so the identity stays valid */
    }
    tsr_route_release(s->r, avoid, 0);
    tsr_textstream_free(rl.text);
    free(rl.sent);
    free(resumed);
    free(blocks);
    if (end == UP_DONE) return set_status(st, TSR_RPC_OK, "ok");
    if (end == UP_CLIENT_GONE) return set_status(st, TSR_RPC_CANCELLED, "cancelled");
    return st->code;
}

/* The access line's and the metrics' view of a request: the client's io, what its chunks
 * carried and when. */
struct access {
    tsr_sessions_t *s;
    const struct tsr_session_io *io;
    int prompt_tokens, completion_tokens;
    Tessera__V1__FinishReason finish;
    double t0, t_last; /* arrival; the last chunk with tokens */
    int any_tokens;
};

static int access_chunk(void *arg, const struct tsr_session_chunk *c)
{
    struct access *a = arg;
    if (c->n_ids) {
        double now = tsr_now();
        tsr_coordinator_metrics_tokens(a->s, !a->any_tokens,
                                       now - (a->any_tokens ? a->t_last : a->t0), (int)c->n_ids);
        a->t_last = now;
        a->any_tokens = 1;
    }
    if (c->over) {
        a->prompt_tokens = c->prompt_tokens;
        a->completion_tokens = c->completion_tokens;
        a->finish = c->finish;
    }
    return a->io->chunk(a->io->arg, c);
}

static int access_cancelled(void *arg)
{
    const struct access *a = arg;
    return a->io->cancelled(a->io->arg);
}

static int64_t access_time_left(void *arg)
{
    const struct access *a = arg;
    return a->io->time_left_ms(a->io->arg);
}

static int run(tsr_sessions_t *s, const Tessera__V1__GenerateRequest *r,
               const struct tsr_session_io *io, struct tsr_session_status *st,
               const char **request_id_out, char *generated_id, size_t id_cap)
{
    int32_t *ids = NULL;
    size_t n = 0;
    struct tsr_sampling sp;
    int max_tokens, rc, admitted = 0;
    if (prepare(s, r, &ids, &n, &sp, &max_tokens, st)) goto out;
    if ((rc = tsr_validate_context((int)n, max_tokens, s->o.max_model_len))) {
        set_status(st, code_of(rc), "%s", tsr_last_error());
        goto out;
    }
    pthread_mutex_lock(&s->mu);
    int draining = s->draining;
    if (!draining && s->in_flight < s->o.max_queue) {
        s->in_flight++;
        admitted = 1;
    }
    int64_t seq = ++s->next_id, in_flight = s->in_flight;
    pthread_mutex_unlock(&s->mu);
    if (draining) {
        set_status(st, TSR_RPC_UNAVAILABLE,
                   "this coordinator is shutting down (draining): send the request to "
                   "another coordinator, or retry once it is back");
        goto out;
    }
    if (!admitted) {
        set_status(st, TSR_RPC_RESOURCE_EXHAUSTED,
                   "the server is full: %lld requests in flight (its --max-queue); retry later",
                   (long long)in_flight);
        goto out;
    }
    const char *request_id = r->request_id;
    if (!request_id || !request_id[0]) {
        snprintf(generated_id, id_cap, "req-%lld", (long long)seq);
        request_id = generated_id;
    }
    *request_id_out = request_id;
    relay(s, io, r, request_id, ids, n, &sp, max_tokens, st);
    pthread_mutex_lock(&s->mu);
    s->in_flight--;
    pthread_mutex_unlock(&s->mu);
out:
    free(ids);
    return st->code;
}

int tsr_session_run(tsr_sessions_t *s, const Tessera__V1__GenerateRequest *r,
                    const struct tsr_session_io *io, struct tsr_session_status *st)
{
    /* one access line per request: who, how it ended, how much, how long */
    struct access a = {.s = s, .io = io, .t0 = tsr_now()};
    struct tsr_session_io wrapped = {.chunk = access_chunk,
                                     .cancelled = io->cancelled ? access_cancelled : NULL,
                                     .arg = &a,
                                     .time_left_ms = io->time_left_ms ? access_time_left : NULL};
    char generated_id[32] = "";
    const char *request_id = r->request_id;
    int code = run(s, r, &wrapped, st, &request_id, generated_id, sizeof generated_id);
    struct tsr_request_end end = {code, a.finish, tsr_now() - a.t0, a.prompt_tokens,
                                  a.completion_tokens};
    tsr_coordinator_metrics_end(s, &end);
    tsr_log_req(TSR_LOG_INFO, request_id,
                "access: %s in %.0f ms; prompt %d, completion %d tokens%s%s",
                tsr_rpc_code_name(code), end.e2e_s * 1e3, a.prompt_tokens, a.completion_tokens,
                code ? ": " : "", code ? st->msg : "");
    return code;
}
