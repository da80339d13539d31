/* Model configuration of the Llama family (Llama 2 and 3, Mistral, Qwen2, SmolLM2), read from GGUF
 * metadata (architectures llama, mistral, qwen2, and with experts llama, qwen2moe, qwen3moe) or a
 * Hugging Face config.json, and the RoPE frequencies it implies. config.json of
 * mixture-of-experts (Mixtral, Qwen2/Qwen3-MoE, DeepSeek V2/V3, Kimi K2) and multi-head latent
 * attention (DeepSeek, Kimi K2) models is read too. Mixture-of-experts models and MLA run (on
 * the CPU, one rank), and DeepSeek's YaRN; another family's YaRN is read for `tessera plan`
 * only: opening such a model to run it is refused (tsr_config_check_runnable). A DeepSeek config
 * without kv_lora_rank (and without the other MLA sizes) is read as standard attention. */
#ifndef TSR_MODEL_CONFIG_H
#define TSR_MODEL_CONFIG_H

#include "kernels/backend.h"
#include "model/gguf.h"

/* YaRN runs as DeepSeek's modelling code computes it (DeepSeek V2/V3, Kimi K2; see
 * tsr_rope_inv_freq and tsr_config_attn_scale); another family's YaRN is read for planning. */
enum tsr_rope_scaling { TSR_ROPE_NONE, TSR_ROPE_LINEAR, TSR_ROPE_LLAMA3, TSR_ROPE_YARN };

/* How a checkpoint's projection matrices are quantized (quantization_config). */
enum tsr_weight_quant { TSR_WQ_NONE, TSR_WQ_FP8, TSR_WQ_INT8 };

/* Upper bounds on the sizes a config may declare, from the largest real models with 4x or more of
 * headroom. They are checked as the config is read, before anything is allocated from it (the
 * shard plan's memory grows with layers x ranks, a tokenizer's with the vocabulary), and exceeding
 * one is TSR_EINVAL naming the field, its value and the bound. Largest known: layers 126 (Llama
 * 3.1 405B; our 1T planning shape has 160), hidden 16384 (405B; 20480 in the 1T shape), FFN 53248
 * (405B; 73728 PaLM 540B; 86016 in the 1T shape), heads 128 (405B, DeepSeek V3; 160 in the 1T
 * shape), vocabulary 262144 (Gemma 3), context 10M (Llama 4 Scout), experts 384 (Kimi K2). */
#define TSR_MAX_LAYERS    1024
#define TSR_MAX_DIM       65536
#define TSR_MAX_FFN_DIM   (1 << 18)
#define TSR_MAX_HEADS     1024
#define TSR_MAX_HEAD_DIM  512 /* the attention kernels' limit; real models use 64-256 */
#define TSR_MAX_VOCAB     (1 << 20)
#define TSR_MAX_CONTEXT   (1 << 24)
#define TSR_MAX_EXPERTS   4096
#define TSR_MAX_LORA_RANK 16384 /* MLA's q/kv compression ranks; DeepSeek V3 has 1536 and 512 */

struct tsr_model_config {
    char arch[32]; /* "llama", "qwen2", "mistral" */
    int n_layer;   /* transformer blocks */
    int dim;       /* hidden size */
    int ffn_dim;   /* intermediate size of the SwiGLU MLP */
    int n_head;    /* query heads */
    int n_kv_head; /* key/value heads (GQA when < n_head) */
    int head_dim;  /* usually dim / n_head */
    int n_vocab;
    int n_ctx_train; /* context length the model was trained for */
    float norm_eps;  /* RMSNorm epsilon */
    float rope_theta;
    int rope_neox; /* 1: rotate halves (HF layout, Qwen2 GGUF); 0: adjacent pairs (llama GGUF) */
    enum tsr_rope_scaling rope_scaling;
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_orig_ctx; /* llama3 and yarn: original_max_position_embeddings */
    /* yarn: beta_fast, beta_slow (correction range, 32 and 1 by default), mscale and
     * mscale_all_dim (1 and 0) */
    float rope_beta_fast, rope_beta_slow, rope_mscale, rope_mscale_all_dim;
    int tied_embeddings; /* no separate output matrix: the LM head is the embedding */
    int qkv_bias;        /* Q, K and V projections carry a bias (Qwen2) */
    int qk_norm;         /* each head's q and k RMS-normalised (head_dim weights) before RoPE
                            (Qwen3-MoE: self_attn.q_norm, k_norm) */

