"""POSIX behaviour of a braidfs mount, one small test per behaviour, with real syscalls.

Every test runs on each kind of target (conftest.TARGET_KINDS): [dir] directories, [file] the
block chunk store on image files."""

import errno
import fcntl
import hashlib
import mmap
import os
import random
import signal
import stat
import struct
import subprocess
import time

import pytest

from conftest import (listdir, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, PY, RENAME_EXCHANGE,
                      RENAME_NOREPLACE, TARGET_KINDS, drop_caches, expect_errno, fallocate,
                      pwrite_all, rand_bytes, read_file, renameat2, sha256_file, spawn_py,
                      tree_digest, wait_line, write_file)

MiB = 1 << 20
GiB = 1 << 30

pytestmark = pytest.mark.parametrize("volume", TARGET_KINDS, indirect=True)


# --------------------------------------------------------------------------- files and dirs


def test_create_write_read_unlink(volume):
    p = volume.path("a.txt")
    write_file(p, b"hello braidfs\n")
    st = os.stat(p)
    assert stat.S_ISREG(st.st_mode)
    assert st.st_size == 14
    assert stat.S_IMODE(st.st_mode) == 0o644
    assert read_file(p) == b"hello braidfs\n"
    assert "a.txt" in listdir(volume.mnt)
    os.unlink(p)
    assert not os.path.exists(p)
    expect_errno(errno.ENOENT, os.stat, p)
    expect_errno(errno.ENOENT, os.unlink, p)


def test_create_exclusive(volume):
    p = volume.path("x")
    os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    expect_errno(errno.EEXIST, os.open, p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600


def test_umask_applies(volume):
    old = os.umask(0o027)
    try:
        os.close(os.open(volume.path("f"), os.O_CREAT | os.O_WRONLY, 0o777))
        os.mkdir(volume.path("d"), 0o777)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(volume.path("f")).st_mode) == 0o750
    assert stat.S_IMODE(os.stat(volume.path("d")).st_mode) == 0o750


def test_data_survives_remount(volume):
    p = volume.path("persist")
    data = os.urandom(3 * MiB + 123)
    write_file(p, data)
    volume.remount()
    assert read_file(p) == data


def test_mkdir_rmdir_nlink(volume):
    d = volume.path("d")
    os.mkdir(d, 0o755)
    assert stat.S_ISDIR(os.stat(d).st_mode)
    assert os.stat(d).st_nlink == 2
    os.mkdir(os.path.join(d, "s1"))
    os.mkdir(os.path.join(d, "s2"))
    assert os.stat(d).st_nlink == 4, "directory nlink must be 2 + number of subdirectories"
    expect_errno(errno.EEXIST, os.mkdir, d)
    expect_errno(errno.ENOTEMPTY, os.rmdir, d)
    write_file(os.path.join(d, "s1", "f"), b"x")
    expect_errno(errno.ENOTDIR, os.rmdir, os.path.join(d, "s1", "f"))
    expect_errno(errno.ENOTDIR, os.mkdir, os.path.join(d, "s1", "f", "x"))
    expect_errno(errno.ENOENT, os.mkdir, os.path.join(d, "nope", "x"))
    os.unlink(os.path.join(d, "s1", "f"))
    os.rmdir(os.path.join(d, "s1"))
    os.rmdir(os.path.join(d, "s2"))
    assert os.stat(d).st_nlink == 2
    os.rmdir(d)
    assert not os.path.exists(d)


def test_dot_and_dotdot(volume):
    os.makedirs(volume.path("a", "b"))
    assert os.stat(volume.path("a", "b", "..")).st_ino == os.stat(volume.path("a")).st_ino
    assert os.stat(volume.path("a", ".")).st_ino == os.stat(volume.path("a")).st_ino
    names = listdir(volume.path("a"))
    assert names == ["b"]


def test_long_names(volume):
    name = "n" * 255
    write_file(volume.path(name), b"x")
    assert name in listdir(volume.mnt)
    expect_errno(errno.ENAMETOOLONG, os.open, volume.path("n" * 256), os.O_CREAT | os.O_WRONLY)


def test_odd_names(volume):
    names = ["with space", "ünïcødé-名前", "new\nline", "-dash", ".hidden", "a" * 200 + ".b"]
    for n in names:
        write_file(volume.path(n), n.encode())
    assert sorted(listdir(volume.mnt)) == sorted(names)
    for n in names:
        assert read_file(volume.path(n)) == n.encode()


def test_readdir_types_and_inodes(volume):
    os.mkdir(volume.path("d"))
    write_file(volume.path("f"), b"")
    os.symlink("f", volume.path("l"))
    got = {e.name: e for e in os.scandir(volume.mnt)}
    assert set(got) == {"d", "f", "l"}
    assert got["d"].is_dir(follow_symlinks=False)
    assert got["f"].is_file(follow_symlinks=False)
    assert got["l"].is_symlink()
    for n, e in got.items():
        assert e.inode() == os.lstat(volume.path(n)).st_ino


# --------------------------------------------------------------------------- links


def test_hard_links(volume):
    a, b, c = volume.path("a"), volume.path("b"), volume.path("sub", "c")
    os.mkdir(volume.path("sub"))
    write_file(a, b"one")
    os.link(a, b)
    os.link(a, c)
    sa, sb, sc = os.stat(a), os.stat(b), os.stat(c)
    assert sa.st_ino == sb.st_ino == sc.st_ino
    assert sa.st_nlink == sb.st_nlink == sc.st_nlink == 3
    with open(b, "r+b") as f:
        f.write(b"TWO")
    assert read_file(a) == b"TWO" == read_file(c)
    os.unlink(a)
    assert os.stat(b).st_nlink == 2
    assert read_file(c) == b"TWO"
    expect_errno(errno.EEXIST, os.link, b, c)
    expect_errno(errno.EPERM, os.link, volume.path("sub"), volume.path("sublink"))
    expect_errno(errno.ENOENT, os.link, volume.path("nope"), volume.path("x"))
    volume.remount()
    assert os.stat(b).st_nlink == 2 and os.stat(c).st_ino == os.stat(b).st_ino
    os.unlink(b)
    assert os.stat(c).st_nlink == 1
    assert read_file(c) == b"TWO"


