/*
 * Online resize tests (client/resize.c): a store grown and shrunk while a
 * reader and a writer in other processes use it, a shrink that cannot hold
 * the live data, a resizer killed at each step, a writer killed during a
 * resize, huge pages, and shmkv_scan's walks across writes and a resize.
 *
 * What must hold: no get fails and none reads a wrong byte (through
 * zero-copy pointers held across the switch too), every acknowledged write
 * is in the store after, shmkv_check is clean, and nothing is left behind:
 * no segment, and no resize noted in the store.
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
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "internal.h"
#include "testutil.h"

#define STATIC_KEYS 40000u /* never changed: the reader checks them */
#define WRITER_KEYS 4096u  /* the writer's, each with its last value */
#define VALUE_BYTES 40u

/* The value of key at version v: a function of both. */
static void value_of(char *buf, const char *key, uint32_t v)
{
    uint64_t x = 1469598103934665603ull ^ v;
    for (const char *p = key; *p; p++)
        x = (x ^ (unsigned char)*p) * 1099511628211ull;
    for (size_t i = 0; i < VALUE_BYTES; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        buf[i] = (char)(x >> 56);
    }
}

static struct shmkv *make_store(uint64_t bytes, char *where, size_t cap)
{
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = bytes;
    o.mode = 0600;
    struct shmkv *kv;
    assert_int_equal(test_create(&o, &kv), 0);
    snprintf(where, cap, "%s", o.key);
    return kv;
}

static void fill_static(struct shmkv *kv, uint32_t n)
{
    char key[32], val[VALUE_BYTES];
    for (uint32_t i = 0; i < n; i++) {
        snprintf(key, sizeof key, "s%u", i);
        value_of(val, key, 0);
        assert_int_equal(
            shmkv_set(kv, key, strlen(key), val, VALUE_BYTES, 0, 0), 0);
    }
}

static void verify_static(struct shmkv *kv, uint32_t n)
{
    char key[32], val[VALUE_BYTES], got[VALUE_BYTES];
    for (uint32_t i = 0; i < n; i++) {
        snprintf(key, sizeof key, "s%u", i);
        value_of(val, key, 0);
        size_t len = 0;
        int rc = shmkv_get_copy(kv, key, strlen(key), got, sizeof got, &len);
        if (rc != 0 || len != VALUE_BYTES || memcmp(got, val, len) != 0)
            fail_msg("static key %s: rc %d, %zu bytes", key, rc, len);
    }
}

/* Segments with no key that this process created and nobody attaches:
 * what a resize would leak. */
static unsigned private_segments_of(pid_t pid)
{
    FILE *f = fopen("/proc/sysvipc/shm", "re");
    assert_non_null(f);
    char line[512];
    unsigned n = 0;
    if (fgets(line, sizeof line, f) == NULL) {
        fclose(f);
        return 0;
    }
    while (fgets(line, sizeof line, f) != NULL) {
        long long key, size, cpid, lpid, nattch;
        int id;
        unsigned perms;
        if (sscanf(line, "%lld %d %o %lld %lld %lld %lld", &key, &id, &perms,
                   &size, &cpid, &lpid, &nattch) == 7 &&
            key == 0 && cpid == pid && nattch == 0)
            n++;
    }
    fclose(f);
    return n;
}

static void assert_clean(struct shmkv *kv)
{
    struct shmkv_check_report r;
    int rc = shmkv_check(kv, &r);
    if (rc != 0)
        fail_msg("shmkv_check: %s (%s)", shmkv_strerror(rc), r.first_problem);
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    assert_int_equal(st.resize_to_bytes, 0);
    assert_int_equal(atomic_load(&kv->ctl->resize_state), RESIZE_NONE);
}

/* Shared with the children of the load test. */
struct load {
    _Atomic int stop;
    _Atomic uint64_t gets, wrong, stale, sections_across;
    _Atomic uint64_t sets, set_failed;
    _Atomic uint64_t slowest_set_us;
    _Atomic uint32_t acked[WRITER_KEYS]; /* last version set + 1; 0 none */
};

static pid_t kids[4];
static int nkids;

