/*
 * shmkv.h - the libshmkv client API.
 *
 * A shmkv store lives in System V shared memory on one machine. Any process
 * that may attach it reads values in place: a lookup costs a hash, a cache
 * line of index and the value's own memory, with no system call, no socket
 * and no copy. Writes take the store's process-shared write lock.
 *
 * Handles. A shmkv_t is one process's attachment to one store. It is not
 * thread-safe: give each thread its own handle (opening a store twice in one
 * process is cheap). A handle belongs to the process that opened it: in a
 * child created by fork() every call on an inherited handle fails with
 * SHMKV_EFORKED (shmkv_close() only frees the child's copy); the child
 * opens its own.
 *
 * Liveness. Each handle holds a semaphore of the store's set with
 * SEM_UNDO, and the kernel releases it when the process dies, whatever its
 * pid namespace: that, not a pid, is how other processes learn that a
 * handle's process is gone.
 *
 * Errors. Every call that can fail returns 0 on success or a negative
 * SHMKV_E* code; shmkv_strerror() names it. A failed call leaves the store
 * as it was. Where a system call failed, errno still holds its reason.
 *
 * Time. TTLs are whole seconds, measured on the realtime clock so that an
 * expiry survives a snapshot and a restart. Waits are bounded on
 * CLOCK_MONOTONIC: a write waits at most the handle's timeout (the store's
 * lock timeout unless shmkv_set_timeout() changed it) in all, and no read
 * ever waits for a writer: no call blocks forever.
 */
#ifndef SHMKV_H
#define SHMKV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SHMKV_VERSION_MAJOR 0
#define SHMKV_VERSION_MINOR 1
#define SHMKV_VERSION_PATCH 0
#define SHMKV_VERSION_STRING "0.1.0"
/* The store layout this library reads and writes: a store of another
 * layout is refused with SHMKV_EVERSION. */
#define SHMKV_LAYOUT_VERSION 10u

/* An open handle on a store. */
typedef struct shmkv shmkv_t;

/* Error codes: all negative, 0 is success. */
enum shmkv_error {
    SHMKV_OK = 0,
    SHMKV_EINVAL = -1,     /* a bad argument: NULL, empty key, bad flags */
    SHMKV_ENOTFOUND = -2,  /* no such key (or it expired) */
    SHMKV_EEXIST = -3,     /* SHMKV_NX and the key exists; or a store
                              already exists at that System V key */
    SHMKV_E2BIG = -4,      /* key or value over the store's limit */
    SHMKV_ENOBUFS = -5,    /* caller's buffer too small; the needed size
                              is returned through the length argument */
    SHMKV_ENOSPC = -6,     /* the store is full (policy noeviction, or
                              nothing evictable) */
    SHMKV_ETIMEDOUT = -7,  /* the lock was not acquired in time */
    SHMKV_ENOSTORE = -8,   /* no store at that key */
    SHMKV_EACCES = -9,     /* permission denied by the segment's mode */
    SHMKV_EVERSION = -10,  /* a shmkv store of another layout version */
    SHMKV_ENOTSHMKV = -11, /* the segment is not a shmkv store */
    SHMKV_ELIMIT = -12,    /* over a kernel limit (kernel.shmmax,
                              kernel.shmall or kernel.shmmni) */
    SHMKV_ERDONLY = -13,   /* a write through a read-only handle */
    SHMKV_ENOTNUM = -14,   /* shmkv_incr on a value that is not a decimal
                              64-bit integer */
    SHMKV_EOVERFLOW = -15, /* shmkv_incr would overflow int64 */
    SHMKV_ECLOSED = -16,   /* the store was closed by its owner */
    SHMKV_ESTATE = -17,    /* call out of order: shmkv_get outside a read
                              section, a nested shmkv_read_begin, a write
                              inside a read section */
    SHMKV_ECLIENTS = -18,  /* the store's client table is full */
    SHMKV_ECORRUPT = -19,  /* shmkv_check found an inconsistency */
    SHMKV_ECONFIG = -20,   /* a config file could not be read or parsed */
    SHMKV_ENOMEM = -21,    /* out of process memory */
    SHMKV_ESYS = -22,      /* another system error: see errno */
    SHMKV_EOWNED = -23,    /* shmkv_adopt: the store's owner is alive */
    SHMKV_ESTALE = -24,    /* the read section was revoked: it was held
                              past the store's reader timeout while a
                              writer needed the memory it could see, or
                              another process changed its claim.
                              Discard what the section read; end it */
    SHMKV_EFORKED = -25,   /* the handle was opened by another process
                              (this is a fork()ed child's copy) */
    SHMKV_EBUSY = -26,     /* shmkv_resize: another resize is under way */
    SHMKV_EAGAIN = -27,    /* shmkv_resize: a writer died during it and
                              it was given up; the store is as it was */
    SHMKV_ECHANGED = -28,  /* shmkv_cas: the key was written since its
                              version was read; nothing was written */
    SHMKV_EMIRRORED = -29, /* the key mirrors another system (shmkvd's
                              [upstream]), the system of record: write it
                              there, and the mirror follows */
};

