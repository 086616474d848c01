#!/bin/sh
# CI only (it changes the machine: packages, the shmkv user, /etc/shmkvd):
# installs the packages `make deb` built, runs the packaged daemon as the
# packaged user on the packaged config, as its unit would, round-trips a
# value through shmkvctl and a client built with pkg-config, shuts it down
# (the snapshot lands in /var/lib/shmkvd), then purges the packages.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-build}
cd "$top"
[ "$(id -u)" = 0 ] || { echo "deb install: SKIPPED: needs root"; exit 0; }
version=$(sed -n 's/.*SHMKV_VERSION_STRING "\(.*\)"/\1/p' include/shmkv.h)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
ls "$build"/deb/shmkvd_"${version}"_"$arch".deb >/dev/null 2>&1 ||
    env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s BUILD="$build" deb >/dev/null
work=$(mktemp -d)
pid=
cleanup() {
    [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq shmkvd libshmkv0 libshmkv-dev >/dev/null 2>&1 || true
    rm -rf "$work" /run/shmkvd /var/lib/shmkvd
}
trap cleanup EXIT
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    "./$build/deb/shmkvd_${version}_${arch}.deb" \
    "./$build/deb/libshmkv0_${version}_${arch}.deb" \
    "./$build/deb/libshmkv-dev_${version}_${arch}.deb" >/dev/null
getent passwd shmkv >/dev/null || { echo "deb install: no shmkv user"; exit 1; }
# What the unit's RuntimeDirectory= and StateDirectory= would make.
install -d -o shmkv -g shmkv -m 0755 /run/shmkvd
install -d -o shmkv -g shmkv -m 0750 /var/lib/shmkvd
runuser -u shmkv -- /usr/sbin/shmkvd --foreground -c /etc/shmkvd/shmkvd.conf \
    >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 50); do [ -S /run/shmkvd/shmkvd.sock ] && break; sleep 0.1; done
shmkvctl -c /etc/shmkvd/shmkvd.conf set greeting "from the package" >/dev/null
cat >"$work/client.c" <<'EOC'
#include <stdio.h>
#include <shmkv.h>
int main(void)
{
    shmkv_t *kv;
    char buf[64];
    size_t n = 0;
    if (shmkv_open("/etc/shmkvd/shmkvd.conf", SHMKV_RDONLY, &kv) != 0 ||
        shmkv_get_copy(kv, "greeting", 8, buf, sizeof buf, &n) != 0)
        return 1;
    printf("%.*s\n", (int)n, buf);
    shmkv_close(kv);
    return 0;
}
EOC
cc "$work/client.c" -o "$work/client" $(pkg-config --cflags --libs shmkv)
[ "$("$work/client")" = "from the package" ] || { cat "$work/log"; echo "deb install: the client read no value"; exit 1; }
shmkvctl -c /etc/shmkvd/shmkvd.conf shutdown >/dev/null
wait "$pid" || true
pid=
[ -s /var/lib/shmkvd/dump.shmkv ] || { cat "$work/log"; echo "deb install: no snapshot after shutdown"; exit 1; }
echo "deb install: 1 passed, 0 failed"
