/*
 * lock.c - the write lock, its bounded waits, and replacing it when a
 * process died holding it.
 *
 * Writers take a process-shared pthread rwlock for writing; a whole-store
 * pass that needs the store still (shmkv_check) takes it for reading.
 * Readers of values take no lock at all (reclaim.c). The lock in use is one
 * of LOCK_SLOTS, named by the lock epoch in ctl_header.lock_word.
 *
 * The lock is only ever tried (pthread_rwlock_trywrlock / tryrdlock), never
 * waited for inside glibc: a waiter spins a few microseconds, then sleeps
 * in growing steps up to LOCK_SLEEP_MAX_US and tries again, until the
 * call's deadline on CLOCK_MONOTONIC. glibc's rwlock is not robust, and its
 * blocking calls keep state for the waiters they register: a process
 * killed halfway through a hand-over leaves words that make every process
 * blocked in the lock, or entering it, loop inside glibc without ever
 * looking at its deadline. A try and an unlock are a few compare-and-swaps
 * that always return, so no process can be caught inside glibc.
 *
 * A process that dies holding the lock leaves it held. So before trying it
 * a process stores in its client slot which lock epoch it is after
 * (lock_state), once it holds it that it holds it, and after releasing it
 * clears the state. Every LOCK_CHECK_MS a waiter looks for a process whose
 * state names the lock in use and whose liveness semaphore the kernel has
 * released (liveness.c). It then recovers, in place and without copying
 * anything:
 *
 *   1. takes the recovery mutex (robust and process-shared: if the
 *      recoverer before it died, it gets EOWNERDEAD and carries on where
 *      that one stopped; only one process recovers at a time);
 *   2. marks the lock word installing, then waits until no live process
 *      holds the old lock. A writer stores its held state, then loads the
 *      lock word, both seq_cst, so it sees the mark and lets go before
 *      writing anything, or the recoverer sees it and waits for it;
 *   3. repairs the dead writer's operation from its intent (intent.c);
 *   4. initialises a fresh rwlock in a slot that no live process can still
 *      touch (none's state names an epoch of that slot), and publishes its
 *      epoch with one store of the lock word.
 *
 * lock_state is stored before the try: the call is opaque to the compiler
 * and its atomic read-modify-write orders the store before the
 * acquisition, and a killed process's stores are not lost, so a dead
 * holder's slot always shows its state.
 */
#include <errno.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* Tries before sleeping on a taken lock: about 10 microseconds in all. */
#define LOCK_SPIN_ATTEMPTS 40
#define LOCK_SPIN_MAX_PAUSES 64
/* Then sleeps between tries, doubling from the first to the last step:
 * a write holds the lock for about a microsecond, a flush or a big value
 * for milliseconds. */
#define LOCK_SLEEP_MIN_US 20
#define LOCK_SLEEP_MAX_US 500
/* How often a waiter looks for a dead holder and at the hold's length. */
#define LOCK_CHECK_MS 2

uint64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t call_deadline(struct shmkv *kv)
{
    if (kv->deadline_ms == 0)
        kv->deadline_ms = monotonic_ms() + kv->timeout_ms;
    return kv->deadline_ms;
}

void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void pause_us(long us)
{
    struct timespec ts = {0, us * 1000L};
    nanosleep(&ts, NULL);
}

