"""shmkvd as a mirror of a real redis-server ([upstream]): the initial
load, coherence under a random writer, TTLs, keys of other types, the
socket's refusal to write mirrored keys, and the upstream restarted,
killed, and stopped (SIGSTOP, as a network cut looks). Each test starts
its own redis-server on a Unix socket in a temporary directory."""
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
import redis

import shmkv
from conftest import record, start_shmkvd, stop_shmkvd

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed")


class Upstream:
    def __init__(self, d):
        self.sock = os.path.join(d, "redis.sock")
        self.d = d
        self.proc = None
        self.user = self.password = None

    def start(self, *extra):
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", self.sock,
             "--save", "", "--appendonly", "no", "--dir", self.d, *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        record(f"pid {self.proc.pid}")
        for _ in range(500):
            if os.path.exists(self.sock):
                break
            time.sleep(0.01)
        self.r = redis.Redis(unix_socket_path=self.sock,
                             username=self.user, password=self.password)
        for _ in range(100):
            try:
                self.r.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.01)

    def kill(self):
        self.proc.send_signal(signal.SIGCONT)
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def upstream():
    d = tempfile.mkdtemp(prefix="shmkv-up-")
    u = Upstream(d)
    u.start()
    yield u
    if u.proc.poll() is None:
        u.kill()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def mirror(upstream):
    started = []

    def start(prefixes="m:,n:", extra="", env=None):
        got = start_shmkvd(env=env,
            extra=f"[upstream]\naddress = unix:{upstream.sock}\n"
                  f"prefixes = {prefixes}\nhealth_timeout_ms = 600\n"
                  f"backoff_max_ms = 200\nbatch = 50\n" + extra)
        proc, d, key, conf, sock, logpath = got
        started.append(got)
        if proc.poll() is not None:
            pytest.fail(open(logpath).read())
        return conf, sock, logpath

    yield start
    for proc, d, key, *_ in started:
        stop_shmkvd(proc, d, key)


def info(sock):
    r = redis.Redis(unix_socket_path=sock)
    out = r.info("upstream")
    r.close()
    return out


