/*
 * store.c - creating, attaching and removing a store, and the process's
 * list of its open handles.
 *
 * The control segment sits at the store's key and lives as long as the
 * store. Its header is written completely before its magic, so an opener
 * that races the creator sees either no store or a whole one. Every System
 * V object made here has one owner of its IPC_RMID: the control segment,
 * the current data segment and the liveness semaphores all belong to
 * shmkv_destroy() / shmkv_remove(), which find them through the control
 * header.
 *
 * A handle belongs to the process that opened it. The process keeps a list
 * of its open handles, and a fork() handler marks each one in the child as
 * the parent's: every call through it there fails with SHMKV_EFORKED, and
 * closing it only frees the child's copy (the parent's client slot, claim
 * and liveness semaphore are the parent's).
 */
#include <errno.h>
#include <pthread.h>
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
#define MAX_RECENCY_CELLS (1ull << 24)
/* Version cells: one per 8 entries the store is sized for, 4096 to 4M
 * (32 MiB) of them. */
#define VERSION_ENTRIES_PER_CELL 8u
#define MIN_VERSION_CELLS 4096ull
#define MAX_VERSION_CELLS (1ull << 22)
#define DEFAULT_MAX_KEY_BYTES 250u
#define DEFAULT_MAX_VALUE_BYTES (1u << 20)
#define DEFAULT_READER_TIMEOUT_MS 1000u
#define LIMBO_SLOTS 4096u

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
    opts->reader_timeout_ms = DEFAULT_READER_TIMEOUT_MS;
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
uint64_t buckets_for_entries(uint64_t entries)
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
    uint64_t ctl_bytes;
    uint64_t locks_off;
    uint64_t wclients_off;
    uint64_t wslots_off;
    uint64_t pins_off;
    uint64_t reader_bytes;
    uint64_t clients_off;
    uint64_t recency_off;
    uint64_t recency_cells;
    uint64_t versions_off;
    uint64_t version_cells;
    uint64_t leases_off;
    uint64_t chunks_off;
    uint64_t chunk_count;
};

/* Lays out a data segment's regions in *d: header, index, limbo ring, undo
 * log, arena, and past the arena's end sentinel room for a key, so that a
 * reader comparing a key at any block stays inside the segment. */
