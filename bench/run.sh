#!/usr/bin/env bash
# bench/run.sh: pglane, PgBouncer and direct PostgreSQL side by side (issue 7), started by `make bench`.
#
# It starts a throwaway PostgreSQL (initdb in a temp dir as the unprivileged user pglane-test, created
# when missing as tests/integration/lib.sh does; SCRAM, TLS), then pglane and Debian's PgBouncer (session
# pool, SCRAM, the same backend, both offering client TLS with the same certificate), and runs pgbench against
# direct / pgbouncer / pglane interleaved (A B C, A B C, ...) so that drift on a noisy machine cancels:
#   1  -S, simple protocol, 8 clients          1t  the same over client TLS (relay cost with TLS)
#   1s the same with TLS between the proxy and PostgreSQL (verify-full; direct: TLS client to PostgreSQL)
#   2  -S -M prepared, 8 clients               3   -S, 256 clients
#   4  -S -C, a new connection (SCRAM login) per transaction, 8 clients;  4t the same over client TLS
#   5  -S, one client: latency average and p99 from pgbench's per-transaction log
# For each: tps per target, pglane/pgbouncer and pglane/direct, CPU microseconds per transaction of each
# proxy process (utime+stime from /proc/PID/stat, including any child processes, before and after the
# run), and the proxy's peak RSS during the run (VmHWM, reset through /proc/PID/clear_refs before each
# run).  Then memory per idle logged-in client (VmRSS growth / clients) of a fresh pglane and a fresh
# PgBouncer, plaintext and TLS, in session and in transaction pooling, with bench/idle_clients.c (built here
# with cc) holding the clients.
# It writes bench/results.md, prints it, and says for each target of issue 7 whether it holds.
#
# Not part of `make test`, never run in CI: it takes minutes and its numbers depend on the machine.
# Everything listens on 127.0.0.1; everything it starts is stopped on exit (the EXIT trap).
# Self-contained rather than sourcing tests/integration/lib.sh: the benchmark must not move when the test
# harness does, and its directory is not /tmp/pglane-test.*, which test runs on a shared machine may sweep.
#
# Settings (environment):
#   BENCH_SECONDS=8        length of each measured pgbench run
#   BENCH_ROUNDS=2         interleaved rounds per case (at least 2)
#   BENCH_WARMUP=2         seconds of unmeasured warm-up per target before each case's rounds (0: none)
#   BENCH_SCALE=10         pgbench -i scale
#   BENCH_JOBS=2           pgbench -j for the multi-client cases
#   BENCH_CASES="1 1t 1s 2 3 4 4t 5 6 6p idle"   which cases to run (6, 6p: transaction pooling)
#   BENCH_MAX_CONNECTIONS=700   PostgreSQL max_connections: case 3's 256 clients leave each session proxy
#                          holding 256 server connections (kept for the next client), and case 6 runs 64
#                          clients directly beside them (at 600 it met "too many clients" now and then)
#   BENCH_IDLE_CLIENTS     idle clients per session-pooling memory measurement (default: 550, or
#                          max_connections - 50 below 600, since each then holds a server connection)
#   BENCH_IDLE_TXN_CLIENTS=10000   idle clients per transaction-pooling measurement (they hold none)
#   BENCH_PGB_USERLIST=plain   PgBouncer's userlist: plain (the password: one PBKDF2 per client login,
#                          as issue 7's baseline figures) or scram (the SCRAM secret from pg_authid)
#   BENCH_PGLANE_WORKERS   when set, written as [pglane] workers = N
#   BENCH_KERNEL_RELAY=auto   pglane's kernel_relay (off: pglane's own user-space relay, for comparison)
#   BENCH_PERF=0           1: after cases 1 and 4 (BENCH_PERF_CASES), count each proxy's system calls per
#                          transaction (perf stat) and profile pglane (perf record) in extra runs, and add
#                          both to the results; needs perf (linux-perf)
#   BENCH_RESULTS          where to write the markdown (default bench/results.md)
#   BENCH_KEEP=1           keep the temporary directory (logs, raw runs) and print its path
set -u

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
cd "$REPO" || exit 1
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_OS_USER=pglane-test
PGLANE=${PGLANE_BIN:-$REPO/pglane}

# Nothing from the caller's environment may steer libpq, psql or pgbench by accident.
unset PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGSSLMODE PGOPTIONS PGAPPNAME PGSERVICE \
	PGSERVICEFILE PGSSLROOTCERT PGSSLCERT PGSSLKEY PGCONNECT_TIMEOUT PGTARGETSESSIONATTRS PGREQUIRESSL \
	PGCHANNELBINDING PGGSSENCMODE DATABASE_URL
export PGPASSFILE=/nonexistent/pgpass
export PGCONNECT_TIMEOUT=10
# Every client here speaks plaintext or TLS only as the case says; never GSSAPI.
export PGGSSENCMODE=disable

# ---------------------------------------------------------------- processes, ports, cleanup

# Under /tmp even as root: the unprivileged PostgreSQL user must reach it.
TMP=$(mktemp -d /tmp/pglane-bench.XXXXXX) || exit 1
chmod 755 "$TMP"
PIDS=()  # background processes to stop on exit
PG_DATA= # set once the cluster exists
PORTS=() # ports handed out by free_port_var

# shellcheck disable=SC2317 # called by the trap
cleanup() {
	local status=$? pid
	trap - EXIT INT TERM
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null
	done
	if [ -n "$PG_DATA" ]; then
		as_pg_user "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w -t 30 stop >/dev/null 2>&1
	fi
	for pid in "${PIDS[@]}"; do
		if kill -0 "$pid" 2>/dev/null; then
			sleep 0.2
			kill -KILL "$pid" 2>/dev/null
		fi
		wait "$pid" 2>/dev/null
	done
	if [ "${BENCH_KEEP:-0}" = 1 ]; then
		echo "bench: kept $TMP" >&2
	else
		rm -rf "$TMP"
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now_ms() {
	date +%s%3N
}

# as_pg_user CMD...: CMD as the unprivileged PostgreSQL user when root, else as ourselves.
as_pg_user() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u "$PG_OS_USER" -- "$@"
	else
		"$@"
	fi
}

ensure_pg_user() {
	[ "$(id -u)" -eq 0 ] || return 0
	id -u "$PG_OS_USER" >/dev/null 2>&1 && return 0
	useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
		"$PG_OS_USER" || id -u "$PG_OS_USER" >/dev/null 2>&1
}

# free_port_var VAR: sets VAR to a TCP port in 20000-60000 that nothing on this machine uses.
free_port_var() {
	local _ fp_port fp_p fp_taken
	for _ in $(seq 1 200); do
		fp_port=$((20000 + (RANDOM * 32768 + RANDOM) % 40001))
		fp_taken=
		for fp_p in "${PORTS[@]}"; do
			[ "$fp_p" = "$fp_port" ] && fp_taken=1
		done
		[ -z "$fp_taken" ] || continue
		ss -Htan 2>/dev/null | awk '{print $4}' | grep -Eq "[:.]$fp_port\$" && continue
		PORTS+=("$fp_port")
		printf -v "$1" '%s' "$fp_port" # (locals here are fp_*, so that they cannot hide the caller's VAR)
		return 0
	done
	return 1
}