def wait_for(cond, timeout=10.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def upstream_view(u, prefixes=("m:", "n:")):
    """The string keys under the prefixes, with their values."""
    out = {}
    for k in u.r.scan_iter(count=500):
        if k.startswith(tuple(p.encode() for p in prefixes)) and \
                u.r.type(k) == b"string":
            v = u.r.get(k)
            if v is not None:
                out[k] = v
    return out


def local_view(conf):
    s = shmkv.open(conf, readonly=True)
    out = dict(s.items())
    s.close()
    return out


def test_initial_load(upstream, mirror):
    p = upstream.r.pipeline(transaction=False)
    for i in range(3000):
        p.set(f"m:{i}", f"value {i}")
    p.set("n:bin", b"\x00\xff")
    p.set("m:ttl", "t", px=60000)
    p.hset("m:hash", "f", "v")
    p.set("other:1", "not mirrored")
    p.execute()
    conf, sock, logpath = mirror()
    wait_for(lambda: info(sock).get("mirror_ready") == 1, what="the load")
    st = info(sock)
    assert st["mirror_state"] == "live" and st["mirror_stale"] == 0
    assert st["mirror_skipped_other_types"] == 1
    assert local_view(conf) == upstream_view(upstream)
    s = shmkv.open(conf, readonly=True)
    assert 59000 <= s.pttl("m:ttl") <= 60000
    assert s.get("other:1") is None
    # Readers see the marks: neither loading nor stale.
    s.close()
    assert "loaded 3003 keys" in open(logpath).read()  # the hash too


def test_coherence_under_a_random_writer(upstream, mirror):
    rnd = random.Random(int(os.environ.get("SHMKV_TEST_SEED", "0")) or None)
    for i in range(200):
        upstream.r.set(f"m:{i}", i)
    conf, sock, _ = mirror()
    wait_for(lambda: info(sock).get("mirror_ready") == 1, what="the load")
    for n in range(3000):
        k = f"{rnd.choice(['m', 'n', 'x'])}:{rnd.randrange(300)}"
        op = rnd.randrange(6)
        if op == 0:
            upstream.r.delete(k)
        elif op == 1:
            upstream.r.append(k, "a")
        elif op == 2:
            upstream.r.incr(f"{k}:c")
        elif op == 3:
            upstream.r.set(k, rnd.randbytes(rnd.randrange(50)),
                           px=rnd.choice([None, 5000]))
        elif op == 4:
            upstream.r.expire(k, 100)
        else:
            upstream.r.set(k, f"v{n}")
    want = upstream_view(upstream)
    wait_for(lambda: local_view(conf) == want, timeout=10,
             what="the mirror to converge")
    # A flush upstream empties the mirror.
    upstream.r.flushall()
    wait_for(lambda: local_view(conf) == {}, what="the flush")


def test_writes(upstream, mirror):
    conf, sock, _ = mirror()
    wait_for(lambda: info(sock).get("mirror_ready") == 1, what="the load")
    r = redis.Redis(unix_socket_path=sock)
    s = shmkv.open(conf)
    # Through the socket, a write to mirrored keys goes to the upstream,
    # and is answered once the store has it too (read-your-writes for any
    # reader of the store).
    for i in range(200):
        assert r.set(f"m:{i}", f"v{i}")
        assert s[f"m:{i}"] == f"v{i}".encode()
    assert upstream.r.get("m:199") == b"v199"
    assert r.incr("m:count") == 1 and s["m:count"] == b"1"
    assert r.set("m:ttl", "t", px=5000) and 4000 <= s.pttl("m:ttl") <= 5000
    assert r.mset({"n:a": "1", "n:b": "2"}) and s["n:b"] == b"2"
    assert r.delete("m:0", "m:1") == 2 and s.get("m:0") is None
    assert r.getset("n:a", "x") == b"1" and s["n:a"] == b"x"
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        upstream.r.hset("m:h", "f", "v")
        r.incr("m:h")  # the upstream's own error comes back
    # What cannot go upstream is refused.
    with pytest.raises(redis.exceptions.ReadOnlyError):
        r.mset({"local": "1", "n:2": "x"})
    with pytest.raises(redis.exceptions.ReadOnlyError):
        r.flushall()
    with pytest.raises(redis.exceptions.ReadOnlyError):
        r.execute_command("SHMKV.SETF", "m:1", "x")
    p = r.pipeline()
    p.set("m:tx", "1")
    with pytest.raises(redis.exceptions.ResponseError):
        p.execute()
    assert r.set("local:1", "fine")  # not mirrored: the store's own
    assert r.get("local:1") == b"fine"
    assert upstream.r.get("local:1") is None
    # A process writing through libshmkv is refused; it may still write
    # keys outside the prefixes, and read everything.
    with pytest.raises(shmkv.Mirrored):
        s["m:1"] = b"x"
    with pytest.raises(shmkv.Mirrored):
        s.delete("n:1")
    with pytest.raises(shmkv.Mirrored):
        s.incr("m:counter")
    with pytest.raises(shmkv.Mirrored):
        s.flush()
    s["local:2"] = b"ok"
    assert s["local:2"] == b"ok"
    # With the upstream gone, writes to it fail clearly.
    upstream.kill()
    wait_for(lambda: info(sock)["mirror_stale"] == 1, what="stale")
    with pytest.raises(redis.exceptions.ResponseError, match="UNAVAILABLE"):
        r.set("m:5", "x")
    assert r.set("local:3", "still fine")
    s.close()
    r.close()


def metric(url, name):
    text = subprocess.run(["curl", "-sf", url], capture_output=True,
                          text=True, timeout=30, check=True).stdout
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def test_upstream_restart_and_kill(upstream, mirror):
    import socket
    for i in range(100):
        upstream.r.set(f"m:{i}", i)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/metrics"
    conf, sock, logpath = mirror(
        extra=f"[metrics]\nlisten = 127.0.0.1:{port}\n")
    wait_for(lambda: info(sock).get("mirror_ready") == 1, what="the load")
    assert metric(url, "shmkv_mirror_ready") == 1
    assert metric(url, "shmkv_mirror_stale") == 0
    upstream.kill()
    wait_for(lambda: info(sock)["mirror_stale"] == 1, what="stale")
    assert info(sock)["mirror_stale_since_ms"] > 0
    assert metric(url, "shmkv_mirror_stale") == 1
    assert metric(url, "shmkv_mirror_stale_since_seconds") > 1.7e9
    # Still serving what it had.
    assert len(local_view(conf)) == 100
    s = shmkv.open(conf, readonly=True)
    assert s.stats()["stale"] == 1  # what any reader can see
    s.close()
    # The upstream comes back empty but for two keys: the mirror follows.
    upstream.start()
    upstream.r.set("m:new", "n")
    upstream.r.set("m:5", "again")
    wait_for(lambda: info(sock)["mirror_stale"] == 0, what="reconnect")
    wait_for(lambda: local_view(conf) == {b"m:new": b"n", b"m:5": b"again"},
             what="the reload")
    assert "marked stale" in open(logpath).read()


def test_network_cut(upstream, mirror):
    # SIGSTOP: the connection stays open but nothing answers, as when a
    # network path is cut. The health check notices, the mirror goes
    # stale, and it resynchronises once the upstream answers again.
    for i in range(50):
        upstream.r.set(f"m:{i}", i)
    conf, sock, _ = mirror()
    wait_for(lambda: info(sock).get("mirror_ready") == 1, what="the load")
    os.kill(upstream.proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: info(sock)["mirror_stale"] == 1, timeout=5,
                 what="stale after the cut")
    finally:
        os.kill(upstream.proc.pid, signal.SIGCONT)
    # Changes the mirror could not hear of while cut off.
    upstream.r.delete("m:1")
    upstream.r.set("m:2", "changed")
    wait_for(lambda: info(sock)["mirror_stale"] == 0, what="reconnect")
    want = upstream_view(upstream)
    wait_for(lambda: local_view(conf) == want, what="the resync")


def test_loading_mark_and_readiness(upstream, mirror, tmp_path):
    # Before the first load, readers see SHMKV_MARK_LOADING; systemd hears
    # READY=1 only once the load is whole.
    import socket
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(0.3)
    upstream.kill()
    conf, sock, _ = mirror(env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
    got = b""
    try:
        while True:
            got += notify.recv(4096)
    except socket.timeout:
        pass
    assert b"READY=1" not in got
    st = info(sock)
    assert st["mirror_ready"] == 0 and st["mirror_state"] == "connecting"
    s = shmkv.open(conf, readonly=True)
    assert s.stats()["loading"] == 1
    upstream.start()
    upstream.r.set("m:1", "1")
    wait_for(lambda: info(sock).get("mirror_ready") == 1, what="the load")
    assert local_view(conf) == {b"m:1": b"1"}
    assert s.stats()["loading"] == 0 and s.stats()["stale"] == 0
    s.close()
    notify.settimeout(5)
    while b"READY=1" not in got:
        got += notify.recv(4096)
    notify.close()


def test_auth(upstream, mirror, tmp_path):
    # An ACL user with a password from password_file; a wrong one is
    # reported and retried, the store staying unready.
    upstream.kill()
    upstream.user, upstream.password = "mirror", "s3cret"
    upstream.start("--user", "mirror", "on", ">s3cret", "~*", "&*", "+@all",
                   "--user", "default", "off")
    upstream.r.set("m:1", "secret value")
    good = tmp_path / "good.pass"
    good.write_text("s3cret\n")
    bad = tmp_path / "bad.pass"
    bad.write_text("wrong\n")
    conf, sock, logpath = mirror(
        extra=f"user = mirror\npassword_file = {bad}\n")
    time.sleep(0.5)
    assert info(sock)["mirror_ready"] == 0
    assert "WRONGPASS" in open(logpath).read() or \
        "invalid" in open(logpath).read()
    conf, sock, _ = mirror(extra=f"user = mirror\npassword_file = {good}\n")
    wait_for(lambda: info(sock).get("mirror_ready") == 1, what="the load")
    assert local_view(conf) == {b"m:1": b"secret value"}
    # An error where a value was expected (here NOPERM; CLUSTERDOWN in a
    # failover, LOADING after a restart) removes nothing: the mirror goes
    # stale and reloads once the upstream answers again.
    upstream.r.execute_command("ACL", "SETUSER", "mirror", "-get")
    upstream.r.set("m:1", "changed")
    wait_for(lambda: info(sock)["mirror_stale"] == 1, what="stale")
    assert local_view(conf) == {b"m:1": b"secret value"}  # kept, stale
    upstream.r.execute_command("ACL", "SETUSER", "mirror", "+get")
    wait_for(lambda: info(sock)["mirror_stale"] == 0, what="recovery")
    wait_for(lambda: local_view(conf) == {b"m:1": b"changed"},
             what="convergence")


def test_unreachable_tcp_upstream(mirror):
    # A TCP port nothing listens on: each connect fails asynchronously,
    # over and over, and shmkvd keeps serving (and retrying) unharmed.
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = []
    got = start_shmkvd(extra=f"[upstream]\naddress = 127.0.0.1:{port}\n"
                             "backoff_max_ms = 20\n")
    started.append(got)
    proc, d, key, conf, sock, logpath = got
    try:
        time.sleep(1.5)
        assert proc.poll() is None, open(logpath).read()
        st = info(sock)
        assert st["mirror_state"] == "connecting" and st["mirror_ready"] == 0
        assert open(logpath).read().count("marked stale") == 1
        r = redis.Redis(unix_socket_path=sock)
        with pytest.raises(redis.exceptions.ResponseError,
                           match="UNAVAILABLE"):
            r.set("k", "v")  # every key is mirrored: none can be written
        r.close()
    finally:
        stop_shmkvd(proc, d, key)


# ---- Redis Cluster ----

class Cluster:
    """Six redis-servers on loopback ports: three primaries, a replica
    each, made a Cluster by redis-cli --cluster create."""

    def __init__(self, d):
        self.d = d
        self.procs = {}
        self.ports = []
        import socket
        while len(self.ports) < 6:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                p = s.getsockname()[1]
            if p < 55000 and p not in self.ports:
                self.ports.append(p)
        for p in self.ports:
            wd = os.path.join(d, str(p))
            os.makedirs(wd)
            self.procs[p] = subprocess.Popen(
                ["redis-server", "--port", str(p), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-node-timeout", "1000",
                 "--cluster-replica-validity-factor", "0",
                 "--cluster-config-file", "nodes.conf", "--save", "",
                 "--appendonly", "no", "--dir", wd],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            record(f"pid {self.procs[p].pid}")
        for p in self.ports:
            wait_for(lambda: self._pings(p), what=f"redis on {p}")
        subprocess.run(["redis-cli", "--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in self.ports],
                        "--cluster-replicas", "1", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        wait_for(self.ok, timeout=30, what="cluster_state:ok")
        from redis.cluster import RedisCluster
        self.rc = RedisCluster(host="127.0.0.1", port=self.ports[0])

    def _pings(self, p):
        try:
            return redis.Redis(port=p).ping()
        except redis.ConnectionError:
            return False

    def ok(self):
        for p, proc in self.procs.items():
            if proc.poll() is None:
                try:
                    if redis.Redis(port=p).info("cluster").get(
                            "cluster_state") != "ok" and \
                            b"cluster_state:ok" not in redis.Redis(
                                port=p).execute_command("CLUSTER", "INFO"):
                        return False
                except redis.ConnectionError:
                    return False
        return True

    def primary_of(self, key):
        slot = self.rc.keyslot(key)
        for lo, hi, (h, p, *_), *rest in redis.Redis(
                port=self.alive()).execute_command("CLUSTER", "SLOTS"):
            if lo <= slot <= hi:
                return p, slot
        raise KeyError(key)

    def alive(self):
        return next(p for p, proc in self.procs.items() if proc.poll() is None)

    def view(self):
        out = {}
        for k in self.rc.scan_iter(match="m:*", count=500):
            v = self.rc.get(k)
            if v is not None:
                out[k] = v
        return out

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def cluster():
    d = tempfile.mkdtemp(prefix="shmkv-cluster-")
    c = None
    try:
        c = Cluster(d)
        yield c
    finally:
        if c is not None:
            c.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_cluster(cluster):
    rc = cluster.rc
    for i in range(2000):
        rc.set(f"m:{i}", f"v{i}")
    rc.set("other", "x")
    got = start_shmkvd(extra=f"[upstream]\naddress = 127.0.0.1:"
                             f"{cluster.ports[0]}\nprefixes = m:\n"
                             "health_timeout_ms = 600\nbackoff_max_ms = 200\n")
    proc, d, key, conf, sock, logpath = got
    try:
        wait_for(lambda: info(sock).get("mirror_ready") == 1, what="the load")
        assert local_view(conf) == cluster.view()
        assert len(local_view(conf)) == 2000
        # Writes on every primary arrive.
        for i in range(0, 2000, 7):
            rc.set(f"m:{i}", f"w{i}")
        rc.delete("m:1", "m:2")
        want = cluster.view()
        wait_for(lambda: local_view(conf) == want, what="convergence")
        # Write-through routes by slot.
        r = redis.Redis(unix_socket_path=sock)
        for i in range(50):
            assert r.set(f"m:wt:{i}", i)
        assert rc.get("m:wt:49") == b"49"
        # A slot migration: a key's slot moves to another primary, and the
        # key is written after.
        src, slot = cluster.primary_of("m:5")
        dst = next(p for p in cluster.ports[:3] if p != src)
        dst_id = redis.Redis(port=dst).execute_command(
            "CLUSTER", "MYID").decode()
        src_id = redis.Redis(port=src).execute_command(
            "CLUSTER", "MYID").decode()
        subprocess.run(["redis-cli", "--cluster", "reshard",
                        f"127.0.0.1:{src}", "--cluster-from", src_id,
                        "--cluster-to", dst_id, "--cluster-slots", "200",
                        "--cluster-yes"], check=True, capture_output=True,
                       timeout=60)
        rc2 = __import__("redis.cluster").cluster.RedisCluster(
            host="127.0.0.1", port=dst)
        for i in range(2000):
            rc2.set(f"m:{i}", f"after-migration-{i}")
        cluster.rc = rc2
        want = cluster.view()
        wait_for(lambda: local_view(conf) == want, timeout=15,
                 what="convergence after the migration")
        # A failover: a primary dies, its replica takes over.
        victim, _ = cluster.primary_of("m:7")
        cluster.procs[victim].kill()
        cluster.procs[victim].wait(10)
        wait_for(lambda: info(sock)["mirror_stale"] == 1, what="stale")

        def promoted():
            try:
                rc3 = __import__("redis.cluster").cluster.RedisCluster(
                    host="127.0.0.1", port=cluster.alive())
                rc3.set("m:7", "after-failover")
                cluster.rc = rc3
                return True
            except Exception:
                return False
        wait_for(promoted, timeout=30, what="the failover")
        for i in range(0, 2000, 3):
            cluster.rc.set(f"m:{i}", f"f{i}")
        wait_for(lambda: info(sock)["mirror_stale"] == 0, timeout=20,
                 what="reconnect after the failover")
        want = cluster.view()
        wait_for(lambda: local_view(conf) == want, timeout=15,
                 what="convergence after the failover")
        r.close()
    finally:
        stop_shmkvd(proc, d, key)
