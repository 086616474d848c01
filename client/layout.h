/*
 * layout.h - what a shmkv store looks like in shared memory.
 *
 * A store is three kinds of System V segment and two kinds of semaphore
 * set. Who may write each is a role the kernel enforces through its
 * permission bits (README, "Who can do what"): readers attach everything
 * others trust with SHM_RDONLY, and write only the reader segment and the
 * reader semaphores, where nothing can mislead another process (reclaim.c
 * checks every claim a writer honours).
 *
 *   control segment (at the store's key, one per store, never replaced;
 *   writers only)
 *     ctl_header    identity, limits, the current generation word, the
 *                   write lock's epoch, the recovery mutex, the read epoch
 *                   and the count of claim scans, counters, the event ring
 *     lock slots    LOCK_SLOTS process-shared rwlocks; the lock epoch names
 *                   the one in use (lock.c)
 *     writers' client slots
 *                   one cache line per writing handle, as a reader's below,
 *                   where no reader can touch it
 *     writer slots  per writers' client slot, a line written by its writer:
 *                   what lock it is taking or holds, its counters
 *     pins          per client slot of either kind, and per chunk's slot,
 *                   written by writers scanning claims: since when a claim
 *                   holds memory back, and what the scans found (reclaim.c)
 *     chunk table   chunk_count records of a reader chunk: its user, its
 *                   segment and its semaphore set (clients.c)
 *     fill leases   LEASE_SLOTS records of who fills which missing key
 *                   (write.c, shmkv_lease_take)
 *     version cells uint64 counters indexed by a hash of the key that does
 *                   not change with the generation: a write bumps its
 *                   key's cell once it is published (write.c); what
 *                   shmkv_cas and WATCH compare
 *
 *   reader segment (IPC_PRIVATE, one per store; readers write it too)
 *     reader_header how far readers' client slots have been taken
 *     client slots  one cache line per read-only handle: its read claim (the
 *                   epoch its read section began in), its pid for display,
 *                   its own hit/miss counters
 *     recency cells uint32 LRU stamps indexed by the hash tag (lru stores)
 *
 *   reader chunks (IPC_PRIVATE, made by the owner for one reader user;
 *   clients.c)
 *     CHUNK_SLOTS client slots, as in the reader segment, for the
 *     read-only handles of that user alone: the owner (shmkvd) makes it
 *     when one asks, hands it to that user and the writers, and names it
 *     in the control segment's chunk table; readers of other users cannot
 *     touch it. A store whose owner makes none (no shmkvd) uses only the
 *     reader segment.
 *
 *   data segment (IPC_PRIVATE, one per generation; writers only)
 *     data_header   identity, geometry, allocator state, entry count, the
 *                   intent of the write in progress
 *     index         nbuckets cache-line buckets of 7 slots
 *     limbo         a ring of blocks unlinked but maybe still being read
 *     undo log      the old words of what the write in progress changed
 *     arena         blocks of 16-byte units: entries, free blocks, and
 *                   blocks held by a compaction (compact.c)
 *
 *   semaphore sets (IPC_PRIVATE; liveness.c)
 *     reader sets: one semaphore per readers' client slot, raised with
 *     SEM_UNDO by the handle that owns the slot; writer sets (writers
 *     only): one per writers' client slot, and one for the store's owner;
 *     and a set of CHUNK_SLOTS per reader chunk, made with it.
 *     The kernel lowers them when the process dies, whatever its pid
 *     namespace. Nothing a writer does rests on the reader sets but a
 *     reader's liveness.
 *
 * Nothing here is a pointer: every reference is an offset from the start of
 * its segment. Integers are native-endian: a store is shared by processes on
 * one machine only.
 */
#ifndef SHMKV_LAYOUT_H
#define SHMKV_LAYOUT_H

#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>

#include "shmkv.h"

#define LAYOUT_VERSION SHMKV_LAYOUT_VERSION
#define CTL_MAGIC "SHMKVCTL"
#define DATA_MAGIC "SHMKVDAT"
#define CACHE_LINE 64

