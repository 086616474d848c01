/*
 * mirror.c - shmkvd as a local mirror of a Redis ([upstream]): every
 * string key under the configured prefixes, kept coherent with the
 * upstream through Redis's client-side caching (CLIENT TRACKING in BCAST
 * mode), so that every process on the host reads them at memory speed.
 *
 * Two connections, hiredis on the daemon's libevent loop. The first to
 * connect, "inval", learns its CLIENT ID and SUBSCRIBEs to
 * __redis__:invalidate (RESP2 delivers invalidations there). The second,
 * "data", turns tracking on with REDIRECT to that id, BCAST and a PREFIX
 * per configured prefix, and only then loads: SCAN in batches, and for
 * each key under a prefix a GET and a PTTL, pipelined. A key written
 * upstream after tracking began sends an invalidation; each invalidation
 * fetches its keys again on the data connection. Replies on one
 * connection arrive in the order the commands were sent, and a fetch sent
 * because of an invalidation is sent after the invalidation arrived, so
 * the last reply applied for a key is never older than its last change:
 * the mirror converges to the upstream. A null invalidation (FLUSHALL
 * upstream) reloads everything.
 *
 * What is applied: a string is set with its remaining TTL (PTTL, to the
 * millisecond); a key that is gone is removed; a key of another type is
 * skipped and counted. The store is marked SHMKV_MARK_LOADING until the
 * first load is whole (then systemd hears READY=1) and SHMKV_MARK_STALE
 * while the upstream is unreachable: readers see both with
 * shmkv_get_marks().
 *
 * Redis Cluster. A probe connection first asks CLUSTER SLOTS: a
 * standalone Redis refuses and is the one server; a Cluster's map names
 * its primaries, each of which gets the two connections above, tracking
 * and a SCAN of its own, and each fetch or written-through command goes
 * to the primary of its key's slot. MOVED updates the map, ASK fetches
 * once after ASKING, and a server not in the map rediscovers. Every
 * server a map named (replicas too) is a seed for the next discovery, so
 * that a failover is followed.
 *
 * Failures. A PING every third of health_timeout_ms; no reply within
 * health_timeout_ms (a stopped or cut-off upstream), a dropped connection
 * or a failed command ends both connections: the store keeps serving what
 * it has, marked stale since that moment, and shmkvd reconnects after a
 * backoff doubling from 100 ms to backoff_max_ms. Tracking cannot replay
 * what it missed, so a reconnect reloads: every key is fetched again, and
 * the keys under the prefixes that the reload did not see are removed.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <xxhash.h>

#include "daemon.h"
#include "log.h"

#define BACKOFF_MIN_MS 100u
#define MAX_PREFIXES 32
#define RETRY_APPLY_MS 5

enum mirror_state { M_OFF, M_CONNECTING, M_LOADING, M_LIVE };

#define MAX_NODES 64
#define CLUSTER_SLOTS 16384

/* One upstream server: the one a standalone Redis is, or each primary of
 * a Cluster. The contexts' data field points back here. */
struct node {
    char host[256];
    uint16_t port; /* 0: host is a Unix socket's path */
    redisAsyncContext *data, *inval;
    bool data_up, inval_up;
    bool tracking;  /* CLIENT TRACKING answered */
    bool scan_done; /* its SCAN reached 0 */
    long long inval_id;
    uint64_t ping_sent_ms; /* 0: none outstanding */
};

/* A key seen by the current load: a chained hash set. */
struct seen_key {
    struct seen_key *next;
    size_t len;
    char key[];
};

struct mirror {
    struct daemon *d;
    enum mirror_state state;
    /* The servers, and for a Cluster which one holds each slot; the
     * discovery connection asks CLUSTER SLOTS first. */
    struct node nodes[MAX_NODES];
    int n_nodes;
    bool cluster;
    uint8_t slot_node[CLUSTER_SLOTS];
    redisAsyncContext *probe;
    /* Where to look for the topology: the configured address first, then
     * every server a CLUSTER SLOTS reply named (replicas too, for a
     * failover), tried in turn. */
    char seeds[2 * MAX_NODES][272];
    int n_seeds, next_seed;
    char *prefixes[MAX_PREFIXES];
    size_t prefix_len[MAX_PREFIXES];
    int n_prefixes;
    char password[512];
    bool has_password;

    struct event *retry;  /* reconnect after a backoff */
    struct event *health; /* PING, and the check of its answer */
    struct event *connect_deadline;
    uint32_t backoff_ms;

    /* The load in progress: fetches not yet answered, and the keys it
     * saw. */
    uint64_t fetching;
    struct seen_key **seen;
    size_t seen_buckets, seen_count;
    uint64_t load_started_ms;

    bool loaded_once;
    bool stale;
    int64_t stale_since_ms;
    /* Counters for INFO. */
    uint64_t keys_loaded, skipped_types, invalidations, fetches, reloads,
        apply_failures, connects, last_load_keys, last_load_ms;
    uint64_t generation; /* bumped at each disconnect: late replies of an
                            old connection are ignored */
};

static struct mirror M;

static void marks_update(void)
{
    unsigned marks = 0;
    shmkv_get_marks(M.d->kv, &marks);
    marks &= ~(SHMKV_MARK_LOADING | SHMKV_MARK_STALE);
    if (!M.loaded_once)
        marks |= SHMKV_MARK_LOADING;
    if (M.stale)
        marks |= SHMKV_MARK_STALE;
    shmkv_set_marks(M.d->kv, marks);
}

static bool under_prefix(const char *key, size_t len)
{
    if (M.n_prefixes == 0)
        return true;
    for (int i = 0; i < M.n_prefixes; i++)
        if (len >= M.prefix_len[i] &&
            memcmp(key, M.prefixes[i], M.prefix_len[i]) == 0)
            return true;
    return false;
}

bool mirror_covers(const struct daemon *d, const void *key, size_t len)
{
    return d->cfg.upstream_address[0] != '\0' && under_prefix(key, len);
}

/* ---- the set of keys a load saw ---- */

static uint64_t seen_hash(const char *p, size_t n)
{
    return XXH3_64bits(p, n);
}

