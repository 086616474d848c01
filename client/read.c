/*
 * read.c - read sections and lookups.
 *
 * A read section takes no lock: it claims the read epoch in the handle's
 * client slot (read_claim, internal.h), and every value handed out in it
 * points into the data segment and stays valid until the section ends,
 * because no writer frees or reuses a block a section that began before its
 * unlink may see (reclaim.c). A lookup costs the key's hash, one index
 * line, the entry's lines, and two stores to this handle's own client slot
 * (hit counter, and in an lru store a recency stamp, which readers write
 * without the write lock: a relaxed store of the LRU clock into a cell
 * chosen by the key's hash tag).
 *
 * Writers change the index beside readers, and a section a writer revoked
 * may be reading memory that is being reused: so every offset and length a
 * lookup hands on is checked against the arena first, and what it reads
 * never lies outside the segment.
 */
#include <string.h>
#include <time.h>

#include "hash.h"
#include "table.h"

uint64_t clock_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Read once a section, when the first entry with an expiry is met: a
 * section's gets agree on what has expired. */
static inline bool entry_expired(struct shmkv *kv, const struct block *e)
{
    uint64_t at = e->u.entry.expire_ms;
    if (at == 0)
        return false;
    if (kv->now_ms == 0)
        kv->now_ms = clock_unix_ms();
    return at <= kv->now_ms;
}

/* Records a use of the key with this hash for the LRU approximation. */
static inline void recency_touch(struct shmkv *kv, uint64_t hash)
{
    _Atomic uint32_t *cell =
        (_Atomic uint32_t *)&kv->recency[hash_tag(hash) & kv->recency_mask];
    uint32_t now =
        atomic_load_explicit(&kv->ctl->lru_clock, memory_order_relaxed);
    /* Skip the store when the stamp is current: keeps the line shared. */
    if (atomic_load_explicit(cell, memory_order_relaxed) != now)
        atomic_store_explicit(cell, now, memory_order_relaxed);
}

