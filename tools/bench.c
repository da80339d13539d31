/* `tessera bench`: speed and agreement of a model on this machine.
 *
 * Modes:
 * - default: prompt and decode speed of one sequence through the engine, the numbers a benchmark
 *   script sets beside a peer's. Prompt tokens are a fixed pseudo-random sequence (the same ids
 *   every run), decoding is greedy and ignores end-of-generation tokens, each repeat starts from
 *   an empty cache, and the median of the repeats is reported after one warm-up.
 * - --batches B,B,...: decode throughput at each batch size (B sequences of --context tokens each,
 *   one token per sequence per step, greedy on the device) and the prefill rate of one
 *   --prefill-tokens prompt, driven through the runner. On a GPU each row also gives the fraction
 *   of the memory roofline (weight and KV bytes a step must read, over the device-to-device copy
 *   bandwidth measured in the same run) and the prefill its fraction of the bf16 GEMM rate
 *   measured in the same run.
 * - --agree: teacher-forced argmax of a fixed token sequence (the model's own text when it has a
 *   tokenizer, pseudo-random ids otherwise): the first half as one prompt step with logits for
 *   every position, the rest one decode step per token. Compared with the same on --ref-device,
 *   or with ids saved by --save-ids in an earlier run (--ref-ids), e.g. TP=1 against TP=4.
 *   Exits 1 when the agreement is under --min-agree.
 * - --perplexity FILE: the model's perplexity on the whitespace-separated token ids in FILE, scored
 *   as llama.cpp's perplexity tool does: consecutive chunks of --ctx C tokens (512; a last partial
 *   chunk is dropped), each from an empty cache, teacher-forced, and the second half of each
 *   scored: the NLL of token t + 1 given tokens 0..t for C/2 <= t < C - 1, C - C/2 - 1 tokens a
 *   chunk, from a float64 log-softmax over the whole logit row. Unlike llama.cpp's tool, a chunk's
 *   first token is the file's, not a BOS put in its place: give ids that start each chunk as the
 *   comparison needs. A chunk goes through in steps of
 *   --step-tokens (512), which bound the logits buffer (that many rows of the vocabulary); the
 *   result does not depend on them. Prints one JSON line. --save-ids writes the argmax of every
 *   scored row (first index of the largest logit), --ref-ids compares them with an earlier run's
 *   ("agree": e.g. --quantize fp8 against the file's own weights), and an explicit --min-agree
 *   makes an agreement under it exit 1. With --text, FILE is text the model's tokenizer makes ids
 *   of (no BOS): any document, e.g. /usr/share/common-licenses/GPL-3.
 * - --pipeline B: decode throughput of B sequences through the engine of a group of --tp x --pp
 *   ranks, one step at a time and then with pp micro-batches in flight (worker/engine.h), in one
 *   run on the same ranks; --pin binds each rank to core rank mod cores.
 * --tp N runs the model sharded over N ranks (relaunched under mpirun, one GPU each with cuda),
 * for --agree, --batches and --pipeline; --batches then reports rank 0's bytes over its GPU's
 * bandwidth. Every mode runs with --kv-cache-dtype's KV cache (auto: bf16 on a GPU, f32 on the
 * CPU), a --ref-device run with its own device's; the roofline counts the K/V bytes in it. */
#include <getopt.h>
#include <sched.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/hash.h"
#include "common/log.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "tools/cli.h"
#include "worker/step.h"
#include "worker/engine.h"
#include "worker/group.h"
#if TSR_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

enum { MAX_BATCHES = 16, BLOCK = TSR_KV_BLOCK };

struct bench_args {
    struct tsr_cli_model mdl;
    struct tsr_cli_device dev;
    const char *ref_device, *save_ids, *ref_ids;
    long n_prompt, n_gen, repeats;
    int n_batches, batches[MAX_BATCHES];
    long context, steps, prefill_tokens;
    int agree;
    double min_agree;
    int min_agree_given;
    long pipeline;          /* --pipeline B: sequences; 0: off */
    const char *perplexity; /* --perplexity FILE; NULL: off */
    int text;               /* --text: FILE is text for the model's tokenizer, not ids */
    long ctx;               /* --ctx: its chunk length */
    long step_tokens;       /* --step-tokens: most tokens of a chunk in one forward step */
    int pin;
    enum tsr_dtype kv_type; /* --kv-cache-dtype on --device (auto resolved) */
};

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, long n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* The same pseudo-random ids every run. */
static void fill_ids(int32_t *ids, long n, int vocab, uint32_t seed)
{
    uint32_t s = seed;
    for (long i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        ids[i] = (int32_t)((s >> 8) % (uint32_t)vocab);
    }
}

/* ---- default mode: one sequence through the engine ---- */

/* One run: returns prompt and decode seconds. */
static int run_once(tsr_model_t *m, tsr_backend_t *b, enum tsr_dtype kv_type, const int32_t *prompt,
                    int n_prompt, int n_gen, double *t_prompt, double *t_decode)
{
    struct tsr_engine_opts eo = {.n_blocks = (n_prompt + n_gen + BLOCK - 1) / BLOCK,
                                 .block_size = BLOCK,
                                 .max_step_tokens = n_prompt,
                                 .max_seqs = 1,
                                 .kv_type = kv_type};
    tsr_engine_t *e;
    int rc = tsr_engine_new(m, b, &eo, &e);
    if (rc) return rc;
    struct tsr_request req = {.prompt = prompt,
                              .n_prompt = n_prompt,
                              .sampling = tsr_sampling_default(),
                              .max_tokens = n_gen,
                              .ignore_eos = 1};
    int64_t id;
    if ((rc = tsr_engine_add(e, &req, &id))) goto out;
    double t0 = tsr_now(), t1 = 0;
    int got = 0;
    while (got < n_gen) {
        struct tsr_token_event ev;
        int n_ev;
        if ((rc = tsr_engine_step(e, &ev, 1, &n_ev))) goto out;
        if (n_ev && got++ == 0) t1 = tsr_now();
    }
    *t_prompt = t1 - t0;
    *t_decode = (tsr_now() - t1) / (n_gen - 1);
out:
    tsr_engine_free(e);
    return rc;
}

static int bench_engine(const struct bench_args *a, tsr_model_t *m, tsr_backend_t *b)
{
    long n_prompt = a->n_prompt, repeats = a->repeats;
    int32_t *prompt = malloc((size_t)n_prompt * sizeof *prompt);
    double *tp = malloc((size_t)repeats * sizeof *tp), *td = malloc((size_t)repeats * sizeof *td);
    int rc = TSR_ENOMEM;
    if (!prompt || !tp || !td) goto out;
    fill_ids(prompt, n_prompt, tsr_model_config(m)->n_vocab, 12345);
    double w0, w1;
    if ((rc = run_once(m, b, a->kv_type, prompt, (int)n_prompt, (int)a->n_gen, &w0, &w1))) goto out;
    for (long r = 0; r < repeats; r++)
        if ((rc = run_once(m, b, a->kv_type, prompt, (int)n_prompt, (int)a->n_gen, &tp[r], &td[r])))
            goto out;
    printf("{\"engine\":\"tessera\",\"model\":\"%s\",\"device\":\"%s\",\"threads\":%d,"
           "\"prompt_tokens\":%ld,\"gen_tokens\":%ld,\"repeats\":%ld,\"prompt_tps\":%.2f,"
           "\"decode_tps\":%.2f}\n",
           a->mdl.model, a->dev.device, a->dev.threads, n_prompt, a->n_gen, repeats,
           n_prompt / median(tp, repeats), 1.0 / median(td, repeats));
out:
    free(prompt);
    free(tp);
    free(td);
    return rc;
}

