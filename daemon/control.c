/*
 * control.c - the control socket: a Unix stream socket served on libevent.
 *
 * Each connection is a bufferevent. Input is parsed as RESP requests (one or
 * many pipelined in a read); each reply is appended to the output buffer in
 * order. The peer's credentials (SO_PEERCRED) are read once at accept and
 * decide whether it may run commands that change the store or its
 * lifecycle. A peer that breaks the protocol gets one error reply and is
 * disconnected once it has been written; nothing it sends can reach other
 * connections.
 *
 * What one connection may cost is bounded:
 * - output: while more than OUTPUT_SOFT_LIMIT is queued, no further request
 *   is parsed and nothing more is read; both resume when the peer has read
 *   the output down to OUTPUT_LOW_WATERMARK. A single reply that takes the
 *   output past conn_output_limit() closes the connection.
 * - time: one turn runs at most TURN_MAX_REQUESTS requests or TURN_MAX_NS,
 *   then the connection stops reading and yields to the loop (a zero
 *   timer, which fires only after the loop has polled every other socket)
 *   and carries on with its buffered input from there.
 * - idle time (idle_timeout): a read timeout while the connection waits for
 *   a request, a write timeout while a reply is queued (a peer that is
 *   still downloading is not idle; one that stopped reading is).
 * - a request's arrival (request_timeout): once a request has begun
 *   arriving, all of it must arrive within that time, or the connection
 *   gets an error and is closed: a peer that trickles a byte at a time
 *   never counts as idle, but it cannot hold a connection this way.
 * - connections: max_connections in all, the last admin_reserved of them
 *   for admin peers only, so that an operator can always get in. Past
 *   what non-admins may have, up to REG_ONLY_MAX more non-admin peers,
 *   one per uid, may only register a reader chunk (SHMKV.READERS): they
 *   are answered "max number of clients reached" to anything else, and
 *   closed once answered or after REG_ONLY_IDLE_S silent. So a reader
 *   that holds every other connection cannot keep other users' readers
 *   from registering.
 * - a closing connection (QUIT, protocol error, SHUTDOWN, the peer's EOF)
 *   reads nothing more and is closed once its output is flushed, or when
 *   writing makes no progress for CLOSE_FLUSH_TIMEOUT_S.
 * - waiting for the store: a command waits at most STORE_WAIT_MS for the
 *   store's write lock (or for readers) inside the loop. If that is not
 *   enough, the command is parked: it stays at the head of the input, the
 *   connection reads nothing more, and a timer runs it again every
 *   PARK_RETRY_MS until it completes or has waited lock_timeout_ms in all
 *   (then it gets a BUSY error). Other connections are served meanwhile;
 *   a parked connection is not idle.
 * Invariant: reading is enabled exactly when the connection may parse more
 * (not closing, no EOF seen, output under the soft limit, not yielded, not
 * parked).
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon.h"
#include "log.h"

#define LISTEN_BACKLOG 128
#define MAX_ARGS (1024u * 1024u)

#define OUTPUT_SOFT_LIMIT ((size_t)1024 * 1024)
#define OUTPUT_LOW_WATERMARK ((size_t)256 * 1024)
#define OUTPUT_HARD_LIMIT ((size_t)64 * 1024 * 1024)
#define TURN_MAX_REQUESTS 64
#define TURN_MAX_NS (10 * 1000 * 1000)
#define CLOSE_FLUSH_TIMEOUT_S 10
/* Connections past the limit that may only register a reader chunk, one
 * per uid, and how long one may stay silent. */
#define REG_ONLY_MAX 8u
#define REG_ONLY_IDLE_S 2u
/* Descriptors kept for everything but connections: the listener,
 * libevent, logging, snapshots. */
#define FD_RESERVE 32
/* After accept() fails (EMFILE, ENFILE, ENOMEM...), the listener rests
 * this long instead of failing again at once; the failure is logged at
 * most once per ACCEPT_ERROR_LOG_INTERVAL_S. */
#define ACCEPT_RETRY_MS 100
#define ACCEPT_ERROR_LOG_INTERVAL_S 10