#define LOCK_SLOTS 16u
#define SEM_SETS_MAX 4u
#define EVENT_SLOTS 64u
#define MIRROR_PREFIX_BYTES 1024u
/* A Unix socket's path, NUL included (sun_path). */
#define REGISTRAR_BYTES 108u
/* Client slots in a reader chunk: one page of them. */
#define CHUNK_SLOTS 64u

/* ctl_header.current: bit 63 closed, bits 32..62 generation, 0..31 shmid. */
#define CURRENT_CLOSED (1ull << 63)
#define CURRENT_GEN(w) (((w) >> 32) & 0x7fffffffull)
#define CURRENT_SHMID(w) ((int)((w)&0xffffffffull))
#define CURRENT_MAKE(gen, shmid)                                               \
    ((((uint64_t)(gen)&0x7fffffffull) << 32) | (uint32_t)(shmid))

/* ctl_header.resize_state */
#define RESIZE_NONE 0u
#define RESIZE_CREATING 1u /* the resizer is making its segment */
#define RESIZE_COPYING 2u  /* resize_shmid is being filled: writers mirror */
#define RESIZE_ABORTED 3u  /* given up: resize_shmid (if >= 0) to remove */

/* ctl_header.lock_word: epoch << 1 | installing. The epoch names the lock
 * in use (slot epoch % LOCK_SLOTS); installing is set while a recovery
 * replaces it (lock.c). */
#define LOCK_WORD(epoch, installing)                                           \
    (((uint64_t)(epoch) << 1) | ((installing) ? 1u : 0u))
#define LOCK_WORD_EPOCH(w) ((w) >> 1)
#define LOCK_WORD_INSTALLING(w) (((w)&1u) != 0)

/* client_slot.lock_state: lock epoch << 3 | mode. A waiting mode is stored
 * before the rwlock is asked for, a held mode once it is held, and 0 after
 * it is released: a dead process whose state names the lock in use may
 * hold or have damaged it. */
#define LOCK_WAIT_WRITE 1u
#define LOCK_WAIT_READ 2u
#define LOCK_HELD_WRITE 3u
#define LOCK_HELD_READ 4u
#define LOCK_STATE(epoch, mode) (((uint64_t)(epoch) << 3) | (mode))
#define LOCK_STATE_EPOCH(s) ((s) >> 3)
#define LOCK_STATE_MODE(s) ((unsigned)((s)&7u))
#define LOCK_MODE_HELD(m) ((m) == LOCK_HELD_WRITE || (m) == LOCK_HELD_READ)

/* client_slot.claim: 0 while no read section is open, else the read epoch
 * the section began in << 2 | CLAIM_ACTIVE. A writer that revokes the
 * section (held past reader_timeout_ms, or its process died) swaps
 * CLAIM_ACTIVE for CLAIM_REVOKED (reclaim.c). */
#define CLAIM_ACTIVE 1u
#define CLAIM_REVOKED 2u
#define CLAIM_MAKE(epoch, mode) (((uint64_t)(epoch) << 2) | (mode))
#define CLAIM_EPOCH(c) ((c) >> 2)
#define CLAIM_MODE(c) ((unsigned)((c)&3u))

struct lock_slot {
    alignas(CACHE_LINE) pthread_rwlock_t rwlock;
    /* Bumped by each writer once it holds the lock (the line is its own
     * then): a waiter tells one long hold from a series of short ones. */
    _Atomic uint32_t acquisitions;
    _Atomic uint32_t slow_reported; /* acquisitions value last logged */
    /* acquisitions << 32 | when a waiter first saw that hold (low 32 bits
     * of CLOCK_MONOTONIC ms, odd): how long the holder has held it, for
     * the log. Written by waiters only. */
    _Atomic uint64_t hold_seen;
};

/* A handle's client slot: in the reader segment for a read-only handle, in
 * the control segment for a writing one; written by the slot's owner. */
struct client_slot {
    /* The read claim, on the line its owner writes at every section. */
    alignas(CACHE_LINE) _Atomic uint64_t claim;
    _Atomic int32_t pid; /* 0: free; for display only */
    uint32_t reserved;
    /* Written by the slot's owner only (relaxed), summed by stats; they
     * stay with the slot when it is freed, so that sums keep them. */
    _Atomic uint64_t hits;
    _Atomic uint64_t misses;
    _Atomic uint64_t stale; /* sections that ended revoked */
};