# wait_port PORT SECONDS [PID]: true once 127.0.0.1:PORT accepts; false after SECONDS or once PID exited.
wait_port() {
	local port=$1 deadline pid=${3:-}
	deadline=$(($(now_ms) + $2 * 1000))
	while [ "$(now_ms)" -lt "$deadline" ]; do
		(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
		if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
			return 1
		fi
		sleep 0.1
	done
	return 1
}

# pg_psql SQL: runs SQL as the superuser through the unix socket; prints unaligned tuples.
pg_psql() {
	psql -X -q -At -v ON_ERROR_STOP=1 -h "$PG_SOCKDIR" -p "$PG_PORT" -U postgres -d postgres -c "$1"
}

# pglane_start CONF PORT: pglane in the background, logging to TMP/pglane-PORT.log; sets PGLANE_PID.
pglane_start() {
	"$PGLANE" -c "$1" </dev/null >>"$TMP/pglane-$2.log" 2>&1 &
	PGLANE_PID=$!
	PIDS+=("$PGLANE_PID")
	wait_port "$2" 10 "$PGLANE_PID" || {
		echo "bench: pglane -c $1 is not accepting on port $2: $(tail -n 5 "$TMP/pglane-$2.log")" >&2
		return 1
	}
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

SECS=${BENCH_SECONDS:-8}
ROUNDS=${BENCH_ROUNDS:-2}
WARMUP=${BENCH_WARMUP:-2}
SCALE=${BENCH_SCALE:-10}
JOBS=${BENCH_JOBS:-2}
CASES=${BENCH_CASES:-1 1t 1s 2 3 4 4t 5 6 6p idle}
MAXCONN=${BENCH_MAX_CONNECTIONS:-700}
IDLE_N=${BENCH_IDLE_CLIENTS:-$((MAXCONN > 600 ? 550 : MAXCONN - 50))}
IDLE_TXN_N=${BENCH_IDLE_TXN_CLIENTS:-10000}
PGB_USERLIST=${BENCH_PGB_USERLIST:-plain}
KRELAY=${BENCH_KERNEL_RELAY:-auto}
PERF=${BENCH_PERF:-0}
PERF_CASES=${BENCH_PERF_CASES:-1 4}
RESULTS=${BENCH_RESULTS:-$BENCH_DIR/results.md}
TARGETS=(direct pgbouncer pglane)
DB=bench-production
CLK_TCK=$(getconf CLK_TCK)
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)

die() {
	echo "bench: $*" >&2
	exit 1
}
say() {
	echo "bench: $*" >&2
}

[ "$ROUNDS" -ge 2 ] 2>/dev/null || die "BENCH_ROUNDS must be at least 2"
[ -x "$PGLANE" ] || die "$PGLANE is not built (make pglane)"
[ -x "$PGBOUNCER" ] || die "pgbouncer is not installed (make deps)"
command -v pgbench >/dev/null || die "pgbench is not installed (make deps)"
case $PGB_USERLIST in plain | scram) ;; *) die "BENCH_PGB_USERLIST must be plain or scram" ;; esac

# 256 clients through a proxy need about 520 descriptors in the proxy, the idle test twice its clients.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null
[ "$(ulimit -n)" -ge $((IDLE_TXN_N + 600)) ] ||
	say "warning: open files limit $(ulimit -n) is low for $IDLE_TXN_N idle clients"

DATA=$TMP/bench
mkdir -p "$DATA/lat" && chmod 755 "$DATA"
RAW=$DATA/runs.tsv # case target round tps txns cpu_us hwm_kb lat_ms user_cpu_us machine_cpu_us
: >"$RAW"
START_TS=$(date +%s)

# ---------------------------------------------------------------- /proc measurements

# proc_cpu_us PID: "TOTAL USER", the CPU time of PID and its child processes so far (user+system, and user
# alone), in microseconds.  A process's own figures include all its threads.
proc_cpu_us() {
	local pid=$1 ut=0 st=0 p f
	for p in "$pid" $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
		# shellcheck disable=SC2207 # the fields after "pid (comm) "; utime and stime are the 12th and 13th
		f=($(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null)) || continue
		[ "${#f[@]}" -ge 13 ] || continue
		ut=$((ut + f[11]))
		st=$((st + f[12]))
	done
	echo "$(((ut + st) * 1000000 / CLK_TCK)) $((ut * 1000000 / CLK_TCK))"
}

# machine_busy_us: CPU time the whole machine has spent busy so far (user, nice, system, irq, softirq of
# every CPU, from /proc/stat), in microseconds.  Whichever process the kernel charges work to, it is here:
# the kernel relay's redirects run in the sending process's context (pgbench's, PostgreSQL's), not pglane's.
machine_busy_us() {
	awk -v hz="$CLK_TCK" '$1 == "cpu" { printf "%.0f\n", ($2 + $3 + $4 + $7 + $8) * 1000000 / hz; exit }' /proc/stat
}

# proc_status_kb PID FIELD: VmRSS, VmHWM, ... in kB.
proc_status_kb() {
	awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status" 2>/dev/null
}

# proc_reset_hwm PID: restarts VmHWM from the current RSS (root, Linux 4.0+); silently nothing otherwise.
proc_reset_hwm() {
	echo 5 >"/proc/$1/clear_refs" 2>/dev/null
}

# ---------------------------------------------------------------- PostgreSQL

say "starting PostgreSQL"
ensure_pg_user || die "cannot create the user $PG_OS_USER"
CERTS=$TMP/certs
mkdir -p "$CERTS" && chmod 755 "$CERTS"
# One RSA-2048 certificate for 127.0.0.1 and localhost, served by PostgreSQL, pglane and PgBouncer alike.
openssl req -x509 -new -nodes -newkey rsa:2048 -keyout "$CERTS/server.key" -out "$CERTS/server.crt" -days 2 \
	-sha256 -subj /CN=localhost -addext "subjectAltName = DNS:localhost, IP:127.0.0.1" >/dev/null 2>&1 ||
	die "openssl could not make a certificate"
PG_PORT=''
free_port_var PG_PORT || die "free_port"
PG_PASSWORD=$(openssl rand -hex 16)
PG_SOCKDIR=$TMP/pg
mkdir -p "$PG_SOCKDIR"
printf '%s\n' "$PG_PASSWORD" >"$PG_SOCKDIR/pwfile"
[ "$(id -u)" -eq 0 ] && chown -R "$PG_OS_USER:" "$PG_SOCKDIR"
chmod 700 "$PG_SOCKDIR"
as_pg_user "$PG_BIN/initdb" -D "$PG_SOCKDIR/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
	--pwfile="$PG_SOCKDIR/pwfile" -E UTF8 --locale=C --no-sync >"$TMP/initdb.log" 2>&1 ||
	die "initdb failed: $(tail -n 5 "$TMP/initdb.log")"
