#!/usr/bin/env bash
# t_operate.sh: operating pglane (issue 5) with real clients against one real PostgreSQL instance: reload on
# SIGHUP while sessions run, a rejected reload, the admin console through psql, the HTTP endpoints with a
# Prometheus text-format check of /metrics, JSON log lines, log_file reopening, SIGTERM draining, SIGINT.
#
# What it holds pglane to:
#   - SIGHUP that adds an app: the new app's clients reach their database; a session opened before the reload
#     (inside a transaction) keeps working and commits; the admin console lists the new app
#   - an invalid edit + SIGHUP: the old configuration stays (every app still connects), the log names FILE:LINE
#   - the admin console: SHOW INSTANCES|APPS|DATABASES|CLIENTS|SERVERS|STATS|CONFIG|VERSION, RELOAD,
#     PAUSE/RESUME of one app (its clients wait, the others do not), KILL CLIENT, 42601 for an unknown command;
#     an app's credentials are refused (42501), a wrong admin password gets 28P01; no secret is ever shown
#   - /healthz, /readyz (503 while draining), /status (JSON), /metrics (valid exposition, counters that move)
#   - log_format = json: every line parses, carries ts/level/msg, session lines carry app/timeline/peer, and
#     no line holds an app secret, a token, the admin password or an instance password
#   - log_file moved away + SIGHUP: the next lines go to a newly created file
#   - SIGTERM: stops accepting, a session inside a transaction commits after the signal, pglane exits 0 by
#     itself once the session ends; SIGINT: exits at once
set -u
# shellcheck source=SCRIPTDIR/lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"

[ -x "$PQPROBE" ] || bail "$PQPROBE is not built (make unit-bins)"
[ -x "$PGLANE" ] || bail "$PGLANE is not built (make pglane)"
command -v node >/dev/null 2>&1 || bail "node is not installed (scripts/deps.sh installs it)"

pg_start main || bail "pg_start main"

LANE_PORT='' HTTP_PORT=''
if ! { free_port_var LANE_PORT && free_port_var HTTP_PORT; }; then
	bail "free_port"
fi

ADMIN_USER=lane_admin
ADMIN_PW=$(openssl rand -hex 20)
ALPHA_SECRET=$(openssl rand -hex 24)
BETA_SECRET=$(openssl rand -hex 24)
GAMMA_SECRET=$(openssl rand -hex 24)
LOG_FILE=$TMP/log/pglane.log
mkdir -p "$TMP/log"
CONF=$TMP/pglane.ini
HTTP=http://127.0.0.1:$HTTP_PORT

# write_conf [gamma] [bad]: writes CONF atomically (a reload never sees half a file): apps alpha and beta,
# with "gamma" the app gamma too, with "bad" an unknown key in [pglane] (its line number in BAD_LINE).
write_conf() {
	local with_gamma=0 bad=0 a
	for a in "$@"; do
		case $a in
		gamma) with_gamma=1 ;;
		bad) bad=1 ;;
		esac
	done
	{
		echo "; pglane configuration written by t_operate.sh"
		echo "[pglane]"
		echo "listen = 127.0.0.1:$LANE_PORT"
		echo "connect_timeout = 5"
		echo "login_timeout = 5"
		echo "shutdown_timeout = 10"
		echo "admin_user = $ADMIN_USER"
		echo "admin_password = $ADMIN_PW"
		echo "http_listen = 127.0.0.1:$HTTP_PORT"
		echo "log_format = json"
		echo "log_level = info"
		echo "log_file = $LOG_FILE"
		[ $bad = 1 ] && echo "no_such_key = 1"
		echo
		echo "[instance main]"
		echo "url = postgresql://postgres:$PG_MAIN_PASSWORD@localhost:$PG_MAIN_PORT/postgres?sslmode=verify-full"
		echo "ca_file = $TEST_CA"
		echo
		echo "[app alpha]"
		echo "instance = main"
		echo "secret = $ALPHA_SECRET"
		echo "provision = manual"
		echo
		echo "[app beta]"
		echo "instance = main"
		echo "secret = $BETA_SECRET"
		echo "provision = manual"
		if [ $with_gamma = 1 ]; then
			echo
			echo "[app gamma]"
			echo "instance = main"
			echo "secret = $GAMMA_SECRET"
			echo "provision = manual"
		fi
	} >"$CONF.new"
	chmod 600 "$CONF.new"
	BAD_LINE=$(grep -n '^no_such_key' "$CONF.new" | cut -d: -f1)
	mv -f "$CONF.new" "$CONF"
}



