#!/usr/bin/env bash
# t_txnpool_races.sh: three races of pool_mode = transaction (proxy/pool.c, relay.c) that ordinary clients
# rarely meet, each set up so that it happens every run: with pool_size = 1, one session holds the only server
# connection while another waits for it, and a raw client (Python, speaking the protocol itself) sends what
# libpq never does.
#   1. A client that sends its query and Terminate together, and stays: the server process exits after the
#      answer, so that connection must not go to the session waiting for it.
#   2. A TLS client that pipelines two queries in one TCP segment while it waits: OpenSSL reads both records,
#      pglane takes the first, and must read the second when the session resumes, with no byte more to come.
#   3. A waiting session whose query_wait_timeout error cannot be delivered (its client reads nothing) is
#      closing: the next free connection must go to the session behind it, not to it.
set -u
# shellcheck source=SCRIPTDIR/lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"

[ -x "$PGLANE" ] || bail "$PGLANE is not built (make pglane)"
command -v python3 >/dev/null 2>&1 || bail "python3 is not installed"
certs_make || bail "certs_make"
pg_start main || bail "pg_start main"
LANE_PORT=''
free_port_var LANE_PORT || bail "free_port"
pg_createdb main tr-production >/dev/null || bail "createdb"

CONF=$TMP/pglane.ini
ADMIN_PASSWORD=$(openssl rand -hex 12)
cat >"$CONF" <<EOF
[pglane]
# one worker: these checks count one pool's server connections (each worker has its own)
workers = 1
listen = 127.0.0.1:$LANE_PORT
server_idle_timeout = 30
pool_size = 1
query_wait_timeout = 2
admin_user = admin
admin_password = $ADMIN_PASSWORD
tls_cert = $CERTS/server.crt
tls_key = $CERTS/server.key
log_level = debug

[instance main]
url = postgresql://postgres:$PG_MAIN_PASSWORD@127.0.0.1:$PG_MAIN_PORT/postgres?sslmode=disable

[app tr]
instance = main
secret = $(openssl rand -hex 24)
pool_mode = transaction
EOF
chmod 600 "$CONF"
pglane_start "$CONF" || bail "pglane_start"
VARS=$("$PGLANE" env -c "$CONF" tr --production --format shell) || bail "pglane env"

cat >"$TMP/pgstep.py" <<'PY'
# pgstep.py STEP...: a client speaking the protocol raw, to PGHOST:PGPORT as PGUSER to PGDATABASE with
# PGPASSWORD (SCRAM), running its steps in order and printing what it gets, a line each:
#   rcvbuf:N   a receive buffer of N bytes (before login)
#   tls        TLS after an SSLRequest (before login; the certificate is not checked)
#   login      StartupMessage and SCRAM; prints "LOGGED IN" at the first ReadyForQuery
#   q:SQL      queues a Query;  x  queues a Terminate
#   send       sends what is queued in one TCP segment (over TLS: a TLS record per message, corked together)
#   read:N     reads until N ReadyForQuery: prints each DataRow's first column, "E:<SQLSTATE>" for an error
#              and "Z"; then "EOF" if pglane closed, or "TIMEOUT" after 5 s without a byte
#   drain      reads so until pglane closes
#   fill:N     fills the path from pglane to this client: sends queries of N-byte results, one by one, never
#              reading, until pglane's socket toward it takes less than N / 2 of one within a second (its
#              send queue, in /proc/net/tcp): pglane then holds the rest itself, at most about 1.5 N.
#   sleep:S, touch:PATH, await:PATH (up to 20 s)
import base64, hashlib, hmac, os, select, socket, ssl, struct, sys, time

host, port = os.environ["PGHOST"], int(os.environ["PGPORT"])
user, db, password = os.environ["PGUSER"], os.environ["PGDATABASE"], os.environ["PGPASSWORD"]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
queued, buf, tls = [], b"", False


def say(line):
    print(line, flush=True)


def recv():
    global buf
    if not (tls and s.pending()) and not select.select([s], [], [], 5)[0]:
        raise TimeoutError
    chunk = s.recv(65536)
    if not chunk:
        raise EOFError
    buf += chunk


def read():
    global buf
    while len(buf) < 5 or len(buf) < 1 + struct.unpack("!i", buf[1:5])[0]:
        recv()
    n = 1 + struct.unpack("!i", buf[1:5])[0]
    m, buf = buf[:n], buf[n:]
    return m[:1], m[5:]


def msg(t, body):
    return t + struct.pack("!i", len(body) + 4) + body


def login():
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
    while True:
        t, body = read()
        if t == b"E":
            sys.exit("login failed: " + body.decode(errors="replace"))
        if t == b"Z":
            break
    say("LOGGED IN")