/* ---- steps over many sequences ---- */

/* n_seqs sequences of up to max_blocks blocks each; sequence s owns blocks s * max_blocks ... */
struct seqs {
    int n_seqs, max_blocks;
    int32_t *block_tables;
    int32_t *ids, *pos, *seq, *out_rows; /* (max_tokens) step arrays */
};

static int seqs_init(struct seqs *s, int n_seqs, int max_blocks, int max_tokens)
{
    memset(s, 0, sizeof *s);
    s->n_seqs = n_seqs;
    s->max_blocks = max_blocks;
    s->block_tables = malloc((size_t)n_seqs * max_blocks * sizeof(int32_t));
    s->ids = malloc((size_t)max_tokens * sizeof(int32_t));
    s->pos = malloc((size_t)max_tokens * sizeof(int32_t));
    s->seq = malloc((size_t)max_tokens * sizeof(int32_t));
    s->out_rows = malloc((size_t)max_tokens * sizeof(int32_t));
    if (!s->block_tables || !s->ids || !s->pos || !s->seq || !s->out_rows)
        return tsr_errorf(TSR_ENOMEM, "out of memory for step arrays");
    for (size_t i = 0; i < (size_t)n_seqs * max_blocks; i++) s->block_tables[i] = (int32_t)i;
    return 0;
}

static void seqs_free(struct seqs *s)
{
    free(s->block_tables);
    free(s->ids);
    free(s->pos);
    free(s->seq);
    free(s->out_rows);
}

static struct tsr_step seqs_step(const struct seqs *s, int n_tokens, int n_out)
{
    return (struct tsr_step){.n_tokens = n_tokens,
                             .ids = s->ids,
                             .pos = s->pos,
                             .seq = s->seq,
                             .n_seqs = s->n_seqs,
                             .max_blocks = s->max_blocks,
                             .block_tables = s->block_tables,
                             .n_out = n_out,
                             .out_rows = s->out_rows};
}

/* ---- --batches: decode throughput and prefill rate ---- */

struct ceilings {
    double copy_bps;   /* device-to-device copy, bytes read + written per second; 0: unknown */
    double gemm_flops; /* bf16 GEMM FLOP/s; 0: unknown */
};

static int measure_ceilings(tsr_backend_t *b, struct ceilings *c)
{
    memset(c, 0, sizeof *c);
#if TSR_HAVE_CUDA
    if (!strcmp(tsr_backend_name(b), "cuda")) {
        int rc = tsr_cuda_measure_copy(b, (size_t)2 << 30, &c->copy_bps);
        if (!rc) rc = tsr_cuda_measure_gemm(b, 8192, 8192, 8192, &c->gemm_flops);
        return rc;
    }
#endif
    (void)b;
    return 0;
}

/* Multiply-adds of the matmuls per token (weights other than the embedding table). */
static double matmul_params(const struct tsr_model_config *c)
{
    double q = (double)c->n_head * c->head_dim, kv = (double)c->n_kv_head * c->head_dim;
    double attn = c->dim * (q + 2 * kv) + q * c->dim, dense = 3.0 * c->dim * c->ffn_dim;
    if (c->n_expert == 0) return (attn + dense) * c->n_layer + (double)c->n_vocab * c->dim;
    /* a token goes through n_expert_used routed experts (and the shared one) past the dense
     * layers, and the router */
    double moe = 3.0 * c->dim * ((double)c->n_expert_used * c->moe_ffn_dim + c->shared_ffn_dim) +
                 (double)c->dim * c->n_expert;
    return attn * c->n_layer + dense * c->n_dense_layer + moe * (c->n_layer - c->n_dense_layer) +
           (double)c->n_vocab * c->dim;
}

/* Mixture of experts: the experts a decode step reads are the distinct ones its B tokens chose
 * (a step's batch shares them), so the roofline counts those, from the runner's route trace. */
struct expert_reads {
    int32_t *trace;                    /* tsr_runner_trace_routes' (NULL: a dense model) */
    char *seen;                        /* e1 - e0 flags: chosen in the layer being counted */
    int layers, e0, e1, k, max_tokens; /* expert layers; this rank's experts [e0, e1) */
    double per_expert;                 /* bytes of one expert of one layer */
};

static int expert_reads_start(struct expert_reads *x, tsr_runner_t *r,
                              const struct tsr_model_config *c, const struct tsr_runner_shard *sh,
                              int max_tokens)
{
    *x = (struct expert_reads){.k = c->n_expert_used, .max_tokens = max_tokens, .e1 = c->n_expert};
    if (c->n_expert == 0) return 0;
    if (sh) x->e0 = sh->plan->ranks[0].expert_begin, x->e1 = sh->plan->ranks[0].expert_end;
    x->trace = malloc(sizeof *x->trace * (size_t)c->n_layer * max_tokens * x->k);
    x->seen = malloc((size_t)(x->e1 - x->e0));
    if (!x->trace || !x->seen) return tsr_errorf(TSR_ENOMEM, "out of memory");
    x->layers = tsr_runner_trace_routes(r, x->trace);
    x->per_expert =
        x->layers ? (double)tsr_runner_expert_bytes(r) / x->layers / (x->e1 - x->e0) : 0;
    return 0;
}

/* Bytes of this rank's experts the last step of B tokens read. */
static double expert_reads_step(const struct expert_reads *x, int B)
{
    double n = 0;
    for (int l = 0; l < x->layers; l++) {
        memset(x->seen, 0, (size_t)(x->e1 - x->e0));
        const int32_t *ids = x->trace + (size_t)l * x->max_tokens * x->k;
        for (int i = 0; i < B * x->k; i++)
            if (ids[i] >= x->e0 && ids[i] < x->e1 && !x->seen[ids[i] - x->e0])
                x->seen[ids[i] - x->e0] = 1, n++;
    }
    return n * x->per_expert;
}

/* The runner a --batches run needs, the same on every rank of a group: max_b sequences of sb
 * blocks each, then the prefill prompt's pf_blocks. */
struct batch_layout {
    int max_b, ctx, steps, warm, pf;
    int sb, pf_blocks, mb; /* blocks per sequence, of the prefill, per block-table row */
    struct tsr_runner_opts ro;
};

static struct batch_layout batch_layout(const struct bench_args *a)
{
    struct batch_layout l = {.ctx = (int)a->context, .steps = (int)a->steps, .warm = 3};
    for (int i = 0; i < a->n_batches; i++)
        if (a->batches[i] > l.max_b) l.max_b = a->batches[i];
    l.pf = (int)a->prefill_tokens;
    l.sb = (l.ctx + l.warm + l.steps + BLOCK - 1) / BLOCK;
    l.pf_blocks = (l.pf + BLOCK - 1) / BLOCK;
    l.mb = l.sb > l.pf_blocks ? l.sb : l.pf_blocks;
    int max_tokens = l.pf > 2048 ? l.pf : 2048;
    if (max_tokens < l.max_b) max_tokens = l.max_b;
    l.ro = (struct tsr_runner_opts){.n_blocks = l.max_b * l.sb + l.pf_blocks,
                                    .block_size = BLOCK,
                                    .max_tokens = max_tokens,
                                    .kv_type = a->kv_type};
    return l;
}

