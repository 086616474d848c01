#!/bin/sh
# Compiles the README's example program exactly as printed (only its store
# key is made unique to this run) and checks that it prints what the README
# says it prints.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-build}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

key=$(printf '0x5d%06x' $(($$ & 0xffffff)))
awk '/^<!-- example:begin -->/{f=1;next} /^<!-- example:end -->/{f=0} f' "$top/README.md" |
    sed -e '/^```/d' -e "s/0x5eed0042/$key/g" >"$work/example.c"
awk '/^<!-- output:begin -->/{f=1;next} /^<!-- output:end -->/{f=0} f' "$top/README.md" |
    sed -e '/^```/d' >"$work/expected.txt"
[ -s "$work/example.c" ] || { echo "no example found in README.md"; exit 1; }

${CC:-cc} -std=c11 -Wall -Wextra -Werror ${EXAMPLE_CFLAGS:-} -I"$top/include" \
    "$work/example.c" "$top/$build/libshmkv.a" \
    $(pkg-config --libs libxxhash inih) -lpthread -o "$work/example"
"$work/example" >"$work/actual.txt"
if ! diff -u "$work/expected.txt" "$work/actual.txt"; then
    echo "README example output differs"
    exit 1
fi
echo "README example: 1 passed, 0 failed"