cp "$CERTS/server.crt" "$CERTS/server.key" "$PG_SOCKDIR/data/" || die "cannot copy the certificate"
[ "$(id -u)" -eq 0 ] && chown "$PG_OS_USER:" "$PG_SOCKDIR/data/server.crt" "$PG_SOCKDIR/data/server.key"
chmod 600 "$PG_SOCKDIR/data/server.key"
cat >>"$PG_SOCKDIR/data/postgresql.conf" <<EOF

# bench/run.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCKDIR'
max_connections = $MAXCONN
password_encryption = 'scram-sha-256'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
cat >"$PG_SOCKDIR/data/pg_hba.conf" <<EOF
# bench/run.sh
local   all  all                 trust
host    all  all  127.0.0.1/32   scram-sha-256
EOF
as_pg_user "$PG_BIN/pg_ctl" -D "$PG_SOCKDIR/data" -l "$PG_SOCKDIR/postgres.log" -w -t 60 start >/dev/null 2>&1 ||
	die "PostgreSQL did not start: $(tail -n 5 "$PG_SOCKDIR/postgres.log")"
PG_DATA=$PG_SOCKDIR/data
printf 'CREATE DATABASE :"db";\n' |
	psql -X -q -v ON_ERROR_STOP=1 -v db="$DB" -h "$PG_SOCKDIR" -p "$PG_PORT" -U postgres -d postgres ||
	die "create database $DB"
say "pgbench -i -s $SCALE"
pgbench -i -q -s "$SCALE" -h "$PG_SOCKDIR" -p "$PG_PORT" -U postgres "$DB" >"$DATA/pgbench-init.log" 2>&1 ||
	die "pgbench -i failed: $(tail -n 5 "$DATA/pgbench-init.log")"

# ---------------------------------------------------------------- PgBouncer

PGB_DIR=$DATA/pgbouncer
mkdir -p "$PGB_DIR"
cp "$CERTS/server.crt" "$CERTS/server.key" "$PGB_DIR/"
chmod 600 "$PGB_DIR/server.key"
if [ "$PGB_USERLIST" = scram ]; then
	pgb_secret=$(pg_psql "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'") ||
		die "cannot read the SCRAM secret"
else
	pgb_secret=$PG_PASSWORD
fi
printf '"postgres" "%s"\n' "$pgb_secret" >"$PGB_DIR/userlist.txt"
chmod 600 "$PGB_DIR/userlist.txt"
[ "$(id -u)" -eq 0 ] && chown -R "$PG_OS_USER:" "$PGB_DIR"

# pgb_conf PORT FILE: a PgBouncer configuration listening on PORT.
pgb_conf() {
	cat >"$2" <<EOF
; written by bench/run.sh
[databases]
* = host=127.0.0.1 port=$PG_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $1
unix_socket_dir =
listen_backlog = 4096
auth_type = scram-sha-256
auth_file = $PGB_DIR/userlist.txt
pool_mode = ${PGB_POOL_MODE:-session}
max_client_conn = 20000
default_pool_size = ${PGB_POOL_SIZE:-300}
server_tls_sslmode = ${PGB_SERVER_TLS:-disable}
${PGB_SERVER_TLS:+server_tls_ca_file = $PGB_DIR/server.crt}
client_tls_sslmode = allow
client_tls_key_file = $PGB_DIR/server.key
client_tls_cert_file = $PGB_DIR/server.crt
logfile = $PGB_DIR/pgbouncer-$1.log
pidfile = $PGB_DIR/pgbouncer-$1.pid
EOF
	[ "$(id -u)" -eq 0 ] && chown "$PG_OS_USER:" "$2"
}

# pgb_start PORT: runs PgBouncer (as the unprivileged user: it refuses root) on PORT; sets PGB_PID.
pgb_start() {
	local port=$1 conf=$PGB_DIR/pgbouncer-$1.ini
	pgb_conf "$port" "$conf"
	if [ "$(id -u)" -eq 0 ]; then
		setpriv --reuid="$PG_OS_USER" --regid="$PG_OS_USER" --init-groups -- \
			"$PGBOUNCER" "$conf" </dev/null >>"$PGB_DIR/stderr-$port.log" 2>&1 &
	else
		"$PGBOUNCER" "$conf" </dev/null >>"$PGB_DIR/stderr-$port.log" 2>&1 &
	fi
	PGB_PID=$!
	PIDS+=("$PGB_PID")
	wait_port "$port" 10 "$PGB_PID" ||
		die "pgbouncer did not start: $(tail -n 5 "$PGB_DIR/pgbouncer-$port.log" "$PGB_DIR/stderr-$port.log" 2>/dev/null)"
}

