/*
 * shmkv-bench - throughput of shmkv reads and writes next to a private
 * in-process hash table holding the same keys (the floor), and the store's
 * memory overhead per entry.
 *
 * For each store size N the parent creates a store at a System V key unique
 * to this process (0x5cPPPPCC: pid and a counter), fills it with N keys,
 * and pre-generates the operation stream: uniformly random key indexes,
 * materialised as key bytes so that a lookup reads its key sequentially and
 * no random number is drawn while a clock runs. Then, for each process
 * count P, it forks P workers. Each worker attaches the store with
 * shmkv_open, builds its own private table from the same keys and values,
 * and runs every operation for D seconds per repetition. The operations
 * take turns of 50 ms (after 10 ms unmeasured, to refill the caches), so
 * that a noisy moment on the machine is shared out among them instead of
 * hitting one, which would skew the ratios to the floor. Every turn starts
 * at a barrier in a MAP_SHARED anonymous mapping; a worker adds its
 * operation count and elapsed time there, and the parent sums ops/s across
 * workers and takes the median over repetitions.
 *
 * Value bytes read by every get are summed into a checksum that the parent
 * prints, so no lookup can be optimised away.
 *
 * Only the parent owns the store: it destroys it after each size, at exit,
 * on SIGINT/SIGTERM/SIGHUP, and when a worker fails. Workers never touch
 * the parent's handle (a handle is not valid across fork) and die with the
 * parent (PR_SET_PDEATHSIG).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "shmkv.h"
/* Only for the sizes of an index bucket and an arena block header, to count
 * the index's bytes and size the store. */
#include "layout.h"

#define MAX_LIST 16
#define MAX_PROCS 64
#define MAX_REPS 51
#define CHUNK_OPS 1000u /* ops between clock reads; a multiple of 100 */
#define GETS_PER_SECTION 100u
#define MIX_SET_PERCENT 5u
#define STREAM_MAX_OPS (1u << 20) /* length of the pre-generated op stream */
#define STREAM_MAX_BYTES (64u << 20)
#define SLICE_S 0.05  /* measured time of one turn of an operation */
#define WARMUP_S 0.01 /* unmeasured run-in before each turn */
#define BARRIER_TIMEOUT_S 120.0
#define FLOOR_MAX_LOAD_PERCENT 70u

/* ---------------------------------------------------------------------- */
/* Operations */

enum op {
    OP_GET1,    /* shmkv_get, one read section per get */
    OP_GET100,  /* shmkv_get, GETS_PER_SECTION gets per read section */
    OP_COPY,    /* shmkv_get_copy */
    OP_SET,     /* shmkv_set replacing an existing key */
    OP_MIX,     /* 95% OP_GET1, 5% OP_SET */
    OP_LOCK,    /* an empty write section: the write lock taken and let go */
    OP_LOCKMIX, /* 95% OP_GET1, 5% OP_LOCK */
    OP_FLOOR_GET,
    OP_FLOOR_COPY,
    OP_FLOOR_SET,
    OP_FLOOR_MIX,
    OP_COUNT
};

struct op_info {
    const char *name;  /* for -o */
    const char *label; /* for the table */
    enum op floor;     /* the private-table operation it is compared with */
};

static const struct op_info op_info[OP_COUNT] = {
    [OP_GET1] = {"get1", "shmkv get, 1 per read section", OP_FLOOR_GET},
    [OP_GET100] = {"get100", "shmkv get, 100 per read section", OP_FLOOR_GET},
    [OP_COPY] = {"copy", "shmkv_get_copy", OP_FLOOR_COPY},
    [OP_SET] = {"set", "shmkv_set (replace)", OP_FLOOR_SET},
    [OP_MIX] = {"mix", "shmkv 95/5 get/set mix", OP_FLOOR_MIX},
    [OP_LOCK] = {"lock", "write lock alone (empty section)", OP_FLOOR_SET},
    [OP_LOCKMIX] = {"lockmix", "95/5 mix, lock alone for sets", OP_FLOOR_MIX},
    [OP_FLOOR_GET] = {NULL, "private get (floor of gets)", OP_FLOOR_GET},
    [OP_FLOOR_COPY] = {NULL, "private get+copy (floor of copy)", OP_FLOOR_COPY},
    [OP_FLOOR_SET] = {NULL, "private set (floor of set)", OP_FLOOR_SET},
    [OP_FLOOR_MIX] = {NULL, "private 95/5 mix (floor of mix)", OP_FLOOR_MIX},
};

/* The order in which operations take turns: each next to its floor. */
static const enum op turn_order[OP_COUNT] = {
    OP_GET1,      OP_GET100, OP_FLOOR_GET, OP_COPY, OP_FLOOR_COPY, OP_SET,
    OP_FLOOR_SET, OP_MIX,    OP_FLOOR_MIX, OP_LOCK, OP_LOCKMIX,
};

static bool op_is_floor(enum op op)
{
    return op >= OP_FLOOR_GET;
}

/* ---------------------------------------------------------------------- */
/* Settings */

struct config {
    uint64_t sizes[MAX_LIST];
    unsigned nsizes;
    unsigned procs[MAX_LIST];
    unsigned nprocs;
    size_t klen;
    size_t vlen;
    double duration_s;
    unsigned reps;
    unsigned ops_mask; /* bit per enum op: which to run */
    bool verbose;      /* print every repetition */
    bool tables;       /* the throughput tables (not --liveness-only) */
    bool liveness;     /* the liveness figures (not --no-liveness) */
    bool big;          /* recovery at 3 GiB too */
    bool huge;         /* --huge: the stores on huge pages */
    bool resize;       /* --resize: resize figures for each store size */
    bool quick;        /* --quick: liveness at small sizes, briefly */
};

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: shmkv-bench [options]\n"
        "\n"
        "Measures shmkv gets and sets against a private in-process hash table\n"
        "holding the same keys, and the store's memory overhead per entry.\n"
        "\n"
        "  -n LIST   store sizes in keys, comma-separated; k and M suffixes\n"
        "            (default 100k,1M)\n"
        "  -k BYTES  key size (default 16)\n"
        "  -v BYTES  value size (default 32)\n"
        "  -d SECS   measured time of one operation in one repetition\n"
        "            (default 0.2), in turns of 50 ms, each after 10 ms of\n"
        "            unmeasured warm-up\n"
        "  -r COUNT  repetitions; the median is reported (default 5)\n"
        "  -p LIST   process counts, comma-separated (default 1,2)\n"
        "  -o LIST   operations: get1,get100,copy,set,mix,lock,lockmix\n"
        "            (default all); lock and lockmix are set and mix with\n"
        "            an empty write section for each set: the write lock's\n"
        "            own cost, the ceiling of how writes scale;\n"
        "            the private-table floors they need always run\n"
        "  --quick   a smoke run of a few seconds: -n 10k -d 0.02 -r 3\n"
        "            (options given explicitly still apply)\n"
        "  --no-liveness    skip the liveness figures: sets with many\n"
        "            handles attached, with a reader stopped in its section,\n"
        "            and the first write after a reader's and a writer's\n"
        "            death at 32 MiB and 1 GiB\n"
        "  --liveness-only  only those\n"
        "  --big     the recovery figures at 3 GiB too\n"
        "  --huge    make the stores of huge pages (SHM_HUGETLB; the pool,\n"
        "            vm.nr_hugepages, must hold them)\n"
        "  --resize  for each store size, also the time to double the\n"
        "            store online and to halve it back, and the slowest\n"
        "            set of a process setting meanwhile\n"
        "  -V        also print every repetition's figure\n"
        "  -h        this help\n");
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    if (*s == '-' || *s == '\0')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s)
        return -1;
    uint64_t mult = 1;
    if (*end == 'k' || *end == 'K')
        mult = 1000;
    else if (*end == 'm' || *end == 'M')
        mult = 1000000;
    if (mult != 1)
        end++;
    if (*end != '\0' || v > UINT64_MAX / mult)
        return -1;
    *out = v * mult;
    return 0;
}

/* Parses "a,b,c" into at most MAX_LIST numbers in [lo, hi]. */
static int parse_list(const char *s, uint64_t lo, uint64_t hi, uint64_t *out,
                      unsigned *count)
{
    char buf[512];
    if (strlen(s) >= sizeof buf)
        return -1;
    snprintf(buf, sizeof buf, "%s", s);
    unsigned n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok != NULL;
         tok = strtok_r(NULL, ",", &save)) {
        uint64_t v;
        if (n == MAX_LIST || parse_u64(tok, &v) != 0 || v < lo || v > hi)
            return -1;
        out[n++] = v;
    }
    if (n == 0)
        return -1;
    *count = n;
    return 0;
}

