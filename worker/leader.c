#include "worker/leader.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/rpc.h"
#include "common/status.h"
#include "grpc/health/v1/health.pb-c.h"
#include "tessera/v1/worker.pb-c.h"
#include "worker/step.h"

/* One Worker.Generate call: shared by its handler thread and the engine thread, under l->mu. The
 * handler frees it once the engine thread has let go (released). */
struct lreq {
    struct lreq *next; /* in the waiting list */
    struct tsr_request r;
    int32_t *prompt, *stop_ids;
    int64_t id;    /* the engine's, once admitted */
    int admitted;  /* in the engine */
    int cancel;    /* the handler asks the engine thread to end it */
    int released;  /* the engine thread is done with it: finish is final */
    int32_t *toks; /* produced, not yet sent: [0, n_toks) */
    float *lps;
    int n_toks, cap;
    struct tsr_logit_bias *bias; /* the sampling's logit_bias */
    /* with top_logprobs = K: token i's alternatives at [i*K, i*K + n_top[i]) */
    int32_t *top_ids;
    float *top_lps;
    int *n_top;
    enum tsr_finish finish;
    int n_cached; /* with finish: the prompt tokens the engine found in its cache */
    int err_code; /* a gRPC code when the leader refused or failed it */
    char err[256];
    pthread_cond_t cv;
    double t_arrival; /* tsr_now() when it reached the inbox: its queue time ends at admission */
};

struct tsr_leader {
    tsr_engine_t *e;
    tsr_rpc_server_t *srv;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t work;                  /* the engine thread waits here when idle */
    struct lreq *waiting, **waiting_tail; /* arrived, not admitted yet: arrival order */
    struct lreq **live;                   /* admitted, indexed by slot; n_live entries */
    int n_live, cap_live;
    int stop, failed;
    double step_started; /* tsr_now() when the running step began; 0 between steps */
    char fail_msg[256];
    struct tsr_engine_stats stats; /* a copy for Stats, refreshed after each step */
    int n_waiting;
    uint64_t max_batch, joined_running, admitted;
    int n_calls; /* Generate calls in flight: waiting, running, or still sending their last tokens
                  */
    struct leader_metrics *metrics; /* /metrics (tsr_leader_metrics_render) */
};

/* The leader's Prometheus families (docs/operations.md, Metrics): vLLM's names for what a vLLM
 * engine reports, so its dashboards read a tessera group. Gauges and mirrored totals are set from
 * the leader's state at each scrape; the rest is counted as it happens. */
struct leader_metrics {
    tsr_metrics_t *r;
    tsr_series_t *running, *waiting, *kv_usage, *gpu_cache_usage, *preemptions, *steps;
    tsr_series_t *prefix_queries, *prefix_hits;
    tsr_series_t *prompt_tokens, *generation_tokens, *queue_time;
};

static void finish_req(struct lreq *q, enum tsr_finish f, int code, const char *msg)
{
    q->finish = f;
    q->err_code = code;
    if (msg) snprintf(q->err, sizeof q->err, "%s", msg);
    q->released = 1;
    pthread_cond_signal(&q->cv);
}

static int live_add(struct tsr_leader *l, struct lreq *q)
{
    if (l->n_live == l->cap_live) {
        int cap = l->cap_live ? 2 * l->cap_live : 64;
        struct lreq **g = realloc(l->live, (size_t)cap * sizeof *g);
        if (!g) return TSR_ENOMEM;
        l->live = g;
        l->cap_live = cap;
    }
    l->live[l->n_live++] = q;
    return 0;
}

static struct lreq *live_take(struct tsr_leader *l, int64_t id, int remove)
{
    for (int i = 0; i < l->n_live; i++)
        if (l->live[i]->id == id) {
            struct lreq *q = l->live[i];
            if (remove) l->live[i] = l->live[--l->n_live];
            return q;
        }
    return NULL;
}

/* Under l->mu: admits waiting requests while the engine takes them (arrival order), and passes
 * cancellations on. */
