/* A model, whatever it came from: a GGUF file, a Hugging Face directory, or a synthetic shape with
 * seeded random weights (DESIGN §4).
 *
 * A Hugging Face directory's tensors are F32, F16 or BF16 and read as they are, except in an FP8
 * checkpoint (config.json's quantization_config quant_method "fp8"): its projection matrices
 * (attn_{q,k,v,output}, MLA's attn_{q_a,q_b,kv_a_mqa,kv_b}, ffn_{gate,up,down}) may be safetensors
 * F8_E4M3 codes with F32/BF16/F16 scales that multiply them, <weight>_scale per-tensor ([] or [1])
 * or per-channel ([rows] or [rows, 1]), or <weight>_scale_inv per block of weight_block_size [b0,
 * b1] (b1 a multiple of 32; shape [ceil(rows / b0), ceil(cols / b1)]). Such a matrix reads as
 * TSR_F8_E4M3 (generated): each 32-weight block its scale and its codes as they are, made by
 * tsr_model_read for any slice on 32-column blocks, so loading rounds nothing. Likewise an int8
 * checkpoint (quant_method "compressed-tensors", format "int-quantized"): safetensors I8 codes
 * with a <weight>_scale per-tensor, per-channel or per group of group_size columns ([rows,
 * ceil(cols / group_size)]), and an optional all-zero <weight>_zero_point, read as TSR_Q8_0 blocks
 * (each scale must be exactly an f16, unless the model is converted as it opens:
 * tsr_model_open_quantized). Embeddings, lm_head and norms in FP8 or int8, a missing or ill-shaped
 * scale, one of another dtype or not finite, codes without their quantization_config: errors at
 * open naming the tensor.
 *
 * Tensors are named the GGUF way whatever the source:
 *   token_embd.weight (vocab, dim)      output_norm.weight (dim)      output.weight (vocab, dim)
 *   blk.N.attn_norm.weight  blk.N.attn_{q,k,v}.weight [.bias]  blk.N.attn_output.weight
 *   blk.N.ffn_norm.weight   blk.N.ffn_{gate,up,down}.weight     rope_freqs.weight (optional)
 *   MLA (llama.cpp's deepseek2 names): blk.N.attn_{q_a,q_a_norm,q_b,kv_a_mqa,kv_a_norm,kv_b}.weight
 *   for Hugging Face's self_attn.{q_a_proj,q_a_layernorm,q_b_proj,kv_a_proj_with_mqa,
 *   kv_a_layernorm,kv_b_proj}.weight
 * Shapes are (rows, cols) with cols contiguous, as kernels/backend.h expects. */
#ifndef TSR_MODEL_MODEL_H
#define TSR_MODEL_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "model/chat.h"
#include "model/config.h"
#include "model/tokenizer.h"

typedef struct tsr_model tsr_model_t;

struct tsr_tensor_view {
    enum tsr_dtype type;
    int64_t rows, cols; /* a vector has rows = 1 */
    const void *data;   /* into the file mapping, or memory the model owns */
    size_t nbytes;
    int mapped;    /* data is a read-only file mapping: its pages may be dropped (madvise) */
    int generated; /* data is NULL: a synthetic or converted tensor, made by tsr_model_read() */
};

/* The weight types by name, as --quantize and synthetic:NAME:TYPE take them. */
#define TSR_WEIGHT_TYPES "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, fp8"
/* One of TSR_WEIGHT_TYPES to its type ("fp8" is F8_E4M3 blocks); TSR_EINVAL naming them. */
int tsr_weight_type_parse(const char *s, enum tsr_dtype *out);

/* spec: a .gguf path, a Hugging Face directory, or "synthetic:NAME[:TYPE]" (tsr_synthetic_names
 * lists the names; TYPE one of TSR_WEIGHT_TYPES). Errors name the file and the problem.
 * Caller frees with tsr_model_free(). */
