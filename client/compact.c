/*
 * compact.c - defragmenting the arena: when a write needs a block larger
 * than any free one, although enough is free in all, a window of the arena
 * is packed so that its free space becomes one block.
 *
 * The window is the shortest run of blocks with room for the block wanted
 * (and some slack) outside its used blocks: the fewest live bytes to move.
 * Then:
 *   hold      its free blocks are taken off the free lists and marked held
 *             (BLOCK_USED | BLOCK_HELD): nothing else is allocated there,
 *             nothing merges with them;
 *   pack      the bubble, the held space at the window's start, rises
 *             through it: each entry after the bubble is copied into it
 *             (or, if it does not fit, to a free block outside; if neither,
 *             it stays and the bubble goes on past it) and the copy is
 *             published in the entry's index slot, as a set of the same
 *             value would be. The old block goes to limbo; a limbo block
 *             inside the window is held, not freed, once no section sees it
 *             (limbo_free_safe), so the bubble takes in, after a drain of
 *             limbo, the blocks the entries left as well as the holes it
 *             passes;
 *   release   after a last drain, the held blocks are freed, which merges
 *             them into one.
 * Readers see each entry at its old block or its new one, with the same
 * bytes, and a zero-copy pointer into the old block stays valid for as
 * long as its read section is open, as after any overwrite.
 *
 * Each step is an operation (intent.c), undone or finished alone if its
 * writer dies. The window is named in the data header, so a window a dead
 * writer left is released by the next write that makes room; until then
 * its held blocks are merely unusable. Inside the window, blocks are only
 * split (a copy carved from the bubble) and joined (held neighbours), so
 * the walks that follow sizes from a block boundary stay on boundaries.
 *
 * The work is bounded by the size of the block wanted (the window is about
 * twice that) and by COMPACT_SCAN_BLOCKS looked at to choose it, from a
 * random entry on, round to where it began.
 */
#include "hash.h"
#include "table.h"

/* Blocks looked at to choose a window, and index buckets looked at for an
 * entry to start from. */
#define COMPACT_SCAN_BLOCKS (1u << 18)
#define COMPACT_START_BUCKETS 1024u
/* Blocks held or released per operation: well within the undo log. */
#define COMPACT_BATCH 32u
/* Entries that never stop a window: a bubble grows past their size
 * within a few holes. */
#define COMPACT_SMALL_UNITS 64u
/* Held blocks joined to the bubble per operation: within the undo log. */
#define COMPACT_JOIN_MAX 256u

/* Where the choice of a window begins: a random entry's block (a block
 * boundary the index names), or the arena's first block if the buckets
 * looked at hold none. */
static uint32_t scan_start(struct shmkv *kv)
{
    uint64_t b = handle_random(kv) % kv->nbuckets;
    for (uint64_t n = 0; n < kv->nbuckets && n < COMPACT_START_BUCKETS; n++) {
        for (unsigned i = 0; i < BUCKET_SLOTS; i++) {
            uint64_t s = atomic_load_explicit(&kv->buckets[b].slot[i],
                                              memory_order_relaxed);
            if (SLOT_OFF(s) != 0 && slot_in_arena(kv, s))
                return SLOT_OFF(s);
        }
        b = b + 1 == kv->nbuckets ? 0 : b + 1;
    }
    return kv->arena_first;
}

struct window {
    uint32_t lo, hi;
    uint64_t used; /* units in used blocks */
    /* While packing: the bubble (window_pack), and whether entries
     * moved since limbo was last drained. */
    uint32_t bubble;
    bool undrained;
};

/* The shortest run of blocks with at least `need` units not in used
 * blocks, among those from the scan's start on: the one with the fewest
 * used units, the cheapest to pack. A run with the block at keep, a held
 * block, a used block over need / 2 (and COMPACT_SMALL_UNITS) or a block whose
 * size leaves the arena is passed over. false if there is none. */
static bool window_pick(struct shmkv *kv, uint64_t need, uint32_t keep,
                        struct window *best)
{
    const struct data_header *d = kv->data;
    uint32_t end = kv->arena_first + kv->arena_units;
    uint32_t start = scan_start(kv), stop = end;
    uint32_t lo = start, hi = lo;
    uint64_t size = 0, used = 0;
    bool found = false;
    for (unsigned n = 0; n < COMPACT_SCAN_BLOCKS; n++) {
        if (hi >= stop) {
            /* From the arena's start up to where the scan began. */
            if (stop != end || start == kv->arena_first)
                break;
            stop = start;
            lo = hi = kv->arena_first;
            size = used = 0;
        }
        const struct block *b = block_at(d, hi);
        uint32_t s = b->size_units;
        if (s < MIN_BLOCK_UNITS || s > end - hi)
            break;
        hi += s;
        /* The bubble that packing grows from the window's holes rarely
         * gets large enough for a block over half the size wanted before
         * the window ends: such a block stays, and the holes before it
         * would be wasted. */
        if (hi - s == keep || (b->flags & BLOCK_HELD) ||
            ((b->flags & BLOCK_USED) && s > need / 2 &&
             s > COMPACT_SMALL_UNITS)) {
            lo = hi;
            size = used = 0;
            continue;
        }
        size += s;
        if (b->flags & BLOCK_USED)
            used += s;
        /* Drop blocks on the left while enough is left unused. */
        for (;;) {
            const struct block *l = block_at(d, lo);
            uint64_t l_used = (l->flags & BLOCK_USED) ? l->size_units : 0;
            if (size - used < need + (l->size_units - l_used))
                break;
            size -= l->size_units;
            used -= l_used;
            lo += l->size_units;
        }
        if (size - used >= need && (!found || used < best->used)) {
            *best = (struct window){.lo = lo, .hi = hi, .used = used};
            found = true;
        }
    }
    return found;
}

