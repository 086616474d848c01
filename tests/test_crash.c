/*
 * Crash tests: a writer process is killed with SIGKILL at random moments,
 * hundreds of times, and after every kill the store must be consistent and
 * hold every write that was acknowledged before the kill.
 *
 * The writer child loops over set (varying sizes, replacing, NX / XX /
 * KEEPTTL, long TTLs and 1-2 s TTLs), del, incr, expire, expire_scan, an
 * occasional flush and reads, on a store small enough that some sets fail
 * for want of room and freed blocks are reused. Before each write it
 * records the operation in an anonymous MAP_SHARED journal and publishes
 * it as the intent (release store of a counter); after the call returned 0
 * it publishes it as committed. A write that failed withdraws its intent.
 *
 * After each kill the parent (through its own handle or a freshly opened
 * one) runs shmkv_check, which must take the rwlock even when the child
 * died holding the write lock (client/lock.c learns from the kernel that
 * the holder is dead, replaces the lock and repairs the write it was
 * making), and must report no problem. Then it
 * replays the committed journal onto its model of the store, checking what
 * each acknowledged result says about the state before it (an NX set
 * succeeded, so the key was absent; an incr returned the model's value plus
 * its delta), and compares every key with the model: value, seq and TTL.
 * The one write that may have been in flight at the kill (intent one past
 * committed) may or may not have applied; whichever state the store shows
 * becomes the model. Keys with a 1-2 s TTL may have expired.
 *
 * In the noeviction store the check is exact. An lru store runs the same
 * load with eviction: any key may be absent, but a present key must hold
 * exactly its last acknowledged value (or the in-flight one).
 *
 * Another case kills readers inside their read sections: the next writer
 * that needs the memory they held back drops their claims at once.
 *
 * The last cases leave the rwlock as a process killed inside glibc's lock
 * code would, halfway through handing the lock from readers to a writer or
 * back (the phase flipped, the futex word its waiters watch not yet set):
 * readers and writers that come later, and one already waiting, must get
 * through in bounded time. (Processes only ever try the lock, so none can
 * be caught spinning inside glibc; these cases make sure of it.)
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

#include "internal.h"
#include "testutil.h"

#define VHDR_BYTES 16u
#define VSUM_BYTES 8u
#define MAX_PAYLOAD 10000u
#define MAX_VALUE (VHDR_BYTES + MAX_PAYLOAD + VSUM_BYTES)
#define JOURNAL_MAX 4096u
#define HANG_MS 60000u
#define CHILD_MAX_MS 5000u /* a child that was not killed stops by then */

#define LONG_TTL_MIN 1000u
#define LONG_TTL_SPAN 100000u

/* The key space: keys checked exactly, keys with a 1-2 s TTL, counters. */
#define MAX_STRICT 512u
#define NVOLATILE 32u
#define NCOUNTERS 4u
#define MAX_KEYS (MAX_STRICT + NVOLATILE + NCOUNTERS)

enum op {
    OP_SET = 1,
    OP_DEL,
    OP_INCR,
    OP_EXPIRE,
    OP_FLUSH,
};

struct jrec {
    uint32_t key_id;
    uint8_t op;
    uint8_t flags; /* OP_SET: SHMKV_NX, SHMKV_XX, SHMKV_KEEPTTL */
    uint16_t reserved;
    uint32_t ttl_s;   /* OP_SET, OP_EXPIRE */
    uint32_t payload; /* OP_SET: payload bytes */
    uint64_t seq;     /* OP_SET */
    int64_t delta;    /* OP_INCR */
    int64_t result;   /* OP_INCR: written before the commit */
};

struct journal {
    _Atomic uint64_t intent;    /* records begun */
    _Atomic uint64_t committed; /* records whose call returned 0 */
    _Atomic int ready;          /* the child has opened the store */
    _Atomic uint64_t reads_checked;
    _Atomic uint64_t failures;
    _Atomic int failure_claimed;
    char first_failure[240];
    /* The recovery case: when the child's first write began and ended. */
    _Atomic uint64_t first_write_start_us;
    _Atomic uint64_t first_write_end_us;
    struct jrec rec[JOURNAL_MAX];
};

struct layout {
    bool lru;
    uint32_t nstrict;
    uint32_t max_payload;
};

/* The model of one key. */
#define TTL_ANY UINT32_MAX
struct kstate {
    bool present;
    bool is_num;
    uint32_t payload;
    /* 0: no TTL; TTL_ANY: not known; else the most seconds it may have
     * left */
    uint32_t ttl_s;
    uint64_t seq;
    int64_t num;
};

/* ---- values and keys ---- */

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t rng_next(uint64_t *s)
{
    *s = mix64(*s);
    return *s;
}

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

/* NULL if the value is whole and belongs to key_id (seq and payload length
 * returned), else what is wrong with it. */
