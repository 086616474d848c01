/*
 * clients.c - client slots: one per open handle.
 *
 * A read-only handle takes a client slot in the reader segment, by its
 * reader semaphore; a writing handle takes one of the writers' client slots
 * in the control segment, by its writer semaphore (liveness.c): taking one
 * is a semop that succeeds only on a semaphore at 0, so two processes never
 * take the same slot, and a slot whose process died is free to take again,
 * exactly, with no guessing from pids. The two kinds never share a slot or
 * a semaphore: nothing a reader can write (the reader segment, the reader
 * semaphores) bears on a writer's slot, its claims or its lock state.
 *
 * Readers of one user are kept from readers of another by reader chunks.
 * Where the store's owner makes them (shmkvd, which names its control
 * socket in the control header), a read-only handle takes its slot in a
 * chunk of its own user's: a segment of CHUNK_SLOTS client slots and a
 * semaphore set of as many. The first handle of a user without a free
 * slot asks the owner for one over the socket (SHMKV.READERS). The owner
 * makes both objects, so that it is their creator and keeps its access,
 * and hands them (IPC_SET) to the asking user, as the kernel names it
 * (SO_PEERCRED), with read and write for that user and for whoever may
 * write the store, and nothing for anyone else; then it enters them in
 * the chunk table, which only writers may write, before it answers.
 * Writers scan every registered chunk's claims with the others
 * (reclaim.c). So what a reader scribbles on is its own user's, and a
 * hostile reader's peers of other users see no section revoked or slot
 * taken because of it. A user holds at most half the table, so that no
 * one user can take every reader's place; a chunk its user removed frees
 * its entry. Where no owner makes chunks, or asking fails (shmkvd stopped,
 * a user's share full), the handle takes a slot in the shared reader
 * segment, as every reader of a store without shmkvd does.
 *
 * A dead process's slot keeps what it left until a writer frees it: its
 * read claim (writers drop it when they need what it holds back), and a
 * writer's lock state. A lock state that names the lock in use is the
 * evidence a waiter needs to recover that lock, so such a slot is not
 * reused before the lock was replaced (lock.c). Counters stay with their
 * slot, freed or not, so that the store's sums keep them.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* Raises *hwm to at least want. */
static void hwm_raise(_Atomic uint32_t *hwm, uint32_t want)
{
    uint32_t h = atomic_load(hwm);
    while (h < want && !atomic_compare_exchange_weak(hwm, &h, want))
        ;
}

uint32_t clients_scan_raise(struct shmkv *kv)
{
    uint32_t r =
        atomic_load_explicit(&reader_header_of(kv)->hwm, memory_order_seq_cst);
    if (r > kv->max_clients)
        r = kv->max_clients; /* readers write it: never trusted past that */
    hwm_raise(&kv->ctl->clients_hwm, r);
    return clients_scan_limit(kv);
}

/* Whether writers' slot i holds the evidence of a dead writer that the
 * recovery of lock epoch `epoch` needs. */
static bool writer_evidence(const struct shmkv *kv, uint32_t i, uint64_t epoch)
{
    uint64_t st = atomic_load(&writer_slots(kv)[i].lock_state);
    return st != 0 && LOCK_STATE_EPOCH(st) == epoch;
}

static uint64_t lock_epoch_now(const struct shmkv *kv)
{
    return LOCK_WORD_EPOCH(
        atomic_load_explicit(&kv->ctl->lock_word, memory_order_seq_cst));
}

/* Makes slot s, index i among its kind's, this handle's: its semaphore
 * is already this process's. */
static void slot_bind(struct shmkv *kv, struct client_slot *s, uint32_t i,
                      bool writer)
{
    atomic_store(&s->claim, 0);
    atomic_store(&s->pid, (int32_t)kv->pid);
    kv->slot = s;
    kv->slot_index = i;
    kv->slot_owned = true;
    kv->slot_writer = writer;
}