/* With sh, the leader of a TP group: every number is this rank's (its weight and KV bytes, its
 * GPU's copy bandwidth), which is the roofline of a step when the ranks' shares are equal. */
static int bench_batches(const struct bench_args *a, tsr_model_t *m, tsr_backend_t *b,
                         const struct tsr_runner_shard *sh)
{
    const struct tsr_model_config *c = tsr_model_config(m);
    struct batch_layout l = batch_layout(a);
    int max_b = l.max_b, ctx = l.ctx, steps = l.steps, warm = l.warm, pf = l.pf;
    int sb = l.sb, pf_blocks = l.pf_blocks, mb = l.mb, max_tokens = l.ro.max_tokens;
    struct tsr_runner_opts ro = l.ro;
    struct ceilings lim;
    struct seqs s;
    struct expert_reads xr = {0};
    tsr_runner_t *r = NULL;
    int rc = measure_ceilings(b, &lim);
    if (rc) return rc;
    double t0 = tsr_now();
    if ((rc = tsr_runner_new(m, b, &ro, sh, &r))) return rc;
    fprintf(stderr,
            "tessera bench: weights %.2f GB, KV cache %.2f GB (%s), scratch %.2f GB%s (%.1f s)\n",
            tsr_runner_weight_bytes(r) / 1e9, tsr_runner_kv_bytes(r) / 1e9,
            tsr_dtype_name(ro.kv_type), tsr_runner_scratch_bytes(r) / 1e9, sh ? " on rank 0" : "",
            tsr_now() - t0);
    if ((rc = seqs_init(&s, max_b + 1, mb, max_tokens))) goto out;
    for (int q = 0; q <= max_b; q++)
        for (int j = 0; j < mb; j++)
            s.block_tables[(size_t)q * mb + j] =
                q < max_b ? (j < sb ? q * sb + j : 0) : (j < pf_blocks ? max_b * sb + j : 0);
    /* Fill every sequence's first ctx positions, max_tokens a step (several sequences in one, or
     * one in several chunks when ctx is longer). */
    t0 = tsr_now();
    int32_t *prompt = malloc((size_t)ctx * sizeof *prompt);
    if (!prompt) {
        rc = tsr_errorf(TSR_ENOMEM, "out of memory");
        goto out;
    }
    int n = 0;
    for (int q = 0; q < max_b && !rc; q++) {
        fill_ids(prompt, ctx, c->n_vocab, 777u + (uint32_t)q);
        for (int p = 0; p < ctx && !rc; p++) {
            s.ids[n] = prompt[p];
            s.pos[n] = p;
            s.seq[n] = q;
            if (++n == max_tokens || (q == max_b - 1 && p == ctx - 1)) {
                struct tsr_step st = seqs_step(&s, n, 0);
                rc = tsr_runner_forward_argmax(r, &st, NULL);
                n = 0;
            }
        }
    }
    free(prompt);
    if (rc) goto out;
    fprintf(stderr, "tessera bench: filled %d sequences of %d tokens in %.1f s\n", max_b, ctx,
            tsr_now() - t0);
    double kv_row = (double)tsr_runner_kv_bytes_per_pos(r);
    double w_read = (double)tsr_runner_step_weight_bytes(r);
    if ((rc = expert_reads_start(&xr, r, c, sh, max_tokens))) goto out;
    if (xr.trace) /* the experts' bytes are counted step by step: the rest */
        w_read -= (double)tsr_runner_expert_bytes(r) * c->n_expert_used / c->n_expert;
    if (sh)
        printf("tp=%d: GB/step and roofline are one rank's (its weights and K/V over its GPU's "
               "copy bandwidth)\n\n",
               sh->plan->tp);
    printf("| batch | context | step ms | tok/s | GB/step | roofline ms | fraction |\n");
    printf("| ----: | ------: | ------: | ----: | ------: | ----------: | -------: |\n");
    for (int i = 0; i < a->n_batches; i++) {
        int B = a->batches[i];
        double t_start = 0, kv_bytes = 0, x_bytes = 0;
        for (int q = 0; q < B; q++) s.ids[q] = (int32_t)((q * 7919) % c->n_vocab);
        for (int k = 0; k < warm + steps && !rc; k++) {
            if (k == warm) t_start = tsr_now();
            for (int q = 0; q < B; q++) {
                s.pos[q] = ctx + k;
                s.seq[q] = q;
                s.out_rows[q] = q;
            }
            if (k >= warm) kv_bytes += (double)B * (ctx + k + 1) * kv_row;
            struct tsr_step st = seqs_step(&s, B, B);
            rc = tsr_runner_forward_argmax(r, &st, s.ids); /* the next step's inputs */
            if (!rc && k >= warm && xr.trace) x_bytes += expert_reads_step(&xr, B);
        }
        if (rc) goto out;
        double step = (tsr_now() - t_start) / steps,
               bytes = w_read + kv_bytes / steps + x_bytes / steps;
        /* Reading B bytes at the copy's rate (bytes read + written per second) takes B / rate. */
        double ideal = lim.copy_bps > 0 ? bytes / lim.copy_bps : 0;
        printf("| %5d | %7d | %7.3f | %5.0f | %7.2f | %11.3f | %8.2f |\n", B, ctx, step * 1e3,
               B / step, bytes / 1e9, ideal * 1e3, ideal > 0 ? ideal / step : 0.0);
        fflush(stdout);
    }
    /* Prefill: one prompt of pf tokens in one step, logits for its last token. */
    int32_t *pp = malloc((size_t)pf * sizeof *pp);
    double *tp = malloc((size_t)a->repeats * sizeof *tp);
    if (!pp || !tp) {
        free(pp), free(tp);
        rc = tsr_errorf(TSR_ENOMEM, "out of memory");
        goto out;
    }
    fill_ids(pp, pf, c->n_vocab, 4242);
    for (long k = -1; k < a->repeats && !rc; k++) { /* k = -1: warm-up */
        for (int p = 0; p < pf; p++) {
            s.ids[p] = pp[p];
            s.pos[p] = p;
            s.seq[p] = max_b;
        }
        s.out_rows[0] = pf - 1;
        int32_t next;
        struct tsr_step st = seqs_step(&s, pf, 1);
        double t = tsr_now();
        rc = tsr_runner_forward_argmax(r, &st, &next);
        if (k >= 0) tp[k] = tsr_now() - t;
    }
    free(pp);
    if (!rc) {
        double t = median(tp, a->repeats);
        double flops = 2.0 * matmul_params(c) * pf +
                       2.0 * 2.0 * c->n_layer * c->n_head * c->head_dim * (double)pf * (pf + 1) / 2;
        printf("\nprefill %d tokens: %.1f ms, %.0f tok/s, %.1f TFLOP/s", pf, t * 1e3, pf / t,
               flops / t / 1e12);
        if (lim.gemm_flops > 0)
            printf(", %.2f of the bf16 GEMM rate (%.0f TFLOP/s)", flops / t / lim.gemm_flops,
                   lim.gemm_flops / 1e12);
        printf("\n");
        if (lim.copy_bps > 0)
            printf("device-to-device copy: %.2f TB/s (bytes read + written)\n",
                   lim.copy_bps / 1e12);
    }
    free(tp);
out:
    if (r && xr.trace) tsr_runner_trace_routes(r, NULL);
    free(xr.trace);
    free(xr.seen);
    seqs_free(&s);
    tsr_runner_free(r);
    return rc;
}

