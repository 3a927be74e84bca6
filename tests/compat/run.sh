#!/usr/bin/env bash
# run.sh BUILD: PostgreSQL's own test suites through pglane (`make test-compat`).
#
# tests/compat/fetch.sh fetches Debian's source package of PostgreSQL 15 (cached) and builds pg_regress,
# regress.so, refint.so, autoinc.so and libpq_pipeline from it.  Then, against throwaway PostgreSQL instances
# started by tests/integration/lib.sh ("direct" for the baseline, "lane" behind pglane; the same
# configuration, each with a database named like the timeline's, compat-production):
#
#   1. pg_regress --schedule=parallel_schedule --use-existing, once directly against "direct" as its
#      superuser (the baseline) and once through pglane as the timeline compat-production (PGUSER and
#      PGPASSWORD from `pglane env`; pglane logs in to "lane" as that instance's superuser, so the tests
#      have the same privileges).  pg_regress also sends PGOPTIONS (-c intervalstyle=postgres_verbose),
#      PGTZ and PGDATESTYLE, which must reach the backend (checked on their own first).  Every test that
#      passes directly must pass through pglane; a test that fails directly too (a database not named
#      "regression", or test sources of another 15.x than the installed server) must give byte-identical
#      output through pglane; one exception, checked line by line: pglane keeps server processes for later
#      clients (server_idle_timeout), and `temp` sees that a reused process's temporary namespace outlives
#      DISCARD ALL (PREPARE TRANSACTION then fails on its next check).  One ok/not ok line per test; both result sets are printed, with the diffs
#      of any test that fails only through pglane.
#   2. Every libpq_pipeline test (`libpq_pipeline tests`) through pglane with -r 700, and for the tests
#      PostgreSQL's own TAP test (001_libpq_pipeline.pl) traces, `-t FILE` compared byte for byte to the
#      expected trace shipped in src/test/modules/libpq_pipeline/traces/ (libpq_pipeline sets
#      PQTRACE_SUPPRESS_TIMESTAMPS | PQTRACE_REGRESS_MODE, which leaves nothing run-dependent, so the TAP
#      test filters nothing and neither does this).  Should the shipped trace not match the installed
#      libpq/server even directly (a source version other than the installed one), the trace taken
#      directly is the reference instead.
#   3. pgbench's built-in scripts (tpcb-like, simple-update, select-only) through pglane with -M simple,
#      -M extended and -M prepared, with -C (a new connection per transaction), and over client TLS
#      (pglane's tls_cert/tls_key from `pglane certs init`, PGSSLMODE=require), each with zero failed
#      transactions.
# PostgreSQL 15's libpq_pipeline has no cancel test (those came with PostgreSQL 17's cancel API); cancels
# through pglane are tested in tests/integration/t_spine.sh.
#
# Prints ok / not ok lines and ends with "N passed, N failed" alone on a line; exits 1 on any failure.
# Environment: PGLANE_COMPAT_CACHE (fetch.sh's cache, default /var/cache/pglane-compat), PGLANE_BIN,
# PGLANE_TEST_KEEP=1 (keep the temporary directory, with both pg_regress output directories),
# COMPAT_PGBENCH_SECONDS (per pgbench run, default 2).
set -u