/* A reader chunk's segment: CHUNK_SLOTS client slots, nothing else. */
#define CHUNK_BYTES (CHUNK_SLOTS * 64u)

/* The reader segment's header: one past the highest client slot a reader
 * has taken, which writers copy into ctl_header.clients_hwm. */
struct reader_header {
    alignas(CACHE_LINE) _Atomic uint32_t hwm;
};

/* In the control segment, beside each writers' client slot, written by the
 * writer that owns it. */
struct writer_slot {
    alignas(CACHE_LINE) _Atomic uint64_t lock_state;
    _Atomic int32_t pid; /* the writer's, for the log */
    /* Bumped each time a handle takes the slot: a fill lease names its
     * holder by slot and incarnation, so that a process that takes the
     * slot after the holder died does not hold its leases. */
    _Atomic uint32_t incarnation;
    _Atomic uint64_t lock_waits;
    _Atomic uint64_t lock_timeouts;
    /* Counted by the writer in its own slot, so that two processes
     * writing do not pass a counter's line back and forth. */
    _Atomic uint64_t sets;
    _Atomic uint64_t deletes;
};

/* A reader chunk in the control segment's table: state CHUNK_ACTIVE once
 * the owner made the segment and the semaphore set for user `uid` and
 * handed them to it; written by the owner only, under the write lock. */
#define CHUNK_FREE 0u
#define CHUNK_ACTIVE 1u
struct reader_chunk {
    _Atomic uint32_t state;
    uint32_t uid;
    _Atomic int32_t shmid;
    _Atomic int32_t semid;
    /* Bumped each time the entry is given out: writers tell a new chunk
     * from an old one whose ids came round again. */
    _Atomic uint32_t serial;
    uint32_t reserved;
};
_Static_assert(CHUNK_BYTES == CHUNK_SLOTS * sizeof(struct client_slot),
               "a chunk is its slots");

/* pin.seen: what the last scan of the claims to find a change in the slot
 * found there, as far as any scan's decision goes (whether the claim is
 * active, and the low 32 bits of its epoch: bits 32..63 and 31), and that
 * scan's number (its low 31 bits): a reader checks at the end of its
 * section that every scan since it began found its claim (reclaim.c). */
#define SEEN_SCAN_MASK 0x7fffffffull
#define SEEN_KEY(claim)                                                        \
    (CLAIM_MODE(claim) == CLAIM_ACTIVE                                         \
         ? ((uint64_t)(uint32_t)CLAIM_EPOCH(claim) << 32 | (1ull << 31))       \
         : 0ull)
#define SEEN_MAKE(claim, scan) (SEEN_KEY(claim) | ((scan)&SEEN_SCAN_MASK))
#define SEEN_KEY_OF(w) ((w) & ~SEEN_SCAN_MASK)
#define SEEN_SCAN(w) ((uint32_t)((w)&SEEN_SCAN_MASK))

/* Per client slot, written by writers only: the claim a writer found
 * holding memory back, since when (CLOCK_MONOTONIC ms) and the read epoch
 * then; and what the claim scans found (SEEN_MAKE). */
struct client_pin {
    _Atomic uint64_t claim;
    _Atomic uint64_t since_ms;
    _Atomic uint64_t epoch;
    _Atomic uint64_t seen;
};

/* One logged event (events.c): a revoked section, a recovery, a writer
 * that held the lock too long. seq is the event's number + 1 once it is
 * whole. */
struct event_rec {
    _Atomic uint64_t seq;
    uint32_t type;
    int32_t pid;
    uint64_t duration_ms;
    int64_t at_unix_ms;
    uint64_t detail;
};

