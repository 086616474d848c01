/*
 * test_atomic.c - millisecond TTLs, versions and compare-and-set,
 * shmkv_update and write sections: alone, under writers in other
 * processes (no update lost), and with a writer killed inside a write
 * section and inside an update's function.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "shmkv.h"
#include "testutil.h"

/* The key of the store the running test made. */
static char store_key[32];

static struct shmkv *make_store(uint64_t size, int eviction)
{
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = size;
    o.eviction = eviction;
    struct shmkv *kv = NULL;
    assert_int_equal(test_create(&o, &kv), 0);
    snprintf(store_key, sizeof store_key, "%s", o.key);
    return kv;
}

static void finish(struct shmkv *kv)
{
    assert_int_equal(shmkv_destroy(kv), 0);
    test_destroy_all();
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for child pid: killed by a signal, or exited with 0. */
static void reap(pid_t pid, bool killed)
{
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (killed) {
        assert_true(WIFSIGNALED(status));
    } else {
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }
}

/* shmkv_check finds nothing wrong. */
static void check_clean(struct shmkv *kv)
{
    struct shmkv_check_report rep;
    assert_int_equal(shmkv_check(kv, &rep), 0);
    assert_int_equal(rep.problems, 0);
}

static bool present(struct shmkv *kv, const char *key)
{
    size_t len;
    int rc = shmkv_get_copy(kv, key, strlen(key), NULL, 0, &len);
    return rc == 0 || rc == SHMKV_ENOBUFS;
}

/* A 150 ms TTL: there at 100 ms, gone at 200 ms, whatever the second it
 * was set in (tried across several). */
static void test_ttl_milliseconds(void **state)
{
    (void)state;
    struct shmkv *kv = make_store(4u << 20, SHMKV_EVICT_NONE);
    for (int round = 0; round < 4; round++) {
        int64_t t0 = now_ms();
        assert_int_equal(shmkv_pset(kv, "k", 1, "v", 1, 150, 0), 0);
        int64_t ttl = 0, at = 0;
        assert_int_equal(shmkv_pttl(kv, "k", 1, &ttl), 0);
        assert_in_range(ttl, 140, 150);
        assert_int_equal(shmkv_pexpiretime(kv, "k", 1, &at), 0);
        assert_in_range(at, t0 + 150, now_ms() + 150);
        sleep_ms(100 - (now_ms() - t0));
        assert_true(present(kv, "k"));
        sleep_ms(200 - (now_ms() - t0));
        assert_false(present(kv, "k"));
        sleep_ms(230); /* land elsewhere in the second */
    }
    /* Seconds forms: rounded as Redis. */
    assert_int_equal(shmkv_pset(kv, "s", 1, "v", 1, 1400, 0), 0);
    int64_t s = 0;
    assert_int_equal(shmkv_ttl(kv, "s", 1, &s), 0);
    assert_int_equal(s, 1);
    assert_int_equal(shmkv_pexpire(kv, "s", 1, 0), 0);
    assert_int_equal(shmkv_ttl(kv, "s", 1, &s), 0);
    assert_int_equal(s, -1);
    /* An absolute time: in the future sets it, not in it removes. */
    assert_int_equal(shmkv_pexpireat(kv, "s", 1, now_ms() + 60000), 0);
    assert_int_equal(shmkv_pttl(kv, "s", 1, &s), 0);
    assert_in_range(s, 59000, 60000);
    assert_int_equal(shmkv_pexpireat(kv, "s", 1, now_ms() - 1), 0);
    assert_false(present(kv, "s"));
    assert_int_equal(shmkv_pexpireat(kv, "s", 1, now_ms() + 1000),
                     SHMKV_ENOTFOUND);
    finish(kv);
}

/* The remaining TTL a walk reports, in milliseconds. */
static int ms_visit(void *ctx, const void *key, size_t klen, const void *val,
                    size_t vlen, int64_t ttl_ms)
{
    (void)key;
    (void)klen;
    (void)val;
    (void)vlen;
    *(int64_t *)ctx = ttl_ms;
    return 0;
}

static int s_visit(void *ctx, const void *key, size_t klen, const void *val,
                   size_t vlen, int64_t ttl_s)
{
    return ms_visit(ctx, key, klen, val, vlen, ttl_s);
}

static void test_walks_in_milliseconds(void **state)
{
    (void)state;
    struct shmkv *kv = make_store(4u << 20, SHMKV_EVICT_NONE);
    assert_int_equal(shmkv_pset(kv, "k", 1, "v", 1, 2500, 0), 0);
    int64_t ttl = 0;
    assert_int_equal(shmkv_foreach_ms(kv, ms_visit, &ttl), 0);
    assert_in_range(ttl, 2400, 2500);
    assert_int_equal(shmkv_foreach(kv, s_visit, &ttl), 0);
    assert_int_equal(ttl, 3); /* seconds: rounded up, never 0 */
    uint64_t cursor = 0;
    do
        assert_int_equal(shmkv_scan_ms(kv, &cursor, 100, ms_visit, &ttl), 0);
    while (cursor != 0);
    assert_in_range(ttl, 2400, 2500);
    char key[8];
    size_t klen = 0;
    assert_int_equal(shmkv_random_key(kv, key, sizeof key, &klen), 0);
    assert_int_equal(klen, 1);
    assert_int_equal(key[0], 'k');
    assert_int_equal(shmkv_random_key(kv, key, 0, &klen), SHMKV_ENOBUFS);
    assert_int_equal(klen, 1);
    assert_int_equal(shmkv_del(kv, "k", 1), 0);
    assert_int_equal(shmkv_random_key(kv, key, sizeof key, &klen),
                     SHMKV_ENOTFOUND);
    finish(kv);
}

/* Every kind of change moves the version; a CAS with an old one fails and
 * writes nothing. */
static void test_versions_and_cas(void **state)
{
    (void)state;
    struct shmkv *kv = make_store(4u << 20, SHMKV_EVICT_NONE);
    uint64_t v0, v1, v2;
    assert_int_equal(shmkv_version(kv, "k", 1, &v0), SHMKV_ENOTFOUND);
    assert_int_equal(shmkv_cas(kv, "k", 1, "a", 1, 0, 0, v0), 0);
    assert_int_equal(shmkv_version(kv, "k", 1, &v1), 0);
    assert_true(v1 != v0);
    /* The old version: refused, value kept. */
    assert_int_equal(shmkv_cas(kv, "k", 1, "b", 1, 0, 0, v0), SHMKV_ECHANGED);
    char buf[8];
    size_t len;
    assert_int_equal(shmkv_get_copy(kv, "k", 1, buf, sizeof buf, &len), 0);
    assert_memory_equal(buf, "a", 1);

    /* In a read section, with the value. */
    assert_int_equal(shmkv_read_begin(kv), 0);
    shmkv_val_t v;
    assert_int_equal(shmkv_get_versioned(kv, "k", 1, &v, &v2), 0);
    assert_int_equal(v2, v1);
    assert_int_equal(shmkv_read_end(kv), 0);

    const char *what[] = {"set", "expire", "persist", "del", "flush"};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(shmkv_set(kv, "k", 1, "x", 1, 0, 0), 0);
        assert_int_equal(shmkv_version(kv, "k", 1, &v1), 0);
        int rc = i == 0   ? shmkv_set(kv, "k", 1, "y", 1, 0, 0)
                 : i == 1 ? shmkv_pexpire(kv, "k", 1, 100000)
                 : i == 2 ? shmkv_pexpire(kv, "k", 1, 0)
                 : i == 3 ? shmkv_del(kv, "k", 1)
                          : shmkv_flush(kv);
        assert_int_equal(rc, 0);
        shmkv_version(kv, "k", 1, &v2);
        if (v2 == v1)
            fail_msg("%s left the version as it was", what[i]);
        assert_int_equal(shmkv_cas(kv, "k", 1, "z", 1, 0, 0, v1),
                         SHMKV_ECHANGED);
    }
    /* NX with a CAS: both must hold. */
    assert_int_equal(shmkv_set(kv, "k", 1, "x", 1, 0, 0), 0);
    assert_int_equal(shmkv_version(kv, "k", 1, &v1), 0);
    assert_int_equal(shmkv_cas(kv, "k", 1, "z", 1, 0, SHMKV_NX, v1),
                     SHMKV_EEXIST);
    assert_int_equal(shmkv_cas(kv, "k", 1, "z", 1, 5000, SHMKV_XX, v1), 0);
    int64_t ttl;
    assert_int_equal(shmkv_pttl(kv, "k", 1, &ttl), 0);
    assert_in_range(ttl, 4900, 5000);
    finish(kv);
}

