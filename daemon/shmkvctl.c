/*
 * shmkvctl - shmkv's admin command line.
 *
 * `get` reads through shared memory with libshmkv, as any client does;
 * everything else is a command on shmkvd's control socket, in RESP. The
 * socket and the store key come from the daemon's config file (-c, default
 * /etc/shmkvd/shmkvd.conf) or from -s SOCKET (the key is then asked of the
 * daemon). Exit codes: 0 ok, 1 not found, 2 usage, 3 error; messages go to
 * stderr, results to stdout. With --json each command prints one JSON
 * value instead (an error too, as {"error": ...}), keys and values as
 * strings whose bytes 0x80 and over are \u0080..\u00ff, so that a
 * binary value survives a decode to code points taken as bytes.
 */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <poll.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "shmkv.h"

enum { EXIT_OK = 0, EXIT_NOTFOUND = 1, EXIT_USAGE = 2, EXIT_ERROR = 3 };

/* --json: every result, and every error, as one JSON value on stdout. */
static bool json;

/* A RESP reply, parsed into a tree. */
struct reply {
    char type; /* + - : $ * */
    int64_t integer;
    char *str; /* + - $ (NUL-terminated; len for binary) */
    size_t len;
    bool null;
    struct reply *elems;
    size_t n;
};

struct conn {
    int fd;
    char buf[65536];
    size_t start, end;
};

static void die(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

static void json_str(const char *p, size_t len);

static void die(int code, const char *fmt, ...)
{
    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "shmkvctl: %s\n", msg);
    if (json) {
        printf("{\"error\": ");
        json_str(msg, strlen(msg));
        printf(", \"exit\": %d}\n", code);
    }
    exit(code);
}

/* A JSON string of len bytes: escapes, control bytes and bytes over 0x7f
 * as \u00XX. */
static void json_str(const char *p, size_t len)
{
    putchar('"');
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch == '\n')
            fputs("\\n", stdout);
        else if (ch < 0x20 || ch >= 0x7f)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

static void json_cstr(const char *s)
{
    json_str(s, strlen(s));
}

/* A key that is not there: said on stderr, and with --json as {"key": K,
 * "found": false}; the exit code. */
static int not_found(const char *key)
{
    fprintf(stderr, "shmkvctl: %s: not found\n", key);
    if (json) {
        printf("{\"key\": ");
        json_cstr(key);
        printf(", \"found\": false}\n");
    }
    return EXIT_NOTFOUND;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: shmkvctl [-c FILE | -s SOCKET] COMMAND [ARGS]\n"
            "  -c, --config FILE  shmkvd's config (default %s)\n"
            "  -s, --socket PATH  the control socket\n"
            "  -j, --json         print results (and errors) as JSON\n"
            "commands:\n"
            "  status                    a summary: uptime, entries, memory, "
            "hit rate, clients\n"
            "  get [--raw] KEY           print the value (read from shared "
            "memory);\n"
            "                            --raw: its bytes alone, no newline\n"
            "  mget KEY [KEY ...]        values, a line each (absent: empty)\n"
            "  keys [PATTERN]            every key (matching a glob), a line "
            "each\n"
            "  ttl KEY                   seconds to live, or none\n"
            "  expire KEY SECONDS        set a key's TTL\n"
            "  set KEY VALUE [--ttl S]   store a value\n"
            "  del KEY [KEY ...]         remove keys\n"
            "  incr KEY [BY]             add to a counter, print the result\n"
            "  flush                     remove every key\n"
            "  save                      write the snapshot\n"
            "  check                     check the store's structure\n"
            "  resize SIZE               grow or shrink the store online "
            "(K, M, G suffixes)\n"
            "  shutdown [--save|--nosave]  stop shmkvd\n"
            "  remove                    remove the store a dead shmkvd left\n"
            "  (\"--\" before keys that start with '-')\n"
            "  stats                     every statistic\n"
            "exit codes: 0 ok, 1 not found, 2 usage, 3 error\n",
            CONFIG_DEFAULT_PATH);
}

/* ---- the control socket ---- */

