"""Builds shmkv._shmkv, the C extension, against libshmkv.

From a checkout of the shmkv repository the extension is compiled with
libshmkv's own sources (../../client), so that it needs nothing installed
but the libraries libshmkv uses (libxxhash, libinih). Elsewhere it links
the installed libshmkv that pkg-config finds (the libshmkv-dev package).
"""
import glob
import os
import shutil
import subprocess

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
CLIENT = os.path.join(ROOT, "client")


def pkg_config(*args):
    out = subprocess.run(["pkg-config", *args, "shmkv"], check=True,
                         capture_output=True, text=True).stdout
    return out.split()


if os.path.isfile(os.path.join(CLIENT, "store.c")):
    # A copy of the sources under build/, so that their objects stay there.
    copy = os.path.join("build", "libshmkv-src")
    os.makedirs(copy, exist_ok=True)
    for path in glob.glob(os.path.join(CLIENT, "*.[ch]")) + glob.glob(
            os.path.join(ROOT, "include", "*.h")):
        shutil.copy2(path, copy)
    extension = Extension(
        "shmkv._shmkv",
        sources=["shmkv/_shmkv.c"] + sorted(
            glob.glob(os.path.join(copy, "*.c"))),
        include_dirs=[copy],
        define_macros=[("_GNU_SOURCE", None)],
        extra_compile_args=["-std=gnu11", "-O2"],
        libraries=["xxhash", "inih", "pthread"],
    )
else:
    cflags = pkg_config("--cflags")
    libs = pkg_config("--libs")
    extension = Extension(
        "shmkv._shmkv",
        sources=["shmkv/_shmkv.c"],
        include_dirs=[f[2:] for f in cflags if f.startswith("-I")],
        library_dirs=[f[2:] for f in libs if f.startswith("-L")],
        libraries=[f[2:] for f in libs if f.startswith("-l")],
    )

setup(ext_modules=[extension])
