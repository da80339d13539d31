/* libFuzzer: the chat-template renderer (model/chat.c) over every template family, with or without
 * a default system prompt, on conversations built from the input: roles good and bad, contents of
 * any bytes (split at 0xFF), any count.
 *
 * Properties: it never crashes; it fails only with TSR_EINVAL (a bad role, or a Llama 2
 * conversation that does not alternate); a rendering of valid UTF-8 contents is valid UTF-8; with
 * ChatML and no template every content appears in it whole, in order; its length is the contents'
 * plus a bounded overhead per message. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "coordinator/validate.h"
#include "model/chat.h"
#include "tests/fuzz/fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { MAX_MSGS = 64, OVERHEAD = 96 /* template bytes around one message, generously */ };

static const char *roles[] = {"system", "user", "assistant", "tool", "", "User"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    static const enum tsr_chat_kind kinds[] = {TSR_CHAT_NONE, TSR_CHAT_CHATML, TSR_CHAT_LLAMA3,
                                               TSR_CHAT_LLAMA2};
    struct tsr_chat chat = {.kind = kinds[data[0] & 3],
                            .default_system =
                                (data[0] & 4) ? "You are a helpful AI assistant." : NULL};
    /* The rest: messages separated by 0xFF; a message's first byte picks its role. */
    char *copy = malloc(size);
    CHECK(copy);
    memcpy(copy, data + 1, size - 1);
    copy[size - 1] = 0;
    struct tsr_chat_msg msgs[MAX_MSGS];
    size_t n = 0, total = 0;
    int roles_ok = 1, utf8 = 1;
    char *p = copy, *end = copy + size - 1;
    while (p < end && n < MAX_MSGS) {
        char *sep = memchr(p, 0xFF, (size_t)(end - p));
        if (!sep) sep = end;
        *sep = 0;
        size_t r = (unsigned char)p[0] % (sizeof roles / sizeof *roles);
        const char *content = p + (p < sep); /* NUL-terminated at the separator (or a NUL in it) */
        msgs[n++] = (struct tsr_chat_msg){roles[r], content};
        roles_ok &= r < 3;
        utf8 &= tsr_utf8_valid(content, strlen(content));
        total += strlen(content);
        p = sep + 1;
    }
    char *out = NULL;
    int rc = tsr_chat_render(&chat, msgs, n, data[0] & 8, &out);
    if (!roles_ok) CHECK(rc == TSR_EINVAL);
    if (rc) {
        CHECK(rc == TSR_EINVAL && !out);
        CHECK(!roles_ok || chat.kind == TSR_CHAT_LLAMA2);
    } else {
        size_t len = strlen(out);
        if (utf8) CHECK(tsr_utf8_valid(out, len));
        CHECK(len <= total + OVERHEAD * (n + 1) + 64);
        if (chat.kind == TSR_CHAT_CHATML || chat.kind == TSR_CHAT_NONE) {
            const char *at = out;
            for (size_t i = 0; i < n; i++) {
                const char *hit = strstr(at, msgs[i].content);
                CHECK(hit);
                at = hit + strlen(msgs[i].content);
            }
        }
    }
    free(out);
    free(copy);
    return 0;
}
