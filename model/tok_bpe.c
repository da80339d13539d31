/* BPE: the vocabulary and merge hash maps, and the merge loop over one pre-tokenized word.
 *
 * The loop is the one Hugging Face tokenizers and llama.cpp run: the word's symbols form a linked
 * list; every adjacent pair with a merge goes into a min-heap keyed by (rank, left position);
 * the best pair is merged and its new neighbours pushed. Stale heap entries (a side already
 * merged away) are skipped when popped. O(n log n) for a word of n symbols. */
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/tok_internal.h"

/* ---- string → id ------------------------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h ^ (h >> 29);
}

int tok_str_map_init(struct tok_str_map *m, const struct tsr_tokenizer *t, size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1; /* load factor <= 1/2 */
    m->slot = malloc(cap * sizeof *m->slot);
    if (!m->slot) return tsr_errorf(TSR_ENOMEM, "tokenizer: out of memory (vocab map)");
    memset(m->slot, 0xff, cap * sizeof *m->slot);
    m->mask = (uint32_t)(cap - 1);
    m->t = t;
    return 0;
}

void tok_str_map_free(struct tok_str_map *m)
{
    free(m->slot);
    m->slot = NULL;
}

void tok_str_map_put(struct tok_str_map *m, int32_t id)
{
    const struct tsr_tokenizer *t = m->t;
    const char *s = t->pool + t->off[id];
    size_t n = t->len[id];
    for (uint32_t i = (uint32_t)hash_bytes(s, n) & m->mask;; i = (i + 1) & m->mask) {
        int32_t o = m->slot[i];
        if (o < 0 || (t->len[o] == n && memcmp(t->pool + t->off[o], s, n) == 0)) {
            m->slot[i] = id;
            return;
        }
    }
}

int32_t tok_str_map_get(const struct tok_str_map *m, const char *s, size_t n)
{
    const struct tsr_tokenizer *t = m->t;
    for (uint32_t i = (uint32_t)hash_bytes(s, n) & m->mask;; i = (i + 1) & m->mask) {
        int32_t o = m->slot[i];
        if (o < 0) return -1;
        if (t->len[o] == n && memcmp(t->pool + t->off[o], s, n) == 0) return o;
    }
}

/* ---- (left, right) → merge ---------------------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

int tok_merge_map_init(struct tok_merge_map *m, size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    m->slot = malloc(cap * sizeof *m->slot);
    if (!m->slot) return tsr_errorf(TSR_ENOMEM, "tokenizer: out of memory (merge map)");
    for (size_t i = 0; i < cap; i++) m->slot[i].key = UINT64_MAX;
    m->mask = cap - 1;
    m->n = 0;
    return 0;
}

void tok_merge_map_free(struct tok_merge_map *m)
{
    free(m->slot);
    m->slot = NULL;
}

void tok_merge_map_put(struct tok_merge_map *m, int32_t l, int32_t r, int32_t rank, int32_t res)
{
    uint64_t key = (uint64_t)(uint32_t)l << 32 | (uint32_t)r;
    for (uint64_t i = mix64(key) & m->mask;; i = (i + 1) & m->mask) {
        struct tok_merge *e = &m->slot[i];
        if (e->key == key) return;
        if (e->key == UINT64_MAX) {
            e->key = key;
            e->rank = rank;
            e->result = res;
            m->n++;
            return;
        }
    }
}

const struct tok_merge *tok_merge_map_get(const struct tok_merge_map *m, int32_t l, int32_t r)
{
    if (!m->n) return NULL;
    uint64_t key = (uint64_t)(uint32_t)l << 32 | (uint32_t)r;
    for (uint64_t i = mix64(key) & m->mask;; i = (i + 1) & m->mask) {
        const struct tok_merge *e = &m->slot[i];
        if (e->key == key) return e;
        if (e->key == UINT64_MAX) return NULL;
    }
}

/* ---- output ------------------------------------------------------------------------------- */

int tok_ids_push(struct tok_ids *o, int32_t id)
{
    if (o->n == o->cap) {
        size_t cap = o->cap ? 2 * o->cap : 64;
        int32_t *v = realloc(o->v, cap * sizeof *v);
        if (!v) return tsr_errorf(TSR_ENOMEM, "tokenizer: out of memory (%zu ids)", cap);
        o->v = v;
        o->cap = cap;
    }
    o->v[o->n++] = id;
    return 0;
}

/* ---- the merge loop ----------------------------------------------------------------------- */

struct tok_sym {
    int32_t id; /* -1 once merged into its left neighbour */
    int32_t prev, next;
};

struct tok_heap_ent {
    int32_t rank, pos; /* pos: the left symbol's index */
    int32_t left, right, result;
};