/* True if the peer's uid, primary group or one of its supplementary groups
 * is an admin. The daemon's own user is always one: whoever can run the
 * daemon can stop it. */
static bool peer_is_admin(const struct config *cfg, const struct conn *c)
{
    if (c->uid == geteuid())
        return true;
    for (size_t i = 0; i < cfg->n_admin_uids; i++)
        if (cfg->admin_uids[i] == c->uid)
            return true;
    for (size_t i = 0; i < cfg->n_admin_gids; i++) {
        if (cfg->admin_gids[i] == c->gid)
            return true;
        for (size_t j = 0; j < c->n_groups; j++)
            if (cfg->admin_gids[i] == c->groups[j])
                return true;
    }
    return false;
}

/* The peer's supplementary groups as they were when it connected
 * (SO_PEERGROUPS, like SO_PEERCRED a snapshot the kernel took then: not
 * /proc/PID, which a process reusing a dead peer's pid would answer).
 * Without them (a kernel before 4.13) only the primary group counts. */
static void peer_groups(struct conn *c, int fd)
{
    socklen_t len = 64 * sizeof(gid_t);
    for (int attempt = 0; attempt < 2; attempt++) {
        gid_t *g = malloc(len);
        if (g == NULL)
            return;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, g, &len) == 0) {
            c->groups = g;
            c->n_groups = len / sizeof(gid_t);
            return;
        }
        free(g);
        if (errno != ERANGE) {
            log_debug("SO_PEERGROUPS: %s: only the primary group of pid %d "
                      "counts",
                      strerror(errno), (int)c->pid);
            return;
        }
        /* len now says how much it needs. */
    }
}

void conn_close(struct conn *c)
{
    struct daemon *d = c->d;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        d->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    if (c->reg_only)
        d->n_reg_only--;
    else
        d->n_conns--;
    log_debug("connection %llu closed", (unsigned long long)c->id);
    job_detach(c);
    txn_reset(c);
    conn_leases_release(c);
    mirror_conn_closed(c);
    event_free(c->request_deadline);
    event_free(c->resume);
    event_free(c->retry);
    free(c->groups);
    bufferevent_free(c->bev);
    resp_parser_free(&c->parser);
    free(c);
}

size_t conn_output_limit(const struct conn *c)
{
    /* Never less than what one reply of the largest value needs on top of
     * the soft limit: a GET of any value the store accepts is answered. */
    uint64_t limit = OUTPUT_HARD_LIMIT;
    uint64_t two_requests = 2 * c->d->cfg.max_request_bytes;
    uint64_t one_value =
        (uint64_t)c->d->max_value_bytes + OUTPUT_SOFT_LIMIT + 64 * 1024;
    if (two_requests > limit)
        limit = two_requests;
    if (one_value > limit)
        limit = one_value;
    return (size_t)limit;
}

static void conn_set_reading(struct conn *c, bool on)
{
    if (on == c->reading)
        return;
    c->reading = on;
    if (on) {
        event_base_update_cache_time(c->d->base); /* see conn_set_timeouts */
        bufferevent_enable(c->bev, EV_READ);
    } else
        bufferevent_disable(c->bev, EV_READ);
}

/* The write timeout of a closing connection: idle_timeout, bounded. */
static unsigned conn_flush_timeout_s(const struct conn *c)
{
    unsigned idle_s = c->d->cfg.idle_timeout_s;
    return idle_s == 0 || idle_s > CLOSE_FLUSH_TIMEOUT_S ? CLOSE_FLUSH_TIMEOUT_S
                                                         : idle_s;
}

/* Applies the idle limit as the connection's state asks (see the top of
 * the file). force: re-apply even if the kind is unchanged, for a new
 * idle_timeout. */
