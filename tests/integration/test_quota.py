"""Directory quotas (META-9, FS-6) on a real mount: EDQUOT at the limit, df inside shows the
quota, raising the limit, usage after remount and after kill -9, EXDEV across roots,
truncate/unlink free usage, the inode limit, the CLI."""

import errno
import os
import subprocess
import time

import pytest

from conftest import braidfs, expect_errno

XATTR = "trusted.braidfs.quota"
MiB = 1 << 20


def set_quota(path, value):
    os.setxattr(path, XATTR, str(value).encode())


def quota(path):
    """The quota xattr as a dict of ints."""
    raw = os.getxattr(path, XATTR).decode()
    return {k: int(v) for k, v in (kv.split("=") for kv in raw.split())}


def wait_usage(path, key, want, timeout=20):
    """An unlinked inode counts until the kernel forgets it (an async FORGET) and it is
    purged: wait for the usage to reach want."""
    end = time.time() + timeout
    while time.time() < end and quota(path)[key] != want:
        time.sleep(0.05)
    assert quota(path)[key] == want, f"{key} of {path}: {quota(path)[key]}, expected {want}"


def fill(path, limit_hint, bs=MiB):
    """Write bs blocks until the file system refuses; return (bytes written, errno)."""
    written = 0
    buf = b"\xab" * bs
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while written <= 4 * limit_hint:
            try:
                n = os.write(fd, buf)
            except OSError as e:
                return written, e.errno
            written += n
            if n < bs:  # a short write at the limit; the next one says why
                continue
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    return written, 0


def test_edquot_at_the_limit_and_df(volume):
    vol = volume.path("vol")
    os.mkdir(vol)
    set_quota(vol, 10 * MiB)
    st = os.statvfs(vol)
    assert st.f_blocks * st.f_frsize == 10 * MiB
    assert st.f_bavail * st.f_frsize == 10 * MiB
    # dd until failure: everything written fits, and the error is EDQUOT
    written, err = fill(os.path.join(vol, "f"), 10 * MiB)
    assert err == errno.EDQUOT
    assert written <= 10 * MiB
    assert written >= 10 * MiB - 128 * 1024  # no quota leaked by the reservations
    assert os.path.getsize(os.path.join(vol, "f")) == written
    st = os.statvfs(vol)
    assert st.f_bavail * st.f_frsize == 10 * MiB - written
    q = quota(vol)
    assert q["bytes_used"] == written and q["inodes_used"] == 1
    # a second file gets nothing more
    written2, err = fill(os.path.join(vol, "g"), 10 * MiB)
    assert err == errno.EDQUOT and written + written2 <= 10 * MiB
    # outside the root: the whole file system, no limit
    st = os.statvfs(volume.mnt)
    assert st.f_blocks * st.f_frsize != 10 * MiB
    with open(volume.path("outside"), "wb") as f:
        f.write(b"x" * (12 * MiB))


def test_expansion_raises_the_limit(volume):
    vol = volume.path("vol")
    os.mkdir(vol)
    set_quota(vol, 4 * MiB)
    written, err = fill(os.path.join(vol, "f"), 4 * MiB)
    assert err == errno.EDQUOT and written <= 4 * MiB
    set_quota(vol, 8 * MiB)
    st = os.statvfs(vol)
    assert st.f_blocks * st.f_frsize == 8 * MiB
    with open(os.path.join(vol, "f"), "ab") as f:
        f.write(b"y" * (3 * MiB))
    assert quota(vol)["bytes_limit"] == 8 * MiB


