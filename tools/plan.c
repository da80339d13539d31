/* `tessera plan`: the tp × pp × replicas layout of a model on a cluster, per-GPU weights and the
 * KV cache that fits, from a config alone (no weights). The decisions live in model/shard_plan.c;
 * this file parses flags and prints. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/gguf.h"
#include "model/model.h"
#include "model/shard_plan.h"
#include "tools/cli.h"

struct plan_args {
    const char *config, *dtype, *kv_dtype;
    struct tsr_cluster cl;
    long rank; /* -1: none */
};

static void plan_usage(FILE *f)
{
    fprintf(f,
            "usage: tessera plan --config PATH [--nodes N] [--gpus-per-node G] [--gpu-mem SIZE]\n"
            "                    [--dtype bf16|fp8|int8|int4] [--kv-dtype bf16|fp8]\n"
            "                    [--context L] [--tp T] [--pp P] [--ep E] [--reserve SIZE]\n"
            "                    [--rank R]\n\n"
            "  --config      a Hugging Face config.json (or its directory), a .gguf file, or\n"
            "                synthetic:NAME (%s); mixture-of-experts and latent-attention\n"
            "                configs (mixtral, qwen2_moe, qwen3_moe, deepseek_v2/v3, kimi_k2)\n"
            "                can be planned, not run yet\n"
            "  --gpu-mem     memory per GPU: 80GiB, 80GB, 141G, 1.5TiB (K/M/G/T binary)\n"
            "  --dtype       weights: bf16 2 B, fp8 1 B, int8 1.0625 B (Q8_0: a 2-byte scale per\n"
            "                32), int4 0.5625 B (Q4_0); also f16, f32, q4_1\n"
            "  --kv-dtype    KV cache elements (bf16 unless given, whatever --dtype is)\n"
            "  --context     KV tokens one sequence must fit in a replica (default: the\n"
            "                model's trained context)\n"
            "  --tp, --pp    fix tensor / pipeline parallelism (default: tp = the largest the\n"
            "                model allows within a node, pp = the fewest stages that fit)\n"
            "  --ep          MoE: GPUs a stage's experts are spread over, a multiple of tp\n"
            "                (ep / tp attention groups, data-parallel); default: the fewest\n"
            "                GPUs per replica that fit, then the fewest stages\n"
            "  --reserve     per-GPU memory kept for the runtime: CUDA context, workspaces,\n"
            "                activations (default 4GiB)\n"
            "  --rank        also list the tensor slices of this rank of a replica\n"
            "Defaults: 1 node, 8 GPUs per node, 80GiB, bf16.\n",
            tsr_synthetic_names());
}

static int size_arg(const char *flag, const char *s, double *out)
{
    if (!tsr_plan_parse_size(s, out)) return 0;
    fprintf(stderr, "tessera: %s: %s\n", flag, tsr_last_error());
    return 2;
}

