/*
 * Roles the kernel enforces: owner, writers, readers and outsiders, as
 * users and groups this test creates (useradd, groupadd) and removes.
 *
 * - A store whose group reads (mode 0640): a member opens it and gets a
 *   read-only handle; every write is SHMKV_ERDONLY; a raw read-write shmat
 *   of the control or data segment is refused by the kernel (EACCES), and
 *   so is a semop on the writer semaphores; a stray write through the
 *   handle's mapping of the control segment faults in the reader. A user
 *   outside the group cannot open it at all.
 * - A store whose group writes and everyone reads (0664): a member writes,
 *   anyone else reads only.
 * - A reader that scribbles random bytes over everything it may write (the
 *   reader segment, the reader semaphores) while a writer writes and an
 *   honest reader of another uid reads: no process crashes, the honest
 *   reader never reads a changed value without being told (SHMKV_ESTALE),
 *   writers go on, and the store checks clean.
 * - A reader that clears another reader's claim while its section is open
 *   and puts it back after a writer reused memory (the one attack the
 *   claim alone cannot see): the victim's section ends SHMKV_ESTALE
 *   whenever what it read changed.
 * - With reader chunks registered (a registrar standing in for shmkvd's
 *   socket), the same scribbler, now also over its own chunk, reaches no
 *   other user's reader: the kernel refuses it the other chunk, the
 *   honest reader's sections never end stale, and new readers of another
 *   user still open.
 *
 * Needs root (to create users and change to them): skipped otherwise.
 */
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "internal.h"
#include "testutil.h"

/* The accounts this run made: groups r (readers) and w (writers), users
 * reader and reader2 (group r), writer (group w), outsider (neither). */
struct account {
    char name[32];
    uid_t uid;
    gid_t gid;
};
static struct account acct_reader, acct_reader2, acct_writer, acct_outsider;
static char group_r[32], group_w[32];
static gid_t gid_r, gid_w;
static bool accounts_made;
/* Children running as those accounts, killed before the accounts go. */
static pid_t kids[8];
static unsigned nkids;

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return system(cmd);
}

static void kids_kill(void)
{
    for (unsigned i = 0; i < nkids; i++) {
        if (kids[i] > 0) {
            kill(kids[i], SIGKILL);
            waitpid(kids[i], NULL, 0);
        }
    }
    nkids = 0;
}

static void accounts_remove(void)
{
    if (!accounts_made || getpid() != test_owner_pid)
        return;
    kids_kill();
    const struct account *all[] = {&acct_reader, &acct_reader2, &acct_writer,
                                   &acct_outsider};
    for (size_t i = 0; i < 4; i++)
        if (all[i]->name[0] != '\0')
            sh("userdel %s >/dev/null 2>&1", all[i]->name);
    sh("groupdel %s >/dev/null 2>&1", group_r);
    sh("groupdel %s >/dev/null 2>&1", group_w);
    accounts_made = false;
}

static int user_make(struct account *a, const char *role, const char *group)
{
    snprintf(a->name, sizeof a->name, "shmkvt%d%s", (int)getpid(), role);
    if (sh("useradd --system --no-create-home --shell /usr/sbin/nologin "
           "%s%s %s >/dev/null 2>&1",
           group ? "--gid " : "--user-group", group ? group : "", a->name) != 0)
        return -1;
    struct passwd *pw = getpwnam(a->name);
    if (pw == NULL)
        return -1;
    a->uid = pw->pw_uid;
    a->gid = pw->pw_gid;
    return 0;
}

static int accounts_make(void)
{
    test_cleanup_install();
    snprintf(group_r, sizeof group_r, "shmkvt%dr", (int)getpid());
    snprintf(group_w, sizeof group_w, "shmkvt%dw", (int)getpid());
    accounts_made = true;
    atexit(accounts_remove);
    if (sh("groupadd --system %s >/dev/null 2>&1", group_r) != 0 ||
        sh("groupadd --system %s >/dev/null 2>&1", group_w) != 0)
        return -1;
    struct group *g = getgrnam(group_r);
    if (g == NULL)
        return -1;
    gid_r = g->gr_gid;
    g = getgrnam(group_w);
    if (g == NULL)
        return -1;
    gid_w = g->gr_gid;
    if (user_make(&acct_reader, "rd", group_r) != 0 ||
        user_make(&acct_reader2, "rd2", group_r) != 0 ||
        user_make(&acct_writer, "wr", group_w) != 0 ||
        user_make(&acct_outsider, "out", NULL) != 0)
        return -1;
    return 0;
}

static int group_setup(void **state)
{
    (void)state;
    if (geteuid() != 0) {
        print_message("not root: the roles tests need users of their own\n");
        return 0;
    }
    if (accounts_make() != 0) {
        accounts_remove();
        print_message("useradd or groupadd failed\n");
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    accounts_remove();
    return 0;
}

static void need_root(void)
{
    if (geteuid() != 0)
        skip();
}

/* In a child: becomes the account (its groups, then its ids), and dies
 * with the test (after the change of ids, which clears that). */
static void become(const struct account *a)
{
    if (initgroups(a->name, a->gid) != 0 || setgid(a->gid) != 0 ||
        setuid(a->uid) != 0 || prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 ||
        getppid() == 1)
        _exit(120);
}

/* Forks a child that becomes a and runs fn(arg); returns its pid. */
static pid_t spawn(const struct account *a, void (*fn)(void *), void *arg)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        become(a);
        fn(arg);
        _exit(0);
    }
    if (nkids < sizeof kids / sizeof kids[0])
        kids[nkids++] = pid;
    return pid;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int reap(pid_t pid)
{
    int status;
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    for (unsigned i = 0; i < nkids; i++)
        if (kids[i] == pid)
            kids[i] = 0;
    if (WIFSIGNALED(status))
        return 1000 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

/* A store owned by root with the given mode and group. */
static struct shmkv *store_make(unsigned mode, gid_t gid, char *where,
                                size_t cap)
{
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = 4u << 20;
    o.mode = mode;
    o.gid = (int64_t)gid;
    o.reader_timeout_ms = 200;
    o.lock_timeout_ms = 5000;
    struct shmkv *kv;
    assert_int_equal(test_create(&o, &kv), 0);
    snprintf(where, cap, "%s", o.key);
    return kv;
}

/* ---- who can do what ---- */

/* A child as a reader of a 0640 store: exit 0 when everything is as the
 * access model says, else the number of the first check that failed. */
static int reader_checks(const char *where, int ctl_id, int data_id,
                         int wsem_id, int rseg_id)
{
    struct shmkv *h;
    if (shmkv_open(where, 0, &h) != 0)
        return 1;
    if (shmkv_readonly(h) != 1)
        return 2;
    char buf[16];
    size_t len;
    if (shmkv_get_copy(h, "k", 1, buf, sizeof buf, &len) != 0 || len != 5 ||
        memcmp(buf, "value", 5) != 0)
        return 3;
    if (shmkv_set(h, "k", 1, "mine", 4, 0, 0) != SHMKV_ERDONLY ||
        shmkv_del(h, "k", 1) != SHMKV_ERDONLY ||
        shmkv_flush(h) != SHMKV_ERDONLY ||
        shmkv_mark_closed(h) != SHMKV_ERDONLY)
        return 4;
    struct shmkv_check_report r;
    if (shmkv_check(h, &r) != SHMKV_ERDONLY)
        return 5;
    /* The kernel: read-write attaches refused, read-only ones allowed. */
    if (shmat(ctl_id, NULL, 0) != (void *)-1 || errno != EACCES)
        return 6;
    if (shmat(data_id, NULL, 0) != (void *)-1 || errno != EACCES)
        return 7;
    void *ro = shmat(data_id, NULL, SHM_RDONLY);
    if (ro == (void *)-1)
        return 8;
    shmdt(ro);
    struct sembuf op = {.sem_num = 0, .sem_op = 1, .sem_flg = IPC_NOWAIT};
    if (semop(wsem_id, &op, 1) == 0 || errno != EACCES)
        return 9;
    /* What it writes: the reader segment. */
    void *rw = shmat(rseg_id, NULL, 0);
    if (rw == (void *)-1)
        return 10;
    shmdt(rw);
    if (shmctl(ctl_id, IPC_RMID, NULL) == 0 || errno != EPERM)
        return 11;
    if (shmkv_destroy(h) != SHMKV_ERDONLY)
        return 12;
    shmkv_close(h);
    return 0;
}

static sigjmp_buf fault_jump;
static void on_fault(int sig)
{
    (void)sig;
    siglongjmp(fault_jump, 1);
}

/* Whether a store into p faults. */
static bool write_faults(volatile char *p)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fault;
    sigaction(SIGSEGV, &sa, NULL);
    if (sigsetjmp(fault_jump, 1) != 0)
        return true;
    char was = p[0];
    p[0] = (char)(was ^ 1);
    p[0] = was;
    return false;
}

