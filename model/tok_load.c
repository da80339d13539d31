/* Tokenizer loaders: GGUF metadata (tokenizer.ggml.*) and Hugging Face tokenizer.json (plus a
 * tokenizer_config.json beside it, when there is one, for bos/eos/add_bos_token).
 *
 * Both fill the vocabulary strings and attributes, then tok_finish() derives the rest: decoded
 * bytes per token, the string → id map, the byte table, the added-token index and the
 * end-of-generation set. Merges come last (they are looked up through the map). */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/config.h"
#include "model/files.h"
#include "model/gguf.h"
#include "model/tok_internal.h"

/* The model config's bound (model/config.h): the largest real vocabulary is 262,144 tokens. */
#define TOK_MAX_VOCAB TSR_MAX_VOCAB

struct pool {
    char *p;
    size_t n, cap;
};

static struct tsr_tokenizer *tok_new(void)
{
    struct tsr_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        tsr_errorf(TSR_ENOMEM, "tokenizer: out of memory");
        return NULL;
    }
    t->bos = t->eos = t->unk = t->eot = t->eom = -1;
    return t;
}

/* Allocates per-token tables for n tokens; every token starts as "" (pool offset 0). */
static int alloc_tables(struct tsr_tokenizer *t, struct pool *pl, size_t n)
{
    if (n == 0) return tsr_errorf(TSR_EFORMAT, "tokenizer: empty vocabulary");
    if (n > TOK_MAX_VOCAB)
        return tsr_errorf(TSR_EINVAL,
                          "tokenizer: vocabulary of %zu tokens is over the limit of %d (Gemma 3 "
                          "has 262144)",
                          n, TOK_MAX_VOCAB);
    t->n_vocab = (int32_t)n;
    t->off = calloc(n, sizeof *t->off);
    t->len = calloc(n, sizeof *t->len);
    t->attr = calloc(n, sizeof *t->attr);
    pl->cap = 1 << 16;
    pl->p = malloc(pl->cap);
    if (!t->off || !t->len || !t->attr || !pl->p)
        return tsr_errorf(TSR_ENOMEM, "tokenizer: out of memory (%zu tokens)", n);
    pl->p[0] = '\0';
    pl->n = 1;
    return 0;
}

static int set_piece(struct tsr_tokenizer *t, struct pool *pl, int32_t id, const char *s, size_t n)
{
    if (n > UINT32_MAX - 1 - pl->n)
        return tsr_errorf(TSR_ERANGE, "tokenizer: vocabulary strings exceed 4 GiB");
    if (pl->n + n + 1 > pl->cap) {
        size_t c = pl->cap;
        while (c < pl->n + n + 1) c *= 2;
        char *q = realloc(pl->p, c);
        if (!q) return tsr_errorf(TSR_ENOMEM, "tokenizer: out of memory (vocabulary strings)");
        pl->p = q;
        pl->cap = c;
    }
    memcpy(pl->p + pl->n, s, n);
    pl->p[pl->n + n] = '\0';
    t->off[id] = (uint32_t)pl->n;
    t->len[id] = (uint32_t)n;
    pl->n += n + 1;
    return 0;
}

static int is_byte_piece(const char *p, size_t n, unsigned char *b)
{
    if (n != 6 || memcmp(p, "<0x", 3) != 0 || p[5] != '>') return 0;
    unsigned v = 0;
    for (int i = 3; i < 5; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return 0;
    }
    *b = (unsigned char)v;
    return 1;
}

