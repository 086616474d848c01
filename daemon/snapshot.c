/*
 * snapshot.c - saving the store's live data to a file and loading it back.
 *
 * File format, version 2. Every integer is little-endian and is encoded
 * byte by byte (never a struct dump), so a snapshot reads the same on any
 * host and compiler.
 *
 *   header, 28 bytes
 *     0   8  magic "SHMKVSNP"
 *     8   4  u32 format version (2; version 1 is read too)
 *     12  8  i64 creation time, unix seconds
 *     20  8  u64 entry count: the number of records that follow
 *   records, one per live entry, back to back
 *     0   4  u32 klen   key length, 1 .. the store's max_key_bytes
 *     4   4  u32 vlen   value length, 0 .. the store's max_value_bytes
 *     8   8  i64 expiry: absolute, in unix milliseconds (in version 1,
 *               seconds), 0 for none
 *     16     key bytes (klen), then value bytes (vlen)
 *   trailer, 8 bytes
 *     0   8  u64 XXH3-64 (seed 0) of every byte before the trailer
 *
 * Expiry is stored as an absolute time, not the remaining TTL, so that the
 * time a snapshot spends on disk counts against it: an entry whose expiry
 * passed while the daemon was down is not restored.
 *
 * Saving. shmkv_foreach visits every live entry, a few hundred index slots
 * per read section, while writers go on: every key present for the whole
 * walk is saved once, with a value it held during the walk, and a key
 * written or removed meanwhile may or may not be. At shutdown the store is
 * closed first, so no write is missing there. A visitor that took longer
 * than the reader timeout could have its section revoked (the save then
 * fails), which is one more reason the visitor only copies into a large
 * stdio buffer and does nothing slow. The records
 * stream to "PATH.tmp.PID" in the same directory (a rename only replaces a
 * file atomically within one file system). The entry count is known only
 * after the walk, so the header is written with a zero count, patched in
 * place afterwards, and the checksum is then computed by reading the temp
 * file back; that second pass runs after the walk has ended, from the page
 * cache. Then fflush, fsync, fclose,
 * rename over PATH and fsync of the directory, so that after a crash PATH
 * names either the old complete snapshot or the new complete one. On any
 * error before the rename the temp file is unlinked and PATH is untouched.
 *
 * Loading. The whole file is read into memory and verified before the store
 * is written once: magic, version, records framing the space up to the
 * trailer exactly with the count the header gives, every length within the
 * target store's limits, and the checksum. A corrupt, truncated or
 * incompatible snapshot therefore changes nothing. Only then are the
 * entries set, skipping those that have expired. The one way a load can
 * stop half way is the store itself refusing a set (SHMKV_ENOSPC when it is
 * smaller than the one that was saved): the entries set so far stay, and
 * the error says so and how many they are. Entries with keys already in
 * the store replace them.
 */
#include "snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#define SNAPSHOT_MAGIC "SHMKVSNP"
#define SNAPSHOT_MAGIC_BYTES 8
#define SNAPSHOT_VERSION 2u
#define SNAPSHOT_VERSION_SECONDS 1u /* expiries in seconds */
#define HEADER_BYTES 28
#define HEADER_COUNT_OFFSET 20
#define RECORD_HEADER_BYTES 16
#define TRAILER_BYTES 8
#define WRITE_BUFFER_BYTES (1u << 20)
#define READ_CHUNK_BYTES (1u << 20)

/* ---- little-endian encoding ---- */

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Two's complement through uint64_t: well defined for every value. */
static int64_t get_i64(const unsigned char *p)
{
    uint64_t u = get_u64(p);
    return u <= INT64_MAX ? (int64_t)u : -(int64_t)(~u) - 1;
}