/* What an update function is told and asks for. */
struct step {
    int action;
    const char *val;
    int64_t expire_ms;
    int ret;
    /* seen */
    bool saw_old;
    char old[32];
    int64_t old_expire;
};

static int step_fn(void *arg, struct shmkv_update *u)
{
    struct step *s = arg;
    s->saw_old = u->old != NULL;
    if (u->old != NULL)
        snprintf(s->old, sizeof s->old, "%.*s", (int)u->old_len,
                 (const char *)u->old);
    s->old_expire = u->old_expire_ms;
    if (s->ret != 0)
        return s->ret;
    u->action = s->action;
    if (s->val != NULL) {
        u->val = s->val;
        u->vlen = strlen(s->val);
    }
    u->expire_ms = s->expire_ms;
    return 0;
}

static void test_update(void **state)
{
    (void)state;
    struct shmkv *kv = make_store(4u << 20, SHMKV_EVICT_NONE);
    struct step s = {.action = SHMKV_UPDATE_STORE, .val = "one"};
    assert_int_equal(shmkv_update(kv, "k", 1, step_fn, &s), 0);
    assert_false(s.saw_old);
    char buf[32];
    size_t len;
    assert_int_equal(shmkv_get_copy(kv, "k", 1, buf, sizeof buf, &len), 0);
    assert_memory_equal(buf, "one", 3);

    /* Keep the expiry, store another value. */
    assert_int_equal(shmkv_pexpire(kv, "k", 1, 60000), 0);
    s = (struct step){.action = SHMKV_UPDATE_STORE,
                      .val = "two",
                      .expire_ms = SHMKV_EXPIRE_KEEP};
    assert_int_equal(shmkv_update(kv, "k", 1, step_fn, &s), 0);
    assert_string_equal(s.old, "one");
    assert_true(s.old_expire > now_ms() + 59000);
    int64_t ttl;
    assert_int_equal(shmkv_pttl(kv, "k", 1, &ttl), 0);
    assert_in_range(ttl, 59000, 60000);

    /* A nonzero return: nothing changes, and it is returned. */
    s = (struct step){.action = SHMKV_UPDATE_REMOVE, .ret = 42};
    assert_int_equal(shmkv_update(kv, "k", 1, step_fn, &s), 42);
    assert_true(present(kv, "k"));

    /* Only the expiry. */
    s = (struct step){.action = SHMKV_UPDATE_EXPIRE, .expire_ms = 0};
    assert_int_equal(shmkv_update(kv, "k", 1, step_fn, &s), 0);
    assert_int_equal(shmkv_pttl(kv, "k", 1, &ttl), 0);
    assert_int_equal(ttl, -1);

    /* An expiry already past removes it, whichever the action. */
    s = (struct step){
        .action = SHMKV_UPDATE_STORE, .val = "x", .expire_ms = now_ms() - 5};
    assert_int_equal(shmkv_update(kv, "k", 1, step_fn, &s), 0);
    assert_false(present(kv, "k"));

    /* A value over the limit: refused, the old one kept. */
    assert_int_equal(shmkv_set(kv, "k", 1, "keep", 4, 0, 0), 0);
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    char *big = calloc(1, st.max_value_bytes + 2);
    memset(big, 'b', st.max_value_bytes + 1);
    s = (struct step){.action = SHMKV_UPDATE_STORE, .val = big};
    assert_int_equal(shmkv_update(kv, "k", 1, step_fn, &s), SHMKV_E2BIG);
    free(big);
    assert_int_equal(shmkv_get_copy(kv, "k", 1, buf, sizeof buf, &len), 0);
    assert_memory_equal(buf, "keep", 4);

    /* A value that points into the old one. */
    s = (struct step){.action = SHMKV_UPDATE_REMOVE};
    assert_int_equal(shmkv_update(kv, "k", 1, step_fn, &s), 0);
    assert_false(present(kv, "k"));
    s = (struct step){.action = 99};
    assert_int_equal(shmkv_update(kv, "k", 1, step_fn, &s), SHMKV_EINVAL);
    finish(kv);
}

