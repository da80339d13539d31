#include "model/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/checked.h"
#include "common/status.h"
#include "model/files.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the GGUF reader assumes a little-endian host"
#endif

#define GGUF_DEFAULT_ALIGNMENT 32
/* Arrays of arrays are parsed and bounds-checked but not exposed; deeper nesting than this is a
 * malformed (or hostile) file, and the limit keeps the recursion shallow. */
#define GGUF_MAX_ARRAY_DEPTH 3
/* Smallest encodings, used to reject counts that cannot fit in the rest of the file before
 * allocating for them: a kv is { u64 key len, u32 type, >= 1 byte value }, a tensor info is
 * { u64 name len, u32 n_dims, >= 1 u64 dim, u32 type, u64 offset }, a nested array header is
 * { u32 type, u64 n }. */
#define GGUF_MIN_KV_BYTES     13
#define GGUF_MIN_TENSOR_BYTES 32
#define GGUF_MIN_ARRAY_BYTES  12
/* Upper bounds from what real GGUF files hold, with 8x or more of headroom. Each is checked after
 * the count is known to fit in the file and before anything is allocated for it; over one is
 * TSR_EINVAL naming the field, the value and the bound. Real files: 30-60 metadata keys; 1,138
 * tensors in Llama 3.1 405B, about 2,000 in per-expert MoE files; arrays as long as a vocabulary
 * or its merges (Gemma 3: 262,144 tokens); keys and tensor names under 100 bytes (llama.cpp caps
 * names at 63); chat templates under 50 KB; tokens and merges a few hundred bytes at most. */
#define GGUF_MAX_KV        4096
#define GGUF_MAX_TENSORS   65536
#define GGUF_MAX_ARRAY     (1u << 22)
#define GGUF_MAX_NAME      256
#define GGUF_MAX_STRING    (1u << 20)
#define GGUF_MAX_ARRAY_STR (1u << 16)

struct kv {
    char *key; /* NUL-terminated copy */
    enum tsr_gguf_vtype type;
    const uint8_t *val; /* scalar: the value bytes; string: the u64 length prefix */
    /* Arrays only. */
    enum tsr_gguf_vtype elem;
    uint64_t n;
    const uint8_t *arr;      /* first element */
    const uint8_t **strings; /* string arrays: each element's length prefix, for O(1) indexing */
};

struct tsr_gguf {
    char *name;
    const uint8_t *buf;
    size_t len;
    void *map; /* non-NULL when we own an mmap of len bytes */
    uint32_t version;
    uint32_t alignment;
    uint64_t data_start;

    uint64_t n_kv;
    struct kv *kv;
    struct kv **kv_sorted; /* by key, for bsearch */

    uint64_t n_tensors;
    struct tsr_gguf_tensor *tensors;
    struct tsr_gguf_tensor **tensors_sorted; /* by name, for bsearch */
};

/* ---- reading ---------------------------------------------------------------------------- */

struct cur {
    const uint8_t *p;
    size_t len;
    size_t pos; /* invariant: pos <= len */
    const char *name;
};

static size_t remaining(const struct cur *c)
{
    return c->len - c->pos;
}

static int need(struct cur *c, uint64_t n, const char *what)
{
    if (n > remaining(c))
        return tsr_errorf(TSR_EFORMAT,
                          "%s: truncated: %s needs %" PRIu64 " bytes at offset %zu, file is %zu "
                          "bytes",
                          c->name, what, n, c->pos, c->len);
    return 0;
}

static int rd_u32(struct cur *c, uint32_t *v, const char *what)
{
    int rc = need(c, 4, what);
    if (rc) return rc;
    memcpy(v, c->p + c->pos, 4);
    c->pos += 4;
    return 0;
}

static int rd_u64(struct cur *c, uint64_t *v, const char *what)
{
    int rc = need(c, 8, what);
    if (rc) return rc;
    memcpy(v, c->p + c->pos, 8);
    c->pos += 8;
    return 0;
}

/* A string of at most max bytes: u64 length + bytes. *s points at the bytes (inside the
 * buffer). */
