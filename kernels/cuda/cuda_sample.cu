/* Sampling where the logits are: worker/sampling.c's tsr_sample() (top-k, temperature, softmax,
 * top-p, min-p, then a draw) for many rows at once, so that only the chosen ids and their log
 * probabilities cross to the host instead of n x 128k floats.
 *
 * One block of THREADS threads per row. Nothing is sorted. The host walks the candidates in
 * descending order of logit (ties: lower index first); here that order is a 64-bit rank per token,
 * rank = key << 32 | ~index, where key is the logit's bits made order-preserving as an unsigned
 * integer (NaN below -inf, -0 == +0). Every step of the host's is "the first token, in that
 * order, where a running total reaches a threshold":
 *   top-k   the K-th token by count;
 *   top-p   the first token where the cumulative probability reaches top_p;
 *   draw    the first token where the cumulative probability of the kept tokens exceeds u * mass.
 * Each is a radix select over the key in three levels (digits of 11, 11 and 10 bits): a histogram
 * of the level's digit over the tokens still in play, a suffix scan of it, and the bucket where the
 * threshold falls; a tie on the final key is split by index (the j-th of the tied tokens in index
 * order), as the host's sort orders them. min-p is a filter on each token's probability. The
 * probabilities are the host's floats, p = (float)(expf((l - max) / T) / sum), accumulated as
 * 62-bit fixed-point integers (exact for p >= 2^-38) with integer atomics, and the normalising sum
 * is a 128-bit fixed-point sum rounded once: a row's result does not depend on the order threads
 * run in, and differs from the host's only where expf's last bits (CUDA's expf is within 2 ulp)
 * or the host's double rounding move a running total across a threshold.
 *
 * Passes over the row cost most; a row of 128k logits is 512 KB, read from L2 after the first
 * pass. Once the tokens still in play fit in shared memory (CAP of them: the top-k candidates, a
 * top part of the row under top-p) the next pass copies them there and later passes read that
 * list instead: with top_k = 40 a row usually costs two passes over the row, with top_p alone
 * four, with wide kept sets (flat rows) up to eight. Histogram updates are aggregated per warp
 * (lanes with the same bucket add once), so a run of equal logits (a masked vocabulary) does not
 * serialise on one shared-memory address. 512 threads and ~99 KB of shared memory a block, about
 * 85 registers a thread: one block (one row) per multiprocessor at a time.
 *
 * The log probability is the host's, (x[id] - max) - log(sum exp(x - max)) over the raw row, from
 * the first pass: f32 expf terms summed in double, each thread's running sum rescaled when its
 * running max rises. */
#include <limits.h>
#include <math.h>

#include "kernels/backend.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

enum {
    THREADS = 512,
    WARPS = THREADS / 32,
    UNROLL = 4,                   /* row loads in flight per thread */
    NBINS = 2048,                 /* buckets of an 11-bit digit (levels 0 and 1) */
    LAST_BINS = 1024,             /* buckets of the 10-bit digit (level 2) */
    PER_THREAD = NBINS / THREADS, /* buckets per thread in the scan */
    CAP = 8192,                   /* tokens the shared list holds */
};
static_assert(NBINS % THREADS == 0, "the scan gives each thread whole buckets");

static constexpr unsigned ALL_LANES = 0xffffffffu;
static constexpr double FIX_ONE = 0x1p62; /* probability 1 in the fixed-point weights */

/* Level L's digit is bits [digit_shift(L), digit_shift(L) + digit_bits(L)) of the key. */
static __device__ __forceinline__ int digit_shift(int level)
{
    return level == 0 ? 21 : level == 1 ? 10 : 0;
}

static __device__ __forceinline__ int digit_bits(int level)
{
    return level == 2 ? 10 : 11;
}

/* ~99 KB: under the 99 KB a block may opt into on sm_86/sm_89, which run the sm_80 code. The
 * uniform state of a select (st_*) waits here during the passes instead of in registers. */
