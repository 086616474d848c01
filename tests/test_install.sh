#!/bin/sh
# `make install` into a staging directory: every file lands, an existing
# config is kept, the unit passes `systemd-analyze verify`, and shmkv.pc
# builds a client.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-build}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cd "$top"
make -s BUILD="$build" DESTDIR="$stage" PREFIX=/usr/local install >/dev/null
for f in usr/local/lib/libshmkv.a usr/local/lib/libshmkv.so.0 \
         usr/local/include/shmkv.h usr/local/lib/pkgconfig/shmkv.pc \
         usr/local/lib/pkgconfig/shmkv-static.pc \
         usr/local/sbin/shmkvd usr/local/bin/shmkvctl etc/shmkvd/shmkvd.conf \
         lib/systemd/system/shmkvd.service usr/lib/sysusers.d/shmkv.conf \
         usr/local/share/man/man1/shmkvctl.1 usr/local/share/man/man3/libshmkv.3 \
         usr/local/share/man/man5/shmkvd.conf.5 \
         usr/local/share/man/man8/shmkvd.8 usr/local/share/doc/shmkv/LICENSE \
         usr/local/share/doc/shmkv/CHANGELOG.md; do
    [ -e "$stage/$f" ] || { echo "install: missing $f"; exit 1; }
done
# The installed config names the service's socket, a snapshot under its
# state directory (so that a restart keeps the data), the shmkv group as
# the store's readers, and no writers but the daemon's user.
for want in 'socket = /run/shmkvd/shmkvd.sock' \
            'snapshot = /var/lib/shmkvd/dump.shmkv' 'readers = shmkv' \
            'writers = none'; do
    grep -qx "$want" "$stage/etc/shmkvd/shmkvd.conf" ||
        { echo "install: the installed config lacks '$want'"; exit 1; }
done
# The shmkv group comes from systemd-sysusers (shmkv.sysusers) when the
# package is installed; without it here, check the rest of the config.
check="$stage/etc/shmkvd/shmkvd.conf"
if ! getent group shmkv >/dev/null; then
    sed 's|^readers = shmkv$|readers = none|' "$check" >"$stage/check.conf"
    check="$stage/check.conf"
fi
"$stage/usr/local/sbin/shmkvd" --check-config -c "$check" >"$stage/check.out" 2>&1 ||
    { cat "$stage/check.out"; echo "installed config does not check"; exit 1; }

# The man pages format without a warning, and shmkvd.conf(5) documents
# every key the sample config has.
if command -v groff >/dev/null; then
    for m in "$stage"/usr/local/share/man/man*/*; do
        out=$(LC_ALL=C groff -man -Tutf8 -ww -z "$m" 2>&1) || true
        [ -z "$out" ] || { echo "$out"; echo "install: $m does not format cleanly"; exit 1; }
    done
else
    echo "groff not found: man pages not formatted"
fi
for k in $(sed -n 's/^\([a-z_]*\) *=.*/\1/p' conf/shmkvd.conf); do
    grep -q "^\.BR $k " "$stage/usr/local/share/man/man5/shmkvd.conf.5" ||
        { echo "install: shmkvd.conf(5) does not document $k"; exit 1; }
done

# A second install keeps the operator's config.
echo "; edited by the operator" >>"$stage/etc/shmkvd/shmkvd.conf"
make -s BUILD="$build" DESTDIR="$stage" PREFIX=/usr/local install >/dev/null
grep -q "edited by the operator" "$stage/etc/shmkvd/shmkvd.conf" ||
    { echo "install overwrote an existing config"; exit 1; }

# The unit, with ExecStart pointing at the staged binary.
if command -v systemd-analyze >/dev/null; then
    mkdir -p "$stage/verify"
    sed "s|/usr/local/sbin/shmkvd|$stage/usr/local/sbin/shmkvd|" \
        "$stage/lib/systemd/system/shmkvd.service" >"$stage/verify/shmkvd.service"
    if ! out=$(systemd-analyze verify "$stage/verify/shmkvd.service" 2>&1); then
        echo "$out"
        echo "systemd-analyze verify failed"
        exit 1
    fi
    [ -z "$out" ] || { echo "$out"; echo "systemd-analyze verify warned"; exit 1; }
else
    echo "systemd-analyze not found: unit not verified"
fi

# pkg-config finds the library and a client builds against it.
cat >"$stage/client.c" <<'EOC'
#include <shmkv.h>
int main(void) { return shmkv_strerror(SHMKV_ENOTFOUND)[0] ? 0 : 1; }
EOC
PKG_CONFIG_SYSROOT_DIR="$stage" PKG_CONFIG_PATH="$stage/usr/local/lib/pkgconfig" \
    ${CC:-cc} ${EXAMPLE_CFLAGS:-} "$stage/client.c" -o "$stage/client" \
    $(PKG_CONFIG_SYSROOT_DIR="$stage" PKG_CONFIG_PATH="$stage/usr/local/lib/pkgconfig" \
      pkg-config --cflags --libs --static shmkv)
LD_LIBRARY_PATH="$stage/usr/local/lib" "$stage/client"
# shmkv-static links libshmkv.a: the program needs no libshmkv.so, with or
# without --static.
for flag in --static ""; do
    ${CC:-cc} ${EXAMPLE_CFLAGS:-} "$stage/client.c" -o "$stage/client-static" \
        $(PKG_CONFIG_SYSROOT_DIR="$stage" PKG_CONFIG_PATH="$stage/usr/local/lib/pkgconfig" \
          pkg-config --cflags --libs $flag shmkv-static)
    if readelf -d "$stage/client-static" | grep -q 'libshmkv'; then
        echo "install: shmkv-static linked the shared library"; exit 1
    fi
    "$stage/client-static"
done
echo "install: 1 passed, 0 failed"
