#!/bin/sh
# Builds the Python package (bindings/python) into a virtual environment of
# Debian's python3, with `pip install` as a user would, and runs its pytest
# suite: the API, zero-copy lifetimes, errors, threads, fork and spawn, a
# store made by shmkvd, and the README's Python example as printed.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-build}
py=${PYTHON:-/usr/bin/python3}
venv="$top/$build/pyenv"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$py" -m venv --system-site-packages "$venv"
# From scratch: setuptools rebuilds a source only when it is newer than its
# object, not when a header it includes or the compiler flags changed.
rm -rf "$top/bindings/python/build"
# Without the build's CFLAGS: a sanitizer build's (make test-sanitize)
# would make an extension Debian's python cannot load (the ASan runtime
# must come first); the daemon the tests start is the sanitized one.
env -u CFLAGS -u LDFLAGS "$venv/bin/pip" install --quiet --disable-pip-version-check \
    --no-build-isolation --no-deps "$top/bindings/python"
# From elsewhere than the sources, so that the installed package is the one
# imported.
cd "$work"
SHMKVD="$top/$build/shmkvd" COMPAT_HIREDIS="$top/$build/tests/compat_hiredis" \
    "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    "$top/bindings/python/tests"
# The mirror's benchmark still runs (a short run; make mirror-bench for
# the real one).
if command -v redis-server >/dev/null; then
    "$venv/bin/python" "$top/bindings/python/bench_mirror.py" --quick \
        --shmkvd "$top/$build/shmkvd" >/dev/null
fi
echo "python: passed"