void data_layout(struct data_header *d, uint64_t data_bytes, uint64_t nbuckets,
                 uint32_t max_key_bytes)
{
    d->data_bytes = data_bytes;
    d->nbuckets = nbuckets;
    d->index_off = align_up(sizeof *d, CACHE_LINE);
    d->limbo_off =
        align_up(d->index_off + index_bytes_for(nbuckets), CACHE_LINE);
    d->limbo_slots = LIMBO_SLOTS;
    d->undo_off = align_up(d->limbo_off + LIMBO_SLOTS * 8u, CACHE_LINE);
    d->undo_slots = undo_bytes_for() / sizeof(struct undo_rec);
    d->arena_off = align_up(d->undo_off + undo_bytes_for(), CACHE_LINE);
    uint64_t pad = align_up((uint64_t)max_key_bytes + UNIT_BYTES, UNIT_BYTES);
    d->arena_units = d->arena_off + pad + 2 * UNIT_BYTES < data_bytes
                         ? (data_bytes - d->arena_off - pad) / UNIT_BYTES - 1
                         : 0;
}

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
    if (o->reader_timeout_ms < 1 || o->reader_timeout_ms > 3600000)
        return set_error(SHMKV_EINVAL,
                         "reader timeout %u ms: must be 1 ms to 1 hour",
                         o->reader_timeout_ms);
    if (o->max_clients < 1 || o->max_clients > 65536)
        return set_error(SHMKV_EINVAL, "max clients %u: must be 1 to 65536",
                         o->max_clients);

    if ((unsigned)o->huge_pages > SHMKV_HUGE_YES)
        return set_error(SHMKV_EINVAL,
                         "huge pages setting %d: must be no, "
                         "try or yes",
                         (int)o->huge_pages);
    g->data_bytes = round_to_pages(o->size_bytes);
    if (o->huge_pages != SHMKV_HUGE_NO) {
        uint64_t hp = huge_page_bytes();
        if (hp == 0 && o->huge_pages == SHMKV_HUGE_YES)
            return set_error(SHMKV_EINVAL, "this kernel has no huge pages "
                                           "(no Hugepagesize in "
                                           "/proc/meminfo)");
        if (hp != 0)
            g->data_bytes = (g->data_bytes + hp - 1) / hp * hp;
    }
    uint64_t entries = o->max_entries;
    if (entries == 0)
        entries = g->data_bytes / SHMKV_DEFAULT_ENTRY_BYTES;
    g->nbuckets = buckets_for_entries(entries);
    struct data_header d;
    data_layout(&d, g->data_bytes, g->nbuckets, o->max_key_bytes);
    if (d.arena_off > g->data_bytes / 2)
        return set_error(SHMKV_EINVAL,
                         "max entries %llu: the index would take over half "
                         "of %llu bytes",
                         (unsigned long long)entries,
                         (unsigned long long)g->data_bytes);

    g->locks_off = align_up(sizeof(struct ctl_header), CACHE_LINE);
    g->wclients_off = g->locks_off + LOCK_SLOTS * sizeof(struct lock_slot);
    g->wslots_off =
        g->wclients_off + (uint64_t)o->max_clients * sizeof(struct client_slot);
    g->pins_off =
        g->wslots_off + (uint64_t)o->max_clients * sizeof(struct writer_slot);
    g->chunk_count = chunk_count_for(o->max_clients);
    g->leases_off =
        align_up(g->pins_off + pin_count(o->max_clients, g->chunk_count) *
                                   sizeof(struct client_pin),
                 CACHE_LINE);
    g->chunks_off = align_up(g->leases_off + LEASE_SLOTS * sizeof(struct lease),
                             CACHE_LINE);
    g->versions_off =
        align_up(g->chunks_off + g->chunk_count * sizeof(struct reader_chunk),
                 CACHE_LINE);
    g->version_cells = next_pow2(entries / VERSION_ENTRIES_PER_CELL);
    if (g->version_cells < MIN_VERSION_CELLS)
        g->version_cells = MIN_VERSION_CELLS;
    if (g->version_cells > MAX_VERSION_CELLS)
        g->version_cells = MAX_VERSION_CELLS;
    g->ctl_bytes =
        round_to_pages(g->versions_off + g->version_cells * sizeof(uint64_t));
    g->clients_off = sizeof(struct reader_header);
    g->recency_off =
        g->clients_off + (uint64_t)o->max_clients * sizeof(struct client_slot);
    g->recency_cells = 0;
    if (o->eviction == SHMKV_EVICT_LRU) {
        g->recency_cells = next_pow2(entries);
        if (g->recency_cells > MAX_RECENCY_CELLS)
            g->recency_cells = MAX_RECENCY_CELLS;
    }
    g->reader_bytes =
        round_to_pages(g->recency_off + g->recency_cells * sizeof(uint32_t));
    return 0;
}

/* Lays out a fresh (zero-filled) data segment of bytes as generation gen,
 * its index sized for entries. */
static void data_init(struct data_header *d, const struct ctl_header *c,
                      uint32_t gen, uint64_t seed, uint64_t bytes,
                      uint64_t entries, uint64_t page)
{
    d->layout_version = LAYOUT_VERSION;
    d->header_bytes = sizeof *d;
    d->generation = gen;
    d->store_nonce = c->store_nonce;
    d->seed = seed;
    d->page_bytes = page;
    data_layout(d, bytes, buckets_for_entries(entries), c->max_key_bytes);
    d->max_load = d->nbuckets * BUCKET_SLOTS * MAX_LOAD_PERCENT / 100;
    arena_init(d);
    memcpy(d->magic, DATA_MAGIC, sizeof d->magic);
}

/* Gives a segment the store's group (IPC_SET by its creator). */
int segment_set_group(int shmid, int64_t gid)
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

/* Creates, attaches and initialises a new data segment of bytes for
 * generation gen, with huge pages as the store's setting says. The caller
 * owns the returned segment's removal. */