/* The function stores a value that is the old one's tail. */
static int tail_fn(void *arg, struct shmkv_update *u)
{
    (void)arg;
    if (u->old == NULL)
        return 0;
    u->action = SHMKV_UPDATE_STORE;
    u->val = (const char *)u->old + 1;
    u->vlen = u->old_len - 1;
    u->expire_ms = SHMKV_EXPIRE_KEEP;
    return 0;
}

static void test_update_from_old_value(void **state)
{
    (void)state;
    struct shmkv *kv = make_store(4u << 20, SHMKV_EVICT_NONE);
    assert_int_equal(shmkv_set(kv, "k", 1, "abcdef", 6, 0, 0), 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(shmkv_update(kv, "k", 1, tail_fn, NULL), 0);
    char buf[8];
    size_t len;
    assert_int_equal(shmkv_get_copy(kv, "k", 1, buf, sizeof buf, &len), 0);
    assert_int_equal(len, 1);
    assert_memory_equal(buf, "f", 1);
    finish(kv);
}

static void test_write_section(void **state)
{
    (void)state;
    struct shmkv *kv = make_store(4u << 20, SHMKV_EVICT_NONE);
    assert_int_equal(shmkv_write_end(kv), SHMKV_ESTATE);
    assert_int_equal(shmkv_write_begin(kv), 0);
    assert_int_equal(shmkv_write_begin(kv), SHMKV_ESTATE);
    assert_int_equal(shmkv_set(kv, "a", 1, "1", 1, 0, 0), 0);
    int64_t n;
    assert_int_equal(shmkv_incr(kv, "a", 1, 5, &n), 0);
    assert_int_equal(n, 6);
    uint64_t v;
    assert_int_equal(shmkv_version(kv, "a", 1, &v), 0);
    assert_int_equal(shmkv_cas(kv, "a", 1, "7", 1, 0, 0, v), 0);
    /* Reads in it, of what it wrote. */
    assert_int_equal(shmkv_read_begin(kv), 0);
    shmkv_val_t val;
    assert_int_equal(shmkv_get(kv, "a", 1, &val), 0);
    assert_memory_equal(val.data, "7", 1);
    assert_int_equal(shmkv_set(kv, "b", 1, "1", 1, 0, 0), SHMKV_ESTATE);
    assert_int_equal(shmkv_read_end(kv), 0);
    struct shmkv_check_report rep;
    assert_int_equal(shmkv_check(kv, &rep), SHMKV_ESTATE);
    assert_int_equal(shmkv_resize(kv, 8u << 20, 0, NULL, NULL), SHMKV_ESTATE);

    /* Another writer (another process) waits for it. */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct shmkv *w = NULL;
        if (shmkv_open(store_key, 0, &w) != 0)
            _exit(1);
        shmkv_set_timeout(w, 100);
        int rc = shmkv_set(w, "c", 1, "1", 1, 0, 0);
        shmkv_close(w);
        _exit(rc == SHMKV_ETIMEDOUT ? 0 : 2);
    }
    reap(pid, false);
    assert_int_equal(shmkv_write_end(kv), 0);
    assert_int_equal(shmkv_set(kv, "c", 1, "1", 1, 0, 0), 0);
    check_clean(kv);
    finish(kv);
}