/* What the children of the access tests are given. */
struct access_ctx {
    const char *where;
    int ctl_id, data_id, wsem_id, rseg_id;
};

static void child_reader_checks(void *arg)
{
    const struct access_ctx *x = arg;
    _exit(
        reader_checks(x->where, x->ctl_id, x->data_id, x->wsem_id, x->rseg_id));
}

/* A stray write into the control or data segment through a reader's
 * handle faults in the reader. */
static void child_stray_write(void *arg)
{
    const struct access_ctx *x = arg;
    struct shmkv *h;
    if (shmkv_open(x->where, 0, &h) != 0)
        _exit(1);
    _exit(write_faults((volatile char *)&h->ctl->current) &&
                  write_faults((volatile char *)h->data)
              ? 0
              : 2);
}

static void child_refused(void *arg)
{
    const struct access_ctx *x = arg;
    struct shmkv *h;
    _exit(shmkv_open(x->where, 0, &h) == SHMKV_EACCES ? 0 : 1);
}

static void test_group_reads(void **state)
{
    (void)state;
    need_root();
    char where[32];
    struct shmkv *kv = store_make(0640, gid_r, where, sizeof where);
    assert_int_equal(shmkv_set(kv, "k", 1, "value", 5, 0, 0), 0);
    struct ctl_header *c = kv->ctl;
    struct access_ctx x = {
        .where = where,
        .ctl_id = kv->ctl_shmid,
        .data_id = CURRENT_SHMID(atomic_load(&c->current)),
        .wsem_id = c->sem_ids[0],
        .rseg_id = c->reader_shmid,
    };
    /* The modes the segments got. */
    struct shmid_ds ds;
    assert_int_equal(shmctl(x.ctl_id, IPC_STAT, &ds), 0);
    assert_int_equal(ds.shm_perm.mode & 0777, 0640);
    assert_int_equal(ds.shm_perm.gid, gid_r);
    assert_int_equal(shmctl(x.data_id, IPC_STAT, &ds), 0);
    assert_int_equal(ds.shm_perm.mode & 0777, 0640);
    assert_int_equal(shmctl(x.rseg_id, IPC_STAT, &ds), 0);
    assert_int_equal(ds.shm_perm.mode & 0777, 0660);

    assert_int_equal(reap(spawn(&acct_reader, child_reader_checks, &x)), 0);
    assert_int_equal(reap(spawn(&acct_reader, child_stray_write, &x)), 0);
    assert_int_equal(reap(spawn(&acct_outsider, child_refused, &x)), 0);

    /* The store is as it was; the owner writes. */
    char buf[16];
    size_t len;
    assert_int_equal(shmkv_get_copy(kv, "k", 1, buf, sizeof buf, &len), 0);
    assert_memory_equal(buf, "value", 5);
    assert_int_equal(shmkv_set(kv, "k", 1, "owner", 5, 0, 0), 0);
    struct shmkv_check_report r;
    assert_int_equal(shmkv_check(kv, &r), 0);
    test_destroy(kv, where);
}

static void child_group_writer(void *arg)
{
    const struct access_ctx *x = arg;
    struct shmkv *h;
    if (shmkv_open(x->where, 0, &h) != 0)
        _exit(1);
    if (shmkv_readonly(h) != 0)
        _exit(2);
    if (shmkv_set(h, "w", 1, "written", 7, 0, 0) != 0)
        _exit(3);
    struct shmkv_check_report r;
    if (shmkv_check(h, &r) != 0)
        _exit(4);
    shmkv_close(h);
    _exit(0);
}

static void child_anyone_reads(void *arg)
{
    const struct access_ctx *x = arg;
    struct shmkv *h;
    if (shmkv_open(x->where, 0, &h) != 0)
        _exit(1);
    char buf[16];
    size_t len;
    if (shmkv_readonly(h) != 1 ||
        shmkv_get_copy(h, "w", 1, buf, sizeof buf, &len) != 0 || len != 7 ||
        shmkv_set(h, "o", 1, "x", 1, 0, 0) != SHMKV_ERDONLY)
        _exit(2);
    shmkv_close(h);
    _exit(0);
}

static void test_group_writes_all_read(void **state)
{
    (void)state;
    need_root();
    char where[32];
    struct shmkv *kv = store_make(0664, gid_w, where, sizeof where);
    struct access_ctx x = {.where = where};
    assert_int_equal(reap(spawn(&acct_writer, child_group_writer, &x)), 0);
    assert_int_equal(reap(spawn(&acct_outsider, child_anyone_reads, &x)), 0);
    test_destroy(kv, where);
}

/* ---- a reader that scribbles ---- */

struct shared {
    _Atomic int stop;
    _Atomic uint64_t ready;
    _Atomic uint64_t sections;
    _Atomic uint64_t stale;
    _Atomic uint64_t silent_wrong; /* changed bytes in a section not stale */
    _Atomic uint64_t scribbles;
    _Atomic uint64_t attacks;
};

static struct shared *shared_map(void)
{
    struct shared *s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE,
                            MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(s != MAP_FAILED);
    memset(s, 0, sizeof *s);
    return s;
}

#define NKEYS 64u
#define VAL_BYTES 48u

/* Value `gen` of key i: its bytes say which, so a reader can tell it read
 * what it was given. */
static void value_make(char *v, unsigned i, uint32_t gen)
{
    for (unsigned j = 0; j < VAL_BYTES; j++)
        v[j] = (char)(i * 131u + gen * 7u + j);
}

/* Sets key to val, failing the test on an error; *slowest keeps the
 * longest a set took, in ms. */
static void set_timed(struct shmkv *kv, const char *key, size_t klen,
                      const void *val, size_t vlen, uint64_t *slowest)
{
    uint64_t t0 = now_ms();
    int rc = shmkv_set(kv, key, klen, val, vlen, 0, 0);
    if (rc != 0)
        fail_msg("set: %s: %s", shmkv_strerror(rc), shmkv_last_error());
    if (now_ms() - t0 > *slowest)
        *slowest = now_ms() - t0;
}

/* Waits up to 5 s for *n to reach want. */
static void wait_count(_Atomic uint64_t *n, uint64_t want)
{
    uint64_t give_up = now_ms() + 5000;
    while (atomic_load(n) < want && now_ms() < give_up)
        usleep(1000);
}

/* The writer: replaces every key again and again with same-sized values,
 * so that retired blocks are reused as soon as no claim holds them.
 * Returns the slowest set in ms. */
static uint64_t writer_loop(struct shmkv *kv, struct shared *s, uint64_t run_ms)
{
    char key[16], v[VAL_BYTES];
    uint64_t end = now_ms() + run_ms, slowest = 0;
    for (uint32_t gen = 1; now_ms() < end; gen++) {
        for (unsigned i = 0; i < NKEYS; i++) {
            int kl = snprintf(key, sizeof key, "k%u", i);
            value_make(v, i, gen);
            set_timed(kv, key, (size_t)kl, v, sizeof v, &slowest);
        }
    }
    atomic_store(&s->stop, 1);
    return slowest;
}