static int cmp_added(const void *pa, const void *pb)
{
    const struct tok_added *a = pa, *b = pb;
    if (a->first != b->first) return a->first < b->first ? -1 : 1;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

static const char *const eog_names[] = {
    "<|im_end|>", "<|eot_id|>", "<|eom_id|>",    "<|end_of_text|>", "<|endoftext|>",
    "</s>",       "<|end|>",    "<end_of_turn>", "<|return|>",      "<EOT>",
};

int tok_finish(struct tsr_tokenizer *t)
{
    int rc;
    size_t n = (size_t)t->n_vocab;
    size_t pool_n = 1;
    for (size_t i = 0; i < n; i++)
        if (t->len[i])
            pool_n = t->off[i] + t->len[i] + 1 > pool_n ? t->off[i] + t->len[i] + 1 : pool_n;

    /* Decoded bytes: never longer than the vocabulary string. */
    t->dec_off = calloc(n, sizeof *t->dec_off);
    t->dec_len = calloc(n, sizeof *t->dec_len);
    t->dec_pool = malloc(pool_n);
    if (!t->dec_off || !t->dec_len || !t->dec_pool)
        return tsr_errorf(TSR_ENOMEM, "tokenizer: out of memory (decode table)");
    int16_t cp_byte[0x144];
    for (uint32_t cp = 0; cp < 0x144; cp++) cp_byte[cp] = (int16_t)tok_cp_to_byte(cp);
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p = t->pool + t->off[i];
        size_t len = t->len[i], start = w;
        unsigned char b;
        t->dec_off[i] = (uint32_t)start;
        if (t->kind == TOK_BYTE_BPE) {
            /* As HF's ByteLevel decoder: through the byte table when every char is in it (added
             * tokens included), else the string as it is. */
            int ok = 1;
            for (size_t k = 0; k < len && ok;) {
                int adv;
                uint32_t cp = tok_utf8_decode(p + k, len - k, &adv);
                ok = cp < 0x144 && cp_byte[cp] >= 0 && tok_utf8_len((unsigned char)p[k]) == adv;
                if (ok) t->dec_pool[w++] = (char)cp_byte[cp];
                k += (size_t)adv;
            }
            if (!ok) {
                w = start;
                memcpy(t->dec_pool + w, p, len);
                w += len;
            }
        } else if (is_byte_piece(p, len, &b)) {
            t->dec_pool[w++] = (char)b;
        } else {
            for (size_t k = 0; k < len;) {
                if (len - k >= 3 && memcmp(p + k, "\xE2\x96\x81", 3) == 0) {
                    t->dec_pool[w++] = ' ';
                    k += 3;
                } else {
                    t->dec_pool[w++] = p[k++];
                }
            }
        }
        t->dec_len[i] = (uint32_t)(w - start);
    }

    if ((rc = tok_str_map_init(&t->vocab, t, n))) return rc;
    for (size_t i = 0; i < n; i++)
        if (t->len[i]) tok_str_map_put(&t->vocab, (int32_t)i);

    for (int b = 0; b < 256; b++) {
        if (t->kind == TOK_BYTE_BPE) {
            t->spell_len[b] = (uint8_t)tok_utf8_encode(tok_byte_to_cp((uint8_t)b), t->spell[b]);
            t->byte_tok[b] = tok_str_map_get(&t->vocab, t->spell[b], t->spell_len[b]);
        } else {
            char s[8];
            snprintf(s, sizeof s, "<0x%02X>", b);
            t->byte_tok[b] = tok_str_map_get(&t->vocab, s, 6);
            if (t->byte_tok[b] >= 0) t->attr[t->byte_tok[b]] |= TOK_ATTR_BYTE;
        }
    }

    uint32_t na = 0;
    for (size_t i = 0; i < n; i++) na += (t->attr[i] & TOK_ATTR_ADDED) && t->len[i];
    if (na) {
        t->added = malloc(na * sizeof *t->added);
        if (!t->added) return tsr_errorf(TSR_ENOMEM, "tokenizer: out of memory");
        for (size_t i = 0; i < n; i++)
            if ((t->attr[i] & TOK_ATTR_ADDED) && t->len[i])
                t->added[t->n_added++] =
                    (struct tok_added){(int32_t)i, t->len[i], (unsigned char)t->pool[t->off[i]]};
        qsort(t->added, na, sizeof *t->added, cmp_added);
    }
    memset(t->first, 0, sizeof t->first);
    for (uint32_t k = 0; k < t->n_added; k++) t->first[t->added[k].first + 1]++;
    for (int c = 0; c < 256; c++) t->first[c + 1] += t->first[c];

    int32_t eog[3] = {t->eos, t->eot, t->eom};
    for (int k = 0; k < 3; k++)
        if (eog[k] >= 0) t->attr[eog[k]] |= TOK_ATTR_EOG;
    for (size_t k = 0; k < sizeof eog_names / sizeof *eog_names; k++) {
        int32_t id = tok_str_map_get(&t->vocab, eog_names[k], strlen(eog_names[k]));
        if (id >= 0 && (t->attr[id] & TOK_ATTR_ADDED)) t->attr[id] |= TOK_ATTR_EOG;
    }
    return 0;
}

/* Merges given as "left right" strings, ranked by position. Pairs whose sides or result are not
 * in the vocabulary are skipped. */
static int add_merge(struct tsr_tokenizer *t, char **buf, size_t *cap, const char *l, size_t ln,
                     const char *r, size_t rn, int32_t rank)
{
    if (ln + rn > *cap) {
        size_t c = 2 * (ln + rn);
        char *q = realloc(*buf, c);
        if (!q) return tsr_errorf(TSR_ENOMEM, "tokenizer: out of memory");
        *buf = q;
        *cap = c;
    }
    memcpy(*buf, l, ln);
    memcpy(*buf + ln, r, rn);
    int32_t li = tok_str_map_get(&t->vocab, l, ln), ri = tok_str_map_get(&t->vocab, r, rn);
    int32_t res = tok_str_map_get(&t->vocab, *buf, ln + rn);
    if (li >= 0 && ri >= 0 && res >= 0) tok_merge_map_put(&t->merges, li, ri, rank, res);
    return 0;
}

static int split_merge(const char *s, size_t n, size_t *sp)
{
    for (size_t i = 1; i < n; i++)
        if (s[i] == ' ') {
            *sp = i;
            return 1;
        }
    return 0;
}

