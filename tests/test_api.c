/*
 * Unit tests of the public client API (include/shmkv.h), each against a
 * store of its own: attaching by key, ftok and config file and the errors
 * of a bad `where`; set/get/get_copy/del/incr/flush round trips with binary
 * keys and values; read sections and zero-copy values; NX/XX/KEEPTTL; TTLs
 * and expire_scan; a full noeviction store and an lru store written far
 * past its capacity; every bad argument; read-only handles; a store of
 * another layout version and a segment that is not a store; stats and the
 * consistency check.
 *
 * Stores come from test_create (testutil.h) and are removed at exit or on
 * a failed assertion. Raw segments made here are removed by the test that
 * made them before it asserts anything, and at exit.
 */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "layout.h"
#include "testutil.h"

/* Fails with both the code's name and the library's detail. */
#define assert_rc(expr, want)                                                  \
    do {                                                                       \
        int rc_ = (expr);                                                      \
        int want_ = (want);                                                    \
        if (rc_ != want_)                                                      \
            fail_msg("%s: got %d (%s; %s), want %d (%s)", #expr, rc_,          \
                     shmkv_strerror(rc_), shmkv_last_error(), want_,           \
                     shmkv_strerror(want_));                                   \
    } while (0)

#define assert_ok(expr) assert_rc((expr), 0)

/* A non-NULL handle value, to see that a failed call sets *out to NULL. */
static char handle_sentinel;
#define NOT_A_HANDLE ((shmkv_t *)(void *)&handle_sentinel)

/* ---------------------------------------------------------------------- */
/* Helpers */

/* A store made by test_create; key is its spec, for test_destroy and for
 * opening more handles. */
struct store {
    shmkv_t *kv;
    char key[32];
};

static void store_make(struct store *s, struct shmkv_options *o)
{
    int rc = test_create(o, &s->kv);
    if (rc != 0)
        fail_msg("test_create: %s (%s)", shmkv_strerror(rc),
                 shmkv_last_error());
    snprintf(s->key, sizeof s->key, "%s", o->key);
}

/* A store of size_bytes with the given policy and default limits. */
static void store_small(struct store *s, uint64_t size_bytes,
                        enum shmkv_eviction eviction)
{
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = size_bytes;
    o.eviction = eviction;
    store_make(s, &o);
}

static void store_drop(struct store *s)
{
    test_destroy(s->kv, s->key);
    s->kv = NULL;
}

static struct shmkv_stats stats_of(shmkv_t *kv)
{
    struct shmkv_stats st;
    assert_ok(shmkv_stats(kv, &st));
    return st;
}

static void assert_check_clean(shmkv_t *kv)
{
    struct shmkv_check_report r;
    memset(&r, 0xa5, sizeof r);
    int rc = shmkv_check(kv, &r);
    if (rc != 0 || r.problems != 0)
        fail_msg("check: %s, %" PRIu64 " problems (%s)", shmkv_strerror(rc),
                 r.problems, r.first_problem);
    struct shmkv_stats st = stats_of(kv);
    assert_int_equal(r.entries_seen, st.entries);
    assert_int_equal(r.bytes_leaked, 0);
}

/* The counters and contents that a refused call must leave alone. */
static void assert_same_state(const struct shmkv_stats *a,
                              const struct shmkv_stats *b)
{
    assert_int_equal(a->entries, b->entries);
    assert_int_equal(a->entries_with_ttl, b->entries_with_ttl);
    assert_int_equal(a->bytes_used, b->bytes_used);
    assert_int_equal(a->bytes_free, b->bytes_free);
    assert_int_equal(a->hits, b->hits);
    assert_int_equal(a->misses, b->misses);
    assert_int_equal(a->sets, b->sets);
    assert_int_equal(a->deletes, b->deletes);
    assert_int_equal(a->evictions, b->evictions);
    assert_int_equal(a->expirations, b->expirations);
}

/* Asserts key holds exactly (val, vlen), read both ways. */
static void assert_value(shmkv_t *kv, const void *key, size_t klen,
                         const void *val, size_t vlen)
{
    char buf[4096];
    size_t got = (size_t)-1;
    assert_true(vlen <= sizeof buf);
    assert_ok(shmkv_get_copy(kv, key, klen, buf, sizeof buf, &got));
    assert_int_equal(got, vlen);
    assert_memory_equal(buf, val, vlen);

    shmkv_val_t v = {NULL, (size_t)-1};
    assert_ok(shmkv_read_begin(kv));
    int rc = shmkv_get(kv, key, klen, &v);
    if (rc == 0) {
        assert_int_equal(v.len, vlen);
        if (vlen > 0)
            assert_memory_equal(v.data, val, vlen);
    }
    assert_ok(shmkv_read_end(kv));
    assert_ok(rc);
}

static void assert_value_str(shmkv_t *kv, const char *key, const char *val)
{
    assert_value(kv, key, strlen(key), val, strlen(val));
}

static void assert_absent(shmkv_t *kv, const void *key, size_t klen)
{
    char buf[8];
    size_t got = 12345;
    assert_rc(shmkv_get_copy(kv, key, klen, buf, sizeof buf, &got),
              SHMKV_ENOTFOUND);
    shmkv_val_t v;
    assert_ok(shmkv_read_begin(kv));
    int rc = shmkv_get(kv, key, klen, &v);
    assert_ok(shmkv_read_end(kv));
    assert_rc(rc, SHMKV_ENOTFOUND);
}

static int set_str(shmkv_t *kv, const char *key, const char *val,
                   uint32_t ttl_s, int flags)
{
    return shmkv_set(kv, key, strlen(key), val, strlen(val), ttl_s, flags);
}

static int64_t ttl_of(shmkv_t *kv, const char *key)
{
    int64_t t = INT64_MIN;
    assert_ok(shmkv_ttl(kv, key, strlen(key), &t));
    return t;
}

static key_t sysv_key_of(const char *spec)
{
    int32_t k = 0;
    assert_ok(shmkv_parse_key(spec, &k));
    return (key_t)k;
}

/* Sleeps until just after the realtime clock starts a new second, so that
 * a 1-second TTL set now cannot run out before the next few checks. */
static void sleep_to_second_start(void)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct timespec pause = {0, 1000000000L - now.tv_nsec + 30000000L};
    if (pause.tv_nsec >= 1000000000L) {
        pause.tv_sec++;
        pause.tv_nsec -= 1000000000L;
    }
    nanosleep(&pause, NULL);
}

static void sleep_ms(long ms)
{
    struct timespec pause = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&pause, &pause) != 0 && errno == EINTR)
        ;
}

/* Raw (non-shmkv) segments made by the tests, removed at exit too. */
#define MAX_RAW_SEGMENTS 8
static int raw_ids[MAX_RAW_SEGMENTS];
static int raw_count;
static pid_t raw_owner;

static void raw_remove_all(void)
{
    if (getpid() != raw_owner)
        return;
    for (int i = 0; i < raw_count; i++)
        if (raw_ids[i] >= 0)
            shmctl(raw_ids[i], IPC_RMID, NULL);
    raw_count = 0;
}

/* Creates a plain segment of bytes at key, filled by fill (may be NULL). */
static int raw_segment_make(key_t key, size_t bytes, const void *fill,
                            size_t fill_len)
{
    if (raw_owner != getpid()) {
        raw_owner = getpid();
        atexit(raw_remove_all);
    }
    assert_true(raw_count < MAX_RAW_SEGMENTS);
    int id = shmget(key, bytes, IPC_CREAT | IPC_EXCL | 0600);
    if (id < 0)
        fail_msg("shmget(0x%08x): %s", (unsigned)key, strerror(errno));
    raw_ids[raw_count++] = id;
    if (fill != NULL) {
        void *p = shmat(id, NULL, 0);
        assert_true(p != (void *)-1);
        memcpy(p, fill, fill_len);
        shmdt(p);
    }
    return id;
}

static void raw_segment_remove(int id)
{
    shmctl(id, IPC_RMID, NULL);
    for (int i = 0; i < raw_count; i++)
        if (raw_ids[i] == id)
            raw_ids[i] = -1;
}

/* Creates a store at a chosen key spec (not a test_unique_key one),
 * registered for removal at exit like a test_create store. */
static int create_at(struct shmkv_options *o, const char *spec, shmkv_t **out)
{
    test_cleanup_install();
    o->key = spec;
    int rc = shmkv_create(o, out);
    if (rc == 0 && test_store_count < TEST_MAX_STORES) {
        snprintf(test_store_keys[test_store_count], 32, "%s", spec);
        test_store_count++;
    }
    return rc;
}

/* A temporary file with the given contents; its path in path (64 bytes). */
static void temp_file(char *path, const char *contents)
{
    snprintf(path, 64, "/tmp/shmkv-test-api-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t len = strlen(contents);
    assert_int_equal(write(fd, contents, len), (ssize_t)len);
    close(fd);
}

/* ---------------------------------------------------------------------- */
/* Error names */

static void test_strerror_every_code_distinct(void **state)
{
    (void)state;
    static const int codes[] = {
        SHMKV_OK,       SHMKV_EINVAL,    SHMKV_ENOTFOUND, SHMKV_EEXIST,
        SHMKV_E2BIG,    SHMKV_ENOBUFS,   SHMKV_ENOSPC,    SHMKV_ETIMEDOUT,
        SHMKV_ENOSTORE, SHMKV_EACCES,    SHMKV_EVERSION,  SHMKV_ENOTSHMKV,
        SHMKV_ELIMIT,   SHMKV_ERDONLY,   SHMKV_ENOTNUM,   SHMKV_EOVERFLOW,
        SHMKV_ECLOSED,  SHMKV_ESTATE,    SHMKV_ECLIENTS,  SHMKV_ECORRUPT,
        SHMKV_ECONFIG,  SHMKV_ENOMEM,    SHMKV_ESYS,      SHMKV_EOWNED,
        SHMKV_ESTALE,   SHMKV_EFORKED,   SHMKV_EBUSY,     SHMKV_EAGAIN,
        SHMKV_ECHANGED, SHMKV_EMIRRORED,
    };
    const size_t n = sizeof codes / sizeof codes[0];
    /* The codes are 0, -1, ..., -(n-1): none is left out above. */
    for (size_t i = 0; i < n; i++)
        assert_int_equal(codes[i], -(int)i);
    const char *unknown = shmkv_strerror(-(int)n);
    assert_non_null(unknown);
    assert_true(unknown[0] != '\0');
    for (size_t i = 0; i < n; i++) {
        const char *a = shmkv_strerror(codes[i]);
        assert_non_null(a);
        assert_true(a[0] != '\0');
        assert_string_not_equal(a, unknown);
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(a, shmkv_strerror(codes[j]));
    }
    /* Out-of-range codes still get a string. */
    assert_string_equal(shmkv_strerror(1), unknown);
    assert_string_equal(shmkv_strerror(-1000), unknown);
    assert_string_equal(shmkv_strerror(INT32_MIN), unknown);
    assert_non_null(shmkv_last_error());
}

/* ---------------------------------------------------------------------- */
/* Attaching */

static void test_open_by_key_forms(void **state)
{
    (void)state;
    struct store s;
    store_small(&s, 1u << 20, SHMKV_EVICT_NONE);
    assert_ok(set_str(s.kv, "k", "owner", 0, 0));

    key_t key = sysv_key_of(s.key);
    char bare[32], decimal[32];
    snprintf(bare, sizeof bare, "0x%08x", (unsigned)key);
    snprintf(decimal, sizeof decimal, "%u", (unsigned)key);
    const char *forms[] = {s.key, bare, decimal};
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        shmkv_t *h = NOT_A_HANDLE; /* must be overwritten */
        int rc = shmkv_open(forms[i], 0, &h);
        if (rc != 0)
            fail_msg("open '%s': %s (%s)", forms[i], shmkv_strerror(rc),
                     shmkv_last_error());
        assert_non_null(h);
        assert_value_str(h, "k", "owner");
        /* A write through this handle is seen by the owner. */
        assert_ok(set_str(h, "via", forms[i], 0, 0));
        assert_value_str(s.kv, "via", forms[i]);
        struct shmkv_stats st = stats_of(h);
        assert_int_equal(st.clients, 2);
        shmkv_close(h);
        assert_int_equal(stats_of(s.kv).clients, 1);
    }
    /* Several handles at once in one process. */
    shmkv_t *h1, *h2;
    assert_ok(shmkv_open(s.key, 0, &h1));
    assert_ok(shmkv_open(s.key, SHMKV_RDONLY, &h2));
    assert_int_equal(stats_of(s.kv).clients, 3);
    assert_value_str(h2, "k", "owner");
    shmkv_close(h1);
    shmkv_close(h2);
    shmkv_close(NULL); /* accepted */
    /* Closing handles does not remove the store. */
    assert_value_str(s.kv, "k", "owner");
    store_drop(&s);
}

