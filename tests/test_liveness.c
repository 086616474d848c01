/*
 * Liveness tests: what processes that stop, die, fork, run as another user
 * or in another pid namespace can and cannot do to the others.
 *
 * - A reader stopped (SIGSTOP) inside its read section holds writers up at
 *   most reader_timeout_ms: then its section is revoked, and on SIGCONT its
 *   next get and its read_end say SHMKV_ESTALE. Other readers never wait.
 * - A writer stopped holding the write lock holds other writers up at most
 *   lock_timeout_ms per call, and readers not at all.
 * - A reader in a new pid namespace (as a container started with
 *   --ipc=host) is alive to the others, and so is an owner there.
 * - A writer of another uid dies holding the lock: a writer of a third uid
 *   recovers the store.
 * - A forked child's copy of its parent's handle is refused, and what the
 *   child does or dies with does not touch the parent's section.
 * - A writer is killed at every undo-logged store of a set, and a recoverer
 *   at every step of a recovery while others wait: the store is whole, no
 *   acknowledged write is lost, exactly one new lock results.
 * - A process stopped while waiting in the lock across more recoveries than
 *   there are lock slots finds its way to the current lock: no slot it may
 *   touch was re-initialised under it.
 *
 * Children are forked from the test process, end by exit or by a kill the
 * test sends them by pid, and every store is removed at exit.
 */
#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "internal.h"
#include "testutil.h"

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* A page shared with the children. */
struct shared {
    _Atomic int ready;
    _Atomic int go;
    _Atomic int result;
    _Atomic uint64_t counter;
    char note[256];
};

static struct shared *shared_map(void)
{
    struct shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE,
                             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(sh != MAP_FAILED);
    memset(sh, 0, sizeof *sh);
    return sh;
}

static void wait_flag(_Atomic int *flag, pid_t child)
{
    uint64_t give_up = now_ms() + 10000;
    while (atomic_load(flag) == 0) {
        int status;
        if (child > 0 && waitpid(child, &status, WNOHANG) == child)
            fail_msg("child %d ended before it was ready (status %d)",
                     (int)child, status);
        if (now_ms() > give_up)
            fail_msg("child %d never got ready", (int)child);
        usleep(200);
    }
}

