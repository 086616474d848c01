# shmkv build. `make` builds the library; `make test` installs what is
# missing (as root on Debian), builds, and runs every test.

PREFIX ?= /usr/local
DESTDIR ?=
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
SBINDIR ?= $(PREFIX)/sbin
SYSCONFDIR ?= /etc
UNITDIR ?= /lib/systemd/system
SYSUSERSDIR ?= /usr/lib/sysusers.d
DOCDIR ?= $(PREFIX)/share/doc/shmkv
MANDIR ?= $(PREFIX)/share/man

CC ?= cc
BUILD ?= build
DEBIAN_PACKAGES := libevent-dev libinih-dev libcmocka-dev libxxhash-dev pkg-config redis-tools \
	debhelper dpkg-dev python3-dev python3-venv python3-pip python3-setuptools python3-wheel \
	python3-pytest python3-redis libhiredis-dev python3-prometheus-client curl redis-server
PKGS := libxxhash inih
DAEMON_PKGS := libevent inih libxxhash hiredis

WARN := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes
CFLAGS ?= -O2 -g
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE $(WARN) -fPIC -Iinclude -Iclient $(CFLAGS) $(EXTRA_CFLAGS) \
	$(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread

LIB_SRCS := $(wildcard client/*.c)
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/%.o)
# The daemon's parts, as an internal archive that shmkvd, shmkvctl and the
# tests link.
DAEMON_SRCS := $(filter-out daemon/main.c daemon/shmkvctl.c,$(wildcard daemon/*.c))
DAEMON_OBJS := $(DAEMON_SRCS:%.c=$(BUILD)/%.o)
DAEMON_LIBS = $(shell pkg-config --libs $(DAEMON_PKGS) 2>/dev/null) -lpthread
TEST_SRCS := $(wildcard tests/test_*.c)
TEST_BINS := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
TEST_SCRIPTS := $(wildcard tests/test_*.sh)
# The RESP parser's fuzz target: under gcc a standalone driver that make test
# runs on 200,000 generated inputs; `make fuzz` runs it under libFuzzer.
FUZZ_BINS := $(BUILD)/tests/fuzz_resp $(BUILD)/tests/fuzz_store
FUZZ_CC ?= clang
FUZZ_TIME ?= 60
FUZZ_FLAGS := -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
SOVERSION := 0

.PHONY: deb all deps run test test-sanitize torture bench fuzz install uninstall clean format lint \
	python python-bench mirror-bench

all: $(BUILD)/libshmkv.a $(BUILD)/libshmkv.so $(BUILD)/shmkvd $(BUILD)/shmkvctl \
	$(BUILD)/shmkv-bench

# Checks the build dependencies; as root on Debian installs what is missing.
deps:
	@missing=""; \
	for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	  else \
	    echo "missing packages; run: sudo apt-get install$$missing" >&2; exit 1; \
	  fi; \
	fi

$(BUILD)/%.o: %.c $(wildcard include/*.h client/*.h daemon/*.h) | deps
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Idaemon -c $< -o $@

$(BUILD)/libshmkvd.a: $(DAEMON_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/shmkvd: $(BUILD)/daemon/main.o $(BUILD)/libshmkvd.a $(BUILD)/libshmkv.a
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $^ $(DAEMON_LIBS)

$(BUILD)/shmkvctl: $(BUILD)/daemon/shmkvctl.o $(BUILD)/libshmkvd.a $(BUILD)/libshmkv.a
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $^ $(DAEMON_LIBS)

$(BUILD)/libshmkv.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

# The shared library under its soname, with the link-time name beside it,
# so that a program linked with -Lbuild -lshmkv runs with
# LD_LIBRARY_PATH=build.
$(BUILD)/libshmkv.so.$(SOVERSION): $(LIB_OBJS)
	$(CC) $(LDFLAGS) -shared -Wl,-soname,libshmkv.so.$(SOVERSION) -o $@ $^ $(LIBS)

$(BUILD)/libshmkv.so: $(BUILD)/libshmkv.so.$(SOVERSION)
	ln -sf libshmkv.so.$(SOVERSION) $@

$(BUILD)/tests/%: tests/%.c tests/testutil.h $(BUILD)/libshmkvd.a $(BUILD)/libshmkv.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Idaemon -Itests $< -o $@ $(BUILD)/libshmkvd.a $(BUILD)/libshmkv.a \
	    $(DAEMON_LIBS) $(shell pkg-config --libs cmocka)

# A Redis client in C (hiredis) run against shmkvd by the compatibility
# tests (bindings/python/tests/test_redis_compat.py).
$(BUILD)/tests/compat_hiredis: tests/compat_hiredis.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(shell pkg-config --cflags hiredis) $< -o $@ \
	    $(shell pkg-config --libs hiredis)

$(BUILD)/shmkv-bench: bench/shmkv-bench.c $(BUILD)/libshmkv.a
	$(CC) $(ALL_CFLAGS) $< -o $@ $(BUILD)/libshmkv.a $(LIBS) -lm

test: deps $(TEST_BINS) $(FUZZ_BINS) $(BUILD)/shmkvd $(BUILD)/shmkvctl $(BUILD)/shmkv-bench \
	$(BUILD)/tests/compat_hiredis
	@BUILD=$(BUILD) EXAMPLE_CFLAGS="$(CFLAGS)" sh tests/run.sh $(TEST_BINS) $(FUZZ_BINS) $(TEST_SCRIPTS)

# `make python`: the Python package (bindings/python) built and installed
# into a virtual environment of Debian's python3 at $(BUILD)/pyenv, which
# also sees Debian's pytest and redis-py; tests/test_python.sh does the
# same and runs its tests.
PYTHON ?= /usr/bin/python3
# The extension is built from scratch each time: setuptools rebuilds a
# source only when it is newer than its object, not when a header it
# includes (client/layout.h) changed, nor when CFLAGS did (test-sanitize).
python: deps
	rm -rf bindings/python/build
	$(PYTHON) -m venv --system-site-packages $(BUILD)/pyenv
	$(BUILD)/pyenv/bin/pip install --quiet --disable-pip-version-check --no-build-isolation \
	    --no-deps ./bindings/python

# `make mirror-bench`: the [upstream] mirror's load rate, invalidation lag
# and reads against a real redis-server (bindings/python/bench_mirror.py).
mirror-bench: python $(BUILD)/shmkvd
	$(BUILD)/pyenv/bin/python bindings/python/bench_mirror.py --shmkvd $(BUILD)/shmkvd

# `make python-bench`: the classic traversal benchmark (bindings/python).
python-bench: python $(BUILD)/shmkvd
	cd $(BUILD) && pyenv/bin/python ../bindings/python/bench_traverse.py --shmkvd ./shmkvd

test-sanitize: deps
	$(MAKE) BUILD=build-san CFLAGS="-O1 -g $(SANFLAGS)" test

# `make torture`: the kill torture (readers, writers, recoverers and a
# resizer SIGKILLed every few milliseconds) for TORTURE_S seconds; make
# test runs it for 30. Replay a failure with SHMKV_TEST_SEED=<the seed it printed>.
TORTURE_S ?= 600
torture: deps $(BUILD)/tests/test_torture
	SHMKV_TORTURE_S=$(TORTURE_S) $(BUILD)/tests/test_torture

$(BUILD)/fuzz/fuzz_resp: tests/fuzz_resp.c daemon/resp.c daemon/resp.h | deps
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -DSHMKV_LIBFUZZER -std=c11 -D_GNU_SOURCE $(WARN) -Iinclude -Iclient -Idaemon \
	    tests/fuzz_resp.c daemon/resp.c -o $@ $(shell pkg-config --libs libevent)

$(BUILD)/fuzz/fuzz_store: tests/fuzz_store.c tests/testutil.h $(LIB_SRCS) client/*.h | deps
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -DSHMKV_LIBFUZZER -std=c11 -D_GNU_SOURCE $(WARN) -Iinclude -Iclient \
	    tests/fuzz_store.c $(LIB_SRCS) -o $@ $(LIBS)

# `make fuzz`: libFuzzer (clang) for FUZZ_TIME seconds each on the RESP
# parser, seeded with the driver's corpus and dictionary, and on damaged
# store segments; crashes land in $(BUILD)/fuzz/ (replay one with
# $(BUILD)/tests/fuzz_store FILE).
fuzz: $(BUILD)/fuzz/fuzz_resp $(BUILD)/tests/fuzz_resp $(BUILD)/fuzz/fuzz_store
	@mkdir -p $(BUILD)/fuzz/corpus-resp $(BUILD)/fuzz/corpus-store
	$(BUILD)/tests/fuzz_resp --write-corpus $(BUILD)/fuzz/corpus-resp
	$(BUILD)/tests/fuzz_resp --write-dict $(BUILD)/fuzz/resp.dict
	$(BUILD)/fuzz/fuzz_resp -max_total_time=$(FUZZ_TIME) -dict=$(BUILD)/fuzz/resp.dict \
	    -artifact_prefix=$(BUILD)/fuzz/ $(BUILD)/fuzz/corpus-resp
	$(BUILD)/fuzz/fuzz_store -max_total_time=$(FUZZ_TIME) -timeout=10 \
	    -artifact_prefix=$(BUILD)/fuzz/ $(BUILD)/fuzz/corpus-store

bench: $(BUILD)/shmkv-bench
	$(BUILD)/shmkv-bench

# `make run`: the daemon in the foreground on the sample config, with its
# socket under run/ in this tree; Ctrl-C stops it and removes the store.
run: deps all
	@echo "shmkvd on conf/shmkvd.conf; in another terminal try:"
	@echo "  $(BUILD)/shmkvctl -c conf/shmkvd.conf set a 1"
	@echo "  $(BUILD)/shmkvctl -c conf/shmkvd.conf get a"
	@echo "  redis-cli -s run/shmkvd.sock get a"
	@echo "Ctrl-C stops it."
	$(BUILD)/shmkvd --foreground -c conf/shmkvd.conf

install: all
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(LIBDIR)/pkgconfig \
	    $(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR) $(DESTDIR)$(SYSCONFDIR)/shmkvd $(DESTDIR)$(UNITDIR) \
	    $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(DOCDIR) \
	    $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man3 $(DESTDIR)$(MANDIR)/man5 \
	    $(DESTDIR)$(MANDIR)/man8
	install -m 644 $(BUILD)/libshmkv.a $(DESTDIR)$(LIBDIR)/
	install -m 755 $(BUILD)/libshmkv.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/
	ln -sf libshmkv.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/libshmkv.so
	install -m 644 include/shmkv.h $(DESTDIR)$(INCLUDEDIR)/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	    -e 's|@VERSION@|$(shell sed -n 's/.*SHMKV_VERSION_STRING "\(.*\)"/\1/p' include/shmkv.h)|' \
	    shmkv.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/shmkv.pc
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	    -e 's|@VERSION@|$(shell sed -n 's/.*SHMKV_VERSION_STRING "\(.*\)"/\1/p' include/shmkv.h)|' \
	    shmkv-static.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/shmkv-static.pc
	install -m 755 $(BUILD)/shmkvd $(DESTDIR)$(SBINDIR)/
	install -m 755 $(BUILD)/shmkvctl $(DESTDIR)$(BINDIR)/
	# An existing config is the operator's: never overwrite it.
	[ -e $(DESTDIR)$(SYSCONFDIR)/shmkvd/shmkvd.conf ] || \
	    sed -e 's|^socket *=.*|socket = /run/shmkvd/shmkvd.sock|' \
	        -e 's|^snapshot *=.*|snapshot = /var/lib/shmkvd/dump.shmkv|' \
	        -e 's|^readers *=.*|readers = shmkv|' -e 's|^writers *=.*|writers = none|' \
	        -e 's|^mode *=|;mode =|' -e 's|^group *=|;group =|' \
	        conf/shmkvd.conf > $(DESTDIR)$(SYSCONFDIR)/shmkvd/shmkvd.conf
	sed -e 's|@SBINDIR@|$(SBINDIR)|' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|' -e 's|@DOCDIR@|$(DOCDIR)|' \
	    systemd/shmkvd.service > $(DESTDIR)$(UNITDIR)/shmkvd.service
	install -m 644 systemd/shmkv.sysusers $(DESTDIR)$(SYSUSERSDIR)/shmkv.conf
	install -m 644 README.md CHANGELOG.md LICENSE $(DESTDIR)$(DOCDIR)/
	install -m 644 man/shmkvctl.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 644 man/libshmkv.3 $(DESTDIR)$(MANDIR)/man3/
	install -m 644 man/shmkvd.conf.5 $(DESTDIR)$(MANDIR)/man5/
	install -m 644 man/shmkvd.8 $(DESTDIR)$(MANDIR)/man8/

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/libshmkv.a $(DESTDIR)$(LIBDIR)/libshmkv.so* \
	      $(DESTDIR)$(INCLUDEDIR)/shmkv.h $(DESTDIR)$(LIBDIR)/pkgconfig/shmkv.pc \
	      $(DESTDIR)$(LIBDIR)/pkgconfig/shmkv-static.pc \
	      $(DESTDIR)$(SBINDIR)/shmkvd $(DESTDIR)$(BINDIR)/shmkvctl \
	      $(DESTDIR)$(UNITDIR)/shmkvd.service $(DESTDIR)$(SYSUSERSDIR)/shmkv.conf \
	      $(DESTDIR)$(MANDIR)/man1/shmkvctl.1 $(DESTDIR)$(MANDIR)/man3/libshmkv.3 \
	      $(DESTDIR)$(MANDIR)/man5/shmkvd.conf.5 \
	      $(DESTDIR)$(MANDIR)/man8/shmkvd.8
	rm -rf $(DESTDIR)$(DOCDIR)

# `make deb`: the Debian packages (shmkvd, libshmkv0, libshmkv-dev) in
# $(BUILD)/deb, built by dpkg-buildpackage from debian/ in a copy of the
# tree, so that nothing is written beside it.
deb:
	@$(MAKE) -s deps DEBIAN_PACKAGES="debhelper dpkg-dev libevent-dev libinih-dev libxxhash-dev pkg-config"
	rm -rf $(BUILD)/deb && mkdir -p $(BUILD)/deb/shmkv
	tar -c --exclude=./.git --exclude=./build --exclude=./build-san --exclude=./run \
	    --exclude='./$(BUILD)' . | tar -x -C $(BUILD)/deb/shmkv
	cd $(BUILD)/deb/shmkv && dpkg-buildpackage -us -uc -b
	rm -rf $(BUILD)/deb/shmkv
	@ls $(BUILD)/deb/*.deb

format:
	clang-format -i include/*.h client/*.[ch] daemon/*.[ch] tests/*.[ch] bench/*.c \
	    bindings/python/shmkv/*.c

lint:
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability \
	  --suppress=missingIncludeSystem -Iinclude -Iclient -Idaemon client/ daemon/ bench/ tests/

clean:
	rm -rf build build-san run
