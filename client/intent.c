/*
 * intent.c - the write in progress, so that a writer killed at any
 * instruction costs the repair of that one operation, not a copy of the
 * store.
 *
 * Every change a writer makes goes through one operation at a time
 * (write_intent in the data header), in three steps:
 *
 *   prepare  allocate and fill the new entry, raise overflow counts: work
 *            no reader can see yet. Each word changed is first saved in
 *            the undo log (its offset and old value), then changed.
 *   publish  one aligned store of an index slot: the new entry, or an
 *            empty slot for a removal. Readers see the old state or the
 *            new one.
 *   finish   what follows from the publication: the unlinked block goes to
 *            limbo, counters move. Logged likewise, after the log was
 *            emptied at publication.
 *
 * A recoverer (lock.c, with no live writer at work) reads the intent. An
 * operation not yet published is undone: the log is applied backwards and
 * the store is exactly as before it. One published is finished: what its
 * finish had done is undone, then the finish runs again from the intent.
 * Publication is recognised by the slot itself holding the new word, so a
 * writer killed between the store and noting it is not undone (readers may
 * have seen the new entry, whose block must then go through limbo, not
 * back to the free lists). A flush and an arena rebuild are redone, not
 * undone: they are idempotent.
 *
 * Why this is enough: a process's stores all reach memory when it is
 * killed (none is lost, at most the ones after the kill point were never
 * made), and the recoverer runs only after the kernel reported the death.
 * So program order is what matters, and compiler fences keep each undo
 * record before the count that covers it, and that before the change.
 */
#include <string.h>

#include "internal.h"

#define UNDO_SLOTS 2048u

void (*shmkv_test_hook)(const char *point);

uint64_t undo_bytes_for(void)
{
    return UNDO_SLOTS * sizeof(struct undo_rec);
}

static struct undo_rec *undo_log(struct data_header *d)
{
    return (struct undo_rec *)((char *)d + d->undo_off);
}

void ulog_overflow(void)
{
    /* Operations are bounded well below the log's size (an insert refuses
     * a probe path that long): a full log is a bug, and the change is
     * then made unlogged rather than not at all. */
}

static inline void compiler_order(void)
{
    atomic_signal_fence(memory_order_seq_cst);
}

void op_begin(struct shmkv *kv, uint32_t kind)
{
    struct write_intent *in = &kv->data->intent;
    in->kind = kind;
    in->pid = (int32_t)kv->pid;
    in->undo_count = 0;
    compiler_order();
    atomic_store_explicit(&in->state, INTENT_ACTIVE, memory_order_relaxed);
    compiler_order();
}

void op_target(struct shmkv *kv, uint32_t kind, uint64_t hash, uint64_t bucket,
               unsigned slot, uint32_t old_off, uint64_t new_slot,
               int entries_delta, int ttl_delta, uint64_t vcell)
{
    struct write_intent *in = &kv->data->intent;
    in->vcell = vcell;
    in->hash = hash;
    in->bucket = bucket;
    in->slot = slot;
    in->old_off = old_off;
    in->new_slot = new_slot;
    in->entries_delta = entries_delta;
    in->ttl_delta = ttl_delta;
    /* The kind last: until it says WRITE_OP_SET or WRITE_OP_REMOVE, a recoverer
     * reads none of the fields above (they may be a previous operation's). */
    compiler_order();
    in->kind = kind;
    compiler_order();
}

void op_published(struct shmkv *kv)
{
    struct write_intent *in = &kv->data->intent;
    compiler_order();
    in->undo_count = 0;
    compiler_order();
    atomic_store_explicit(&in->state, INTENT_PUBLISHED, memory_order_relaxed);
    compiler_order();
}

void op_end(struct shmkv *kv)
{
    compiler_order();
    atomic_store_explicit(&kv->data->intent.state, INTENT_IDLE,
                          memory_order_release);
}

/* Restores every logged word, newest first; a record that names a word
 * outside the segment is damage, skipped rather than written astray. */
static void undo_all(const struct shmkv *kv)
{
    struct data_header *d = kv->data;
    uint64_t n = d->intent.undo_count;
    if (n > kv->undo_slots)
        n = kv->undo_slots;
    struct undo_rec *log = undo_log(d);
    while (n-- > 0) {
        uint64_t off = log[n].off;
        if (off % 8 != 0 || off >= kv->data_bytes || kv->data_bytes - off < 8)
            continue;
        __atomic_store_n((uint64_t *)((char *)d + off), log[n].old,
                         __ATOMIC_RELAXED);
    }
    d->intent.undo_count = 0;
}

/* True if the slot a WRITE_OP_SET or WRITE_OP_REMOVE named already holds its
 * new word. */
static bool target_published(const struct shmkv *kv,
                             const struct write_intent *in)
{
    if (in->bucket >= kv->nbuckets || in->slot >= BUCKET_SLOTS)
        return false;
    return atomic_load_explicit(&kv->buckets[in->bucket].slot[in->slot],
                                memory_order_acquire) == in->new_slot;
}

uint32_t intent_repair(struct shmkv *kv)
{
    struct data_header *d = kv->data;
    struct write_intent *in = &d->intent;
    uint32_t state = atomic_load_explicit(&in->state, memory_order_acquire);
    if (state == INTENT_IDLE)
        return 0;
    uint32_t kind = in->kind;
    switch (kind) {
    case WRITE_OP_FLUSH:
        flush_index(kv);
        op_end(kv);
        return kind;
    case WRITE_OP_ARENA_RESET:
        arena_reset(kv);
        op_end(kv);
        return kind;
    case WRITE_OP_SET:
    case WRITE_OP_REMOVE:
        if (state == INTENT_ACTIVE && target_published(kv, in)) {
            /* Published, not yet noted: keep what was prepared. */
            in->undo_count = 0;
            state = INTENT_PUBLISHED;
            atomic_store_explicit(&in->state, state, memory_order_relaxed);
        }
        if (state == INTENT_PUBLISHED) {
            undo_all(kv);
            op_finish(kv);
            op_end(kv);
            return kind;
        }
        break;
    default:
        break;
    }
    undo_all(kv);
    op_end(kv);
    return kind;
}
