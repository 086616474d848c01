/*
 * resize.c - growing or shrinking a store while it is used.
 *
 * A data segment cannot change size, so a resize makes a new one and
 * moves the store into it:
 *
 *   creating  under the write lock the resizer checks that the live data
 *             fits the new size and notes itself (RESIZE_CREATING, its
 *             pid and writers' slot); then, without the lock, it makes
 *             the segment, empty, as the next generation.
 *   copying   under the lock it names the segment (RESIZE_COPYING). From
 *             then on every writer that changes an entry in the current
 *             segment makes the same change, by key, in the new one
 *             (resize_mirror, called under the lock after each change).
 *             The resizer walks the current index in slices of about a
 *             millisecond, each under the lock, and copies every live
 *             entry the new segment does not hold yet: one it holds was
 *             put there by a writer, and is as new as the current one.
 *   switch    in the last slice, with every bucket copied, it stores the
 *             new generation word: readers and writers follow at their
 *             next call (generation.c), and the old segment is removed,
 *             to vanish when the last process still reading it detaches.
 *
 * The new segment has no reader before the switch, so it needs neither
 * limbo nor undo log: a block replaced there is freed at once. Nor does a
 * death in it need repairing: a writer that dies under the lock, maybe
 * halfway through a change to either segment, is recovered in the current
 * one (intent.c), and the resize is given up (RESIZE_ABORTED): the
 * resizer removes its segment and returns SHMKV_EAGAIN. A resizer that
 * dies is noticed by the next writer (resize_tend), which gives the
 * resize up and removes the segment, finding it, if it was not named yet,
 * by its creator's pid and size in /proc/sysvipc/shm.
 *
 * Only a process that may remove the store's segments resizes it (the
 * owner's uid, or root), and it gives the new segment to the store's
 * owner and group, so that the owner can always remove everything.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/random.h>
#include <sys/shm.h>
#include <time.h>
#include <unistd.h>

#include "hash.h"
#include "table.h"

/* How long one slice of the copy holds the write lock, and the shortest
 * pause after it when writers wait. */
#define RESIZE_SLICE_MS 1u
#define RESIZE_GAP_US 100
/* How often a writer that sees a resize under way asks whether its
 * resizer lives. */
#define RESIZE_TEND_MS 200u
/* The share of the new arena the live data may fill when the resize
 * begins: the rest is for what writers add while it runs. */
#define RESIZE_FILL_PERCENT 95u

/* True if slot word s names an entry whose key and value lie inside the
 * arena of the segment kv is bound to. */
static uint64_t monotonic_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static bool entry_sane(const struct shmkv *kv, uint64_t s)
{
    if (SLOT_OFF(s) == 0 || !slot_in_arena(kv, s))
        return false;
    const struct block *e = block_at(kv->data, SLOT_OFF(s));
    if (e->klen == 0 || e->klen > kv->max_key_bytes)
        return false;
    const char *end = entry_key(e) + e->klen;
    int64_t vlen = entry_vlen(e);
    return vlen >= 0 && vlen <= kv->max_value_bytes &&
           vlen <= kv->read_end - end;
}

/* Puts a copy of entry src (from the current segment) into the segment rs
 * is bound to, replacing the key's entry there; skip_present: leave a key
 * the segment holds already. SHMKV_ENOSPC if it does not fit. */
