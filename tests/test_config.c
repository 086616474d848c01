/*
 * Config loader tests: the sample conf/shmkvd.conf, every setting in every
 * accepted spelling, every kind of bad line reported as "file:line: why"
 * with the right line number (and all of them when a file has several),
 * the error buffer's bounds, config_print round trips, the restart-only
 * settings, and config_parse_size's edge cases. Each test writes its files
 * into its own mkdtemp directory, removed afterwards.
 */
#include <stdarg.h>
#include <stddef.h>
#include <grp.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"

#define SAMPLE_CONF "conf/shmkvd.conf"
#define MIB (1024ull * 1024ull)

struct fixture {
    char dir[64];
    char conf[128]; /* the file each test writes and loads */
    char err[16384];
    struct config cfg;
};

/* ---- files and directories ---- */

static int remove_entry(const char *path, const struct stat *st, int type,
                        struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    if (f == NULL)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/shmkv-config-XXXXXX");
    if (mkdtemp(f->dir) == NULL) {
        free(f);
        return -1;
    }
    snprintf(f->conf, sizeof f->conf, "%s/shmkvd.conf", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static void write_bytes(const char *path, const char *text, size_t len)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(fwrite(text, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

static void write_text(const char *path, const char *text)
{
    write_bytes(path, text, strlen(text));
}

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* ---- loading ---- */

static int load_text(struct fixture *f, const char *text)
{
    write_text(f->conf, text);
    return config_load(f->conf, &f->cfg, f->err, sizeof f->err);
}

static void load_ok(struct fixture *f, const char *text)
{
    if (load_text(f, text) != 0)
        fail_msg("refused:\n%s\nwith:\n%s", text, f->err);
}

/* Loads "[section]\nline\n" and expects it to be accepted. */
static void load_setting_ok(struct fixture *f, const char *section,
                            const char *line)
{
    char text[1024];
    snprintf(text, sizeof text, "[%s]\n%s\n", section, line);
    load_ok(f, text);
}

/* Asserts that text is refused with exactly one problem, reported as
 * "<path>:<line>: " followed by a message containing why. */
static void load_bad(struct fixture *f, const char *text, int line,
                     const char *why)
{
    if (load_text(f, text) != -1)
        fail_msg("accepted:\n%s", text);
    char prefix[256];
    snprintf(prefix, sizeof prefix, "%s:%d: ", f->conf, line);
    if (strncmp(f->err, prefix, strlen(prefix)) != 0)
        fail_msg("for:\n%s\nwanted a message starting '%s', got:\n%s", text,
                 prefix, f->err);
    if (strstr(f->err + strlen(prefix), why) == NULL)
        fail_msg("for:\n%s\nwanted '%s' in:\n%s", text, why, f->err);
    if (count_lines(f->err) != 1)
        fail_msg("for:\n%s\nwanted one problem, got:\n%s", text, f->err);
}

/* load_bad for "[section]\nline\n": the problem is on line 2. */
static void load_setting_bad(struct fixture *f, const char *section,
                             const char *line, const char *why)
{
    char text[1024];
    snprintf(text, sizeof text, "[%s]\n%s\n", section, line);
    load_bad(f, text, 2, why);
}

/* Fails unless a and b hold the same settings (path aside). Compared field
 * by field: string buffers may differ after their terminating NUL. */
static void assert_config_equal(const struct config *a, const struct config *b)
{
    assert_string_equal(a->store_key, b->store_key);
    assert_int_equal(a->store_size, b->store_size);
    assert_int_equal(a->store_mode, b->store_mode);
    assert_string_equal(a->store_group, b->store_group);
    assert_string_equal(a->store_readers, b->store_readers);
    assert_string_equal(a->store_writers, b->store_writers);
    assert_int_equal(a->store_gid, b->store_gid);
    assert_int_equal(a->max_key_bytes, b->max_key_bytes);
    assert_int_equal(a->max_value_bytes, b->max_value_bytes);
    assert_int_equal(a->max_entries, b->max_entries);
    assert_int_equal(a->eviction, b->eviction);
    assert_int_equal(a->default_ttl_s, b->default_ttl_s);
    assert_int_equal(a->max_handles, b->max_handles);
    assert_string_equal(a->socket_path, b->socket_path);
    assert_int_equal(a->socket_mode, b->socket_mode);
    assert_int_equal(a->n_admin_uids, b->n_admin_uids);
    for (size_t i = 0; i < a->n_admin_uids; i++)
        assert_int_equal(a->admin_uids[i], b->admin_uids[i]);
    assert_int_equal(a->n_admin_gids, b->n_admin_gids);
    for (size_t i = 0; i < a->n_admin_gids; i++)
        assert_int_equal(a->admin_gids[i], b->admin_gids[i]);
    assert_int_equal(a->max_connections, b->max_connections);
    assert_int_equal(a->max_request_bytes, b->max_request_bytes);
    assert_int_equal(a->idle_timeout_s, b->idle_timeout_s);
    assert_string_equal(a->snapshot_path, b->snapshot_path);
    assert_int_equal(a->save_on_shutdown, b->save_on_shutdown);
    assert_int_equal(a->load_on_start, b->load_on_start);
    assert_int_equal(a->log_level, b->log_level);
    assert_int_equal(a->lock_timeout_ms, b->lock_timeout_ms);
    assert_int_equal(a->housekeeping_ms, b->housekeeping_ms);
    assert_int_equal(a->expire_slots_per_tick, b->expire_slots_per_tick);
}

/* The defaults as config_load leaves them for a file that sets nothing:
 * max_value_size 0 resolves to 1M or a quarter of size. */
static void loaded_defaults(struct config *c)
{
    config_defaults(c);
    c->max_value_bytes = (uint32_t)MIB;
}

/* Every setting, by section. */
static const struct {
    const char *section, *name;
} all_settings[] = {
    {"store", "key"},
    {"store", "size"},
    {"store", "mode"},
    {"store", "group"},
    {"store", "max_key_size"},
    {"store", "max_value_size"},
    {"store", "max_entries"},
    {"store", "eviction"},
    {"store", "default_ttl"},
    {"store", "max_handles"},
    {"control", "socket"},
    {"control", "socket_mode"},
    {"control", "admin_users"},
    {"control", "admin_groups"},
    {"control", "max_connections"},
    {"control", "max_request"},
    {"control", "idle_timeout"},
    {"persistence", "snapshot"},
    {"persistence", "save_on_shutdown"},
    {"persistence", "load_on_start"},
    {"daemon", "log_level"},
    {"daemon", "lock_timeout_ms"},
    {"daemon", "housekeeping_interval_ms"},
    {"daemon", "expire_slots_per_tick"},
    {"daemon", "slowlog_slower_than"},
    {"daemon", "slowlog_max_len"},
    {"metrics", "listen"},
    {"upstream", "address"},
    {"upstream", "user"},
    {"upstream", "password_file"},
    {"upstream", "prefixes"},
    {"upstream", "connect_timeout_ms"},
    {"upstream", "health_timeout_ms"},
    {"upstream", "backoff_max_ms"},
    {"upstream", "batch"},
};

#define N_SETTINGS (sizeof all_settings / sizeof all_settings[0])

/* ---- the sample file ---- */

static void test_sample_conf_is_the_defaults(void **state)
{
    struct fixture *f = *state;
    struct config c;
    if (config_load(SAMPLE_CONF, &c, f->err, sizeof f->err) != 0)
        fail_msg("%s refused:\n%s", SAMPLE_CONF, f->err);
    assert_string_equal(f->err, "");
    assert_string_equal(c.path, SAMPLE_CONF);
    struct config want;
    loaded_defaults(&want);
    /* The one setting the sample changes: a socket inside the tree, for
     * `make run`. */
    snprintf(want.socket_path, sizeof want.socket_path, "run/shmkvd.sock");
    assert_config_equal(&c, &want);
}

/* The sample documents every setting, each in its own section. */
static void test_sample_conf_lists_every_setting(void **state)
{
    (void)state;
    FILE *fp = fopen(SAMPLE_CONF, "r");
    assert_non_null(fp);
    bool seen[N_SETTINGS] = {false};
    char line[512], section[64] = "";
    while (fgets(line, sizeof line, fp) != NULL) {
        if (sscanf(line, "[%63[^]]]", section) == 1)
            continue;
        char name[64];
        if (sscanf(line, "%63[a-z_] =", name) != 1)
            continue;
        for (size_t i = 0; i < N_SETTINGS; i++)
            if (strcmp(all_settings[i].name, name) == 0 &&
                strcmp(all_settings[i].section, section) == 0)
                seen[i] = true;
    }
    fclose(fp);
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (!seen[i])
            fail_msg("%s does not show [%s] %s", SAMPLE_CONF,
                     all_settings[i].section, all_settings[i].name);
}

static void test_empty_file_is_the_defaults(void **state)
{
    struct fixture *f = *state;
    struct config want;
    loaded_defaults(&want);
    load_ok(f, "");
    assert_string_equal(f->err, "");
    assert_config_equal(&f->cfg, &want);
    load_ok(f, "; only comments\n# and blank lines\n\n   \n[store]\n");
    assert_config_equal(&f->cfg, &want);
}

/* ---- every setting ---- */

static void test_every_setting(void **state)
{
    struct fixture *f = *state;
    load_ok(f, "; every setting, none at its default\n"
               "[store]\n"
               "key = key:0x5eed1234\n"
               "size = 3G\n"
               "mode = 0640\n"
               "group = daemon\n"
               "max_key_size = 1K\n"
               "max_value_size = 2MiB\n"
               "max_entries = 100000\n"
               "eviction = allkeys-lru\n"
               "default_ttl = 3600\n"
               "max_handles = 64\n"
               "\n"
               "[control]\n"
               "socket = /tmp/shmkvd-test.sock   ; an inline comment\n"
               "socket_mode = 0600\n"
               "admin_users = root, daemon,4242\n"
               "admin_groups = daemon 0\t4243\n"
               "max_connections = 10\n"
               "max_request = 512KB\n"
               "idle_timeout = 0\n"
               "\n"
               "[persistence]\n"
               "snapshot = /var/lib/shmkvd/dump.shmkv\n"
               "save_on_shutdown = no\n"
               "load_on_start = off\n"
               "\n"
               "[daemon]\n"
               "log_level = debug\n"
               "lock_timeout_ms = 250\n"
               "housekeeping_interval_ms = 50\n"
               "expire_slots_per_tick = 16\n");
    const struct config *c = &f->cfg;
    assert_string_equal(c->path, f->conf);
    assert_string_equal(c->store_key, "key:0x5eed1234");
    assert_int_equal(c->store_size, 3ull << 30);
    assert_int_equal(c->store_mode, 0640);
    assert_string_equal(c->store_group, "daemon");
    assert_int_equal(c->store_gid, 1);
    assert_int_equal(c->max_key_bytes, 1024);
    assert_int_equal(c->max_value_bytes, 2 * MIB);
    assert_int_equal(c->max_entries, 100000);
    assert_int_equal(c->eviction, SHMKV_EVICT_LRU);
    assert_int_equal(c->default_ttl_s, 3600);
    assert_int_equal(c->max_handles, 64);
    assert_string_equal(c->socket_path, "/tmp/shmkvd-test.sock");
    assert_int_equal(c->socket_mode, 0600);
    assert_int_equal(c->n_admin_uids, 3);
    assert_int_equal(c->admin_uids[0], 0);
    assert_int_equal(c->admin_uids[1], 1);
    assert_int_equal(c->admin_uids[2], 4242);
    assert_int_equal(c->n_admin_gids, 3);
    assert_int_equal(c->admin_gids[0], 1);
    assert_int_equal(c->admin_gids[1], 0);
    assert_int_equal(c->admin_gids[2], 4243);
    assert_int_equal(c->max_connections, 10);
    assert_int_equal(c->max_request_bytes, 512 * 1024);
    assert_int_equal(c->idle_timeout_s, 0);
    assert_string_equal(c->snapshot_path, "/var/lib/shmkvd/dump.shmkv");
    assert_false(c->save_on_shutdown);
    assert_false(c->load_on_start);
    assert_int_equal(c->log_level, LOG_LEVEL_DEBUG);
    assert_int_equal(c->lock_timeout_ms, 250);
    assert_int_equal(c->housekeeping_ms, 50);
    assert_int_equal(c->expire_slots_per_tick, 16);
}

static void test_sizes(void **state)
{
    struct fixture *f = *state;
    static const struct {
        const char *text;
        uint64_t bytes;
    } sizes[] = {
        {"1M", MIB},
        {"1m", MIB},
        {"1MB", MIB},
        {"1mb", MIB},
        {"1MiB", MIB},
        {"1Mib", MIB},
        {"1048576", MIB},
        {"1048576B", MIB},
        {"1048577", MIB + 1},
        {"1024K", MIB},
        {"1024KiB", MIB},
        {"1536k", 1536 * 1024},
        {"3G", 3ull << 30},
        {"3GB", 3ull << 30},
        {"64G", 64ull << 30},
        {"64GiB", 64ull << 30},
        {"65536M", 64ull << 30},
    };
    char line[128];
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        snprintf(line, sizeof line, "size = %s", sizes[i].text);
        load_setting_ok(f, "store", line);
        assert_int_equal(f->cfg.store_size, sizes[i].bytes);
    }
    load_setting_ok(f, "store", "max_key_size = 1");
    assert_int_equal(f->cfg.max_key_bytes, 1);
    load_setting_ok(f, "store", "max_key_size = 65535B");
    assert_int_equal(f->cfg.max_key_bytes, 65535);
    load_setting_ok(f, "store", "max_value_size = 16M");
    assert_int_equal(f->cfg.max_value_bytes, 16 * MIB);
    load_setting_ok(f, "control", "max_request = 1K");
    assert_int_equal(f->cfg.max_request_bytes, 1024);
    load_setting_ok(f, "control", "max_request = 1G");
    assert_int_equal(f->cfg.max_request_bytes, 1ull << 30);
}

static void test_max_value_size_default(void **state)
{
    struct fixture *f = *state;
    /* 0 means 1M, or a quarter of size when that is smaller. */
    load_ok(f, "[store]\nsize = 2M\n");
    assert_int_equal(f->cfg.max_value_bytes, 512 * 1024);
    load_ok(f, "[store]\nsize = 1048577\nmax_value_size = 0\n");
    assert_int_equal(f->cfg.max_value_bytes, (MIB + 1) / 4);
    load_ok(f, "[store]\nsize = 64G\n");
    assert_int_equal(f->cfg.max_value_bytes, MIB);
    /* Exactly a quarter is allowed. */
    load_ok(f, "[store]\nsize = 4M\nmax_value_size = 1M\n");
    assert_int_equal(f->cfg.max_value_bytes, MIB);
    load_ok(f, "[store]\nmax_value_size = 16M\nsize = 64M\n");
    assert_int_equal(f->cfg.max_value_bytes, 16 * MIB);
}

static void test_modes(void **state)
{
    struct fixture *f = *state;
    static const struct {
        const char *text;
        unsigned mode;
    } modes[] = {
        {"0", 0},       {"0600", 0600}, {"644", 0644},
        {"0777", 0777}, {"777", 0777},  {"00660", 0660},
    };
    char line[64];
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        /* The store's owner needs read and write: other modes are refused
         * (below). */
        if ((modes[i].mode & 0600) == 0600) {
            snprintf(line, sizeof line, "mode = %s", modes[i].text);
            load_setting_ok(f, "store", line);
            assert_int_equal(f->cfg.store_mode, modes[i].mode);
        }
        snprintf(line, sizeof line, "socket_mode = %s", modes[i].text);
        load_setting_ok(f, "control", line);
        assert_int_equal(f->cfg.socket_mode, modes[i].mode);
    }
    load_setting_bad(f, "store", "mode = 0400",
                     "mode: 0400 leaves the owner without read and write");
    load_setting_bad(f, "store", "mode = 0",
                     "mode: 0 leaves the owner without read and write");
}

static void test_groups_and_users(void **state)
{
    struct fixture *f = *state;
    load_setting_ok(f, "store", "group = root");
    assert_string_equal(f->cfg.store_group, "root");
    assert_int_equal(f->cfg.store_gid, 0);
    load_setting_ok(f, "store", "group = daemon");
    assert_int_equal(f->cfg.store_gid, 1);
    load_setting_ok(f, "store", "group = 4242");
    assert_string_equal(f->cfg.store_group, "4242");
    assert_int_equal(f->cfg.store_gid, 4242);
    load_setting_ok(f, "store", "group =");
    assert_string_equal(f->cfg.store_group, "");
    assert_int_equal(f->cfg.store_gid, (gid_t)-1);

    load_setting_ok(f, "control", "admin_users = daemon");
    assert_int_equal(f->cfg.n_admin_uids, 1);
    assert_int_equal(f->cfg.admin_uids[0], 1);
    load_setting_ok(f, "control", "admin_users =");
    assert_int_equal(f->cfg.n_admin_uids, 0);
    load_setting_ok(f, "control", "admin_users = 0,,1 , , 4294967294");
    assert_int_equal(f->cfg.n_admin_uids, 3);
    assert_int_equal(f->cfg.admin_uids[2], 4294967294u);
    load_setting_ok(f, "control", "admin_groups = root,daemon");
    assert_int_equal(f->cfg.n_admin_gids, 2);
    assert_int_equal(f->cfg.admin_gids[0], 0);
    assert_int_equal(f->cfg.admin_gids[1], 1);

    /* CONFIG_MAX_IDS entries fit; one more does not. */
    char line[512];
    int n = snprintf(line, sizeof line, "admin_groups = 0");
    for (int i = 1; i < CONFIG_MAX_IDS; i++)
        n += snprintf(line + n, sizeof line - (size_t)n, ",%d", i);
    load_setting_ok(f, "control", line);
    assert_int_equal(f->cfg.n_admin_gids, CONFIG_MAX_IDS);
    assert_int_equal(f->cfg.admin_gids[CONFIG_MAX_IDS - 1], CONFIG_MAX_IDS - 1);
    snprintf(line + n, sizeof line - (size_t)n, ",99");
    load_setting_bad(f, "control", line, "at most 32 entries");
}

static void test_bools(void **state)
{
    struct fixture *f = *state;
    static const struct {
        const char *text;
        bool value;
    } bools[] = {
        {"yes", true}, {"no", false},  {"true", true}, {"false", false},
        {"on", true},  {"off", false}, {"1", true},    {"0", false},
        {"YES", true}, {"Off", false},
    };
    char line[64];
    for (size_t i = 0; i < sizeof bools / sizeof bools[0]; i++) {
        snprintf(line, sizeof line, "save_on_shutdown = %s", bools[i].text);
        load_setting_ok(f, "persistence", line);
        assert_int_equal(f->cfg.save_on_shutdown, bools[i].value);
        snprintf(line, sizeof line, "load_on_start = %s", bools[i].text);
        load_setting_ok(f, "persistence", line);
        assert_int_equal(f->cfg.load_on_start, bools[i].value);
    }
    load_setting_bad(f, "persistence", "load_on_start = maybe",
                     "load_on_start: 'maybe' is not yes or no");
    load_setting_bad(f, "persistence", "save_on_shutdown =",
                     "save_on_shutdown: '' is not yes or no");
}

static void test_eviction_and_log_level(void **state)
{
    struct fixture *f = *state;
    load_setting_ok(f, "store", "eviction = lru");
    assert_int_equal(f->cfg.eviction, SHMKV_EVICT_LRU);
    load_setting_ok(f, "store", "eviction = allkeys-lru");
    assert_int_equal(f->cfg.eviction, SHMKV_EVICT_LRU);
    load_setting_ok(f, "store", "eviction = noeviction");
    assert_int_equal(f->cfg.eviction, SHMKV_EVICT_NONE);
    load_setting_bad(f, "store", "eviction = random",
                     "eviction: 'random' is not a policy");

    static const struct {
        const char *text;
        enum log_level level;
    } levels[] = {
        {"error", LOG_LEVEL_ERROR},  {"warning", LOG_LEVEL_WARNING},
        {"warn", LOG_LEVEL_WARNING}, {"info", LOG_LEVEL_INFO},
        {"debug", LOG_LEVEL_DEBUG},  {"DEBUG", LOG_LEVEL_DEBUG},
    };
    char line[64];
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++) {
        snprintf(line, sizeof line, "log_level = %s", levels[i].text);
        load_setting_ok(f, "daemon", line);
        assert_int_equal(f->cfg.log_level, levels[i].level);
    }
    load_setting_bad(f, "daemon", "log_level = loud",
                     "log_level: 'loud' is not a level");
    assert_string_equal(log_level_name(LOG_LEVEL_WARNING), "warning");
}

static void test_keys(void **state)
{
    struct fixture *f = *state;
    load_setting_ok(f, "store", "key = 0x5eed0002");
    assert_string_equal(f->cfg.store_key, "0x5eed0002");
    load_setting_ok(f, "store", "key = key:0xffffffff");
    assert_string_equal(f->cfg.store_key, "key:0xffffffff");
    load_setting_ok(f, "store", "key = 1234");
    assert_string_equal(f->cfg.store_key, "1234");

    char keyfile[160], line[256];
    snprintf(keyfile, sizeof keyfile, "%s/keyfile", f->dir);
    write_text(keyfile, "");
    snprintf(line, sizeof line, "key = ftok:%s:7", keyfile);
    load_setting_ok(f, "store", line);
    assert_string_equal(f->cfg.store_key, line + strlen("key = "));
    snprintf(line, sizeof line, "key = ftok:%s:255", f->dir);
    load_setting_ok(f, "store", line);
}

static void test_crlf_and_bom(void **state)
{
    struct fixture *f = *state;
    load_ok(f, "\xef\xbb\xbf[store]\r\nsize = 2M\r\n\r\n[daemon]\r\n"
               "log_level = error\r\n");
    assert_int_equal(f->cfg.store_size, 2 * MIB);
    assert_int_equal(f->cfg.log_level, LOG_LEVEL_ERROR);
    load_bad(f, "[store]\r\nsize = 2M\r\n; comment\r\nmode = 9\r\n", 4,
             "mode: '9' is not a permission mode");
}

/* ---- bad lines, each with its line number ---- */

static void test_unknown_setting(void **state)
{
    struct fixture *f = *state;
    load_bad(f, "[store]\nsize = 64M\nbogus = 1\n", 3,
             "unknown setting 'bogus' in [store]");
    load_bad(f, "; comment\n\n[daemon]\n\n# comment\nverbose = yes\n", 6,
             "unknown setting 'verbose' in [daemon]");
    load_bad(f, "[store]\n= 1\n", 2, "unknown setting '' in [store]");
}

static void test_setting_in_wrong_section(void **state)
{
    struct fixture *f = *state;
    load_bad(f, "[control]\nsize = 64M\n", 2,
             "'size' belongs in [store], not [control]");
    load_bad(f, "[store]\nsize = 64M\n[daemon]\n\nsocket = /tmp/s\n", 5,
             "'socket' belongs in [control], not [daemon]");
    load_bad(f, "[persistence]\nlog_level = info\n", 2,
             "'log_level' belongs in [daemon], not [persistence]");
}

static void test_unknown_section(void **state)
{
    struct fixture *f = *state;
    load_bad(f, "[store]\nsize = 64M\n[storage]\n", 3,
             "unknown section [storage]");
    /* What follows an unknown section is not reported again. */
    load_bad(f, "[Store]\nsize = 64M\nbogus = 1\n", 1,
             "unknown section [Store]");
}

static void test_line_without_equals(void **state)
{
    struct fixture *f = *state;
    load_bad(f, "[store]\nsize 64M\n", 2,
             "'size 64M' is not a setting: want name = value");
    load_bad(f, "[store]\nsize: 64M\n", 2, "is not a setting");
    load_bad(f, "[store]\n\n\n   eviction\n", 4, "'eviction' is not a setting");
}

static void test_setting_before_section(void **state)
{
    struct fixture *f = *state;
    load_bad(f, "; comment\nsize = 64M\n[store]\n", 2,
             "'size = 64M' comes before any [section]");
}

static void test_bad_section_header(void **state)
{
    struct fixture *f = *state;
    load_bad(f, "[store\nsize = 64M\n", 1, "bad section header '[store'");
    load_bad(f, "[store]\n[control] socket = x\n", 2,
             "bad section header '[control] socket = x'");
    load_bad(f, "[store] ; fine\nsize = 2M\n[daemon] extra\n", 3,
             "bad section header");
    /* Settings under a malformed header are not checked against the
     * section before it. */
    load_bad(f, "[store]\nsize = 2M\n[control\nsize = 4M\nsocket = /x\n", 3,
             "bad section header '[control'");
    load_bad(f, "[control]\nsocket = /x\n[store x\nsocket = /y\n", 3,
             "bad section header");
}

static void test_not_a_number(void **state)
{
    struct fixture *f = *state;
    load_setting_bad(f, "store", "max_handles = ten",
                     "max_handles: 'ten' is not a whole number");
    load_setting_bad(f, "store", "max_entries = -1",
                     "max_entries: '-1' is not a whole number");
    load_setting_bad(f, "store", "default_ttl = 12s",
                     "default_ttl: '12s' is not a whole number");
    load_setting_bad(f, "control", "idle_timeout =",
                     "idle_timeout: '' is not a whole number");
    load_setting_bad(f, "control", "max_connections = 1.5",
                     "is not a whole number");
    load_setting_bad(f, "daemon", "lock_timeout_ms = 99999999999999999999",
                     "is not a whole number");
    load_setting_bad(f, "daemon", "housekeeping_interval_ms = 0x10",
                     "is not a whole number");
}

static void test_out_of_range(void **state)
{
    struct fixture *f = *state;
    static const struct {
        const char *section, *name;
        const char *below, *min, *max, *above; /* below NULL: min is 0 */
    } ranges[] = {
        {"store", "size", "1048575", "1048576", "68719476736", "68719476737"},
        {"store", "max_key_size", "0", "1", "65535", "65536"},
        {"store", "max_value_size", NULL, "0", "4294967295", "4294967296"},
        {"store", "max_entries", NULL, "0", "4294967296", "4294967297"},
        {"store", "default_ttl", NULL, "0", "4294967295", "4294967296"},
        {"store", "max_handles", "0", "1", "65536", "65537"},
        {"control", "max_connections", "0", "1", "65536", "65537"},
        {"control", "max_request", "1023", "1024", "1073741824", "1073741825"},
        {"control", "idle_timeout", NULL, "0", "31536000", "31536001"},
        {"daemon", "lock_timeout_ms", "0", "1", "3600000", "3600001"},
        {"daemon", "housekeeping_interval_ms", "9", "10", "60000", "60001"},
        {"daemon", "slowlog_max_len", NULL, "0", "100000", "100001"},
        {"daemon", "expire_slots_per_tick", "15", "16", "16777216", "16777217"},
    };
    char line[160], why[160], text[320];
    for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++) {
        const char *sec = ranges[i].section, *name = ranges[i].name;
        const char *bad[2] = {ranges[i].below, ranges[i].above};
        for (int b = 0; b < 2; b++) {
            if (bad[b] == NULL)
                continue;
            snprintf(line, sizeof line, "%s = %s", name, bad[b]);
            snprintf(why, sizeof why, "%s: %s is out of range (%s to %s)", name,
                     bad[b], ranges[i].min, ranges[i].max);
            load_setting_bad(f, sec, line, why);
        }
        /* Both bounds are accepted (the largest max_value_size with a
         * store big enough for it). */
        const char *good[2] = {ranges[i].min, ranges[i].max};
        for (int g = 0; g < 2; g++) {
            if (strcmp(name, "max_value_size") == 0)
                snprintf(text, sizeof text, "[store]\nsize = 64G\n%s = %s\n",
                         name, good[g]);
            else
                snprintf(text, sizeof text, "[%s]\n%s = %s\n", sec, name,
                         good[g]);
            load_ok(f, text);
        }
    }
    assert_int_equal(f->cfg.expire_slots_per_tick, 16777216);
    /* A listen address: ADDRESS:PORT, IPv6 in brackets. */
    load_setting_bad(f, "metrics", "listen = localhost:9187",
                     "listen: 'localhost:9187' is not ADDRESS:PORT");
    load_setting_bad(f, "metrics", "listen = 127.0.0.1:0",
                     "is not ADDRESS:PORT");
    load_setting_bad(f, "metrics", "listen = 127.0.0.1", "is not ADDRESS:PORT");
    load_setting_bad(f, "metrics", "listen = ::1:9187", "is not ADDRESS:PORT");
    load_ok(f, "[metrics]\nlisten = [::1]:9187\n");
    assert_string_equal(f->cfg.metrics_listen, "[::1]:9187");
    load_ok(f, "[metrics]\nlisten = 127.0.0.1:65535\n");
    /* An upstream: HOST:PORT, [v6]:PORT or unix:/absolute/path. */
    load_setting_bad(f, "upstream", "address = redis.example",
                     "address: 'redis.example' is not HOST:PORT");
    load_setting_bad(f, "upstream", "address = unix:relative.sock",
                     "is not HOST:PORT");
    load_setting_bad(f, "upstream", "address = host:70000", "is not HOST:PORT");
    load_ok(f, "[upstream]\naddress = redis.example:6379\n");
    load_ok(f, "[upstream]\naddress = unix:/run/redis/redis.sock\n");
    load_ok(f, "[upstream]\naddress = [::1]:6379\n");
    /* Sizes are checked after their suffix is applied. */
    load_setting_bad(f, "store", "max_key_size = 64K",
                     "max_key_size: 64K is out of range (1 to 65535)");
    load_setting_bad(f, "store", "size = 2T", "size: 2T is out of range");
    load_setting_bad(f, "store", "max_value_size = 4G",
                     "max_value_size: 4G is out of range");
}

