#!/usr/bin/env bash
# t_txnpool.sh: pool_mode = transaction (proxy/pool.c, relay.c), against a real PostgreSQL: idle clients hold
# no server connection; many clients share pool_size server connections, waiting their turn when all are
# busy; a transaction (explicit, failed, or an extended-protocol batch) keeps its server connection to its
# end; COPY, pgbench in simple and extended protocol, node's pg and TLS on either side work through it; a
# cancel reaches the transaction that runs; a session app on the same instance is untouched; a reload
# leaves the sessions working; a configuration with server_idle_timeout = 0 is refused with its line.
set -u
# shellcheck source=SCRIPTDIR/lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"

[ -x "$PGLANE" ] || bail "$PGLANE is not built (make pglane)"
certs_make || bail "certs_make"
pg_start main || bail "pg_start main"
LANE_PORT='' HTTP_PORT=''
free_port_var LANE_PORT || bail "free_port"
free_port_var HTTP_PORT || bail "free_port"
for db in tp-production tp-preview tpt-production ts-production tst-production; do
	pg_createdb main "$db" >/dev/null || bail "createdb $db"
done

CONF=$TMP/pglane.ini
SECRET=$(openssl rand -hex 24)
ADMIN_PASSWORD=$(openssl rand -hex 12)
write_conf() {
	cat >"$CONF" <<EOF
[pglane]
# one worker: these checks count one pool's server connections (each worker has its own)
workers = 1
listen = 127.0.0.1:$LANE_PORT
server_idle_timeout = 30
pool_size = ${1:-2}
query_wait_timeout = 2
# named statements pin their session here (the mode without pglane keeping them); t_prepared.sh: kept
max_prepared_statements = 0
http_listen = 127.0.0.1:$HTTP_PORT
admin_user = admin
admin_password = $ADMIN_PASSWORD
tls_cert = $CERTS/server.crt
tls_key = $CERTS/server.key
log_level = debug

[instance main]
url = postgresql://postgres:$PG_MAIN_PASSWORD@127.0.0.1:$PG_MAIN_PORT/postgres?sslmode=disable

[instance tls]
url = postgresql://postgres:$PG_MAIN_PASSWORD@localhost:$PG_MAIN_PORT/postgres?sslmode=verify-full
ca_file = $TEST_CA

[app tp]
instance = main
secret = $SECRET
pool_mode = transaction

[app tpt]
instance = tls
secret = $SECRET
pool_mode = transaction

[app ts]
instance = main
secret = $SECRET

[app tst]
instance = tls
secret = $SECRET
EOF
	chmod 600 "$CONF"
}
write_conf 2
pglane_start "$CONF" || bail "pglane_start"

q() { local app=$1 && shift && in_env "$app" --production -- psql -X -At -v ON_ERROR_STOP=1 "$@"; }
direct() { PGPASSWORD=$PG_MAIN_PASSWORD psql -X -At -h 127.0.0.1 -p "$PG_MAIN_PORT" -U postgres -d postgres -c "$1"; }
backends() { direct "SELECT count(*) FROM pg_stat_activity WHERE datname = '$1' AND backend_type = 'client backend'"; }

check_eq "a query through transaction pooling" "tp-production" "$(q tp -c "SELECT current_database()")"
check_eq "two statements in one session" "1
2" "$(q tp -c "SELECT 1" -c "SELECT 2")"

# ---------------------------------------------------------------- idle clients hold no server connection
VARS=$("$PGLANE" env -c "$CONF" tp --production --format shell) || bail "pglane env"
PIDS=()
for i in $(seq 1 12); do
	mkfifo "$TMP/in.$i"
	(
		eval "$VARS"
		exec psql -X -At -q -f "$TMP/in.$i" >"$TMP/out.$i" 2>&1
	) &
	PIDS+=($!)
	LIB_PIDS+=($!)
	exec {fd}>"$TMP/in.$i"
	eval "FD_$i=$fd"
done
for i in $(seq 1 12); do
	fdvar=FD_$i
	echo "SELECT 'hello $i';" >&"${!fdvar}"