struct sample_smem {
    unsigned long long w[NBINS];      /* bucket weights (counts when counting), then suffix sums */
    unsigned c[NBINS];                /* bucket counts, then suffix sums */
    int lo[LAST_BINS], hi[LAST_BINS]; /* level 2: the lowest and highest index in each bucket */
    unsigned long long part_a[WARPS], part_b[WARPS]; /* per-warp partials of block reductions */
    float part_m[WARPS];
    double part_s[WARPS];
    unsigned mask[WARPS];
    unsigned long long best; /* the first pass's largest rank */
    float max;               /* the row's max and sum exp(x - max), for the log probability */
    double sum_exp;
    double u;                             /* the row's draw */
    unsigned long long st_thr, st_base_w; /* a select's threshold and the weight and count of */
    unsigned st_base_n;                   /* the tokens above its current bucket */
    int sel;       /* the bucket where the threshold falls; -1: not reached */
    int n_list;    /* tokens appended to the list (may pass CAP: then the list is not used) */
    float lv[CAP]; /* the list: the logits and indices of the tokens still in play */
    int li[CAP];
};
static_assert(sizeof(struct sample_smem) <= 99 * 1024, "shared memory past sm_86's limit");

/* Where a pass reads: the list in shared memory when `list`, else the row. */
struct row_ctx {
    const float *row; /* device memory, width floats */
    int width;
    int n; /* tokens in the source: the list's count, or width */
    bool list;
    float maxl, temp; /* e = expf((l - maxl) / temp) */
    double inv_sum;   /* p = e / sum, the sum over the top-k candidates */
};

/* The tokens a select considers: rank >= rmin (a prefix of the order) and p >= floor. */
struct sel_args {
    unsigned long long rmin;
    float floor;
};

struct sel_out {
    int idx; /* the token found; -1: the threshold is never reached */
    unsigned long long rank;
    unsigned n; /* tokens considered, up to and including it */
};

/* ---- order and weights ---- */

/* Unsigned keys in the order of the floats: NaN lowest (below -inf), -0 equal to +0. */
static __device__ __forceinline__ uint32_t key_of(float l)
{
    uint32_t b = __float_as_uint(l);
    if (l != l) return 0;
    if (l == 0.0f) b = 0;
    return b & 0x80000000u ? ~b : b | 0x80000000u;
}

/* Descending rank order = the host's order: larger logit first, then the lower index. */
static __device__ __forceinline__ unsigned long long rank_of(uint32_t key, int i)
{
    return (unsigned long long)key << 32 | (uint32_t) ~(uint32_t)i;
}

static __device__ __forceinline__ int index_of(unsigned long long rank)
{
    return (int)~(uint32_t)rank;
}

/* The host's unnormalised weight, in its f32 operations; a NaN weighs nothing. */
static __device__ __forceinline__ float weight_e(float l, const row_ctx &c)
{
    float e = expf(__fdiv_rn(__fsub_rn(l, c.maxl), c.temp));
    return e == e ? e : 0.0f;
}

/* The host's probability, (float)(e / sum) in double. Times the reciprocal instead (a double
 * division is long, and its registers spill): the two differ by at most an ulp of double, which
 * changes the float only about once in 2^29. */
static __device__ __forceinline__ float prob_of(float l, const row_ctx &c)
{
    return (float)((double)weight_e(l, c) * c.inv_sum);
}

/* p * 2^62 rounded: exact for p >= 2^-38; a row's total stays below 2^63. */
static __device__ __forceinline__ unsigned long long fixed_of(float p)
{
    return __double2ull_rn((double)p * FIX_ONE);
}