/* An honest reader: sections that take every key's value (zero-copy),
 * copy it, linger, then check that the bytes are still those copied. A
 * section whose bytes changed must end SHMKV_ESTALE. */
static void honest_reader(const char *where, struct shared *s)
{
    struct shmkv *h;
    if (shmkv_open(where, 0, &h) != 0)
        _exit(1);
    static char copy[NKEYS][VAL_BYTES];
    const char *ptr[NKEYS];
    size_t lens[NKEYS];
    char key[16];
    atomic_fetch_add(&s->ready, 1);
    while (!atomic_load(&s->stop)) {
        if (shmkv_read_begin(h) != 0)
            _exit(2);
        unsigned got = 0;
        for (unsigned i = 0; i < NKEYS; i++) {
            int kl = snprintf(key, sizeof key, "k%u", i);
            shmkv_val_t v;
            ptr[i] = NULL;
            if (shmkv_get(h, key, (size_t)kl, &v) != 0 || v.len != VAL_BYTES)
                continue;
            ptr[i] = v.data;
            lens[i] = v.len;
            memcpy(copy[i], v.data, v.len);
            got++;
        }
        /* Long enough for writers to retire and reuse what it holds, were
         * its claim not honoured. */
        struct timespec linger = {0, 5000000};
        nanosleep(&linger, NULL);
        bool changed = false;
        for (unsigned i = 0; i < NKEYS; i++)
            if (ptr[i] != NULL && memcmp(ptr[i], copy[i], lens[i]) != 0)
                changed = true;
        int rc = shmkv_read_end(h);
        atomic_fetch_add(&s->sections, 1);
        if (rc == SHMKV_ESTALE)
            atomic_fetch_add(&s->stale, 1);
        else if (rc != 0)
            _exit(3);
        else if (changed)
            atomic_fetch_add(&s->silent_wrong, 1);
        (void)got;
    }
    shmkv_close(h);
    _exit(0);
}

static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* Attaches what a reader may write, through the layout. */
static void reader_parts(const char *where, struct ctl_header **c, char **rseg)
{
    struct shmkv *h;
    if (shmkv_open(where, 0, &h) != 0 || !shmkv_readonly(h))
        _exit(10);
    *c = h->ctl; /* read-only */
    *rseg = shmat((*c)->reader_shmid, NULL, 0);
    if (*rseg == (char *)-1)
        _exit(11);
}

/* Random bytes over the whole reader segment and random values into every
 * reader semaphore, over and over. */
static void scribbler(const char *where, struct shared *s, uint64_t seed)
{
    struct ctl_header *c;
    char *rseg;
    reader_parts(where, &c, &rseg);
    uint64_t bytes = c->reader_bytes;
    uint32_t per = c->sems_per_set;
    unsigned short *vals = calloc(per, sizeof *vals);
    atomic_fetch_add(&s->ready, 1);
    uint64_t x = seed | 1;
    struct client_slot *slots = (struct client_slot *)(rseg + c->clients_off);
    for (unsigned pass = 0; !atomic_load(&s->stop); pass++) {
        if (pass % 2 == 0) {
            for (uint64_t off = 0; off + 8 <= bytes; off += 8) {
                uint64_t r = rng_next(&x);
                memcpy(rseg + off, &r, 8);
            }
        } else {
            /* Claims that look real: open sections of recent epochs, which
             * hold memory back until revoked. */
            uint64_t e = atomic_load(&c->epoch);
            for (uint32_t i = 0; i < c->max_clients; i++)
                atomic_store(&slots[i].claim,
                             CLAIM_MAKE(e - rng_next(&x) % 4, CLAIM_ACTIVE));
        }
        for (uint32_t k = 0; k < SEM_SETS_MAX; k++) {
            if (c->rsem_ids[k] < 0)
                continue;
            for (uint32_t j = 0; j < per; j++)
                vals[j] = (unsigned short)(rng_next(&x) % 3);
            union semun_arg arg = {.array = vals};
            semctl(c->rsem_ids[k], 0, SETALL, arg);
        }
        atomic_fetch_add(&s->scribbles, 1);
    }
    _exit(0);
}

/* Clears every other handle's open claim, waits for writers to scan and
 * reuse, and puts the claim back. */
static void claim_thief(const char *where, struct shared *s, uint32_t own)
{
    struct ctl_header *c;
    char *rseg;
    reader_parts(where, &c, &rseg);
    struct client_slot *slots = (struct client_slot *)(rseg + c->clients_off);
    atomic_fetch_add(&s->ready, 1);
    while (!atomic_load(&s->stop)) {
        for (uint32_t i = 0; i < c->max_clients; i++) {
            if (i == own)
                continue;
            uint64_t cl = atomic_load(&slots[i].claim);
            if (CLAIM_MODE(cl) != CLAIM_ACTIVE)
                continue;
            if (!atomic_compare_exchange_strong(&slots[i].claim, &cl, 0))
                continue;
            /* Until writers have scanned the claims (and found none here)
             * and written on a while: then put it back, before the victim
             * looks. */
            uint64_t scans = atomic_load(&c->scans);
            uint64_t give_up = now_ms() + 2;
            while (atomic_load(&c->scans) < scans + 2 && now_ms() < give_up)
                ;
            struct timespec ts = {0, 300000};
            nanosleep(&ts, NULL);
            uint64_t zero = 0;
            atomic_compare_exchange_strong(&slots[i].claim, &zero, cl);
            atomic_fetch_add(&s->attacks, 1);
        }
    }
    _exit(0);
}

struct attack_ctx {
    const char *where;
    struct shared *s;
    uint64_t seed;
};

static void child_honest(void *arg)
{
    const struct attack_ctx *x = arg;
    honest_reader(x->where, x->s);
}

static void child_scribbler(void *arg)
{
    const struct attack_ctx *x = arg;
    scribbler(x->where, x->s, x->seed);
}

static void child_thief(void *arg)
{
    const struct attack_ctx *x = arg;
    claim_thief(x->where, x->s, UINT32_MAX);
}

static void run_attack(bool scribble, const char *what)
{
    need_root();
    char where[32];
    struct shmkv *kv = store_make(0640, gid_r, where, sizeof where);
    uint64_t seed = test_seed(what);
    struct shared *s = shared_map();
    char v[VAL_BYTES], key[16];
    for (unsigned i = 0; i < NKEYS; i++) {
        int kl = snprintf(key, sizeof key, "k%u", i);
        value_make(v, i, 0);
        assert_int_equal(shmkv_set(kv, key, (size_t)kl, v, sizeof v, 0, 0), 0);
    }
    struct attack_ctx x = {.where = where, .s = s, .seed = seed};
    pid_t honest = spawn(&acct_reader2, child_honest, &x);
    pid_t attacker =
        spawn(&acct_reader, scribble ? child_scribbler : child_thief, &x);
    wait_count(&s->ready, 2);
    uint64_t slowest = writer_loop(kv, s, 2000);
    int honest_rc = reap(honest), attacker_rc = reap(attacker);
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    print_message(
        "%s: %" PRIu64 " sections read, %" PRIu64 " ended stale, %" PRIu64
        " read changed bytes unwarned; %" PRIu64 " scribbles, %" PRIu64
        " claims stolen; %" PRIu64 " writes, slowest %" PRIu64
        " ms (reader timeout 200 ms), %" PRIu64 " revocations\n",
        what, atomic_load(&s->sections), atomic_load(&s->stale),
        atomic_load(&s->silent_wrong), atomic_load(&s->scribbles),
        atomic_load(&s->attacks), st.sets, slowest, st.revocations);
    assert_int_equal(honest_rc, 0);
    assert_int_equal(attacker_rc, 0);
    assert_int_equal(atomic_load(&s->silent_wrong), 0);
    assert_true(atomic_load(&s->sections) > 0);
    assert_true(slowest < 2000);
    struct shmkv_check_report r;
    assert_int_equal(shmkv_check(kv, &r), 0);
    munmap(s, sizeof *s);
    test_destroy(kv, where);
}

