/*
 * store.c - creating, attaching and removing a store.
 *
 * The control segment sits at the store's key and lives as long as the
 * store. Its header is written completely before its magic, so an opener
 * that races the creator sees either no store or a whole one. Every
 * segment made here has one owner of its IPC_RMID: the control segment and
 * the current data segment belong to shmkv_destroy() / shmkv_remove(); a
 * segment being built by a recovery is recorded in recover_shmid, and the
 * one it replaces in retired_shmid, so that whoever takes over removes
 * them.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/random.h>
#include <sys/shm.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define MIN_SIZE_BYTES (1ull << 20)
#define MAX_SIZE_BYTES (64ull << 30)
#define DEFAULT_SIZE_BYTES (64ull << 20)
#define MAX_LOAD_PERCENT 95u
#define MAX_RECENCY_CELLS (1ull << 24)
#define DEFAULT_MAX_KEY_BYTES 250u
#define DEFAULT_MAX_VALUE_BYTES (1u << 20)

void shmkv_options_init(struct shmkv_options *opts)
{
    if (opts == NULL)
        return;
    memset(opts, 0, sizeof *opts);
    opts->size_bytes = DEFAULT_SIZE_BYTES;
    opts->mode = 0600;
    opts->gid = -1;
    opts->max_key_bytes = 0;   /* DEFAULT_MAX_KEY_BYTES */
    opts->max_value_bytes = 0; /* DEFAULT_MAX_VALUE_BYTES, or size / 4 */
    opts->eviction = SHMKV_EVICT_NONE;
    opts->lock_timeout_ms = 5000;
    opts->max_clients = 1024;
}

static uint64_t align_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

static bool is_prime(uint64_t n)
{
    if (n < 4)
        return n >= 2;
    if (n % 2 == 0)
        return false;
    for (uint64_t f = 3; f * f <= n; f += 2)
        if (n % f == 0)
            return false;
    return true;
}

/* Buckets for `entries` at the target load: a prime, so that the index's
 * double-hashing probe sequences visit every bucket. */
static uint64_t buckets_for_entries(uint64_t entries)
{
    uint64_t n =
        (entries * 100 + BUCKET_SLOTS * INDEX_TARGET_LOAD_PERCENT - 1) /
        (BUCKET_SLOTS * INDEX_TARGET_LOAD_PERCENT);
    if (n < 11)
        n = 11;
    while (!is_prime(n))
        n++;
    return n;
}

static uint64_t next_pow2(uint64_t v)
{
    uint64_t p = 1;
    while (p < v)
        p <<= 1;
    return p;
}

struct geometry {
    uint64_t data_bytes;
    uint64_t nbuckets;
    uint64_t index_off;
    uint64_t arena_off;
    uint64_t ctl_bytes;
    uint64_t locks_off;
    uint64_t clients_off;
    uint64_t recency_off;
    uint64_t recency_cells;
};

/* The options with defaults filled in for zero limits. */
static struct shmkv_options options_resolved(const struct shmkv_options *in)
{
    struct shmkv_options o = *in;
    if (o.max_key_bytes == 0)
        o.max_key_bytes = DEFAULT_MAX_KEY_BYTES;
    if (o.max_value_bytes == 0) {
        o.max_value_bytes = DEFAULT_MAX_VALUE_BYTES;
        if (o.max_value_bytes > o.size_bytes / 4)
            o.max_value_bytes = (uint32_t)(o.size_bytes / 4);
    }
    return o;
}

