/*
 * _shmkv.c - the CPython extension behind the shmkv package: a Store (one
 * libshmkv handle per thread that uses it, opened on first use and again
 * in a fork()ed child), read sections whose values are read-only
 * memoryviews into shared memory, and the error classes.
 *
 * Threads. A libshmkv handle is not thread-safe, so each thread gets its
 * own (struct thread_rec), found through a per-thread list (one TSS key
 * for the module) and, faster, the Store's cache of the last thread that
 * used it. Everything here runs with the GIL held, which serialises the
 * lists; calls that can wait (writes, open, check, resize) let the GIL go
 * and mark their handle busy, so that close() from another thread leaves
 * it to its thread.
 *
 * Forks. A child's copy of a handle is refused by libshmkv: a child sees a
 * fork generation newer than its records' (pthread_atfork) and opens its
 * own handles.
 *
 * Zero copy. A section's memoryviews are made by the section object
 * itself as a buffer exporter (one pending value at a time), so that it
 * knows how many views of its values are alive. When the block ends it
 * releases every view it handed out; a view derived from one (a slice, an
 * array over it) that is still alive keeps the section open, and its
 * memory safe, until it is released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <time.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "shmkv.h"

/* ---- errors ---- */

#define N_CODES 30 /* 0 .. -(N_CODES - 1) */

static PyObject *Error;
static PyObject *error_class[N_CODES];

static const struct {
    int code;
    const char *name;
    const char *extra_base; /* a builtin it also is, or NULL */
    const char *doc;
} error_defs[] = {
    {SHMKV_EINVAL, "InvalidArgument", "ValueError", "a bad argument"},
    {SHMKV_ENOTFOUND, "NotFound", "KeyError", "no such key (or it expired)"},
    {SHMKV_EEXIST, "Exists", NULL, "a store already exists at that key"},
    {SHMKV_E2BIG, "TooBig", "ValueError", "key or value over the limit"},
    {SHMKV_ENOBUFS, "BufferTooSmall", NULL, "a buffer too small"},
    {SHMKV_ENOSPC, "StoreFull", NULL, "the store is full"},
    {SHMKV_ETIMEDOUT, "Timeout", "TimeoutError", "a write waited too long"},
    {SHMKV_ENOSTORE, "NoStore", NULL, "no store at that key"},
    {SHMKV_EACCES, "PermissionDenied", "PermissionError",
     "the store's permissions refuse it"},
    {SHMKV_EVERSION, "VersionMismatch", NULL,
     "a store of another layout version"},
    {SHMKV_ENOTSHMKV, "NotAStore", NULL, "the segment is not a shmkv store"},
    {SHMKV_ELIMIT, "KernelLimit", NULL, "over a kernel limit"},
    {SHMKV_ERDONLY, "ReadOnly", NULL, "a write through a read-only store"},
    {SHMKV_ENOTNUM, "NotANumber", "ValueError", "incr on a non-integer value"},
    {SHMKV_EOVERFLOW, "Overflow", "OverflowError", "incr past 64 bits"},
    {SHMKV_ECLOSED, "Closed", NULL, "the store (or this Store) was closed"},
    {SHMKV_ESTATE, "StateError", NULL,
     "a call out of order (a write inside a read section)"},
    {SHMKV_ECLIENTS, "TooManyClients", NULL, "every client slot is taken"},
    {SHMKV_ECORRUPT, "Corrupt", NULL, "the store is damaged"},
    {SHMKV_ECONFIG, "ConfigError", NULL, "the config file is bad"},
    {SHMKV_ENOMEM, "OutOfMemory", "MemoryError", "out of memory"},
    {SHMKV_ESYS, "SystemCallError", "OSError", "a system call failed"},
    {SHMKV_EOWNED, "Owned", NULL, "the store's owner is alive"},
    {SHMKV_ESTALE, "Stale", NULL,
     "the read section was revoked: discard what it read"},
    {SHMKV_EFORKED, "Forked", NULL, "a handle of another process"},
    {SHMKV_EBUSY, "Busy", NULL, "another resize is under way"},
    {SHMKV_EAGAIN, "TryAgain", NULL, "interrupted: try again"},
    {SHMKV_ECHANGED, "Changed", NULL,
     "the key changed since its version was read"},
    {SHMKV_EMIRRORED, "Mirrored", NULL,
     "the key mirrors an upstream: write it there"},
};

/* Raises the exception for rc, with libshmkv's detail. */
static PyObject *raise_rc(int rc)
{
    PyObject *cls = rc <= 0 && -rc < N_CODES && error_class[-rc] != NULL
                        ? error_class[-rc]
                        : Error;
    PyErr_Format(cls, "%s: %s", shmkv_strerror(rc), shmkv_last_error());
    return NULL;
}

static PyObject *raise_closed(void)
{
    PyErr_SetString(error_class[-SHMKV_ECLOSED], "this Store was closed");
    return NULL;
}

/* ---- keys and values ---- */

/* A key as bytes: bytes and str (UTF-8) without a copy, other buffers
 * through the buffer protocol (*held must then be released). */
struct key {
    const char *data;
    Py_ssize_t len;
    Py_buffer view;
    int held;
};

static int key_get(PyObject *o, struct key *k)
{
    k->held = 0;
    if (PyBytes_Check(o)) {
        k->data = PyBytes_AS_STRING(o);
        k->len = PyBytes_GET_SIZE(o);
        return 0;
    }
    if (PyUnicode_Check(o)) {
        k->data = PyUnicode_AsUTF8AndSize(o, &k->len);
        return k->data != NULL ? 0 : -1;
    }
    if (PyObject_CheckBuffer(o)) {
        if (PyObject_GetBuffer(o, &k->view, PyBUF_SIMPLE) != 0)
            return -1;
        k->held = 1;
        k->data = k->view.buf;
        k->len = k->view.len;
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "a key is bytes or str, not %.100s",
                 Py_TYPE(o)->tp_name);
    return -1;
}

static void key_put(struct key *k)
{
    if (k->held)
        PyBuffer_Release(&k->view);
}

static int value_get(PyObject *o, Py_buffer *v)
{
    if (PyUnicode_Check(o)) {
        PyErr_SetString(PyExc_TypeError,
                        "a value is bytes-like: encode a str, or open the "
                        "store with a codec");
        return -1;
    }
    return PyObject_GetBuffer(o, v, PyBUF_SIMPLE);
}

/* ---- per-thread handles ---- */

static Py_tss_t thread_key = Py_tss_NEEDS_INIT;
static uint64_t fork_gen;   /* raised in a child after fork() */
static uint64_t store_next; /* serial numbers of Stores */

static void after_fork_child(void)
{
    fork_gen++;
}

/* A thread's handles: an object kept in a threading.local, so that it is
 * freed, and its handles closed, when the thread ends (a thread's client
 * slot is given back then, and a new thread reusing its id never finds
 * them). The module's TSS key finds it fast. */
struct thread_list {
    PyObject_HEAD struct thread_rec *head;
};

struct thread_rec {
    shmkv_t *kv;
    uint64_t serial;           /* the Store's */
    uint64_t forkgen;          /* fork_gen when opened */
    int busy;                  /* calls on it with the GIL let go */
    int in_section;            /* a read section of this thread is open on it */
    int detached;              /* a closing section owns it (ExporterObject) */
    struct StoreObject *store; /* whose list holds it */
    struct thread_list *tl;
    struct thread_rec *next_in_thread;
    struct thread_rec *next_in_store;
};

typedef struct StoreObject {
    PyObject_HEAD char *where;
    int flags; /* SHMKV_RDONLY */
    int closed;
    int owner; /* made by create(): destroy() removes it */
    uint64_t serial;
    struct thread_rec *recs;
    unsigned long last_tid;
    struct thread_rec *last;
} StoreObject;

static PyObject *thread_local; /* a threading.local: .handles */
static PyTypeObject ThreadListType;

static struct thread_list *thread_list_get(void)
{
    struct thread_list *tl = PyThread_tss_get(&thread_key);
    if (tl != NULL)
        return tl;
    tl = PyObject_New(struct thread_list, &ThreadListType);
    if (tl == NULL)
        return NULL;
    tl->head = NULL;
    int rc = PyObject_SetAttrString(thread_local, "handles", (PyObject *)tl);
    Py_DECREF(tl); /* the thread-local holds it */
    if (rc != 0)
        return NULL;
    if (PyThread_tss_set(&thread_key, tl) != 0) {
        PyErr_NoMemory();
        return NULL;
    }
    return tl;
}