static void test_bad_size(void **state)
{
    struct fixture *f = *state;
    static const char *const bad[] = {
        "64X", "64MM", "64 M", "1.5M",     "64Mi", "64iB",
        "M",   "-1M",  "",     "0x100000", "64BB", "99999999999T",
    };
    char line[128], why[160];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(line, sizeof line, "size = %s", bad[i]);
        snprintf(why, sizeof why, "size: '%s' is not a size", bad[i]);
        load_setting_bad(f, "store", line, why);
    }
    load_setting_bad(f, "control", "max_request = 4Q",
                     "max_request: '4Q' is not a size");
}

static void test_bad_mode(void **state)
{
    struct fixture *f = *state;
    static const char *const bad[] = {"0800", "rw-r--r--", "01000", "",
                                      "-1",   "0x1ff",     "66 0"};
    char line[128], why[160];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(line, sizeof line, "mode = %s", bad[i]);
        snprintf(why, sizeof why, "mode: '%s' is not a permission mode",
                 bad[i]);
        load_setting_bad(f, "store", line, why);
        snprintf(line, sizeof line, "socket_mode = %s", bad[i]);
        snprintf(why, sizeof why, "socket_mode: '%s' is not a permission mode",
                 bad[i]);
        load_setting_bad(f, "control", line, why);
    }
}