static void test_open_by_ftok(void **state)
{
    (void)state;
    char path[64];
    temp_file(path, "");
    char spec[128];
    snprintf(spec, sizeof spec, "ftok:%s:1", path);
    key_t want = ftok(path, 1);
    assert_true(want != (key_t)-1);
    int32_t parsed = 0;
    assert_ok(shmkv_parse_key(spec, &parsed));
    assert_int_equal((uint32_t)parsed, (uint32_t)want);

    if (shmget(want, 0, 0) >= 0) {
        /* Someone else's segment sits at this ftok key: leave it be. */
        unlink(path);
        print_message("key 0x%08x of %s is taken: skipping the ftok open\n",
                      (unsigned)want, path);
        skip();
    }
    /* Nothing there yet. */
    shmkv_t *h = NULL;
    assert_rc(shmkv_open(spec, 0, &h), SHMKV_ENOSTORE);
    assert_null(h);

    char numeric[32];
    snprintf(numeric, sizeof numeric, "key:0x%08x", (unsigned)want);
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = 1u << 20;
    shmkv_t *owner = NULL;
    int rc = create_at(&o, numeric, &owner);
    if (rc == SHMKV_EEXIST) {
        unlink(path);
        print_message("key 0x%08x was taken meanwhile: skipping\n",
                      (unsigned)want);
        skip();
    }
    assert_ok(rc);
    assert_ok(set_str(owner, "made", "by key", 0, 0));

    rc = shmkv_open(spec, 0, &h);
    if (rc != 0) {
        unlink(path);
        fail_msg("open '%s': %s (%s)", spec, shmkv_strerror(rc),
                 shmkv_last_error());
    }
    assert_value_str(h, "made", "by key");
    assert_ok(set_str(h, "via", "ftok", 0, 0));
    assert_value_str(owner, "via", "ftok");
    shmkv_close(h);

    /* Another proj_id names another key: nothing there. */
    snprintf(spec, sizeof spec, "ftok:%s:2", path);
    if (shmget(ftok(path, 2), 0, 0) < 0)
        assert_rc(shmkv_open(spec, 0, &h), SHMKV_ENOSTORE);
    unlink(path);
    test_destroy(owner, numeric);
}

static void test_open_by_config_file(void **state)
{
    (void)state;
    struct store s;
    store_small(&s, 1u << 20, SHMKV_EVICT_NONE);
    assert_ok(set_str(s.kv, "k", "from config", 0, 0));

    char conf[512], path[64];
    snprintf(conf, sizeof conf,
             "; a shmkvd config\n"
             "[daemon]\n"
             "socket = /nonexistent/shmkvd.sock\n"
             "\n"
             "[store]\n"
             "size = 1M\n"
             "key = %s\n",
             s.key);
    temp_file(path, conf);
    shmkv_t *h = NULL;
    int rc = shmkv_open(path, 0, &h);
    unlink(path);
    if (rc != 0)
        fail_msg("open by config: %s (%s)", shmkv_strerror(rc),
                 shmkv_last_error());
    assert_value_str(h, "k", "from config");
    shmkv_close(h);

    /* A bare number as the config's key works too. */
    snprintf(conf, sizeof conf, "[store]\nkey = 0x%08x\n",
             (unsigned)sysv_key_of(s.key));
    temp_file(path, conf);
    rc = shmkv_open(path, SHMKV_RDONLY, &h);
    unlink(path);
    assert_ok(rc);
    assert_value_str(h, "k", "from config");
    shmkv_close(h);

    /* Bad configs: each is SHMKV_ECONFIG naming the file. */
    static const char *const bad[] = {
        "[daemon]\nsocket = /x\n",         /* no [store] key */
        "[store]\nsize = 1M\n",            /* no key either */
        "[store]\nkey = not-a-key\n",      /* key that does not parse */
        "[store]\nkey = 0\n",              /* IPC_PRIVATE is no key */
        "[store]\nthis line is not ini\n", /* syntax */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        temp_file(path, bad[i]);
        h = NOT_A_HANDLE;
        rc = shmkv_open(path, 0, &h);
        char detail[512];
        snprintf(detail, sizeof detail, "%s", shmkv_last_error());
        unlink(path);
        if (rc != SHMKV_ECONFIG)
            fail_msg("config %zu: got %s (%s)", i, shmkv_strerror(rc), detail);
        assert_null(h);
        if (strstr(detail, path) == NULL)
            fail_msg("config %zu: detail '%s' does not name %s", i, detail,
                     path);
    }
    /* The syntax error names its line. */
    temp_file(path, "[store]\nkey = 0x1234\nbroken line\n");
    rc = shmkv_open(path, 0, &h);
    char detail[512];
    snprintf(detail, sizeof detail, "%s", shmkv_last_error());
    unlink(path);
    assert_rc(rc, SHMKV_ECONFIG);
    char where[80];
    snprintf(where, sizeof where, "%s:3", path);
    if (strstr(detail, where) == NULL)
        fail_msg("detail '%s' does not name %s", detail, where);

    /* A missing file. */
    assert_rc(shmkv_open("/nonexistent/dir/shmkvd.conf", 0, &h), SHMKV_ECONFIG);
    assert_non_null(strstr(shmkv_last_error(), "/nonexistent/dir"));

    /* A good config that names a key with no store. */
    char nostore[32];
    snprintf(nostore, sizeof nostore, "%s", test_unique_key());
    assert_true(shmget(sysv_key_of(nostore), 0, 0) < 0);
    snprintf(conf, sizeof conf, "[store]\nkey = %s\n", nostore);
    temp_file(path, conf);
    rc = shmkv_open(path, 0, &h);
    unlink(path);
    assert_rc(rc, SHMKV_ENOSTORE);
    store_drop(&s);
}

static void test_bad_where_strings(void **state)
{
    (void)state;
    static const char *const bad_keys[] = {
        "key:",
        "key:0x",
        "key:0xZZ",
        "key:0x5eed0001x",
        "key:0",           /* IPC_PRIVATE */
        "key:0x100000000", /* over 32 bits */
        "key:-1",
        "key:-4294967295",
        "key: -4294967295",           /* a negative number after a space */
        "key: -18446744073709551615", /* one that wraps around to 1 */
        "key:0x5eed0001-",
        "key:1 2",
        "0x",
        "0xfffffffff",
        "12abc",
        "ftok:",
        "ftok:/tmp",   /* no proj_id */
        "ftok::1",     /* no path */
        "ftok:/tmp:0", /* proj_id 1 to 255 */
        "ftok:/tmp:256",
        "ftok:/tmp:x",
        "ftok:/tmp:1x",
        "ftok:/nonexistent/path/for/ftok:1",
    };
    for (size_t i = 0; i < sizeof bad_keys / sizeof bad_keys[0]; i++) {
        shmkv_t *h = NOT_A_HANDLE;
        int rc = shmkv_open(bad_keys[i], 0, &h);
        if (rc != SHMKV_EINVAL)
            fail_msg("open '%s': got %s (%s), want %s", bad_keys[i],
                     shmkv_strerror(rc), shmkv_last_error(),
                     shmkv_strerror(SHMKV_EINVAL));
        assert_null(h);
        /* The detail says what was wrong, not a stale message. */
        const char *detail = shmkv_last_error();
        assert_true(detail[0] != '\0');
        assert_string_not_equal(detail, "no error");
        int32_t k = 0x5a5a5a5a;
        rc = shmkv_parse_key(bad_keys[i], &k);
        if (rc != SHMKV_EINVAL)
            fail_msg("parse '%s': got %s", bad_keys[i], shmkv_strerror(rc));
        assert_int_equal(k, 0x5a5a5a5a); /* untouched */
        /* Nothing to remove there either. */
        assert_rc(shmkv_remove(bad_keys[i]), SHMKV_EINVAL);
    }
    shmkv_t *h = NOT_A_HANDLE;
    assert_rc(shmkv_open(NULL, 0, &h), SHMKV_EINVAL);
    assert_null(h);
    h = NOT_A_HANDLE;
    assert_rc(shmkv_open("", 0, &h), SHMKV_EINVAL);
    assert_null(h);
    assert_rc(shmkv_remove(NULL), SHMKV_EINVAL);
    assert_rc(shmkv_remove(""), SHMKV_EINVAL);
    int32_t k;
    assert_rc(shmkv_parse_key(NULL, &k), SHMKV_EINVAL);
    assert_rc(shmkv_parse_key("key:0x1", NULL), SHMKV_EINVAL);

    /* The good forms parse to the number they spell. */
    assert_ok(shmkv_parse_key("key:0x5eed0001", &k));
    assert_int_equal((uint32_t)k, 0x5eed0001u);
    assert_ok(shmkv_parse_key("0x5eed0002", &k));
    assert_int_equal((uint32_t)k, 0x5eed0002u);
    assert_ok(shmkv_parse_key("1234", &k));
    assert_int_equal(k, 1234);
    assert_ok(shmkv_parse_key("key:0xffffffff", &k));
    assert_int_equal((uint32_t)k, 0xffffffffu);
    /* A non-key string is taken as a config file path. */
    assert_rc(shmkv_open("not-a-key-and-not-a-file", 0, &h), SHMKV_ECONFIG);
}

static void test_open_no_store(void **state)
{
    (void)state;
    char spec[32];
    snprintf(spec, sizeof spec, "%s", test_unique_key());
    assert_true(shmget(sysv_key_of(spec), 0, 0) < 0);
    shmkv_t *h = NOT_A_HANDLE;
    assert_rc(shmkv_open(spec, 0, &h), SHMKV_ENOSTORE);
    assert_null(h);
    assert_non_null(strstr(shmkv_last_error(), spec + 4)); /* the number */
    assert_rc(shmkv_open(spec, SHMKV_RDONLY, &h), SHMKV_ENOSTORE);
    assert_rc(shmkv_remove(spec), SHMKV_ENOSTORE);
    assert_rc(shmkv_adopt(spec, &h), SHMKV_ENOSTORE);
    /* After a store is destroyed its key is free again. */
    struct store s;
    store_small(&s, 1u << 20, SHMKV_EVICT_NONE);
    char gone[32];
    snprintf(gone, sizeof gone, "%s", s.key);
    store_drop(&s);
    assert_rc(shmkv_open(gone, 0, &h), SHMKV_ENOSTORE);
    assert_true(shmget(sysv_key_of(gone), 0, 0) < 0);
}

static void test_open_not_shmkv(void **state)
{
    (void)state;
    struct {
        size_t bytes;
        const char *fill;
    } cases[] = {
        {64, NULL},                                 /* smaller than a header */
        {1u << 16, NULL},                           /* zeros: no magic */
        {1u << 16, "NOTSHMKV and some more bytes"}, /* another magic */
        {1u << 16, "SHMKVDAT"},                     /* a data segment's magic */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char spec[32];
        snprintf(spec, sizeof spec, "%s", test_unique_key());
        key_t key = sysv_key_of(spec);
        int id = raw_segment_make(key, cases[i].bytes, cases[i].fill,
                                  cases[i].fill ? strlen(cases[i].fill) : 0);
        shmkv_t *h = NULL;
        int open_rc = shmkv_open(spec, 0, &h);
        char detail[512];
        snprintf(detail, sizeof detail, "%s", shmkv_last_error());
        int ro_rc = shmkv_open(spec, SHMKV_RDONLY, &h);
        /* shmkv_remove refuses what is not a store, and leaves it. */
        int remove_rc = shmkv_remove(spec);
        struct shmid_ds ds;
        int still_there = shmctl(id, IPC_STAT, &ds) == 0;
        raw_segment_remove(id);
        if (open_rc != SHMKV_ENOTSHMKV)
            fail_msg("case %zu: open got %s (%s)", i, shmkv_strerror(open_rc),
                     detail);
        assert_rc(ro_rc, SHMKV_ENOTSHMKV);
        assert_null(h);
        assert_true(detail[0] != '\0');
        assert_rc(remove_rc, SHMKV_ENOTSHMKV);
        assert_true(still_there);
        /* Creating a store where a segment exists is refused. */
        struct shmkv_options o;
        shmkv_options_init(&o);
        o.size_bytes = 1u << 20;
        o.key = spec;
        id = raw_segment_make(key, 64, NULL, 0);
        shmkv_t *made = NULL;
        int create_rc = shmkv_create(&o, &made);
        raw_segment_remove(id);
        if (create_rc == 0)
            shmkv_destroy(made);
        assert_rc(create_rc, SHMKV_EEXIST);
        assert_null(made);
    }
}

/* Overwrites 4 bytes at off in the control segment of the store at spec;
 * returns the old value. */
static uint32_t ctl_poke32(const char *spec, size_t off, uint32_t value)
{
    int id = shmget(sysv_key_of(spec), 0, 0);
    assert_true(id >= 0);
    char *p = shmat(id, NULL, 0);
    assert_true(p != (char *)-1);
    uint32_t old;
    memcpy(&old, p + off, sizeof old);
    memcpy(p + off, &value, sizeof value);
    shmdt(p);
    return old;
}

static void test_open_wrong_version(void **state)
{
    (void)state;
    struct store s;
    store_small(&s, 1u << 20, SHMKV_EVICT_NONE);
    assert_ok(set_str(s.kv, "k", "v", 0, 0));

    /* Another layout version: refused with the version error. */
    const size_t voff = offsetof(struct ctl_header, layout_version);
    uint32_t old = ctl_poke32(s.key, voff, LAYOUT_VERSION + 1);
    shmkv_t *h = NULL;
    int rc = shmkv_open(s.key, 0, &h);
    char detail[512];
    snprintf(detail, sizeof detail, "%s", shmkv_last_error());
    int ro_rc = shmkv_open(s.key, SHMKV_RDONLY, &h);
    ctl_poke32(s.key, voff, old);
    assert_int_equal(old, LAYOUT_VERSION);
    assert_rc(rc, SHMKV_EVERSION);
    assert_rc(ro_rc, SHMKV_EVERSION);
    assert_null(h);
    if (strstr(detail, "version") == NULL)
        fail_msg("detail '%s' does not mention the version", detail);
    char num[16];
    snprintf(num, sizeof num, "%u", LAYOUT_VERSION + 1);
    assert_non_null(strstr(detail, num));

    /* Version 0 (e.g. a header being written by a foreign tool) too. */
    old = ctl_poke32(s.key, voff, 0);
    rc = shmkv_open(s.key, 0, &h);
    ctl_poke32(s.key, voff, old);
    assert_rc(rc, SHMKV_EVERSION);

    /* A damaged magic is not a store at all. */
    uint32_t magic = ctl_poke32(s.key, 0, 0x21212121u);
    rc = shmkv_open(s.key, 0, &h);
    ctl_poke32(s.key, 0, magic);
    assert_rc(rc, SHMKV_ENOTSHMKV);

    /* Restored: it opens again and the data is intact. */
    assert_ok(shmkv_open(s.key, 0, &h));
    assert_value_str(h, "k", "v");
    shmkv_close(h);
    store_drop(&s);
}

