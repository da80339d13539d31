/* Tokenizer against Hugging Face goldens (tests/reference/make_tokenizer_golden.py):
 * SmolLM2 from its GGUF and from tokenizer.json, and a tiny SentencePiece BPE from GGUF metadata
 * and from tokenizer.json. Every corpus string must give the golden ids (with and without
 * special-token parsing), decode back to itself, and stream through the detokenizer in whole
 * UTF-8 characters. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <jansson.h>

#include "common/status.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

#include "unit.h"

#define REF   TSR_SOURCE_DIR "/tests/reference/"
#define MODEL TSR_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf"

struct entry {
    const char *text;
    size_t len;
    json_t *ids, *ids_nospecial;
};

struct golden {
    json_t *root;
    struct entry *e;
    size_t n;
};

static void golden_load(struct golden *g, const char *path)
{
    json_error_t err;
    g->root = json_load_file(path, JSON_ALLOW_NUL, &err);
    if (!g->root) fail_msg("%s: %s", path, err.text);
    json_t *entries = json_object_get(g->root, "entries");
    g->n = json_array_size(entries);
    assert_true(g->n >= 200);
    g->e = calloc(g->n, sizeof *g->e);
    for (size_t i = 0; i < g->n; i++) {
        json_t *e = json_array_get(entries, i);
        json_t *text = json_object_get(e, "text");
        g->e[i].text = json_string_value(text);
        g->e[i].len = json_string_length(text);
        g->e[i].ids = json_object_get(e, "ids");
        g->e[i].ids_nospecial = json_object_get(e, "ids_nospecial");
    }
}

static void golden_free(struct golden *g)
{
    free(g->e);
    json_decref(g->root);
}

static tsr_tokenizer_t *load_gguf(const char *path)
{
    tsr_gguf_t *g;
    tsr_tokenizer_t *t;
    int rc = tsr_gguf_open(path, &g);
    if (rc) fail_msg("%s: %s", path, tsr_last_error());
    rc = tsr_tokenizer_from_gguf(g, &t);
    tsr_gguf_close(g); /* the tokenizer copies what it needs */
    if (rc) fail_msg("%s: %s", path, tsr_last_error());
    return t;
}

static tsr_tokenizer_t *load_json(const char *path)
{
    tsr_tokenizer_t *t;
    int rc = tsr_tokenizer_from_json(path, &t);
    if (rc) fail_msg("%s: %s", path, tsr_last_error());
    return t;
}

static void print_escaped(const char *s, size_t n)
{
    for (size_t i = 0; i < n && i < 80; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '\\' && c != 0x7f)
            putc(c, stderr);
        else
            fprintf(stderr, "\\x%02x", c);
    }
}

static int ids_equal(const int32_t *ids, size_t n, json_t *want)
{
    if (json_array_size(want) != n) return 0;
    for (size_t i = 0; i < n; i++)
        if (json_integer_value(json_array_get(want, i)) != ids[i]) return 0;
    return 1;
}

static void print_ids(const char *what, const int32_t *ids, size_t n, json_t *want)
{
    fprintf(stderr, "  %s got [", what);
    for (size_t i = 0; i < n && i < 24; i++) fprintf(stderr, "%s%d", i ? " " : "", (int)ids[i]);
    fprintf(stderr, "]\n  %s want [", what);
    for (size_t i = 0; i < json_array_size(want) && i < 24; i++)
        fprintf(stderr, "%s%lld", i ? " " : "",
                (long long)json_integer_value(json_array_get(want, i)));
    fprintf(stderr, "]\n");
}

/* Checks every golden string (but those containing skip, if set): ids with and without special
 * parsing. Returns mismatches. */