/* Reaps a child; returns its exit code, or 128 + signal. */
static int reap(pid_t pid)
{
    int status;
    pid_t r;
    do
        r = waitpid(pid, &status, 0);
    while (r < 0 && errno == EINTR);
    assert_int_equal(r, pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static struct shmkv *make_store(uint64_t size, uint32_t lock_ms,
                                uint32_t reader_ms, char *where, size_t cap)
{
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = size;
    o.lock_timeout_ms = lock_ms;
    o.reader_timeout_ms = reader_ms;
    o.mode = 0666;
    struct shmkv *kv;
    assert_int_equal(test_create(&o, &kv), 0);
    snprintf(where, cap, "%s", o.key);
    return kv;
}

/* Rewrites n keys of vlen bytes, rounds times; returns the slowest set in
 * ms. Every set must succeed. */
static uint64_t rewrite(struct shmkv *kv, unsigned n, size_t vlen,
                        unsigned rounds)
{
    static char val[65536];
    uint64_t slowest = 0;
    char key[32];
    for (unsigned r = 0; r < rounds; r++) {
        memset(val, 'a' + (int)(r % 26), vlen);
        for (unsigned i = 0; i < n; i++) {
            int kl = snprintf(key, sizeof key, "fill:%u", i);
            uint64_t t0 = now_ms();
            int rc = shmkv_set(kv, key, (size_t)kl, val, vlen, 0, 0);
            if (rc != 0)
                fail_msg("set %s (round %u): %s: %s", key, r,
                         shmkv_strerror(rc), shmkv_last_error());
            uint64_t t = now_ms() - t0;
            slowest = t > slowest ? t : slowest;
        }
    }
    return slowest;
}

/* ---------------------------------------------------------------------- */

/* In a child: opens the store, begins a read section, looks "k" up, says
 * ready and stops itself. Once continued, reports in sh->result what its
 * next get and its read_end returned (1 when both were SHMKV_ESTALE and the
 * value it held never faulted: it may have changed), then exits. */
static void stopped_reader(struct shared *sh, const char *where)
{
    struct shmkv *kv;
    shmkv_val_t v;
    if (shmkv_open(where, SHMKV_RDONLY, &kv) != 0 ||
        shmkv_read_begin(kv) != 0 || shmkv_get(kv, "k", 1, &v) != 0)
        _exit(2);
    atomic_store(&sh->ready, 1);
    raise(SIGSTOP);
    /* Continued: the memory is mapped whatever it holds now. */
    volatile char sink = 0;
    for (size_t i = 0; i < v.len; i++)
        sink ^= ((const char *)v.data)[i];
    (void)sink;
    shmkv_val_t again;
    int get_rc = shmkv_get(kv, "k", 1, &again);
    int end_rc = shmkv_read_end(kv);
    snprintf(sh->note, sizeof sh->note, "get %s, read_end %s",
             shmkv_strerror(get_rc), shmkv_strerror(end_rc));
    atomic_store(&sh->result,
                 get_rc == SHMKV_ESTALE && end_rc == SHMKV_ESTALE ? 1 : 2);
    /* A new section works again. */
    if (shmkv_read_begin(kv) != 0 || shmkv_get(kv, "k", 1, &v) != 0 ||
        shmkv_read_end(kv) != 0)
        _exit(3);
    shmkv_close(kv);
    _exit(0);
}

static void test_stopped_reader(void **state)
{
    (void)state;
    char where[32];
    /* 4 MiB: the rewrites below need the memory the section holds. */
    struct shmkv *kv = make_store(4u << 20, 3000, 300, where, sizeof where);
    assert_int_equal(shmkv_set(kv, "k", 1, "first", 5, 0, 0), 0);
    struct shared *sh = shared_map();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        stopped_reader(sh, where);
    wait_flag(&sh->ready, pid);
    int status;
    assert_int_equal(waitpid(pid, &status, WUNTRACED), pid);
    assert_true(WIFSTOPPED(status));

    /* Writers go on: each waits at most about reader_timeout_ms once. */
    uint64_t t0 = now_ms();
    assert_int_equal(shmkv_set(kv, "k", 1, "second", 6, 0, 0), 0);
    uint64_t slowest = rewrite(kv, 200, 4000, 20);
    uint64_t total = now_ms() - t0;
    /* A reader in this process never waits meanwhile. */
    shmkv_val_t v;
    uint64_t r0 = now_ms();
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(shmkv_read_begin(kv), 0);
        assert_int_equal(shmkv_get(kv, "k", 1, &v), 0);
        assert_int_equal(shmkv_read_end(kv), 0);
    }
    uint64_t reads_ms = now_ms() - r0;
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    print_message("stopped reader: slowest write %" PRIu64 " ms, 4000 writes "
                  "in %" PRIu64 " ms, 1000 reads in %" PRIu64 " ms, %" PRIu64
                  " revocations\n",
                  slowest, total, reads_ms, st.revocations);
    assert_true(slowest < 300 + 500);
    assert_true(slowest >= 250); /* it did wait for the section first */
    assert_true(reads_ms < 200);
    assert_int_equal(st.revocations, 1);
    assert_int_equal(st.lock_timeouts, 0);

    /* Continued, the reader learns its section was revoked. */
    kill(pid, SIGCONT);
    assert_int_equal(reap(pid), 0);
    if (atomic_load(&sh->result) != 1)
        fail_msg("the revoked reader saw: %s", sh->note);
    assert_int_equal(shmkv_stats(kv, &st), 0);
    assert_int_equal(st.stale_sections, 1);
    struct shmkv_event ev[8];
    uint64_t cursor = 0;
    int n = shmkv_events(kv, &cursor, ev, 8, NULL);
    bool seen = false;
    for (int i = 0; i < n; i++)
        seen |= ev[i].type == SHMKV_EVENT_REVOKED && ev[i].pid == pid &&
                ev[i].duration_ms >= 250;
    assert_true(seen);
    struct shmkv_check_report rep;
    assert_int_equal(shmkv_check(kv, &rep), 0);
    munmap(sh, sizeof *sh);
    test_destroy(kv, where);
}

/* ---------------------------------------------------------------------- */

/* A writer stopped holding the write lock: readers go on at full speed,
 * writers wait at most lock_timeout_ms per call and then fail, and all
 * works again once it goes on. */
static void test_stopped_writer(void **state)
{
    (void)state;
    char where[32];
    struct shmkv *kv = make_store(4u << 20, 200, 300, where, sizeof where);
    assert_int_equal(shmkv_set(kv, "k", 1, "v", 1, 0, 0), 0);
    struct shared *sh = shared_map();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct shmkv *h;
        if (shmkv_open(where, 0, &h) != 0 || lock_take(h, true) != 0)
            _exit(2);
        atomic_store(&sh->ready, 1);
        raise(SIGSTOP);
        lock_release(h);
        shmkv_close(h);
        _exit(0);
    }
    wait_flag(&sh->ready, pid);
    int status;
    assert_int_equal(waitpid(pid, &status, WUNTRACED), pid);
    assert_true(WIFSTOPPED(status));

    uint64_t r0 = now_ms();
    shmkv_val_t v;
    for (int i = 0; i < 100000; i++) {
        assert_int_equal(shmkv_read_begin(kv), 0);
        assert_int_equal(shmkv_get(kv, "k", 1, &v), 0);
        assert_int_equal(shmkv_read_end(kv), 0);
    }
    uint64_t reads_ms = now_ms() - r0;
    for (int i = 0; i < 3; i++) {
        uint64_t t0 = now_ms();
        assert_int_equal(shmkv_set(kv, "k", 1, "w", 1, 0, 0), SHMKV_ETIMEDOUT);
        uint64_t t = now_ms() - t0;
        assert_true(t >= 190 && t < 600);
    }
    print_message("stopped writer: 100000 reads in %" PRIu64 " ms\n", reads_ms);
    assert_true(reads_ms < 1000);
    kill(pid, SIGCONT);
    assert_int_equal(reap(pid), 0);
    assert_int_equal(shmkv_set(kv, "k", 1, "w", 1, 0, 0), 0);
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    assert_int_equal(st.recoveries, 0);
    struct shmkv_event ev[8];
    uint64_t cursor = 0;
    int n = shmkv_events(kv, &cursor, ev, 8, NULL);
    bool seen = false;
    for (int i = 0; i < n; i++)
        seen |= ev[i].type == SHMKV_EVENT_SLOW_WRITER && ev[i].pid == pid;
    assert_true(seen);
    munmap(sh, sizeof *sh);
    test_destroy(kv, where);
}