static int count_one(void *ctx, const void *key, size_t klen, const void *val,
                     size_t vlen, int64_t ttl_s)
{
    (void)key, (void)klen, (void)val, (void)vlen, (void)ttl_s;
    (*(unsigned *)ctx)++;
    return 0;
}

static void test_open_flags_clients_closed(void **state)
{
    (void)state;
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = 1u << 20;
    o.max_clients = 3;
    struct store s;
    store_make(&s, &o);

    shmkv_t *h = NOT_A_HANDLE;
    assert_rc(shmkv_open(s.key, 0x2, &h), SHMKV_EINVAL);
    assert_null(h);
    assert_rc(shmkv_open(s.key, SHMKV_RDONLY | 0x100, &h), SHMKV_EINVAL);
    assert_rc(shmkv_open(s.key, 0, NULL), SHMKV_EINVAL);
    assert_int_equal(stats_of(s.kv).clients, 1);

    /* Three writers' slots, the owner's one of them, and three readers'. */
    shmkv_t *a, *b, *c = NULL, *r[3], *extra = NULL;
    assert_ok(shmkv_open(s.key, 0, &a));
    assert_ok(shmkv_open(s.key, 0, &b));
    assert_rc(shmkv_open(s.key, 0, &c), SHMKV_ECLIENTS);
    assert_null(c);
    for (int i = 0; i < 3; i++)
        assert_ok(shmkv_open(s.key, SHMKV_RDONLY, &r[i]));
    assert_rc(shmkv_open(s.key, SHMKV_RDONLY, &extra), SHMKV_ECLIENTS);
    assert_int_equal(stats_of(s.kv).clients, 6);
    shmkv_close(b);
    shmkv_close(r[0]);
    assert_ok(shmkv_open(s.key, 0, &c));
    assert_ok(shmkv_open(s.key, SHMKV_RDONLY, &r[0]));
    shmkv_close(c);
    for (int i = 0; i < 3; i++)
        shmkv_close(r[i]);

    /* Creating over an existing store is refused and changes nothing. */
    struct shmkv_options again;
    shmkv_options_init(&again);
    again.key = s.key;
    shmkv_t *dup = NOT_A_HANDLE;
    assert_rc(shmkv_create(&again, &dup), SHMKV_EEXIST);
    assert_null(dup);
    assert_ok(set_str(a, "still", "here", 0, 0));

    /* Closed by its owner: new opens and old handles get ECLOSED. */
    assert_ok(shmkv_mark_closed(s.kv));
    assert_rc(shmkv_open(s.key, 0, &c), SHMKV_ECLOSED);
    assert_rc(set_str(a, "x", "y", 0, 0), SHMKV_ECLOSED);
    assert_rc(shmkv_read_begin(a), SHMKV_ECLOSED);
    char buf[8];
    size_t vlen;
    assert_rc(shmkv_get_copy(a, "still", 5, buf, sizeof buf, &vlen),
              SHMKV_ECLOSED);
    /* The handle that closed it may still read (to save a last snapshot)
     * but not write. */
    assert_ok(shmkv_get_copy(s.kv, "still", 5, buf, sizeof buf, &vlen));
    assert_memory_equal(buf, "here", 4);
    assert_rc(set_str(s.kv, "x", "y", 0, 0), SHMKV_ECLOSED);
    assert_rc(shmkv_del(s.kv, "still", 5), SHMKV_ECLOSED);
    unsigned seen = 0;
    assert_ok(shmkv_foreach(s.kv, count_one, &seen));
    assert_int_equal(seen, 1);
    shmkv_close(a);
    store_drop(&s);
}

static void test_destroy_closes_other_handles(void **state)
{
    (void)state;
    struct store s;
    store_small(&s, 1u << 20, SHMKV_EVICT_NONE);
    char key[32];
    snprintf(key, sizeof key, "%s", s.key);
    shmkv_t *h;
    assert_ok(shmkv_open(key, 0, &h));
    assert_ok(set_str(h, "k", "v", 0, 0));
    store_drop(&s);
    /* The segments are marked removed: the key is free at once, and the
     * handle finds no store there. */
    assert_true(shmget(sysv_key_of(key), 0, 0) < 0);
    assert_rc(set_str(h, "k", "w", 0, 0), SHMKV_ENOSTORE);
    struct shmkv_stats st;
    assert_rc(shmkv_stats(h, &st), SHMKV_ENOSTORE);
    /* A new store at the key: the handle follows it and goes on. */
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = 1u << 20;
    shmkv_t *fresh;
    assert_ok(create_at(&o, key, &fresh));
    assert_ok(set_str(h, "k", "w", 0, 0));
    assert_ok(shmkv_stats(h, &st));
    assert_int_equal(st.entries, 1);
    char buf[8];
    size_t len;
    assert_ok(shmkv_get_copy(fresh, "k", 1, buf, sizeof buf, &len));
    assert_memory_equal(buf, "w", 1);
    shmkv_close(h);
    test_destroy(fresh, key);
}

/* ---------------------------------------------------------------------- */
/* Round trips */

struct visit {
    unsigned count;
    size_t key_bytes;
    size_t value_bytes;
    unsigned with_ttl;
    unsigned stop_after; /* 0: never stop */
};

static int visit_count(void *ctx, const void *key, size_t klen, const void *val,
                       size_t vlen, int64_t ttl_s)
{
    struct visit *v = ctx;
    assert_non_null(key);
    assert_true(klen > 0);
    assert_true(vlen == 0 || val != NULL);
    v->count++;
    v->key_bytes += klen;
    v->value_bytes += vlen;
    if (ttl_s > 0)
        v->with_ttl++;
    assert_true(ttl_s >= 0);
    if (v->stop_after != 0 && v->count == v->stop_after)
        return 77;
    return 0;
}

static void test_round_trip(void **state)
{
    (void)state;
    struct store s;
    store_small(&s, 2u << 20, SHMKV_EVICT_NONE);
    shmkv_t *kv = s.kv;

    assert_absent(kv, "alpha", 5);
    assert_ok(set_str(kv, "alpha", "one", 0, 0));
    assert_value_str(kv, "alpha", "one");

    /* Replacing, with a longer then a shorter value. */
    assert_ok(set_str(kv, "alpha", "a much longer value than before", 0, 0));
    assert_value_str(kv, "alpha", "a much longer value than before");
    assert_ok(set_str(kv, "alpha", "1", 0, 0));
    assert_value_str(kv, "alpha", "1");

    /* The store keeps its own copy of key and value. */
    char key[16] = "beta", val[16] = "two";
    assert_ok(shmkv_set(kv, key, 4, val, 3, 0, 0));
    memcpy(key, "XXXX", 4);
    memcpy(val, "YYY", 3);
    assert_value_str(kv, "beta", "two");
    assert_absent(kv, "XXXX", 4);

    /* Keys are exact: prefixes and extensions are other keys. */
    assert_absent(kv, "alph", 4);
    assert_absent(kv, "alphaa", 6);
    assert_absent(kv, "ALPHA", 5);

    /* del */
    assert_ok(shmkv_del(kv, "alpha", 5));
    assert_absent(kv, "alpha", 5);
    assert_rc(shmkv_del(kv, "alpha", 5), SHMKV_ENOTFOUND);
    assert_value_str(kv, "beta", "two");

    /* Many keys, each read back, then iterated. */
    char k[32], v[64];
    for (unsigned i = 0; i < 2000; i++) {
        int kl = snprintf(k, sizeof k, "key:%u", i);
        int vl = snprintf(v, sizeof v, "value-%u-%u", i, i * 7919u);
        assert_ok(shmkv_set(kv, k, (size_t)kl, v, (size_t)vl, 0, 0));
    }
    for (unsigned i = 0; i < 2000; i += 1) {
        int kl = snprintf(k, sizeof k, "key:%u", i);
        int vl = snprintf(v, sizeof v, "value-%u-%u", i, i * 7919u);
        assert_value(kv, k, (size_t)kl, v, (size_t)vl);
    }
    struct visit vis = {0};
    assert_ok(shmkv_foreach(kv, visit_count, &vis));
    assert_int_equal(vis.count, 2001);
    assert_int_equal(stats_of(kv).entries, 2001);
    /* A visitor's nonzero result stops the walk and is returned. */
    struct visit stop = {.stop_after = 10};
    assert_int_equal(shmkv_foreach(kv, visit_count, &stop), 77);
    assert_int_equal(stop.count, 10);

    /* Delete every other one. */
    for (unsigned i = 0; i < 2000; i += 2) {
        int kl = snprintf(k, sizeof k, "key:%u", i);
        assert_ok(shmkv_del(kv, k, (size_t)kl));
    }
    for (unsigned i = 0; i < 2000; i++) {
        int kl = snprintf(k, sizeof k, "key:%u", i);
        int vl = snprintf(v, sizeof v, "value-%u-%u", i, i * 7919u);
        if (i % 2 == 0)
            assert_absent(kv, k, (size_t)kl);
        else
            assert_value(kv, k, (size_t)kl, v, (size_t)vl);
    }
    assert_int_equal(stats_of(kv).entries, 1001);
    assert_check_clean(kv);

    /* flush empties the store and gives all space back. */
    assert_ok(shmkv_flush(kv));
    struct shmkv_stats st = stats_of(kv);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.entries_with_ttl, 0);
    assert_int_equal(st.bytes_used, 0);
    assert_int_equal(st.bytes_free, st.bytes_capacity);
    assert_int_equal(st.largest_free, st.bytes_capacity);
    assert_absent(kv, "beta", 4);
    assert_absent(kv, "key:1", 5);
    memset(&vis, 0, sizeof vis);
    assert_ok(shmkv_foreach(kv, visit_count, &vis));
    assert_int_equal(vis.count, 0);
    assert_ok(shmkv_flush(kv)); /* flushing an empty store is fine */
    /* Usable after a flush. */
    assert_ok(set_str(kv, "beta", "again", 0, 0));
    assert_value_str(kv, "beta", "again");
    assert_check_clean(kv);
    store_drop(&s);
}

static void test_binary_keys_and_values(void **state)
{
    (void)state;
    struct store s;
    store_small(&s, 1u << 20, SHMKV_EVICT_NONE);
    shmkv_t *kv = s.kv;

    /* Keys that differ only after a NUL, and a key that is one NUL. */
    const char k1[] = {'a', '\0', 'b'};
    const char k2[] = {'a', '\0', 'c'};
    const char k3[] = {'a'};
    const char k4[] = {'\0'};
    const char k5[] = {'\0', '\0'};
    unsigned char all[256];
    for (unsigned i = 0; i < 256; i++)
        all[i] = (unsigned char)i;
    const char v2[] = {'\0', '\0', '\0'};
    assert_ok(shmkv_set(kv, k1, sizeof k1, all, sizeof all, 0, 0));
    assert_ok(shmkv_set(kv, k2, sizeof k2, v2, sizeof v2, 0, 0));
    assert_ok(shmkv_set(kv, k3, sizeof k3, "plain", 5, 0, 0));
    assert_ok(shmkv_set(kv, k4, sizeof k4, "nul", 3, 0, 0));
    assert_ok(shmkv_set(kv, k5, sizeof k5, "nulnul", 6, 0, 0));
    assert_value(kv, k1, sizeof k1, all, sizeof all);
    assert_value(kv, k2, sizeof k2, v2, sizeof v2);
    assert_value(kv, k3, sizeof k3, "plain", 5);
    assert_value(kv, k4, sizeof k4, "nul", 3);
    assert_value(kv, k5, sizeof k5, "nulnul", 6);
    assert_int_equal(stats_of(kv).entries, 5);

    /* Keys made of every byte value, of every length up to 64. */
    unsigned char key[64], val[64];
    for (unsigned len = 1; len <= 64; len++) {
        for (unsigned i = 0; i < len; i++) {
            key[i] = (unsigned char)(255 - i * 3 - len);
            val[i] = (unsigned char)(i * 37 + len);
        }
        assert_ok(shmkv_set(kv, key, len, val, len, 0, 0));
    }
    for (unsigned len = 1; len <= 64; len++) {
        for (unsigned i = 0; i < len; i++) {
            key[i] = (unsigned char)(255 - i * 3 - len);
            val[i] = (unsigned char)(i * 37 + len);
        }
        assert_value(kv, key, len, val, len);
    }
    assert_ok(shmkv_del(kv, k1, sizeof k1));
    assert_absent(kv, k1, sizeof k1);
    assert_value(kv, k2, sizeof k2, v2, sizeof v2);
    assert_check_clean(kv);
    store_drop(&s);
}