/* Takes rec out of its thread's list: a closing section keeps it. */
static void rec_detach(StoreObject *s, struct thread_rec *rec)
{
    if (rec->detached)
        return;
    struct thread_rec **p = &rec->tl->head;
    while (*p != NULL && *p != rec)
        p = &(*p)->next_in_thread;
    if (*p == rec)
        *p = rec->next_in_thread;
    rec->detached = 1;
    rec->tl = NULL;
    if (s->last == rec)
        s->last = NULL;
}

/* Unlinks rec from its thread's and its Store's lists and frees it. */
static void rec_free(StoreObject *s, struct thread_rec *rec)
{
    rec_detach(s, rec);
    struct thread_rec **q = &s->recs;
    while (*q != NULL && *q != rec)
        q = &(*q)->next_in_store;
    if (*q == rec)
        *q = rec->next_in_store;
    if (rec->kv != NULL)
        shmkv_close(rec->kv);
    PyMem_RawFree(rec);
}

/* A thread ended: its handles are closed, but one a section or a call
 * still uses, which its user frees. */
static void thread_list_dealloc(struct thread_list *tl)
{
    if (PyThread_tss_is_created(&thread_key) &&
        PyThread_tss_get(&thread_key) == tl)
        PyThread_tss_set(&thread_key, NULL);
    while (tl->head != NULL) {
        struct thread_rec *r = tl->head;
        if (r->busy || r->in_section)
            rec_detach(r->store, r);
        else
            rec_free(r->store, r);
    }
    PyObject_Free(tl);
}

static PyTypeObject ThreadListType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmkv._ThreadHandles",
    .tp_basicsize = sizeof(struct thread_list),
    .tp_dealloc = (destructor)thread_list_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A thread's libshmkv handles, closed when the thread ends.",
};

/* Frees r if nothing uses it any more and it is to go: its Store was
 * closed, or its thread ended or it was left to a closing section. */
static void rec_release_if_done(StoreObject *s, struct thread_rec *r)
{
    if (r->busy == 0 && !r->in_section && (s->closed || r->detached))
        rec_free(s, r);
}

/* This thread's handle on s, opened if it has none yet. */
static struct thread_rec *rec_get(StoreObject *s)
{
    if (s->closed) {
        raise_closed();
        return NULL;
    }
    unsigned long tid = PyThread_get_thread_ident();
    struct thread_rec *r = s->last;
    if (r != NULL && s->last_tid == tid && r->forkgen == fork_gen)
        return r;
    struct thread_list *tl = thread_list_get();
    if (tl == NULL)
        return NULL;
    for (r = tl->head; r != NULL; r = r->next_in_thread)
        if (r->serial == s->serial)
            break;
    if (r != NULL && r->forkgen != fork_gen) {
        /* The parent's, inherited by fork(): never used here; freed now,
         * or by the section that still holds it. */
        if (r->in_section || r->busy)
            rec_detach(s, r);
        else
            rec_free(s, r);
        r = NULL;
    }
    if (r == NULL) {
        r = PyMem_RawCalloc(1, sizeof *r);
        if (r == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        int rc;
        shmkv_t *kv = NULL;
        Py_BEGIN_ALLOW_THREADS rc = shmkv_open(s->where, s->flags, &kv);
        Py_END_ALLOW_THREADS if (rc != 0)
        {
            PyMem_RawFree(r);
            raise_rc(rc);
            return NULL;
        }
        if (s->closed) { /* closed while it opened */
            shmkv_close(kv);
            PyMem_RawFree(r);
            raise_closed();
            return NULL;
        }
        r->kv = kv;
        r->serial = s->serial;
        r->forkgen = fork_gen;
        r->store = s;
        r->tl = tl;
        r->next_in_thread = tl->head;
        tl->head = r;
        r->next_in_store = s->recs;
        s->recs = r;
    }
    s->last = r;
    s->last_tid = tid;
    return r;
}

/* After a call that let the GIL go: its handle is freed if the Store was
 * closed meanwhile. */
static void rec_done(StoreObject *s, struct thread_rec *r)
{
    r->busy--;
    rec_release_if_done(s, r);
}

/* ---- Store ---- */

static PyTypeObject StoreType;
static PyTypeObject SectionType;

static PyObject *store_new_object(const char *where, int flags, int owner)
{
    StoreObject *s = PyObject_New(StoreObject, &StoreType);
    if (s == NULL)
        return NULL;
    /* Every field set before anything can fail: dealloc reads them. */
    s->where = NULL;
    s->flags = flags;
    s->closed = 0;
    s->owner = owner;
    s->serial = ++store_next;
    s->recs = NULL;
    s->last = NULL;
    s->last_tid = 0;
    size_t n = strlen(where) + 1;
    s->where = PyMem_RawMalloc(n);
    if (s->where == NULL) {
        Py_DECREF(s);
        return PyErr_NoMemory();
    }
    memcpy(s->where, where, n);
    return (PyObject *)s;
}

static void store_close_all(StoreObject *s)
{
    s->closed = 1;
    struct thread_rec *r = s->recs, *next;
    for (; r != NULL; r = next) {
        next = r->next_in_store;
        if (r->busy == 0 && !r->in_section)
            rec_free(s, r);
    }
}

static void store_dealloc(StoreObject *s)
{
    /* A rec a section still holds keeps a reference to the Store, so
     * none is in a section here. */
    store_close_all(s);
    PyMem_RawFree(s->where);
    PyObject_Free(s);
}

static PyObject *store_close(StoreObject *s, PyObject *unused)
{
    (void)unused;
    store_close_all(s);
    Py_RETURN_NONE;
}

static PyObject *store_enter(StoreObject *s, PyObject *unused)
{
    (void)unused;
    Py_INCREF(s);
    return (PyObject *)s;
}

static PyObject *store_exit(StoreObject *s, PyObject *args)
{
    (void)args;
    store_close_all(s);
    Py_RETURN_FALSE;
}

/* Looks key up in a section of its own (or the thread's open one): its
 * value as bytes (copy), or Py_True (no copy) if only whether it is there
 * is asked; NULL with KeyError if absent (raise_missing), or with the
 * error, or with none (*found 0). */
static PyObject *lookup_bytes(StoreObject *s, PyObject *keyobj,
                              int raise_missing, int *found, int copy)
{
    *found = 0;
    struct thread_rec *r = rec_get(s);
    if (r == NULL)
        return NULL;
    struct key k;
    if (key_get(keyobj, &k) != 0)
        return NULL;
    PyObject *out = NULL;
    /* Busy: the copy allocates, which may run code that closes the Store;
     * the handle then goes when this is done. */
    r->busy++;
    for (int attempt = 0;; attempt++) {
        int own = !r->in_section;
        int rc = own ? shmkv_read_begin(r->kv) : 0;
        if (rc != 0) {
            raise_rc(rc);
            break;
        }
        shmkv_val_t v;
        rc = shmkv_get(r->kv, k.data, (size_t)k.len, &v);
        if (rc == 0) {
            if (copy) {
                out = PyBytes_FromStringAndSize(v.data, (Py_ssize_t)v.len);
            } else {
                out = Py_True;
                Py_INCREF(out);
            }
        }
        int end = own ? shmkv_read_end(r->kv) : 0;
        if (end == SHMKV_ESTALE && own && attempt < 3) {
            Py_CLEAR(out);
            continue; /* revoked while it copied: look again */
        }
        if (rc == SHMKV_ENOTFOUND || (rc == SHMKV_E2BIG && !copy)) {
            if (raise_missing)
                PyErr_SetObject(PyExc_KeyError, keyobj);
        } else if (rc != 0) {
            raise_rc(rc);
        } else if (out == NULL) {
            /* the copy failed: its error is set */
        } else if (end != 0) {
            Py_CLEAR(out);
            raise_rc(end);
        } else {
            *found = 1;
        }
        break;
    }
    rec_done(s, r);
    key_put(&k);
    return out;
}

static PyObject *store_getitem(StoreObject *s, PyObject *key)
{
    int found;
    return lookup_bytes(s, key, 1, &found, 1);
}

static PyObject *store_get(StoreObject *s, PyObject *args, PyObject *kw)
{
    static char *names[] = {"key", "default", NULL};
    PyObject *key, *dflt = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:get", names, &key, &dflt))
        return NULL;
    int found = 0;
    PyObject *v = lookup_bytes(s, key, 0, &found, 1);
    if (v != NULL || PyErr_Occurred())
        return v;
    Py_INCREF(dflt);
    return dflt;
}

static int store_contains(StoreObject *s, PyObject *key)
{
    int found = 0;
    PyObject *v = lookup_bytes(s, key, 0, &found, 0);
    if (v == NULL && PyErr_Occurred())
        return -1;
    Py_XDECREF(v);
    return found;
}

/* A write with the GIL let go; returns its rc, or 1 after a Python error
 * (closed Store, bad key or value). */
enum wop { W_SET, W_DEL, W_EXPIRE, W_INCR };

static int write_op(StoreObject *s, enum wop op, PyObject *keyobj,
                    PyObject *valobj, uint64_t ttl_ms, int flags, int64_t delta,
                    int64_t *result)
{
    struct thread_rec *r = rec_get(s);
    if (r == NULL)
        return 1;
    struct key k;
    if (key_get(keyobj, &k) != 0)
        return 1;
    Py_buffer v = {0};
    if (valobj != NULL && value_get(valobj, &v) != 0) {
        key_put(&k);
        return 1;
    }
    int rc;
    r->busy++;
    Py_BEGIN_ALLOW_THREADS switch (op)
    {
    case W_SET:
        rc = shmkv_pset(r->kv, k.data, (size_t)k.len, v.buf, (size_t)v.len,
                        ttl_ms, flags);
        break;
    case W_DEL:
        rc = shmkv_del(r->kv, k.data, (size_t)k.len);
        break;
    case W_EXPIRE:
        rc = shmkv_pexpire(r->kv, k.data, (size_t)k.len, ttl_ms);
        break;
    default:
        rc = shmkv_incr(r->kv, k.data, (size_t)k.len, delta, result);
        break;
    }
    Py_END_ALLOW_THREADS rec_done(s, r);
    if (valobj != NULL)
        PyBuffer_Release(&v);
    key_put(&k);
    return rc;
}

static int store_ass_subscript(StoreObject *s, PyObject *key, PyObject *val)
{
    int rc = write_op(s, val != NULL ? W_SET : W_DEL, key, val, 0, 0, 0, NULL);
    if (rc == 1)
        return -1;
    if (rc == SHMKV_ENOTFOUND && val == NULL) {
        PyErr_SetObject(PyExc_KeyError, key);
        return -1;
    }
    if (rc != 0) {
        raise_rc(rc);
        return -1;
    }
    return 0;
}

/* A TTL in seconds, int or float, to milliseconds (rounded up, so that a
 * TTL is never shorter than asked); None: no TTL. */
static int ttl_arg(PyObject *o, uint64_t *ttl_ms)
{
    if (o == NULL || o == Py_None) {
        *ttl_ms = 0;
        return 0;
    }
    double t = PyFloat_AsDouble(o);
    if (t == -1.0 && PyErr_Occurred())
        return -1;
    if (!(t > 0) || t > 1e12) {
        PyErr_SetString(PyExc_ValueError,
                        "ttl is a positive number of seconds (a float for "
                        "milliseconds)");
        return -1;
    }
    double ms = t * 1000.0;
    *ttl_ms = (uint64_t)ms + ((double)(uint64_t)ms < ms);
    return 0;
}

static PyObject *store_set(StoreObject *s, PyObject *args, PyObject *kw)
{
    static char *names[] = {"key", "value", "ttl", "nx", "xx", "keepttl", NULL};
    PyObject *key, *val, *ttlobj = Py_None;
    int nx = 0, xx = 0, keepttl = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O$ppp:set", names, &key,
                                     &val, &ttlobj, &nx, &xx, &keepttl))
        return NULL;
    uint64_t ttl;
    if (ttl_arg(ttlobj, &ttl) != 0)
        return NULL;
    int flags = (nx ? SHMKV_NX : 0) | (xx ? SHMKV_XX : 0) |
                (keepttl ? SHMKV_KEEPTTL : 0);
    int rc = write_op(s, W_SET, key, val, ttl, flags, 0, NULL);
    if (rc == 1)
        return NULL;
    if ((rc == SHMKV_EEXIST && nx) || (rc == SHMKV_ENOTFOUND && xx))
        Py_RETURN_FALSE;
    if (rc != 0)
        return raise_rc(rc);
    Py_RETURN_TRUE;
}

