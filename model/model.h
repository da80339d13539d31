/* A model, whatever it came from: a GGUF file, a Hugging Face directory, or a synthetic shape with
 * seeded random weights (DESIGN §4). Tensors are named the GGUF way whatever the source:
 *   token_embd.weight (vocab, dim)      output_norm.weight (dim)      output.weight (vocab, dim)
 *   blk.N.attn_norm.weight  blk.N.attn_{q,k,v}.weight [.bias]  blk.N.attn_output.weight
 *   blk.N.ffn_norm.weight   blk.N.ffn_{gate,up,down}.weight     rope_freqs.weight (optional)
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
    int generated; /* data is NULL: a synthetic tensor, made on demand by tsr_model_read() */
};

/* spec: a .gguf path, a Hugging Face directory, or "synthetic:NAME[:DTYPE]" (tsr_synthetic_names
 * lists the names; DTYPE f32|f16|bf16|q8_0|q4_0|q4_1). Errors name the file and the problem.
 * Caller frees with tsr_model_free(). */
int tsr_model_open(const char *spec, tsr_model_t **out);
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
 * (Q8_0, Q4_0, Q4_1) col0 and n_cols fall on its 32-element blocks. A synthetic tensor's slice is
 * generated (the same bytes as those elements of the whole tensor: each element depends only on
 * the seed, the name and its index); a file's is copied from the mapping. TSR_ENOTFOUND,
 * TSR_EINVAL for a range outside the tensor or off its blocks. */
int tsr_model_read(tsr_model_t *m, const char *name, int64_t row0, int64_t n_rows, int64_t col0,
                   int64_t n_cols, void *dst);

/* Comma-separated synthetic shape names, for help text. */
const char *tsr_synthetic_names(void);

#endif