/* An lru store says how many live entries a write evicted. */
static void test_evicted_count(void **state)
{
    (void)state;
    struct shmkv *kv = make_store(1u << 20, SHMKV_EVICT_LRU);
    char val[1000];
    memset(val, 'v', sizeof val);
    unsigned evicted = 0;
    for (int i = 0; i < 4000; i++) {
        char key[16];
        int n = snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(shmkv_set(kv, key, (size_t)n, val, sizeof val, 0, 0),
                         0);
        evicted += shmkv_evicted(kv);
    }
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    assert_true(evicted > 0);
    assert_int_equal(evicted, st.evictions);
    assert_int_equal(shmkv_set(kv, "x", 1, "1", 1, 0, 0), 0);
    finish(kv);
}

/* ---- other processes ---- */

#define CAS_PROCS 4
#define CAS_INCRS 3000

/* Increments counter by compare-and-set, retrying on ECHANGED. */
static int cas_incr(struct shmkv *kv, long *retries)
{
    for (;;) {
        char buf[32];
        size_t len = 0;
        uint64_t ver;
        int rc = shmkv_version(kv, "counter", 7, &ver);
        if (rc != 0 && rc != SHMKV_ENOTFOUND)
            return rc;
        long n = 0;
        rc = shmkv_get_copy(kv, "counter", 7, buf, sizeof buf - 1, &len);
        if (rc == 0) {
            buf[len] = '\0';
            n = atol(buf);
        } else if (rc != SHMKV_ENOTFOUND) {
            return rc;
        }
        len = (size_t)snprintf(buf, sizeof buf, "%ld", n + 1);
        rc = shmkv_cas(kv, "counter", 7, buf, len, 0, 0, ver);
        if (rc != SHMKV_ECHANGED)
            return rc;
        (*retries)++;
    }
}