if [ $# -ne 1 ]; then
	echo "usage: $0 BUILD" >&2
	exit 2
fi
export PGLANE_BUILD=$1
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../integration/lib.sh disable=SC1091
. "$HERE/../integration/lib.sh"

T_START=$(now_ms)
PGBENCH_SECONDS=${COMPAT_PGBENCH_SECONDS:-2}
REGRESS_TIMEOUT=600 # seconds for one pg_regress run
APP=compat
DB=$APP-production

# done_compat: the summary line, alone and last; exit 1 when anything failed.
done_compat() {
	LIB_FINISHED=1
	note "total $(elapsed "$T_START")"
	echo "$LIB_PASSED passed, $LIB_FAILED failed"
	[ "$LIB_FAILED" -eq 0 ]
	exit
}

# stop: a setup step failed; the rest cannot run.
stop() {
	fail "setup" "$1"
	done_compat
}

# elapsed T0_MS: "12.3 s" since T0_MS.
elapsed() {
	local ms=$(($(now_ms) - $1))
	printf '%d.%d s' $((ms / 1000)) $((ms % 1000 / 100))
}

# ---------------------------------------------------------------- fetch and build the tests

[ -x "$PGLANE" ] || stop "$PGLANE is not built (make pglane)"
t0=$(now_ms)
if ! fetched=$("$HERE/fetch.sh" 2>"$TMP/fetch.log"); then
	note "$(tail -n 30 "$TMP/fetch.log")"
	stop "tests/compat/fetch.sh failed"
fi
sed 's/^/# /' "$TMP/fetch.log"
TREE=$(printf '%s\n' "$fetched" | sed -n 's/^TREE=//p')
BIN=$(printf '%s\n' "$fetched" | sed -n 's/^BUILD=//p')
REGRESS_SRC=$TREE/src/test/regress
PG_REGRESS=$BIN/pg_regress/pg_regress
PIPELINE=$BIN/libpq_pipeline
for f in "$PG_REGRESS" "$PIPELINE" "$BIN/regress/regress.so" "$BIN/regress/refint.so" "$BIN/regress/autoinc.so" \
	"$REGRESS_SRC/parallel_schedule"; do
	[ -e "$f" ] || stop "fetch.sh did not produce $f"
done
# The server loads the modules and reads the tests' data files as the instances' OS user.
as_pg_user test -r "$BIN/regress/regress.so" -a -r "$REGRESS_SRC/data/onek.data" ||
	stop "the PostgreSQL OS user cannot read $BIN and $TREE: PGLANE_COMPAT_CACHE must be readable by all"
note "PostgreSQL test sources: $TREE (Debian $(cat "$TREE/.pglane-unpacked")); server: $("$PG_BIN/postgres" --version)"
note "fetch and build: $(elapsed "$t0")"

# ---------------------------------------------------------------- instances, pglane

t0=$(now_ms)
pg_start direct || stop "pg_start direct"
pg_start lane || stop "pg_start lane"
pg_createdb direct "$DB" || stop "create database $DB on direct"
pg_createdb lane "$DB" || stop "create database $DB on lane"

LANE_PORT=
free_port_var LANE_PORT || stop "free_port"
"$PGLANE" certs init "$TMP/lanecerts" >"$TMP/certs-init.log" 2>&1 || stop "pglane certs init: $(cat "$TMP/certs-init.log")"
CONF=$TMP/pglane.ini
cat >"$CONF" <<EOF
; written by tests/compat/run.sh
[pglane]
listen = 127.0.0.1:$LANE_PORT
tls_cert = $TMP/lanecerts/server.crt
tls_key = $TMP/lanecerts/server.key

[instance lane]
url = postgresql://postgres:$PG_LANE_PASSWORD@localhost:$PG_LANE_PORT/postgres?sslmode=verify-full
ca_file = $TEST_CA

[app $APP]
instance = lane
secret = $(openssl rand -hex 24)
EOF
chmod 600 "$CONF"
pglane_start "$CONF" || stop "pglane did not start"
LANE_ENV=$("$PGLANE" env -c "$CONF" "$APP" --production --format shell 2>&1) || stop "pglane env: $LANE_ENV"
note "instances and pglane: $(elapsed "$t0")"

# lane CMD...: runs CMD with the timeline's variables from `pglane env` (pointing at pglane).
lane() {
	(
		eval "$LANE_ENV"
		"$@"
	)
}

# direct CMD...: runs CMD connected straight to instance "direct" as its superuser, over TCP and TLS, as
# pglane reaches its own instance.
direct() {
	PGHOST=127.0.0.1 PGPORT=$PG_DIRECT_PORT PGUSER=postgres PGPASSWORD=$PG_DIRECT_PASSWORD PGDATABASE=$DB \
		PGSSLMODE=require "$@"
}

got=$(lane psql -X -At -c 'SELECT current_database(), current_user' 2>&1)
check_eq "psql through pglane lands in $DB" "$DB|postgres" "$got" || stop "no session through pglane"

# What pg_regress puts in the environment reaches the backend: PGOPTIONS as the startup packet's
# "options", PGTZ and PGDATESTYLE as its "timezone" and "datestyle"; the answer must be the one the
# instance gives directly.
# shellcheck disable=SC2317 # called through direct/lane
show_settings() {
	env PGOPTIONS='-c intervalstyle=postgres_verbose -c search_path=compat_a,public' \
		PGTZ=America/Los_Angeles PGDATESTYLE='Postgres, MDY' psql -X -At -c 'SHOW intervalstyle' \
		-c 'SHOW search_path' -c 'SHOW timezone' -c 'SHOW datestyle' 2>&1
}
want=$(direct show_settings)
got=$(lane show_settings)
if [ "$want" = "$(printf 'postgres_verbose\ncompat_a,public\nAmerica/Los_Angeles\nPostgres, MDY')" ]; then
	check_eq "PGOPTIONS, PGTZ and PGDATESTYLE reach the backend through pglane as directly" "$want" "$got"
else
	fail "PGOPTIONS, PGTZ and PGDATESTYLE directly (the reference)" "got '$want'"
fi

# ---------------------------------------------------------------- 1. pg_regress

# regress_run NAME HOST PORT: pg_regress with the parallel schedule into $TMP/regress-NAME, run as the
# instances' OS user (the server writes COPY files into the output directory, and reads the input files).
# The user and password come from the environment.  Writes $TMP/regress-NAME/status: "TEST STATUS" lines,
# STATUS ok, FAILED or ignored.
# shellcheck disable=SC2317 # called through direct/lane
regress_run() {
	local name=$1 host=$2 port=$3 out=$TMP/regress-$1 rc
	mkdir -p "$out"
	[ "$(id -u)" -eq 0 ] && chown "$PG_OS_USER:" "$out"
	(cd "$out" && as_pg_user timeout -k 10 "$REGRESS_TIMEOUT" "$PG_REGRESS" \
		--inputdir="$REGRESS_SRC" --outputdir="$out" --bindir="$PG_BIN" --dlpath="$BIN/regress" \
		--schedule="$REGRESS_SRC/parallel_schedule" --use-existing --dbname="$DB" \
		--host="$host" --port="$port") >"$out/pg_regress.log" 2>&1
	rc=$?
	sed -nE 's/^(test +|     )([A-Za-z0-9_.-]+) +\.\.\. (ok|FAILED|failed \(ignored\)).*/\2 \3/p' \
		"$out/pg_regress.log" | sed 's/failed (ignored)$/ignored/' >"$out/status"
	return "$rc"
}

# reused_backend_diff_only TEST: whether the only changed lines of TEST through pglane are PREPARE
# TRANSACTION's error after the temporary namespace was used (see the caller).
reused_backend_diff_only() {
	local changed
	changed=$(regress_diff pglane "$1" | grep -E '^[-+]' | grep -Ev '^(\+\+\+|---) ')
	[ -n "$changed" ] && ! printf '%s\n' "$changed" | grep -Evq \
		'^-ERROR:  cannot PREPARE a transaction that has operated on temporary objects$|^\+ERROR:  prepared transactions are disabled$|^\+HINT:  Set max_prepared_transactions to a nonzero value\.$'
}

# regress_diff NAME TEST: the part of NAME's regression.diffs about TEST (at most 80 lines).
regress_diff() {
	awk -v t="$2" '
		/^diff / { show = ($0 ~ ("/results/" t "\\.out$")) }
		show' "$TMP/regress-$1/regression.diffs" 2>/dev/null | head -n 80
}

# The schedule's tests, in order.
SCHEDULE_TESTS=$(sed -n 's/^test: *//p' "$REGRESS_SRC/parallel_schedule" | tr ' ' '\n' | sed '/^$/d')
N_SCHEDULE=$(printf '%s\n' "$SCHEDULE_TESTS" | wc -l)

t0=$(now_ms)
direct regress_run direct 127.0.0.1 "$PG_DIRECT_PORT"
rc_direct=$?
note "pg_regress directly (baseline): exit $rc_direct, $(elapsed "$t0"), $(grep -c ' ok$' "$TMP/regress-direct/status") of $N_SCHEDULE ok"
t0=$(now_ms)
lane regress_run pglane 127.0.0.1 "$LANE_PORT"
rc_lane=$?
note "pg_regress through pglane: exit $rc_lane, $(elapsed "$t0"), $(grep -c ' ok$' "$TMP/regress-pglane/status") of $N_SCHEDULE ok"

if [ ! -s "$TMP/regress-direct/status" ]; then
	note "$(tail -n 30 "$TMP/regress-direct/pg_regress.log")"
	fail "pg_regress directly (the baseline) ran" "no test result (exit $rc_direct)"
fi
if [ ! -s "$TMP/regress-pglane/status" ]; then
	note "$(tail -n 30 "$TMP/regress-pglane/pg_regress.log")"
	fail "pg_regress through pglane ran" "no test result (exit $rc_lane)"
fi

# same_output TEST: true when TEST's results/TEST.out is byte-identical directly and through pglane (both
# runs use a database of the same name, so nothing in a test's output should tell them apart).
same_output() {
	cmp -s "$TMP/regress-direct/results/$1.out" "$TMP/regress-pglane/results/$1.out"
}

# Both result sets, side by side; then one assertion per test: a test that passes directly must pass
# through pglane; a test that fails directly too (see below) must produce the very same output through
# pglane, so that it still checks that pglane changes nothing.
note "pg_regress results (test: directly / through pglane):"
table=
direct_fail=
only_lane_fail=
for t in $SCHEDULE_TESTS; do
	d=$(awk -v t="$t" '$1 == t { print $2 }' "$TMP/regress-direct/status")
	l=$(awk -v t="$t" '$1 == t { print $2 }' "$TMP/regress-pglane/status")
	table+=$(printf '%-28s %-8s %s' "$t" "${d:-missing}" "${l:-missing}")$'\n'
	if [ "$d" != ok ]; then
		direct_fail+=" $t"
	elif [ "$l" != ok ]; then
		only_lane_fail+=" $t"
	fi
done
note "$(printf '%-28s %-8s %s\n%s' test directly pglane "$table")"
note "tests that do not pass directly:${direct_fail:- none}"
note "tests that pass directly and not through pglane:${only_lane_fail:- none}"
differ=
for t in $SCHEDULE_TESTS; do
	d=$(awk -v t="$t" '$1 == t { print $2 }' "$TMP/regress-direct/status")
	l=$(awk -v t="$t" '$1 == t { print $2 }' "$TMP/regress-pglane/status")
	if [ "$d" = ok ]; then
		if [ "$l" = ok ]; then
			ok "pg_regress $t: passes directly and through pglane"
			same_output "$t" || differ+=" $t"
		elif [ "$t" = temp ] && reused_backend_diff_only "$t"; then
			# A reused server process (server_idle_timeout) is not a fresh one in one way this test sees:
			# its temporary namespace outlives DISCARD ALL, so a transaction that only names pg_temp has
			# not "operated on temporary objects", and PREPARE TRANSACTION reaches its next check.
			ok "pg_regress $t: through pglane differs only where a reused server process must (PREPARE TRANSACTION after pg_temp)"
			note "$(regress_diff pglane "$t")"
		else
			fail "pg_regress $t: passes directly, not through pglane" "${l:-no result}"
			note "$(regress_diff pglane "$t")"
		fi
		continue
	fi
	[ -n "$d" ] || continue # no direct result at all: reported above
	# Why it fails directly: the tests that name the database "regression" (information_schema's catalog
	# columns, psql's db.schema.name patterns, GRANT ... ON DATABASE regression) pass only in a database of
	# that name, which a timeline's database never is; the others differ between the test sources' version
	# and the installed psql/server (fetch.sh says which versions).
	why="differs from the expected output of $(cat "$TREE/.pglane-unpacked")"
	regress_diff direct "$t" | grep -Eq '^[-+].*\bregression\b([^_]|$)' &&
		why="expects a database named \"regression\""
	if same_output "$t"; then
		ok "pg_regress $t: fails directly too ($why), with the same output through pglane"
	else
		fail "pg_regress $t: fails directly ($why); through pglane it must fail the same way" "outputs differ"
		note "$(diff -u "$TMP/regress-direct/results/$t.out" "$TMP/regress-pglane/results/$t.out" | head -n 60)"
	fi
done
# Tests passing both ways may still match different alternative expected files: worth knowing, not a failure.
[ -z "$differ" ] || note "pass both ways, with outputs that differ (different alternative expected files):$differ"

# ---------------------------------------------------------------- 2. libpq_pipeline

t0=$(now_ms)
PIPE_DIR=$TMP/pipeline
TRACED="simple_pipeline nosync multi_pipelines prepared singlerow pipeline_abort pipeline_idle transaction disallowed_in_pipeline"
mkdir -p "$PIPE_DIR/pglane" "$PIPE_DIR/direct"
PIPE_TESTS=$("$PIPELINE" tests 2>&1) || stop "libpq_pipeline tests: $PIPE_TESTS"
note "libpq_pipeline tests: $(printf '%s\n' "$PIPE_TESTS" | tr '\n' ' ')"
for t in $PIPE_TESTS; do
	traced=0
	case " $TRACED " in *" $t "*) traced=1 ;; esac
	args=(-r 700)
	[ $traced = 1 ] && args+=(-t "$PIPE_DIR/pglane/$t.trace")
	out=$(lane timeout -k 5 120 "$PIPELINE" "${args[@]}" "$t" "" 2>&1)
	rc=$?
	# The same test directly, for the record (and as the trace reference should the shipped one not fit).
	dargs=(-r 700)
	[ $traced = 1 ] && dargs+=(-t "$PIPE_DIR/direct/$t.trace")
	dout=$(direct timeout -k 5 120 "$PIPELINE" "${dargs[@]}" "$t" "" 2>&1)
	drc=$?
	if [ $rc -eq 0 ]; then
		ok "libpq_pipeline $t through pglane"
	else
		fail "libpq_pipeline $t through pglane" "exit $rc: $(printf '%s\n' "$out" | tail -n 3)"
		note "directly: exit $drc: $(printf '%s\n' "$dout" | tail -n 3)"
	fi
	[ $traced = 1 ] || continue
	expected=$TREE/src/test/modules/libpq_pipeline/traces/$t.trace
	ref=$expected
	if ! cmp -s "$expected" "$PIPE_DIR/direct/$t.trace"; then
		note "libpq_pipeline $t: the shipped trace does not match even directly; the direct trace is the reference:"
		note "$(diff -u "$expected" "$PIPE_DIR/direct/$t.trace" | head -n 20)"
		ref=$PIPE_DIR/direct/$t.trace
	fi
	if cmp -s "$ref" "$PIPE_DIR/pglane/$t.trace"; then
		ok "libpq_pipeline $t: trace through pglane matches $( [ "$ref" = "$expected" ] && echo "the shipped trace" || echo "the direct trace")"
	else
		fail "libpq_pipeline $t: trace through pglane matches the expected trace" "see the diff below"
		note "$(diff -u "$ref" "$PIPE_DIR/pglane/$t.trace" | head -n 60)"
	fi
