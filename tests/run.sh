#!/bin/sh
# Runs each test program, then fails if the run left System V segments
# behind (every test removes what it creates, also when it fails).
count_segments() { ipcs -m 2>/dev/null | awk '$1 ~ /^0x/ {n++} END {print n+0}'; }

before=$(count_segments)
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
after=$(count_segments)
if [ "$after" -gt "$before" ]; then
    echo "leaked System V segments: $before before the tests, $after after:"
    ipcs -m -p
    failed=$((failed + 1))
fi
echo "test programs: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
