"""Fixtures: a store per test at a key unique to this process, removed
afterwards whatever happens; each key and this pid are recorded for
tests/run.sh (SHMKV_TEST_RECORD), which fails a run that leaves one."""
import itertools
import os

import pytest

import shmkv

_counter = itertools.count()


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
