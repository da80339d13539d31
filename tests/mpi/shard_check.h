/* Shared body of the multi-rank tests: a model run sharded tp × pp (and, for mixture-of-experts
 * models, ep ranks a stage: kernels/moe_ep.h) over the MPI world gives the single-rank logits
 * within f32 tolerance and the same greedy tokens, and each rank holds only its share of the
 * weights in memory (and exactly its share of the routed experts). Included by
 * tests/mpi/test_shard_np*.c; each program runs under mpirun with as many ranks as its layouts
 * need. Rank 0 is the group leader: it computes the single-rank reference itself, then drives the
 * sharded group; failures on any rank abort the job with a message naming the rank. */
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/status.h"
#include "kernels/backend.h"
#include "kernels/comm.h"
#include "model/model.h"
#include "model/shard_plan.h"
#include "tests/unit/unit.h"
#include "worker/engine.h"
#include "worker/forward.h"

#define DEFAULT_MODEL    TSR_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define QWEN2_BIAS_MODEL TSR_SOURCE_DIR "/tests/reference/qwen2_tiny.gguf"
/* tests/reference/moe_tiny_<name>: the golden MoE models of tests/unit/test_moe.c */
#define MOE_REF(name) TSR_SOURCE_DIR "/tests/reference/moe_tiny_" name

static int world_rank;

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "rank %d: FAIL: ", world_rank);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    fflush(stderr);
    abort(); /* mpirun ends the other ranks */
}

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) die(__VA_ARGS__);                                                             \
    } while (0)
#define OK(call) CHECK((call) == 0, "%s: %s", #call, tsr_last_error())

/* Resident memory of this process in bytes (VmRSS). */
static double rss_bytes(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = atof(line + 6);
    if (f) fclose(f);
    return kb * 1024;
}

static int type_of(void *ctx, const char *name)
{
    struct tsr_tensor_view v;
    return tsr_model_tensor(ctx, name, &v) ? -1 : (int)v.type;
}

/* Bytes of this rank's slices as stored in the file: what it should hold. */
static double share_bytes(tsr_model_t *m, const struct tsr_rank_plan *rp)
{
    double sum = 0;
    for (int i = 0; i < rp->n_slices; i++) {
        struct tsr_tensor_view v;
        struct tsr_slice_bytes sb;
        if (tsr_model_tensor(m, rp->slices[i].name, &v)) continue;
        OK(tsr_slice_bytes(&rp->slices[i], v.type, &sb));
        sum += (double)sb.row_bytes * (double)sb.n_rows;
    }
    return sum;
}

/* Deterministic prompts of n tokens. */
static void prompt(int32_t *ids, int n, int vocab, uint32_t seed)
{
    for (int i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        ids[i] = (int32_t)((seed >> 8) % (uint32_t)vocab);
    }
}

enum { T_PROMPT = 48, N_GEN = 64, BLOCKS = 16, BS = 16 };

static void teacher_forced(tsr_runner_t *r, const int32_t *ids, float *logits)
{
    struct tsr_step st = tsr_test_step(ids, 0, T_PROMPT, BLOCKS);
    /* an idle leader's messages first (tsr_runner_idle): the followers take them and wait on */
    OK(tsr_runner_idle(r));
    OK(tsr_runner_idle(r));
    OK(tsr_runner_forward(r, &st, logits));
}

enum { N_SEQS = 4, GEN_BLOCKS = 32 };

/* The engine over 4 sequences of one prompt at once: greedy, greedy with 5 top logprobs, and two
 * seeded samplers; out[s * N_GEN + i] is sequence s's token i. With sh, the leader drives the group
 * (the rows are sampled on its last stage), and *back is what came back from there. */
