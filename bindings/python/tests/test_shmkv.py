"""Tests of the shmkv Python package: the API, zero-copy lifetimes, errors,
threads, fork and spawn, a store made by shmkvd, and the README's
example as printed."""
import gc
import multiprocessing
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import shmkv
from conftest import record, unique_key

ROOT = pathlib.Path(__file__).resolve().parents[3]


# ---- the mapping ----

def test_mapping_basics(store):
    assert len(store) == 0
    store[b"a"] = b"1"
    store["b"] = bytearray(b"22")
    store[memoryview(b"c")] = memoryview(b"333")
    assert store[b"a"] == b"1"
    assert store["b"] == b"22" and store[b"b"] == b"22"
    assert store.get("c") == b"333"
    assert store.get("zz") is None and store.get("zz", 7) == 7
    assert "a" in store and "zz" not in store
    assert len(store) == 3
    del store["a"]
    assert "a" not in store
    with pytest.raises(KeyError):
        store["a"]
    with pytest.raises(KeyError):
        del store["a"]
    assert store.delete("b") is True and store.delete("b") is False
    store["e"] = b""
    assert store["e"] == b""


def test_set_flags_and_ttl(store):
    assert store.set("k", b"v") is True
    assert store.set("k", b"w", nx=True) is False
    assert store["k"] == b"v"
    assert store.set("absent", b"x", xx=True) is False
    assert "absent" not in store
    assert store.set("k", b"w", xx=True) is True
    assert store.ttl("k") is None
    assert store.set("t", b"v", 100) is True
    assert 99 <= store.ttl("t") <= 100
    assert store.set("t", b"v2", keepttl=True) and store.ttl("t") >= 99
    assert store.expire("k", 50) is True and 49 <= store.ttl("k") <= 50
    assert store.expire("k", None) is True and store.ttl("k") is None
    assert store.expire("absent", 5) is False
    with pytest.raises(KeyError):
        store.ttl("absent")
    with pytest.raises(ValueError):
        store.set("k", b"v", 0)


def test_incr(store):
    assert store.incr("n") == 1
    assert store.incr("n", 41) == 42
    assert store.incr(b"n", -50) == -8
    assert store["n"] == b"-8"
    store["s"] = b"abc"
    with pytest.raises(shmkv.NotANumber) as e:
        store.incr("s")
    assert isinstance(e.value, ValueError)
    store["big"] = str(2**63 - 1).encode()
    with pytest.raises(shmkv.Overflow):
        store.incr("big")
    assert store["big"] == str(2**63 - 1).encode()


def test_keys_and_values_typed(store):
    with pytest.raises(TypeError):
        store[1] = b"x"
    with pytest.raises(TypeError, match="bytes-like"):
        store["x"] = "a str"
    with pytest.raises(TypeError):
        store["x"] = 5
    store["é"] = b"utf8"
    assert store["é".encode()] == b"utf8"


def test_limits(key):
    s = shmkv.create(key, size=2 << 20, max_key_size=16, max_value_size=1024)
    try:
        with pytest.raises(shmkv.TooBig):
            s["k" * 17] = b"v"
        with pytest.raises(shmkv.TooBig):
            s["k"] = b"v" * 1025
        with pytest.raises(shmkv.InvalidArgument):
            s[b""] = b"v"
        n = 0
        with pytest.raises(shmkv.StoreFull) as e:
            while True:
                s[f"f{n}"] = b"x" * 1000
                n += 1
        assert "no room" in str(e.value)
        assert e.value.code == shmkv.StoreFull.code
        assert s[f"f{n - 1}"] == b"x" * 1000
    finally:
        s.destroy()


def test_iteration(store):
    want = {f"k{i}".encode(): str(i).encode() for i in range(500)}
    for k, v in want.items():
        store[k] = v
    assert sorted(store.keys()) == sorted(want)
    assert sorted(store) == sorted(want)
    assert dict(store.items()) == want
    store.flush()
    assert len(store) == 0 and store.keys() == []


def test_stats_and_check(store):
    store["a"] = b"1"
    store["a"]
    st = store.stats()
    assert st["entries"] == 1 and st["sets"] >= 1 and st["hits"] >= 1
    assert 0.0 <= st["fragmentation"] <= 1.0
    assert store.check()["entries"] == 1


# ---- read sections and zero copy ----

