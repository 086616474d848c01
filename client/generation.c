/*
 * generation.c - following and replacing the store's data segment.
 *
 * ctl_header.current names the live data segment and its generation in one
 * 64-bit word. Every operation compares it with the word the handle last
 * attached from (one load of a line that almost never changes) and
 * re-attaches when it moved.
 *
 * Recovery. When a process died holding (or queued on) a generation's lock,
 * that lock is unusable. The data is not: writes are crash-consistent, so
 * the index still leads only to whole entries. generation_recover() copies
 * every live entry into a new data segment with a fresh lock, publishes it
 * with one store of `current`, and removes the old segment, which the kernel
 * frees when its last reader detaches. Readers still inside a section on
 * the old generation finish reading a frozen copy; acknowledged writes are
 * all in the index, so none is lost.
 *
 * No live writer may change the old generation while it is copied. The
 * recoverer stores recover_gen, then waits until no live client slot says
 * it holds that generation's write lock; a writer takes the lock, stores
 * LOCKING_WRITE_HELD in its lock_state, then loads recover_gen. Both sides use
 * seq_cst, so at least one of them sees the other (the store-buffer litmus
 * test): the writer backs off, or the recoverer waits for it to finish.
 */
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <time.h>

#include "hash.h"
#include "table.h"

static int data_validate(const struct shmkv *kv, const struct data_header *d,
                         uint64_t bytes, uint32_t gen)
{
    if (bytes < sizeof *d || memcmp(d->magic, DATA_MAGIC, 8) != 0 ||
        d->layout_version != LAYOUT_VERSION)
        return set_error(SHMKV_ENOTSHMKV, "data segment is not a shmkv one");
    if (d->generation != gen || d->data_bytes > bytes ||
        d->index_off + index_bytes_for(d->nbuckets) > d->arena_off ||
        d->arena_off + (d->arena_units + 1) * UNIT_BYTES > bytes ||
        (d->arena_off + (d->arena_units + 1) * UNIT_BYTES) / UNIT_BYTES >
            UINT32_MAX)
        return set_error(SHMKV_ENOTSHMKV, "data segment header is damaged");
    (void)kv;
    return 0;
}

static void handle_bind_data(struct shmkv *kv, struct data_header *d, int shmid,
                             uint64_t current)
{
    struct lock_slot *locks =
        (struct lock_slot *)((char *)kv->ctl + kv->ctl->locks_off);
    kv->data = d;
    kv->data_shmid = shmid;
    kv->current = current;
    kv->gen = (uint32_t)CURRENT_GEN(current);
    kv->buckets = (struct bucket *)((char *)d + d->index_off);
    kv->nbuckets = d->nbuckets;
    kv->seed = d->seed;
    kv->lock = &locks[kv->gen % LOCK_SLOTS].rwlock;
    kv->writer = &locks[kv->gen % LOCK_SLOTS].writer;
}

int generation_refresh(struct shmkv *kv)
{
    for (int attempt = 0; attempt < 100; attempt++) {
        uint64_t cur =
            atomic_load_explicit(&kv->ctl->current, memory_order_acquire);
        if ((cur & CURRENT_CLOSED) && !kv->closer)
            return set_error(SHMKV_ECLOSED, "the store was closed");
        if (cur == kv->current && kv->data != NULL)
            return 0;
        if (kv->data != NULL) {
            shmdt(kv->data);
            kv->data = NULL;
        }
        void *addr;
        uint64_t bytes;
        int rc = segment_attach(CURRENT_SHMID(cur), kv->rdonly, &addr, &bytes);
        if (rc == SHMKV_ENOSTORE) {
            /* Replaced between the load and the attach: look again. */
            struct timespec pause = {0, 100000};
            nanosleep(&pause, NULL);
            continue;
        }
        if (rc != 0)
            return rc;
        rc = data_validate(kv, addr, bytes, (uint32_t)CURRENT_GEN(cur));
        if (rc != 0) {
            shmdt(addr);
            return rc;
        }
        handle_bind_data(kv, addr, CURRENT_SHMID(cur), cur);
    }
    return set_error(SHMKV_ENOSTORE, "the store's data segment is gone");
}

/* Copies the live, unexpired entries of old into the fresh generation
 * behind nv, validating everything it reads: a dead writer's segment. */
static void copy_entries(const struct shmkv *kv, const struct data_header *old,
                         struct shmkv *nv)
{
    const struct bucket *ob =
        (const struct bucket *)((const char *)old + old->index_off);
    uint32_t first = (uint32_t)(old->arena_off / UNIT_BYTES);
    uint32_t end = first + (uint32_t)old->arena_units;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct data_header *d = nv->data;
    for (uint64_t b = 0; b < old->nbuckets; b++) {
        for (unsigned i = 0; i < BUCKET_SLOTS; i++) {
            uint64_t s =
                atomic_load_explicit(&ob[b].slot[i], memory_order_acquire);
            uint32_t off = SLOT_OFF(s);
            if (off < first || off >= end)
                continue;
            const struct block *e = block_at(old, off);
            if (!(e->flags & BLOCK_USED) || e->klen == 0 ||
                e->klen > kv->max_key_bytes ||
                e->u.entry.vlen > kv->max_value_bytes ||
                e->size_units > end - off ||
                entry_units(e->klen, e->u.entry.vlen) > e->size_units)
                continue;
            if (e->u.entry.expire_unix != 0 &&
                e->u.entry.expire_unix <= (uint64_t)now.tv_sec)
                continue;
            uint64_t hash = key_hash(entry_key(e), e->klen, nv->seed);
            struct table_pos pos;
            table_find(nv, hash, entry_key(e), e->klen, &pos);
            if (pos.off != 0 || d->entries >= d->max_load)
                continue;
            uint32_t units = entry_units(e->klen, e->u.entry.vlen);
            uint32_t noff = arena_alloc(d, units);
            if (noff == 0)
                continue;
            struct block *n = block_at(d, noff);
            n->klen = e->klen;
            n->u.entry = e->u.entry;
            memcpy((char *)(n + 1), entry_key(e),
                   (size_t)e->klen + e->u.entry.vlen);
            table_insert(nv, hash, noff);
            d->entries++;
            if (n->u.entry.expire_unix != 0)
                d->ttl_entries++;
        }
    }
}