static void test_empty_value(void **state)
{
    (void)state;
    struct store s;
    store_small(&s, 1u << 20, SHMKV_EVICT_NONE);
    shmkv_t *kv = s.kv;

    /* val may be NULL when vlen is 0. */
    assert_ok(shmkv_set(kv, "empty", 5, NULL, 0, 0, 0));
    assert_ok(shmkv_set(kv, "empty2", 6, "ignored", 0, 0, 0));
    assert_value(kv, "empty", 5, "", 0);
    assert_value(kv, "empty2", 6, "", 0);

    /* Present, not absent: the zero-copy get says length 0. */
    shmkv_val_t v = {NULL, 99};
    assert_ok(shmkv_read_begin(kv));
    assert_ok(shmkv_get(kv, "empty", 5, &v));
    assert_ok(shmkv_read_end(kv));
    assert_int_equal(v.len, 0);

    /* Asking for the size with no buffer. */
    size_t vlen = 99;
    assert_ok(shmkv_get_copy(kv, "empty", 5, NULL, 0, &vlen));
    assert_int_equal(vlen, 0);

    /* Replacing empty with non-empty and back. */
    assert_ok(set_str(kv, "empty", "full", 0, 0));
    assert_value_str(kv, "empty", "full");
    assert_ok(shmkv_set(kv, "empty", 5, NULL, 0, 0, 0));
    assert_value(kv, "empty", 5, "", 0);
    assert_int_equal(stats_of(kv).entries, 2);
    /* NX sees an empty value as present. */
    assert_rc(shmkv_set(kv, "empty", 5, "x", 1, 0, SHMKV_NX), SHMKV_EEXIST);
    assert_ok(shmkv_del(kv, "empty", 5));
    assert_absent(kv, "empty", 5);
    assert_check_clean(kv);
    store_drop(&s);
}

static void test_get_copy_buffer_sizes(void **state)
{
    (void)state;
    struct store s;
    store_small(&s, 1u << 20, SHMKV_EVICT_NONE);
    shmkv_t *kv = s.kv;
    const char value[] = "0123456789abcdef";
    const size_t n = sizeof value - 1;
    assert_ok(shmkv_set(kv, "k", 1, value, n, 0, 0));

    char buf[32];
    size_t vlen;
    /* Too small by one: ENOBUFS, the needed size, the buffer untouched. */
    memset(buf, '#', sizeof buf);
    vlen = 0;
    assert_rc(shmkv_get_copy(kv, "k", 1, buf, n - 1, &vlen), SHMKV_ENOBUFS);
    assert_int_equal(vlen, n);
    for (size_t i = 0; i < sizeof buf; i++)
        assert_int_equal(buf[i], '#');
    /* Size query with a NULL buffer. */
    vlen = 0;
    assert_rc(shmkv_get_copy(kv, "k", 1, NULL, 0, &vlen), SHMKV_ENOBUFS);
    assert_int_equal(vlen, n);
    /* A 1-byte buffer. */
    vlen = 0;
    assert_rc(shmkv_get_copy(kv, "k", 1, buf, 1, &vlen), SHMKV_ENOBUFS);
    assert_int_equal(vlen, n);
    assert_int_equal(buf[0], '#');
    /* Exactly large enough: copied, nothing past it written. */
    vlen = 0;
    assert_ok(shmkv_get_copy(kv, "k", 1, buf, n, &vlen));
    assert_int_equal(vlen, n);
    assert_memory_equal(buf, value, n);
    assert_int_equal(buf[n], '#');
    /* Larger: same. */
    memset(buf, '#', sizeof buf);
    assert_ok(shmkv_get_copy(kv, "k", 1, buf, sizeof buf, &vlen));
    assert_int_equal(vlen, n);
    assert_memory_equal(buf, value, n);
    assert_int_equal(buf[n], '#');
    /* Not found leaves the buffer alone. */
    memset(buf, '#', sizeof buf);
    assert_rc(shmkv_get_copy(kv, "zz", 2, buf, sizeof buf, &vlen),
              SHMKV_ENOTFOUND);
    assert_int_equal(buf[0], '#');

    /* A large value, asked for its size then read. */
    size_t big_len = 100000;
    char *big = malloc(big_len), *out = malloc(big_len);
    assert_non_null(big);
    assert_non_null(out);
    for (size_t i = 0; i < big_len; i++)
        big[i] = (char)(i * 131 + 7);
    assert_ok(shmkv_set(kv, "big", 3, big, big_len, 0, 0));
    assert_rc(shmkv_get_copy(kv, "big", 3, out, big_len - 1, &vlen),
              SHMKV_ENOBUFS);
    assert_int_equal(vlen, big_len);
    assert_ok(shmkv_get_copy(kv, "big", 3, out, vlen, &vlen));
    assert_memory_equal(out, big, big_len);
    free(big);
    free(out);

    /* get_copy inside an open read section uses that section. */
    assert_ok(shmkv_read_begin(kv));
    assert_ok(shmkv_get_copy(kv, "k", 1, buf, sizeof buf, &vlen));
    assert_int_equal(vlen, n);
    assert_ok(shmkv_read_end(kv));
    store_drop(&s);
}

/* ---------------------------------------------------------------------- */
/* Read sections and zero-copy values */