static void conn_set_timeouts(struct conn *c, bool force)
{
    unsigned idle_s = c->reg_only ? REG_ONLY_IDLE_S : c->d->cfg.idle_timeout_s;
    bool pending = evbuffer_get_length(bufferevent_get_output(c->bev)) > 0;
    enum conn_timeout want;
    if (c->closing) {
        want = CONN_TIMEOUT_FLUSH;
        idle_s = conn_flush_timeout_s(c);
    } else if (idle_s == 0 || c->parked || conn_waiting(c)) {
        want = CONN_TIMEOUT_NONE;
    } else {
        want = pending ? CONN_TIMEOUT_WRITE : CONN_TIMEOUT_READ;
    }
    if (want == c->timeout && !force)
        return;
    c->timeout = want;
    /* libevent counts a timeout from the time it cached when this loop
     * pass began: after a long command (a wait for the store's lock, a
     * big KEYS) that time is old, and the new timeout would have expired
     * before the reply could be written. */
    event_base_update_cache_time(c->d->base);
    struct timeval tv = {.tv_sec = idle_s};
    bufferevent_set_timeouts(c->bev, want == CONN_TIMEOUT_READ ? &tv : NULL,
                             want >= CONN_TIMEOUT_WRITE ? &tv : NULL);
}

/* Sets what the connection waits for next: a closing one whose output is
 * flushed is closed; reading is enabled only while it may parse more.
 * Returns false if the connection was closed (c is freed). */
static bool conn_settle(struct conn *c)
{
    if (c->closing &&
        evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
        conn_close(c);
        return false;
    }
    conn_set_reading(c, !c->closing && !c->input_ended && !c->output_full &&
                            !c->yielded && !c->parked && !conn_waiting(c));
    conn_set_timeouts(c, false);
    return true;
}

/* Closes the connection if the last reply took its output over limit
 * (pending output dropped). Returns true if it did (c is freed). */
static bool conn_closed_over_limit(struct conn *c, size_t limit)
{
    if (!c->reply_overflow &&
        evbuffer_get_length(bufferevent_get_output(c->bev)) <= limit)
        return false;
    log_warning("connection %llu (pid %d uid %d): the reply to '%s' takes "
                "its output over the limit of %zu bytes; disconnecting",
                (unsigned long long)c->id, (int)c->pid, (int)c->uid,
                c->last_command, limit);
    conn_close(c);
    return true;
}

static int64_t elapsed_ns(const struct timespec *since)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)(now.tv_sec - since->tv_sec) * 1000000000 +
           (now.tv_nsec - since->tv_nsec);
}

/* Arms the request deadline when a request has begun arriving (the parse
 * stopped inside one) and it is not armed yet; disarms it otherwise. */
static void request_deadline_set(struct conn *c, bool incomplete)
{
    unsigned limit_s = c->d->cfg.request_timeout_s;
    bool armed = evtimer_pending(c->request_deadline, NULL);
    if (incomplete && limit_s > 0 && !armed) {
        struct timeval tv = {.tv_sec = limit_s};
        event_base_update_cache_time(c->d->base);
        evtimer_add(c->request_deadline, &tv);
    } else if (!incomplete && armed) {
        evtimer_del(c->request_deadline);
    }
}

static void request_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct conn *c = arg;
    struct daemon *d = c->d;
    d->requests_timed_out++;
    log_info("connection %llu (pid %d uid %d): a request not whole after "
             "%u s (%zu bytes of it came); disconnecting",
             (unsigned long long)c->id, (int)c->pid, (int)c->uid,
             d->cfg.request_timeout_s,
             evbuffer_get_length(bufferevent_get_input(c->bev)));
    resp_errorf(bufferevent_get_output(c->bev),
                "ERR request not complete within %u s (request_timeout)",
                d->cfg.request_timeout_s);
    evbuffer_drain(bufferevent_get_input(c->bev),
                   evbuffer_get_length(bufferevent_get_input(c->bev)));
    c->closing = true;
    conn_settle(c);
}

/* Parses and runs the complete requests in the input, within one turn's
 * budget and while the output is under the soft limit. Returns false if
 * the connection was closed (c is freed). */
