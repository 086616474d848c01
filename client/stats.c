/*
 * stats.c - statistics and the consistency check.
 *
 * Counters that every reader or writer bumps (hits, misses, sets, deletes,
 * lock waits) live in each handle's own client slot, so processes never
 * write the same cache line for them; stats sums the slots, plus what freed
 * slots left. Rarer counters live in the control header and survive
 * generations.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

void check_problem(struct shmkv_check_report *r, const char *fmt, ...)
{
    if (r->problems++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->first_problem, sizeof r->first_problem, fmt, ap);
        va_end(ap);
    }
}

int shmkv_stats(struct shmkv *kv, struct shmkv_stats *st)
{
    if (kv == NULL || st == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle or stats");
    if (kv->in_read)
        return set_error(SHMKV_ESTATE, "shmkv_stats inside a read section");
    int rc = shmkv_read_begin(kv);
    if (rc != 0)
        return rc;
    /* The counts below steer by both headers: never by damaged ones. */
    if ((rc = ctl_intact(kv)) != 0 || (rc = data_intact(kv)) != 0) {
        shmkv_read_end(kv);
        return rc;
    }
    const struct ctl_header *c = kv->ctl;
    const struct data_header *d = kv->data;
    memset(st, 0, sizeof *st);
    st->entries = d->entries;
    st->entries_with_ttl = d->ttl_entries;
    /* After a flush, until the arena is rebuilt, every used block is an
     * unlinked one. */
    uint64_t limbo = d->flush_epoch != 0 ? d->used_units : d->limbo_units;
    if (limbo > d->used_units)
        limbo = d->used_units;
    st->bytes_used = (d->used_units - limbo) * UNIT_BYTES;
    st->bytes_free = d->free_units * UNIT_BYTES;
    st->bytes_limbo = limbo * UNIT_BYTES;
    st->bytes_capacity = d->arena_units * UNIT_BYTES;
    st->largest_free = arena_largest_free(d);
    st->fragmentation =
        st->bytes_free ? 1.0 - (double)st->largest_free / (double)st->bytes_free
                       : 0.0;
    st->index_slots = d->nbuckets * BUCKET_SLOTS;
    st->segment_bytes = c->ctl_bytes + c->reader_bytes + kv->data_bytes;
    st->data_bytes = kv->data_bytes;
    st->data_page_bytes = d->page_bytes;
    st->huge_pages = (enum shmkv_huge_pages)c->huge_pages;
    st->evictions = atomic_load(&c->evictions);
    st->expirations = atomic_load(&c->expirations);
    st->recoveries = atomic_load(&c->recoveries);
    st->revocations = atomic_load(&c->revocations);
    st->dead_readers = atomic_load(&c->dead_readers);
    st->compactions = atomic_load(&c->compactions);
    st->compacted_bytes = atomic_load(&c->compacted_bytes);
    st->resizes = atomic_load(&c->resizes);
    if (atomic_load(&c->resize_state) == RESIZE_COPYING ||
        atomic_load(&c->resize_state) == RESIZE_CREATING) {
        st->resize_to_bytes = atomic_load(&c->resize_bytes);
        st->resize_done = atomic_load(&c->resize_done);
        st->resize_total = atomic_load(&c->resize_total);
    }
    /* Counters stay in their slots: every slot ever taken, including
     * readers' that writers have not looked at yet. */
    uint32_t n = clients_scan_limit(kv);
    uint32_t r = atomic_load(&reader_header_of(kv)->hwm);
    if (r > n)
        n = r < kv->max_clients ? r : kv->max_clients;
    uint32_t wn = writers_scan_limit(kv);
    uint32_t most = n > wn ? n : wn;
    uint8_t *alive = most > 0 ? malloc(most) : NULL;
    const struct client_slot *slots = client_slots(kv);
    bool known = alive != NULL && liveness_all(c, LIVE_READER, n, alive);
    for (uint32_t i = 0; i < n; i++) {
        if (atomic_load(&slots[i].pid) != 0 && (!known || alive[i]))
            st->clients++;
        st->hits += atomic_load(&slots[i].hits);
        st->misses += atomic_load(&slots[i].misses);
        st->stale_sections += atomic_load(&slots[i].stale);
    }
    const struct client_slot *wclaims = writer_claims(kv);
    const struct writer_slot *wslots = writer_slots(kv);
    known = alive != NULL && liveness_all(c, LIVE_WRITER, wn, alive);
    for (uint32_t i = 0; i < wn; i++) {
        if (atomic_load(&wclaims[i].pid) != 0 && (!known || alive[i])) {
            st->clients++;
            st->writers++;
        }
        st->hits += atomic_load(&wclaims[i].hits);
        st->misses += atomic_load(&wclaims[i].misses);
        st->stale_sections += atomic_load(&wclaims[i].stale);
        st->sets += atomic_load(&wslots[i].sets);
        st->deletes += atomic_load(&wslots[i].deletes);
        st->lock_waits += atomic_load(&wslots[i].lock_waits);
        st->lock_timeouts += atomic_load(&wslots[i].lock_timeouts);
    }
    free(alive);
    /* The reader chunks this handle can see: all of them from a writer,
     * its own user's from a reader. */
    chunks_follow(kv);
    for (uint32_t k = 0;
         kv->chunk_maps != NULL && k < kv->ctl_tail_fixed.chunk_count; k++) {
        const struct chunk_map *m = &kv->chunk_maps[k];
        if (m->slots == NULL)
            continue;
        for (uint32_t i = 0; i < CHUNK_SLOTS; i++) {
            if (atomic_load(&m->slots[i].pid) != 0 &&
                liveness_alive_at(m->semid, (unsigned short)i))
                st->clients++;
            st->hits += atomic_load(&m->slots[i].hits);
            st->misses += atomic_load(&m->slots[i].misses);
            st->stale_sections += atomic_load(&m->slots[i].stale);
        }
    }
    st->max_key_bytes = c->max_key_bytes;
    st->max_value_bytes = c->max_value_bytes;
    st->eviction = (enum shmkv_eviction)c->eviction;
    st->lock_timeout_ms = c->lock_timeout_ms;
    st->reader_timeout_ms = c->reader_timeout_ms;
    st->max_clients = c->max_clients;
    st->generation = kv->gen;
    st->owner_pid = atomic_load(&c->owner_pid);
    st->created_unix = c->created_unix;
    return shmkv_read_end(kv);
}