/* ---------------------------------------------------------------------- */

/* In a new pid namespace (and its own /proc), as a container sharing the
 * host's IPC namespace: returns 77 from the child if the kernel refuses. */
static pid_t fork_in_pid_namespace(void (*body)(struct shared *, const char *),
                                   struct shared *sh, const char *where)
{
    pid_t outer = fork();
    assert_true(outer >= 0);
    if (outer != 0)
        return outer;
    if (unshare(CLONE_NEWPID | CLONE_NEWNS) != 0)
        _exit(77);
    pid_t inner = fork();
    if (inner < 0)
        _exit(1);
    if (inner == 0) {
        /* pid 1 of the new namespace, with its own /proc, as
         * `unshare --pid --fork --mount-proc` gives it: a pid or a start
         * time read there means nothing to the host. */
        if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                  NULL) != 0)
            _exit(77);
        body(sh, where);
    }
    int status;
    if (waitpid(inner, &status, 0) != inner)
        _exit(1);
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
}

static void namespaced_reader(struct shared *sh, const char *where)
{
    struct shmkv *kv;
    shmkv_val_t v;
    if (getpid() != 1)
        _exit(5);
    if (shmkv_open(where, SHMKV_RDONLY, &kv) != 0 ||
        shmkv_read_begin(kv) != 0 || shmkv_get(kv, "k", 1, &v) != 0)
        _exit(2);
    char held[16];
    size_t len = v.len < sizeof held ? v.len : sizeof held;
    memcpy(held, v.data, len);
    atomic_store(&sh->ready, 1);
    while (atomic_load(&sh->go) == 0)
        usleep(1000);
    /* The host wrote meanwhile; what this section was given is the same. */
    int same = v.len == len && memcmp(v.data, held, len) == 0;
    int end_rc = shmkv_read_end(kv);
    shmkv_close(kv);
    _exit(same && end_rc == 0 ? 0 : 3);
}