static int parse_ops(const char *s, unsigned *mask)
{
    char buf[256];
    if (strlen(s) >= sizeof buf)
        return -1;
    snprintf(buf, sizeof buf, "%s", s);
    unsigned m = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok != NULL;
         tok = strtok_r(NULL, ",", &save)) {
        int found = -1;
        for (int op = 0; op < OP_COUNT; op++)
            if (op_info[op].name && strcmp(op_info[op].name, tok) == 0)
                found = op;
        if (found < 0)
            return -1;
        m |= 1u << found;
    }
    if (m == 0)
        return -1;
    *mask = m;
    return 0;
}

static void die_usage(const char *what, const char *arg)
{
    fprintf(stderr, "shmkv-bench: bad %s '%s' (see -h)\n", what, arg);
    exit(2);
}

static void parse_args(int argc, char **argv, struct config *cfg)
{
    static const struct option longopts[] = {
        {"quick", no_argument, NULL, 'Q'},
        {"no-liveness", no_argument, NULL, 'N'},
        {"liveness-only", no_argument, NULL, 'L'},
        {"big", no_argument, NULL, 'B'},
        {"huge", no_argument, NULL, 'H'},
        {"resize", no_argument, NULL, 'R'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool quick = false, have_sizes = false, have_d = false, have_r = false;
    uint64_t list[MAX_LIST], v;
    unsigned n;
    int c;
    memset(cfg, 0, sizeof *cfg);
    cfg->tables = true;
    cfg->liveness = true;
    cfg->klen = 16;
    cfg->vlen = 32;
    cfg->procs[0] = 1;
    cfg->procs[1] = 2;
    cfg->nprocs = 2;
    cfg->ops_mask = (1u << OP_GET1) | (1u << OP_GET100) | (1u << OP_COPY) |
                    (1u << OP_SET) | (1u << OP_MIX) | (1u << OP_LOCK) |
                    (1u << OP_LOCKMIX);
    while ((c = getopt_long(argc, argv, "n:k:v:d:r:p:o:Vh", longopts, NULL)) !=
           -1) {
        switch (c) {
        case 'n':
            if (parse_list(optarg, 1, UINT32_MAX / 2, cfg->sizes,
                           &cfg->nsizes) != 0)
                die_usage("key count list", optarg);
            have_sizes = true;
            break;
        case 'k':
            if (parse_u64(optarg, &v) != 0 || v < 1 || v > 65535)
                die_usage("key size (1 to 65535)", optarg);
            cfg->klen = (size_t)v;
            break;
        case 'v':
            if (parse_u64(optarg, &v) != 0 || v > (16u << 20))
                die_usage("value size (0 to 16 MiB)", optarg);
            cfg->vlen = (size_t)v;
            break;
        case 'd': {
            char *end;
            double d = strtod(optarg, &end);
            if (end == optarg || *end != '\0' || !(d >= 0.001 && d <= 3600))
                die_usage("duration (0.001 to 3600 s)", optarg);
            cfg->duration_s = d;
            have_d = true;
            break;
        }
        case 'r':
            if (parse_u64(optarg, &v) != 0 || v < 1 || v > MAX_REPS)
                die_usage("repetition count (1 to 51)", optarg);
            cfg->reps = (unsigned)v;
            have_r = true;
            break;
        case 'p':
            if (parse_list(optarg, 1, MAX_PROCS, list, &n) != 0)
                die_usage("process count list (1 to 64 each)", optarg);
            for (unsigned i = 0; i < n; i++)
                cfg->procs[i] = (unsigned)list[i];
            cfg->nprocs = n;
            break;
        case 'o':
            if (parse_ops(optarg, &cfg->ops_mask) != 0)
                die_usage("operation list", optarg);
            break;
        case 'Q':
            quick = true;
            break;
        case 'N':
            cfg->liveness = false;
            break;
        case 'L':
            cfg->tables = false;
            break;
        case 'B':
            cfg->big = true;
            break;
        case 'H':
            cfg->huge = true;
            break;
        case 'R':
            cfg->resize = true;
            break;
        case 'V':
            cfg->verbose = true;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            exit(2);
        }
    }
    if (optind < argc)
        die_usage("argument", argv[optind]);
    cfg->quick = quick;
    if (!have_sizes) {
        if (quick) {
            cfg->sizes[0] = 10000;
            cfg->nsizes = 1;
        } else {
            cfg->sizes[0] = 100000;
            cfg->sizes[1] = 1000000;
            cfg->nsizes = 2;
        }
    }
    if (!have_d)
        cfg->duration_s = quick ? 0.02 : 0.2;
    if (!have_r)
        cfg->reps = quick ? 3 : 5;
    for (unsigned i = 0; i < cfg->nsizes; i++) {
        if (cfg->klen < 8 && cfg->sizes[i] > (1ull << (8 * cfg->klen))) {
            fprintf(stderr,
                    "shmkv-bench: %" PRIu64 " distinct keys do not fit in "
                    "%zu-byte keys (at most %llu)\n",
                    cfg->sizes[i], cfg->klen, 1ull << (8 * cfg->klen));
            exit(2);
        }
    }
    /* The floors of the chosen operations always run. */
    for (int op = 0; op < OP_FLOOR_GET; op++)
        if (cfg->ops_mask & (1u << op))
            cfg->ops_mask |= 1u << op_info[op].floor;
}

/* ---------------------------------------------------------------------- */
/* Keys, values and the op stream */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A bijection on 64-bit integers (the splitmix64 finaliser). */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void fill_random(char *out, size_t len, uint64_t seed)
{
    uint64_t s = seed;
    for (size_t off = 0; off < len; off += 8) {
        uint64_t r = splitmix64(&s);
        memcpy(out + off, &r, len - off < 8 ? len - off : 8);
    }
}

/* Key i: random-looking bytes, unique because the last 8 bytes are a
 * bijection of i (for keys under 8 bytes: the low bytes of i). */
static void key_fill(char *out, size_t klen, uint64_t i)
{
    if (klen >= 8) {
        fill_random(out, klen - 8, i ^ 0x6b6579ull);
        uint64_t tail = mix64(i + 1);
        memcpy(out + klen - 8, &tail, 8);
    } else {
        for (size_t b = 0; b < klen; b++)
            out[b] = (char)(i >> (8 * b));
    }
}

static void value_fill(char *out, size_t vlen, uint64_t i)
{
    fill_random(out, vlen, i ^ 0x76616c7565ull);
}

/* What a get adds to the checksum: the first and last 8 bytes of the value
 * (every byte of a shorter one), so the value's memory is really read. */
static inline uint64_t value_sum(const void *v, size_t len)
{
    const unsigned char *p = v;
    if (len >= 8) {
        uint64_t a, b;
        memcpy(&a, p, 8);
        memcpy(&b, p + len - 8, 8);
        return a + b;
    }
    uint64_t s = len;
    for (size_t i = 0; i < len; i++)
        s = s * 31 + p[i];
    return s;
}

/* Uniform in [0, n). */
static uint64_t uniform_below(uint64_t *state, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)splitmix64(state) * n) >> 64);
}

struct stream {
    char *keys;      /* ops keys of klen bytes, back to back */
    uint8_t *is_set; /* for the mixes: 1 where the op is a set */
    size_t ops;
};

static int stream_make(struct stream *s, uint64_t nkeys, size_t klen)
{
    size_t ops = STREAM_MAX_BYTES / klen;
    if (ops > STREAM_MAX_OPS)
        ops = STREAM_MAX_OPS;
    if (ops < 4096)
        ops = 4096;
    s->ops = ops;
    s->keys = malloc(ops * klen);
    s->is_set = malloc(ops);
    if (s->keys == NULL || s->is_set == NULL)
        return -1;
    uint64_t rng = 0x5eed5eed12345ull;
    for (size_t i = 0; i < ops; i++) {
        key_fill(s->keys + i * klen, klen, uniform_below(&rng, nkeys));
        s->is_set[i] = uniform_below(&rng, 100) < MIX_SET_PERCENT;
    }
    return 0;
}

static void stream_free(struct stream *s)
{
    free(s->keys);
    free(s->is_set);
    s->keys = NULL;
    s->is_set = NULL;
}

/* ---------------------------------------------------------------------- */
/* The private table (the floor)
 *
 * Open addressing with linear probing over a power-of-two array of 8-byte
 * slots, at most FLOOR_MAX_LOAD_PERCENT full. A slot holds the XXH3-64
 * hash's high 32 bits (never 0) as a tag and the record's offset in 8-byte
 * units; 0 is empty. Records (key length, value length, key, value, padded
 * to 8 bytes) sit back to back in one arena. A lookup hashes the key, walks
 * slots from hash & mask, compares the tag, then the length and the key
 * bytes, and returns a pointer to the value: the same work a shmkv lookup
 * does, in private memory and without a lock. */

struct private_table {
    uint64_t *slots;
    uint64_t mask;
    char *arena;
    size_t arena_bytes;
    size_t arena_used;
    uint64_t seed;
};