done
sleep 1
check_eq "12 clients logged in and answered" 12 "$(cat "$TMP"/out.* | grep -c '^hello')"
n=$(backends tp-production)
check "12 idle clients hold at most pool_size (2) server connections ($n)" [ "$n" -ge 1 -a "$n" -le 2 ]
check "pglane logs logins without a server connection" grep -q "(transaction pooling)" "$PGLANE_LOG"

# A transaction keeps its server connection while others come and go: its backend pid never changes.
echo "BEGIN; SELECT 'tx ' || pg_backend_pid();" >&"$FD_1"
sleep 0.3
for i in 2 3 4; do
	fdvar=FD_$i
	echo "SELECT 'q $i ' || pg_backend_pid();" >&"${!fdvar}"
done
sleep 0.5
echo "SELECT 'tx ' || pg_backend_pid(); COMMIT;" >&"$FD_1"
sleep 0.5
mapfile -t txp < <(sed -n 's/^tx //p' "$TMP/out.1")
check "a transaction stays on one server process (${txp[*]})" [ "${#txp[@]}" = 2 -a "${txp[0]:-}" = "${txp[1]:-x}" ]
qps=$(for i in 2 3 4; do sed -n "s/^q $i //p" "$TMP/out.$i"; done | sort -u | tr '\n' ' ')
check "three clients ran meanwhile, all on the other server process ($qps)" \
	[ "$(echo "$qps" | wc -w)" = 1 -a "${qps% }" != "${txp[0]:-}" ]

# A failed transaction holds its connection until ROLLBACK, then the session goes on.
echo "BEGIN; SELECT 1/0;" >&"$FD_5"
sleep 0.3
echo "ROLLBACK; SELECT 'after rollback';" >&"$FD_5"
sleep 0.5
check "a failed transaction's error, then ROLLBACK, then the next statement" \
	grep -q '^after rollback' "$TMP/out.5"

# Waiting: with both connections in open transactions, a third client's query waits, then runs.
echo "BEGIN; SELECT pg_sleep(1.5); COMMIT;" >&"$FD_6"
echo "BEGIN; SELECT pg_sleep(1.5); COMMIT;" >&"$FD_7"
sleep 0.3
t0=$(now_ms)
out=$(q tp -c "SELECT 'waited'")
t1=$(now_ms)
check_eq "a client waits for a free server connection, then runs" waited "$out"
check "... after the busy ones finished ($((t1 - t0)) ms)" [ $((t1 - t0)) -ge 700 ]
n=$(backends tp-production)
check "still at most pool_size server connections ($n)" [ "$n" -le 2 ]

# While both connections run long transactions, SHOW POOLS shows who waits, and query_wait_timeout (2 s)
# ends a transaction that waits too long.
echo "BEGIN; SELECT pg_sleep(4); COMMIT;" >&"$FD_6"
echo "BEGIN; SELECT pg_sleep(4); COMMIT;" >&"$FD_7"
sleep 0.3
in_env tp --production -- psql -X -At -v VERBOSITY=verbose -c "SELECT 'never'" >"$TMP/qwt.out" 2>&1 &
QW=$!
sleep 0.5
pools=$(admin "SHOW POOLS")
check_match "SHOW POOLS: the pool's sessions, one waiting, 2 servers, none idle, pool_size 2" \
	"^main tp-production 1[0-9] 1 2 0 2" "$pools"
check_match "SHOW CLIENTS shows the waiting session" " waiting " "$(admin "SHOW CLIENTS")"
node "$NODE_DIR/httpget.js" "http://127.0.0.1:$HTTP_PORT/metrics" "$TMP/metrics" >/dev/null 2>&1
check_match "/metrics: the pool's waiting session and its 2 server connections" \
	"pglane_pool_waiting\{instance=\"main\",database=\"tp-production\"\} 1 pglane_pool_servers\{instance=\"main\",database=\"tp-production\"\} 2" \
	"$(grep -E '^pglane_pool_(waiting|servers)\{instance="main",database="tp-production"\} [12]$' "$TMP/metrics" | paste -sd ' ' -)"
t0=$(now_ms)
wait "$QW"
t1=$(now_ms)
check_match "a transaction that waited past query_wait_timeout gets 57014" "FATAL:  57014: .*query_wait_timeout" \
	"$(cat "$TMP/qwt.out")"