static void admit(struct tsr_leader *l)
{
    struct lreq **pp = &l->waiting;
    while (*pp) {
        struct lreq *q = *pp;
        if (q->cancel) {
            *pp = q->next;
            l->n_waiting--;
            finish_req(q, TSR_FINISH_CANCELLED, 0, NULL);
            continue;
        }
        int running = l->stats.n_running > 0 || l->n_live > 0;
        int rc = tsr_engine_add(l->e, &q->r, &q->id);
        if (rc == TSR_EEXHAUSTED) break; /* max_seqs running: wait for one to end */
        *pp = q->next;
        l->n_waiting--;
        if (rc == 0 && live_add(l, q) == 0) {
            q->admitted = 1;
            l->admitted++;
            if (running) l->joined_running++;
            tsr_series_observe(l->metrics->queue_time, tsr_now() - q->t_arrival);
            tsr_series_add(l->metrics->prompt_tokens, q->r.n_prompt);
        } else if (rc == 0) {
            tsr_engine_cancel(l->e, q->id);
            finish_req(q, TSR_FINISH_ERROR, TSR_RPC_RESOURCE_EXHAUSTED, "leader out of memory");
        } else {
            int code =
                rc == TSR_EINVAL || rc == TSR_ERANGE ? TSR_RPC_INVALID_ARGUMENT : TSR_RPC_INTERNAL;
            finish_req(q, TSR_FINISH_ERROR, code, tsr_last_error());
        }
    }
    while (*pp) pp = &(*pp)->next;
    l->waiting_tail = pp;
    for (int i = 0; i < l->n_live; i++)
        if (l->live[i]->cancel) tsr_engine_cancel(l->e, l->live[i]->id);
}

static int push_token(struct lreq *q, const struct tsr_token_event *ev)
{
    size_t K = (size_t)q->r.sampling.top_logprobs;
    if (q->n_toks == q->cap) {
        int cap = q->cap ? 2 * q->cap : 16;
        int32_t *t = realloc(q->toks, (size_t)cap * sizeof *t);
        if (!t) return TSR_ENOMEM;
        q->toks = t;
        float *p = realloc(q->lps, (size_t)cap * sizeof *p);
        if (!p) return TSR_ENOMEM;
        q->lps = p;
        if (K) {
            int32_t *ti = realloc(q->top_ids, (size_t)cap * K * sizeof *ti);
            if (!ti) return TSR_ENOMEM;
            q->top_ids = ti;
            float *tl = realloc(q->top_lps, (size_t)cap * K * sizeof *tl);
            if (!tl) return TSR_ENOMEM;
            q->top_lps = tl;
            int *nt = realloc(q->n_top, (size_t)cap * sizeof *nt);
            if (!nt) return TSR_ENOMEM;
            q->n_top = nt;
        }
        q->cap = cap;
    }
    if (K) {
        int n = ev->n_top < (int)K ? ev->n_top : (int)K;
        memcpy(q->top_ids + (size_t)q->n_toks * K, ev->top_ids, (size_t)n * sizeof *q->top_ids);
        memcpy(q->top_lps + (size_t)q->n_toks * K, ev->top_logprobs,
               (size_t)n * sizeof *q->top_lps);
        q->n_top[q->n_toks] = n;
    }
    q->toks[q->n_toks] = ev->token;
    q->lps[q->n_toks++] = ev->logprob;
    return 0;
}

/* Every request still held by the engine thread ends with code (the group is stopping or broken).
 */
static void fail_all(struct tsr_leader *l, int code, const char *msg)
{
    for (int i = 0; i < l->n_live; i++) finish_req(l->live[i], TSR_FINISH_ERROR, code, msg);
    l->n_live = 0;
    for (struct lreq *q = l->waiting; q;) {
        struct lreq *n = q->next;
        finish_req(q, TSR_FINISH_ERROR, code, msg);
        q = n;
    }
    l->waiting = NULL;
    l->waiting_tail = &l->waiting;
    l->n_waiting = 0;
}