int lock_init(pthread_rwlock_t *lock)
{
    pthread_rwlockattr_t attr;
    if (pthread_rwlockattr_init(&attr) != 0)
        return set_error(SHMKV_ESYS, "pthread_rwlockattr_init failed");
    int rc = pthread_rwlockattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    if (rc == 0)
        rc = pthread_rwlockattr_setkind_np(
            &attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    if (rc == 0)
        rc = pthread_rwlock_init(lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    if (rc != 0)
        return set_error(SHMKV_ESYS, "pthread_rwlock_init: error %d", rc);
    return 0;
}

static struct lock_slot *lock_slot_of(const struct shmkv *kv, uint64_t epoch)
{
    struct lock_slot *locks =
        (struct lock_slot *)((char *)kv->ctl + kv->ctl_tail_fixed.locks_off);
    return &locks[epoch % LOCK_SLOTS];
}

/* Which lock states lock_user_find looks for. */
enum lock_user {
    USER_OF_EPOCH, /* any state naming the epoch: waiting or holding */
    HOLDER_OF_EPOCH,
    USER_OF_SLOT, /* any state naming an epoch of the epoch's lock slot */
};

/* The first client slot but kv's whose lock state is of that kind for
 * lock epoch `epoch` and whose process is alive (alive) or dead (!alive);
 * its pid in *pid if asked; -1 if there is none. */
static int lock_user_find(const struct shmkv *kv, enum lock_user kind,
                          uint64_t epoch, bool alive, int32_t *pid)
{
    const struct ctl_header *c = kv->ctl;
    const struct writer_slot *slots = writer_slots(kv);
    uint32_t n = writers_scan_limit(kv);
    for (uint32_t i = 0; i < n; i++) {
        uint64_t st =
            atomic_load_explicit(&slots[i].lock_state, memory_order_seq_cst);
        if (st == 0 || (kv->slot_writer && i == kv->slot_index))
            continue;
        uint64_t e = LOCK_STATE_EPOCH(st);
        bool match = kind == USER_OF_SLOT
                         ? e % LOCK_SLOTS == epoch % LOCK_SLOTS
                         : e == epoch && (kind == USER_OF_EPOCH ||
                                          LOCK_MODE_HELD(LOCK_STATE_MODE(st)));
        if (!match || liveness_alive(c, LIVE_WRITER, i) != alive)
            continue;
        if (pid != NULL)
            *pid = atomic_load_explicit(&slots[i].pid, memory_order_relaxed);
        return (int)i;
    }
    return -1;
}

/* A dead process whose state names lock epoch `epoch`: it may hold that
 * lock, or have died inside glibc on its way in or out. */
static int lock_dead_user(const struct shmkv *kv, uint64_t epoch, int32_t *pid)
{
    return lock_user_find(kv, USER_OF_EPOCH, epoch, false, pid);
}

/* Replaces the lock of word `seen` (see the top of the file). Returns
 * SHMKV_ERETRY when there is a new lock to take, 0 when there was nothing
 * to do or another process is at it (wait on), or an error. */
static int lock_recover(struct shmkv *kv, uint64_t seen)
{
    struct ctl_header *c = kv->ctl;
    if (kv->rdonly)
        return 0; /* a reader waits for a writer to recover */
    int rc = pthread_mutex_trylock(&c->recover_mutex);
    if (rc == EBUSY)
        return 0;
    if (rc == EOWNERDEAD)
        pthread_mutex_consistent(&c->recover_mutex);
    else if (rc != 0)
        return set_error(SHMKV_ECORRUPT,
                         "the store's recovery mutex is unusable (error %d)",
                         rc);
    uint64_t t0 = monotonic_ms();
    uint64_t w = atomic_load_explicit(&c->lock_word, memory_order_seq_cst);
    uint64_t epoch = LOCK_WORD_EPOCH(w);
    int32_t dead_pid = 0;
    int out;
    bool dead = lock_dead_user(kv, epoch, &dead_pid) >= 0;
    if (!LOCK_WORD_INSTALLING(w)) {
        if (w != seen) {
            out = SHMKV_ERETRY; /* recovered meanwhile */
            goto unlock;
        }
        if (!dead) {
            out = 0; /* it lived after all (a claimer's brief hold) */
            goto unlock;
        }
        atomic_store_explicit(&c->lock_word, LOCK_WORD(epoch, true),
                              memory_order_seq_cst);
        TEST_POINT("recover:marked");
    }
    while (lock_user_find(kv, HOLDER_OF_EPOCH, epoch, true, NULL) >= 0) {
        if (monotonic_ms() >= call_deadline(kv)) {
            out = set_error(SHMKV_ETIMEDOUT,
                            "a live process holds the store's lock while a "
                            "dead one's is being recovered");
            goto unlock;
        }
        pause_us(200);
    }
    rc = generation_refresh(kv);
    if (rc != 0) {
        out = rc;
        goto unlock;
    }
    TEST_POINT("recover:holders-gone");
    uint32_t repaired = intent_repair(kv);
    /* The dead writer may have changed one segment of a resize under way
     * and not the other. */
    resize_abort_locked(kv, RESIZE_WHY_WRITER_DIED);
    TEST_POINT("recover:repaired");
    uint64_t next = epoch + 1;
    /* Not a slot a live process may still touch: it waits in an old lock,
     * or was stopped on its way into one. */
    while (lock_user_find(kv, USER_OF_SLOT, next, true, NULL) >= 0) {
        if (++next - epoch > LOCK_SLOTS) {
            out = set_error(SHMKV_ETIMEDOUT,
                            "every lock slot is still used by a stopped "
                            "process");
            goto unlock;
        }
    }
    struct lock_slot *ls = lock_slot_of(kv, next);
    rc = lock_init(&ls->rwlock);
    if (rc != 0) {
        out = rc;
        goto unlock;
    }
    atomic_store(&ls->acquisitions, 0);
    atomic_store(&ls->slow_reported, UINT32_MAX);
    atomic_store(&ls->hold_seen, 0);
    TEST_POINT("recover:lock-made");
    atomic_store_explicit(&c->lock_word, LOCK_WORD(next, false),
                          memory_order_seq_cst);
    atomic_fetch_add(&c->recoveries, 1);
    event_log(c, SHMKV_EVENT_RECOVERED, dead_pid, monotonic_ms() - t0,
              repaired);
    TEST_POINT("recover:published");
    out = SHMKV_ERETRY;
unlock:
    pthread_mutex_unlock(&c->recover_mutex);
    return out;
}

int lock_recover_if_dead(struct shmkv *kv)
{
    uint64_t w =
        atomic_load_explicit(&kv->ctl->lock_word, memory_order_seq_cst);
    if (!LOCK_WORD_INSTALLING(w) &&
        lock_dead_user(kv, LOCK_WORD_EPOCH(w), NULL) < 0)
        return 0;
    return lock_recover(kv, w);
}

/* How long waiters have seen the lock's current hold: the first waiter to
 * see a new acquisition count notes the time (low 32 bits of ms) beside
 * it, so that the waits of several calls and processes add up. */
static uint64_t lock_hold_seen(struct lock_slot *ls, uint64_t now_ms)
{
    uint32_t acq =
        atomic_load_explicit(&ls->acquisitions, memory_order_relaxed);
    uint64_t mark = atomic_load_explicit(&ls->hold_seen, memory_order_relaxed);
    if (mark == 0 || (uint32_t)(mark >> 32) != acq) {
        uint64_t want = ((uint64_t)acq << 32) | ((uint32_t)now_ms | 1u);
        atomic_compare_exchange_strong(&ls->hold_seen, &mark, want);
        return 0;
    }
    return (uint32_t)((uint32_t)now_ms - (uint32_t)mark);
}

/* Records, once per hold, that the lock's holder has kept it longer than
 * the reader timeout. */
static void report_slow_holder(struct shmkv *kv, uint64_t epoch,
                               struct lock_slot *ls, uint64_t waited_ms)
{
    uint32_t acquisitions =
        atomic_load_explicit(&ls->acquisitions, memory_order_relaxed);
    uint32_t reported =
        atomic_load_explicit(&ls->slow_reported, memory_order_relaxed);
    if (reported == acquisitions ||
        !atomic_compare_exchange_strong(&ls->slow_reported, &reported,
                                        acquisitions))
        return;
    const struct writer_slot *slots = writer_slots(kv);
    uint32_t n = writers_scan_limit(kv);
    for (uint32_t i = 0; i < n; i++) {
        uint64_t st = atomic_load(&slots[i].lock_state);
        if (st != 0 && LOCK_STATE_EPOCH(st) == epoch &&
            LOCK_MODE_HELD(LOCK_STATE_MODE(st))) {
            event_log(kv->ctl, SHMKV_EVENT_SLOW_WRITER,
                      atomic_load(&slots[i].pid), waited_ms,
                      LOCK_STATE_MODE(st));
            return;
        }
    }
}

static inline int lock_try(pthread_rwlock_t *l, bool write)
{
    return write ? pthread_rwlock_trywrlock(l) : pthread_rwlock_tryrdlock(l);
}

/* Writes hold the lock for about a microsecond, so a process that finds it
 * taken first retries for a few microseconds, backing off, before it
 * sleeps. */
static int lock_spin(pthread_rwlock_t *l, bool write)
{
    unsigned pauses = 1;
    for (int attempt = 0; attempt < LOCK_SPIN_ATTEMPTS; attempt++) {
        for (unsigned i = 0; i < pauses; i++)
            cpu_relax();
        if (pauses < LOCK_SPIN_MAX_PAUSES)
            pauses *= 2;
        if (lock_try(l, write) == 0)
            return 0;
    }
    return EBUSY;
}

/* Waits for the lock of word w, trying it between growing sleeps; every
 * LOCK_CHECK_MS notices a new lock (SHMKV_ERETRY), a dead holder of this
 * one (recovers, then SHMKV_ERETRY) or a long hold (logs it), and the
 * call's deadline. */
static int lock_wait(struct shmkv *kv, pthread_rwlock_t *l, uint64_t w,
                     bool write)
{
    struct ctl_header *c = kv->ctl;
    uint64_t epoch = LOCK_WORD_EPOCH(w);
    uint64_t deadline = call_deadline(kv);
    struct lock_slot *ls = lock_slot_of(kv, epoch);
    bool reported = false;
    long sleep_us = LOCK_SLEEP_MIN_US;
    uint64_t next_check = 0;
    slot_count(&kv->wslot->lock_waits);
    for (;;) {
        pause_us(sleep_us);
        if (lock_try(l, write) == 0)
            return 0;
        if (sleep_us < LOCK_SLEEP_MAX_US)
            sleep_us = sleep_us * 2 < LOCK_SLEEP_MAX_US ? sleep_us * 2
                                                        : LOCK_SLEEP_MAX_US;
        if (atomic_load_explicit(&c->lock_word, memory_order_seq_cst) != w)
            return SHMKV_ERETRY;
        uint64_t now = monotonic_ms();
        if (now >= next_check) {
            next_check = now + LOCK_CHECK_MS;
            if (lock_dead_user(kv, epoch, NULL) >= 0) {
                int rc = lock_recover(kv, w);
                if (rc != 0)
                    return rc;
            }
            uint64_t held_ms = lock_hold_seen(ls, now);
            if (held_ms >= kv->reader_timeout_ms && !reported) {
                reported = true; /* one report per waiting call at most */
                report_slow_holder(kv, epoch, ls, held_ms);
            }
        }
        if (now >= deadline) {
            slot_count(&kv->wslot->lock_timeouts);
            return set_error(SHMKV_ETIMEDOUT, "waited %u ms for the %s lock",
                             kv->timeout_ms, write ? "write" : "read");
        }
    }
}

static void lock_state_clear(struct shmkv *kv)
{
    atomic_store_explicit(&kv->wslot->lock_state, 0, memory_order_seq_cst);
}

int lock_take(struct shmkv *kv, bool write)
{
    struct ctl_header *c = kv->ctl;
    const unsigned waiting = write ? LOCK_WAIT_WRITE : LOCK_WAIT_READ;
    const unsigned held = write ? LOCK_HELD_WRITE : LOCK_HELD_READ;
    if (write && kv->closer)
        return set_error(SHMKV_ECLOSED, "the store was closed");
    for (;;) {
        int rc = generation_follow(kv);
        if (rc != 0)
            return rc;
        if (kv->wslot == NULL)
            return set_error(SHMKV_ERDONLY,
                             "the handle is read-only: it takes no lock");
        c = kv->ctl; /* another store's, if it followed one */
        uint64_t w = atomic_load_explicit(&c->lock_word, memory_order_seq_cst);
        if (LOCK_WORD_INSTALLING(w)) {
            /* A recovery is under way, or its recoverer died or gave up:
             * carry it on, or wait for the one at it. */
            rc = lock_recover(kv, w);
            if (rc == SHMKV_ERETRY)
                continue;
            if (rc != 0)
                return rc;
            if (monotonic_ms() >= call_deadline(kv)) {
                slot_count(&kv->wslot->lock_timeouts);
                return set_error(SHMKV_ETIMEDOUT,
                                 "the store's lock is being recovered; gave "
                                 "up after %u ms",
                                 kv->timeout_ms);
            }
            pause_us(200);
            continue;
        }
        uint64_t epoch = LOCK_WORD_EPOCH(w);
        atomic_store_explicit(&kv->wslot->lock_state,
                              LOCK_STATE(epoch, waiting), memory_order_seq_cst);
        if (atomic_load_explicit(&c->lock_word, memory_order_seq_cst) != w) {
            lock_state_clear(kv);
            continue;
        }
        pthread_rwlock_t *l = &lock_slot_of(kv, epoch)->rwlock;
        rc = lock_try(l, write);
        if (rc != 0)
            rc = lock_spin(l, write);
        if (rc != 0)
            rc = lock_wait(kv, l, w, write);
        if (rc != 0) {
            lock_state_clear(kv);
            if (rc == SHMKV_ERETRY)
                continue;
            return rc;
        }
        atomic_store_explicit(&kv->wslot->lock_state, LOCK_STATE(epoch, held),
                              memory_order_seq_cst);
        /* A recovery that began before the held state was visible has
         * marked the word: let go before touching anything (seq_cst pairs
         * with lock_recover's mark). A generation change or a close that
         * came while this process waited is followed likewise. */
        if (atomic_load_explicit(&c->lock_word, memory_order_seq_cst) != w ||
            atomic_load_explicit(&c->current, memory_order_acquire) !=
                kv->current) {
            pthread_rwlock_unlock(l);
            lock_state_clear(kv);
            continue;
        }
        kv->lock = l;
        kv->lock_epoch = epoch;
        kv->lock_write = write;
        /* What follows steers by both headers: never by damaged ones. */
        rc = ctl_intact(kv);
        if (rc == 0)
            rc = data_intact(kv);
        if (rc != 0) {
            lock_release(kv);
            return rc;
        }
        if (write) {
            struct lock_slot *ls = lock_slot_of(kv, epoch);
            atomic_store_explicit(
                &ls->acquisitions,
                atomic_load_explicit(&ls->acquisitions, memory_order_relaxed) +
                    1,
                memory_order_relaxed);
            /* Only a recoverer leaves a lock to others with an operation
             * unfinished, having repaired it: this is for a store damaged
             * otherwise. */
            if (atomic_load_explicit(&kv->data->intent.state,
                                     memory_order_acquire) != INTENT_IDLE)
                intent_repair(kv);
        }
        return 0;
    }
}

void lock_release(struct shmkv *kv)
{
    if (kv->lock == NULL)
        return;
    pthread_rwlock_unlock(kv->lock);
    atomic_store_explicit(&kv->wslot->lock_state, 0, memory_order_release);
    kv->lock = NULL;
}
