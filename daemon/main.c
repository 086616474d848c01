/*
 * main.c - shmkvd: owns one store, from its config file to its removal.
 *
 * Start: read the config (refuse on any bad line), create the store, or
 * adopt the one a crashed daemon left (never one whose owner is alive, nor
 * one that is not a shmkv store of this layout), load the snapshot if
 * configured, open the control socket, and tell systemd READY=1: from then
 * on clients can attach. Run: one libevent loop for the socket, signals and
 * the housekeeping timer, which expires TTLs a slice at a time (so memory
 * of keys no one reads again comes back) and pings the watchdog. Stop
 * (SIGTERM, SIGINT, SHUTDOWN): stop accepting, save if configured, mark
 * the store closed so attached clients get SHMKV_ECLOSED, remove the
 * segments and the socket, exit 0. SIGHUP re-reads the config and applies
 * what can change at run time, naming what needs a restart.
 */
#include <errno.h>
#include <limits.h>
#include <inttypes.h>
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "log.h"
#include "notify.h"
#include "snapshot.h"

#define EXPIRE_TICK_BUDGET 16 /* expire slices per tick while they pay */

struct runtime {
    struct daemon d;
    struct event *sig_term, *sig_int, *sig_hup, *housekeeping, *watchdog;
    struct event *stop_now;
    int ready_fd; /* background start: tells the parent it is ready */
    uint64_t ticks;
};

/* How much longer than its timeout systemd should wait for a snapshot load
 * or the shutdown save: five minutes. */
#define LONG_TASK_USEC 300000000ull

static struct runtime rt;

uint64_t daemon_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Logs the store's liveness and recovery events that are new since the
 * last tick: whichever process revoked a section or recovered the store
 * recorded it there. */
static void store_events_log(struct daemon *d)
{
    struct shmkv_event ev[16];
    for (;;) {
        uint64_t lost = 0;
        int n = shmkv_events(d->kv, &d->event_cursor, ev, 16, &lost);
        if (lost > 0)
            log_warning("%llu store events were overwritten before they "
                        "could be logged",
                        (unsigned long long)lost);
        for (int i = 0; i < n; i++) {
            const struct shmkv_event *e = &ev[i];
            switch (e->type) {
            case SHMKV_EVENT_REVOKED:
                log_warning("revoked the read section of pid %d: a writer "
                            "waited %llu ms for it (reader_timeout_ms); its "
                            "reader gets SHMKV_ESTALE",
                            (int)e->pid, (unsigned long long)e->duration_ms);
                break;
            case SHMKV_EVENT_DEAD_READER:
                log_warning("pid %d died inside a read section; its section "
                            "was dropped",
                            (int)e->pid);
                break;
            case SHMKV_EVENT_RECOVERED:
                log_warning("pid %d died holding or waiting for the store's "
                            "write lock: lock replaced in %llu ms%s",
                            (int)e->pid, (unsigned long long)e->duration_ms,
                            e->detail != 0 ? ", its write repaired" : "");
                break;
            case SHMKV_EVENT_SLOW_WRITER:
                log_warning("pid %d has held the store's %s lock for at least "
                            "%llu ms; writers wait behind it",
                            (int)e->pid, e->detail == 4 ? "read" : "write",
                            (unsigned long long)e->duration_ms);
                break;
            case SHMKV_EVENT_RESIZE_ABORTED: {
                static const char *const why[] = {
                    "", "a writer died during it", "its resizer died",
                    "the store's data grew past the new size",
                    "a writer could not attach the new segment"};
                log_warning("the resize by pid %d was given up: %s; the "
                            "store is as it was",
                            (int)e->pid, e->detail < 5 ? why[e->detail] : "?");
                break;
            }
            case SHMKV_EVENT_RESIZED:
                log_info("store event: pid %d's resize to %llu bytes ended "
                         "after %llu ms",
                         (int)e->pid, (unsigned long long)e->detail,
                         (unsigned long long)e->duration_ms);
                break;
            default:
                log_info("store event %u about pid %d", (unsigned)e->type,
                         (int)e->pid);
            }
        }
        if (n < 16)
            break;
    }
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: shmkvd [-c FILE] [--foreground] [--check-config]\n"
            "  -c, --config FILE   config file (default %s)\n"
            "  -f, --foreground    stay in the foreground, log to stderr\n"
            "  -t, --check-config  check the config, print the effective\n"
            "                      settings, and exit\n"
            "  -v, --version       print the version and exit\n"
            "  -h, --help          this help\n",
            CONFIG_DEFAULT_PATH);
}