static void seen_clear(void)
{
    for (size_t b = 0; b < M.seen_buckets; b++) {
        struct seen_key *k = M.seen[b];
        while (k != NULL) {
            struct seen_key *next = k->next;
            free(k);
            k = next;
        }
    }
    free(M.seen);
    M.seen = NULL;
    M.seen_buckets = M.seen_count = 0;
}

static bool seen_has(const char *key, size_t len)
{
    if (M.seen_buckets == 0)
        return false;
    for (struct seen_key *k = M.seen[seen_hash(key, len) % M.seen_buckets];
         k != NULL; k = k->next)
        if (k->len == len && memcmp(k->key, key, len) == 0)
            return true;
    return false;
}

static void seen_add(const char *key, size_t len)
{
    if (seen_has(key, len))
        return;
    if (M.seen_count >= M.seen_buckets) {
        size_t nb = M.seen_buckets ? 2 * M.seen_buckets : 1024;
        struct seen_key **t = calloc(nb, sizeof *t);
        if (t == NULL)
            return;
        for (size_t b = 0; b < M.seen_buckets; b++) {
            struct seen_key *k = M.seen[b];
            while (k != NULL) {
                struct seen_key *next = k->next;
                size_t h = seen_hash(k->key, k->len) % nb;
                k->next = t[h];
                t[h] = k;
                k = next;
            }
        }
        free(M.seen);
        M.seen = t;
        M.seen_buckets = nb;
    }
    struct seen_key *k = malloc(sizeof *k + len);
    if (k == NULL)
        return;
    memcpy(k->key, key, len);
    k->len = len;
    size_t h = seen_hash(key, len) % M.seen_buckets;
    k->next = M.seen[h];
    M.seen[h] = k;
    M.seen_count++;
}

/* ---- connections ---- */

static void mirror_lost(const char *why);
static void load_maybe_done(void);

static void fetch_key(const char *key, size_t len, struct write_through *wt);

/* A write sent upstream for a connection (mirror_write_through): the
 * upstream's reply, kept as RESP, and the fetches of its keys still to
 * come back; the connection, or NULL once it closed. */
struct write_through {
    struct conn *c;
    struct evbuffer *reply;
    bool answered;
    unsigned pending;
};

static void wt_finish(struct write_through *w);

/* A fetch: GET then PTTL of one key. */
struct fetch {
    struct write_through *wt; /* the write it confirms, or NULL */
    bool redirected;          /* MOVED or ASK: fetched again elsewhere */
    uint64_t generation;
    bool have_value, gone, other_type;
    char *value;
    size_t vlen;
    size_t klen;
    char key[];
};

/* A write the store refused for now (busy): tried again shortly. */
struct retry_fetch {
    struct event *ev;
    struct write_through *wt;
    size_t len;
    char key[];
};

static void retry_fetch_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct retry_fetch *r = arg;
    if (M.state == M_LOADING || M.state == M_LIVE) {
        fetch_key(r->key, r->len, r->wt);
    } else if (r->wt != NULL) {
        r->wt->pending--;
        wt_finish(r->wt);
    }
    event_free(r->ev);
    free(r);
}

/* Applies what a fetch found; true if it is to be fetched again (the
 * store was busy), which then answers for its write. */
static bool apply(struct fetch *f, long long pttl)
{
    struct shmkv *kv = M.d->kv;
    int rc;
    if (f->gone || f->other_type || (f->have_value && pttl == -2)) {
        rc = shmkv_del(kv, f->key, f->klen);
        if (rc == SHMKV_ENOTFOUND)
            rc = 0;
    } else {
        uint64_t ttl = pttl > 0 ? (uint64_t)pttl : 0;
        rc = shmkv_pset(kv, f->key, f->klen, f->value, f->vlen, ttl, 0);
        if (rc == 0)
            M.keys_loaded++;
    }
    if (rc == SHMKV_ETIMEDOUT) {
        /* The store is busy: fetch it again in a moment, so that the
         * value applied is still the upstream's latest. */
        struct retry_fetch *r = malloc(sizeof *r + f->klen);
        if (r != NULL) {
            r->len = f->klen;
            r->wt = f->wt;
            memcpy(r->key, f->key, f->klen);
            r->ev = evtimer_new(M.d->base, retry_fetch_cb, r);
            struct timeval tv = {0, RETRY_APPLY_MS * 1000};
            if (r->ev != NULL && evtimer_add(r->ev, &tv) == 0)
                return true;
            if (r->ev != NULL)
                event_free(r->ev);
            free(r);
        }
    }
    if (rc != 0) {
        M.apply_failures++;
        static time_t logged;
        if (time(NULL) - logged >= 60) {
            logged = time(NULL);
            log_warning("mirror: the store refused key '%.*s' from the "
                        "upstream: %s (%s)",
                        (int)(f->klen < 64 ? f->klen : 64), f->key,
                        shmkv_strerror(rc), shmkv_last_error());
        }
    }
    return false;
}

static struct node *node_named(const char *hostport);
static void fetch_on(struct node *n, const char *key, size_t len,
                     struct write_through *wt, bool asking);

/* A Cluster moved the key's slot (MOVED: for good, the map is updated;
 * ASK: while it migrates, this fetch only): fetch it there. A server not
 * known yet means the topology changed more: discover it again. */
static void redirect(const struct fetch *f, const char *err)
{
    bool ask = err[0] == 'A';
    unsigned slot = 0;
    char where[272];
    if (sscanf(err + (ask ? 4 : 6), "%u %271s", &slot, where) != 2 ||
        slot >= CLUSTER_SLOTS) {
        mirror_lost("a malformed redirection");
        return;
    }
    struct node *n = node_named(where);
    if (n == NULL) {
        mirror_lost("the Cluster's topology changed");
        return;
    }
    if (!ask)
        M.slot_node[slot] = (uint8_t)(n - M.nodes);
    if (f->wt != NULL)
        f->wt->pending++; /* the new fetch answers for it */
    fetch_on(n, f->key, f->klen, f->wt, ask);
}