int data_segment_make(struct ctl_header *c, uint32_t gen, uint64_t seed,
                      uint64_t bytes, uint64_t entries, int *shmid_out,
                      struct data_header **out)
{
    int shmid;
    bool huge = c->huge_pages != SHMKV_HUGE_NO;
    int rc = segment_create(IPC_PRIVATE, bytes, c->mode, huge, &shmid);
    if (rc != 0 && huge && c->huge_pages == SHMKV_HUGE_TRY) {
        huge = false;
        rc = segment_create(IPC_PRIVATE, bytes, c->mode, false, &shmid);
    }
    if (rc != 0)
        return rc;
    void *addr;
    uint64_t seg_bytes;
    rc = segment_set_group(shmid, c->gid);
    if (rc == 0)
        rc = segment_attach(shmid, false, &addr, &seg_bytes);
    if (rc != 0) {
        shmctl(shmid, IPC_RMID, NULL);
        return rc;
    }
    data_init(addr, c, gen, seed, bytes, entries,
              huge ? huge_page_bytes() : page_bytes());
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
    /* Each region in order, aligned, and inside its segment; every sum
     * below is of numbers already known to be under a segment's size (or
     * of a bounded count times a small size), so none can wrap. The reader
     * segment's size is checked when it is attached. */
    if (c->header_bytes != sizeof *c || c->ctl_bytes > seg_bytes ||
        c->max_clients == 0 || c->max_clients > 65536 ||
        c->locks_off < sizeof *c || c->locks_off % CACHE_LINE != 0 ||
        c->wclients_off % CACHE_LINE != 0 || c->wslots_off % CACHE_LINE != 0 ||
        c->pins_off % 8 != 0 || c->locks_off > seg_bytes ||
        c->wclients_off > seg_bytes || c->wslots_off > seg_bytes ||
        c->pins_off > seg_bytes ||
        c->locks_off + LOCK_SLOTS * sizeof(struct lock_slot) >
            c->wclients_off ||
        c->wclients_off +
                (uint64_t)c->max_clients * sizeof(struct client_slot) >
            c->wslots_off ||
        c->wslots_off + (uint64_t)c->max_clients * sizeof(struct writer_slot) >
            c->pins_off ||
        c->chunk_count != chunk_count_for(c->max_clients) ||
        c->pins_off + pin_count(c->max_clients, c->chunk_count) *
                          sizeof(struct client_pin) >
            c->leases_off ||
        c->lease_slots != LEASE_SLOTS || c->leases_off % 8 != 0 ||
        c->leases_off + LEASE_SLOTS * sizeof(struct lease) > c->chunks_off ||
        c->chunks_off % 8 != 0 ||
        c->chunks_off + c->chunk_count * sizeof(struct reader_chunk) >
            c->versions_off ||
        c->versions_off % 8 != 0 || c->versions_off > seg_bytes ||
        c->version_cells == 0 || c->version_cells > MAX_VERSION_CELLS ||
        (c->version_cells & (c->version_cells - 1)) != 0 ||
        c->versions_off + c->version_cells * sizeof(uint64_t) > seg_bytes ||
        c->reader_bytes > MAX_SIZE_BYTES ||
        c->clients_off < sizeof(struct reader_header) ||
        c->clients_off % CACHE_LINE != 0 || c->recency_off % 4 != 0 ||
        c->clients_off > c->reader_bytes || c->recency_off > c->reader_bytes ||
        c->recency_cells > c->reader_bytes ||
        c->clients_off + (uint64_t)c->max_clients * sizeof(struct client_slot) >
            c->recency_off ||
        c->recency_off + c->recency_cells * sizeof(uint32_t) >
            c->reader_bytes ||
        (c->recency_cells & (c->recency_cells - 1)) != 0 ||
        c->sems_per_set == 0 ||
        (c->max_clients + (uint64_t)c->sems_per_set) / c->sems_per_set >
            SEM_SETS_MAX)
        return set_error(SHMKV_ENOTSHMKV,
                         "store header is inconsistent with its segment");
    return 0;
}

/* The process's open handles, for the fork() handler. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct shmkv *registry;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_prepare(void)
{
    pthread_mutex_lock(&registry_lock);
}

static void atfork_parent(void)
{
    pthread_mutex_unlock(&registry_lock);
}

/* In the child: every handle is the parent's. Its next call falls to a
 * slow path (current 0) that refuses it; its slot is left alone. */
static void atfork_child(void)
{
    for (struct shmkv *kv = registry; kv != NULL; kv = kv->reg_next) {
        kv->forked = true;
        kv->current = 0;
        kv->in_read = false;
        kv->in_write = false;
        kv->slot_owned = false;
        kv->lock = NULL;
    }
    pthread_mutex_unlock(&registry_lock);
}

