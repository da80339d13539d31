/* UTF-8 helpers for the tokenizer: strict validation, decoding, and a streaming lossy decoder
 * whose replacement rule (one U+FFFD per maximal invalid subpart) is the one Rust's
 * String::from_utf8_lossy and Python's errors="replace" use. */
#include "model/tok_internal.h"

#include <string.h>

int tok_utf8_len(unsigned char c)
{
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) return 3;
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 1;
}

/* Valid range of the second byte after lead byte c (the later ones are always 80..BF). */
static void second_range(unsigned char c, unsigned char *lo, unsigned char *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (c == 0xE0)
        *lo = 0xA0; /* overlong */
    else if (c == 0xED)
        *hi = 0x9F; /* surrogates */
    else if (c == 0xF0)
        *lo = 0x90; /* overlong */
    else if (c == 0xF4)
        *hi = 0x8F; /* above U+10FFFF */
}

size_t tok_utf8_valid_prefix(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c < 0xC2 || c > 0xF4) return i;
        int len = tok_utf8_len(c);
        if (n - i < (size_t)len) return i;
        unsigned char lo, hi;
        second_range(c, &lo, &hi);
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (int k = 2; k < len; k++)
            if ((s[i + k] & 0xC0) != 0x80) return i;
        i += (size_t)len;
    }
    return n;
}

uint32_t tok_utf8_decode(const char *str, size_t n, int *adv)
{
    const unsigned char *s = (const unsigned char *)str;
    int len = tok_utf8_len(s[0]);
    if ((size_t)len > n) len = 1;
    *adv = len;
    switch (len) {
    case 2:
        return ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    case 3:
        return ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    case 4:
        return ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
               ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    default:
        return s[0];
    }
}

int tok_utf8_encode(uint32_t cp, char out[4])
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

int tok_is_unicode_space(uint32_t cp)
{
    if (cp >= 0x09 && cp <= 0x0D) return 1;
    switch (cp) {
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
        return 1;
    default:
        return cp >= 0x2000 && cp <= 0x200A;
    }
}

static const char replacement[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

int tok_utf8_stream_feed(struct tok_utf8_stream *s, unsigned char c, char *out)
{
    int w = 0;
    if (s->npend) {
        unsigned char lo = 0x80, hi = 0xBF;
        if (s->npend == 1) second_range(s->pend[0], &lo, &hi);
        if (c >= lo && c <= hi) {
            s->pend[s->npend++] = c;
            if (s->npend == s->need) {
                memcpy(out, s->pend, (size_t)s->npend);
                w = s->npend;
                s->npend = 0;
            }
            return w;
        }
        /* The pending bytes are a maximal invalid subpart; c starts afresh. */
        memcpy(out, replacement, 3);
        w = 3;
        s->npend = 0;
    }
    if (c < 0x80) {
        out[w++] = (char)c;
    } else if (c >= 0xC2 && c <= 0xF4) {
        s->pend[0] = c;
        s->npend = 1;
        s->need = tok_utf8_len(c);
    } else {
        memcpy(out + w, replacement, 3);
        w += 3;
    }
    return w;
}

int tok_utf8_stream_flush(struct tok_utf8_stream *s, char *out)
{
    if (!s->npend) return 0;
    s->npend = 0;
    memcpy(out, replacement, 3);
    return 3;
}

/* GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68 bytes
 * take U+0100.. in byte order, so every byte string has a printable spelling. */
static int printable_latin1(unsigned b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

uint32_t tok_byte_to_cp(uint8_t b)
{
    if (printable_latin1(b)) return b;
    uint32_t k = 0;
    for (unsigned x = 0; x < b; x++) k += !printable_latin1(x);
    return 0x100 + k;
}

int tok_cp_to_byte(uint32_t cp)
{
    if (cp < 0x100) return printable_latin1(cp) ? (int)cp : -1;
    if (cp >= 0x100 + 68) return -1;
    uint32_t k = cp - 0x100;
    for (unsigned x = 0; x < 256; x++)
        if (!printable_latin1(x) && k-- == 0) return (int)x;
    return -1;
}