static int parse_args(int argc, char **argv, struct plan_args *a)
{
    enum { O_NODES = 256, O_GPN, O_MEM, O_KV, O_CTX, O_TP, O_PP, O_EP, O_RES, O_RANK };
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"nodes", required_argument, 0, O_NODES},
                                         {"gpus-per-node", required_argument, 0, O_GPN},
                                         {"gpu-mem", required_argument, 0, O_MEM},
                                         {"dtype", required_argument, 0, 'd'},
                                         {"kv-dtype", required_argument, 0, O_KV},
                                         {"context", required_argument, 0, O_CTX},
                                         {"tp", required_argument, 0, O_TP},
                                         {"pp", required_argument, 0, O_PP},
                                         {"ep", required_argument, 0, O_EP},
                                         {"reserve", required_argument, 0, O_RES},
                                         {"rank", required_argument, 0, O_RANK},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->dtype = "bf16";
    a->kv_dtype = "bf16";
    a->cl = (struct tsr_cluster){.nodes = 1, .gpus_per_node = 8, .reserve = -1};
    a->cl.gpu_mem = 80.0 * 1024 * 1024 * 1024;
    a->rank = -1;
    long l;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:d:h", opts, NULL)) != -1) {
        rc = 0;
        switch (c) {
        case 'c':
            a->config = optarg;
            break;
        case O_NODES:
            if (!(rc = tsr_cli_int("--nodes", optarg, 1, 1 << 20, &l))) a->cl.nodes = l;
            break;
        case O_GPN:
            if (!(rc = tsr_cli_int("--gpus-per-node", optarg, 1, 1024, &l)))
                a->cl.gpus_per_node = l;
            break;
        case O_MEM:
            rc = size_arg("--gpu-mem", optarg, &a->cl.gpu_mem);
            break;
        case 'd':
            a->dtype = optarg;
            break;
        case O_KV:
            a->kv_dtype = optarg;
            break;
        case O_CTX:
            if (!(rc = tsr_cli_int("--context", optarg, 1, 1L << 40, &l))) a->cl.context = l;
            break;
        case O_TP:
            if (!(rc = tsr_cli_int("--tp", optarg, 1, 1 << 20, &l))) a->cl.tp = l;
            break;
        case O_PP:
            if (!(rc = tsr_cli_int("--pp", optarg, 1, 1 << 20, &l))) a->cl.pp = l;
            break;
        case O_EP:
            if (!(rc = tsr_cli_int("--ep", optarg, 1, 1 << 20, &l))) a->cl.ep = l;
            break;
        case O_RES:
            rc = size_arg("--reserve", optarg, &a->cl.reserve);
            break;
        case O_RANK:
            rc = tsr_cli_int("--rank", optarg, 0, 1 << 30, &a->rank);
            break;
        case 'h':
            plan_usage(stdout);
            exit(0);
        default:
            plan_usage(stderr);
            return 2;
        }
        if (rc) return rc;
    }
    if (optind < argc) {
        fprintf(stderr, "tessera plan: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!a->config) {
        fprintf(stderr, "tessera plan: --config is required\n");
        plan_usage(stderr);
        return 2;
    }
    if (tsr_plan_dtype_bytes(a->dtype, &a->cl.bytes_per_weight) ||
        tsr_plan_dtype_bytes(a->kv_dtype, &a->cl.kv_bytes_per_elem)) {
        fprintf(stderr, "tessera plan: %s\n", tsr_last_error());
        return 2;
    }
    return 0;
}

static int gguf_type(void *ctx, const char *name)
{
    const struct tsr_gguf_tensor *t = tsr_gguf_find_tensor(ctx, name);
    return t ? (int)t->type : -1;
}

/* For a GGUF, the file's own tensor types must split where the plan cuts (block formats). */
static int check_file_types(const char *spec, const struct tsr_shard_plan *sp)
{
    size_t n = strlen(spec);
    if (n < 5 || strcmp(spec + n - 5, ".gguf")) return 0;
    tsr_gguf_t *g;
    int rc = tsr_gguf_open(spec, &g);
    if (rc) return rc;
    rc = tsr_shard_plan_check_types(sp, gguf_type, g);
    tsr_gguf_close(g);
    return rc;
}

static const char *count_str(double n, char *buf, size_t len)
{
    if (n >= 1e12)
        snprintf(buf, len, "%.2f T", n / 1e12);
    else if (n >= 1e9)
        snprintf(buf, len, "%.2f B", n / 1e9);
    else
        snprintf(buf, len, "%.1f M", n / 1e6);
    return buf;
}

/* Two decimals, for the per-GPU columns. */
static const char *size2(double bytes, char *buf, size_t len)
{
    static const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while ((bytes >= 1024 || bytes <= -1024) && u < 4) bytes /= 1024, u++;
    snprintf(buf, len, "%.2f %s", bytes, unit[u]);
    return buf;
}

