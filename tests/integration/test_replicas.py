"""Replication: both targets hold the same bytes, fsck notices and repairs damage, a failing
target is dropped from the chain without losing acknowledged data, and an I/O error with no
replica left reaches the application."""

import errno
import hashlib
import os
import random
import re

import pytest

from conftest import (chunk_files, compare_chunk_trees, pwrite_all, rand_bytes, read_file,
                      set_fault, sha256_file, write_file)

MiB = 1 << 20


def random_files(root, rng, nfiles=5, writes=40, maxsize=9 * MiB):
    """Random writes of various sizes/offsets into several files, each fsynced; returns
    {path: sha256}."""
    out = {}
    for i in range(nfiles):
        p = os.path.join(root, f"file{i}")
        model = bytearray()
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            for _ in range(writes):
                n = rng.choice([1, 100, 4096, 5000, 65536, 131072 + 3, MiB, 2 * MiB + 1])
                off = rng.randrange(0, maxsize)
                b = rand_bytes(rng, n)
                pwrite_all(fd, b, off)
                if len(model) < off + n:
                    model.extend(bytes(off + n - len(model)))
                model[off:off + n] = b
            os.fsync(fd)
        finally:
            os.close(fd)
        out[p] = hashlib.sha256(bytes(model)).hexdigest()
    dfd = os.open(root, os.O_RDONLY)
    os.fsync(dfd)
    os.close(dfd)
    return out


def check_hashes(expect):
    for p, h in expect.items():
        assert sha256_file(p) == h, f"{p}: content differs"


def nonzero_chunk_files(v, i):
    out = []
    for rel, path in sorted(chunk_files(v.chunk_root(i)).items()):
        data = read_file(path)
        if data.strip(b"\0"):
            out.append((rel, path, data))
    return out


def test_target_layout(volume):
    for d in volume.target_dirs:
        assert os.path.isfile(os.path.join(d, "braidfs-target")), "identity file missing"
    write_file(volume.path("f"), os.urandom(3 * MiB), fsync=True)
    ino = os.stat(volume.path("f")).st_ino
    for i in range(2):
        files = chunk_files(volume.chunk_root(i))
        assert files, f"no chunk files under {volume.chunk_root(i)}"
        for rel in files:
            assert re.fullmatch(r"[0-9a-f]{2}/[0-9a-f]{16}\.[0-9a-f]{8}", rel), rel
            sub, name = rel.split("/")
            assert int(sub, 16) == int(name[:16], 16) & 0xFF, rel
        assert any(int(rel.split("/")[1][:16], 16) == ino for rel in files), \
            f"no chunk file named after st_ino {ino:#x}: {sorted(files)[:5]}"


def test_chunk_files_hold_file_data(make_volume):
    """With --chunk-size 1M, chunk <ino>.<idx> holds bytes [idx MiB, idx+1 MiB) of the file."""
    v = make_volume(chunk_size="1M")
    data = os.urandom(3 * MiB + 1000)
    write_file(v.path("f"), data, fsync=True)
    ino = os.stat(v.path("f")).st_ino
    v.umount()
    for i in range(2):
        for idx in range(4):
            rel = f"{ino & 0xff:02x}/{ino:016x}.{idx:08x}"
            path = os.path.join(v.chunk_root(i), rel)
            assert os.path.exists(path), f"target {i}: {rel} missing"
            want = data[idx * MiB:(idx + 1) * MiB]
            got = read_file(path)
            assert got[:len(want)] == want, f"target {i}: {rel} does not hold the file's bytes"
            assert not got[len(want):].strip(b"\0")