static void namespaced_owner(struct shared *sh, const char *where)
{
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.key = where;
    o.size_bytes = 1u << 20;
    o.mode = 0666;
    struct shmkv *kv;
    if (shmkv_create(&o, &kv) != 0)
        _exit(2);
    atomic_store(&sh->ready, 1);
    while (atomic_load(&sh->go) == 0)
        usleep(1000);
    shmkv_destroy(kv);
    _exit(0);
}

static void test_pid_namespace_clients(void **state)
{
    (void)state;
    char where[32];
    struct shmkv *kv = make_store(8u << 20, 2000, 5000, where, sizeof where);
    assert_int_equal(shmkv_set(kv, "k", 1, "held", 4, 0, 0), 0);
    struct shared *sh = shared_map();
    pid_t pid = fork_in_pid_namespace(namespaced_reader, sh, where);
    uint64_t give_up = now_ms() + 10000;
    while (atomic_load(&sh->ready) == 0) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            if (WIFEXITED(status) && WEXITSTATUS(status) == 77) {
                munmap(sh, sizeof *sh);
                test_destroy(kv, where);
                print_message("the kernel refuses a new pid namespace here "
                              "(not root?): skipping\n");
                skip();
            }
            fail_msg("namespaced reader ended early: status %d", status);
        }
        assert_true(now_ms() < give_up);
        usleep(1000);
    }
    /* The host writes for longer than a second, replacing the key the
     * namespaced section holds: it is alive, so nothing is dropped. */
    uint64_t t0 = now_ms();
    unsigned n = 0;
    char val[32];
    while (now_ms() - t0 < 1200) {
        int vl = snprintf(val, sizeof val, "v%u", n++);
        assert_int_equal(shmkv_set(kv, "k", 1, val, (size_t)vl, 0, 0), 0);
        usleep(1000);
    }
    atomic_store(&sh->go, 1);
    assert_int_equal(reap(pid), 0);
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    assert_int_equal(st.dead_readers, 0);
    assert_int_equal(st.revocations, 0);
    assert_int_equal(st.recoveries, 0);
    assert_int_equal(st.generation, 1);
    test_destroy(kv, where);

    /* An owner in a pid namespace is alive: the host cannot adopt. */
    memset(sh, 0, sizeof *sh);
    test_cleanup_install();
    const char *key = test_unique_key();
    snprintf(where, sizeof where, "%s", key);
    snprintf(test_store_keys[test_store_count++], 32, "%s", key);
    pid = fork_in_pid_namespace(namespaced_owner, sh, where);
    wait_flag(&sh->ready, pid);
    struct shmkv *adopter = NULL;
    int rc = shmkv_adopt(where, &adopter);
    atomic_store(&sh->go, 1);
    assert_int_equal(reap(pid), 0);
    assert_int_equal(rc, SHMKV_EOWNED);
    munmap(sh, sizeof *sh);
}

/* ---------------------------------------------------------------------- */

