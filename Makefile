# tcp-crossover: build, test, install.
#
#   make run LOCAL='[::1]:8080' REMOTE=127.0.0.1:8000   build and run the relay in the foreground
#   make check                                          run every test (unit, end-to-end, under systemd, fuzz seeds)
#   make check-systemd                                  the shipped units under systemd as process 1 (a container)
#   make deb                                            the Debian package (check-deb: lintian, installed and purged)
#   make install [PREFIX=/usr] [DESTDIR=...]            install a release build with the units and xinetd entry
#
# `run` and `check` first install the system packages they need (with apt-get, as root) when they are missing.

PREFIX ?= /usr
BINDIR ?= $(PREFIX)/bin
# systemd's system unit directory, from its pkg-config file where there is one.
UNITDIR ?= $(shell pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null || echo /lib/systemd/system)
XINETDDIR ?= /etc/xinetd.d
MANDIR ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR ?= $(PREFIX)/share/zsh/vendor-completions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d
UNITS = units/tcp-crossover-smtp.socket units/tcp-crossover-smtp.service \
	units/tcp-crossover-http.socket units/tcp-crossover-http@.service \
	units/tcp-crossover@.socket units/tcp-crossover@.service
SWIFT ?= swift
LOCAL ?= [::1]:8080
REMOTE ?= 127.0.0.1:8000
# Release builds are hardened: a position-independent executable (address-space layout randomisation for the relay's
# own code and the statically linked Swift runtime), full RELRO (-z now: the GOT is read-only once the loader is
# done), non-executable data and stack. They also start fast, since inetd and systemd's Accept=yes start a process per
# connection: the Swift runtime and libstdc++ are linked statically (a process then loads libc and libm only), there
# is no $$ORIGIN run path to search, and relative relocations are packed (-z pack-relative-relocs, RELR), which keeps
# the loader's work for the PIE's 38,000 relocations small. PIE=no builds an executable at a fixed address instead:
# no relocations to apply at start, measurably more connections per second under inetd (Benchmarks/README.md,
# Results), and no randomisation of the relay's own code. `make release-nopie` builds that one beside the default, in
# .build-nopie, for the benchmark.
PIE ?= yes
PIE_LAYOUT = -Xlinker -z -Xlinker pack-relative-relocs
NOPIE_LAYOUT = -Xswiftc -Xclang-linker -Xswiftc -no-pie
ifeq ($(PIE),yes)
LINK_LAYOUT = $(PIE_LAYOUT)
else
LINK_LAYOUT = $(NOPIE_LAYOUT)
endif
# The code and data a process runs at start are linked first, side by side (link/startup.order, written by `make
# startup-order`): 100-105 page faults per start instead of 132-139, and 9-26 % more connections per second under
# inetd in paired runs. Symbols the file names that the binary no longer has are skipped.
STARTUP_ORDER = link/startup.order
COMMON_RELEASE_FLAGS = -c release --static-swift-stdlib --disable-local-rpath \
	-Xswiftc -L$(CURDIR)/link/static-libstdc++ -Xswiftc -use-ld=lld -Xlinker -z -Xlinker now \
	-Xlinker -z -Xlinker relro -Xlinker -z -Xlinker noexecstack \
	-Xlinker --symbol-ordering-file=$(CURDIR)/$(STARTUP_ORDER) -Xlinker --no-warn-symbol-ordering
RELEASE_FLAGS = $(COMMON_RELEASE_FLAGS) $(LINK_LAYOUT)
NOPIE_BINARY = .build-nopie/release/tcp-crossover
RELEASE_BINARY = .build/release/tcp-crossover
BINARY ?= $(RELEASE_BINARY)

# Debian packages the build needs, and those the tests start (python3-prometheus-client: the Prometheus parser that
# reads the metrics in the tests). The mail servers (postfix, dovecot-imapd) install through .ci/install-mail-servers:
# without questions (Postfix as an "Internet Site") and without being started on the machine; the mail server tests
# run instances of their own in namespaces, and neither use nor change the machine's.
BUILD_PACKAGES = libsystemd-dev pkg-config
TEST_PACKAGES = systemd xinetd nginx-light util-linux mount iproute2 python3 python3-prometheus-client \
	systemd-container procps

BENCHMARK_PACKAGES = nginx-light iperf3 wrk haproxy 6tunnel socat hyperfine systemd curl iproute2 python3-matplotlib