# proc_stop PID: SIGTERM, then SIGKILL after 5 s.
proc_stop() {
	local pid=$1 _
	kill "$pid" 2>/dev/null
	for _ in $(seq 1 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	return 0
}

# ---------------------------------------------------------------- pglane

LANE_SECRET=$(openssl rand -hex 24)
# lane_conf PORT FILE: a pglane configuration listening on PORT, offering TLS (allow).
lane_conf() {
	cat >"$2" <<EOF
; written by bench/run.sh
[pglane]
listen = 127.0.0.1:$1
tls_cert = $CERTS/server.crt
tls_key = $CERTS/server.key
${BENCH_PGLANE_WORKERS:+workers = $BENCH_PGLANE_WORKERS}
kernel_relay = $KRELAY
pool_mode = ${LANE_POOL_MODE:-session}
pool_size = ${LANE_POOL_SIZE:-20}

[instance main]
url = postgresql://postgres:$PG_PASSWORD@127.0.0.1:$PG_PORT/postgres?sslmode=${LANE_SERVER_SSLMODE:-disable}
${LANE_SERVER_SSLMODE:+ca_file = $CERTS/server.crt}

[app bench]
instance = main
secret = $LANE_SECRET
EOF
	chmod 600 "$2"
}

say "starting pgbouncer and pglane"
PGB_PORT='' LANE_PORT=''
if ! { free_port_var PGB_PORT && free_port_var LANE_PORT; }; then
	die "free_port"
fi
pgb_start "$PGB_PORT"
PGB_MAIN_PID=$PGB_PID
LANE_CONF=$DATA/pglane.ini
lane_conf "$LANE_PORT" "$LANE_CONF"
pglane_start "$LANE_CONF" "$LANE_PORT" || die "pglane did not start"
LANE_MAIN_PID=$PGLANE_PID

# The three targets' connection variables (PGSSLMODE comes with each case).
lane_vars=$("$PGLANE" env -c "$LANE_CONF" bench --production --format shell) || die "pglane env failed"
# shellcheck disable=SC2153 # PGHOST... come from the eval
mapfile -d '' ENV_pglane < <(
	eval "$lane_vars"
	printf '%s\0' "PGHOST=$PGHOST" "PGPORT=$PGPORT" "PGUSER=$PGUSER" "PGPASSWORD=$PGPASSWORD" "PGDATABASE=$PGDATABASE"
)
[ "${#ENV_pglane[@]}" -eq 5 ] || die "pglane env printed: $lane_vars"
# shellcheck disable=SC2034 # read through ENV_${target}[@]
ENV_direct=(PGHOST=127.0.0.1 "PGPORT=$PG_PORT" PGUSER=postgres "PGPASSWORD=$PG_PASSWORD" "PGDATABASE=$DB")
# shellcheck disable=SC2034
ENV_pgbouncer=(PGHOST=127.0.0.1 "PGPORT=$PGB_PORT" PGUSER=postgres "PGPASSWORD=$PG_PASSWORD" "PGDATABASE=$DB")
[ "$(env "${ENV_pglane[@]}" printenv PGDATABASE)" = "$DB" ] || die "pglane routes bench/production elsewhere"

# Cases 6 and 6p run against a second PgBouncer and a second pglane, both in transaction pooling with 16 server
# connections (pglane's pool_size, PgBouncer's default_pool_size).
TXN_POOL=16
if [[ " $CASES " == *" 6 "* || " $CASES " == *" 6p "* ]]; then
	PGB_TXN_PORT='' LANE_TXN_PORT=''
	free_port_var PGB_TXN_PORT && free_port_var LANE_TXN_PORT || die "free_port"
	PGB_POOL_MODE=transaction PGB_POOL_SIZE=$TXN_POOL pgb_start "$PGB_TXN_PORT"
	PGB_TXN_PID=$PGB_PID
	LANE_POOL_MODE=transaction LANE_POOL_SIZE=$TXN_POOL lane_conf "$LANE_TXN_PORT" "$DATA/pglane-txn.ini"
	pglane_start "$DATA/pglane-txn.ini" "$LANE_TXN_PORT" || die "pglane (transaction pooling) did not start"
	LANE_TXN_PID=$PGLANE_PID
	# shellcheck disable=SC2034 # read through ENV_${target}[@]
	ENV_pglane_txn=("${ENV_pglane[@]/#PGPORT=*/PGPORT=$LANE_TXN_PORT}")
	# shellcheck disable=SC2034
	ENV_pgbouncer_txn=("${ENV_pgbouncer[@]/#PGPORT=*/PGPORT=$PGB_TXN_PORT}")
fi

# Case 1s runs against a third pair, both verifying PostgreSQL's certificate (verify-full) over TLS.
if [[ " $CASES " == *" 1s "* ]]; then
	PGB_STLS_PORT='' LANE_STLS_PORT=''
	free_port_var PGB_STLS_PORT && free_port_var LANE_STLS_PORT || die "free_port"
	PGB_SERVER_TLS=verify-full pgb_start "$PGB_STLS_PORT"
	PGB_STLS_PID=$PGB_PID
	LANE_SERVER_SSLMODE=verify-full lane_conf "$LANE_STLS_PORT" "$DATA/pglane-stls.ini"
	pglane_start "$DATA/pglane-stls.ini" "$LANE_STLS_PORT" || die "pglane (TLS to the server) did not start"
	LANE_STLS_PID=$PGLANE_PID
	# shellcheck disable=SC2034 # read through ENV_${target}[@]
	ENV_pglane_stls=("${ENV_pglane[@]/#PGPORT=*/PGPORT=$LANE_STLS_PORT}")
	# shellcheck disable=SC2034
	ENV_pgbouncer_stls=("${ENV_pgbouncer[@]/#PGPORT=*/PGPORT=$PGB_STLS_PORT}")
fi

# target_pid TARGET: the proxy process to measure (none for direct).
target_pid() {
	case $1 in
	pgbouncer) echo "$PGB_MAIN_PID" ;;
	pglane) echo "$LANE_MAIN_PID" ;;
	pgbouncer_txn) echo "$PGB_TXN_PID" ;;
	pglane_txn) echo "$LANE_TXN_PID" ;;
	pgbouncer_stls) echo "$PGB_STLS_PID" ;;
	pglane_stls) echo "$LANE_STLS_PID" ;;
	esac
}

# case_target CASE TARGET: the process a case runs TARGET on (case 6: the transaction-pooling ones).
case_target() {
	if { [ "$1" = 6 ] || [ "$1" = 6p ]; } && [ "$2" != direct ]; then
		echo "${2}_txn"
	elif [ "$1" = 1s ] && [ "$2" != direct ]; then
		echo "${2}_stls"
	else
		echo "$2"
	fi
}

# in_target TARGET SSLMODE CMD...: runs CMD with the target's connection variables.
in_target() {
	local mode=$2 v="ENV_${1}[@]"
	shift 2
	env "${!v}" "PGSSLMODE=$mode" "$@"
}

# Each target must answer in plaintext; over TLS (the proxies offer it to clients, PostgreSQL has ssl = on)
# a target that does not answer is left out of the TLS cases, which then say so.
declare -A TLS_BROKEN
for t in "${TARGETS[@]}"; do
	for mode in disable require; do
		out=$(in_target "$t" "$mode" env PGCONNECT_TIMEOUT=5 psql -X -At -c "SELECT count(*) FROM pgbench_branches" 2>&1)
		[ "$out" = "$SCALE" ] && continue
		[ "$mode" = disable ] && die "$t does not answer: $out"
		TLS_BROKEN[$t]=$(printf '%s' "$out" | head -n 1)
		say "warning: $t does not answer over TLS, its TLS runs are skipped: ${TLS_BROKEN[$t]}"
	done
done

# ---------------------------------------------------------------- the runs

# case_args CASE: pgbench arguments; case_mode CASE: PGSSLMODE; case_title CASE.
case_args() {
	case $1 in
	1 | 1t | 1s) echo "-S -c 8 -j $JOBS" ;;
	2) echo "-S -M prepared -c 8 -j $JOBS" ;;
	3) echo "-S -c 256 -j $JOBS" ;;
	4 | 4t) echo "-S -C -c 8 -j $JOBS" ;;
	5) echo "-S -c 1 -j 1" ;;
	6) echo "-S -c 64 -j $JOBS" ;;
	6p) echo "-S -M prepared -c 64 -j $JOBS" ;;
	esac
}
case_mode() {
	case $1 in *t) echo require ;; *) echo disable ;; esac
}
# target_mode CASE TARGET: PGSSLMODE for one target (case 1s: direct encrypts as the proxies do toward it).
target_mode() {
	if [ "$1" = 1s ] && [ "$2" = direct ]; then
		echo require
	else
		case_mode "$1"
	fi
}
case_title() {
	case $1 in
	1) echo "1. \`-S\`, simple protocol, 8 clients" ;;
	1t) echo "1t. \`-S\`, simple protocol, 8 clients, client TLS" ;;
	1s) echo "1s. \`-S\`, simple protocol, 8 clients, TLS from the proxies to PostgreSQL (verify-full; direct: client TLS)" ;;
	2) echo "2. \`-S -M prepared\`, 8 clients" ;;
	3) echo "3. \`-S\`, 256 clients" ;;
	4) echo "4. \`-S -C\`: a new connection (SCRAM login) per transaction, 8 clients" ;;
	4t) echo "4t. \`-S -C\`: a new connection (SCRAM login) per transaction, 8 clients, client TLS" ;;
	5) echo "5. One client: latency" ;;
	6) echo "6. \`-S\`, 64 clients, transaction pooling (both proxies: $TXN_POOL server connections)" ;;
	6p) echo "6p. \`-S -M prepared\`, 64 clients, transaction pooling: named statements ($TXN_POOL server connections; PgBouncer before 1.21 does not keep them, so its runs fail)" ;;
	esac
}