static inline bool keys_equal(const char *a, const char *b, size_t n)
{
    uint64_t x, y, x2, y2;
    if (n >= 8 && n <= 16) {
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        memcpy(&x2, a + n - 8, 8);
        memcpy(&y2, b + n - 8, 8);
        return ((x ^ y) | (x2 ^ y2)) == 0;
    }
    return memcmp(a, b, n) == 0;
}

static size_t record_bytes(size_t klen, size_t vlen)
{
    return (8 + klen + vlen + 7) & ~(size_t)7;
}

static int private_init(struct private_table *t, uint64_t nkeys, size_t klen,
                        size_t vlen)
{
    uint64_t want = nkeys * 100 / FLOOR_MAX_LOAD_PERCENT + 1;
    uint64_t cap = 16;
    while (cap < want)
        cap <<= 1;
    memset(t, 0, sizeof *t);
    t->mask = cap - 1;
    t->seed = 0x9d3f1e5b7a2c4d61ull;
    t->arena_bytes = 8 + nkeys * record_bytes(klen, vlen);
    if (t->arena_bytes / 8 > UINT32_MAX)
        return -1;
    t->slots = calloc(cap, sizeof *t->slots);
    t->arena = malloc(t->arena_bytes);
    if (t->slots == NULL || t->arena == NULL)
        return -1;
    t->arena_used = 8; /* offset 0 means an empty slot */
    return 0;
}

static void private_free(struct private_table *t)
{
    free(t->slots);
    free(t->arena);
    memset(t, 0, sizeof *t);
}

static inline char *private_get(const struct private_table *t, const char *key,
                                size_t klen, size_t *vlen)
{
    uint64_t h = XXH3_64bits_withSeed(key, klen, t->seed);
    uint32_t tag = (uint32_t)(h >> 32) | 1u;
    for (uint64_t i = h & t->mask;; i = (i + 1) & t->mask) {
        uint64_t s = t->slots[i];
        if (s == 0)
            return NULL;
        if ((uint32_t)(s >> 32) == tag) {
            char *r = t->arena + (s & 0xffffffffull) * 8;
            uint32_t lens[2];
            memcpy(lens, r, 8);
            if (lens[0] == klen && keys_equal(r + 8, key, klen)) {
                *vlen = lens[1];
                return r + 8 + klen;
            }
        }
    }
}

/* Inserts a new key or overwrites the value of an existing one in place
 * (the value must keep its length). */
static int private_set(struct private_table *t, const char *key, size_t klen,
                       const char *val, size_t vlen)
{
    uint64_t h = XXH3_64bits_withSeed(key, klen, t->seed);
    uint32_t tag = (uint32_t)(h >> 32) | 1u;
    for (uint64_t i = h & t->mask;; i = (i + 1) & t->mask) {
        uint64_t s = t->slots[i];
        if (s == 0) {
            size_t need = record_bytes(klen, vlen);
            if (t->arena_used + need > t->arena_bytes)
                return -1;
            char *r = t->arena + t->arena_used;
            uint32_t lens[2] = {(uint32_t)klen, (uint32_t)vlen};
            memcpy(r, lens, 8);
            memcpy(r + 8, key, klen);
            memcpy(r + 8 + klen, val, vlen);
            t->slots[i] = (uint64_t)tag << 32 | (t->arena_used / 8);
            t->arena_used += need;
            return 0;
        }
        if ((uint32_t)(s >> 32) == tag) {
            char *r = t->arena + (s & 0xffffffffull) * 8;
            uint32_t lens[2];
            memcpy(lens, r, 8);
            if (lens[0] == klen && keys_equal(r + 8, key, klen)) {
                if (lens[1] != vlen)
                    return -1;
                memcpy(r + 8 + klen, val, vlen);
                return 0;
            }
        }
    }
}

static uint64_t private_bytes(const struct private_table *t)
{
    return (t->mask + 1) * sizeof *t->slots + t->arena_used;
}

/* ---------------------------------------------------------------------- */
/* State shared by the parent and its workers (MAP_SHARED | MAP_ANONYMOUS) */

struct measurement {
    uint64_t ops;
    uint64_t ns;
};

struct shared {
    _Atomic uint32_t arrived; /* barrier: workers arrived in this phase */
    _Atomic uint32_t phase;   /* barrier: bumped by the last to arrive */
    _Atomic int abort;        /* set by the parent when a run must stop */
    _Atomic int error_taken;  /* the first failing worker writes error */
    char error[512];
    uint64_t checksum[MAX_PROCS];
    uint64_t private_bytes; /* worker 0's private table, bytes */
    struct measurement result[MAX_REPS][OP_COUNT][MAX_PROCS];
};

static struct shared *shared;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Waits until count workers arrived. Returns -1 if the parent aborted the
 * run or the others never came. */