static void atfork_install(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

static void registry_add(struct shmkv *kv)
{
    pthread_once(&atfork_once, atfork_install);
    pthread_mutex_lock(&registry_lock);
    kv->reg_prev = NULL;
    kv->reg_next = registry;
    if (registry != NULL)
        registry->reg_prev = kv;
    registry = kv;
    pthread_mutex_unlock(&registry_lock);
}

static void registry_remove(struct shmkv *kv)
{
    pthread_mutex_lock(&registry_lock);
    if (kv->reg_prev != NULL)
        kv->reg_prev->reg_next = kv->reg_next;
    else if (registry == kv)
        registry = kv->reg_next;
    if (kv->reg_next != NULL)
        kv->reg_next->reg_prev = kv->reg_prev;
    kv->reg_prev = kv->reg_next = NULL;
    pthread_mutex_unlock(&registry_lock);
}

int refuse_forked(const struct shmkv *kv)
{
    return set_error(SHMKV_EFORKED,
                     "the handle was opened by process %d, not this one: a "
                     "child opens its own",
                     (int)kv->pid);
}

static struct shmkv *handle_new(bool rdonly)
{
    struct shmkv *kv = calloc(1, sizeof *kv);
    if (kv == NULL)
        return NULL;
    kv->ctl_shmid = -1;
    kv->data_shmid = -1;
    kv->slot_index = UINT32_MAX;
    kv->rdonly = rdonly;
    kv->pid = getpid();
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != sizeof seed)
        seed = (uint64_t)kv->pid * 0x9e3779b97f4a7c15ull ^ (uint64_t)time(NULL);
    kv->rng = seed | 1;
    return kv;
}

/* Copies the fixed settings from the control header into the handle. */
static void handle_bind_ctl(struct shmkv *kv, struct ctl_header *c, int shmid)
{
    kv->ctl = c;
    kv->ctl_shmid = shmid;
    kv->max_key_bytes = c->max_key_bytes;
    kv->max_value_bytes = c->max_value_bytes;
    kv->timeout_ms = c->lock_timeout_ms;
    kv->reader_timeout_ms = c->reader_timeout_ms;
    kv->lru = c->eviction == SHMKV_EVICT_LRU && c->recency_cells > 0;
    kv->recency_mask = kv->lru ? c->recency_cells - 1 : 0;
    kv->versions = (_Atomic uint64_t *)((char *)c + c->versions_off);
    kv->leases = (struct lease *)((char *)c + c->leases_off);
    kv->version_mask = c->version_cells - 1;
    memcpy(kv->ctl_fixed, c, CTL_FIXED_BYTES);
    kv->store_nonce = c->store_nonce;
    kv->max_clients = c->max_clients;
    kv->ctl_tail_fixed = ctl_tail_of(c);
}

/* Attaches the reader segment the control header names, read-write (every
 * role writes its client slot there), and checks its size. */
static int handle_bind_reader(struct shmkv *kv)
{
    const struct ctl_header *c = kv->ctl;
    void *addr;
    uint64_t bytes;
    int rc = segment_attach(c->reader_shmid, false, &addr, &bytes);
    if (rc == SHMKV_ENOSTORE)
        return set_error(SHMKV_ENOSTORE, "the store's reader segment is gone");
    if (rc != 0)
        return rc;
    if (bytes < kv->ctl_tail_fixed.reader_bytes) {
        shmdt(addr);
        return set_error(SHMKV_ENOTSHMKV,
                         "the store's reader segment is %llu bytes, not %llu",
                         (unsigned long long)bytes,
                         (unsigned long long)kv->ctl_tail_fixed.reader_bytes);
    }
    kv->reader_seg = addr;
    kv->reader_shmid = c->reader_shmid;
    kv->recency =
        kv->lru ? (uint32_t *)(kv->reader_seg + kv->ctl_tail_fixed.recency_off)
                : NULL;
    return 0;
}

struct ctl_tail ctl_tail_of(const struct ctl_header *c)
{
    return (struct ctl_tail){.created_unix = c->created_unix,
                             .locks_off = c->locks_off,
                             .wclients_off = c->wclients_off,
                             .wslots_off = c->wslots_off,
                             .pins_off = c->pins_off,
                             .reader_bytes = c->reader_bytes,
                             .clients_off = c->clients_off,
                             .recency_off = c->recency_off,
                             .recency_cells = c->recency_cells,
                             .versions_off = c->versions_off,
                             .version_cells = c->version_cells,
                             .leases_off = c->leases_off,
                             .chunks_off = c->chunks_off,
                             .chunk_count = c->chunk_count};
}

int ctl_intact(const struct shmkv *kv)
{
    struct ctl_tail now = ctl_tail_of(kv->ctl);
    if (memcmp(kv->ctl_fixed, kv->ctl, CTL_FIXED_BYTES) == 0 &&
        memcmp(&now, &kv->ctl_tail_fixed, sizeof now) == 0)
        return 0;
    return set_error(SHMKV_ECORRUPT,
                     "the store's control header (identity, limits and "
                     "layout) changed since it was attached: the store is "
                     "damaged");
}

