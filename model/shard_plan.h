/* The shard plan (DESIGN §4): a pure function from (config, tp, pp) to the slice of every tensor
 * each rank holds and what that costs in memory; and the cluster plan on top of it, which picks
 * tp × pp × replicas for a set of GPUs. No I/O, no weights: it works on any config, trillion-
 * parameter ones included.
 *
 * Ranks. A replica has world = tp * pp ranks; rank = pp_stage * tp + tp_rank, so the TP ranks of a
 * stage are consecutive and sit on one node. Stage 0 holds the embedding, the last stage the output
 * norm and the LM head.
 *
 * Splits are named in our storage, where a weight is (rows = out features, cols = in features):
 *   attn_q/k/v, ffn_gate/up     column-parallel (Megatron): out features, a ROW range
 *   attn_output, ffn_down       row-parallel (Megatron): in features, a COLUMN range
 *   attn_q/k/v.bias             a vector (rows 1): the COLUMN range of its projection's rows
 *   token_embd, output          vocab-parallel: a ROW range
 *   *_norm                      replicated (SPLIT_NONE)
 * Heads: n_head % tp == 0, rank r holds query heads [r*n_head/tp, (r+1)*n_head/tp). KV heads: when
 * tp <= n_kv_head, n_kv_head % tp == 0 and rank r holds [r*n_kv/tp, (r+1)*n_kv/tp); when tp exceeds
 * them, tp % n_kv_head == 0 and rank r holds the one head floor(r * n_kv_head / tp) (replicated on
 * tp/n_kv_head consecutive ranks, which are exactly the ranks whose query heads use it).
 * FFN: split in 32-element blocks (TSR_QK) when ffn_dim is a multiple of 32, so any block format
 * can be split; rank r holds blocks [floor(r*nb/tp), floor((r+1)*nb/tp)) of nb = ffn_dim/32 (even
 * when tp divides nb, otherwise some ranks hold one block more). Otherwise element by element.
 * Vocabulary: every rank gets stride = ceil(n_vocab / tp) rows, rank r [r*stride, (r+1)*stride)
 * clipped to n_vocab, so only the last rank may be shorter; logits are gathered as tp * stride
 * entries, the missing tail being padding (never sampled). It is not stored.
 * Tied embeddings: the LM head is a vocab slice of token_embd.weight. With pp = 1 it is the same
 * slice as the embedding (held once); with pp > 1 the last stage holds its own copy.
 * rope_freqs.weight, when a file has one, is a RoPE table every rank reads whole; it is not listed.
 *
 * Memory: every parameter is counted at the caller's bytes per weight (norms and biases too; they
 * are under 0.01% of a model). KV bytes per token of a rank = 2 (K and V) * its layers * its KV
 * heads * head_dim * KV bytes per element.
 *
 * Mixture of experts. Expert parallelism: the ep ranks of a stage are
 * ep / tp attention groups of tp ranks (rank = pp_stage * ep + dp_rank * tp + tp_rank). Attention,
 * dense layers, the shared expert, embeddings and head are tp-sharded within each group exactly as
 * above (the groups are copies: data-parallel attention, each serving its own sequences); the
 * routed experts of every expert layer of the stage are spread over all ep ranks, whole experts,
 * rank j holding [j * n_expert / ep, (j + 1) * n_expert / ep). Tokens reach their experts by an
 * all-to-all over the stage (dispatch, combine). Why this rule: it keeps one tp group inside a
 * node for the all-reduces as today, and lets EP grow across nodes the way DeepSeek V3 is served
 * (EP over many nodes, DP attention) and SGLang/vLLM run it (--enable-dp-attention, EP = TP x DP);
 * ep = tp (one attention group) is vLLM's "EP = TP size" inside a node. A dense model has ep = tp.
 * What runs (worker/forward.h, kernels/moe_ep.h): this layout on the CPU backend over MPI, every
 * rank loading only its experts, with the ep / tp attention groups of a stage all running the
 * leader's one batch (attention replicated over the groups); groups serving sequences of their
 * own (data-parallel attention) and GPU experts are planned, not run yet.
 * The cluster plan picks the fewest GPUs per replica, then the fewest stages (see
 * tsr_cluster_plan_make). Stacked expert tensors are listed as llama.cpp stores them, one slice
 * per tensor per layer, not one per expert: ffn_{gate,up}_exps are (n_expert * moe_ffn rows, dim),
 * ffn_down_exps (n_expert * dim rows, moe_ffn), so a rank's experts are one ROWS range; the
 * router ffn_gate_inp (n_expert, dim) is replicated; the shared expert ffn_*_shexp splits like a
 * dense FFN (blocks of 32 over shared_ffn_dim).
 * Multi-head latent attention: attn_q_a (q_lora_rank, dim), attn_q_a_norm, attn_kv_a_mqa
 * (kv_lora_rank + qk_rope_head_dim, dim) and attn_kv_a_norm are replicated; attn_q_b (n_head *
 * (nope + rope), q_lora_rank) and attn_kv_b (n_head * (nope + v), kv_lora_rank) are split by head
 * (ROWS), attn_output (dim, n_head * v_head_dim) by head (COLS); without q_lora_rank attn_q is
 * (n_head * (nope + rope), dim), split by head. The MLA cache holds kv_lora_rank +
 * qk_rope_head_dim elements per token per layer, shared by all heads and so replicated on every
 * TP rank: KV bytes per token of a rank = its layers * (kv_lora_rank + qk_rope_head_dim) * KV bytes
 * per element. Not counted: DeepSeek V3's e_score_correction_bias (n_expert per layer, 15k
 * parameters in all) and its multi-token-prediction layer (not used to serve). */