static int rd_str(struct cur *c, struct tsr_str *s, const char *what, uint64_t max)
{
    uint64_t n;
    int rc = rd_u64(c, &n, what);
    if (rc) return rc;
    if (n > remaining(c))
        return tsr_errorf(TSR_EFORMAT,
                          "%s: %s: string length %" PRIu64 " at offset %zu runs past end of file "
                          "(%zu bytes)",
                          c->name, what, n, c->pos - 8, c->len);
    if (n > max)
        return tsr_errorf(TSR_EINVAL,
                          "%s: %s at offset %zu: string length %" PRIu64 " is over the limit of "
                          "%" PRIu64 " bytes",
                          c->name, what, c->pos - 8, n, max);
    s->p = (const char *)c->p + c->pos;
    s->n = (size_t)n;
    c->pos += (size_t)n;
    return 0;
}

/* A string that becomes a C string (keys, tensor names): embedded NULs would make two different
 * names compare equal, so they are rejected. */
static int rd_cstr(struct cur *c, char **out, const char *what)
{
    struct tsr_str s;
    size_t at = c->pos;
    int rc = rd_str(c, &s, what, GGUF_MAX_NAME);
    if (rc) return rc;
    if (memchr(s.p, 0, s.n))
        return tsr_errorf(TSR_EFORMAT, "%s: %s at offset %zu contains a NUL byte", c->name, what,
                          at);
    char *d = malloc(s.n + 1);
    if (!d) return tsr_errorf(TSR_ENOMEM, "%s: out of memory reading %s", c->name, what);
    memcpy(d, s.p, s.n);
    d[s.n] = 0;
    *out = d;
    return 0;
}

static const char *vtype_name(uint32_t t)
{
    static const char *const names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                        "bool", "string", "array", "u64", "i64", "f64"};
    return t < sizeof names / sizeof names[0] ? names[t] : "invalid";
}

/* Bytes of a scalar type; 0 for string, array and invalid types. */
static size_t scalar_size(uint32_t t)
{
    static const uint8_t sizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return t < sizeof sizes ? sizes[t] : 0;
}

static int vtype_valid(uint32_t t)
{
    return t <= TSR_GGUF_F64;
}

/* Checked once an array's length is known to fit the file (else it is malformed), before its
 * string index is allocated. */
static int array_bound(const struct cur *c, const char *key, uint64_t n)
{
    if (n > GGUF_MAX_ARRAY)
        return tsr_errorf(TSR_EINVAL,
                          "%s: key '%s': array length %" PRIu64 " is over the limit of %u "
                          "elements (the largest vocabularies have 262,144)",
                          c->name, key, n, GGUF_MAX_ARRAY);
    return 0;
}

/* Parses the body of an array value (element type, count, elements) at c. When kv is given (a
 * top-level array) its array fields are filled in; nested arrays are only checked. Every element
 * consumes at least one byte of the file, so the work is linear in the file size. */