/* Unix milliseconds on the clock libshmkv measures TTLs with. */
static int64_t now_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void format_error(char *err, size_t err_cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void format_error(char *err, size_t err_cap, const char *fmt, ...)
{
    if (err == NULL || err_cap == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_cap, fmt, ap);
    va_end(ap);
}

/* ---- saving ---- */

struct save_ctx {
    FILE *file;
    uint64_t entries;
    int write_errno; /* set when a write failed inside the walk */
    const char *problem;
};

/* The visitor: runs inside a read section, so it only encodes and copies
 * into the stdio buffer. Returns 1 (never a SHMKV_E* code, which are
 * negative) to stop the walk on an error. */
static int save_entry(void *arg, const void *key, size_t klen, const void *val,
                      size_t vlen, int64_t ttl_ms)
{
    struct save_ctx *ctx = arg;
    if (klen > UINT32_MAX || vlen > UINT32_MAX) {
        ctx->problem = "an entry is too large for the snapshot format";
        return 1;
    }
    unsigned char rec[RECORD_HEADER_BYTES];
    put_u32(rec, (uint32_t)klen);
    put_u32(rec + 4, (uint32_t)vlen);
    put_u64(rec + 8, ttl_ms > 0 ? (uint64_t)(now_unix_ms() + ttl_ms) : 0);
    if (fwrite(rec, sizeof rec, 1, ctx->file) != 1 ||
        fwrite(key, 1, klen, ctx->file) != klen ||
        (vlen > 0 && fwrite(val, 1, vlen, ctx->file) != vlen)) {
        ctx->write_errno = errno != 0 ? errno : EIO;
        return 1;
    }
    ctx->entries++;
    return 0;
}

/* XXH3-64 of the first len bytes of fd, read back with pread. */
static int hash_file_prefix(int fd, uint64_t len, uint64_t *hash_out)
{
    int rc = -1;
    unsigned char *buf = NULL;
    XXH3_state_t *state = XXH3_createState();
    if (state == NULL || XXH3_64bits_reset(state) == XXH_ERROR) {
        errno = ENOMEM;
        goto fail;
    }
    buf = malloc(READ_CHUNK_BYTES);
    if (buf == NULL)
        goto fail;
    uint64_t off = 0;
    while (off < len) {
        size_t want = len - off < READ_CHUNK_BYTES ? (size_t)(len - off)
                                                   : READ_CHUNK_BYTES;
        ssize_t n = pread(fd, buf, want, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO; /* the file is shorter than we wrote */
            goto fail;
        }
        XXH3_64bits_update(state, buf, (size_t)n);
        off += (uint64_t)n;
    }
    *hash_out = XXH3_64bits_digest(state);
    rc = 0;
fail:
    free(buf);
    XXH3_freeState(state);
    return rc;
}

/* The directory that holds path, for the fsync after the rename. */
static int open_parent_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        return open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (slash == path)
        return open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    size_t len = (size_t)(slash - path);
    char *dir = malloc(len + 1);
    if (dir == NULL)
        return -1;
    memcpy(dir, path, len);
    dir[len] = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int saved = errno;
    free(dir);
    errno = saved;
    return fd;
}

