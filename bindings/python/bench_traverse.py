#!/usr/bin/env python3
"""The classic shared-memory traversal, with shmkv beside it.

Traverses N keys (1,000,000 by default: 8-byte keys, 8-byte values) in
each of the ways Python programs share a table between processes, and
prints the elapsed time per case in the classic form, then each as a ratio
to a private dict lookup, then the targets with pass or fail:

  private      array.array indexing, dict[key]
  proxies      multiprocessing.Manager().list() and .dict(), through a
               socket to the manager process
  sharedctypes a RawArray, in the main process and in N subprocesses at
               once (fixed-size C types: no keys)
  redis-py     GET over shmkvd's Unix socket (needs shmkvd: --shmkvd PATH,
               default ../../build/shmkvd beside this file)
  shmkv        store[key] (a copy), r[key] inside one read section (zero
               copy), r.get_many() in batches of 1,000; in the main process
               and in N subprocesses at once

Slow cases traverse a tenth (or a hundredth) of the keys and are scaled to
N, marked so. One run, on whatever the machine is doing: compare the
ratios, not the absolute times, between machines.

  bench_traverse.py [-n KEYS] [-p PROCS] [--shmkvd PATH]
"""
import argparse
import array
import multiprocessing
import multiprocessing.sharedctypes
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# The installed package, not the sources beside this script.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
import shmkv  # noqa: E402


def keys_of(n):
    return [b"%08d" % i for i in range(n)]


def timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


# ---- the traversals, each a loop over all it is given ----

def walk_array(a, n):
    for i in range(n):
        a[i]


def walk_dict(d, keys):
    for k in keys:
        d[k]


def walk_store(s, keys):
    for k in keys:
        s[k]


def walk_section(s, keys):
    with s.read() as r:
        for k in keys:
            r[k]


def walk_get_many(s, keys):
    with s.read() as r:
        for i in range(0, len(keys), 1000):
            r.get_many(keys[i:i + 1000])


def walk_redis(r, keys):
    for k in keys:
        r.get(k)


# ---- N processes at once ----

def _child(kind, where, n, start, q):
    keys = keys_of(n) if kind != "rawarray" else None
    if kind == "rawarray":
        obj = where
        start.wait()
        q.put(timed(walk_array, obj, n))
        return
    s = shmkv.open(where, readonly=True)
    fn = {"store": walk_store, "section": walk_section,
          "get_many": walk_get_many}[kind]
    fn(s, keys[:1000])  # this process's handle opened, caches warm
    start.wait()
    q.put(timed(fn, s, keys))
    s.close()