done
note "libpq_pipeline: $(elapsed "$t0")"

# ---------------------------------------------------------------- 3. pgbench

t0=$(now_ms)
# bench NAME ARGS...: pgbench through pglane (environment from `pglane env`, plus any VAR=VALUE given
# before the arguments via env); passes on exit 0, transactions processed and zero failed.
bench() {
	local name=$1 out rc processed failed
	shift
	out=$(lane env "$@" 2>&1)
	rc=$?
	processed=$(printf '%s\n' "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
	failed=$(printf '%s\n' "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
	if [ $rc -eq 0 ] && [ "${processed:-0}" -gt 0 ] && [ "$failed" = 0 ]; then
		ok "pgbench $name: $processed transactions, 0 failed"
	else
		fail "pgbench $name: transactions with zero failed" \
			"exit $rc, processed '${processed:-}', failed '${failed:-}': $(printf '%s\n' "$out" | grep -v '^progress' | tail -n 4)"
	fi
}

out=$(lane env PGSSLMODE=disable pgbench -i -q -s 1 2>&1)
check_eq "pgbench -i -s 1 through pglane (COPY, VACUUM, primary keys)" 0 "$?" || note "$(printf '%s\n' "$out" | tail -n 5)"
P=(pgbench -n -T "$PGBENCH_SECONDS" -c 4 -j 2)
for mode in simple extended prepared; do
	for script in tpcb-like simple-update select-only; do
		bench "-b $script -M $mode" PGSSLMODE=disable "${P[@]}" -b "$script" -M "$mode"
	done
done
for script in tpcb-like simple-update select-only; do
	bench "-b $script -M prepared -C" PGSSLMODE=disable "${P[@]}" -b "$script" -M prepared -C
done
for script in tpcb-like simple-update select-only; do
	bench "-b $script -M extended over TLS (PGSSLMODE=require)" PGSSLMODE=require "${P[@]}" -b "$script" -M extended
done
bench "-b tpcb-like -M simple -C over TLS (PGSSLMODE=require)" PGSSLMODE=require "${P[@]}" -b tpcb-like -M simple -C
bench "-b select-only -M prepared over TLS with verify-full against pglane's dev CA" PGSSLMODE=verify-full \
	PGSSLROOTCERT="$TMP/lanecerts/ca.crt" "${P[@]}" -b select-only -M prepared
note "pgbench: $(elapsed "$t0")"

# ---------------------------------------------------------------- pglane itself

if kill -0 "$PGLANE_PID" 2>/dev/null; then
	ok "pglane is still running after all of the above"
else
	fail "pglane is still running after all of the above" "it exited: $(tail -n 5 "$PGLANE_LOG")"
fi
pglane_stop "$PGLANE_PID"
san=$(grep -hE "ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:" "$PGLANE_LOG" 2>/dev/null | head -n 3)
check_eq "no sanitizer report in pglane's log" "" "$san"
if [ "$LIB_FAILED" -gt 0 ]; then
	note "pglane log (last 40 lines):"
	note "$(tail -n 40 "$PGLANE_LOG")"
fi
done_compat
