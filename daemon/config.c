/*
 * config.c - shmkvd's settings from an INI file.
 *
 * inih does the INI syntax; this file feeds it one line at a time through
 * its own reader so that every problem can name its line (the packaged
 * inih does not pass line numbers to handlers), and checks each value
 * against a table of settings. Problems are collected, not stopped at, so
 * an operator sees every bad line of a file at once.
 */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <ini.h>

#define MIB (1024ull * 1024ull)

enum kind {
    K_KEY,      /* a store key spec */
    K_SIZE,     /* bytes with K/M/G/T suffixes */
    K_MODE,     /* octal permission bits */
    K_GROUP,    /* a group name or gid */
    K_UINT,     /* a plain decimal number */
    K_BOOL,     /* yes/no */
    K_EVICTION, /* noeviction | lru */
    K_LOGLEVEL, /* error | warning | info | debug */
    K_PATH,     /* a file path ("" allowed where min is 0) */
    K_USERS,    /* user names or uids */
    K_GROUPS,   /* group names or gids */
    K_ROLE,     /* none | all | a group name or gid */
    K_HUGE,     /* no | try | yes */
    K_LISTEN,   /* ADDRESS:PORT of a TCP listener, "" for none */
    K_UPSTREAM, /* HOST:PORT or unix:/path of a Redis, "" for none */
    K_TEXT,     /* free text, checked where it is used */
};

struct setting {
    const char *section;
    const char *name;
    enum kind kind;
    size_t offset; /* of the value in struct config */
    size_t width;  /* bytes of the value (strings: the buffer) */
    uint64_t min, max;
};

#define FIELD(f) offsetof(struct config, f), sizeof(((struct config *)0)->f)

static const struct setting settings[] = {
    {"store", "key", K_KEY, FIELD(store_key), 0, 0},
    {"store", "size", K_SIZE, FIELD(store_size), MIB, 64ull << 30},
    {"store", "mode", K_MODE, FIELD(store_mode), 0, 0777},
    {"store", "group", K_GROUP, FIELD(store_group), 0, 0},
    {"store", "readers", K_ROLE, FIELD(store_readers), 0, 0},
    {"store", "writers", K_ROLE, FIELD(store_writers), 0, 0},
    {"store", "max_key_size", K_SIZE, FIELD(max_key_bytes), 1, 65535},
    {"store", "max_value_size", K_SIZE, FIELD(max_value_bytes), 0, UINT32_MAX},
    {"store", "max_entries", K_UINT, FIELD(max_entries), 0, 1ull << 32},
    {"store", "eviction", K_EVICTION, FIELD(eviction), 0, 0},
    {"store", "default_ttl", K_UINT, FIELD(default_ttl_s), 0, UINT32_MAX},
    {"store", "max_handles", K_UINT, FIELD(max_handles), 1, 65536},
    {"store", "huge_pages", K_HUGE, FIELD(huge_pages), 0, 0},
    {"store", "max_size", K_SIZE, FIELD(max_size), 0, 64ull << 30},
    {"store", "grow_at", K_UINT, FIELD(grow_at_percent), 50, 99},
    {"control", "socket", K_PATH, FIELD(socket_path), 1, 0},
    {"control", "socket_mode", K_MODE, FIELD(socket_mode), 0, 0777},
    {"control", "admin_users", K_USERS, FIELD(admin_uids), 0, 0},
    {"control", "admin_groups", K_GROUPS, FIELD(admin_gids), 0, 0},
    {"control", "max_connections", K_UINT, FIELD(max_connections), 1, 65536},
    {"control", "max_request", K_SIZE, FIELD(max_request_bytes), 1024,
     1ull << 30},
    {"control", "idle_timeout", K_UINT, FIELD(idle_timeout_s), 0, 86400 * 365},
    {"control", "request_timeout", K_UINT, FIELD(request_timeout_s), 0, 86400},
    {"control", "admin_reserved", K_UINT, FIELD(admin_reserved), 0, 65535},
    {"persistence", "snapshot", K_PATH, FIELD(snapshot_path), 0, 0},
    {"persistence", "save_on_shutdown", K_BOOL, FIELD(save_on_shutdown), 0, 0},
    {"persistence", "save_interval", K_UINT, FIELD(save_interval_s), 0,
     86400 * 365},
    {"persistence", "load_on_start", K_BOOL, FIELD(load_on_start), 0, 0},
    {"daemon", "log_level", K_LOGLEVEL, FIELD(log_level), 0, 0},
    {"daemon", "lock_timeout_ms", K_UINT, FIELD(lock_timeout_ms), 1, 3600000},
    {"daemon", "reader_timeout_ms", K_UINT, FIELD(reader_timeout_ms), 1,
     3600000},
    {"daemon", "housekeeping_interval_ms", K_UINT, FIELD(housekeeping_ms), 10,
     60000},
    {"daemon", "expire_slots_per_tick", K_UINT, FIELD(expire_slots_per_tick),
     16, 1u << 24},
    {"daemon", "slowlog_slower_than", K_UINT, FIELD(slowlog_slower_us), 0,
     3600000000u},
    {"daemon", "slowlog_max_len", K_UINT, FIELD(slowlog_max_len), 0, 100000},
    {"metrics", "listen", K_LISTEN, FIELD(metrics_listen), 0, 0},
    {"upstream", "address", K_UPSTREAM, FIELD(upstream_address), 0, 0},
    {"upstream", "user", K_TEXT, FIELD(upstream_user), 0, 0},
    {"upstream", "password_file", K_PATH, FIELD(upstream_password_file), 0, 0},
    {"upstream", "prefixes", K_TEXT, FIELD(upstream_prefixes), 0, 0},
    {"upstream", "connect_timeout_ms", K_UINT, FIELD(upstream_connect_ms), 10,
     600000},
    {"upstream", "health_timeout_ms", K_UINT, FIELD(upstream_health_ms), 100,
     600000},
    {"upstream", "backoff_max_ms", K_UINT, FIELD(upstream_backoff_ms), 10,
     600000},
    {"upstream", "batch", K_UINT, FIELD(upstream_batch), 1, 100000},
};