def answers(n):
    seen = 0
    try:
        while n < 0 or seen < n:
            t, body = read()
            if t == b"D" and struct.unpack("!h", body[:2])[0] > 0:
                k = struct.unpack("!i", body[2:6])[0]
                say(body[6:6 + k].decode() if k >= 0 else "NULL")
            elif t == b"E":
                fields = dict((f[:1], f[1:]) for f in body.split(b"\0") if f)
                say("E:" + fields.get(b"C", b"?").decode())
            elif t == b"Z":
                seen += 1
                say("Z")
    except EOFError:
        say("EOF")
    except TimeoutError:
        say("TIMEOUT")
    except OSError as e:
        say("RESET " + str(e))


def tx_queue():
    """Bytes pglane's socket toward this client holds unacknowledged (its send queue)."""
    me = s.getsockname()[1]
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            x = line.split()
            if int(x[1].split(":")[1], 16) == port and int(x[2].split(":")[1], 16) == me:
                return int(x[4].split(":")[0], 16)
    sys.exit("pglane's socket toward this client is not in /proc/net/tcp")


def fill(n):
    q = msg(b"Q", b"SELECT repeat('x', %d)\0" % n)
    for _ in range(400):
        before = tx_queue()
        s.sendall(q)
        end = time.time() + 1
        while tx_queue() - before < n // 2 and time.time() < end:
            time.sleep(0.01)
        if tx_queue() - before < n // 2:
            say("FILLED")
            return
    sys.exit("pglane's socket toward this client never filled")


for step in sys.argv[1:]:
    verb, _, arg = step.partition(":")
    if verb == "rcvbuf":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(arg))
    elif verb == "tls":
        tls = True
    elif verb == "login":
        s.connect((host, port))
        if tls:
            s.sendall(struct.pack("!ii", 8, 80877103))
            if s.recv(1) != b"S":
                sys.exit("pglane refused TLS")
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s = ctx.wrap_socket(s)
        login()
    elif verb == "q":
        queued.append(msg(b"Q", arg.encode() + b"\0"))
    elif verb == "x":
        queued.append(msg(b"X", b""))
    elif verb == "send":
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        for m in queued:
            s.sendall(m)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        queued = []
    elif verb == "read":
        answers(int(arg))
    elif verb == "drain":
        answers(-1)
    elif verb == "fill":
        fill(int(arg))
    elif verb == "sleep":
        time.sleep(float(arg))
    elif verb == "touch":
        open(arg, "w").close()
    elif verb == "await":
        end = time.time() + 20
        while not os.path.exists(arg) and time.time() < end:
            time.sleep(0.02)
    else:
        sys.exit("pgstep.py: unknown step " + step)
PY

# client NAME STEP...: pgstep.py as tr's production timeline in the background, its output in TMP/NAME.out;
# sets CLIENT_PID (the python process itself, so that it can be stopped).
client() {
	local name=$1
	shift
	(
		eval "$VARS"
		exec python3 "$TMP/pgstep.py" "$@"
	) >"$TMP/$name.out" 2>&1 &
	CLIENT_PID=$!
	LIB_PIDS+=("$CLIENT_PID")
}

# await_file PATH SECONDS: true once PATH exists.
await_file() {
	local deadline=$(($(now_ms) + $2 * 1000))
	while [ ! -e "$1" ]; do
		[ "$(now_ms)" -lt "$deadline" ] || return 1
		sleep 0.05
	done
}

# await_waiting N: true once SHOW POOLS counts N sessions waiting for a server connection (within 5 s).
# shellcheck disable=SC2317 # run through check
await_waiting() {
	local deadline=$(($(now_ms) + 5000)) n
	while :; do
		n=$(PGPASSWORD=$ADMIN_PASSWORD psql -X -At -h 127.0.0.1 -p "$LANE_PORT" -U admin -d pglane \
			-c "SHOW POOLS" 2>/dev/null | awk -F'|' '$2 == "tr-production" {print $4}')
		[ "$n" = "$1" ] && return 0
		[ "$(now_ms)" -lt "$deadline" ] || return 1
		sleep 0.05
	done
}

# out NAME: a client's output on one line.
out() { paste -sd ' ' - <"$TMP/$1.out"; }

client warm login "q:SELECT 'warm'" send read:1
wait "$CLIENT_PID"
check_eq "a raw client through transaction pooling (pool_size = 1)" "LOGGED IN warm Z" "$(out warm)"

