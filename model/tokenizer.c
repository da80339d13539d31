/* Tokenizer: encode (added-token split, pre-tokenizer, BPE), decode and streaming decode. The
 * loaders are in tok_load.c, the BPE merge loop in tok_bpe.c, the regex splits in tok_pretok.c.
 *
 * Encode, step by step:
 *  1. The text must be valid UTF-8 (TSR_EINVAL otherwise).
 *  2. Added tokens are cut out whole, leftmost-longest (Hugging Face's AddedVocabulary rule):
 *     control/special ones only with parse_special, user-defined ones always.
 *  3. Each text fragment between them is pre-tokenized and every piece BPE-merged.
 *     SPM: "▁" replaces ' ' and, SentencePiece's dummy prefix, goes before the fragment at offset
 *     0 (TOK_PREFIX_FIRST; every fragment with TOK_PREFIX_ALWAYS) even when it starts with a
 *     space, so " x" and "x" differ. (HF's Metaspace skips the prefix before a space, which loses
 *     information; sentencepiece and llama.cpp do not.) Decode drops one leading space of its
 *     output, so decode(encode(s)) == s.
 *
 * Decode joins the tokens' bytes (byte-level: through GPT-2's byte table; SPM: "▁" → ' ', <0xXX>
 * → the byte) and replaces invalid UTF-8 with U+FFFD, one per maximal invalid subpart. */
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/tok_internal.h"

/* ---- accessors ----------------------------------------------------------------------------- */

int tsr_tokenizer_n_vocab(const tsr_tokenizer_t *t)
{
    return t->n_vocab;
}

int32_t tsr_tokenizer_bos(const tsr_tokenizer_t *t)
{
    return t->bos;
}

int32_t tsr_tokenizer_eos(const tsr_tokenizer_t *t)
{
    return t->eos;
}

int tsr_tokenizer_is_eog(const tsr_tokenizer_t *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && (t->attr[id] & TOK_ATTR_EOG);
}

int tsr_tokenizer_is_special(const tsr_tokenizer_t *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && (t->attr[id] & TOK_ATTR_SPECIAL);
}

int tsr_tokenizer_wants_bos(const tsr_tokenizer_t *t)
{
    return t->wants_bos && t->bos >= 0;
}

int32_t tsr_tokenizer_find(const tsr_tokenizer_t *t, const char *piece)
{
    return piece ? tok_str_map_get(&t->vocab, piece, strlen(piece)) : -1;
}

int32_t tsr_tokenizer_byte_token(const tsr_tokenizer_t *t, uint8_t b)
{
    return t->byte_tok[b];
}

const char *tsr_tokenizer_piece(const tsr_tokenizer_t *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab ? t->pool + t->off[id] : NULL;
}

void tsr_tokenizer_free(tsr_tokenizer_t *t)
{
    if (!t) return;
    for (int i = 0; i < t->n_split; i++) pcre2_code_free(t->split[i].re);
    tok_str_map_free(&t->vocab);
    tok_merge_map_free(&t->merges);
    free(t->added);
    free(t->pool);
    free(t->off);
    free(t->len);
    free(t->dec_pool);
    free(t->dec_off);
    free(t->dec_len);
    free(t->attr);
    free(t);
}

/* ---- encode -------------------------------------------------------------------------------- */

struct enc {
    const struct tsr_tokenizer *t;
    struct tok_bpe_scratch bpe;
    struct tok_ids out;
    pcre2_match_data *md;
    char *norm; /* SPM: the fragment with "▁" for ' ' */
    size_t norm_cap;
};

static int emit_word(void *ctx, const char *p, size_t n)
{
    struct enc *e = ctx;
    return tok_bpe_word(e->t, &e->bpe, p, n, &e->out);
}

static const char meta[3] = {(char)0xE2, (char)0x96, (char)0x81}; /* U+2581 "▁" */

