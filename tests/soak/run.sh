#!/usr/bin/env bash
# tests/soak/run.sh (`make soak`, never in CI): SOAK_SECONDS (default 600) of mixed pgbench load through
# pglane against one throwaway PostgreSQL (tests/integration/lib.sh), with faults injected on a schedule,
# ending with no errors beyond the injected ones and no growth of pglane's memory or file descriptors.
#
# Load, each stream restarted in short slices because pgbench aborts a client whose connection is lost:
#   select   pgbench -S, 8 clients, plaintext, at most SOAK_SELECT_RATE (4000; empty: no limit) transactions
#            a second, so that pglane's one core and the machine keep some headroom, slices of 23 s
#   tpcb     pgbench tpcb-like, 4 clients, client TLS (verify-full against the test CA), slices of 27 s
#   connect  pgbench -S -C (a SCRAM login per transaction), 2 clients, plaintext, slices of 29 s
# Every slice runs with -P 1, so that a stall (a second without a transaction) shows; stalls are reported,
# not judged.
# Faults:
#   SIGHUP every 15 s, alternating two valid files (the second adds an app, changes connect_timeout and
#          client_write_timeout); every reload re-reads the TLS certificate and reopens log_file
#   a CancelRequest every 7 s: `pqprobe --cancel-after 500` on SELECT pg_sleep(5) (plaintext) and
#          `timeout -s INT 4 psql` on SELECT pg_sleep(10) (TLS) in turn, expecting 57014
#   an instance restart (pg_ctl restart -m fast) every 2 minutes of the main phase, the first after 67 s,
#          none in its last 30 s; then one new session through pglane must work at once
# Phases: a warm-up (60 s, or a third of a shorter run; reloads and cancels, no restart), a few seconds idle,
# the idle baseline (VmRSS from /proc/PID/status, open fds from /proc/PID/fd), the main phase (the rest of
# SOAK_SECONDS, a sample every 10 s), all load stopped, a few seconds idle, the final sample.
#
# Pass criteria: pglane is alive at the end and still serves; no pgbench slice has an error (failed
# transaction, aborted client, failed start, non-zero exit) unless it overlaps an injected restart (from
# 1 s before pg_ctl restart to 3 s after it returned); a slice that hung (killed by its timeout) always
# counts; after each restart the first new session through pglane works; every cancel outside a restart ends
# in 57014; every SIGHUP is logged as a reload of the file it installed and none is rejected;
# the final fd count is the baseline's, within SOAK_FD_SLACK (3); VmRSS, the final sample and every sample
# under load, stays within the baseline + max(SOAK_RSS_SLACK_PCT % (10), SOAK_RSS_SLACK_KB (4096)).
# Prints ok / not ok lines and ends with "N passed, N failed"; exit 1 when anything failed.
#
# Environment: SOAK_SECONDS (at least 60), SOAK_SCALE (pgbench -i scale, 4), SOAK_SELECT_RATE, SOAK_FD_SLACK,
# SOAK_RSS_SLACK_PCT, SOAK_RSS_SLACK_KB, and lib.sh's PGLANE_BUILD, PGLANE_BIN, PGLANE_TEST_KEEP (keep the
# temporary directory: pgbench's output per slice, pglane's log, the fd listings at baseline and at the end).
# All traffic is on 127.0.0.1; everything started here is stopped on exit.
set -u
# shellcheck source=SCRIPTDIR/../integration/lib.sh disable=SC1091
. "$(dirname "$0")/../integration/lib.sh"

SOAK_SECONDS=${SOAK_SECONDS:-600}
SOAK_SCALE=${SOAK_SCALE:-4}
FD_SLACK=${SOAK_FD_SLACK:-3}
RSS_SLACK_PCT=${SOAK_RSS_SLACK_PCT:-10}
RSS_SLACK_KB=${SOAK_RSS_SLACK_KB:-4096}
SELECT_RATE=${SOAK_SELECT_RATE-4000}
for v in SOAK_SECONDS SOAK_SCALE FD_SLACK RSS_SLACK_PCT RSS_SLACK_KB; do
	if ! [[ ${!v} =~ ^[0-9]+$ ]]; then
		echo "run.sh: $v must be a whole number, got '${!v}'" >&2
		exit 2
	fi
