/*
 * write.c - writes under the store's write lock: set, delete, incr, expire,
 * flush, and making room (expired entries first, then LRU eviction).
 *
 * Order of every write (DESIGN invariant 5): build the new entry in a free
 * block, publish it with one release store of its index slot, and only then
 * free what it replaced. A writer killed anywhere leaves either the old or
 * the new entry reachable, never a half-written one; at worst a block is
 * neither reachable nor free, and the recovery copy leaves it behind.
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

static int write_begin(struct shmkv *kv)
{
    if (kv == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle");
    if (kv->in_read)
        return set_error(SHMKV_ESTATE, "a write inside a read section");
    if (kv->rdonly)
        return set_error(SHMKV_ERDONLY, "the handle is read-only");
    return lock_write(kv);
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

static uint64_t rng_next(struct shmkv *kv)
{
    /* xorshift64 */
    uint64_t x = kv->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    kv->rng = x;
    return x;
}

/* The expiry time ttl_s seconds after now (0: none), saturated at the last
 * second a 32-bit expiry can hold instead of wrapping into the past. */
static uint32_t expiry_after(uint32_t now, uint32_t ttl_s)
{
    if (ttl_s == 0)
        return 0;
    uint64_t at = (uint64_t)now + ttl_s;
    return at > UINT32_MAX ? UINT32_MAX : (uint32_t)at;
}

static bool expired_at(const struct block *e, uint32_t now)
{
    return e->u.entry.expire_unix != 0 && e->u.entry.expire_unix <= now;
}

/* Unpublishes the entry at pos, then frees its block. */
static void entry_remove(struct shmkv *kv, uint64_t hash,
                         const struct table_pos *pos)
{
    struct data_header *d = kv->data;
    const struct block *e = block_at(d, pos->off);
    bool had_ttl = e->u.entry.expire_unix != 0;
    table_remove(kv, hash, pos);
    arena_free(d, pos->off);
    d->entries--;
    if (had_ttl)
        d->ttl_entries--;
}

/* Removes the entry in bucket b, slot i (its hash recomputed). */
static void slot_remove(struct shmkv *kv, uint64_t b, unsigned i)
{
    uint64_t s =
        atomic_load_explicit(&kv->buckets[b].slot[i], memory_order_relaxed);
    const struct block *e = block_at(kv->data, SLOT_OFF(s));
    uint64_t hash = key_hash(entry_key(e), e->klen, kv->seed);
    struct table_pos pos = {.bucket = b, .slot = i, .off = SLOT_OFF(s)};
    entry_remove(kv, hash, &pos);
}

/* Removes expired entries from max_slots slots from the scan cursor on
 * (0: all). Returns how many it removed. */
static uint64_t expire_slots(struct shmkv *kv, uint64_t max_slots)
{
    struct data_header *d = kv->data;
    uint64_t total = kv->nbuckets * BUCKET_SLOTS;
    if (max_slots == 0 || max_slots > total)
        max_slots = total;
    uint32_t now = clock_unix();
    uint64_t removed = 0;
    uint64_t at = d->expire_cursor % total;
    for (uint64_t n = 0; n < max_slots && d->ttl_entries > 0; n++) {
        uint64_t b = at / BUCKET_SLOTS;
        unsigned i = (unsigned)(at % BUCKET_SLOTS);
        uint64_t s =
            atomic_load_explicit(&kv->buckets[b].slot[i], memory_order_relaxed);
        if (SLOT_OFF(s) != 0 && expired_at(block_at(d, SLOT_OFF(s)), now)) {
            slot_remove(kv, b, i);
            removed++;
        }
        at = at + 1 == total ? 0 : at + 1;
    }
    d->expire_cursor = at;
    atomic_fetch_add_explicit(&kv->ctl->expirations, removed,
                              memory_order_relaxed);
    return removed;
}

/* Evicts one entry by sampling; never the block at `keep`. Returns false
 * when there is nothing to evict. */