/* readers and writers become the store's mode and group; what System V
 * permissions cannot say is refused at its line. */
static void test_readers_and_writers(void **state)
{
    struct fixture *f = *state;
    struct {
        const char *text;
        unsigned mode;
        const char *group;
    } ok[] = {
        {"readers = none\nwriters = none", 0600, ""},
        {"readers = all", 0644, ""},
        {"readers = daemon", 0640, "daemon"},
        {"writers = daemon", 0660, "daemon"},
        {"writers = daemon\nreaders = all", 0664, "daemon"},
        {"writers = daemon\nreaders = daemon", 0660, "daemon"},
        {"writers = all", 0666, ""},
        {"writers = all\nreaders = all", 0666, ""},
        {"readers =\nwriters =\nmode = 0640\ngroup = daemon", 0640, "daemon"},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char text[256];
        snprintf(text, sizeof text, "[store]\n%s\n", ok[i].text);
        load_ok(f, text);
        if (f->cfg.store_mode != ok[i].mode)
            fail_msg("%s: mode 0%o, not 0%o", ok[i].text, f->cfg.store_mode,
                     ok[i].mode);
        assert_string_equal(f->cfg.store_group, ok[i].group);
        if (ok[i].group[0] != '\0')
            assert_int_equal(f->cfg.store_gid, getgrnam("daemon")->gr_gid);
        else
            assert_int_equal(f->cfg.store_gid, (gid_t)-1);
    }
    load_bad(f, "[store]\nwriters = daemon\nreaders = root\n", 3,
             "readers: a store carries one group");
    /* Readers use the socket: with everyone reading, everyone connects,
     * unless socket_mode is given. */
    load_ok(f, "[store]\nreaders = all\n");
    assert_int_equal(f->cfg.socket_mode, 0666);
    load_ok(f, "[store]\nreaders = daemon\n");
    assert_int_equal(f->cfg.socket_mode, 0660);
    load_ok(f, "[store]\nreaders = all\n[control]\nsocket_mode = 0600\n");
    assert_int_equal(f->cfg.socket_mode, 0600);
    /* An empty group line, as the sample has, says nothing. */
    load_ok(f, "[store]\nreaders = all\ngroup =\n");
    assert_int_equal(f->cfg.store_mode, 0644);
    load_bad(f, "[store]\nwriters = all\nreaders = root\n", 3,
             "with writers = all, everyone reads");
    load_bad(f, "[store]\nreaders = all\nmode = 0640\n", 3,
             "mode: readers and writers (line 2) already say");
    load_bad(f, "[store]\ngroup = daemon\nwriters = daemon\n", 2,
             "group: readers and writers (line 3) already say");
    load_setting_bad(f, "store", "readers = no_such_group_shmkv",
                     "readers: 'no_such_group_shmkv' is not none, all or a "
                     "group");
    load_setting_bad(f, "store", "writers = 4294967295", "writers: ");
}