static int barrier_wait(unsigned count)
{
    uint32_t phase = atomic_load_explicit(&shared->phase, memory_order_acquire);
    /* acq_rel: the last arrival sees every earlier arrival's writes. */
    if (atomic_fetch_add_explicit(&shared->arrived, 1, memory_order_acq_rel) +
            1 ==
        count) {
        atomic_store_explicit(&shared->arrived, 0, memory_order_relaxed);
        /* release: the reset above is visible before the new phase. */
        atomic_fetch_add_explicit(&shared->phase, 1, memory_order_release);
        return 0;
    }
    double deadline = now_s() + BARRIER_TIMEOUT_S;
    for (unsigned spins = 0;
         atomic_load_explicit(&shared->phase, memory_order_acquire) == phase;
         spins++) {
        if (atomic_load_explicit(&shared->abort, memory_order_relaxed))
            return -1;
        if (spins >= 64) {
            /* More processes than CPUs, or a busy machine: let them run. */
            sched_yield();
            if ((spins & 1023) == 0 && now_s() > deadline)
                return -1;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Workers */

/* How many turns the D seconds of one measurement are split into. */
static unsigned turns_per_measurement(double duration_s)
{
    unsigned turns = (unsigned)(duration_s / SLICE_S + 0.5);
    return turns < 1 ? 1 : turns;
}

struct worker {
    unsigned id;
    struct shmkv *kv;
    struct private_table table;
    const char *keys_begin;
    const char *keys_end;
    const char *key; /* next key in the stream */
    const uint8_t *is_set_begin;
    const uint8_t *is_set;
    size_t klen;
    size_t vlen;
    char *copy_buf; /* vlen bytes (at least 1) */
    char *set_val;  /* the value sets write */
    uint64_t sum;
};

/* Records the first worker error for the parent and exits. */
static void worker_fail(const struct worker *w, const char *what, int rc)
    __attribute__((noreturn));

static void worker_fail(const struct worker *w, const char *what, int rc)
{
    int expected = 0;
    if (atomic_compare_exchange_strong(&shared->error_taken, &expected, 1))
        snprintf(shared->error, sizeof shared->error, "worker %u: %s: %s (%s)",
                 w->id, what, rc < 0 ? shmkv_strerror(rc) : "failed",
                 rc < 0 ? shmkv_last_error() : "-");
    _exit(1);
}

/* Advances to the next key of the stream; the mix flag moves with it. */
static inline const char *next_key(struct worker *w, bool *is_set)
{
    const char *k = w->key;
    *is_set = *w->is_set;
    w->key += w->klen;
    w->is_set++;
    if (w->key == w->keys_end) {
        w->key = w->keys_begin;
        w->is_set = w->is_set_begin;
    }
    return k;
}

static inline void shmkv_get_one(struct worker *w, const char *key)
{
    shmkv_val_t v;
    int rc = shmkv_read_begin(w->kv);
    if (rc != 0)
        worker_fail(w, "shmkv_read_begin", rc);
    rc = shmkv_get(w->kv, key, w->klen, &v);
    if (rc != 0)
        worker_fail(w, "shmkv_get", rc);
    /* Read the value before the section ends: that is where it is valid. */
    w->sum += value_sum(v.data, v.len);
    shmkv_read_end(w->kv);
}

static inline void shmkv_set_one(struct worker *w, const char *key)
{
    int rc = shmkv_set(w->kv, key, w->klen, w->set_val, w->vlen, 0, 0);
    if (rc != 0)
        worker_fail(w, "shmkv_set", rc);
}

/* The write lock alone: what every set pays before its own work. */
static inline void shmkv_lock_one(struct worker *w)
{
    int rc = shmkv_write_begin(w->kv);
    if (rc != 0)
        worker_fail(w, "shmkv_write_begin", rc);
    shmkv_write_end(w->kv);
}

static inline void private_get_one(struct worker *w, const char *key)
{
    size_t vlen;
    const char *v = private_get(&w->table, key, w->klen, &vlen);
    if (v == NULL)
        worker_fail(w, "private table: key missing", 0);
    w->sum += value_sum(v, vlen);
}

static inline void private_set_one(struct worker *w, const char *key)
{
    if (private_set(&w->table, key, w->klen, w->set_val, w->vlen) != 0)
        worker_fail(w, "private table set", 0);
}

/* Runs n operations (n a multiple of GETS_PER_SECTION). */
static void run_chunk(struct worker *w, enum op op, unsigned n)
{
    bool is_set;
    switch (op) {
    case OP_GET1:
        for (unsigned i = 0; i < n; i++)
            shmkv_get_one(w, next_key(w, &is_set));
        break;
    case OP_GET100:
        for (unsigned i = 0; i < n; i += GETS_PER_SECTION) {
            int rc = shmkv_read_begin(w->kv);
            if (rc != 0)
                worker_fail(w, "shmkv_read_begin", rc);
            for (unsigned j = 0; j < GETS_PER_SECTION; j++) {
                shmkv_val_t v;
                rc = shmkv_get(w->kv, next_key(w, &is_set), w->klen, &v);
                if (rc != 0)
                    worker_fail(w, "shmkv_get", rc);
                w->sum += value_sum(v.data, v.len);
            }
            shmkv_read_end(w->kv);
        }
        break;
    case OP_COPY:
        for (unsigned i = 0; i < n; i++) {
            size_t vlen;
            int rc = shmkv_get_copy(w->kv, next_key(w, &is_set), w->klen,
                                    w->copy_buf, w->vlen, &vlen);
            if (rc != 0)
                worker_fail(w, "shmkv_get_copy", rc);
            w->sum += value_sum(w->copy_buf, vlen);
        }
        break;
    case OP_SET:
        for (unsigned i = 0; i < n; i++)
            shmkv_set_one(w, next_key(w, &is_set));
        break;
    case OP_MIX:
        for (unsigned i = 0; i < n; i++) {
            const char *key = next_key(w, &is_set);
            if (is_set)
                shmkv_set_one(w, key);
            else
                shmkv_get_one(w, key);
        }
        break;
    case OP_LOCK:
        for (unsigned i = 0; i < n; i++)
            shmkv_lock_one(w);
        break;
    case OP_LOCKMIX:
        for (unsigned i = 0; i < n; i++) {
            const char *key = next_key(w, &is_set);
            if (is_set)
                shmkv_lock_one(w);
            else
                shmkv_get_one(w, key);
        }
        break;
    case OP_FLOOR_GET:
        for (unsigned i = 0; i < n; i++)
            private_get_one(w, next_key(w, &is_set));
        break;
    case OP_FLOOR_COPY:
        for (unsigned i = 0; i < n; i++) {
            size_t vlen;
            const char *v =
                private_get(&w->table, next_key(w, &is_set), w->klen, &vlen);
            if (v == NULL)
                worker_fail(w, "private table: key missing", 0);
            memcpy(w->copy_buf, v, vlen);
            w->sum += value_sum(w->copy_buf, vlen);
        }
        break;
    case OP_FLOOR_SET:
        for (unsigned i = 0; i < n; i++)
            private_set_one(w, next_key(w, &is_set));
        break;
    case OP_FLOOR_MIX:
        for (unsigned i = 0; i < n; i++) {
            const char *key = next_key(w, &is_set);
            if (is_set)
                private_set_one(w, key);
            else
                private_get_one(w, key);
        }
        break;
    case OP_COUNT:
        break;
    }
}

static int count_entry(void *ctx, const void *key, size_t klen, const void *val,
                       size_t vlen, int64_t ttl_s)
{
    (void)key;
    (void)klen;
    (void)ttl_s;
    uint64_t *count_and_sum = ctx;
    count_and_sum[0]++;
    count_and_sum[1] += value_sum(val, vlen);
    return 0;
}

struct run {
    const struct config *cfg;
    const char *store_key;
    uint64_t nkeys;
    const struct stream *stream;
    unsigned nprocs;
};

static void worker_main(const struct run *run, unsigned id, pid_t parent)
    __attribute__((noreturn));

static void worker_main(const struct run *run, unsigned id, pid_t parent)
{
    const struct config *cfg = run->cfg;
    struct worker w = {.id = id, .klen = cfg->klen, .vlen = cfg->vlen};

    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
        _exit(1);

    int rc = shmkv_open(run->store_key, 0, &w.kv);
    if (rc != 0)
        worker_fail(&w, "shmkv_open", rc);
    w.copy_buf = malloc(cfg->vlen + 1);
    w.set_val = malloc(cfg->vlen + 1);
    char *key = malloc(cfg->klen);
    char *val = malloc(cfg->vlen + 1);
    if (w.copy_buf == NULL || w.set_val == NULL || key == NULL || val == NULL ||
        private_init(&w.table, run->nkeys, cfg->klen, cfg->vlen) != 0)
        worker_fail(&w, "out of memory for the private table", 0);
    /* The private table holds the same keys and values as the store. */
    for (uint64_t i = 0; i < run->nkeys; i++) {
        key_fill(key, cfg->klen, i);
        value_fill(val, cfg->vlen, i);
        if (private_set(&w.table, key, cfg->klen, val, cfg->vlen) != 0)
            worker_fail(&w, "building the private table", 0);
    }
    free(key);
    free(val);
    if (id == 0)
        shared->private_bytes = private_bytes(&w.table);
    value_fill(w.set_val, cfg->vlen, 0x5e7ull + id);

    /* Workers start at different points of the stream. */
    const struct stream *s = run->stream;
    size_t start = s->ops / run->nprocs * id;
    w.keys_begin = s->keys;
    w.keys_end = s->keys + s->ops * cfg->klen;
    w.key = s->keys + start * cfg->klen;
    w.is_set_begin = s->is_set;
    w.is_set = s->is_set + start;

    /* Visit every entry once, so that the first measurement does not pay
     * for this process's page faults on the freshly attached segments (the
     * private table was faulted in as it was built). */
    uint64_t visited[2] = {0, 0};
    rc = shmkv_foreach(w.kv, count_entry, visited);
    if (rc != 0)
        worker_fail(&w, "shmkv_foreach", rc);
    if (visited[0] != run->nkeys)
        worker_fail(&w, "shmkv_foreach: wrong entry count", 0);
    w.sum += visited[1];

    if (barrier_wait(run->nprocs) != 0)
        _exit(1);
    /* A repetition gives every operation D seconds, in turns of about
     * SLICE_S: the operations take turns, each shmkv operation next to the
     * private-table operation it is compared with, so that a slow moment of
     * a noisy machine falls on all of them alike instead of on one. Each
     * turn starts at a barrier and runs WARMUP_S unmeasured first, so that
     * it is not charged for refilling the caches the previous operation
     * filled with other data. */
    unsigned slices = turns_per_measurement(cfg->duration_s);
    uint64_t slice_ns = (uint64_t)(cfg->duration_s * 1e9) / slices;
    uint64_t warm_ns = (uint64_t)(WARMUP_S * 1e9);
    for (unsigned rep = 0; rep < cfg->reps; rep++) {
        for (unsigned slice = 0; slice < slices; slice++) {
            for (unsigned turn = 0; turn < OP_COUNT; turn++) {
                enum op op = turn_order[turn];
                if (!(cfg->ops_mask & (1u << op)))
                    continue;
                if (barrier_wait(run->nprocs) != 0)
                    _exit(1);
                uint64_t warm_end = now_ns() + warm_ns;
                do
                    run_chunk(&w, op, CHUNK_OPS);
                while (now_ns() < warm_end);
                uint64_t ops = 0, t0 = now_ns(), t;
                do {
                    run_chunk(&w, op, CHUNK_OPS);
                    ops += CHUNK_OPS;
                    t = now_ns();
                } while (t - t0 < slice_ns);
                shared->result[rep][op][id].ops += ops;
                shared->result[rep][op][id].ns += t - t0;
            }
        }
    }
    shared->checksum[id] = w.sum;
    shmkv_close(w.kv);
    private_free(&w.table);
    _exit(0);
}

/* ---------------------------------------------------------------------- */
/* The parent: store ownership and cleanup */

static pid_t parent_pid;
static char store_key[32];         /* the live store's key spec, "" if none */
static struct shmkv *store_handle; /* the parent's handle on it */
static volatile pid_t children[MAX_PROCS];
static volatile sig_atomic_t nchildren;

static void kill_children(int sig)
{
    for (sig_atomic_t i = 0; i < nchildren; i++)
        if (children[i] > 0)
            kill(children[i], sig);
}

static void block_signals(bool block)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    sigprocmask(block ? SIG_BLOCK : SIG_UNBLOCK, &set, NULL);
}

static void store_cleanup(void)
{
    if (getpid() != parent_pid)
        return;
    block_signals(true);
    if (store_handle != NULL) {
        shmkv_destroy(store_handle);
        store_handle = NULL;
    } else if (store_key[0] != '\0') {
        shmkv_remove(store_key);
    }
    store_key[0] = '\0';
}

static void on_signal(int sig)
{
    if (getpid() != parent_pid)
        _exit(128 + sig); /* a worker between fork and its own handlers */
    if (shared != NULL)
        atomic_store(&shared->abort, 1);
    kill_children(SIGTERM);
    /* Remove by key: the handle may be in the middle of a call. */
    if (store_key[0] != '\0')
        shmkv_remove(store_key);
    store_key[0] = '\0';
    signal(sig, SIG_DFL);
    raise(sig);
}

static void fail(const char *fmt, ...)
    __attribute__((noreturn, format(printf, 1, 2)));

static void fail(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fprintf(stderr, "shmkv-bench: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    exit(1); /* atexit destroys the store */
}

static void fail_store(const char *what, int rc)
{
    const char *hint = "";
    if (rc == SHMKV_ELIMIT)
        hint = "\n  raise the limit it names, e.g. sysctl -w "
               "kernel.shmmax=... kernel.shmall=... (pages) or kernel.shmmni";
    else if (rc == SHMKV_ECLIENTS)
        hint = "\n  fewer processes (-p), or a store with more client slots";
    fail("%s: %s: %s%s", what, shmkv_strerror(rc), shmkv_last_error(), hint);
}

/* Store bytes for nkeys entries: the index at its target load for
 * max_entries = nkeys, the entries themselves, and 25% arena slack (a
 * replacing set allocates the new entry before it frees the old). */
static uint64_t store_size_bytes(uint64_t nkeys, size_t klen, size_t vlen)
{
    uint64_t entry = (sizeof(struct block) + klen + vlen + UNIT_BYTES - 1) /
                     UNIT_BYTES * UNIT_BYTES;
    uint64_t buckets =
        nkeys * 100 / (BUCKET_SLOTS * INDEX_TARGET_LOAD_PERCENT) + 64;
    uint64_t bytes =
        buckets * sizeof(struct bucket) + nkeys * entry / 4 * 5 + (1u << 20);
    if (bytes < 4 * (uint64_t)vlen + (1u << 20))
        bytes = 4 * (uint64_t)vlen + (1u << 20);
    return bytes;
}

/* Creates a store with options o (its key chosen here) at a key unique
 * to this process; it becomes store_handle. */
static void store_create_with(struct shmkv_options *o)
{
    static unsigned counter;
    /* Signals wait while the store and its key are not both recorded: the
     * handler must neither miss the store nor remove someone else's. */
    char key[sizeof store_key];
    struct shmkv *kv = NULL;
    int rc = SHMKV_EEXIST;
    for (int attempt = 0; attempt < 256 && rc == SHMKV_EEXIST; attempt++) {
        snprintf(key, sizeof key, "key:0x5c%04x%02x",
                 (unsigned)parent_pid & 0xffffu, counter++ & 0xffu);
        o->key = key;
        block_signals(true);
        rc = shmkv_create(o, &kv);
        if (rc == 0) {
            memcpy(store_key, key, sizeof store_key);
            store_handle = kv;
        }
        block_signals(false);
    }
    o->key = NULL;
    if (rc != 0) {
        char what[96];
        snprintf(what, sizeof what, "creating a %" PRIu64 "-byte store at %s",
                 o->size_bytes, key);
        fail_store(what, rc);
    }
}

/* Creates the store for nkeys entries of the configured sizes. */
static void store_create(const struct config *cfg, uint64_t nkeys)
{
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = store_size_bytes(nkeys, cfg->klen, cfg->vlen);
    o.max_entries = nkeys;
    if (cfg->klen > 250)
        o.max_key_bytes = (uint32_t)cfg->klen;
    if (cfg->vlen > (1u << 20))
        o.max_value_bytes = (uint32_t)cfg->vlen;
    if (cfg->huge)
        o.huge_pages = SHMKV_HUGE_YES;
    if (o.size_bytes > (64ull << 30))
        fail("%" PRIu64 " keys of %zu+%zu bytes need %" PRIu64
             " bytes: over shmkv's 64 GiB limit",
             nkeys, cfg->klen, cfg->vlen, o.size_bytes);
    store_create_with(&o);
}

/* Destroys store_handle's store. */
static void store_drop(void)
{
    block_signals(true);
    shmkv_destroy(store_handle);
    store_handle = NULL;
    store_key[0] = '\0';
    block_signals(false);
}

static void store_fill(const struct config *cfg, uint64_t nkeys)
{
    char *key = malloc(cfg->klen);
    char *val = malloc(cfg->vlen + 1);
    if (key == NULL || val == NULL)
        fail("out of memory");
    for (uint64_t i = 0; i < nkeys; i++) {
        key_fill(key, cfg->klen, i);
        value_fill(val, cfg->vlen, i);
        int rc = shmkv_set(store_handle, key, cfg->klen, val, cfg->vlen, 0,
                           SHMKV_NX);
        if (rc != 0)
            fail_store("filling the store", rc);
    }
    /* Every key reads back with its value. */
    for (uint64_t i = 0; i < nkeys; i++) {
        if (i % 1000 == 0) {
            if (i > 0)
                shmkv_read_end(store_handle);
            int rc = shmkv_read_begin(store_handle);
            if (rc != 0)
                fail_store("shmkv_read_begin", rc);
        }
        key_fill(key, cfg->klen, i);
        value_fill(val, cfg->vlen, i);
        shmkv_val_t v;
        int rc = shmkv_get(store_handle, key, cfg->klen, &v);
        if (rc != 0)
            fail_store("reading back the store", rc);
        if (v.len != cfg->vlen || memcmp(v.data, val, cfg->vlen) != 0)
            fail("key %" PRIu64 " reads back a wrong value", i);
    }
    shmkv_read_end(store_handle);
    free(key);
    free(val);
}

/* Forks the workers for one process count and waits for them. */
static void run_workers(const struct run *run, double expected_s)
{
    memset(shared, 0, sizeof *shared);
    fflush(stdout);
    fflush(stderr);
    nchildren = 0;
    for (unsigned id = 0; id < run->nprocs; id++) {
        pid_t pid = fork();
        if (pid < 0) {
            atomic_store(&shared->abort, 1);
            kill_children(SIGTERM);
            while (wait(NULL) > 0)
                ;
            nchildren = 0;
            fail("fork: %s", strerror(errno));
        }
        if (pid == 0)
            worker_main(run, id, parent_pid);
        children[id] = pid;
        nchildren = (sig_atomic_t)(id + 1);
    }
    double deadline = now_s() + 3 * expected_s + 120;
    unsigned left = run->nprocs;
    char why[600] = "";
    while (left > 0) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid < 0 && errno != EINTR)
            break;
        if (pid <= 0) {
            if (why[0] == '\0' && now_s() > deadline) {
                snprintf(why, sizeof why, "workers took too long");
                atomic_store(&shared->abort, 1);
                kill_children(SIGKILL);
            }
            struct timespec pause = {0, 10 * 1000000};
            nanosleep(&pause, NULL);
            continue;
        }
        left--;
        for (sig_atomic_t i = 0; i < nchildren; i++)
            if (children[i] == pid)
                children[i] = 0;
        bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!ok && why[0] == '\0') {
            if (atomic_load(&shared->error_taken))
                snprintf(why, sizeof why, "%s", shared->error);
            else if (WIFSIGNALED(status))
                snprintf(why, sizeof why, "worker %d killed by signal %d",
                         (int)pid, WTERMSIG(status));
            else
                snprintf(why, sizeof why, "worker %d exited with status %d",
                         (int)pid, WEXITSTATUS(status));
            atomic_store(&shared->abort, 1);
            kill_children(SIGTERM);
        }
    }
    nchildren = 0;
    if (why[0] != '\0')
        fail("%s", why);
}