def test_hard_link_chmod_visible_through_all_names(volume):
    write_file(volume.path("a"), b"x")
    os.link(volume.path("a"), volume.path("b"))
    os.chmod(volume.path("a"), 0o600)
    assert stat.S_IMODE(os.stat(volume.path("b")).st_mode) == 0o600


def test_symlinks(volume):
    write_file(volume.path("target"), b"data")
    os.symlink("target", volume.path("rel"))
    os.symlink(volume.path("target"), volume.path("abs"))
    assert os.readlink(volume.path("rel")) == "target"
    assert os.readlink(volume.path("abs")) == volume.path("target")
    st = os.lstat(volume.path("rel"))
    assert stat.S_ISLNK(st.st_mode)
    assert st.st_size == len("target")
    assert read_file(volume.path("rel")) == b"data"
    assert read_file(volume.path("abs")) == b"data"
    assert os.stat(volume.path("rel")).st_ino == os.stat(volume.path("target")).st_ino
    expect_errno(errno.EEXIST, os.symlink, "x", volume.path("rel"))
    expect_errno(errno.EINVAL, os.readlink, volume.path("target"))


def test_dangling_and_long_symlink(volume):
    os.symlink("does/not/exist", volume.path("dang"))
    assert os.path.lexists(volume.path("dang"))
    assert not os.path.exists(volume.path("dang"))
    expect_errno(errno.ENOENT, os.stat, volume.path("dang"))
    assert os.readlink(volume.path("dang")) == "does/not/exist"
    long_target = "/".join(["x" * 200] * 20)  # ~4 KiB
    os.symlink(long_target, volume.path("long"))
    assert os.readlink(volume.path("long")) == long_target
    os.symlink("loop2", volume.path("loop1"))
    os.symlink("loop1", volume.path("loop2"))
    expect_errno(errno.ELOOP, os.stat, volume.path("loop1"))
    volume.remount()
    assert os.readlink(volume.path("long")) == long_target
    assert os.readlink(volume.path("dang")) == "does/not/exist"


def test_symlink_to_directory(volume):
    os.makedirs(volume.path("real", "inner"))
    os.symlink("real", volume.path("ln"))
    assert listdir(volume.path("ln")) == ["inner"]
    write_file(volume.path("ln", "inner", "f"), b"via link")
    assert read_file(volume.path("real", "inner", "f")) == b"via link"
    os.unlink(volume.path("ln"))
    assert os.path.isdir(volume.path("real"))


# --------------------------------------------------------------------------- rename


def test_rename_file_over_file(volume):
    a, b = volume.path("a"), volume.path("b")
    write_file(a, b"AAA")
    write_file(b, b"BBBBBB")
    ino_a = os.stat(a).st_ino
    os.rename(a, b)
    assert not os.path.exists(a)
    assert read_file(b) == b"AAA"
    assert os.stat(b).st_ino == ino_a
    assert listdir(volume.mnt) == ["b"]


def test_rename_over_file_kept_open(volume):
    a, b = volume.path("a"), volume.path("b")
    write_file(a, b"new")
    write_file(b, b"old contents")
    fd = os.open(b, os.O_RDONLY)
    try:
        os.rename(a, b)
        assert os.pread(fd, 100, 0) == b"old contents"
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    assert read_file(b) == b"new"


def test_rename_across_dirs_and_dotdot(volume):
    os.makedirs(volume.path("p1", "moving", "deep"))
    os.mkdir(volume.path("p2"))
    write_file(volume.path("p1", "moving", "deep", "f"), b"f")
    os.rename(volume.path("p1", "moving"), volume.path("p2", "moved"))
    assert listdir(volume.path("p1")) == []
    assert read_file(volume.path("p2", "moved", "deep", "f")) == b"f"
    assert (os.stat(volume.path("p2", "moved", "..")).st_ino
            == os.stat(volume.path("p2")).st_ino)
    assert os.stat(volume.path("p1")).st_nlink == 2
    assert os.stat(volume.path("p2")).st_nlink == 3
    volume.remount()
    assert read_file(volume.path("p2", "moved", "deep", "f")) == b"f"
    assert os.stat(volume.path("p1")).st_nlink == 2
    assert os.stat(volume.path("p2")).st_nlink == 3


def test_rename_dir_over_empty_dir(volume):
    os.mkdir(volume.path("src"))
    write_file(volume.path("src", "f"), b"1")
    os.mkdir(volume.path("dst"))
    os.rename(volume.path("src"), volume.path("dst"))
    assert not os.path.exists(volume.path("src"))
    assert read_file(volume.path("dst", "f")) == b"1"
    assert os.stat(volume.mnt).st_nlink == 3


def test_rename_dir_over_nonempty_dir(volume):
    os.mkdir(volume.path("src"))
    os.mkdir(volume.path("dst"))
    write_file(volume.path("dst", "keep"), b"keep")
    expect_errno(errno.ENOTEMPTY, os.rename, volume.path("src"), volume.path("dst"))
    assert read_file(volume.path("dst", "keep")) == b"keep"
    assert os.path.isdir(volume.path("src"))


def test_rename_type_mismatch_and_bad(volume):
    os.mkdir(volume.path("d"))
    write_file(volume.path("f"), b"x")
    expect_errno(errno.EISDIR, os.rename, volume.path("f"), volume.path("d"))
    expect_errno(errno.ENOTDIR, os.rename, volume.path("d"), volume.path("f"))
    expect_errno(errno.EINVAL, os.rename, volume.path("d"), volume.path("d", "sub"))
    expect_errno(errno.ENOENT, os.rename, volume.path("nope"), volume.path("x"))
    os.rename(volume.path("f"), volume.path("f"))  # same name: no-op
    assert read_file(volume.path("f")) == b"x"