static void slot_take(struct shmkv *kv, uint32_t i, bool writer)
{
    slot_bind(kv, writer ? &writer_claims(kv)[i] : &client_slots(kv)[i], i,
              writer);
    if (writer) {
        /* Scans and lock recovery look this far, before any lock state is
         * stored. */
        hwm_raise(&kv->ctl->writers_hwm, i + 1);
        struct writer_slot *w = &writer_slots(kv)[i];
        atomic_store(&w->lock_state, 0);
        atomic_store(&w->pid, (int32_t)kv->pid);
        atomic_fetch_add(&w->incarnation, 1);
        kv->wslot = w;
        kv->pin_index = kv->max_clients + i;
        kv->covered = true;
    } else {
        /* Writers' scans take this in (clients_scan_raise); until they
         * have, each section says it again (read_cover). */
        hwm_raise(&reader_header_of(kv)->hwm, i + 1);
        kv->pin_index = i;
        kv->covered = false;
    }
}

/* Takes slot i for this handle: 0, 1 if it is not free, or an error. A
 * writers' slot must be free of a dead writer's evidence too. */
static int slot_try(struct shmkv *kv, uint32_t i, bool writer)
{
    const struct ctl_header *c = kv->ctl;
    if (!writer)
        return liveness_claim(c, LIVE_READER, i);
    int rc = liveness_claim(c, LIVE_WRITER, i);
    if (rc == 0 && writer_evidence(kv, i, lock_epoch_now(kv))) {
        liveness_release(c, LIVE_WRITER, i);
        rc = 1;
    }
    return rc;
}

/* Clears a dead process's claim, counting a section it left open. */
static void claim_drop(struct shmkv *kv, struct client_slot *s)
{
    uint64_t claim = atomic_exchange(&s->claim, 0);
    if (CLAIM_MODE(claim) == CLAIM_ACTIVE)
        dead_reader_event(kv, atomic_load(&s->pid));
    atomic_store(&s->pid, 0);
}

/* Frees slot i of kind k, whose process is dead, if nothing needs what it
 * left. */
static bool slot_reap(struct shmkv *kv, enum live_kind k, uint32_t i,
                      uint64_t lock_epoch)
{
    struct ctl_header *c = kv->ctl;
    if (k == LIVE_WRITER && writer_evidence(kv, i, lock_epoch))
        return false; /* evidence for the lock's recovery */
    /* Holding its semaphore keeps a claimer out while it is cleaned. */
    if (liveness_claim(c, k, i) != 0)
        return false;
    if (k == LIVE_WRITER) {
        claim_drop(kv, &writer_claims(kv)[i]);
        atomic_store(&writer_slots(kv)[i].lock_state, 0);
        atomic_store(&writer_slots(kv)[i].pid, 0);
    } else {
        claim_drop(kv, &client_slots(kv)[i]);
    }
    liveness_release(c, k, i);
    return true;
}

/* Frees the dead processes' slots among the first n of kind k. */
static uint32_t slots_reap(struct shmkv *kv, enum live_kind k, uint32_t n)
{
    if (n == 0)
        return 0;
    const struct client_slot *slots =
        k == LIVE_WRITER ? writer_claims(kv) : client_slots(kv);
    uint8_t *alive = malloc(n);
    if (alive == NULL || !liveness_all(kv->ctl, k, n, alive)) {
        free(alive);
        return 0;
    }
    uint64_t epoch = lock_epoch_now(kv);
    uint32_t freed = 0;
    for (uint32_t i = 0; i < n; i++) {
        bool own = (k == LIVE_WRITER) == kv->slot_writer && i == kv->slot_index;
        if (alive[i] || own ||
            atomic_load_explicit(&slots[i].pid, memory_order_relaxed) == 0)
            continue;
        freed += slot_reap(kv, k, i, epoch);
    }
    free(alive);
    return freed;
}

/* Frees the dead processes' slots in the registered chunks. */
static uint32_t chunks_reap(struct shmkv *kv)
{
    chunks_follow(kv);
    uint32_t freed = 0;
    for (uint32_t k = 0;
         kv->chunk_maps != NULL && k < kv->ctl_tail_fixed.chunk_count; k++) {
        const struct chunk_map *m = &kv->chunk_maps[k];
        for (uint32_t i = 0; m->slots != NULL && i < CHUNK_SLOTS; i++) {
            if (atomic_load_explicit(&m->slots[i].pid, memory_order_relaxed) ==
                    0 ||
                liveness_alive_at(m->semid, (unsigned short)i))
                continue;
            /* Holding its semaphore keeps a claimer out while it is
             * cleaned. */
            if (liveness_claim_at(m->semid, (unsigned short)i) != 0)
                continue;
            claim_drop(kv, &m->slots[i]);
            liveness_release_at(m->semid, (unsigned short)i);
            freed++;
        }
    }
    return freed;
}