static void test_unknown_user_or_group(void **state)
{
    struct fixture *f = *state;
    load_setting_bad(f, "store", "group = no_such_group_shmkv",
                     "group: no group named 'no_such_group_shmkv'");
    load_setting_bad(f, "store", "group = 4294967295",
                     "group: no group named '4294967295'");
    load_setting_bad(f, "control", "admin_users = root, no_such_user_shmkv",
                     "admin_users: no user named 'no_such_user_shmkv'");
    load_setting_bad(f, "control", "admin_users = 4294967295",
                     "admin_users: no user named '4294967295'");
    load_setting_bad(f, "control", "admin_groups = daemon,no_such_group_shmkv",
                     "admin_groups: no group named 'no_such_group_shmkv'");
}

static void test_bad_key(void **state)
{
    struct fixture *f = *state;
    static const char *const bad[] = {
        "0",
        "0x100000000",
        "banana",
        "key:",
        "-5",
        "ftok:",
        "ftok:/tmp",
        "ftok:/tmp:0",
        "ftok:/tmp:256",
        "ftok:/tmp:x",
        "ftok:/no/such/shmkv/path:1",
    };
    char line[128];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(line, sizeof line, "key = %s", bad[i]);
        load_setting_bad(f, "store", line, "key: ");
    }
    load_setting_bad(f, "store", "key =", "key: empty");
    load_setting_bad(f, "store", "key = ftok:/no/such/shmkv/path:1",
                     "/no/such/shmkv/path");
}

