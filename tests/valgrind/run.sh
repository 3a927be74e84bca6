#!/usr/bin/env bash
# make test-valgrind: the integration scripts once more with every pglane process (the proxy and the
# subcommands) under valgrind memcheck.  What this run asserts is valgrind's verdict: no memory error and no
# definite leak in any process.  The scripts' own results are printed for information only, since
# valgrind's slowness breaks their timing checks (08001 within connect_timeout + 1 s and the like).
set -u
cd "$(dirname "$0")/../.." || exit 1
dir=$(mktemp -d /tmp/pglane-valgrind.XXXXXX)
scripts=${PGLANE_VALGRIND_SCRIPTS:-tests/integration/t_spine.sh tests/integration/t_operate.sh tests/integration/t_tls.sh}
for t in $scripts; do
	out=$(PGLANE_VALGRIND_DIR=$dir PGLANE_BIN=$PWD/tests/valgrind/pglane timeout 1200 bash "$t" 2>&1 | tail -n 1)
	echo "# $t under valgrind: $out (information only)"
done
passed=0 failed=0 skipped=0
for f in "$dir"/vg.*.log; do
	[ -e "$f" ] || continue
	if grep -q "ERROR SUMMARY: 0 errors" "$f"; then
		passed=$((passed + 1))
	elif ! grep -q "ERROR SUMMARY" "$f"; then
		# No verdict: `pglane exec` became its command (valgrind does not follow it), or the process was
		# killed.  Memory errors would have been reported as they happened, so look for those.
		if grep -qE "Invalid (read|write|free)|uninitialised|Mismatched free" "$f"; then
			failed=$((failed + 1))
			echo "not ok - valgrind: $f"
			head -n 60 "$f"
		else
			skipped=$((skipped + 1))
		fi
	else
		failed=$((failed + 1))
		echo "not ok - valgrind: $f"
		grep -A 30 "ERROR SUMMARY\|Invalid\|definitely lost" "$f" | head -n 60
	fi
done
echo "# $((passed + failed + skipped)) pglane processes ran under valgrind ($skipped exec'd or were killed before a verdict); reports in $dir"
[ $((passed + failed)) -gt 0 ] || failed=1
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
