#include "model/safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/checked.h"
#include "common/status.h"
#include "model/files.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the safetensors reader assumes a little-endian host"
#endif

/* Upper bounds from real checkpoints. A shard's header is a JSON object of a few hundred entries
 * of about 130 bytes (DeepSeek V3: ~570 tensors a shard, under 100 KB; an unsharded Mixtral:
 * 995 tensors, 130 KB). Parsing costs about 18 bytes of memory per header byte, so the reference
 * implementation's 100 MB limit let one header cost 2 GiB; 8 MiB (60,000 entries) costs at most
 * ~150 MB. A model has at most ~140k tensors (Kimi K2 with its FP8 scales) in at most ~200 shards
 * (Llama 3.1 405B: 191). Over a bound is TSR_EINVAL, checked before the entries are stored. */
#define ST_MAX_HEADER  (8u << 20)
#define ST_MAX_TENSORS (1u << 19)
#define ST_MAX_SHARDS  4096

struct shard {
    char *path;
    void *map; /* NULL for open_mem and empty files */
    size_t len;
};

/* The public struct first, so tsr_st_tensor() can hand out &entry->t. */
struct entry {
    struct tsr_st_tensor t;
    uint32_t shard;
    uint64_t begin; /* data_offsets[0], for ordering by position in the file */
};

struct tsr_st {
    char *name; /* the file or directory, for messages */
    struct shard *shards;
    size_t n_shards;
    struct entry *e;
    size_t n, cap;
    struct entry **sorted; /* by name, for bsearch */
};

/* ---- one file --------------------------------------------------------------------------- */

/* A supported dtype to its type and element size; F8_E4M3 and I8 are bare codes (codes). */
static int parse_dtype(const char *file, const char *tensor, const char *s, struct tsr_st_tensor *t,
                       uint64_t *elem_size)
{
    static const struct {
        const char *name;
        enum tsr_dtype type;
        uint64_t size;
        enum tsr_st_codes codes;
    } supported[] = {{"F32", TSR_F32, 4, TSR_ST_NO_CODES},
                     {"F16", TSR_F16, 2, TSR_ST_NO_CODES},
                     {"BF16", TSR_BF16, 2, TSR_ST_NO_CODES},
                     {"F8_E4M3", TSR_F8_E4M3, 1, TSR_ST_E4M3},
                     {"I8", TSR_Q8_0, 1, TSR_ST_INT8}};
    static const char *const known[] = {"BOOL",    "U8",  "I16",     "U16",     "I32",
                                        "U32",     "I64", "U64",     "F64",     "F8_E5M2",
                                        "F8_E8M0", "F4",  "F6_E2M3", "F6_E3M2", "C64"};
    for (size_t i = 0; i < sizeof supported / sizeof supported[0]; i++)
        if (!strcmp(s, supported[i].name)) {
            t->type = supported[i].type;
            t->codes = supported[i].codes;
            *elem_size = supported[i].size;
            return 0;
        }
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (!strcmp(s, known[i]))
            return tsr_errorf(TSR_EUNSUPPORTED,
                              "%s: tensor '%s': dtype %s is not supported (supported: F32, F16, "
                              "BF16, F8_E4M3, I8)",
                              file, tensor, s);
    return tsr_errorf(TSR_EFORMAT, "%s: tensor '%s': unknown dtype \"%.32s\"", file, tensor, s);
}

