/*
 * Compaction tests (client/compact.c): a store whose free space is in
 * pieces too small for the values now written must move its entries
 * together rather than refuse them.
 *
 * The pattern: fill a 16 MiB store with values of 16-512 bytes, delete
 * every other one, then refill with values of 2-64 KiB (or of mixed sizes)
 * until the first SHMKV_ENOSPC: the arena must be at least 90% used then.
 * Every value left must read back exactly, shmkv_check must be clean, a
 * reader in another process must never miss a key or read a wrong byte
 * while entries move, a writer killed at any step of a compaction must
 * leave a consistent store whose next write releases what it held, and an
 * lru store must compact before it evicts.
 */
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "internal.h"
#include "testutil.h"

#define STORE_BYTES (16u << 20)
#define MAX_SMALL 100000u
#define MAX_BIG 4096u

static uint64_t rng_state;

static uint32_t rnd(uint32_t lo, uint32_t hi)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return lo + (uint32_t)(rng_state % (hi - lo + 1));
}

/* The bytes of key's value of len bytes: a function of both, so that a
 * value read back is checked byte for byte. */
static void value_fill(char *buf, const char *key, size_t len)
{
    uint64_t x = 1469598103934665603ull;
    for (const char *p = key; *p; p++)
        x = (x ^ (unsigned char)*p) * 1099511628211ull;
    for (size_t i = 0; i < len; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        buf[i] = (char)(x >> 56);
    }
}

struct population {
    uint32_t small_len[MAX_SMALL]; /* 0: absent */
    uint32_t nsmall;
    uint32_t big_len[MAX_BIG];
    uint32_t nbig;
};

static char value_buf[1u << 17];
static char expect_buf[1u << 17];

static int put(struct shmkv *kv, const char *key, size_t len)
{
    value_fill(value_buf, key, len);
    return shmkv_set(kv, key, strlen(key), value_buf, len, 0, 0);
}

/* Checks that key holds its value of len bytes (0: that it is absent). */
static bool holds(struct shmkv *kv, const char *key, size_t len)
{
    size_t got = 0;
    int rc =
        shmkv_get_copy(kv, key, strlen(key), value_buf, sizeof value_buf, &got);
    if (len == 0)
        return rc == SHMKV_ENOTFOUND;
    value_fill(expect_buf, key, len);
    return rc == 0 && got == len && memcmp(value_buf, expect_buf, len) == 0;
}

static struct shmkv *make_store(enum shmkv_eviction ev, char *where, size_t cap)
{
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = STORE_BYTES;
    o.max_entries = 2 * MAX_SMALL;
    o.eviction = ev;
    o.mode = 0600;
    o.lock_timeout_ms = 5000;
    o.reader_timeout_ms = 1000;
    struct shmkv *kv;
    assert_int_equal(test_create(&o, &kv), 0);
    snprintf(where, cap, "%s", o.key);
    return kv;
}

/* Fills the store with values of 16-512 bytes until it is full (less
 * than 32 KiB free, before an lru store evicts), then deletes every other
 * one. */
static void fill_and_punch(struct shmkv *kv, struct population *p)
{
    char key[32];
    struct shmkv_stats st;
    for (p->nsmall = 0; p->nsmall < MAX_SMALL; p->nsmall++) {
        if (p->nsmall % 32 == 0) {
            assert_int_equal(shmkv_stats(kv, &st), 0);
            if (st.evictions != 0)
                fail_msg("%" PRIu64 " evictions while filling", st.evictions);
            if (st.bytes_free < (32u << 10))
                break;
        }
        uint32_t len = rnd(16, 512);
        snprintf(key, sizeof key, "s%u", p->nsmall);
        int rc = put(kv, key, len);
        if (rc == SHMKV_ENOSPC)
            break;
        assert_int_equal(rc, 0);
        p->small_len[p->nsmall] = len;
    }
    assert_true(p->nsmall < MAX_SMALL); /* the arena filled up */
    for (uint32_t i = 0; i < p->nsmall; i += 2) {
        snprintf(key, sizeof key, "s%u", i);
        assert_int_equal(shmkv_del(kv, key, strlen(key)), 0);
        p->small_len[i] = 0;
    }
}