static void get_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    struct fetch *f = priv;
    redisReply *r = reply;
    if (r == NULL || f->generation != M.generation)
        return; /* the connection went: pttl_cb frees f */
    if (r->type == REDIS_REPLY_STRING) {
        f->value = malloc(r->len ? r->len : 1);
        if (f->value != NULL) {
            memcpy(f->value, r->str, r->len);
            f->vlen = r->len;
            f->have_value = true;
        }
    } else if (r->type == REDIS_REPLY_NIL) {
        f->gone = true;
    } else if (r->type == REDIS_REPLY_ERROR &&
               strncmp(r->str, "WRONGTYPE", 9) == 0) {
        f->other_type = true;
        M.skipped_types++;
    } else if (r->type == REDIS_REPLY_ERROR &&
               (strncmp(r->str, "MOVED ", 6) == 0 ||
                strncmp(r->str, "ASK ", 4) == 0)) {
        f->redirected = true;
        redirect(f, r->str);
    } else {
        /* CLUSTERDOWN during a failover, LOADING after a restart, ...:
         * the key's state is unknown, so nothing is applied (removing it
         * would lose a key no later invalidation brings back); the
         * upstream is taken as lost, and the reload settles every key. */
        f->redirected = true;
        char why[200];
        snprintf(why, sizeof why, "GET answered %s",
                 r->type == REDIS_REPLY_ERROR ? r->str : "an odd reply");
        mirror_lost(why);
    }
}

static void pttl_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    struct fetch *f = priv;
    redisReply *r = reply;
    bool again = false;
    if (r != NULL && r->type == REDIS_REPLY_ERROR &&
        f->generation == M.generation && !f->redirected) {
        /* As for GET: nothing applied, the upstream taken as lost. */
        f->redirected = true;
        mirror_lost(r->str);
    }
    if (r != NULL && f->generation == M.generation && !f->redirected) {
        if (f->have_value || f->gone || f->other_type)
            again = apply(f, r->type == REDIS_REPLY_INTEGER ? r->integer : -1);
    }
    if (f->generation == M.generation && M.fetching > 0)
        M.fetching--;
    if (f->wt != NULL && !again) {
        f->wt->pending--;
        wt_finish(f->wt);
    }
    free(f->value);
    free(f);
    if (r != NULL)
        load_maybe_done();
}

/* True if commands may be sent on n's data connection: a context being
 * disconnected or freed refuses them, and their callbacks would never
 * run. */
static bool data_usable(const struct node *n)
{
    return n != NULL && n->data != NULL && n->data_up &&
           !(n->data->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING));
}

/* Redis Cluster's hash slot: CRC16 (XMODEM) of the key, or of its hash
 * tag (what is between the first { and the next }, if not empty). */
static unsigned key_slot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);
    if (open != NULL) {
        size_t at = (size_t)(open - key) + 1;
        const char *close = memchr(key + at, '}', len - at);
        if (close != NULL && close > key + at) {
            len = (size_t)(close - (key + at));
            key += at;
        }
    }
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((unsigned char)key[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = crc & 0x8000 ? (uint16_t)((crc << 1) ^ 0x1021)
                               : (uint16_t)(crc << 1);
    }
    return crc % CLUSTER_SLOTS;
}

/* The server that holds key. */
static struct node *node_of(const char *key, size_t len)
{
    if (!M.cluster)
        return M.n_nodes > 0 ? &M.nodes[0] : NULL;
    return &M.nodes[M.slot_node[key_slot(key, len)]];
}

static struct node *node_named(const char *hostport)
{
    for (int i = 0; i < M.n_nodes; i++) {
        char name[272];
        snprintf(name, sizeof name, "%s:%u", M.nodes[i].host, M.nodes[i].port);
        if (strcmp(name, hostport) == 0)
            return &M.nodes[i];
    }
    return NULL;
}

static void fetch_on(struct node *n, const char *key, size_t len,
                     struct write_through *wt, bool asking)
{
    struct fetch *f = data_usable(n) ? calloc(1, sizeof *f + len) : NULL;
    if (f == NULL) {
        if (wt != NULL) {
            wt->pending--;
            wt_finish(wt);
        }
        return;
    }
    f->wt = wt;
    f->generation = M.generation;
    f->klen = len;
    memcpy(f->key, key, len);
    const char *get[2] = {"GET", f->key};
    const char *pttl[2] = {"PTTL", f->key};
    size_t lens[2] = {3, len};
    size_t plens[2] = {4, len};
    M.fetches++;
    M.fetching++;
    /* ASKING lets the next command (only) reach a slot being imported;
     * its reply is not needed. */
    if (asking)
        redisAsyncCommand(n->data, NULL, NULL, "ASKING");
    redisAsyncCommandArgv(n->data, get_cb, f, 2, get, lens);
    if (asking)
        redisAsyncCommand(n->data, NULL, NULL, "ASKING");
    redisAsyncCommandArgv(n->data, pttl_cb, f, 2, pttl, plens);
}

static void fetch_key(const char *key, size_t len, struct write_through *wt)
{
    fetch_on(node_of(key, len), key, len, wt, false);
}

/* ---- loading ---- */

static void scan_next(struct node *n, const char *cursor);

static void scan_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    struct node *node = ac->data;
    uint64_t gen = (uint64_t)(uintptr_t)priv;
    redisReply *r = reply;
    if (r == NULL || gen != M.generation)
        return;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING ||
        r->element[1]->type != REDIS_REPLY_ARRAY) {
        mirror_lost(r->type == REDIS_REPLY_ERROR ? r->str
                                                 : "an unexpected SCAN reply");
        return;
    }
    redisReply *keys = r->element[1];
    for (size_t i = 0; i < keys->elements; i++) {
        redisReply *k = keys->element[i];
        if (k->type != REDIS_REPLY_STRING || k->len == 0 ||
            !under_prefix(k->str, k->len))
            continue;
        seen_add(k->str, k->len);
        fetch_key(k->str, k->len, NULL);
    }
    if (strcmp(r->element[0]->str, "0") == 0) {
        node->scan_done = true;
        load_maybe_done();
    } else {
        scan_next(node, r->element[0]->str);
    }
}

/* Each server's keys: a Cluster's are spread over its primaries, and
 * SCAN walks one server's. */