static void store_options(const struct config *cfg, struct shmkv_options *o)
{
    shmkv_options_init(o);
    o->key = cfg->store_key;
    o->size_bytes = cfg->store_size;
    o->mode = cfg->store_mode;
    o->gid = cfg->store_gid == (gid_t)-1 ? -1 : (int64_t)cfg->store_gid;
    o->max_entries = cfg->max_entries;
    o->max_key_bytes = cfg->max_key_bytes;
    o->max_value_bytes = cfg->max_value_bytes;
    o->eviction = cfg->eviction;
    o->lock_timeout_ms = cfg->lock_timeout_ms;
    o->reader_timeout_ms = cfg->reader_timeout_ms;
    o->max_clients = cfg->max_handles;
    o->huge_pages = cfg->huge_pages;
}

/* Names the control socket, by its absolute path, as where read-only
 * handles register their users' reader chunks (libshmkv's clients.c). */
static void register_readers_here(struct daemon *d)
{
    char path[PATH_MAX];
    int rc = SHMKV_EINVAL;
    if (realpath(d->socket_path, path) != NULL)
        rc = shmkv_set_registrar(d->kv, path);
    if (rc != 0)
        log_warning("read-only handles of different users will share the "
                    "reader segment: the socket's absolute path cannot be "
                    "named in the store (%s)",
                    rc == SHMKV_EINVAL ? "over 107 bytes, or unresolved"
                                       : shmkv_last_error());
}