static PyObject *store_delete(StoreObject *s, PyObject *key)
{
    int rc = write_op(s, W_DEL, key, NULL, 0, 0, 0, NULL);
    if (rc == 1)
        return NULL;
    if (rc == SHMKV_ENOTFOUND)
        Py_RETURN_FALSE;
    if (rc != 0)
        return raise_rc(rc);
    Py_RETURN_TRUE;
}

static PyObject *store_incr(StoreObject *s, PyObject *args, PyObject *kw)
{
    static char *names[] = {"key", "delta", NULL};
    PyObject *key;
    long long delta = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|L:incr", names, &key, &delta))
        return NULL;
    int64_t result = 0;
    int rc = write_op(s, W_INCR, key, NULL, 0, 0, delta, &result);
    if (rc == 1)
        return NULL;
    if (rc != 0)
        return raise_rc(rc);
    return PyLong_FromLongLong(result);
}

static PyObject *store_expire(StoreObject *s, PyObject *args, PyObject *kw)
{
    static char *names[] = {"key", "ttl", NULL};
    PyObject *key, *ttlobj;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO:expire", names, &key,
                                     &ttlobj))
        return NULL;
    uint64_t ttl;
    if (ttl_arg(ttlobj, &ttl) != 0)
        return NULL;
    int rc = write_op(s, W_EXPIRE, key, NULL, ttl, 0, 0, NULL);
    if (rc == 1)
        return NULL;
    if (rc == SHMKV_ENOTFOUND)
        Py_RETURN_FALSE;
    if (rc != 0)
        return raise_rc(rc);
    Py_RETURN_TRUE;
}

/* ttl() and pttl(): the time left in seconds (rounded, as Redis) or in
 * milliseconds; None without a TTL, KeyError if absent. */
static PyObject *ttl_common(StoreObject *s, PyObject *keyobj, bool ms)
{
    struct thread_rec *r = rec_get(s);
    if (r == NULL)
        return NULL;
    struct key k;
    if (key_get(keyobj, &k) != 0)
        return NULL;
    int64_t ttl = 0;
    int rc = ms ? shmkv_pttl(r->kv, k.data, (size_t)k.len, &ttl)
                : shmkv_ttl(r->kv, k.data, (size_t)k.len, &ttl);
    key_put(&k);
    if (rc == SHMKV_ENOTFOUND) {
        PyErr_SetObject(PyExc_KeyError, keyobj);
        return NULL;
    }
    if (rc != 0)
        return raise_rc(rc);
    if (ttl < 0)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(ttl);
}

static PyObject *store_ttl(StoreObject *s, PyObject *keyobj)
{
    return ttl_common(s, keyobj, false);
}

static PyObject *store_pttl(StoreObject *s, PyObject *keyobj)
{
    return ttl_common(s, keyobj, true);
}

static PyObject *store_version(StoreObject *s, PyObject *keyobj)
{
    struct thread_rec *r = rec_get(s);
    if (r == NULL)
        return NULL;
    struct key k;
    if (key_get(keyobj, &k) != 0)
        return NULL;
    uint64_t version = 0;
    int rc = shmkv_version(r->kv, k.data, (size_t)k.len, &version);
    key_put(&k);
    if (rc != 0 && rc != SHMKV_ENOTFOUND)
        return raise_rc(rc);
    return PyLong_FromUnsignedLongLong(version);
}

