#!/usr/bin/env bash
# t_prepared.sh: named prepared statements under transaction pooling (max_prepared_statements, proxy/stmt.c),
# against a real PostgreSQL: a client's statement follows it to whichever server connection runs its next
# transaction; clients naming the same statement differently, or different statements alike, never see
# each other's; PostgreSQL's own answers hold through pglane (42P05 for a name in use, 26000 for an unknown
# one, a failed Parse leaves no name, a Parse skipped after an error in a pipeline leaves none either,
# DISCARD ALL drops them all); a connection keeps at most max_prepared_statements, closing the least
# recently used; pgbench -M prepared (select-only and tpcb-like), libpq pipelines and node's pg named
# queries run with no failure; sessions with named statements no longer pin a server connection.
set -u
# shellcheck source=SCRIPTDIR/lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"

[ -x "$PGLANE" ] || bail "$PGLANE is not built (make pglane)"
[ -x "$STMTPROBE" ] || bail "$STMTPROBE is not built (make unit-bins)"
pg_start main || bail "pg_start main"
LANE_PORT='' HTTP_PORT=''
free_port_var LANE_PORT || bail "free_port"
free_port_var HTTP_PORT || bail "free_port"
pg_createdb main ps-production >/dev/null || bail "createdb ps-production"

CONF=$TMP/pglane.ini
ADMIN_PASSWORD=$(openssl rand -hex 12)
cat >"$CONF" <<EOF
[pglane]
# one worker: the checks count one pool's server connections
workers = 1
listen = 127.0.0.1:$LANE_PORT
http_listen = 127.0.0.1:$HTTP_PORT
admin_user = admin
admin_password = $ADMIN_PASSWORD
server_idle_timeout = 30
pool_mode = transaction
pool_size = 2
query_wait_timeout = 10
max_prepared_statements = 3
log_level = debug

[instance main]
url = postgresql://postgres:$PG_MAIN_PASSWORD@127.0.0.1:$PG_MAIN_PORT/postgres?sslmode=disable

[app ps]
instance = main
secret = $(openssl rand -hex 24)
EOF
chmod 600 "$CONF"
pglane_start "$CONF" || bail "pglane_start"

probe() { in_env ps --production -- "$STMTPROBE" "" "$@" 2>&1; }
metric() { node "$NODE_DIR/httpget.js" "http://127.0.0.1:$HTTP_PORT/metrics" /dev/stdout 2>/dev/null | sed -n "s/^$1 //p"; }
direct_probe() { "$STMTPROBE" "host=127.0.0.1 port=$PG_MAIN_PORT user=postgres password=$PG_MAIN_PASSWORD dbname=ps-production" "$@" 2>&1; }

# ---------------------------------------------------------------- PostgreSQL's answers, through pglane
steps=(prepare s1 "SELECT 1" prepare s1 "SELECT 2" exec s1 exec nope prepare s2 "SELEC 1" prepare s2 "SELECT \$1::int * 2"
	exec s2 =21)
want=$(direct_probe "${steps[@]}")
check_eq "PostgreSQL's own answers (checked directly first)" 'ok
ERROR 42P05 prepared statement "s1" already exists
1
ERROR 26000 prepared statement "nope" does not exist
ERROR 42601 syntax error at or near "SELEC"
ok
42' "$want"
check_eq "through pglane: 42P05 for a name in use (the first stays), 26000 for an unknown one, a failed Parse leaves no name" \
	"$want" "$(probe "${steps[@]}")"

steps=(pipeline-fail s3 "SELECT 3" prepare s3 "SELECT 33" exec s3)
check_eq "a Parse skipped after an error in a pipeline leaves no name (as directly)" \
	"$(direct_probe "${steps[@]}")" "$(probe "${steps[@]}")"
check_eq "  ... which is: the error, the Parse skipped, then a Parse of that name works" 'ERROR 22012,skipped
ok
33' "$(probe "${steps[@]}")"

steps=(pipeline-use u "SELECT 'used'" pipeline-fail u "SELECT 'again'" pipeline-use u "SELECT 'once more'")
check_eq "pipelines: a name prepared, synced and used at once (pglane waits for the Parse's answer); a Parse skipped after an error; the name still the first text's (as directly)" \
	"$(direct_probe "${steps[@]}")" "$(probe "${steps[@]}")"
check_eq "  ... which is" 'ok
used
ERROR 22012,skipped
ERROR 42P05
used' "$(probe "${steps[@]}")"

