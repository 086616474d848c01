/*
 * commands.c - the control socket's commands, Redis-compatible where Redis
 * has the command, with shmkv's own under the SHMKV. prefix.
 *
 * A table maps each name to its arity (Redis convention: n exact, -n at
 * least n, counting the name), whether it changes the store or the daemon
 * and who may run it (ADMIN: admin peers only, which every command that
 * changes the store or the daemon is, and those that walk the whole store
 * under its lock), and its handler. Handlers call
 * libshmkv on the daemon's own handle; reads use a read section and reply
 * straight from shared memory, so a GET costs one copy into the socket
 * buffer. Replies and error texts follow Redis so that redis-cli and client
 * libraries understand them.
 */
#include <ctype.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <fnmatch.h>
#include <limits.h>
#include <math.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "log.h"
#include "snapshot.h"

#define CMD_ADMIN 0x1   /* admin peers only */
#define CMD_KEY1 0x2    /* argv[1] is its one key */
#define CMD_KEYS 0x4    /* every argument is a key */
#define CMD_KEYVALS 0x8 /* key value pairs */
#define CMD_WRITE 0x10  /* changes the store or the daemon */
#define CMD_WAITS 0x20  /* may wait for the store's lock: parked if so */
#define CMD_TXN 0x40    /* MULTI, EXEC, ...: run at once, never queued */
#define CMD_NOMULTI                                                            \
    0x80 /* runs on the worker thread or ends the daemon:                      \
            refused inside MULTI */
#define CMD_NOSLOWLOG                                                          \
    0x100 /* kept out of SLOWLOG (as Redis: EXEC's                             \
             commands are logged themselves) */

#define COMMANDS_MAX 128
#define SLOW_ARGS 32
#define SLOW_ARG_BYTES 128
#define CMD_WRITES (CMD_ADMIN | CMD_WRITE)

/* The Redis release whose string and keyspace commands shmkvd answers
 * (COMMAND lists which): what INFO and HELLO give as the version, since
 * clients choose what to send by it. */
#define REDIS_COMPAT_VERSION "7.0.0"

typedef void command_fn(struct conn *c, size_t argc, struct resp_arg *argv,
                        struct evbuffer *out);

struct command {
    const char *name;
    int arity;
    unsigned flags;
    command_fn *fn;
    const char *summary;
};

/* ---- helpers ---- */

static bool arg_is(const struct resp_arg *a, const char *s)
{
    size_t n = strlen(s);
    return a->len == n && strncasecmp(a->data, s, n) == 0;
}

/* Parses a whole argument as a signed 64-bit decimal. */
static bool arg_int64(const struct resp_arg *a, int64_t *out)
{
    char buf[32];
    if (a->len == 0 || a->len >= sizeof buf)
        return false;
    memcpy(buf, a->data, a->len);
    buf[a->len] = '\0';
    char *end;
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    if (errno != 0 || *end != '\0' || isspace((unsigned char)buf[0]))
        return false;
    *out = v;
    return true;
}

/* For a command that found the store busy (SHMKV_ETIMEDOUT after the
 * daemon's short wait, tried; or another parked command found it so just
 * before, not tried): true if it may wait longer, and it is parked (no
 * reply now, run again shortly, see control.c). False once it has waited
 * lock_timeout_ms in all: it is answered BUSY. */
static bool parked_on(struct conn *c, int rc, bool tried)
{
    /* EXEC holds the write lock: a command in it that still waited (for
     * readers to let go of memory) is answered BUSY in EXEC's reply. */
    if (rc != SHMKV_ETIMEDOUT || c->in_exec)
        return false;
    uint64_t now = daemon_now_ms();
    if (tried)
        c->d->store_busy_until_ms = now + PARK_RETRY_MS;
    if (c->park_deadline_ms == 0) {
        c->park_deadline_ms = now + c->d->cfg.lock_timeout_ms;
        c->d->commands_parked++;
    }
    if (now >= c->park_deadline_ms)
        return false;
    c->parked = true;
    return true;
}

/* Replies with the Redis-style error for a libshmkv failure. */
/* A damaged store is worth the operator's attention, once a minute at
 * most however many commands meet it. */
static void store_damage_log(void)
{
    static time_t last;
    static uint64_t unlogged;
    time_t now = time(NULL);
    if (last != 0 && now - last < 60) {
        unlogged++;
        return;
    }
    log_error("the store is damaged: %s (%llu more since the last report); "
              "run shmkvctl check, and restore the snapshot into a new store",
              shmkv_last_error(), (unsigned long long)unlogged);
    last = now;
    unlogged = 0;
}

static uint64_t *refused_full; /* the daemon's count (command_run) */

static void reply_store_error(struct evbuffer *out, int rc)
{
    switch (rc) {
    case SHMKV_ENOSPC:
        if (refused_full != NULL)
            (*refused_full)++;
        resp_error(out, "OOM store is full (maxmemory reached, policy "
                        "noeviction)");
        break;
    case SHMKV_E2BIG:
        resp_errorf(out, "ERR %s", shmkv_last_error());
        break;
    case SHMKV_ENOTNUM:
        resp_error(out, "ERR value is not an integer or out of range");
        break;
    case SHMKV_ETIMEDOUT:
        resp_errorf(out, "BUSY timed out waiting for the store: %s",
                    shmkv_last_error());
        break;
    case SHMKV_ECLOSED:
        resp_error(out, "ERR the store is closed (shutting down)");
        break;
    case SHMKV_ECORRUPT:
        store_damage_log();
        resp_errorf(out, "CORRUPT %s", shmkv_last_error());
        break;
    default:
        resp_errorf(out, "ERR %s: %s", shmkv_strerror(rc), shmkv_last_error());
    }
}

static void reply_syntax(struct evbuffer *out)
{
    resp_error(out, "ERR syntax error");
}

/* The absolute expiry, Unix milliseconds, that an EX, PX, EXAT or PXAT
 * argument n asks for (n > 0, as Redis requires). False if out of
 * range. */
static bool expiry_from_arg(int64_t n, bool ms, bool at, int64_t *at_ms)
{
    if (n <= 0)
        return false;
    int64_t v = n;
    if (!ms && __builtin_mul_overflow(n, 1000, &v))
        return false;
    if (!at && __builtin_add_overflow(v, daemon_unix_ms(), &v))
        return false;
    *at_ms = v;
    return true;
}

/* The expiry of a key written without one: default_ttl, or none. */
static int64_t default_expiry(const struct conn *c)
{
    uint32_t s = c->d->cfg.default_ttl_s;
    return s == 0 ? 0 : daemon_unix_ms() + (int64_t)s * 1000;
}

static void human_bytes(uint64_t n, char *buf, size_t cap)
{
    const char *units[] = {"B", "K", "M", "G", "T"};
    double v = (double)n;
    unsigned u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    snprintf(buf, cap, u == 0 ? "%.0f%s" : "%.2f%s", v, units[u]);
}

/* ---- connection and server ---- */

static void cmd_ping(struct conn *c, size_t argc, struct resp_arg *argv,
                     struct evbuffer *out)
{
    (void)c;
    if (argc > 2)
        resp_error(out, "ERR wrong number of arguments for 'ping' command");
    else if (argc == 2)
        resp_bulk(out, argv[1].data, argv[1].len);
    else
        resp_simple(out, "PONG");
}

static void cmd_echo(struct conn *c, size_t argc, struct resp_arg *argv,
                     struct evbuffer *out)
{
    (void)c;
    (void)argc;
    resp_bulk(out, argv[1].data, argv[1].len);
}

static void cmd_quit(struct conn *c, size_t argc, struct resp_arg *argv,
                     struct evbuffer *out)
{
    (void)argc;
    (void)argv;
    resp_simple(out, "OK");
    c->closing = true;
}

static void cmd_select(struct conn *c, size_t argc, struct resp_arg *argv,
                       struct evbuffer *out)
{
    (void)c;
    (void)argc;
    int64_t db;
    if (!arg_int64(&argv[1], &db))
        resp_error(out, "ERR value is not an integer or out of range");
    else if (db != 0)
        resp_error(out, "ERR DB index is out of range");
    else
        resp_simple(out, "OK");
}

/* ---- keys ---- */

static void cmd_get(struct conn *c, size_t argc, struct resp_arg *argv,
                    struct evbuffer *out)
{
    (void)argc;
    struct shmkv *kv = c->d->kv;
    int rc = shmkv_read_begin(kv);
    if (rc != 0) {
        reply_store_error(out, rc);
        return;
    }
    shmkv_val_t v;
    rc = shmkv_get(kv, argv[1].data, argv[1].len, &v);
    if (rc == 0)
        resp_bulk(out, v.data, v.len);
    else if (rc == SHMKV_ENOTFOUND || rc == SHMKV_E2BIG)
        resp_null(out);
    shmkv_read_end(kv);
    if (rc != 0 && rc != SHMKV_ENOTFOUND && rc != SHMKV_E2BIG)
        reply_store_error(out, rc);
}

static void cmd_mget(struct conn *c, size_t argc, struct resp_arg *argv,
                     struct evbuffer *out)
{
    struct shmkv *kv = c->d->kv;
    int rc = shmkv_read_begin(kv);
    if (rc != 0) {
        reply_store_error(out, rc);
        return;
    }
    /* One read section: a consistent view of all the keys. A reply that
     * outgrows the connection's output limit is abandoned (the connection
     * is closed), not built to the end. */
    size_t limit = conn_output_limit(c);
    resp_array(out, argc - 1);
    for (size_t i = 1; i < argc; i++) {
        shmkv_val_t v;
        if (shmkv_get(kv, argv[i].data, argv[i].len, &v) == 0)
            resp_bulk(out, v.data, v.len);
        else
            resp_null(out);
        if (evbuffer_get_length(out) > limit) {
            c->reply_overflow = true;
            break;
        }
    }
    shmkv_read_end(kv);
}

/* A copy of a key's old value, taken under the write lock by an update
 * function (SET ... GET, GETSET, GETDEL, GETEX), for the reply. */
struct old_copy {
    char *data;
    size_t len;
    bool had; /* the key was there */
};

static int old_keep(struct old_copy *o, const struct shmkv_update *u)
{
    if (u->old == NULL)
        return 0;
    o->data = malloc(u->old_len ? u->old_len : 1);
    if (o->data == NULL)
        return SHMKV_ENOMEM;
    memcpy(o->data, u->old, u->old_len);
    o->len = u->old_len;
    o->had = true;
    return 0;
}

/* The old value as a bulk string, or nil. */
static void old_reply(struct evbuffer *out, const struct old_copy *o)
{
    if (o->had)
        resp_bulk(out, o->data, o->len);
    else
        resp_null(out);
}

/* What a SET asks of shmkv_update (SET ... GET, or an expiry already
 * past): the old value copied out, NX/XX decided, under one write lock. */
struct set_update {
    const struct resp_arg *val;
    int flags;
    int64_t expire_ms; /* absolute, 0 none, SHMKV_EXPIRE_KEEP */
    bool want_old;
    struct old_copy old;
    bool written;
};

static int set_update_fn(void *arg, struct shmkv_update *u)
{
    struct set_update *s = arg;
    if (s->want_old) {
        int rc = old_keep(&s->old, u);
        if (rc != 0)
            return rc;
    }
    bool exists = u->old != NULL;
    if (((s->flags & SHMKV_NX) && exists) || ((s->flags & SHMKV_XX) && !exists))
        return 0;
    u->action = SHMKV_UPDATE_STORE;
    u->val = s->val->data;
    u->vlen = s->val->len;
    u->expire_ms = s->expire_ms;
    s->written = true;
    return 0;
}

/* SET key value [NX|XX] [GET] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL] */
static void cmd_set(struct conn *c, size_t argc, struct resp_arg *argv,
                    struct evbuffer *out)
{
    int flags = 0;
    int64_t expire = -2; /* none given yet */
    bool want_old = arg_is(&argv[0], "GETSET");
    for (size_t i = 3; i < argc; i++) {
        int64_t n;
        if (arg_is(&argv[i], "NX") && !(flags & SHMKV_XX)) {
            flags |= SHMKV_NX;
        } else if (arg_is(&argv[i], "XX") && !(flags & SHMKV_NX)) {
            flags |= SHMKV_XX;
        } else if (arg_is(&argv[i], "GET")) {
            want_old = true;
        } else if (arg_is(&argv[i], "KEEPTTL") && expire == -2) {
            flags |= SHMKV_KEEPTTL;
            expire = SHMKV_EXPIRE_KEEP;
        } else if ((arg_is(&argv[i], "EX") || arg_is(&argv[i], "PX") ||
                    arg_is(&argv[i], "EXAT") || arg_is(&argv[i], "PXAT")) &&
                   i + 1 < argc && expire == -2) {
            if (!arg_int64(&argv[i + 1], &n)) {
                resp_error(out, "ERR value is not an integer or out of range");
                return;
            }
            bool ms = toupper((unsigned char)argv[i].data[0]) == 'P';
            bool at = argv[i].len == 4;
            if (!expiry_from_arg(n, ms, at, &expire)) {
                resp_errorf(out, "ERR invalid expire time in '%s' command",
                            c->last_command);
                return;
            }
            i++;
        } else {
            reply_syntax(out);
            return;
        }
    }
    if (expire == -2)
        expire = default_expiry(c);
    struct shmkv *kv = c->d->kv;
    int64_t now = daemon_unix_ms();
    bool past = expire > 0 && expire <= now;
    int rc;
    struct set_update su = {.val = &argv[2],
                            .flags = flags,
                            .expire_ms = expire,
                            .want_old = want_old};
    if (want_old || past) {
        /* One write: the old value read, the new one written (or the key
         * removed, for an expiry already past, as Redis), nothing between. */
        if (argv[2].len > c->d->max_value_bytes)
            rc = SHMKV_E2BIG;
        else
            rc =
                shmkv_update(kv, argv[1].data, argv[1].len, set_update_fn, &su);
        if (rc == 0 && !su.written)
            rc = (flags & SHMKV_NX) ? SHMKV_EEXIST : SHMKV_ENOTFOUND;
    } else {
        uint64_t ttl = expire > 0 ? (uint64_t)(expire - now) : 0;
        rc = shmkv_pset(kv, argv[1].data, argv[1].len, argv[2].data,
                        argv[2].len, ttl, flags);
    }
    if (parked_on(c, rc, true)) {
        /* No reply yet: it runs again, and reads the old value again. */
    } else if (rc != 0 && rc != SHMKV_EEXIST && rc != SHMKV_ENOTFOUND) {
        reply_store_error(out, rc);
    } else if (want_old && su.old.had) {
        resp_bulk(out, su.old.data, su.old.len);
    } else if (want_old || rc != 0) {
        resp_null(out);
    } else {
        resp_simple(out, "OK");
    }
    free(su.old.data);
}

static void cmd_mset(struct conn *c, size_t argc, struct resp_arg *argv,
                     struct evbuffer *out)
{
    if (argc % 2 != 1) {
        resp_error(out, "ERR wrong number of arguments for 'mset' command");
        return;
    }
    /* A parked MSET goes on from the pair it stopped at. */
    for (size_t i = 1 + 2 * c->progress; i < argc; i += 2) {
        int rc =
            shmkv_set(c->d->kv, argv[i].data, argv[i].len, argv[i + 1].data,
                      argv[i + 1].len, c->d->cfg.default_ttl_s, 0);
        if (parked_on(c, rc, true)) {
            c->progress = (i - 1) / 2;
            return;
        }
        if (rc != 0) {
            reply_store_error(out, rc);
            return;
        }
    }
    resp_simple(out, "OK");
}

