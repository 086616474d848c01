#!/bin/sh
# The benchmark runs end to end at a small size (no figure is judged here:
# timings on a shared machine are reports, not checks) and leaves a
# consistent store behind each measurement.
set -eu
build=${BUILD:-build}
out=$("$build/shmkv-bench" --quick 2>&1) || { echo "$out"; echo "shmkv-bench failed"; exit 1; }
echo "$out" | grep -q "shmkv_check after the run: consistent" ||
    { echo "$out"; echo "shmkv-bench: store not consistent after the run"; exit 1; }
if "$build/shmkv-bench" -n 0 >/dev/null 2>&1; then
    echo "shmkv-bench accepted -n 0"; exit 1
fi
echo "bench: 1 passed, 0 failed"
