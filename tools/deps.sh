#!/bin/sh
# deps.sh — install every Debian 12 package braidfs needs to build, run and test.
# Usage: tools/deps.sh [build|test]   (test adds what the test suite and benchmarks use)
set -eu
what=${1:-build}
build_pkgs="meson ninja-build pkg-config gcc libfuse3-dev fuse3 libsqlite3-dev libyaml-dev
 libisal-dev liburing-dev libssl-dev libpq-dev libiscsi-dev libnbd-dev libblkid-dev libgrpc-dev
 libprotobuf-c-dev protobuf-c-compiler"
test_pkgs="libcmocka-dev clang libclang-rt-14-dev python3 python3-pytest python3-pytest-timeout
 fio python3-matplotlib attr acl util-linux fdisk e2fsprogs procps psmisc postgresql
 postgresql-contrib mariadb-server python3-psycopg2 python3-pymysql tgt nbdkit python3-grpcio
 python3-grpc-tools python3-yaml"
pkgs=$build_pkgs
[ "$what" = test ] && pkgs="$build_pkgs $test_pkgs"
missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "braidfs: installing:$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