uint32_t client_slots_reap(struct shmkv *kv)
{
    if (kv->rdonly)
        return 0; /* a writer's work: it writes the control segment */
    return slots_reap(kv, LIVE_READER, clients_scan_raise(kv)) +
           slots_reap(kv, LIVE_WRITER, writers_scan_limit(kv)) +
           chunks_reap(kv);
}

/* ---- reader chunks ---- */

const struct reader_chunk *chunk_table(const struct shmkv *kv)
{
    return (const struct reader_chunk *)((const char *)kv->ctl +
                                         kv->ctl_tail_fixed.chunks_off);
}

unsigned chunk_mode(unsigned store_mode)
{
    unsigned m = 0600;
    if (store_mode & 0020)
        m |= 0060;
    if (store_mode & 0002)
        m |= 0006;
    return m;
}

/* Whether uid made an object for the store whose control segment's
 * records are cs: its creator, or its owner now. */
static bool store_made(uid_t uid, const struct shmid_ds *cs)
{
    return uid == cs->shm_perm.cuid || uid == cs->shm_perm.uid;
}

/* Whether a segment (ds) or a semaphore set (sd) is of a chunk's shape and
 * made for the store whose control segment's records are cs. */
static bool chunk_shm_made(const struct shmid_ds *ds, const struct shmid_ds *cs)
{
    return store_made(ds->shm_perm.cuid, cs) && ds->shm_segsz == CHUNK_BYTES;
}

static bool chunk_sem_made(const struct semid_ds *sd, const struct shmid_ds *cs)
{
    return store_made(sd->sem_perm.cuid, cs) && sd->sem_nsems == CHUNK_SLOTS;
}

/* Attaches chunk segment shmid, read-write, if it is one the store's
 * owner made: its id is taken from the table, and the segment's user may
 * remove it and another may take the id (a huge-page segment would fault
 * whoever touched a page the pool cannot give). */
static void *chunk_attach(const struct shmid_ds *cs, int shmid)
{
    struct shmid_ds ds;
    void *addr = shmat(shmid, NULL, 0);
    if (addr == (void *)-1)
        return NULL;
    /* Looked at once attached: an attached segment keeps its id even if
     * removed, so this is the segment mapped, not one that took the id
     * since a look before. */
    if (shmctl(shmid, IPC_STAT, &ds) != 0 || !chunk_shm_made(&ds, cs)) {
        shmdt(addr);
        return NULL;
    }
    return addr;
}

/* Whether semaphore set semid is one the store's owner made for a chunk
 * (its id is taken from the table, as a segment's is). */
static bool chunk_sems_ours(const struct shmid_ds *cs, int semid)
{
    struct semid_ds sd = {0}; /* filled through arg */
    union semun_arg arg = {.buf = &sd};
    return semid >= 0 && semctl(semid, 0, IPC_STAT, arg) == 0 &&
           chunk_sem_made(&sd, cs);
}

/* Takes slot i of a chunk this handle attached at addr: the slot's
 * process is this one while the semaphore is up. */
static void chunk_slot_take(struct shmkv *kv, uint32_t k, void *addr, int semid,
                            uint32_t i)
{
    slot_bind(kv, (struct client_slot *)addr + i, i, false);
    kv->chunk_seg = addr;
    kv->chunk_semid = semid;
    kv->pin_index = chunk_pin_base(kv, k) + i;
    /* Writers scan every registered chunk whole. */
    kv->covered = true;
}

/* Takes a free slot of chunk k, which the table says this user made: 0,
 * 1 if it has none free (or is not usable), or an error. */
