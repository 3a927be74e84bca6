#!/usr/bin/env bash
# t_tls.sh: TLS on both sides of pglane (issue 3) with real clients: psql and libpq (pqprobe), a raw
# socket client (rawclient) and a direct-TLS OpenSSL client (directtls), against two real PostgreSQL
# instances: "main" (TLS from lib.sh's test CA) and "private" (a server certificate signed by a private CA
# made here, as an operator's own CA would be).
#
# What it holds pglane to:
#   - clients reach pglane over TLS with sslmode=require and verify-full (against `pglane certs init`'s dev
#     CA), and channel_binding=require works (SCRAM-SHA-256-PLUS);
#   - a client certificate from `pglane certs issue` logs in with no password and lands in its timeline's
#     database; `pglane env --cert DIR` prints variables psql uses as they are;
#   - a certificate from another CA, an expired, a revoked (client_crl, reloaded) and an unmapped one, and a
#     user name not of the certificate's timeline, are refused with 28000 and the reason;
#   - tls_mode = require refuses plaintext with 28000 and a hint naming sslmode=require;
#   - bytes sent after an SSLRequest in the same write are refused (CVE-2021-23214);
#   - direct TLS (PostgreSQL 17) with ALPN postgresql speaks PostgreSQL; another ALPN is refused;
#   - an instance is verified against its own ca_file, and refused without it with a message saying to
#     upload the CA that signed its certificate;
#   - tls_cert and tls_key replaced and reloaded (SIGHUP) while a session is up: the session completes, new
#     clients see the new certificate; a bad new file keeps the old one.
set -u
# shellcheck source=SCRIPTDIR/lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"

DIRECTTLS=$BUILD_DIR/tools/directtls
RAWCLIENT=$BUILD_DIR/tools/rawclient
[ -x "$PQPROBE" ] || bail "$PQPROBE is not built (make unit-bins)"
[ -x "$DIRECTTLS" ] || bail "$DIRECTTLS is not built (make unit-bins)"
[ -x "$PGLANE" ] || bail "$PGLANE is not built (make pglane)"

# ---------------------------------------------------------------- certificates and instances

certs_make || bail "certs_make"
# "private": an operator's own CA, unknown to everything else here.
if ! { lib_ca private-ca "pglane private operator CA" &&
	lib_cert private-server private-ca localhost "DNS:localhost, IP:127.0.0.1"; }; then
	bail "private CA (openssl)"