/* ---- --agree: teacher-forced argmax ---- */

/* The model's own text, for models with a tokenizer: real text makes peaked distributions. */
static const char agree_text[] =
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined a screw press with movable metal type, an oil-based ink and a mould for casting "
    "letters quickly and accurately. Before him, books were copied by hand or printed from carved "
    "wooden blocks, which made them slow to produce and expensive to buy. Within fifty years, "
    "presses were working in more than two hundred cities across Europe, and millions of volumes "
    "had been printed. Scholars could compare identical copies of a text, scientists could share "
    "their measurements, and ordinary people began to read pamphlets, calendars and news sheets. "
    "Historians still argue about how much the press changed religion and politics, but few "
    "doubt that it changed the speed at which ideas could travel from one mind to another.";

static int agree_ids(tsr_model_t *m, long n, int32_t *ids)
{
    const tsr_tokenizer_t *tok = tsr_model_tokenizer(m);
    if (!tok) {
        fill_ids(ids, n, tsr_model_config(m)->n_vocab, 2024);
        return 0;
    }
    int32_t *t = NULL;
    size_t nt = 0;
    int rc = tsr_tokenizer_encode(tok, agree_text, strlen(agree_text), tsr_tokenizer_wants_bos(tok),
                                  0, &t, &nt);
    if (rc) return rc;
    for (long i = 0; i < n; i++) ids[i] = t[(size_t)i % nt];
    free(t);
    return 0;
}

/* argmax[i] = the greedy prediction after tokens 0..i of ids: tokens 0..n/2 in one step, then
 * one decode step per token. */
static int teacher_forced(tsr_runner_t *r, const int32_t *ids, int n, int32_t *argmax)
{
    struct seqs s;
    int half = n / 2 > 0 ? n / 2 : 1, rc = seqs_init(&s, 1, (n + BLOCK - 1) / BLOCK, n);
    for (int p = 0; p < half && !rc; p++) {
        s.ids[p] = ids[p];
        s.pos[p] = p;
        s.seq[p] = 0;
        s.out_rows[p] = p;
    }
    if (!rc) {
        struct tsr_step st = seqs_step(&s, half, half);
        rc = tsr_runner_forward_argmax(r, &st, argmax);
    }
    for (int p = half; p < n && !rc; p++) {
        s.ids[0] = ids[p];
        s.pos[0] = p;
        s.out_rows[0] = 0;
        struct tsr_step st = seqs_step(&s, 1, 1);
        rc = tsr_runner_forward_argmax(r, &st, argmax + p);
    }
    seqs_free(&s);
    return rc;
}

static struct tsr_runner_opts agree_opts(const struct bench_args *a, enum tsr_dtype kv_type)
{
    return (struct tsr_runner_opts){.n_blocks = (int)(a->n_prompt + BLOCK - 1) / BLOCK,
                                    .block_size = BLOCK,
                                    .max_tokens = (int)a->n_prompt,
                                    .kv_type = kv_type};
}

/* kv_type: the KV cache's on b (the --ref-device run takes its own device's auto). */
static int run_agree(const struct bench_args *a, tsr_model_t *m, tsr_backend_t *b,
                     enum tsr_dtype kv_type, const struct tsr_runner_shard *sh, const int32_t *ids,
                     int32_t *argmax)
{
    struct tsr_runner_opts ro = agree_opts(a, kv_type);
    tsr_runner_t *r;
    double t0 = tsr_now();
    int rc = tsr_runner_new(m, b, &ro, sh, &r);
    if (rc) return rc;
    double t1 = tsr_now();
    rc = teacher_forced(r, ids, (int)a->n_prompt, argmax);
    fprintf(stderr, "tessera bench: %s: load %.1f s, %ld teacher-forced positions %.1f s\n",
            tsr_backend_name(b), t1 - t0, a->n_prompt, tsr_now() - t1);
    tsr_runner_free(r);
    return rc;
}

/* *ids (malloc'ed, caller frees), *n: the whitespace-separated ids in path, each checked against
 * the vocabulary (--perplexity's input, --ref-ids' saved argmaxes). */
static int read_token_file(const char *path, int vocab, int32_t **ids, long *n)
{
    FILE *f = fopen(path, "r");
    if (!f) return tsr_errorf(TSR_EIO, "cannot open %s", path);
    long cap = 4096, len = 0;
    int32_t *v = malloc((size_t)cap * sizeof *v);
    char word[32];
    int rc = v ? 0 : tsr_errorf(TSR_ENOMEM, "out of memory for token ids");
    while (!rc && fscanf(f, "%31s", word) == 1) {
        char *end;
        long id = strtol(word, &end, 10);
        if (*end || end == word || strlen(word) >= sizeof word - 1) {
            rc = tsr_errorf(TSR_EFORMAT, "%s: token %ld is '%s', not an id", path, len + 1, word);
        } else if (id < 0 || id >= vocab) {
            rc = tsr_errorf(TSR_EINVAL, "%s: token %ld is %ld, outside the vocabulary (0..%d)",
                            path, len + 1, id, vocab - 1);
        } else if (len == cap) {
            int32_t *w = realloc(v, (size_t)(cap *= 2) * sizeof *v);
            if (!w)
                rc = tsr_errorf(TSR_ENOMEM, "out of memory for token ids");
            else
                v = w;
        }
        if (!rc) v[len++] = (int32_t)id;
    }
    if (!rc && ferror(f)) rc = tsr_errorf(TSR_EIO, "cannot read %s", path);
    fclose(f);
    if (rc) {
        free(v);
        return rc;
    }
    *ids = v;
    *n = len;
    return 0;
}

/* --text: the file at path through the model's tokenizer, no BOS (*ids malloc'ed). */
static int read_text_ids(tsr_model_t *m, const char *path, int32_t **ids, long *n)
{
    const tsr_tokenizer_t *tok = tsr_model_tokenizer(m);
    if (!tok) return tsr_errorf(TSR_EINVAL, "--text: %s has no tokenizer", tsr_model_name(m));
    FILE *f = fopen(path, "rb");
    if (!f) return tsr_errorf(TSR_EIO, "cannot open %s", path);
    size_t cap = 1 << 16, len = 0;
    char *text = malloc(cap);
    int rc = text ? 0 : tsr_errorf(TSR_ENOMEM, "out of memory reading %s", path);
    while (!rc) {
        len += fread(text + len, 1, cap - len, f);
        if (len < cap) break;
        char *t = cap < (64u << 20) ? realloc(text, cap *= 2) : NULL;
        if (!t)
            rc = tsr_errorf(TSR_EINVAL, "%s: over 64 MiB of text", path);
        else
            text = t;
    }
    if (!rc && ferror(f)) rc = tsr_errorf(TSR_EIO, "cannot read %s", path);
    fclose(f);
    size_t count = 0;
    if (!rc) rc = tsr_tokenizer_encode(tok, text, len, 0, 0, ids, &count);
    free(text);
    *n = (long)count;
    return rc;
}

