/*
 * notify.h - the systemd notification protocol: a datagram of
 * "NAME=value" lines to the AF_UNIX socket named by $NOTIFY_SOCKET (a path,
 * or an abstract name when it starts with '@'). Without $NOTIFY_SOCKET
 * every call is a no-op, so shmkvd runs the same outside systemd.
 */
#ifndef SHMKVD_NOTIFY_H
#define SHMKVD_NOTIFY_H

#include <stdint.h>

/* Sends state ("READY=1", "STATUS=...", "STOPPING=1", "WATCHDOG=1").
 * Returns 1 if sent, 0 if there is no $NOTIFY_SOCKET, -1 on error. */
int notify_send(const char *state);
int notify_sendf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The watchdog interval systemd asked for in microseconds ($WATCHDOG_USEC,
 * when $WATCHDOG_PID is unset or this process), or 0. */
uint64_t notify_watchdog_usec(void);

#endif
