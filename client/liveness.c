/*
 * liveness.c - telling a dead process from a live one, exactly.
 *
 * Every readers' client slot has a System V semaphore in the reader sets,
 * and every writers' client slot one in the writer sets, as has the
 * store's owner. Readers may change the reader sets (a reader raises its
 * own), so what they say is believed only where a lie costs the liar's
 * peers a revoked section at worst (reclaim.c); writers' slots, the lock's
 * recovery and the owner's liveness rest on the writer sets, which readers
 * cannot change (their permission bits are the store's mode). A reader set
 * has one semaphore more than it uses, so that both kinds share a geometry.
 * A handle takes its slot by one semop that waits for the semaphore to be
 * 0 (IPC_NOWAIT) and raises it with SEM_UNDO, atomically: the slot is its
 * own while the semaphore is up. When the process dies, at any
 * instruction and however it dies, the kernel applies the undo and the
 * semaphore drops back to 0. So a semaphore at 0 means the process that
 * held it is gone, and one above 0 that it lives, whatever pid namespace
 * either side runs in and whatever pid the kernel hands out next: nothing
 * is guessed from /proc.
 *
 * SEM_UNDO adjustments belong to the process, shared by its threads, not
 * inherited by fork() and kept across execve(): a handle's liveness is its
 * process's. The set is made IPC_PRIVATE with the store and removed with
 * it; a set holds at most kernel.sem's SEMMSL semaphores, so a store with
 * more client slots has several (SEM_SETS_MAX).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ipc.h>
#include <sys/sem.h>

#include "internal.h"

/* The kernel's per-set limit (SEMMSL, the first field of kernel.sem). */
static uint32_t sems_per_set_limit(void)
{
    FILE *f = fopen("/proc/sys/kernel/sem", "re");
    unsigned long msl = 0;
    if (f != NULL) {
        if (fscanf(f, "%lu", &msl) != 1)
            msl = 0;
        fclose(f);
    }
    if (msl == 0 || msl > 65536)
        msl = msl == 0 ? 250 : 65536; /* 250: the historic default */
    return (uint32_t)msl;
}

static const int32_t *sem_ids_of(const struct ctl_header *c, enum live_kind k)
{
    return k == LIVE_WRITER ? c->sem_ids : c->rsem_ids;
}

/* The set and number of semaphore index; id -1 (which every call refuses)
 * if the header's numbers cannot say. */
static void sem_locate(const struct ctl_header *c, enum live_kind k,
                       uint32_t index, int *id, unsigned short *num)
{
    uint32_t per = c->sems_per_set;
    *id = per != 0 && index / per < SEM_SETS_MAX ? sem_ids_of(c, k)[index / per]
                                                 : -1;
    *num = per != 0 ? (unsigned short)(index % per) : 0;
}

/* Makes `sets` semaphore sets of `per` (the last one smaller), `total`
 * semaphores in all, at 0, their ids in ids. */
static int sets_create(int32_t *ids, uint32_t total, uint32_t sets,
                       uint32_t per, unsigned mode, int64_t gid)
{
    for (uint32_t i = 0; i < sets; i++) {
        uint32_t n = total - i * per < per ? total - i * per : per;
        int id =
            semget(IPC_PRIVATE, (int)n, IPC_CREAT | IPC_EXCL | (mode & 0777));
        if (id < 0) {
            int err = errno;
            if (err == ENOSPC)
                return set_error(SHMKV_ELIMIT,
                                 "no semaphore set of %u for the store's "
                                 "liveness: over kernel.sem (SEMMNI or "
                                 "SEMMNS, see /proc/sys/kernel/sem)",
                                 n);
            if (err == EINVAL)
                return set_error(SHMKV_ELIMIT,
                                 "a semaphore set of %u is over kernel.sem "
                                 "SEMMSL (see /proc/sys/kernel/sem)",
                                 n);
            return set_errno_error(SHMKV_ESYS, "semget");
        }
        ids[i] = id;
        /* Linux starts them at 0; say so rather than rely on it. */
        unsigned short *zero = calloc(n, sizeof *zero);
        if (zero == NULL)
            return set_error(SHMKV_ENOMEM, "no memory for a semaphore set");
        union semun_arg arg = {.array = zero};
        int rc = semctl(id, 0, SETALL, arg);
        free(zero);
        if (rc != 0)
            return set_errno_error(SHMKV_ESYS, "semctl(SETALL)");
        if (gid >= 0) {
            struct semid_ds ds;
            union semun_arg sarg = {.buf = &ds};
            if (semctl(id, 0, IPC_STAT, sarg) != 0 ||
                (ds.sem_perm.gid = (gid_t)gid,
                 semctl(id, 0, IPC_SET, sarg) != 0))
                return set_errno_error(errno == EPERM ? SHMKV_EACCES
                                                      : SHMKV_ESYS,
                                       "setting the store's group on its "
                                       "semaphores");
        }
    }
    return 0;
}

