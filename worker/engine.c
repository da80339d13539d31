#include "worker/engine.h"

#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "worker/forward.h"
#include "worker/kv_pool.h"

struct seq {
    int64_t id;
    int32_t *tokens; /* prompt then generated, capacity cap */
    int n_tokens, cap;
    int n_prompt;
    int n_computed; /* positions whose K/V are in the cache */
    /* prompt positions this sequence ran through the model (a recomputation after preemption
     * not counted again) and the furthest one run: n_prompt less it were found in the cache */
    int prompt_run, prompt_hw;
    int32_t *blocks; /* (max_blocks) */
    int n_blocks;
    /* prefix caching: the chain hashes of the first n_hashed blocks (max_blocks); blocks
     * [0, n_registered) are findable by later sequences; reg_stop: an equal block was there
     * first, so this sequence's later blocks (whose parent is private) are not registered */
    uint64_t *bhash;
    int n_hashed, n_registered, reg_stop;
    int looked_up; /* its lookup is counted in the stats (until it is preempted) */
    int max_tokens, ignore_eos;
    int32_t *stop_ids;
    int n_stop_ids;
    int cancelled;
    struct tsr_sampler sampler;
    /* its next step: what it runs; flight: the tag of the step in flight it is in (0: none) */
    int chunk, want_logits;
    uint32_t flight;
};

/* A step launched and not yet applied: the sequences whose rows come back, in row order. */
struct flight {
    struct seq **out_seq; /* (max_seqs) */
    int n_out, device, top;
    uint32_t tag;
};

struct tsr_engine {
    tsr_model_t *model;
    const tsr_tokenizer_t *tok;
    tsr_runner_t *runner;
    struct tsr_engine_opts o;
    struct tsr_kv_pool pool;
    int max_blocks; /* per sequence */
    int n_vocab;
    struct seq **seqs; /* in arrival order, oldest first */
    int n_seqs;
    int64_t next_id;
    struct tsr_engine_stats stats;
    /* step scratch */
    int32_t *ids, *pos, *tseq, *out_rows, *bt;
    /* steps in flight, oldest first: at most depth (a group's stages each run one at once) */
    struct flight *fl;
    int n_fl, depth, pipelined;
    uint32_t flight_tag;
    float *logits;
    /* sampling where the logits are (one rank on a GPU): each row's parameters and draw, and
     * what comes back */
    int device_sampling;
    struct tsr_sample_params *sp;
    int32_t *picked;
    float *picked_lp;
    /* top logprobs where the logits are: (max_seqs, TSR_SAMPLING_MAX_TOP_LOGPROBS) */
    int device_top;
    int32_t *top_ids;
    float *top_lps;
};

const char *tsr_finish_name(enum tsr_finish f)
{
    switch (f) {
    case TSR_FINISH_NONE:
        return "none";
    case TSR_FINISH_STOP:
        return "stop";
    case TSR_FINISH_LENGTH:
        return "length";
    case TSR_FINISH_CANCELLED:
        return "cancelled";
    case TSR_FINISH_ERROR:
        return "error";
    }
    return "unknown";
}

struct tsr_runner_opts tsr_engine_runner_opts(const struct tsr_engine_opts *o)
{
    return (struct tsr_runner_opts){.n_blocks = o->n_blocks,
                                    .block_size = o->block_size,
                                    .max_tokens = o->max_step_tokens,
                                    .mem_util = o->mem_util,
                                    .kv_type = o->kv_type};
}

