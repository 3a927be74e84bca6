#!/usr/bin/env bash
# run-demo.sh (what `make run` runs): a throwaway PostgreSQL with TLS and SCRAM on a free port, the demo
# app's timeline databases, a config written from examples/pglane.ini.in, and ./pglane in the foreground on
# 127.0.0.1:6432 (PGLANE_DEMO_PORT to change it).  Ctrl-C stops pglane and PostgreSQL and removes
# everything.  It reuses the integration harness (tests/integration/lib.sh) for PostgreSQL and the CA, so
# the demo runs the same set-up the tests do: initdb as an unprivileged user, a test CA made at start-up.
set -u
# shellcheck source=SCRIPTDIR/../tests/integration/lib.sh disable=SC1091
. "$(dirname "$0")/../tests/integration/lib.sh"
# shellcheck disable=SC2034 # read by lib_cleanup: this is not a test script (no RESULT line, no notice on Ctrl-C)
LIB_FINISHED=1

DEMO_PORT=${PGLANE_DEMO_PORT:-6432}
die() {
	echo "run-demo: $*" >&2
	exit 1
}

[ -x "$PGLANE" ] || die "$PGLANE is not built: run make pglane (or make run)"
if port_in_use "$DEMO_PORT"; then
	die "port $DEMO_PORT is in use; stop what holds it or set PGLANE_DEMO_PORT"
fi

echo "run-demo: starting a throwaway PostgreSQL in $TMP ..."
pg_start demo || die "PostgreSQL did not start"
for db in demo-production demo-preview demo--feature/login; do
	pg_createdb demo "$db" >/dev/null || die "cannot create database $db"
	pg_psql demo "CREATE TABLE greeting AS SELECT 'hello from ' || current_database() AS text" "$db" >/dev/null ||
		die "cannot fill database $db"
done

CONF=$TMP/pglane.ini
sed -e "s|@LISTEN@|127.0.0.1:$DEMO_PORT|" \
	-e "s|@PG_HOST@|localhost|" \
	-e "s|@PG_PORT@|$PG_DEMO_PORT|" \
	-e "s|@PG_PASSWORD@|$PG_DEMO_PASSWORD|" \
	-e "s|@CA_FILE@|$PG_DEMO_CA|" \
	-e "s|@SECRET@|$(openssl rand -hex 24)|" \
	"$REPO/examples/pglane.ini.in" >"$CONF" || die "cannot write $CONF"
chmod 600 "$CONF"
"$PGLANE" check -c "$CONF" || die "the generated config does not pass pglane check"

PGLANE_REL=$PGLANE
[ "$PGLANE" = "$REPO/pglane" ] && PGLANE_REL=./pglane
cat <<EOF

PostgreSQL 15 on 127.0.0.1:$PG_DEMO_PORT (TLS, superuser postgres), databases demo-production,
demo-preview and demo--feature/login, each with a table "greeting".
pglane listens on 127.0.0.1:$DEMO_PORT with the config $CONF

In another terminal, from $REPO:

  eval "\$($PGLANE_REL env -c $CONF demo --production)" && psql
  eval "\$($PGLANE_REL env -c $CONF demo --branch feature/login)" && psql

then: SELECT * FROM greeting;
or run a program with a timeline's variables:

  $PGLANE_REL exec -c $CONF demo --branch feature/login -- psql -c 'SELECT * FROM greeting'

Ctrl-C stops pglane and PostgreSQL and removes $TMP.

EOF

"$PGLANE" -c "$CONF"
status=$?
echo "run-demo: pglane exited ($status); stopping PostgreSQL"
exit "$status"