static PyObject *store_cas(StoreObject *s, PyObject *args, PyObject *kw)
{
    static char *names[] = {"key", "value", "version", "ttl", NULL};
    PyObject *keyobj, *valobj, *ttlobj = Py_None;
    unsigned long long version;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOK|O:cas", names, &keyobj,
                                     &valobj, &version, &ttlobj))
        return NULL;
    uint64_t ttl;
    if (ttl_arg(ttlobj, &ttl) != 0)
        return NULL;
    struct thread_rec *r = rec_get(s);
    if (r == NULL)
        return NULL;
    struct key k;
    if (key_get(keyobj, &k) != 0)
        return NULL;
    Py_buffer v = {0};
    if (value_get(valobj, &v) != 0) {
        key_put(&k);
        return NULL;
    }
    int rc;
    r->busy++;
    Py_BEGIN_ALLOW_THREADS rc =
        shmkv_cas(r->kv, k.data, (size_t)k.len, v.buf, (size_t)v.len, ttl, 0,
                  (uint64_t)version);
    Py_END_ALLOW_THREADS rec_done(s, r);
    PyBuffer_Release(&v);
    key_put(&k);
    if (rc == SHMKV_ECHANGED)
        Py_RETURN_FALSE;
    if (rc != 0)
        return raise_rc(rc);
    Py_RETURN_TRUE;
}

/* get_or_fill(key, fill, ttl=None, *, lease=10.0, wait=5.0, stale=False):
 * the value, computed by fill() once when it is missing, whichever process
 * asks (the key's fill lease, include/shmkv.h). fill runs with the GIL;
 * waiting for another's fill lets it go. */
static PyObject *store_get_or_fill(StoreObject *s, PyObject *args, PyObject *kw)
{
    static char *names[] = {"key",  "fill",  "ttl", "lease",
                            "wait", "stale", NULL};
    PyObject *keyobj, *fill, *ttlobj = Py_None;
    double lease = 10.0, wait = 5.0;
    int stale = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O$ddp:get_or_fill", names,
                                     &keyobj, &fill, &ttlobj, &lease, &wait,
                                     &stale))
        return NULL;
    uint64_t ttl;
    if (ttl_arg(ttlobj, &ttl) != 0)
        return NULL;
    if (!PyCallable_Check(fill) || !(lease > 0 && lease <= 3600) ||
        !(wait >= 0 && wait <= 86400)) {
        PyErr_SetString(PyExc_ValueError,
                        "fill must be callable, lease 0 to 3600 s, wait 0 to "
                        "86400 s");
        return NULL;
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        int found = 0;
        PyObject *v = lookup_bytes(s, keyobj, 0, &found, 1);
        if (v != NULL || PyErr_Occurred())
            return v;
        struct thread_rec *r = rec_get(s);
        if (r == NULL)
            return NULL;
        struct key k;
        if (key_get(keyobj, &k) != 0)
            return NULL;
        int rc = shmkv_lease_take(r->kv, k.data, (size_t)k.len,
                                  (uint32_t)(lease * 1000), NULL);
        if (rc == 0) {
            /* Ours: compute it, store it, give the lease back. */
            key_put(&k);
            v = lookup_bytes(s, keyobj, 0, &found, 1);
            if (v == NULL && !PyErr_Occurred()) {
                v = PyObject_CallNoArgs(fill);
                if (v != NULL &&
                    write_op(s, W_SET, keyobj, v, ttl, 0, 0, NULL) != 0) {
                    if (!PyErr_Occurred())
                        PyErr_SetString(Error, shmkv_last_error());
                    Py_CLEAR(v);
                }
                if (v != NULL && !PyBytes_Check(v)) {
                    PyObject *b = PyBytes_FromObject(v);
                    Py_SETREF(v, b);
                }
            }
            r = rec_get(s);
            if (r != NULL && key_get(keyobj, &k) == 0) {
                shmkv_lease_release(r->kv, k.data, (size_t)k.len);
                key_put(&k);
            }
            return v;
        }
        if (rc != SHMKV_EBUSY) {
            key_put(&k);
            return raise_rc(rc);
        }
        if (stale) {
            /* Another fills it: an expired value will do meanwhile. */
            int rcs = shmkv_read_begin(r->kv);
            PyObject *out = NULL;
            if (rcs == 0) {
                shmkv_val_t val;
                int64_t age;
                if (shmkv_get_stale(r->kv, k.data, (size_t)k.len, &val, &age) ==
                    0)
                    out = PyBytes_FromStringAndSize(val.data,
                                                    (Py_ssize_t)val.len);
                shmkv_read_end(r->kv);
            }
            if (out != NULL || PyErr_Occurred()) {
                key_put(&k);
                return out;
            }
        }
        key_put(&k);
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        double waited = (double)(now.tv_sec - t0.tv_sec) +
                        (double)(now.tv_nsec - t0.tv_nsec) / 1e9;
        if (waited >= wait)
            return raise_rc(SHMKV_ETIMEDOUT);
        Py_BEGIN_ALLOW_THREADS struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
        Py_END_ALLOW_THREADS
    }
}

/* A call on this thread's handle with the GIL let go. */
#define HANDLE_CALL(s, r, rc, call)                                            \
    do {                                                                       \
        (r)->busy++;                                                           \
        Py_BEGIN_ALLOW_THREADS(rc) = (call);                                   \
        Py_END_ALLOW_THREADS rec_done((s), (r));                               \
    } while (0)

static PyObject *store_flush(StoreObject *s, PyObject *unused)
{
    (void)unused;
    struct thread_rec *r = rec_get(s);
    if (r == NULL)
        return NULL;
    int rc;
    HANDLE_CALL(s, r, rc, shmkv_flush(r->kv));
    if (rc != 0)
        return raise_rc(rc);
    Py_RETURN_NONE;
}

static int dict_set_u64(PyObject *d, const char *name, uint64_t v)
{
    PyObject *o = PyLong_FromUnsignedLongLong(v);
    if (o == NULL)
        return -1;
    int rc = PyDict_SetItemString(d, name, o);
    Py_DECREF(o);
    return rc;
}

static PyObject *store_stats(StoreObject *s, PyObject *unused)
{
    (void)unused;
    struct thread_rec *r = rec_get(s);
    if (r == NULL)
        return NULL;
    struct shmkv_stats st;
    int rc = shmkv_stats(r->kv, &st);
    if (rc != 0)
        return raise_rc(rc);
    unsigned marks = 0;
    shmkv_get_marks(r->kv, &marks);
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    const struct {
        const char *name;
        uint64_t v;
    } f[] = {
        /* The owner's marks: 1 loading, 2 stale (a mirror cut off). */
        {"loading", (marks & SHMKV_MARK_LOADING) != 0},
        {"stale", (marks & SHMKV_MARK_STALE) != 0},
        {"entries", st.entries},
        {"entries_with_ttl", st.entries_with_ttl},
        {"bytes_used", st.bytes_used},
        {"bytes_free", st.bytes_free},
        {"bytes_limbo", st.bytes_limbo},
        {"bytes_capacity", st.bytes_capacity},
        {"largest_free", st.largest_free},
        {"index_slots", st.index_slots},
        {"segment_bytes", st.segment_bytes},
        {"data_bytes", st.data_bytes},
        {"data_page_bytes", st.data_page_bytes},
        {"hits", st.hits},
        {"misses", st.misses},
        {"sets", st.sets},
        {"deletes", st.deletes},
        {"evictions", st.evictions},
        {"expirations", st.expirations},
        {"lock_waits", st.lock_waits},
        {"lock_timeouts", st.lock_timeouts},
        {"recoveries", st.recoveries},
        {"revocations", st.revocations},
        {"dead_readers", st.dead_readers},
        {"stale_sections", st.stale_sections},
        {"compactions", st.compactions},
        {"compacted_bytes", st.compacted_bytes},
        {"resizes", st.resizes},
        {"max_key_bytes", st.max_key_bytes},
        {"max_value_bytes", st.max_value_bytes},
        {"clients", st.clients},
        {"writers", st.writers},
        {"max_clients", st.max_clients},
        {"generation", st.generation},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        if (dict_set_u64(d, f[i].name, f[i].v) != 0) {
            Py_DECREF(d);
            return NULL;
        }
    }
    PyObject *frag = PyFloat_FromDouble(st.fragmentation);
    if (frag == NULL || PyDict_SetItemString(d, "fragmentation", frag) != 0) {
        Py_XDECREF(frag);
        Py_DECREF(d);
        return NULL;
    }
    Py_DECREF(frag);
    return d;
}