/* A step (or an idle message) failed: on a group, a rank is gone or broken; nothing more can run.
 */
static void group_failed(struct tsr_leader *l, int rc)
{
    l->failed = rc;
    snprintf(l->fail_msg, sizeof l->fail_msg, "the worker group failed: %s", tsr_last_error());
    tsr_log_error("leader: %s", l->fail_msg);
    fail_all(l, TSR_RPC_UNAVAILABLE, l->fail_msg);
}

static void *engine_main(void *arg)
{
    struct tsr_leader *l = arg;
    int cap = 0;
    struct tsr_token_event *ev = NULL;
    pthread_mutex_lock(&l->mu);
    while (!l->stop) {
        admit(l);
        if (l->n_live == 0) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += TSR_STEP_IDLE_S;
            if (pthread_cond_timedwait(&l->work, &l->mu, &ts) != ETIMEDOUT) continue;
            /* idle: the group's followers hear from us, or theirs time out waiting */
            l->step_started = tsr_now();
            pthread_mutex_unlock(&l->mu);
            int rc = tsr_engine_idle(l->e);
            pthread_mutex_lock(&l->mu);
            l->step_started = 0;
            if (rc) {
                group_failed(l, rc);
                break;
            }
            continue;
        }
        if (cap < l->n_live + 1) {
            cap = 2 * (l->n_live + 1);
            struct tsr_token_event *g = realloc(ev, (size_t)cap * sizeof *g);
            if (!g) {
                fail_all(l, TSR_RPC_RESOURCE_EXHAUSTED, "leader out of memory");
                continue;
            }
            ev = g;
        }
        if ((uint64_t)l->n_live > l->max_batch) l->max_batch = (uint64_t)l->n_live;
        l->step_started = tsr_now();
        pthread_mutex_unlock(&l->mu);
        int n_ev = 0;
        int rc = tsr_engine_step(l->e, ev, cap, &n_ev);
        pthread_mutex_lock(&l->mu);
        l->step_started = 0;
        if (rc) {
            group_failed(l, rc);
            break;
        }
        int n_generated = 0;
        for (int i = 0; i < n_ev; i++) n_generated += ev[i].token >= 0;
        tsr_series_add(l->metrics->generation_tokens, n_generated);
        for (int i = 0; i < n_ev; i++) {
            struct lreq *q = live_take(l, ev[i].id, ev[i].finish != TSR_FINISH_NONE);
            if (!q) continue;
            if (ev[i].token >= 0 && push_token(q, &ev[i])) {
                tsr_engine_cancel(l->e, q->id);
                finish_req(q, TSR_FINISH_ERROR, TSR_RPC_RESOURCE_EXHAUSTED, "out of memory");
                live_take(l, ev[i].id, 1);
                continue;
            }
            if (ev[i].finish != TSR_FINISH_NONE) {
                q->n_cached = ev[i].n_cached;
                finish_req(q, ev[i].finish, 0, NULL);
            } else
                pthread_cond_signal(&q->cv);
        }
        tsr_engine_get_stats(l->e, &l->stats);
    }
    if (l->stop) fail_all(l, TSR_RPC_UNAVAILABLE, "the worker is shutting down");
    pthread_mutex_unlock(&l->mu);
    free(ev);
    return NULL;
}

static Tessera__V1__FinishReason finish_pb(enum tsr_finish f)
{
    switch (f) {
    case TSR_FINISH_STOP:
        return TESSERA__V1__FINISH_REASON__FINISH_REASON_STOP;
    case TSR_FINISH_LENGTH:
        return TESSERA__V1__FINISH_REASON__FINISH_REASON_LENGTH;
    case TSR_FINISH_CANCELLED:
        return TESSERA__V1__FINISH_REASON__FINISH_REASON_CANCELLED;
    case TSR_FINISH_ERROR:
        return TESSERA__V1__FINISH_REASON__FINISH_REASON_ERROR;
    default:
        return TESSERA__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED;
    }
}