fi
chmod 644 "$CERTS"/*.crt
PRIVATE_CA=$CERTS/private-ca.crt

pg_start main || bail "pg_start main"
pg_start private private-server || bail "pg_start private"

DEV=$TMP/dev   # pglane's certificate and dev CA, and the client CA
DEV2=$TMP/dev2 # the replacement, for the reload test
out=$("$PGLANE" certs init "$DEV" 2>&1) || bail "pglane certs init $DEV: $out"
check_match "certs init prints the [pglane] lines" "^client_ca_key = $DEV/client-ca.key\$" "$out"

LANE_PORT=''
free_port_var LANE_PORT || bail "free_port"

# write_conf: the configuration, from TLS_DIR (where tls_cert/tls_key are), TLS_MODE and CRL (client_crl,
# or empty).
TLS_DIR=$DEV TLS_MODE=allow CRL='' TLS_CERT_FILE=''
CONF=$TMP/pglane.ini
SECRET_DEMO=$(openssl rand -hex 24)
SECRET_PRIV=$(openssl rand -hex 24)
write_conf() {
	cat >"$CONF" <<EOF
; pglane configuration written by t_tls.sh
[pglane]
listen = 127.0.0.1:$LANE_PORT
connect_timeout = 3
login_timeout = 5
log_level = debug ; the refusals below are logged at debug
tls_mode = $TLS_MODE
tls_cert = ${TLS_CERT_FILE:-$TLS_DIR/server.crt}
tls_key = $TLS_DIR/server.key
client_ca = $DEV/client-ca.crt
client_ca_key = $DEV/client-ca.key
${CRL:+client_crl = $CRL}

[instance main]
url = postgresql://postgres:$PG_MAIN_PASSWORD@localhost:$PG_MAIN_PORT/postgres?sslmode=verify-full
ca_file = $TEST_CA

; the private instance, verified against the CA that signed its certificate
[instance private]
url = postgresql://postgres:$PG_PRIVATE_PASSWORD@localhost:$PG_PRIVATE_PORT/postgres?sslmode=verify-full
ca_file = $PRIVATE_CA

; the same server, with a bundle that did not sign its certificate
[instance private-noca]
url = postgresql://postgres:$PG_PRIVATE_PASSWORD@localhost:$PG_PRIVATE_PORT/postgres?sslmode=verify-full
ca_file = $TEST_CA

[app demo]
instance = main
secret = $SECRET_DEMO

[app priv]
instance = private
secret = $SECRET_PRIV

[app privbad]
instance = private-noca
secret = $SECRET_PRIV
EOF
	chmod 600 "$CONF"
}
write_conf

# reload: SIGHUP, then waits until the log shows the reload taken or rejected.
reload() {
	local before _
	before=$(grep -cE 'reloaded |reload rejected' "$PGLANE_LOG")
	kill -HUP "$PGLANE_PID" || return 1
	for _ in $(seq 1 100); do
		[ "$(grep -cE 'reloaded |reload rejected' "$PGLANE_LOG")" -gt "$before" ] && return 0
		sleep 0.1
	done
	return 1
}


# probe APP TIMELINE-ARGS... [-- NAME=VALUE...]: pqprobe in that timeline's environment, with overrides.
probe() {
	local args=()
	while [ $# -gt 0 ] && [ "$1" != -- ]; do
		args+=("$1")
		shift
	done
	[ $# -gt 0 ] && shift
	in_env "${args[@]}" -- env "$@" "$PQPROBE" --timeout 20 ""
}

# cert_probe DIR USER [CONNINFO...]: pqprobe with the client certificate in DIR, user (and database) USER,
# no password anywhere.
cert_probe() {
	local dir=$1 user=$2
	shift 2
	"$PQPROBE" --timeout 20 "host=127.0.0.1 port=$LANE_PORT user='$user' dbname='$user' sslmode=require \
sslcert='$dir/client.crt' sslkey='$dir/client.key' $*"
}

# ---------------------------------------------------------------- databases, then the proxy

for db in demo-production demo-preview "demo--feature/x"; do
	pg_createdb main "$db" || bail "create database $db on main"
done
pg_createdb private priv-production || bail "create database priv-production on private"

out=$("$PGLANE" check -c "$CONF" 2>&1)
check_eq "pglane check accepts the TLS config" 0 "$?" || note "$out"

pglane_start "$CONF" || bail "pglane did not start"
ok "pglane listens on 127.0.0.1:$LANE_PORT with TLS"

# ---------------------------------------------------------------- client TLS: require, verify-full, channel binding

check_eq "env's PGSSLMODE with tls_cert set is require" require "$(in_env demo --production -- printenv PGSSLMODE)"
check_eq "sslmode=require lands in demo-production" demo-production "$(probe demo --production)"
check_eq "sslmode=verify-full (dev CA, host localhost) lands in demo-preview" demo-preview \
	"$(probe demo --preview -- PGSSLMODE=verify-full PGSSLROOTCERT="$DEV/ca.crt" PGHOST=localhost)"
check_eq "sslmode=verify-full (dev CA, host 127.0.0.1) lands in demo--feature/x" "demo--feature/x" \
	"$(probe demo --branch feature/x -- PGSSLMODE=verify-full PGSSLROOTCERT="$DEV/ca.crt")"
check_match "sslmode=verify-full against another CA is refused by the client" 'certificate verify failed' \
	"$(probe demo --production -- PGSSLMODE=verify-full PGSSLROOTCERT="$TEST_CA" PGHOST=localhost)"
out=$(in_env demo --production -- psql -X -c '\conninfo' 2>&1)
check_match "psql \\conninfo through pglane: an SSL connection" 'SSL connection \(protocol: TLSv1\.[23]' "$out"
check_eq "channel_binding=require (SCRAM-SHA-256-PLUS) lands in demo-production" demo-production \
	"$(probe demo --production -- PGCHANNELBINDING=require)"
check_eq "channel_binding=require with verify-full lands in demo-preview" demo-preview \
	"$(probe demo --preview -- PGCHANNELBINDING=require PGSSLMODE=verify-full PGSSLROOTCERT="$DEV/ca.crt")"
check_match "wrong password over TLS: 28P01" '^ERROR 28P01 ' "$(probe demo --production -- PGPASSWORD=wrong)"

# ---------------------------------------------------------------- client certificates

CERT_X=$TMP/cert-x CERT_PROD=$TMP/cert-prod CERT_REV=$TMP/cert-revoked
out=$("$PGLANE" certs issue -c "$CONF" demo --branch feature/x --out "$CERT_X" 2>&1)
check_eq "certs issue --branch feature/x" 0 "$?" || note "$out"
out=$("$PGLANE" certs issue -c "$CONF" demo --production --out "$CERT_PROD" 2>&1)
check_eq "certs issue --production" 0 "$?" || note "$out"
out=$("$PGLANE" certs issue -c "$CONF" demo --preview --out "$CERT_REV" 2>&1)
check_eq "certs issue --preview (to be revoked)" 0 "$?" || note "$out"
out=$("$PGLANE" certs inspect "$CERT_X/client.crt" 2>&1)
check_match "certs inspect maps the branch certificate" 'maps to: +app demo, timeline branch feature/x' "$out"

check_eq "client certificate, no password: demo--feature/x" "demo--feature/x" "$(cert_probe "$CERT_X" "demo--feature/x")"
check_eq "client certificate, no password: demo-production" demo-production "$(cert_probe "$CERT_PROD" demo-production)"
check_eq "client certificate with verify-full (dev CA): demo--feature/x" "demo--feature/x" \
	"$(cert_probe "$CERT_X" "demo--feature/x" sslmode=verify-full sslrootcert="$DEV/ca.crt")"
check_match "pglane logs the login by client certificate" 'identified by client certificate' "$(cat "$PGLANE_LOG")"
check_eq "client certificate, no database given (database = user name)" demo-production \
	"$("$PQPROBE" --timeout 20 "host=127.0.0.1 port=$LANE_PORT user=demo-production sslmode=require sslcert=$CERT_PROD/client.crt sslkey=$CERT_PROD/client.key")"
check_eq "client certificate (preview, before any CRL): demo-preview" demo-preview "$(cert_probe "$CERT_REV" demo-preview)"
check_match "client certificate of feature/x with user demo-production: 28000, does not match" \
	'^ERROR 28000 .*does not match the client certificate' "$(cert_probe "$CERT_X" demo-production)"
check_match "client certificate of production asking for demo-preview's database: 28000 or 42501" \
	'^ERROR (28000|42501) ' "$("$PQPROBE" --timeout 20 "host=127.0.0.1 port=$LANE_PORT user=demo-production \
dbname=demo-preview sslmode=require sslcert=$CERT_PROD/client.crt sslkey=$CERT_PROD/client.key")"

# `pglane env --cert DIR`, as printed, with psql
out=$("$PGLANE" env -c "$CONF" demo --branch feature/x --cert "$CERT_X" 2>&1)
check_eq "env --cert: exit 0" 0 "$?" || note "$out"
got=$(printf '%s\n' "$out" | sed -n "s/^export \([A-Z_]*\)=.*/\1/p" | tr '\n' ' ')
check_eq "env --cert without DIR/ca.crt: the variables, no password, no root cert" \
	"PGHOST PGPORT PGDATABASE PGUSER PGSSLCERT PGSSLKEY PGSSLMODE DATABASE_URL " "$got"