# probe APP TIMELINE-ARGS... [-- ENV-ASSIGNMENTS... [-- PQPROBE-ARGS...]]: pqprobe in that timeline's
# environment (SQL default: SELECT current_database()).
probe() {
	local args=() envs=()
	while [ $# -gt 0 ] && [ "$1" != -- ]; do
		args+=("$1")
		shift
	done
	[ $# -gt 0 ] && shift
	while [ $# -gt 0 ] && [ "$1" != -- ]; do
		envs+=("$1")
		shift
	done
	[ $# -gt 0 ] && shift
	in_env "${args[@]}" -- env "${envs[@]}" "$PQPROBE" --timeout 20 "" "$@"
}

# admin SQL: runs SQL on the admin console through psql (unaligned, tuples only, verbose errors); prints
# what psql prints on stdout and stderr.  admin_out SQL: only stdout (the rows, or the command tag).
admin() {
	PGPASSWORD=$ADMIN_PW psql -X -At -v VERBOSITY=verbose \
		"host=127.0.0.1 port=$LANE_PORT dbname=pglane user=$ADMIN_USER sslmode=disable" -c "$1" 2>&1
}
admin_out() {
	PGPASSWORD=$ADMIN_PW psql -X -At -v VERBOSITY=verbose \
		"host=127.0.0.1 port=$LANE_PORT dbname=pglane user=$ADMIN_USER sslmode=disable" -c "$1" 2>/dev/null
}

# http_get PATH OUTFILE: prints "STATUS CONTENT-TYPE", the body goes to OUTFILE.
http_get() {
	node "$NODE_DIR/httpget.js" "$HTTP$1" "$2" 2>&1
}

# metric SERIES FILE: the value of one series (name with its labels, exactly as pglane writes it).
metric() {
	awk -v s="$1" '$1 == s { print $2; found = 1 } END { if (!found) print "missing" }' "$2"
}

# wait_for SECONDS CMD...: true once CMD succeeds, polling every 0.1 s.
wait_for() {
	local deadline
	deadline=$(($(now_ms) + $1 * 1000))
	shift
	while [ "$(now_ms)" -lt "$deadline" ]; do
		"$@" && return 0
		sleep 0.1
	done
	"$@"
}

# log_count ERE [FILE]: how many lines of the log file match.
log_count() {
	local n
	n=$(grep -Ec -- "$1" "${2:-$LOG_FILE}" 2>/dev/null)
	echo "${n:-0}"
}

# log_grew ERE N [FILE]: true when more than N lines match.
# shellcheck disable=SC2317 # called through wait_for
log_grew() {
	[ "$(log_count "$1" "${3:-$LOG_FILE}")" -gt "$2" ]
}

# hup_and_wait ERE: sends SIGHUP and waits (10 s) for one more log line matching ERE.
hup_and_wait() {
	local before
	before=$(log_count "$1")
	kill -HUP "$PGLANE_PID"
	wait_for 10 log_grew "$1" "$before"
}

# ---------------------------------------------------------------- sessions held open through a fifo

declare -A SESS_FD SESS_PID SESS_OUT
SESS_SEQ=0

# session_open NAME APP TIMELINE-ARGS...: starts psql in that timeline's environment, reading its commands
# from a fifo the script writes to (session_send), output in SESS_OUT[NAME].
session_open() {
	local name=$1 fifo=$TMP/$1.fifo out=$TMP/$1.out vars fd
	shift
	vars=$("$PGLANE" env -c "${LANE_CONF:-$CONF}" "$@" --format shell 2>&1) || return 1
	rm -f "$fifo" && mkfifo "$fifo" || return 1
	(
		eval "$vars"
		exec psql -X -At -v VERBOSITY=verbose <"$fifo" >"$out" 2>&1
	) &
	SESS_PID[$name]=$!
	LIB_PIDS+=("$!")
	exec {fd}>"$fifo"
	SESS_FD[$name]=$fd
	SESS_OUT[$name]=$out
}

# session_send NAME SQL: sends SQL, then a marker query; waits (10 s) until the marker shows in the output.
# False when it does not.
session_send() {
	local name=$1 marker
	SESS_SEQ=$((SESS_SEQ + 1))
	marker="mark-$name-$SESS_SEQ"
	printf '%s\nSELECT %s;\n' "$2" "'$marker'" 1>&"${SESS_FD[$name]}" 2>/dev/null || return 1
	wait_for 10 grep -qx -- "$marker" "${SESS_OUT[$name]}"
}

# session_close NAME: \q, then waits (10 s) for psql to exit; prints nothing, returns psql's status.
session_close() {
	local name=$1 pid=${SESS_PID[$1]} fd=${SESS_FD[$1]}
	printf '\\q\n' 1>&"$fd" 2>/dev/null
	exec {fd}>&-
	wait_for 10 eval "! kill -0 $pid 2>/dev/null"
	wait "$pid" 2>/dev/null
}

# ---------------------------------------------------------------- start

for db in alpha-production alpha-preview beta-production gamma-production; do
	pg_createdb main "$db" || bail "create database $db on main"
done
pg_psql main 'CREATE TABLE items (v text)' alpha-production || bail "create table items"

write_conf
out=$("$PGLANE" check -c "$CONF" 2>&1)
check_eq "pglane check accepts the test config" 0 "$?" || note "$out"
pglane_start "$CONF" || bail "pglane did not start"
ok "pglane listens on 127.0.0.1:$LANE_PORT, HTTP on $HTTP_PORT"
wait_for 5 test -s "$LOG_FILE"

check_eq "alpha production connects" alpha-production "$(probe alpha --production)"
check_eq "beta production connects" beta-production "$(probe beta --production)"

# ---------------------------------------------------------------- SIGHUP adds an app

# Before the reload: gamma does not exist (its token is computed from the file pglane has not read yet).
write_conf gamma
check_match "before the reload gamma is refused like a wrong password (28P01)" '^ERROR 28P01 ' "$(probe gamma --production)"
write_conf

if session_open held alpha --production && session_send held "BEGIN; INSERT INTO items VALUES ('before-reload');"; then
	ok "a session inside a transaction is open before the reload"
else
	fail "a session inside a transaction is open before the reload" "$(cat "$TMP/held.out" 2>&1)"
fi
# A second one, a query running across the reload.
bg_start probe beta --production -- -- "SELECT pg_sleep(3), current_database()" >"$TMP/sleeper.out" 2>&1
SLEEPER_PID=$BG_PID
sleep 0.5

write_conf gamma
if hup_and_wait '"reloaded .*3 apps'; then
	ok "SIGHUP: pglane logs the reload with 3 apps"
else
	fail "SIGHUP: pglane logs the reload with 3 apps" "$(tail -n 5 "$LOG_FILE")"
fi
check_eq "after SIGHUP a new client of the new app gamma reaches gamma-production" gamma-production \
	"$(probe gamma --production)"
check_eq "after SIGHUP alpha still connects" alpha-production "$(probe alpha --production)"
http_get /metrics "$TMP/metrics0" >/dev/null
check_match "/metrics after SIGHUP still counts the session routed before it under its app" \
	'^pglane_clients\{app="alpha",timeline="production",state="active"\} 1$' "$(grep '^pglane_clients' "$TMP/metrics0")"

if session_send held "INSERT INTO items VALUES ('after-reload'); SELECT 'held', count(*), current_database() FROM items WHERE v LIKE '%-reload'; COMMIT;"; then
	check_match "the session opened before the reload keeps working in its transaction" \
		'^held\|2\|alpha-production$' "$(cat "${SESS_OUT[held]}")"
	check_match "... and its COMMIT succeeds" '^COMMIT$' "$(cat "${SESS_OUT[held]}")"
else
	fail "the session opened before the reload keeps working" "$(cat "${SESS_OUT[held]}")"
fi
session_close held
check_eq "the rows it committed are on the instance" 2 \
	"$(pg_psql main "SELECT count(*) FROM items WHERE v LIKE '%-reload'" alpha-production)"
wait "$SLEEPER_PID"
check_eq "a query running across the reload (pg_sleep(3)) completes in its database" \
	"$(printf '\tbeta-production')" "$(cat "$TMP/sleeper.out")"

out=$(admin_out 'SHOW APPS')
check_match "SHOW APPS lists the new app gamma" '^gamma\|main\|' "$out" || note "$out"

# ---------------------------------------------------------------- an invalid edit is rejected

RELOAD_ERRORS=$(log_count '"level":"error"')
# pglane env cannot read the invalid file either: the clients take their variables from a copy of the good one.
cp "$CONF" "$TMP/good.ini"
export LANE_CONF=$TMP/good.ini
write_conf gamma bad
if hup_and_wait '"level":"error".*rejected'; then
	ok "SIGHUP with an unknown key: pglane logs that the reload is rejected"
else
	fail "SIGHUP with an unknown key: pglane logs that the reload is rejected" "$(tail -n 5 "$LOG_FILE")"
fi
errline=$(grep '"level":"error"' "$LOG_FILE" | tail -n +$((RELOAD_ERRORS + 1)))
check_match "the error line names the file and line of the unknown key (pglane.ini:$BAD_LINE)" \
	"pglane\\.ini:$BAD_LINE: .*no_such_key" "$errline"
check_eq "the old configuration stays: alpha connects" alpha-production "$(probe alpha --production)"
check_eq "the old configuration stays: beta connects" beta-production "$(probe beta --production)"
check_eq "the old configuration stays: gamma (added by the last good reload) connects" gamma-production \
	"$(probe gamma --production)"
out=$(admin 'RELOAD')
check_match "RELOAD on the admin console with the invalid file: an ERROR naming the file and line" \
	"ERROR: .*pglane\\.ini:$BAD_LINE" "$out"
write_conf gamma
unset LANE_CONF

# ---------------------------------------------------------------- the admin console

out=$(admin 'SHOW VERSION')
check_eq "SHOW VERSION: the same version as pglane --version, and nothing else on stdout or stderr" \
	"$("$PGLANE" --version)" "$out"

out=$(admin_out 'SHOW INSTANCES')
check_match "SHOW INSTANCES: main with its host, port and apps" "^main\\|localhost\\|$PG_MAIN_PORT\\|postgres\\|.*alpha,beta,gamma" "$out" ||
	note "$out"

out=$(admin_out 'SHOW APPS')
check_eq "SHOW APPS: alpha, beta and gamma" "alpha beta gamma" "$(printf '%s\n' "$out" | cut -d'|' -f1 | sort | xargs)" ||
	note "$out"

out=$(admin_out 'SHOW CONFIG')
check_match "SHOW CONFIG: admin_password is masked" '^admin_password\|\*+$' "$out" || note "$out"
check_match "SHOW CONFIG: shutdown_timeout and the log settings" '^log_format\|json$' "$out"

# SHOW CLIENTS, SERVERS, DATABASES with a session open
if session_open watched alpha --preview && session_send watched "SELECT 'pid', pg_backend_pid();"; then
	BE_PID=$(sed -n 's/^pid|\([0-9]*\)$/\1/p' "${SESS_OUT[watched]}")
	out=$(admin_out 'SHOW CLIENTS')
	row=$(printf '%s\n' "$out" | awk -F'|' '$3 == "alpha" && $4 == "preview"')
	check_match "SHOW CLIENTS: the session (id, peer, app, timeline, database, state, since, bytes)" \
		'^[0-9]+\|127\.0\.0\.1:[0-9]+\|alpha\|preview\|alpha-preview\|active\|[0-9]+\|[1-9][0-9]*\|[1-9][0-9]*\|' "$row" ||
		note "$out"
	WATCHED_ID=${row%%|*}
	check_match "SHOW CLIENTS: the admin connection itself" '\|\(admin\)\|' "$out"
	out=$(admin_out 'SHOW SERVERS')
	check_match "SHOW SERVERS: the session's server, with the backend's real pid" \
		"^$WATCHED_ID\\|main\\|alpha-preview\\|$BE_PID\\|yes\\|active$" "$out" || note "$out"
	out=$(admin_out 'SHOW DATABASES')
	check_match "SHOW DATABASES: alpha-preview in use" '^alpha\|preview\|alpha-preview\|main\|Connected\|1$' "$out" ||
		note "$out"
	session_close watched
else
	fail "a psql session for SHOW CLIENTS" "$(cat "$TMP/watched.out" 2>&1)"
fi

out=$(admin_out 'SHOW STATS')
routed=$(printf '%s\n' "$out" | sed -n 's/^routed|//p')
if [ "${routed:-0}" -ge 8 ] 2>/dev/null; then
	ok "SHOW STATS: routed = $routed"
else
	fail "SHOW STATS: routed counts the sessions so far (>= 8)" "$out"
fi
check_match "SHOW STATS: one reload rejected (SIGHUP) + one (RELOAD)" '^reloads_rejected\|2$' "$out"

out=$(admin_out 'RELOAD')
check_eq "RELOAD: the command tag" RELOAD "$out"

# the admin console never shows a secret
out=$(for cmd in INSTANCES APPS DATABASES CLIENTS SERVERS STATS CONFIG VERSION; do admin "SHOW $cmd"; done)
leaks=
for s in "$ALPHA_SECRET" "$BETA_SECRET" "$GAMMA_SECRET" "$ADMIN_PW" "$PG_MAIN_PASSWORD" pgl_; do
	case $out in *"$s"*) leaks="$leaks ${s:0:8}..." ;; esac
done
check_eq "no SHOW output holds an app secret, a token, the admin or the instance password" "" "$leaks"

# PAUSE / RESUME one app
out=$(admin_out 'PAUSE beta')
check_eq "PAUSE beta: the command tag" PAUSE "$out"
bg_start probe beta --production >"$TMP/paused.out" 2>&1
PAUSED_PID=$BG_PID
t0=$(now_ms)
check_eq "while beta is paused alpha still connects" alpha-production "$(probe alpha --production)"
sleep 1
if kill -0 "$PAUSED_PID" 2>/dev/null; then
	ok "a client of the paused app waits (still waiting after 1 s)"
else
	fail "a client of the paused app waits (still waiting after 1 s)" "it ended: $(cat "$TMP/paused.out")"
fi
out=$(admin_out 'SHOW APPS')
check_match "SHOW APPS: beta paused" '^beta\|.*\|yes$' "$out" || note "$out"
http_get /metrics "$TMP/metrics-paused" >/dev/null
check_match "/metrics counts the held client under its app beta" '^pglane_clients\{app="beta",timeline="production",' \
	"$(grep '^pglane_clients' "$TMP/metrics-paused")"
out=$(admin_out 'SHOW CLIENTS')
check_match "SHOW CLIENTS: the held client in state paused" '\|beta\|production\|beta-production\|paused\|' "$out" ||
	note "$out"
out=$(admin_out 'RESUME beta')
check_eq "RESUME beta: the command tag" RESUME "$out"
if wait_for 10 eval "! kill -0 $PAUSED_PID 2>/dev/null"; then
	wait "$PAUSED_PID"
	check_eq "after RESUME the held client finishes in beta-production ($(($(now_ms) - t0)) ms after it started)" \
		beta-production "$(cat "$TMP/paused.out")"
else
	fail "after RESUME the held client finishes" "still waiting 10 s after RESUME"
fi
out=$(admin_out 'SHOW APPS')
check_match "SHOW APPS: beta no longer paused" '^beta\|.*\|no$' "$out"

# KILL CLIENT
bg_start probe alpha --preview -- -- "SELECT pg_sleep(20), 'not cut'" >"$TMP/killed.out" 2>&1
KILLED_PID=$BG_PID
KILL_ID=
for _ in $(seq 1 50); do
	KILL_ID=$(admin 'SHOW CLIENTS' | awk -F'|' '$3 == "alpha" && $4 == "preview" && $6 == "active" { print $1 }')
	[ -n "$KILL_ID" ] && break
	sleep 0.1
done
if [ -n "$KILL_ID" ]; then
	out=$(admin_out "KILL CLIENT $KILL_ID")
	check_eq "KILL CLIENT $KILL_ID: the command tag" KILL "$out"
	t0=$(now_ms)
	if wait_for 5 eval "! kill -0 $KILLED_PID 2>/dev/null"; then
		wait "$KILLED_PID"
		check_match "the killed session is cut ($(($(now_ms) - t0)) ms after KILL)" '^ERROR ' "$(cat "$TMP/killed.out")"
	else
		fail "the killed session is cut" "its pg_sleep(20) still runs 5 s after KILL CLIENT"
	fi
	out=$(admin_out 'SHOW CLIENTS')
	check_eq "SHOW CLIENTS no longer lists the killed client" "" "$(printf '%s\n' "$out" | awk -F'|' -v id="$KILL_ID" '$1 == id')"
else
	fail "KILL CLIENT: find the session's id in SHOW CLIENTS" "$(admin_out 'SHOW CLIENTS')"
fi
out=$(admin 'KILL CLIENT 999999')
check_match "KILL CLIENT of an unknown id: an ERROR" '^ERROR: .*KILL CLIENT' "$out"

out=$(admin 'FROBNICATE ALL THE THINGS')
check_match "an unknown admin command: ERROR with SQLSTATE 42601" '^ERROR:  42601: ' "$out"

ALPHA_TOKEN=$(env_var alpha --production PGPASSWORD)
out=$("$PQPROBE" --timeout 20 "host=127.0.0.1 port=$LANE_PORT dbname=pglane user=alpha-production password=$ALPHA_TOKEN sslmode=disable")
check_match "an app's credentials asking for the admin database pglane: 42501" '^ERROR 42501 ' "$out"
out=$("$PQPROBE" --timeout 20 "host=127.0.0.1 port=$LANE_PORT dbname=pglane user=$ADMIN_USER password=wrong-$ADMIN_PW sslmode=disable")
check_match "the admin user with a wrong password: 28P01" '^ERROR 28P01 ' "$out"
out=$("$PQPROBE" --timeout 20 "host=127.0.0.1 port=$LANE_PORT dbname=pglane user=$ADMIN_USER password=$ADMIN_PW sslmode=disable" "SHOW VERSION" 2>&1)
check_match "pqprobe (libpq) on the admin console" '^pglane ' "$out"

# ---------------------------------------------------------------- HTTP

out=$(http_get /healthz "$TMP/healthz")
check_match "/healthz: 200" '^200 ' "$out"
out=$(http_get /readyz "$TMP/readyz")
check_match "/readyz: 200" '^200 ' "$out"
out=$(http_get /status "$TMP/status.json")
check_match "/status: 200 application/json" '^200 application/json' "$out"
got=$(node -e '
const o = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
const main = (o.instances || []).find((i) => i.name === "main");
console.log(main ? main.apps.map((a) => a.id).join(",") : "no instance main: " + JSON.stringify(o));' "$TMP/status.json" 2>&1)
check_eq "/status parses as JSON and lists instance main with its apps" "alpha,beta,gamma" "$got"
got=$(node -e '
const o = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
const main = (o.instances || []).find((i) => i.name === "main") || {};
console.log([main.state, /^15/.test(main.server_version), typeof o.config].join(" "));' "$TMP/status.json" 2>&1)
check_eq "/status has pglane status --json's shape, from live data (state, server_version, config)" \
	"Connected true string" "$got"

out=$(http_get /metrics "$TMP/metrics1")
check_match "/metrics: 200 text/plain; version=0.0.4" '^200 text/plain; version=0\.0\.4' "$out"
out=$(node "$NODE_DIR/promcheck.js" "$TMP/metrics1" 2>&1)
check_match "/metrics passes the Prometheus text-format check" '^ok: ' "$out" || note "$out"
check_match "/metrics: the backend connect histogram is there" '^pglane_backend_connect_seconds_bucket\{le="\+Inf"\} [1-9]' \
	"$(cat "$TMP/metrics1")"

for _ in 1 2 3; do
	probe alpha --production >/dev/null
	probe gamma --production >/dev/null
done
probe alpha --production -- PGPASSWORD=wrong >/dev/null
http_get /metrics "$TMP/metrics2" >/dev/null
out=$(node "$NODE_DIR/promcheck.js" "$TMP/metrics2" 2>&1)
check_match "/metrics passes the check after more traffic" '^ok: ' "$out" || note "$out"
delta() {
	local a b
	a=$(metric "$1" "$TMP/metrics1")
	b=$(metric "$1" "$TMP/metrics2")
	if [[ $a =~ ^[0-9]+$ && $b =~ ^[0-9]+$ ]]; then
		echo $((b - a))
	else
		echo "'$a' -> '$b'"
	fi
}
check_eq "pglane_connections_routed_total rose by the 6 sessions" 6 "$(delta pglane_connections_routed_total)"
d=$(delta 'pglane_bytes_total{direction="from_client"}')
check_match "pglane_bytes_total{direction=\"from_client\"} rose ($d)" '^[1-9][0-9]*$' "$d"
d=$(delta 'pglane_bytes_total{direction="to_client"}')
check_match "pglane_bytes_total{direction=\"to_client\"} rose ($d)" '^[1-9][0-9]*$' "$d"
check_eq "pglane_auth_failures_total{reason=\"password\"} rose by the wrong password" 1 \
	"$(delta 'pglane_auth_failures_total{reason="password"}')"
check_match "pglane_reloads_total counts the good and the rejected reloads" \
	'^2 2$' "$(metric 'pglane_reloads_total{result="ok"}' "$TMP/metrics2") $(metric 'pglane_reloads_total{result="rejected"}' "$TMP/metrics2")"
leaks=
for s in "$ALPHA_SECRET" "$BETA_SECRET" "$GAMMA_SECRET" "$ADMIN_PW" "$PG_MAIN_PASSWORD" pgl_; do
	grep -qF -- "$s" "$TMP/metrics2" "$TMP/status.json" && leaks="$leaks ${s:0:8}..."
done
check_eq "/metrics and /status hold no secret" "" "$leaks"

# ---------------------------------------------------------------- log_file reopened on SIGHUP

mv "$LOG_FILE" "$LOG_FILE.1"
if hup_and_wait '"reloaded '; then
	ok "log_file moved away + SIGHUP: a new log file is created"
else
	fail "log_file moved away + SIGHUP: a new log file is created" "$(ls -l "$TMP/log")"
fi
old_lines=$(wc -l <"$LOG_FILE.1")
probe gamma --production >/dev/null
if wait_for 5 log_grew '"app":"gamma".*"msg":"routed to ' 0; then
	ok "a new connection logs into the new file"
else
	fail "a new connection logs into the new file" "$(tail -n 5 "$LOG_FILE" 2>&1)"
fi
check_eq "nothing more goes to the moved file" "$old_lines" "$(wc -l <"$LOG_FILE.1")"

# logrotate does not know whether the file is valid: a SIGHUP that rejects the file reopens the log too.
mv "$LOG_FILE" "$LOG_FILE.2"
cp "$CONF" "$TMP/good.ini"
LANE_CONF=$TMP/good.ini
write_conf gamma bad
kill -HUP "$PGLANE_PID"
if wait_for 5 log_grew '"level":"error".*rejected' 0; then
	ok "log_file moved away + SIGHUP with an invalid file: the log is reopened and says why the reload failed"
else
	fail "log_file moved away + SIGHUP with an invalid file: the log is reopened and says why the reload failed" \
		"$LOG_FILE $(test -e "$LOG_FILE" && echo exists || echo "was not created"); the moved file ends with: $(tail -n 2 "$LOG_FILE.2")"
fi
write_conf gamma
unset LANE_CONF
hup_and_wait '"reloaded '

# ---------------------------------------------------------------- SIGTERM: drain

if session_open last alpha --production && session_send last "BEGIN; INSERT INTO items VALUES ('after-sigterm');"; then
	ok "a session inside a transaction before SIGTERM"
else
	fail "a session inside a transaction before SIGTERM" "$(cat "$TMP/last.out" 2>&1)"
fi
kill -TERM "$PGLANE_PID"
sleep 0.5
if kill -0 "$PGLANE_PID" 2>/dev/null; then
	ok "SIGTERM with a session open: pglane keeps running"
else
	fail "SIGTERM with a session open: pglane keeps running" "$(tail -n 5 "$LOG_FILE")"
fi
out=$(probe alpha --production)
check_match "after SIGTERM new connections are refused" '^ERROR ' "$out"
out=$(http_get /readyz "$TMP/readyz2")
check_match "/readyz: 503 while shutting down" '^503 ' "$out"
if session_send last "COMMIT;"; then
	check_match "the session COMMITs after SIGTERM" '^COMMIT$' "$(cat "${SESS_OUT[last]}")"
else
	fail "the session COMMITs after SIGTERM" "$(cat "${SESS_OUT[last]}")"
fi
check_eq "the row committed after SIGTERM is on the instance" 1 \
	"$(pg_psql main "SELECT count(*) FROM items WHERE v = 'after-sigterm'" alpha-production)"
session_close last
t_end=$(now_ms)
if wait_for 5 eval "! kill -0 $PGLANE_PID 2>/dev/null"; then
	wait "$PGLANE_PID"
	rc=$?
	check_eq "pglane exits by itself once the session ended ($(($(now_ms) - t_end)) ms later), status 0" 0 "$rc"
	check_eq "... before shutdown_timeout (10 s): no session was cut" 0 \
		"$(log_count '"msg":"(shutdown_timeout reached|closed in state active: shutdown)')"
else
	fail "pglane exits by itself once the last session ended" "still running 5 s later"
	pglane_stop "$PGLANE_PID"
fi
PGLANE_PID=

# ---------------------------------------------------------------- SIGINT: at once

pglane_start "$CONF" || bail "pglane did not restart"
routed_before=$(log_count '"msg":"routed to ')
bg_start probe alpha --production -- -- "SELECT pg_sleep(20)" >"$TMP/sigint-client.out" 2>&1
SIGINT_CLIENT=$BG_PID
wait_for 5 log_grew '"msg":"routed to ' "$routed_before"
sleep 0.3
kill -INT "$PGLANE_PID"
t0=$(now_ms)
if wait_for 2 eval "! kill -0 $PGLANE_PID 2>/dev/null"; then
	wait "$PGLANE_PID"
	rc=$?
	ok "SIGINT: pglane exits at once ($(($(now_ms) - t0)) ms)"
	check_eq "SIGINT with a session open: exit status 1 (a session was cut)" 1 "$rc"
else
	fail "SIGINT: pglane exits at once" "still running 2 s later"
	pglane_stop "$PGLANE_PID"
fi
PGLANE_PID=
wait_for 5 eval "! kill -0 $SIGINT_CLIENT 2>/dev/null"
check_match "the session cut by SIGINT sees an error" '^ERROR ' "$(cat "$TMP/sigint-client.out")"

# ---------------------------------------------------------------- SIGTERM past shutdown_timeout

sed 's/^shutdown_timeout = .*/shutdown_timeout = 1/' "$CONF" >"$TMP/short.ini"
chmod 600 "$TMP/short.ini"
pglane_start "$TMP/short.ini" || bail "pglane did not restart"
routed_before=$(log_count '"msg":"routed to ')
bg_start probe alpha --production -- -- "SELECT pg_sleep(20)" >"$TMP/drain-client.out" 2>&1
DRAIN_CLIENT=$BG_PID
wait_for 5 log_grew '"msg":"routed to ' "$routed_before"
sleep 0.3
kill -TERM "$PGLANE_PID"
t0=$(now_ms)
if wait_for 4 eval "! kill -0 $PGLANE_PID 2>/dev/null"; then
	wait "$PGLANE_PID"
	rc=$?
	dt=$(($(now_ms) - t0))
	if [ "$dt" -ge 950 ]; then
		ok "SIGTERM with a session that does not end: pglane waits shutdown_timeout (1 s), exits after $dt ms"
	else
		fail "SIGTERM with a session that does not end: pglane waits shutdown_timeout (1 s)" "it exited after $dt ms"
	fi
	check_eq "... with exit status 1 (a session had to be cut)" 1 "$rc"
else
	fail "SIGTERM with a session that does not end: pglane exits after shutdown_timeout (1 s)" "still running 4 s later"
	pglane_stop "$PGLANE_PID"
fi
PGLANE_PID=
wait_for 5 eval "! kill -0 $DRAIN_CLIENT 2>/dev/null"
check_match "the session cut at shutdown_timeout gets an ErrorResponse 57P01" '^ERROR 57P01 ' "$(cat "$TMP/drain-client.out")"

# ---------------------------------------------------------------- JSON logs

LOG_FILES=("$LOG_FILE.1" "$LOG_FILE.2" "$LOG_FILE")
out=$(node "$NODE_DIR/jsonlog.js" "${LOG_FILES[@]}" 2>&1)
if [[ $out =~ ^ok:\ [0-9]+\ lines,\ ([0-9]+)\ routed ]] && [ "${BASH_REMATCH[1]}" -gt 10 ]; then
	ok "every log line is a JSON object with ts, level, msg; session lines carry app, timeline, peer ($out)"
else
	fail "every log line is a JSON object with ts, level, msg; session lines carry app, timeline, peer" "$out"
fi
leaks=
for s in "$ALPHA_SECRET" "$BETA_SECRET" "$GAMMA_SECRET" "$ADMIN_PW" "$PG_MAIN_PASSWORD" pgl_; do
	grep -qF -- "$s" "${LOG_FILES[@]}" "$PGLANE_LOG" && leaks="$leaks ${s:0:8}..."
done
check_eq "no log line holds an app secret, a token (pgl_...), the admin or the instance password" "" "$leaks"
check_match "the disconnection lines carry duration and bytes" \
	'"app":"alpha".*"msg":"closed in state active: .*[0-9.]+ s, [0-9]+ bytes in, [0-9]+ bytes out' "$(cat "$LOG_FILE.1")"

san=$(grep -hE "ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:" "$PGLANE_LOG" "${LOG_FILES[@]}" 2>/dev/null | head -n 3)
check_eq "no sanitizer report in pglane's logs" "" "$san"

if [ "$LIB_FAILED" -gt 0 ]; then
	note "pglane log (last 40 lines):"
	note "$(tail -n 40 "$LOG_FILE" 2>/dev/null)"
	note "pglane stderr (last 20 lines):"
	note "$(tail -n 20 "$PGLANE_LOG")"
fi
finish
