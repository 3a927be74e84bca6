#!/usr/bin/env bash
# deps.sh: installs what pglane needs to build, test and run its demo on Debian 12, and nothing else.
#
# Idempotent: it asks dpkg-query (and `command -v` for node/npm) what is already there, and only when
# something is missing runs `apt-get update` once and one `apt-get install`.  Quiet when all is present.
# node and npm are installed from Debian only when the commands are missing: a nodesource nodejs already
# bundles npm, and Debian's npm package would conflict with it.
set -u

PACKAGES=(
	build-essential pkg-config libevent-dev libssl-dev libpq-dev libinih-dev libcmocka-dev
	postgresql-15 postgresql-client-15 postgresql-server-dev-15 openssl pgbouncer ca-certificates valgrind
	clang-14 libclang-rt-14-dev python3
)

missing=()
for p in "${PACKAGES[@]}"; do
	status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) || status=
	if [ "$status" != "installed" ]; then
		missing+=("$p")
	fi
done
if ! command -v node >/dev/null 2>&1; then
	missing+=(nodejs)
fi
if ! command -v npm >/dev/null 2>&1; then
	missing+=(npm)
fi

if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi

echo "deps.sh: missing: ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
	echo "deps.sh: not root, cannot install them; run as root, or: sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
	exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "deps.sh: apt-get not found; this installer is for Debian 12" >&2
	exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if ! apt-get update -qq; then
	echo "deps.sh: apt-get update failed" >&2
	exit 1
fi
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
	echo "deps.sh: apt-get install failed for: ${missing[*]}" >&2
	exit 1
fi
echo "deps.sh: installed: ${missing[*]}"
