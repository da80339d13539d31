/* The text side of one Generate stream (DESIGN §1: the coordinator detokenizes): the leader
 * streams token ids, the client gets text deltas. Transport-neutral: gRPC and any other front end
 * build their messages from its deltas.
 *
 * - Incremental detokenization with special tokens skipped; the end-of-generation token that
 *   ends a stream (finish STOP) adds no text.
 * - Stop strings: the text ends before the first stop string to appear (the one completed by the
 *   earliest token; of those, the leftmost), and no id after the one that completed it is relayed.
 *   Text is held back only while it could be the start of a stop string.
 * - Every delta is whole UTF-8 characters (the text may hold U+0000), and the deltas of a stream
 *   add up to tsr_tokenizer_decode() of the relayed ids (skip_special), cut as above.
 *
 * Not thread-safe: one stream, one thread. */
#ifndef TSR_COORDINATOR_TEXTSTREAM_H
#define TSR_COORDINATOR_TEXTSTREAM_H

#include <stddef.h>
#include <stdint.h>

#include "model/tokenizer.h"
#include "tessera/v1/inference.pb-c.h"

typedef struct tsr_textstream tsr_textstream_t;

struct tsr_text_delta {
    size_t n_ids; /* how many of the pushed ids to relay: all, or through the stop string's */
    const char
        *text; /* n_text bytes the relayed ids add; owned by the stream until the next push */
    size_t n_text;
    int over;                         /* the stream has ended: no more pushes */
    Tessera__V1__FinishReason finish; /* set when over (STOP when a stop string matched) */
};

/* tok NULL (synthetic models): ids only, no text. stop[0, n_stop) are non-empty strings the
 * caller keeps alive for the stream's life. NULL when out of memory. */
tsr_textstream_t *tsr_textstream_new(const tsr_tokenizer_t *tok, char *const *stop, size_t n_stop);

/* One chunk from the leader: ids and its finish reason (UNSPECIFIED while running). Fills *d.
 * A push after the stream ended gives an empty delta. An id outside the vocabulary is TSR_EINVAL
 * (a malformed chunk; the stream is then unusable). */
int tsr_textstream_push(tsr_textstream_t *s, const int32_t *ids, size_t n,
                        Tessera__V1__FinishReason finish, struct tsr_text_delta *d);

void tsr_textstream_free(tsr_textstream_t *s);

#endif
