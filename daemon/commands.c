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
#define CMD_WRITES (CMD_ADMIN | CMD_WRITE)

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
    if (rc != SHMKV_ETIMEDOUT)
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

static void reply_store_error(struct evbuffer *out, int rc)
{
    switch (rc) {
    case SHMKV_ENOSPC:
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

/* The longest TTL a store entry can carry, in seconds (about 68 years). */
#define TTL_MAX_S ((int64_t)(UINT32_MAX / 2))

/* n seconds or milliseconds, rounded up to whole seconds, without
 * overflow for any n. */
static int64_t ceil_seconds(int64_t n, bool ms)
{
    if (!ms)
        return n;
    return n / 1000 + (n % 1000 > 0);
}

/* The time to live, in seconds, that an EX, PX, EXAT or PXAT argument
 * asks for (n > 0 as Redis requires). *ttl_s <= 0 means the absolute time
 * has passed. False if n is out of range. */
static bool ttl_from_arg(int64_t n, bool ms, bool at, int64_t *ttl_s)
{
    if (n <= 0)
        return false;
    int64_t s = ceil_seconds(n, ms);
    if (at)
        s -= (int64_t)time(NULL);
    if (s > TTL_MAX_S)
        return false;
    *ttl_s = s;
    return true;
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

/* SET with an expiry time already past: the value would expire as it is
 * written, so it is not written (it could evict others, or be seen for a
 * moment); the key is deleted if the write would have happened. Returns
 * what shmkv_set would have. */
static int set_expired(struct conn *c, const struct resp_arg *argv, int flags)
{
    struct shmkv *kv = c->d->kv;
    if (argv[1].len > c->d->max_key_bytes ||
        argv[2].len > c->d->max_value_bytes)
        return SHMKV_E2BIG;
    size_t len;
    int rc = shmkv_get_copy(kv, argv[1].data, argv[1].len, NULL, 0, &len);
    if (rc != 0 && rc != SHMKV_ENOBUFS && rc != SHMKV_ENOTFOUND)
        return rc;
    bool exists = rc != SHMKV_ENOTFOUND;
    if ((flags & SHMKV_NX) && exists)
        return SHMKV_EEXIST;
    if ((flags & SHMKV_XX) && !exists)
        return SHMKV_ENOTFOUND;
    rc = shmkv_del(kv, argv[1].data, argv[1].len);
    return rc == SHMKV_ENOTFOUND ? 0 : rc;
}

/* SET key value [NX|XX] [GET] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL] */
static void cmd_set(struct conn *c, size_t argc, struct resp_arg *argv,
                    struct evbuffer *out)
{
    int flags = 0;
    int64_t ttl_s = -1;
    bool want_old = false, expired = false;
    for (size_t i = 3; i < argc; i++) {
        int64_t n;
        if (arg_is(&argv[i], "NX") && !(flags & SHMKV_XX)) {
            flags |= SHMKV_NX;
        } else if (arg_is(&argv[i], "XX") && !(flags & SHMKV_NX)) {
            flags |= SHMKV_XX;
        } else if (arg_is(&argv[i], "GET")) {
            want_old = true;
        } else if (arg_is(&argv[i], "KEEPTTL") && ttl_s < 0 && !expired) {
            flags |= SHMKV_KEEPTTL;
        } else if ((arg_is(&argv[i], "EX") || arg_is(&argv[i], "PX") ||
                    arg_is(&argv[i], "EXAT") || arg_is(&argv[i], "PXAT")) &&
                   i + 1 < argc && ttl_s < 0 && !expired &&
                   !(flags & SHMKV_KEEPTTL)) {
            if (!arg_int64(&argv[i + 1], &n)) {
                resp_error(out, "ERR value is not an integer or out of range");
                return;
            }
            bool ms = toupper((unsigned char)argv[i].data[0]) == 'P';
            bool at = argv[i].len == 4;
            /* Whole seconds: a PX below 1 s rounds up to 1 s. */
            if (!ttl_from_arg(n, ms, at, &ttl_s)) {
                resp_error(out, "ERR invalid expire time in 'set' command");
                return;
            }
            if (ttl_s <= 0) {
                /* An EXAT or PXAT already past: as Redis, the key is gone
                 * once the write is done (see set_expired). */
                ttl_s = 0;
                expired = true;
            }
            i++;
        } else {
            reply_syntax(out);
            return;
        }
    }
    if (ttl_s < 0 && !expired && !(flags & SHMKV_KEEPTTL))
        ttl_s = c->d->cfg.default_ttl_s;
    struct shmkv *kv = c->d->kv;
    char *old = NULL;
    size_t old_len = 0;
    bool had_old = false;
    if (want_old) {
        size_t need = 0;
        int rc = shmkv_get_copy(kv, argv[1].data, argv[1].len, NULL, 0, &need);
        if (rc == SHMKV_ENOBUFS || rc == 0) {
            old = malloc(need ? need : 1);
            if (old != NULL && shmkv_get_copy(kv, argv[1].data, argv[1].len,
                                              old, need, &old_len) == 0)
                had_old = true;
        }
    }
    int rc = expired ? set_expired(c, argv, flags)
                     : shmkv_set(kv, argv[1].data, argv[1].len, argv[2].data,
                                 argv[2].len, ttl_s > 0 ? (uint32_t)ttl_s : 0,
                                 flags);
    if (parked_on(c, rc, true)) {
        /* No reply yet: run again, it reads the old value again. */
    } else if (rc != 0 && rc != SHMKV_EEXIST && rc != SHMKV_ENOTFOUND) {
        reply_store_error(out, rc);
    } else if (want_old && had_old) {
        resp_bulk(out, old, old_len);
    } else if (want_old || rc != 0) {
        resp_null(out);
    } else {
        resp_simple(out, "OK");
    }
    free(old);
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

/* :1 when the key was changed, :0 when there is no such key (a key over
 * the size limit cannot exist), an error otherwise. */
static void reply_applied(struct evbuffer *out, int rc)
{
    if (rc == 0)
        resp_int(out, 1);
    else if (rc == SHMKV_ENOTFOUND || rc == SHMKV_E2BIG)
        resp_int(out, 0);
    else
        reply_store_error(out, rc);
}

static void cmd_expire(struct conn *c, size_t argc, struct resp_arg *argv,
                       struct evbuffer *out)
{
    (void)argc;
    int64_t s;
    if (!arg_int64(&argv[2], &s)) {
        resp_error(out, "ERR value is not an integer or out of range");
        return;
    }
    bool ms = toupper((unsigned char)argv[0].data[0]) == 'P';
    int rc;
    if (s <= 0) /* as Redis: a TTL in the past deletes the key */
        rc = shmkv_del(c->d->kv, argv[1].data, argv[1].len);
    else {
        int64_t ttl = ceil_seconds(s, ms);
        if (ttl > TTL_MAX_S) {
            resp_errorf(out, "ERR invalid expire time in '%s' command",
                        c->last_command);
            return;
        }
        rc = shmkv_expire(c->d->kv, argv[1].data, argv[1].len, (uint32_t)ttl);
    }
    if (!parked_on(c, rc, true))
        reply_applied(out, rc);
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

/* EXPIREAT key unix-s, PEXPIREAT key unix-ms: EXPIRE to an absolute time;
 * one past deletes the key, as Redis. */
static void cmd_expireat(struct conn *c, size_t argc, struct resp_arg *argv,
                         struct evbuffer *out)
{
    (void)argc;
    int64_t at;
    if (!arg_int64(&argv[2], &at)) {
        resp_error(out, "ERR value is not an integer or out of range");
        return;
    }
    bool ms = toupper((unsigned char)argv[0].data[0]) == 'P';
    int64_t ttl = 0; /* a time at or before the epoch has passed */
    if (at > 0 && (!ttl_from_arg(at, ms, true, &ttl) || ttl > TTL_MAX_S)) {
        resp_errorf(out, "ERR invalid expire time in '%s' command",
                    c->last_command);
        return;
    }
    int rc = ttl <= 0 ? shmkv_del(c->d->kv, argv[1].data, argv[1].len)
                      : shmkv_expire(c->d->kv, argv[1].data, argv[1].len,
                                     (uint32_t)ttl);
    if (!parked_on(c, rc, true))
        reply_applied(out, rc);
}

/* EXPIRETIME key, PEXPIRETIME key: when the key expires (Unix time), -1
 * if it has no TTL, -2 if it is absent. */
static void cmd_expiretime(struct conn *c, size_t argc, struct resp_arg *argv,
                           struct evbuffer *out)
{
    (void)argc;
    int64_t ttl;
    int rc = shmkv_ttl(c->d->kv, argv[1].data, argv[1].len, &ttl);
    bool ms = toupper((unsigned char)argv[0].data[0]) == 'P';
    if (rc == SHMKV_ENOTFOUND)
        resp_int(out, -2);
    else if (rc != 0)
        reply_store_error(out, rc);
    else if (ttl < 0)
        resp_int(out, -1);
    else {
        int64_t at = (int64_t)time(NULL) + ttl;
        resp_int(out, ms ? at * 1000 : at);
    }
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

static void cmd_persist(struct conn *c, size_t argc, struct resp_arg *argv,
                        struct evbuffer *out)
{
    (void)argc;
    int64_t ttl;
    int rc = shmkv_ttl(c->d->kv, argv[1].data, argv[1].len, &ttl);
    if (rc == 0 && ttl >= 0)
        rc = shmkv_expire(c->d->kv, argv[1].data, argv[1].len, 0);
    else if (rc == 0)
        rc = SHMKV_ENOTFOUND; /* no TTL to remove */
    if (!parked_on(c, rc, true))
        reply_applied(out, rc);
}

static void cmd_ttl(struct conn *c, size_t argc, struct resp_arg *argv,
                    struct evbuffer *out)
{
    (void)argc;
    int64_t ttl;
    int rc = shmkv_ttl(c->d->kv, argv[1].data, argv[1].len, &ttl);
    bool ms = toupper((unsigned char)argv[0].data[0]) == 'P';
    if (rc == SHMKV_ENOTFOUND || rc == SHMKV_E2BIG)
        resp_int(out, -2);
    else if (rc != 0)
        reply_store_error(out, rc);
    else if (ttl < 0)
        resp_int(out, -1);
    else
        resp_int(out, ms ? ttl * 1000 : ttl);
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
            "redis_version:7.0.0\r\nshmkv_version:%s\r\nredis_mode:"
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

static const struct command *command_table(size_t *n);

/* A COMMAND reply entry: name, arity, flags, first key, last key, step. */
static void command_info(struct evbuffer *out, const struct command *cmd)
{
    char lower[32];
    size_t i;
    for (i = 0; i < sizeof lower - 1 && cmd->name[i]; i++)
        lower[i] = (char)tolower((unsigned char)cmd->name[i]);
    lower[i] = '\0';
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
        /* redis-cli asks for docs for its hints; it copes with none. */
        resp_array(out, 0);
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

static const struct command commands[] = {
    {"PING", -1, 0, cmd_ping, "[message]: PONG, or the message"},
    {"ECHO", 2, 0, cmd_echo, "message: the message"},
    {"QUIT", 1, 0, cmd_quit, "close the connection"},
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
    {"KEYS", 2, CMD_ADMIN, cmd_keys,
     "pattern: matching keys (walks the whole store)"},
    {"SCAN", -2, 0, cmd_scan,
     "cursor [MATCH pattern] [COUNT n] [TYPE type]: a bounded step of a "
     "walk over the keys"},
    {"INFO", -1, 0, cmd_info,
     "[section]: server, clients, memory, persistence, stats, keyspace"},
    {"CONFIG", -2, 0, cmd_config,
     "GET pattern: settings; SET maxmemory size: resize (admin)"},
    {"CLIENT", -2, 0, cmd_client, "LIST | INFO | ID | SETNAME | GETNAME"},
    {"COMMAND", -1, 0, cmd_command, "[COUNT | INFO name ... | DOCS]"},
    {"SHMKV.STATS", 1, 0, cmd_shmkv_stats, "store statistics, name/value"},
    {"SHMKV.CHECK", 1, CMD_ADMIN, cmd_shmkv_check,
     "check the store's structure (writers wait meanwhile)"},
    {"SHMKV.RESIZE", 2, CMD_ADMIN, cmd_shmkv_resize,
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
    {"EXPIRE", 3, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_expire, "key seconds"},
    {"PEXPIRE", 3, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_expire,
     "key ms (rounded up to seconds)"},
    {"PERSIST", 2, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_persist,
     "key: remove its TTL"},
    {"SETEX", 4, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_setex,
     "key seconds value: SET with EX"},
    {"PSETEX", 4, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_setex,
     "key ms value: SET with PX"},
    {"SETNX", 3, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_setnx,
     "key value: set if absent; 1 if it did"},
    {"EXPIREAT", 3, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_expireat,
     "key unix-seconds"},
    {"PEXPIREAT", 3, CMD_WRITES | CMD_WAITS | CMD_KEY1, cmd_expireat,
     "key unix-ms (rounded up to seconds)"},
    {"FLUSHALL", -1, CMD_WRITES | CMD_WAITS, cmd_flushall, "remove every key"},
    {"FLUSHDB", -1, CMD_WRITES | CMD_WAITS, cmd_flushall, "as FLUSHALL"},
    {"SAVE", 1, CMD_WRITES, cmd_save,
     "write the snapshot now; replies once it is on disk"},
    {"BGSAVE", -1, CMD_WRITES, cmd_bgsave,
     "write the snapshot in the background"},
    {"LASTSAVE", 1, 0, cmd_lastsave,
     "when the last save ended (Unix time, 0: never)"},
    {"SHUTDOWN", -1, CMD_WRITES, cmd_shutdown,
     "[SAVE|NOSAVE]: stop the daemon, removing the store"},
};
static const size_t n_commands = sizeof commands / sizeof commands[0];

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

void command_run(struct conn *c, size_t argc, struct resp_arg *argv,
                 struct evbuffer *out)
{
    const struct command *cmd = command_find(&argv[0]);
    snprintf(c->last_command, sizeof c->last_command, "%.*s",
             (int)(argv[0].len < 31 ? argv[0].len : 31), argv[0].data);
    for (char *p = c->last_command; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    if (cmd == NULL) {
        char shown[64];
        size_t n = argv[0].len < 40 ? argv[0].len : 40;
        size_t j = 0;
        for (size_t i = 0; i < n; i++)
            shown[j++] =
                isprint((unsigned char)argv[0].data[i]) ? argv[0].data[i] : '?';
        shown[j] = '\0';
        resp_errorf(out, "ERR unknown command '%s'", shown);
        return;
    }
    if ((cmd->arity > 0 && argc != (size_t)cmd->arity) ||
        (cmd->arity < 0 && argc < (size_t)-cmd->arity)) {
        resp_errorf(out, "ERR wrong number of arguments for '%s' command",
                    c->last_command);
        return;
    }
    if ((cmd->flags & CMD_ADMIN) && !c->admin) {
        resp_errorf(out,
                    "NOPERM uid %d may not run '%s': not in [control] "
                    "admin_users or admin_groups",
                    (int)c->uid, c->last_command);
        return;
    }
    /* Another parked command just found the store busy: wait with it
     * rather than spend the loop's time finding the same. */
    if ((cmd->flags & CMD_WAITS) &&
        daemon_now_ms() < c->d->store_busy_until_ms &&
        parked_on(c, SHMKV_ETIMEDOUT, false))
        return;
    cmd->fn(c, argc, argv, out);
}
