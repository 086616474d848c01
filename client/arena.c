/*
 * arena.c - the value allocator: a two-level segregated fit (TLSF) over
 * 16-byte units, with boundary tags so that neighbouring free blocks merge.
 *
 * Every block starts with a struct block header. Free blocks sit on one of
 * FL_COUNT x SL_COUNT lists by size: sizes below SL_COUNT units each have
 * their own list; above, each power of two is split into SL_COUNT equal
 * ranges. Two bitmaps say which lists are non-empty, so finding a block of
 * at least n units is a couple of bit scans: allocation and free are O(1),
 * and the worst-case waste is bounded by the class width (1/32).
 *
 * A free block writes its size into its last 4 bytes (the footer) and the
 * block after it carries BLOCK_PREV_FREE, so free() can merge with the
 * previous block without a search. A sentinel used block of size 0 ends the
 * arena so that the last block always has a used successor.
 *
 * A compaction (compact.c) holds free blocks in the window it evacuates:
 * a held block is marked used (BLOCK_USED | BLOCK_HELD), so that nothing
 * is allocated in it and nothing merges with it, and arena_free releases
 * it like any used block.
 *
 * Crash safety: the allocator is only written under the write lock, and
 * every word it changes is first saved in the write's undo log (LOGGED_SET,
 * intent.c), so a writer killed halfway through an allocation or a free is
 * undone exactly by whoever recovers the lock. Readers never look at
 * allocator state, nor at a block the allocator may touch: a block leaves
 * the index for limbo before it is freed (reclaim.c).
 */
#include <string.h>

#include "internal.h"

static inline unsigned fls32(uint32_t x)
{
    return 31u - (unsigned)__builtin_clz(x);
}

/* The header's geometry is intact whenever the allocator runs (lock_take
 * checks it), but the lists, links and sizes it follows are read from the
 * segment: each is checked before use, and one that points outside the
 * arena stops the call before it writes anything (an allocation fails, a
 * free leaves the block where it is). */

/* True if off names a unit inside the arena (where a block may start). */
static bool unit_ok(const struct data_header *d, uint32_t off)
{
    uint32_t first = (uint32_t)(d->arena_off / UNIT_BYTES);
    return off >= first && off - first < d->arena_units;
}

/* True if off starts a block whose size keeps it inside the arena. */
static bool block_ok(const struct data_header *d, uint32_t off)
{
    if (!unit_ok(d, off))
        return false;
    uint32_t end = (uint32_t)(d->arena_off / UNIT_BYTES + d->arena_units);
    uint32_t units = block_at(d, off)->size_units;
    return units >= MIN_BLOCK_UNITS && units <= end - off;
}

/* The list a free block of `units` belongs on. */
static void mapping_insert(uint32_t units, unsigned *fl, unsigned *sl)
{
    if (units < SL_COUNT) {
        *fl = 0;
        *sl = units;
        return;
    }
    unsigned f = fls32(units);
    *fl = f - SL_BITS + 1;
    *sl = (units >> (f - SL_BITS)) & (SL_COUNT - 1);
}

/* The first list whose every block holds at least `units`. */
static void mapping_search(uint32_t units, unsigned *fl, unsigned *sl)
{
    if (units >= SL_COUNT) {
        unsigned f = fls32(units);
        uint64_t rounded = (uint64_t)units + (1u << (f - SL_BITS)) - 1;
        if (rounded > UINT32_MAX)
            rounded = UINT32_MAX;
        units = (uint32_t)rounded;
    }
    mapping_insert(units, fl, sl);
}

static uint32_t *footer_of(struct data_header *d, uint32_t off, uint32_t units)
{
    return (uint32_t *)((char *)block_at(d, off + units) - sizeof(uint32_t));
}

/* Lists the free block at off; a list head outside the arena leaves it
 * unlisted (leaked) rather than write through it. */
