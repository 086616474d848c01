/*
 * Multi-process tests: one store shared by forked readers and writers that
 * run for a bounded time on one key space.
 *
 * Every value carries its key id, a sequence number, a payload of random
 * length and an XXH64 of all that, so a reader checks each value where it
 * lies in shared memory (zero-copy shmkv_get inside a read section, and
 * shmkv_get_copy): no torn value, no value of another key, no change to
 * a value while the section that returned it is open, and never an older
 * value for a key than one the same section saw before (writers go on
 * beside open sections).
 *
 * Most keys have one owning writer, which publishes every write it
 * completed in a small anonymous MAP_SHARED region: per key, the word
 * (seq << 1 | deleted) of its last completed operation (pub), and the same
 * word for the operation it is about to start (intent). A reader loads pub
 * before its read section begins and intent after it ends, which bounds
 * what the section may see:
 *   - a value's seq is at least pub's seq, and above it when pub is a
 *     delete (a deleted value never comes back, nor does an older one);
 *   - a value's seq is at most intent's seq (no value out of nowhere);
 *   - in a noeviction store, a key whose pub is a set is absent only if a
 *     newer operation had started (intent moved on).
 * The other keys are written and deleted by every writer, and a counter is
 * incremented by every process; its final value must be the exact sum.
 *
 * Children report through their exit status and counters in the shared
 * region; the parent waits with a bound, kills only its own children by
 * pid if they hang, then checks the store (shmkv_check) and its stats
 * against the children's counts. A second case runs the same load on an
 * lru store small enough that eviction runs concurrently with the reads.
 */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <xxhash.h>

#include "testutil.h"

#define NKEYS 1024u
#define NOWNED 768u /* keys below this have one owning writer */
#define NWRITERS 2u
#define NREADERS 3u
#define NCHILDREN (NWRITERS + NREADERS)
#define BATCH_KEYS 8u
#define VHDR_BYTES 16u
#define VSUM_BYTES 8u
#define MAX_PAYLOAD 4096u
#define MAX_VALUE (VHDR_BYTES + MAX_PAYLOAD + VSUM_BYTES)
#define COUNTER_KEY "ctr"
#define HANG_MS 60000u /* a child still running this long after its end */

/* A published operation word: seq << 1 | deleted. */
#define OP_WORD(seq, del) (((uint64_t)(seq) << 1) | ((del) ? 1u : 0u))
#define OP_SEQ(w) ((w) >> 1)
#define OP_DEL(w) (((w)&1u) != 0)

struct child_counts {
    _Atomic uint64_t sets;   /* shmkv_set returned 0 */
    _Atomic uint64_t dels;   /* shmkv_del returned 0 */
    _Atomic uint64_t incrs;  /* shmkv_incr returned 0 */
    _Atomic uint64_t hits;   /* lookups that found the key */
    _Atomic uint64_t misses; /* lookups that did not */
    _Atomic uint64_t values_checked;
    _Atomic uint64_t sections;
    _Atomic int64_t incr_sum;
};

struct shared {
    _Atomic uint64_t pub[NKEYS];
    _Atomic uint64_t intent[NKEYS];
    _Atomic unsigned ready;
    _Atomic unsigned writers_done;
    _Atomic int go;
    _Atomic uint64_t end_ms;
    _Atomic uint64_t failures;
    _Atomic int failure_claimed;
    char first_failure[256];
    struct child_counts counts[NCHILDREN];
};

struct scenario {
    bool lru;
    uint64_t size_bytes;
    uint32_t max_payload;
    unsigned duration_ms;
    uint64_t min_writer_ops; /* each writer does at least this many */
};

/* ---- values ---- */

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Writes the value of (key_id, seq) with a payload of payload_len bytes
 * into buf; returns its length. */
