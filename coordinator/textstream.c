#include "coordinator/textstream.h"

#include <stdlib.h>
#include <string.h>

#include "common/status.h"

struct tsr_textstream {
    const tsr_tokenizer_t *tok;
    tsr_detok_t *dt; /* NULL without a tokenizer */
    char *const *stop;
    size_t n_stop, hold; /* hold: the longest stop string's length - 1 */
    char *buf;           /* decoded text not yet consumed, buf[0, n) */
    size_t n, cap, sent; /* sent: bytes of buf the last delta handed out */
    int over;
};

tsr_textstream_t *tsr_textstream_new(const tsr_tokenizer_t *tok, char *const *stop, size_t n_stop)
{
    struct tsr_textstream *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->tok = tok;
    s->stop = stop;
    s->n_stop = n_stop;
    for (size_t i = 0; i < n_stop; i++)
        if (strlen(stop[i]) > s->hold + 1) s->hold = strlen(stop[i]) - 1;
    if (tok && !(s->dt = tsr_detok_new(tok, 1))) {
        free(s);
        return NULL;
    }
    return s;
}

void tsr_textstream_free(tsr_textstream_t *s)
{
    if (!s) return;
    tsr_detok_free(s->dt);
    free(s->buf);
    free(s);
}

static int append(struct tsr_textstream *s, const char *p, size_t len)
{
    if (s->n + len > s->cap) {
        size_t cap = (s->n + len) * 2;
        char *b = realloc(s->buf, cap);
        if (!b) return tsr_errorf(TSR_ENOMEM, "out of memory (stream text, %zu bytes)", cap);
        s->buf = b;
        s->cap = cap;
    }
    if (len) memcpy(s->buf + s->n, p, len);
    s->n += len;
    return 0;
}

/* Cuts the text at the leftmost stop string in it; 1 if one matched. O(n * n_stop): what is
 * searched is at most the held-back text plus one token's piece. */
static int cut_at_stop(struct tsr_textstream *s)
{
    size_t cut = s->n;
    for (size_t i = 0; i < s->n_stop && s->n; i++) {
        const char *hit = memmem(s->buf, s->n, s->stop[i], strlen(s->stop[i]));
        if (hit && (size_t)(hit - s->buf) < cut) cut = (size_t)(hit - s->buf);
    }
    if (cut == s->n) return 0;
    s->n = cut;
    return 1;
}

int tsr_textstream_push(tsr_textstream_t *s, const int32_t *ids, size_t n,
                        Tessera__V1__FinishReason finish, struct tsr_text_delta *d)
{
    *d = (struct tsr_text_delta){.text = ""};
    if (s->over) return 0;
    /* What the last delta handed out is the caller's no more. */
    if (s->sent) memmove(s->buf, s->buf + s->sent, s->n - s->sent);
    s->n -= s->sent;
    s->sent = 0;
    int stopped = 0, rc;
    size_t k = 0;
    while (k < n && !stopped) {
        int32_t id = ids[k++];
        if (!s->dt) continue;
        if (finish == TESSERA__V1__FINISH_REASON__FINISH_REASON_STOP && k == n &&
            tsr_tokenizer_is_eog(s->tok, id))
            break; /* the token that ended the answer is no part of its text */
        const char *piece;
        size_t len;
        if ((rc = tsr_detok_push(s->dt, id, &piece, &len)) || (rc = append(s, piece, len)))
            return rc;
        stopped = cut_at_stop(s);
    }
    int over = stopped || finish != TESSERA__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED;
    if (over && s->dt && !stopped) {
        /* the answer ended mid-character: its last bytes become U+FFFD, as decode makes them */
        const char *piece;
        size_t len;
        if ((rc = tsr_detok_flush(s->dt, &piece, &len)) || (rc = append(s, piece, len))) return rc;
        stopped = cut_at_stop(s);
    }
    size_t send = s->n;
    if (!over && s->hold) {
        /* hold back what could begin a stop string, cut on a character boundary */
        send = s->n > s->hold ? s->n - s->hold : 0;
        while (send > 0 && ((unsigned char)s->buf[send] & 0xC0) == 0x80) send--;
    }
    d->n_ids = k;
    d->text = send ? s->buf : "";
    d->n_text = s->sent = send;
    d->over = s->over = over;
    d->finish = stopped ? TESSERA__V1__FINISH_REASON__FINISH_REASON_STOP : finish;
    return 0;
}
