#!/usr/bin/env bash
# t_autoprov.sh: provisioning inside the proxy (issue 4, proxy/autoprov.c) against a real PostgreSQL.
#
# What it holds pglane to:
#   - provision = auto: a client's first connection to a timeline whose database does not exist lands in
#     the database pglane has just created for it; 20 first connections at once all land, and the database
#     is created once (one CREATE DATABASE reaches the server, one "created database" line in pglane's log),
#     both when the 20 arrive naturally together and when all 20 are known to have been refused with 3D000
#     by the server before the creation could finish (its advisory lock held meanwhile);
#   - the created database is owned by the app's `owner` (the instance user when unset) and starts as a copy
#     of the app's `template`;
#   - provision = manual: 3D000 with a hint naming `pglane provision`, nothing created; after `pglane
#     provision` the same client lands;
#   - an instance user without CREATEDB: the client is told the instance user lacks CREATEDB (the words of
#     routing/provision.c), nothing is created, and pglane keeps serving others.
set -u
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

[ -x "$PGLANE" ] || bail "$PGLANE is not built (make pglane)"
[ -x "$PQPROBE" ] || bail "$PQPROBE is not built (make unit-bins)"

pg_start main || bail "pg_start main"
LANE_PORT=''
free_port_var LANE_PORT || bail "free_port"
PG_LOG=$TMP/main/postgres.log

LOW_PASSWORD=$(openssl rand -hex 12)
pg_psql main "CREATE ROLE lowly LOGIN NOCREATEDB PASSWORD '$LOW_PASSWORD'" || bail "create role lowly"
pg_psql main "CREATE ROLE app_owner NOLOGIN" || bail "create role app_owner"
# the template branch databases of app "seeded" start from: one table with one row
pg_createdb main seed_template || bail "create seed_template"
pg_psql main "CREATE TABLE seeded(id int PRIMARY KEY, note text); INSERT INTO seeded VALUES (1, 'from the template')" \
	seed_template || bail "fill seed_template"
# every CREATE DATABASE that reaches the server is in its log: "exactly one CREATE" is counted there
if ! { pg_psql main "ALTER SYSTEM SET log_statement = 'ddl'" && pg_psql main "SELECT pg_reload_conf()" >/dev/null; }; then
	bail "log_statement = ddl"
fi

CONF=$TMP/pglane.ini
cat >"$CONF" <<EOF
[pglane]
listen = 127.0.0.1:$LANE_PORT
connect_timeout = 5
login_timeout = 60

[instance main]
url = postgresql://postgres:$PG_MAIN_PASSWORD@localhost:$PG_MAIN_PORT/postgres?sslmode=verify-full
ca_file = $TEST_CA

; the same server, as a user without CREATEDB
[instance lowly]
url = postgresql://lowly:$LOW_PASSWORD@localhost:$PG_MAIN_PORT/postgres?sslmode=verify-full
ca_file = $TEST_CA

; provision = auto is the default
[app auto]
instance = main
secret = $(openssl rand -hex 24)

[app seeded]
instance = main
secret = $(openssl rand -hex 24)
provision = auto
owner = app_owner
template = seed_template

[app manual]
instance = main
secret = $(openssl rand -hex 24)
provision = manual

[app low]
instance = lowly
secret = $(openssl rand -hex 24)
provision = auto
EOF
chmod 600 "$CONF"
out=$("$PGLANE" check -c "$CONF" 2>&1) || bail "pglane check: $out"

# probe APP BRANCH [SQL]: pqprobe as that branch; prints what it prints ("ERROR <SQLSTATE> <message>" on error).
probe() {
	local app=$1 branch=$2
	shift 2
	in_env "$app" --branch "$branch" -- "$PQPROBE" --timeout 60 "" "$@"
}

db_count() {
	pg_psql main "SELECT count(*) FROM pg_database WHERE datname = '$1'"
}

db_owner() {
	pg_psql main "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '$1'"
}

# created_lines DB: pglane's "created database" lines for DB.
created_lines() {
	grep -cF "created database \"$1\" on instance" "$PGLANE_LOG"
}