static void conn_open(struct conn *c, const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path)
        die(EXIT_USAGE, "socket path too long: %s", path);
    strcpy(addr.sun_path, path);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0 ||
        connect(c->fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        if (errno == EACCES) {
            /* Name what leaves this user out: the socket's mode (the
             * config's socket_mode) and group (its [store] group). */
            struct stat sb;
            char who[256] = "";
            if (stat(path, &sb) == 0) {
                struct group *g = getgrgid(sb.st_gid);
                snprintf(who, sizeof who,
                         "; it has mode 0%o and group %s, and uid %d is not "
                         "its owner nor in that group",
                         (unsigned)(sb.st_mode & 0777),
                         g != NULL ? g->gr_name : "?", (int)getuid());
            }
            die(EXIT_ERROR,
                "cannot connect to %s: %s (socket_mode in [control] and the "
                "store's group decide who may connect%s)",
                path, strerror(errno), who);
        }
        die(EXIT_ERROR, "cannot connect to %s: %s (is shmkvd running?%s)", path,
            strerror(errno),
            path[0] == '/' ? ""
                           : " a relative socket path is taken from the "
                             "current directory, as shmkvd does");
    }
    c->start = c->end = 0;
}

static void conn_send(struct conn *c, int argc, const char *const *argv,
                      const size_t *lens)
{
    size_t cap = 64;
    for (int i = 0; i < argc; i++)
        cap += lens[i] + 32;
    char *msg = malloc(cap);
    if (msg == NULL)
        die(EXIT_ERROR, "out of memory");
    size_t n = (size_t)snprintf(msg, cap, "*%d\r\n", argc);
    for (int i = 0; i < argc; i++) {
        n += (size_t)snprintf(msg + n, cap - n, "$%zu\r\n", lens[i]);
        memcpy(msg + n, argv[i], lens[i]);
        n += lens[i];
        msg[n++] = '\r';
        msg[n++] = '\n';
    }
    for (size_t off = 0; off < n;) {
        ssize_t w = write(c->fd, msg + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            die(EXIT_ERROR, "writing to shmkvd: %s", strerror(errno));
        off += (size_t)w;
    }
    free(msg);
}

static bool conn_fill(struct conn *c)
{
    if (c->start > 0) {
        memmove(c->buf, c->buf + c->start, c->end - c->start);
        c->end -= c->start;
        c->start = 0;
    }
    if (c->end == sizeof c->buf)
        die(EXIT_ERROR, "reply line too long");
    ssize_t r;
    do
        r = read(c->fd, c->buf + c->end, sizeof c->buf - c->end);
    while (r < 0 && errno == EINTR);
    if (r <= 0)
        return false;
    c->end += (size_t)r;
    return true;
}

/* Reads one CRLF-terminated line (without the CRLF) into a new string. */
static char *conn_line(struct conn *c)
{
    for (;;) {
        for (size_t i = c->start; i + 1 < c->end; i++) {
            if (c->buf[i] == '\r' && c->buf[i + 1] == '\n') {
                size_t len = i - c->start;
                char *s = malloc(len + 1);
                memcpy(s, c->buf + c->start, len);
                s[len] = '\0';
                c->start = i + 2;
                return s;
            }
        }
        if (!conn_fill(c))
            return NULL;
    }
}

static bool conn_bytes(struct conn *c, char *dst, size_t n)
{
    while (n > 0) {
        if (c->start == c->end && !conn_fill(c))
            return false;
        size_t take = c->end - c->start < n ? c->end - c->start : n;
        memcpy(dst, c->buf + c->start, take);
        c->start += take;
        dst += take;
        n -= take;
    }
    return true;
}

static bool reply_read(struct conn *c, struct reply *r)
{
    memset(r, 0, sizeof *r);
    char *line = conn_line(c);
    if (line == NULL || line[0] == '\0') {
        free(line);
        return false;
    }
    r->type = line[0];
    bool ok = true;
    switch (r->type) {
    case '+':
    case '-':
        r->len = strlen(line + 1);
        r->str = strdup(line + 1);
        break;
    case ':':
        r->integer = strtoll(line + 1, NULL, 10);
        break;
    case '$': {
        long long len = strtoll(line + 1, NULL, 10);
        if (len < 0) {
            r->null = true;
            break;
        }
        r->len = (size_t)len;
        r->str = malloc(r->len + 3);
        ok = r->str != NULL && conn_bytes(c, r->str, r->len + 2);
        if (ok)
            r->str[r->len] = '\0';
        break;
    }
    case '*': {
        long long n = strtoll(line + 1, NULL, 10);
        if (n < 0) {
            r->null = true;
            break;
        }
        r->n = (size_t)n;
        r->elems = calloc(r->n ? r->n : 1, sizeof *r->elems);
        for (size_t i = 0; ok && i < r->n; i++)
            ok = reply_read(c, &r->elems[i]);
        break;
    }
    default:
        ok = false;
    }
    free(line);
    return ok;
}

static void reply_free(struct reply *r)
{
    for (size_t i = 0; i < r->n && r->elems != NULL; i++)
        reply_free(&r->elems[i]);
    free(r->elems);
    free(r->str);
    memset(r, 0, sizeof *r);
}

/* Sends a command and reads its reply; the connection is closed on
 * failure with a clear message. */
static void command(struct conn *c, struct reply *r, int argc,
                    const char *const *argv, const size_t *lens)
{
    size_t auto_lens[16];
    if (lens == NULL) {
        for (int i = 0; i < argc && i < 16; i++)
            auto_lens[i] = strlen(argv[i]);
        lens = auto_lens;
    }
    conn_send(c, argc, argv, lens);
    if (!reply_read(c, r))
        die(EXIT_ERROR, "shmkvd closed the connection");
}

static void exit_on_error_reply(const struct reply *r)
{
    if (r->type != '-')
        return;
    die(EXIT_ERROR, "%s", r->str);
}

/* A command answered with an integer (an error reply exits). */
static int64_t command_int(struct conn *c, int argc, const char *const *argv)
{
    struct reply r;
    command(c, &r, argc, argv, NULL);
    exit_on_error_reply(&r);
    int64_t n = r.integer;
    reply_free(&r);
    return n;
}

/* ---- where the daemon is ---- */

struct target {
    const char *config_path;
    const char *socket_path;
    struct config cfg;
    bool have_config;
};

static void target_load(struct target *t)
{
    if (t->socket_path != NULL && t->config_path == NULL)
        return;
    if (t->config_path == NULL)
        t->config_path = CONFIG_DEFAULT_PATH;
    char err[8192];
    if (config_load(t->config_path, &t->cfg, err, sizeof err) != 0) {
        size_t n = strlen(err);
        while (n > 0 && err[n - 1] == '\n')
            err[--n] = '\0';
        die(EXIT_ERROR, "%s", err);
    }
    t->have_config = true;
    if (t->socket_path == NULL)
        t->socket_path = t->cfg.socket_path;
}

/* The value of one stat in a SHMKV.STATS reply, or 0. */
static int64_t stat_value(const struct reply *stats, const char *name)
{
    for (size_t i = 0; i + 1 < stats->n; i += 2)
        if (strcmp(stats->elems[i].str, name) == 0)
            return stats->elems[i + 1].integer;
    return 0;
}

static void human(uint64_t n, char *buf, size_t cap)
{
    const char *units[] = {"B", "K", "M", "G", "T"};
    double v = (double)n;
    unsigned u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    snprintf(buf, cap, u == 0 ? "%.0f%s" : "%.1f%s", v, units[u]);
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Asks shmkvd to resize the store; while it works, prints its progress
 * (read over a second connection) every second on stderr. */
static int cmd_resize(struct conn *c, const char *socket_path, const char *size)
{
    const char *v[] = {"SHMKV.RESIZE", size};
    conn_send(c, 2, v, (size_t[]){strlen(v[0]), strlen(v[1])});
    double t0 = mono_s();
    for (;;) {
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        if (c->end > c->start || poll(&p, 1, 1000) == 1)
            break;
        struct conn *q = calloc(1, sizeof *q);
        if (q == NULL)
            continue;
        conn_open(q, socket_path);
        struct reply st;
        const char *sv[] = {"SHMKV.STATS"};
        command(q, &st, 1, sv, NULL);
        int64_t done = stat_value(&st, "resize_done");
        int64_t total = stat_value(&st, "resize_total");
        if (total > 0)
            fprintf(stderr,
                    "resizing: %.0f%% (%" PRId64 " of %" PRId64
                    " index buckets copied, %.0f s)\n",
                    100.0 * (double)done / (double)total, done, total,
                    mono_s() - t0);
        reply_free(&st);
        close(q->fd);
        free(q);
    }
    struct reply r;
    if (!reply_read(c, &r))
        die(EXIT_ERROR, "shmkvd closed the connection");
    exit_on_error_reply(&r);
    reply_free(&r);
    struct reply st;
    const char *sv[] = {"SHMKV.STATS"};
    command(c, &st, 1, sv, NULL);
    exit_on_error_reply(&st);
    char now[32];
    human((uint64_t)stat_value(&st, "data_bytes"), now, sizeof now);
    if (json)
        printf("{\"data_bytes\": %" PRId64 ", \"seconds\": %.3f, "
               "\"entries\": %" PRId64 "}\n",
               stat_value(&st, "data_bytes"), mono_s() - t0,
               stat_value(&st, "entries"));
    else
        printf("resized to %s in %.2f s (%" PRId64 " entries)\n", now,
               mono_s() - t0, stat_value(&st, "entries"));
    reply_free(&st);
    return EXIT_OK;
}

/* keys [PATTERN]: every key (matching PATTERN), one a line, by SCAN. */
static int cmd_keys(struct conn *c, const char *pattern)
{
    char cursor[32] = "0";
    unsigned long long found = 0;
    if (json)
        putchar('[');
    do {
        const char *v[6] = {"SCAN", cursor, "COUNT", "1000", "MATCH", pattern};
        struct reply r;
        command(c, &r, pattern != NULL ? 6 : 4, v, NULL);
        exit_on_error_reply(&r);
        if (r.n != 2 || r.elems[0].str == NULL)
            die(EXIT_ERROR, "shmkvd gave SCAN an unexpected reply");
        snprintf(cursor, sizeof cursor, "%s", r.elems[0].str);
        const struct reply *keys = &r.elems[1];
        for (size_t i = 0; i < keys->n; i++) {
            if (json) {
                if (found > 0)
                    fputs(", ", stdout);
                json_str(keys->elems[i].str, keys->elems[i].len);
            } else {
                fwrite(keys->elems[i].str, 1, keys->elems[i].len, stdout);
                putchar('\n');
            }
            found++;
        }
        reply_free(&r);
    } while (strcmp(cursor, "0") != 0);
    if (json)
        printf("]\n");
    return found > 0 ? EXIT_OK : EXIT_NOTFOUND;
}

/* remove: removes a store whose shmkvd died (its segments outlive it, the
 * data segment without a key of its own); refused while shmkvd lives. */
static int cmd_remove(const struct target *t)
{
    if (!t->have_config)
        die(EXIT_USAGE, "remove needs the config (-c), which says where the "
                        "store is");
    struct shmkv *kv;
    int rc = shmkv_adopt(t->cfg.store_key, &kv);
    if (rc == SHMKV_ENOSTORE) {
        fprintf(stderr, "shmkvctl: no store at %s\n", t->cfg.store_key);
        if (json) {
            printf("{\"store\": ");
            json_cstr(t->cfg.store_key);
            printf(", \"found\": false}\n");
        }
        return EXIT_NOTFOUND;
    }
    if (rc == SHMKV_EOWNED)
        die(EXIT_ERROR,
            "the store at %s is owned by a live shmkvd: stop it "
            "(shmkvctl shutdown) rather than remove its store",
            t->cfg.store_key);
    if (rc != 0)
        die(EXIT_ERROR, "cannot take the store at %s over: %s: %s",
            t->cfg.store_key, shmkv_strerror(rc), shmkv_last_error());
    rc = shmkv_destroy(kv);
    if (rc != 0)
        die(EXIT_ERROR, "removing the store: %s", shmkv_strerror(rc));
    if (json) {
        printf("{\"removed\": ");
        json_cstr(t->cfg.store_key);
        printf("}\n");
    } else {
        printf("removed the store at %s\n", t->cfg.store_key);
    }
    return EXIT_OK;
}

static int cmd_status(struct conn *c)
{
    struct reply info, stats;
    const char *info_cmd[] = {"INFO", "server", "upstream"};
    command(c, &info, 3, info_cmd, NULL);
    exit_on_error_reply(&info);
    const char *stats_cmd[] = {"SHMKV.STATS"};
    command(c, &stats, 1, stats_cmd, NULL);
    exit_on_error_reply(&stats);

    char version[32] = "?", key[256] = "?", upstream[256] = "", mstate[32] = "";
    int pid = 0, mstale = 0;
    long long stale_since = 0;
    for (char *line = strtok(info.str, "\r\n"); line != NULL;
         line = strtok(NULL, "\r\n")) {
        sscanf(line, "shmkv_version:%31s", version);
        sscanf(line, "process_id:%d", &pid);
        sscanf(line, "store_key:%255s", key);
        sscanf(line, "upstream_address:%255s", upstream);
        sscanf(line, "mirror_state:%31s", mstate);
        sscanf(line, "mirror_stale:%d", &mstale);
        sscanf(line, "mirror_stale_since_ms:%lld", &stale_since);
    }
    int64_t up = stat_value(&stats, "uptime_s");
    if (json) {
        printf("{\"version\": ");
        json_cstr(version);
        printf(", \"pid\": %d, \"store\": ", pid);
        json_cstr(key);
        if (upstream[0] != '\0') {
            printf(", \"upstream\": ");
            json_cstr(upstream);
            printf(", \"mirror_state\": ");
            json_cstr(mstate);
            printf(", \"mirror_stale\": %s, \"mirror_stale_since_ms\": %lld",
                   mstale ? "true" : "false", stale_since);
        }
        for (size_t i = 0; i + 1 < stats.n; i += 2)
            printf(", \"%s\": %" PRId64, stats.elems[i].str,
                   stats.elems[i + 1].integer);
        printf("}\n");
        reply_free(&info);
        reply_free(&stats);
        return EXIT_OK;
    }
    uint64_t hits = (uint64_t)stat_value(&stats, "hits");
    uint64_t misses = (uint64_t)stat_value(&stats, "misses");
    char used[32], cap[32], freeb[32];
    human((uint64_t)stat_value(&stats, "bytes_used"), used, sizeof used);
    human((uint64_t)stat_value(&stats, "bytes_capacity"), cap, sizeof cap);
    human((uint64_t)stat_value(&stats, "bytes_free"), freeb, sizeof freeb);
    printf("shmkvd %s, pid %d, up %lldd %02lldh %02lldm %02llds\n", version,
           pid, (long long)up / 86400, (long long)up / 3600 % 24,
           (long long)up / 60 % 60, (long long)up % 60);
    printf("store      %s, generation %" PRId64 "\n", key,
           stat_value(&stats, "generation"));
    printf("entries    %" PRId64 " (%" PRId64 " with a TTL)\n",
           stat_value(&stats, "entries"),
           stat_value(&stats, "entries_with_ttl"));
    printf("memory     %s used of %s, %s free, fragmentation %.1f%%\n", used,
           cap, freeb, (double)stat_value(&stats, "fragmentation_ppm") / 1e4);
    printf("compaction %" PRId64 " windows packed, %" PRId64 " bytes moved\n",
           stat_value(&stats, "compactions"),
           stat_value(&stats, "compacted_bytes"));
    char seg[32], page[32], grow[32] = "never";
    human((uint64_t)stat_value(&stats, "data_bytes"), seg, sizeof seg);
    human((uint64_t)stat_value(&stats, "data_page_bytes"), page, sizeof page);
    if (stat_value(&stats, "max_size") > 0)
        human((uint64_t)stat_value(&stats, "max_size"), grow, sizeof grow);
    printf("size       %s data segment on %s pages, %" PRId64
           " resizes, grows up to %s\n",
           seg, page, stat_value(&stats, "resizes"), grow);
    if (stat_value(&stats, "resize_total") > 0)
        printf("resizing   to %" PRId64 " bytes: %" PRId64 " of %" PRId64
               " index buckets copied\n",
               stat_value(&stats, "resize_to_bytes"),
               stat_value(&stats, "resize_done"),
               stat_value(&stats, "resize_total"));
    if (hits + misses > 0)
        printf("hit rate   %.1f%% (%" PRIu64 " hits, %" PRIu64 " misses)\n",
               100.0 * (double)hits / (double)(hits + misses), hits, misses);
    else
        printf("hit rate   - (no lookups yet)\n");
    printf("clients    %" PRId64 " connections, %" PRId64
           " handles attached (%" PRId64 " writing)\n",
           stat_value(&stats, "connections"), stat_value(&stats, "handles"),
           stat_value(&stats, "writing_handles"));
    if (upstream[0] != '\0') {
        printf("mirror     of %s: %s%s", upstream, mstate,
               mstale ? ", STALE" : "");
        if (mstale)
            printf(" for %.1f s",
                   (double)(time(NULL) * 1000LL - stale_since) / 1000.0);
        printf("\n");
    }
    printf("writes     %" PRId64 " sets, %" PRId64 " deletes, %" PRId64
           " evictions, %" PRId64 " expirations\n",
           stat_value(&stats, "sets"), stat_value(&stats, "deletes"),
           stat_value(&stats, "evictions"), stat_value(&stats, "expirations"));
    reply_free(&info);
    reply_free(&stats);
    return EXIT_OK;
}

static int cmd_stats(struct conn *c)
{
    struct reply r;
    const char *argv[] = {"SHMKV.STATS"};
    command(c, &r, 1, argv, NULL);
    exit_on_error_reply(&r);
    if (json)
        putchar('{');
    for (size_t i = 0; i + 1 < r.n; i += 2) {
        if (json)
            printf("%s\"%s\": %" PRId64, i ? ", " : "", r.elems[i].str,
                   r.elems[i + 1].integer);
        else
            printf("%-20s %" PRId64 "\n", r.elems[i].str,
                   r.elems[i + 1].integer);
    }
    if (json)
        printf("}\n");
    reply_free(&r);
    return EXIT_OK;
}

/* Reads a key through shared memory. */
static int cmd_get(struct target *t, struct conn *c, const char *key, bool raw)
{
    char where[4096];
    if (t->have_config) {
        snprintf(where, sizeof where, "%s", t->cfg.store_key);
    } else {
        /* Only a socket was given: ask the daemon for its store key. */
        struct reply r;
        const char *argv[] = {"CONFIG", "GET", "store-key"};
        command(c, &r, 3, argv, NULL);
        exit_on_error_reply(&r);
        if (r.n != 2)
            die(EXIT_ERROR, "shmkvd did not say where its store is");
        snprintf(where, sizeof where, "%s", r.elems[1].str);
        reply_free(&r);
    }
    struct shmkv *kv;
    int rc = shmkv_open(where, SHMKV_RDONLY, &kv);
    if (rc != 0)
        die(EXIT_ERROR, "cannot attach the store at %s: %s: %s", where,
            shmkv_strerror(rc), shmkv_last_error());
    rc = shmkv_read_begin(kv);
    if (rc == 0) {
        shmkv_val_t v;
        rc = shmkv_get(kv, key, strlen(key), &v);
        if (rc == 0 && json) {
            printf("{\"key\": ");
            json_cstr(key);
            printf(", \"found\": true, \"value\": ");
            json_str(v.data, v.len);
            printf("}\n");
        } else if (rc == 0) {
            fwrite(v.data, 1, v.len, stdout);
            if (!raw)
                putchar('\n');
        }
        shmkv_read_end(kv);
    }
    shmkv_close(kv);
    if (rc == SHMKV_ENOTFOUND || rc == SHMKV_E2BIG)
        return not_found(key);
    if (rc != 0)
        die(EXIT_ERROR, "get %s: %s", key, shmkv_strerror(rc));
    return EXIT_OK;
}

/* Runs a socket command and prints its reply the way a script wants it. */
static int simple(struct conn *c, int argc, const char *const *argv)
{
    struct reply r;
    command(c, &r, argc, argv, NULL);
    exit_on_error_reply(&r);
    if (json && r.type == ':')
        printf("{\"result\": %" PRId64 "}\n", r.integer);
    else if (json && r.str != NULL) {
        printf("{\"result\": ");
        json_str(r.str, r.len);
        printf("}\n");
    } else if (json)
        printf("{\"result\": null}\n");
    else if (r.type == ':')
        printf("%" PRId64 "\n", r.integer);
    else if (r.str != NULL)
        printf("%s\n", r.str);
    int status = r.type == '$' && r.null ? EXIT_NOTFOUND : EXIT_OK;
    reply_free(&r);
    return status;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"socket", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'v'},
        {"json", no_argument, NULL, 'j'},
        {NULL, 0, NULL, 0},
    };
    struct target t = {0};
    int opt;
    /* '+': stop at the command, so its own options are its own. */
    while ((opt = getopt_long(argc, argv, "+c:s:hvj", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            t.config_path = optarg;
            break;
        case 's':
            t.socket_path = optarg;
            break;
        case 'h':
            usage(stdout);
            return EXIT_OK;
        case 'v':
            printf("shmkvctl %s\n", SHMKV_VERSION_STRING);
            return EXIT_OK;
        case 'j':
            json = true;
            break;
        default:
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[optind];
    char **args = argv + optind + 1;
    int nargs = argc - optind - 1;
    /* get's --raw, then an optional "--": what follows are keys and
     * values, even those that start with '-'. */
    bool raw = false;
    for (;;) {
        if (strcmp(cmd, "get") == 0 && nargs >= 1 &&
            strcmp(args[0], "--raw") == 0)
            raw = true;
        else if (nargs >= 1 && strcmp(args[0], "--json") == 0)
            json = true; /* after the command too: "stats --json" */
        else
            break;
        args++;
        nargs--;
    }
    if (nargs >= 1 && strcmp(args[0], "--") == 0) {
        args++;
        nargs--;
    }
    target_load(&t);
    struct conn c;
    for (int i = 0; i < nargs; i++)
        if (args[i][0] == '\0' && strcmp(cmd, "set") != 0)
            die(EXIT_USAGE, "%s: an empty argument", cmd);
    if (strcmp(cmd, "set") == 0 && nargs >= 1 && args[0][0] == '\0')
        die(EXIT_USAGE, "set: an empty key");

    if (strcmp(cmd, "get") == 0 && nargs == 1) {
        if (!t.have_config)
            conn_open(&c, t.socket_path);
        return cmd_get(&t, &c, args[0], raw);
    }
    if (strcmp(cmd, "set") == 0 && (nargs == 2 || nargs == 4)) {
        const char *v[5] = {"SET", args[0], args[1], "EX", NULL};
        int n = 3;
        if (nargs == 4) {
            if (strcmp(args[2], "--ttl") != 0)
                goto bad_usage;
            char *end;
            long ttl = strtol(args[3], &end, 10);
            if (*end != '\0' || ttl <= 0)
                die(EXIT_USAGE, "--ttl wants a positive number of seconds");
            v[4] = args[3];
            n = 5;
        }
        conn_open(&c, t.socket_path);
        return simple(&c, n, v);
    }
    if ((strcmp(cmd, "del") == 0 || strcmp(cmd, "mget") == 0) && nargs >= 1) {
        bool del = cmd[0] == 'd';
        const char **v = calloc((size_t)nargs + 1, sizeof *v);
        size_t *lens = calloc((size_t)nargs + 1, sizeof *lens);
        if (v == NULL || lens == NULL)
            die(EXIT_ERROR, "out of memory");
        v[0] = del ? "DEL" : "MGET";
        lens[0] = strlen(v[0]);
        for (int i = 0; i < nargs; i++) {
            v[i + 1] = args[i];
            lens[i + 1] = strlen(args[i]);
        }
        conn_open(&c, t.socket_path);
        conn_send(&c, nargs + 1, v, lens);
        struct reply r;
        if (!reply_read(&c, &r))
            die(EXIT_ERROR, "shmkvd closed the connection");
        exit_on_error_reply(&r);
        int status = EXIT_OK;
        if (del) {
            if (json)
                printf("{\"deleted\": %" PRId64 "}\n", r.integer);
            else
                printf("%" PRId64 "\n", r.integer);
            status = r.integer > 0 ? EXIT_OK : EXIT_NOTFOUND;
        } else if (json) {
            putchar('[');
            for (size_t i = 0; i < r.n; i++) {
                printf("%s{\"key\": ", i ? ", " : "");
                json_cstr(args[i]);
                if (r.elems[i].null) {
                    status = EXIT_NOTFOUND;
                    printf(", \"found\": false}");
                } else {
                    printf(", \"found\": true, \"value\": ");
                    json_str(r.elems[i].str, r.elems[i].len);
                    putchar('}');
                }
            }
            printf("]\n");
        } else {
            /* A value a line; an absent key an empty line and exit 1. */
            for (size_t i = 0; i < r.n; i++) {
                if (r.elems[i].null)
                    status = EXIT_NOTFOUND;
                else
                    fwrite(r.elems[i].str, 1, r.elems[i].len, stdout);
                putchar('\n');
            }
        }
        reply_free(&r);
        free(v);
        free(lens);
        return status;
    }
    if (strcmp(cmd, "keys") == 0 && nargs <= 1) {
        conn_open(&c, t.socket_path);
        return cmd_keys(&c, nargs == 1 ? args[0] : NULL);
    }
    if (strcmp(cmd, "ttl") == 0 && nargs == 1) {
        const char *v[2] = {"TTL", args[0]};
        conn_open(&c, t.socket_path);
        int64_t ttl = command_int(&c, 2, v);
        if (ttl == -2)
            return not_found(args[0]);
        if (json) {
            printf("{\"key\": ");
            json_cstr(args[0]);
            if (ttl == -1)
                printf(", \"found\": true, \"ttl\": null}\n");
            else
                printf(", \"found\": true, \"ttl\": %" PRId64 "}\n", ttl);
        } else if (ttl == -1)
            printf("none\n");
        else
            printf("%" PRId64 "\n", ttl);
        return EXIT_OK;
    }
    if (strcmp(cmd, "expire") == 0 && nargs == 2) {
        char *end;
        long long s_ = strtoll(args[1], &end, 10);
        if (*end != '\0' || s_ <= 0)
            die(EXIT_USAGE,
                "expire: SECONDS must be a positive number, not "
                "'%s'",
                args[1]);
        const char *v[3] = {"EXPIRE", args[0], args[1]};
        conn_open(&c, t.socket_path);
        if (command_int(&c, 3, v) == 0)
            return not_found(args[0]);
        if (json) {
            printf("{\"key\": ");
            json_cstr(args[0]);
            printf(", \"found\": true}\n");
        }
        return EXIT_OK;
    }
    if (strcmp(cmd, "remove") == 0 && nargs == 0)
        return cmd_remove(&t);
    if (strcmp(cmd, "incr") == 0 && (nargs == 1 || nargs == 2)) {
        char *end;
        if (nargs == 2 && (strtoll(args[1], &end, 10), *end != '\0'))
            die(EXIT_USAGE, "incr: BY must be an integer, not '%s'", args[1]);
        const char *v[3] = {"INCRBY", args[0], nargs == 2 ? args[1] : "1"};
        conn_open(&c, t.socket_path);
        return simple(&c, 3, v);
    }
    if (strcmp(cmd, "flush") == 0 && nargs == 0) {
        const char *v[] = {"FLUSHALL"};
        conn_open(&c, t.socket_path);
        return simple(&c, 1, v);
    }
    if (strcmp(cmd, "save") == 0 && nargs == 0) {
        const char *v[] = {"SAVE"};
        conn_open(&c, t.socket_path);
        return simple(&c, 1, v);
    }
    if (strcmp(cmd, "check") == 0 && nargs == 0) {
        const char *v[] = {"SHMKV.CHECK"};
        conn_open(&c, t.socket_path);
        return simple(&c, 1, v);
    }
    if (strcmp(cmd, "resize") == 0 && nargs == 1) {
        conn_open(&c, t.socket_path);
        return cmd_resize(&c, t.socket_path, args[0]);
    }
    if (strcmp(cmd, "status") == 0 && nargs == 0) {
        conn_open(&c, t.socket_path);
        return cmd_status(&c);
    }
    if (strcmp(cmd, "stats") == 0 && nargs == 0) {
        conn_open(&c, t.socket_path);
        return cmd_stats(&c);
    }
    if (strcmp(cmd, "shutdown") == 0 && nargs <= 1) {
        const char *v[2] = {"SHUTDOWN", NULL};
        int n = 1;
        if (nargs == 1) {
            if (strcmp(args[0], "--save") == 0)
                v[n++] = "SAVE";
            else if (strcmp(args[0], "--nosave") == 0)
                v[n++] = "NOSAVE";
            else
                goto bad_usage;
        }
        conn_open(&c, t.socket_path);
        conn_send(&c, n, v, (size_t[]){strlen(v[0]), n > 1 ? strlen(v[1]) : 0});
        struct reply r;
        /* Success closes the connection without a reply, as Redis does. */
        if (reply_read(&c, &r))
            exit_on_error_reply(&r);
        reply_free(&r);
        printf(json ? "{\"stopped\": true}\n" : "shmkvd stopped\n");
        return EXIT_OK;
    }
bad_usage:
    fprintf(stderr, "shmkvctl: bad command or arguments: %s\n", cmd);
    if (json) {
        char msg[256];
        snprintf(msg, sizeof msg, "bad command or arguments: %s", cmd);
        printf("{\"error\": ");
        json_cstr(msg);
        printf(", \"exit\": %d}\n", EXIT_USAGE);
    }
    usage(stderr);
    return EXIT_USAGE;
}