static void print_rank(const struct tsr_shard_plan *sp, int rank)
{
    static const char *split[] = {"whole", "rows", "cols"};
    const struct tsr_rank_plan *r = &sp->ranks[rank];
    char b[32];
    if (sp->dp > 1 || r->expert_end > r->expert_begin)
        printf("\nrank %d: attention group %d, routed experts %d-%d of each expert layer", r->rank,
               r->dp_rank, r->expert_begin, r->expert_end - 1);
    printf("\nrank %d: stage %d, tp rank %d, layers %d-%d, q heads %d-%d, KV heads %d-%d, "
           "ffn %lld-%lld, vocab %lld-%lld%s%s; %s\n",
           r->rank, r->pp_stage, r->tp_rank, r->layer_begin, r->layer_end - 1, r->q_head_begin,
           r->q_head_end - 1, r->kv_head_begin, r->kv_head_end - 1, (long long)r->ffn_begin,
           (long long)r->ffn_end - 1, (long long)r->vocab_begin, (long long)r->vocab_end - 1,
           r->has_embedding ? ", embedding" : "", r->has_head ? ", LM head" : "",
           size2(r->weight_bytes, b, sizeof b));
    for (int i = 0; i < r->n_slices; i++) {
        const struct tsr_slice *s = &r->slices[i];
        printf("  %-28s %-5s [%lld, %lld) of %lld x %lld%s\n", s->name, split[s->split],
               (long long)s->offset, (long long)(s->offset + s->length), (long long)s->rows,
               (long long)s->cols, s->lm_head ? "  (LM head)" : "");
    }
}

static void print_plan(const struct plan_args *a, const struct tsr_model_config *c,
                       const struct tsr_cluster_plan *p)
{
    const struct tsr_cluster *cl = &a->cl;
    const char *name = strrchr(a->config, '/') ? strrchr(a->config, '/') + 1 : a->config;
    char b[4][32];
    printf("model    %s (%s): %d layers, dim %d, %d heads / %d KV x %d, ffn %d, vocab %d%s\n", name,
           c->arch, c->n_layer, c->dim, c->n_head, c->n_kv_head, c->head_dim, c->ffn_dim,
           c->n_vocab, c->tied_embeddings ? ", tied embeddings" : "");
    if (c->n_expert > 0) {
        printf("experts  %d routed, %d per token, %d wide; shared expert %d wide; layers %d-%d "
               "(%d dense before)\n",
               c->n_expert, c->n_expert_used, c->moe_ffn_dim, c->shared_ffn_dim, c->n_dense_layer,
               c->n_layer - 1, c->n_dense_layer);
    }
    if (c->kv_lora_rank > 0)
        printf("MLA      q_lora_rank %d, kv_lora_rank %d, qk %d + rope %d, v %d: the cache holds "
               "%d elements per token per layer, on every TP rank\n",
               c->q_lora_rank, c->kv_lora_rank, c->qk_nope_head_dim, c->qk_rope_head_dim,
               c->v_head_dim, c->kv_lora_rank + c->qk_rope_head_dim);
    printf("params   %s = %s at %s (%g bytes/param); KV cache %s, %s per token\n",
           count_str(p->n_params, b[0], sizeof b[0]),
           tsr_plan_format_size(p->weight_bytes, b[1], sizeof b[1]), a->dtype, cl->bytes_per_weight,
           a->kv_dtype, tsr_plan_format_size(p->kv_bytes_per_token, b[2], sizeof b[2]));
    printf("cluster  %d node%s x %d GPUs x %s = %d GPUs; %s per GPU reserved for the runtime\n",
           cl->nodes, cl->nodes == 1 ? "" : "s", cl->gpus_per_node,
           tsr_plan_format_size(cl->gpu_mem, b[0], sizeof b[0]), p->gpus,
           tsr_plan_format_size(p->reserve, b[1], sizeof b[1]));
    if (c->n_expert > 0) {
        printf("layout   tp %d x ep %d (%d attention group%s) x pp %d x %d replica%s = %d GPUs (%d "
               "idle); context %lld tokens\n",
               p->tp, p->ep, p->dp, p->dp == 1 ? "" : "s", p->pp, p->replicas,
               p->replicas == 1 ? "" : "s", p->gpus_used, p->gpus - p->gpus_used,
               (long long)p->context);
        int n_moe = tsr_config_n_moe_layer(c);
        printf("experts  %d per GPU of each expert layer; all-to-all %s per token per decode step "
               "(%d layers x %s dispatch + combine, bf16)\n\n",
               p->experts_per_gpu, tsr_plan_format_size(p->a2a_bytes_per_token, b[0], sizeof b[0]),
               n_moe, tsr_plan_format_size(p->a2a_bytes_per_token / n_moe, b[1], sizeof b[1]));
    } else {
        printf("layout   tp %d x pp %d x %d replica%s = %d GPUs (%d idle); context %lld tokens\n\n",
               p->tp, p->pp, p->replicas, p->replicas == 1 ? "" : "s", p->gpus_used,
               p->gpus - p->gpus_used, (long long)p->context);
    }
    printf("stage  layers            weights/GPU   KV bytes/token/GPU   KV room/GPU   KV tokens\n");
    for (int s = 0; s < p->pp; s++) {
        const struct tsr_stage_fit *f = &p->stages[s];
        char layers[32];
        snprintf(layers, sizeof layers, "%d-%d (%d)", f->layer_begin, f->layer_end - 1,
                 f->layer_end - f->layer_begin);
        printf("%5d  %-16s %12s   %18.0f %13s   %9lld\n", s, layers,
               size2(f->weight_bytes, b[0], sizeof b[0]), f->kv_bytes_per_token,
               size2(f->kv_room, b[1], sizeof b[1]), (long long)f->kv_tokens);
    }
    if (p->dp > 1)
        printf("\nKV tokens per attention group: %lld (%.1f x the %lld-token context); %lld over "
               "%d groups x %d replica%s\n",
               (long long)p->kv_tokens, (double)p->kv_tokens / (double)p->context,
               (long long)p->context, (long long)p->kv_tokens * p->dp * p->replicas, p->dp,
               p->replicas, p->replicas == 1 ? "" : "s");
    else
        printf("\nKV tokens per replica: %lld (%.1f x the %lld-token context); %lld over %d "
               "replica%s\n",
               (long long)p->kv_tokens, (double)p->kv_tokens / (double)p->context,
               (long long)p->context, (long long)p->kv_tokens * p->replicas, p->replicas,
               p->replicas == 1 ? "" : "s");
}

