/*
 * write.c - writes under the store's write lock: set, delete, incr, expire,
 * flush, and making room (memory readers have let go of first, then
 * expired entries, then LRU eviction).
 *
 * Readers run beside writers, so every write is a sequence of operations
 * (intent.c) that each publish by one aligned store of an index slot: a
 * set builds the new entry in a free block, then stores the slot; a
 * removal stores an empty slot. A block a slot no longer names goes to
 * limbo, not to the free lists, and is freed once no read section that
 * might still see it is open (reclaim.c). A writer killed anywhere leaves
 * an index readers walk safely, and an operation the recoverer finishes or
 * undoes.
 *
 * A flush empties the index at once; the arena is rebuilt by the next
 * write that needs memory, once every section that began before the flush
 * has ended (flush_epoch).
 *
 * Eviction ("lru") is sampled, as in Redis: look at EVICT_SAMPLES occupied
 * slots starting from a random bucket, evict an expired one if any, else the
 * one whose recency stamp is oldest. Stamps live in a table indexed by hash
 * tag (layout.h), so two keys may share a stamp: a cold key that shares a
 * cell with a hot one looks hot. Both effects are measured by the tests.
 */
#include <stdio.h>
#include <string.h>

#include "hash.h"
#include "table.h"

#define EVICT_SAMPLES 16u
#define MAKE_ROOM_ROUNDS 64u
/* Windows packed for one write, each moving entries but not yet making
 * room: a bound on the work of one call. */
#define COMPACT_TRIES 8u
/* Free space, as a share of the arena, below which a write does not
 * compact: a store that is merely full evicts or refuses at once. */
#define COMPACT_FREE_SHARE 64u

/* The data header's words a write steers by, against the geometry the
 * handle validated when it attached (lock_take has checked that the
 * geometry itself is intact): a write on a header that breaks them would
 * loop or reach outside the segment, so it is refused instead. */
static int header_sane(const struct shmkv *kv)
{
    const struct data_header *d = kv->data;
    const char *why = NULL;
    if (d->limbo_tail - d->limbo_head > kv->limbo_slots)
        why = "the limbo ring's positions";
    else if (d->limbo_units > kv->arena_units ||
             d->used_units > kv->arena_units ||
             d->free_units > kv->arena_units - d->used_units)
        why = "the arena's counts";
    else if (d->intent.undo_count > kv->undo_slots)
        why = "the undo log's count";
    else if (d->fl_bitmap >> FL_COUNT)
        why = "the free lists' bitmap";
    else if (d->compact_hi != 0 &&
             (d->compact_lo < kv->arena_first ||
              d->compact_lo >= d->compact_hi ||
              d->compact_hi > kv->arena_first + kv->arena_units))
        why = "the compaction window";
    if (why == NULL)
        return 0;
    return set_error(SHMKV_ECORRUPT,
                     "the store's data header is damaged (%s); writes are "
                     "refused: run shmkv_check, and recreate the store",
                     why);
}

/* Under the write lock: SHMKV_EMIRRORED if key (NULL: any key, for a
 * flush) is one the store mirrors and this handle is not the owner's. */
static int mirror_check(const struct shmkv *kv, const void *key, size_t klen)
{
    const struct ctl_header *c = kv->ctl;
    uint32_t n = atomic_load_explicit(&c->mirror_count, memory_order_relaxed);
    if (__builtin_expect(n == 0, 1) || kv->owner)
        return 0;
    uint32_t bytes = c->mirror_bytes < MIRROR_PREFIX_BYTES
                         ? c->mirror_bytes
                         : MIRROR_PREFIX_BYTES;
    bool hit = key == NULL;
    for (uint32_t at = 0, i = 0; !hit && i < n && at < bytes; i++) {
        size_t len = (unsigned char)c->mirror_prefixes[at];
        if (at + 1 + len > bytes)
            break;
        hit = klen >= len && memcmp(key, c->mirror_prefixes + at + 1, len) == 0;
        at += 1 + (uint32_t)len;
    }
    if (!hit)
        return 0;
    return set_error(SHMKV_EMIRRORED,
                     key == NULL
                         ? "the store mirrors an upstream (shmkvd's "
                           "[upstream]): a flush would empty the mirror"
                         : "the key mirrors an upstream (shmkvd's "
                           "[upstream]), its system of record: write it "
                           "there and the mirror follows");
}

