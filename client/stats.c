/*
 * stats.c - statistics and the consistency check.
 *
 * Counters that every reader bumps (hits, misses, lock waits) live in each
 * handle's own client slot, so readers in different processes never write
 * the same cache line; stats sums the slots, plus what retired slots left.
 * Counters bumped by writers live in the control header and survive
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
    const struct ctl_header *c = kv->ctl;
    const struct data_header *d = kv->data;
    memset(st, 0, sizeof *st);
    st->entries = d->entries;
    st->entries_with_ttl = d->ttl_entries;
    st->bytes_used = d->used_units * UNIT_BYTES;
    st->bytes_free = d->free_units * UNIT_BYTES;
    st->bytes_capacity = d->arena_units * UNIT_BYTES;
    st->largest_free = arena_largest_free(d);
    st->fragmentation =
        st->bytes_free ? 1.0 - (double)st->largest_free / (double)st->bytes_free
                       : 0.0;
    st->index_slots = d->nbuckets * BUCKET_SLOTS;
    st->segment_bytes = c->ctl_bytes + c->data_bytes;
    st->sets = atomic_load(&c->sets);
    st->deletes = atomic_load(&c->deletes);
    st->evictions = atomic_load(&c->evictions);
    st->expirations = atomic_load(&c->expirations);
    st->recoveries = atomic_load(&c->recoveries);
    st->hits = atomic_load(&c->retired_hits);
    st->misses = atomic_load(&c->retired_misses);
    st->lock_waits = atomic_load(&c->retired_lock_waits);
    st->lock_timeouts = atomic_load(&c->retired_lock_timeouts);
    const struct client_slot *slots =
        (const struct client_slot *)((const char *)c + c->clients_off);
    for (uint32_t i = 0; i < c->max_clients; i++) {
        if (atomic_load(&slots[i].pid) > 0)
            st->clients++;
        st->hits += atomic_load(&slots[i].hits);
        st->misses += atomic_load(&slots[i].misses);
        st->lock_waits += atomic_load(&slots[i].lock_waits);
        st->lock_timeouts += atomic_load(&slots[i].lock_timeouts);
    }
    st->max_key_bytes = c->max_key_bytes;
    st->max_value_bytes = c->max_value_bytes;
    st->eviction = (enum shmkv_eviction)c->eviction;
    st->lock_timeout_ms = c->lock_timeout_ms;
    st->max_clients = c->max_clients;
    st->generation = kv->gen;
    st->owner_pid = atomic_load(&c->owner_pid);
    st->created_unix = c->created_unix;
    shmkv_read_end(kv);
    return 0;
}

int shmkv_check(struct shmkv *kv, struct shmkv_check_report *report)
{
    if (kv == NULL || report == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle or report");
    if (kv->in_read)
        return set_error(SHMKV_ESTATE, "shmkv_check inside a read section");
    memset(report, 0, sizeof *report);
    int rc = shmkv_read_begin(kv);
    if (rc != 0)
        return rc;
    const struct data_header *d = kv->data;
    uint8_t *used_map = calloc(d->arena_units / 8 + 1, 1);
    if (used_map == NULL) {
        shmkv_read_end(kv);
        return set_error(SHMKV_ENOMEM, "no memory for the check's bitmap");
    }
    if (d->generation != kv->gen)
        check_problem(report, "data segment says generation %llu, not %u",
                      (unsigned long long)d->generation, kv->gen);
    if (d->entries > d->max_load)
        check_problem(report, "%llu entries over the index's %llu",
                      (unsigned long long)d->entries,
                      (unsigned long long)d->max_load);
    if (arena_check(d, used_map, report) == 0)
        rc = table_check(kv, used_map, report);
    free(used_map);
    shmkv_read_end(kv);
    if (rc != 0)
        return rc;
    if (report->problems > 0)
        return set_error(SHMKV_ECORRUPT, "%s", report->first_problem);
    return 0;
}
