#!/usr/bin/env bash
# t_pool.sh: server connections outlive their clients (server_idle_timeout, proxy/pool.c), against a real
# PostgreSQL: the next client of the same timeline gets the same server process; nothing of the previous
# session survives (settings, prepared statements, temporary tables, advisory locks); another timeline, other
# startup parameters or a client that left inside a transaction never get it; cancel reaches the reused
# session; a parked connection ends after server_idle_timeout and at a reload; pgbench -C runs clean on few
# server processes.  The kernel relay is on where the kernel allows (kernel_relay = auto), so a client's
# Terminate is seen through it as well.
set -u
# shellcheck source=SCRIPTDIR/lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"

[ -x "$PGLANE" ] || bail "$PGLANE is not built (make pglane)"
pg_start main || bail "pg_start main"
LANE_PORT=''
free_port_var LANE_PORT || bail "free_port"
for db in pl-production pl-preview plt-production; do
	pg_createdb main "$db" >/dev/null || bail "createdb $db"
done
# A role with two connection slots, for the instance that fills up.
LIM_PASSWORD=$(openssl rand -hex 12)
pg_psql main "CREATE ROLE lim LOGIN PASSWORD '$LIM_PASSWORD' CONNECTION LIMIT 2" >/dev/null || bail "create role"
for db in la-production lb-production; do
	pg_createdb main "$db" >/dev/null && pg_psql main "ALTER DATABASE \"$db\" OWNER TO lim" >/dev/null ||
		bail "createdb $db"
done

CONF=$TMP/pglane.ini
write_conf() {
	cat >"$CONF" <<EOF
[pglane]
# one worker: these checks count one pool's server connections (each worker has its own)
workers = 1
listen = 127.0.0.1:$LANE_PORT
server_idle_timeout = $1
kernel_relay = auto
admin_user = admin
admin_password = $ADMIN_PASSWORD
log_level = debug

[instance main]
url = postgresql://postgres:$PG_MAIN_PASSWORD@127.0.0.1:$PG_MAIN_PORT/postgres?sslmode=disable

[instance tls]
url = postgresql://postgres:$PG_MAIN_PASSWORD@localhost:$PG_MAIN_PORT/postgres?sslmode=verify-full
ca_file = $TEST_CA

[instance lim]
url = postgresql://lim:$LIM_PASSWORD@127.0.0.1:$PG_MAIN_PORT/postgres?sslmode=disable

[app la]
instance = lim
secret = $SECRET

[app lb]
instance = lim
secret = $SECRET

[app pl]
instance = main
secret = $SECRET

[app plt]
instance = tls
secret = $SECRET
EOF
	chmod 600 "$CONF"
}
SECRET=$(openssl rand -hex 24)
ADMIN_PASSWORD=$(openssl rand -hex 12)
write_conf 4
pglane_start "$CONF" || bail "pglane_start"

lane() { in_env pl "$@"; }
q() { local tl=$1 && shift && lane "$tl" -- psql -X -At -v ON_ERROR_STOP=1 "$@"; }
direct() { PGPASSWORD=$PG_MAIN_PASSWORD psql -X -At -h 127.0.0.1 -p "$PG_MAIN_PORT" -U postgres -d postgres -c "$1"; }
backends() { direct "SELECT count(*) FROM pg_stat_activity WHERE datname = '$1'"; }

P1=$(q --production -c "SELECT pg_backend_pid()")
P2=$(q --production -c "SELECT pg_backend_pid()")
check "a second client of the timeline gets the first one's server process ($P1, $P2)" [ -n "$P1" -a "$P1" = "$P2" ]
check "pglane logs the reuse" grep -q "kept from an earlier client" "$PGLANE_LOG"
check_eq "one server process for the two clients" 1 "$(backends pl-production)"
check_match "SHOW SERVERS lists the kept connection" "^\|main\|pl-production\|$P1\|no\|kept$" \
	"$(PGPASSWORD=$ADMIN_PASSWORD psql -X -At -h 127.0.0.1 -p "$LANE_PORT" -U admin -d pglane -c "SHOW SERVERS" 2>&1)"

q --production -c "SET work_mem = '77MB'" -c "PREPARE p AS SELECT 1" -c "CREATE TEMP TABLE tt (i int)" \
	-c "SELECT pg_advisory_lock(4242)" -c "LISTEN chan" >/dev/null