static int check_golden(tsr_tokenizer_t *t, const char *golden_path, const char *name,
                        const char *skip)
{
    struct golden g;
    golden_load(&g, golden_path);
    int bad = 0;
    size_t checked = 0;
    for (size_t i = 0; i < g.n; i++) {
        if (skip && strstr(g.e[i].text, skip)) continue;
        checked++;
        for (int special = 1; special >= 0; special--) {
            int32_t *ids;
            size_t n;
            int rc = tsr_tokenizer_encode(t, g.e[i].text, g.e[i].len, 0, special, &ids, &n);
            assert_int_equal(rc, 0);
            json_t *want = special ? g.e[i].ids : g.e[i].ids_nospecial;
            if (!ids_equal(ids, n, want)) {
                if (bad < 10) {
                    fprintf(stderr, "%s: string %zu (parse_special=%d) \"", name, i, special);
                    print_escaped(g.e[i].text, g.e[i].len);
                    fprintf(stderr, "\"\n");
                    print_ids("", ids, n, want);
                }
                bad++;
            }
            free(ids);
        }
    }
    fprintf(stderr, "%s: %zu strings x 2 modes, %d mismatches\n", name, checked, bad);
    golden_free(&g);
    return bad;
}

/* 1 if s[0..n) is valid UTF-8 and ends on a character boundary. */
static int valid_utf8(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
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

/* decode(encode(s)) == s; streaming decode == decode, in whole characters. */
static void check_roundtrip_one(tsr_tokenizer_t *t, const char *text, size_t len, int special,
                                const char *name)
{
    int32_t *ids;
    size_t n, dlen;
    char *dec;
    assert_int_equal(tsr_tokenizer_encode(t, text, len, 0, special, &ids, &n), 0);
    assert_int_equal(tsr_tokenizer_decode(t, ids, n, 0, &dec, &dlen), 0);
    if (dlen != len || memcmp(dec, text, len) != 0) {
        fprintf(stderr, "%s: decode(encode(s)) != s for \"", name);
        print_escaped(text, len);
        fprintf(stderr, "\" -> \"");
        print_escaped(dec, dlen);
        fprintf(stderr, "\"\n");
        fail();
    }
    for (int skip = 0; skip <= 1; skip++) {
        char *full;
        size_t flen;
        assert_int_equal(tsr_tokenizer_decode(t, ids, n, skip, &full, &flen), 0);
        tsr_detok_t *d = tsr_detok_new(t, skip);
        assert_non_null(d);
        char *cat = malloc(flen + 1);
        size_t w = 0;
        for (size_t i = 0; i <= n; i++) {
            const char *chunk;
            size_t cn;
            if (i < n)
                assert_int_equal(tsr_detok_push(d, ids[i], &chunk, &cn), 0);
            else
                assert_int_equal(tsr_detok_flush(d, &chunk, &cn), 0);
            assert_true(valid_utf8(chunk, cn));
            assert_true(w + cn <= flen);
            memcpy(cat + w, chunk, cn);
            w += cn;
        }
        assert_int_equal(w, flen);
        assert_memory_equal(cat, full, flen);
        tsr_detok_free(d);
        free(cat);
        free(full);
    }
    free(dec);
    free(ids);
}

/* lossy: a special token whose match swallows spaces (lstrip/rstrip), so strings with it do not
 * round-trip when specials are parsed. */
static void check_roundtrip(tsr_tokenizer_t *t, const char *name, const char *lossy)
{
    struct golden g;
    golden_load(&g, REF "tokenizer_golden_smollm2.json"); /* the corpus, with NULs intact */
    for (size_t i = 0; i < g.n; i++)
        for (int special = 0; special <= 1; special++)
            if (!special || !lossy || !strstr(g.e[i].text, lossy))
                check_roundtrip_one(t, g.e[i].text, g.e[i].len, special, name);
    golden_free(&g);
}

static void encode_ok(tsr_tokenizer_t *t, const char *s, int bos, int special, int32_t **ids,
                      size_t *n)
{
    int rc = tsr_tokenizer_encode(t, s, strlen(s), bos, special, ids, n);
    if (rc) fail_msg("encode \"%s\": %s", s, tsr_last_error());
}

/* ---- the tokenizers ------------------------------------------------------------------- */

static void test_smollm2_gguf(void **state)
{
    (void)state;
    if (tsr_test_missing(MODEL, "run scripts/fetch_model.sh")) return;
    tsr_tokenizer_t *t = load_gguf(MODEL);
    assert_int_equal(tsr_tokenizer_n_vocab(t), 49152);
    assert_int_equal(check_golden(t, REF "tokenizer_golden_smollm2.json", "smollm2 gguf", NULL), 0);
    check_roundtrip(t, "smollm2 gguf", NULL);
    tsr_tokenizer_free(t);
}

static void test_smollm2_json(void **state)
{
    (void)state;
    tsr_tokenizer_t *t = load_json(REF "smollm2_tokenizer.json");
    assert_int_equal(tsr_tokenizer_n_vocab(t), 49152);
    assert_int_equal(check_golden(t, REF "tokenizer_golden_smollm2.json", "smollm2 json", NULL), 0);
    check_roundtrip(t, "smollm2 json", NULL);
    tsr_tokenizer_free(t);
}

static void test_spm_gguf(void **state)
{
    (void)state;
    tsr_tokenizer_t *t = load_gguf(REF "spm_tiny.gguf");
    assert_int_equal(check_golden(t, REF "tokenizer_golden_spm_tiny.json", "spm_tiny gguf", NULL),
                     0);
    check_roundtrip(t, "spm_tiny gguf", NULL);
    tsr_tokenizer_free(t);
}

static void test_spm_json(void **state)
{
    (void)state;
    tsr_tokenizer_t *t = load_json(REF "spm_tiny_tokenizer.json");
    assert_int_equal(check_golden(t, REF "tokenizer_golden_spm_tiny.json", "spm_tiny json", NULL),
                     0);
    check_roundtrip(t, "spm_tiny json", NULL);
    tsr_tokenizer_free(t);
}

/* Llama 3's pre-tokenizer as a tokenizer.json Split regex and as GGUF pre "llama-bpe", with
 * ignore_merges, lstrip/rstrip and non-special added tokens. */
static void test_bpe_tiny_json(void **state)
{
    (void)state;
    tsr_tokenizer_t *t = load_json(REF "bpe_tiny_tokenizer.json");
    assert_int_equal(check_golden(t, REF "tokenizer_golden_bpe_tiny.json", "bpe_tiny json", NULL),
                     0);
    check_roundtrip(t, "bpe_tiny json", "<mask>");
    /* <think> is matched whole even without parse_special; <mask> is special. */
    int32_t think = tsr_tokenizer_find(t, "<think>"), mask = tsr_tokenizer_find(t, "<mask>");
    int32_t *ids;
    size_t n;
    encode_ok(t, "a<think>b<mask>", 0, 0, &ids, &n);
    int saw_think = 0, saw_mask = 0;
    for (size_t i = 0; i < n; i++) saw_think |= ids[i] == think, saw_mask |= ids[i] == mask;
    assert_true(saw_think);
    assert_false(saw_mask);
    assert_false(tsr_tokenizer_is_special(t, think));
    free(ids);
    assert_true(tsr_tokenizer_is_eog(t, tsr_tokenizer_find(t, "<|eot_id|>")));
    tsr_tokenizer_free(t);
}

static void test_bpe_tiny_gguf(void **state)
{
    (void)state;
    tsr_tokenizer_t *t = load_gguf(REF "bpe_tiny.gguf");
    /* GGUF has no lstrip/rstrip: strings with <mask> are the json test's. */
    assert_int_equal(
        check_golden(t, REF "tokenizer_golden_bpe_tiny.json", "bpe_tiny gguf", "<mask>"), 0);
    check_roundtrip(t, "bpe_tiny gguf", NULL);
    assert_true(tsr_tokenizer_wants_bos(t));
    assert_int_equal(tsr_tokenizer_bos(t), tsr_tokenizer_find(t, "<|begin_of_text|>"));
    assert_true(tsr_tokenizer_is_eog(t, tsr_tokenizer_find(t, "<|eot_id|>")));
    assert_true(tsr_tokenizer_is_eog(t, tsr_tokenizer_find(t, "<|end_of_text|>")));
    tsr_tokenizer_free(t);
}

/* ---- special tokens, BOS, EOG ---------------------------------------------------------------- */

static void check_smollm2_specials(tsr_tokenizer_t *t, int from_gguf)
{
    int32_t *ids;
    size_t n;
    int32_t im_start = tsr_tokenizer_find(t, "<|im_start|>");
    int32_t im_end = tsr_tokenizer_find(t, "<|im_end|>");
    int32_t eot = tsr_tokenizer_find(t, "<|endoftext|>");
    assert_int_equal(im_start, 1);
    assert_int_equal(im_end, 2);
    assert_int_equal(eot, 0);
    assert_string_equal(tsr_tokenizer_piece(t, 2), "<|im_end|>");
    assert_null(tsr_tokenizer_piece(t, 49152));
    assert_int_equal(tsr_tokenizer_find(t, "Ġthe") >= 0, 1);
    assert_int_equal(tsr_tokenizer_find(t, "no such token at all"), -1);
    assert_true(tsr_tokenizer_is_special(t, im_start));
    assert_false(tsr_tokenizer_is_special(t, tsr_tokenizer_find(t, "Ġthe")));
    assert_true(tsr_tokenizer_is_eog(t, im_end));
    assert_true(tsr_tokenizer_is_eog(t, eot));
    assert_false(tsr_tokenizer_is_eog(t, im_start));
    assert_false(tsr_tokenizer_is_eog(t, -1));
    assert_false(tsr_tokenizer_is_eog(t, 1 << 30));
    assert_false(tsr_tokenizer_wants_bos(t));
    if (from_gguf) {
        assert_int_equal(tsr_tokenizer_bos(t), 1);
        assert_int_equal(tsr_tokenizer_eos(t), 2);
    }

    encode_ok(t, "<|im_start|>user\nhi<|im_end|>", 0, 1, &ids, &n);
    assert_true(n >= 4);
    assert_int_equal(ids[0], im_start);
    assert_int_equal(ids[n - 1], im_end);
    char *s;
    size_t len;
    assert_int_equal(tsr_tokenizer_decode(t, ids, n, 1, &s, &len), 0);
    assert_string_equal(s, "user\nhi");
    free(s);
    free(ids);

    /* Without parse_special the same text is plain text: no control ids. */
    encode_ok(t, "<|im_start|>user\nhi<|im_end|>", 0, 0, &ids, &n);
    for (size_t i = 0; i < n; i++) assert_false(tsr_tokenizer_is_special(t, ids[i]));
    free(ids);

    /* add_bos with a tokenizer that has one prepends it even when the model does not want it. */
    if (tsr_tokenizer_bos(t) >= 0) {
        encode_ok(t, "hi", 1, 1, &ids, &n);
        assert_int_equal(ids[0], tsr_tokenizer_bos(t));
        free(ids);
    }
    /* Bytes without a token are dropped, as HF does (fuzz regression: the round trip holds
     * only for spellable text). */
    assert_int_equal(tsr_tokenizer_byte_token(t, 0x16), -1);
    assert_int_equal(tsr_tokenizer_byte_token(t, 'a'), tsr_tokenizer_find(t, "a"));
    assert_int_equal(tsr_tokenizer_byte_token(t, ' '), tsr_tokenizer_find(t, "Ġ"));
    encode_ok(t,
              "\x16"
              "024-01-15T10:30:00mmmmZ",
              0, 1, &ids, &n);
    assert_int_equal(tsr_tokenizer_decode(t, ids, n, 0, &s, &len), 0);
    assert_string_equal(s, "024-01-15T10:30:00mmmmZ");
    free(s);
    free(ids);
    /* Leftmost-longest: "<|im_start|>" inside "<<|im_start|>>". */
    encode_ok(t, "<<|im_start|>>", 0, 1, &ids, &n);
    assert_int_equal(n, 3);
    assert_int_equal(ids[1], im_start);
    free(ids);
}

static void test_smollm2_specials(void **state)
{
    (void)state;
    tsr_tokenizer_t *t = load_json(REF "smollm2_tokenizer.json");
    check_smollm2_specials(t, 0);
    tsr_tokenizer_free(t);
    if (!tsr_test_missing(MODEL, "run scripts/fetch_model.sh")) {
        t = load_gguf(MODEL);
        check_smollm2_specials(t, 1);
        tsr_tokenizer_free(t);
    }
}

static void check_spm_specials(tsr_tokenizer_t *t)
{
    int32_t *ids;
    size_t n;
    assert_int_equal(tsr_tokenizer_bos(t), 1);
    assert_int_equal(tsr_tokenizer_eos(t), 2);
    assert_true(tsr_tokenizer_wants_bos(t));
    assert_true(tsr_tokenizer_is_eog(t, 2));
    assert_true(tsr_tokenizer_is_special(t, 1));
    assert_int_equal(tsr_tokenizer_find(t, "<0x0A>") >= 0, 1);
    for (int b = 0; b < 256; b++) assert_true(tsr_tokenizer_byte_token(t, (uint8_t)b) >= 0);

    encode_ok(t, "Hello world", 1, 1, &ids, &n);
    assert_int_equal(ids[0], 1);
    char *s;
    size_t len;
    assert_int_equal(tsr_tokenizer_decode(t, ids, n, 1, &s, &len), 0);
    assert_string_equal(s, "Hello world");
    free(s);
    /* The leading space is the dummy prefix's; with BOS kept it stays (as HF decodes). */
    assert_int_equal(tsr_tokenizer_decode(t, ids, n, 0, &s, &len), 0);
    assert_string_equal(s, "<s> Hello world");
    free(s);
    free(ids);

    /* " x" and "x" differ (SentencePiece's rule, not HF Metaspace's). */
    int32_t *a, *b;
    size_t na, nb;
    encode_ok(t, " x", 0, 1, &a, &na);
    encode_ok(t, "x", 0, 1, &b, &nb);
    assert_false(na == nb && memcmp(a, b, na * sizeof *a) == 0);
    free(a);
    free(b);

    /* Byte fallback: a character outside the tiny vocabulary becomes its UTF-8 bytes. */
    encode_ok(t, "\xe9\xbe\x98", 0, 1, &ids, &n); /* U+9F98, surely not in 700 tokens */
    assert_int_equal(ids[n - 1], tsr_tokenizer_find(t, "<0x98>"));
    /* Half of it decodes to U+FFFD, and the detokenizer holds the incomplete character. */
    assert_int_equal(tsr_tokenizer_decode(t, ids, n - 1, 0, &s, &len), 0);
    assert_memory_equal(s + len - 3, "\xef\xbf\xbd", 3);
    free(s);
    tsr_detok_t *d = tsr_detok_new(t, 0);
    const char *chunk;
    size_t cn, total = 0;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(tsr_detok_push(d, ids[i], &chunk, &cn), 0);
        if (i + 1 < n && i >= n - 3) assert_int_equal(cn, 0); /* held back */
        total += cn;
    }
    assert_int_equal(tsr_detok_flush(d, &chunk, &cn), 0);
    assert_int_equal(cn, 0);
    assert_int_equal(total, 3);
    tsr_detok_free(d);
    free(ids);
}