check_match "env --cert: PGSSLCERT is DIR/client.crt, absolute" "^export PGSSLCERT='$CERT_X/client.crt'\$" \
	"$(printf '%s\n' "$out" | grep '^export PGSSLCERT=')"
check_match "env --cert without DIR/ca.crt: PGSSLMODE=require" "^export PGSSLMODE='require'\$" \
	"$(printf '%s\n' "$out" | grep '^export PGSSLMODE=')"
check_match "env --cert: DATABASE_URL without a password, with sslcert and sslkey" \
	"^export DATABASE_URL='postgresql://demo--feature%2Fx@127\.0\.0\.1:$LANE_PORT/demo--feature%2Fx\?sslmode=require&sslcert=[^&']*client\.crt&sslkey=[^&']*client\.key'\$" \
	"$(printf '%s\n' "$out" | grep '^export DATABASE_URL=')"
# shellcheck disable=SC2016 # expanded in the subshell, after eval
got=$( (eval "$out" && psql -X -At -c 'SELECT current_database()') 2>&1)
check_eq "env --cert (require) with psql as-is: demo--feature/x" "demo--feature/x" "$got"

cp "$DEV/ca.crt" "$CERT_X/ca.crt"
out=$("$PGLANE" env -c "$CONF" demo --branch feature/x --cert "$CERT_X" 2>&1)
check_match "env --cert with DIR/ca.crt: PGSSLROOTCERT, absolute" "^export PGSSLROOTCERT='$CERT_X/ca.crt'\$" \
	"$(printf '%s\n' "$out" | grep '^export PGSSLROOTCERT=')"