/* Creates the store, or adopts one a dead daemon left. */
static int store_open(struct daemon *d)
{
    struct shmkv_options o;
    store_options(&d->cfg, &o);
    int rc = shmkv_create(&o, &d->kv);
    if (rc == 0) {
        log_info("created store %s: %llu bytes, max key %u, max value %u, "
                 "eviction %s, mode 0%o, group %s",
                 d->cfg.store_key, (unsigned long long)d->cfg.store_size,
                 d->cfg.max_key_bytes, d->cfg.max_value_bytes,
                 d->cfg.eviction == SHMKV_EVICT_LRU ? "lru" : "noeviction",
                 d->cfg.store_mode,
                 d->cfg.store_group[0] ? d->cfg.store_group : "shmkvd's own");
        struct shmkv_stats st;
        long page = sysconf(_SC_PAGESIZE);
        bool huge = false;
        if (d->cfg.huge_pages != SHMKV_HUGE_NO && shmkv_stats(d->kv, &st) == 0)
            huge = st.data_page_bytes > (uint64_t)page;
        if (d->cfg.huge_pages != SHMKV_HUGE_NO)
            log_msg(huge ? LOG_LEVEL_INFO : LOG_LEVEL_WARNING,
                    "huge_pages = %s: the store is on %llu kB pages%s",
                    d->cfg.huge_pages == SHMKV_HUGE_YES ? "yes" : "try",
                    (unsigned long long)(huge ? st.data_page_bytes >> 10
                                              : (uint64_t)page >> 10),
                    huge ? ""
                         : " (the huge page pool could not hold it: see "
                           "vm.nr_hugepages)");
        return 0;
    }
    if (rc != SHMKV_EEXIST) {
        log_error("cannot create store %s: %s: %s", d->cfg.store_key,
                  shmkv_strerror(rc), shmkv_last_error());
        return -1;
    }
    rc = shmkv_adopt(d->cfg.store_key, &d->kv);
    if (rc == SHMKV_EOWNED) {
        log_error("refusing to start: %s (is another shmkvd running?)",
                  shmkv_last_error());
        return -1;
    }
    if (rc != 0) {
        log_error("refusing to start: a segment exists at %s and it cannot "
                  "be adopted: %s: %s",
                  d->cfg.store_key, shmkv_strerror(rc), shmkv_last_error());
        return -1;
    }
    d->adopted = true;
    unsigned marks = 0;
    shmkv_get_marks(d->kv, &marks);
    if (marks & SHMKV_MARK_LOADING) {
        /* It died loading the snapshot: what the store holds is part of
         * it. Start again from the snapshot, as a new store would. */
        log_warning("the store at %s was being loaded from a snapshot when "
                    "its shmkvd died: discarding its partial contents",
                    d->cfg.store_key);
        rc = shmkv_flush(d->kv);
        if (rc != 0) {
            log_error("refusing to start: cannot empty the partly loaded "
                      "store: %s: %s",
                      shmkv_strerror(rc), shmkv_last_error());
            return -1;
        }
        d->adopted_partial = true;
    }
    struct shmkv_stats st;
    shmkv_stats(d->kv, &st);
    log_warning("adopted the store at %s left by a shmkvd that died: %llu "
                "entries kept",
                d->cfg.store_key, (unsigned long long)st.entries);
    if (st.data_bytes != d->cfg.store_size)
        log_info("the adopted store is %llu bytes (size says %llu): it keeps "
                 "its size; `shmkvctl resize` changes it online",
                 (unsigned long long)st.data_bytes,
                 (unsigned long long)d->cfg.store_size);
    if (st.max_value_bytes != d->cfg.max_value_bytes ||
        st.max_key_bytes != d->cfg.max_key_bytes ||
        st.eviction != d->cfg.eviction || st.max_clients != d->cfg.max_handles)
        log_warning("the adopted store keeps the settings it was created "
                    "with, which differ from the config; restart with the "
                    "store removed to apply them");
    return 0;
}

void daemon_save_done(struct daemon *d, bool ok, uint64_t entries,
                      const char *path, double ms, const char *how,
                      const char *err)
{
    d->last_save = time(NULL);
    d->last_save_ok = ok;
    if (!ok) {
        log_error("save failed: %s", err);
        return;
    }
    d->last_save_entries = entries;
    log_info("saved %llu entries to %s in %.0f ms%s",
             (unsigned long long)entries, path, ms, how);
}

int daemon_save(struct daemon *d, char *err, size_t err_cap)
{
    uint64_t n = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = snapshot_save(d->kv, d->cfg.snapshot_path, &n, err, err_cap);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    daemon_save_done(d, rc == 0, n, d->cfg.snapshot_path,
                     (double)(t1.tv_sec - t0.tv_sec) * 1e3 +
                         (double)(t1.tv_nsec - t0.tv_nsec) / 1e6,
                     "", err);
    return rc == 0 ? 0 : -1;
}

static void stop_now_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct daemon *d = arg;
    event_base_loopexit(d->base, NULL);
}

