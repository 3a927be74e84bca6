#!/usr/bin/env bash
# t_krelay.sh: kernel_relay = on (proxy/krelay.c) against a real PostgreSQL over plaintext: sessions relayed
# by the kernel give the same bytes as direct PostgreSQL (small queries, a 20 MB result, a 10 MB COPY FROM),
# a session moves to pglane's own relay after a large result and goes on working, the byte counts pglane
# logs include what the kernel relayed, a slow reader gets every byte in order, a client that stops reading
# holds a bounded amount of memory (the kernel's credit, then 16 MB in pglane) and is cut, a SIGTERM reaches an idle session as 57P01, and pgbench runs
# clean.  Skipped (with the reason) where the kernel or privileges do not allow it: kernel_relay = auto then
# relays in user space, which the rest of the suite covers.
set -u
# shellcheck source=SCRIPTDIR/lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"

[ -x "$PGLANE" ] || bail "$PGLANE is not built (make pglane)"
pg_start main || bail "pg_start main"
LANE_PORT=''
free_port_var LANE_PORT || bail "free_port"
pg_createdb main kr-production >/dev/null || bail "createdb"

CONF=$TMP/pglane.ini
cat >"$CONF" <<EOF
[pglane]
# one worker: these checks count one pool's server connections (each worker has its own)
workers = 1
listen = 127.0.0.1:$LANE_PORT
kernel_relay = on
client_write_timeout = 2
shutdown_timeout = 1

[instance main]
url = postgresql://postgres:$PG_MAIN_PASSWORD@127.0.0.1:$PG_MAIN_PORT/postgres?sslmode=disable

[app kr]
instance = main
secret = $(openssl rand -hex 24)
EOF
chmod 600 "$CONF"

"$PGLANE" -c "$CONF" </dev/null >"$TMP/probe.log" 2>&1 &
PROBE_PID=$!
sleep 1
if ! kill -0 "$PROBE_PID" 2>/dev/null; then
	wait "$PROBE_PID" 2>/dev/null
	if grep -q "kernel_relay = on, but" "$TMP/probe.log"; then
		note "SKIP: the kernel relay is not available here: $(grep -o 'kernel_relay = on, but.*' "$TMP/probe.log")"
		check "pglane refuses kernel_relay = on with the reason" grep -q "kernel_relay = on, but" "$TMP/probe.log"
		finish
	fi
	bail "pglane did not start: $(cat "$TMP/probe.log")"
fi
kill "$PROBE_PID"
wait "$PROBE_PID" 2>/dev/null
pglane_start "$CONF" || bail "pglane_start"
check "pglane says the kernel relays" grep -q "kernel relay on" "$PGLANE_LOG"

