/* The engine over the CPU backend: batching, chunked prefill, late joiners and preemption change
 * no greedy token; cancellation frees exactly its blocks; bad requests get clear errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/status.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "worker/engine.h"

#include "unit.h"

#define MODEL TSR_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf"

#define MAX_REQ 8
#define MAX_GEN 48

struct req {
    int32_t prompt[256];
    int n_prompt, max_tokens;
    int32_t out[MAX_GEN];
    int n_out;
    int64_t id;
    enum tsr_finish finish;
    int cached; /* the finish event's n_cached */
};

static tsr_backend_t *backend;

static tsr_engine_t *engine(tsr_model_t *m, int n_blocks, int step_tokens)
{
    struct tsr_engine_opts o = {.n_blocks = n_blocks,
                                .block_size = 16,
                                .max_step_tokens = step_tokens,
                                .max_seqs = MAX_REQ,
                                .max_context = 1024};
    tsr_engine_t *e;
    assert_int_equal(tsr_engine_new(m, backend, &o, &e), 0);
    return e;
}

static void add(tsr_engine_t *e, struct req *r)
{
    struct tsr_request q = {.prompt = r->prompt,
                            .n_prompt = r->n_prompt,
                            .sampling = tsr_sampling_default(),
                            .max_tokens = r->max_tokens,
                            .ignore_eos = 1};
    r->n_out = 0;
    r->finish = TSR_FINISH_NONE;
    r->cached = -1;
    assert_int_equal(tsr_engine_add(e, &q, &r->id), 0);
}

/* Steps until every request in rs[0..n) finished; late[i] > 0 delays request i's admission until
 * that many steps have run. Returns the steps taken. */
static int run(tsr_engine_t *e, struct req *rs, int n, const int *late)
{
    int steps = 0, done = 0, admitted[MAX_REQ] = {0};
    for (int i = 0; i < n; i++)
        if (!late || !late[i]) add(e, &rs[i]), admitted[i] = 1;
    while (done < n) {
        for (int i = 0; i < n; i++)
            if (!admitted[i] && steps >= late[i]) add(e, &rs[i]), admitted[i] = 1;
        struct tsr_token_event ev[MAX_REQ];
        int n_ev;
        assert_int_equal(tsr_engine_step(e, ev, MAX_REQ, &n_ev), 0);
        steps++;
        assert_true(steps < 10000);
        for (int k = 0; k < n_ev; k++)
            for (int i = 0; i < n; i++) {
                if (!admitted[i] || rs[i].id != ev[k].id || rs[i].finish) continue;
                if (ev[k].token >= 0) rs[i].out[rs[i].n_out++] = ev[k].token;
                if (ev[k].finish)
                    rs[i].finish = ev[k].finish, rs[i].cached = ev[k].n_cached, done++;
            }
    }
    return steps;
}

static void make_prompts(struct req *rs, int n, int vocab, uint32_t seed)
{
    static const int lens[MAX_REQ] = {5, 37, 1, 120, 16, 63, 9, 200};
    for (int i = 0; i < n; i++) {
        memset(&rs[i], 0, sizeof rs[i]);
        rs[i].n_prompt = lens[i];
        rs[i].max_tokens = 20 + 3 * i;
        for (int j = 0; j < lens[i]; j++) {
            seed = seed * 1664525u + 1013904223u;
            rs[i].prompt[j] = (int32_t)((seed >> 8) % (uint32_t)vocab);
        }
    }
}

