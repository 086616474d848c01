/*
 * Kill torture: readers and writers share a store while the test SIGKILLs
 * one of them every few milliseconds and starts another in its place. A
 * writer killed mid-write, or while it recovers the lock another one died
 * holding, or a reader killed inside its section: the others go on.
 *
 * Writers own their keys. Each value carries its key, a sequence number, a
 * payload and a checksum. Before a write a writer publishes its intent
 * (key, seq) in memory shared with the test, and after the call returned 0
 * its acknowledgement. Readers check every value they are given where it
 * lies: whole, of its key, not older than what was acknowledged before
 * their section began, not newer than what was intended after it. A
 * section a writer revoked (SHMKV_ESTALE) is discarded, not counted.
 *
 * After every kill the test writes itself and times it: each must succeed
 * within a second. At the end every key holds exactly its last acknowledged
 * value (or the one write in flight when its writer died), and
 * shmkv_check finds nothing wrong.
 *
 * It runs for SHMKV_TORTURE_S seconds (30 by default; `make torture` sets
 * more), with the seed printed and taken from SHMKV_TEST_SEED.
 */
#include <errno.h>
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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <xxhash.h>

#include "internal.h" /* a reader's chunk_seg */
#include "testutil.h"

#define WRITERS 3u
#define READERS 3u
#define CHILDREN (WRITERS + READERS)
#define KEYS_PER_WRITER 256u
#define MAX_PAYLOAD 2000u
#define VHDR 16u
#define VSUM 8u
#define MAX_VALUE (VHDR + MAX_PAYLOAD + VSUM)
#define BATCH 8u

/* A key's published words: seq << 1 | deleted. */
#define WORD(seq, del) (((uint64_t)(seq) << 1) | ((del) ? 1u : 0u))
#define WORD_SEQ(w) ((w) >> 1)
#define WORD_DEL(w) (((w)&1u) != 0)

struct writer_state {
    _Atomic uint64_t acked[KEYS_PER_WRITER];  /* last write that returned 0 */
    _Atomic uint64_t intent[KEYS_PER_WRITER]; /* the write begun last */
    _Atomic uint64_t next_seq;                /* survives the writer */
};

