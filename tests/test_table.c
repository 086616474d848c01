/*
 * Unit tests for the hash index (client/table.c) through a real store: the
 * index filled to its load limit, overflow counts that lead lookups past
 * full buckets, the probe length at high load, reuse of freed slots, the
 * check noticing a damaged index, and keys whose hash tags collide (slots
 * planted by hand), which every lookup must tell apart by the key itself.
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

/* Tag collisions. Two keys share a tag about once in 2^32 pairs, so the
 * tests above never make the lookup reject an entry whose tag matched; here
 * slots are planted by hand: a slot carrying key b's tag but naming key a's
 * entry, in b's home bucket or in the next bucket of b's probe sequence.
 * Every lookup path (shmkv_get, shmkv_get_copy, shmkv_ttl, and the writers'
 * table_find in shmkv_set and shmkv_del) must compare the key itself. */

/* Where the colliding slot is planted. */
enum collide_where {
    COLLIDE_HOME,   /* in b's home bucket (table_lookup's inline path) */
    COLLIDE_BEYOND, /* in the bucket after it, the home bucket's overflow
                       count raised (table_lookup_beyond_home) */
};

/* The collision collide() is testing, for the teardown to name if the test
 * fails in it; empty between collisions. */
static char collide_case[200];

/* An index slot, found by scanning the whole index rather than by the
 * lookup under test. */
struct slot_ref {
    uint64_t bucket;
    unsigned slot;
    uint32_t off;
};

static uint64_t hash_of(const struct shmkv *kv, const char *key, size_t klen)
{
    return XXH3_64bits_withSeed(key, klen, kv->seed);
}

/* The slot whose tag is key's and whose entry holds key, or false. */
static bool slot_by_scan(const struct shmkv *kv, const char *key, size_t klen,
                         struct slot_ref *out)
{
    uint32_t tag = hash_tag(hash_of(kv, key, klen));
    for (uint64_t b = 0; b < kv->nbuckets; b++) {
        for (unsigned i = 0; i < BUCKET_SLOTS; i++) {
            uint64_t s = atomic_load(&kv->buckets[b].slot[i]);
            if (SLOT_OFF(s) == 0 || SLOT_TAG(s) != tag)
                continue;
            const struct block *e = block_at(kv->data, SLOT_OFF(s));
            if (e->klen == klen && memcmp(entry_key(e), key, klen) == 0) {
                *out = (struct slot_ref){b, i, SLOT_OFF(s)};
                return true;
            }
        }
    }
    return false;
}

/* The first empty slot of bucket b at or after slot `from`. */
static unsigned empty_slot(const struct shmkv *kv, uint64_t b, unsigned from)
{
    for (unsigned i = from; i < BUCKET_SLOTS; i++)
        if (atomic_load(&kv->buckets[b].slot[i]) == 0)
            return i;
    fail_msg("bucket %llu has no empty slot from %u", (unsigned long long)b,
             from);
    return BUCKET_SLOTS;
}

/* The entry offset table_find and table_lookup give for key: want, 0 for
 * none. */
static void assert_lookup_gives(struct shmkv *kv, const char *key, size_t klen,
                                uint32_t want)
{
    uint64_t h = hash_of(kv, key, klen);
    struct table_pos pos;
    table_find(kv, h, key, klen, &pos);
    assert_int_equal(pos.off, want);
    assert_int_equal(shmkv_read_begin(kv), 0);
    const struct block *e = table_lookup(kv, h, key, klen);
    assert_int_equal(shmkv_read_end(kv), 0);
    assert_int_equal(e == NULL ? 0 : (uint32_t)(e - block_at(kv->data, 0)),
                     want);
}

/* key is absent to every read. */
static void assert_absent(struct shmkv *kv, const char *key, size_t klen)
{
    shmkv_val_t v;
    assert_int_equal(shmkv_read_begin(kv), 0);
    int rc = shmkv_get(kv, key, klen, &v);
    assert_int_equal(shmkv_read_end(kv), 0);
    assert_int_equal(rc, SHMKV_ENOTFOUND);
    char buf[512];
    size_t vlen;
    assert_int_equal(shmkv_get_copy(kv, key, klen, buf, sizeof buf, &vlen),
                     SHMKV_ENOTFOUND);
    int64_t ttl;
    assert_int_equal(shmkv_ttl(kv, key, klen, &ttl), SHMKV_ENOTFOUND);
}