/* Each request alone, then all together under a small step budget, then with late joiners. */
static void check_batching(const char *spec, int n)
{
    tsr_model_t *m;
    assert_int_equal(tsr_model_open(spec, &m), 0);
    int vocab = tsr_model_config(m)->n_vocab;
    struct req alone[MAX_REQ], batch[MAX_REQ], late_rs[MAX_REQ];
    make_prompts(alone, n, vocab, 1234);
    memcpy(batch, alone, sizeof batch);
    memcpy(late_rs, alone, sizeof late_rs);
    for (int i = 0; i < n; i++) {
        tsr_engine_t *e = engine(m, 64, 256);
        run(e, &alone[i], 1, NULL);
        assert_int_equal(alone[i].finish, TSR_FINISH_LENGTH);
        assert_int_equal(alone[i].n_out, alone[i].max_tokens);
        tsr_engine_free(e);
    }
    /* 24-token budget: prompts are chunked and mixed with other sequences' decodes. */
    tsr_engine_t *e = engine(m, 256, 24);
    run(e, batch, n, NULL);
    struct tsr_engine_stats st;
    tsr_engine_get_stats(e, &st);
    assert_int_equal(st.n_free_blocks, st.n_blocks);
    tsr_engine_free(e);
    int late[MAX_REQ] = {0, 3, 0, 7, 12, 2, 20, 5};
    e = engine(m, 256, 64);
    run(e, late_rs, n, late);
    tsr_engine_free(e);
    for (int i = 0; i < n; i++) {
        /* nothing is shared between these prompts: every prompt position was computed */
        assert_int_equal(alone[i].cached, 0);
        assert_int_equal(batch[i].cached, 0);
        assert_int_equal(batch[i].n_out, alone[i].n_out);
        assert_memory_equal(batch[i].out, alone[i].out, sizeof(int32_t) * (size_t)alone[i].n_out);
        assert_memory_equal(late_rs[i].out, alone[i].out, sizeof(int32_t) * (size_t)alone[i].n_out);
    }
    tsr_model_free(m);
}

static void test_batching_synthetic(void **state)
{
    check_batching("synthetic:tiny", 8);
}

static void test_batching_default_model(void **state)
{
    if (tsr_test_missing(MODEL, "run scripts/fetch_model.sh")) return;
    check_batching(MODEL, 6);
}

static void test_preemption_keeps_results(void **state)
{
    tsr_model_t *m;
    assert_int_equal(tsr_model_open("synthetic:tiny", &m), 0);
    struct req alone[MAX_REQ], tight[MAX_REQ];
    make_prompts(alone, 6, 256, 99);
    memcpy(tight, alone, sizeof tight);
    for (int i = 0; i < 6; i++) {
        tsr_engine_t *e = engine(m, 64, 256);
        run(e, &alone[i], 1, NULL);
        tsr_engine_free(e);
    }
    /* 12 blocks = 192 positions: less than the ~430 the six need together, enough for each. */
    tsr_engine_t *e = engine(m, 12, 64);
    run(e, tight, 6, NULL);
    struct tsr_engine_stats st;
    tsr_engine_get_stats(e, &st);
    assert_true(st.preemptions > 0);
    assert_int_equal(st.n_free_blocks, 12);
    tsr_engine_free(e);
    for (int i = 0; i < 6; i++) {
        assert_memory_equal(tight[i].out, alone[i].out, sizeof(int32_t) * (size_t)alone[i].n_out);
        /* a preempted prompt computed twice is not a cached one, nor counted twice */
        assert_int_equal(tight[i].cached, 0);
    }
    tsr_model_free(m);
}

/* Blocks a running sequence holds: those covering its computed positions, which are all its
 * tokens but the last sampled one (computed in the next step). No preemption here (64 blocks). */
static int blocks_held(const struct req *r)
{
    return (r->n_prompt + r->n_out - 1 + 15) / 16;
}

/* Steps once, appending each request's tokens; returns the events. */
static int step_collect(tsr_engine_t *e, struct req *rs, int n, struct tsr_token_event *ev)
{
    int n_ev;
    assert_int_equal(tsr_engine_step(e, ev, MAX_REQ, &n_ev), 0);
    for (int k = 0; k < n_ev; k++)
        for (int i = 0; i < n; i++)
            if (rs[i].id == ev[k].id) {
                if (ev[k].token >= 0) rs[i].out[rs[i].n_out++] = ev[k].token;
                if (ev[k].finish) rs[i].finish = ev[k].finish;
            }
    return n_ev;
}

/* The cancelled sequence's blocks all come back, at once: the free count is exact, before the
 * cancel, after it, and when the others have finished. */