/* The first n ids of the file at path (a --save-ids of an earlier run); exactly n with `exact`
 * (--perplexity's: a file from another --ctx or text would compare positions that differ). */
static int read_ids(const char *path, int vocab, int32_t *ids, long n, int exact)
{
    int32_t *v;
    long len;
    int rc = read_token_file(path, vocab, &v, &len);
    if (rc) return rc;
    int ok = exact ? len == n : len >= n;
    if (ok) memcpy(ids, v, (size_t)n * sizeof *ids);
    free(v);
    return ok ? 0
              : tsr_errorf(TSR_EFORMAT,
                           "%s holds %ld ids, %s%ld wanted (a run of another text "
                           "or --ctx?)",
                           path, len, exact ? "" : "at least ", n);
}

/* n ids to path, one a line (--save-ids; read_ids reads them). */
static int write_ids(const char *path, const int32_t *ids, long n)
{
    FILE *f = fopen(path, "w");
    if (!f) return tsr_errorf(TSR_EIO, "cannot write %s", path);
    for (long i = 0; i < n; i++) fprintf(f, "%d\n", ids[i]);
    return fclose(f) ? tsr_errorf(TSR_EIO, "cannot write %s", path) : 0;
}

static int bench_agree(const struct bench_args *a, tsr_model_t *m, tsr_backend_t *b,
                       const struct tsr_runner_shard *sh)
{
    long n = a->n_prompt;
    int32_t *ids = malloc((size_t)n * sizeof *ids), *got = malloc((size_t)n * sizeof *got);
    int32_t *ref = malloc((size_t)n * sizeof *ref);
    tsr_backend_t *rb = NULL;
    int rc = TSR_ENOMEM;
    if (!ids || !got || !ref) goto out;
    if ((rc = agree_ids(m, n, ids)) || (rc = run_agree(a, m, b, a->kv_type, sh, ids, got)))
        goto out;
    if (a->save_ids && (rc = write_ids(a->save_ids, got, n))) goto out;
    const char *against = a->ref_ids ? a->ref_ids : a->ref_device;
    if (a->ref_ids) {
        if ((rc = read_ids(a->ref_ids, tsr_model_config(m)->n_vocab, ref, n, 0))) goto out;
    } else if (a->ref_device) {
        if ((rc = tsr_group_backend(NULL, a->ref_device, a->dev.threads, &rb)) ||
            (rc = run_agree(a, m, rb, tsr_cli_kv_type(&a->mdl, a->ref_device), NULL, ids, ref)))
            goto out;
    } else {
        printf("{\"model\":\"%s\",\"device\":\"%s\",\"tp\":%d,\"positions\":%ld}\n", a->mdl.model,
               a->dev.device, a->mdl.tp, n);
        goto out;
    }
    long same = 0, same_prompt = 0, half = n / 2 > 0 ? n / 2 : 1;
    for (long i = 0; i < n; i++) {
        same += got[i] == ref[i];
        same_prompt += i < half && got[i] == ref[i];
    }
    double agree = (double)same / (double)n;
    printf("{\"model\":\"%s\",\"device\":\"%s\",\"tp\":%d,\"against\":\"%s\",\"positions\":%ld,"
           "\"agree\":%.4f,\"agree_prompt_step\":%.4f,\"agree_decode_steps\":%.4f}\n",
           a->mdl.model, a->dev.device, a->mdl.tp, against, n, agree,
           (double)same_prompt / (double)half,
           n > half ? (double)(same - same_prompt) / (double)(n - half) : 1.0);
    if (agree < a->min_agree) {
        fprintf(stderr, "tessera bench: agreement %.4f is under %.4f\n", agree, a->min_agree);
        rc = 1;
    }
out:
    tsr_backend_free(rb);
    free(ids);
    free(got);
    free(ref);
    return rc;
}

/* ---- --perplexity: llama.cpp's perplexity over chunks of a token file ---- */

static struct tsr_runner_opts ppl_opts(const struct bench_args *a)
{
    return (struct tsr_runner_opts){.n_blocks = (int)(a->ctx + BLOCK - 1) / BLOCK,
                                    .block_size = BLOCK,
                                    .max_tokens =
                                        (int)(a->ctx < a->step_tokens ? a->ctx : a->step_tokens),
                                    .kv_type = a->kv_type};
}

/* -log p(ids[t + 1] | ids[0..t]) from logit row x, in float64: max, then log of the sum of
 * exponentials over the whole vocabulary. */
static double token_nll(const float *x, int vocab, int32_t next)
{
    double m = x[0], s = 0;
    for (int i = 1; i < vocab; i++) m = x[i] > m ? x[i] : m;
    for (int i = 0; i < vocab; i++) s += exp((double)x[i] - m);
    return m + log(s) - (double)x[next];
}