def test_section_views(store):
    store["a"] = b"hello"
    store["b"] = b"world"
    with store.read() as r:
        v = r["a"]
        assert isinstance(v, memoryview) and v.readonly
        assert v == b"hello"
        assert bytes(v[1:3]) == b"el"  # a slice gone by the block's end
        assert v.tobytes() == b"hello"
        assert "b" in r and "zz" not in r
        assert r.get("zz") is None and r.get("zz", 1) == 1
        many = r.get_many(["a", "zz", b"b"])
        assert many[1] is None
        assert [m.tobytes() for m in (many[0], many[2])] == [b"hello", b"world"]
        with pytest.raises(KeyError):
            r["zz"]
        with pytest.raises(TypeError):
            v[0] = 1  # read-only
    with pytest.raises(ValueError, match="released"):
        v.tobytes()
    with pytest.raises(ValueError):
        many[0][0]


def test_views_reused_only_when_dropped(store):
    """A view its caller dropped may carry the next value; one still held,
    sliced or weakly referenced keeps its own."""
    import weakref
    store["a"] = b"aaaa"
    store["b"] = b"bbbb"
    with store.read() as r:
        a = r["a"]
        b = r["b"]
        assert a.tobytes() == b"aaaa" and b.tobytes() == b"bbbb"
        part = r["a"][1:3]
        assert r["b"].tobytes() == b"bbbb" and part.tobytes() == b"aa"
        w = r["a"]
        ref = weakref.ref(w)
        del w
        assert r["b"].tobytes() == b"bbbb"
        assert ref() is None or ref().tobytes() == b"aaaa"
        assert {r["a"].tobytes() for _ in range(3)} == {b"aaaa"}
        del part


def test_view_is_shared_memory(store):
    """A view shows the bytes in the segment: a writer's new value is a new
    entry, so the view keeps the old bytes until its section ends."""
    store["k"] = b"old!"
    with store.read() as r:
        v = r["k"]
        writer = shmkv.open(store.where)
        done = threading.Event()

        def write():
            writer["k"] = b"new!"
            done.set()

        t = threading.Thread(target=write)
        t.start()
        done.wait(5)
        assert done.is_set()
        assert v.tobytes() == b"old!"  # the section's consistent view
        t.join()
    assert store["k"] == b"new!"
    writer.close()


def test_derived_view_keeps_section_open(store):
    store["k"] = b"abcdef"
    section = store.read()
    with pytest.raises(BufferError, match="still alive"):
        with section as r:
            part = r["k"][2:4]
    # The section is still open and the slice still reads its bytes.
    assert part.tobytes() == b"cd"
    # This thread goes on meanwhile, on another handle.
    store["other"] = b"x"
    assert store["other"] == b"x"
    with store.read() as r2:
        assert r2["k"].tobytes() == b"abcdef"
    del part
    gc.collect()
    # The section ended with the slice: writers reclaim its memory again.
    for i in range(2000):
        store["k"] = b"%d" % i
    assert store.stats()["stale_sections"] == 0


def test_section_misuse(store):
    store["k"] = b"v"
    r = store.read()
    with pytest.raises(shmkv.StateError):
        r["k"]
    with r:
        with pytest.raises(shmkv.StateError):
            with store.read():
                pass
        with pytest.raises(shmkv.StateError):
            store["x"] = b"write inside a section"
        assert store["k"] == b"v"  # a copy inside the section is fine
    with pytest.raises(shmkv.StateError):
        with r:
            pass
    with pytest.raises(TypeError):
        memoryview(store.read())  # only its lookups export values


def test_section_without_with_ends_when_dropped(store):
    store["k"] = b"v"
    r = store.read()
    r.__enter__()
    assert r["k"].tobytes() == b"v"
    del r
    gc.collect()
    with store.read() as r2:  # not nested: the first one ended
        assert "k" in r2


# ---- errors ----