static void test_spm_specials(void **state)
{
    (void)state;
    tsr_tokenizer_t *t = load_gguf(REF "spm_tiny.gguf");
    check_spm_specials(t);
    tsr_tokenizer_free(t);
    t = load_json(REF "spm_tiny_tokenizer.json");
    /* tokenizer.json alone names no BOS for this model's post-processor: the <s> heuristic. */
    assert_int_equal(tsr_tokenizer_bos(t), 1);
    assert_int_equal(tsr_tokenizer_eos(t), 2);
    tsr_tokenizer_free(t);
}

/* ---- malformed input ---------------------------------------------------------------------------
 */

static void test_invalid_utf8(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "\xff",
        "\xc0\x80",
        "\xc1\xbf",
        "\xe0\x80\x80",
        "\xed\xa0\x80",
        "\xf4\x90\x80\x80",
        "\xf8\x88\x80\x80\x80",
        "\xe4\xbd",
        "abc\x80",
        "\xc3",
        "ok \xe4\xbd\xa0\xe5",
    };
    tsr_tokenizer_t *t[2] = {load_json(REF "smollm2_tokenizer.json"),
                             load_gguf(REF "spm_tiny.gguf")};
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
            int32_t *ids = (int32_t *)1;
            size_t n = 99;
            assert_int_equal(tsr_tokenizer_encode(t[k], bad[i], strlen(bad[i]), 1, 1, &ids, &n),
                             TSR_EINVAL);
            assert_null(ids);
            assert_int_equal(n, 0);
        }
        /* Empty text: an empty (but allocated) array, BOS alone with add_bos. */
        int32_t *ids;
        size_t n;
        assert_int_equal(tsr_tokenizer_encode(t[k], "", 0, 0, 1, &ids, &n), 0);
        assert_int_equal(n, 0);
        free(ids);
        assert_int_equal(tsr_tokenizer_encode(t[k], NULL, 0, 1, 1, &ids, &n), 0);
        assert_int_equal(n, tsr_tokenizer_bos(t[k]) >= 0 ? 1 : 0);
        free(ids);

        /* Out-of-range ids. */
        char *s;
        size_t len;
        int32_t badid[2] = {5, tsr_tokenizer_n_vocab(t[k])};
        assert_int_equal(tsr_tokenizer_decode(t[k], badid, 2, 0, &s, &len), TSR_EINVAL);
        badid[1] = -1;
        assert_int_equal(tsr_tokenizer_decode(t[k], badid, 2, 0, &s, &len), TSR_EINVAL);
        tsr_detok_t *d = tsr_detok_new(t[k], 0);
        const char *chunk;
        assert_int_equal(tsr_detok_push(d, -7, &chunk, &len), TSR_EINVAL);
        tsr_detok_free(d);
        tsr_tokenizer_free(t[k]);
    }
}

