/*
 * lock.c - the store's process-shared rwlock, client slots, and detecting a
 * lock left held by a dead process.
 *
 * The rwlock prefers writers (a steady stream of readers cannot starve a
 * writer) and is always taken with a deadline on CLOCK_MONOTONIC. The first
 * attempt is a trylock.
 *
 * Readers in many processes would all write the rwlock's cache line, twice
 * per read section, and pass it from core to core: that, not the lookup,
 * would be the cost of a get. So while no writer is at work a read section
 * does not take the rwlock: the reader claims the section in its own
 * client slot (lock_state LOCKING_FAST) and then checks the generation's
 * writer flag (lock_read, internal.h). A writer takes the rwlock for
 * writing, raises the flag, and waits until no slot claims a section
 * (readers_drain); read sections that find the flag raised take the
 * rwlock, and wait behind the writer. Each side stores its word and then
 * loads the other's, seq_cst, so at least one of them sees the other.
 * A writer that has to wait raises the flag before it waits too, so that
 * readers queue behind it (writers are preferred) and, blocking on the
 * rwlock, notice a dead holder as below. A reader holding the rwlock
 * lowers a flag it finds raised: no writer can be at work then. A claim
 * left by a process that looks dead makes the writer recover the store
 * into a new generation, as a dead holder of the rwlock does.
 *
 * glibc's rwlock is not robust: a process that dies holding it (or even
 * queued on it) leaves it unusable. So every handle owns a client slot in
 * the control segment with its pid and start time, and before it asks for
 * the lock it writes which generation's lock it is taking and how
 * (lock_state); it clears that after releasing. A waiter that has waited a
 * slice (LOCK_SLICE_MS) scans the slots: a dead process whose lock_state
 * names the current generation may hold the lock, and the store moves to a
 * new generation with a fresh lock (generation.c). Bounded time: a waiter
 * learns of a dead holder within one slice after that holder died. Only a
 * process of the store owner's uid builds the new generation (the owner
 * must be able to remove every segment); other waiters wait for it, and
 * the daemon's housekeeping takes the write lock every tick.
 *
 * lock_state is stored before the lock call: the call is opaque to the
 * compiler and its atomic read-modify-write orders the store before the
 * acquisition on the hardware, and a killed process's stores are not lost,
 * so a dead holder's slot always shows its state.
 *
 * A death inside glibc's own lock code needs more. glibc hands the lock
 * from readers to a writer and back in two steps: it flips the phase bit
 * in __readers, then sets __wrphase_futex to match (1 in a write phase, 0
 * in a read phase), and a waiter for the other phase spins, without
 * looking at its deadline, until the second step is done. A process killed
 * between the two steps leaves them disagreeing for good, and every
 * process that then blocks on that lock spins forever. So a waiter asks
 * for the lock only while the two agree (lock_phase_torn), which keeps it
 * in the slices below where it finds the dead process; and a recoverer,
 * once the new generation is published, completes the dead process's
 * second step on the old lock (lock_settle), so that a process that was
 * already spinning in it gets out and moves on.
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define LOCK_SLICE_MS 50
/* Tries before sleeping on a taken lock: about 10 microseconds in all. */
#define LOCK_SPIN_ATTEMPTS 40
#define LOCK_SPIN_MAX_PAUSES 64
/* Pauses a writer spins on one reader's section before it sleeps. */
#define DRAIN_SPINS 1024

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

static uint64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static struct timespec ms_to_timespec(uint64_t ms)
{
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000),
                          .tv_nsec = (long)(ms % 1000) * 1000000L};
    return ts;
}