/* Names the window in the data header and holds its free blocks. */
static int window_hold(struct shmkv *kv, const struct window *w)
{
    struct data_header *d = kv->data;
    op_begin(kv, WRITE_OP_GENERIC);
    LOGGED_SET(d, d->compact_lo, w->lo);
    LOGGED_SET(d, d->compact_hi, w->hi);
    unsigned n = 0;
    for (uint32_t off = w->lo; off < w->hi;) {
        uint32_t size = block_at(d, off)->size_units;
        if (!(block_at(d, off)->flags & BLOCK_USED)) {
            if (!arena_hold(d, off)) {
                op_end(kv);
                return set_error(SHMKV_ECORRUPT,
                                 "the arena's free lists are damaged at "
                                 "unit %u: run shmkv_check",
                                 off);
            }
            if (++n % COMPACT_BATCH == 0) {
                op_end(kv);
                TEST_POINT("compact:held");
                op_begin(kv, WRITE_OP_GENERIC);
            }
        }
        off += size;
    }
    op_end(kv);
    TEST_POINT("compact:held");
    return 0;
}

static bool held(const struct block *b)
{
    return (b->flags & BLOCK_HELD) != 0;
}

/* The bubble, if it can take an entry of `units` that lies at `to`: the
 * held block at w->bubble, joined with the held blocks after it (within
 * the caller's operation), else 0. A bubble that is not a held block is
 * where the last copy filled it: the block after it is one an entry left,
 * held once limbo is drained, so only after a drain is it passed over, to
 * the next held block (an entry that stays where it is). */
static uint32_t bubble_take(struct shmkv *kv, struct window *w, uint32_t to,
                            uint32_t units)
{
    struct data_header *d = kv->data;
    uint32_t off = w->bubble;
    if (off < to && !held(block_at(d, off))) {
        if (w->undrained)
            return 0;
        while (off < to && !held(block_at(d, off)))
            off += block_at(d, off)->size_units;
        w->bubble = off;
    }
    if (off >= to)
        return 0;
    struct block *b = block_at(d, off);
    for (unsigned n = 0; n < COMPACT_JOIN_MAX && off + b->size_units < to &&
                         arena_held_merge(d, off);
         n++)
        ;
    return b->size_units >= units ? off : 0;
}

/* Moves the entry at pos into the bubble if it fits there (draining limbo
 * first when entries moved since the last drain: the blocks they left
 * then join the bubble), else to a free block outside the window, and
 * publishes the copy in its slot: one operation. An entry that fits
 * nowhere stays, and the bubble moves past it. */
static int entry_move(struct shmkv *kv, struct window *w, uint64_t hash,
                      const struct table_pos *pos)
{
    struct data_header *d = kv->data;
    const struct block *old = block_at(d, pos->off);
    int64_t vlen = entry_vlen(old);
    if (vlen < 0 || vlen > kv->max_value_bytes || old->pad > ENTRY_PAD_MAX)
        return set_error(SHMKV_ECORRUPT, "the entry at unit %u is damaged",
                         pos->off);
    uint32_t units = entry_units(old->klen, (size_t)vlen);
    if (units > old->size_units)
        return set_error(SHMKV_ECORRUPT, "the entry at unit %u is damaged",
                         pos->off);
    int rc = limbo_reserve(kv);
    if (rc != 0)
        return rc;
    /* Joining blocks is an operation of its own: the copy then writes
     * over the headers it made meaningless, which an undo of the copy's
     * operation must not bring back. */
    op_begin(kv, WRITE_OP_GENERIC);
    uint32_t dst = bubble_take(kv, w, pos->off, units);
    op_end(kv);
    if (dst == 0 && w->undrained) {
        rc = limbo_drain(kv);
        if (rc != 0)
            return rc;
        w->undrained = false;
        op_begin(kv, WRITE_OP_GENERIC);
        dst = bubble_take(kv, w, pos->off, units);
        op_end(kv);
    }
    op_begin(kv, WRITE_OP_GENERIC);
    uint32_t off =
        dst != 0 ? arena_carve(d, dst, units) : arena_alloc(d, units);
    if (off == 0) {
        op_end(kv);
        w->bubble = pos->off + old->size_units;
        return SHMKV_ENOSPC;
    }
    if (dst != 0)
        w->bubble = dst + block_at(d, dst)->size_units;
    struct block *e = block_at(d, off);
    e->klen = old->klen;
    e->u.entry = old->u.entry;
    entry_set_pad(e, old->klen, (size_t)vlen);
    memcpy(e + 1, old + 1, (size_t)old->klen + (size_t)vlen);
    uint64_t word = atomic_load_explicit(
        &kv->buckets[pos->bucket].slot[pos->slot], memory_order_relaxed);
    entry_publish(kv, hash, pos->bucket, pos->slot, pos->off,
                  SLOT_MAKE(SLOT_TAG(word), off), 0, 0, 0);
    w->undrained = true;
    TEST_POINT("compact:moved");
    return 0;
}

