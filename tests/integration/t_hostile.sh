#!/usr/bin/env bash
# t_hostile.sh: pglane against hostile clients, from raw sockets (build/tools/rawclient): absurd lengths,
# unterminated and garbage startup packets, an SSLRequest with plaintext behind it, a forged log line in a
# parameter name, 500 silent connections (login_timeout frees them), random CancelRequests (never cancel
# anything), floods of wrong passwords (the same 28P01 whether or not the app exists), floods of startups
# naming new branches (no more CPU and no slower answer than for an app that does not exist), SCRAM salts
# that stay the same across a restart for missing apps as for existing ones, and clients that stop reading
# in the middle of a 1 GB result, with and without TLS (pglane's memory stays bounded).  Throughout, a
# well-behaved libpq client (pqprobe) keeps working; at the end pglane is alive, its file descriptors are
# back to where they started and it logged no sanitizer report.
set -u
# shellcheck source=SCRIPTDIR/lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"

RAWCLIENT=$BUILD_DIR/tools/rawclient
[ -x "$PQPROBE" ] || bail "$PQPROBE is not built (make unit-bins)"
[ -x "$RAWCLIENT" ] || bail "$RAWCLIENT is not built (make unit-bins)"
[ -x "$PGLANE" ] || bail "$PGLANE is not built (make pglane)"

pg_start main || bail "pg_start main"
LANE_PORT=''
free_port_var LANE_PORT || bail "free_port"

LOGIN_TIMEOUT=2
CONF=$TMP/pglane.ini
cat >"$CONF" <<EOF
; pglane configuration written by t_hostile.sh
[pglane]
listen = 127.0.0.1:$LANE_PORT
connect_timeout = 2
login_timeout = $LOGIN_TIMEOUT
tls_cert = $CERTS/server.crt
tls_key = $CERTS/server.key

[instance main]
url = postgresql://postgres:$PG_MAIN_PASSWORD@localhost:$PG_MAIN_PORT/postgres?sslmode=verify-full
ca_file = $TEST_CA

[app demo]
instance = main
secret = $(openssl rand -hex 24)
production_branch = main
EOF
chmod 600 "$CONF"
pg_createdb main demo-production || bail "create database demo-production"
pglane_start "$CONF" || bail "pglane did not start"
ok "pglane listens on 127.0.0.1:$LANE_PORT (TLS allowed, login_timeout = $LOGIN_TIMEOUT)"

# ---------------------------------------------------------------- helpers


# probe [ENV-ASSIGNMENTS...]: pqprobe as demo/production, with optional overrides passed to env(1).
# PROBE_ENV holds overrides for every client of this script (PGSSLMODE=disable when TLS is broken).
PROBE_ENV=()
probe() {
	in_env demo --production -- env "${PROBE_ENV[@]}" "$@" "$PQPROBE" --timeout 20 ""
}

# good_client WHEN: the well-behaved client still lands in its database.
good_client() {
	check_eq "a well-behaved client still works ($1)" demo-production "$(probe)"
}

# raw STEP...: rawclient against pglane (see rawclient.c for the steps), its lines joined by blanks.
raw() {
	"$RAWCLIENT" --timeout 5 127.0.0.1 "$LANE_PORT" "$@" 2>&1 | paste -sd ' ' -
}

fd_count() {
	find "/proc/$PGLANE_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l
}

rss_kb() {
	awk '/^VmRSS:/ {print $2}' "/proc/$PGLANE_PID/status" 2>/dev/null
}

# cpu_ticks: pglane's user + system time so far, in clock ticks.
cpu_ticks() {
	awk '{print $14 + $15}' "/proc/$PGLANE_PID/stat" 2>/dev/null
}

# wait_fds_at_most N SECONDS: true once pglane holds at most N descriptors.
wait_fds_at_most() {
	local deadline=$(($(now_ms) + $2 * 1000))
	while [ "$(now_ms)" -lt "$deadline" ]; do
		[ "$(fd_count)" -le "$1" ] && return 0
		sleep 0.1
	done
	[ "$(fd_count)" -le "$1" ]
}