/* The first index of the largest logit (ties to the lower id, as argmax everywhere here). */
static int32_t row_argmax(const float *x, int vocab)
{
    int32_t best = 0;
    for (int i = 1; i < vocab; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Adds to *nll the NLLs of one chunk of c tokens (positions from 0, so the cache's earlier
 * contents are never read: a step attends to positions it or this chunk's earlier steps wrote),
 * in steps of up to `step` tokens with logit rows for the scored positions only, and writes each
 * scored row's argmax to *am, advancing it. */
static int ppl_chunk(tsr_runner_t *r, struct seqs *s, const int32_t *ids, int c, int step,
                     int vocab, float *logits, double *nll, int32_t **am)
{
    const int first = c / 2;
    for (int p0 = 0; p0 < c; p0 += step) {
        int nt = c - p0 < step ? c - p0 : step, n_out = 0;
        for (int i = 0; i < nt; i++) {
            int t = p0 + i;
            s->ids[i] = ids[t];
            s->pos[i] = t;
            s->seq[i] = 0;
            if (t >= first && t < c - 1) s->out_rows[n_out++] = i;
        }
        struct tsr_step st = seqs_step(s, nt, n_out);
        int rc = tsr_runner_forward(r, &st, logits);
        if (rc) return rc;
        for (int k = 0; k < n_out; k++) {
            int t = p0 + s->out_rows[k];
            *nll += token_nll(logits + (size_t)k * vocab, vocab, ids[t + 1]);
            *(*am)++ = row_argmax(logits + (size_t)k * vocab, vocab);
        }
    }
    return 0;
}

static int bench_perplexity(const struct bench_args *a, tsr_model_t *m, tsr_backend_t *b,
                            const struct tsr_runner_shard *sh)
{
    const int vocab = tsr_model_config(m)->n_vocab, c = (int)a->ctx;
    int32_t *ids = NULL;
    long n = 0;
    int rc = a->text ? read_text_ids(m, a->perplexity, &ids, &n)
                     : read_token_file(a->perplexity, vocab, &ids, &n);
    if (rc) return rc;
    if (n < c || c > tsr_model_config(m)->n_ctx_train) {
        free(ids);
        if (c > tsr_model_config(m)->n_ctx_train)
            return tsr_errorf(TSR_EINVAL, "--ctx %d exceeds the model's context length %d", c,
                              tsr_model_config(m)->n_ctx_train);
        return tsr_errorf(TSR_EINVAL, "--perplexity: %s holds %ld tokens, fewer than --ctx %d",
                          a->perplexity, n, c);
    }
    struct tsr_runner_opts ro = ppl_opts(a);
    struct seqs s = {0}; /* freed on every path, seqs_init or not */
    tsr_runner_t *r = NULL;
    /* A step's logit rows are held at once: past 4 GiB, fewer --step-tokens is the answer. */
    double logit_bytes = (double)ro.max_tokens * vocab * sizeof(float);
    float *logits = NULL;
    if (logit_bytes > 4.0 * 1024 * 1024 * 1024)
        rc = tsr_errorf(TSR_EINVAL,
                        "--perplexity: %d tokens a step x %d logits need %.1f GiB (over 4): "
                        "give fewer --step-tokens",
                        ro.max_tokens, vocab, logit_bytes / (1024.0 * 1024 * 1024));
    else if (!(logits = malloc((size_t)logit_bytes)))
        rc = tsr_errorf(TSR_ENOMEM, "out of memory for %d logit rows", ro.max_tokens);
    long chunks = n / c, scored = chunks * (c - c / 2 - 1);
    int32_t *am = NULL, *ref = NULL, *am_end;
    if (!rc && !(am = malloc((size_t)scored * sizeof *am)))
        rc = tsr_errorf(TSR_ENOMEM, "out of memory for %ld argmaxes", scored);
    if (!rc && a->ref_ids && !(ref = malloc((size_t)scored * sizeof *ref)))
        rc = tsr_errorf(TSR_ENOMEM, "out of memory for %ld argmaxes", scored);
    if (!rc && ref) rc = read_ids(a->ref_ids, vocab, ref, scored, 1);
    if (!rc) rc = seqs_init(&s, 1, ro.n_blocks, ro.max_tokens);
    double t0 = tsr_now(), t1 = t0, nll = 0;
    long same = 0;
    if (!rc && !(rc = tsr_runner_new(m, b, &ro, sh, &r))) {
        t1 = tsr_now();
        am_end = am;
        for (long k = 0; k < chunks && !rc; k++)
            rc = ppl_chunk(r, &s, ids + k * c, c, ro.max_tokens, vocab, logits, &nll, &am_end);
        fprintf(stderr, "tessera bench: %s: load %.1f s, %ld chunks of %d tokens %.1f s\n",
                tsr_backend_name(b), t1 - t0, chunks, c, tsr_now() - t1);
        if (!rc && a->save_ids) rc = write_ids(a->save_ids, am, scored);
        for (long i = 0; !rc && ref && i < scored; i++) same += am[i] == ref[i];
        char agree[96] = "";
        if (ref)
            snprintf(agree, sizeof agree, ",\"agree\":%.4f,\"agree_positions\":%ld",
                     (double)same / (double)scored, scored);
        if (!rc)
            printf("{\"model\":\"%s\",\"quantize\":\"%s\",\"kv_cache_dtype\":\"%s\","
                   "\"device\":\"%s\",\"tp\":%d,\"tokens_scored\":%ld,\"nll\":%.9g,"
                   "\"ppl\":%.9g,\"chunks\":%ld,\"ctx\":%d%s}\n",
                   a->mdl.model, a->mdl.quantize ? a->mdl.quantize : "", tsr_dtype_name(a->kv_type),
                   a->dev.device, a->mdl.tp, scored, nll / (double)scored,
                   exp(nll / (double)scored), chunks, c, agree);
        if (!rc && ref && a->min_agree_given && (double)same / (double)scored < a->min_agree) {
            fprintf(stderr, "tessera bench: agreement %.4f is under %.4f\n",
                    (double)same / (double)scored, a->min_agree);
            rc = 1;
        }
    }
    tsr_runner_free(r);
    seqs_free(&s);
    free(logits);
    free(ids);
    free(am);
    free(ref);
    return rc;
}

/* ---- --pipeline: a group's decode throughput, one step at a time and pipelined ---- */

/* The engine options of a --pipeline run with micro-batches mb; the followers build their runners
 * from the same (tsr_engine_runner_opts). */
static struct tsr_engine_opts pipeline_opts(const struct bench_args *a,
                                            const struct tsr_runner_shard *sh, int mb)
{
    int per = (int)((a->context + a->steps + 8 + BLOCK - 1) / BLOCK);
    return (struct tsr_engine_opts){.n_blocks = (int)a->pipeline * per + 1,
                                    .block_size = BLOCK,
                                    .max_step_tokens = 2048,
                                    .max_seqs = (int)a->pipeline,
                                    .shard = sh,
                                    .no_prefix_cache = 1,
                                    .micro_batches = mb,
                                    .kv_type = a->kv_type};
}

/* One run: B sequences of --context prompt tokens, then --steps tokens each; decode tokens/s
 * from the moment every sequence has its first token. */
static int pipeline_run(const struct bench_args *a, tsr_model_t *m, tsr_backend_t *b,
                        const struct tsr_runner_shard *sh, int mb, double *tps, double *steps_per_s)
{
    struct tsr_engine_opts eo = pipeline_opts(a, sh, mb);
    int B = (int)a->pipeline, n_vocab = tsr_model_config(m)->n_vocab, rc;
    tsr_engine_t *e = NULL;
    int32_t *prompt = malloc((size_t)a->context * sizeof *prompt);
    struct tsr_token_event *ev = malloc((size_t)B * sizeof *ev);
    int *got = calloc((size_t)B, sizeof *got);
    if (!prompt || !ev || !got) {
        rc = tsr_errorf(TSR_ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = tsr_engine_new(m, b, &eo, &e))) goto out;
    for (int q = 0; q < B; q++) {
        fill_ids(prompt, a->context, n_vocab, 991u + (uint32_t)q);
        struct tsr_request req = {.prompt = prompt,
                                  .n_prompt = (int)a->context,
                                  .sampling = tsr_sampling_default(),
                                  .max_tokens = (int)a->steps + 1,
                                  .ignore_eos = 1};
        int64_t id;
        if ((rc = tsr_engine_add(e, &req, &id))) goto out;
    }
    int started = 0, left = B * ((int)a->steps + 1);
    double t0 = 0;
    uint64_t steps0 = 0;
    while (left > 0) {
        int n = 0;
        if ((rc = tsr_engine_step(e, ev, B, &n))) goto out;
        for (int k = 0; k < n; k++) {
            if (ev[k].token < 0) continue;
            left--;
            if (!got[ev[k].id]++ && ++started == B) { /* every prompt done: decode from here */
                struct tsr_engine_stats st;
                tsr_engine_get_stats(e, &st);
                t0 = tsr_now();
                steps0 = st.steps;
            }
        }
    }
    double dt = tsr_now() - t0;
    struct tsr_engine_stats st;
    tsr_engine_get_stats(e, &st);
    *tps = (double)B * a->steps / dt;
    *steps_per_s = (double)(st.steps - steps0) / dt;
out:
    tsr_engine_free(e); /* a group's leader stops its followers here */
    free(prompt);
    free(ev);
    free(got);
    return rc;
}

static int bench_pipeline(const struct bench_args *a, tsr_model_t *m, tsr_backend_t *b,
                          const struct tsr_runner_shard *sh)
{
    enum { MAX_REP = 1000 };
    int pp = a->mdl.pp, modes[2] = {1, pp}, reps = (int)a->repeats;
    static double runs[2][2][MAX_REP]; /* mode, (tok/s, steps/s), repeat */
    double tps[2], sps[2];
    for (int r = 0; r < reps; r++) /* alternating, so that both see the same machine */
        for (int i = 0; i < 2; i++) {
            int rc = pipeline_run(a, m, b, sh, modes[i], &runs[i][0][r], &runs[i][1][r]);
            if (rc) return rc;
        }
    for (int i = 0; i < 2; i++) {
        tps[i] = median(runs[i][0], reps);
        sps[i] = median(runs[i][1], reps);
    }
    printf("%s tp=%d pp=%d, %d threads a rank%s: %ld sequences, %ld prompt + %ld decode "
           "tokens each; medians of %d runs each, alternating\n\n",
           a->mdl.model, a->mdl.tp, pp, a->dev.threads, a->pin ? ", pinned" : "", a->pipeline,
           a->context, a->steps, reps);
    printf("| steps in flight | decode tok/s | steps/s |\n| --: | --: | --: |\n");
    for (int i = 0; i < 2; i++) printf("| %d | %.1f | %.1f |\n", modes[i], tps[i], sps[i]);
    printf("\npipelined / one at a time: %.2fx\n", tps[1] / tps[0]);
    return 0;
}

/* Binds this process (and the threads it starts later) to core rank mod cores. */
static void pin_rank(int rank)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET((int)(rank % (cores > 0 ? cores : 1)), &set);
    if (sched_setaffinity(0, sizeof set, &set))
        fprintf(stderr, "tessera bench: rank %d: cannot pin to a core\n", rank);
}

/* ---- arguments ---- */

static void bench_usage(FILE *f)
{
    fprintf(f, "usage: tessera bench [--model M] [--device cpu|cuda[:N]] [--threads T] [--tp N]\n"
               "                     [--prompt-tokens N] [--gen-tokens N] [--repeats R]\n"
               "                     [--batches 1,8,64,256 [--context C] [--steps S]\n"
               "                      [--prefill-tokens P]]\n"
               "                     [--agree [--ref-device D | --ref-ids FILE] [--save-ids FILE]\n"
               "                      [--min-agree F]]\n"
               "                     [--perplexity IDS_FILE [--text] [--ctx C] [--step-tokens S]\n"
               "                      [--save-ids FILE] [--ref-ids FILE [--min-agree F]]]\n"
               "                     [--pipeline B --pp N [--context C] [--steps S] [--pin]]\n\n"
               "Default: one JSON line, median prompt and decode tokens/s of one sequence.\n"
               "--batches: decode tokens/s at each batch size (sequences of C tokens, S steps)\n"
               "  and the prefill rate of one P-token prompt; on a GPU, fractions of the memory\n"
               "  roofline and of the bf16 GEMM rate measured in the same run.\n"
               "--agree: teacher-forced argmax over --prompt-tokens positions against another\n"
               "  device or saved ids; exits 1 under --min-agree (default 0.99).\n"
               "--perplexity: llama.cpp's perplexity over the whitespace-separated token ids in\n"
               "  IDS_FILE: chunks of C tokens (default 512), the second half of each scored;\n"
               "  prints {tokens_scored, nll, ppl, chunks, ctx}. S tokens a forward step (512).\n"
               "  --text: the file is text for the model's tokenizer (no BOS), not ids.\n"
               "  --save-ids keeps the scored positions' argmaxes; --ref-ids compares them with\n"
               "  a saved run's (\"agree\"), exiting 1 under --min-agree when it is given.\n"
               "--pipeline: decode tokens/s of B sequences (C prompt tokens, S steps) through a\n"
               "  group's engine, one step at a time and pp steps in flight, medians of R runs\n"
               "  each; --pin binds rank r to core r mod cores.\n");
}

static int parse_batches(const char *s, struct bench_args *a)
{
    a->n_batches = 0;
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 4096 || a->n_batches == MAX_BATCHES) {
            fprintf(stderr, "tessera bench: --batches: bad list near '%s'\n", s);
            return 2;
        }
        a->batches[a->n_batches++] = (int)v;
        s = end;
        if (*s == ',') s++;
    }
    return a->n_batches ? 0 : 2;
}

