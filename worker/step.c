#include "worker/step.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/sampling.h"

/* The message: this header, then (for STEP_RUN) ids, pos, seq (n_tokens each), block tables,
 * out_rows, and with sample set n_out tsr_sample_params. */
struct step_header {
    int32_t kind, n_tokens, n_seqs, max_blocks, n_out, sample, top;
};

static size_t ints_bytes(const struct step_header *h)
{
    return sizeof(int32_t) *
           (3 * (size_t)h->n_tokens + (size_t)h->n_seqs * h->max_blocks + h->n_out);
}

static size_t step_bytes(const struct step_header *h)
{
    return sizeof *h + ints_bytes(h) +
           (h->sample ? (size_t)h->n_out * sizeof(struct tsr_sample_params) : 0);
}

int tsr_step_msg_reserve(struct tsr_step_msg *m, size_t n)
{
    if (n <= m->cap) return 0;
    void *p = realloc(m->buf, n);
    if (!p) return tsr_errorf(TSR_ENOMEM, "out of memory for a %zu-byte message", n);
    m->buf = p;
    m->cap = n;
    return 0;
}

void tsr_step_msg_free(struct tsr_step_msg *m)
{
    free(m->buf);
    m->buf = NULL;
    m->cap = m->len = 0;
}

int tsr_step_pack(const struct tsr_step *st, struct tsr_step_msg *m)
{
    struct step_header h = {TSR_STEP_RUN,
                            st->n_tokens,
                            st->n_seqs,
                            st->max_blocks,
                            st->n_out,
                            st->sample != NULL,
                            st->sample ? st->top : 0};
    size_t n = step_bytes(&h);
    int rc = tsr_step_msg_reserve(m, n);
    if (rc) return rc;
    int32_t *a = (int32_t *)((char *)m->buf + sizeof h);
    size_t T = (size_t)h.n_tokens, B = (size_t)h.n_seqs * h.max_blocks;
    memcpy(m->buf, &h, sizeof h);
    memcpy(a, st->ids, sizeof *a * T);
    memcpy(a + T, st->pos, sizeof *a * T);
    memcpy(a + 2 * T, st->seq, sizeof *a * T);
    memcpy(a + 3 * T, st->block_tables, sizeof *a * B);
    memcpy(a + 3 * T + B, st->out_rows, sizeof *a * (size_t)h.n_out);
    if (st->sample)
        memcpy((char *)a + ints_bytes(&h), st->sample,
               (size_t)h.n_out * sizeof(struct tsr_sample_params));
    m->len = n;
    return 0;
}

int tsr_step_pack_control(enum tsr_step_kind kind, struct tsr_step_msg *m)
{
    struct step_header h = {.kind = kind};
    int rc = tsr_step_msg_reserve(m, sizeof h);
    if (rc) return rc;
    memcpy(m->buf, &h, sizeof h);
    m->len = sizeof h;
    return 0;
}

int tsr_step_send(tsr_comm_t *world, const struct tsr_step_msg *m, int peer)
{
    /* the header first, so the receiver knows how much follows */
    const size_t hb = sizeof(struct step_header);
    int rc = tsr_comm_send_host(world, m->buf, hb, peer);
    if (!rc && m->len > hb) rc = tsr_comm_send_host(world, (char *)m->buf + hb, m->len - hb, peer);
    return rc;
}

int tsr_step_recv(tsr_comm_t *world, int peer, struct tsr_step_msg *m, struct tsr_step_msg *params,
                  struct tsr_step *st, enum tsr_step_kind *kind)
{
    struct step_header h;
    int rc = tsr_comm_recv_host(world, &h, sizeof h, peer);
    if (rc) return rc;
    if (h.kind == TSR_STEP_STOP || h.kind == TSR_STEP_IDLE) {
        *kind = h.kind;
        return tsr_step_pack_control(h.kind, m); /* to pass on */
    }
    if (h.kind != TSR_STEP_RUN || h.n_tokens <= 0 || h.n_seqs < 0 || h.max_blocks < 0 ||
        h.n_out < 0 || h.top < 0 || h.top > TSR_SAMPLING_MAX_TOP_LOGPROBS)
        return tsr_errorf(TSR_EFORMAT, "a step header of kind %d with %d tokens: out of step",
                          (int)h.kind, (int)h.n_tokens);
    *kind = TSR_STEP_RUN;
    size_t n = step_bytes(&h);
    if ((rc = tsr_step_msg_reserve(m, n)) ||
        (rc = tsr_comm_recv_host(world, (char *)m->buf + sizeof h, n - sizeof h, peer)))
        return rc;
    memcpy(m->buf, &h, sizeof h);
    m->len = n;
    int32_t *a = (int32_t *)((char *)m->buf + sizeof h);
    st->n_tokens = h.n_tokens;
    st->n_seqs = h.n_seqs;
    st->max_blocks = h.max_blocks;
    st->n_out = h.n_out;
    st->ids = a;
    st->pos = a + h.n_tokens;
    st->seq = a + 2 * h.n_tokens;
    st->block_tables = a + 3 * h.n_tokens;
    st->out_rows = st->block_tables + (size_t)h.n_seqs * h.max_blocks;
    /* the parameters sit after the ints, maybe not aligned for their doubles: copied out */
    st->sample = NULL;
    st->top = h.top;
    if (h.sample) {
        size_t pb = (size_t)h.n_out * sizeof(struct tsr_sample_params);
        if ((rc = tsr_step_msg_reserve(params, pb))) return rc;
        memcpy(params->buf, (char *)a + ints_bytes(&h), pb);
        st->sample = params->buf;
    }
    return 0;
}

int tsr_step_follow(tsr_model_t *m, tsr_backend_t *b, const struct tsr_runner_opts *ro,
                    struct tsr_group *g)
{
    tsr_runner_t *r = NULL;
    int rc = tsr_runner_new(m, b, ro, &g->shard, &r);
    if (!rc) rc = tsr_runner_follow(r);
    tsr_runner_free(r);
    return rc;
}