/* Returns a static, human-readable description of an error code. */
const char *shmkv_strerror(int err);

/* ---------------------------------------------------------------------- */
/* Creating and removing a store (the daemon's calls; tests use them too) */

enum shmkv_eviction {
    SHMKV_EVICT_NONE = 0, /* "noeviction": a write that does not fit fails
                             with SHMKV_ENOSPC and nothing else changes */
    SHMKV_EVICT_LRU = 1,  /* "lru": evict approximately least recently used
                             entries (expired ones first) to make room */
};

/* Whether the data segment (index and values) is made of huge pages
 * (SHM_HUGETLB): fewer TLB misses on a large store, memory that is never
 * swapped, taken from the kernel's pool (vm.nr_hugepages). */
enum shmkv_huge_pages {
    SHMKV_HUGE_NO = 0,  /* ordinary pages */
    SHMKV_HUGE_TRY = 1, /* huge pages if the pool and permissions allow,
                           else ordinary ones (shmkv_stats says which) */
    SHMKV_HUGE_YES = 2, /* huge pages or fail: SHMKV_ENOMEM when the pool
                           is short, SHMKV_EACCES when the process may not
                           use it; the message names the sysctl */
};

/* Bytes of store per expected entry when max_entries is 0. */
#define SHMKV_DEFAULT_ENTRY_BYTES 128u

struct shmkv_options {
    /* Where the store lives: "key:0x5eed0001", "0x5eed0001" or
     * "ftok:/path:1". Required. */
    const char *key;
    /* Bytes for the index and the value arena, 1 MiB to 64 GiB; rounded up
     * to whole pages. Default 64 MiB. */
    uint64_t size_bytes;
    /* Permission bits of the store (low 9 bits, as a file's mode; the
     * execute bits mean nothing), for its owner, its group and everyone
     * else: read and write make a writer, read alone a reader, which
     * attaches what others trust read-only and writes only its own part
     * (the reader segment and semaphores, which get write wherever the
     * mode has read). Default 0600. */
    unsigned mode;
    /* Group of the store's segments and semaphores (a gid), for a mode
     * such as 0640 (the group reads) or 0660 (it writes); -1 (the default)
     * keeps the creator's group. */
    int64_t gid;
    /* Expected number of entries, for sizing the hash index. 0 chooses one
     * entry per SHMKV_DEFAULT_ENTRY_BYTES of size_bytes. */
    uint64_t max_entries;
    /* Largest key and value accepted; 0 picks the default. Keys may be 1
     * to 65535 bytes (default 250); values up to size_bytes / 4 (default
     * 1 MiB, or a quarter of the store if that is smaller). */
    uint32_t max_key_bytes;
    uint32_t max_value_bytes;
    enum shmkv_eviction eviction; /* default SHMKV_EVICT_NONE */
    /* Longest wait of a write, in milliseconds: for the write lock, for
     * readers and for a recovery, in all. Default 5000. */
    uint32_t lock_timeout_ms;
    /* How long a writer that needs memory a read section may still see
     * waits for that section before revoking it (SHMKV_ESTALE to its
     * reader), in milliseconds. Default 1000. */
    uint32_t reader_timeout_ms;
    /* Number of client slots of each kind: how many read-only handles, and
     * how many writing ones, may be open at once across all processes.
     * Default 1024. */
    uint32_t max_clients;
    /* Huge pages for the data segment; with them size_bytes is rounded up
     * to whole huge pages. Default SHMKV_HUGE_NO. Resizes keep the
     * store's choice. */
    enum shmkv_huge_pages huge_pages;
};

/* Fills *opts with the defaults above (key NULL). */
void shmkv_options_init(struct shmkv_options *opts);

/* Creates a new store and returns a read-write handle on it in *out. The
 * caller owns the store: it lives until shmkv_destroy(), even after every
 * process detached. Fails with SHMKV_EEXIST if any segment already exists at
 * the key, SHMKV_ELIMIT if the size is over a kernel limit (the message
 * names the sysctl via shmkv_last_error()), SHMKV_EINVAL for bad options. */
int shmkv_create(const struct shmkv_options *opts, struct shmkv **out);

/* Removes the store (IPC_RMID on all its segments) and frees the handle.
 * Attached clients keep their mapping until they detach; their next
 * operation returns SHMKV_ENOSTORE (SHMKV_ECLOSED while the segments are
 * still there), until a new store appears at the key (see shmkv_open). */
int shmkv_destroy(struct shmkv *kv);

/* Removes the store at where (see shmkv_open) whatever its state, open or
 * closed, damaged data or not: its data segments and its control segment.
 * For cleanup tools and tests; an owner with a handle uses shmkv_destroy().
 * SHMKV_ENOSTORE if nothing is there; SHMKV_ENOTSHMKV or SHMKV_EVERSION
 * (nothing removed) when the segment is not a store of this layout, whose
 * data segments could not be found. */