static int add_entry(tsr_st_t *st, const char *file, const char *name, json_t *v, uint32_t shard,
                     const uint8_t *data, uint64_t data_len)
{
    if (!json_is_object(v))
        return tsr_errorf(TSR_EFORMAT, "%s: tensor '%s': entry is not a JSON object", file, name);
    json_t *dtype = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape"),
           *offs = json_object_get(v, "data_offsets");
    if (!json_is_string(dtype))
        return tsr_errorf(TSR_EFORMAT, "%s: tensor '%s': missing or non-string \"dtype\"", file,
                          name);
    if (!json_is_array(shape))
        return tsr_errorf(TSR_EFORMAT, "%s: tensor '%s': missing or non-array \"shape\"", file,
                          name);
    if (!json_is_array(offs) || json_array_size(offs) != 2 ||
        !json_is_integer(json_array_get(offs, 0)) || !json_is_integer(json_array_get(offs, 1)))
        return tsr_errorf(TSR_EFORMAT,
                          "%s: tensor '%s': \"data_offsets\" must be an array of two integers",
                          file, name);

    struct entry e = {.shard = shard};
    size_t nd = json_array_size(shape);
    uint64_t count = 1;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(shape, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return tsr_errorf(TSR_EFORMAT,
                              "%s: tensor '%s': shape[%zu] is not a non-negative integer", file,
                              name, i);
        if (tsr_mul_u64(count, (uint64_t)json_integer_value(d), &count) || count > INT64_MAX)
            return tsr_errorf(TSR_EFORMAT, "%s: tensor '%s': element count overflows", file, name);
    }
    if (nd > 4)
        return tsr_errorf(TSR_EUNSUPPORTED, "%s: tensor '%s': %zu dimensions (at most 4 supported)",
                          file, name, nd);
    uint64_t esize = 0;
    int rc = parse_dtype(file, name, json_string_value(dtype), &e.t, &esize);
    if (rc) return rc;

    json_int_t b = json_integer_value(json_array_get(offs, 0));
    json_int_t end = json_integer_value(json_array_get(offs, 1));
    if (b < 0 || end < b)
        return tsr_errorf(TSR_EFORMAT, "%s: tensor '%s': bad data_offsets [%lld, %lld]", file, name,
                          (long long)b, (long long)end);
    if ((uint64_t)end > data_len)
        return tsr_errorf(TSR_EFORMAT,
                          "%s: tensor '%s': data_offsets [%lld, %lld] run past the end of the "
                          "data section (%" PRIu64 " bytes)",
                          file, name, (long long)b, (long long)end, data_len);
    uint64_t nbytes;
    if (tsr_mul_u64(count, esize, &nbytes) || nbytes != (uint64_t)(end - b))
        return tsr_errorf(TSR_EFORMAT,
                          "%s: tensor '%s': shape holds %" PRIu64 " %s elements but "
                          "data_offsets [%lld, %lld] span %lld bytes",
                          file, name, count, json_string_value(dtype), (long long)b, (long long)end,
                          (long long)(end - b));

    e.t.n_dims = (uint32_t)nd;
    for (int i = 0; i < 4; i++) e.t.ne[i] = 1;
    for (size_t i = 0; i < nd; i++)
        e.t.ne[i] = (int64_t)json_integer_value(json_array_get(shape, nd - 1 - i));
    e.t.nbytes = nbytes;
    e.t.data = data + b;
    e.begin = (uint64_t)b;

    if (st->n == st->cap) {
        size_t cap = st->cap ? st->cap * 2 : 64;
        struct entry *ne = realloc(st->e, cap * sizeof *ne);
        if (!ne) return tsr_errorf(TSR_ENOMEM, "%s: out of memory", file);
        st->e = ne;
        st->cap = cap;
    }
    if (!(e.t.name = strdup(name))) return tsr_errorf(TSR_ENOMEM, "%s: out of memory", file);
    st->e[st->n++] = e;
    return 0;
}

