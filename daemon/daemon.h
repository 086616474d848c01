/*
 * daemon.h - shmkvd's state, shared by its parts: main.c (lifecycle),
 * control.c (the socket server), commands.c (what each command does).
 */
#ifndef SHMKVD_DAEMON_H
#define SHMKVD_DAEMON_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "config.h"
#include "resp.h"
#include "shmkv.h"

struct event;
struct event_base;
struct evconnlistener;
struct bufferevent;
struct evbuffer;
struct job;

/* Which timeout a connection runs under: none, on reading (it waits for a
 * request), on writing (a reply is queued), or on writing its last output
 * (it is closing). */
enum conn_timeout {
    CONN_TIMEOUT_NONE,
    CONN_TIMEOUT_READ,
    CONN_TIMEOUT_WRITE,
    CONN_TIMEOUT_FLUSH,
};

/* One control-socket connection. */
struct conn {
    struct daemon *d;
    struct bufferevent *bev;
    struct event *resume; /* continues parsing after a yield to the loop */
    struct event *retry;  /* runs a parked command again */
    struct event *request_deadline; /* closes a request begun too long ago */
    struct conn *prev, *next;
    uint64_t id;
    int fd;
    pid_t pid; /* peer credentials (SO_PEERCRED) */
    uid_t uid;
    gid_t gid;
    gid_t *groups; /* supplementary groups when it connected (malloc) */
    size_t n_groups;
    bool admin;
    /* Taken past max_connections to register a reader chunk, and for
     * nothing else (control.c): one such connection per uid at most. */
    bool reg_only;
    bool closing;        /* parse nothing more; close once output is flushed */
    bool input_ended;    /* the peer shut down its side (EOF) */
    bool output_full;    /* output over the soft limit: parsing paused */
    bool yielded;        /* turn budget spent: resume is armed */
    bool reading;        /* EV_READ is enabled */
    bool reply_overflow; /* a command's reply went over the output limit */
    /* The command at the head of the input found the store busy: it is
     * left unparsed-out and run again shortly, until park_deadline_ms;
     * progress is how far a multi-key write got (keys done, and what it
     * counted). */
    bool parked;
    uint64_t park_deadline_ms;
    /* A job on the worker thread (jobs.c) answers the last command run:
     * nothing more is parsed until it has. */
    struct job *job;
    size_t progress;
    int64_t progress_count;
    enum conn_timeout timeout;
    time_t created;
    time_t last_active;
    uint64_t commands;
    char last_command[32];
    char name[64]; /* CLIENT SETNAME */
    struct resp_parser parser;
    /* Transactions (commands.c): the commands MULTI queued (NULL outside
     * one), the keys WATCHed with what they were then, and whether EXEC
     * is running the queue (its commands are never parked). */
    struct multi *multi;
    struct watch *watches;
    size_t n_watches;
    bool in_exec;
    /* Fill leases this connection took (SHMKV.LEASE): the daemon's handle
     * holds them for it; given back when it releases them or closes. */
    struct conn_lease *leases;
    size_t n_leases;
    /* A write sent to the upstream for it (mirror.c): its reply answers
     * the command; nothing more is parsed until it has. */
    struct write_through *upstream_write;
};

/* Waiting for a job or the upstream: nothing more is parsed. */
static inline bool conn_waiting(const struct conn *c)
{
    return c->job != NULL || c->upstream_write != NULL;
}

enum stop_save { STOP_SAVE_CONFIG, STOP_SAVE, STOP_NOSAVE };

struct daemon {
    time_t grow_after; /* max_size: no automatic growth before then (a
                          growth failed) */
    struct config cfg;
    struct shmkv *kv;         /* the owner's handle */
    bool adopted;             /* the store was left by a dead daemon */
    bool adopted_partial;     /* adopted mid-load: load again */
    uint32_t max_key_bytes;   /* the store's (an adopted one keeps its own) */
    uint32_t max_value_bytes; /* likewise */
    struct event_base *base;
    time_t started;
    char executable[4096];

    /* control socket */
    struct evconnlistener *listener;
    struct evhttp *http;        /* [metrics] listen (metrics.c), or NULL */
    struct event *accept_retry; /* re-enables the listener after EMFILE */
    time_t accept_error_logged;
    uint64_t accept_errors_unlogged;
    char socket_path[108]; /* as bound, for removal */
    struct conn *conns;
    uint32_t n_conns;
    uint32_t n_reg_only; /* reg_only connections, not in n_conns */
    uint64_t next_conn_id;
    uint64_t connections_total;
    uint64_t connections_rejected;
    uint64_t requests_timed_out; /* request_timeout: trickled or stalled */
    uint64_t commands_total;

    /* persistence */
    time_t last_save;
    bool last_save_ok;
    uint64_t last_save_entries;
    /* store_changes() when the last successful save began: what a
     * periodic save compares with. */
    uint64_t changes_at_save;

    /* background jobs (jobs.c) */
    int job_efd;             /* the worker says it is done here */
    struct event *job_done;  /* reads job_efd */
    struct job *job_running; /* on the worker thread, job_thread */
    pthread_t job_thread;
    struct job *jobs_head, *jobs_tail; /* waiting their turn */

    /* The store's write lock was busy for a parked command until then
     * (CLOCK_MONOTONIC ms): other writes park without trying. */
    uint64_t store_busy_until_ms;
    uint64_t commands_parked;
    uint64_t writes_refused_full; /* socket writes answered OOM */
    uint64_t event_cursor;        /* the store's events logged so far */