/* ---------------------------------------------------------------------- */
/* Results */

struct figure {
    double median; /* aggregate ops/s */
    double spread; /* (max - min) / median over repetitions */
};

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static struct figure figure_of(unsigned reps, enum op op, unsigned nprocs,
                               bool verbose)
{
    double rate[MAX_REPS] = {0};
    if (verbose)
        printf("  %u proc %-33s", nprocs, op_info[op].label);
    for (unsigned r = 0; r < reps; r++) {
        rate[r] = 0;
        for (unsigned p = 0; p < nprocs; p++) {
            const struct measurement *m = &shared->result[r][op][p];
            if (m->ns > 0)
                rate[r] += (double)m->ops * 1e9 / (double)m->ns;
        }
        if (verbose)
            printf(" %7.2fM", rate[r] / 1e6);
    }
    if (verbose)
        printf("\n");
    qsort(rate, reps, sizeof rate[0], cmp_double);
    struct figure f;
    f.median =
        reps % 2 ? rate[reps / 2] : (rate[reps / 2 - 1] + rate[reps / 2]) / 2;
    f.spread = f.median > 0 ? (rate[reps - 1] - rate[0]) / f.median : 0;
    return f;
}

static void format_rate(char *buf, size_t cap, double ops_s)
{
    if (ops_s >= 1e6)
        snprintf(buf, cap, "%.2fM", ops_s / 1e6);
    else
        snprintf(buf, cap, "%.0fk", ops_s / 1e3);
}

