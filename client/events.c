/*
 * events.c - a small ring of liveness and recovery events in the control
 * segment, so that the store's operator learns what any process did: a
 * revoked read section, a dead reader's section dropped, a recovery, a
 * writer that held the lock too long. shmkvd reads it every housekeeping
 * tick and logs what is new.
 *
 * A writer takes the next sequence number with one atomic add, clears the
 * record's seq, fills it and publishes seq = number + 1 (release); a reader
 * copies a record and keeps it only if seq was the number it wanted before
 * and after the copy. A record overwritten before it was read is counted
 * as lost.
 */
#include <string.h>
#include <time.h>

#include "internal.h"

void event_log(struct ctl_header *c, uint32_t type, int32_t pid,
               uint64_t duration_ms, uint64_t detail)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t n = atomic_fetch_add(&c->event_next, 1);
    struct event_rec *r = &c->events[n % EVENT_SLOTS];
    atomic_store_explicit(&r->seq, 0, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    r->type = type;
    r->pid = pid;
    r->duration_ms = duration_ms;
    r->at_unix_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    r->detail = detail;
    atomic_store_explicit(&r->seq, n + 1, memory_order_release);
}

int shmkv_events(struct shmkv *kv, uint64_t *cursor, struct shmkv_event *out,
                 int max, uint64_t *lost)
{
    if (kv == NULL || cursor == NULL || (out == NULL && max > 0) || max < 0)
        return set_error(SHMKV_EINVAL, "NULL handle, cursor or buffer");
    if (kv->forked)
        return refuse_forked(kv);
    struct ctl_header *c = kv->ctl;
    uint64_t next = atomic_load_explicit(&c->event_next, memory_order_acquire);
    uint64_t skipped = 0;
    if (*cursor > next)
        *cursor = next; /* a cursor from another store */
    if (next - *cursor > EVENT_SLOTS) {
        skipped = next - EVENT_SLOTS - *cursor;
        *cursor = next - EVENT_SLOTS;
    }
    int n = 0;
    while (*cursor < next && n < max) {
        const struct event_rec *r = &c->events[*cursor % EVENT_SLOTS];
        uint64_t want = *cursor + 1;
        uint64_t s1 = atomic_load_explicit(&r->seq, memory_order_acquire);
        if (s1 == 0 || s1 < want)
            break; /* still being written: read it next time */
        struct shmkv_event ev = {
            .seq = *cursor,
            .type = (enum shmkv_event_type)r->type,
            .pid = r->pid,
            .duration_ms = r->duration_ms,
            .at_unix_ms = r->at_unix_ms,
            .detail = r->detail,
        };
        atomic_thread_fence(memory_order_acquire);
        uint64_t s2 = atomic_load_explicit(&r->seq, memory_order_relaxed);
        (*cursor)++;
        if (s1 != want || s2 != want) {
            skipped++;
            continue;
        }
        out[n++] = ev;
    }
    if (lost != NULL)
        *lost = skipped;
    return n;
}

#define DEAD_EVENTS_PER_S 10u

void dead_reader_event(struct shmkv *kv, int32_t pid)
{
    atomic_fetch_add(&kv->ctl->dead_readers, 1);
    uint64_t now = monotonic_ms();
    if (now - kv->dead_window_ms >= 1000) {
        kv->dead_window_ms = now;
        kv->dead_logged = 0;
    }
    if (kv->dead_logged < DEAD_EVENTS_PER_S) {
        kv->dead_logged++;
        event_log(kv->ctl, SHMKV_EVENT_DEAD_READER, pid, 0, 0);
    }
}