static void list_push(struct data_header *d, uint32_t off)
{
    struct block *b = block_at(d, off);
    unsigned fl, sl;
    mapping_insert(b->size_units, &fl, &sl);
    uint32_t head = fl < FL_COUNT ? d->free_heads[fl][sl] : 0;
    if (fl >= FL_COUNT || (head != 0 && !unit_ok(d, head)))
        return;
    LOGGED_SET(d, b->u.free.next, head);
    LOGGED_SET(d, b->u.free.prev, 0);
    if (head != 0)
        LOGGED_SET(d, block_at(d, head)->u.free.prev, off);
    LOGGED_SET(d, d->free_heads[fl][sl], off);
    LOGGED_SET(d, d->fl_bitmap, d->fl_bitmap | 1u << fl);
    LOGGED_SET(d, d->sl_bitmap[fl], d->sl_bitmap[fl] | 1u << sl);
}

/* True if the free block at off (inside the arena) sits on a list and
 * links to blocks inside the arena: one list_unlink may take off. */
static bool links_ok(const struct data_header *d, uint32_t off)
{
    const struct block *b = block_at(d, off);
    unsigned fl, sl;
    mapping_insert(b->size_units, &fl, &sl);
    return fl < FL_COUNT &&
           (b->u.free.prev == 0 || unit_ok(d, b->u.free.prev)) &&
           (b->u.free.next == 0 || unit_ok(d, b->u.free.next));
}

/* Takes the free block at off off its list; false, with nothing written,
 * if its links are damaged (links_ok). */
static bool list_unlink(struct data_header *d, uint32_t off)
{
    if (!links_ok(d, off))
        return false;
    struct block *b = block_at(d, off);
    unsigned fl, sl;
    mapping_insert(b->size_units, &fl, &sl);
    if (b->u.free.prev != 0)
        LOGGED_SET(d, block_at(d, b->u.free.prev)->u.free.next, b->u.free.next);
    else
        LOGGED_SET(d, d->free_heads[fl][sl], b->u.free.next);
    if (b->u.free.next != 0)
        LOGGED_SET(d, block_at(d, b->u.free.next)->u.free.prev, b->u.free.prev);
    if (d->free_heads[fl][sl] == 0) {
        LOGGED_SET(d, d->sl_bitmap[fl], d->sl_bitmap[fl] & ~(1u << sl));
        if (d->sl_bitmap[fl] == 0)
            LOGGED_SET(d, d->fl_bitmap, d->fl_bitmap & ~(1u << fl));
    }
    return true;
}

/* Makes [off, off+units) a free block (header and footer) and lists it. The
 * caller has already merged neighbours and fixes the next block's flag. */
static void make_free(struct data_header *d, uint32_t off, uint32_t units,
                      uint8_t prev_free_flag)
{
    struct block *b = block_at(d, off);
    LOGGED_SET(d, b->size_units, units);
    LOGGED_SET(d, b->flags, prev_free_flag);
    LOGGED_SET(d, b->klen, 0);
    LOGGED_SET(d, *footer_of(d, off, units), units);
    list_push(d, off);
}

/* Rebuilds the arena as one free block. Not logged: a rebuild is redone,
 * not undone, if its writer dies (intent.c). */
void arena_init(struct data_header *d)
{
    uint32_t first = (uint32_t)(d->arena_off / UNIT_BYTES);
    uint32_t units = (uint32_t)d->arena_units;
    memset(d->free_heads, 0, sizeof d->free_heads);
    memset(d->sl_bitmap, 0, sizeof d->sl_bitmap);
    d->fl_bitmap = 0;
    struct block *end = block_at(d, first + units);
    memset(end, 0, sizeof *end);
    end->flags = BLOCK_USED | BLOCK_SENTINEL | BLOCK_PREV_FREE;
    struct block *b = block_at(d, first);
    memset(b, 0, sizeof *b);
    b->size_units = units;
    *footer_of(d, first, units) = units;
    unsigned fl, sl;
    mapping_insert(units, &fl, &sl);
    d->free_heads[fl][sl] = first;
    d->fl_bitmap = 1u << fl;
    d->sl_bitmap[fl] = 1u << sl;
    d->free_units = d->arena_units;
    d->used_units = 0;
}