def in_processes(kind, where, n, procs):
    """Each of procs forked processes traverses all n at the same moment;
    their median time."""
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    q = ctx.Queue()
    ps = [ctx.Process(target=_child, args=(kind, where, n, start, q))
          for _ in range(procs)]
    for p in ps:
        p.start()
    time.sleep(0.2)
    start.set()
    times = sorted(q.get(timeout=600) for _ in ps)
    for p in ps:
        p.join()
    return times[len(times) // 2]


# ---- shmkvd, for redis-py ----

def start_shmkvd(path, key, size):
    d = tempfile.mkdtemp(prefix="shmkv-bench-")
    conf = os.path.join(d, "shmkvd.conf")
    sock = os.path.join(d, "shmkvd.sock")
    with open(conf, "w") as f:
        f.write(f"[store]\nkey = {key}\nsize = {size}\nmode = 0600\n"
                f"[control]\nsocket = {sock}\n"
                "[persistence]\nsave_on_shutdown = no\n"
                "[daemon]\nlog_level = warning\n")
    proc = subprocess.Popen([path, "--foreground", "-c", conf])
    for _ in range(500):
        if os.path.exists(sock):
            return proc, conf, sock, d
        time.sleep(0.01)
    proc.kill()
    raise SystemExit("shmkvd did not start")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=1_000_000, help="keys")
    ap.add_argument("-p", type=int, default=2, help="subprocesses at once")
    ap.add_argument("--shmkvd", default=os.path.join(HERE, "..", "..",
                                                     "build", "shmkvd"))
    args = ap.parse_args()
    n, procs = args.n, args.p
    keys = keys_of(n)
    values = [b"v%07d" % i for i in range(n)]
    rows = []  # (case, traversed, seconds for n)

    def case(name, traversed, seconds):
        rows.append((name, traversed, seconds * n / traversed))

    # Private memory.
    arr = array.array("q", range(n))
    case("array.array a[i]", n, timed(walk_array, arr, n))
    d = dict(zip(keys, values))
    case("dict d[key]", n, timed(walk_dict, d, keys))

    # Proxies to a manager process, on a tenth.
    tenth = max(n // 10, 1)
    with multiprocessing.Manager() as m:
        ml = m.list(range(tenth))
        case("Manager().list() l[i]", tenth, timed(walk_array, ml, tenth))
        md = m.dict(zip(keys[:tenth], values[:tenth]))
        case("Manager().dict() d[key]", tenth,
             timed(walk_dict, md, keys[:tenth]))

    # sharedctypes.
    raw = multiprocessing.sharedctypes.RawArray("q", range(n))
    case("RawArray a[i], main process", n, timed(walk_array, raw, n))
    case(f"RawArray a[i], {procs} processes at once (each)", n,
         in_processes("rawarray", raw, n, procs))

    # shmkv, in a store shmkvd owns (so that redis-py reads the same one).
    key = "key:0x5e%06x" % (os.getpid() & 0xFFFFFF)
    size = "%dM" % max(16, n * 160 // (1 << 20) + 8)
    daemon = None
    if os.access(args.shmkvd, os.X_OK):
        daemon = start_shmkvd(args.shmkvd, key, size)
        where = daemon[1]
        s = shmkv.open(where)
    else:
        print(f"no shmkvd at {args.shmkvd}: redis-py is left out",
              file=sys.stderr)
        s = shmkv.create(key, size=int(size[:-1]) << 20)
        where = key
    try:
        for k, v in zip(keys, values):
            s[k] = v
        walk_store(s, keys[:10000])  # this process's handle, warm
        case("shmkv store[key], main process", n, timed(walk_store, s, keys))
        case("shmkv r[key], one read section", n,
             timed(walk_section, s, keys))
        case("shmkv r.get_many(1,000 keys)", n,
             timed(walk_get_many, s, keys))
        alone = in_processes("store", where, n, 1)
        case("shmkv store[key], 1 subprocess alone", n, alone)
        together = in_processes("store", where, n, procs)
        case(f"shmkv store[key], {procs} subprocesses at once (each)", n,
             together)
        sec_alone = in_processes("section", where, n, 1)
        sec_together = in_processes("section", where, n, procs)
        case("shmkv r[key], 1 subprocess alone", n, sec_alone)
        case(f"shmkv r[key], {procs} subprocesses at once (each)", n,
             sec_together)
        if daemon is not None:
            import redis
            r = redis.Redis(unix_socket_path=daemon[2])
            hundredth = max(n // 100, 1)
            case("redis-py GET over shmkvd's socket", hundredth,
                 timed(walk_redis, r, keys[:hundredth]))
            r.close()
    finally:
        if daemon is not None:
            s.close()
            daemon[0].send_signal(signal.SIGTERM)
            daemon[0].wait(30)
            import shutil
            shutil.rmtree(daemon[3], ignore_errors=True)
        else:
            s.destroy()

    by = {name: sec for name, _, sec in rows}
    base = by["dict d[key]"]
    print(f"traversing {n:,} keys (8-byte keys and values), Python "
          f"{sys.version.split()[0]}, shmkv {shmkv.__version__}, "
          f"{os.cpu_count()} CPUs; * = timed on a tenth or a hundredth, "
          "scaled\n")
    print(f"{'case':58} {'elapsed':>10} {'x dict':>9}")
    for name, traversed, sec in rows:
        mark = "*" if traversed < n else " "
        print(f"{name:58} {sec:9.3f}s{mark} {sec / base:8.2f}x")

    store = by["shmkv store[key], main process"]
    section = by["shmkv r[key], one read section"]
    ratio = together / alone
    targets = [
        ("store[key] within 2x of dict[key]", store / base, store <= 2 * base),
        ("r[key] in one read section within 1.5x of dict[key]",
         section / base, section <= 1.5 * base),
        (f"{procs} subprocesses each as fast as 1 alone (within 10%)",
         ratio, ratio <= 1.10),
        ("at least 100x faster than Manager().dict()",
         by["Manager().dict() d[key]"] / store,
         by["Manager().dict() d[key]"] >= 100 * store),
    ]
    if daemon is not None:
        rp = by["redis-py GET over shmkvd's socket"]
        targets.append(("at least 20x faster than redis-py", rp / store,
                        rp >= 20 * store))
    print("\ntargets:")
    failed = 0
    for name, value, ok in targets:
        failed += not ok
        print(f"  {name:58} {value:8.2f}   {'pass' if ok else 'FAIL'}")
    print(f"\n{len(targets) - failed} passed, {failed} failed")


if __name__ == "__main__":
    main()
