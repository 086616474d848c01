/*
 * fuzz_store.c - a fuzz target for the store's segments: whatever bytes a
 * damaged or hostile process leaves in them, no call crashes, reads or
 * writes outside the segments, or loops for ever.
 *
 * A small store is built once (entries of several sizes, some with TTLs,
 * some deleted so that the free lists and limbo are not empty) and its
 * control, reader and data segments copied aside. Each input restores
 * those bytes, then damages them as it says: a sequence of records, each
 * naming a region (the control header, the locks, writer slots and pins,
 * the data header with the intent, the index, the limbo ring and the undo
 * log, the arena, the reader segment's client slots and recency cells),
 * an offset in it, and a change (a byte, a word of 0xff or 0, a
 * small increment). Then it runs every kind of call on the damaged store:
 * a fresh attach, gets in a read section (each value handed out must lie
 * inside the data segment), get_copy, ttl, foreach (likewise),
 * stats, check, set, incr and delete. Any result is accepted except a
 * crash, a value outside the segment, or a hang (an alarm catches one).
 *
 * Built with -DSHMKV_LIBFUZZER this is a libFuzzer target (`make fuzz`).
 * Otherwise main() runs FUZZ_RUNS (default 3000) inputs made by a seeded
 * generator (FUZZ_SEED, default from the clock, printed), so that a
 * bounded run is part of `make test`; an input file named on the command
 * line is run instead, to replay what libFuzzer found.
 */
#include <execinfo.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <unistd.h>

#include "internal.h"
#include "testutil.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define NKEYS 96
#define HANG_S 10

static struct shmkv *kv;
static const char *store_key;
static char key_spec[32];
static unsigned char *ctl_copy, *data_copy, *reader_copy;
static size_t ctl_bytes, data_bytes, reader_bytes;
static unsigned char *ctl_live, *data_live, *reader_live;
/* What to remove by id when the store cannot be removed by its key. */
static int ctl_id = -1, data_id = -1, reader_id = -1,
           sem_ids[2 * SEM_SETS_MAX] = {-1, -1, -1, -1, -1, -1, -1, -1};

/* The call under way, for the report of a hang. */
static const char *volatile stage = "";

static void key_of(unsigned i, char *out, size_t cap)
{
    snprintf(out, cap, "key:%u", i);
}

static size_t segment_size(int shmid)
{
    struct shmid_ds ds;
    if (shmctl(shmid, IPC_STAT, &ds) != 0) {
        perror("shmctl");
        abort();
    }
    return ds.shm_segsz;
}

static void fail(const char *what)
{
    fprintf(stderr, "fuzz_store: %s\n", what);
    abort();
}

/* Removes the store's segments and semaphores by id, whatever their
 * bytes say (after a crash on a damaged store). */
static void remove_by_id(void);

/* A child that outlives a crash of this process, however it dies (a
 * sanitizer's report, libFuzzer's timeout, SIGKILL), and then removes the
 * store by id: told "done" first on a normal end, it removes nothing. */
static int watchdog_fd = -1;

static void watchdog_start(void)
{
    int p[2];
    if (pipe(p) != 0)
        fail("pipe");
    pid_t pid = fork();
    if (pid < 0)
        fail("fork");
    if (pid == 0) {
        close(p[1]);
        char c;
        if (read(p[0], &c, 1) != 1)
            remove_by_id();
        _exit(0);
    }
    close(p[0]);
    watchdog_fd = p[1];
}

static void watchdog_done(void)
{
    if (watchdog_fd >= 0 && write(watchdog_fd, "d", 1) == 1)
        close(watchdog_fd);
    watchdog_fd = -1;
}

