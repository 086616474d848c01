/*
 * hash.h - the key hash: XXH3-64 with the store's seed, inlined (xxhash's
 * XXH_INLINE_ALL) because for short keys the call overhead would rival the
 * hash itself.
 */
#ifndef SHMKV_HASH_H
#define SHMKV_HASH_H

#define XXH_INLINE_ALL
#include <xxhash.h>

static inline uint64_t key_hash(const void *key, size_t klen, uint64_t seed)
{
    return XXH3_64bits_withSeed(key, klen, seed);
}

#endif