int liveness_create(struct ctl_header *c, unsigned mode, int64_t gid)
{
    uint32_t total = c->max_clients + 1; /* and the owner */
    uint32_t per = sems_per_set_limit();
    uint32_t sets = (total + per - 1) / per;
    for (uint32_t i = 0; i < SEM_SETS_MAX; i++)
        c->sem_ids[i] = c->rsem_ids[i] = -1;
    if (sets > SEM_SETS_MAX)
        return set_error(SHMKV_ELIMIT,
                         "%u client slots need %u semaphore sets of %u "
                         "(kernel.sem SEMMSL); at most %u are used: raise "
                         "the first field of /proc/sys/kernel/sem or lower "
                         "max_clients",
                         c->max_clients, sets, per, SEM_SETS_MAX);
    /* Spread evenly, so that no set is a sliver. */
    per = (total + sets - 1) / sets;
    c->sems_per_set = per;
    /* Readers raise their own reader semaphore: whoever may read may
     * change those (the mode's read bits, with write added). */
    int rc = sets_create(c->sem_ids, total, sets, per, mode, gid);
    if (rc == 0)
        rc = sets_create(c->rsem_ids, total, sets, per, reader_mode(mode), gid);
    if (rc != 0) {
        int err = errno;
        liveness_remove(c);
        errno = err;
    }
    return rc;
}

void liveness_remove(struct ctl_header *c)
{
    for (uint32_t i = 0; i < SEM_SETS_MAX; i++) {
        if (c->sem_ids[i] >= 0)
            semctl(c->sem_ids[i], 0, IPC_RMID);
        if (c->rsem_ids[i] >= 0)
            semctl(c->rsem_ids[i], 0, IPC_RMID);
        c->sem_ids[i] = c->rsem_ids[i] = -1;
    }
}

int liveness_claim_at(int id, unsigned short num)
{
    struct sembuf ops[2] = {
        {.sem_num = num, .sem_op = 0, .sem_flg = IPC_NOWAIT},
        {.sem_num = num, .sem_op = 1, .sem_flg = SEM_UNDO | IPC_NOWAIT},
    };
    if (semop(id, ops, 2) == 0)
        return 0;
    switch (errno) {
    case EAGAIN:
        return 1;
    case EACCES:
        return set_errno_error(SHMKV_EACCES, "the store's semaphores");
    case EINVAL:
    case EIDRM:
        return set_error(SHMKV_ENOSTORE, "the store's semaphores are gone");
    case ENOMEM:
        return set_errno_error(SHMKV_ENOMEM, "semop");
    default:
        return set_errno_error(SHMKV_ESYS, "semop");
    }
}

void liveness_release_at(int id, unsigned short num)
{
    struct sembuf op = {
        .sem_num = num, .sem_op = -1, .sem_flg = SEM_UNDO | IPC_NOWAIT};
    semop(id, &op, 1);
}

bool liveness_alive_at(int id, unsigned short num)
{
    int v = semctl(id, num, GETVAL);
    /* Unreadable: not known dead, so treated as alive. */
    return v != 0;
}

int liveness_claim(const struct ctl_header *c, enum live_kind k, uint32_t index)
{
    int id;
    unsigned short num;
    sem_locate(c, k, index, &id, &num);
    return liveness_claim_at(id, num);
}

void liveness_release(const struct ctl_header *c, enum live_kind k,
                      uint32_t index)
{
    int id;
    unsigned short num;
    sem_locate(c, k, index, &id, &num);
    liveness_release_at(id, num);
}

bool liveness_alive(const struct ctl_header *c, enum live_kind k,
                    uint32_t index)
{
    int id;
    unsigned short num;
    sem_locate(c, k, index, &id, &num);
    return liveness_alive_at(id, num);
}

bool liveness_all(const struct ctl_header *c, enum live_kind k, uint32_t n,
                  uint8_t *alive)
{
    uint32_t per = c->sems_per_set;
    if (per == 0 || per > 65536 || (n + per - 1) / per > SEM_SETS_MAX)
        return false;
    unsigned short *vals = malloc((size_t)per * sizeof *vals);
    if (vals == NULL)
        return false;
    bool ok = true;
    for (uint32_t base = 0; base < n && ok; base += per) {
        union semun_arg arg = {.array = vals};
        if (semctl(sem_ids_of(c, k)[base / per], 0, GETALL, arg) != 0) {
            ok = false;
            break;
        }
        for (uint32_t i = 0; i < per && base + i < n; i++)
            alive[base + i] = vals[i] != 0;
    }
    free(vals);
    return ok;
}
