/* Chat templates rendered in C. Each renderer is the Jinja template of its family written out by
 * hand; tests/unit/test_chat.c compares them with jinja2's output (tests/reference/
 * make_tokenizer_golden.py) byte for byte:
 *
 *   ChatML  <|im_start|>{role}\n{content}<|im_end|>\n ... [<|im_start|>assistant\n]
 *           SmolLM2 and Qwen2 templates insert a default system turn when the first message is
 *           not a system one; its text is read from the template itself.
 *   Llama 3 <|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|> ...
 *           [<|start_header_id|>assistant<|end_header_id|>\n\n]; the template's leading
 *           bos_token is left to the encoder (add_bos).
 *   Llama 2 [INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user|strip} [/INST] {assistant|strip} </s>
 *           <s>[INST] ...; roles must alternate user/assistant. The first turn's bos_token is left
 *           to the encoder; later turns carry "<s>" as text (encode with parse_special). */
#include "model/chat.h"
#include "model/tok_internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"

struct sbuf {
    char *p;
    size_t n, cap;
    int err;
};

static void put(struct sbuf *b, const char *s, size_t n)
{
    if (b->err) return;
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->n + n + 1) c *= 2;
        char *q = realloc(b->p, c);
        if (!q) {
            b->err = 1;
            return;
        }
        b->p = q;
        b->cap = c;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void puts_(struct sbuf *b, const char *s)
{
    put(b, s, strlen(s));
}

/* Python's str.isspace(), which Jinja's trim and str.strip() use: Unicode White_Space plus the
 * information separators U+001C..U+001F. */
static int py_space(const char *s, size_t n, size_t i, size_t *len)
{
    int adv;
    uint32_t cp = tok_utf8_decode(s + i, n - i, &adv);
    *len = (size_t)adv;
    return tok_is_unicode_space(cp) || (cp >= 0x1C && cp <= 0x1F);
}

static void put_stripped(struct sbuf *b, const char *str)
{
    size_t n = strlen(str), lo = 0, hi, l;
    while (lo < n && py_space(str, n, lo, &l)) lo += l;
    /* Scan forward, remembering where the last non-space char ended. */
    hi = lo;
    for (size_t i = lo; i < n; i += l)
        if (!py_space(str, n, i, &l)) hi = i + l;
    put(b, str + lo, hi - lo);
}

static int role_ok(const char *r)
{
    return r && (!strcmp(r, "system") || !strcmp(r, "user") || !strcmp(r, "assistant"));
}

/* The default system text of a ChatML template: the string literal
 * '<|im_start|>system\n...<|im_end|>' (quotes ' or ", newline raw or escaped). NULL if the
 * template has none, or its system turn is not a literal. */
static char *chatml_default_system(const char *tpl)
{
    static const char head[] = "<|im_start|>system";
    for (const char *p = strstr(tpl, head); p; p = strstr(p + 1, head)) {
        if (p == tpl || (p[-1] != '\'' && p[-1] != '"')) continue;
        char quote = p[-1];
        const char *s = p + sizeof head - 1;
        if (*s == '\n')
            s++;
        else if (s[0] == '\\' && s[1] == 'n')
            s += 2;
        else
            continue;
        const char *e = strstr(s, "<|im_end|>");
        if (!e) return NULL;
        char *out = malloc((size_t)(e - s) + 1), *w = out;
        if (!out) return NULL;
        int literal = 1;
        for (const char *q = s; q < e && literal; q++) {
            if (*q == quote) {
                literal = 0;
            } else if (*q == '\\' && q + 1 < e) {
                q++;
                *w++ = *q == 'n' ? '\n' : *q == 't' ? '\t' : *q;
            } else {
                *w++ = *q;
            }
        }
        *w = '\0';
        if (literal) return out;
        free(out);
    }
    return NULL;
}

/* Enough to tell the user what they have and which --chat-template might stand in for it. */
const char *tsr_chat_family(const char *tpl)
{
    static const struct {
        const char *marker, *family;
    } families[] = {
        {"<|im_start|>", "ChatML"},
        {"<|start_header_id|>", "Llama 3"},
        {"[INST]", "Llama 2"},
        {"<start_of_turn>", "Gemma"},
        {"<|START_OF_TURN_TOKEN|>", "Command R"},
        {"<\xef\xbd\x9cUser\xef\xbd\x9c>", "DeepSeek"}, /* <｜User｜> */
        {"<|end|>", "Phi-3"},
        {"<|user|>", "Zephyr"},
        {"<|User|>", "DeepSeek"},
        {"[SYSTEM_PROMPT]", "Mistral v7"},
        {"GPT4 Correct User", "OpenChat"},
        {"### Instruction", "Alpaca"},
        {"USER:", "Vicuna"},
        {"<|system|>", "Zephyr"},
        {"<|channel|>", "Harmony (gpt-oss)"},
    };
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
        if (strstr(tpl, families[i].marker)) return families[i].family;
    return "unknown";
}

int tsr_chat_detect(const char *template_text, const char *arch, struct tsr_chat *c)
{
    memset(c, 0, sizeof *c);
    if (!template_text) {
        if (arch && !strcmp(arch, "qwen2")) c->kind = TSR_CHAT_CHATML;
        return 0;
    }
    if (strstr(template_text, "<|im_start|>")) {
        c->kind = TSR_CHAT_CHATML;
        c->default_system = chatml_default_system(template_text);
        return 0;
    }
    if (strstr(template_text, "<|start_header_id|>") && strstr(template_text, "<|eot_id|>")) {
        c->kind = TSR_CHAT_LLAMA3;
        return 0;
    }
    if (strstr(template_text, "[INST]")) {
        c->kind = TSR_CHAT_LLAMA2;
        return 0;
    }
    return tsr_errorf(TSR_EUNSUPPORTED,
                      "chat template not recognised: of the %s family, not one tessera renders "
                      "(ChatML, Llama 3, Llama 2): \"%.60s...\"",
                      tsr_chat_family(template_text), template_text);
}