/* Packs the window's entries towards its start: the bubble, its lowest
 * held space, rises through it as each entry after it is copied into it,
 * gathering the holes it passes and, after a drain, the blocks the
 * entries left. Then waits until no section sees those blocks, which are
 * then held. *moved counts the bytes moved. */
static int window_pack(struct shmkv *kv, struct window *w, uint64_t *moved)
{
    struct data_header *d = kv->data;
    w->bubble = w->lo;
    while (w->bubble < w->hi && !held(block_at(d, w->bubble)))
        w->bubble += block_at(d, w->bubble)->size_units;
    w->undrained = false;
    for (uint32_t off = w->bubble; off < w->hi;) {
        const struct block *b = block_at(d, off);
        uint32_t size = b->size_units;
        if (off > w->bubble && !held(b) && b->klen != 0 &&
            b->klen <= kv->max_key_bytes) {
            struct table_pos pos = {.off = 0};
            uint64_t hash = key_hash(entry_key(b), b->klen, kv->seed);
            table_find(kv, hash, entry_key(b), b->klen, &pos);
            /* An entry the index does not name is in limbo: held once no
             * section sees it. */
            if (pos.off == off) {
                int rc = entry_move(kv, w, hash, &pos);
                if (rc == 0)
                    *moved += (uint64_t)size * UNIT_BYTES;
                else if (rc != SHMKV_ENOSPC)
                    return rc;
            }
        }
        off += size;
    }
    return limbo_drain(kv);
}

void compact_release(struct shmkv *kv)
{
    struct data_header *d = kv->data;
    uint32_t end = kv->arena_first + kv->arena_units;
    while (d->compact_hi != 0) {
        op_begin(kv, WRITE_OP_GENERIC);
        uint64_t lo = d->compact_lo, hi = d->compact_hi;
        /* A window outside the arena is damage: forgotten, not walked. */
        bool ok = lo >= kv->arena_first && lo < hi && hi <= end;
        for (unsigned n = 0; ok && lo < hi && n < COMPACT_BATCH;) {
            struct block *b = block_at(d, (uint32_t)lo);
            uint32_t size = b->size_units;
            if (size < MIN_BLOCK_UNITS || size > hi - lo) {
                ok = false;
                break;
            }
            /* Freeing merges it with a held block freed before it, whose
             * header it then no longer is: the walk never looks back. */
            if ((b->flags & (BLOCK_USED | BLOCK_HELD)) ==
                (BLOCK_USED | BLOCK_HELD)) {
                arena_free(d, (uint32_t)lo);
                n++;
            }
            lo += size;
        }
        if (ok && lo < hi) {
            LOGGED_SET(d, d->compact_lo, lo);
        } else {
            LOGGED_SET(d, d->compact_lo, 0);
            LOGGED_SET(d, d->compact_hi, 0);
        }
        op_end(kv);
        TEST_POINT("compact:released");
    }
}

int arena_compact(struct shmkv *kv, uint32_t units, uint32_t keep)
{
    struct data_header *d = kv->data;
    if (units < MIN_BLOCK_UNITS)
        units = MIN_BLOCK_UNITS;
    if (d->free_units < units)
        return SHMKV_ENOSPC;
    compact_release(kv);
    struct window w;
    /* Room for what packing leaves between the entries: blocks too small
     * for the next entry. */
    if (!window_pick(kv, (uint64_t)units + units / 2 + 4 * MIN_BLOCK_UNITS,
                     keep, &w))
        return SHMKV_ENOSPC;
    int rc = window_hold(kv, &w);
    uint64_t moved = 0;
    if (rc == 0)
        rc = window_pack(kv, &w, &moved);
    compact_release(kv);
    if (moved > 0) {
        atomic_fetch_add_explicit(&kv->ctl->compacted_bytes, moved,
                                  memory_order_relaxed);
        atomic_fetch_add_explicit(&kv->ctl->compactions, 1,
                                  memory_order_relaxed);
    }
    if (rc != 0)
        return rc;
    if (arena_can_alloc(d, units))
        return 0;
    return moved > 0 ? SHMKV_ERETRY : SHMKV_ENOSPC;
}