static int append_fn(void *arg, struct shmkv_update *u)
{
    char *buf = arg;
    size_t old = u->old != NULL ? u->old_len : 0;
    if (old + 1 > 4096)
        return SHMKV_E2BIG;
    if (old > 0)
        memcpy(buf, u->old, old);
    buf[old] = 'x';
    u->action = SHMKV_UPDATE_STORE;
    u->val = buf;
    u->vlen = old + 1;
    return 0;
}

/* Several processes read-modify-write the same keys: by CAS, by update,
 * and in write sections. Not one increment is lost. */
static void test_no_update_lost(void **state)
{
    (void)state;
    struct shmkv *kv = make_store(16u << 20, SHMKV_EVICT_NONE);
    pid_t pids[CAS_PROCS];
    for (int p = 0; p < CAS_PROCS; p++) {
        pids[p] = fork();
        assert_true(pids[p] >= 0);
        if (pids[p] != 0)
            continue;
        struct shmkv *w = NULL;
        if (shmkv_open(store_key, 0, &w) != 0)
            _exit(1);
        long retries = 0;
        char buf[4096];
        for (int i = 0; i < CAS_INCRS; i++) {
            if (cas_incr(w, &retries) != 0)
                _exit(2);
            if (i < 1000 && shmkv_update(w, "appended", 8, append_fn, buf) != 0)
                _exit(3);
            /* Read and write two keys in one write section: their sum
             * stays 0 for any reader that holds the lock. */
            if (shmkv_write_begin(w) != 0)
                _exit(4);
            int64_t a = 0;
            if (shmkv_incr(w, "pair.a", 6, 1, &a) != 0 ||
                shmkv_incr(w, "pair.b", 6, -1, NULL) != 0)
                _exit(5);
            shmkv_write_end(w);
        }
        fprintf(stderr, "process %d: %ld CAS retries\n", p, retries);
        shmkv_close(w);
        _exit(0);
    }
    for (int p = 0; p < CAS_PROCS; p++)
        reap(pids[p], false);
    char buf[4096];
    size_t len;
    assert_int_equal(shmkv_get_copy(kv, "counter", 7, buf, 31, &len), 0);
    buf[len] = '\0';
    assert_int_equal(atol(buf), CAS_PROCS * CAS_INCRS);
    assert_int_equal(shmkv_get_copy(kv, "appended", 8, buf, sizeof buf, &len),
                     0);
    assert_int_equal(len, CAS_PROCS * 1000);
    assert_int_equal(shmkv_get_copy(kv, "pair.a", 6, buf, 31, &len), 0);
    buf[len] = '\0';
    assert_int_equal(atol(buf), CAS_PROCS * CAS_INCRS);
    finish(kv);
}

/* The function of an update whose process dies in it, holding the lock. */
static int die_fn(void *arg, struct shmkv_update *u)
{
    (void)arg;
    (void)u;
    raise(SIGKILL);
    return 0;
}

/* A writer killed inside a write section, after some of its writes, and
 * one killed inside an update's function: the next writer goes on, every
 * write the dead one completed stays, and the store checks clean. */
static void test_killed_holding_the_lock(void **state)
{
    (void)state;
    struct shmkv *kv = make_store(8u << 20, SHMKV_EVICT_NONE);
    for (int round = 0; round < 2; round++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            struct shmkv *w = NULL;
            if (shmkv_open(store_key, 0, &w) != 0)
                _exit(1);
            if (round == 0) {
                shmkv_write_begin(w);
                shmkv_set(w, "done", 4, "yes", 3, 0, 0);
                raise(SIGKILL);
            }
            shmkv_set(w, "done2", 5, "yes", 3, 0, 0);
            shmkv_update(w, "done2", 5, die_fn, NULL);
            _exit(1);
        }
        reap(pid, true);
        assert_int_equal(shmkv_set(kv, "after", 5, "1", 1, 0, 0), 0);
        assert_true(present(kv, round == 0 ? "done" : "done2"));
    }
    check_clean(kv);
    finish(kv);
}

/* ---- fill leases ---- */