int tsr_chat_named(const char *name, const struct tsr_chat *model, struct tsr_chat *c)
{
    static const struct {
        const char *name;
        enum tsr_chat_kind kind;
    } names[] = {{"chatml", TSR_CHAT_CHATML},
                 {"llama3", TSR_CHAT_LLAMA3},
                 {"llama2", TSR_CHAT_LLAMA2},
                 {"none", TSR_CHAT_NONE}};
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(name, names[i].name)) continue;
        c->kind = names[i].kind;
        if (model && model->kind == c->kind && model->default_system &&
            !(c->default_system = strdup(model->default_system)))
            return tsr_errorf(TSR_ENOMEM, "chat: out of memory");
        return 0;
    }
    return tsr_errorf(TSR_EINVAL, "unknown chat template '%s' (chatml, llama3, llama2, none)",
                      name);
}

void tsr_chat_free(struct tsr_chat *c)
{
    if (!c) return;
    free(c->default_system);
    c->default_system = NULL;
}

static int render_llama2(struct sbuf *b, const struct tsr_chat_msg *m, size_t n)
{
    const char *sys = NULL;
    if (n && !strcmp(m[0].role, "system")) {
        sys = m[0].content;
        m++;
        n--;
    }
    for (size_t j = 0; j < n; j++) {
        int user = !strcmp(m[j].role, "user");
        if (user != (j % 2 == 0))
            return tsr_errorf(TSR_EINVAL,
                              "chat: Llama 2 conversations must alternate "
                              "user/assistant (message %zu is '%s')",
                              j + (sys != NULL), m[j].role);
        struct sbuf content = {0};
        if (j == 0 && sys) {
            puts_(&content, "<<SYS>>\n");
            puts_(&content, sys);
            puts_(&content, "\n<</SYS>>\n\n");
        }
        puts_(&content, m[j].content);
        if (content.err) {
            free(content.p);
            return tsr_errorf(TSR_ENOMEM, "chat: out of memory");
        }
        if (user) {
            if (j > 0) puts_(b, "<s>");
            puts_(b, "[INST] ");
            put_stripped(b, content.p ? content.p : "");
            puts_(b, " [/INST]");
        } else if (!strcmp(m[j].role, "assistant")) {
            puts_(b, " ");
            put_stripped(b, content.p ? content.p : "");
            puts_(b, " </s>");
        }
        free(content.p);
    }
    return 0;
}

int tsr_chat_render(const struct tsr_chat *c, const struct tsr_chat_msg *msgs, size_t n,
                    int add_generation_prompt, char **out)
{
    int rc = 0;
    *out = NULL;
    for (size_t i = 0; i < n; i++) {
        if (!role_ok(msgs[i].role))
            return tsr_errorf(TSR_EINVAL,
                              "chat: message %zu has role '%s' (system, user or "
                              "assistant expected)",
                              i, msgs[i].role ? msgs[i].role : "(null)");
        if (!msgs[i].content) return tsr_errorf(TSR_EINVAL, "chat: message %zu has no content", i);
    }
    if (c->kind == TSR_CHAT_UNRECOGNISED)
        return tsr_errorf(TSR_EUNSUPPORTED, "chat: the model's chat template is not one tessera "
                                            "renders (ChatML, Llama 3, Llama 2)");
    struct sbuf b = {0};
    put(&b, "", 0);
    switch (c->kind) {
    case TSR_CHAT_NONE:
        for (size_t i = 0; i < n; i++) puts_(&b, msgs[i].content);
        break;
    case TSR_CHAT_CHATML:
        for (size_t i = 0; i < n; i++) {
            if (i == 0 && strcmp(msgs[0].role, "system") && c->default_system) {
                puts_(&b, "<|im_start|>system\n");
                puts_(&b, c->default_system);
                puts_(&b, "<|im_end|>\n");
            }
            puts_(&b, "<|im_start|>");
            puts_(&b, msgs[i].role);
            puts_(&b, "\n");
            puts_(&b, msgs[i].content);
            puts_(&b, "<|im_end|>\n");
        }
        if (add_generation_prompt) puts_(&b, "<|im_start|>assistant\n");
        break;
    case TSR_CHAT_LLAMA3:
        for (size_t i = 0; i < n; i++) {
            puts_(&b, "<|start_header_id|>");
            puts_(&b, msgs[i].role);
            puts_(&b, "<|end_header_id|>\n\n");
            put_stripped(&b, msgs[i].content);
            puts_(&b, "<|eot_id|>");
        }
        if (add_generation_prompt) puts_(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case TSR_CHAT_LLAMA2:
        rc = render_llama2(&b, msgs, n);
        break;
    default:
        rc = tsr_errorf(TSR_EINVAL, "chat: unknown template kind %d", (int)c->kind);
    }
    if (!rc && b.err) rc = tsr_errorf(TSR_ENOMEM, "chat: out of memory");
    if (rc) {
        free(b.p);
        return rc;
    }
    *out = b.p;
    return 0;
}
