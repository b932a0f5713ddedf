#!/bin/sh
# quickstart.sh — install what braidfs needs, build and install it, then format (once) and
# mount an embedded volume: SQLite metadata and two directory targets under
# /var/lib/braidfs, 2 replicas, strong consistency, mounted at /mnt/braidfs.
# Running it again is harmless: it reuses the volume and leaves a live mount alone.
# Environment: BRAIDFS_HOME (default /var/lib/braidfs), BRAIDFS_MNT (default /mnt/braidfs).
set -eu
cd "$(dirname "$0")/.."
home=${BRAIDFS_HOME:-/var/lib/braidfs}
mnt=${BRAIDFS_MNT:-/mnt/braidfs}
[ "$(id -u)" = 0 ] || { echo "quickstart: run as root" >&2; exit 1; }
sh tools/deps.sh build
[ -d build ] || meson setup build --prefix=/usr/local >/dev/null
ninja -C build >/dev/null
ninja -C build install >/dev/null
meta="sqlite://$home/meta.db"
mkdir -p "$home/t1" "$home/t2" "$mnt"
if [ ! -e "$home/meta.db" ]; then
	braidfs format --replicas 2 --consistency strong "$meta" braidfs "dir:$home/t1" "dir:$home/t2"
fi
if grep -qs " $mnt fuse.braidfs " /proc/mounts && stat "$mnt" >/dev/null 2>&1; then
	echo "braidfs: already mounted at $mnt"
else
	braidfs mount "$meta" "$mnt"
fi
braidfs status "$meta" | sed -n '1,4p'
echo "braidfs: ready. Try: echo hello > $mnt/hello; cat $mnt/hello; df -h $mnt"