int tsr_engine_new(tsr_model_t *m, tsr_backend_t *b, const struct tsr_engine_opts *o,
                   tsr_engine_t **out)
{
    *out = NULL;
    if (o->n_blocks < 0 || o->block_size <= 0 || o->max_step_tokens <= 0 || o->max_seqs <= 0)
        return tsr_errorf(TSR_EINVAL, "engine options must be positive");
    tsr_engine_t *e = calloc(1, sizeof *e);
    if (!e) return tsr_errorf(TSR_ENOMEM, "out of memory");
    e->model = m;
    e->tok = tsr_model_tokenizer(m);
    e->o = *o;
    const struct tsr_model_config *c = tsr_model_config(m);
    if (e->o.max_context <= 0 || e->o.max_context > c->n_ctx_train)
        e->o.max_context = c->n_ctx_train;
    e->n_vocab = c->n_vocab;
    e->max_blocks = (e->o.max_context + o->block_size - 1) / o->block_size;
    struct tsr_runner_opts ro = tsr_engine_runner_opts(o);
    int rc = tsr_runner_new(m, b, &ro, o->shard, &e->runner);
    if (!rc) e->o.n_blocks = tsr_runner_n_blocks(e->runner); /* from device memory if 0 */
    if (!rc) rc = tsr_kv_pool_init(&e->pool, e->o.n_blocks, o->block_size);
    if (rc) goto fail;
    size_t T = (size_t)o->max_step_tokens, S = (size_t)o->max_seqs;
    e->seqs = calloc(S, sizeof *e->seqs);
    e->ids = malloc(T * sizeof *e->ids);
    e->pos = malloc(T * sizeof *e->pos);
    e->tseq = malloc(T * sizeof *e->tseq);
    e->out_rows = malloc(S * sizeof *e->out_rows);
    e->pipelined = tsr_runner_depth(e->runner) > 1; /* steps through launch and collect */
    e->depth = tsr_runner_depth(e->runner);
    if (o->micro_batches > 0 && o->micro_batches < e->depth) e->depth = o->micro_batches;
    int fl_ok = !!(e->fl = calloc((size_t)e->depth, sizeof *e->fl));
    for (int i = 0; fl_ok && i < e->depth; i++)
        fl_ok = !!(e->fl[i].out_seq = malloc(S * sizeof *e->fl[i].out_seq));
    e->bt = malloc(S * (size_t)e->max_blocks * sizeof *e->bt);
    e->logits = malloc(S * (size_t)e->n_vocab * sizeof *e->logits);
    e->sp = malloc(S * sizeof *e->sp);
    e->picked = malloc(S * sizeof *e->picked);
    e->picked_lp = malloc(S * sizeof *e->picked_lp);
    e->device_sampling = tsr_runner_samples_on_device(e->runner);
    e->device_top = tsr_runner_top_logprobs_on_device(e->runner);
    e->top_ids = malloc(S * TSR_SAMPLING_MAX_TOP_LOGPROBS * sizeof *e->top_ids);
    e->top_lps = malloc(S * TSR_SAMPLING_MAX_TOP_LOGPROBS * sizeof *e->top_lps);
    if (!e->seqs || !e->ids || !e->pos || !e->tseq || !e->out_rows || !fl_ok || !e->bt ||
        !e->logits || !e->sp || !e->picked || !e->picked_lp || !e->top_ids || !e->top_lps) {
        rc = tsr_errorf(TSR_ENOMEM, "out of memory for the engine's step buffers");
        goto fail;
    }
    e->stats.n_blocks = e->o.n_blocks;
    *out = e;
    return 0;
fail:
    tsr_engine_free(e);
    return rc;
}

static void seq_free(struct seq *s)
{
    if (!s) return;
    tsr_sampler_free(&s->sampler);
    free(s->tokens);
    free(s->blocks);
    free(s->bhash);
    free(s->stop_ids);
    free(s);
}

static void release_blocks(tsr_engine_t *e, struct seq *s)
{
    for (int i = 0; i < s->n_blocks; i++) tsr_kv_unref_block(&e->pool, s->blocks[i]);
    s->n_blocks = 0;
}

