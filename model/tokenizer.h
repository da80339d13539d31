/* Tokenizers: byte-level BPE (GPT-2 style: SmolLM2, Llama 3, Qwen2) and SentencePiece-style BPE
 * (Llama 2, Mistral), loaded from GGUF metadata (tokenizer.ggml.*) or a Hugging Face
 * tokenizer.json. Pre-tokenizer regexes run through PCRE2 with Unicode classes. Special (control)
 * tokens in the input text are matched whole when parse_special is set.
 *
 * Thread-safety: a tokenizer is immutable after loading; encode/decode may run concurrently. */
#ifndef TSR_MODEL_TOKENIZER_H
#define TSR_MODEL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "model/gguf.h"

typedef struct tsr_tokenizer tsr_tokenizer_t;
typedef struct tsr_detok tsr_detok_t;

/* Loaders. Return 0 and *out, or a negative code with a message. Caller frees with
 * tsr_tokenizer_free(). from_gguf copies what it needs: g may be closed afterwards. */
int tsr_tokenizer_from_gguf(const tsr_gguf_t *g, tsr_tokenizer_t **out);
int tsr_tokenizer_from_json(const char *tokenizer_json_path, tsr_tokenizer_t **out);
void tsr_tokenizer_free(tsr_tokenizer_t *t);

int tsr_tokenizer_n_vocab(const tsr_tokenizer_t *t);
int32_t tsr_tokenizer_bos(const tsr_tokenizer_t *t); /* -1 if none */
int32_t tsr_tokenizer_eos(const tsr_tokenizer_t *t); /* -1 if none */
/* 1 if generating id ends a turn: eos, <|im_end|>, <|eot_id|>, <|end_of_text|> and the like. */
int tsr_tokenizer_is_eog(const tsr_tokenizer_t *t, int32_t id);
/* 1 if id is a special/control token (skipped by decode with skip_special). */
int tsr_tokenizer_is_special(const tsr_tokenizer_t *t, int32_t id);
/* Whether the model expects BOS at the start of a prompt (tokenizer.ggml.add_bos_token, or the
 * tokenizer.json post-processor). */
int tsr_tokenizer_wants_bos(const tsr_tokenizer_t *t);
/* Token id of an exact vocabulary string, or -1. Strings are as the vocabulary spells them:
 * byte-level vocabularies write a space as "Ġ", SentencePiece ones as "▁". */
int32_t tsr_tokenizer_find(const tsr_tokenizer_t *t, const char *piece);
/* Id of the token that stands for byte b alone (byte-level BPE: the byte's printable spelling;
 * SentencePiece: <0xXX>), or -1. A vocabulary can lack some (SmolLM2 has no token for 0x04,
 * 0x16, 0xF1, ...): encode then drops those bytes, as Hugging Face and llama.cpp do, so
 * decode(encode(s)) == s holds for text whose bytes all have one. */
int32_t tsr_tokenizer_byte_token(const tsr_tokenizer_t *t, uint8_t b);
/* The vocabulary string of id (NUL-terminated, owned by t), or NULL if id is out of range. */
const char *tsr_tokenizer_piece(const tsr_tokenizer_t *t, int32_t id);

/* Encodes len bytes of text (must be valid UTF-8: TSR_EINVAL otherwise). Special tokens in the
 * text are matched whole, leftmost-longest, when parse_special (user-defined added tokens always).
 * decode(encode(s)) == s except for bytes without a token (tsr_tokenizer_byte_token), a literal
 * "▁" (U+2581) with a SentencePiece vocabulary (it reads as a space), and added tokens that
 * swallow neighbouring spaces (tokenizer.json lstrip/rstrip). SentencePiece: "▁" is put before
 * the text (unless it starts with a special token) and decode drops one leading space of its
 * output, so a leading space survives the round trip. Prepends BOS if add_bos
 * and the tokenizer has one. *ids is malloc'ed (caller frees), *n its length. */
int tsr_tokenizer_encode(const tsr_tokenizer_t *t, const char *text, size_t len, int add_bos,
                         int parse_special, int32_t **ids, size_t *n);
/* Decodes ids to text, NUL-terminated, malloc'ed in *out (length in *len; the text may hold NULs
 * of its own). Special tokens are rendered as their text unless skip_special. Invalid UTF-8 byte
 * sequences become U+FFFD, one per maximal invalid subpart (Python's errors="replace"; HF's
 * ByteFallback writes one per byte there). SentencePiece: "▁" reads as a space and one leading
 * space of the output is dropped (the dummy prefix's, as HF's Strip decoder does). An id out of
 * range is TSR_EINVAL. */
int tsr_tokenizer_decode(const tsr_tokenizer_t *t, const int32_t *ids, size_t n, int skip_special,
                         char **out, size_t *len);

/* Incremental decoding for streaming: push one id at a time and get back only text that is
 * complete, never half of a UTF-8 character; the concatenation of all outputs and the final
 * flush equals tsr_tokenizer_decode() of all ids. Output pointers are owned by the detokenizer and
 * valid until the next call. After flush the detokenizer starts a new text. An id out of range is
 * TSR_EINVAL (the state is unchanged). */
tsr_detok_t *tsr_detok_new(const tsr_tokenizer_t *t, int skip_special);
int tsr_detok_push(tsr_detok_t *d, int32_t id, const char **out, size_t *n);
int tsr_detok_flush(tsr_detok_t *d, const char **out, size_t *n);
void tsr_detok_free(tsr_detok_t *d);

#endif