int shmkv_remove(const char *where);

/* Takes over an existing store whose owner process is dead (a daemon that
 * crashed), data intact: the handle becomes its owner (shmkv_destroy()
 * removes it), a closed mark is cleared, and a lock the dead owner held is
 * recovered before this returns. The owner's liveness is a semaphore the
 * kernel releases when it dies, so a live owner in another pid namespace
 * is never taken for dead. SHMKV_EOWNED if the owner is alive (the detail
 * names its pid); otherwise the errors of shmkv_open(). */
int shmkv_adopt(const char *where, struct shmkv **out);

/* Marks an owner leaves on its store, which outlive the owner's process.
 * SHMKV_MARK_LOADING: being filled from a snapshot, set before the first
 * entry goes in and cleared once the last one has; a successor that adopts
 * the store and finds it set knows the data is partial. */
#define SHMKV_MARK_LOADING 0x1u
/* SHMKV_MARK_STALE: the store mirrors another system (shmkvd's [upstream])
 * and has lost it: values may be out of date, since when the owner says
 * (INFO mirror_stale_since_ms). */
#define SHMKV_MARK_STALE 0x2u

/* Sets the store's marks to marks (SHMKV_MARK_*), replacing them. Needs a
 * read-write handle (SHMKV_ERDONLY); SHMKV_EINVAL for unknown bits. */
int shmkv_set_marks(struct shmkv *kv, unsigned marks);

/* Declares that keys under these n prefixes (each 0 to 255 bytes, an empty
 * one for every key; n 0 to 32, 1024 bytes in all) mirror another system:
 * every write to them through
 * any handle but the owner's, and any flush, is refused with
 * SHMKV_EMIRRORED. n 0 lifts it. The owner's handle only (shmkvd). */
int shmkv_set_mirror(struct shmkv *kv, const char *const *prefixes,
                     const size_t *lens, size_t n);

/* Reader chunks keep read-only handles of different users apart (README,
 * "Who can do what"). The store's owner (shmkvd) names the Unix socket
 * where read-only handles ask it for one (NULL or "" for none: they then
 * share the reader segment); SHMKV_ERDONLY for any other handle. */
int shmkv_set_registrar(struct shmkv *kv, const char *path);
/* The owner's side of such a request: makes a reader chunk for user uid
 * (the requester's, as the kernel reports it: SO_PEERCRED), handed to
 * uid and the store's group, and enters it in the chunk table; *index is
 * its entry. Any writing handle of the store's owner's user (SHMKV_EACCES
 * for another user). SHMKV_ECLIENTS if the table or uid's share of it
 * (half) is full. */
int shmkv_add_readers_chunk(struct shmkv *kv, unsigned uid, unsigned *index);

/* The store's marks (SHMKV_MARK_*) in *marks; 0 on a store no owner has
 * marked. */
int shmkv_get_marks(struct shmkv *kv, unsigned *marks);

/* Marks the store closed: every other handle's next operation returns
 * SHMKV_ECLOSED, and so does any write, also through kv. kv itself may
 * still read (shmkv_read_begin, shmkv_foreach, ...), so that an owner can
 * save a last snapshot in which no write can be missing: a writer that
 * held or awaited the lock when the store closed sees the mark once it
 * has the lock, and fails. The segments remain until shmkv_destroy(). */
int shmkv_mark_closed(struct shmkv *kv);

/* ---------------------------------------------------------------------- */
/* Attaching */

#define SHMKV_RDONLY                                                           \
    0x1 /* open as a reader: everything others trust is                        \
           attached read-only (SHM_RDONLY), writes through                     \
           this handle return SHMKV_ERDONLY, and a stray                       \
           write in this process faults here instead of                        \
           corrupting the store */

/* Attaches an existing store. where is one of:
 *   "key:0x5eed0001" or "0x5eed0001"  a System V key as a number,
 *   "ftok:/path:1"                    ftok(path, proj_id),
 *   a path to a shmkvd config file    its [store] key is used.
 * Errors: SHMKV_ENOSTORE (nothing at that key), SHMKV_EACCES,
 * SHMKV_ENOTSHMKV, SHMKV_EVERSION, SHMKV_ECLOSED, SHMKV_ECONFIG,
 * SHMKV_ECLIENTS.
 *
 * A process the store's permissions let read but not write (a reader: see
 * the README's access model) gets a read-only handle, as if it had asked
 * for SHMKV_RDONLY; shmkv_readonly() tells. SHMKV_EACCES if it may not
 * even read.
 *
 * The handle follows the store at its key: when its owner closes it (a
 * shmkvd restart, say), the handle's calls return SHMKV_ECLOSED while the
 * closed store is still there, SHMKV_ENOSTORE once it is gone, and on the
 * first call after a new store appears at the key the handle attaches it
 * and goes on (a read section open across the change keeps the old
 * store's values until it ends). Steady state costs nothing for this: the
 * check is the generation word every call already loads. */
int shmkv_open(const char *where, int flags, struct shmkv **out);