void tsr_engine_free(tsr_engine_t *e)
{
    if (!e) return;
    for (int i = 0; i < e->n_seqs; i++) {
        release_blocks(e, e->seqs[i]);
        seq_free(e->seqs[i]);
    }
    tsr_runner_free(e->runner);
    tsr_kv_pool_free(&e->pool);
    free(e->seqs);
    free(e->ids);
    free(e->pos);
    free(e->tseq);
    free(e->out_rows);
    for (int i = 0; e->fl && i < e->depth; i++) free(e->fl[i].out_seq);
    free(e->fl);
    free(e->bt);
    free(e->logits);
    free(e->sp);
    free(e->picked);
    free(e->picked_lp);
    free(e->top_ids);
    free(e->top_lps);
    free(e);
}

int tsr_engine_add(tsr_engine_t *e, const struct tsr_request *req, int64_t *id)
{
    if (req->n_prompt <= 0) return tsr_errorf(TSR_EINVAL, "the prompt is empty");
    if (req->max_tokens < 1)
        return tsr_errorf(TSR_EINVAL, "max_tokens must be at least 1 (got %d)", req->max_tokens);
    for (int i = 0; i < req->n_prompt; i++)
        if (req->prompt[i] < 0 || req->prompt[i] >= e->n_vocab)
            return tsr_errorf(TSR_EINVAL,
                              "prompt token %d at index %d is outside the vocabulary "
                              "(0..%d)",
                              req->prompt[i], i, e->n_vocab - 1);
    if (req->n_generated < 0 || req->n_generated >= req->n_prompt)
        return tsr_errorf(TSR_EINVAL, "%d resumed tokens of a %d-token prompt", req->n_generated,
                          req->n_prompt);
    int64_t total = (int64_t)req->n_prompt + req->max_tokens;
    if (total > e->o.max_context)
        return tsr_errorf(TSR_ERANGE,
                          "prompt (%d tokens) plus max_tokens (%d) exceeds the context of %d",
                          req->n_prompt, req->max_tokens, e->o.max_context);
    if (tsr_kv_blocks_for(&e->pool, (int)total) > e->pool.n_blocks)
        return tsr_errorf(TSR_ERANGE,
                          "prompt plus max_tokens (%lld) exceeds the KV cache (%d "
                          "positions)",
                          (long long)total, e->pool.n_blocks * e->pool.block_size);
    if (e->n_seqs == e->o.max_seqs)
        return tsr_errorf(TSR_EEXHAUSTED, "%d sequences are already running", e->o.max_seqs);
    struct seq *s = calloc(1, sizeof *s);
    if (!s) return tsr_errorf(TSR_ENOMEM, "out of memory");
    int rc = tsr_sampler_init(&s->sampler, &req->sampling, e->n_vocab);
    if (rc) {
        free(s);
        return rc;
    }
    s->sampler.n_prompt = req->n_prompt - req->n_generated;
    s->cap = (int)total;
    s->tokens = malloc((size_t)s->cap * sizeof *s->tokens);
    s->blocks = malloc((size_t)e->max_blocks * sizeof *s->blocks);
    s->bhash = malloc((size_t)e->max_blocks * sizeof *s->bhash);
    s->stop_ids = req->n_stop_ids ? malloc((size_t)req->n_stop_ids * sizeof *s->stop_ids) : NULL;
    if (!s->tokens || !s->blocks || !s->bhash || (req->n_stop_ids && !s->stop_ids)) {
        seq_free(s);
        return tsr_errorf(TSR_ENOMEM, "out of memory");
    }
    memcpy(s->tokens, req->prompt, (size_t)req->n_prompt * sizeof *s->tokens);
    if (req->n_stop_ids) memcpy(s->stop_ids, req->stop_ids, (size_t)req->n_stop_ids * 4);
    s->n_stop_ids = req->n_stop_ids;
    s->n_tokens = s->n_prompt = req->n_prompt;
    s->max_tokens = req->max_tokens;
    s->ignore_eos = req->ignore_eos;
    s->id = e->next_id++;
    e->seqs[e->n_seqs++] = s;
    *id = s->id;
    return 0;
}