/* Parses one file's header and appends its tensors, pointing into buf. */
static int parse_file(tsr_st_t *st, uint32_t shard, const uint8_t *buf, size_t len,
                      const char *file)
{
    uint64_t hlen;
    if (len < 8)
        return tsr_errorf(TSR_EFORMAT,
                          "%s: file is %zu bytes, too short for the 8-byte header length", file,
                          len);
    memcpy(&hlen, buf, 8);
    if (hlen > len - 8)
        return tsr_errorf(TSR_EFORMAT,
                          "%s: header length %" PRIu64 " runs past end of file (%zu bytes)", file,
                          hlen, len);
    if (hlen > ST_MAX_HEADER)
        return tsr_errorf(TSR_EINVAL,
                          "%s: header length %" PRIu64 " is over the limit of %u bytes (real "
                          "shards have under 1 MB)",
                          file, hlen, ST_MAX_HEADER);

    json_error_t jerr;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return tsr_errorf(TSR_EFORMAT, "%s: header is not valid JSON: %s (line %d, column %d)",
                          file, jerr.text, jerr.line, jerr.column);
    int rc = 0;
    if (!json_is_object(root)) {
        rc = tsr_errorf(TSR_EFORMAT, "%s: header is not a JSON object", file);
        goto out;
    }
    if (json_object_size(root) > ST_MAX_TENSORS - st->n) {
        rc = tsr_errorf(TSR_EINVAL,
                        "%s: %zu tensors (%zu before this file) are over the limit of %u tensors "
                        "in a model",
                        file, json_object_size(root), st->n, ST_MAX_TENSORS);
        goto out;
    }
    const uint8_t *data = buf + 8 + hlen;
    uint64_t data_len = len - 8 - hlen;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        if (!strcmp(key, "__metadata__")) continue;
        if ((rc = add_entry(st, file, key, v, shard, data, data_len))) goto out;
    }
out:
    json_decref(root);
    return rc;
}

/* ---- the reader ------------------------------------------------------------------------- */

static tsr_st_t *st_new(const char *name)
{
    tsr_st_t *st = calloc(1, sizeof *st);
    if (!st) return NULL;
    if (!(st->name = strdup(name))) {
        free(st);
        return NULL;
    }
    return st;
}

void tsr_st_close(tsr_st_t *st)
{
    if (!st) return;
    for (size_t i = 0; i < st->n; i++) free(st->e[i].t.name);
    free(st->e);
    free(st->sorted);
    for (size_t i = 0; i < st->n_shards; i++) {
        if (st->shards[i].map) munmap(st->shards[i].map, st->shards[i].len);
        free(st->shards[i].path);
    }
    free(st->shards);
    free(st->name);
    free(st);
}

static int cmp_pos(const void *a, const void *b)
{
    const struct entry *x = a, *y = b;
    if (x->shard != y->shard) return x->shard < y->shard ? -1 : 1;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return strcmp(x->t.name, y->t.name);
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(struct entry *const *)a)->t.name, (*(struct entry *const *)b)->t.name);
}

static const char *shard_name(const tsr_st_t *st, uint32_t shard)
{
    return shard < st->n_shards ? st->shards[shard].path : st->name;
}

/* Orders tensors by position (shard, offset), builds the name index, rejects duplicates. */
static int finish(tsr_st_t *st)
{
    if (st->n) qsort(st->e, st->n, sizeof *st->e, cmp_pos);
    st->sorted = malloc((st->n ? st->n : 1) * sizeof *st->sorted);
    if (!st->sorted) return tsr_errorf(TSR_ENOMEM, "%s: out of memory", st->name);
    for (size_t i = 0; i < st->n; i++) st->sorted[i] = &st->e[i];
    if (st->n) qsort(st->sorted, st->n, sizeof *st->sorted, cmp_name);
    for (size_t i = 1; i < st->n; i++) {
        const struct entry *a = st->sorted[i - 1], *b = st->sorted[i];
        if (!strcmp(a->t.name, b->t.name))
            return tsr_errorf(TSR_EFORMAT, "%s: tensor '%s' appears in both %s and %s", st->name,
                              a->t.name, shard_name(st, a->shard), shard_name(st, b->shard));
    }
    return 0;
}