static int shadow_put(struct shmkv *rs, const struct block *src,
                      bool skip_present)
{
    struct data_header *d = rs->data;
    const char *key = entry_key(src);
    size_t klen = src->klen, vlen = (size_t)entry_vlen(src);
    uint64_t hash = key_hash(key, klen, rs->seed);
    struct table_pos pos;
    table_find(rs, hash, key, klen, &pos);
    if (pos.off != 0 && skip_present)
        return 0;
    if (pos.off == 0 && d->entries >= d->max_load)
        return SHMKV_ENOSPC;
    uint32_t units = entry_units(klen, vlen);
    op_begin(rs, WRITE_OP_GENERIC);
    uint32_t off = arena_alloc(d, units);
    if (off == 0) {
        op_end(rs);
        return SHMKV_ENOSPC;
    }
    struct block *e = block_at(d, off);
    e->klen = (uint16_t)klen;
    entry_set_pad(e, klen, vlen);
    e->u.entry.expire_ms = src->u.entry.expire_ms;
    memcpy((char *)(e + 1), key, klen + vlen);
    uint64_t word = SLOT_MAKE(hash_tag(hash), off);
    int64_t ttl = e->u.entry.expire_ms != 0 ? 1 : 0;
    if (pos.off != 0) {
        if (block_at(d, pos.off)->u.entry.expire_ms != 0)
            ttl--;
        atomic_store_explicit(&rs->buckets[pos.bucket].slot[pos.slot], word,
                              memory_order_relaxed);
        arena_free(d, pos.off);
    } else {
        uint64_t bucket;
        unsigned slot;
        if (table_insert_prepare(rs, hash, &bucket, &slot) != 0) {
            arena_free(d, off);
            op_end(rs);
            return SHMKV_ENOSPC;
        }
        atomic_store_explicit(&rs->buckets[bucket].slot[slot], word,
                              memory_order_relaxed);
        d->entries++;
    }
    d->ttl_entries += (uint64_t)ttl;
    op_end(rs);
    return 0;
}

/* Removes key from the segment rs is bound to, if there. */
static void shadow_del(struct shmkv *rs, const char *key, size_t klen)
{
    struct data_header *d = rs->data;
    uint64_t hash = key_hash(key, klen, rs->seed);
    struct table_pos pos;
    table_find(rs, hash, key, klen, &pos);
    if (pos.off == 0)
        return;
    op_begin(rs, WRITE_OP_GENERIC);
    atomic_store_explicit(&rs->buckets[pos.bucket].slot[pos.slot], 0,
                          memory_order_relaxed);
    table_remove_counts(rs, hash, pos.bucket);
    if (block_at(d, pos.off)->u.entry.expire_ms != 0)
        d->ttl_entries--;
    arena_free(d, pos.off);
    d->entries--;
    op_end(rs);
}

void resize_detach(struct shmkv *kv)
{
    if (kv->rs == NULL)
        return;
    shmdt(kv->rs->data);
    free(kv->rs);
    kv->rs = NULL;
}

/* This writer's view of the segment the resize under way fills, attached
 * on first use; NULL if it cannot be attached or is not sane. */
static struct shmkv *shadow_of(struct shmkv *kv)
{
    const struct ctl_header *c = kv->ctl;
    int shmid = atomic_load_explicit(&c->resize_shmid, memory_order_relaxed);
    uint64_t gen = atomic_load_explicit(&c->resize_gen, memory_order_relaxed);
    if (kv->rs != NULL && kv->rs->data_shmid == shmid && kv->rs->gen == gen)
        return kv->rs;
    resize_detach(kv);
    void *addr;
    uint64_t bytes;
    if (segment_attach(shmid, false, &addr, &bytes) != 0)
        return NULL;
    struct shmkv *rs = malloc(sizeof *rs);
    if (rs == NULL || data_validate(kv, addr, bytes, (uint32_t)gen) != 0) {
        free(rs);
        shmdt(addr);
        return NULL;
    }
    *rs = *kv;
    rs->rs = NULL;
    handle_bind_data(rs, addr, shmid, CURRENT_MAKE(gen, shmid));
    kv->rs = rs;
    return rs;
}

static void resize_clear(struct ctl_header *c)
{
    atomic_store(&c->resize_why, 0);
    atomic_store(&c->resize_shmid, -1);
    atomic_store(&c->resize_from, -1);
    atomic_store(&c->resize_pid, 0);
    atomic_store(&c->resize_bytes, 0);
    atomic_store(&c->resize_done, 0);
    atomic_store(&c->resize_total, 0);
    atomic_store(&c->resize_state, RESIZE_NONE);
}

void resize_abort_locked(struct shmkv *kv, unsigned why)
{
    struct ctl_header *c = kv->ctl;
    uint32_t st = atomic_load(&c->resize_state);
    if (st != RESIZE_CREATING && st != RESIZE_COPYING)
        return;
    /* Switched already: its resizer died before saying so; the resize
     * stands (resize_reap finishes it). */
    uint64_t cur = atomic_load(&c->current);
    if (st == RESIZE_COPYING && !(cur & CURRENT_CLOSED) &&
        CURRENT_SHMID(cur) == atomic_load(&c->resize_shmid))
        return;
    atomic_store(&c->resize_why, why);
    atomic_store(&c->resize_state, RESIZE_ABORTED);
    event_log(c, SHMKV_EVENT_RESIZE_ABORTED, atomic_load(&c->resize_pid), 0,
              why);
}

