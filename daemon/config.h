/*
 * config.h - shmkvd's settings, read from an INI file with inih.
 *
 * Every setting has a default; the file overrides them. A bad line (not
 * INI, an unknown section or key, a value that does not parse or is out of
 * range) is reported as "file:line: why" and the whole file is refused: the
 * daemon never runs on a config it half understood.
 */
#ifndef SHMKVD_CONFIG_H
#define SHMKVD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "shmkv.h"

#define CONFIG_DEFAULT_PATH "/etc/shmkvd/shmkvd.conf"
#define CONFIG_MAX_IDS 32

enum log_level {
    LOG_LEVEL_ERROR = 0,
    LOG_LEVEL_WARNING,
    LOG_LEVEL_INFO,
    LOG_LEVEL_DEBUG,
};

struct config {
    char path[4096]; /* the file these came from */

    /* [store] */
    char store_key[4096];  /* key = 0x5eed0001 | key:0x.. | ftok:/p:1 */
    uint64_t store_size;   /* size = 64M (K/M/G/T suffixes, powers of 2) */
    unsigned store_mode;   /* mode = 0660 (octal permission bits) */
    char store_group[256]; /* group = name or gid ("" = the daemon's) */
    gid_t store_gid;       /* resolved; (gid_t)-1 when store_group "" */
    /* readers = none | all | GROUP, writers = none | all | GROUP: who may
     * read and who may write besides the owner, set in place of mode and
     * group (which they are turned into); "" when not given. */
    char store_readers[256];
    char store_writers[256];
    uint32_t max_key_bytes;       /* max_key_size = 250 */
    uint32_t max_value_bytes;     /* max_value_size = 1M */
    uint64_t max_entries;         /* max_entries = 0 (0: one per 128 bytes) */
    enum shmkv_eviction eviction; /* eviction = noeviction | lru */
    uint32_t default_ttl_s;       /* default_ttl = 0 (seconds; for socket SETs
                                     without EX/PX; 0 none) */
    uint32_t max_handles;         /* max_handles = 1024 (client slots) */
    enum shmkv_huge_pages huge_pages; /* huge_pages = no | try | yes */
    uint64_t max_size;        /* max_size = 0 (grow up to; 0: never grow) */
    uint32_t grow_at_percent; /* grow_at = 90 (% of arena or index used) */

    /* [control] */
    char socket_path[108];            /* socket = /run/shmkvd/shmkvd.sock */
    unsigned socket_mode;             /* socket_mode = 0660 */
    uid_t admin_uids[CONFIG_MAX_IDS]; /* admin_users = root, 1000 */
    size_t n_admin_uids;
    gid_t admin_gids[CONFIG_MAX_IDS]; /* admin_groups = shmkv */
    size_t n_admin_gids;
    uint32_t max_connections;   /* max_connections = 128 */
    uint64_t max_request_bytes; /* max_request = 4M (one RESP request) */
    uint32_t idle_timeout_s;    /* idle_timeout = 300 (0: never) */
    uint32_t request_timeout_s; /* request_timeout = 10 (0: never) */
    uint32_t admin_reserved;    /* admin_reserved = 4 (connections) */

    /* [persistence] */
    char snapshot_path[4096]; /* snapshot = "" (none) */
    bool save_on_shutdown;    /* save_on_shutdown = yes */
    uint32_t save_interval_s; /* save_interval = 300 (0: never) */
    bool load_on_start;       /* load_on_start = yes */

    /* [daemon] */
    enum log_level log_level;       /* log_level = info */
    uint32_t lock_timeout_ms;       /* lock_timeout_ms = 5000 */
    uint32_t reader_timeout_ms;     /* reader_timeout_ms = 1000 */
    uint32_t housekeeping_ms;       /* housekeeping_interval_ms = 100 */
    uint32_t expire_slots_per_tick; /* expire_slots_per_tick = 4096 */
    uint32_t slowlog_slower_us;     /* slowlog_slower_than = 10000 (µs; 0
                                       logs every command) */
    uint32_t slowlog_max_len;       /* slowlog_max_len = 128 */
    char metrics_listen[64];        /* [metrics] listen = ADDRESS:PORT;
                                       "" off */
    /* [upstream]: a Redis this store mirrors (mirror.c); "" address: none */
    char upstream_address[256];       /* HOST:PORT or unix:/path */
    char upstream_user[128];          /* user = (AUTH user password) */
    char upstream_password_file[256]; /* password_file = */
    char upstream_prefixes[1024];     /* prefixes = a,b (empty: every key) */
    uint32_t upstream_connect_ms;     /* connect_timeout_ms = 2000 */
    uint32_t upstream_health_ms;      /* health_timeout_ms = 3000 */
    uint32_t upstream_backoff_ms;     /* backoff_max_ms = 5000 */
    uint32_t upstream_batch;          /* batch = 500 */
};

/* Fills *cfg with every default. */
void config_defaults(struct config *cfg);

/* Reads path over the defaults. On failure returns -1 and writes every
 * problem, one "file:line: why" per line, into err (err_cap bytes, always
 * NUL-terminated); *cfg is then unspecified. */
int config_load(const char *path, struct config *cfg, char *err,
                size_t err_cap);

/* Writes the effective settings as a valid config file (for
 * `shmkvd --check-config`). */
void config_print(const struct config *cfg, FILE *out);

/* Lists the settings that differ between old and new and cannot change
 * without a restart (store and socket geometry), comma separated, into
 * buf; returns how many. */
int config_restart_needed(const struct config *old, const struct config *new_,
                          char *buf, size_t cap);

/* Parses "64M", "1G", "4096" (K/M/G/T = 2^10..2^40, optional B/iB). */
int config_parse_size(const char *s, uint64_t *out);

const char *log_level_name(enum log_level level);

/* Splits "ADDRESS:PORT" ("[v6]:PORT" for IPv6) into host and port: 0, or
 * -1 if it is not one. */
int config_parse_listen(const char *spec, char *host, size_t cap,
                        uint16_t *port);

/* Splits an [upstream] address: "unix:/path" (*path set, *port 0) or
 * "HOST:PORT" (an IPv4 address, [IPv6] or a host name). 0, or -1. */
int config_parse_upstream(const char *spec, char *host, size_t cap,
                          uint16_t *port);

#endif
