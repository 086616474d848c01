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

/* One process's attachment to a store. */
struct shmkv {
    struct ctl_header *ctl;
    int ctl_shmid;
    struct client_slot *slot; /* this handle's client slot */

    /* The attached generation; refreshed when ctl->current changes. */
    uint64_t current; /* the ctl->current word it was attached from */
    uint32_t gen;
    int data_shmid;
    struct data_header *data; /* NULL until attached */
    struct bucket *buckets;
    pthread_rwlock_t *lock;
    _Atomic uint32_t *writer; /* the generation's writer flag */

    /* Copies of fixed settings, so the hot path reads private memory. */
    uint64_t seed;
    uint64_t nbuckets;
    uint32_t max_key_bytes;
    uint32_t max_value_bytes;
    uint32_t lock_timeout_ms;
    bool lru;
    uint32_t *recency; /* lru only */
    uint64_t recency_mask;

    bool rdonly;
    bool in_read;
    bool read_fast; /* the read section holds no rwlock (LOCKING_FAST) */
    bool closer;    /* this handle closed the store: it may still read */
    bool owner;     /* created it: shmkv_destroy removes it */
    /* Same uid as the control segment's owner: may build generations (a
     * segment made by another uid could not be removed by the owner). */
    bool can_recover;
    pid_t pid;
    uint64_t start_ticks;
    uint32_t now_unix; /* 0: not read yet in this section */
    uint64_t rng;
};

/* errors.c */
int set_error(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int set_errno_error(int code, const char *what);

/* read.c: seconds on the realtime clock (coarse: a vDSO read) */
uint32_t clock_unix(void);

/* segment.c: System V keys, segments and process identity */
int key_from_where(const char *where, key_t *out);
int segment_create(key_t key, uint64_t bytes, unsigned mode, int *shmid_out);
int segment_attach(int shmid, bool rdonly, void **addr_out,
                   uint64_t *bytes_out);
uint64_t page_bytes(void);
uint64_t round_to_pages(uint64_t bytes);
uint64_t process_start_ticks(pid_t pid);
bool process_alive(pid_t pid, uint64_t start_ticks);

/* arena.c: the value allocator */
void arena_init(struct data_header *d);
uint32_t arena_alloc(struct data_header *d, uint32_t units);
void arena_free(struct data_header *d, uint32_t off);
uint64_t arena_largest_free(const struct data_header *d);
int arena_check(const struct data_header *d, uint8_t *used_map,
                struct shmkv_check_report *r);

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

static inline const char *entry_key(const struct block *b)
{
    return (const char *)(b + 1);
}

static inline const char *entry_value(const struct block *b)
{
    return (const char *)(b + 1) + b->klen;
}

/* table.c: the hash index */
struct table_pos {
    uint64_t bucket;
    unsigned slot;
    uint32_t off;    /* 0: not found */
    unsigned probes; /* buckets looked at */
};
/* table_find, table_home: inline, in table.h */
int table_insert(struct shmkv *kv, uint64_t hash, uint32_t off);
void table_replace(struct shmkv *kv, const struct table_pos *pos, uint32_t off);
void table_remove(struct shmkv *kv, uint64_t hash, const struct table_pos *pos);
int table_check(const struct shmkv *kv, uint8_t *used_map,
                struct shmkv_check_report *r);
uint64_t index_bytes_for(uint64_t nbuckets);

/* lock.c: the rwlock, client slots and dead-holder detection */
int lock_init(pthread_rwlock_t *lock);
/* Completes a lock hand-over a dead process left half done, on a lock no
 * longer in use, so that processes blocked in it return. */
void lock_settle(pthread_rwlock_t *lock);
int lock_read_slow(struct shmkv *kv);

/* Begins a read section. Inline, the fast path while no writer writes:
 * the reader claims the section in its own client slot (LOCKING_FAST),
 * then checks the generation's writer flag; a writer sets the flag, then
 * waits until no slot claims a section (lock.c). Both sides store, then
 * load the other's word, seq_cst, so at least one sees the other. No
 * shared cache line is written, so readers in many processes do not slow
 * each other down. With a writer at work, the section takes the rwlock
 * instead (lock_read_slow), which also follows generation changes. */
static inline int lock_read(struct shmkv *kv)
{
    uint64_t cur =
        atomic_load_explicit(&kv->ctl->current, memory_order_acquire);
    if (__builtin_expect(cur == kv->current && kv->data != NULL, 1)) {
        atomic_store_explicit(&kv->slot->lock_state,
                              LOCK_STATE(kv->gen, LOCKING_FAST),
                              memory_order_seq_cst);
        if (__builtin_expect(
                atomic_load_explicit(kv->writer, memory_order_seq_cst) == 0,
                1)) {
            /* As in lock_take: a recovery may have published a new
             * generation meanwhile. */
            cur = atomic_load_explicit(&kv->ctl->current, memory_order_acquire);
            if (__builtin_expect(cur == kv->current, 1)) {
                kv->read_fast = true;
                return 0;
            }
        }
        atomic_store_explicit(&kv->slot->lock_state, 0, memory_order_release);
    }
    return lock_read_slow(kv);
}
/* Ends a read section (inline: it is half of a single get's locking). */
static inline void lock_read_end(struct shmkv *kv)
{
    if (!kv->read_fast)
        pthread_rwlock_unlock(kv->lock);
    atomic_store_explicit(&kv->slot->lock_state, 0, memory_order_release);
}
int lock_write(struct shmkv *kv);
void lock_write_end(struct shmkv *kv);
int client_slot_claim(struct shmkv *kv);
void client_slot_release(struct shmkv *kv);
void client_slots_reap(struct shmkv *kv);

/* store.c: generations */
int generation_refresh(struct shmkv *kv);
int generation_recover(struct shmkv *kv, uint32_t from_gen);
int data_segment_make(struct ctl_header *c, uint32_t gen, uint64_t seed,
                      _Atomic int32_t *record, int *shmid_out,
                      struct data_header **out);

/* Reports one inconsistency found by a check pass. */
void check_problem(struct shmkv_check_report *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Internal retry signal: the generation changed under the caller. */
#define SHMKV_ERETRY (-1000)

#endif