/* A free block from a list whose blocks all hold `units`, or 0. */
static uint32_t find_good_fit(const struct data_header *d, uint32_t units)
{
    unsigned fl, sl;
    mapping_search(units, &fl, &sl);
    if (fl >= FL_COUNT)
        return 0;
    uint32_t sl_map = d->sl_bitmap[fl] & (~0u << sl);
    if (sl_map == 0) {
        uint32_t fl_map = fl + 1 < 32 ? d->fl_bitmap & (~0u << (fl + 1)) : 0;
        if (fl_map == 0)
            return 0;
        fl = (unsigned)__builtin_ctz(fl_map);
        if (fl >= FL_COUNT)
            return 0;
        sl_map = d->sl_bitmap[fl];
        if (sl_map == 0)
            return 0; /* the bitmaps disagree: damage */
    }
    sl = (unsigned)__builtin_ctz(sl_map);
    uint32_t off = d->free_heads[fl][sl];
    return off != 0 && block_ok(d, off) ? off : 0;
}

/* When no list guarantees a fit, a block in the request's own class may
 * still be large enough: look at the first few (a nearly full store must
 * not refuse a value that fits). */
#define FIRST_FIT_SCAN 64

static uint32_t find_first_fit(const struct data_header *d, uint32_t units)
{
    unsigned fl, sl;
    mapping_insert(units, &fl, &sl);
    if (fl >= FL_COUNT)
        return 0;
    uint32_t off = d->free_heads[fl][sl];
    for (unsigned n = 0; off != 0 && n < FIRST_FIT_SCAN; n++) {
        if (!block_ok(d, off))
            return 0;
        if (block_at(d, off)->size_units >= units)
            return off;
        off = block_at(d, off)->u.free.next;
    }
    return 0;
}

static uint32_t find_fit(const struct data_header *d, uint32_t units)
{
    uint32_t off = find_good_fit(d, units);
    return off != 0 ? off : find_first_fit(d, units);
}

bool arena_can_alloc(const struct data_header *d, uint32_t units)
{
    return find_fit(d, units < MIN_BLOCK_UNITS ? MIN_BLOCK_UNITS : units) != 0;
}

/* Returns the unit offset of a block of at least `units` (now marked used,
 * its entry fields zero), or 0 if no free block is large enough. The
 * caller fills it: the bytes it overwrites were meaningless in the free
 * block, but for the footer, which is saved here. */
uint32_t arena_alloc(struct data_header *d, uint32_t units)
{
    if (units < MIN_BLOCK_UNITS)
        units = MIN_BLOCK_UNITS;
    uint32_t off = find_fit(d, units);
    if (off == 0)
        return 0;
    struct block *b = block_at(d, off);
    if (b->size_units < units || !list_unlink(d, off))
        return 0; /* damage */

    uint32_t have = b->size_units;
    uint8_t prev_flag = b->flags & BLOCK_PREV_FREE;
    if (have - units >= MIN_BLOCK_UNITS) {
        /* Split: the tail stays free; its successor keeps PREV_FREE. */
        make_free(d, off + units, have - units, 0);
    } else {
        units = have;
        ulog_save(d, footer_of(d, off, have));
        struct block *next = block_at(d, off + units);
        LOGGED_SET(d, next->flags, next->flags & (uint8_t)~BLOCK_PREV_FREE);
    }
    ulog_save(d, &b->size_units);
    ulog_save(d, &b->u);
    memset(b, 0, sizeof *b);
    b->size_units = units;
    b->flags = BLOCK_USED | prev_flag;
    LOGGED_SET(d, d->free_units, d->free_units - units);
    LOGGED_SET(d, d->used_units, d->used_units + units);
    return off;
}

