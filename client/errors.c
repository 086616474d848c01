/*
 * errors.c - error names and the thread-local last-error detail.
 *
 * Codes are fixed strings; the detail (which sysctl, which file and line)
 * goes to a per-thread buffer that shmkv_last_error() returns.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

static _Thread_local char last_error[512];

const char *shmkv_strerror(int err)
{
    switch (err) {
    case SHMKV_OK:
        return "success";
    case SHMKV_EINVAL:
        return "invalid argument";
    case SHMKV_ENOTFOUND:
        return "key not found";
    case SHMKV_EEXIST:
        return "already exists";
    case SHMKV_E2BIG:
        return "key or value larger than the store's limit";
    case SHMKV_ENOBUFS:
        return "buffer too small for the value";
    case SHMKV_ENOSPC:
        return "store is full";
    case SHMKV_ETIMEDOUT:
        return "timed out waiting for the store's lock or its readers";
    case SHMKV_ENOSTORE:
        return "no store at that key";
    case SHMKV_EACCES:
        return "permission denied by the store's segment mode";
    case SHMKV_EVERSION:
        return "store has a different layout version";
    case SHMKV_ENOTSHMKV:
        return "segment is not a shmkv store";
    case SHMKV_ELIMIT:
        return "over a kernel shared memory limit";
    case SHMKV_ERDONLY:
        return "write through a read-only handle";
    case SHMKV_ENOTNUM:
        return "value is not a 64-bit decimal integer";
    case SHMKV_EOVERFLOW:
        return "increment would overflow";
    case SHMKV_ECLOSED:
        return "store was closed by its owner";
    case SHMKV_ESTATE:
        return "call not allowed in this state (read section)";
    case SHMKV_ECLIENTS:
        return "store's client table is full";
    case SHMKV_ECORRUPT:
        return "store is inconsistent";
    case SHMKV_ECONFIG:
        return "bad config file";
    case SHMKV_ENOMEM:
        return "out of memory";
    case SHMKV_ESYS:
        return "system error";
    case SHMKV_EOWNED:
        return "store is owned by a live process";
    case SHMKV_ESTALE:
        return "read section was revoked: discard what it read";
    case SHMKV_EFORKED:
        return "handle belongs to another process (fork)";
    case SHMKV_EBUSY:
        return "another resize is under way";
    case SHMKV_EAGAIN:
        return "interrupted: try again";
    case SHMKV_ECHANGED:
        return "key changed since its version was read";
    case SHMKV_EMIRRORED:
        return "key mirrors an upstream: write it there";
    default:
        return "unknown error";
    }
}

const char *shmkv_last_error(void)
{
    return last_error[0] ? last_error : "no error";
}

int set_error(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return code;
}

int set_errno_error(int code, const char *what)
{
    int saved = errno;
    snprintf(last_error, sizeof last_error, "%s: %s", what, strerror(saved));
    errno = saved;
    return code;
}