/* Detaches and frees the handle. Ends an open read section first. Does not
 * remove the store. Accepts NULL. */
void shmkv_close(struct shmkv *kv);

/* 1 if the handle is read-only (SHMKV_RDONLY, or a reader of the store), 0
 * if it may write, SHMKV_EINVAL for NULL. */
int shmkv_readonly(const struct shmkv *kv);

/* Sets how long calls through this handle may wait, in milliseconds: a
 * write for the lock, for readers and for a recovery, in all. 0 restores
 * the store's lock timeout. For an event loop that must not stall (shmkvd
 * uses a few milliseconds and retries later). */
int shmkv_set_timeout(struct shmkv *kv, uint32_t timeout_ms);

/* Resolves a key spec ("key:0x..", "0x..", decimal, "ftok:/path:N") to a
 * System V key. */
int shmkv_parse_key(const char *spec, int32_t *key_out);

/* A thread-local description of the last error on this thread, with detail
 * (the sysctl that was hit, the config file and line). Never NULL. Only
 * failures set it: SHMKV_ENOTFOUND, SHMKV_EEXIST from SHMKV_NX and
 * SHMKV_ENOBUFS are answers, returned without touching it (a get that
 * misses stays as cheap as one that hits), so after them it still
 * describes an earlier error; use shmkv_strerror() on the code. */
const char *shmkv_last_error(void);

/* ---------------------------------------------------------------------- */
/* Reading */

/* A value in place: data points into shared memory. */
typedef struct shmkv_val {
    const void *data;
    size_t len;
} shmkv_val_t;

/* Begins a read section. It never waits: no lock is taken, writers go on
 * beside it, and none of them reuses the memory of a value the section may
 * have been given until it ends. Any number of shmkv_get calls may follow.
 * What they see:
 *   - every write that completed before shmkv_read_begin returned;
 *   - each get, the key's value at the moment of that get; a later get
 *     never sees an older store than an earlier one did (writes become
 *     visible in the order they were made, each key's whole or not at
 *     all), but the section is not a snapshot: a write that completes
 *     while it is open may be seen by later gets and not by earlier ones;
 *   - every value returned stays in place, unchanged, until the section
 *     ends.
 * Keep sections short: a writer that needs the memory a section may see
 * waits for it at most the store's reader timeout, then revokes it. A
 * revoked section's next shmkv_get and its shmkv_read_end return
 * SHMKV_ESTALE: discard what it read. So does the shmkv_read_end of a
 * section whose claim another process changed (a reader can write other
 * readers' claims, never what they read). The memory stays mapped, so
 * reading it never faults. Returns SHMKV_ESTATE if a section is already open.
 */
int shmkv_read_begin(struct shmkv *kv);

/* Looks key up inside a read section. On success val->data points at the
 * value in shared memory: read-only, not NUL-terminated, not aligned, and
 * valid until shmkv_read_end() on this handle. Errors: SHMKV_ENOTFOUND,
 * SHMKV_ESTATE (no read section), SHMKV_EINVAL, SHMKV_E2BIG (key over the
 * limit: it cannot be there), SHMKV_ESTALE (the section was revoked). */
int shmkv_get(struct shmkv *kv, const void *key, size_t klen, shmkv_val_t *val);

/* Ends the read section; values returned in it are no longer valid.
 * Returns SHMKV_ESTALE if the section was revoked (the section is ended
 * all the same). */
int shmkv_read_end(struct shmkv *kv);

/* Copies the value of key into buf (cap bytes) in its own read section. On
 * success *vlen is the value's length. If cap is too small, returns
 * SHMKV_ENOBUFS with the needed size in *vlen and buf untouched. buf may be
 * NULL when cap is 0, to ask for the size. */
int shmkv_get_copy(struct shmkv *kv, const void *key, size_t klen, void *buf,
                   size_t cap, size_t *vlen);

/* Seconds to live of key, rounded to the nearest second as Redis's TTL
 * (0 for a key with under half a second left); *ttl_s = -1 when it has no
 * TTL. Like shmkv_get_copy, in a read or write section or in its own. */
int shmkv_ttl(struct shmkv *kv, const void *key, size_t klen, int64_t *ttl_s);

/* The same in milliseconds; *ttl_ms = -1 when key has no TTL. */
int shmkv_pttl(struct shmkv *kv, const void *key, size_t klen, int64_t *ttl_ms);

/* Copies a live key chosen at random (the first found from a random
 * index bucket) into buf (cap bytes); SHMKV_ENOTFOUND if the store is
 * empty, SHMKV_ENOBUFS (with the length in *klen) if cap is short. */
int shmkv_random_key(struct shmkv *kv, void *buf, size_t cap, size_t *klen);

/* When key expires, as Unix time in milliseconds; -1 when it has no TTL. */
int shmkv_pexpiretime(struct shmkv *kv, const void *key, size_t klen,
                      int64_t *at_ms);