check_match "env --cert with DIR/ca.crt: PGSSLMODE=verify-full" "^export PGSSLMODE='verify-full'\$" \
	"$(printf '%s\n' "$out" | grep '^export PGSSLMODE=')"
got=$( (eval "$out" && psql -X -At -c 'SELECT current_database()' -c '\conninfo') 2>&1)
check_match "env --cert (verify-full) with psql as-is: demo--feature/x over SSL" \
	'^demo--feature/x'$'\n''.*SSL connection' "$got"
# shellcheck disable=SC2016
got=$( (eval "$out" && env -u PGHOST -u PGPORT -u PGDATABASE -u PGUSER -u PGSSLCERT -u PGSSLKEY -u PGSSLROOTCERT \
	-u PGSSLMODE psql -X -At -c 'SELECT current_database()' "$DATABASE_URL") 2>&1)
check_eq "env --cert: DATABASE_URL alone, with psql: demo--feature/x" "demo--feature/x" "$got"
out=$("$PGLANE" env -c "$CONF" demo --branch feature/x --cert "$CERT_X" --format json 2>&1)
got=$(printf '%s' "$out" | python3 -c 'import json,sys; o=json.load(sys.stdin); print(len(o), "PGPASSWORD" in o, o["PGSSLMODE"])' 2>&1)
check_eq "env --cert --format json: nine variables, no PGPASSWORD" "9 False verify-full" "$got"
out=$("$PGLANE" env -c "$CONF" demo --branch feature/x --cert "$CERT_X" --format dotenv 2>&1)
check_match "env --cert --format dotenv: PGSSLKEY=DIR/client.key" "^PGSSLKEY=$CERT_X/client.key\$" \
	"$(printf '%s\n' "$out" | grep '^PGSSLKEY=')"
out=$("$PGLANE" env -c "$CONF" demo --production --cert "$TMP/nonexistent" 2>&1)
check_eq "env --cert with a missing directory exits 1" 1 "$?"
out=$("$PGLANE" env -c "$CONF" demo --production --cert "$DEV" 2>&1)
check_match "env --cert with no client.crt in DIR: exit 1 naming the file" 'cannot read .*client\.crt' "$out"

# certificates pglane must refuse, made with the openssl CLI
BADCERTS=$TMP/badcerts
mkdir -p "$BADCERTS" || bail "mkdir $BADCERTS"
touch "$BADCERTS/index.txt"
echo 1000 >"$BADCERTS/serial"
cat >"$BADCERTS/ca.cnf" <<EOF
# a throwaway \`openssl ca\` over pglane's client CA: an expired certificate, a revocation list
[ca]
default_ca = clientca
[clientca]
dir = $BADCERTS
database = \$dir/index.txt
new_certs_dir = \$dir
serial = \$dir/serial
default_md = sha256
policy = anycn
unique_subject = no
default_crl_days = 1
[anycn]
commonName = supplied
[mapped]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = URI:pglane:demo/production
[unmapped]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = DNS:demo.example
EOF
OPENSSL_CA=(openssl ca -batch -notext -config "$BADCERTS/ca.cnf" -cert "$DEV/client-ca.crt" -keyfile "$DEV/client-ca.key")
# bad_csr NAME: a P-256 key and a request for CN=demo in BADCERTS/NAME/
bad_csr() {
	mkdir -p "$BADCERTS/$1" &&
		openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj /CN=demo \
			-keyout "$BADCERTS/$1/client.key" -out "$BADCERTS/$1/client.csr" 2>/dev/null &&
		chmod 600 "$BADCERTS/$1/client.key"
}
# expired: valid for January 2020 only, mapped to demo/production, signed by the right CA
if ! { bad_csr expired && "${OPENSSL_CA[@]}" -in "$BADCERTS/expired/client.csr" -out "$BADCERTS/expired/client.crt" \
	-startdate 20200101000000Z -enddate 20200201000000Z -extensions mapped >/dev/null 2>&1; }; then
	bail "openssl ca: expired certificate"
