#include "coordinator/request.h"

#include <stdlib.h>
#include <string.h>

#include "common/status.h"

static int render_chat(const struct tsr_chat *chat, const Tessera__V1__ChatMessages *cm,
                       char **text)
{
    struct tsr_chat_msg *msgs = calloc(cm->n_messages ? cm->n_messages : 1, sizeof *msgs);
    if (!msgs) return tsr_errorf(TSR_ENOMEM, "out of memory");
    for (size_t i = 0; i < cm->n_messages; i++)
        msgs[i] = (struct tsr_chat_msg){cm->messages[i]->role ? cm->messages[i]->role : "",
                                        cm->messages[i]->content ? cm->messages[i]->content : ""};
    int rc = tsr_chat_render(chat, msgs, cm->n_messages, 1, text);
    free(msgs);
    return rc;
}

int tsr_request_tokens(const tsr_tokenizer_t *tok, const struct tsr_chat *chat, const char *model,
                       int input_case, const char *prompt, const Tessera__V1__ChatMessages *cm,
                       const Tessera__V1__TokenIds *ti, int32_t **ids, size_t *n)
{
    *ids = NULL;
    *n = 0;
    if (input_case == TESSERA__V1__GENERATE_REQUEST__INPUT_TOKEN_IDS) {
        if (!(*ids = malloc((ti->n_ids ? ti->n_ids : 1) * sizeof **ids)))
            return tsr_errorf(TSR_ENOMEM, "out of memory");
        if (ti->n_ids) memcpy(*ids, ti->ids, ti->n_ids * sizeof **ids);
        *n = ti->n_ids;
        return 0;
    }
    if (!tok) return tsr_errorf(TSR_EINVAL, "model %s has no tokenizer: send token_ids", model);
    int rc;
    if (input_case == TESSERA__V1__GENERATE_REQUEST__INPUT_PROMPT) {
        rc = tsr_tokenizer_encode(tok, prompt, strlen(prompt), tsr_tokenizer_wants_bos(tok), 0, ids,
                                  n);
    } else {
        char *text = NULL;
        rc = render_chat(chat, cm, &text);
        if (!rc)
            rc = tsr_tokenizer_encode(tok, text, strlen(text), tsr_tokenizer_wants_bos(tok), 1, ids,
                                      n);
        free(text);
    }
    if (!rc && *n == 0) {
        free(*ids);
        *ids = NULL;
        rc = tsr_errorf(TSR_EINVAL,
                        "the prompt has no token: none of its bytes is in the "
                        "vocabulary of model %s",
                        model);
    }
    return rc;
}