#define NSETTINGS (sizeof settings / sizeof settings[0])

void config_defaults(struct config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->store_key, sizeof cfg->store_key, "0x5eed0001");
    cfg->store_size = 64 * MIB;
    cfg->store_mode = 0660;
    cfg->store_gid = (gid_t)-1;
    cfg->max_key_bytes = 250;
    cfg->max_value_bytes = 0; /* 1 MiB, or a quarter of size if smaller */
    cfg->max_entries = 0;
    cfg->eviction = SHMKV_EVICT_NONE;
    cfg->default_ttl_s = 0;
    cfg->max_handles = 1024;
    cfg->huge_pages = SHMKV_HUGE_NO;
    cfg->max_size = 0;
    cfg->grow_at_percent = 90;
    snprintf(cfg->socket_path, sizeof cfg->socket_path,
             "/run/shmkvd/shmkvd.sock");
    cfg->socket_mode = 0660;
    cfg->admin_uids[0] = 0;
    cfg->n_admin_uids = 1;
    cfg->n_admin_gids = 0;
    cfg->max_connections = 128;
    cfg->max_request_bytes = 4 * MIB;
    cfg->idle_timeout_s = 300;
    cfg->request_timeout_s = 10;
    cfg->admin_reserved = 4;
    cfg->snapshot_path[0] = '\0';
    cfg->save_on_shutdown = true;
    cfg->save_interval_s = 300;
    cfg->load_on_start = true;
    cfg->log_level = LOG_LEVEL_INFO;
    cfg->lock_timeout_ms = 5000;
    cfg->reader_timeout_ms = 1000;
    cfg->housekeeping_ms = 100;
    cfg->slowlog_slower_us = 10000;
    cfg->upstream_connect_ms = 2000;
    cfg->upstream_health_ms = 3000;
    cfg->upstream_backoff_ms = 5000;
    cfg->upstream_batch = 500;
    cfg->slowlog_max_len = 128;
    cfg->expire_slots_per_tick = 4096;
}

const char *log_level_name(enum log_level level)
{
    switch (level) {
    case LOG_LEVEL_ERROR:
        return "error";
    case LOG_LEVEL_WARNING:
        return "warning";
    case LOG_LEVEL_INFO:
        return "info";
    case LOG_LEVEL_DEBUG:
        return "debug";
    }
    return "info";
}

/* ---- values ---- */

int config_parse_size(const char *s, uint64_t *out)
{
    if (s == NULL || !isdigit((unsigned char)s[0]))
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0)
        return -1;
    unsigned shift = 0;
    switch (toupper((unsigned char)*end)) {
    case 'K':
        shift = 10;
        break;
    case 'M':
        shift = 20;
        break;
    case 'G':
        shift = 30;
        break;
    case 'T':
        shift = 40;
        break;
    default:
        break;
    }
    if (shift != 0) {
        end++;
        if (tolower((unsigned char)end[0]) == 'i' &&
            toupper((unsigned char)end[1]) == 'B')
            end += 2;
        else if (toupper((unsigned char)end[0]) == 'B')
            end++;
    } else if (toupper((unsigned char)*end) == 'B') {
        end++;
    }
    if (*end != '\0')
        return -1;
    if (v > (UINT64_MAX >> shift))
        return -1;
    *out = (uint64_t)v << shift;
    return 0;
}

