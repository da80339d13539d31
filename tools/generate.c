/* `tessera generate`: one process, one prompt, the answer streamed to stdout and speeds to
 * stderr. The same engine a group leader runs, driven directly. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "tools/cli.h"
#include "worker/step.h"
#include "worker/engine.h"
#include "worker/group.h"

struct gen_args {
    const char *model, *prompt, *prompt_ids, *system, *device, *chat_template;
    int chat, max_tokens, threads, ignore_eos, show_ids, tp, pp;
    struct tsr_sampling sp;
};

static void gen_usage(FILE *f)
{
    fprintf(f,
            "usage: tessera generate [--model PATH|DIR|synthetic:NAME[:DTYPE]] --prompt TEXT\n"
            "                        [--chat] [--chat-template NAME] [--system TEXT]\n"
            "                        [--max-tokens N]\n"
            "                        [--temperature T] [--top-k K] [--top-p P] [--min-p P]\n"
            "                        [--repeat-penalty R] [--seed S] [--threads N]\n"
            "                        [--prompt-ids 1,2,3] [--ignore-eos] [--show-ids]\n"
            "                        [--tp N] [--pp M] [--device cpu|cuda[:N]]\n\n"
            "  --model       a .gguf file, a Hugging Face directory, or a synthetic shape\n"
            "                (%s); default %s\n"
            "  --chat        wrap the prompt in the model's chat template\n"
            "  --chat-template chatml|llama3|llama2|none\n"
            "                the template to use instead of the model's (implies --chat): for a\n"
            "                model whose template tessera does not recognise, or has none\n"
            "  --prompt-ids  token ids instead of text (synthetic models have no tokenizer)\n"
            "  --show-ids    print the generated token ids, one line, after the text\n"
            "  --tp, --pp    shard the model over N x M ranks (tensor x pipeline parallel),\n"
            "                launched through mpirun on this machine\n"
            "  --device      where the model runs: cpu (default) or a GPU, cuda:N; the ranks of\n"
            "                --tp/--pp take GPUs N, N+1, ... and talk through NCCL\n"
            "Defaults: greedy (temperature 0), max-tokens 128, threads = cores.\n",
            tsr_synthetic_names(), TSR_DEFAULT_MODEL);
}

static int parse_args(int argc, char **argv, struct gen_args *a)
{
    enum {
        O_SYSTEM = 256,
        O_TOPK,
        O_MINP,
        O_REP,
        O_IDS,
        O_IGNORE,
        O_SHOW,
        O_TP,
        O_PP,
        O_DEVICE,
        O_TEMPLATE
    };
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"prompt", required_argument, 0, 'p'},
                                         {"chat", no_argument, 0, 'c'},
                                         {"chat-template", required_argument, 0, O_TEMPLATE},
                                         {"system", required_argument, 0, O_SYSTEM},
                                         {"max-tokens", required_argument, 0, 'n'},
                                         {"temperature", required_argument, 0, 't'},
                                         {"top-k", required_argument, 0, O_TOPK},
                                         {"top-p", required_argument, 0, 'P'},
                                         {"min-p", required_argument, 0, O_MINP},
                                         {"repeat-penalty", required_argument, 0, O_REP},
                                         {"seed", required_argument, 0, 's'},
                                         {"threads", required_argument, 0, 'j'},
                                         {"prompt-ids", required_argument, 0, O_IDS},
                                         {"ignore-eos", no_argument, 0, O_IGNORE},
                                         {"show-ids", no_argument, 0, O_SHOW},
                                         {"tp", required_argument, 0, O_TP},
                                         {"pp", required_argument, 0, O_PP},
                                         {"device", required_argument, 0, O_DEVICE},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->model = getenv("TESSERA_MODEL") ? getenv("TESSERA_MODEL") : TSR_DEFAULT_MODEL;
    a->max_tokens = 128;
    a->device = "cpu";
    a->tp = a->pp = 1;
    a->sp = tsr_sampling_default();
    long l;
    double d;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:p:cn:t:P:s:j:h", opts, NULL)) != -1) {
        rc = 0;
        switch (c) {
        case 'm':
            a->model = optarg;
            break;
        case 'p':
            a->prompt = optarg;
            break;
        case 'c':
            a->chat = 1;
            break;
        case O_TEMPLATE: {
            struct tsr_chat probe;
            if (tsr_chat_named(optarg, NULL, &probe)) {
                fprintf(stderr, "tessera: --chat-template: %s\n", tsr_last_error());
                return 2;
            }
            tsr_chat_free(&probe);
            a->chat_template = optarg;
            a->chat = 1;
            break;
        }
        case O_SYSTEM:
            a->system = optarg;
            break;
        case 'n':
            if (!(rc = tsr_cli_int("--max-tokens", optarg, 1, 1 << 20, &l))) a->max_tokens = l;
            break;
        case 't':
            if (!(rc = tsr_cli_float("--temperature", optarg, 0, 100, &d))) a->sp.temperature = d;
            break;
        case O_TOPK:
            if (!(rc = tsr_cli_int("--top-k", optarg, 0, 1 << 30, &l))) a->sp.top_k = l;
            break;
        case 'P':
            if (!(rc = tsr_cli_float("--top-p", optarg, 1e-9, 1, &d))) a->sp.top_p = d;
            break;
        case O_MINP:
            if (!(rc = tsr_cli_float("--min-p", optarg, 0, 0.999999, &d))) a->sp.min_p = d;
            break;
        case O_REP:
            if (!(rc = tsr_cli_float("--repeat-penalty", optarg, 1e-6, 100, &d)))
                a->sp.repetition_penalty = d;
            break;
        case 's':
            rc = tsr_cli_u64("--seed", optarg, &a->sp.seed);
            break;
        case 'j':
            if (!(rc = tsr_cli_int("--threads", optarg, 1, 1024, &l))) a->threads = l;
            break;
        case O_IDS:
            a->prompt_ids = optarg;
            break;
        case O_IGNORE:
            a->ignore_eos = 1;
            break;
        case O_SHOW:
            a->show_ids = 1;
            break;
        case O_TP:
            if (!(rc = tsr_cli_int("--tp", optarg, 1, 1024, &l))) a->tp = l;
            break;
        case O_PP:
            if (!(rc = tsr_cli_int("--pp", optarg, 1, 1024, &l))) a->pp = l;
            break;
        case O_DEVICE:
            a->device = optarg;
            break;
        case 'h':
            gen_usage(stdout);
            exit(0);
        default:
            gen_usage(stderr);
            return 2;
        }
        if (rc) return rc;
    }
    if (optind < argc) {
        fprintf(stderr, "tessera generate: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!a->prompt == !a->prompt_ids) {
        fprintf(stderr, "tessera generate: give exactly one of --prompt and --prompt-ids\n");
        gen_usage(stderr);
        return 2;
    }
    return 0;
}

static int encode_prompt(const tsr_model_t *m, const struct gen_args *a, int32_t **ids, size_t *n)
{
    const tsr_tokenizer_t *tok = tsr_model_tokenizer(m);
    if (!tok) {
        fprintf(stderr, "tessera generate: %s has no tokenizer; pass --prompt-ids\n",
                tsr_model_name(m));
        return 2;
    }
    char *text = NULL;
    int rc;
    if (a->chat) {
        const struct tsr_chat *chat = tsr_model_chat(m);
        struct tsr_chat named;
        if (!a->chat_template &&
            (chat->kind == TSR_CHAT_UNRECOGNISED || chat->kind == TSR_CHAT_NONE)) {
            /* A chat asked for and a completion given would be a silent change of meaning. */
            if (chat->kind == TSR_CHAT_UNRECOGNISED)
                fprintf(stderr,
                        "tessera generate: --chat: %s has a chat template of the %s family, "
                        "which tessera does not render;",
                        tsr_model_name(m), tsr_model_chat_family(m));
            else
                fprintf(stderr, "tessera generate: --chat: %s has no chat template;",
                        tsr_model_name(m));
            fprintf(stderr, " pick one with --chat-template chatml|llama3|llama2|none\n");
            return 2;
        }
        if (a->chat_template) {
            if ((rc = tsr_chat_named(a->chat_template, chat, &named))) goto fail;
            chat = &named;
        }
        struct tsr_chat_msg msgs[2];
        size_t nm = 0;
        if (a->system) msgs[nm++] = (struct tsr_chat_msg){"system", a->system};
        msgs[nm++] = (struct tsr_chat_msg){"user", a->prompt};
        rc = tsr_chat_render(chat, msgs, nm, 1, &text);
        if (a->chat_template) tsr_chat_free(&named);
        if (rc) goto fail;
    }
    const char *p = text ? text : a->prompt;
    rc = tsr_tokenizer_encode(tok, p, strlen(p), tsr_tokenizer_wants_bos(tok), a->chat, ids, n);
    free(text);
    if (!rc) return 0;