/* Takes limbo's blocks out of used_map (they are unlinked, not leaked) and
 * checks the ring's bookkeeping. */
static void limbo_check(const struct shmkv *kv, uint8_t *used_map,
                        struct shmkv_check_report *r)
{
    const struct data_header *d = kv->data;
    if (d->limbo_tail < d->limbo_head ||
        d->limbo_tail - d->limbo_head > d->limbo_slots) {
        check_problem(r, "limbo ring positions %llu..%llu are impossible",
                      (unsigned long long)d->limbo_head,
                      (unsigned long long)d->limbo_tail);
        return;
    }
    const uint64_t *ring = (const uint64_t *)((const char *)d + d->limbo_off);
    uint32_t first = (uint32_t)(d->arena_off / UNIT_BYTES);
    uint64_t units = 0;
    for (uint64_t p = d->limbo_head; p != d->limbo_tail; p++) {
        uint32_t off = LIMBO_OFF(ring[p & (d->limbo_slots - 1)]);
        uint64_t bit = (uint64_t)off - first;
        if (off < first || bit >= d->arena_units ||
            !(used_map[bit / 8] & (1u << (bit % 8)))) {
            check_problem(r, "limbo entry %llu: unit %u is not a used block",
                          (unsigned long long)p, off);
            continue;
        }
        used_map[bit / 8] &= (uint8_t) ~(1u << (bit % 8));
        units += block_at(d, off)->size_units;
        r->blocks_limbo++;
    }
    if (units != d->limbo_units)
        check_problem(r, "limbo holds %llu units, header says %llu",
                      (unsigned long long)units,
                      (unsigned long long)d->limbo_units);
}

int shmkv_check(struct shmkv *kv, struct shmkv_check_report *report)
{
    if (kv == NULL || report == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle or report");
    if (kv->in_read || kv->in_write)
        return set_error(SHMKV_ESTATE,
                         "shmkv_check inside a read or write section");
    memset(report, 0, sizeof *report);
    if (kv->rdonly)
        return set_error(SHMKV_ERDONLY,
                         "the handle is read-only: a check takes the write "
                         "lock's read side, which only writers may");
    kv->deadline_ms = kv->wait_ms = 0;
    int rc = lock_take(kv, false);
    if (rc == SHMKV_ECORRUPT)
        check_problem(report, "%s", shmkv_last_error());
    if (rc != 0)
        return rc;
    const struct data_header *d = kv->data;
    uint8_t *used_map = calloc(d->arena_units / 8 + 1, 1);
    if (used_map == NULL) {
        lock_release(kv);
        return set_error(SHMKV_ENOMEM, "no memory for the check's bitmap");
    }
    if (d->generation != kv->gen)
        check_problem(report, "data segment says generation %llu, not %u",
                      (unsigned long long)d->generation, kv->gen);
    if (d->entries > d->max_load)
        check_problem(report, "%llu entries over the index's %llu",
                      (unsigned long long)d->entries,
                      (unsigned long long)d->max_load);
    if (atomic_load(&d->intent.state) != INTENT_IDLE)
        check_problem(report, "a write is unfinished (kind %u) with no writer",
                      d->intent.kind);
    if (arena_check(d, used_map, report) == 0) {
        if (d->flush_epoch != 0) {
            /* Flushed, arena not yet rebuilt: every used block is old. */
            memset(used_map, 0, d->arena_units / 8 + 1);
            report->blocks_limbo = report->blocks_used;
        } else {
            limbo_check(kv, used_map, report);
        }
        report->blocks_used -= report->blocks_limbo;
        rc = table_check(kv, used_map, report);
    }
    free(used_map);
    lock_release(kv);
    if (rc != 0)
        return rc;
    if (report->problems > 0)
        return set_error(SHMKV_ECORRUPT, "%s", report->first_problem);
    return 0;
}
