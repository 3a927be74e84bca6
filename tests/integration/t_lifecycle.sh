#!/usr/bin/env bash
# t_lifecycle.sh: `pglane provision`, `status`, `test` and `migrate` (issue 4) against real PostgreSQL
# instances: "main" (TLS, verify-full against the test CA) and "other" (a certificate for the wrong host).
#
# What it holds pglane to: provision creates production and preview and is idempotent; an instance user
# without CREATEDB is told so, with the statement that fixes it; status --json shows Connected, Creating
# (a creation lock held), Error (an instance that is down, a database missing) and Unassigned; `pglane
# test` classifies a refused port, a wrong password, an untrusted CA and a hostname mismatch; migrate runs
# a psql script once per timeline database through a running pglane, reports each, skips cut names, keeps
# going after one database fails (exit 1), and two runs never migrate the same database at once; migrate
# runs node-pg-migrate (from npm, tests/integration/node) in every timeline database of an app, and a second
# run is a no-op.
set -u
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

[ -x "$PGLANE" ] || bail "$PGLANE is not built (make pglane)"

pg_start main || bail "pg_start main"
pg_start other wronghost || bail "pg_start other"
LANE_PORT='' DOWN_PORT=''
if ! { free_port_var LANE_PORT && free_port_var DOWN_PORT; }; then
	bail "free_port"
fi

LOW_PASSWORD=$(openssl rand -hex 12)
pg_psql main "CREATE ROLE lowly LOGIN NOCREATEDB PASSWORD '$LOW_PASSWORD'" || bail "create role lowly"

MAIN_URL="postgresql://postgres:$PG_MAIN_PASSWORD@localhost:$PG_MAIN_PORT/postgres?sslmode=verify-full"
MIGRATE_SQL="psql -X -q -v ON_ERROR_STOP=1 -c 'create table if not exists t(id int)'"
CONF=$TMP/pglane.ini
cat >"$CONF" <<EOF
[pglane]
listen = 127.0.0.1:$LANE_PORT
connect_timeout = 3
login_timeout = 5

[instance main]
url = $MAIN_URL
ca_file = $TEST_CA

; the same server, as a user without CREATEDB
[instance lowly]
url = postgresql://lowly:$LOW_PASSWORD@localhost:$PG_MAIN_PORT/postgres?sslmode=verify-full
ca_file = $TEST_CA

; nothing listens there
[instance down]
url = postgresql://postgres:nothing@127.0.0.1:$DOWN_PORT/postgres?sslmode=require

; no app uses these
[instance spare]
url = postgresql://postgres:$PG_OTHER_PASSWORD@127.0.0.1:$PG_OTHER_PORT/postgres?sslmode=require
[instance badpw]
url = postgresql://postgres:wrong-password@localhost:$PG_MAIN_PORT/postgres?sslmode=verify-full
ca_file = $TEST_CA
[instance badca]
url = $MAIN_URL
ca_file = $OTHER_CA
[instance badhost]
url = postgresql://postgres:$PG_OTHER_PASSWORD@localhost:$PG_OTHER_PORT/postgres?sslmode=verify-full
ca_file = $TEST_CA

[app demo]
instance = main
secret = $(openssl rand -hex 24)
production_branch = main
migrate = $MIGRATE_SQL

[app low]
instance = lowly
secret = $(openssl rand -hex 24)

[app gone]
instance = down
secret = $(openssl rand -hex 24)
provision = manual
EOF
chmod 600 "$CONF"

# with_migrate FILE COMMAND: a copy of CONF whose app demo runs COMMAND as its migration.
with_migrate() {
	awk -v cmd="$2" '/^migrate = / { print "migrate = " cmd; next } { print }' "$CONF" >"$1"
	chmod 600 "$1"
}

# has_table DB TABLE: prints t or f.
has_table() {
	pg_psql main "SELECT to_regclass('public.$2') IS NOT NULL" "$1"
}

dbs_like() {
	pg_psql main "SELECT string_agg(datname, ' ' ORDER BY datname) FROM pg_database WHERE datname LIKE '$1'"
}

# ---------------------------------------------------------------- provision

