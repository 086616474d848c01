/*
 * jobs.c - commands whose work grows with the store (SAVE, BGSAVE, KEYS,
 * SHMKV.CHECK),
 * run on a worker thread so that the event loop goes on serving every
 * other connection meanwhile.
 *
 * A job is run by one worker thread at a time, in the order asked for; the
 * rest wait in a queue. The worker attaches the store with a handle of its
 * own (SHMKV_RDONLY, but for a check) and touches nothing the loop owns: what
 * it needs is copied into the job when it is queued (the snapshot's path,
 * the pattern, the output limit), and what it produces (a status, an error
 * text, a reply body in an evbuffer only it uses until it is done) is read
 * by the loop only after the worker has said so through an eventfd and has
 * been joined. So neither side takes a lock, and libevent needs no thread
 * support.
 *
 * The connection that asked waits for the reply as a parked one does: it
 * parses nothing more (pipelined requests run after the reply, in order)
 * and is not idle. If it closes first, its job runs on and its result is
 * dropped, except a save's, which is recorded like any other.
 */
#include <errno.h>
#include <inttypes.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "log.h"
#include "snapshot.h"

struct job {
    enum job_kind kind;
    struct conn *conn; /* waiting for the reply; NULL if none or it closed */
    struct job *next;
    /* Input, copied when the job is queued. */
    char *store_key;
    char *path;       /* the saves */
    uint64_t changes; /* the saves: store_changes() when queued */
    char *pattern;    /* JOB_KEYS */
    size_t pattern_len;
    size_t limit;   /* JOB_KEYS: the largest reply body */
    uint64_t bytes; /* JOB_RESIZE: the size asked for */
    char why[64];   /* JOB_RESIZE: who asked */
    /* JOB_RESIZE, the worker's: when it began and last logged progress */
    double started_s, logged_s;
    _Atomic int cancel; /* set by the loop when shmkvd stops */
    /* Output, written by the worker. */
    int rc; /* 0, or -1 with err */
    char err[512];
    uint64_t count; /* entries saved, keys matched */
    bool overflow;  /* JOB_KEYS: the reply went over limit */
    struct evbuffer *body;
    double ms;
};

static int keys_visit(void *arg, const void *key, size_t klen, const void *val,
                      size_t vlen, int64_t ttl_s)
{
    (void)val;
    (void)vlen;
    (void)ttl_s;
    struct job *j = arg;
    if (!glob_match(j->pattern, j->pattern_len, key, klen))
        return 0;
    resp_bulk(j->body, key, klen);
    j->count++;
    if (evbuffer_get_length(j->body) > j->limit) {
        j->overflow = true;
        return 1;
    }
    return 0;
}

/* SHMKV.CHECK's whole reply. The check holds the lock's read side, so
 * writers wait while it runs; only this thread does. */
