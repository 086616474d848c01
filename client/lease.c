/*
 * lease.c - filling a missing key once: fill leases and get-or-fill.
 *
 * When a hot key is missing, every process that misses it would compute it
 * (a stampede on the database behind the cache). A fill lease lets one do
 * it: the lease table in the control segment (LEASE_SLOTS records, writers
 * only) says who fills which key, by the key's version hash. A record is
 * valid while its holder lives and its time has not passed; the holder is
 * named by its writers' client slot and that slot's incarnation, so the
 * kernel's word on the slot's liveness semaphore (liveness.c) ends the
 * lease the moment the holder dies, and a process that takes the slot
 * afterwards does not inherit it. Records are read and written under the
 * write lock; a lookup scans the whole table, which is small and touched
 * only on misses.
 *
 * shmkv_get_or_fill builds on it: a miss takes the lease and fills, or
 * waits for the value in short sleeps (taking the lease over if the
 * filler dies), or returns a stale value (read.c, shmkv_get_stale).
 */
#include <string.h>
#include <time.h>

#include "table.h"

#define LEASE_MAX_MS 3600000u
#define FILL_LEASE_DEFAULT_MS 10000u
#define FILL_POLL_MS 1

static bool lease_valid(const struct shmkv *kv, const struct lease *l,
                        uint64_t now)
{
    if (l->khash == 0 || now >= l->until_ms || l->slot >= kv->max_clients)
        return false;
    const struct writer_slot *w = &writer_slots(kv)[l->slot];
    return atomic_load(&w->incarnation) == l->incarnation &&
           liveness_alive(kv->ctl, LIVE_WRITER, l->slot);
}

/* The key's lease hash: its version hash, never 0. */
static uint64_t lease_hash(const struct shmkv *kv, const void *key, size_t klen)
{
    return key_hash(key, klen, kv->store_nonce) | 1u;
}