static int chunk_slot_try(struct shmkv *kv, uint32_t k)
{
    const struct reader_chunk *t = &chunk_table(kv)[k];
    int semid = atomic_load(&t->semid);
    struct shmid_ds cs;
    void *addr = shmctl(kv->ctl_shmid, IPC_STAT, &cs) == 0
                     ? chunk_attach(&cs, atomic_load(&t->shmid))
                     : NULL;
    if (addr == NULL)
        return 1;
    for (uint32_t i = 0; i < CHUNK_SLOTS; i++) {
        int rc = liveness_claim_at(semid, (unsigned short)i);
        if (rc < 0)
            break;
        if (rc == 0) {
            /* Still the table's: an entry is reused only once its
             * segment is gone, and this one is attached. */
            chunk_slot_take(kv, k, addr, semid, i);
            return 0;
        }
    }
    shmdt(addr);
    return 1;
}

/* How long a handle waits for the owner to make its chunk, past the
 * reader timeout: the owner makes it under the write lock, which a writer
 * waiting for a section to end may hold that long. */
#define REGISTER_WAIT_MS 2000u

/* Asks the owner at the control header's registrar socket for a chunk of
 * this process's user: its index in the table, or an error. */
static int chunk_request(struct shmkv *kv, uint32_t *index)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, kv->ctl->registrar, sizeof sa.sun_path - 1);
    if (sa.sun_path[0] == '\0')
        return set_error(SHMKV_ESYS, "the store's owner makes no reader "
                                     "chunks");
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return set_errno_error(SHMKV_ESYS, "socket");
    static const char req[] = "*1\r\n$13\r\nSHMKV.READERS\r\n";
    const size_t n = sizeof req - 1;
    int rc = 0;
    uint64_t wait_ms = (uint64_t)kv->reader_timeout_ms + REGISTER_WAIT_MS;
    uint64_t deadline = monotonic_ms() + wait_ms;
    char reply[256];
    size_t got = 0, sent = 0;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 &&
        errno != EINPROGRESS && errno != EAGAIN) {
        rc = set_errno_error(SHMKV_ESYS, "connecting to the registrar");
        goto out;
    }
    for (;;) {
        uint64_t now = monotonic_ms();
        if (now >= deadline) {
            rc = set_error(SHMKV_ETIMEDOUT, "%s did not answer within %llu ms",
                           sa.sun_path, (unsigned long long)wait_ms);
            goto out;
        }
        struct pollfd p = {.fd = fd, .events = sent < n ? POLLOUT : POLLIN};
        if (poll(&p, 1, (int)(deadline - now)) < 0 && errno != EINTR) {
            rc = set_errno_error(SHMKV_ESYS, "poll");
            goto out;
        }
        if (sent < n) {
            ssize_t w = send(fd, req + sent, n - sent, MSG_NOSIGNAL);
            if (w > 0)
                sent += (size_t)w;
            else if (w < 0 && errno != EAGAIN && errno != EINTR &&
                     errno != ENOTCONN) {
                rc = set_errno_error(SHMKV_ESYS, "writing to the registrar");
                goto out;
            }
            continue;
        }
        ssize_t r = recv(fd, reply + got, sizeof reply - 1 - got, 0);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
            rc = set_error(SHMKV_ESYS, "%s closed the connection", sa.sun_path);
            goto out;
        }
        if (r > 0)
            got += (size_t)r;
        reply[got] = '\0';
        if (strstr(reply, "\r\n") != NULL || got == sizeof reply - 1)
            break;
    }
    char *end;
    if (reply[0] == ':') {
        unsigned long k = strtoul(reply + 1, &end, 10);
        if (end != reply + 1 && *end == '\r' &&
            k < kv->ctl_tail_fixed.chunk_count) {
            *index = (uint32_t)k;
            goto out;
        }
    }
    reply[strcspn(reply, "\r\n")] = '\0';
    rc = set_error(SHMKV_EACCES, "%s made no reader chunk: %s", sa.sun_path,
                   reply);
out:
    close(fd);
    return rc;
}

/* Takes a slot in one of this user's chunks, asking the owner for one if
 * none has a free slot: 0, or 1 where the reader segment must serve (the
 * store has no registrar, or it made no chunk; the reason is the last
 * error). */
