/*
 * clients.c - client slots: one per open handle, in the control segment.
 *
 * A slot is a handle's while it holds the slot's liveness semaphore
 * (liveness.c): taking it is one semop that succeeds only on a semaphore at
 * 0, so two processes never take the same slot, and a slot whose process
 * died is free to take again, exactly, with no guessing from pids. pid in
 * the slot is for display; 0 means never used or freed.
 *
 * A dead process's slot keeps what it left until someone frees it: its
 * read claim (writers drop it when they need what it holds back), and its
 * lock state. A lock state that names the lock in use is the evidence a
 * waiter needs to recover that lock, so such a slot is not freed before
 * the lock was replaced (lock.c).
 */
#include <stdlib.h>

#include "internal.h"

static void fold_counters(struct ctl_header *c, struct client_slot *s)
{
    atomic_fetch_add(&c->retired_hits, atomic_exchange(&s->hits, 0));
    atomic_fetch_add(&c->retired_misses, atomic_exchange(&s->misses, 0));
    atomic_fetch_add(&c->retired_lock_waits,
                     atomic_exchange(&s->lock_waits, 0));
    atomic_fetch_add(&c->retired_lock_timeouts,
                     atomic_exchange(&s->lock_timeouts, 0));
    atomic_fetch_add(&c->retired_stale, atomic_exchange(&s->stale, 0));
    atomic_fetch_add(&c->retired_sets, atomic_exchange(&s->sets, 0));
    atomic_fetch_add(&c->retired_deletes, atomic_exchange(&s->deletes, 0));
}

static void slot_take(struct shmkv *kv, uint32_t i)
{
    struct ctl_header *c = kv->ctl;
    struct client_slot *s = &client_slots(kv)[i];
    fold_counters(c, s);
    atomic_store(&s->claim, 0);
    atomic_store(&s->lock_state, 0);
    atomic_store(&s->pid, (int32_t)kv->pid);
    uint32_t hwm = atomic_load(&c->clients_hwm);
    while (hwm < i + 1 &&
           !atomic_compare_exchange_weak(&c->clients_hwm, &hwm, i + 1)) {
    }
    kv->slot = s;
    kv->slot_index = i;
    kv->slot_owned = true;
}

/* Frees slot i, whose process is dead, if nothing needs what it left. */
static bool slot_reap(struct shmkv *kv, uint32_t i, uint64_t lock_epoch)
{
    struct ctl_header *c = kv->ctl;
    struct client_slot *s = &client_slots(kv)[i];
    uint64_t st = atomic_load(&s->lock_state);
    if (st != 0 && LOCK_STATE_EPOCH(st) == lock_epoch)
        return false; /* evidence for the lock's recovery */
    /* Holding its semaphore keeps a claimer out while it is cleaned. */
    if (liveness_claim(c, i) != 0)
        return false;
    int32_t pid = atomic_load(&s->pid);
    uint64_t claim = atomic_exchange(&s->claim, 0);
    if (CLAIM_MODE(claim) == CLAIM_ACTIVE) {
        atomic_fetch_add(&c->dead_readers, 1);
        event_log(c, SHMKV_EVENT_DEAD_READER, pid, 0, 0);
    }
    fold_counters(c, s);
    atomic_store(&s->lock_state, 0);
    atomic_store(&s->pid, 0);
    liveness_release(c, i);
    return true;
}

uint32_t client_slots_reap(struct shmkv *kv)
{
    struct ctl_header *c = kv->ctl;
    struct client_slot *slots = client_slots(kv);
    uint32_t n = clients_scan_limit(kv);
    if (n == 0)
        return 0;
    uint8_t *alive = malloc(n);
    if (alive == NULL || !liveness_all(c, n, alive)) {
        free(alive);
        return 0;
    }
    uint64_t epoch = LOCK_WORD_EPOCH(
        atomic_load_explicit(&c->lock_word, memory_order_seq_cst));
    uint32_t freed = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (alive[i] || i == kv->slot_index ||
            atomic_load_explicit(&slots[i].pid, memory_order_relaxed) == 0)
            continue;
        freed += slot_reap(kv, i, epoch);
    }
    free(alive);
    return freed;
}

int client_slot_claim(struct shmkv *kv)
{
    struct ctl_header *c = kv->ctl;
    struct client_slot *slots = client_slots(kv);
    kv->slot_index = UINT32_MAX;
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < kv->max_clients; i++) {
            if (atomic_load_explicit(&slots[i].pid, memory_order_relaxed) != 0)
                continue;
            int rc = liveness_claim(c, i);
            if (rc < 0)
                return rc;
            if (rc == 0) {
                slot_take(kv, i);
                return 0;
            }
        }
        /* Every slot looks taken: free those of dead processes. */
        if (pass == 0 && client_slots_reap(kv) == 0)
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
        struct ctl_header *c = kv->ctl;
        struct client_slot *s = kv->slot;
        fold_counters(c, s);
        atomic_store(&s->claim, 0);
        atomic_store(&s->lock_state, 0);
        atomic_store(&s->pid, 0);
        liveness_release(c, kv->slot_index);
    }
    kv->slot = NULL;
    kv->slot_owned = false;
}