static void test_lease_basics(void **state)
{
    (void)state;
    struct shmkv *kv = make_store(4u << 20, SHMKV_EVICT_NONE);
    int32_t holder = 0;
    assert_int_equal(shmkv_lease_take(kv, "k", 1, 0, NULL), SHMKV_EINVAL);
    assert_int_equal(shmkv_lease_take(kv, "k", 1, 60000, NULL), 0);
    /* Held once, even by its holder. */
    assert_int_equal(shmkv_lease_take(kv, "k", 1, 60000, &holder), SHMKV_EBUSY);
    assert_int_equal(holder, getpid());
    assert_int_equal(shmkv_lease_take(kv, "other", 5, 60000, NULL), 0);
    assert_int_equal(shmkv_lease_release(kv, "k", 1), 0);
    assert_int_equal(shmkv_lease_release(kv, "k", 1), SHMKV_ENOTFOUND);
    /* A lease ends when its time passes. */
    assert_int_equal(shmkv_lease_take(kv, "k", 1, 30, NULL), 0);
    sleep_ms(50);
    assert_int_equal(shmkv_lease_take(kv, "k", 1, 60000, NULL), 0);

    /* A holder that dies frees its lease at once; a process that takes
     * its slot afterwards does not hold it. */
    for (int round = 0; round < 2; round++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            struct shmkv *w = NULL;
            if (shmkv_open(store_key, 0, &w) != 0)
                _exit(1);
            if (round == 0) {
                if (shmkv_lease_take(w, "dies", 4, 60000, NULL) != 0)
                    _exit(2);
                raise(SIGKILL);
            }
            /* Round 1: likely in the dead process's slot. */
            _exit(shmkv_lease_release(w, "dies", 4) == SHMKV_ENOTFOUND ? 0 : 3);
        }
        reap(pid, round == 0);
    }
    assert_int_equal(shmkv_lease_take(kv, "dies", 4, 60000, NULL), 0);

    /* The table is bounded. */
    int taken = 0, rc = 0;
    for (int i = 0; i < 2000 && rc == 0; i++) {
        char key[16];
        int n = snprintf(key, sizeof key, "l%d", i);
        rc = shmkv_lease_take(kv, key, (size_t)n, 60000, NULL);
        taken += rc == 0;
    }
    assert_int_equal(rc, SHMKV_ELIMIT);
    assert_int_equal(taken, 1024 - 3);
    finish(kv);
}

static void test_get_stale(void **state)
{
    (void)state;
    struct shmkv *kv = make_store(4u << 20, SHMKV_EVICT_NONE);
    assert_int_equal(shmkv_pset(kv, "k", 1, "old", 3, 30, 0), 0);
    assert_int_equal(shmkv_read_begin(kv), 0);
    shmkv_val_t v;
    int64_t stale = -1;
    assert_int_equal(shmkv_get_stale(kv, "k", 1, &v, &stale), 0);
    assert_int_equal(stale, 0);
    assert_int_equal(shmkv_read_end(kv), 0);
    sleep_ms(80);
    assert_false(present(kv, "k"));
    assert_int_equal(shmkv_read_begin(kv), 0);
    assert_int_equal(shmkv_get_stale(kv, "k", 1, &v, &stale), 0);
    assert_in_range(stale, 40, 1000);
    assert_memory_equal(v.data, "old", 3);
    assert_int_equal(shmkv_get_stale(kv, "nope", 4, &v, &stale),
                     SHMKV_ENOTFOUND);
    assert_int_equal(shmkv_read_end(kv), 0);
    finish(kv);
}

/* A fill that counts its calls in the store, takes its time, and may
 * die half way. */
struct slow_fill {
    struct shmkv *kv;
    long ms;
    bool die;
};

static int slow_fill_fn(void *arg, const void *key, size_t klen,
                        struct shmkv_filled *out)
{
    (void)key;
    (void)klen;
    struct slow_fill *f = arg;
    shmkv_incr(f->kv, "fills", 5, 1, NULL);
    sleep_ms(f->ms);
    if (f->die)
        raise(SIGKILL);
    out->val = "computed";
    out->vlen = 8;
    out->ttl_ms = 60000;
    return 0;
}

static long counter(struct shmkv *kv, const char *key)
{
    char buf[32];
    size_t len = 0;
    if (shmkv_get_copy(kv, key, strlen(key), buf, sizeof buf - 1, &len) != 0)
        return 0;
    buf[len] = '\0';
    return atol(buf);
}

#define STAMPEDE 8