static void handle_free(struct shmkv *kv)
{
    if (kv == NULL)
        return;
    registry_remove(kv);
    resize_detach(kv);
    if (kv->ctl != NULL && !kv->forked) {
        lock_release(kv);
        client_slot_release(kv);
    }
    /* A child's copy lets go of its mappings only: the slot is its
     * parent's. */
    chunks_detach(kv);
    if (kv->chunk_seg != NULL)
        shmdt(kv->chunk_seg);
    if (kv->data != NULL)
        shmdt(kv->data);
    if (kv->reader_seg != NULL)
        shmdt(kv->reader_seg);
    if (kv->ctl != NULL)
        shmdt(kv->ctl);
    free(kv);
}

static int recover_mutex_init(pthread_mutex_t *m)
{
    pthread_mutexattr_t attr;
    if (pthread_mutexattr_init(&attr) != 0)
        return set_error(SHMKV_ESYS, "pthread_mutexattr_init failed");
    int rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    if (rc == 0)
        rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    if (rc == 0)
        rc = pthread_mutex_init(m, &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc != 0)
        return set_error(SHMKV_ESYS, "pthread_mutex_init: error %d", rc);
    return 0;
}

/* Marks closed and removes every System V object the control header
 * names. */
static void ctl_remove_all(struct ctl_header *c, int ctl_id)
{
    uint64_t cur = atomic_fetch_or(&c->current, CURRENT_CLOSED);
    if ((cur & ~CURRENT_CLOSED) != 0)
        shmctl(CURRENT_SHMID(cur), IPC_RMID, NULL);
    /* A resize's segment: its resizer, if it lives, finds the store
     * closed and stops. */
    if (atomic_load(&c->resize_state) != RESIZE_NONE) {
        int32_t ids[2] = {atomic_load(&c->resize_shmid),
                          atomic_load(&c->resize_from)};
        for (int i = 0; i < 2; i++)
            if (ids[i] >= 0 && ids[i] != CURRENT_SHMID(cur) &&
                data_segment_of_store(ids[i], c->store_nonce))
                shmctl(ids[i], IPC_RMID, NULL);
    }
    if (c->reader_shmid >= 0)
        shmctl(c->reader_shmid, IPC_RMID, NULL);
    chunks_remove(c, ctl_id);
    liveness_remove(c);
    shmctl(ctl_id, IPC_RMID, NULL);
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
    bool sems = false;
    rc = segment_create(key, g.ctl_bytes, opts->mode, false, &ctl_id);
    if (rc != 0)
        goto fail;
    rc = segment_set_group(ctl_id, opts->gid);
    if (rc == 0)
        rc = segment_attach(ctl_id, false, (void **)&c, &seg_bytes);
    if (rc != 0)
        goto fail;
    /* Before any way out: what the failure path removes by id. */
    c->reader_shmid = -1;
    for (uint32_t i = 0; i < SEM_SETS_MAX; i++)
        c->sem_ids[i] = c->rsem_ids[i] = -1;

    c->layout_version = LAYOUT_VERSION;
    c->header_bytes = sizeof *c;
    c->ctl_bytes = g.ctl_bytes;
    c->page_bytes = page_bytes();
    c->data_bytes = g.data_bytes;
    c->max_entries = opts->max_entries
                         ? opts->max_entries
                         : g.data_bytes / SHMKV_DEFAULT_ENTRY_BYTES;
    if (getrandom(&c->store_nonce, sizeof c->store_nonce, 0) !=
        sizeof c->store_nonce)
        c->store_nonce = kv->rng ^ (uint64_t)time(NULL) << 20;
    c->max_key_bytes = opts->max_key_bytes;
    c->max_value_bytes = opts->max_value_bytes;
    c->eviction = (uint32_t)opts->eviction;
    c->lock_timeout_ms = opts->lock_timeout_ms;
    c->reader_timeout_ms = opts->reader_timeout_ms;
    c->max_clients = opts->max_clients;
    c->mode = opts->mode;
    c->huge_pages = (uint32_t)opts->huge_pages;
    c->gid = opts->gid;
    c->owner_pid = (int32_t)kv->pid;
    c->created_unix = (int64_t)time(NULL);
    c->locks_off = g.locks_off;
    c->wclients_off = g.wclients_off;
    c->wslots_off = g.wslots_off;
    c->pins_off = g.pins_off;
    c->reader_bytes = g.reader_bytes;
    c->clients_off = g.clients_off;
    c->recency_off = g.recency_off;
    c->recency_cells = g.recency_cells;
    c->versions_off = g.versions_off;
    c->version_cells = g.version_cells;
    c->leases_off = g.leases_off;
    c->lease_slots = LEASE_SLOTS;
    c->chunks_off = g.chunks_off;
    c->chunk_count = g.chunk_count;
    atomic_store(&c->epoch, 1);
    atomic_store(&c->resize_shmid, -1);
    atomic_store(&c->resize_from, -1);

    /* Readers write their client slots there: the mode's read bits with
     * write added. */
    rc = segment_create(IPC_PRIVATE, g.reader_bytes, reader_mode(opts->mode),
                        false, &c->reader_shmid);
    if (rc == 0)
        rc = segment_set_group(c->reader_shmid, opts->gid);
    if (rc != 0)
        goto fail;
    rc = liveness_create(c, opts->mode, opts->gid);
    if (rc != 0)
        goto fail;
    sems = true;
    rc = liveness_claim(c, LIVE_WRITER, liveness_owner_index(c));
    if (rc == 1)
        rc = set_error(SHMKV_ESYS, "a new store's owner semaphore is taken");
    if (rc == 0)
        rc = recover_mutex_init(&c->recover_mutex);
    struct lock_slot *locks = (struct lock_slot *)((char *)c + c->locks_off);
    if (rc == 0)
        rc = lock_init(&locks[1 % LOCK_SLOTS].rwlock);
    if (rc != 0)
        goto fail;
    atomic_store(&locks[1 % LOCK_SLOTS].slow_reported, UINT32_MAX);
    atomic_store(&c->lock_word, LOCK_WORD(1, false));

    uint64_t seed;
    if (getrandom(&seed, sizeof seed, 0) != sizeof seed)
        seed = kv->rng * 0xff51afd7ed558ccdull;
    rc = data_segment_make(c, 1, seed, c->data_bytes, c->max_entries, &data_id,
                           &d);
    if (rc != 0)
        goto fail;
    shmdt(d);
    atomic_store(&c->current, CURRENT_MAKE(1, data_id));
    /* The magic last: openers see a whole store or none. */
    atomic_thread_fence(memory_order_release);
    memcpy(c->magic, CTL_MAGIC, sizeof c->magic);

    handle_bind_ctl(kv, c, ctl_id);
    kv->owner = true;
    rc = handle_bind_reader(kv);
    if (rc == 0)
        rc = client_slot_claim(kv);
    if (rc == 0)
        rc = generation_refresh(kv);
    if (rc != 0)
        goto fail;
    registry_add(kv);
    *out = kv;
    return 0;

fail:
    if (kv->slot_owned)
        client_slot_release(kv);
    if (sems)
        liveness_remove(c);
    if (c != NULL && c->reader_shmid >= 0)
        shmctl(c->reader_shmid, IPC_RMID, NULL);
    if (kv->reader_seg != NULL)
        shmdt(kv->reader_seg);
    if (data_id >= 0)
        shmctl(data_id, IPC_RMID, NULL);
    if (ctl_id >= 0)
        shmctl(ctl_id, IPC_RMID, NULL);
    if (kv->data != NULL)
        shmdt(kv->data);
    if (c != NULL)
        shmdt(c);
    free(kv);
    return rc;
}