static void test_other_uid_writer_recovers(void **state)
{
    (void)state;
    if (geteuid() != 0) {
        print_message("not root: cannot run as other uids: skipping\n");
        skip();
    }
    char where[32];
    struct shmkv *kv = make_store(4u << 20, 2000, 1000, where, sizeof where);
    assert_int_equal(shmkv_set(kv, "k", 1, "v", 1, 0, 0), 0);
    struct shared *sh = shared_map();
    /* uid 40001 dies in the middle of a write, holding the lock. */
    pid_t dier = fork();
    assert_true(dier >= 0);
    if (dier == 0) {
        struct shmkv *h;
        if (setresgid(40001, 40001, 40001) != 0 ||
            setresuid(40001, 40001, 40001) != 0)
            _exit(2);
        if (shmkv_open(where, 0, &h) != 0 || lock_take(h, true) != 0)
            _exit(3);
        raise(SIGKILL);
        _exit(4);
    }
    assert_int_equal(reap(dier), 128 + SIGKILL);
    /* uid 40002, not the store's owner, writes: it recovers. */
    pid_t writer = fork();
    assert_true(writer >= 0);
    if (writer == 0) {
        struct shmkv *h;
        if (setresgid(40002, 40002, 40002) != 0 ||
            setresuid(40002, 40002, 40002) != 0)
            _exit(2);
        if (shmkv_open(where, 0, &h) != 0)
            _exit(3);
        uint64_t t0 = now_ms();
        int rc = shmkv_set(h, "k", 1, "other", 5, 0, 0);
        sh->counter = now_ms() - t0;
        shmkv_close(h);
        _exit(rc == 0 ? 0 : 10);
    }
    assert_int_equal(reap(writer), 0);
    print_message("another uid's first write after the death: %" PRIu64 " ms\n",
                  (uint64_t)sh->counter);
    assert_true(sh->counter < 200);
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    assert_int_equal(st.recoveries, 1);
    char buf[8];
    size_t len;
    assert_int_equal(shmkv_get_copy(kv, "k", 1, buf, sizeof buf, &len), 0);
    assert_memory_equal(buf, "other", 5);
    munmap(sh, sizeof *sh);
    test_destroy(kv, where);
}

/* ---------------------------------------------------------------------- */

static void test_forked_child_handle(void **state)
{
    (void)state;
    char where[32];
    struct shmkv *kv = make_store(1u << 20, 1000, 200, where, sizeof where);
    assert_int_equal(shmkv_set(kv, "k", 1, "parent", 6, 0, 0), 0);
    shmkv_val_t v;
    assert_int_equal(shmkv_read_begin(kv), 0);
    assert_int_equal(shmkv_get(kv, "k", 1, &v), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* Every call on the parent's handle is refused... */
        shmkv_val_t cv;
        char buf[8];
        size_t len;
        struct shmkv_stats st;
        int bad = 0;
        bad |= shmkv_get(kv, "k", 1, &cv) != SHMKV_EFORKED;
        bad |= shmkv_read_begin(kv) != SHMKV_EFORKED;
        bad |= shmkv_set(kv, "k", 1, "child", 5, 0, 0) != SHMKV_EFORKED;
        bad |= shmkv_del(kv, "k", 1) != SHMKV_EFORKED;
        bad |=
            shmkv_get_copy(kv, "k", 1, buf, sizeof buf, &len) != SHMKV_EFORKED;
        bad |= shmkv_stats(kv, &st) != SHMKV_EFORKED;
        bad |= shmkv_destroy(kv) != SHMKV_EFORKED;
        /* ...and closing it frees only the child's copy. */
        shmkv_close(kv);
        /* The child opens its own. */
        struct shmkv *own;
        bad |= shmkv_open(where, 0, &own) != 0;
        bad |= shmkv_get_copy(own, "k", 1, buf, sizeof buf, &len) != 0;
        _exit(bad ? 1 : 0);
    }
    assert_int_equal(reap(pid), 0);
    /* A child that dies at once, inside the parent's section. */
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(0);
    assert_int_equal(reap(pid), 0);
    /* The parent's section is its own, unharmed; writers do not wait for
     * anything the children did. */
    struct shmkv *w;
    assert_int_equal(shmkv_open(where, 0, &w), 0);
    assert_int_equal(shmkv_set(w, "k", 1, "writer", 6, 0, 0), 0);
    assert_memory_equal(v.data, "parent", 6);
    assert_int_equal(shmkv_read_end(kv), 0);
    uint64_t t0 = now_ms();
    rewrite(w, 100, 2000, 20); /* needs memory no section holds */
    assert_true(now_ms() - t0 < 150);
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    assert_int_equal(st.clients, 2);
    assert_int_equal(st.revocations + st.dead_readers + st.recoveries, 0);
    shmkv_close(w);
    test_destroy(kv, where);
}

