# fuzz.mk: libFuzzer harnesses for pglane's parsers, included by the top Makefile.
#
#   make fuzz                  build every harness, run each for FUZZ_SECONDS (default 20); fails on a crash
#   make fuzz FUZZ_SECONDS=60  longer runs;  make -j2 fuzz  runs two at a time
#   make fuzz-build            only build them, into build-fuzz/
#   make fuzz FUZZ_ARGS="-fork=2 -ignore_crashes=1"   go on after a crash, collecting every input that fails
#   make fuzz-run-NAME         run one (NAME: startup msg scram_server scram_client conf url user)
#   make fuzz-regress          run each harness once over its seed corpus and tests/fuzz/crashes/NAME/ (no
#                              fuzzing: quick, for CI); fails while any saved crash still crashes
#   make fuzz-clean
#
# Needs clang and its libFuzzer runtime (Debian 12: clang-14 and libclang-rt-14-dev, which clang only
# recommends).  The library sources each harness needs are compiled into it directly with the sanitizers,
# not taken from build/libpglane.a (built by gcc, uninstrumented).  Nothing here needs libevent.
#
# Seed corpora: tests/fuzz/corpus/NAME/, written by tests/fuzz/seeds.py (captured libpq/PostgreSQL bytes,
# RFC 7677 SCRAM exchanges, ini files); libFuzzer adds what it finds to build-fuzz/corpus/NAME/.
#
# A crash leaves its input in build-fuzz/artifacts/NAME/; replay it with
#   build-fuzz/fuzz_NAME build-fuzz/artifacts/NAME/crash-...
# and copy it to tests/fuzz/crashes/NAME/ (hex in the unit test that fixes it) so fuzz-regress keeps it.

FUZZ_CC      ?= $(shell command -v clang-14 2>/dev/null || echo clang)
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 20
FUZZ_TIMEOUT ?= 10
FUZZ_ARGS    ?=
# Properties (tags in tests/fuzz/*.c) not enforced: "log-controls" (parser and routing error texts free of
# control characters) is defence in depth since log.c turns control characters into '?' at the sink;
# FUZZ_SKIP= enforces it too.  Add a tag to fuzz past a known bug until its fix lands.
FUZZ_SKIP    ?= log-controls
# More environment for the harnesses, e.g. FUZZ_ENV=FUZZ_VERBOSE=1 to see how far each replayed input gets.
FUZZ_ENV     ?=
FUZZ_NAMES   := startup msg scram_server scram_client conf url user

FUZZ_PKG_CFLAGS := $(shell pkg-config --cflags libpq inih libcrypto 2>/dev/null)
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -I. $(FUZZ_PKG_CFLAGS) \
	-Wall -Wextra -Wno-unused-parameter \
	-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all

FUZZ_SRC_startup      := proxy/pgproto.c
FUZZ_SRC_msg          := proxy/pgproto.c
FUZZ_SRC_scram_server := auth/scram.c
FUZZ_SRC_scram_client := auth/scram.c
FUZZ_SRC_conf         := conf/conf.c routing/timeline.c
FUZZ_SRC_url          := conf/conf.c routing/timeline.c
FUZZ_SRC_user         := routing/timeline.c routing/route.c auth/token.c conf/conf.c

FUZZ_LIBS_startup      :=
FUZZ_LIBS_msg          :=
FUZZ_LIBS_scram_server := -lcrypto -lpthread
FUZZ_LIBS_scram_client := -lcrypto -lpthread
FUZZ_LIBS_conf         := -linih -lpq -lcrypto
FUZZ_LIBS_url          := -linih -lpq -lcrypto
FUZZ_LIBS_user         := -linih -lpq -lcrypto