struct ctl_header {
    char magic[8];           /* CTL_MAGIC, no NUL */
    uint32_t layout_version; /* at byte offset 8: checked on every attach */
    uint32_t header_bytes;
    uint64_t ctl_bytes;
    uint64_t page_bytes;
    uint64_t data_bytes; /* the first data segment's size: each records
                            its own, which a resize changes */
    uint64_t max_entries;
    /* Random at creation, and copied into every data segment of the store:
     * a handle attaches only a data segment of its own store, whatever
     * shmid a damaged generation word names. */
    uint64_t store_nonce;
    uint32_t max_key_bytes;
    uint32_t max_value_bytes;
    uint32_t eviction;
    uint32_t lock_timeout_ms;
    uint32_t reader_timeout_ms;
    uint32_t max_clients;
    uint32_t mode;
    uint32_t sems_per_set;
    int64_t gid; /* group for every segment of the store, -1: creator's */
    int32_t sem_ids[SEM_SETS_MAX];  /* writer liveness semaphores, -1: none */
    int32_t rsem_ids[SEM_SETS_MAX]; /* reader liveness semaphores */
    int32_t reader_shmid;           /* the reader segment */
    uint32_t huge_pages;            /* SHMKV_HUGE_*, for every data segment */
    _Atomic int32_t owner_pid;      /* for display: liveness is the owner's
                                       semaphore */
    _Atomic uint32_t marks;         /* SHMKV_MARK_*, set by the owner */
    int64_t created_unix;
    uint64_t locks_off;
    uint64_t wclients_off; /* writers' client slots */
    uint64_t wslots_off;
    uint64_t pins_off;     /* 2 * max_clients: readers' slots, then writers' */
    uint64_t reader_bytes; /* the reader segment's layout: */
    uint64_t clients_off;
    uint64_t recency_off;
    uint64_t recency_cells; /* a power of two */
    uint64_t versions_off;  /* the version cells (control segment) */
    uint64_t version_cells; /* a power of two */
    uint64_t leases_off;    /* the fill leases (control segment) */
    uint64_t lease_slots;
    uint64_t chunks_off;  /* the reader chunk table (control segment) */
    uint64_t chunk_count; /* its records; their pins follow the others' */

    /* The generation word readers load on every operation. */
    alignas(CACHE_LINE) _Atomic uint64_t current;
    /* How far writers look for read claims: one past the highest readers'
     * client slot they have seen taken (reader_header.hwm), and one past
     * the highest writers' one. Neither decreases. */
    _Atomic uint32_t clients_hwm;
    _Atomic uint32_t writers_hwm;

    /* The read epoch: loaded at every read section's start, advanced by
     * writers when they reclaim memory; and the number of claim scans
     * begun, which a section loads once its claim is stored, and of the
     * last one finished (reclaim.c). */
    alignas(CACHE_LINE) _Atomic uint64_t epoch;
    _Atomic uint64_t scans;
    _Atomic uint64_t scans_done; /* the number of the last scan finished */

    /* The write lock in use (LOCK_WORD). */
    alignas(CACHE_LINE) _Atomic uint64_t lock_word;
    /* Held by the one process replacing a lock or repairing a dead
     * writer's operation: robust, so a successor takes over from a
     * recoverer that died (lock.c). */
    alignas(CACHE_LINE) pthread_mutex_t recover_mutex;

    /* An online resize (resize.c): its state (RESIZE_*), the data segment
     * it fills and that segment's generation, its resizer (a writers'
     * slot, for liveness; the pid for display and for finding a segment
     * it made but had not named yet), the size it makes, and how many of
     * the old index's buckets it has copied. Written under the write
     * lock; writers read resize_state on every change they make. */
    alignas(CACHE_LINE) _Atomic uint32_t resize_state;
    _Atomic int32_t resize_shmid;
    _Atomic int32_t resize_from; /* the segment it replaces */
    _Atomic uint32_t resize_why; /* RESIZE_WHY_*, once given up */
    _Atomic uint64_t resize_gen;
    _Atomic uint32_t resize_slot;
    _Atomic int32_t resize_pid;
    _Atomic uint64_t resize_bytes;
    _Atomic uint64_t resize_done;
    _Atomic uint64_t resize_total;
    /* Keys under these prefixes mirror another system (shmkvd's
     * [upstream]): only the owner writes them (write.c). Set by the owner;
     * on the line writers read at every change anyway. */
    _Atomic uint32_t mirror_count;
    uint32_t mirror_bytes; /* of mirror_prefixes used */