check "... after 2 to 3 s ($((t1 - t0 + 500)) ms)" [ $((t1 - t0 + 500)) -ge 1900 -a $((t1 - t0 + 500)) -le 3600 ]
sleep 3
check_match "SHOW SERVERS lists idle pooled connections" " idle$" "$(admin "SHOW SERVERS")"

# A client leaves with Terminate: its session ends, no server connection closes.
before=$(direct "SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity WHERE datname = 'tp-production'")
for i in $(seq 1 12); do
	fdvar=FD_$i
	fd=${!fdvar}
	exec {fd}>&-
done
for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
sleep 0.3
after=$(direct "SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity WHERE datname = 'tp-production'")
check_eq "clients that leave close no server connection" "$before" "$after"
check "no other client saw an error (only the division by zero)" \
	[ "$(grep -l ERROR "$TMP"/out.* 2>/dev/null | grep -vc 'out\.5$')" = 0 ]

# ---------------------------------------------------------------- COPY, pgbench, extended protocol
printf '1\tone\n2\ttwo\n3\tthree\n' >"$TMP/rows.tsv"
q tp -c "CREATE TABLE IF NOT EXISTS t (id int, name text)" >/dev/null
q tp -c "\\copy t FROM '$TMP/rows.tsv'" >/dev/null
check_eq "COPY FROM STDIN through transaction pooling" 3 "$(q tp -c "SELECT count(*) FROM t")"
check_eq "COPY TO STDOUT" "3" "$(q tp -c "\\copy t TO STDOUT" | wc -l)"

in_env tp --production -- pgbench -i -q -s 1 >"$TMP/init.out" 2>&1
check "pgbench -i through transaction pooling" grep -q "done" "$TMP/init.out"
(while :; do
	direct "SELECT count(*) FROM pg_stat_activity WHERE datname = 'tp-production' AND application_name = 'pgbench'"
	sleep 0.1
done) >"$TMP/samples" 2>/dev/null &
SAMPLER=$!
LIB_PIDS+=("$SAMPLER")
for mode in simple extended; do
	in_env tp --production -- pgbench -n -c 8 -j 2 -t 300 -M "$mode" >"$TMP/bench.$mode" 2>&1
	check "pgbench -c 8 -M $mode (TPC-B, multi-statement transactions) without a failure" \
		grep -q "number of failed transactions: 0" "$TMP/bench.$mode"
	check_match "... all 2400 transactions done ($mode)" "processed: 2400/2400" "$(cat "$TMP/bench.$mode")"
done
kill "$SAMPLER" 2>/dev/null
wait "$SAMPLER" 2>/dev/null
peak=$(sort -n "$TMP/samples" | tail -n 1)
check "8 pgbench clients used at most pool_size (2) server connections (peak $peak)" [ "${peak:-9}" -le 2 ]
check_eq "the TPC-B transactions all landed" 4800 "$(q tp -c "SELECT count(*) FROM pgbench_history")"