static void format_count(char *buf, size_t cap, uint64_t v)
{
    char digits[32];
    snprintf(digits, sizeof digits, "%" PRIu64, v);
    size_t n = strlen(digits), o = 0;
    for (size_t i = 0; i < n && o + 2 < cap; i++) {
        if (i > 0 && (n - i) % 3 == 0)
            buf[o++] = ',';
        buf[o++] = digits[i];
    }
    buf[o] = '\0';
}

static unsigned targets_passed, targets_failed;

static const char *verdict(bool ok)
{
    if (ok)
        targets_passed++;
    else
        targets_failed++;
    return ok ? "pass" : "FAIL";
}

/* figures[i][op] for procs[i] */
static struct figure figures[MAX_LIST][OP_COUNT];

#define HANDOFF_ROUNDS 200000u

/* The time a cache line written by one process takes to reach another
 * that waits for it, in ns: two processes pass a counter back and forth
 * on one line of a MAP_SHARED mapping. What any write a second process
 * must see costs at least, however it is locked: when two processes take
 * turns at the write lock, the lock's line makes this trip once per set.
 * 0 if it could not be measured (one CPU, or no fork). */
static double line_handoff_ns(void)
{
    _Atomic uint64_t *line = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (line == MAP_FAILED)
        return 0;
    atomic_store(line, 0);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        munmap((void *)line, 4096);
        return 0;
    }
    /* Each side waits for the other's odd or even value; a side that
     * waits a second gives up (the other is not running beside it). */
    uint64_t first = pid == 0 ? 1 : 0;
    double start = now_s(), deadline = start + 1.0;
    bool ok = true;
    for (uint64_t i = first; i < 2 * HANDOFF_ROUNDS && ok; i += 2) {
        for (unsigned spins = 1; atomic_load(line) != i; spins++)
            if ((spins & 0xfffff) == 0 && now_s() > deadline) {
                ok = false;
                break;
            }
        if (ok)
            atomic_store(line, i + 1);
    }
    double elapsed = now_s() - start;
    if (pid == 0)
        _exit(ok ? 0 : 1);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    munmap((void *)line, 4096);
    if (!ok || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return 0;
    return elapsed * 1e9 / (2.0 * HANDOFF_ROUNDS);
}

static void print_table(const struct config *cfg, uint64_t nkeys)
{
    char count[32];
    format_count(count, sizeof count, nkeys);
    printf("\n%s keys: ops/s, median of %u runs of %.3g s (spread = "
           "(max-min)/median);\n",
           count, cfg->reps, cfg->duration_s);
    printf("x floor = the matching private-table ops/s / shmkv ops/s "
           "(1.00 = as fast as private memory)\n\n");
    printf("%-33s", "");
    for (unsigned i = 0; i < cfg->nprocs; i++) {
        char head[32];
        snprintf(head, sizeof head, "%u process%s", cfg->procs[i],
                 cfg->procs[i] == 1 ? "" : "es");
        printf("  %-23s", head);
    }
    printf("  target\n%-33s", "operation");
    for (unsigned i = 0; i < cfg->nprocs; i++)
        printf("  %8s %5s %8s", "ops/s", "sprd", "x floor");
    printf("\n");
    for (int op = 0; op < OP_COUNT; op++) {
        if (!(cfg->ops_mask & (1u << op)))
            continue;
        printf("%-33s", op_info[op].label);
        /* The verdict for each process count, in the order run. */
        char verdicts[128] = "";
        size_t vused = 0;
        for (unsigned i = 0; i < cfg->nprocs; i++) {
            struct figure f = figures[i][op];
            double slow = figures[i][op_info[op].floor].median / f.median;
            char rate[32], spread[16], ratio[16] = "";
            format_rate(rate, sizeof rate, f.median);
            snprintf(spread, sizeof spread, "%.0f%%", f.spread * 100);
            if (!op_is_floor((enum op)op))
                snprintf(ratio, sizeof ratio, "%.2fx", slow);
            printf("  %8s %5s %8s", rate, spread, ratio);
            bool judged = false, ok = false;
            if (op == OP_GET100 || op == OP_GET1) {
                judged = true;
                ok = slow <= (op == OP_GET100 ? 1.5 : 2.5);
            } else if (op == OP_SET && cfg->procs[i] == 1) {
                judged = true;
                ok = f.median >= 2e6;
            }
            if (judged && vused < sizeof verdicts)
                vused += (size_t)snprintf(
                    verdicts + vused, sizeof verdicts - vused, "%s%s (%u)",
                    vused ? ", " : "", verdict(ok), cfg->procs[i]);
        }
        if (op == OP_GET100)
            printf("  x floor <= 1.5: %s", verdicts);
        else if (op == OP_GET1)
            printf("  x floor <= 2.5: %s", verdicts);
        else if (op == OP_SET && vused > 0)
            printf("  >= 2.00M/s (1 proc): %s", verdicts);
        else if (op == OP_SET)
            printf("  >= 2.00M/s (1 proc): not run (-p)");
        printf("\n");
    }
    /* Writes that scale: needs 1 and 2 processes in the run. */
    int one = -1, two = -1;
    for (unsigned i = 0; i < cfg->nprocs; i++) {
        if (cfg->procs[i] == 1)
            one = (int)i;
        if (cfg->procs[i] == 2)
            two = (int)i;
    }
    if (one < 0 || two < 0)
        return;
    if (cfg->ops_mask & (1u << OP_SET)) {
        double r1 = figures[one][OP_SET].median,
               r2 = figures[two][OP_SET].median;
        printf("2 processes setting together / 1 alone: %.2f   target >= 1: "
               "%s\n",
               r2 / r1, verdict(r2 >= r1));
        /* What bounds that: 2 processes taking turns at the lock each
         * wait for its line to arrive from the other, once per set. */
        double handoff = line_handoff_ns();
        if (handoff > 0)
            printf("  a cache line's move between 2 processes: %.0f ns; a "
                   "set in 1 process: %.0f ns\n",
                   handoff, 1e9 / r1);
    }
    if (cfg->ops_mask & (1u << OP_MIX)) {
        double x =
            figures[two][OP_FLOOR_MIX].median / figures[two][OP_MIX].median;
        printf("95/5 mix in 2 processes: %.2fx the floor   target <= 2.0x: "
               "%s\n",
               x, verdict(x <= 2.0));
    }
    /* The same with the lock alone: how far the one write lock lets
     * writes scale before they do any work. */
    if (cfg->ops_mask & (1u << OP_LOCK))
        printf("  the write lock alone, 2 processes / 1: %.2f\n",
               figures[two][OP_LOCK].median / figures[one][OP_LOCK].median);
    if (cfg->ops_mask & (1u << OP_LOCKMIX))
        printf("  the 95/5 mix with the lock alone for sets, 2 processes: "
               "%.2fx the floor\n",
               figures[two][OP_FLOOR_MIX].median /
                   figures[two][OP_LOCKMIX].median);
}

static void print_overhead(const struct config *cfg, uint64_t nkeys,
                           const struct shmkv_stats *st, uint64_t private_total)
{
    double n = (double)nkeys;
    double kv = (double)(cfg->klen + cfg->vlen);
    uint64_t index_bytes =
        st->index_slots / BUCKET_SLOTS * sizeof(struct bucket);
    double arena_per = (double)st->bytes_used / n;
    double index_per = (double)index_bytes / n;
    double overhead = arena_per + index_per - kv;
    printf("\nmemory per entry at %" PRIu64 " entries (key %zu B + value %zu "
           "B = %.0f B):\n",
           st->entries, cfg->klen, cfg->vlen, kv);
    printf("  arena: stats.bytes_used / N            %7.2f B  (key+value + "
           "%.2f B: %zu-byte entry header, padding to %u-byte units)\n",
           arena_per, arena_per - kv, sizeof(struct block), UNIT_BYTES);
    printf("  index: index_slots / %u * %zu B / N     %7.2f B  (%" PRIu64
           " slots in %zu-byte buckets, sized for max_entries = N)\n",
           BUCKET_SLOTS, sizeof(struct bucket), index_per, st->index_slots,
           sizeof(struct bucket));
    printf("  overhead = arena + index - key+value  %7.2f B   target <= 32: "
           "%s\n",
           overhead, verdict(overhead <= 32.0));
    printf("  not counted above: free arena space (this benchmark sizes the "
           "arena 25%% over need), segment headers,\n"
           "  the control segment (locks, %u client slots): stats."
           "segment_bytes / N = %.2f B, %.2f B beyond key+value\n",
           st->max_clients, (double)st->segment_bytes / n,
           (double)st->segment_bytes / n - kv);
    if (private_total > 0)
        printf("  private table, for comparison: (slot array + records) / N "
               "- key+value = %.2f B\n",
               (double)private_total / n - kv);
}

