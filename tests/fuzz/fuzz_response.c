/* libFuzzer: the coordinator's response path. Arbitrary token-id streams (special tokens, byte
 * tokens of partial characters, end-of-generation anywhere, ids outside the vocabulary), cut into
 * chunks as a leader would send them, with up to three stop strings (taken from decoded tokens,
 * so they straddle token boundaries, or from raw bytes), go through coordinator/textstream and
 * are packed as GenerateResponse messages the way the gRPC service packs them.
 *
 * Properties, against an oracle that decodes from the start after every token:
 *  - the streamed text is the text of the relayed ids, cut before the first stop string to appear;
 *  - the relayed ids end with the token that completed the stop string (or are all of them);
 *  - every delta is valid UTF-8, and no more text is held back than a stop string could need;
 *  - the finish reason is STOP exactly when a stop string matched, else the leader's;
 *  - every packed response parses, with the text (U+0000 included) as the field's bytes;
 *  - an id outside the vocabulary is TSR_EINVAL, never a crash.
 *
 * Input: byte 0 = flags (stop count, finish reason, end-of-generation last, chunking), then per
 * stop string a length byte and its bytes, then 3 bytes per token (a mode byte and a u16).
 * The tokenizer is $TSR_TOKENIZER, else tests/reference/smollm2_tokenizer.json from the repo
 * root. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rpc.h"
#include "common/status.h"
#include "coordinator/textstream.h"
#include "coordinator/validate.h"
#include "model/tokenizer.h"
#include "tests/fuzz/fuzz_check.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { MAX_IDS = 512, MAX_STOP = 3, MAX_INTERESTING = 1024 };

static tsr_tokenizer_t *tok;
static int32_t interesting[MAX_INTERESTING]; /* special, end-of-generation and lone-byte ids */
static int n_interesting, nv;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *path = getenv("TSR_TOKENIZER");
    if (!path) path = "tests/reference/smollm2_tokenizer.json";
    if (tsr_tokenizer_from_json(path, &tok)) {
        fprintf(stderr, "fuzz_response: %s (set TSR_TOKENIZER or run from the repo root)\n",
                tsr_last_error());
        abort();
    }
    nv = tsr_tokenizer_n_vocab(tok);
    for (int32_t id = 0; id < nv && n_interesting < MAX_INTERESTING / 2; id++)
        if (tsr_tokenizer_is_special(tok, id) || tsr_tokenizer_is_eog(tok, id))
            interesting[n_interesting++] = id;
    for (int b = 0; b < 256; b++) {
        int32_t id = tsr_tokenizer_byte_token(tok, (uint8_t)b);
        if (id >= 0 && (b == 0 || b >= 0x80)) interesting[n_interesting++] = id;
    }
    return 0;
}

struct text {
    char *p;
    size_t n, cap;
};

static void text_add(struct text *t, const char *s, size_t n)
{
    if (t->n + n + 1 > t->cap) {
        t->cap = (t->n + n + 1) * 2;
        t->p = realloc(t->p, t->cap);
        CHECK(t->p);
    }
    memcpy(t->p + t->n, s, n);
    t->n += n;
    t->p[t->n] = 0;
}

/* Leftmost start of any stop string in t, or t->n. */
static size_t first_stop(const struct text *t, char **stop, int n_stop)
{
    size_t cut = t->n;
    for (int i = 0; i < n_stop; i++) {
        const char *hit = t->n ? memmem(t->p, t->n, stop[i], strlen(stop[i])) : NULL;
        if (hit && (size_t)(hit - t->p) < cut) cut = (size_t)(hit - t->p);
    }
    return cut;
}