static int check_options(const struct shmkv_options *o, struct geometry *g)
{
    if (o->size_bytes < MIN_SIZE_BYTES || o->size_bytes > MAX_SIZE_BYTES)
        return set_error(SHMKV_EINVAL,
                         "size %llu bytes: must be 1 MiB to 64 GiB",
                         (unsigned long long)o->size_bytes);
    if (o->mode > 0777)
        return set_error(SHMKV_EINVAL, "mode %o: only permission bits",
                         o->mode);
    if ((o->mode & 0600) != 0600)
        return set_error(SHMKV_EINVAL,
                         "mode %03o: the owner needs read and write", o->mode);
    if (o->gid < -1 || o->gid > (int64_t)UINT32_MAX - 1)
        return set_error(SHMKV_EINVAL, "gid %lld is not a group id",
                         (long long)o->gid);
    if (o->max_key_bytes < 1 || o->max_key_bytes > 65535)
        return set_error(SHMKV_EINVAL, "max key size %u: must be 1 to 65535",
                         o->max_key_bytes);
    if (o->max_value_bytes > o->size_bytes / 4)
        return set_error(SHMKV_EINVAL,
                         "max value size %u: over a quarter of the store",
                         o->max_value_bytes);
    if (o->eviction != SHMKV_EVICT_NONE && o->eviction != SHMKV_EVICT_LRU)
        return set_error(SHMKV_EINVAL, "unknown eviction policy %d",
                         (int)o->eviction);
    if (o->lock_timeout_ms < 1 || o->lock_timeout_ms > 3600000)
        return set_error(SHMKV_EINVAL,
                         "lock timeout %u ms: must be 1 ms to 1 hour",
                         o->lock_timeout_ms);
    if (o->max_clients < 1 || o->max_clients > 65536)
        return set_error(SHMKV_EINVAL, "max clients %u: must be 1 to 65536",
                         o->max_clients);

    g->data_bytes = round_to_pages(o->size_bytes);
    uint64_t entries = o->max_entries;
    if (entries == 0)
        entries = g->data_bytes / SHMKV_DEFAULT_ENTRY_BYTES;
    g->nbuckets = buckets_for_entries(entries);
    g->index_off = align_up(sizeof(struct data_header), CACHE_LINE);
    g->arena_off =
        align_up(g->index_off + index_bytes_for(g->nbuckets), CACHE_LINE);
    if (g->arena_off > g->data_bytes / 2)
        return set_error(SHMKV_EINVAL,
                         "max entries %llu: the index would take over half "
                         "of %llu bytes",
                         (unsigned long long)entries,
                         (unsigned long long)g->data_bytes);

    g->locks_off = align_up(sizeof(struct ctl_header), CACHE_LINE);
    g->clients_off = g->locks_off + LOCK_SLOTS * sizeof(struct lock_slot);
    g->recency_off =
        g->clients_off + (uint64_t)o->max_clients * sizeof(struct client_slot);
    g->recency_cells = 0;
    if (o->eviction == SHMKV_EVICT_LRU) {
        g->recency_cells = next_pow2(entries);
        if (g->recency_cells > MAX_RECENCY_CELLS)
            g->recency_cells = MAX_RECENCY_CELLS;
    }
    g->ctl_bytes =
        round_to_pages(g->recency_off + g->recency_cells * sizeof(uint32_t));
    return 0;
}

/* Lays out a fresh (zero-filled) data segment as generation gen. */
static void data_init(struct data_header *d, const struct ctl_header *c,
                      uint32_t gen, uint64_t seed)
{
    d->layout_version = LAYOUT_VERSION;
    d->header_bytes = sizeof *d;
    d->generation = gen;
    d->data_bytes = c->data_bytes;
    d->seed = seed;
    d->nbuckets = buckets_for_entries(c->max_entries);
    d->max_load = d->nbuckets * BUCKET_SLOTS * MAX_LOAD_PERCENT / 100;
    d->index_off = align_up(sizeof *d, CACHE_LINE);
    d->arena_off =
        align_up(d->index_off + index_bytes_for(d->nbuckets), CACHE_LINE);
    d->arena_units = (c->data_bytes - d->arena_off) / UNIT_BYTES - 1;
    arena_init(d);
    memcpy(d->magic, DATA_MAGIC, sizeof d->magic);
}

