/*
 * log.h - shmkvd's log: leveled lines on stderr (journald reads them, with
 * the <N> priority prefix when stderr is the journal), or syslog once the
 * daemon has detached from its terminal.
 */
#ifndef SHMKVD_LOG_H
#define SHMKVD_LOG_H

#include "config.h"

void log_set_level(enum log_level level);
void log_use_syslog(void);
void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_LEVEL_WARNING, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__)

#endif