/* Every read of key gives val, and a TTL of about an hour if with_ttl,
 * else none. */
static void assert_holds(struct shmkv *kv, const char *key, size_t klen,
                         const char *val, size_t vlen, bool with_ttl)
{
    shmkv_val_t v;
    char got[512];
    assert_int_equal(shmkv_read_begin(kv), 0);
    int rc = shmkv_get(kv, key, klen, &v);
    size_t got_len = rc == 0 ? v.len : 0;
    if (got_len > 0 && got_len <= sizeof got)
        memcpy(got, v.data, got_len);
    assert_int_equal(shmkv_read_end(kv), 0);
    assert_int_equal(rc, 0);
    assert_int_equal(got_len, vlen);
    assert_memory_equal(got, val, vlen);

    size_t copied;
    memset(got, 0, sizeof got);
    assert_int_equal(shmkv_get_copy(kv, key, klen, got, sizeof got, &copied),
                     0);
    assert_int_equal(copied, vlen);
    assert_memory_equal(got, val, vlen);

    int64_t ttl;
    assert_int_equal(shmkv_ttl(kv, key, klen, &ttl), 0);
    if (with_ttl)
        assert_in_range(ttl, 3000, 3600);
    else
        assert_int_equal(ttl, -1);
}

/* Key a's value: what key b has past a's length (so that a's key and value
 * bytes together begin with b, for a lookup that skipped the length
 * check), then a mark of its own. */
static size_t value_of_a(const char *a, size_t alen, const char *b, size_t blen,
                         char *out)
{
    size_t n = 0;
    if (blen > alen && memcmp(a, b, alen) == 0) {
        memcpy(out, b + alen, blen - alen);
        n = blen - alen;
    }
    memcpy(out + n, "|value of a", 11);
    return n + 11;
}

/* Plants a slot with b's tag naming a's entry (where says where), then
 * checks that b is absent to reads and to shmkv_del, that shmkv_set of b
 * inserts it beside a, that b is found past the colliding slot, which
 * comes first in its bucket, and that a is untouched throughout. Leaves
 * the index as it found it. */