FUZZ_BINS := $(FUZZ_NAMES:%=$(FUZZ_BUILD)/fuzz_%)
FUZZ_HDRS := $(wildcard proxy/pgproto.h auth/*.h conf/*.h routing/*.h tests/fuzz/*.h)
# libFuzzer options common to every run: inputs that take over FUZZ_TIMEOUT seconds or 2 GB count as crashes.
FUZZ_RUN_OPTS := -timeout=$(FUZZ_TIMEOUT) -rss_limit_mb=2048 -print_final_stats=1

# fuzz-run-NAME and fuzz-regress-NAME are pattern rules, which make skips for .PHONY targets; no file of
# those names is ever made, so they run every time all the same.
.PHONY: fuzz fuzz-build fuzz-regress fuzz-clean fuzz-toolchain

fuzz: $(FUZZ_NAMES:%=fuzz-run-%)
	@echo "fuzz: all $(words $(FUZZ_NAMES)) harnesses ran $(FUZZ_SECONDS) s each without a crash"

fuzz-build: $(FUZZ_BINS)

# Fails early, with the package to install, when clang or its libFuzzer runtime is missing.
$(FUZZ_BUILD)/.toolchain-ok:
	@mkdir -p $(FUZZ_BUILD)
	@command -v $(FUZZ_CC) >/dev/null 2>&1 || { \
		echo "fuzz: $(FUZZ_CC) not found; on Debian 12: apt-get install clang-14 libclang-rt-14-dev" >&2; exit 1; }
	@printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { return 0; }\n' \
		>$(FUZZ_BUILD)/toolchain-probe.c
	@$(FUZZ_CC) -fsanitize=fuzzer,address,undefined -o $(FUZZ_BUILD)/toolchain-probe $(FUZZ_BUILD)/toolchain-probe.c \
		2>$(FUZZ_BUILD)/toolchain-probe.log || { \
		cat $(FUZZ_BUILD)/toolchain-probe.log >&2; \
		echo "fuzz: $(FUZZ_CC) cannot link libFuzzer; on Debian 12: apt-get install libclang-rt-14-dev" >&2; exit 1; }
	@rm -f $(FUZZ_BUILD)/toolchain-probe $(FUZZ_BUILD)/toolchain-probe.c $(FUZZ_BUILD)/toolchain-probe.log
	@touch $@

fuzz-toolchain: $(FUZZ_BUILD)/.toolchain-ok

.SECONDEXPANSION:
$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $$(FUZZ_SRC_$$*) $(FUZZ_HDRS) tests/fuzz/fuzz.mk | $(FUZZ_BUILD)/.toolchain-ok
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< $(FUZZ_SRC_$*) $(FUZZ_LIBS_$*)

fuzz-run-%: $(FUZZ_BUILD)/fuzz_%
	@mkdir -p $(FUZZ_BUILD)/corpus/$* $(FUZZ_BUILD)/artifacts/$*
	@echo "fuzz: $* for $(FUZZ_SECONDS) s"
	@FUZZ_SKIP=$(FUZZ_SKIP) $(FUZZ_ENV) $(FUZZ_BUILD)/fuzz_$* $(FUZZ_RUN_OPTS) -max_total_time=$(FUZZ_SECONDS) \
		-artifact_prefix=$(FUZZ_BUILD)/artifacts/$*/ $(FUZZ_ARGS) \
		$(FUZZ_BUILD)/corpus/$* tests/fuzz/corpus/$* >$(FUZZ_BUILD)/fuzz_$*.log 2>&1; \
	rc=$$?; \
	grep -E '^(stat::number_of_executed_units|stat::new_units_added|#[0-9]+ +DONE)' $(FUZZ_BUILD)/fuzz_$*.log | \
		sed "s/^/fuzz: $*: /"; \
	if [ $$rc -ne 0 ]; then \
		grep -E -A 30 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|property violated|ALARM' \
			$(FUZZ_BUILD)/fuzz_$*.log | head -n 60 >&2; \
		ls $(FUZZ_BUILD)/artifacts/$*/ >&2; \
		echo "fuzz: $* FAILED (exit $$rc); log $(FUZZ_BUILD)/fuzz_$*.log, input in $(FUZZ_BUILD)/artifacts/$*/" >&2; \
		exit 1; \
	fi

# Replays the seeds and every saved crash once: no mutation, a few seconds in all.
fuzz-regress: $(FUZZ_NAMES:%=fuzz-regress-%)

fuzz-regress-%: $(FUZZ_BUILD)/fuzz_%
	@files=$$(find tests/fuzz/corpus/$* tests/fuzz/crashes/$* -type f 2>/dev/null); \
	if [ -z "$$files" ]; then echo "fuzz-regress: $*: no inputs"; exit 0; fi; \
	FUZZ_SKIP=$(FUZZ_SKIP) $(FUZZ_ENV) $(FUZZ_BUILD)/fuzz_$* $(FUZZ_RUN_OPTS) $$files >$(FUZZ_BUILD)/regress_$*.log 2>&1 || { \
		grep -E -B 2 -A 20 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|property violated' \
			$(FUZZ_BUILD)/regress_$*.log | head -n 40 >&2; \
		echo "fuzz-regress: $* FAILED; log $(FUZZ_BUILD)/regress_$*.log" >&2; exit 1; }; \
	echo "fuzz-regress: $*: $$(echo "$$files" | wc -l) inputs pass"

fuzz-clean:
	rm -rf $(FUZZ_BUILD)