/* The GenerateResponse as the service packs it parses, with the text as its bytes. */
static void check_packed(const struct tsr_text_delta *d, const int32_t *ids)
{
    Tessera__V1__GenerateResponse m = TESSERA__V1__GENERATE_RESPONSE__INIT;
    m.request_id = "fuzz";
    m.n_token_ids = d->n_ids;
    m.token_ids = (int32_t *)ids;
    size_t len;
    unsigned field = protobuf_c_message_descriptor_get_field_by_name(
                         &tessera__v1__generate_response__descriptor, "text")
                         ->id;
    uint8_t *buf = tsr_pb_pack_with_bytes(&m.base, field, d->text, d->n_text, &len);
    CHECK(buf);
    CHECK(len >= d->n_text && !memcmp(buf + len - d->n_text, d->text, d->n_text));
    Tessera__V1__GenerateResponse *u = tessera__v1__generate_response__unpack(NULL, len, buf);
    CHECK(u && u->text && u->n_token_ids == d->n_ids && !strcmp(u->request_id, "fuzz"));
    CHECK(!strncmp(u->text, d->text, d->n_text)); /* up to a NUL, as protobuf-c sees it */
    CHECK(d->n_ids == 0 || !memcmp(u->token_ids, ids, d->n_ids * sizeof *ids));
    tessera__v1__generate_response__free_unpacked(u, NULL);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const uint8_t *p = data + 1, *end = data + size;
    unsigned flags = data[0];
    int n_stop = (int)(flags & 3) % (MAX_STOP + 1);
    Tessera__V1__FinishReason finish = (flags & 4)
                                           ? TESSERA__V1__FINISH_REASON__FINISH_REASON_LENGTH
                                           : TESSERA__V1__FINISH_REASON__FINISH_REASON_STOP;
    int eog_last = (flags & 8) != 0;
    unsigned chunk_mask = (flags >> 4) & 3; /* a chunk ends after a token whose mode & mask == 0 */

    /* Stop strings: bit 7 of the length byte picks raw bytes, else the decoded text of u16 ids
     * from the bytes that follow. Invalid or empty ones are left out, as validation refuses them.
     */
    char *stop[MAX_STOP];
    int k_stop = 0;
    for (int i = 0; i < n_stop && p < end; i++) {
        size_t len = *p & 0x0F, raw = *p & 0x80;
        p++;
        if (len > (size_t)(end - p)) len = (size_t)(end - p);
        char *s = NULL;
        if (raw) {
            s = strndup((const char *)p, len);
        } else {
            int32_t sid[8];
            size_t ns = 0;
            for (size_t k = 0; k + 1 < len && ns < 8; k += 2)
                sid[ns++] = (int32_t)((p[k] | p[k + 1] << 8) % nv);
            size_t n;
            if (tsr_tokenizer_decode(tok, sid, ns, 1, &s, &n)) s = NULL;
        }
        p += len;
        CHECK(!raw || s);
        if (s && s[0] && strlen(s) <= TSR_MAX_STOP_BYTES && tsr_utf8_valid(s, strlen(s)))
            stop[k_stop++] = s;
        else
            free(s);
    }

    /* The token ids and where chunks end. */
    int32_t ids[MAX_IDS];
    int chunk_end[MAX_IDS];
    size_t n = 0;
    int bad_at = -1;
    for (; end - p >= 3 && n < MAX_IDS; p += 3) {
        unsigned mode = p[0], v = (unsigned)(p[1] | p[2] << 8);
        if (mode == 0xFF) {
            ids[n] = nv + (int32_t)(v & 7); /* outside the vocabulary */
            if (bad_at < 0) bad_at = (int)n;
        } else if ((mode & 3) == 0) {
            ids[n] = interesting[v % (unsigned)n_interesting];
        } else {
            ids[n] = (int32_t)(v % (unsigned)nv);
        }
        chunk_end[n++] = ((mode >> 2) & chunk_mask) == 0;
    }
    if (n && eog_last && finish == TESSERA__V1__FINISH_REASON__FINISH_REASON_STOP &&
        bad_at != (int)n - 1)
        ids[n - 1] = tsr_tokenizer_eos(tok) >= 0 ? tsr_tokenizer_eos(tok) : ids[n - 1];
    if (n) chunk_end[n - 1] = 1;

    /* The oracle: text after each token, from a fresh decode; where the first stop appears. */
    size_t hold = 0;
    for (int i = 0; i < k_stop; i++)
        if (strlen(stop[i]) > hold + 1) hold = strlen(stop[i]) - 1;
    size_t n_text_ids = n; /* the ids whose text counts: not the final end-of-generation token */
    if (n && finish == TESSERA__V1__FINISH_REASON__FINISH_REASON_STOP &&
        tsr_tokenizer_is_eog(tok, ids[n - 1]))
        n_text_ids = n - 1;
    size_t want_ids = n, want_cut = SIZE_MAX;
    struct text accum = {0};
    size_t *accum_at = calloc(n + 1, sizeof *accum_at); /* stable text after token k */
    CHECK(accum_at);
    tsr_detok_t *od = tsr_detok_new(tok, 1);
    CHECK(od);
    for (size_t k = 0; k < n && want_cut == SIZE_MAX && (bad_at < 0 || (int)k < bad_at); k++) {
        if (k < n_text_ids) {
            const char *piece;
            size_t len;
            CHECK(!tsr_detok_push(od, ids[k], &piece, &len));
            text_add(&accum, piece, len);
        }
        accum_at[k + 1] = accum.n;
        size_t cut = first_stop(&accum, stop, k_stop);
        if (cut < accum.n) {
            want_cut = cut;
            want_ids = k + 1;
        }
    }
    if (want_cut == SIZE_MAX && bad_at < 0) {
        const char *piece;
        size_t len;
        CHECK(!tsr_detok_flush(od, &piece, &len));
        text_add(&accum, piece, len);
        size_t cut = first_stop(&accum, stop, k_stop);
        if (cut < accum.n) want_cut = cut;
        /* the incremental oracle agrees with a one-shot decode */
        char *full;
        size_t fn;
        CHECK(!tsr_tokenizer_decode(tok, ids, n_text_ids, 1, &full, &fn));
        CHECK(fn == accum.n && !memcmp(full, accum.p ? accum.p : "", fn));
        free(full);
    }
    tsr_detok_free(od);
    size_t want_n = want_cut == SIZE_MAX ? accum.n : want_cut;

    /* The stream, chunk by chunk. */
    tsr_textstream_t *ts = tsr_textstream_new(tok, stop, (size_t)k_stop);
    CHECK(ts);
    struct text got = {0};
    size_t relayed = 0, start = 0;
    int over = 0, failed = 0;
    Tessera__V1__FinishReason got_finish = 0;
    for (size_t k = 0; k < n && !failed; k++) {
        if (!chunk_end[k]) continue;
        struct tsr_text_delta d;
        int rc = tsr_textstream_push(
            ts, ids + start, k + 1 - start,
            k + 1 == n ? finish : TESSERA__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED, &d);
        if (rc) {
            /* only a bad id fails, and only when it is reached */
            CHECK(rc == TSR_EINVAL && !over && bad_at >= (int)start && bad_at <= (int)k);
            failed = 1;
            break;
        }
        if (over) {
            CHECK(d.n_ids == 0 && d.n_text == 0 && !d.over);
        } else {
            CHECK(d.n_ids <= k + 1 - start);
            CHECK(tsr_utf8_valid(d.text, d.n_text));
            check_packed(&d, ids + start);
            text_add(&got, d.text, d.n_text);
            relayed += d.n_ids;
            if (d.over) {
                over = 1;
                got_finish = d.finish;
            } else {
                CHECK(d.n_ids == k + 1 - start);
                /* held back: no more than the longest stop string could need (plus a character) */
                CHECK(accum_at[k + 1] - got.n <= hold + 3);
            }
        }
        start = k + 1;
    }
    if (!failed && n) {
        CHECK(over);
        CHECK(relayed == want_ids);
        CHECK(got.n == want_n && !memcmp(got.p ? got.p : "", accum.p ? accum.p : "", want_n));
        CHECK(got_finish ==
              (want_cut != SIZE_MAX ? TESSERA__V1__FINISH_REASON__FINISH_REASON_STOP : finish));
    }
    if (!n) {
        /* a leader's finish with no ids ends the stream with no text */
        struct tsr_text_delta d;
        CHECK(!tsr_textstream_push(ts, ids, 0, finish, &d));
        CHECK(d.over && d.n_ids == 0 && d.n_text == 0 && d.finish == finish);
    }
    tsr_textstream_free(ts);
    free(got.p);
    free(accum.p);
    free(accum_at);
    for (int i = 0; i < k_stop; i++) free(stop[i]);
    return 0;
}
