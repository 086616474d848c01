#!/bin/sh
# Runs each test program, then fails if the run left System V segments
# behind (every test removes what it creates, also when it fails).
#
# Other programs on the machine may create segments meanwhile, so a
# segment counts as leaked only if it is new and either has a key in the
# tests' range (0x5b......) or is a private one (a store's data segment)
# whose creator has exited: a live store's creator is still running.
segments() { ipcs -m 2>/dev/null | awk '$1 ~ /^0x/ {print $2, $1}'; }
creator() { ipcs -m -p 2>/dev/null | awk -v id="$1" '$1 == id {print $3}'; }

before=$(segments | awk '{print $1}')
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
if [ -n "$leaked" ]; then
    echo "leaked System V segments (shmid):$leaked"
    ipcs -m -p
    failed=$((failed + 1))
fi
echo "test programs: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