static int chunk_claim(struct shmkv *kv)
{
    const struct reader_chunk *t = chunk_table(kv);
    uint32_t n = (uint32_t)kv->ctl_tail_fixed.chunk_count;
    if (kv->ctl->registrar[0] == '\0' || n == 0)
        return 1;
    uint32_t me = (uint32_t)geteuid();
    for (uint32_t k = 0; k < n; k++) {
        if (atomic_load_explicit(&t[k].state, memory_order_acquire) !=
                CHUNK_ACTIVE ||
            t[k].uid != me)
            continue;
        int rc = chunk_slot_try(kv, k);
        if (rc <= 0)
            return rc;
    }
    uint32_t k;
    if (chunk_request(kv, &k) != 0)
        return 1;
    /* Another handle of this user's may have taken its slots since:
     * as full as the others, then. */
    if (atomic_load_explicit(&t[k].state, memory_order_acquire) !=
            CHUNK_ACTIVE ||
        t[k].uid != me)
        return 1;
    return chunk_slot_try(kv, k);
}

void chunks_follow(struct shmkv *kv)
{
    uint32_t v =
        atomic_load_explicit(&kv->ctl->chunks_version, memory_order_acquire);
    uint32_t n = (uint32_t)kv->ctl_tail_fixed.chunk_count;
    if (n == 0 || (kv->chunk_maps != NULL && v == kv->chunk_maps_version))
        return;
    if (kv->chunk_maps == NULL) {
        kv->chunk_maps = calloc(n, sizeof *kv->chunk_maps);
        if (kv->chunk_maps == NULL)
            return; /* scans without them make chunks' sections stale */
        for (uint32_t k = 0; k < n; k++)
            kv->chunk_maps[k].shmid = -1;
    }
    kv->chunk_maps_version = v;
    const struct reader_chunk *t = chunk_table(kv);
    struct shmid_ds cs;
    bool cs_known = shmctl(kv->ctl_shmid, IPC_STAT, &cs) == 0;
    for (uint32_t k = 0; k < n; k++) {
        struct chunk_map *m = &kv->chunk_maps[k];
        bool active = atomic_load_explicit(&t[k].state, memory_order_acquire) ==
                      CHUNK_ACTIVE;
        int shmid = active ? atomic_load(&t[k].shmid) : -1;
        int semid = active ? atomic_load(&t[k].semid) : -1;
        uint32_t serial = atomic_load(&t[k].serial);
        if (m->shmid == shmid && m->semid == semid && m->serial == serial)
            continue;
        if (m->slots != NULL)
            shmdt(m->slots);
        *m = (struct chunk_map){
            .shmid = shmid, .semid = semid, .serial = serial};
        if (shmid >= 0 && cs_known && chunk_sems_ours(&cs, semid))
            m->slots = chunk_attach(&cs, shmid);
    }
}

void chunks_detach(struct shmkv *kv)
{
    if (kv->chunk_maps != NULL) {
        for (uint32_t k = 0; k < kv->ctl_tail_fixed.chunk_count; k++)
            if (kv->chunk_maps[k].slots != NULL)
                shmdt(kv->chunk_maps[k].slots);
        free(kv->chunk_maps);
        kv->chunk_maps = NULL;
    }
    free(kv->scan_sets);
    kv->scan_sets = NULL;
}

/* Whether the segment and semaphore set of entry t are still the ones the
 * store's owner made for it, and its user's: an entry whose objects are
 * gone, given away, or whose ids now name other objects, may be given to
 * another chunk, as no handle of its user can take a slot in it any
 * more. */
static bool chunk_exists(const struct reader_chunk *t,
                         const struct shmid_ds *cs)
{
    struct shmid_ds ds;
    struct semid_ds sd = {0}; /* filled through arg */
    union semun_arg arg = {.buf = &sd};
    return shmctl(atomic_load(&t->shmid), IPC_STAT, &ds) == 0 &&
           chunk_shm_made(&ds, cs) && ds.shm_perm.uid == t->uid &&
           semctl(atomic_load(&t->semid), 0, IPC_STAT, arg) == 0 &&
           chunk_sem_made(&sd, cs) && sd.sem_perm.uid == t->uid;
}