static void scan_next(struct node *node, const char *cursor)
{
    char count[16];
    snprintf(count, sizeof count, "%" PRIu32, M.d->cfg.upstream_batch);
    /* One prefix: the upstream filters; several: this side does. */
    if (M.n_prefixes == 1) {
        char match[1100];
        size_t n = 0;
        for (size_t i = 0; i < M.prefix_len[0] && n + 3 < sizeof match; i++) {
            char ch = M.prefixes[0][i];
            if (ch == '*' || ch == '?' || ch == '[' || ch == ']' || ch == '\\')
                match[n++] = '\\';
            match[n++] = ch;
        }
        match[n++] = '*';
        const char *argv[6] = {"SCAN", cursor, "MATCH", match, "COUNT", count};
        size_t lens[6] = {4, strlen(cursor), 5, n, 5, strlen(count)};
        redisAsyncCommandArgv(node->data, scan_cb,
                              (void *)(uintptr_t)M.generation, 6, argv, lens);
    } else {
        const char *argv[4] = {"SCAN", cursor, "COUNT", count};
        size_t lens[4] = {4, strlen(cursor), 5, strlen(count)};
        redisAsyncCommandArgv(node->data, scan_cb,
                              (void *)(uintptr_t)M.generation, 4, argv, lens);
    }
}

/* A local key under the prefixes that the load did not see: gone
 * upstream while the mirror was away. */
struct sweep {
    char **keys;
    size_t *lens;
    size_t n, cap;
};

static int sweep_visit(void *ctx, const void *key, size_t klen, const void *val,
                       size_t vlen, int64_t ttl_ms)
{
    (void)val;
    (void)vlen;
    (void)ttl_ms;
    struct sweep *s = ctx;
    if (!under_prefix(key, klen) || seen_has(key, klen))
        return 0;
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 64;
        char **k = realloc(s->keys, cap * sizeof *k);
        size_t *l = realloc(s->lens, cap * sizeof *l);
        if (k != NULL)
            s->keys = k;
        if (l != NULL)
            s->lens = l;
        if (k == NULL || l == NULL)
            return 1;
        s->cap = cap;
    }
    s->keys[s->n] = malloc(klen);
    if (s->keys[s->n] == NULL)
        return 1;
    memcpy(s->keys[s->n], key, klen);
    s->lens[s->n++] = klen;
    return 0;
}

static void sweep_unseen(void)
{
    struct sweep s = {0};
    uint64_t cursor = 0;
    do {
        if (shmkv_scan_ms(M.d->kv, &cursor, 4096, sweep_visit, &s) != 0)
            break;
    } while (cursor != 0);
    for (size_t i = 0; i < s.n; i++) {
        /* Fetched, not removed outright: it may have come back since the
         * load saw the upstream without it. */
        fetch_key(s.keys[i], s.lens[i], NULL);
        free(s.keys[i]);
    }
    if (s.n > 0)
        log_info("mirror: %zu keys gone upstream since the last load: "
                 "checked again",
                 s.n);
    free(s.keys);
    free(s.lens);
}

static void load_maybe_done(void)
{
    if (M.state != M_LOADING || M.fetching > 0)
        return;
    for (int i = 0; i < M.n_nodes; i++)
        if (!M.nodes[i].scan_done)
            return;
    bool first = !M.loaded_once;
    /* Every load, the first too (the store may hold a snapshot's or a
     * dead daemon's keys), and one that saw no key at all. */
    sweep_unseen();
    M.last_load_keys = M.seen_count;
    seen_clear();
    M.state = M_LIVE;
    M.last_load_ms = daemon_now_ms() - M.load_started_ms;
    M.loaded_once = true;
    M.stale = false;
    M.backoff_ms = 0;
    marks_update();
    log_info("mirror: %s %" PRIu64 " keys from %s in %" PRIu64
             " ms; following its changes",
             first ? "loaded" : "reloaded", M.last_load_keys,
             M.d->cfg.upstream_address, M.last_load_ms);
    if (first)
        daemon_ready(M.d);
}

static void load_start(void)
{
    M.state = M_LOADING;
    M.fetching = 0;
    seen_clear();
    M.load_started_ms = daemon_now_ms();
    M.reloads += M.loaded_once;
    for (int i = 0; i < M.n_nodes; i++) {
        M.nodes[i].scan_done = false;
        scan_next(&M.nodes[i], "0");
    }
}

/* ---- invalidations ---- */

static void inval_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    uint64_t gen = (uint64_t)(uintptr_t)priv;
    redisReply *r = reply;
    if (r == NULL || gen != M.generation || r->type != REDIS_REPLY_ARRAY ||
        r->elements != 3 || r->element[0]->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(r->element[0]->str, "message") != 0)
        return; /* the subscribe confirmation */
    redisReply *p = r->element[2];
    M.invalidations++;
    if (p->type == REDIS_REPLY_NIL) {
        /* FLUSHALL or FLUSHDB upstream: everything again. */
        if (M.state == M_LIVE || M.state == M_LOADING)
            load_start();
        return;
    }
    if (p->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i < p->elements; i++)
        if (p->element[i]->type == REDIS_REPLY_STRING &&
            under_prefix(p->element[i]->str, p->element[i]->len)) {
            if (M.state == M_LOADING)
                seen_add(p->element[i]->str, p->element[i]->len);
            fetch_key(p->element[i]->str, p->element[i]->len, NULL);
        }
}

/* ---- connecting ---- */

static void tracking_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    struct node *node = ac->data;
    uint64_t gen = (uint64_t)(uintptr_t)priv;
    redisReply *r = reply;
    if (r == NULL || gen != M.generation)
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        mirror_lost(r->str);
        return;
    }
    node->tracking = true;
    for (int i = 0; i < M.n_nodes; i++)
        if (!M.nodes[i].tracking)
            return;
    /* Every server tracks for us: load. */
    M.connects++;
    if (M.connect_deadline != NULL)
        event_del(M.connect_deadline);
    load_start();
}

