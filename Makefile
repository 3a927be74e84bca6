# pglane: a PostgreSQL routing proxy.  See README.md.
#   make            build ./pglane
#   make test       install what is missing, build, run unit + integration tests
#   make run        install what is missing, start a throwaway PostgreSQL and pglane
#   make test-asan  the whole suite under AddressSanitizer + UndefinedBehaviorSanitizer
#   make test-tsan  the scripts that drive several workers, under ThreadSanitizer

CC      ?= cc
PKGS    := libevent_core libevent_extra libevent_openssl libssl libcrypto libpq inih
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CMOCKA_LIBS := $(shell pkg-config --libs cmocka 2>/dev/null)

OPT     ?= -O2 -g
CFLAGS  += -DPGLANE_DATADIR='"$(CURDIR)"' -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter $(OPT) -I. $(PKG_CFLAGS) $(SANFLAGS)
LDFLAGS += $(SANFLAGS)
LDLIBS  += $(PKG_LIBS) -lpthread

BUILD   ?= build
# Everything outside proxy/main.c goes into one static library that the unit tests link too.
LIB_SRC  := $(wildcard auth/*.c routing/*.c certs/*.c conf/*.c) $(filter-out proxy/main.c,$(wildcard proxy/*.c))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
TOOL_SRC := $(wildcard tests/integration/*.c)
TOOL_BIN := $(TOOL_SRC:tests/integration/%.c=$(BUILD)/tools/%)

.PHONY: all deps test unit unit-bins integration run bench clean format test-asan test-tsan test-valgrind test-compat soak
all: pglane

pglane: $(BUILD)/proxy/main.o $(BUILD)/libpglane.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

build-asan/pglane build-tsan/pglane: $(BUILD)/proxy/main.o $(BUILD)/libpglane.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/libpglane.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libpglane.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libpglane.a $(LDFLAGS) $(LDLIBS) $(CMOCKA_LIBS)

$(BUILD)/tools/%: tests/integration/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS) $(LDLIBS)

-include $(LIB_OBJ:.o=.d) $(BUILD)/proxy/main.d

deps:
	@scripts/deps.sh

unit-bins: $(UNIT_BIN) $(TOOL_BIN)

# `make test` installs what is missing, then builds and runs everything, ending in "N passed, N failed".
test: deps
	$(MAKE) pglane unit-bins
	tests/run-all.sh $(BUILD)

unit: pglane unit-bins
	tests/run-all.sh $(BUILD) unit

integration: pglane unit-bins
	tests/run-all.sh $(BUILD) integration

# The sanitizer build lives in build-asan/ with its own binary, build-asan/pglane; ./pglane is untouched.
# It runs the integration scripts with kernel_relay = auto (where a script sets none): with the kernel relay
# withdrawn (README, Limits), that checks the fallback to pglane's relay; make test runs them with the default.
test-asan: deps
	$(MAKE) BUILD=build-asan PGLANE_BIN=build-asan/pglane OPT="-O1 -g -fno-omit-frame-pointer" SANFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all" build-asan/pglane unit-bins
	PGLANE_KERNEL_RELAY=auto PGLANE_BIN=$(CURDIR)/build-asan/pglane ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 tests/run-all.sh build-asan

# ThreadSanitizer over the scripts that run several workers at once (t_workers: four; the others: the default
# of one per core), with every report fatal: a data race between workers fails the script that met it.
# -Wno-error=tsan: krelay.c's atomic_thread_fence (the withdrawn kernel relay) draws a TSan warning.
test-tsan: deps
	$(MAKE) BUILD=build-tsan PGLANE_BIN=build-tsan/pglane OPT="-O1 -g -Wno-format-truncation -Wno-error=tsan" SANFLAGS="-fsanitize=thread" build-tsan/pglane unit-bins
	PGLANE_SCRIPTS="t_workers t_operate t_spine" PGLANE_BIN=$(CURDIR)/build-tsan/pglane TSAN_OPTIONS="halt_on_error=1 abort_on_error=1" tests/run-all.sh build-tsan integration

# deps first, then a fresh make: pkg-config flags are read when make starts, before deps installed them.
# PostgreSQL's own regression suite, libpq's pipeline tests and pgbench's scripts through pglane (tests/compat).
test-compat: deps
	$(MAKE) pglane unit-bins
	tests/compat/run.sh $(BUILD)

# The integration scripts with every pglane process under valgrind memcheck: no error, no definite leak.
test-valgrind: deps
	$(MAKE) pglane unit-bins
	tests/valgrind/run.sh

# Ten minutes (SOAK_SECONDS) of mixed load with reloads, cancels and instance restarts; not in CI.
soak: deps
	$(MAKE) pglane unit-bins
	tests/soak/run.sh

run: deps
	$(MAKE) pglane
	scripts/run-demo.sh

bench: deps
	$(MAKE) pglane
	bench/run.sh

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build build-asan build-tsan pglane

# make fuzz: libFuzzer harnesses (clang), each run for FUZZ_SECONDS; see tests/fuzz/.
-include tests/fuzz/fuzz.mk