static bool conn_process(struct conn *c)
{
    if (c->parked || conn_waiting(c))
        return conn_settle(c); /* the retry timer or the job resumes it */
    struct daemon *d = c->d;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t limit = conn_output_limit(c);
    struct timespec turn_start;
    clock_gettime(CLOCK_MONOTONIC, &turn_start);
    unsigned done = 0;
    bool incomplete = false;
    while (!c->closing && !d->stopping && evbuffer_get_length(in) > 0) {
        if (evbuffer_get_length(out) >= OUTPUT_SOFT_LIMIT) {
            c->output_full = true;
            break;
        }
        if (done == TURN_MAX_REQUESTS ||
            (done > 0 && elapsed_ns(&turn_start) >= TURN_MAX_NS)) {
            static const struct timeval now = {0, 0};
            c->yielded = true;
            evtimer_add(c->resume, &now);
            break;
        }
        size_t len = evbuffer_get_length(in);
        if (len < resp_need(&c->parser)) {
            /* The last parse stopped inside a bulk string that has not
             * all arrived: parsing (and the pullup that copies the input
             * into one piece) would only stop there again. */
            incomplete = true;
            break;
        }
        const char *buf = (const char *)evbuffer_pullup(in, -1);
        size_t consumed = 0, argc = 0;
        struct resp_arg *argv = NULL;
        char err[256];
        enum resp_status st = resp_parse(&c->parser, buf, len, &consumed, &argc,
                                         &argv, err, sizeof err);
        if (st == RESP_INCOMPLETE) {
            incomplete = true;
            break;
        }
        if (st == RESP_PROTO || st == RESP_TOO_BIG) {
            log_info("connection %llu (pid %d): %s; disconnecting",
                     (unsigned long long)c->id, (int)c->pid, err);
            resp_error(out, err);
            c->closing = true;
            evbuffer_drain(in, len);
            break;
        }
        if (st == RESP_DONE && argc > 0) {
            command_run(c, argc, argv, out);
            if (c->parked) {
                /* Left in the input: parsed and run again on retry. */
                struct timeval tv = {0, PARK_RETRY_MS * 1000};
                evtimer_add(c->retry, &tv);
                break;
            }
            c->park_deadline_ms = 0;
            c->progress = 0;
            c->progress_count = 0;
            c->commands++;
            d->commands_total++;
            done++;
        }
        evbuffer_drain(in, consumed);
        if (conn_waiting(c))
            break; /* the job's end resumes parsing (conn_job_done) */
        if (conn_closed_over_limit(c, limit))
            return false;
    }
    request_deadline_set(c, incomplete);
    /* The last request run may have taken the output over the soft limit:
     * read nothing more until it drains, as if another were waiting. */
    if (evbuffer_get_length(out) >= OUTPUT_SOFT_LIMIT)
        c->output_full = true;
    /* After the peer's EOF, close once nothing complete is left to run. */
    if (c->input_ended && !c->yielded && !c->output_full && !c->parked &&
        !conn_waiting(c) && (incomplete || evbuffer_get_length(in) == 0))
        c->closing = true;
    return conn_settle(c);
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    struct conn *c = arg;
    c->last_active = time(NULL);
    if (c->yielded || c->output_full)
        return; /* buffered; parsed when the connection resumes */
    conn_process(c);
}

/* Runs when a write leaves at most OUTPUT_LOW_WATERMARK queued. */
static void conn_write_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    struct conn *c = arg;
    if (c->output_full) {
        c->output_full = false;
        if (!c->yielded) {
            conn_process(c);
            return;
        }
    }
    conn_settle(c);
}

/* The zero timer armed when a turn's budget ran out. */
static void conn_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct conn *c = arg;
    c->yielded = false;
    conn_process(c);
}

void conn_job_done(struct conn *c)
{
    if (conn_closed_over_limit(c, conn_output_limit(c)))
        return;
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) >=
        OUTPUT_SOFT_LIMIT)
        c->output_full = true;
    if (c->yielded || c->output_full)
        conn_settle(c);
    else
        conn_process(c);
}

/* The timer armed when a command was parked: runs it again, unless the
 * store was found busy again meanwhile by another parked command. */
