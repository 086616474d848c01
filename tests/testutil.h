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

#endif