static int encode_fragment(struct enc *e, const char *p, size_t n, int at_start)
{
    const struct tsr_tokenizer *t = e->t;
    if (n == 0) return 0;
    if (t->kind == TOK_BYTE_BPE) return tok_pretokenize(t, e->md, p, n, emit_word, e);

    int prefix = t->prefix == TOK_PREFIX_ALWAYS || (t->prefix == TOK_PREFIX_FIRST && at_start);
    if (n > (SIZE_MAX - 3) / 3) return tsr_errorf(TSR_ERANGE, "tokenizer: text too long");
    size_t want = 3 * n + 3;
    if (e->norm_cap < want) {
        char *q = realloc(e->norm, want);
        if (!q) return tsr_errorf(TSR_ENOMEM, "tokenizer: out of memory (%zu bytes)", want);
        e->norm = q;
        e->norm_cap = want;
    }
    size_t w = 0;
    if (prefix) {
        memcpy(e->norm, meta, 3);
        w = 3;
    }
    for (size_t i = 0; i < n; i++) {
        if (p[i] == ' ' && t->space_to_meta) {
            memcpy(e->norm + w, meta, 3);
            w += 3;
        } else {
            e->norm[w++] = p[i];
        }
    }
    if (t->n_split) return tok_pretokenize(t, e->md, e->norm, w, emit_word, e);
    return emit_word(e, e->norm, w);
}

/* The added token matched at text[i], or -1: longest first among those starting with that byte. */
static int32_t match_added(const struct tsr_tokenizer *t, const char *text, size_t len, size_t i,
                           int parse_special)
{
    unsigned char c = (unsigned char)text[i];
    for (uint32_t k = t->first[c]; k < t->first[c + 1]; k++) {
        const struct tok_added *a = &t->added[k];
        if (!parse_special && (t->attr[a->id] & TOK_ATTR_SPECIAL)) continue;
        if (a->len <= len - i && memcmp(text + i, t->pool + t->off[a->id], a->len) == 0)
            return a->id;
    }
    return -1;
}

/* Start of the run of Unicode whitespace that ends at text[end], not before lo. */
static size_t space_run_before(const char *text, size_t lo, size_t end)
{
    while (end > lo) {
        size_t s = end - 1;
        while (s > lo && ((unsigned char)text[s] & 0xC0) == 0x80) s--;
        int adv;
        if (!tok_is_unicode_space(tok_utf8_decode(text + s, end - s, &adv))) break;
        end = s;
    }
    return end;
}

static size_t space_run_after(const char *text, size_t i, size_t len)
{
    while (i < len) {
        int adv;
        if (!tok_is_unicode_space(tok_utf8_decode(text + i, len - i, &adv))) break;
        i += (size_t)adv;
    }
    return i;
}

int tsr_tokenizer_encode(const tsr_tokenizer_t *t, const char *text, size_t len, int add_bos,
                         int parse_special, int32_t **ids, size_t *n)
{
    int rc = 0;
    *ids = NULL;
    *n = 0;
    if (!text && len) return tsr_errorf(TSR_EINVAL, "tokenizer: NULL text");
    size_t valid = tok_utf8_valid_prefix(text, len);
    if (valid != len)
        return tsr_errorf(TSR_EINVAL, "tokenizer: text is not valid UTF-8 (at byte %zu of %zu)",
                          valid, len);

    struct enc e = {.t = t};
    if (t->n_split) {
        e.md = pcre2_match_data_create(1, NULL);
        if (!e.md) return tsr_errorf(TSR_ENOMEM, "tokenizer: out of memory (match data)");
    }
    if (add_bos && t->bos >= 0 && (rc = tok_ids_push(&e.out, t->bos))) goto done;

    size_t frag = 0;
    for (size_t i = 0; i < len && t->n_added;) {
        unsigned char c = (unsigned char)text[i];
        int32_t id =
            t->first[c] == t->first[c + 1] ? -1 : match_added(t, text, len, i, parse_special);
        if (id < 0) {
            i++;
            continue;
        }
        size_t end = i, next = i + t->len[id];
        if (t->attr[id] & TOK_ATTR_LSTRIP) end = space_run_before(text, frag, end);
        if (t->attr[id] & TOK_ATTR_RSTRIP) next = space_run_after(text, next, len);
        if ((rc = encode_fragment(&e, text + frag, end - frag, frag == 0)) ||
            (rc = tok_ids_push(&e.out, id)))
            goto done;
        i = frag = next;
    }
    rc = encode_fragment(&e, text + frag, len - frag, frag == 0);

done:
    pcre2_match_data_free(e.md);
    tok_bpe_scratch_free(&e.bpe);
    free(e.norm);
    if (rc) {
        free(e.out.v);
        return rc;
    }
    if (!e.out.v) { /* an empty result is still a malloc'ed array */
        e.out.v = malloc(sizeof *e.out.v);
        if (!e.out.v) return tsr_errorf(TSR_ENOMEM, "tokenizer: out of memory");
    }
    *ids = e.out.v;
    *n = e.out.n;
    return 0;
}

/* ---- decode -------------------------------------------------------------------------------- */