done
if [ -n "$SELECT_RATE" ] && ! [[ $SELECT_RATE =~ ^[1-9][0-9]*$ ]]; then
	echo "run.sh: SOAK_SELECT_RATE must be a positive whole number or empty, got '$SELECT_RATE'" >&2
	exit 2
fi
if [ "$SOAK_SECONDS" -lt 60 ]; then
	echo "run.sh: SOAK_SECONDS must be at least 60" >&2
	exit 2
fi

WARMUP_S=60
[ "$SOAK_SECONDS" -lt 180 ] && WARMUP_S=$((SOAK_SECONDS / 3))
MAIN_S=$((SOAK_SECONDS - WARMUP_S))
SAMPLE_EVERY_S=10
HUP_EVERY_S=15
CANCEL_EVERY_S=7
RESTART_FIRST_S=67     # into the main phase (off the slices' boundaries)
RESTART_EVERY_S=120
RESTART_QUIET_S=30     # no restart in the last seconds of the main phase
RESTART_BEFORE_MS=1000 # a slice this close before a restart, or
RESTART_AFTER_MS=3000  # this close after pg_ctl returned, overlaps it
IDLE_SETTLE_S=5

# soak_end: the closing "N passed, N failed" line and the exit status; lib.sh's cleanup then stops everything.
soak_end() {
	# shellcheck disable=SC2034 # read by lib.sh's cleanup
	LIB_FINISHED=1
	echo "$LIB_PASSED passed, $LIB_FAILED failed"
	[ "$LIB_FAILED" -eq 0 ]
	exit
}

soak_bail() {
	fail "setup" "$1"
	soak_end
}

[ -x "$PQPROBE" ] || soak_bail "$PQPROBE is not built (make unit-bins)"
[ -x "$PGLANE" ] || soak_bail "$PGLANE is not built (make pglane)"
command -v pgbench >/dev/null 2>&1 || soak_bail "pgbench is not installed"

SLICES=$TMP/slices
EVENTS=$TMP/events     # one line per slice, reload, cancel and restart, appended by the workers
CHILDREN=$TMP/children # the pid of each worker's current child, for the exit trap
mkdir -p "$SLICES" "$CHILDREN" || soak_bail "mkdir"
: >"$EVENTS"

