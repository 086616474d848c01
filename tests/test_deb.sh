#!/bin/sh
# `make deb`: the three packages build from debian/, hold what they should
# where Debian puts it, declare their dependencies, the config as a
# conffile and maintainer scripts that create the shmkv user before the
# service starts; and what they ship runs: the daemon checks its installed
# config, the unit verifies, and a client builds against the -dev package
# and runs on the library package. (Installing them on this machine is
# left to CI, tests/deb_install.sh, which may change the system.)
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-build}
cd "$top"
if ! command -v dpkg-buildpackage >/dev/null || ! command -v dh >/dev/null; then
    echo "deb: SKIPPED: dpkg-buildpackage or debhelper missing (make deps installs them as root)"
    exit 0
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# The packages are built with Debian's flags, not those of the make that
# runs this test (a sanitizer build passes its CFLAGS down in MAKEFLAGS).
env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u CFLAGS -u LDFLAGS \
    make -s BUILD="$build" deb >"$stage/build.log" 2>&1 ||
    { tail -30 "$stage/build.log"; echo "deb: make deb failed"; exit 1; }
version=$(sed -n 's/.*SHMKV_VERSION_STRING "\(.*\)"/\1/p' include/shmkv.h)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
fail() { echo "deb: $*"; exit 1; }

for p in shmkvd libshmkv0 libshmkv-dev; do
    deb="$build/deb/${p}_${version}_${arch}.deb"
    [ -f "$deb" ] || fail "no $deb"
    dpkg-deb -x "$deb" "$stage/root"
    dpkg-deb -c "$deb" | awk '{print $6}' >"$stage/$p.files"
done
expect() { # package, files it must hold
    p=$1
    shift
    for f in "$@"; do
        grep -qx "./$f" "$stage/$p.files" || fail "$p lacks /$f"
    done
}
expect shmkvd usr/sbin/shmkvd usr/bin/shmkvctl etc/shmkvd/shmkvd.conf \
    lib/systemd/system/shmkvd.service usr/lib/sysusers.d/shmkvd.conf \
    usr/share/man/man8/shmkvd.8.gz usr/share/man/man1/shmkvctl.1.gz \
    usr/share/man/man5/shmkvd.conf.5.gz usr/share/doc/shmkvd/README.md \
    usr/share/doc/shmkvd/copyright
expect libshmkv0 "usr/lib/$multiarch/libshmkv.so.0"
expect libshmkv-dev usr/include/shmkv.h "usr/lib/$multiarch/libshmkv.a" \
    "usr/lib/$multiarch/libshmkv.so" "usr/lib/$multiarch/pkgconfig/shmkv.pc"
# Nothing of the library or the daemon twice.
! grep -q 'libshmkv' "$stage/shmkvd.files" || fail "shmkvd ships the library"

# Dependencies: the daemon's libraries (from dh_shlibdeps), systemd for
# sysusers; -dev on the library of the same version.
deps=$(dpkg-deb -f "$build/deb/shmkvd_${version}_${arch}.deb" Depends)
for d in systemd libevent libinih1; do
    echo "$deps" | grep -q "$d" || fail "shmkvd does not depend on $d: $deps"
done
dpkg-deb -f "$build/deb/libshmkv-dev_${version}_${arch}.deb" Depends |
    grep -q "libshmkv0 (= $version)" || fail "libshmkv-dev does not depend on libshmkv0 (= $version)"

# The config is a conffile (an upgrade keeps the operator's edits); the
# postinst makes the shmkv user and group before it starts the service.
dpkg-deb -e "$build/deb/shmkvd_${version}_${arch}.deb" "$stage/control"
grep -qx /etc/shmkvd/shmkvd.conf "$stage/control/conffiles" || fail "the config is not a conffile"
users=$(grep -n 'systemd-sysusers' "$stage/control/postinst" | head -1 | cut -d: -f1)
start=$(grep -n 'deb-systemd-invoke' "$stage/control/postinst" | head -1 | cut -d: -f1)
[ -n "$users" ] && [ -n "$start" ] && [ "$users" -lt "$start" ] ||
    fail "postinst does not create the user before starting the service"
grep -q '^u shmkv ' "$stage/root/usr/lib/sysusers.d/shmkvd.conf" || fail "no shmkv user in sysusers"

# The unit starts the packaged daemon on the packaged config.
grep -qx 'ExecStart=/usr/sbin/shmkvd --foreground -c /etc/shmkvd/shmkvd.conf' \
    "$stage/root/lib/systemd/system/shmkvd.service" || fail "the unit's ExecStart is wrong"
if command -v systemd-analyze >/dev/null; then
    sed "s|/usr/sbin/shmkvd|$stage/root/usr/sbin/shmkvd|" \
        "$stage/root/lib/systemd/system/shmkvd.service" >"$stage/shmkvd.service"
    out=$(systemd-analyze verify "$stage/shmkvd.service" 2>&1) || fail "unit: $out"
    [ -z "$out" ] || fail "unit: $out"
fi

# The daemon checks its config (the shmkv group exists once installed).
conf="$stage/root/etc/shmkvd/shmkvd.conf"
getent group shmkv >/dev/null || { sed 's|^readers = shmkv$|readers = none|' "$conf" >"$stage/check.conf" && conf="$stage/check.conf"; }
"$stage/root/usr/sbin/shmkvd" --check-config -c "$conf" >"$stage/check.out" 2>&1 ||
    { cat "$stage/check.out"; fail "the packaged config does not check"; }
layout=$(sed -n "s/.*SHMKV_LAYOUT_VERSION \([0-9]*\)u.*/\1/p" include/shmkv.h)
"$stage/root/usr/sbin/shmkvd" --version | grep -qx "shmkvd $version (store layout $layout)" ||
    fail "shmkvd --version: $("$stage/root/usr/sbin/shmkvd" --version)"

# A client builds with the -dev package's pkg-config file and runs on the
# library package.
cat >"$stage/client.c" <<'EOC'
#include <shmkv.h>
int main(void) { return shmkv_strerror(SHMKV_ENOTFOUND)[0] ? 0 : 1; }
EOC
pc="$stage/root/usr/lib/$multiarch/pkgconfig"
${CC:-cc} "$stage/client.c" -o "$stage/client" \
    $(PKG_CONFIG_SYSROOT_DIR="$stage/root" PKG_CONFIG_PATH="$pc" pkg-config --cflags --libs shmkv)
LD_LIBRARY_PATH="$stage/root/usr/lib/$multiarch" "$stage/client" || fail "the client does not run"
LD_LIBRARY_PATH="$stage/root/usr/lib/$multiarch" ldd "$stage/client" |
    grep -q "$stage/root/usr/lib/$multiarch/libshmkv.so.0" || fail "the client did not link libshmkv.so.0"
echo "deb: 1 passed, 0 failed"