/* SentencePiece BPE without merges: every split of a token into two tokens is a merge, ranked by
 * the token's score (higher first). Ties are ordered as transformers' generate_merges() orders a
 * SentencePiece vocabulary (result id, then left and right length in chars, then ids), so the
 * ranks equal the merges of the HF tokenizer.json made from the same model. (llama.cpp breaks
 * ties leftmost instead; both agree unless one token can be made two ways in one word.) */
struct cand {
    float score;
    int32_t res, l, r;
    uint32_t lc, rc;
};

static int cmp_cand(const void *pa, const void *pb)
{
    const struct cand *a = pa, *b = pb;
    if (a->score != b->score) return a->score > b->score ? -1 : 1;
    if (a->res != b->res) return a->res < b->res ? -1 : 1;
    if (a->lc != b->lc) return a->lc < b->lc ? -1 : 1;
    if (a->rc != b->rc) return a->rc < b->rc ? -1 : 1;
    if (a->l != b->l) return a->l < b->l ? -1 : 1;
    return (a->r > b->r) - (a->r < b->r);
}

static uint32_t n_chars(const char *p, size_t n)
{
    uint32_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)p[i] & 0xC0) != 0x80;
    return c;
}

static int merges_from_scores(struct tsr_tokenizer *t, const float *score)
{
    size_t nc = 0, cap = 0;
    struct cand *c = NULL;
    int rc = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const char *p = t->pool + t->off[id];
        size_t len = t->len[id];
        if (t->vocab.slot && tok_str_map_get(&t->vocab, p, len) != id) continue; /* duplicate */
        for (size_t k = 1; k < len; k++) {
            if (((unsigned char)p[k] & 0xC0) == 0x80) continue;
            int32_t l = tok_str_map_get(&t->vocab, p, k);
            if (l < 0) continue;
            int32_t r = tok_str_map_get(&t->vocab, p + k, len - k);
            if (r < 0) continue;
            if (nc == cap) {
                cap = cap ? 2 * cap : 1024;
                struct cand *q = realloc(c, cap * sizeof *c);
                if (!q) {
                    free(c);
                    return tsr_errorf(TSR_ENOMEM, "tokenizer: out of memory (merges)");
                }
                c = q;
            }
            c[nc++] = (struct cand){score[id], id, l, r, n_chars(p, k), n_chars(p + k, len - k)};
        }
    }
    if (nc) qsort(c, nc, sizeof *c, cmp_cand);
    if ((rc = tok_merge_map_init(&t->merges, nc))) goto out;
    for (size_t i = 0; i < nc; i++)
        tok_merge_map_put(&t->merges, c[i].l, c[i].r, (int32_t)i, c[i].res);
out:
    free(c);
    return rc;
}

/* ---- GGUF ---------------------------------------------------------------------------------- */

static int gguf_id(const tsr_gguf_t *g, const char *key, int32_t n, int32_t *out)
{
    int64_t v;
    int rc = tsr_gguf_get_int(g, key, &v);
    if (rc == TSR_ENOTFOUND) return 0;
    if (rc) return rc;
    if (v < 0 || v >= n)
        return tsr_errorf(TSR_EFORMAT, "tokenizer: %s = %lld is not a token id (vocabulary of %d)",
                          key, (long long)v, (int)n);
    *out = (int32_t)v;
    return 0;
}

static int gguf_flag(const tsr_gguf_t *g, const char *key, int def, int *out)
{
    int64_t v;
    int rc = tsr_gguf_get_int(g, key, &v);
    *out = def;
    if (rc == TSR_ENOTFOUND) return 0;
    if (rc) return rc;
    *out = v != 0;
    return 0;
}

static int gguf_cstr(const tsr_gguf_t *g, const char *key, char *buf, size_t cap)
{
    struct tsr_str s;
    int rc = tsr_gguf_get_str(g, key, &s);
    if (rc) return rc;
    if (s.n >= cap)
        return tsr_errorf(TSR_EFORMAT, "tokenizer: %s is too long (%zu bytes)", key, s.n);
    memcpy(buf, s.p, s.n);
    buf[s.n] = '\0';
    return 0;
}

static int gguf_array(const tsr_gguf_t *g, const char *key, int want_str, size_t n_want,
                      uint64_t *n)
{
    enum tsr_gguf_vtype elem;
    int rc = tsr_gguf_get_arr(g, key, &elem, n);
    if (rc) return rc;
    if ((elem == TSR_GGUF_STRING) != want_str)
        return tsr_errorf(TSR_EFORMAT, "tokenizer: %s is not an array of %s", key,
                          want_str ? "strings" : "numbers");
    if (n_want && *n != n_want)
        return tsr_errorf(TSR_EFORMAT, "tokenizer: %s has %llu elements, the vocabulary %zu", key,
                          (unsigned long long)*n, n_want);
    return 0;
}

