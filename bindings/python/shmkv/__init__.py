"""Zero-copy lookups in a shmkv store from Python.

A shmkv store is a hash table in System V shared memory that any number of
processes attach; shmkvd usually owns it. Reading a value costs a hash and
a few cache lines of shared memory: no socket, no system call.

    import shmkv

    store = shmkv.open("/etc/shmkvd/shmkvd.conf")   # or "key:0x5eed0001"
    store[b"greeting"] = b"hello"                    # a writer's store
    store[b"greeting"]                               # -> b'hello' (a copy)
    with store.read() as r:                          # a read section
        view = r[b"greeting"]                        # zero copy
        view.tobytes()                               # -> b'hello'

Keys are bytes or str (UTF-8). Values are bytes-like; ``open(...,
codec="json")`` or ``codec="pickle"`` stores Python objects instead.

``store[key]`` and ``store.get(key)`` return a copy (bytes), valid for
ever. In a read section (``with store.read() as r``), ``r[key]``,
``r.get(key)`` and ``r.get_many(keys)`` return read-only memoryviews into
shared memory: no copy, valid until the block ends, when each is released
(using one afterwards raises ValueError, as any released memoryview does).
All the lookups of one section see one consistent store. A view derived
from one (a slice, ``memoryview(v)``, a NumPy array over it) keeps the
section open, and its memory safe, until it is released: the block then
raises BufferError to say so. Copy what must outlive the block with
``bytes(view)``. Hold a section briefly: one held past the store's reader
timeout while a writer needs its memory is revoked (Stale).

Threads and processes: a Store may be used from many threads; each
thread gets its own libshmkv handle, opened on its first call, which
holds one of the store's client slots until the thread ends. A
child made by ``fork()`` (multiprocessing's fork start method) opens its
own handles on its first call; a Store passed to a ``spawn`` child is
pickled as what it was opened by, and attaches there. Calls that may wait
(writes, check, resize) let other threads run; lookups, which take a few
hundred nanoseconds, do not.

Errors are ``shmkv.Error`` subclasses named after libshmkv's codes
(StoreFull, Timeout, ReadOnly, NoStore, Corrupt, ...), each with a
``code`` attribute and libshmkv's detail in its message; a missing key is
a KeyError.
"""

from __future__ import annotations

import json as _json
import pickle as _pickle
from typing import Any, Iterator, Optional

from . import _shmkv
from ._shmkv import (  # noqa: F401  (the public names)
    LAYOUT_VERSION,
    LIBRARY_VERSION,
    BufferTooSmall,
    Changed,
    Mirrored,
    Busy,
    Closed,
    ConfigError,
    Corrupt,
    Error,
    Exists,
    Forked,
    InvalidArgument,
    KernelLimit,
    NoStore,
    NotAStore,
    NotANumber,
    NotFound,
    OutOfMemory,
    Overflow,
    Owned,
    PermissionDenied,
    ReadOnly,
    ReadSection,
    Stale,
    StateError,
    Store,
    StoreFull,
    SystemCallError,
    Timeout,
    TooBig,
    TooManyClients,
    TryAgain,
    VersionMismatch,
    remove,
    strerror,
)

__version__ = "0.1.0"

__all__ = [
    "open", "create", "remove", "strerror", "Store", "CodecStore",
    "ReadSection", "Error", "BufferTooSmall", "Busy", "Changed", "Closed", "Mirrored",
    "ConfigError", "Corrupt", "Exists", "Forked", "InvalidArgument",
    "KernelLimit", "NoStore", "NotAStore", "NotANumber", "NotFound",
    "OutOfMemory", "Overflow", "Owned", "PermissionDenied", "ReadOnly",
    "Stale", "StateError", "StoreFull", "SystemCallError", "Timeout",
    "TooBig", "TooManyClients", "TryAgain", "VersionMismatch",
]

_CODECS = {
    "json": (lambda o: _json.dumps(o, separators=(",", ":")).encode(),
             lambda b: _json.loads(b)),
    "pickle": (lambda o: _pickle.dumps(o, protocol=_pickle.HIGHEST_PROTOCOL),
               lambda b: _pickle.loads(b)),
}


class CodecStore:
    """A Store whose values are Python objects, encoded by a codec.

    ``json`` stores what ``json.dumps`` can write (dicts, lists, strings,
    numbers, booleans, None) and is safe whoever wrote the store.
    ``pickle`` stores any picklable object, but unpickling runs code the
    data names: use it only on a store that no one you do not trust can
    write (see the README's "Who can do what").

    Lookups return decoded objects, never views: ``read()`` gives the raw
    bytes-level section of the underlying store.
    """

    def __init__(self, store: Store, codec: str) -> None:
        if codec not in _CODECS:
            raise InvalidArgument(f"codec {codec!r}: json or pickle")
        self.store = store
        self.codec = codec
        self._encode, self._decode = _CODECS[codec]

    def __getitem__(self, key: Any) -> Any:
        return self._decode(self.store[key])

    def get(self, key: Any, default: Any = None) -> Any:
        raw = self.store.get(key)
        return default if raw is None else self._decode(raw)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.store[key] = self._encode(value)

    def set(self, key: Any, value: Any, ttl: Optional[float] = None, *,
            nx: bool = False, xx: bool = False,
            keepttl: bool = False) -> bool:
        return self.store.set(key, self._encode(value), ttl, nx=nx, xx=xx,
                              keepttl=keepttl)

    def __delitem__(self, key: Any) -> None:
        del self.store[key]

    def __contains__(self, key: Any) -> bool:
        return key in self.store

    def __len__(self) -> int:
        return len(self.store)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.store)

    def items(self) -> list:
        return [(k, self._decode(v)) for k, v in self.store.items()]

    def __getattr__(self, name: str) -> Any:
        # keys, delete, incr, expire, ttl, flush, stats, check, read,
        # resize, close, destroy, readonly, where: the store's own.
        return getattr(self.store, name)

    def __enter__(self) -> "CodecStore":
        return self

    def __exit__(self, *exc: Any) -> bool:
        self.store.close()
        return False

    def __reduce__(self):
        return (open, (self.store.where, self.store.readonly, self.codec))


def open(where: str, readonly: bool = False,
         codec: Optional[str] = None) -> "Store | CodecStore":
    """Attaches the store at ``where``: a shmkvd config file's path, or a
    key ("key:0x5eed0001", "0x5eed0001", "ftok:/path:1"). ``readonly``
    makes a handle that only reads (a process the store lets only read
    gets one anyway: see ``Store.readonly``). ``codec`` ("json" or
    "pickle") stores Python objects instead of bytes."""
    store = _shmkv.open(where, readonly)
    return store if codec is None else CodecStore(store, codec)


def create(key: str, *, size: int = 64 << 20, mode: int = 0o600,
           max_entries: int = 0, max_key_size: int = 0,
           max_value_size: int = 0, eviction: str = "noeviction",
           lock_timeout_ms: int = 5000, reader_timeout_ms: int = 1000,
           max_clients: int = 1024, huge_pages: str = "no") -> Store:
    """Creates a store at ``key`` that this process owns, for tests and
    tools that run without shmkvd: it lives until ``Store.destroy()``,
    even after every process detached. The options are libshmkv's
    (include/shmkv.h, struct shmkv_options); 0 picks the default."""
    return _shmkv.create(
        key, size=size, mode=mode, max_entries=max_entries,
        max_key_size=max_key_size, max_value_size=max_value_size,
        eviction=eviction, lock_timeout_ms=lock_timeout_ms,
        reader_timeout_ms=reader_timeout_ms, max_clients=max_clients,
        huge_pages=huge_pages)
