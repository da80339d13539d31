/* Safetensors reader and Hugging Face model directories.
 *
 * A .safetensors file: u64 header length N (little endian), N bytes of JSON mapping tensor names to
 * {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the byte after the header)
 * plus an optional "__metadata__" object. Files are mmap'ed; every offset, shape and size is
 * checked against the file with overflow-safe arithmetic (shape product × element size must equal
 * end - begin; ranges inside the data section). Supported dtypes: F32, F16, BF16, and F8_E4M3 and
 * I8 as bare codes (`codes` below: one byte an element, no scales; an FP8 or int8 checkpoint's
 * scale tensors are separate F32/BF16/F16 tensors that model.c pairs with them); others (F8_E5M2,
 * F8_E8M0, the other integer types, ...) give TSR_EUNSUPPORTED naming the tensor. A malformed file
 * is TSR_EFORMAT with a message naming the file and what is wrong, never a crash.
 *
 * A directory holds config.json, tokenizer.json and either model.safetensors or several shards
 * listed by model.safetensors.index.json ("weight_map": tensor name → file name). */
#ifndef TSR_MODEL_SAFETENSORS_H
#define TSR_MODEL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"

typedef struct tsr_st tsr_st_t; /* one file or a whole directory's shards */

/* Bare quantized codes, one byte an element, worth nothing without their checkpoint's scales. */
enum tsr_st_codes {
    TSR_ST_NO_CODES, /* a float tensor, read by its type */
    TSR_ST_E4M3,     /* dtype F8_E4M3: OCP E4M3 codes (FP8 checkpoints) */
    TSR_ST_INT8,     /* dtype I8: two's-complement int8 codes (int8 checkpoints) */
};

struct tsr_st_tensor {
    char *name;      /* NUL-terminated, owned by the reader */
    uint32_t n_dims; /* 0..4 (0 = scalar) */
    int64_t ne[4];   /* ne[0] innermost: the reverse of the JSON "shape"; unused = 1 */
    /* TSR_F32, TSR_F16, TSR_BF16; with codes, the blocks they load as: TSR_F8_E4M3 for E4M3
     * codes, TSR_Q8_0 for int8 ones */
    enum tsr_dtype type;
    /* Not TSR_ST_NO_CODES for dtypes F8_E4M3 and I8: data holds bare codes, one byte an element
     * (nbytes = the element count), with no scales: not tessera's blocks of `type`, so never
     * decode it by type. What a code is worth comes from the checkpoint's scale tensors. */
    enum tsr_st_codes codes;
    uint64_t nbytes;
    const void *data; /* into the mapping */
};

/* One file. Caller frees with tsr_st_close(). */
int tsr_st_open(const char *path, tsr_st_t **out);
/* A caller-owned buffer (tests, fuzzing); name is used in messages. */
int tsr_st_open_mem(const void *buf, size_t len, const char *name, tsr_st_t **out);
/* A Hugging Face directory: model.safetensors.index.json if present, else model.safetensors,
 * else every *.safetensors in it. Tensors of all shards are visible through one reader. */
int tsr_st_open_dir(const char *dir, tsr_st_t **out);
void tsr_st_close(tsr_st_t *st);

uint64_t tsr_st_n_tensors(const tsr_st_t *st);
const struct tsr_st_tensor *tsr_st_tensor(const tsr_st_t *st, uint64_t i);
const struct tsr_st_tensor *tsr_st_find_tensor(const tsr_st_t *st, const char *name);

#endif