/* Removes what is left of entry t's objects, as far as they are the
 * store's: made by the store's owner and of a chunk's shape; or out of
 * this process's sight (their user may give them mode 0) and removable by
 * it, which only their creator or owner is. */
static void chunk_objects_remove(const struct reader_chunk *table, uint32_t n,
                                 uint32_t k, const struct shmid_ds *cs)
{
    const struct reader_chunk *t = &table[k];
    int shmid = atomic_load(&t->shmid), semid = atomic_load(&t->semid);
    /* Never an object another entry names: the id came round again to a
     * chunk made since (table entries are kept apart as chunks are made;
     * this holds whatever the table says). */
    for (uint32_t j = 0; j < n; j++) {
        if (j == k || atomic_load(&table[j].state) != CHUNK_ACTIVE)
            continue;
        if (atomic_load(&table[j].shmid) == shmid)
            shmid = -1;
        if (atomic_load(&table[j].semid) == semid)
            semid = -1;
    }
    struct shmid_ds ds;
    if (shmctl(shmid, IPC_STAT, &ds) == 0 ? chunk_shm_made(&ds, cs)
                                          : errno == EACCES)
        shmctl(shmid, IPC_RMID, NULL);
    struct semid_ds sd = {0}; /* filled through arg */
    union semun_arg arg = {.buf = &sd};
    if (semctl(semid, 0, IPC_STAT, arg) == 0 ? chunk_sem_made(&sd, cs)
                                             : errno == EACCES)
        semctl(semid, 0, IPC_RMID);
}

/* Makes a chunk's segment and semaphore set, this process their creator,
 * and hands them to uid and the store's group (gid) with mode. */
static int chunk_make(uid_t uid, gid_t gid, unsigned mode, int *shmid_out,
                      int *semid_out)
{
    int shmid = shmget(IPC_PRIVATE, CHUNK_BYTES, IPC_CREAT | IPC_EXCL | 0600);
    if (shmid < 0)
        return set_errno_error(errno == ENOSPC ? SHMKV_ELIMIT : SHMKV_ESYS,
                               "shmget of a reader chunk");
    int semid =
        semget(IPC_PRIVATE, (int)CHUNK_SLOTS, IPC_CREAT | IPC_EXCL | 0600);
    if (semid < 0) {
        int err = errno;
        shmctl(shmid, IPC_RMID, NULL);
        errno = err;
        return set_errno_error(err == ENOSPC ? SHMKV_ELIMIT : SHMKV_ESYS,
                               "semget of a reader chunk");
    }
    struct shmid_ds ds;
    struct semid_ds sd;
    union semun_arg arg = {.buf = &sd};
    bool ok = shmctl(shmid, IPC_STAT, &ds) == 0 &&
              semctl(semid, 0, IPC_STAT, arg) == 0;
    if (ok) {
        ds.shm_perm.uid = sd.sem_perm.uid = uid;
        ds.shm_perm.gid = sd.sem_perm.gid = gid;
        ds.shm_perm.mode = sd.sem_perm.mode = mode;
        ok = shmctl(shmid, IPC_SET, &ds) == 0 &&
             semctl(semid, 0, IPC_SET, arg) == 0;
    }
    if (!ok) {
        int err = errno;
        shmctl(shmid, IPC_RMID, NULL);
        semctl(semid, 0, IPC_RMID);
        errno = err;
        return set_errno_error(SHMKV_ESYS,
                               "handing a reader chunk to its user");
    }
    *shmid_out = shmid;
    *semid_out = semid;
    return 0;
}

/* Chooses the entry for a new chunk of uid: 0 with *slot, or
 * SHMKV_ECLIENTS where uid's share or the table is full. */