# create_statements DB: CREATE DATABASE statements for DB the server received (log_statement = ddl).
create_statements() {
	grep -F 'statement: CREATE DATABASE' "$PG_LOG" | grep -cF "\"$1\""
}

pglane_start "$CONF" || bail "pglane did not start"

# ---------------------------------------------------------------- provision = auto, one client

DB=auto--feature/first
check_eq "before: $DB does not exist" 0 "$(db_count "$DB")"
out=$(probe auto feature/first)
check_eq "auto: the first connection lands in the newly created database" "$DB" "$out"
check_eq "auto: $DB exists" 1 "$(db_count "$DB")"
check_eq "auto: one \"created database\" line in pglane's log" 1 "$(created_lines "$DB")"
check_eq "auto: one CREATE DATABASE reached the server" 1 "$(create_statements "$DB")"
check_eq "auto: without owner =, the instance user owns it" postgres "$(db_owner "$DB")"
out=$(probe auto feature/first "SELECT current_database(), current_user")
check_eq "auto: a second connection lands in it too" "$DB	postgres" "$out"
check_eq "auto: the second connection creates nothing" "1 1" "$(created_lines "$DB") $(create_statements "$DB")"

# ---------------------------------------------------------------- 20 first connections at once

# burst BRANCH TAG: 20 pqprobe first connections of app auto to BRANCH, all started before any is
# waited for; each one's output in TMP/TAG.N.  Sets BURST_PIDS.
burst() {
	local branch=$1 tag=$2 vars i
	vars=$("$PGLANE" env -c "$CONF" auto --branch "$branch" --format shell) || return 1
	BURST_PIDS=()
	for i in $(seq 1 20); do
		(
			eval "$vars"
			exec "$PQPROBE" --timeout 60 "" "SELECT current_database(), count(*) FROM pg_stat_database WHERE datname = current_database()"
		) >"$TMP/$tag.$i" 2>&1 &
		BURST_PIDS+=($!)
		LIB_PIDS+=($!)
	done
}

# burst_check BRANCH TAG WHAT: the 20 outcomes and the single creation.
burst_check() {
	local branch=$1 tag=$2 what=$3 db=auto--$1 landed
	landed=$(cat "$TMP/$tag".* | grep -cxF "$db	1")
	check_eq "$what: all 20 clients land in $db" 20 "$landed" ||
		note "$(cat "$TMP/$tag".* | sort | uniq -c)"
	check_eq "$what: $db exists once in pg_database" 1 "$(db_count "$db")"
	check_eq "$what: pg_stat_database has $db" 1 \
		"$(pg_psql main "SELECT count(*) FROM pg_stat_database WHERE datname = '$db'")"
	check_eq "$what: one CREATE DATABASE reached the server" 1 "$(create_statements "$db")"
	check_eq "$what: one \"created database\" line in pglane's log" 1 "$(created_lines "$db")" ||
		note "$(grep -F "\"$db\"" "$PGLANE_LOG")"
}

# (a) as they come: 20 clients started together
check_eq "before: auto--burst/natural does not exist" 0 "$(db_count auto--burst/natural)"
burst burst/natural natural || bail "pglane env"
wait "${BURST_PIDS[@]}"
note "$(grep -cF 'FATAL:  database "auto--burst/natural" does not exist' "$PG_LOG") of the 20 reached the server before auto--burst/natural existed"
burst_check burst/natural natural "20 first connects at once"

# (b) all 20 refused by the server with 3D000 before the database can exist: the creation lock that
# pglane takes (the one `pglane provision` takes too) is held until the server has refused all 20.
DB=auto--burst/held
bg_start psql -X -q -h "$PG_MAIN_SOCKDIR" -p "$PG_MAIN_PORT" -U postgres -d postgres \
	-c "SELECT pg_advisory_lock(1885826147, hashtext('$DB'))" -c "SELECT pg_sleep(120)" >/dev/null 2>&1
LOCK_PID=$BG_PID
for _ in $(seq 1 50); do
	[ "$(pg_psql main "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1885826147 AND granted")" = 1 ] && break
	sleep 0.1