# ---------------------------------------------------------------- node's pg, with its own pool
if node_deps >/dev/null 2>&1; then
	out=$(cd "$NODE_DIR" && in_env tp --production -- env NODE_EXTRA_CA_CERTS="$TEST_CA" node -e '
const { Pool } = require("pg");
const pool = new Pool({ max: 6 });
(async () => {
  const rs = await Promise.all(Array.from({ length: 60 }, (_, i) =>
    pool.query("SELECT $1::int * 2 AS v", [i])));
  const c = await pool.connect();
  await c.query("BEGIN");
  await c.query("INSERT INTO t VALUES ($1, $2)", [9, "nine"]);
  await c.query("COMMIT");
  c.release();
  const n = await pool.query("SELECT count(*)::int AS n FROM t WHERE id = 9");
  console.log(rs.reduce((a, r) => a + r.rows[0].v, 0), n.rows[0].n);
  await pool.end();
})().catch((e) => { console.log("ERROR", e.message); process.exit(1); });
' 2>&1)
	check_eq "node pg: 60 parameterized queries on 6 connections and a transaction" "3540 1" "$out"
	# A named prepared statement lives on one server process: the session that names one keeps its server
	# connection (SHOW CLIENTS: pinned).  Without that, the other client's BEGIN takes the connection the
	# statement was prepared on (the warmest) and the second execution finds no such statement.
	rm -f "$TMP/pinned.go"
	cd "$NODE_DIR" && in_env tp --production -- env NODE_EXTRA_CA_CERTS="$TEST_CA" TMPD="$TMP" node -e '
const { Client } = require("pg");
const fs = require("fs");
const q = { name: "mypid", text: "SELECT pg_backend_pid() AS pid" };
(async () => {
  const a = new Client(), b = new Client();
  await a.connect(); await b.connect();
  const p1 = (await a.query(q)).rows[0].pid;
  await b.query("BEGIN");
  const p2 = (await a.query(q)).rows[0].pid;
  const other = (await b.query("SELECT pg_backend_pid() AS pid")).rows[0].pid;
  fs.writeFileSync(process.env.TMPD + "/pinned.go", "");
  await new Promise((r) => setTimeout(r, 1500));
  await b.query("COMMIT");
  await a.end(); await b.end();
  // The reset (DISCARD ALL) takes a moment; meanwhile a client may get the other parked connection.
  let r;
  for (let i = 0; i < 50; i++) {
    const c = new Client();
    await c.connect();
    r = (await c.query("SELECT pg_backend_pid() AS pid, (SELECT count(*) FROM pg_prepared_statements)::int AS n")).rows[0];
    await c.end();
    if (r.pid === p1) break;
    await new Promise((res) => setTimeout(res, 100));
  }
  console.log(p1 === p2 ? "same" : "moved", p1 !== other ? "apart" : "shared",
    r.pid === p1 ? "reused" : "not-reused", "statements:" + r.n);
})().catch((e) => { console.log("ERROR", e.message); process.exit(1); });
' >"$TMP/pinned.out" 2>&1 &
	cd "$REPO" || bail "cd"
	for _ in $(seq 1 50); do [ -e "$TMP/pinned.go" ] && break; sleep 0.1; done
	check_match "SHOW CLIENTS: the session that named a statement is pinned" " pinned " "$(admin "SHOW CLIENTS")"
	wait $!
	check_eq "node pg: a named statement runs again on its server process while another client holds a transaction; once the client ends, its connection is reset (DISCARD ALL) and serves the next client" \
		"same apart reused statements:0" "$(cat "$TMP/pinned.out")"
	check "pglane logs the pinned session" grep -q "named prepared statement: this session keeps its server connection" \
		"$PGLANE_LOG"
	check "pglane logs the reset" grep -q "its server connection is reset for the pool" "$PGLANE_LOG"
	# Pinned sessions count against pool_size: with both connections pinned, the next client's query waits
	# out query_wait_timeout, and the error's hint says why.
	(cd "$NODE_DIR" && in_env tp --production -- env NODE_EXTRA_CA_CERTS="$TEST_CA" node -e '
const { Client } = require("pg");
(async () => {
  const a = new Client(), b = new Client(), c = new Client();
  await a.connect(); await b.connect(); await c.connect();
  c.on("error", () => {});
  await a.query({ name: "s", text: "SELECT 1" });
  await b.query({ name: "s", text: "SELECT 1" });
  try { await c.query("SELECT 1"); console.log("served"); } catch (e) { console.log(e.code, e.hint); }
  await a.end(); await b.end();
  process.exit(0);
})().catch((e) => { console.log("ERROR", e.message); process.exit(1); });
' >"$TMP/pinfull.out" 2>&1) &
	sleep 1
	check_match "SHOW POOLS: 3 sessions, 1 waiting, 2 servers, none idle, pool_size 2, 2 pinned (worker 0)" \
		"^main tp-production 3 1 2 0 2 2 0$" "$(admin "SHOW POOLS")"
	node "$NODE_DIR/httpget.js" "http://127.0.0.1:$HTTP_PORT/metrics" "$TMP/metrics.pinned" >/dev/null 2>&1
	check_match "/metrics: pglane_pool_pinned 2 for that pool" \
		'^pglane_pool_pinned\{instance="main",database="tp-production"\} 2$' "$(cat "$TMP/metrics.pinned")"
	wait $!
	out=$(cat "$TMP/pinfull.out")
	check_match "two pinned sessions fill pool_size (2): the next query gets 57014, with a hint naming them" \
		"^57014 2 sessions of this pool keep a server connection to their end for named prepared statements" "$out"
else
	note "node_deps unavailable: node's pg check skipped"
fi

# ---------------------------------------------------------------- cancel
out=$(in_env tp --production -- "$PQPROBE" --timeout 20 --cancel-after 300 "" "SELECT pg_sleep(30)")
check_match "cancel reaches the running transaction's server" '^SQLSTATE 57014' "$out"
check_eq "the session goes on after the cancel" ok "$(q tp -c "SELECT 'ok'")"

# A client that sends its query and Terminate at once and leaves: the server process exits with it, so its
# connection must not go back to the pool for the next client (of the same pool: pqprobe's, both ways).
for i in 1 2 3; do
	in_env tp --production -- "$PQPROBE" --fire "" "SELECT pg_sleep(0.2)" >/dev/null 2>&1
done
sleep 0.5
ok_n=0
for i in $(seq 1 6); do
	[ "$(in_env tp --production -- "$PQPROBE" "" "SELECT 'alive'" 2>&1)" = alive ] && ok_n=$((ok_n + 1))
done
check_eq "after clients that left with Terminate mid-query, every next client is served" 6 "$ok_n"

# ---------------------------------------------------------------- TLS toward the instance, client TLS
check_eq "transaction pooling over TLS to the instance" tpt-production "$(q tpt -c "SELECT current_database()")"
p1=$(q tpt -c "SELECT pg_backend_pid()")
p2=$(q tpt -c "SELECT pg_backend_pid()")
check "a TLS server connection is reused across clients ($p1, $p2)" [ -n "$p1" -a "$p1" = "$p2" ]
out=$(in_env tp --production -- env PGSSLMODE=verify-full PGSSLROOTCERT="$TEST_CA" PGHOST=localhost \
	psql -X -At -c "SELECT 'tls ' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()" -c "SELECT 2")
check_eq "a TLS client through transaction pooling (two statements)" "tls false
2" "$out"
# Large streams both ways through the client's TLS relay (SSL_read/SSL_write, partial writes), byte for byte.
BIGQ="SELECT i, repeat(md5(i::text), 40) FROM generate_series(1, 12000) i" # about 16 MB
want=$(direct "$BIGQ" | md5sum)
for app in tp ts; do
	got=$(in_env "$app" --production -- env PGSSLMODE=require psql -X -At -c "$BIGQ" | md5sum)
	check_eq "a 16 MB result over client TLS arrives byte for byte ($app)" "$want" "$got"
done
seq 1 300000 | sed 's/$/	some text to make the rows longer than a number/' >"$TMP/big.tsv"
q tp -c "CREATE TABLE IF NOT EXISTS big (id int, t text)" >/dev/null
in_env tp --production -- env PGSSLMODE=require psql -X -At -c "\copy big FROM '$TMP/big.tsv'" >/dev/null
check_eq "a 15 MB COPY FROM STDIN over client TLS lands whole" "300000 $(md5sum <"$TMP/big.tsv" | cut -c1-32)" \
	"$(q tp -c "SELECT count(*) || ' ' || md5(string_agg(id || E'\t' || t || E'\n', '' ORDER BY id)) FROM big")"
# TLS on both sides: the server's TLS also relays on its socket (SSL_read/SSL_write), and goes back to its
# bufferevent when the connection is parked (transaction mode) or kept for the next client (session mode).
want=$(direct "$BIGQ" | md5sum)
for app in tpt tst; do
	got=$(in_env "$app" --production -- env PGSSLMODE=require psql -X -At -c "$BIGQ" -c "SELECT 1" -c "$BIGQ" | md5sum)
	check_eq "two 16 MB results over TLS on both sides arrive byte for byte ($app)" \
		"$( (direct "$BIGQ" && echo 1 && direct "$BIGQ") | md5sum)" "$got"
done
q tpt -c "CREATE TABLE IF NOT EXISTS big (id int, t text)" -c "TRUNCATE big" >/dev/null
in_env tpt --production -- env PGSSLMODE=require psql -X -At -c "\copy big FROM '$TMP/big.tsv'" >/dev/null
check_eq "a 15 MB COPY FROM STDIN over TLS on both sides lands whole" "300000 $(md5sum <"$TMP/big.tsv" | cut -c1-32)" \
	"$(q tpt -c "SELECT count(*) || ' ' || md5(string_agg(id || E'\t' || t || E'\n', '' ORDER BY id)) FROM big")"
p1=$(q tst -c "SELECT pg_backend_pid()")
p2=$(q tst -c "SELECT pg_backend_pid()")
check "session mode keeps a TLS server connection for the next client ($p1, $p2)" [ -n "$p1" -a "$p1" = "$p2" ]
in_env tpt --production -- pgbench -i -q >/dev/null 2>&1
in_env tpt --production -- env PGSSLMODE=require pgbench -n -c 6 -j 2 -t 300 >"$TMP/bench.tpt" 2>&1
check "pgbench TPC-B, 6 TLS clients on 2 TLS server connections, parked and taken 1800 times, without a failure" \
	grep -q "number of failed transactions: 0" "$TMP/bench.tpt"
# Churn over TLS on both sides: 12 TLS clients share the 2 TLS server connections while other clients are
# cut in the middle of their queries; nothing fails, pglane stays up, and the pool is whole after.
(
	end=$((SECONDS + 4))
	while [ $SECONDS -lt $end ]; do
		in_env tpt --production -- env PGSSLMODE=require timeout 0.3 psql -X -At -c "SELECT pg_sleep(1)" \
			>/dev/null 2>&1
	done
) &
churn=$!
in_env tpt --production -- env PGSSLMODE=require pgbench -n -c 12 -j 2 -T 4 -S >"$TMP/bench.churn" 2>&1
wait "$churn"
check "12 TLS clients on 2 TLS server connections while others are cut mid-query: no failed transaction" \
	grep -q "number of failed transactions: 0" "$TMP/bench.churn"
check_eq "... and pglane serves the next client" tpt-production "$(q tpt -c "SELECT current_database()")"
in_env tp --production -- env PGSSLMODE=require pgbench -n -c 4 -j 2 -t 200 -S >"$TMP/bench.tls" 2>&1
check "pgbench -S -c 4 over client TLS without a failure" grep -q "number of failed transactions: 0" \
	"$TMP/bench.tls"

# ---------------------------------------------------------------- the session app is untouched
s1=$(q ts -c "SET application_name = 'mine'" -c "SELECT current_setting('application_name')")
check_eq "a session-mode app on the same instance keeps its settings" "SET
mine" "$s1"

# ---------------------------------------------------------------- reload, then shutdown
mkfifo "$TMP/in.r"
(
	eval "$VARS"
	exec psql -X -At -q -f "$TMP/in.r" >"$TMP/out.r" 2>&1
) &
RP=$!
LIB_PIDS+=("$RP")
exec {RFD}>"$TMP/in.r"
echo "SELECT 'before';" >&"$RFD"
sleep 0.3
write_conf 3
kill -HUP "$PGLANE_PID"
sleep 0.5
echo "SELECT 'after';" >&"$RFD"
exec {RFD}>&-
wait "$RP"
check_eq "a transaction-mode session goes on across a reload" "before
after" "$(cat "$TMP/out.r")"
check_eq "new sessions after the reload" ok "$(q tp -c "SELECT 'ok'")"

# ---------------------------------------------------------------- configuration
BAD=$TMP/bad.ini
cat >"$BAD" <<EOF
[pglane]
server_idle_timeout = 0

[instance main]
host = 127.0.0.1

[app x]
instance = main
secret = $SECRET
pool_mode = transaction
EOF
chmod 600 "$BAD"
out=$("$PGLANE" check -c "$BAD" 2>&1)
rc=$?
check "pglane check refuses transaction pooling without server_idle_timeout (exit $rc)" [ "$rc" != 0 ]
check_match "... naming the line" "bad.ini:10: pool_mode = transaction needs server_idle_timeout" "$out"

pglane_stop
check "no sanitizer or assertion report" bash -c "! grep -qE 'AddressSanitizer|runtime error|Assertion' '$PGLANE_LOG'"
finish