static void test_duplicate_setting(void **state)
{
    struct fixture *f = *state;
    load_bad(f, "[store]\nsize = 64M\n\nsize = 128M\n", 4,
             "size is set twice (first on line 2)");
    load_bad(f,
             "[store]\nmode = 0600\n[control]\nsocket = /x\n[store]\n"
             "mode = 0600\n",
             6, "mode is set twice (first on line 2)");
    /* A value that was refused still counts as given. */
    assert_int_equal(load_text(f, "[store]\nsize = huge\nsize = 2M\n"), -1);
    assert_non_null(strstr(f->err, ":3: size is set twice (first on line 2)"));
}

static void test_line_too_long(void **state)
{
    struct fixture *f = *state;
    char text[20000];
    /* 198 characters is the longest line; trailing blanks do not count. */
    int n = snprintf(text, sizeof text, "[persistence]\nsnapshot = /%0186d", 0);
    assert_int_equal(n, 14 + 198);
    snprintf(text + n, sizeof text - (size_t)n, "      \n");
    load_ok(f, text);
    assert_int_equal(strlen(f->cfg.snapshot_path), 187);

    snprintf(text, sizeof text, "[persistence]\n\nsnapshot = /%0187d\n", 0);
    load_bad(f, text, 3, "line too long (at most 198 characters)");

    /* A line longer than the reader's buffer: the lines after it keep
     * their numbers. */
    n = snprintf(text, sizeof text, "[persistence]\nsnapshot = /");
    memset(text + n, 'a', 12000);
    n += 12000;
    snprintf(text + n, sizeof text - (size_t)n, "\nbogus = 1\n");
    assert_int_equal(load_text(f, text), -1);
    char want[512];
    snprintf(want, sizeof want,
             "%s:2: line too long (at most 198 characters)\n"
             "%s:3: unknown setting 'bogus' in [persistence]\n",
             f->conf, f->conf);
    assert_string_equal(f->err, want);
}