static int heap_less(const struct tok_heap_ent *a, const struct tok_heap_ent *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(struct tok_heap_ent *h, size_t *n, struct tok_heap_ent e)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&e, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

static struct tok_heap_ent heap_pop(struct tok_heap_ent *h, size_t *n)
{
    struct tok_heap_ent top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap_less(&h[c + 1], &h[c])) c++;
        if (!heap_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

void tok_bpe_scratch_free(struct tok_bpe_scratch *s)
{
    free(s->sym);
    free(s->heap);
    free(s->buf);
    memset(s, 0, sizeof *s);
}

static int reserve(void **p, size_t *cap, size_t want, size_t elem)
{
    if (*cap >= want) return 0;
    size_t c = *cap ? *cap : 64;
    while (c < want) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return tsr_errorf(TSR_ENOMEM, "tokenizer: out of memory (word of %zu)", want);
    *p = q;
    *cap = c;
    return 0;
}

static void try_pair(const struct tsr_tokenizer *t, struct tok_bpe_scratch *s, size_t *nh,
                     int32_t l)
{
    int32_t r = s->sym[l].next;
    if (r < 0) return;
    const struct tok_merge *m = tok_merge_map_get(&t->merges, s->sym[l].id, s->sym[r].id);
    if (!m) return;
    struct tok_heap_ent e = {m->rank, l, s->sym[l].id, s->sym[r].id, m->result};
    heap_push(s->heap, nh, e);
}

/* Initial symbols of an SPM word: one per UTF-8 char in the vocabulary, else its bytes as
 * <0xXX> tokens (byte fallback), else unk (consecutive unks fused when fuse_unk). A char with
 * neither is dropped, as Hugging Face does. */
static int spm_symbols(const struct tsr_tokenizer *t, struct tok_sym *sym, const char *w, size_t n)
{
    int ns = 0;
    for (size_t i = 0; i < n;) {
        int adv;
        (void)tok_utf8_decode(w + i, n - i, &adv);
        int32_t id = tok_str_map_get(&t->vocab, w + i, (size_t)adv);
        if (id >= 0) {
            sym[ns++].id = id;
        } else {
            int ok = t->byte_fallback;
            for (int k = 0; ok && k < adv; k++) ok = t->byte_tok[(unsigned char)w[i + k]] >= 0;
            if (ok) {
                for (int k = 0; k < adv; k++) sym[ns++].id = t->byte_tok[(unsigned char)w[i + k]];
            } else if (t->unk >= 0 && !(t->fuse_unk && ns > 0 && sym[ns - 1].id == t->unk)) {
                sym[ns++].id = t->unk;
            }
        }
        i += (size_t)adv;
    }
    return ns;
}

int tok_bpe_word(const struct tsr_tokenizer *t, struct tok_bpe_scratch *s, const char *w, size_t n,
                 struct tok_ids *out)
{
    int rc;
    if (n == 0) return 0;
    if (n > INT32_MAX / 4)
        return tsr_errorf(TSR_ERANGE, "tokenizer: pre-token of %zu bytes is too long", n);

    if (t->ignore_merges) {
        const char *word = w;
        size_t wn = n;
        if (t->kind == TOK_BYTE_BPE) {
            if ((rc = reserve((void **)&s->buf, &s->buf_cap, 2 * n, 1))) return rc;
            wn = 0;
            for (size_t i = 0; i < n; i++) {
                unsigned char b = (unsigned char)w[i];
                memcpy(s->buf + wn, t->spell[b], t->spell_len[b]);
                wn += t->spell_len[b];
            }
            word = s->buf;
        }
        int32_t id = tok_str_map_get(&t->vocab, word, wn);
        if (id >= 0) return tok_ids_push(out, id);
    }

    if ((rc = reserve((void **)&s->sym, &s->sym_cap, n, sizeof *s->sym)) ||
        (rc = reserve((void **)&s->heap, &s->heap_cap, 3 * n, sizeof *s->heap)))
        return rc;
    struct tok_sym *sym = s->sym;
    int ns = 0;
    if (t->kind == TOK_BYTE_BPE) {
        for (size_t i = 0; i < n; i++) {
            int32_t id = t->byte_tok[(unsigned char)w[i]];
            if (id < 0) id = t->unk;
            if (id >= 0) sym[ns++].id = id;
        }
    } else {
        ns = spm_symbols(t, sym, w, n);
    }
    for (int i = 0; i < ns; i++) {
        sym[i].prev = i - 1;
        sym[i].next = i + 1 < ns ? i + 1 : -1;
    }

    size_t nh = 0;
    for (int i = 0; i + 1 < ns; i++) try_pair(t, s, &nh, i);
    while (nh) {
        struct tok_heap_ent e = heap_pop(s->heap, &nh);
        struct tok_sym *l = &sym[e.pos];
        if (l->id != e.left || l->next < 0 || sym[l->next].id != e.right) continue; /* stale */
        int32_t r = l->next;
        l->id = e.result;
        l->next = sym[r].next;
        if (l->next >= 0) sym[l->next].prev = e.pos;
        sym[r].id = -1;
        if (l->prev >= 0) try_pair(t, s, &nh, l->prev);
        try_pair(t, s, &nh, e.pos);
    }
    for (int i = ns > 0 ? 0 : -1; i >= 0; i = sym[i].next)
        if ((rc = tok_ids_push(out, sym[i].id))) return rc;
    return 0;
}