/* ---------------------------------------------------------------------- */
/* Kill points */

static const char *kill_point;
static unsigned kill_at; /* die at this passage through kill_point */
static unsigned kill_seen;

static void die_at_point(const char *point)
{
    if (strcmp(point, kill_point) == 0 && ++kill_seen == kill_at)
        raise(SIGKILL);
}

static void arm_kill(const char *point, unsigned at)
{
    kill_point = point;
    kill_at = at;
    kill_seen = 0;
    shmkv_test_hook = die_at_point;
}

/* A set killed at each of its undo-logged stores and at each step around
 * its publication: the store is consistent after, the key holds the old
 * or the new value, and a later write goes through. */
static void test_writer_killed_at_every_store(void **state)
{
    (void)state;
    char where[32];
    struct shmkv *kv = make_store(1u << 20, 1000, 200, where, sizeof where);
    static const char *const points[] = {"write:logged",  "set:prepared",
                                         "set:stored",    "set:finished",
                                         "remove:stored", "remove:finished"};
    char old[64], new_[64];
    unsigned kills = 0, saw_new = 0;
    for (size_t p = 0; p < sizeof points / sizeof points[0]; p++) {
        for (unsigned at = 1; at <= (p == 0 ? 40u : 1u); at++) {
            int ol = snprintf(old, sizeof old, "old value %zu/%u", p, at);
            int nl = snprintf(new_, sizeof new_, "a new, longer value %zu/%u",
                              p, at);
            /* Some other keys, so that allocations split and merge. */
            for (int i = 0; i < 8; i++) {
                char k[16];
                int kl = snprintf(k, sizeof k, "o%d", (int)(at * 8 + i) % 13);
                assert_int_equal(
                    shmkv_set(kv, k, (size_t)kl, new_, (size_t)(nl - i), 0, 0),
                    0);
            }
            assert_int_equal(shmkv_set(kv, "key", 3, old, (size_t)ol, 0, 0), 0);
            bool removal = strncmp(points[p], "remove:", 7) == 0;
            pid_t pid = fork();
            assert_true(pid >= 0);
            if (pid == 0) {
                struct shmkv *h;
                if (shmkv_open(where, 0, &h) != 0)
                    _exit(2);
                arm_kill(points[p], at);
                int rc = removal
                             ? shmkv_del(h, "key", 3)
                             : shmkv_set(h, "key", 3, new_, (size_t)nl, 0, 0);
                _exit(rc == 0 ? 0 : 3);
            }
            int code = reap(pid);
            if (code == 0)
                continue; /* the set had fewer logged stores */
            assert_int_equal(code, 128 + SIGKILL);
            kills++;
            /* The next write recovers the lock and repairs the set. */
            assert_int_equal(shmkv_set(kv, "after", 5, "x", 1, 0, 0), 0);
            struct shmkv_check_report rep;
            if (shmkv_check(kv, &rep) != 0)
                fail_msg("%s #%u: %s", points[p], at, rep.first_problem);
            char buf[64];
            size_t len = 0;
            int rc = shmkv_get_copy(kv, "key", 3, buf, sizeof buf, &len);
            bool is_old =
                rc == 0 && len == (size_t)ol && memcmp(buf, old, len) == 0;
            bool is_new =
                rc == 0 && len == (size_t)nl && memcmp(buf, new_, len) == 0;
            if (removal) {
                /* Published (the slot stored), so it stays removed. */
                assert_int_equal(rc, SHMKV_ENOTFOUND);
            } else if (strcmp(points[p], "set:prepared") == 0) {
                assert_true(is_old); /* not published: undone */
            } else if (strcmp(points[p], "write:logged") == 0) {
                assert_true(is_old || is_new); /* before or after */
            } else {
                assert_true(is_new); /* published: finished */
            }
            saw_new += is_new;
        }
    }
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    print_message("%u writers killed at a store of theirs; %" PRIu64
                  " recoveries\n",
                  kills, st.recoveries);
    assert_int_equal(st.recoveries, kills);
    assert_true(kills > 20);
    assert_true(saw_new >= 2);
    test_destroy(kv, where);
}