static void test_max_value_over_quarter(void **state)
{
    struct fixture *f = *state;
    load_bad(f, "[store]\nsize = 4M\n; values\nmax_value_size = 1048577\n", 4,
             "max_value_size 1048577 is over a quarter of the store size "
             "(1048576)");
    /* Reported on max_value_size's line wherever size is. */
    load_bad(f, "[store]\nmax_value_size = 32M\n\nsize = 64M\n", 2,
             "is over a quarter of the store size (16777216)");
    /* Against the default size of 64M. */
    load_bad(f,
             "[control]\nmax_connections = 5\n[store]\n"
             "max_value_size = 17M\n",
             4, "is over a quarter of the store size (16777216)");
}

static void test_admin_reserved(void **state)
{
    struct fixture *f = *state;
    load_ok(f, "[control]\nrequest_timeout = 30\nadmin_reserved = 2\n");
    assert_int_equal(f->cfg.request_timeout_s, 30);
    assert_int_equal(f->cfg.admin_reserved, 2);
    /* The default leaves at least one connection for everyone. */
    load_ok(f, "[control]\nmax_connections = 3\n");
    assert_int_equal(f->cfg.admin_reserved, 2);
    /* A value given must leave one. */
    load_bad(f, "[control]\nmax_connections = 4\n\nadmin_reserved = 4\n", 4,
             "admin_reserved 4 leaves no connection for others: it must be "
             "under max_connections (4)");
    load_bad(f, "[control]\nrequest_timeout = -1\n", 2, "request_timeout");
}

static void test_socket_path_too_long(void **state)
{
    struct fixture *f = *state;
    char text[512];
    snprintf(text, sizeof text, "[control]\nsocket = /%0106d\n", 0);
    load_ok(f, text);
    assert_int_equal(strlen(f->cfg.socket_path), 107);
    snprintf(text, sizeof text,
             "[store]\nsize = 2M\n[control]\nsocket = /%0107d\n", 0);
    load_bad(f, text, 4, "socket: path longer than 107 bytes");
    load_bad(f, "[control]\nsocket =\n", 2, "socket: a path is required");
}

/* Every bad line of a file is reported, in order; settings under an
 * unknown or malformed section header are not reported again. */
static void test_all_problems_reported(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(load_text(f, "; several problems\n"         /* 1 */
                                  "[store]\n"                    /* 2 */
                                  "size = 12Q\n"                 /* 3 */
                                  "bogus = 1\n"                  /* 4 */
                                  "mode = 0999\n"                /* 5 */
                                  "[control]\n"                  /* 6 */
                                  "max_connections = 0\n"        /* 7 */
                                  "size = 64M\n"                 /* 8 */
                                  "just words\n"                 /* 9 */
                                  "[nonsense]\n"                 /* 10 */
                                  "anything = 1\n"               /* 11 */
                                  "[daemon]\n"                   /* 12 */
                                  "log_level = loud\n"           /* 13 */
                                  "log_level = info\n"           /* 14 */
                                  "[persistence\n"               /* 15 */
                                  "log_level = debug\n"          /* 16 */
                                  "[control]\n"                  /* 17 */
                                  "admin_users = nobody_shmkv\n" /* 18 */
                                  "max_request = 100\n"),        /* 19 */
                     -1);
    static const int lines[] = {3, 4, 5, 7, 8, 9, 10, 13, 14, 15, 18, 19};
    size_t n = sizeof lines / sizeof lines[0];
    if (count_lines(f->err) != n)
        fail_msg("wanted %zu problems, got:\n%s", n, f->err);
    const char *at = f->err;
    for (size_t i = 0; i < n; i++) {
        char prefix[192];
        snprintf(prefix, sizeof prefix, "%s:%d: ", f->conf, lines[i]);
        if (strncmp(at, prefix, strlen(prefix)) != 0)
            fail_msg("problem %zu should start '%s':\n%s", i + 1, prefix,
                     f->err);
        at = strchr(at, '\n') + 1;
    }
}