# ---------------------------------------------------------------- 1. Terminate pipelined behind a query
# A sends its query and Terminate in one segment and stays connected; B waits for the only connection
# meanwhile.  When A's answer ends (ReadyForQuery idle), the server process goes on to read the Terminate and
# exits: parked and handed to B, the connection would answer B with an EOF.  B must get a fresh one.
client t1a login "q:SELECT 'a' FROM pg_sleep(2)" x send touch:"$TMP/t1.sent" drain
A=$CLIENT_PID
await_file "$TMP/t1.sent" 10 || bail "client A did not send"
client t1b login "q:SELECT 'b'" send read:1
B=$CLIENT_PID
check "1. B waits while A's query runs (setup)" await_waiting 1
wait "$A"
wait "$B"
check_eq "1. a client's query and Terminate sent together: its answer, then the end" "LOGGED IN a Z EOF" "$(out t1a)"
check_eq "1. the session waiting meanwhile is served, not handed the exiting server process" "LOGGED IN b Z" \
	"$(out t1b)"

# ---------------------------------------------------------------- 2. TLS: a pipelined query OpenSSL holds
# H holds the only connection in a transaction.  A, over TLS, sends two queries as two TLS records in one TCP
# segment: pglane's SSL_read() (read-ahead) takes both records from the socket but returns the first, and the
# session waits with the second inside OpenSSL.  H commits: A resumes, and must answer both queries though
# its socket has nothing more to say.
client t2h login q:BEGIN send read:1 touch:"$TMP/t2.held" await:"$TMP/t2.commit" q:COMMIT send read:1
H=$CLIENT_PID
await_file "$TMP/t2.held" 10 || bail "client H did not begin its transaction: $(out t2h)"
client t2a tls login "q:SELECT 'one'" "q:SELECT 'two'" send touch:"$TMP/t2.sent" read:2
A=$CLIENT_PID
await_file "$TMP/t2.sent" 10 || bail "client A did not send: $(out t2a)"
check "2. A waits, its second query inside OpenSSL (setup)" await_waiting 1
touch "$TMP/t2.commit"
wait "$H"
wait "$A"
check_eq "2. the transaction holding the connection ends" "LOGGED IN Z Z" "$(out t2h)"
check_eq "2. a TLS client's two pipelined queries, sent while it waited, are both answered" \
	"LOGGED IN one Z two Z" "$(out t2a)"

# ---------------------------------------------------------------- 3. a closing session leaves the line
# A reads nothing, with a small receive buffer, until pglane holds some of its answers itself.  H then holds
# the only connection, and A's next query waits past query_wait_timeout: its FATAL queues behind the rest,
# and A stays closing, unread, for 5 s.  C comes to wait behind A; H commits: the connection must go to C.
client t3a rcvbuf:4096 login fill:131072 touch:"$TMP/t3.filled" await:"$TMP/t3.go" "q:SELECT 'a2'" send \
	sleep:15
A=$CLIENT_PID
await_file "$TMP/t3.filled" 20 || bail "client A did not fill its path: $(out t3a)"
client t3h login q:BEGIN send read:1 touch:"$TMP/t3.held" await:"$TMP/t3.commit" q:COMMIT send read:1
H=$CLIENT_PID
await_file "$TMP/t3.held" 10 || bail "client H did not begin its transaction: $(out t3h)"
touch "$TMP/t3.go"
deadline=$(($(now_ms) + 6000))
until id=$(grep -o 'C-[0-9]* [^ ]* [^ ]* refused (57014)' "$PGLANE_LOG" | head -n 1 | cut -d' ' -f1) && [ -n "$id" ]; do
	[ "$(now_ms)" -lt "$deadline" ] || break
	sleep 0.1
done
check_match "3. the waiting client that reads nothing gets query_wait_timeout" '^C-[0-9]+$' "$id"
sleep 0.3
check "3. ... which it does not read: its session stays, closing (setup)" \
	bash -c "! grep -q '$id .*closed in state' '$PGLANE_LOG'"
client t3c login "q:SELECT 'c'" send read:1
C=$CLIENT_PID
check "3. C waits behind A, which is still in the line (setup)" await_waiting 2
t0=$(now_ms)
touch "$TMP/t3.commit"
wait "$H"
wait "$C"
t1=$(now_ms)
check_eq "3. the transaction holding the connection ends" "LOGGED IN Z Z" "$(out t3h)"
check_eq "3. the session waiting behind a closing one gets the connection" "LOGGED IN c Z" "$(out t3c)"
check "3. ... at once ($((t1 - t0)) ms)" [ $((t1 - t0)) -lt 1000 ]
kill "$A" 2>/dev/null
wait "$A" 2>/dev/null
for _ in $(seq 1 20); do
	grep -q "$id .*closed in state" "$PGLANE_LOG" && break
	sleep 0.1
done
check_match "3. the closing session ends once its client goes" \
	"$id .*closed in state active: client (did not read its error|connection error)" "$(cat "$PGLANE_LOG")"

# shellcheck disable=SC2119 # no argument: the pglane this script started
pglane_stop
check "no sanitizer or assertion report" bash -c "! grep -qE 'AddressSanitizer|runtime error|Assertion' '$PGLANE_LOG'"
finish
