/*
 * Helpers shared by the tests: a unique System V key per store, and a
 * registry of the stores a test created so that they are destroyed at exit,
 * on a failed assertion and on SIGINT/SIGTERM. A store created by the test
 * process is destroyed even when a forked child is what crashed.
 */
#ifndef SHMKV_TESTUTIL_H
#define SHMKV_TESTUTIL_H

#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "shmkv.h"

#define TEST_MAX_STORES 64

static char test_store_keys[TEST_MAX_STORES][32];
static int test_store_count;
static pid_t test_owner_pid;
static unsigned test_key_counter;

/* Removes every store this process registered that still exists. Runs in
 * the test process only, never in forked children. */
static void test_destroy_all(void)
{
    if (getpid() != test_owner_pid)
        return;
    for (int i = 0; i < test_store_count; i++) {
        if (test_store_keys[i][0] == '\0')
            continue;
        shmkv_remove(test_store_keys[i]);
        test_store_keys[i][0] = '\0';
    }
}

static void test_on_signal(int sig)
{
    test_destroy_all();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void test_cleanup_install(void)
{
    if (test_owner_pid == getpid())
        return;
    test_owner_pid = getpid();
    atexit(test_destroy_all);
    signal(SIGINT, test_on_signal);
    signal(SIGTERM, test_on_signal);
    signal(SIGABRT, test_on_signal);
    signal(SIGSEGV, test_on_signal);
}

#ifdef CMOCKA_H_
/* SHMKV_TEST_FILTER=test_name (a glob) runs only the tests it names. */
__attribute__((constructor)) static void test_filter_from_env(void)
{
    const char *filter = getenv("SHMKV_TEST_FILTER");
    if (filter != NULL && filter[0] != '\0')
        cmocka_set_test_filter(filter);
}
#endif

/* Tells tests/run.sh what this run made, so that it counts as leaked only
 * what is its own when other runs share the machine: a line appended to
 * the file SHMKV_TEST_RECORD names (nothing when it is unset). */
__attribute__((unused, format(printf, 1, 2))) static void
test_record(const char *fmt, ...)
{
    const char *path = getenv("SHMKV_TEST_RECORD");
    if (path == NULL || path[0] == '\0')
        return;
    FILE *f = fopen(path, "a");
    if (f == NULL)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fputc('\n', f);
    fclose(f);
}

/* A key spec unique to this process and call: "key:0x5bXXXXYY"; recorded
 * as this run's (with the process, which creates stores there). */
static const char *test_unique_key(void)
{
    static char spec[32];
    unsigned key = 0x5b000000u | ((unsigned)getpid() & 0xffffu) << 8 |
                   (test_key_counter++ & 0xffu);
    snprintf(spec, sizeof spec, "key:0x%08x", key);
    test_record("key 0x%08x", key);
    test_record("pid %d", (int)getpid());
    return spec;
}

/* Creates a store with the given options (key filled in), registered for
 * cleanup. Returns the shmkv_create result. */
__attribute__((unused)) static int test_create(struct shmkv_options *opts,
                                               struct shmkv **out)
{
    test_cleanup_install();
    const char *key = test_unique_key();
    opts->key = key;
    int rc = shmkv_create(opts, out);
    if (rc == 0 && test_store_count < TEST_MAX_STORES) {
        snprintf(test_store_keys[test_store_count], 32, "%s", key);
        test_store_count++;
    }
    return rc;
}

/* The seed of a test's random choices: SHMKV_TEST_SEED when set (to
 * replay a failure), else one from the pid and the clock. Printed either
 * way, so that a failing run says how to replay it. */
__attribute__((unused)) static uint64_t test_seed(const char *what)
{
    const char *env = getenv("SHMKV_TEST_SEED");
    uint64_t seed;
    if (env != NULL && env[0] != '\0') {
        seed = strtoull(env, NULL, 0);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = ((uint64_t)getpid() << 40) ^ (uint64_t)ts.tv_sec * 1000000007u ^
               (uint64_t)ts.tv_nsec;
    }
    printf("%s: seed %llu (replay: SHMKV_TEST_SEED=%llu)\n", what,
           (unsigned long long)seed, (unsigned long long)seed);
    fflush(stdout);
    return seed;
}

/* Destroys a store made by test_create and forgets it. */
__attribute__((unused)) static void test_destroy(struct shmkv *kv,
                                                 const char *key)
{
    for (int i = 0; i < test_store_count; i++)
        if (key && strcmp(test_store_keys[i], key) == 0)
            test_store_keys[i][0] = '\0';
    shmkv_destroy(kv);
}

/* ---- a registrar standing in for shmkvd's, for reader chunks ---- */

/* Reads the request of one connection (SHMKV.READERS, as RESP), makes a
 * chunk for the peer's user with the owner's handle h and answers as
 * shmkvd does. */
static void test_registrar_serve(struct shmkv *h, int fd)
{
    char buf[512];
    size_t got = 0;
    while (got < 24 && got < sizeof buf - 1) {
        ssize_t r = read(fd, buf + got, sizeof buf - 1 - got);
        if (r <= 0)
            return;
        got += (size_t)r;
    }
    buf[got] = '\0';
    struct ucred cr;
    socklen_t len = sizeof cr;
    char reply[600];
    unsigned index = 0;
    if (strcmp(buf, "*1\r\n$13\r\nSHMKV.READERS\r\n") != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0)
        snprintf(reply, sizeof reply, "-ERR bad request\r\n");
    else if (shmkv_add_readers_chunk(h, (unsigned)cr.uid, &index) != 0)
        snprintf(reply, sizeof reply, "-ERR %s\r\n", shmkv_last_error());
    else
        snprintf(reply, sizeof reply, ":%u\r\n", index);
    if (write(fd, reply, strlen(reply)) < 0)
        return;
}

/* Starts a registrar for the store at where, as its owner (root) does in
 * shmkvd: a child serving a socket at path (this process's), which it
 * names in the store through the owner's handle. Returns the child's pid,
 * which the caller kills, or -1 (path then names no socket). */
__attribute__((unused)) static pid_t test_registrar_start(struct shmkv *owner,
                                                          const char *where,
                                                          char *path,
                                                          size_t cap)
{
    snprintf(path, cap, "/tmp/shmkvt%d.sock", (int)getpid());
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        chmod(path, 0666) != 0 || listen(fd, 16) != 0) {
        close(fd);
        unlink(path);
        return -1;
    }
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        struct shmkv *h;
        if (shmkv_open(where, 0, &h) != 0)
            _exit(1);
        for (;;) {
            int c = accept(fd, NULL, NULL);
            if (c < 0)
                continue;
            test_registrar_serve(h, c);
            close(c);
        }
    }
    close(fd);
    if (pid < 0 || shmkv_set_registrar(owner, path) != 0) {
        if (pid > 0)
            kill(pid, SIGKILL);
        unlink(path);
        return -1;
    }
    return pid;
}

#endif