steps=(prepare x1 "SELECT 'x'" query "BEGIN" query "SELECT 1/0" prepare x2 "SELECT 'x'" query "ROLLBACK"
	prepare x2 "SELECT 'x'" exec x2)
check_eq "in a failed transaction a Parse of a text the connection has is refused (25P02), and its name stays free (as directly)" \
	"$(direct_probe "${steps[@]}")" "$(probe "${steps[@]}")"

steps=(query "CREATE TABLE IF NOT EXISTS copied (n int)" prepare cnt "SELECT count(*) FROM copied" copy-in copied 1000
	exec cnt copy-in copied 10 exec cnt query "DROP TABLE copied")
check_eq "COPY FROM STDIN through the extended protocol (its Sync ignored by the server) between named statements (as directly)" \
	"$(direct_probe "${steps[@]}")" "$(probe "${steps[@]}")"
check_eq "  ... which is" 'ok
ok
ok
1000
ok
1010
ok' "$(probe "${steps[@]}")"

steps=(prepare d "SELECT 'd'" query "DISCARD ALL" exec d prepare d "SELECT 'again'" exec d query "DEALLOCATE ALL" exec d
	prepare d "SELECT 'third'" query "SELECT 1; DEALLOCATE ALL" exec d prepare d "SELECT 'fourth'" query "DEALLOCATE all_x"
	exec d)
check_eq "DISCARD ALL and DEALLOCATE ALL drop the client's statements (as directly)" \
	"$(direct_probe "${steps[@]}")" "$(probe "${steps[@]}")"

# A Bind of 100 kB and a row of 300 kB span many reads each way.
big=$(head -c 50000 /dev/zero | tr '\0' a)
steps=(prepare big "SELECT md5(\$1 || \$1), repeat(\$1, 3), length(\$1)" exec big "=$big$big" exec big "=x")
check_eq "a 100 kB parameter and a 300 kB row through a named statement (as directly)" \
	"$(direct_probe "${steps[@]}")" "$(probe "${steps[@]}")"

# ---------------------------------------------------------------- max_prepared_statements = 3
closed0=$(metric pglane_prepared_statements_closed_total)
out=$(probe prepare a "SELECT 'a'" prepare b "SELECT 'b'" prepare c "SELECT 'c'" prepare d "SELECT 'd'" \
	prepare e "SELECT 'e'" pipeline-batch 3 a b c d e -- exec a)
check_eq "five statements over a connection that keeps three: each answers right, in a pipeline too" 'ok
ok
ok
ok
ok
a,b,c,d,e,a,b,c,d,e,a,b,c,d,e
a' "$out"
closed1=$(metric pglane_prepared_statements_closed_total)
check "the least recently used were closed on the server to make room ($closed0 -> $closed1)" \
	[ "${closed1:-0}" -gt "${closed0:-0}" ]

# ---------------------------------------------------------------- clients apart
# Six clients at once over pool_size 2, each naming its own text "s", another naming "s" with text of its
# own: every execution answers its own client's statement.
apart=()
for i in 1 2 3 4 5 6; do
	probe prepare s "SELECT $i" prepare t "SELECT 'same text'" pipeline-batch 10 s -- exec t >"$TMP/apart.$i" &
	apart+=($!)
done
wait "${apart[@]}"
bad=0
for i in 1 2 3 4 5 6; do
	want="ok
ok
$(printf "$i%.0s," $(seq 1 10) | sed 's/,$//')
same text"
	[ "$(cat "$TMP/apart.$i")" = "$want" ] || { bad=$((bad + 1)); note "client $i: $(tr '\n' ' ' <"$TMP/apart.$i")"; }
done
check_eq "six concurrent clients over two server connections, one name, six statements: each sees its own" 0 "$bad"
n=$(PGPASSWORD=$PG_MAIN_PASSWORD psql -X -At -h 127.0.0.1 -p "$PG_MAIN_PORT" -U postgres -d postgres -c \
	"SELECT count(*) FROM pg_stat_activity WHERE datname = 'ps-production' AND backend_type = 'client backend'")
check "... on at most pool_size (2) server connections ($n)" [ "$n" -le 2 ]

