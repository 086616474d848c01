/*
 * internal.h - the handle and the calls the client subsystems share.
 */
#ifndef SHMKV_INTERNAL_H
#define SHMKV_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "layout.h"
#include "shmkv.h"

/* The control header's fixed part: identity, limits and layout, every
 * field before owner_pid, and (ctl_tail) those after marks that never
 * change either. */
#define CTL_FIXED_BYTES offsetof(struct ctl_header, owner_pid)
struct ctl_tail {
    int64_t created_unix;
    uint64_t locks_off, wclients_off, wslots_off, pins_off, reader_bytes,
        clients_off, recency_off, recency_cells, versions_off, version_cells,
        leases_off, chunks_off, chunk_count;
};

/* Reader chunks: enough for twice max_clients read-only handles, so that
 * one user, who may hold half (CHUNKS_PER_UID), cannot take them all. */
static inline uint64_t chunk_count_for(uint64_t max_clients)
{
    return 2 * ((max_clients + CHUNK_SLOTS - 1) / CHUNK_SLOTS);
}
/* Pins: the readers' slots', the writers', then the chunks' slots'. */
static inline uint64_t pin_count(uint64_t max_clients, uint64_t chunk_count)
{
    return 2 * max_clients + chunk_count * CHUNK_SLOTS;
}

/* The data header's fixed part: every field before `entries`. */
#define DATA_FIXED_BYTES offsetof(struct data_header, entries)

/* One process's attachment to a store. */
struct shmkv {
    struct ctl_header *ctl;
    int ctl_shmid;
    struct client_slot *slot; /* this handle's client slot */
    uint32_t slot_index;      /* among readers' or writers' slots */
    uint32_t pin_index;       /* its pin's */
    bool slot_owned;          /* holds the slot's liveness semaphore */
    bool slot_writer;         /* a writers' slot (and writer semaphore) */
    /* Claim scans look at this handle's slot: clients_hwm, which never
     * decreases, has passed it. Until then each section says again, in
     * the reader segment, how far slots are taken (read_cover). */
    bool covered;
    char *reader_seg; /* the reader segment, attached read-write */
    int reader_shmid;
    /* A read-only handle's slot in a reader chunk of its user's: the
     * chunk as attached, and its semaphore set; NULL where the slot is
     * in the reader segment (clients.c). */
    char *chunk_seg;
    int chunk_semid;
    /* A writer's attachments of the registered chunks, as of the
     * table's chunks_version (chunks_follow). */
    struct chunk_map *chunk_maps;
    uint32_t chunk_maps_version;
    struct claim_set *scan_sets; /* room for 2 + chunk_count (reclaim.c) */
    /* Dead readers' events logged in the second that began then. */
    uint64_t dead_window_ms;
    unsigned dead_logged;

    /* The read claim stored when the open section began, and the count
     * of claim scans begun then. */
    uint64_t claim;
    uint64_t scans0;

    /* The attached generation; refreshed when ctl->current changes. 0
     * while nothing is attached, and after a fork in the child, so that
     * the inline read path falls to its slow path. */
    uint64_t current;
    uint32_t gen;
    int data_shmid;
    struct data_header *data; /* NULL until attached */
    struct bucket *buckets;
    /* Where the arena's blocks may start: [arena_first, arena_first +
     * arena_units) in units, and the first byte past what a read may
     * touch. */
    uint32_t arena_first;
    uint32_t arena_units;
    uint64_t read_end_bytes;
    const char *read_end; /* data + read_end_bytes */

    /* Copies of fixed settings, so the hot path reads private memory. */
    uint64_t seed;
    uint64_t nbuckets;
    uint32_t max_key_bytes;
    uint32_t max_value_bytes;
    uint32_t timeout_ms; /* this handle's longest wait: lock_timeout_ms
                            unless shmkv_set_timeout changed it */
    uint32_t reader_timeout_ms;
    bool lru;
    uint32_t *recency; /* lru only */
    uint64_t recency_mask;

