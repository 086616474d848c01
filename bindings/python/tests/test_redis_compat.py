"""Redis clients against shmkvd, used as their users use them with Redis:
redis-py (pipelines, which wrap MULTI/EXEC; WATCH transactions; scan_iter;
TTLs in milliseconds; the string commands), redis-cli's --scan, --bigkeys,
--pipe and --stat, redis-benchmark, and hiredis from C. Each test gets a
shmkvd of its own (the daemon fixture)."""
import os
import shutil
import subprocess
import threading
import time

import pytest
import redis

import shmkv

pytestmark = pytest.mark.skipif(
    shutil.which("redis-cli") is None, reason="redis-tools is not installed")


@pytest.fixture
def r(daemon):
    conf, sock = daemon
    client = redis.Redis(unix_socket_path=sock)
    yield client
    client.close()


def test_pipeline_is_a_transaction(r):
    # redis-py's default pipeline wraps its commands in MULTI/EXEC.
    p = r.pipeline()
    p.set("a", 1).incr("a").get("a").getset("a", "x").getdel("a")
    assert p.execute() == [True, 2, b"2", b"2", b"x"]
    assert r.get("a") is None
    # Without a transaction, too.
    p = r.pipeline(transaction=False)
    for i in range(500):
        p.set(f"n{i}", i)
    assert all(p.execute())
    assert r.dbsize() == 500


def test_queue_errors_abort(r):
    p = r.pipeline()
    p.set("k", "v")
    p.execute_command("NOSUCHCOMMAND")
    with pytest.raises(redis.exceptions.ResponseError):
        p.execute()
    assert r.get("k") is None  # EXECABORT: nothing ran
    # A command that runs on the worker thread is refused in MULTI.
    p = r.pipeline()
    p.execute_command("SAVE")
    with pytest.raises(redis.exceptions.ResponseError):
        p.execute()
    with pytest.raises(redis.exceptions.ResponseError, match="without MULTI"):
        r.execute_command("EXEC")


def test_watch_optimistic_locking(r):
    r.set("balance", 100)

    def spend(pipe):
        v = int(pipe.get("balance"))
        pipe.multi()
        pipe.set("balance", v - 10)

    assert r.transaction(spend, "balance") == [True]
    assert r.get("balance") == b"90"

    # Changed by another connection between WATCH and EXEC: EXEC fails.
    other = redis.Redis(connection_pool=r.connection_pool)
    with r.pipeline() as p:
        p.watch("balance")
        p.get("balance")
        other.set("balance", 0)
        p.multi()
        p.set("balance", 1000)
        with pytest.raises(redis.WatchError):
            p.execute()
    assert r.get("balance") == b"0"


def test_watch_sees_writes_through_the_library(daemon, r):
    # A process writing through libshmkv, not the socket, fails EXEC too.
    conf, _ = daemon
    lib = shmkv.open(conf)
    r.set("w", "1")
    with r.pipeline() as p:
        p.watch("w", "absent")
        lib["w"] = b"2"
        p.multi()
        p.set("w", "3")
        with pytest.raises(redis.WatchError):
            p.execute()
    with r.pipeline() as p:
        p.watch("absent")
        lib["absent"] = b"now here"
        p.multi()
        p.set("absent", "x")
        with pytest.raises(redis.WatchError):
            p.execute()
    # A watched key that expires counts as changed.
    r.set("exp", "v", px=100)
    with r.pipeline() as p:
        p.watch("exp")
        time.sleep(0.2)
        p.multi()
        p.set("exp", "again")
        with pytest.raises(redis.WatchError):
            p.execute()
    lib.close()


def test_concurrent_increments_by_watch(r):
    # Four threads, each with its own connection, add 50 each by WATCH
    # transactions: none is lost.
    r.set("c", 0)

    def work():
        c = redis.Redis(connection_pool=redis.ConnectionPool(
            connection_class=redis.UnixDomainSocketConnection,
            path=r.connection_pool.connection_kwargs["path"]))
        for _ in range(50):
            c.transaction(lambda p: (lambda v: (p.multi(), p.set("c", v + 1)))(
                int(p.get("c"))), "c")
        c.close()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert r.get("c") == b"200"


def test_getset_is_atomic(r):
    # Tokens passed by GETSET from many threads: each comes out once.
    r.set("token", "t0")
    seen = []
    lock = threading.Lock()

    def work(n):
        c = redis.Redis(unix_socket_path=r.connection_pool.connection_kwargs["path"])
        for i in range(200):
            old = c.getset("token", f"t{n}-{i}")
            with lock:
                seen.append(old)
        c.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen.append(r.get("token"))
    assert len(seen) == len(set(seen)) == 801