static struct lreq *req_from_pb(const Tessera__V1__WorkerGenerateRequest *m)
{
    struct lreq *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    pthread_cond_init(&q->cv, NULL);
    q->prompt = malloc((m->n_prompt_ids ? m->n_prompt_ids : 1) * sizeof *q->prompt);
    q->stop_ids = malloc((m->n_stop_ids ? m->n_stop_ids : 1) * sizeof *q->stop_ids);
    const Tessera__V1__SamplingParams *w = m->sampling;
    size_t n_bias = w ? w->n_logit_bias : 0;
    q->bias = malloc((n_bias ? n_bias : 1) * sizeof *q->bias);
    if (!q->prompt || !q->stop_ids || !q->bias) {
        free(q->prompt);
        free(q->stop_ids);
        free(q->bias);
        free(q);
        return NULL;
    }
    if (m->n_prompt_ids) memcpy(q->prompt, m->prompt_ids, m->n_prompt_ids * sizeof *q->prompt);
    if (m->n_stop_ids) memcpy(q->stop_ids, m->stop_ids, m->n_stop_ids * sizeof *q->stop_ids);
    /* the engine's sampler validates (model/sampling.h) */
    struct tsr_sampling sp = tsr_sampling_default();
    if (w && w->has_temperature) sp.temperature = w->temperature;
    if (w && w->has_top_k) sp.top_k = w->top_k;
    if (w && w->has_top_p) sp.top_p = w->top_p;
    if (w && w->has_min_p) sp.min_p = w->min_p;
    if (w && w->has_repetition_penalty) sp.repetition_penalty = w->repetition_penalty;
    if (w && w->has_seed) sp.seed = w->seed;
    if (w && w->has_presence_penalty) sp.presence_penalty = w->presence_penalty;
    if (w && w->has_frequency_penalty) sp.frequency_penalty = w->frequency_penalty;
    for (size_t i = 0; i < n_bias; i++)
        q->bias[i] = (struct tsr_logit_bias){w->logit_bias[i]->token_id, w->logit_bias[i]->bias};
    /* more than the limit: the validation refuses it */
    sp.n_logit_bias = n_bias > INT32_MAX ? INT32_MAX : (int)n_bias;
    sp.logit_bias = q->bias;
    if (m->has_top_logprobs) sp.top_logprobs = m->top_logprobs;
    q->r = (struct tsr_request){.prompt = q->prompt,
                                .n_prompt = m->n_prompt_ids > INT32_MAX ? -1 : (int)m->n_prompt_ids,
                                .n_generated = m->has_resumed_tokens ? m->resumed_tokens : 0,
                                .sampling = sp,
                                .max_tokens = m->has_max_tokens ? m->max_tokens : 128,
                                .ignore_eos = m->has_ignore_eos && m->ignore_eos,
                                .stop_ids = q->stop_ids,
                                .n_stop_ids = (int)m->n_stop_ids};
    return q;
}

static void req_free(struct lreq *q)
{
    pthread_cond_destroy(&q->cv);
    free(q->prompt);
    free(q->stop_ids);
    free(q->toks);
    free(q->lps);
    free(q->bias);
    free(q->top_ids);
    free(q->top_lps);
    free(q->n_top);
    free(q);
}