static int chunk_entry_choose(const struct shmkv *kv, const struct shmid_ds *cs,
                              unsigned uid, uint32_t *slot)
{
    const struct reader_chunk *t = chunk_table(kv);
    uint32_t n = (uint32_t)kv->ctl_tail_fixed.chunk_count;
    uint32_t mine = 0, free_entries = 0;
    *slot = UINT32_MAX;
    for (uint32_t k = 0; k < n; k++) {
        bool live =
            atomic_load(&t[k].state) == CHUNK_ACTIVE && chunk_exists(&t[k], cs);
        if (live && t[k].uid == uid)
            mine++;
        if (!live) {
            free_entries++;
            if (*slot == UINT32_MAX)
                *slot = k;
        }
    }
    if (*slot == UINT32_MAX)
        return set_error(SHMKV_ECLIENTS,
                         "all %u reader chunks of the store are taken (uid %u "
                         "holds %u)",
                         n, uid, mine);
    if (mine >= n / 2)
        return set_error(SHMKV_ECLIENTS,
                         "uid %u holds %u reader chunks, its share of the "
                         "store's %u",
                         uid, mine, n);
    /* A user's first chunk may take any free entry; a further one leaves
     * a quarter of the table to users who have none yet, so that a few
     * users asking together cannot take every newcomer's place. */
    if (mine > 0 && free_entries <= n / 4)
        return set_error(SHMKV_ECLIENTS,
                         "uid %u holds %u reader chunks; the %u left of the "
                         "store's %u are kept for users who hold none",
                         uid, mine, free_entries, n);
    return 0;
}