int snapshot_save(struct shmkv *kv, const char *path, uint64_t *entries_out,
                  char *err, size_t err_cap)
{
    int ret = -1;
    char *tmp = NULL;
    FILE *file = NULL;
    int fd = -1;
    int dir_fd = -1;
    bool tmp_exists = false;
    struct save_ctx ctx = {0};
    unsigned char header[HEADER_BYTES];
    unsigned char count[8];
    unsigned char trailer[TRAILER_BYTES];
    uint64_t checksum = 0;

    if (entries_out != NULL)
        *entries_out = 0;
    if (kv == NULL || path == NULL || path[0] == '\0') {
        format_error(err, err_cap, "snapshot: no store or no path");
        goto out;
    }
    size_t tmp_cap = strlen(path) + 32;
    tmp = malloc(tmp_cap);
    if (tmp == NULL) {
        format_error(err, err_cap, "snapshot %s: out of memory", path);
        goto out;
    }
    snprintf(tmp, tmp_cap, "%s.tmp.%ld", path, (long)getpid());

    /* O_TRUNC rather than O_EXCL: a leftover from a crashed daemon that had
     * our pid is garbage to overwrite. O_NOFOLLOW: never write through a
     * symlink planted at the temp name. 0600: the data is the store's. */
    fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        format_error(err, err_cap, "snapshot %s: cannot create %s: %s", path,
                     tmp, strerror(errno));
        goto out;
    }
    tmp_exists = true;
    file = fdopen(fd, "wb");
    if (file == NULL) {
        format_error(err, err_cap, "snapshot %s: fdopen: %s", path,
                     strerror(errno));
        goto out;
    }
    fd = -1; /* owned by file now */
    setvbuf(file, NULL, _IOFBF, WRITE_BUFFER_BYTES);

    ctx.file = file;
    memcpy(header, SNAPSHOT_MAGIC, SNAPSHOT_MAGIC_BYTES);
    put_u32(header + 8, SNAPSHOT_VERSION);
    put_u64(header + 12, (uint64_t)(now_unix_ms() / 1000));
    put_u64(header + HEADER_COUNT_OFFSET, 0); /* patched after the walk */
    if (fwrite(header, sizeof header, 1, file) != 1) {
        format_error(err, err_cap, "snapshot %s: writing %s: %s", path, tmp,
                     strerror(errno));
        goto out;
    }

    /* Read sections of a slice of the index each (shmkv_foreach): writers
     * go on, and what the save holds back is bounded. */
    int rc = shmkv_foreach_ms(kv, save_entry, &ctx);
    if (ctx.write_errno != 0) {
        format_error(err, err_cap, "snapshot %s: writing %s: %s", path, tmp,
                     strerror(ctx.write_errno));
        goto out;
    }
    if (ctx.problem != NULL) {
        format_error(err, err_cap, "snapshot %s: %s", path, ctx.problem);
        goto out;
    }
    if (rc != 0) {
        format_error(err, err_cap, "snapshot %s: reading the store: %s", path,
                     shmkv_last_error());
        goto out;
    }
    if (fflush(file) != 0) {
        format_error(err, err_cap, "snapshot %s: writing %s: %s", path, tmp,
                     strerror(errno));
        goto out;
    }

    put_u64(count, ctx.entries);
    if (pwrite(fileno(file), count, sizeof count, HEADER_COUNT_OFFSET) !=
        (ssize_t)sizeof count) {
        format_error(err, err_cap, "snapshot %s: writing %s: %s", path, tmp,
                     strerror(errno));
        goto out;
    }
    off_t body_bytes = ftello(file);
    if (body_bytes < 0 ||
        hash_file_prefix(fileno(file), (uint64_t)body_bytes, &checksum) != 0) {
        format_error(err, err_cap, "snapshot %s: reading back %s: %s", path,
                     tmp, strerror(errno));
        goto out;
    }
    put_u64(trailer, checksum);
    if (fwrite(trailer, sizeof trailer, 1, file) != 1 || fflush(file) != 0) {
        format_error(err, err_cap, "snapshot %s: writing %s: %s", path, tmp,
                     strerror(errno));
        goto out;
    }
    if (fsync(fileno(file)) != 0) {
        format_error(err, err_cap, "snapshot %s: fsync of %s: %s", path, tmp,
                     strerror(errno));
        goto out;
    }
    int close_rc = fclose(file);
    file = NULL;
    if (close_rc != 0) {
        format_error(err, err_cap, "snapshot %s: closing %s: %s", path, tmp,
                     strerror(errno));
        goto out;
    }
    if (rename(tmp, path) != 0) {
        format_error(err, err_cap, "snapshot %s: cannot rename %s over it: %s",
                     path, tmp, strerror(errno));
        goto out;
    }
    tmp_exists = false;
    if (entries_out != NULL)
        *entries_out = ctx.entries;

    /* Makes the rename itself durable. PATH already names the new, complete
     * snapshot here, so a failure says that rather than claiming nothing
     * happened. */
    dir_fd = open_parent_dir(path);
    if (dir_fd < 0 || fsync(dir_fd) != 0) {
        format_error(err, err_cap,
                     "snapshot %s: written and renamed into place, but the "
                     "fsync of its directory failed (%s): it may not survive "
                     "a crash",
                     path, strerror(errno));
        goto out;
    }
    ret = 0;
out:
    if (dir_fd >= 0)
        close(dir_fd);
    if (file != NULL)
        fclose(file);
    if (fd >= 0)
        close(fd);
    if (tmp_exists)
        unlink(tmp);
    free(tmp);
    return ret;
}

/* ---- loading ---- */

