/*
 * Unit tests for the segment layer (client/segment.c, client/store.c,
 * client/liveness.c): sizes rounded to whole pages, liveness as the kernel
 * reports it (a live, a killed, a zombie process, a fork of a live one),
 * and kernel limits reported as SHMKV_ELIMIT naming the sysctl. The
 * limits are lowered only inside a private IPC namespace of a child
 * process, never on the machine.
 */
#include <errno.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "internal.h"
#include "testutil.h"

static void test_sizes_are_whole_pages(void **state)
{
    (void)state;
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = (1u << 20) + 1; /* not a page multiple */
    struct shmkv *kv;
    assert_int_equal(test_create(&o, &kv), 0);
    long page = sysconf(_SC_PAGESIZE);
    struct shmid_ds ds;
    assert_int_equal(shmctl(kv->ctl_shmid, IPC_STAT, &ds), 0);
    assert_int_equal(ds.shm_segsz % (size_t)page, 0);
    assert_int_equal(shmctl(kv->data_shmid, IPC_STAT, &ds), 0);
    assert_int_equal(ds.shm_segsz % (size_t)page, 0);
    assert_true(ds.shm_segsz >= o.size_bytes);
    assert_int_equal(kv->ctl->page_bytes, (uint64_t)page);
    /* Permission bits as asked. */
    assert_int_equal(ds.shm_perm.mode & 0777, 0600);
    test_destroy(kv, NULL);
}

static void test_bad_sizes_refused(void **state)
{
    (void)state;
    struct shmkv_options o;
    shmkv_options_init(&o);
    struct shmkv *kv = NULL;
    o.size_bytes = (1u << 20) - 1;
    assert_int_equal(test_create(&o, &kv), SHMKV_EINVAL);
    o.size_bytes = (64ull << 30) + 1;
    assert_int_equal(test_create(&o, &kv), SHMKV_EINVAL);
    shmkv_options_init(&o);
    o.mode = 01777;
    assert_int_equal(test_create(&o, &kv), SHMKV_EINVAL);
    shmkv_options_init(&o);
    o.max_entries = 1u << 30; /* index larger than the store */
    assert_int_equal(test_create(&o, &kv), SHMKV_EINVAL);
    assert_null(kv);
}

/* Whether the process of writers' slot i is alive. */
static bool writer_alive(const struct ctl_header *c, uint32_t i)
{
    return liveness_alive(c, LIVE_WRITER, i);
}

/* Waits up to 2 s for slot i's process to be reported dead. */
static bool becomes_dead(const struct ctl_header *c, uint32_t i)
{
    for (int n = 0; n < 400; n++) {
        if (!liveness_alive(c, LIVE_WRITER, i))
            return true;
        usleep(5000);
    }
    return false;
}

static void test_liveness_is_the_kernels(void **state)
{
    (void)state;
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = 1u << 20;
    struct shmkv *kv;
    assert_int_equal(test_create(&o, &kv), 0);
    const char *key = o.key;
    const struct ctl_header *c = kv->ctl;
    assert_true(writer_alive(c, kv->slot_index));
    assert_true(liveness_alive(c, LIVE_WRITER, liveness_owner_index(c)));

    /* A child's handle is alive while it runs, dead once it is killed,
     * already while it is an unreaped zombie. */
    int to_parent[2];
    assert_int_equal(pipe(to_parent), 0);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        struct shmkv *h;
        if (shmkv_open(key, 0, &h) != 0)
            _exit(1);
        uint32_t index = h->slot_index;
        if (write(to_parent[1], &index, sizeof index) != sizeof index)
            _exit(1);
        for (;;)
            pause();
    }
    uint32_t index;
    assert_int_equal(read(to_parent[0], &index, sizeof index), sizeof index);
    assert_true(index != kv->slot_index);
    usleep(20000);
    assert_true(writer_alive(c, index));
    assert_int_equal(kill(child, SIGKILL), 0);
    assert_true(becomes_dead(c, index));
    /* Its pid is still taken (a zombie): a pid says nothing. */
    assert_int_equal(kill(child, 0), 0);
    assert_int_equal(waitpid(child, NULL, 0), child);

    /* A handle's process forks: the child holds nothing of the parent's,
     * and its exit leaves the parent alive. */
    struct shmkv *h;
    assert_int_equal(shmkv_open(key, 0, &h), 0);
    child = fork();
    assert_true(child >= 0);
    if (child == 0)
        _exit(0);
    assert_int_equal(waitpid(child, NULL, 0), child);
    assert_true(writer_alive(c, h->slot_index));
    /* Closing gives the slot back. */
    uint32_t hi = h->slot_index;
    shmkv_close(h);
    assert_false(writer_alive(c, hi));
    /* A reader holds a reader semaphore, of a slot of its own kind. */
    assert_int_equal(shmkv_open(key, SHMKV_RDONLY, &h), 0);
    assert_false(h->slot_writer);
    assert_true(liveness_alive(c, LIVE_READER, h->slot_index));
    uint32_t ri = h->slot_index;
    shmkv_close(h);
    assert_false(liveness_alive(c, LIVE_READER, ri));

    /* The owner is alive: adopting the store is refused. */
    struct shmkv *adopter;
    assert_int_equal(shmkv_adopt(key, &adopter), SHMKV_EOWNED);
    close(to_parent[0]);
    close(to_parent[1]);
    test_destroy(kv, key);
}

