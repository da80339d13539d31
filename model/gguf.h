/* GGUF v3 reader (v2 accepted too). The file is mmap'ed read-only; tensor data pointers point into
 * the mapping and stay valid until tsr_gguf_close(). Every count, length and offset read from the
 * file is checked against the file size with overflow-safe arithmetic before use: a malformed file
 * gives TSR_EFORMAT (or TSR_EUNSUPPORTED for a tensor type we do not handle) and a message naming
 * the file and what is wrong, never a crash.
 *
 * Layout: magic "GGUF", u32 version, u64 n_tensors, u64 n_kv, then n_kv of { string key, u32 type,
 * value }, then n_tensors of { string name, u32 n_dims, u64 dims[n_dims], u32 type, u64 offset },
 * then padding to general.alignment (default 32), then the tensor data. Strings are u64 length +
 * bytes (not NUL-terminated). */
#ifndef TSR_MODEL_GGUF_H
#define TSR_MODEL_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"

typedef struct tsr_gguf tsr_gguf_t;

/* GGUF metadata value types, as numbered in the file. */
enum tsr_gguf_vtype {
    TSR_GGUF_U8 = 0,
    TSR_GGUF_I8 = 1,
    TSR_GGUF_U16 = 2,
    TSR_GGUF_I16 = 3,
    TSR_GGUF_U32 = 4,
    TSR_GGUF_I32 = 5,
    TSR_GGUF_F32 = 6,
    TSR_GGUF_BOOL = 7,
    TSR_GGUF_STRING = 8,
    TSR_GGUF_ARRAY = 9,
    TSR_GGUF_U64 = 10,
    TSR_GGUF_I64 = 11,
    TSR_GGUF_F64 = 12,
};

/* A string inside the mapping: not NUL-terminated. */
struct tsr_str {
    const char *p;
    size_t n;
};

#define TSR_MAX_DIMS 4

struct tsr_gguf_tensor {
    char *name;               /* NUL-terminated copy, owned by the reader */
    uint32_t n_dims;          /* 1..4 */
    int64_t ne[TSR_MAX_DIMS]; /* ne[0] is the contiguous (innermost) dimension; unused = 1 */
    enum tsr_dtype type;
    uint64_t offset;  /* from the start of the data section */
    uint64_t nbytes;  /* checked: offset + nbytes lies inside the file */
    const void *data; /* into the mapping */
};

/* Opens and validates path. On failure returns a negative code, *out = NULL, and the message
 * (tsr_last_error) names the file. Caller frees with tsr_gguf_close(). */
int tsr_gguf_open(const char *path, tsr_gguf_t **out);
/* The same over a caller-owned buffer that must outlive the reader (tests, fuzzing). name is
 * used in messages. */
int tsr_gguf_open_mem(const void *buf, size_t len, const char *name, tsr_gguf_t **out);
void tsr_gguf_close(tsr_gguf_t *g);

uint32_t tsr_gguf_version(const tsr_gguf_t *g);
uint32_t tsr_gguf_alignment(const tsr_gguf_t *g);

/* Metadata. Each getter returns 0, TSR_ENOTFOUND if the key is absent, or TSR_EFORMAT if the
 * value's type does not convert (ints convert among themselves and to float, bool to int). */
uint64_t tsr_gguf_n_kv(const tsr_gguf_t *g);
const char *tsr_gguf_kv_key(const tsr_gguf_t *g, uint64_t i); /* NUL-terminated; NULL if i out */
enum tsr_gguf_vtype tsr_gguf_kv_type(const tsr_gguf_t *g, uint64_t i); /* (enum)-1 if i out */
int tsr_gguf_find_kv(const tsr_gguf_t *g, const char *key);            /* index, or -1 */
int tsr_gguf_get_int(const tsr_gguf_t *g, const char *key, int64_t *out);
int tsr_gguf_get_float(const tsr_gguf_t *g, const char *key, double *out);
int tsr_gguf_get_str(const tsr_gguf_t *g, const char *key, struct tsr_str *out);
/* Arrays: element type and length, then elements by index (same conversions as above; an index
 * past the end is TSR_ERANGE). Arrays of arrays report elem TSR_GGUF_ARRAY and their length; their
 * contents are checked at open but not exposed. arr_str is O(1) per index. */
int tsr_gguf_get_arr(const tsr_gguf_t *g, const char *key, enum tsr_gguf_vtype *elem, uint64_t *n);
int tsr_gguf_arr_int(const tsr_gguf_t *g, const char *key, uint64_t i, int64_t *out);
int tsr_gguf_arr_float(const tsr_gguf_t *g, const char *key, uint64_t i, double *out);
int tsr_gguf_arr_str(const tsr_gguf_t *g, const char *key, uint64_t i, struct tsr_str *out);

/* Tensors. */
uint64_t tsr_gguf_n_tensors(const tsr_gguf_t *g);
const struct tsr_gguf_tensor *tsr_gguf_tensor(const tsr_gguf_t *g, uint64_t i); /* NULL if out */
const struct tsr_gguf_tensor *tsr_gguf_find_tensor(const tsr_gguf_t *g, const char *name);

#endif