void daemon_request_stop(struct daemon *d, enum stop_save save)
{
    if (d->stopping)
        return;
    d->stopping = true;
    d->stop_save = save;
    notify_send("STOPPING=1");
    control_stop_accepting(d);
    /* Leave the loop after this round, so queued replies go out first. */
    event_active(rt.stop_now, EV_TIMEOUT, 0);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct daemon *d = arg;
    log_info("%s: stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    daemon_request_stop(d, STOP_SAVE_CONFIG);
}

static void housekeeping_arm(struct daemon *d)
{
    struct timeval tv = {.tv_sec = d->cfg.housekeeping_ms / 1000,
                         .tv_usec = (d->cfg.housekeeping_ms % 1000) * 1000};
    evtimer_add(rt.housekeeping, &tv);
}

static void status_update(struct daemon *d)
{
    struct shmkv_stats st;
    if (shmkv_stats(d->kv, &st) != 0)
        return;
    double hit_rate = st.hits + st.misses ? 100.0 * (double)st.hits /
                                                (double)(st.hits + st.misses)
                                          : 0.0;
    notify_sendf("STATUS=%llu keys, %.1f%% memory used, %u handles, %u "
                 "connections, %.1f%% hits",
                 (unsigned long long)st.entries,
                 st.bytes_capacity
                     ? 100.0 * (double)st.bytes_used / (double)st.bytes_capacity
                     : 0.0,
                 st.clients, d->n_conns, hit_rate);
}

/* save_interval: a background save once that long has passed since the
 * last save ended (or the start), if the store changed since the last
 * successful one. A failed save is tried again an interval later. */
static void periodic_save(struct daemon *d)
{
    if (d->cfg.save_interval_s == 0 || d->cfg.snapshot_path[0] == '\0' ||
        jobs_save_pending(d))
        return;
    time_t since = d->last_save != 0 ? d->last_save : d->started;
    if (time(NULL) - since < (time_t)d->cfg.save_interval_s)
        return;
    if (d->last_save_ok && d->last_save != 0 &&
        store_changes(d) == d->changes_at_save)
        return;
    if (!job_queue(d, NULL, JOB_PERIODIC_SAVE, NULL, 0))
        log_warning("save_interval: no memory for a background save");
}

/* max_size: grows the store, doubling it up to max_size, once its arena
 * or its index is grow_at percent full, so that writes find room before
 * they would evict or be refused. A growth that failed is tried again a
 * minute later (jobs.c). */
static void auto_grow(struct daemon *d)
{
    if (d->cfg.max_size == 0 || time(NULL) < d->grow_after ||
        jobs_resize_pending(d))
        return;
    struct shmkv_stats st;
    if (shmkv_stats(d->kv, &st) != 0 || st.data_bytes >= d->cfg.max_size)
        return;
    double arena = st.bytes_capacity
                       ? (double)st.bytes_used / (double)st.bytes_capacity
                       : 0.0;
    double index = st.index_slots
                       ? (double)st.entries / ((double)st.index_slots * 0.95)
                       : 0.0;
    double fill = arena > index ? arena : index;
    if (fill * 100.0 < (double)d->cfg.grow_at_percent)
        return;
    uint64_t next = st.data_bytes * 2;
    if (next > d->cfg.max_size)
        next = d->cfg.max_size;
    log_info("the store's %s is %.0f%% full (grow_at %u): growing it to "
             "%llu bytes (max_size %llu)",
             arena >= index ? "arena" : "index", fill * 100.0,
             d->cfg.grow_at_percent, (unsigned long long)next,
             (unsigned long long)d->cfg.max_size);
    if (!job_queue_resize(d, NULL, next, "max_size"))
        log_warning("max_size: no memory to queue the resize");
}

/* Active expiry, Redis-style: scan a slice; while slices keep finding
 * expired keys (over a quarter of the budget), scan another, up to
 * EXPIRE_TICK_BUDGET slices a tick. */
void daemon_ready(struct daemon *d)
{
    static bool told;
    if (told)
        return;
    told = true;
    notify_sendf("READY=1\nMAINPID=%d", (int)getpid());
    (void)d;
}

/* How full the store is, and how fast it evicts, looked at once a second
 * and logged at most once a minute each: a store filling up or evicting
 * its working set is what its operator must hear about. */
#define PRESSURE_FULL_PERCENT 95u
#define PRESSURE_LOG_EVERY_S 60
static void store_pressure_log(struct daemon *d)
{
    static time_t looked, full_logged, evict_logged;
    static uint64_t evictions_then, refused_then;
    static bool primed;
    time_t now = time(NULL);
    if (now == looked)
        return;
    time_t span = looked == 0 ? 1 : now - looked;
    looked = now;
    struct shmkv_stats st;
    if (shmkv_stats(d->kv, &st) != 0)
        return;
    uint64_t evicted = st.evictions - evictions_then;
    uint64_t refused = d->writes_refused_full - refused_then;
    evictions_then = st.evictions;
    refused_then = d->writes_refused_full;
    if (!primed) {
        primed = true;
        return;
    }
    uint64_t used = st.bytes_used + st.bytes_limbo;
    bool full = st.bytes_capacity > 0 &&
                used * 100 >= st.bytes_capacity * PRESSURE_FULL_PERCENT;
    if ((full || refused > 0) && now - full_logged >= PRESSURE_LOG_EVERY_S) {
        full_logged = now;
        log_warning(
            "store %s is %.1f%% full (%" PRIu64 " of %" PRIu64
            " bytes, %" PRIu64 " keys); %" PRIu64
            " socket writes refused for room in the last %lld s%s",
            d->cfg.store_key,
            st.bytes_capacity ? 100.0 * (double)used / (double)st.bytes_capacity
                              : 0.0,
            used, st.bytes_capacity, st.entries, refused, (long long)span,
            st.eviction == SHMKV_EVICT_LRU
                ? ""
                : " (eviction = noeviction: grow it, shmkvctl "
                  "resize, or set max_size)");
    }
    /* A surge: more than 1% of the keys, and over 1,000, a second. */
    uint64_t per_s = evicted / (uint64_t)(span > 0 ? span : 1);
    if (per_s > 1000 && per_s * 100 > st.entries &&
        now - evict_logged >= PRESSURE_LOG_EVERY_S) {
        evict_logged = now;
        log_warning("store %s evicts %" PRIu64 " live keys a second (%" PRIu64
                    " keys held): its working set does not fit; grow it "
                    "(shmkvctl resize, or max_size)",
                    d->cfg.store_key, per_s, st.entries);
    }
}

static void housekeeping_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct daemon *d = arg;
    /* Frees dead processes' client slots, and replaces a write lock a dead
     * process holds before a writer needs it. Waits STORE_WAIT_MS at
     * most, like everything here. */
    int rc = shmkv_maintain(d->kv);
    if (rc != 0 && rc != SHMKV_ETIMEDOUT)
        log_warning("store maintenance: %s: %s", shmkv_strerror(rc),
                    shmkv_last_error());
    for (int slice = 0; slice < EXPIRE_TICK_BUDGET; slice++) {
        int n = shmkv_expire_scan(d->kv, d->cfg.expire_slots_per_tick);
        if (n < 0) {
            /* The store busy: this tick is skipped. */
            if (n != SHMKV_ETIMEDOUT)
                log_warning("expiry: %s", shmkv_strerror(n));
            else
                log_debug("expiry skipped: %s", shmkv_last_error());
            break;
        }
        if (n > 0)
            log_debug("expired %d keys", n);
        if ((uint32_t)n * 4 < d->cfg.expire_slots_per_tick / 64 + 1)
            break;
    }
    store_events_log(d);
    store_pressure_log(d);
    periodic_save(d);
    if (rt.ticks % 5 == 0)
        auto_grow(d);
    uint64_t every =
        5000 / (d->cfg.housekeeping_ms ? d->cfg.housekeeping_ms : 1000) + 1;
    if (rt.ticks++ % every == 0)
        status_update(d);
    housekeeping_arm(d);
}