static double used_share(struct shmkv *kv, struct shmkv_stats *st)
{
    assert_int_equal(shmkv_stats(kv, st), 0);
    return (double)st->bytes_used / (double)st->bytes_capacity;
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* The slowest set of the last refill, in microseconds, for the log. */
static double refill_slowest_us;

/* Writes values of lo..hi bytes until the first SHMKV_ENOSPC; returns how
 * full the arena was then. */
static double refill(struct shmkv *kv, struct population *p, uint32_t lo,
                     uint32_t hi)
{
    char key[32];
    refill_slowest_us = 0;
    for (p->nbig = 0; p->nbig < MAX_BIG; p->nbig++) {
        uint32_t len = rnd(lo, hi);
        snprintf(key, sizeof key, "b%u", p->nbig);
        double t0 = now_us();
        int rc = put(kv, key, len);
        if (now_us() - t0 > refill_slowest_us)
            refill_slowest_us = now_us() - t0;
        if (rc == SHMKV_ENOSPC)
            break;
        if (rc != 0)
            fail_msg("set of %u bytes: %s", len, shmkv_last_error());
        p->big_len[p->nbig] = len;
    }
    assert_true(p->nbig < MAX_BIG);
    struct shmkv_stats st;
    return used_share(kv, &st);
}

static void verify_all(struct shmkv *kv, const struct population *p)
{
    char key[32];
    for (uint32_t i = 0; i < p->nsmall; i++) {
        snprintf(key, sizeof key, "s%u", i);
        if (!holds(kv, key, p->small_len[i]))
            fail_msg("%s does not hold its %u bytes", key, p->small_len[i]);
    }
    for (uint32_t i = 0; i < p->nbig; i++) {
        snprintf(key, sizeof key, "b%u", i);
        if (!holds(kv, key, p->big_len[i]))
            fail_msg("%s does not hold its %u bytes", key, p->big_len[i]);
    }
    struct shmkv_check_report rep;
    if (shmkv_check(kv, &rep) != 0)
        fail_msg("check: %s", rep.first_problem);
    assert_int_equal(rep.bytes_leaked, 0);
}

static void run_refill(uint32_t lo, uint32_t hi, const char *what)
{
    rng_state = test_seed(what) | 1;
    char where[32];
    struct shmkv *kv = make_store(SHMKV_EVICT_NONE, where, sizeof where);
    struct population *p = calloc(1, sizeof *p);
    fill_and_punch(kv, p);
    struct shmkv_stats st;
    double before = used_share(kv, &st);
    double frag = st.fragmentation;
    double full = refill(kv, p, lo, hi);
    assert_int_equal(shmkv_stats(kv, &st), 0);
    print_message("%s: %u small values, half deleted (arena %.1f%% used, "
                  "fragmentation %.1f%%); refilled with %u values of "
                  "%u-%u bytes: %.1f%% used at the first ENOSPC, "
                  "fragmentation %.1f%%; %" PRIu64 " compactions moved "
                  "%" PRIu64 " KiB, slowest set %.0f us\n",
                  what, p->nsmall, 100 * before, 100 * frag, p->nbig, lo, hi,
                  100 * full, 100 * st.fragmentation, st.compactions,
                  st.compacted_bytes >> 10, refill_slowest_us);
    assert_true(full >= 0.90);
    assert_true(st.compactions > 0);
    verify_all(kv, p);
    free(p);
    test_destroy(kv, where);
}

static void test_refill_large_values(void **state)
{
    (void)state;
    run_refill(2048, 65536, "refill 2-64 KiB");
}

static void test_refill_mixed_values(void **state)
{
    (void)state;
    run_refill(16, 65536, "refill 16 B-64 KiB");
}

static pid_t reader_pid;

static int reader_stop(void **state)
{
    (void)state;
    if (reader_pid > 0) {
        kill(reader_pid, SIGKILL);
        waitpid(reader_pid, NULL, 0);
        reader_pid = 0;
    }
    return 0;
}

/* A reader in another process reads every small value left, over and
 * over, in sections of 100 gets, while the writer's refill moves them: it
 * never misses one or reads a wrong byte through its zero-copy pointers. */
static void test_readers_see_every_entry(void **state)
{
    (void)state;
    rng_state = test_seed("readers during compaction") | 1;
    char where[32];
    struct shmkv *kv = make_store(SHMKV_EVICT_NONE, where, sizeof where);
    struct population *p = calloc(1, sizeof *p);
    fill_and_punch(kv, p);
    _Atomic uint64_t *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                                    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(shared != MAP_FAILED);
    shared[0] = 0; /* stop */
    shared[1] = 0; /* reads */
    shared[2] = 0; /* wrong */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        struct shmkv *h;
        if (shmkv_open(where, SHMKV_RDONLY, &h) != 0)
            _exit(2);
        char key[32];
        static char want[1024];
        uint32_t i = 1;
        while (!atomic_load(&shared[0])) {
            if (shmkv_read_begin(h) != 0)
                _exit(3);
            for (unsigned n = 0; n < 100; n++, i += 2) {
                if (i >= p->nsmall)
                    i = 1;
                snprintf(key, sizeof key, "s%u", i);
                shmkv_val_t v;
                int rc = shmkv_get(h, key, strlen(key), &v);
                value_fill(want, key, p->small_len[i]);
                if (rc != 0 || v.len != p->small_len[i] ||
                    memcmp(v.data, want, v.len) != 0)
                    atomic_fetch_add(&shared[2], 1);
                atomic_fetch_add(&shared[1], 1);
            }
            if (shmkv_read_end(h) != 0)
                atomic_fetch_add(&shared[2], 1);
        }
        shmkv_close(h);
        _exit(0);
    }
    reader_pid = pid;
    while (atomic_load(&shared[1]) == 0)
        usleep(1000);
    double full = refill(kv, p, 2048, 65536);
    atomic_store(&shared[0], 1);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    reader_pid = 0;
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    print_message("a reader made %" PRIu64 " gets while %" PRIu64
                  " compactions moved %" PRIu64 " KiB: %" PRIu64
                  " wrong; %.1f%% used at ENOSPC\n",
                  atomic_load(&shared[1]), st.compactions,
                  st.compacted_bytes >> 10, atomic_load(&shared[2]),
                  100 * full);
    assert_int_equal(atomic_load(&shared[2]), 0);
    assert_true(st.compactions > 0);
    verify_all(kv, p);
    munmap(shared, 4096);
    free(p);
    test_destroy(kv, where);
}