static void cmd_del(struct conn *c, size_t argc, struct resp_arg *argv,
                    struct evbuffer *out)
{
    /* A parked DEL goes on from the key it stopped at, with its count. */
    int64_t removed = c->progress_count;
    for (size_t i = 1 + c->progress; i < argc; i++) {
        int rc = shmkv_del(c->d->kv, argv[i].data, argv[i].len);
        if (parked_on(c, rc, true)) {
            c->progress = i - 1;
            c->progress_count = removed;
            return;
        }
        if (rc == 0)
            removed++;
        else if (rc != SHMKV_ENOTFOUND && rc != SHMKV_E2BIG) {
            reply_store_error(out, rc);
            return;
        }
    }
    resp_int(out, removed);
}

static void cmd_exists(struct conn *c, size_t argc, struct resp_arg *argv,
                       struct evbuffer *out)
{
    struct shmkv *kv = c->d->kv;
    int rc = shmkv_read_begin(kv);
    if (rc != 0) {
        reply_store_error(out, rc);
        return;
    }
    int64_t n = 0;
    for (size_t i = 1; i < argc; i++) {
        shmkv_val_t v;
        n += shmkv_get(kv, argv[i].data, argv[i].len, &v) == 0;
    }
    shmkv_read_end(kv);
    resp_int(out, n);
}

static void cmd_type(struct conn *c, size_t argc, struct resp_arg *argv,
                     struct evbuffer *out)
{
    (void)argc;
    size_t len;
    int rc = shmkv_get_copy(c->d->kv, argv[1].data, argv[1].len, NULL, 0, &len);
    if (rc == 0 || rc == SHMKV_ENOBUFS)
        resp_simple(out, "string");
    else if (rc == SHMKV_ENOTFOUND || rc == SHMKV_E2BIG)
        resp_simple(out, "none");
    else
        reply_store_error(out, rc);
}

static void incr_by(struct conn *c, const struct resp_arg *key, int64_t by,
                    struct evbuffer *out)
{
    int64_t result;
    int rc = shmkv_incr(c->d->kv, key->data, key->len, by, &result);
    if (parked_on(c, rc, true))
        return;
    if (rc == SHMKV_EOVERFLOW)
        resp_error(out, "ERR increment or decrement would overflow");
    else if (rc != 0)
        reply_store_error(out, rc);
    else
        resp_int(out, result);
}

static void cmd_incr(struct conn *c, size_t argc, struct resp_arg *argv,
                     struct evbuffer *out)
{
    (void)argc;
    incr_by(c, &argv[1], 1, out);
}

static void cmd_decr(struct conn *c, size_t argc, struct resp_arg *argv,
                     struct evbuffer *out)
{
    (void)argc;
    incr_by(c, &argv[1], -1, out);
}

static void cmd_incrby(struct conn *c, size_t argc, struct resp_arg *argv,
                       struct evbuffer *out)
{
    (void)argc;
    int64_t by;
    if (!arg_int64(&argv[2], &by)) {
        resp_error(out, "ERR value is not an integer or out of range");
        return;
    }
    incr_by(c, &argv[1], by, out);
}

static void cmd_decrby(struct conn *c, size_t argc, struct resp_arg *argv,
                       struct evbuffer *out)
{
    (void)argc;
    int64_t by;
    if (!arg_int64(&argv[2], &by) || by == INT64_MIN) {
        resp_error(out, "ERR value is not an integer or out of range");
        return;
    }
    incr_by(c, &argv[1], -by, out);
}

/* EXPIRE's NX | XX | GT | LT, decided against the key's current expiry
 * under the write lock (shmkv_update). */
#define EXPIRE_NX 1u
#define EXPIRE_XX 2u
#define EXPIRE_GT 4u
#define EXPIRE_LT 8u
struct expire_update {
    int64_t at_ms; /* absolute; <= now removes the key */
    unsigned cond;
    bool found;
    bool applied;
};

static int expire_update_fn(void *arg, struct shmkv_update *u)
{
    struct expire_update *e = arg;
    if (u->old == NULL)
        return 0;
    e->found = true;
    int64_t cur = u->old_expire_ms; /* 0: none, which GT/LT take as forever */
    if (((e->cond & EXPIRE_NX) && cur != 0) ||
        ((e->cond & EXPIRE_XX) && cur == 0) ||
        ((e->cond & EXPIRE_GT) && (cur == 0 || e->at_ms <= cur)) ||
        ((e->cond & EXPIRE_LT) && cur != 0 && e->at_ms >= cur))
        return 0;
    u->action = SHMKV_UPDATE_EXPIRE;
    u->expire_ms = e->at_ms;
    e->applied = true;
    return 0;
}

/* EXPIRE key s, PEXPIRE key ms, EXPIREAT key t, PEXPIREAT key t, each with
 * [NX | XX | GT | LT]: 1 if the TTL was set (or the key removed, for a
 * time already past), 0 if not. */
static void cmd_expire(struct conn *c, size_t argc, struct resp_arg *argv,
                       struct evbuffer *out)
{
    int64_t n;
    if (!arg_int64(&argv[2], &n)) {
        resp_error(out, "ERR value is not an integer or out of range");
        return;
    }
    bool ms = toupper((unsigned char)argv[0].data[0]) == 'P';
    bool at = toupper((unsigned char)argv[0].data[argv[0].len - 1]) == 'T';
    struct expire_update e = {0};
    for (size_t i = 3; i < argc; i++) {
        if (arg_is(&argv[i], "NX"))
            e.cond |= EXPIRE_NX;
        else if (arg_is(&argv[i], "XX"))
            e.cond |= EXPIRE_XX;
        else if (arg_is(&argv[i], "GT"))
            e.cond |= EXPIRE_GT;
        else if (arg_is(&argv[i], "LT"))
            e.cond |= EXPIRE_LT;
        else {
            resp_errorf(out, "ERR Unsupported option %.*s",
                        (int)(argv[i].len < 32 ? argv[i].len : 32),
                        argv[i].data);
            return;
        }
    }
    if (((e.cond & EXPIRE_NX) && (e.cond & ~EXPIRE_NX)) ||
        ((e.cond & EXPIRE_GT) && (e.cond & EXPIRE_LT))) {
        resp_error(out, "ERR NX and XX, GT or LT options at the same time "
                        "are not compatible");
        return;
    }
    /* A time not in the future (as Redis, a TTL <= 0 too) removes the
     * key; out of range is an error. */
    if (n <= 0)
        e.at_ms = 1;
    else if (!expiry_from_arg(n, ms, at, &e.at_ms)) {
        resp_errorf(out, "ERR invalid expire time in '%s' command",
                    c->last_command);
        return;
    }
    int rc =
        shmkv_update(c->d->kv, argv[1].data, argv[1].len, expire_update_fn, &e);
    if (parked_on(c, rc, true))
        return;
    if (rc != 0 && rc != SHMKV_E2BIG)
        reply_store_error(out, rc);
    else
        resp_int(out, e.applied);
}

/* SETEX key seconds value, PSETEX key ms value: SET key value EX|PX n. */
static void cmd_setex(struct conn *c, size_t argc, struct resp_arg *argv,
                      struct evbuffer *out)
{
    (void)argc;
    int64_t n;
    if (!arg_int64(&argv[2], &n)) {
        resp_error(out, "ERR value is not an integer or out of range");
        return;
    }
    if (n <= 0) {
        resp_errorf(out, "ERR invalid expire time in '%s' command",
                    c->last_command);
        return;
    }
    bool ms = toupper((unsigned char)argv[0].data[0]) == 'P';
    struct resp_arg set[5] = {
        {"SET", 3}, argv[1], argv[3], {ms ? "PX" : "EX", 2}, argv[2]};
    cmd_set(c, 5, set, out);
}

/* SETNX key value: 1 if it set the key, 0 if the key existed. */
static void cmd_setnx(struct conn *c, size_t argc, struct resp_arg *argv,
                      struct evbuffer *out)
{
    (void)argc;
    int rc = shmkv_set(c->d->kv, argv[1].data, argv[1].len, argv[2].data,
                       argv[2].len, c->d->cfg.default_ttl_s, SHMKV_NX);
    if (parked_on(c, rc, true))
        return;
    if (rc == 0 || rc == SHMKV_EEXIST)
        resp_int(out, rc == 0);
    else
        reply_store_error(out, rc);
}

/* STRLEN key: the value's length, 0 if absent. */
static void cmd_strlen(struct conn *c, size_t argc, struct resp_arg *argv,
                       struct evbuffer *out)
{
    (void)argc;
    size_t len = 0;
    int rc = shmkv_get_copy(c->d->kv, argv[1].data, argv[1].len, NULL, 0, &len);
    if (rc == 0 || rc == SHMKV_ENOBUFS)
        resp_int(out, (int64_t)len);
    else if (rc == SHMKV_ENOTFOUND)
        resp_int(out, 0);
    else
        reply_store_error(out, rc);
}

/* The reply of TTL, PTTL, EXPIRETIME and PEXPIRETIME: -2 if the key is
 * absent (rc), -1 if it has no TTL (v < 0), else shown. */
static void reply_key_time(struct evbuffer *out, int rc, int64_t v,
                           int64_t shown)
{
    if (rc == SHMKV_ENOTFOUND || rc == SHMKV_E2BIG)
        resp_int(out, -2);
    else if (rc != 0)
        reply_store_error(out, rc);
    else
        resp_int(out, v < 0 ? -1 : shown);
}

/* EXPIRETIME key, PEXPIRETIME key: when the key expires (Unix time), -1
 * if it has no TTL, -2 if it is absent. */
static void cmd_expiretime(struct conn *c, size_t argc, struct resp_arg *argv,
                           struct evbuffer *out)
{
    (void)argc;
    int64_t at = -1;
    int rc = shmkv_pexpiretime(c->d->kv, argv[1].data, argv[1].len, &at);
    bool ms = toupper((unsigned char)argv[0].data[0]) == 'P';
    reply_key_time(out, rc, at, ms ? at : at / 1000);
}

/* TIME: the server's time, seconds and microseconds. */
static void cmd_time(struct conn *c, size_t argc, struct resp_arg *argv,
                     struct evbuffer *out)
{
    (void)c;
    (void)argc;
    (void)argv;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char buf[32];
    resp_array(out, 2);
    snprintf(buf, sizeof buf, "%lld", (long long)ts.tv_sec);
    resp_bulk_str(out, buf);
    snprintf(buf, sizeof buf, "%ld", ts.tv_nsec / 1000);
    resp_bulk_str(out, buf);
}

static int persist_fn(void *arg, struct shmkv_update *u)
{
    bool *applied = arg;
    if (u->old != NULL && u->old_expire_ms != 0) {
        u->action = SHMKV_UPDATE_EXPIRE;
        u->expire_ms = 0;
        *applied = true;
    }
    return 0;
}

/* PERSIST key: 1 if it removed a TTL. */
static void cmd_persist(struct conn *c, size_t argc, struct resp_arg *argv,
                        struct evbuffer *out)
{
    (void)argc;
    bool applied = false;
    int rc =
        shmkv_update(c->d->kv, argv[1].data, argv[1].len, persist_fn, &applied);
    if (parked_on(c, rc, true))
        return;
    if (rc != 0 && rc != SHMKV_E2BIG)
        reply_store_error(out, rc);
    else
        resp_int(out, applied);
}

static void cmd_ttl(struct conn *c, size_t argc, struct resp_arg *argv,
                    struct evbuffer *out)
{
    (void)argc;
    int64_t ttl = -1;
    int rc = shmkv_pttl(c->d->kv, argv[1].data, argv[1].len, &ttl);
    bool ms = toupper((unsigned char)argv[0].data[0]) == 'P';
    reply_key_time(out, rc, ttl, ms ? ttl : (ttl + 500) / 1000);
}

/* ---- reading and writing one key in one write (shmkv_update) ---- */

/* What the commands below ask of shmkv_update: the old value copied out,
 * the new one built, under the write lock. */
struct rmw {
    const struct resp_arg *argv;
    size_t argc;
    struct conn *c;
    int64_t expire_ms;
    bool expire_given;
    struct old_copy old; /* if asked for */
    char *buf;           /* the new value, built */
    size_t len;
    int64_t result;
    const char *error; /* a reply error: nothing was written */
    char text[64];
};

static void rmw_reply_old(struct evbuffer *out, const struct rmw *m)
{
    old_reply(out, &m->old);
}

/* Runs fn on key argv[1] as one write, then answers with reply, with fn's
 * error, or with the store's; nothing if the command was parked (it runs
 * again, from the start). */
static void rmw_run(struct conn *c, struct rmw *m, shmkv_update_fn fn,
                    void (*reply)(struct evbuffer *, const struct rmw *),
                    struct evbuffer *out)
{
    int rc = shmkv_update(c->d->kv, m->argv[1].data, m->argv[1].len, fn, m);
    if (parked_on(c, rc, true))
        ;
    else if (m->error != NULL)
        resp_error(out, m->error);
    else if (rc != 0)
        reply_store_error(out, rc);
    else
        reply(out, m);
    free(m->old.data);
    free(m->buf);
}

static void rmw_reply_result(struct evbuffer *out, const struct rmw *m)
{
    resp_int(out, m->result);
}

static void rmw_reply_text(struct evbuffer *out, const struct rmw *m)
{
    resp_bulk_str(out, m->text);
}

static int getdel_fn(void *arg, struct shmkv_update *u)
{
    struct rmw *m = arg;
    int rc = old_keep(&m->old, u);
    if (rc == 0 && u->old != NULL)
        u->action = SHMKV_UPDATE_REMOVE;
    return rc;
}

/* GETDEL key: the value, and the key removed, in one write. */
static void cmd_getdel(struct conn *c, size_t argc, struct resp_arg *argv,
                       struct evbuffer *out)
{
    struct rmw m = {.argv = argv, .argc = argc, .c = c};
    rmw_run(c, &m, getdel_fn, rmw_reply_old, out);
}

static int getex_fn(void *arg, struct shmkv_update *u)
{
    struct rmw *m = arg;
    int rc = old_keep(&m->old, u);
    if (rc == 0 && u->old != NULL && m->expire_given) {
        u->action = SHMKV_UPDATE_EXPIRE;
        u->expire_ms = m->expire_ms;
    }
    return rc;
}

/* GETEX key [EX s | PX ms | EXAT t | PXAT t | PERSIST]: the value, and
 * its TTL changed, in one write. */
static void cmd_getex(struct conn *c, size_t argc, struct resp_arg *argv,
                      struct evbuffer *out)
{
    struct rmw m = {.argv = argv, .argc = argc, .c = c};
    for (size_t i = 2; i < argc; i++) {
        int64_t n;
        if (arg_is(&argv[i], "PERSIST") && !m.expire_given) {
            m.expire_given = true;
            m.expire_ms = 0;
        } else if ((arg_is(&argv[i], "EX") || arg_is(&argv[i], "PX") ||
                    arg_is(&argv[i], "EXAT") || arg_is(&argv[i], "PXAT")) &&
                   i + 1 < argc && !m.expire_given) {
            if (!arg_int64(&argv[i + 1], &n)) {
                resp_error(out, "ERR value is not an integer or out of range");
                return;
            }
            bool ms = toupper((unsigned char)argv[i].data[0]) == 'P';
            if (!expiry_from_arg(n, ms, argv[i].len == 4, &m.expire_ms)) {
                resp_error(out, "ERR invalid expire time in 'getex' command");
                return;
            }
            m.expire_given = true;
            i++;
        } else {
            reply_syntax(out);
            return;
        }
    }
    rmw_run(c, &m, getex_fn, rmw_reply_old, out);
}