static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    notify_send("WATCHDOG=1");
}

static void reload(struct daemon *d)
{
    struct config next;
    char err[8192];
    notify_sendf("RELOADING=1");
    if (config_load(d->cfg.path, &next, err, sizeof err) != 0) {
        log_error("reload: config has errors; keeping the running "
                  "settings:\n%s",
                  err);
        notify_send("READY=1");
        return;
    }
    char needs[1024];
    int n = config_restart_needed(&d->cfg, &next, needs, sizeof needs);
    if (n > 0)
        log_warning("reload: these settings changed but need a restart: %s",
                    needs);
    /* Keep the running values of what needs a restart. */
    struct config applied = d->cfg;
    applied.default_ttl_s = next.default_ttl_s;
    applied.slowlog_slower_us = next.slowlog_slower_us;
    applied.slowlog_max_len = next.slowlog_max_len;
    memcpy(applied.admin_uids, next.admin_uids, sizeof next.admin_uids);
    applied.n_admin_uids = next.n_admin_uids;
    memcpy(applied.admin_gids, next.admin_gids, sizeof next.admin_gids);
    applied.n_admin_gids = next.n_admin_gids;
    applied.max_connections = next.max_connections;
    applied.max_request_bytes = next.max_request_bytes;
    applied.idle_timeout_s = next.idle_timeout_s;
    applied.request_timeout_s = next.request_timeout_s;
    applied.admin_reserved = next.admin_reserved;
    memcpy(applied.snapshot_path, next.snapshot_path,
           sizeof next.snapshot_path);
    applied.save_on_shutdown = next.save_on_shutdown;
    applied.save_interval_s = next.save_interval_s;
    applied.load_on_start = next.load_on_start;
    applied.log_level = next.log_level;
    applied.housekeeping_ms = next.housekeeping_ms;
    applied.expire_slots_per_tick = next.expire_slots_per_tick;
    applied.max_size = next.max_size;
    applied.grow_at_percent = next.grow_at_percent;
    d->grow_after = 0;
    if (next.store_size != d->cfg.store_size) {
        applied.store_size = next.store_size;
        if (!job_queue_resize(d, NULL, next.store_size, "reload: size"))
            log_warning("reload: no memory to queue the resize to the new "
                        "size");
    }
    d->cfg = applied;
    log_set_level(d->cfg.log_level);
    control_apply_config(d);
    evtimer_del(rt.housekeeping);
    housekeeping_arm(d);
    log_info("reloaded %s", d->cfg.path);
    notify_send("READY=1");
}