static void check_reply(struct shmkv *kv, struct evbuffer *out)
{
    struct shmkv_check_report r;
    int rc = shmkv_check(kv, &r);
    if (rc == 0) {
        char text[256];
        snprintf(text, sizeof text,
                 "ok: %" PRIu64 " entries, %" PRIu64 " used blocks, %" PRIu64
                 " free blocks, %" PRIu64 " bytes leaked",
                 r.entries_seen, r.blocks_used, r.blocks_free, r.bytes_leaked);
        resp_bulk_str(out, text);
    } else if (rc == SHMKV_ECORRUPT) {
        resp_errorf(out, "CORRUPT %" PRIu64 " problems; first: %s", r.problems,
                    r.first_problem);
    } else {
        resp_errorf(out, "ERR %s: %s", shmkv_strerror(rc), shmkv_last_error());
    }
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A resize's progress, logged every few seconds once it has taken one;
 * nonzero when shmkvd is stopping, which cancels it. */
static int resize_progress(void *arg, uint64_t done, uint64_t total)
{
    struct job *j = arg;
    if (atomic_load(&j->cancel))
        return 1;
    double now = now_s();
    if (now - j->started_s < 1.0 || now - j->logged_s < 2.0 || done == total)
        return 0;
    j->logged_s = now;
    log_info("resize to %" PRIu64 " bytes: %.0f%% copied (%" PRIu64
             " of %" PRIu64 " index buckets) in %.1f s",
             j->bytes, 100.0 * (double)done / (double)(total ? total : 1), done,
             total, now - j->started_s);
    return 0;
}

static void resize_run(struct shmkv *kv, struct job *j)
{
    struct shmkv_stats before, after;
    if (shmkv_stats(kv, &before) != 0)
        memset(&before, 0, sizeof before);
    log_info("resizing the store from %" PRIu64 " to %" PRIu64 " bytes (%s)",
             before.data_bytes, j->bytes, j->why);
    j->started_s = j->logged_s = now_s();
    int rc = shmkv_resize(kv, j->bytes, 0, resize_progress, j);
    if (rc != 0) {
        snprintf(j->err, sizeof j->err, "resize to %" PRIu64 " bytes: %s",
                 j->bytes, shmkv_last_error());
        j->rc = -1;
        log_warning("%s", j->err);
        return;
    }
    if (shmkv_stats(kv, &after) != 0)
        memset(&after, 0, sizeof after);
    j->count = after.entries;
    log_info("resized the store to %" PRIu64 " bytes in %.1f s: %" PRIu64
             " entries, %.1f%% of the arena used",
             after.data_bytes, now_s() - j->started_s, after.entries,
             after.bytes_capacity ? 100.0 * (double)after.bytes_used /
                                        (double)after.bytes_capacity
                                  : 0.0);
}

static void job_run(struct job *j)
{
    struct shmkv *kv = NULL;
    /* A check takes the write lock's read side and a resize writes, which
     * only writers may: the others only read. */
    int rc = shmkv_open(
        j->store_key,
        j->kind == JOB_CHECK || j->kind == JOB_RESIZE ? 0 : SHMKV_RDONLY, &kv);
    if (rc != 0) {
        snprintf(j->err, sizeof j->err, "cannot attach the store: %s: %s",
                 shmkv_strerror(rc), shmkv_last_error());
        j->rc = -1;
        return;
    }
    if (j->kind == JOB_CHECK) {
        check_reply(kv, j->body);
    } else if (j->kind == JOB_RESIZE) {
        resize_run(kv, j);
    } else if (j->kind == JOB_KEYS) {
        rc = shmkv_foreach(kv, keys_visit, j);
        if (rc != 0 && !j->overflow) {
            snprintf(j->err, sizeof j->err, "%s", shmkv_strerror(rc));
            j->rc = -1;
        }
    } else {
        j->rc = snapshot_save(kv, j->path, &j->count, j->err, sizeof j->err);
    }
    shmkv_close(kv);
}

static void *job_main(void *arg)
{
    struct daemon *d = arg;
    struct job *j = d->job_running;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    job_run(j);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    j->ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 +
            (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    /* The write orders every store above before the loop's read of the
     * eventfd; the loop joins the thread before it reads the job. */
    uint64_t one = 1;
    while (write(d->job_efd, &one, sizeof one) < 0 && errno == EINTR)
        ;
    return NULL;
}

static bool job_is_save(const struct job *j)
{
    return j->kind == JOB_SAVE || j->kind == JOB_BGSAVE ||
           j->kind == JOB_PERIODIC_SAVE;
}

uint64_t store_changes(struct daemon *d)
{
    struct shmkv_stats st;
    if (shmkv_stats(d->kv, &st) != 0)
        return 0;
    /* The entry count apart from the counters: a delete moves both, a
     * flush only the count. */
    return st.sets + st.deletes + st.expirations + st.evictions +
           (st.entries << 40);
}

static void job_free(struct job *j)
{
    if (j->body != NULL)
        evbuffer_free(j->body);
    free(j->store_key);
    free(j->path);
    free(j->pattern);
    free(j);
}

static void job_deliver(struct daemon *d, struct job *j);

static void jobs_start_next(struct daemon *d)
{
    while (d->job_running == NULL && d->jobs_head != NULL) {
        struct job *j = d->jobs_head;
        d->jobs_head = j->next;
        if (d->jobs_head == NULL)
            d->jobs_tail = NULL;
        j->next = NULL;
        d->job_running = j;
        int rc = pthread_create(&d->job_thread, NULL, job_main, d);
        if (rc == 0)
            return;
        /* No thread: the job fails, as its reply says. */
        snprintf(j->err, sizeof j->err, "cannot start a worker thread: %s",
                 strerror(rc));
        j->rc = -1;
        d->job_running = NULL;
        job_deliver(d, j);
    }
}

/* What the loop does with a finished job: records a save, replies to the
 * connection that waits, and lets it go on. */
static void job_deliver(struct daemon *d, struct job *j)
{
    if (job_is_save(j)) {
        daemon_save_done(d, j->rc == 0, j->count, j->path, j->ms,
                         j->kind == JOB_BGSAVE          ? " (BGSAVE)"
                         : j->kind == JOB_PERIODIC_SAVE ? " (save_interval)"
                                                        : "",
                         j->err);
        if (j->rc == 0)
            d->changes_at_save = j->changes;
    }
    if (j->kind == JOB_RESIZE && j->rc != 0 && strcmp(j->why, "max_size") == 0)
        d->grow_after = time(NULL) + 60;
    struct conn *c = j->conn;
    if (c != NULL) {
        c->job = NULL;
        struct evbuffer *out = bufferevent_get_output(c->bev);
        if (j->kind == JOB_KEYS && j->overflow)
            c->reply_overflow = true;
        else if (j->rc != 0)
            resp_errorf(out, "ERR %s", j->err);
        else if (j->kind == JOB_KEYS) {
            resp_array(out, j->count);
            evbuffer_add_buffer(out, j->body);
        } else if (j->kind == JOB_CHECK)
            evbuffer_add_buffer(out, j->body);
        else
            resp_simple(out, "OK");
        conn_job_done(c);
    }
    job_free(j);
}

static void job_done_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct daemon *d = arg;
    uint64_t n;
    if (read(fd, &n, sizeof n) < 0 || d->job_running == NULL)
        return;
    pthread_join(d->job_thread, NULL);
    struct job *j = d->job_running;
    d->job_running = NULL;
    job_deliver(d, j);
    jobs_start_next(d);
}

int jobs_init(struct daemon *d)
{
    d->job_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (d->job_efd < 0) {
        log_error("cannot make an eventfd for background jobs: %s",
                  strerror(errno));
        return -1;
    }
    d->job_done =
        event_new(d->base, d->job_efd, EV_READ | EV_PERSIST, job_done_cb, d);
    if (d->job_done == NULL || event_add(d->job_done, NULL) != 0) {
        log_error("cannot watch the background jobs' eventfd");
        return -1;
    }
    return 0;
}

bool jobs_save_pending(const struct daemon *d)
{
    const struct job *j = d->job_running;
    if (j != NULL && job_is_save(j))
        return true;
    for (j = d->jobs_head; j != NULL; j = j->next)
        if (job_is_save(j))
            return true;
    return false;
}

bool jobs_resize_pending(const struct daemon *d)
{
    const struct job *j = d->job_running;
    if (j != NULL && j->kind == JOB_RESIZE)
        return true;
    for (j = d->jobs_head; j != NULL; j = j->next)
        if (j->kind == JOB_RESIZE)
            return true;
    return false;
}

static void job_enqueue(struct daemon *d, struct conn *c, struct job *j)
{
    j->conn = c;
    if (c != NULL)
        c->job = j;
    if (d->jobs_tail != NULL)
        d->jobs_tail->next = j;
    else
        d->jobs_head = j;
    d->jobs_tail = j;
    jobs_start_next(d);
}

bool job_queue_resize(struct daemon *d, struct conn *c, uint64_t bytes,
                      const char *why)
{
    struct job *j = calloc(1, sizeof *j);
    if (j == NULL)
        return false;
    j->kind = JOB_RESIZE;
    j->bytes = bytes;
    snprintf(j->why, sizeof j->why, "%s", why);
    j->store_key = strdup(d->cfg.store_key);
    if (j->store_key == NULL) {
        job_free(j);
        return false;
    }
    job_enqueue(d, c, j);
    return true;
}

bool job_queue(struct daemon *d, struct conn *c, enum job_kind kind,
               const char *pattern, size_t pattern_len)
{
    struct job *j = calloc(1, sizeof *j);
    if (j == NULL)
        return false;
    j->kind = kind;
    j->store_key = strdup(d->cfg.store_key);
    if (j->store_key == NULL) {
        job_free(j);
        return false;
    }
    if (kind == JOB_KEYS || kind == JOB_CHECK) {
        j->pattern = malloc(pattern_len + 1);
        j->body = evbuffer_new();
        if (j->pattern == NULL || j->body == NULL) {
            job_free(j);
            return false;
        }
        if (pattern_len > 0)
            memcpy(j->pattern, pattern, pattern_len);
        j->pattern_len = pattern_len;
        j->limit = c != NULL ? conn_output_limit(c) : SIZE_MAX;
    } else {
        j->path = strdup(d->cfg.snapshot_path);
        if (j->path == NULL) {
            job_free(j);
            return false;
        }
        /* Counted before the walk: a change during it counts as unsaved. */
        j->changes = store_changes(d);
    }
    job_enqueue(d, c, j);
    return true;
}

void job_detach(struct conn *c)
{
    if (c->job != NULL) {
        c->job->conn = NULL;
        c->job = NULL;
    }
}

void jobs_stop(struct daemon *d)
{
    if (d->job_running != NULL) {
        /* A resize stops at its next slice; a save runs to its end. */
        atomic_store(&d->job_running->cancel, 1);
        log_info("waiting for a background job to finish");
        pthread_join(d->job_thread, NULL);
        struct job *j = d->job_running;
        d->job_running = NULL;
        if (j->conn != NULL)
            j->conn->job = NULL;
        j->conn = NULL;
        job_deliver(d, j);
    }
    /* Not started: dropped, and their connections close unanswered. */
    while (d->jobs_head != NULL) {
        struct job *j = d->jobs_head;
        d->jobs_head = j->next;
        if (j->conn != NULL)
            j->conn->job = NULL;
        job_free(j);
    }
    d->jobs_tail = NULL;
    if (d->job_done != NULL) {
        event_free(d->job_done);
        d->job_done = NULL;
    }
    if (d->job_efd >= 0) {
        close(d->job_efd);
        d->job_efd = -1;
    }
}