/* True if a live process other than this handle holds generation gen's
 * write lock. A writer still waiting for it need not be waited for: once it
 * has the lock it stores LOCKING_WRITE_HELD, then loads recover_gen (both
 * seq_cst), and backs off. (Waiting for it could be forever: a waiter can
 * be stuck in glibc on a lock a dead process left half handed over, which
 * only the end of this recovery settles.) */
static bool live_writer_in(struct shmkv *kv, uint32_t gen)
{
    struct client_slot *slots =
        (struct client_slot *)((char *)kv->ctl + kv->ctl->clients_off);
    for (uint32_t i = 0; i < kv->ctl->max_clients; i++) {
        struct client_slot *s = &slots[i];
        if (s == kv->slot ||
            atomic_load_explicit(&s->lock_state, memory_order_seq_cst) !=
                LOCK_STATE(gen, LOCKING_WRITE_HELD))
            continue;
        int32_t pid = atomic_load(&s->pid);
        if (pid > 0 && process_alive(pid, atomic_load(&s->start_ticks)))
            return true;
    }
    return false;
}

/* Claims the right to recover. Returns 0 when claimed, SHMKV_ETIMEDOUT
 * when a live process is recovering already. Takes over from a dead
 * recoverer, removing the segment it was building. */
static int recovery_claim(struct shmkv *kv)
{
    struct ctl_header *c = kv->ctl;
    int32_t holder = 0;
    if (atomic_compare_exchange_strong(&c->recover_pid, &holder,
                                       (int32_t)kv->pid))
        goto claimed;
    /* A claimant stores its start time just after its pid: until then the
     * time is its predecessor's and a live claimant looks dead. Reading
     * the time again after the (slow) liveness check closes that window. */
    uint64_t ticks = atomic_load(&c->recover_start_ticks);
    if (holder == (int32_t)kv->pid || process_alive(holder, ticks) ||
        atomic_load(&c->recover_start_ticks) != ticks)
        return SHMKV_ETIMEDOUT;
    if (!atomic_compare_exchange_strong(&c->recover_pid, &holder,
                                        (int32_t)kv->pid))
        return SHMKV_ETIMEDOUT;
    uint64_t cur = atomic_load(&c->current);
    int half = atomic_exchange(&c->recover_shmid, -1);
    if (half >= 0 && half != CURRENT_SHMID(cur))
        shmctl(half, IPC_RMID, NULL);
    int retired = atomic_exchange(&c->retired_shmid, -1);
    if (retired >= 0 && retired != CURRENT_SHMID(cur))
        shmctl(retired, IPC_RMID, NULL);
claimed:
    atomic_store(&c->recover_start_ticks, kv->start_ticks);
    return 0;
}

int generation_recover(struct shmkv *kv, uint32_t from_gen)
{
    struct ctl_header *c = kv->ctl;
    int rc = recovery_claim(kv);
    if (rc != 0)
        return rc;
    uint64_t cur = atomic_load(&c->current);
    if ((cur & CURRENT_CLOSED) || CURRENT_GEN(cur) != from_gen ||
        cur != kv->current) {
        rc = SHMKV_ERETRY;
        goto release;
    }
    atomic_store_explicit(&c->recover_gen, from_gen, memory_order_seq_cst);
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (live_writer_in(kv, from_gen)) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - start.tv_sec) * 1000 +
                (now.tv_nsec - start.tv_nsec) / 1000000 >
            (long)kv->lock_timeout_ms) {
            rc = set_error(SHMKV_ETIMEDOUT,
                           "a live writer kept the store from recovering");
            goto unflag;
        }
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL);
    }

    uint32_t new_gen = from_gen % 0x7fffffffu + 1;
    int new_id;
    struct data_header *nd;
    rc = data_segment_make(c, new_gen, kv->seed, &c->recover_shmid, &new_id,
                           &nd);
    if (rc != 0)
        goto unflag;

    struct shmkv nv = *kv;
    nv.data = nd;
    nv.buckets = (struct bucket *)((char *)nd + nd->index_off);
    nv.nbuckets = nd->nbuckets;
    copy_entries(kv, kv->data, &nv);
    shmdt(nd);

    /* The old segment is recorded before the new one is published, so that
     * if this process dies in between a successor removes whichever of the
     * two is not current. */
    int old_id = kv->data_shmid;
    atomic_store(&c->retired_shmid, old_id);
    atomic_store_explicit(&c->current, CURRENT_MAKE(new_gen, new_id),
                          memory_order_seq_cst);
    atomic_store(&c->recover_shmid, -1);
    /* Processes caught in the old lock by the dead one return to find the
     * new generation (lock.c). */
    lock_settle(kv->lock);
    atomic_fetch_add(&c->recoveries, 1);
    shmctl(old_id, IPC_RMID, NULL);
    atomic_store(&c->retired_shmid, -1);
    rc = 0;
unflag:
    atomic_store_explicit(&c->recover_gen, 0, memory_order_seq_cst);
release:
    atomic_store(&c->recover_pid, 0);
    if (rc == 0)
        client_slots_reap(kv);
    return rc;
}