/* (hi, lo) += e * 2^100 for 0 <= e <= 1 (bits below 2^-100 dropped): 2^27 terms fit. */
static __device__ __forceinline__ void add_fixed128(unsigned long long &lo, unsigned long long &hi,
                                                    float e)
{
    uint32_t b = __float_as_uint(e);
    int ex = (int)(b >> 23);
    unsigned long long m = (b & 0x7fffffu) | (ex ? 0x800000u : 0u);
    int s = (ex ? ex : 1) - 150 + 100; /* e = m * 2^(ex - 150) */
    unsigned long long al, ah;
    if (s < 0) {
        al = s > -64 ? m >> -s : 0;
        ah = 0;
    } else if (s < 64) {
        al = m << s;
        ah = s ? m >> (64 - s) : 0;
    } else {
        al = 0;
        ah = m << (s - 64);
    }
    lo += al;
    hi += ah + (lo < al);
}

/* ---- warp and block helpers ---- */

/* Sum of v over the lanes in `peers` (the lanes holding the same bucket), correct in the lowest
 * of them: a tree over each group in lane order, pointer jumping to the member d places on.
 * log2(largest group) steps; all lanes of the warp call it. */
static __device__ __forceinline__ unsigned long long peer_sum(unsigned peers, unsigned long long v)
{
    int lane = threadIdx.x & 31;
    int pos = __popc(peers & ((1u << lane) - 1u));
    unsigned after = peers & ~((2u << lane) - 1u);
    bool has = after != 0; /* a member d places on exists */
    int nxt = has ? __ffs(after) - 1 : lane;
    for (int d = 1; d < 32; d <<= 1) {
        if (!__any_sync(ALL_LANES, has)) break;
        unsigned long long t = __shfl_sync(ALL_LANES, v, nxt);
        int nn = __shfl_sync(ALL_LANES, nxt, nxt);
        bool nh = __shfl_sync(ALL_LANES, has, nxt);
        if (has && (pos & (2 * d - 1)) == 0) v += t;
        has = has && nh;
        nxt = has ? nn : lane;
    }
    return v;
}

/* Adds weight w and count 1 to bucket d for every lane with `in`, once per bucket per warp.
 * LAST (level 2) also keeps each bucket's lowest and highest index; when `ordered` (the row, whose
 * lanes hold consecutive indices) the group's first and last lanes hold those. All lanes call
 * it. */
template <bool WEIGHTED, bool LAST>
static __device__ __forceinline__ void bucket_add(sample_smem &sm, bool in, unsigned d,
                                                  unsigned long long w, int i, bool ordered)
{
    if (!__any_sync(ALL_LANES, in)) return;
    int lane = threadIdx.x & 31;
    unsigned peers = __match_any_sync(ALL_LANES, in ? d : ~0u);
    if (WEIGHTED) w = peer_sum(peers, in ? w : 0);
    if (!in) return;
    bool first = lane == __ffs(peers) - 1;
    if (first) {
        if (WEIGHTED) atomicAdd(&sm.w[d], w);
        atomicAdd(&sm.c[d], (unsigned)__popc(peers));
    }
    if (LAST) {
        if (!ordered || first) atomicMin(&sm.lo[d], i);
        if (!ordered || lane == 31 - __clz(peers)) atomicMax(&sm.hi[d], i);
    }
}

/* Appends (l, i) to the list for every lane with `take`; one atomic per warp. Past CAP the
 * entries are dropped and n_list says so. All lanes call it. */
static __device__ __forceinline__ void list_append(sample_smem &sm, bool take, float l, int i)
{
    unsigned m = __ballot_sync(ALL_LANES, take);
    if (!m) return;
    int lane = threadIdx.x & 31, leader = __ffs(m) - 1, base = 0;
    if (lane == leader) base = atomicAdd(&sm.n_list, __popc(m));
    base = __shfl_sync(ALL_LANES, base, leader);
    int pos = base + __popc(m & ((1u << lane) - 1u));
    if (take && pos < CAP) {
        sm.lv[pos] = l;
        sm.li[pos] = i;
    }
}