# Workers run in background subshells: on exit, stop each worker's current child (timeout, which passes
# the signal on to pgbench, psql or pqprobe) before lib.sh's cleanup stops the workers themselves.
# shellcheck disable=SC2317 # called by the traps
soak_cleanup() {
	local f pid
	for f in "$CHILDREN"/*; do
		[ -f "$f" ] || continue
		pid=$(cat "$f" 2>/dev/null)
		[ -n "$pid" ] && kill "$pid" 2>/dev/null
	done
	[ -n "$NAP_PID" ] && kill "$NAP_PID" 2>/dev/null
	return 0
}

# nap SECONDS: sleep, but let a signal's trap run at once (bash runs it only after a foreground command).
NAP_PID=
nap() {
	sleep "$1" &
	NAP_PID=$!
	wait "$NAP_PID"
	NAP_PID=
}
# shellcheck disable=SC2154 # soak_status is set by the trap itself
trap 'soak_status=$?; soak_cleanup; (exit "$soak_status"); lib_cleanup' EXIT

# ---------------------------------------------------------------- PostgreSQL and pglane

pg_start main || soak_bail "pg_start main"
pg_createdb main demo-production >/dev/null || soak_bail "create database demo-production"
if pgbench -i -q -s "$SOAK_SCALE" -h "$PG_MAIN_SOCKDIR" -p "$PG_MAIN_PORT" -U postgres demo-production \
	>"$TMP/pgbench-init.log" 2>&1; then
	ok "pgbench -i -s $SOAK_SCALE on demo-production (directly, as the superuser)"
else
	soak_bail "pgbench -i: $(tail -n 5 "$TMP/pgbench-init.log")"
fi
PG_LOGFILE=$PG_MAIN_SOCKDIR/postgres.log

LANE_PORT=''
free_port_var LANE_PORT || soak_bail "free_port"
CONF=$TMP/pglane.ini
CONF_A=$TMP/pglane-a.ini
CONF_B=$TMP/pglane-b.ini
SOAK_LOG=$TMP/pglane-soak.log
ADMIN_PW=$(openssl rand -hex 16)
DEMO_SECRET=$(openssl rand -hex 24)
SPARE_SECRET=$(openssl rand -hex 24)

# write_conf a|b FILE: the two valid configurations the reloads alternate between (same listen, same demo).
write_conf() {
	{
		echo "; pglane configuration $1 written by tests/soak/run.sh"
		echo "[pglane]"
		echo "listen = 127.0.0.1:$LANE_PORT"
		if [ "$1" = a ]; then
			echo "connect_timeout = 10"
		else
			echo "connect_timeout = 12"
			echo "client_write_timeout = 90"
		fi
		echo "login_timeout = 10"
		echo "tls_cert = $CERTS/server.crt"
		echo "tls_key = $CERTS/server.key"
		echo "admin_user = soak"
		echo "admin_password = $ADMIN_PW"
		echo "log_file = $SOAK_LOG"
		echo
		echo "[instance main]"
		echo "url = postgresql://postgres:$PG_MAIN_PASSWORD@localhost:$PG_MAIN_PORT/postgres?sslmode=verify-full"
		echo "ca_file = $TEST_CA"
		echo
		echo "[app demo]"
		echo "instance = main"
		echo "secret = $DEMO_SECRET"
		echo "provision = manual"
		if [ "$1" = b ]; then
			echo
			echo "[app spare]"
			echo "instance = main"
			echo "secret = $SPARE_SECRET"
		fi
	} >"$2.tmp" && chmod 600 "$2.tmp" && mv -f "$2.tmp" "$2"
}
if ! { write_conf a "$CONF_A" && write_conf b "$CONF_B" && cp "$CONF_A" "$CONF"; }; then
	soak_bail "writing the configurations"
fi
out=$({ "$PGLANE" check -c "$CONF_A" && "$PGLANE" check -c "$CONF_B"; } 2>&1)
check_eq "pglane check accepts both configurations the reloads alternate between" 0 "$?" || note "$out"

pglane_start "$CONF" || soak_bail "pglane did not start: $(tail -n 5 "$PGLANE_LOG" "$SOAK_LOG" 2>/dev/null)"
LANE_PID=${PGLANE_PID:-}
LANE_ENV=$("$PGLANE" env -c "$CONF" demo --production --format shell) || soak_bail "pglane env"

# lane MODE CMD...: execs CMD with demo-production's variables from `pglane env`; MODE plain or tls.  It
# replaces the calling shell, so it is only called in a subshell: $(lane ...) or run_child's background job
# (whose pid is then CMD's own, which the exit trap can stop).
lane() {
	local mode=$1
	shift
	eval "$LANE_ENV"
	if [ "$mode" = tls ]; then
		export PGSSLMODE=verify-full PGSSLROOTCERT=$TEST_CA
	else
		export PGSSLMODE=disable
	fi
	exec "$@"
}

out=$(lane plain "$PQPROBE" --timeout 20 "" "SELECT current_database()" 2>&1)
check_eq "a plaintext session through pglane reaches demo-production" demo-production "$out"
out=$(lane tls "$PQPROBE" --timeout 20 "" "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()" 2>&1)
check_eq "a TLS session through pglane works, and pglane reaches the instance over TLS" t "$out"

# ---------------------------------------------------------------- workers

# run_child NAME CMD...: runs CMD in the background as the worker's current child and waits for it, so that
# a TERM to the worker (trapped) can stop it; the child's status is in CHILD_RC.
# shellcheck disable=SC2317 # called by the workers
run_child() {
	local name=$1
	shift
	"$@" &
	echo $! >"$CHILDREN/$name"
	wait $!
	CHILD_RC=$?
	: >"$CHILDREN/$name"
}

# stream NAME PHASE END_MS SLICE_S MODE PGBENCH-ARGS...: pgbench slices until END_MS; one SLICE line each:
#   SLICE NAME PHASE IDX START_MS END_MS RC PROCESSED FAILED ABORTED LOGFILE
# shellcheck disable=SC2317 # run through bg_start
stream() {
	local name=$1 phase=$2 end=$3 slice=$4 mode=$5 idx=0 now left dur start stop log processed failed aborted
	shift 5
	trap 'soak_cleanup; exit 0' TERM
	while :; do
		now=$(now_ms)
		left=$(((end - now) / 1000))
		[ "$left" -ge 3 ] || break
		dur=$slice
		[ "$dur" -gt "$left" ] && dur=$left
		idx=$((idx + 1))
		log=$SLICES/$phase-$name-$idx.log
		start=$(now_ms)
		run_child "$name" lane "$mode" timeout -k 5 $((dur + 60)) pgbench -n -T "$dur" -P 1 --progress-timestamp "$@" \
			>"$log" 2>&1
		stop=$(now_ms)
		processed=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$log" | head -n 1)
		failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$log" | head -n 1)
		aborted=$(grep -Ec 'client [0-9]+ .*aborted' "$log")
		echo "SLICE $name $phase $idx $start $stop $CHILD_RC ${processed:-0} ${failed:-0} $aborted $log" >>"$EVENTS"
		# a slice that lost its clients (or could not start) ends early: do not spin while the instance is down
		if [ "$CHILD_RC" -ne 0 ] || [ "${failed:-0}" != 0 ] || [ "$aborted" -gt 0 ]; then
			sleep 1
		fi
	done
}

# do_hup PHASE: installs the other configuration atomically and sends SIGHUP.
# shellcheck disable=SC2317 # called by faults
do_hup() {
	local n variant=a
	n=$(grep -c '^HUP ' "$EVENTS")
	[ $((n % 2)) -eq 0 ] && variant=b
	if [ "$variant" = a ]; then cp "$CONF_A" "$CONF.tmp"; else cp "$CONF_B" "$CONF.tmp"; fi
	mv -f "$CONF.tmp" "$CONF"
	kill -HUP "$LANE_PID" 2>/dev/null
	echo "HUP $1 $(now_ms) $variant" >>"$EVENTS"
}

# do_cancel PHASE K: SELECT pg_sleep(5) cancelled through pglane, by pqprobe (plaintext) or psql's SIGINT
# handler (TLS) in turn.  CANCEL PHASE T0 T1 METHOD ok|bad DETAIL
# shellcheck disable=SC2317 # called by faults
do_cancel() {
	local phase=$1 k=$2 t0 t1 out method verdict=bad
	t0=$(now_ms)
	if [ $((k % 2)) -eq 0 ]; then
		method=pqprobe
		out=$(run_child cancel lane plain timeout -k 5 30 "$PQPROBE" --timeout 20 --cancel-after 500 "" \
			"SELECT pg_sleep(5)" 2>&1)
		t1=$(now_ms)
		[[ $out =~ ^SQLSTATE\ 57014\ ELAPSED_MS\ [0-9]+$ ]] && verdict=ok
	else
		method=psql
		out=$(run_child cancel lane tls timeout -k 5 -s INT 4 psql -X -At -c 'SELECT pg_sleep(10)' 2>&1)
		t1=$(now_ms)
		if [[ $out == *"canceling statement due to user request"* ]] && [ $((t1 - t0)) -lt 9000 ]; then
			verdict=ok
		fi
	fi
	out=${out//$'\n'/ | }
	echo "CANCEL $phase $t0 $t1 $method $verdict $((t1 - t0))ms $out" >>"$EVENTS"
}

# do_restart PHASE: pg_ctl restart -m fast, then one new session through pglane.
#   RESTART PHASE START_MS END_MS PG_CTL_RC PROBE_ATTEMPTS PROBE_OK_MS LAST_PROBE_OUTPUT
# shellcheck disable=SC2317 # called by faults
do_restart() {
	local phase=$1 rs re rc attempts=0 out='' pok=-1 deadline
	rs=$(now_ms)
	as_pg_user "$PG_BIN/pg_ctl" -D "$PG_MAIN_DATA" -l "$PG_LOGFILE" -m fast -w -t 60 restart \
		>>"$TMP/pg_ctl-restart.log" 2>&1
	rc=$?
	re=$(now_ms)
	deadline=$((re + 15000))
	while [ "$(now_ms)" -lt "$deadline" ]; do
		attempts=$((attempts + 1))
		out=$(run_child probe lane plain "$PQPROBE" --timeout 10 "" "SELECT current_database()" 2>&1)
		if [ "$out" = demo-production ]; then
			pok=$(now_ms)
			break
		fi
		sleep 0.5
	done
	out=${out//$'\n'/ | }
	echo "RESTART $phase $rs $re $rc $attempts $pok $out" >>"$EVENTS"
}

# faults PHASE END_MS RESTARTS: reloads and cancels (and restarts when RESTARTS is 1) until END_MS.
# shellcheck disable=SC2317 # run through bg_start
faults() {
	local phase=$1 end=$2 restarts=$3 t0 now next_hup next_cancel next_restart k=0
	trap 'soak_cleanup; exit 0' TERM
	t0=$(now_ms)
	next_hup=$((t0 + HUP_EVERY_S * 1000))
	next_cancel=$((t0 + 3000))
	next_restart=$((t0 + RESTART_FIRST_S * 1000))
	while :; do
		now=$(now_ms)
		[ "$now" -lt $((end - 2000)) ] || break
		if [ "$now" -ge "$next_hup" ]; then
			do_hup "$phase"
			next_hup=$((next_hup + HUP_EVERY_S * 1000))
		fi
		if [ "$restarts" = 1 ] && [ "$now" -ge "$next_restart" ]; then
			[ "$now" -lt $((end - RESTART_QUIET_S * 1000)) ] && do_restart "$phase"
			next_restart=$((next_restart + RESTART_EVERY_S * 1000))
		fi
		if [ "$now" -ge "$next_cancel" ]; then
			do_cancel "$phase" "$k"
			k=$((k + 1))
			next_cancel=$((next_cancel + CANCEL_EVERY_S * 1000))
		fi
		sleep 0.5
	done
}

WORKERS=()
# start_phase PHASE SECONDS RESTARTS: starts the three pgbench streams and the fault schedule.
start_phase() {
	local end
	end=$(($(now_ms) + $2 * 1000))
	WORKERS=()
	bg_start stream select "$1" "$end" 23 plain -b select-only -c 8 -j 2 ${SELECT_RATE:+-R "$SELECT_RATE"}
	WORKERS+=("$BG_PID")
	bg_start stream tpcb "$1" "$end" 27 tls -b tpcb-like -c 4 -j 1
	WORKERS+=("$BG_PID")
	bg_start stream connect "$1" "$end" 29 plain -b select-only -C -c 2 -j 1
	WORKERS+=("$BG_PID")
	bg_start faults "$1" "$end" "$3"
	WORKERS+=("$BG_PID")
	PHASE_END=$end
}

wait_workers() {
	local pid
	for pid in "${WORKERS[@]}"; do
		wait "$pid"
	done
}

# sample: sets RSS_KB and FDS from /proc (empty when pglane is gone).
sample() {
	RSS_KB=$(awk '/^VmRSS:/ {print $2}' "/proc/$LANE_PID/status" 2>/dev/null)
	FDS=$(find "/proc/$LANE_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
	[ -n "$RSS_KB" ] || FDS=
}

# fd_list FILE: pglane's open files by target, socket and pipe inode numbers dropped.
fd_list() {
	local fd
	for fd in "/proc/$LANE_PID/fd"/*; do
		readlink "$fd" 2>/dev/null
	done | sed 's/\[[0-9]*\]$/[]/' | sort | uniq -c >"$1"
}

SERIES=()
record_sample() {
	sample
	SERIES+=("$(printf '%-12s %8s kB %5s fds' "$1" "${RSS_KB:-gone}" "${FDS:-gone}")")
	note "sample $1: VmRSS ${RSS_KB:-gone} kB, ${FDS:-gone} fds"
}

# ---------------------------------------------------------------- warm-up, baseline, main phase

note "soak: ${SOAK_SECONDS} s = ${WARMUP_S} s warm-up + ${MAIN_S} s main phase; pglane pid $LANE_PID on 127.0.0.1:$LANE_PORT"
sample
note "at start: VmRSS $RSS_KB kB, $FDS fds"
start_phase warmup "$WARMUP_S" 0
wait_workers
nap "$IDLE_SETTLE_S"
record_sample baseline
BASE_RSS=${RSS_KB:-0}
BASE_FDS=${FDS:-0}
fd_list "$TMP/fds-baseline.txt"
[ -n "$RSS_KB" ] || soak_bail "pglane died during the warm-up: $(tail -n 5 "$PGLANE_LOG" "$SOAK_LOG")"

MAIN_T0=$(now_ms)
start_phase main "$MAIN_S" 1
LOADED_RSS_MAX=0
LOADED_FDS_MAX=0
next=$((MAIN_T0 + SAMPLE_EVERY_S * 1000))
while [ "$next" -lt $((PHASE_END - 1000)) ]; do
	wait_ms=$((next - $(now_ms)))
	[ "$wait_ms" -gt 0 ] && nap "$((wait_ms / 1000)).$(printf '%03d' $((wait_ms % 1000)))"
	record_sample "+$(((next - MAIN_T0) / 1000))s"
	[ "${RSS_KB:-0}" -gt "$LOADED_RSS_MAX" ] && LOADED_RSS_MAX=$RSS_KB
	[ "${FDS:-0}" -gt "$LOADED_FDS_MAX" ] && LOADED_FDS_MAX=$FDS
	next=$((next + SAMPLE_EVERY_S * 1000))
done
wait_workers
nap "$IDLE_SETTLE_S"
record_sample final
FINAL_RSS=${RSS_KB:-}
FINAL_FDS=${FDS:-}
[ -n "$FINAL_RSS" ] && fd_list "$TMP/fds-final.txt"

# ---------------------------------------------------------------- verdicts

note "VmRSS and fd series (baseline: idle after the warm-up; final: idle after all load stopped):"
for line in "${SERIES[@]}"; do
	note "  $line"
done

if [ -n "$FINAL_RSS" ] && kill -0 "$LANE_PID" 2>/dev/null; then
	ok "pglane (pid $LANE_PID) is alive after the soak"
else
	fail "pglane (pid $LANE_PID) is alive after the soak" "it exited: $(tail -n 5 "$PGLANE_LOG" "$SOAK_LOG" 2>&1)"
fi
out=$(lane plain "$PQPROBE" --timeout 20 "" "SELECT current_database()" 2>&1)
check_eq "a new session through pglane works after the soak" demo-production "$out"

# restart windows
RW_FROM=()
RW_TO=()
restarts=0 restart_bad=''
while read -r _ _ rs re rc attempts pok rest; do
	restarts=$((restarts + 1))
	RW_FROM+=($((rs - RESTART_BEFORE_MS)))
	RW_TO+=($((re + RESTART_AFTER_MS)))
	note "restart at +$(((rs - MAIN_T0) / 1000))s: pg_ctl took $((re - rs)) ms (exit $rc); first new session through pglane ok after $attempts attempt(s)${rest:+, last: $rest}"
	if [ "$rc" != 0 ] || [ "$pok" = -1 ] || [ "$attempts" != 1 ]; then
		restart_bad="$restart_bad [+$(((rs - MAIN_T0) / 1000))s pg_ctl $rc, $attempts probes, last '$rest']"
	fi
done < <(grep '^RESTART ' "$EVENTS")
if [ "$restarts" -eq 0 ]; then
	fail "instance restarts were injected" "none ran (the main phase of $MAIN_S s is too short?)"
elif [ -z "$restart_bad" ]; then
	ok "$restarts instance restart(s) (pg_ctl restart -m fast): each time the first new session through pglane worked"
else
	fail "after each instance restart the first new session through pglane works" "$restart_bad"
fi

# overlaps_restart FROM_MS TO_MS: true when [FROM, TO] meets a restart window.
overlaps_restart() {
	local i
	for i in "${!RW_FROM[@]}"; do
		if [ "$1" -le "${RW_TO[$i]}" ] && [ "$2" -ge "${RW_FROM[$i]}" ]; then
			return 0
		fi
	done
	return 1
}

# pgbench slices, per stream
for name in select tpcb connect; do
	slices=0 tx=0 inj_err=0 inj_slices=0 bad_err=0 bad_logs=()
	while read -r _ _ phase idx start stop rc processed failed aborted log; do
		slices=$((slices + 1))
		tx=$((tx + processed))
		errors=$((failed + aborted))
		[ "$rc" -ne 0 ] && [ "$errors" -eq 0 ] && errors=1
		[ "$errors" -eq 0 ] && continue
		if [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] && overlaps_restart "$start" "$stop"; then
			inj_err=$((inj_err + errors))
			inj_slices=$((inj_slices + 1))
		else
			bad_err=$((bad_err + errors))
			bad_logs+=("$phase slice $idx (exit $rc, $processed tx, $failed failed, $aborted aborted, $(((start - MAIN_T0) / 1000))s..$(((stop - MAIN_T0) / 1000))s from the main phase's start): $log")
		fi
	done < <(grep "^SLICE $name " "$EVENTS")
	summary="$name: $slices slices, $tx transactions; $inj_err errors in $inj_slices slices overlapping a restart (injected)"
	if [ "$slices" -gt 0 ] && [ "$tx" -gt 0 ] && [ "$bad_err" -eq 0 ]; then
		ok "pgbench $summary, none elsewhere"
	else
		fail "pgbench $name: no error outside the injected restarts" "$summary; $bad_err errors elsewhere"
		for b in "${bad_logs[@]}"; do
			note "$b"
			note "$(grep -Ei 'error|abort|fatal|timeout' "${b##*: }" | head -n 5)"
		done
	fi
done

# stalls: whole seconds in which a stream completed no transaction (pgbench -P 1), outside the restarts.
# Information only: on a shared machine a stall can be the machine's, not pglane's.
for name in select tpcb connect; do
	zero=0 run=0 longest=0 longest_at=0 prev=0
	while read -r ts tps; do
		if [ "$tps" = 0 ] && ! overlaps_restart $((ts - 1000)) "$ts"; then
			zero=$((zero + 1))
			if [ $((ts - prev)) -le 1100 ]; then run=$((run + 1)); else run=1; fi
			prev=$ts
			if [ "$run" -gt "$longest" ]; then
				longest=$run
				longest_at=$ts
			fi
		fi
	done < <(cat "$SLICES"/*-"$name"-*.log 2>/dev/null |
		awk '/^progress: / {t = $4; sub(/,$/, "", t); printf "%.0f %d\n", $2 * 1000, t + 0.5}')
	msg="stalls, $name: $zero one-second intervals with no transaction outside the restarts"
	[ "$longest" -gt 0 ] && msg="$msg; longest $longest s, ending $(((longest_at - MAIN_T0) / 1000)) s into the main phase"
	note "$msg"
done

# cancels
c_ok=0 c_inj=0 c_bad=0 c_bad_lines=() c_max=0
while read -r _ _ t0 t1 method verdict rest; do
	if [ "$verdict" = ok ]; then
		c_ok=$((c_ok + 1))
		if [[ $rest =~ ELAPSED_MS\ ([0-9]+) ]] && [ "${BASH_REMATCH[1]}" -gt "$c_max" ]; then
			c_max=${BASH_REMATCH[1]}
		fi
	elif overlaps_restart "$t0" "$t1"; then
		c_inj=$((c_inj + 1))
	else
		c_bad=$((c_bad + 1))
		c_bad_lines+=("$method $rest")
	fi
done < <(grep '^CANCEL ' "$EVENTS")
if [ "$c_ok" -gt 0 ] && [ "$c_bad" -eq 0 ]; then
	ok "cancels (pqprobe plaintext, psql SIGINT over TLS): $c_ok ended in 57014 ($c_inj failed during a restart)"
	note "pqprobe cancels: the slowest query ended $c_max ms after it was sent (the cancel left after 500 ms)"
else
	fail "every cancel outside a restart ends in 57014" "$c_ok ok, $c_inj during a restart, $c_bad failed"
	for b in "${c_bad_lines[@]}"; do
		note "cancel: $b"
	done
fi

# reloads
# configuration a has one app, b two: the reloads logged must alternate the same way
hups=$(grep -c '^HUP ' "$EVENTS")
hups_b=$(grep -c '^HUP .* b$' "$EVENTS")
reloaded=$(grep -c ' reloaded .*: [0-9]* instances, [0-9]* apps' "$SOAK_LOG")
reloaded_b=$(grep -c ' reloaded .*: 1 instances, 2 apps' "$SOAK_LOG")
rejected=$(grep -c 'reload rejected' "$SOAK_LOG")
if [ "$hups" -gt 0 ] && [ "$reloaded" -eq "$hups" ] && [ "$reloaded_b" -eq "$hups_b" ] && [ "$rejected" -eq 0 ]; then
	ok "$hups SIGHUPs alternating two configurations: $reloaded reloads logged ($reloaded_b with the second app), none rejected"
else
	fail "every SIGHUP is logged as a reload of the file it installed, none rejected" \
		"$hups SIGHUPs ($hups_b to the two-app file), $reloaded reloaded ($reloaded_b with two apps), $rejected rejected"
fi

# file descriptors and memory
if [ -n "$FINAL_FDS" ] && [ "$FINAL_FDS" -ge $((BASE_FDS - FD_SLACK)) ] && [ "$FINAL_FDS" -le $((BASE_FDS + FD_SLACK)) ]; then
	ok "open fds back to the baseline when idle: $BASE_FDS after the warm-up, $FINAL_FDS at the end (peak under load $LOADED_FDS_MAX)"
else
	fail "open fds back to the baseline ($BASE_FDS ± $FD_SLACK) when idle" "final ${FINAL_FDS:-gone}, peak under load $LOADED_FDS_MAX"
	if [ -f "$TMP/fds-final.txt" ]; then
		note "fds by target, baseline vs final:"
		note "$(diff "$TMP/fds-baseline.txt" "$TMP/fds-final.txt")"
	fi
fi
slack=$((BASE_RSS * RSS_SLACK_PCT / 100))
[ "$slack" -lt "$RSS_SLACK_KB" ] && slack=$RSS_SLACK_KB
limit=$((BASE_RSS + slack))
if [ -n "$FINAL_RSS" ] && [ "$FINAL_RSS" -le "$limit" ]; then
	ok "VmRSS at the end within baseline + $slack kB: $BASE_RSS -> $FINAL_RSS kB ($((FINAL_RSS - BASE_RSS)) kB)"
else
	fail "VmRSS at the end within baseline $BASE_RSS + $slack kB" "final ${FINAL_RSS:-gone} kB"
fi
if [ "$LOADED_RSS_MAX" -le "$limit" ]; then
	ok "VmRSS under load within baseline + $slack kB: peak $LOADED_RSS_MAX kB"
else
	fail "VmRSS under load within baseline $BASE_RSS + $slack kB" "peak $LOADED_RSS_MAX kB"
fi

# pglane's own log
san=$(grep -hE "ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:" "$PGLANE_LOG" "$SOAK_LOG" 2>/dev/null | head -n 3)
check_eq "no sanitizer report in pglane's logs" "" "$san"
note "pglane log lines by level: $(awk '{n[$2]++} END {for (l in n) printf "%s=%d ", l, n[l]}' "$SOAK_LOG")"
out=$(awk '$2 == "warning" || $2 == "error"' "$SOAK_LOG" | cut -d' ' -f2- |
	sed -E 's/ C-[0-9]+ / /; s/127\.0\.0\.1:[0-9]+/127.0.0.1:*/g' | sort | uniq -c | sort -rn | head -n 15)
if [ -n "$out" ]; then
	note "pglane's warnings and errors (connection ids and client ports dropped), by count:"
	note "$out"
fi
note "PostgreSQL's log: $(grep -c 'disconnection: session time' "$PG_LOGFILE") disconnections, $(grep -c 'could not receive data from client: Connection reset by peer' "$PG_LOGFILE") of them after 'could not receive data from client: Connection reset by peer'"
out=$(PGSSLMODE=disable PGPASSWORD=$ADMIN_PW timeout 20 psql -X -At -F ' ' -h 127.0.0.1 -p "$LANE_PORT" -U soak -d pglane \
	-c 'SHOW STATS' 2>&1)
note "SHOW STATS after the soak:"
note "$out"

if [ "$LIB_FAILED" -gt 0 ]; then
	note "pglane log (last 30 lines):"
	note "$(tail -n 30 "$SOAK_LOG")"
	[ "${PGLANE_TEST_KEEP:-0}" = 1 ] || note "(PGLANE_TEST_KEEP=1 keeps $TMP: slice logs, events, fd listings)"
fi
soak_end
