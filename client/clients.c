/*
 * clients.c - client slots: one per open handle.
 *
 * A read-only handle takes a client slot in the reader segment, by its
 * reader semaphore; a writing handle takes one of the writers' client slots
 * in the control segment, by its writer semaphore (liveness.c): taking one
 * is a semop that succeeds only on a semaphore at 0, so two processes never
 * take the same slot, and a slot whose process died is free to take again,
 * exactly, with no guessing from pids. The two kinds never share a slot or
 * a semaphore: nothing a reader can write (the reader segment, the reader
 * semaphores) bears on a writer's slot, its claims or its lock state.
 *
 * A dead process's slot keeps what it left until a writer frees it: its
 * read claim (writers drop it when they need what it holds back), and a
 * writer's lock state. A lock state that names the lock in use is the
 * evidence a waiter needs to recover that lock, so such a slot is not
 * reused before the lock was replaced (lock.c). Counters stay with their
 * slot, freed or not, so that the store's sums keep them.
 */
#include <stdlib.h>

#include "internal.h"

/* Raises *hwm to at least want. */
static void hwm_raise(_Atomic uint32_t *hwm, uint32_t want)
{
    uint32_t h = atomic_load(hwm);
    while (h < want && !atomic_compare_exchange_weak(hwm, &h, want))
        ;
}

uint32_t clients_scan_raise(struct shmkv *kv)
{
    uint32_t r =
        atomic_load_explicit(&reader_header_of(kv)->hwm, memory_order_seq_cst);
    if (r > kv->max_clients)
        r = kv->max_clients; /* readers write it: never trusted past that */
    hwm_raise(&kv->ctl->clients_hwm, r);
    return clients_scan_limit(kv);
}

/* Whether writers' slot i holds the evidence of a dead writer that the
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
    struct client_slot *s =
        writer ? &writer_claims(kv)[i] : &client_slots(kv)[i];
    atomic_store(&s->claim, 0);
    atomic_store(&s->pid, (int32_t)kv->pid);
    kv->slot = s;
    kv->slot_index = i;
    kv->slot_owned = true;
    kv->slot_writer = writer;
    if (writer) {
        /* Scans and lock recovery look this far, before any lock state is
         * stored. */
        hwm_raise(&kv->ctl->writers_hwm, i + 1);
        struct writer_slot *w = &writer_slots(kv)[i];
        atomic_store(&w->lock_state, 0);
        atomic_store(&w->pid, (int32_t)kv->pid);
        atomic_fetch_add(&w->incarnation, 1);
        kv->wslot = w;
        kv->pin_index = kv->max_clients + i;
        kv->covered = true;
    } else {
        /* Writers' scans take this in (clients_scan_raise); until they
         * have, each section says it again (read_cover). */
        hwm_raise(&reader_header_of(kv)->hwm, i + 1);
        kv->pin_index = i;
        kv->covered = false;
    }
}

/* Takes slot i for this handle: 0, 1 if it is not free, or an error. A
 * writers' slot must be free of a dead writer's evidence too. */
static int slot_try(struct shmkv *kv, uint32_t i, bool writer)
{
    const struct ctl_header *c = kv->ctl;
    if (!writer)
        return liveness_claim(c, LIVE_READER, i);
    int rc = liveness_claim(c, LIVE_WRITER, i);
    if (rc == 0 && writer_evidence(kv, i, lock_epoch_now(kv))) {
        liveness_release(c, LIVE_WRITER, i);
        rc = 1;
    }
    return rc;
}

/* Clears a dead process's claim, counting a section it left open. */
static void claim_drop(struct ctl_header *c, struct client_slot *s)
{
    uint64_t claim = atomic_exchange(&s->claim, 0);
    if (CLAIM_MODE(claim) == CLAIM_ACTIVE) {
        atomic_fetch_add(&c->dead_readers, 1);
        event_log(c, SHMKV_EVENT_DEAD_READER, atomic_load(&s->pid), 0, 0);
    }
    atomic_store(&s->pid, 0);
}

/* Frees slot i of kind k, whose process is dead, if nothing needs what it
 * left. */
static bool slot_reap(struct shmkv *kv, enum live_kind k, uint32_t i,
                      uint64_t lock_epoch)
{
    struct ctl_header *c = kv->ctl;
    if (k == LIVE_WRITER && writer_evidence(kv, i, lock_epoch))
        return false; /* evidence for the lock's recovery */
    /* Holding its semaphore keeps a claimer out while it is cleaned. */
    if (liveness_claim(c, k, i) != 0)
        return false;
    if (k == LIVE_WRITER) {
        claim_drop(c, &writer_claims(kv)[i]);
        atomic_store(&writer_slots(kv)[i].lock_state, 0);
        atomic_store(&writer_slots(kv)[i].pid, 0);
    } else {
        claim_drop(c, &client_slots(kv)[i]);
    }
    liveness_release(c, k, i);
    return true;
}

/* Frees the dead processes' slots among the first n of kind k. */
static uint32_t slots_reap(struct shmkv *kv, enum live_kind k, uint32_t n)
{
    if (n == 0)
        return 0;
    const struct client_slot *slots =
        k == LIVE_WRITER ? writer_claims(kv) : client_slots(kv);
    uint8_t *alive = malloc(n);
    if (alive == NULL || !liveness_all(kv->ctl, k, n, alive)) {
        free(alive);
        return 0;
    }
    uint64_t epoch = lock_epoch_now(kv);
    uint32_t freed = 0;
    for (uint32_t i = 0; i < n; i++) {
        bool own = (k == LIVE_WRITER) == kv->slot_writer && i == kv->slot_index;
        if (alive[i] || own ||
            atomic_load_explicit(&slots[i].pid, memory_order_relaxed) == 0)
            continue;
        freed += slot_reap(kv, k, i, epoch);
    }
    free(alive);
    return freed;
}

uint32_t client_slots_reap(struct shmkv *kv)
{
    if (kv->rdonly)
        return 0; /* a writer's work: it writes the control segment */
    return slots_reap(kv, LIVE_READER, clients_scan_raise(kv)) +
           slots_reap(kv, LIVE_WRITER, writers_scan_limit(kv));
}

int client_slot_claim(struct shmkv *kv)
{
    bool writer = !kv->rdonly;
    const struct client_slot *slots =
        writer ? writer_claims(kv) : client_slots(kv);
    kv->slot_index = UINT32_MAX;
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < kv->max_clients; i++) {
            /* First the slots nobody left anything in; then any whose
             * semaphore says it is free. */
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
        /* Every slot looks taken: a writer frees those of dead processes,
         * then looks again. */
        if (pass == 0 && writer)
            client_slots_reap(kv);
    }
    return set_error(SHMKV_ECLIENTS,
                     "all %u client slots of the store for %s are in use",
                     kv->max_clients, writer ? "writers" : "readers");
}

void client_slot_release(struct shmkv *kv)
{
    if (kv->slot == NULL)
        return;
    if (kv->slot_owned) {
        const struct ctl_header *c = kv->ctl;
        atomic_store(&kv->slot->claim, 0);
        atomic_store(&kv->slot->pid, 0);
        if (kv->slot_writer) {
            atomic_store(&kv->wslot->lock_state, 0);
            atomic_store(&kv->wslot->pid, 0);
        }
        liveness_release(c, kv->slot_writer ? LIVE_WRITER : LIVE_READER,
                         kv->slot_index);
    }
    kv->slot = NULL;
    kv->wslot = NULL;
    kv->slot_owned = false;
    kv->slot_writer = false;
}