    /* The deadline of the call in progress (CLOCK_MONOTONIC ms), 0 until
     * it first has to wait. */
    uint64_t deadline_ms;

    bool rdonly;
    bool in_read;
    bool in_write; /* in shmkv_write_begin's section: the lock is held */
    bool closer;   /* this handle closed the store: it may still read */
    bool owner;    /* created or adopted it: shmkv_destroy removes it */
    bool forked;   /* this is a child's copy of its parent's handle */
    pid_t pid;
    uint64_t now_ms; /* 0: not read yet in this section */
    uint64_t rng;

    /* Below: what the read path never touches. */
    _Atomic uint64_t *versions; /* the version cells (control segment) */
    struct lease *leases;       /* the fill leases (control segment) */
    uint64_t version_mask;
    /* When the call in progress first waited for readers, 0 until then
     * (reset with deadline_ms). */
    uint64_t wait_ms;
    /* The key it was opened at, and whether it follows the store there:
     * an shmkv_open handle whose store was closed attaches the next one
     * made at the key (handle_reattach), an owner's never. */
    key_t key;
    bool reattach;

    /* The segment an online resize is filling, as this writer attached it
     * to apply its own changes there too (resize.c), and when it last
     * looked whether that resize's resizer lives. */
    struct shmkv *rs;
    uint64_t rs_checked_ms;
    bool in_resize;   /* in shmkv_resize, past noting itself */
    unsigned evicted; /* live entries the last write evicted */

    /* This handle's writer slot (NULL for a reader). */
    struct writer_slot *wslot;

    /* The write lock this handle holds (lock.c). */
    pthread_rwlock_t *lock;
    uint64_t lock_epoch;
    bool lock_write;

    /* The rest of the geometry, as validated at attach: a damaged header
     * is compared with these, never trusted instead. */
    uint64_t data_bytes;
    uint64_t limbo_slots;
    uint64_t undo_slots;
    /* The data header's fixed part (identity and geometry, up to
     * `entries`) as attached: data_intact() compares it. */
    unsigned char data_fixed[DATA_FIXED_BYTES];
    uint64_t store_nonce; /* the control header's, as attached */
    uint32_t max_clients; /* likewise */
    /* Likewise the control header's (ctl_intact()). */
    unsigned char ctl_fixed[CTL_FIXED_BYTES];
    struct ctl_tail ctl_tail_fixed;

    struct shmkv *reg_prev, *reg_next; /* the process's open handles */
};

/* store.c: the error for a call on a fork()ed child's copy of a handle */
int refuse_forked(const struct shmkv *kv);

/* A counter in this handle's own client slot: only its owner writes it, so
 * a plain load and store suffice. */
static inline void slot_count(_Atomic uint64_t *c)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