/* Calls f(l, i, ok) for every token of the source; every thread makes the same number of calls
 * (ok false past the end), so f may use warp collectives. */
template <class F>
static __device__ __forceinline__ void for_each(const sample_smem &sm, const row_ctx &c, F f)
{
    if (c.list) {
        for (int j0 = 0; j0 < c.n; j0 += THREADS) {
            int j = j0 + (int)threadIdx.x;
            bool ok = j < c.n;
            f(ok ? sm.lv[j] : 0.0f, ok ? sm.li[j] : 0, ok);
        }
        return;
    }
    for (int j0 = 0; j0 < c.n; j0 += THREADS * UNROLL) {
        float v[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            int j = j0 + u * THREADS + (int)threadIdx.x;
            v[u] = j < c.n ? __ldg(c.row + j) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            int j = j0 + u * THREADS + (int)threadIdx.x;
            f(v[u], j, j < c.n);
        }
    }
}

/* (m, s) <- the pair whose s * exp(-m) is the sum of both; an empty side (s == 0) adds nothing. */
static __device__ __forceinline__ void lse_merge(float &m, double &s, float m2, double s2)
{
    if (s2 == 0) return;
    if (s == 0) {
        m = m2;
        s = s2;
        return;
    }
    float mx = fmaxf(m, m2);
    s = (m == mx ? s : s * exp((double)m - mx)) + (m2 == mx ? s2 : s2 * exp((double)m2 - mx));
    m = mx;
}

static __device__ void hist_clear(sample_smem &sm, bool last, bool compact)
{
    for (int b = threadIdx.x; b < NBINS; b += THREADS) {
        sm.w[b] = 0;
        sm.c[b] = 0;
    }
    if (last)
        for (int b = threadIdx.x; b < LAST_BINS; b += THREADS) {
            sm.lo[b] = INT_MAX;
            sm.hi[b] = -1;
        }
    if (threadIdx.x == 0) {
        sm.sel = -1;
        if (compact) sm.n_list = 0;
    }
}

/* w[b], c[b] <- the sums over buckets >= b (the tokens at or before bucket b in the order).
 * counts: the weights are the counts. Thread t holds PER_THREAD buckets from the top down. The
 * caller synchronises before reading. */
static __device__ void suffix_scan(sample_smem &sm, bool counts)
{
    int t = threadIdx.x, lane = t & 31, warp = t >> 5, top = NBINS - 1 - PER_THREAD * t;
    unsigned long long w = 0;
    unsigned c = 0;
#pragma unroll
    for (int q = 0; q < PER_THREAD; q++) {
        unsigned cq = sm.c[top - q];
        w += counts ? cq : sm.w[top - q];
        c += cq;
    }
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        unsigned long long wo = __shfl_up_sync(ALL_LANES, w, o);
        unsigned co = __shfl_up_sync(ALL_LANES, c, o);
        if (lane >= o) {
            w += wo;
            c += co;
        }
    }
    if (lane == 31) {
        sm.part_a[warp] = w;
        sm.mask[warp] = c;
    }
    __syncthreads(); /* also: every thread has read its buckets */
    for (int i = 0; i < warp; i++) {
        w += sm.part_a[i];
        c += sm.mask[i];
    }
    /* w, c: the sums through this thread's lowest bucket; walk back up */
#pragma unroll
    for (int q = PER_THREAD - 1; q >= 0; q--) {
        unsigned cq = sm.c[top - q];
        unsigned long long wq = counts ? cq : sm.w[top - q];
        sm.w[top - q] = w;
        sm.c[top - q] = c;
        w -= wq;
        c -= cq;
    }
}

/* sel <- the bucket b where base + (the sum over buckets >= b) first reaches thr (base < thr). */
static __device__ __forceinline__ void find_bucket(sample_smem &sm, unsigned long long base,
                                                   unsigned long long thr)
{
#pragma unroll
    for (int q = 0; q < PER_THREAD; q++) {
        int b = NBINS - 1 - PER_THREAD * (int)threadIdx.x - q;
        unsigned long long above = b + 1 < NBINS ? sm.w[b + 1] : 0;
        if (base + sm.w[b] >= thr && base + above < thr) sm.sel = b;
    }
}

