#!/bin/sh
# Runs each test program, then fails if the run left System V segments or
# semaphore sets behind (every test removes what it creates, also when it
# fails).
#
# Other runs of the tests, and other programs, may share the machine and
# create segments meanwhile: only what this run made counts. The tests
# record in $SHMKV_TEST_RECORD every key they hand out and every process
# that creates stores (testutil.h's test_record; the shell tests likewise).
# A segment is this run's if it is new and has a recorded key, or is a
# private one (a store's data segment) made by a recorded process that has
# exited; a semaphore set is this run's if it is new and a recorded process
# last changed one of its semaphores (a store's liveness set: its creator
# raises the owner's semaphore).
segments() { ipcs -m 2>/dev/null | awk '$1 ~ /^0x/ {print $2, $1}'; }
semsets() { ipcs -s 2>/dev/null | awk '$1 ~ /^0x/ {print $2}'; }
creator() { ipcs -m -p 2>/dev/null | awk -v id="$1" '$1 == id {print $3}'; }
# The pids that last operated on each semaphore of set $1.
sem_pids() { ipcs -s -i "$1" 2>/dev/null | awk '$1 ~ /^[0-9]+$/ && NF >= 5 {print $NF}'; }

record=$(mktemp /tmp/shmkv-test-record.XXXXXX)
trap 'rm -f "$record"' EXIT
export SHMKV_TEST_RECORD="$record"
recorded() { grep -qx "$1 $2" "$record"; }

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
    if [ "$key" = 0x00000000 ]; then
        cpid=$(creator "$id")
        [ -n "$cpid" ] && recorded pid "$cpid" && ! kill -0 "$cpid" 2>/dev/null &&
            leaked="$leaked $id"
    elif recorded key "$key"; then
        leaked="$leaked $id"
    fi
done
for id in $(semsets); do
    echo "$sems_before" | grep -qx "$id" && continue
    for p in $(sem_pids "$id" | sort -u); do
        if [ "$p" != 0 ] && recorded pid "$p"; then
            leaked="$leaked sem:$id"
            break
        fi
    done
done
if [ -n "$leaked" ]; then
    echo "leaked System V segments (shmid) or semaphore sets (sem:semid):$leaked"
    ipcs -m -p
    ipcs -s
    failed=$((failed + 1))
fi
echo "test programs: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