def test_scan_iter_and_keys(r):
    for i in range(1000):
        r.set(f"user:{i}", i)
        r.set(f"other:{i}", i)
    users = set(r.scan_iter(match="user:*", count=50))
    assert users == {f"user:{i}".encode() for i in range(1000)}
    assert len(list(r.scan_iter(_type="string"))) == 2000
    assert list(r.scan_iter(_type="hash")) == []


def test_millisecond_ttls(r):
    r.set("px", "v", px=300)
    assert 250 <= r.pttl("px") <= 300
    time.sleep(0.15)
    assert r.get("px") == b"v"
    time.sleep(0.25)
    assert r.get("px") is None
    r.set("k", "v")
    assert r.pexpire("k", 200)
    assert 150 <= r.pttl("k") <= 200
    at = int(time.time() * 1000) + 5000
    assert r.pexpireat("k", at)
    assert r.pexpiretime("k") == at
    assert r.expiretime("k") == at // 1000
    assert r.persist("k") and r.ttl("k") == -1
    assert r.psetex("ps", 250, "v") and 200 <= r.pttl("ps") <= 250
    assert r.set("ex", "v", pxat=int(time.time() * 1000) + 250)
    time.sleep(0.3)
    assert r.get("ex") is None
    # EXPIRE's conditions.
    r.set("e", "v")
    assert not r.expire("e", 100, xx=True)
    assert r.expire("e", 100, nx=True)
    assert not r.expire("e", 50, gt=True)
    assert r.expire("e", 50, lt=True)
    assert 49 <= r.ttl("e") <= 50


def test_string_commands(r):
    assert r.append("s", "ab") == 2 and r.append("s", "cd") == 4
    assert r.get("s") == b"abcd" and r.strlen("s") == 4
    assert r.getrange("s", 1, -2) == b"bc"
    assert r.setrange("s", 6, "xy") == 8
    assert r.get("s") == b"abcd\x00\x00xy"
    r.set("f", "10.5")
    assert r.incrbyfloat("f", 0.1) == pytest.approx(10.6)
    assert r.incrbyfloat("f", -10.6) == 0
    r.set("t", "v", ex=100)
    assert r.getex("t", px=5000) == b"v" and 4000 <= r.pttl("t") <= 5000
    assert r.getex("t", persist=True) == b"v" and r.ttl("t") == -1
    assert r.set("t", "w", get=True) == b"v"
    assert r.msetnx({"m1": 1, "m2": 2})
    assert not r.msetnx({"m2": 3, "m3": 3})
    assert r.get("m3") is None
    assert r.randomkey() is not None
    assert r.memory_usage("m1") > 0
    assert r.object("encoding", "m1") == b"raw"
    with pytest.raises(redis.exceptions.ResponseError, match="not a valid float"):
        r.incrbyfloat("s", 1)


def test_server_identity(daemon, r):
    _, sock = daemon
    info = r.info("server")
    assert info["redis_version"] == "7.0.0"
    assert "string and keyspace commands" in info["redis_compatibility"]
    with pytest.raises(redis.exceptions.ResponseError, match="NOPROTO"):
        r.execute_command("HELLO", 3)
    hello = r.execute_command("HELLO", 2)
    assert hello[hello.index(b"proto") + 1] == 2
    names = set(run("redis-cli", "-s", sock, "COMMAND", "LIST").split())
    assert {"multi", "exec", "watch", "getex", "scan"} <= names
    assert r.command_count() == len(names)
    docs = run("redis-cli", "-s", sock, "COMMAND", "DOCS", "GETDEL")
    assert docs.split()[0] == "getdel" and "summary" in docs


def run(*args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=60,
                          check=True, **kw).stdout


