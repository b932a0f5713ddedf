#!/bin/sh
# postgres.sh — a private, throw-away PostgreSQL cluster for the tests.
#
# Usage:
#   tests/services/postgres.sh start DIR        initdb a cluster in DIR, start it on 127.0.0.1
#                                                with a free port, create database braidfs_test;
#                                                prints BRAIDFS_TEST_PG_URL=... (also in DIR/url)
#   tests/services/postgres.sh stop DIR         stop it and delete DIR
#   tests/services/postgres.sh run DIR CMD...   start, run CMD with BRAIDFS_TEST_PG_URL exported,
#                                                stop, delete; exits with CMD's status
#   (DIR may be '-' for run: a new directory under ${TMPDIR:-/tmp})
#
# The server runs as user postgres when started by root (PostgreSQL refuses to run as root),
# as the caller otherwise. It listens on 127.0.0.1 only, with trust authentication: a test
# cluster, never a production one. fsync stays on (the engine's durability claims are
# measured against a real one). Exit 77 (skip) when PostgreSQL is not installed.
#
# Env: BRAIDFS_PGBIN (server binaries; default: the newest /usr/lib/postgresql/*/bin).
#      BRAIDFS_PG_LISTEN=ADDR/PREFIX: listen on ADDR too (besides 127.0.0.1) and trust
#      connections from ADDR's network: the address of a test bridge that network namespaces
#      reach (tests/integration/netns.py). The printed URL still names 127.0.0.1.
set -u

die() {
	echo "postgres.sh: $*" >&2
	exit 1
}

pgbin() {
	if [ -n "${BRAIDFS_PGBIN:-}" ]; then
		echo "$BRAIDFS_PGBIN"
		return
	fi
	# shellcheck disable=SC2012
	ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}

BIN=$(pgbin)
if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ] || [ ! -x "$BIN/pg_ctl" ]; then
	echo "postgres.sh: PostgreSQL server binaries not found (apt-get install postgresql): skipped" >&2
	exit 77
fi

# Run a command as the cluster's owner.
as_owner() {
	if [ "$(id -u)" = 0 ]; then
		setpriv --reuid=postgres --regid=postgres --init-groups -- env HOME=/tmp LC_ALL=C.UTF-8 "$@"
	else
		env LC_ALL=C.UTF-8 "$@"
	fi
}

free_port() {
	# A random port in 20000..59999 that nothing listens on; start retries on a race.
	while :; do
		p=$(( ($(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 40000) + 20000 ))
		if ! ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then
			echo "$p"
			return
		fi
	done
}

start() {
	dir=$1
	[ -e "$dir/.braidfs-pg" ] && die "$dir already holds a test cluster (stop it first)"
	mkdir -p "$dir" || die "cannot create $dir"
	[ -z "$(ls -A "$dir")" ] || die "$dir is not empty"
	touch "$dir/.braidfs-pg"
	chmod 0755 "$dir"
	mkdir "$dir/data" "$dir/run" || die "cannot create $dir/data"
	if [ "$(id -u)" = 0 ]; then
		id postgres >/dev/null 2>&1 || die "user postgres missing (apt-get install postgresql)"
		chown postgres:postgres "$dir/data" "$dir/run"
	fi
	chmod 0700 "$dir/data"
	as_owner "$BIN/initdb" -D "$dir/data" --auth=trust -U postgres -E UTF8 --no-instructions \
		>"$dir/initdb.log" 2>&1 || die "initdb failed: $(tail -3 "$dir/initdb.log")"
	listen=127.0.0.1
	if [ -n "${BRAIDFS_PG_LISTEN:-}" ]; then
		case "$BRAIDFS_PG_LISTEN" in
		*/*) ;;
		*) die "BRAIDFS_PG_LISTEN=$BRAIDFS_PG_LISTEN: want ADDR/PREFIX" ;;
		esac
		listen="127.0.0.1,${BRAIDFS_PG_LISTEN%/*}"
		echo "host all all $BRAIDFS_PG_LISTEN trust" >>"$dir/data/pg_hba.conf"
	fi
	tries=0
	while :; do
		port=$(free_port)
		if as_owner "$BIN/pg_ctl" -D "$dir/data" -l "$dir/run/server.log" -w -t 60 \
			-o "-c listen_addresses=$listen -p $port -k $dir/run -c max_connections=100 \
			-c shared_buffers=32MB -c fsync=on -c synchronous_commit=on" start \
			>"$dir/pg_ctl.log" 2>&1; then
			break
		fi
		tries=$((tries + 1))
		[ $tries -lt 5 ] || die "server did not start: $(tail -3 "$dir/run/server.log")"
	done
	echo "$port" >"$dir/port"
	as_owner "$BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres braidfs_test \
		>"$dir/createdb.log" 2>&1 || die "createdb failed: $(cat "$dir/createdb.log")"
	url="postgres://postgres@127.0.0.1:$port/braidfs_test"
	echo "$url" >"$dir/url"
	echo "BRAIDFS_TEST_PG_URL=$url"
}

stop() {
	dir=$1
	[ -e "$dir/.braidfs-pg" ] || die "$dir holds no test cluster started by postgres.sh"
	if [ -e "$dir/data/postmaster.pid" ]; then
		as_owner "$BIN/pg_ctl" -D "$dir/data" -m immediate -w -t 60 stop >/dev/null 2>&1 ||
			die "cannot stop the server in $dir (see $dir/run/server.log)"
	fi
	rm -rf "$dir"
}

[ $# -ge 2 ] || die "usage: postgres.sh start|stop DIR | run DIR CMD..."
verb=$1
dir=$2
shift 2
case "$verb" in
start)
	start "$dir"
	;;
stop)
	stop "$dir"
	;;
run)
	[ $# -ge 1 ] || die "run needs a command"
	if [ "$dir" = - ]; then
		dir=$(mktemp -d "${TMPDIR:-/tmp}/braidfs-pg.XXXXXX") || die "mktemp failed"
		rmdir "$dir"
	fi
	out=$(start "$dir") || { [ -e "$dir/.braidfs-pg" ] && stop "$dir"; exit 1; }
	BRAIDFS_TEST_PG_URL=${out#BRAIDFS_TEST_PG_URL=}
	export BRAIDFS_TEST_PG_URL
	"$@"
	rc=$?
	stop "$dir"
	exit $rc
	;;
*)
	die "unknown verb '$verb' (start, stop or run)"
	;;
esac