static const char *value_verify(const void *data, size_t len, uint32_t key_id,
                                uint64_t *seq, uint32_t *payload)
{
    const char *p = data;
    if (len < VHDR_BYTES + VSUM_BYTES)
        return "value shorter than its header";
    uint32_t id, payload_len;
    memcpy(&id, p, 4);
    memcpy(&payload_len, p + 4, 4);
    if ((size_t)payload_len + VHDR_BYTES + VSUM_BYTES != len)
        return "value length does not match its header";
    uint64_t stored;
    memcpy(&stored, p + len - VSUM_BYTES, VSUM_BYTES);
    if (XXH64(p, len - VSUM_BYTES, 0) != stored)
        return "value checksum does not match";
    if (id != key_id)
        return "value belongs to another key";
    memcpy(seq, p + 8, 8);
    *payload = payload_len;
    return NULL;
}

static uint32_t nkeys(const struct layout *ly)
{
    return ly->nstrict + NVOLATILE + NCOUNTERS;
}

static bool is_volatile(const struct layout *ly, uint32_t k)
{
    return k >= ly->nstrict && k < ly->nstrict + NVOLATILE;
}

static bool is_counter(const struct layout *ly, uint32_t k)
{
    return k >= ly->nstrict + NVOLATILE;
}

/* Key names of several lengths, so entry sizes vary with the key too. */
static int key_name(char *buf, const struct layout *ly, uint32_t k)
{
    static const char pad[] = "-------------------------------------------";
    int fill = (int)(k % 5) * 9;
    if (is_counter(ly, k))
        return snprintf(buf, 64, "ctr%u", k - ly->nstrict - NVOLATILE);
    return snprintf(buf, 64, "%c%04u%.*s", is_volatile(ly, k) ? 'v' : 's', k,
                    fill, pad);
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* ---- the writer child ---- */

struct writer {
    struct journal *j;
    const struct layout *ly;
    shmkv_t *kv;
    uint64_t rng;
    uint64_t seq;
    char buf[MAX_VALUE];
};

static void writer_fail(struct writer *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void writer_fail(struct writer *w, const char *fmt, ...)
{
    atomic_fetch_add(&w->j->failures, 1);
    int expected = 0;
    if (atomic_compare_exchange_strong(&w->j->failure_claimed, &expected, 1)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(w->j->first_failure, sizeof w->j->first_failure, fmt, ap);
        va_end(ap);
    }
}

/* True for the results a write may legitimately have here; they leave the
 * store as it was. */
static bool expected_refusal(int rc)
{
    return rc == SHMKV_ENOSPC || rc == SHMKV_EEXIST || rc == SHMKV_ENOTFOUND;
}

/* Runs the write described by r under the journal protocol: intent before
 * the call, committed after it returned 0, intent withdrawn otherwise. */
static void journaled_write(struct writer *w, struct jrec r)
{
    struct journal *j = w->j;
    uint64_t n = atomic_load_explicit(&j->committed, memory_order_relaxed);
    char key[64];
    int klen = key_name(key, w->ly, r.key_id);
    size_t vlen = 0;
    if (r.op == OP_SET)
        vlen = value_make(w->buf, r.key_id, r.seq, r.payload);
    j->rec[n] = r;
    /* Release: the record is written before it is published. */
    atomic_store_explicit(&j->intent, n + 1, memory_order_release);
    int rc;
    int64_t result = 0;
    switch (r.op) {
    case OP_SET:
        rc =
            shmkv_set(w->kv, key, (size_t)klen, w->buf, vlen, r.ttl_s, r.flags);
        break;
    case OP_DEL:
        rc = shmkv_del(w->kv, key, (size_t)klen);
        break;
    case OP_INCR:
        rc = shmkv_incr(w->kv, key, (size_t)klen, r.delta, &result);
        break;
    case OP_EXPIRE:
        rc = shmkv_expire(w->kv, key, (size_t)klen, r.ttl_s);
        break;
    default:
        rc = shmkv_flush(w->kv);
        break;
    }
    if (rc == 0) {
        j->rec[n].result = result;
        atomic_store_explicit(&j->committed, n + 1, memory_order_release);
    } else {
        atomic_store_explicit(&j->intent, n, memory_order_release);
        if (!expected_refusal(rc))
            writer_fail(w, "op %u on %s: %s (%s)", r.op, key,
                        shmkv_strerror(rc), shmkv_last_error());
    }
}

/* Reads a few keys in one section and one through shmkv_get_copy, checking
 * that each value present is whole and belongs to its key. */
static void writer_read(struct writer *w)
{
    uint32_t n = nkeys(w->ly);
    char key[64];
    int rc = shmkv_read_begin(w->kv);
    if (rc != 0) {
        writer_fail(w, "read_begin: %s", shmkv_strerror(rc));
        return;
    }
    for (int i = 0; i < 4; i++) {
        uint32_t k = (uint32_t)(rng_next(&w->rng) % (n - NCOUNTERS));
        int klen = key_name(key, w->ly, k);
        shmkv_val_t v;
        rc = shmkv_get(w->kv, key, (size_t)klen, &v);
        if (rc == SHMKV_ENOTFOUND)
            continue;
        uint64_t seq;
        uint32_t payload;
        const char *why = rc != 0
                              ? shmkv_strerror(rc)
                              : value_verify(v.data, v.len, k, &seq, &payload);
        if (why != NULL)
            writer_fail(w, "get %s: %s", key, why);
        else
            atomic_fetch_add(&w->j->reads_checked, 1);
    }
    shmkv_read_end(w->kv);
    uint32_t k = (uint32_t)(rng_next(&w->rng) % (n - NCOUNTERS));
    int klen = key_name(key, w->ly, k);
    size_t vlen = 0;
    rc = shmkv_get_copy(w->kv, key, (size_t)klen, w->buf, sizeof w->buf, &vlen);
    if (rc == SHMKV_ENOTFOUND)
        return;
    uint64_t seq;
    uint32_t payload;
    const char *why = rc != 0 ? shmkv_strerror(rc)
                              : value_verify(w->buf, vlen, k, &seq, &payload);
    if (why != NULL)
        writer_fail(w, "get_copy %s: %s", key, why);
    else
        atomic_fetch_add(&w->j->reads_checked, 1);
}

static uint32_t long_ttl(struct writer *w)
{
    return LONG_TTL_MIN + (uint32_t)(rng_next(&w->rng) % LONG_TTL_SPAN);
}

/* One random operation. */
static void writer_step(struct writer *w)
{
    const struct layout *ly = w->ly;
    unsigned r = (unsigned)(rng_next(&w->rng) % 4000);
    uint32_t strict_key = (uint32_t)(rng_next(&w->rng) % ly->nstrict);
    struct jrec rec = {.key_id = strict_key};
    if (r < 1800) {
        rec.op = OP_SET;
        rec.seq = ++w->seq;
        rec.payload = (uint32_t)(rng_next(&w->rng) % (ly->max_payload + 1));
        unsigned f = (unsigned)(rng_next(&w->rng) % 10);
        rec.flags = f == 0   ? SHMKV_NX
                    : f == 1 ? SHMKV_XX
                    : f == 2 ? SHMKV_KEEPTTL
                             : 0;
        rec.ttl_s = rng_next(&w->rng) % 5 == 0 ? long_ttl(w) : 0;
    } else if (r < 2400) {
        rec.op = OP_DEL;
    } else if (r < 2900) {
        rec.op = OP_INCR;
        rec.key_id =
            ly->nstrict + NVOLATILE + (uint32_t)(rng_next(&w->rng) % NCOUNTERS);
        rec.delta = (int64_t)(rng_next(&w->rng) % 151) - 50;
    } else if (r < 2960) {
        rec.op = OP_DEL; /* a counter starts again from 0 */
        rec.key_id =
            ly->nstrict + NVOLATILE + (uint32_t)(rng_next(&w->rng) % NCOUNTERS);
    } else if (r < 3200) {
        rec.op = OP_SET;
        rec.key_id = ly->nstrict + (uint32_t)(rng_next(&w->rng) % NVOLATILE);
        rec.seq = ++w->seq;
        rec.payload = (uint32_t)(rng_next(&w->rng) % 2000);
        rec.ttl_s = 1 + (uint32_t)(rng_next(&w->rng) % 2);
    } else if (r < 3300) {
        rec.op = OP_DEL;
        rec.key_id = ly->nstrict + (uint32_t)(rng_next(&w->rng) % NVOLATILE);
    } else if (r < 3450) {
        rec.op = OP_EXPIRE;
        rec.ttl_s = rng_next(&w->rng) % 2 ? long_ttl(w) : 0;
    } else if (r < 3800) {
        writer_read(w);
        return;
    } else if (r < 3999) {
        int rc = shmkv_expire_scan(w->kv, 1 + rng_next(&w->rng) % 256);
        if (rc < 0)
            writer_fail(w, "expire_scan: %s", shmkv_strerror(rc));
        return;
    } else {
        rec.op = OP_FLUSH;
    }
    journaled_write(w, rec);
}

static int writer_main(struct journal *j, const struct layout *ly,
                       const char *where, uint64_t seq_base)
{
    static struct writer w;
    w.j = j;
    w.ly = ly;
    w.rng = mix64(seq_base ^ (uint64_t)getpid() << 32);
    w.seq = seq_base;
    int rc = shmkv_open(where, 0, &w.kv);
    if (rc != 0) {
        writer_fail(&w, "open: %s", shmkv_strerror(rc));
        return 1;
    }
    atomic_store(&j->ready, 1);
    uint64_t stop = now_us() + CHILD_MAX_MS * 1000u;
    while (atomic_load(&j->committed) < JOURNAL_MAX - 1 && now_us() < stop)
        writer_step(&w);
    shmkv_close(w.kv);
    return 0;
}

/* ---- the parent's model ---- */

struct model {
    const struct layout *ly;
    struct kstate key[MAX_KEYS];
    uint64_t inflight_applied;
    uint64_t inflight_not_applied;
};

/* The state after record r, from state s (no check). For an incr whose
 * result is unknown (in flight), the model's value plus its delta. */
static struct kstate state_after(const struct kstate *s, const struct jrec *r,
                                 bool result_known, bool lru)
{
    struct kstate n = *s;
    switch (r->op) {
    case OP_SET:
        n.present = true;
        n.is_num = false;
        n.seq = r->seq;
        n.payload = r->payload;
        n.ttl_s =
            (r->flags & SHMKV_KEEPTTL) && s->present ? s->ttl_s : r->ttl_s;
        /* In an lru store the key may have been evicted: then a KEEPTTL
         * set took its own TTL. */
        if (lru && (r->flags & SHMKV_KEEPTTL) && s->present &&
            s->ttl_s != r->ttl_s)
            n.ttl_s = TTL_ANY;
        break;
    case OP_DEL:
    case OP_FLUSH:
        memset(&n, 0, sizeof n);
        break;
    case OP_INCR:
        n.num = result_known ? r->result : (s->present ? s->num : 0) + r->delta;
        n.present = true;
        n.is_num = true;
        n.ttl_s = s->present ? s->ttl_s : 0;
        break;
    case OP_EXPIRE:
        n.ttl_s = r->ttl_s;
        break;
    }
    return n;
}

/* Replays one committed record, checking what its success says about the
 * state before it. Keys never come back by themselves, so a call that
 * found the key present is checked in both stores; one that found it
 * absent only where keys cannot vanish (noeviction, no short TTL). */
static void model_apply(struct model *m, const struct jrec *r)
{
    const struct layout *ly = m->ly;
    if (r->op == OP_FLUSH) {
        memset(m->key, 0, sizeof m->key);
        return;
    }
    struct kstate *s = &m->key[r->key_id];
    bool exact = !ly->lru && !is_volatile(ly, r->key_id);
    char key[64];
    key_name(key, ly, r->key_id);
    if (r->op == OP_SET && (r->flags & SHMKV_NX) && s->present && exact)
        fail_msg("%s: an NX set succeeded on a present key", key);
    if ((r->op == OP_DEL || r->op == OP_EXPIRE ||
         (r->op == OP_SET && (r->flags & SHMKV_XX))) &&
        !s->present && !is_volatile(ly, r->key_id))
        fail_msg("%s: op %u succeeded on an absent key", key, r->op);
    if (r->op == OP_INCR) {
        int64_t from_model = (s->present ? s->num : 0) + r->delta;
        bool ok = r->result == from_model || (ly->lru && r->result == r->delta);
        if (!ok)
            fail_msg("%s: incr by %" PRId64 " returned %" PRId64
                     ", the model holds %" PRId64,
                     key, r->delta, r->result, s->present ? s->num : 0);
    }
    *s = state_after(s, r, true, ly->lru);
}

/* What the store shows for key k. */
struct observed {
    bool present;
    bool is_num;
    uint64_t seq;
    uint32_t payload;
    int64_t num;
    int64_t ttl_s; /* -1 none */
    const char *bad;
};

static void observe(shmkv_t *kv, const struct layout *ly, uint32_t k,
                    struct observed *o)
{
    static char buf[MAX_VALUE];
    char key[64];
    int klen = key_name(key, ly, k);
    memset(o, 0, sizeof *o);
    size_t vlen = 0;
    int rc = shmkv_get_copy(kv, key, (size_t)klen, buf, sizeof buf, &vlen);
    if (rc == SHMKV_ENOTFOUND)
        return;
    if (rc != 0) {
        o->bad = shmkv_strerror(rc);
        return;
    }
    o->present = true;
    if (is_counter(ly, k)) {
        char text[32];
        if (vlen == 0 || vlen >= sizeof text) {
            o->bad = "counter of a bad length";
            return;
        }
        memcpy(text, buf, vlen);
        text[vlen] = '\0';
        char *end;
        errno = 0;
        o->num = strtoll(text, &end, 10);
        if (*end != '\0' || errno != 0)
            o->bad = "counter is not a number";
        o->is_num = true;
    } else {
        o->bad = value_verify(buf, vlen, k, &o->seq, &o->payload);
    }
    rc = shmkv_ttl(kv, key, (size_t)klen, &o->ttl_s);
    if (rc == SHMKV_ENOTFOUND && is_volatile(ly, k))
        o->present = false; /* expired between the two calls */
    else if (rc != 0)
        o->bad = "no TTL for a present key";
}

static bool state_matches(const struct layout *ly, uint32_t k,
                          const struct kstate *s, const struct observed *o)
{
    if (s->present != o->present)
        return false;
    if (!s->present)
        return true;
    if (s->is_num != o->is_num)
        return false;
    if (s->is_num ? s->num != o->num
                  : s->seq != o->seq || s->payload != o->payload)
        return false;
    if (is_volatile(ly, k) || s->ttl_s == TTL_ANY)
        return true;
    if (s->ttl_s == 0)
        return o->ttl_s == -1;
    return o->ttl_s >= 1 && o->ttl_s <= (int64_t)s->ttl_s;
}

/* A TTL the model did not know becomes what the store shows: the time
 * left now bounds the time left later. */
static void ttl_learn(struct kstate *s, const struct observed *o)
{
    if (s->present && s->ttl_s == TTL_ANY)
        s->ttl_s = o->ttl_s < 0 ? 0 : (uint32_t)o->ttl_s;
}

static void describe(char *buf, size_t cap, const struct kstate *s)
{
    if (!s->present)
        snprintf(buf, cap, "absent");
    else if (s->is_num)
        snprintf(buf, cap, "number %" PRId64 " ttl %u", s->num, s->ttl_s);
    else
        snprintf(buf, cap, "seq %" PRIu64 " (%u bytes) ttl %u", s->seq,
                 s->payload, s->ttl_s);
}

/* Compares every key with the model, allowing the in-flight record (if
 * any) to have applied or not, and short-TTL keys (and any key of an lru
 * store) to be absent. The model takes the state the store shows. */
static void model_verify(struct model *m, shmkv_t *kv,
                         const struct jrec *inflight)
{
    const struct layout *ly = m->ly;
    bool some_applied = false, some_not = false;
    for (uint32_t k = 0; k < nkeys(ly); k++) {
        struct observed o;
        observe(kv, ly, k, &o);
        char key[64];
        key_name(key, ly, k);
        if (o.bad != NULL)
            fail_msg("%s: %s", key, o.bad);
        struct kstate *s = &m->key[k];
        struct kstate alt;
        bool has_alt = inflight != NULL &&
                       (inflight->op == OP_FLUSH || inflight->key_id == k);
        if (has_alt)
            alt = state_after(s, inflight, false, ly->lru);
        struct kstate absent = {0};
        if (state_matches(ly, k, s, &o)) {
            if (has_alt && !state_matches(ly, k, &alt, &o))
                some_not = true;
            ttl_learn(s, &o);
            continue;
        }
        if (has_alt && state_matches(ly, k, &alt, &o)) {
            *s = alt;
            ttl_learn(s, &o);
            some_applied = true;
            continue;
        }
        /* In an lru store an in-flight incr may have found its counter
         * evicted and started again from 0. */
        if (has_alt && ly->lru && inflight->op == OP_INCR && o.present &&
            o.is_num && o.num == inflight->delta) {
            s->present = true;
            s->is_num = true;
            s->num = o.num;
            s->ttl_s = 0;
            continue;
        }
        if ((ly->lru || is_volatile(ly, k)) &&
            state_matches(ly, k, &absent, &o)) {
            *s = absent;
            continue;
        }
        char want[96], alt_text[96] = "-";
        describe(want, sizeof want, s);
        if (has_alt)
            describe(alt_text, sizeof alt_text, &alt);
        if (!o.present)
            fail_msg("%s: absent; expected %s (or in flight: %s)", key, want,
                     alt_text);
        if (o.is_num)
            fail_msg("%s: number %" PRId64 " ttl %" PRId64
                     "; expected %s (or in flight: %s)",
                     key, o.num, o.ttl_s, want, alt_text);
        fail_msg("%s: seq %" PRIu64 " (%u bytes) ttl %" PRId64
                 "; expected %s (or in flight: %s)",
                 key, o.seq, o.payload, o.ttl_s, want, alt_text);
    }
    if (some_applied)
        m->inflight_applied++;
    else if (inflight != NULL && some_not)
        m->inflight_not_applied++;
}

/* ---- the kill loop ---- */

static struct journal *journal_map(void)
{
    struct journal *j = mmap(NULL, sizeof *j, PROT_READ | PROT_WRITE,
                             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(j != MAP_FAILED);
    return j;
}

static void journal_reset(struct journal *j)
{
    atomic_store(&j->intent, 0);
    atomic_store(&j->committed, 0);
    atomic_store(&j->ready, 0);
    atomic_store(&j->reads_checked, 0);
    atomic_store(&j->first_write_start_us, 0);
    atomic_store(&j->first_write_end_us, 0);
}

/* Waits until the child says it is ready or has exited; false if it has
 * exited (status in *status). */
static bool wait_ready(struct journal *j, pid_t pid, int *status)
{
    uint64_t give_up = now_us() + HANG_MS * 1000ull;
    while (!atomic_load(&j->ready)) {
        if (waitpid(pid, status, WNOHANG) == pid)
            return false;
        if (now_us() > give_up)
            fail_msg("child %d never opened the store", (int)pid);
        usleep(100);
    }
    return true;
}

/* A random kill delay in microseconds: mostly within the first couple of
 * milliseconds, sometimes later in a longer run. */
static unsigned kill_delay_us(uint64_t *rng)
{
    unsigned r = (unsigned)(rng_next(rng) % 100);
    if (r < 65)
        return (unsigned)(rng_next(rng) % 2000);
    if (r < 90)
        return (unsigned)(rng_next(rng) % 10000);
    return (unsigned)(rng_next(rng) % 60000);
}

/* Reaps a child that was killed (or had finished); false if it died any
 * other way. */
static bool reap_killed(pid_t pid)
{
    int status;
    pid_t r;
    do
        r = waitpid(pid, &status, 0);
    while (r < 0 && errno == EINTR);
    if (r != pid)
        return false;
    if (WIFSIGNALED(status))
        return WTERMSIG(status) == SIGKILL;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static void run_kills(const struct layout *ly, uint64_t size_bytes,
                      unsigned iterations)
{
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = size_bytes;
    o.eviction = ly->lru ? SHMKV_EVICT_LRU : SHMKV_EVICT_NONE;
    /* Few client slots: the slots of killed children must be reclaimed. */
    o.max_clients = 16;
    shmkv_t *kv;
    assert_int_equal(test_create(&o, &kv), 0);
    char where[32];
    snprintf(where, sizeof where, "%s", o.key);
    struct journal *j = journal_map();
    static struct model m;
    memset(&m, 0, sizeof m);
    m.ly = ly;
    uint64_t rng = mix64(
        test_seed(ly->lru ? "kill writer, lru" : "kill writer, noeviction"));
    uint64_t commits = 0, reads = 0, kills_mid_write = 0;

    for (unsigned it = 0; it < iterations; it++) {
        journal_reset(j);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
            _exit(writer_main(j, ly, where, (uint64_t)(it + 1) << 24));
        /* One time in ten the kill may land while the child attaches. */
        int status = 0;
        bool running = rng_next(&rng) % 10 == 0 || wait_ready(j, pid, &status);
        bool ended_well;
        if (running) {
            usleep(kill_delay_us(&rng));
            kill(pid, SIGKILL);
            ended_well = reap_killed(pid);
        } else {
            ended_well = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        }
        if (atomic_load(&j->failures) > 0)
            fail_msg("iteration %u: the child failed: %s", it,
                     j->first_failure);
        assert_true(ended_well);

        /* Every other time through a handle opened after the kill. */
        shmkv_t *h = kv;
        if (it % 2 == 1)
            assert_int_equal(shmkv_open(where, 0, &h), 0);
        struct shmkv_check_report rep;
        int rc = shmkv_check(h, &rep);
        if (rc != 0 || rep.problems != 0)
            fail_msg("iteration %u: check: %s (%" PRIu64 " problems: %s)", it,
                     shmkv_strerror(rc), rep.problems, rep.first_problem);

        uint64_t committed =
            atomic_load_explicit(&j->committed, memory_order_acquire);
        uint64_t intent =
            atomic_load_explicit(&j->intent, memory_order_acquire);
        assert_true(intent == committed || intent == committed + 1);
        for (uint64_t i = 0; i < committed; i++)
            model_apply(&m, &j->rec[i]);
        kills_mid_write += intent > committed;
        model_verify(&m, h, intent > committed ? &j->rec[committed] : NULL);
        commits += committed;
        reads += atomic_load(&j->reads_checked);
        if (h != kv)
            shmkv_close(h);
    }

    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    print_message("%s: %u kills, %" PRIu64 " acknowledged writes, %" PRIu64
                  " reads checked by the writers, %" PRIu64
                  " kills with a write in flight (%" PRIu64
                  " seen applied, %" PRIu64 " seen not applied), %" PRIu64
                  " recoveries, %" PRIu64 " entries, %" PRIu64 " evictions\n",
                  ly->lru ? "lru" : "noeviction", iterations, commits, reads,
                  kills_mid_write, m.inflight_applied, m.inflight_not_applied,
                  st.recoveries, st.entries, st.evictions);
    /* Recovery repairs in place: the data segment is the one made. */
    assert_int_equal(st.generation, 1);
    if (!ly->lru)
        assert_int_equal(st.evictions, 0);

    /* The parent writes after the last kill, and the store stays sound. */
    assert_int_equal(shmkv_set(kv, "after", 5, "x", 1, 0, 0), 0);
    struct shmkv_check_report rep;
    assert_int_equal(shmkv_check(kv, &rep), 0);
    assert_int_equal(rep.problems, 0);
    munmap(j, sizeof *j);
    test_destroy(kv, where);
}

static void test_kill_writer_noeviction(void **state)
{
    (void)state;
    /* About 950 KiB of arena for 192 values of up to 10 KB: some sets find
     * no room, and freed blocks are reused all the time. */
    static const struct layout ly = {
        .lru = false, .nstrict = 192, .max_payload = MAX_PAYLOAD};
    run_kills(&ly, 1u << 20, 200);
}

static void test_kill_writer_lru(void **state)
{
    (void)state;
    /* 512 values of up to 10 KB in about 950 KiB: most sets evict. */
    static const struct layout ly = {
        .lru = true, .nstrict = MAX_STRICT, .max_payload = MAX_PAYLOAD};
    run_kills(&ly, 1u << 20, 100);
}

/* Waits at most limit_ms for a child; returns its exit status, 128 plus
 * the signal that ended it, or -1 if it was still running (it is killed). */
static int wait_bounded(pid_t pid, unsigned limit_ms)
{
    uint64_t deadline = now_us() + (uint64_t)limit_ms * 1000u;
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status)
                                     : 128 + WTERMSIG(status);
        if (now_us() >= deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        usleep(5000);
    }
}

/* In a child: a read section (shmkv_check) or a write on the store. */
static pid_t spawn_probe(const char *where, bool write)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid != 0)
        return pid;
    shmkv_t *kv;
    if (shmkv_open(where, 0, &kv) != 0)
        _exit(10);
    int rc;
    if (write) {
        rc = shmkv_set(kv, "probe", 5, "x", 1, 0, 0);
    } else {
        struct shmkv_check_report rep;
        rc = shmkv_check(kv, &rep);
    }
    shmkv_close(kv);
    _exit(rc == 0 ? 0 : 11);
}

/* In a child: opens the store read-only, begins a read section (and looks
 * "k" up in it, if get), then waits to be killed. Returns its pid once it
 * is in the section; fails the test with the child's status if it never
 * got there (4: the client table was full). */
static pid_t spawn_section_holder(const char *where, bool get)
{
    int ready[2];
    assert_int_equal(pipe(ready), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        shmkv_t *h;
        shmkv_val_t v;
        int rc = shmkv_open(where, SHMKV_RDONLY, &h);
        if (rc != 0 || shmkv_read_begin(h) != 0 ||
            (get && shmkv_get(h, "k", 1, &v) != 0))
            _exit(rc == SHMKV_ECLIENTS ? 4 : 1);
        if (write(ready[1], "x", 1) != 1)
            _exit(2);
        pause();
        _exit(3);
    }
    close(ready[1]);
    char c;
    ssize_t got = read(ready[0], &c, 1);
    close(ready[0]);
    if (got != 1) {
        int status;
        waitpid(pid, &status, 0);
        fail_msg("the reader did not begin its section: status %d",
                 WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
    return pid;
}

/* A reader killed inside a read section costs a writer that needs the
 * memory the section held back one look at the kernel's liveness, not a
 * wait: its claim is dropped, its slot comes back. */
static void test_kill_reader_in_section(void **state)
{
    (void)state;
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = 1u << 20;
    o.max_clients = 3;
    shmkv_t *kv;
    assert_int_equal(test_create(&o, &kv), 0);
    char where[32];
    snprintf(where, sizeof where, "%s", o.key);
    static char val[16384];
    memset(val, 'v', sizeof val);
    for (int round = 0; round < 6; round++) {
        assert_int_equal(shmkv_set(kv, "k", 1, "v", 1, 0, 0), 0);
        pid_t pid = spawn_section_holder(where, true);
        kill(pid, SIGKILL);
        assert_true(reap_killed(pid));
        /* Rewrite more than the whole arena: the blocks the dead section
         * could see must be freed to make room. */
        uint64_t start = now_us();
        char key[16];
        for (int i = 0; i < 200; i++) {
            int kl = snprintf(key, sizeof key, "fill%d", i % 40);
            assert_int_equal(
                shmkv_set(kv, key, (size_t)kl, val, sizeof val, 0, 0), 0);
        }
        assert_true(now_us() - start < 500000);
    }
    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    assert_int_equal(st.dead_readers, 6);
    assert_int_equal(st.revocations, 0);
    assert_int_equal(st.recoveries, 0);
    assert_int_equal(st.generation, 1);
    /* With no writer to come, dead readers' slots still come back: an
     * opener that finds the table full of them frees them. */
    for (int round = 0; round < 4; round++) {
        pid_t pid = spawn_section_holder(where, false);
        kill(pid, SIGKILL);
        assert_true(reap_killed(pid));
    }
    struct shmkv_check_report rep;
    assert_int_equal(shmkv_check(kv, &rep), 0);
    test_destroy(kv, where);
}

#if defined(__GLIBC__)
/* glibc's rwlock: the phase bit in __readers and the reader count's shift
 * (nptl/pthread_rwlock_common.c). */
#define RW_WRPHASE 1u
#define RW_WRLOCKED 2u
#define RW_READER_SHIFT 3

/* In a child: takes the lock and dies as if killed inside glibc right after
 * it flipped the phase: the futex word still says the old one. */
static void die_mid_handover(const char *where, bool write)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        shmkv_t *kv;
        if (shmkv_open(where, 0, &kv) != 0)
            _exit(1);
        if (lock_take(kv, write) != 0)
            _exit(2);
        __atomic_store_n(&kv->lock->__data.__wrphase_futex, write ? 0u : 1u,
                         __ATOMIC_RELAXED);
        raise(SIGKILL);
        _exit(3);
    }
    assert_true(reap_killed(pid));
}

/* In a child: takes the write lock (write) or a read lock on the rwlock,
 * waits while the caller starts a process that tries it, then leaves as
 * glibc's unlock does up to its first step and dies before the second
 * (handing the lock over): a writer's unlock ends the write phase for
 * readers it would then wake; the last reader's starts the write phase
 * for a primary writer, which here is no one. Returns the child's pid once
 * it holds the lock. */
static pid_t spawn_torn_unlock(const char *where, bool write_lock)
{
    int ready[2];
    assert_int_equal(pipe(ready), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        shmkv_t *h;
        if (shmkv_open(where, 0, &h) != 0 || lock_take(h, write_lock) != 0)
            _exit(1);
        if (write(ready[1], "x", 1) != 1)
            _exit(2);
        usleep(100 * 1000); /* a probe is trying the lock meanwhile */
        pthread_rwlock_t *l = h->lock;
        unsigned r = __atomic_load_n(&l->__data.__readers, __ATOMIC_RELAXED);
        unsigned next = write_lock ? r & ~(RW_WRLOCKED | RW_WRPHASE)
                                   : (r - (1u << RW_READER_SHIFT)) |
                                         RW_WRPHASE | RW_WRLOCKED;
        __atomic_store_n(&l->__data.__readers, next, __ATOMIC_RELEASE);
        raise(SIGKILL);
        _exit(3);
    }
    char c;
    assert_int_equal(read(ready[0], &c, 1), 1);
    close(ready[0]);
    close(ready[1]);
    return pid;
}

#endif

static void test_kill_mid_handover(void **state)
{
    (void)state;
#if !defined(__GLIBC__)
    print_message("the torn states are glibc's rwlock's: skipping\n");
    skip();
#else
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.lock_timeout_ms = 2000;
    shmkv_t *kv;
    assert_int_equal(test_create(&o, &kv), 0);
    char where[32];
    snprintf(where, sizeof where, "%s", o.key);
    assert_int_equal(shmkv_set(kv, "kept", 4, "v", 1, 0, 0), 0);

    /* A writer died flipping to its write phase; a reader comes. */
    die_mid_handover(where, true);
    assert_int_equal(wait_bounded(spawn_probe(where, false), 10000), 0);
    /* A reader died flipping to its read phase; a writer comes. */
    die_mid_handover(where, false);
    assert_int_equal(wait_bounded(spawn_probe(where, true), 10000), 0);

    /* A writer dies releasing the lock while a reader tries it. */
    int reader_rc, writer_rc;
    pid_t holder = spawn_torn_unlock(where, true);
    pid_t reader = spawn_probe(where, false);
    assert_true(reap_killed(holder));
    usleep(100 * 1000);
    pid_t writer = spawn_probe(where, true);
    /* Both waited for (or killed) before either is judged. */
    reader_rc = wait_bounded(reader, 10000);
    writer_rc = wait_bounded(writer, 10000);
    assert_int_equal(reader_rc, 0);
    assert_int_equal(writer_rc, 0);

    /* The last reader dies handing the lock to a primary writer that is
     * not there, while a writer tries it; a reader that comes later must
     * get through too. */
    holder = spawn_torn_unlock(where, false);
    writer = spawn_probe(where, true);
    assert_true(reap_killed(holder));
    usleep(100 * 1000);
    reader = spawn_probe(where, false);
    reader_rc = wait_bounded(reader, 10000);
    writer_rc = wait_bounded(writer, 10000);
    assert_int_equal(reader_rc, 0);
    assert_int_equal(writer_rc, 0);

    struct shmkv_stats st;
    assert_int_equal(shmkv_stats(kv, &st), 0);
    /* Each lock left held by a dead process was replaced; the one a dead
     * writer left released was simply taken. */
    assert_true(st.recoveries >= 3);
    char buf[4];
    size_t n;
    assert_int_equal(shmkv_get_copy(kv, "kept", 4, buf, sizeof buf, &n), 0);
    assert_int_equal(shmkv_get_copy(kv, "probe", 5, buf, sizeof buf, &n), 0);
    test_destroy(kv, where);
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kill_writer_noeviction),
        cmocka_unit_test(test_kill_writer_lru),
        cmocka_unit_test(test_kill_reader_in_section),
        cmocka_unit_test(test_kill_mid_handover),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