done
refused_before=$(grep -cF "FATAL:  database \"$DB\" does not exist" "$PG_LOG")
burst burst/held held || bail "pglane env"
refused=0
for _ in $(seq 1 200); do
	refused=$(($(grep -cF "FATAL:  database \"$DB\" does not exist" "$PG_LOG") - refused_before))
	[ "$refused" -ge 20 ] && break
	sleep 0.1
done
check_eq "20 first connects, creation held: the server refused all 20 with 3D000 first" 20 "$refused"
waiting=$(pg_psql main "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1885826147 AND NOT granted")
# Each worker creates the databases its own sessions wait for: one creation per worker at most.
WORKERS=${PGLANE_WORKERS:-$(nproc)}
if [ "$waiting" -ge 1 ] && [ "$waiting" -le "$WORKERS" ]; then
	ok "20 first connects, creation held: $waiting pglane creation(s) wait on the lock (at most one per worker, $WORKERS)"
else
	fail "20 first connects, creation held: one pglane creation per worker at most waits on the lock" "$waiting waiting, $WORKERS workers"
fi
check_eq "20 first connects, creation held: no client has finished yet" 0 "$(cat "$TMP"/held.* | wc -c)"
# a backend asleep does not notice its client going away: end it from the server side
pg_psql main "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1885826147 AND granted" >/dev/null
kill "$LOCK_PID" 2>/dev/null
wait "${BURST_PIDS[@]}"
burst_check burst/held held "20 first connects, creation held"

# ---------------------------------------------------------------- owner = and template =

DB=seeded--feature/copy
check_eq "before: $DB does not exist" 0 "$(db_count "$DB")"
out=$(probe seeded feature/copy "SELECT current_database(), note FROM seeded")
check_eq "template: the first connection lands in a copy of seed_template" "$DB	from the template" "$out"
check_eq "owner = app_owner: the created database is app_owner's" app_owner "$(db_owner "$DB")"
check_eq "template: one \"created database\" line" 1 "$(created_lines "$DB")"

# ---------------------------------------------------------------- provision = manual

DB=manual--feature/x
out=$(probe manual feature/x)
check_match "manual: the first connection gets 3D000" '^ERROR 3D000 ' "$out"
check_match "manual: the message names the database" "database \"$DB\" does not exist" "$out"
check_eq "manual: nothing was created" 0 "$(db_count "$DB")"
check_eq "manual: no CREATE DATABASE reached the server" 0 "$(create_statements "$DB")"
out=$(in_env manual --branch feature/x -- psql -X -c 'SELECT 1' 2>&1)
check_match "manual (psql): the error is 'does not exist'" "FATAL: +database \"$DB\" does not exist" "$out"
check_match "manual (psql): HINT names pglane provision" '^HINT: .*pglane provision' "$out"
out=$("$PGLANE" provision -c "$CONF" manual --branch feature/x 2>&1)
check_match "manual: pglane provision creates it" "^$DB: created" "$out"
check_eq "manual: after pglane provision the client lands" "$DB" "$(probe manual feature/x)"

# ---------------------------------------------------------------- no CREATEDB

DB=low--feature/y
out=$(probe low feature/y)
check_match "no CREATEDB: the client gets an error" '^ERROR [0-9A-Z]{5} ' "$out"
check_match "no CREATEDB: the message says the instance user lacks CREATEDB" \
	'the instance user "lowly" lacks CREATEDB' "$out"
check_match "no CREATEDB: the message gives the fix" 'ALTER ROLE lowly CREATEDB' "$out"
check_match "no CREATEDB: SQLSTATE 42501 (insufficient_privilege)" '^ERROR 42501 ' "$out"
check_eq "no CREATEDB: nothing was created" 0 "$(db_count "$DB")"
check_match "no CREATEDB: pglane's log says why" "cannot create database \"$DB\" on instance lowly: .*lacks CREATEDB" \
	"$(cat "$PGLANE_LOG")"
check_eq "after the failure pglane still serves others" auto--feature/first "$(probe auto feature/first)"

if [ "$LIB_FAILED" -gt 0 ]; then
	note "pglane log (last 40 lines):"
	note "$(tail -n 40 "$PGLANE_LOG")"
fi
# shellcheck disable=SC2119 # the last pglane started
pglane_stop
finish
