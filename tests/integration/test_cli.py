"""The `braidfs` command line: bad input gets one clear line on stderr, a non-zero exit, and
destroys nothing."""

import hashlib
import os
import subprocess
import time

import pytest

from conftest import (listdir, BIN, Volume, braidfs, is_mounted, pid_alive, read_file, tree_digest,
                      wait_pid_gone, write_file)

SUBCOMMANDS = ["format", "mount", "umount", "status", "fsck", "device"]


def assert_error(p, cmd):
    """Non-zero exit (not a crash), exactly one non-empty stderr line `braidfs CMD: ...`."""
    assert p.returncode not in (0,), f"braidfs {cmd}: expected failure, got exit 0\n{p.stdout}"
    assert p.returncode > 0 and p.returncode < 126, \
        f"braidfs {cmd}: exit {p.returncode} looks like a crash\n{p.stderr}"
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines, f"braidfs {cmd}: no error message on stderr"
    assert lines[0].startswith(f"braidfs {cmd}: "), f"first stderr line: {lines[0]!r}"
    assert len(lines) == 1, f"braidfs {cmd}: error is not one line:\n{p.stderr}"
    assert len(lines[0]) > len(f"braidfs {cmd}: ") + 5, "error message says nothing"


def snapshot(*paths):
    out = {}
    for p in paths:
        if os.path.isdir(p):
            out[p] = tree_digest(p)
        elif os.path.exists(p):
            out[p] = hashlib.sha256(read_file(p)).hexdigest()
        else:
            out[p] = None
    return out


@pytest.fixture
def fresh(test_dir):
    """An unformatted Volume layout (db path, 2 empty target dirs, mount point)."""
    d = os.path.join(test_dir, "fresh")
    os.mkdir(d)
    os.chmod(d, 0o755)
    v = Volume(d)
    yield v
    v.cleanup()


# --------------------------------------------------------------------------- help / usage


@pytest.mark.parametrize("cmd,words", [
    ("format", ["--replicas", "--chunk-size", "--consistency", "--force"]),
    ("mount", ["-f", "-o"]),
    ("umount", []),
    ("status", []),
    ("fsck", ["--repair"]),
])
def test_help(cmd, words):
    p = braidfs(cmd, "--help")
    assert p.returncode == 0, f"braidfs {cmd} --help: exit {p.returncode}\n{p.stderr}"
    text = p.stdout + p.stderr
    assert cmd in text
    for w in words:
        assert w in text, f"braidfs {cmd} --help does not mention {w}:\n{text}"


def test_top_level_help():
    p = braidfs("--help")
    assert p.returncode == 0
    for cmd in SUBCOMMANDS:
        assert cmd in p.stdout + p.stderr


def test_no_arguments():
    p = braidfs()
    assert p.returncode != 0 and p.returncode < 126
    assert (p.stderr + p.stdout).strip()


def test_unknown_subcommand():
    p = braidfs("frobnicate")
    assert p.returncode != 0 and p.returncode < 126
    assert p.stderr.startswith("braidfs"), p.stderr


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_unknown_option(cmd, fresh):
    p = braidfs(cmd, "--no-such-option", fresh.meta_url, fresh.mnt)
    assert p.returncode != 0 and p.returncode < 126, f"exit {p.returncode}"
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines and lines[0].startswith(f"braidfs {cmd}: "), p.stderr
    assert not os.path.exists(fresh.db)


@pytest.mark.parametrize("cmd", ["format", "mount", "status", "fsck"])
def test_missing_meta_url(cmd):
    p = braidfs(cmd)
    assert_error(p, cmd)


# --------------------------------------------------------------------------- bad META_URL


BAD_URLS = ["foo", "sqlite://relative/path.db", "http://x", "sqlite://", "postgres"]


@pytest.mark.parametrize("url", BAD_URLS)
def test_format_bad_meta_url(fresh, url):
    before = snapshot(*fresh.target_dirs)
    cwd = os.getcwd()
    os.chdir(fresh.dir)  # a relative path must not be created here either
    try:
        p = braidfs("format", url, "vol", *fresh.targets)
    finally:
        os.chdir(cwd)
    assert_error(p, "format")
    assert snapshot(*fresh.target_dirs) == before, "targets touched"
    assert sorted(listdir(fresh.dir)) == ["mnt", "t0", "t1"], listdir(fresh.dir)