static void test_scribbling_reader(void **state)
{
    (void)state;
    run_attack(true, "scribbling reader");
}

static void test_claim_thief(void **state)
{
    (void)state;
    run_attack(false, "claim thief");
}

/* ---- a reader that goes after writers ---- */

/* Every reader semaphore at 1 (every readers' slot looks taken, every
 * reader alive), the readers' mark low and high, and one claim of the epoch
 * when it began, which holds back all writers have unlinked since, moved to
 * another slot every 20 ms and rewritten with other high bits each time. */
static void writer_harrier(const char *where, struct shared *s)
{
    struct ctl_header *c;
    char *rseg;
    reader_parts(where, &c, &rseg);
    struct client_slot *slots = (struct client_slot *)(rseg + c->clients_off);
    struct reader_header *rh = (struct reader_header *)rseg;
    uint32_t per = c->sems_per_set;
    unsigned short *ones = calloc(per, sizeof *ones);
    for (uint32_t j = 0; j < per; j++)
        ones[j] = 1;
    atomic_fetch_add(&s->ready, 1);
    uint64_t e0 = atomic_load(&c->epoch);
    for (uint64_t round = 1; !atomic_load(&s->stop); round++) {
        for (uint32_t k = 0; k < SEM_SETS_MAX; k++) {
            if (c->rsem_ids[k] < 0)
                continue;
            union semun_arg arg = {.array = ones};
            semctl(c->rsem_ids[k], 0, SETALL, arg);
        }
        uint32_t at = (uint32_t)(round % c->max_clients);
        for (uint32_t i = 0; i < c->max_clients; i++)
            atomic_store(&slots[i].claim, 0);
        atomic_store(&slots[at].claim,
                     CLAIM_MAKE(e0, CLAIM_ACTIVE) + (round << 34));
        /* Low, to hide slots from scans; high, so that every slot is
         * scanned and the claim it moves is seen wherever it goes. */
        atomic_store(&rh->hwm, round % 2 ? 0 : c->max_clients);
        atomic_fetch_add(&s->attacks, 1);
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
    _exit(0);
}

static void child_harrier(void *arg)
{
    const struct attack_ctx *x = arg;
    writer_harrier(x->where, x->s);
}

static void die_at_point(const char *point)
{
    if (strcmp(point, "set:stored") == 0)
        raise(SIGKILL);
}

/* A writer that dies holding the write lock, in the middle of a set. */
static void child_dying_writer(void *arg)
{
    const struct attack_ctx *x = arg;
    struct shmkv *h;
    if (shmkv_open(x->where, 0, &h) != 0 || shmkv_readonly(h) != 0)
        _exit(1);
    shmkv_test_hook = die_at_point;
    shmkv_set(h, "dying", 5, "value", 5, 0, 0);
    _exit(2);
}

/* What a reader may write cannot keep writers out, hide a writer from the
 * lock's recovery, or hold writes up past the reader timeout: writers
 * open, a writer that died holding the lock is recovered, and every write
 * is done within a few reader timeouts. */
static void test_readers_cannot_stop_writers(void **state)
{
    (void)state;
    need_root();
    char where[32];
    struct shmkv *kv = store_make(0640, gid_r, where, sizeof where);
    struct shared *s = shared_map();
    struct attack_ctx x = {.where = where, .s = s};
    pid_t harrier = spawn(&acct_reader, child_harrier, &x);
    wait_count(&s->attacks, 3);
    /* A new writer gets a slot; a new reader does not (all its kind's
     * slots look taken). */
    struct shmkv *w, *r = NULL;
    assert_int_equal(shmkv_open(where, 0, &w), 0);
    assert_int_equal(shmkv_open(where, SHMKV_RDONLY, &r), SHMKV_ECLIENTS);
    /* A writer dies holding the lock; the next write recovers it. */
    pid_t dying = fork();
    assert_true(dying >= 0);
    if (dying == 0)
        child_dying_writer(&x);
    int status;
    assert_int_equal(waitpid(dying, &status, 0), dying);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    uint64_t recoveries = st.recoveries;
    char key[16], v[VAL_BYTES];
    uint64_t slowest = 0, end = now_ms() + 1500;
    for (unsigned n = 0; now_ms() < end; n++) {
        int kl = snprintf(key, sizeof key, "k%u", n % NKEYS);
        value_make(v, n % NKEYS, n);
        set_timed(w, key, (size_t)kl, v, sizeof v, &slowest);
    }
    assert_int_equal(shmkv_stats(kv, &st), 0);
    atomic_store(&s->stop, 1);
    assert_int_equal(reap(harrier), 0);
    print_message("a reader harrying writers (%" PRIu64
                  " rounds): writers open, %" PRIu64
                  " recovery, slowest write %" PRIu64
                  " ms (reader timeout 200 ms), %" PRIu64 " revocations\n",
                  atomic_load(&s->attacks), st.recoveries - recoveries, slowest,
                  st.revocations);
    assert_int_equal(st.recoveries - recoveries, 1);
    assert_true(slowest < 1000);
    shmkv_close(w);
    struct shmkv_check_report report;
    assert_int_equal(shmkv_check(kv, &report), 0);
    munmap(s, sizeof *s);
    test_destroy(kv, where);
}

/* Claims written back as soon as a writer revokes them: one of the epoch
 * when it began, and one 2^31 + 1 epochs after it (before and after every
 * epoch on 32 bits), with other high bits each time; their slots alive. */
static void claim_rewriter(const char *where, struct shared *s)
{
    struct ctl_header *c;
    char *rseg;
    reader_parts(where, &c, &rseg);
    struct client_slot *slots = (struct client_slot *)(rseg + c->clients_off);
    struct reader_header *rh = (struct reader_header *)rseg;
    for (uint32_t k = 1; k <= 2; k++)
        semctl(c->rsem_ids[k / c->sems_per_set], (int)(k % c->sems_per_set),
               SETVAL, 1);
    uint64_t e0 = atomic_load(&c->epoch);
    uint64_t a = CLAIM_MAKE(e0, CLAIM_ACTIVE);
    atomic_fetch_add(&s->ready, 1);
    for (uint64_t n = 0; !atomic_load(&s->stop); n++) {
        if (atomic_load(&rh->hwm) < 3)
            atomic_store(&rh->hwm, 3);
        if (atomic_load(&slots[1].claim) != a) {
            atomic_store(&slots[1].claim, a);
            atomic_fetch_add(&s->attacks, 1);
        }
        uint64_t cb = atomic_load(&slots[2].claim);
        if (CLAIM_MODE(cb) != CLAIM_ACTIVE && atomic_load(&c->epoch) >= e0 + 3)
            atomic_store(&slots[2].claim,
                         CLAIM_MAKE((uint64_t)(uint32_t)(e0 + 0x80000001u) |
                                        ((n & 0xfffffff) << 32),
                                    CLAIM_ACTIVE));
    }
    _exit(0);
}

static void child_rewriter(void *arg)
{
    const struct attack_ctx *x = arg;
    claim_rewriter(x->where, x->s);
}

/* However fast a reader writes claims back, a write waits at most about
 * the reader timeout, and none fails. */
static void test_rewritten_claims(void **state)
{
    (void)state;
    need_root();
    char where[32];
    struct shmkv *kv = store_make(0640, gid_r, where, sizeof where);
    struct shared *s = shared_map();
    struct attack_ctx x = {.where = where, .s = s};
    pid_t rewriter = spawn(&acct_reader, child_rewriter, &x);
    wait_count(&s->ready, 1);
    static char v[2000];
    memset(v, 'x', sizeof v);
    uint64_t slowest = 0, end = now_ms() + 2000;
    unsigned n;
    for (n = 0; now_ms() < end; n++) {
        char key[16];
        int kl = snprintf(key, sizeof key, "k%u", n % 200);
        set_timed(kv, key, (size_t)kl, v, 100 + n % 1800, &slowest);
    }
    atomic_store(&s->stop, 1);
    assert_int_equal(reap(rewriter), 0);
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    print_message("claims written back %" PRIu64
                  " times: %u writes, slowest %" PRIu64
                  " ms (reader timeout 200 ms), %" PRIu64 " revocations\n",
                  atomic_load(&s->attacks), n, slowest, st.revocations);
    assert_true(slowest < 1000);
    assert_true(st.revocations > 0);
    struct shmkv_check_report report;
    assert_int_equal(shmkv_check(kv, &report), 0);
    munmap(s, sizeof *s);
    test_destroy(kv, where);
}

/* ---- reader chunks: readers of one user kept from another's ---- */

/* A registrar (testutil.h), killed with the other children. */
static pid_t registrar_start(struct shmkv *owner, const char *where, char *path,
                             size_t cap)
{
    pid_t pid = test_registrar_start(owner, where, path, cap);
    assert_true(pid > 0);
    if (nkids < sizeof kids / sizeof kids[0])
        kids[nkids++] = pid;
    return pid;
}

/* An honest reader as above, that must have its slot in a chunk of its
 * own user's. */
static void child_honest_chunked(void *arg)
{
    const struct attack_ctx *x = arg;
    struct shmkv *h;
    if (shmkv_open(x->where, 0, &h) != 0 || h->chunk_seg == NULL)
        _exit(4);
    shmkv_close(h);
    honest_reader(x->where, x->s);
}

/* Whether this process can reach another user's chunk: attach it either
 * way, change its semaphores, or remove either. Counts each try in
 * s->attacks, and each success as a breach in s->silent_wrong. */
static void reach_other_chunks(const struct ctl_header *c, struct shared *s)
{
    const struct reader_chunk *t =
        (const struct reader_chunk *)((const char *)c + c->chunks_off);
    for (uint64_t k = 0; k < c->chunk_count; k++) {
        if (atomic_load(&t[k].state) != CHUNK_ACTIVE || t[k].uid == getuid())
            continue;
        atomic_fetch_add(&s->attacks, 1);
        void *p = shmat(atomic_load(&t[k].shmid), NULL, 0);
        void *q = shmat(atomic_load(&t[k].shmid), NULL, SHM_RDONLY);
        bool sem = semctl(atomic_load(&t[k].semid), 0, SETVAL, 0) == 0;
        bool gone = shmctl(atomic_load(&t[k].shmid), IPC_RMID, NULL) == 0 ||
                    semctl(atomic_load(&t[k].semid), 0, IPC_RMID) == 0;
        if (p != (void *)-1 || q != (void *)-1 || sem || gone)
            atomic_fetch_add(&s->silent_wrong, 1);
        if (p != (void *)-1)
            shmdt(p);
        if (q != (void *)-1)
            shmdt(q);
    }
}

/* The scribbler, with a chunk of its own: random bytes over it and its
 * semaphores too, and each round a try at every other user's chunk. */
static void chunk_scribbler(const char *where, struct shared *s, uint64_t seed)
{
    struct shmkv *h;
    if (shmkv_open(where, 0, &h) != 0 || h->chunk_seg == NULL)
        _exit(20);
    struct ctl_header *c;
    char *rseg;
    reader_parts(where, &c, &rseg);
    uint64_t bytes = c->reader_bytes;
    uint32_t per = c->sems_per_set;
    unsigned short *vals =
        calloc(per > CHUNK_SLOTS ? per : CHUNK_SLOTS, sizeof *vals);
    uint64_t x = seed | 1;
    atomic_fetch_add(&s->ready, 1);
    for (unsigned pass = 0; !atomic_load(&s->stop); pass++) {
        for (uint64_t off = 0; off + 8 <= bytes; off += 8) {
            uint64_t r = rng_next(&x);
            memcpy(rseg + off, &r, 8);
        }
        uint64_t e = atomic_load(&c->epoch);
        struct client_slot *mine = (struct client_slot *)h->chunk_seg;
        for (uint32_t i = 0; i < CHUNK_SLOTS; i++) {
            if (pass % 2 == 0) {
                uint64_t r = rng_next(&x);
                memcpy(&mine[i], &r, sizeof r);
            } else {
                atomic_store(&mine[i].claim,
                             CLAIM_MAKE(e - rng_next(&x) % 4, CLAIM_ACTIVE));
            }
        }
        for (uint32_t j = 0; j < CHUNK_SLOTS; j++)
            vals[j] = (unsigned short)(rng_next(&x) % 3);
        union semun_arg arg = {.array = vals};
        semctl(h->chunk_semid, 0, SETALL, arg);
        for (uint32_t k = 0; k < SEM_SETS_MAX; k++) {
            if (c->rsem_ids[k] < 0)
                continue;
            for (uint32_t j = 0; j < per; j++)
                vals[j] = (unsigned short)(rng_next(&x) % 3);
            semctl(c->rsem_ids[k], 0, SETALL, arg);
        }
        reach_other_chunks(c, s);
        atomic_fetch_add(&s->scribbles, 1);
    }
    _exit(0);
}

static void child_chunk_scribbler(void *arg)
{
    const struct attack_ctx *x = arg;
    chunk_scribbler(x->where, x->s, x->seed);
}

/* A reader opening while the scribbler runs: 0 if it opened, got a chunk
 * slot and read a key. */
static void child_late_reader(void *arg)
{
    const struct attack_ctx *x = arg;
    struct shmkv *h;
    if (shmkv_open(x->where, 0, &h) != 0)
        _exit(1);
    if (h->chunk_seg == NULL)
        _exit(2);
    char buf[VAL_BYTES];
    size_t len;
    if (shmkv_get_copy(h, "k1", 2, buf, sizeof buf, &len) != 0)
        _exit(3);
    shmkv_close(h);
    _exit(0);
}

static void test_readers_isolated_by_user(void **state)
{
    (void)state;
    need_root();
    char where[32], path[108];
    struct shmkv *kv = store_make(0640, gid_r, where, sizeof where);
    pid_t registrar = registrar_start(kv, where, path, sizeof path);
    uint64_t seed = test_seed("isolated readers");
    struct shared *s = shared_map();
    char v[VAL_BYTES], key[16];
    for (unsigned i = 0; i < NKEYS; i++) {
        int kl = snprintf(key, sizeof key, "k%u", i);
        value_make(v, i, 0);
        assert_int_equal(shmkv_set(kv, key, (size_t)kl, v, sizeof v, 0, 0), 0);
    }
    struct attack_ctx x = {.where = where, .s = s, .seed = seed};
    pid_t honest = spawn(&acct_reader2, child_honest_chunked, &x);
    wait_count(&s->ready, 1);
    pid_t attacker = spawn(&acct_reader, child_chunk_scribbler, &x);
    wait_count(&s->ready, 2);
    /* The writer, with a new reader of the honest one's user opening
     * halfway. */
    pid_t late = -1;
    uint64_t slowest = 0, end = now_ms() + 2000, half = now_ms() + 1000;
    for (uint32_t gen = 1; now_ms() < end; gen++) {
        for (unsigned i = 0; i < NKEYS; i++) {
            int kl = snprintf(key, sizeof key, "k%u", i);
            value_make(v, i, gen);
            set_timed(kv, key, (size_t)kl, v, sizeof v, &slowest);
        }
        if (late < 0 && now_ms() >= half)
            late = spawn(&acct_reader2, child_late_reader, &x);
    }
    atomic_store(&s->stop, 1);
    int late_rc = late > 0 ? reap(late) : -1;
    int honest_rc = reap(honest), attacker_rc = reap(attacker);
    kill(registrar, SIGKILL);
    reap(registrar);
    unlink(path);
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    print_message("reader chunks: honest reader %" PRIu64 " sections, %" PRIu64
                  " stale; scribbler %" PRIu64 " rounds, %" PRIu64
                  " tries at the other's chunk, %" PRIu64
                  " reached it or read changed bytes; %" PRIu64
                  " writes, slowest %" PRIu64 " ms, %" PRIu64
                  " revocations; late reader %d\n",
                  atomic_load(&s->sections), atomic_load(&s->stale),
                  atomic_load(&s->scribbles), atomic_load(&s->attacks),
                  atomic_load(&s->silent_wrong), st.sets, slowest,
                  st.revocations, late_rc);
    assert_int_equal(honest_rc, 0);
    assert_int_equal(attacker_rc, 0);
    assert_int_equal(late_rc, 0);
    assert_true(atomic_load(&s->sections) > 0);
    assert_true(atomic_load(&s->attacks) > 0);
    assert_int_equal(atomic_load(&s->silent_wrong), 0);
    assert_int_equal(atomic_load(&s->stale), 0);
    assert_true(slowest < 2000);
    struct shmkv_check_report r;
    assert_int_equal(shmkv_check(kv, &r), 0);
    munmap(s, sizeof *s);
    test_destroy(kv, where);
}

static bool shm_exists(int shmid)
{
    struct shmid_ds ds;
    return shmctl(shmid, IPC_STAT, &ds) == 0;
}

static bool sem_exists(int semid)
{
    struct semid_ds sd;
    union semun_arg arg = {.buf = &sd};
    return semctl(semid, 0, IPC_STAT, arg) == 0;
}

struct chunk_ctx {
    const char *where;
    int shmid, semid; /* another user's chunk */
};

/* As the chunk's user: a read-only handle takes its slot there. */
static void child_chunk_user(void *arg)
{
    const struct chunk_ctx *x = arg;
    struct shmkv *h;
    if (shmkv_open(x->where, 0, &h) != 0 || h->chunk_seg == NULL)
        _exit(1);
    shmkv_close(h);
    _exit(0);
}

/* As another reader: the chunk is out of reach. */
static void child_chunk_outsider(void *arg)
{
    const struct chunk_ctx *x = arg;
    if (shmat(x->shmid, NULL, 0) != (void *)-1 || errno != EACCES)
        _exit(1);
    if (shmat(x->shmid, NULL, SHM_RDONLY) != (void *)-1 || errno != EACCES)
        _exit(2);
    if (semctl(x->semid, 0, SETVAL, 1) != -1 || errno != EACCES)
        _exit(3);
    struct sembuf op = {.sem_num = 0, .sem_op = 1, .sem_flg = IPC_NOWAIT};
    if (semop(x->semid, &op, 1) != -1 || errno != EACCES)
        _exit(4);
    _exit(0);
}

/* As the chunk's user: removes it, which its user may. */
static void child_chunk_remover(void *arg)
{
    const struct chunk_ctx *x = arg;
    _exit(shmctl(x->shmid, IPC_RMID, NULL) == 0 &&
                  semctl(x->semid, 0, IPC_RMID) == 0
              ? 0
              : 1);
}

/* What the owner makes: objects it created, handed to the asking user
 * and the store's group with the chunk's mode, which that user's readers
 * use and another's cannot touch; a user holds at most half the table; a
 * chunk its user removed frees its entry; and removing the store removes
 * the chunks. */
static void test_chunk_registration(void **state)
{
    (void)state;
    need_root();
    char where[32];
    struct shmkv *kv = store_make(0640, gid_r, where, sizeof where);
    /* Named, so that read-only handles look at the table; nothing
     * listens: a handle with no chunk uses the reader segment. */
    assert_int_equal(shmkv_set_registrar(kv, "/nonexistent/shmkv.sock"), 0);
    unsigned index, first;
    assert_int_equal(shmkv_add_readers_chunk(kv, acct_reader.uid, &first), 0);
    index = first;
    const struct reader_chunk *t = chunk_table(kv);
    struct chunk_ctx x = {.where = where,
                          .shmid = atomic_load(&t[index].shmid),
                          .semid = atomic_load(&t[index].semid)};
    struct shmid_ds ds;
    assert_int_equal(shmctl(x.shmid, IPC_STAT, &ds), 0);
    assert_int_equal(ds.shm_perm.cuid, 0);
    assert_int_equal(ds.shm_perm.uid, acct_reader.uid);
    assert_int_equal(ds.shm_perm.gid, gid_r);
    assert_int_equal(ds.shm_perm.mode & 0777, chunk_mode(0640));
    assert_int_equal(ds.shm_segsz, CHUNK_BYTES);
    assert_int_equal(reap(spawn(&acct_reader, child_chunk_user, &x)), 0);
    assert_int_equal(reap(spawn(&acct_reader2, child_chunk_outsider, &x)), 0);
    /* Half the table at most for one user. */
    uint64_t n = kv->ctl->chunk_count;
    unsigned made = 0;
    int rc = 0;
    while (made < 64 &&
           (rc = shmkv_add_readers_chunk(kv, acct_reader2.uid, &index)) == 0)
        made++;
    assert_int_equal(rc, SHMKV_ECLIENTS);
    assert_int_equal(made, n / 2);
    /* Once its user removed it, the first chunk's entry is free again. */
    assert_int_equal(reap(spawn(&acct_reader, child_chunk_remover, &x)), 0);
    assert_int_equal(shmkv_add_readers_chunk(kv, acct_writer.uid, &index), 0);
    assert_int_equal(index, first);
    /* Every chunk goes with the store. */
    int ids[2 * 64];
    unsigned nids = 0;
    for (uint64_t k = 0; k < n && nids + 2 <= 2 * 64; k++) {
        if (atomic_load(&t[k].state) != CHUNK_ACTIVE)
            continue;
        ids[nids++] = atomic_load(&t[k].shmid);
        ids[nids++] = atomic_load(&t[k].semid);
    }
    assert_int_equal(nids, 2 * (made + 1));
    test_destroy(kv, where);
    for (unsigned i = 0; i < nids; i += 2) {
        assert_false(shm_exists(ids[i]));
        assert_false(sem_exists(ids[i + 1]));
    }
}

/* A store owned by a user, not root: its chunks' user gives them mode 0,
 * so that the owner can no longer look at them; asked again, the owner
 * reuses the entry and removes the old pair, which as their creator it
 * may whatever their mode. pipe_out gets the chunk's ids; pipe_in says
 * when they are mode 0. */
struct owner_ctx {
    const char *where;
    int ids_fd, go_fd;
};

static void child_user_owner(void *arg)
{
    const struct owner_ctx *x = arg;
    test_record("pid %d", (int)getpid());
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.key = x->where;
    o.size_bytes = 1u << 20;
    o.mode = 0640;
    o.max_clients = 64; /* 2 chunk entries: 1 per user */
    struct shmkv *kv;
    if (shmkv_create(&o, &kv) != 0)
        _exit(1);
    unsigned index, again;
    if (shmkv_add_readers_chunk(kv, acct_reader.uid, &index) != 0)
        _exit(2);
    const struct reader_chunk *t = chunk_table(kv);
    int ids[2] = {atomic_load(&t[index].shmid), atomic_load(&t[index].semid)};
    char c;
    if (write(x->ids_fd, ids, sizeof ids) != (ssize_t)sizeof ids ||
        read(x->go_fd, &c, 1) != 1)
        _exit(3);
    /* Out of sight now: the entry is free, and its pair goes. */
    if (shmkv_add_readers_chunk(kv, acct_reader.uid, &again) != 0)
        _exit(4);
    if (again != index)
        _exit(5);
    shmkv_destroy(kv);
    _exit(0);
}

static void test_chunk_out_of_sight_removed(void **state)
{
    (void)state;
    need_root();
    const char *key = test_unique_key();
    char where[32];
    snprintf(where, sizeof where, "%s", key);
    if (test_store_count < TEST_MAX_STORES)
        snprintf(test_store_keys[test_store_count++], 32, "%s", where);
    int ids_pipe[2], go_pipe[2];
    assert_int_equal(pipe(ids_pipe), 0);
    assert_int_equal(pipe(go_pipe), 0);
    struct owner_ctx x = {
        .where = where, .ids_fd = ids_pipe[1], .go_fd = go_pipe[0]};
    pid_t owner = spawn(&acct_writer, child_user_owner, &x);
    int ids[2];
    assert_int_equal(read(ids_pipe[0], ids, sizeof ids), (ssize_t)sizeof ids);
    /* What the chunk's user may do (root stands in for it here). */
    struct shmid_ds ds;
    assert_int_equal(shmctl(ids[0], IPC_STAT, &ds), 0);
    assert_int_equal(ds.shm_perm.cuid, acct_writer.uid);
    assert_int_equal(ds.shm_perm.uid, acct_reader.uid);
    ds.shm_perm.mode = 0;
    assert_int_equal(shmctl(ids[0], IPC_SET, &ds), 0);
    struct semid_ds sd;
    union semun_arg arg = {.buf = &sd};
    assert_int_equal(semctl(ids[1], 0, IPC_STAT, arg), 0);
    sd.sem_perm.mode = 0;
    assert_int_equal(semctl(ids[1], 0, IPC_SET, arg), 0);
    assert_int_equal(write(go_pipe[1], "G", 1), 1);
    int rc = reap(owner);
    bool shm_left = shm_exists(ids[0]), sem_left = sem_exists(ids[1]);
    /* Whatever happened, nothing of it stays on the machine. */
    if (shm_left)
        shmctl(ids[0], IPC_RMID, NULL);
    if (sem_left)
        semctl(ids[1], 0, IPC_RMID);
    shmkv_remove(where);
    close(ids_pipe[0]);
    close(ids_pipe[1]);
    close(go_pipe[0]);
    close(go_pipe[1]);
    assert_int_equal(rc, 0);
    assert_false(shm_left);
    assert_false(sem_left);
}

/* As a reader: makes a chunk-sized segment anyone may use, and says its
 * id through the pipe; it stays until the parent removes it. */
static void child_foreign_segment(void *arg)
{
    int fd = *(const int *)arg;
    int id = shmget(IPC_PRIVATE, CHUNK_BYTES, IPC_CREAT | 0666);
    _exit(id >= 0 && write(fd, &id, sizeof id) == (ssize_t)sizeof id ? 0 : 1);
}

/* A chunk's id names another segment once its user removed it and
 * another took the id: writers attach only a segment the store's owner
 * made (a huge-page one would fault them), and readers likewise. */
static void test_chunk_foreign_segment_ignored(void **state)
{
    (void)state;
    need_root();
    char where[32];
    struct shmkv *kv = store_make(0640, gid_r, where, sizeof where);
    unsigned index;
    assert_int_equal(shmkv_add_readers_chunk(kv, acct_reader.uid, &index), 0);
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    assert_non_null(kv->chunk_maps[index].slots);
    int p[2];
    assert_int_equal(pipe(p), 0);
    assert_int_equal(reap(spawn(&acct_reader, child_foreign_segment, &p[1])),
                     0);
    int foreign;
    assert_int_equal(read(p[0], &foreign, sizeof foreign),
                     (ssize_t)sizeof foreign);
    close(p[0]);
    close(p[1]);
    /* What the id now names, as the table has it. */
    struct reader_chunk *t = (struct reader_chunk *)chunk_table(kv);
    int own = atomic_load(&t[index].shmid);
    atomic_store(&t[index].shmid, foreign);
    atomic_fetch_add(&kv->ctl->chunks_version, 1);
    assert_int_equal(shmkv_stats(kv, &st), 0);
    bool attached = kv->chunk_maps[index].slots != NULL;
    assert_int_equal(shmkv_set(kv, "k", 1, "v", 1, 0, 0), 0);
    atomic_store(&t[index].shmid, own);
    shmctl(foreign, IPC_RMID, NULL);
    assert_false(attached);
    test_destroy(kv, where);
}

/* A chunk's user removed its objects and the ids came round to another
 * user's chunk: giving that entry out again removes nothing of the other
 * chunk. (The table is set so here by hand; chunks being made keep
 * entries apart too.) */
static void test_chunk_recycled_id_spared(void **state)
{
    (void)state;
    need_root();
    char where[32];
    struct shmkv *kv = store_make(0640, gid_r, where, sizeof where);
    unsigned a, b, again;
    assert_int_equal(shmkv_add_readers_chunk(kv, acct_reader.uid, &a), 0);
    assert_int_equal(shmkv_add_readers_chunk(kv, acct_reader2.uid, &b), 0);
    struct reader_chunk *t = (struct reader_chunk *)chunk_table(kv);
    int bshm = atomic_load(&t[b].shmid), bsem = atomic_load(&t[b].semid);
    /* What the first chunk's user may do, and what the ids may become. */
    shmctl(atomic_load(&t[a].shmid), IPC_RMID, NULL);
    semctl(atomic_load(&t[a].semid), 0, IPC_RMID);
    atomic_store(&t[a].shmid, bshm);
    atomic_store(&t[a].semid, bsem);
    assert_int_equal(shmkv_add_readers_chunk(kv, acct_reader.uid, &again), 0);
    assert_int_equal(again, a);
    bool shm_left = shm_exists(bshm), sem_left = sem_exists(bsem);
    test_destroy(kv, where);
    assert_true(shm_left);
    assert_true(sem_left);
}

/* A user's further chunks leave a quarter of the table to users who
 * hold none: two users asking together cannot take every newcomer's
 * place. */
static void test_chunk_newcomers_kept(void **state)
{
    (void)state;
    need_root();
    char where[32];
    struct shmkv *kv = store_make(0640, gid_r, where, sizeof where);
    uint64_t n = kv->ctl->chunk_count;
    unsigned index, first = 0, second = 0;
    while (first < n &&
           shmkv_add_readers_chunk(kv, acct_reader.uid, &index) == 0)
        first++;
    while (second < n &&
           shmkv_add_readers_chunk(kv, acct_reader2.uid, &index) == 0)
        second++;
    assert_non_null(strstr(shmkv_last_error(), "kept for users who hold none"));
    unsigned newcomers = 0;
    uid_t others[] = {acct_writer.uid, acct_outsider.uid};
    for (size_t i = 0; i < 2; i++)
        newcomers += shmkv_add_readers_chunk(kv, others[i], &index) == 0;
    print_message("chunk table of %llu: %u for one user, %u for a second, "
                  "%u of 2 newcomers served\n",
                  (unsigned long long)n, first, second, newcomers);
    test_destroy(kv, where);
    assert_int_equal(first, n / 2);
    assert_int_equal(second, n / 2 - n / 4);
    assert_int_equal(newcomers, 2);
}

/* A chunk's user fakes 64 dead readers inside their sections (pids and
 * open claims, semaphores at 0), over and over: each is counted, but a
 * handle logs at most 10 of them a second as events, so that they do
 * not push other events out of the ring. */
static void test_fake_dead_readers_logged_sparingly(void **state)
{
    (void)state;
    need_root();
    char where[32];
    struct shmkv *kv = store_make(0640, gid_r, where, sizeof where);
    unsigned index;
    assert_int_equal(shmkv_add_readers_chunk(kv, acct_reader.uid, &index), 0);
    const struct reader_chunk *t = chunk_table(kv);
    struct client_slot *slots = shmat(atomic_load(&t[index].shmid), NULL, 0);
    assert_true(slots != (void *)-1);
    struct shmkv_stats st0, st1;
    assert_int_equal(shmkv_stats(kv, &st0), 0);
    uint64_t cursor = 0, lost = 0;
    struct shmkv_event ev[64];
    while (shmkv_events(kv, &cursor, ev, 64, &lost) > 0)
        ;
    for (int round = 0; round < 3; round++) {
        for (uint32_t i = 0; i < CHUNK_SLOTS; i++) {
            atomic_store(&slots[i].pid, 40000 + (int32_t)i);
            atomic_store(
                &slots[i].claim,
                CLAIM_MAKE(atomic_load(&kv->ctl->epoch), CLAIM_ACTIVE));
        }
        assert_int_equal(shmkv_maintain(kv), 0);
    }
    shmdt(slots);
    assert_int_equal(shmkv_stats(kv, &st1), 0);
    int dead_events = 0, got;
    while ((got = shmkv_events(kv, &cursor, ev, 64, &lost)) > 0)
        for (int i = 0; i < got; i++)
            dead_events += ev[i].type == SHMKV_EVENT_DEAD_READER;
    print_message("%llu fake dead readers counted, %d logged as events\n",
                  (unsigned long long)(st1.dead_readers - st0.dead_readers),
                  dead_events);
    test_destroy(kv, where);
    assert_int_equal(st1.dead_readers - st0.dead_readers, 3 * CHUNK_SLOTS);
    assert_true(dead_events <= 10);
}

static int write_proc(const char *path, int value)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    int rc = fprintf(f, "%d\n", value) > 0 ? 0 : -1;
    return fclose(f) == 0 ? rc : -1;
}