static void collide(struct shmkv *kv, const char *a, size_t alen, const char *b,
                    size_t blen, enum collide_where where)
{
    static const char bval[] = "value of b";
    const size_t bvlen = sizeof bval - 1;
    size_t diff = 0;
    while (diff < alen && diff < blen && a[diff] == b[diff])
        diff++;
    snprintf(collide_case, sizeof collide_case,
             "slot in %s bucket; a %zu bytes \"%.*s\", b %zu bytes \"%.*s\", "
             "first difference at byte %zu",
             where == COLLIDE_HOME ? "b's home" : "the next", alen,
             (int)(alen < 40 ? alen : 40), a, blen,
             (int)(blen < 40 ? blen : 40), b, diff);
    char aval[512];
    size_t avlen = value_of_a(a, alen, b, blen, aval);
    assert_int_equal(shmkv_set(kv, a, alen, aval, avlen, 3600, 0), 0);
    struct slot_ref ra = {0};
    assert_true(slot_by_scan(kv, a, alen, &ra));

    _Atomic uint64_t *a_slot = &kv->buckets[ra.bucket].slot[ra.slot];
    uint64_t a_word = atomic_load(a_slot);
    uint64_t entries = kv->data->entries;

    /* The colliding slot: b's tag, a's entry. */
    uint64_t bhash = hash_of(kv, b, blen);
    uint64_t home = table_home(kv->nbuckets, bhash);
    uint64_t fake_bucket = home;
    if (where == COLLIDE_BEYOND)
        fake_bucket =
            next_bucket(home, probe_step(kv->nbuckets, bhash), kv->nbuckets);
    unsigned fake_index = empty_slot(kv, fake_bucket, 0);
    _Atomic uint64_t *fake_slot = &kv->buckets[fake_bucket].slot[fake_index];
    uint64_t fake = SLOT_MAKE(hash_tag(bhash), ra.off);
    atomic_store(fake_slot, fake);
    if (where == COLLIDE_BEYOND) /* lookups of b go on past home */
        atomic_fetch_add(&kv->buckets[home].overflow, 1);

    /* b's tag leads to a's entry, which is not b's. */
    assert_lookup_gives(kv, b, blen, 0);
    assert_absent(kv, b, blen);
    assert_holds(kv, a, alen, aval, avlen, true);
    assert_int_equal(shmkv_del(kv, b, blen), SHMKV_ENOTFOUND);
    assert_int_equal(atomic_load(fake_slot), fake);
    assert_int_equal(atomic_load(a_slot), a_word);
    assert_int_equal(kv->data->entries, entries);
    assert_holds(kv, a, alen, aval, avlen, true);

    /* Setting b inserts it: the colliding slot is not b's to replace. */
    assert_int_equal(shmkv_set(kv, b, blen, bval, bvlen, 0, 0), 0);
    assert_int_equal(atomic_load(fake_slot), fake);
    assert_int_equal(atomic_load(a_slot), a_word);
    assert_int_equal(kv->data->entries, entries + 1);
    struct slot_ref rb = {0};
    assert_true(slot_by_scan(kv, b, blen, &rb));
    assert_int_equal(rb.bucket, home); /* the index is nearly empty */
    assert_int_not_equal(rb.off, ra.off);

    /* Put b's slot after the colliding one in the same bucket, so that a
     * lookup of b meets a's entry first. */
    if (rb.bucket != fake_bucket || rb.slot < fake_index) {
        unsigned to = empty_slot(kv, fake_bucket, fake_index + 1);
        uint64_t w = atomic_load(&kv->buckets[rb.bucket].slot[rb.slot]);
        atomic_store(&kv->buckets[fake_bucket].slot[to], w);
        atomic_store(&kv->buckets[rb.bucket].slot[rb.slot], 0);
        if (fake_bucket != home) /* b is displaced now: count it */
            atomic_fetch_add(&kv->buckets[home].overflow, 1);
        rb.bucket = fake_bucket;
        rb.slot = to;
    }
    assert_lookup_gives(kv, b, blen, rb.off);
    assert_holds(kv, b, blen, bval, bvlen, false);
    assert_holds(kv, a, alen, aval, avlen, true);

    /* Deleting b removes b's slot, not the colliding one. */
    assert_int_equal(shmkv_del(kv, b, blen), 0);
    assert_int_equal(atomic_load(&kv->buckets[rb.bucket].slot[rb.slot]), 0);
    assert_int_equal(atomic_load(fake_slot), fake);
    assert_int_equal(atomic_load(a_slot), a_word);
    assert_int_equal(kv->data->entries, entries);
    assert_absent(kv, b, blen);
    assert_holds(kv, a, alen, aval, avlen, true);

    /* Undo the planting; what is left is an index shmkv_check accepts. */
    atomic_store(fake_slot, 0);
    if (where == COLLIDE_BEYOND)
        atomic_fetch_sub(&kv->buckets[home].overflow, 1);
    assert_check_clean(kv);
    assert_int_equal(shmkv_del(kv, a, alen), 0);
    assert_int_equal(kv->data->entries, entries - 1);
    assert_int_equal(atomic_load(&kv->buckets[home].overflow), 0);
    collide_case[0] = '\0';
}

static int collide_setup(void **state)
{
    *state = make_store(1000);
    return 0;
}

/* Runs after a failed test too: names the collision it failed in, and
 * removes the store (whose index may still hold a planted slot). */
static int collide_teardown(void **state)
{
    if (collide_case[0] != '\0')
        print_error("failed in collision: %s\n", collide_case);
    collide_case[0] = '\0';
    test_destroy(*state, NULL);
    return 0;
}

static void collide_both(struct shmkv *kv, const char *a, size_t alen,
                         const char *b, size_t blen)
{
    collide(kv, a, alen, b, blen, COLLIDE_HOME);
    collide(kv, a, alen, b, blen, COLLIDE_BEYOND);
}

static void collide_str(struct shmkv *kv, const char *a, const char *b)
{
    collide_both(kv, a, strlen(a), b, strlen(b));
}

/* A key of n bytes with no two neighbours alike. */
static void key_pattern(char *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = (char)('!' + (i * 7) % 90);
}