int tsr_tokenizer_from_gguf(const tsr_gguf_t *g, tsr_tokenizer_t **out)
{
    int rc;
    char model[64], pre[64];
    uint64_t n, n_merges = 0, k;
    struct pool pl = {0};
    float *score = NULL;
    char *mbuf = NULL;
    size_t mcap = 0;
    *out = NULL;

    if ((rc = gguf_cstr(g, "tokenizer.ggml.model", model, sizeof model)))
        return rc == TSR_ENOTFOUND
                   ? tsr_errorf(TSR_ENOTFOUND, "tokenizer: the GGUF has no tokenizer.ggml.model")
                   : rc;
    struct tsr_tokenizer *t = tok_new();
    if (!t) return TSR_ENOMEM;
    if (!strcmp(model, "gpt2")) {
        t->kind = TOK_BYTE_BPE;
    } else if (!strcmp(model, "llama")) {
        t->kind = TOK_SPM_BPE;
    } else {
        rc = tsr_errorf(TSR_EUNSUPPORTED,
                        "tokenizer: GGUF tokenizer model '%s' is not supported "
                        "(gpt2 and llama are)",
                        model);
        goto fail;
    }

    if ((rc = gguf_array(g, "tokenizer.ggml.tokens", 1, 0, &n)) ||
        (rc = alloc_tables(t, &pl, (size_t)n)))
        goto fail;
    for (k = 0; k < n; k++) {
        struct tsr_str s;
        if ((rc = tsr_gguf_arr_str(g, "tokenizer.ggml.tokens", k, &s)) ||
            (rc = set_piece(t, &pl, (int32_t)k, s.p, s.n)))
            goto fail;
    }
    t->pool = pl.p;
    pl.p = NULL;

    uint64_t nt;
    rc = gguf_array(g, "tokenizer.ggml.token_type", 0, (size_t)n, &nt);
    if (rc && rc != TSR_ENOTFOUND) goto fail;
    for (k = 0; !rc && k < n; k++) {
        int64_t ty;
        if ((rc = tsr_gguf_arr_int(g, "tokenizer.ggml.token_type", k, &ty))) goto fail;
        switch (ty) {
        case 2: /* unknown */
        case 3: /* control */
            t->attr[k] |= TOK_ATTR_SPECIAL | TOK_ATTR_ADDED;
            break;
        case 4: /* user-defined */
            t->attr[k] |= TOK_ATTR_ADDED;
            break;
        default:
            break;
        }
    }

    int32_t nv = t->n_vocab;
    int add_bos, space_prefix;
    if ((rc = gguf_id(g, "tokenizer.ggml.bos_token_id", nv, &t->bos)) ||
        (rc = gguf_id(g, "tokenizer.ggml.eos_token_id", nv, &t->eos)) ||
        (rc = gguf_id(g, "tokenizer.ggml.unknown_token_id", nv, &t->unk)) ||
        (rc = gguf_id(g, "tokenizer.ggml.eot_token_id", nv, &t->eot)) ||
        (rc = gguf_id(g, "tokenizer.ggml.eom_token_id", nv, &t->eom)) ||
        (rc = gguf_flag(g, "tokenizer.ggml.add_bos_token", t->kind == TOK_SPM_BPE, &add_bos)) ||
        (rc = gguf_flag(g, "tokenizer.ggml.add_space_prefix", 1, &space_prefix)))
        goto fail;
    t->wants_bos = add_bos;
    if (add_bos && t->bos < 0 && tsr_gguf_find_kv(g, "tokenizer.ggml.add_bos_token") >= 0) {
        rc = tsr_errorf(TSR_EFORMAT, "tokenizer: tokenizer.ggml.add_bos_token is set but "
                                     "tokenizer.ggml.bos_token_id is missing");
        goto fail;
    }

    if (t->kind == TOK_BYTE_BPE) {
        rc = gguf_cstr(g, "tokenizer.ggml.pre", pre, sizeof pre);
        if (rc && rc != TSR_ENOTFOUND) goto fail;
        if ((rc = tok_set_pre(t, rc ? "default" : pre))) goto fail;
        t->unk = -1; /* byte-level BPE covers every byte; HF drops what it cannot spell */
    } else {
        t->space_to_meta = 1;
        t->prefix = space_prefix ? TOK_PREFIX_FIRST : TOK_PREFIX_NEVER;
        t->strip_leading_space = space_prefix;
        t->fuse_unk = 1;
    }
    if ((rc = tok_finish(t))) goto fail;
    if (t->kind == TOK_SPM_BPE) {
        for (int b = 0; b < 256; b++) t->byte_fallback |= t->byte_tok[b] >= 0;
        if (t->unk < 0) t->unk = tok_str_map_get(&t->vocab, "<unk>", 5);
    }

    int have_scores = 0;
    if (t->kind == TOK_SPM_BPE) {
        uint64_t ns;
        rc = gguf_array(g, "tokenizer.ggml.scores", 0, (size_t)n, &ns);
        if (rc && rc != TSR_ENOTFOUND) goto fail;
        have_scores = !rc;
    }
    if (have_scores) {
        if (!(score = malloc(n * sizeof *score))) {
            rc = tsr_errorf(TSR_ENOMEM, "tokenizer: out of memory");
            goto fail;
        }
        for (k = 0; k < n; k++) {
            double v;
            if ((rc = tsr_gguf_arr_float(g, "tokenizer.ggml.scores", k, &v))) goto fail;
            score[k] = (float)v;
        }
        if ((rc = merges_from_scores(t, score))) goto fail;
    } else {
        rc = gguf_array(g, "tokenizer.ggml.merges", 1, 0, &n_merges);
        if (rc == TSR_ENOTFOUND)
            rc = tsr_errorf(TSR_EFORMAT, "tokenizer: the GGUF has neither tokenizer.ggml.merges "
                                         "nor tokenizer.ggml.scores");
        if (rc) goto fail;
        if (n_merges > INT32_MAX) {
            rc = tsr_errorf(TSR_EFORMAT, "tokenizer: %llu merges", (unsigned long long)n_merges);
            goto fail;
        }
        if ((rc = tok_merge_map_init(&t->merges, (size_t)n_merges))) goto fail;
        for (k = 0; k < n_merges; k++) {
            struct tsr_str s;
            size_t sp;
            if ((rc = tsr_gguf_arr_str(g, "tokenizer.ggml.merges", k, &s))) goto fail;
            if (!split_merge(s.p, s.n, &sp)) continue;
            if ((rc = add_merge(t, &mbuf, &mcap, s.p, sp, s.p + sp + 1, s.n - sp - 1, (int32_t)k)))
                goto fail;
        }
    }
    free(score);
    free(mbuf);
    *out = t;
    return 0;

fail:
    free(score);
    free(mbuf);
    free(pl.p);
    tsr_tokenizer_free(t);
    return rc;
}

