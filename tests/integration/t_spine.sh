#!/usr/bin/env bash
# t_spine.sh: end-to-end tests of pglane's spine with real clients (pqprobe over libpq, psql, pgbench,
# node's pg) against two real PostgreSQL instances: "main" (TLS, checked with verify-full against the test
# CA) and "other" (serving a certificate for the wrong host name, reached with sslmode=require).
#
# What it holds pglane to: every timeline lands in its own database; wrong passwords, malformed or unknown
# user names and foreign databases are refused with the documented SQLSTATEs; instance certificates are
# verified (CA and host name); cancels reach the backend; a dead instance fails fast without hurting the
# others; pgbench, node's pg and psql (application_name, PGOPTIONS) work unchanged; `pglane check` points at
# the bad line of an invalid file.
set -u
# shellcheck source=SCRIPTDIR/lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"

[ -x "$PQPROBE" ] || bail "$PQPROBE is not built (make unit-bins)"
[ -x "$PGLANE" ] || bail "$PGLANE is not built (make pglane)"

pg_start main || bail "pg_start main"
pg_start other wronghost || bail "pg_start other"

LANE_PORT='' LANE2_PORT='' STUCK_PORT=''
if ! { free_port_var LANE_PORT && free_port_var LANE2_PORT && free_port_var STUCK_PORT; }; then
	bail "free_port"
fi

CONNECT_TIMEOUT=2
CONF=$TMP/pglane.ini
cat >"$CONF" <<EOF
; pglane configuration written by t_spine.sh
[pglane]
listen = 127.0.0.1:$LANE_PORT
connect_timeout = $CONNECT_TIMEOUT        ; seconds
login_timeout = 5

[instance main]
url = postgresql://postgres:$PG_MAIN_PASSWORD@localhost:$PG_MAIN_PORT/postgres?sslmode=verify-full
ca_file = $TEST_CA

; "other" serves a certificate for wrong.invalid: fine for sslmode=require, which checks nothing
[instance other]
url = postgresql://postgres:$PG_OTHER_PASSWORD@127.0.0.1:$PG_OTHER_PORT/postgres?sslmode=require

; accepts TCP connections and never says a word
[instance stuck]
url = postgresql://postgres:nothing@127.0.0.1:$STUCK_PORT/postgres?sslmode=require

[app demo]
instance = main
secret = $(openssl rand -hex 24)
production_branch = main

[app side]
instance = other
secret = $(openssl rand -hex 24)

[app stuck]
instance = stuck
secret = $(openssl rand -hex 24)
EOF
chmod 600 "$CONF"