int tsr_engine_cancel(tsr_engine_t *e, int64_t id)
{
    for (int i = 0; i < e->n_seqs; i++)
        if (e->seqs[i]->id == id) {
            e->seqs[i]->cancelled = 1;
            return 0;
        }
    return tsr_errorf(TSR_ENOTFOUND, "no running sequence %lld", (long long)id);
}

/* Frees blocks of the youngest sequence that holds some and is not in this step, newer than
 * `than` (index). Returns 1 if one was preempted. */
static int preempt_youngest(tsr_engine_t *e, int than)
{
    for (int i = e->n_seqs - 1; i > than; i--) {
        struct seq *v = e->seqs[i];
        if (v->n_blocks > 0 && v->chunk == 0) {
            release_blocks(e, v);
            v->n_computed = 0; /* recomputed from its tokens later, or found in the cache */
            v->n_registered = v->reg_stop = v->looked_up = 0;
            e->stats.preemptions++;
            return 1;
        }
    }
    return 0;
}

/* The chain hash of s's block i (its tokens known). */
static uint64_t block_hash(const tsr_engine_t *e, struct seq *s, int i)
{
    int bs = e->pool.block_size;
    for (; s->n_hashed <= i; s->n_hashed++) {
        int k = s->n_hashed;
        s->bhash[k] = tsr_chain_hash(k ? s->bhash[k - 1] : 0, s->tokens + (size_t)k * bs, bs);
    }
    return s->bhash[i];
}

/* A sequence with no K/V yet (new, or preempted) starts from the longest chain of cached blocks
 * its tokens begin with, leaving at least its last token to compute (its logits are needed). */
static void attach_prefix(tsr_engine_t *e, struct seq *s)
{
    int bs = e->pool.block_size, most = (s->n_tokens - 1) / bs;
    while (s->n_blocks < most) {
        int i = s->n_blocks;
        int32_t b = tsr_kv_cached(&e->pool, block_hash(e, s, i), i ? s->blocks[i - 1] : -1,
                                  s->tokens + (size_t)i * bs);
        if (b < 0) break;
        s->blocks[s->n_blocks++] = b;
    }
    s->n_computed = s->n_blocks * bs;
    s->n_registered = s->n_blocks;
}

/* Registers s's blocks that its computed positions filled. */
static void register_full(tsr_engine_t *e, struct seq *s)
{
    int bs = e->pool.block_size, full = s->n_computed / bs;
    while (!s->reg_stop && s->n_registered < full) {
        int i = s->n_registered;
        if (!tsr_kv_register(&e->pool, s->blocks[i], block_hash(e, s, i), i ? s->blocks[i - 1] : -1,
                             s->tokens + (size_t)i * bs))
            s->reg_stop = 1;
        else
            s->n_registered++;
    }
}

/* Grows s's block list to cover positions < upto. Preempts younger sequences if needed. Returns
 * the number of positions covered (may be less than upto). */
static int reserve(tsr_engine_t *e, int idx, int upto)
{
    struct seq *s = e->seqs[idx];
    while (s->n_blocks * e->pool.block_size < upto) {
        int32_t b = tsr_kv_alloc_block(&e->pool);
        if (b < 0) {
            if (preempt_youngest(e, idx)) continue;
            break;
        }
        s->blocks[s->n_blocks++] = b;
    }
    int covered = s->n_blocks * e->pool.block_size;
    return covered < upto ? covered : upto;
}

static enum tsr_finish finish_of(const tsr_engine_t *e, const struct seq *s, int32_t tok)
{
    if (!s->ignore_eos && e->tok && tsr_tokenizer_is_eog(e->tok, tok)) return TSR_FINISH_STOP;
    for (int i = 0; i < s->n_stop_ids; i++)
        if (s->stop_ids[i] == tok) return TSR_FINISH_STOP;
    if (s->n_tokens - s->n_prompt >= s->max_tokens) return TSR_FINISH_LENGTH;
    return TSR_FINISH_NONE;
}

