/* Chat templates for the Llama family, chosen from the model's own template text (GGUF
 * tokenizer.chat_template or tokenizer_config.json) and architecture. We do not run Jinja: we
 * recognise the family and render it in C, byte-for-byte as the model's template would. */
#ifndef TSR_MODEL_CHAT_H
#define TSR_MODEL_CHAT_H

#include <stddef.h>

enum tsr_chat_kind {
    TSR_CHAT_NONE = 0, /* no template: plain concatenation of contents */
    TSR_CHAT_CHATML,   /* <|im_start|>role\n...<|im_end|>\n (SmolLM2, Qwen2) */
    TSR_CHAT_LLAMA3,   /* <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> */
    TSR_CHAT_LLAMA2,   /* [INST] ... [/INST] (Llama 2, Mistral) */
};

struct tsr_chat_msg {
    const char *role; /* "system", "user", "assistant" */
    const char *content;
};

struct tsr_chat {
    enum tsr_chat_kind kind;
    char *default_system; /* system prompt the template inserts when none is given, or NULL */
};

/* Recognises template_text (may be NULL) for an architecture name ("llama", "qwen2", ...).
 * Fills *c; free its strings with tsr_chat_free(). Returns 0, or TSR_EUNSUPPORTED naming what
 * was not recognised (the caller may fall back to TSR_CHAT_NONE). */
int tsr_chat_detect(const char *template_text, const char *arch, struct tsr_chat *c);
void tsr_chat_free(struct tsr_chat *c);

/* Renders messages; with add_generation_prompt the text ends where the assistant's reply begins.
 * *out is malloc'ed and NUL-terminated. TSR_EINVAL for an unknown role. The text contains the
 * special tokens literally: encode it with parse_special = 1. BOS is not included. */
int tsr_chat_render(const struct tsr_chat *c, const struct tsr_chat_msg *msgs, size_t n,
                    int add_generation_prompt, char **out);

#endif