static int append_fn(void *arg, struct shmkv_update *u)
{
    struct rmw *m = arg;
    const struct resp_arg *v = &m->argv[2];
    size_t old_len = u->old != NULL ? u->old_len : 0;
    if (old_len + v->len > m->c->d->max_value_bytes) {
        m->error = "ERR string exceeds maximum allowed size";
        return 0;
    }
    m->buf = malloc(old_len + v->len + 1);
    if (m->buf == NULL)
        return SHMKV_ENOMEM;
    if (old_len > 0)
        memcpy(m->buf, u->old, old_len);
    memcpy(m->buf + old_len, v->data, v->len);
    u->action = SHMKV_UPDATE_STORE;
    u->val = m->buf;
    u->vlen = old_len + v->len;
    u->expire_ms = u->old != NULL ? SHMKV_EXPIRE_KEEP : m->expire_ms;
    m->result = (int64_t)u->vlen;
    return 0;
}

/* APPEND key value: the new length; the key keeps its TTL. */
static void cmd_append(struct conn *c, size_t argc, struct resp_arg *argv,
                       struct evbuffer *out)
{
    struct rmw m = {
        .argv = argv, .argc = argc, .c = c, .expire_ms = default_expiry(c)};
    rmw_run(c, &m, append_fn, rmw_reply_result, out);
}

static int setrange_fn(void *arg, struct shmkv_update *u)
{
    struct rmw *m = arg;
    const struct resp_arg *v = &m->argv[3];
    size_t old_len = u->old != NULL ? u->old_len : 0;
    size_t off = (size_t)m->result;
    if (v->len == 0) { /* nothing written, not even a new key */
        m->result = (int64_t)old_len;
        return 0;
    }
    size_t len = off + v->len > old_len ? off + v->len : old_len;
    if (len > m->c->d->max_value_bytes) {
        m->error = "ERR string exceeds maximum allowed size";
        return 0;
    }
    m->buf = calloc(1, len);
    if (m->buf == NULL)
        return SHMKV_ENOMEM;
    if (old_len > 0)
        memcpy(m->buf, u->old, old_len);
    memcpy(m->buf + off, v->data, v->len);
    u->action = SHMKV_UPDATE_STORE;
    u->val = m->buf;
    u->vlen = len;
    u->expire_ms = u->old != NULL ? SHMKV_EXPIRE_KEEP : m->expire_ms;
    m->result = (int64_t)len;
    return 0;
}

/* SETRANGE key offset value: overwrites from offset, padding with zero
 * bytes; the new length. */
static void cmd_setrange(struct conn *c, size_t argc, struct resp_arg *argv,
                         struct evbuffer *out)
{
    int64_t off;
    if (!arg_int64(&argv[2], &off) || off < 0) {
        resp_error(out, "ERR offset is out of range");
        return;
    }
    if ((uint64_t)off > c->d->max_value_bytes) {
        resp_error(out, "ERR string exceeds maximum allowed size");
        return;
    }
    struct rmw m = {.argv = argv,
                    .argc = argc,
                    .c = c,
                    .result = off,
                    .expire_ms = default_expiry(c)};
    rmw_run(c, &m, setrange_fn, rmw_reply_result, out);
}

/* A float as Redis reads one: the whole argument, finite. */
static bool parse_long_double(const char *p, size_t len, long double *out)
{
    char buf[64];
    if (len == 0 || len >= sizeof buf || isspace((unsigned char)p[0]))
        return false;
    memcpy(buf, p, len);
    buf[len] = '\0';
    char *end;
    errno = 0;
    long double v = strtold(buf, &end);
    if (*end != '\0' || errno == ERANGE || isnan(v) || isinf(v))
        return false;
    *out = v;
    return true;
}

static int incrbyfloat_fn(void *arg, struct shmkv_update *u)
{
    struct rmw *m = arg;
    long double by, value = 0;
    parse_long_double(m->argv[2].data, m->argv[2].len, &by); /* checked */
    if (u->old != NULL && !parse_long_double(u->old, u->old_len, &value)) {
        m->error = "ERR value is not a valid float";
        return 0;
    }
    value += by;
    if (isnan(value) || isinf(value)) {
        m->error = "ERR increment would produce NaN or Infinity";
        return 0;
    }
    /* As Redis: 17 digits after the point, trailing zeros dropped. */
    int n = snprintf(m->text, sizeof m->text, "%.17Lf", value);
    if (n <= 0 || (size_t)n >= sizeof m->text) {
        m->error = "ERR increment would produce a value too long";
        return 0;
    }
    if (strchr(m->text, '.') != NULL) {
        while (n > 0 && m->text[n - 1] == '0')
            m->text[--n] = '\0';
        if (n > 0 && m->text[n - 1] == '.')
            m->text[--n] = '\0';
    }
    if (strcmp(m->text, "-0") == 0)
        strcpy(m->text, "0");
    u->action = SHMKV_UPDATE_STORE;
    u->val = m->text;
    u->vlen = strlen(m->text);
    u->expire_ms = u->old != NULL ? SHMKV_EXPIRE_KEEP : m->expire_ms;
    return 0;
}

/* INCRBYFLOAT key increment: the new value, as text. */
static void cmd_incrbyfloat(struct conn *c, size_t argc, struct resp_arg *argv,
                            struct evbuffer *out)
{
    long double by;
    if (!parse_long_double(argv[2].data, argv[2].len, &by)) {
        resp_error(out, "ERR value is not a valid float");
        return;
    }
    struct rmw m = {
        .argv = argv, .argc = argc, .c = c, .expire_ms = default_expiry(c)};
    rmw_run(c, &m, incrbyfloat_fn, rmw_reply_text, out);
}

/* GETRANGE key start end (and SUBSTR): bytes start..end inclusive, counted
 * from the end when negative, as Redis. */
static void cmd_getrange(struct conn *c, size_t argc, struct resp_arg *argv,
                         struct evbuffer *out)
{
    (void)argc;
    int64_t start, end;
    if (!arg_int64(&argv[2], &start) || !arg_int64(&argv[3], &end)) {
        resp_error(out, "ERR value is not an integer or out of range");
        return;
    }
    struct shmkv *kv = c->d->kv;
    int rc = shmkv_read_begin(kv);
    if (rc != 0) {
        reply_store_error(out, rc);
        return;
    }
    shmkv_val_t v;
    rc = shmkv_get(kv, argv[1].data, argv[1].len, &v);
    if (rc == 0) {
        int64_t len = (int64_t)v.len;
        if (start < 0 && end < 0 && start > end) {
            resp_bulk(out, "", 0);
        } else {
            if (start < 0)
                start = len + start;
            if (end < 0)
                end = len + end;
            if (start < 0)
                start = 0;
            if (end < 0)
                end = 0;
            if (end >= len)
                end = len - 1;
            if (len == 0 || start > end)
                resp_bulk(out, "", 0);
            else
                resp_bulk(out, (const char *)v.data + start,
                          (size_t)(end - start + 1));
        }
    } else if (rc == SHMKV_ENOTFOUND || rc == SHMKV_E2BIG) {
        resp_bulk(out, "", 0);
    }
    shmkv_read_end(kv);
    if (rc != 0 && rc != SHMKV_ENOTFOUND && rc != SHMKV_E2BIG)
        reply_store_error(out, rc);
}

/* MSETNX key value ...: sets them all if none exists, in one write
 * section: 1, else 0 and nothing set. */
static void cmd_msetnx(struct conn *c, size_t argc, struct resp_arg *argv,
                       struct evbuffer *out)
{
    if (argc % 2 != 1) {
        resp_error(out, "ERR wrong number of arguments for 'msetnx' command");
        return;
    }
    struct shmkv *kv = c->d->kv;
    bool own = !c->in_exec;
    int rc = own ? shmkv_write_begin(kv) : 0;
    if (parked_on(c, rc, true))
        return;
    bool any = false;
    for (size_t i = 1; rc == 0 && i < argc && !any; i += 2) {
        size_t len;
        int r = shmkv_get_copy(kv, argv[i].data, argv[i].len, NULL, 0, &len);
        if (r == 0 || r == SHMKV_ENOBUFS)
            any = true;
        else if (r != SHMKV_ENOTFOUND)
            rc = r;
    }
    int64_t expire = default_expiry(c);
    for (size_t i = 1; rc == 0 && !any && i < argc; i += 2) {
        int64_t left = expire - daemon_unix_ms();
        uint64_t ttl = expire == 0 ? 0 : left > 0 ? (uint64_t)left : 1;
        rc = shmkv_pset(kv, argv[i].data, argv[i].len, argv[i + 1].data,
                        argv[i + 1].len, ttl, 0);
    }
    if (own && shmkv_write_end(kv) != 0 && rc == 0)
        rc = SHMKV_ESTATE;
    if (rc != 0)
        reply_store_error(out, rc);
    else
        resp_int(out, !any);
}

/* RANDOMKEY: a key, or nil when the store is empty. */
static void cmd_randomkey(struct conn *c, size_t argc, struct resp_arg *argv,
                          struct evbuffer *out)
{
    (void)argc;
    (void)argv;
    size_t cap = c->d->max_key_bytes, len;
    char *key = malloc(cap);
    int rc =
        key == NULL ? SHMKV_ENOMEM : shmkv_random_key(c->d->kv, key, cap, &len);
    if (rc == 0)
        resp_bulk(out, key, len);
    else if (rc == SHMKV_ENOTFOUND)
        resp_null(out);
    else
        reply_store_error(out, rc);
    free(key);
}

/* The memory an entry of klen + vlen bytes takes: its arena block (a
 * 16-byte header, key and value in 16-byte units) and its index slot. */
static int64_t entry_usage(size_t klen, size_t vlen)
{
    return (int64_t)((16 + klen + vlen + 15) / 16 * 16 + 8);
}

/* MEMORY USAGE key [SAMPLES n]: the bytes the key's entry takes. */
static void cmd_memory(struct conn *c, size_t argc, struct resp_arg *argv,
                       struct evbuffer *out)
{
    if (!arg_is(&argv[1], "USAGE") || argc < 3) {
        resp_error(out, "ERR unknown MEMORY subcommand: shmkv has MEMORY "
                        "USAGE key");
        return;
    }
    size_t len;
    int rc = shmkv_get_copy(c->d->kv, argv[2].data, argv[2].len, NULL, 0, &len);
    if (rc == 0 || rc == SHMKV_ENOBUFS)
        resp_int(out, entry_usage(argv[2].len, len));
    else if (rc == SHMKV_ENOTFOUND || rc == SHMKV_E2BIG)
        resp_null(out);
    else
        reply_store_error(out, rc);
}

/* OBJECT ENCODING key: "raw" (values are bytes); OBJECT HELP. */
static void cmd_object(struct conn *c, size_t argc, struct resp_arg *argv,
                       struct evbuffer *out)
{
    if (arg_is(&argv[1], "HELP")) {
        resp_array(out, 1);
        resp_bulk_str(out, "ENCODING <key>: \"raw\" (shmkv stores bytes)");
        return;
    }
    if (!arg_is(&argv[1], "ENCODING") || argc != 3) {
        resp_error(out, "ERR unknown OBJECT subcommand: shmkv has OBJECT "
                        "ENCODING key (no LRU or LFU figures per key)");
        return;
    }
    size_t len;
    int rc = shmkv_get_copy(c->d->kv, argv[2].data, argv[2].len, NULL, 0, &len);
    if (rc == 0 || rc == SHMKV_ENOBUFS)
        resp_bulk_str(out, "raw");
    else if (rc == SHMKV_ENOTFOUND || rc == SHMKV_E2BIG)
        resp_null(out);
    else
        reply_store_error(out, rc);
}

static void cmd_dbsize(struct conn *c, size_t argc, struct resp_arg *argv,
                       struct evbuffer *out)
{
    (void)argc;
    (void)argv;
    struct shmkv_stats st;
    int rc = shmkv_stats(c->d->kv, &st);
    if (rc != 0)
        reply_store_error(out, rc);
    else
        resp_int(out, (int64_t)st.entries);
}

static void cmd_flushall(struct conn *c, size_t argc, struct resp_arg *argv,
                         struct evbuffer *out)
{
    if (argc > 2 || (argc == 2 && !arg_is(&argv[1], "SYNC") &&
                     !arg_is(&argv[1], "ASYNC"))) {
        reply_syntax(out);
        return;
    }
    int rc = shmkv_flush(c->d->kv);
    if (parked_on(c, rc, true))
        return;
    if (rc != 0)
        reply_store_error(out, rc);
    else
        resp_simple(out, "OK");
    log_info("FLUSHALL by pid %d uid %d", (int)c->pid, (int)c->uid);
}

/* Redis's glob (its stringmatchlen) over binary strings: * (any run),
 * ? (any byte), \x (x itself), and [...] a set of bytes, negated by a
 * leading ^, holding single bytes, \x (x itself) and ranges a-z (either
 * way round; the byte after the dash is taken as it is, so [a-]] is a
 * range ending at ']'). A [ without its ] takes the rest of the pattern as
 * the set. Bytes compare unsigned. Both sides are counted, so keys holding
 * NUL bytes match like any other. Iterative, returning to the last * on a
 * mismatch: O(plen * slen) at worst, however many stars the pattern
 * holds. */
static bool glob_class(const char *p, size_t plen, size_t *pi, unsigned char ch)
{
    const unsigned char *u = (const unsigned char *)p;
    size_t i = *pi + 1; /* past '[' */
    bool negate = i < plen && u[i] == '^';
    if (negate)
        i++;
    bool match = false;
    for (; i < plen && u[i] != ']'; i++) {
        if (u[i] == '\\' && i + 1 < plen) {
            match |= u[++i] == ch;
        } else if (i + 2 < plen && u[i + 1] == '-') {
            unsigned char lo = u[i], hi = u[i + 2];
            if (lo > hi) {
                lo = u[i + 2];
                hi = u[i];
            }
            match |= ch >= lo && ch <= hi;
            i += 2;
        } else {
            match |= u[i] == ch;
        }
    }
    *pi = i < plen ? i + 1 : i; /* past ']', or the end if it is missing */
    return match != negate;
}

bool glob_match(const char *p, size_t plen, const char *s, size_t slen)
{
    size_t pi = 0, si = 0;
    size_t star_p = SIZE_MAX, star_s = 0;
    while (si < slen) {
        if (pi < plen && p[pi] == '*') {
            while (pi < plen && p[pi] == '*')
                pi++;
            star_p = pi;
            star_s = si;
            continue;
        }
        if (pi < plen) {
            unsigned char ch = (unsigned char)s[si];
            size_t next = pi + 1;
            bool ok;
            if (p[pi] == '?') {
                ok = true;
            } else if (p[pi] == '[') {
                next = pi;
                ok = glob_class(p, plen, &next, ch);
            } else if (p[pi] == '\\' && pi + 1 < plen) {
                ok = (unsigned char)p[pi + 1] == ch;
                next = pi + 2;
            } else {
                ok = (unsigned char)p[pi] == ch;
            }
            if (ok) {
                pi = next;
                si++;
                continue;
            }
        }
        if (star_p == SIZE_MAX)
            return false;
        pi = star_p;
        si = ++star_s;
    }
    while (pi < plen && p[pi] == '*')
        pi++;
    return pi == plen;
}

/* KEYS takes patterns up to twice the store's maximum key size, and at
 * least this long. */
#define KEYS_PATTERN_MIN_LIMIT 1024

static void cmd_keys(struct conn *c, size_t argc, struct resp_arg *argv,
                     struct evbuffer *out)
{
    (void)argc;
    /* Matching costs up to the pattern's length times the key's, for every
     * key, in the event loop: a pattern need not be longer than an escaped
     * key. */
    size_t most = 2 * (size_t)c->d->max_key_bytes + 2;
    if (most < KEYS_PATTERN_MIN_LIMIT)
        most = KEYS_PATTERN_MIN_LIMIT;
    if (argv[1].len > most) {
        resp_errorf(out, "ERR pattern too long (at most %zu bytes)", most);
        return;
    }
    /* The walk runs on the worker thread (jobs.c). */
    if (!job_queue(c->d, c, JOB_KEYS, argv[1].data, argv[1].len))
        resp_error(out, "ERR out of memory");
}