struct torture {
    struct writer_state w[WRITERS];
    _Atomic uint64_t writes;
    _Atomic uint64_t reads_checked;
    _Atomic uint64_t sections_revoked;
    _Atomic uint64_t resizes;         /* completed */
    _Atomic uint64_t resizes_off;     /* given up: a writer died during one */
    _Atomic uint64_t readers_chunked; /* opened with a slot in a chunk */
    _Atomic uint64_t readers_shared;  /* in the reader segment */
    _Atomic uint64_t failures;
    _Atomic int failure_claimed;
    char first_failure[256];
};

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void fail_child(struct torture *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void fail_child(struct torture *t, const char *fmt, ...)
{
    atomic_fetch_add(&t->failures, 1);
    int expected = 0;
    if (atomic_compare_exchange_strong(&t->failure_claimed, &expected, 1)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(t->first_failure, sizeof t->first_failure, fmt, ap);
        va_end(ap);
    }
}

static int key_name(char *buf, unsigned writer, unsigned k)
{
    return snprintf(buf, 32, "t%u:%04u", writer, k);
}

static size_t value_make(char *buf, uint32_t key_id, uint64_t seq)
{
    uint32_t payload = (uint32_t)(mix64(seq ^ key_id) % MAX_PAYLOAD);
    memcpy(buf, &key_id, 4);
    memcpy(buf + 4, &payload, 4);
    memcpy(buf + 8, &seq, 8);
    uint64_t x = mix64(((uint64_t)key_id << 40) ^ seq);
    for (uint32_t i = 0; i < payload; i++) {
        if (i % 8 == 0)
            x = mix64(x);
        buf[VHDR + i] = (char)(x >> (8 * (i % 8)));
    }
    uint64_t sum = XXH64(buf, VHDR + payload, 0);
    memcpy(buf + VHDR + payload, &sum, VSUM);
    return VHDR + payload + VSUM;
}

/* NULL if whole and of key_id (its seq in *seq), else what is wrong. */
static const char *value_check(const void *data, size_t len, uint32_t key_id,
                               uint64_t *seq)
{
    const char *p = data;
    if (len < VHDR + VSUM)
        return "shorter than its header";
    uint32_t id, payload;
    memcpy(&id, p, 4);
    memcpy(&payload, p + 4, 4);
    if ((size_t)payload + VHDR + VSUM != len)
        return "length does not match its header";
    uint64_t sum;
    memcpy(&sum, p + len - VSUM, VSUM);
    if (XXH64(p, len - VSUM, 0) != sum)
        return "checksum does not match";
    if (id != key_id)
        return "of another key";
    memcpy(seq, p + 8, 8);
    return NULL;
}

static void writer_main(struct torture *t, unsigned id, const char *where,
                        uint64_t seed)
{
    struct shmkv *kv;
    if (shmkv_open(where, 0, &kv) != 0)
        _exit(2);
    struct writer_state *ws = &t->w[id];
    static char buf[MAX_VALUE];
    char key[32];
    uint64_t rng = seed;
    for (;;) {
        rng = mix64(rng);
        unsigned k = (unsigned)(rng % KEYS_PER_WRITER);
        uint64_t seq = atomic_fetch_add(&ws->next_seq, 1) + 1;
        bool del = (rng >> 20) % 8 == 0;
        int kl = key_name(key, id, k);
        atomic_store_explicit(&ws->intent[k], WORD(seq, del),
                              memory_order_release);
        int rc;
        if (del) {
            rc = shmkv_del(kv, key, (size_t)kl);
            if (rc == SHMKV_ENOTFOUND)
                rc = 0;
        } else {
            size_t vl = value_make(buf, id * KEYS_PER_WRITER + k, seq);
            rc = shmkv_set(kv, key, (size_t)kl, buf, vl, 0, 0);
        }
        if (rc != 0) {
            fail_child(t, "writer %u: %s %s: %s (%s)", id, del ? "del" : "set",
                       key, shmkv_strerror(rc), shmkv_last_error());
            _exit(3);
        }
        atomic_store_explicit(&ws->acked[k], WORD(seq, del),
                              memory_order_release);
        atomic_fetch_add(&t->writes, 1);
    }
}

static void reader_main(struct torture *t, const char *where, uint64_t seed)
{
    struct shmkv *kv;
    if (shmkv_open(where, SHMKV_RDONLY, &kv) != 0)
        _exit(2);
    atomic_fetch_add(
        kv->chunk_seg != NULL ? &t->readers_chunked : &t->readers_shared, 1);
    uint64_t rng = seed;
    char key[32];
    for (;;) {
        unsigned wid[BATCH], k[BATCH];
        uint64_t before[BATCH];
        for (unsigned i = 0; i < BATCH; i++) {
            rng = mix64(rng);
            wid[i] = (unsigned)(rng % WRITERS);
            k[i] = (unsigned)((rng >> 16) % KEYS_PER_WRITER);
            before[i] = atomic_load_explicit(&t->w[wid[i]].acked[k[i]],
                                             memory_order_acquire);
        }
        if (shmkv_read_begin(kv) != 0) {
            fail_child(t, "read_begin failed");
            _exit(3);
        }
        uint64_t seen[BATCH];
        bool found[BATCH], stale = false;
        const char *bad[BATCH];
        for (unsigned i = 0; i < BATCH; i++) {
            int kl = key_name(key, wid[i], k[i]);
            shmkv_val_t v;
            int rc = shmkv_get(kv, key, (size_t)kl, &v);
            bad[i] = NULL;
            found[i] = rc == 0;
            if (rc == SHMKV_ESTALE) {
                stale = true;
                break;
            }
            if (rc != 0 && rc != SHMKV_ENOTFOUND) {
                fail_child(t, "get %s: %s", key, shmkv_strerror(rc));
                _exit(3);
            }
            if (found[i])
                bad[i] = value_check(v.data, v.len,
                                     wid[i] * KEYS_PER_WRITER + k[i], &seen[i]);
        }
        if (shmkv_read_end(kv) == SHMKV_ESTALE || stale) {
            atomic_fetch_add(&t->sections_revoked, 1);
            continue; /* what it read is discarded */
        }
        for (unsigned i = 0; i < BATCH; i++) {
            key_name(key, wid[i], k[i]);
            if (bad[i] != NULL) {
                fail_child(t, "%s: %s", key, bad[i]);
                continue;
            }
            uint64_t after = atomic_load_explicit(&t->w[wid[i]].intent[k[i]],
                                                  memory_order_acquire);
            if (found[i]) {
                if (seen[i] < WORD_SEQ(before[i]) ||
                    (WORD_DEL(before[i]) && seen[i] == WORD_SEQ(before[i])))
                    fail_child(t,
                               "%s: seq %" PRIu64
                               " older than acknowledged %" PRIu64,
                               key, seen[i], WORD_SEQ(before[i]));
                else if (seen[i] > WORD_SEQ(after))
                    fail_child(t,
                               "%s: seq %" PRIu64
                               " never written (intent %" PRIu64 ")",
                               key, seen[i], WORD_SEQ(after));
                atomic_fetch_add(&t->reads_checked, 1);
            } else if (before[i] != 0 && !WORD_DEL(before[i]) &&
                       after == before[i]) {
                fail_child(t, "%s: absent, acknowledged as seq %" PRIu64, key,
                           WORD_SEQ(before[i]));
            }
        }
    }
}

/* Resizes the store back and forth between its size and half as much
 * again, for ever. A resize a writer's death interrupts is tried again. */
static void resizer_main(struct torture *t, const char *where,
                         uint64_t base_bytes)
{
    test_record("pid %d", (int)getpid()); /* it makes segments */
    struct shmkv *kv;
    if (shmkv_open(where, 0, &kv) != 0)
        _exit(2);
    for (unsigned i = 0;; i++) {
        uint64_t size = i % 2 == 0 ? base_bytes + base_bytes / 2 : base_bytes;
        int rc = shmkv_resize(kv, size, 0, NULL, NULL);
        if (rc == 0) {
            atomic_fetch_add(&t->resizes, 1);
        } else if (rc == SHMKV_EAGAIN || rc == SHMKV_EBUSY) {
            atomic_fetch_add(&t->resizes_off, 1);
            usleep(1000);
        } else {
            fail_child(t, "resizer: %s (%s)", shmkv_strerror(rc),
                       shmkv_last_error());
            _exit(3);
        }
    }
}

/* The resizer's slot, past the writers' and readers'. */
#define RESIZER CHILDREN

static pid_t spawn(struct torture *t, unsigned slot, const char *where,
                   uint64_t seed, uint64_t store_bytes)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (slot == RESIZER)
            resizer_main(t, where, store_bytes);
        if (slot < WRITERS)
            writer_main(t, slot, where, seed);
        reader_main(t, where, seed);
    }
    return pid;
}

