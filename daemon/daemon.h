/*
 * daemon.h - shmkvd's state, shared by its parts: main.c (lifecycle),
 * control.c (the socket server), commands.c (what each command does).
 */
#ifndef SHMKVD_DAEMON_H
#define SHMKVD_DAEMON_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "config.h"
#include "resp.h"
#include "shmkv.h"

struct event_base;
struct evconnlistener;
struct bufferevent;
struct evbuffer;

/* One control-socket connection. */
struct conn {
    struct daemon *d;
    struct bufferevent *bev;
    struct conn *prev, *next;
    uint64_t id;
    int fd;
    pid_t pid; /* peer credentials (SO_PEERCRED) */
    uid_t uid;
    gid_t gid;
    bool admin;
    bool closing; /* close once the output is flushed */
    time_t created;
    time_t last_active;
    uint64_t commands;
    char last_command[32];
    char name[64]; /* CLIENT SETNAME */
    struct resp_parser parser;
};

enum stop_save { STOP_SAVE_CONFIG, STOP_SAVE, STOP_NOSAVE };

struct daemon {
    struct config cfg;
    struct shmkv *kv; /* the owner's handle */
    bool adopted;     /* the store was left by a dead daemon */
    struct event_base *base;
    time_t started;
    char executable[4096];

    /* control socket */
    struct evconnlistener *listener;
    char socket_path[108]; /* as bound, for removal */
    struct conn *conns;
    uint32_t n_conns;
    uint64_t next_conn_id;
    uint64_t connections_total;
    uint64_t connections_rejected;
    uint64_t commands_total;

    /* persistence */
    time_t last_save;
    bool last_save_ok;
    uint64_t last_save_entries;

    /* lifecycle */
    bool stopping;
    enum stop_save stop_save;
};

/* control.c */
int control_start(struct daemon *d);
void control_stop_accepting(struct daemon *d);
void control_close_all(struct daemon *d);
void conn_close(struct conn *c);
/* Re-applies run-time settings to open connections (after SIGHUP). */
void control_apply_config(struct daemon *d);

/* commands.c: runs one parsed request, appending the reply to out. */
void command_run(struct conn *c, size_t argc, struct resp_arg *argv,
                 struct evbuffer *out);
size_t command_count(void);

/* main.c */
void daemon_request_stop(struct daemon *d, enum stop_save save);
int daemon_save(struct daemon *d, char *err, size_t err_cap);

#endif