static void print_store_counters(struct shmkv *kv)
{
    struct shmkv_stats st;
    if (shmkv_stats(kv, &st) != 0)
        return;
    printf("  store counters: %" PRIu64 " sets, %" PRIu64 " hits, %" PRIu64
           " misses, %" PRIu64 " lock waits, %" PRIu64 " lock timeouts, "
           "%" PRIu64 " recoveries\n",
           st.sets, st.hits, st.misses, st.lock_waits, st.lock_timeouts,
           st.recoveries);
}

/* ---------------------------------------------------------------------- */
/* Liveness: what attached handles, a stopped reader and dead processes
 * cost writers. Each figure is measured in child processes forked for it;
 * the parent owns the store (store_handle). */

struct live_shared {
    _Atomic int ready;
    _Atomic uint64_t ops;
    _Atomic uint64_t ns;
    _Atomic uint64_t worst_ns;
};

static struct live_shared *live;

static pid_t live_fork(void)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        fail("fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent_pid)
            _exit(1);
    } else {
        children[0] = pid;
        nchildren = 1;
    }
    return pid;
}

static int live_reap(pid_t pid)
{
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    nchildren = 0;
    return status;
}

/* In a child: replacing sets of random keys among nkeys for seconds;
 * counts them and the slowest one. */
static void live_setter(const struct config *cfg, uint64_t nkeys,
                        double seconds)
{
    struct shmkv *kv;
    if (shmkv_open(store_key, 0, &kv) != 0)
        _exit(2);
    char *key = malloc(cfg->klen), *val = malloc(cfg->vlen + 1);
    if (key == NULL || val == NULL)
        _exit(3);
    uint64_t rng = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull;
    uint64_t ops = 0, worst = 0, start = now_ns();
    uint64_t end = start + (uint64_t)(seconds * 1e9);
    uint64_t t = start;
    while (t < end) {
        uint64_t i = uniform_below(&rng, nkeys);
        key_fill(key, cfg->klen, i);
        value_fill(val, cfg->vlen, i + ops);
        int rc = shmkv_set(kv, key, cfg->klen, val, cfg->vlen, 0, 0);
        if (rc != 0) {
            fprintf(stderr, "shmkv-bench: set: %s: %s\n", shmkv_strerror(rc),
                    shmkv_last_error());
            _exit(4);
        }
        uint64_t t2 = now_ns();
        if (t2 - t > worst)
            worst = t2 - t;
        t = t2;
        ops++;
    }
    live->ops = ops;
    live->ns = t - start;
    live->worst_ns = worst;
    shmkv_close(kv);
    _exit(0);
}

/* Sets per second in a child process, and the slowest set (ms). */
static double live_set_rate(const struct config *cfg, uint64_t nkeys,
                            double seconds, double *worst_ms)
{
    live->ops = live->ns = live->worst_ns = 0;
    pid_t pid = live_fork();
    if (pid == 0)
        live_setter(cfg, nkeys, seconds);
    int status = live_reap(pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("the setting child failed (status %d)", status);
    if (worst_ms != NULL)
        *worst_ms = (double)live->worst_ns / 1e6;
    return live->ns ? (double)live->ops * 1e9 / (double)live->ns : 0;
}

/* In a child: opens the store, begins a read section and looks key 0 up,
 * says so, then waits (to be stopped or killed). */
static pid_t live_reader_in_section(const struct config *cfg)
{
    live->ready = 0;
    pid_t pid = live_fork();
    if (pid == 0) {
        struct shmkv *kv;
        char *key = malloc(cfg->klen);
        shmkv_val_t v;
        if (key == NULL || shmkv_open(store_key, SHMKV_RDONLY, &kv) != 0 ||
            shmkv_read_begin(kv) != 0)
            _exit(2);
        key_fill(key, cfg->klen, 0);
        shmkv_get(kv, key, cfg->klen, &v);
        live->ready = 1;
        for (;;)
            pause();
    }
    while (!live->ready) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid)
            fail("the reading child failed (status %d)", status);
        usleep(100);
    }
    return pid;
}