static void build_store(void)
{
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = 1 << 20;
    o.max_key_bytes = 64;
    o.max_value_bytes = 4096;
    o.max_clients = 16;
    o.lock_timeout_ms = 20;
    o.reader_timeout_ms = 5;
    if (test_create(&o, &kv) != 0)
        fail("cannot create the store");
    store_key = o.key;
    snprintf(key_spec, sizeof key_spec, "%s", store_key);
    char key[32], val[1024];
    for (unsigned i = 0; i < NKEYS; i++) {
        key_of(i, key, sizeof key);
        size_t vlen = (i * 37) % sizeof val;
        memset(val, 'a' + (int)(i % 26), vlen);
        if (shmkv_set(kv, key, strlen(key), val, vlen, i % 3 == 0 ? 1000 : 0,
                      0) != 0)
            fail("cannot fill the store");
    }
    for (unsigned i = 0; i < NKEYS; i += 3) {
        key_of(i, key, sizeof key);
        shmkv_del(kv, key, strlen(key));
    }
    /* Replacements put blocks in limbo. */
    for (unsigned i = 1; i < NKEYS; i += 5) {
        key_of(i, key, sizeof key);
        shmkv_set(kv, key, strlen(key), "replaced", 8, 0, 0);
    }
    /* What is left filled with small values, every other one deleted: a
     * large set must compact the arena. */
    unsigned filled = 0;
    memset(val, 'f', 200);
    for (;; filled++) {
        snprintf(key, sizeof key, "fill%u", filled);
        if (shmkv_set(kv, key, strlen(key), val, 200, 0, 0) != 0)
            break;
    }
    for (unsigned i = 0; i < filled; i += 2) {
        snprintf(key, sizeof key, "fill%u", i);
        shmkv_del(kv, key, strlen(key));
    }
    struct shmkv_check_report r;
    if (shmkv_check(kv, &r) != 0)
        fail("the fresh store does not check");
    /* Every write through kv from here waits a few milliseconds at most. */
    shmkv_set_timeout(kv, 5);
    /* Mappings of the driver's own: the handle may detach its own when a
     * damaged generation word names another segment. */
    ctl_live = shmat(kv->ctl_shmid, NULL, 0);
    data_live = shmat(kv->data_shmid, NULL, 0);
    reader_live = shmat(kv->reader_shmid, NULL, 0);
    if (ctl_live == (void *)-1 || data_live == (void *)-1 ||
        reader_live == (void *)-1)
        fail("cannot attach the store's segments");
    ctl_bytes = segment_size(kv->ctl_shmid);
    data_bytes = segment_size(kv->data_shmid);
    reader_bytes = segment_size(kv->reader_shmid);
    ctl_copy = malloc(ctl_bytes);
    data_copy = malloc(data_bytes);
    reader_copy = malloc(reader_bytes);
    if (ctl_copy == NULL || data_copy == NULL || reader_copy == NULL)
        fail("out of memory");
    memcpy(ctl_copy, ctl_live, ctl_bytes);
    memcpy(data_copy, data_live, data_bytes);
    memcpy(reader_copy, reader_live, reader_bytes);
    ctl_id = kv->ctl_shmid;
    data_id = kv->data_shmid;
    reader_id = kv->reader_shmid;
    for (unsigned i = 0; i < SEM_SETS_MAX; i++) {
        sem_ids[i] = kv->ctl->sem_ids[i];
        sem_ids[SEM_SETS_MAX + i] = kv->ctl->rsem_ids[i];
    }
    watchdog_start();
}

static void remove_by_id(void)
{
    if (ctl_id >= 0)
        shmctl(ctl_id, IPC_RMID, NULL);
    if (data_id >= 0)
        shmctl(data_id, IPC_RMID, NULL);
    if (reader_id >= 0)
        shmctl(reader_id, IPC_RMID, NULL);
    for (unsigned i = 0; i < 2 * SEM_SETS_MAX; i++)
        if (sem_ids[i] >= 0)
            semctl(sem_ids[i], 0, IPC_RMID);
}

/* The regions an input's records name, as [start, start + len) of a
 * segment. */
struct region {
    unsigned char *base;
    size_t start, len;
};

static unsigned regions_of(struct region *r)
{
    const struct ctl_header *c = (const struct ctl_header *)ctl_copy;
    const struct data_header *d = (const struct data_header *)data_copy;
    unsigned n = 0;
    r[n++] = (struct region){ctl_live, 0, sizeof *c};
    r[n++] = (struct region){ctl_live, c->locks_off, ctl_bytes - c->locks_off};
    r[n++] = (struct region){data_live, 0, d->index_off};
    r[n++] =
        (struct region){data_live, d->index_off, d->limbo_off - d->index_off};
    r[n++] =
        (struct region){data_live, d->limbo_off, d->arena_off - d->limbo_off};
    r[n++] =
        (struct region){data_live, d->arena_off, data_bytes - d->arena_off};
    /* What every reader may write: client slots and recency cells. */
    r[n++] = (struct region){reader_live, 0, reader_bytes};
    return n;
}

