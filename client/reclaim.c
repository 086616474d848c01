/*
 * reclaim.c - memory that read sections may still see: limbo, the read
 * epoch, and revoking a section that holds memory back too long.
 *
 * Readers take no lock. A read section stores the store's read epoch in
 * its own client slot (its claim) and ends by clearing it (read_claim,
 * internal.h). A writer that unlinks an entry from the index does not free
 * its block: it puts the block in limbo, a ring in the data segment, with
 * the read epoch current after the unlink. To free blocks, a writer
 * advances the epoch and looks at every slot's claim: a block unlinked in
 * epoch r may be freed once no open section claims an epoch at or before
 * r. A section that began later loaded the epoch after its advance, and so
 * sees the index after the unlink; one that was not open when the writer
 * looked stored its claim after, and likewise. (The writer's unlink and the
 * epoch's advance are ordered by the write lock and a seq_cst fence; the
 * reader's claim store is seq_cst, before its index loads.) This is
 * epoch-based reclamation; LMDB's reader table plays the same part for its
 * pages.
 *
 * Limbo only grows while a section is open, so a writer waits for readers
 * only when it needs that memory: the arena is full, or the ring is. It
 * then spins a few microseconds (sections are short), then sleeps in short
 * steps, and for each section that holds it back:
 *   - if the kernel says the process is dead (liveness.c), drops its claim
 *     at once: O(1) per dead reader;
 *   - if a writer has seen that slot's claim hold memory back for
 *     reader_timeout_ms (pins, written by writers only), revokes it: swaps
 *     the claim's mode to revoked. The reader learns it at its next get or
 *     at the end of the section (SHMKV_ESTALE), and the memory it may still
 *     read stays mapped and inside the segment, so it never faults.
 * The wait is bounded by the writing call's deadline; the pins persist, so
 * a later call revokes what an earlier one waited for. A claim replaced by
 * one older than the read epoch when its pin began (no new section claims
 * that) keeps the pin's time: rewriting claims buys no more time.
 *
 * Claims are in the reader segment, which every reader may write, its
 * peers' claims too. So a writer does not take a claim's word that nothing
 * changed: every scan of the claims is counted (ctl_header.scans), and
 * records in the slot's pin what it found there, with its number, when
 * that differs from what the last scan found. A section loads the count
 * once its claim is stored; at its end, if scans began meanwhile, it checks
 * that the pin shows its own claim, found no later than the first of them
 * (read_scans_found): otherwise a scan did not see the claim (another
 * process cleared or changed it, and may have put it back since) and the
 * section ends SHMKV_ESTALE. Scans look at the slots below clients_hwm,
 * which only writers raise, from the mark handles leave in the reader
 * segment when they take a slot: a scan that did not look at a section's
 * slot recorded nothing there, and the section ends stale.
 *
 * Revocation and dead readers are logged as events (events.c).
 */
#include <sched.h>
#include <stdlib.h>
#include <time.h>

#include "internal.h"

/* Iterations that only spin before the first look at clocks and liveness:
 * about 30 microseconds. */
#define WAIT_SPINS 64u
#define WAIT_SLEEP_US 100

static uint64_t *limbo_ring(const struct data_header *d)
{
    return (uint64_t *)((char *)d + d->limbo_off);
}

/* a <= b on 32-bit epochs, across their wrap. */
static inline bool epoch_le(uint32_t a, uint32_t b)
{
    return (int32_t)(a - b) <= 0;
}

void read_cover(struct shmkv *kv)
{
    if (atomic_load_explicit(&kv->ctl->clients_hwm, memory_order_seq_cst) >
        kv->slot_index) {
        kv->covered = true;
        return;
    }
    /* Until a writer's scan takes the mark in, say again where the slot
     * is, in case another process lowered the mark. */
    _Atomic uint32_t *hwm = &reader_header_of(kv)->hwm;
    uint32_t h = atomic_load(hwm);
    while (h < kv->slot_index + 1 &&
           !atomic_compare_exchange_weak(hwm, &h, kv->slot_index + 1))
        ;
}

/* How long a section's end waits for a scan in progress to finish: spins,
 * then yields, then gives up. A writer preempted in its scan runs again
 * within a few scheduler slices, several milliseconds on a loaded machine
 * (2 ms made sections end stale under load with no writer at fault); one
 * stopped makes the section stale after this long, never stuck. */
