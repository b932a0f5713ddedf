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

import pytest

from conftest import braidfs, is_mounted, pwrite_all, rand_bytes

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
            volume.mount()  # mounting over the dead mount point cleans it itself

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
        assert not [n for n in os.listdir(volume.mnt) if n.startswith(".braidfs")], \
            "internal files visible in the namespace"

    volume.umount()
    r = volume.fsck()
    assert r.returncode == 0, f"fsck after {ROUNDS} crashes: exit {r.returncode}\n{r.stdout}{r.stderr}"
    volume.mount()
    for p, model in durable.items():
        assert _read_all(p) == bytes(model), f"after final remount: {p}"


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