static void remove_seq(tsr_engine_t *e, int i)
{
    release_blocks(e, e->seqs[i]);
    seq_free(e->seqs[i]);
    memmove(&e->seqs[i], &e->seqs[i + 1], (size_t)(e->n_seqs - i - 1) * sizeof *e->seqs);
    e->n_seqs--;
}

static void push_event(struct tsr_token_event *ev, int cap, int *n, int64_t id, int32_t tok,
                       float lp, enum tsr_finish f)
{
    if (*n < cap)
        ev[(*n)++] = (struct tsr_token_event){.id = id, .token = tok, .logprob = lp, .finish = f};
}

/* Schedules the sequences not in flight into the next step, up to the token budget and, when
 * steps are pipelined, ceil(running / depth) sequences, so that the steps in flight split the
 * batch evenly. Returns the step's token count (0: nothing to run now). */
static int schedule(tsr_engine_t *e)
{
    for (int i = 0; i < e->n_seqs; i++)
        if (!e->seqs[i]->flight) e->seqs[i]->chunk = e->seqs[i]->want_logits = 0;
    int budget = e->o.max_step_tokens, n_sched = 0;
    int most = e->depth > 1 ? (e->n_seqs + e->depth - 1) / e->depth : e->n_seqs;
    /* Pass 0: decodes (one pending token), oldest first. Pass 1: prompt chunks. */
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < e->n_seqs && budget > 0 && n_sched < most; i++) {
            struct seq *s = e->seqs[i];
            if (s->flight || s->cancelled) continue;
            /* A sequence not started takes what the prefix cache holds here, in pass 1. If that
             * leaves one prompt token, it is a decode pass 0 did not see: it goes now, or a
             * step of it alone would be empty (the group failed: "no sequence could be
             * scheduled"). */
            int attached = 0;
            if (pass == 1 && !s->n_blocks && !s->n_computed && !e->o.no_prefix_cache) {
                attach_prefix(e, s);
                attached = 1;
            }
            int pending = s->n_tokens - s->n_computed;
            if (s->chunk || (pass == 0 ? pending != 1 : pending == 1 && !attached)) continue;
            int want = pending < budget ? pending : budget;
            int covered = reserve(e, i, s->n_computed + want) - s->n_computed;
            if (covered <= 0) continue;
            if (!s->looked_up) { /* its first chunk since it had no K/V */
                s->looked_up = 1;
                e->stats.prefix_queries += (uint64_t)s->n_tokens;
                e->stats.prefix_hits += (uint64_t)s->n_computed;
            }
            s->chunk = covered;
            s->want_logits = s->n_computed + covered == s->n_tokens;
            budget -= covered;
            n_sched++;
        }
    }
    return e->o.max_step_tokens - budget;
}

/* Lays out the scheduled sequences (chunk > 0, not in flight) as a step, and launches it: run
 * now on one rank, or started down a group's stages. The step's sequences are in flight until
 * collect() applies what it gave. */