# run_pgbench CASE TARGET ROUND SECONDS: one pgbench run, measured (ROUND > 0) or warm-up (ROUND 0).
run_pgbench() {
	local cs=$1 t=$2 round=$3 secs=$4 pid out c0=0 c1=0 u0=0 u1=0 hwm=0 rc tps txns lat extra=()
	# shellcheck disable=SC2207 # word splitting of a fixed argument list is meant
	local args=($(case_args "$cs")) pt
	pt=$(case_target "$cs" "$t")
	pid=$(target_pid "$pt")
	out=$DATA/pgbench-$cs-$t-$round.out
	if [ "$cs" = 5 ] && [ "$round" -gt 0 ]; then
		extra=(-l "--log-prefix=$DATA/lat/$t-$round")
	fi
	if [ "$(target_mode "$cs" "$t")" = require ] && [ -n "${TLS_BROKEN[$t]:-}" ]; then
		return 1
	fi
	if [ -n "$pid" ]; then
		kill -0 "$pid" 2>/dev/null || {
			say "$t (pid $pid) is not running; case $cs round $round skipped"
			return 1
		}
		proc_reset_hwm "$pid"
		read -r c0 u0 < <(proc_cpu_us "$pid")
	fi
	m0=$(machine_busy_us)
	in_target "$pt" "$(target_mode "$cs" "$t")" pgbench -n -T "$secs" "${args[@]}" "${extra[@]}" >"$out" 2>&1
	rc=$?
	m1=$(machine_busy_us)
	if [ -n "$pid" ]; then
		read -r c1 u1 < <(proc_cpu_us "$pid")
		hwm=$(proc_status_kb "$pid" VmHWM)
	fi
	tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$out" | head -n 1)
	txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out" | head -n 1)
	lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$out" | head -n 1)
	if [ "$round" -eq 0 ] && [ $rc -eq 0 ]; then
		# A warm-up may end before all its clients have logged in (256 clients, 1 s): that is fine.
		say "case $cs $t warm-up: ${txns:-0} transactions"
		return 0
	fi
	if [ $rc -ne 0 ] || [ -z "$tps" ] || [ -z "$txns" ] || [ "$txns" -eq 0 ]; then
		say "case $cs $t round $round: pgbench failed (exit $rc): $(tail -n 3 "$out" | tr '\n' ' ')"
		return 1
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$cs" "$t" "$round" "$tps" "$txns" $((c1 - c0)) "${hwm:-0}" \
		"${lat:-0}" $((u1 - u0)) $((m1 - m0)) >>"$RAW"
	say "case $cs $t round $round: tps $tps, $txns transactions${pid:+, proxy CPU $(((c1 - c0) / (txns > 0 ? txns : 1))) us/txn}"
	return 0
}

# perf_profile CASE: extra runs of CASE, outside the measured rounds: for each proxy, `perf stat` counts its
# system calls by kind (tracepoints) over one run; then pglane runs once more under `perf record`.  The
# reports go to DATA/perf-CASE.txt.
SYSCALLS=(read readv recvfrom recvmsg write writev sendto sendmsg epoll_wait epoll_pwait epoll_ctl ioctl accept4
	connect socket close fcntl setsockopt getsockopt getsockname getpeername)
perf_profile() {
	local cs=$1 pf=$DATA/perf-$1.data t perf_pid txns events ev
	command -v perf >/dev/null || {
		say "perf is not installed (apt-get install linux-perf); no profile"
		return 0
	}
	events=raw_syscalls:sys_enter
	for ev in "${SYSCALLS[@]}"; do
		events="$events,syscalls:sys_enter_$ev"
	done
	for t in pgbouncer pglane; do
		perf stat -x, -e "$events" -p "$(target_pid "$t")" -o "$DATA/perfstat-$cs-$t.csv" >/dev/null 2>&1 &
		perf_pid=$!
		PIDS+=("$perf_pid")
		sleep 0.3
		run_pgbench "$cs" "$t" 0 "$SECS"
		kill -INT "$perf_pid" 2>/dev/null
		wait "$perf_pid"
		txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$DATA/pgbench-$cs-$t-0.out")
		awk -F, -v t="$t" -v n="${txns:-0}" '$3 ~ /sys_enter/ && $1 + 0 > 0 && n > 0 {
			name = $3; sub(/.*sys_enter_?/, "", name); if (name == "") name = "all system calls"
			printf "%s\t%s\t%.2f\n", t, name, $1 / n }' "$DATA/perfstat-$cs-$t.csv" >>"$DATA/syscalls-$cs.tsv"
	done
	perf record -q -F 1999 -g -p "$LANE_MAIN_PID" -o "$pf" >/dev/null 2>&1 &
	perf_pid=$!
	PIDS+=("$perf_pid")
	sleep 0.3
	run_pgbench "$cs" pglane 0 "$SECS"
	kill -INT "$perf_pid" 2>/dev/null
	wait "$perf_pid"
	{
		echo "system calls per transaction (perf stat, one ${SECS} s run per proxy):"
		awk -F'\t' '{ v[$2, $1] = $3; if (!($2 in seen)) { seen[$2] = 1; order[++n] = $2 } }
			END { printf "  %-18s %10s %10s\n", "", "pgbouncer", "pglane"
			      for (i = 1; i <= n; i++) printf "  %-18s %10s %10s\n", order[i], \
			        ((order[i], "pgbouncer") in v ? v[order[i], "pgbouncer"] : "0"), \
			        ((order[i], "pglane") in v ? v[order[i], "pglane"] : "0") }' "$DATA/syscalls-$cs.tsv"
		echo
		echo "pglane, by shared object (perf record; without a PMU in a VM the kernel share is smeared onto"
		echo "the points where interrupts are re-enabled):"
		perf report -i "$pf" --stdio --no-children --sort dso -g none --percent-limit 1 2>/dev/null |
			grep -v '^#' | grep -v '^$'
		echo
		echo "pglane, by function (self):"
		perf report -i "$pf" --stdio --no-children --sort dso,symbol -g none --percent-limit 0.7 2>/dev/null |
			grep -v '^#' | grep -v '^$' | sed 's/[[:space:]]*-[[:space:]]*-[[:space:]]*$//' | head -n 30
	} >"$DATA/perf-$cs.txt"
}

