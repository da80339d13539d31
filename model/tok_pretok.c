/* Pre-tokenizer: a chain of regex splits, each applied to every piece the previous one made (as
 * Hugging Face's pre_tokenizers.Sequence and llama.cpp's regex lists do). A regex only sees its
 * own piece, so a lookahead such as \s+(?!\S) stops at the piece's end. */
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/tok_internal.h"

/* GPT-2's pattern; what ByteLevel(use_regex=true) runs. */
const char tok_re_gpt2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
/* Llama 3 (llama.cpp "llama-bpe"); Qwen2 is the same with single digits. */
static const char re_llama3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char re_qwen2[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                               "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char re_digit[] = "\\p{N}";

int tok_add_split(struct tsr_tokenizer *t, const char *pattern, size_t len, int literal,
                  enum tok_split_behavior behavior)
{
    if (t->n_split == TOK_MAX_SPLITS)
        return tsr_errorf(TSR_EUNSUPPORTED, "tokenizer: more than %d pre-tokenizer splits",
                          TOK_MAX_SPLITS);
    int err;
    PCRE2_SIZE off;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, len, opts, &err, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return tsr_errorf(TSR_EUNSUPPORTED, "tokenizer: pre-tokenizer regex /%.*s/: %s at %zu",
                          (int)(len > 200 ? 200 : len), pattern, (const char *)msg, (size_t)off);
    }
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* the interpreter when JIT is missing */
    t->split[t->n_split].re = re;
    t->split[t->n_split].behavior = behavior;
    t->n_split++;
    return 0;
}

static int add(struct tsr_tokenizer *t, const char *re)
{
    return tok_add_split(t, re, strlen(re), 0, TOK_SPLIT_ISOLATED);
}

int tok_set_pre(struct tsr_tokenizer *t, const char *pre)
{
    static const char *const digits_gpt2[] = {"smollm",    "starcoder", "refact", "command-r",
                                              "codeshell", "exaone",    "minerva"};
    static const char *const gpt2[] = {"gpt2",       "default", "phi-2",    "jina-es",
                                       "jina-de",    "olmo",    "jais",     "jina-v2-es",
                                       "jina-v2-de", "gpt-2",   "trillion", "jina-v2-code"};
    static const char *const llama3[] = {"llama-bpe", "llama3",    "llama-v3", "falcon3",
                                         "dbrx",      "smaug-bpe", "pixtral"};
    static const char *const qwen2[] = {"qwen2", "deepseek-r1-qwen", "megrez"};
    int rc;
    if (!pre) pre = "default";
    for (size_t i = 0; i < sizeof digits_gpt2 / sizeof *digits_gpt2; i++)
        if (!strcmp(pre, digits_gpt2[i])) {
            if ((rc = add(t, re_digit))) return rc;
            return add(t, tok_re_gpt2);
        }
    for (size_t i = 0; i < sizeof gpt2 / sizeof *gpt2; i++)
        if (!strcmp(pre, gpt2[i])) return add(t, tok_re_gpt2);
    for (size_t i = 0; i < sizeof llama3 / sizeof *llama3; i++)
        if (!strcmp(pre, llama3[i])) {
            t->ignore_merges = 1;
            return add(t, re_llama3);
        }
    for (size_t i = 0; i < sizeof qwen2 / sizeof *qwen2; i++)
        if (!strcmp(pre, qwen2[i])) return add(t, re_qwen2);
    return tsr_errorf(TSR_EUNSUPPORTED,
                      "tokenizer: pre-tokenizer '%s' is not supported (known: smollm, gpt2, "
                      "llama-bpe, qwen2 and their aliases)",
                      pre);
}

static int match(const pcre2_code *re, const char *p, size_t n, size_t at, pcre2_match_data *md)
{
    int rc = pcre2_match(re, (PCRE2_SPTR)p, n, at, PCRE2_NO_UTF_CHECK, md, NULL);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) /* the interpreter keeps its stack on the heap */
        rc = pcre2_match(re, (PCRE2_SPTR)p, n, at, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
    return rc;
}

static int split_rec(const struct tsr_tokenizer *t, pcre2_match_data *md, int step, const char *p,
                     size_t n, tok_emit_fn emit, void *ctx)
{
    int rc;
    if (n == 0) return 0;
    if (step == t->n_split) return emit(ctx, p, n);
    const struct tok_split *sp = &t->split[step];
    size_t at = 0, last = 0;
    while (at < n) {
        int m = match(sp->re, p, n, at, md);
        if (m == PCRE2_ERROR_NOMATCH) break;
        if (m < 0) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(m, msg, sizeof msg);
            return tsr_errorf(TSR_EINTERNAL, "tokenizer: pre-tokenizer regex failed: %s",
                              (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t s = ov[0], e = ov[1];
        if (e <= s) { /* empty match: nothing to split off here */
            if (s >= n) break;
            at = s + (size_t)tok_utf8_len((unsigned char)p[s]);
            continue;
        }
        if (s > last && (rc = split_rec(t, md, step + 1, p + last, s - last, emit, ctx))) return rc;
        if (sp->behavior == TOK_SPLIT_ISOLATED &&
            (rc = split_rec(t, md, step + 1, p + s, e - s, emit, ctx)))
            return rc;
        last = at = e;
    }
    return split_rec(t, md, step + 1, p + last, n - last, emit, ctx);
}

int tok_pretokenize(const struct tsr_tokenizer *t, pcre2_match_data *md, const char *text, size_t n,
                    tok_emit_fn emit, void *ctx)
{
    return split_rec(t, md, 0, text, n, emit, ctx);
}