int write_begin(struct shmkv *kv)
{
    if (kv == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle");
    if (kv->forked)
        return refuse_forked(kv);
    if (kv->in_read)
        return set_error(SHMKV_ESTATE, "a write inside a read section");
    if (kv->rdonly)
        return set_error(SHMKV_ERDONLY, "the handle is read-only");
    kv->deadline_ms = kv->wait_ms = 0;
    kv->evicted = 0;
    if (kv->in_write)
        return 0; /* the write section holds the lock */
    int rc = lock_take(kv, true);
    if (rc == 0 && (rc = header_sane(kv)) != 0)
        lock_release(kv);
    if (rc == 0 && __builtin_expect(atomic_load_explicit(
                                        &kv->ctl->resize_state,
                                        memory_order_relaxed) != RESIZE_NONE,
                                    0))
        resize_tend(kv);
    /* The segment a resize filled, once it switched or was given up: let
     * go of it, so that an old generation is not kept by writers. */
    if (rc == 0 && __builtin_expect(kv->rs != NULL, 0) && !resize_copying(kv))
        resize_detach(kv);
    return rc;
}

void write_end(struct shmkv *kv)
{
    if (!kv->in_write)
        lock_release(kv);
}

int shmkv_write_begin(struct shmkv *kv)
{
    if (kv != NULL && kv->in_write)
        return set_error(SHMKV_ESTATE, "a write section is already open");
    int rc = write_begin(kv);
    if (rc == 0)
        kv->in_write = true;
    return rc;
}

int shmkv_write_end(struct shmkv *kv)
{
    if (kv == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle");
    if (!kv->in_write)
        return set_error(SHMKV_ESTATE, "no write section is open");
    kv->in_write = false;
    lock_release(kv);
    return 0;
}

unsigned shmkv_evicted(const struct shmkv *kv)
{
    return kv != NULL ? kv->evicted : 0;
}

static int check_key(const struct shmkv *kv, const void *key, size_t klen)
{
    if (key == NULL || klen == 0)
        return set_error(SHMKV_EINVAL, "empty key");
    if (klen > kv->max_key_bytes)
        return set_error(SHMKV_E2BIG, "key of %zu bytes is over the limit %u",
                         klen, kv->max_key_bytes);
    return 0;
}

/* The expiry time ttl_ms after now_ms (0: none), saturated rather than
 * wrapped into the past. */
static uint64_t expiry_after(uint64_t now_ms, uint64_t ttl_ms)
{
    if (ttl_ms == 0)
        return 0;
    uint64_t at;
    if (__builtin_add_overflow(now_ms, ttl_ms, &at) || at > INT64_MAX)
        at = INT64_MAX;
    return at;
}

static bool expired_at(const struct block *e, uint64_t now_ms)
{
    return e->u.entry.expire_ms != 0 && e->u.entry.expire_ms <= now_ms;
}

/* What every operation does once its slot is published; run again by a
 * recoverer for a writer that died after publishing (intent.c). */
void op_finish(struct shmkv *kv)
{
    struct data_header *d = kv->data;
    const struct write_intent *in = &d->intent;
    if (in->kind == WRITE_OP_REMOVE)
        table_remove_counts(kv, in->hash, in->bucket);
    if (in->old_off != 0)
        limbo_retire(kv, in->old_off);
    if (in->entries_delta != 0)
        LOGGED_SET(d, d->entries,
                   d->entries + (uint64_t)(int64_t)in->entries_delta);
    if (in->ttl_delta != 0)
        LOGGED_SET(d, d->ttl_entries,
                   d->ttl_entries + (uint64_t)(int64_t)in->ttl_delta);
    /* After the publication, so that a reader who sees the new version
     * sees the new entry. Not logged: run twice (a recoverer finishing
     * this operation), it only makes a shmkv_cas fail that need not. */
    if (in->vcell != 0 && in->vcell - 1 <= kv->version_mask)
        version_bump(kv, in->vcell);
}

void entry_publish(struct shmkv *kv, uint64_t hash, uint64_t bucket,
                   unsigned slot, uint32_t old_off, uint64_t word,
                   int entries_delta, int ttl_delta, uint64_t vcell)
{
    op_target(kv, WRITE_OP_SET, hash, bucket, slot, old_off, word,
              entries_delta, ttl_delta, vcell);
    TEST_POINT("set:prepared");
    atomic_store_explicit(&kv->buckets[bucket].slot[slot], word,
                          memory_order_release);
    TEST_POINT("set:stored");
    op_published(kv);
    op_finish(kv);
    TEST_POINT("set:finished");
    op_end(kv);
    resize_mirror(kv, SLOT_OFF(word), false);
}

/* Unpublishes the entry at pos: one operation. */
static int entry_remove(struct shmkv *kv, uint64_t hash,
                        const struct table_pos *pos)
{
    int rc = limbo_reserve(kv);
    if (rc != 0)
        return rc;
    const struct block *e = block_at(kv->data, pos->off);
    int ttl_delta = e->u.entry.expire_ms != 0 ? -1 : 0;
    uint64_t vcell = version_cell(kv, entry_key(e), e->klen);
    op_begin(kv, WRITE_OP_GENERIC);
    op_target(kv, WRITE_OP_REMOVE, hash, pos->bucket, pos->slot, pos->off, 0,
              -1, ttl_delta, vcell);
    atomic_store_explicit(&kv->buckets[pos->bucket].slot[pos->slot], 0,
                          memory_order_release);
    TEST_POINT("remove:stored");
    op_published(kv);
    op_finish(kv);
    TEST_POINT("remove:finished");
    op_end(kv);
    resize_mirror(kv, pos->off, true);
    return 0;
}

/* True if slot word s names a block in the arena holding a key that fits
 * the store's limit: one a sweep may look into. */
static bool slot_sane(const struct shmkv *kv, uint64_t s)
{
    return SLOT_OFF(s) != 0 && slot_in_arena(kv, s) &&
           block_at(kv->data, SLOT_OFF(s))->klen <= kv->max_key_bytes;
}

/* Removes the entry in bucket b, slot i (its hash recomputed). */
static int slot_remove(struct shmkv *kv, uint64_t b, unsigned i)
{
    uint64_t s =
        atomic_load_explicit(&kv->buckets[b].slot[i], memory_order_relaxed);
    if (!slot_sane(kv, s))
        return set_error(SHMKV_ECORRUPT, "index slot %llu.%u is damaged",
                         (unsigned long long)b, i);
    const struct block *e = block_at(kv->data, SLOT_OFF(s));
    uint64_t hash = key_hash(entry_key(e), e->klen, kv->seed);
    struct table_pos pos = {.bucket = b, .slot = i, .off = SLOT_OFF(s)};
    return entry_remove(kv, hash, &pos);
}

/* Removes expired entries from max_slots slots from the scan cursor on
 * (0: all), never the block at keep. Returns how many it removed, or an
 * error. */
static int64_t expire_slots(struct shmkv *kv, uint64_t max_slots, uint32_t keep)
{
    struct data_header *d = kv->data;
    uint64_t total = kv->nbuckets * BUCKET_SLOTS;
    if (max_slots == 0 || max_slots > total)
        max_slots = total;
    uint64_t now = clock_unix_ms();
    int64_t removed = 0;
    uint64_t at = d->expire_cursor % total;
    int rc = 0;
    for (uint64_t n = 0; n < max_slots && d->ttl_entries > 0; n++) {
        uint64_t b = at / BUCKET_SLOTS;
        unsigned i = (unsigned)(at % BUCKET_SLOTS);
        uint64_t s =
            atomic_load_explicit(&kv->buckets[b].slot[i], memory_order_relaxed);
        if (slot_sane(kv, s) && SLOT_OFF(s) != keep &&
            expired_at(block_at(d, SLOT_OFF(s)), now)) {
            rc = slot_remove(kv, b, i);
            if (rc != 0)
                break;
            removed++;
        }
        at = at + 1 == total ? 0 : at + 1;
    }
    /* A cursor is a hint, not state to undo. */
    d->expire_cursor = at;
    atomic_fetch_add_explicit(&kv->ctl->expirations, (uint64_t)removed,
                              memory_order_relaxed);
    return removed > 0 || rc == 0 ? removed : rc;
}

/* Evicts one entry by sampling; never the block at `keep`. Returns 1, 0
 * when there is nothing to evict, or an error. */
static int evict_one(struct shmkv *kv, uint32_t keep)
{
    struct data_header *d = kv->data;
    if (d->entries == 0 || (keep != 0 && d->entries == 1))
        return 0;
    uint64_t now = clock_unix_ms();
    uint32_t clock =
        atomic_load_explicit(&kv->ctl->lru_clock, memory_order_relaxed);
    uint64_t b = handle_random(kv) % kv->nbuckets;
    uint64_t best_b = 0;
    unsigned best_i = 0, seen = 0;
    uint32_t best_age = 0;
    bool found = false;
    for (uint64_t n = 0; n < kv->nbuckets && seen < EVICT_SAMPLES; n++) {
        for (unsigned i = 0; i < BUCKET_SLOTS; i++) {
            uint64_t s = atomic_load_explicit(&kv->buckets[b].slot[i],
                                              memory_order_relaxed);
            if (!slot_sane(kv, s) || SLOT_OFF(s) == keep)
                continue;
            seen++;
            if (expired_at(block_at(d, SLOT_OFF(s)), now)) {
                int rc = slot_remove(kv, b, i);
                if (rc != 0)
                    return rc;
                atomic_fetch_add_explicit(&kv->ctl->expirations, 1,
                                          memory_order_relaxed);
                return 1;
            }
            uint32_t age = clock - kv->recency[SLOT_TAG(s) & kv->recency_mask];
            if (!found || age > best_age) {
                found = true;
                best_age = age;
                best_b = b;
                best_i = i;
            }
        }
        b = b + 1 == kv->nbuckets ? 0 : b + 1;
    }
    if (!found)
        return 0;
    int rc = slot_remove(kv, best_b, best_i);
    if (rc != 0)
        return rc;
    atomic_fetch_add_explicit(&kv->ctl->evictions, 1, memory_order_relaxed);
    kv->evicted++;
    return 1;
}

void flush_index(struct shmkv *kv)
{
    struct data_header *d = kv->data;
    for (uint64_t b = 0; b < kv->nbuckets; b++) {
        for (unsigned i = 0; i < BUCKET_SLOTS; i++)
            atomic_store_explicit(&kv->buckets[b].slot[i], 0,
                                  memory_order_release);
        atomic_store_explicit(&kv->buckets[b].overflow, 0,
                              memory_order_relaxed);
    }
    d->entries = 0;
    d->ttl_entries = 0;
    d->expire_cursor = 0;
    /* Every key changed (redone with the flush by a recoverer: a second
     * bump only fails a shmkv_cas that need not). */
    for (uint64_t c = 1; c <= kv->version_mask + 1; c++)
        version_bump(kv, c);
    /* Sections open now may still read the old entries: the arena is
     * rebuilt once none that began at or before this epoch is left. */
    d->flush_epoch =
        atomic_load_explicit(&kv->ctl->epoch, memory_order_seq_cst);
}

void arena_reset(struct shmkv *kv)
{
    struct data_header *d = kv->data;
    arena_init(d);
    d->limbo_head = 0;
    d->limbo_tail = 0;
    d->limbo_safe = 0;
    d->limbo_scanned = 0;
    d->limbo_units = 0;
    d->expire_cursor = 0;
    d->flush_epoch = 0;
    d->compact_lo = 0;
    d->compact_hi = 0;
}

/* Rebuilds the arena a flush emptied, once no section can see its old
 * entries: waiting for them if wait, else only if none is open. */
static int flush_settle(struct shmkv *kv, bool wait)
{
    struct data_header *d = kv->data;
    if (d->flush_epoch == 0)
        return 0;
    int rc = readers_wait_past(kv, (uint32_t)d->flush_epoch, wait);
    if (rc != 0)
        return rc;
    op_begin(kv, WRITE_OP_ARENA_RESET);
    arena_reset(kv);
    op_end(kv);
    return 0;
}

/* Makes sure a block of `units` can be allocated, an index slot taken if
 * new_key, and a block put in limbo if not (it replaces one), freeing
 * what readers have let go of, reclaiming expired entries and, in an lru
 * store, evicting others; waits for readers as the last resort. Never
 * touches the entry at `keep`. */
static int make_room(struct shmkv *kv, uint32_t units, bool new_key,
                     uint32_t keep)
{
    struct data_header *d = kv->data;
    bool swept = false;
    unsigned compactions = 0;
    /* A window a compaction killed halfway left holds memory. */
    if (d->compact_hi != 0)
        compact_release(kv);
    /* Each round frees, reclaims, expires or evicts something, or waits
     * for readers: a few rounds make room, or say there is none; an LRU
     * store may evict an entry a round, as many as it holds. Rounds past
     * that make no progress: the counts the loop steers by are damaged. */
    uint64_t slots = kv->nbuckets * BUCKET_SLOTS;
    uint64_t most = MAKE_ROOM_ROUNDS +
                    (kv->lru ? (d->entries < slots ? d->entries : slots) : 0);
    for (uint64_t round = 0;; round++) {
        if (round > most)
            return set_error(SHMKV_ECORRUPT,
                             "the arena's and limbo's counts are damaged: "
                             "no room is made for a %u-unit block",
                             units);
        int rc = flush_settle(kv, true);
        if (rc != 0)
            return rc;
        if (!new_key && !limbo_has_room(d)) {
            rc = limbo_reserve(kv);
            if (rc != 0)
                return rc;
            continue;
        }
        bool index_ok = !new_key || d->entries < d->max_load;
        if (index_ok &&
            (limbo_can_take(kv, units) || arena_can_alloc(d, units)))
            return 0;
        bool limbo = d->limbo_head != d->limbo_tail;
        if (index_ok && limbo && limbo_reclaim(kv, true) > 0)
            continue;
        if (!swept && d->ttl_entries > 0) {
            swept = true;
            int64_t n = expire_slots(kv, 0, keep);
            if (n < 0)
                return (int)n;
            if (n > 0)
                continue;
        }
        /* Held by readers, and enough to be worth their few
         * microseconds. */
        if (index_ok && limbo && d->limbo_units >= units) {
            rc = limbo_wait(kv);
            if (rc != 0)
                return rc;
            continue;
        }
        /* Enough is free, but in pieces: move entries together, before
         * evicting any. */
        if (index_ok && compactions < COMPACT_TRIES &&
            d->free_units >= units + units / 8 &&
            d->free_units >= kv->arena_units / COMPACT_FREE_SHARE) {
            compactions++;
            rc = arena_compact(kv, units, keep);
            if (rc == 0 || rc == SHMKV_ERETRY)
                continue;
            if (rc != SHMKV_ENOSPC)
                return rc;
            compactions = COMPACT_TRIES; /* nothing could move */
        }
        if (kv->lru) {
            rc = evict_one(kv, keep);
            if (rc < 0)
                return rc;
            if (rc > 0) {
                limbo_reclaim(kv, true);
                continue;
            }
        }
        if (index_ok && limbo) {
            rc = limbo_wait(kv);
            if (rc != 0)
                return rc;
            continue;
        }
        return SHMKV_ENOSPC;
    }
}

/* The key's hash, computed before the write lock is taken, and its home
 * bucket asked for, so that the bucket's cache miss overlaps taking the
 * lock instead of following it inside: in one process setting, a tenth
 * more sets a second. (Loading the bucket here to prefetch the entries its
 * tag matches stalls before the lock and costs more than it saves.) A
 * prefetch never faults, whatever the mapping. *seed is the seed hashed
 * with, compared under the lock with the locked generation's. */
static uint64_t write_hash(struct shmkv *kv, const void *key, size_t klen,
                           uint64_t *seed)
{
    *seed = kv->seed;
    uint64_t hash = key_hash(key, klen, *seed);
    if (kv->buckets != NULL && !kv->forked)
        __builtin_prefetch(&kv->buckets[table_home(kv->nbuckets, hash)]);
    return hash;
}

/* What set_locked writes besides the value. */
struct set_how {
    uint64_t expire_ms; /* absolute; 0: none */
    uint64_t vcell;     /* the key's version cell (version_cell), 0: find it */
    int flags;          /* SHMKV_NX, SHMKV_XX, SHMKV_KEEPTTL */
    bool cas;           /* only if the key's version is still version */
    uint64_t version;
};

/* The body of shmkv_set, under the write lock; hash is the key's with
 * seed (write_hash). */
static int set_locked(struct shmkv *kv, const void *key, size_t klen,
                      const void *val, size_t vlen, const struct set_how *how,
                      uint64_t hash, uint64_t seed)
{
    struct data_header *d = kv->data;
    if (seed != kv->seed)
        hash = key_hash(key, klen, kv->seed);
    uint64_t vcell = how->vcell != 0 ? how->vcell : version_cell(kv, key, klen);
    if (how->cas && version_load(kv, vcell) != how->version)
        return set_error(SHMKV_ECHANGED, "the key changed since its version "
                                         "was read");
    struct table_pos pos;
    table_find(kv, hash, key, klen, &pos);
    /* The clock only for an entry with an expiry. */
    if (pos.off != 0 && block_at(d, pos.off)->u.entry.expire_ms != 0 &&
        expired_at(block_at(d, pos.off), clock_unix_ms())) {
        int rc = entry_remove(kv, hash, &pos);
        if (rc != 0)
            return rc;
        atomic_fetch_add_explicit(&kv->ctl->expirations, 1,
                                  memory_order_relaxed);
        pos.off = 0;
    }
    int flags = how->flags;
    if ((flags & SHMKV_NX) && pos.off != 0)
        return SHMKV_EEXIST;
    if ((flags & SHMKV_XX) && pos.off == 0)
        return SHMKV_ENOTFOUND;

    uint64_t expire = how->expire_ms;
    if ((flags & SHMKV_KEEPTTL) && pos.off != 0)
        expire = block_at(d, pos.off)->u.entry.expire_ms;

    uint32_t units = entry_units(klen, vlen);
    limbo_refill(kv);
    int rc = make_room(kv, units, pos.off == 0, pos.off);
    if (rc == SHMKV_ENOSPC)
        return set_error(SHMKV_ENOSPC,
                         "no room for a %zu-byte key and %zu-byte value", klen,
                         vlen);
    if (rc != 0)
        return rc;

    op_begin(kv, WRITE_OP_GENERIC);
    /* A block retired long enough ago that no section sees it, of the
     * size wanted, else one from the free lists. */
    uint32_t off = limbo_take(kv, units);
    if (off == 0)
        off = arena_alloc(d, units);
    if (off == 0) {
        /* make_room found room: only damage takes it away. */
        intent_repair(kv);
        return set_error(SHMKV_ECORRUPT,
                         "the arena's free lists are damaged; writes that "
                         "need memory are refused: run shmkv_check");
    }
    struct block *e = block_at(d, off);
    e->klen = (uint16_t)klen;
    entry_set_pad(e, klen, vlen);
    e->u.entry.expire_ms = expire;
    memcpy((char *)(e + 1), key, klen);
    if (vlen > 0)
        memmove((char *)(e + 1) + klen, val, vlen);

    uint64_t bucket = pos.bucket;
    unsigned slot = pos.slot;
    int entries_delta = 0;
    int ttl_delta = expire != 0 ? 1 : 0;
    if (pos.off != 0) {
        if (block_at(d, pos.off)->u.entry.expire_ms != 0)
            ttl_delta--;
    } else {
        rc = table_insert_prepare(kv, hash, &bucket, &slot);
        if (rc != 0) {
            /* Nothing published: undo the allocation. */
            intent_repair(kv);
            return set_error(SHMKV_ENOSPC, "the index has no slot near the "
                                           "key's home bucket");
        }
        entries_delta = 1;
    }
    entry_publish(kv, hash, bucket, slot, pos.off,
                  SLOT_MAKE(hash_tag(hash), off), entries_delta, ttl_delta,
                  vcell);
    if (d->limbo_tail - d->limbo_head >= d->limbo_slots / 2)
        limbo_reclaim(kv, false);

    slot_count(&kv->wslot->sets);
    if (kv->lru) {
        uint32_t clock = atomic_fetch_add_explicit(&kv->ctl->lru_clock, 1,
                                                   memory_order_relaxed) +
                         1;
        atomic_store_explicit(
            (_Atomic uint32_t *)&kv->recency[hash_tag(hash) & kv->recency_mask],
            clock, memory_order_relaxed);
    }
    return 0;
}

static int set_args_check(struct shmkv *kv, const void *key, size_t klen,
                          const void *val, size_t vlen, int flags)
{
    if (kv == NULL || (val == NULL && vlen > 0))
        return set_error(SHMKV_EINVAL, "NULL handle or value");
    int rc = check_key(kv, key, klen);
    if (rc != 0)
        return rc;
    if (vlen > kv->max_value_bytes)
        return set_error(SHMKV_E2BIG, "value of %zu bytes is over the limit %u",
                         vlen, kv->max_value_bytes);
    if ((flags & ~(SHMKV_NX | SHMKV_XX | SHMKV_KEEPTTL)) ||
        ((flags & SHMKV_NX) && (flags & SHMKV_XX)))
        return set_error(SHMKV_EINVAL, "bad set flags 0x%x", (unsigned)flags);
    return 0;
}

static int set_call(struct shmkv *kv, const void *key, size_t klen,
                    const void *val, size_t vlen, uint64_t ttl_ms,
                    struct set_how *how)
{
    int rc = set_args_check(kv, key, klen, val, vlen, how->flags);
    if (rc != 0)
        return rc;
    uint64_t seed;
    uint64_t hash = write_hash(kv, key, klen, &seed);
    /* Before the lock: the version cell's hash does not change with the
     * generation, and the clock is read only for a TTL. */
    how->vcell = version_cell(kv, key, klen);
    rc = write_begin(kv);
    if (rc != 0)
        return rc;
    how->expire_ms = ttl_ms != 0 ? expiry_after(clock_unix_ms(), ttl_ms) : 0;
    rc = mirror_check(kv, key, klen);
    if (rc == 0)
        rc = set_locked(kv, key, klen, val, vlen, how, hash, seed);
    write_end(kv);
    return rc;
}

int shmkv_set(struct shmkv *kv, const void *key, size_t klen, const void *val,
              size_t vlen, uint32_t ttl_s, int flags)
{
    struct set_how how = {.flags = flags};
    return set_call(kv, key, klen, val, vlen, (uint64_t)ttl_s * 1000u, &how);
}

int shmkv_pset(struct shmkv *kv, const void *key, size_t klen, const void *val,
               size_t vlen, uint64_t ttl_ms, int flags)
{
    struct set_how how = {.flags = flags};
    return set_call(kv, key, klen, val, vlen, ttl_ms, &how);
}

int shmkv_cas(struct shmkv *kv, const void *key, size_t klen, const void *val,
              size_t vlen, uint64_t ttl_ms, int flags, uint64_t version)
{
    struct set_how how = {.flags = flags, .cas = true, .version = version};
    return set_call(kv, key, klen, val, vlen, ttl_ms, &how);
}

/* Removes the entry at pos (found for hash), counting it as a delete, or
 * as an expiry if it had expired: SHMKV_ENOTFOUND then. */
static int del_locked(struct shmkv *kv, uint64_t hash,
                      const struct table_pos *pos)
{
    bool expired = expired_at(block_at(kv->data, pos->off), clock_unix_ms());
    int rc = entry_remove(kv, hash, pos);
    if (rc != 0)
        return rc;
    if (expired) {
        atomic_fetch_add_explicit(&kv->ctl->expirations, 1,
                                  memory_order_relaxed);
        return SHMKV_ENOTFOUND;
    }
    slot_count(&kv->wslot->deletes);
    return 0;
}

int shmkv_del(struct shmkv *kv, const void *key, size_t klen)
{
    if (kv == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle");
    int rc = check_key(kv, key, klen);
    if (rc != 0)
        return rc;
    rc = write_begin(kv);
    if (rc != 0)
        return rc;
    rc = mirror_check(kv, key, klen);
    if (rc != 0) {
        write_end(kv);
        return rc;
    }
    uint64_t hash = key_hash(key, klen, kv->seed);
    struct table_pos pos;
    table_find(kv, hash, key, klen, &pos);
    rc = pos.off == 0 ? SHMKV_ENOTFOUND : del_locked(kv, hash, &pos);
    write_end(kv);
    return rc;
}

/* Changes the expiry of the live entry at pos in place: one operation. An
 * expiry not in the future removes it. */
static int expire_locked(struct shmkv *kv, uint64_t hash,
                         const struct table_pos *pos, uint64_t expire,
                         uint64_t now)
{
    if (expire != 0 && expire <= now) {
        int rc = entry_remove(kv, hash, pos);
        if (rc == 0)
            slot_count(&kv->wslot->deletes);
        return rc;
    }
    struct data_header *d = kv->data;
    struct block *e = block_at(d, pos->off);
    op_begin(kv, WRITE_OP_GENERIC);
    if ((e->u.entry.expire_ms != 0) != (expire != 0))
        LOGGED_SET(d, d->ttl_entries,
                   d->ttl_entries + (expire != 0 ? 1 : (uint64_t)-1));
    /* One aligned 64-bit store: readers see the old or new expiry. */
    LOGGED_SET(d, e->u.entry.expire_ms, expire);
    /* Before the end of the operation: undone, it leaves a bump that only
     * fails a shmkv_cas that need not. */
    version_bump(kv, version_cell(kv, entry_key(e), e->klen));
    op_end(kv);
    resize_mirror(kv, pos->off, false);
    return 0;
}

/* shmkv_pexpire (relative) and shmkv_pexpireat (absolute). */
static int expire_call(struct shmkv *kv, const void *key, size_t klen,
                       uint64_t ms, bool absolute)
{
    if (kv == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle");
    int rc = check_key(kv, key, klen);
    if (rc != 0)
        return rc;
    rc = write_begin(kv);
    if (rc != 0)
        return rc;
    rc = mirror_check(kv, key, klen);
    if (rc != 0) {
        write_end(kv);
        return rc;
    }
    uint64_t hash = key_hash(key, klen, kv->seed);
    struct table_pos pos;
    table_find(kv, hash, key, klen, &pos);
    uint64_t now = clock_unix_ms();
    if (pos.off == 0) {
        rc = SHMKV_ENOTFOUND;
    } else if (expired_at(block_at(kv->data, pos.off), now)) {
        rc = entry_remove(kv, hash, &pos);
        if (rc == 0) {
            atomic_fetch_add_explicit(&kv->ctl->expirations, 1,
                                      memory_order_relaxed);
            rc = SHMKV_ENOTFOUND;
        }
    } else {
        uint64_t expire = absolute ? (ms == 0 ? 1 : ms) : expiry_after(now, ms);
        rc = expire_locked(kv, hash, &pos, expire, now);
    }
    write_end(kv);
    return rc;
}

int shmkv_expire(struct shmkv *kv, const void *key, size_t klen, uint32_t ttl_s)
{
    return expire_call(kv, key, klen, (uint64_t)ttl_s * 1000u, false);
}

int shmkv_pexpire(struct shmkv *kv, const void *key, size_t klen,
                  uint64_t ttl_ms)
{
    return expire_call(kv, key, klen, ttl_ms, false);
}

int shmkv_pexpireat(struct shmkv *kv, const void *key, size_t klen,
                    int64_t at_ms)
{
    return expire_call(kv, key, klen, at_ms > 0 ? (uint64_t)at_ms : 1, true);
}

int shmkv_update(struct shmkv *kv, const void *key, size_t klen,
                 shmkv_update_fn fn, void *arg)
{
    if (kv == NULL || fn == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle or function");
    int rc = check_key(kv, key, klen);
    if (rc != 0)
        return rc;
    uint64_t seed;
    uint64_t hash = write_hash(kv, key, klen, &seed);
    rc = write_begin(kv);
    if (rc != 0)
        return rc;
    if ((rc = mirror_check(kv, key, klen)) != 0)
        goto out;
    if (seed != kv->seed)
        hash = key_hash(key, klen, kv->seed);
    struct table_pos pos;
    table_find(kv, hash, key, klen, &pos);
    uint64_t now = clock_unix_ms();
    struct shmkv_update u = {.action = SHMKV_UPDATE_KEEP};
    if (pos.off != 0 && !expired_at(block_at(kv->data, pos.off), now)) {
        const struct block *e = block_at(kv->data, pos.off);
        int64_t vlen = entry_vlen(e);
        if (vlen < 0 || vlen > kv->max_value_bytes ||
            (uint64_t)e->size_units * UNIT_BYTES > kv->data_bytes) {
            rc = set_error(SHMKV_ECORRUPT, "the key's entry is damaged");
            goto out;
        }
        u.old = entry_value(e);
        u.old_len = (size_t)vlen;
        u.old_expire_ms = (int64_t)e->u.entry.expire_ms;
    } else {
        pos.off = 0;
    }
    rc = fn(arg, &u);
    if (rc != 0)
        goto out;
    int64_t x = u.expire_ms;
    uint64_t expire = x == SHMKV_EXPIRE_KEEP ? (uint64_t)u.old_expire_ms
                      : x < 0                ? 1
                                             : (uint64_t)x;
    bool past = expire != 0 && expire <= now;
    switch (u.action) {
    case SHMKV_UPDATE_KEEP:
        break;
    case SHMKV_UPDATE_STORE:
        if (u.val == NULL && u.vlen > 0) {
            rc = set_error(SHMKV_EINVAL, "NULL value to store");
        } else if (u.vlen > kv->max_value_bytes) {
            rc = set_error(SHMKV_E2BIG,
                           "value of %zu bytes is over the limit %u", u.vlen,
                           kv->max_value_bytes);
        } else if (past) {
            rc = pos.off != 0 ? del_locked(kv, hash, &pos) : 0;
            if (rc == SHMKV_ENOTFOUND)
                rc = 0;
        } else {
            struct set_how how = {.expire_ms = expire};
            rc = set_locked(kv, key, klen, u.val, u.vlen, &how, hash, kv->seed);
        }
        break;
    case SHMKV_UPDATE_REMOVE:
        if (pos.off != 0) {
            rc = del_locked(kv, hash, &pos);
            if (rc == SHMKV_ENOTFOUND)
                rc = 0;
        }
        break;
    case SHMKV_UPDATE_EXPIRE:
        if (pos.off != 0)
            rc = expire_locked(kv, hash, &pos, expire, now);
        break;
    default:
        rc = set_error(SHMKV_EINVAL, "unknown update action %d", u.action);
    }
out:
    write_end(kv);
    return rc;
}

/* Parses a value as Redis does: optional '-', decimal digits, no spaces,
 * in int64 range. */
static bool parse_int64(const char *s, size_t len, int64_t *out)
{
    if (len == 0 || len > 20)
        return false;
    size_t i = 0;
    bool neg = s[0] == '-';
    if (neg && len == 1)
        return false;
    i = neg ? 1 : 0;
    uint64_t v = 0;
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        uint64_t digit = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - digit) / 10)
            return false;
        v = v * 10 + digit;
    }
    if (neg) {
        if (v > (uint64_t)INT64_MAX + 1)
            return false;
        *out = (int64_t)(0 - v);
    } else {
        if (v > (uint64_t)INT64_MAX)
            return false;
        *out = (int64_t)v;
    }
    return true;
}

int shmkv_incr(struct shmkv *kv, const void *key, size_t klen, int64_t delta,
               int64_t *result)
{
    if (kv == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle");
    int rc = check_key(kv, key, klen);
    if (rc != 0)
        return rc;
    rc = write_begin(kv);
    if (rc != 0)
        return rc;
    if ((rc = mirror_check(kv, key, klen)) != 0)
        goto out;
    uint64_t hash = key_hash(key, klen, kv->seed);
    struct table_pos pos;
    table_find(kv, hash, key, klen, &pos);
    int64_t value = 0;
    if (pos.off != 0 &&
        !expired_at(block_at(kv->data, pos.off), clock_unix_ms())) {
        const struct block *e = block_at(kv->data, pos.off);
        int64_t vlen = entry_vlen(e);
        if (vlen < 0 || vlen > 20 ||
            !parse_int64(entry_value(e), (size_t)vlen, &value)) {
            rc = set_error(SHMKV_ENOTNUM, "value is not a 64-bit integer");
            goto out;
        }
    }
    if (__builtin_add_overflow(value, delta, &value)) {
        rc = set_error(SHMKV_EOVERFLOW, "increment would overflow");
        goto out;
    }
    char text[24];
    int n = snprintf(text, sizeof text, "%lld", (long long)value);
    if ((size_t)n > kv->max_value_bytes) {
        rc = set_error(SHMKV_E2BIG, "counter is over the value size limit");
        goto out;
    }
    struct set_how how = {.flags = SHMKV_KEEPTTL};
    rc = set_locked(kv, key, klen, text, (size_t)n, &how, hash, kv->seed);
    if (rc == 0 && result != NULL)
        *result = value;
out:
    write_end(kv);
    return rc;
}

int shmkv_flush(struct shmkv *kv)
{
    int rc = write_begin(kv);
    if (rc != 0)
        return rc;
    if ((rc = mirror_check(kv, NULL, 0)) != 0) {
        write_end(kv);
        return rc;
    }
    op_begin(kv, WRITE_OP_FLUSH);
    flush_index(kv);
    op_end(kv);
    resize_mirror_flush(kv);
    /* Rebuilt now if no section is open; else by the next write that
     * needs memory. */
    flush_settle(kv, false);
    write_end(kv);
    return 0;
}

int shmkv_expire_scan(struct shmkv *kv, uint64_t max_slots)
{
    int rc = write_begin(kv);
    if (rc != 0)
        return rc;
    int64_t removed = expire_slots(kv, max_slots, 0);
    if (removed > 0)
        limbo_reclaim(kv, true);
    write_end(kv);
    if (removed < 0)
        return (int)removed;
    return removed > INT32_MAX ? INT32_MAX : (int)removed;
}