static int parse_uint(const char *s, uint64_t *out)
{
    if (!isdigit((unsigned char)s[0]))
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"yes", "true", "on", "1"};
    static const char *const no[] = {"no", "false", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

static int resolve_user(const char *s, uid_t *out)
{
    uint64_t v;
    if (parse_uint(s, &v) == 0) {
        if (v >= UINT32_MAX)
            return -1;
        *out = (uid_t)v;
        return 0;
    }
    struct passwd *pw = getpwnam(s);
    if (pw == NULL)
        return -1;
    *out = pw->pw_uid;
    return 0;
}

static int resolve_group(const char *s, gid_t *out)
{
    uint64_t v;
    if (parse_uint(s, &v) == 0) {
        if (v >= UINT32_MAX)
            return -1;
        *out = (gid_t)v;
        return 0;
    }
    struct group *gr = getgrnam(s);
    if (gr == NULL)
        return -1;
    *out = gr->gr_gid;
    return 0;
}

/* ---- the parse ---- */

struct parse {
    struct config *cfg;
    const char *path;
    FILE *file;
    int line;         /* the line inih is on */
    char section[64]; /* as the reader last saw it */
    bool section_known;
    int set_at[NSETTINGS]; /* the line each setting was given on, or 0 */
    char *err;
    size_t err_cap, err_len;
    int problems;
};

static void problem(struct parse *p, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void problem(struct parse *p, int line, const char *fmt, ...)
{
    p->problems++;
    if (p->err_len + 1 >= p->err_cap)
        return;
    int n = line > 0 ? snprintf(p->err + p->err_len, p->err_cap - p->err_len,
                                "%s:%d: ", p->path, line)
                     : snprintf(p->err + p->err_len, p->err_cap - p->err_len,
                                "%s: ", p->path);
    if (n > 0)
        p->err_len += (size_t)n;
    if (p->err_len + 1 >= p->err_cap) {
        p->err_len = p->err_cap - 1;
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    n = vsnprintf(p->err + p->err_len, p->err_cap - p->err_len, fmt, ap);
    va_end(ap);
    if (n > 0)
        p->err_len += (size_t)n;
    if (p->err_len + 2 > p->err_cap) { /* no room for '\n' and the NUL */
        p->err_len = p->err_cap - 1;
        return;
    }
    p->err[p->err_len++] = '\n';
    p->err[p->err_len] = '\0';
}

static bool section_exists(const char *name)
{
    for (size_t i = 0; i < NSETTINGS; i++)
        if (strcmp(settings[i].section, name) == 0)
            return true;
    return false;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* Reads one whole line and hands inih a checked copy: leading blanks
 * dropped (so no line is taken as a continuation of the one before), a line
 * too long for inih or without '=' reported here with its number, and
 * section headers checked against the known sections. */
static char *reader(char *str, int num, void *stream)
{
    struct parse *p = stream;
    char buf[8192];
    if (fgets(buf, sizeof buf, p->file) == NULL)
        return NULL;
    p->line++;
    size_t len = strlen(buf);
    bool whole = len > 0 && buf[len - 1] == '\n';
    if (!whole && !feof(p->file)) {
        int c;
        while ((c = fgetc(p->file)) != EOF && c != '\n')
            ;
        problem(p, p->line, "line too long (at most %d characters)", num - 2);
        snprintf(str, (size_t)num, "\n");
        return str;
    }
    char *s = trim(buf);
    if (p->line == 1 && (unsigned char)s[0] == 0xef &&
        (unsigned char)s[1] == 0xbb && (unsigned char)s[2] == 0xbf)
        s += 3; /* a UTF-8 byte order mark */
    if (s[0] == '\0' || s[0] == ';' || s[0] == '#') {
        snprintf(str, (size_t)num, "\n");
        return str;
    }
    if ((int)strlen(s) > num - 2) {
        problem(p, p->line, "line too long (at most %d characters)", num - 2);
        snprintf(str, (size_t)num, "\n");
        return str;
    }
    if (s[0] == '[') {
        char *close = strchr(s, ']');
        char *rest = close ? trim(close + 1) : NULL;
        if (close == NULL ||
            (rest[0] != '\0' && rest[0] != ';' && rest[0] != '#')) {
            problem(p, p->line, "bad section header '%s': want [name]", s);
            p->section_known = false;
            snprintf(p->section, sizeof p->section, "?");
            snprintf(str, (size_t)num, "\n");
            return str;
        }
        *close = '\0';
        char *name = trim(s + 1);
        snprintf(p->section, sizeof p->section, "%s", name);
        p->section_known = section_exists(name);
        if (!p->section_known)
            problem(p, p->line,
                    "unknown section [%s] (known: [store], [control], "
                    "[persistence], [daemon], [metrics], [upstream])",
                    name);
        snprintf(str, (size_t)num, "[%s]\n", name);
        return str;
    }
    if (strchr(s, '=') == NULL) {
        problem(p, p->line, "'%s' is not a setting: want name = value", s);
        snprintf(str, (size_t)num, "\n");
        return str;
    }
    if (p->section[0] == '\0') {
        problem(p, p->line, "'%s' comes before any [section]", s);
        snprintf(str, (size_t)num, "\n");
        return str;
    }
    if (!p->section_known) {
        /* Lines under a bad or unknown header (reported there) are
         * skipped: after a malformed header inih still has the section
         * before it, and would check them against that one. */
        snprintf(str, (size_t)num, "\n");
        return str;
    }
    snprintf(str, (size_t)num, "%s\n", s);
    return str;
}

static int parse_id_list(struct parse *p, const struct setting *st,
                         const char *value, void *ids, size_t *count)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", value);
    size_t n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ", \t", &save); tok != NULL;
         tok = strtok_r(NULL, ", \t", &save)) {
        if (n == CONFIG_MAX_IDS) {
            problem(p, p->line, "%s: at most %d entries", st->name,
                    CONFIG_MAX_IDS);
            return -1;
        }
        int rc;
        if (st->kind == K_USERS)
            rc = resolve_user(tok, &((uid_t *)ids)[n]);
        else
            rc = resolve_group(tok, &((gid_t *)ids)[n]);
        if (rc != 0) {
            problem(p, p->line, "%s: no %s named '%s' on this system", st->name,
                    st->kind == K_USERS ? "user" : "group", tok);
            return -1;
        }
        n++;
    }
    *count = n;
    return 0;
}

static void store_uint(void *field, size_t width, uint64_t v)
{
    if (width == sizeof(uint64_t))
        *(uint64_t *)field = v;
    else if (width == sizeof(uint32_t))
        *(uint32_t *)field = (uint32_t)v;
}

static int apply(struct parse *p, const struct setting *st, const char *value)
{
    void *field = (char *)p->cfg + st->offset;
    uint64_t v = 0;
    switch (st->kind) {
    case K_KEY: {
        int32_t key;
        if (value[0] == '\0' || shmkv_parse_key(value, &key) != 0) {
            problem(p, p->line, "key: %s",
                    value[0] ? shmkv_last_error()
                             : "empty: want 0x5eed0001 or ftok:/path:1");
            return -1;
        }
        snprintf(field, st->width, "%s", value);
        return 0;
    }
    case K_SIZE:
        if (config_parse_size(value, &v) != 0) {
            problem(p, p->line,
                    "%s: '%s' is not a size (a number with an optional K, M, "
                    "G or T suffix)",
                    st->name, value);
            return -1;
        }
        break;
    case K_UINT:
        if (parse_uint(value, &v) != 0) {
            problem(p, p->line, "%s: '%s' is not a whole number", st->name,
                    value);
            return -1;
        }
        break;
    case K_MODE: {
        char *end;
        errno = 0;
        unsigned long m = strtoul(value, &end, 8);
        if (value[0] == '\0' || *end != '\0' || errno != 0 || m > 0777) {
            problem(p, p->line,
                    "%s: '%s' is not a permission mode (octal, 0 to 0777, "
                    "such as 0660)",
                    st->name, value);
            return -1;
        }
        if (st->offset == offsetof(struct config, store_mode) &&
            (m & 0600) != 0600) {
            problem(p, p->line,
                    "mode: %s leaves the owner without read and write "
                    "permission, which shmkvd and every client need",
                    value);
            return -1;
        }
        *(unsigned *)field = (unsigned)m;
        return 0;
    }
    case K_GROUP: {
        gid_t g = (gid_t)-1;
        if (value[0] != '\0' && resolve_group(value, &g) != 0) {
            problem(p, p->line, "group: no group named '%s' on this system",
                    value);
            return -1;
        }
        snprintf(field, st->width, "%s", value);
        p->cfg->store_gid = g;
        return 0;
    }
    case K_ROLE: {
        gid_t g;
        if (value[0] != '\0' && strcmp(value, "none") != 0 &&
            strcmp(value, "all") != 0 && resolve_group(value, &g) != 0) {
            problem(p, p->line,
                    "%s: '%s' is not none, all or a group on this system",
                    st->name, value);
            return -1;
        }
        snprintf(field, st->width, "%s", value);
        return 0;
    }
    case K_BOOL:
        if (parse_bool(value, field) != 0) {
            problem(p, p->line, "%s: '%s' is not yes or no", st->name, value);
            return -1;
        }
        return 0;
    case K_EVICTION:
        if (strcmp(value, "noeviction") == 0) {
            p->cfg->eviction = SHMKV_EVICT_NONE;
        } else if (strcmp(value, "lru") == 0 ||
                   strcmp(value, "allkeys-lru") == 0) {
            p->cfg->eviction = SHMKV_EVICT_LRU;
        } else {
            problem(p, p->line,
                    "eviction: '%s' is not a policy (noeviction or lru)",
                    value);
            return -1;
        }
        return 0;
    case K_HUGE:
        if (strcmp(value, "no") == 0) {
            p->cfg->huge_pages = SHMKV_HUGE_NO;
        } else if (strcmp(value, "try") == 0) {
            p->cfg->huge_pages = SHMKV_HUGE_TRY;
        } else if (strcmp(value, "yes") == 0) {
            p->cfg->huge_pages = SHMKV_HUGE_YES;
        } else {
            problem(p, p->line, "huge_pages: '%s' is not no, try or yes",
                    value);
            return -1;
        }
        return 0;
    case K_LOGLEVEL:
        for (int l = LOG_LEVEL_ERROR; l <= LOG_LEVEL_DEBUG; l++) {
            if (strcasecmp(value, log_level_name((enum log_level)l)) == 0) {
                p->cfg->log_level = (enum log_level)l;
                return 0;
            }
        }
        if (strcasecmp(value, "warn") == 0) {
            p->cfg->log_level = LOG_LEVEL_WARNING;
            return 0;
        }
        problem(p, p->line,
                "log_level: '%s' is not a level (error, warning, info or "
                "debug)",
                value);
        return -1;
    case K_PATH:
        if (st->min > 0 && value[0] == '\0') {
            problem(p, p->line, "%s: a path is required", st->name);
            return -1;
        }
        if (strlen(value) >= st->width) {
            problem(p, p->line, "%s: path longer than %zu bytes", st->name,
                    st->width - 1);
            return -1;
        }
        snprintf(field, st->width, "%s", value);
        return 0;
    case K_LISTEN: {
        char host[64];
        uint16_t port;
        if (value[0] != '\0' &&
            config_parse_listen(value, host, sizeof host, &port) != 0) {
            problem(p, p->line,
                    "%s: '%s' is not ADDRESS:PORT (an IPv4 address, or an "
                    "IPv6 one in brackets, and a port 1 to 65535)",
                    st->name, value);
            return -1;
        }
        snprintf(field, st->width, "%s", value);
        return 0;
    }
    case K_UPSTREAM: {
        char host[256];
        uint16_t port;
        if (value[0] != '\0' &&
            config_parse_upstream(value, host, sizeof host, &port) != 0) {
            problem(p, p->line,
                    "%s: '%s' is not HOST:PORT (port 1 to 65535) or "
                    "unix:/absolute/path",
                    st->name, value);
            return -1;
        }
        snprintf(field, st->width, "%s", value);
        return 0;
    }
    case K_TEXT:
        if (strlen(value) >= st->width) {
            problem(p, p->line, "%s: longer than %zu bytes", st->name,
                    st->width - 1);
            return -1;
        }
        snprintf(field, st->width, "%s", value);
        return 0;
    case K_USERS:
        return parse_id_list(p, st, value, p->cfg->admin_uids,
                             &p->cfg->n_admin_uids);
    case K_GROUPS:
        return parse_id_list(p, st, value, p->cfg->admin_gids,
                             &p->cfg->n_admin_gids);
    }
    if (v < st->min || v > st->max) {
        problem(p, p->line,
                "%s: %s is out of range (%" PRIu64 " to %" PRIu64 ")", st->name,
                value, st->min, st->max);
        return -1;
    }
    store_uint(field, st->width, v);
    return 0;
}

static int handler(void *user, const char *section, const char *name,
                   const char *value)
{
    struct parse *p = user;
    if (!section_exists(section))
        return 1; /* the section header was reported */
    for (size_t i = 0; i < NSETTINGS; i++) {
        const struct setting *st = &settings[i];
        if (strcmp(st->section, section) != 0 || strcmp(st->name, name) != 0)
            continue;
        if (p->set_at[i] != 0) {
            problem(p, p->line, "%s is set twice (first on line %d)", name,
                    p->set_at[i]);
            return 1;
        }
        p->set_at[i] = p->line;
        apply(p, st, value);
        return 1;
    }
    const char *elsewhere = NULL;
    for (size_t i = 0; i < NSETTINGS; i++)
        if (strcmp(settings[i].name, name) == 0)
            elsewhere = settings[i].section;
    if (elsewhere != NULL)
        problem(p, p->line, "'%s' belongs in [%s], not [%s]", name, elsewhere,
                section);
    else
        problem(p, p->line, "unknown setting '%s' in [%s]", name, section);
    return 1;
}

static int line_of(const struct parse *p, const char *name)
{
    for (size_t i = 0; i < NSETTINGS; i++)
        if (strcmp(settings[i].name, name) == 0)
            return p->set_at[i];
    return 0;
}

/* Turns readers and writers into the store's mode and group. System V
 * permissions have an owner, one group and everyone else: the owner (the
 * daemon's user) reads and writes; a group, or everyone, may be given read
 * (readers) or read and write (writers). */
static void roles_to_mode(struct parse *p)
{
    struct config *c = p->cfg;
    /* Empty: not given. */
    int rl = c->store_readers[0] ? line_of(p, "readers") : 0;
    int wl = c->store_writers[0] ? line_of(p, "writers") : 0;
    if (rl == 0 && wl == 0)
        return;
    /* An empty group, like an empty readers, says nothing. */
    int gl = c->store_group[0] ? line_of(p, "group") : 0;
    int ml = line_of(p, "mode") ? line_of(p, "mode") : gl;
    if (ml != 0) {
        problem(p, ml,
                "%s: readers and writers (line %d) already say who may use "
                "the store; remove mode and group, or leave readers and "
                "writers empty",
                line_of(p, "mode") ? "mode" : "group", rl ? rl : wl);
        return;
    }
    const char *r = rl ? c->store_readers : "none";
    const char *w = wl ? c->store_writers : "none";
    bool r_all = strcmp(r, "all") == 0, r_none = strcmp(r, "none") == 0;
    bool w_all = strcmp(w, "all") == 0, w_none = strcmp(w, "none") == 0;
    const char *group = "";
    unsigned mode = 0600;
    if (w_all) {
        mode = 0666;
    } else if (w_none) {
        mode = r_all ? 0644 : r_none ? 0600 : 0640;
        group = r_all || r_none ? "" : r;
    } else {
        gid_t wg = (gid_t)-1, rg = (gid_t)-1;
        resolve_group(w, &wg);
        if (!r_all && !r_none && (resolve_group(r, &rg) != 0 || rg != wg)) {
            problem(p, rl,
                    "readers: a store carries one group, and writers = %s "
                    "has it: readers may be all, none or %s (or writers "
                    "none and readers %s)",
                    w, w, r);
            return;
        }
        mode = r_all ? 0664 : 0660;
        group = w;
    }
    if (w_all && !r_all && !r_none && rl != 0) {
        problem(p, rl, "readers: with writers = all, everyone reads");
        return;
    }
    c->store_mode = mode;
    /* Readers use the socket too: it gets the store's group, and when
     * everyone may read, everyone may connect, unless socket_mode says
     * otherwise. */
    if (line_of(p, "socket_mode") == 0 && (w_all || r_all))
        c->socket_mode = 0666;
    snprintf(c->store_group, sizeof c->store_group, "%s", group);
    c->store_gid = (gid_t)-1;
    if (group[0] != '\0')
        resolve_group(group, &c->store_gid);
}

/* Settings that are fine alone but not together. */
static void cross_check(struct parse *p)
{
    struct config *c = p->cfg;
    roles_to_mode(p);
    if (c->max_size != 0 && c->max_size < c->store_size)
        problem(p, line_of(p, "max_size"),
                "max_size %" PRIu64 " is under size %" PRIu64
                ": the store could never grow (leave max_size empty or 0 "
                "for a store that does not grow)",
                c->max_size, c->store_size);
    if (c->max_value_bytes > c->store_size / 4)
        problem(p, line_of(p, "max_value_size"),
                "max_value_size %" PRIu32
                " is over a quarter of the store size (%" PRIu64 ")",
                c->max_value_bytes, c->store_size / 4);
    /* The default gives way to a small max_connections; a value given is
     * held to it. */
    if (line_of(p, "admin_reserved") == 0 &&
        c->admin_reserved >= c->max_connections)
        c->admin_reserved = c->max_connections - 1;
    if (c->admin_reserved >= c->max_connections)
        problem(p, line_of(p, "admin_reserved"),
                "admin_reserved %" PRIu32
                " leaves no connection for others: it must be under "
                "max_connections (%" PRIu32 ")",
                c->admin_reserved, c->max_connections);
}

int config_load(const char *path, struct config *cfg, char *err, size_t err_cap)
{
    config_defaults(cfg);
    if (err_cap > 0)
        err[0] = '\0';
    struct parse p = {.cfg = cfg, .path = path, .err = err, .err_cap = err_cap};
    snprintf(cfg->path, sizeof cfg->path, "%s", path);
    p.file = fopen(path, "re");
    if (p.file == NULL) {
        problem(&p, 0, "cannot read: %s", strerror(errno));
        return -1;
    }
    int rc = ini_parse_stream(reader, &p, handler, &p);
    bool read_error = ferror(p.file) != 0;
    fclose(p.file);
    if (read_error)
        problem(&p, 0, "read error");
    else if (rc > 0 && p.problems == 0)
        problem(&p, rc, "not valid INI syntax");
    else if (rc < 0)
        problem(&p, 0, "cannot be parsed (out of memory)");
    if (p.problems == 0)
        cross_check(&p);
    if (p.problems == 0 && cfg->max_value_bytes == 0)
        cfg->max_value_bytes =
            (uint32_t)(cfg->store_size / 4 < MIB ? cfg->store_size / 4 : MIB);
    return p.problems == 0 ? 0 : -1;
}

/* ---- printing and comparing ---- */

static void print_size(FILE *out, const char *name, uint64_t v)
{
    static const char suffix[] = "KMGT";
    int s = -1;
    while (v != 0 && v % 1024 == 0 && s < 3) {
        v /= 1024;
        s++;
    }
    if (s < 0)
        fprintf(out, "%s = %" PRIu64 "\n", name, v);
    else
        fprintf(out, "%s = %" PRIu64 "%c\n", name, v, suffix[s]);
}

static void print_ids(FILE *out, const char *name, const uint32_t *ids,
                      size_t n, bool users)
{
    fprintf(out, "%s =", name);
    for (size_t i = 0; i < n; i++) {
        const char *label = NULL;
        if (users) {
            struct passwd *pw = getpwuid(ids[i]);
            label = pw ? pw->pw_name : NULL;
        } else {
            struct group *gr = getgrgid(ids[i]);
            label = gr ? gr->gr_name : NULL;
        }
        if (label != NULL)
            fprintf(out, "%s%s", i ? ", " : " ", label);
        else
            fprintf(out, "%s%" PRIu32, i ? ", " : " ", ids[i]);
    }
    fputc('\n', out);
}

void config_print(const struct config *c, FILE *out)
{
    fprintf(out, "; effective settings of %s\n", c->path);
    fprintf(out, "[store]\nkey = %s\n", c->store_key);
    print_size(out, "size", c->store_size);
    if (c->store_readers[0] != '\0' || c->store_writers[0] != '\0')
        fprintf(out,
                "readers = %s\nwriters = %s\n; that is mode 0%o, group %s\n",
                c->store_readers[0] ? c->store_readers : "none",
                c->store_writers[0] ? c->store_writers : "none", c->store_mode,
                c->store_group[0] ? c->store_group : "shmkvd's own");
    else
        fprintf(out, "readers =\nwriters =\nmode = 0%o\ngroup = %s\n",
                c->store_mode, c->store_group);
    fprintf(out, "max_key_size = %" PRIu32 "\n", c->max_key_bytes);
    print_size(out, "max_value_size", c->max_value_bytes);
    if (c->max_entries == 0)
        fprintf(out,
                "max_entries = 0 ; the index is sized for about %" PRIu64
                " (one per %u bytes of size)\n",
                c->store_size / SHMKV_DEFAULT_ENTRY_BYTES,
                SHMKV_DEFAULT_ENTRY_BYTES);
    else
        fprintf(out, "max_entries = %" PRIu64 "\n", c->max_entries);
    fprintf(out, "eviction = %s\n",
            c->eviction == SHMKV_EVICT_LRU ? "lru" : "noeviction");
    fprintf(out, "default_ttl = %" PRIu32 "\nmax_handles = %" PRIu32 "\n",
            c->default_ttl_s, c->max_handles);
    fprintf(out, "huge_pages = %s\n",
            c->huge_pages == SHMKV_HUGE_YES   ? "yes"
            : c->huge_pages == SHMKV_HUGE_TRY ? "try"
                                              : "no");
    if (c->max_size == 0)
        fprintf(out, "max_size = 0 ; the store does not grow by itself\n");
    else
        print_size(out, "max_size", c->max_size);
    fprintf(out, "grow_at = %" PRIu32 "\n", c->grow_at_percent);
    fprintf(out, "\n[control]\nsocket = %s\nsocket_mode = 0%o\n",
            c->socket_path, c->socket_mode);
    print_ids(out, "admin_users", c->admin_uids, c->n_admin_uids, true);
    print_ids(out, "admin_groups", c->admin_gids, c->n_admin_gids, false);
    fprintf(out, "max_connections = %" PRIu32 "\n", c->max_connections);
    print_size(out, "max_request", c->max_request_bytes);
    fprintf(out, "idle_timeout = %" PRIu32 "\n", c->idle_timeout_s);
    fprintf(out,
            "request_timeout = %" PRIu32 "\nadmin_reserved = %" PRIu32 "\n",
            c->request_timeout_s, c->admin_reserved);
    fprintf(out, "\n[persistence]\nsnapshot = %s\n", c->snapshot_path);
    fprintf(out, "save_on_shutdown = %s\nload_on_start = %s\n",
            c->save_on_shutdown ? "yes" : "no",
            c->load_on_start ? "yes" : "no");
    fprintf(out, "save_interval = %" PRIu32 "\n", c->save_interval_s);
    fprintf(out, "\n[daemon]\nlog_level = %s\n", log_level_name(c->log_level));
    fprintf(out, "lock_timeout_ms = %" PRIu32 "\n", c->lock_timeout_ms);
    fprintf(out, "reader_timeout_ms = %" PRIu32 "\n", c->reader_timeout_ms);
    fprintf(out, "housekeeping_interval_ms = %" PRIu32 "\n",
            c->housekeeping_ms);
    fprintf(out, "expire_slots_per_tick = %" PRIu32 "\n",
            c->expire_slots_per_tick);
    fprintf(out, "slowlog_slower_than = %" PRIu32 "\n", c->slowlog_slower_us);
    fprintf(out, "slowlog_max_len = %" PRIu32 "\n", c->slowlog_max_len);
    fprintf(out, "\n[metrics]\nlisten = %s\n", c->metrics_listen);
    fprintf(out, "\n[upstream]\naddress = %s\nuser = %s\npassword_file = %s\n",
            c->upstream_address, c->upstream_user, c->upstream_password_file);
    fprintf(out, "prefixes = %s\nconnect_timeout_ms = %" PRIu32 "\n",
            c->upstream_prefixes, c->upstream_connect_ms);
    fprintf(out,
            "health_timeout_ms = %" PRIu32 "\nbackoff_max_ms = %" PRIu32
            "\nbatch = %" PRIu32 "\n",
            c->upstream_health_ms, c->upstream_backoff_ms, c->upstream_batch);
}

/* Splits "HOST:PORT" or "[v6]:PORT" into host (brackets dropped) and a
 * port 1 to 65535; *bracketed says which form. 0, or -1. */
static int split_host_port(const char *spec, char *host, size_t cap,
                           uint16_t *port, bool *bracketed)
{
    const char *colon = strrchr(spec, ':');
    if (colon == NULL || colon == spec || colon[1] == '\0')
        return -1;
    size_t hlen = (size_t)(colon - spec);
    const char *h = spec;
    *bracketed = spec[0] == '[';
    if (*bracketed) {
        if (hlen < 3 || spec[hlen - 1] != ']')
            return -1;
        h = spec + 1;
        hlen -= 2;
    }
    if (hlen >= cap)
        return -1;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    char *end;
    errno = 0;
    unsigned long v = strtoul(colon + 1, &end, 10);
    if (*end != '\0' || errno != 0 || v == 0 || v > 65535 ||
        !isdigit((unsigned char)colon[1]))
        return -1;
    *port = (uint16_t)v;
    return 0;
}

int config_parse_upstream(const char *spec, char *host, size_t cap,
                          uint16_t *port)
{
    if (strncmp(spec, "unix:", 5) == 0) {
        if (spec[5] != '/' || strlen(spec + 5) >= cap ||
            strlen(spec + 5) >= 108)
            return -1;
        snprintf(host, cap, "%s", spec + 5);
        *port = 0;
        return 0;
    }
    bool v6;
    if (split_host_port(spec, host, cap, port, &v6) != 0)
        return -1;
    for (const char *q = host; *q; q++)
        if (isspace((unsigned char)*q))
            return -1;
    return 0;
}

int config_parse_listen(const char *spec, char *host, size_t cap,
                        uint16_t *port)
{
    bool v6;
    unsigned char addr[16];
    if (split_host_port(spec, host, cap, port, &v6) != 0 ||
        inet_pton(v6 ? AF_INET6 : AF_INET, host, addr) != 1)
        return -1;
    return 0;
}

/* Whether two key specs name the same System V key ("0x5EED0001" and
 * "key:0x5eed0001" do). */
static bool same_key(const char *a, const char *b)
{
    int32_t ka, kb;
    if (shmkv_parse_key(a, &ka) != 0 || shmkv_parse_key(b, &kb) != 0)
        return strcmp(a, b) == 0;
    return ka == kb;
}

int config_restart_needed(const struct config *old, const struct config *new_,
                          char *buf, size_t cap)
{
    struct {
        const char *name;
        bool differs;
    } fixed[] = {
        {"key", !same_key(old->store_key, new_->store_key)},
        {"mode", old->store_mode != new_->store_mode},
        {"group", old->store_gid != new_->store_gid},
        {"max_key_size", old->max_key_bytes != new_->max_key_bytes},
        {"max_value_size", old->max_value_bytes != new_->max_value_bytes},
        {"max_entries", old->max_entries != new_->max_entries},
        {"eviction", old->eviction != new_->eviction},
        {"max_handles", old->max_handles != new_->max_handles},
        {"huge_pages", old->huge_pages != new_->huge_pages},
        {"socket", strcmp(old->socket_path, new_->socket_path) != 0},
        {"socket_mode", old->socket_mode != new_->socket_mode},
        {"lock_timeout_ms", old->lock_timeout_ms != new_->lock_timeout_ms},
        {"reader_timeout_ms",
         old->reader_timeout_ms != new_->reader_timeout_ms},
        {"[metrics] listen",
         strcmp(old->metrics_listen, new_->metrics_listen) != 0},
        {"[upstream]",
         strcmp(old->upstream_address, new_->upstream_address) != 0 ||
             strcmp(old->upstream_prefixes, new_->upstream_prefixes) != 0 ||
             strcmp(old->upstream_user, new_->upstream_user) != 0 ||
             strcmp(old->upstream_password_file,
                    new_->upstream_password_file) != 0},
    };
    int n = 0;
    size_t used = 0;
    if (cap > 0)
        buf[0] = '\0';
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        if (!fixed[i].differs)
            continue;
        if (cap > used) {
            int w = snprintf(buf + used, cap - used, "%s%s", n ? ", " : "",
                             fixed[i].name);
            if (w > 0)
                used += (size_t)w < cap - used ? (size_t)w : cap - used - 1;
        }
        n++;
    }
    return n;
}