.PHONY: all build release release-nopie run check check-systemd deb check-deb test deps test-deps install \
	install-files uninstall lint docs clean benchmark benchmark-matrix benchmark-instructions reliability startup-order

all: build

deps:
	@./.ci/install-packages $(BUILD_PACKAGES)
	@pkg-config --exists libsystemd || { echo "pkg-config does not find libsystemd (libsystemd-dev)" >&2; exit 1; }

test-deps: deps
	@./.ci/install-packages $(TEST_PACKAGES)
	@./.ci/install-mail-servers

build: deps
	$(SWIFT) build

release: deps
	@# SwiftPM relinks when sources change, not when the order file does.
	@if [ $(STARTUP_ORDER) -nt $(RELEASE_BINARY) ]; then rm -f $(RELEASE_BINARY); fi
	$(SWIFT) build $(RELEASE_FLAGS)

# The build without PIE, beside the default one (see PIE above).
release-nopie: deps
	@if [ $(STARTUP_ORDER) -nt $(NOPIE_BINARY) ]; then rm -f $(NOPIE_BINARY); fi
	$(SWIFT) build --scratch-path .build-nopie $(COMMON_RELEASE_FLAGS) $(NOPIE_LAYOUT)

# Rewrites link/startup.order from what the release binary touches at start (valgrind, see link/startup-order),
# then relinks with it. Run it after changes to what a process does at start, or with a new Swift toolchain.
startup-order: release
	@./.ci/install-packages valgrind binutils
	link/startup-order $(RELEASE_BINARY) > $(STARTUP_ORDER).new
	mv $(STARTUP_ORDER).new $(STARTUP_ORDER)
	$(MAKE) --no-print-directory release

run: release
	$(RELEASE_BINARY) --local '$(LOCAL)' --remote '$(REMOTE)' --foreground

# The end-to-end tests run twice: against the debug build, and against the release build that is installed and
# measured (static runtime, position-independent, its start-up layout). The fuzz targets' seeds are replayed too
# (an ordinary build, no libFuzzer), so that the targets keep compiling against the options of the day.
check: test-deps lint
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build
	$(MAKE) --no-print-directory fuzz-replay
	$(MAKE) --no-print-directory release
	TCP_CROSSOVER_BINARY=$(CURDIR)/$(RELEASE_BINARY) $(SWIFT) test --skip-build --filter EndToEndTests
	$(MAKE) --no-print-directory check-systemd

# The Debian package, tcp-crossover_VERSION_ARCH.deb in this directory, built by debian/rules with this Makefile's
# release build (always position-independent here) and install-files. Swift must be on the PATH: it is a build
# dependency that Debian does not package. check-deb also runs lintian (no error, no warning that debian/ does not
# explain with an override) and hardening-check on it, then installs, uses, removes and purges it under systemd.
DEB_PACKAGES = debhelper devscripts lintian dpkg-dev
DEB_VERSION = $(shell dpkg-parsechangelog -S Version 2>/dev/null)
DEB_FILE = tcp-crossover_$(DEB_VERSION)_$(shell dpkg --print-architecture).deb

deb: deps
	@./.ci/install-packages $(DEB_PACKAGES)
	rm -rf .build/deb
	mkdir -p .build/deb
	DEB_DESTDIR=$(CURDIR)/.build/deb dpkg-buildpackage -b -us -uc \
		--buildinfo-option=-u$(CURDIR)/.build/deb --buildinfo-file=.build/deb/$(DEB_FILE:.deb=.buildinfo) \
		--changes-option=-u$(CURDIR)/.build/deb --changes-file=.build/deb/$(DEB_FILE:.deb=.changes)
	cp .build/deb/$(DEB_FILE) $(DEB_FILE)
	@echo "built $(DEB_FILE)"

check-deb: deb test-deps
	lintian --fail-on error,warning --info $(DEB_FILE)
	@# Control-flow integrity (-fcf-protection, CET) needs every object built for it; neither swiftc nor the static
	@# Swift runtime is, so it cannot be had. Everything else is checked: PIE, stack protector, fortify, RELRO, BIND_NOW.
	hardening-check --nocfprotection $(CURDIR)/debian/tcp-crossover/usr/bin/tcp-crossover
	@test "$$(dpkg-deb -f $(DEB_FILE) Version)" = "$$(debian/tcp-crossover/usr/bin/tcp-crossover --version)" || \
		{ echo "debian/changelog's version is not the binary's (--version)" >&2; exit 1; }
	Tests/systemd/run --deb $(DEB_FILE)