/* errors.c */
int set_error(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int set_errno_error(int code, const char *what);

/* read.c: unix time in milliseconds (the realtime clock, a vDSO read) */
uint64_t clock_unix_ms(void);
/* lock.c: milliseconds on CLOCK_MONOTONIC */
uint64_t monotonic_ms(void);
/* The deadline of the call in progress, computed on first use. */
uint64_t call_deadline(struct shmkv *kv);
void cpu_relax(void);

/* segment.c: System V keys and segments */
int key_from_where(const char *where, key_t *out);
/* huge: SHM_HUGETLB, bytes a whole number of huge pages (errors name
 * vm.nr_hugepages or vm.hugetlb_shm_group). */
int segment_create(key_t key, uint64_t bytes, unsigned mode, bool huge,
                   int *shmid_out);
/* The huge page size (Hugepagesize in /proc/meminfo), 0 if none. */
uint64_t huge_page_bytes(void);
int segment_attach(int shmid, bool rdonly, void **addr_out,
                   uint64_t *bytes_out);
int segment_set_group(int shmid, int64_t gid);
uint64_t page_bytes(void);
uint64_t round_to_pages(uint64_t bytes);

/* liveness.c: semaphores per client slot and one for the owner, raised
 * with SEM_UNDO, so that the kernel reports a process's death exactly.
 * LIVE_READER: the reader sets, one semaphore per readers' client slot,
 * which readers may change; LIVE_WRITER: the writer sets, one per writers'
 * client slot and the owner's, which only writers may. */
enum live_kind { LIVE_READER, LIVE_WRITER };
/* semctl's fourth argument, which callers declare themselves. */
union semun_arg {
    int val;
    struct semid_ds *buf;
    unsigned short *array;
};
/* The permission bits of what readers write (the reader segment and
 * semaphores): the store's mode with write added wherever it reads. */
static inline unsigned reader_mode(unsigned mode)
{
    return mode | ((mode & 0444) >> 1);
}
int liveness_create(struct ctl_header *c, unsigned mode, int64_t gid);
void liveness_remove(struct ctl_header *c);
/* 0 when this process now holds index's semaphore, 1 when another live
 * process does, or an error. */
int liveness_claim(const struct ctl_header *c, enum live_kind k,
                   uint32_t index);
void liveness_release(const struct ctl_header *c, enum live_kind k,
                      uint32_t index);
/* The same for semaphore num of set id: a reader chunk's (clients.c).
 * One value at a time: a chunk's set id is taken from memory, and its
 * user may have removed the set and another taken the id, with any
 * number of semaphores. */
int liveness_claim_at(int id, unsigned short num);
void liveness_release_at(int id, unsigned short num);
bool liveness_alive_at(int id, unsigned short num);
/* true unless the process holding index's semaphore is known dead (or
 * none holds it). */
bool liveness_alive(const struct ctl_header *c, enum live_kind k,
                    uint32_t index);
/* Fills alive[i] for the first n client slots; false if it could not. */
bool liveness_all(const struct ctl_header *c, enum live_kind k, uint32_t n,
                  uint8_t *alive);
static inline uint32_t liveness_owner_index(const struct ctl_header *c)
{
    return c->max_clients;
}

/* arena.c: the value allocator (every change through the undo log) */
void arena_init(struct data_header *d);
uint32_t arena_alloc(struct data_header *d, uint32_t units);
bool arena_can_alloc(const struct data_header *d, uint32_t units);
void arena_free(struct data_header *d, uint32_t off);
/* Takes the free block at off off its list and marks it used and held
 * (BLOCK_HELD) until arena_free; false, with nothing written, if it is not
 * a free block with sane links. */
bool arena_hold(struct data_header *d, uint32_t off);
/* Makes the first `units` of the held block at off a used block (its entry
 * fields zero), the rest, if a block's worth, held still; returns off, or 0
 * if off is not a held block that large. */
uint32_t arena_carve(struct data_header *d, uint32_t off, uint32_t units);
/* Joins the held block at off with the held block after it; false, with
 * nothing written, if either is not held. */
bool arena_held_merge(struct data_header *d, uint32_t off);
uint64_t arena_largest_free(const struct data_header *d);
int arena_check(const struct data_header *d, uint8_t *used_map,
                struct shmkv_check_report *r);

/* The handle's xorshift64 generator: sampling for eviction and
 * compaction. */
static inline uint64_t handle_random(struct shmkv *kv)
{
    uint64_t x = kv->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    kv->rng = x;
    return x;
}

static inline struct block *block_at(const struct data_header *d,
                                     uint32_t off_units)
{
    return (struct block *)((char *)d + (uint64_t)off_units * UNIT_BYTES);
}

static inline uint32_t entry_units(size_t klen, size_t vlen)
{
    return (uint32_t)((sizeof(struct block) + klen + vlen + UNIT_BYTES - 1) /
                      UNIT_BYTES);
}

/* The value's length, from the block's size, the key's length and the
 * padding: signed, so that a damaged header gives a length a bounds check
 * refuses rather than one that wraps. */
static inline int64_t entry_vlen(const struct block *b)
{
    return (int64_t)b->size_units * UNIT_BYTES - (int64_t)sizeof(struct block) -
           b->klen - b->pad;
}

/* Sets the padding of an entry of size_units whose key and value have
 * klen + vlen bytes. */
static inline void entry_set_pad(struct block *b, size_t klen, size_t vlen)
{
    b->pad = (uint8_t)((uint64_t)b->size_units * UNIT_BYTES -
                       sizeof(struct block) - klen - vlen);
}

static inline const char *entry_key(const struct block *b)
{
    return (const char *)(b + 1);
}

static inline const char *entry_value(const struct block *b)
{
    return (const char *)(b + 1) + b->klen;
}

/* Kill points for the crash tests: named places in a write and in a
 * recovery where a test's child may die on purpose (the hook raises
 * SIGKILL). NULL, and one predicted branch each, in every other program. */
extern void (*shmkv_test_hook)(const char *point);
#define TEST_POINT(name)                                                       \
    do {                                                                       \
        if (__builtin_expect(shmkv_test_hook != NULL, 0))                      \
            shmkv_test_hook(name);                                             \
    } while (0)

/* intent.c: the write in progress and its undo log */
void ulog_overflow(void);
/* Saves the aligned 8-byte word holding *word in the undo log before it
 * changes: the record, then the count that covers it, then (the caller)
 * the change, in program order (see intent.c). Inline: a write makes a
 * dozen of these. */
static inline void ulog_save(struct data_header *d, const void *word)
{
    uint64_t off = (uint64_t)((const char *)word - (const char *)d) & ~7ull;
    uint32_t n = d->intent.undo_count;
    if (__builtin_expect(n >= d->undo_slots, 0)) {
        ulog_overflow();
        return;
    }
    struct undo_rec *r = (struct undo_rec *)((char *)d + d->undo_off) + n;
    r->off = off;
    r->old = __atomic_load_n((const uint64_t *)((const char *)d + off),
                             __ATOMIC_RELAXED);
    atomic_signal_fence(memory_order_seq_cst);
    d->intent.undo_count = n + 1;
    atomic_signal_fence(memory_order_seq_cst);
    TEST_POINT("write:logged");
}
/* Stores value into lvalue, a field of the data segment, after saving the
 * 8-byte word that holds it in the undo log. */
#define LOGGED_SET(d, lvalue, value)                                           \
    do {                                                                       \
        ulog_save((d), &(lvalue));                                             \
        (lvalue) = (value);                                                    \
    } while (0)
void op_begin(struct shmkv *kv, uint32_t kind);
/* Names the slot a WRITE_OP_SET or WRITE_OP_REMOVE is about to publish. */
void op_target(struct shmkv *kv, uint32_t kind, uint64_t hash, uint64_t bucket,
               unsigned slot, uint32_t old_off, uint64_t new_slot,
               int entries_delta, int ttl_delta, uint64_t vcell);
void op_published(struct shmkv *kv);
void op_end(struct shmkv *kv);
/* Completes or undoes what a dead writer left; returns the kind of
 * operation repaired, 0 if none. Called with no live writer at work. */
uint32_t intent_repair(struct shmkv *kv);
uint64_t undo_bytes_for(void);

/* resize.c: writes made during an online resize are made in its segment
 * too; after an entry (at unit offset off) was published, after one was
 * unlinked, after a flush. Under the write lock; each costs one load when
 * no resize is under way. */
void resize_mirror(struct shmkv *kv, uint32_t off, bool removed);
void resize_mirror_flush(struct shmkv *kv);
static inline bool resize_copying(const struct shmkv *kv)
{
    return __builtin_expect(
        atomic_load_explicit(&kv->ctl->resize_state, memory_order_relaxed) ==
            RESIZE_COPYING,
        0);
}
/* Gives up the resize under way, for a reason logged as the
 * SHMKV_EVENT_RESIZE_ABORTED event's detail; under the write lock. */
#define RESIZE_WHY_WRITER_DIED 1u /* maybe halfway through both segments */
#define RESIZE_WHY_RESIZER_DIED 2u
#define RESIZE_WHY_FULL 3u      /* the live data grew past the new size */
#define RESIZE_WHY_ATTACH 4u    /* a writer could not attach the segment */
#define RESIZE_WHY_CANCELLED 5u /* its progress callback said stop */
void resize_abort_locked(struct shmkv *kv, unsigned why);
/* Under the write lock: gives up a resize whose resizer died, and removes
 * its segment if this process may. Rate-limited per handle. */
void resize_tend(struct shmkv *kv);
/* True if shmid is a data segment of the store with this nonce. */
bool data_segment_of_store(int shmid, uint64_t nonce);
/* Detaches the handle's view of a resize's segment. */
void resize_detach(struct shmkv *kv);

/* write.c: takes the write lock for one call (or finds it held by the
 * handle's write section), and lets it go. */
int write_begin(struct shmkv *kv);
void write_end(struct shmkv *kv);
/* write.c: what intent_repair runs to finish an operation */
void op_finish(struct shmkv *kv);
/* Publishes word (an entry at a new block) at the index slot (bucket,
 * slot), retiring old_off to limbo: the end of a WRITE_OP_SET operation
 * whose block is prepared. vcell: the key's version cell to bump (0: the
 * same data moved, no change to the key). */
void entry_publish(struct shmkv *kv, uint64_t hash, uint64_t bucket,
                   unsigned slot, uint32_t old_off, uint64_t word,
                   int entries_delta, int ttl_delta, uint64_t vcell);
void flush_index(struct shmkv *kv);
void arena_reset(struct shmkv *kv);

/* table.c: the hash index */
struct table_pos {
    uint64_t bucket;
    unsigned slot;
    uint32_t off;    /* 0: not found */
    unsigned probes; /* buckets looked at */
};
/* table_find, table_home: inline, in table.h */
int table_insert_prepare(struct shmkv *kv, uint64_t hash, uint64_t *bucket,
                         unsigned *slot);
void table_remove_counts(struct shmkv *kv, uint64_t hash, uint64_t bucket);
int table_check(const struct shmkv *kv, uint8_t *used_map,
                struct shmkv_check_report *r);
uint64_t index_bytes_for(uint64_t nbuckets);

/* lock.c: the write lock, its waits, and its recovery */
int lock_init(pthread_rwlock_t *lock);
int lock_take(struct shmkv *kv, bool write);
void lock_release(struct shmkv *kv);
/* Replaces the lock in use when a dead process may hold it or have
 * damaged it, repairing a dead writer's operation. 0 if nothing was
 * wrong, SHMKV_ERETRY after a recovery, or an error. */
int lock_recover_if_dead(struct shmkv *kv);

/* clients.c: client slots */
/* A registered reader chunk as one handle attached it: slots NULL if it
 * could not (gone, or another user's to a reader). */
struct chunk_map {
    int shmid;
    int semid;
    uint32_t serial; /* the entry's when attached (or tried) */
    struct client_slot *slots;
};
const struct reader_chunk *chunk_table(const struct shmkv *kv);
/* The claims a scan looks at: the readers' client slots, the writers',
 * then each registered chunk's. semid: the chunk's semaphore set, -1 for
 * the others (kind says which sets). */
struct claim_set {
    struct client_slot *slots;
    uint32_t n;
    uint32_t pin_base; /* pin of slot i: pin_base + i */
    enum live_kind kind;
    int semid;
};
static inline bool claim_set_alive(const struct ctl_header *c,
                                   const struct claim_set *set, uint32_t i)
{
    return set->semid >= 0 ? liveness_alive_at(set->semid, (unsigned short)i)
                           : liveness_alive(c, set->kind, i);
}
/* A chunk's permission bits: read and write for the owner and whoever
 * the store's mode lets write. */
unsigned chunk_mode(unsigned store_mode);
/* Brings kv->chunk_maps up to the chunk table. */
void chunks_follow(struct shmkv *kv);
/* Lets go of kv->chunk_maps (and the scan sets sized for them). */
void chunks_detach(struct shmkv *kv);
/* Removes the registered chunks (the store at ctl_id is being removed). */
void chunks_remove(struct ctl_header *c, int ctl_id);
int client_slot_claim(struct shmkv *kv);
void client_slot_release(struct shmkv *kv);
/* Frees the slots of dead processes that nothing needs any more. */
uint32_t client_slots_reap(struct shmkv *kv);
/* The client slots and writer slots, and how far to look at them: by the
 * layout and the limit the handle attached with, never by the header as it
 * is now. */
static inline struct client_slot *client_slots(const struct shmkv *kv)
{
    return (struct client_slot *)(kv->reader_seg +
                                  kv->ctl_tail_fixed.clients_off);
}
static inline struct client_slot *writer_claims(const struct shmkv *kv)
{
    return (struct client_slot *)((char *)kv->ctl +
                                  kv->ctl_tail_fixed.wclients_off);
}
static inline struct writer_slot *writer_slots(const struct shmkv *kv)
{
    return (struct writer_slot *)((char *)kv->ctl +
                                  kv->ctl_tail_fixed.wslots_off);
}
/* The pins, per client slot, written by writers (reclaim.c); a reader
 * chunk's slots' pins from chunk_pin_base(kv, k) on. */
static inline struct client_pin *client_pins(const struct shmkv *kv)
{
    return (struct client_pin *)((char *)kv->ctl + kv->ctl_tail_fixed.pins_off);
}
static inline uint32_t chunk_pin_base(const struct shmkv *kv, uint32_t k)
{
    return (uint32_t)(2 * kv->max_clients + k * CHUNK_SLOTS);
}
static inline struct reader_header *reader_header_of(const struct shmkv *kv)
{
    return (struct reader_header *)kv->reader_seg;
}
/* The readers' slots claims scans look at: clients_hwm, which only
 * writers raise. */
static inline uint32_t clients_scan_limit(const struct shmkv *kv)
{
    uint32_t n =
        atomic_load_explicit(&kv->ctl->clients_hwm, memory_order_seq_cst);
    return n < kv->max_clients ? n : kv->max_clients;
}
/* The writers' slots scans and lock recovery look at. */
static inline uint32_t writers_scan_limit(const struct shmkv *kv)
{
    uint32_t n =
        atomic_load_explicit(&kv->ctl->writers_hwm, memory_order_seq_cst);
    return n < kv->max_clients ? n : kv->max_clients;
}
/* Raises clients_hwm to the reader segment's mark (a writer, which may
 * write the control segment); returns the new limit. */
uint32_t clients_scan_raise(struct shmkv *kv);

/* reclaim.c: memory readers may still see, and revoking their sections */
int read_claim_slow(struct shmkv *kv);
/* After a claim's store, while the handle's slot is not yet covered:
 * whether it is now (kv->covered), and if not, the reader segment's mark
 * raised to the slot again. */
void read_cover(struct shmkv *kv);
/* Whether every claim scan begun since the section's claim, up to scan
 * number `upto`, found it. */
bool read_scans_found(const struct shmkv *kv, uint64_t upto);
/* Puts the unlinked block at off in limbo (within an operation). */
void limbo_retire(struct shmkv *kv, uint32_t off);
/* Finds how much of limbo no read section can still see, without waiting,
 * and frees the oldest of it beyond a pool kept for reuse (all of it if
 * all). Returns the units freed. */
uint64_t limbo_reclaim(struct shmkv *kv, bool all);
bool limbo_has_room(const struct data_header *d);
/* A block no section can see any more, of `units` (or one more), taken
 * from limbo for a new entry (within an operation), or 0. */
uint32_t limbo_take(struct shmkv *kv, uint32_t units);
bool limbo_can_take(const struct shmkv *kv, uint32_t units);
/* When limbo has nothing safe left to reuse but enough retired since it
 * last looked, looks at the claims again (limbo_reclaim). */
void limbo_refill(struct shmkv *kv);
/* Waits until no read section that began at or before read epoch
 * `epoch` (low 32 bits) is open, revoking what is held past
 * reader_timeout_ms and dropping what dead processes left, until the
 * call's deadline; without wait, only says whether one is open
 * (SHMKV_ETIMEDOUT). */
int readers_wait_past(struct shmkv *kv, uint32_t epoch, bool wait);
/* Waits until the oldest block in limbo can be freed, and frees. */
int limbo_wait(struct shmkv *kv);
/* Waits until every block in limbo can be freed, and frees them all. */
int limbo_drain(struct shmkv *kv);
/* Makes room in limbo for one more block, waiting for readers if it must. */
int limbo_reserve(struct shmkv *kv);

/* compact.c: defragmenting the arena */
/* True if off lies in the window a compaction is evacuating: a block
 * there that becomes free is held, not freed. */
static inline bool compact_window_has(const struct data_header *d, uint32_t off)
{
    return off >= d->compact_lo && off < d->compact_hi;
}
/* Packs the cheapest window of the arena with room for a block of
 * `units`, moving its entries (never the one at keep) together: 0 once
 * such a block can be allocated, SHMKV_ERETRY if entries moved but not
 * yet enough, SHMKV_ENOSPC if none could, or an error. Under the write
 * lock. */
int arena_compact(struct shmkv *kv, uint32_t units, uint32_t keep);
/* Releases a window a compaction left (its writer died): frees what it
 * held. */
void compact_release(struct shmkv *kv);

/* events.c */
void event_log(struct ctl_header *c, uint32_t type, int32_t pid,
               uint64_t duration_ms, uint64_t detail);
/* Counts a reader that died inside its section; logs it as an event at
 * most DEAD_EVENTS_PER_S times a second from this handle: what a reader
 * writes can fake any number of them, which must not push other events
 * out of the ring. */
void dead_reader_event(struct shmkv *kv, int32_t pid);

/* generation.c */
int generation_refresh(struct shmkv *kv);
/* A data segment of bytes at gen, checked before anything steers by it;
 * and a handle bound to one (generation.c). */
int data_validate(const struct shmkv *kv, const struct data_header *d,
                  uint64_t bytes, uint32_t gen);
void handle_bind_data(struct shmkv *kv, struct data_header *d, int shmid,
                      uint64_t current);
/* The same, at the start of a call: a handle that follows its key
 * (kv->reattach) moves to the new store there first if its own was
 * closed. Never where the call holds something of the old store. */
int generation_follow(struct shmkv *kv);
/* 0 if the data header's identity and geometry are as the handle attached
 * them; else SHMKV_ECORRUPT: a writer must not steer by them. */
int data_intact(const struct shmkv *kv);

/* store.c: the same for the control header. */
int ctl_intact(const struct shmkv *kv);
/* The store kv was attached to is closed: leaves it for the one now at
 * kv->key, if there is a new one (0), else SHMKV_ENOSTORE (none yet) or
 * SHMKV_ECLOSED (the closed one is still there). Never inside a read
 * section. */
int handle_reattach(struct shmkv *kv);
struct ctl_tail ctl_tail_of(const struct ctl_header *c);
int data_segment_make(struct ctl_header *c, uint32_t gen, uint64_t seed,
                      uint64_t bytes, uint64_t entries, int *shmid_out,
                      struct data_header **out);

/* The index's highest load, in percent of its slots. */
#define MAX_LOAD_PERCENT 95u
/* How long shmkv_maintain waits for the write lock. */
#define MAINTAIN_WAIT_MS 5u
uint64_t buckets_for_entries(uint64_t entries);
void data_layout(struct data_header *d, uint64_t data_bytes, uint64_t nbuckets,
                 uint32_t max_key_bytes);

/* Reports one inconsistency found by a check pass. */
void check_problem(struct shmkv_check_report *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Internal retry signal. */
#define SHMKV_ERETRY (-1000)

/* Begins a read section: inline, the whole cost of a section while the
 * generation is unchanged. The reader stores the read epoch in its own
 * client slot (seq_cst), then reads; a writer that unlinked a block and
 * then advanced the epoch frees it only once no slot claims an epoch at
 * or before the one it was unlinked in (reclaim.c). Each side stores,
 * then loads the other's word, seq_cst, so at least one sees the other:
 * the writer sees the claim, or the reader sees the block unlinked. No
 * shared cache line is written, so readers in many processes do not slow
 * each other down, and no reader waits for a writer. */
/* Stores the read claim. The count of claim scans is loaded after the
 * claim's store (seq_cst both): a scan counted later finds the claim, or
 * whatever another process put in its place, and records what it found in
 * this slot's pin (reclaim.c), which read_release checks. */
static inline void read_claim_store(struct shmkv *kv)
{
    /* acquire: pairs with the epoch's advance (seq_cst), after which the
     * blocks unlinked before it are unreachable to this reader. */
    uint64_t e = atomic_load_explicit(&kv->ctl->epoch, memory_order_acquire);
    uint64_t c = CLAIM_MAKE(e, CLAIM_ACTIVE);
    atomic_store_explicit(&kv->slot->claim, c, memory_order_seq_cst);
    kv->claim = c;
    if (__builtin_expect(!kv->covered, 0))
        read_cover(kv);
    kv->scans0 = atomic_load_explicit(&kv->ctl->scans, memory_order_seq_cst);
}

static inline int read_claim(struct shmkv *kv)
{
    uint64_t cur =
        atomic_load_explicit(&kv->ctl->current, memory_order_acquire);
    /* data: a handle that detached keeps the word it had, which a damaged
     * header may repeat. */
    if (__builtin_expect(cur == kv->current && kv->data != NULL, 1)) {
        read_claim_store(kv);
        return 0;
    }
    return read_claim_slow(kv);
}

/* True while the open section has not been revoked. */
static inline bool read_claim_valid(const struct shmkv *kv)
{
    return atomic_load_explicit(&kv->slot->claim, memory_order_relaxed) ==
           kv->claim;
}

/* Ends a read section: 0, or SHMKV_ESTALE if a writer revoked it, or a
 * scan since it began did not find its claim (another process changed
 * it). The acquire fence keeps every read of the section before the loads
 * that decide, and those come before the claim is cleared: a claim still
 * unrevoked there, and scans that all found it, mean that any reuse of
 * memory came after those reads. (A scan that finds the claim cleared
 * comes after them too.) */
static inline int read_release(struct shmkv *kv)
{
    atomic_thread_fence(memory_order_acquire);
    uint64_t c = atomic_load_explicit(&kv->slot->claim, memory_order_relaxed);
    bool ok = __builtin_expect(c == kv->claim, 1);
    if (ok) {
        uint64_t s =
            atomic_load_explicit(&kv->ctl->scans, memory_order_seq_cst);
        ok = __builtin_expect(s == kv->scans0, 1) || read_scans_found(kv, s);
    }
    atomic_store_explicit(&kv->slot->claim, 0, memory_order_release);
    return __builtin_expect(ok, 1) ? 0 : SHMKV_ESTALE;
}

#endif