static void start_tracking(struct node *node)
{
    const char *argv[6 + 2 * MAX_PREFIXES];
    size_t lens[6 + 2 * MAX_PREFIXES];
    char id[32];
    snprintf(id, sizeof id, "%lld", node->inval_id);
    int n = 0;
    argv[n] = "CLIENT", lens[n++] = 6;
    argv[n] = "TRACKING", lens[n++] = 8;
    argv[n] = "on", lens[n++] = 2;
    argv[n] = "REDIRECT", lens[n++] = 8;
    argv[n] = id, lens[n++] = strlen(id);
    argv[n] = "BCAST", lens[n++] = 5;
    for (int i = 0; i < M.n_prefixes; i++) {
        argv[n] = "PREFIX", lens[n++] = 6;
        argv[n] = M.prefixes[i], lens[n++] = M.prefix_len[i];
    }
    redisAsyncCommandArgv(node->data, tracking_cb,
                          (void *)(uintptr_t)M.generation, n, argv, lens);
}

static void auth_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    uint64_t gen = (uint64_t)(uintptr_t)priv;
    redisReply *r = reply;
    if (r != NULL && gen == M.generation && r->type == REDIS_REPLY_ERROR)
        mirror_lost(r->str);
}

static void send_auth(redisAsyncContext *ac)
{
    if (!M.has_password)
        return;
    if (M.d->cfg.upstream_user[0] != '\0')
        redisAsyncCommand(ac, auth_cb, (void *)(uintptr_t)M.generation,
                          "AUTH %s %s", M.d->cfg.upstream_user, M.password);
    else
        redisAsyncCommand(ac, auth_cb, (void *)(uintptr_t)M.generation,
                          "AUTH %s", M.password);
}

static void client_id_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    struct node *node = ac->data;
    uint64_t gen = (uint64_t)(uintptr_t)priv;
    redisReply *r = reply;
    if (r == NULL || gen != M.generation)
        return;
    if (r->type != REDIS_REPLY_INTEGER) {
        mirror_lost(r->type == REDIS_REPLY_ERROR ? r->str : "CLIENT ID failed");
        return;
    }
    node->inval_id = r->integer;
    redisAsyncCommand(node->inval, inval_cb, (void *)(uintptr_t)M.generation,
                      "SUBSCRIBE __redis__:invalidate");
    /* SUBSCRIBE is answered on inval_cb; tracking may begin at once: an
     * invalidation for the id is delivered once the subscription is
     * made, and the load starts after tracking does. */
    start_tracking(node);
}

/* The context slot of node that ac is, or NULL. */
static redisAsyncContext **slot_of(struct node *node,
                                   const redisAsyncContext *ac, bool **up)
{
    if (node == NULL)
        return NULL;
    if (ac == node->data) {
        *up = &node->data_up;
        return &node->data;
    }
    if (ac == node->inval) {
        *up = &node->inval_up;
        return &node->inval;
    }
    return NULL;
}

static void connected_cb(const redisAsyncContext *ac, int status)
{
    struct node *node = ac->data;
    bool *up = NULL;
    redisAsyncContext **slot = slot_of(node, ac, &up);
    if (slot == NULL)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees a context whose connect failed once this returns:
         * only the others are ours to free. */
        *slot = NULL;
        *up = false;
        mirror_lost(ac->errstr);
        return;
    }
    *up = true;
    if (node->inval_up && node->data_up) {
        send_auth(node->inval);
        send_auth(node->data);
        redisAsyncCommand(node->inval, client_id_cb,
                          (void *)(uintptr_t)M.generation, "CLIENT ID");
    }
}

static void disconnected_cb(const redisAsyncContext *ac, int status)
{
    (void)status;
    /* hiredis frees the context after this returns. */
    if (ac == M.probe) {
        M.probe = NULL;
        mirror_lost(ac->errstr[0] ? ac->errstr : "the upstream closed");
        return;
    }
    bool *up = NULL;
    redisAsyncContext **slot = slot_of(ac->data, ac, &up);
    if (slot == NULL)
        return;
    *slot = NULL;
    *up = false;
    mirror_lost(ac->errstr[0] ? ac->errstr : "the upstream closed");
}

static redisAsyncContext *connect_to(const char *host, uint16_t port,
                                     void *data)
{
    redisAsyncContext *ac =
        port == 0 ? redisAsyncConnectUnix(host) : redisAsyncConnect(host, port);
    if (ac == NULL)
        return NULL;
    if (ac->err) {
        /* Said once, with the loss; each retry at debug level. */
        log_debug("mirror: cannot connect to %s:%u: %s", host, port,
                  ac->errstr);
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = data;
    redisLibeventAttach(ac, M.d->base);
    redisAsyncSetConnectCallback(ac, connected_cb);
    redisAsyncSetDisconnectCallback(ac, disconnected_cb);
    return ac;
}

static void seed_add(const char *host, long long port)
{
    char name[272];
    snprintf(name, sizeof name, "%s:%lld", host, port);
    for (int i = 0; i < M.n_seeds; i++)
        if (strcmp(M.seeds[i], name) == 0)
            return;
    if (M.n_seeds < (int)(sizeof M.seeds / sizeof M.seeds[0]))
        snprintf(M.seeds[M.n_seeds++], sizeof M.seeds[0], "%s", name);
}

/* Connects both connections of every server. */
static void nodes_connect(void)
{
    for (int i = 0; i < M.n_nodes; i++) {
        struct node *n = &M.nodes[i];
        n->inval = connect_to(n->host, n->port, n);
        n->data = n->inval != NULL ? connect_to(n->host, n->port, n) : NULL;
        if (n->inval == NULL || n->data == NULL) {
            mirror_lost("cannot connect");
            return;
        }
    }
}

/* CLUSTER SLOTS: a Cluster's map, or an error from a standalone Redis. */
static void slots_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    uint64_t gen = (uint64_t)(uintptr_t)priv;
    redisReply *r = reply;
    if (r == NULL || gen != M.generation)
        return;
    redisAsyncContext *probe = M.probe;
    M.probe = NULL;
    char host[256];
    uint16_t port;
    M.n_nodes = 0;
    if (r->type != REDIS_REPLY_ARRAY) {
        /* Standalone (or a cluster that will not say): the one server. */
        M.cluster = false;
        if (config_parse_upstream(M.seeds[M.next_seed], host, sizeof host,
                                  &port) == 0 ||
            config_parse_upstream(M.d->cfg.upstream_address, host, sizeof host,
                                  &port) == 0) {
            memset(&M.nodes[0], 0, sizeof M.nodes[0]);
            snprintf(M.nodes[0].host, sizeof M.nodes[0].host, "%s", host);
            M.nodes[0].port = port;
            M.n_nodes = 1;
        }
    } else {
        M.cluster = true;
        memset(M.slot_node, 0, sizeof M.slot_node);
        for (size_t i = 0; i < r->elements; i++) {
            redisReply *e = r->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
                e->element[2]->type != REDIS_REPLY_ARRAY ||
                e->element[2]->elements < 2)
                continue;
            long long lo = e->element[0]->integer, hi = e->element[1]->integer;
            const char *h = e->element[2]->element[0]->str;
            long long p = e->element[2]->element[1]->integer;
            if (h == NULL || lo < 0 || hi >= CLUSTER_SLOTS || lo > hi)
                continue;
            for (size_t k = 2; k < e->elements; k++)
                if (e->element[k]->type == REDIS_REPLY_ARRAY &&
                    e->element[k]->elements >= 2 &&
                    e->element[k]->element[0]->str != NULL)
                    seed_add(e->element[k]->element[0]->str,
                             e->element[k]->element[1]->integer);
            char name[272];
            snprintf(name, sizeof name, "%s:%lld", h, p);
            struct node *n = node_named(name);
            if (n == NULL && M.n_nodes < MAX_NODES) {
                n = &M.nodes[M.n_nodes++];
                memset(n, 0, sizeof *n);
                snprintf(n->host, sizeof n->host, "%s", h);
                n->port = (uint16_t)p;
            }
            if (n != NULL)
                for (long long sl = lo; sl <= hi; sl++)
                    M.slot_node[sl] = (uint8_t)(n - M.nodes);
        }
    }
    if (probe != NULL)
        redisAsyncFree(probe);
    if (M.n_nodes == 0) {
        mirror_lost("no server in the upstream's topology");
        return;
    }
    nodes_connect();
}