/* Gives a segment the store's group (IPC_SET by its creator). */
static int segment_set_group(int shmid, int64_t gid)
{
    if (gid < 0)
        return 0;
    struct shmid_ds ds;
    if (shmctl(shmid, IPC_STAT, &ds) != 0)
        return set_errno_error(SHMKV_ESYS, "shmctl(IPC_STAT)");
    ds.shm_perm.gid = (gid_t)gid;
    if (shmctl(shmid, IPC_SET, &ds) != 0)
        return set_errno_error(errno == EPERM ? SHMKV_EACCES : SHMKV_ESYS,
                               "setting the store's group");
    return 0;
}

/* Creates, attaches and initialises a new data segment for generation gen.
 * The caller owns the returned segment's removal. If record is not NULL,
 * the segment's id is stored there as soon as it exists (and -1 if it is
 * removed again), so that if this process dies before it is done, whoever
 * takes over can remove the segment. */
int data_segment_make(struct ctl_header *c, uint32_t gen, uint64_t seed,
                      _Atomic int32_t *record, int *shmid_out,
                      struct data_header **out)
{
    int shmid;
    int rc = segment_create(IPC_PRIVATE, c->data_bytes, c->mode, &shmid);
    if (rc != 0)
        return rc;
    if (record != NULL)
        atomic_store(record, shmid);
    void *addr;
    uint64_t bytes;
    rc = segment_set_group(shmid, c->gid);
    if (rc == 0)
        rc = segment_attach(shmid, false, &addr, &bytes);
    if (rc != 0) {
        shmctl(shmid, IPC_RMID, NULL);
        if (record != NULL)
            atomic_store(record, -1);
        return rc;
    }
    struct lock_slot *locks = (struct lock_slot *)((char *)c + c->locks_off);
    atomic_store(&locks[gen % LOCK_SLOTS].writer, 0);
    rc = lock_init(&locks[gen % LOCK_SLOTS].rwlock);
    if (rc != 0) {
        shmdt(addr);
        shmctl(shmid, IPC_RMID, NULL);
        if (record != NULL)
            atomic_store(record, -1);
        return rc;
    }
    data_init(addr, c, gen, seed);
    *shmid_out = shmid;
    *out = addr;
    return 0;
}

/* Validates a control segment's header as attached. */
static int ctl_validate(const struct ctl_header *c, uint64_t seg_bytes)
{
    if (seg_bytes < sizeof *c)
        return set_error(SHMKV_ENOTSHMKV,
                         "segment of %llu bytes is too small for a store",
                         (unsigned long long)seg_bytes);
    if (memcmp(c->magic, CTL_MAGIC, sizeof c->magic) != 0)
        return set_error(SHMKV_ENOTSHMKV,
                         "segment does not start with the shmkv magic");
    if (c->layout_version != LAYOUT_VERSION)
        return set_error(SHMKV_EVERSION,
                         "store has layout version %u; this libshmkv "
                         "(%s) reads version %u",
                         c->layout_version, SHMKV_VERSION_STRING,
                         LAYOUT_VERSION);
    if (c->header_bytes != sizeof *c || c->ctl_bytes > seg_bytes ||
        c->recency_off + c->recency_cells * sizeof(uint32_t) > seg_bytes ||
        c->clients_off + (uint64_t)c->max_clients * sizeof(struct client_slot) >
            seg_bytes)
        return set_error(SHMKV_ENOTSHMKV,
                         "store header is inconsistent with its segment");
    return 0;
}

static struct shmkv *handle_new(bool rdonly)
{
    struct shmkv *kv = calloc(1, sizeof *kv);
    if (kv == NULL)
        return NULL;
    kv->ctl_shmid = -1;
    kv->data_shmid = -1;
    kv->rdonly = rdonly;
    kv->pid = getpid();
    kv->start_ticks = process_start_ticks(kv->pid);
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != sizeof seed)
        seed = (uint64_t)kv->pid * 0x9e3779b97f4a7c15ull ^ (uint64_t)time(NULL);
    kv->rng = seed | 1;
    return kv;
}