out=$("$PGLANE" provision -c "$CONF" demo 2>&1)
rc=$?
check_eq "provision demo: exit 0" 0 "$rc" || note "$out"
check_match "provision demo: demo-production created" '^demo-production: created' "$out"
check_match "provision demo: demo-preview created" '^demo-preview: created' "$out"
check_eq "provision demo: both databases exist" "demo-preview demo-production" "$(dbs_like 'demo-%')"

out=$("$PGLANE" provision -c "$CONF" demo 2>&1)
rc=$?
check_eq "provision demo again: exit 0" 0 "$rc"
check_eq "provision demo again: both exist, nothing created" 2 "$(printf '%s\n' "$out" | grep -c ': exists')"

out=$("$PGLANE" provision -c "$CONF" demo --branch feature/one 2>&1)
check_match "provision --branch feature/one: created" '^demo--feature/one: created' "$out"
out=$("$PGLANE" provision -c "$CONF" demo --branch main 2>&1)
check_match "provision --branch main (production_branch): demo-production exists" '^demo-production: exists' "$out"

# several provisioners at once: every one succeeds, the database is made once
RACE_PIDS=()
for i in 1 2 3 4 5; do
	"$PGLANE" provision -c "$CONF" demo --branch feature/race >"$TMP/race.$i" 2>&1 &
	RACE_PIDS+=($!)
done
wait "${RACE_PIDS[@]}"
created=$(cat "$TMP"/race.* | grep -c ': created')
errors=$(cat "$TMP"/race.* | grep -c ': error')
check_eq "5 concurrent provisions of one branch: created once, no error" "1 0" "$created $errors" ||
	note "$(cat "$TMP"/race.*)"

out=$("$PGLANE" provision -c "$CONF" low 2>&1)
rc=$?
check_eq "provision with an instance user without CREATEDB: exit 1" 1 "$rc"
check_match "no CREATEDB: says the user lacks CREATEDB and how to grant it" \
	'low-production: error: .*"lowly" lacks CREATEDB.*fix: .*ALTER ROLE lowly CREATEDB' "$out"

out=$("$PGLANE" provision -c "$CONF" gone 2>&1)
check_match "provision on an instance that is down: refused, with host and port" \
	"gone-production: error: connection failed: 127\\.0\\.0\\.1:$DOWN_PORT refused" "$out"

# ---------------------------------------------------------------- status

# a creation lock held on low-preview: status must show it as Creating
bg_start psql -X -q -h "$PG_MAIN_SOCKDIR" -p "$PG_MAIN_PORT" -U postgres -d postgres \
	-c "SELECT pg_advisory_lock(1885826147, hashtext('low-preview'))" -c "SELECT pg_sleep(60)" >/dev/null 2>&1
LOCK_PID=$BG_PID
for _ in $(seq 1 50); do
	[ "$(pg_psql main "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1885826147")" = 1 ] && break
	sleep 0.1
done