/* Applies one record of 6 bytes: region, 3 bytes of offset, change, byte. */
static void damage(const uint8_t *rec)
{
    struct region r[10];
    unsigned n = regions_of(r);
    const struct region *g = &r[rec[0] % n];
    if (g->len == 0)
        return;
    size_t off = ((size_t)rec[1] | (size_t)rec[2] << 8 | (size_t)rec[3] << 16);
    unsigned char *p = g->base + g->start + off % g->len;
    size_t room = g->len - off % g->len;
    switch (rec[4] % 5) {
    case 0:
        *p = rec[5];
        break;
    case 1:
        memset(p, 0xff, room < 8 ? room : 8);
        break;
    case 2:
        memset(p, 0, room < 8 ? room : 8);
        break;
    case 3:
        *p = (unsigned char)(*p + 1 + rec[5] % 4);
        break;
    default:
        /* A 32-bit word: an offset or a length somewhere. */
        if (room >= 4) {
            uint32_t v = (uint32_t)rec[5] * 0x01010101u;
            memcpy(p, &v, 4);
        }
        break;
    }
}

/* True if [p, p + len) lies in the data segment as the handle maps it. */
static bool in_data(const void *p, size_t len)
{
    const unsigned char *b = p, *base = (const unsigned char *)kv->data;
    return base != NULL && b >= base && len <= data_bytes &&
           (size_t)(b - base) <= data_bytes - len;
}

static int visit(void *arg, const void *key, size_t klen, const void *val,
                 size_t vlen, int64_t ttl_s)
{
    (void)ttl_s;
    if (!in_data(key, klen) || !in_data(val, vlen))
        fail("foreach handed out memory outside the data segment");
    (*(unsigned *)arg)++;
    return 0;
}

static void exercise(void)
{
    char key[32];
    /* A fresh attach validates what it maps. */
    stage = "a fresh attach";
    struct shmkv *other = NULL;
    if (shmkv_open(key_spec, SHMKV_RDONLY, &other) == 0) {
        if (shmkv_read_begin(other) == 0) {
            key_of(2, key, sizeof key);
            shmkv_val_t v;
            const unsigned char *base = (const unsigned char *)other->data;
            if (shmkv_get(other, key, strlen(key), &v) == 0 &&
                ((const unsigned char *)v.data < base ||
                 (const unsigned char *)v.data + v.len > base + data_bytes))
                fail("get through a fresh handle left the data segment");
            shmkv_read_end(other);
        }
        shmkv_close(other);
    }
    stage = "gets";
    if (shmkv_read_begin(kv) == 0) {
        for (unsigned i = 0; i < NKEYS + 4; i += 7) {
            key_of(i, key, sizeof key);
            shmkv_val_t v;
            if (shmkv_get(kv, key, strlen(key), &v) == 0 &&
                !in_data(v.data, v.len))
                fail("get handed out memory outside the data segment");
        }
        shmkv_read_end(kv);
    }
    char buf[4096];
    size_t vlen;
    int64_t ttl;
    stage = "get_copy and ttl";
    key_of(4, key, sizeof key);
    shmkv_get_copy(kv, key, strlen(key), buf, sizeof buf, &vlen);
    key_of(6, key, sizeof key);
    shmkv_ttl(kv, key, strlen(key), &ttl);
    stage = "foreach";
    unsigned seen = 0;
    shmkv_foreach(kv, visit, &seen);
    stage = "stats";
    struct shmkv_stats st;
    shmkv_stats(kv, &st);
    stage = "check";
    struct shmkv_check_report r;
    shmkv_check(kv, &r);
    stage = "set";
    key_of(5, key, sizeof key);
    shmkv_set(kv, key, strlen(key), "new value", 9, 0, 0);
    key_of(NKEYS + 1, key, sizeof key);
    shmkv_set(kv, key, strlen(key), buf, 300, 0, 0);
    stage = "set that compacts";
    key_of(NKEYS + 2, key, sizeof key);
    shmkv_set(kv, key, strlen(key), buf, 4000, 0, 0);
    stage = "incr";
    int64_t n;
    key_of(7, key, sizeof key);
    shmkv_incr(kv, key, strlen(key), 1, &n);
    stage = "del";
    key_of(8, key, sizeof key);
    shmkv_del(kv, key, strlen(key));
}