    /* Counters written by writers; they survive generations. */
    alignas(CACHE_LINE) _Atomic uint64_t evictions;
    _Atomic uint64_t expirations;
    _Atomic uint64_t recoveries;
    _Atomic uint64_t revocations;
    _Atomic uint64_t dead_readers;
    _Atomic uint64_t compactions;     /* windows of the arena packed */
    _Atomic uint64_t compacted_bytes; /* entry bytes moved doing so */
    _Atomic uint64_t resizes;         /* online resizes completed */

    /* The mirrored prefixes, each a length byte and its bytes. */
    char mirror_prefixes[MIRROR_PREFIX_BYTES];

    /* Bumped by each change of the reader chunk table, after it. */
    alignas(CACHE_LINE) _Atomic uint32_t chunks_version;
    /* The control socket where read-only handles ask the owner (shmkvd)
     * for reader chunks, NUL-terminated; empty: none, readers use the
     * reader segment. */
    char registrar[REGISTRAR_BYTES];

    /* LRU clock: advanced by writers, copied into recency cells. */
    alignas(CACHE_LINE) _Atomic uint32_t lru_clock;

    alignas(CACHE_LINE) _Atomic uint64_t event_next;
    struct event_rec events[EVENT_SLOTS];
};

/* A fill lease (write.c): the key's version hash (0: free), its holder
 * (a writers' client slot and that slot's incarnation) and until when
 * (Unix ms). Valid while the holder lives and the time has not passed;
 * written under the write lock. */
#define LEASE_SLOTS 1024u
struct lease {
    uint64_t khash;
    uint32_t slot;
    uint32_t incarnation;
    uint64_t until_ms;
    uint64_t taken_ms;
};

/* Arena allocator geometry (two-level segregated fit over 16-byte units). */
#define UNIT_BYTES 16u
#define UNIT_SHIFT 4
#define SL_BITS 5
#define SL_COUNT (1u << SL_BITS)
#define FL_COUNT 28u
#define MIN_BLOCK_UNITS 2u

/* The write in progress (intent.c). */
#define INTENT_IDLE 0u
#define INTENT_ACTIVE 1u    /* changes so far are in the undo log */
#define INTENT_PUBLISHED 2u /* its index slot is stored: finish it */

#define WRITE_OP_GENERIC 1u /* undone whole if its writer dies */
#define WRITE_OP_SET 2u     /* publishes new_slot at (bucket, slot) */
#define WRITE_OP_REMOVE 3u  /* publishes an empty slot at (bucket, slot) */
#define WRITE_OP_FLUSH 4u   /* empties the index; redone if its writer dies */
#define WRITE_OP_ARENA_RESET 5u /* rebuilds the arena; redone likewise */

struct write_intent {
    _Atomic uint32_t state;
    uint32_t kind;
    uint32_t undo_count;
    int32_t pid; /* the writer, for the log */
    uint64_t hash;
    uint64_t bucket;
    uint32_t slot;
    uint32_t old_off;  /* the entry a WRITE_OP_SET replaces or a WRITE_OP_REMOVE
                          unlinks, 0: none */
    uint64_t new_slot; /* the slot's word once published */
    int32_t entries_delta;
    int32_t ttl_delta;
    uint64_t vcell; /* the version cell to bump once published, + 1; 0 none */
};

struct undo_rec {
    uint64_t off; /* of an aligned 8-byte word in the data segment */
    uint64_t old;
};

struct data_header {
    char magic[8]; /* DATA_MAGIC */
    uint32_t layout_version;
    uint32_t header_bytes;
    uint64_t generation;
    uint64_t store_nonce; /* the store's (ctl_header.store_nonce) */
    uint64_t data_bytes;
    uint64_t page_bytes; /* the system's page size, or the huge page size */
    uint64_t seed;       /* XXH3 seed of this generation's index */
    uint64_t index_off;
    uint64_t nbuckets;
    uint64_t max_load; /* entries the index accepts */
    uint64_t limbo_off;
    uint64_t limbo_slots; /* a power of two */
    uint64_t undo_off;
    uint64_t undo_slots;
    uint64_t arena_off;
    uint64_t arena_units; /* blocks, not counting the end sentinel */