static int parse_array(struct cur *c, const char *key, struct kv *kv, int depth)
{
    uint32_t et;
    uint64_t n;
    int rc;
    if (depth > GGUF_MAX_ARRAY_DEPTH)
        return tsr_errorf(TSR_EFORMAT, "%s: key '%s': arrays nested deeper than %d levels", c->name,
                          key, GGUF_MAX_ARRAY_DEPTH);
    if ((rc = rd_u32(c, &et, "array element type")) || (rc = rd_u64(c, &n, "array length")))
        return rc;
    if (!vtype_valid(et))
        return tsr_errorf(TSR_EFORMAT, "%s: key '%s': bad array element type %" PRIu32, c->name,
                          key, et);
    if (kv) {
        kv->elem = (enum tsr_gguf_vtype)et;
        kv->n = n;
        kv->arr = c->p + c->pos;
    }
    size_t at = c->pos;
    if (et == TSR_GGUF_STRING) {
        if (n > remaining(c) / 8)
            return tsr_errorf(TSR_EFORMAT,
                              "%s: key '%s': array of %" PRIu64 " strings at offset %zu cannot "
                              "fit in the %zu bytes left in the file",
                              c->name, key, n, at, remaining(c));
        if ((rc = array_bound(c, key, n))) return rc;
        if (kv && n) {
            kv->strings = malloc((size_t)n * sizeof *kv->strings);
            if (!kv->strings)
                return tsr_errorf(TSR_ENOMEM, "%s: key '%s': out of memory for %" PRIu64 " strings",
                                  c->name, key, n);
        }
        for (uint64_t i = 0; i < n; i++) {
            struct tsr_str s;
            if (kv) kv->strings[i] = c->p + c->pos;
            if ((rc = rd_str(c, &s, "array string", GGUF_MAX_ARRAY_STR))) return rc;
        }
        return 0;
    }
    if (et == TSR_GGUF_ARRAY) {
        if (n > remaining(c) / GGUF_MIN_ARRAY_BYTES)
            return tsr_errorf(TSR_EFORMAT,
                              "%s: key '%s': array of %" PRIu64 " arrays at offset %zu cannot "
                              "fit in the %zu bytes left in the file",
                              c->name, key, n, at, remaining(c));
        if ((rc = array_bound(c, key, n))) return rc;
        for (uint64_t i = 0; i < n; i++)
            if ((rc = parse_array(c, key, NULL, depth + 1))) return rc;
        return 0;
    }
    uint64_t bytes;
    if (tsr_mul_u64(n, scalar_size(et), &bytes) || bytes > remaining(c))
        return tsr_errorf(TSR_EFORMAT,
                          "%s: key '%s': array of %" PRIu64 " %s at offset %zu runs past end of "
                          "file (%zu bytes)",
                          c->name, key, n, vtype_name(et), at, c->len);
    if ((rc = array_bound(c, key, n))) return rc;
    c->pos += (size_t)bytes;
    return 0;
}

static int parse_kv(struct cur *c, struct kv *kv)
{
    uint32_t t;
    int rc;
    if ((rc = rd_cstr(c, &kv->key, "metadata key"))) return rc;
    if ((rc = rd_u32(c, &t, "metadata value type"))) return rc;
    if (!vtype_valid(t))
        return tsr_errorf(TSR_EFORMAT, "%s: key '%s': bad value type %" PRIu32 " at offset %zu",
                          c->name, kv->key, t, c->pos - 4);
    kv->type = (enum tsr_gguf_vtype)t;
    kv->val = c->p + c->pos;
    if (t == TSR_GGUF_ARRAY) return parse_array(c, kv->key, kv, 1);
    if (t == TSR_GGUF_STRING) {
        struct tsr_str s;
        return rd_str(c, &s, "metadata string value", GGUF_MAX_STRING);
    }
    if ((rc = need(c, scalar_size(t), "metadata value"))) return rc;
    c->pos += scalar_size(t);
    return 0;
}

/* ---- conversions ------------------------------------------------------------------------ */

/* Scalar at p of type t to int64: 0, or -1 if t does not convert, -2 if out of range. */
static int scalar_int(uint32_t t, const uint8_t *p, int64_t *out)
{
    union {
        uint8_t u8;
        int8_t i8;
        uint16_t u16;
        int16_t i16;
        uint32_t u32;
        int32_t i32;
        uint64_t u64;
        int64_t i64;
    } v;
    size_t sz = scalar_size(t);
    if (!sz || t == TSR_GGUF_F32 || t == TSR_GGUF_F64) return -1;
    memcpy(&v, p, sz);
    switch (t) {
    case TSR_GGUF_U8:
        *out = v.u8;
        return 0;
    case TSR_GGUF_I8:
        *out = v.i8;
        return 0;
    case TSR_GGUF_U16:
        *out = v.u16;
        return 0;
    case TSR_GGUF_I16:
        *out = v.i16;
        return 0;
    case TSR_GGUF_U32:
        *out = v.u32;
        return 0;
    case TSR_GGUF_I32:
        *out = v.i32;
        return 0;
    case TSR_GGUF_BOOL:
        *out = v.u8 != 0;
        return 0;
    case TSR_GGUF_U64:
        if (v.u64 > INT64_MAX) return -2;
        *out = (int64_t)v.u64;
        return 0;
    case TSR_GGUF_I64:
        *out = v.i64;
        return 0;
    }
    return -1;
}