@pytest.mark.parametrize("url", BAD_URLS)
@pytest.mark.parametrize("cmd", ["mount", "status", "fsck"])
def test_bad_meta_url(fresh, cmd, url):
    args = [url, fresh.mnt] if cmd == "mount" else [url]
    p = braidfs(cmd, *args)
    assert_error(p, cmd)
    assert not is_mounted(fresh.mnt)


@pytest.mark.parametrize("cmd", ["mount", "status", "fsck"])
def test_meta_db_missing(fresh, cmd):
    args = [fresh.meta_url, fresh.mnt] if cmd == "mount" else [fresh.meta_url]
    p = braidfs(cmd, *args)
    assert_error(p, cmd)
    assert not os.path.exists(fresh.db), f"braidfs {cmd} created the missing meta db"
    assert not is_mounted(fresh.mnt)


# --------------------------------------------------------------------------- bad targets


def test_format_missing_target_dir(fresh):
    missing = os.path.join(fresh.dir, "nope")
    p = braidfs("format", fresh.meta_url, "vol", fresh.targets[0], f"dir:{missing}")
    assert p.returncode != 0
    assert not os.path.exists(missing)
    assert snapshot(fresh.target_dirs[0]) == {fresh.target_dirs[0]: {}}, \
        "format failed on the 2nd target but had already written to the 1st"
    assert_error(p, "format")
    # nothing half-made blocks a correct format afterwards
    braidfs(*fresh.format_args(), check=True)


def test_format_bad_target_urls(fresh):
    for t in ["t0", "dir:relative", "nbd:/x", "", "dir:"]:
        p = braidfs("format", fresh.meta_url, "vol", fresh.targets[0], t)
        assert p.returncode != 0, t
        assert snapshot(fresh.target_dirs[0]) == {fresh.target_dirs[0]: {}}, \
            f"format failed on a bad 2nd target {t!r} but had already written to the 1st"
        assert_error(p, "format")
    braidfs(*fresh.format_args(), check=True)


def test_format_readonly_target(fresh):
    ro = fresh.target_dirs[1]
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=16m", "tmpfs", ro],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs: {r.stderr}")
    try:
        p = braidfs(*fresh.format_args())
        assert p.returncode != 0
        assert listdir(fresh.target_dirs[0]) == [], \
            "format failed on the read-only 2nd target but had already written to the 1st"
        assert_error(p, "format")
    finally:
        subprocess.run(["umount", ro], check=True)
    braidfs(*fresh.format_args(), check=True)


def test_format_nonempty_target(fresh):
    write_file(os.path.join(fresh.target_dirs[1], "precious"), b"do not touch")
    before = snapshot(*fresh.target_dirs)
    p = braidfs(*fresh.format_args())
    assert p.returncode != 0
    assert snapshot(*fresh.target_dirs) == before, \
        "format refused the non-empty 2nd target but had already written to the 1st"
    assert_error(p, "format")


def test_format_same_target_twice(fresh):
    p = braidfs("format", fresh.meta_url, "vol", fresh.targets[0], fresh.targets[0])
    assert_error(p, "format")


def test_format_bad_options(fresh):
    for extra in (["--replicas", "0"], ["--replicas", "x"], ["--replicas", "3"],
                  ["--chunk-size", "0"], ["--chunk-size", "12q"],
                  ["--consistency", "sometimes"]):
        p = braidfs("format", *extra, fresh.meta_url, "vol", *fresh.targets)
        assert_error(p, "format")
        assert not any(listdir(d) for d in fresh.target_dirs), f"{extra}: targets touched"
    braidfs(*fresh.format_args(), check=True)


# --------------------------------------------------------------------------- existing volume