/* key's version: a number that changes whenever key is set, removed (by a
 * delete, expiry or eviction) or has its TTL changed, including when it is
 * created after *version was read while it was absent. Versions are kept
 * per cell of keys sharing a hash, so another key's write may change it
 * too: shmkv_cas then fails when it need not, but it never succeeds over
 * a change. In a read section (with the value: shmkv_get_versioned), in a
 * write section, or in a section of its own; absent keys have a version
 * too (the call still returns SHMKV_ENOTFOUND). */
int shmkv_version(struct shmkv *kv, const void *key, size_t klen,
                  uint64_t *version);

/* shmkv_get that also returns key's version, read before the value: a
 * shmkv_cas with it succeeds only if nothing changed key since. */
int shmkv_get_versioned(struct shmkv *kv, const void *key, size_t klen,
                        shmkv_val_t *val, uint64_t *version);

/* ---------------------------------------------------------------------- */
/* Writing (each call takes the write lock once; not inside a read section) */

#define SHMKV_NX 0x1 /* set only if the key is absent (else SHMKV_EEXIST) */
#define SHMKV_XX 0x2 /* set only if the key exists (else SHMKV_ENOTFOUND) */
#define SHMKV_KEEPTTL 0x4 /* when replacing, keep the old entry's TTL */

/* Stores a copy of val (vlen bytes, may be 0) under key, replacing any old
 * value. ttl_s > 0 expires it after that many seconds; 0 means no expiry.
 * Errors: SHMKV_E2BIG, SHMKV_ENOSPC (the old value, if any, is kept),
 * SHMKV_EEXIST / SHMKV_ENOTFOUND for NX / XX, SHMKV_ERDONLY,
 * SHMKV_ETIMEDOUT, SHMKV_EINVAL. */
int shmkv_set(struct shmkv *kv, const void *key, size_t klen, const void *val,
              size_t vlen, uint32_t ttl_s, int flags);

/* shmkv_set with the TTL in milliseconds (0: no expiry), exact to the
 * millisecond on the realtime clock. */
int shmkv_pset(struct shmkv *kv, const void *key, size_t klen, const void *val,
               size_t vlen, uint64_t ttl_ms, int flags);

/* Compare-and-set: shmkv_pset, but only if key's version is still
 * `version` (from shmkv_version or shmkv_get_versioned), checked and
 * written under one hold of the write lock. SHMKV_ECHANGED if it is not:
 * read again and retry. With SHMKV_NX or SHMKV_XX as shmkv_set. */
int shmkv_cas(struct shmkv *kv, const void *key, size_t klen, const void *val,
              size_t vlen, uint64_t ttl_ms, int flags, uint64_t version);

/* Removes key. SHMKV_ENOTFOUND if it was absent. */
int shmkv_del(struct shmkv *kv, const void *key, size_t klen);

/* Sets a new TTL on an existing key (0 removes the TTL). */
int shmkv_expire(struct shmkv *kv, const void *key, size_t klen,
                 uint32_t ttl_s);

/* The same in milliseconds (0 removes the TTL). */
int shmkv_pexpire(struct shmkv *kv, const void *key, size_t klen,
                  uint64_t ttl_ms);

/* Makes key expire at at_ms, Unix time in milliseconds; a time not in the
 * future removes it at once, as Redis's PEXPIREAT. SHMKV_ENOTFOUND if key
 * is absent. */
int shmkv_pexpireat(struct shmkv *kv, const void *key, size_t klen,
                    int64_t at_ms);

/* What shmkv_update's function is told and tells. */
#define SHMKV_UPDATE_KEEP 0    /* change nothing */
#define SHMKV_UPDATE_STORE 1   /* store val (vlen bytes) with expire_ms */
#define SHMKV_UPDATE_REMOVE 2  /* remove the key */
#define SHMKV_UPDATE_EXPIRE 3  /* keep the value, set expire_ms */
#define SHMKV_EXPIRE_KEEP (-1) /* expire_ms: keep the key's current one */
struct shmkv_update {
    /* The key's current value, in shared memory, valid until the function
     * returns; NULL (old_len 0) when the key is absent or expired. */
    const void *old;
    size_t old_len;
    int64_t old_expire_ms; /* Unix ms; 0: none (or absent) */
    /* Set by the function; action starts as SHMKV_UPDATE_KEEP. val may
     * point into old. expire_ms: Unix ms, 0 for none, or
     * SHMKV_EXPIRE_KEEP; a time already past removes the key. */
    int action;
    const void *val;
    size_t vlen;
    int64_t expire_ms;
};
typedef int (*shmkv_update_fn)(void *arg, struct shmkv_update *u);

/* Reads and writes key as one write: fn is called once, under the write
 * lock, with key's current value, and what it asks is done before the lock
 * is let go, so that no other write comes between (GETSET, APPEND, a
 * compare-by-value, a counter in any format). fn must be short and must
 * not call libshmkv. A nonzero return from fn changes nothing and is
 * returned. Otherwise returns 0 or the error of the write fn asked for
 * (SHMKV_ENOSPC, SHMKV_E2BIG, ...: the old value is kept). */