/* ---- tokenizer.json ------------------------------------------------------------------------ */

struct jctx {
    const char *path;
    int byte_level, meta;
};

static const char *jstr(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static int jbool(json_t *o, const char *key, int def)
{
    json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : def;
}

static int unsupported(const struct jctx *c, const char *what, const char *type)
{
    return tsr_errorf(TSR_EUNSUPPORTED, "%s: %s '%s' is not supported", c->path, what,
                      type ? type : "(no type)");
}

static int json_normalizer(struct tsr_tokenizer *t, struct jctx *c, json_t *n)
{
    int rc;
    if (!n || json_is_null(n)) return 0;
    const char *type = jstr(n, "type");
    if (type && !strcmp(type, "Sequence")) {
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(n, "normalizers"), i, v)
        {
            if ((rc = json_normalizer(t, c, v))) return rc;
        }
        return 0;
    }
    if (type && !strcmp(type, "Prepend")) {
        const char *p = jstr(n, "prepend");
        if (!p || strcmp(p, "\xE2\x96\x81")) return unsupported(c, "normalizer Prepend of", p);
        t->prefix = TOK_PREFIX_ALWAYS;
        c->meta = 1;
        return 0;
    }
    if (type && !strcmp(type, "Replace")) {
        const char *pat = jstr(json_object_get(n, "pattern"), "String");
        const char *to = jstr(n, "content");
        if (!pat || !to || strcmp(pat, " ") || strcmp(to, "\xE2\x96\x81"))
            return unsupported(c, "normalizer Replace other than ' ' -> U+2581, in", "Replace");
        t->space_to_meta = 1;
        c->meta = 1;
        return 0;
    }
    return unsupported(c, "normalizer", type);
}

