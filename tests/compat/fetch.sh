#!/usr/bin/env bash
# fetch.sh: fetches Debian's source package of PostgreSQL 15 and builds the pieces of its test suites that
# tests/compat/run.sh needs, without building the server and without touching the machine's apt sources.
#
#   tests/compat/fetch.sh    fetch (once), unpack (once), build (once); then prints two lines on stdout,
#                            TREE=<the unpacked source tree> and BUILD=<the directory of what was built>
#                            (progress goes to stderr)
#
# Cache: ${PGLANE_COMPAT_CACHE:-/var/cache/pglane-compat}.  Everything lives there and is reused by the next
# run; delete the directory to start over.  Nothing of PostgreSQL's source enters the repository.
#
#   CACHE/apt/          a private apt configuration: sources.list (deb-src lines built from the machine's own
#                       mirrors), its own lists and caches.  apt-get runs with Dir::Etc::SourceList,
#                       Dir::Etc::SourceParts, Dir::State::Lists and Dir::Cache pointing here, so
#                       /etc/apt and /var/lib/apt/lists are only read, never written.
#   CACHE/src/          the downloaded .dsc/.orig/.debian files and the unpacked tree postgresql-15-X.Y/
#   CACHE/build/        what is built: pg_regress, regress.so, refint.so, autoinc.so, libpq_pipeline
#
# The version fetched is the installed server's (dpkg-query -W postgresql-15) when the mirror still has it,
# else the newest 15.x the mirror has.
#
# What is built, and how (none of it configures or builds the server):
#   regress.so              src/test/regress/regress.c, through a two-line PGXS makefile (MODULES = regress)
#   refint.so, autoinc.so   contrib/spi's own makefile with USE_PGXS=1 (it defines REFINT_VERBOSE, which the
#                           expected output relies on)
#   libpq_pipeline          src/test/modules/libpq_pipeline's own makefile with USE_PGXS=1
#   pg_regress              pg_regress.c + pg_regress_main.c compiled directly against the server headers and
#                           the static libpgcommon/libpgport of postgresql-server-dev-15 and libpq, with the
#                           pg_config_paths.h that configure would write made from pg_config's answers
# pg_config is postgresql-server-dev-15's (PG_CONFIG to override).
set -euo pipefail

if [ "$(id -u)" -eq 0 ]; then
	CACHE=${PGLANE_COMPAT_CACHE:-/var/cache/pglane-compat}
else
	CACHE=${PGLANE_COMPAT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pglane-compat}
fi
# Not /usr/bin/pg_config: that one is libpq-dev's and knows no PGXS.
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PKG=postgresql-15
APT=$CACHE/apt
SRC=$CACHE/src
OUT=$CACHE/build

log() { echo "fetch.sh: $*" >&2; }
die() {
	log "$*"
	exit 1
}

if ! { [ -x "$PG_CONFIG" ] && [ -f "$("$PG_CONFIG" --pgxs 2>/dev/null)" ] &&
	[ -f "$("$PG_CONFIG" --includedir-server)/postgres.h" ]; }; then
	die "$PG_CONFIG with PGXS and the server headers is missing: apt-get install postgresql-server-dev-15"
fi
case $("$PG_CONFIG" --version) in
"PostgreSQL 15."*) ;;
*) die "$PG_CONFIG is not PostgreSQL 15's ($("$PG_CONFIG" --version))" ;;
esac
for tool in apt-get dpkg-source gcc make; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (apt-get install build-essential dpkg-dev)"
done
mkdir -p "$APT" "$SRC" "$OUT"

# ---------------------------------------------------------------- the private apt configuration

CODENAME=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
CODENAME=${CODENAME:-bookworm}

# wanted_suite SUITE: true for the suites whose sources we want (the release, -updates, -security).
wanted_suite() {
	case $1 in
	"$CODENAME" | "$CODENAME-updates" | "$CODENAME-security" | "$CODENAME/updates") return 0 ;;
	esac
	return 1
}

# emit URI SUITE SIGNED_BY COMPONENTS...: one deb-src line (signed-by only when it is a file).
emit() {
	local uri=$1 suite=$2 signed=$3 opts=''
	shift 3
	wanted_suite "$suite" || return 0
	[ -n "$signed" ] && [ -f "$signed" ] && opts="[signed-by=$signed] "
	printf 'deb-src %s%s %s %s\n' "$opts" "${uri%/}" "$suite" "$*"
}