json=$("$PGLANE" status -c "$CONF" --json 2>&1)
rc=$?
check_eq "status --json with an instance down: exit 1" 1 "$rc"
# shellcheck disable=SC2016 # a JavaScript template literal, not a shell expansion
states=$(printf '%s' "$json" | node -e '
let s = ""; process.stdin.on("data", d => s += d).on("end", () => {
  let o; try { o = JSON.parse(s); } catch (e) { console.log("invalid JSON: " + e.message); return; }
  for (const i of o.instances) {
    console.log(`instance ${i.name} ${i.state} ${i.reachable} ${i.error ? i.error.fault : "-"}`);
    for (const a of i.apps) for (const d of a.databases)
      console.log(`db ${d.name} ${d.state} ${d.timeline} ${d.branch} ${d.error ? d.error.fault : "-"}`);
  } });' 2>&1)
for want in "instance main Connected true -" "db demo-production Connected production null -" \
	"db demo-preview Connected preview null -" "db demo--feature/one Connected branch feature/one -" \
	"instance down Error false refused" "db gone-production Error production null refused" \
	"instance spare Unassigned true -" "instance badpw Unassigned false auth" \
	"db low-production Error production null no-database" "db low-preview Creating preview null -"; do
	if printf '%s\n' "$states" | grep -qxF -- "$want"; then
		ok "status --json: $want"
	else
		fail "status --json: $want" "not in: $states"
	fi
done
kill "$LOCK_PID" 2>/dev/null

out=$("$PGLANE" status -c "$CONF" 2>&1)
check_match "status (text): instance main Connected" '^instance main .*Connected' "$out"
check_match "status (text): an Error names its fix" 'Error +low-production: .*fix: pglane provision' "$out"
if printf '%s' "$out" | grep -q $'\033'; then
	fail "status piped: no colour" "escape sequences in the output"
else
	ok "status piped: no colour"
fi

# ---------------------------------------------------------------- test

out=$("$PGLANE" test -c "$CONF" main 2>&1)
check_eq "test main: exit 0" 0 "$?" || note "$out"
check_match "test main: TLS verified" 'TLS +ok: TLSv1\.[23], certificate and host name verified' "$out"
check_match "test main: ready for routing" '^ready for routing$' "$out"

out=$("$PGLANE" test -c "$CONF" down 2>&1)
check_eq "test, port refused: exit 1" 1 "$?"
check_match "test, port refused: connection failed, refused, with the fix" \
	"connect +FAILED: connection failed: 127\\.0\\.0\\.1:$DOWN_PORT refused" "$out"
check_match "test, port refused: a fix line" '^ +fix: check the host and port' "$out"

out=$("$PGLANE" test -c "$CONF" badpw 2>&1)
check_eq "test, wrong password: exit 1" 1 "$?"
check_match "test, wrong password: authentication failed" 'login +FAILED: authentication failed' "$out"

out=$("$PGLANE" test -c "$CONF" badca 2>&1)
check_eq "test, untrusted CA: exit 1" 1 "$?"
check_match "test, untrusted CA: not signed by a trusted CA" 'TLS +FAILED: .*not signed by a trusted CA' "$out"

out=$("$PGLANE" test -c "$CONF" badhost 2>&1)
check_eq "test, hostname mismatch: exit 1" 1 "$?"
check_match "test, hostname mismatch: not valid for host name localhost" \
	'TLS +FAILED: .*not valid for host name "localhost"' "$out"

out=$("$PGLANE" test -c "$CONF" lowly 2>&1)
check_eq "test, no CREATEDB with provision = auto: exit 1" 1 "$?"
check_match "test, no CREATEDB: permission denied, ALTER ROLE" 'CREATEDB +FAILED: permission denied.*' "$out"

out=$("$PGLANE" test --url "$MAIN_URL&sslrootcert=$TEST_CA" 2>&1)
check_eq "test --url: exit 0" 0 "$?" || note "$out"
check_match "test --url: prints the instance section" '^\[instance localhost\]$' "$out"
check_match "test --url: prints the split keys" "^port = $PG_MAIN_PORT\$" "$out"
check_match "test --url: ca_file from sslrootcert" "^ca_file = $TEST_CA\$" "$out"

# ---------------------------------------------------------------- migrate

out=$("$PGLANE" migrate -c "$CONF" demo 2>&1)
check_eq "migrate without a running pglane: exit 1" 1 "$?"
check_match "migrate without a running pglane: says to start it" 'pglane is not accepting connections' "$out"

pglane_start "$CONF" || bail "pglane did not start"

LONG_BRANCH=feature/a-really-long-branch-name-that-goes-well-past-the-postgres-identifier-limit
"$PGLANE" provision -c "$CONF" demo --branch feature/two >/dev/null 2>&1
"$PGLANE" provision -c "$CONF" demo --branch "$LONG_BRANCH" >/dev/null 2>&1
LONG_DB=$("$PGLANE" exec -c "$CONF" demo --branch "$LONG_BRANCH" -- printenv PGDATABASE)

out=$("$PGLANE" migrate -c "$CONF" demo 2>&1)
check_eq "migrate demo (production): exit 0" 0 "$?" || note "$out"
check_match "migrate demo: one result line" '^demo-production: ok \([0-9.]+ s\)$' "$out"
check_eq "migrate demo: table t in demo-production" t "$(has_table demo-production t)"
check_eq "migrate demo: nothing in demo-preview yet" f "$(has_table demo-preview t)"

out=$("$PGLANE" migrate -c "$CONF" demo --all 2>&1)
check_eq "migrate --all: exit 0" 0 "$?" || note "$out"
for db in demo-production demo-preview demo--feature/one demo--feature/two demo--feature/race; do
	check_eq "migrate --all: table t in $db" t "$(has_table "$db" t)"
	check_match "migrate --all: $db reported ok" "^$db: ok " "$out"
done
check_match "migrate --all: the cut name is skipped, with the reason" "^$LONG_DB: skipped: a cut name" "$out"
check_match "migrate --all: summary" '^migrate demo: 5 ok, 0 failed, 1 skipped$' "$out"

pg_createdb main "demo--bad/branch" || bail "create demo--bad/branch"
cat >"$TMP/migrate-fail.sh" <<'EOF'
case $PGDATABASE in
*bad*) echo "refusing to migrate $PGDATABASE" >&2; exit 3 ;;
esac
exec psql -X -q -v ON_ERROR_STOP=1 -c 'create table if not exists t2(id int)'
EOF
with_migrate "$TMP/fail.ini" "sh $TMP/migrate-fail.sh"
out=$("$PGLANE" migrate -c "$TMP/fail.ini" demo --all 2>&1)
check_eq "migrate --all, one branch fails: exit 1" 1 "$?"
check_match "the failing branch: its output, prefixed" '^\[branch bad/branch\] refusing to migrate demo--bad/branch$' "$out"
check_match "the failing branch: failed, exit status 3" '^demo--bad/branch: failed \(exit status 3, [0-9.]+ s\)$' "$out"
for db in demo-production demo-preview demo--feature/one demo--feature/two; do
	check_eq "one branch failed: $db migrated all the same" t "$(has_table "$db" t2)"