/* Reaps a killed child: it must have died of the kill, not of a failure
 * of its own. */
static void reap_killed(struct torture *t, pid_t pid)
{
    int status;
    pid_t r;
    do
        r = waitpid(pid, &status, 0);
    while (r < 0 && errno == EINTR);
    assert_int_equal(r, pid);
    if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL))
        fail_msg("a child ended by itself (status %d): %s", status,
                 t->first_failure);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The ballast's value for key i: its own bytes, so that a copy of it
 * (compaction moves ballast) is checked byte for byte. */
static int ballast_make(char *key, char *val, unsigned i)
{
    int kl = snprintf(key, 32, "ballast%u", i);
    int vl = 16 + (int)(mix64(i) % 48);
    for (int j = 0; j < vl; j++)
        val[j] = (char)(mix64((uint64_t)i << 8 | (uint64_t)j) >> 56);
    return kl << 16 | vl;
}

/* Fills the store with small values and deletes every other one, so that
 * its free space is in holes smaller than most of the writers' values:
 * their sets then compact the arena. Returns how many were written. */
static unsigned ballast_fill(struct shmkv *kv)
{
    char key[32], val[64];
    unsigned n = 0;
    for (;; n++) {
        int kv_len = ballast_make(key, val, n);
        if (shmkv_set(kv, key, (size_t)(kv_len >> 16), val,
                      (size_t)(kv_len & 0xffff), 0, 0) != 0)
            break;
    }
    for (unsigned i = 0; i < n; i += 2) {
        int kv_len = ballast_make(key, val, i);
        assert_int_equal(shmkv_del(kv, key, (size_t)(kv_len >> 16)), 0);
    }
    return n;
}

static void ballast_check(struct shmkv *kv, unsigned n)
{
    char key[32], val[64], got[64];
    for (unsigned i = 1; i < n; i += 2) {
        int kv_len = ballast_make(key, val, i);
        size_t len = 0;
        int rc = shmkv_get_copy(kv, key, (size_t)(kv_len >> 16), got,
                                sizeof got, &len);
        if (rc != 0 || len != (size_t)(kv_len & 0xffff) ||
            memcmp(got, val, len) != 0)
            fail_msg("%s: %s", key,
                     rc != 0 ? shmkv_strerror(rc) : "other bytes");
    }
}

/* How a run is varied. */
struct torture_how {
    bool ballast;  /* a store punched full of holes: compactions */
    bool resizing; /* a resizer, killed like the others */
    bool chunked;  /* readers' slots in reader chunks, as under shmkvd */
};

/* The torture for `seconds` on a store of store_bytes, varied by how:
 * with ballast, the store is first filled and punched (ballast_fill) so
 * that the writers' sets compact it while they and the readers are
 * killed. */

