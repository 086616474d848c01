/*
 * log.c - see log.h. Under systemd (JOURNAL_STREAM set) each line starts
 * with the kernel-style priority "<3>" .. "<7>" that journald turns into the
 * entry's priority; on a terminal it starts with a timestamp and the level.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <syslog.h>
#include <time.h>

#include "log.h"

static enum log_level current_level = LOG_LEVEL_INFO;
static bool to_syslog;
static int journal = -1; /* unknown until the first line */

static const int syslog_priority[] = {LOG_ERR, LOG_WARNING, LOG_INFO,
                                      LOG_DEBUG};

void log_set_level(enum log_level level)
{
    current_level = level;
}

void log_use_syslog(void)
{
    openlog("shmkvd", LOG_PID | LOG_NDELAY, LOG_DAEMON);
    to_syslog = true;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if (level > current_level)
        return;
    va_list ap;
    va_start(ap, fmt);
    if (to_syslog) {
        vsyslog(syslog_priority[level], fmt, ap);
        va_end(ap);
        return;
    }
    if (journal < 0)
        journal = getenv("JOURNAL_STREAM") != NULL;
    char line[2048];
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (journal) {
        fprintf(stderr, "<%d>%s\n", syslog_priority[level], line);
    } else {
        char stamp[32];
        time_t now = time(NULL);
        struct tm tm;
        strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S",
                 localtime_r(&now, &tm));
        fprintf(stderr, "%s %s %s\n", stamp, log_level_name(level), line);
    }
}