/* True if this writer is on the segment being filled: a resizer that died
 * after the switch left the state behind (resize_tend clears it). */
static bool on_new_segment(const struct shmkv *kv)
{
    return kv->data_shmid == atomic_load(&kv->ctl->resize_shmid);
}

/* The segment this writer's change is to be made in too, or NULL when no
 * resize is copying (or the resize was given up: it could not be
 * attached). */
static struct shmkv *mirror_target(struct shmkv *kv)
{
    if (!resize_copying(kv) || on_new_segment(kv))
        return NULL;
    struct shmkv *rs = shadow_of(kv);
    if (rs == NULL)
        resize_abort_locked(kv, RESIZE_WHY_ATTACH);
    return rs;
}

void resize_mirror(struct shmkv *kv, uint32_t off, bool removed)
{
    struct shmkv *rs = mirror_target(kv);
    if (rs == NULL)
        return;
    uint64_t s = SLOT_MAKE(0, off);
    if (!entry_sane(kv, s))
        return; /* damage: the check pass reports it */
    const struct block *e = block_at(kv->data, off);
    if (removed) {
        shadow_del(rs, entry_key(e), e->klen);
    } else if (shadow_put(rs, e, false) != 0) {
        /* The live data grew past the new size. */
        resize_abort_locked(kv, RESIZE_WHY_FULL);
    }
}

void resize_mirror_flush(struct shmkv *kv)
{
    struct shmkv *rs = mirror_target(kv);
    if (rs == NULL)
        return;
    op_begin(rs, WRITE_OP_GENERIC);
    flush_index(rs);
    arena_reset(rs);
    op_end(rs);
}

bool data_segment_of_store(int shmid, uint64_t nonce)
{
    void *addr = shmat(shmid, NULL, SHM_RDONLY);
    if (addr == (void *)-1)
        return false;
    struct shmid_ds ds;
    const struct data_header *d = addr;
    bool ours = shmctl(shmid, IPC_STAT, &ds) == 0 &&
                ds.shm_segsz >= sizeof *d &&
                d->layout_version == LAYOUT_VERSION && d->store_nonce == nonce;
    shmdt(addr);
    return ours;
}

/* True if shmid's header was never written: a data segment its maker died
 * before laying out. */
static bool segment_blank(int shmid)
{
    void *addr = shmat(shmid, NULL, SHM_RDONLY);
    if (addr == (void *)-1)
        return false;
    const struct data_header *d = addr;
    bool blank = d->layout_version == 0 && d->store_nonce == 0;
    shmdt(addr);
    return blank;
}

/* Removes segment shmid if it is a data segment of this store (the ids the
 * control header names are checked first: a damaged header must not make
 * a writer remove another store's segment). */
static int remove_ours(const struct shmkv *kv, int shmid)
{
    if (shmid < 0 || !data_segment_of_store(shmid, kv->store_nonce))
        return 0;
    return shmctl(shmid, IPC_RMID, NULL);
}

/* The segments a resizer that died made and did not name: IPC_PRIVATE,
 * created by its pid, of the size it was making, attached by no one, and
 * of this store (or never laid out). False if one is left that this
 * process may not remove. */
static bool orphans_remove(const struct shmkv *kv, int32_t pid, uint64_t bytes)
{
    if (pid <= 0)
        return true;
    FILE *f = fopen("/proc/sysvipc/shm", "re");
    if (f == NULL)
        return true;
    char line[512];
    if (fgets(line, sizeof line, f) == NULL) { /* the column names */
        fclose(f);
        return true;
    }
    bool all = true;
    while (fgets(line, sizeof line, f) != NULL) {
        long long key, size, cpid, lpid, nattch;
        int id;
        unsigned perms;
        if (sscanf(line, "%lld %d %o %lld %lld %lld %lld", &key, &id, &perms,
                   &size, &cpid, &lpid, &nattch) != 7)
            continue;
        if (key != 0 || cpid != pid || (uint64_t)size != bytes || nattch != 0)
            continue;
        if ((data_segment_of_store(id, kv->store_nonce) || segment_blank(id)) &&
            shmctl(id, IPC_RMID, NULL) != 0 && errno != EINVAL &&
            errno != EIDRM)
            all = false;
    }
    fclose(f);
    return all;
}