int tsr_model_open(const char *spec, tsr_model_t **out);
/* tsr_model_open then tsr_model_quantize(type), in one: an int8 checkpoint whose scales are not
 * all exactly f16s (which tsr_model_open refuses, naming one) opens when type >= 0, its matrices
 * then converted from code * scale in f32 even to Q8_0. */
int tsr_model_open_quantized(const char *spec, int type, tsr_model_t **out);

/* --quantize: from now on the blocks' projection matrices (attn_{q,k,v,output}, MLA's
 * attn_{q_a,q_b,kv_a_mqa,kv_b}, ffn_{gate,up,down}) read as `type` (a tsr_dtype; < 0: no change),
 * converted from the file's values: each row decoded to f32 (an FP8 checkpoint's: its TSR_F8_E4M3
 * blocks' values; to fp8 they stay as they are) and requantized by tsr_quantize_row_search as
 * tsr_model_read makes a slice, on every core: a rank requantizes only its slice's rows and columns
 * (of a column slice it still decodes whole rows, the blocks of the two types need not line up).
 * Embeddings, the output matrix and norms keep the file's types, as FP8 and int8 checkpoints keep
 * them in higher precision. For model files only; TSR_EINVAL when a matrix's width is not whole
 * blocks of the type. */
int tsr_model_quantize(tsr_model_t *m, int type);
void tsr_model_free(tsr_model_t *m);

const struct tsr_model_config *tsr_model_config(const tsr_model_t *m);
const char *tsr_model_name(const tsr_model_t *m);
/* The model's id for people and dashboards, from its spec: "models/SmolLM2-135M.Q4_1.gguf" →
 * "SmolLM2-135M.Q4_1", a directory's last name, a synthetic spec as it is (what the coordinator
 * calls the model without --served-model-name). At most cap bytes with the NUL. */
void tsr_model_id(const char *spec, char *out, size_t cap);
/* The tokenizer, or NULL for synthetic models (they take token ids). Owned by the model. */
const tsr_tokenizer_t *tsr_model_tokenizer(const tsr_model_t *m);
/* The chat template family; TSR_CHAT_NONE when the model has none. Owned by the model. */
const struct tsr_chat *tsr_model_chat(const tsr_model_t *m);
/* When the model's chat is TSR_CHAT_UNRECOGNISED: its template's family ("Gemma", "unknown", ...,
 * see tsr_chat_family); NULL otherwise. */
const char *tsr_model_chat_family(const tsr_model_t *m);

/* Looks a tensor up by its GGUF name. TSR_ENOTFOUND if absent (optional tensors: biases,
 * rope_freqs, output when embeddings are tied). A synthetic tensor's view has its type and shape
 * but no data (generated = 1): nothing is made until tsr_model_read() asks for a slice, so a rank
 * of a sharded group makes only its own share. */
int tsr_model_tensor(tsr_model_t *m, const char *name, struct tsr_tensor_view *out);

/* Writes rows [row0, row0 + n_rows) x columns [col0, col0 + n_cols) of a tensor into dst, row
 * after row: n_rows pieces of tsr_dtype_row_bytes(type, n_cols) bytes each. For a block type
 * col0 and n_cols fall on its blocks. A synthetic tensor's slice is generated (the same bytes as
 * those elements of the whole tensor: each element depends only on the seed, the name and its
 * index); a converted one (tsr_model_quantize) is requantized from the file's whole rows (the
 * same bytes as the whole tensor's, blocks being quantized alone); an FP8 or int8 checkpoint's
 * matrix is made from its codes and scales; a file's is copied from the mapping. TSR_ENOTFOUND,
 * TSR_EINVAL for a range outside the tensor or off its blocks. */
int tsr_model_read(tsr_model_t *m, const char *name, int64_t row0, int64_t n_rows, int64_t col0,
                   int64_t n_cols, void *dst);

/* Comma-separated synthetic shape names, for help text. */
const char *tsr_synthetic_names(void);

#endif