/* Writers that wait for a lock a dead writer holds; the one that recovers
 * is killed at a step of the recovery, over and over: the store ends
 * whole, one lock is current, no acknowledged write is lost. */
#define WAITERS 6u
#define ROUNDS 15u
#define ACKS_PER_WAITER 16u

struct acks {
    _Atomic uint64_t done[ROUNDS][WAITERS];
};

static void waiter_main(struct acks *a, unsigned round, unsigned id,
                        const char *where, const char *point)
{
    struct shmkv *h;
    if (shmkv_open(where, 0, &h) != 0)
        _exit(2);
    if (point != NULL)
        arm_kill(point, 1);
    char key[32];
    for (uint64_t n = 0; n < ACKS_PER_WAITER; n++) {
        int kl = snprintf(key, sizeof key, "w%u:%u:%" PRIu64, round, id, n);
        int rc = shmkv_set(h, key, (size_t)kl, key, (size_t)kl, 0, 0);
        if (rc != 0)
            _exit(10);
        atomic_store(&a->done[round][id], n + 1);
    }
    shmkv_close(h);
    _exit(0);
}

static void test_recoverers_killed(void **state)
{
    (void)state;
    static const char *const points[] = {
        "recover:marked", "recover:holders-gone", "recover:repaired",
        "recover:lock-made", "recover:published"};
    char where[32];
    struct shmkv *kv = make_store(4u << 20, 5000, 500, where, sizeof where);
    struct acks *a = mmap(NULL, sizeof *a, PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(a != MAP_FAILED);
    memset(a, 0, sizeof *a);
    uint64_t seed = test_seed("test_recoverers_killed");
    unsigned recoverer_deaths = 0;
    for (unsigned round = 0; round < ROUNDS; round++) {
        const char *point = points[round % 5];
        /* A writer dies holding the lock, in the middle of a set. */
        pid_t holder = fork();
        assert_true(holder >= 0);
        if (holder == 0) {
            struct shmkv *h;
            if (shmkv_open(where, 0, &h) != 0)
                _exit(2);
            arm_kill("set:prepared", 1);
            shmkv_set(h, "held", 4, "x", 1, 0, 0);
            _exit(3);
        }
        assert_int_equal(reap(holder), 128 + SIGKILL);
        /* Waiters come; each of them dies if it reaches the point while
         * recovering, except those the seed spares. */
        pid_t w[WAITERS];
        for (unsigned i = 0; i < WAITERS; i++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            bool armed = (seed >> 33) % 3 != 0;
            w[i] = fork();
            assert_true(w[i] >= 0);
            if (w[i] == 0)
                waiter_main(a, round, i, where, armed ? point : NULL);
        }
        for (unsigned i = 0; i < WAITERS; i++) {
            int code = reap(w[i]);
            if (code == 128 + SIGKILL)
                recoverer_deaths++;
            else
                assert_int_equal(code, 0);
        }
        /* The parent's write gets through: it finishes any recovery a
         * dead recoverer left. */
        uint64_t t0 = now_ms();
        assert_int_equal(shmkv_set(kv, "after", 5, "x", 1, 0, 0), 0);
        assert_true(now_ms() - t0 < 1000);
        struct shmkv_check_report rep;
        if (shmkv_check(kv, &rep) != 0)
            fail_msg("round %u (%s): %s", round, point, rep.first_problem);
        /* Every write acknowledged in any round so far is there. */
        char key[32], buf[32];
        for (unsigned r = 0; r <= round; r++) {
            for (unsigned i = 0; i < WAITERS; i++) {
                uint64_t done = atomic_load(&a->done[r][i]);
                for (uint64_t n = 0; n < done; n++) {
                    int kl =
                        snprintf(key, sizeof key, "w%u:%u:%" PRIu64, r, i, n);
                    size_t len;
                    int rc = shmkv_get_copy(kv, key, (size_t)kl, buf,
                                            sizeof buf, &len);
                    if (rc != 0)
                        fail_msg("round %u: acknowledged %s lost: %s", round,
                                 key, shmkv_strerror(rc));
                    assert_memory_equal(buf, key, (size_t)kl);
                }
            }
        }
        /* The lock is not being installed, and is one a live process may
         * take. */
        uint64_t lw = atomic_load(&kv->ctl->lock_word);
        assert_false(LOCK_WORD_INSTALLING(lw));
    }
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    print_message("%u recoverers killed inside a recovery; %" PRIu64
                  " recoveries completed\n",
                  recoverer_deaths, st.recoveries);
    assert_true(recoverer_deaths > 0);
    /* At least one recovery a round (the dead writer's). */
    assert_true(st.recoveries >= ROUNDS);
    munmap(a, sizeof *a);
    test_destroy(kv, where);
}

/* A writer stopped while it waits in the lock, across more recoveries than
 * there are lock slots: on SIGCONT it follows to the current lock and its
 * write goes through; the lock slot it was in was not re-initialised. */
static void test_waiter_across_recoveries(void **state)
{
    (void)state;
    char where[32];
    struct shmkv *kv = make_store(1u << 20, 60000, 500, where, sizeof where);
    struct shared *sh = shared_map();
    /* Hold the lock so that the next writer waits in it. */
    assert_int_equal(lock_take(kv, true), 0);
    pid_t waiter = fork();
    assert_true(waiter >= 0);
    if (waiter == 0) {
        struct shmkv *h;
        if (shmkv_open(where, 0, &h) != 0)
            _exit(2);
        atomic_store(&sh->ready, 1);
        int rc = shmkv_set(h, "late", 4, "x", 1, 0, 0);
        _exit(rc == 0 ? 0 : 3);
    }
    wait_flag(&sh->ready, waiter);
    usleep(50 * 1000); /* it is waiting in the lock */
    kill(waiter, SIGSTOP);
    int status;
    assert_int_equal(waitpid(waiter, &status, WUNTRACED), waiter);
    uint64_t first_word = atomic_load(&kv->ctl->lock_word);
    lock_release(kv);
    /* Twice as many deaths holding the lock as there are lock slots. */
    for (unsigned i = 0; i < 2 * LOCK_SLOTS; i++) {
        pid_t holder = fork();
        assert_true(holder >= 0);
        if (holder == 0) {
            struct shmkv *h;
            if (shmkv_open(where, 0, &h) != 0 || lock_take(h, true) != 0)
                _exit(2);
            raise(SIGKILL);
        }
        assert_int_equal(reap(holder), 128 + SIGKILL);
        assert_int_equal(shmkv_set(kv, "k", 1, "v", 1, 0, 0), 0);
    }
    uint64_t last_word = atomic_load(&kv->ctl->lock_word);
    /* The slot the stopped waiter is in was skipped every time round. */
    assert_true(LOCK_WORD_EPOCH(last_word) - LOCK_WORD_EPOCH(first_word) >
                2 * LOCK_SLOTS);
    kill(waiter, SIGCONT);
    assert_int_equal(reap(waiter), 0);
    for (int i = 0; i < 100; i++)
        assert_int_equal(shmkv_set(kv, "k", 1, "w", 1, 0, 0), 0);
    char buf[4];
    size_t len;
    assert_int_equal(shmkv_get_copy(kv, "late", 4, buf, sizeof buf, &len), 0);
    struct shmkv_check_report rep;
    assert_int_equal(shmkv_check(kv, &rep), 0);
    munmap(sh, sizeof *sh);
    test_destroy(kv, where);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stopped_reader),
        cmocka_unit_test(test_stopped_writer),
        cmocka_unit_test(test_pid_namespace_clients),
        cmocka_unit_test(test_other_uid_writer_recovers),
        cmocka_unit_test(test_forked_child_handle),
        cmocka_unit_test(test_writer_killed_at_every_store),
        cmocka_unit_test(test_recoverers_killed),
        cmocka_unit_test(test_waiter_across_recoveries),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
