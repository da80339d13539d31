/* `tessera generate`: one process, one prompt, the answer streamed to stdout and speeds to
 * stderr. The same engine a group leader runs, driven directly. */
#include <getopt.h>
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

struct gen_args {
    struct tsr_cli_model mdl;
    struct tsr_cli_device dev;
    struct tsr_cli_prompt in;
    struct tsr_cli_sampling smp;
    const char *chat_template;
};

enum { DEFAULT_MAX_TOKENS = 128 };

static void gen_usage(FILE *f)
{
    fprintf(f,
            "usage: tessera generate [--model M] --prompt TEXT | --prompt-ids 1,2,3\n"
            "                        [--chat] [--chat-template NAME] [--system TEXT]\n"
            "                        [--max-tokens N] [--temperature T] [--top-k K]\n"
            "                        [--top-p P] [--min-p P] [--repetition-penalty R]\n"
            "                        [--presence-penalty P] [--frequency-penalty F]\n"
            "                        [--logit-bias ID:BIAS,...] [--seed S] [--ignore-eos]\n"
            "                        [--show-ids] [--threads N] [--tp N] [--pp M]\n"
            "                        [--device cpu|cuda[:N]]\n\n"
            "One prompt through the engine in this process (--tp/--pp: ranks under mpirun on\n"
            "this machine).\n" TSR_CLI_MODEL_HELP
            "               (--model synthetic:NAME: %s)\n" TSR_CLI_DEVICE_HELP TSR_CLI_PROMPT_HELP
            "  --chat-template chatml|llama3|llama2|none\n"
            "               the template to use instead of the model's (implies --chat): for a\n"
            "               model whose template tessera does not recognise, or has none\n"
            "" TSR_CLI_SAMPLING_HELP "Defaults: greedy, max-tokens %d.\n",
            tsr_synthetic_names(), DEFAULT_MAX_TOKENS);
}

