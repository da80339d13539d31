/* libFuzzer target for the tokenizer. Each input is used twice:
 *  - as text: encoded with and without special-token parsing. Invalid UTF-8 must give TSR_EINVAL;
 *    valid UTF-8 must decode back to itself (when the vocabulary has a token for each of its
 *    bytes and, SentencePiece's one ambiguity, the text has no U+2581), and the detokenizer's
 * chunks must be whole UTF-8 characters adding up to that decode.
 *  - as little-endian u16 token ids, some out of range: decode must reject those with TSR_EINVAL
 *    and otherwise return valid UTF-8 that the detokenizer reproduces chunk by chunk.
 *
 * The tokenizer is loaded once, from $TSR_TOKENIZER (a tokenizer.json, or a .gguf), else from
 * tests/reference/smollm2_tokenizer.json relative to the working directory: run from the repo
 * root, or set TSR_TOKENIZER. The round-trip check assumes added tokens that strip no spaces
 * (true of every tokenizer in tests/reference but bpe_tiny_tokenizer.json). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static tsr_tokenizer_t *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *path = getenv("TSR_TOKENIZER");
    if (!path) path = "tests/reference/smollm2_tokenizer.json";
    size_t n = strlen(path);
    int rc;
    if (n > 5 && !strcmp(path + n - 5, ".gguf")) {
        tsr_gguf_t *g;
        rc = tsr_gguf_open(path, &g);
        if (!rc) {
            rc = tsr_tokenizer_from_gguf(g, &tok);
            tsr_gguf_close(g);
        }
    } else {
        rc = tsr_tokenizer_from_json(path, &tok);
    }
    if (rc) {
        fprintf(stderr, "fuzz_tokenizer: %s (set TSR_TOKENIZER or run from the repo root)\n",
                tsr_last_error());
        abort();
    }
    return 0;
}

static int valid_utf8(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i], len, min;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (i + len > n) return 0;
        for (unsigned k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += len;
    }
    return 1;
}

/* The detokenizer's chunks are whole characters and add up to want[0..wn). */
static void check_stream(const int32_t *ids, size_t n, int skip, const char *want, size_t wn)
{
    tsr_detok_t *d = tsr_detok_new(tok, skip);
    if (!d) abort();
    size_t w = 0;
    for (size_t i = 0; i <= n; i++) {
        const char *chunk;
        size_t cn;
        int rc = i < n ? tsr_detok_push(d, ids[i], &chunk, &cn) : tsr_detok_flush(d, &chunk, &cn);
        if (rc || !valid_utf8((const uint8_t *)chunk, cn) || w + cn > wn ||
            memcmp(want + w, chunk, cn) != 0)
            abort();
        w += cn;
    }
    if (w != wn) abort();
    tsr_detok_free(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int valid = valid_utf8(data, size);
    /* Bytes the vocabulary cannot spell are dropped (see tsr_tokenizer_byte_token), and a
     * SentencePiece vocabulary reads a literal U+2581 as a space. */
    int spellable = !memmem(data, size, "\xE2\x96\x81", 3);
    for (size_t i = 0; i < size; i++) spellable &= tsr_tokenizer_byte_token(tok, data[i]) >= 0;
    for (int special = 0; special <= 1; special++) {
        int32_t *ids;
        size_t n;
        int rc = tsr_tokenizer_encode(tok, (const char *)data, size, special, special, &ids, &n);
        if (!valid) {
            if (rc != TSR_EINVAL || ids) abort();
            continue;
        }
        if (rc) abort();
        size_t skip = special && tsr_tokenizer_bos(tok) >= 0; /* the BOS we asked for */
        char *text;
        size_t len;
        if (tsr_tokenizer_decode(tok, ids + skip, n - skip, 0, &text, &len) != 0) abort();
        if (spellable && (len != size || memcmp(text, data, size) != 0)) abort();
        check_stream(ids + skip, n - skip, 0, text, len);
        free(text);
        if (tsr_tokenizer_decode(tok, ids, n, 1, &text, &len) != 0) abort();
        check_stream(ids, n, 1, text, len);
        free(text);
        free(ids);
    }

    /* The bytes as token ids; a few out of range on either side. */
    size_t n = size / 2;
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids) return 0;
    int32_t nv = tsr_tokenizer_n_vocab(tok);
    int in_range = 1;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)data[2 * i] | (uint32_t)data[2 * i + 1] << 8;
        ids[i] = (int32_t)(v % (uint32_t)(nv + 8)) - 4;
        in_range &= ids[i] >= 0 && ids[i] < nv;
    }
    for (int skip = 0; skip <= 1; skip++) {
        char *text;
        size_t len;
        int rc = tsr_tokenizer_decode(tok, ids, n, skip, &text, &len);
        if (!in_range) {
            if (rc != TSR_EINVAL) abort();
            continue;
        }
        if (rc || !valid_utf8((const uint8_t *)text, len) || text[len] != '\0') abort();
        check_stream(ids, n, skip, text, len);
        free(text);
    }
    free(ids);
    return 0;
}