int shmkv_update(struct shmkv *kv, const void *key, size_t klen,
                 shmkv_update_fn fn, void *arg);

/* A write section: takes the write lock and holds it until
 * shmkv_write_end, so that the writes this handle makes in between are
 * not interleaved with any other writer's (MULTI/EXEC). Readers still see
 * each write as it is made, in order. Read sections may be opened in it
 * (no write is made while one is open), and shmkv_get_copy, shmkv_pttl
 * and shmkv_version read under the lock. shmkv_foreach, shmkv_check,
 * shmkv_resize and shmkv_maintain are refused in it. Every other writer
 * waits while it is held: keep it short.
 * SHMKV_ETIMEDOUT if the lock was not had within the handle's timeout. */
int shmkv_write_begin(struct shmkv *kv);
int shmkv_write_end(struct shmkv *kv);

/* ---------------------------------------------------------------------- */
/* Filling a missing key once: leases, stale values, get-or-fill */

/* Takes key's fill lease for lease_ms (1 to 3,600,000): 0 if this handle
 * now holds it, SHMKV_EBUSY if a live process holds it (this one too), with
 * its pid in *holder if not NULL; SHMKV_ELIMIT if 1024 leases are held.
 * A lease ends when its holder releases it, when lease_ms has passed, or
 * at once when the holder's process dies. Writers only. */
int shmkv_lease_take(struct shmkv *kv, const void *key, size_t klen,
                     uint32_t lease_ms, int32_t *holder);

/* Gives back a lease this handle holds; SHMKV_ENOTFOUND if it holds none
 * on key (it ended, or another took it after it did). */
int shmkv_lease_release(struct shmkv *kv, const void *key, size_t klen);

/* shmkv_get that also returns an expired value still in memory, in a read
 * section: *stale_ms is 0 for a live value, else how long ago it expired.
 * Expired values stay until the store reclaims their memory (shmkvd's
 * expiry sweep as it passes, or a write that needs the room). */
int shmkv_get_stale(struct shmkv *kv, const void *key, size_t klen,
                    shmkv_val_t *val, int64_t *stale_ms);

/* What shmkv_get_or_fill's function returns: the value to store (memory it
 * owns, read before it is called again) and its TTL (0: none). */
struct shmkv_filled {
    const void *val;
    size_t vlen;
    uint64_t ttl_ms;
};

#define SHMKV_FILL_STALE 0x1 /* while another fills, take a stale value */

/* How shmkv_get_or_fill came by its value. */
#define SHMKV_FILL_HIT 1         /* the key was there */
#define SHMKV_FILL_FILLED 2      /* this call computed and stored it */
#define SHMKV_FILL_WAITED 3      /* another process filled it meanwhile */
#define SHMKV_FILL_STALE_VALUE 4 /* an expired value (stale_ms old) */

struct shmkv_fill {
    /* Computes the missing value, outside any lock; a nonzero return is
     * returned from shmkv_get_or_fill, nothing stored. */
    int (*fill)(void *arg, const void *key, size_t klen,
                struct shmkv_filled *out);
    void *arg;
    uint32_t lease_ms; /* longest a fill may take (0: 10,000) */
    uint32_t wait_ms;  /* longest to wait for another's fill */
    int flags;         /* SHMKV_FILL_STALE */
    /* Set by the call: SHMKV_FILL_*, and the stale value's age. */
    int outcome;
    int64_t stale_ms;
};

/* Copies key's value into buf (cap bytes, *vlen its length), filling it
 * once if it is missing: the first caller takes the key's lease and calls
 * f->fill, and stores what it returns; callers meanwhile, in any process,
 * wait for that value up to f->wait_ms (SHMKV_ETIMEDOUT after), or take a
 * stale one (SHMKV_FILL_STALE). A filler that dies frees the lease at once
 * and the next waiter fills: a missing hot key costs one computation, not
 * one per caller. SHMKV_ENOBUFS (with *vlen) if cap is short. */
int shmkv_get_or_fill(struct shmkv *kv, const void *key, size_t klen, void *buf,
                      size_t cap, size_t *vlen, struct shmkv_fill *f);

/* How many live (unexpired) entries this handle's last write evicted to
 * make room, in an lru store: lua_shared_dict's "forcible". */
unsigned shmkv_evicted(const struct shmkv *kv);

/* Adds delta to the decimal 64-bit integer stored at key, creating it at 0
 * (no TTL) when absent, and returns the new value in *result (may be NULL).
 * The value is stored as decimal text, as Redis and memcached do. Errors:
 * SHMKV_ENOTNUM, SHMKV_EOVERFLOW, and those of shmkv_set. */
int shmkv_incr(struct shmkv *kv, const void *key, size_t klen, int64_t delta,
               int64_t *result);

/* Removes every entry. */
int shmkv_flush(struct shmkv *kv);