static void conn_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct conn *c = arg;
    uint64_t now = daemon_now_ms();
    uint64_t busy_until = c->d->store_busy_until_ms;
    if (now < busy_until && now < c->park_deadline_ms) {
        uint64_t wait_ms = busy_until - now;
        struct timeval tv = {(time_t)(wait_ms / 1000),
                             (suseconds_t)(wait_ms % 1000) * 1000};
        evtimer_add(c->retry, &tv);
        return;
    }
    c->parked = false;
    if (c->yielded || c->output_full) {
        conn_settle(c);
        return;
    }
    conn_process(c);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct conn *c = arg;
    if ((what & BEV_EVENT_EOF) && (what & BEV_EVENT_READING)) {
        /* The peer shut down its side (libevent has stopped reading):
         * answer what it sent, flush, then close. */
        c->input_ended = true;
        c->reading = false;
        conn_process(c);
        return;
    }
    if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_WRITING))
        log_debug("connection %llu has not read its replies for %u s: "
                  "closing",
                  (unsigned long long)c->id,
                  c->closing ? conn_flush_timeout_s(c)
                             : c->d->cfg.idle_timeout_s);
    else if (what & BEV_EVENT_TIMEOUT)
        log_debug("connection %llu idle for %u s: closing",
                  (unsigned long long)c->id, c->d->cfg.idle_timeout_s);
    conn_close(c);
}

/* Whether a connection past the limit may be taken to register a reader
 * chunk for uid: fewer than REG_ONLY_MAX are, none of them uid's. */
static bool reg_only_free(const struct daemon *d, uid_t uid)
{
    if (d->n_reg_only >= REG_ONLY_MAX)
        return false;
    for (const struct conn *c = d->conns; c != NULL; c = c->next)
        if (c->reg_only && c->uid == uid)
            return false;
    return true;
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd,
                      struct sockaddr *sa, int socklen, void *arg)
{
    (void)l;
    (void)sa;
    (void)socklen;
    struct daemon *d = arg;
    if (d->stopping) {
        close(fd);
        return;
    }
    struct ucred cred;
    socklen_t clen = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0) {
        log_warning("SO_PEERCRED: %s; refusing connection", strerror(errno));
        close(fd);
        return;
    }
    struct conn peer = {.d = d, .uid = cred.uid, .gid = cred.gid};
    peer_groups(&peer, fd);
    bool admin = peer_is_admin(&d->cfg, &peer);
    free(peer.groups);
    /* The last admin_reserved connections are for admin peers. */
    uint32_t reserved = d->cfg.admin_reserved < d->cfg.max_connections
                            ? d->cfg.admin_reserved
                            : d->cfg.max_connections - 1;
    /* A non-admin peer past the limit may still register a reader chunk
     * (admins have the reserve): it hears the refusal in reply to
     * anything else. */
    bool reg_only = false;
    if (!admin && d->n_conns >= d->cfg.max_connections - reserved)
        reg_only = reg_only_free(d, cred.uid);
    if (!reg_only &&
        (d->n_conns >= d->cfg.max_connections ||
         (!admin && d->n_conns >= d->cfg.max_connections - reserved))) {
        static const char msg[] = "-ERR max number of clients reached\r\n";
        ssize_t ignored = write(fd, msg, sizeof msg - 1);
        (void)ignored;
        close(fd);
        d->connections_rejected++;
        return;
    }
    struct conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        close(fd);
        return;
    }
    c->resume = evtimer_new(d->base, conn_resume_cb, c);
    c->retry = evtimer_new(d->base, conn_retry_cb, c);
    c->request_deadline = evtimer_new(d->base, request_deadline_cb, c);
    c->bev = bufferevent_socket_new(d->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (c->resume == NULL || c->retry == NULL || c->request_deadline == NULL ||
        c->bev == NULL) {
        if (c->resume != NULL)
            event_free(c->resume);
        if (c->retry != NULL)
            event_free(c->retry);
        if (c->request_deadline != NULL)
            event_free(c->request_deadline);
        if (c->bev != NULL)
            bufferevent_free(c->bev); /* closes fd */
        else
            close(fd);
        free(c);
        return;
    }
    c->d = d;
    c->id = ++d->next_conn_id;
    c->fd = fd;
    c->pid = cred.pid;
    c->uid = cred.uid;
    c->gid = cred.gid;
    peer_groups(c, fd);
    c->admin = admin;
    c->reg_only = reg_only;
    c->created = c->last_active = time(NULL);
    resp_parser_init(&c->parser, d->cfg.max_request_bytes, MAX_ARGS);
    c->next = d->conns;
    if (d->conns != NULL)
        d->conns->prev = c;
    d->conns = c;
    if (reg_only)
        d->n_reg_only++;
    else
        d->n_conns++;
    d->connections_total++;
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    bufferevent_setwatermark(c->bev, EV_WRITE, OUTPUT_LOW_WATERMARK, 0);
    conn_set_timeouts(c, true);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    c->reading = true;
    log_debug("connection %llu from pid %d uid %d%s", (unsigned long long)c->id,
              (int)c->pid, (int)c->uid, c->admin ? " (admin)" : "");
}