check_eq "the next client sees none of it (work_mem, prepared statement, temp table, advisory lock)" \
	"$P1|4MB|0|0|0" \
	"$(q --production -c "SELECT pg_backend_pid(), current_setting('work_mem'), (SELECT count(*) FROM pg_prepared_statements), (SELECT count(*) FROM pg_class WHERE relname = 'tt' AND relpersistence = 't'), (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242)")"

T1=$(in_env plt --production -- psql -X -At -c "SELECT pg_backend_pid()")
in_env plt --production -- psql -X -At -c "SET work_mem = '77MB'" -c "PREPARE p AS SELECT 1" >/dev/null
check_eq "over TLS to the instance: the next client gets the same server process, reset" "$T1|4MB|0|t" \
	"$(in_env plt --production -- psql -X -At -c "SELECT pg_backend_pid(), current_setting('work_mem'), (SELECT count(*) FROM pg_prepared_statements), ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")"

P3=$(q --preview -c "SELECT pg_backend_pid()")
check_eq "another timeline gets a server process of its own, in its own database" "pl-preview" \
	"$(q --preview -c "SELECT current_database()")"
check "... not the production one ($P1, $P3)" [ "$P3" != "$P1" ]

P4=$(PGAPPNAME=other q --production -c "SELECT pg_backend_pid()")
check "other startup parameters (application_name) get another server process ($P1, $P4)" [ "$P4" != "$P1" ]
check_eq "... whose application_name is the client's" other \
	"$(PGAPPNAME=other q --production -c "SELECT current_setting('application_name')")"

q --production -c "BEGIN" -c "SELECT 1" >/dev/null
P5=$(q --production -c "SELECT pg_backend_pid()")
check_eq "a client that left inside a transaction does not leave its server behind" 0 \
	"$(direct "SELECT count(*) FROM pg_stat_activity WHERE datname = 'pl-production' AND state LIKE 'idle in transaction%'")"
check "... and the next client still gets a server ($P5)" [ -n "$P5" ]

lane --production -- timeout -s INT 1.5 psql -X -At -c "SELECT pg_sleep(20)" >"$TMP/cancel.out" 2>&1
check_match "cancel reaches a reused server session" 'canceling statement due to user request' \
	"$(tr '\n' ' ' <"$TMP/cancel.out")"

if lane --production -- pgbench -i -s 1 -q >"$TMP/pgbench-i.log" 2>&1; then
	lane --production -- pgbench -n -C -S -c 4 -j 2 -T 3 >"$TMP/pgbench.log" 2>&1
	check_match "pgbench -C (a new client login per transaction) runs clean" \
		'number of failed transactions: 0 ' "$(tr '\n' ' ' <"$TMP/pgbench.log")"
	N=$(backends pl-production)
	T=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$TMP/pgbench.log")
	check "... on a few server processes, not one per login ($N for ${T:-?} logins)" [ "$N" -le 16 -a "${T:-0}" -gt 100 ]
else
	fail "pgbench -i through pglane: $(tail -n 3 "$TMP/pgbench-i.log")"
fi

# The instance's role has two slots; two sessions of la leave two kept connections; lb's login then finds no
# slot: pglane closes the kept ones and logs in again.
for _ in 1 2; do
	bg_start in_env la --production -- psql -X -At -c "SELECT pg_sleep(1)" >/dev/null
done
sleep 2
check_eq "two kept connections of la fill lim's two slots" 2 "$(backends la-production)"
check_eq "lb's login still succeeds: kept connections make room" lb-production \
	"$(in_env lb --production -- psql -X -At -c "SELECT current_database()" 2>&1)"
check "pglane says why" grep -q "no connection slot free: closed 2 kept server connections" "$PGLANE_LOG"

sleep 6
check_eq "parked server connections end after server_idle_timeout" 0 "$(backends pl-production)"

q --production -c "SELECT 1" >/dev/null
check_eq "a parked connection after one more client" 1 "$(backends pl-production)"
write_conf 60
kill -HUP "$PGLANE_PID"
sleep 1.5
check_eq "a reload retires parked connections (the instance may have changed)" 0 "$(backends pl-production)"
check "pglane is still running" kill -0 "$PGLANE_PID"
finish