#ifdef SHMKV_LIBFUZZER
static void end_of_run(void)
{
    watchdog_done();
    remove_by_id();
}
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    build_store();
#ifdef SHMKV_LIBFUZZER
    /* However the run ends, the segments go: at exit, and (the watchdog)
     * when a sanitizer or libFuzzer ends it on a crash or a timeout. */
    atexit(end_of_run);
#endif
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (kv == NULL)
        build_store();
    memcpy(ctl_live, ctl_copy, ctl_bytes);
    memcpy(data_live, data_copy, data_bytes);
    memcpy(reader_live, reader_copy, reader_bytes);
    for (size_t i = 0; i + 6 <= size; i += 6)
        damage(data + i);
    alarm(HANG_S);
    exercise();
    alarm(0);
    return 0;
}

#ifndef SHMKV_LIBFUZZER

static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Says what failed, in which call and where, then removes the store. A
 * crash leaves the segments damaged, and a damaged store cannot be removed
 * by its key: by id, then the watchdog is told, so that it never removes
 * an id some other program has been given since. */
static void fail_in_handler(const char *what)
{
    ssize_t ignored = write(2, what, strlen(what));
    ignored = write(2, stage, strlen(stage));
    ignored = write(2, "\n", 1);
    (void)ignored;
    void *frames[32];
    backtrace_symbols_fd(frames, backtrace(frames, 32), 2);
    remove_by_id();
    watchdog_done();
    test_destroy_all();
}

static void on_crash(int sig)
{
    fail_in_handler("fuzz_store: crashed in: ");
    signal(sig, SIG_DFL);
    raise(sig);
}

static void on_alarm(int sig)
{
    (void)sig;
    fail_in_handler("fuzz_store: a call hung on a damaged store: ");
    _exit(3);
}

static void replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        exit(2);
    }
    static uint8_t buf[1 << 16];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    LLVMFuzzerTestOneInput(buf, len);
    printf("fuzz_store: %s: no crash, no hang\n", path);
}

int main(int argc, char **argv)
{
    test_cleanup_install();
    signal(SIGALRM, on_alarm);
    signal(SIGSEGV, on_crash);
    signal(SIGBUS, on_crash);
    signal(SIGABRT, on_crash);
    build_store();
    if (argc > 1) {
        for (int i = 1; i < argc; i++)
            replay_file(argv[i]);
        memcpy(ctl_live, ctl_copy, ctl_bytes);
        memcpy(data_live, data_copy, data_bytes);
        watchdog_done();
        test_destroy(kv, store_key);
        return 0;
    }
    const char *runs_env = getenv("FUZZ_RUNS");
    unsigned long runs = runs_env ? strtoul(runs_env, NULL, 0) : 3000;
    const char *seed_env = getenv("FUZZ_SEED");
    if (seed_env != NULL)
        setenv("SHMKV_TEST_SEED", seed_env, 1);
    uint64_t rng = test_seed("fuzz_store");
    uint8_t input[6 * 32];
    for (unsigned long run = 0; run < runs; run++) {
        /* Mostly a few records: one damaged field at a time finds the
         * check that is missing; sometimes many. */
        size_t records = 1 + next_random(&rng) % (run % 8 == 0 ? 32 : 3);
        for (size_t i = 0; i < records * 6; i++)
            input[i] = (uint8_t)next_random(&rng);
        LLVMFuzzerTestOneInput(input, records * 6);
    }
    memcpy(ctl_live, ctl_copy, ctl_bytes);
    memcpy(data_live, data_copy, data_bytes);
    memcpy(reader_live, reader_copy, reader_bytes);
    watchdog_done();
    test_destroy(kv, store_key);
    printf("fuzz_store: %lu damaged stores, no crash, no hang\n", runs);
    return 0;
}

#endif