fi
# unmapped: the right CA, CN demo, a SAN but no pglane: URI
if ! { bad_csr unmapped && "${OPENSSL_CA[@]}" -in "$BADCERTS/unmapped/client.csr" \
	-out "$BADCERTS/unmapped/client.crt" -days 2 -extensions unmapped >/dev/null 2>&1; }; then
	bail "openssl ca: unmapped certificate"
fi
# another CA: mapped to demo/production, signed by lib.sh's unrelated CA
printf 'basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\nextendedKeyUsage = clientAuth\nsubjectAltName = URI:pglane:demo/production\n' \
	>"$BADCERTS/otherca.ext"
if ! { bad_csr otherca && openssl x509 -req -in "$BADCERTS/otherca/client.csr" -CA "$OTHER_CA" \
	-CAkey "$CERTS/other-ca.key" -CAcreateserial -days 2 -sha256 -extfile "$BADCERTS/otherca.ext" \
	-out "$BADCERTS/otherca/client.crt" 2>/dev/null; }; then
	bail "openssl x509: certificate from another CA"
fi

check_match "client certificate signed by another CA: 28000, not signed by client_ca" \
	'^ERROR 28000 .*not signed by a CA in pglane.s client_ca' "$(cert_probe "$BADCERTS/otherca" demo-production)"
check_match "expired client certificate: 28000, expired" '^ERROR 28000 .*client certificate has expired' \
	"$(cert_probe "$BADCERTS/expired" demo-production)"
check_match "client certificate without a pglane: URI: 28000, naming the URI" \
	'^ERROR 28000 .*does not map to an app.*no pglane: URI' "$(cert_probe "$BADCERTS/unmapped" demo-production)"

# revoked: a CRL from the client CA naming the preview certificate, then a reload
if "${OPENSSL_CA[@]}" -revoke "$CERT_REV/client.crt" >/dev/null 2>&1 &&
	"${OPENSSL_CA[@]}" -gencrl -out "$BADCERTS/crl.pem" >/dev/null 2>&1; then
	CRL=$BADCERTS/crl.pem
	write_conf
	reload || fail "reload with client_crl" "no reload line in the log"
	check_match "the reload with client_crl is taken" 'reloaded ' "$(grep -E 'reloaded |reload rejected' "$PGLANE_LOG" | tail -n 1)"
	check_match "revoked client certificate (client_crl, reloaded): 28000, revoked" \
		'^ERROR 28000 .*client certificate has been revoked' "$(cert_probe "$CERT_REV" demo-preview)"
	check_eq "with client_crl, an unrevoked certificate still lands in demo--feature/x" "demo--feature/x" \
		"$(cert_probe "$CERT_X" "demo--feature/x")"
	check_eq "with client_crl, password logins still work" demo-production "$(probe demo --production)"
else
	fail "openssl ca -revoke / -gencrl over the client CA" "see $BADCERTS"
fi

# ---------------------------------------------------------------- bytes after SSLRequest