static void accept_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct daemon *d = arg;
    if (d->listener != NULL && !d->stopping)
        evconnlistener_enable(d->listener);
}

/* accept() failed with something other than a retriable error: most often
 * EMFILE or ENFILE, which would fail again at once while the pending
 * connection waits in the backlog. */
static void accept_error_cb(struct evconnlistener *l, void *arg)
{
    struct daemon *d = arg;
    int err = EVUTIL_SOCKET_ERROR();
    time_t now = time(NULL);
    if (d->accept_error_logged == 0 ||
        now - d->accept_error_logged >= ACCEPT_ERROR_LOG_INTERVAL_S) {
        log_warning("accept: %s (%d connections open, %llu more failures "
                    "since the last report); pausing new connections for "
                    "%d ms at a time",
                    strerror(err), (int)d->n_conns,
                    (unsigned long long)d->accept_errors_unlogged,
                    ACCEPT_RETRY_MS);
        d->accept_error_logged = now;
        d->accept_errors_unlogged = 0;
    } else {
        d->accept_errors_unlogged++;
    }
    evconnlistener_disable(l);
    struct timeval tv = {.tv_usec = ACCEPT_RETRY_MS * 1000};
    evtimer_add(d->accept_retry, &tv);
}

/* Keeps max_connections within the descriptors the process may open:
 * raises the soft RLIMIT_NOFILE toward the hard limit if it is short,
 * then lowers max_connections if that was not enough, keeping FD_RESERVE
 * for everything else. */
static void fit_connections_to_fd_limit(struct daemon *d)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        log_warning("getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
        return;
    }
    rlim_t want = (rlim_t)d->cfg.max_connections + FD_RESERVE;
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= want)
        return;
    rlim_t old = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want
                      ? want
                      : rl.rlim_max;
    if (rl.rlim_cur > old) {
        if (setrlimit(RLIMIT_NOFILE, &rl) == 0) {
            log_info("raised the open-file limit from %llu to %llu for "
                     "max_connections %u",
                     (unsigned long long)old, (unsigned long long)rl.rlim_cur,
                     d->cfg.max_connections);
        } else {
            log_warning("cannot raise the open-file limit from %llu: %s",
                        (unsigned long long)old, strerror(errno));
            rl.rlim_cur = old;
        }
    }
    if (rl.rlim_cur >= want)
        return;
    uint32_t fit =
        rl.rlim_cur > FD_RESERVE ? (uint32_t)(rl.rlim_cur - FD_RESERVE) : 1;
    log_warning("max_connections lowered from %u to %u: the open-file limit "
                "is %llu (hard limit %llu) and %d descriptors are kept for "
                "the daemon",
                d->cfg.max_connections, fit, (unsigned long long)rl.rlim_cur,
                (unsigned long long)rl.rlim_max, FD_RESERVE);
    d->cfg.max_connections = fit;
}

/* Makes the socket's directory if it is missing (one level, 0755). */
static int ensure_socket_dir(const char *path)
{
    char dir[sizeof((struct sockaddr_un *)0)->sun_path];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL || slash == dir)
        return 0;
    *slash = '\0';
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        log_error("cannot create socket directory %s: %s", dir,
                  strerror(errno));
        return -1;
    }
    return 0;
}

/* Refuses to take over a socket another live server answers on; removes a
 * stale one left by a crash. */