/* Invalid byte sequences assembled from byte-level tokens: decode and the detokenizer agree, one
 * U+FFFD per maximal invalid subpart. */
static void test_lossy_decode(void **state)
{
    (void)state;
    tsr_tokenizer_t *t = load_json(REF "smollm2_tokenizer.json");
    /* Byte-level spellings of single bytes: 0xE4 'ä', 0xBD '½', 'a', 0x80 'Ģ'. (0xF5..0xFF,
     * never in UTF-8, are not in SmolLM2's vocabulary.) */
    const char *pieces[] = {"ä", "½", "a", "Ģ", "ä", "ä"};
    int32_t ids[6];
    for (int i = 0; i < 6; i++) {
        ids[i] = tsr_tokenizer_find(t, pieces[i]);
        assert_true(ids[i] >= 0);
    }
    char *s;
    size_t len;
    assert_int_equal(tsr_tokenizer_decode(t, ids, 6, 0, &s, &len), 0);
    /* E4 BD | a | 80 | E4 | E4 (flushed)  →  FFFD a FFFD FFFD FFFD */
    assert_string_equal(s, "\xef\xbf\xbd"
                           "a\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    tsr_detok_t *d = tsr_detok_new(t, 0);
    char cat[64];
    size_t w = 0;
    const char *chunk;
    size_t cn;
    for (int i = 0; i < 6; i++) {
        assert_int_equal(tsr_detok_push(d, ids[i], &chunk, &cn), 0);
        assert_true(valid_utf8(chunk, cn));
        memcpy(cat + w, chunk, cn);
        w += cn;
    }
    assert_int_equal(tsr_detok_flush(d, &chunk, &cn), 0);
    memcpy(cat + w, chunk, cn);
    w += cn;
    assert_int_equal(w, len);
    assert_memory_equal(cat, s, len);
    free(s);
    /* A truncated character at the end becomes one U+FFFD at flush. */
    int32_t two[2] = {ids[2], ids[0]};
    assert_int_equal(tsr_detok_push(d, two[0], &chunk, &cn), 0);
    assert_int_equal(tsr_detok_push(d, two[1], &chunk, &cn), 0);
    assert_int_equal(cn, 0);
    assert_int_equal(tsr_detok_flush(d, &chunk, &cn), 0);
    assert_int_equal(cn, 3);
    tsr_detok_free(d);
    tsr_tokenizer_free(t);
}

static void test_bad_files(void **state)
{
    (void)state;
    tsr_tokenizer_t *t;
    assert_int_equal(tsr_tokenizer_from_json(REF "no_such_tokenizer.json", &t), TSR_ENOTFOUND);
    assert_null(t);
    /* Not JSON. */
    char path[] = "/tmp/tsr_tok_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}", f);
    fclose(f);
    assert_int_equal(tsr_tokenizer_from_json(path, &t), TSR_EFORMAT);
    /* WordPiece and unknown pieces of a pipeline are named, not guessed. */
    f = fopen(path, "w");
    fputs("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}, \"merges\": []}}", f);
    fclose(f);
    assert_int_equal(tsr_tokenizer_from_json(path, &t), TSR_EUNSUPPORTED);
    f = fopen(path, "w");
    fputs("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
          " \"normalizer\": {\"type\": \"NFKC\"}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}",
          f);
    fclose(f);
    assert_int_equal(tsr_tokenizer_from_json(path, &t), TSR_EUNSUPPORTED);
    assert_non_null(strstr(tsr_last_error(), "NFKC"));
    f = fopen(path, "w");
    fputs("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -3}, \"merges\": []},"
          " \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}",
          f);
    fclose(f);
    assert_int_equal(tsr_tokenizer_from_json(path, &t), TSR_EFORMAT);
    /* A tiny valid one: holes in the id space decode to nothing. */
    f = fopen(path, "w");
    fputs("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 3, \"ab\": 5},"
          " \"merges\": [\"a b\"]}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"},"
          " \"decoder\": {\"type\": \"ByteLevel\"}}",
          f);
    fclose(f);
    assert_int_equal(tsr_tokenizer_from_json(path, &t), 0);
    assert_int_equal(tsr_tokenizer_n_vocab(t), 6);
    int32_t *ids;
    size_t n;
    encode_ok(t, "abba", 0, 1, &ids, &n);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 5);
    assert_int_equal(ids[1], 3);
    assert_int_equal(ids[2], 0);
    free(ids);
    char *s;
    size_t len;
    int32_t hole[3] = {1, 5, 2};
    assert_int_equal(tsr_tokenizer_decode(t, hole, 3, 0, &s, &len), 0);
    assert_string_equal(s, "ab");
    free(s);
    tsr_tokenizer_free(t);
    remove(path);
}