# hex_of TEXT: the bytes of TEXT (printf escapes allowed, \0 included) as hex.
hex_of() {
	# shellcheck disable=SC2059 # TEXT carries the escapes on purpose
	printf "$1" | od -An -v -tx1 | tr -d ' \n'
}

# startup_hex BODY-HEX: a packet with the protocol 3.0 code and BODY, its length word counting both.
startup_hex() {
	printf '%08x00030000%s' $((${#1} / 2 + 8)) "$1"
}

# is_refusal RESULT: pglane said no and closed: an 08P01 (maybe after other messages), EOF or RESET.
is_refusal() {
	[[ $1 =~ (^|\ )(E:08P01|EOF|RESET)($|\ ) ]] && [[ $1 != *TIMEOUT* ]] && [[ $1 != *R:* ]]
}

# `pglane env` says sslmode=require here: the first login goes through pglane's TLS.  Should that be
# broken, the rest of the script runs its clients without TLS, so that it still tests what it is about.
out=$(probe)
if ! check_eq "a libpq client logs in through pglane's TLS (sslmode=require)" demo-production "$out"; then
	PROBE_ENV=(PGSSLMODE=disable)
	note "the clients below use sslmode=disable"
	good_client "at the start, without TLS"
fi
# A worker keeps a socket it opens at its first session: with SO_REUSEPORT spreading clients over the
# workers, 16 more sessions give every worker its first one before the baseline is taken.
for _ in $(seq 1 16); do probe >/dev/null; done
sleep 0.3
FD_BASE=$(fd_count)
RSS_BASE=$(rss_kb)
note "baseline: $FD_BASE descriptors, VmRSS $RSS_BASE kB"

# ---------------------------------------------------------------- lengths

out=$(raw --hex "$(printf '%08x00030000' $((1 << 30)))" --read-all)
check_match "startup length of 1 GB: 08P01 and closed" '^E:08P01 EOF$' "$out"
out=$(raw --hex 7fffffff00030000 --read-all)
check_match "startup length of 2 GB - 1: 08P01 and closed" '^E:08P01 EOF$' "$out"
for len in 00000003 00000000 00000007; do
	out=$(raw --hex "${len}00030000" --read-all)
	check_match "startup length $((16#$len)) (under 8, the smallest packet): 08P01 and closed" '^E:08P01 EOF$' "$out"
done

# The same during authentication: a SASLInitialResponse claiming 1 GB, or a length word under 4.
STARTUP_DEMO=(--startup "user=demo-production,database=demo-production")
out=$(raw "${STARTUP_DEMO[@]}" --read --hex "70$(printf '%08x' $((1 << 30)))" --read-all)
check_match "authentication message of 1 GB: 08P01 and closed" '^R:10 E:08P01 EOF$' "$out"
out=$(raw "${STARTUP_DEMO[@]}" --read --hex 7000000003 --read-all)
check_match "authentication message with length 3: 08P01 and closed" '^R:10 E:08P01 EOF$' "$out"
rss=$(rss_kb)
if [ $((rss - RSS_BASE)) -lt 16384 ]; then
	ok "no allocation for the announced lengths (VmRSS $RSS_BASE -> $rss kB)"
else
	fail "no allocation for the announced lengths" "VmRSS $RSS_BASE -> $rss kB"
fi

# ---------------------------------------------------------------- unterminated startup packets

# The last string runs to the end of the packet without its NUL.
body=$(hex_of 'user\0demo-production\0database\0demo-production')
out=$(raw --hex "$(startup_hex "$body")" --read-all)
check_match "startup packet whose last string has no NUL: 08P01" '^E:08P01 EOF$' "$out"
# Every string has its NUL but the terminating empty name is missing: PostgreSQL refuses this with
# "invalid startup packet layout: expected terminator as last byte".
body=$(hex_of 'user\0demo-production\0database\0demo-production\0')
out=$(raw --hex "$(startup_hex "$body")" --read-all)
check_match "startup packet without the terminating NUL: 08P01, not a login" '^E:08P01 EOF$' "$out"
# A name without a value.
body=$(hex_of 'user\0demo-production\0database\0\0')
out=$(raw --hex "$(startup_hex "$body")" --read-all)
check_match "startup parameter without a value: 08P01" '^E:08P01 EOF$' "$out"
# Announces 4 kB, sends 12 bytes, then waits: the login timeout ends it.
t0=$(now_ms)
out=$(raw --hex "00001000$(hex_of '\0\3\0\0user')" --read-all)
dt=$(($(now_ms) - t0))
if [ "$out" = "E:08P01 EOF" ] && [ $dt -ge $((LOGIN_TIMEOUT * 1000 - 200)) ] && [ $dt -le $((LOGIN_TIMEOUT * 1000 + 1500)) ]; then
	ok "a startup packet that never completes: login timeout (08P01) after $dt ms"
else
	fail "a startup packet that never completes: 08P01 after login_timeout ($LOGIN_TIMEOUT s)" "'$out' after $dt ms"
fi
good_client "after bad lengths and unterminated packets"

# ---------------------------------------------------------------- garbage

out=$(raw --seed 7 --garbage 1048576 --read-all)
if is_refusal "$out"; then
	ok "1 MB of garbage: refused and closed ($out)"
else
	fail "1 MB of garbage: refused and closed" "got '$out'"
fi
# Garbage behind a plausible 4 kB length: the protocol code is nonsense.
out=$(raw --hex 00001000 --seed 11 --garbage 1048576 --read-all)
if [[ $out =~ ^(SENDFAIL:[A-Z]+\ )?(E:(08P01|0A000)\ )?(EOF|RESET)$ ]]; then
	ok "1 MB of garbage behind a 4 kB length: refused and closed ($out)"
else
	fail "1 MB of garbage behind a 4 kB length: refused and closed" "got '$out'"
fi
# A TLS ClientHello without SSLRequest (direct TLS, not enabled here) followed by garbage.
out=$(raw --hex 160301020001 --seed 13 --garbage 65536 --read-all)
if [[ $out =~ (^|\ )(EOF|RESET)$ ]] && [[ $out != *TIMEOUT* ]]; then
	ok "a TLS record without SSLRequest: closed ($out)"
else
	fail "a TLS record without SSLRequest: closed" "got '$out'"
fi
rss=$(rss_kb)
if [ $((rss - RSS_BASE)) -lt 16384 ]; then
	ok "garbage left no memory behind (VmRSS $RSS_BASE -> $rss kB)"
else
	fail "garbage left no memory behind" "VmRSS $RSS_BASE -> $rss kB"
fi
good_client "after 1 MB of garbage"

# ---------------------------------------------------------------- SSLRequest

SSL_REQUEST=0000000804d2162f
out=$(raw --hex "$SSL_REQUEST" --read-byte)
check_eq "SSLRequest alone: 'S' (TLS is on, so the next check means something)" S "$out"
startup=$(startup_hex "$(hex_of 'user\0demo-production\0database\0demo-production\0\0')")
out=$(raw --hex "$SSL_REQUEST$startup" --read-all)
if [[ $out != S* ]] && is_refusal "$out"; then
	ok "SSLRequest with plaintext behind it in the same write: no 'S', closed ($out)"
else
	fail "SSLRequest with plaintext behind it in the same write: no 'S', closed (CVE-2021-23214)" "got '$out'"
fi
out=$(raw --hex 0000000804d21630 --read-byte --hex "$SSL_REQUEST" --read-byte)
check_eq "GSSENCRequest: 'N', then SSLRequest: 'S'" "N S" "$out"

# ---------------------------------------------------------------- a forged log line

# A parameter name with a newline and a whole fake log line in it, and no value: pglane refuses it and
# logs the refusal, which must not put the fake line at the start of a line of its log.
FORGED="2099-01-01T00:00:00.000Z info C-1 FORGED-BY-T-HOSTILE" # within the 64 bytes pglane quotes
out=$(raw --hex "$(startup_hex "$(hex_of "x\\n$FORGED\\0\\0")")" --read-all)
check_match "parameter name with a newline: 08P01" '^E:08P01 EOF$' "$out"
sleep 0.2
if grep -q "^$FORGED" "$PGLANE_LOG"; then
	fail "a newline in a startup parameter name does not forge a log line" \
		"pglane's log has a line starting with the forged text: $(grep -B1 "^$FORGED" "$PGLANE_LOG" | head -n 2)"
else
	ok "a newline in a startup parameter name does not forge a log line"
fi

# ---------------------------------------------------------------- silent connections

SILENT=500
"$RAWCLIENT" --timeout $((LOGIN_TIMEOUT + 6)) --conns $SILENT 127.0.0.1 "$LANE_PORT" --hold 1 --read-all \
	>"$TMP/silent.out" 2>&1 &
SILENT_PID=$!
LIB_PIDS+=("$SILENT_PID")
sleep 0.8
fds=$(fd_count)
if [ "$fds" -ge $((FD_BASE + SILENT)) ]; then
	ok "$SILENT silent connections are open ($FD_BASE -> $fds descriptors)"
else
	fail "$SILENT silent connections are open" "$FD_BASE -> $fds descriptors"
fi
good_client "while $SILENT silent connections are open"
if wait_fds_at_most "$FD_BASE" $((LOGIN_TIMEOUT + 4)); then
	ok "login_timeout frees the silent connections: descriptors back to $(fd_count) (baseline $FD_BASE)"
else
	fail "login_timeout frees the silent connections: descriptors back to the baseline" \
		"$(fd_count) descriptors, baseline $FD_BASE"
fi
wait "$SILENT_PID"
check_eq "each silent connection got 08P01 (login timeout) and was closed" "$SILENT E:08P01 EOF" "$(cat "$TMP/silent.out")"

# ---------------------------------------------------------------- random CancelRequests

bg_start in_env demo --production -- env "${PROBE_ENV[@]}" "$PQPROBE" --timeout 20 "" "SELECT pg_sleep(3), 'not cancelled'" \
	>"$TMP/sleeper.out" 2>&1
SLEEPER_PID=$BG_PID
BE_PID=
for _ in $(seq 1 30); do
	BE_PID=$(pg_psql main "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(3)%' LIMIT 1" 2>/dev/null)
	[ -n "$BE_PID" ] && break
	sleep 0.1
done
[ -n "$BE_PID" ] || note "could not find the sleeping backend's pid; cancels use random pids only"
cancel_results=$TMP/cancels.out
: >"$cancel_results"
for i in $(seq 1 60); do
	key=$(openssl rand -hex 4)
	if [ -n "$BE_PID" ] && [ $((i % 2)) -eq 0 ]; then
		pid=$(printf '%08x' "$BE_PID") # the real backend pid (pglane hands it to clients) with a random key
	else
		pid=$(openssl rand -hex 4)
	fi
	raw --timeout 2 --hex "0000001004d2162e$pid$key" --read-all >>"$cancel_results" 2>&1
done
bad=$(grep -cvx EOF "$cancel_results")
check_eq "60 random CancelRequests (30 with the real backend pid): each closed without a word" 0 "$bad"
wait "$SLEEPER_PID"
check_eq "the query they aimed at was not cancelled" "$(printf '\tnot cancelled')" "$(cat "$TMP/sleeper.out")"
if grep -q "canceling statement due to user request" "$(pg_var main DATA)/../postgres.log" 2>/dev/null; then
	fail "no cancel reached PostgreSQL" "its log has 'canceling statement due to user request'"
else
	ok "no cancel reached PostgreSQL"
fi
good_client "after random CancelRequests"

# ---------------------------------------------------------------- wrong passwords

FLOOD=50
# Over TLS first, once: what a driver sees decides whether it retries.
check_match "a wrong password over TLS: the client gets 28P01" '^ERROR 28P01 ' "$(probe PGPASSWORD=wrong)"
check_match "an unknown user name over TLS: the client gets 28000" '^ERROR 28000 ' "$(probe PGUSER=not-a-pglane-user)"
# The flood: FLOOD wrong passwords for demo and as many for an app that does not exist, 20 at a time from
# one address (a rate limit may slow the answers down; it must not change them).  Without TLS, so that
# the answers compared are pglane's own whatever TLS does.
wait_all_flood() {
	local pid
	for pid in $(jobs -p); do
		[ "$pid" = "$PGLANE_PID" ] || wait "$pid"
	done
}
t0=$(now_ms)
for i in $(seq 1 $FLOOD); do
	probe PGSSLMODE=disable PGPASSWORD="wrong-$i" >"$TMP/known.$i" 2>&1 &
	probe PGSSLMODE=disable PGUSER=nosuchapp-production PGDATABASE=nosuchapp-production PGPASSWORD="wrong-$i" \
		>"$TMP/unknown.$i" 2>&1 &
	[ $((i % 10)) -eq 0 ] && wait_all_flood
done
wait_all_flood
note "$((2 * FLOOD)) wrong passwords answered in $(($(now_ms) - t0)) ms"
known=$(cat "$TMP"/known.* | sort -u)
unknown=$(cat "$TMP"/unknown.* | sed 's/nosuchapp-production/demo-production/g' | sort -u)
check_match "$FLOOD wrong passwords for an existing app: 28P01 every time, one answer" '^ERROR 28P01 [^|]*$' \
	"$(printf '%s' "$known" | paste -sd '|' -)"
check_match "$FLOOD wrong passwords for an app that does not exist: 28P01 every time, one answer" '^ERROR 28P01 [^|]*$' \
	"$(printf '%s' "$unknown" | paste -sd '|' -)"
check_eq "the same answer, word for word (user name aside), whether or not the app exists" "$known" "$unknown"
good_client "after $((2 * FLOOD)) wrong passwords"

# Work before authentication.  A startup naming a branch of an existing app that pglane has not seen yet
# costs a PBKDF2 run (that timeline's SCRAM secret) before the client has proved anything; one naming an
# app that does not exist costs nothing.  200 of each at once from one address: pglane's CPU must not
# depend on which (else a peer can burn it at will).  And while the first 200 are in flight (any per-peer
# budget for new credentials spent), one more of each is timed: the time to the answer must not tell
# which apps exist either.
NEW=200
hz=$(getconf CLK_TCK)
ticks0=$(cpu_ticks)
for i in $(seq 1 $NEW); do
	raw --timeout 8 --startup "user=demo--flood-$i-$RANDOM,database=x" --read >"$TMP/derive.$i" 2>&1 &
done
# Time the probes once most of the flood has reached pglane: its log says so when a budget runs out.
for _ in $(seq 1 30); do
	grep -q "over its new-credential budget" "$PGLANE_LOG" && break
	sleep 0.1
done
t0=$(now_ms)
a_known=$(raw --timeout 8 --startup "user=demo--probe-$RANDOM,database=x" --read)
dt_known=$(($(now_ms) - t0))
t0=$(now_ms)
a_unknown=$(raw --timeout 8 --startup "user=nosuchapp--probe-$RANDOM,database=x" --read)
dt_unknown=$(($(now_ms) - t0))
wait_all_flood
ticks_known=$(cpu_ticks) # the flood's window ends here: the pause below is not its cost
# Both floods must meet the same budgets: let this address's new-credential budget refill first.
sleep 11
ticks1=$(cpu_ticks)
for i in $(seq 1 $NEW); do
	raw --timeout 8 --startup "user=nosuchapp--flood-$i-$RANDOM,database=x" --read >"$TMP/mock.$i" 2>&1 &
done
wait_all_flood
ticks2=$(cpu_ticks)
cpu_known=$(((ticks_known - ticks0) * 1000 / hz)) cpu_unknown=$(((ticks2 - ticks1) * 1000 / hz))
note "answers to the $NEW startups naming new branches of demo: $(cat "$TMP"/derive.* | sort | uniq -c | paste -sd ',' -)"
note "answers to the $NEW naming branches of an unknown app: $(cat "$TMP"/mock.* | sort | uniq -c | paste -sd ',' -)"
if [ -n "${ASAN_OPTIONS:-}" ]; then
	# Under the sanitizers pglane's own code runs several times slower and OpenSSL's PBKDF2 does not, so
	# the two paths' CPU no longer compares (measured 950 to 1300 ms against 450); `make test` holds the bound.
	note "sanitizer build: $NEW startups for an existing app took $cpu_known ms of pglane CPU, for an unknown app $cpu_unknown ms (not compared)"
elif [ "$cpu_known" -le $((2 * cpu_unknown + 30)) ]; then
	ok "$NEW startups naming new branches of an existing app cost no more CPU ($cpu_known ms) than for an unknown app ($cpu_unknown ms)"
else
	fail "$NEW startups naming new branches of an existing app cost no more CPU than for an unknown app" \
		"$cpu_known ms of pglane CPU vs $cpu_unknown ms: a PBKDF2 run per new branch name before authentication"
fi
# Both draw on the same budgets and wait in the same queue behind the flood's PBKDF2 runs, so which one is
# answered first, delayed by the tarpit, or kept waiting until login_timeout depends on when it comes, not
# on whether its app exists (the CPU check above holds pglane to that).  What must not differ is the kind
# of answer: a SASL request, or a login timeout, for both alike; never a refusal that names the app.
allowed='^(R:10|E:08P01)$'
if [[ $a_known =~ $allowed ]] && [[ $a_unknown =~ $allowed ]]; then
	ok "during the flood, a new branch of an existing app and one of a missing app get the same kind of answer ($a_known after $dt_known ms, $a_unknown after $dt_unknown ms)"
else
	fail "during the flood, a new branch of an existing app and one of a missing app get the same kind of answer" \
		"existing app: '$a_known' after $dt_known ms, missing app: '$a_unknown' after $dt_unknown ms"
fi
# The flood spent this address's budget for new credentials (100, then ten a second): let it refill
# before the next sections log in with credentials pglane has not seen.
sleep 11
good_client "after $((2 * NEW)) unauthenticated startups"

# ---------------------------------------------------------------- a client that stops reading

# stall_check LABEL SSLMODE: a libpq client sends a query whose result is 1 GB, then reads nothing for 8 s.
stall_check() {
	local label=$1 mode=$2 rss_before rss_max r wait_event growth gone n
	rss_before=$(rss_kb)
	in_env demo --production -- env PGSSLMODE="$mode" "$RAWCLIENT" --pq-stall 8 "" "$BIG_SQL" >"$TMP/stall.out" 2>&1 &
	STALL_PID=$!
	LIB_PIDS+=("$STALL_PID")
	for _ in $(seq 1 50); do
		grep -q SENT "$TMP/stall.out" && break
		sleep 0.1
	done
	sleep 2
	rss_max=$rss_before
	for _ in $(seq 1 8); do
		r=$(rss_kb)
		[ -n "$r" ] && [ "$r" -gt "$rss_max" ] && rss_max=$r
		sleep 0.5
	done
	wait_event=$(pg_psql main "SELECT coalesce(wait_event, state) FROM pg_stat_activity WHERE query LIKE 'SELECT repeat%' AND pid <> pg_backend_pid()")
	check_eq "$label: the result's backend waits on ClientWrite (back-pressure reached PostgreSQL)" \
		ClientWrite "$wait_event"
	growth=$((rss_max - rss_before))
	if [ "$growth" -lt 65536 ]; then
		ok "$label: pglane's memory stays bounded while the client does not read (VmRSS +$growth kB)"
	else
		fail "$label: pglane's memory stays bounded while the client does not read (< 64 MB growth)" \
			"VmRSS $rss_before -> $rss_max kB"
	fi
	good_client "while a client is not reading a 1 GB result ($label)"
	wait "$STALL_PID"
	check_eq "$label: the stalled client held its session to the end" "SENT DONE" "$(paste -sd ' ' "$TMP/stall.out")"
	gone=
	for _ in $(seq 1 50); do
		n=$(pg_psql main "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT repeat%' AND pid <> pg_backend_pid()")
		[ "$n" = 0 ] && gone=1 && break
		sleep 0.1
	done
	if [ -n "$gone" ]; then
		ok "$label: its backend ends once the client goes away"
	else
		fail "$label: its backend ends once the client goes away" "still in pg_stat_activity after 5 s"
	fi
}
BIG_SQL="SELECT repeat('x', 1000) FROM generate_series(1, 1000000)"
stall_check "client without TLS" disable
if [ ${#PROBE_ENV[@]} -eq 0 ]; then
	stall_check "client over TLS" require
fi

# ---------------------------------------------------------------- the end

good_client "at the end"
if kill -0 "$PGLANE_PID" 2>/dev/null; then
	ok "pglane is still running after all of the above"
else
	fail "pglane is still running after all of the above" "it exited: $(tail -n 5 "$PGLANE_LOG")"
fi
if wait_fds_at_most "$FD_BASE" 5; then
	ok "pglane's descriptors are back to the baseline ($(fd_count), baseline $FD_BASE)"
else
	fail "pglane's descriptors are back to the baseline" "$(fd_count), baseline $FD_BASE"
	# shellcheck disable=SC2012 # ls -l shows where each descriptor points
	note "$(ls -l "/proc/$PGLANE_PID/fd" 2>&1 | tail -n 20)"
fi
note "VmRSS at the end: $(rss_kb) kB (baseline $RSS_BASE kB)"

# The SCRAM salt pglane announces for a user name, from a SASLInitialResponse sent by hand.
SASL_DATA=$(hex_of 'n,,n=,r=t-hostile-nonce')
SASL_INITIAL="70$(printf '%08x' $((4 + 14 + 4 + ${#SASL_DATA} / 2)))$(hex_of 'SCRAM-SHA-256\0')$(printf '%08x' $((${#SASL_DATA} / 2)))$SASL_DATA"
scram_salt() {
	raw --startup "user=$1,database=$1" --read --hex "$SASL_INITIAL" --read | sed -n 's/.*R:11:r=[^,]*,s=\([^,]*\),.*/\1/p'
}
salt_known=$(scram_salt demo-production)
salt_unknown=$(scram_salt nosuchapp-production)
# shellcheck disable=SC2119 # no argument: the pglane this script started
pglane_stop
if pglane_start "$CONF"; then
	salt_known2=$(scram_salt demo-production)
	salt_unknown2=$(scram_salt nosuchapp-production)
	if [ -n "$salt_known" ] && [ "$salt_known" = "$salt_known2" ]; then
		ok "an existing app's SCRAM salt is the same after a restart ($salt_known)"
	else
		fail "an existing app's SCRAM salt is the same after a restart" "'$salt_known' then '$salt_known2'"
	fi
	# Otherwise a restart (or two pglane processes behind one address) tells which apps exist: PostgreSQL
	# keeps its mock salts stable with a nonce stored in the cluster for this reason.
	if [ -n "$salt_unknown" ] && [ "$salt_unknown" = "$salt_unknown2" ]; then
		ok "a missing app's (mock) SCRAM salt is the same after a restart too ($salt_unknown)"
	else
		fail "a missing app's (mock) SCRAM salt is the same after a restart too" \
			"'$salt_unknown' then '$salt_unknown2', while an existing app's stays '$salt_known'"
	fi
else
	fail "pglane restarts with the same configuration" "$(tail -n 5 "$PGLANE_LOG")"
fi
# shellcheck disable=SC2119 # no argument: the pglane this script started
pglane_stop
san=$(grep -hE "ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:" "$PGLANE_LOG" 2>/dev/null | head -n 3)
check_eq "no sanitizer report in pglane's log" "" "$san"

if [ "$LIB_FAILED" -gt 0 ]; then
	note "pglane log (last 40 lines):"
	note "$(tail -n 40 "$PGLANE_LOG")"
fi
finish
