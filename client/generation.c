/*
 * generation.c - following the store's data segment.
 *
 * ctl_header.current names the live data segment and its generation in one
 * 64-bit word. Every operation compares it with the word the handle last
 * attached from (one load of a line that almost never changes) and
 * re-attaches when it moved: when the store was closed, or when its data
 * segment was replaced. A process that dies is not a reason to replace it:
 * recovery repairs the one segment in place (lock.c, intent.c).
 */
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <time.h>

#include "internal.h"

int data_validate(const struct shmkv *kv, const struct data_header *d,
                  uint64_t bytes, uint32_t gen)
{
    if (bytes < sizeof *d || memcmp(d->magic, DATA_MAGIC, 8) != 0 ||
        d->layout_version != LAYOUT_VERSION)
        return set_error(SHMKV_ENOTSHMKV, "data segment is not a shmkv one");
    uint64_t arena_end = d->arena_off + (d->arena_units + 1) * UNIT_BYTES;
    /* The nonce as the handle attached the control header, not as the
     * header says now. */
    if (d->store_nonce != kv->store_nonce)
        return set_error(SHMKV_ENOTSHMKV, "the data segment the store names "
                                          "belongs to another store");
    /* Counts bounded by the segment first, so that no sum below wraps. */
    if (d->index_off > bytes || d->limbo_off > bytes || d->undo_off > bytes ||
        d->arena_off > bytes || d->nbuckets > bytes / CACHE_LINE ||
        d->limbo_slots > bytes / 8 || d->undo_slots > bytes / 16 ||
        d->arena_units > bytes / UNIT_BYTES)
        return set_error(SHMKV_ENOTSHMKV, "data segment header is damaged");
    if (d->generation != gen || d->data_bytes > bytes || d->nbuckets < 2 ||
        d->page_bytes == 0 || (d->page_bytes & (d->page_bytes - 1)) ||
        d->index_off % CACHE_LINE != 0 || d->limbo_off % 8 != 0 ||
        d->undo_off % 8 != 0 || d->arena_off % UNIT_BYTES != 0 ||
        d->index_off < sizeof *d ||
        d->index_off + index_bytes_for(d->nbuckets) > d->limbo_off ||
        d->limbo_slots == 0 || (d->limbo_slots & (d->limbo_slots - 1)) ||
        d->limbo_off + d->limbo_slots * 8 > d->undo_off ||
        d->undo_off + d->undo_slots * sizeof(struct undo_rec) > d->arena_off ||
        arena_end + kv->max_key_bytes > bytes ||
        arena_end / UNIT_BYTES > UINT32_MAX)
        return set_error(SHMKV_ENOTSHMKV, "data segment header is damaged");
    return 0;
}

void handle_bind_data(struct shmkv *kv, struct data_header *d, int shmid,
                      uint64_t current)
{
    kv->data = d;
    kv->data_shmid = shmid;
    kv->current = current;
    kv->gen = (uint32_t)CURRENT_GEN(current);
    kv->buckets = (struct bucket *)((char *)d + d->index_off);
    kv->nbuckets = d->nbuckets;
    kv->seed = d->seed;
    kv->arena_first = (uint32_t)(d->arena_off / UNIT_BYTES);
    kv->arena_units = (uint32_t)d->arena_units;
    kv->read_end_bytes = d->arena_off + d->arena_units * UNIT_BYTES;
    kv->read_end = (const char *)d + kv->read_end_bytes;
    kv->data_bytes = d->data_bytes;
    kv->limbo_slots = d->limbo_slots;
    kv->undo_slots = d->undo_slots;
    memcpy(kv->data_fixed, d, DATA_FIXED_BYTES);
}

int data_intact(const struct shmkv *kv)
{
    if (memcmp(kv->data_fixed, kv->data, DATA_FIXED_BYTES) == 0)
        return 0;
    return set_error(SHMKV_ECORRUPT,
                     "the data segment's header (identity and geometry) "
                     "changed since it was attached: the store is damaged; "
                     "writes are refused");
}

int generation_follow(struct shmkv *kv)
{
    if (kv->reattach && !kv->in_read && !kv->forked &&
        (atomic_load_explicit(&kv->ctl->current, memory_order_acquire) &
         CURRENT_CLOSED)) {
        int rc = handle_reattach(kv);
        if (rc != 0)
            return rc;
    }
    return generation_refresh(kv);
}

int generation_refresh(struct shmkv *kv)
{
    if (kv->forked)
        return refuse_forked(kv);
    for (int attempt = 0; attempt < 100; attempt++) {
        uint64_t cur =
            atomic_load_explicit(&kv->ctl->current, memory_order_acquire);
        if ((cur & CURRENT_CLOSED) && !kv->closer)
            return set_error(SHMKV_ECLOSED, "the store was closed");
        if (cur == kv->current && kv->data != NULL)
            return 0;
        /* Re-attached to a new store whose slots were all taken then. */
        if (kv->slot == NULL) {
            int rc = client_slot_claim(kv);
            if (rc != 0)
                return rc;
        }
        if (kv->data != NULL) {
            shmdt(kv->data);
            kv->data = NULL;
            kv->current = 0;
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