/* In an IPC namespace of its own, where the next ids can be set: a chunk's
 * user removes its objects, a writer looks (and fails to attach), and the
 * ids come round to the next chunk made, for another user, in the same
 * entry. The new objects must stay, and the writer must attach them.
 * Exit 0, or the number of the check that failed; 77 if the namespace or
 * the id settings are refused. */
static int recycled_into_same_entry(void)
{
    if (unshare(CLONE_NEWIPC) != 0 ||
        access("/proc/sys/kernel/shm_next_id", W_OK) != 0)
        return 77;
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.key = "key:0x5b00fffe"; /* this namespace's own */
    o.size_bytes = 1u << 20;
    o.mode = 0640;
    struct shmkv *kv, *w;
    if (shmkv_create(&o, &kv) != 0 || shmkv_open(o.key, 0, &w) != 0)
        return 1;
    unsigned a, b;
    if (shmkv_add_readers_chunk(kv, acct_reader.uid, &a) != 0)
        return 2;
    const struct reader_chunk *t = chunk_table(kv);
    int shm = atomic_load(&t[a].shmid), sem = atomic_load(&t[a].semid);
    shmctl(shm, IPC_RMID, NULL);
    semctl(sem, 0, IPC_RMID);
    struct shmkv_stats st;
    if (shmkv_stats(w, &st) != 0 || w->chunk_maps == NULL ||
        w->chunk_maps[a].slots != NULL)
        return 3;
    if (write_proc("/proc/sys/kernel/shm_next_id", shm) != 0 ||
        write_proc("/proc/sys/kernel/sem_next_id", sem) != 0)
        return 77;
    if (shmkv_add_readers_chunk(kv, acct_reader2.uid, &b) != 0)
        return 4;
    if (b != a || atomic_load(&t[b].shmid) != shm ||
        atomic_load(&t[b].semid) != sem)
        return 5; /* the ids did not come round as set */
    if (!shm_exists(shm) || !sem_exists(sem))
        return 6;
    if (shmkv_stats(w, &st) != 0 || w->chunk_maps[b].slots == NULL)
        return 7;
    shmkv_close(w);
    shmkv_destroy(kv);
    return 0;
}