# lane SQL...: psql through pglane as kr's production timeline; direct SQL...: psql straight to PostgreSQL.
lane() { in_env kr --production -- psql -X -At -v ON_ERROR_STOP=1 "$@"; }
direct() { PGPASSWORD=$PG_MAIN_PASSWORD psql -X -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_MAIN_PORT" -U postgres -d kr-production "$@"; }

check_eq "a query through the kernel relay" "kr-production|42" "$(lane -c "SELECT current_database(), 42")"
BIG="SELECT i, repeat(md5(i::text), 30) FROM generate_series(1, 20000) i"
check_eq "a 20 MB result arrives byte for byte as direct PostgreSQL sends it" \
	"$(direct -c "$BIG" | md5sum)" "$(lane -c "$BIG" | md5sum)"
check_eq "the session goes on after a large result (pglane relays the rest of it)" 42 \
	"$(lane -c "$BIG" -c "SELECT 42" | tail -n 1)"
check_eq "many small queries in one session" 200 \
	"$(for i in $(seq 1 200); do echo "SELECT $i;"; done | lane | wc -l)"

direct -c "CREATE TABLE t (i int, s text)" >/dev/null
seq 1 200000 | sed 's/$/\tsome text to make the rows longer than a few bytes/' >"$TMP/rows.tsv"
check_eq "a 10 MB COPY FROM STDIN reaches the server whole" 200000 \
	"$(lane -c "\\copy t FROM '$TMP/rows.tsv'" -c "SELECT count(*) FROM t" | tail -n 1)"

lane -c "SELECT repeat('x', 100000)" >/dev/null
sleep 0.3
check_match "the bytes pglane logs for a session include what the kernel relayed" \
	'[1-9][0-9]{5,} bytes out' "$(grep "closed in state active" "$PGLANE_LOG" | tail -n 1)"

# pgbench: its own schema in the timeline's database, then -S and the TPC-B-like default.
if in_env kr --production -- pgbench -i -s 1 -q >"$TMP/pgbench-i.log" 2>&1; then
	in_env kr --production -- pgbench -n -c 4 -j 2 -T 3 >"$TMP/pgbench.log" 2>&1
	check_match "pgbench (TPC-B-like, 4 clients) runs clean through the kernel relay" \
		'number of failed transactions: 0 ' "$(tr '\n' ' ' <"$TMP/pgbench.log")"
	in_env kr --production -- pgbench -n -S -c 8 -j 2 -T 3 >"$TMP/pgbench-S.log" 2>&1
	check_match "pgbench -S (8 clients) runs clean" 'number of failed transactions: 0 ' \
		"$(tr '\n' ' ' <"$TMP/pgbench-S.log")"
else
	fail "pgbench -i through pglane: $(tail -n 3 "$TMP/pgbench-i.log")"
fi

# A client that stops reading a 1 GB result: the kernel stops relaying after its budget and pglane's own
# back-pressure holds the server; the kernel's memory stays bounded (MemAvailable is machine-wide, so the
# bound is loose: without the budget the kernel held the whole gigabyte).
MEM0=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
(
	in_env kr --production -- timeout 20 psql -X -c "COPY (SELECT repeat('x', 1000) FROM generate_series(1, 1000000)) TO STDOUT" | sleep 8
) >/dev/null 2>&1 &
sleep 1.5
MEM1=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
check "the machine's available memory stays (${MEM0} -> ${MEM1} kB; the result is 1 GB)" [ $((MEM0 - MEM1)) -lt 262144 ]
# pglane never stops reading a socket in the kernel's sockmap (this kernel then reordered bytes, see
# relay_check_full()): it holds up to 16 MB for the client, then cuts it.
check "the stalled client is cut once 16 MB wait for it" grep -q "the client fell 16 MB behind the server" "$PGLANE_LOG"
sleep 1
check_eq "its server process ends with it" 0 \
	"$(direct -c "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY%' AND pid <> pg_backend_pid()")"

# A slow reader (20 MB/s, as a client over a modest network) of 20 MB results: the direction moves from the
# kernel to pglane while the client lags, and the stream stays whole.  (Before pglane kept reading sockmap
# sockets, one run in about ten lost its place here.)
SLOW=0
for i in 1 2 3 4 5 6; do
	got=$(lane -c "$BIG" | python3 -c '
import sys, time, hashlib
h = hashlib.md5()
while True:
    b = sys.stdin.buffer.read(65536)
    if not b: break
    h.update(b); time.sleep(0.003)
print(h.hexdigest() + "  -")')
	[ "$got" = "$(direct -c "$BIG" | md5sum)" ] && SLOW=$((SLOW + 1))
done
check_eq "six 20 MB results to a slow reader arrive byte for byte" 6 "$SLOW"

# A hostile client that asks for 2 GB, produced at about 20 MB/s, reads nothing, and sends a byte every
# millisecond, so that the server never has 256 kB in one turn: the kernel's credit still stops the relay at
# 4 MB beyond what the client took, and pglane cuts the client once it holds 16 MB for it (without the
# credit the kernel would hold all of it: the memory check fails).
cat >"$TMP/trickle.py" <<'PY'
import base64, hashlib, hmac, os, socket, struct, sys, time
host, port, user, db, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
s = socket.create_connection((host, port))
def recvn(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError
        b += c
    return b
def read():
    h = recvn(5)
    return h[:1], recvn(struct.unpack("!i", h[1:])[0] - 4)
def msg(t, body):
    return t + struct.pack("!i", len(body) + 4) + body
params = b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
s.sendall(struct.pack("!ii", len(params) + 8, 196608) + params)
read()
bare = "n=,r=" + base64.b64encode(os.urandom(18)).decode()
first = ("n,," + bare).encode()
s.sendall(msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
sfirst = read()[1][4:].decode()
a = dict(kv.split("=", 1) for kv in sfirst.split(","))
salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(a["s"]), int(a["i"]))
ckey = hmac.new(salted, b"Client Key", "sha256").digest()
wo = "c=biws,r=" + a["r"]
sig = hmac.new(hashlib.sha256(ckey).digest(), (bare + "," + sfirst + "," + wo).encode(), "sha256").digest()
s.sendall(msg(b"p", (wo + ",p=" + base64.b64encode(bytes(x ^ y for x, y in zip(ckey, sig))).decode()).encode()))
while read()[0] != b"Z":
    pass
q = b"COPY (SELECT repeat('x', 20000), pg_sleep(0.001) FROM generate_series(1, 100000)) TO STDOUT\0"
s.sendall(msg(b"Q", q))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # every byte its own segment
s.sendall(b"Q" + struct.pack("!i", 1 << 30))  # a message that never ends, sent a byte at a time
print("READY", flush=True)
end = time.time() + 8
try:
    while time.time() < end:
        s.send(b"x")
        time.sleep(0.001)
    print("SURVIVED", flush=True)
except OSError:
    print("CUT", flush=True)
PY
PW=$(env_var kr --production PGPASSWORD)
MEM0=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
bg_start python3 "$TMP/trickle.py" 127.0.0.1 "$LANE_PORT" kr-production kr-production "$PW" >"$TMP/trickle.out" 2>&1
sleep 2.5
MEM1=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
check_match "the trickling client logged in and asked for its 2 GB" READY "$(cat "$TMP/trickle.out")"
check "the machine's available memory stays while it trickles (${MEM0} -> ${MEM1} kB)" [ $((MEM0 - MEM1)) -lt 262144 ]
sleep 1
check_match "the trickling client is cut, not served forever" CUT "$(cat "$TMP/trickle.out")"
check_eq "... once 16 MB waited for it in pglane (the kernel's credit had stopped the kernel at 4 MB)" 2 \
	"$(grep -c "the client fell 16 MB behind the server" "$PGLANE_LOG")"

# An idle session relayed by the kernel gets 57P01 when pglane stops (after shutdown_timeout).
bg_start in_env kr --production -- psql -X -At -c "SELECT 1" -c "\\! sleep 3" -c "SELECT 2" >"$TMP/idle.out" 2>&1
sleep 1.5
pglane_stop
sleep 2
check_match "an idle session hears the shutdown (57P01)" 'terminating connection due to administrator command' \
	"$(tr '\n' ' ' <"$TMP/idle.out")"
finish