/* Finds and attaches the control segment at key, validated: read-write,
 * or read-only if *rdonly, or if the kernel lets this process only read it
 * and fall_back (then *rdonly is set). */
static int ctl_attach(key_t key, bool *rdonly, bool fall_back,
                      struct ctl_header **out, int *shmid_out)
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
    int rc = segment_attach(id, *rdonly, &addr, &bytes);
    if (rc == SHMKV_EACCES && !*rdonly && fall_back) {
        rc = segment_attach(id, true, &addr, &bytes);
        if (rc == 0)
            *rdonly = true; /* a reader of this store */
    }
    if (rc == SHMKV_EACCES)
        return set_error(SHMKV_EACCES,
                         "no permission to %s the store at key 0x%08x",
                         *rdonly ? "read" : "write", (unsigned)key);
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

/* A handle on the store at where, its client slot claimed: read-only if
 * rdonly, or if the kernel lets this process only read the store and
 * fall_back. */
static int handle_attach(const char *where, bool rdonly, bool fall_back,
                         struct shmkv **out)
{
    key_t key;
    int rc = key_from_where(where, &key);
    if (rc != 0)
        return rc;
    struct ctl_header *c;
    int id;
    rc = ctl_attach(key, &rdonly, fall_back, &c, &id);
    if (rc != 0)
        return rc;
    struct shmkv *kv = handle_new(rdonly);
    if (kv == NULL) {
        shmdt(c);
        return set_error(SHMKV_ENOMEM, "no memory for a handle");
    }
    handle_bind_ctl(kv, c, id);
    kv->key = key;
    rc = handle_bind_reader(kv);
    if (rc == 0)
        rc = client_slot_claim(kv);
    if (rc != 0) {
        handle_free(kv);
        return rc;
    }
    registry_add(kv);
    *out = kv;
    return 0;
}