#define SCAN_WAIT_SPINS 256u
#define SCAN_WAIT_MS 20u

/* Whether the pin's record shows the claim of the section that began
 * before scan scans0 + 1: 1 yes, 0 no, -1 cannot tell yet. */
static int seen_says(const struct shmkv *kv)
{
    uint64_t seen = atomic_load_explicit(&client_pins(kv)[kv->pin_index].seen,
                                         memory_order_seq_cst);
    /* Scan numbers compared on 31 bits (read_scans_found refuses a
     * section across 2^30 scans). */
    uint32_t first = (uint32_t)((kv->scans0 + 1) & SEEN_SCAN_MASK);
    int32_t since_first = (int32_t)((SEEN_SCAN(seen) - first) << 1) >> 1;
    if (SEEN_KEY_OF(seen) == SEEN_KEY(kv->claim))
        return since_first <= 0;
    /* Another claim, found during the section: it was changed. */
    if (since_first >= 0)
        return 0;
    /* Another claim, recorded before the section: the scans since have not
     * recorded this one yet, or found the one recorded again. */
    return -1;
}

/* Waits until scan `upto` has finished: true, or false after a spin and
 * SCAN_WAIT_MS of yielding. */
static bool scan_wait_done(const struct shmkv *kv, uint64_t upto)
{
    uint64_t give_up = 0;
    for (unsigned spins = 0; atomic_load_explicit(&kv->ctl->scans_done,
                                                  memory_order_seq_cst) < upto;
         spins++) {
        if (spins < SCAN_WAIT_SPINS) {
            cpu_relax();
            continue;
        }
        uint64_t now = monotonic_ms();
        if (give_up == 0)
            give_up = now + SCAN_WAIT_MS;
        else if (now >= give_up)
            return false;
        sched_yield();
    }
    return true;
}

bool read_scans_found(const struct shmkv *kv, uint64_t upto)
{
    /* Scan numbers are recorded on 31 bits: a section as long as 2^30
     * scans cannot be told apart, and ends stale. */
    if (upto - kv->scans0 >= (1u << 30))
        return false;
    /* A scan that records in the pin looks at the slot, and so does every
     * later one (clients_hwm never decreases): a slot no scan has looked
     * at yet has a pin that shows no claim of its section. The pin shows
     * the claim, found first no later than by the first
     * scan of the section: had any scan found another, a later one
     * finding the claim again would have recorded it with its own, later,
     * number. A scan that found another claim but has not recorded it yet
     * acts on it after recording it, so after this load: after the
     * section's reads. */
    int says = seen_says(kv);
    if (says < 0) {
        /* Scans run one at a time, under the write lock: once scan `upto`
         * has finished, the pin shows what every scan up to it found.
         * Wait for it, briefly: a writer stopped in its scan makes the
         * section stale, not stuck. */
        if (!scan_wait_done(kv, upto))
            return false;
        says = seen_says(kv);
    }
    /* Read after the record: a section across 2^30 scans is refused, as
     * 31-bit scan numbers cannot tell. */
    return says == 1 &&
           atomic_load_explicit(&kv->ctl->scans, memory_order_seq_cst) -
                   kv->scans0 <
               (1u << 30);
}

/* Records in pin p that scan `scan` found claim there. */
static inline void scan_found(struct shmkv *kv, uint32_t p, uint64_t claim,
                              uint64_t scan)
{
    _Atomic uint64_t *seen = &client_pins(kv)[p].seen;
    if (SEEN_KEY_OF(atomic_load_explicit(seen, memory_order_relaxed)) !=
        SEEN_KEY(claim))
        atomic_store_explicit(seen, SEEN_MAKE(claim, scan),
                              memory_order_seq_cst);
}

/* Begins a scan of the claims: raises how far scans look at readers'
 * slots, then counts the scan (seq_cst, before the claims' loads), then
 * reads how far writers' slots go (raised by each writer as it takes one,
 * before its first claim), then takes in the reader chunks registered
 * (under the write lock, as every scan: a chunk registered before it was
 * taken is in the table). Points *sets at the sets to look at, local (two)
 * if the handle has no room for the chunks' (their pins then record that
 * nothing was found, and their sections end stale), and returns how
 * many. */