# ---------------------------------------------------------------- pgbench -M prepared
in_env ps --production -- pgbench -i -q -s 1 >"$TMP/init.out" 2>&1
check "pgbench -i through pglane" grep -q "done" "$TMP/init.out"
in_env ps --production -- pgbench -n -S -M prepared -c 8 -j 2 -T 3 >"$TMP/bench.S" 2>&1
check_match "pgbench -S -M prepared, 8 clients over pool_size 2: no failed transaction" \
	"number of failed transactions: 0 " "$(cat "$TMP/bench.S")"
check "  ... and transactions ran" grep -Eq "^number of transactions actually processed: [1-9]" "$TMP/bench.S"
# tpcb-like holds a server connection from BEGIN to END; pgbench prepares each statement with a blocking
# PQprepare(), so every client has a thread of its own (-j 4) or a thread's clients would wait on each other.
in_env ps --production -- pgbench -n -M prepared -c 4 -j 4 -T 3 >"$TMP/bench.tpcb" 2>&1
check_match "pgbench tpcb-like -M prepared, 4 clients over pool_size 2: no failed transaction" \
	"number of failed transactions: 0 " "$(cat "$TMP/bench.tpcb")"
check "  ... and transactions ran" grep -Eq "^number of transactions actually processed: [1-9]" "$TMP/bench.tpcb"
answered=$(metric pglane_prepared_statements_answered_total)
prepared=$(metric pglane_prepared_statements_prepared_total)
check "/metrics: Parses answered by pglane ($answered) and statements prepared on servers ($prepared)" \
	[ "${answered:-0}" -gt 0 -a "${prepared:-0}" -gt 0 ]
check_match "SHOW STATS counts them too" "^prepared_statements_answered [1-9]" "$(admin "SHOW STATS")"
check_match "SHOW CONFIG shows max_prepared_statements" "^max_prepared_statements 3$" "$(admin "SHOW CONFIG")"

# ---------------------------------------------------------------- node's pg
if node_deps; then
	# a names a statement and runs it; b's BEGIN then takes the connection it ran on (the warmest); a runs
	# it again on the other connection, where pglane prepares it first.  PgBouncer before 1.21 (and
	# pglane with max_prepared_statements = 0, t_txnpool.sh) would instead keep a's connection for a.
	out=$(cd "$NODE_DIR" && in_env ps --production -- node -e '
const { Client } = require("pg");
const q = { name: "mypid", text: "SELECT pg_backend_pid() AS pid, $1::text AS v", values: ["x"] };
(async () => {
  const a = new Client(), b = new Client();
  await a.connect(); await b.connect();
  const p1 = (await a.query(q)).rows[0].pid;
  await b.query("BEGIN");
  const pb = (await b.query("SELECT pg_backend_pid() AS pid")).rows[0].pid;
  const r = (await a.query(q)).rows[0];
  await b.query("COMMIT");
  console.log(pb === p1 ? "taken" : "not-taken", r.pid !== p1 ? "moved" : "stayed", r.v);
  await a.end(); await b.end();
})().catch((e) => { console.log("ERROR", e.code, e.message); process.exit(1); });
' 2>&1)
	check_eq "node pg: a named query runs again on another server connection while its first is in another's transaction" \
		"taken moved x" "$out"
	out=$(cd "$NODE_DIR" && in_env ps --production -- node -e '
const { Pool } = require("pg");
(async () => {
  const pool = new Pool({ max: 6 });
  const rs = await Promise.all(Array.from({ length: 60 }, (_, i) =>
    pool.query({ name: "q" + (i % 7), text: "SELECT $1::int + " + (i % 7) + " AS v", values: [i] })));
  let bad = 0;
  rs.forEach((r, i) => { if (r.rows[0].v !== i + (i % 7)) bad++; });
  console.log("wrong:" + bad);
  await pool.end();
})().catch((e) => { console.log("ERROR", e.code, e.message); process.exit(1); });
' 2>&1)
	check_eq "node pg: 60 named queries (7 names) on 6 connections over pool_size 2, every answer right" "wrong:0" "$out"
else
	note "node_deps unavailable: node's pg checks skipped"
fi

check_match "SHOW POOLS: no session pinned" "^main ps-production [0-9]+ 0 [0-9]+ [0-9]+ 2 0 0$" "$(admin "SHOW POOLS")"
check "pglane never pinned a session" bash -c "! grep -q 'named prepared statement: this session keeps' '$PGLANE_LOG'"
check "pglane never lost track of the server's answers" bash -c "! grep -q 'lost track' '$PGLANE_LOG'"

finish
