#!/bin/sh
# Runs each test program, then fails if the run left System V segments or
# semaphore sets behind (every test removes what it creates, also when it
# fails).
#
# Other programs on the machine may create segments meanwhile, so a
# segment counts as leaked only if it is new and either has a key in the
# tests' range (0x5b......) or is a private one (a store's data segment)
# whose creator has exited: a live store's creator is still running.
segments() { ipcs -m 2>/dev/null | awk '$1 ~ /^0x/ {print $2, $1}'; }
semsets() { ipcs -s 2>/dev/null | awk '$1 ~ /^0x/ {print $2}'; }
creator() { ipcs -m -p 2>/dev/null | awk -v id="$1" '$1 == id {print $3}'; }

before=$(segments | awk '{print $1}')
sems_before=$(semsets)
passed=0
failed=0
for t in "$@"; do
    echo "== $t"
    case "$t" in
    *.sh) cmd="sh $t" ;;
    *) cmd="$t" ;;
    esac
    if $cmd; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $t"; fi
done
leaked=""
for entry in $(segments | tr ' ' ':'); do
    id=${entry%%:*}
    key=${entry#*:}
    echo "$before" | grep -qx "$id" && continue
    case "$key" in
    0x5b*) leaked="$leaked $id" ;;
    0x00000000)
        cpid=$(creator "$id")
        [ -n "$cpid" ] && ! kill -0 "$cpid" 2>/dev/null && leaked="$leaked $id" ;;
    esac
done
# A store's liveness semaphores go with its segments. They name no
# creator, so they are counted only when no segment made during the run is
# left (no store of this run, or of another one running beside it, lives):
# then every new set is a leak.
new_segments=""
for id in $(segments | awk '{print $1}'); do
    echo "$before" | grep -qx "$id" || new_segments="$new_segments $id"
done
if [ -z "$new_segments" ]; then
    for id in $(semsets); do
        echo "$sems_before" | grep -qx "$id" || leaked="$leaked sem:$id"
    done
fi
if [ -n "$leaked" ]; then
    echo "leaked System V segments (shmid) or semaphore sets (sem:semid):$leaked"
    ipcs -m -p
    ipcs -s
    failed=$((failed + 1))
fi
echo "test programs: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
