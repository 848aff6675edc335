# libFuzzer targets (the package in Fuzz/, see Fuzz/README.md): `include mk/fuzz.mk` from the Makefile.
#
#   make fuzz                    build the targets with -sanitize=fuzzer,address and run each for FUZZ_RUNS inputs
#   make fuzz FUZZ_RUNS=2000000  longer; `make -j2 fuzz` runs two targets at once, `make -k fuzz` all despite a crash
#   make fuzz-endpoint           one target (fuzz-endpoint, fuzz-command-line, fuzz-options, fuzz-proxy-header)
#   make fuzz-replay             an ordinary build (no libFuzzer) that runs every committed seed through its target
#   make fuzz-clean              removes the fuzzing build and what the runs wrote
#
# Seeds are committed in Fuzz/corpus/TARGET/ (regression-* seeds are inputs that once failed). New corpus entries
# go to Fuzz/corpus-run-TARGET/corpus/, and crash, leak and timeout files to Fuzz/corpus-run-TARGET/ (both
# git-ignored); the run fails when a target crashes. Replay a crash file with `.build-fuzz/debug/fuzz-TARGET FILE`,
# minimise it with `.build-fuzz/debug/fuzz-TARGET -minimize_crash=1 -runs=10000 FILE` (both with
# SWIFT_BACKTRACE=enable=no, which leaves the crash to libFuzzer instead of Swift's backtracer).
#
# Fuzz/toolset.json passes -use-ld=lld to swiftc: the shared platform notes found the default gold linker crashing
# on a -sanitize=fuzzer build; with this package gold links, but with hundreds of "Cannot export local symbol
# '__asan_report_*'" warnings, while lld links cleanly.

SWIFT ?= swift
FUZZ_TARGETS = endpoint command-line options proxy-header
# Inputs per target. Measured here on an otherwise idle machine: 400000 each took 2 min 45 s for the four, a clean
# build included (endpoint 56 s, command-line 21 s, options 29 s, proxy-header 48 s); allow about 4 minutes when the
# machine is busy.
FUZZ_RUNS ?= 400000
FUZZ_MAX_LEN ?= 512
# More libFuzzer options, such as -seed=1 or -max_total_time=60.
FUZZ_FLAGS ?=
FUZZ_SCRATCH ?= .build-fuzz
FUZZ_BUILD_FLAGS = --package-path Fuzz --scratch-path $(FUZZ_SCRATCH) --toolset Fuzz/toolset.json -c debug \
	-Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING
FUZZ_REPLAY_SCRATCH ?= .build-fuzz/replay
# halt_on_error: the first ASan report ends the run (libFuzzer then saves the input).
FUZZ_ENV = SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=halt_on_error=1:abort_on_error=0:detect_leaks=1

.PHONY: fuzz fuzz-build fuzz-replay fuzz-clean $(addprefix fuzz-,$(FUZZ_TARGETS))

fuzz: $(addprefix fuzz-,$(FUZZ_TARGETS))

fuzz-build: deps
	$(SWIFT) build $(FUZZ_BUILD_FLAGS)

$(addprefix fuzz-,$(FUZZ_TARGETS)): fuzz-%: fuzz-build
	@mkdir -p Fuzz/corpus-run-$*/corpus
	$(FUZZ_ENV) $(FUZZ_SCRATCH)/debug/fuzz-$* -runs=$(FUZZ_RUNS) -max_len=$(FUZZ_MAX_LEN) -print_final_stats=1 \
		-artifact_prefix=Fuzz/corpus-run-$*/ $(if $(wildcard Fuzz/dict/$*.dict),-dict=Fuzz/dict/$*.dict) \
		$(FUZZ_FLAGS) Fuzz/corpus-run-$*/corpus Fuzz/corpus/$*

# Without -sanitize=fuzzer: checks that the package builds as an ordinary one and that every seed passes.
fuzz-replay: deps
	$(SWIFT) build --package-path Fuzz --scratch-path $(FUZZ_REPLAY_SCRATCH)
	for target in $(FUZZ_TARGETS); do \
		SWIFT_BACKTRACE=enable=no $(FUZZ_REPLAY_SCRATCH)/debug/fuzz-$$target Fuzz/corpus/$$target || exit 1; \
	done

# Removes the fuzzing build and what the runs wrote (the committed seeds stay).
fuzz-clean:
	rm -rf $(FUZZ_SCRATCH) Fuzz/corpus-run-*