def test_replicas_identical_after_random_writes(volume):
    rng = random.Random(7)
    expect = random_files(volume.mnt, rng)
    diffs = compare_chunk_trees(volume.chunk_root(0), volume.chunk_root(1))
    assert not diffs, "replicas differ after fsync (mounted):\n" + "\n".join(diffs[:20])
    assert nonzero_chunk_files(volume, 0), "no data in target 0"
    volume.umount()
    diffs = compare_chunk_trees(volume.chunk_root(0), volume.chunk_root(1))
    assert not diffs, "replicas differ after umount:\n" + "\n".join(diffs[:20])
    r = volume.fsck()
    assert r.returncode == 0, f"fsck of a healthy volume: exit {r.returncode}\n{r.stdout}{r.stderr}"
    volume.mount()
    check_hashes(expect)


def test_replicas_after_truncate_and_unlink(volume):
    rng = random.Random(8)
    expect = random_files(volume.mnt, rng, nfiles=4, writes=20)
    paths = sorted(expect)
    os.truncate(paths[0], 1000)
    os.truncate(paths[1], 5 * MiB + 7)
    os.unlink(paths[2])
    for p in (paths[0], paths[1]):
        fd = os.open(p, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    want = {p: sha256_file(p) for p in (paths[0], paths[1], paths[3])}
    volume.umount()
    diffs = compare_chunk_trees(volume.chunk_root(0), volume.chunk_root(1))
    assert not diffs, "\n".join(diffs[:20])
    r = volume.fsck()
    assert r.returncode == 0, f"fsck: exit {r.returncode}\n{r.stdout}{r.stderr}"
    volume.mount()
    check_hashes(want)


def _flip_one_byte(v, target):
    files = nonzero_chunk_files(v, target)
    assert files, "no chunk data to damage"
    rel, path, data = files[len(files) // 2]
    nz = [i for i in range(0, len(data), 997) if data[i]]
    pos = nz[len(nz) // 2] if nz else next(i for i, c in enumerate(data) if c)
    with open(path, "r+b") as f:
        f.seek(pos)
        f.write(bytes([data[pos] ^ 0x5A]))
    return rel, pos


def test_fsck_detects_and_repairs_flipped_byte(volume):
    rng = random.Random(9)
    expect = random_files(volume.mnt, rng, nfiles=3, writes=20)
    volume.umount()
    assert volume.fsck().returncode == 0
    rel, pos = _flip_one_byte(volume, 1)
    r = volume.fsck()
    assert r.returncode == 1, (f"fsck missed a flipped byte in target 1 {rel}@{pos}: exit "
                               f"{r.returncode}\n{r.stdout}{r.stderr}")
    assert r.stdout.strip() or r.stderr.strip(), "fsck exit 1 but printed no problem"
    r = volume.fsck(repair=True)
    assert r.returncode == 0, f"fsck --repair: exit {r.returncode}\n{r.stdout}{r.stderr}"
    diffs = compare_chunk_trees(volume.chunk_root(0), volume.chunk_root(1))
    assert not diffs, "replicas differ after repair:\n" + "\n".join(diffs[:20])
    assert volume.fsck().returncode == 0
    volume.mount()
    check_hashes(expect)


def test_fsck_repairs_primary_damage(volume):
    """Damage on the first target (the likely primary): repair must keep the good copy."""
    rng = random.Random(10)
    expect = random_files(volume.mnt, rng, nfiles=2, writes=20)
    volume.umount()
    _flip_one_byte(volume, 0)
    assert volume.fsck().returncode == 1
    r = volume.fsck(repair=True)
    assert r.returncode == 0, f"fsck --repair: exit {r.returncode}\n{r.stdout}{r.stderr}"
    assert not compare_chunk_trees(volume.chunk_root(0), volume.chunk_root(1))
    volume.mount()
    check_hashes(expect)


def test_read_survives_damaged_local_replica(volume):
    """A checksum mismatch on read is repaired from the other replica, not returned."""
    rng = random.Random(11)
    expect = random_files(volume.mnt, rng, nfiles=2, writes=20)
    volume.umount()
    _flip_one_byte(volume, 0)
    volume.mount()
    check_hashes(expect)


def test_weak_consistency_identical_after_umount(make_volume):
    v = make_volume(consistency="weak")
    rng = random.Random(12)
    expect = random_files(v.mnt, rng)
    check_hashes(expect)
    v.umount()
    diffs = compare_chunk_trees(v.chunk_root(0), v.chunk_root(1))
    assert not diffs, "weak volume: replicas differ after umount:\n" + "\n".join(diffs[:20])
    assert v.fsck().returncode == 0
    v.mount()
    check_hashes(expect)


def _target_lines(status_out, target_dir):
    return [ln for ln in status_out.splitlines() if target_dir in ln]


UNHEALTHY = re.compile(r"offline|degraded|fail|fault|error|removed|down|unhealthy|stale|"
                       r"out of chain|resync|dirty|lost|bad|dead", re.I)


def test_faulty_second_target_write_eio(make_volume):
    v = make_volume(targets=("dir", "faulty"))
    st = v.status()
    assert st.returncode == 0, st.stderr
    assert _target_lines(st.stdout, v.target_dirs[1]), f"status does not list target 1:\n{st.stdout}"
    healthy_line = _target_lines(st.stdout, v.target_dirs[1])
    write_file(v.path("before"), os.urandom(MiB), fsync=True)
    set_fault(v.target_dirs[1], "write=EIO\n")
    rng = random.Random(13)
    expect = random_files(v.mnt, rng, nfiles=3, writes=15)  # must not raise
    check_hashes(expect)
    st = v.status()
    assert st.returncode == 1, f"status exit {st.returncode}: documented 1 when a target is down"
    lines = _target_lines(st.stdout, v.target_dirs[1])
    assert lines, f"status does not list the failed target:\n{st.stdout}"
    assert lines != healthy_line and any(UNHEALTHY.search(ln) for ln in lines), \
        f"status does not show target 1 as out of the chain:\n{st.stdout}"
    set_fault(v.target_dirs[1], None)
    v.remount()
    check_hashes(expect)


def test_faulty_target_fails_on_sync(make_volume):
    v = make_volume(targets=("dir", "faulty"))
    set_fault(v.target_dirs[1], "sync=EIO\n")
    rng = random.Random(14)
    expect = random_files(v.mnt, rng, nfiles=2, writes=10)
    check_hashes(expect)
    set_fault(v.target_dirs[1], None)
    v.remount()
    check_hashes(expect)


def test_faulty_target_enospc(make_volume):
    v = make_volume(targets=("dir", "faulty"))
    set_fault(v.target_dirs[1], "write=ENOSPC\n")
    rng = random.Random(15)
    expect = random_files(v.mnt, rng, nfiles=2, writes=10)
    check_hashes(expect)


def test_faulty_read_served_by_other_replica(make_volume):
    v = make_volume(targets=("faulty", "dir"))
    data = os.urandom(4 * MiB)
    write_file(v.path("f"), data, fsync=True)
    v.umount()
    v.mount()
    set_fault(v.target_dirs[0], "read=EIO\n")
    assert read_file(v.path("f")) == data


def test_all_targets_faulty_gives_eio(make_volume):
    v = make_volume(targets=("faulty", "faulty"))
    v.expect_unclean = True  # no replica left: an unmount error is acceptable here
    write_file(v.path("ok"), b"fine", fsync=True)
    set_fault(v.target_dirs[0], "write=EIO\n")
    set_fault(v.target_dirs[1], "write=EIO\n")
    err = None
    fd = os.open(v.path("f"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            pwrite_all(fd, os.urandom(2 * MiB), 0)
            os.fsync(fd)
        except OSError as e:
            err = e
        if err is None:
            try:
                os.close(fd)
            except OSError as e:
                err = e
            fd = None
    finally:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    assert err is not None, "write+fsync with every replica failing succeeded: data lost silently"
    assert err.errno == errno.EIO, f"expected EIO, got {errno.errorcode.get(err.errno)}"
    set_fault(v.target_dirs[0], None)
    set_fault(v.target_dirs[1], None)


def test_status_healthy(volume):
    st = volume.status()
    assert st.returncode == 0, st.stderr
    for d in volume.target_dirs:
        assert _target_lines(st.stdout, d), f"status does not list {d}:\n{st.stdout}"
    assert "vol" in st.stdout


@pytest.mark.parametrize("replicas", [1, 3])
def test_replica_counts(make_volume, replicas):
    v = make_volume(targets=("dir",) * 3, replicas=replicas)
    expect = random_files(v.mnt, random.Random(16), nfiles=2, writes=10)
    v.umount()
    holders = [i for i in range(3) if nonzero_chunk_files(v, i)]
    if replicas == 3:
        assert holders == [0, 1, 2]
        assert not compare_chunk_trees(v.chunk_root(0), v.chunk_root(1))
        assert not compare_chunk_trees(v.chunk_root(0), v.chunk_root(2))
    else:
        assert holders, "no target holds data"
    assert v.fsck().returncode == 0
    v.mount()
    check_hashes(expect)


def _write_fsync_error(path, size=2 * MiB):
    """Write + fsync + close; returns the first OSError raised (or None)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    err = None
    try:
        pwrite_all(fd, os.urandom(size), 0)
        os.fsync(fd)
    except OSError as e:
        err = e
    try:
        os.close(fd)
    except OSError as e:
        err = err or e
    return err


def test_all_targets_enospc_reaches_app(make_volume):
    v = make_volume(targets=("faulty", "faulty"))
    v.expect_unclean = True
    set_fault(v.target_dirs[0], "write=ENOSPC\n")
    set_fault(v.target_dirs[1], "write=ENOSPC\n")
    err = _write_fsync_error(v.path("f"))
    assert err is not None, "write+fsync with every target full succeeded: data lost silently"
    assert err.errno in (errno.ENOSPC, errno.EIO), errno.errorcode.get(err.errno)
    set_fault(v.target_dirs[0], None)
    set_fault(v.target_dirs[1], None)


def test_all_targets_sync_eio_fails_fsync(make_volume):
    v = make_volume(targets=("faulty", "faulty"))
    v.expect_unclean = True
    set_fault(v.target_dirs[0], "sync=EIO\n")
    set_fault(v.target_dirs[1], "sync=EIO\n")
    err = _write_fsync_error(v.path("f"))
    assert err is not None, "fsync succeeded although no target could sync"
    assert err.errno == errno.EIO, errno.errorcode.get(err.errno)
    set_fault(v.target_dirs[0], None)
    set_fault(v.target_dirs[1], None)


def test_all_targets_read_eio_reaches_app(make_volume):
    v = make_volume(targets=("faulty", "faulty"))
    data = os.urandom(3 * MiB)
    write_file(v.path("f"), data, fsync=True)
    v.remount()  # cold page cache
    set_fault(v.target_dirs[0], "read=EIO\n")
    set_fault(v.target_dirs[1], "read=EIO\n")
    try:
        got = read_file(v.path("f"))
    except OSError as e:
        assert e.errno == errno.EIO, errno.errorcode.get(e.errno)
    else:
        raise AssertionError("read with every replica failing returned data "
                             f"({'zeros' if not got.strip(bytes(1)) else 'some bytes'}), not EIO")
    set_fault(v.target_dirs[0], None)
    set_fault(v.target_dirs[1], None)
    assert read_file(v.path("f")) == data, "data not readable once the targets recovered"


def test_unlink_and_truncate_reclaim_chunks(volume):
    """Space comes back: no chunk data of an unlinked file, none past a truncate."""
    a, b = volume.path("a"), volume.path("b")
    write_file(a, os.urandom(9 * MiB), fsync=True)
    write_file(b, os.urandom(9 * MiB), fsync=True)
    ia, ib = os.stat(a).st_ino, os.stat(b).st_ino
    fd = os.open(a, os.O_RDONLY)
    os.unlink(a)
    os.close(fd)
    os.truncate(b, 1000)
    fd = os.open(b, os.O_RDWR)
    os.fsync(fd)
    os.close(fd)
    volume.umount()
    for i in range(2):
        for rel, path in chunk_files(volume.chunk_root(i)).items():
            name = rel.split("/")[-1]
            ino, idx = int(name[:16], 16), int(name[17:], 16)
            data = read_file(path)
            if ino == ia:
                assert not data.strip(b"\0"), f"target {i}: unlinked inode's chunk {rel} kept"
            if ino == ib and idx > 0:
                assert not data.strip(b"\0"), f"target {i}: chunk {rel} past the truncate kept"
            if ino == ib and idx == 0:
                assert not data[1000:].strip(b"\0"), f"target {i}: bytes past truncate kept"
    volume.mount()


def test_stale_replica_never_served(make_volume):
    """A target that missed writes (dropped from the chain) must never serve its old data:
    not after the fault clears, not after a remount, not when the good replica fails reads."""
    v = make_volume(targets=("faulty", "faulty"))
    v1 = os.urandom(12 * MiB)
    write_file(v.path("a"), v1, fsync=True)
    set_fault(v.target_dirs[1], "write=EIO\n")
    v2 = os.urandom(12 * MiB)
    fd = os.open(v.path("a"), os.O_WRONLY)
    try:
        pwrite_all(fd, v2, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    set_fault(v.target_dirs[1], None)
    assert read_file(v.path("a")) == v2
    v.remount()
    assert read_file(v.path("a")) == v2, "stale data after remount"
    v.remount()  # cold cache
    set_fault(v.target_dirs[0], "read=EIO\n")
    try:
        got = read_file(v.path("a"))
    except OSError as e:
        assert e.errno == errno.EIO, errno.errorcode.get(e.errno)
    else:
        assert got == v2, ("with the good replica failing reads, the stale replica's old "
                           "data was returned")
    set_fault(v.target_dirs[0], None)
    v.umount()
    r = v.fsck(repair=True)
    assert r.returncode == 0, f"fsck --repair: {r.returncode}\n{r.stdout}{r.stderr}"
    v.mount()
    assert read_file(v.path("a")) == v2
    v.umount()
    diffs = compare_chunk_trees(v.chunk_root(0), v.chunk_root(1))
    st = v.status()
    assert not diffs or "offline" in st.stdout, \
        "replicas differ after repair although both targets are back:\n" + "\n".join(diffs[:10])
    v.mount()


def test_degraded_volume_is_reported_and_repaired(make_volume):
    """After a target was dropped from the chains and its fault cleared, the volume runs on
    one copy: fsck must say so (exit 1) and fsck --repair must bring the target back in sync
    (exit 0, status exit 0, replicas identical)."""
    v = make_volume(targets=("dir", "faulty"))
    write_file(v.path("a"), os.urandom(9 * MiB), fsync=True)
    set_fault(v.target_dirs[1], "write=EIO\n")
    b = os.urandom(9 * MiB)
    write_file(v.path("b"), b, fsync=True)
    set_fault(v.target_dirs[1], None)
    v.umount()
    st = v.status()
    assert st.returncode == 1, "status should flag the offline target"
    r = v.fsck()
    assert r.returncode == 1, ("fsck says the volume is clean although every chain is down to "
                               f"1 of 2 replicas:\n{r.stdout}\n{st.stdout}")
    r = v.fsck(repair=True)
    assert r.returncode == 0, f"fsck --repair: {r.returncode}\n{r.stdout}{r.stderr}"
    st = v.status()
    assert st.returncode == 0, f"after fsck --repair a target is still not up:\n{st.stdout}"
    diffs = compare_chunk_trees(v.chunk_root(0), v.chunk_root(1))
    assert not diffs, "replicas differ after repair:\n" + "\n".join(diffs[:10])
    v.mount()
    assert read_file(v.path("b")) == b
