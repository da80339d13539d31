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
    /* The model has a template tessera does not render: it serves raw prompts, but rendering a
     * conversation is an error rather than a silent plain-text prompt. */
    TSR_CHAT_UNRECOGNISED,
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
 * Fills *c; free its strings with tsr_chat_free(). Returns 0, or TSR_EUNSUPPORTED naming the
 * template's family (tsr_chat_family) with *c left TSR_CHAT_NONE; a model then marks its chat
 * TSR_CHAT_UNRECOGNISED. */
int tsr_chat_detect(const char *template_text, const char *arch, struct tsr_chat *c);
/* The family of a template text by the markers its turns use: "ChatML", "Llama 3", "Llama 2" for
 * those tessera renders, else "Gemma", "Phi-3", "Command R", ... or "unknown". A static string. */
const char *tsr_chat_family(const char *template_text);
/* A template chosen by name, for a model whose own one is missing or not recognised: "chatml",
 * "llama3", "llama2" or "none". model (may be NULL) is the model's detected template: when it is
 * of the named kind, its default system prompt is kept. TSR_EINVAL for another name. */
int tsr_chat_named(const char *name, const struct tsr_chat *model, struct tsr_chat *c);
void tsr_chat_free(struct tsr_chat *c);

/* Renders messages; with add_generation_prompt the text ends where the assistant's reply begins.
 * *out is malloc'ed and NUL-terminated. TSR_EINVAL for an unknown role; TSR_EUNSUPPORTED for
 * TSR_CHAT_UNRECOGNISED. The text contains the
 * special tokens literally: encode it with parse_special = 1. BOS is not included. */
int tsr_chat_render(const struct tsr_chat *c, const struct tsr_chat_msg *msgs, size_t n,
                    int add_generation_prompt, char **out);

#endif
