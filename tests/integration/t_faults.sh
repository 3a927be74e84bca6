#!/usr/bin/env bash
# t_faults.sh: pglane under instance faults.  The instance killed in the middle of a query (the client gets
# an error, pglane stays up), restarted (new sessions work again), a host name that does not resolve
# (08001 naming it), and through all of it another app on another instance keeps working.
set -u
# shellcheck source=SCRIPTDIR/lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"

[ -x "$PQPROBE" ] || bail "$PQPROBE is not built (make unit-bins)"
[ -x "$PGLANE" ] || bail "$PGLANE is not built (make pglane)"
pg_start main || bail "pg_start main"
pg_start other || bail "pg_start other"
LANE_PORT=''
free_port_var LANE_PORT || bail "free_port"
pg_createdb main demo-production >/dev/null || bail "createdb demo-production"
pg_createdb other side-production >/dev/null || bail "createdb side-production"

CONF=$TMP/pglane.ini
cat >"$CONF" <<EOF
[pglane]
listen = 127.0.0.1:$LANE_PORT
connect_timeout = 2

[instance main]
url = postgresql://postgres:$PG_MAIN_PASSWORD@localhost:$PG_MAIN_PORT/postgres?sslmode=verify-full
ca_file = $TEST_CA

[instance other]
url = postgresql://postgres:$PG_OTHER_PASSWORD@localhost:$PG_OTHER_PORT/postgres?sslmode=verify-full
ca_file = $TEST_CA

[instance nowhere]
url = postgresql://postgres:x@does-not-resolve.invalid:5432/postgres?sslmode=disable

[app demo]
instance = main
secret = $(openssl rand -hex 24)

[app side]
instance = other
secret = $(openssl rand -hex 24)

[app lost]
instance = nowhere
secret = $(openssl rand -hex 24)
EOF
chmod 600 "$CONF"
pglane_start "$CONF" || bail "pglane_start"

probe() {
	local app=$1 sql=${2:-SELECT current_database()} vars
	vars=$("$PGLANE" env -c "$CONF" "$app" --production --format shell) || return 1
	(
		eval "$vars"
		"$PQPROBE" --timeout 20 "" "$sql"
	)
}

check_eq "demo reaches main" demo-production "$(probe demo)"

# ---------------------------------------------------------------- a client that hangs up at once
# Its last messages (an INSERT, its Terminate) wait for the instance's TLS socket: they must still reach it.
pg_psql main "CREATE TABLE fire (v int)" demo-production
vars=$("$PGLANE" env -c "$CONF" demo --production --format shell)
(
	eval "$vars"
	for _ in $(seq 1 30); do
		"$PQPROBE" --fire "" "INSERT INTO fire VALUES (1)" || echo "fire failed"
	done
)
sleep 1
check_eq "30 clients that send an INSERT and hang up at once: all 30 rows land (TLS to the instance)" 30 \
	"$(pg_psql main "SELECT count(*) FROM fire" demo-production)"
check_eq "... and PostgreSQL saw no connection reset" 0 \
	"$(grep -c 'Connection reset by peer' "$TMP/main/postgres.log")"

# ---------------------------------------------------------------- killed in the middle of a query
probe demo "SELECT pg_sleep(20)" >"$TMP/killed.out" 2>&1 &
victim=$!
for _ in $(seq 1 50); do
	[ "$(pg_psql main "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(20)%'")" = 1 ] && break
	sleep 0.1
done
t0=$(now_ms)
pg_stop main immediate
wait "$victim"
check_match "the instance killed mid-query: the client gets an error at once ($(($(now_ms) - t0)) ms)" '^ERROR ' \
	"$(cat "$TMP/killed.out")"
check "pglane stays up after its instance died under a session" kill -0 "$PGLANE_PID"
check_match "while main is down, demo gets 08001" '^ERROR 08001 ' "$(probe demo)"
check_eq "while main is down, side on another instance keeps working" side-production "$(probe side)"

# ---------------------------------------------------------------- restarted
as_pg_user "$PG_BIN/pg_ctl" -D "$PG_MAIN_DATA" -l "$TMP/main/postgres.log" -w -t 60 start >/dev/null 2>&1 ||
	bail "restarting main"
LIB_PG_NAMES+=(main)
check_eq "the instance restarted: new sessions work again" demo-production "$(probe demo)"

# ---------------------------------------------------------------- a name that does not resolve
t0=$(now_ms)
out=$(probe lost)
dt=$(($(now_ms) - t0))
check_match "a host name that does not resolve: 08001 naming it" '^ERROR 08001 .*does-not-resolve\.invalid' "$out"
check "... within connect_timeout + 1 s ($dt ms)" [ "$dt" -le 3000 ]
check_eq "and demo still works" demo-production "$(probe demo)"
check "pglane is still running" kill -0 "$PGLANE_PID"
finish