done
check_eq "the failing branch has no t2" f "$(has_table demo--bad/branch t2)"

# two runs at once on one database: the second waits for the first
cat >"$TMP/migrate-slow.sh" <<EOF
echo "start \$PGDATABASE" >>"$TMP/slow.log"
sleep 1
echo "end \$PGDATABASE" >>"$TMP/slow.log"
EOF
with_migrate "$TMP/slow.ini" "sh $TMP/migrate-slow.sh"
"$PGLANE" migrate -c "$TMP/slow.ini" demo --preview >"$TMP/slow.1" 2>&1 &
FIRST_PID=$!
sleep 0.3
"$PGLANE" migrate -c "$TMP/slow.ini" demo --preview >"$TMP/slow.2" 2>&1 &
SECOND_PID=$!
wait "$FIRST_PID" "$SECOND_PID"
check_eq "two migrate runs on one database: one after the other" \
	"start demo-preview|end demo-preview|start demo-preview|end demo-preview" "$(paste -sd'|' "$TMP/slow.log")"
# shellcheck disable=SC2016 # backquotes in the expected text
check_match "the second run says it waits" '^\[preview\] waiting: another `pglane migrate` is migrating demo-preview$' \
	"$(cat "$TMP/slow.2")"

# ---------------------------------------------------------------- migrate with node-pg-migrate

# An app whose migrations are node-pg-migrate's (tests/integration/node/migrations), run as a build system
# would: `pglane migrate --all` through the running pglane, the tool reading DATABASE_URL from the
# environment pglane gives it.  Its timelines: production, preview, a branch with a '/' and one without.
NPM_BIN=$NODE_DIR/node_modules/.bin/node-pg-migrate
NODE_MIGRATE="$NPM_BIN up -m $NODE_DIR/migrations"
NODE_MIGRATION=1700000000000_create-widgets
WEB_DBS="web-production web-preview web--feature/login web--hotfix-1"
node_ready=1
# node_deps installs the lock only when pg is missing; a node_modules made before node-pg-migrate was
# added to package.json lacks it
if ! node_deps || { [ ! -x "$NPM_BIN" ] &&
	! (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error) >"$TMP/npm-ci-migrate.log" 2>&1; }; then
	fail "node-pg-migrate: npm ci" "$(tail -n 5 "$TMP/npm-ci-migrate.log" 2>/dev/null)"
	node_ready=0