static void hup_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    log_info("SIGHUP: reloading the config");
    reload(arg);
}

/* Forks; the parent waits until the child is ready (or failed) and exits
 * with its verdict, so `shmkvd` returns once clients can attach. */
static int daemonize(void)
{
    int pipefd[2];
    if (pipe(pipefd) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid > 0) {
        close(pipefd[1]);
        char ok = 0;
        ssize_t n = read(pipefd[0], &ok, 1);
        _exit(n == 1 && ok == 1 ? 0 : 1);
    }
    close(pipefd[0]);
    rt.ready_fd = pipefd[1];
    if (setsid() < 0)
        return -1;
    return 0;
}

static void detach_stdio(void)
{
    FILE *f = freopen("/dev/null", "r", stdin);
    (void)f;
    f = freopen("/dev/null", "w", stdout);
    (void)f;
    f = freopen("/dev/null", "w", stderr);
    (void)f;
    log_use_syslog();
}

static void tell_parent(char ok)
{
    if (rt.ready_fd >= 0) {
        ssize_t n = write(rt.ready_fd, &ok, 1);
        (void)n;
        close(rt.ready_fd);
        rt.ready_fd = -1;
    }
}

static int setup_events(struct daemon *d)
{
    rt.sig_term = evsignal_new(d->base, SIGTERM, signal_cb, d);
    rt.sig_int = evsignal_new(d->base, SIGINT, signal_cb, d);
    rt.sig_hup = evsignal_new(d->base, SIGHUP, hup_cb, d);
    rt.housekeeping = evtimer_new(d->base, housekeeping_cb, d);
    rt.stop_now = event_new(d->base, -1, 0, stop_now_cb, d);
    if (!rt.sig_term || !rt.sig_int || !rt.sig_hup || !rt.housekeeping ||
        !rt.stop_now)
        return -1;
    evsignal_add(rt.sig_term, NULL);
    evsignal_add(rt.sig_int, NULL);
    evsignal_add(rt.sig_hup, NULL);
    housekeeping_arm(d);
    uint64_t wd = notify_watchdog_usec();
    if (wd > 0) {
        /* Ping at half the interval, as systemd recommends. */
        rt.watchdog = event_new(d->base, -1, EV_PERSIST, watchdog_cb, d);
        struct timeval tv = {.tv_sec = (time_t)(wd / 2 / 1000000),
                             .tv_usec = (suseconds_t)(wd / 2 % 1000000)};
        event_add(rt.watchdog, &tv);
    }
    return 0;
}