int shmkv_read_begin(struct shmkv *kv)
{
    if (kv == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle");
    if (kv->in_read)
        return set_error(SHMKV_ESTATE, "a read section is already open");
    int rc = read_claim(kv);
    if (rc != 0)
        return rc;
    kv->in_read = true;
    kv->now_ms = 0;
    return 0;
}

/* Why a section ended stale; out of line, off the hot path. */
static __attribute__((noinline, cold)) int section_stale(const struct shmkv *kv)
{
    return set_error(SHMKV_ESTALE,
                     "the read section was revoked: it was held past the "
                     "store's reader timeout (%u ms) while a writer needed "
                     "memory it could see, or another process changed its "
                     "claim",
                     kv->reader_timeout_ms);
}

int shmkv_read_end(struct shmkv *kv)
{
    if (kv == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle");
    if (!kv->in_read)
        return set_error(SHMKV_ESTATE, kv->forked
                                           ? "the handle belongs to another "
                                             "process"
                                           : "no read section is open");
    kv->in_read = false;
    if (__builtin_expect(read_release(kv) != 0, 0)) {
        slot_count(&kv->slot->stale); /* once a section */
        return section_stale(kv);
    }
    return 0;
}

/* Why an entry cannot be handed out: its value would run past the arena.
 * In a revoked section that is memory being reused; otherwise damage. */
static __attribute__((noinline, cold)) int entry_out_of_bounds(struct shmkv *kv)
{
    if (!read_claim_valid(kv))
        return SHMKV_ESTALE;
    return set_error(SHMKV_ECORRUPT,
                     "an entry's value runs past the end of the arena");
}

/* True if the entry e, found for a key of klen bytes, has a value that
 * ends inside the arena. */
static inline bool entry_in_bounds(const struct shmkv *kv,
                                   const struct block *e, size_t klen)
{
    /* A signed comparison: a key that runs past read_end (an entry at the
     * arena's end, damaged) leaves no room, not a huge one. */
    const char *value = entry_key(e) + klen;
    int64_t vlen = entry_vlen(e);
    return vlen >= 0 && vlen <= kv->read_end - value;
}

/* The lookup inside a read section, arguments already checked: the live
 * entry of key, or NULL. Inlined into each caller: how many instructions a
 * get takes decides how many gets the CPU keeps in flight while their
 * cache misses are outstanding, which is most of what a get costs. */
static inline __attribute__((always_inline)) const struct block *
lookup_hashed(struct shmkv *kv, uint64_t hash, const void *key, size_t klen)
{
    const struct block *e = table_lookup(kv, hash, key, klen);
    if (e == NULL) {
        slot_count(&kv->slot->misses);
        return NULL;
    }
    if (__builtin_expect(e->u.entry.expire_ms != 0, 0) &&
        entry_expired(kv, e)) {
        slot_count(&kv->slot->misses);
        return NULL;
    }
    if (kv->lru)
        recency_touch(kv, hash);
    slot_count(&kv->slot->hits);
    return e;
}

static inline __attribute__((always_inline)) const struct block *
lookup(struct shmkv *kv, const void *key, size_t klen)
{
    return lookup_hashed(kv, key_hash(key, klen, kv->seed), key, klen);
}

/* The same, out of line, for the calls where a copy or a TTL costs more
 * than the call does. */
static __attribute__((noinline, flatten)) const struct block *
lookup_call(struct shmkv *kv, uint64_t hash, const void *key, size_t klen)
{
    return lookup_hashed(kv, hash, key, klen);
}

/* Begins the read section of a call that makes its own, for a key whose
 * hash it already has: the key's home bucket is asked for first, so that
 * its cache miss overlaps the lock's atomic operations instead of
 * following them (a prefetch never faults, even on a mapping a generation
 * change has just removed). *hash is redone if the section is on another
 * generation, with another seed, than the one it was computed for. */
static int section_begin_for(struct shmkv *kv, const void *key, size_t klen,
                             uint64_t *hash)
{
    uint64_t seed = kv->seed;
    if (kv->buckets != NULL)
        __builtin_prefetch(&kv->buckets[table_home(kv->nbuckets, *hash)]);
    int rc = shmkv_read_begin(kv);
    if (rc == 0 && kv->seed != seed)
        *hash = key_hash(key, klen, kv->seed);
    return rc;
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

/* Why shmkv_get refused its arguments; out of line, off the hot path. */
static __attribute__((noinline, cold)) int get_refused(struct shmkv *kv,
                                                       const void *key,
                                                       size_t klen,
                                                       const shmkv_val_t *val)
{
    if (kv == NULL || val == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle or value");
    if (kv->forked)
        return refuse_forked(kv);
    if (!kv->in_read)
        return set_error(SHMKV_ESTATE, "shmkv_get outside a read section");
    if (!read_claim_valid(kv))
        return section_stale(kv);
    return check_key(kv, key, klen);
}

/* flatten: the hash too is inlined, whatever the compiler's size limits. */
__attribute__((flatten)) int shmkv_get(struct shmkv *kv, const void *key,
                                       size_t klen, shmkv_val_t *val)
{
    /* One test for every refusal: klen - 1 wraps for an empty key. */
    if (__builtin_expect(kv == NULL || val == NULL || key == NULL ||
                             !kv->in_read || klen - 1 >= kv->max_key_bytes ||
                             !read_claim_valid(kv),
                         0))
        return get_refused(kv, key, klen, val);
    const struct block *e = lookup(kv, key, klen);
    if (e == NULL)
        return SHMKV_ENOTFOUND;
    if (__builtin_expect(!entry_in_bounds(kv, e, klen), 0))
        return entry_out_of_bounds(kv);
    /* The value's address from the caller's klen, equal to the entry's:
     * computed from the entry's own, it would wait for the entry's first
     * line to arrive before the value's line (often the next one) could
     * be asked for. */
    val->data = entry_key(e) + klen;
    val->len = (size_t)entry_vlen(e);
    return 0;
}

int shmkv_get_stale(struct shmkv *kv, const void *key, size_t klen,
                    shmkv_val_t *val, int64_t *stale_ms)
{
    if (stale_ms == NULL)
        return set_error(SHMKV_EINVAL, "NULL age");
    if (kv == NULL || val == NULL || key == NULL || !kv->in_read ||
        klen - 1 >= kv->max_key_bytes || !read_claim_valid(kv))
        return get_refused(kv, key, klen, val);
    /* The lookup without the expiry test (nor a hit counted). */
    const struct block *e =
        table_lookup(kv, key_hash(key, klen, kv->seed), key, klen);
    if (e == NULL)
        return SHMKV_ENOTFOUND;
    if (!entry_in_bounds(kv, e, klen))
        return entry_out_of_bounds(kv);
    uint64_t at = e->u.entry.expire_ms;
    *stale_ms = 0;
    if (at != 0) {
        if (kv->now_ms == 0)
            kv->now_ms = clock_unix_ms();
        if (at <= kv->now_ms)
            *stale_ms = at == kv->now_ms ? 1 : (int64_t)(kv->now_ms - at);
    }
    val->data = entry_key(e) + klen;
    val->len = (size_t)entry_vlen(e);
    return 0;
}

/* What a one-key call reads of an entry, copied out inside the section. */
struct entry_copy {
    void *buf;
    size_t cap;
    size_t vlen;
    uint64_t expire_ms;
    uint64_t *version; /* if not NULL, the key's, read before the lookup */
};

/* Looks key up in the open section, or in one of its own; copies what c
 * asks for. A section of its own that a writer revoked meanwhile is
 * simply taken again: nothing it read has been handed out. */
static int lookup_copy(struct shmkv *kv, const void *key, size_t klen,
                       struct entry_copy *c)
{
    int rc = check_key(kv, key, klen);
    if (rc != 0)
        return rc;
    if (kv->forked)
        return refuse_forked(kv);
    uint64_t hash = key_hash(key, klen, kv->seed);
    /* In a write section the lock keeps every entry in place: no claim. */
    bool locked = kv->in_write;
    bool own_section = !kv->in_read && !locked;
    for (int attempt = 0;; attempt++) {
        if (own_section) {
            rc = section_begin_for(kv, key, klen, &hash);
            if (rc != 0)
                return rc;
        } else if (locked) {
            kv->now_ms = 0;
        } else if (!read_claim_valid(kv)) {
            return section_stale(kv);
        }
        if (c->version != NULL)
            *c->version = version_load(kv, version_cell(kv, key, klen));
        const struct block *e = lookup_call(kv, hash, key, klen);
        rc = e == NULL ? SHMKV_ENOTFOUND : 0;
        if (rc == 0 && !entry_in_bounds(kv, e, klen))
            rc = entry_out_of_bounds(kv);
        if (rc == 0) {
            c->vlen = (size_t)entry_vlen(e);
            c->expire_ms = e->u.entry.expire_ms;
            if (c->vlen > c->cap)
                rc = SHMKV_ENOBUFS;
            else if (c->vlen > 0 && c->buf != NULL)
                memcpy(c->buf, entry_key(e) + klen, c->vlen);
        }
        if (!own_section)
            return rc;
        kv->in_read = false;
        if (read_release(kv) == 0)
            return rc;
        if (attempt == 3)
            return section_stale(kv);
    }
}

int shmkv_get_copy(struct shmkv *kv, const void *key, size_t klen, void *buf,
                   size_t cap, size_t *vlen)
{
    if (kv == NULL || vlen == NULL || (buf == NULL && cap > 0))
        return set_error(SHMKV_EINVAL, "NULL handle, buffer or length");
    struct entry_copy c = {.buf = buf, .cap = cap};
    int rc = lookup_copy(kv, key, klen, &c);
    if (rc == 0 || rc == SHMKV_ENOBUFS)
        *vlen = c.vlen;
    return rc;
}

int shmkv_version(struct shmkv *kv, const void *key, size_t klen,
                  uint64_t *version)
{
    if (kv == NULL || version == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle or result");
    struct entry_copy c = {.cap = SIZE_MAX, .version = version};
    return lookup_copy(kv, key, klen, &c);
}

int shmkv_get_versioned(struct shmkv *kv, const void *key, size_t klen,
                        shmkv_val_t *val, uint64_t *version)
{
    if (kv == NULL || version == NULL || val == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle, value or version");
    if (!kv->in_read)
        return set_error(SHMKV_ESTATE,
                         "shmkv_get_versioned outside a read section");
    if (check_key(kv, key, klen) != 0)
        return get_refused(kv, key, klen, val);
    /* Before the lookup: a write the lookup saw bumped it after it
     * published (write.c), so this is the same version or an older one. */
    *version = version_load(kv, version_cell(kv, key, klen));
    return shmkv_get(kv, key, klen, val);
}

/* When key expires: unix milliseconds, -1 for never. */
int shmkv_pexpiretime(struct shmkv *kv, const void *key, size_t klen,
                      int64_t *at_ms)
{
    if (kv == NULL || at_ms == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle or result");
    struct entry_copy c = {.cap = SIZE_MAX};
    int rc = lookup_copy(kv, key, klen, &c);
    if (rc == 0)
        *at_ms = c.expire_ms == 0 ? -1 : (int64_t)c.expire_ms;
    return rc;
}

int shmkv_pttl(struct shmkv *kv, const void *key, size_t klen, int64_t *ttl_ms)
{
    if (kv == NULL || ttl_ms == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle or result");
    int64_t at;
    int rc = shmkv_pexpiretime(kv, key, klen, &at);
    if (rc == 0) {
        *ttl_ms = at < 0 ? -1 : at - (int64_t)clock_unix_ms();
        if (*ttl_ms == 0 || *ttl_ms < -1)
            *ttl_ms = 0; /* found, so not expired when it was looked at */
    }
    return rc;
}

int shmkv_ttl(struct shmkv *kv, const void *key, size_t klen, int64_t *ttl_s)
{
    if (kv == NULL || ttl_s == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle or result");
    int64_t ms;
    int rc = shmkv_pttl(kv, key, klen, &ms);
    if (rc == 0)
        *ttl_s = ms < 0 ? -1 : (ms + 500) / 1000; /* rounded, as Redis */
    return rc;
}

/* Index slots a foreach visits per read section. */
#define FOREACH_SLOTS_PER_SECTION 512u

/* A scan cursor: the next bucket, and the low bits of the generation it
 * counts buckets of (0 is the start, and the end). */
#define SCAN_BUCKET_BITS 40
#define SCAN_GEN_MASK 0xfffffu
#define SCAN_MAKE(gen, bucket)                                                 \
    ((((uint64_t)(gen)&SCAN_GEN_MASK) << SCAN_BUCKET_BITS) | (bucket))

/* A visitor of either kind: with the TTL in seconds or in milliseconds. */
struct visitor {
    shmkv_visit_fn fn;
    shmkv_visit_ms_fn fn_ms;
    void *ctx;
};

/* Visits the live entries of buckets [from, to) in the open section; the
 * visitor's nonzero result, or an error for a damaged entry. */
static int visit_buckets(struct shmkv *kv, uint64_t from, uint64_t to,
                         const struct visitor *v)
{
    int64_t now = (int64_t)clock_unix_ms();
    for (uint64_t b = from; b < to; b++) {
        for (unsigned i = 0; i < BUCKET_SLOTS; i++) {
            uint64_t s = atomic_load_explicit(&kv->buckets[b].slot[i],
                                              memory_order_acquire);
            if (SLOT_OFF(s) == 0 || !slot_in_arena(kv, s))
                continue;
            const struct block *e = block_at(kv->data, SLOT_OFF(s));
            if (e->klen == 0 || e->klen > kv->max_key_bytes ||
                !entry_in_bounds(kv, e, e->klen))
                return entry_out_of_bounds(kv);
            int64_t ttl = 0;
            uint64_t at = e->u.entry.expire_ms;
            if (at != 0) {
                if (at > INT64_MAX || (int64_t)at <= now)
                    continue;
                ttl = (int64_t)at - now;
            }
            int rc = v->fn_ms != NULL
                         ? v->fn_ms(v->ctx, entry_key(e), e->klen,
                                    entry_value(e), (size_t)entry_vlen(e), ttl)
                         : v->fn(v->ctx, entry_key(e), e->klen, entry_value(e),
                                 (size_t)entry_vlen(e), (ttl + 999) / 1000);
            if (rc != 0)
                return rc;
        }
    }
    return 0;
}

static int scan_step(struct shmkv *kv, uint64_t *cursor, size_t count,
                     const struct visitor *v)
{
    if (kv == NULL || cursor == NULL || (v->fn == NULL && v->fn_ms == NULL))
        return set_error(SHMKV_EINVAL, "NULL handle, cursor or visitor");
    if (kv->in_read)
        return set_error(SHMKV_ESTATE, "shmkv_scan inside a read section");
    for (int attempt = 0;; attempt++) {
        int rc = shmkv_read_begin(kv);
        if (rc != 0)
            return rc;
        uint64_t c = *cursor;
        uint64_t from = c & ((1ull << SCAN_BUCKET_BITS) - 1);
        /* Buckets of another generation (a resize came between steps)
         * mean nothing in this one: the walk starts over. */
        if (c != 0 && ((c >> SCAN_BUCKET_BITS) != (kv->gen & SCAN_GEN_MASK) ||
                       from >= kv->nbuckets))
            from = 0;
        uint64_t n = (count + BUCKET_SLOTS - 1) / BUCKET_SLOTS;
        if (n == 0)
            n = 1;
        uint64_t to = from + n < kv->nbuckets ? from + n : kv->nbuckets;
        rc = visit_buckets(kv, from, to, v);
        int end = shmkv_read_end(kv);
        if (rc != 0)
            return rc;
        if (end == SHMKV_ESTALE && attempt < 3)
            continue; /* revoked: what it visited may have changed */
        if (end != 0)
            return end;
        *cursor = to == kv->nbuckets ? 0 : SCAN_MAKE(kv->gen, to);
        return 0;
    }
}

int shmkv_scan(struct shmkv *kv, uint64_t *cursor, size_t count,
               shmkv_visit_fn fn, void *ctx)
{
    struct visitor v = {.fn = fn, .ctx = ctx};
    return scan_step(kv, cursor, count, &v);
}

int shmkv_scan_ms(struct shmkv *kv, uint64_t *cursor, size_t count,
                  shmkv_visit_ms_fn fn, void *ctx)
{
    struct visitor v = {.fn_ms = fn, .ctx = ctx};
    return scan_step(kv, cursor, count, &v);
}

static int walk(struct shmkv *kv, const struct visitor *v)
{
    if (kv == NULL || (v->fn == NULL && v->fn_ms == NULL))
        return set_error(SHMKV_EINVAL, "NULL handle or visitor");
    if (kv->in_read || kv->in_write)
        return set_error(SHMKV_ESTATE,
                         "shmkv_foreach inside a read or write section");
    int rc = shmkv_read_begin(kv);
    if (rc != 0)
        return rc;
    uint32_t gen = kv->gen;
    uint64_t nbuckets = kv->nbuckets;
    const uint64_t per_section =
        (FOREACH_SLOTS_PER_SECTION + BUCKET_SLOTS - 1) / BUCKET_SLOTS;
    for (uint64_t b = 0; rc == 0 && b < nbuckets; b += per_section) {
        if (b > 0) {
            /* Let writers reclaim what this section held back. */
            rc = shmkv_read_end(kv);
            if (rc == 0)
                rc = shmkv_read_begin(kv);
            if (rc != 0)
                return rc;
            if (kv->gen != gen) {
                rc = set_error(SHMKV_ESTALE, "the store's data segment was "
                                             "replaced during the walk");
                break;
            }
        }
        uint64_t to = b + per_section < nbuckets ? b + per_section : nbuckets;
        rc = visit_buckets(kv, b, to, v);
    }
    int end = shmkv_read_end(kv);
    return rc != 0 ? rc : end;
}

int shmkv_foreach(struct shmkv *kv, shmkv_visit_fn fn, void *ctx)
{
    struct visitor v = {.fn = fn, .ctx = ctx};
    return walk(kv, &v);
}

int shmkv_foreach_ms(struct shmkv *kv, shmkv_visit_ms_fn fn, void *ctx)
{
    struct visitor v = {.fn_ms = fn, .ctx = ctx};
    return walk(kv, &v);
}

struct random_pick {
    void *buf;
    size_t cap;
    size_t *klen;
    int rc;
};

static int random_visit(void *ctx, const void *key, size_t klen,
                        const void *val, size_t vlen, int64_t ttl_ms)
{
    (void)val;
    (void)vlen;
    (void)ttl_ms;
    struct random_pick *p = ctx;
    *p->klen = klen;
    if (klen > p->cap) {
        p->rc = SHMKV_ENOBUFS;
    } else {
        memcpy(p->buf, key, klen);
        p->rc = 0;
    }
    return 1; /* the first live one */
}

int shmkv_random_key(struct shmkv *kv, void *buf, size_t cap, size_t *klen)
{
    if (kv == NULL || klen == NULL || (buf == NULL && cap > 0))
        return set_error(SHMKV_EINVAL, "NULL handle, buffer or length");
    if (kv->in_read)
        return set_error(SHMKV_ESTATE,
                         "shmkv_random_key inside a read section");
    struct random_pick p = {
        .buf = buf, .cap = cap, .klen = klen, .rc = SHMKV_ENOTFOUND};
    struct visitor v = {.fn_ms = random_visit, .ctx = &p};
    int rc = shmkv_read_begin(kv);
    if (rc != 0)
        return rc;
    /* From a random bucket to the end, then from the start to it. */
    uint64_t start = handle_random(kv) % kv->nbuckets;
    rc = visit_buckets(kv, start, kv->nbuckets, &v);
    if (rc == 0)
        rc = visit_buckets(kv, 0, start, &v);
    int end = shmkv_read_end(kv);
    if (rc < 0)
        return rc;
    if (end != 0)
        return end;
    return p.rc;
}