static int kids_stop(void **state)
{
    (void)state;
    for (int i = 0; i < nkids; i++) {
        if (kids[i] > 0) {
            kill(kids[i], SIGKILL);
            waitpid(kids[i], NULL, 0);
            kids[i] = 0;
        }
    }
    nkids = 0;
    return 0;
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Reads every static key, over and over, in sections of 50 gets that keep
 * their zero-copy values until the section ends, and checks each byte
 * then. Counts sections that began on one generation and ended with the
 * store on another. */
static void reader_main(const char *where, struct load *ld)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    struct shmkv *h;
    if (shmkv_open(where, SHMKV_RDONLY, &h) != 0)
        _exit(2);
    char key[50][32], want[VALUE_BYTES];
    shmkv_val_t v[50];
    uint32_t i = 0;
    while (!atomic_load(&ld->stop)) {
        if (shmkv_read_begin(h) != 0)
            _exit(3);
        uint64_t gen0 = CURRENT_GEN(atomic_load(&h->ctl->current));
        for (int n = 0; n < 50; n++, i = (i + 7919) % STATIC_KEYS) {
            snprintf(key[n], sizeof key[n], "s%u", i);
            if (shmkv_get(h, key[n], strlen(key[n]), &v[n]) != 0) {
                atomic_fetch_add(&ld->wrong, 1);
                v[n].len = 0;
            }
            atomic_fetch_add(&ld->gets, 1);
        }
        /* The values are read late, while a switch may have come. */
        for (int n = 0; n < 50; n++) {
            value_of(want, key[n], 0);
            if (v[n].len != 0 && (v[n].len != VALUE_BYTES ||
                                  memcmp(v[n].data, want, VALUE_BYTES)))
                atomic_fetch_add(&ld->wrong, 1);
        }
        if (CURRENT_GEN(atomic_load(&h->ctl->current)) != gen0)
            atomic_fetch_add(&ld->sections_across, 1);
        int rc = shmkv_read_end(h);
        if (rc == SHMKV_ESTALE)
            atomic_fetch_add(&ld->stale, 1);
        else if (rc != 0)
            _exit(4);
    }
    shmkv_close(h);
    _exit(0);
}

/* Sets and deletes its own keys, noting each acknowledged version. */
static void writer_main(const char *where, struct load *ld)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    struct shmkv *h;
    if (shmkv_open(where, 0, &h) != 0)
        _exit(2);
    char key[32], val[VALUE_BYTES];
    uint32_t version = 1;
    uint64_t x = (uint64_t)getpid() | 1;
    while (!atomic_load(&ld->stop)) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint32_t k = (uint32_t)(x % WRITER_KEYS);
        snprintf(key, sizeof key, "w%u", k);
        uint64_t t0 = now_us();
        int rc;
        if (x % 10 == 0) {
            rc = shmkv_del(h, key, strlen(key));
            if (rc == 0 || rc == SHMKV_ENOTFOUND) {
                atomic_store(&ld->acked[k], 0);
                rc = 0;
            }
        } else {
            value_of(val, key, version);
            rc = shmkv_set(h, key, strlen(key), val, VALUE_BYTES, 0, 0);
            if (rc == 0)
                atomic_store(&ld->acked[k], version + 1);
            version++;
        }
        uint64_t took = now_us() - t0;
        if (took > atomic_load(&ld->slowest_set_us))
            atomic_store(&ld->slowest_set_us, took);
        if (rc != 0)
            atomic_fetch_add(&ld->set_failed, 1);
        atomic_fetch_add(&ld->sets, 1);
    }
    shmkv_close(h);
    _exit(0);
}

static void verify_writer_keys(struct shmkv *kv, const struct load *ld)
{
    char key[32], val[VALUE_BYTES], got[VALUE_BYTES];
    for (uint32_t k = 0; k < WRITER_KEYS; k++) {
        snprintf(key, sizeof key, "w%u", k);
        uint32_t a = atomic_load(&ld->acked[k]);
        size_t len = 0;
        int rc = shmkv_get_copy(kv, key, strlen(key), got, sizeof got, &len);
        if (a == 0) {
            if (rc != SHMKV_ENOTFOUND)
                fail_msg("%s was deleted, but reads rc %d", key, rc);
            continue;
        }
        value_of(val, key, a - 1);
        if (rc != 0 || len != VALUE_BYTES || memcmp(got, val, len) != 0)
            fail_msg("%s: acknowledged version %u lost (rc %d)", key, a - 1,
                     rc);
    }
}

struct progress_log {
    unsigned calls;
    uint64_t last_done, total;
};

static int on_progress(void *arg, uint64_t done, uint64_t total)
{
    struct progress_log *p = arg;
    assert_true(done >= p->last_done && done <= total);
    p->calls++;
    p->last_done = done;
    p->total = total;
    return 0;
}

/* Grows 8 MiB to 32 MiB and shrinks it to 12 MiB, then to 6 MiB, while a
 * reader and a writer work: no get fails, nothing acknowledged is lost. */
