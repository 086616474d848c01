/*
 * Snapshot tests: the file format byte for byte, save and load round trips
 * (binary data, empty values, TTLs, expiry while on disk), the atomic save
 * (no temp file left, the old snapshot untouched when a save fails), saves
 * and loads refused for want of permission (as an unprivileged child, since
 * root bypasses file modes), and refusal of every kind of damaged or
 * incompatible snapshot with the target store left empty. Each test works
 * in its own mkdtemp directory, removed afterwards, and every store goes
 * through test_create.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include <xxhash.h>

#include "snapshot.h"
#include "testutil.h"

#define HEADER_BYTES 28
#define RECORD_HEADER_BYTES 16
#define TRAILER_BYTES 8

struct fixture {
    char dir[64];
    char snap[128];
};

/* ---- files and directories ---- */

static int remove_entry(const char *path, const struct stat *st, int type,
                        struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    if (type == FTW_DP)
        chmod(path, 0700);
    return remove(path);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    if (f == NULL)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/shmkv-snapshot-XXXXXX");
    if (mkdtemp(f->dir) == NULL) {
        free(f);
        return -1;
    }
    snprintf(f->snap, sizeof f->snap, "%s/store.snap", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    chmod(f->dir, 0700);
    nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, 0, SEEK_END), 0);
    long size = ftell(fp);
    assert_true(size >= 0);
    rewind(fp);
    unsigned char *data = malloc((size_t)size + 1);
    assert_non_null(data);
    assert_int_equal(fread(data, 1, (size_t)size, fp), (size_t)size);
    fclose(fp);
    *len = (size_t)size;
    return data;
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(data, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

/* Number of directory entries other than . and .. */
static int count_dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

/* ---- the format, encoded independently of snapshot.c ---- */

static void le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t rd32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t rd64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

struct crafted {
    unsigned char buf[1 << 16];
    size_t len;
    uint64_t count;
};

static void craft_begin(struct crafted *c)
{
    memcpy(c->buf, "SHMKVSNP", 8);
    le32(c->buf + 8, 1);
    le64(c->buf + 12, (uint64_t)time(NULL));
    c->len = HEADER_BYTES;
    c->count = 0;
}

static void craft_record(struct crafted *c, const char *key, const char *val,
                         int64_t expire_unix)
{
    size_t klen = strlen(key), vlen = strlen(val);
    assert_true(c->len + RECORD_HEADER_BYTES + klen + vlen + 8 <=
                sizeof c->buf);
    unsigned char *p = c->buf + c->len;
    le32(p, (uint32_t)klen);
    le32(p + 4, (uint32_t)vlen);
    le64(p + 8, (uint64_t)expire_unix);
    memcpy(p + RECORD_HEADER_BYTES, key, klen);
    memcpy(p + RECORD_HEADER_BYTES + klen, val, vlen);
    c->len += RECORD_HEADER_BYTES + klen + vlen;
    c->count++;
}

/* Writes the count and the trailer; the result is a valid snapshot. */
static void craft_end(struct crafted *c)
{
    le64(c->buf + 20, c->count);
    le64(c->buf + c->len, XXH3_64bits(c->buf, c->len));
    c->len += TRAILER_BYTES;
}

/* Recomputes the trailer of a whole snapshot after an edit. */
static void fix_checksum(unsigned char *data, size_t len)
{
    le64(data + len - TRAILER_BYTES, XXH3_64bits(data, len - TRAILER_BYTES));
}

/* ---- stores ---- */

static struct shmkv *make_store(uint64_t size_bytes, char key[32])
{
    struct shmkv_options opts;
    shmkv_options_init(&opts);
    opts.size_bytes = size_bytes;
    struct shmkv *kv = NULL;
    assert_int_equal(test_create(&opts, &kv), 0);
    snprintf(key, 32, "%s", opts.key);
    return kv;
}

static uint64_t store_entries(struct shmkv *kv)
{
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    return st.entries;
}

static void assert_value(struct shmkv *kv, const void *key, size_t klen,
                         const void *want, size_t want_len)
{
    char buf[8192];
    size_t vlen = 0;
    int rc = shmkv_get_copy(kv, key, klen, buf, sizeof buf, &vlen);
    assert_int_equal(rc, 0);
    assert_int_equal(vlen, want_len);
    if (want_len > 0)
        assert_memory_equal(buf, want, want_len);
}

/* A snapshot call that must succeed; on failure shows its message. */
static void expect_ok(int rc, const char *err)
{
    if (rc != 0)
        fail_msg("snapshot call failed: %s", err);
}

static void assert_contains(const char *haystack, const char *needle)
{
    if (strstr(haystack, needle) == NULL)
        fail_msg("\"%s\" does not contain \"%s\"", haystack, needle);
}

/* Loads path into a fresh store and expects a refusal naming why, with the
 * store left empty. */
static void assert_refused(const char *path, const char *why)
{
    char key[32];
    struct shmkv *kv = make_store(8u << 20, key);
    char err[512] = "";
    uint64_t n = 99;
    assert_int_equal(snapshot_load(kv, path, &n, err, sizeof err), -1);
    assert_contains(err, path);
    assert_contains(err, why);
    assert_int_equal(n, 0);
    assert_int_equal(store_entries(kv), 0);
    test_destroy(kv, key);
}

/* ---- tests ---- */

static void test_round_trip(void **state)
{
    struct fixture *f = *state;
    char key_a[32], key_b[32];
    struct shmkv *a = make_store(8u << 20, key_a);

    char k[64], v[600];
    for (int i = 0; i < 3000; i++) {
        int klen = snprintf(k, sizeof k, "key:%d", i);
        memset(v, 'a' + i % 26, sizeof v);
        assert_int_equal(
            shmkv_set(a, k, (size_t)klen, v, (size_t)(i % 600), 0, 0), 0);
    }
    const unsigned char bin_key[] = {0x00, 0xff, '\n', 0x80, 0x00, 0x7f};
    unsigned char bin_val[256];
    for (int i = 0; i < 256; i++)
        bin_val[i] = (unsigned char)(255 - i);
    assert_int_equal(
        shmkv_set(a, bin_key, sizeof bin_key, bin_val, sizeof bin_val, 0, 0),
        0);
    assert_int_equal(shmkv_set(a, "empty", 5, "", 0, 0, 0), 0);
    assert_int_equal(shmkv_set(a, "ttl100", 6, "x", 1, 100, 0), 0);
    assert_int_equal(shmkv_set(a, "ttl5000", 7, "y", 1, 5000, 0), 0);

    char err[512] = "";
    uint64_t saved = 0;
    expect_ok(snapshot_save(a, f->snap, &saved, err, sizeof err), err);
    assert_int_equal(saved, 3000 + 4);
    /* Only the snapshot is left in the directory: no temp file. */
    assert_int_equal(count_dir_entries(f->dir), 1);
    struct stat st;
    assert_int_equal(stat(f->snap, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    struct shmkv *b = make_store(8u << 20, key_b);
    uint64_t loaded = 0;
    expect_ok(snapshot_load(b, f->snap, &loaded, err, sizeof err), err);
    assert_int_equal(loaded, saved);
    assert_int_equal(store_entries(b), saved);

    for (int i = 0; i < 3000; i++) {
        int klen = snprintf(k, sizeof k, "key:%d", i);
        memset(v, 'a' + i % 26, sizeof v);
        assert_value(b, k, (size_t)klen, v, (size_t)(i % 600));
        int64_t ttl = 0;
        assert_int_equal(shmkv_ttl(b, k, (size_t)klen, &ttl), 0);
        assert_int_equal(ttl, -1);
    }
    assert_value(b, bin_key, sizeof bin_key, bin_val, sizeof bin_val);
    assert_value(b, "empty", 5, "", 0);
    assert_value(b, "ttl100", 6, "x", 1);
    int64_t ttl = 0;
    assert_int_equal(shmkv_ttl(b, "ttl100", 6, &ttl), 0);
    assert_in_range(ttl, 97, 100);
    assert_int_equal(shmkv_ttl(b, "ttl5000", 7, &ttl), 0);
    assert_in_range(ttl, 4997, 5000);

    test_destroy(b, key_b);
    test_destroy(a, key_a);
}

/* Pins the format: header, one record, trailer, all little-endian. */
static void test_file_format(void **state)
{
    struct fixture *f = *state;
    char key[32];
    struct shmkv *kv = make_store(8u << 20, key);
    assert_int_equal(shmkv_set(kv, "abc", 3, "hello", 5, 1000, 0), 0);
    int64_t before = time(NULL);
    char err[512] = "";
    expect_ok(snapshot_save(kv, f->snap, NULL, err, sizeof err), err);
    int64_t after = time(NULL);

    size_t len = 0;
    unsigned char *d = read_file(f->snap, &len);
    assert_int_equal(len, HEADER_BYTES + RECORD_HEADER_BYTES + 3 + 5 +
                              TRAILER_BYTES);
    assert_memory_equal(d, "SHMKVSNP", 8);
    assert_int_equal(rd32(d + 8), 2);
    assert_in_range((int64_t)rd64(d + 12), before - 1, after);
    assert_int_equal(rd64(d + 20), 1);
    const unsigned char *r = d + HEADER_BYTES;
    assert_int_equal(rd32(r), 3);
    assert_int_equal(rd32(r + 4), 5);
    /* Expiry in unix milliseconds. */
    assert_in_range((int64_t)rd64(r + 8), (before + 998) * 1000,
                    (after + 1000) * 1000 + 999);
    assert_memory_equal(r + 16, "abchello", 8);
    assert_int_equal(rd64(d + len - 8), XXH3_64bits(d, len - 8));
    free(d);
    test_destroy(kv, key);
}

static void test_empty_store(void **state)
{
    struct fixture *f = *state;
    char key_a[32], key_b[32];
    struct shmkv *a = make_store(8u << 20, key_a);
    char err[512] = "";
    uint64_t n = 99;
    expect_ok(snapshot_save(a, f->snap, &n, err, sizeof err), err);
    assert_int_equal(n, 0);
    assert_int_equal(count_dir_entries(f->dir), 1);
    struct stat st;
    assert_int_equal(stat(f->snap, &st), 0);
    assert_int_equal(st.st_size, HEADER_BYTES + TRAILER_BYTES);

    struct shmkv *b = make_store(8u << 20, key_b);
    n = 99;
    expect_ok(snapshot_load(b, f->snap, &n, err, sizeof err), err);
    assert_int_equal(n, 0);
    assert_int_equal(store_entries(b), 0);
    test_destroy(b, key_b);
    test_destroy(a, key_a);
}

/* Saving over an existing snapshot replaces it whole. */
static void test_save_replaces(void **state)
{
    struct fixture *f = *state;
    char key_a[32], key_b[32];
    struct shmkv *a = make_store(8u << 20, key_a);
    char err[512] = "";
    assert_int_equal(shmkv_set(a, "old", 3, "1", 1, 0, 0), 0);
    expect_ok(snapshot_save(a, f->snap, NULL, err, sizeof err), err);
    assert_int_equal(shmkv_del(a, "old", 3), 0);
    assert_int_equal(shmkv_set(a, "new", 3, "2", 1, 0, 0), 0);
    expect_ok(snapshot_save(a, f->snap, NULL, err, sizeof err), err);
    assert_int_equal(count_dir_entries(f->dir), 1);

    struct shmkv *b = make_store(8u << 20, key_b);
    expect_ok(snapshot_load(b, f->snap, NULL, err, sizeof err), err);
    assert_int_equal(store_entries(b), 1);
    assert_value(b, "new", 3, "2", 1);
    test_destroy(b, key_b);
    test_destroy(a, key_a);
}

/* Saves a first snapshot, then checks that a failing save leaves it
 * byte-for-byte as it was and leaves no temp file. */
static void test_failed_save_leaves_path(void **state)
{
    struct fixture *f = *state;
    char key[32];
    struct shmkv *kv = make_store(8u << 20, key);
    char err[512] = "";
    char v[4096];
    memset(v, 'v', sizeof v);
    assert_int_equal(shmkv_set(kv, "first", 5, "1", 1, 0, 0), 0);
    expect_ok(snapshot_save(kv, f->snap, NULL, err, sizeof err), err);
    size_t old_len = 0;
    unsigned char *old = read_file(f->snap, &old_len);
    char k[32];
    for (int i = 0; i < 200; i++) {
        int klen = snprintf(k, sizeof k, "k%d", i);
        assert_int_equal(shmkv_set(kv, k, (size_t)klen, v, sizeof v, 0, 0), 0);
    }

    /* 1. The temp name is taken by a directory: open fails (EISDIR), and
     * the directory someone else made is not removed. Works as root. */
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", f->snap, (long)getpid());
    assert_int_equal(mkdir(tmp, 0700), 0);
    err[0] = '\0';
    assert_int_equal(snapshot_save(kv, f->snap, NULL, err, sizeof err), -1);
    assert_contains(err, f->snap);
    assert_contains(err, "cannot create");
    struct stat st;
    assert_int_equal(stat(tmp, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(rmdir(tmp), 0);

    /* 2. The disk "fills" mid-stream: a file size limit makes a write fail
     * after the walk has started. The temp file must go. */
    struct rlimit saved_limit, small;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &saved_limit), 0);
    small = saved_limit;
    small.rlim_cur = 64 * 1024;
    void (*saved_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
    err[0] = '\0';
    int rc = snapshot_save(kv, f->snap, NULL, err, sizeof err);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &saved_limit), 0);
    signal(SIGXFSZ, saved_handler);
    assert_int_equal(rc, -1);
    assert_contains(err, "File too large");

    /* A directory we may not write to: test_permission_denied. */

    /* Through all of it the old snapshot is intact and alone. */
    size_t now_len = 0;
    unsigned char *now = read_file(f->snap, &now_len);
    assert_int_equal(now_len, old_len);
    assert_memory_equal(now, old, old_len);
    assert_int_equal(count_dir_entries(f->dir), 1);
    free(now);
    free(old);

    /* 3. Paths that cannot exist: under a missing directory, and under a
     * regular file used as a directory. Nothing is created. */
    char bad[256];
    snprintf(bad, sizeof bad, "%s/missing/store.snap", f->dir);
    err[0] = '\0';
    assert_int_equal(snapshot_save(kv, bad, NULL, err, sizeof err), -1);
    assert_contains(err, "No such file or directory");
    snprintf(bad, sizeof bad, "%s/store.snap/inner.snap", f->dir);
    err[0] = '\0';
    assert_int_equal(snapshot_save(kv, bad, NULL, err, sizeof err), -1);
    assert_contains(err, "Not a directory");
    assert_int_equal(count_dir_entries(f->dir), 1);
    test_destroy(kv, key);
}

/* ---- permission denied, as an unprivileged process ---- */

/* Root bypasses file permissions, so the permission case runs in a forked
 * child that first becomes nobody (65534). A child that cannot switch, or
 * that still writes where its mode forbids (CAP_DAC_OVERRIDE), reports
 * that, and the test is skipped rather than passed. */
#define UNPRIVILEGED_ID 65534
#define CHILD_RAN 0
#define CHILD_BROKEN 1
#define CHILD_SKIPPED 77

/* What the unprivileged child was given: paths made by the parent. */
struct denied_case {
    const char *dir;      /* mode 0555: the child may not create files */
    const char *snap;     /* mode 0000: the child may not read it */
    const char *writable; /* the child's own directory, for the controls */
    const char *key_full; /* the store to save */
    const char *key_empty;
};

/* What it found, sent back through a pipe: the parent asserts on it. */
struct denied_report {
    char why[256]; /* why the child was skipped or broken */
    int save_rc;
    char save_err[512];
    int load_rc;
    uint64_t load_entries;
    uint64_t entries_after_load;
    char load_err[512];
    int control_save_rc;
    uint64_t control_saved;
    char control_save_err[512];
    int control_load_rc;
    uint64_t control_loaded;
    char control_load_err[512];
};

/* Whether this process may still create a file in c->dir, whose mode says
 * it may not. */
static bool permissions_bypassed(const struct denied_case *c)
{
    char probe[192];
    snprintf(probe, sizeof probe, "%s/probe", c->dir);
    int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return false;
    close(fd);
    unlink(probe);
    return true;
}

/* The child: no cmocka assertions here (a failure would unwind into the
 * child's copy of the runner); it fills a report, writes it to out_fd and
 * exits with CHILD_RAN, CHILD_SKIPPED or CHILD_BROKEN. */
static void denied_child(const struct denied_case *c, int out_fd)
{
    struct denied_report r;
    memset(&r, 0, sizeof r);
    int code = CHILD_BROKEN;
    struct shmkv *full = NULL, *empty = NULL;
    struct shmkv_stats st;
    int rc;
    char own[256];
    snprintf(own, sizeof own, "%s/store.snap", c->writable);
    if (geteuid() == 0 &&
        (setgroups(0, NULL) != 0 ||
         setresgid(UNPRIVILEGED_ID, UNPRIVILEGED_ID, UNPRIVILEGED_ID) != 0 ||
         setresuid(UNPRIVILEGED_ID, UNPRIVILEGED_ID, UNPRIVILEGED_ID) != 0)) {
        snprintf(r.why, sizeof r.why, "root cannot switch to uid %d: %s",
                 UNPRIVILEGED_ID, strerror(errno));
        code = CHILD_SKIPPED;
        goto report;
    }
    if (permissions_bypassed(c)) {
        snprintf(r.why, sizeof r.why,
                 "uid %ld creates files in a directory of mode 0555: file "
                 "modes do not bind it (CAP_DAC_OVERRIDE?)",
                 (long)geteuid());
        code = CHILD_SKIPPED;
        goto report;
    }
    rc = shmkv_open(c->key_full, 0, &full);
    if (rc == 0)
        rc = shmkv_open(c->key_empty, 0, &empty);
    if (rc != 0) {
        snprintf(r.why, sizeof r.why, "uid %ld cannot open the stores: %s",
                 (long)geteuid(), shmkv_strerror(rc));
        goto report;
    }

    /* Refused: a directory it may not write to, a file it may not read. */
    r.save_rc =
        snapshot_save(full, c->snap, NULL, r.save_err, sizeof r.save_err);
    r.load_entries = 99;
    r.load_rc = snapshot_load(empty, c->snap, &r.load_entries, r.load_err,
                              sizeof r.load_err);
    if (shmkv_stats(empty, &st) == 0)
        r.entries_after_load = st.entries;

    /* Controls: where it may, the same process saves and loads, so the
     * refusals above are the permissions and nothing else. */
    r.control_save_rc =
        snapshot_save(full, own, &r.control_saved, r.control_save_err,
                      sizeof r.control_save_err);
    r.control_load_rc =
        snapshot_load(empty, own, &r.control_loaded, r.control_load_err,
                      sizeof r.control_load_err);
    code = CHILD_RAN;
report:
    shmkv_close(empty);
    shmkv_close(full);
    const char *p = (const char *)&r;
    size_t left = sizeof r;
    while (left > 0) {
        ssize_t n = write(out_fd, p, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            _exit(CHILD_BROKEN);
        p += n;
        left -= (size_t)n;
    }
    _exit(code);
}

/* Runs denied_child and returns its exit code, its report in *r. */
static int run_denied_child(const struct denied_case *c,
                            struct denied_report *r)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        denied_child(c, fds[1]);
    }
    close(fds[1]);
    memset(r, 0, sizeof *r);
    size_t got = 0;
    while (got < sizeof *r) {
        ssize_t n = read(fds[0], (char *)r + got, sizeof *r - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fds[0]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status))
        fail_msg("the unprivileged child died of signal %d",
                 WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    if (got != sizeof *r)
        fail_msg("the unprivileged child sent %zu of %zu report bytes", got,
                 sizeof *r);
    return WEXITSTATUS(status);
}

/* A store other uids may open: the unprivileged child attaches it. */
static struct shmkv *make_shared_store(uint64_t size_bytes, char key[32])
{
    struct shmkv_options opts;
    shmkv_options_init(&opts);
    opts.size_bytes = size_bytes;
    opts.mode = 0666;
    struct shmkv *kv = NULL;
    assert_int_equal(test_create(&opts, &kv), 0);
    snprintf(key, 32, "%s", opts.key);
    return kv;
}

/* Without permission a save is refused and leaves the old snapshot as it
 * was, and a load is refused and leaves the store empty; each error names
 * the path and says "Permission denied". */
static void test_permission_denied(void **state)
{
    struct fixture *f = *state;
    char key_full[32], key_empty[32];
    struct shmkv *full = make_shared_store(8u << 20, key_full);
    struct shmkv *empty = make_shared_store(8u << 20, key_empty);
    char err[512] = "";
    assert_int_equal(shmkv_set(full, "first", 5, "1", 1, 0, 0), 0);
    expect_ok(snapshot_save(full, f->snap, NULL, err, sizeof err), err);
    size_t old_len = 0;
    unsigned char *old = read_file(f->snap, &old_len);
    char k[32];
    for (int i = 0; i < 100; i++) {
        int klen = snprintf(k, sizeof k, "k%d", i);
        assert_int_equal(shmkv_set(full, k, (size_t)klen, "v", 1, 0, 0), 0);
    }

    /* The child's own directory, then the modes that refuse it: the
     * directory is still searchable, so what is refused is writing to it
     * and reading the snapshot, not reaching them. */
    char writable[192];
    snprintf(writable, sizeof writable, "%s/writable", f->dir);
    assert_int_equal(mkdir(writable, 0700), 0);
    if (geteuid() == 0)
        assert_int_equal(chown(writable, UNPRIVILEGED_ID, UNPRIVILEGED_ID), 0);
    assert_int_equal(chmod(f->snap, 0000), 0);
    assert_int_equal(chmod(f->dir, 0555), 0);

    struct denied_case c = {f->dir, f->snap, writable, key_full, key_empty};
    struct denied_report r;
    int code = run_denied_child(&c, &r);
    assert_int_equal(chmod(f->dir, 0700), 0);
    assert_int_equal(chmod(f->snap, 0600), 0);
    if (code == CHILD_SKIPPED) {
        free(old);
        test_destroy(empty, key_empty);
        test_destroy(full, key_full);
        print_message("permission case skipped: %s\n", r.why);
        skip();
    }
    if (code != CHILD_RAN)
        fail_msg("the unprivileged child failed (exit %d): %s", code, r.why);

    assert_int_equal(r.save_rc, -1);
    assert_contains(r.save_err, f->snap);
    assert_contains(r.save_err, "cannot create");
    assert_contains(r.save_err, "Permission denied");
    assert_int_equal(r.load_rc, -1);
    assert_contains(r.load_err, f->snap);
    assert_contains(r.load_err, "cannot read: Permission denied");
    assert_int_equal(r.load_entries, 0);
    assert_int_equal(r.entries_after_load, 0);
    expect_ok(r.control_save_rc, r.control_save_err);
    assert_int_equal(r.control_saved, 101);
    expect_ok(r.control_load_rc, r.control_load_err);
    assert_int_equal(r.control_loaded, 101);

    /* The control snapshot is the child's: it ran as the uid it says. */
    char own[256];
    snprintf(own, sizeof own, "%s/store.snap", writable);
    struct stat st;
    assert_int_equal(stat(own, &st), 0);
    assert_int_equal(st.st_uid,
                     geteuid() == 0 ? (uid_t)UNPRIVILEGED_ID : geteuid());

    /* The old snapshot is intact, and beside it only the child's
     * directory: no temp file. The child's load reached the store. */
    size_t now_len = 0;
    unsigned char *now = read_file(f->snap, &now_len);
    assert_int_equal(now_len, old_len);
    assert_memory_equal(now, old, old_len);
    assert_int_equal(count_dir_entries(f->dir), 2);
    assert_int_equal(count_dir_entries(writable), 1);
    assert_int_equal(store_entries(empty), 101);
    assert_value(empty, "k42", 3, "v", 1);
    free(now);
    free(old);
    test_destroy(empty, key_empty);
    test_destroy(full, key_full);
}

/* A good snapshot with small entries and one big value, so that its middle
 * byte lies inside the big value wherever the hash order puts it. */
static unsigned char *good_snapshot(struct fixture *f, size_t *len)
{
    char key[32];
    struct shmkv *kv = make_store(8u << 20, key);
    static char big[64 * 1024];
    memset(big, 'B', sizeof big);
    char k[16];
    for (int i = 0; i < 5; i++) {
        int klen = snprintf(k, sizeof k, "small%d", i);
        assert_int_equal(shmkv_set(kv, k, (size_t)klen, "0123456789", 10, 0, 0),
                         0);
    }
    assert_int_equal(shmkv_set(kv, "big", 3, big, sizeof big, 0, 0), 0);
    char err[512] = "";
    expect_ok(snapshot_save(kv, f->snap, NULL, err, sizeof err), err);
    test_destroy(kv, key);
    return read_file(f->snap, len);
}

static void test_flipped_byte_refused(void **state)
{
    struct fixture *f = *state;
    size_t len = 0;
    unsigned char *d = good_snapshot(f, &len);
    char path[192];
    snprintf(path, sizeof path, "%s/flipped.snap", f->dir);
    d[len / 2] ^= 0x01;
    write_file(path, d, len);
    assert_refused(path, "checksum mismatch");
    d[len / 2] ^= 0x01;

    /* A flip in the header's creation time, and in the trailer itself. */
    d[14] ^= 0x40;
    write_file(path, d, len);
    assert_refused(path, "checksum mismatch");
    d[14] ^= 0x40;
    d[len - 3] ^= 0x80;
    write_file(path, d, len);
    assert_refused(path, "checksum mismatch");
    free(d);
}

static void test_truncated_refused(void **state)
{
    struct fixture *f = *state;
    size_t len = 0;
    unsigned char *d = good_snapshot(f, &len);
    char path[192];
    snprintf(path, sizeof path, "%s/cut.snap", f->dir);
    const size_t cuts[] = {
        0,                   /* empty */
        5,                   /* inside the magic */
        20,                  /* inside the header */
        HEADER_BYTES,        /* header only */
        HEADER_BYTES + 10,   /* inside the first record header */
        len / 2,             /* inside the big value */
        len - TRAILER_BYTES, /* the trailer missing */
        len - 1,             /* one byte short */
    };
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        write_file(path, d, cuts[i]);
        char why[64];
        snprintf(why, sizeof why, "truncated (%zu bytes, expected at least",
                 cuts[i]);
        assert_refused(path, why);
    }
    free(d);
}

static void test_wrong_magic_refused(void **state)
{
    struct fixture *f = *state;
    size_t len = 0;
    unsigned char *d = good_snapshot(f, &len);
    char path[192];
    snprintf(path, sizeof path, "%s/magic.snap", f->dir);
    d[0] = 'X';
    fix_checksum(d, len);
    write_file(path, d, len);
    assert_refused(path, "not a shmkv snapshot");

    const char *text = "[store]\nkey = 0x5eed0001\n";
    write_file(path, text, strlen(text));
    assert_refused(path, "not a shmkv snapshot");
    write_file(path, "SH", 2); /* could be a cut snapshot */
    assert_refused(path, "truncated (2 bytes");
    write_file(path,
               "\x7f"
               "ELF",
               4);
    assert_refused(path, "not a shmkv snapshot");
    free(d);
}

static void test_wrong_version_refused(void **state)
{
    struct fixture *f = *state;
    size_t len = 0;
    unsigned char *d = good_snapshot(f, &len);
    char path[192];
    snprintf(path, sizeof path, "%s/version.snap", f->dir);
    le32(d + 8, 3);
    fix_checksum(d, len);
    write_file(path, d, len);
    assert_refused(path, "format version 3, this shmkvd reads 1 and 2");
    le32(d + 8, 0);
    write_file(path, d, len); /* checksum not fixed: the version speaks */
    assert_refused(path, "format version 0, this shmkvd reads 1 and 2");
    free(d);
}

/* Version 1 kept expiries in seconds: read as such. */
static void test_version_1_seconds(void **state)
{
    struct fixture *f = *state;
    static struct crafted c;
    craft_begin(&c); /* writes version 1 */
    craft_record(&c, "v1", "x", (int64_t)time(NULL) + 100);
    craft_record(&c, "v1gone", "x", (int64_t)time(NULL) - 1);
    craft_end(&c);
    write_file(f->snap, c.buf, c.len);
    char key[32];
    struct shmkv *kv = make_store(8u << 20, key);
    char err[512] = "";
    uint64_t n = 0;
    expect_ok(snapshot_load(kv, f->snap, &n, err, sizeof err), err);
    assert_int_equal(n, 1);
    int64_t ttl = 0;
    assert_int_equal(shmkv_pttl(kv, "v1", 2, &ttl), 0);
    assert_in_range(ttl, 98000, 100000);
    test_destroy(kv, key);
}

/* Millisecond TTLs survive a save and a load to the millisecond (less the
 * time between them). */
static void test_ttl_milliseconds(void **state)
{
    struct fixture *f = *state;
    char key_a[32], key_b[32];
    struct shmkv *a = make_store(8u << 20, key_a);
    assert_int_equal(shmkv_pset(a, "ms", 2, "v", 1, 1500, 0), 0);
    char err[512] = "";
    uint64_t n = 0;
    expect_ok(snapshot_save(a, f->snap, &n, err, sizeof err), err);
    int64_t at_a = 0, at_b = 0;
    assert_int_equal(shmkv_pexpiretime(a, "ms", 2, &at_a), 0);
    test_destroy(a, key_a);
    struct shmkv *b = make_store(8u << 20, key_b);
    expect_ok(snapshot_load(b, f->snap, &n, err, sizeof err), err);
    assert_int_equal(shmkv_pexpiretime(b, "ms", 2, &at_b), 0);
    /* The same instant, within the clock reads of save and load. */
    assert_in_range(at_b, at_a - 2, at_a + 2);
    test_destroy(b, key_b);
}

/* Damage that a correct checksum does not excuse: a writer bug or a
 * hand-made file. Each is refused by the structure checks. */
static void test_malformed_records_refused(void **state)
{
    struct fixture *f = *state;
    char path[192];
    snprintf(path, sizeof path, "%s/bad.snap", f->dir);
    struct crafted *c = malloc(sizeof *c);
    assert_non_null(c);

    /* A value length reaching past the end of the file. */
    craft_begin(c);
    craft_record(c, "a", "1", 0);
    craft_record(c, "b", "2", 0);
    size_t second = HEADER_BYTES + RECORD_HEADER_BYTES + 2;
    craft_end(c);
    le32(c->buf + second + 4, 1000);
    fix_checksum(c->buf, c->len);
    write_file(path, c->buf, c->len);
    assert_refused(path, "record 2 of 2 at offset 46 runs past the end");
    /* The same without fixing the checksum looks like a cut file. */
    le32(c->buf + second + 4, 1000);
    c->buf[c->len - 1] ^= 1;
    write_file(path, c->buf, c->len);
    assert_refused(path, "truncated");

    /* The header counts one record more than there is. */
    craft_begin(c);
    craft_record(c, "a", "1", 0);
    craft_end(c);
    le64(c->buf + 20, 2);
    fix_checksum(c->buf, c->len);
    write_file(path, c->buf, c->len);
    assert_refused(path, "record 2 of 2");

    /* ... or one fewer: bytes left over before the trailer. */
    craft_begin(c);
    craft_record(c, "a", "1", 0);
    craft_record(c, "b", "2", 0);
    craft_end(c);
    le64(c->buf + 20, 1);
    fix_checksum(c->buf, c->len);
    write_file(path, c->buf, c->len);
    assert_refused(path, "18 bytes follow the 1 records");

    /* An empty key. */
    craft_begin(c);
    craft_record(c, "a", "1", 0);
    craft_record(c, "", "2", 0);
    craft_end(c);
    write_file(path, c->buf, c->len);
    assert_refused(path, "record 2 at offset 46 has an empty key");

    /* A key over this store's limit (250 by default): a snapshot from a
     * store with larger limits. */
    char long_key[300];
    memset(long_key, 'k', sizeof long_key - 1);
    long_key[sizeof long_key - 1] = '\0';
    craft_begin(c);
    craft_record(c, "a", "1", 0);
    craft_record(c, long_key, "2", 0);
    craft_end(c);
    write_file(path, c->buf, c->len);
    assert_refused(path, "299-byte key, over this store's max_key_bytes of "
                         "250");
    free(c);
}

static void test_value_over_limit_refused(void **state)
{
    struct fixture *f = *state;
    char key_a[32];
    /* A 16 MiB store takes 1 MiB values; a 1 MiB store only 256 KiB. */
    struct shmkv *a = make_store(16u << 20, key_a);
    char *big = calloc(1, 512 * 1024);
    assert_non_null(big);
    assert_int_equal(shmkv_set(a, "big", 3, big, 512 * 1024, 0, 0), 0);
    char err[512] = "";
    expect_ok(snapshot_save(a, f->snap, NULL, err, sizeof err), err);
    test_destroy(a, key_a);
    free(big);

    char key_b[32];
    struct shmkv *b = make_store(1u << 20, key_b);
    assert_int_equal(snapshot_load(b, f->snap, NULL, err, sizeof err), -1);
    assert_contains(err, "524288-byte value, over this store's "
                         "max_value_bytes of 262144");
    assert_int_equal(store_entries(b), 0);
    test_destroy(b, key_b);
}

static void test_expired_not_restored(void **state)
{
    struct fixture *f = *state;
    struct crafted *c = malloc(sizeof *c);
    assert_non_null(c);
    int64_t now = time(NULL);
    craft_begin(c);
    craft_record(c, "gone", "1", now - 10);
    craft_record(c, "ancient", "2", 1);
    craft_record(c, "stays", "3", now + 60);
    craft_record(c, "forever", "4", 0);
    craft_record(c, "far", "5", (int64_t)1 << 40); /* past 32-bit time */
    craft_end(c);
    write_file(f->snap, c->buf, c->len);
    free(c);

    char key[32];
    struct shmkv *kv = make_store(8u << 20, key);
    char err[512] = "";
    uint64_t n = 0;
    expect_ok(snapshot_load(kv, f->snap, &n, err, sizeof err), err);
    assert_int_equal(n, 3);
    assert_int_equal(store_entries(kv), 3);
    char buf[8];
    size_t vlen;
    assert_int_equal(shmkv_get_copy(kv, "gone", 4, buf, sizeof buf, &vlen),
                     SHMKV_ENOTFOUND);
    assert_int_equal(shmkv_get_copy(kv, "ancient", 7, buf, sizeof buf, &vlen),
                     SHMKV_ENOTFOUND);
    int64_t ttl = 0;
    assert_int_equal(shmkv_ttl(kv, "stays", 5, &ttl), 0);
    assert_in_range(ttl, 57, 60);
    assert_int_equal(shmkv_ttl(kv, "forever", 7, &ttl), 0);
    assert_int_equal(ttl, -1);
    /* Capped to what the store can hold, but alive with a TTL. */
    assert_value(kv, "far", 3, "5", 1);
    assert_int_equal(shmkv_ttl(kv, "far", 3, &ttl), 0);
    assert_true(ttl > 1000000);
    test_destroy(kv, key);
}

/* An entry saved with a 1 s TTL that expires while the file sits on disk is
 * not restored. */
static void test_expiry_while_on_disk(void **state)
{
    struct fixture *f = *state;
    char key_a[32], key_b[32];
    struct shmkv *a = make_store(8u << 20, key_a);
    assert_int_equal(shmkv_set(a, "short", 5, "s", 1, 1, 0), 0);
    assert_int_equal(shmkv_set(a, "long", 4, "l", 1, 3600, 0), 0);
    char err[512] = "";
    uint64_t n = 0;
    expect_ok(snapshot_save(a, f->snap, &n, err, sizeof err), err);
    assert_int_equal(n, 2);
    test_destroy(a, key_a);

    struct timespec wait = {2, 100 * 1000 * 1000};
    nanosleep(&wait, NULL);
    struct shmkv *b = make_store(8u << 20, key_b);
    expect_ok(snapshot_load(b, f->snap, &n, err, sizeof err), err);
    assert_int_equal(n, 1);
    assert_value(b, "long", 4, "l", 1);
    char buf[4];
    size_t vlen;
    assert_int_equal(shmkv_get_copy(b, "short", 5, buf, sizeof buf, &vlen),
                     SHMKV_ENOTFOUND);
    test_destroy(b, key_b);
}

static void test_store_too_small(void **state)
{
    struct fixture *f = *state;
    char key_a[32], key_b[32];
    struct shmkv *a = make_store(8u << 20, key_a);
    char v[4096];
    memset(v, 'z', sizeof v);
    char k[32];
    for (int i = 0; i < 1000; i++) {
        int klen = snprintf(k, sizeof k, "entry%d", i);
        assert_int_equal(shmkv_set(a, k, (size_t)klen, v, sizeof v, 0, 0), 0);
    }
    char err[512] = "";
    expect_ok(snapshot_save(a, f->snap, NULL, err, sizeof err), err);
    test_destroy(a, key_a);

    struct shmkv *b = make_store(1u << 20, key_b);
    uint64_t n = 0;
    assert_int_equal(snapshot_load(b, f->snap, &n, err, sizeof err), -1);
    assert_contains(err, f->snap);
    assert_contains(err, "of 1000");
    assert_contains(err, shmkv_strerror(SHMKV_ENOSPC));
    assert_contains(err, "left in the store");
    assert_true(n > 0 && n < 1000);
    char loaded[64];
    snprintf(loaded, sizeof loaded, "the %llu entries loaded",
             (unsigned long long)n);
    assert_contains(err, loaded);
    assert_int_equal(store_entries(b), n);
    test_destroy(b, key_b);
}

static void test_missing_file(void **state)
{
    struct fixture *f = *state;
    char key[32];
    struct shmkv *kv = make_store(8u << 20, key);
    char err[512] = "";
    assert_int_equal(snapshot_load(kv, f->snap, NULL, err, sizeof err), -1);
    assert_contains(err, "cannot read: No such file or directory");
    assert_int_equal(snapshot_load(kv, f->dir, NULL, err, sizeof err), -1);
    assert_contains(err, "cannot read");
    test_destroy(kv, key);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_round_trip),
        T(test_file_format),
        T(test_empty_store),
        T(test_save_replaces),
        T(test_failed_save_leaves_path),
        T(test_permission_denied),
        T(test_flipped_byte_refused),
        T(test_truncated_refused),
        T(test_wrong_magic_refused),
        T(test_wrong_version_refused),
        T(test_version_1_seconds),
        T(test_ttl_milliseconds),
        T(test_malformed_records_refused),
        T(test_value_over_limit_refused),
        T(test_expired_not_restored),
        T(test_expiry_while_on_disk),
        T(test_store_too_small),
        T(test_missing_file),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