fail:
    fprintf(stderr, "tessera generate: %s\n", tsr_last_error());
    return rc == TSR_EINVAL ? 2 : 1;
}

int tsr_cmd_generate(int argc, char **argv)
{
    struct gen_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc;
    int ranks = a.tp * a.pp;
    if ((rc = tsr_cli_launch_ranks("generate", a.model, a.tp, a.pp, argc, argv)) >= 0) return rc;
    struct tsr_group group = {0};
    int exit_code = 1;
    tsr_model_t *m = NULL;
    tsr_backend_t *b = NULL;
    tsr_engine_t *e = NULL;
    tsr_detok_t *dt = NULL;
    int32_t *ids = NULL, *out_ids = NULL;
    size_t n_ids = 0;
    double t0 = tsr_now();
    if ((rc = tsr_model_open(a.model, &m))) {
        fprintf(stderr, "tessera generate: %s\n", tsr_last_error());
        goto out;
    }
    if (ranks > 1 && (rc = tsr_group_join_mpi(m, a.tp, a.pp, &group))) {
        fprintf(stderr, "tessera generate: %s\n", tsr_last_error());
        exit_code = rc == TSR_EINVAL ? 2 : 1;
        goto out;
    }
    rc = a.prompt_ids ? tsr_cli_ids("generate", "--prompt-ids", a.prompt_ids, &ids, &n_ids)
                      : encode_prompt(m, &a, &ids, &n_ids);
    if (rc) {
        exit_code = rc;
        goto out;
    }
    a.threads = tsr_cli_rank_threads(a.threads, ranks, a.device);
    if ((rc = tsr_group_backend(ranks > 1 ? &group : NULL, a.device, a.threads, &b))) {
        fprintf(stderr, "tessera generate: %s\n", tsr_last_error());
        exit_code = rc == TSR_EINVAL || rc == TSR_EUNSUPPORTED ? 2 : 1;
        goto out;
    }
    const struct tsr_model_config *c = tsr_model_config(m);
    int block = 16, ctx = (int)n_ids + a.max_tokens;
    struct tsr_engine_opts eo = {.n_blocks = (ctx + block - 1) / block,
                                 .block_size = block,
                                 .max_step_tokens = n_ids < 2048 ? (int)n_ids : 2048,
                                 .max_seqs = 1,
                                 .max_context = c->n_ctx_train,
                                 .shard = ranks > 1 ? &group.shard : NULL};
    if (ranks > 1 && group.rank != 0) {
        /* A follower: the same runner the leader's engine builds, serving its steps. */
        struct tsr_runner_opts ro = tsr_engine_runner_opts(&eo);
        if ((rc = tsr_step_follow(m, b, &ro, &group)))
            fprintf(stderr, "tessera generate: rank %d: %s\n", group.rank, tsr_last_error());
        exit_code = rc ? 1 : 0;
        goto out;
    }
    if ((rc = tsr_engine_new(m, b, &eo, &e))) {
        fprintf(stderr, "tessera generate: %s\n", tsr_last_error());
        goto out;
    }
    struct tsr_request req = {.prompt = ids,
                              .n_prompt = (int)n_ids,
                              .sampling = a.sp,
                              .max_tokens = a.max_tokens,
                              .ignore_eos = a.ignore_eos};
    int64_t id;
    if ((rc = tsr_engine_add(e, &req, &id))) {
        fprintf(stderr, "tessera generate: %s\n", tsr_last_error());
        exit_code = rc == TSR_EINVAL || rc == TSR_ERANGE ? 2 : 1;
        goto out;
    }
    double t_load = tsr_now();
    const tsr_tokenizer_t *tok = tsr_model_tokenizer(m);
    if (tok && !(dt = tsr_detok_new(tok, 1))) goto out;
    out_ids = malloc((size_t)a.max_tokens * sizeof *out_ids);
    if (!out_ids) goto out;
    int n_out = 0;
    double t_first = 0;
    enum tsr_finish fin = TSR_FINISH_NONE;
    while (fin == TSR_FINISH_NONE) {
        struct tsr_token_event ev;
        int n_ev;
        if ((rc = tsr_engine_step(e, &ev, 1, &n_ev))) {
            fprintf(stderr, "\ntessera generate: %s\n", tsr_last_error());
            goto out;
        }
        if (n_ev == 0) continue;
        if (n_out == 0) t_first = tsr_now();
        fin = ev.finish;
        if (ev.token < 0) break;
        out_ids[n_out++] = ev.token;
        const char *piece;
        size_t len;
        if (dt && !(fin == TSR_FINISH_STOP && tsr_tokenizer_is_eog(tok, ev.token)) &&
            !tsr_detok_push(dt, ev.token, &piece, &len)) {
            fwrite(piece, 1, len, stdout);
            fflush(stdout);
        }
    }
    if (dt) {
        const char *piece;
        size_t len;
        if (!tsr_detok_flush(dt, &piece, &len)) fwrite(piece, 1, len, stdout);
    }
    double t_end = tsr_now();
    printf("\n");
    if (a.show_ids || !dt) {
        for (int i = 0; i < n_out; i++) printf("%s%d", i ? "," : "", out_ids[i]);
        printf("\n");
    }
    fflush(stdout);
    /* Prompt speed: until the first token (the prompt's steps and the first sample). */
    double prefill = t_first - t_load, decode = t_end - t_first;
    fprintf(stderr,
            "tessera: model %s, load %.2f s, prompt %zu tokens %.1f tok/s, decode %d tokens "
            "%.1f tok/s, finish %s\n",
            tsr_model_name(m), t_load - t0, n_ids, prefill > 0 ? (double)n_ids / prefill : 0,
            n_out - 1, decode > 0 && n_out > 1 ? (n_out - 1) / decode : 0, tsr_finish_name(fin));
    exit_code = 0;
out:
    if (ranks > 1 && exit_code != 0) {
        /* Leave without finalizing MPI: mpirun then ends the other ranks, which may be waiting
         * for a step that will never come. */
        fflush(stdout);
        exit(exit_code);
    }
    free(out_ids);
    free(ids);
    tsr_detok_free(dt);
    tsr_engine_free(e);
    tsr_backend_free(b);
    tsr_group_leave(&group);
    tsr_model_free(m);
    return exit_code;
}