/* Copies the fixed settings from the control header into the handle. */
static void handle_bind_ctl(struct shmkv *kv, struct ctl_header *c, int shmid)
{
    struct shmid_ds ds;
    kv->can_recover =
        shmctl(shmid, IPC_STAT, &ds) == 0 && ds.shm_perm.uid == geteuid();
    kv->ctl = c;
    kv->ctl_shmid = shmid;
    kv->max_key_bytes = c->max_key_bytes;
    kv->max_value_bytes = c->max_value_bytes;
    kv->lock_timeout_ms = c->lock_timeout_ms;
    kv->lru = c->eviction == SHMKV_EVICT_LRU && c->recency_cells > 0;
    kv->recency = kv->lru ? (uint32_t *)((char *)c + c->recency_off) : NULL;
    kv->recency_mask = kv->lru ? c->recency_cells - 1 : 0;
}

static void handle_free(struct shmkv *kv)
{
    if (kv == NULL)
        return;
    client_slot_release(kv);
    if (kv->data != NULL)
        shmdt(kv->data);
    if (kv->ctl != NULL)
        shmdt(kv->ctl);
    free(kv);
}

int shmkv_create(const struct shmkv_options *opts, struct shmkv **out)
{
    if (opts == NULL || out == NULL)
        return set_error(SHMKV_EINVAL, "NULL options or handle pointer");
    *out = NULL;
    key_t key;
    int rc = shmkv_parse_key(opts->key, (int32_t *)&key);
    if (rc != 0)
        return rc;
    struct shmkv_options resolved = options_resolved(opts);
    opts = &resolved;
    struct geometry g = {0};
    rc = check_options(opts, &g);
    if (rc != 0)
        return rc;

    struct shmkv *kv = handle_new(false);
    if (kv == NULL)
        return set_error(SHMKV_ENOMEM, "no memory for a handle");
    int ctl_id = -1, data_id = -1;
    struct ctl_header *c = NULL;
    struct data_header *d = NULL;
    uint64_t seg_bytes;
    rc = segment_create(key, g.ctl_bytes, opts->mode, &ctl_id);
    if (rc != 0)
        goto fail;
    rc = segment_set_group(ctl_id, opts->gid);
    if (rc == 0)
        rc = segment_attach(ctl_id, false, (void **)&c, &seg_bytes);
    if (rc != 0)
        goto fail;

    c->layout_version = LAYOUT_VERSION;
    c->header_bytes = sizeof *c;
    c->ctl_bytes = g.ctl_bytes;
    c->page_bytes = page_bytes();
    c->data_bytes = g.data_bytes;
    c->max_entries = opts->max_entries
                         ? opts->max_entries
                         : g.data_bytes / SHMKV_DEFAULT_ENTRY_BYTES;
    c->max_key_bytes = opts->max_key_bytes;
    c->max_value_bytes = opts->max_value_bytes;
    c->eviction = (uint32_t)opts->eviction;
    c->lock_timeout_ms = opts->lock_timeout_ms;
    c->max_clients = opts->max_clients;
    c->mode = opts->mode;
    c->gid = opts->gid;
    c->owner_pid = (int32_t)kv->pid;
    c->owner_start_ticks = kv->start_ticks;
    c->created_unix = (int64_t)time(NULL);
    c->locks_off = g.locks_off;
    c->clients_off = g.clients_off;
    c->recency_off = g.recency_off;
    c->recency_cells = g.recency_cells;
    atomic_store(&c->recover_shmid, -1);
    atomic_store(&c->retired_shmid, -1);

    uint64_t seed;
    if (getrandom(&seed, sizeof seed, 0) != sizeof seed)
        seed = kv->rng * 0xff51afd7ed558ccdull;
    rc = data_segment_make(c, 1, seed, NULL, &data_id, &d);
    if (rc != 0)
        goto fail;
    shmdt(d);
    atomic_store(&c->current, CURRENT_MAKE(1, data_id));
    /* The magic last: openers see a whole store or none. */
    atomic_thread_fence(memory_order_release);
    memcpy(c->magic, CTL_MAGIC, sizeof c->magic);

    handle_bind_ctl(kv, c, ctl_id);
    kv->owner = true;
    rc = client_slot_claim(kv);
    if (rc == 0)
        rc = generation_refresh(kv);
    if (rc != 0)
        goto fail;
    *out = kv;
    return 0;

fail:
    if (data_id >= 0)
        shmctl(data_id, IPC_RMID, NULL);
    if (ctl_id >= 0)
        shmctl(ctl_id, IPC_RMID, NULL);
    kv->ctl = NULL;
    if (c != NULL)
        shmdt(c);
    if (kv->data != NULL) {
        shmdt(kv->data);
        kv->data = NULL;
    }
    kv->slot = NULL;
    free(kv);
    return rc;
}