/* Removes what a resize whose resizer died left, if this process may;
 * true if the store is free of it. A resizer that died after its switch
 * had made the new segment the store's: then the old one is removed. */
static bool resize_reap(struct shmkv *kv)
{
    struct ctl_header *c = kv->ctl;
    int shmid = atomic_load(&c->resize_shmid);
    uint64_t cur = atomic_load(&c->current);
    if (shmid >= 0 && !(cur & CURRENT_CLOSED) && CURRENT_SHMID(cur) == shmid) {
        int from = atomic_load(&c->resize_from);
        if (from != shmid && remove_ours(kv, from) != 0 && errno != EINVAL &&
            errno != EIDRM)
            return false;
        atomic_fetch_add(&c->resizes, 1);
        resize_detach(kv);
        resize_clear(c);
        return true;
    }
    if (shmid >= 0) {
        if (shmid != kv->data_shmid && remove_ours(kv, shmid) != 0 &&
            errno != EINVAL && errno != EIDRM)
            return false; /* not ours to remove: the owner will */
    } else if (!orphans_remove(kv, atomic_load(&c->resize_pid),
                               atomic_load(&c->resize_bytes))) {
        return false; /* not ours to remove: the owner will */
    }
    resize_detach(kv);
    resize_clear(c);
    return true;
}

/* True while the resizer holds the writers' slot it noted: its liveness
 * semaphore says it lives, and the slot is still its own. */
static bool resizer_alive(const struct shmkv *kv)
{
    const struct ctl_header *c = kv->ctl;
    uint32_t slot = atomic_load(&c->resize_slot);
    if (slot >= c->max_clients)
        return false;
    /* This handle's own slot: a resize of its is alive only while it runs
     * (one that could not take the lock back gave up and left it). */
    if (kv->slot_writer && slot == kv->slot_index &&
        atomic_load(&c->resize_pid) == (int32_t)kv->pid)
        return kv->in_resize;
    const struct client_slot *s = writer_claims(kv) + slot;
    return atomic_load(&s->pid) == atomic_load(&c->resize_pid) &&
           liveness_alive(c, LIVE_WRITER, slot);
}

void resize_tend(struct shmkv *kv)
{
    struct ctl_header *c = kv->ctl;
    uint32_t st = atomic_load_explicit(&c->resize_state, memory_order_relaxed);
    if (st == RESIZE_NONE)
        return;
    /* Looked at now and then (shmkv_maintain and shmkv_resize at once):
     * it costs system calls, and a writer that may not remove what a
     * dead resizer left leaves it to the owner. */
    uint64_t now = monotonic_ms();
    if (kv->rs_checked_ms != 0 && now - kv->rs_checked_ms < RESIZE_TEND_MS)
        return;
    kv->rs_checked_ms = now;
    bool alive = resizer_alive(kv);
    if (st != RESIZE_ABORTED && alive)
        return;
    uint64_t cur = atomic_load(&c->current);
    bool switched = !(cur & CURRENT_CLOSED) &&
                    CURRENT_SHMID(cur) == atomic_load(&c->resize_shmid);
    if (st != RESIZE_ABORTED && !switched)
        resize_abort_locked(kv, RESIZE_WHY_RESIZER_DIED);
    /* The resizer removes its own segment when it lives; when it died,
     * whoever may does. */
    if (!alive)
        resize_reap(kv);
}

/* True if this process may remove the store's segments; *owner and *group
 * get the control segment's. */
static bool may_remove(const struct shmkv *kv, uid_t *owner, gid_t *group)
{
    struct shmid_ds ds;
    if (shmctl(kv->ctl_shmid, IPC_STAT, &ds) != 0)
        return false;
    *owner = ds.shm_perm.uid;
    *group = ds.shm_perm.gid;
    uid_t me = geteuid();
    return me == 0 || me == ds.shm_perm.uid || me == ds.shm_perm.cuid;
}