static void test_cancel_frees_blocks(void **state)
{
    tsr_model_t *m;
    assert_int_equal(tsr_model_open("synthetic:tiny", &m), 0);
    tsr_engine_t *e = engine(m, 64, 64);
    struct req rs[3];
    make_prompts(rs, 3, 256, 5); /* prompts of 5, 37 and 1 tokens: 43 <= 64, one prefill step */
    for (int i = 0; i < 3; i++) add(e, &rs[i]);
    struct tsr_token_event ev[MAX_REQ];
    for (int s = 0; s < 4; s++) step_collect(e, rs, 3, ev);
    struct tsr_engine_stats before, after;
    tsr_engine_get_stats(e, &before);
    for (int i = 0; i < 3; i++) assert_int_equal(rs[i].n_out, 4);
    assert_int_equal(before.n_free_blocks,
                     64 - blocks_held(&rs[0]) - blocks_held(&rs[1]) - blocks_held(&rs[2]));
    assert_int_equal(blocks_held(&rs[1]), 3); /* 40 positions */
    assert_int_equal(tsr_engine_cancel(e, rs[1].id), 0);
    assert_int_equal(tsr_engine_cancel(e, 12345), TSR_ENOTFOUND);
    int n_ev = step_collect(e, rs, 3, ev);
    int saw = 0;
    for (int k = 0; k < n_ev; k++)
        if (ev[k].id == rs[1].id) {
            assert_int_equal(ev[k].finish, TSR_FINISH_CANCELLED);
            assert_int_equal(ev[k].token, -1);
            saw = 1;
        }
    assert_true(saw);
    tsr_engine_get_stats(e, &after);
    assert_int_equal(after.n_running, 2);
    assert_int_equal(rs[1].n_out, 4);
    assert_int_equal(after.n_free_blocks, 64 - blocks_held(&rs[0]) - blocks_held(&rs[2]));
    /* the rest run to their end: the pool is whole again */
    for (int s = 0; s < 100 && (!rs[0].finish || !rs[2].finish); s++) step_collect(e, rs, 3, ev);
    assert_int_equal(rs[0].finish, TSR_FINISH_LENGTH);
    assert_int_equal(rs[2].finish, TSR_FINISH_LENGTH);
    tsr_engine_get_stats(e, &after);
    assert_int_equal(after.n_running, 0);
    assert_int_equal(after.n_free_blocks, 64);
    tsr_engine_free(e);
    tsr_model_free(m);
}

/* ---- prefix caching ---- */

enum { PC_MAX_PROMPT = 1100, PC_GEN = 24, PC_MAX_REQ = 32 };

struct pc_req {
    int32_t prompt[PC_MAX_PROMPT];
    int n_prompt, arrive; /* admitted at step `arrive` */
    struct tsr_sampling sp;
    int32_t out[PC_GEN];
    int n_out, cached;
    int64_t id;
    enum tsr_finish finish;
};

/* n requests sharing a prefix of `prefix` tokens, each with a suffix of its own (5 to 40
 * tokens); odd ones sampled with a seed of their own, even ones greedy; arriving a few steps
 * apart. */
static void pc_requests(struct pc_req *rs, int n, int prefix, int vocab)
{
    uint32_t seed = 77;
#define NEXT() (seed = seed * 1664525u + 1013904223u, (seed >> 8) % (uint32_t)vocab)
    for (int i = 0; i < n; i++) {
        memset(&rs[i], 0, sizeof rs[i]);
        rs[i].n_prompt = prefix + 5 + (i * 7) % 36;
        for (int j = 0; j < rs[i].n_prompt; j++) {
            uint32_t t = NEXT();
            rs[i].prompt[j] = j < prefix ? rs[0].prompt[j] : (int32_t)t;
            if (i == 0) rs[i].prompt[j] = (int32_t)t;
        }
        rs[i].arrive = 2 * i;
        rs[i].sp = tsr_sampling_default();
        if (i % 2) rs[i].sp.temperature = 0.8f, rs[i].sp.top_k = 40, rs[i].sp.seed = 1000 + i;
    }
#undef NEXT
}