static const struct entry *find_entry(const tsr_st_t *st, const char *name)
{
    size_t lo = 0, hi = st->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, st->sorted[mid]->t.name);
        if (c == 0) return st->sorted[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

int tsr_st_open_mem(const void *buf, size_t len, const char *name, tsr_st_t **out)
{
    *out = NULL;
    if (!name) name = "<memory>";
    if (!buf && len) return tsr_errorf(TSR_EINVAL, "%s: NULL buffer", name);
    tsr_st_t *st = st_new(name);
    if (!st) return tsr_errorf(TSR_ENOMEM, "%s: out of memory", name);
    int rc = parse_file(st, 0, buf ? buf : (const void *)"", len, name);
    if (!rc) rc = finish(st);
    if (rc) {
        tsr_st_close(st);
        return rc;
    }
    *out = st;
    return 0;
}

/* Maps path as a new shard of st and parses it. */
static int add_file(tsr_st_t *st, const char *path)
{
    if (st->n_shards >= ST_MAX_SHARDS)
        return tsr_errorf(TSR_EINVAL, "%s: more than %d shards (Llama 3.1 405B has 191)", st->name,
                          ST_MAX_SHARDS);
    struct shard *ns = realloc(st->shards, (st->n_shards + 1) * sizeof *ns);
    if (!ns) return tsr_errorf(TSR_ENOMEM, "%s: out of memory", path);
    st->shards = ns;
    struct shard *sh = &st->shards[st->n_shards];
    memset(sh, 0, sizeof *sh);
    if (!(sh->path = strdup(path))) return tsr_errorf(TSR_ENOMEM, "%s: out of memory", path);
    st->n_shards++;

    int fd;
    int rc = tsr_file_open(path, "safetensors file", 0, &fd, &sh->len);
    if (rc) return rc;
    if (sh->len) {
        void *m = mmap(NULL, sh->len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            return tsr_errorf(TSR_EIO, "%s: mmap of %zu bytes failed: %s", path, sh->len,
                              strerror(e));
        }
        sh->map = m;
    }
    close(fd);
    return parse_file(st, (uint32_t)(st->n_shards - 1), sh->map ? sh->map : (const void *)"",
                      sh->len, path);
}

int tsr_st_open(const char *path, tsr_st_t **out)
{
    *out = NULL;
    tsr_st_t *st = st_new(path);
    if (!st) return tsr_errorf(TSR_ENOMEM, "%s: out of memory", path);
    int rc = add_file(st, path);
    if (!rc) rc = finish(st);
    if (rc) {
        tsr_st_close(st);
        return rc;
    }
    *out = st;
    return 0;
}

/* ---- directories ------------------------------------------------------------------------ */

static char *join(const char *dir, const char *file)
{
    size_t n = strlen(dir) + strlen(file) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, file);
    return p;
}

static int exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

static int add_dir_file(tsr_st_t *st, const char *dir, const char *file)
{
    char *p = join(dir, file);
    if (!p) return tsr_errorf(TSR_ENOMEM, "%s: out of memory", dir);
    int rc = add_file(st, p);
    free(p);
    return rc;
}

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* model.safetensors.index.json: opens each distinct shard named in weight_map once, then checks
 * that every tensor the index names is in the shard it names. */