/* Gives a segment the store's owner and group (the control segment's). */
static int segment_give(int shmid, uid_t uid, gid_t gid)
{
    struct shmid_ds ds;
    if (shmctl(shmid, IPC_STAT, &ds) != 0)
        return set_errno_error(SHMKV_ESYS, "shmctl(IPC_STAT)");
    ds.shm_perm.uid = uid;
    ds.shm_perm.gid = gid;
    if (shmctl(shmid, IPC_SET, &ds) != 0)
        return set_errno_error(SHMKV_ESYS, "giving the new segment to the "
                                           "store's owner");
    return 0;
}

/* The size and index a resize to size_bytes for max_entries makes, and
 * whether the live data fits them: *d gets the new layout. */
static int resize_plan(struct shmkv *kv, uint64_t *bytes, uint64_t *entries,
                       struct data_header *plan)
{
    const struct ctl_header *c = kv->ctl;
    const struct data_header *d = kv->data;
    uint64_t page = c->huge_pages != SHMKV_HUGE_NO && huge_page_bytes() != 0
                        ? huge_page_bytes()
                        : page_bytes();
    *bytes = (*bytes + page - 1) / page * page;
    if (*entries > *bytes / UNIT_BYTES)
        return set_error(SHMKV_EINVAL,
                         "max entries %llu: more than one per 16 bytes of "
                         "%llu",
                         (unsigned long long)*entries,
                         (unsigned long long)*bytes);
    if (*entries == 0) {
        /* As many per byte as the store was made with. */
        unsigned __int128 e = (unsigned __int128)c->max_entries * *bytes;
        *entries = (uint64_t)(e / (c->data_bytes ? c->data_bytes : 1));
        if (*entries == 0)
            *entries = 1;
    }
    memset(plan, 0, sizeof *plan);
    data_layout(plan, *bytes, buckets_for_entries(*entries), c->max_key_bytes);
    plan->max_load = plan->nbuckets * BUCKET_SLOTS * MAX_LOAD_PERCENT / 100;
    if (plan->arena_off > *bytes / 2)
        return set_error(SHMKV_EINVAL,
                         "an index for %llu entries would take over half of "
                         "%llu bytes",
                         (unsigned long long)*entries,
                         (unsigned long long)*bytes);
    uint64_t limbo = d->flush_epoch != 0 ? d->used_units : d->limbo_units;
    uint64_t live = d->used_units > limbo ? d->used_units - limbo : 0;
    if (d->entries > plan->max_load / 100 * RESIZE_FILL_PERCENT ||
        live > plan->arena_units / 100 * RESIZE_FILL_PERCENT)
        return set_error(
            SHMKV_ENOSPC,
            "a store of %llu bytes cannot hold what this one "
            "holds now: %llu entries (it takes %llu) in %llu "
            "bytes (it has room for %llu)",
            (unsigned long long)*bytes, (unsigned long long)d->entries,
            (unsigned long long)plan->max_load,
            (unsigned long long)(live * UNIT_BYTES),
            (unsigned long long)(plan->arena_units / 100 * RESIZE_FILL_PERCENT *
                                 UNIT_BYTES));
    return 0;
}

/* Copies buckets [from, to) of the current index into rs; the first error
 * (SHMKV_ENOSPC) stops it. The walk is a pipeline: the bucket PF_BUCKET
 * ahead is asked for, the entries of the one PF_ENTRY ahead, and the new
 * index's buckets for those of the one PF_TARGET ahead, so that their
 * cache misses overlap the copying of this one. */