/* ---- speed ------------------------------------------------------------------------------------
 */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void test_speed(void **state)
{
    (void)state;
    tsr_tokenizer_t *t = load_json(REF "smollm2_tokenizer.json");
    struct golden g;
    golden_load(&g, REF "tokenizer_golden_smollm2.json");
    /* About 1 MB of mixed text: the corpus, repeated. */
    size_t cap = 1 << 20, len = 0;
    char *text = malloc(cap + 4096);
    while (len < cap)
        for (size_t i = 0; i < g.n && len < cap; i++) {
            if (memchr(g.e[i].text, '<', g.e[i].len)) continue;
            memcpy(text + len, g.e[i].text, g.e[i].len);
            len += g.e[i].len;
            text[len++] = '\n';
        }
    int32_t *ids;
    size_t n;
    double t0 = now();
    assert_int_equal(tsr_tokenizer_encode(t, text, len, 0, 1, &ids, &n), 0);
    double dt = now() - t0;
    fprintf(stderr, "encode: %zu bytes -> %zu tokens in %.3f s: %.2f M tokens/s, %.1f MB/s\n", len,
            n, dt, (double)n / dt / 1e6, (double)len / dt / 1e6);
    char *s;
    size_t slen;
    t0 = now();
    assert_int_equal(tsr_tokenizer_decode(t, ids, n, 0, &s, &slen), 0);
    dt = now() - t0;
    fprintf(stderr, "decode: %.1f M tokens/s\n", (double)n / dt / 1e6);
    assert_int_equal(slen, len);
    assert_memory_equal(s, text, len);
    free(s);
    free(ids);
    free(text);
    golden_free(&g);
    tsr_tokenizer_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_smollm2_gguf),     cmocka_unit_test(test_smollm2_json),
        cmocka_unit_test(test_spm_gguf),         cmocka_unit_test(test_spm_json),
        cmocka_unit_test(test_bpe_tiny_json),    cmocka_unit_test(test_bpe_tiny_gguf),
        cmocka_unit_test(test_smollm2_specials), cmocka_unit_test(test_spm_specials),
        cmocka_unit_test(test_invalid_utf8),     cmocka_unit_test(test_lossy_decode),
        cmocka_unit_test(test_bad_files),        cmocka_unit_test(test_speed),
    };
    return tsr_test_exit(cmocka_run_group_tests(tests, NULL, NULL));
}