static int check_id(const struct tsr_tokenizer *t, int32_t id)
{
    if (id < 0 || id >= t->n_vocab)
        return tsr_errorf(TSR_EINVAL, "tokenizer: token id %d out of range [0, %d)", (int)id,
                          (int)t->n_vocab);
    return 0;
}

/* Feeds token id's bytes through the lossy UTF-8 stream into out; returns bytes written (at most
 * 3 * dec_len + 3). *started tracks SPM's one leading space to drop. */
static size_t feed_token(const struct tsr_tokenizer *t, struct tok_utf8_stream *us, int *started,
                         int32_t id, char *out)
{
    const char *p = t->dec_pool + t->dec_off[id];
    size_t w = 0;
    for (uint32_t i = 0; i < t->dec_len[id]; i++) {
        size_t k = (size_t)tok_utf8_stream_feed(us, (unsigned char)p[i], out + w);
        if (k && !*started) {
            *started = 1;
            if (t->strip_leading_space && out[w] == ' ') {
                memmove(out + w, out + w + 1, k - 1);
                k--;
            }
        }
        w += k;
    }
    return w;
}

int tsr_tokenizer_decode(const tsr_tokenizer_t *t, const int32_t *ids, size_t n, int skip_special,
                         char **out, size_t *len)
{
    int rc;
    *out = NULL;
    *len = 0;
    if (!ids && n) return tsr_errorf(TSR_EINVAL, "tokenizer: NULL ids");
    size_t cap = 4;
    for (size_t i = 0; i < n; i++) {
        if ((rc = check_id(t, ids[i]))) return rc;
        cap += 3 * (size_t)t->dec_len[ids[i]];
    }
    char *buf = malloc(cap);
    if (!buf) return tsr_errorf(TSR_ENOMEM, "tokenizer: out of memory (%zu bytes)", cap);
    struct tok_utf8_stream us = {{0}, 0, 0};
    int started = 0;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        if (skip_special && (t->attr[ids[i]] & TOK_ATTR_SPECIAL)) continue;
        w += feed_token(t, &us, &started, ids[i], buf + w);
    }
    w += (size_t)tok_utf8_stream_flush(&us, buf + w);
    /* A flushed U+FFFD can be the first output; it is never a space, so no strip is due. */
    buf[w] = '\0';
    *out = buf;
    *len = w;
    return 0;
}

/* ---- streaming decode ---------------------------------------------------------------------- */

struct tsr_detok {
    const struct tsr_tokenizer *t;
    int skip_special;
    struct tok_utf8_stream us;
    int started;
    char *buf;
    size_t cap;
};

tsr_detok_t *tsr_detok_new(const tsr_tokenizer_t *t, int skip_special)
{
    tsr_detok_t *d = calloc(1, sizeof *d);
    if (!d) {
        tsr_errorf(TSR_ENOMEM, "tokenizer: out of memory (detokenizer)");
        return NULL;
    }
    d->t = t;
    d->skip_special = skip_special;
    return d;
}

static int detok_reserve(tsr_detok_t *d, size_t want)
{
    if (d->cap >= want) return 0;
    size_t c = d->cap ? d->cap : 64;
    while (c < want) c *= 2;
    char *q = realloc(d->buf, c);
    if (!q) return tsr_errorf(TSR_ENOMEM, "tokenizer: out of memory (%zu bytes)", c);
    d->buf = q;
    d->cap = c;
    return 0;
}

int tsr_detok_push(tsr_detok_t *d, int32_t id, const char **out, size_t *n)
{
    int rc;
    *out = "";
    *n = 0;
    if ((rc = check_id(d->t, id))) return rc;
    if (d->skip_special && (d->t->attr[id] & TOK_ATTR_SPECIAL)) return 0;
    if ((rc = detok_reserve(d, 3 * (size_t)d->t->dec_len[id] + 4))) return rc;
    size_t w = feed_token(d->t, &d->us, &d->started, id, d->buf);
    d->buf[w] = '\0';
    *out = d->buf;
    *n = w;
    return 0;
}

int tsr_detok_flush(tsr_detok_t *d, const char **out, size_t *n)
{
    int rc;
    *out = "";
    *n = 0;
    if ((rc = detok_reserve(d, 4))) return rc;
    size_t w = (size_t)tok_utf8_stream_flush(&d->us, d->buf);
    d->buf[w] = '\0';
    d->started = 0; /* the next push starts a new text */
    *out = d->buf;
    *n = w;
    return 0;
}

void tsr_detok_free(tsr_detok_t *d)
{
    if (!d) return;
    free(d->buf);
    free(d);
}