#define PF_BUCKET 8u
#define PF_ENTRY 4u
#define PF_TARGET 2u
static int copy_buckets(struct shmkv *kv, struct shmkv *rs, uint64_t from,
                        uint64_t to)
{
    uint64_t now = clock_unix_ms();
    for (uint64_t b = from; b < to; b++) {
        if (b + PF_BUCKET < to)
            __builtin_prefetch(&kv->buckets[b + PF_BUCKET]);
        if (b + PF_ENTRY < to) {
            const struct bucket *ahead = &kv->buckets[b + PF_ENTRY];
            for (unsigned i = 0; i < BUCKET_SLOTS; i++) {
                uint64_t s =
                    atomic_load_explicit(&ahead->slot[i], memory_order_relaxed);
                if (SLOT_OFF(s) != 0 && slot_in_arena(kv, s))
                    __builtin_prefetch(block_at(kv->data, SLOT_OFF(s)));
            }
        }
        if (b + PF_TARGET < to) {
            const struct bucket *ahead = &kv->buckets[b + PF_TARGET];
            for (unsigned i = 0; i < BUCKET_SLOTS; i++) {
                uint64_t s =
                    atomic_load_explicit(&ahead->slot[i], memory_order_relaxed);
                if (!entry_sane(kv, s))
                    continue;
                const struct block *e = block_at(kv->data, SLOT_OFF(s));
                uint64_t h = key_hash(entry_key(e), e->klen, rs->seed);
                __builtin_prefetch(&rs->buckets[table_home(rs->nbuckets, h)]);
            }
        }
        for (unsigned i = 0; i < BUCKET_SLOTS; i++) {
            uint64_t s = atomic_load_explicit(&kv->buckets[b].slot[i],
                                              memory_order_relaxed);
            if (!entry_sane(kv, s))
                continue;
            const struct block *e = block_at(kv->data, SLOT_OFF(s));
            uint64_t at = e->u.entry.expire_ms;
            if (at != 0 && at <= now)
                continue;
            int rc = shadow_put(rs, e, true);
            if (rc != 0)
                return rc;
        }
    }
    return 0;
}

/* True if a writer waits for the write lock now. */
static bool writers_waiting(const struct shmkv *kv)
{
    const struct writer_slot *w = writer_slots(kv);
    uint32_t n = atomic_load(&kv->ctl->writers_hwm);
    if (n > kv->ctl->max_clients)
        n = kv->ctl->max_clients;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t st =
            atomic_load_explicit(&w[i].lock_state, memory_order_relaxed);
        if (LOCK_STATE_MODE(st) == LOCK_WAIT_WRITE && &w[i] != kv->wslot)
            return true;
    }
    return false;
}

/* Ends the resize under way, ours, after its last slice: the new segment
 * becomes the store's. */
static bool resize_switch(struct shmkv *kv, struct shmkv *rs, uint64_t ms)
{
    struct ctl_header *c = kv->ctl;
    int old = kv->data_shmid;
    /* From the word this handle is on, and only from it: a close sets its
     * bit without the lock, and must not be undone. */
    uint64_t want = kv->current;
    if (!atomic_compare_exchange_strong_explicit(
            &c->current, &want, CURRENT_MAKE(rs->gen, rs->data_shmid),
            memory_order_seq_cst, memory_order_seq_cst))
        return false;
    TEST_POINT("resize:switched");
    shmctl(old, IPC_RMID, NULL);
    TEST_POINT("resize:removed");
    resize_clear(c);
    atomic_fetch_add(&c->resizes, 1);
    event_log(c, SHMKV_EVENT_RESIZED, (int32_t)kv->pid, ms, rs->data_bytes);
    return true;
}

/* Between slices: when writers wait, as long as the slice took, so that
 * they get the lock half of the time; else at once. */
static void slice_gap(bool writers, uint64_t slice_us)
{
    if (!writers)
        return;
    if (slice_us < RESIZE_GAP_US)
        slice_us = RESIZE_GAP_US;
    if (slice_us > 100000u)
        slice_us = 100000u;
    struct timespec ts = {(time_t)(slice_us / 1000000u),
                          (long)(slice_us % 1000000u) * 1000L};
    nanosleep(&ts, NULL);
}

/* Under the write lock: the resize we began is still ours to go on with
 * (else it was given up: SHMKV_EAGAIN, or SHMKV_ENOSPC if a writer found
 * the new size full). */
static int still_ours(struct shmkv *kv, uint32_t want, int shmid)
{
    struct ctl_header *c = kv->ctl;
    if (atomic_load(&c->resize_state) == want &&
        atomic_load(&c->resize_pid) == (int32_t)kv->pid &&
        (shmid < 0 || atomic_load(&c->resize_shmid) == shmid))
        return 0;
    if (atomic_load(&c->resize_state) == RESIZE_ABORTED &&
        atomic_load(&c->resize_why) == RESIZE_WHY_FULL)
        return set_error(SHMKV_ENOSPC,
                         "the store's live data grew past the new size "
                         "during the resize; the store is as it was");
    return set_error(SHMKV_EAGAIN,
                     "the resize was given up: a writer died during it; "
                     "the store is as it was (try again)");
}