def test_rename_hardlink_onto_itself(volume):
    write_file(volume.path("a"), b"x")
    os.link(volume.path("a"), volume.path("b"))
    os.rename(volume.path("a"), volume.path("b"))  # POSIX: do nothing, both names remain
    assert os.path.exists(volume.path("a")) and os.path.exists(volume.path("b"))
    assert os.stat(volume.path("b")).st_nlink == 2


def test_renameat2_noreplace(volume):
    write_file(volume.path("a"), b"a")
    write_file(volume.path("b"), b"b")
    expect_errno(errno.EEXIST, renameat2, volume.path("a"), volume.path("b"), RENAME_NOREPLACE)
    assert read_file(volume.path("a")) == b"a" and read_file(volume.path("b")) == b"b"
    renameat2(volume.path("a"), volume.path("c"), RENAME_NOREPLACE)
    assert not os.path.exists(volume.path("a"))
    assert read_file(volume.path("c")) == b"a"


def test_renameat2_exchange(volume):
    write_file(volume.path("a"), b"AAAA")
    os.mkdir(volume.path("d"))
    write_file(volume.path("d", "inner"), b"in")
    ino_a, ino_d = os.stat(volume.path("a")).st_ino, os.stat(volume.path("d")).st_ino
    renameat2(volume.path("a"), volume.path("d"), RENAME_EXCHANGE)
    assert os.path.isdir(volume.path("a"))
    assert read_file(volume.path("a", "inner")) == b"in"
    assert read_file(volume.path("d")) == b"AAAA"
    assert os.stat(volume.path("a")).st_ino == ino_d
    assert os.stat(volume.path("d")).st_ino == ino_a
    expect_errno(errno.ENOENT, renameat2, volume.path("d"), volume.path("missing"),
                 RENAME_EXCHANGE)
    volume.remount()
    assert read_file(volume.path("a", "inner")) == b"in"
    assert read_file(volume.path("d")) == b"AAAA"


# --------------------------------------------------------------------------- unlink open file


def test_unlink_open_file(volume):
    p = volume.path("open")
    data = os.urandom(2 * MiB + 17)
    write_file(p, data)
    fd = os.open(p, os.O_RDWR)
    try:
        os.unlink(p)
        assert not os.path.exists(p)
        st = os.fstat(fd)
        assert st.st_nlink == 0
        assert st.st_size == len(data)
        assert os.pread(fd, len(data) + 10, 0) == data
        pwrite_all(fd, b"more", len(data))
        os.fsync(fd)
        assert os.pread(fd, 4, len(data)) == b"more"
        assert os.fstat(fd).st_size == len(data) + 4
        write_file(p, b"a new file with the same name")
        assert os.pread(fd, 16, 0) == data[:16]
    finally:
        os.close(fd)
    assert read_file(p) == b"a new file with the same name"