/* Sends what the engine produced for q so far; *done when q is over. Called without l->mu. */
static void stream_req(struct tsr_leader *l, tsr_rpc_call_t *call, struct lreq *q)
{
    int32_t *toks = NULL, *top_ids = NULL;
    float *lps = NULL, *top_lps = NULL;
    int *n_top = NULL;
    size_t K = (size_t)q->r.sampling.top_logprobs;
    Tessera__V1__TopLogprobs *tops = NULL, **topp = NULL;
    int cancelled = 0, send_failed = 0;
    for (;;) {
        pthread_mutex_lock(&l->mu);
        while (q->n_toks == 0 && !q->released) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 20 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            if (pthread_cond_timedwait(&q->cv, &l->mu, &ts) == ETIMEDOUT) break;
        }
        int n = q->n_toks, released = q->released;
        int32_t *t = n ? realloc(toks, (size_t)n * sizeof *toks) : toks;
        float *p = n ? realloc(lps, (size_t)n * sizeof *lps) : lps;
        if (t) toks = t;
        if (p) lps = p;
        int tops_ok = 1;
        if (n && K) {
            int32_t *ti = realloc(top_ids, (size_t)n * K * sizeof *ti);
            if (ti) top_ids = ti;
            float *tl = realloc(top_lps, (size_t)n * K * sizeof *tl);
            if (tl) top_lps = tl;
            int *nt = realloc(n_top, (size_t)n * sizeof *nt);
            if (nt) n_top = nt;
            Tessera__V1__TopLogprobs *tm = realloc(tops, (size_t)n * sizeof *tm);
            if (tm) tops = tm;
            Tessera__V1__TopLogprobs **tp = realloc(topp, (size_t)n * sizeof *tp);
            if (tp) topp = tp;
            tops_ok = ti && tl && nt && tm && tp;
        }
        if (n && t && p && tops_ok) {
            memcpy(toks, q->toks, (size_t)n * sizeof *toks);
            memcpy(lps, q->lps, (size_t)n * sizeof *lps);
            if (K) {
                memcpy(top_ids, q->top_ids, (size_t)n * K * sizeof *top_ids);
                memcpy(top_lps, q->top_lps, (size_t)n * K * sizeof *top_lps);
                memcpy(n_top, q->n_top, (size_t)n * sizeof *n_top);
            }
            q->n_toks = 0;
        } else {
            n = 0;
        }
        pthread_mutex_unlock(&l->mu);
        if (!released && !cancelled && tsr_rpc_call_cancelled(call, 0)) {
            /* the client (a coordinator) cancelled, went away or its deadline passed */
            cancelled = 1;
            pthread_mutex_lock(&l->mu);
            q->cancel = 1;
            pthread_cond_signal(&l->work);
            pthread_mutex_unlock(&l->mu);
        }
        if (n || released) {
            Tessera__V1__WorkerGenerateResponse m = TESSERA__V1__WORKER_GENERATE_RESPONSE__INIT;
            m.n_token_ids = m.n_logprobs = (size_t)n;
            m.token_ids = toks;
            m.logprobs = lps;
            if (K && n) {
                for (int i = 0; i < n; i++) {
                    tessera__v1__top_logprobs__init(&tops[i]);
                    tops[i].n_token_ids = tops[i].n_logprobs = (size_t)n_top[i];
                    tops[i].token_ids = top_ids + (size_t)i * K;
                    tops[i].logprobs = top_lps + (size_t)i * K;
                    topp[i] = &tops[i];
                }
                m.n_top_logprobs = (size_t)n;
                m.top_logprobs = topp;
            }
            if (released && !q->err_code) {
                m.has_finish_reason = m.has_cached_tokens = 1;
                m.finish_reason = finish_pb(q->finish);
                m.cached_tokens = q->n_cached;
            }
            if (!cancelled && !send_failed && (n || m.has_finish_reason) &&
                tsr_rpc_call_send_pb(call, &m.base))
                send_failed = 1;
        }
        if (released) break;
    }
    if (q->err_code)
        tsr_rpc_call_finish(call, q->err_code, q->err);
    else
        tsr_rpc_call_finish(call, cancelled ? TSR_RPC_CANCELLED : TSR_RPC_OK, NULL);
    free(toks);
    free(lps);
    free(top_ids);
    free(top_lps);
    free(n_top);
    free(tops);
    free(topp);
}

static void serve_generate(tsr_rpc_call_t *call, struct tsr_leader *l);