static void probe_connected_cb(const redisAsyncContext *ac, int status)
{
    if (ac != M.probe)
        return;
    if (status != REDIS_OK) {
        M.probe = NULL; /* hiredis frees it */
        mirror_lost(ac->errstr);
        return;
    }
    send_auth(M.probe);
    redisAsyncCommand(M.probe, slots_cb, (void *)(uintptr_t)M.generation,
                      "CLUSTER SLOTS");
}

static void connect_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (M.state == M_CONNECTING)
        mirror_lost("connect timed out (connect_timeout_ms)");
}

/* Asks a seed for the topology; the servers are connected once it has
 * answered (slots_cb). */
static void mirror_connect(void)
{
    M.state = M_CONNECTING;
    M.generation++;
    char host[256];
    uint16_t port;
    M.next_seed = M.n_seeds > 0 ? (M.next_seed + 1) % M.n_seeds : 0;
    if (M.n_seeds == 0 || config_parse_upstream(M.seeds[M.next_seed], host,
                                                sizeof host, &port) != 0) {
        mirror_lost("no address to connect to");
        return;
    }
    M.probe =
        port == 0 ? redisAsyncConnectUnix(host) : redisAsyncConnect(host, port);
    if (M.probe == NULL || M.probe->err) {
        if (M.probe != NULL)
            redisAsyncFree(M.probe);
        M.probe = NULL;
        mirror_lost("cannot connect");
        return;
    }
    redisLibeventAttach(M.probe, M.d->base);
    redisAsyncSetConnectCallback(M.probe, probe_connected_cb);
    redisAsyncSetDisconnectCallback(M.probe, disconnected_cb);
    struct timeval tv = {M.d->cfg.upstream_connect_ms / 1000,
                         (M.d->cfg.upstream_connect_ms % 1000) * 1000};
    evtimer_add(M.connect_deadline, &tv);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    mirror_connect();
}

static void nodes_free(void)
{
    for (int i = 0; i < M.n_nodes; i++) {
        struct node *n = &M.nodes[i];
        redisAsyncContext *data = n->data, *inval = n->inval;
        n->data = n->inval = NULL;
        n->data_up = n->inval_up = n->tracking = false;
        n->ping_sent_ms = 0;
        if (data != NULL)
            redisAsyncFree(data);
        if (inval != NULL)
            redisAsyncFree(inval);
    }
    if (M.probe != NULL) {
        redisAsyncContext *p = M.probe;
        M.probe = NULL;
        redisAsyncFree(p);
    }
}

/* Ends every connection, marks the store stale, and reconnects after a
 * backoff. */
static void mirror_lost(const char *why_given)
{
    if (M.state == M_OFF)
        return;
    /* why may be a context's errstr, and contexts are freed below. */
    char why[256];
    snprintf(why, sizeof why, "%s", why_given);
    enum mirror_state was = M.state;
    M.generation++; /* replies still queued belong to the old connections */
    M.state = M_CONNECTING;
    nodes_free();
    seen_clear();
    if (M.connect_deadline != NULL)
        event_del(M.connect_deadline);
    if (!M.stale) {
        M.stale = true;
        M.stale_since_ms = daemon_unix_ms();
        marks_update();
        log_warning("mirror: lost %s (%s): serving what the store holds, "
                    "marked stale; reconnecting",
                    M.d->cfg.upstream_address, why);
    } else if (was == M_CONNECTING) {
        log_debug("mirror: reconnecting to %s failed: %s",
                  M.d->cfg.upstream_address, why);
    }
    M.backoff_ms = M.backoff_ms == 0 ? BACKOFF_MIN_MS : M.backoff_ms * 2;
    if (M.backoff_ms > M.d->cfg.upstream_backoff_ms)
        M.backoff_ms = M.d->cfg.upstream_backoff_ms;
    struct timeval tv = {M.backoff_ms / 1000, (M.backoff_ms % 1000) * 1000};
    evtimer_add(M.retry, &tv);
}

/* ---- health ---- */

static void ping_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    struct node *node = ac->data;
    uint64_t gen = (uint64_t)(uintptr_t)priv;
    if (reply != NULL && gen == M.generation && node != NULL)
        node->ping_sent_ms = 0;
}