/* SCAN's step: the keys its pattern and type match. */
struct scan_step {
    const struct resp_arg *pattern; /* NULL: every key */
    struct evbuffer *keys;
    size_t n;
};

static int scan_visit(void *arg, const void *key, size_t klen, const void *val,
                      size_t vlen, int64_t ttl_s)
{
    (void)val;
    (void)vlen;
    (void)ttl_s;
    struct scan_step *st = arg;
    if (st->pattern != NULL &&
        !glob_match(st->pattern->data, st->pattern->len, key, klen))
        return 0;
    resp_bulk(st->keys, key, klen);
    st->n++;
    return 0;
}

/* SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]: one bounded step of
 * shmkv_scan in the event loop (no lock: a read section), as Redis's. */
#define SCAN_COUNT_MAX 100000
static void cmd_scan(struct conn *c, size_t argc, struct resp_arg *argv,
                     struct evbuffer *out)
{
    char buf[32];
    if (argv[1].len == 0 || argv[1].len >= sizeof buf) {
        resp_error(out, "ERR invalid cursor");
        return;
    }
    memcpy(buf, argv[1].data, argv[1].len);
    buf[argv[1].len] = '\0';
    char *end;
    errno = 0;
    unsigned long long cursor = strtoull(buf, &end, 10);
    if (errno != 0 || *end != '\0' || buf[0] == '-') {
        resp_error(out, "ERR invalid cursor");
        return;
    }
    struct scan_step st = {NULL, NULL, 0};
    int64_t count = 10;
    bool strings = true;
    for (size_t i = 2; i < argc; i += 2) {
        if (i + 1 >= argc) {
            resp_error(out, "ERR syntax error");
            return;
        }
        if (arg_is(&argv[i], "MATCH")) {
            st.pattern = &argv[i + 1];
        } else if (arg_is(&argv[i], "COUNT")) {
            if (!arg_int64(&argv[i + 1], &count) || count < 1) {
                resp_error(out, count < 1 ? "ERR syntax error"
                                          : "ERR value is not an integer or "
                                            "out of range");
                return;
            }
            if (count > SCAN_COUNT_MAX)
                count = SCAN_COUNT_MAX; /* a step stays short */
        } else if (arg_is(&argv[i], "TYPE")) {
            /* Every value is a string: another type matches nothing. */
            strings = arg_is(&argv[i + 1], "string");
        } else {
            resp_error(out, "ERR syntax error");
            return;
        }
    }
    size_t most = 2 * (size_t)c->d->max_key_bytes + 2;
    if (most < KEYS_PATTERN_MIN_LIMIT)
        most = KEYS_PATTERN_MIN_LIMIT;
    if (st.pattern != NULL && st.pattern->len > most) {
        resp_errorf(out, "ERR pattern too long (at most %zu bytes)", most);
        return;
    }
    st.keys = evbuffer_new();
    if (st.keys == NULL) {
        resp_error(out, "ERR out of memory");
        return;
    }
    uint64_t next = cursor;
    int rc = shmkv_scan(c->d->kv, &next, (size_t)count, scan_visit, &st);
    if (rc != 0) {
        evbuffer_free(st.keys);
        reply_store_error(out, rc);
        return;
    }
    resp_array(out, 2);
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)next);
    resp_bulk_str(out, buf);
    resp_array(out, strings ? st.n : 0);
    if (strings)
        evbuffer_add_buffer(out, st.keys);
    evbuffer_free(st.keys);
}

/* ---- INFO and stats ---- */

static void info_section(struct evbuffer *b, const char *title, bool *first)
{
    evbuffer_add_printf(b, "%s# %s\r\n", *first ? "" : "\r\n", title);
    *first = false;
}

/* True if INFO's arguments (none: "default") ask for the section. */
/* As Redis: commandstats and latencystats only when asked for, or with
 * "all" or "everything". */
static bool section_asked(size_t argc, const struct resp_arg *argv,
                          const char *name)
{
    for (size_t i = 1; i < argc; i++)
        if (arg_is(&argv[i], "all") || arg_is(&argv[i], "everything") ||
            arg_is(&argv[i], name))
            return true;
    return false;
}

static bool section_wanted(size_t argc, const struct resp_arg *argv,
                           const char *name)
{
    if (argc < 2)
        return true; /* every section is in the default set */
    for (size_t i = 1; i < argc; i++)
        if (arg_is(&argv[i], "default") || arg_is(&argv[i], "all") ||
            arg_is(&argv[i], "everything") || arg_is(&argv[i], name))
            return true;
    return false;
}

static void cmd_info(struct conn *c, size_t argc, struct resp_arg *argv,
                     struct evbuffer *out)
{
    struct daemon *d = c->d;
    struct shmkv_stats st;
    int rc = shmkv_stats(d->kv, &st);
    if (rc != 0) {
        reply_store_error(out, rc);
        return;
    }
    struct evbuffer *b = evbuffer_new();
    bool first = true;
    time_t now = time(NULL);
    char h1[32], h2[32];
    if (section_wanted(argc, argv, "server")) {
        info_section(b, "Server", &first);
        evbuffer_add_printf(
            b,
            "redis_version:" REDIS_COMPAT_VERSION "\r\n"
            "redis_compatibility:the string and keyspace commands of "
            "Redis " REDIS_COMPAT_VERSION
            " that COMMAND lists, with MULTI/EXEC and "
            "WATCH; RESP2; no other data types, pub/sub, scripting, ACLs, "
            "replication or cluster\r\n"
            "shmkv_version:%s\r\nredis_mode:"
            "standalone\r\nos:Linux\r\nprocess_id:%d\r\ntcp_port:0\r\n"
            "unix_socket:%s\r\nuptime_in_seconds:%lld\r\n"
            "uptime_in_days:%lld\r\n"
            "store_key:%s\r\nstore_generation:%" PRIu64 "\r\n"
            "store_adopted:%d\r\n",
            SHMKV_VERSION_STRING, (int)getpid(), d->cfg.socket_path,
            (long long)(now - d->started),
            (long long)(now - d->started) / 86400, d->cfg.store_key,
            st.generation, d->adopted);
        /* Where files live is for admins. */
        if (c->admin)
            evbuffer_add_printf(b, "executable:%s\r\nconfig_file:%s\r\n",
                                d->executable, d->cfg.path);
    }
    if (section_wanted(argc, argv, "clients")) {
        info_section(b, "Clients", &first);
        evbuffer_add_printf(b,
                            "connected_clients:%u\r\nmaxclients:%u\r\n"
                            "blocked_clients:0\r\n"
                            "attached_handles:%u\r\nattached_writers:%u\r\n"
                            "max_handles:%u\r\n",
                            d->n_conns, d->cfg.max_connections, st.clients,
                            st.writers, st.max_clients);
    }
    if (section_wanted(argc, argv, "memory")) {
        info_section(b, "Memory", &first);
        human_bytes(st.bytes_used, h1, sizeof h1);
        human_bytes(st.bytes_capacity, h2, sizeof h2);
        evbuffer_add_printf(
            b,
            "used_memory:%" PRIu64 "\r\nused_memory_human:%s\r\n"
            "maxmemory:%" PRIu64 "\r\nmaxmemory_human:%s\r\n"
            "maxmemory_policy:%s\r\nfree_memory:%" PRIu64 "\r\n"
            "limbo_memory:%" PRIu64 "\r\n"
            "largest_free_block:%" PRIu64 "\r\nfragmentation:%.4f\r\n"
            "compactions:%" PRIu64 "\r\ncompacted_bytes:%" PRIu64 "\r\n"
            "segment_bytes:%" PRIu64 "\r\nindex_slots:%" PRIu64 "\r\n"
            "max_key_size:%u\r\nmax_value_size:%u\r\n"
            "data_segment_bytes:%" PRIu64 "\r\nmax_size:%" PRIu64 "\r\n"
            "huge_pages:%s\r\npage_bytes:%" PRIu64 "\r\n"
            "resizes:%" PRIu64 "\r\nresize_in_progress:%d\r\n"
            "resize_to_bytes:%" PRIu64 "\r\nresize_done_buckets:%" PRIu64
            "\r\nresize_total_buckets:%" PRIu64 "\r\n",
            st.bytes_used, h1, st.bytes_capacity, h2,
            st.eviction == SHMKV_EVICT_LRU ? "allkeys-lru" : "noeviction",
            st.bytes_free, st.bytes_limbo, st.largest_free, st.fragmentation,
            st.compactions, st.compacted_bytes, st.segment_bytes,
            st.index_slots, st.max_key_bytes, st.max_value_bytes, st.data_bytes,
            d->cfg.max_size,
            st.huge_pages == SHMKV_HUGE_YES   ? "yes"
            : st.huge_pages == SHMKV_HUGE_TRY ? "try"
                                              : "no",
            st.data_page_bytes, st.resizes, st.resize_to_bytes != 0,
            st.resize_to_bytes, st.resize_done, st.resize_total);
    }
    if (section_wanted(argc, argv, "persistence")) {
        info_section(b, "Persistence", &first);
        if (c->admin)
            evbuffer_add_printf(b, "snapshot_path:%s\r\n",
                                d->cfg.snapshot_path);
        evbuffer_add_printf(b,
                            "rdb_last_save_time:%lld\r\n"
                            "rdb_last_bgsave_status:%s\r\n"
                            "rdb_last_save_keys:%" PRIu64 "\r\n"
                            "rdb_bgsave_in_progress:%d\r\n",
                            (long long)d->last_save,
                            d->last_save == 0 || d->last_save_ok ? "ok" : "err",
                            d->last_save_entries, jobs_save_pending(d) ? 1 : 0);
    }
    if (section_wanted(argc, argv, "stats")) {
        info_section(b, "Stats", &first);
        evbuffer_add_printf(
            b,
            "total_connections_received:%" PRIu64 "\r\n"
            "total_commands_processed:%" PRIu64 "\r\n"
            "rejected_connections:%" PRIu64 "\r\n"
            "keyspace_hits:%" PRIu64 "\r\nkeyspace_misses:%" PRIu64 "\r\n"
            "expired_keys:%" PRIu64 "\r\nevicted_keys:%" PRIu64 "\r\n"
            "total_sets:%" PRIu64 "\r\ntotal_deletes:%" PRIu64 "\r\n"
            "lock_waits:%" PRIu64 "\r\nlock_timeouts:%" PRIu64 "\r\n"
            "lock_recoveries:%" PRIu64 "\r\nsections_revoked:%" PRIu64
            "\r\ndead_readers:%" PRIu64 "\r\nstale_sections:%" PRIu64
            "\r\ncommands_parked:%" PRIu64 "\r\n"
            "requests_timed_out:%" PRIu64 "\r\n",
            d->connections_total, d->commands_total, d->connections_rejected,
            st.hits, st.misses, st.expirations, st.evictions, st.sets,
            st.deletes, st.lock_waits, st.lock_timeouts, st.recoveries,
            st.revocations, st.dead_readers, st.stale_sections,
            d->commands_parked, d->requests_timed_out);
    }
    if (section_wanted(argc, argv, "keyspace")) {
        info_section(b, "Keyspace", &first);
        if (st.entries > 0)
            evbuffer_add_printf(
                b, "db0:keys=%" PRIu64 ",expires=%" PRIu64 ",avg_ttl=0\r\n",
                st.entries, st.entries_with_ttl);
    }
    if (mirror_enabled(d) && section_wanted(argc, argv, "upstream")) {
        info_section(b, "Upstream", &first);
        mirror_info(d, b);
    }
    if (section_asked(argc, argv, "commandstats")) {
        info_section(b, "Commandstats", &first);
        commands_info_stats(b, true, false);
    }
    if (section_asked(argc, argv, "latencystats")) {
        info_section(b, "Latencystats", &first);
        commands_info_stats(b, false, true);
    }
    size_t len = evbuffer_get_length(b);
    resp_bulk(out, evbuffer_pullup(b, -1), len);
    evbuffer_free(b);
}

/* Adds a name/value pair to out and counts it in *n. */
static void stat_pair(struct evbuffer *out, size_t *n, const char *name,
                      int64_t v)
{
    resp_bulk_str(out, name);
    resp_int(out, v);
    (*n)++;
}

static void cmd_shmkv_stats(struct conn *c, size_t argc, struct resp_arg *argv,
                            struct evbuffer *out)
{
    (void)argc;
    (void)argv;
    struct daemon *d = c->d;
    struct shmkv_stats st;
    int rc = shmkv_stats(d->kv, &st);
    if (rc != 0) {
        reply_store_error(out, rc);
        return;
    }
    /* A flat list of name, value pairs, as CONFIG GET replies. */
    /* The pairs go to a buffer first, so that the header counts them. */
    struct evbuffer *pairs = evbuffer_new();
    if (pairs == NULL) {
        resp_error(out, "ERR out of memory");
        return;
    }
    size_t npairs = 0;
    stat_pair(pairs, &npairs, "entries", (int64_t)st.entries);
    stat_pair(pairs, &npairs, "entries_with_ttl", (int64_t)st.entries_with_ttl);
    stat_pair(pairs, &npairs, "bytes_used", (int64_t)st.bytes_used);
    stat_pair(pairs, &npairs, "bytes_free", (int64_t)st.bytes_free);
    stat_pair(pairs, &npairs, "bytes_limbo", (int64_t)st.bytes_limbo);
    stat_pair(pairs, &npairs, "bytes_capacity", (int64_t)st.bytes_capacity);
    stat_pair(pairs, &npairs, "largest_free", (int64_t)st.largest_free);
    stat_pair(pairs, &npairs, "fragmentation_ppm",
              (int64_t)(st.fragmentation * 1e6 + 0.5));
    stat_pair(pairs, &npairs, "compactions", (int64_t)st.compactions);
    stat_pair(pairs, &npairs, "compacted_bytes", (int64_t)st.compacted_bytes);
    stat_pair(pairs, &npairs, "index_slots", (int64_t)st.index_slots);
    stat_pair(pairs, &npairs, "segment_bytes", (int64_t)st.segment_bytes);
    stat_pair(pairs, &npairs, "hits", (int64_t)st.hits);
    stat_pair(pairs, &npairs, "misses", (int64_t)st.misses);
    stat_pair(pairs, &npairs, "sets", (int64_t)st.sets);
    stat_pair(pairs, &npairs, "deletes", (int64_t)st.deletes);
    stat_pair(pairs, &npairs, "evictions", (int64_t)st.evictions);
    stat_pair(pairs, &npairs, "expirations", (int64_t)st.expirations);
    stat_pair(pairs, &npairs, "lock_waits", (int64_t)st.lock_waits);
    stat_pair(pairs, &npairs, "lock_timeouts", (int64_t)st.lock_timeouts);
    stat_pair(pairs, &npairs, "recoveries", (int64_t)st.recoveries);
    stat_pair(pairs, &npairs, "revocations", (int64_t)st.revocations);
    stat_pair(pairs, &npairs, "dead_readers", (int64_t)st.dead_readers);
    stat_pair(pairs, &npairs, "stale_sections", (int64_t)st.stale_sections);
    stat_pair(pairs, &npairs, "commands_parked", (int64_t)d->commands_parked);
    stat_pair(pairs, &npairs, "lock_timeout_ms", st.lock_timeout_ms);
    stat_pair(pairs, &npairs, "reader_timeout_ms", st.reader_timeout_ms);
    stat_pair(pairs, &npairs, "handles", st.clients);
    stat_pair(pairs, &npairs, "writing_handles", st.writers);
    stat_pair(pairs, &npairs, "max_handles", st.max_clients);
    stat_pair(pairs, &npairs, "generation", (int64_t)st.generation);
    stat_pair(pairs, &npairs, "uptime_s", (int64_t)(time(NULL) - d->started));
    stat_pair(pairs, &npairs, "connections", d->n_conns);
    stat_pair(pairs, &npairs, "connections_total",
              (int64_t)d->connections_total);
    stat_pair(pairs, &npairs, "commands_total", (int64_t)d->commands_total);
    stat_pair(pairs, &npairs, "max_key_bytes", st.max_key_bytes);
    stat_pair(pairs, &npairs, "max_value_bytes", st.max_value_bytes);
    stat_pair(pairs, &npairs, "data_bytes", (int64_t)st.data_bytes);
    stat_pair(pairs, &npairs, "data_page_bytes", (int64_t)st.data_page_bytes);
    stat_pair(pairs, &npairs, "huge_pages", (int64_t)st.huge_pages);
    stat_pair(pairs, &npairs, "resizes", (int64_t)st.resizes);
    stat_pair(pairs, &npairs, "resize_to_bytes", (int64_t)st.resize_to_bytes);
    stat_pair(pairs, &npairs, "resize_done", (int64_t)st.resize_done);
    stat_pair(pairs, &npairs, "resize_total", (int64_t)st.resize_total);
    stat_pair(pairs, &npairs, "max_size", (int64_t)d->cfg.max_size);
    resp_array(out, 2 * npairs);
    evbuffer_add_buffer(out, pairs);
    evbuffer_free(pairs);
}