# probe APP TIMELINE-ARGS... [-- ENV-ASSIGNMENTS...]: pqprobe "" (all from the environment) in that
# timeline's environment, with optional overrides (NAME=VALUE, or -u NAME to unset) passed to env(1).
probe() {
	local args=()
	while [ $# -gt 0 ] && [ "$1" != -- ]; do
		args+=("$1")
		shift
	done
	[ $# -gt 0 ] && shift
	in_env "${args[@]}" -- env "$@" "$PQPROBE" --timeout 20 ""
}

# ---------------------------------------------------------------- the CLI before the proxy runs

out=$("$PGLANE" check -c "$CONF" 2>&1)
check_eq "pglane check accepts the test config" 0 "$?" || note "$out"

out=$("$PGLANE" env -c "$CONF" demo --production --format shell 2>&1)
missing=
for v in PGHOST PGPORT PGDATABASE PGUSER PGPASSWORD PGSSLMODE DATABASE_URL; do
	printf '%s\n' "$out" | grep -Eq "^export $v='[^']*'\$" || missing="$missing $v"
done
check_eq "env --format shell: export NAME='value' for all seven variables" "" "$missing" || note "$out"
check_match "env --format shell: PGPORT is pglane's port" \
	"^export PGPORT='$LANE_PORT'\$" "$(printf '%s\n' "$out" | grep '^export PGPORT=')"

out=$("$PGLANE" env -c "$CONF" demo --preview --format dotenv 2>&1)
check_match "env --format dotenv: PGHOST=127.0.0.1" '^PGHOST=127\.0\.0\.1$' "$(printf '%s\n' "$out" | grep '^PGHOST=')"
check_match "env --format dotenv: PGUSER=demo-preview" '^PGUSER=demo-preview$' "$(printf '%s\n' "$out" | grep '^PGUSER=')"

out=$("$PGLANE" env -c "$CONF" demo --branch feature/Login-Page --format json 2>&1)
got=$(printf '%s' "$out" | node -e '
let s = ""; process.stdin.on("data", d => s += d).on("end", () => {
  try { const o = JSON.parse(s); console.log(o.PGDATABASE + " " + Object.keys(o).length); }
  catch (e) { console.log("invalid JSON: " + e.message); } });' 2>&1)
check_eq "env --format json: an object with the variables" "demo--feature/Login-Page 7" "$got" || note "$out"

LONG_BRANCH=feature/JIRA-1234-a-really-long-branch-name-that-goes-well-past-the-postgres-identifier-limit
LONG_FULL=demo--$LONG_BRANCH
LONG_DB=$(env_var demo --branch "$LONG_BRANCH" PGDATABASE)
if [ "${#LONG_DB}" -le 63 ] && [ "${#LONG_DB}" -gt 20 ] && [ "$LONG_DB" != "$LONG_FULL" ] &&
	[ "${LONG_DB#demo--feature/JIRA-1234}" != "$LONG_DB" ]; then
	ok "long branch: PGDATABASE is truncated to ${#LONG_DB} bytes ($LONG_DB)"
else
	fail "long branch: PGDATABASE truncated to at most 63 bytes, keeping the prefix" "got '$LONG_DB'"
	LONG_DB=
fi

# ---------------------------------------------------------------- databases, then the proxy

for db in demo-production demo-preview "demo--feature/Login-Page" "demo--user@example/fix_1.2" ${LONG_DB:+"$LONG_DB"} \
	goodca-production; do
	pg_createdb main "$db" || bail "create database $db on main"
done
pg_createdb other side-production || bail "create database side-production on other"

# "stuck": a listener that accepts and then stays silent, like a host behind a dead link.
bg_start node -e 'require("net").createServer((s) => s.on("error", () => {})).listen(+process.argv[1], "127.0.0.1")' \
	"$STUCK_PORT"
wait_port "$STUCK_PORT" 10 "$BG_PID" || bail "the silent listener did not start"

pglane_start "$CONF" || bail "pglane did not start"
ok "pglane listens on 127.0.0.1:$LANE_PORT"

# ---------------------------------------------------------------- each timeline lands in its database

check_eq "production lands in demo-production" demo-production "$(probe demo --production)"
check_eq "preview lands in demo-preview" demo-preview "$(probe demo --preview)"
check_eq "--branch main (production_branch) lands in demo-production" demo-production "$(probe demo --branch main)"
check_eq "--branch feature/Login-Page lands in its database" "demo--feature/Login-Page" \
	"$(probe demo --branch feature/Login-Page)"
check_eq "--branch user@example/fix_1.2 lands in its database" "demo--user@example/fix_1.2" \
	"$(probe demo --branch user@example/fix_1.2)"
if [ -n "$LONG_DB" ]; then
	check_eq "the long branch lands in its truncated database" "$LONG_DB" "$(probe demo --branch "$LONG_BRANCH")"
fi
check_eq "app side lands in side-production on instance other" side-production "$(probe side --production)"

check_eq "no PGDATABASE (database = user name): production" demo-production \
	"$(probe demo --production -- -u PGDATABASE)"
check_eq "no PGDATABASE (database = user name): feature/Login-Page" "demo--feature/Login-Page" \
	"$(probe demo --branch feature/Login-Page -- -u PGDATABASE)"
if [ -n "$LONG_DB" ]; then
	check_eq "no PGDATABASE (database = user name): the long branch" "$LONG_DB" \
		"$(probe demo --branch "$LONG_BRANCH" -- -u PGDATABASE)"
fi

# shellcheck disable=SC2016 # expanded by sh -c, inside the environment
out=$(in_env demo --branch feature/Login-Page -- sh -c '"$0" --timeout 20 "$DATABASE_URL"' "$PQPROBE")
check_eq "DATABASE_URL (a postgresql:// URL) lands in the branch database" "demo--feature/Login-Page" "$out"

out=$(in_env demo --production -- "$PQPROBE" --timeout 20 "" "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
check_eq "pglane reaches main over TLS" t "$out"

# ---------------------------------------------------------------- refusals

check_match "wrong password: 28P01" '^ERROR 28P01 ' "$(probe demo --production -- PGPASSWORD=wrong)"
check_match "wrong password on a branch: 28P01" '^ERROR 28P01 ' \
	"$(probe demo --branch feature/Login-Page -- PGPASSWORD=pgl_not-the-token)"
for user in demo-prod demo--; do
	check_match "malformed user name '$user': 28000" '^ERROR 28000 ' "$(probe demo --production -- PGUSER=$user)"
done
# A well-formed user of an app that does not exist is answered exactly like a wrong password (after a full
# mock SCRAM exchange, as PostgreSQL does for a missing role), so credentials cannot be used to list apps.
check_match "unknown app 'nosuchapp-production': the same 28P01 as a wrong password" '^ERROR 28P01 ' \
	"$(probe demo --production -- PGUSER=nosuchapp-production)"
check_match "preview credentials asking for demo-production: 42501" '^ERROR 42501 ' \
	"$(probe demo --preview -- PGDATABASE=demo-production)"
check_match "branch credentials asking for another branch's database: 42501" '^ERROR 42501 ' \
	"$(probe demo --branch feature/Login-Page -- PGDATABASE=demo--user@example/fix_1.2)"
PROD_TOKEN=$(env_var demo --production PGPASSWORD)
check_match "production's token with preview's user: 28P01" '^ERROR 28P01 ' \
	"$(probe demo --preview -- PGPASSWORD="$PROD_TOKEN")"

# ---------------------------------------------------------------- instance certificates (verify-full)

CONF2=$TMP/pglane-tls.ini
cat >"$CONF2" <<EOF
[pglane]
listen = 127.0.0.1:$LANE2_PORT
connect_timeout = $CONNECT_TIMEOUT
login_timeout = 5

; main's certificate was not signed by this CA
[instance main-other-ca]
url = postgresql://postgres:$PG_MAIN_PASSWORD@localhost:$PG_MAIN_PORT/postgres?sslmode=verify-full
ca_file = $OTHER_CA

; other's certificate is signed by the test CA but names wrong.invalid, not localhost
[instance other-wrong-host]
url = postgresql://postgres:$PG_OTHER_PASSWORD@localhost:$PG_OTHER_PORT/postgres?sslmode=verify-full
ca_file = $TEST_CA

[instance main-right-ca]
url = postgresql://postgres:$PG_MAIN_PASSWORD@localhost:$PG_MAIN_PORT/postgres?sslmode=verify-full
ca_file = $TEST_CA

[app badca]
instance = main-other-ca
secret = $(openssl rand -hex 24)

[app badhost]
instance = other-wrong-host
secret = $(openssl rand -hex 24)

[app goodca]
instance = main-right-ca
secret = $(openssl rand -hex 24)
EOF
chmod 600 "$CONF2"
MAIN_PID=$PGLANE_PID
if PGLANE_LOG=$TMP/pglane-tls.log pglane_start "$CONF2"; then
	TLS_PID=$PGLANE_PID
	PGLANE_PID=$MAIN_PID
	out=$(LANE_CONF=$CONF2 probe badca --production)
	check_match "verify-full, instance certificate from another CA: 08xxx naming the certificate" \
		'^ERROR 08[0-9A-Z]{3} .*[Cc]ertificate' "$out"
	out=$(LANE_CONF=$CONF2 probe badhost --production)
	check_match "verify-full, certificate for another host: 08xxx naming the host name" \
		'^ERROR 08[0-9A-Z]{3} .*([Hh]ost ?name|localhost|wrong\.invalid)' "$out"
	check_eq "verify-full with the right CA passes" goodca-production "$(LANE_CONF=$CONF2 probe goodca --production)"
	pglane_stop "$TLS_PID"
else
	PGLANE_PID=$MAIN_PID
	fail "second pglane (TLS negative config)" "did not start: $(tail -n 5 "$TMP/pglane-tls.log")"
fi

# ---------------------------------------------------------------- cancel

out=$(in_env demo --production -- "$PQPROBE" --timeout 20 --cancel-after 300 "" "SELECT pg_sleep(30)")
if [[ $out =~ ^SQLSTATE\ 57014\ ELAPSED_MS\ ([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" -lt 1500 ]; then
	ok "pg_sleep(30) cancelled through pglane: 57014 after ${BASH_REMATCH[1]} ms"
else
	fail "pg_sleep(30) cancelled through pglane: 57014 within 1500 ms" "got '$out'"
fi

# ---------------------------------------------------------------- pgbench

if pgbench -i -q -s 1 -h "$PG_MAIN_SOCKDIR" -p "$PG_MAIN_PORT" -U postgres demo-production >"$TMP/pgbench-init.log" 2>&1; then
	out=$(in_env demo --production -- pgbench -n -S -T 3 -c 4 2>&1)
	rc=$?
	processed=$(printf '%s\n' "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
	failed=$(printf '%s\n' "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
	if [ $rc -eq 0 ] && [ "${processed:-0}" -gt 0 ] && [ "$failed" = 0 ]; then
		ok "pgbench -S -T 3 -c 4 through pglane: $processed transactions, none failed"
	else
		fail "pgbench -S -T 3 -c 4 through pglane with no failed transaction" \
			"exit $rc, processed '${processed:-}', failed '${failed:-}': $(printf '%s\n' "$out" | tail -n 4)"
	fi
else
	fail "pgbench -i on demo-production (directly)" "$(tail -n 5 "$TMP/pgbench-init.log")"
fi

# ---------------------------------------------------------------- node's pg

if node_deps; then
	out=$(cd "$NODE_DIR" && "$PGLANE" exec -c "$CONF" demo --branch feature/Login-Page -- node pool.js 2>&1)
	check_eq "node pg: new Pool() under pglane exec lands in the branch database" "demo--feature/Login-Page" "$out"
	out=$(cd "$NODE_DIR" && in_env demo --preview -- node pool.js 2>&1)
	check_eq "node pg: new Pool() with pglane env's variables lands in demo-preview" demo-preview "$out"
else
	fail "node pg" "npm ci failed in $NODE_DIR"
fi

# ---------------------------------------------------------------- psql session parameters

out=$(in_env demo --branch feature/Login-Page -- env PGAPPNAME=spine-psql PGOPTIONS='-c search_path=foo' \
	psql -X -At -c 'SHOW search_path' -c "SELECT current_setting('application_name')" -c 'SELECT current_database()' 2>&1)
check_eq "psql: application_name and PGOPTIONS reach the backend" "$(printf 'foo\nspine-psql\ndemo--feature/Login-Page')" "$out"

# ---------------------------------------------------------------- a dead instance, a silent instance

bg_start in_env demo --production -- "$PQPROBE" --timeout 20 "" "SELECT pg_sleep(2), current_database()" \
	>"$TMP/inflight.out"
INFLIGHT_PID=$BG_PID
sleep 0.3
pg_stop other || note "pg_stop other failed"
t0=$(now_ms)
out=$(probe side --production)
dt=$(($(now_ms) - t0))
if [[ $out == "ERROR 08001 "* ]] && [ $dt -le $(((CONNECT_TIMEOUT + 1) * 1000)) ]; then
	ok "instance other stopped: side gets 08001 after $dt ms"
else
	fail "instance other stopped: side gets 08001 within $((CONNECT_TIMEOUT + 1)) s" "after $dt ms: '$out'"
fi
wait "$INFLIGHT_PID"
check_eq "a demo session in flight meanwhile completes" "$(printf '\tdemo-production')" "$(cat "$TMP/inflight.out")"
check_eq "demo still connects with other down" demo-production "$(probe demo --production)"

t0=$(now_ms)
out=$(probe stuck --production)
dt=$(($(now_ms) - t0))
if [[ $out == "ERROR 08001 "* ]] && [ $dt -le $(((CONNECT_TIMEOUT + 1) * 1000)) ]; then
	ok "silent instance: stuck gets 08001 after $dt ms"
else
	fail "silent instance: stuck gets 08001 within connect_timeout + 1 s" "after $dt ms: '$out'"
fi

# ---------------------------------------------------------------- pglane check on invalid files

BAD=$TMP/bad.ini
printf '[pglane]\nlisten = 127.0.0.1:%s\n[app demo]\nthis line is not ini\n' "$LANE_PORT" >"$BAD"
out=$("$PGLANE" check -c "$BAD" 2>&1)
rc=$?
check_eq "pglane check on a syntax error exits 1" 1 "$rc"
check_match "pglane check names FILE:LINE of the syntax error" 'bad\.ini:4: ' "$out"

BAD2=$TMP/bad2.ini
printf '[pglane]\nlisten = 127.0.0.1:%s\n\n[app demo]\ninstance = nosuch\nsecret = x\n' "$LANE_PORT" >"$BAD2"
out=$("$PGLANE" check -c "$BAD2" 2>&1)
rc=$?
check_eq "pglane check on an unknown instance exits 1" 1 "$rc"
check_match "pglane check names FILE:LINE of the unknown instance" 'bad2\.ini:[45]: ' "$out"

# ---------------------------------------------------------------- the process itself

if kill -0 "$PGLANE_PID" 2>/dev/null; then
	ok "pglane is still running after all of the above"
else
	fail "pglane is still running after all of the above" "it exited: $(tail -n 5 "$PGLANE_LOG")"
fi
pglane_stop
san=$(grep -hE "ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:" "$PGLANE_LOG" "$TMP"/pglane-tls.log 2>/dev/null | head -n 3)
check_eq "no sanitizer report in pglane's logs" "" "$san"

if [ "$LIB_FAILED" -gt 0 ]; then
	note "pglane log (last 60 lines):"
	note "$(tail -n 60 "$PGLANE_LOG")"
fi
finish