static void test_grow_and_shrink_under_load(void **state)
{
    (void)state;
    char where[32];
    struct shmkv *kv = make_store(8u << 20, where, sizeof where);
    fill_static(kv, STATIC_KEYS);
    struct load *ld = mmap(NULL, sizeof *ld, PROT_READ | PROT_WRITE,
                           MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(ld != MAP_FAILED);
    memset(ld, 0, sizeof *ld);
    for (int i = 0; i < 2; i++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            if (i == 0)
                reader_main(where, ld);
            writer_main(where, ld);
        }
        kids[nkids++] = pid;
    }
    while (atomic_load(&ld->gets) == 0 || atomic_load(&ld->sets) < 1000)
        usleep(1000);

    static const uint64_t sizes[] = {32u << 20, 12u << 20, 6u << 20};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        struct progress_log pl = {0};
        uint64_t gets0 = atomic_load(&ld->gets), sets0 = atomic_load(&ld->sets);
        uint64_t t0 = now_us();
        int rc = shmkv_resize(kv, sizes[s], 0, on_progress, &pl);
        if (rc != 0)
            fail_msg("resize to %" PRIu64 " MiB: %s", sizes[s] >> 20,
                     shmkv_last_error());
        uint64_t took = now_us() - t0;
        struct shmkv_stats st;
        assert_int_equal(shmkv_stats(kv, &st), 0);
        print_message("resized to %" PRIu64 " MiB in %.1f ms (%u slices; "
                      "%" PRIu64 " gets and %" PRIu64 " writes meanwhile), "
                      "generation %" PRIu64 "\n",
                      sizes[s] >> 20, took / 1000.0, pl.calls,
                      atomic_load(&ld->gets) - gets0,
                      atomic_load(&ld->sets) - sets0, st.generation);
        assert_int_equal(st.data_bytes, sizes[s]);
        assert_int_equal(st.generation, s + 2);
        assert_int_equal(pl.last_done, pl.total);
        assert_true(pl.calls >= 1);
        usleep(20000); /* let both children follow and work */
    }
    atomic_store(&ld->stop, 1);
    for (int i = 0; i < nkids; i++) {
        int status;
        assert_int_equal(waitpid(kids[i], &status, 0), kids[i]);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            fail_msg("child %d ended with status 0x%x", i, status);
        kids[i] = 0;
    }
    nkids = 0;
    print_message("reader: %" PRIu64 " gets, %" PRIu64 " wrong, %" PRIu64
                  " sections across a switch, %" PRIu64 " stale; writer: "
                  "%" PRIu64 " writes, %" PRIu64 " failed, slowest %" PRIu64
                  " us\n",
                  atomic_load(&ld->gets), atomic_load(&ld->wrong),
                  atomic_load(&ld->sections_across), atomic_load(&ld->stale),
                  atomic_load(&ld->sets), atomic_load(&ld->set_failed),
                  atomic_load(&ld->slowest_set_us));
    assert_int_equal(atomic_load(&ld->wrong), 0);
    assert_int_equal(atomic_load(&ld->stale), 0);
    assert_int_equal(atomic_load(&ld->set_failed), 0);
    verify_static(kv, STATIC_KEYS);
    verify_writer_keys(kv, ld);
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    assert_int_equal(st.resizes, 3);
    assert_clean(kv);
    assert_int_equal(private_segments_of(getpid()), 0);
    munmap(ld, sizeof *ld);
    test_destroy(kv, where);
}

/* A shrink below what the store holds is refused, and changes nothing; so
 * are sizes out of range, a resize through a read-only handle, and one
 * inside a read section. */