for cs in $CASES; do
	[ "$cs" = idle ] && continue
	[ -n "$(case_args "$cs")" ] || die "unknown case '$cs' in BENCH_CASES"
	say "case $(case_title "$cs")"
	if [ "$WARMUP" -gt 0 ]; then
		for t in "${TARGETS[@]}"; do
			run_pgbench "$cs" "$t" 0 "$WARMUP"
		done
	fi
	for round in $(seq 1 "$ROUNDS"); do
		for t in "${TARGETS[@]}"; do
			run_pgbench "$cs" "$t" "$round" "$SECS"
		done
	done
	if [ "$PERF" = 1 ] && [[ " $PERF_CASES " == *" $cs "* ]]; then
		perf_profile "$cs"
	fi
done
LANE_MAIN_HWM=$(proc_status_kb "$LANE_MAIN_PID" VmHWM)
PGB_MAIN_HWM=$(proc_status_kb "$PGB_MAIN_PID" VmHWM)

# ---------------------------------------------------------------- idle clients

IDLE_RAW=$DATA/idle.tsv # proxy mode clients failed rss0_kb rss1_kb pool_mode
: >"$IDLE_RAW"
IDLE_TOOL=$DATA/idle_clients

# backends_wait: until PostgreSQL has (almost) no client backends left from the previous measurement.
backends_wait() {
	local _ n
	for _ in $(seq 1 100); do
		n=$(pg_psql "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
		[ "${n:-99}" -le 5 ] && return 0
		sleep 0.3
	done
	say "warning: $n client backends still open"
}

# idle_measure PROXY MODE N POOL_MODE: a fresh PROXY process in POOL_MODE (session or transaction), warmed
# by 16 logins in MODE, then N idle clients.
idle_measure() {
	local proxy=$1 mode=$2 n=$3 pool=$4 port pid rss0 rss1 line out=$DATA/idle-$1-$2-$4.out t tool_pid _
	free_port_var port || die "free_port"
	if [ "$proxy" = pglane ]; then
		LANE_POOL_MODE=$pool lane_conf "$port" "$DATA/pglane-idle-$port.ini"
		pglane_start "$DATA/pglane-idle-$port.ini" "$port" || die "pglane (idle test) did not start"
		pid=$PGLANE_PID
	else
		PGB_POOL_MODE=$pool pgb_start "$port"
		pid=$PGB_PID
	fi
	local v="ENV_${proxy}[@]" envs
	envs=("${!v}" "PGPORT=$port" "PGSSLMODE=$mode")
	# 16 warm-up logins: pglane's workers each take some of them (SO_REUSEPORT), so what a worker allocates
	# once, at its first session (OpenSSL's per-thread state, its caches), is not counted per client.
	for _ in $(seq 1 16); do
		env "${envs[@]}" psql -X -At -c "SELECT 1" >/dev/null 2>&1 || say "warning: $proxy $mode: a warm-up login failed"
	done
	sleep 0.5
	rss0=$(proc_status_kb "$pid" VmRSS)
	env "${envs[@]}" "$IDLE_TOOL" "$n" 32 >"$out" 2>&1 &
	tool_pid=$!
	PIDS+=("$tool_pid")
	for _ in $(seq 1 1200); do
		grep -q '^connected=' "$out" && break
		kill -0 "$tool_pid" 2>/dev/null || break
		sleep 0.1
	done
	sleep 1
	rss1=$(proc_status_kb "$pid" VmRSS)
	line=$(grep '^connected=' "$out" | head -n 1)
	local connected failed
	connected=$(printf '%s' "$line" | sed -n 's/^connected=\([0-9]*\).*/\1/p')
	failed=$(printf '%s' "$line" | sed -n 's/.* failed=\([0-9]*\).*/\1/p')
	[ -n "$line" ] || say "idle $proxy $mode: the client tool said nothing: $(tail -n 3 "$out")"
	[ "${failed:-0}" = 0 ] || say "idle $proxy $mode: $line"
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$proxy" "$mode" "${connected:-0}" "${failed:-0}" "$rss0" "$rss1" "$pool" >>"$IDLE_RAW"
	say "idle $proxy $mode $pool: ${connected:-0} clients, RSS $rss0 -> $rss1 kB"
	proc_stop "$tool_pid"
	proc_stop "$pid"
	backends_wait
}

case " $CASES " in
*" idle "*)
	say "idle clients: $IDLE_N per measurement"
	# shellcheck disable=SC2046 # pkg-config prints several words
	cc -std=c11 -O2 -Wall -Wextra -o "$IDLE_TOOL" "$BENCH_DIR/idle_clients.c" \
		$(pkg-config --cflags --libs libpq) 2>"$DATA/cc.log" || die "cannot build idle_clients: $(cat "$DATA/cc.log")"
	# The benchmark's proxies hold server connections (PgBouncer's pool): stop them to free the slots.
	proc_stop "$PGB_MAIN_PID"
	proc_stop "$LANE_MAIN_PID"
	[ -n "${PGB_TXN_PID:-}" ] && proc_stop "$PGB_TXN_PID"
	[ -n "${LANE_TXN_PID:-}" ] && proc_stop "$LANE_TXN_PID"
	backends_wait
	# Session pooling: each idle client holds a server connection, so max_connections bounds them.
	# Transaction pooling: idle clients hold none, so IDLE_TXN_N (10,000) of them.
	for pool in session transaction; do
		for proxy in pglane pgbouncer; do
			for mode in disable require; do
				if [ "$mode" = require ] && [ -n "${TLS_BROKEN[$proxy]:-}" ]; then
					printf '%s\t%s\t0\tall\t\t\t%s\n' "$proxy" "$mode" "$pool" >>"$IDLE_RAW"
					continue
				fi
				idle_measure "$proxy" "$mode" "$([ "$pool" = session ] && echo "$IDLE_N" || echo "$IDLE_TXN_N")" "$pool"
			done
		done
	done
	;;
esac

# ---------------------------------------------------------------- the report

declare -A TPS TPSR CPU UCPU MCPU HWM LAT P99 AVGL
# stats: per case and target, mean tps, the rounds' tps, CPU us per transaction, peak RSS (kB), latency.
# (Fields are joined by "|": with a tab, read would merge the empty fields of the direct rows.)
while IFS='|' read -r cs t tps_mean tps_list cpu hwm lat ucpu mcpu; do
	TPS[$cs,$t]=$tps_mean
	UCPU[$cs,$t]=$ucpu
	TPSR[$cs,$t]=$tps_list
	CPU[$cs,$t]=$cpu
	HWM[$cs,$t]=$hwm
	LAT[$cs,$t]=$lat
	MCPU[$cs,$t]=$mcpu