static void handle_generate(tsr_rpc_call_t *call, void *arg)
{
    struct tsr_leader *l = arg;
    pthread_mutex_lock(&l->mu);
    l->n_calls++;
    pthread_mutex_unlock(&l->mu);
    serve_generate(call, l);
    pthread_mutex_lock(&l->mu);
    l->n_calls--;
    pthread_mutex_unlock(&l->mu);
}

static void serve_generate(tsr_rpc_call_t *call, struct tsr_leader *l)
{
    Tessera__V1__WorkerGenerateRequest *m =
        (Tessera__V1__WorkerGenerateRequest *)tsr_rpc_call_unpack(
            call, &tessera__v1__worker_generate_request__descriptor);
    if (!m) {
        tsr_rpc_call_finish(call, TSR_RPC_INVALID_ARGUMENT, "malformed WorkerGenerateRequest");
        return;
    }
    struct lreq *q = req_from_pb(m);
    protobuf_c_message_free_unpacked(&m->base, NULL);
    if (!q) {
        tsr_rpc_call_finish(call, TSR_RPC_RESOURCE_EXHAUSTED, "leader out of memory");
        return;
    }
    pthread_mutex_lock(&l->mu);
    if (l->failed || l->stop) {
        pthread_mutex_unlock(&l->mu);
        tsr_rpc_call_finish(call, TSR_RPC_UNAVAILABLE,
                            l->failed ? l->fail_msg : "the worker is shutting down");
        req_free(q);
        return;
    }
    q->t_arrival = tsr_now();
    *l->waiting_tail = q;
    l->waiting_tail = &q->next;
    l->n_waiting++;
    pthread_cond_signal(&l->work);
    pthread_mutex_unlock(&l->mu);
    stream_req(l, call, q);
    req_free(q);
}

int tsr_leader_calls(tsr_leader_t *l)
{
    pthread_mutex_lock(&l->mu);
    int n = l->n_calls;
    pthread_mutex_unlock(&l->mu);
    return n;
}

void tsr_leader_stats(tsr_leader_t *l, struct tsr_engine_stats *s, int *n_waiting)
{
    pthread_mutex_lock(&l->mu);
    *s = l->stats;
    s->n_running = l->n_live;
    *n_waiting = l->n_waiting;
    pthread_mutex_unlock(&l->mu);
}

static void handle_stats(tsr_rpc_call_t *call, void *arg)
{
    struct tsr_leader *l = arg;
    Tessera__V1__WorkerStats s = TESSERA__V1__WORKER_STATS__INIT;
    pthread_mutex_lock(&l->mu);
    s.has_n_blocks = s.has_n_free_blocks = s.has_n_running = s.has_n_waiting = 1;
    s.has_steps = s.has_prompt_tokens = s.has_decode_tokens = s.has_preemptions = 1;
    s.has_max_batch = s.has_joined_running = s.has_admitted = 1;
    s.has_prefix_cache_queries = s.has_prefix_cache_hits = 1;
    s.n_blocks = l->stats.n_blocks;
    s.n_free_blocks = l->stats.n_free_blocks;
    s.n_running = l->n_live;
    s.n_waiting = l->n_waiting;
    s.steps = l->stats.steps;
    s.prompt_tokens = l->stats.prompt_tokens;
    s.decode_tokens = l->stats.decode_tokens;
    s.preemptions = l->stats.preemptions;
    s.max_batch = l->max_batch;
    s.joined_running = l->joined_running;
    s.admitted = l->admitted;
    s.prefix_cache_queries = l->stats.prefix_queries;
    s.prefix_cache_hits = l->stats.prefix_hits;
    pthread_mutex_unlock(&l->mu);
    tsr_rpc_call_send_pb(call, &s.base);
    tsr_rpc_call_finish(call, TSR_RPC_OK, NULL);
}

/* grpc.health.v1.Health/Check, for probes (Kubernetes' gRPC probe): SERVING while the engine
 * runs, NOT_SERVING once the group failed or the leader is stopping. Services other than "" and
 * tessera.v1.Worker are NOT_FOUND. */