/* Collides every pair of n-byte keys that differ in one bit of byte p, for
 * each p in pos (every byte if pos is NULL). */
static void collide_one_byte_apart(struct shmkv *kv, size_t n,
                                   const size_t *pos, size_t npos)
{
    char a[256], b[256];
    key_pattern(a, n);
    size_t count = pos != NULL ? npos : n;
    for (size_t j = 0; j < count; j++) {
        size_t p = pos != NULL ? pos[j] : j;
        if (p >= n)
            continue;
        memcpy(b, a, n);
        b[p] ^= 1;
        collide_both(kv, a, n, b, n);
    }
}

static void test_collision_keys_differ_in_last_byte(void **state)
{
    struct shmkv *kv = *state;
    collide_str(kv, "item:001", "item:002");
    collide_str(kv, "session:00000001", "session:00000002");
    collide_str(kv, "a", "b");
    collide_str(kv, "user:12345:profile:avatar:thumbnail:0",
                "user:12345:profile:avatar:thumbnail:1");
}

static void test_collision_keys_differ_in_first_byte(void **state)
{
    struct shmkv *kv = *state;
    collide_str(kv, "aitem:01", "bitem:01");
    collide_str(kv, "1session:0000001", "2session:0000001");
    collide_str(kv, "0user:12345:profile:avatar:thumbnail",
                "1user:12345:profile:avatar:thumbnail");
}

/* Keys of 8 to 16 bytes: key_equal's path of two overlapping 8-byte
 * loads, which must between them cover every byte. */
static void test_collision_fast_path_every_byte(void **state)
{
    struct shmkv *kv = *state;
    for (size_t n = 8; n <= 16; n++)
        collide_one_byte_apart(kv, n, NULL, 0);
}

/* Keys under 8 and over 16 bytes: key_equal_slow's memcmp. */
static void test_collision_memcmp_path(void **state)
{
    struct shmkv *kv = *state;
    for (size_t n = 1; n < 8; n++)
        collide_one_byte_apart(kv, n, NULL, 0);
    for (size_t n = 17; n <= 40; n++)
        collide_one_byte_apart(kv, n, NULL, 0);
    static const size_t long_lengths[] = {64, 100, 249, 250};
    for (size_t i = 0; i < sizeof long_lengths / sizeof *long_lengths; i++) {
        size_t n = long_lengths[i];
        const size_t pos[] = {0,  1,     7,     8,     15,    16,
                              17, n / 2, n - 9, n - 8, n - 2, n - 1};
        collide_one_byte_apart(kv, n, pos, sizeof pos / sizeof *pos);
    }
}

/* One key a prefix of the other, a's value continuing a's key into b's: a
 * lookup must compare lengths as well as bytes. */
static void test_collision_key_is_prefix(void **state)
{
    struct shmkv *kv = *state;
    static const size_t lengths[][2] = {
        {1, 2},     {3, 4},   {7, 8},     {8, 9},   {8, 16},
        {15, 16},   {16, 17}, {16, 24},   {17, 18}, {40, 41},
        {100, 101}, {1, 250}, {249, 250},
    };
    char longer[256];
    key_pattern(longer, sizeof longer);
    for (size_t i = 0; i < sizeof lengths / sizeof *lengths; i++) {
        size_t shorter_len = lengths[i][0], longer_len = lengths[i][1];
        collide_both(kv, longer, shorter_len, longer, longer_len);
        collide_both(kv, longer, longer_len, longer, shorter_len);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fill_to_load_limit),
        cmocka_unit_test(test_delete_lowers_overflow),
        cmocka_unit_test(test_check_sees_damaged_index),
        cmocka_unit_test_setup_teardown(test_collision_keys_differ_in_last_byte,
                                        collide_setup, collide_teardown),
        cmocka_unit_test_setup_teardown(
            test_collision_keys_differ_in_first_byte, collide_setup,
            collide_teardown),
        cmocka_unit_test_setup_teardown(test_collision_fast_path_every_byte,
                                        collide_setup, collide_teardown),
        cmocka_unit_test_setup_teardown(test_collision_memcmp_path,
                                        collide_setup, collide_teardown),
        cmocka_unit_test_setup_teardown(test_collision_key_is_prefix,
                                        collide_setup, collide_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