    /* Mixture of experts (all 0 when dense). Layers [n_dense_layer, n_layer) replace the SwiGLU
     * MLP (ffn_dim) by a router (n_expert x dim) choosing n_expert_used of n_expert routed
     * SwiGLU experts of moe_ffn_dim each, plus a shared expert MLP of shared_ffn_dim (0: none;
     * DeepSeek: n_shared_experts x moe_intermediate_size) that every token goes through. */
    int n_expert, n_expert_used, moe_ffn_dim;
    int n_dense_layer;      /* DeepSeek's first_k_dense_replace: leading layers with ffn_dim */
    int shared_ffn_dim;     /* 0: no shared expert */
    int shared_expert_gate; /* qwen2_moe: a sigmoid gate (1 x dim) scales the shared expert */
    /* Routing (kernels/backend.h struct tsr_moe_routing computes it). Scores are the softmax of
     * the router's logits (Mixtral, Qwen, DeepSeek V2) or, with moe_sigmoid (DeepSeek V3's
     * scoring_func "sigmoid"), each logit's sigmoid, to which the layer's
     * e_score_correction_bias is added for choosing only. With moe_n_group > 0 only the
     * moe_topk_group best of n_group equal groups of experts are eligible. The chosen scores are
     * renormalised to sum 1 when moe_norm_topk (Mixtral always; norm_topk_prob otherwise), then
     * multiplied by moe_scale (routed_scaling_factor; 1 when absent). */
    int moe_sigmoid, moe_norm_topk, moe_n_group, moe_topk_group;
    float moe_scale;
    /* Multi-head latent attention (DeepSeek V2/V3, Kimi K2; kv_lora_rank 0 when not). K and V
     * come from a kv_lora_rank latent plus one shared qk_rope_head_dim RoPE key, which is what
     * the cache holds; queries from a q_lora_rank latent (0: a plain dim -> heads projection).
     * head_dim is then qk_nope_head_dim + qk_rope_head_dim (the query/key width); RoPE turns
     * the qk_rope_head_dim parts only, adjacent pairs (rope_neox 0). Runs on the CPU, one rank
     * (worker/forward.c, kernels/backend.h tsr_op_mla_attention). */
    int q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim;

    /* config.json's quantization_config: what the projection matrices' codes are (activations
     * stay as they are in either case, so activation schemes and input_scale tensors change
     * nothing). TSR_WQ_FP8: quant_method "fp8", E4M3 codes with F32/BF16/F16 scales that multiply
     * them; fp8_block its weight_block_size [rows, cols], the block a weight_scale_inv scale
     * covers ({0, 0} when absent). TSR_WQ_INT8: quant_method "compressed-tensors" in format
     * "int-quantized", symmetric int8 codes with per-channel, per-tensor or per-group scales;
     * int8_group the group strategy's group_size (0 when no config group has one). Any other
     * quantization_config is TSR_EUNSUPPORTED when read. */
    enum tsr_weight_quant weight_quant;
    int fp8_block[2];
    int int8_group;
};

/* Read the config; the tokenizer's vocabulary size is the fallback for n_vocab. Both validate
 * (tsr_config_validate) before returning. Errors name the missing or bad field: TSR_EFORMAT for a
 * missing, mistyped or zero one, TSR_EINVAL for one over its bound (TSR_MAX_*), TSR_EUNSUPPORTED
 * for what tessera does not compute (an unknown rope_scaling, experts in a qwen2 GGUF, a
 * quantization_config other than "fp8" and compressed-tensors' "int-quantized" int8). A missing
 * context length is taken as 4096 with a warning on stderr. */
