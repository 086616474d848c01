/*
 * table.c - the hash index: open addressing over cache-line buckets.
 *
 * A key's 64-bit XXH3 hash (seeded per store) picks its home bucket from
 * the low 32 bits (multiply-shift, so the bucket count need not be a power
 * of two) and gives a 32-bit tag from the high bits. The lookup itself is
 * inline, in table.h. A bucket is one
 * cache line: an overflow count and 7 slots of (tag, entry offset). A
 * lookup scans the home bucket's slots, comparing tags and then the key in
 * the arena; only if the bucket's overflow count is nonzero does it go on
 * to the next bucket. At the 75% load the index is sized for, 93% of
 * lookups touch one index line and one entry.
 *
 * The probe sequence is double hashing: bucket i of a key's sequence is
 * home + i * step (mod nbuckets), with a step from the tag. The bucket count
 * is prime, so every step reaches every bucket, and keys from neighbouring
 * homes do not pile into one cluster as they do under linear probing.
 *
 * Insert places the entry in the first bucket along the probe sequence
 * with a free slot, first raising the overflow count of every full bucket
 * it passed. Remove clears the slot, then lowers those counts. There are no
 * tombstones: a freed slot is empty at once.
 *
 * Readers walk the index while a writer changes it (they take no lock), so
 * every state between two stores must be one a lookup walks correctly. A
 * slot becomes visible or invisible by one aligned 64-bit store, with
 * release ordering so that the entry's bytes are written before the slot
 * that points at them. Overflow counts are raised before and lowered after
 * that store, so a lookup meanwhile at worst looks one bucket further. A
 * reader may load a slot's tag and then its offset from a newer word; it
 * compares the key in the entry it finds, so it returns the right entry
 * or none. Counts and the stores of the writer's own operation go through
 * its undo log (intent.c).
 */
#include <stdlib.h>
#include <string.h>
#include "hash.h"
#include "table.h"

/* Out of line on purpose: see hash.h and table.h. */
__attribute__((noinline)) uint64_t key_hash_long(const void *key, size_t klen,
                                                 uint64_t seed)
{
    return XXH3_64bits_withSeed(key, klen, seed);
}

/* Out of line on purpose: see table.h. */
__attribute__((noinline)) bool key_equal_slow(const char *a, const char *b,
                                              size_t n)
{
    return memcmp(a, b, n) == 0;
}

const struct block *table_lookup_beyond_home(const struct shmkv *kv,
                                             uint64_t hash, const void *key,
                                             size_t klen)
{
    struct table_pos pos;
    table_find(kv, hash, key, klen, &pos);
    return pos.off == 0 ? NULL : block_at(kv->data, pos.off);
}

uint64_t index_bytes_for(uint64_t nbuckets)
{
    return nbuckets * sizeof(struct bucket);
}

/* The longest probe path an insert takes: each bucket passed costs an
 * undo record, and an operation must fit the log. At the index's highest
 * load a path this long is not met in practice. */
#define INSERT_MAX_PATH 1024u

int table_insert_prepare(struct shmkv *kv, uint64_t hash, uint64_t *bucket,
                         unsigned *slot)
{
    uint64_t home = table_home(kv->nbuckets, hash);
    uint64_t step = probe_step(kv->nbuckets, hash);
    uint64_t b = home;
    uint64_t limit =
        kv->nbuckets < INSERT_MAX_PATH ? kv->nbuckets : INSERT_MAX_PATH;
    for (uint64_t probes = 0; probes < limit; probes++) {
        struct bucket *bk = &kv->buckets[b];
        for (unsigned i = 0; i < BUCKET_SLOTS; i++) {
            if (atomic_load_explicit(&bk->slot[i], memory_order_relaxed) != 0)
                continue;
            /* The counts on the way are raised before the caller's one
             * release store publishes the entry. */
            for (uint64_t p = home; p != b;
                 p = next_bucket(p, step, kv->nbuckets)) {
                _Atomic uint64_t *o = &kv->buckets[p].overflow;
                ulog_save(kv->data, o);
                atomic_store_explicit(
                    o, atomic_load_explicit(o, memory_order_relaxed) + 1,
                    memory_order_relaxed);
            }
            *bucket = b;
            *slot = i;
            return 0;
        }
        b = next_bucket(b, step, kv->nbuckets);
    }
    return SHMKV_ENOSPC;
}