static size_t value_make(char *buf, uint32_t key_id, uint64_t seq,
                         uint32_t payload_len)
{
    memcpy(buf, &key_id, 4);
    memcpy(buf + 4, &payload_len, 4);
    memcpy(buf + 8, &seq, 8);
    uint64_t x = mix64(((uint64_t)key_id << 40) ^ seq);
    for (uint32_t i = 0; i < payload_len; i++) {
        if (i % 8 == 0)
            x = mix64(x);
        buf[VHDR_BYTES + i] = (char)(x >> (8 * (i % 8)));
    }
    uint64_t sum = XXH64(buf, VHDR_BYTES + payload_len, 0);
    memcpy(buf + VHDR_BYTES + payload_len, &sum, VSUM_BYTES);
    return VHDR_BYTES + payload_len + VSUM_BYTES;
}

/* Checks a value where it lies. Returns NULL if it is whole and belongs
 * to key_id (its seq in *seq and its checksum in *sum), else what is
 * wrong. */
static const char *value_verify(const void *data, size_t len, uint32_t key_id,
                                uint64_t *seq, uint64_t *sum)
{
    const char *p = data;
    if (len < VHDR_BYTES + VSUM_BYTES)
        return "value shorter than its header";
    uint32_t id, payload_len;
    memcpy(&id, p, 4);
    memcpy(&payload_len, p + 4, 4);
    if ((size_t)payload_len + VHDR_BYTES + VSUM_BYTES != len)
        return "value length does not match its header (torn value)";
    uint64_t stored;
    memcpy(&stored, p + len - VSUM_BYTES, VSUM_BYTES);
    if (XXH64(p, len - VSUM_BYTES, 0) != stored)
        return "value checksum does not match (torn value)";
    if (id != key_id)
        return "value belongs to another key";
    memcpy(seq, p + 8, 8);
    *sum = stored;
    return NULL;
}

static int key_name(char *buf, uint32_t key_id)
{
    return snprintf(buf, 16, "k%04u", key_id);
}

/* ---- children ---- */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t rng_next(uint64_t *s)
{
    *s = mix64(*s);
    return *s;
}

struct child {
    struct shared *sh;
    struct child_counts *cnt;
    const struct scenario *sc;
    shmkv_t *kv;
    unsigned index;
    uint64_t rng;
    unsigned failures;
};