# The release binary, the units and the xinetd entry under a real systemd as process 1: a container booted from an
# overlay of this machine's root (Tests/systemd/run; as root, about a minute). xinetd must be installed in the
# machine's root before, since the container sees that root.
check-systemd: test-deps release
	Tests/systemd/run --binary $(RELEASE_BINARY)

test: check

# `install` builds the release binary; `install-files` installs BINARY (the release build by default) with the
# units, the xinetd entry, the man page and shell completions generated by the binary itself. The units name
# /usr/bin/tcp-crossover; with another PREFIX, their ExecStart= follows BINDIR.
install: release install-files

install-files:
	install -D -m 0755 $(BINARY) $(DESTDIR)$(BINDIR)/tcp-crossover
	install -D -m 0644 man/tcp-crossover.8 $(DESTDIR)$(MANDIR)/man8/tcp-crossover.8
	install -d $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR)
	@# A bash completion is sourced, not run: no #! line (lintian's bash-completion-with-hashbang).
	$(BINARY) --generate-completion-script bash | sed '1{/^#!/d}' > $(DESTDIR)$(BASHCOMPDIR)/tcp-crossover
	$(BINARY) --generate-completion-script zsh > $(DESTDIR)$(ZSHCOMPDIR)/_tcp-crossover
	$(BINARY) --generate-completion-script fish > $(DESTDIR)$(FISHCOMPDIR)/tcp-crossover.fish
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
	rm -f $(DESTDIR)$(MANDIR)/man8/tcp-crossover.8 $(DESTDIR)$(BASHCOMPDIR)/tcp-crossover
	rm -f $(DESTDIR)$(ZSHCOMPDIR)/_tcp-crossover $(DESTDIR)$(FISHCOMPDIR)/tcp-crossover.fish
	for unit in $(UNITS); do rm -f $(DESTDIR)$(UNITDIR)/$$(basename $$unit); done

# The peers side by side, on loopback: see Benchmarks/README.md. About 12 minutes.
benchmark: release release-nopie
	@./.ci/install-packages $(BENCHMARK_PACKAGES)
	Benchmarks/run --binary $(RELEASE_BINARY) --nopie-binary $(NOPIE_BINARY) $(BENCHMARK_FLAGS)

# The matrix of load shapes and its chart (Benchmarks/results/latest-matrix.png): GRID=quick takes a few minutes,
# GRID=full within an hour. See Benchmarks/README.md, "The matrix".
GRID = quick
benchmark-matrix: release
	@./.ci/install-packages $(BENCHMARK_PACKAGES)
	Benchmarks/run --binary $(RELEASE_BINARY) --grid $(GRID) $(BENCHMARK_FLAGS)

# What the relay's own code executes per connection and per request, counted by callgrind (not a timing: far steadier):
# see Benchmarks/README.md, "The matrix". A few seconds after the release build.
benchmark-instructions: release
	@./.ci/install-packages valgrind binutils python3
	TCP_CROSSOVER_BINARY=$(RELEASE_BINARY) Benchmarks/instructions

# The full-size reliability runs (the default test run keeps fast versions): see RELIABILITY.md.
reliability: test-deps
	$(SWIFT) build --build-tests
	TCX_RELIABILITY=full $(SWIFT) test --skip-build --filter ReliabilityTests

# The README's options table and the man page's option list, rendered from optionTable
# (Sources/TCPCrossover/Startup/OptionTable.swift); a test checks that the committed ones are up to date.
docs:
	$(SWIFT) build --build-tests
	TCX_WRITE_DOCS=1 $(SWIFT) test --skip-build --filter OptionDocumentationTests

lint:
	$(SWIFT) format lint --strict --recursive Package.swift Sources Tests Fuzz/Package.swift Fuzz/Sources
	python3 Benchmarks/test-report

clean:
	rm -rf .build

# libFuzzer targets (make fuzz) and the end-to-end suite under AddressSanitizer and ThreadSanitizer
# (make sanitize-address, make sanitize-thread): see RELIABILITY.md.
include mk/fuzz.mk
include mk/sanitizers.mk
