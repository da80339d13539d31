/* Teacher-forced logits of a model against a forward-pass golden (tests/reference/, the format
 * make_exact_golden.py writes): per prompt its tokens and, per position, {argmax, margin, topk};
 * rows_index naming the positions whose full f32 logit rows the .bin holds, in order. Shared by
 * test_forward_golden and test_forward_hf_bf16 (static: one copy per program). Include after
 * cmocka.h. */
#ifndef TSR_TESTS_UNIT_FORWARD_CHECK_H
#define TSR_TESTS_UNIT_FORWARD_CHECK_H

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/status.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "worker/forward.h"

struct golden {
    const char *name, *json, *rows;
    double max_tol;  /* max |ours - reference| over each position's reference top-k */
    double mean_tol; /* mean of the same */
    double tie;      /* argmax must agree where the reference's margin is at least this */
    double row_nmse; /* full-row NMSE bound */
    json_t *root;
    float *rows_data;
    size_t n_rows_floats;
};

/* What teacher_forced() measured. */
struct forward_stats {
    int positions, ties, rows;
    double worst, mean, worst_nmse;
};

static int32_t *ids_of(json_t *arr, int *n)
{
    *n = (int)json_array_size(arr);
    int32_t *ids = malloc(sizeof *ids * (size_t)*n);
    for (int i = 0; i < *n; i++) ids[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return ids;
}

/* 0, or -1 when the JSON or the rows cannot be read. */
static int load_golden(struct golden *gd)
{
    json_error_t err;
    if (!(gd->root = json_load_file(gd->json, 0, &err))) return -1;
    FILE *f = fopen(gd->rows, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    gd->n_rows_floats = (size_t)ftell(f) / 4;
    fseek(f, 0, SEEK_SET);
    gd->rows_data = malloc(gd->n_rows_floats * 4);
    size_t got = fread(gd->rows_data, 4, gd->n_rows_floats, f);
    fclose(f);
    return got == gd->n_rows_floats ? 0 : -1;
}

static void free_golden(struct golden *gd)
{
    json_decref(gd->root);
    free(gd->rows_data);
    gd->root = NULL;
    gd->rows_data = NULL;
}

/* Teacher-forced logits of all n positions, one step, blocks scattered in reverse order. */
static float *teacher_forced_logits(tsr_model_t *model, tsr_backend_t *backend, const int32_t *ids,
                                    int n)
{
    int V = tsr_model_config(model)->n_vocab;
    struct tsr_runner_opts o = {.n_blocks = (n + 15) / 16, .block_size = 16, .max_tokens = n};
    tsr_runner_t *r;
    if (tsr_runner_new(model, backend, &o, NULL, &r)) fail_msg("runner: %s", tsr_last_error());
    int32_t *pos = malloc(sizeof *pos * n), *seq = calloc((size_t)n, sizeof *seq),
            *bt = malloc(sizeof *bt * (size_t)o.n_blocks);
    for (int i = 0; i < n; i++) pos[i] = i;
    for (int i = 0; i < o.n_blocks; i++) bt[i] = o.n_blocks - 1 - i;
    struct tsr_step st = {.n_tokens = n,
                          .ids = ids,
                          .pos = pos,
                          .seq = seq,
                          .n_seqs = 1,
                          .max_blocks = o.n_blocks,
                          .block_tables = bt,
                          .n_out = n,
                          .out_rows = pos};
    float *logits = malloc(sizeof(float) * (size_t)n * V);
    if (tsr_runner_forward(r, &st, logits)) fail_msg("forward: %s", tsr_last_error());
    free(pos), free(seq), free(bt);
    tsr_runner_free(r);
    return logits;
}

/* Checks one position against a reference entry {argmax, margin, topk}; returns the largest
 * top-k difference and adds the differences to *sum, their count to *count. */
static double check_position(const struct golden *gd, const char *what, size_t p, int i,
                             const float *l, int V, json_t *e, double *sum, int *count, int *ties)
{
    int want = (int)json_integer_value(json_object_get(e, "argmax"));
    double margin = json_number_value(json_object_get(e, "margin")), worst = 0;
    json_t *top = json_object_get(e, "topk");
    int got = 0;
    for (int v = 1; v < V; v++)
        if (l[v] > l[got]) got = v;
    for (size_t k = 0; k < json_array_size(top); k++) {
        json_t *pair = json_array_get(top, k);
        int id = (int)json_integer_value(json_array_get(pair, 0));
        double d = fabs(l[id] - json_number_value(json_array_get(pair, 1)));
        *sum += d;
        (*count)++;
        if (d > worst) worst = d;
    }
    if (margin < gd->tie) {
        int second = (int)json_integer_value(json_array_get(json_array_get(top, 1), 0));
        (*ties)++;
        printf("  %s %s near-tie: prompt %zu position %d, margin %.5f: reference %d then %d; "
               "ours %d (%.4f vs %.4f)\n",
               gd->name, what, p, i, margin, want, second, got, l[want], l[second]);
    } else if (got != want) {
        fail_msg("%s %s: prompt %zu position %d: argmax %d, reference %d (margin %.4f)", gd->name,
                 what, p, i, got, want, margin);
    }
    return worst;
}

/* Every prompt of gd teacher-forced through model: argmax, top-k and full rows against gd's
 * bounds (asserted), at least min_positions positions and min_rows rows. */
static struct forward_stats teacher_forced(tsr_model_t *model, tsr_backend_t *backend,
                                           const struct golden *gd, int min_positions, int min_rows)
{
    int V = tsr_model_config(model)->n_vocab;
    json_t *prompts = json_object_get(gd->root, "prompts"),
           *rows_index = json_object_get(gd->root, "rows_index");
    struct forward_stats s = {0};
    double sum = 0;
    int count = 0;
    for (size_t p = 0; p < json_array_size(prompts); p++) {
        json_t *pr = json_array_get(prompts, p), *tf = json_object_get(pr, "teacher_forced");
        int n;
        int32_t *ids = ids_of(json_object_get(pr, "tokens"), &n);
        float *logits = teacher_forced_logits(model, backend, ids, n);
        for (int i = 0; i < n; i++) {
            double w = check_position(gd, "teacher-forced", p, i, logits + (size_t)i * V, V,
                                      json_array_get(tf, (size_t)i), &sum, &count, &s.ties);
            if (w > s.worst) s.worst = w;
            s.positions++;
        }
        size_t off = 0;
        for (size_t k = 0; k < json_array_size(rows_index); k++, off += (size_t)V) {
            json_t *ri = json_array_get(rows_index, k);
            if ((size_t)json_integer_value(json_object_get(ri, "prompt")) != p) continue;
            int at = (int)json_integer_value(json_object_get(ri, "pos"));
            assert_true(off + (size_t)V <= gd->n_rows_floats);
            double num = 0, den = 0;
            for (int v = 0; v < V; v++) {
                double d = logits[(size_t)at * V + v] - gd->rows_data[off + v];
                num += d * d;
                den += (double)gd->rows_data[off + v] * gd->rows_data[off + v];
            }
            if (num / den > s.worst_nmse) s.worst_nmse = num / den;
            s.rows++;
        }
        free(logits);
        free(ids);
    }
    s.mean = count ? sum / count : 0;
    printf("teacher-forced vs %s: %d positions, %d under margin %.3g; top-k |diff| max %.5f "
           "(bound %.3g) mean %.5f (bound %.3g); %d full rows, worst NMSE %.3g (bound %.3g)\n",
           gd->name, s.positions, s.ties, gd->tie, s.worst, gd->max_tol, s.mean, gd->mean_tol,
           s.rows, s.worst_nmse, gd->row_nmse);
    assert_true(s.positions >= min_positions);
    assert_true(s.rows >= min_rows);
    assert_true(s.worst <= gd->max_tol);
    assert_true(s.mean <= gd->mean_tol);
    assert_true(s.worst_nmse <= gd->row_nmse);
    return s;
}

#endif