static int parse_args(int argc, char **argv, struct gen_args *a)
{
    enum { O_TEMPLATE = 256 };
    static const struct option opts[] = {TSR_CLI_MODEL_OPTIONS,
                                         TSR_CLI_DEVICE_OPTIONS,
                                         TSR_CLI_PROMPT_OPTIONS,
                                         TSR_CLI_SAMPLING_OPTIONS,
                                         {"chat-template", required_argument, 0, O_TEMPLATE},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    tsr_cli_model_init(&a->mdl);
    tsr_cli_device_init(&a->dev);
    tsr_cli_sampling_init(&a->smp);
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:j:p:cn:t:P:s:h", opts, NULL)) != -1) {
        if ((rc = tsr_cli_model_opt(c, optarg, &a->mdl)) ||
            (rc = tsr_cli_device_opt(c, optarg, &a->dev)) ||
            (rc = tsr_cli_prompt_opt(c, optarg, &a->in)) ||
            (rc = tsr_cli_sampling_opt(c, optarg, &a->smp))) {
            if (rc == 2) return 2;
            continue;
        }
        switch (c) {
        case O_TEMPLATE: {
            struct tsr_chat probe;
            if (tsr_chat_named(optarg, NULL, &probe)) {
                fprintf(stderr, "tessera: --chat-template: %s\n", tsr_last_error());
                return 2;
            }
            tsr_chat_free(&probe);
            a->chat_template = optarg;
            a->in.chat = 1;
            break;
        }
        case 'h':
            gen_usage(stdout);
            exit(0);
        default:
            gen_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tessera generate: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!a->in.prompt == !a->in.prompt_ids) {
        fprintf(stderr, "tessera generate: give exactly one of --prompt and --prompt-ids\n");
        gen_usage(stderr);
        return 2;
    }
    if (!a->smp.max_tokens) a->smp.max_tokens = DEFAULT_MAX_TOKENS;
    if (!(a->smp.given & TSR_CLI_GIVEN_SEED)) a->smp.sp.seed = tsr_sampling_random_seed();
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
    if (a->in.chat) {
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
        if (a->in.system) msgs[nm++] = (struct tsr_chat_msg){"system", a->in.system};
        msgs[nm++] = (struct tsr_chat_msg){"user", a->in.prompt};
        rc = tsr_chat_render(chat, msgs, nm, 1, &text);
        if (a->chat_template) tsr_chat_free(&named);
        if (rc) goto fail;
    }
    const char *p = text ? text : a->in.prompt;
    rc = tsr_tokenizer_encode(tok, p, strlen(p), tsr_tokenizer_wants_bos(tok), a->in.chat, ids, n);
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
    int ranks = tsr_cli_model_ranks(&a.mdl);
    if ((rc = tsr_cli_launch_ranks("generate", &a.mdl, argc, argv)) >= 0) return rc;
    struct tsr_group group = {0};
    int exit_code = 1;
    tsr_model_t *m = NULL;
    tsr_backend_t *b = NULL;
    tsr_engine_t *e = NULL;
    tsr_detok_t *dt = NULL;
    int32_t *ids = NULL, *out_ids = NULL;
    size_t n_ids = 0;
    double t0 = tsr_now();
    if ((rc = tsr_cli_model_open(&a.mdl, &m))) {
        fprintf(stderr, "tessera generate: %s\n", tsr_last_error());
        goto out;
    }
    if (ranks > 1 && (rc = tsr_group_join_mpi(m, a.mdl.tp, a.mdl.ep, a.mdl.pp, &group))) {
        fprintf(stderr, "tessera generate: %s\n", tsr_last_error());
        exit_code = rc == TSR_EINVAL ? 2 : 1;
        goto out;
    }
    rc = a.in.prompt_ids ? tsr_cli_ids("generate", "--prompt-ids", a.in.prompt_ids, &ids, &n_ids)
                         : encode_prompt(m, &a, &ids, &n_ids);
    if (rc) {
        exit_code = rc;
        goto out;
    }
    a.dev.threads = tsr_cli_rank_threads(a.dev.threads, ranks, a.dev.device);
    if ((rc = tsr_group_backend(ranks > 1 ? &group : NULL, a.dev.device, a.dev.threads, &b))) {
        fprintf(stderr, "tessera generate: %s\n", tsr_last_error());
        exit_code = rc == TSR_EINVAL || rc == TSR_EUNSUPPORTED ? 2 : 1;
        goto out;
    }
    const struct tsr_model_config *c = tsr_model_config(m);
    int block = TSR_KV_BLOCK, ctx = (int)n_ids + a.smp.max_tokens;
    struct tsr_engine_opts eo = {.n_blocks = (ctx + block - 1) / block,
                                 .block_size = block,
                                 .max_step_tokens = n_ids < 2048 ? (int)n_ids : 2048,
                                 .max_seqs = 1,
                                 .max_context = c->n_ctx_train,
                                 .shard = ranks > 1 ? &group.shard : NULL,
                                 .kv_type = tsr_cli_kv_type(&a.mdl, a.dev.device)};
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
                              .sampling = a.smp.sp,
                              .max_tokens = a.smp.max_tokens,
                              .ignore_eos = a.smp.ignore_eos};
    int64_t id;
    if ((rc = tsr_engine_add(e, &req, &id))) {
        fprintf(stderr, "tessera generate: %s\n", tsr_last_error());
        exit_code = rc == TSR_EINVAL || rc == TSR_ERANGE ? 2 : 1;
        goto out;
    }
    double t_load = tsr_now();
    const tsr_tokenizer_t *tok = tsr_model_tokenizer(m);
    if (tok && !(dt = tsr_detok_new(tok, 1))) goto out;
    out_ids = malloc((size_t)a.smp.max_tokens * sizeof *out_ids);
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
    if (a.in.show_ids || !dt) {
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