static void test_refused(void **state)
{
    (void)state;
    char where[32];
    struct shmkv *kv = make_store(8u << 20, where, sizeof where);
    fill_static(kv, STATIC_KEYS);
    struct shmkv_stats before, after;
    assert_int_equal(shmkv_stats(kv, &before), 0);
    assert_int_equal(shmkv_resize(kv, 2u << 20, 0, NULL, NULL), SHMKV_ENOSPC);
    print_message("refused: %s\n", shmkv_last_error());
    assert_non_null(strstr(shmkv_last_error(), "cannot hold"));
    assert_int_equal(shmkv_resize(kv, 1000, 0, NULL, NULL), SHMKV_EINVAL);
    assert_int_equal(shmkv_resize(kv, 65ull << 30, 0, NULL, NULL),
                     SHMKV_EINVAL);
    assert_int_equal(shmkv_read_begin(kv), 0);
    assert_int_equal(shmkv_resize(kv, 16u << 20, 0, NULL, NULL), SHMKV_ESTATE);
    assert_int_equal(shmkv_read_end(kv), 0);
    struct shmkv *ro;
    assert_int_equal(shmkv_open(where, SHMKV_RDONLY, &ro), 0);
    assert_int_equal(shmkv_resize(ro, 16u << 20, 0, NULL, NULL), SHMKV_ERDONLY);
    shmkv_close(ro);
    /* The size it has already: nothing to do. */
    assert_int_equal(shmkv_resize(kv, 8u << 20, 0, NULL, NULL), 0);
    assert_int_equal(shmkv_stats(kv, &after), 0);
    assert_int_equal(after.generation, before.generation);
    assert_int_equal(after.data_bytes, before.data_bytes);
    assert_int_equal(after.entries, STATIC_KEYS);
    verify_static(kv, STATIC_KEYS);
    assert_clean(kv);
    assert_int_equal(private_segments_of(getpid()), 0);
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

/* A resizer killed at each step: after it, the next write finds what it
 * left, removes it (or, past the switch, the old segment), and the store
 * holds everything; a new resize then succeeds. */
static void test_resizer_killed(void **state)
{
    (void)state;
    static const struct {
        const char *point;
        unsigned at;
    } kills[] = {
        {"resize:created", 1}, {"resize:named", 1},    {"resize:slice", 1},
        {"resize:slice", 3},   {"resize:switched", 1}, {"resize:removed", 1},
    };
    char where[32];
    struct shmkv *kv = make_store(8u << 20, where, sizeof where);
    fill_static(kv, STATIC_KEYS);
    uint64_t size = 8u << 20;
    for (size_t k = 0; k < sizeof kills / sizeof kills[0]; k++) {
        struct shmkv_stats before;
        assert_int_equal(shmkv_stats(kv, &before), 0);
        uint64_t want = size == (8u << 20) ? (16u << 20) : (8u << 20);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            test_record("pid %d", (int)getpid());
            struct shmkv *h;
            if (shmkv_open(where, 0, &h) != 0)
                _exit(2);
            kill_point = kills[k].point;
            kill_at = kills[k].at;
            kill_seen = 0;
            shmkv_test_hook = die_at_point;
            _exit(shmkv_resize(h, want, 0, NULL, NULL) == 0 ? 0 : 3);
        }
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
            fail_msg("resizer at %s #%u was not killed (status 0x%x)",
                     kills[k].point, kills[k].at, status);
        /* The next write (a recovery if it died holding the lock) and the
         * owner's housekeeping, as shmkvd's tick, tend what it left. */
        assert_int_equal(shmkv_set(kv, "after", 5, "x", 1, 0, 0), 0);
        assert_int_equal(shmkv_maintain(kv), 0);
        struct shmkv_stats st;
        assert_int_equal(shmkv_stats(kv, &st), 0);
        bool done = st.generation != before.generation;
        print_message("resizer killed at %s #%u: %s, %" PRIu64 " MiB\n",
                      kills[k].point, kills[k].at,
                      done ? "the resize stands" : "given up",
                      st.data_bytes >> 20);
        if (strcmp(kills[k].point, "resize:switched") == 0 ||
            strcmp(kills[k].point, "resize:removed") == 0)
            assert_true(done);
        else
            assert_false(done);
        if (done)
            size = want;
        assert_int_equal(st.data_bytes, size);
        assert_int_equal(private_segments_of(pid), 0);
        verify_static(kv, STATIC_KEYS);
        assert_clean(kv);
    }
    /* Nothing left in the way of the next one. */
    assert_int_equal(shmkv_resize(kv, 24u << 20, 0, NULL, NULL), 0);
    verify_static(kv, STATIC_KEYS);
    assert_clean(kv);
    test_destroy(kv, where);
}

/* A writer killed holding the lock during a resize: its write is repaired
 * in the current segment, and the resize, which may hold half of it in the
 * new one, is given up (SHMKV_EAGAIN), leaving nothing behind; the next
 * one succeeds. */
struct killer {
    const char *where;
    bool done;
};