static int json_pre(struct tsr_tokenizer *t, struct jctx *c, json_t *p)
{
    int rc;
    if (!p || json_is_null(p)) return 0;
    const char *type = jstr(p, "type");
    if (type && !strcmp(type, "Sequence")) {
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(p, "pretokenizers"), i, v)
        {
            if ((rc = json_pre(t, c, v))) return rc;
        }
        return 0;
    }
    if (type && !strcmp(type, "ByteLevel")) {
        c->byte_level = 1;
        if (jbool(p, "add_prefix_space", 0))
            return unsupported(c, "pre-tokenizer ByteLevel with add_prefix_space", "true");
        if (jbool(p, "use_regex", 1))
            return tok_add_split(t, tok_re_gpt2, strlen(tok_re_gpt2), 0, TOK_SPLIT_ISOLATED);
        return 0;
    }
    if (type && !strcmp(type, "Digits")) {
        const char *re = jbool(p, "individual_digits", 0) ? "\\p{N}" : "\\p{N}+";
        return tok_add_split(t, re, strlen(re), 0, TOK_SPLIT_ISOLATED);
    }
    if (type && !strcmp(type, "Split")) {
        json_t *pat = json_object_get(p, "pattern");
        json_t *re = json_object_get(pat, "Regex"), *lit = json_object_get(pat, "String");
        const char *beh = jstr(p, "behavior");
        enum tok_split_behavior b;
        if (beh && !strcmp(beh, "Isolated"))
            b = TOK_SPLIT_ISOLATED;
        else if (beh && !strcmp(beh, "Removed"))
            b = TOK_SPLIT_REMOVED;
        else
            return unsupported(c, "Split behavior", beh);
        if (jbool(p, "invert", 0)) return unsupported(c, "Split with invert", "true");
        json_t *s = json_is_string(re) ? re : lit;
        if (!json_is_string(s))
            return tsr_errorf(TSR_EFORMAT, "%s: Split without a pattern", c->path);
        return tok_add_split(t, json_string_value(s), json_string_length(s), s == lit, b);
    }
    if (type && !strcmp(type, "Metaspace")) {
        const char *rep = jstr(p, "replacement");
        if (rep && strcmp(rep, "\xE2\x96\x81")) return unsupported(c, "Metaspace replacement", rep);
        c->meta = 1;
        t->space_to_meta = 1;
        const char *scheme = jstr(p, "prepend_scheme");
        if (scheme) {
            if (!strcmp(scheme, "first"))
                t->prefix = TOK_PREFIX_FIRST;
            else if (!strcmp(scheme, "always"))
                t->prefix = TOK_PREFIX_ALWAYS;
            else if (!strcmp(scheme, "never"))
                t->prefix = TOK_PREFIX_NEVER;
            else
                return unsupported(c, "Metaspace prepend_scheme", scheme);
        } else {
            t->prefix = jbool(p, "add_prefix_space", 1) ? TOK_PREFIX_ALWAYS : TOK_PREFIX_NEVER;
        }
        if (jbool(p, "split", 1)) { /* every "▁" starts a new piece */
            static const char re[] = "\xE2\x96\x81[^\xE2\x96\x81]*|[^\xE2\x96\x81]+";
            return tok_add_split(t, re, strlen(re), 0, TOK_SPLIT_ISOLATED);
        }
        return 0;
    }
    return unsupported(c, "pre-tokenizer", type);
}

static int json_decoder(struct tsr_tokenizer *t, struct jctx *c, json_t *d)
{
    int rc;
    if (!d || json_is_null(d)) return 0;
    const char *type = jstr(d, "type");
    if (!type) return unsupported(c, "decoder", NULL);
    if (!strcmp(type, "Sequence")) {
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(d, "decoders"), i, v)
        {
            if ((rc = json_decoder(t, c, v))) return rc;
        }
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) {
        c->byte_level = 1;
        return 0;
    }
    if (!strcmp(type, "Replace") || !strcmp(type, "ByteFallback") || !strcmp(type, "Fuse"))
        return 0; /* "▁" → ' ' and <0xXX> are how SPM tokens decode anyway */
    if (!strcmp(type, "Strip")) {
        const char *content = jstr(d, "content");
        json_int_t start = json_integer_value(json_object_get(d, "start"));
        json_int_t stop = json_integer_value(json_object_get(d, "stop"));
        if (!content || strcmp(content, " ") || start > 1 || stop != 0)
            return unsupported(c, "decoder Strip other than one leading space, in", type);
        t->strip_leading_space = start == 1;
        return 0;
    }
    if (!strcmp(type, "Metaspace")) {
        const char *scheme = jstr(d, "prepend_scheme");
        t->strip_leading_space =
            scheme ? strcmp(scheme, "never") != 0 : jbool(d, "add_prefix_space", 1);
        return 0;
    }
    return unsupported(c, "decoder", type);
}

/* A special token named in a config: a string or {"content": ...}. */
static const char *token_name(json_t *v)
{
    if (json_is_string(v)) return json_string_value(v);
    return jstr(v, "content");
}

/* The id of a special token a config names, or -1 if it names none. A name that is not in the
 * vocabulary is an error: the caller decides whether the token is used. */
static int config_token(struct tsr_tokenizer *t, const char *cfg, json_t *root, const char *key,
                        int32_t *id)
{
    const char *name = token_name(json_object_get(root, key));
    *id = -1;
    if (!name) return 0;
    *id = tok_str_map_get(&t->vocab, name, strlen(name));
    if (*id < 0)
        return tsr_errorf(TSR_EFORMAT, "%s: %s \"%.64s\" is not in the vocabulary (%d tokens)", cfg,
                          key, name, (int)t->n_vocab);
    return 0;
}

/* tokenizer_config.json beside tokenizer.json (optional): BOS, EOS and add_bos_token. A BOS or
 * EOS it names must exist when used: EOS always (it ends generation), BOS when prompts start
 * with it. */
