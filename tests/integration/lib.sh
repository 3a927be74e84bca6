# shellcheck shell=bash
# lib.sh: the integration-test harness, sourced by tests/integration/t_*.sh.
#
# It gives each test script a temporary directory (removed on exit, with every process the script started
# stopped), throwaway PostgreSQL instances with TLS and SCRAM (pg_start), test certificate authorities made
# with the openssl CLI at test time, a pglane in the background (pglane_start), and counting assertions
# (ok / fail / check) that print TAP-like lines and end with "RESULT passed=N failed=M" (finish).
#
# Environment it reads:
#   PGLANE_BUILD      build directory holding tools/pqprobe (default: build), relative to the repo or absolute
#   PGLANE_BIN        the proxy binary (default: ./pglane at the repo root)
#   PGLANE_TEST_KEEP  when set to 1, the temporary directory is kept (its path is printed) for a post-mortem
# PostgreSQL refuses to run as root, so as root the instances run as the system user pglane-test (created
# when missing) through runuser; as any other user they run as that user.

set -u

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_OS_USER=pglane-test

BUILD_DIR=${PGLANE_BUILD:-build}
case $BUILD_DIR in
/*) ;;
*) BUILD_DIR=$REPO/$BUILD_DIR ;;
esac
PQPROBE=$BUILD_DIR/tools/pqprobe
STMTPROBE=$BUILD_DIR/tools/stmtprobe
PGLANE=${PGLANE_BIN:-$REPO/pglane}
export PQPROBE PGLANE

# Nothing from the caller's environment may steer libpq, psql or node's pg by accident.
unset PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGSSLMODE PGOPTIONS PGAPPNAME PGSERVICE \
	PGSERVICEFILE PGSSLROOTCERT PGSSLCERT PGSSLKEY PGCONNECT_TIMEOUT PGTARGETSESSIONATTRS PGREQUIRESSL \
	PGCHANNELBINDING PGGSSENCMODE DATABASE_URL
export PGPASSFILE=/nonexistent/pgpass
export PGCONNECT_TIMEOUT=10

LIB_PASSED=0
LIB_FAILED=0
LIB_FINISHED=0
LIB_PG_NAMES=()   # instances started by pg_start and not yet stopped
LIB_PIDS=()       # background processes to kill on exit (pglane, helpers)
LIB_PORTS=()      # ports handed out by free_port in this script
PGLANE_PID=

# As root, /tmp: the unprivileged PostgreSQL user must be able to reach it (a TMPDIR under /root is not).
LIB_TMPBASE=${TMPDIR:-/tmp}
[ "$(id -u)" -eq 0 ] && LIB_TMPBASE=/tmp
TMP=$(mktemp -d "$LIB_TMPBASE/pglane-test.XXXXXX") || {
	echo "lib.sh: mktemp failed" >&2
	exit 1
}
chmod 755 "$TMP" # the unprivileged PostgreSQL user must reach TMP/NAME
PGLANE_LOG=$TMP/pglane.log

lib_cleanup() {
	local status=$? pid name
	trap - EXIT INT TERM
	for pid in "${LIB_PIDS[@]}"; do
		kill "$pid" 2>/dev/null
	done
	for name in "${LIB_PG_NAMES[@]}"; do
		pg_stop "$name" immediate >/dev/null 2>&1
	done
	for pid in "${LIB_PIDS[@]}"; do
		if kill -0 "$pid" 2>/dev/null; then
			sleep 0.2
			kill -KILL "$pid" 2>/dev/null
		fi
		wait "$pid" 2>/dev/null
	done
	if [ "$LIB_FINISHED" != 1 ]; then
		echo "# $(basename "$0") stopped before finish (status $status)" >&2
	fi
	if [ "${PGLANE_TEST_KEEP:-0}" = 1 ]; then
		echo "# kept $TMP" >&2
	else
		rm -rf "$TMP"
	fi
	exit "$status"
}
trap lib_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- assertions

# ok NAME: records a pass.
ok() {
	LIB_PASSED=$((LIB_PASSED + 1))
	echo "ok - $1"
}

# fail NAME DETAIL: records a failure; DETAIL is flattened to one line (use note for long output).
fail() {
	local detail=${2:-}
	detail=${detail//$'\n'/ | }
	LIB_FAILED=$((LIB_FAILED + 1))
	echo "not ok - $1: $detail"
}

# note TEXT: a diagnostic line that counts nothing.
note() {
	local line
	while IFS= read -r line; do
		echo "# $line"
	done <<<"$*"
}

# check NAME CMD...: passes when CMD exits 0; otherwise fails with the tail of its output.
check() {
	local name=$1 out rc
	shift
	out=$("$@" 2>&1)
	rc=$?
	if [ $rc -eq 0 ]; then
		ok "$name"
	else
		fail "$name" "exit $rc: $(printf '%s\n' "$out" | tail -n 5)"
	fi
	return $rc
}

# check_eq NAME EXPECTED ACTUAL
check_eq() {
	if [ "$2" = "$3" ]; then
		ok "$1"
	else
		fail "$1" "expected '$2', got '$3'"
		return 1
	fi
}

# check_match NAME ERE ACTUAL: ACTUAL must match the extended regular expression.
check_match() {
	if printf '%s\n' "$3" | grep -Eq -- "$2"; then
		ok "$1"
	else
		fail "$1" "expected /$2/, got '$3'"
		return 1
	fi
}

# finish: prints the counts and exits 1 when anything failed.
finish() {
	LIB_FINISHED=1
	echo "RESULT passed=$LIB_PASSED failed=$LIB_FAILED"
	[ "$LIB_FAILED" -eq 0 ]
	exit
}

# bail REASON: a setup step failed; the rest of the script cannot run.
bail() {
	fail "setup" "$1"
	finish
}

now_ms() {
	date +%s%3N
}

# ---------------------------------------------------------------- processes and ports

# as_pg_user CMD...: runs CMD as the unprivileged PostgreSQL user (as root) or as ourselves.
as_pg_user() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u "$PG_OS_USER" -- "$@"
	else
		"$@"
	fi
}

lib_ensure_pg_user() {
	[ "$(id -u)" -eq 0 ] || return 0
	id -u "$PG_OS_USER" >/dev/null 2>&1 && return 0
	useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
		"$PG_OS_USER" || id -u "$PG_OS_USER" >/dev/null 2>&1
}

# port_in_use PORT: true when something on this machine has PORT as a local TCP port (any state).
port_in_use() {
	local port=$1 p
	for p in "${LIB_PORTS[@]}"; do
		[ "$p" = "$port" ] && return 0
	done
	if command -v ss >/dev/null 2>&1; then
		ss -Htan 2>/dev/null | awk '{print $4}' | grep -Eq "[:.]$port\$"
		return $?
	fi
	(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

# free_port: prints a TCP port in 20000-60000 that nothing uses, and remembers it so it is not handed
# out twice by this script.  Callers must use it with: port=$(free_port) && LIB_PORTS+=("$port")
# or through free_port_var, which does both.
free_port() {
	local _ port
	for _ in $(seq 1 200); do
		port=$((20000 + (RANDOM * 32768 + RANDOM) % 40001))
		if ! port_in_use "$port"; then
			echo "$port"
			return 0
		fi
	done
	echo "free_port: no free port found" >&2
	return 1
}

# free_port_var VAR: sets VAR to a free port and reserves it (free_port runs in a subshell when used as
# $(free_port), so only this form can remember the port).
free_port_var() {
	local p
	p=$(free_port) || return 1
	LIB_PORTS+=("$p")
	printf -v "$1" '%s' "$p"
}

# wait_port PORT SECONDS [PID]: true once 127.0.0.1:PORT accepts a TCP connection; false after SECONDS
# or as soon as PID (when given) has exited.
wait_port() {
	local port=$1 deadline pid=${3:-}
	deadline=$(($(now_ms) + $2 * 1000))
	while [ "$(now_ms)" -lt "$deadline" ]; do
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			return 0
		fi
		if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
			return 1
		fi
		sleep 0.1
	done
	return 1
}

# ---------------------------------------------------------------- certificates

CERTS=$TMP/certs
TEST_CA=$CERTS/ca.crt       # made by certs_make (pg_start calls it)
OTHER_CA=$CERTS/other-ca.crt
export TEST_CA OTHER_CA

# lib_cert NAME CA CN SAN: a key and a certificate for a server, signed by CA (a name under CERTS).
lib_cert() {
	local name=$1 ca=$2 cn=$3 san=$4
	openssl req -new -nodes -newkey rsa:2048 -keyout "$CERTS/$name.key" -out "$CERTS/$name.csr" \
		-subj "/CN=$cn" 2>/dev/null || return 1
	printf 'basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\nsubjectAltName = %s\n' \
		"$san" >"$CERTS/$name.ext"
	openssl x509 -req -in "$CERTS/$name.csr" -CA "$CERTS/$ca.crt" -CAkey "$CERTS/$ca.key" \
		-CAcreateserial -days 2 -sha256 -extfile "$CERTS/$name.ext" -out "$CERTS/$name.crt" 2>/dev/null
}

# lib_ca NAME CN: a self-signed CA.
lib_ca() {
	openssl req -x509 -new -nodes -newkey rsa:2048 -keyout "$CERTS/$1.key" -out "$CERTS/$1.crt" -days 2 \
		-sha256 -subj "/CN=$2" -addext "basicConstraints = critical, CA:TRUE" \
		-addext "keyUsage = critical, keyCertSign, cRLSign" 2>/dev/null
}

# certs_make: once per script, into $CERTS:
#   ca.crt          the test CA (TEST_CA)
#   server.crt/key  localhost and 127.0.0.1, signed by the test CA
#   wronghost.crt/key  only "wrong.invalid", signed by the test CA (hostname checks must refuse it)
#   other-ca.crt    an unrelated CA (OTHER_CA): verification against it must fail
certs_make() {
	[ -f "$CERTS/ca.crt" ] && return 0
	mkdir -p "$CERTS" || return 1
	chmod 755 "$CERTS"
	if ! { lib_ca ca "pglane test CA" && lib_ca other-ca "pglane other CA" &&
		lib_cert server ca localhost "DNS:localhost, IP:127.0.0.1" &&
		lib_cert wronghost ca wrong.invalid "DNS:wrong.invalid"; }; then
		echo "certs_make: openssl failed" >&2
		return 1
	fi
	chmod 644 "$CERTS"/*.crt
}

# ---------------------------------------------------------------- PostgreSQL

# lib_var_prefix NAME: PG_<NAME> with NAME upper-cased and anything not alphanumeric made '_'.
lib_var_prefix() {
	local n=${1^^}
	echo "PG_${n//[^A-Z0-9]/_}"
}

# pg_start NAME [CERT]: initdb into TMP/NAME and start PostgreSQL there, listening on 127.0.0.1 only, on a
# free port, with TLS (certificate CERT from certs_make, default "server"), SCRAM for TCP and trust on the
# unix socket in TMP/NAME.  Exports PG_<NAME>_PORT, PG_<NAME>_SOCKDIR, PG_<NAME>_PASSWORD (the postgres
# superuser's), PG_<NAME>_CA (the CA that signed its certificate) and PG_<NAME>_DATA.
pg_start() {
	local name=$1 cert=${2:-server} dir=$TMP/$1 port password prefix
	certs_make || return 1
	lib_ensure_pg_user || {
		echo "pg_start: cannot create user $PG_OS_USER" >&2
		return 1
	}
	free_port_var port || return 1
	password=$(openssl rand -hex 16) || return 1
	mkdir -p "$dir" || return 1
	printf '%s\n' "$password" >"$dir/pwfile"
	if [ "$(id -u)" -eq 0 ]; then
		chown -R "$PG_OS_USER:" "$dir" || return 1
	fi
	chmod 700 "$dir"
	if ! as_pg_user "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
		--pwfile="$dir/pwfile" -E UTF8 --locale=C --no-sync >"$TMP/initdb-$name.log" 2>&1; then
		echo "pg_start $name: initdb failed:" >&2
		tail -n 20 "$TMP/initdb-$name.log" >&2
		return 1
	fi
	cp "$CERTS/$cert.crt" "$dir/data/server.crt" && cp "$CERTS/$cert.key" "$dir/data/server.key" || return 1
	if [ "$(id -u)" -eq 0 ]; then
		chown "$PG_OS_USER:" "$dir/data/server.crt" "$dir/data/server.key"
	fi
	chmod 600 "$dir/data/server.key"
	cat >>"$dir/data/postgresql.conf" <<EOF

# pglane test harness
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 300
password_encryption = 'scram-sha-256'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 32MB
log_connections = on
log_disconnections = on
log_line_prefix = '%m [%p] %u@%d '
EOF
	cat >"$dir/data/pg_hba.conf" <<EOF
# pglane test harness
local   all  all                 trust
hostssl all  all  127.0.0.1/32   scram-sha-256
host    all  all  127.0.0.1/32   scram-sha-256
EOF
	if ! as_pg_user "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start >/dev/null 2>&1; then
		echo "pg_start $name: pg_ctl start failed:" >&2
		tail -n 20 "$dir/postgres.log" >&2
		return 1
	fi
	LIB_PG_NAMES+=("$name")
	prefix=$(lib_var_prefix "$name")
	printf -v "${prefix}_PORT" '%s' "$port"
	printf -v "${prefix}_SOCKDIR" '%s' "$dir"
	printf -v "${prefix}_PASSWORD" '%s' "$password"
	printf -v "${prefix}_CA" '%s' "$CERTS/ca.crt"
	printf -v "${prefix}_DATA" '%s' "$dir/data"
	# shellcheck disable=SC2163 # exporting the variables named by the expansions
	export "${prefix}_PORT" "${prefix}_SOCKDIR" "${prefix}_PASSWORD" "${prefix}_CA" "${prefix}_DATA"
}

# pg_var NAME FIELD: prints PG_<NAME>_<FIELD> (PORT, SOCKDIR, PASSWORD, CA, DATA).
pg_var() {
	local v
	v="$(lib_var_prefix "$1")_$2"
	printf '%s' "${!v:-}"
}

# pg_stop NAME [MODE]: stops the instance (fast by default; immediate for cleanup).
pg_stop() {
	local name=$1 mode=${2:-fast} n rest=()
	as_pg_user "$PG_BIN/pg_ctl" -D "$TMP/$name/data" -m "$mode" -w -t 30 stop >/dev/null 2>&1
	local rc=$?
	for n in "${LIB_PG_NAMES[@]}"; do
		[ "$n" != "$name" ] && rest+=("$n")
	done
	LIB_PG_NAMES=("${rest[@]}")
	return $rc
}

# pg_psql NAME SQL [DB]: runs SQL as the superuser through the unix socket; prints unaligned tuples.
pg_psql() {
	psql -X -q -At -v ON_ERROR_STOP=1 -h "$(pg_var "$1" SOCKDIR)" -p "$(pg_var "$1" PORT)" -U postgres \
		-d "${3:-postgres}" -c "$2"
}

# pg_createdb NAME DB: creates database DB (any name: it is quoted by psql) on instance NAME.
pg_createdb() {
	printf 'CREATE DATABASE :"db";\n' |
		psql -X -q -v ON_ERROR_STOP=1 -v db="$2" -h "$(pg_var "$1" SOCKDIR)" -p "$(pg_var "$1" PORT)" \
			-U postgres -d postgres
}

# ---------------------------------------------------------------- pglane

# pglane_start CONF [PORT]: runs pglane -c CONF in the background (stderr appended to $PGLANE_LOG) and
# waits until PORT (default: the port of the first listen line of CONF) accepts connections.  Sets
# PGLANE_PID.  Fails, printing the log's tail, when it has not come up after 10 s.
pglane_start() {
	local conf=$1 port=${2:-}
	if [ -z "$port" ]; then
		port=$(sed -n 's/^[[:space:]]*listen[[:space:]]*=[[:space:]]*[^,]*:\([0-9][0-9]*\).*/\1/p' "$conf" | head -n 1)
	fi
	if [ ! -x "$PGLANE" ]; then
		echo "pglane_start: $PGLANE is not built" >&2
		return 1
	fi
	# PGLANE_KERNEL_RELAY=auto|on|off, PGLANE_SERVER_IDLE_TIMEOUT=N, PGLANE_WORKERS=N: the whole suite with that
	# kernel_relay, server_idle_timeout or workers (unless the test sets its own).
	if [ -n "${PGLANE_WORKERS:-}" ] && ! grep -q '^[[:space:]]*workers[[:space:]]*=' "$conf"; then
		sed -i "/^\[pglane\]/a workers = $PGLANE_WORKERS" "$conf"
	fi
	if [ -n "${PGLANE_KERNEL_RELAY:-}" ] && ! grep -q '^[[:space:]]*kernel_relay[[:space:]]*=' "$conf"; then
		sed -i "/^\[pglane\]/a kernel_relay = $PGLANE_KERNEL_RELAY" "$conf"
	fi
	if [ -n "${PGLANE_SERVER_IDLE_TIMEOUT:-}" ] && ! grep -q '^[[:space:]]*server_idle_timeout[[:space:]]*=' "$conf"; then
		sed -i "/^\[pglane\]/a server_idle_timeout = $PGLANE_SERVER_IDLE_TIMEOUT" "$conf"
	fi
	"$PGLANE" -c "$conf" </dev/null >>"$PGLANE_LOG" 2>&1 &
	PGLANE_PID=$!
	LIB_PIDS+=("$PGLANE_PID")
	if ! wait_port "$port" 10 "$PGLANE_PID"; then
		echo "pglane_start: pglane -c $conf is not accepting on port $port; log tail:" >&2
		tail -n 20 "$PGLANE_LOG" >&2
		return 1
	fi
}