static Py_ssize_t store_len(StoreObject *s)
{
    struct thread_rec *r = rec_get(s);
    if (r == NULL)
        return -1;
    struct shmkv_stats st;
    int rc = shmkv_stats(r->kv, &st);
    if (rc != 0) {
        raise_rc(rc);
        return -1;
    }
    return (Py_ssize_t)st.entries;
}

static PyObject *store_check(StoreObject *s, PyObject *unused)
{
    (void)unused;
    struct thread_rec *r = rec_get(s);
    if (r == NULL)
        return NULL;
    struct shmkv_check_report rep;
    int rc;
    HANDLE_CALL(s, r, rc, shmkv_check(r->kv, &rep));
    if (rc == SHMKV_ECORRUPT) {
        PyErr_Format(error_class[-SHMKV_ECORRUPT], "%s (%llu problems)",
                     rep.first_problem, (unsigned long long)rep.problems);
        return NULL;
    }
    if (rc != 0)
        return raise_rc(rc);
    PyObject *d = PyDict_New();
    if (d == NULL || dict_set_u64(d, "entries", rep.entries_seen) != 0 ||
        dict_set_u64(d, "blocks_used", rep.blocks_used) != 0 ||
        dict_set_u64(d, "blocks_free", rep.blocks_free) != 0 ||
        dict_set_u64(d, "blocks_limbo", rep.blocks_limbo) != 0 ||
        dict_set_u64(d, "bytes_leaked", rep.bytes_leaked) != 0) {
        Py_XDECREF(d);
        return NULL;
    }
    return d;
}

/* keys() and items(): every entry, visited by shmkv_foreach. */
struct walk {
    PyObject *list;
    int items;
};

static int walk_visit(void *ctx, const void *key, size_t klen, const void *val,
                      size_t vlen, int64_t ttl_s)
{
    (void)ttl_s;
    struct walk *w = ctx;
    PyObject *k = PyBytes_FromStringAndSize(key, (Py_ssize_t)klen);
    if (k == NULL)
        return 1;
    PyObject *item = k;
    if (w->items) {
        PyObject *v = PyBytes_FromStringAndSize(val, (Py_ssize_t)vlen);
        item = v != NULL ? PyTuple_Pack(2, k, v) : NULL;
        Py_DECREF(k);
        Py_XDECREF(v);
        if (item == NULL)
            return 1;
    }
    int rc = PyList_Append(w->list, item);
    Py_DECREF(item);
    return rc != 0;
}

static PyObject *store_walk(StoreObject *s, int items)
{
    struct thread_rec *r = rec_get(s);
    if (r == NULL)
        return NULL;
    r->busy++; /* the visits allocate: see lookup_bytes */
    PyObject *out = NULL;
    for (int attempt = 0;; attempt++) {
        struct walk w = {PyList_New(0), items};
        if (w.list == NULL)
            break;
        int rc = shmkv_foreach(r->kv, walk_visit, &w);
        if (PyErr_Occurred()) {
            Py_DECREF(w.list);
            break;
        }
        /* A resize replaced the data segment during the walk: walk the
         * new one. */
        if (rc == SHMKV_ESTALE && attempt < 10) {
            Py_DECREF(w.list);
            continue;
        }
        if (rc != 0) {
            Py_DECREF(w.list);
            raise_rc(rc);
            break;
        }
        out = w.list;
        break;
    }
    rec_done(s, r);
    return out;
}

static PyObject *store_keys(StoreObject *s, PyObject *unused)
{
    (void)unused;
    return store_walk(s, 0);
}

static PyObject *store_items(StoreObject *s, PyObject *unused)
{
    (void)unused;
    return store_walk(s, 1);
}

static PyObject *store_iter(StoreObject *s)
{
    PyObject *keys = store_walk(s, 0);
    if (keys == NULL)
        return NULL;
    PyObject *it = PyObject_GetIter(keys);
    Py_DECREF(keys);
    return it;
}

static PyObject *store_resize(StoreObject *s, PyObject *args, PyObject *kw)
{
    static char *names[] = {"size", "max_entries", NULL};
    Py_ssize_t size, entries = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "n|n:resize", names, &size,
                                     &entries))
        return NULL;
    if (size < 0 || entries < 0) {
        PyErr_SetString(error_class[-SHMKV_EINVAL],
                        "resize: size and max_entries are not negative");
        return NULL;
    }
    struct thread_rec *r = rec_get(s);
    if (r == NULL)
        return NULL;
    int rc;
    HANDLE_CALL(
        s, r, rc,
        shmkv_resize(r->kv, (uint64_t)size, (uint64_t)entries, NULL, NULL));
    if (rc != 0)
        return raise_rc(rc);
    Py_RETURN_NONE;
}

static PyObject *store_destroy(StoreObject *s, PyObject *unused)
{
    (void)unused;
    if (!s->owner) {
        PyErr_SetString(error_class[-SHMKV_EINVAL],
                        "destroy() is for a Store made by shmkv.create()");
        return NULL;
    }
    struct thread_rec *r = rec_get(s);
    if (r == NULL)
        return NULL;
    if (r->busy || r->in_section) {
        PyErr_SetString(error_class[-SHMKV_ESTATE],
                        "destroy() inside a read section");
        return NULL;
    }
    /* shmkv_destroy frees the handle when it succeeds; the rec then goes
     * without closing it. */
    int rc = shmkv_destroy(r->kv);
    if (rc != 0)
        return raise_rc(rc);
    r->kv = NULL;
    rec_free(s, r);
    store_close_all(s);
    Py_RETURN_NONE;
}

static PyObject *store_readonly(StoreObject *s, void *closure)
{
    (void)closure;
    struct thread_rec *r = rec_get(s);
    if (r == NULL)
        return NULL;
    return PyBool_FromLong(shmkv_readonly(r->kv));
}

static PyObject *store_where(StoreObject *s, void *closure)
{
    (void)closure;
    return PyUnicode_FromString(s->where);
}

static PyObject *store_closed_get(StoreObject *s, void *closure)
{
    (void)closure;
    return PyBool_FromLong(s->closed);
}

static PyObject *store_reduce(StoreObject *s, PyObject *unused)
{
    (void)unused;
    PyObject *mod = PyImport_ImportModule("shmkv");
    if (mod == NULL)
        return NULL;
    PyObject *open = PyObject_GetAttrString(mod, "open");
    Py_DECREF(mod);
    if (open == NULL)
        return NULL;
    return Py_BuildValue("N(sO)", open, s->where,
                         (s->flags & SHMKV_RDONLY) ? Py_True : Py_False);
}

static PyObject *store_read(StoreObject *s, PyObject *unused);

