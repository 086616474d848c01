/*
 * control.c - the control socket: a Unix stream socket served on libevent.
 *
 * Each connection is a bufferevent. Input is parsed as RESP requests (one or
 * many pipelined in a read); each reply is appended to the output buffer in
 * order. The peer's credentials (SO_PEERCRED) are read once at accept and
 * decide whether it may run commands that change the store or its
 * lifecycle. Limits: connections (max_connections), one request's size
 * (max_request), idle time (idle_timeout, as a read timeout). A peer that
 * breaks the protocol gets one error reply and is disconnected once it has
 * been written; nothing it sends can reach other connections.
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
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon.h"
#include "log.h"

#define LISTEN_BACKLOG 128
#define MAX_ARGS (1024u * 1024u)

/* True if uid or one of the groups of pid is an admin. The daemon's own
 * user is always one: whoever can run the daemon can stop it. */
static bool peer_is_admin(const struct config *cfg, uid_t uid, gid_t gid,
                          pid_t pid)
{
    if (uid == geteuid())
        return true;
    for (size_t i = 0; i < cfg->n_admin_uids; i++)
        if (cfg->admin_uids[i] == uid)
            return true;
    if (cfg->n_admin_gids == 0)
        return false;
    for (size_t i = 0; i < cfg->n_admin_gids; i++)
        if (cfg->admin_gids[i] == gid)
            return true;
    /* Supplementary groups: from /proc, as the peer holds them now. */
    char path[64], line[4096];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return false;
    bool admin = false;
    while (!admin && fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "Groups:", 7) != 0)
            continue;
        char *save = NULL;
        for (char *tok = strtok_r(line + 7, " \t\n", &save); tok != NULL;
             tok = strtok_r(NULL, " \t\n", &save)) {
            gid_t g = (gid_t)strtoul(tok, NULL, 10);
            for (size_t i = 0; i < cfg->n_admin_gids; i++)
                if (cfg->admin_gids[i] == g)
                    admin = true;
        }
    }
    fclose(f);
    return admin;
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
    d->n_conns--;
    log_debug("connection %llu closed", (unsigned long long)c->id);
    bufferevent_free(c->bev);
    resp_parser_free(&c->parser);
    free(c);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    if (c->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        conn_close(c);
}

/* Parses and runs every complete request in the input. */
static void conn_read_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct daemon *d = c->d;
    struct evbuffer *in = bufferevent_get_input(bev);
    struct evbuffer *out = bufferevent_get_output(bev);
    c->last_active = time(NULL);
    while (!c->closing && evbuffer_get_length(in) > 0) {
        size_t len = evbuffer_get_length(in);
        const char *buf = (const char *)evbuffer_pullup(in, -1);
        size_t consumed = 0, argc = 0;
        struct resp_arg *argv = NULL;
        char err[256];
        enum resp_status st = resp_parse(&c->parser, buf, len, &consumed, &argc,
                                         &argv, err, sizeof err);
        if (st == RESP_INCOMPLETE)
            break;
        if (st == RESP_PROTO || st == RESP_TOO_BIG) {
            log_info("connection %llu (pid %d): %s; disconnecting",
                     (unsigned long long)c->id, (int)c->pid, err);
            resp_error(out, err);
            c->closing = true;
            evbuffer_drain(in, len);
            break;
        }
        if (st == RESP_DONE && argc > 0) {
            c->commands++;
            d->commands_total++;
            command_run(c, argc, argv, out);
        }
        evbuffer_drain(in, consumed);
        if (d->stopping)
            break;
    }
    if (c->closing && evbuffer_get_length(out) == 0)
        conn_close(c);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct conn *c = arg;
    if (what & BEV_EVENT_TIMEOUT)
        log_debug("connection %llu idle for %u s: closing",
                  (unsigned long long)c->id, c->d->cfg.idle_timeout_s);
    conn_close(c);
}

/* Applies the idle limit to a connection. */
static void conn_set_timeouts(struct conn *c)
{
    if (c->d->cfg.idle_timeout_s == 0) {
        bufferevent_set_timeouts(c->bev, NULL, NULL);
        return;
    }
    struct timeval idle = {.tv_sec = c->d->cfg.idle_timeout_s};
    bufferevent_set_timeouts(c->bev, &idle, NULL);
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
    if (d->n_conns >= d->cfg.max_connections) {
        static const char msg[] = "-ERR max number of clients reached\r\n";
        ssize_t ignored = write(fd, msg, sizeof msg - 1);
        (void)ignored;
        close(fd);
        d->connections_rejected++;
        return;
    }
    struct ucred cred;
    socklen_t clen = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0) {
        log_warning("SO_PEERCRED: %s; refusing connection", strerror(errno));
        close(fd);
        return;
    }
    struct conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        close(fd);
        return;
    }
    c->bev = bufferevent_socket_new(d->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (c->bev == NULL) {
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
    c->admin = peer_is_admin(&d->cfg, cred.uid, cred.gid, cred.pid);
    c->created = c->last_active = time(NULL);
    resp_parser_init(&c->parser, d->cfg.max_request_bytes, MAX_ARGS);
    c->next = d->conns;
    if (d->conns != NULL)
        d->conns->prev = c;
    d->conns = c;
    d->n_conns++;
    d->connections_total++;
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    conn_set_timeouts(c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    log_debug("connection %llu from pid %d uid %d%s", (unsigned long long)c->id,
              (int)c->pid, (int)c->uid, c->admin ? " (admin)" : "");
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
    if (d->cfg.store_gid != (gid_t)-1 &&
        chown(addr.sun_path, (uid_t)-1, d->cfg.store_gid) != 0)
        log_warning("chown %s to group %s: %s", addr.sun_path,
                    d->cfg.store_group, strerror(errno));
    if (listen(fd, LISTEN_BACKLOG) != 0) {
        log_error("listen %s: %s", addr.sun_path, strerror(errno));
        goto fail;
    }
    d->listener = evconnlistener_new(
        d->base, accept_cb, d, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
        -1, fd);
    if (d->listener == NULL) {
        log_error("evconnlistener_new failed");
        goto fail;
    }
    return 0;
fail:
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
    for (struct conn *c = d->conns; c != NULL; c = c->next) {
        c->admin = peer_is_admin(&d->cfg, c->uid, c->gid, c->pid);
        c->parser.max_request_bytes = d->cfg.max_request_bytes;
        conn_set_timeouts(c);
    }
}