static int scalar_float(uint32_t t, const uint8_t *p, double *out)
{
    if (t == TSR_GGUF_F32) {
        float f;
        memcpy(&f, p, 4);
        *out = f;
        return 0;
    }
    if (t == TSR_GGUF_F64) {
        memcpy(out, p, 8);
        return 0;
    }
    if (t == TSR_GGUF_BOOL) return -1;
    if (t == TSR_GGUF_U64) {
        uint64_t u;
        memcpy(&u, p, 8);
        *out = (double)u;
        return 0;
    }
    int64_t i;
    if (scalar_int(t, p, &i)) return -1;
    *out = (double)i;
    return 0;
}

static void read_str_at(const uint8_t *p, struct tsr_str *out)
{
    uint64_t n;
    memcpy(&n, p, 8);
    out->p = (const char *)p + 8;
    out->n = (size_t)n;
}

/* ---- index ------------------------------------------------------------------------------ */

static int cmp_kv(const void *a, const void *b)
{
    return strcmp((*(struct kv *const *)a)->key, (*(struct kv *const *)b)->key);
}

static int cmp_tensor(const void *a, const void *b)
{
    return strcmp((*(struct tsr_gguf_tensor *const *)a)->name,
                  (*(struct tsr_gguf_tensor *const *)b)->name);
}

