/* Internals shared by the tokenizer's files (tokenizer.c: encode/decode, tok_bpe.c: hash maps and
 * the merge loop, tok_pretok.c: pre-tokenizer splits, tok_load.c: GGUF and tokenizer.json
 * loaders, tok_unicode.c: UTF-8). Not a public header. */
#ifndef TSR_MODEL_TOK_INTERNAL_H
#define TSR_MODEL_TOK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "model/tokenizer.h"

enum tok_kind {
    TOK_BYTE_BPE, /* GPT-2 byte-level BPE: bytes map to printable code points, merges by rank */
    TOK_SPM_BPE,  /* SentencePiece-style BPE over UTF-8 chars, "▁" for space, <0xXX> fallback */
};

/* Where SentencePiece's dummy prefix "▁" goes. */
enum tok_prefix {
    TOK_PREFIX_NEVER,
    TOK_PREFIX_FIRST,  /* before the text fragment at offset 0 only (HF prepend_scheme "first") */
    TOK_PREFIX_ALWAYS, /* before every text fragment, after special tokens too (HF legacy) */
};

/* Token attributes. */
enum {
    TOK_ATTR_SPECIAL = 1 << 0, /* control token: matched in text only with parse_special */
    TOK_ATTR_ADDED = 1 << 1,   /* matched whole in text (special or user-defined) */
    TOK_ATTR_BYTE = 1 << 2,    /* <0xXX> byte-fallback token */
    TOK_ATTR_LSTRIP = 1 << 3,  /* when matched, swallows whitespace on its left */
    TOK_ATTR_RSTRIP = 1 << 4,  /* ... and on its right */
    TOK_ATTR_EOG = 1 << 5,     /* ends a generation */
};

/* String → id, open addressing over a power-of-two table. Keys live in the tokenizer's pool. */
struct tok_str_map {
    int32_t *slot; /* id or -1 */
    uint32_t mask;
    const struct tsr_tokenizer *t;
};

/* (left id, right id) → (rank, result id). */
struct tok_merge {
    uint64_t key; /* left << 32 | right; UINT64_MAX = empty */
    int32_t rank;
    int32_t result;
};
struct tok_merge_map {
    struct tok_merge *slot;
    uint64_t mask;
    size_t n;
};

/* One pre-tokenizer step: split every piece by a regex. */
enum tok_split_behavior { TOK_SPLIT_ISOLATED, TOK_SPLIT_REMOVED };
struct tok_split {
    pcre2_code *re;
    enum tok_split_behavior behavior;
};
#define TOK_MAX_SPLITS 8

struct tok_added {
    int32_t id;
    uint32_t len;
    unsigned char first; /* its first byte */
};

struct tsr_tokenizer {
    enum tok_kind kind;
    int32_t n_vocab;

    /* Token i's vocabulary string (byte-level spelling, or with "▁") is pool[off[i]], len[i]
     * bytes, NUL-terminated; its decoded bytes are dec_pool[dec_off[i]], dec_len[i] bytes. */
    char *pool;
    uint32_t *off, *len;
    char *dec_pool;
    uint32_t *dec_off, *dec_len;
    uint8_t *attr;

    struct tok_str_map vocab;
    struct tok_merge_map merges;
    int32_t byte_tok[256]; /* id of the symbol for each byte (byte-level char / <0xXX>), or -1 */
    char spell[256][2];    /* byte-level: the UTF-8 spelling of each byte (1 or 2 bytes) */
    uint8_t spell_len[256];

    /* Tokens matched whole in the text, sorted by first byte then length descending; the
     * candidates for first byte b are added[first[b] .. first[b + 1]). */
    struct tok_added *added;
    uint32_t n_added;
    uint32_t first[257];

    struct tok_split split[TOK_MAX_SPLITS];
    int n_split;

    int ignore_merges;       /* a word that is itself a token skips merging (Llama 3) */
    enum tok_prefix prefix;  /* SPM */
    int space_to_meta;       /* SPM: ' ' → "▁" */
    int strip_leading_space; /* SPM decode: drop one leading space of the output */
    int byte_fallback;       /* SPM: unknown chars become <0xXX> tokens */
    int fuse_unk;

    int32_t bos, eos, unk, eot, eom;
    int wants_bos;
};