# one_line FILE: the one-line format (/etc/apt/sources.list, *.list): "deb [opts] URI SUITE COMPONENTS...".
one_line() {
	local line type opts uri suite signed o
	while IFS= read -r line || [ -n "$line" ]; do
		line=${line%%#*}
		read -r type line <<<"$line" || true
		case $type in deb | deb-src) ;; *) continue ;; esac
		opts=''
		if [ "${line#\[}" != "$line" ]; then
			opts=${line%%]*}
			opts=${opts#\[}
			line=${line#*]}
		fi
		signed=''
		for o in $opts; do
			case $o in signed-by=*) signed=${o#signed-by=} ;; esac
		done
		# shellcheck disable=SC2086 # word splitting of "URI SUITE COMPONENTS..." is wanted
		set -- $line
		[ $# -ge 3 ] || continue
		uri=$1 suite=$2
		shift 2
		emit "$uri" "$suite" "$signed" "$@"
	done <"$1"
}

# deb822 FILE: the deb822 format (*.sources), paragraphs of Types/URIs/Suites/Components/Signed-By/Enabled;
# continuation lines (an embedded key under Signed-By) are skipped, so such a paragraph gets no signed-by.
deb822() {
	awk '
	function flush(   nu, ns, i, j, u, s) {
		if (types ~ /(^| )deb( |$)|deb-src/ && tolower(enabled) != "no") {
			nu = split(uris, u, " "); ns = split(suites, s, " ")
			for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++)
				printf "%s\t%s\t%s\t%s\n", u[i], s[j], signed, comps
		}
		types = uris = suites = comps = signed = ""; enabled = "yes"
	}
	BEGIN { enabled = "yes" }
	/^[ \t]*#/ { next }
	/^[ \t]*$/ { flush(); next }
	/^[ \t]/ { next }
	{
		key = tolower($0); sub(/:.*/, "", key)
		val = $0; sub(/^[^:]*:[ \t]*/, "", val); gsub(/[ \t]+/, " ", val); sub(/ $/, "", val)
		if (key == "types") types = val
		else if (key == "uris") uris = val
		else if (key == "suites") suites = val
		else if (key == "components") comps = val
		else if (key == "signed-by") signed = val
		else if (key == "enabled") enabled = val
	}
	END { flush() }' "$1" | while IFS=$'\t' read -r uri suite signed comps; do
		# shellcheck disable=SC2086
		emit "$uri" "$suite" "$signed" $comps
	done
}

make_sources() {
	local f
	{
		[ -f /etc/apt/sources.list ] && one_line /etc/apt/sources.list
		for f in /etc/apt/sources.list.d/*.list; do
			[ -f "$f" ] && one_line "$f"
		done
		for f in /etc/apt/sources.list.d/*.sources; do
			[ -f "$f" ] && deb822 "$f"
		done
	} | awk '!seen[$0]++'
}

LIST=$APT/sources.list
lines=$(make_sources)
if [ -z "$lines" ]; then
	log "no $CODENAME mirror found in /etc/apt; using deb.debian.org"
	lines=$(printf 'deb-src http://deb.debian.org/debian %s main\ndeb-src http://deb.debian.org/debian %s-updates main\ndeb-src http://deb.debian.org/debian-security %s-security main\n' \
		"$CODENAME" "$CODENAME" "$CODENAME")
fi
printf '# written by tests/compat/fetch.sh from /etc/apt\n%s\n' "$lines" >"$LIST.new"

mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
APT_OPTS=(
	-o "Dir::Etc::SourceList=$LIST"
	-o "Dir::Etc::SourceParts=/dev/null"
	-o "Dir::State::Lists=$APT/lists"
	-o "Dir::Cache=$APT/cache"
	-o "Dir::Cache::pkgcache=$APT/cache/pkgcache.bin"
	-o "Dir::Cache::srcpkgcache=$APT/cache/srcpkgcache.bin"
	-o "Acquire::Languages=none"
)

# As root, apt-get downloads as the unprivileged _apt user, who cannot write the cache: keep root.
[ "$(id -u)" -eq 0 ] && APT_OPTS+=(-o "APT::Sandbox::User=root")

INSTALLED=$(dpkg-query -W -f='${Version}' "$PKG" 2>/dev/null || true)

# unpacked_dir VERSION: where apt-get source unpacks VERSION (postgresql-15-UPSTREAM).
unpacked_dir() {
	local v=${1#*:}
	echo "$SRC/$PKG-${v%-*}"
}

TREE=
VERSION=
# The cache answers without the network when an earlier run already chose and unpacked a version for the
# installed server ($SRC/.version holds "CHOSEN INSTALLED-AT-THE-TIME").
prev='' prev_for=''
[ -f "$SRC/.version" ] && read -r prev prev_for <"$SRC/.version"
if [ -n "$prev" ] && [ "$prev_for" = "$INSTALLED" ] && [ -f "$(unpacked_dir "$prev")/.pglane-unpacked" ] &&
	[ "$(cat "$(unpacked_dir "$prev")/.pglane-unpacked")" = "$prev" ] && cmp -s "$LIST" "$LIST.new"; then
	TREE=$(unpacked_dir "$prev")
	VERSION=$prev
fi

if [ -z "$TREE" ]; then
	mv "$LIST.new" "$LIST"
	log "apt-get update (private configuration in $APT):"
	sed 's/^/fetch.sh:   /' "$LIST" >&2
	if ! apt-get "${APT_OPTS[@]}" -q update >"$APT/update.log" 2>&1; then
		cat "$APT/update.log" >&2
		# The mirror is unreachable: a tree fetched by an earlier run still serves.
		if [ -n "$prev" ] && [ -f "$(unpacked_dir "$prev")/.pglane-unpacked" ]; then
			log "apt-get update failed; using $PKG $prev fetched earlier"
			VERSION=$prev
			TREE=$(unpacked_dir "$prev")
		else
			die "apt-get update failed"
		fi
	fi
fi
if [ -z "$TREE" ]; then
	versions=$(apt-cache "${APT_OPTS[@]}" showsrc "$PKG" 2>/dev/null |
		awk -v p="$PKG" '/^Package: / { ok = ($2 == p) } ok && /^Version: / { print $2 }' | sort -u)
	[ -n "$versions" ] || die "the mirror has no source package $PKG (see $APT/update.log)"
	# Candidates in order of preference: the installed version, then every other 15.x, newest first.  A
	# mirror may list a version it cannot serve (a security pool that is not mirrored answers 404), so each
	# is tried in turn.
	candidates=$(for v in $versions; do
		case ${v#*:} in 15.*) echo "$v" ;; esac
	done | sort -r -V)
	[ -n "$candidates" ] || die "the mirror has no 15.x source of $PKG (it has: $(printf '%s\n' "$versions" | tr '\n' ' '))"
	if [ -n "$INSTALLED" ] && printf '%s\n' "$candidates" | grep -qxF -- "$INSTALLED"; then
		candidates=$(printf '%s\n' "$INSTALLED"; printf '%s\n' "$candidates" | grep -vxF -- "$INSTALLED")
	else
		log "the installed $PKG ${INSTALLED:-(none)} is not on the mirror; it has: $(printf '%s\n' "$candidates" | tr '\n' ' ')"
	fi
	VERSION=
	for v in $candidates; do
		TREE=$(unpacked_dir "$v")
		if [ -f "$TREE/.pglane-unpacked" ] && [ "$(cat "$TREE/.pglane-unpacked")" = "$v" ]; then
			log "$PKG $v already unpacked in $TREE"
			VERSION=$v
			break
		fi
		rm -rf "$TREE"
		log "apt-get source $PKG=$v into $SRC"
		if (cd "$SRC" && apt-get "${APT_OPTS[@]}" -q source --only-source "$PKG=$v") >"$APT/source.log" 2>&1 &&
			[ -f "$TREE/src/test/regress/pg_regress.c" ]; then
			echo "$v" >"$TREE/.pglane-unpacked"
			VERSION=$v
			break
		fi
		log "apt-get source $PKG=$v failed:"
		grep -E '^(E|Err):' "$APT/source.log" | head -n 3 | sed 's/^/fetch.sh:   /' >&2
		rm -rf "$TREE"
	done
	[ -n "$VERSION" ] || die "no 15.x source of $PKG could be fetched (tried: $(printf '%s\n' "$candidates" | tr '\n' ' '))"
	[ "$VERSION" = "$INSTALLED" ] || log "using $PKG $VERSION's tests against the installed server $INSTALLED"
	echo "$VERSION ${INSTALLED:--}" >"$SRC/.version"
else
	rm -f "$LIST.new"
	log "$PKG $VERSION already unpacked in $TREE (cached)"
fi

# ---------------------------------------------------------------- build

B=$OUT/$VERSION
STAMP=$B/.pglane-built
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$("$PG_CONFIG" --version) $VERSION" ]; then
	log "already built in $B"
else
	rm -rf "$B"
	mkdir -p "$B/regress" "$B/pg_regress"
	JOBS=$(nproc 2>/dev/null || echo 2)
	MAKE=(make -s -j"$JOBS" PG_CONFIG="$PG_CONFIG" USE_PGXS=1)
	# A client program needs none of the server's link libraries that PGXS's LIBS lists (selinux, pam,
	# gssapi, lz4, zstd, ... whose -dev packages are not installed): libpgcommon/libpgport, libpq and what
	# libpgcommon uses (OpenSSL's hashes, zlib).
	CLIENT_LIBS="-lpgcommon -lpgport -lssl -lcrypto -lz -lm"

	log "building regress.so (PGXS)"
	cp "$TREE/src/test/regress/regress.c" "$B/regress/"
	# shellcheck disable=SC2016 # make's $(...), not the shell's
	printf 'MODULES = regress\nPGXS := $(shell $(PG_CONFIG) --pgxs)\ninclude $(PGXS)\n' >"$B/regress/Makefile"
	"${MAKE[@]}" -C "$B/regress" regress.so >&2

	log "building refint.so and autoinc.so (contrib/spi, PGXS)"
	"${MAKE[@]}" -C "$TREE/contrib/spi" clean >/dev/null 2>&1 || true
	"${MAKE[@]}" -C "$TREE/contrib/spi" refint.so autoinc.so >&2
	cp "$TREE/contrib/spi/refint.so" "$TREE/contrib/spi/autoinc.so" "$B/regress/"

	log "building libpq_pipeline (PGXS)"
	"${MAKE[@]}" -C "$TREE/src/test/modules/libpq_pipeline" clean >/dev/null 2>&1 || true
	"${MAKE[@]}" -C "$TREE/src/test/modules/libpq_pipeline" LIBS="$CLIENT_LIBS" LDAP_LIBS_FE= libpq_pipeline >&2
	cp "$TREE/src/test/modules/libpq_pipeline/libpq_pipeline" "$B/"

	log "building pg_regress"
	P=$B/pg_regress
	# What configure and src/port/Makefile would have written: pg_config_paths.h, from pg_config's answers.
	{
		for pair in PGBINDIR:bindir PGSHAREDIR:sharedir SYSCONFDIR:sysconfdir INCLUDEDIR:includedir \
			PKGINCLUDEDIR:pkgincludedir INCLUDEDIRSERVER:includedir-server LIBDIR:libdir PKGLIBDIR:pkglibdir \
			LOCALEDIR:localedir DOCDIR:docdir HTMLDIR:htmldir MANDIR:mandir; do
			printf '#define %s "%s"\n' "${pair%%:*}" "$("$PG_CONFIG" --"${pair#*:}")"
		done
	} >"$P/pg_config_paths.h"
	PKGLIB=$("$PG_CONFIG" --pkglibdir)
	LIBDIR=$("$PG_CONFIG" --libdir)
	HOST_TUPLE=$(gcc -dumpmachine)
	# shellcheck disable=SC2086 # CLIENT_LIBS is a list of flags
	gcc -O2 -I"$P" -I"$TREE/src/test/regress" -I"$("$PG_CONFIG" --includedir)" \
		-I"$("$PG_CONFIG" --includedir-server)" \
		-DHOST_TUPLE="\"$HOST_TUPLE\"" -DSHELLPROG='"/bin/sh"' -DDLSUFFIX='".so"' -D_GNU_SOURCE \
		-o "$P/pg_regress" "$TREE/src/test/regress/pg_regress.c" "$TREE/src/test/regress/pg_regress_main.c" \
		-L"$PKGLIB" -L"$LIBDIR" -lpq $CLIENT_LIBS >&2
	cp "$P/pg_regress" "$B/pg_regress-bin"
	mv "$B/pg_regress-bin" "$B/pg_regress/pg_regress"

	"$PG_CONFIG" --version | tr -d '\n' >"$STAMP"
	echo " $VERSION" >>"$STAMP"
	log "built in $B"
fi
# Both the source tree and the build directory are read by the server's OS user (dlpath, input files).
chmod -R a+rX "$TREE" "$B" 2>/dev/null || true
chmod a+x "$CACHE" "$SRC" "$OUT" 2>/dev/null || true

echo "TREE=$TREE"
echo "BUILD=$B"