static bool evict_one(struct shmkv *kv, uint32_t keep)
{
    struct data_header *d = kv->data;
    if (d->entries == 0 || (keep != 0 && d->entries == 1))
        return false;
    uint32_t now = clock_unix();
    uint32_t clock =
        atomic_load_explicit(&kv->ctl->lru_clock, memory_order_relaxed);
    uint64_t b = rng_next(kv) % kv->nbuckets;
    uint64_t best_b = 0;
    unsigned best_i = 0, seen = 0;
    uint32_t best_age = 0;
    bool found = false;
    for (uint64_t n = 0; n < kv->nbuckets && seen < EVICT_SAMPLES; n++) {
        for (unsigned i = 0; i < BUCKET_SLOTS; i++) {
            uint64_t s = atomic_load_explicit(&kv->buckets[b].slot[i],
                                              memory_order_relaxed);
            if (SLOT_OFF(s) == 0 || SLOT_OFF(s) == keep)
                continue;
            seen++;
            if (expired_at(block_at(d, SLOT_OFF(s)), now)) {
                slot_remove(kv, b, i);
                atomic_fetch_add_explicit(&kv->ctl->expirations, 1,
                                          memory_order_relaxed);
                return true;
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
        return false;
    slot_remove(kv, best_b, best_i);
    atomic_fetch_add_explicit(&kv->ctl->evictions, 1, memory_order_relaxed);
    return true;
}

/* Allocates `units` for a new entry (and an index slot if new_key),
 * reclaiming expired entries and, in an lru store, evicting others. Never
 * touches the entry at `keep`. Returns the block, or 0 with the store as
 * it was apart from expired and evicted entries. */
static uint32_t make_room(struct shmkv *kv, uint32_t units, bool new_key,
                          uint32_t keep)
{
    struct data_header *d = kv->data;
    bool swept = false;
    for (;;) {
        bool index_ok = !new_key || d->entries < d->max_load;
        if (index_ok) {
            uint32_t off = arena_alloc(d, units);
            if (off != 0)
                return off;
        }
        if (!swept && d->ttl_entries > 0) {
            swept = true;
            if (expire_slots(kv, 0) > 0)
                continue;
        }
        if (!kv->lru || !evict_one(kv, keep))
            return 0;
    }
}

/* The body of shmkv_set, under the write lock. */
static int set_locked(struct shmkv *kv, const void *key, size_t klen,
                      const void *val, size_t vlen, uint32_t ttl_s, int flags)
{
    struct data_header *d = kv->data;
    uint64_t hash = key_hash(key, klen, kv->seed);
    struct table_pos pos;
    table_find(kv, hash, key, klen, &pos);
    uint32_t now = clock_unix();
    if (pos.off != 0 && expired_at(block_at(d, pos.off), now)) {
        entry_remove(kv, hash, &pos);
        atomic_fetch_add_explicit(&kv->ctl->expirations, 1,
                                  memory_order_relaxed);
        pos.off = 0;
    }
    if ((flags & SHMKV_NX) && pos.off != 0)
        return SHMKV_EEXIST;
    if ((flags & SHMKV_XX) && pos.off == 0)
        return SHMKV_ENOTFOUND;

    uint32_t expire = expiry_after(now, ttl_s);
    if ((flags & SHMKV_KEEPTTL) && pos.off != 0)
        expire = block_at(d, pos.off)->u.entry.expire_unix;

    uint32_t off =
        make_room(kv, entry_units(klen, vlen), pos.off == 0, pos.off);
    if (off == 0)
        return set_error(SHMKV_ENOSPC,
                         "no room for a %zu-byte key and %zu-byte value", klen,
                         vlen);
    struct block *e = block_at(d, off);
    e->klen = (uint16_t)klen;
    e->u.entry.vlen = (uint32_t)vlen;
    e->u.entry.expire_unix = expire;
    memcpy((char *)(e + 1), key, klen);
    if (vlen > 0)
        memcpy((char *)(e + 1) + klen, val, vlen);

    if (pos.off != 0) {
        uint32_t old = pos.off;
        if (block_at(d, old)->u.entry.expire_unix != 0)
            d->ttl_entries--;
        table_replace(kv, &pos, off);
        arena_free(d, old);
    } else {
        table_insert(kv, hash, off);
        d->entries++;
    }
    if (expire != 0)
        d->ttl_entries++;
    atomic_fetch_add_explicit(&kv->ctl->sets, 1, memory_order_relaxed);
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

int shmkv_set(struct shmkv *kv, const void *key, size_t klen, const void *val,
              size_t vlen, uint32_t ttl_s, int flags)
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
    rc = write_begin(kv);
    if (rc != 0)
        return rc;
    rc = set_locked(kv, key, klen, val, vlen, ttl_s, flags);
    lock_write_end(kv);
    return rc;
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
    uint64_t hash = key_hash(key, klen, kv->seed);
    struct table_pos pos;
    table_find(kv, hash, key, klen, &pos);
    if (pos.off == 0) {
        rc = SHMKV_ENOTFOUND;
    } else {
        bool expired = expired_at(block_at(kv->data, pos.off), clock_unix());
        entry_remove(kv, hash, &pos);
        atomic_fetch_add_explicit(expired ? &kv->ctl->expirations
                                          : &kv->ctl->deletes,
                                  1, memory_order_relaxed);
        rc = expired ? SHMKV_ENOTFOUND : 0;
    }
    lock_write_end(kv);
    return rc;
}

int shmkv_expire(struct shmkv *kv, const void *key, size_t klen, uint32_t ttl_s)
{
    if (kv == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle");
    int rc = check_key(kv, key, klen);
    if (rc != 0)
        return rc;
    rc = write_begin(kv);
    if (rc != 0)
        return rc;
    uint64_t hash = key_hash(key, klen, kv->seed);
    struct table_pos pos;
    table_find(kv, hash, key, klen, &pos);
    uint32_t now = clock_unix();
    if (pos.off == 0) {
        rc = SHMKV_ENOTFOUND;
    } else if (expired_at(block_at(kv->data, pos.off), now)) {
        entry_remove(kv, hash, &pos);
        atomic_fetch_add_explicit(&kv->ctl->expirations, 1,
                                  memory_order_relaxed);
        rc = SHMKV_ENOTFOUND;
    } else {
        struct block *e = block_at(kv->data, pos.off);
        uint32_t expire = expiry_after(now, ttl_s);
        if ((e->u.entry.expire_unix != 0) != (expire != 0))
            kv->data->ttl_entries += expire != 0 ? 1 : (uint64_t)-1;
        /* One aligned 32-bit store: readers see the old or new TTL. */
        e->u.entry.expire_unix = expire;
    }
    lock_write_end(kv);
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
    uint64_t hash = key_hash(key, klen, kv->seed);
    struct table_pos pos;
    table_find(kv, hash, key, klen, &pos);
    int64_t value = 0;
    if (pos.off != 0 &&
        !expired_at(block_at(kv->data, pos.off), clock_unix())) {
        const struct block *e = block_at(kv->data, pos.off);
        if (!parse_int64(entry_value(e), e->u.entry.vlen, &value)) {
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
    rc = set_locked(kv, key, klen, text, (size_t)n, 0, SHMKV_KEEPTTL);
    if (rc == 0 && result != NULL)
        *result = value;
out:
    lock_write_end(kv);
    return rc;
}

int shmkv_flush(struct shmkv *kv)
{
    int rc = write_begin(kv);
    if (rc != 0)
        return rc;
    struct data_header *d = kv->data;
    /* Unpublish every entry first, then rebuild the allocator: a writer
     * killed halfway leaves a smaller but walkable index. */
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
    arena_init(d);
    lock_write_end(kv);
    return 0;
}

int shmkv_expire_scan(struct shmkv *kv, uint64_t max_slots)
{
    int rc = write_begin(kv);
    if (rc != 0)
        return rc;
    uint64_t removed = expire_slots(kv, max_slots);
    lock_write_end(kv);
    return removed > INT32_MAX ? INT32_MAX : (int)removed;
}