void arena_free(struct data_header *d, uint32_t off)
{
    if (!block_ok(d, off))
        return; /* leaked rather than freed astray */
    struct block *b = block_at(d, off);
    uint32_t units = b->size_units;
    /* The free neighbours it merges with, checked before anything is
     * written: a damaged one leaves the block where it is. */
    uint32_t end = (uint32_t)(d->arena_off / UNIT_BYTES + d->arena_units);
    struct block *after = block_at(d, off + units);
    if (off + units < end && !(after->flags & BLOCK_USED) &&
        !(block_ok(d, off + units) && links_ok(d, off + units)))
        return;
    if (b->flags & BLOCK_PREV_FREE) {
        uint32_t before = off - *(uint32_t *)((char *)b - sizeof(uint32_t));
        if (!(block_ok(d, before) && links_ok(d, before)))
            return;
    }
    LOGGED_SET(d, d->used_units, d->used_units - units);
    LOGGED_SET(d, d->free_units, d->free_units + units);

    struct block *next = block_at(d, off + units);
    if (!(next->flags & BLOCK_USED)) {
        list_unlink(d, off + units);
        units += next->size_units;
    }
    if (b->flags & BLOCK_PREV_FREE) {
        uint32_t prev_units = *(uint32_t *)((char *)b - sizeof(uint32_t));
        uint32_t prev = off - prev_units;
        list_unlink(d, prev);
        off = prev;
        units += prev_units;
    }
    /* The merged block's predecessor is used (free neighbours always
     * merge), so it carries no PREV_FREE flag. */
    make_free(d, off, units, 0);
    struct block *next_after = block_at(d, off + units);
    LOGGED_SET(d, next_after->flags, next_after->flags | BLOCK_PREV_FREE);
}

bool arena_hold(struct data_header *d, uint32_t off)
{
    if (!block_ok(d, off) || (block_at(d, off)->flags & BLOCK_USED) ||
        !list_unlink(d, off))
        return false;
    struct block *b = block_at(d, off);
    uint32_t units = b->size_units;
    struct block *next = block_at(d, off + units);
    LOGGED_SET(d, next->flags, next->flags & (uint8_t)~BLOCK_PREV_FREE);
    LOGGED_SET(d, b->flags,
               BLOCK_USED | BLOCK_HELD | (b->flags & BLOCK_PREV_FREE));
    LOGGED_SET(d, d->free_units, d->free_units - units);
    LOGGED_SET(d, d->used_units, d->used_units + units);
    return true;
}

static bool block_held(const struct block *b)
{
    return (b->flags & (BLOCK_USED | BLOCK_HELD)) == (BLOCK_USED | BLOCK_HELD);
}

uint32_t arena_carve(struct data_header *d, uint32_t off, uint32_t units)
{
    if (units < MIN_BLOCK_UNITS)
        units = MIN_BLOCK_UNITS;
    if (!block_ok(d, off) || !block_held(block_at(d, off)) ||
        block_at(d, off)->size_units < units)
        return 0;
    struct block *b = block_at(d, off);
    uint32_t have = b->size_units;
    if (have - units >= MIN_BLOCK_UNITS) {
        struct block *rest = block_at(d, off + units);
        ulog_save(d, &rest->size_units);
        ulog_save(d, &rest->u);
        memset(rest, 0, sizeof *rest);
        rest->size_units = have - units;
        rest->flags = BLOCK_USED | BLOCK_HELD;
    } else {
        units = have;
    }
    ulog_save(d, &b->size_units);
    ulog_save(d, &b->u);
    uint8_t prev_flag = b->flags & BLOCK_PREV_FREE;
    memset(b, 0, sizeof *b);
    b->size_units = units;
    b->flags = BLOCK_USED | prev_flag;
    return off;
}

bool arena_held_merge(struct data_header *d, uint32_t off)
{
    if (!block_ok(d, off) || !block_held(block_at(d, off)))
        return false;
    struct block *b = block_at(d, off);
    uint32_t next = off + b->size_units;
    if (!block_ok(d, next) || !block_held(block_at(d, next)))
        return false;
    LOGGED_SET(d, b->size_units, b->size_units + block_at(d, next)->size_units);
    return true;
}

uint64_t arena_largest_free(const struct data_header *d)
{
    if (d->fl_bitmap == 0)
        return 0;
    unsigned fl = fls32(d->fl_bitmap);
    if (fl >= FL_COUNT || d->sl_bitmap[fl] == 0)
        return 0;
    unsigned sl = fls32(d->sl_bitmap[fl]);
    uint64_t best = 0;
    unsigned walked = 0;
    for (uint32_t off = d->free_heads[fl][sl];
         off != 0 && walked < 4096 && block_ok(d, off);
         off = block_at(d, off)->u.free.next, walked++) {
        uint32_t u = block_at(d, off)->size_units;
        if (u > best)
            best = u;
    }
    return best * UNIT_BYTES;
}

/* Walks every block of the arena in address order and every free list.
 * Marks each used block's start in used_map (one bit per unit from the
 * arena start) for table_check. */