static int lease_args(struct shmkv *kv, const void *key, size_t klen)
{
    if (kv == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle");
    if (key == NULL || klen == 0)
        return set_error(SHMKV_EINVAL, "empty key");
    if (klen > kv->max_key_bytes)
        return set_error(SHMKV_E2BIG, "key of %zu bytes is over the limit %u",
                         klen, kv->max_key_bytes);
    if (kv->rdonly)
        return set_error(SHMKV_ERDONLY, "the handle is read-only: only "
                                        "writers fill keys");
    return 0;
}

int shmkv_lease_take(struct shmkv *kv, const void *key, size_t klen,
                     uint32_t lease_ms, int32_t *holder)
{
    int rc = lease_args(kv, key, klen);
    if (rc != 0)
        return rc;
    if (lease_ms == 0 || lease_ms > LEASE_MAX_MS)
        return set_error(SHMKV_EINVAL, "lease of %u ms: 1 to %u", lease_ms,
                         LEASE_MAX_MS);
    uint64_t h = lease_hash(kv, key, klen);
    rc = write_begin(kv);
    if (rc != 0)
        return rc;
    uint64_t now = clock_unix_ms();
    struct lease *free_rec = NULL;
    for (uint32_t i = 0; i < LEASE_SLOTS; i++) {
        struct lease *l = &kv->leases[i];
        if (!lease_valid(kv, l, now)) {
            if (free_rec == NULL)
                free_rec = l;
            continue;
        }
        if (l->khash == h) {
            if (holder != NULL)
                *holder = atomic_load(&writer_slots(kv)[l->slot].pid);
            write_end(kv);
            return SHMKV_EBUSY;
        }
    }
    if (free_rec == NULL) {
        write_end(kv);
        return set_error(SHMKV_ELIMIT, "all %u fill leases are held",
                         LEASE_SLOTS);
    }
    free_rec->slot = kv->slot_index;
    free_rec->incarnation = atomic_load(&kv->wslot->incarnation);
    free_rec->until_ms = now + lease_ms;
    free_rec->taken_ms = now;
    free_rec->khash = h;
    write_end(kv);
    return 0;
}

int shmkv_lease_release(struct shmkv *kv, const void *key, size_t klen)
{
    int rc = lease_args(kv, key, klen);
    if (rc != 0)
        return rc;
    uint64_t h = lease_hash(kv, key, klen);
    rc = write_begin(kv);
    if (rc != 0)
        return rc;
    uint64_t now = clock_unix_ms();
    uint32_t inc = atomic_load(&kv->wslot->incarnation);
    rc = SHMKV_ENOTFOUND;
    for (uint32_t i = 0; i < LEASE_SLOTS; i++) {
        struct lease *l = &kv->leases[i];
        if (l->khash == h && l->slot == kv->slot_index &&
            l->incarnation == inc && now < l->until_ms) {
            l->khash = 0;
            rc = 0;
            break;
        }
    }
    write_end(kv);
    return rc;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Copies a stale (or live) value of key into buf: 0, SHMKV_ENOBUFS, or
 * SHMKV_ENOTFOUND when none is in memory. */
static int copy_stale(struct shmkv *kv, const void *key, size_t klen, void *buf,
                      size_t cap, size_t *vlen, int64_t *stale_ms)
{
    int rc = shmkv_read_begin(kv);
    if (rc != 0)
        return rc;
    shmkv_val_t v;
    rc = shmkv_get_stale(kv, key, klen, &v, stale_ms);
    if (rc == 0) {
        *vlen = v.len;
        if (v.len > cap)
            rc = SHMKV_ENOBUFS;
        else if (v.len > 0)
            memcpy(buf, v.data, v.len);
    }
    int end = shmkv_read_end(kv);
    return rc != 0 ? rc : end;
}

/* This call fills key: calls f->fill, stores what it returns, copies it
 * out, and gives the lease back. */
static int fill_now(struct shmkv *kv, const void *key, size_t klen, void *buf,
                    size_t cap, size_t *vlen, struct shmkv_fill *f)
{
    struct shmkv_filled out = {0};
    int rc = f->fill(f->arg, key, klen, &out);
    if (rc == 0 && out.val == NULL && out.vlen > 0)
        rc = set_error(SHMKV_EINVAL, "the fill function returned no value");
    if (rc == 0)
        rc = shmkv_pset(kv, key, klen, out.val, out.vlen, out.ttl_ms, 0);
    shmkv_lease_release(kv, key, klen);
    if (rc != 0)
        return rc;
    f->outcome = SHMKV_FILL_FILLED;
    *vlen = out.vlen;
    if (out.vlen > cap)
        return SHMKV_ENOBUFS;
    if (out.vlen > 0)
        memcpy(buf, out.val, out.vlen);
    return 0;
}

int shmkv_get_or_fill(struct shmkv *kv, const void *key, size_t klen, void *buf,
                      size_t cap, size_t *vlen, struct shmkv_fill *f)
{
    if (f == NULL || f->fill == NULL || vlen == NULL ||
        (buf == NULL && cap > 0))
        return set_error(SHMKV_EINVAL, "NULL fill function, length or buffer");
    int rc = lease_args(kv, key, klen);
    if (rc != 0)
        return rc;
    if (kv->in_read || kv->in_write)
        return set_error(SHMKV_ESTATE,
                         "shmkv_get_or_fill inside a read or write section");
    f->outcome = 0;
    f->stale_ms = 0;
    uint32_t lease_ms = f->lease_ms ? f->lease_ms : FILL_LEASE_DEFAULT_MS;
    uint64_t deadline = monotonic_ms() + f->wait_ms;
    bool waited = false;
    int32_t holder = 0;
    for (;;) {
        rc = shmkv_get_copy(kv, key, klen, buf, cap, vlen);
        if (rc != SHMKV_ENOTFOUND) {
            if (rc == 0 || rc == SHMKV_ENOBUFS)
                f->outcome = waited ? SHMKV_FILL_WAITED : SHMKV_FILL_HIT;
            return rc;
        }
        rc = shmkv_lease_take(kv, key, klen, lease_ms, &holder);
        if (rc == 0) {
            /* Filled between the miss and the lease? */
            rc = shmkv_get_copy(kv, key, klen, buf, cap, vlen);
            if (rc != SHMKV_ENOTFOUND) {
                shmkv_lease_release(kv, key, klen);
                if (rc == 0 || rc == SHMKV_ENOBUFS)
                    f->outcome = waited ? SHMKV_FILL_WAITED : SHMKV_FILL_HIT;
                return rc;
            }
            return fill_now(kv, key, klen, buf, cap, vlen, f);
        }
        if (rc != SHMKV_EBUSY)
            return rc;
        /* Another process fills it. */
        if (f->flags & SHMKV_FILL_STALE) {
            rc = copy_stale(kv, key, klen, buf, cap, vlen, &f->stale_ms);
            if (rc == 0 || rc == SHMKV_ENOBUFS) {
                f->outcome = f->stale_ms > 0 ? SHMKV_FILL_STALE_VALUE
                                             : SHMKV_FILL_WAITED;
                return rc;
            }
            if (rc != SHMKV_ENOTFOUND)
                return rc;
        }
        if (monotonic_ms() >= deadline)
            return set_error(SHMKV_ETIMEDOUT,
                             "process %d is filling the key and has not "
                             "finished within %u ms",
                             (int)holder, f->wait_ms);
        waited = true;
        sleep_ms(FILL_POLL_MS);
    }
}
