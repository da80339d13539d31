/* Hashes: the one that keys a block of token ids by its tokens and every token before it (prefix
 * caching finds KV blocks by it, worker/kv_pool.h, and the coordinator's cache-aware routing keeps
 * an index of what it sent each group with it, coordinator/router.h), and splitmix64's mixer,
 * which the counter-based generators build on (synthetic weights, the sampler's draws). */
#ifndef TSR_COMMON_HASH_H
#define TSR_COMMON_HASH_H

#include <stdint.h>

/* Positions per KV block: the unit of the paged cache, of prefix sharing, and of the router's
 * index. */
enum { TSR_KV_BLOCK = 16 };

/* splitmix64's finaliser: a bijection of 64 bits, every output bit depending on every input
 * bit. Element i of splitmix64's stream from state s is tsr_mix64(s + (i + 1) * TSR_GOLDEN64). */
#define TSR_GOLDEN64 0x9e3779b97f4a7c15ull
static inline uint64_t tsr_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* FNV-1a over the parent's hash (0 for a sequence's first block) and the tokens' bytes, then
 * splitmix64's finaliser. */
static inline uint64_t tsr_chain_hash(uint64_t parent_hash, const int32_t *tokens, int n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < 8; i++) h = (h ^ ((parent_hash >> (8 * i)) & 0xff)) * 0x100000001b3ull;
    for (int t = 0; t < n; t++)
        for (int i = 0; i < 4; i++)
            h = (h ^ (((uint32_t)tokens[t] >> (8 * i)) & 0xff)) * 0x100000001b3ull;
    return tsr_mix64(h);
}

#endif
