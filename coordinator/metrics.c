#include "coordinator/metrics.h"

#include <pthread.h>
#include <stdlib.h>

#include "common/rpc.h"
#include "common/status.h"
#include "coordinator/router.h"

struct coord_metrics {
    tsr_metrics_t *r;
    tsr_series_t *ttft, *itl, *tpot, *e2e, *req_prompt, *req_gen;
    tsr_series_t *prompt_tokens, *gen_tokens, *groups_ready, *in_flight, *retries, *migrations;
    tsr_metric_t *success, *requests;
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static struct coord_metrics *g; /* made once, lives as long as the process */

/* vLLM's 1-2-5 buckets up to the longest request (build_1_2_5_buckets(max_model_len)). */
static int buckets_125(int max, double *out, int cap)
{
    static const int mant[] = {1, 2, 5};
    int n = 0;
    for (double p = 1; n < cap; p *= 10)
        for (int i = 0; i < 3 && n < cap; i++) {
            if (mant[i] * p > max) return n;
            out[n++] = mant[i] * p;
        }
    return n;
}

static struct coord_metrics *make(int max_model_len)
{
    struct coord_metrics *m = calloc(1, sizeof *m);
    if (!m || !(m->r = tsr_metrics_new())) {
        free(m);
        return NULL;
    }
    tsr_metrics_t *r = m->r;
    double tok[40];
    int n_tok = buckets_125(max_model_len > 0 ? max_model_len : 1, tok, 40);
    struct {
        tsr_series_t **s;
        tsr_metric_t *f;
    } one[] = {
        {&m->ttft, tsr_metrics_histogram(r, "vllm:time_to_first_token_seconds",
                                         "Time from a request's arrival at the coordinator to its "
                                         "first token, in seconds.",
                                         NULL, tsr_vllm_ttft_buckets, TSR_VLLM_TTFT_N)},
        {&m->itl, tsr_metrics_histogram(r, "vllm:inter_token_latency_seconds",
                                        "Time between tokens relayed to a client, in seconds (a "
                                        "chunk of n tokens counts n gaps of 1/n its wait).",
                                        NULL, tsr_vllm_tpot_buckets, TSR_VLLM_TPOT_N)},
        {&m->tpot, tsr_metrics_histogram(r, "vllm:time_per_output_token_seconds",
                                         "Time per output token, in seconds. DEPRECATED: vLLM's "
                                         "older name; the same observations as "
                                         "vllm:inter_token_latency_seconds.",
                                         NULL, tsr_vllm_tpot_buckets, TSR_VLLM_TPOT_N)},
        {&m->e2e,
         tsr_metrics_histogram(r, "vllm:e2e_request_latency_seconds",
                               "Time from a request's arrival to its end, in seconds, "
                               "for requests that finished.",
                               NULL, tsr_vllm_request_latency_buckets, TSR_VLLM_REQUEST_LATENCY_N)},
        {&m->req_prompt,
         tsr_metrics_histogram(r, "vllm:request_prompt_tokens",
                               "Prompt tokens of each finished request.", NULL, tok, n_tok)},
        {&m->req_gen,
         tsr_metrics_histogram(r, "vllm:request_generation_tokens",
                               "Generated tokens of each finished request.", NULL, tok, n_tok)},
        {&m->prompt_tokens, tsr_metrics_counter(r, "tessera:prompt_tokens_total",
                                                "Prompt tokens of the requests that finished "
                                                "(their usage).",
                                                NULL)},
        {&m->gen_tokens, tsr_metrics_counter(r, "tessera:generation_tokens_total",
                                             "Tokens returned to clients by the requests that "
                                             "finished (their usage).",
                                             NULL)},
        {&m->retries, tsr_metrics_counter(r, "tessera:request_retries_total",
                                          "Requests sent to another replica after theirs failed "
                                          "before streaming a token.",
                                          NULL)},
        {&m->migrations, tsr_metrics_counter(r, "tessera:request_migrations_total",
                                             "Requests resumed on another replica after theirs "
                                             "failed or drained mid-stream (prompt plus the tokens "
                                             "sent; the stream goes on).",
                                             NULL)},
        {&m->groups_ready, tsr_metrics_gauge(r, "tessera:groups_ready",
                                             "Worker groups ready to take requests.", NULL)},
        {&m->in_flight, tsr_metrics_gauge(r, "tessera:requests_in_flight",
                                          "Requests admitted and not yet ended (bounded by "
                                          "--max-queue).",
                                          NULL)},
    };
    int ok = 1;
    for (size_t i = 0; i < sizeof one / sizeof *one; i++)
        ok &= !!(*one[i].s = tsr_metric_with(one[i].f, NULL));
    m->success = tsr_metrics_counter(r, "vllm:request_success_total",
                                     "Requests that finished, by finish reason (abort: the client "
                                     "cancelled or went away).",
                                     (const char *[]){"finished_reason", NULL});
    m->requests = tsr_metrics_counter(r, "tessera:requests_total",
                                      "Requests that ended, by gRPC status code (whatever the "
                                      "transport).",
                                      (const char *[]){"code", NULL});
    /* Every series a dashboard may rate() exists from the start, at 0. */
    static const char *const reasons[] = {"stop", "length", "abort", "error"};
    for (int i = 0; i < 4; i++) ok &= !!tsr_metric_with(m->success, &reasons[i]);
    static const int codes[] = {TSR_RPC_OK,
                                TSR_RPC_CANCELLED,
                                TSR_RPC_INVALID_ARGUMENT,
                                TSR_RPC_DEADLINE_EXCEEDED,
                                TSR_RPC_NOT_FOUND,
                                TSR_RPC_RESOURCE_EXHAUSTED,
                                TSR_RPC_UNIMPLEMENTED,
                                TSR_RPC_INTERNAL,
                                TSR_RPC_UNAVAILABLE};
    for (size_t i = 0; i < sizeof codes / sizeof *codes; i++)
        ok &= !!tsr_metric_with(m->requests, (const char *[]){tsr_rpc_code_name(codes[i])});
    if (!ok) {
        tsr_metrics_free(m->r);
        free(m);
        return NULL;
    }
    return m;
}

/* NULL when out of memory (observations are then dropped). */
static struct coord_metrics *get(tsr_sessions_t *s)
{
    pthread_mutex_lock(&g_mu);
    if (!g) g = make(tsr_sessions_max_model_len(s));
    struct coord_metrics *m = g;
    pthread_mutex_unlock(&g_mu);
    return m;
}

void tsr_coordinator_metrics_tokens(tsr_sessions_t *s, int first, double gap_s, int n)
{
    struct coord_metrics *m = get(s);
    if (!m || n <= 0) return;
    if (first) tsr_series_observe(m->ttft, gap_s);
    double per = first ? 0 : gap_s / n;
    for (int i = first; i < n; i++) {
        tsr_series_observe(m->itl, per);
        tsr_series_observe(m->tpot, per);
    }
}

void tsr_coordinator_metrics_moved(tsr_sessions_t *s, int resumed)
{
    struct coord_metrics *m = get(s);
    if (m) tsr_series_add(resumed ? m->migrations : m->retries, 1);
}

static const char *reason_name(Tessera__V1__FinishReason f)
{
    switch (f) {
    case TESSERA__V1__FINISH_REASON__FINISH_REASON_STOP:
        return "stop";
    case TESSERA__V1__FINISH_REASON__FINISH_REASON_LENGTH:
        return "length";
    case TESSERA__V1__FINISH_REASON__FINISH_REASON_CANCELLED:
        return "abort";
    default:
        return "error";
    }
}

void tsr_coordinator_metrics_end(tsr_sessions_t *s, const struct tsr_request_end *e)
{
    struct coord_metrics *m = get(s);
    if (!m) return;
    tsr_metric_add(m->requests, (const char *[]){tsr_rpc_code_name(e->code)}, 1);
    if (e->code == TSR_RPC_CANCELLED) tsr_metric_add(m->success, (const char *[]){"abort"}, 1);
    if (e->code != TSR_RPC_OK) return;
    tsr_metric_add(m->success, (const char *[]){reason_name(e->finish)}, 1);
    tsr_series_observe(m->e2e, e->e2e_s);
    tsr_series_observe(m->req_prompt, e->prompt_tokens);
    tsr_series_observe(m->req_gen, e->completion_tokens);
    tsr_series_add(m->prompt_tokens, e->prompt_tokens);
    tsr_series_add(m->gen_tokens, e->completion_tokens);
}

int tsr_coordinator_metrics_render(tsr_sessions_t *s, struct tsr_metrics_text *out)
{
    struct coord_metrics *m = get(s);
    if (!m) return tsr_errorf(TSR_ENOMEM, "out of memory for the coordinator's metrics");
    tsr_series_set(m->groups_ready, tsr_router_n_ready(tsr_sessions_router(s)));
    tsr_series_set(m->in_flight, (double)tsr_sessions_in_flight(s));
    return tsr_metrics_render(m->r, (const char *[]){"model_name", tsr_sessions_model_id(s), NULL},
                              out);
}