    /* lifecycle */
    bool stopping;
    enum stop_save stop_save;
};

/* control.c */
int control_start(struct daemon *d);
void control_stop_accepting(struct daemon *d);
void control_close_all(struct daemon *d);
void conn_close(struct conn *c);
/* The most output a connection may queue: a reply that takes it past this
 * closes the connection, pending output dropped (as Redis's
 * client-output-buffer-limit). Commands whose reply grows with the store or
 * the request (MGET, KEYS) stop building it there and set
 * c->reply_overflow. */
size_t conn_output_limit(const struct conn *c);
/* Re-applies run-time settings to open connections (after SIGHUP). */
void control_apply_config(struct daemon *d);

/* commands.c: runs one parsed request, appending the reply to out; or
 * parks it (c->parked, no reply) when it must wait for the store. */
/* mirror.c: the store as a mirror of a Redis ([upstream]). */
int mirror_start(struct daemon *d);
void mirror_stop(struct daemon *d);
bool mirror_enabled(const struct daemon *d);
/* True once the first load is whole (always without [upstream]). */
bool mirror_ready(const struct daemon *d);
/* True if key is one the mirror keeps (under its prefixes). */
bool mirror_covers(const struct daemon *d, const void *key, size_t len);
void mirror_info(const struct daemon *d, struct evbuffer *b);
void mirror_metrics(const struct daemon *d, struct evbuffer *b);
/* Sends a write on keys the store mirrors to the upstream; when it has
 * answered and the keys are fetched back into the store, its reply
 * answers the command (conn_job_done). keys: argv indexes. Returns false
 * (and replies with an error) if it cannot. */
bool mirror_write_through(struct conn *c, size_t argc,
                          const struct resp_arg *argv, const size_t *keys,
                          size_t n_keys, struct evbuffer *out);
void mirror_conn_closed(struct conn *c);
/* main.c: tells systemd the daemon is ready (READY=1), once. */
void daemon_ready(struct daemon *d);

/* metrics.c: the Prometheus endpoint, if [metrics] listen is set. */
int metrics_start(struct daemon *d);
void metrics_stop(struct daemon *d);

/* INFO commandstats and latencystats lines; the commands' Prometheus
 * metrics (commands.c). */
void commands_info_stats(struct evbuffer *b, bool stats, bool latency);
void commands_prometheus(struct evbuffer *b);
/* Frees a connection's transaction and watched keys. */
void txn_reset(struct conn *c);
/* Gives back the fill leases a closing connection holds. */
void conn_leases_release(struct conn *c);
void command_run(struct conn *c, size_t argc, struct resp_arg *argv,
                 struct evbuffer *out);

/* How long one attempt of the daemon may wait for the store, and how soon
 * a parked command tries again: the event loop never waits on the store
 * for longer. */
#define STORE_WAIT_MS 2u
#define PARK_RETRY_MS 2u
uint64_t daemon_now_ms(void);
/* Unix time in milliseconds: the clock libshmkv keeps expiries on. */
static inline int64_t daemon_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
size_t command_count(void);

/* The connection's job (jobs.c) has put its reply in the output: carry
 * on with what the connection sent after it. */
void conn_job_done(struct conn *c);

/* jobs.c */
enum job_kind {
    JOB_SAVE,          /* SAVE: replies once the snapshot is written */
    JOB_BGSAVE,        /* BGSAVE: nobody waits */
    JOB_PERIODIC_SAVE, /* save_interval: likewise */
    JOB_KEYS,          /* KEYS pattern */
    JOB_CHECK,         /* SHMKV.CHECK */
    JOB_RESIZE,        /* SHMKV.RESIZE, CONFIG SET maxmemory, max_size */
};
int jobs_init(struct daemon *d);
/* Queues a job; c (NULL: none) waits for its reply. False: out of memory. */
bool job_queue(struct daemon *d, struct conn *c, enum job_kind kind,
               const char *pattern, size_t pattern_len);
/* Queues an online resize of the store to bytes; c (NULL: none) waits
 * for its reply; why names who asked, for the log. False: out of
 * memory. */
bool job_queue_resize(struct daemon *d, struct conn *c, uint64_t bytes,
                      const char *why);
/* True while a resize is running or waits to. */
bool jobs_resize_pending(const struct daemon *d);
/* True while a save is running or waits to. */
bool jobs_save_pending(const struct daemon *d);
/* A number that changes with every change to the store's data (sets,
 * deletes, expirations, evictions, flushes), for periodic saves to tell
 * whether there is anything new to save. */
uint64_t store_changes(struct daemon *d);
/* The connection is closing: its job's result is dropped. */
void job_detach(struct conn *c);
/* Waits for the running job, drops the others, and frees what jobs use. */
void jobs_stop(struct daemon *d);

/* commands.c: Redis's glob matching (KEYS). */
bool glob_match(const char *p, size_t plen, const char *s, size_t slen);

/* main.c */
void daemon_request_stop(struct daemon *d, enum stop_save save);
int daemon_save(struct daemon *d, char *err, size_t err_cap);
/* Records a save's outcome (INFO persistence, LASTSAVE) and logs it; how
 * is appended to the log line (" (BGSAVE)", or ""). */
void daemon_save_done(struct daemon *d, bool ok, uint64_t entries,
                      const char *path, double ms, const char *how,
                      const char *err);

#endif