int tsr_config_from_gguf(const tsr_gguf_t *g, struct tsr_model_config *c);
int tsr_config_from_json(const char *config_json_path, struct tsr_model_config *c);
/* The same over config.json's text (len bytes; tests, fuzzing); name is used in messages. */
int tsr_config_from_json_text(const char *text, size_t len, const char *name,
                              struct tsr_model_config *c);
/* Every config tessera reads, from any source: a path ending in .json is a config.json; a
 * directory holding a config.json is read through it; anything else is opened as a model
 * (tsr_model_open: a GGUF reads only its header). `plan` and `generate` both see a model through
 * this one reading. Defined in model.c. */
int tsr_config_load(const char *spec, struct tsr_model_config *c);
/* Checks sizes are positive, within the bounds and consistent (n_head % n_kv_head == 0, head_dim
 * even, ...), and that the floats are finite and positive; for experts 1 <= n_expert_used <=
 * n_expert, n_dense_layer < n_layer, routing groups that divide the experts (at least 2 each
 * when scores are sigmoids: a group's score is its best two) and leave n_expert_used eligible,
 * a finite positive moe_scale; for MLA the head dims and ranks within their bounds. */
int tsr_config_validate(const struct tsr_model_config *c);
/* 0 if tessera can run the model; TSR_EUNSUPPORTED naming what it cannot (YaRN outside the
 * DeepSeek family, or with mscale other than mscale_all_dim, which would scale its cos and sin):
 * such a config can be planned but not run yet. name prefixes the message. Every path that runs
 * a model checks this right after reading the config, before any tensor (open_gguf and open_hf
 * in model.c; synthetic shapes have neither); `plan` does not. */
int tsr_config_check_runnable(const struct tsr_model_config *c, const char *name);
/* The routing of a MoE model's expert layers, for tsr_op_moe / tsr_moe_route. */
void tsr_config_moe_routing(const struct tsr_model_config *c, struct tsr_moe_routing *r);
/* Layers [n_dense_layer, n_layer) of a MoE model; 0 when dense. */
int tsr_config_n_moe_layer(const struct tsr_model_config *c);

/* The width RoPE turns in a query or key head: head_dim, or MLA's qk_rope_head_dim. */
int tsr_config_rope_dim(const struct tsr_model_config *c);
/* One layer's KV cache rows a position: 2 (K and V, n_kv_head heads of head_dim each) or with
 * MLA 1 (the latent row every head shares: one head of kv_lora_rank + qk_rope_head_dim). *heads
 * and *width are tsr_kv_row_bytes's arguments for a rank holding n_kv_head KV heads. */
int tsr_config_kv_rows(const struct tsr_model_config *c, int n_kv_head, int *heads, int *width);

/* The softmax scale: 1/sqrt(head_dim), times yarn_get_mscale(factor, mscale_all_dim)^2 under
 * DeepSeek's YaRN with a nonzero mscale_all_dim. */
float tsr_config_attn_scale(const struct tsr_model_config *c);

/* RoPE inverse frequencies, tsr_config_rope_dim/2 of them, with the configured scaling applied
 * (YaRN: DeepSeek's yarn_find_correction_range and linear ramp between interpolated and
 * extrapolated frequencies).
 * freq_factors (head_dim/2, may be NULL) divides them, as GGUF's rope_freqs.weight does. */
void tsr_rope_inv_freq(const struct tsr_model_config *c, const float *freq_factors, float *out);

/* Parameter count and bytes of weights at a given bits-per-weight, for plans and progress. */
double tsr_config_n_params(const struct tsr_model_config *c);

#endif