static int clear_stale_socket(const struct sockaddr_un *addr)
{
    struct stat st;
    if (lstat(addr->sun_path, &st) != 0)
        return 0;
    if (!S_ISSOCK(st.st_mode)) {
        log_error("%s exists and is not a socket", addr->sun_path);
        return -1;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int live = connect(fd, (const struct sockaddr *)addr, sizeof *addr) == 0;
    close(fd);
    if (live) {
        log_error("another server is listening on %s", addr->sun_path);
        return -1;
    }
    unlink(addr->sun_path);
    return 0;
}

int control_start(struct daemon *d)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", d->cfg.socket_path);
    if (ensure_socket_dir(addr.sun_path) != 0 || clear_stale_socket(&addr) != 0)
        return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        log_error("socket: %s", strerror(errno));
        return -1;
    }
    /* Create the socket file with no access, then open it up to the
     * configured mode: no window where it is wider. */
    mode_t old = umask(0777);
    int rc = bind(fd, (struct sockaddr *)&addr, sizeof addr);
    umask(old);
    if (rc != 0) {
        log_error("bind %s: %s", addr.sun_path, strerror(errno));
        close(fd);
        return -1;
    }
    snprintf(d->socket_path, sizeof d->socket_path, "%s", addr.sun_path);
    if (chmod(addr.sun_path, d->cfg.socket_mode) != 0) {
        log_error("chmod %s: %s", addr.sun_path, strerror(errno));
        goto fail;
    }
    /* The group may already be the socket's (the daemon runs with it, as
     * under systemd's Group=, or the directory is setgid): then chown is
     * skipped, as a system call filter may forbid it. */
    struct stat st;
    if (d->cfg.store_gid != (gid_t)-1 &&
        (stat(addr.sun_path, &st) != 0 || st.st_gid != d->cfg.store_gid) &&
        chown(addr.sun_path, (uid_t)-1, d->cfg.store_gid) != 0)
        log_warning("chown %s to group %s: %s", addr.sun_path,
                    d->cfg.store_group, strerror(errno));
    if (listen(fd, LISTEN_BACKLOG) != 0) {
        log_error("listen %s: %s", addr.sun_path, strerror(errno));
        goto fail;
    }
    d->accept_retry = evtimer_new(d->base, accept_retry_cb, d);
    if (d->accept_retry == NULL) {
        log_error("evtimer_new failed");
        goto fail;
    }
    d->listener = evconnlistener_new(
        d->base, accept_cb, d, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
        -1, fd);
    if (d->listener == NULL) {
        log_error("evconnlistener_new failed");
        goto fail;
    }
    evconnlistener_set_error_cb(d->listener, accept_error_cb);
    fit_connections_to_fd_limit(d);
    return 0;
fail:
    if (d->accept_retry != NULL) {
        event_free(d->accept_retry);
        d->accept_retry = NULL;
    }
    close(fd);
    unlink(d->socket_path);
    d->socket_path[0] = '\0';
    return -1;
}

void control_stop_accepting(struct daemon *d)
{
    if (d->listener != NULL) {
        evconnlistener_free(d->listener);
        d->listener = NULL;
    }
    if (d->accept_retry != NULL) {
        event_free(d->accept_retry);
        d->accept_retry = NULL;
    }
}

void control_close_all(struct daemon *d)
{
    control_stop_accepting(d);
    while (d->conns != NULL) {
        struct conn *c = d->conns;
        /* Flush what is already queued: a SHUTDOWN's last replies. */
        evbuffer_write(bufferevent_get_output(c->bev), c->fd);
        conn_close(c);
    }
    if (d->socket_path[0] != '\0') {
        unlink(d->socket_path);
        d->socket_path[0] = '\0';
    }
}

void control_apply_config(struct daemon *d)
{
    fit_connections_to_fd_limit(d);
    for (struct conn *c = d->conns; c != NULL; c = c->next) {
        c->admin = peer_is_admin(&d->cfg, c);
        c->parser.max_request_bytes = d->cfg.max_request_bytes;
        conn_set_timeouts(c, true);
    }
}