/* The draw's threshold: the first token whose cumulative weight exceeds u * mass, i.e. reaches
 * floor(u * mass) + 1 (<= mass for u < 1), with u taken to 53 bits as the host draws it. */
static __device__ __forceinline__ unsigned long long draw_threshold(unsigned long long mass,
                                                                    double u)
{
    if (!mass) return 0;
    unsigned long long u53 =
        u > 0 ? (u < 1 ? (unsigned long long)(u * 0x1p53) : (1ull << 53) - 1) : 0;
    unsigned long long hi = __umul64hi(u53, mass), lo = u53 * mass;
    return (hi << 11 | lo >> 53) + 1;
}

/* The index of the j-th (from 1) token of the row in index order with this key and rank >= rmin:
 * a tie on a boundary key split as the host's sort splits it. One ordered pass over the row; only
 * when the boundary falls inside a run of equal logits. */
static __device__ int nth_index(sample_smem &sm, const row_ctx &c, uint32_t key,
                                unsigned long long rmin, unsigned j)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    unsigned seen = 0;
    for (int t0 = 0; t0 < c.width; t0 += THREADS) {
        int i = t0 + (int)threadIdx.x;
        bool hit = false;
        if (i < c.width) {
            uint32_t k = key_of(__ldg(c.row + i));
            hit = k == key && rank_of(k, i) >= rmin;
        }
        unsigned m = __ballot_sync(ALL_LANES, hit);
        if (lane == 0) sm.mask[warp] = m;
        __syncthreads();
        int found = -1;
        for (int w = 0; w < WARPS && found < 0; w++) {
            unsigned mw = sm.mask[w], cnt = __popc(mw);
            if (seen + cnt < j) {
                seen += cnt;
                continue;
            }
            for (unsigned r = j - seen; r > 1; r--) mw &= mw - 1;
            found = t0 + 32 * w + __ffs(mw) - 1;
        }
        __syncthreads();
        if (found >= 0) return found;
    }
    return -1;
}

/* ---- passes ---- */

/* The level's histogram over the tokens considered whose key bits above the level's digit equal
 * prefix (LAST: level 2, with each bucket's lowest and highest index). compact (levels 0 and 1):
 * the source is the row, and every token considered with key >= kbound is also appended to the
 * list. Two instances, so that each carries only what its levels need. */
template <bool WEIGHTED, bool LAST>
static __device__ void hist_pass(sample_smem &sm, const row_ctx &c, const sel_args &a, int level,
                                 uint32_t prefix, bool compact, uint32_t kbound)
{
    int shift = digit_shift(level), above = level ? digit_shift(level - 1) : 0;
    unsigned dmask = (1u << digit_bits(level)) - 1u;
    bool ordered = !c.list;
    compact = compact && !LAST;
    for_each(sm, c, [&](float l, int i, bool ok) {
        uint32_t k = key_of(l);
        bool act = ok && rank_of(k, i) >= a.rmin;
        bool in = act && (level == 0 || k >> above == prefix);
        bool take = compact && act && k >= kbound;
        unsigned long long w = 1;
        if (WEIGHTED && (in || take)) {
            float p = prob_of(l, c);
            if (p < a.floor) in = take = false;
            w = fixed_of(p);
        }
        bucket_add<WEIGHTED, LAST>(sm, in, k >> shift & dmask, w, i, ordered);
        if (compact) list_append(sm, take, l, i);
    });
}

/* The first token in the order, among those `a` admits, at which the running weight (count when
 * !WEIGHTED) reaches thr; for the draw, thr comes from sm.u and the total weight. level0_done:
 * the level-0 histogram is already in place. bound: at most this many tokens are admitted (when
 * it fits, the first pass over the row copies them to the list). The source may become the list. */