static void generate(tsr_model_t *m, tsr_backend_t *b, const struct tsr_runner_shard *sh,
                     const int32_t *ids, int32_t *out, uint64_t *back, uint64_t *steps)
{
    struct tsr_engine_opts eo = {.n_blocks = GEN_BLOCKS,
                                 .block_size = BS,
                                 .max_step_tokens = 64,
                                 .max_seqs = N_SEQS,
                                 .shard = sh};
    tsr_engine_t *e;
    OK(tsr_engine_new(m, b, &eo, &e));
    struct tsr_sampling sp[N_SEQS] = {tsr_sampling_default(), tsr_sampling_default(),
                                      tsr_sampling_default(), tsr_sampling_default()};
    sp[1].top_logprobs = 5;
    sp[2].temperature = 0.8f, sp[2].top_p = 0.9f, sp[2].seed = 11;
    sp[3].temperature = 1.0f, sp[3].top_k = 40, sp[3].seed = 12;
    int64_t id[N_SEQS];
    for (int s = 0; s < N_SEQS; s++) {
        struct tsr_request req = {.prompt = ids,
                                  .n_prompt = T_PROMPT,
                                  .sampling = sp[s],
                                  .max_tokens = N_GEN,
                                  .ignore_eos = 1};
        OK(tsr_engine_add(e, &req, &id[s]));
    }
    int got[N_SEQS] = {0}, left = N_SEQS * N_GEN;
    while (left > 0) {
        struct tsr_token_event ev[N_SEQS];
        int n;
        OK(tsr_engine_step(e, ev, N_SEQS, &n));
        for (int k = 0; k < n; k++)
            for (int s = 0; s < N_SEQS; s++)
                if (ev[k].id == id[s] && ev[k].token >= 0) {
                    CHECK(got[s] < N_GEN, "sequence %d: more than %d tokens", s, N_GEN);
                    CHECK(s != 1 || ev[k].n_top == 5, "sequence 1: %d top logprobs", ev[k].n_top);
                    out[s * N_GEN + got[s]++] = ev[k].token;
                    left--;
                }
    }
    struct tsr_engine_stats st;
    tsr_engine_get_stats(e, &st);
    *back = st.bytes_back;
    *steps = st.steps;
    tsr_engine_free(e); /* a sharded leader's runner stops its followers here */
}

/* Drops a model file's clean pages from the page cache. A file just written (as CI's fresh
 * fetch of the model is) sits in the cache in large folios, and a fault maps a whole folio, so a
 * rank's resident memory would count neighbouring bytes it never read (those pages are shared,
 * reclaimable cache, not the rank's memory). From a cold cache, resident memory measures what
 * the rank reads. */