done < <(awk -F'\t' '
	{ k = $1 "|" $2; n[k]++; tps[k] += $4; txns[k] += $5; cpu[k] += $6; lat[k] += $8; ucpu[k] += $9; mcpu[k] += $10
	  if ($7 > hwm[k]) hwm[k] = $7
	  list[k] = n[k] == 1 ? sprintf("%.0f", $4) : list[k] ", " sprintf("%.0f", $4) }
	END { for (k in n) printf "%s|%.1f|%s|%s|%s|%.3f|%s|%.1f\n", k, tps[k] / n[k], list[k],
	        (hwm[k] > 0 ? sprintf("%.1f", cpu[k] / txns[k]) : ""), (hwm[k] > 0 ? hwm[k] : ""), lat[k] / n[k],
	        (hwm[k] > 0 ? sprintf("%.1f", ucpu[k] / txns[k]) : ""), mcpu[k] / txns[k] }' "$RAW")

# One-client latency from the per-transaction logs (column 3: microseconds): average and p99 (nearest rank).
for t in "${TARGETS[@]}"; do
	compgen -G "$DATA/lat/$t-*" >/dev/null || continue
	read -r avg p99 < <(cat "$DATA/lat/$t"-* | awk '{print $3}' | sort -n |
		awk '{ v[NR] = $1; s += $1 } END { if (NR == 0) exit; r = int(NR * 0.99); if (r < NR * 0.99) r++; printf "%.1f %d\n", s / NR, v[r] }')
	AVGL[5,$t]=$avg
	P99[5,$t]=$p99
done

# fmt_ratio A B: A/B with two decimals, or n/a.
fmt_ratio() {
	awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "n/a"; else printf "%.2f\n", a / b }'
}
# holds EXPR with variables a, b, k: exit status of an awk comparison (false when a value is missing).
holds() {
	awk -v a="${1:-}" -v b="${2:-}" -v k="$3" -v op="$4" 'BEGIN {
		if (a == "" || b == "") exit 1
		if (op == "le") exit !(a + 0 <= k * b)
		if (op == "ge") exit !(a + 0 >= k * b)
		if (op == "plus") exit !(a + 0 <= b + k) }'
}
kb_mb() {
	awk -v k="${1:-}" 'BEGIN { if (k == "" || k == 0) print "–"; else printf "%.1f MB\n", k / 1024 }'
}

if [ -n "${MAKELEVEL:-}" ]; then
	INVOKED="make bench"
else
	INVOKED="bench/run.sh"
fi
SETTINGS=$(env | grep '^BENCH_' | sort | tr '\n' ' ')
ELAPSED=$(($(date +%s) - START_TS))
REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$REPO" diff --quiet HEAD -- 2>/dev/null || REV="$REV + uncommitted changes"

