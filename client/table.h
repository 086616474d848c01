/*
 * table.h - the index lookup, inline: it is the whole cost of a read, and
 * the fewer instructions a lookup takes, the more lookups the CPU keeps in
 * flight at once while their cache misses are outstanding (see table.c).
 */
#ifndef SHMKV_TABLE_H
#define SHMKV_TABLE_H

#include <string.h>

#include "hash.h"
#include "internal.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* The tag stored in a slot: the hash's high 32 bits, never 0, so that an
 * empty slot (all zero) never matches. */
static inline uint32_t hash_tag(uint64_t hash)
{
    return (uint32_t)(hash >> 32) | 1u;
}

/* The version cell of a key: by a hash with the store's nonce, which no
 * resize changes (the index's seed is the generation's). 1-based, as the
 * intent records it (0: none). */
static inline uint64_t version_cell(const struct shmkv *kv, const void *key,
                                    size_t klen)
{
    return (key_hash(key, klen, kv->store_nonce) & kv->version_mask) + 1;
}

static inline uint64_t version_load(const struct shmkv *kv, uint64_t cell)
{
    return atomic_load_explicit(&kv->versions[cell - 1], memory_order_acquire);
}

/* Under the write lock: one writer at a time, so no atomic add. */
static inline void version_bump(const struct shmkv *kv, uint64_t cell)
{
    _Atomic uint64_t *v = &kv->versions[cell - 1];
    atomic_store_explicit(v, atomic_load_explicit(v, memory_order_relaxed) + 1,
                          memory_order_release);
}

static inline uint64_t table_home(uint64_t nbuckets, uint64_t hash)
{
    return ((hash & 0xffffffffull) * nbuckets) >> 32;
}

/* The distance between a key's successive buckets: 1 to nbuckets - 1. */
static inline uint64_t probe_step(uint64_t nbuckets, uint64_t hash)
{
    return 1 + (hash >> 32) % (nbuckets - 1);
}

static inline uint64_t next_bucket(uint64_t b, uint64_t step, uint64_t nbuckets)
{
    b += step;
    return b >= nbuckets ? b - nbuckets : b;
}

/* Bit i set if slot i's tag is tag. Branch-free: one branch per slot
 * would mispredict on where the key is. The acquire loads pair with the
 * writer's release store: an entry's bytes are visible once its slot is. */
static inline unsigned bucket_match(const struct bucket *bk, uint32_t tag)
{
#if defined(__SSE2__)
    /* The line as 32-bit lanes: a slot's tag is the high lane of its
     * qword. Gather the odd lanes (overflow, slot 0..6) and compare. */
    atomic_thread_fence(memory_order_acquire);
    const __m128i *p = (const __m128i *)(const void *)bk;
    __m128i t = _mm_set1_epi32((int)tag);
    __m128 c0 = _mm_castsi128_ps(_mm_cmpeq_epi32(_mm_load_si128(p), t));
    __m128 c1 = _mm_castsi128_ps(_mm_cmpeq_epi32(_mm_load_si128(p + 1), t));
    __m128 c2 = _mm_castsi128_ps(_mm_cmpeq_epi32(_mm_load_si128(p + 2), t));
    __m128 c3 = _mm_castsi128_ps(_mm_cmpeq_epi32(_mm_load_si128(p + 3), t));
    unsigned lo = (unsigned)_mm_movemask_ps(
        _mm_shuffle_ps(c0, c1, _MM_SHUFFLE(3, 1, 3, 1)));
    unsigned hi = (unsigned)_mm_movemask_ps(
        _mm_shuffle_ps(c2, c3, _MM_SHUFFLE(3, 1, 3, 1)));
    return ((lo >> 1) | (hi << 3)) & ((1u << BUCKET_SLOTS) - 1);
#else
    unsigned match = 0;
    for (unsigned i = 0; i < BUCKET_SLOTS; i++) {
        uint64_t s = atomic_load_explicit(&bk->slot[i], memory_order_acquire);
        match |= (unsigned)(SLOT_TAG(s) == tag) << i;
    }
    return match;
#endif
}