/* Finds and attaches the control segment at key, validated. */
static int ctl_attach(key_t key, struct ctl_header **out, int *shmid_out)
{
    int id = shmget(key, 0, 0);
    if (id < 0) {
        if (errno == ENOENT)
            return set_error(SHMKV_ENOSTORE, "no store at key 0x%08x",
                             (unsigned)key);
        if (errno == EACCES)
            return set_error(SHMKV_EACCES,
                             "no permission for the store at key 0x%08x",
                             (unsigned)key);
        return set_errno_error(SHMKV_ESYS, "shmget");
    }
    void *addr;
    uint64_t bytes;
    int rc = segment_attach(id, false, &addr, &bytes);
    if (rc != 0)
        return rc;
    /* A creator writes its magic last; give one being made a moment. */
    for (int i = 0; i < 100 && bytes >= sizeof(struct ctl_header); i++) {
        static const char zero[8];
        if (memcmp(((struct ctl_header *)addr)->magic, zero, 8) != 0)
            break;
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL);
    }
    atomic_thread_fence(memory_order_acquire);
    rc = ctl_validate(addr, bytes);
    if (rc != 0) {
        shmdt(addr);
        return rc;
    }
    *out = addr;
    *shmid_out = id;
    return 0;
}

int shmkv_open(const char *where, int flags, struct shmkv **out)
{
    if (out == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle pointer");
    *out = NULL;
    if (flags & ~SHMKV_RDONLY)
        return set_error(SHMKV_EINVAL, "unknown open flags 0x%x",
                         (unsigned)flags);
    key_t key;
    int rc = key_from_where(where, &key);
    if (rc != 0)
        return rc;
    struct shmkv *kv = handle_new(flags & SHMKV_RDONLY);
    if (kv == NULL)
        return set_error(SHMKV_ENOMEM, "no memory for a handle");
    struct ctl_header *c;
    int id;
    rc = ctl_attach(key, &c, &id);
    if (rc != 0) {
        free(kv);
        return rc;
    }
    handle_bind_ctl(kv, c, id);
    if (atomic_load(&c->current) & CURRENT_CLOSED)
        rc = set_error(SHMKV_ECLOSED, "the store at key 0x%08x is closed",
                       (unsigned)key);
    if (rc == 0)
        rc = client_slot_claim(kv);
    if (rc == 0)
        rc = generation_refresh(kv);
    if (rc != 0) {
        handle_free(kv);
        return rc;
    }
    *out = kv;
    return 0;
}

int shmkv_adopt(const char *where, struct shmkv **out)
{
    if (out == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle pointer");
    *out = NULL;
    key_t key;
    int rc = key_from_where(where, &key);
    if (rc != 0)
        return rc;
    struct shmkv *kv = handle_new(false);
    if (kv == NULL)
        return set_error(SHMKV_ENOMEM, "no memory for a handle");
    struct ctl_header *c;
    int id;
    rc = ctl_attach(key, &c, &id);
    if (rc != 0) {
        free(kv);
        return rc;
    }
    handle_bind_ctl(kv, c, id);
    /* owner_pid is the claim: only one adopter wins it. */
    int32_t owner = atomic_load(&c->owner_pid);
    if (owner == (int32_t)kv->pid || process_alive(owner, c->owner_start_ticks))
        rc = set_error(SHMKV_EOWNED,
                       "the store at key 0x%08x is owned by live process %d",
                       (unsigned)key, (int)owner);
    else if (!atomic_compare_exchange_strong(&c->owner_pid, &owner,
                                             (int32_t)kv->pid))
        rc = set_error(SHMKV_EOWNED,
                       "another process adopted the store at key 0x%08x",
                       (unsigned)key);
    if (rc != 0) {
        handle_free(kv);
        return rc;
    }
    c->owner_start_ticks = kv->start_ticks;
    atomic_fetch_and(&c->current, ~CURRENT_CLOSED);
    kv->owner = true;
    rc = client_slot_claim(kv);
    /* Taking the write lock once recovers a lock the dead owner held. */
    if (rc == 0)
        rc = lock_write(kv);
    if (rc == 0)
        lock_write_end(kv);
    if (rc != 0) {
        handle_free(kv);
        return rc;
    }
    *out = kv;
    return 0;
}

void shmkv_close(struct shmkv *kv)
{
    if (kv == NULL)
        return;
    if (kv->in_read) {
        lock_read_end(kv);
        kv->in_read = false;
    }
    handle_free(kv);
}

int shmkv_set_marks(struct shmkv *kv, unsigned marks)
{
    if (kv == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle");
    if (marks & ~SHMKV_MARK_LOADING)
        return set_error(SHMKV_EINVAL, "unknown marks 0x%x", marks);
    if (kv->rdonly)
        return set_error(SHMKV_ERDONLY, "the handle is read-only");
    atomic_store(&kv->ctl->marks, marks);
    return 0;
}

int shmkv_get_marks(struct shmkv *kv, unsigned *marks)
{
    if (kv == NULL || marks == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle or result");
    *marks = atomic_load(&kv->ctl->marks);
    return 0;
}

int shmkv_mark_closed(struct shmkv *kv)
{
    if (kv == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle");
    uint64_t cur = atomic_fetch_or(&kv->ctl->current, CURRENT_CLOSED);
    kv->closer = true;
    /* The handle follows the closed generation, to read what it holds. */
    if ((cur & ~CURRENT_CLOSED) == (kv->current & ~CURRENT_CLOSED))
        kv->current = cur | CURRENT_CLOSED;
    return 0;
}

/* Marks closed and removes every segment the control header names. */
static void ctl_remove_all(struct ctl_header *c, int ctl_id)
{
    uint64_t cur = atomic_fetch_or(&c->current, CURRENT_CLOSED);
    int half = atomic_exchange(&c->recover_shmid, -1);
    if (half >= 0 && half != CURRENT_SHMID(cur))
        shmctl(half, IPC_RMID, NULL);
    int retired = atomic_exchange(&c->retired_shmid, -1);
    if (retired >= 0 && retired != CURRENT_SHMID(cur))
        shmctl(retired, IPC_RMID, NULL);
    if (cur != 0)
        shmctl(CURRENT_SHMID(cur), IPC_RMID, NULL);
    shmctl(ctl_id, IPC_RMID, NULL);
}

int shmkv_destroy(struct shmkv *kv)
{
    if (kv == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle");
    if (kv->in_read) {
        lock_read_end(kv);
        kv->in_read = false;
    }
    ctl_remove_all(kv->ctl, kv->ctl_shmid);
    handle_free(kv);
    return 0;
}

int shmkv_remove(const char *where)
{
    key_t key;
    int rc = key_from_where(where, &key);
    if (rc != 0)
        return rc;
    struct ctl_header *c;
    int id;
    rc = ctl_attach(key, &c, &id);
    if (rc != 0)
        return rc;
    ctl_remove_all(c, id);
    shmdt(c);
    return 0;
}