static void child_fail(struct child *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Records a failure; the first one in the whole run keeps its message. */
static void child_fail(struct child *c, const char *fmt, ...)
{
    c->failures++;
    atomic_fetch_add(&c->sh->failures, 1);
    int expected = 0;
    if (atomic_compare_exchange_strong(&c->sh->failure_claimed, &expected, 1)) {
        char msg[200];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        snprintf(c->sh->first_failure, sizeof c->sh->first_failure,
                 "child %u (pid %d): %s", c->index, (int)getpid(), msg);
    }
}

/* Writers run for the scenario's time and at least its number of
 * operations; readers run until every writer is done. */
static bool writer_running(struct child *c, uint64_t ops)
{
    return now_ms() < atomic_load(&c->sh->end_ms) ||
           ops < c->sc->min_writer_ops;
}

static bool reader_running(struct child *c)
{
    return now_ms() < atomic_load(&c->sh->end_ms) ||
           atomic_load(&c->sh->writers_done) < NWRITERS;
}

static void count_lookup(struct child *c, int rc)
{
    if (rc == 0 || rc == SHMKV_ENOBUFS)
        atomic_fetch_add(&c->cnt->hits, 1);
    else if (rc == SHMKV_ENOTFOUND)
        atomic_fetch_add(&c->cnt->misses, 1);
}

/* Checks a value of an owned key found by a section that began after pub
 * was loaded and ended before intent was. */
static void check_owned_seq(struct child *c, uint32_t key_id, uint64_t seq,
                            uint64_t pub, uint64_t intent)
{
    if (seq < OP_SEQ(pub) || (seq == OP_SEQ(pub) && OP_DEL(pub)))
        child_fail(c,
                   "k%04u: read seq %" PRIu64 " after seq %" PRIu64
                   " (%s) was published: stale value",
                   key_id, seq, OP_SEQ(pub), OP_DEL(pub) ? "delete" : "set");
    if (seq > OP_SEQ(intent))
        child_fail(c,
                   "k%04u: read seq %" PRIu64 " but the last write started "
                   "is seq %" PRIu64,
                   key_id, seq, OP_SEQ(intent));
}

/* Checks that an owned key found absent may be: in a noeviction store, its
 * last published set must have been followed by another operation. */
static void check_owned_absent(struct child *c, uint32_t key_id, uint64_t pub,
                               uint64_t intent)
{
    if (!c->sc->lru && !OP_DEL(pub) && OP_SEQ(intent) == OP_SEQ(pub))
        child_fail(c,
                   "k%04u: absent, but its set of seq %" PRIu64
                   " completed and nothing was written since",
                   key_id, OP_SEQ(pub));
}

static void int64_parse(struct child *c, const char *buf, size_t len,
                        int64_t *out)
{
    char text[32];
    if (len == 0 || len >= sizeof text) {
        child_fail(c, "counter of %zu bytes", len);
        return;
    }
    memcpy(text, buf, len);
    text[len] = '\0';
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (*end != '\0' || errno != 0) {
        child_fail(c, "counter is not a number: '%s'", text);
        return;
    }
    *out = v;
}

static void do_incr(struct child *c, int64_t delta, int64_t *last_result)
{
    int64_t result = 0;
    int rc =
        shmkv_incr(c->kv, COUNTER_KEY, strlen(COUNTER_KEY), delta, &result);
    if (rc != 0) {
        child_fail(c, "incr: %s", shmkv_strerror(rc));
        return;
    }
    atomic_fetch_add(&c->cnt->incrs, 1);
    atomic_fetch_add(&c->cnt->incr_sum, delta);
    /* Every delta is positive: this process sees the counter grow. */
    if (!c->sc->lru && result < *last_result + delta)
        child_fail(c, "incr returned %" PRId64 " after %" PRId64 " + %" PRId64,
                   result, *last_result, delta);
    *last_result = result;
}

static void writer_set(struct child *c, uint32_t key_id, uint64_t seq,
                       bool owned, char *buf)
{
    char key[16];
    int klen = key_name(key, key_id);
    uint32_t payload = (uint32_t)(rng_next(&c->rng) % (c->sc->max_payload + 1));
    size_t vlen = value_make(buf, key_id, seq, payload);
    if (owned)
        atomic_store_explicit(&c->sh->intent[key_id], OP_WORD(seq, false),
                              memory_order_release);
    int rc = shmkv_set(c->kv, key, (size_t)klen, buf, vlen, 0, 0);
    if (rc != 0) {
        child_fail(c, "set %s: %s", key, shmkv_strerror(rc));
        return;
    }
    atomic_fetch_add(&c->cnt->sets, 1);
    if (owned)
        atomic_store_explicit(&c->sh->pub[key_id], OP_WORD(seq, false),
                              memory_order_release);
}

/* Deletes a key; returns the shmkv_del result. */
static int writer_del(struct child *c, uint32_t key_id, uint64_t seq,
                      bool owned)
{
    char key[16];
    int klen = key_name(key, key_id);
    if (owned)
        atomic_store_explicit(&c->sh->intent[key_id], OP_WORD(seq, true),
                              memory_order_release);
    int rc = shmkv_del(c->kv, key, (size_t)klen);
    if (rc != 0 && rc != SHMKV_ENOTFOUND) {
        child_fail(c, "del %s: %s", key, shmkv_strerror(rc));
        return rc;
    }
    if (rc == 0)
        atomic_fetch_add(&c->cnt->dels, 1);
    if (owned)
        atomic_store_explicit(&c->sh->pub[key_id], OP_WORD(seq, true),
                              memory_order_release);
    return rc;
}

/* Reads an owned key back through shmkv_get_copy: the owner knows its
 * last operation on it. */
static void writer_read_back(struct child *c, uint32_t key_id, uint64_t last_op,
                             char *buf)
{
    char key[16];
    int klen = key_name(key, key_id);
    size_t vlen = 0;
    int rc = shmkv_get_copy(c->kv, key, (size_t)klen, buf, MAX_VALUE, &vlen);
    count_lookup(c, rc);
    if (rc == SHMKV_ENOTFOUND) {
        if (!OP_DEL(last_op) && !c->sc->lru)
            child_fail(c, "%s: own set of seq %" PRIu64 " is gone", key,
                       OP_SEQ(last_op));
        return;
    }
    if (rc != 0) {
        child_fail(c, "get_copy %s: %s", key, shmkv_strerror(rc));
        return;
    }
    uint64_t seq, sum;
    const char *why = value_verify(buf, vlen, key_id, &seq, &sum);
    if (why != NULL) {
        child_fail(c, "%s: %s", key, why);
        return;
    }
    atomic_fetch_add(&c->cnt->values_checked, 1);
    if (OP_DEL(last_op))
        child_fail(c, "%s: seq %" PRIu64 " present after own delete %" PRIu64,
                   key, seq, OP_SEQ(last_op));
    else if (seq != OP_SEQ(last_op))
        child_fail(c, "%s: seq %" PRIu64 ", own last set was %" PRIu64, key,
                   seq, OP_SEQ(last_op));
}

static void writer_run(struct child *c, unsigned wid)
{
    static uint64_t last[NKEYS];
    static char buf[MAX_VALUE];
    for (uint32_t k = 0; k < NKEYS; k++)
        last[k] = OP_WORD(0, true);
    uint64_t n = 0;
    int64_t last_incr = 0;
    for (uint64_t ops = 0; writer_running(c, ops); ops++) {
        uint64_t seq = ++n * NWRITERS + wid;
        /* An owned key: one whose id is wid modulo NWRITERS. */
        uint32_t owned =
            (uint32_t)(rng_next(&c->rng) % (NOWNED / NWRITERS)) * NWRITERS +
            wid;
        unsigned r = (unsigned)(rng_next(&c->rng) % 100);
        if (r < 50) {
            writer_set(c, owned, seq, true, buf);
            last[owned] = OP_WORD(seq, false);
        } else if (r < 70) {
            int rc = writer_del(c, owned, seq, true);
            /* Only this writer writes the key: in a noeviction store it
             * knows whether the key is there. */
            if (!c->sc->lru && rc == 0 && OP_DEL(last[owned]))
                child_fail(c, "del k%04u found a key deleted before", owned);
            if (!c->sc->lru && rc == SHMKV_ENOTFOUND && !OP_DEL(last[owned]))
                child_fail(c, "del k%04u: absent after own set %" PRIu64, owned,
                           OP_SEQ(last[owned]));
            last[owned] = OP_WORD(seq, true);
        } else if (r < 82) {
            writer_read_back(c, owned, last[owned], buf);
        } else if (r < 94) {
            uint32_t shared_key =
                NOWNED + (uint32_t)(rng_next(&c->rng) % (NKEYS - NOWNED));
            if (r < 90)
                writer_set(c, shared_key, seq, false, buf);
            else
                writer_del(c, shared_key, seq, false);
        } else {
            do_incr(c, 1 + (int64_t)(rng_next(&c->rng) % 5), &last_incr);
        }
    }
}

struct looked {
    uint32_t key_id;
    int rc;
    const void *data;
    size_t len;
    uint64_t seq;
    uint64_t sum;
    uint64_t pub;
};

/* One read section over BATCH_KEYS random keys, with the first key looked
 * up again at the end: values are checked in place, and again just before
 * the section ends (they must not change while it is open). */
static void reader_section(struct child *c)
{
    struct looked l[BATCH_KEYS];
    for (unsigned i = 0; i < BATCH_KEYS; i++) {
        l[i].key_id = (uint32_t)(rng_next(&c->rng) % NKEYS);
        l[i].pub = l[i].key_id < NOWNED
                       ? atomic_load_explicit(&c->sh->pub[l[i].key_id],
                                              memory_order_acquire)
                       : 0;
    }
    int rc = shmkv_read_begin(c->kv);
    if (rc != 0) {
        child_fail(c, "read_begin: %s", shmkv_strerror(rc));
        return;
    }
    atomic_fetch_add(&c->cnt->sections, 1);
    char key[16];
    for (unsigned i = 0; i < BATCH_KEYS; i++) {
        int klen = key_name(key, l[i].key_id);
        shmkv_val_t v;
        l[i].rc = shmkv_get(c->kv, key, (size_t)klen, &v);
        count_lookup(c, l[i].rc);
        if (l[i].rc == SHMKV_ENOTFOUND)
            continue;
        if (l[i].rc != 0) {
            child_fail(c, "get %s: %s", key, shmkv_strerror(l[i].rc));
            continue;
        }
        l[i].data = v.data;
        l[i].len = v.len;
        const char *why =
            value_verify(v.data, v.len, l[i].key_id, &l[i].seq, &l[i].sum);
        if (why != NULL) {
            child_fail(c, "%s in place: %s", key, why);
            l[i].rc = SHMKV_ECORRUPT;
            continue;
        }
        atomic_fetch_add(&c->cnt->values_checked, 1);
    }
    /* The same key again in the same section: writers go on beside the
     * section, so it may have changed, but (for a key with one writer,
     * whose seqs are in order) never back to an older value; the same
     * value has the same bytes (a compaction may have moved it, and the
     * first pointer still reads the old copy). */
    int klen = key_name(key, l[0].key_id);
    shmkv_val_t again;
    rc = shmkv_get(c->kv, key, (size_t)klen, &again);
    count_lookup(c, rc);
    if (rc != 0 && rc != SHMKV_ENOTFOUND) {
        child_fail(c, "get %s again: %s", key, shmkv_strerror(rc));
    } else if (rc == 0 && l[0].rc == 0) {
        uint64_t seq2 = 0, sum2 = 0;
        const char *why =
            value_verify(again.data, again.len, l[0].key_id, &seq2, &sum2);
        if (why != NULL)
            child_fail(c, "%s again, in place: %s", key, why);
        else if (l[0].key_id < NOWNED && seq2 < l[0].seq)
            child_fail(c,
                       "%s: looked up twice in one section: seq %" PRIu64
                       ", then the older %" PRIu64,
                       key, l[0].seq, seq2);
        else if (seq2 == l[0].seq &&
                 (again.len != l[0].len ||
                  memcmp(again.data, l[0].data, again.len) != 0))
            child_fail(c,
                       "%s: looked up twice in one section: the same "
                       "value, other bytes",
                       key);
    }
    for (unsigned i = 0; i < BATCH_KEYS; i++) {
        if (l[i].rc != 0)
            continue;
        uint64_t seq = 0, sum = 0;
        const char *why =
            value_verify(l[i].data, l[i].len, l[i].key_id, &seq, &sum);
        if (why != NULL || seq != l[i].seq || sum != l[i].sum)
            child_fail(c, "k%04u changed inside its read section: %s",
                       l[i].key_id, why ? why : "another value");
    }
    rc = shmkv_read_end(c->kv);
    if (rc != 0)
        child_fail(c, "read_end: %s", shmkv_strerror(rc));
    for (unsigned i = 0; i < BATCH_KEYS; i++) {
        if (l[i].key_id >= NOWNED ||
            (l[i].rc != 0 && l[i].rc != SHMKV_ENOTFOUND))
            continue;
        uint64_t intent = atomic_load_explicit(&c->sh->intent[l[i].key_id],
                                               memory_order_acquire);
        if (l[i].rc == 0)
            check_owned_seq(c, l[i].key_id, l[i].seq, l[i].pub, intent);
        else
            check_owned_absent(c, l[i].key_id, l[i].pub, intent);
    }
}

/* One key through shmkv_get_copy, with a buffer that is sometimes too
 * small (SHMKV_ENOBUFS must report the size needed). */
static void reader_copy(struct child *c, char *buf)
{
    uint32_t key_id = (uint32_t)(rng_next(&c->rng) % NKEYS);
    uint64_t pub = key_id < NOWNED ? atomic_load_explicit(&c->sh->pub[key_id],
                                                          memory_order_acquire)
                                   : 0;
    char key[16];
    int klen = key_name(key, key_id);
    size_t cap =
        (rng_next(&c->rng) & 1) ? MAX_VALUE : (size_t)(rng_next(&c->rng) % 64);
    size_t vlen = 0;
    int rc = shmkv_get_copy(c->kv, key, (size_t)klen, buf, cap, &vlen);
    count_lookup(c, rc);
    if (rc == SHMKV_ENOBUFS) {
        if (vlen <= cap)
            child_fail(c, "%s: ENOBUFS for %zu bytes with room for %zu", key,
                       vlen, cap);
        return;
    }
    if (rc == SHMKV_ENOTFOUND) {
        if (key_id < NOWNED)
            check_owned_absent(c, key_id, pub,
                               atomic_load_explicit(&c->sh->intent[key_id],
                                                    memory_order_acquire));
        return;
    }
    if (rc != 0) {
        child_fail(c, "get_copy %s: %s", key, shmkv_strerror(rc));
        return;
    }
    uint64_t seq, sum;
    const char *why = value_verify(buf, vlen, key_id, &seq, &sum);
    if (why != NULL) {
        child_fail(c, "%s copied: %s", key, why);
        return;
    }
    atomic_fetch_add(&c->cnt->values_checked, 1);
    if (key_id < NOWNED)
        check_owned_seq(
            c, key_id, seq, pub,
            atomic_load_explicit(&c->sh->intent[key_id], memory_order_acquire));
}

/* Reads the counter: every delta is positive, so it never goes down. */
static void reader_counter(struct child *c, int64_t *last_seen)
{
    char buf[32];
    size_t vlen = 0;
    int rc = shmkv_get_copy(c->kv, COUNTER_KEY, strlen(COUNTER_KEY), buf,
                            sizeof buf, &vlen);
    count_lookup(c, rc);
    if (rc == SHMKV_ENOTFOUND) {
        if (*last_seen != 0 && !c->sc->lru)
            child_fail(c, "counter vanished after %" PRId64, *last_seen);
        return;
    }
    if (rc != 0) {
        child_fail(c, "get_copy counter: %s", shmkv_strerror(rc));
        return;
    }
    int64_t v = 0;
    int64_parse(c, buf, vlen, &v);
    if (!c->sc->lru && v < *last_seen)
        child_fail(c, "counter went from %" PRId64 " down to %" PRId64,
                   *last_seen, v);
    *last_seen = v;
}

static void reader_run(struct child *c)
{
    static char buf[MAX_VALUE];
    int64_t counter_seen = 0, last_incr = 0;
    for (uint64_t n = 0; reader_running(c); n++) {
        reader_section(c);
        if (n % 4 == 0)
            reader_copy(c, buf);
        if (n % 16 == 0)
            reader_counter(c, &counter_seen);
        if (n % 64 == 0)
            do_incr(c, 1, &last_incr);
    }
}

static int child_main(struct shared *sh, const struct scenario *sc,
                      const char *where, unsigned index)
{
    struct child c = {.sh = sh,
                      .cnt = &sh->counts[index],
                      .sc = sc,
                      .index = index,
                      .rng = mix64((uint64_t)getpid() << 16 ^ index)};
    int rc = shmkv_open(where, 0, &c.kv);
    if (rc != 0) {
        child_fail(&c, "open: %s", shmkv_strerror(rc));
        if (index < NWRITERS)
            atomic_fetch_add(&sh->writers_done, 1);
        return 1;
    }
    atomic_fetch_add(&sh->ready, 1);
    uint64_t give_up = now_ms() + HANG_MS;
    while (!atomic_load(&sh->go)) {
        if (now_ms() > give_up) {
            child_fail(&c, "never told to start");
            if (index < NWRITERS)
                atomic_fetch_add(&sh->writers_done, 1);
            shmkv_close(c.kv);
            return 1;
        }
        usleep(200);
    }
    if (index < NWRITERS) {
        writer_run(&c, index);
        atomic_fetch_add(&sh->writers_done, 1);
    } else
        reader_run(&c);
    shmkv_close(c.kv);
    return c.failures == 0 ? 0 : 1;
}

/* ---- the parent ---- */

/* Waits for the children until hang_at (ms); kills by pid those still
 * running then. Returns how many did not exit with status 0. */
static unsigned wait_children(const pid_t *pids, unsigned n, uint64_t hang_at)
{
    bool done[NCHILDREN] = {false};
    unsigned left = n, bad = 0;
    while (left > 0) {
        for (unsigned i = 0; i < n; i++) {
            if (done[i])
                continue;
            int status;
            pid_t r = waitpid(pids[i], &status, WNOHANG);
            if (r == 0)
                continue;
            done[i] = true;
            left--;
            if (r != pids[i] || !WIFEXITED(status) ||
                WEXITSTATUS(status) != 0) {
                bad++;
                if (r == pids[i] && WIFSIGNALED(status))
                    print_message("child %u died of signal %d\n", i,
                                  WTERMSIG(status));
                else if (r == pids[i])
                    print_message("child %u exited with %d\n", i,
                                  WEXITSTATUS(status));
            }
        }
        if (left == 0)
            break;
        if (now_ms() > hang_at) {
            for (unsigned i = 0; i < n; i++) {
                if (done[i])
                    continue;
                print_message("child %u (pid %d) hangs: killing it\n", i,
                              (int)pids[i]);
                kill(pids[i], SIGKILL);
                waitpid(pids[i], NULL, 0);
                bad++;
            }
            break;
        }
        usleep(10000);
    }
    return bad;
}

static int64_t counter_value(shmkv_t *kv)
{
    char buf[32];
    size_t vlen = 0;
    int rc = shmkv_get_copy(kv, COUNTER_KEY, strlen(COUNTER_KEY), buf,
                            sizeof buf - 1, &vlen);
    if (rc != 0)
        return -1;
    buf[vlen] = '\0';
    return strtoll(buf, NULL, 10);
}

/* Final state of the owned keys: every writer is done, so each key holds
 * exactly its last published operation (or, in an lru store, nothing). */
static void check_owned_final(shmkv_t *kv, const struct shared *sh, bool lru)
{
    static char buf[MAX_VALUE];
    for (uint32_t k = 0; k < NOWNED; k++) {
        char key[16];
        int klen = key_name(key, k);
        uint64_t pub = atomic_load(&sh->pub[k]);
        assert_int_equal(atomic_load(&sh->intent[k]), pub);
        size_t vlen = 0;
        int rc = shmkv_get_copy(kv, key, (size_t)klen, buf, sizeof buf, &vlen);
        if (rc == SHMKV_ENOTFOUND) {
            if (!lru && !OP_DEL(pub))
                fail_msg("%s: absent, last op was set %" PRIu64, key,
                         OP_SEQ(pub));
            continue;
        }
        assert_int_equal(rc, 0);
        uint64_t seq = 0, sum = 0;
        const char *why = value_verify(buf, vlen, k, &seq, &sum);
        if (why != NULL)
            fail_msg("%s: %s", key, why);
        if (OP_DEL(pub) || seq != OP_SEQ(pub))
            fail_msg("%s: seq %" PRIu64 ", last op was %s %" PRIu64, key, seq,
                     OP_DEL(pub) ? "delete" : "set", OP_SEQ(pub));
    }
}

static void run_scenario(const struct scenario *sc)
{
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = sc->size_bytes;
    o.eviction = sc->lru ? SHMKV_EVICT_LRU : SHMKV_EVICT_NONE;
    shmkv_t *kv;
    assert_int_equal(test_create(&o, &kv), 0);
    char where[32];
    snprintf(where, sizeof where, "%s", o.key);

    struct shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE,
                             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(sh != MAP_FAILED);
    memset(sh, 0, sizeof *sh);
    for (uint32_t k = 0; k < NKEYS; k++) {
        atomic_store(&sh->pub[k], OP_WORD(0, true));
        atomic_store(&sh->intent[k], OP_WORD(0, true));
    }

    pid_t pids[NCHILDREN];
    unsigned started = 0;
    for (unsigned i = 0; i < NCHILDREN; i++) {
        pid_t pid = fork();
        if (pid < 0)
            break;
        if (pid == 0)
            _exit(child_main(sh, sc, where, i));
        pids[started++] = pid;
    }
    /* All attached: the store counts every handle. */
    uint64_t give_up = now_ms() + HANG_MS;
    while (atomic_load(&sh->ready) + atomic_load(&sh->failures) < started &&
           now_ms() < give_up)
        usleep(1000);
    struct shmkv_stats st;
    int stats_rc = shmkv_stats(kv, &st);
    atomic_store(&sh->end_ms, now_ms() + sc->duration_ms);
    atomic_store(&sh->go, 1);
    unsigned bad =
        wait_children(pids, started, now_ms() + sc->duration_ms + HANG_MS);
    if (atomic_load(&sh->failures) > 0)
        print_message("%" PRIu64 " failures; first: %s\n",
                      atomic_load(&sh->failures), sh->first_failure);
    assert_int_equal(started, NCHILDREN);
    assert_int_equal(bad, 0);
    assert_int_equal(atomic_load(&sh->failures), 0);
    assert_int_equal(stats_rc, 0);
    assert_int_equal(st.clients, NCHILDREN + 1);

    struct child_counts sum = {0};
    for (unsigned i = 0; i < NCHILDREN; i++) {
        struct child_counts *cc = &sh->counts[i];
        sum.sets += atomic_load(&cc->sets);
        sum.dels += atomic_load(&cc->dels);
        sum.incrs += atomic_load(&cc->incrs);
        sum.hits += atomic_load(&cc->hits);
        sum.misses += atomic_load(&cc->misses);
        sum.values_checked += atomic_load(&cc->values_checked);
        sum.sections += atomic_load(&cc->sections);
        sum.incr_sum += atomic_load(&cc->incr_sum);
    }
    print_message("%s: %" PRIu64 " sets, %" PRIu64 " deletes, %" PRIu64
                  " incrs, %" PRIu64 " read sections, %" PRIu64
                  " values checked\n",
                  sc->lru ? "lru" : "noeviction", (uint64_t)sum.sets,
                  (uint64_t)sum.dels, (uint64_t)sum.incrs,
                  (uint64_t)sum.sections, (uint64_t)sum.values_checked);

    /* Stats before the parent's own lookups: they count the children's. */
    assert_int_equal(shmkv_stats(kv, &st), 0);
    assert_int_equal(st.clients, 1);
    assert_int_equal(st.hits, sum.hits);
    assert_int_equal(st.misses, sum.misses);
    assert_int_equal(st.sets, sum.sets + sum.incrs);
    assert_int_equal(st.deletes, sum.dels);
    assert_int_equal(st.recoveries, 0);
    assert_int_equal(st.generation, 1);
    assert_int_equal(st.lock_timeouts, 0);
    assert_int_equal(st.expirations, 0);
    if (sc->lru) {
        print_message("lru: %" PRIu64 " evictions\n", st.evictions);
        assert_true(st.evictions > 0);
    } else {
        assert_int_equal(st.evictions, 0);
    }

    struct shmkv_check_report rep;
    int rc = shmkv_check(kv, &rep);
    if (rc != 0)
        print_message("check: %s\n", rep.first_problem);
    assert_int_equal(rc, 0);
    assert_int_equal(rep.problems, 0);
    assert_int_equal(rep.bytes_leaked, 0);
    assert_int_equal(rep.entries_seen, st.entries);

    check_owned_final(kv, sh, sc->lru);
    if (!sc->lru)
        assert_int_equal(counter_value(kv), sum.incr_sum);

    munmap(sh, sizeof *sh);
    test_destroy(kv, where);
}

static void test_readers_writers_noeviction(void **state)
{
    (void)state;
    struct scenario sc = {.lru = false,
                          .size_bytes = 16u << 20,
                          .max_payload = 2048,
                          .duration_ms = 2000,
                          .min_writer_ops = 0};
    run_scenario(&sc);
}

static void test_readers_writers_lru_evicting(void **state)
{
    (void)state;
    /* About 1 MiB of arena for up to 1024 values averaging 2 KiB: writes
     * evict while the readers read. */
    struct scenario sc = {.lru = true,
                          .size_bytes = 1u << 20,
                          .max_payload = MAX_PAYLOAD,
                          .duration_ms = 1500,
                          .min_writer_ops = 4000};
    run_scenario(&sc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_readers_writers_noeviction),
        cmocka_unit_test(test_readers_writers_lru_evicting),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