static inline void counter_bump(_Atomic uint64_t *c)
{
    /* Only this slot's owner writes it: a plain load and store suffice. */
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

/* glibc's rwlock words (nptl/pthread_rwlock_common.c, since 2.25). */
#if defined(__GLIBC__) &&                                                      \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 25))
#define GLIBC_RWLOCK_WRPHASE 1u
#define GLIBC_RWLOCK_FUTEX_USED 2u

/* True if the lock's phase and the futex word its waiters watch disagree:
 * for a moment while a live process hands the lock over, for good if the
 * process died in between. */
static bool lock_phase_torn(pthread_rwlock_t *l)
{
    unsigned r = __atomic_load_n(&l->__data.__readers, __ATOMIC_ACQUIRE);
    unsigned f = __atomic_load_n(&l->__data.__wrphase_futex, __ATOMIC_RELAXED);
    bool write_phase = (r & GLIBC_RWLOCK_WRPHASE) != 0;
    return write_phase != ((f & ~GLIBC_RWLOCK_FUTEX_USED) == 1);
}

void lock_settle(pthread_rwlock_t *l)
{
    /* Whoever flips the phase writes the futex word after it, whatever was
     * there: so the phase is read again on every try, and a value stored
     * here for a phase that has just changed is overwritten. */
    for (;;) {
        unsigned r = __atomic_load_n(&l->__data.__readers, __ATOMIC_ACQUIRE);
        unsigned want = (r & GLIBC_RWLOCK_WRPHASE) != 0 ? 1u : 0u;
        unsigned f =
            __atomic_load_n(&l->__data.__wrphase_futex, __ATOMIC_RELAXED);
        if ((f & ~GLIBC_RWLOCK_FUTEX_USED) == want)
            return;
        if (__atomic_compare_exchange_n(&l->__data.__wrphase_futex, &f, want,
                                        false, __ATOMIC_RELEASE,
                                        __ATOMIC_RELAXED)) {
            /* As glibc does: wake the waiters that said they sleep. */
            if (f & GLIBC_RWLOCK_FUTEX_USED)
                syscall(SYS_futex, &l->__data.__wrphase_futex, FUTEX_WAKE,
                        INT_MAX, NULL, NULL, 0);
            return;
        }
    }
}
#else
static bool lock_phase_torn(pthread_rwlock_t *l)
{
    (void)l;
    return false;
}

void lock_settle(pthread_rwlock_t *l)
{
    (void)l;
}
#endif

/* True if a dead process may hold (or be queued on) generation gen's lock,
 * or left a read claim in it. */
static bool lock_has_dead_holder(struct shmkv *kv, uint32_t gen)
{
    struct client_slot *slots =
        (struct client_slot *)((char *)kv->ctl + kv->ctl->clients_off);
    for (uint32_t i = 0; i < kv->ctl->max_clients; i++) {
        struct client_slot *s = &slots[i];
        uint64_t st =
            atomic_load_explicit(&s->lock_state, memory_order_acquire);
        /* A dead fast reader holds no rwlock, but the writer that holds it
         * waits for that reader's claim: a waiter that can recover does. */
        if (st == 0 || LOCK_STATE_GEN(st) != gen || s == kv->slot)
            continue;
        int32_t pid = atomic_load_explicit(&s->pid, memory_order_relaxed);
        if (pid > 0 &&
            !process_alive(pid, atomic_load_explicit(&s->start_ticks,
                                                     memory_order_relaxed)))
            return true;
    }
    return false;
}

/* Moves the store from the handle's generation to a new one: SHMKV_ERETRY
 * once there is a new generation to follow, 0 if a live process is doing
 * it already (wait on), or another error. */
static int recover_current(struct shmkv *kv)
{
    int rc = generation_recover(kv, kv->gen);
    if (rc == 0 || rc == SHMKV_ERETRY)
        return SHMKV_ERETRY;
    return rc == SHMKV_ETIMEDOUT ? 0 : rc;
}

/* Waits for the lock in slices; between slices, notices a new generation
 * (SHMKV_ERETRY) or a dead holder (recovers, then SHMKV_ERETRY). */
static int lock_wait(struct shmkv *kv, bool write)
{
    uint64_t start = monotonic_ms();
    uint64_t deadline = start + kv->lock_timeout_ms;
    counter_bump(&kv->slot->lock_waits);
    for (;;) {
        uint64_t now = monotonic_ms();
        uint64_t slice_end = now + LOCK_SLICE_MS;
        if (slice_end > deadline)
            slice_end = deadline;
        struct timespec ts = ms_to_timespec(slice_end);
        int rc;
        if (lock_phase_torn(kv->lock)) {
            /* A hand-over under way, or one a dead process left half done:
             * look again shortly, and for a dead holder meanwhile. */
            struct timespec pause = {0, 200000};
            nanosleep(&pause, NULL);
            rc = ETIMEDOUT;
        } else {
            rc = write ? pthread_rwlock_clockwrlock(kv->lock, CLOCK_MONOTONIC,
                                                    &ts)
                       : pthread_rwlock_clockrdlock(kv->lock, CLOCK_MONOTONIC,
                                                    &ts);
        }
        if (rc == 0)
            return 0;
        if (rc != ETIMEDOUT && rc != EINTR && rc != EAGAIN)
            return set_error(SHMKV_ESYS, "rwlock: error %d", rc);
        uint64_t cur =
            atomic_load_explicit(&kv->ctl->current, memory_order_acquire);
        if (cur != kv->current)
            return SHMKV_ERETRY;
        if (write && atomic_load_explicit(&kv->ctl->recover_gen,
                                          memory_order_acquire) == kv->gen)
            return SHMKV_ERETRY;
        if (kv->can_recover && lock_has_dead_holder(kv, kv->gen)) {
            rc = recover_current(kv);
            if (rc != 0)
                return rc;
        }
        if (monotonic_ms() >= deadline) {
            counter_bump(&kv->slot->lock_timeouts);
            return set_error(SHMKV_ETIMEDOUT, "waited %u ms for the %s lock",
                             kv->lock_timeout_ms, write ? "write" : "read");
        }
    }
}

/* True if the copy of this handle's generation into a new one (recover_gen)
 * was begun by a process that died before publishing it: nothing would
 * ever clear recover_gen, and writers would wait for it until they time
 * out. The recoverer stored recover_pid and recover_start_ticks before
 * recover_gen (seq_cst), so having loaded recover_gen we see them. */
static bool recovery_abandoned(struct shmkv *kv)
{
    struct ctl_header *c = kv->ctl;
    int32_t pid = atomic_load_explicit(&c->recover_pid, memory_order_seq_cst);
    return pid > 0 && pid != (int32_t)kv->pid &&
           atomic_load_explicit(&c->recover_gen, memory_order_seq_cst) ==
               kv->gen &&
           !process_alive(pid, atomic_load(&c->recover_start_ticks));
}

static inline int lock_try(struct shmkv *kv, bool write)
{
    return write ? pthread_rwlock_trywrlock(kv->lock)
                 : pthread_rwlock_tryrdlock(kv->lock);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Sections are short (a write holds the lock for well under a
 * microsecond), so a process that finds the lock taken first retries for a
 * few microseconds, backing off, before it sleeps in the kernel: a futex
 * sleep and wake-up costs tens of microseconds and, with a steady mix of
 * writes, would make every reader pay it. */
static int lock_spin(struct shmkv *kv, bool write)
{
    unsigned pauses = 1;
    for (int attempt = 0; attempt < LOCK_SPIN_ATTEMPTS; attempt++) {
        for (unsigned i = 0; i < pauses; i++)
            cpu_relax();
        if (pauses < LOCK_SPIN_MAX_PAUSES)
            pauses *= 2;
        if (lock_try(kv, write) == 0)
            return 0;
    }
    return EBUSY;
}

/* With the write lock held: raises the generation's writer flag, so that
 * read sections take the rwlock from now on, and waits until none of those
 * begun without it (LOCKING_FAST) is left. Sections are short, so it spins
 * a few microseconds first. A dead process's claim means a new generation
 * (SHMKV_ERETRY). */
static int readers_drain(struct shmkv *kv)
{
    atomic_store_explicit(kv->writer, 1, memory_order_seq_cst);
    struct client_slot *slots =
        (struct client_slot *)((char *)kv->ctl + kv->ctl->clients_off);
    uint32_t n =
        atomic_load_explicit(&kv->ctl->clients_hwm, memory_order_seq_cst);
    if (n > kv->ctl->max_clients)
        n = kv->ctl->max_clients;
    const uint64_t fast = LOCK_STATE(kv->gen, LOCKING_FAST);
    uint64_t deadline = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct client_slot *s = &slots[i];
        unsigned spins = 0;
        uint64_t st;
        while ((st = atomic_load_explicit(&s->lock_state,
                                          memory_order_seq_cst)) == fast &&
               s != kv->slot) {
            if (++spins < DRAIN_SPINS) {
                cpu_relax();
                continue;
            }
            /* A long section, or a dead reader's: look, then sleep. */
            if (deadline == 0) {
                deadline = monotonic_ms() + kv->lock_timeout_ms;
                counter_bump(&kv->slot->lock_waits);
            }
            /* Recovered meanwhile, or being recovered by a process that
             * waits for this writer to let go. */
            if (atomic_load_explicit(&kv->ctl->current, memory_order_acquire) !=
                    kv->current ||
                atomic_load_explicit(&kv->ctl->recover_gen,
                                     memory_order_seq_cst) == kv->gen)
                return SHMKV_ERETRY;
            /* A claim whose process looks dead is not simply cleared: if
             * the process lives after all (in another pid namespace, say),
             * it is still reading. The store moves to a new generation
             * instead, which leaves the reader its copy untouched. */
            int32_t pid = atomic_load(&s->pid);
            if (kv->can_recover &&
                (pid <= 0 ||
                 !process_alive(pid, atomic_load(&s->start_ticks)))) {
                int rc = recover_current(kv);
                if (rc != 0)
                    return rc;
            }
            if (monotonic_ms() >= deadline) {
                atomic_store_explicit(kv->writer, 0, memory_order_release);
                counter_bump(&kv->slot->lock_timeouts);
                return set_error(SHMKV_ETIMEDOUT,
                                 "waited %u ms for readers to finish",
                                 kv->lock_timeout_ms);
            }
            struct timespec pause = {0, 100000};
            nanosleep(&pause, NULL);
        }
    }
    return 0;
}

/* Takes the lock on the attached generation, following generation changes.
 * On success the handle's generation is current and the lock is held. A
 * writer does not even ask for the lock of a generation being copied into a
 * new one (recover_gen): it waits for the new generation instead, and takes
 * the copy over if the process making it died. */
static int lock_take(struct shmkv *kv, bool write)
{
    uint64_t deadline = 0; /* set on the first retry: reading the clock
                              costs as much as an uncontended lock */
    if (write && kv->closer)
        return set_error(SHMKV_ECLOSED, "the store was closed");
    for (;;) {
        int rc = generation_refresh(kv);
        if (rc != 0)
            return rc;
        if (write && atomic_load_explicit(&kv->ctl->recover_gen,
                                          memory_order_seq_cst) == kv->gen) {
            rc = SHMKV_ERETRY;
            if (kv->can_recover && recovery_abandoned(kv)) {
                /* Claims the recovery from the dead process (removing the
                 * segment it was building) and copies the generation. */
                rc = generation_recover(kv, kv->gen);
                if (rc == 0 || rc == SHMKV_ETIMEDOUT)
                    rc = SHMKV_ERETRY;
            }
            goto next;
        }
        atomic_store_explicit(
            &kv->slot->lock_state,
            LOCK_STATE(kv->gen, write ? LOCKING_WRITE : LOCKING_READ),
            write ? memory_order_seq_cst : memory_order_relaxed);
        rc = lock_try(kv, write);
        if (rc != 0 && write) {
            /* Raised early too, so that read sections meanwhile queue on
             * the rwlock: behind this writer, and where a reader finds a
             * dead holder and recovers the store. */
            atomic_store_explicit(kv->writer, 1, memory_order_relaxed);
        }
        if (rc != 0)
            rc = lock_spin(kv, write);
        if (rc != 0)
            rc = lock_wait(kv, write);
        if (rc == 0) {
            /* Pairs with lock_settle's release, for a waiter it let out. */
            atomic_thread_fence(memory_order_acquire);
            if (write)
                atomic_store_explicit(&kv->slot->lock_state,
                                      LOCK_STATE(kv->gen, LOCKING_WRITE_HELD),
                                      memory_order_seq_cst);
            /* A recovery may have published a new generation while this
             * handle waited on the old lock; a writer must also not write
             * into a generation that is being copied (seq_cst pairs with
             * generation_recover's store of recover_gen). */
            bool stale =
                write && atomic_load_explicit(&kv->ctl->recover_gen,
                                              memory_order_seq_cst) == kv->gen;
            /* After recover_gen: a recovery that ended in between has
             * published its generation by then. */
            uint64_t cur =
                atomic_load_explicit(&kv->ctl->current, memory_order_seq_cst);
            stale = stale || cur != kv->current;
            if (!stale) {
                if (!write) {
                    /* Holding the read lock, no writer can be at work: a
                     * flag still raised is a waiting writer's, or a dead
                     * one's. Left up, it would send every read section
                     * to the rwlock. */
                    uint32_t w =
                        atomic_load_explicit(kv->writer, memory_order_relaxed);
                    if (w != 0)
                        atomic_compare_exchange_strong(kv->writer, &w, 0);
                    kv->read_fast = false;
                    return 0;
                }
                rc = readers_drain(kv);
                if (rc == 0)
                    return 0;
                pthread_rwlock_unlock(kv->lock);
                if (rc != SHMKV_ERETRY) {
                    atomic_store_explicit(&kv->slot->lock_state, 0,
                                          memory_order_seq_cst);
                    return rc;
                }
            } else {
                pthread_rwlock_unlock(kv->lock);
                rc = SHMKV_ERETRY;
            }
        }
        atomic_store_explicit(&kv->slot->lock_state, 0, memory_order_seq_cst);
    next:
        if (rc != SHMKV_ERETRY)
            return rc;
        if (deadline == 0)
            deadline = monotonic_ms() + 2u * kv->lock_timeout_ms;
        else if (monotonic_ms() >= deadline) {
            counter_bump(&kv->slot->lock_timeouts);
            return set_error(SHMKV_ETIMEDOUT,
                             "the store is being recovered; gave up after "
                             "%u ms",
                             2u * kv->lock_timeout_ms);
        }
        if (write && atomic_load_explicit(&kv->ctl->recover_gen,
                                          memory_order_acquire) == kv->gen) {
            struct timespec pause = {0, 1000000};
            nanosleep(&pause, NULL);
        }
    }
}

int lock_read_slow(struct shmkv *kv)
{
    return lock_take(kv, false);
}

int lock_write(struct shmkv *kv)
{
    return lock_take(kv, true);
}

void lock_write_end(struct shmkv *kv)
{
    atomic_store_explicit(kv->writer, 0, memory_order_release);
    pthread_rwlock_unlock(kv->lock);
    atomic_store_explicit(&kv->slot->lock_state, 0, memory_order_release);
}

static struct client_slot *client_slots(struct shmkv *kv)
{
    return (struct client_slot *)((char *)kv->ctl + kv->ctl->clients_off);
}

/* Folds a slot's counters into the store's and frees it. */
static void client_slot_retire(struct shmkv *kv, struct client_slot *s)
{
    struct ctl_header *c = kv->ctl;
    atomic_fetch_add(&c->retired_hits, atomic_exchange(&s->hits, 0));
    atomic_fetch_add(&c->retired_misses, atomic_exchange(&s->misses, 0));
    atomic_fetch_add(&c->retired_lock_waits,
                     atomic_exchange(&s->lock_waits, 0));
    atomic_fetch_add(&c->retired_lock_timeouts,
                     atomic_exchange(&s->lock_timeouts, 0));
    atomic_store(&s->lock_state, 0);
    atomic_store(&s->start_ticks, 0);
    atomic_store(&s->pid, 0);
}

/* Frees the slots of dead processes that cannot hold the current
 * generation's rwlock nor claim a read section in it. */
void client_slots_reap(struct shmkv *kv)
{
    struct client_slot *slots = client_slots(kv);
    uint32_t gen = (uint32_t)CURRENT_GEN(
        atomic_load_explicit(&kv->ctl->current, memory_order_acquire));
    for (uint32_t i = 0; i < kv->ctl->max_clients; i++) {
        struct client_slot *s = &slots[i];
        int32_t pid = atomic_load(&s->pid);
        if (pid == 0 || s == kv->slot)
            continue;
        uint64_t st = atomic_load(&s->lock_state);
        if (st != 0 && LOCK_STATE_GEN(st) == gen)
            continue;
        if (process_alive(pid, atomic_load(&s->start_ticks)))
            continue;
        /* Claim it before retiring, so two reapers do not both fold it. */
        if (atomic_compare_exchange_strong(&s->pid, &pid, -1))
            client_slot_retire(kv, s);
    }
}

int client_slot_claim(struct shmkv *kv)
{
    struct client_slot *slots = client_slots(kv);
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < kv->ctl->max_clients; i++) {
            int32_t expected = 0;
            if (atomic_compare_exchange_strong(&slots[i].pid, &expected,
                                               (int32_t)kv->pid)) {
                atomic_store(&slots[i].start_ticks, kv->start_ticks);
                atomic_store(&slots[i].lock_state, 0);
                uint32_t hwm = atomic_load(&kv->ctl->clients_hwm);
                while (hwm < i + 1 && !atomic_compare_exchange_weak(
                                          &kv->ctl->clients_hwm, &hwm, i + 1)) {
                }
                kv->slot = &slots[i];
                return 0;
            }
        }
        client_slots_reap(kv);
        /* Slots of dead processes that may hold the current generation's
         * lock, or claim a read section in it, come back only with a new
         * generation: make one, as a waiter for the lock would. */
        if (pass == 0 && kv->can_recover && generation_refresh(kv) == 0 &&
            lock_has_dead_holder(kv, kv->gen)) {
            generation_recover(kv, kv->gen);
            client_slots_reap(kv);
        }
    }
    return set_error(SHMKV_ECLIENTS,
                     "all %u client slots of the store are in use",
                     kv->ctl->max_clients);
}

void client_slot_release(struct shmkv *kv)
{
    if (kv->slot == NULL)
        return;
    client_slot_retire(kv, kv->slot);
    kv->slot = NULL;
}
