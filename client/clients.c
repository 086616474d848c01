/*
 * clients.c - client slots: one per open handle.
 *
 * A slot is a handle's while it holds the slot's reader semaphore, and a
 * writing handle's holds the slot's writer semaphore besides (liveness.c):
 * taking one is a semop that succeeds only on a semaphore at 0, so two
 * honest processes never take the same slot, and a slot whose process died
 * is free to take again, exactly, with no guessing from pids. The slot's
 * read claim, pid and read counters are in the reader segment; a writer's
 * lock state and write counters are in its writer slot, in the control
 * segment, where no reader can change them.
 *
 * A dead process's slot keeps what it left until a writer frees it: its
 * read claim (writers drop it when they need what it holds back), and its
 * lock state. A lock state that names the lock in use is the evidence a
 * waiter needs to recover that lock, so such a slot's writer side is not
 * reused before the lock was replaced (lock.c). Counters stay with their
 * slot, freed or not, so that the store's sums keep them.
 */
#include <stdlib.h>

#include "internal.h"

uint32_t clients_scan_raise(struct shmkv *kv)
{
    uint32_t r =
        atomic_load_explicit(&reader_header_of(kv)->hwm, memory_order_seq_cst);
    if (r > kv->max_clients)
        r = kv->max_clients; /* readers write it: never trusted past that */
    uint32_t h =
        atomic_load_explicit(&kv->ctl->clients_hwm, memory_order_seq_cst);
    while (h < r && !atomic_compare_exchange_weak(&kv->ctl->clients_hwm, &h, r))
        ;
    return clients_scan_limit(kv);
}

/* Whether writer slot i holds the evidence of a dead writer that the
 * recovery of lock epoch `epoch` needs. */
static bool writer_evidence(const struct shmkv *kv, uint32_t i, uint64_t epoch)
{
    uint64_t st = atomic_load(&writer_slots(kv)[i].lock_state);
    return st != 0 && LOCK_STATE_EPOCH(st) == epoch;
}

static uint64_t lock_epoch_now(const struct shmkv *kv)
{
    return LOCK_WORD_EPOCH(
        atomic_load_explicit(&kv->ctl->lock_word, memory_order_seq_cst));
}

static void slot_take(struct shmkv *kv, uint32_t i, bool writer)
{
    struct client_slot *s = &client_slots(kv)[i];
    atomic_store(&s->claim, 0);
    atomic_store(&s->pid, (int32_t)kv->pid);
    kv->slot = s;
    kv->slot_index = i;
    kv->slot_owned = true;
    kv->slot_writer = writer;
    kv->covered = false;
    _Atomic uint32_t *hwm = &reader_header_of(kv)->hwm;
    uint32_t h = atomic_load(hwm);
    while (h < i + 1 && !atomic_compare_exchange_weak(hwm, &h, i + 1))
        ;
    if (writer) {
        struct writer_slot *w = &writer_slots(kv)[i];
        atomic_store(&w->lock_state, 0);
        atomic_store(&w->pid, (int32_t)kv->pid);
        kv->wslot = w;
        kv->covered = clients_scan_raise(kv) > i;
    }
}

/* Takes slot i's semaphores for this handle: 0, 1 if it is not free, or an
 * error. A writer's slot must have its writer side free of a dead writer's
 * evidence too. */
static int slot_try(struct shmkv *kv, uint32_t i, bool writer)
{
    const struct ctl_header *c = kv->ctl;
    int rc = liveness_claim(c, LIVE_READER, i);
    if (rc != 0 || !writer)
        return rc;
    rc = liveness_claim(c, LIVE_WRITER, i);
    if (rc == 0 && writer_evidence(kv, i, lock_epoch_now(kv))) {
        liveness_release(c, LIVE_WRITER, i);
        rc = 1;
    }
    if (rc != 0)
        liveness_release(c, LIVE_READER, i);
    return rc;
}

/* Frees slot i, whose process is dead, if nothing needs what it left. */
static bool slot_reap(struct shmkv *kv, uint32_t i, uint64_t lock_epoch)
{
    struct ctl_header *c = kv->ctl;
    struct client_slot *s = &client_slots(kv)[i];
    struct writer_slot *w = &writer_slots(kv)[i];
    if (writer_evidence(kv, i, lock_epoch))
        return false; /* evidence for the lock's recovery */
    /* Holding its semaphore keeps a claimer out while it is cleaned. */
    if (liveness_claim(c, LIVE_READER, i) != 0)
        return false;
    int32_t pid = atomic_load(&s->pid);
    uint64_t claim = atomic_exchange(&s->claim, 0);
    if (CLAIM_MODE(claim) == CLAIM_ACTIVE) {
        atomic_fetch_add(&c->dead_readers, 1);
        event_log(c, SHMKV_EVENT_DEAD_READER, pid, 0, 0);
    }
    atomic_store(&w->lock_state, 0);
    atomic_store(&w->pid, 0);
    atomic_store(&s->pid, 0);
    liveness_release(c, LIVE_READER, i);
    return true;
}

uint32_t client_slots_reap(struct shmkv *kv)
{
    if (kv->rdonly)
        return 0; /* a writer's work: it writes the control segment */
    struct ctl_header *c = kv->ctl;
    struct client_slot *slots = client_slots(kv);
    uint32_t n = clients_scan_raise(kv);
    if (n == 0)
        return 0;
    uint8_t *alive = malloc(2 * (size_t)n);
    if (alive == NULL || !liveness_all(c, LIVE_READER, n, alive) ||
        !liveness_all(c, LIVE_WRITER, n, alive + n)) {
        free(alive);
        return 0;
    }
    uint64_t epoch = lock_epoch_now(kv);
    uint32_t freed = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (alive[i] || alive[n + i] || i == kv->slot_index ||
            atomic_load_explicit(&slots[i].pid, memory_order_relaxed) == 0)
            continue;
        freed += slot_reap(kv, i, epoch);
    }
    free(alive);
    return freed;
}

int client_slot_claim(struct shmkv *kv)
{
    struct client_slot *slots = client_slots(kv);
    bool writer = !kv->rdonly;
    kv->slot_index = UINT32_MAX;
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < kv->max_clients; i++) {
            /* First the slots nobody left anything in; then, for a reader,
             * which cannot free slots, any whose process is gone. */
            if (pass == 0 &&
                atomic_load_explicit(&slots[i].pid, memory_order_relaxed) != 0)
                continue;
            int rc = slot_try(kv, i, writer);
            if (rc < 0)
                return rc;
            if (rc == 0) {
                slot_take(kv, i, writer);
                return 0;
            }
        }
        /* Every slot looks taken: a writer frees those of dead
         * processes. */
        if (pass == 0 && writer && client_slots_reap(kv) == 0)
            break;
    }
    return set_error(SHMKV_ECLIENTS,
                     "all %u client slots of the store are in use",
                     kv->max_clients);
}

void client_slot_release(struct shmkv *kv)
{
    if (kv->slot == NULL)
        return;
    if (kv->slot_owned) {
        const struct ctl_header *c = kv->ctl;
        if (kv->slot_writer) {
            atomic_store(&kv->wslot->lock_state, 0);
            atomic_store(&kv->wslot->pid, 0);
            liveness_release(c, LIVE_WRITER, kv->slot_index);
        }
        atomic_store(&kv->slot->claim, 0);
        atomic_store(&kv->slot->pid, 0);
        liveness_release(c, LIVE_READER, kv->slot_index);
    }
    kv->slot = NULL;
    kv->wslot = NULL;
    kv->slot_owned = false;
    kv->slot_writer = false;
}