static void test_missing_file(void **state)
{
    struct fixture *f = *state;
    char path[192], want[256];
    snprintf(path, sizeof path, "%s/no-such.conf", f->dir);
    assert_int_equal(config_load(path, &f->cfg, f->err, sizeof f->err), -1);
    snprintf(want, sizeof want, "%s: cannot read: No such file or directory\n",
             path);
    assert_string_equal(f->err, want);
    /* A directory opens but cannot be read. */
    assert_int_equal(config_load(f->dir, &f->cfg, f->err, sizeof f->err), -1);
    assert_int_equal(strncmp(f->err, f->dir, strlen(f->dir)), 0);
    assert_int_equal(count_lines(f->err), 1);
}

/* A small err buffer holds a NUL-terminated prefix of the full report and
 * nothing is written past it. */
static void test_err_buffer_bounds(void **state)
{
    struct fixture *f = *state;
    write_text(f->conf, "[store]\nsize = 12Q\nbogus = 1\nmode = 0999\n"
                        "[nonsense]\n[control]\nmax_connections = 0\n");
    char full[4096];
    struct config c;
    assert_int_equal(config_load(f->conf, &c, full, sizeof full), -1);
    assert_int_equal(count_lines(full), 5);
    size_t full_len = strlen(full);

    enum { GUARD = 64 };
    char *buf = malloc(full_len + 8 + GUARD);
    assert_non_null(buf);
    for (size_t cap = 0; cap <= full_len + 8; cap++) {
        memset(buf, 0x5a, cap + GUARD);
        assert_int_equal(config_load(f->conf, &c, buf, cap), -1);
        for (size_t i = cap; i < cap + GUARD; i++)
            if ((unsigned char)buf[i] != 0x5a)
                fail_msg("err_cap %zu: byte %zu written", cap, i);
        if (cap == 0)
            continue;
        size_t len = strnlen(buf, cap);
        if (len == cap)
            fail_msg("err_cap %zu: not NUL-terminated", cap);
        if (strncmp(buf, full, len) != 0)
            fail_msg("err_cap %zu: '%s' is not a prefix of the report", cap,
                     buf);
        size_t want = full_len < cap - 1 ? full_len : cap - 1;
        if (len != want)
            fail_msg("err_cap %zu: %zu bytes of the report, wanted %zu", cap,
                     len, want);
    }
    /* A missing file with tiny buffers too. */
    char path[192];
    snprintf(path, sizeof path, "%s/missing.conf", f->dir);
    for (size_t cap = 0; cap < 24; cap++) {
        memset(buf, 0x5a, cap + GUARD);
        assert_int_equal(config_load(path, &c, buf, cap), -1);
        for (size_t i = cap; i < cap + GUARD; i++)
            assert_int_equal((unsigned char)buf[i], 0x5a);
        if (cap > 0)
            assert_true(strnlen(buf, cap) < cap);
    }
    /* No buffer at all. */
    assert_int_equal(config_load(path, &c, NULL, 0), -1);
    free(buf);
}

/* ---- printing ---- */