template <bool WEIGHTED>
static __device__ sel_out select_first(sample_smem &sm, row_ctx &c, const sel_args &a,
                                       unsigned long long thr, bool draw, bool level0_done,
                                       unsigned bound)
{
    sel_out out = {-1, 0, 0};
    uint32_t prefix = 0, kbound = 0;
    bool compact = !c.list && bound <= CAP;
    if (threadIdx.x == 0) {
        sm.st_thr = thr;
        sm.st_base_w = 0;
        sm.st_base_n = 0;
    }
    for (int level = 0; level < 3; level++) {
        if (level > 0 || !level0_done) {
            bool comp = compact && !c.list && level < 2;
            hist_clear(sm, level == 2, comp);
            __syncthreads();
            if (level == 2)
                hist_pass<WEIGHTED, true>(sm, c, a, level, prefix, false, kbound);
            else
                hist_pass<WEIGHTED, false>(sm, c, a, level, prefix, comp, kbound);
            __syncthreads();
            if (comp && sm.n_list <= CAP) {
                c.list = true;
                c.n = sm.n_list;
            }
        }
        suffix_scan(sm, !WEIGHTED);
        __syncthreads();
        unsigned long long t = draw && level == 0 ? draw_threshold(sm.w[0], sm.u) : sm.st_thr;
        unsigned long long base_w = sm.st_base_w; /* weight of the tokens above the bucket */
        unsigned base_n = sm.st_base_n;
        find_bucket(sm, base_w, t);
        __syncthreads();
        int b = sm.sel;
        if (b < 0) { /* only at level 0: a bucket found holds the rest */
            __syncthreads();
            return out;
        }
        unsigned long long above_w = b + 1 < NBINS ? sm.w[b + 1] : 0;
        unsigned above_n = b + 1 < NBINS ? sm.c[b + 1] : 0;
        unsigned long long tie_w = sm.w[b] - above_w;
        unsigned tie_n = sm.c[b] - above_n;
        int lo = level == 2 ? sm.lo[b] : 0, hi = level == 2 ? sm.hi[b] : 0;
        __syncthreads(); /* all have read: the next level clears */
        base_w += above_w;
        base_n += above_n;
        prefix = prefix << digit_bits(level) | (uint32_t)b;
        if (level < 2) {
            if (threadIdx.x == 0) {
                sm.st_thr = t;
                sm.st_base_w = base_w;
                sm.st_base_n = base_n;
            }
            /* The tokens from this bucket up: copy them to the list on level 1's pass if they
             * fit (level 2 reads only the bucket's own tokens; the next select copies what it
             * needs on its first pass). */
            if (level == 0 && !c.list && base_n + tie_n <= CAP) {
                compact = true;
                kbound = prefix << digit_shift(level);
            }
            continue;
        }
        /* prefix is the boundary key; its tokens weigh the same, so take the j-th in index order.
         */
        unsigned long long each = WEIGHTED ? tie_w / tie_n : 1;
        unsigned j = (unsigned)((t - base_w + each - 1) / each);
        int idx = j == 1 ? lo : j == tie_n ? hi : nth_index(sm, c, prefix, a.rmin, j);
        out.idx = idx;
        out.rank = rank_of(prefix, idx);
        out.n = base_n + j;
    }
    return out;
}

/* The first pass over the row: returns the argmax (the lowest index on ties); with lse, leaves the
 * row's max and sum exp(x - max) in sm.max and sm.sum_exp; with hist, the top-k's level-0
 * histogram; with compact, copies the whole row to the list. */