static void cmd_shmkv_check(struct conn *c, size_t argc, struct resp_arg *argv,
                            struct evbuffer *out)
{
    (void)argc;
    (void)argv;
    /* Walks the whole store: on the worker thread (jobs.c). */
    if (!job_queue(c->d, c, JOB_CHECK, NULL, 0))
        resp_error(out, "ERR out of memory");
}

/* ---- persistence and lifecycle ---- */

static bool snapshot_configured(struct conn *c, struct evbuffer *out)
{
    if (c->d->cfg.snapshot_path[0] != '\0')
        return true;
    resp_error(out, "ERR no snapshot path configured ([persistence] "
                    "snapshot)");
    return false;
}

/* The snapshot is written on the worker thread (jobs.c); the reply comes
 * once it is on disk. */
static void cmd_save(struct conn *c, size_t argc, struct resp_arg *argv,
                     struct evbuffer *out)
{
    (void)argc;
    (void)argv;
    if (snapshot_configured(c, out) && !job_queue(c->d, c, JOB_SAVE, NULL, 0))
        resp_error(out, "ERR out of memory");
}

static void cmd_bgsave(struct conn *c, size_t argc, struct resp_arg *argv,
                       struct evbuffer *out)
{
    (void)argc;
    (void)argv;
    if (!snapshot_configured(c, out))
        return;
    if (jobs_save_pending(c->d))
        resp_error(out, "ERR Background save already in progress");
    else if (!job_queue(c->d, NULL, JOB_BGSAVE, NULL, 0))
        resp_error(out, "ERR out of memory");
    else
        resp_simple(out, "Background saving started");
}

static void cmd_lastsave(struct conn *c, size_t argc, struct resp_arg *argv,
                         struct evbuffer *out)
{
    (void)argc;
    (void)argv;
    resp_int(out, (int64_t)c->d->last_save);
}

static void cmd_shutdown(struct conn *c, size_t argc, struct resp_arg *argv,
                         struct evbuffer *out)
{
    enum stop_save save = STOP_SAVE_CONFIG;
    for (size_t i = 1; i < argc; i++) {
        if (arg_is(&argv[i], "SAVE"))
            save = STOP_SAVE;
        else if (arg_is(&argv[i], "NOSAVE"))
            save = STOP_NOSAVE;
        else if (!arg_is(&argv[i], "NOW") && !arg_is(&argv[i], "FORCE")) {
            reply_syntax(out);
            return;
        }
    }
    if (save == STOP_SAVE && !snapshot_configured(c, out))
        return;
    log_info("SHUTDOWN by pid %d uid %d", (int)c->pid, (int)c->uid);
    /* As Redis: no reply on success; the connection closes. */
    c->closing = true;
    daemon_request_stop(c->d, save);
}

/* ---- CONFIG, CLIENT, COMMAND ---- */

static void config_pair(struct evbuffer *body, size_t *n, const char *pattern,
                        const char *name, const char *value)
{
    if (fnmatch(pattern, name, FNM_CASEFOLD) != 0)
        return;
    resp_bulk_str(body, name);
    resp_bulk_str(body, value);
    (*n)++;
}

/* Resizes the store to the size in arg, online, on the worker thread: the
 * reply comes when it is done. Admin peers only. */
static void resize_request(struct conn *c, const struct resp_arg *arg,
                           const char *why, struct evbuffer *out)
{
    if (!c->admin) {
        resp_error(out, "NOPERM resizing the store is for admin users "
                        "(admin_users, admin_groups)");
        return;
    }
    char text[32];
    uint64_t bytes;
    if (arg->len == 0 || arg->len >= sizeof text) {
        resp_error(out, "ERR the size is not a size (a number of bytes, "
                        "with an optional K, M, G or T)");
        return;
    }
    memcpy(text, arg->data, arg->len);
    text[arg->len] = '\0';
    if (config_parse_size(text, &bytes) != 0 || bytes < (1u << 20) ||
        bytes > (64ull << 30)) {
        resp_errorf(out,
                    "ERR '%s' is not a store size: a number of bytes, with "
                    "an optional K, M, G or T, from 1M to 64G",
                    text);
        return;
    }
    if (jobs_resize_pending(c->d)) {
        resp_error(out, "BUSY a resize is under way (see INFO memory)");
        return;
    }
    if (!job_queue_resize(c->d, c, bytes, why))
        resp_error(out, "ERR out of memory");
}

static void cmd_shmkv_resize(struct conn *c, size_t argc, struct resp_arg *argv,
                             struct evbuffer *out)
{
    (void)argc;
    resize_request(c, &argv[1], "SHMKV.RESIZE", out);
}

static void cmd_config(struct conn *c, size_t argc, struct resp_arg *argv,
                       struct evbuffer *out)
{
    if (arg_is(&argv[1], "SET")) {
        if (argc == 4 && arg_is(&argv[2], "maxmemory")) {
            resize_request(c, &argv[3], "CONFIG SET maxmemory", out);
            return;
        }
        resp_error(out, "ERR CONFIG SET takes maxmemory only (it resizes the "
                        "store online); for the rest, edit the config file "
                        "and reload (SIGHUP, systemctl reload shmkvd)");
        return;
    }
    if (arg_is(&argv[1], "RESETSTAT")) {
        resp_error(out, "ERR CONFIG RESETSTAT is not supported: the store's "
                        "counters are shared by every attached process and "
                        "count from the store's creation");
        return;
    }
    if (arg_is(&argv[1], "REWRITE")) {
        resp_error(out, "ERR CONFIG REWRITE is not supported: shmkvd never "
                        "writes its config file; edit it and reload");
        return;
    }
    if (!arg_is(&argv[1], "GET") || argc < 3) {
        resp_error(out, "ERR unknown CONFIG subcommand or wrong number of "
                        "arguments");
        return;
    }
    const struct config *cfg = &c->d->cfg;
    struct evbuffer *body = evbuffer_new();
    size_t n = 0;
    char v[64];
    for (size_t a = 2; a < argc; a++) {
        char pattern[256];
        snprintf(pattern, sizeof pattern, "%.*s",
                 (int)(argv[a].len < 255 ? argv[a].len : 255), argv[a].data);
        struct shmkv_stats st;
        uint64_t size = cfg->store_size;
        if (shmkv_stats(c->d->kv, &st) == 0)
            size = st.data_bytes;
        snprintf(v, sizeof v, "%" PRIu64, size);
        config_pair(body, &n, pattern, "maxmemory", v);
        config_pair(body, &n, pattern, "maxmemory-policy",
                    cfg->eviction == SHMKV_EVICT_LRU ? "allkeys-lru"
                                                     : "noeviction");
        snprintf(v, sizeof v, "%u", cfg->max_connections);
        config_pair(body, &n, pattern, "maxclients", v);
        snprintf(v, sizeof v, "%u", cfg->idle_timeout_s);
        config_pair(body, &n, pattern, "timeout", v);
        config_pair(body, &n, pattern, "databases", "1");
        config_pair(body, &n, pattern, "save", "");
        config_pair(body, &n, pattern, "appendonly", "no");
        config_pair(body, &n, pattern, "unixsocket", cfg->socket_path);
        snprintf(v, sizeof v, "%o", cfg->socket_mode);
        config_pair(body, &n, pattern, "unixsocketperm", v);
        config_pair(body, &n, pattern, "loglevel",
                    log_level_name(cfg->log_level));
        snprintf(v, sizeof v, "%" PRIu64, cfg->max_request_bytes);
        config_pair(body, &n, pattern, "proto-max-bulk-len", v);
        if (c->admin)
            config_pair(body, &n, pattern, "dbfilename", cfg->snapshot_path);
        config_pair(body, &n, pattern, "store-key", cfg->store_key);
        snprintf(v, sizeof v, "%u", cfg->max_key_bytes);
        config_pair(body, &n, pattern, "max-key-size", v);
        snprintf(v, sizeof v, "%u", cfg->max_value_bytes);
        config_pair(body, &n, pattern, "max-value-size", v);
        snprintf(v, sizeof v, "%u", cfg->default_ttl_s);
        config_pair(body, &n, pattern, "default-ttl", v);
        snprintf(v, sizeof v, "%u", cfg->lock_timeout_ms);
        config_pair(body, &n, pattern, "lock-timeout-ms", v);
        snprintf(v, sizeof v, "%u", cfg->reader_timeout_ms);
        config_pair(body, &n, pattern, "reader-timeout-ms", v);
    }
    resp_array(out, 2 * n);
    evbuffer_add_buffer(out, body);
    evbuffer_free(body);
}

static void client_line(struct evbuffer *b, const struct conn *x, time_t now)
{
    /* qbuf: request bytes received, not yet run; omem: reply bytes queued,
     * not yet taken by the peer (as Redis's fields). */
    evbuffer_add_printf(
        b,
        "id=%llu addr=%s fd=%d name=%s age=%lld idle=%lld pid=%d uid=%d "
        "gid=%d admin=%d cmds=%llu qbuf=%zu omem=%zu cmd=%s\n",
        (unsigned long long)x->id, x->d->cfg.socket_path, x->fd, x->name,
        (long long)(now - x->created), (long long)(now - x->last_active),
        (int)x->pid, (int)x->uid, (int)x->gid, x->admin,
        (unsigned long long)x->commands,
        evbuffer_get_length(bufferevent_get_input(x->bev)),
        evbuffer_get_length(bufferevent_get_output(x->bev)), x->last_command);
}

static void cmd_client(struct conn *c, size_t argc, struct resp_arg *argv,
                       struct evbuffer *out)
{
    time_t now = time(NULL);
    if (arg_is(&argv[1], "LIST") || arg_is(&argv[1], "INFO")) {
        struct evbuffer *b = evbuffer_new();
        /* Other connections' pids and uids are for admins. */
        if (arg_is(&argv[1], "INFO") || !c->admin)
            client_line(b, c, now);
        else
            for (const struct conn *x = c->d->conns; x != NULL; x = x->next)
                client_line(b, x, now);
        size_t len = evbuffer_get_length(b);
        resp_bulk(out, evbuffer_pullup(b, -1), len);
        evbuffer_free(b);
    } else if (arg_is(&argv[1], "ID")) {
        resp_int(out, (int64_t)c->id);
    } else if (arg_is(&argv[1], "GETNAME")) {
        if (c->name[0])
            resp_bulk_str(out, c->name);
        else
            resp_null(out);
    } else if (arg_is(&argv[1], "SETNAME") && argc == 3) {
        for (size_t i = 0; i < argv[2].len; i++)
            if (argv[2].data[i] <= ' ' || argv[2].data[i] > '~') {
                resp_error(out, "ERR Client names cannot contain spaces, "
                                "newlines or special characters.");
                return;
            }
        snprintf(c->name, sizeof c->name, "%.*s",
                 (int)(argv[2].len < 63 ? argv[2].len : 63), argv[2].data);
        resp_simple(out, "OK");
    } else if (arg_is(&argv[1], "SETINFO")) {
        resp_simple(out, "OK");
    } else {
        resp_error(out, "ERR unknown CLIENT subcommand or wrong number of "
                        "arguments");
    }
    (void)argc;
}

/* ---- cache primitives: versions, compare-and-set, leases, stale ---- */

/* SHMKV.GETV key: [value or nil, version]. */
static void cmd_getv(struct conn *c, size_t argc, struct resp_arg *argv,
                     struct evbuffer *out)
{
    (void)argc;
    struct shmkv *kv = c->d->kv;
    int rc = shmkv_read_begin(kv);
    if (rc != 0) {
        reply_store_error(out, rc);
        return;
    }
    shmkv_val_t v;
    uint64_t version = 0;
    rc = shmkv_get_versioned(kv, argv[1].data, argv[1].len, &v, &version);
    if (rc == 0 || rc == SHMKV_ENOTFOUND) {
        resp_array(out, 2);
        if (rc == 0)
            resp_bulk(out, v.data, v.len);
        else
            resp_null(out);
        char buf[24];
        snprintf(buf, sizeof buf, "%" PRIu64, version);
        resp_bulk_str(out, buf);
    }
    shmkv_read_end(kv);
    if (rc != 0 && rc != SHMKV_ENOTFOUND)
        reply_store_error(out, rc);
}

/* An optional trailing EX s | PX ms: the TTL in ms (0: none), false on a
 * bad one (replied). */
static bool ttl_option(struct conn *c, size_t argc, struct resp_arg *argv,
                       size_t at, uint64_t *ttl_ms, struct evbuffer *out)
{
    *ttl_ms = 0;
    if (argc == at)
        return true;
    int64_t n, when;
    if (argc != at + 2 ||
        !(arg_is(&argv[at], "EX") || arg_is(&argv[at], "PX"))) {
        reply_syntax(out);
        return false;
    }
    if (!arg_int64(&argv[at + 1], &n) ||
        !expiry_from_arg(n, arg_is(&argv[at], "PX"), false, &when)) {
        resp_errorf(out, "ERR invalid expire time in '%s' command",
                    c->last_command);
        return false;
    }
    *ttl_ms = (uint64_t)(when - daemon_unix_ms());
    return true;
}

/* SHMKV.CAS key version value [EX s|PX ms]: 1 if set, 0 if the key changed
 * since the version was read (SHMKV.GETV). */
static void cmd_cas(struct conn *c, size_t argc, struct resp_arg *argv,
                    struct evbuffer *out)
{
    char num[32];
    uint64_t ttl_ms;
    if (argv[2].len == 0 || argv[2].len >= sizeof num) {
        resp_error(out, "ERR version is not a number");
        return;
    }
    memcpy(num, argv[2].data, argv[2].len);
    num[argv[2].len] = '\0';
    char *end;
    errno = 0;
    unsigned long long version = strtoull(num, &end, 10);
    if (*end != '\0' || errno != 0 || !isdigit((unsigned char)num[0])) {
        resp_error(out, "ERR version is not a number");
        return;
    }
    if (!ttl_option(c, argc, argv, 4, &ttl_ms, out))
        return;
    int rc = shmkv_cas(c->d->kv, argv[1].data, argv[1].len, argv[3].data,
                       argv[3].len, ttl_ms, 0, (uint64_t)version);
    if (parked_on(c, rc, true))
        return;
    if (rc == 0 || rc == SHMKV_ECHANGED)
        resp_int(out, rc == 0);
    else
        reply_store_error(out, rc);
}

/* SHMKV.SETF key value [EX s|PX ms]: SET that replies how many live
 * entries it evicted to make room (lua_shared_dict's "forcible"). */
