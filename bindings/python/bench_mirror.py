"""The mirror's figures ([upstream], README "Mirroring a Redis"): the
initial load rate, the invalidation lag from a write on the upstream to
the value visible in shared memory at 1,000 and 10,000 updates a second
(p50, p99, max; target p99 within 10 ms), and reads from the store
against GETs from the upstream over TCP.

Starts its own redis-server on a loopback port and its own shmkvd, and
stops both. Run with `make mirror-bench`; --quick for a short run.
"""
import argparse
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import redis

# The installed package, not the sources beside this file.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
import shmkv  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(sock, timeout=120):
    r = redis.Redis(unix_socket_path=sock)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            st = r.info("upstream")
            if st.get("mirror_ready") == 1:
                return st
        except redis.ConnectionError:
            pass
        time.sleep(0.005)
    raise SystemExit("shmkvd did not finish its load")


def reader(conf, keys, seconds, out):
    """Spins over keys in the store; on each new value (a write's
    monotonic ns), records the lag."""
    s = shmkv.open(conf, readonly=True)
    last = {}
    lags = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for k in keys:
            v = s.get(k)
            if v is not None and last.get(k) != v:
                last[k] = v
                lags.append(time.monotonic_ns() - int(v))
    s.close()
    out.put(lags)


def lag_run(conf, port, rate, seconds, nkeys=64):
    keys = [f"lag:{i}".encode() for i in range(nkeys)]
    up = redis.Redis(host="127.0.0.1", port=port)
    for k in keys:
        up.set(k, str(time.monotonic_ns()))
    time.sleep(0.2)
    q = multiprocessing.Queue()
    p = multiprocessing.Process(target=reader,
                                args=(conf, keys, seconds + 0.5, q))
    p.start()
    time.sleep(0.2)
    period = 1.0 / rate
    t0 = time.monotonic()
    n = 0
    while True:
        now = time.monotonic()
        if now - t0 >= seconds:
            break
        due = t0 + n * period
        if now < due:
            time.sleep(due - now)
        up.set(keys[n % nkeys], str(time.monotonic_ns()))
        n += 1
    lags = q.get(timeout=60)
    p.join(10)
    up.close()
    # The first value seen of each key may predate the run.
    lags = sorted(x / 1e6 for x in lags[nkeys:] if x >= 0)
    return n / seconds, lags


def pct(xs, q):
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shmkvd", default="build/shmkvd")
    ap.add_argument("--keys", type=int, default=100000,
                    help="keys for the initial load (default 100000)")
    ap.add_argument("--seconds", type=float, default=5.0,
                    help="length of each lag run (default 5)")
    ap.add_argument("--quick", action="store_true",
                    help="10,000 keys and 1 s runs")
    a = ap.parse_args()
    if a.quick:
        a.keys, a.seconds = 10000, 1.0
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed")
    d = tempfile.mkdtemp(prefix="shmkv-mirror-bench-")
    port = free_port()
    rs = subprocess.Popen(["redis-server", "--port", str(port), "--bind",
                           "127.0.0.1", "--save", "", "--appendonly", "no",
                           "--dir", d], stdout=subprocess.DEVNULL)
    daemon = None
    key = f"key:0x5b{os.getpid() & 0xffff:04x}f0"
    try:
        up = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(200):
            try:
                up.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.01)
        value = b"v" * 32
        p = up.pipeline(transaction=False)
        for i in range(a.keys):
            p.set(f"load:{i:08d}", value)
            if i % 10000 == 9999:
                p.execute()
        p.execute()
        conf = os.path.join(d, "shmkvd.conf")
        sock = os.path.join(d, "shmkvd.sock")
        with open(conf, "w") as f:
            f.write(f"[store]\nkey = {key}\nsize = 256M\nmode = 0600\n"
                    f"[control]\nsocket = {sock}\n"
                    "[persistence]\nsave_on_shutdown = no\n"
                    f"[upstream]\naddress = 127.0.0.1:{port}\n"
                    "prefixes = load:,lag:\nbatch = 1000\n")
        t0 = time.monotonic()
        daemon = subprocess.Popen([a.shmkvd, "--foreground", "-c", conf],
                                  stderr=subprocess.DEVNULL)
        st = wait_ready(sock)
        wall = time.monotonic() - t0
        print(f"initial load: {a.keys:,} keys of 32 bytes over TCP in "
              f"{st['mirror_last_load_ms']} ms "
              f"({a.keys / max(st['mirror_last_load_ms'], 1) * 1000:,.0f} "
              f"keys/s; {wall:.2f} s from start to ready)")
        print()
        print("invalidation lag: upstream SET to the value visible in "
              "shared memory")
        print(f"{'rate asked':>12} {'made':>10} {'samples':>8} "
              f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  target p99 <= 10")
        for rate in (1000, 10000):
            made, lags = lag_run(conf, port, rate, a.seconds)
            p99 = pct(lags, 0.99)
            print(f"{rate:>10,}/s {made:>8,.0f}/s {len(lags):>8} "
                  f"{pct(lags, 0.5):>8.3f} {p99:>8.3f} "
                  f"{lags[-1] if lags else float('nan'):>8.3f}  "
                  f"{'pass' if p99 <= 10 else 'FAIL'}")
        print()
        s = shmkv.open(conf, readonly=True)
        n_local, n_up = 200000, 20000
        t = time.perf_counter()
        for i in range(n_local):
            s.get(b"load:00000042")
        local = n_local / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(n_up):
            up.get(b"load:00000042")
        remote = n_up / (time.perf_counter() - t)
        s.close()
        print(f"reads of one key, one Python process: store.get {local:,.0f}/s,"
              f" redis-py GET over TCP {remote:,.0f}/s: "
              f"{local / remote:.0f}x")
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
        rs.kill()
        rs.wait(10)
        try:
            shmkv.remove(key)
        except shmkv.NoStore:
            pass
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