/* Runs them all on one engine; returns its stats. */
static struct tsr_engine_stats pc_run(tsr_model_t *m, struct pc_req *rs, int n, int n_blocks,
                                      int step_tokens, int no_cache)
{
    struct tsr_engine_opts o = {.n_blocks = n_blocks,
                                .block_size = 16,
                                .max_step_tokens = step_tokens,
                                .max_seqs = PC_MAX_REQ,
                                .max_context = 2048,
                                .no_prefix_cache = no_cache};
    tsr_engine_t *e;
    assert_int_equal(tsr_engine_new(m, backend, &o, &e), 0);
    int done = 0;
    for (int step = 0; done < n; step++) {
        assert_true(step < 100000);
        for (int i = 0; i < n; i++)
            if (rs[i].arrive == step) {
                struct tsr_request q = {.prompt = rs[i].prompt,
                                        .n_prompt = rs[i].n_prompt,
                                        .sampling = rs[i].sp,
                                        .max_tokens = PC_GEN,
                                        .ignore_eos = 1};
                rs[i].cached = -1;
                assert_int_equal(tsr_engine_add(e, &q, &rs[i].id), 0);
            }
        struct tsr_token_event ev[PC_MAX_REQ];
        int n_ev;
        assert_int_equal(tsr_engine_step(e, ev, PC_MAX_REQ, &n_ev), 0);
        for (int k = 0; k < n_ev; k++)
            for (int i = 0; i < n; i++) {
                if (rs[i].arrive > step || rs[i].id != ev[k].id || rs[i].finish) continue;
                if (ev[k].token >= 0) rs[i].out[rs[i].n_out++] = ev[k].token;
                if (ev[k].finish)
                    rs[i].finish = ev[k].finish, rs[i].cached = ev[k].n_cached, done++;
            }
    }
    struct tsr_engine_stats st;
    tsr_engine_get_stats(e, &st);
    assert_int_equal(st.n_free_blocks, n_blocks); /* every block back: free or cached */
    tsr_engine_free(e);
    return st;
}

/* Caching changes no token, greedy or seeded: the requests with it on, chunked prefill (a
 * 128-token budget) and a pool too small for them (preemption), equal the same requests with
 * it off; later requests find the prefix, and usage counts what they found. */
static void check_prefix_cache(const char *spec, int n, int prefix, int n_blocks)
{
    tsr_model_t *m;
    assert_int_equal(tsr_model_open(spec, &m), 0);
    int vocab = tsr_model_config(m)->n_vocab;
    struct pc_req *off = malloc(sizeof *off * PC_MAX_REQ), *on = malloc(sizeof *on * PC_MAX_REQ);
    assert_non_null(off);
    assert_non_null(on);
    pc_requests(off, n, prefix, vocab);
    memcpy(on, off, sizeof *on * (size_t)n);
    struct tsr_engine_stats st_off = pc_run(m, off, n, n_blocks, 128, 1);
    struct tsr_engine_stats st_on = pc_run(m, on, n, n_blocks, 128, 0);
    int hits = 0;
    for (int i = 0; i < n; i++) {
        assert_int_equal(on[i].finish, TSR_FINISH_LENGTH);
        assert_int_equal(on[i].n_out, PC_GEN);
        if (memcmp(on[i].out, off[i].out, sizeof on[i].out))
            fail_msg("request %d (%s): tokens differ with the prefix cache on", i,
                     i % 2 ? "seeded" : "greedy");
        assert_int_equal(off[i].cached, 0);
        assert_true(on[i].cached >= 0 && on[i].cached <= prefix && on[i].cached % 16 == 0);
        hits += on[i].cached > 0;
    }
    /* the test is not vacuous: the small pool preempted, and most requests found the prefix */
    assert_true(st_off.preemptions > 0);
    assert_true(st_on.preemptions > 0);
    assert_true(hits >= n / 2);
    assert_true(st_on.prefix_hits > 0 && st_on.prefix_hits <= st_on.prefix_queries);
    assert_int_equal(st_off.prefix_hits, 0);
    assert_true(st_on.prompt_tokens < st_off.prompt_tokens); /* less computed */
    free(off);
    free(on);
    tsr_model_free(m);
}