static void cmd_setf(struct conn *c, size_t argc, struct resp_arg *argv,
                     struct evbuffer *out)
{
    uint64_t ttl_ms;
    if (!ttl_option(c, argc, argv, 3, &ttl_ms, out))
        return;
    if (ttl_ms == 0 && c->d->cfg.default_ttl_s != 0)
        ttl_ms = (uint64_t)c->d->cfg.default_ttl_s * 1000u;
    int rc = shmkv_pset(c->d->kv, argv[1].data, argv[1].len, argv[2].data,
                        argv[2].len, ttl_ms, 0);
    if (parked_on(c, rc, true))
        return;
    if (rc != 0)
        reply_store_error(out, rc);
    else
        resp_int(out, shmkv_evicted(c->d->kv));
}

struct conn_lease {
    char *key;
    size_t klen;
    int64_t until_ms;
};

/* The index of key among c's leases, or -1. */
static long conn_lease_find(const struct conn *c, const struct resp_arg *key)
{
    for (size_t i = 0; i < c->n_leases; i++)
        if (c->leases[i].klen == key->len &&
            memcmp(c->leases[i].key, key->data, key->len) == 0)
            return (long)i;
    return -1;
}

static void conn_lease_drop(struct conn *c, size_t i)
{
    struct conn_lease *l = &c->leases[i];
    /* One that ran out may be another connection's now. */
    if (daemon_unix_ms() < l->until_ms)
        shmkv_lease_release(c->d->kv, l->key, l->klen);
    free(l->key);
    c->leases[i] = c->leases[--c->n_leases];
}

void conn_leases_release(struct conn *c)
{
    while (c->n_leases > 0)
        conn_lease_drop(c, c->n_leases - 1);
    free(c->leases);
    c->leases = NULL;
}

/* SHMKV.LEASE key ms: 1 if this connection now fills key (held until
 * SHMKV.RELEASE, ms, or the connection's end), 0 if another holds it. */
static void cmd_lease(struct conn *c, size_t argc, struct resp_arg *argv,
                      struct evbuffer *out)
{
    (void)argc;
    int64_t ms;
    if (!arg_int64(&argv[2], &ms) || ms <= 0 || ms > 3600000) {
        resp_error(out, "ERR lease time must be 1 to 3600000 ms");
        return;
    }
    long i = conn_lease_find(c, &argv[1]);
    if (i >= 0 && daemon_unix_ms() >= c->leases[i].until_ms)
        conn_lease_drop(c, (size_t)i); /* ran out: forget it */
    struct conn_lease *l = realloc(c->leases, (c->n_leases + 1) * sizeof *l);
    char *key = malloc(argv[1].len ? argv[1].len : 1);
    if (l == NULL || key == NULL) {
        if (l != NULL)
            c->leases = l;
        free(key);
        resp_error(out, "ERR out of memory");
        return;
    }
    c->leases = l;
    int rc = shmkv_lease_take(c->d->kv, argv[1].data, argv[1].len, (uint32_t)ms,
                              NULL);
    if (rc == 0) {
        memcpy(key, argv[1].data, argv[1].len);
        c->leases[c->n_leases++] = (struct conn_lease){
            .key = key, .klen = argv[1].len, .until_ms = daemon_unix_ms() + ms};
        resp_int(out, 1);
        return;
    }
    free(key);
    if (parked_on(c, rc, true))
        return;
    if (rc == SHMKV_EBUSY)
        resp_int(out, 0);
    else
        reply_store_error(out, rc);
}

/* SHMKV.RELEASE key: 1 if this connection held key's lease. */
static void cmd_release(struct conn *c, size_t argc, struct resp_arg *argv,
                        struct evbuffer *out)
{
    (void)argc;
    long i = conn_lease_find(c, &argv[1]);
    bool held = i >= 0 && daemon_unix_ms() < c->leases[i].until_ms;
    if (i >= 0)
        conn_lease_drop(c, (size_t)i);
    resp_int(out, held);
}

/* SHMKV.READERS: makes a reader chunk for the peer's user, as the kernel
 * names it (SO_PEERCRED), for libshmkv's read-only handles (clients.c);
 * its index in the chunk table. Refusals are logged once a minute at most:
 * any peer may ask. */
/* A uid that asks again within this long gets the chunk it was last
 * given, without a new walk of the chunk table (a system call an entry):
 * many processes of one user starting at once share it, and one asking
 * in a loop costs little. */
#define READERS_REPEAT_MS 100u
#define READERS_RECENT 64u

static void cmd_readers(struct conn *c, size_t argc, struct resp_arg *argv,
                        struct evbuffer *out)
{
    (void)argc;
    (void)argv;
    static struct {
        uid_t uid;
        unsigned index;
        uint64_t at_ms;
    } recent[READERS_RECENT];
    uint64_t now_ms = daemon_now_ms();
    unsigned h = (unsigned)c->uid % READERS_RECENT;
    if (recent[h].at_ms != 0 && recent[h].uid == c->uid &&
        now_ms - recent[h].at_ms < READERS_REPEAT_MS) {
        if (c->reg_only)
            c->closing = true;
        if (recent[h].index == UINT_MAX)
            resp_error(out, "ERR no reader chunk for this uid (asked again "
                            "too soon after a refusal)");
        else
            resp_int(out, recent[h].index);
        return;
    }
    unsigned index;
    int rc = shmkv_add_readers_chunk(c->d->kv, (unsigned)c->uid, &index);
    if (parked_on(c, rc, true))
        return;
    recent[h].uid = c->uid;
    recent[h].index = rc == 0 ? index : UINT_MAX;
    recent[h].at_ms = now_ms;
    /* Answered: a connection taken only for this is done. */
    if (c->reg_only)
        c->closing = true;
    if (rc != 0) {
        static time_t logged;
        time_t now = time(NULL);
        if (now - logged >= 60) {
            logged = now;
            log_warning("no reader chunk for uid %d (pid %d): %s", (int)c->uid,
                        (int)c->pid, shmkv_last_error());
        }
        reply_store_error(out, rc);
        return;
    }
    log_info("reader chunk %u made for uid %d (pid %d)", index, (int)c->uid,
             (int)c->pid);
    resp_int(out, index);
}

/* SHMKV.GETSTALE key: [value, ms since it expired (0: live)], or nil. */
static void cmd_getstale(struct conn *c, size_t argc, struct resp_arg *argv,
                         struct evbuffer *out)
{
    (void)argc;
    struct shmkv *kv = c->d->kv;
    int rc = shmkv_read_begin(kv);
    if (rc != 0) {
        reply_store_error(out, rc);
        return;
    }
    shmkv_val_t v;
    int64_t stale = 0;
    rc = shmkv_get_stale(kv, argv[1].data, argv[1].len, &v, &stale);
    if (rc == 0) {
        resp_array(out, 2);
        resp_bulk(out, v.data, v.len);
        resp_int(out, stale);
    } else if (rc == SHMKV_ENOTFOUND || rc == SHMKV_E2BIG) {
        resp_null(out);
    }
    shmkv_read_end(kv);
    if (rc != 0 && rc != SHMKV_ENOTFOUND && rc != SHMKV_E2BIG)
        reply_store_error(out, rc);
}

/* ---- transactions ----
 *
 * MULTI queues commands, each checked first as Redis does (a known name,
 * its arity, the peer's permission; commands that run on the worker
 * thread or stop the daemon are refused): an error there marks the
 * transaction, and EXEC then discards it (EXECABORT). The queue holds
 * copies, since the input they were parsed from moves on.
 *
 * EXEC takes the store's write lock once (shmkv_write_begin) and runs the
 * queue under it: no other writer, a library process or another
 * connection, comes between its commands, and socket clients see all of
 * them or none (the event loop runs nothing else meanwhile). A library
 * reader sees each write as it is made, in order, as with any writes. If
 * the lock is not had within the daemon's short wait, EXEC is parked like
 * any write, nothing run yet.
 *
 * WATCH records each key's version (shmkv_version) and whether it
 * existed; EXEC compares them under the lock and, if any differs, runs
 * nothing and replies with a null array. Versions are kept per cell of
 * keys, so a write to another key of the same cell fails the EXEC too:
 * clients retry on a null reply, as they must anyway. */

struct queued {
    size_t argc;
    struct resp_arg *argv; /* pointing into data */
    char *data;
};

struct multi {
    struct queued *q;
    size_t n, cap;
    size_t bytes;
    bool failed;
};

struct watch {
    char *key;
    size_t klen;
    uint64_t version;
    bool existed;
};

/* The most a transaction may queue, in argument bytes. */
#define MULTI_MAX_BYTES (64u << 20)

void txn_reset(struct conn *c)
{
    if (c->multi != NULL) {
        for (size_t i = 0; i < c->multi->n; i++) {
            free(c->multi->q[i].argv);
            free(c->multi->q[i].data);
        }
        free(c->multi->q);
        free(c->multi);
        c->multi = NULL;
    }
    for (size_t i = 0; i < c->n_watches; i++)
        free(c->watches[i].key);
    free(c->watches);
    c->watches = NULL;
    c->n_watches = 0;
}

static bool multi_push(struct multi *m, size_t argc,
                       const struct resp_arg *argv)
{
    size_t bytes = 0;
    for (size_t i = 0; i < argc; i++)
        bytes += argv[i].len + 1;
    if (m->bytes + bytes > MULTI_MAX_BYTES)
        return false;
    if (m->n == m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 16;
        struct queued *q = realloc(m->q, cap * sizeof *q);
        if (q == NULL)
            return false;
        m->q = q;
        m->cap = cap;
    }
    struct queued *q = &m->q[m->n];
    q->argc = argc;
    q->argv = malloc(argc * sizeof *q->argv);
    q->data = malloc(bytes ? bytes : 1);
    if (q->argv == NULL || q->data == NULL) {
        free(q->argv);
        free(q->data);
        return false;
    }
    char *p = q->data;
    for (size_t i = 0; i < argc; i++) {
        memcpy(p, argv[i].data, argv[i].len);
        p[argv[i].len] = '\0';
        q->argv[i].data = p;
        q->argv[i].len = argv[i].len;
        p += argv[i].len + 1;
    }
    m->bytes += bytes;
    m->n++;
    return true;
}

static void cmd_multi(struct conn *c, size_t argc, struct resp_arg *argv,
                      struct evbuffer *out)
{
    (void)argc;
    (void)argv;
    if (c->multi != NULL) {
        resp_error(out, "ERR MULTI calls can not be nested");
        return;
    }
    c->multi = calloc(1, sizeof *c->multi);
    if (c->multi == NULL)
        resp_error(out, "ERR out of memory");
    else
        resp_simple(out, "OK");
}

static void cmd_discard(struct conn *c, size_t argc, struct resp_arg *argv,
                        struct evbuffer *out)
{
    (void)argc;
    (void)argv;
    if (c->multi == NULL) {
        resp_error(out, "ERR DISCARD without MULTI");
        return;
    }
    txn_reset(c);
    resp_simple(out, "OK");
}

static void cmd_watch(struct conn *c, size_t argc, struct resp_arg *argv,
                      struct evbuffer *out)
{
    if (c->multi != NULL) {
        resp_error(out, "ERR WATCH inside MULTI is not allowed");
        return;
    }
    struct watch *w =
        realloc(c->watches, (c->n_watches + argc - 1) * sizeof *w);
    if (w == NULL) {
        resp_error(out, "ERR out of memory");
        return;
    }
    c->watches = w;
    for (size_t i = 1; i < argc; i++) {
        uint64_t version;
        int rc = shmkv_version(c->d->kv, argv[i].data, argv[i].len, &version);
        if (rc != 0 && rc != SHMKV_ENOTFOUND) {
            reply_store_error(out, rc);
            return;
        }
        char *key = malloc(argv[i].len ? argv[i].len : 1);
        if (key == NULL) {
            resp_error(out, "ERR out of memory");
            return;
        }
        memcpy(key, argv[i].data, argv[i].len);
        c->watches[c->n_watches++] = (struct watch){.key = key,
                                                    .klen = argv[i].len,
                                                    .version = version,
                                                    .existed = rc == 0};
    }
    resp_simple(out, "OK");
}

static void cmd_unwatch(struct conn *c, size_t argc, struct resp_arg *argv,
                        struct evbuffer *out)
{
    (void)argc;
    (void)argv;
    struct multi *m = c->multi;
    c->multi = NULL; /* UNWATCH inside MULTI keeps the queue */
    txn_reset(c);
    c->multi = m;
    resp_simple(out, "OK");
}

/* Under the write lock: true if no watched key changed since WATCH. */
static bool watches_intact(struct conn *c)
{
    for (size_t i = 0; i < c->n_watches; i++) {
        const struct watch *w = &c->watches[i];
        uint64_t version;
        int rc = shmkv_version(c->d->kv, w->key, w->klen, &version);
        if ((rc != 0 && rc != SHMKV_ENOTFOUND) || version != w->version ||
            (rc == 0) != w->existed)
            return false;
    }
    return true;
}

static void command_dispatch(struct conn *c, size_t argc, struct resp_arg *argv,
                             struct evbuffer *out);

static void cmd_exec(struct conn *c, size_t argc, struct resp_arg *argv,
                     struct evbuffer *out)
{
    (void)argc;
    (void)argv;
    struct multi *m = c->multi;
    if (m == NULL) {
        resp_error(out, "ERR EXEC without MULTI");
        return;
    }
    if (m->failed) {
        txn_reset(c);
        resp_error(out, "EXECABORT Transaction discarded because of "
                        "previous errors.");
        return;
    }
    struct shmkv *kv = c->d->kv;
    int rc = shmkv_write_begin(kv);
    if (parked_on(c, rc, true))
        return; /* nothing run: EXEC runs again shortly */
    if (rc != 0) {
        txn_reset(c);
        reply_store_error(out, rc);
        return;
    }
    if (!watches_intact(c)) {
        shmkv_write_end(kv);
        txn_reset(c);
        resp_null_array(out);
        return;
    }
    c->in_exec = true;
    resp_array(out, m->n);
    for (size_t i = 0; i < m->n; i++) {
        c->progress = 0;
        c->progress_count = 0;
        c->park_deadline_ms = 0;
        command_dispatch(c, m->q[i].argc, m->q[i].argv, out);
    }
    c->in_exec = false;
    shmkv_write_end(kv);
    txn_reset(c);
}

/* HELLO [protover [AUTH user pass] [SETNAME name]]: RESP2 only; RESP3
 * gets NOPROTO, which clients fall back from. */
static void cmd_hello(struct conn *c, size_t argc, struct resp_arg *argv,
                      struct evbuffer *out)
{
    if (argc >= 2) {
        int64_t v;
        if (!arg_int64(&argv[1], &v)) {
            resp_error(out, "ERR Protocol version is not an integer or out "
                            "of range");
            return;
        }
        if (v != 2) {
            resp_error(out, "NOPROTO unsupported protocol version: shmkvd "
                            "speaks RESP2");
            return;
        }
    }
    for (size_t i = 2; i < argc; i++) {
        if (arg_is(&argv[i], "AUTH") && i + 2 < argc) {
            resp_error(out, "ERR AUTH is not supported: shmkvd knows its "
                            "peers by their uid (SO_PEERCRED); see "
                            "admin_users");
            return;
        } else if (arg_is(&argv[i], "SETNAME") && i + 1 < argc) {
            i++;
            snprintf(c->name, sizeof c->name, "%.*s",
                     (int)(argv[i].len < sizeof c->name - 1
                               ? argv[i].len
                               : sizeof c->name - 1),
                     argv[i].data);
        } else {
            resp_errorf(out, "ERR Syntax error in HELLO option '%.*s'",
                        (int)(argv[i].len < 32 ? argv[i].len : 32),
                        argv[i].data);
            return;
        }
    }
    resp_array(out, 16);
    resp_bulk_str(out, "server");
    resp_bulk_str(out, "shmkv");
    resp_bulk_str(out, "version");
    resp_bulk_str(out, REDIS_COMPAT_VERSION);
    resp_bulk_str(out, "shmkv_version");
    resp_bulk_str(out, SHMKV_VERSION_STRING);
    resp_bulk_str(out, "proto");
    resp_int(out, 2);
    resp_bulk_str(out, "id");
    resp_int(out, (int64_t)c->id);
    resp_bulk_str(out, "mode");
    resp_bulk_str(out, "standalone");
    resp_bulk_str(out, "role");
    resp_bulk_str(out, "master");
    resp_bulk_str(out, "modules");
    resp_array(out, 0);
}