void table_remove_counts(struct shmkv *kv, uint64_t hash, uint64_t bucket)
{
    uint64_t step = probe_step(kv->nbuckets, hash);
    /* At most one pass over the index: a bucket off the key's probe
     * sequence (a damaged intent) stops it there. */
    uint64_t p = table_home(kv->nbuckets, hash);
    for (uint64_t n = 0; p != bucket && n < kv->nbuckets;
         n++, p = next_bucket(p, step, kv->nbuckets)) {
        _Atomic uint64_t *o = &kv->buckets[p].overflow;
        ulog_save(kv->data, o);
        atomic_store_explicit(o,
                              atomic_load_explicit(o, memory_order_relaxed) - 1,
                              memory_order_relaxed);
    }
}

/* Checks that every slot points at the start of a used arena block holding
 * a sane entry that a lookup would find at that very slot, that overflow
 * counts cover every displaced entry, and that the entry count is right. */
int table_check(const struct shmkv *kv, uint8_t *used_map,
                struct shmkv_check_report *r)
{
    const struct data_header *d = kv->data;
    uint32_t first = (uint32_t)(d->arena_off / UNIT_BYTES);
    uint32_t end = first + (uint32_t)d->arena_units;
    uint64_t *need = calloc(kv->nbuckets, sizeof *need);
    if (need == NULL)
        return SHMKV_ENOMEM;
    uint64_t seen = 0, with_ttl = 0;
    for (uint64_t b = 0; b < kv->nbuckets; b++) {
        for (unsigned i = 0; i < BUCKET_SLOTS; i++) {
            uint64_t s = atomic_load_explicit(&kv->buckets[b].slot[i],
                                              memory_order_acquire);
            uint32_t off = SLOT_OFF(s);
            if (off == 0)
                continue;
            seen++;
            if (off < first || off >= end) {
                check_problem(r, "index %llu/%u: offset %u outside arena",
                              (unsigned long long)b, i, off);
                continue;
            }
            uint64_t bit = off - first;
            if (!(used_map[bit / 8] & (1u << (bit % 8)))) {
                check_problem(r,
                              "index %llu/%u: offset %u is not a used "
                              "block",
                              (unsigned long long)b, i, off);
                continue;
            }
            /* Each block may be referenced once: clear its bit. */
            used_map[bit / 8] &= (uint8_t) ~(1u << (bit % 8));
            const struct block *e = block_at(d, off);
            int64_t vlen = entry_vlen(e);
            if (e->klen == 0 || e->klen > kv->max_key_bytes || vlen < 0 ||
                vlen > kv->max_value_bytes || e->pad > ENTRY_PAD_MAX) {
                check_problem(r, "entry at unit %u: bad lengths %u/%lld/%u",
                              off, e->klen, (long long)vlen, e->pad);
                continue;
            }
            if (e->u.entry.expire_ms != 0)
                with_ttl++;
            uint64_t hash = key_hash(entry_key(e), e->klen, kv->seed);
            if (SLOT_TAG(s) != hash_tag(hash)) {
                check_problem(r, "index %llu/%u: tag does not match key",
                              (unsigned long long)b, i);
                continue;
            }
            struct table_pos pos;
            table_find(kv, hash, entry_key(e), e->klen, &pos);
            if (pos.off != off) {
                check_problem(r,
                              "index %llu/%u: key not found by lookup "
                              "(or duplicated)",
                              (unsigned long long)b, i);
                continue;
            }
            uint64_t step = probe_step(kv->nbuckets, hash);
            for (uint64_t p = table_home(kv->nbuckets, hash); p != b;
                 p = next_bucket(p, step, kv->nbuckets))
                need[p]++;
        }
    }
    for (uint64_t b = 0; b < kv->nbuckets; b++) {
        uint64_t have = atomic_load_explicit(&kv->buckets[b].overflow,
                                             memory_order_relaxed);
        if (have < need[b]) {
            check_problem(r, "bucket %llu: overflow %llu < %llu needed",
                          (unsigned long long)b, (unsigned long long)have,
                          (unsigned long long)need[b]);
            break;
        }
    }
    free(need);
    r->entries_seen = seen;
    if (seen != d->entries)
        check_problem(r, "index holds %llu entries, header says %llu",
                      (unsigned long long)seen, (unsigned long long)d->entries);
    if (with_ttl != d->ttl_entries)
        check_problem(r, "%llu entries with a TTL, header counts %llu",
                      (unsigned long long)with_ttl,
                      (unsigned long long)d->ttl_entries);
    /* Used blocks still marked were reachable from no slot. */
    uint64_t leaked = 0;
    for (uint32_t off = first; off < end;) {
        const struct block *b = block_at(d, off);
        uint64_t bit = off - first;
        if ((b->flags & BLOCK_USED) && (used_map[bit / 8] & (1u << (bit % 8))))
            leaked += (uint64_t)b->size_units * UNIT_BYTES;
        off += b->size_units;
    }
    r->bytes_leaked = leaked;
    return 0;
}