#ifndef TSR_MODEL_SHARD_PLAN_H
#define TSR_MODEL_SHARD_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "model/config.h"

enum tsr_split { TSR_SPLIT_NONE, TSR_SPLIT_ROWS, TSR_SPLIT_COLS };

struct tsr_slice {
    char name[64];        /* GGUF name: "blk.3.attn_q.weight" */
    enum tsr_split split; /* which dimension offset/length index; NONE: the whole tensor */
    int64_t offset, length;
    int64_t rows, cols; /* the full tensor (a vector has rows = 1) */
    int lm_head;        /* 1: this slice serves as the LM head (output.weight, or token_embd when
                           embeddings are tied) */
};

struct tsr_rank_plan {
    int rank, tp_rank, pp_stage;
    int dp_rank, ep_rank;         /* attention group in the stage; rank in the stage */
    int expert_begin, expert_end; /* routed experts [begin, end) of each expert layer held */
    int layer_begin, layer_end;   /* [begin, end) */
    int has_embedding, has_head;
    int q_head_begin, q_head_end;   /* query heads [begin, end) */
    int kv_head_begin, kv_head_end; /* KV heads [begin, end): one head when replicated */
    int64_t ffn_begin, ffn_end;     /* intermediate features [begin, end) */
    int64_t vocab_begin, vocab_end; /* rows of the embedding / LM head (when held) */
    int64_t vocab_stride;           /* ceil(n_vocab / tp): logits per rank, padded */
    int n_slices;
    struct tsr_slice *slices; /* token_embd, blk.*, output_norm, output, in that order */
    double n_params;          /* elements in this rank's slices */
    double weight_bytes;      /* n_params * bytes per weight */
    double kv_bytes_per_token;
};

struct tsr_shard_plan {
    int tp, pp, world; /* world = ep * pp */
    int ep, dp;        /* ranks of a stage; its attention groups (ep / tp); dense: tp, 1 */
    double bytes_per_weight, kv_bytes_per_elem;
    double n_params;             /* the whole model (each tensor once) */
    struct tsr_rank_plan *ranks; /* world of them, by rank */
};

/* Builds the plan of one replica. bytes_per_weight > 0 (2 for bf16, 0.5625 for Q4_0 with its
 * scales, ...), kv_bytes_per_elem > 0 (2 for a bf16 cache). A layout that cannot divide is
 * TSR_EINVAL with a message naming the dimension ("tp=2 does not divide 9 attention heads").
 * Caller frees with tsr_shard_plan_free() (also safe on a zeroed or failed plan). */
int tsr_shard_plan_make(const struct tsr_model_config *c, int tp, int pp, double bytes_per_weight,
                        double kv_bytes_per_elem, struct tsr_shard_plan *out);
void tsr_shard_plan_free(struct tsr_shard_plan *p);
/* The same with expert parallelism: ep ranks a stage (0: tp), a multiple of tp dividing n_expert;
 * a dense model takes only ep = tp. TSR_EINVAL naming the rule otherwise. */
int tsr_shard_plan_make_ep(const struct tsr_model_config *c, int tp, int ep, int pp,
                           double bytes_per_weight, double kv_bytes_per_elem,
                           struct tsr_shard_plan *out);
/* Only the rules of ep for a given tp; 0 or TSR_EINVAL. */
int tsr_shard_plan_check_ep(const struct tsr_model_config *c, int tp, int ep);

/* Only the divisibility rules of tp (heads, KV heads, FFN, vocabulary); 0 or TSR_EINVAL. */
int tsr_shard_plan_check_tp(const struct tsr_model_config *c, int tp);

/* The slice of a tensor on a rank, or NULL if the rank does not hold it. O(n_slices). */
const struct tsr_slice *tsr_rank_plan_find(const struct tsr_rank_plan *r, const char *name);

/* Checks the plan against a file's tensor types: a COLS split of a block format (Q8_0, Q4_0,
 * Q4_1) must start and end on 32-element blocks. type_of returns the tsr_dtype of a tensor, or
 * a negative value when the file lacks it (skipped). TSR_EINVAL names the tensor, the columns and
 * the block ("blk.0.attn_output.weight: tp=2 splits its 160 columns at 80, not on a 32-element
 * Q4_1 block"). */
int tsr_shard_plan_check_types(const struct tsr_shard_plan *p,
                               int (*type_of)(void *ctx, const char *name), void *ctx);