static const struct command *command_table(size_t *n);

static void command_lower(const struct command *cmd, char *lower, size_t cap)
{
    size_t i;
    for (i = 0; i < cap - 1 && cmd->name[i]; i++)
        lower[i] = (char)tolower((unsigned char)cmd->name[i]);
    lower[i] = '\0';
}

static bool arg_is(const struct resp_arg *a, const char *s);

/* True if argv[2..] names cmd. */
static bool command_named(const struct command *cmd, size_t argc,
                          const struct resp_arg *argv)
{
    for (size_t i = 2; i < argc; i++)
        if (arg_is(&argv[i], cmd->name))
            return true;
    return false;
}

/* A COMMAND reply entry: name, arity, flags, first key, last key, step. */
static void command_info(struct evbuffer *out, const struct command *cmd)
{
    char lower[32];
    command_lower(cmd, lower, sizeof lower);
    int first = 0, last = 0, step = 0;
    if (cmd->flags & CMD_KEY1)
        first = last = step = 1;
    else if (cmd->flags & (CMD_KEYS | CMD_KEYVALS))
        first = 1, last = -1, step = cmd->flags & CMD_KEYVALS ? 2 : 1;
    resp_array(out, 6);
    resp_bulk_str(out, lower);
    resp_int(out, cmd->arity);
    resp_array(out, 1);
    resp_simple(out, cmd->flags & CMD_WRITE ? "write" : "readonly");
    resp_int(out, first);
    resp_int(out, last);
    resp_int(out, step);
}

static const struct command *command_find(const struct resp_arg *name);

static void cmd_command(struct conn *c, size_t argc, struct resp_arg *argv,
                        struct evbuffer *out)
{
    (void)c;
    size_t n_commands;
    const struct command *commands = command_table(&n_commands);
    if (argc == 1) {
        resp_array(out, n_commands);
        for (size_t i = 0; i < n_commands; i++)
            command_info(out, &commands[i]);
    } else if (arg_is(&argv[1], "COUNT")) {
        resp_int(out, (int64_t)n_commands);
    } else if (arg_is(&argv[1], "DOCS")) {
        /* Every command, or those named that exist: name, then a map of
         * its summary. */
        size_t n = 0;
        for (size_t i = 0; i < n_commands; i++)
            n += argc == 2 || command_named(&commands[i], argc, argv);
        resp_array(out, 2 * n);
        for (size_t i = 0; i < n_commands; i++) {
            if (argc > 2 && !command_named(&commands[i], argc, argv))
                continue;
            char lower[32];
            command_lower(&commands[i], lower, sizeof lower);
            resp_bulk_str(out, lower);
            resp_array(out, 6);
            resp_bulk_str(out, "summary");
            resp_bulk_str(out, commands[i].summary);
            resp_bulk_str(out, "since");
            resp_bulk_str(out, "shmkv");
            resp_bulk_str(out, "group");
            resp_bulk_str(out,
                          commands[i].flags & CMD_WRITE ? "write" : "read");
        }
    } else if (arg_is(&argv[1], "LIST")) {
        resp_array(out, n_commands);
        for (size_t i = 0; i < n_commands; i++) {
            char lower[32];
            command_lower(&commands[i], lower, sizeof lower);
            resp_bulk_str(out, lower);
        }
    } else if (arg_is(&argv[1], "INFO")) {
        resp_array(out, argc - 2);
        for (size_t i = 2; i < argc; i++) {
            const struct command *cmd = command_find(&argv[i]);
            if (cmd != NULL)
                command_info(out, cmd);
            else
                resp_null_array(out);
        }
    } else {
        resp_error(out, "ERR unknown COMMAND subcommand");
    }
}

static void cmd_help(struct conn *c, size_t argc, struct resp_arg *argv,
                     struct evbuffer *out)
{
    (void)c;
    (void)argc;
    (void)argv;
    size_t n_commands;
    const struct command *commands = command_table(&n_commands);
    resp_array(out, n_commands);
    for (size_t i = 0; i < n_commands; i++) {
        char line[160];
        snprintf(line, sizeof line, "%-14s %s%s", commands[i].name,
                 commands[i].summary,
                 commands[i].flags & CMD_ADMIN ? " (admin)" : "");
        resp_bulk_str(out, line);
    }
}

static void cmd_slowlog(struct conn *c, size_t argc, struct resp_arg *argv,
                        struct evbuffer *out);

static const struct command commands[] = {
    {"PING", -1, 0, cmd_ping, "[message]: PONG, or the message"},
    {"ECHO", 2, 0, cmd_echo, "message: the message"},
    {"QUIT", 1, CMD_TXN, cmd_quit, "close the connection"},
    {"SELECT", 2, 0, cmd_select, "0: the only database"},
    {"HELP", 1, 0, cmd_help, "this list"},
    {"GET", 2, CMD_KEY1, cmd_get, "key: its value, or nil"},
    {"MGET", -2, CMD_KEYS, cmd_mget, "key [key ...]: values, in one read"},
    {"EXISTS", -2, CMD_KEYS, cmd_exists, "key [key ...]: how many exist"},
    {"TYPE", 2, CMD_KEY1, cmd_type, "key: string or none"},
    {"TTL", 2, CMD_KEY1, cmd_ttl, "key: seconds to live, -1 none, -2 absent"},
    {"PTTL", 2, CMD_KEY1, cmd_ttl, "key: as TTL, in milliseconds"},
    {"EXPIRETIME", 2, CMD_KEY1, cmd_expiretime,
     "key: when it expires, Unix seconds; -1 no TTL, -2 absent"},
    {"PEXPIRETIME", 2, CMD_KEY1, cmd_expiretime,
     "key: as EXPIRETIME, in milliseconds"},
    {"STRLEN", 2, CMD_KEY1, cmd_strlen, "key: the value's length"},
    {"TOUCH", -2, CMD_KEYS, cmd_exists, "key [key ...]: how many exist"},
    {"TIME", 1, 0, cmd_time, "the server's time: seconds, microseconds"},
    {"DBSIZE", 1, 0, cmd_dbsize, "number of keys"},
    {"KEYS", 2, CMD_ADMIN | CMD_NOMULTI, cmd_keys,
     "pattern: matching keys (walks the whole store)"},
    {"SCAN", -2, 0, cmd_scan,
     "cursor [MATCH pattern] [COUNT n] [TYPE type]: a bounded step of a "
     "walk over the keys"},
    {"INFO", -1, 0, cmd_info,
     "[section]: server, clients, memory, persistence, stats, keyspace"},
    {"CONFIG", -2, CMD_NOMULTI, cmd_config,
     "GET pattern: settings; SET maxmemory size: resize (admin)"},
    {"CLIENT", -2, 0, cmd_client, "LIST | INFO | ID | SETNAME | GETNAME"},
    {"COMMAND", -1, 0, cmd_command, "[COUNT | INFO name ... | DOCS]"},
    {"SHMKV.STATS", 1, 0, cmd_shmkv_stats, "store statistics, name/value"},
    {"SHMKV.CHECK", 1, CMD_ADMIN | CMD_NOMULTI, cmd_shmkv_check,
     "check the store's structure (writers wait meanwhile)"},
    {"SHMKV.RESIZE", 2, CMD_ADMIN | CMD_NOMULTI, cmd_shmkv_resize,
     "size: grow or shrink the store online; replies when done"},
    {"SET", -3, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_set,
     "key value [NX|XX] [GET] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL]"},
    {"MSET", -3, CMD_WRITES | CMD_WAITS | CMD_KEYVALS, cmd_mset,
     "key value [key value ...]"},
    {"DEL", -2, CMD_WRITES | CMD_WAITS | CMD_KEYS, cmd_del,
     "key [key ...]: how many removed"},
    {"UNLINK", -2, CMD_WRITES | CMD_WAITS | CMD_KEYS, cmd_del,
     "key [key ...]: as DEL"},
    {"INCR", 2, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_incr, "key: add 1"},
    {"DECR", 2, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_decr, "key: subtract 1"},
    {"INCRBY", 3, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_incrby,
     "key n: add n"},
    {"DECRBY", 3, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_decrby,
     "key n: subtract n"},
    {"EXPIRE", -3, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_expire,
     "key seconds [NX|XX|GT|LT]"},
    {"PEXPIRE", -3, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_expire,
     "key ms [NX|XX|GT|LT]"},
    {"PERSIST", 2, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_persist,
     "key: remove its TTL"},
    {"SETEX", 4, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_setex,
     "key seconds value: SET with EX"},
    {"PSETEX", 4, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_setex,
     "key ms value: SET with PX"},
    {"SETNX", 3, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_setnx,
     "key value: set if absent; 1 if it did"},
    {"EXPIREAT", -3, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_expire,
     "key unix-seconds [NX|XX|GT|LT]"},
    {"PEXPIREAT", -3, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_expire,
     "key unix-ms [NX|XX|GT|LT]"},
    {"GETSET", 3, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_set,
     "key value: SET ... GET"},
    {"GETDEL", 2, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_getdel,
     "key: the value, and the key removed"},
    {"GETEX", -2, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_getex,
     "key [EX s|PX ms|EXAT t|PXAT t|PERSIST]: the value, TTL changed"},
    {"APPEND", 3, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_append,
     "key value: the new length"},
    {"SETRANGE", 4, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_setrange,
     "key offset value: the new length"},
    {"INCRBYFLOAT", 3, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_incrbyfloat,
     "key increment: the new value"},
    {"MSETNX", -3, CMD_WRITES | CMD_WAITS | CMD_KEYVALS, cmd_msetnx,
     "key value [key value ...]: all, if none exists; 1 if set"},
    {"GETRANGE", 4, CMD_KEY1, cmd_getrange, "key start end: a substring"},
    {"SUBSTR", 4, CMD_KEY1, cmd_getrange, "key start end: as GETRANGE"},
    {"RANDOMKEY", 1, 0, cmd_randomkey, "a key, or nil"},
    {"MEMORY", -2, 0, cmd_memory, "USAGE key: bytes the entry takes"},
    {"OBJECT", -2, 0, cmd_object, "ENCODING key: raw"},
    {"SHMKV.GETV", 2, CMD_KEY1, cmd_getv,
     "key: [value or nil, version] for SHMKV.CAS"},
    {"SHMKV.CAS", -4, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_cas,
     "key version value [EX s|PX ms]: 1 if set, 0 if the key changed"},
    {"SHMKV.SETF", -3, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_setf,
     "key value [EX s|PX ms]: SET; live entries evicted for it"},
    {"SHMKV.LEASE", 3, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_lease,
     "key ms: 1 if this connection now fills key, 0 if another does"},
    {"SHMKV.RELEASE", 2, CMD_WRITES | CMD_KEY1, cmd_release,
     "key: give back this connection's lease"},
    {"SHMKV.READERS", 1, CMD_WAITS | CMD_NOMULTI, cmd_readers,
     "make a reader chunk for the caller's user (libshmkv asks)"},
    {"SHMKV.GETSTALE", 2, CMD_KEY1, cmd_getstale,
     "key: [value, ms since it expired], while still in memory"},
    {"SLOWLOG", -2, 0, cmd_slowlog,
     "GET [n] | LEN | RESET: commands slower than slowlog_slower_than"},
    {"MULTI", 1, CMD_TXN, cmd_multi, "start a transaction"},
    {"EXEC", 1, CMD_TXN | CMD_WAITS | CMD_NOSLOWLOG, cmd_exec,
     "run the queued commands as one write"},
    {"DISCARD", 1, CMD_TXN, cmd_discard, "drop the queued commands"},
    {"WATCH", -2, CMD_TXN | CMD_KEYS, cmd_watch,
     "key [key ...]: EXEC fails if one changes"},
    {"UNWATCH", 1, CMD_TXN, cmd_unwatch, "forget the watched keys"},
    {"HELLO", -1, CMD_TXN, cmd_hello,
     "[2 [SETNAME name]]: the server's identity; RESP2 only"},
    {"FLUSHALL", -1, CMD_WRITES | CMD_WAITS, cmd_flushall, "remove every key"},
    {"FLUSHDB", -1, CMD_WRITES | CMD_WAITS, cmd_flushall, "as FLUSHALL"},
    {"SAVE", 1, CMD_WRITES | CMD_NOMULTI, cmd_save,
     "write the snapshot now; replies once it is on disk"},
    {"BGSAVE", -1, CMD_WRITES | CMD_NOMULTI, cmd_bgsave,
     "write the snapshot in the background"},
    {"LASTSAVE", 1, 0, cmd_lastsave,
     "when the last save ended (Unix time, 0: never)"},
    {"SHUTDOWN", -1, CMD_WRITES | CMD_NOMULTI, cmd_shutdown,
     "[SAVE|NOSAVE]: stop the daemon, removing the store"},
};
static const size_t n_commands = sizeof commands / sizeof commands[0];
_Static_assert(sizeof commands / sizeof commands[0] <= COMMANDS_MAX,
               "cmd_stats holds every command");

static const struct command *command_table(size_t *n)
{
    *n = n_commands;
    return commands;
}

size_t command_count(void)
{
    return n_commands;
}

static const struct command *command_find(const struct resp_arg *name)
{
    for (size_t i = 0; i < n_commands; i++)
        if (arg_is(name, commands[i].name))
            return &commands[i];
    return NULL;
}

/* ---- command statistics, latency and SLOWLOG ----
 *
 * Per command: calls, failed calls (an error reply), time spent, and a
 * latency histogram of 4 buckets per power of two of nanoseconds (a
 * bucket's bound is within 25% of any time it holds), from which INFO
 * latencystats gives percentiles and /metrics a Prometheus histogram. A
 * command parked for the store counts once, when it is answered, with the
 * time of that last run; one handed to the worker thread is not timed.
 * SLOWLOG keeps the last slowlog_max_len commands that took
 * slowlog_slower_than microseconds or longer. */

#define HIST_BUCKETS 256

struct cmd_stat {
    uint64_t calls;
    uint64_t failed;
    uint64_t ns;
    uint64_t hist[HIST_BUCKETS];
};

static struct cmd_stat cmd_stats[COMMANDS_MAX];

static unsigned hist_bucket(uint64_t ns)
{
    if (ns < 4)
        return (unsigned)ns;
    unsigned msb = 63u - (unsigned)__builtin_clzll(ns);
    unsigned b = msb * 4 + (unsigned)((ns >> (msb - 2)) & 3);
    return b < HIST_BUCKETS ? b : HIST_BUCKETS - 1;
}

/* The largest time bucket b holds, in ns. */
static uint64_t hist_bound(unsigned b)
{
    if (b < 8) /* 0..3 hold 0..3 ns; 4..7 are never used */
        return b < 4 ? b : 3;
    unsigned msb = b / 4, sub = b % 4;
    if (msb >= 62)
        return UINT64_MAX;
    return ((uint64_t)(4 + sub + 1) << (msb - 2)) - 1;
}

/* The time within which a share q of st's calls ran, in ns. */
static uint64_t hist_quantile(const struct cmd_stat *st, double q)
{
    uint64_t want = (uint64_t)((double)st->calls * q + 0.999999);
    uint64_t seen = 0;
    for (unsigned b = 0; b < HIST_BUCKETS; b++) {
        seen += st->hist[b];
        if (seen >= want && seen > 0)
            return hist_bound(b);
    }
    return 0;
}

