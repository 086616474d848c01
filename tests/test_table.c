/*
 * Unit tests for the hash index (client/table.c) through a real store: the
 * index filled to its load limit, overflow counts that lead lookups past
 * full buckets, the probe length at high load, reuse of freed slots, and
 * the check noticing a damaged index.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include <xxhash.h>
#include "table.h"
#include "testutil.h"

static struct shmkv *make_store(uint64_t max_entries)
{
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = 8u << 20;
    o.max_entries = max_entries;
    struct shmkv *kv;
    assert_int_equal(test_create(&o, &kv), 0);
    return kv;
}

static int key_of(char *buf, unsigned i)
{
    return sprintf(buf, "k:%u", i);
}

static void assert_check_clean(struct shmkv *kv)
{
    struct shmkv_check_report r;
    int rc = shmkv_check(kv, &r);
    if (rc != 0)
        fail_msg("check: %s (%s)", shmkv_strerror(rc), r.first_problem);
}

/* Buckets visited by a lookup of key i. */
static unsigned probes_for(struct shmkv *kv, const char *key, size_t klen)
{
    uint64_t h = XXH3_64bits_withSeed(key, klen, kv->seed);
    struct table_pos pos;
    table_find(kv, h, key, klen, &pos);
    assert_int_not_equal(pos.off, 0);
    return pos.probes;
}

static void test_fill_to_load_limit(void **state)
{
    (void)state;
    struct shmkv *kv = make_store(20000);
    uint64_t limit = kv->data->max_load;
    char k[32];
    unsigned i;
    for (i = 0; i < limit; i++) {
        int kl = key_of(k, i);
        int rc = shmkv_set(kv, k, (size_t)kl, "v", 1, 0, 0);
        if (rc != 0)
            fail_msg("set %u of %llu: %s", i, (unsigned long long)limit,
                     shmkv_strerror(rc));
    }
    /* The index is full: a new key is refused, an existing one updates. */
    int kl = key_of(k, i);
    assert_int_equal(shmkv_set(kv, k, (size_t)kl, "v", 1, 0, 0), SHMKV_ENOSPC);
    kl = key_of(k, 7);
    assert_int_equal(shmkv_set(kv, k, (size_t)kl, "new", 3, 0, 0), 0);

    uint64_t overflowing = 0, total_probes = 0, worst = 0;
    for (uint64_t b = 0; b < kv->nbuckets; b++)
        overflowing += atomic_load(&kv->buckets[b].overflow) != 0;
    assert_true(overflowing > 0); /* the overflow path was exercised */
    assert_int_equal(shmkv_read_begin(kv), 0);
    for (i = 0; i < limit; i++) {
        kl = key_of(k, i);
        shmkv_val_t v;
        assert_int_equal(shmkv_get(kv, k, (size_t)kl, &v), 0);
        unsigned p = probes_for(kv, k, (size_t)kl);
        total_probes += p;
        if (p > worst)
            worst = p;
    }
    assert_int_equal(shmkv_read_end(kv), 0);
    double mean = (double)total_probes / (double)limit;
    print_message("load %.1f%%: %.3f buckets per lookup, worst %llu, "
                  "%llu of %llu buckets overflow\n",
                  100.0 * (double)limit / (double)(kv->nbuckets * 7), mean,
                  (unsigned long long)worst, (unsigned long long)overflowing,
                  (unsigned long long)kv->nbuckets);
    assert_true(mean < 1.6);
    assert_check_clean(kv);
    test_destroy(kv, NULL);
}

static void test_delete_lowers_overflow(void **state)
{
    (void)state;
    struct shmkv *kv = make_store(5000);
    uint64_t limit = kv->data->max_load;
    char k[32];
    for (unsigned i = 0; i < limit; i++) {
        int kl = key_of(k, i);
        assert_int_equal(shmkv_set(kv, k, (size_t)kl, "v", 1, 0, 0), 0);
    }
    for (unsigned i = 0; i < limit; i++) {
        int kl = key_of(k, i);
        assert_int_equal(shmkv_del(kv, k, (size_t)kl), 0);
    }
    for (uint64_t b = 0; b < kv->nbuckets; b++) {
        assert_int_equal(atomic_load(&kv->buckets[b].overflow), 0);
        for (unsigned s = 0; s < BUCKET_SLOTS; s++)
            assert_int_equal(atomic_load(&kv->buckets[b].slot[s]), 0);
    }
    /* Slots are reused at once: no tombstones. */
    for (unsigned round = 0; round < 3; round++) {
        for (unsigned i = 0; i < limit; i++) {
            int kl = key_of(k, i + round * 1000000u);
            assert_int_equal(shmkv_set(kv, k, (size_t)kl, "v", 1, 0, 0), 0);
        }
        assert_check_clean(kv);
        assert_int_equal(shmkv_flush(kv), 0);
    }
    test_destroy(kv, NULL);
}

static void test_check_sees_damaged_index(void **state)
{
    (void)state;
    struct shmkv *kv = make_store(1000);
    char k[32];
    for (unsigned i = 0; i < 100; i++) {
        int kl = key_of(k, i);
        assert_int_equal(shmkv_set(kv, k, (size_t)kl, "v", 1, 0, 0), 0);
    }
    assert_check_clean(kv);
    /* Point one slot into the middle of a block. */
    for (uint64_t b = 0; b < kv->nbuckets; b++) {
        uint64_t s = atomic_load(&kv->buckets[b].slot[0]);
        if (SLOT_OFF(s) != 0) {
            atomic_store(&kv->buckets[b].slot[0],
                         SLOT_MAKE(SLOT_TAG(s), SLOT_OFF(s) + 1));
            break;
        }
    }
    struct shmkv_check_report r;
    assert_int_equal(shmkv_check(kv, &r), SHMKV_ECORRUPT);
    assert_true(r.problems > 0);
    print_message("check reported: %s\n", r.first_problem);
    test_destroy(kv, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fill_to_load_limit),
        cmocka_unit_test(test_delete_lowers_overflow),
        cmocka_unit_test(test_check_sees_damaged_index),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