static void health_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (M.state != M_LOADING && M.state != M_LIVE)
        return;
    uint64_t now = daemon_now_ms();
    for (int i = 0; i < M.n_nodes; i++) {
        struct node *n = &M.nodes[i];
        if (n->ping_sent_ms != 0 &&
            now - n->ping_sent_ms >= M.d->cfg.upstream_health_ms) {
            mirror_lost("no answer within health_timeout_ms");
            return;
        }
        if (n->ping_sent_ms == 0 && data_usable(n)) {
            n->ping_sent_ms = now;
            redisAsyncCommand(n->data, ping_cb, (void *)(uintptr_t)M.generation,
                              "PING");
        }
    }
}

/* ---- writes sent upstream ---- */

/* A hiredis reply as RESP2. */
static void resp_of_reply(struct evbuffer *out, const redisReply *r)
{
    switch (r->type) {
    case REDIS_REPLY_STATUS:
        evbuffer_add_printf(out, "+%s\r\n", r->str);
        break;
    case REDIS_REPLY_ERROR:
        evbuffer_add_printf(out, "-%s\r\n", r->str);
        break;
    case REDIS_REPLY_INTEGER:
        evbuffer_add_printf(out, ":%lld\r\n", r->integer);
        break;
    case REDIS_REPLY_STRING:
        evbuffer_add_printf(out, "$%zu\r\n", r->len);
        evbuffer_add(out, r->str, r->len);
        evbuffer_add(out, "\r\n", 2);
        break;
    case REDIS_REPLY_ARRAY:
        evbuffer_add_printf(out, "*%zu\r\n", r->elements);
        for (size_t i = 0; i < r->elements; i++)
            resp_of_reply(out, r->element[i]);
        break;
    default:
        evbuffer_add(out, "$-1\r\n", 5);
    }
}

/* Once the upstream answered and every fetch is back: the reply goes to
 * the connection, which goes on with its input. */
static void wt_finish(struct write_through *w)
{
    if (!w->answered || w->pending > 0)
        return;
    struct conn *c = w->c;
    if (c != NULL) {
        c->upstream_write = NULL;
        evbuffer_add_buffer(bufferevent_get_output(c->bev), w->reply);
    }
    evbuffer_free(w->reply);
    free(w);
    if (c != NULL)
        conn_job_done(c);
}

static void wt_reply_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    struct write_through *w = priv;
    redisReply *r = reply;
    if (r == NULL)
        evbuffer_add_printf(w->reply,
                            "-UNAVAILABLE lost the upstream %s before it "
                            "answered: the write may or may not have been "
                            "made\r\n",
                            M.d->cfg.upstream_address);
    else
        resp_of_reply(w->reply, r);
    w->answered = true;
    wt_finish(w);
}

bool mirror_write_through(struct conn *c, size_t argc,
                          const struct resp_arg *argv, const size_t *keys,
                          size_t n_keys, struct evbuffer *out)
{
    struct node *node =
        M.d != NULL ? node_of(argv[keys[0]].data, argv[keys[0]].len) : NULL;
    if (M.d == NULL || !data_usable(node) ||
        (M.state != M_LIVE && M.state != M_LOADING)) {
        resp_errorf(out,
                    "UNAVAILABLE the upstream %s is unreachable%s: write "
                    "the key there",
                    M.d != NULL ? M.d->cfg.upstream_address : "?",
                    M.stale ? " (this store is stale)" : "");
        return false;
    }
    struct write_through *w = calloc(1, sizeof *w);
    const char **v = malloc(argc * sizeof *v);
    size_t *lens = malloc(argc * sizeof *lens);
    if (w == NULL || v == NULL || lens == NULL ||
        (w->reply = evbuffer_new()) == NULL) {
        free(w);
        free(v);
        free(lens);
        resp_error(out, "ERR out of memory");
        return false;
    }
    for (size_t i = 0; i < argc; i++) {
        v[i] = argv[i].data;
        lens[i] = argv[i].len;
    }
    w->c = c;
    w->pending = (unsigned)n_keys;
    c->upstream_write = w;
    /* The write, then a fetch of each key it names, on one connection:
     * the fetches see the write, and the reply waits for them, so that a
     * reader of the store sees the write once its writer heard OK. */
    redisAsyncCommandArgv(node->data, wt_reply_cb, w, (int)argc, v, lens);
    for (size_t i = 0; i < n_keys; i++)
        fetch_key(argv[keys[i]].data, argv[keys[i]].len, w);
    free(v);
    free(lens);
    return true;
}

void mirror_conn_closed(struct conn *c)
{
    if (c->upstream_write != NULL) {
        c->upstream_write->c = NULL;
        c->upstream_write = NULL;
    }
}

/* ---- the daemon's side ---- */

static int read_password(void)
{
    const char *path = M.d->cfg.upstream_password_file;
    if (path[0] == '\0')
        return 0;
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        log_error("[upstream] password_file %s: %s", path, strerror(errno));
        return -1;
    }
    if (fgets(M.password, sizeof M.password, f) == NULL)
        M.password[0] = '\0';
    fclose(f);
    size_t n = strlen(M.password);
    while (n > 0 && (M.password[n - 1] == '\n' || M.password[n - 1] == '\r'))
        M.password[--n] = '\0';
    M.has_password = true;
    return 0;
}

static int parse_prefixes(void)
{
    char buf[sizeof M.d->cfg.upstream_prefixes];
    snprintf(buf, sizeof buf, "%s", M.d->cfg.upstream_prefixes);
    char *save = NULL;
    for (char *p = strtok_r(buf, ",", &save); p != NULL;
         p = strtok_r(NULL, ",", &save)) {
        while (*p == ' ' || *p == '\t')
            p++;
        size_t n = strlen(p);
        while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            p[--n] = '\0';
        if (n == 0)
            continue;
        if (M.n_prefixes == MAX_PREFIXES) {
            log_error("[upstream] prefixes: more than %d", MAX_PREFIXES);
            return -1;
        }
        M.prefixes[M.n_prefixes] = strdup(p);
        if (M.prefixes[M.n_prefixes] == NULL)
            return -1;
        M.prefix_len[M.n_prefixes++] = n;
    }
    return 0;
}