/* How many of st's calls took at most ns (Prometheus's le). */
static uint64_t hist_at_most(const struct cmd_stat *st, uint64_t ns)
{
    uint64_t n = 0;
    for (unsigned b = 0; b < HIST_BUCKETS && hist_bound(b) <= ns; b++)
        n += st->hist[b];
    return n;
}

struct slow_entry {
    uint64_t id;
    int64_t at_unix;
    uint64_t us;
    int argc;         /* kept, at most SLOW_ARGS */
    size_t argc_real; /* given */
    char *args[SLOW_ARGS];
    size_t lens[SLOW_ARGS];
    char client[64];
    char name[64];
};

static struct slow_entry *slowlog; /* a ring of slow_cap */
static size_t slow_cap, slow_len, slow_next;
static uint64_t slow_ids;

static void slow_free(struct slow_entry *e)
{
    for (int i = 0; i < e->argc; i++)
        free(e->args[i]);
    e->argc = 0;
}

static void slowlog_reset(void)
{
    for (size_t i = 0; i < slow_cap; i++)
        slow_free(&slowlog[i]);
    slow_len = slow_next = 0;
}

static void slowlog_add(struct conn *c, size_t argc,
                        const struct resp_arg *argv, uint64_t us)
{
    size_t cap = c->d->cfg.slowlog_max_len;
    if (cap != slow_cap) { /* a reload changed it: start over */
        slowlog_reset();
        free(slowlog);
        slowlog = cap ? calloc(cap, sizeof *slowlog) : NULL;
        slow_cap = slowlog ? cap : 0;
    }
    if (slow_cap == 0)
        return;
    struct slow_entry *e = &slowlog[slow_next];
    slow_free(e);
    e->id = slow_ids++;
    e->at_unix = (int64_t)time(NULL);
    e->us = us;
    e->argc_real = argc;
    int n = argc < SLOW_ARGS ? (int)argc : SLOW_ARGS;
    for (int i = 0; i < n; i++) {
        size_t len =
            argv[i].len < SLOW_ARG_BYTES ? argv[i].len : SLOW_ARG_BYTES;
        e->args[i] = malloc(len + 1);
        if (e->args[i] == NULL)
            break;
        memcpy(e->args[i], argv[i].data, len);
        e->lens[i] = len;
        e->argc = i + 1;
    }
    snprintf(e->client, sizeof e->client, "pid:%d uid:%d", (int)c->pid,
             (int)c->uid);
    snprintf(e->name, sizeof e->name, "%s", c->name);
    slow_next = (slow_next + 1) % slow_cap;
    if (slow_len < slow_cap)
        slow_len++;
}

/* SLOWLOG GET [n] | LEN | RESET | HELP */
static void cmd_slowlog(struct conn *c, size_t argc, struct resp_arg *argv,
                        struct evbuffer *out)
{
    if (arg_is(&argv[1], "LEN")) {
        resp_int(out, (int64_t)slow_len);
    } else if (arg_is(&argv[1], "RESET")) {
        if (!c->admin) {
            resp_error(out, "NOPERM SLOWLOG RESET is for admin peers");
            return;
        }
        slowlog_reset();
        resp_simple(out, "OK");
    } else if (arg_is(&argv[1], "GET")) {
        int64_t n = 10;
        if (argc > 2 && (!arg_int64(&argv[2], &n) || n < -1)) {
            resp_error(out, "ERR count should be greater than or equal to -1");
            return;
        }
        size_t want = n < 0 || (uint64_t)n > slow_len ? slow_len : (size_t)n;
        resp_array(out, want);
        for (size_t k = 0; k < want; k++) {
            /* Newest first. */
            const struct slow_entry *e =
                &slowlog[(slow_next + slow_cap - 1 - k) % slow_cap];
            resp_array(out, 6);
            resp_int(out, (int64_t)e->id);
            resp_int(out, e->at_unix);
            resp_int(out, (int64_t)e->us);
            bool more = e->argc_real > (size_t)e->argc;
            resp_array(out, (size_t)e->argc + more);
            for (int i = 0; i < e->argc; i++)
                resp_bulk(out, e->args[i], e->lens[i]);
            if (more) {
                char buf[48];
                snprintf(buf, sizeof buf, "... (%zu more arguments)",
                         e->argc_real - (size_t)e->argc);
                resp_bulk_str(out, buf);
            }
            /* Non-admins see no other peer's pid and uid. */
            resp_bulk_str(out, c->admin ? e->client : "");
            resp_bulk_str(out, e->name);
        }
    } else {
        resp_array(out, 3);
        resp_bulk_str(out, "SLOWLOG GET [count]: the slowest recent commands");
        resp_bulk_str(out, "SLOWLOG LEN");
        resp_bulk_str(out, "SLOWLOG RESET (admin)");
    }
}

/* Counts a command that was answered. */
static void command_account(struct conn *c, const struct command *cmd,
                            size_t argc, const struct resp_arg *argv,
                            uint64_t ns, bool failed)
{
    size_t n;
    struct cmd_stat *st = &cmd_stats[cmd - command_table(&n)];
    st->calls++;
    st->failed += failed;
    st->ns += ns;
    st->hist[hist_bucket(ns)]++;
    uint64_t us = ns / 1000;
    if (us >= c->d->cfg.slowlog_slower_us && !(cmd->flags & CMD_NOSLOWLOG))
        slowlog_add(c, argc, argv, us);
}

static void lower_name(const char *name, char *buf, size_t cap)
{
    size_t i;
    for (i = 0; i < cap - 1 && name[i]; i++)
        buf[i] = (char)tolower((unsigned char)name[i]);
    buf[i] = '\0';
}

void commands_info_stats(struct evbuffer *b, bool stats, bool latency)
{
    size_t n;
    const struct command *table = command_table(&n);
    char name[32];
    for (size_t i = 0; stats && i < n; i++) {
        const struct cmd_stat *st = &cmd_stats[i];
        if (st->calls == 0)
            continue;
        lower_name(table[i].name, name, sizeof name);
        evbuffer_add_printf(
            b,
            "cmdstat_%s:calls=%" PRIu64 ",usec=%" PRIu64
            ",usec_per_call=%.2f,rejected_calls=0,failed_calls=%" PRIu64 "\r\n",
            name, st->calls, st->ns / 1000,
            (double)st->ns / 1000.0 / (double)st->calls, st->failed);
    }
    for (size_t i = 0; latency && i < n; i++) {
        const struct cmd_stat *st = &cmd_stats[i];
        if (st->calls == 0)
            continue;
        lower_name(table[i].name, name, sizeof name);
        evbuffer_add_printf(b,
                            "latency_percentiles_usec_%s:p50=%.3f,p99=%.3f,"
                            "p99.9=%.3f\r\n",
                            name, (double)hist_quantile(st, 0.5) / 1000.0,
                            (double)hist_quantile(st, 0.99) / 1000.0,
                            (double)hist_quantile(st, 0.999) / 1000.0);
    }
}

void commands_prometheus(struct evbuffer *b)
{
    static const double les[] = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1, 10};
    size_t n;
    const struct command *table = command_table(&n);
    char name[32];
    evbuffer_add_printf(b, "# HELP shmkv_commands_total Commands answered on "
                           "the control socket.\n"
                           "# TYPE shmkv_commands_total counter\n");
    for (size_t i = 0; i < n; i++) {
        lower_name(table[i].name, name, sizeof name);
        evbuffer_add_printf(
            b, "shmkv_commands_total{command=\"%s\"} %" PRIu64 "\n", name,
            cmd_stats[i].calls);
    }
    evbuffer_add_printf(b, "# HELP shmkv_command_errors_total Commands "
                           "answered with an error.\n"
                           "# TYPE shmkv_command_errors_total counter\n");
    for (size_t i = 0; i < n; i++) {
        lower_name(table[i].name, name, sizeof name);
        evbuffer_add_printf(b,
                            "shmkv_command_errors_total{command=\"%s\"} "
                            "%" PRIu64 "\n",
                            name, cmd_stats[i].failed);
    }
    evbuffer_add_printf(b, "# HELP shmkv_command_duration_seconds Time to run "
                           "a command in the event loop.\n"
                           "# TYPE shmkv_command_duration_seconds histogram\n");
    for (size_t i = 0; i < n; i++) {
        const struct cmd_stat *st = &cmd_stats[i];
        if (st->calls == 0)
            continue;
        lower_name(table[i].name, name, sizeof name);
        for (size_t k = 0; k < sizeof les / sizeof les[0]; k++)
            evbuffer_add_printf(b,
                                "shmkv_command_duration_seconds_bucket{"
                                "command=\"%s\",le=\"%g\"} %" PRIu64 "\n",
                                name, les[k],
                                hist_at_most(st, (uint64_t)(les[k] * 1e9)));
        evbuffer_add_printf(
            b,
            "shmkv_command_duration_seconds_bucket{command=\"%s\",le=\"+Inf\"}"
            " %" PRIu64 "\n"
            "shmkv_command_duration_seconds_sum{command=\"%s\"} %.9f\n"
            "shmkv_command_duration_seconds_count{command=\"%s\"} %" PRIu64
            "\n",
            name, st->calls, name, (double)st->ns / 1e9, name, st->calls);
    }
}

/* A write to keys the store mirrors from the upstream ([upstream]): the
 * upstream is the system of record, so it is sent there, and answered
 * once the upstream has and the keys are back in the store (mirror.c).
 * Refused (READONLY, as on a Redis replica) where that cannot be: a flush,
 * which would empty the mirror; inside MULTI, which runs under the
 * store's lock; shmkv's own commands, which the upstream lacks; and one
 * command on mirrored and other keys at once. True if the command was
 * refused or sent. */
static bool mirror_write_routed(struct conn *c, const struct command *cmd,
                                size_t argc, const struct resp_arg *argv,
                                struct evbuffer *out)
{
    size_t keys[64];
    size_t n = 0, mirrored = 0;
    bool too_many = false;
    if (cmd->flags & CMD_KEY1) {
        keys[n++] = 1;
    } else if (cmd->flags & (CMD_KEYS | CMD_KEYVALS)) {
        size_t step = cmd->flags & CMD_KEYVALS ? 2 : 1;
        for (size_t i = 1; i < argc; i += step) {
            if (n == sizeof keys / sizeof keys[0]) {
                too_many = true;
                break;
            }
            keys[n++] = i;
        }
    } else if (cmd->fn != cmd_flushall) {
        return false; /* not about keys: SAVE, SHUTDOWN, CONFIG, ... */
    }
    for (size_t i = 0; i < n; i++)
        mirrored += mirror_covers(c->d, argv[keys[i]].data, argv[keys[i]].len);
    if (cmd->fn != cmd_flushall && mirrored == 0 && !too_many)
        return false;
    const char *why = NULL;
    if (cmd->fn == cmd_flushall)
        why = "would empty the keys this store mirrors";
    else if (c->multi != NULL || c->in_exec)
        why = "inside MULTI changes mirrored keys, which go to the upstream "
              "one command at a time";
    else if (strncasecmp(cmd->name, "SHMKV.", 6) == 0)
        why = "is shmkv's own, which the upstream lacks";
    else if (mirrored != n || too_many)
        why = "names mirrored and other keys at once (or over 64 keys)";
    if (why != NULL) {
        resp_errorf(out, "READONLY '%s' %s (upstream %s)", c->last_command, why,
                    c->d->cfg.upstream_address);
        return true;
    }
    mirror_write_through(c, argc, argv, keys, n, out);
    return true;
}

/* The refusal a command gets before it runs: unknown, wrong arity, not
 * permitted; NULL if it may run. */
static const struct command *command_check(struct conn *c, size_t argc,
                                           struct resp_arg *argv,
                                           struct evbuffer *out)
{
    const struct command *cmd = command_find(&argv[0]);
    snprintf(c->last_command, sizeof c->last_command, "%.*s",
             (int)(argv[0].len < 31 ? argv[0].len : 31), argv[0].data);
    for (char *p = c->last_command; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    /* A connection taken past the limit only to register a reader chunk:
     * anything else gets what a full daemon answers. */
    if (c->reg_only && (cmd == NULL || cmd->fn != cmd_readers)) {
        resp_error(out, "ERR max number of clients reached");
        c->closing = true;
        return NULL;
    }
    if (cmd == NULL) {
        char shown[64];
        size_t n = argv[0].len < 40 ? argv[0].len : 40;
        size_t j = 0;
        for (size_t i = 0; i < n; i++)
            shown[j++] =
                isprint((unsigned char)argv[0].data[i]) ? argv[0].data[i] : '?';
        shown[j] = '\0';
        resp_errorf(out, "ERR unknown command '%s'", shown);
        return NULL;
    }
    if ((cmd->arity > 0 && argc != (size_t)cmd->arity) ||
        (cmd->arity < 0 && argc < (size_t)-cmd->arity)) {
        resp_errorf(out, "ERR wrong number of arguments for '%s' command",
                    c->last_command);
        return NULL;
    }
    if ((cmd->flags & CMD_ADMIN) && !c->admin) {
        resp_errorf(out,
                    "NOPERM uid %d may not run '%s': not in [control] "
                    "admin_users or admin_groups",
                    (int)c->uid, c->last_command);
        return NULL;
    }
    if ((cmd->flags & CMD_WRITE) && mirror_enabled(c->d) &&
        mirror_write_routed(c, cmd, argc, argv, out))
        return NULL;
    return cmd;
}

/* Runs cmd and counts it, unless it was parked (it runs again) or handed
 * to the worker thread (its time is not the loop's). */
static void command_timed(struct conn *c, const struct command *cmd,
                          size_t argc, struct resp_arg *argv,
                          struct evbuffer *out)
{
    uint64_t errors = resp_errors_written;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    cmd->fn(c, argc, argv, out);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (c->parked || c->job != NULL)
        return;
    uint64_t ns = (uint64_t)(t1.tv_sec - t0.tv_sec) * 1000000000u +
                  (uint64_t)(t1.tv_nsec - t0.tv_nsec);
    /* EXEC's own reply is an array: its commands count their errors. */
    bool failed = resp_errors_written != errors && !(cmd->flags & CMD_TXN);
    command_account(c, cmd, argc, argv, ns, failed);
}

/* Runs one of EXEC's queued commands, checked when it was queued. */
static void command_dispatch(struct conn *c, size_t argc, struct resp_arg *argv,
                             struct evbuffer *out)
{
    const struct command *cmd = command_check(c, argc, argv, out);
    if (cmd != NULL)
        command_timed(c, cmd, argc, argv, out);
}

void command_run(struct conn *c, size_t argc, struct resp_arg *argv,
                 struct evbuffer *out)
{
    refused_full = &c->d->writes_refused_full;
    const struct command *cmd = command_check(c, argc, argv, out);
    if (c->multi != NULL && (cmd == NULL || !(cmd->flags & CMD_TXN))) {
        /* In MULTI: queued, or the transaction is marked failed. */
        if (cmd != NULL && (cmd->flags & CMD_NOMULTI)) {
            resp_errorf(out,
                        "ERR Command not allowed inside a transaction: "
                        "'%s'",
                        c->last_command);
            cmd = NULL;
        } else if (cmd != NULL && !multi_push(c->multi, argc, argv)) {
            resp_error(out, "ERR transaction too large (64 MiB of arguments "
                            "at most)");
            cmd = NULL;
        }
        if (cmd == NULL)
            c->multi->failed = true;
        else
            resp_simple(out, "QUEUED");
        return;
    }
    if (cmd == NULL)
        return;
    /* Another parked command just found the store busy: wait with it
     * rather than spend the loop's time finding the same. */
    if ((cmd->flags & CMD_WAITS) &&
        daemon_now_ms() < c->d->store_busy_until_ms &&
        parked_on(c, SHMKV_ETIMEDOUT, false))
        return;
    command_timed(c, cmd, argc, argv, out);
}