SSLREQ=0000000804d2162f
# startup_hex USER DB: a protocol 3.0 StartupMessage, in hex
startup_hex() {
	local body
	body=$(printf 'user\0%s\0database\0%s\0\0' "$1" "$2" | od -An -v -tx1 | tr -d ' \n')
	printf '%08x00030000%s' $((${#body} / 2 + 8)) "$body"
}
STARTUP=$(startup_hex demo-production demo-production)
if [ -x "$RAWCLIENT" ]; then
	check_eq "SSLRequest alone is answered S" S "$("$RAWCLIENT" --timeout 5 127.0.0.1 "$LANE_PORT" --hex "$SSLREQ" --read-byte)"
	out=$("$RAWCLIENT" --timeout 5 127.0.0.1 "$LANE_PORT" --hex "$SSLREQ$STARTUP" --read-all)
	check_match "SSLRequest and a StartupMessage in one write: no S, the connection closed" '^(EOF|RESET)$' "$out"
else
	# rawclient is not built: bash's /dev/tcp, one printf (one write) of both packets
	out=$(
		exec 3<>"/dev/tcp/127.0.0.1/$LANE_PORT" || exit 1
		# shellcheck disable=SC2059 # the format is the bytes
		printf "$(printf '%s' "$SSLREQ$STARTUP" | sed 's/../\\x&/g')" >&3
		timeout 5 cat <&3 | od -An -c | tr -d ' \n'
		echo "rc=${PIPESTATUS[0]}"
	)
	check_eq "SSLRequest and a StartupMessage in one write: no S, the connection closed" "rc=0" "$out"
fi
check_match "pglane logs the refused bytes after SSLRequest" 'unencrypted data after SSLRequest' "$(cat "$PGLANE_LOG")"

# ---------------------------------------------------------------- direct TLS (PostgreSQL 17)

out=$("$DIRECTTLS" --ca "$DEV/ca.crt" 127.0.0.1 "$LANE_PORT" demo-production demo-production 2>&1)
rc=$?
check_match "direct TLS, ALPN postgresql: the handshake selects postgresql" '^TLS TLSv1\.[23] ALPN postgresql$' \
	"$(printf '%s\n' "$out" | head -n 1)"
check_match "direct TLS, ALPN postgresql: a StartupMessage gets AuthenticationSASL with SCRAM-SHA-256-PLUS" \
	'^R:10 .*SCRAM-SHA-256-PLUS' "$(printf '%s\n' "$out" | sed -n 2p)" || note "exit $rc: $out"
out=$("$DIRECTTLS" --ca "$DEV/ca.crt" --cert "$CERT_X/client.crt" --key "$CERT_X/client.key" localhost "$LANE_PORT" \
	"demo--feature/x" "demo--feature/x" 2>&1)
check_match "direct TLS with a client certificate: AuthenticationOk at once" '^R:0$' \
	"$(printf '%s\n' "$out" | sed -n 2p)" || note "$out"
out=$("$DIRECTTLS" --alpn http/1.1,postgresql --ca "$DEV/ca.crt" 127.0.0.1 "$LANE_PORT" demo-production 2>&1)
check_match "direct TLS offering http/1.1 and postgresql: postgresql is chosen" '^R:10 ' \
	"$(printf '%s\n' "$out" | sed -n 2p)" || note "$out"
out=$("$DIRECTTLS" --alpn http/1.1 --ca "$DEV/ca.crt" 127.0.0.1 "$LANE_PORT" demo-production 2>&1)
rc=$?
if [ $rc -eq 1 ] && [[ $out == HANDSHAKE-FAILED* ]]; then
	ok "direct TLS with ALPN http/1.1 is refused in the handshake"
	# PostgreSQL sends the fatal alert no_application_protocol (120); whether the client sees it or an EOF:
	note "the client saw: $out"
else
	fail "direct TLS with ALPN http/1.1 is refused in the handshake" "exit $rc: $out"
fi
out=$("$DIRECTTLS" --alpn "" --ca "$DEV/ca.crt" 127.0.0.1 "$LANE_PORT" demo-production 2>&1)
if ! printf '%s\n' "$out" | grep -q '^R:'; then
	ok "direct TLS without ALPN gets no PostgreSQL answer ($(printf '%s' "$out" | tr '\n' ' '))"
else
	fail "direct TLS without ALPN gets no PostgreSQL answer" "$out"
fi

# ---------------------------------------------------------------- an instance with its own private CA

check_eq "private instance verified through its ca_file (verify-full): priv-production" priv-production \
	"$(probe priv --production)"
out=$(probe privbad --production)
check_match "private instance without its CA: 08001 telling to upload the CA that signed the server's certificate" \
	"^ERROR 08001 .*upload the CA that signed the server's certificate" "$out"
check_match "the log says why too" "upload the CA that signed the server's certificate" "$(cat "$PGLANE_LOG")"

# ---------------------------------------------------------------- tls_cert replaced and reloaded under a live session

out=$("$PGLANE" certs init "$DEV2" 2>&1) || fail "pglane certs init $DEV2" "$out"
bg_start in_env demo --production -- env PGSSLMODE=verify-full PGSSLROOTCERT="$DEV/ca.crt" \
	"$PQPROBE" --timeout 30 "" "SELECT pg_sleep(3), current_database()" >"$TMP/long.out"
LONG_PID=$BG_PID
sleep 0.8
TLS_DIR=$DEV2
write_conf
reload || fail "reload with the new certificate" "no reload line in the log"
check_match "the reload with the new tls_cert is taken" 'reloaded ' \
	"$(grep -E 'reloaded |reload rejected' "$PGLANE_LOG" | tail -n 1)"
check_eq "after the reload, verify-full against the new dev CA passes" demo-production \
	"$(probe demo --production -- PGSSLMODE=verify-full PGSSLROOTCERT="$DEV2/ca.crt")"
check_match "after the reload, verify-full against the old dev CA fails" 'certificate verify failed' \
	"$(probe demo --production -- PGSSLMODE=verify-full PGSSLROOTCERT="$DEV/ca.crt")"
check_eq "after the reload, client certificates still log in" demo-production "$(cert_probe "$CERT_PROD" demo-production)"
if kill -0 "$LONG_PID" 2>/dev/null; then
	ok "the session opened before the reload is still running after it"
else
	fail "the session opened before the reload is still running after it" "it ended: $(cat "$TMP/long.out")"
fi
wait "$LONG_PID"
check_eq "the session opened before the reload completes" "$(printf '\tdemo-production')" "$(cat "$TMP/long.out")"

printf 'not a certificate\n' >"$TMP/bad.crt"
TLS_CERT_FILE=$TMP/bad.crt
write_conf
reload || fail "reload with a bad tls_cert" "no reload line in the log"
check_match "a bad new tls_cert: the reload is rejected and the log says why" 'reload rejected.*tls_cert' \
	"$(grep -A3 -E 'reload rejected' "$PGLANE_LOG" | tr '\n' ' ')"
check_eq "a bad new tls_cert: the old certificate stays (verify-full against the new dev CA)" demo-production \
	"$(probe demo --production -- PGSSLMODE=verify-full PGSSLROOTCERT="$DEV2/ca.crt")"
TLS_CERT_FILE=

# ---------------------------------------------------------------- tls_mode = require

TLS_MODE=require
write_conf
reload || fail "reload with tls_mode = require" "no reload line in the log"
out=$(probe demo --production -- PGSSLMODE=disable)
check_match "tls_mode = require: a plaintext client gets 28000" '^ERROR 28000 ' "$out"
check_match "tls_mode = require: the message tells the client to use sslmode=require" 'sslmode=require' "$out"
check_eq "tls_mode = require: a TLS client lands in demo-production" demo-production "$(probe demo --production)"
check_eq "tls_mode = require: a client certificate lands in demo--feature/x" "demo--feature/x" \
	"$(cert_probe "$CERT_X" "demo--feature/x")"

# ---------------------------------------------------------------- the process itself

if kill -0 "$PGLANE_PID" 2>/dev/null; then
	ok "pglane is still running after all of the above"
else
	fail "pglane is still running after all of the above" "it exited: $(tail -n 5 "$PGLANE_LOG")"
fi
pglane_stop ""
san=$(grep -hE "ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:" "$PGLANE_LOG" 2>/dev/null | head -n 3)
check_eq "no sanitizer report in pglane's log" "" "$san"

if [ "$LIB_FAILED" -gt 0 ]; then
	note "pglane log (last 60 lines):"
	note "$(tail -n 60 "$PGLANE_LOG")"
fi
finish
