#!/bin/sh
# bench-target.sh — one target's raw speed: 4 KiB random and 1 MiB sequential reads and writes
# through the file: backend (the block chunk store of docs/format.md, driven through the
# storage manager's API by tests/bench/bench_target) against fio with io_uring and O_DIRECT on
# the same image file, with the same number of threads each doing one I/O at a time. Prints a
# table with the ratios. A benchmark, not a test: nothing passes or fails.
#
# Usage: tools/bench-target.sh [--dir DIR] [--size-mb N] [--seconds S] [--threads N]
#                              [--build BUILD_DIR]
#   --dir       where the image goes (default /var/tmp; a disk file system: O_DIRECT)
#   --size-mb   data set (default 1024); the image is 1.25 x that + 128 MiB
#   --seconds   per workload (default 10)
#   --threads   workers, each with one I/O in flight (default 4)
#   --build     the meson build directory holding tests/bench/bench_target (default build)
set -eu

dir=/var/tmp size_mb=1024 seconds=10 threads=4 build=build
while [ $# -gt 0 ]; do
	case "$1" in
	--dir) dir=$2; shift 2 ;;
	--size-mb) size_mb=$2; shift 2 ;;
	--seconds) seconds=$2; shift 2 ;;
	--threads) threads=$2; shift 2 ;;
	--build) build=$2; shift 2 ;;
	-h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "bench-target.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
	esac
done
cd "$(dirname "$0")/.."
bench=$build/tests/bench/bench_target
[ -x "$bench" ] || { echo "bench-target.sh: $bench not built (ninja -C $build)" >&2; exit 2; }
command -v fio >/dev/null || { echo "bench-target.sh: fio is not installed (apt-get install fio)" >&2; exit 2; }
PY=/usr/bin/python3

img=$dir/braidfs-bench-target.$$.img
trap 'rm -f "$img" "$img.json"' EXIT INT TERM
size=$((size_mb * 1048576))
img_bytes=$((size + size / 4 + 134217728))
rm -f "$img"
# allocated, not sparse: neither side pays for the file system's block allocation
fallocate -l "$img_bytes" "$img"

# braidfs: bench_target MODE -> "iops mibps lat_us"
ours() {
	"$bench" --threads "$threads" --seconds "$seconds" --size "$size" "file:$img" "$1" |
		awk '{for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
		      print v["iops"], v["mibps"], v["lat_us"] }'
}

# fio on the same file: RW BS -> "iops mibps lat_us"; sequential jobs stream through their
# own slice of the data set, as bench_target's threads do
theirs() {
	slice=$((size / threads))
	fio --name=bench --filename="$img" --direct=1 --ioengine=io_uring --iodepth=1 \
		--numjobs="$threads" --group_reporting --time_based --runtime="$seconds" \
		--rw="$1" --bs="$2" --size="$slice" --offset_increment="$slice" \
		--randrepeat=0 --norandommap --output-format=json >"$img.json" 2>/dev/null
	"$PY" - "$img.json" "$1" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["write" if "write" in sys.argv[2] else "read"]
print(f'{d["iops"]:.0f} {d["bw_bytes"] / 1048576:.1f} {d["clat_ns"]["mean"] / 1000:.1f}')
EOF
}

echo "bench-target: $size_mb MiB data set, $threads threads x 1 I/O, ${seconds}s per workload"
echo "image: $img ($(df -T "$dir" | awk 'NR == 2 { print $2 }') on $(df "$dir" | awk 'NR == 2 { print $1 }'))"
"$bench" --threads "$threads" --seconds 1 --size "$size" --format "file:$img" fill >/dev/null

workloads="seqwrite1m:write:1M seqread1m:read:1M randread4k:randread:4k randwrite4k:randwrite:4k"
# braidfs first (fio overwrites the image after), every workload on the filled target
for w in $workloads; do
	name=${w%%:*}
	eval "o_$name=\"\$(ours $name)\""
done
# fio: fill the data set first (a read of never-written extents costs no I/O), then the same
fio --name=fill --filename="$img" --direct=1 --ioengine=io_uring --iodepth=8 --rw=write \
	--bs=1M --size="$size" >/dev/null 2>&1
for w in $workloads; do
	name=${w%%:*}
	rest=${w#*:}
	eval "t_$name=\"\$(theirs ${rest%%:*} ${rest#*:})\""
done

printf '\n%-12s | %-31s | %-31s | %s\n' workload "braidfs file: target (sm API)" \
	"fio io_uring O_DIRECT, same file" "ratio"
printf '%-12s | %10s %9s %10s | %10s %9s %10s | %s\n' "" IOPS MiB/s "lat us" IOPS MiB/s \
	"lat us" "IOPS"
for w in $workloads; do
	name=${w%%:*}
	eval "set -- \$o_$name \$t_$name"
	printf '%-12s | %10s %9s %10s | %10s %9s %10s | %s\n' "$name" "$1" "$2" "$3" "$4" "$5" \
		"$6" "$(awk -v a="$1" -v b="$4" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }')"
done
echo
echo "ratio = braidfs / fio. Each braidfs write is a copy-on-write data write plus its log"
echo "record (group-committed with the other threads'); each read verifies a crc32c per 4 KiB."