int tsr_cmd_plan(int argc, char **argv)
{
    struct plan_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc;
    struct tsr_model_config c;
    if ((rc = tsr_config_load(a.config, &c))) {
        fprintf(stderr, "tessera plan: %s\n", tsr_last_error());
        return 1;
    }
    struct tsr_cluster_plan p;
    if ((rc = tsr_cluster_plan_make(&c, &a.cl, &p))) {
        const char *name = strrchr(a.config, '/') ? strrchr(a.config, '/') + 1 : a.config;
        if (rc == TSR_EEXHAUSTED)
            fprintf(stderr, "tessera plan: %s does not fit: %s\n", name, tsr_last_error());
        else
            fprintf(stderr, "tessera plan: %s: %s\n", name, tsr_last_error());
        return rc == TSR_EINVAL ? 2 : 1;
    }
    if ((rc = check_file_types(a.config, &p.shard))) {
        fprintf(stderr, "tessera plan: %s\n", tsr_last_error());
        tsr_cluster_plan_free(&p);
        return rc == TSR_EINVAL ? 2 : 1;
    }
    if (a.rank >= p.shard.world) {
        fprintf(stderr, "tessera plan: --rank %ld: a replica has ranks 0-%d\n", a.rank,
                p.shard.world - 1);
        tsr_cluster_plan_free(&p);
        return 2;
    }
    print_plan(&a, &c, &p);
    if (a.rank >= 0) print_rank(&p.shard, (int)a.rank);
    tsr_cluster_plan_free(&p);
    return 0;
}