/* Prints cfg to a file in the test directory and loads that file. */
static void print_and_reload(struct fixture *f, const struct config *cfg,
                             struct config *out, char *text, size_t cap)
{
    char path[192];
    snprintf(path, sizeof path, "%s/printed.conf", f->dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    config_print(cfg, fp);
    assert_int_equal(fclose(fp), 0);
    if (config_load(path, out, f->err, sizeof f->err) != 0)
        fail_msg("printed config refused:\n%s", f->err);
    fp = fopen(path, "r");
    assert_non_null(fp);
    size_t n = fread(text, 1, cap - 1, fp);
    text[n] = '\0';
    fclose(fp);
}

static void assert_round_trip(struct fixture *f, const char *source)
{
    load_ok(f, source);
    struct config first = f->cfg, second, third;
    static char text1[8192], text2[8192];
    print_and_reload(f, &first, &second, text1, sizeof text1);
    assert_config_equal(&first, &second);
    /* Printing is stable: the reloaded config prints the same settings
     * (the first line names the file they came from). */
    print_and_reload(f, &second, &third, text2, sizeof text2);
    assert_string_equal(strchr(text1, '\n'), strchr(text2, '\n'));
}

static void test_print_round_trip(void **state)
{
    struct fixture *f = *state;
    assert_round_trip(f, "");
    char keyfile[160], text[2048];
    snprintf(keyfile, sizeof keyfile, "%s/keyfile", f->dir);
    write_text(keyfile, "");
    snprintf(text, sizeof text,
             "[store]\n"
             "key = ftok:%s:9\n"
             "size = 1048577\n"
             "mode = 0600\n"
             "group = 4242\n"
             "max_key_size = 1000\n"
             "max_value_size = 1023\n"
             "max_entries = 4294967296\n"
             "eviction = allkeys-lru\n"
             "default_ttl = 4294967295\n"
             "max_handles = 65536\n"
             "[control]\n"
             "socket = /tmp/a socket with spaces\n"
             "socket_mode = 0777\n"
             "admin_users = daemon, 4242, 0\n"
             "admin_groups = 4243, root\n"
             "max_connections = 1\n"
             "max_request = 1572865\n"
             "idle_timeout = 31536000\n"
             "[persistence]\n"
             "snapshot = /var/lib/shmkvd/dump.shmkv\n"
             "save_on_shutdown = off\n"
             "load_on_start = false\n"
             "[daemon]\n"
             "log_level = warn\n"
             "lock_timeout_ms = 3600000\n"
             "housekeeping_interval_ms = 10\n"
             "expire_slots_per_tick = 16777216\n",
             keyfile);
    assert_round_trip(f, text);
    assert_round_trip(f, "[store]\nsize = 1536K\nmax_value_size = 1025\n"
                         "[control]\nmax_request = 1G\nadmin_users =\n");
    assert_round_trip(f, "[store]\nsize = 63G\ngroup = daemon\n"
                         "[control]\nmax_request = 1025\n");

    /* Sizes print with the largest exact suffix. */
    static char printed[8192];
    struct config c;
    load_ok(f, "[store]\nsize = 1048577\nmax_value_size = 3K\n"
               "[control]\nmax_request = 1536K\n");
    print_and_reload(f, &f->cfg, &c, printed, sizeof printed);
    assert_non_null(strstr(printed, "\nsize = 1048577\n"));
    assert_non_null(strstr(printed, "\nmax_value_size = 3K\n"));
    assert_non_null(strstr(printed, "\nmax_request = 1536K\n"));

    /* The sample file too. */
    struct config sample, again;
    assert_int_equal(config_load(SAMPLE_CONF, &sample, f->err, sizeof f->err),
                     0);
    print_and_reload(f, &sample, &again, printed, sizeof printed);
    assert_config_equal(&sample, &again);
}

/* ---- reloading ---- */

static void test_restart_needed(void **state)
{
    struct fixture *f = *state;
    struct config old;
    load_ok(f, "");
    old = f->cfg;
    char buf[512];

    static const struct {
        const char *section, *line, *name; /* name NULL: reloadable */
    } changes[] = {
        {"store", "key = 0x5eed0099", "key"},
        {"store", "size = 128M", NULL},
        {"store", "huge_pages = try", "huge_pages"},
        {"store", "max_size = 1G", NULL},
        {"store", "grow_at = 80", NULL},
        {"store", "mode = 0600", "mode"},
        {"store", "group = daemon", "group"},
        {"store", "max_key_size = 100", "max_key_size"},
        {"store", "max_value_size = 2M", "max_value_size"},
        {"store", "max_entries = 1000", "max_entries"},
        {"store", "eviction = lru", "eviction"},
        {"store", "max_handles = 16", "max_handles"},
        {"control", "socket = /tmp/other.sock", "socket"},
        {"control", "socket_mode = 0666", "socket_mode"},
        {"daemon", "lock_timeout_ms = 100", "lock_timeout_ms"},
        {"store", "default_ttl = 60", NULL},
        {"control", "admin_users = daemon", NULL},
        {"control", "admin_groups = daemon", NULL},
        {"control", "max_connections = 5", NULL},
        {"control", "max_request = 1M", NULL},
        {"control", "idle_timeout = 5", NULL},
        {"persistence", "snapshot = /tmp/dump", NULL},
        {"persistence", "save_on_shutdown = no", NULL},
        {"persistence", "load_on_start = no", NULL},
        {"daemon", "log_level = debug", NULL},
        {"daemon", "housekeeping_interval_ms = 1000", NULL},
        {"daemon", "expire_slots_per_tick = 100", NULL},
        {"metrics", "listen = 127.0.0.1:9187", "[metrics] listen"},
        /* The defaults spelled differently change nothing. */
        {"store", "size = 65536K", NULL},
        {"store", "max_value_size = 1M", NULL},
    };
    for (size_t i = 0; i < sizeof changes / sizeof changes[0]; i++) {
        load_setting_ok(f, changes[i].section, changes[i].line);
        memset(buf, 'x', sizeof buf);
        int n = config_restart_needed(&old, &f->cfg, buf, sizeof buf);
        const char *want = changes[i].name ? changes[i].name : "";
        if (n != (changes[i].name ? 1 : 0) || strcmp(buf, want) != 0)
            fail_msg("after '%s': %d '%s', wanted '%s'", changes[i].line, n,
                     buf, want);
        /* And back. */
        assert_int_equal(config_restart_needed(&f->cfg, &old, buf, sizeof buf),
                         n);
    }

    load_ok(f, "[store]\nkey = 0x5eed0099\nsize = 128M\nmode = 0600\n"
               "group = daemon\nmax_key_size = 100\nmax_value_size = 2M\n"
               "max_entries = 1000\neviction = lru\ndefault_ttl = 5\n"
               "max_handles = 16\nhuge_pages = yes\n"
               "[control]\nsocket = /tmp/other.sock\nsocket_mode = 0666\n"
               "idle_timeout = 1\n"
               "[daemon]\nlock_timeout_ms = 100\nlog_level = error\n");
    static const char all[] =
        "key, mode, group, max_key_size, max_value_size, max_entries, "
        "eviction, max_handles, huge_pages, socket, socket_mode, "
        "lock_timeout_ms";
    assert_int_equal(config_restart_needed(&old, &f->cfg, buf, sizeof buf), 12);
    assert_string_equal(buf, all);
    assert_int_equal(config_restart_needed(&old, &old, buf, sizeof buf), 0);
    assert_string_equal(buf, "");

    /* A short buffer holds a NUL-terminated prefix; the count is whole. */
    for (size_t cap = 1; cap < sizeof all + 2; cap++) {
        char small[sizeof all + 2 + 16];
        memset(small, 'x', sizeof small);
        assert_int_equal(config_restart_needed(&old, &f->cfg, small, cap), 12);
        size_t len = strnlen(small, cap);
        assert_true(len < cap);
        assert_int_equal(strncmp(small, all, len), 0);
        assert_int_equal(len,
                         cap - 1 < sizeof all - 1 ? cap - 1 : sizeof all - 1);
        for (size_t i = cap; i < sizeof small; i++)
            assert_int_equal(small[i], 'x');
    }
    char untouched = 'x';
    assert_int_equal(config_restart_needed(&old, &f->cfg, &untouched, 0), 12);
    assert_int_equal(untouched, 'x');
}

/* ---- config_parse_size ---- */

static void test_parse_size(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        uint64_t bytes;
    } good[] = {
        {"0", 0},
        {"1", 1},
        {"0K", 0},
        {"1B", 1},
        {"1K", 1024},
        {"1k", 1024},
        {"1KB", 1024},
        {"1kb", 1024},
        {"1KiB", 1024},
        {"1Kib", 1024},
        {"64M", 64 * MIB},
        {"2G", 2ull << 30},
        {"5T", 5ull << 40},
        {"007", 7},
        {"16777215T", 16777215ull << 40},
        {"18014398509481983K", 18014398509481983ull << 10},
        {"18446744073709551615", UINT64_MAX},
        {"18446744073709551615B", UINT64_MAX},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        uint64_t v = 12345;
        if (config_parse_size(good[i].text, &v) != 0)
            fail_msg("'%s' refused", good[i].text);
        if (v != good[i].bytes)
            fail_msg("'%s' gave %" PRIu64 ", wanted %" PRIu64, good[i].text, v,
                     good[i].bytes);
    }
    static const char *const bad[] = {
        "",
        "K",
        "B",
        "iB",
        "1.5M",
        "-1",
        "+1",
        " 1",
        "1 ",
        "1 K",
        "1X",
        "1KK",
        "1KBB",
        "1KiBB",
        "1Ki",
        "1iB",
        "1BB",
        "0x10",
        "99999999999T",
        "16777216T",
        "18014398509481984K",
        "18446744073709551616",
        "99999999999999999999999",
        "1e6",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t v = 12345;
        if (config_parse_size(bad[i], &v) == 0)
            fail_msg("'%s' accepted as %" PRIu64, bad[i], v);
        assert_int_equal(v, 12345);
    }
    uint64_t v = 12345;
    assert_int_equal(config_parse_size(NULL, &v), -1);
    assert_int_equal(v, 12345);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_sample_conf_is_the_defaults),
        T(test_sample_conf_lists_every_setting),
        T(test_empty_file_is_the_defaults),
        T(test_every_setting),
        T(test_sizes),
        T(test_max_value_size_default),
        T(test_modes),
        T(test_groups_and_users),
        T(test_bools),
        T(test_eviction_and_log_level),
        T(test_keys),
        T(test_crlf_and_bom),
        T(test_unknown_setting),
        T(test_setting_in_wrong_section),
        T(test_unknown_section),
        T(test_line_without_equals),
        T(test_setting_before_section),
        T(test_bad_section_header),
        T(test_not_a_number),
        T(test_out_of_range),
        T(test_bad_size),
        T(test_bad_mode),
        T(test_unknown_user_or_group),
        T(test_readers_and_writers),
        T(test_bad_key),
        T(test_duplicate_setting),
        T(test_line_too_long),
        T(test_max_value_over_quarter),
        T(test_admin_reserved),
        T(test_socket_path_too_long),
        T(test_all_problems_reported),
        T(test_missing_file),
        T(test_err_buffer_bounds),
        T(test_print_round_trip),
        T(test_restart_needed),
        T(test_parse_size),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