static void handle_health(tsr_rpc_call_t *call, void *arg)
{
    struct tsr_leader *l = arg;
    Grpc__Health__V1__HealthCheckRequest *r =
        (Grpc__Health__V1__HealthCheckRequest *)tsr_rpc_call_unpack(
            call, &grpc__health__v1__health_check_request__descriptor);
    if (!r) {
        tsr_rpc_call_finish(call, TSR_RPC_INVALID_ARGUMENT, "malformed HealthCheckRequest");
        return;
    }
    if (r->service && r->service[0] && strcmp(r->service, "tessera.v1.Worker")) {
        tsr_rpc_call_finishf(call, TSR_RPC_NOT_FOUND, "unknown service '%s'", r->service);
    } else {
        Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
        pthread_mutex_lock(&l->mu);
        int ok = !l->failed && !l->stop;
        pthread_mutex_unlock(&l->mu);
        resp.status = ok ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                         : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
        tsr_rpc_call_send_pb(call, &resp.base);
        tsr_rpc_call_finish(call, TSR_RPC_OK, NULL);
    }
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void leader_metrics_free(struct leader_metrics *lm)
{
    if (!lm) return;
    tsr_metrics_free(lm->r);
    free(lm);
}

static struct leader_metrics *leader_metrics_new(void)
{
    struct leader_metrics *lm = calloc(1, sizeof *lm);
    if (!lm || !(lm->r = tsr_metrics_new())) {
        free(lm);
        return NULL;
    }
    tsr_metrics_t *r = lm->r;
    struct {
        tsr_series_t **s;
        tsr_metric_t *m;
    } f[] = {
        {&lm->running, tsr_metrics_gauge(r, "vllm:num_requests_running",
                                         "Requests in the running batch (admitted into the engine, "
                                         "not finished).",
                                         NULL)},
        {&lm->waiting, tsr_metrics_gauge(r, "vllm:num_requests_waiting",
                                         "Requests waiting in the leader for a place in the "
                                         "running batch (--max-seqs).",
                                         NULL)},
        {&lm->kv_usage, tsr_metrics_gauge(r, "vllm:kv_cache_usage_perc",
                                          "KV-cache usage: the fraction of KV blocks in use, 0 to "
                                          "1.",
                                          NULL)},
        {&lm->gpu_cache_usage, tsr_metrics_gauge(r, "vllm:gpu_cache_usage_perc",
                                                 "KV-cache usage, 0 to 1. DEPRECATED: vLLM's older "
                                                 "name of vllm:kv_cache_usage_perc.",
                                                 NULL)},
        {&lm->preemptions, tsr_metrics_counter(r, "vllm:num_preemptions_total",
                                               "Sequences preempted (KV blocks freed, recomputed "
                                               "later) since the leader started.",
                                               NULL)},
        {&lm->prompt_tokens, tsr_metrics_counter(r, "vllm:prompt_tokens_total",
                                                 "Prompt tokens of the requests admitted.", NULL)},
        {&lm->generation_tokens,
         tsr_metrics_counter(r, "vllm:generation_tokens_total", "Tokens generated.", NULL)},
        {&lm->queue_time,
         tsr_metrics_histogram(r, "vllm:request_queue_time_seconds",
                               "Time from a request's arrival at the leader to its admission into "
                               "the running batch, in seconds.",
                               NULL, tsr_vllm_request_latency_buckets, TSR_VLLM_REQUEST_LATENCY_N)},
        {&lm->steps,
         tsr_metrics_counter(r, "tessera:engine_steps_total", "Engine steps the group ran.", NULL)},
        {&lm->prefix_queries,
         tsr_metrics_counter(r, "vllm:prefix_cache_queries_total",
                             "Prompt tokens looked up in the prefix cache (a sequence's tokens "
                             "each time it starts with no K/V: admitted, or preempted).",
                             NULL)},
        {&lm->prefix_hits, tsr_metrics_counter(r, "vllm:prefix_cache_hits_total",
                                               "Of vllm:prefix_cache_queries_total, the tokens "
                                               "found in the cache (not computed).",
                                               NULL)},
    };
    for (size_t i = 0; i < sizeof f / sizeof *f; i++)
        if (!(*f[i].s = tsr_metric_with(f[i].m, NULL))) {
            leader_metrics_free(lm);
            return NULL;
        }
    return lm;
}

int tsr_leader_start(tsr_engine_t *e, const char *listen, tsr_leader_t **out, int *port)
{
    struct tsr_leader *l = calloc(1, sizeof *l);
    if (!l) return tsr_errorf(TSR_ENOMEM, "out of memory");
    l->e = e;
    l->waiting_tail = &l->waiting;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->work, NULL);
    tsr_engine_get_stats(e, &l->stats);
    int rc;
    if (!(l->metrics = leader_metrics_new())) {
        rc = tsr_errorf(TSR_ENOMEM, "leader: out of memory for its metrics");
        goto fail_thread;
    }
    if (pthread_create(&l->thread, NULL, engine_main, l)) {
        rc = tsr_errorf(TSR_EINTERNAL, "leader: cannot start the engine thread");
        goto fail_thread;
    }
    const struct tsr_rpc_method methods[] = {
        {"/tessera.v1.Worker/Generate", handle_generate, l},
        {"/tessera.v1.Worker/Stats", handle_stats, l},
        {"/grpc.health.v1.Health/Check", handle_health, l},
    };
    if ((rc = tsr_rpc_server_start(listen, methods, (int)(sizeof methods / sizeof *methods), 4096,
                                   &l->srv, port)))
        goto fail_srv;
    *out = l;
    return 0;
fail_srv:
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_cond_signal(&l->work);
    pthread_mutex_unlock(&l->mu);
    pthread_join(l->thread, NULL);
fail_thread:
    leader_metrics_free(l->metrics);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->work);
    free(l);
    return rc;
}

