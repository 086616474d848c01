/*
 * layout.h - what a shmkv store looks like in shared memory.
 *
 * A store is two kinds of System V segment:
 *
 *   control segment (at the store's key, one per store, never replaced)
 *     ctl_header    identity, limits, the current generation word, counters
 *     lock slots    LOCK_SLOTS process-shared rwlocks, one per generation
 *                   modulo LOCK_SLOTS, each with its writer flag
 *     client slots  one cache line per open handle: pid, start time, what
 *                   lock it is taking or holds, its own hit/miss counters
 *     recency cells uint32 LRU stamps indexed by the hash tag (lru stores)
 *
 *   data segment (IPC_PRIVATE, one per generation)
 *     data_header   identity, geometry, allocator state, entry count
 *     index         nbuckets cache-line buckets of 7 slots
 *     arena         blocks of 16-byte units: entries and free blocks
 *
 * Readers attach the data segment read-only when they ask to; everything a
 * reader must write (the lock, its client slot, recency) is in the control
 * segment. A new generation (after a process died holding the lock, or a
 * resize) is a new data segment with a fresh lock slot, published by one
 * atomic store of ctl_header.current.
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

#define LAYOUT_VERSION 2u
#define CTL_MAGIC "SHMKVCTL"
#define DATA_MAGIC "SHMKVDAT"
#define CACHE_LINE 64

#define LOCK_SLOTS 16u

/* ctl_header.current: bit 63 closed, bits 32..62 generation, 0..31 shmid. */
#define CURRENT_CLOSED (1ull << 63)
#define CURRENT_GEN(w) (((w) >> 32) & 0x7fffffffull)
#define CURRENT_SHMID(w) ((int)((w)&0xffffffffull))
#define CURRENT_MAKE(gen, shmid)                                               \
    ((((uint64_t)(gen)&0x7fffffffull) << 32) | (uint32_t)(shmid))

/* client_slot.lock_state: generation << 3 | mode. LOCKING_READ or
 * LOCKING_WRITE is set before the rwlock is requested, LOCKING_WRITE_HELD
 * once the write lock is held, and the state is cleared after the rwlock
 * is released, so a dead process with such a state may hold that
 * generation's rwlock. LOCKING_FAST is a read section that holds no
 * rwlock: the slot itself is the reader's claim, which writers wait out
 * (lock.c). */
#define LOCKING_READ 1u
#define LOCKING_WRITE 2u
#define LOCKING_FAST 3u
#define LOCKING_WRITE_HELD 4u
#define LOCK_STATE(gen, mode) (((uint64_t)(gen) << 3) | (mode))
#define LOCK_STATE_GEN(s) ((s) >> 3)
#define LOCK_STATE_MODE(s) ((unsigned)((s)&7u))

struct lock_slot {
    alignas(CACHE_LINE) pthread_rwlock_t rwlock;
    /* Raised by a writer that holds or waits for the write lock: read
     * sections then take the rwlock (lock.c). On a line of its own: every
     * read section loads it, and waiters write the rwlock's. */
    alignas(CACHE_LINE) _Atomic uint32_t writer;
};

struct client_slot {
    alignas(CACHE_LINE) _Atomic int32_t pid; /* 0: free */
    uint32_t reserved;
    _Atomic uint64_t start_ticks; /* the process's start time */
    _Atomic uint64_t lock_state;
    /* Written by the slot's owner only (relaxed), summed by stats. */
    _Atomic uint64_t hits;
    _Atomic uint64_t misses;
    _Atomic uint64_t lock_waits;
    _Atomic uint64_t lock_timeouts;
};