static int parse_args(int argc, char **argv, struct bench_args *a)
{
    enum {
        O_BATCHES = 256,
        O_CONTEXT,
        O_STEPS,
        O_PREFILL,
        O_AGREE,
        O_REFDEV,
        O_REFIDS,
        O_SAVE,
        O_MIN,
        O_PIPELINE,
        O_PIN,
        O_PPL,
        O_CTX,
        O_STEP_TOKENS,
        O_TEXT
    };
    static const struct option opts[] = {TSR_CLI_MODEL_OPTIONS,
                                         TSR_CLI_DEVICE_OPTIONS,
                                         {"prompt-tokens", required_argument, 0, 'p'},
                                         {"gen-tokens", required_argument, 0, 'n'},
                                         {"repeats", required_argument, 0, 'r'},
                                         {"batches", required_argument, 0, O_BATCHES},
                                         {"context", required_argument, 0, O_CONTEXT},
                                         {"steps", required_argument, 0, O_STEPS},
                                         {"prefill-tokens", required_argument, 0, O_PREFILL},
                                         {"agree", no_argument, 0, O_AGREE},
                                         {"ref-device", required_argument, 0, O_REFDEV},
                                         {"ref-ids", required_argument, 0, O_REFIDS},
                                         {"save-ids", required_argument, 0, O_SAVE},
                                         {"min-agree", required_argument, 0, O_MIN},
                                         {"pipeline", required_argument, 0, O_PIPELINE},
                                         {"pin", no_argument, 0, O_PIN},
                                         {"perplexity", required_argument, 0, O_PPL},
                                         {"ctx", required_argument, 0, O_CTX},
                                         {"step-tokens", required_argument, 0, O_STEP_TOKENS},
                                         {"text", no_argument, 0, O_TEXT},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    tsr_cli_model_init(&a->mdl);
    tsr_cli_device_init(&a->dev);
    a->n_prompt = 128;
    a->n_gen = 64;
    a->repeats = 5;
    a->context = 512;
    a->steps = 32;
    a->prefill_tokens = 2048;
    a->min_agree = 0.99;
    a->ctx = 512;
    a->step_tokens = 512;
    int c, rc, ctx_set = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:p:n:r:j:h", opts, NULL)) != -1) {
        if ((rc = tsr_cli_model_opt(c, optarg, &a->mdl)) ||
            (rc = tsr_cli_device_opt(c, optarg, &a->dev))) {
            if (rc == 2) return 2;
            continue;
        }
        switch (c) {
        case 'p':
            rc = tsr_cli_int("--prompt-tokens", optarg, 2, 1 << 17, &a->n_prompt);
            break;
        case 'n':
            rc = tsr_cli_int("--gen-tokens", optarg, 2, 8192, &a->n_gen);
            break;
        case 'r':
            rc = tsr_cli_int("--repeats", optarg, 1, 1000, &a->repeats);
            break;
        case O_BATCHES:
            rc = parse_batches(optarg, a);
            break;
        case O_CONTEXT:
            rc = tsr_cli_int("--context", optarg, 1, 1 << 20, &a->context);
            break;
        case O_STEPS:
            rc = tsr_cli_int("--steps", optarg, 1, 1 << 16, &a->steps);
            break;
        case O_PREFILL:
            rc = tsr_cli_int("--prefill-tokens", optarg, 1, 1 << 16, &a->prefill_tokens);
            break;
        case O_AGREE:
            a->agree = 1;
            break;
        case O_REFDEV:
            a->ref_device = optarg;
            break;
        case O_REFIDS:
            a->ref_ids = optarg;
            break;
        case O_SAVE:
            a->save_ids = optarg;
            break;
        case O_MIN:
            rc = tsr_cli_float("--min-agree", optarg, 0, 1, &a->min_agree);
            a->min_agree_given = 1;
            break;
        case O_PIPELINE:
            rc = tsr_cli_int("--pipeline", optarg, 1, 1024, &a->pipeline);
            break;
        case O_PIN:
            a->pin = 1;
            break;
        case O_PPL:
            a->perplexity = optarg;
            break;
        case O_TEXT:
            a->text = 1;
            ctx_set = 1;
            break;
        case O_CTX:
            rc = tsr_cli_int("--ctx", optarg, 4, 1 << 20, &a->ctx);
            ctx_set = 1;
            break;
        case O_STEP_TOKENS:
            rc = tsr_cli_int("--step-tokens", optarg, 1, 1 << 16, &a->step_tokens);
            ctx_set = 1;
            break;
        case 'h':
            bench_usage(stdout);
            exit(0);
        default:
            bench_usage(stderr);
            return 2;
        }
        if (rc) return rc;
    }
    if (optind < argc) {
        fprintf(stderr, "tessera bench: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    a->kv_type = tsr_cli_kv_type(&a->mdl, a->dev.device);
    if (a->mdl.pp > 1 && !a->pipeline) {
        fprintf(stderr, "tessera bench: --pp is for --pipeline runs\n");
        return 2;
    }
    if (a->pipeline && (a->mdl.pp < 2 || a->agree || a->n_batches)) {
        fprintf(stderr, "tessera bench: --pipeline needs --pp 2 or more, and no --agree or "
                        "--batches\n");
        return 2;
    }
    if (a->mdl.tp > 1 && !a->agree && !a->n_batches && !a->pipeline && !a->perplexity) {
        fprintf(stderr, "tessera bench: --tp is for --agree, --batches, --pipeline and "
                        "--perplexity runs\n");
        return 2;
    }
    if (a->perplexity && (a->agree || a->n_batches || a->pipeline)) {
        fprintf(stderr, "tessera bench: give one of --perplexity, --agree, --batches and "
                        "--pipeline\n");
        return 2;
    }
    if (ctx_set && !a->perplexity) {
        fprintf(stderr, "tessera bench: --ctx, --step-tokens and --text are for --perplexity "
                        "runs (--batches takes --context)\n");
        return 2;
    }
    if (a->agree && a->n_batches) {
        fprintf(stderr, "tessera bench: give one of --agree and --batches\n");
        return 2;
    }
    if ((a->ref_ids || a->save_ids || a->min_agree_given) && !a->agree && !a->perplexity) {
        fprintf(stderr, "tessera bench: --ref-ids, --save-ids and --min-agree are for --agree and "
                        "--perplexity runs\n");
        return 2;
    }
    if (a->perplexity && a->min_agree_given && !a->ref_ids) {
        fprintf(stderr, "tessera bench: --min-agree with --perplexity needs --ref-ids\n");
        return 2;
    }
    if (a->ref_device && a->perplexity) {
        fprintf(stderr, "tessera bench: --perplexity compares with --ref-ids, not --ref-device\n");
        return 2;
    }
    if (a->ref_device && (a->ref_ids || a->mdl.tp > 1)) {
        fprintf(stderr, "tessera bench: --ref-device is for one rank without --ref-ids\n");
        return 2;
    }
    return 0;
}

int tsr_cmd_bench(int argc, char **argv)
{
    struct bench_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc;
    int ranks = tsr_cli_model_ranks(&a.mdl);
    if ((rc = tsr_cli_launch_ranks("bench", &a.mdl, argc, argv)) >= 0) return rc;
    struct tsr_group group = {0};
    tsr_model_t *m = NULL;
    tsr_backend_t *b = NULL;
    int exit_code = 1;
    if ((rc = tsr_cli_model_open(&a.mdl, &m))) goto fail;
    if (ranks > 1 && (rc = tsr_group_join_mpi(m, a.mdl.tp, a.mdl.ep, a.mdl.pp, &group))) goto fail;
    if (a.pin) pin_rank(ranks > 1 ? group.rank : 0);
    a.dev.threads = tsr_cli_rank_threads(a.dev.threads, ranks, a.dev.device);
    if ((rc = tsr_group_backend(ranks > 1 ? &group : NULL, a.dev.device, a.dev.threads, &b)))
        goto fail;
    if (ranks > 1 && group.rank != 0 && a.pipeline) { /* two runs: one at a time, pipelined */
        struct tsr_engine_opts eo = pipeline_opts(&a, NULL, 0);
        struct tsr_runner_opts ro = tsr_engine_runner_opts(&eo);
        for (long i = 0; i < 2 * a.repeats && !rc; i++) rc = tsr_step_follow(m, b, &ro, &group);
        if (rc) goto fail;
    } else if (ranks > 1 && group.rank != 0) {
        struct tsr_runner_opts ro = a.agree        ? agree_opts(&a, a.kv_type)
                                    : a.perplexity ? ppl_opts(&a)
                                                   : batch_layout(&a).ro;
        if ((rc = tsr_step_follow(m, b, &ro, &group))) goto fail;
    } else if (a.pipeline) {
        if ((rc = bench_pipeline(&a, m, b, &group.shard))) goto fail;
    } else if (a.agree) {
        rc = bench_agree(&a, m, b, ranks > 1 ? &group.shard : NULL);
        if (rc == 1) goto out; /* under the bar: said already */
        if (rc) goto fail;
    } else if (a.perplexity) {
        rc = bench_perplexity(&a, m, b, ranks > 1 ? &group.shard : NULL);
        if (rc == 1) goto out; /* under --min-agree: said already */
        if (rc) goto fail;
    } else if (a.n_batches) {
        if ((rc = bench_batches(&a, m, b, ranks > 1 ? &group.shard : NULL))) goto fail;
    } else if ((rc = bench_engine(&a, m, b))) {
        goto fail;
    }
    exit_code = 0;
    goto out;
fail:
    fprintf(stderr, "tessera bench: %s\n", tsr_last_error());
    exit_code = rc == TSR_EINVAL ? 2 : 1;
out:
    if (ranks > 1 && exit_code != 0) {
        fflush(stdout);
        exit(exit_code); /* without finalizing MPI: mpirun ends the other ranks */
    }
    tsr_backend_free(b);
    tsr_group_leave(&group);
    tsr_model_free(m);
    return exit_code;
}