def test_format_over_existing_volume(volume, test_dir):
    data = os.urandom(1 << 20)
    write_file(volume.path("keep"), data, fsync=True)
    volume.umount()
    before = snapshot(volume.db, *volume.target_dirs)
    p = braidfs(*volume.format_args())
    assert_error(p, "format")
    other = [os.path.join(test_dir, "o0"), os.path.join(test_dir, "o1")]
    for d in other:
        os.mkdir(d)
    p = braidfs("format", volume.meta_url, "vol2", *[f"dir:{d}" for d in other])
    assert_error(p, "format")
    assert all(listdir(d) == [] for d in other)
    assert snapshot(volume.db, *volume.target_dirs) == before, "existing volume touched"
    volume.mount()
    assert read_file(volume.path("keep")) == data


def test_format_over_mounted_volume(volume):
    write_file(volume.path("keep"), b"data", fsync=True)
    p = braidfs("format", "--force", volume.meta_url, "vol", *volume.targets)
    assert p.returncode != 0, "format --force of a MOUNTED volume succeeded"
    assert read_file(volume.path("keep")) == b"data"


def test_mount_twice(volume, test_dir):
    write_file(volume.path("f"), b"first")
    mnt2 = os.path.join(test_dir, "mnt2")
    os.mkdir(mnt2)
    pid = volume.pid()
    p = braidfs("mount", volume.meta_url, mnt2)
    try:
        assert_error(p, "mount")
        assert not is_mounted(mnt2)
    finally:
        if is_mounted(mnt2):
            braidfs("umount", mnt2)
    # and over the same mount point
    p = braidfs("mount", volume.meta_url, volume.mnt)
    assert_error(p, "mount")
    assert volume.pid() == pid and pid_alive(pid), "the lock file or the first daemon changed"
    write_file(volume.path("g"), b"still works", fsync=True)
    assert read_file(volume.path("f")) == b"first"
    assert read_file(volume.path("g")) == b"still works"


def test_mount_missing_mountpoint(make_volume, test_dir):
    v = make_volume(mount=False)
    p = braidfs("mount", v.meta_url, os.path.join(test_dir, "no-such-dir"))
    assert_error(p, "mount")
    v.mount()  # no stale lock left behind
    v.umount()


def test_mount_on_file(make_volume, test_dir):
    v = make_volume(mount=False)
    f = os.path.join(test_dir, "afile")
    write_file(f, b"x")
    p = braidfs("mount", v.meta_url, f)
    assert_error(p, "mount")
    assert read_file(f) == b"x"
    v.mount()


def test_umount_not_mounted(fresh):
    p = braidfs("umount", fresh.mnt)
    assert_error(p, "umount")
    p = braidfs("umount", os.path.join(fresh.dir, "nope"))
    assert_error(p, "umount")