static uint32_t scan_begin(struct shmkv *kv, struct claim_set local[2],
                           struct claim_set **sets, uint64_t *scan)
{
    uint64_t chunks = kv->ctl_tail_fixed.chunk_count;
    if (kv->scan_sets == NULL)
        kv->scan_sets = calloc(2 + chunks, sizeof *kv->scan_sets);
    struct claim_set *set = kv->scan_sets != NULL ? kv->scan_sets : local;
    set[0] = (struct claim_set){client_slots(kv), clients_scan_raise(kv), 0,
                                LIVE_READER, -1};
    *scan =
        atomic_fetch_add_explicit(&kv->ctl->scans, 1, memory_order_seq_cst) + 1;
    set[1] = (struct claim_set){writer_claims(kv), writers_scan_limit(kv),
                                kv->max_clients, LIVE_WRITER, -1};
    uint32_t n = 2;
    if (chunks > 0)
        chunks_follow(kv);
    const struct reader_chunk *t = chunk_table(kv);
    for (uint32_t k = 0; k < chunks; k++) {
        if (atomic_load_explicit(&t[k].state, memory_order_acquire) !=
            CHUNK_ACTIVE)
            continue;
        uint32_t base = chunk_pin_base(kv, k);
        struct client_slot *slots =
            kv->chunk_maps != NULL ? kv->chunk_maps[k].slots : NULL;
        if (slots != NULL && set != local) {
            set[n++] = (struct claim_set){slots, CHUNK_SLOTS, base, LIVE_READER,
                                          kv->chunk_maps[k].semid};
            continue;
        }
        /* A chunk this scan cannot look at (its user hid it, or memory
         * ran short): its pins say no claim was found, so that no
         * section there passes for seen. */
        for (uint32_t i = 0; i < CHUNK_SLOTS; i++)
            scan_found(kv, base + i, 0, *scan);
    }
    *sets = set;
    return n;
}

/* Ends scan `scan`: every slot's pin shows what it found. */
static void scan_end(struct shmkv *kv, uint64_t scan)
{
    atomic_store_explicit(&kv->ctl->scans_done, scan, memory_order_seq_cst);
    /* What the scan recorded, before any store that acts on it (a block
     * reused): a release store alone would let later stores pass it. */
    atomic_thread_fence(memory_order_seq_cst);
}

int read_claim_slow(struct shmkv *kv)
{
    for (int attempt = 0; attempt < 100; attempt++) {
        int rc = generation_follow(kv);
        if (rc != 0)
            return rc;
        uint64_t cur =
            atomic_load_explicit(&kv->ctl->current, memory_order_acquire);
        if (cur != kv->current)
            continue;
        read_claim_store(kv);
        return 0;
    }
    return set_error(SHMKV_ENOSTORE, "the store's data segment keeps moving");
}

bool limbo_has_room(const struct data_header *d)
{
    return d->limbo_tail - d->limbo_head < d->limbo_slots;
}

void limbo_retire(struct shmkv *kv, uint32_t off)
{
    struct data_header *d = kv->data;
    if (!limbo_has_room(d) || off - kv->arena_first >= kv->arena_units)
        return; /* never, room is reserved first (and the offset is one
                   the index held); at worst a leak */
    /* After the unlink (release) and under the write lock: a reclaim that
     * advances the epoch past this one comes after the unlink. */
    uint64_t e = atomic_load_explicit(&kv->ctl->epoch, memory_order_seq_cst);
    uint64_t pos = d->limbo_tail;
    uint64_t *ring = limbo_ring(d);
    LOGGED_SET(d, ring[pos & (d->limbo_slots - 1)], LIMBO_MAKE(e, off));
    LOGGED_SET(d, d->limbo_tail, pos + 1);
    LOGGED_SET(d, d->limbo_units,
               d->limbo_units + block_at(d, off)->size_units);
}