def test_errors(key):
    with pytest.raises(shmkv.NoStore) as e:
        shmkv.open(key)
    assert "no store at key" in str(e.value)
    assert e.value.code == -8 and isinstance(e.value, shmkv.Error)
    with pytest.raises(shmkv.InvalidArgument):
        shmkv.open("key:nonsense")
    with pytest.raises(shmkv.ConfigError):
        shmkv.open("/nonexistent/shmkvd.conf")
    codes = set()
    for name in shmkv.__all__:
        cls = getattr(shmkv, name)
        if isinstance(cls, type) and issubclass(cls, shmkv.Error) \
                and cls is not shmkv.Error:
            assert cls.code < 0 and cls.code not in codes
            codes.add(cls.code)
            assert shmkv.strerror(cls.code) != shmkv.strerror(-1000)
    assert len(codes) == 29
    s = shmkv.create(key, size=2 << 20)
    try:
        with pytest.raises(shmkv.Exists):
            shmkv.create(key, size=2 << 20)
    finally:
        s.destroy()
    with pytest.raises(shmkv.Closed):
        s["k"]


def test_readonly(store):
    store["k"] = b"v"
    ro = shmkv.open(store.where, readonly=True)
    assert ro.readonly and not store.readonly
    assert ro["k"] == b"v"
    with pytest.raises(shmkv.ReadOnly):
        ro["k"] = b"w"
    with pytest.raises(shmkv.ReadOnly):
        ro.flush()
    ro.close()
    with pytest.raises(shmkv.Closed):
        ro["k"]


# ---- codecs ----

@pytest.mark.parametrize("codec", ["json", "pickle"])
def test_codec(store, codec):
    c = shmkv.open(store.where, codec=codec)
    c["obj"] = {"a": [1, 2, 3], "b": None}
    assert c["obj"] == {"a": [1, 2, 3], "b": None}
    assert c.get("absent") is None
    assert c.set("obj", [1], nx=True) is False
    assert "obj" in c and len(c) == 1
    assert dict(c.items()) == {b"obj": {"a": [1, 2, 3], "b": None}}
    assert store["obj"]  # the raw bytes are there
    c.close()
    with pytest.raises(shmkv.InvalidArgument):
        shmkv.open(store.where, codec="yaml")


# ---- threads ----

def test_threads(store):
    errors = []

    def work(n):
        try:
            for i in range(2000):
                k = f"t{n}-{i % 50}"
                store[k] = b"%d" % i
                assert store[k] == b"%d" % i
                with store.read() as r:
                    assert r[k].tobytes() == b"%d" % i
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store) == 8 * 50
    # Each thread's handle was closed as the thread ended: the creator's
    # alone is left.
    assert store.stats()["writers"] == 1


def test_short_lived_threads_give_slots_back(key):
    s = shmkv.create(key, size=2 << 20, max_clients=4)
    try:
        for i in range(50):
            t = threading.Thread(target=s.__setitem__, args=(f"k{i}", b"v"))
            t.start()
            t.join()
        assert len(s) == 50
    finally:
        s.destroy()


def test_close_from_another_thread(store):
    other = shmkv.open(store.where)
    seen = []
    started = threading.Event()

    def writer():
        try:
            while True:
                other["k"] = b"v"
                started.set()
        except shmkv.Closed:
            seen.append("closed")

    t = threading.Thread(target=writer)
    t.start()
    assert started.wait(10)
    other.close()
    t.join(10)
    assert seen == ["closed"]
    assert store["k"] == b"v"


# ---- processes ----

def _child_reads(store, key, q):
    q.put(store[key])
    store[key + "-child"] = b"from %d" % os.getpid()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing(store, method):
    store["k"] = b"parent's"
    ctx = multiprocessing.get_context(method)
    q = ctx.Queue()
    p = ctx.Process(target=_child_reads, args=(store, "k", q))
    p.start()
    assert q.get(timeout=30) == b"parent's"
    p.join(30)
    assert p.exitcode == 0
    assert store["k-child"] == b"from %d" % p.pid
    assert store["k"] == b"parent's"  # and the parent's handle still works