/* tok_unicode.c */
/* Length of the valid UTF-8 prefix of s; == n when all of it is valid (strict: no overlongs,
 * surrogates or code points above U+10FFFF). */
size_t tok_utf8_valid_prefix(const char *s, size_t n);
/* Length of the UTF-8 sequence starting with byte c (1 for invalid lead bytes). */
int tok_utf8_len(unsigned char c);
/* Decodes the code point at s (valid UTF-8, n > 0); *adv is its length. */
uint32_t tok_utf8_decode(const char *s, size_t n, int *adv);
int tok_utf8_encode(uint32_t cp, char out[4]);
/* Unicode White_Space (Rust's char::is_whitespace, Python's str.isspace() minus U+001C..1F). */
int tok_is_unicode_space(uint32_t cp);
/* GPT-2 byte-level alphabet: the code point that spells byte b, and back (-1 if cp spells none).
 * O(256); the loaders cache what they need. */
uint32_t tok_byte_to_cp(uint8_t b);
int tok_cp_to_byte(uint32_t cp);

/* Streaming lossy UTF-8: invalid sequences become U+FFFD, one per maximal invalid subpart (as
 * Rust's String::from_utf8_lossy and Python's errors="replace"). */
struct tok_utf8_stream {
    unsigned char pend[4];
    int npend, need;
};
/* Appends the sanitized form of byte c to out (capacity for 3 + 4 bytes needed); returns the
 * number of bytes written. */
int tok_utf8_stream_feed(struct tok_utf8_stream *s, unsigned char c, char *out);
int tok_utf8_stream_flush(struct tok_utf8_stream *s, char *out);

/* tok_bpe.c */
int tok_str_map_init(struct tok_str_map *m, const struct tsr_tokenizer *t, size_t n);
void tok_str_map_free(struct tok_str_map *m);
void tok_str_map_put(struct tok_str_map *m, int32_t id); /* later ids win */
int32_t tok_str_map_get(const struct tok_str_map *m, const char *s, size_t n);

int tok_merge_map_init(struct tok_merge_map *m, size_t n);
void tok_merge_map_free(struct tok_merge_map *m);
/* Keeps the first (lowest-rank) entry for a pair. */
void tok_merge_map_put(struct tok_merge_map *m, int32_t l, int32_t r, int32_t rank, int32_t res);
const struct tok_merge *tok_merge_map_get(const struct tok_merge_map *m, int32_t l, int32_t r);

/* Growable id vector. */
struct tok_ids {
    int32_t *v;
    size_t n, cap;
};
int tok_ids_push(struct tok_ids *o, int32_t id);

/* Scratch for the merge loop, reused across words of one encode call. */
struct tok_bpe_scratch {
    struct tok_sym *sym;
    size_t sym_cap;
    struct tok_heap_ent *heap;
    size_t heap_cap;
    char *buf;
    size_t buf_cap;
};
void tok_bpe_scratch_free(struct tok_bpe_scratch *s);
/* Encodes one pre-tokenized word: bytes for byte-level BPE, normalized text ("▁" for space) for
 * SPM. Appends ids to out. */
int tok_bpe_word(const struct tsr_tokenizer *t, struct tok_bpe_scratch *s, const char *w, size_t n,
                 struct tok_ids *out);

/* tok_pretok.c */
/* Calls emit(ctx, piece) for every piece text[0..n) splits into under t's pre-tokenizer steps,
 * in order. */
typedef int (*tok_emit_fn)(void *ctx, const char *p, size_t n);
int tok_pretokenize(const struct tsr_tokenizer *t, pcre2_match_data *md, const char *text, size_t n,
                    tok_emit_fn emit, void *ctx);
/* Compiles a regex (PCRE2_UTF | PCRE2_UCP, JIT when available) into t->split[]. */
int tok_add_split(struct tsr_tokenizer *t, const char *pattern, size_t len, int literal,
                  enum tok_split_behavior behavior);
/* Installs the splits of a GGUF tokenizer.ggml.pre name. */
int tok_set_pre(struct tsr_tokenizer *t, const char *pre);
extern const char tok_re_gpt2[];

/* tok_load.c: shared by both loaders */
/* Builds decode strings, vocab map, byte table and added-token index once pool/off/len/attr and
 * kind are set. */
int tok_finish(struct tsr_tokenizer *t);

#endif