/* True if the slot's offset (reloaded after its tag matched: a writer may
 * have emptied or changed it meanwhile) names a block in the arena. The
 * data segment extends max_key_bytes past the arena's end, so that a key
 * compared there stays inside it. */
static inline bool slot_in_arena(const struct shmkv *kv, uint64_t s)
{
    return SLOT_OFF(s) - kv->arena_first < kv->arena_units;
}

/* Keys of other sizes, compared out of line (table.c): a call in the
 * lookup would make the compiler keep its state on the stack around it. */
bool key_equal_slow(const char *a, const char *b, size_t n);

/* Key equality, with keys of 8 to 16 bytes compared in a few loads. */
static inline bool key_equal(const char *a, const char *b, size_t n)
{
    uint64_t x, y, x2, y2;
    if (__builtin_expect(n >= 8 && n <= 16, 1)) {
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        memcpy(&x2, a + n - 8, 8);
        memcpy(&y2, b + n - 8, 8);
        return ((x ^ y) | (x2 ^ y2)) == 0;
    }
    return key_equal_slow(a, b, n);
}

/* Finds key (hash given) in the index; pos->off is 0 if absent. */
static inline __attribute__((always_inline)) void
table_find(const struct shmkv *kv, uint64_t hash, const void *key, size_t klen,
           struct table_pos *pos)
{
    const struct data_header *d = kv->data;
    uint32_t tag = hash_tag(hash);
    uint64_t b = table_home(kv->nbuckets, hash);
    uint64_t step = 0;
    for (uint64_t probes = 0; probes < kv->nbuckets; probes++) {
        const struct bucket *bk = &kv->buckets[b];
        unsigned match = bucket_match(bk, tag);
        while (match != 0) {
            unsigned i = (unsigned)__builtin_ctz(match);
            match &= match - 1;
            uint64_t s =
                atomic_load_explicit(&bk->slot[i], memory_order_relaxed);
            if (!slot_in_arena(kv, s))
                continue;
            const struct block *e = block_at(d, SLOT_OFF(s));
            if (e->klen == klen && key_equal(entry_key(e), key, klen)) {
                pos->bucket = b;
                pos->slot = i;
                pos->off = SLOT_OFF(s);
                pos->probes = (unsigned)probes + 1;
                return;
            }
        }
        if (atomic_load_explicit(&bk->overflow, memory_order_relaxed) == 0)
            break;
        if (step == 0)
            step = probe_step(kv->nbuckets, hash);
        b = next_bucket(b, step, kv->nbuckets);
    }
    pos->off = 0;
    pos->probes = 0;
}

/* The rest of a lookup whose key was not in its home bucket (table.c). */
const struct block *table_lookup_beyond_home(const struct shmkv *kv,
                                             uint64_t hash, const void *key,
                                             size_t klen);

/* The entry of key (hash given), or NULL: what a read needs of
 * table_find. The home bucket, where 93% of keys are at the load the
 * index is sized for, is looked at inline and in few instructions; the
 * rest of the probe sequence out of line. */
static inline __attribute__((always_inline)) const struct block *
table_lookup(const struct shmkv *kv, uint64_t hash, const void *key,
             size_t klen)
{
    const struct bucket *bk = &kv->buckets[table_home(kv->nbuckets, hash)];
    unsigned match = bucket_match(bk, hash_tag(hash));
    while (match != 0) {
        unsigned i = (unsigned)__builtin_ctz(match);
        match &= match - 1;
        uint64_t s = atomic_load_explicit(&bk->slot[i], memory_order_relaxed);
        if (!slot_in_arena(kv, s))
            continue;
        const struct block *e = block_at(kv->data, SLOT_OFF(s));
        if (e->klen == klen && key_equal(entry_key(e), key, klen))
            return e;
    }
    if (__builtin_expect(
            atomic_load_explicit(&bk->overflow, memory_order_relaxed) == 0, 1))
        return NULL;
    return table_lookup_beyond_home(kv, hash, key, klen);
}

#endif