int limbo_reserve(struct shmkv *kv)
{
    if (limbo_has_room(kv->data))
        return 0;
    limbo_reclaim(kv, true);
    while (!limbo_has_room(kv->data)) {
        int rc = limbo_wait(kv);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* Advances the read epoch if anything in limbo was unlinked in the current
 * one, then returns the oldest epoch an open section claims (the current
 * epoch if none), on 32 bits as limbo keeps epochs: a claim's other bits
 * change no decision (what a scan records in a pin, and a reader checks,
 * is only what decisions read). */
static uint32_t claims_oldest(struct shmkv *kv)
{
    struct ctl_header *c = kv->ctl;
    struct data_header *d = kv->data;
    uint64_t now = atomic_load_explicit(&c->epoch, memory_order_seq_cst);
    if (d->limbo_tail != d->limbo_head) {
        uint64_t newest =
            limbo_ring(d)[(d->limbo_tail - 1) & (d->limbo_slots - 1)];
        if (LIMBO_EPOCH(newest) == (uint32_t)now)
            now =
                atomic_fetch_add_explicit(&c->epoch, 1, memory_order_seq_cst) +
                1;
    }
    /* The unlinks before, the claims' loads after. */
    atomic_thread_fence(memory_order_seq_cst);
    struct claim_set local[2], *set;
    uint64_t scan;
    uint32_t nsets = scan_begin(kv, local, &set, &scan);
    /* How far behind now the oldest claim is: a distance, so that the
     * claims are in one order (compared pairwise on 32 bits they need not
     * be, and a chain of claims each older than the last could end newer
     * than the first). A claim ahead of now is no section's. */
    uint32_t behind = 0;
    for (uint32_t k = 0; k < nsets; k++) {
        for (uint32_t i = 0; i < set[k].n; i++) {
            uint64_t cl = atomic_load_explicit(&set[k].slots[i].claim,
                                               memory_order_seq_cst);
            scan_found(kv, set[k].pin_base + i, cl, scan);
            uint32_t gap = (uint32_t)now - (uint32_t)CLAIM_EPOCH(cl);
            if (CLAIM_MODE(cl) == CLAIM_ACTIVE && gap < (1u << 31) &&
                gap > behind)
                behind = gap;
        }
    }
    scan_end(kv, scan);
    return (uint32_t)now - behind;
}

static uint64_t limbo_safe_pos(const struct data_header *d)
{
    uint64_t safe = d->limbo_safe;
    if (safe < d->limbo_head)
        return d->limbo_head;
    return safe > d->limbo_tail ? d->limbo_tail : safe;
}

/* Moves the safe position past every entry unlinked before epoch `oldest`
 * (low 32 bits): epochs in the ring never decrease from head to tail. */
static void limbo_mark_safe(struct data_header *d, uint32_t oldest)
{
    const uint64_t *ring = limbo_ring(d);
    uint64_t p = limbo_safe_pos(d);
    while (p != d->limbo_tail &&
           !epoch_le(oldest, LIMBO_EPOCH(ring[p & (d->limbo_slots - 1)])))
        p++;
    d->limbo_safe = p;
}

/* Frees safe entries from the head until at most keep are left, a batch
 * per operation. */
static uint64_t limbo_free_safe(struct shmkv *kv, uint64_t keep)
{
    struct data_header *d = kv->data;
    uint64_t *ring = limbo_ring(d);
    uint64_t freed = 0;
    while (limbo_safe_pos(d) - d->limbo_head > keep) {
        op_begin(kv, WRITE_OP_GENERIC);
        for (unsigned k = 0; k < 32 && limbo_safe_pos(d) - d->limbo_head > keep;
             k++) {
            uint64_t e = ring[d->limbo_head & (d->limbo_slots - 1)];
            uint32_t off = LIMBO_OFF(e);
            uint32_t units = 0;
            struct block *b = block_at(d, off);
            if (off - kv->arena_first < kv->arena_units &&
                (b->flags & BLOCK_USED)) {
                units = b->size_units;
                if (compact_window_has(d, off))
                    LOGGED_SET(d, b->flags, b->flags | BLOCK_HELD);
                else
                    arena_free(d, off);
            }
            LOGGED_SET(d, d->limbo_units,
                       d->limbo_units >= units ? d->limbo_units - units : 0);
            LOGGED_SET(d, d->limbo_head, d->limbo_head + 1);
            freed += units;
        }
        op_end(kv);
    }
    return freed;
}

uint64_t limbo_reclaim(struct shmkv *kv, bool all)
{
    struct data_header *d = kv->data;
    if (d->limbo_head == d->limbo_tail)
        return 0;
    d->limbo_scanned = d->limbo_tail;
    limbo_mark_safe(d, claims_oldest(kv));
    /* Replacing values of one size reuses what it retires (limbo_take),
     * cheaper than freeing and allocating: a pool of a quarter of the
     * ring is kept for that, unless the memory is wanted now. */
    return limbo_free_safe(kv, all ? 0 : d->limbo_slots / 4);
}

/* Entries retired since the claims were last looked at that make looking
 * again worth its cost (a load of each client slot). */
#define LIMBO_REFILL_MIN 64u

void limbo_refill(struct shmkv *kv)
{
    struct data_header *d = kv->data;
    if (limbo_safe_pos(d) == d->limbo_head &&
        d->limbo_tail - d->limbo_scanned >= LIMBO_REFILL_MIN)
        limbo_reclaim(kv, false);
}

bool limbo_can_take(const struct shmkv *kv, uint32_t units)
{
    const struct data_header *d = kv->data;
    if (limbo_safe_pos(d) == d->limbo_head)
        return false;
    uint32_t off =
        LIMBO_OFF(limbo_ring(d)[d->limbo_head & (d->limbo_slots - 1)]);
    if (off - kv->arena_first >= kv->arena_units)
        return false;
    const struct block *b = block_at(d, off);
    uint32_t want = units < MIN_BLOCK_UNITS ? MIN_BLOCK_UNITS : units;
    return (b->flags & BLOCK_USED) && b->size_units >= want &&
           b->size_units - want < MIN_BLOCK_UNITS;
}

uint32_t limbo_take(struct shmkv *kv, uint32_t units)
{
    if (!limbo_can_take(kv, units))
        return 0;
    struct data_header *d = kv->data;
    uint32_t off =
        LIMBO_OFF(limbo_ring(d)[d->limbo_head & (d->limbo_slots - 1)]);
    /* The block stays used and its size stays: undone, it is simply back
     * at the head of limbo, whatever its new entry wrote into it. */
    LOGGED_SET(d, d->limbo_units,
               d->limbo_units - block_at(d, off)->size_units);
    LOGGED_SET(d, d->limbo_head, d->limbo_head + 1);
    return off;
}

/* Whether claim cl holds back what was unlinked in epoch `epoch`: it is
 * active and at most 2^31 - 1 epochs before it (on 32 bits, as limbo keeps
 * epochs; a claim 2^31 away is no section's, and would be both before and
 * after every epoch). */
static inline bool claim_blocks(uint64_t cl, uint32_t epoch)
{
    return CLAIM_MODE(cl) == CLAIM_ACTIVE &&
           epoch - (uint32_t)CLAIM_EPOCH(cl) < (1u << 31);
}

/* A section that began at or before the epoch a writer waits past: drop
 * it if its process is dead, start its pin, or revoke it once the pin is
 * older than the reader timeout. A section that holds the wait up began
 * before the epoch passed the one waited for, so before the wait began
 * (wait_ms): a pin starts then at the latest, however its slot's claim
 * was moved or rewritten. Returns the claim now in the slot as this
 * decided it: revoked (no longer holding memory back) or as found. */
static uint64_t pinned_section(struct shmkv *kv, const struct claim_set *set,
                               uint32_t i, uint64_t claim, uint64_t now_ms,
                               uint64_t wait_ms)
{
    struct ctl_header *c = kv->ctl;
    struct client_slot *s = &set->slots[i];
    int32_t pid = atomic_load_explicit(&s->pid, memory_order_relaxed);
    uint64_t revoked = CLAIM_MAKE(CLAIM_EPOCH(claim), CLAIM_REVOKED);
    if (!claim_set_alive(c, set, i)) {
        if (!atomic_compare_exchange_strong(&s->claim, &claim, revoked))
            return claim; /* changed meanwhile: looked at again */
        dead_reader_event(kv, pid);
        return revoked;
    }
    struct client_pin *pin = &client_pins(kv)[set->pin_base + i];
    uint64_t pinned = atomic_load_explicit(&pin->claim, memory_order_relaxed);
    if (pinned != claim) {
        atomic_store_explicit(&pin->claim, claim, memory_order_relaxed);
        /* A newer section starts a new pin: one whose epoch lies between
         * the pin's and now. Any other claim keeps the pin's time. */
        uint32_t pin_epoch =
            (uint32_t)atomic_load_explicit(&pin->epoch, memory_order_relaxed);
        uint32_t now_epoch =
            (uint32_t)atomic_load_explicit(&c->epoch, memory_order_relaxed);
        if (pinned == 0 ||
            (uint32_t)CLAIM_EPOCH(claim) - pin_epoch <= now_epoch - pin_epoch) {
            atomic_store_explicit(&pin->since_ms, wait_ms,
                                  memory_order_relaxed);
            atomic_store_explicit(
                &pin->epoch,
                atomic_load_explicit(&c->epoch, memory_order_relaxed),
                memory_order_relaxed);
        }
    }
    uint64_t since = atomic_load_explicit(&pin->since_ms, memory_order_relaxed);
    if (since > wait_ms)
        since = wait_ms;
    if (now_ms - since < kv->reader_timeout_ms)
        return claim;
    /* Revoked whether or not the swap wins against a process rewriting
     * the slot: what protects a section is what the scan records, which
     * is now that it did not find the claim; the swap only tells its
     * reader early. */
    if (atomic_compare_exchange_strong(&s->claim, &claim, revoked)) {
        atomic_fetch_add(&c->revocations, 1);
        event_log(c, SHMKV_EVENT_REVOKED, pid, now_ms - since, 0);
    }
    return revoked;
}

int readers_wait_past(struct shmkv *kv, uint32_t epoch, bool wait)
{
    struct ctl_header *c = kv->ctl;
    /* Sections that begin from now on must claim a later epoch. */
    uint64_t now = atomic_load_explicit(&c->epoch, memory_order_seq_cst);
    if (epoch_le((uint32_t)now, epoch))
        atomic_fetch_add_explicit(&c->epoch, 1, memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst);
    uint64_t deadline = 0;
    const struct client_slot *blocker = NULL;
    for (unsigned iter = 0;; iter++) {
        bool looking = iter >= WAIT_SPINS;
        uint64_t now_ms = looking ? monotonic_ms() : 0;
        /* One start for all the waits of a call: however many it makes,
         * a section is given reader_timeout_ms from the first. */
        if (looking && kv->wait_ms == 0)
            kv->wait_ms = now_ms;
        uint64_t wait_ms = kv->wait_ms;
        bool blocked = false;
        struct claim_set local[2], *set;
        uint64_t scan;
        uint32_t nsets = scan_begin(kv, local, &set, &scan);
        for (uint32_t k = 0; k < nsets; k++) {
            for (uint32_t i = 0; i < set[k].n; i++) {
                uint64_t cl = atomic_load_explicit(&set[k].slots[i].claim,
                                                   memory_order_seq_cst);
                if (claim_blocks(cl, epoch) && looking) {
                    blocker = &set[k].slots[i];
                    cl = pinned_section(kv, &set[k], i, cl, now_ms, wait_ms);
                }
                scan_found(kv, set[k].pin_base + i, cl, scan);
                blocked |= claim_blocks(cl, epoch);
            }
        }
        scan_end(kv, scan);
        if (!blocked)
            return 0;
        if (!wait)
            return SHMKV_ETIMEDOUT;
        if (!looking) {
            for (unsigned k = 0; k < 64; k++)
                cpu_relax();
            continue;
        }
        if (deadline == 0)
            deadline = call_deadline(kv);
        if (now_ms >= deadline)
            return set_error(SHMKV_ETIMEDOUT,
                             "waited %u ms for a read section (pid %d) to "
                             "end; it is revoked once a writer has waited "
                             "%u ms for it",
                             kv->timeout_ms,
                             blocker ? (int)atomic_load(&blocker->pid) : 0,
                             kv->reader_timeout_ms);
        struct timespec ts = {0, WAIT_SLEEP_US * 1000L};
        nanosleep(&ts, NULL);
    }
}

int limbo_wait(struct shmkv *kv)
{
    struct data_header *d = kv->data;
    if (d->limbo_head == d->limbo_tail)
        return 0;
    uint32_t oldest =
        LIMBO_EPOCH(limbo_ring(d)[d->limbo_head & (d->limbo_slots - 1)]);
    int rc = readers_wait_past(kv, oldest, true);
    if (rc != 0)
        return rc;
    /* No section that began at or before `oldest` is open, as the wait's
     * last scan found (a claim rewritten since is no such section's). */
    limbo_mark_safe(d, oldest + 1);
    limbo_free_safe(kv, 0);
    return 0;
}

int limbo_drain(struct shmkv *kv)
{
    struct data_header *d = kv->data;
    if (d->limbo_head == d->limbo_tail)
        return 0;
    uint32_t newest =
        LIMBO_EPOCH(limbo_ring(d)[(d->limbo_tail - 1) & (d->limbo_slots - 1)]);
    int rc = readers_wait_past(kv, newest, true);
    if (rc != 0)
        return rc;
    limbo_mark_safe(d, newest + 1);
    limbo_free_safe(kv, 0);
    return 0;
}
