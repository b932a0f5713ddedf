"""Crash test: kill -9 the mount daemon right after fsync; every fsynced byte must survive,
and what was not fsynced may be lost but never replaced by foreign bytes.

BRAIDFS_CRASH_ROUNDS rounds (default 20). Each round does random writes / extensions /
truncates on random files, fsyncs them (and their directory), then writes some more without
fsync, kills the daemon with SIGKILL, cleans the dead mount (alternately with `braidfs umount`
and by mounting over it) and checks the files against the model.
"""

import errno
import os
import random
import re
import sqlite3
import stat
import time

import pytest

from conftest import (TARGET_KINDS, braidfs, chunk_files, is_mounted, listdir, pwrite_all,
                      rand_bytes)

MiB = 1 << 20
ROUNDS = int(os.environ.get("BRAIDFS_CRASH_ROUNDS", "20"))


def _fsync_path(p, flags=os.O_RDONLY):
    fd = os.open(p, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _apply_write(model, off, data):
    if len(model) < off + len(data):
        model.extend(bytes(off + len(data) - len(model)))
    model[off:off + len(data)] = data


def _read_all(p):
    with open(p, "rb") as f:
        return f.read()


def _chunks_of(volume, inos):
    """The chunk files of these inodes on the volume's two targets (paths under each root)."""
    names = tuple(f"{ino:016x}." for ino in inos)
    return [rel for i in range(2) for rel in chunk_files(volume.chunk_root(i))
            if rel.split("/")[-1].startswith(names)]


def _check_volatile(rnd, p, got, old, after, ranges):
    """GOT (read after the crash) must be OLD (fsynced) outside the unsynced write RANGES, and
    inside them each byte the written one, the old one or zero; size between the two."""
    assert len(got) <= max(len(after), len(old)), \
        f"round {rnd}: {p} has size {len(got)} > written {len(after)}"
    assert len(got) >= len(old), f"round {rnd}: fsynced {p} shrank from {len(old)} to {len(got)}"
    n = len(got)
    mask = bytearray(n)
    for a, b in ranges:
        b = min(b, n)
        if a < b:
            mask[a:b] = b"\1" * (b - a)
    oldz = bytes(old) + bytes(max(0, n - len(old)))
    aftz = bytes(after[:n]) + bytes(max(0, n - len(after)))
    blk = 4096
    for s in range(0, n, blk):
        g, m, o, w = got[s:s + blk], mask[s:s + blk], oldz[s:s + blk], aftz[s:s + blk]
        if g == o:
            continue
        if 1 not in m:
            raise AssertionError(f"round {rnd}: {p}: fsynced bytes changed in [{s}, "
                                 f"{s + len(g)}) where nothing unsynced was written")
        if g == w:
            continue
        for i in range(len(g)):
            if g[i] == o[i] or (m[i] and (g[i] == w[i] or g[i] == 0)):
                continue
            raise AssertionError(f"round {rnd}: {p} byte {s + i} = {g[i]:#x}: not the written "
                                 f"{w[i]:#x}, not the old {o[i]:#x}, not zero "
                                 f"(unsynced write there: {bool(m[i])})")


def _describe_mismatch(got, want):
    n = min(len(got), len(want))
    first = next((i for i in range(n) if got[i] != want[i]), n)
    return f"size {len(got)} vs model {len(want)}, first difference at byte {first}"


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_kill9_after_fsync(volume):
    rng = random.Random(int(os.environ.get("BRAIDFS_CRASH_SEED", "4242")))
    dirs = [volume.mnt, volume.path("a"), volume.path("a", "b")]
    os.makedirs(dirs[2])
    _fsync_path(volume.mnt)
    _fsync_path(dirs[1])
    problems = []  # non-fatal failures, reported at the end
    durable = {}   # path -> bytearray: content as of the last fsync
    names = [os.path.join(rng.choice(dirs), f"f{i}") for i in range(10)]

    for rnd in range(ROUNDS):
        # ---- durable phase: random ops, then fsync every touched file and its dir
        pending = {}
        for _ in range(rng.randint(3, 12)):
            p = rng.choice(names)
            cur = pending[p] if p in pending else bytearray(durable.get(p, b""))
            op = rng.random()
            fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if op < 0.15 and cur:
                    size = rng.randrange(0, len(cur) + 1)
                    os.ftruncate(fd, size)
                    del cur[size:]
                elif op < 0.2:
                    size = len(cur) + rng.randrange(0, 3 * MiB)
                    os.ftruncate(fd, size)
                    cur.extend(bytes(size - len(cur)))
                else:
                    n = rng.randint(1, 2 * MiB)
                    if rng.random() < 0.3:
                        off = len(cur) + rng.randrange(0, MiB)  # extend, maybe with a gap
                    else:
                        off = rng.randrange(0, len(cur) + 1)
                    data = rand_bytes(rng, n)
                    pwrite_all(fd, data, off)
                    _apply_write(cur, off, data)
            finally:
                os.close(fd)
            pending[p] = cur
        for p, cur in pending.items():
            _fsync_path(p, os.O_RDWR)
            _fsync_path(os.path.dirname(p))
            durable[p] = bytearray(cur)

        # ---- volatile phase: writes with no fsync (may be lost, never corrupted)
        volatile = {}  # path -> (content before, content after, touched ranges)
        for _ in range(rng.randint(0, 4)):
            p = rng.choice(names + [os.path.join(rng.choice(dirs), f"v{rnd}")])
            before = volatile[p][1] if p in volatile else durable.get(p)
            after = bytearray(before) if before is not None else bytearray()
            n = rng.randint(1, MiB)
            off = rng.randrange(0, len(after) + MiB)
            data = rand_bytes(rng, n)
            fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                pwrite_all(fd, data, off)
            finally:
                os.close(fd)
            _apply_write(after, off, data)
            orig = volatile[p][0] if p in volatile else durable.get(p)
            ranges = (volatile[p][2] if p in volatile else []) + [(off, off + n)]
            volatile[p] = (orig, after, ranges)

        # ---- crash
        volume.kill9()
        if rnd % 2 == 0:
            r = braidfs("umount", volume.mnt, timeout=120)
            assert r.returncode == 0, f"braidfs umount of a dead mount: {r.stderr}"
            assert not is_mounted(volume.mnt)
            volume.mount()
        else:
            # mounting over the dead mount point must clean it itself; if it does not, note
            # it and go on (clean with braidfs umount) so durability is still checked
            try:
                volume.mount()
            except AssertionError as e:
                problems.append(f"round {rnd}: mount over the dead mount point: {e}")
                r = braidfs("umount", volume.mnt, timeout=120)
                assert r.returncode == 0, f"braidfs umount of a dead mount: {r.stderr}"
                volume.mount()

        # ---- check
        for p, model in durable.items():
            if p in volatile:
                continue
            try:
                got = _read_all(p)
            except OSError as e:
                raise AssertionError(f"round {rnd}: fsynced {p} unreadable: {e}")
            assert got == bytes(model), (f"round {rnd}: fsynced {p} lost data: "
                                         f"{_describe_mismatch(got, model)}")
        for p, (orig, after, ranges) in volatile.items():
            try:
                got = _read_all(p)
            except FileNotFoundError:
                assert orig is None, f"round {rnd}: fsynced {p} vanished"
                continue
            old = orig if orig is not None else bytearray()
            _check_volatile(rnd, p, got, old, after, ranges)
            # what survived becomes the new durable state after an fsync
            _fsync_path(p, os.O_RDWR)
            _fsync_path(os.path.dirname(p))
            durable[p] = bytearray(got)
        assert not [n for n in listdir(volume.mnt) if n.startswith(".braidfs")], \
            "internal files visible in the namespace"

    volume.umount()
    r = volume.fsck()
    assert r.returncode == 0, f"fsck after {ROUNDS} crashes: exit {r.returncode}\n{r.stdout}{r.stderr}"
    volume.mount()
    for p, model in durable.items():
        assert _read_all(p) == bytes(model), f"after final remount: {p}"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("volume", TARGET_KINDS, indirect=True)
def test_kill9_single_round_quick(volume):
    """One crash, no randomness: fsynced file and directory entry survive SIGKILL."""
    p = volume.path("d", "f")
    os.mkdir(volume.path("d"))
    data = os.urandom(3 * MiB + 5)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        pwrite_all(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_path(volume.path("d"))
    _fsync_path(volume.mnt)
    volume.kill9()
    try:
        os.stat(volume.mnt)
    except OSError as e:
        assert e.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO)
    volume.mount()  # over the dead mount point
    assert _read_all(p) == data


_WRITER = r"""
import hashlib, os, sys
path, rec = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
i = 0
try:
    while True:
        seed = hashlib.sha256(f"{path}:{i}".encode()).digest()
        os.write(fd, (seed * (rec // 32 + 1))[:rec])
        os.fdatasync(fd) if i % 2 else os.fsync(fd)
        print(i, flush=True)  # record i is durable
        i += 1
except OSError as e:
    print("error", e.errno, flush=True)
"""


def _record(path, i, rec):
    import hashlib
    seed = hashlib.sha256(f"{path}:{i}".encode()).digest()
    return (seed * (rec // 32 + 1))[:rec]


@pytest.mark.parametrize("volume", TARGET_KINDS, indirect=True)
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_kill9_during_fsync_stream(volume):
    """Writers append records and fsync each; the daemon is killed while they run. Every
    record whose fsync returned must be there after the remount, nothing torn before it."""
    import subprocess
    import time
    from conftest import PY
    rng = random.Random(77)
    rounds = max(1, min(ROUNDS, 5))
    for rnd in range(rounds):
        writers = []
        for w in range(3):
            p = volume.path(f"stream{rnd}.{w}")
            rec = rng.choice([512, 4096, 12288, 65536 + 17])
            proc = subprocess.Popen([PY, "-c", _WRITER, p, str(rec)], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True)
            writers.append((p, rec, proc))
        # Each writer's first line (a durable record, or its error) before the clock starts:
        # on a loaded machine starting the interpreters alone can take longer than the sleep.
        first = {p: proc.stdout.readline() for p, _, proc in writers}
        time.sleep(rng.uniform(0.3, 1.5))
        volume.kill9()
        acked = {}
        for p, rec, proc in writers:
            try:
                out, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            out = first[p] + out
            # one record number per line; "error ERRNO" must not count as record ERRNO
            nums = [int(ln) for ln in out.splitlines() if ln.strip().isdigit()]
            acked[p] = (max(nums) + 1 if nums else 0, rec)
        r = braidfs("umount", volume.mnt, timeout=120)
        assert r.returncode == 0, r.stderr
        volume.mount()
        for p, (n, rec) in acked.items():
            try:
                data = _read_all(p)
            except FileNotFoundError:
                assert n == 0, f"round {rnd}: {p} vanished with {n} fsynced records"
                continue
            assert len(data) >= n * rec, \
                f"round {rnd}: {p} has {len(data)} bytes, {n} records of {rec} were fsynced"
            for i in range(n):
                assert data[i * rec:(i + 1) * rec] == _record(p, i, rec), \
                    f"round {rnd}: {p} fsynced record {i} of {n} is wrong"
            # beyond the acknowledged records: whole later records, or zeros (never garbage)
            tail = data[n * rec:]
            j = n
            while tail:
                chunk, tail = tail[:rec], tail[rec:]
                want = _record(p, j, rec)[:len(chunk)]
                assert chunk == want or not chunk.strip(b"\0") or all(
                    c == w or c == 0 for c, w in zip(chunk, want)), \
                    f"round {rnd}: {p} unsynced record {j} holds foreign bytes"
                j += 1
    assert sum(n for n, _ in acked.values()) > 0, "no record was ever fsynced"
    volume.umount()
    r = volume.fsck()
    assert r.returncode == 0, f"fsck after the crashes: exit {r.returncode}\n{r.stdout}{r.stderr}"
    volume.mount()


def test_kill9_with_unlinked_open_file(volume):
    """An unlinked-but-open file at the crash: after remount its data is reclaimed and fsck
    finds nothing left over."""
    p = volume.path("doomed")
    data = os.urandom(6 * MiB)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    pwrite_all(fd, data, 0)
    os.fsync(fd)
    ino = os.fstat(fd).st_ino
    os.unlink(p)
    _fsync_path(volume.mnt)
    keep = volume.path("keep")
    with open(keep, "wb") as f:
        f.write(b"k" * 10000)
        f.flush()
        os.fsync(f.fileno())
    _fsync_path(volume.mnt)
    volume.kill9()
    try:
        os.close(fd)
    except OSError:
        pass
    r = braidfs("umount", volume.mnt, timeout=120)
    assert r.returncode == 0, r.stderr
    volume.mount()
    assert _read_all(keep) == b"k" * 10000
    assert not os.path.exists(p)
    volume.umount()
    r = volume.fsck()
    assert r.returncode == 0, f"fsck after a crash with an open unlinked file: {r.stdout}{r.stderr}"
    left = _chunks_of(volume, [ino])
    assert not left, f"chunks of the unlinked inode {ino} still on the targets: {left[:4]}"
    volume.mount()


def _orphan_rows(volume):
    """Inode rows with nlink 0 in the (unmounted) volume's SQLite database."""
    with sqlite3.connect(f"file:{volume.db}?mode=ro", uri=True) as db:
        return [r[0] for r in db.execute("SELECT ino FROM inodes WHERE nlink = 0")]


def test_kill9_with_purges_queued(volume):
    """Unlinked files whose rows wait for the batched purge when the mount dies: the next
    mount deletes their rows and chunks, and the files unlinked after it are purged too."""
    inos = []
    for i in range(40):
        p = volume.path(f"gone{i}")
        with open(p, "wb") as f:
            f.write(os.urandom(70000))
        inos.append(os.stat(p).st_ino)
    keep = volume.path("keep")
    with open(keep, "wb") as f:
        f.write(b"k" * 10000)
        os.fsync(f.fileno())
    for i in range(40):
        os.unlink(volume.path(f"gone{i}"))
    volume.kill9()  # at once: the last rows are still queued (FS_PURGE_DELAY_MS)
    r = braidfs("umount", volume.mnt, timeout=120)
    assert r.returncode == 0, r.stderr
    left = set(_orphan_rows(volume))  # the queued ones, unless the syncer was quicker
    assert left <= set(inos), f"orphan rows of inodes never unlinked: {left - set(inos)}"
    volume.mount()
    assert _read_all(keep) == b"k" * 10000
    # more unlinks after recovery go through the queue of the new mount
    for i in range(3):
        with open(volume.path(f"late{i}"), "wb") as f:
            f.write(b"x" * 5000)
        inos.append(os.stat(volume.path(f"late{i}")).st_ino)
        os.unlink(volume.path(f"late{i}"))
    volume.umount()
    assert _orphan_rows(volume) == [], "orphan rows left after recovery and a clean unmount"
    chunks = _chunks_of(volume, inos)
    assert not chunks, f"chunks of unlinked inodes still on the targets: {chunks[:4]}"
    r = volume.fsck()
    assert r.returncode == 0, f"fsck: {r.stdout}{r.stderr}"
    volume.mount()


def test_dir_attrs_after_changes(volume):
    """FS-10: the kernel's getattr of a directory right after a create, mkdir, unlink or rmdir
    in it is answered from the attributes that change left, without a database read; they are
    the ones the database holds (a fresh mount reads the same)."""
    d = volume.path("d")
    os.mkdir(d)
    prev = os.stat(d)
    for i in range(100):
        p = os.path.join(d, f"f{i}")
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))
        st, f = os.stat(d), os.stat(p)
        # the create stamped the directory with the new file's own time
        assert st.st_mtime_ns == st.st_ctime_ns == f.st_ctime_ns
        assert st.st_mtime_ns >= prev.st_mtime_ns and st.st_nlink == 2
        prev = st
    for i in range(5):
        os.mkdir(os.path.join(d, f"s{i}"))
        st = os.stat(d)
        assert st.st_nlink == 3 + i and st.st_mtime_ns == st.st_ctime_ns >= prev.st_mtime_ns
        prev = st
    for i in range(50):
        t0 = time.time_ns()
        os.unlink(os.path.join(d, f"f{i}"))
        st = os.stat(d)
        assert st.st_mtime_ns == st.st_ctime_ns >= max(prev.st_mtime_ns, t0 - 10**9)
        assert st.st_nlink == 7
        prev = st
    os.rmdir(os.path.join(d, "s0"))
    last = os.stat(d)
    assert last.st_nlink == 6
    os.chmod(d, 0o750)  # a change of another kind: the next getattr reads the database
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o750
    last = os.stat(d)
    volume.umount()
    with open(volume.log, errors="replace") as f:
        hits = re.findall(r"(\d+) getattrs of the last changed directory", f.read())
    assert hits and int(hits[-1]) >= 120, hits  # of 156 changes, each followed by a stat
    volume.mount()
    st = os.stat(d)
    keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_mtime_ns", "st_ctime_ns")
    assert [getattr(st, k) for k in keys] == [getattr(last, k) for k in keys]
    assert sorted(os.listdir(d)) == sorted([f"f{i}" for i in range(50, 100)] +
                                           [f"s{i}" for i in range(1, 5)])


def _requests(volume):
    """The mount's FUSE request counts: (total, {kind: count} of the kinds status lists)."""
    out = volume.status().stdout
    m = re.search(r"requests\s+(\d+) FUSE request", out)
    assert m, out
    kinds = dict((k, int(n)) for k, n in re.findall(r"^\s+([a-z_]+)\s+(\d+)\s+\d+ us", out, re.M))
    return int(m.group(1)), kinds


def test_one_mount_kernel_caches(volume, user):
    """FS-11: on a one-mount (SQLite) volume the close(2) of a read-only open sends no FLUSH,
    while a close after writing still returns only once the size is recorded; and names,
    missing names and attributes stay in the kernel's cache past the 1 s a shared volume
    keeps them, so a stat walks no request."""
    volume.umount()
    volume.mount()  # counters from zero
    d = volume.path("d")
    os.mkdir(d)
    p = os.path.join(d, "f")
    with open(p, "wb") as f:
        f.write(b"x" * 5000)
    ino = os.stat(p).st_ino
    with sqlite3.connect(f"file:{volume.db}?mode=ro", uri=True) as db:
        size = db.execute("SELECT size FROM inodes WHERE ino = ?", (ino,)).fetchone()[0]
    assert size == 5000  # recorded before close returned (FLUSH)
    for _ in range(300):
        os.close(os.open(p, os.O_RDONLY))
    total, kinds = _requests(volume)
    assert kinds.get("open", 0) >= 300, kinds
    # the read-only closes sent none (status lists the 8 costliest kinds: 300 would show)
    assert kinds.get("flush", 0) <= 1, kinds
    # what the kernel was told to forget by the changes above, fetched once
    os.stat(d), os.stat(p), os.path.exists(os.path.join(d, "nope"))
    time.sleep(1.5)  # past a shared volume's entry_timeout / attr_timeout
    before, _ = _requests(volume)
    for _ in range(20):
        assert os.stat(p).st_size == 5000
        assert not os.path.exists(os.path.join(d, "nope"))
        os.stat(d)
    after, kinds = _requests(volume)
    assert after == before, kinds  # not one lookup or getattr
    # a change the file system makes on its own still shows at once (FS-8 drops the
    # kernel's attributes): a non-root write strips the setuid bit
    os.chmod(p, 0o4777)
    assert os.stat(p).st_mode & 0o7777 == 0o4777
    assert user.try_op("fd = os.open(p, os.O_WRONLY); os.pwrite(fd, b'y', 0); os.close(fd)",
                       p=p) == "OK"
    assert os.stat(p).st_mode & 0o7777 == 0o0777


def test_write_times_grain(volume):
    """FS-4: within time_grain_ms after a write stamped mtime/ctime, later writes leave them
    as they are (so an fsync owes the database nothing); after it, or when the stamp is in
    the future, a write stamps again; what fsync returned survives kill -9 either way."""
    volume.umount()
    volume.mount("time_grain_ms=1000")
    p = volume.path("f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        pwrite_all(fd, b"a" * 8192, 0)
        os.fsync(fd)
        t1 = time.monotonic()
        st1 = os.stat(p)
        pwrite_all(fd, b"b" * 4096, 0)  # an overwrite within the grain
        os.fsync(fd)
        st2 = os.stat(p)
        within = time.monotonic() - t1 < 0.5
    finally:
        os.close(fd)
    if within:  # else the machine stalled for half a second: nothing to compare
        assert (st2.st_mtime_ns, st2.st_ctime_ns) == (st1.st_mtime_ns, st1.st_ctime_ns)
    volume.kill9()
    volume.mount()
    st = os.stat(p)
    assert (st.st_mtime_ns, st.st_ctime_ns) == (st2.st_mtime_ns, st2.st_ctime_ns)
    assert _read_all(p) == b"b" * 4096 + b"a" * 4096

    # past the grain: the next write stamps, and its fsync makes the stamp durable
    time.sleep(1.1)
    fd = os.open(p, os.O_RDWR)
    try:
        pwrite_all(fd, b"c" * 4096, 4096)
        os.fsync(fd)
    finally:
        os.close(fd)
    st3 = os.stat(p)
    assert st3.st_mtime_ns > st2.st_mtime_ns and st3.st_ctime_ns > st2.st_ctime_ns
    volume.kill9()
    volume.mount()
    st = os.stat(p)
    assert (st.st_mtime_ns, st.st_ctime_ns) == (st3.st_mtime_ns, st3.st_ctime_ns)
    assert _read_all(p) == b"b" * 4096 + b"c" * 4096

    # a stamp in the future (utimensat) is replaced by the next write at once
    future = time.time_ns() + 86400 * 10**9
    os.utime(p, ns=(future, future))
    fd = os.open(p, os.O_RDWR)
    try:
        pwrite_all(fd, b"d", 0)
    finally:
        os.close(fd)
    assert os.stat(p).st_mtime_ns < future - 3600 * 10**9

    # 0: every write stamps
    volume.umount()
    volume.mount("time_grain_ms=0")
    fd = os.open(p, os.O_RDWR)
    try:
        pwrite_all(fd, b"e", 0)
        m1 = os.stat(p).st_mtime_ns
        time.sleep(0.002)
        pwrite_all(fd, b"f", 0)
        m2 = os.stat(p).st_mtime_ns
    finally:
        os.close(fd)
    assert m2 > m1

    for bad in ("1001", "-1", "x", ""):
        r = braidfs("mount", "-o", f"time_grain_ms={bad}", volume.meta_url, volume.mnt)
        assert r.returncode != 0
        assert "time_grain_ms must be 0..1000" in r.stderr, r.stderr