# pglane_stop [PID]: stops pglane (the last one started by default) with SIGTERM, then SIGKILL after 5 s.
pglane_stop() {
	local pid=${1:-$PGLANE_PID} _
	[ -n "$pid" ] || return 0
	kill "$pid" 2>/dev/null
	for _ in $(seq 1 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	[ "$pid" = "$PGLANE_PID" ] && PGLANE_PID=
	return 0
}

# in_env APP TIMELINE-ARGS... -- CMD...: runs CMD in a subshell holding the variables of
# `pglane env --format shell` for APP and that timeline (the script's CONF, or LANE_CONF when set).
in_env() {
	local args=() vars
	while [ $# -gt 0 ] && [ "$1" != -- ]; do
		args+=("$1")
		shift
	done
	shift
	if ! vars=$("$PGLANE" env -c "${LANE_CONF:-$CONF}" "${args[@]}" --format shell 2>&1); then
		echo "ERROR pglane-env-failed $vars"
		return 97
	fi
	(
		eval "$vars"
		"$@"
	)
}

# admin SQL: the admin console (user admin, password $ADMIN_PASSWORD, pglane on $LANE_PORT), columns
# separated by one space.  Scripts whose console differs (t_operate, t_workers) define their own.
admin() { PGPASSWORD=$ADMIN_PASSWORD psql -X -At -F ' ' -h 127.0.0.1 -p "$LANE_PORT" -U admin -d pglane -c "$1"; }

# env_var APP TIMELINE-ARGS... VAR: one variable from `pglane env`.
env_var() {
	local var=${*: -1}
	in_env "${@:1:$#-1}" -- printenv "$var"
}

# bg_start CMD...: runs CMD in the background, killed on exit; sets BG_PID.
bg_start() {
	"$@" &
	BG_PID=$!
	LIB_PIDS+=("$BG_PID")
}

# ---------------------------------------------------------------- node

NODE_DIR=$REPO/tests/integration/node

# node_deps: installs tests/integration/node's locked dependencies (npm ci) when node_modules lacks them.
node_deps() {
	[ -f "$NODE_DIR/node_modules/pg/package.json" ] && return 0
	command -v npm >/dev/null 2>&1 || {
		echo "node_deps: npm is not installed" >&2
		return 1
	}
	(cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error) >"$TMP/npm-ci.log" 2>&1 || {
		echo "node_deps: npm ci failed:" >&2
		tail -n 20 "$TMP/npm-ci.log" >&2
		return 1
	}
}