static int kill_a_writer(void *arg, uint64_t done, uint64_t total)
{
    (void)done;
    (void)total;
    struct killer *k = arg;
    if (k->done)
        return 0;
    k->done = true;
    pid_t pid = fork();
    if (pid == 0) {
        struct shmkv *h;
        if (shmkv_open(k->where, 0, &h) != 0)
            _exit(2);
        kill_point = "set:finished";
        kill_at = 1;
        kill_seen = 0;
        shmkv_test_hook = die_at_point;
        char val[VALUE_BYTES];
        value_of(val, "s1", 0);
        shmkv_set(h, "s1", 2, val, VALUE_BYTES, 0, 0);
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    return 0;
}

static void test_writer_killed_during_resize(void **state)
{
    (void)state;
    char where[32];
    struct shmkv *kv = make_store(8u << 20, where, sizeof where);
    fill_static(kv, STATIC_KEYS);
    struct killer k = {.where = where};
    int rc = shmkv_resize(kv, 16u << 20, 0, kill_a_writer, &k);
    print_message("resize with a writer killed during it: %s (%s)\n",
                  shmkv_strerror(rc), shmkv_last_error());
    assert_int_equal(rc, SHMKV_EAGAIN);
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    assert_int_equal(st.generation, 1);
    assert_int_equal(st.recoveries, 1);
    assert_int_equal(private_segments_of(getpid()), 0);
    verify_static(kv, STATIC_KEYS);
    assert_clean(kv);
    assert_int_equal(shmkv_resize(kv, 16u << 20, 0, NULL, NULL), 0);
    verify_static(kv, STATIC_KEYS);
    assert_clean(kv);
    test_destroy(kv, where);
}

/* A resize its progress callback cancels leaves the store as it was, and
 * nothing behind. */
static int cancel_second(void *arg, uint64_t done, uint64_t total)
{
    (void)done;
    (void)total;
    unsigned *calls = arg;
    return ++*calls >= 2;
}

struct mirror_seen {
    struct shmkv *h;
    bool mirrored; /* h held the new segment after a write */
};

static int write_through(void *arg, uint64_t done, uint64_t total)
{
    (void)done;
    (void)total;
    struct mirror_seen *m = arg;
    assert_int_equal(shmkv_set(m->h, "during", 6, "y", 1, 0, 0), 0);
    if (m->h->rs != NULL)
        m->mirrored = true;
    return 0;
}

static void test_cancelled(void **state)
{
    (void)state;
    char where[32];
    struct shmkv *kv = make_store(8u << 20, where, sizeof where);
    fill_static(kv, STATIC_KEYS);
    unsigned calls = 0;
    assert_int_equal(shmkv_resize(kv, 16u << 20, 0, cancel_second, &calls),
                     SHMKV_EAGAIN);
    assert_int_equal(calls, 2);
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    assert_int_equal(st.generation, 1);
    assert_int_equal(st.data_bytes, 8u << 20);
    assert_int_equal(private_segments_of(getpid()), 0);
    verify_static(kv, STATIC_KEYS);
    assert_clean(kv);
    /* A writer that mirrored into the next resize's segment lets go of it
     * at its first write after the switch. */
    struct mirror_seen m = {0};
    assert_int_equal(shmkv_open(where, 0, &m.h), 0);
    assert_int_equal(shmkv_resize(kv, 16u << 20, 0, write_through, &m), 0);
    assert_true(m.mirrored);
    assert_int_equal(shmkv_set(m.h, "after", 5, "x", 1, 0, 0), 0);
    assert_null(m.h->rs);
    shmkv_close(m.h);
    test_destroy(kv, where);
}

/* The owner closes the store while another handle resizes it: the close
 * stands (the resize never switches a closed store back open), and
 * removing the store removes the resize's segment too. */
struct closer {
    struct shmkv *owner;
    bool done;
};

static int close_store(void *arg, uint64_t done, uint64_t total)
{
    (void)done;
    (void)total;
    struct closer *c = arg;
    if (!c->done) {
        c->done = true;
        assert_int_equal(shmkv_mark_closed(c->owner), 0);
    }
    return 0;
}

static void test_closed_during_resize(void **state)
{
    (void)state;
    char where[32];
    struct shmkv *kv = make_store(8u << 20, where, sizeof where);
    fill_static(kv, STATIC_KEYS);
    struct shmkv *h;
    assert_int_equal(shmkv_open(where, 0, &h), 0);
    struct closer c = {.owner = kv};
    int rc = shmkv_resize(h, 16u << 20, 0, close_store, &c);
    print_message("a resize of a store closed under it: %s (%s)\n",
                  shmkv_strerror(rc), shmkv_last_error());
    assert_true(c.done);
    assert_int_equal(rc, SHMKV_ECLOSED);
    assert_true(atomic_load(&kv->ctl->current) & CURRENT_CLOSED);
    assert_int_equal(shmkv_set(h, "k", 1, "v", 1, 0, 0), SHMKV_ECLOSED);
    shmkv_close(h);
    test_destroy(kv, where);
    assert_int_equal(private_segments_of(getpid()), 0);
}

/* Writes during a resize that fill the new size give it up with
 * SHMKV_ENOSPC, and the store keeps them all. */
struct filler {
    struct shmkv *kv;
    uint32_t written;
};

static int fill_during(void *arg, uint64_t done, uint64_t total)
{
    (void)done;
    (void)total;
    struct filler *f = arg;
    /* This handle is the resizer's: between slices it may write. */
    char key[32], val[VALUE_BYTES];
    for (int i = 0; i < 30000; i++, f->written++) {
        snprintf(key, sizeof key, "f%u", f->written);
        value_of(val, key, 0);
        if (shmkv_set(f->kv, key, strlen(key), val, VALUE_BYTES, 0, 0) != 0)
            break;
    }
    return 0;
}

static void test_grown_past_new_size(void **state)
{
    (void)state;
    char where[32];
    struct shmkv *kv = make_store(16u << 20, where, sizeof where);
    fill_static(kv, STATIC_KEYS);
    struct filler f = {.kv = kv};
    int rc = shmkv_resize(kv, 6u << 20, 0, fill_during, &f);
    print_message("a shrink while %u entries were added: %s (%s)\n", f.written,
                  shmkv_strerror(rc), shmkv_last_error());
    assert_int_equal(rc, SHMKV_ENOSPC);
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    assert_int_equal(st.generation, 1);
    assert_int_equal(st.entries, STATIC_KEYS + f.written);
    assert_int_equal(private_segments_of(getpid()), 0);
    verify_static(kv, STATIC_KEYS);
    assert_clean(kv);
    test_destroy(kv, where);
}

/* An lru store resized back and forth while a writer overfills it: the
 * evictions in the current segment are made in the new one too, and every
 * entry the store holds after is whole and of its key. */
static void self_value(char *buf, size_t len, uint32_t k, uint32_t version)
{
    memcpy(buf, &k, 4);
    memcpy(buf + 4, &version, 4);
    for (size_t i = 8; i < len; i++)
        buf[i] = (char)(k * 31 + version * 7 + i);
}

static int self_check(void *ctx, const void *key, size_t klen, const void *val,
                      size_t vlen, int64_t ttl_s)
{
    (void)ttl_s;
    unsigned *bad = ctx;
    uint32_t k, version;
    char want[512], name[32];
    if (vlen < 8 || vlen > sizeof want) {
        (*bad)++;
        return 0;
    }
    memcpy(&k, val, 4);
    memcpy(&version, (const char *)val + 4, 4);
    snprintf(name, sizeof name, "e%u", k);
    self_value(want, vlen, k, version);
    if (klen != strlen(name) || memcmp(key, name, klen) != 0 ||
        memcmp(val, want, vlen) != 0)
        (*bad)++;
    return 0;
}

static void test_resize_while_evicting(void **state)
{
    (void)state;
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = 8u << 20;
    o.eviction = SHMKV_EVICT_LRU;
    o.mode = 0600;
    struct shmkv *kv;
    assert_int_equal(test_create(&o, &kv), 0);
    char where[32];
    snprintf(where, sizeof where, "%s", o.key);
    _Atomic int *stop = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(stop != MAP_FAILED);
    *stop = 0;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        struct shmkv *h;
        if (shmkv_open(where, 0, &h) != 0)
            _exit(2);
        char key[32], val[512];
        for (uint32_t v = 1; !atomic_load(stop); v++) {
            uint32_t k = (v * 2654435761u) % 200000u;
            size_t len = 64 + (v % 7) * 64;
            snprintf(key, sizeof key, "e%u", k);
            self_value(val, len, k, v);
            int rc = shmkv_set(h, key, strlen(key), val, len, 0, 0);
            if (rc != 0 && rc != SHMKV_ENOSPC)
                _exit(3);
        }
        shmkv_close(h);
        _exit(0);
    }
    kids[nkids++] = pid;
    usleep(200000); /* full, and evicting */
    for (int i = 0; i < 6; i++) {
        int rc =
            shmkv_resize(kv, i % 2 == 0 ? 12u << 20 : 8u << 20, 0, NULL, NULL);
        if (rc != 0 && rc != SHMKV_ENOSPC)
            fail_msg("resize %d: %s", i, shmkv_last_error());
    }
    atomic_store(stop, 1);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    nkids = 0;
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    unsigned bad = 0;
    assert_int_equal(shmkv_foreach(kv, self_check, &bad), 0);
    print_message("%" PRIu64 " entries after %" PRIu64 " resizes and %" PRIu64
                  " evictions: %u wrong\n",
                  st.entries, st.resizes, st.evictions, bad);
    assert_int_equal(bad, 0);
    assert_true(st.evictions > 0 && st.resizes > 0);
    assert_clean(kv);
    assert_int_equal(private_segments_of(getpid()), 0);
    munmap(stop, 4096);
    test_destroy(kv, where);
}