/* Where a slice lies in the tensor's bytes, for a tensor of type t stored row by row: n_rows
 * pieces of row_bytes each, the first at offset, the next ones stride apart (a ROWS or NONE slice
 * is one contiguous piece: n_rows = 1 with row_bytes its whole size). TSR_EINVAL if a COLS slice
 * does not fall on t's blocks. */
struct tsr_slice_bytes {
    size_t offset, row_bytes, stride;
    int64_t n_rows;
};
int tsr_slice_bytes(const struct tsr_slice *s, enum tsr_dtype t, struct tsr_slice_bytes *out);

/* ---- The cluster plan: tp × pp × replicas for a set of identical GPUs ---- */

/* Kept free on every GPU for the CUDA context, cuBLAS/NCCL workspaces (about 1.5 GiB) and the
 * activations and logits of a step (about 2.5 GiB for an 8192-token step of a 16k-wide model). */
#define TSR_PLAN_RESERVE (4.0 * 1024 * 1024 * 1024)
/* Bytes per activation element sent by the MoE all-to-all (bf16). */
#define TSR_PLAN_ACT_BYTES 2

struct tsr_cluster {
    int nodes, gpus_per_node;
    double gpu_mem;           /* bytes per GPU */
    double bytes_per_weight;  /* as tsr_shard_plan_make */
    double kv_bytes_per_elem; /* as tsr_shard_plan_make */
    double reserve;           /* bytes per GPU kept for the runtime; < 0: TSR_PLAN_RESERVE */
    int64_t context;          /* KV tokens one sequence needs per replica; 0: n_ctx_train */
    int tp, pp;               /* 0: choose */
    int ep;                   /* MoE: ranks a stage's experts spread over; 0: choose */
};

struct tsr_stage_fit {
    int layer_begin, layer_end;
    double weight_bytes;       /* the fullest GPU of the stage */
    double kv_bytes_per_token; /* per GPU */
    double kv_room;            /* gpu_mem - reserve - weight_bytes, per GPU */
    int64_t kv_tokens;         /* floor(kv_room / kv_bytes_per_token) */
};

struct tsr_cluster_plan {
    int tp, pp, replicas;
    int ep, dp;          /* GPUs a stage (experts spread over them); attention groups a stage */
    int gpus, gpus_used; /* in the cluster; in replicas (the rest idle) */
    double reserve;
    int64_t context;
    double n_params, weight_bytes; /* the whole model */
    double kv_bytes_per_token;     /* the whole model, one token of one sequence */
    int64_t kv_tokens;             /* per replica (per attention group when dp > 1): the least
                                      over its stages */
    int experts_per_gpu;           /* of each expert layer; 0 when dense */
    double a2a_bytes_per_token;    /* MoE: all-to-all bytes one token moves in a decode step,
                                      every expert layer, dispatch + combine: n_moe_layers * 2 *
                                      n_expert_used * dim * TSR_PLAN_ACT_BYTES (an upper bound:
                                      copies routed to a rank's own experts stay local) */
    struct tsr_stage_fit *stages;  /* pp of them */
    struct tsr_shard_plan shard;   /* the plan of one replica */
};

/* Chooses the layout: tp = the largest value <= gpus_per_node that the model's heads, KV heads,
 * FFN and vocabulary allow (TP stays inside a node); pp = the fewest stages for which every GPU
 * holds its weights, the reserve and `context` tokens of KV; replicas = the TP groups of the
 * cluster (nodes * floor(gpus_per_node / tp)) divided by pp. tp or pp given in cl are kept.
 * MoE: a replica is k TP groups = pp stages x (ep / tp) attention groups; the smallest k that
 * fits wins, and for that k the fewest stages (the most EP); ep must divide the experts. ep given
 * in cl is kept (a dense model takes only ep = tp).
 * TSR_EINVAL for a bad request or layout; TSR_EEXHAUSTED when the model does not fit, naming the
 * fullest GPU's need and the shortfall. Caller frees with tsr_cluster_plan_free(). */
int tsr_cluster_plan_make(const struct tsr_model_config *c, const struct tsr_cluster *cl,
                          struct tsr_cluster_plan *out);
void tsr_cluster_plan_free(struct tsr_cluster_plan *p);

/* Bytes in "80GiB", "80GB", "141G", "1.5TiB", "512MiB", "100B". K/M/G/T and KiB/MiB/GiB/TiB are
 * binary (2^10...), KB/MB/GB/TB decimal (10^3...); case-insensitive; a unit is required.
 * 0 or TSR_EINVAL with a message. */
int tsr_plan_parse_size(const char *s, double *bytes);
/* Bytes per element of a weight or KV dtype name: bf16/f16 2, f32 4, fp8 1, int8 = q8_0 1.0625,
 * int4 = q4_0 0.5625, q4_1 0.625 (block formats count their scales: 2 or 4 bytes per 32).
 * 0 or TSR_EINVAL. */
int tsr_plan_dtype_bytes(const char *name, double *bytes);
/* "755.9 GiB", "504.0 KiB", "12 B": binary units, one decimal. Returns buf. */
const char *tsr_plan_format_size(double bytes, char *buf, size_t n);

#endif