    /* Written under the write lock, through the undo log. */
    uint64_t entries;
    uint64_t ttl_entries; /* entries with an expiry */
    uint64_t used_units;
    uint64_t free_units;
    uint64_t limbo_units; /* units held by blocks in limbo */
    uint64_t limbo_head;  /* ring positions: head <= tail */
    uint64_t limbo_tail;
    /* Entries before this position can be freed or reused: no section can
     * see them (true for good once true, so a hint, not logged; read it
     * clamped to head..tail). */
    uint64_t limbo_safe;
    uint64_t limbo_scanned; /* tail when the claims were last looked at */
    uint64_t expire_cursor; /* where shmkv_expire_scan resumes */
    /* Nonzero after a flush emptied the index and before the arena is
     * rebuilt: the read epoch the flush ended in (write.c). */
    uint64_t flush_epoch;
    /* The arena window a compaction is evacuating, in units: [lo, hi),
     * block boundaries, both 0 when none. Inside it a block that becomes
     * free is held instead (BLOCK_HELD), so that nothing is allocated there
     * until the window is released whole (compact.c). */
    uint64_t compact_lo;
    uint64_t compact_hi;
    uint32_t fl_bitmap;
    uint32_t sl_bitmap[FL_COUNT];
    uint32_t free_heads[FL_COUNT][SL_COUNT]; /* block unit offsets, 0 none */

    alignas(CACHE_LINE) struct write_intent intent;
};

/* A limbo ring entry: the block's unit offset, and the low 32 bits of the
 * read epoch it was unlinked in. */
#define LIMBO_MAKE(epoch, off) (((uint64_t)(uint32_t)(epoch) << 32) | (off))
#define LIMBO_EPOCH(e) ((uint32_t)((e) >> 32))
#define LIMBO_OFF(e) ((uint32_t)((e)&0xffffffffull))

/* One hash index bucket: a cache line. A slot is the entry's offset in
 * units (low 32 bits, 0 = empty) and the hash's high 32 bits (the tag).
 * overflow counts entries whose probe passed this bucket and that live in a
 * later one: a lookup stops at the first bucket where it is 0. */
#define BUCKET_SLOTS 7u
struct bucket {
    _Atomic uint64_t overflow;
    _Atomic uint64_t slot[BUCKET_SLOTS];
};

_Static_assert(sizeof(struct bucket) == CACHE_LINE, "bucket is a line");

/* The load the index is sized for, from max_entries (not part of the
 * layout: the bucket count is in the header). */
#define INDEX_TARGET_LOAD_PERCENT 75u

#define SLOT_OFF(s) ((uint32_t)((s)&0xffffffffull))
#define SLOT_TAG(s) ((uint32_t)((s) >> 32))
#define SLOT_MAKE(tag, off) (((uint64_t)(tag) << 32) | (uint32_t)(off))

/* Block header at the start of every arena block. A used block is an
 * entry: header, key bytes, value bytes. A free block keeps its free-list
 * links in the same header and repeats its size in its last 4 bytes, so a
 * following block can find its start when they merge. */
#define ENTRY_PAD_MAX (2u * UNIT_BYTES - 1u)
#define BLOCK_USED 0x1u
#define BLOCK_PREV_FREE 0x2u
#define BLOCK_SENTINEL 0x4u
#define BLOCK_HELD 0x8u /* with BLOCK_USED: free space a compaction holds */

struct block {
    uint32_t size_units;
    uint8_t flags;
    /* entry: the bytes after the value up to the block's end (under 2
     * units, as a block is handed out at most 1 unit larger than asked),
     * which gives the value's length (entry_vlen, internal.h) */
    uint8_t pad;
    uint16_t klen; /* entry: key length; free: unused */
    union {
        struct {
            /* Unix time in milliseconds, 0: never; one aligned word, so
             * that a reader sees an expiry changed in place whole. */
            uint64_t expire_ms;
        } entry;
        struct {
            uint32_t next; /* unit offsets in the free list, 0 none */
            uint32_t prev;
        } free;
    } u;
};
_Static_assert(sizeof(struct block) == UNIT_BYTES, "block header is 1 unit");

#endif