/* Eight processes miss the same key at once: one computes it, the others
 * wait for its value. Then the filler is killed half way: a waiter takes
 * over at once and fills. */
static void test_get_or_fill_stampede(void **state)
{
    (void)state;
    struct shmkv *kv = make_store(8u << 20, SHMKV_EVICT_NONE);
    for (int round = 0; round < 2; round++) {
        const char *key = round == 0 ? "hot" : "hot2";
        pid_t pids[STAMPEDE];
        for (int p = 0; p < STAMPEDE; p++) {
            pids[p] = fork();
            assert_true(pids[p] >= 0);
            if (pids[p] != 0)
                continue;
            struct shmkv *w = NULL;
            if (shmkv_open(store_key, 0, &w) != 0)
                _exit(1);
            /* Round 1: the first process starts alone and dies filling. */
            if (round == 1 && p > 0)
                sleep_ms(20);
            struct slow_fill sf = {
                .kv = w, .ms = 100, .die = round == 1 && p == 0};
            struct shmkv_fill f = {
                .fill = slow_fill_fn, .arg = &sf, .wait_ms = 5000};
            char buf[16];
            size_t len = 0;
            int rc = shmkv_get_or_fill(w, key, strlen(key), buf, sizeof buf,
                                       &len, &f);
            if (rc != 0 || len != 8 || memcmp(buf, "computed", 8) != 0)
                _exit(2);
            char name[32];
            snprintf(name, sizeof name, "outcome.%d", f.outcome);
            shmkv_incr(w, name, strlen(name), 1, NULL);
            shmkv_close(w);
            _exit(0);
        }
        for (int p = 0; p < STAMPEDE; p++)
            reap(pids[p], round == 1 && p == 0);
        /* One fill (two in round 1: the dead one's and its successor's). */
        assert_int_equal(counter(kv, "fills"), round == 0 ? 1 : 3);
        char name[32];
        snprintf(name, sizeof name, "outcome.%d", SHMKV_FILL_FILLED);
        assert_int_equal(counter(kv, name), round == 0 ? 1 : 2);
        snprintf(name, sizeof name, "outcome.%d", SHMKV_FILL_WAITED);
        assert_int_equal(counter(kv, name),
                         round == 0 ? STAMPEDE - 1 : 2 * STAMPEDE - 3);
    }

    /* Hit, and a stale value while another fills. */
    struct slow_fill sf = {.kv = kv, .ms = 1};
    struct shmkv_fill f = {.fill = slow_fill_fn, .arg = &sf};
    char buf[16];
    size_t len;
    assert_int_equal(shmkv_get_or_fill(kv, "hot", 3, buf, sizeof buf, &len, &f),
                     0);
    assert_int_equal(f.outcome, SHMKV_FILL_HIT);
    assert_int_equal(shmkv_pset(kv, "st", 2, "stale", 5, 20, 0), 0);
    sleep_ms(40);
    assert_int_equal(shmkv_lease_take(kv, "st", 2, 60000, NULL), 0);
    f = (struct shmkv_fill){
        .fill = slow_fill_fn, .arg = &sf, .flags = SHMKV_FILL_STALE};
    assert_int_equal(shmkv_get_or_fill(kv, "st", 2, buf, sizeof buf, &len, &f),
                     0);
    assert_int_equal(f.outcome, SHMKV_FILL_STALE_VALUE);
    assert_true(f.stale_ms >= 20);
    assert_memory_equal(buf, "stale", 5);
    /* Without it: a bounded wait. */
    f = (struct shmkv_fill){.fill = slow_fill_fn, .arg = &sf, .wait_ms = 30};
    assert_int_equal(shmkv_get_or_fill(kv, "st", 2, buf, sizeof buf, &len, &f),
                     SHMKV_ETIMEDOUT);
    finish(kv);
}

int main(void)
{
    test_cleanup_install();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ttl_milliseconds),
        cmocka_unit_test(test_walks_in_milliseconds),
        cmocka_unit_test(test_versions_and_cas),
        cmocka_unit_test(test_update),
        cmocka_unit_test(test_update_from_old_value),
        cmocka_unit_test(test_write_section),
        cmocka_unit_test(test_evicted_count),
        cmocka_unit_test(test_no_update_lost),
        cmocka_unit_test(test_killed_holding_the_lock),
        cmocka_unit_test(test_lease_basics),
        cmocka_unit_test(test_get_stale),
        cmocka_unit_test(test_get_or_fill_stampede),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