def test_umount_names_other_mount_namespaces(make_volume):
    """A mount namespace entered after the mount (unshare -m: a copy of every mount, not
    shared back) keeps the file system, and so the daemon, alive after umount: umount names
    the process that holds it and says why it timed out, instead of "keeps writing". Once the
    copy is unmounted in there (as the message says), the daemon finishes and exits."""
    v = make_volume()
    write_file(v.path("kept"), b"written before the unmount")
    pid = v.pid()
    holder = subprocess.Popen(["unshare", "-m", "sleep", "120"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # unshare has made its namespace
            try:
                if os.readlink(f"/proc/{holder.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"):
                    break
            except OSError:
                pass
            time.sleep(0.05)
        v.mounted = False
        p = braidfs("umount", "--timeout", "3", v.mnt, timeout=60)
        assert p.returncode == 1, (p.stdout, p.stderr)
        assert f"held by {holder.pid} (sleep)" in p.stderr, p.stderr
        assert f"nsenter -t {holder.pid} -m umount {v.mnt}" in p.stderr, p.stderr
        assert "still mounted in another mount namespace" in p.stderr, p.stderr
        assert "keeps writing" not in p.stderr
        assert not is_mounted(v.mnt) and pid_alive(pid)
        subprocess.run(["nsenter", "-t", str(holder.pid), "-m", "umount", v.mnt], check=True)
        assert wait_pid_gone(pid, 30), "the daemon did not exit once the last copy was gone"
    finally:
        holder.kill()
        holder.wait()
    v.mount()
    assert read_file(v.path("kept")) == b"written before the unmount"


def test_umount_busy(volume):
    fd = os.open(volume.path("open"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        cwd = os.getcwd()
        os.chdir(volume.mnt)
        try:
            p = braidfs("umount", volume.mnt)
        finally:
            os.chdir(cwd)
        if p.returncode == 0:
            pytest.fail("braidfs umount of a busy mount returned 0 (lazy unmount?)")
        assert_error(p, "umount")
        assert is_mounted(volume.mnt)
    finally:
        os.close(fd)
    volume.umount()


def test_status_and_fsck_on_good_volume(make_volume):
    v = make_volume(mount=False)
    p = v.status()
    assert p.returncode == 0, p.stderr
    assert "vol" in p.stdout
    p = v.fsck()
    assert p.returncode == 0, p.stdout + p.stderr


def test_fsck_refuses_mounted_volume(volume):
    write_file(volume.path("f"), b"x" * 100000, fsync=True)
    p = volume.fsck(repair=True)
    assert p.returncode != 0, "fsck --repair ran on a mounted volume"
    assert read_file(volume.path("f")) == b"x" * 100000


def test_umount_waits_for_daemon(volume):
    pid = volume.pid()
    write_file(volume.path("f"), os.urandom(5 << 20))
    p = braidfs("umount", volume.mnt)
    assert p.returncode == 0, p.stderr
    assert not pid_alive(pid), "daemon still running when braidfs umount returned"
    volume.mount()
    assert os.path.getsize(volume.path("f")) == 5 << 20


def test_fusermount_unmount_stops_daemon(volume):
    pid = volume.pid()
    write_file(volume.path("f"), b"data")
    subprocess.run(["fusermount3", "-u", volume.mnt], check=True)
    assert wait_pid_gone(pid, 30), "daemon did not exit after fusermount3 -u"
    volume.mount()
    assert read_file(volume.path("f")) == b"data"


def test_foreground_mount(make_volume):
    v = make_volume(mount=False)
    proc = subprocess.Popen([BIN, "mount", "-f", v.meta_url, v.mnt],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    v.pids.add(proc.pid)
    try:
        end = time.monotonic() + 30
        while not is_mounted(v.mnt) and time.monotonic() < end:
            assert proc.poll() is None, f"mount -f exited {proc.returncode}"
            time.sleep(0.1)
        assert is_mounted(v.mnt)
        write_file(v.path("f"), b"fg")
        subprocess.run(["fusermount3", "-u", v.mnt], check=True)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    v.mount()
    assert read_file(v.path("f")) == b"fg"


def test_kill9_then_braidfs_umount_cleans(volume):
    volume.kill9()
    p = braidfs("umount", volume.mnt)
    assert p.returncode == 0, p.stderr
    assert not is_mounted(volume.mnt)
    volume.mount()


# --------------------------------------------------------------------------- corrupt db


@pytest.mark.parametrize("cmd", ["mount", "status", "fsck"])
def test_garbage_sqlite_file(fresh, cmd):
    write_file(fresh.db, os.urandom(64 * 1024))
    before = snapshot(fresh.db)
    args = [fresh.meta_url, fresh.mnt] if cmd == "mount" else [fresh.meta_url]
    p = braidfs(cmd, *args)
    assert_error(p, cmd)
    assert snapshot(fresh.db) == before, "garbage db file modified"
    assert not is_mounted(fresh.mnt)
    if cmd == "fsck":
        p = braidfs("fsck", "--repair", fresh.meta_url)
        assert p.returncode != 0 and snapshot(fresh.db) == before


def test_empty_sqlite_file(fresh):
    write_file(fresh.db, b"")
    for cmd in ("status", "fsck"):
        p = braidfs(cmd, fresh.meta_url)
        assert_error(p, cmd)
    p = braidfs("mount", fresh.meta_url, fresh.mnt)
    assert_error(p, "mount")
    assert not is_mounted(fresh.mnt)


@pytest.mark.parametrize("cmd", ["mount", "status", "fsck"])
def test_truncated_sqlite_db(make_volume, cmd):
    v = make_volume()
    for i in range(50):
        write_file(v.path(f"f{i}"), os.urandom(1000))
        os.setxattr(v.path(f"f{i}"), "user.pad", os.urandom(2000))
    v.umount()
    for ext in ("-wal", "-shm"):
        if os.path.exists(v.db + ext):
            os.unlink(v.db + ext)
    size = os.path.getsize(v.db)
    assert size > 8192, f"db only {size} bytes"
    os.truncate(v.db, size // 3 + 17)
    before = snapshot(v.db)
    args = [v.meta_url, v.mnt] if cmd == "mount" else [v.meta_url]
    p = braidfs(cmd, *args)
    if cmd == "mount" and p.returncode == 0:
        # a lazy engine may only notice on access; it must then fail loudly, not invent data
        try:
            names = listdir(v.mnt)
        except OSError:
            names = None
        braidfs("umount", v.mnt)
        pytest.fail(f"mount of a truncated db succeeded (listing: {names and len(names)})")
    assert_error(p, cmd)
    assert snapshot(v.db) == before, "truncated db modified"
    assert not is_mounted(v.mnt)


def test_status_missing_arguments_destroys_nothing(volume):
    write_file(volume.path("f"), b"keep", fsync=True)
    for args in (["status"], ["fsck"], ["umount"], ["format"], ["format", volume.meta_url],
                 ["format", volume.meta_url, "vol"]):
        p = braidfs(*args)
        assert p.returncode != 0, args
    assert read_file(volume.path("f")) == b"keep"


def test_mount_options(make_volume):
    v = make_volume(opts="attr_timeout=0,entry_timeout=0")
    write_file(v.path("f"), b"opts")
    assert read_file(v.path("f")) == b"opts"
    v.umount()
    v.mount(opts="attr_timeout=2.5,entry_timeout=1")
    assert read_file(v.path("f")) == b"opts"
    for spin in ("0", "1000"):
        v.umount()
        v.mount(opts=f"spin_us={spin}")
        write_file(v.path("g"), spin.encode())
        assert read_file(v.path("g")) == spin.encode()


@pytest.mark.parametrize("opts", ["attr_timeout=abc", "no_such_option=1", "entry_timeout=-1",
                                  "spin_us=1001", "spin_us=-1", "spin_us=x"])
def test_mount_bad_options(make_volume, opts):
    v = make_volume(mount=False)
    p = braidfs("mount", "-o", opts, v.meta_url, v.mnt)
    if p.returncode == 0:
        braidfs("umount", v.mnt)
    assert_error(p, "mount")
    assert not is_mounted(v.mnt)
    v.mount()  # no stale lock


def test_mount_read_only(make_volume):
    import errno as _e
    v = make_volume()
    write_file(v.path("f"), b"before", fsync=True)
    v.umount()
    v.mount(opts="ro")
    assert read_file(v.path("f")) == b"before"
    for fn, args in ((os.open, (v.path("g"), os.O_CREAT | os.O_WRONLY)),
                     (os.open, (v.path("f"), os.O_WRONLY)), (os.mkdir, (v.path("d"),)),
                     (os.unlink, (v.path("f"),)), (os.chmod, (v.path("f"), 0o600))):
        try:
            fn(*args)
        except OSError as e:
            assert e.errno == _e.EROFS, f"{fn.__name__}{args}: {_e.errorcode.get(e.errno)}"
        else:
            pytest.fail(f"{fn.__name__}{args} succeeded on a read-only mount")
    v.umount()
    v.mount(opts="")
    assert read_file(v.path("f")) == b"before"


def test_umount_lazy_with_open_file(volume):
    pid = volume.pid()
    fd = os.open(volume.path("f"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"written before the lazy umount;")
        volume.mounted = False
        try:
            p = braidfs("umount", "-l", volume.mnt, timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("braidfs umount -l did not return within 30 s while a file was open "
                        "(it waits for the daemon, which waits for the file to be closed)")
        assert p.returncode == 0, p.stderr
        assert not is_mounted(volume.mnt)
        os.write(fd, b" and after")
        os.fsync(fd)
        assert pid_alive(pid), "daemon exited while a file was still open"
    finally:
        os.close(fd)
    assert wait_pid_gone(pid, 60), "daemon did not exit after the last file was closed"
    volume.mount()
    assert read_file(volume.path("f")) == b"written before the lazy umount; and after"