/* Reclaims the space of expired entries, examining at most max_slots index
 * slots from where the previous call stopped (0: the whole index). Returns
 * the number of entries removed (>= 0) or an error. Expired entries are
 * never returned by reads whether or not this runs; it returns memory for
 * keys no one touches again. */
int shmkv_expire_scan(struct shmkv *kv, uint64_t max_slots);

/* ---------------------------------------------------------------------- */
/* Iterating (snapshots, admin tools) */

/* Called once per live entry; key and val point into shared memory and are
 * valid until the visitor returns; ttl_s is the remaining time to live, 0
 * for none. Return nonzero to stop. */
typedef int (*shmkv_visit_fn)(void *ctx, const void *key, size_t klen,
                              const void *val, size_t vlen, int64_t ttl_s);

/* A visitor given the remaining time to live in milliseconds (0: none),
 * for shmkv_foreach_ms and shmkv_scan_ms; ttl_s above is rounded up. */
typedef int (*shmkv_visit_ms_fn)(void *ctx, const void *key, size_t klen,
                                 const void *val, size_t vlen, int64_t ttl_ms);

/* Visits every live entry, a few hundred index slots per read section, so
 * that writers go on meanwhile and no section is long. Every key present
 * for the whole walk is visited exactly once, with a value it held during
 * the walk; a key written or removed meanwhile may or may not be. Returns
 * 0, an error, the visitor's nonzero result, or SHMKV_ESTALE if a visitor
 * took so long that its section was revoked (what it was given may have
 * changed under it). */
int shmkv_foreach(struct shmkv *kv, shmkv_visit_fn fn, void *ctx);
int shmkv_foreach_ms(struct shmkv *kv, shmkv_visit_ms_fn fn, void *ctx);

/* One step of a walk that a caller resumes, as Redis's SCAN: visits the
 * live entries of about `count` index slots (at least one bucket) from
 * *cursor on, in one read section, then sets *cursor to where the next
 * step starts, 0 once the walk is over (start it with 0). Every entry
 * present for the whole walk is visited at least once, and entries
 * added or removed meanwhile may or may not be; an entry may be visited
 * twice when the data segment was replaced (a resize) during the walk,
 * which then starts over. Returns 0, an error, or the visitor's nonzero
 * result (*cursor then still says where this step began). */
int shmkv_scan(struct shmkv *kv, uint64_t *cursor, size_t count,
               shmkv_visit_fn fn, void *ctx);
int shmkv_scan_ms(struct shmkv *kv, uint64_t *cursor, size_t count,
                  shmkv_visit_ms_fn fn, void *ctx);

/* ---------------------------------------------------------------------- */
/* Statistics and checking */

struct shmkv_stats {
    /* contents */
    uint64_t entries;
    uint64_t entries_with_ttl;
    uint64_t bytes_used;      /* arena bytes held by entries (with headers) */
    uint64_t bytes_free;      /* arena bytes free */
    uint64_t bytes_limbo;     /* arena bytes of entries deleted or replaced
                                 and not yet free: a read section that
                                 began before may still see them; used +
                                 free + limbo = capacity */
    uint64_t bytes_capacity;  /* arena size */
    uint64_t largest_free;    /* the largest block that could be stored */
    double fragmentation;     /* 1 - largest_free / bytes_free (0 = none) */
    uint64_t index_slots;     /* hash index capacity */
    uint64_t segment_bytes;   /* all its segments, as the kernel sees them */
    uint64_t data_bytes;      /* the data segment's size: what shmkv_resize
                                 changes */
    uint64_t data_page_bytes; /* its page size: the system's, or the huge
                                 page size when huge pages back it */
    enum shmkv_huge_pages huge_pages; /* the store's setting */
    /* counters since the store was created */
    uint64_t hits;
    uint64_t misses;
    uint64_t sets;
    uint64_t deletes;
    uint64_t evictions;
    uint64_t expirations;
    uint64_t lock_waits; /* lock still taken after a short spin:
                            the caller slept on it */
    uint64_t lock_timeouts;
    uint64_t recoveries;      /* write locks replaced after a dead holder
                                 (and its operation repaired) */
    uint64_t revocations;     /* read sections revoked: held past the
                                 reader timeout */
    uint64_t dead_readers;    /* read sections dropped: their process
                                 died inside them */
    uint64_t stale_sections;  /* sections whose reader learned they were
                                 revoked (SHMKV_ESTALE) */
    uint64_t compactions;     /* arena windows packed so that a value
                                 larger than any free block could be
                                 stored */
    uint64_t compacted_bytes; /* entry bytes moved by compactions */
    uint64_t resizes;         /* online resizes completed */
    /* An online resize under way: the size it makes (0: none), and the
     * buckets of the index copied so far out of all. */
    uint64_t resize_to_bytes;
    uint64_t resize_done;
    uint64_t resize_total;
    /* layout and limits */
    uint32_t max_key_bytes;
    uint32_t max_value_bytes;
    enum shmkv_eviction eviction;
    uint32_t lock_timeout_ms;
    uint32_t reader_timeout_ms;
    uint32_t clients;     /* handles attached now (live processes) */
    uint32_t writers;     /* of which writing ones */
    uint32_t max_clients; /* of each kind, read-only and writing */
    uint64_t generation;  /* data segment generation */
    int32_t owner_pid;    /* the creating process (pid) */
    int64_t created_unix; /* creation time, seconds */
};