/* shmkv_scan: every key present for the whole walk is visited at least
 * once, in bounded steps, across writes and a resize in the middle of the
 * walk (after which the walk starts over). */
struct scan_seen {
    unsigned char *seen; /* per static key */
    unsigned others;
    unsigned stop_at; /* 0: never */
    unsigned visits;
};

static int scan_mark(void *ctx, const void *key, size_t klen, const void *val,
                     size_t vlen, int64_t ttl_s)
{
    (void)val;
    (void)vlen;
    (void)ttl_s;
    struct scan_seen *ss = ctx;
    char name[32];
    if (klen >= sizeof name)
        return 0;
    memcpy(name, key, klen);
    name[klen] = '\0';
    unsigned i;
    if (sscanf(name, "s%u", &i) == 1 && i < STATIC_KEYS)
        ss->seen[i] = 1;
    else
        ss->others++;
    if (++ss->visits == ss->stop_at)
        return 55;
    return 0;
}

static void test_scan(void **state)
{
    (void)state;
    char where[32];
    struct shmkv *kv = make_store(8u << 20, where, sizeof where);
    fill_static(kv, STATIC_KEYS);
    struct scan_seen ss = {.seen = calloc(STATIC_KEYS, 1)};
    assert_non_null(ss.seen);
    uint64_t cursor = 0;
    unsigned steps = 0;
    do {
        assert_int_equal(shmkv_scan(kv, &cursor, 100, scan_mark, &ss), 0);
        steps++;
    } while (cursor != 0);
    for (unsigned i = 0; i < STATIC_KEYS; i++)
        if (!ss.seen[i])
            fail_msg("s%u not visited by a quiet walk", i);
    print_message("a walk of %u keys took %u steps of 100 slots\n", STATIC_KEYS,
                  steps);
    assert_true(steps > 100);

    /* Writes and a resize during the walk. */
    memset(ss.seen, 0, STATIC_KEYS);
    cursor = 0;
    steps = 0;
    char key[32];
    do {
        assert_int_equal(shmkv_scan(kv, &cursor, 100, scan_mark, &ss), 0);
        if (++steps == 50) {
            for (unsigned i = 0; i < 1000; i++) {
                snprintf(key, sizeof key, "s%u", i);
                assert_int_equal(shmkv_del(kv, key, strlen(key)), 0);
                snprintf(key, sizeof key, "n%u", i);
                assert_int_equal(shmkv_set(kv, key, strlen(key), "v", 1, 0, 0),
                                 0);
            }
        }
        if (steps == 200)
            assert_int_equal(shmkv_resize(kv, 16u << 20, 0, NULL, NULL), 0);
    } while (cursor != 0);
    for (unsigned i = 1000; i < STATIC_KEYS; i++)
        if (!ss.seen[i])
            fail_msg("s%u, present for the whole walk, not visited", i);

    /* A visitor's nonzero result is returned, and the cursor stays. */
    ss.visits = 0;
    ss.stop_at = 3;
    cursor = 0;
    assert_int_equal(shmkv_scan(kv, &cursor, 1000, scan_mark, &ss), 55);
    assert_int_equal(cursor, 0);
    assert_int_equal(shmkv_scan(kv, NULL, 10, scan_mark, &ss), SHMKV_EINVAL);
    assert_int_equal(shmkv_read_begin(kv), 0);
    assert_int_equal(shmkv_scan(kv, &cursor, 10, scan_mark, &ss), SHMKV_ESTATE);
    assert_int_equal(shmkv_read_end(kv), 0);
    free(ss.seen);
    test_destroy(kv, where);
}