int arena_check(const struct data_header *d, uint8_t *used_map,
                struct shmkv_check_report *r)
{
    uint32_t first = (uint32_t)(d->arena_off / UNIT_BYTES);
    uint32_t end = first + (uint32_t)d->arena_units;
    uint64_t free_units = 0, used_units = 0, free_blocks = 0;
    bool prev_free = false;
    uint32_t off = first;
    while (off < end) {
        const struct block *b = block_at(d, off);
        if (b->size_units < MIN_BLOCK_UNITS || b->size_units > end - off) {
            check_problem(r, "arena block at unit %u has bad size %u", off,
                          b->size_units);
            return -1;
        }
        bool is_free = !(b->flags & BLOCK_USED);
        if (!!(b->flags & BLOCK_PREV_FREE) != prev_free)
            check_problem(r, "arena block at unit %u: prev-free flag wrong",
                          off);
        if (is_free) {
            if (prev_free)
                check_problem(r, "arena: adjacent free blocks at unit %u", off);
            const uint32_t *foot =
                (const uint32_t *)((const char *)block_at(d,
                                                          off + b->size_units) -
                                   sizeof(uint32_t));
            if (*foot != b->size_units)
                check_problem(r, "arena: free block at unit %u bad footer",
                              off);
            free_units += b->size_units;
            free_blocks++;
        } else if (b->flags & BLOCK_HELD) {
            /* Neither an entry nor leaked: space a compaction holds. */
            used_units += b->size_units;
            if (off < d->compact_lo || off >= d->compact_hi)
                check_problem(r,
                              "arena: held block at unit %u is outside "
                              "the compaction window",
                              off);
        } else {
            used_units += b->size_units;
            r->blocks_used++;
            uint64_t bit = off - first;
            used_map[bit / 8] |= (uint8_t)(1u << (bit % 8));
        }
        prev_free = is_free;
        off += b->size_units;
    }
    const struct block *sentinel = block_at(d, end);
    if (!(sentinel->flags & BLOCK_SENTINEL) ||
        !!(sentinel->flags & BLOCK_PREV_FREE) != prev_free)
        check_problem(r, "arena: end sentinel damaged");
    r->blocks_free = free_blocks;
    if (free_units != d->free_units || used_units != d->used_units)
        check_problem(r,
                      "arena: counted %llu free / %llu used units, header "
                      "says %llu / %llu",
                      (unsigned long long)free_units,
                      (unsigned long long)used_units,
                      (unsigned long long)d->free_units,
                      (unsigned long long)d->used_units);

    /* Every listed block is free, on the right list, with sane links. */
    uint64_t listed = 0;
    for (unsigned fl = 0; fl < FL_COUNT; fl++) {
        for (unsigned sl = 0; sl < SL_COUNT; sl++) {
            uint32_t prev = 0;
            bool nonempty = d->free_heads[fl][sl] != 0;
            if (nonempty != !!(d->sl_bitmap[fl] & (1u << sl)))
                check_problem(r, "arena: bitmap wrong for list %u/%u", fl, sl);
            for (uint32_t o = d->free_heads[fl][sl]; o != 0;
                 o = block_at(d, o)->u.free.next) {
                if (o < first || o >= end || listed > free_blocks) {
                    check_problem(r, "arena: free list %u/%u broken", fl, sl);
                    return -1;
                }
                const struct block *b = block_at(d, o);
                unsigned bfl, bsl;
                mapping_insert(b->size_units, &bfl, &bsl);
                if ((b->flags & BLOCK_USED) || bfl != fl || bsl != sl ||
                    b->u.free.prev != prev)
                    check_problem(r,
                                  "arena: free list %u/%u: bad block at "
                                  "unit %u",
                                  fl, sl, o);
                prev = o;
                listed++;
            }
        }
        if (!!d->sl_bitmap[fl] != !!(d->fl_bitmap & (1u << fl)))
            check_problem(r, "arena: first-level bitmap wrong at %u", fl);
    }
    if (listed != free_blocks)
        check_problem(r, "arena: %llu free blocks but %llu listed",
                      (unsigned long long)free_blocks,
                      (unsigned long long)listed);
    return 0;
}