static __device__ int first_pass(sample_smem &sm, row_ctx &c, bool lse, bool hist, bool compact)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (hist || compact) {
        hist_clear(sm, false, compact);
        __syncthreads();
    }
    unsigned long long best = 0;
    float m = -INFINITY;
    double s = 0;
    for_each(sm, c, [&](float l, int i, bool ok) {
        uint32_t k = key_of(l);
        unsigned long long r = rank_of(k, i);
        if (ok && r > best) best = r;
        if (lse && ok) {
            if (l > m) {
                s = s * (double)expf(m - l) + 1.0;
                m = l;
            } else if (l > -INFINITY && m < INFINITY) {
                s += expf(l - m);
            }
        }
        if (hist) bucket_add<false, false>(sm, ok, k >> 21, 1, i, true);
        if (compact) list_append(sm, ok, l, i);
    });
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        unsigned long long b2 = __shfl_xor_sync(ALL_LANES, best, o);
        best = b2 > best ? b2 : best;
    }
    if (lse) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float m2 = __shfl_xor_sync(ALL_LANES, m, o);
            double s2 = __shfl_xor_sync(ALL_LANES, s, o);
            lse_merge(m, s, m2, s2);
        }
    }
    if (lane == 0) {
        sm.part_a[warp] = best;
        sm.part_m[warp] = m;
        sm.part_s[warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
        best = lane < WARPS ? sm.part_a[lane] : 0;
        m = lane < WARPS ? sm.part_m[lane] : -INFINITY;
        s = lane < WARPS ? sm.part_s[lane] : 0;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            unsigned long long b2 = __shfl_xor_sync(ALL_LANES, best, o);
            best = b2 > best ? b2 : best;
            if (lse) {
                float m2 = __shfl_xor_sync(ALL_LANES, m, o);
                double s2 = __shfl_xor_sync(ALL_LANES, s, o);
                lse_merge(m, s, m2, s2);
            }
        }
        if (lane == 0) {
            sm.best = best;
            sm.max = m;
            sm.sum_exp = s;
        }
    }
    __syncthreads();
    int top = index_of(sm.best), n_list = sm.n_list;
    if (compact && n_list <= CAP) {
        c.list = true;
        c.n = n_list;
    }
    __syncthreads(); /* all have read */
    return top;
}

/* The sum of the weights of the tokens with rank >= rmin, as the host's double sum but exact
 * before one final rounding (so independent of order). compact: also copy those tokens to the
 * list. */
static __device__ double sum_pass(sample_smem &sm, row_ctx &c, unsigned long long rmin,
                                  bool compact)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (compact) {
        if (threadIdx.x == 0) sm.n_list = 0;
        __syncthreads();
    }
    unsigned long long lo = 0, hi = 0;
    for_each(sm, c, [&](float l, int i, bool ok) {
        bool act = ok && rank_of(key_of(l), i) >= rmin;
        if (act) add_fixed128(lo, hi, weight_e(l, c));
        if (compact) list_append(sm, act, l, i);
    });
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        unsigned long long l2 = __shfl_xor_sync(ALL_LANES, lo, o);
        unsigned long long h2 = __shfl_xor_sync(ALL_LANES, hi, o);
        lo += l2;
        hi += h2 + (lo < l2);
    }
    if (lane == 0) {
        sm.part_a[warp] = lo;
        sm.part_b[warp] = hi;
    }
    __syncthreads();
    lo = hi = 0;
    for (int w = 0; w < WARPS; w++) {
        unsigned long long l2 = sm.part_a[w];
        lo += l2;
        hi += sm.part_b[w] + (lo < l2);
    }
    int n_list = sm.n_list;
    __syncthreads(); /* the partials are reused */
    if (compact && n_list <= CAP) {
        c.list = true;
        c.n = n_list;
    }
    return (double)hi * 0x1p-36 + (double)lo * 0x1p-100;
}

/* tsr_sample()'s transforms for a row with temperature > 0 and k > 1 candidates; top is the
 * argmax. */
