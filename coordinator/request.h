/* A request's prompt as token ids (DESIGN §1: the coordinator tokenizes), exactly as
 * `tessera generate` makes them, so that a served answer equals the offline one. */
#ifndef TSR_COORDINATOR_REQUEST_H
#define TSR_COORDINATOR_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "model/chat.h"
#include "model/tokenizer.h"
#include "tessera/v1/inference.pb-c.h"

/* input_case is a GenerateRequest's (a TokenizeRequest's cases have the same numbers): raw
 * prompt text without special-token parsing (BOS where the model wants it), chat messages
 * rendered with chat and encoded with it, or the token ids as given. tok NULL (synthetic models):
 * token ids only, TSR_EINVAL otherwise. A prompt with no token at all (every byte unspellable) is
 * TSR_EINVAL. *ids is malloc'ed (caller frees), *n its length. model names the model in errors. */
int tsr_request_tokens(const tsr_tokenizer_t *tok, const struct tsr_chat *chat, const char *model,
                       int input_case, const char *prompt, const Tessera__V1__ChatMessages *cm,
                       const Tessera__V1__TokenIds *ti, int32_t **ids, size_t *n);

#endif