/* A prompt of one block and one token, sent again alone: the cache holds its first block, so a
 * single token is left to compute and the step is a decode. It finishes, with the same tokens
 * (an engine that scheduled nothing here failed the step, and with it the group). */
static void test_prefix_cache_one_token_left(void **state)
{
    (void)state;
    tsr_model_t *m;
    assert_int_equal(tsr_model_open("synthetic:tiny", &m), 0);
    struct pc_req *r = malloc(sizeof *r * 2);
    assert_non_null(r);
    memset(r, 0, sizeof *r * 2);
    r[0].n_prompt = 17;
    for (int j = 0; j < 17; j++) r[0].prompt[j] = (int32_t)(3 + 7 * j % 200);
    r[0].sp = tsr_sampling_default();
    r[1] = r[0];
    r[1].arrive = 40; /* after the first has finished (PC_GEN steps) */
    struct tsr_engine_stats st = pc_run(m, r, 2, 8, 512, 0);
    assert_int_equal(r[1].finish, TSR_FINISH_LENGTH);
    assert_int_equal(r[1].cached, 16);
    assert_memory_equal(r[1].out, r[0].out, sizeof r[0].out);
    assert_true(st.prefix_hits == 16);
    free(r);
    tsr_model_free(m);
}

static void test_prefix_cache_synthetic(void **state)
{
    /* 32 requests sharing a 1,000-token prefix (~66 blocks each): 100 blocks hold one and a half */
    check_prefix_cache("synthetic:tiny-4k", 32, 1000, 100);
}

/* The same on the real model, shorter: 8 requests sharing 500 tokens (~35 blocks each), 40
 * blocks. Not under the sanitizers (CI's second pass): the quantized kernels make it minutes
 * there, and the engine's paths are the synthetic case's, which runs there. */
static void test_prefix_cache_default_model(void **state)
{
    if (tsr_test_missing(MODEL, "run scripts/fetch_model.sh")) return;
#if defined(__SANITIZE_ADDRESS__)
    print_message("prefix cache on the default model: in the Release pass only\n");
#else
    check_prefix_cache(MODEL, 8, 500, 40);
#endif
}

static void test_bad_requests(void **state)
{
    tsr_model_t *m;
    assert_int_equal(tsr_model_open("synthetic:tiny", &m), 0);
    tsr_engine_t *e = engine(m, 8, 64);
    int32_t p[4] = {1, 2, 3, 4};
    struct tsr_request q = {
        .prompt = p, .n_prompt = 4, .sampling = tsr_sampling_default(), .max_tokens = 4};
    int64_t id;
    q.n_prompt = 0;
    assert_int_equal(tsr_engine_add(e, &q, &id), TSR_EINVAL);
    q.n_prompt = 4;
    q.max_tokens = 0;
    assert_int_equal(tsr_engine_add(e, &q, &id), TSR_EINVAL);
    q.max_tokens = 200; /* within the context (512) but not the 8 x 16 = 128 cache positions */
    assert_int_equal(tsr_engine_add(e, &q, &id), TSR_ERANGE);
    assert_non_null(strstr(tsr_last_error(), "KV cache"));
    q.max_tokens = 4;
    p[2] = 256;
    assert_int_equal(tsr_engine_add(e, &q, &id), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "vocabulary"));
    p[2] = 3;
    q.sampling.top_p = 2;
    assert_int_equal(tsr_engine_add(e, &q, &id), TSR_EINVAL);
    tsr_engine_free(e);
    tsr_model_free(m);
}

static int setup(void **state)
{
    backend = tsr_backend_cpu_new(2);
    return backend ? 0 : -1;
}

static int teardown(void **state)
{
    tsr_backend_free(backend);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batching_synthetic),
        cmocka_unit_test(test_batching_default_model),
        cmocka_unit_test(test_preemption_keeps_results),
        cmocka_unit_test(test_cancel_frees_blocks),
        cmocka_unit_test(test_prefix_cache_one_token_left),
        cmocka_unit_test(test_prefix_cache_synthetic),
        cmocka_unit_test(test_prefix_cache_default_model),
        cmocka_unit_test(test_bad_requests),
    };
    return tsr_test_exit(cmocka_run_group_tests(tests, setup, teardown));
}