static __device__ int sample_row(sample_smem &sm, row_ctx &c,
                                 const struct tsr_sample_params *__restrict__ p, int k, int top)
{
    c.maxl = __ldg(c.row + top);
    /* top-k: the k-th token by count (level 0 came with the first pass) */
    unsigned long long rk = 0;
    if (k < c.width) rk = select_first<false>(sm, c, {0, 0.0f}, k, false, true, c.width).rank;
    /* temperature and the softmax over the candidates */
    double sum = sum_pass(sm, c, rk, !c.list && k <= CAP);
    if (!(sum > 0)) return top; /* an infinite max: no finite weights */
    c.inv_sum = 1.0 / sum;
    /* top-p (the smallest prefix whose mass reaches top_p), then min-p and the draw over what is
     * kept: two weighted selects, one loop so that they share one copy of the code */
    unsigned long long rkp = rk;
    unsigned n_kept = (unsigned)k;
    float top_p = p->top_p, min_p = p->min_p;
    float floor = min_p > 0 ? min_p * prob_of(c.maxl, c) : 0.0f;
    for (int draw = top_p < 1 ? 0 : 1; draw < 2; draw++) {
        unsigned long long thr = 0;
        if (!draw) {
            double t = ceil((double)top_p * FIX_ONE);
            thr = t >= 1 ? (unsigned long long)t : 1;
        }
        sel_out s = select_first<true>(sm, c, {rkp, draw ? floor : 0.0f}, thr, draw, false, n_kept);
        if (draw) return s.idx >= 0 ? s.idx : top;
        if (s.idx >= 0) {
            rkp = s.rank;
            n_kept = s.n;
        }
        if (n_kept == 1) return top;
    }
    return top;
}

__global__ void __launch_bounds__(THREADS, 1)
    sample_kernel(const float *__restrict__ x, int width, size_t ld,
                  const struct tsr_sample_params *__restrict__ params, int32_t *__restrict__ ids,
                  float *__restrict__ logprobs)
{
    extern __shared__ __align__(16) unsigned char smem_bytes[];
    sample_smem &sm = *reinterpret_cast<sample_smem *>(smem_bytes);
    const struct tsr_sample_params *p = params + blockIdx.x;
    row_ctx c;
    c.row = x + (size_t)blockIdx.x * ld;
    c.width = c.n = width;
    c.list = false;
    c.maxl = 0;
    c.temp = p->temperature;
    c.inv_sum = 0;
    int k = p->top_k > 0 && p->top_k < width ? p->top_k : width;
    bool sampled = c.temp > 0 && k > 1; /* else greedy: temperature 0, or top_k 1 */
    if (threadIdx.x == 0) sm.u = p->u;  /* read after the first pass's barriers */
    int pick = first_pass(sm, c, logprobs != NULL, sampled && k < width, sampled && width <= CAP);
    if (sampled) pick = sample_row(sm, c, p, k, pick);
    if (threadIdx.x == 0) {
        ids[blockIdx.x] = pick;
        if (logprobs)
            logprobs[blockIdx.x] = (float)(((double)c.row[pick] - sm.max) - log(sm.sum_exp));
    }
}

extern "C" size_t tsr_cuda_sample_scratch(int n, int width)
{
    (void)n;
    (void)width;
    return 0; /* the per-row state lives in shared memory */
}

extern "C" cudaError_t tsr_cuda_sample(cudaStream_t s, const float *x, int n, int width, size_t ld,
                                       const struct tsr_sample_params *params, int32_t *ids,
                                       float *logprobs, void *scratch)
{
    (void)scratch;
    if (n <= 0 || width <= 0) return cudaGetLastError();
    cudaError_t e = cudaFuncSetAttribute(sample_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)sizeof(struct sample_smem));
    if (e != cudaSuccess) return e;
    sample_kernel<<<n, THREADS, sizeof(struct sample_smem), s>>>(x, width, ld, params, ids,
                                                                 logprobs);
    return cudaGetLastError();
}