static int launch(tsr_engine_t *e)
{
    struct flight *f = &e->fl[e->n_fl];
    uint32_t tag = ++e->flight_tag ? e->flight_tag : ++e->flight_tag; /* never 0 */
    int T = 0, S = 0, n_out = 0, mb = 1;
    for (int i = 0; i < e->n_seqs; i++) {
        struct seq *s = e->seqs[i];
        if (s->chunk && !s->flight && s->n_blocks > mb) mb = s->n_blocks;
    }
    for (int i = 0; i < e->n_seqs; i++) {
        struct seq *s = e->seqs[i];
        if (!s->chunk || s->flight) continue;
        s->flight = tag;
        for (int j = 0; j < s->chunk; j++) {
            e->ids[T] = s->tokens[s->n_computed + j];
            e->pos[T] = s->n_computed + j;
            e->tseq[T] = S;
            T++;
        }
        int32_t *row = e->bt + (size_t)S * mb;
        memcpy(row, s->blocks, (size_t)s->n_blocks * sizeof *row);
        for (int j = s->n_blocks; j < mb; j++) row[j] = -1;
        if (s->want_logits) {
            e->out_rows[n_out] = T - 1;
            f->out_seq[n_out++] = s;
        }
        S++;
    }
    struct tsr_step st = {.n_tokens = T,
                          .ids = e->ids,
                          .pos = e->pos,
                          .seq = e->tseq,
                          .n_seqs = S,
                          .max_blocks = mb,
                          .block_tables = e->bt,
                          .n_out = n_out,
                          .out_rows = e->out_rows};
    /* Sample where the logits are unless a row wants a penalty or a logit bias (host only: the
     * row's logits come over), or top logprobs the backend cannot give; the draw is the one
     * tsr_sample would make. One top count for all rows: the most any asks. */
    int device = e->device_sampling, top = 0;
    for (int k = 0; k < n_out && device; k++) {
        const struct tsr_sampler *sm = &f->out_seq[k]->sampler;
        if (tsr_sampler_penalises(sm) || (sm->p.top_logprobs && !e->device_top)) device = 0;
        if (sm->p.top_logprobs > top) top = sm->p.top_logprobs;
    }
    for (int k = 0; k < n_out && device; k++) {
        struct tsr_sampler *sm = &f->out_seq[k]->sampler;
        const struct tsr_sampling *p = &sm->p;
        e->sp[k] = (struct tsr_sample_params){
            p->temperature, p->top_k, p->top_p, p->min_p,
            p->temperature > 0 ? tsr_sampler_uniform(sm, f->out_seq[k]->n_tokens) : 0.0};
    }
    *f = (struct flight){.out_seq = f->out_seq,
                         .n_out = n_out,
                         .device = device,
                         .top = device ? top : 0,
                         .tag = tag};
    e->n_fl++;
    int rc;
    if (e->pipelined) {
        if (device) st.sample = e->sp, st.top = top;
        rc = tsr_runner_launch(e->runner, &st);
    } else {
        rc = device ? tsr_runner_forward_sample(e->runner, &st, e->sp, e->picked, e->picked_lp, top,
                                                e->top_ids, e->top_lps)
                    : tsr_runner_forward(e->runner, &st, e->logits);
    }
    if (!rc) e->stats.steps++;
    return rc;
}

