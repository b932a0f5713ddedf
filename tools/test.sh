#!/bin/bash
# test.sh — the whole test suite, as CI runs it: install what is needed, build twice (plain,
# and with AddressSanitizer + UndefinedBehaviorSanitizer), run the C unit tests of every
# module in both builds, run the integration tests that mount for real (pytest) against the
# plain build and the POSIX part of them against the sanitizer build, then print one line
# "N passed, N failed".
# Environment: BRAIDFS_CRASH_ROUNDS (crash-test rounds, default 20), BRAIDFS_QUICK=1 (skip
# the tests marked slow), PYTEST_ARGS (extra pytest arguments), BRAIDFS_CSI_KILL_ROUNDS (kill -9
# rounds of the CSI plugin under a writer, default 3), BRAIDFS_DIST_* (sizes and durations of the
# failure suite across nodes, tests/integration/test_dist_failures.py: small defaults here, a
# soak when raised; see tests/integration/README.md).
set -u
cd "$(dirname "$0")/.."
top=$PWD
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root (tests mount FUSE file systems)" >&2; exit 1; }
sh tools/deps.sh test || { echo "test.sh: installing packages failed"; echo "0 passed, 1 failed"; exit 1; }
export CI_WERROR=${CI:+-Dwerror=true}
out=$top/build-test
mkdir -p "$out"
rm -f "$out"/*.xml "$out"/asan.*

build() { # dir extra-args...
	local dir=$1; shift
	if [ ! -d "$dir" ]; then meson setup "$dir" -Dwerror=true "$@" >"$out/setup-$(basename "$dir").log" 2>&1 || { cat "$out/setup-$(basename "$dir").log"; return 1; }
	else meson configure "$dir" -Dcsi=auto >/dev/null 2>&1; fi # a dir made before csi/ built
	ninja -C "$dir" >"$out/build-$(basename "$dir").log" 2>&1 || { tail -50 "$out/build-$(basename "$dir").log"; return 1; }
}
# The failure suite across nodes (tests/integration/test_dist_failures.py) with ENV=VAL... set,
# its results into $out/XML: bounded as a whole (15 min with its teardown; the defaults take a
# few minutes), a hang is a failure, not a stuck CI.
dist_suite() { # XML [ENV=VAL...]
	local xml=$out/$1; shift
	env "$@" BRAIDFS_BIN="$top/build/tools/braidfs" timeout -k 30 900 \
		/usr/bin/python3 -m pytest "${pyargs[@]}" --junitxml="$xml" ${PYTEST_ARGS:-} \
		tests/integration/test_dist_failures.py ||
		[ -s "$xml" ] || echo '<testsuite tests="1" failures="1"/>' >"$xml"
}
fail_build=0
build build || fail_build=1
build build-asan -Db_sanitize=address,undefined -Db_lundef=false || fail_build=1
# The CSI plugin is a meson feature; test.sh installed its packages, so it must be built.
for d in build build-asan; do
	[ -x "$d/csi/braidfs-csi" ] || { echo "test.sh: $d/csi/braidfs-csi was not built"; fail_build=1; }
done

export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export ASAN_OPTIONS=detect_leaks=1
if [ $fail_build = 0 ]; then
	echo "== unit tests (plain build)"
	meson test -C build --suite unit --print-errorlogs --num-processes 2 | tail -15
	echo "== unit tests (ASan+UBSan build)"
	meson test -C build-asan --suite unit --print-errorlogs --num-processes 2 | tail -15

	pyargs=(-q -p no:cacheprovider -o cache_dir=/tmp/braidfs-pytest-cache)
	[ "${BRAIDFS_QUICK:-0}" = 1 ] && pyargs+=(-m "not slow")
	echo "== integration tests (plain build)"
	BRAIDFS_BIN=$top/build/tools/braidfs /usr/bin/python3 -m pytest "${pyargs[@]}" \
		--ignore=tests/integration/test_dist_failures.py \
		--junitxml="$out/integration.xml" ${PYTEST_ARGS:-} tests/integration
	if [ "${BRAIDFS_QUICK:-0}" != 1 ]; then
		# Nodes in network namespaces under failures.
		echo "== failures across nodes (plain build)"
		dist_suite dist.xml
		# The same failures with local reads on: serves with local_reads, mounts with
		# -o node= reading their own node's replica (DS-6).
		echo "== failures across nodes, local reads (plain build)"
		dist_suite dist-local.xml BRAIDFS_DIST_LOCAL_READS=1
	fi
	echo "== CSI plugin tests (plain build)"
	BRAIDFS_BIN=$top/build/tools/braidfs BRAIDFS_CSI_BIN=$top/build/csi/braidfs-csi \
		/usr/bin/python3 -m pytest "${pyargs[@]}" --junitxml="$out/csi.xml" ${PYTEST_ARGS:-} \
		tests/csi
	echo "== integration tests: POSIX, braidfs-verify, crash, locks, CLI, quota, replicas, scrub, fsck (ASan+UBSan build)"
	# Sanitizer reports of the mount daemons go to files; any report is a failure. The CLI
	# tests cover foreground mounts, status and umount paths the others do not reach; the
	# replica, scrub and fsck tests the repair paths (fsck --repair's recovery among them).
	ASAN_OPTIONS=detect_leaks=1:log_path=$out/asan UBSAN_OPTIONS=print_stacktrace=1:log_path=$out/asan \
	BRAIDFS_BIN=$top/build-asan/tools/braidfs /usr/bin/python3 -m pytest "${pyargs[@]}" -m "not slow" \
		--junitxml="$out/integration-asan.xml" ${PYTEST_ARGS:-} tests/integration/test_posix.py \
		tests/integration/test_verify_load.py tests/integration/test_crash.py \
		tests/integration/test_locks.py tests/integration/test_cli.py \
		tests/integration/test_quota.py tests/integration/test_replicas.py \
		tests/integration/test_scrub.py tests/integration/test_dist_fsck.py \
		tests/integration/test_nonroot.py
	echo "== CSI plugin tests (ASan+UBSan build)"
	ASAN_OPTIONS=detect_leaks=1:log_path=$out/asan UBSAN_OPTIONS=print_stacktrace=1:log_path=$out/asan \
	BRAIDFS_BIN=$top/build-asan/tools/braidfs BRAIDFS_CSI_BIN=$top/build-asan/csi/braidfs-csi \
		/usr/bin/python3 -m pytest "${pyargs[@]}" --junitxml="$out/csi-asan.xml" \
		${PYTEST_ARGS:-} tests/csi
fi

/usr/bin/python3 - "$top" "$out" "$fail_build" <<'PY'
import glob, json, os, sys
import xml.etree.ElementTree as ET
top, out, fail_build = sys.argv[1], sys.argv[2], int(sys.argv[3])
passed = failed = skipped = 0
for d in ("build", "build-asan"):
    log = os.path.join(top, d, "meson-logs", "testlog.json")
    if not os.path.exists(log):
        continue
    for line in open(log):
        t = json.loads(line)
        if t.get("result") == "OK": passed += 1
        elif t.get("result") == "SKIP": skipped += 1
        else:
            failed += 1; print(f"FAILED unit {d}: {t.get('name')} ({t.get('result')})")
for x in sorted(glob.glob(os.path.join(out, "*.xml"))):
    for ts in ET.parse(x).getroot().iter("testsuite"):
        n, f, e, s = (int(ts.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
        passed += n - f - e - s; failed += f + e; skipped += s
reports = [p for p in glob.glob(os.path.join(out, "asan.*")) if os.path.getsize(p) > 0]
for p in reports:
    failed += 1; print(f"FAILED sanitizer report {p}:"); print(open(p).read()[:3000])
failed += fail_build
print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
sys.exit(1 if failed else 0)
PY