static int open_index(tsr_st_t *st, const char *dir, const char *index_path)
{
    json_t *root;
    int rc = tsr_json_load(index_path, "shard index", TSR_MAX_INDEX_JSON_BYTES,
                           JSON_REJECT_DUPLICATES, &root);
    if (rc) return rc;
    const char **files = NULL;
    json_t *wm = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
    if (!json_is_object(wm)) {
        rc = tsr_errorf(TSR_EFORMAT, "%s: no \"weight_map\" object", index_path);
        goto out;
    }
    size_t n = json_object_size(wm), nf = 0;
    if (n > ST_MAX_TENSORS) {
        rc = tsr_errorf(TSR_EINVAL, "%s: weight_map lists %zu tensors, over the limit of %u",
                        index_path, n, ST_MAX_TENSORS);
        goto out;
    }
    files = malloc((n ? n : 1) * sizeof *files);
    if (!files) {
        rc = tsr_errorf(TSR_ENOMEM, "%s: out of memory", index_path);
        goto out;
    }
    const char *key;
    json_t *v;
    json_object_foreach(wm, key, v)
    {
        const char *f = json_string_value(v);
        if (!f) {
            rc = tsr_errorf(TSR_EFORMAT, "%s: weight_map['%s'] is not a string", index_path, key);
            goto out;
        }
        /* Shards live in the directory itself: a path would let an index reach elsewhere. */
        if (!*f || strchr(f, '/') || !strcmp(f, ".") || !strcmp(f, "..")) {
            rc = tsr_errorf(TSR_EFORMAT, "%s: weight_map['%s'] = \"%s\" is not a plain file name",
                            index_path, key, f);
            goto out;
        }
        files[nf++] = f;
    }
    if (nf) qsort(files, nf, sizeof *files, cmp_cstr);
    for (size_t i = 0; i < nf; i++) {
        if (i && !strcmp(files[i], files[i - 1])) continue;
        if ((rc = add_dir_file(st, dir, files[i]))) goto out;
    }
    if ((rc = finish(st))) goto out;
    json_object_foreach(wm, key, v)
    {
        const char *f = json_string_value(v);
        const struct entry *e = find_entry(st, key);
        if (!e) {
            rc = tsr_errorf(TSR_EFORMAT, "%s: tensor '%s' is listed in %s but missing from it",
                            index_path, key, f);
            goto out;
        }
        const char *have = shard_name(st, e->shard), *slash = strrchr(have, '/');
        if (strcmp(slash ? slash + 1 : have, f) != 0) {
            rc = tsr_errorf(TSR_EFORMAT, "%s: tensor '%s' is listed in %s but found in %s",
                            index_path, key, f, have);
            goto out;
        }
    }
out:
    free(files);
    json_decref(root);
    return rc;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n > m && !strcmp(s + n - m, suffix);
}

/* Every *.safetensors in dir, in name order. */
static int open_all(tsr_st_t *st, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return tsr_errorf(errno == ENOENT ? TSR_ENOTFOUND : TSR_EIO,
                          "%s: cannot open directory: %s", dir, strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!ends_with(de->d_name, ".safetensors")) continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            char **nn = realloc(names, nc * sizeof *nn);
            if (!nn) {
                rc = tsr_errorf(TSR_ENOMEM, "%s: out of memory", dir);
                goto out;
            }
            names = nn;
            cap = nc;
        }
        if (!(names[n] = strdup(de->d_name))) {
            rc = tsr_errorf(TSR_ENOMEM, "%s: out of memory", dir);
            goto out;
        }
        n++;
    }
    if (!n) {
        rc = tsr_errorf(TSR_ENOTFOUND,
                        "%s: no model.safetensors.index.json, model.safetensors or *.safetensors "
                        "file",
                        dir);
        goto out;
    }
    qsort(names, n, sizeof *names, cmp_cstr);
    for (size_t i = 0; i < n && !rc; i++) rc = add_dir_file(st, dir, names[i]);
    if (!rc) rc = finish(st);
out:
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    closedir(d);
    return rc;
}

int tsr_st_open_dir(const char *dir, tsr_st_t **out)
{
    *out = NULL;
    tsr_st_t *st = st_new(dir);
    char *index = join(dir, "model.safetensors.index.json");
    char *single = join(dir, "model.safetensors");
    int rc;
    if (!st || !index || !single) {
        rc = tsr_errorf(TSR_ENOMEM, "%s: out of memory", dir);
    } else if (exists(index)) {
        rc = open_index(st, dir, index);
    } else if (exists(single)) {
        rc = add_file(st, single);
        if (!rc) rc = finish(st);
    } else {
        rc = open_all(st, dir);
    }
    free(index);
    free(single);
    if (rc) {
        tsr_st_close(st);
        return rc;
    }
    *out = st;
    return 0;
}

/* ---- access ----------------------------------------------------------------------------- */

uint64_t tsr_st_n_tensors(const tsr_st_t *st)
{
    return st->n;
}

const struct tsr_st_tensor *tsr_st_tensor(const tsr_st_t *st, uint64_t i)
{
    return i < st->n ? &st->e[i].t : NULL;
}

const struct tsr_st_tensor *tsr_st_find_tensor(const tsr_st_t *st, const char *name)
{
    const struct entry *e = find_entry(st, name);
    return e ? &e->t : NULL;
}
