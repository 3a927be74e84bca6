#!/usr/bin/env bash
# t_workers.sh: pglane with four worker threads (workers = 4) against one real PostgreSQL instance, with libpq
# clients.  Each worker has its own SO_REUSEPORT listener, connections and pools; what must hold whichever
# worker a connection lands on:
#   - every client reaches its database; the log says four workers started
#   - a CancelRequest reaches the session on whichever worker it lands (8 cancels: all 57014 within 1.5 s,
#     and at least one crossed from one worker to another, which the log says)
#   - an app's max_clients counts its sessions over all workers (the fourth of max_clients = 3 gets 53300)
#   - the admin console sees every worker: SHOW CLIENTS and SHOW STATS count all 12 sleeping sessions,
#     SHOW DATABASES counts them once; KILL CLIENT ends sessions of any worker
#   - PAUSE and RESUME reach every worker: 8 new clients all wait, then all finish
#   - RELOAD (console) and SIGHUP reach every worker: 8 clients of a newly added app all get in
#   - /metrics and /status add up the workers' sessions
#   - SIGTERM: a session running when it arrives finishes, and pglane exits 0
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
for db in demo-production small-production late-production hup-production; do
	pg_createdb main "$db" >/dev/null || bail "createdb $db"
done

ADMIN_PW=$(openssl rand -hex 20)
CONF=$TMP/pglane.ini
HTTP=http://127.0.0.1:$HTTP_PORT
DEMO_SECRET=$(openssl rand -hex 24) SMALL_SECRET=$(openssl rand -hex 24)
LATE_SECRET=$(openssl rand -hex 24) HUP_SECRET=$(openssl rand -hex 24)

# write_conf [APP...]: demo and small, and the named extra apps (late, hup); written atomically.
write_conf() {
	local a
	{
		cat <<EOF
[pglane]
listen = 127.0.0.1:$LANE_PORT
workers = 4
admin_user = lane_admin
admin_password = $ADMIN_PW
http_listen = 127.0.0.1:$HTTP_PORT
shutdown_timeout = 20

[instance main]
url = postgresql://postgres:$PG_MAIN_PASSWORD@localhost:$PG_MAIN_PORT/postgres?sslmode=verify-full
ca_file = $TEST_CA

[app demo]
instance = main
secret = $DEMO_SECRET
provision = manual

[app small]
instance = main
secret = $SMALL_SECRET
provision = manual
max_clients = 3
EOF
		for a in "$@"; do
			local var=${a^^}_SECRET
			printf '\n[app %s]\ninstance = main\nsecret = %s\nprovision = manual\n' "$a" "${!var}"
		done
	} >"$CONF.tmp"
	chmod 600 "$CONF.tmp"
	mv "$CONF.tmp" "$CONF"
}
write_conf
pglane_start "$CONF" || bail "pglane_start"

# probe APP [SQL]: a libpq client of APP's production database; prints what pqprobe prints.
probe() {
	in_env "$1" --production -- "$PQPROBE" --timeout 20 "" "${2:-SELECT current_database()}" 2>&1
}
admin() {
	PGPASSWORD=$ADMIN_PW psql -X -At -F ' ' -v VERBOSITY=verbose \
		"host=127.0.0.1 port=$LANE_PORT dbname=pglane user=lane_admin sslmode=disable" -c "$1" 2>&1
}
http_get() {
	node "$NODE_DIR/httpget.js" "$HTTP$1" "$2" 2>&1
}
# clients N APP NAME [SQL]: N concurrent clients of APP, each printing to $TMP/NAME.i; their pids in PIDS
# (and LIB_PIDS, for the cleanup).
clients() {
	local i
	PIDS=()
	for i in $(seq 1 "$1"); do
		probe "$2" "${4:-SELECT current_database()}" >"$TMP/$3.$i" &
		PIDS+=($!)
		LIB_PIDS+=($!)
	done
}
# sleepers N APP SECONDS: N background sessions of APP, each in pg_sleep(SECONDS); their pids in SLEEPERS.
sleepers() {
	clients "$1" "$2" "sleeper.$2" "SELECT pg_sleep($3), 'slept'"
	SLEEPERS=("${PIDS[@]}")
}
# wait_sessions N: until N sessions relay (SHOW STATS clients counts the console itself too).
wait_sessions() {
	local _
	for _ in $(seq 1 100); do
		[ "$(admin "SHOW CLIENTS" | grep -c ' active ')" -ge "$1" ] && return 0
		sleep 0.1
	done
	return 1
}