def test_redis_cli(daemon, r):
    _, sock = daemon
    for i in range(100):
        r.set(f"cli:{i}", "x" * i)
    keys = run("redis-cli", "-s", sock, "--scan", "--pattern", "cli:*").split()
    assert len(keys) == 100
    big = run("redis-cli", "-s", sock, "--bigkeys")
    assert "100 strings with" in big
    assert "Biggest string found" in big and "cli:99" in big
    piped = run("redis-cli", "-s", sock, "--pipe",
                input="".join(f"SET pipe:{i} {i}\r\n" for i in range(1000)))
    assert "errors: 0, replies: 1000" in piped
    assert r.get("pipe:999") == b"999"
    # --stat polls INFO; line-buffered, so that its lines survive the stop.
    proc = subprocess.Popen(["stdbuf", "-oL", "redis-cli", "-s", sock,
                             "--stat", "-i", "0.2"],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    lines = out.splitlines()
    assert "keys" in lines[1] and "requests" in lines[1]
    for line in lines[2:]:
        keys, mem, clients, blocked, requests = line.split()[:5]
        assert int(keys) == 1100 and int(clients) >= 1 and blocked == "0"


def test_redis_benchmark(daemon):
    _, sock = daemon
    out = run("redis-benchmark", "-s", sock, "-n", "2000", "-c", "4", "-q",
              "-t", "set,get,incr,mset")
    for test in ("SET", "GET", "INCR", "MSET"):
        assert f"{test}" in out and "requests per second" in out


def test_hiredis_client(daemon):
    client = os.environ.get("COMPAT_HIREDIS")
    if not client or not os.access(client, os.X_OK):
        pytest.fail("COMPAT_HIREDIS must name build/tests/compat_hiredis")
    _, sock = daemon
    assert "every check held" in run(client, sock)


def test_cache_primitives_on_the_socket(daemon, r):
    # Compare-and-set by version.
    value, version = r.execute_command("SHMKV.GETV", "cas")
    assert value is None
    assert r.execute_command("SHMKV.CAS", "cas", version, "first") == 1
    assert r.execute_command("SHMKV.CAS", "cas", version, "again") == 0
    value, version = r.execute_command("SHMKV.GETV", "cas")
    assert value == b"first"
    assert r.execute_command("SHMKV.CAS", "cas", version, "2", "PX", 500) == 1
    assert 400 <= r.pttl("cas") <= 500
    with pytest.raises(redis.exceptions.ResponseError, match="not a number"):
        r.execute_command("SHMKV.CAS", "cas", "x1", "v")
    # Leases: one connection fills; its end frees the lease.
    _, sock = daemon
    a = redis.Redis(unix_socket_path=sock)
    b = redis.Redis(unix_socket_path=sock)
    assert a.execute_command("SHMKV.LEASE", "fill", 10000) == 1
    assert b.execute_command("SHMKV.LEASE", "fill", 10000) == 0
    assert b.execute_command("SHMKV.RELEASE", "fill") == 0  # not b's
    a.close()
    a.connection_pool.disconnect()
    for _ in range(100):
        if b.execute_command("SHMKV.LEASE", "fill", 10000) == 1:
            break
        time.sleep(0.01)
    else:
        pytest.fail("a closed connection's lease was not given back")
    assert b.execute_command("SHMKV.RELEASE", "fill") == 1
    b.close()
    # Stale values, while still in memory: on a daemon whose expiry sweep
    # does not run meanwhile (it would reclaim the value at any time).
    from conftest import start_shmkvd, stop_shmkvd
    proc, d, key, _, sock2, _ = start_shmkvd(
        extra="[daemon]\nhousekeeping_interval_ms = 60000\n")
    try:
        q = redis.Redis(unix_socket_path=sock2)
        q.set("st", "old", px=50)
        time.sleep(0.1)
        assert q.get("st") is None
        value, stale = q.execute_command("SHMKV.GETSTALE", "st")
        assert value == b"old" and stale >= 50
        assert q.execute_command("SHMKV.GETSTALE", "never") is None
        q.close()
    finally:
        stop_shmkvd(proc, d, key)
    # SETF says how many live entries it evicted (none here).
    assert r.execute_command("SHMKV.SETF", "f", "v", "EX", 10) == 0


# ---- monitoring ----

def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def monitored():
    from conftest import start_shmkvd, stop_shmkvd
    port = free_port()
    proc, d, key, conf, sock, logpath = start_shmkvd(
        extra=f"[daemon]\nslowlog_slower_than = 0\nslowlog_max_len = 4\n"
              f"housekeeping_interval_ms = 50\n"
              f"[metrics]\nlisten = 127.0.0.1:{port}\n",
        size="1M", eviction="lru")
    try:
        if proc.poll() is not None:
            pytest.fail(open(logpath).read())
        yield f"http://127.0.0.1:{port}/metrics", sock, logpath
    finally:
        stop_shmkvd(proc, d, key)


def scrape(url):
    from prometheus_client.parser import text_string_to_metric_families
    text = run("curl", "-sf", url)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # Every line is a comment or a sample of a declared family.
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or \
            line.split("{")[0].split(" ")[0].startswith("shmkv_"), line
    return families


def sample(families, name, **labels):
    for fam in families.values():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v
                                      for k, v in labels.items()):
                return s.value
    raise KeyError(name)