static PyMethodDef store_methods[] = {
    {"get", (PyCFunction)(void (*)(void))store_get,
     METH_VARARGS | METH_KEYWORDS,
     "get(key, default=None): the value as bytes, or default"},
    {"set", (PyCFunction)(void (*)(void))store_set,
     METH_VARARGS | METH_KEYWORDS,
     "set(key, value, ttl=None, *, nx=False, xx=False, keepttl=False): "
     "True if it wrote, False if nx or xx said not to"},
    {"delete", (PyCFunction)store_delete, METH_O,
     "delete(key): True if the key was there"},
    {"incr", (PyCFunction)(void (*)(void))store_incr,
     METH_VARARGS | METH_KEYWORDS,
     "incr(key, delta=1): the counter's new value (created at 0)"},
    {"expire", (PyCFunction)(void (*)(void))store_expire,
     METH_VARARGS | METH_KEYWORDS,
     "expire(key, ttl): set the key's TTL in seconds (None: none); False "
     "if absent"},
    {"ttl", (PyCFunction)store_ttl, METH_O,
     "ttl(key): seconds left, None if it has no TTL; KeyError if absent"},
    {"pttl", (PyCFunction)store_pttl, METH_O,
     "pttl(key): milliseconds left, None if it has no TTL; KeyError if "
     "absent"},
    {"version", (PyCFunction)store_version, METH_O,
     "version(key): the key's version, for cas() (absent keys have one)"},
    {"cas", (PyCFunction)(void (*)(void))store_cas,
     METH_VARARGS | METH_KEYWORDS,
     "cas(key, value, version, ttl=None): store value only if the key's "
     "version is still version; False if it changed"},
    {"get_or_fill", (PyCFunction)(void (*)(void))store_get_or_fill,
     METH_VARARGS | METH_KEYWORDS,
     "get_or_fill(key, fill, ttl=None, *, lease=10.0, wait=5.0, "
     "stale=False): the value, computed by fill() once when missing, "
     "whichever process asks; the others wait (or take an expired value)"},
    {"flush", (PyCFunction)store_flush, METH_NOARGS, "remove every key"},
    {"stats", (PyCFunction)store_stats, METH_NOARGS,
     "the store's statistics, a dict"},
    {"check", (PyCFunction)store_check, METH_NOARGS,
     "walk every structure: a report dict, or Corrupt"},
    {"keys", (PyCFunction)store_keys, METH_NOARGS, "every key, a list"},
    {"items", (PyCFunction)store_items, METH_NOARGS,
     "every (key, value), a list"},
    {"read", (PyCFunction)store_read, METH_NOARGS,
     "read(): a read section, for `with`"},
    {"resize", (PyCFunction)(void (*)(void))store_resize,
     METH_VARARGS | METH_KEYWORDS,
     "resize(size, max_entries=0): grow or shrink the store online"},
    {"close", (PyCFunction)store_close, METH_NOARGS,
     "close every handle of this Store"},
    {"destroy", (PyCFunction)store_destroy, METH_NOARGS,
     "remove the store (a Store made by shmkv.create())"},
    {"__enter__", (PyCFunction)store_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)store_exit, METH_VARARGS, NULL},
    {"__reduce__", (PyCFunction)store_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef store_getset[] = {
    {"readonly", (getter)store_readonly, NULL,
     "True if this process may only read the store", NULL},
    {"where", (getter)store_where, NULL, "what the store was opened by", NULL},
    {"closed", (getter)store_closed_get, NULL, "True once close() ran", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMappingMethods store_as_mapping = {
    (lenfunc)store_len,
    (binaryfunc)store_getitem,
    (objobjargproc)store_ass_subscript,
};

static PySequenceMethods store_as_sequence = {
    .sq_contains = (objobjproc)store_contains,
};

static PyTypeObject StoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmkv.Store",
    .tp_basicsize = sizeof(StoreObject),
    .tp_dealloc = (destructor)store_dealloc,
    .tp_as_mapping = &store_as_mapping,
    .tp_as_sequence = &store_as_sequence,
    .tp_iter = (getiterfunc)store_iter,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A shmkv store: shmkv.open() or shmkv.create() make one.",
    .tp_methods = store_methods,
    .tp_getset = store_getset,
};

/* ---- read sections ----
 *
 * A section's values are exported by a small object of its own (an
 * Exporter), which every memoryview of a value holds through its managed
 * buffer and which holds nothing back: the section keeps its views (strong
 * references, dropped once only the section holds them), the views keep
 * the exporter, and no cycle forms. The exporter counts the buffers alive
 * and ends the section's claim once the section is over and none is. */

enum { SEC_NEW, SEC_OPEN, SEC_CLOSING, SEC_DONE };

typedef struct {
    PyObject_HEAD StoreObject *store;
    struct thread_rec *rec;
    int state;
    int end_rc;         /* what ending the claim returned */
    Py_ssize_t exports; /* buffers of its values alive */
    const char *pending;
    Py_ssize_t pending_len;
} ExporterObject;

typedef struct {
    PyObject_HEAD ExporterObject *exp;
    PyObject *views; /* the memoryviews handed out that may be alive */
    Py_ssize_t kept; /* how many the last pruning kept */
} SectionObject;

static PyTypeObject ExporterType;

/* Ends the claim: the section is over and no view of its values lives. */
static int exporter_finish(ExporterObject *e)
{
    struct thread_rec *r = e->rec;
    int rc = shmkv_read_end(r->kv);
    r->in_section = 0;
    e->state = SEC_DONE;
    e->end_rc = rc;
    e->rec = NULL;
    rec_release_if_done(e->store, r);
    return rc;
}

static int exporter_getbuffer(ExporterObject *e, Py_buffer *view, int flags)
{
    if (e->state != SEC_OPEN || e->pending == NULL) {
        PyErr_SetString(PyExc_BufferError,
                        "a read section exports its values only through the "
                        "memoryviews its lookups return");
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)e, (void *)e->pending,
                          e->pending_len, 1, flags) != 0)
        return -1;
    e->pending = NULL;
    e->exports++;
    return 0;
}

static void exporter_releasebuffer(ExporterObject *e, Py_buffer *view)
{
    (void)view;
    if (--e->exports == 0 && e->state == SEC_CLOSING)
        exporter_finish(e);
}

static PyBufferProcs exporter_as_buffer = {
    (getbufferproc)exporter_getbuffer,
    (releasebufferproc)exporter_releasebuffer,
};

static void exporter_dealloc(ExporterObject *e)
{
    /* No buffer of it lives any more. */
    if (e->state == SEC_OPEN || e->state == SEC_CLOSING)
        exporter_finish(e);
    Py_DECREF(e->store);
    PyObject_Free(e);
}

static PyTypeObject ExporterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmkv._Values",
    .tp_basicsize = sizeof(ExporterObject),
    .tp_dealloc = (destructor)exporter_dealloc,
    .tp_as_buffer = &exporter_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The values of one read section, as memoryviews see them.",
};

static PyObject *store_read(StoreObject *s, PyObject *unused)
{
    (void)unused;
    if (s->closed)
        return raise_closed();
    ExporterObject *e = PyObject_New(ExporterObject, &ExporterType);
    if (e == NULL)
        return NULL;
    Py_INCREF(s);
    e->store = s;
    e->rec = NULL;
    e->state = SEC_NEW;
    e->end_rc = 0;
    e->exports = 0;
    e->pending = NULL;
    e->pending_len = 0;
    SectionObject *sec = PyObject_New(SectionObject, &SectionType);
    if (sec == NULL) {
        Py_DECREF(e);
        return NULL;
    }
    sec->exp = e;
    sec->views = NULL;
    sec->kept = 0;
    return (PyObject *)sec;
}

static PyObject *section_enter(SectionObject *sec, PyObject *unused)
{
    (void)unused;
    ExporterObject *e = sec->exp;
    if (e->state != SEC_NEW) {
        PyErr_SetString(error_class[-SHMKV_ESTATE],
                        "a read section object is entered once");
        return NULL;
    }
    struct thread_rec *r = rec_get(e->store);
    if (r == NULL)
        return NULL;
    if (r->in_section) {
        PyErr_SetString(error_class[-SHMKV_ESTATE],
                        "a read section is already open in this thread");
        return NULL;
    }
    sec->views = PyList_New(0);
    if (sec->views == NULL)
        return NULL;
    int rc = shmkv_read_begin(r->kv);
    if (rc != 0)
        return raise_rc(rc);
    r->in_section = 1;
    e->rec = r;
    e->state = SEC_OPEN;
    Py_INCREF(sec);
    return (PyObject *)sec;
}

/* Ends the section: releases every view handed out that is still held
 * (using one then raises), and ends the claim unless views derived from
 * them live on; then it stays open until they are gone, and this thread
 * takes another handle meanwhile. Returns how many buffers live on. */
static Py_ssize_t section_end(SectionObject *sec, int *rc)
{
    ExporterObject *e = sec->exp;
    *rc = 0;
    /* From here no lookup goes through it, whatever the releases below
     * run (a weakref callback); the last buffer to go ends the claim. */
    e->state = SEC_CLOSING;
    PyObject *views = sec->views;
    sec->views = NULL;
    PyObject *saved_type, *saved_value, *saved_tb;
    PyErr_Fetch(&saved_type, &saved_value, &saved_tb);
    Py_ssize_t n = views != NULL ? PyList_GET_SIZE(views) : 0;
    for (Py_ssize_t i = 0; i < n && i < PyList_GET_SIZE(views); i++) {
        PyObject *mv = PyList_GET_ITEM(views, i);
        if (Py_REFCNT(mv) == 1)
            continue; /* only here: it goes with the list */
        Py_INCREF(mv);
        PyObject *res = PyObject_CallMethod(mv, "release", NULL);
        if (res == NULL)
            PyErr_Clear(); /* a buffer taken from it: it lives on */
        Py_XDECREF(res);
        Py_DECREF(mv);
    }
    Py_XDECREF(views);
    PyErr_Restore(saved_type, saved_value, saved_tb);
    if (e->state == SEC_DONE) {
        *rc = e->end_rc;
        return 0;
    }
    if (e->exports == 0) {
        *rc = exporter_finish(e);
        return 0;
    }
    rec_detach(e->store, e->rec);
    return e->exports;
}