check_match "the log says four workers started" "4 workers" "$(grep -m1 'started:' "$PGLANE_LOG")"
check_eq "SHOW CONFIG: workers 4" "workers 4" "$(admin "SHOW CONFIG" | grep '^workers ')"

out=$("$PGLANE" -c "$CONF" 2>&1 </dev/null)
rc=$?
check_match "a second pglane on the same port does not start (SO_REUSEPORT would let it share): exit 1" \
	"^1 .*cannot listen on 127.0.0.1:$LANE_PORT: Address already in use" "$rc $(printf '%s' "$out" | tr '\n' ' ')"

# ---------------------------------------------------------------- clients on every worker

bad=0
clients 24 demo c
wait "${PIDS[@]}"
for i in $(seq 1 24); do
	[ "$(cat "$TMP/c.$i")" = demo-production ] || bad=$((bad + 1))
done
check_eq "24 concurrent clients all reach demo-production" 0 "$bad"

# ---------------------------------------------------------------- cancel through any worker

before=$(grep -c 'cancel request from' "$PGLANE_LOG")
PIDS=()
for i in $(seq 1 8); do
	in_env demo --production -- "$PQPROBE" --timeout 20 --cancel-after 300 "" "SELECT pg_sleep(30)" >"$TMP/cancel.$i" 2>&1 &
	PIDS+=($!)
done
wait "${PIDS[@]}"
bad=0
for i in $(seq 1 8); do
	if [[ $(cat "$TMP/cancel.$i") =~ ^SQLSTATE\ 57014\ ELAPSED_MS\ ([0-9]+) ]] && [ "${BASH_REMATCH[1]}" -lt 1500 ]; then
		:
	else
		bad=$((bad + 1))
		note "cancel $i: $(cat "$TMP/cancel.$i")"
	fi
done
check_eq "8 pg_sleep(30) cancelled through pglane: 57014 within 1.5 s each" 0 "$bad"
check_eq "pglane logged 8 cancel requests" 8 $(($(grep -c 'cancel request from' "$PGLANE_LOG") - before))
crossed=$(grep -c 'cancel request from .*(through another worker)' "$PGLANE_LOG")
if [ "$crossed" -ge 1 ]; then
	ok "cancel requests that landed on another worker reached their session ($crossed of 8)"
else
	fail "a cancel request lands on another worker and reaches its session" "none of 8 crossed (chance (1/4)^8)"
fi

# ---------------------------------------------------------------- max_clients of an app, over the workers

sleepers 3 small 4
for _ in $(seq 1 100); do
	[ "$(admin "SHOW CLIENTS" | grep -c ' small ')" -ge 3 ] && break
	sleep 0.1
done
check_match "a fourth session of small (max_clients = 3, its sessions on several workers): 53300" \
	'^ERROR 53300 .*max_clients = 3' "$(probe small)"
wait "${SLEEPERS[@]}"
check_eq "once they ended, small takes a client again" small-production "$(probe small)"

# ---------------------------------------------------------------- the admin console sees every worker

sleepers 12 demo 5
wait_sessions 12 || note "fewer than 12 sessions relaying: $(admin "SHOW CLIENTS")"
check_eq "SHOW CLIENTS lists the 12 sessions of every worker" 12 "$(admin "SHOW CLIENTS" | grep -c ' demo production demo-production active ')"
check_match "SHOW STATS counts them (and the console)" '^clients 13$' "$(admin "SHOW STATS" | grep '^clients ')"
check_eq "SHOW DATABASES: demo-production once, with its 12 clients" "demo production demo-production main Connected 12" \
	"$(admin "SHOW DATABASES" | grep demo-production)"