static void free_events(void)
{
    struct event *evs[] = {rt.sig_term,     rt.sig_int,  rt.sig_hup,
                           rt.housekeeping, rt.watchdog, rt.stop_now};
    for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++)
        if (evs[i] != NULL)
            event_free(evs[i]);
}

/* Loads the snapshot into a freshly created store, if configured. A corrupt
 * snapshot stops the start: the operator decides, nothing is half-loaded. */
static int load_snapshot(struct daemon *d)
{
    bool load = d->cfg.load_on_start && d->cfg.snapshot_path[0] != '\0';
    if (d->adopted && !d->adopted_partial)
        return 0;
    if (!load) {
        /* A partly loaded store was emptied; it is complete as it is. */
        shmkv_set_marks(d->kv, 0);
        return 0;
    }
    struct stat st;
    if (stat(d->cfg.snapshot_path, &st) != 0 && errno == ENOENT) {
        log_info("no snapshot at %s: starting empty", d->cfg.snapshot_path);
        shmkv_set_marks(d->kv, 0);
        return 0;
    }
    char err[512];
    uint64_t n = 0;
    /* A large snapshot can outlast systemd's start timeout. */
    notify_sendf("STATUS=loading %s\nEXTEND_TIMEOUT_USEC=%llu",
                 d->cfg.snapshot_path, LONG_TASK_USEC);
    /* Marked while entries go in, so that a successor adopting the store
     * after a crash here knows it holds part of the snapshot. */
    int rc = shmkv_set_marks(d->kv, SHMKV_MARK_LOADING);
    if (rc != 0) {
        log_error("refusing to start: cannot mark the store as loading: %s",
                  shmkv_last_error());
        return -1;
    }
    if (snapshot_load(d->kv, d->cfg.snapshot_path, &n, err, sizeof err) != 0) {
        log_error("refusing to start: %s", err);
        return -1;
    }
    shmkv_set_marks(d->kv, 0);
    log_info("loaded %llu entries from %s", (unsigned long long)n,
             d->cfg.snapshot_path);
    return 0;
}

/* Closes the store first, so that the snapshot holds every write a client
 * was told succeeded, then saves and removes it. A failed save leaves the
 * store in place, for the next start to adopt with its data. */