struct ctl_header {
    char magic[8];           /* CTL_MAGIC, no NUL */
    uint32_t layout_version; /* at byte offset 8: checked on every attach */
    uint32_t header_bytes;
    uint64_t ctl_bytes;
    uint64_t page_bytes;
    uint64_t data_bytes; /* size of each data segment */
    uint64_t max_entries;
    uint32_t max_key_bytes;
    uint32_t max_value_bytes;
    uint32_t eviction;
    uint32_t lock_timeout_ms;
    uint32_t max_clients;
    uint32_t mode;
    int64_t gid; /* group for every segment of the store, -1: creator's */
    _Atomic int32_t owner_pid; /* CAS by shmkv_adopt */
    _Atomic uint32_t marks;    /* SHMKV_MARK_*, set by the owner */
    uint64_t owner_start_ticks;
    int64_t created_unix;
    uint64_t locks_off;
    uint64_t clients_off;
    uint64_t recency_off;
    uint64_t recency_cells; /* a power of two */

    /* The generation word readers load on every operation. */
    alignas(CACHE_LINE) _Atomic uint64_t current;
    /* One past the highest client slot ever claimed: how far a writer
     * looks for readers. */
    _Atomic uint32_t clients_hwm;

    /* Recovery: who is building the next generation, from which one, and
     * the segment it is building and the one it replaces (so that a
     * successor can remove either). */
    alignas(CACHE_LINE) _Atomic int32_t recover_pid;
    _Atomic int32_t recover_shmid; /* -1: none */
    _Atomic int32_t retired_shmid; /* -1: none */
    _Atomic uint64_t recover_start_ticks;
    _Atomic uint64_t recover_gen; /* generation being replaced, 0: none */

    /* Counters written under the write lock (or atomically when a client
     * slot is retired); they survive generations. */
    alignas(CACHE_LINE) _Atomic uint64_t sets;
    _Atomic uint64_t deletes;
    _Atomic uint64_t evictions;
    _Atomic uint64_t expirations;
    _Atomic uint64_t recoveries;
    _Atomic uint64_t retired_hits;
    _Atomic uint64_t retired_misses;
    _Atomic uint64_t retired_lock_waits;
    _Atomic uint64_t retired_lock_timeouts;

    /* LRU clock: advanced by writers, copied into recency cells. */
    alignas(CACHE_LINE) _Atomic uint32_t lru_clock;
};

/* Arena allocator geometry (two-level segregated fit over 16-byte units). */
#define UNIT_BYTES 16u
#define UNIT_SHIFT 4
#define SL_BITS 5
#define SL_COUNT (1u << SL_BITS)
#define FL_COUNT 28u
#define MIN_BLOCK_UNITS 2u

struct data_header {
    char magic[8]; /* DATA_MAGIC */
    uint32_t layout_version;
    uint32_t header_bytes;
    uint64_t generation;
    uint64_t data_bytes;
    uint64_t seed; /* XXH3 seed of this generation's index */
    uint64_t index_off;
    uint64_t nbuckets;
    uint64_t max_load; /* entries the index accepts */
    uint64_t arena_off;
    uint64_t arena_units; /* blocks, not counting the end sentinel */

    /* Written under the write lock. */
    uint64_t entries;
    uint64_t ttl_entries; /* entries with an expiry */
    uint64_t used_units;
    uint64_t free_units;
    uint64_t expire_cursor; /* where shmkv_expire_scan resumes */
    uint32_t fl_bitmap;
    uint32_t sl_bitmap[FL_COUNT];
    uint32_t free_heads[FL_COUNT][SL_COUNT]; /* block unit offsets, 0 none */
};

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
#define BLOCK_USED 0x1u
#define BLOCK_PREV_FREE 0x2u
#define BLOCK_SENTINEL 0x4u

struct block {
    uint32_t size_units;
    uint8_t flags;
    uint8_t reserved;
    uint16_t klen; /* entry: key length; free: unused */
    union {
        struct {
            uint32_t vlen;
            uint32_t expire_unix; /* 0: never */
        } entry;
        struct {
            uint32_t next; /* unit offsets in the free list, 0 none */
            uint32_t prev;
        } free;
    } u;
};
_Static_assert(sizeof(struct block) == UNIT_BYTES, "block header is 1 unit");

#endif