static void run_torture(const char *what, unsigned seconds,
                        uint64_t store_bytes, struct torture_how how)
{
    bool ballast = how.ballast, resizing = how.resizing;
    uint64_t seed = test_seed(what);
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = store_bytes;
    o.lock_timeout_ms = 5000;
    o.reader_timeout_ms = 200;
    o.max_clients = 64;
    if (ballast)
        o.max_entries = store_bytes / 32; /* the arena fills, not the index */
    struct shmkv *kv;
    assert_int_equal(test_create(&o, &kv), 0);
    char where[32];
    snprintf(where, sizeof where, "%s", o.key);
    unsigned ballast_n = ballast ? ballast_fill(kv) : 0;
    /* A registrar serves the readers' requests for chunks, as shmkvd
     * does; readers killed in their sections leave claims there. */
    char sock[108] = "";
    pid_t registrar = -1;
    if (how.chunked) {
        registrar = test_registrar_start(kv, where, sock, sizeof sock);
        assert_true(registrar > 0);
    }
    struct torture *t = mmap(NULL, sizeof *t, PROT_READ | PROT_WRITE,
                             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(t != MAP_FAILED);
    memset(t, 0, sizeof *t);

    pid_t child[CHILDREN + 1];
    unsigned nchild = CHILDREN + (resizing ? 1u : 0u);
    uint64_t rng = seed;
    for (unsigned i = 0; i < nchild; i++)
        child[i] = spawn(t, i, where, rng = mix64(rng), store_bytes);
    size_t cap = 1u << 20, kills = 0;
    uint64_t *gap_us = malloc(cap * sizeof *gap_us);
    assert_non_null(gap_us);
    uint64_t end = now_us() + (uint64_t)seconds * 1000000u;
    char key[16];
    while (now_us() < end && atomic_load(&t->failures) == 0) {
        rng = mix64(rng);
        usleep((useconds_t)(2000 + rng % 18000));
        unsigned victim = (unsigned)((rng >> 32) % nchild);
        kill(child[victim], SIGKILL);
        reap_killed(t, child[victim]);
        /* The next write after the kill, timed. */
        uint64_t t0 = now_us();
        int kl = snprintf(key, sizeof key, "p%zu", kills % 64);
        int rc = shmkv_set(kv, key, (size_t)kl, "x", 1, 0, 0);
        uint64_t took = now_us() - t0;
        if (rc != 0)
            fail_msg("the write after kill %zu: %s (%s)", kills,
                     shmkv_strerror(rc), shmkv_last_error());
        if (kills < cap)
            gap_us[kills] = took;
        kills++;
        child[victim] = spawn(t, victim, where, rng = mix64(rng), store_bytes);
    }
    for (unsigned i = 0; i < nchild; i++) {
        kill(child[i], SIGKILL);
        reap_killed(t, child[i]);
    }
    if (registrar > 0) {
        kill(registrar, SIGKILL);
        waitpid(registrar, NULL, 0);
        unlink(sock);
    }
    /* What a resizer killed last left: the owner's housekeeping removes
     * it. */
    assert_int_equal(shmkv_maintain(kv), 0);
    if (atomic_load(&t->failures) > 0)
        fail_msg("%" PRIu64 " failures; first: %s", atomic_load(&t->failures),
                 t->first_failure);

    /* Every key holds its last acknowledged value, or the one in flight. */
    static char buf[MAX_VALUE];
    uint64_t checked = 0;
    for (unsigned w = 0; w < WRITERS; w++) {
        for (unsigned k = 0; k < KEYS_PER_WRITER; k++) {
            uint64_t acked = atomic_load(&t->w[w].acked[k]);
            uint64_t intent = atomic_load(&t->w[w].intent[k]);
            int kl = key_name(key, w, k);
            size_t len = 0;
            int rc = shmkv_get_copy(kv, key, (size_t)kl, buf, sizeof buf, &len);
            uint64_t seq = 0;
            bool present = rc == 0;
            if (rc != 0 && rc != SHMKV_ENOTFOUND)
                fail_msg("%s: %s", key, shmkv_strerror(rc));
            if (present) {
                const char *why =
                    value_check(buf, len, w * KEYS_PER_WRITER + k, &seq);
                if (why != NULL)
                    fail_msg("%s: %s", key, why);
            }
            bool is_acked = acked == 0 ? !present
                            : WORD_DEL(acked)
                                ? !present
                                : present && seq == WORD_SEQ(acked);
            bool is_intent =
                intent != acked &&
                (WORD_DEL(intent) ? !present
                                  : present && seq == WORD_SEQ(intent));
            if (!is_acked && !is_intent)
                fail_msg("%s: holds %s seq %" PRIu64 "; acknowledged %" PRIu64
                         "%s, in flight %" PRIu64,
                         key, present ? "" : "nothing,", seq, WORD_SEQ(acked),
                         WORD_DEL(acked) ? " (deleted)" : "", WORD_SEQ(intent));
            checked++;
        }
    }
    struct shmkv_check_report rep;
    int rc = shmkv_check(kv, &rep);
    if (rc != 0)
        fail_msg("check: %s", rep.first_problem);
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    size_t n = kills < cap ? kills : cap;
    qsort(gap_us, n, sizeof *gap_us, cmp_u64);
    uint64_t median = n ? gap_us[n / 2] : 0, p99 = n ? gap_us[n * 99 / 100] : 0,
             worst = n ? gap_us[n - 1] : 0;
    if (resizing) {
        print_message("%" PRIu64 " resizes done, %" PRIu64
                      " given up or refused while another was cleaned up; "
                      "generation %" PRIu64 "\n",
                      atomic_load(&t->resizes), atomic_load(&t->resizes_off),
                      st.generation);
        assert_true(atomic_load(&t->resizes) > 0);
        assert_int_equal(st.resize_to_bytes, 0);
    }
    if (ballast) {
        ballast_check(kv, ballast_n);
        print_message("%u ballast values kept their bytes through %" PRIu64
                      " compactions (%" PRIu64 " KiB moved)\n",
                      ballast_n / 2, st.compactions, st.compacted_bytes >> 10);
        assert_true(st.compactions > 0);
    }
    if (how.chunked) {
        print_message(
            "readers opened: %" PRIu64 " with a slot in a chunk, %" PRIu64
            " in the reader segment\n",
            atomic_load(&t->readers_chunked), atomic_load(&t->readers_shared));
        assert_true(atomic_load(&t->readers_chunked) > 0);
    }
    print_message(
        "%s, %u s: %zu kills, %" PRIu64 " acknowledged writes, %" PRIu64
        " values checked in place, %" PRIu64
        " sections revoked; kill to next write: median %" PRIu64
        " us, p99 %" PRIu64 " us, worst %" PRIu64 " us; %" PRIu64
        " recoveries, %" PRIu64 " dead readers, %" PRIu64
        " keys checked at the end\n",
        what, seconds, kills, atomic_load(&t->writes),
        atomic_load(&t->reads_checked), atomic_load(&t->sections_revoked),
        median, p99, worst, st.recoveries, st.dead_readers, checked);
    assert_true(worst < 1000000);
    assert_true(kills > 0 && atomic_load(&t->reads_checked) > 0);
    free(gap_us);
    munmap(t, sizeof *t);
    test_destroy(kv, where);
}

static unsigned torture_seconds(void)
{
    const char *env = getenv("SHMKV_TORTURE_S");
    return env != NULL && atoi(env) > 0 ? (unsigned)atoi(env) : 30;
}

static void test_kill_torture(void **state)
{
    (void)state;
    run_torture("kill torture", torture_seconds(), 16u << 20,
                (struct torture_how){0});
}

/* The same while a resizer grows and shrinks the store over and over, and
 * is killed too. A third as long. */
static void test_kill_torture_resizing(void **state)
{
    (void)state;
    unsigned s = torture_seconds() / 3;
    run_torture("kill torture, resizing", s > 0 ? s : 1, 16u << 20,
                (struct torture_how){.resizing = true});
}

/* The same on a 6 MiB store punched full of small holes: the writers'
 * values (up to 2 KiB, 1.5 MiB live at most) find room only by
 * compaction, which the kills interrupt at any step. A third as long. */
static void test_kill_torture_compacting(void **state)
{
    (void)state;
    unsigned s = torture_seconds() / 3;
    run_torture("kill torture, compacting", s > 0 ? s : 1, 6u << 20,
                (struct torture_how){.ballast = true});
}

/* The same with the readers' slots in reader chunks, which shmkvd makes
 * for them (here a registrar in its place): the writers find the claims
 * the killed readers left there. A third as long. */
static void test_kill_torture_chunked(void **state)
{
    (void)state;
    unsigned s = torture_seconds() / 3;
    run_torture("kill torture, reader chunks", s > 0 ? s : 1, 16u << 20,
                (struct torture_how){.chunked = true});
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kill_torture),
        cmocka_unit_test(test_kill_torture_compacting),
        cmocka_unit_test(test_kill_torture_resizing),
        cmocka_unit_test(test_kill_torture_chunked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