int handle_reattach(struct shmkv *kv)
{
    struct ctl_header *c;
    int id;
    bool rdonly = kv->rdonly;
    int rc = ctl_attach(kv->key, &rdonly, false, &c, &id);
    if (rc == SHMKV_ENOSTORE)
        return set_error(SHMKV_ENOSTORE,
                         "the store was closed and no new one is at key "
                         "0x%08x yet",
                         (unsigned)kv->key);
    if (rc != 0)
        return rc;
    if (id == kv->ctl_shmid || (atomic_load(&c->current) & CURRENT_CLOSED)) {
        shmdt(c);
        return set_error(SHMKV_ECLOSED, "the store at key 0x%08x is closed",
                         (unsigned)kv->key);
    }
    /* Leave the old store: its slot (its semaphores may be gone with it,
     * which is fine), its data and its headers. */
    client_slot_release(kv);
    if (kv->data != NULL)
        shmdt(kv->data);
    kv->data = NULL;
    kv->current = 0;
    if (kv->reader_seg != NULL)
        shmdt(kv->reader_seg);
    kv->reader_seg = NULL;
    shmdt(kv->ctl);
    handle_bind_ctl(kv, c, id);
    rc = handle_bind_reader(kv);
    if (rc == 0)
        rc = client_slot_claim(kv);
    if (rc != 0) {
        /* Attached to the new header with no slot: say so, and try again
         * on the next call. */
        kv->current = 0;
        return rc;
    }
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
    struct shmkv *kv;
    int rc = handle_attach(where, flags & SHMKV_RDONLY, true, &kv);
    if (rc != 0)
        return rc;
    kv->reattach = true;
    if (atomic_load(&kv->ctl->current) & CURRENT_CLOSED)
        rc = set_error(SHMKV_ECLOSED, "the store at %s is closed", where);
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
    struct shmkv *kv;
    int rc = handle_attach(where, false, false, &kv);
    if (rc != 0)
        return rc;
    struct ctl_header *c = kv->ctl;
    /* The owner's semaphore is the claim: it is free only once the owner
     * died, and only one adopter takes it. */
    rc = liveness_claim(c, LIVE_WRITER, liveness_owner_index(c));
    if (rc == 1)
        rc = set_error(SHMKV_EOWNED,
                       "the store at %s is owned by live process %d", where,
                       (int)atomic_load(&c->owner_pid));
    if (rc != 0) {
        handle_free(kv);
        return rc;
    }
    atomic_store(&c->owner_pid, (int32_t)kv->pid);
    atomic_fetch_and(&c->current, ~CURRENT_CLOSED);
    kv->owner = true;
    /* Taking the write lock once recovers a lock the dead owner held, and
     * repairs the write it was making. */
    rc = lock_take(kv, true);
    if (rc == 0)
        lock_release(kv);
    if (rc != 0) {
        liveness_release(c, LIVE_WRITER, liveness_owner_index(c));
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
        read_release(kv);
        kv->in_read = false;
    }
    if (kv->in_write) {
        kv->in_write = false;
        lock_release(kv);
    }
    handle_free(kv);
}