def test_unlink_open_file_from_other_process(volume):
    """The holder is another process; data stays readable until its last close."""
    p = volume.path("held")
    data = os.urandom(100000)
    write_file(p, data)
    code = ("import os,sys,hashlib\nfd=os.open(sys.argv[1],os.O_RDONLY)\nprint('open',flush=True)\n"
            "sys.stdin.readline()\nprint(hashlib.sha256(os.pread(fd,1<<20,0)).hexdigest(),"
            "os.fstat(fd).st_nlink,flush=True)\n")
    proc = subprocess.Popen([PY, "-c", code, p], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "open"
        os.unlink(p)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out = proc.stdout.readline().split()
        assert out == [hashlib.sha256(data).hexdigest(), "0"]
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- attributes


def test_chmod(volume):
    p = volume.path("f")
    write_file(p, b"x")
    for mode in (0o000, 0o4755, 0o2711, 0o1777, 0o640):
        os.chmod(p, mode)
        assert stat.S_IMODE(os.stat(p).st_mode) == mode
    os.mkdir(volume.path("d"))
    os.chmod(volume.path("d"), 0o1733)
    assert stat.S_IMODE(os.stat(volume.path("d")).st_mode) == 0o1733


def test_chown(volume):
    p = volume.path("f")
    write_file(p, b"x")
    os.chown(p, 12345, 54321)
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (12345, 54321)
    os.chown(p, -1, 777)
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (12345, 777)
    os.symlink("f", volume.path("l"))
    os.lchown(volume.path("l"), 4242, 4343)
    assert (os.lstat(volume.path("l")).st_uid, os.lstat(volume.path("l")).st_gid) == (4242, 4343)
    assert os.stat(p).st_uid == 12345


def test_chown_clears_setuid(volume):
    p = volume.path("f")
    write_file(p, b"x")
    os.chmod(p, 0o6755)
    os.chown(p, 1000, 1000)
    # Linux clears S_ISUID (and S_ISGID when group-exec) on chown of a regular file
    assert stat.S_IMODE(os.stat(p).st_mode) & 0o6000 == 0
    # ... also on chown(f, -1, -1), and S_ISGID without group-exec stays
    os.chmod(p, 0o6745)
    os.chown(p, -1, -1)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o2745


def test_utimens_nanoseconds(volume):
    p = volume.path("f")
    write_file(p, b"x")
    at, mt = 1_234_567_890_123_456_789, 1_300_000_000_987_654_321
    os.utime(p, ns=(at, mt))
    st = os.stat(p)
    assert st.st_atime_ns == at and st.st_mtime_ns == mt
    os.mkdir(volume.path("d"))
    os.utime(volume.path("d"), ns=(5, 999_999_999))
    st = os.stat(volume.path("d"))
    assert st.st_atime_ns == 5 and st.st_mtime_ns == 999_999_999
    os.symlink("f", volume.path("l"))
    os.utime(volume.path("l"), ns=(7_000_000_001, 8_000_000_002), follow_symlinks=False)
    st = os.lstat(volume.path("l"))
    assert st.st_mtime_ns == 8_000_000_002
    volume.remount()
    st = os.stat(p)
    assert st.st_atime_ns == at and st.st_mtime_ns == mt
    assert os.stat(volume.path("d")).st_mtime_ns == 999_999_999


def test_attributes_survive_remount(volume):
    p = volume.path("f")
    write_file(p, b"abc")
    os.chmod(p, 0o4710)
    os.chown(p, 1111, 2222)
    os.chmod(p, 0o4710)  # chown cleared setuid; set it again
    os.utime(p, ns=(111_000_000_001, 222_000_000_002))
    before = os.stat(p)
    volume.remount()
    after = os.stat(p)
    for f in ("st_mode", "st_uid", "st_gid", "st_size", "st_nlink", "st_ino", "st_mtime_ns",
              "st_atime_ns"):
        assert getattr(after, f) == getattr(before, f), f


def test_times_update_on_write_and_create(volume):
    d = volume.path("d")
    os.mkdir(d)
    os.utime(d, ns=(0, 0))
    p = os.path.join(d, "f")
    write_file(p, b"x")
    assert os.stat(d).st_mtime_ns > 0, "creating an entry must update the directory's mtime"
    os.utime(p, ns=(0, 0))
    st0 = os.stat(p)
    with open(p, "r+b") as f:
        f.write(b"y")
    st1 = os.stat(p)
    assert st1.st_mtime_ns > 0, "write must update mtime"
    assert st1.st_ctime_ns >= st0.st_ctime_ns
    os.utime(d, ns=(0, 0))
    os.unlink(p)
    assert os.stat(d).st_mtime_ns > 0, "unlink must update the directory's mtime"


def test_ctime_changes_on_chmod(volume):
    p = volume.path("f")
    write_file(p, b"x")
    c0 = os.stat(p).st_ctime_ns
    time.sleep(0.02)
    os.chmod(p, 0o600)
    assert os.stat(p).st_ctime_ns > c0


# --------------------------------------------------------------------------- truncate


def test_truncate_down_and_up(volume):
    p = volume.path("t")
    write_file(p, b"A" * 10000)
    os.truncate(p, 100)
    assert os.stat(p).st_size == 100
    assert read_file(p) == b"A" * 100
    os.truncate(p, 20000)
    assert os.stat(p).st_size == 20000
    assert read_file(p) == b"A" * 100 + b"\0" * 19900
    os.truncate(p, 0)
    assert read_file(p) == b""


def test_ftruncate_across_chunks(volume):
    p = volume.path("t")
    data = os.urandom(9 * MiB + 5)
    write_file(p, data)
    fd = os.open(p, os.O_RDWR)
    try:
        cut = 3 * MiB + 4096 + 7
        os.ftruncate(fd, cut)
        assert os.fstat(fd).st_size == cut
        os.ftruncate(fd, len(data))
        got = os.pread(fd, len(data), 0)
        assert got[:cut] == data[:cut]
        assert got[cut:] == bytes(len(data) - cut), "bytes beyond a truncate must read zero"
        # extend by writing past EOF: the gap reads zero
        pwrite_all(fd, b"tail", 20 * MiB)
        assert os.fstat(fd).st_size == 20 * MiB + 4
        assert os.pread(fd, MiB, 12 * MiB) == bytes(MiB)
        os.fsync(fd)
    finally:
        os.close(fd)
    volume.remount()
    got = read_file(p)
    assert len(got) == 20 * MiB + 4
    assert got[:cut] == data[:cut]
    assert got[cut:20 * MiB] == bytes(20 * MiB - cut)
    assert got[20 * MiB:] == b"tail"


def test_open_trunc(volume):
    p = volume.path("t")
    write_file(p, os.urandom(5 * MiB))
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert os.stat(p).st_size == 0
    os.truncate(p, 5 * MiB)
    assert read_file(p) == bytes(5 * MiB)


# --------------------------------------------------------------------------- sparse, seek


def test_sparse_file_reads_zero(volume):
    p = volume.path("sparse")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        pwrite_all(fd, b"start", 0)
        pwrite_all(fd, b"end", 100 * MiB)
        assert os.fstat(fd).st_size == 100 * MiB + 3
        assert os.pread(fd, 5, 0) == b"start"
        assert os.pread(fd, MiB, 50 * MiB) == bytes(MiB)
        assert os.pread(fd, 10, 100 * MiB) == b"end"
        assert os.pread(fd, 10, 200 * MiB) == b""
    finally:
        os.close(fd)


def test_seek_data_hole_semantics(volume):
    """Conformance that holds even for a file system that reports no holes."""
    p = volume.path("sparse")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        pwrite_all(fd, b"x" * 4096, 0)
        pwrite_all(fd, b"y" * 4096, GiB)
        os.fsync(fd)
        size = GiB + 4096
        assert os.lseek(fd, 0, os.SEEK_DATA) == 0
        h = os.lseek(fd, 0, os.SEEK_HOLE)
        assert 4096 <= h <= size
        d = os.lseek(fd, GiB // 2, os.SEEK_DATA)
        assert GiB // 2 <= d <= GiB
        assert os.lseek(fd, GiB + 100, os.SEEK_DATA) == GiB + 100
        assert os.lseek(fd, GiB + 100, os.SEEK_HOLE) == size
        expect_errno(errno.ENXIO, os.lseek, fd, size, os.SEEK_DATA)
        expect_errno(errno.ENXIO, os.lseek, fd, size + 5, os.SEEK_HOLE)
    finally:
        os.close(fd)


def test_seek_hole_reports_real_holes(volume):
    """A 1 GiB gap between two 4 KiB extents must be reported as a hole."""
    p = volume.path("sparse")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        pwrite_all(fd, b"x" * 4096, 0)
        pwrite_all(fd, b"y" * 4096, GiB)
        os.fsync(fd)
        h = os.lseek(fd, 0, os.SEEK_HOLE)
        assert h < GiB, f"SEEK_HOLE from 0 returned {h}: the 1 GiB gap is not reported"
        d = os.lseek(fd, h, os.SEEK_DATA)
        assert h < d <= GiB
        assert os.lseek(fd, GiB // 2, os.SEEK_DATA) > GiB // 2
    finally:
        os.close(fd)


def test_file_above_4gib(volume):
    p = volume.path("big")
    off = 5 * GiB
    payload = os.urandom(MiB + 333)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        pwrite_all(fd, payload, off)
        os.fsync(fd)
        assert os.fstat(fd).st_size == off + len(payload)
        assert os.pread(fd, len(payload), off) == payload
        assert os.pread(fd, 4096, 4 * GiB - 2048) == bytes(4096)
        assert os.pread(fd, 4096, 0) == bytes(4096)
    finally:
        os.close(fd)
    volume.remount()
    assert os.stat(p).st_size == off + len(payload)
    with open(p, "rb") as f:
        f.seek(off)
        assert f.read() == payload
    used = sum(os.stat(os.path.join(dp, n)).st_blocks * 512
               for t in volume.target_dirs for dp, _, fns in os.walk(t) for n in fns)
    assert used < 256 * MiB, f"a sparse 5 GiB file uses {used} bytes on the targets"


# --------------------------------------------------------------------------- append, direct


def test_o_append_two_fds(volume):
    p = volume.path("log")
    write_file(p, b"")
    fa = os.open(p, os.O_WRONLY | os.O_APPEND)
    fb = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        for i in range(50):
            os.write(fa, b"a" * 100)
            os.write(fb, b"b" * 100)
    finally:
        os.close(fa)
        os.close(fb)
    assert read_file(p) == (b"a" * 100 + b"b" * 100) * 50


def test_o_append_two_processes(volume):
    p = volume.path("log")
    write_file(p, b"")
    code = ("import os,sys\nfd=os.open(sys.argv[1],os.O_WRONLY|os.O_APPEND)\n"
            "for i in range(2000): os.write(fd, (sys.argv[2]*63+'\\n').encode())\n")
    procs = [subprocess.Popen([PY, "-c", code, p, c]) for c in "xy"]
    for pr in procs:
        assert pr.wait(timeout=120) == 0
    lines = read_file(p).split(b"\n")
    assert lines[-1] == b""
    lines = lines[:-1]
    assert len(lines) == 4000
    assert lines.count(b"x" * 63) == 2000 and lines.count(b"y" * 63) == 2000


def test_o_direct(volume):
    p = volume.path("direct")
    n = MiB
    wbuf = mmap.mmap(-1, n)
    wbuf.write(os.urandom(n))
    rbuf = mmap.mmap(-1, n)
    try:
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
    except OSError as e:
        pytest.fail(f"open(O_DIRECT) failed: {e}")
    try:
        assert os.pwrite(fd, wbuf, 0) == n
        assert os.pwrite(fd, wbuf, 4 * MiB) == n
        os.fsync(fd)
        assert os.preadv(fd, [rbuf], 4 * MiB) == n
        assert rbuf[:] == wbuf[:]
        assert os.fstat(fd).st_size == 5 * MiB
    finally:
        os.close(fd)
    # coherence with the page cache both ways
    with open(p, "rb") as f:
        assert f.read(n) == wbuf[:]
    with open(p, "r+b") as f:
        f.seek(8192)
        f.write(b"Z" * 4096)
    fd = os.open(p, os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.preadv(fd, [rbuf], 0) == n
        assert rbuf[8192:12288] == b"Z" * 4096
        assert rbuf[:8192] == wbuf[:8192]
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- fallocate


def test_posix_fallocate(volume):
    p = volume.path("fa")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, 10 * MiB)
        assert os.fstat(fd).st_size == 10 * MiB
        assert os.pread(fd, 10 * MiB, 0) == bytes(10 * MiB)
        pwrite_all(fd, b"abc", 5)
        os.posix_fallocate(fd, 0, MiB)  # inside the file: size and data unchanged
        assert os.fstat(fd).st_size == 10 * MiB
        assert os.pread(fd, 3, 5) == b"abc"
    finally:
        os.close(fd)


def test_fallocate_keep_size(volume):
    p = volume.path("fa")
    write_file(p, b"x" * 100)
    fd = os.open(p, os.O_RDWR)
    try:
        fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 8 * MiB)
        assert os.fstat(fd).st_size == 100
        assert os.pread(fd, 200, 0) == b"x" * 100
    finally:
        os.close(fd)


def test_fallocate_punch_hole(volume):
    p = volume.path("punch")
    data = bytearray(os.urandom(6 * MiB))
    write_file(p, bytes(data))
    fd = os.open(p, os.O_RDWR)
    try:
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, MiB + 100, 3 * MiB)
        data[MiB + 100:4 * MiB + 100] = bytes(3 * MiB)
        assert os.fstat(fd).st_size == 6 * MiB
        assert os.pread(fd, 6 * MiB, 0) == bytes(data)
        os.fsync(fd)
    finally:
        os.close(fd)
    volume.remount()
    assert read_file(p) == bytes(data)


# --------------------------------------------------------------------------- xattrs


def test_xattrs(volume):
    p = volume.path("x")
    write_file(p, b"")
    os.setxattr(p, "user.a", b"1")
    os.setxattr(p, "user.big", b"\x00\xff" * 2000)
    assert os.getxattr(p, "user.a") == b"1"
    assert os.getxattr(p, "user.big") == b"\x00\xff" * 2000
    assert set(os.listxattr(p)) >= {"user.a", "user.big"}
    expect_errno(errno.EEXIST, os.setxattr, p, "user.a", b"2", os.XATTR_CREATE)
    expect_errno(errno.ENODATA, os.setxattr, p, "user.missing", b"2", os.XATTR_REPLACE)
    os.setxattr(p, "user.a", b"22", os.XATTR_REPLACE)
    assert os.getxattr(p, "user.a") == b"22"
    os.setxattr(p, "user.new", b"", os.XATTR_CREATE)
    assert os.getxattr(p, "user.new") == b""
    os.removexattr(p, "user.a")
    expect_errno(errno.ENODATA, os.getxattr, p, "user.a")
    expect_errno(errno.ENODATA, os.removexattr, p, "user.a")
    assert "user.a" not in os.listxattr(p)
    volume.remount()
    assert os.getxattr(p, "user.big") == b"\x00\xff" * 2000
    assert set(os.listxattr(p)) >= {"user.big", "user.new"}


def test_xattrs_dirs_trusted_and_symlinks(volume):
    os.mkdir(volume.path("d"))
    os.setxattr(volume.path("d"), "user.d", b"dir")
    assert os.getxattr(volume.path("d"), "user.d") == b"dir"
    write_file(volume.path("f"), b"")
    os.setxattr(volume.path("f"), "trusted.t", b"root only")
    assert os.getxattr(volume.path("f"), "trusted.t") == b"root only"
    os.symlink("f", volume.path("l"))
    # user.* xattrs are not allowed on symlinks (VFS rule)
    expect_errno(errno.EPERM, os.setxattr, volume.path("l"), "user.x", b"1",
                 follow_symlinks=False)
    # xattrs go with the inode across rename and hard link
    os.rename(volume.path("f"), volume.path("g"))
    os.link(volume.path("g"), volume.path("h"))
    assert os.getxattr(volume.path("h"), "trusted.t") == b"root only"


# --------------------------------------------------------------------------- locks

_FLOCK_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""

_LOCKF_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX, 100, 0)   # bytes 0..99
fcntl.lockf(fd, fcntl.LOCK_SH, 100, 1000)  # bytes 1000..1099 shared
print("locked", flush=True)
time.sleep(600)
"""


def _retry(fn, timeout=10):
    end = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def test_flock_conflict_and_release_on_kill(volume):
    p = volume.path("lock")
    write_file(p, b"")
    holder = spawn_py(_FLOCK_HOLDER, p)
    try:
        wait_line(holder, "locked")
        fd = os.open(p, os.O_RDWR)
        try:
            expect_errno((errno.EWOULDBLOCK, errno.EAGAIN), fcntl.flock, fd,
                         fcntl.LOCK_EX | fcntl.LOCK_NB)
            expect_errno((errno.EWOULDBLOCK, errno.EAGAIN), fcntl.flock, fd,
                         fcntl.LOCK_SH | fcntl.LOCK_NB)
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=10)
            _retry(lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB))
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    finally:
        holder.kill()
        holder.wait()


def test_flock_shared_locks_coexist(volume):
    p = volume.path("lock")
    write_file(p, b"")
    a, b = os.open(p, os.O_RDONLY), os.open(p, os.O_RDONLY)
    try:
        fcntl.flock(a, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(b, fcntl.LOCK_SH | fcntl.LOCK_NB)
        expect_errno((errno.EWOULDBLOCK, errno.EAGAIN), fcntl.flock, b,
                     fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(a, fcntl.LOCK_UN)
        fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(a)
        os.close(b)


def _getlk(fd, ltype, start, length):
    # struct flock on x86_64: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
    fmt = "hhxxxxqqixxxx"
    buf = struct.pack(fmt, ltype, os.SEEK_SET, start, length, 0)
    r = fcntl.fcntl(fd, fcntl.F_GETLK, buf)
    t, _, s, ln, pid = struct.unpack(fmt, r)
    return t, s, ln, pid


def test_posix_record_locks(volume):
    p = volume.path("db")
    write_file(p, bytes(4096))
    holder = spawn_py(_LOCKF_HOLDER, p)
    try:
        wait_line(holder, "locked")
        fd = os.open(p, os.O_RDWR)
        try:
            expect_errno((errno.EAGAIN, errno.EACCES), fcntl.lockf, fd,
                         fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 50)
            expect_errno((errno.EAGAIN, errno.EACCES), fcntl.lockf, fd,
                         fcntl.LOCK_SH | fcntl.LOCK_NB, 1, 99)
            # outside the holder's ranges: free
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 200)
            # shared range: shared lock ok, exclusive refused
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 50, 1020)
            expect_errno((errno.EAGAIN, errno.EACCES), fcntl.lockf, fd,
                         fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 1050)
            t, s, ln, pid = _getlk(fd, fcntl.F_WRLCK, 0, 10)
            assert t == fcntl.F_WRLCK and s == 0 and ln == 100
            assert pid == holder.pid, f"F_GETLK reports pid {pid}, holder is {holder.pid}"
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=10)
            _retry(lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 0))
            _retry(lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 1000))
            t, _, _, _ = _getlk(fd, fcntl.F_WRLCK, 0, 0)
            assert t == fcntl.F_UNLCK  # only our own locks remain
        finally:
            os.close(fd)
    finally:
        holder.kill()
        holder.wait()


def test_posix_lock_blocking_wait(volume):
    """F_SETLKW waits until the holder releases."""
    p = volume.path("db")
    write_file(p, bytes(100))
    fd = os.open(p, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX, 0, 0)
        code = ("import fcntl,os,sys,time\nfd=os.open(sys.argv[1],os.O_RDWR)\nt=time.monotonic()\n"
                "print('start',flush=True)\nfcntl.lockf(fd,fcntl.LOCK_EX,0,0)\n"
                "print('got',flush=True)\n")
        waiter = spawn_py(code, p)
        try:
            wait_line(waiter, "start")
            time.sleep(0.5)
            assert waiter.poll() is None, "waiter got the lock while we hold it"
            fcntl.lockf(fd, fcntl.LOCK_UN, 0, 0)
            wait_line(waiter, "got", timeout=20)
        finally:
            waiter.kill()
            waiter.wait()
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- special files


def test_fifo(volume):
    p = volume.path("fifo")
    os.mkfifo(p, 0o644)
    assert stat.S_ISFIFO(os.stat(p).st_mode)
    writer = subprocess.Popen([PY, "-c", "import sys\nopen(sys.argv[1],'w').write('through the fifo')",
                               p])
    try:
        with open(p) as f:
            assert f.read() == "through the fifo"
        assert writer.wait(timeout=20) == 0
    finally:
        writer.kill()
        writer.wait()
    volume.remount()
    assert stat.S_ISFIFO(os.stat(p).st_mode)


def test_device_nodes(volume):
    c = volume.path("chr")
    b = volume.path("blk")
    os.mknod(c, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(b, stat.S_IFBLK | 0o600, os.makedev(7, 200))
    st = os.stat(c)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    st = os.stat(b)
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(7, 200)
    os.mknod(volume.path("reg"), stat.S_IFREG | 0o640)
    assert stat.S_ISREG(os.stat(volume.path("reg")).st_mode)
    volume.remount()
    assert os.stat(c).st_rdev == os.makedev(1, 3)
    assert os.stat(b).st_rdev == os.makedev(7, 200)


# --------------------------------------------------------------------------- statfs, fsync


def test_statvfs(volume):
    s = os.statvfs(volume.mnt)
    assert s.f_bsize > 0 and s.f_frsize > 0
    assert s.f_blocks > 0
    assert 0 <= s.f_bavail <= s.f_bfree <= s.f_blocks
    assert s.f_namemax >= 255
    assert s.f_files == 0 or s.f_ffree <= s.f_files
    total = s.f_blocks * s.f_frsize
    assert total >= 64 * MiB, f"statvfs total {total} bytes is not sane"
    # not more than the targets' file system could ever give
    t = os.statvfs(volume.target_dirs[0])
    assert total <= 2 * t.f_blocks * t.f_frsize + GiB


def test_fsync_fdatasync_files_and_dirs(volume):
    os.mkdir(volume.path("d"))
    p = volume.path("d", "f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, os.urandom(300000))
        os.fsync(fd)
        os.write(fd, b"x")
        os.fdatasync(fd)
    finally:
        os.close(fd)
    for d in (volume.path("d"), volume.mnt):
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
            os.fdatasync(dfd)
        finally:
            os.close(dfd)
    fd = os.open(p, os.O_RDONLY)  # fsync on a read-only fd is allowed
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.sync()
    assert os.stat(p).st_size == 300001


def test_syncfs(volume):
    write_file(volume.path("f"), b"x" * 100000)
    fd = os.open(volume.mnt, os.O_RDONLY)
    try:
        import ctypes
        lib = ctypes.CDLL(None, use_errno=True)
        assert lib.syncfs(fd) == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- big directory


def _make_entries(d, n):
    for i in range(n):
        os.close(os.open(os.path.join(d, f"entry-{i:06d}"), os.O_CREAT | os.O_WRONLY, 0o644))


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_directory_100k_entries(volume):
    n = 100_000
    d = volume.path("big")
    os.mkdir(d)
    _make_entries(d, n)
    names = [e.name for e in os.scandir(d)]
    assert len(names) == n, f"readdir returned {len(names)} entries for {n}"
    assert len(set(names)) == n, "readdir returned duplicates"
    assert set(names) == {f"entry-{i:06d}" for i in range(n)}
    # delete while listing: no name may come twice, every name that stayed must come
    seen, deleted_unseen = set(), set()
    pending = sorted(names)
    hi = len(pending) - 1  # victims are taken from the high end, mostly not yet listed
    with os.scandir(d) as it:
        for e in it:
            assert e.name not in seen, f"{e.name} returned twice while deleting"
            seen.add(e.name)
            if e.name not in deleted_unseen:  # may still come from an already-read batch
                os.unlink(e.path)
            while hi >= 0 and pending[hi] in seen:
                hi -= 1
            if hi >= 0:
                v = pending[hi]
                hi -= 1
                os.unlink(os.path.join(d, v))
                deleted_unseen.add(v)
    stayed = set(names) - deleted_unseen
    missing = stayed - seen
    assert not missing, (f"{len(missing)} entries never returned although not deleted, e.g. "
                         f"{sorted(missing)[:5]}")
    assert listdir(d) == [], "entries left after deleting every listed one"
    os.rmdir(d)
    assert not os.path.exists(d)


def test_directory_2000_entries_quick(volume):
    d = volume.path("mid")
    os.mkdir(d)
    _make_entries(d, 2000)
    names = listdir(d)
    assert len(names) == 2000 == len(set(names))
    with os.scandir(d) as it:
        seen = []
        for e in it:
            seen.append(e.name)
            os.unlink(e.path)
    assert len(seen) == len(set(seen)), "duplicates while deleting during readdir"
    assert sorted(seen) == sorted(names)
    os.rmdir(d)


# --------------------------------------------------------------------------- mmap


def test_mmap_shared_write(volume):
    p = volume.path("m")
    size = 3 * MiB
    write_file(p, bytes(size))
    payload = os.urandom(MiB)
    with open(p, "r+b") as f:
        m = mmap.mmap(f.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        m[MiB:2 * MiB] = payload
        m[0:5] = b"HELLO"
        m.flush()
        m.close()
    got = read_file(p)
    assert got[:5] == b"HELLO" and got[MiB:2 * MiB] == payload
    fd = os.open(p, os.O_RDONLY)
    try:
        assert os.pread(fd, MiB, MiB) == payload
    finally:
        os.close(fd)
    volume.remount()
    got = read_file(p)
    assert got[:5] == b"HELLO" and got[MiB:2 * MiB] == payload and len(got) == size


def test_mmap_sees_write(volume):
    p = volume.path("m")
    write_file(p, bytes(8192))
    with open(p, "r+b") as f:
        m = mmap.mmap(f.fileno(), 8192, mmap.MAP_SHARED, mmap.PROT_READ)
        os.pwrite(f.fileno(), b"written", 4096)
        assert m[4096:4103] == b"written"
        m.close()


# --------------------------------------------------------------------------- bulk data


def test_1mib_random_io_hash(volume):
    rng = random.Random(1234)
    p = volume.path("bulk")
    h = hashlib.sha256()
    chunks = []
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for _ in range(32):
            b = rand_bytes(rng, MiB)
            h.update(b)
            chunks.append(hashlib.sha256(b).hexdigest())
            assert os.write(fd, b) == MiB
        os.fsync(fd)
    finally:
        os.close(fd)
    want = h.hexdigest()
    assert sha256_file(p) == want
    drop_caches()
    fd = os.open(p, os.O_RDONLY)
    try:
        for i, ch in enumerate(chunks):
            assert hashlib.sha256(os.pread(fd, MiB, i * MiB)).hexdigest() == ch, f"MiB {i}"
    finally:
        os.close(fd)
    volume.remount()
    assert sha256_file(p) == want


def test_unaligned_overwrites_match_model(volume):
    rng = random.Random(99)
    p = volume.path("model")
    model = bytearray()
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for _ in range(300):
            off = rng.randrange(0, 6 * MiB)
            n = rng.choice([1, 7, 511, 4095, 4097, 65537, 300000])
            b = rand_bytes(rng, n)
            pwrite_all(fd, b, off)
            if len(model) < off + n:
                model.extend(bytes(off + n - len(model)))
            model[off:off + n] = b
        assert os.fstat(fd).st_size == len(model)
        assert os.pread(fd, len(model) + 1, 0) == bytes(model)
        os.fsync(fd)
    finally:
        os.close(fd)
    volume.remount()
    assert read_file(p) == bytes(model)


def test_copy_tree_and_diff(volume):
    src = "/usr/include/linux"
    if not os.path.isdir(src):
        pytest.skip("no /usr/include/linux")
    dst = volume.path("linux")
    subprocess.run(["cp", "-a", src, dst], check=True, timeout=600)
    r = subprocess.run(["diff", "-r", "--no-dereference", src, dst], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[:2000] + r.stderr[:2000]
    a, b = tree_digest(src), tree_digest(dst)
    assert a == b
    volume.remount()
    assert tree_digest(dst) == a
    subprocess.run(["rm", "-rf", dst], check=True, timeout=600)
    assert listdir(volume.mnt) == []


def test_many_files_nested(volume):
    root = volume.path("n")
    expect = {}
    for i in range(20):
        for j in range(10):
            d = os.path.join(root, f"d{i}", f"e{j}")
            os.makedirs(d, exist_ok=True)
            for k in range(5):
                data = f"{i}/{j}/{k}".encode() * (k * 100 + 1)
                write_file(os.path.join(d, f"f{k}"), data)
                expect[os.path.join(d, f"f{k}")] = data
    volume.remount()
    for p, data in expect.items():
        assert read_file(p) == data
    assert sum(len(fns) for _, _, fns in os.walk(root)) == len(expect)


def test_posix_acl_mode_consistency(volume):
    """An access ACL (what `cp -a` and `setfacl` write) must agree with the mode, or the
    file system must refuse ACLs (EOPNOTSUPP) so tools fall back to chmod."""
    import shutil
    if not shutil.which("setfacl"):
        pytest.skip("setfacl missing (Debian package acl)")
    p = volume.path("acl")
    write_file(p, b"x", mode=0o600)
    os.chmod(p, 0o600)
    r = subprocess.run(["setfacl", "-m", "u::rwx,g::r-x,o::r--", p], capture_output=True,
                       text=True)
    if r.returncode != 0:
        assert "not supported" in r.stderr, r.stderr
        return
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o754, \
        f"setfacl succeeded but the mode is {stat.S_IMODE(os.stat(p).st_mode):o}, not 754"
    os.chmod(p, 0o640)
    out = subprocess.run(["getfacl", "-cp", p], capture_output=True, text=True).stdout
    assert "user::rw-" in out and "group::r--" in out and "other::---" in out, out


_WORKER = r"""
import hashlib, json, os, random, sys
root, wid = sys.argv[1], int(sys.argv[2])
rng = random.Random(wid)
mine = os.path.join(root, f"w{wid}")
shared = os.path.join(root, "shared")
os.makedirs(mine, exist_ok=True)
final = {}
for i in range(150):
    data = rng.randbytes(rng.choice([0, 1, 4095, 70000, 300000]))
    tmp = os.path.join(mine, f"tmp{i}")
    with open(tmp, "wb") as f:
        f.write(data)
    with open(tmp, "rb") as f:
        if f.read() != data:
            print("MISMATCH", tmp, flush=True); sys.exit(1)
    dst = os.path.join(mine, f"f{i % 20}")
    os.rename(tmp, dst)
    final[dst] = hashlib.sha256(data).hexdigest()
    sh = os.path.join(shared, f"s{wid}.{i}")
    os.close(os.open(sh, os.O_CREAT | os.O_WRONLY, 0o644))
    names = os.listdir(shared)
    if len(names) != len(set(names)) or f"s{wid}.{i}" not in names:
        print("READDIR", flush=True); sys.exit(1)
    if i % 3 == 0:
        os.unlink(sh)
    d = os.path.join(mine, f"d{i}")
    os.mkdir(d); os.rmdir(d)
print(json.dumps(final), flush=True)
"""


def test_concurrent_mixed_workload(volume):
    import json
    os.mkdir(volume.path("shared"))
    procs = [subprocess.Popen([PY, "-c", _WORKER, volume.mnt, str(w)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for w in range(6)]
    finals = {}
    for p in procs:
        out, err = p.communicate(timeout=280)
        assert p.returncode == 0, f"worker failed: {out[-500:]} {err[-1500:]}"
        finals.update(json.loads(out.strip().splitlines()[-1]))
    shared = listdir(volume.path("shared"))
    assert len(shared) == 6 * 100
    volume.remount()
    for path, h in finals.items():
        assert sha256_file(path) == h, path
    for w in range(6):
        assert sorted(listdir(volume.path(f"w{w}"))) == sorted(f"f{i}" for i in range(20))


def test_chown_unchanged_owner_updates_ctime(volume):
    """chown(f, -1, -1) changes nothing but ctime, as on ext4 (the kernel sends FUSE a
    SETATTR with no field set)."""
    p = volume.path("ct")
    write_file(p, b"x")
    before = os.stat(p).st_ctime_ns
    time.sleep(0.02)
    os.chown(p, -1, -1)
    assert os.stat(p).st_ctime_ns > before