http_get /metrics "$TMP/metrics" >/dev/null
check_eq "/metrics: pglane_clients adds up the workers' sessions" 12 \
	"$(awk '$1 ~ /^pglane_clients\{app="demo"/ { n += $2 } END { print n + 0 }' "$TMP/metrics")"
http_get /status "$TMP/status.json" >/dev/null
check_eq "/status: 12 clients of demo-production, 12 in all" "12 12" \
	"$(node -e 'const s = JSON.parse(require("fs").readFileSync(process.argv[1])); const d = s.instances[0].apps.find(a => a.id === "demo").databases.find(d => d.name === "demo-production"); console.log(d.clients, s.clients)' "$TMP/status.json")"
ids=$(admin "SHOW CLIENTS" | awk '$3 == "demo" && $6 == "active" { print $1 }' | head -n 6)
killed=0
for id in $ids; do
	[ "$(admin "KILL CLIENT $id")" = KILL ] && killed=$((killed + 1))
done
check_eq "KILL CLIENT ends 6 sessions, whichever worker holds them" 6 "$killed"
wait "${SLEEPERS[@]}"
check_eq "6 sessions were cut, 6 finished" "6 6" \
	"$(grep -l slept "$TMP"/sleeper.demo.* | wc -l) $(grep -L slept "$TMP"/sleeper.demo.* | wc -l)"

# ---------------------------------------------------------------- PAUSE / RESUME on every worker

check_eq "PAUSE demo" PAUSE "$(admin "PAUSE demo")"
clients 8 demo p
for _ in $(seq 1 50); do
	[ "$(admin "SHOW CLIENTS" | grep -c ' paused ')" -ge 8 ] && break
	sleep 0.1
done
sleep 0.5
check_eq "8 new clients of demo all wait, on every worker" "8 0" \
	"$(admin "SHOW CLIENTS" | grep -c ' paused ') $(cat "$TMP"/p.* | wc -c)"
check_eq "RESUME demo" RESUME "$(admin "RESUME demo")"
wait "${PIDS[@]}"
check_eq "after RESUME all 8 finish" 8 "$(grep -lx demo-production "$TMP"/p.* | wc -l)"

# ---------------------------------------------------------------- reload reaches every worker

write_conf late
check_eq "RELOAD on the console" RELOAD "$(admin RELOAD)"
clients 8 late late
wait "${PIDS[@]}"
check_eq "after RELOAD, 8 clients of the new app late all get in" 8 "$(grep -lx late-production "$TMP"/late.* | wc -l)"
write_conf late hup
kill -HUP "$PGLANE_PID"
for _ in $(seq 1 50); do
	grep -q 'reloaded .*4 apps' "$PGLANE_LOG" && break
	sleep 0.1
done
clients 8 hup hup
wait "${PIDS[@]}"
check_eq "after SIGHUP, 8 clients of the new app hup all get in" 8 "$(grep -lx hup-production "$TMP"/hup.* | wc -l)"
check_match "SHOW STATS counts both reloads once" '^reloads 2$' "$(admin "SHOW STATS" | grep '^reloads ')"

# ---------------------------------------------------------------- SIGTERM

probe demo "SELECT pg_sleep(1.5), 'finished'" >"$TMP/term" &
TERM_CLIENT=$!
wait_sessions 1
kill -TERM "$PGLANE_PID"
wait "$TERM_CLIENT"
check_eq "SIGTERM: the running session finishes" "$(printf '\tfinished')" "$(cat "$TMP/term")"
rc=0
for _ in $(seq 1 100); do
	kill -0 "$PGLANE_PID" 2>/dev/null || break
	sleep 0.1
done
wait "$PGLANE_PID" || rc=$?
check_eq "pglane exits 0 once it has ended" 0 "$rc"
PGLANE_PID=
finish