/* Grows or shrinks the store online to size_bytes (index and values;
 * rounded up to whole pages, huge ones if the store uses them), its index
 * sized for max_entries (0: as many per byte as now). A new data segment
 * is filled from the current one in slices of about a millisecond under
 * the write lock, while every write made meanwhile is applied to both;
 * then it replaces the current one in one store. Readers go on throughout
 * and follow at their next read section; values already handed out stay
 * valid until their section ends. progress, if not NULL, is called after
 * each slice with the old index's buckets copied and their total; if it
 * returns nonzero the resize stops, the store as it was (SHMKV_EAGAIN).
 *
 * Only a process that can remove the store's segments may resize it (the
 * owner's uid, or root): SHMKV_EACCES otherwise (ask shmkvd: `shmkvctl
 * resize`). SHMKV_ENOSPC if the new size cannot hold the live entries, or
 * if they grew past it meanwhile (the store is then left as it was);
 * SHMKV_EBUSY if another resize is under way; SHMKV_EAGAIN if a writer
 * died during it (the store is left as it was: try again). A resizer that
 * dies leaves its segment to the next writer, which removes it. */
int shmkv_resize(struct shmkv *kv, uint64_t size_bytes, uint64_t max_entries,
                 int (*progress)(void *arg, uint64_t done, uint64_t total),
                 void *arg);

/* Fills *stats in a read section of its own. */
int shmkv_stats(struct shmkv *kv, struct shmkv_stats *stats);

struct shmkv_check_report {
    uint64_t entries_seen; /* entries reachable from the index */
    uint64_t blocks_used;  /* arena blocks holding entries */
    uint64_t blocks_free;
    uint64_t blocks_limbo;   /* unlinked blocks not yet free */
    uint64_t bytes_leaked;   /* arena space neither free nor reachable
                                (left by a killed writer) */
    uint64_t problems;       /* inconsistencies found */
    char first_problem[160]; /* a description of the first one */
};

/* Walks the index, every entry and the whole arena and reports what it
 * finds, holding the store's rwlock for reading: writers wait for it
 * (readers do not). Returns 0 if the store is consistent (leaked bytes
 * alone are not an inconsistency), SHMKV_ECORRUPT otherwise, or an error. */
int shmkv_check(struct shmkv *kv, struct shmkv_check_report *report);

/* ---------------------------------------------------------------------- */
/* Liveness and recovery events, for the store's operator (shmkvd logs
 * them). Any process that revokes a section or recovers the store records
 * it in a small ring in the store. */

enum shmkv_event_type {
    SHMKV_EVENT_REVOKED = 1,        /* a read section held past the reader
                                       timeout was revoked; duration_ms: how
                                       long a writer had waited for it */
    SHMKV_EVENT_DEAD_READER = 2,    /* a dead process's read section was
                                       dropped */
    SHMKV_EVENT_RECOVERED = 3,      /* a write lock a dead process held (or
                                       damaged while waiting for it) was
                                       replaced; detail: the kind of write
                                       repaired, 0 for none; duration_ms: how
                                       long the recovery took */
    SHMKV_EVENT_SLOW_WRITER = 4,    /* a writer held the write lock longer
                                       than the reader timeout; duration_ms:
                                       how long a waiter had waited */
    SHMKV_EVENT_RESIZE_ABORTED = 5, /* an online resize was given up; pid:
                                       its resizer; detail: why (1 a
                                       writer died during it, 2 the
                                       resizer died, 3 the new size filled
                                       up, 4 its segment could not be
                                       attached, 5 it was cancelled) */
    SHMKV_EVENT_RESIZED = 6,        /* a resize ended: detail: the new
                                       size; duration_ms: how long it took */
};

struct shmkv_event {
    uint64_t seq; /* the event's number in the store, from 0 */
    enum shmkv_event_type type;
    int32_t pid; /* the process it is about (as its own pid namespace
                    numbers it) */
    uint64_t duration_ms;
    int64_t at_unix_ms;
    uint64_t detail;
};

/* Reads up to max events from *cursor on into out and advances *cursor;
 * returns how many it read. Start with *cursor = 0; events older than the
 * ring (64) are skipped, and *lost (may be NULL) says how many. */
int shmkv_events(struct shmkv *kv, uint64_t *cursor, struct shmkv_event *out,
                 int max, uint64_t *lost);

/* Housekeeping for the store's owner, bounded and never waiting longer
 * than the handle's timeout: frees the client slots of dead processes, and
 * replaces a write lock a dead process holds before any writer needs it.
 * Returns 0 or an error. */
int shmkv_maintain(struct shmkv *kv);

#ifdef __cplusplus
}
#endif

#endif /* SHMKV_H */