elif [ ! -x "$NPM_BIN" ]; then
	fail "node-pg-migrate: installed" "$NPM_BIN is missing after npm ci"
	node_ready=0
elif [ $((${#NODE_MIGRATE} + 10)) -gt 198 ]; then
	fail "node-pg-migrate: the migrate line fits the ini's 198 bytes" "$((${#NODE_MIGRATE} + 10)) bytes (repo at $REPO)"
	node_ready=0
fi
if [ "$node_ready" = 1 ]; then
	NODE_CONF=$TMP/node.ini
	{
		cat "$CONF"
		printf '\n[app web]\ninstance = main\nsecret = %s\nmigrate = %s\n' "$(openssl rand -hex 24)" "$NODE_MIGRATE"
	} >"$NODE_CONF"
	chmod 600 "$NODE_CONF"
	# shellcheck disable=SC2119 # the last pglane started
	pglane_stop
	pglane_start "$NODE_CONF" || bail "pglane did not start with $NODE_CONF"
	out=$("$PGLANE" provision -c "$NODE_CONF" web 2>&1 &&
		"$PGLANE" provision -c "$NODE_CONF" web --branch feature/login 2>&1 &&
		"$PGLANE" provision -c "$NODE_CONF" web --branch hotfix-1 2>&1)
	check_eq "node-pg-migrate: the app's four databases exist" \
		"web--feature/login web--hotfix-1 web-preview web-production" "$(dbs_like 'web-%')" || note "$out"

	# the result lines alone (the tool's own output can be long: a failure prints a stack)
	web_results() {
		printf '%s\n' "$1" | grep -E '^(web-[^ ]*|migrate web): '
	}
	# the tool's output without indented lines (stack frames, error object fields)
	web_brief() {
		printf '%s\n' "$1" | grep -vE '^\[[^]]*\] {2,}'
	}

	out=$("$PGLANE" migrate -c "$NODE_CONF" web --all 2>&1)
	check_eq "node-pg-migrate, migrate --all: exit 0" 0 "$?" || note "$(web_brief "$out")"
	res=$(web_results "$out")
	check_match "node-pg-migrate, migrate --all: summary" '^migrate web: 4 ok, 0 failed, 0 skipped$' "$res"
	for db in $WEB_DBS; do
		check_match "node-pg-migrate: $db reported ok" "^$db: ok \([0-9.]+ s\)$" "$res"
		check_eq "node-pg-migrate: table widgets in $db" t "$(has_table "$db" widgets)"
		check_eq "node-pg-migrate: pgmigrations in $db records $NODE_MIGRATION" "$NODE_MIGRATION" \
			"$(pg_psql main "SELECT string_agg(name, ',') FROM pgmigrations" "$db" 2>&1)"
		check_match "node-pg-migrate: it reached $db through pglane" \
			"web/.* routed to main database \"$db\"" "$(grep -F "\"$db\"" "$PGLANE_LOG")"
	done
	check_match "node-pg-migrate: its own output, prefixed by the timeline" \
		"^\[branch hotfix-1\] ### MIGRATION $NODE_MIGRATION \(UP\) ###$" "$(grep -F '[branch hotfix-1]' <<<"$out")"

	out=$("$PGLANE" migrate -c "$NODE_CONF" web --all 2>&1)
	check_eq "node-pg-migrate, second run: exit 0" 0 "$?" || note "$(web_brief "$out")"
	res=$(web_results "$out")
	check_match "node-pg-migrate, second run: summary" '^migrate web: 4 ok, 0 failed, 0 skipped$' "$res"
	check_eq "node-pg-migrate, second run: nothing to run, in each database" 4 \
		"$(printf '%s\n' "$out" | grep -c '^\[[^]]*\] No migrations to run!$')"
	for db in $WEB_DBS; do
		check_eq "node-pg-migrate, second run: still one row in $db's pgmigrations" 1 \
			"$(pg_psql main "SELECT count(*) FROM pgmigrations" "$db" 2>&1)"
	done
fi

if [ "$LIB_FAILED" -gt 0 ]; then
	note "pglane log (last 40 lines):"
	note "$(tail -n 40 "$PGLANE_LOG")"
fi
# shellcheck disable=SC2119 # the last pglane started
pglane_stop
finish