def test_metrics_endpoint(monitored):
    url, sock, logpath = monitored
    r = redis.Redis(unix_socket_path=sock)
    for i in range(50):
        r.set(f"m{i}", "v")
    for i in range(20):
        r.get(f"m{i}")
    r.get("absent")
    with pytest.raises(redis.exceptions.ResponseError):
        r.execute_command("INCRBY", "m0", "x")
    f = scrape(url)
    assert sample(f, "shmkv_up") == 1
    assert sample(f, "shmkv_store_entries") == 50
    assert sample(f, "shmkv_commands_total", command="set") == 50
    assert sample(f, "shmkv_commands_total", command="get") == 21
    assert sample(f, "shmkv_hits_total") >= 20
    assert sample(f, "shmkv_misses_total") >= 1
    assert sample(f, "shmkv_command_duration_seconds_count",
                  command="set") == 50
    assert f["shmkv_command_duration_seconds"].type == "histogram"
    assert f["shmkv_memory_used_bytes"].type == "gauge"
    assert f["shmkv_evictions"].type == "counter"  # shmkv_evictions_total
    assert sample(f, "shmkv_command_errors_total", command="incrby") == 1
    assert sample(f, "shmkv_connections_open") >= 1
    assert sample(f, "shmkv_connections_total") >= 1
    # Other paths and methods.
    code = run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
               url.replace("/metrics", "/other"))
    assert code == "404"
    code = run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
               "-X", "POST", url)
    assert code == "405"
    r.close()


def test_commandstats_latency_slowlog(monitored):
    _, sock, _ = monitored
    r = redis.Redis(unix_socket_path=sock)
    for i in range(10):
        r.set(f"k{i}", i)
    stats = r.info("commandstats")
    assert stats["cmdstat_set"]["calls"] == 10
    assert stats["cmdstat_set"]["failed_calls"] == 0
    assert "cmdstat_set" not in r.info()  # not in the default sections
    lat = r.info("latencystats")
    p50 = lat["latency_percentiles_usec_set"]["p50"]
    assert 0 < p50 <= lat["latency_percentiles_usec_set"]["p99.9"]
    # slowlog_slower_than = 0 logs every command; slowlog_max_len = 4.
    assert r.slowlog_len() == 4
    log = r.slowlog_get(2)
    assert len(log) == 2 and log[0]["id"] > log[1]["id"]
    r.execute_command("SLOWLOG", "RESET")
    assert r.slowlog_len() <= 1  # the RESET itself may be there
    r.close()


def test_pressure_is_logged(monitored):
    # An lru store of 1 MiB overfilled: the log says it is full and that
    # it evicts its working set.
    _, sock, logpath = monitored
    r = redis.Redis(unix_socket_path=sock)
    value = b"x" * 2000
    deadline = time.time() + 10
    while time.time() < deadline:
        p = r.pipeline(transaction=False)
        for i in range(2000):
            p.set(f"fill{time.time_ns()}{i}", value)
        p.execute()
        text = open(logpath).read()
        if "full" in text and "evicts" in text:
            break
    text = open(logpath).read()
    assert "% full" in text, text
    assert "live keys a second" in text, text
    r.close()


def test_shmkvctl_json(daemon, r):
    import json
    conf, _ = daemon
    ctl = os.path.join(os.path.dirname(
        os.environ.get("SHMKVD", "build/shmkvd")), "shmkvctl")

    def j(*args, code=0):
        p = subprocess.run([ctl, "-c", conf, "--json", *args],
                           capture_output=True, timeout=60)
        assert p.returncode == code, (args, p.stdout, p.stderr)
        return json.loads(p.stdout)

    assert j("set", "k", 'a"b\\c') == {"result": "OK"}
    assert j("get", "k") == {"key": "k", "found": True, "value": 'a"b\\c'}
    r.set("bin", b"\x00\x01\xff")
    got = j("get", "bin")["value"]
    assert got.encode("latin-1") == b"\x00\x01\xff"  # bytes round-trip
    assert j("get", "absent", code=1) == {"key": "absent", "found": False}
    assert j("mget", "k", "absent", code=1)[1] == {"key": "absent",
                                                    "found": False}
    assert sorted(j("keys")) == ["bin", "k"]
    assert j("ttl", "k") == {"key": "k", "found": True, "ttl": None}
    assert j("expire", "k", "100") == {"key": "k", "found": True}
    assert 99 <= j("ttl", "k")["ttl"] <= 100
    assert j("incr", "n", "5") == {"result": 5}
    assert j("del", "n", "absent") == {"deleted": 1}
    assert j("status")["entries"] == 2
    assert j("stats")["entries"] == 2
    assert j("check")["result"].startswith("ok")
    assert j("save", code=3)["error"]  # no snapshot configured
    assert j("bogus", code=2)["exit"] == 2
