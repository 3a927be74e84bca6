#!/usr/bin/env bash
# t_limits.sh: the documented limits, against a real PostgreSQL: max_clients and an app's max_clients
# (53300), client_idle_timeout (FATAL 57P05 to an idle session), client_write_timeout (a client that stops
# reading in the middle of a large result is cut, pglane's memory stays flat and the server feels the
# back-pressure as ClientWrite), and pglane still serving a well-behaved client after each.
set -u
# shellcheck source=SCRIPTDIR/lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"

[ -x "$PQPROBE" ] || bail "$PQPROBE is not built (make unit-bins)"
[ -x "$PGLANE" ] || bail "$PGLANE is not built (make pglane)"
pg_start main || bail "pg_start main"
LANE_PORT=''
free_port_var LANE_PORT || bail "free_port"
for db in demo-production small-production small-preview; do
	pg_createdb main "$db" >/dev/null || bail "createdb $db"
done

CONF=$TMP/pglane.ini
cat >"$CONF" <<EOF
[pglane]
listen = 127.0.0.1:$LANE_PORT
max_clients = 6
client_idle_timeout = 2
client_write_timeout = 2

[instance main]
url = postgresql://postgres:$PG_MAIN_PASSWORD@localhost:$PG_MAIN_PORT/postgres?sslmode=verify-full
ca_file = $TEST_CA

[app demo]
instance = main
secret = $(openssl rand -hex 24)

[app small]
instance = main
secret = $(openssl rand -hex 24)
max_clients = 2
EOF
chmod 600 "$CONF"
pglane_start "$CONF" || bail "pglane_start"

# probe APP TIMELINE [SQL]: pqprobe with the timeline's variables.
probe() {
	local app=$1 tl=$2 sql=${3:-SELECT current_database()} vars
	vars=$("$PGLANE" env -c "$CONF" "$app" "$tl" --format shell) || return 1
	(
		eval "$vars"
		"$PQPROBE" --timeout 20 "" "$sql"
	)
}
well_behaved() {
	check_eq "a well-behaved client still works ($1)" demo-production "$(probe demo --production)"
}

# ---------------------------------------------------------------- an app's max_clients
for _ in 1 2; do
	bg_start probe small --production "SELECT pg_sleep(3)" >/dev/null
done
sleep 1
check_match "a third session of an app with max_clients = 2: 53300" '^ERROR 53300 .*small' \
	"$(probe small --preview)"
well_behaved "other apps are not limited by small's max_clients"
sleep 3

# ---------------------------------------------------------------- max_clients
for _ in 1 2 3 4 5 6; do
	bg_start probe demo --production "SELECT pg_sleep(3)" >/dev/null
done
sleep 1
check_match "the seventh client with max_clients = 6: 53300" '^ERROR 53300 ' "$(probe demo --production)"
sleep 3
well_behaved "after the six sessions ended"

# ---------------------------------------------------------------- client_idle_timeout
FIFO=$TMP/idle.fifo
mkfifo "$FIFO"
vars=$("$PGLANE" env -c "$CONF" demo --production --format shell)
(
	eval "$vars"
	psql -X -At -v VERBOSITY=verbose <"$FIFO" >"$TMP/idle.out" 2>&1
) &
exec 7>"$FIFO"
echo "SELECT 'first';" >&7
sleep 4.5
echo "SELECT 'second';" >&7
exec 7>&-
sleep 1
check_match "a session idle past client_idle_timeout gets FATAL 57P05" '57P05' "$(tr '\n' ' ' <"$TMP/idle.out")"
check_match "... after it had worked" '^first' "$(head -n 1 "$TMP/idle.out")"

check_match "a query running longer than client_idle_timeout is not idle: it completes" 'survived' \
	"$(probe demo --production "SELECT pg_sleep(4), 'survived'")"

# ---------------------------------------------------------------- client_write_timeout
RSS0=$(awk '/VmRSS/ {print $2}' "/proc/$PGLANE_PID/status")
(
	eval "$vars"
	timeout 20 psql -X -c "COPY (SELECT repeat('x', 1000) FROM generate_series(1, 1000000)) TO STDOUT" | sleep 8
) >/dev/null 2>&1 &
sleep 1.5
check_eq "the server of a client that stopped reading waits on ClientWrite (back-pressure)" ClientWrite \
	"$(pg_psql main "SELECT wait_event FROM pg_stat_activity WHERE query LIKE 'COPY%' AND pid <> pg_backend_pid()")"
RSS1=$(awk '/VmRSS/ {print $2}' "/proc/$PGLANE_PID/status")
check "pglane's memory stays bounded while the client does not read ($RSS0 -> $RSS1 kB; the result is 1 GB)" [ $((RSS1 - RSS0)) -lt 32768 ]
sleep 3
check "the stalled client is cut after client_write_timeout (log says why)" \
	grep -q "client took nothing for client_write_timeout" "$PGLANE_LOG"
check_eq "its server session is gone" 0 \
	"$(pg_psql main "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY%' AND pid <> pg_backend_pid()")"
well_behaved "after the stalled client"
check "pglane is still running" kill -0 "$PGLANE_PID"
finish
