#!/usr/bin/env bash
# run-all.sh BUILD [unit|integration]: runs the unit-test binaries BUILD/tests/test_* (cmocka) and the
# integration scripts tests/integration/t_*.sh, streaming their output, and ends with one line
# "N passed, N failed".  Exits 1 when anything failed.
#
# Counting: a cmocka binary contributes its "[  PASSED  ] N test(s)." and "[  FAILED  ] N test(s)" lines;
# a script its last "RESULT passed=N failed=M" line.  A binary or script that crashes, times out, exits
# non-zero without reporting a failure, or reports nothing counts as one more failure.
set -u

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
	echo "usage: $0 BUILD [unit|integration]" >&2
	exit 2
fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$1
case $BUILD in
/*) ;;
*) BUILD=$PWD/$BUILD ;;
esac
WHAT=${2:-all}
case $WHAT in
all | unit | integration) ;;
*)
	echo "run-all.sh: unknown selection '$WHAT' (unit or integration)" >&2
	exit 2
	;;
esac

# Per-item limits, so that a hung test fails the run instead of eating CI's time.
UNIT_TIMEOUT=${UNIT_TIMEOUT:-300}
INTEGRATION_TIMEOUT=${INTEGRATION_TIMEOUT:-900}

PASSED=0
FAILED=0
SUMMARY=()
OUT=$(mktemp) || exit 1
trap 'rm -f "$OUT"' EXIT

# record NAME PASSED FAILED: adds an item's counts to the totals and the summary.
record() {
	PASSED=$((PASSED + $2))
	FAILED=$((FAILED + $3))
	SUMMARY+=("$(printf '%-44s passed=%d failed=%d' "$1:" "$2" "$3")")
}

run_unit() {
	local bin=$1 name rc p f
	name=tests/$(basename "$bin")
	echo "=== $name"
	CMOCKA_MESSAGE_OUTPUT=STDOUT timeout -k 10 "$UNIT_TIMEOUT" "$bin" 2>&1 | tee "$OUT"
	rc=${PIPESTATUS[0]}
	p=$(sed -n 's/^\[  PASSED  \] \([0-9][0-9]*\) test(s)\..*/\1/p' "$OUT" | awk '{s += $1} END {print s + 0}')
	f=$(sed -n 's/^\[  FAILED  \] \([0-9][0-9]*\) test(s).*/\1/p' "$OUT" | awk '{s += $1} END {print s + 0}')
	if ! grep -q '^\[  \(PASSED\|FAILED\)  \] [0-9][0-9]* test(s)' "$OUT"; then
		echo "run-all: $name reported no result (exit $rc)"
		p=$(grep -c "^\[       OK \] " "$OUT")
		f=$((f + 1))
	elif [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		echo "run-all: $name exited $rc without reporting a failure"
		f=$((f + 1))
	fi
	record "$name" "$p" "$f"
}

run_integration() {
	local script=$1 name rc line p f
	name=${script#"$REPO"/}
	echo "=== $name"
	PGLANE_BUILD=$BUILD timeout -k 10 "$INTEGRATION_TIMEOUT" bash "$script" </dev/null 2>&1 | tee "$OUT"
	rc=${PIPESTATUS[0]}
	line=$(grep -E '^RESULT passed=[0-9]+ failed=[0-9]+$' "$OUT" | tail -n 1)
	if [ -z "$line" ]; then
		echo "run-all: $name died before reporting (exit $rc)"
		p=$(grep -c "^ok - " "$OUT")
		f=1
	else
		p=${line#RESULT passed=}
		p=${p%% *}
		f=${line##*failed=}
		if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
			echo "run-all: $name exited $rc after reporting no failure"
			f=1
		fi
	fi
	record "$name" "$p" "$f"
}

if [ "$WHAT" != integration ]; then
	for bin in "$BUILD"/tests/test_*; do
		if [ ! -f "$bin" ] || [ ! -x "$bin" ]; then
			continue
		fi
		run_unit "$bin"
	done
fi
if [ "$WHAT" != unit ]; then
	for script in "$REPO"/tests/integration/t_*.sh; do
		[ -f "$script" ] || continue
		# PGLANE_SCRIPTS="t_workers t_operate": only those scripts
		if [ -n "${PGLANE_SCRIPTS:-}" ] && [[ " $PGLANE_SCRIPTS " != *" $(basename "$script" .sh) "* ]]; then
			continue
		fi
		run_integration "$script"
	done
fi

echo "=== summary"
for line in "${SUMMARY[@]}"; do
	echo "$line"
done
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
