/* libFuzzer: a public GenerateRequest from arbitrary bytes through what the coordinator does
 * before routing: the NUL check of string fields, protobuf-c's unpack, validation, and (for text)
 * tokenization with the default model's tokenizer ($TSR_TOKENIZER: a tokenizer.json; tokenization
 * skipped when unset). Nothing may crash, and a request that validates must tokenize or fail with a
 * code. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/rpc.h"
#include "common/status.h"
#include "coordinator/validate.h"
#include "model/tokenizer.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static tsr_tokenizer_t *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *p = getenv("TSR_TOKENIZER");
    if (p && tsr_tokenizer_from_json(p, &tok)) tok = NULL;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int nul = tsr_pb_check_strings(&tessera__v1__generate_request__descriptor, data, size);
    Tessera__V1__GenerateRequest *r = tessera__v1__generate_request__unpack(NULL, size, data);
    if (!r) return 0;
    if (nul) { /* the coordinator refuses it here */
        tessera__v1__generate_request__free_unpacked(r, NULL);
        return 0;
    }
    struct tsr_sampling sp;
    int max_tokens;
    if (!tsr_validate_generate(r, 49152, &sp, &max_tokens) && tok &&
        r->input_case == TESSERA__V1__GENERATE_REQUEST__INPUT_PROMPT) {
        int32_t *ids = NULL;
        size_t n = 0;
        int rc = tsr_tokenizer_encode(tok, r->prompt, strlen(r->prompt), 1, 0, &ids, &n);
        if (!rc) (void)tsr_validate_context((int)n, max_tokens, 8192);
        free(ids);
    }
    tessera__v1__generate_request__free_unpacked(r, NULL);
    return 0;
}