OUT=$DATA/results.md
{
	echo "# pglane benchmark results"
	echo
	echo "Made by \`${SETTINGS}${INVOKED}\` on $(date -u '+%Y-%m-%d %H:%M UTC') in ${ELAPSED} s (bench/run.sh; issue 7)."
	echo
	echo "- machine: $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), $(awk '/MemTotal/ {printf "%.1f GB", $2 / 1048576}' /proc/meminfo) RAM, $(uname -sr)"
	echo "- pglane $REV ($("$PGLANE" --version 2>&1 | head -n 1)); $("$PGBOUNCER" --version 2>&1 | head -n 1); $("$PG_BIN/postgres" --version); $(pgbench --version); $(openssl version | cut -d' ' -f1-2); libevent $(pkg-config --modversion libevent 2>/dev/null)"
	echo "- load average (1, 5, 15 min) at the start: $LOAD_START; at the end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine moves the numbers; the interleaving spreads it over all three targets)"
	echo "- PostgreSQL: max_connections $MAXCONN, shared_buffers 256MB, fsync off, SCRAM; pgbench scale $SCALE on database \`$DB\`"
	echo "- PgBouncer: session pool, auth_type scram-sha-256 with the $([ "$PGB_USERLIST" = scram ] && echo "SCRAM secret" || echo "plaintext password") in its userlist, default_pool_size 300, plaintext to the server; pglane: ${BENCH_PGLANE_WORKERS:+workers = $BENCH_PGLANE_WORKERS, }kernel_relay = $KRELAY ($(grep -q "kernel relay on" "$TMP/pglane-$LANE_PORT.log" 2>/dev/null && echo "active: plaintext sessions relayed in the kernel" || echo "not active: pglane relays in user space")), plaintext to the server (sslmode=disable). Both offer client TLS with the same RSA-2048 certificate; PostgreSQL (direct) serves TLS with it too."
	echo "- Each case: ${WARMUP} s warm-up per target, then $ROUNDS rounds of ${SECS} s, interleaved direct, pgbouncer, pglane. tps is the mean of the rounds; proxy CPU is the proxy process's utime+stime over the measured runs divided by their transactions (\"of which user\": utime alone; the rest is the kernel's, on the proxy's behalf); machine CPU is the whole machine's busy time (/proc/stat: pgbench, PostgreSQL, the proxy and the kernel's work for all of them, wherever it is charged) per transaction, the honest total when the kernel relay moves work out of pglane's own account; peak RSS is VmHWM during a run (reset before each)."
	echo
	for cs in $CASES; do
		[ "$cs" = idle ] && continue
		echo "## $(case_title "$cs")"
		echo
		echo "\`PGSSLMODE=$(case_mode "$cs") pgbench -n -T $SECS $(case_args "$cs")$([ "$cs" = 5 ] && echo " -l")\`"
		echo
		if [ "$cs" = 5 ]; then
			echo "| target | tps per round | tps | latency avg (µs) | p99 (µs) | avg − direct | p99 − direct | proxy CPU µs/txn | of which user | proxy peak RSS |"
			echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
		else
			echo "| target | tps per round | tps | vs direct | latency avg (ms) | proxy CPU µs/txn | of which user | machine CPU µs/txn | proxy peak RSS |"
			echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
		fi
		for t in "${TARGETS[@]}"; do
			k="$cs,$t"
			if [ "$cs" = 5 ]; then
				printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" "${TPSR[$k]:-failed}" "${TPS[$k]:-–}" \
					"${AVGL[5,$t]:-–}" "${P99[5,$t]:-–}" \
					"$(awk -v a="${AVGL[5,$t]:-}" -v b="${AVGL[5,direct]:-}" 'BEGIN { if (a == "" || b == "") print "–"; else printf "%+.1f\n", a - b }')" \
					"$(awk -v a="${P99[5,$t]:-}" -v b="${P99[5,direct]:-}" 'BEGIN { if (a == "" || b == "") print "–"; else printf "%+d\n", a - b }')" \
					"${CPU[$k]:-–}" "${UCPU[$k]:-–}" "$(kb_mb "${HWM[$k]:-}")"
			else
				printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" "${TPSR[$k]:-failed}" "${TPS[$k]:-–}" \
					"$(fmt_ratio "${TPS[$k]:-}" "${TPS[$cs,direct]:-}")" "${LAT[$k]:-–}" "${CPU[$k]:-–}" \
					"${UCPU[$k]:-–}" "${MCPU[$k]:-–}" "$(kb_mb "${HWM[$k]:-}")"
			fi
		done
		echo
		echo "pglane/pgbouncer: tps $(fmt_ratio "${TPS[$cs,pglane]:-}" "${TPS[$cs,pgbouncer]:-}"), CPU per transaction $(fmt_ratio "${CPU[$cs,pglane]:-}" "${CPU[$cs,pgbouncer]:-}"). pglane/direct: tps $(fmt_ratio "${TPS[$cs,pglane]:-}" "${TPS[$cs,direct]:-}")."
		case $cs in
		3) echo "(The proxies' CPU here includes the 256 logins at the start of each run.)" ;;
		4 | 4t) echo "(Each transaction is one client login: the proxies' CPU per transaction is their CPU per login. pglane opens a server connection per client login; PgBouncer reuses its pool.)" ;;
		esac
		echo
	done
	if [ -s "$IDLE_RAW" ]; then
		echo "## Memory per idle logged-in client"
		echo
		echo "A fresh proxy, 16 warm-up logins (every pglane worker has had its first session), then \`bench/idle_clients N\` holds N logged-in idle clients (libpq, PGSSLMODE as shown); per client = VmRSS growth / clients. In session pooling every idle client holds a server connection, so N is bounded by max_connections ($MAXCONN); in transaction pooling (\`pool_mode = transaction\` in both proxies) idle clients hold none, and N is $IDLE_TXN_N."
		echo
		echo "| proxy | pooling | client TLS | clients | failed | RSS before (kB) | RSS with clients (kB) | per client |"
		echo "|---|---|---|---:|---:|---:|---:|---:|"
		while IFS=$'\t' read -r p m n f r0 r1 pool; do
			printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$p" "$pool" "$([ "$m" = require ] && echo yes || echo no)" "$n" "$f" "$r0" "$r1" \
				"$(awk -v a="$r0" -v b="$r1" -v n="$n" 'BEGIN { if (n > 0) printf "%.2f kB\n", (b - a) / n; else print "–" }')"
		done <"$IDLE_RAW"
		echo
	fi
	for t in "${!TLS_BROKEN[@]}"; do
		echo "**$t did not answer over client TLS** (\`PGSSLMODE=require psql\`: ${TLS_BROKEN[$t]}), so its TLS runs were skipped."
		echo
	done
	echo "Peak RSS over the whole benchmark: pglane $(kb_mb "$LANE_MAIN_HWM"), pgbouncer $(kb_mb "$PGB_MAIN_HWM")."
	echo
	for cs in $PERF_CASES; do
		[ -s "$DATA/perf-$cs.txt" ] || continue
		echo "## Profile during case $cs (\`perf stat -e raw_syscalls:sys_enter,syscalls:sys_enter_*\` and \`perf record -F 1999 -g -p PID\`, extra ${SECS} s runs)"
		echo
		echo '```'
		cat "$DATA/perf-$cs.txt"
		echo '```'
		echo
	done

	echo "## Targets (issue 7)"
	echo
	# line LABEL DETAIL A B K OP: "PASS"/"FAIL" as A <= K*B (le), A >= K*B (ge) or A <= B + K (plus);
	# "n/a" when A or B was not measured.
	line() {
		local verdict
		if [ -z "$3" ] || [ -z "$4" ]; then
			verdict="n/a "
		elif holds "$3" "$4" "$5" "$6"; then
			verdict=PASS
		else
			verdict=FAIL
		fi
		echo "- $verdict $1: $2"
	}
	for cs in 1 1t; do
		a=${CPU[$cs,pglane]:-} b=${CPU[$cs,pgbouncer]:-}
		line "relay CPU per -S transaction <= 0.5 x PgBouncer's, $([ "$cs" = 1 ] && echo plaintext || echo "client TLS") (case $cs)" \
			"pglane ${a:-?} µs, pgbouncer ${b:-?} µs (ratio $(fmt_ratio "$a" "$b"))" "$a" "$b" 0.5 le
	done
	for cs in 1 2 3; do
		a=${TPS[$cs,pglane]:-} b=${TPS[$cs,pgbouncer]:-}
		line "tps >= PgBouncer's (case $cs)" "pglane ${a:-?}, pgbouncer ${b:-?} (ratio $(fmt_ratio "$a" "$b"))" "$a" "$b" 1 ge
	done
	for cs in 1 2; do
		a=${TPS[$cs,pglane]:-} b=${TPS[$cs,direct]:-}
		line "tps >= 0.85 x direct (case $cs)" "pglane ${a:-?}, direct ${b:-?} (ratio $(fmt_ratio "$a" "$b"))" "$a" "$b" 0.85 ge
	done
	a=${CPU[4,pglane]:-} b=${CPU[4,pgbouncer]:-}
	line "CPU per login (SCRAM, no TLS) <= 0.1 x PgBouncer's (case 4)" \
		"pglane ${a:-?} µs, pgbouncer ${b:-?} µs (ratio $(fmt_ratio "$a" "$b"))" "$a" "$b" 0.1 le
	a=${CPU[4t,pglane]:-} b=${CPU[4t,pgbouncer]:-}
	line "CPU per login with client TLS <= 1/3 x PgBouncer's (case 4t)" \
		"pglane ${a:-?} µs, pgbouncer ${b:-?} µs (ratio $(fmt_ratio "$a" "$b"))" "$a" "$b" 0.33334 le
	for pool in session transaction; do
		for m in disable require; do
			a=$(awk -F'\t' -v m="$m" -v p="$pool" '$1 == "pglane" && $2 == m && $7 == p && $3 > 0 { printf "%.2f\n", ($6 - $5) / $3 }' "$IDLE_RAW")
			n=$(awk -F'\t' -v m="$m" -v p="$pool" '$1 == "pglane" && $2 == m && $7 == p { print $3 }' "$IDLE_RAW")
			b=$([ "$m" = disable ] && echo 2 || echo 20)
			line "memory per idle $([ "$m" = disable ] && echo plaintext || echo TLS) client <= $b kB ($pool pooling)" \
				"pglane ${a:-?} kB per client over ${n:-0} clients" "$a" "$b" 1 le
		done
	done
	for what in avg p99; do
		if [ "$what" = avg ]; then
			a=${AVGL[5,pglane]:-} b=${AVGL[5,direct]:-}
		else
			a=${P99[5,pglane]:-} b=${P99[5,direct]:-}
		fi
		line "one-client latency $what <= direct + 50 µs (case 5)" "pglane ${a:-?} µs, direct ${b:-?} µs" "$a" "$b" 50 plus
	done
} >"$OUT"

cp "$OUT" "$RESULTS" || die "cannot write $RESULTS"
cat "$RESULTS"
say "written to $RESULTS; raw runs and logs in $DATA (kept with BENCH_KEEP=1)"
exit 0