def test_usage_after_remount_and_crash(volume):
    vol = volume.path("vol")
    os.mkdir(vol)
    set_quota(vol, f"{64 * MiB}:100")
    os.mkdir(os.path.join(vol, "sub"))
    with open(os.path.join(vol, "sub", "a"), "wb") as f:
        f.write(b"a" * 3_000_000)
    with open(os.path.join(vol, "b"), "wb") as f:
        f.write(b"b" * 12345)
    before = quota(vol)
    assert before["bytes_used"] == 3_012_345 and before["inodes_used"] == 3
    volume.remount()
    assert quota(vol) == before
    st = os.statvfs(vol)
    assert st.f_files == 100 and st.f_ffree == 97
    # kill -9 while a file is being extended: recovery drops the reservation, usage exact
    fd = os.open(os.path.join(vol, "c"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"c" * 100_000)
    os.fsync(fd)
    volume.kill9()
    try:
        os.close(fd)
    except OSError:
        pass
    volume.mount()
    q = quota(vol)
    size_c = os.path.getsize(os.path.join(vol, "c"))
    assert size_c == 100_000
    assert q["bytes_used"] == before["bytes_used"] + size_c
    assert q["inodes_used"] == 4
    volume.umount()
    assert "clean" in volume.fsck().stdout
    volume.mount()


def test_exdev_across_roots(volume):
    q1, q2, out = volume.path("q1"), volume.path("q2"), volume.path("out")
    for d in (q1, q2, out):
        os.mkdir(d)
    set_quota(q1, 10 * MiB)
    set_quota(q2, 10 * MiB)
    with open(os.path.join(q1, "f"), "wb") as f:
        f.write(b"f" * 1000)
    with open(os.path.join(out, "o"), "wb") as f:
        f.write(b"o")
    expect_errno(errno.EXDEV, os.rename, os.path.join(q1, "f"), os.path.join(q2, "f"))
    expect_errno(errno.EXDEV, os.rename, os.path.join(q1, "f"), os.path.join(out, "f"))
    expect_errno(errno.EXDEV, os.rename, os.path.join(out, "o"), os.path.join(q1, "o"))
    expect_errno(errno.EXDEV, os.link, os.path.join(q1, "f"), os.path.join(q2, "h"))
    # inside one root: fine
    os.mkdir(os.path.join(q1, "d"))
    os.rename(os.path.join(q1, "f"), os.path.join(q1, "d", "f"))
    # mv falls back to copy + delete, and the accounts follow
    subprocess.run(["mv", os.path.join(q1, "d", "f"), q2], check=True)
    wait_usage(q1, "bytes_used", 0)
    assert quota(q2)["bytes_used"] == 1000


def test_truncate_and_unlink_free_usage(volume):
    vol = volume.path("vol")
    os.mkdir(vol)
    set_quota(vol, 8 * MiB)
    p = os.path.join(vol, "f")
    with open(p, "wb") as f:
        f.write(b"z" * (6 * MiB))
    assert quota(vol)["bytes_used"] == 6 * MiB
    # truncate up past the limit is refused, and changes nothing
    expect_errno(errno.EDQUOT, os.truncate, p, 9 * MiB)
    assert os.path.getsize(p) == 6 * MiB
    os.truncate(p, 1 * MiB)
    assert quota(vol)["bytes_used"] == 1 * MiB
    # fallocate beyond the limit: EDQUOT
    fd = os.open(p, os.O_RDWR)
    try:
        expect_errno(errno.EDQUOT, os.posix_fallocate, fd, 0, 9 * MiB)
        os.posix_fallocate(fd, 0, 2 * MiB)
    finally:
        os.close(fd)
    assert quota(vol)["bytes_used"] == 2 * MiB
    # an unlinked file that is still open keeps its bytes until the last close
    fd = os.open(p, os.O_RDONLY)
    os.unlink(p)
    assert quota(vol)["bytes_used"] == 2 * MiB
    os.close(fd)
    wait_usage(vol, "bytes_used", 0)
    assert quota(vol)["inodes_used"] == 0


def test_inode_limit(volume):
    vol = volume.path("vol")
    os.mkdir(vol)
    set_quota(vol, "0:3")
    for n in ("a", "b"):
        open(os.path.join(vol, n), "w").close()
    os.mkdir(os.path.join(vol, "d"))
    expect_errno(errno.EDQUOT, open, os.path.join(vol, "c"), "w")
    expect_errno(errno.EDQUOT, os.mkdir, os.path.join(vol, "e"))
    os.unlink(os.path.join(vol, "a"))
    wait_usage(vol, "inodes_used", 2)
    open(os.path.join(vol, "c"), "w").close()


def test_xattr_errors(volume, user):
    vol = volume.path("vol")
    os.mkdir(vol)
    open(volume.path("file"), "w").close()
    expect_errno(errno.ENOTDIR, set_quota, volume.path("file"), 100)
    expect_errno(errno.EINVAL, set_quota, vol, "lots")
    expect_errno(errno.EINVAL, set_quota, vol, "1:x")
    expect_errno(errno.ENODATA, os.getxattr, vol, XATTR)
    expect_errno(errno.ENODATA, os.removexattr, vol, XATTR)
    set_quota(vol, "1M")
    os.mkdir(os.path.join(vol, "inner"))
    expect_errno(errno.EINVAL, set_quota, os.path.join(vol, "inner"), 100)  # no nesting
    assert XATTR not in os.listxattr(vol)  # virtual: cp -a must not copy it
    # not for ordinary users (the kernel keeps trusted.* for CAP_SYS_ADMIN)
    r = user.run(["setfattr", "-n", XATTR, "-v", "5", vol])
    assert r.returncode != 0
    os.removexattr(vol, XATTR)
    expect_errno(errno.ENODATA, os.getxattr, vol, XATTR)
    st = os.statvfs(vol)
    assert st.f_blocks * st.f_frsize != 1 * MiB


def test_cli(make_volume):
    v = make_volume(mount=False)
    v.mount()
    os.makedirs(v.path("db1", "base"))
    with open(v.path("db1", "base", "x"), "wb") as f:
        f.write(b"x" * 5000)
    v.umount()
    p = braidfs("quota", "set", v.meta_url, "/db1", "1M", "10")
    assert p.returncode == 0, p.stderr
    assert "5000 of 1048576" in p.stdout
    p = braidfs("quota", "get", v.meta_url, "db1/base")
    assert p.returncode == 0 and "below it" in p.stdout and "2 used of 10" in p.stdout
    p = braidfs("quota", "set", v.meta_url, "/db1/base", "1M")
    assert p.returncode == 1 and "do not nest" in p.stderr
    p = braidfs("quota", "get", v.meta_url, "/nope")
    assert p.returncode == 1 and p.stderr.startswith("braidfs quota: ") and "does not exist" in p.stderr
    p = braidfs("quota", "set", v.meta_url, "/db1", "ten")
    assert p.returncode == 2
    p = braidfs("quota", "frob", v.meta_url, "/db1")
    assert p.returncode == 2
    assert braidfs("quota", "--help").stdout.startswith("Usage: braidfs quota")
    v.mount()
    st = os.statvfs(v.path("db1"))
    assert st.f_blocks * st.f_frsize == 1 * MiB
    v.umount()
    p = braidfs("quota", "clear", v.meta_url, "/db1")
    assert p.returncode == 0, p.stderr
    p = braidfs("quota", "clear", v.meta_url, "/db1")
    assert p.returncode == 1 and "not a quota root" in p.stderr
