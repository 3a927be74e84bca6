#!/usr/bin/env bash
# t_harness.sh: the harness itself, against PostgreSQL directly (no pglane), so that a failure in
# t_spine.sh can be told apart from a broken harness: pg_start's TLS and SCRAM set-up, the test CAs,
# pqprobe's SQLSTATE parsing and cancel mode, psql, and node's pg from tests/integration/node.
set -u
# shellcheck source=SCRIPTDIR/lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"

[ -x "$PQPROBE" ] || bail "$PQPROBE is not built (make unit-bins)"
pg_start h1 || bail "pg_start h1"
pg_start h2 wronghost || bail "pg_start h2"
ok "two instances started (ports $PG_H1_PORT, $PG_H2_PORT)"

check "pg_psql runs SQL as the superuser" test "$(pg_psql h1 'SELECT current_user')" = postgres
check "pg_createdb takes any name" pg_createdb h1 'x--feature/Odd "Name"'
check_eq "pg_psql into that database" 'x--feature/Odd "Name"' \
	"$(pg_psql h1 'SELECT current_database()' 'x--feature/Odd "Name"')"
check_eq "listens on 127.0.0.1 only" "127.0.0.1" "$(pg_psql h1 'SHOW listen_addresses')"
check_eq "max_connections" 300 "$(pg_psql h1 'SHOW max_connections')"

base="host=localhost port=$PG_H1_PORT user=postgres dbname=postgres"
out=$("$PQPROBE" "$base password=$PG_H1_PASSWORD sslmode=verify-full sslrootcert=$TEST_CA" \
	"SELECT ssl, current_database() FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
check_eq "verify-full with the test CA, over TLS" "$(printf 't\tpostgres')" "$out"

out=$("$PQPROBE" "host=127.0.0.1 port=$PG_H1_PORT user=postgres dbname=postgres password=$PG_H1_PASSWORD sslmode=verify-full sslrootcert=$TEST_CA")
check_eq "the server certificate also names 127.0.0.1" postgres "$out"

out=$("$PQPROBE" "$base password=wrong sslmode=require")
check_match "wrong password: pqprobe reports 28P01" '^ERROR 28P01 .*password authentication failed' "$out"

out=$("$PQPROBE" "host=127.0.0.1 port=$PG_H1_PORT user=postgres dbname=nosuchdb password=$PG_H1_PASSWORD")
check_match "unknown database: 3D000" '^ERROR 3D000 ' "$out"

out=$("$PQPROBE" "$base password=$PG_H1_PASSWORD" "SELECT 1/0")
check_match "query error: 22012" '^ERROR 22012 .*division by zero' "$out"

out=$("$PQPROBE" "$base password=$PG_H1_PASSWORD sslmode=verify-full sslrootcert=$OTHER_CA")
check_match "other CA: certificate verify failed, no SQLSTATE" '^ERROR ----- .*certificate verify failed' "$out"

out=$("$PQPROBE" "host=localhost port=$PG_H2_PORT user=postgres dbname=postgres password=$PG_H2_PASSWORD sslmode=verify-full sslrootcert=$TEST_CA")
check_match "wrong-host certificate: host name mismatch" '^ERROR ----- .*does not match host name "localhost"' "$out"

closed=
free_port_var closed
out=$("$PQPROBE" "host=127.0.0.1 port=$closed user=postgres dbname=postgres")
check_match "closed port: connection refused" '^ERROR ----- .*Connection refused' "$out"

out=$("$PQPROBE" --cancel-after 300 "$base password=$PG_H1_PASSWORD" "SELECT pg_sleep(30)")
check_match "cancel-after 300: 57014 within 1500 ms" '^SQLSTATE 57014 ELAPSED_MS ([3-9][0-9]{2}|1[0-4][0-9]{2})$' "$out"

out=$(PGHOST=127.0.0.1 PGPORT=$PG_H1_PORT PGUSER=postgres PGPASSWORD=$PG_H1_PASSWORD PGDATABASE=postgres \
	PGAPPNAME=harness PGOPTIONS='-c search_path=foo' \
	psql -X -At -c 'SHOW search_path' -c "SELECT current_setting('application_name')" 2>&1)
check_eq "psql with PGAPPNAME and PGOPTIONS" "$(printf 'foo\nharness')" "$out"

if node_deps; then
	out=$(cd "$NODE_DIR" && PGHOST=127.0.0.1 PGPORT=$PG_H1_PORT PGUSER=postgres PGPASSWORD=$PG_H1_PASSWORD \
		PGDATABASE='x--feature/Odd "Name"' node pool.js 2>&1)
	check_eq "node pg Pool() from the environment" 'x--feature/Odd "Name"' "$out"
else
	fail "node pg Pool() from the environment" "npm ci failed (see above)"
fi

check "pg_stop" pg_stop h2
out=$("$PQPROBE" "host=127.0.0.1 port=$PG_H2_PORT user=postgres dbname=postgres")
check_match "stopped instance refuses" '^ERROR ----- ' "$out"

finish