static int shutdown_store(struct daemon *d)
{
    bool save = d->stop_save == STOP_SAVE ||
                (d->stop_save == STOP_SAVE_CONFIG && d->cfg.save_on_shutdown &&
                 d->cfg.snapshot_path[0] != '\0');
    shmkv_mark_closed(d->kv);
    if (save) {
        char err[512];
        notify_sendf("STATUS=saving %s\nEXTEND_TIMEOUT_USEC=%llu",
                     d->cfg.snapshot_path, LONG_TASK_USEC);
        if (daemon_save(d, err, sizeof err) != 0) {
            shmkv_close(d->kv);
            d->kv = NULL;
            log_error("the store %s is left in place so that no data is "
                      "lost; the next start adopts it",
                      d->cfg.store_key);
            return -1;
        }
    }
    shmkv_destroy(d->kv);
    d->kv = NULL;
    log_info("store %s removed", d->cfg.store_key);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"foreground", no_argument, NULL, 'f'},
        {"check-config", no_argument, NULL, 't'},
        {"version", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = CONFIG_DEFAULT_PATH;
    bool foreground = false, check_only = false;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:ftvh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 'f':
            foreground = true;
            break;
        case 't':
            check_only = true;
            break;
        case 'v':
            printf("shmkvd %s (store layout %u)\n", SHMKV_VERSION_STRING,
                   SHMKV_LAYOUT_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }

    struct daemon *d = &rt.d;
    rt.ready_fd = -1;
    char err[16384];
    if (config_load(path, &d->cfg, err, sizeof err) != 0) {
        fprintf(stderr, "%s", err);
        if (err[0] && err[strlen(err) - 1] != '\n')
            fputc('\n', stderr);
        fprintf(stderr,
                check_only ? "shmkvd: %s has errors\n"
                           : "shmkvd: %s has errors; not starting\n",
                path);
        return 1;
    }
    if (check_only) {
        config_print(&d->cfg, stdout);
        fprintf(stderr, "%s: ok\n", path);
        return 0;
    }
    log_set_level(d->cfg.log_level);
    if (!foreground && daemonize() != 0) {
        fprintf(stderr, "shmkvd: cannot go to the background: %s\n",
                strerror(errno));
        return 1;
    }
    ssize_t n =
        readlink("/proc/self/exe", d->executable, sizeof d->executable - 1);
    d->executable[n > 0 ? n : 0] = '\0';
    signal(SIGPIPE, SIG_IGN);
    d->started = time(NULL);

    int status = 1;
    d->job_efd = -1;
    d->base = event_base_new();
    if (d->base == NULL) {
        log_error("cannot start libevent");
        goto out;
    }
    /* Until the loop handles them, stop signals wait: a SIGTERM in the
     * middle of loading a snapshot would otherwise leave a half-filled
     * store for the next start to adopt. */
    sigset_t stop_signals, old_mask;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGHUP);
    sigprocmask(SIG_BLOCK, &stop_signals, &old_mask);
    if (store_open(d) != 0)
        goto out;
    struct shmkv_stats store_stats;
    if (shmkv_stats(d->kv, &store_stats) == 0) {
        d->max_key_bytes = store_stats.max_key_bytes;
        d->max_value_bytes = store_stats.max_value_bytes;
    } else {
        d->max_key_bytes = d->cfg.max_key_bytes;
        d->max_value_bytes = d->cfg.max_value_bytes;
    }
    if (load_snapshot(d) != 0)
        goto out_store;
    /* From here on the event loop waits on the store a few milliseconds at
     * most: a command that has to wait longer is parked (control.c). */
    shmkv_set_timeout(d->kv, STORE_WAIT_MS);
    if (control_start(d) != 0)
        goto out_store;
    register_readers_here(d);
    if (setup_events(d) != 0 || jobs_init(d) != 0) {
        log_error("cannot set up events");
        goto out_control;
    }
    if (metrics_start(d) != 0 || mirror_start(d) != 0)
        goto out_control;
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
    log_info("shmkvd %s ready: store %s, socket %s (pid %d)",
             SHMKV_VERSION_STRING, d->cfg.store_key, d->cfg.socket_path,
             (int)getpid());
    /* A mirror is ready once its first load is whole (mirror.c). */
    if (mirror_ready(d))
        daemon_ready(d);
    status_update(d);
    if (!foreground) {
        tell_parent(1);
        detach_stdio();
    }
    event_base_dispatch(d->base);
    status = 0;
out_control:
    mirror_stop(d);
    metrics_stop(d);
    jobs_stop(d);
    control_close_all(d);
out_store:
    if (d->kv != NULL) {
        if (status != 0 && !d->adopted) {
            shmkv_destroy(d->kv); /* a failed start leaves nothing */
            d->kv = NULL;
        } else if (status != 0) {
            shmkv_close(d->kv); /* keep adopted data for the next try */
            d->kv = NULL;
        } else if (shutdown_store(d) != 0) {
            status = 1;
        }
    }
out:
    free_events();
    if (d->base != NULL)
        event_base_free(d->base);
    tell_parent(status == 0 ? 1 : 0);
    if (status == 0)
        log_info("stopped");
    return status;
}