int shmkv_readonly(const struct shmkv *kv)
{
    if (kv == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle");
    return kv->rdonly ? 1 : 0;
}

int shmkv_set_timeout(struct shmkv *kv, uint32_t timeout_ms)
{
    if (kv == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle");
    if (timeout_ms > 3600000)
        return set_error(SHMKV_EINVAL, "timeout %u ms: at most 1 hour",
                         timeout_ms);
    kv->timeout_ms = timeout_ms != 0 ? timeout_ms : kv->ctl->lock_timeout_ms;
    return 0;
}

int shmkv_set_marks(struct shmkv *kv, unsigned marks)
{
    if (kv == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle");
    if (kv->forked)
        return refuse_forked(kv);
    if (marks & ~(SHMKV_MARK_LOADING | SHMKV_MARK_STALE))
        return set_error(SHMKV_EINVAL, "unknown marks 0x%x", marks);
    if (kv->rdonly)
        return set_error(SHMKV_ERDONLY, "the handle is read-only");
    atomic_store(&kv->ctl->marks, marks);
    return 0;
}

int shmkv_set_mirror(struct shmkv *kv, const char *const *prefixes,
                     const size_t *lens, size_t n)
{
    if (kv == NULL || (n > 0 && (prefixes == NULL || lens == NULL)))
        return set_error(SHMKV_EINVAL, "NULL handle or prefixes");
    if (kv->forked)
        return refuse_forked(kv);
    if (!kv->owner)
        return set_error(SHMKV_EACCES, "only the store's owner declares "
                                       "what it mirrors");
    if (n > 32)
        return set_error(SHMKV_EINVAL, "%zu prefixes: 32 at most", n);
    char buf[MIRROR_PREFIX_BYTES];
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        if (lens[i] > 255 || used + 1 + lens[i] > sizeof buf)
            return set_error(SHMKV_EINVAL,
                             "prefix %zu: 0 to 255 bytes, %u in all", i,
                             MIRROR_PREFIX_BYTES);
        buf[used++] = (char)lens[i];
        memcpy(buf + used, prefixes[i], lens[i]);
        used += lens[i];
    }
    int rc = write_begin(kv);
    if (rc != 0)
        return rc;
    struct ctl_header *c = kv->ctl;
    /* Writers read them under the lock: count 0 while they change. */
    atomic_store(&c->mirror_count, 0);
    memcpy(c->mirror_prefixes, buf, used);
    c->mirror_bytes = (uint32_t)used;
    atomic_store(&c->mirror_count, (uint32_t)n);
    write_end(kv);
    return 0;
}

int shmkv_get_marks(struct shmkv *kv, unsigned *marks)
{
    if (kv == NULL || marks == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle or result");
    if (kv->forked)
        return refuse_forked(kv);
    *marks = atomic_load(&kv->ctl->marks);
    return 0;
}

int shmkv_mark_closed(struct shmkv *kv)
{
    if (kv == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle");
    if (kv->forked)
        return refuse_forked(kv);
    if (kv->rdonly)
        return set_error(SHMKV_ERDONLY, "the handle is read-only");
    uint64_t cur = atomic_fetch_or(&kv->ctl->current, CURRENT_CLOSED);
    kv->closer = true;
    /* The handle follows the closed generation, to read what it holds. */
    if ((cur & ~CURRENT_CLOSED) == (kv->current & ~CURRENT_CLOSED))
        kv->current = cur | CURRENT_CLOSED;
    return 0;
}

int shmkv_maintain(struct shmkv *kv)
{
    if (kv == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle");
    if (kv->forked)
        return refuse_forked(kv);
    if (kv->in_read || kv->in_write)
        return set_error(SHMKV_ESTATE,
                         "shmkv_maintain inside a read or write section");
    int rc = generation_follow(kv);
    if (rc != 0)
        return rc;
    if (!kv->rdonly) {
        kv->deadline_ms = kv->wait_ms = 0;
        rc = lock_recover_if_dead(kv);
        if (rc == SHMKV_ERETRY)
            rc = 0;
    }
    /* A resize whose resizer died: given up, its segment removed (by the
     * owner, which may remove it). A brief wait at most for the lock. */
    if (rc == 0 && !kv->rdonly &&
        atomic_load(&kv->ctl->resize_state) != RESIZE_NONE) {
        kv->wait_ms = 0;
        kv->deadline_ms = monotonic_ms() + MAINTAIN_WAIT_MS;
        if (lock_take(kv, true) == 0) {
            kv->rs_checked_ms = 0;
            resize_tend(kv);
            lock_release(kv);
        }
    }
    client_slots_reap(kv);
    return rc;
}

int shmkv_destroy(struct shmkv *kv)
{
    if (kv == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle");
    if (kv->forked)
        return refuse_forked(kv);
    if (kv->rdonly)
        return set_error(SHMKV_ERDONLY, "the handle is read-only");
    if (kv->in_read) {
        read_release(kv);
        kv->in_read = false;
    }
    kv->in_write = false;
    lock_release(kv);
    client_slot_release(kv);
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
    bool rdonly = false;
    rc = ctl_attach(key, &rdonly, false, &c, &id);
    if (rc != 0)
        return rc;
    ctl_remove_all(c, id);
    shmdt(c);
    return 0;
}