static double median_of(double *v, unsigned n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Sets with 1, 100 and 1,000 handles attached (idle, in this process). */
static void live_handles(const struct config *cfg)
{
    const uint64_t nkeys = 100000;
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = 64u << 20;
    o.max_entries = nkeys;
    o.max_clients = 1100;
    store_create_with(&o);
    store_fill(cfg, nkeys);
    static const unsigned counts[] = {1, 100, 1000};
    static struct shmkv *extra[1000];
    unsigned open_now = 0;
    double rate[3];
    printf("\nreplacing sets in 1 process, %s keys in 64 MiB, with handles "
           "attached (idle, but each a client slot a writer may look at):\n",
           "100,000");
    for (unsigned c = 0; c < 3; c++) {
        while (open_now + 1 < counts[c]) {
            int rc = shmkv_open(store_key, SHMKV_RDONLY, &extra[open_now]);
            if (rc != 0)
                fail_store("attaching an extra handle", rc);
            open_now++;
        }
        double r[5] = {0};
        unsigned reps = cfg->quick ? 1 : 5;
        for (unsigned rep = 0; rep < reps; rep++)
            r[rep] = live_set_rate(cfg, nkeys, cfg->quick ? 0.1 : 0.3, NULL);
        rate[c] = median_of(r, reps);
        char buf[32];
        format_rate(buf, sizeof buf, rate[c]);
        printf("  %4u handle%s %9s/s\n", counts[c], counts[c] == 1 ? " " : "s",
               buf);
    }
    for (unsigned i = 0; i < open_now; i++)
        shmkv_close(extra[i]);
    printf("  1,000 handles against 1: %.2fx slower   target <= 1.2x: %s\n",
           rate[0] / rate[2], verdict(rate[0] / rate[2] <= 1.2));
    store_drop();
}

/* Sets for 3 s with a reader stopped in its section the whole time, and
 * without one. */
static void live_stopped_reader(const struct config *cfg)
{
    const uint64_t nkeys = 100000;
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = 64u << 20;
    o.max_entries = nkeys;
    store_create_with(&o);
    store_fill(cfg, nkeys);
    double worst_none, worst_stopped, secs = cfg->quick ? 1.5 : 3.0;
    double none = live_set_rate(cfg, nkeys, secs, &worst_none);
    pid_t reader = live_reader_in_section(cfg);
    kill(reader, SIGSTOP);
    double stopped = live_set_rate(cfg, nkeys, secs, &worst_stopped);
    kill(reader, SIGKILL);
    live_reap(reader);
    struct shmkv_stats st;
    shmkv_stats(store_handle, &st);
    char a[32], b[32];
    format_rate(a, sizeof a, none);
    format_rate(b, sizeof b, stopped);
    printf("\nreplacing sets for %.1f s (reader_timeout_ms %u):\n"
           "  no reader                            %9s/s, slowest set "
           "%.1f ms\n"
           "  a reader stopped inside its section  %9s/s, slowest set "
           "%.1f ms (%" PRIu64 " section%s revoked)\n"
           "  the stopped reader held writes up once, for %.0f ms   target "
           "<= reader_timeout_ms + 100: %s\n",
           secs, st.reader_timeout_ms, a, worst_none, b, worst_stopped,
           st.revocations, st.revocations == 1 ? "" : "s", worst_stopped,
           verdict(worst_stopped <= st.reader_timeout_ms + 100.0));
    store_drop();
}

/* The first write after a reader died in its section, after a writer died
 * holding the lock, in a store of size_bytes. */
static void live_recovery(const struct config *cfg, uint64_t size_bytes)
{
    uint64_t entry =
        (sizeof(struct block) + cfg->klen + cfg->vlen + UNIT_BYTES - 1) /
        UNIT_BYTES * UNIT_BYTES;
    uint64_t nkeys = size_bytes / (entry + 24) / 10 * 7;
    struct shmkv_options o;
    shmkv_options_init(&o);
    o.size_bytes = size_bytes;
    o.max_entries = nkeys;
    double t0 = now_s();
    store_create_with(&o);
    store_fill(cfg, nkeys);
    char count[32];
    format_count(count, sizeof count, nkeys);
    printf("\n%" PRIu64 " MiB store, %s keys (filled in %.1f s):\n",
           size_bytes >> 20, count, now_s() - t0);
    char *key = malloc(cfg->klen), *val = malloc(cfg->vlen + 1);
    if (key == NULL || val == NULL)
        fail("out of memory");

    /* A reader dies inside its section. */
    pid_t reader = live_reader_in_section(cfg);
    kill(reader, SIGKILL);
    live_reap(reader);
    key_fill(key, cfg->klen, 1);
    value_fill(val, cfg->vlen, 2);
    uint64_t a = now_ns();
    int rc = shmkv_set(store_handle, key, cfg->klen, val, cfg->vlen, 0, 0);
    double first_ms = (double)(now_ns() - a) / 1e6;
    if (rc != 0)
        fail_store("the write after a reader's death", rc);
    /* Writes until one needs what the dead section held back. */
    double worst_ms = 0;
    for (uint64_t i = 0; i < 3 * 4096 && i < nkeys; i++) {
        key_fill(key, cfg->klen, i);
        uint64_t b = now_ns();
        rc = shmkv_set(store_handle, key, cfg->klen, val, cfg->vlen, 0, 0);
        double ms = (double)(now_ns() - b) / 1e6;
        if (rc != 0)
            fail_store("writing after a reader's death", rc);
        worst_ms = ms > worst_ms ? ms : worst_ms;
    }
    struct shmkv_stats st;
    shmkv_stats(store_handle, &st);
    printf("  reader killed in its section: first write %.3f ms; slowest of "
           "the next 12,288 (one needed its memory) %.3f ms; %" PRIu64
           " dead section%s dropped\n",
           first_ms, worst_ms, st.dead_readers,
           st.dead_readers == 1 ? "" : "s");
    double worst_all = first_ms > worst_ms ? first_ms : worst_ms;

    /* A writer dies, most times holding the lock. */
    uint64_t recoveries_before = st.recoveries;
    double after[10];
    for (unsigned k = 0; k < 10; k++) {
        pid_t writer = live_fork();
        if (writer == 0)
            live_setter(cfg, nkeys, 60.0);
        usleep(20000);
        kill(writer, SIGKILL);
        live_reap(writer);
        key_fill(key, cfg->klen, k);
        uint64_t b = now_ns();
        rc = shmkv_set(store_handle, key, cfg->klen, val, cfg->vlen, 0, 0);
        after[k] = (double)(now_ns() - b) / 1e6;
        if (rc != 0)
            fail_store("the write after a writer's death", rc);
    }
    shmkv_stats(store_handle, &st);
    double sorted[10];
    memcpy(sorted, after, sizeof sorted);
    double med = median_of(sorted, 10), max = sorted[9];
    printf("  writer killed 10 times (%" PRIu64 " of them holding the lock): "
           "first write median %.3f ms, slowest %.3f ms\n",
           st.recoveries - recoveries_before, med, max);
    worst_all = max > worst_all ? max : worst_all;
    printf("  first write after any death within 50 ms: %.1f ms   %s\n",
           worst_all, verdict(worst_all <= 50.0));
    struct shmkv_check_report rep;
    if (shmkv_check(store_handle, &rep) != 0)
        fail("check after the deaths: %s", rep.first_problem);
    free(key);
    free(val);
    store_drop();
}

/* Online resize: the filled store doubled and halved back while a process
 * sets, against the same setting with no resize. */
static void resize_bench(const struct config *cfg, uint64_t nkeys)
{
    live = mmap(NULL, sizeof *live, PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (live == MAP_FAILED)
        fail("mmap: %s", strerror(errno));
    struct shmkv_stats st;
    if (shmkv_stats(store_handle, &st) != 0)
        fail("stats: %s", shmkv_last_error());
    uint64_t size = st.data_bytes;
    double seconds = 0.5 + (double)nkeys * 6e-7;
    double base_worst;
    double base_rate = live_set_rate(cfg, nkeys, seconds, &base_worst);
    printf("  online resize, %" PRIu64 " keys, a process setting meanwhile "
           "(alone: %.2fM sets/s, slowest %.2f ms):\n",
           nkeys, base_rate / 1e6, base_worst);
    static const char *what[] = {"double", "halve back"};
    for (int i = 0; i < 2; i++) {
        uint64_t target = i == 0 ? size * 2 : size;
        live->ops = live->ns = live->worst_ns = 0;
        pid_t pid = live_fork();
        if (pid == 0)
            live_setter(cfg, nkeys, seconds + 1.0);
        usleep(200000);
        double t0 = now_s();
        int rc = shmkv_resize(store_handle, target, 0, NULL, NULL);
        double took = now_s() - t0;
        if (rc != 0)
            fail_store("shmkv_resize", rc);
        int status = live_reap(pid);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            fail("the setting child failed (status %d)", status);
        double rate = live->ns ? (double)live->ops * 1e9 / (double)live->ns : 0;
        printf("    %-10s to %6.1f MiB: %7.1f ms; the setter: %.2fM sets/s, "
               "slowest %.2f ms\n",
               what[i], (double)target / (1 << 20), took * 1e3, rate / 1e6,
               (double)live->worst_ns / 1e6);
    }
    struct shmkv_check_report rep;
    if (shmkv_check(store_handle, &rep) != 0)
        fail("check after the resizes: %s", rep.first_problem);
    munmap(live, sizeof *live);
    live = NULL;
}

static void liveness_bench(const struct config *cfg)
{
    live = mmap(NULL, sizeof *live, PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (live == MAP_FAILED)
        fail("mmap: %s", strerror(errno));
    printf("\nliveness: what attached handles, a stopped reader and dead "
           "processes cost writers\n");
    live_handles(cfg);
    live_stopped_reader(cfg);
    live_recovery(cfg, 32ull << 20);
    if (!cfg->quick)
        live_recovery(cfg, 1ull << 30);
    if (cfg->big)
        live_recovery(cfg, 3ull << 30);
    munmap(live, sizeof *live);
}

int main(int argc, char **argv)
{
    struct config cfg;
    parse_args(argc, argv, &cfg);

    parent_pid = getpid();
    atexit(store_cleanup);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    shared = mmap(NULL, sizeof *shared, PROT_READ | PROT_WRITE,
                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED)
        fail("mmap of %zu shared bytes: %s", sizeof *shared, strerror(errno));

    unsigned nops = 0;
    for (int op = 0; op < OP_COUNT; op++)
        nops += (cfg.ops_mask >> op) & 1u;
    printf("shmkv-bench %s: %zu-byte keys, %zu-byte values, uniform random "
           "keys; %ld CPUs online\n",
           SHMKV_VERSION_STRING, cfg.klen, cfg.vlen,
           sysconf(_SC_NPROCESSORS_ONLN));
    printf("floor: a private table in each process, built by it after fork: "
           "XXH3-64 (seeded, as the store),\n"
           "  open addressing, linear probing over 8-byte slots (32-bit hash "
           "tag + record offset) at most %u%% full,\n"
           "  records (lengths, key, value) in an arena; a get compares the "
           "key bytes and returns a pointer to the value,\n"
           "  a set overwrites the value in place. shmkv sets replace "
           "existing keys; the 95/5 mix uses 1 get per read section.\n",
           FLOOR_MAX_LOAD_PERCENT);

    uint64_t checksum = 0;
    for (unsigned si = 0; cfg.tables && si < cfg.nsizes; si++) {
        uint64_t nkeys = cfg.sizes[si];
        double t0 = now_s();
        store_create(&cfg, nkeys);
        store_fill(&cfg, nkeys);
        struct shmkv_stats st;
        int rc = shmkv_stats(store_handle, &st);
        if (rc != 0)
            fail_store("shmkv_stats", rc);
        struct stream stream;
        if (stream_make(&stream, nkeys, cfg.klen) != 0)
            fail("out of memory for the op stream");
        printf("\nstore %s: %" PRIu64 " bytes of segments, data on %" PRIu64
               " kB pages, filled and checked in %.2f s\n",
               store_key, st.segment_bytes, st.data_page_bytes >> 10,
               now_s() - t0);

        uint64_t private_total = 0;
        for (unsigned pi = 0; pi < cfg.nprocs; pi++) {
            struct run run = {.cfg = &cfg,
                              .store_key = store_key,
                              .nkeys = nkeys,
                              .stream = &stream,
                              .nprocs = cfg.procs[pi]};
            double expected_s =
                cfg.reps * nops *
                    (cfg.duration_s +
                     turns_per_measurement(cfg.duration_s) * WARMUP_S) +
                (double)nkeys * 2e-6;
            run_workers(&run, expected_s);
            for (int op = 0; op < OP_COUNT; op++)
                if (cfg.ops_mask & (1u << op))
                    figures[pi][op] = figure_of(cfg.reps, (enum op)op,
                                                run.nprocs, cfg.verbose);
            for (unsigned p = 0; p < run.nprocs; p++)
                checksum += shared->checksum[p];
            private_total = shared->private_bytes;
        }
        print_table(&cfg, nkeys);
        print_overhead(&cfg, nkeys, &st, private_total);

        struct shmkv_check_report report;
        rc = shmkv_check(store_handle, &report);
        printf("  shmkv_check after the run: %s (%" PRIu64 " entries)\n",
               rc == 0 ? "consistent" : report.first_problem,
               report.entries_seen);
        print_store_counters(store_handle);
        if (rc != 0)
            fail_store("shmkv_check", rc);
        if (cfg.resize)
            resize_bench(&cfg, nkeys);
        stream_free(&stream);
        store_drop();
    }
    if (cfg.liveness)
        liveness_bench(&cfg);
    printf("\ntargets: %u passed, %u failed; checksum of value bytes read: "
           "%016" PRIx64 "\n",
           targets_passed, targets_failed, checksum);
    return 0;
}