static int json_config(struct tsr_tokenizer *t, const char *path)
{
    const char *slash = strrchr(path, '/');
    size_t dir = slash ? (size_t)(slash - path + 1) : 0;
    if (strcmp(path + dir, "tokenizer.json")) return 0; /* not a Hugging Face model directory */
    char *cfg = malloc(dir + sizeof "tokenizer_config.json");
    if (!cfg) return tsr_errorf(TSR_ENOMEM, "tokenizer: out of memory");
    memcpy(cfg, path, dir);
    strcpy(cfg + dir, "tokenizer_config.json");
    json_t *root;
    int rc = tsr_json_load(cfg, "tokenizer_config.json", TSR_MAX_TOKCONFIG_JSON_BYTES, 0, &root);
    if (rc == TSR_ENOTFOUND) {
        free(cfg);
        return 0; /* optional */
    }
    if (rc) goto out;
    json_t *ab = json_object_get(root, "add_bos_token");
    if (json_is_boolean(ab)) t->wants_bos = json_is_true(ab);
    int32_t bos, eos;
    int bos_rc = config_token(t, cfg, root, "bos_token", &bos);
    if (bos_rc && t->wants_bos) {
        rc = tsr_error_prefix(bos_rc, "add_bos_token asks for BOS");
        goto out;
    }
    if (bos >= 0) t->bos = bos;
    if ((rc = config_token(t, cfg, root, "eos_token", &eos))) goto out;
    if (eos >= 0) t->eos = eos;
out:
    json_decref(root);
    free(cfg);
    return rc;
}

/* TemplateProcessing whose single-sequence template starts with a special token: that is BOS,
 * and prompts start with it, so it must be a token of the vocabulary. */
static int json_post(struct tsr_tokenizer *t, const char *path, json_t *p)
{
    const char *type = jstr(p, "type");
    if (!type) return 0;
    if (!strcmp(type, "Sequence")) {
        size_t i;
        json_t *v;
        int rc;
        json_array_foreach(json_object_get(p, "processors"), i, v)
        {
            if ((rc = json_post(t, path, v))) return rc;
        }
        return 0;
    }
    if (strcmp(type, "TemplateProcessing")) return 0;
    json_t *first = json_array_get(json_object_get(p, "single"), 0);
    const char *name = jstr(json_object_get(first, "SpecialToken"), "id");
    if (!name) return 0;
    json_t *ids =
        json_object_get(json_object_get(json_object_get(p, "special_tokens"), name), "ids");
    json_t *id = json_array_get(ids, 0);
    json_int_t bos = json_is_integer(id) ? json_integer_value(id)
                                         : tok_str_map_get(&t->vocab, name, strlen(name));
    if (bos < 0 || bos >= t->n_vocab)
        return tsr_errorf(TSR_EFORMAT,
                          "%s: the post-processor starts prompts with \"%.64s\" (id %lld), which "
                          "is not in the vocabulary (%d tokens)",
                          path, name, (long long)bos, (int)t->n_vocab);
    t->bos = (int32_t)bos;
    t->wants_bos = 1;
    return 0;
}

static int json_token_id(const struct jctx *c, json_t *v, const char *what, int32_t *id)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return tsr_errorf(TSR_EFORMAT, "%s: %s has no valid id", c->path, what);
    if (json_integer_value(v) >= TOK_MAX_VOCAB)
        return tsr_errorf(TSR_EINVAL,
                          "%s: %s has id %lld, over the vocabulary limit of %d tokens (Gemma 3 "
                          "has 262144)",
                          c->path, what, (long long)json_integer_value(v), TOK_MAX_VOCAB);
    *id = (int32_t)json_integer_value(v);
    return 0;
}

