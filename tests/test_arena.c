/*
 * Unit tests for the arena allocator (client/arena.c), run on private
 * memory: random allocate/free sequences against a model, with the
 * allocator's own check after every batch, no overlap between live blocks,
 * full coalescing when everything is freed, and bounded waste.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "internal.h"

#define ARENA_BYTES (4u << 20)

struct arena_fixture {
    struct data_header *d;
    size_t bytes;
};

static int arena_setup(void **state)
{
    struct arena_fixture *f = calloc(1, sizeof *f);
    f->bytes = ARENA_BYTES;
    f->d = aligned_alloc(4096, f->bytes);
    memset(f->d, 0, f->bytes);
    f->d->arena_off = 4096;
    f->d->arena_units = (f->bytes - f->d->arena_off) / UNIT_BYTES - 1;
    arena_init(f->d);
    *state = f;
    return 0;
}

static int arena_teardown(void **state)
{
    struct arena_fixture *f = *state;
    free(f->d);
    free(f);
    return 0;
}

static void assert_arena_ok(const struct data_header *d)
{
    struct shmkv_check_report r;
    memset(&r, 0, sizeof r);
    uint8_t *map = calloc(d->arena_units / 8 + 1, 1);
    assert_int_equal(arena_check(d, map, &r), 0);
    free(map);
    if (r.problems != 0)
        fail_msg("arena check: %s", r.first_problem);
}

static void test_fresh_arena_is_one_free_block(void **state)
{
    struct arena_fixture *f = *state;
    assert_arena_ok(f->d);
    assert_int_equal(f->d->free_units, f->d->arena_units);
    assert_int_equal(arena_largest_free(f->d), f->d->arena_units * UNIT_BYTES);
}

static void test_alloc_rounds_and_splits(void **state)
{
    struct arena_fixture *f = *state;
    uint32_t a = arena_alloc(f->d, 1);
    assert_int_not_equal(a, 0);
    assert_int_equal(block_at(f->d, a)->size_units, MIN_BLOCK_UNITS);
    uint32_t b = arena_alloc(f->d, 100);
    assert_int_not_equal(b, 0);
    assert_true(block_at(f->d, b)->size_units >= 100);
    /* Waste is bounded by the size class width (1/32 of the size). */
    assert_true(block_at(f->d, b)->size_units <= 100 + 100 / 32 + 1);
    assert_int_equal(f->d->used_units, block_at(f->d, a)->size_units +
                                           block_at(f->d, b)->size_units);
    assert_arena_ok(f->d);
    arena_free(f->d, a);
    arena_free(f->d, b);
    assert_arena_ok(f->d);
    assert_int_equal(f->d->free_units, f->d->arena_units);
}

static void test_too_large_fails_cleanly(void **state)
{
    struct arena_fixture *f = *state;
    uint64_t before = f->d->free_units;
    assert_int_equal(arena_alloc(f->d, (uint32_t)f->d->arena_units + 1), 0);
    assert_int_equal(f->d->free_units, before);
    uint32_t all = arena_alloc(f->d, (uint32_t)f->d->arena_units);
    assert_int_not_equal(all, 0);
    assert_int_equal(f->d->free_units, 0);
    assert_int_equal(arena_alloc(f->d, 2), 0);
    arena_free(f->d, all);
    assert_arena_ok(f->d);
}

/* Random sequences against a model: every live block keeps its pattern. */
static void test_random_alloc_free(void **state)
{
    struct arena_fixture *f = *state;
    enum { LIVE = 2000 };
    uint32_t offs[LIVE] = {0};
    uint32_t sizes[LIVE] = {0};
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    unsigned failures = 0;
    for (int round = 0; round < 60000; round++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        unsigned i = (unsigned)(rng % LIVE);
        if (offs[i] != 0) {
            struct block *b = block_at(f->d, offs[i]);
            const unsigned char *p = (const unsigned char *)(b + 1);
            for (uint32_t k = 0; k < (sizes[i] - 1) * UNIT_BYTES; k += 61)
                assert_int_equal(p[k], (unsigned char)(i * 7 + 1));
            arena_free(f->d, offs[i]);
            offs[i] = 0;
        } else {
            /* Mostly small, sometimes large. */
            uint32_t units = (rng >> 20) % 8 == 0
                                 ? 2 + (uint32_t)((rng >> 24) % 4000)
                                 : 2 + (uint32_t)((rng >> 24) % 40);
            uint32_t off = arena_alloc(f->d, units);
            if (off == 0) {
                failures++;
                continue;
            }
            struct block *b = block_at(f->d, off);
            assert_true(b->size_units >= units);
            memset(b + 1, (int)(unsigned char)(i * 7 + 1),
                   (b->size_units - 1) * UNIT_BYTES);
            offs[i] = off;
            sizes[i] = b->size_units;
        }
        if (round % 5000 == 0)
            assert_arena_ok(f->d);
    }
    assert_arena_ok(f->d);
    for (unsigned i = 0; i < LIVE; i++)
        if (offs[i] != 0)
            arena_free(f->d, offs[i]);
    /* Everything merged back into one block. */
    assert_arena_ok(f->d);
    assert_int_equal(f->d->free_units, f->d->arena_units);
    assert_int_equal(arena_largest_free(f->d), f->d->arena_units * UNIT_BYTES);
    print_message("random: %u allocations did not fit\n", failures);
}

/* Freeing in every order merges neighbours on both sides. */
static void test_coalescing_both_sides(void **state)
{
    struct arena_fixture *f = *state;
    uint32_t a = arena_alloc(f->d, 10);
    uint32_t b = arena_alloc(f->d, 10);
    uint32_t c = arena_alloc(f->d, 10);
    uint32_t guard = arena_alloc(f->d, 10);
    assert_true(a && b && c && guard);
    arena_free(f->d, a);
    arena_free(f->d, c);
    assert_arena_ok(f->d);
    arena_free(f->d, b); /* merges with a before and c after */
    assert_arena_ok(f->d);
    uint32_t big = arena_alloc(f->d, 30);
    assert_int_equal(big, a);
    arena_free(f->d, big);
    arena_free(f->d, guard);
    assert_arena_ok(f->d);
    assert_int_equal(f->d->free_units, f->d->arena_units);
}

static void test_check_detects_damage(void **state)
{
    struct arena_fixture *f = *state;
    uint32_t a = arena_alloc(f->d, 10);
    arena_alloc(f->d, 10);
    block_at(f->d, a)->size_units = 3; /* a stray write */
    struct shmkv_check_report r;
    memset(&r, 0, sizeof r);
    uint8_t *map = calloc(f->d->arena_units / 8 + 1, 1);
    arena_check(f->d, map, &r);
    free(map);
    assert_true(r.problems > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fresh_arena_is_one_free_block,
                                        arena_setup, arena_teardown),
        cmocka_unit_test_setup_teardown(test_alloc_rounds_and_splits,
                                        arena_setup, arena_teardown),
        cmocka_unit_test_setup_teardown(test_too_large_fails_cleanly,
                                        arena_setup, arena_teardown),
        cmocka_unit_test_setup_teardown(test_random_alloc_free, arena_setup,
                                        arena_teardown),
        cmocka_unit_test_setup_teardown(test_coalescing_both_sides, arena_setup,
                                        arena_teardown),
        cmocka_unit_test_setup_teardown(test_check_detects_damage, arena_setup,
                                        arena_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