static void test_zero_copy_read_section(void **state)
{
    (void)state;
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = 2u << 20;
    o.lock_timeout_ms = 100;
    struct store s;
    store_make(&s, &o);
    shmkv_t *kv = s.kv;

    enum { N = 500 };
    char k[32], v[64];
    for (unsigned i = 0; i < N; i++) {
        int kl = snprintf(k, sizeof k, "zc:%u", i);
        int vl = snprintf(v, sizeof v, "zero-copy value %u", i);
        assert_ok(shmkv_set(kv, k, (size_t)kl, v, (size_t)vl, 0, 0));
    }

    /* Many gets in one section: every pointer stays valid to its end. */
    static shmkv_val_t vals[N];
    assert_ok(shmkv_read_begin(kv));
    for (unsigned i = 0; i < N; i++) {
        int kl = snprintf(k, sizeof k, "zc:%u", i);
        assert_ok(shmkv_get(kv, k, (size_t)kl, &vals[i]));
    }
    /* The same key twice in a section: the same bytes in place. */
    shmkv_val_t again;
    assert_ok(shmkv_get(kv, "zc:0", 4, &again));
    assert_ptr_equal(again.data, vals[0].data);
    /* A miss in the middle does not end the section. */
    assert_rc(shmkv_get(kv, "missing", 7, &again), SHMKV_ENOTFOUND);

    /* A writer on another handle goes on meanwhile, without waiting: it
     * replaces and deletes what the section holds, and rewrites the other
     * keys many times, so that their old blocks would be reused if the
     * section did not hold them back. */
    shmkv_t *writer;
    assert_ok(shmkv_open(s.key, 0, &writer));
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_ok(set_str(writer, "zc:0", "overwritten", 0, 0));
    assert_ok(shmkv_del(writer, "zc:1", 4));
    for (unsigned round = 0; round < 4; round++) {
        for (unsigned i = 2; i < N; i++) {
            int kl = snprintf(k, sizeof k, "zc:%u", i);
            int vl = snprintf(v, sizeof v, "rewritten value %u/%u", i, round);
            assert_ok(shmkv_set(writer, k, (size_t)kl, v, (size_t)vl, 0, 0));
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long waited_ms =
        (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    assert_true(waited_ms < 100);
    assert_true(stats_of(writer).bytes_limbo > 0);

    /* Later gets in the section see the writes; what it was given before
     * is unchanged, in place. */
    assert_ok(shmkv_get(kv, "zc:0", 4, &again));
    assert_int_equal(again.len, 11);
    assert_memory_equal(again.data, "overwritten", 11);
    assert_rc(shmkv_get(kv, "zc:1", 4, &again), SHMKV_ENOTFOUND);
    for (unsigned i = 0; i < N; i++) {
        int vl = snprintf(v, sizeof v, "zero-copy value %u", i);
        assert_int_equal(vals[i].len, (size_t)vl);
        assert_memory_equal(vals[i].data, v, (size_t)vl);
    }
    /* A section that begins now sees the new store at once. */
    shmkv_t *reader;
    assert_ok(shmkv_open(s.key, SHMKV_RDONLY, &reader));
    assert_ok(shmkv_read_begin(reader));
    shmkv_val_t rv;
    assert_ok(shmkv_get(reader, "zc:0", 4, &rv));
    assert_int_equal(rv.len, 11);
    assert_ok(shmkv_get(reader, "zc:7", 4, &rv));
    assert_memory_equal(rv.data, "rewritten value 7/3", rv.len);
    assert_ok(shmkv_read_end(reader));
    shmkv_close(reader);
    assert_ok(shmkv_read_end(kv));

    /* Nothing waited, nothing was revoked. */
    struct shmkv_stats st = stats_of(kv);
    assert_int_equal(st.lock_timeouts, 0);
    assert_int_equal(st.revocations, 0);
    assert_int_equal(st.stale_sections, 0);
    assert_value_str(kv, "zc:0", "overwritten");
    assert_absent(kv, "zc:1", 4);
    shmkv_close(writer);
    assert_check_clean(kv);
    store_drop(&s);
}

static void test_read_section_state(void **state)
{
    (void)state;
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = 1u << 20;
    o.lock_timeout_ms = 100;
    struct store s;
    store_make(&s, &o);
    shmkv_t *kv = s.kv;
    assert_ok(set_str(kv, "k", "v", 0, 0));

    shmkv_val_t v;
    assert_rc(shmkv_get(kv, "k", 1, &v), SHMKV_ESTATE);
    assert_rc(shmkv_read_end(kv), SHMKV_ESTATE);
    assert_ok(shmkv_read_begin(kv));
    assert_rc(shmkv_read_begin(kv), SHMKV_ESTATE);
    /* Writes, stats, check and foreach are refused inside a section. */
    struct shmkv_stats before;
    assert_rc(set_str(kv, "k", "w", 0, 0), SHMKV_ESTATE);
    assert_rc(shmkv_del(kv, "k", 1), SHMKV_ESTATE);
    assert_rc(shmkv_incr(kv, "n", 1, 1, NULL), SHMKV_ESTATE);
    assert_rc(shmkv_expire(kv, "k", 1, 10), SHMKV_ESTATE);
    assert_rc(shmkv_flush(kv), SHMKV_ESTATE);
    assert_rc(shmkv_expire_scan(kv, 0), SHMKV_ESTATE);
    assert_rc(shmkv_stats(kv, &before), SHMKV_ESTATE);
    struct shmkv_check_report r;
    assert_rc(shmkv_check(kv, &r), SHMKV_ESTATE);
    struct visit vis = {0};
    assert_rc(shmkv_foreach(kv, visit_count, &vis), SHMKV_ESTATE);
    assert_int_equal(vis.count, 0);
    /* Reads still work, and the section is still open. */
    int64_t ttl;
    assert_ok(shmkv_ttl(kv, "k", 1, &ttl));
    assert_int_equal(ttl, -1);
    assert_ok(shmkv_get(kv, "k", 1, &v));
    assert_memory_equal(v.data, "v", 1);
    assert_ok(shmkv_read_end(kv));
    assert_rc(shmkv_read_end(kv), SHMKV_ESTATE);
    assert_rc(shmkv_get(kv, "k", 1, &v), SHMKV_ESTATE);
    /* Nothing was written. */
    assert_value_str(kv, "k", "v");
    assert_int_equal(stats_of(kv).entries, 1);

    /* Closing a handle ends its open section: writers are not held up. */
    shmkv_t *h;
    assert_ok(shmkv_open(s.key, 0, &h));
    assert_ok(shmkv_read_begin(h));
    shmkv_close(h);
    assert_ok(set_str(kv, "k", "after close", 0, 0));
    assert_value_str(kv, "k", "after close");
    store_drop(&s);
}

/* ---------------------------------------------------------------------- */
/* Set flags */

static void test_set_nx_xx(void **state)
{
    (void)state;
    struct store s;
    store_small(&s, 1u << 20, SHMKV_EVICT_NONE);
    shmkv_t *kv = s.kv;

    /* XX on an absent key: refused, not created. */
    assert_rc(set_str(kv, "k", "xx", 0, SHMKV_XX), SHMKV_ENOTFOUND);
    assert_absent(kv, "k", 1);
    /* NX on an absent key: created. */
    assert_ok(set_str(kv, "k", "nx", 0, SHMKV_NX));
    assert_value_str(kv, "k", "nx");
    /* NX on a present key: refused, old value kept. */
    struct shmkv_stats before = stats_of(kv);
    assert_rc(set_str(kv, "k", "nx again", 0, SHMKV_NX), SHMKV_EEXIST);
    struct shmkv_stats after = stats_of(kv);
    assert_same_state(&before, &after);
    assert_value_str(kv, "k", "nx");
    /* XX on a present key: replaced. */
    assert_ok(set_str(kv, "k", "xx", 0, SHMKV_XX));
    assert_value_str(kv, "k", "xx");
    /* After a delete, NX works again and XX does not. */
    assert_ok(shmkv_del(kv, "k", 1));
    assert_rc(set_str(kv, "k", "xx", 0, SHMKV_XX), SHMKV_ENOTFOUND);
    assert_ok(set_str(kv, "k", "nx2", 0, SHMKV_NX));
    assert_value_str(kv, "k", "nx2");
    /* NX with XX, and unknown flags, are bad arguments. */
    before = stats_of(kv);
    assert_rc(set_str(kv, "k", "both", 0, SHMKV_NX | SHMKV_XX), SHMKV_EINVAL);
    assert_rc(set_str(kv, "new", "both", 0, SHMKV_NX | SHMKV_XX), SHMKV_EINVAL);
    assert_rc(set_str(kv, "k", "bad", 0, 0x8), SHMKV_EINVAL);
    assert_rc(set_str(kv, "k", "bad", 0, -1), SHMKV_EINVAL);
    after = stats_of(kv);
    assert_same_state(&before, &after);
    assert_value_str(kv, "k", "nx2");
    assert_absent(kv, "new", 3);
    /* Flags combine with a TTL. */
    assert_ok(set_str(kv, "t", "1", 100, SHMKV_NX));
    int64_t ttl = ttl_of(kv, "t");
    assert_true(ttl >= 99 && ttl <= 100);
    assert_ok(set_str(kv, "t", "2", 50, SHMKV_XX));
    ttl = ttl_of(kv, "t");
    assert_true(ttl >= 49 && ttl <= 50);
    store_drop(&s);
}

static void test_keepttl(void **state)
{
    (void)state;
    struct store s;
    store_small(&s, 1u << 20, SHMKV_EVICT_NONE);
    shmkv_t *kv = s.kv;

    assert_ok(set_str(kv, "k", "v1", 100, 0));
    assert_int_equal(stats_of(kv).entries_with_ttl, 1);
    /* KEEPTTL replacing: the old TTL stays, whatever ttl_s says. */
    assert_ok(set_str(kv, "k", "v2", 0, SHMKV_KEEPTTL));
    assert_value_str(kv, "k", "v2");
    int64_t ttl = ttl_of(kv, "k");
    assert_true(ttl >= 98 && ttl <= 100);
    assert_ok(set_str(kv, "k", "v3", 5, SHMKV_KEEPTTL));
    ttl = ttl_of(kv, "k");
    assert_true(ttl >= 98 && ttl <= 100);
    assert_int_equal(stats_of(kv).entries_with_ttl, 1);
    /* A plain replace sets the TTL it is given: none here. */
    assert_ok(set_str(kv, "k", "v4", 0, 0));
    assert_int_equal(ttl_of(kv, "k"), -1);
    assert_int_equal(stats_of(kv).entries_with_ttl, 0);
    /* KEEPTTL keeps "no TTL" too. */
    assert_ok(set_str(kv, "k", "v5", 30, SHMKV_KEEPTTL));
    assert_int_equal(ttl_of(kv, "k"), -1);
    assert_int_equal(stats_of(kv).entries_with_ttl, 0);
    /* KEEPTTL on a new key: nothing to keep, ttl_s applies. */
    assert_ok(set_str(kv, "new", "n", 40, SHMKV_KEEPTTL));
    ttl = ttl_of(kv, "new");
    assert_true(ttl >= 39 && ttl <= 40);
    /* KEEPTTL with XX. */
    assert_ok(set_str(kv, "new", "n2", 0, SHMKV_KEEPTTL | SHMKV_XX));
    ttl = ttl_of(kv, "new");
    assert_true(ttl >= 38 && ttl <= 40);
    assert_value_str(kv, "new", "n2");
    assert_int_equal(stats_of(kv).entries_with_ttl, 1);
    /* A plain replace with a TTL sets it. */
    assert_ok(set_str(kv, "k", "v6", 20, 0));
    ttl = ttl_of(kv, "k");
    assert_true(ttl >= 19 && ttl <= 20);
    assert_int_equal(stats_of(kv).entries_with_ttl, 2);
    assert_check_clean(kv);
    store_drop(&s);
}

/* ---------------------------------------------------------------------- */
/* Counters */

static void test_incr(void **state)
{
    (void)state;
    struct store s;
    store_small(&s, 1u << 20, SHMKV_EVICT_NONE);
    shmkv_t *kv = s.kv;

    int64_t r = 12345;
    /* Created at 0, then incremented; stored as decimal text. */
    assert_ok(shmkv_incr(kv, "n", 1, 1, &r));
    assert_int_equal(r, 1);
    assert_value_str(kv, "n", "1");
    assert_int_equal(ttl_of(kv, "n"), -1);
    assert_ok(shmkv_incr(kv, "n", 1, 41, &r));
    assert_int_equal(r, 42);
    assert_ok(shmkv_incr(kv, "n", 1, -50, &r));
    assert_int_equal(r, -8);
    assert_value_str(kv, "n", "-8");
    /* delta 0 on an absent key creates "0". */
    assert_ok(shmkv_incr(kv, "zero", 4, 0, &r));
    assert_int_equal(r, 0);
    assert_value_str(kv, "zero", "0");
    /* result may be NULL. */
    assert_ok(shmkv_incr(kv, "n", 1, 10, NULL));
    assert_value_str(kv, "n", "2");
    /* A counter set as text. */
    assert_ok(set_str(kv, "t", "100", 0, 0));
    assert_ok(shmkv_incr(kv, "t", 1, 1, &r));
    assert_int_equal(r, 101);
    assert_ok(set_str(kv, "neg", "-17", 0, 0));
    assert_ok(shmkv_incr(kv, "neg", 3, 20, &r));
    assert_int_equal(r, 3);
    /* Binary key. */
    assert_ok(shmkv_incr(kv, "b\0x", 3, 5, &r));
    assert_int_equal(r, 5);
    assert_value(kv, "b\0x", 3, "5", 1);
    assert_absent(kv, "b", 1);

    /* Values that are not decimal int64: ENOTNUM, value unchanged. */
    static const char *const not_numbers[] = {
        "",
        "abc",
        " 1",
        "1 ",
        "+1",
        "1.5",
        "0x10",
        "-",
        "--1",
        "1e3",
        "9223372036854775808",  /* INT64_MAX + 1 */
        "-9223372036854775809", /* INT64_MIN - 1 */
        "99999999999999999999",
        "123456789012345678901",
    };
    for (size_t i = 0; i < sizeof not_numbers / sizeof not_numbers[0]; i++) {
        assert_ok(set_str(kv, "bad", not_numbers[i], 0, 0));
        struct shmkv_stats before = stats_of(kv);
        r = 777;
        int rc = shmkv_incr(kv, "bad", 3, 1, &r);
        if (rc != SHMKV_ENOTNUM)
            fail_msg("incr on '%s': got %s", not_numbers[i],
                     shmkv_strerror(rc));
        assert_int_equal(r, 777);
        struct shmkv_stats after = stats_of(kv);
        assert_same_state(&before, &after);
        assert_value_str(kv, "bad", not_numbers[i]);
    }
    /* A value with a NUL inside is not a number either. */
    assert_ok(shmkv_set(kv, "bad", 3, "1\0002", 3, 0, 0));
    assert_rc(shmkv_incr(kv, "bad", 3, 1, &r), SHMKV_ENOTNUM);

    /* A counter with a TTL keeps it. */
    assert_ok(set_str(kv, "ttl", "5", 100, 0));
    assert_ok(shmkv_incr(kv, "ttl", 3, 1, &r));
    assert_int_equal(r, 6);
    int64_t ttl = ttl_of(kv, "ttl");
    assert_true(ttl >= 98 && ttl <= 100);

    /* incr counts as a set. */
    struct shmkv_stats before = stats_of(kv);
    assert_ok(shmkv_incr(kv, "n", 1, 1, NULL));
    assert_int_equal(stats_of(kv).sets, before.sets + 1);
    assert_check_clean(kv);
    store_drop(&s);
}

static void test_incr_overflow(void **state)
{
    (void)state;
    struct store s;
    store_small(&s, 1u << 20, SHMKV_EVICT_NONE);
    shmkv_t *kv = s.kv;
    int64_t r;

    /* The int64 extremes are accepted. */
    assert_ok(set_str(kv, "max", "9223372036854775807", 0, 0));
    assert_ok(shmkv_incr(kv, "max", 3, 0, &r));
    assert_int_equal(r, INT64_MAX);
    assert_ok(set_str(kv, "min", "-9223372036854775808", 0, 0));
    assert_ok(shmkv_incr(kv, "min", 3, 0, &r));
    assert_int_equal(r, INT64_MIN);

    /* One past either end: EOVERFLOW, nothing changes. */
    struct shmkv_stats before = stats_of(kv);
    r = 5;
    assert_rc(shmkv_incr(kv, "max", 3, 1, &r), SHMKV_EOVERFLOW);
    assert_rc(shmkv_incr(kv, "max", 3, INT64_MAX, &r), SHMKV_EOVERFLOW);
    assert_rc(shmkv_incr(kv, "min", 3, -1, &r), SHMKV_EOVERFLOW);
    assert_rc(shmkv_incr(kv, "min", 3, INT64_MIN, &r), SHMKV_EOVERFLOW);
    assert_int_equal(r, 5);
    struct shmkv_stats after = stats_of(kv);
    assert_same_state(&before, &after);
    assert_value_str(kv, "max", "9223372036854775807");
    assert_value_str(kv, "min", "-9223372036854775808");

    /* Up to the edge is fine. */
    assert_ok(shmkv_incr(kv, "max", 3, -1, &r));
    assert_int_equal(r, INT64_MAX - 1);
    assert_ok(shmkv_incr(kv, "max", 3, 1, &r));
    assert_int_equal(r, INT64_MAX);
    assert_ok(shmkv_incr(kv, "min", 3, INT64_MAX, &r));
    assert_int_equal(r, -1);
    assert_value_str(kv, "min", "-1");
    /* Creating at 0 with an extreme delta. */
    assert_ok(shmkv_incr(kv, "lo", 2, INT64_MIN, &r));
    assert_int_equal(r, INT64_MIN);
    assert_value_str(kv, "lo", "-9223372036854775808");
    assert_ok(shmkv_incr(kv, "hi", 2, INT64_MAX, &r));
    assert_int_equal(r, INT64_MAX);
    assert_rc(shmkv_incr(kv, "hi", 2, 1, &r), SHMKV_EOVERFLOW);
    store_drop(&s);

    /* A counter longer than the store's value limit: E2BIG. */
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = 1u << 20;
    o.max_value_bytes = 2;
    store_make(&s, &o);
    assert_ok(shmkv_incr(s.kv, "c", 1, 99, &r));
    r = 0;
    assert_rc(shmkv_incr(s.kv, "c", 1, 1, &r), SHMKV_E2BIG);
    assert_int_equal(r, 0);
    assert_value_str(s.kv, "c", "99");
    assert_rc(shmkv_incr(s.kv, "d", 1, -10, &r), SHMKV_E2BIG);
    assert_absent(s.kv, "d", 1);
    store_drop(&s);
}

/* ---------------------------------------------------------------------- */
/* TTL */

static void test_ttl_expiry_and_scan(void **state)
{
    (void)state;
    struct store s;
    store_small(&s, 2u << 20, SHMKV_EVICT_NONE);
    shmkv_t *kv = s.kv;
    char k[32];

    /* No TTL, absent key, a long TTL. */
    assert_ok(set_str(kv, "plain", "p", 0, 0));
    assert_int_equal(ttl_of(kv, "plain"), -1);
    int64_t ttl;
    assert_rc(shmkv_ttl(kv, "nope", 4, &ttl), SHMKV_ENOTFOUND);
    assert_ok(set_str(kv, "long", "l", 100, 0));
    ttl = ttl_of(kv, "long");
    assert_true(ttl >= 99 && ttl <= 100);
    /* shmkv_expire sets, changes and clears a TTL. */
    assert_ok(shmkv_expire(kv, "plain", 5, 50));
    ttl = ttl_of(kv, "plain");
    assert_true(ttl >= 49 && ttl <= 50);
    assert_ok(shmkv_expire(kv, "plain", 5, 0));
    assert_int_equal(ttl_of(kv, "plain"), -1);
    assert_rc(shmkv_expire(kv, "nope", 4, 10), SHMKV_ENOTFOUND);
    assert_absent(kv, "nope", 4);
    assert_int_equal(stats_of(kv).entries_with_ttl, 1);

    /* Just after a second starts: 1-second TTLs are live for ~1 s. */
    sleep_to_second_start();
    enum { E = 10 };
    for (unsigned i = 0; i < E; i++) {
        int kl = snprintf(k, sizeof k, "e%u", i);
        assert_ok(shmkv_set(kv, k, (size_t)kl, "short-lived value", 17, 1, 0));
    }
    assert_ok(set_str(kv, "via-expire", "x", 0, 0));
    assert_ok(shmkv_expire(kv, "via-expire", 10, 1));
    assert_ok(set_str(kv, "persist", "y", 1, 0));
    assert_ok(shmkv_expire(kv, "persist", 7, 0)); /* TTL removed */
    assert_value_str(kv, "e0", "short-lived value");
    assert_int_equal(ttl_of(kv, "e0"), 1);
    assert_int_equal(ttl_of(kv, "via-expire"), 1);
    struct shmkv_stats st = stats_of(kv);
    assert_int_equal(st.entries, E + 4);
    assert_int_equal(st.entries_with_ttl, E + 2);
    struct visit vis = {0};
    assert_ok(shmkv_foreach(kv, visit_count, &vis));
    assert_int_equal(vis.count, E + 4);
    assert_int_equal(vis.with_ttl, E + 2);

    sleep_ms(1150);

    /* Expired entries are never returned, though still stored. */
    for (unsigned i = 0; i < E; i++) {
        int kl = snprintf(k, sizeof k, "e%u", i);
        assert_absent(kv, k, (size_t)kl);
        assert_rc(shmkv_ttl(kv, k, (size_t)kl, &ttl), SHMKV_ENOTFOUND);
    }
    assert_absent(kv, "via-expire", 10);
    assert_value_str(kv, "persist", "y");
    assert_value_str(kv, "plain", "p");
    assert_value_str(kv, "long", "l");
    memset(&vis, 0, sizeof vis);
    assert_ok(shmkv_foreach(kv, visit_count, &vis));
    assert_int_equal(vis.count, 3);
    struct shmkv_stats before = stats_of(kv);
    assert_int_equal(before.entries, E + 4); /* not yet reclaimed */

    /* Writes that meet an expired entry reclaim it (an expiration) and
     * treat the key as absent. */
    assert_rc(shmkv_del(kv, "e0", 2), SHMKV_ENOTFOUND);
    assert_ok(set_str(kv, "e1", "reborn", 0, SHMKV_NX));
    assert_rc(set_str(kv, "e2", "xx", 0, SHMKV_XX), SHMKV_ENOTFOUND);
    int64_t r;
    assert_ok(shmkv_incr(kv, "e3", 2, 5, &r));
    assert_int_equal(r, 5); /* from 0, not from the expired value */
    assert_rc(shmkv_expire(kv, "e4", 2, 100), SHMKV_ENOTFOUND);
    assert_value_str(kv, "e1", "reborn");
    assert_int_equal(ttl_of(kv, "e1"), -1);
    assert_value_str(kv, "e3", "5");
    assert_int_equal(ttl_of(kv, "e3"), -1);
    assert_absent(kv, "e2", 2);
    assert_absent(kv, "e4", 2);
    st = stats_of(kv);
    assert_int_equal(st.expirations, before.expirations + 5);
    assert_int_equal(st.deletes, before.deletes);
    assert_int_equal(st.entries, before.entries - 5 + 2);
    assert_int_equal(st.entries_with_ttl, 1 + (E - 5) + 1);

    /* expire_scan, a slice at a time, reclaims the remaining expired
     * entries (e5..e9, via-expire) and gives their space back. */
    before = st;
    uint64_t slices = before.index_slots / 64 + 1;
    int removed = 0;
    for (uint64_t i = 0; i < slices; i++) {
        int n = shmkv_expire_scan(kv, 64);
        assert_true(n >= 0);
        removed += n;
    }
    assert_int_equal(removed, E - 5 + 1);
    assert_int_equal(shmkv_expire_scan(kv, 0), 0);
    st = stats_of(kv);
    assert_int_equal(st.expirations, before.expirations + (uint64_t)removed);
    assert_int_equal(st.entries, before.entries - (uint64_t)removed);
    assert_int_equal(st.entries_with_ttl, 1); /* "long" */
    assert_true(st.bytes_used < before.bytes_used);
    /* What left the entries went to the free lists, through limbo. */
    assert_int_equal(st.bytes_limbo, 0);
    assert_int_equal(before.bytes_used + before.bytes_limbo - st.bytes_used,
                     st.bytes_free - before.bytes_free);
    /* Each reclaimed entry held at least header + key + value. */
    assert_true(before.bytes_used - st.bytes_used >=
                (uint64_t)removed * (16 + 2 + 17));
    assert_int_equal(st.bytes_used + st.bytes_free + st.bytes_limbo,
                     st.bytes_capacity);
    assert_int_equal(st.deletes, before.deletes);
    assert_value_str(kv, "long", "l");
    assert_value_str(kv, "persist", "y");
    assert_check_clean(kv);
    store_drop(&s);
}

static void test_ttl_far_future(void **state)
{
    (void)state;
    struct store s;
    store_small(&s, 1u << 20, SHMKV_EVICT_NONE);
    shmkv_t *kv = s.kv;
    /* The longest TTLs (up to 136 years) are far in the future, not
     * already over. */
    static const uint32_t ttls[] = {
        86400u * 365u, /* a year */
        2000000000u,   /* 63 years */
        3000000000u,   /* 95 years */
        UINT32_MAX,    /* 136 years */
    };
    char k[32];
    for (size_t i = 0; i < sizeof ttls / sizeof ttls[0]; i++) {
        int kl = snprintf(k, sizeof k, "far%zu", i);
        assert_ok(shmkv_set(kv, k, (size_t)kl, "v", 1, ttls[i], 0));
        int rc = shmkv_ttl(kv, k, (size_t)kl, &(int64_t){0});
        if (rc != 0)
            fail_msg("set with ttl %u s: gone at once (%s)", ttls[i],
                     shmkv_strerror(rc));
        int64_t ttl = ttl_of(kv, k);
        /* Whatever the clamp to the clock's range, it is years away. */
        assert_true(ttl > 86400 * 300);
        assert_value(kv, k, (size_t)kl, "v", 1);

        /* The same through shmkv_expire. */
        kl = snprintf(k, sizeof k, "far-expire%zu", i);
        assert_ok(shmkv_set(kv, k, (size_t)kl, "v", 1, 0, 0));
        assert_ok(shmkv_expire(kv, k, (size_t)kl, ttls[i]));
        assert_value(kv, k, (size_t)kl, "v", 1);
        ttl = ttl_of(kv, k);
        assert_true(ttl > 86400 * 300);
    }
    assert_int_equal(shmkv_expire_scan(kv, 0), 0);
    struct shmkv_stats st = stats_of(kv);
    assert_int_equal(st.entries, 2 * 4);
    assert_int_equal(st.entries_with_ttl, 2 * 4);
    store_drop(&s);
}

/* ---------------------------------------------------------------------- */
/* Full stores */

static void test_noeviction_full(void **state)
{
    (void)state;
    struct store s;
    store_small(&s, 1u << 20, SHMKV_EVICT_NONE);
    shmkv_t *kv = s.kv;

    enum { VLEN = 1000, MAX_KEYS = 4000 };
    static char val[VLEN];
    char k[32];
    unsigned n = 0;
    int rc = 0;
    for (; n < MAX_KEYS; n++) {
        memset(val, 'a' + (int)(n % 26), sizeof val);
        int kl = snprintf(k, sizeof k, "fill:%u", n);
        rc = shmkv_set(kv, k, (size_t)kl, val, sizeof val, 0, 0);
        if (rc != 0)
            break;
    }
    assert_rc(rc, SHMKV_ENOSPC);
    assert_true(n > 500); /* the arena, not something else, filled up */
    struct shmkv_stats full = stats_of(kv);
    assert_int_equal(full.entries, n);
    assert_int_equal(full.sets, n);
    /* No free block could take one more entry of this size. */
    int next_kl = snprintf(k, sizeof k, "fill:%u", n);
    assert_true(full.largest_free < 16 + (uint64_t)next_kl + VLEN);

    /* Further writes that do not fit: refused, nothing changes. */
    memset(val, 'Z', sizeof val);
    int kl = snprintf(k, sizeof k, "fill:%u", n + 1);
    assert_rc(shmkv_set(kv, k, (size_t)kl, val, sizeof val, 0, 0),
              SHMKV_ENOSPC);
    assert_non_null(strstr(shmkv_last_error(), "room"));
    /* Replacing an old key with a value that does not fit keeps the old
     * value. */
    assert_rc(shmkv_set(kv, "fill:0", 6, val, sizeof val, 0, 0), SHMKV_ENOSPC);
    assert_rc(shmkv_set(kv, "fill:1", 6, val, sizeof val, 100, SHMKV_XX),
              SHMKV_ENOSPC);
    struct shmkv_stats after = stats_of(kv);
    assert_same_state(&full, &after);
    assert_int_equal(after.evictions, 0);
    assert_int_equal(after.largest_free, full.largest_free);

    /* Every earlier key still reads back. */
    for (unsigned i = 0; i < n; i++) {
        memset(val, 'a' + (int)(i % 26), sizeof val);
        kl = snprintf(k, sizeof k, "fill:%u", i);
        assert_value(kv, k, (size_t)kl, val, sizeof val);
    }
    assert_absent(kv, k, (size_t)snprintf(k, sizeof k, "fill:%u", n));
    assert_int_equal(ttl_of(kv, "fill:1"), -1);

    /* Deleting two neighbours (their blocks merge) makes room again. */
    assert_ok(shmkv_del(kv, "fill:0", 6));
    assert_ok(shmkv_del(kv, "fill:1", 6));
    memset(val, 'Q', sizeof val);
    kl = snprintf(k, sizeof k, "fill:%u", n);
    assert_ok(shmkv_set(kv, k, (size_t)kl, val, sizeof val, 0, 0));
    assert_value(kv, k, (size_t)kl, val, sizeof val);
    after = stats_of(kv);
    assert_int_equal(after.entries, n - 1);
    assert_int_equal(after.evictions, 0);
    assert_check_clean(kv);
    store_drop(&s);
}

static void test_lru_eviction(void **state)
{
    (void)state;
    struct store s;
    store_small(&s, 1u << 20, SHMKV_EVICT_LRU);
    shmkv_t *kv = s.kv;
    assert_int_equal(stats_of(kv).eviction, SHMKV_EVICT_LRU);

    enum { HOT = 300, COLD = 300, FILL = 40000, VLEN = 100 };
    char k[32], v[VLEN];
    memset(v, 'v', sizeof v);
    /* Hot and cold keys written together, interleaved. */
    for (unsigned i = 0; i < HOT; i++) {
        int kl = snprintf(k, sizeof k, "hot:%u", i);
        assert_ok(shmkv_set(kv, k, (size_t)kl, v, sizeof v, 0, 0));
        kl = snprintf(k, sizeof k, "cold:%u", i);
        assert_ok(shmkv_set(kv, k, (size_t)kl, v, sizeof v, 0, 0));
    }
    /* Then far more data than fits (about 7000 entries do); the hot keys
     * are read every 50 writes, the cold ones never. */
    uint64_t cap_entries = stats_of(kv).bytes_capacity / 128;
    assert_true((uint64_t)FILL > 4 * cap_entries);
    for (unsigned i = 0; i < FILL; i++) {
        int kl = snprintf(k, sizeof k, "fill:%u", i);
        int rc = shmkv_set(kv, k, (size_t)kl, v, sizeof v, 0, 0);
        if (rc != 0)
            fail_msg("set %u into a full lru store: %s (%s)", i,
                     shmkv_strerror(rc), shmkv_last_error());
        if (i % 50 == 0) {
            assert_ok(shmkv_read_begin(kv));
            for (unsigned h = 0; h < HOT; h++) {
                shmkv_val_t val;
                kl = snprintf(k, sizeof k, "hot:%u", h);
                shmkv_get(kv, k, (size_t)kl, &val);
            }
            assert_ok(shmkv_read_end(kv));
        }
    }
    struct shmkv_stats st = stats_of(kv);
    uint64_t written = HOT + COLD + FILL;
    assert_true(st.evictions > 0);
    /* Every key was new: each one is either stored or was evicted. */
    assert_int_equal(st.entries + st.evictions, written);
    assert_int_equal(st.sets, written);
    assert_int_equal(st.expirations, 0);
    assert_true(st.entries < written / 4);
    /* The store stays nearly full: eviction frees only what is needed. */
    assert_true(st.bytes_free < st.bytes_capacity / 10);

    unsigned hot_alive = 0, cold_alive = 0;
    assert_ok(shmkv_read_begin(kv));
    for (unsigned i = 0; i < HOT; i++) {
        shmkv_val_t val;
        int kl = snprintf(k, sizeof k, "hot:%u", i);
        if (shmkv_get(kv, k, (size_t)kl, &val) == 0) {
            hot_alive++;
            assert_int_equal(val.len, VLEN);
            assert_memory_equal(val.data, v, VLEN);
        }
        kl = snprintf(k, sizeof k, "cold:%u", i);
        cold_alive += shmkv_get(kv, k, (size_t)kl, &val) == 0;
    }
    /* The newest writes are all there. */
    unsigned recent_alive = 0;
    for (unsigned i = FILL - 100; i < FILL; i++) {
        shmkv_val_t val;
        int kl = snprintf(k, sizeof k, "fill:%u", i);
        recent_alive += shmkv_get(kv, k, (size_t)kl, &val) == 0;
    }
    assert_ok(shmkv_read_end(kv));
    print_message("lru: %" PRIu64 " evictions, %" PRIu64
                  " entries; survivors: hot %u/%u, cold %u/%u, "
                  "newest %u/100\n",
                  st.evictions, st.entries, hot_alive, (unsigned)HOT,
                  cold_alive, (unsigned)COLD, recent_alive);
    assert_true(hot_alive >= HOT * 9 / 10);
    assert_true(cold_alive <= COLD / 4);
    assert_true(hot_alive > 3 * cold_alive);
    assert_true(recent_alive >= 95);
    assert_check_clean(kv);

    /* A value larger than all the room there is still fits by evicting. */
    static char big[200000], out[200000];
    memset(big, 'B', sizeof big);
    assert_ok(shmkv_set(kv, "big", 3, big, sizeof big, 0, 0));
    size_t vlen = 0;
    assert_ok(shmkv_get_copy(kv, "big", 3, out, sizeof out, &vlen));
    assert_int_equal(vlen, sizeof big);
    assert_memory_equal(out, big, sizeof big);
    assert_check_clean(kv);
    store_drop(&s);
}

/* ---------------------------------------------------------------------- */
/* Bad input */

static void test_null_and_empty_arguments(void **state)
{
    (void)state;
    struct store s;
    store_small(&s, 1u << 20, SHMKV_EVICT_NONE);
    shmkv_t *kv = s.kv;
    assert_ok(set_str(kv, "k", "v", 0, 0));
    assert_ok(set_str(kv, "n", "1", 0, 0));
    struct shmkv_stats before = stats_of(kv);

    char buf[16];
    size_t vlen;
    int64_t i64;
    shmkv_val_t v;
    struct shmkv_stats st;
    struct shmkv_check_report rep;

    /* NULL handle, to every call. */
    assert_rc(shmkv_set(NULL, "k", 1, "v", 1, 0, 0), SHMKV_EINVAL);
    assert_rc(shmkv_del(NULL, "k", 1), SHMKV_EINVAL);
    assert_rc(shmkv_expire(NULL, "k", 1, 1), SHMKV_EINVAL);
    assert_rc(shmkv_incr(NULL, "k", 1, 1, &i64), SHMKV_EINVAL);
    assert_rc(shmkv_flush(NULL), SHMKV_EINVAL);
    assert_rc(shmkv_expire_scan(NULL, 0), SHMKV_EINVAL);
    assert_rc(shmkv_read_begin(NULL), SHMKV_EINVAL);
    assert_rc(shmkv_read_end(NULL), SHMKV_EINVAL);
    assert_rc(shmkv_get(NULL, "k", 1, &v), SHMKV_EINVAL);
    assert_rc(shmkv_get_copy(NULL, "k", 1, buf, sizeof buf, &vlen),
              SHMKV_EINVAL);
    assert_rc(shmkv_ttl(NULL, "k", 1, &i64), SHMKV_EINVAL);
    assert_rc(shmkv_foreach(NULL, visit_count, NULL), SHMKV_EINVAL);
    assert_rc(shmkv_stats(NULL, &st), SHMKV_EINVAL);
    assert_rc(shmkv_check(NULL, &rep), SHMKV_EINVAL);
    assert_rc(shmkv_mark_closed(NULL), SHMKV_EINVAL);
    assert_rc(shmkv_destroy(NULL), SHMKV_EINVAL);
    assert_rc(shmkv_create(NULL, &kv), SHMKV_EINVAL);
    assert_true(kv == s.kv);
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.key = "key:0x5b000000";
    assert_rc(shmkv_create(&o, NULL), SHMKV_EINVAL);
    o.key = NULL;
    shmkv_t *made = NOT_A_HANDLE;
    assert_rc(shmkv_create(&o, &made), SHMKV_EINVAL);
    assert_null(made);
    assert_rc(shmkv_adopt(s.key, NULL), SHMKV_EINVAL);
    shmkv_options_init(NULL); /* accepted */

    /* NULL key, or an empty one, to every call that takes a key. */
    const void *keys[] = {NULL, "k"};
    for (size_t i = 0; i < 2; i++) {
        const void *key = keys[i];
        size_t klen = key == NULL ? 1 : 0;
        assert_rc(shmkv_set(kv, key, klen, "v", 1, 0, 0), SHMKV_EINVAL);
        assert_rc(shmkv_del(kv, key, klen), SHMKV_EINVAL);
        assert_rc(shmkv_expire(kv, key, klen, 1), SHMKV_EINVAL);
        assert_rc(shmkv_incr(kv, key, klen, 1, &i64), SHMKV_EINVAL);
        assert_rc(shmkv_get_copy(kv, key, klen, buf, sizeof buf, &vlen),
                  SHMKV_EINVAL);
        assert_rc(shmkv_ttl(kv, key, klen, &i64), SHMKV_EINVAL);
        assert_ok(shmkv_read_begin(kv));
        int rc = shmkv_get(kv, key, klen, &v);
        assert_ok(shmkv_read_end(kv));
        assert_rc(rc, SHMKV_EINVAL);
    }
    assert_rc(shmkv_set(kv, NULL, 0, "v", 1, 0, 0), SHMKV_EINVAL);

    /* NULL out-parameters and values. */
    assert_rc(shmkv_set(kv, "k", 1, NULL, 1, 0, 0), SHMKV_EINVAL);
    assert_rc(shmkv_get_copy(kv, "k", 1, buf, sizeof buf, NULL), SHMKV_EINVAL);
    assert_rc(shmkv_get_copy(kv, "k", 1, NULL, 4, &vlen), SHMKV_EINVAL);
    assert_rc(shmkv_ttl(kv, "k", 1, NULL), SHMKV_EINVAL);
    assert_rc(shmkv_foreach(kv, NULL, NULL), SHMKV_EINVAL);
    assert_rc(shmkv_stats(kv, NULL), SHMKV_EINVAL);
    assert_rc(shmkv_check(kv, NULL), SHMKV_EINVAL);
    assert_ok(shmkv_read_begin(kv));
    int rc = shmkv_get(kv, "k", 1, NULL);
    assert_ok(shmkv_read_end(kv));
    assert_rc(rc, SHMKV_EINVAL);

    /* None of it changed the store or its counters. */
    struct shmkv_stats after = stats_of(kv);
    assert_same_state(&before, &after);
    assert_value_str(kv, "k", "v");
    assert_value_str(kv, "n", "1");
    store_drop(&s);
}

/* Every call that takes a key, with a key of klen bytes: returns the
 * first error, asserting all agree. */
static void assert_key_rejected(shmkv_t *kv, const char *key, size_t klen,
                                int want)
{
    char buf[8];
    size_t vlen;
    int64_t i64;
    shmkv_val_t v;
    assert_rc(shmkv_set(kv, key, klen, "v", 1, 0, 0), want);
    assert_rc(shmkv_del(kv, key, klen), want);
    assert_rc(shmkv_expire(kv, key, klen, 5), want);
    assert_rc(shmkv_incr(kv, key, klen, 1, &i64), want);
    assert_rc(shmkv_get_copy(kv, key, klen, buf, sizeof buf, &vlen), want);
    assert_rc(shmkv_ttl(kv, key, klen, &i64), want);
    assert_ok(shmkv_read_begin(kv));
    int rc = shmkv_get(kv, key, klen, &v);
    assert_ok(shmkv_read_end(kv));
    assert_rc(rc, want);
}

static void check_size_limits(uint32_t max_key, uint32_t max_value,
                              uint64_t size_bytes)
{
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = size_bytes;
    o.max_key_bytes = max_key;
    o.max_value_bytes = max_value;
    struct store s;
    store_make(&s, &o);
    shmkv_t *kv = s.kv;
    struct shmkv_stats st = stats_of(kv);
    /* 0 picks the documented defaults. */
    uint32_t want_key = max_key ? max_key : 250;
    uint32_t want_value = max_value ? max_value : (1u << 20);
    if (max_value == 0 && want_value > size_bytes / 4)
        want_value = (uint32_t)(size_bytes / 4);
    assert_int_equal(st.max_key_bytes, want_key);
    assert_int_equal(st.max_value_bytes, want_value);

    char *key = malloc(want_key + 1);
    char *val = malloc((size_t)want_value + 1);
    assert_non_null(key);
    assert_non_null(val);
    for (uint32_t i = 0; i <= want_key; i++)
        key[i] = (char)('a' + i % 26);
    for (uint32_t i = 0; i <= want_value; i++)
        val[i] = (char)(i * 7);

    /* The exact limits pass. */
    assert_ok(shmkv_set(kv, key, want_key, "x", 1, 0, 0));
    assert_value(kv, key, want_key, "x", 1);
    assert_ok(shmkv_set(kv, "v", 1, val, want_value, 0, 0));
    size_t vlen;
    char *out = malloc(want_value);
    assert_non_null(out);
    assert_ok(shmkv_get_copy(kv, "v", 1, out, want_value, &vlen));
    assert_int_equal(vlen, want_value);
    assert_memory_equal(out, val, want_value);
    free(out);
    assert_ok(shmkv_set(kv, key, want_key, val, want_value, 0, 0));

    /* One over: E2BIG everywhere, and nothing changes. */
    struct shmkv_stats before = stats_of(kv);
    assert_key_rejected(kv, key, (size_t)want_key + 1, SHMKV_E2BIG);
    assert_rc(shmkv_set(kv, "v", 1, val, (size_t)want_value + 1, 0, 0),
              SHMKV_E2BIG);
    assert_rc(shmkv_set(kv, "new", 3, val, (size_t)want_value + 1, 0, 0),
              SHMKV_E2BIG);
    assert_rc(shmkv_set(kv, "v", 1, val, SIZE_MAX, 0, 0), SHMKV_E2BIG);
    assert_rc(shmkv_set(kv, key, SIZE_MAX, "x", 1, 0, 0), SHMKV_E2BIG);
    struct shmkv_stats after = stats_of(kv);
    assert_same_state(&before, &after);
    if (want_key >= 3)
        assert_absent(kv, "new", 3);
    assert_rc(shmkv_get_copy(kv, "v", 1, NULL, 0, &vlen), SHMKV_ENOBUFS);
    assert_int_equal(vlen, want_value);
    free(key);
    free(val);
    assert_check_clean(kv);
    store_drop(&s);
}

static void test_size_limits(void **state)
{
    (void)state;
    check_size_limits(0, 0, 8u << 20); /* 250 and 1 MiB */
    check_size_limits(0, 0, 1u << 20); /* 250 and a quarter */
    check_size_limits(16, 100, 1u << 20);
    check_size_limits(1, 1, 1u << 20);
    check_size_limits(65535, 70000, 2u << 20); /* the largest keys */

    /* Limits out of range are refused at creation. */
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = 1u << 20;
    o.max_key_bytes = 65536;
    shmkv_t *kv = NULL;
    assert_rc(test_create(&o, &kv), SHMKV_EINVAL);
    shmkv_options_init(&o);
    o.size_bytes = 1u << 20;
    o.max_value_bytes = (1u << 18) + 1; /* over a quarter */
    assert_rc(test_create(&o, &kv), SHMKV_EINVAL);
    shmkv_options_init(&o);
    o.eviction = (enum shmkv_eviction)7;
    assert_rc(test_create(&o, &kv), SHMKV_EINVAL);
    shmkv_options_init(&o);
    o.lock_timeout_ms = 0;
    assert_rc(test_create(&o, &kv), SHMKV_EINVAL);
    shmkv_options_init(&o);
    o.max_clients = 0;
    assert_rc(test_create(&o, &kv), SHMKV_EINVAL);
    shmkv_options_init(&o);
    o.mode = 0400; /* the owner must read and write */
    assert_rc(test_create(&o, &kv), SHMKV_EINVAL);
    assert_null(kv);
}

/* ---------------------------------------------------------------------- */
/* Read-only handles */

static void on_segv(int sig)
{
    (void)sig;
    _exit(42);
}

/* The owner's marks: set, read through another handle, bad bits refused,
 * read-only handles refused. */
static void test_marks(void **state)
{
    (void)state;
    struct store s;
    store_small(&s, 1u << 20, SHMKV_EVICT_NONE);
    unsigned marks = 7;
    assert_ok(shmkv_get_marks(s.kv, &marks));
    assert_int_equal(marks, 0);
    assert_ok(shmkv_set_marks(s.kv, SHMKV_MARK_LOADING));
    shmkv_t *ro;
    assert_ok(shmkv_open(s.key, SHMKV_RDONLY, &ro));
    assert_ok(shmkv_get_marks(ro, &marks));
    assert_int_equal(marks, SHMKV_MARK_LOADING);
    assert_rc(shmkv_set_marks(ro, 0), SHMKV_ERDONLY);
    assert_rc(shmkv_set_marks(s.kv, 0x80), SHMKV_EINVAL);
    assert_non_null(strstr(shmkv_last_error(), "unknown marks"));
    assert_rc(shmkv_set_marks(NULL, 0), SHMKV_EINVAL);
    assert_rc(shmkv_get_marks(s.kv, NULL), SHMKV_EINVAL);
    assert_ok(shmkv_get_marks(ro, &marks));
    assert_int_equal(marks, SHMKV_MARK_LOADING);
    assert_ok(shmkv_set_marks(s.kv, 0));
    assert_ok(shmkv_get_marks(ro, &marks));
    assert_int_equal(marks, 0);
    shmkv_close(ro);
    store_drop(&s);
}

static void test_rdonly_handle(void **state)
{
    (void)state;
    struct store s;
    store_small(&s, 1u << 20, SHMKV_EVICT_NONE);
    assert_ok(set_str(s.kv, "k", "value", 0, 0));
    assert_ok(set_str(s.kv, "n", "1", 100, 0));
    struct shmkv_stats before = stats_of(s.kv);

    shmkv_t *ro;
    assert_ok(shmkv_open(s.key, SHMKV_RDONLY, &ro));
    /* Reads work. */
    assert_value_str(ro, "k", "value");
    int64_t ttl = ttl_of(ro, "n");
    assert_true(ttl >= 99 && ttl <= 100);
    struct visit vis = {0};
    assert_ok(shmkv_foreach(ro, visit_count, &vis));
    assert_int_equal(vis.count, 2);
    struct shmkv_stats st = stats_of(ro);
    assert_int_equal(st.entries, 2);
    assert_int_equal(shmkv_readonly(ro), 1);
    assert_int_equal(shmkv_readonly(s.kv), 0);
    /* A check takes the write lock's read side: a writer's. */
    struct shmkv_check_report report;
    assert_rc(shmkv_check(ro, &report), SHMKV_ERDONLY);
    assert_check_clean(s.kv);

    /* Every write: SHMKV_ERDONLY, the store unchanged. */
    before = stats_of(s.kv);
    int64_t r = 9;
    assert_rc(set_str(ro, "k", "other", 0, 0), SHMKV_ERDONLY);
    assert_rc(set_str(ro, "new", "x", 0, SHMKV_NX), SHMKV_ERDONLY);
    assert_rc(shmkv_del(ro, "k", 1), SHMKV_ERDONLY);
    assert_rc(shmkv_incr(ro, "n", 1, 1, &r), SHMKV_ERDONLY);
    assert_int_equal(r, 9);
    assert_rc(shmkv_expire(ro, "k", 1, 10), SHMKV_ERDONLY);
    assert_rc(shmkv_flush(ro), SHMKV_ERDONLY);
    assert_rc(shmkv_expire_scan(ro, 0), SHMKV_ERDONLY);
    assert_non_null(strstr(shmkv_last_error(), "read-only"));
    st = stats_of(s.kv);
    assert_same_state(&before, &st);
    assert_value_str(s.kv, "k", "value");
    assert_value_str(s.kv, "n", "1");
    assert_absent(s.kv, "new", 3);
    /* Writes by the owner are seen through the read-only handle. */
    assert_ok(set_str(s.kv, "k", "changed", 0, 0));
    assert_value_str(ro, "k", "changed");
    shmkv_close(ro);

    /* A stray write through a read-only handle's value faults in the
     * writing process; the store is untouched. */
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        shmkv_t *h;
        if (shmkv_open(s.key, SHMKV_RDONLY, &h) != 0)
            _exit(2);
        shmkv_val_t v;
        if (shmkv_read_begin(h) != 0 || shmkv_get(h, "k", 1, &v) != 0)
            _exit(3);
        volatile char *p = (volatile char *)(uintptr_t)v.data;
        shmkv_read_end(h); /* no lock held when it dies */
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_segv;
        sigaction(SIGSEGV, &sa, NULL);
        sigaction(SIGBUS, &sa, NULL);
        p[0] = 'X';
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 42);
    assert_value_str(s.kv, "k", "changed");
    /* The dead child's handle does not stop writers. */
    assert_ok(set_str(s.kv, "k", "after child", 0, 0));
    assert_value_str(s.kv, "k", "after child");
    store_drop(&s);
}

/* ---------------------------------------------------------------------- */
/* Statistics and check */

static void test_stats_counters(void **state)
{
    (void)state;
    struct store s;
    store_small(&s, 2u << 20, SHMKV_EVICT_NONE);
    shmkv_t *kv = s.kv;

    struct shmkv_stats st0 = stats_of(kv);
    assert_int_equal(st0.entries, 0);
    assert_int_equal(st0.entries_with_ttl, 0);
    assert_int_equal(st0.bytes_used, 0);
    assert_int_equal(st0.bytes_free, st0.bytes_capacity);
    assert_true(st0.bytes_capacity > 1u << 20);
    assert_true(st0.bytes_capacity < 2u << 20);
    assert_int_equal(st0.hits + st0.misses + st0.sets + st0.deletes +
                         st0.evictions + st0.expirations,
                     0);
    assert_true(st0.index_slots > 0);
    assert_true(st0.segment_bytes >= 2u << 20);
    assert_int_equal(st0.clients, 1);
    assert_int_equal(st0.max_clients, 1024);
    assert_int_equal(st0.lock_timeout_ms, 5000);
    assert_int_equal(st0.eviction, SHMKV_EVICT_NONE);
    assert_int_equal(st0.owner_pid, getpid());
    assert_true(st0.created_unix > 0 && st0.created_unix <= time(NULL));
    assert_true(st0.fragmentation >= 0.0 && st0.fragmentation < 0.01);
    assert_true(st0.generation >= 1);

    /* A set: one entry, its whole 16-byte-rounded block in use. */
    assert_ok(shmkv_set(kv, "key1", 4, "0123456789", 10, 0, 0));
    struct shmkv_stats st = stats_of(kv);
    assert_int_equal(st.sets, 1);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.bytes_used, 32); /* 16 header + 14 bytes, rounded */
    assert_int_equal(st.bytes_free, st0.bytes_capacity - 32);

    /* Hits and misses, by get, get_copy and ttl. */
    shmkv_val_t v;
    assert_ok(shmkv_read_begin(kv));
    assert_ok(shmkv_get(kv, "key1", 4, &v));
    assert_ok(shmkv_get(kv, "key1", 4, &v));
    assert_rc(shmkv_get(kv, "nokey", 5, &v), SHMKV_ENOTFOUND);
    assert_ok(shmkv_read_end(kv));
    char buf[32];
    size_t vlen;
    assert_ok(shmkv_get_copy(kv, "key1", 4, buf, sizeof buf, &vlen));
    assert_rc(shmkv_get_copy(kv, "nokey", 5, buf, sizeof buf, &vlen),
              SHMKV_ENOTFOUND);
    st = stats_of(kv);
    assert_int_equal(st.hits, 3);
    assert_int_equal(st.misses, 2);

    /* Replacing: sets counts it, entries do not grow, bytes follow the
     * new size. */
    assert_ok(
        shmkv_set(kv, "key1", 4, "a value of 30 bytes, exactly!", 30, 0, 0));
    st = stats_of(kv);
    assert_int_equal(st.sets, 2);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.bytes_used, 64); /* 16 + 4 + 30 = 50, rounded */
    /* The old block waits in limbo until no section can see it. */
    assert_int_equal(st.bytes_limbo, 32);
    assert_int_equal(st.bytes_used + st.bytes_free + st.bytes_limbo,
                     st.bytes_capacity);

    /* TTL entries. */
    assert_ok(shmkv_set(kv, "key2", 4, "x", 1, 60, 0));
    st = stats_of(kv);
    assert_int_equal(st.entries, 2);
    assert_int_equal(st.entries_with_ttl, 1);
    assert_int_equal(st.sets, 3);

    /* Deletes: a hit counts, a miss does not. */
    assert_ok(shmkv_del(kv, "key2", 4));
    assert_rc(shmkv_del(kv, "key2", 4), SHMKV_ENOTFOUND);
    st = stats_of(kv);
    assert_int_equal(st.deletes, 1);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.entries_with_ttl, 0);
    assert_int_equal(st.bytes_used, 64);

    /* Counters from another handle, also after it is closed. */
    shmkv_t *h;
    assert_ok(shmkv_open(s.key, 0, &h));
    assert_int_equal(stats_of(kv).clients, 2);
    for (int i = 0; i < 5; i++)
        assert_ok(shmkv_get_copy(h, "key1", 4, buf, sizeof buf, &vlen));
    assert_rc(shmkv_get_copy(h, "gone", 4, buf, sizeof buf, &vlen),
              SHMKV_ENOTFOUND);
    assert_ok(shmkv_set(h, "key3", 4, "y", 1, 0, 0));
    st = stats_of(kv);
    assert_int_equal(st.hits, 3 + 5);
    assert_int_equal(st.misses, 2 + 1);
    assert_int_equal(st.sets, 4);
    shmkv_close(h);
    st = stats_of(kv);
    assert_int_equal(st.clients, 1);
    assert_int_equal(st.hits, 3 + 5);
    assert_int_equal(st.misses, 2 + 1);
    assert_int_equal(st.sets, 4);
    assert_int_equal(st.entries, 2);

    /* Failed calls leave every counter alone. */
    struct shmkv_stats before = stats_of(kv);
    assert_rc(shmkv_set(kv, "key1", 4, "v", 1, 0, SHMKV_NX), SHMKV_EEXIST);
    assert_rc(shmkv_incr(kv, "key1", 4, 1, NULL), SHMKV_ENOTNUM);
    assert_rc(shmkv_set(kv, "", 0, "v", 1, 0, 0), SHMKV_EINVAL);
    struct shmkv_stats after = stats_of(kv);
    assert_same_state(&before, &after);

    /* Many distinct entries: bytes_used is the sum of their blocks. */
    uint64_t expect_used = after.bytes_used;
    char k[32], val[200];
    memset(val, 'z', sizeof val);
    for (unsigned i = 0; i < 1000; i++) {
        int kl = snprintf(k, sizeof k, "many:%u", i);
        size_t vl = i % 200;
        assert_ok(shmkv_set(kv, k, (size_t)kl, val, vl, 0, 0));
        uint64_t units = (16 + (uint64_t)kl + vl + 15) / 16;
        expect_used += (units < 2 ? 2 : units) * 16;
    }
    st = stats_of(kv);
    assert_int_equal(st.entries, 1002);
    assert_int_equal(st.bytes_used, expect_used);
    assert_int_equal(st.bytes_used + st.bytes_free + st.bytes_limbo,
                     st.bytes_capacity);
    assert_int_equal(st.sets, after.sets + 1000);
    assert_true(st.largest_free <= st.bytes_free);
    store_drop(&s);
}