/* Takes the write lock again during a resize, on the same store: a
 * timeout is tried again a few times (a resize left half-done holds every
 * writer to mirroring), the store closed or replaced is an error. */
static int relock(struct shmkv *kv, const struct ctl_header *c)
{
    int rc;
    for (int attempt = 0;; attempt++) {
        kv->deadline_ms = kv->wait_ms = 0;
        rc = lock_take(kv, true);
        if (rc == 0 && kv->ctl != c) {
            /* Re-attached to another store at the key: ours is gone. */
            lock_release(kv);
            return set_error(SHMKV_ECLOSED,
                             "the store was closed during the resize");
        }
        if (rc != SHMKV_ETIMEDOUT || attempt == 3)
            return rc;
    }
}

/* Removes the segment a resize made and forgets the resize, if it is still
 * this handle's; under the lock. */
static void resize_drop(struct shmkv *kv, int shmid)
{
    struct ctl_header *c = kv->ctl;
    if (shmid >= 0)
        shmctl(shmid, IPC_RMID, NULL);
    resize_detach(kv);
    if (atomic_load(&c->resize_pid) == (int32_t)kv->pid &&
        atomic_load(&c->resize_slot) == kv->slot_index)
        resize_clear(c);
}

int shmkv_resize(struct shmkv *kv, uint64_t size_bytes, uint64_t max_entries,
                 int (*progress)(void *arg, uint64_t done, uint64_t total),
                 void *arg)
{
    if (kv == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle");
    if (kv->forked)
        return refuse_forked(kv);
    if (kv->rdonly)
        return set_error(SHMKV_ERDONLY, "the handle is read-only");
    if (kv->in_read || kv->in_write)
        return set_error(SHMKV_ESTATE,
                         "a resize inside a read or write section");
    if (size_bytes < (1u << 20) || size_bytes > (64ull << 30))
        return set_error(SHMKV_EINVAL,
                         "size %llu bytes: must be 1 MiB to 64 GiB",
                         (unsigned long long)size_bytes);
    uid_t owner = 0;
    gid_t group = 0;
    if (!may_remove(kv, &owner, &group))
        return set_error(SHMKV_EACCES,
                         "only the store's owner (uid %u) or root may resize "
                         "it: ask shmkvd (shmkvctl resize)",
                         (unsigned)owner);
    uint64_t started = monotonic_ms();

    /* Plan it, and note ourselves. */
    kv->deadline_ms = kv->wait_ms = 0;
    int rc = lock_take(kv, true);
    if (rc != 0)
        return rc;
    struct ctl_header *c = kv->ctl;
    kv->rs_checked_ms = 0;
    resize_tend(kv); /* a dead resizer's, or one of ours left half-done */
    if (atomic_load(&c->resize_state) != RESIZE_NONE) {
        int32_t pid = atomic_load(&c->resize_pid);
        lock_release(kv);
        return set_error(SHMKV_EBUSY, "a resize is under way (pid %d)",
                         (int)pid);
    }
    uint64_t bytes = size_bytes, entries = max_entries;
    struct data_header plan;
    rc = resize_plan(kv, &bytes, &entries, &plan);
    if (rc == 0 && bytes == kv->data_bytes && plan.nbuckets == kv->nbuckets) {
        lock_release(kv); /* already that size: nothing to copy */
        return 0;
    }
    if (rc != 0) {
        lock_release(kv);
        return rc;
    }
    uint32_t gen = kv->gen + 1;
    if (gen > 0x7fffffffu) {
        lock_release(kv);
        return set_error(SHMKV_ELIMIT, "the store has used every generation "
                                       "number");
    }
    kv->in_resize = true;
    atomic_store(&c->resize_pid, (int32_t)kv->pid);
    atomic_store(&c->resize_slot, kv->slot_index);
    atomic_store(&c->resize_bytes, bytes);
    atomic_store(&c->resize_gen, gen);
    atomic_store(&c->resize_shmid, -1);
    atomic_store(&c->resize_done, 0);
    atomic_store(&c->resize_total, kv->nbuckets);
    atomic_store(&c->resize_state, RESIZE_CREATING);
    lock_release(kv);

    /* Make the segment, outside the lock: zeroing it takes a while. */
    uint64_t seed;
    if (getrandom(&seed, sizeof seed, 0) != sizeof seed)
        seed = handle_random(kv) * 0xff51afd7ed558ccdull;
    int shmid = -1;
    struct data_header *nd = NULL;
    rc = data_segment_make(c, gen, seed, bytes, entries, &shmid, &nd);
    if (rc == 0) {
        rc = segment_give(shmid, owner, group);
        TEST_POINT("resize:created");
        /* Its pages made now, not by the slices under the lock. */
        for (uint64_t at = 0; rc == 0 && at < bytes; at += nd->page_bytes) {
            volatile char *page = (volatile char *)nd + at;
            char was = *page;
            *page = was; /* a write: the page made, not the zero page */
        }
        shmdt(nd);
    }

    /* Name it: writers apply their changes to it from now on. */
    int lrc = relock(kv, c);
    if (lrc != 0) {
        if (shmid >= 0)
            shmctl(shmid, IPC_RMID, NULL);
        kv->in_resize = false; /* a live writer gives the state up */
        return lrc;
    }
    if (rc == 0)
        rc = still_ours(kv, RESIZE_CREATING, -1);
    if (rc != 0) {
        resize_drop(kv, shmid);
        kv->in_resize = false;
        lock_release(kv);
        return rc;
    }
    atomic_store(&c->resize_from, kv->data_shmid);
    atomic_store(&c->resize_shmid, shmid);
    atomic_store(&c->resize_state, RESIZE_COPYING);
    TEST_POINT("resize:named");

    /* Copy in slices, switch in the last. */
    uint64_t next = 0;
    for (;;) {
        struct shmkv *rs = shadow_of(kv);
        if (rs == NULL) {
            resize_abort_locked(kv, RESIZE_WHY_ATTACH);
            rc = set_error(SHMKV_ESYS, "the new segment cannot be attached");
            break;
        }
        uint64_t t0 = monotonic_us();
        uint64_t total = kv->nbuckets;
        while (next < total) {
            uint64_t to = next + 16 < total ? next + 16 : total;
            rc = copy_buckets(kv, rs, next, to);
            if (rc != 0)
                break;
            next = to;
            if (monotonic_us() - t0 >= RESIZE_SLICE_MS * 1000u)
                break;
        }
        uint64_t slice_us = monotonic_us() - t0;
        if (rc != 0) {
            resize_abort_locked(kv, RESIZE_WHY_FULL);
            rc = set_error(SHMKV_ENOSPC,
                           "the store's live data grew past %llu bytes "
                           "during the resize; the store is as it was",
                           (unsigned long long)bytes);
            break;
        }
        atomic_store(&c->resize_done, next);
        TEST_POINT("resize:slice");
        if (next == total) {
            if (!resize_switch(kv, rs, monotonic_ms() - started)) {
                rc = set_error(SHMKV_ECLOSED,
                               "the store was closed during the resize");
                break;
            }
            resize_detach(kv);
            kv->in_resize = false;
            lock_release(kv);
            /* Let go of the old segment now: it is freed once the last
             * process attached to it has followed. */
            generation_refresh(kv);
            if (progress != NULL)
                progress(arg, total, total);
            return 0;
        }
        bool waiting = writers_waiting(kv);
        lock_release(kv);
        if (progress != NULL && progress(arg, next, total) != 0) {
            rc = set_error(SHMKV_EAGAIN, "the resize was cancelled; the "
                                         "store is as it was");
            if (relock(kv, c) != 0)
                break; /* left to resize_tend */
            resize_abort_locked(kv, RESIZE_WHY_CANCELLED);
            resize_drop(kv, shmid);
            kv->in_resize = false;
            lock_release(kv);
            return rc;
        }
        slice_gap(waiting, slice_us);
        rc = relock(kv, c);
        if (rc != 0) {
            kv->in_resize = false; /* a live writer gives the state up */
            return rc;
        }
        rc = still_ours(kv, RESIZE_COPYING, shmid);
        if (rc != 0)
            break;
    }
    if (kv->lock != NULL) {
        /* Given up: remove what we made. */
        resize_drop(kv, shmid);
        lock_release(kv);
    }
    kv->in_resize = false;
    return rc;
}