int shmkv_add_readers_chunk(struct shmkv *kv, unsigned uid, unsigned *index)
{
    if (kv == NULL || index == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle or index");
    if (kv->rdonly)
        return set_error(SHMKV_ERDONLY, "the handle is read-only");
    struct shmid_ds cs;
    if (shmctl(kv->ctl_shmid, IPC_STAT, &cs) != 0)
        return set_errno_error(SHMKV_ESYS, "shmctl(IPC_STAT) of the store");
    /* The chunk's creator is how its entry is known to be its own. */
    if (!store_made(geteuid(), &cs))
        return set_error(SHMKV_EACCES, "only the store's owner's user makes "
                                       "reader chunks");
    /* The entry is chosen and the objects made before the write lock,
     * which is held only to publish them: a peer that asks again and
     * again holds no writer up. */
    struct reader_chunk *t = (struct reader_chunk *)chunk_table(kv);
    for (int attempt = 0;; attempt++) {
        uint32_t v = atomic_load_explicit(&kv->ctl->chunks_version,
                                          memory_order_acquire);
        uint32_t slot;
        int rc = chunk_entry_choose(kv, &cs, uid, &slot);
        int shmid = -1, semid = -1;
        if (rc == 0)
            rc = chunk_make((uid_t)uid, cs.shm_perm.gid,
                            chunk_mode(kv->ctl->mode), &shmid, &semid);
        if (rc != 0)
            return rc;
        rc = write_begin(kv);
        /* Another owner's process made a chunk meanwhile: choose again. */
        if (rc == 0 && atomic_load(&kv->ctl->chunks_version) != v) {
            write_end(kv);
            rc = attempt < 3 ? SHMKV_ERETRY
                             : set_error(SHMKV_EBUSY, "the chunk table keeps "
                                                      "changing");
        }
        if (rc != 0) {
            shmctl(shmid, IPC_RMID, NULL);
            semctl(semid, 0, IPC_RMID);
            if (rc == SHMKV_ERETRY)
                continue;
            return rc;
        }
        /* What the entry held before goes: its objects are gone or are no
         * longer its own. No scan looks at the entry while the lock is
         * held: its pins start afresh, then it is published. */
        struct client_pin *pins = client_pins(kv) + chunk_pin_base(kv, slot);
        memset((void *)pins, 0, CHUNK_SLOTS * sizeof *pins);
        /* The ids were free when made: an entry that still names one,
         * this one included, names an object its user removed, and must
         * never be taken for the new one (used, or removed when that
         * entry is given out). Then what is left of the entry's own
         * objects goes. */
        for (uint32_t k = 0; k < (uint32_t)kv->ctl_tail_fixed.chunk_count;
             k++) {
            if (atomic_load(&t[k].shmid) == shmid)
                atomic_store(&t[k].shmid, -1);
            if (atomic_load(&t[k].semid) == semid)
                atomic_store(&t[k].semid, -1);
        }
        if (atomic_load(&t[slot].state) == CHUNK_ACTIVE)
            chunk_objects_remove(t, (uint32_t)kv->ctl_tail_fixed.chunk_count,
                                 slot, &cs);
        atomic_store(&t[slot].state, CHUNK_FREE);
        atomic_fetch_add(&t[slot].serial, 1);
        t[slot].uid = uid;
        atomic_store(&t[slot].shmid, shmid);
        atomic_store(&t[slot].semid, semid);
        atomic_store_explicit(&t[slot].state, CHUNK_ACTIVE,
                              memory_order_release);
        atomic_fetch_add_explicit(&kv->ctl->chunks_version, 1,
                                  memory_order_release);
        write_end(kv);
        *index = slot;
        return 0;
    }
}

int shmkv_set_registrar(struct shmkv *kv, const char *path)
{
    if (kv == NULL)
        return set_error(SHMKV_EINVAL, "NULL handle");
    if (kv->rdonly || !kv->owner)
        return set_error(SHMKV_ERDONLY, "only the store's owner makes reader "
                                        "chunks");
    size_t len = path != NULL ? strlen(path) : 0;
    if (len >= REGISTRAR_BYTES)
        return set_error(SHMKV_EINVAL,
                         "a socket path of %zu bytes is over "
                         "%u",
                         len, REGISTRAR_BYTES - 1);
    char buf[REGISTRAR_BYTES] = {0};
    if (len > 0)
        memcpy(buf, path, len);
    memcpy(kv->ctl->registrar, buf, sizeof buf);
    return 0;
}

void chunks_remove(struct ctl_header *c, int ctl_id)
{
    struct shmid_ds cs;
    if (shmctl(ctl_id, IPC_STAT, &cs) != 0)
        return;
    struct reader_chunk *t = (struct reader_chunk *)((char *)c + c->chunks_off);
    for (uint64_t k = 0; k < c->chunk_count; k++) {
        if (atomic_load(&t[k].state) != CHUNK_ACTIVE)
            continue;
        chunk_objects_remove(t, (uint32_t)c->chunk_count, (uint32_t)k, &cs);
        atomic_store(&t[k].state, CHUNK_FREE);
    }
}

int client_slot_claim(struct shmkv *kv)
{
    bool writer = !kv->rdonly;
    const struct client_slot *slots =
        writer ? writer_claims(kv) : client_slots(kv);
    kv->slot_index = UINT32_MAX;
    if (!writer) {
        int rc = chunk_claim(kv);
        if (rc <= 0)
            return rc;
    }
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < kv->max_clients; i++) {
            /* First the slots nobody left anything in; then any whose
             * semaphore says it is free. */
            if (pass == 0 &&
                atomic_load_explicit(&slots[i].pid, memory_order_relaxed) != 0)
                continue;
            int rc = slot_try(kv, i, writer);
            if (rc < 0)
                return rc;
            if (rc == 0) {
                slot_take(kv, i, writer);
                return 0;
            }
        }
        /* Every slot looks taken: a writer frees those of dead processes,
         * then looks again. */
        if (pass == 0 && writer)
            client_slots_reap(kv);
    }
    return set_error(SHMKV_ECLIENTS,
                     "all %u client slots of the store for %s are in use",
                     kv->max_clients, writer ? "writers" : "readers");
}

void client_slot_release(struct shmkv *kv)
{
    chunks_detach(kv);
    if (kv->slot == NULL)
        return;
    if (kv->slot_owned) {
        atomic_store(&kv->slot->claim, 0);
        atomic_store(&kv->slot->pid, 0);
        if (kv->slot_writer) {
            atomic_store(&kv->wslot->lock_state, 0);
            atomic_store(&kv->wslot->pid, 0);
        }
        if (kv->chunk_seg != NULL)
            liveness_release_at(kv->chunk_semid,
                                (unsigned short)kv->slot_index);
        else
            liveness_release(kv->ctl,
                             kv->slot_writer ? LIVE_WRITER : LIVE_READER,
                             kv->slot_index);
    }
    if (kv->chunk_seg != NULL)
        shmdt(kv->chunk_seg);
    kv->chunk_seg = NULL;
    kv->slot = NULL;
    kv->wslot = NULL;
    kv->slot_owned = false;
    kv->slot_writer = false;
}