static void test_chunk_ids_come_round(void **state)
{
    (void)state;
    need_root();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(recycled_into_same_entry());
    int rc = reap(pid);
    if (rc == 77) {
        print_message("no IPC namespace or settable next ids here: skipped\n");
        skip();
    }
    assert_int_equal(rc, 0);
}

/* One writer sees a reader's chunk and records its claim; another
 * cannot look at the chunk (as when its user hid it) and reuses memory
 * the reader's section holds. The second writer's scans must say that
 * they found no claim there: the section ends SHMKV_ESTALE, never with
 * changed bytes and 0. */
static void test_chunk_unseen_ends_stale(void **state)
{
    (void)state;
    need_root();
    char where[32];
    struct shmkv *kv = store_make(0640, gid_r, where, sizeof where);
    assert_int_equal(shmkv_set_registrar(kv, "/nonexistent/shmkv.sock"), 0);
    unsigned index;
    assert_int_equal(shmkv_add_readers_chunk(kv, 0, &index), 0);
    char key[16], v[VAL_BYTES];
    for (unsigned i = 0; i < NKEYS; i++) {
        int kl = snprintf(key, sizeof key, "k%u", i);
        value_make(v, i, 0);
        assert_int_equal(shmkv_set(kv, key, (size_t)kl, v, sizeof v, 0, 0), 0);
    }
    struct shmkv *h, *blind;
    assert_int_equal(shmkv_open(where, SHMKV_RDONLY, &h), 0);
    assert_non_null(h->chunk_seg);
    assert_int_equal(shmkv_open(where, 0, &blind), 0);
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(blind, &st), 0);
    assert_non_null(blind->chunk_maps);
    assert_non_null(blind->chunk_maps[index].slots);
    /* This writer can no longer look at the chunk. */
    shmdt(blind->chunk_maps[index].slots);
    blind->chunk_maps[index].slots = NULL;

    assert_int_equal(shmkv_read_begin(h), 0);
    shmkv_val_t got;
    assert_int_equal(shmkv_get(h, "k0", 2, &got), 0);
    char copy[VAL_BYTES];
    memcpy(copy, got.data, sizeof copy);
    /* The seeing writer scans first (its claim found, too few writes to
     * wait for it or revoke it), then the blind one replaces everything
     * many times over. */
    for (uint32_t gen = 1; gen <= 200; gen++) {
        struct shmkv *w = gen <= 3 ? kv : blind;
        for (unsigned i = 0; i < NKEYS; i++) {
            int kl = snprintf(key, sizeof key, "k%u", i);
            value_make(v, i, gen);
            assert_int_equal(shmkv_set(w, key, (size_t)kl, v, sizeof v, 0, 0),
                             0);
        }
    }
    bool changed = memcmp(got.data, copy, sizeof copy) != 0;
    int rc = shmkv_read_end(h);
    print_message("a section across a writer blind to its chunk: bytes %s, "
                  "read_end %s\n",
                  changed ? "changed" : "unchanged", shmkv_strerror(rc));
    shmkv_close(h);
    shmkv_close(blind);
    test_destroy(kv, where);
    assert_true(rc == SHMKV_ESTALE || (rc == 0 && !changed));
    assert_true(changed); /* else the case was not made */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_group_reads),
        cmocka_unit_test(test_group_writes_all_read),
        cmocka_unit_test(test_scribbling_reader),
        cmocka_unit_test(test_claim_thief),
        cmocka_unit_test(test_readers_cannot_stop_writers),
        cmocka_unit_test(test_rewritten_claims),
        cmocka_unit_test(test_readers_isolated_by_user),
        cmocka_unit_test(test_chunk_registration),
        cmocka_unit_test(test_chunk_out_of_sight_removed),
        cmocka_unit_test(test_chunk_foreign_segment_ignored),
        cmocka_unit_test(test_chunk_recycled_id_spared),
        cmocka_unit_test(test_chunk_ids_come_round),
        cmocka_unit_test(test_chunk_unseen_ends_stale),
        cmocka_unit_test(test_chunk_newcomers_kept),
        cmocka_unit_test(test_fake_dead_readers_logged_sparingly),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