void tsr_leader_stop(tsr_leader_t *l)
{
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_cond_signal(&l->work);
    pthread_mutex_unlock(&l->mu);
    pthread_join(l->thread, NULL); /* ends every request: handlers then finish their calls */
    tsr_rpc_server_stop(l->srv);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->work);
    leader_metrics_free(l->metrics);
    free(l->live);
    free(l);
}

double tsr_leader_step_seconds(tsr_leader_t *l)
{
    pthread_mutex_lock(&l->mu);
    double t = l->step_started > 0 ? tsr_now() - l->step_started : 0;
    pthread_mutex_unlock(&l->mu);
    return t;
}

int tsr_leader_failed(tsr_leader_t *l)
{
    pthread_mutex_lock(&l->mu);
    int f = l->failed;
    pthread_mutex_unlock(&l->mu);
    return f;
}

int tsr_leader_metrics_render(tsr_leader_t *l, const char *model_name, struct tsr_metrics_text *out)
{
    struct leader_metrics *lm = l->metrics;
    pthread_mutex_lock(&l->mu);
    struct tsr_engine_stats s = l->stats;
    int running = l->n_live, waiting = l->n_waiting;
    pthread_mutex_unlock(&l->mu);
    double kv = s.n_blocks ? (double)(s.n_blocks - s.n_free_blocks) / s.n_blocks : 0;
    tsr_series_set(lm->running, running);
    tsr_series_set(lm->waiting, waiting);
    tsr_series_set(lm->kv_usage, kv);
    tsr_series_set(lm->gpu_cache_usage, kv);
    tsr_series_set(lm->preemptions, (double)s.preemptions);
    tsr_series_set(lm->steps, (double)s.steps);
    tsr_series_set(lm->prefix_queries, (double)s.prefix_queries);
    tsr_series_set(lm->prefix_hits, (double)s.prefix_hits);
    return tsr_metrics_render(lm->r, (const char *[]){"model_name", model_name, NULL}, out);
}