def test_fork_child_opens_its_own(store):
    store["k"] = b"v"
    store["k"]  # this thread's handle exists before the fork
    pid = os.fork()
    if pid == 0:
        try:
            ok = store["k"] == b"v"
            store["c"] = b"child"
            os._exit(0 if ok else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert store["c"] == b"child"


def test_resize(store):
    for i in range(1000):
        store[f"k{i}"] = b"v" * 1500
    other = shmkv.open(store.where)
    assert other["k5"] == b"v" * 1500
    store.resize(16 << 20)
    assert store.stats()["data_bytes"] == 16 << 20
    assert other["k999"] == b"v" * 1500  # follows
    with pytest.raises(shmkv.StoreFull):
        store.resize(1 << 20)
    other.close()


# ---- a store made by shmkvd ----

def test_store_made_by_shmkvd(daemon):
    conf, sock = daemon
    s = shmkv.open(conf)
    s["from-python"] = b"zero copy"
    redis = pytest.importorskip("redis")
    r = redis.Redis(unix_socket_path=sock)
    assert r.get("from-python") == b"zero copy"
    r.set("from-redis", "over the socket")
    assert s["from-redis"] == b"over the socket"
    with s.read() as sec:
        assert sec["from-redis"].tobytes() == b"over the socket"
    r.close()
    s.close()


# ---- the README ----

def test_readme_example():
    """The README's Python example, as printed but for its store key, runs
    and prints what the README says."""
    text = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- python-example:begin -->\n```python\n(.*?)```",
                     text, re.S)
    out = re.search(r"<!-- python-output:begin -->\n```\n(.*?)```", text,
                    re.S)
    assert code and out, "no Python example in README.md"
    key = unique_key()
    src = code.group(1).replace("key:0x5eed0043", key)
    try:
        res = subprocess.run([sys.executable, "-c", src], capture_output=True,
                             text=True, timeout=60)
    finally:
        try:
            shmkv.remove(key)
        except shmkv.NoStore:
            pass
    assert res.returncode == 0, res.stderr
    assert res.stdout == out.group(1)



# ---- milliseconds, compare-and-set, get-or-fill ----

def test_millisecond_ttls(store):
    store.set("k", b"v", ttl=0.15)
    assert 140 <= store.pttl("k") <= 150
    time.sleep(0.1)
    assert store["k"] == b"v"
    time.sleep(0.1)
    assert store.get("k") is None
    store["p"] = b"v"
    assert store.expire("p", 2.5) and 2400 <= store.pttl("p") <= 2500
    assert store.expire("p", None) and store.pttl("p") is None
    with pytest.raises(ValueError):
        store.set("k", b"v", ttl=0)


def test_cas(store):
    v0 = store.version("c")
    assert store.cas("c", b"1", v0)
    assert not store.cas("c", b"2", v0)
    assert store["c"] == b"1"
    v1 = store.version("c")
    store["c"] = b"other"
    assert not store.cas("c", b"3", v1)
    assert store.cas("c", b"3", store.version("c"), ttl=5)
    assert 4900 <= store.pttl("c") <= 5000


def _fill_child(where, q):
    s = shmkv.open(where)

    def fill():
        s.incr("fills")
        time.sleep(0.1)
        return b"computed"

    q.put(s.get_or_fill("hot", fill, ttl=60))
    s.close()


def test_get_or_fill(store, key):
    calls = []

    def fill():
        calls.append(1)
        return b"value"

    assert store.get_or_fill("g", fill) == b"value"
    assert store.get_or_fill("g", fill) == b"value"
    assert len(calls) == 1
    with pytest.raises(ZeroDivisionError):
        store.get_or_fill("bad", lambda: 1 / 0)
    assert store.get("bad") is None
    assert store.get_or_fill("bad", fill) == b"value"  # the lease was freed
    # Six processes miss one key together: one fill.
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_fill_child, args=(key, q)) for _ in range(6)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    assert results == [b"computed"] * 6
    assert store["fills"] == b"1"
    # Stale: an expired value while another holds the lease.
    store.set("st", b"old", ttl=0.02)
    time.sleep(0.05)
    other = shmkv.open(key)
    assert other.get_or_fill("st", lambda: (time.sleep(0.01), b"x")[1]) == b"x"
    store.set("st2", b"old", ttl=0.02)
    time.sleep(0.05)
    with pytest.raises(shmkv.Timeout):
        # A lease held by this process (another handle) and no stale wanted.
        from threading import Thread
        held = threading.Event()
        done = threading.Event()

        def holder():
            other.get_or_fill("st2", lambda: (held.set(), done.wait(5),
                                              b"new")[2])

        t = Thread(target=holder)
        t.start()
        held.wait(5)
        try:
            assert store.get_or_fill("st2", fill, stale=True) == b"old"
            store.get_or_fill("st2", fill, wait=0.05)
        finally:
            done.set()
            t.join(10)
    other.close()
