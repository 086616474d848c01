/*
 * hash.h - the key hash: XXH3-64 with the store's seed, inlined for short
 * keys (xxhash's XXH_INLINE_ALL) because for them the call overhead would
 * rival the hash itself.
 */
#ifndef SHMKV_HASH_H
#define SHMKV_HASH_H

#define XXH_INLINE_ALL
#include <xxhash.h>

/* Keys over 16 bytes, hashed out of line (table.c). */
uint64_t key_hash_long(const void *key, size_t klen, uint64_t seed);

/* Keys of up to 16 bytes are hashed inline: within that branch the
 * compiler drops XXH3's paths for longer input, and the lookup it sits in
 * stays small (see table.h). */
static inline uint64_t key_hash(const void *key, size_t klen, uint64_t seed)
{
    if (__builtin_expect(klen <= 16, 1))
        return XXH3_64bits_withSeed(key, klen, seed);
    return key_hash_long(key, klen, seed);
}

#endif