bool mirror_enabled(const struct daemon *d)
{
    return d->cfg.upstream_address[0] != '\0';
}

int mirror_start(struct daemon *d)
{
    if (!mirror_enabled(d)) {
        /* A store adopted from a daemon that mirrored: no more. */
        shmkv_set_mirror(d->kv, NULL, NULL, 0);
        return 0;
    }
    memset(&M, 0, sizeof M);
    M.d = d;
    if (parse_prefixes() != 0 || read_password() != 0)
        return -1;
    /* Library writers may not write what the upstream owns. */
    const char *all_keys[1] = {""};
    size_t all_len[1] = {0};
    int rc = M.n_prefixes > 0
                 ? shmkv_set_mirror(d->kv, (const char *const *)M.prefixes,
                                    M.prefix_len, (size_t)M.n_prefixes)
                 : shmkv_set_mirror(d->kv, all_keys, all_len, 1);
    if (rc != 0) {
        log_error("mirror: %s: %s", shmkv_strerror(rc), shmkv_last_error());
        return -1;
    }
    snprintf(M.seeds[0], sizeof M.seeds[0], "%s", d->cfg.upstream_address);
    M.n_seeds = 1;
    M.next_seed = -1; /* the first connect takes seed 0 */
    M.retry = evtimer_new(d->base, retry_cb, NULL);
    M.connect_deadline = evtimer_new(d->base, connect_deadline_cb, NULL);
    M.health = event_new(d->base, -1, EV_PERSIST, health_cb, NULL);
    if (M.retry == NULL || M.connect_deadline == NULL || M.health == NULL)
        return -1;
    uint32_t every = d->cfg.upstream_health_ms / 3;
    struct timeval tv = {every / 1000, (every % 1000) * 1000};
    evtimer_add(M.health, &tv);
    marks_update();
    log_info("mirror: following %s (prefixes: %s)", d->cfg.upstream_address,
             d->cfg.upstream_prefixes[0] ? d->cfg.upstream_prefixes
                                         : "every key");
    mirror_connect();
    return 0;
}

void mirror_stop(struct daemon *d)
{
    (void)d;
    if (M.d == NULL)
        return;
    M.state = M_OFF;
    M.generation++;
    nodes_free();
    seen_clear();
    if (M.retry != NULL)
        event_free(M.retry);
    if (M.connect_deadline != NULL)
        event_free(M.connect_deadline);
    if (M.health != NULL)
        event_free(M.health);
    for (int i = 0; i < M.n_prefixes; i++)
        free(M.prefixes[i]);
    memset(&M, 0, sizeof M);
}

bool mirror_ready(const struct daemon *d)
{
    return !mirror_enabled(d) || M.loaded_once;
}

void mirror_info(const struct daemon *d, struct evbuffer *b)
{
    if (!mirror_enabled(d) || M.d == NULL)
        return;
    static const char *names[] = {"off", "connecting", "loading", "live"};
    evbuffer_add_printf(
        b,
        "upstream_address:%s\r\nupstream_prefixes:%s\r\n"
        "mirror_state:%s\r\nmirror_ready:%d\r\nmirror_stale:%d\r\n"
        "mirror_stale_since_ms:%lld\r\nmirror_keys_applied:%" PRIu64 "\r\n"
        "mirror_last_load_keys:%" PRIu64 "\r\nmirror_last_load_ms:%" PRIu64
        "\r\nmirror_skipped_other_types:%" PRIu64
        "\r\nmirror_invalidations:%" PRIu64 "\r\nmirror_fetches:%" PRIu64
        "\r\nmirror_reloads:%" PRIu64 "\r\nmirror_apply_failures:%" PRIu64
        "\r\nmirror_connects:%" PRIu64 "\r\n",
        d->cfg.upstream_address, d->cfg.upstream_prefixes, names[M.state],
        M.loaded_once, M.stale, M.stale ? (long long)M.stale_since_ms : 0LL,
        M.keys_loaded, M.last_load_keys, M.last_load_ms, M.skipped_types,
        M.invalidations, M.fetches, M.reloads, M.apply_failures, M.connects);
}

void mirror_metrics(const struct daemon *d, struct evbuffer *b)
{
    if (!mirror_enabled(d) || M.d == NULL)
        return;
    evbuffer_add_printf(
        b,
        "# HELP shmkv_mirror_ready 1 once the first load from the upstream "
        "is whole.\n# TYPE shmkv_mirror_ready gauge\nshmkv_mirror_ready %d\n"
        "# HELP shmkv_mirror_stale 1 while the upstream is unreachable.\n"
        "# TYPE shmkv_mirror_stale gauge\nshmkv_mirror_stale %d\n"
        "# HELP shmkv_mirror_stale_since_seconds Unix time the store went "
        "stale (0: it is not).\n"
        "# TYPE shmkv_mirror_stale_since_seconds gauge\n"
        "shmkv_mirror_stale_since_seconds %.3f\n"
        "# HELP shmkv_mirror_invalidations_total Invalidations received.\n"
        "# TYPE shmkv_mirror_invalidations_total counter\n"
        "shmkv_mirror_invalidations_total %" PRIu64 "\n"
        "# HELP shmkv_mirror_fetches_total Keys fetched from the upstream.\n"
        "# TYPE shmkv_mirror_fetches_total counter\n"
        "shmkv_mirror_fetches_total %" PRIu64 "\n"
        "# HELP shmkv_mirror_reloads_total Reloads after a reconnect.\n"
        "# TYPE shmkv_mirror_reloads_total counter\n"
        "shmkv_mirror_reloads_total %" PRIu64 "\n"
        "# HELP shmkv_mirror_skipped_keys_total Keys of other types than "
        "string, skipped.\n# TYPE shmkv_mirror_skipped_keys_total counter\n"
        "shmkv_mirror_skipped_keys_total %" PRIu64 "\n",
        M.loaded_once, M.stale,
        M.stale ? (double)M.stale_since_ms / 1000.0 : 0.0, M.invalidations,
        M.fetches, M.reloads, M.skipped_types);
}