static void evict(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return; /* a synthetic spec */
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

/* Bytes of the routed experts rank rp holds, from the file's (or generator's) tensors: its
 * [expert_begin, expert_end) of every expert layer of its stage; *all: every expert's. */
static double expert_share(tsr_model_t *m, const struct tsr_rank_plan *rp, double *all)
{
    const struct tsr_model_config *c = tsr_model_config(m);
    double mine = 0;
    *all = 0;
    for (int l = rp->layer_begin; c->n_expert > 0 && l < rp->layer_end; l++)
        for (int e = 0; l >= c->n_dense_layer && e < c->n_expert; e++)
            for (int i = 0; i < 3; i++) {
                char name[96];
                struct tsr_tensor_view v;
                snprintf(name, sizeof name, "blk.%d.ffn_%s_exp.%d.weight", l,
                         (const char *[]){"gate", "up", "down"}[i], e);
                OK(tsr_model_tensor(m, name, &v));
                *all += (double)v.nbytes;
                if (e >= rp->expert_begin && e < rp->expert_end) mine += (double)v.nbytes;
            }
    return mine;
}

/* Runs one layout on the world (ep ranks a stage, 0: tp); returns after every rank is done with
 * it. */
static void check_layout_ep(tsr_comm_t *world, const char *spec, int tp, int ep, int pp,
                            double nmse_bound)
{
    int rank = tsr_comm_rank(world);
    world_rank = rank;
    evict(spec);
    OK(tsr_comm_barrier(world));
    tsr_model_t *m;
    OK(tsr_model_open(spec, &m));
    const struct tsr_model_config *c = tsr_model_config(m);
    struct tsr_shard_plan plan;
    OK(tsr_shard_plan_make_ep(c, tp, ep, pp, 1.0, 4.0, &plan));
    OK(tsr_shard_plan_check_types(&plan, type_of, m));
    ep = plan.ep;
    const struct tsr_rank_plan *rp = &plan.ranks[rank];
    /* the attention group (a stage's ep / tp groups apart), and the stage when it is more */
    tsr_comm_t *tpc, *epc = NULL;
    OK(tsr_comm_split(world, rp->pp_stage * plan.dp + rp->dp_rank, rp->tp_rank, &tpc));
    if (plan.ep > plan.tp) OK(tsr_comm_split(world, rp->pp_stage, rp->ep_rank, &epc));
    tsr_backend_t *b = tsr_backend_cpu_new(1);
    CHECK(b != NULL, "cpu backend");
    struct tsr_runner_shard sh = {&plan, world, tpc, epc};
    struct tsr_runner_opts ro = {.n_blocks = BLOCKS, .block_size = BS, .max_tokens = 64};
    int V = c->n_vocab;
    int32_t ids[T_PROMPT];
    prompt(ids, T_PROMPT, V, 777);
    double rss0 = rss_bytes();

    tsr_runner_t *r;
    OK(tsr_runner_new(m, b, &ro, &sh, &r));
    if (c->n_expert > 0) { /* exactly its experts, 1 / ep of the stage's */
        double all, mine = expert_share(m, rp, &all);
        printf("rank %d (ep %d, dp %d, tp %d, stage %d): experts [%d, %d) of %d: %zu bytes held, "
               "%.0f its share, %.0f the stage's\n",
               rank, rp->ep_rank, rp->dp_rank, rp->tp_rank, rp->pp_stage, rp->expert_begin,
               rp->expert_end, c->n_expert, tsr_runner_expert_bytes(r), mine, all);
        CHECK((double)tsr_runner_expert_bytes(r) == mine && mine * ep == all,
              "holds %zu bytes of experts; its share is %.0f of %.0f over ep = %d",
              tsr_runner_expert_bytes(r), mine, all, ep);
    }
    float *logits = malloc(sizeof(float) * T_PROMPT * V), *ref = malloc(sizeof *ref * T_PROMPT * V);
    if (rank == 0) {
        teacher_forced(r, ids, logits);
    } else {
        OK(tsr_runner_follow(r)); /* until the leader frees its runner below */
    }
    /* Memory, measured after a step touched every weight this rank uses. */
    double held = rss_bytes() - rss0, share = share_bytes(m, rp);
    /* the runner's caches and step buffers, and this test's logits array */
    double kv_scratch = (double)tsr_runner_kv_bytes(r) + (double)tsr_runner_scratch_bytes(r) +
                        (rank == 0 ? sizeof(float) * T_PROMPT * (double)V : 0);
    /* page rounding of ~300 slices, the CPU backend's quantized-activation scratch, MPI's
     * shared-memory buffers, thread stacks */
    double overhead = 12.0 * 1024 * 1024;
    printf(
        "rank %d (tp %d, stage %d): %s tp=%d ep=%d pp=%d: resident +%.1f MiB for a %.1f MiB share "
        "(+%.1f MiB KV and scratch, %.1f MiB allowance)\n",
        rank, rp->tp_rank, rp->pp_stage, spec, tp, ep, pp, held / 1048576, share / 1048576,
        kv_scratch / 1048576, overhead / 1048576);
#if defined(__SANITIZE_ADDRESS__)
    /* ASan's shadow memory, redzones and quarantine inflate every allocation: the bound is
     * checked by the uninstrumented build. */
    if (rank == 0) printf("memory bound not checked under AddressSanitizer\n");
    held = 0;
#endif
    CHECK(held <= share + kv_scratch + overhead,
          "holds %.1f MiB, more than its %.1f MiB share + %.1f MiB KV/scratch + %.1f MiB",
          held / 1048576, share / 1048576, kv_scratch / 1048576, overhead / 1048576);

    if (rank == 0) {
        tsr_runner_t *whole;
        OK(tsr_runner_new(m, b, &ro, NULL, &whole));
        teacher_forced(whole, ids, ref);
        tsr_runner_free(whole);
        double num = 0, den = 0;
        int agree = 0;
        for (int t = 0; t < T_PROMPT; t++) {
            int a = 0, bb = 0;
            for (int v = 0; v < V; v++) {
                double d = logits[(size_t)t * V + v] - ref[(size_t)t * V + v];
                num += d * d;
                den += (double)ref[(size_t)t * V + v] * ref[(size_t)t * V + v];
                if (logits[(size_t)t * V + v] > logits[(size_t)t * V + a]) a = v;
                if (ref[(size_t)t * V + v] > ref[(size_t)t * V + bb]) bb = v;
            }
            agree += a == bb;
        }
        printf("%s tp=%d ep=%d pp=%d: teacher-forced NMSE vs one rank %.3g (bound %.3g), argmax "
               "equal at %d/%d positions\n",
               spec, tp, ep, pp, num / den, nmse_bound, agree, T_PROMPT);
        CHECK(num / den <= nmse_bound, "NMSE %.3g over %.3g", num / den, nmse_bound);
        CHECK(agree == T_PROMPT, "argmax differs at %d positions", T_PROMPT - agree);
    }
    tsr_runner_free(r); /* the leader's free stops the followers' loop */

    /* The engine on the leader drives the group; the followers serve it. The sharded tokens equal
     * one rank's, greedy and seeded; from a last stage that is not the leader only the picks come
     * back: per row an id and its logprob, and for the rows that ask, 5 top ids and logprobs. */
    int32_t out_sharded[N_SEQS * N_GEN], out_whole[N_SEQS * N_GEN];
    if (rank == 0) {
        uint64_t back, steps, back1, steps1;
        generate(m, b, &sh, ids, out_sharded, &back, &steps);
        generate(m, b, NULL, ids, out_whole, &back1, &steps1);
        for (int s = 0; s < N_SEQS; s++)
            CHECK(!memcmp(out_sharded + s * N_GEN, out_whole + s * N_GEN, sizeof(int32_t) * N_GEN),
                  "sequence %d: tokens differ from the single-rank run", s);
        size_t pick_max = (size_t)N_SEQS * (2 + 2 * 5) * sizeof(int32_t);
        CHECK(pp == 1 ? back == 0 : back > 0 && back <= steps * pick_max,
              "%llu bytes back in %llu steps (picks: at most %zu a step)", (unsigned long long)back,
              (unsigned long long)steps, pick_max);
        /* pp steps in flight split the 4 sequences: each decode round takes more than one step */
        CHECK(pp == 1 || steps >= 2 * (uint64_t)N_GEN,
              "%llu steps for %d tokens a sequence: the stages were not pipelined",
              (unsigned long long)steps, N_GEN);
        printf("%s tp=%d ep=%d pp=%d: %d sequences x %d tokens (greedy, top logprobs, 2 seeded) "
               "equal to one rank's; %.0f bytes back a step (a logit row is %d)\n",
               spec, tp, ep, pp, N_SEQS, N_GEN, steps ? (double)back / steps : 0.0, V * 4);
    } else {
        tsr_runner_t *f;
        struct tsr_runner_opts fo = {.n_blocks = GEN_BLOCKS, .block_size = BS, .max_tokens = 64};
        OK(tsr_runner_new(m, b, &fo, &sh, &f));
        OK(tsr_runner_follow(f));
        tsr_runner_free(f);
    }
    OK(tsr_comm_barrier(world));
    free(logits);
    free(ref);
    tsr_backend_free(b);
    tsr_comm_free(tpc);
    tsr_comm_free(epc);
    tsr_shard_plan_free(&plan);
    tsr_model_free(m);
}

struct layout {
    const char *spec;
    int tp, pp;
    double nmse_bound;
};

/* A mixture-of-experts layout: ep ranks a stage (a multiple of tp dividing the experts). */
struct layout_ep {
    const char *spec;
    int tp, ep, pp;
    double nmse_bound;
};

/* The whole program of a multi-rank test: every layout on the MPI world, in order (the ep
 * layouts after the others). Inline: a program uses either. */
static inline int shard_main_ep(const struct layout *l, int n, const struct layout_ep *le, int n_ep)
{
    tsr_comm_t *world;
    if (tsr_comm_mpi_world(&world)) {
        fprintf(stderr, "%s\n", tsr_last_error());
        return 1;
    }
    for (int i = 0; i < n; i++)
        check_layout_ep(world, l[i].spec, l[i].tp, 0, l[i].pp, l[i].nmse_bound);
    for (int i = 0; i < n_ep; i++)
        check_layout_ep(world, le[i].spec, le[i].tp, le[i].ep, le[i].pp, le[i].nmse_bound);
    tsr_comm_free(world);
    return 0;
}

static inline int shard_main(const struct layout *l, int n)
{
    return shard_main_ep(l, n, NULL, 0);
}
