"""Fixtures: a store per test at a key unique to this process, removed
afterwards whatever happens; each key and this pid are recorded for
tests/run.sh (SHMKV_TEST_RECORD), which fails a run that leaves one."""
import itertools
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

import shmkv

_counter = itertools.count()
ROOT = pathlib.Path(__file__).resolve().parents[3]


def record(line):
    path = os.environ.get("SHMKV_TEST_RECORD")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def unique_key():
    key = 0x5B000000 | (os.getpid() & 0xFFFF) << 8 | (next(_counter) + 0x80) & 0xFF
    record(f"key 0x{key:08x}")
    record(f"pid {os.getpid()}")
    return f"key:0x{key:08x}"


@pytest.fixture
def key():
    k = unique_key()
    yield k
    try:
        shmkv.remove(k)
    except shmkv.NoStore:
        pass


@pytest.fixture
def store(key):
    s = shmkv.create(key, size=8 << 20)
    yield s
    if not s.closed:
        s.destroy()


def start_shmkvd(extra="", size="8M", eviction="noeviction", env=None):
    """Starts a shmkvd of its own; returns (proc, dir, key, conf, sock, log
    path). extra: more config lines, sections included."""
    shmkvd = os.environ.get("SHMKVD", str(ROOT / "build" / "shmkvd"))
    if not os.access(shmkvd, os.X_OK):
        pytest.skip(f"no shmkvd at {shmkvd}: build it first")
    d = tempfile.mkdtemp(prefix="shmkv-py-")
    key = unique_key()
    conf = os.path.join(d, "shmkvd.conf")
    sock = os.path.join(d, "shmkvd.sock")
    logpath = os.path.join(d, "shmkvd.log")
    with open(conf, "w") as f:
        f.write(f"[store]\nkey = {key}\nsize = {size}\nmode = 0600\n"
                f"eviction = {eviction}\n"
                f"[control]\nsocket = {sock}\n"
                "[persistence]\nsave_on_shutdown = no\n" + extra)
    log = open(logpath, "w")
    proc = subprocess.Popen([shmkvd, "--foreground", "-c", conf], stderr=log,
                            env=None if env is None else {**os.environ, **env})
    log.close()
    record(f"pid {proc.pid}")
    # Until it accepts: the socket's file exists from bind(), before
    # listen(), and a connection between the two is refused.
    for _ in range(200):
        if proc.poll() is not None:
            break
        if os.path.exists(sock):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(sock)
                break
            except OSError:
                pass
            finally:
                probe.close()
        time.sleep(0.02)
    return proc, d, key, conf, sock, logpath


def stop_shmkvd(proc, d, key):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    shutil.rmtree(d, ignore_errors=True)
    try:
        shmkv.remove(key)
    except shmkv.NoStore:
        pass


@pytest.fixture
def daemon():
    proc, d, key, conf, sock, logpath = start_shmkvd()
    try:
        if not os.path.exists(sock):
            pytest.fail("shmkvd did not start: " + open(logpath).read())
        yield conf, sock
    finally:
        stop_shmkvd(proc, d, key)
