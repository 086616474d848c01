#!/bin/sh
# Stopping shmkvd when the shutdown snapshot cannot be written: the daemon
# exits 1 and leaves the store in place, closed, with its data; the next
# start adopts it, and a stop without saving then removes everything.
set -u
build=${BUILD:-build}
dir=$(mktemp -d /tmp/shmkv-shutdown.XXXXXX)
key=$(printf '0x5b%04xf0' $(($$ & 0xffff)))
# Tell tests/run.sh what this run makes (see there).
record() { [ -n "${SHMKV_TEST_RECORD:-}" ] && echo "$*" >>"$SHMKV_TEST_RECORD"; }
record key "$key"
sock=$dir/s.sock
pid=
fail() { echo "shutdown: $*"; [ -f "$dir/log" ] && cat "$dir/log"; exit 1; }
segment_exists() { ipcs -m | awk '{print $1}' | grep -qi "^$key$"; }
start() {
    "$build/shmkvd" --foreground -c "$dir/shmkvd.conf" >>"$dir/log" 2>&1 &
    pid=$!
    record pid "$pid"
    for _ in $(seq 100); do [ -S "$sock" ] && return 0; sleep 0.05; done
    fail "shmkvd did not start"
}
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    if segment_exists; then   # adopt what was left, then remove it
        start
        redis-cli -s "$sock" shutdown nosave >/dev/null 2>&1
        wait "$pid" 2>/dev/null
    fi
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

cat >"$dir/shmkvd.conf" <<EOC
[store]
key = $key
size = 4M
mode = 0600
[control]
socket = $sock
[persistence]
snapshot = $dir/missing-dir/dump.shmkv
save_on_shutdown = yes
EOC
start
[ "$(redis-cli -s "$sock" set kept yes)" = OK ] || fail "set failed"
kill -TERM "$pid"
wait "$pid"; rc=$?; pid=
[ "$rc" = 1 ] || fail "exit status $rc after a failed save, want 1"
segment_exists || fail "a failed save removed the store"
grep -q "left in place" "$dir/log" || fail "no message about the kept store"

start
grep -q "adopted the store" "$dir/log" || fail "the next start did not adopt"
[ "$(redis-cli -s "$sock" get kept)" = yes ] || fail "the adopted store lost its data"
redis-cli -s "$sock" shutdown nosave >/dev/null 2>&1
wait "$pid"; rc=$?; pid=
[ "$rc" = 0 ] || fail "exit status $rc after SHUTDOWN NOSAVE"
segment_exists && fail "SHUTDOWN NOSAVE left the store"
[ -e "$sock" ] && fail "the socket was left"
echo "shutdown: 1 passed, 0 failed"