/* Kill points */

static const char *kill_point;
static unsigned kill_at;
static unsigned kill_seen;

static void die_at_point(const char *point)
{
    if (strcmp(point, kill_point) == 0 && ++kill_seen == kill_at)
        raise(SIGKILL);
}

/* A writer killed at a step of a compaction: held, an entry moved (at
 * each step of its publication), released, and at undo-logged stores
 * along the way. The store is consistent after; every value reads back;
 * the next write that needs room releases what the dead writer held, so
 * that the refill still reaches 90%. */
static void test_compaction_killed(void **state)
{
    (void)state;
    static const struct {
        const char *point;
        unsigned at;
    } kills[] = {
        {"compact:held", 1},  {"compact:held", 2},     {"compact:moved", 1},
        {"compact:moved", 7}, {"set:prepared", 3},     {"set:stored", 5},
        {"set:finished", 2},  {"compact:released", 1}, {"compact:released", 2},
        {"write:logged", 50}, {"write:logged", 400},   {"write:logged", 3000},
    };
    rng_state = test_seed("compaction killed") | 1;
    char where[32];
    struct shmkv *kv = make_store(SHMKV_EVICT_NONE, where, sizeof where);
    struct population *p = calloc(1, sizeof *p);
    fill_and_punch(kv, p);
    unsigned killed = 0;
    char key[32];
    for (size_t k = 0; k < sizeof kills / sizeof kills[0]; k++) {
        uint32_t len = rnd(8192, 65536);
        snprintf(key, sizeof key, "b%u", p->nbig);
        struct shmkv_stats before;
        assert_int_equal(shmkv_stats(kv, &before), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            struct shmkv *h;
            if (shmkv_open(where, 0, &h) != 0)
                _exit(2);
            kill_point = kills[k].point;
            kill_at = kills[k].at;
            kill_seen = 0;
            shmkv_test_hook = die_at_point;
            _exit(put(h, key, len) == 0 ? 0 : 3);
        }
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
            killed++;
        else
            assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        /* The set was made or not: take the store's word for it. */
        if (holds(kv, key, len))
            p->big_len[p->nbig++] = len;
        else
            assert_true(holds(kv, key, 0));
        verify_all(kv, p);
    }
    print_message("%u of %zu writers killed inside a compaction\n", killed,
                  sizeof kills / sizeof kills[0]);
    assert_true(killed >= 8);
    double full = refill(kv, p, 2048, 65536);
    print_message("refill after the kills: %.1f%% used at ENOSPC\n",
                  100 * full);
    assert_true(full >= 0.90);
    verify_all(kv, p);
    free(p);
    test_destroy(kv, where);
}

/* An lru store moves entries together before it evicts one: a refill
 * that fits in what is free evicts nothing. */
static void test_lru_compacts_before_evicting(void **state)
{
    (void)state;
    rng_state = test_seed("lru compacts") | 1;
    char where[32];
    struct shmkv *kv = make_store(SHMKV_EVICT_LRU, where, sizeof where);
    struct population *p = calloc(1, sizeof *p);
    fill_and_punch(kv, p);
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    uint64_t evicted = st.evictions;
    uint64_t room = st.bytes_free * 8 / 10;
    char key[32];
    uint64_t written = 0;
    for (p->nbig = 0; written + 65536 + 64 < room; p->nbig++) {
        uint32_t len = rnd(2048, 65536);
        snprintf(key, sizeof key, "b%u", p->nbig);
        assert_int_equal(put(kv, key, len), 0);
        p->big_len[p->nbig] = len;
        written += len + 64;
    }
    assert_int_equal(shmkv_stats(kv, &st), 0);
    print_message("lru: %u values (%" PRIu64 " KiB) written into %" PRIu64
                  " KiB free in pieces: %" PRIu64 " evictions, %" PRIu64
                  " compactions\n",
                  p->nbig, written >> 10, room * 10 / 8 >> 10,
                  st.evictions - evicted, st.compactions);
    assert_int_equal(st.evictions, evicted);
    assert_true(st.compactions > 0);
    verify_all(kv, p);
    free(p);
    test_destroy(kv, where);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refill_large_values),
        cmocka_unit_test(test_refill_mixed_values),
        cmocka_unit_test_teardown(test_readers_see_every_entry, reader_stop),
        cmocka_unit_test(test_compaction_killed),
        cmocka_unit_test(test_lru_compacts_before_evicting),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
