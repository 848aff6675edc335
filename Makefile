# tcp-crossover: build, test, install.
#
#   make run LOCAL='[::1]:8080' REMOTE=127.0.0.1:8000   build and run the relay in the foreground
#   make check                                          run every test (unit and end-to-end)
#   make install [PREFIX=/usr] [DESTDIR=...]            install a release build with the units and xinetd entry
#
# `run` and `check` first install the system packages they need (with apt-get, as root) when they are missing.

PREFIX ?= /usr
BINDIR ?= $(PREFIX)/bin
# systemd's system unit directory, from its pkg-config file where there is one.
UNITDIR ?= $(shell pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null || echo /lib/systemd/system)
XINETDDIR ?= /etc/xinetd.d
UNITS = units/tcp-crossover-smtp.socket units/tcp-crossover-smtp.service \
	units/tcp-crossover-http.socket units/tcp-crossover-http@.service
SWIFT ?= swift
LOCAL ?= [::1]:8080
REMOTE ?= 127.0.0.1:8000
RELEASE_FLAGS = -c release --static-swift-stdlib
RELEASE_BINARY = .build/release/tcp-crossover

# Debian packages the build needs, and those the tests start.
BUILD_PACKAGES = libsystemd-dev pkg-config
TEST_PACKAGES = systemd xinetd

.PHONY: all build release run check test deps test-deps install uninstall lint clean

all: build

deps:
	@./.ci/install-packages $(BUILD_PACKAGES)
	@pkg-config --exists libsystemd || { echo "pkg-config does not find libsystemd (libsystemd-dev)" >&2; exit 1; }

test-deps: deps
	@./.ci/install-packages $(TEST_PACKAGES)

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build $(RELEASE_FLAGS)

run: release
	$(RELEASE_BINARY) --local '$(LOCAL)' --remote '$(REMOTE)' --foreground

check: test-deps lint
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build

test: check

# The units name /usr/bin/tcp-crossover; with another PREFIX, their ExecStart= follows BINDIR.
install: release
	install -D -m 0755 $(RELEASE_BINARY) $(DESTDIR)$(BINDIR)/tcp-crossover
	install -d $(DESTDIR)$(UNITDIR)
	for unit in $(UNITS); do \
		sed 's|/usr/bin/tcp-crossover|$(BINDIR)/tcp-crossover|' $$unit > $(DESTDIR)$(UNITDIR)/$$(basename $$unit); \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$(basename $$unit); \
	done
	install -d $(DESTDIR)$(XINETDDIR)
	sed 's|/usr/bin/tcp-crossover|$(BINDIR)/tcp-crossover|' xinetd/tcp-crossover-smtp > $(DESTDIR)$(XINETDDIR)/tcp-crossover-smtp
	chmod 0644 $(DESTDIR)$(XINETDDIR)/tcp-crossover-smtp

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/tcp-crossover $(DESTDIR)$(XINETDDIR)/tcp-crossover-smtp
	for unit in $(UNITS); do rm -f $(DESTDIR)$(UNITDIR)/$$(basename $$unit); done

lint:
	$(SWIFT) format lint --strict --recursive Package.swift Sources Tests

clean:
	rm -rf .build