static PyObject *section_exit(SectionObject *sec, PyObject *args)
{
    PyObject *type = Py_None, *value = Py_None, *tb = Py_None;
    if (!PyArg_UnpackTuple(args, "__exit__", 0, 3, &type, &value, &tb))
        return NULL;
    if (sec->exp->state != SEC_OPEN)
        Py_RETURN_FALSE;
    int no_exception = type == Py_None;
    int rc;
    Py_ssize_t alive = section_end(sec, &rc);
    if (!no_exception)
        Py_RETURN_FALSE;
    if (alive > 0) {
        PyErr_Format(PyExc_BufferError,
                     "%zd view(s) derived from this read section's values "
                     "(a slice, a memoryview or an array over one) are still "
                     "alive: the section stays open until they are released; "
                     "copy what must outlive the section with bytes()",
                     alive);
        return NULL;
    }
    if (rc != 0)
        return raise_rc(rc);
    Py_RETURN_FALSE;
}

/* Drops the views only the section holds, so that a long section's list
 * stays about as long as its views alive. */
static void section_prune(SectionObject *sec)
{
    PyObject *old = sec->views;
    PyObject *kept = PyList_New(0);
    if (kept == NULL) {
        PyErr_Clear(); /* pruning is an economy: skipped */
        return;
    }
    Py_ssize_t n = PyList_GET_SIZE(old);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *mv = PyList_GET_ITEM(old, i);
        if (Py_REFCNT(mv) > 1 && PyList_Append(kept, mv) != 0) {
            PyErr_Clear();
            Py_DECREF(kept);
            return;
        }
    }
    /* The section is whole again before the dropped views go, which may
     * run code that looks values up. */
    sec->views = kept;
    sec->kept = PyList_GET_SIZE(kept);
    Py_DECREF(old);
}

static int section_open(SectionObject *sec)
{
    if (sec->exp->state == SEC_OPEN)
        return 1;
    PyErr_SetString(error_class[-SHMKV_ESTATE],
                    "the read section is not open (use it in a `with` block)");
    return 0;
}

/* The value of key as a memoryview into shared memory; NULL with the error
 * set, or with none if absent. */
static PyObject *section_view(SectionObject *sec, PyObject *keyobj)
{
    if (!section_open(sec))
        return NULL;
    ExporterObject *e = sec->exp;
    struct key k;
    if (key_get(keyobj, &k) != 0)
        return NULL;
    shmkv_val_t v;
    int rc = shmkv_get(e->rec->kv, k.data, (size_t)k.len, &v);
    key_put(&k);
    if (rc == SHMKV_ENOTFOUND)
        return NULL;
    if (rc != 0)
        return raise_rc(rc);
    /* The view handed out last, if nothing but this section holds it any
     * more (its caller dropped it, as a loop over keys does) and nothing
     * was made from it, is given the new value instead of a new view being
     * made: no one can tell, and a lookup then allocates nothing. */
    Py_ssize_t n = PyList_GET_SIZE(sec->views);
    if (n > 0) {
        PyMemoryViewObject *last =
            (PyMemoryViewObject *)PyList_GET_ITEM(sec->views, n - 1);
        if (Py_REFCNT(last) == 1 && last->exports == 0 &&
            last->mbuf->exports == 1 &&
            !(last->flags & _Py_MEMORYVIEW_RELEASED) && last->view.ndim == 1 &&
            last->weakreflist == NULL) {
            last->view.buf = (void *)v.data;
            last->view.len = (Py_ssize_t)v.len;
            last->view.shape[0] = (Py_ssize_t)v.len;
            last->hash = -1;
            Py_INCREF(last);
            return (PyObject *)last;
        }
    }
    if (n >= 2 * sec->kept + 64) {
        section_prune(sec);
        if (!section_open(sec))
            return NULL; /* ended by code the pruning ran */
    }
    e->pending = v.data;
    e->pending_len = (Py_ssize_t)v.len;
    PyObject *mv = PyMemoryView_FromObject((PyObject *)e);
    e->pending = NULL;
    if (mv == NULL)
        return NULL;
    if (PyList_Append(sec->views, mv) != 0) {
        Py_DECREF(mv);
        return NULL;
    }
    return mv;
}

static PyObject *section_getitem(SectionObject *sec, PyObject *key)
{
    PyObject *mv = section_view(sec, key);
    if (mv == NULL && !PyErr_Occurred())
        PyErr_SetObject(PyExc_KeyError, key);
    return mv;
}

static PyObject *section_get(SectionObject *sec, PyObject *args, PyObject *kw)
{
    static char *names[] = {"key", "default", NULL};
    PyObject *key, *dflt = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:get", names, &key, &dflt))
        return NULL;
    PyObject *mv = section_view(sec, key);
    if (mv != NULL || PyErr_Occurred())
        return mv;
    Py_INCREF(dflt);
    return dflt;
}

static int section_contains(SectionObject *sec, PyObject *key)
{
    if (!section_open(sec))
        return -1;
    struct key k;
    if (key_get(key, &k) != 0)
        return -1;
    shmkv_val_t v;
    int rc = shmkv_get(sec->exp->rec->kv, k.data, (size_t)k.len, &v);
    key_put(&k);
    if (rc == SHMKV_ENOTFOUND || rc == SHMKV_E2BIG)
        return 0;
    if (rc != 0) {
        raise_rc(rc);
        return -1;
    }
    return 1;
}

static PyObject *section_get_many(SectionObject *sec, PyObject *keys)
{
    /* A tuple of its own: the lookups allocate, which may run code that
     * changes the caller's list. */
    PyObject *seq = PySequence_Tuple(keys);
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    PyObject *out = PyList_New(n);
    if (out == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *mv = section_view(sec, PyTuple_GET_ITEM(seq, i));
        if (mv == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(out);
                Py_DECREF(seq);
                return NULL;
            }
            Py_INCREF(Py_None);
            mv = Py_None;
        }
        PyList_SET_ITEM(out, i, mv);
    }
    Py_DECREF(seq);
    return out;
}

static void section_dealloc(SectionObject *sec)
{
    /* Not ended by `with` (an error, or no `with` at all): ended here. */
    if (sec->exp->state == SEC_OPEN) {
        int rc;
        section_end(sec, &rc);
    }
    Py_XDECREF(sec->views);
    Py_DECREF(sec->exp);
    PyObject_Free(sec);
}

static PyMethodDef section_methods[] = {
    {"get", (PyCFunction)(void (*)(void))section_get,
     METH_VARARGS | METH_KEYWORDS,
     "get(key, default=None): a read-only memoryview of the value, valid "
     "until the section ends, or default"},
    {"get_many", (PyCFunction)section_get_many, METH_O,
     "get_many(keys): a list of memoryviews, None for a key absent"},
    {"__enter__", (PyCFunction)section_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)section_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMappingMethods section_as_mapping = {
    NULL,
    (binaryfunc)section_getitem,
    NULL,
};

static PySequenceMethods section_as_sequence = {
    .sq_contains = (objobjproc)section_contains,
};

static PyTypeObject SectionType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmkv.ReadSection",
    .tp_basicsize = sizeof(SectionObject),
    .tp_dealloc = (destructor)section_dealloc,
    .tp_as_mapping = &section_as_mapping,
    .tp_as_sequence = &section_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A read section: Store.read(), used in a `with` block.",
    .tp_methods = section_methods,
};

/* ---- module functions ---- */

static PyObject *mod_open(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *names[] = {"where", "readonly", NULL};
    const char *where;
    int readonly = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s|p:open", names, &where,
                                     &readonly))
        return NULL;
    PyObject *s = store_new_object(where, readonly ? SHMKV_RDONLY : 0, 0);
    if (s == NULL)
        return NULL;
    /* Opened now in this thread, so that a bad `where` fails here. */
    if (rec_get((StoreObject *)s) == NULL) {
        Py_DECREF(s);
        return NULL;
    }
    return s;
}