/* Applies what the oldest step in flight gave: positions computed, tokens picked. */
static int collect(tsr_engine_t *e, struct tsr_token_event *ev, int cap, int *n_ev)
{
    struct flight f = e->fl[0];
    if (e->pipelined) {
        int rc = tsr_runner_collect(e->runner, e->logits, e->picked, e->picked_lp, e->top_ids,
                                    e->top_lps);
        if (rc) return rc;
    }
    /* the oldest leaves the queue; its out_seq array goes to the back, reused */
    memmove(e->fl, e->fl + 1, (size_t)(e->n_fl - 1) * sizeof *e->fl);
    e->fl[--e->n_fl].out_seq = f.out_seq;
    for (int i = 0; i < e->n_seqs; i++) {
        struct seq *s = e->seqs[i];
        if (s->flight != f.tag) continue;
        s->flight = 0;
        int hw = s->n_computed + s->chunk < s->n_prompt ? s->n_computed + s->chunk : s->n_prompt;
        if (hw > s->prompt_hw) {
            s->prompt_run += hw - (s->n_computed > s->prompt_hw ? s->n_computed : s->prompt_hw);
            s->prompt_hw = hw;
        }
        s->n_computed += s->chunk;
        if (!e->o.no_prefix_cache) register_full(e, s);
        if (s->chunk > 1 || !s->want_logits)
            e->stats.prompt_tokens += (uint64_t)s->chunk;
        else
            e->stats.decode_tokens++;
        s->chunk = s->want_logits = 0;
    }
    for (int k = 0; k < f.n_out; k++) {
        struct seq *s = f.out_seq[k];
        if (s->cancelled > 0)
            continue; /* cancelled while in flight: no token; the next step
                       * ends it CANCELLED */
        float lp = f.device ? e->picked_lp[k] : 0, *row = e->logits + (size_t)k * e->n_vocab;
        int32_t tok = f.device ? e->picked[k]
                               : tsr_sample(&s->sampler, row, s->tokens, s->n_tokens,
                                            tsr_sampler_uniform(&s->sampler, s->n_tokens), &lp);
        s->tokens[s->n_tokens++] = tok;
        enum tsr_finish fin = finish_of(e, s, tok);
        int before = *n_ev;
        push_event(ev, cap, n_ev, s->id, tok, lp, fin);
        if (fin && *n_ev > before) ev[*n_ev - 1].n_cached = s->n_prompt - s->prompt_run;
        int want = s->sampler.p.top_logprobs;
        if (want && *n_ev > before) {
            struct tsr_token_event *t = &ev[*n_ev - 1];
            if (!f.device) {
                t->n_top = tsr_top_logprobs(row, e->n_vocab, want, t->top_ids, t->top_logprobs);
            } else { /* the row's first `want` of the step's `top` */
                const int32_t *ti = e->top_ids + (size_t)k * f.top;
                const float *tl = e->top_lps + (size_t)k * f.top;
                for (t->n_top = 0; t->n_top < want && ti[t->n_top] >= 0; t->n_top++) {
                    t->top_ids[t->n_top] = ti[t->n_top];
                    t->top_logprobs[t->n_top] = tl[t->n_top];
                }
            }
        }
        if (fin) s->cancelled = -1; /* finished: removed below */
    }
    for (int i = 0; i < e->n_seqs;)
        if (e->seqs[i]->cancelled == -1)
            remove_seq(e, i);
        else
            i++;
    return 0;
}

int tsr_engine_idle(tsr_engine_t *e)
{
    /* steps still in flight (their requests all gone) come back first; no events */
    while (e->n_fl) {
        int n = 0, rc = collect(e, NULL, 0, &n);
        if (rc) return rc;
    }
    return tsr_runner_idle(e->runner);
}

int tsr_engine_step(tsr_engine_t *e, struct tsr_token_event *ev, int cap, int *n_ev)
{
    *n_ev = 0;
    /* Cancelled sequences leave first, freeing their blocks for this step (one in flight once
     * its step is back). */
    for (int i = 0; i < e->n_seqs;) {
        if (e->seqs[i]->cancelled > 0 && !e->seqs[i]->flight) {
            push_event(ev, cap, n_ev, e->seqs[i]->id, -1, 0, TSR_FINISH_CANCELLED);
            remove_seq(e, i);
        } else {
            i++;
        }
    }
    if (e->n_seqs == 0) return 0;
    int launched = 0;
    if (e->n_fl < e->depth && schedule(e) > 0) {
        int rc = launch(e);
        if (rc) return rc;
        launched = 1;
    }
    if (!e->n_fl) return tsr_errorf(TSR_EINTERNAL, "no sequence could be scheduled");
    /* the oldest comes back once depth steps are in flight, or when no other could start */
    if (e->n_fl == e->depth || !launched) return collect(e, ev, cap, n_ev);
    return 0;
}

int tsr_engine_n_blocks(const tsr_engine_t *e)
{
    return e->o.n_blocks;
}

void tsr_engine_get_stats(const tsr_engine_t *e, struct tsr_engine_stats *s)
{
    *s = e->stats;
    s->n_free_blocks = e->pool.n_free;
    s->n_cached_blocks = e->pool.n_free - e->pool.n_list;
    s->n_running = e->n_seqs;
    s->bytes_back = tsr_runner_bytes_back(e->runner);
}