static const struct kv *lookup(const tsr_gguf_t *g, const char *key)
{
    size_t lo = 0, hi = (size_t)g->n_kv;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(key, g->kv_sorted[mid]->key);
        if (c == 0) return g->kv_sorted[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* ---- tensors ---------------------------------------------------------------------------- */

/* GGML type ids we do not handle, named in messages so a person knows what the file holds. */
static const char *ggml_type_name(uint32_t t)
{
    static const char *const names[] = {
        [0] = "F32",     [1] = "F16",      [2] = "Q4_0",   [3] = "Q4_1",    [6] = "Q5_0",
        [7] = "Q5_1",    [8] = "Q8_0",     [9] = "Q8_1",   [10] = "Q2_K",   [11] = "Q3_K",
        [12] = "Q4_K",   [13] = "Q5_K",    [14] = "Q6_K",  [15] = "Q8_K",   [16] = "IQ2_XXS",
        [17] = "IQ2_XS", [18] = "IQ3_XXS", [19] = "IQ1_S", [20] = "IQ4_NL", [21] = "IQ3_S",
        [22] = "IQ2_S",  [23] = "IQ4_XS",  [24] = "I8",    [25] = "I16",    [26] = "I32",
        [27] = "I64",    [28] = "F64",     [29] = "IQ1_M", [30] = "BF16",   [34] = "TQ1_0",
        [35] = "TQ2_0",  [39] = "MXFP4",
    };
    if (t < sizeof names / sizeof names[0] && names[t]) return names[t];
    return "unknown";
}

static int parse_tensor_info(struct cur *c, struct tsr_gguf_tensor *t)
{
    uint32_t type;
    int rc;
    if ((rc = rd_cstr(c, &t->name, "tensor name"))) return rc;
    if ((rc = rd_u32(c, &t->n_dims, "tensor n_dims"))) return rc;
    if (t->n_dims < 1 || t->n_dims > TSR_MAX_DIMS)
        return tsr_errorf(TSR_EFORMAT, "%s: tensor '%s': n_dims %" PRIu32 " not in 1..%d", c->name,
                          t->name, t->n_dims, TSR_MAX_DIMS);
    for (int d = 0; d < TSR_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        uint64_t v;
        if ((rc = rd_u64(c, &v, "tensor dimension"))) return rc;
        if (v < 1 || v > INT64_MAX)
            return tsr_errorf(TSR_EFORMAT,
                              "%s: tensor '%s': dimension %" PRIu32 " is %" PRIu64
                              " (must be 1..2^63-1)",
                              c->name, t->name, d, v);
        t->ne[d] = (int64_t)v;
    }
    if ((rc = rd_u32(c, &type, "tensor type")) || (rc = rd_u64(c, &t->offset, "tensor offset")))
        return rc;
    if (type >= TSR_DTYPE_OWN || !tsr_dtype_valid((int)type))
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "%s: tensor '%s': type %" PRIu32 " (%s) is not supported (supported: "
                          "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)",
                          c->name, t->name, type, ggml_type_name(type));
    t->type = (enum tsr_dtype)type;

    /* Element count and size, all overflow-checked: rows = ne[1]*ne[2]*ne[3], nbytes =
     * (ne[0] / block) * block_bytes * rows, and the element count must fit in int64. */
    uint64_t count = (uint64_t)t->ne[0], rows = 1;
    for (uint32_t d = 1; d < t->n_dims; d++)
        if (tsr_mul_u64(rows, (uint64_t)t->ne[d], &rows) ||
            tsr_mul_u64(count, (uint64_t)t->ne[d], &count) || count > INT64_MAX)
            return tsr_errorf(TSR_EFORMAT,
                              "%s: tensor '%s': element count overflows ([%" PRId64 ", %" PRId64
                              ", %" PRId64 ", %" PRId64 "])",
                              c->name, t->name, t->ne[0], t->ne[1], t->ne[2], t->ne[3]);
    int be = tsr_dtype_block_elems(t->type);
    if (t->ne[0] % be)
        return tsr_errorf(TSR_EFORMAT,
                          "%s: tensor '%s': row length %" PRId64 " is not a multiple of the %s "
                          "block size %d",
                          c->name, t->name, t->ne[0], tsr_dtype_name(t->type), be);
    uint64_t row_bytes;
    if (tsr_mul_u64((uint64_t)(t->ne[0] / be), tsr_dtype_block_bytes(t->type), &row_bytes) ||
        tsr_mul_u64(row_bytes, rows, &t->nbytes))
        return tsr_errorf(TSR_EFORMAT, "%s: tensor '%s': byte size overflows", c->name, t->name);
    return 0;
}

/* ---- open ------------------------------------------------------------------------------- */

static void gguf_free(tsr_gguf_t *g)
{
    if (!g) return;
    if (g->kv)
        for (uint64_t i = 0; i < g->n_kv; i++) {
            free(g->kv[i].key);
            free(g->kv[i].strings);
        }
    if (g->tensors)
        for (uint64_t i = 0; i < g->n_tensors; i++) free(g->tensors[i].name);
    free(g->kv);
    free(g->kv_sorted);
    free(g->tensors);
    free(g->tensors_sorted);
    if (g->map) munmap(g->map, g->len);
    free(g->name);
    free(g);
}

static int parse(tsr_gguf_t *g)
{
    struct cur c = {.p = g->buf, .len = g->len, .pos = 0, .name = g->name};
    int rc;

    if (g->len < 4)
        return tsr_errorf(TSR_EFORMAT, "%s: file is %zu bytes, too short to be a GGUF file",
                          g->name, g->len);
    if (memcmp(g->buf, "GGUF", 4) != 0)
        return tsr_errorf(TSR_EFORMAT, "%s: not a GGUF file (bad magic)", g->name);
    c.pos = 4;
    if ((rc = rd_u32(&c, &g->version, "version"))) return rc;
    if (g->version != 2 && g->version != 3)
        return tsr_errorf(TSR_EUNSUPPORTED,
                          "%s: GGUF version %" PRIu32 " is not supported (only 2 and 3)%s", g->name,
                          g->version, (g->version & 0xffff) == 0 ? " (a big-endian file?)" : "");
    uint64_t n_tensors, n_kv;
    if ((rc = rd_u64(&c, &n_tensors, "tensor count")) || (rc = rd_u64(&c, &n_kv, "kv count")))
        return rc;
    /* Reject counts that cannot fit in the file before allocating for them. */
    if (n_kv > remaining(&c) / GGUF_MIN_KV_BYTES || n_kv > INT_MAX)
        return tsr_errorf(TSR_EFORMAT,
                          "%s: kv count %" PRIu64 " is absurd: cannot fit in the %zu bytes after "
                          "the header",
                          g->name, n_kv, remaining(&c));
    if (n_tensors > remaining(&c) / GGUF_MIN_TENSOR_BYTES)
        return tsr_errorf(TSR_EFORMAT,
                          "%s: tensor count %" PRIu64 " is absurd: cannot fit in the %zu bytes "
                          "after the header",
                          g->name, n_tensors, remaining(&c));
    if (n_kv > GGUF_MAX_KV)
        return tsr_errorf(TSR_EINVAL,
                          "%s: kv count %" PRIu64 " is over the limit of %d (real files have "
                          "under 100)",
                          g->name, n_kv, GGUF_MAX_KV);
    if (n_tensors > GGUF_MAX_TENSORS)
        return tsr_errorf(TSR_EINVAL,
                          "%s: tensor count %" PRIu64 " is over the limit of %d (Llama 3.1 405B "
                          "has 1,138)",
                          g->name, n_tensors, GGUF_MAX_TENSORS);

    g->kv = calloc(n_kv ? (size_t)n_kv : 1, sizeof *g->kv);
    g->kv_sorted = malloc((n_kv ? (size_t)n_kv : 1) * sizeof *g->kv_sorted);
    if (!g->kv || !g->kv_sorted)
        return tsr_errorf(TSR_ENOMEM, "%s: out of memory for %" PRIu64 " kvs", g->name, n_kv);
    for (uint64_t i = 0; i < n_kv; i++) {
        g->n_kv = i + 1; /* so gguf_free() frees what parse_kv() allocated */
        if ((rc = parse_kv(&c, &g->kv[i]))) return rc;
        g->kv_sorted[i] = &g->kv[i];
    }
    qsort(g->kv_sorted, (size_t)n_kv, sizeof *g->kv_sorted, cmp_kv);
    for (uint64_t i = 1; i < n_kv; i++)
        if (strcmp(g->kv_sorted[i - 1]->key, g->kv_sorted[i]->key) == 0)
            return tsr_errorf(TSR_EFORMAT, "%s: duplicate metadata key '%s'", g->name,
                              g->kv_sorted[i]->key);

    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const struct kv *al = lookup(g, "general.alignment");
    if (al) {
        int64_t a;
        if (al->type == TSR_GGUF_BOOL || scalar_int(al->type, al->val, &a) != 0)
            return tsr_errorf(TSR_EFORMAT, "%s: general.alignment is a %s, not an integer", g->name,
                              vtype_name(al->type));
        if (a <= 0 || a > (int64_t)1 << 31 || (a & (a - 1)) != 0)
            return tsr_errorf(TSR_EFORMAT,
                              "%s: general.alignment %" PRId64 " is not a nonzero power of two",
                              g->name, a);
        g->alignment = (uint32_t)a;
    }

    g->tensors = calloc(n_tensors ? (size_t)n_tensors : 1, sizeof *g->tensors);
    g->tensors_sorted = malloc((n_tensors ? (size_t)n_tensors : 1) * sizeof *g->tensors_sorted);
    if (!g->tensors || !g->tensors_sorted)
        return tsr_errorf(TSR_ENOMEM, "%s: out of memory for %" PRIu64 " tensors", g->name,
                          n_tensors);
    for (uint64_t i = 0; i < n_tensors; i++) {
        g->n_tensors = i + 1;
        if ((rc = parse_tensor_info(&c, &g->tensors[i]))) return rc;
        g->tensors_sorted[i] = &g->tensors[i];
    }
    qsort(g->tensors_sorted, (size_t)n_tensors, sizeof *g->tensors_sorted, cmp_tensor);
    for (uint64_t i = 1; i < n_tensors; i++)
        if (strcmp(g->tensors_sorted[i - 1]->name, g->tensors_sorted[i]->name) == 0)
            return tsr_errorf(TSR_EFORMAT, "%s: duplicate tensor name '%s'", g->name,
                              g->tensors_sorted[i]->name);

    /* The data section starts at the next multiple of the alignment. A file without tensors may
     * end before that padding. */
    uint64_t pad = (g->alignment - c.pos % g->alignment) % g->alignment;
    g->data_start = (uint64_t)c.pos + pad; /* c.pos <= len, pad < 2^31: no overflow */
    for (uint64_t i = 0; i < n_tensors; i++) {
        struct tsr_gguf_tensor *t = &g->tensors[i];
        if (t->offset % g->alignment)
            return tsr_errorf(TSR_EFORMAT,
                              "%s: tensor '%s': data offset %" PRIu64 " is not a multiple of the "
                              "alignment %" PRIu32,
                              g->name, t->name, t->offset, g->alignment);
        uint64_t abs;
        if (tsr_add_u64(g->data_start, t->offset, &abs) ||
            tsr_range_outside(abs, t->nbytes, g->len))
            return tsr_errorf(TSR_EFORMAT,
                              "%s: tensor '%s': data [offset %" PRIu64 ", %" PRIu64 " bytes) runs "
                              "past end of file (%zu bytes)",
                              g->name, t->name, t->offset, t->nbytes, g->len);
        t->data = g->buf + abs;
    }
    return 0;
}

static int open_common(tsr_gguf_t *g, tsr_gguf_t **out)
{
    int rc = parse(g);
    if (rc) {
        gguf_free(g);
        return rc;
    }
    *out = g;
    return 0;
}

int tsr_gguf_open_mem(const void *buf, size_t len, const char *name, tsr_gguf_t **out)
{
    *out = NULL;
    if (!name) name = "<memory>";
    if (!buf && len) return tsr_errorf(TSR_EINVAL, "%s: NULL buffer", name);
    tsr_gguf_t *g = calloc(1, sizeof *g);
    if (!g || !(g->name = strdup(name))) {
        free(g);
        return tsr_errorf(TSR_ENOMEM, "%s: out of memory", name);
    }
    g->buf = buf ? buf : (const uint8_t *)"";
    g->len = len;
    return open_common(g, out);
}

int tsr_gguf_open(const char *path, tsr_gguf_t **out)
{
    *out = NULL;
    int fd;
    size_t size;
    int rc = tsr_file_open(path, "model file", 0, &fd, &size);
    if (rc) return rc;
    tsr_gguf_t *g = calloc(1, sizeof *g);
    if (!g || !(g->name = strdup(path))) {
        free(g);
        close(fd);
        return tsr_errorf(TSR_ENOMEM, "%s: out of memory", path);
    }
    g->len = size;
    g->buf = (const uint8_t *)"";
    if (g->len) {
        void *m = mmap(NULL, g->len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            gguf_free(g);
            return tsr_errorf(TSR_EIO, "%s: mmap of %zu bytes failed: %s", path, size, strerror(e));
        }
        g->map = m;
        g->buf = m;
    }
    close(fd);
    return open_common(g, out);
}

void tsr_gguf_close(tsr_gguf_t *g)
{
    gguf_free(g);
}

uint32_t tsr_gguf_version(const tsr_gguf_t *g)
{
    return g->version;
}

uint32_t tsr_gguf_alignment(const tsr_gguf_t *g)
{
    return g->alignment;
}

/* ---- metadata getters ------------------------------------------------------------------- */

uint64_t tsr_gguf_n_kv(const tsr_gguf_t *g)
{
    return g->n_kv;
}

const char *tsr_gguf_kv_key(const tsr_gguf_t *g, uint64_t i)
{
    return i < g->n_kv ? g->kv[i].key : NULL;
}

enum tsr_gguf_vtype tsr_gguf_kv_type(const tsr_gguf_t *g, uint64_t i)
{
    return i < g->n_kv ? g->kv[i].type : (enum tsr_gguf_vtype) - 1;
}

int tsr_gguf_find_kv(const tsr_gguf_t *g, const char *key)
{
    const struct kv *kv = lookup(g, key);
    return kv ? (int)(kv - g->kv) : -1;
}

static int find(const tsr_gguf_t *g, const char *key, const struct kv **out)
{
    *out = lookup(g, key);
    if (!*out) return tsr_errorf(TSR_ENOTFOUND, "%s: no metadata key '%s'", g->name, key);
    return 0;
}

static int not_conv(const tsr_gguf_t *g, const char *key, uint32_t type, const char *want)
{
    return tsr_errorf(TSR_EFORMAT, "%s: key '%s' is %s, not %s", g->name, key, vtype_name(type),
                      want);
}

static int conv_int(const tsr_gguf_t *g, const char *key, uint32_t type, const uint8_t *p,
                    int64_t *out)
{
    int r = scalar_int(type, p, out);
    if (r == -2)
        return tsr_errorf(TSR_EFORMAT, "%s: key '%s': u64 value does not fit in int64", g->name,
                          key);
    if (r) return not_conv(g, key, type, "an integer");
    return 0;
}

int tsr_gguf_get_int(const tsr_gguf_t *g, const char *key, int64_t *out)
{
    const struct kv *kv;
    int rc = find(g, key, &kv);
    if (rc) return rc;
    return conv_int(g, key, kv->type, kv->val, out);
}

int tsr_gguf_get_float(const tsr_gguf_t *g, const char *key, double *out)
{
    const struct kv *kv;
    int rc = find(g, key, &kv);
    if (rc) return rc;
    if (scalar_float(kv->type, kv->val, out)) return not_conv(g, key, kv->type, "a number");
    return 0;
}

int tsr_gguf_get_str(const tsr_gguf_t *g, const char *key, struct tsr_str *out)
{
    const struct kv *kv;
    int rc = find(g, key, &kv);
    if (rc) return rc;
    if (kv->type != TSR_GGUF_STRING) return not_conv(g, key, kv->type, "a string");
    read_str_at(kv->val, out);
    return 0;
}

static int find_arr(const tsr_gguf_t *g, const char *key, const struct kv **out)
{
    int rc = find(g, key, out);
    if (rc) return rc;
    if ((*out)->type != TSR_GGUF_ARRAY) return not_conv(g, key, (*out)->type, "an array");
    return 0;
}

int tsr_gguf_get_arr(const tsr_gguf_t *g, const char *key, enum tsr_gguf_vtype *elem, uint64_t *n)
{
    const struct kv *kv;
    int rc = find_arr(g, key, &kv);
    if (rc) return rc;
    *elem = kv->elem;
    *n = kv->n;
    return 0;
}

static int find_elem(const tsr_gguf_t *g, const char *key, uint64_t i, const struct kv **out)
{
    int rc = find_arr(g, key, out);
    if (rc) return rc;
    if (i >= (*out)->n)
        return tsr_errorf(TSR_ERANGE,
                          "%s: key '%s': index %" PRIu64 " out of range (%" PRIu64 " elements)",
                          g->name, key, i, (*out)->n);
    return 0;
}

int tsr_gguf_arr_int(const tsr_gguf_t *g, const char *key, uint64_t i, int64_t *out)
{
    const struct kv *kv;
    int rc = find_elem(g, key, i, &kv);
    if (rc) return rc;
    size_t sz = scalar_size(kv->elem);
    if (!sz) return not_conv(g, key, kv->elem, "an integer (array element)");
    return conv_int(g, key, kv->elem, kv->arr + i * sz, out);
}

int tsr_gguf_arr_float(const tsr_gguf_t *g, const char *key, uint64_t i, double *out)
{
    const struct kv *kv;
    int rc = find_elem(g, key, i, &kv);
    if (rc) return rc;
    size_t sz = scalar_size(kv->elem);
    if (!sz || scalar_float(kv->elem, kv->arr + i * sz, out))
        return not_conv(g, key, kv->elem, "a number (array element)");
    return 0;
}

int tsr_gguf_arr_str(const tsr_gguf_t *g, const char *key, uint64_t i, struct tsr_str *out)
{
    const struct kv *kv;
    int rc = find_elem(g, key, i, &kv);
    if (rc) return rc;
    if (kv->elem != TSR_GGUF_STRING) return not_conv(g, key, kv->elem, "a string (array element)");
    read_str_at(kv->strings[i], out);
    return 0;
}

/* ---- tensors ---------------------------------------------------------------------------- */

uint64_t tsr_gguf_n_tensors(const tsr_gguf_t *g)
{
    return g->n_tensors;
}

const struct tsr_gguf_tensor *tsr_gguf_tensor(const tsr_gguf_t *g, uint64_t i)
{
    return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const struct tsr_gguf_tensor *tsr_gguf_find_tensor(const tsr_gguf_t *g, const char *name)
{
    size_t lo = 0, hi = (size_t)g->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, g->tensors_sorted[mid]->name);
        if (c == 0) return g->tensors_sorted[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}