static PyObject *mod_create(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *names[] = {"key",
                            "size",
                            "mode",
                            "max_entries",
                            "max_key_size",
                            "max_value_size",
                            "eviction",
                            "lock_timeout_ms",
                            "reader_timeout_ms",
                            "max_clients",
                            "huge_pages",
                            NULL};
    struct shmkv_options o;
    shmkv_options_init(&o);
    const char *key, *eviction = "noeviction", *huge = "no";
    /* Numbers taken as Python ints and checked: a value past a field's
     * range is an error, never a wrapped one. */
    Py_ssize_t size = (Py_ssize_t)o.size_bytes, entries = 0, mode = o.mode;
    Py_ssize_t max_key = 0, max_value = 0, lock_ms = o.lock_timeout_ms;
    Py_ssize_t reader_ms = o.reader_timeout_ms, clients = o.max_clients;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s|$nnnnnsnnns:create", names,
                                     &key, &size, &mode, &entries, &max_key,
                                     &max_value, &eviction, &lock_ms,
                                     &reader_ms, &clients, &huge))
        return NULL;
    const struct {
        const char *name;
        Py_ssize_t v, max;
    } ranges[] = {
        {"size", size, PY_SSIZE_T_MAX},
        {"mode", mode, 0777},
        {"max_entries", entries, PY_SSIZE_T_MAX},
        {"max_key_size", max_key, UINT32_MAX},
        {"max_value_size", max_value, UINT32_MAX},
        {"lock_timeout_ms", lock_ms, UINT32_MAX},
        {"reader_timeout_ms", reader_ms, UINT32_MAX},
        {"max_clients", clients, UINT32_MAX},
    };
    for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++) {
        if (ranges[i].v < 0 || ranges[i].v > ranges[i].max) {
            PyErr_Format(error_class[-SHMKV_EINVAL],
                         "%s %zd: out of range (0 to %zd)", ranges[i].name,
                         ranges[i].v, ranges[i].max);
            return NULL;
        }
    }
    if (strcmp(eviction, "noeviction") == 0)
        o.eviction = SHMKV_EVICT_NONE;
    else if (strcmp(eviction, "lru") == 0 ||
             strcmp(eviction, "allkeys-lru") == 0)
        o.eviction = SHMKV_EVICT_LRU;
    else {
        PyErr_Format(error_class[-SHMKV_EINVAL],
                     "eviction '%s': noeviction or lru", eviction);
        return NULL;
    }
    if (strcmp(huge, "no") == 0)
        o.huge_pages = SHMKV_HUGE_NO;
    else if (strcmp(huge, "try") == 0)
        o.huge_pages = SHMKV_HUGE_TRY;
    else if (strcmp(huge, "yes") == 0)
        o.huge_pages = SHMKV_HUGE_YES;
    else {
        PyErr_Format(error_class[-SHMKV_EINVAL],
                     "huge_pages '%s': no, try or yes", huge);
        return NULL;
    }
    o.key = key;
    o.size_bytes = (uint64_t)size;
    o.mode = (unsigned)mode;
    o.max_entries = (uint64_t)entries;
    o.max_key_bytes = (uint32_t)max_key;
    o.max_value_bytes = (uint32_t)max_value;
    o.lock_timeout_ms = (uint32_t)lock_ms;
    o.reader_timeout_ms = (uint32_t)reader_ms;
    o.max_clients = (uint32_t)clients;
    shmkv_t *kv;
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = shmkv_create(&o, &kv);
    Py_END_ALLOW_THREADS if (rc != 0) return raise_rc(rc);
    StoreObject *s = (StoreObject *)store_new_object(key, 0, 1);
    if (s == NULL) {
        shmkv_destroy(kv);
        return NULL;
    }
    struct thread_list *tl = thread_list_get();
    struct thread_rec *r = tl ? PyMem_RawCalloc(1, sizeof *r) : NULL;
    if (r == NULL) {
        shmkv_destroy(kv);
        Py_DECREF(s);
        return tl ? PyErr_NoMemory() : NULL;
    }
    /* The creating handle is this thread's: destroy() goes through it. */
    r->kv = kv;
    r->serial = s->serial;
    r->forkgen = fork_gen;
    r->store = s;
    r->tl = tl;
    r->next_in_thread = tl->head;
    tl->head = r;
    s->recs = r;
    s->last = r;
    s->last_tid = PyThread_get_thread_ident();
    return (PyObject *)s;
}

static PyObject *mod_remove(PyObject *self, PyObject *args)
{
    (void)self;
    const char *where;
    if (!PyArg_ParseTuple(args, "s:remove", &where))
        return NULL;
    int rc = shmkv_remove(where);
    if (rc != 0)
        return raise_rc(rc);
    Py_RETURN_NONE;
}

static PyObject *mod_strerror(PyObject *self, PyObject *arg)
{
    (void)self;
    long code = PyLong_AsLong(arg);
    if (code == -1 && PyErr_Occurred())
        return NULL;
    return PyUnicode_FromString(shmkv_strerror((int)code));
}

static PyMethodDef module_methods[] = {
    {"open", (PyCFunction)(void (*)(void))mod_open,
     METH_VARARGS | METH_KEYWORDS,
     "open(where, readonly=False): attach a store"},
    {"create", (PyCFunction)(void (*)(void))mod_create,
     METH_VARARGS | METH_KEYWORDS,
     "create(key, *, size=64 MiB, ...): a new "
     "store this process owns"},
    {"remove", (PyCFunction)mod_remove, METH_VARARGS,
     "remove(where): remove a store by key or config"},
    {"strerror", (PyCFunction)mod_strerror, METH_O,
     "strerror(code): the name of an error code"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    "shmkv._shmkv",
    "The C core of the shmkv package (see shmkv).",
    -1,
    module_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

static int add_errors(PyObject *m)
{
    Error = PyErr_NewExceptionWithDoc("shmkv.Error",
                                      "Every shmkv error; .code is the "
                                      "SHMKV_E* code.",
                                      NULL, NULL);
    if (Error == NULL || PyModule_AddObjectRef(m, "Error", Error) != 0)
        return -1;
    PyObject *builtins = PyEval_GetBuiltins();
    for (size_t i = 0; i < sizeof error_defs / sizeof error_defs[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "shmkv.%s", error_defs[i].name);
        PyObject *bases;
        if (error_defs[i].extra_base != NULL) {
            PyObject *extra =
                PyDict_GetItemString(builtins, error_defs[i].extra_base);
            bases = PyTuple_Pack(2, Error, extra);
        } else {
            bases = PyTuple_Pack(1, Error);
        }
        if (bases == NULL)
            return -1;
        PyObject *cls =
            PyErr_NewExceptionWithDoc(name, error_defs[i].doc, bases, NULL);
        Py_DECREF(bases);
        if (cls == NULL)
            return -1;
        PyObject *code = PyLong_FromLong(error_defs[i].code);
        if (code == NULL || PyObject_SetAttrString(cls, "code", code) != 0)
            return -1;
        Py_DECREF(code);
        error_class[-error_defs[i].code] = cls;
        if (PyModule_AddObjectRef(m, error_defs[i].name, cls) != 0)
            return -1;
    }
    return 0;
}

PyMODINIT_FUNC PyInit__shmkv(void)
{
    if (PyType_Ready(&StoreType) < 0 || PyType_Ready(&SectionType) < 0 ||
        PyType_Ready(&ExporterType) < 0 || PyType_Ready(&ThreadListType) < 0)
        return NULL;
    PyObject *threading = PyImport_ImportModule("threading");
    if (threading == NULL)
        return NULL;
    thread_local = PyObject_CallMethod(threading, "local", NULL);
    Py_DECREF(threading);
    if (thread_local == NULL)
        return NULL;
    if (!PyThread_tss_is_created(&thread_key) &&
        PyThread_tss_create(&thread_key) != 0)
        return PyErr_NoMemory();
    pthread_atfork(NULL, NULL, after_fork_child);
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL)
        return NULL;
    if (add_errors(m) != 0 ||
        PyModule_AddObjectRef(m, "Store", (PyObject *)&StoreType) != 0 ||
        PyModule_AddObjectRef(m, "ReadSection", (PyObject *)&SectionType) !=
            0 ||
        PyModule_AddStringConstant(m, "LIBRARY_VERSION",
                                   SHMKV_VERSION_STRING) != 0 ||
        PyModule_AddIntConstant(m, "LAYOUT_VERSION", SHMKV_LAYOUT_VERSION) !=
            0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