static void test_check_after_mixed_workload(void **state)
{
    (void)state;
    struct store s;
    store_small(&s, 2u << 20, SHMKV_EVICT_NONE);
    shmkv_t *kv = s.kv;
    /* A deterministic mix of sets of varied sizes (some with a TTL),
     * replaces, deletes, expires and counter increments, with the
     * expected contents tracked alongside. */
    enum { KEYS = 600, COUNTERS = 40, OPS = 20000 };
    static int16_t expect_len[KEYS]; /* -1: absent */
    static unsigned char expect_byte[KEYS];
    static int64_t counter[COUNTERS];
    static bool counter_live[COUNTERS];
    for (unsigned i = 0; i < KEYS; i++)
        expect_len[i] = -1;
    static char val[1200];
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    char k[32];
    uint64_t live = 0;
    for (unsigned op = 0; op < OPS; op++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        unsigned i = (unsigned)(rng % KEYS);
        unsigned what = (unsigned)((rng >> 20) % 10);
        int kl = snprintf(k, sizeof k, "mix:%u", i);
        if (what < 6) {
            size_t vl = (size_t)((rng >> 32) % sizeof val);
            unsigned char b = (unsigned char)(rng >> 48);
            memset(val, b, vl);
            uint32_t ttl = what == 5 ? 1000 : 0;
            assert_ok(shmkv_set(kv, k, (size_t)kl, val, vl, ttl, 0));
            live += expect_len[i] < 0;
            expect_len[i] = (int16_t)vl;
            expect_byte[i] = b;
        } else if (what < 8) {
            int rc = shmkv_del(kv, k, (size_t)kl);
            assert_rc(rc, expect_len[i] < 0 ? SHMKV_ENOTFOUND : 0);
            live -= expect_len[i] >= 0;
            expect_len[i] = -1;
        } else if (what == 8) {
            uint32_t ttl = (rng >> 40) % 2 ? 500 : 0;
            int rc = shmkv_expire(kv, k, (size_t)kl, ttl);
            assert_rc(rc, expect_len[i] < 0 ? SHMKV_ENOTFOUND : 0);
        } else {
            unsigned c = i % COUNTERS;
            int64_t delta = (int64_t)((rng >> 24) % 2001) - 1000;
            kl = snprintf(k, sizeof k, "ctr:%u", c);
            int64_t r = 0;
            assert_ok(shmkv_incr(kv, k, (size_t)kl, delta, &r));
            live += !counter_live[c];
            counter_live[c] = true;
            counter[c] += delta;
            assert_int_equal(r, counter[c]);
        }
        if (op % 5000 == 4999)
            assert_check_clean(kv);
    }
    struct shmkv_stats st = stats_of(kv);
    assert_int_equal(st.entries, live);
    for (unsigned i = 0; i < KEYS; i++) {
        int kl = snprintf(k, sizeof k, "mix:%u", i);
        if (expect_len[i] < 0) {
            assert_absent(kv, k, (size_t)kl);
        } else {
            memset(val, expect_byte[i], (size_t)expect_len[i]);
            assert_value(kv, k, (size_t)kl, val, (size_t)expect_len[i]);
        }
    }
    for (unsigned c = 0; c < COUNTERS; c++) {
        int kl = snprintf(k, sizeof k, "ctr:%u", c);
        if (!counter_live[c]) {
            assert_absent(kv, k, (size_t)kl);
            continue;
        }
        int vl = snprintf(val, sizeof val, "%" PRId64, counter[c]);
        assert_value(kv, k, (size_t)kl, val, (size_t)vl);
    }
    struct shmkv_check_report r;
    assert_ok(shmkv_check(kv, &r));
    assert_int_equal(r.problems, 0);
    assert_int_equal(r.entries_seen, live);
    assert_int_equal(r.blocks_used, live);
    assert_int_equal(r.bytes_leaked, 0);
    assert_true(r.blocks_free >= 1);
    store_drop(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strerror_every_code_distinct),
        cmocka_unit_test(test_open_by_key_forms),
        cmocka_unit_test(test_open_by_ftok),
        cmocka_unit_test(test_open_by_config_file),
        cmocka_unit_test(test_bad_where_strings),
        cmocka_unit_test(test_open_no_store),
        cmocka_unit_test(test_open_not_shmkv),
        cmocka_unit_test(test_open_wrong_version),
        cmocka_unit_test(test_open_flags_clients_closed),
        cmocka_unit_test(test_destroy_closes_other_handles),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_binary_keys_and_values),
        cmocka_unit_test(test_empty_value),
        cmocka_unit_test(test_get_copy_buffer_sizes),
        cmocka_unit_test(test_zero_copy_read_section),
        cmocka_unit_test(test_read_section_state),
        cmocka_unit_test(test_set_nx_xx),
        cmocka_unit_test(test_keepttl),
        cmocka_unit_test(test_incr),
        cmocka_unit_test(test_incr_overflow),
        cmocka_unit_test(test_ttl_expiry_and_scan),
        cmocka_unit_test(test_ttl_far_future),
        cmocka_unit_test(test_noeviction_full),
        cmocka_unit_test(test_lru_eviction),
        cmocka_unit_test(test_null_and_empty_arguments),
        cmocka_unit_test(test_size_limits),
        cmocka_unit_test(test_rdonly_handle),
        cmocka_unit_test(test_marks),
        cmocka_unit_test(test_stats_counters),
        cmocka_unit_test(test_check_after_mixed_workload),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