/* In a child with its own IPC namespace: lower a limit, expect ELIMIT. */
static int limit_child(const char *sysctl, const char *value,
                       const char *expect_in_message)
{
    if (unshare(CLONE_NEWIPC) != 0)
        return 77;
    char path[128];
    snprintf(path, sizeof path, "/proc/sys/kernel/%s", sysctl);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return 77;
    fprintf(f, "%s\n", value);
    if (fclose(f) != 0)
        return 77;
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.key = "key:0x5b000001";
    o.size_bytes = 16u << 20;
    struct shmkv *kv = NULL;
    int rc = shmkv_create(&o, &kv);
    if (rc != SHMKV_ELIMIT) {
        fprintf(stderr, "%s=%s: got %s\n", sysctl, value, shmkv_strerror(rc));
        if (kv)
            shmkv_destroy(kv);
        return 1;
    }
    if (strstr(shmkv_last_error(), expect_in_message) == NULL) {
        fprintf(stderr, "message '%s' lacks '%s'\n", shmkv_last_error(),
                expect_in_message);
        return 1;
    }
    /* Nothing was left behind in the namespace. */
    struct shm_info info;
    if (shmctl(0, SHM_INFO, (struct shmid_ds *)&info) > 0 ||
        info.used_ids != 0) {
        fprintf(stderr, "segments left: %d\n", info.used_ids);
        return 1;
    }
    struct seminfo sinfo;
    if (semctl(0, 0, SEM_INFO, (struct seminfo *)&sinfo) > 0 ||
        sinfo.semusz != 0) {
        fprintf(stderr, "semaphore sets left: %d\n", sinfo.semusz);
        return 1;
    }
    return 0;
}

static void run_limit_case(const char *sysctl, const char *value,
                           const char *expect)
{
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0)
        _exit(limit_child(sysctl, value, expect));
    int status;
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) == 77) {
        print_message("cannot make an IPC namespace here: skipping %s\n",
                      sysctl);
        skip();
    }
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_limit_shmmax(void **state)
{
    (void)state;
    run_limit_case("shmmax", "1048576", "kernel.shmmax");
}

static void test_limit_shmall(void **state)
{
    (void)state;
    run_limit_case("shmall", "256", "kernel.shmall");
}

static void test_limit_shmmni(void **state)
{
    (void)state;
    /* One segment allowed: the control segment fits, the data does not. */
    run_limit_case("shmmni", "1", "kernel.shmmni");
}

static void test_limit_semmsl(void **state)
{
    (void)state;
    /* Eight semaphores a set: 1024 client slots would need 129 sets. */
    run_limit_case("sem", "8 1024000000 500 32000", "kernel.sem");
}

static void test_limit_semmni(void **state)
{
    (void)state;
    /* No semaphore set at all may be made. */
    run_limit_case("sem", "32000 1024000000 500 0", "kernel.sem");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sizes_are_whole_pages),
        cmocka_unit_test(test_bad_sizes_refused),
        cmocka_unit_test(test_liveness_is_the_kernels),
        cmocka_unit_test(test_limit_shmmax),
        cmocka_unit_test(test_limit_shmall),
        cmocka_unit_test(test_limit_shmmni),
        cmocka_unit_test(test_limit_semmsl),
        cmocka_unit_test(test_limit_semmni),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