/* huge_pages = yes with no pool: a clear error naming the sysctl; try:
 * ordinary pages; with a pool: huge pages, kept by a resize. The pool is
 * the machine's: the test raises it only as root, and puts it back. */
static long read_long(const char *path)
{
    FILE *f = fopen(path, "re");
    long v = -1;
    if (f != NULL) {
        if (fscanf(f, "%ld", &v) != 1)
            v = -1;
        fclose(f);
    }
    return v;
}

static bool write_long(const char *path, long v)
{
    FILE *f = fopen(path, "we");
    if (f == NULL)
        return false;
    bool ok = fprintf(f, "%ld\n", v) > 0;
    return fclose(f) == 0 && ok;
}

static long pool_before = -1;

static int pool_restore(void **state)
{
    (void)state;
    if (pool_before >= 0)
        write_long("/proc/sys/vm/nr_hugepages", pool_before);
    pool_before = -1;
    return 0;
}

static void test_huge_pages(void **state)
{
    (void)state;
    uint64_t hp = huge_page_bytes();
    if (hp == 0)
        skip(); /* no huge pages in this kernel */
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = 5u << 20;
    o.huge_pages = SHMKV_HUGE_YES;
    long free_pages = read_long("/proc/sys/vm/nr_hugepages");
    struct shmkv *kv;
    if (free_pages == 0) {
        assert_int_equal(test_create(&o, &kv), SHMKV_ENOMEM);
        print_message("no pool: %s\n", shmkv_last_error());
        assert_non_null(strstr(shmkv_last_error(), "vm.nr_hugepages"));
    }
    o.huge_pages = SHMKV_HUGE_TRY;
    assert_int_equal(test_create(&o, &kv), 0);
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    assert_int_equal(st.data_bytes % hp, 0);
    print_message("try: %" PRIu64 " MiB on %" PRIu64 " kB pages\n",
                  st.data_bytes >> 20, st.data_page_bytes >> 10);
    test_destroy(kv, o.key);

    if (geteuid() != 0 || free_pages < 0) {
        print_message("not root: the pool is left as it is\n");
        return;
    }
    pool_before = free_pages;
    long want = free_pages + (long)((40u << 20) / hp) + 2;
    if (!write_long("/proc/sys/vm/nr_hugepages", want) ||
        read_long("/proc/sys/vm/nr_hugepages") < want) {
        print_message("the kernel would not raise vm.nr_hugepages\n");
        return;
    }
    /* A process outside vm.hugetlb_shm_group, without CAP_IPC_LOCK and
     * with no memlock allowance, is refused with the sysctl named. */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct rlimit none = {0, 0};
        if (setrlimit(RLIMIT_MEMLOCK, &none) != 0 || setgid(65534) != 0 ||
            setuid(65534) != 0)
            _exit(10);
        struct shmkv_options u;
        shmkv_options_init(&u);
        u.size_bytes = 8u << 20;
        u.huge_pages = SHMKV_HUGE_YES;
        char key[32];
        snprintf(key, sizeof key, "key:0x5b%04x%02x",
                 (unsigned)getpid() & 0xffffu, 0xeeu);
        u.key = key;
        struct shmkv *h;
        int rc = shmkv_create(&u, &h);
        if (rc == 0) {
            shmkv_destroy(h);
            _exit(11);
        }
        printf("outside the group: %s\n", shmkv_last_error());
        fflush(stdout);
        _exit(rc == SHMKV_EACCES &&
                      strstr(shmkv_last_error(), "vm.hugetlb_shm_group")
                  ? 0
                  : 12);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("the process outside the group: status 0x%x", status);

    o.huge_pages = SHMKV_HUGE_YES;
    assert_int_equal(test_create(&o, &kv), 0);
    char where[32];
    snprintf(where, sizeof where, "%s", o.key);
    assert_int_equal(shmkv_stats(kv, &st), 0);
    assert_int_equal(st.data_page_bytes, hp);
    assert_int_equal(st.huge_pages, SHMKV_HUGE_YES);
    fill_static(kv, 20000);
    assert_int_equal(shmkv_resize(kv, 20u << 20, 0, NULL, NULL), 0);
    assert_int_equal(shmkv_stats(kv, &st), 0);
    assert_int_equal(st.data_page_bytes, hp);
    assert_int_equal(st.data_bytes, 20u << 20);
    verify_static(kv, 20000);
    assert_clean(kv);
    test_destroy(kv, where);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_grow_and_shrink_under_load, kids_stop),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_resizer_killed),
        cmocka_unit_test(test_writer_killed_during_resize),
        cmocka_unit_test(test_grown_past_new_size),
        cmocka_unit_test(test_cancelled),
        cmocka_unit_test(test_scan),
        cmocka_unit_test(test_closed_during_resize),
        cmocka_unit_test_teardown(test_resize_while_evicting, kids_stop),
        cmocka_unit_test_teardown(test_huge_pages, pool_restore),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