/* Reads the whole file. *data is malloc'd (at least 1 byte). */
static int read_whole_file(const char *path, unsigned char **data_out,
                           size_t *len_out)
{
    unsigned char *data = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        goto fail;
    struct stat st;
    if (fstat(fd, &st) != 0)
        goto fail;
    if (!S_ISREG(st.st_mode)) {
        errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
        goto fail;
    }
    if ((uint64_t)st.st_size > SIZE_MAX - 1) {
        errno = EFBIG;
        goto fail;
    }
    size_t cap = (size_t)st.st_size;
    data = malloc(cap + 1);
    if (data == NULL)
        goto fail;
    size_t len = 0;
    while (len < cap) {
        ssize_t n = read(fd, data + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto fail;
        if (n == 0)
            break; /* shrank under us: verify what there is */
        len += (size_t)n;
    }
    close(fd);
    *data_out = data;
    *len_out = len;
    return 0;
fail:
    if (fd >= 0) {
        int saved = errno;
        close(fd);
        errno = saved;
    }
    free(data);
    return -1;
}

/* A verified view of one record. */
struct record {
    uint32_t klen;
    uint32_t vlen;
    int64_t expire_ms;
    const unsigned char *key;
    const unsigned char *val;
};

static size_t decode_record(const unsigned char *p, uint32_t version,
                            struct record *r)
{
    r->klen = get_u32(p);
    r->vlen = get_u32(p + 4);
    r->expire_ms = get_i64(p + 8);
    if (version == SNAPSHOT_VERSION_SECONDS)
        r->expire_ms = r->expire_ms > INT64_MAX / 1000 ? INT64_MAX
                       : r->expire_ms < 0              ? 1
                                                       : r->expire_ms * 1000;
    r->key = p + RECORD_HEADER_BYTES;
    r->val = r->key + r->klen;
    return RECORD_HEADER_BYTES + (size_t)r->klen + r->vlen;
}

/* Checks everything about the file before the store is touched. Returns 0,
 * or -1 with err set. On success *count_out is the number of records. */
static int verify_snapshot(const char *path, const unsigned char *data,
                           size_t len, const struct shmkv_stats *limits,
                           uint64_t *count_out, char *err, size_t err_cap)
{
    const size_t min_len = HEADER_BYTES + TRAILER_BYTES;

    /* A short file that starts like a snapshot was cut; one that does not
     * is something else. */
    size_t magic_seen = len < SNAPSHOT_MAGIC_BYTES ? len : SNAPSHOT_MAGIC_BYTES;
    if (memcmp(data, SNAPSHOT_MAGIC, magic_seen) != 0) {
        format_error(err, err_cap, "snapshot %s: not a shmkv snapshot", path);
        return -1;
    }
    if (len >= 12 && get_u32(data + 8) != SNAPSHOT_VERSION &&
        get_u32(data + 8) != SNAPSHOT_VERSION_SECONDS) {
        format_error(err, err_cap,
                     "snapshot %s: format version %u, this shmkvd reads %u "
                     "and %u",
                     path, get_u32(data + 8), SNAPSHOT_VERSION_SECONDS,
                     SNAPSHOT_VERSION);
        return -1;
    }
    uint32_t version = len >= 12 ? get_u32(data + 8) : SNAPSHOT_VERSION;
    if (len < min_len) {
        format_error(err, err_cap,
                     "snapshot %s: truncated (%zu bytes, expected at least "
                     "%zu)",
                     path, len, min_len);
        return -1;
    }

    uint64_t count = get_u64(data + HEADER_COUNT_OFFSET);
    size_t end = len - TRAILER_BYTES; /* where the records must stop */
    bool checksum_ok = XXH3_64bits(data, end) == get_u64(data + end);

    /* Framing: count records, exactly filling [HEADER_BYTES, end). The
     * first problem found is reported after the checksum is known: a file
     * whose checksum fails is damaged, whatever its records look like. */
    size_t pos = HEADER_BYTES;
    uint64_t i = 0;
    for (; i < count; i++) {
        struct record r;
        if (end - pos < RECORD_HEADER_BYTES ||
            end - pos - RECORD_HEADER_BYTES <
                (uint64_t)get_u32(data + pos) + get_u32(data + pos + 4)) {
            uint64_t need = (uint64_t)pos + RECORD_HEADER_BYTES + TRAILER_BYTES;
            if (end - pos >= RECORD_HEADER_BYTES)
                need += (uint64_t)get_u32(data + pos) + get_u32(data + pos + 4);
            if (!checksum_ok)
                format_error(err, err_cap,
                             "snapshot %s: truncated (%zu bytes, expected at "
                             "least %llu)",
                             path, len, (unsigned long long)need);
            else
                format_error(err, err_cap,
                             "snapshot %s: malformed: record %llu of %llu at "
                             "offset %zu runs past the end of the records "
                             "(offset %zu)",
                             path, (unsigned long long)i + 1,
                             (unsigned long long)count, pos, end);
            return -1;
        }
        pos += decode_record(data + pos, version, &r);
    }
    if (!checksum_ok) {
        format_error(err, err_cap, "snapshot %s: checksum mismatch", path);
        return -1;
    }
    if (pos != end) {
        format_error(err, err_cap,
                     "snapshot %s: malformed: %zu bytes follow the %llu "
                     "records the header counts",
                     path, end - pos, (unsigned long long)count);
        return -1;
    }

    /* Limits: an intact snapshot from a store with larger limits than this
     * one cannot be loaded whole, so it is refused before any set. */
    pos = HEADER_BYTES;
    for (i = 0; i < count; i++) {
        struct record r;
        size_t at = pos;
        pos += decode_record(data + pos, version, &r);
        if (r.klen == 0) {
            format_error(err, err_cap,
                         "snapshot %s: malformed: record %llu at offset %zu "
                         "has an empty key",
                         path, (unsigned long long)i + 1, at);
            return -1;
        }
        if (r.klen > limits->max_key_bytes) {
            format_error(err, err_cap,
                         "snapshot %s: record %llu has a %u-byte key, over "
                         "this store's max_key_bytes of %u; load it into a "
                         "store with limits at least those of the saved one",
                         path, (unsigned long long)i + 1, r.klen,
                         limits->max_key_bytes);
            return -1;
        }
        if (r.vlen > limits->max_value_bytes) {
            format_error(err, err_cap,
                         "snapshot %s: record %llu has a %u-byte value, over "
                         "this store's max_value_bytes of %u; load it into a "
                         "store with limits at least those of the saved one",
                         path, (unsigned long long)i + 1, r.vlen,
                         limits->max_value_bytes);
            return -1;
        }
    }
    *count_out = count;
    return 0;
}

int snapshot_load(struct shmkv *kv, const char *path, uint64_t *entries_out,
                  char *err, size_t err_cap)
{
    int ret = -1;
    unsigned char *data = NULL;
    size_t len = 0;
    uint64_t loaded = 0;

    if (entries_out != NULL)
        *entries_out = 0;
    if (kv == NULL || path == NULL || path[0] == '\0') {
        format_error(err, err_cap, "snapshot: no store or no path");
        goto out;
    }
    struct shmkv_stats limits;
    int rc = shmkv_stats(kv, &limits);
    if (rc != 0) {
        format_error(err, err_cap, "snapshot %s: reading the store: %s", path,
                     shmkv_strerror(rc));
        goto out;
    }
    if (read_whole_file(path, &data, &len) != 0) {
        format_error(err, err_cap, "snapshot %s: cannot read: %s", path,
                     strerror(errno));
        goto out;
    }
    uint64_t count = 0;
    if (verify_snapshot(path, data, len, &limits, &count, err, err_cap) != 0)
        goto out;

    /* Verified: from here on the store is written. */
    uint32_t version = get_u32(data + 8);
    size_t pos = HEADER_BYTES;
    for (uint64_t i = 0; i < count; i++) {
        struct record r;
        pos += decode_record(data + pos, version, &r);
        uint64_t ttl_ms = 0;
        if (r.expire_ms != 0) {
            int64_t left = r.expire_ms - now_unix_ms();
            if (left <= 0)
                continue; /* expired while on disk */
            ttl_ms = (uint64_t)left;
        }
        rc = shmkv_pset(kv, r.key, r.klen, r.val, r.vlen, ttl_ms, 0);
        if (rc != 0) {
            format_error(err, err_cap,
                         "snapshot %s: loading stopped at record %llu of "
                         "%llu: %s (%s); the %llu entries loaded before it "
                         "are left in the store",
                         path, (unsigned long long)i + 1,
                         (unsigned long long)count, shmkv_strerror(rc),
                         shmkv_last_error(), (unsigned long long)loaded);
            goto out;
        }
        loaded++;
    }
    ret = 0;
out:
    if (entries_out != NULL)
        *entries_out = loaded;
    free(data);
    return ret;
}
