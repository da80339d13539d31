/* `tessera bench`: prompt and decode speed of one sequence on this machine, the numbers a
 * benchmark script sets beside a peer's. Prompt tokens are a fixed pseudo-random sequence (the
 * same ids every run), decoding is greedy and ignores end-of-generation tokens, each repeat
 * starts from an empty cache, and the median of the repeats is reported after one warm-up. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "tools/cli.h"
#include "worker/engine.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* One run: returns prompt and decode seconds. */
static int run_once(tsr_model_t *m, tsr_backend_t *b, const int32_t *prompt, int n_prompt,
                    int n_gen, double *t_prompt, double *t_decode)
{
    struct tsr_engine_opts eo = {.n_blocks = (n_prompt + n_gen + 15) / 16,
                                 .block_size = 16,
                                 .max_step_tokens = n_prompt,
                                 .max_seqs = 1};
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

int tsr_cmd_bench(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"prompt-tokens", required_argument, 0, 'p'},
                                         {"gen-tokens", required_argument, 0, 'n'},
                                         {"repeats", required_argument, 0, 'r'},
                                         {"threads", required_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *model = getenv("TESSERA_MODEL") ? getenv("TESSERA_MODEL") : TSR_DEFAULT_MODEL;
    long n_prompt = 128, n_gen = 64, repeats = 5, threads = 0;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:p:n:r:j:h", opts, NULL)) != -1) {
        rc = 0;
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 'p':
            rc = tsr_cli_int("--prompt-tokens", optarg, 1, 8192, &n_prompt);
            break;
        case 'n':
            rc = tsr_cli_int("--gen-tokens", optarg, 2, 8192, &n_gen);
            break;
        case 'r':
            rc = tsr_cli_int("--repeats", optarg, 1, 1000, &repeats);
            break;
        case 'j':
            rc = tsr_cli_int("--threads", optarg, 1, 1024, &threads);
            break;
        case 'h':
            printf("usage: tessera bench [--model M] [--prompt-tokens N] [--gen-tokens N] "
                   "[--repeats R] [--threads T]\n"
                   "Prints one JSON line: median prompt and decode tokens/s.\n");
            return 0;
        default:
            return 2;
        }
        if (rc) return rc;
    }
    tsr_model_t *m = NULL;
    tsr_backend_t *b = NULL;
    int32_t *prompt = NULL;
    double *tp = NULL, *td = NULL;
    int exit_code = 1;
    if ((rc = tsr_model_open(model, &m)) || !(b = tsr_backend_cpu_new((int)threads))) {
        fprintf(stderr, "tessera bench: %s\n", tsr_last_error());
        goto out;
    }
    int vocab = tsr_model_config(m)->n_vocab;
    prompt = malloc((size_t)n_prompt * sizeof *prompt);
    tp = malloc((size_t)repeats * sizeof *tp);
    td = malloc((size_t)repeats * sizeof *td);
    if (!prompt || !tp || !td) goto out;
    uint32_t s = 12345;
    for (long i = 0; i < n_prompt; i++) {
        s = s * 1664525u + 1013904223u;
        prompt[i] = (int32_t)((s >> 8) % (uint32_t)vocab);
    }
    double w0, w1;
    if ((rc = run_once(m, b, prompt, (int)n_prompt, (int)n_gen, &w0, &w1))) { /* warm-up */
        fprintf(stderr, "tessera bench: %s\n", tsr_last_error());
        goto out;
    }
    for (long r = 0; r < repeats; r++)
        if ((rc = run_once(m, b, prompt, (int)n_prompt, (int)n_gen, &tp[r], &td[r]))) {
            fprintf(stderr, "tessera bench: %s\n", tsr_last_error());
            goto out;
        }
    qsort(tp, (size_t)repeats, sizeof *tp, cmp_double);
    qsort(td, (size_t)repeats, sizeof *td, cmp_double);
    printf("{\"engine\":\"tessera\",\"model\":\"%s\",\"threads\":%ld,\"prompt_tokens\":%ld,"
           "\"gen_tokens\":%ld,\"repeats\":%ld,\"prompt_tps\":%.2f,\"decode_tps\":%.2f}\n",
           model, threads, n_prompt, n_gen, repeats, n_prompt / tp[repeats / 2],
           1.0 / td[repeats / 2]);
    exit_code = 0;
out:
    free(prompt);
    free(tp);
    free(td);
    tsr_backend_free(b);
    tsr_model_free(m);
    return exit_code;
}