int tsr_tokenizer_from_json(const char *path, tsr_tokenizer_t **out)
{
    int rc;
    struct pool pl = {0};
    char *mbuf = NULL;
    size_t mcap = 0;
    struct tsr_tokenizer *t = NULL;
    struct jctx c = {path, 0, 0};
    *out = NULL;

    json_t *root;
    if ((rc = tsr_json_load(path, "tokenizer.json", TSR_MAX_TOKENIZER_JSON_BYTES, JSON_ALLOW_NUL,
                            &root)))
        return rc;

    json_t *model = json_object_get(root, "model");
    json_t *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges");
    json_t *added = json_object_get(root, "added_tokens");
    const char *mtype = jstr(model, "type");
    if (!json_is_object(vocab) || (mtype && strcmp(mtype, "BPE")) || !json_is_array(merges)) {
        rc = mtype && strcmp(mtype, "BPE")
                 ? tsr_errorf(TSR_EUNSUPPORTED, "%s: model type '%s' is not supported (BPE is)",
                              path, mtype)
                 : tsr_errorf(TSR_EFORMAT, "%s: model has no vocab or merges", path);
        goto fail;
    }
    const char *cont = jstr(model, "continuing_subword_prefix");
    const char *eow = jstr(model, "end_of_word_suffix");
    if ((cont && *cont) || (eow && *eow)) {
        rc = unsupported(&c, "BPE continuing_subword_prefix/end_of_word_suffix", cont ? cont : eow);
        goto fail;
    }

    /* Vocabulary size: the largest id, model or added, plus one. */
    const char *key;
    json_t *v;
    int32_t id, max_id = -1;
    json_object_foreach(vocab, key, v)
    {
        if ((rc = json_token_id(&c, v, key, &id))) goto fail;
        if (id > max_id) max_id = id;
    }
    size_t i;
    json_array_foreach(added, i, v)
    {
        if ((rc = json_token_id(&c, json_object_get(v, "id"), "an added token", &id))) goto fail;
        if (id > max_id) max_id = id;
    }
    if (!(t = tok_new())) {
        rc = TSR_ENOMEM;
        goto fail;
    }
    if ((rc = alloc_tables(t, &pl, (size_t)max_id + 1))) goto fail;
    json_object_foreach(vocab, key, v)
    {
        if ((rc = set_piece(t, &pl, (int32_t)json_integer_value(v), key, strlen(key)))) goto fail;
    }
    json_array_foreach(added, i, v)
    {
        json_t *content = json_object_get(v, "content");
        if (!json_is_string(content)) {
            rc = tsr_errorf(TSR_EFORMAT, "%s: added token without content", path);
            goto fail;
        }
        id = (int32_t)json_integer_value(json_object_get(v, "id"));
        if ((rc = set_piece(t, &pl, id, json_string_value(content), json_string_length(content))))
            goto fail;
        t->attr[id] |= TOK_ATTR_ADDED;
        if (jbool(v, "special", 0)) t->attr[id] |= TOK_ATTR_SPECIAL;
        if (jbool(v, "lstrip", 0)) t->attr[id] |= TOK_ATTR_LSTRIP;
        if (jbool(v, "rstrip", 0)) t->attr[id] |= TOK_ATTR_RSTRIP;
    }
    t->pool = pl.p;
    pl.p = NULL;

    if ((rc = json_normalizer(t, &c, json_object_get(root, "normalizer"))) ||
        (rc = json_pre(t, &c, json_object_get(root, "pre_tokenizer"))) ||
        (rc = json_decoder(t, &c, json_object_get(root, "decoder"))))
        goto fail;
    if (c.byte_level) {
        t->kind = TOK_BYTE_BPE;
    } else if (c.meta) {
        t->kind = TOK_SPM_BPE;
    } else {
        rc = tsr_errorf(TSR_EUNSUPPORTED,
                        "%s: neither a ByteLevel nor a Metaspace (SentencePiece) tokenizer", path);
        goto fail;
    }
    t->byte_fallback = jbool(model, "byte_fallback", 0);
    t->fuse_unk = jbool(model, "fuse_unk", 0);
    t->ignore_merges |= jbool(model, "ignore_merges", 0);
    if ((rc = tok_finish(t))) goto fail;
    const char *unk = jstr(model, "unk_token");
    if (unk) t->unk = tok_str_map_get(&t->vocab, unk, strlen(unk));

    if ((rc = tok_merge_map_init(&t->merges, json_array_size(merges)))) goto fail;
    json_array_foreach(merges, i, v)
    {
        if (i > INT32_MAX) break;
        if (json_is_string(v)) {
            const char *s = json_string_value(v);
            size_t n = json_string_length(v), sp;
            if (split_merge(s, n, &sp) &&
                (rc = add_merge(t, &mbuf, &mcap, s, sp, s + sp + 1, n - sp - 1, (int32_t)i)))
                goto fail;
        } else if (json_is_array(v) && json_array_size(v) == 2) {
            json_t *l = json_array_get(v, 0), *r = json_array_get(v, 1);
            if (json_is_string(l) && json_is_string(r) &&
                (rc = add_merge(t, &mbuf, &mcap, json_string_value(l), json_string_length(l),
                                json_string_value(r), json_string_length(r), (int32_t)i)))
                goto fail;
        }
    }

    /* BOS/EOS: tokenizer.json does not name them; the post-processor and tokenizer_config.json
     * beside it do. Failing those, the usual names. */
    if ((rc = json_post(t, path, json_object_get(root, "post_processor"))) ||
        (rc = json_config(t, path)))
        goto fail;
    static const char *const bos_names[] = {"<s>", "<|begin_of_text|>", "<|startoftext|>"};
    static const char *const eos_names[] = {"</s>", "<|end_of_text|>", "<|endoftext|>",
                                            "<|im_end|>"};
    for (size_t k = 0; t->bos < 0 && k < sizeof bos_names / sizeof *bos_names; k++) {
        int32_t b = tok_str_map_get(&t->vocab, bos_names[k], strlen(bos_names[k]));
        if (b >= 0 && (t->attr[b] & TOK_ATTR_SPECIAL)) t->bos = b;
    }
    for (size_t k = 0; t->eos < 0 && k < sizeof eos_names / sizeof *eos_names; k++) {
        int32_t e = tok_str_map_get(&t->vocab, eos_names[k], strlen(eos_names[k]));
        if (e >= 0 && (t->attr[e] & TOK_ATTR_SPECIAL)) t->eos = e;
    }
    if (t->eos >= 0) t->attr[t->eos] |= TOK_ATTR_EOG;
    if (t->wants_bos && t->bos < 0) {
        rc = tsr_errorf(TSR_EFORMAT, "%s: add_bos_token is set but no BOS token is named", path);
        goto fail;
    }

    free(mbuf);
    json_decref(root);
    *out = t;
    return 0;

fail:
    free(mbuf);
    free(pl.p);
    tsr_tokenizer_free(t);
    json_decref(root);
    return rc;
}
