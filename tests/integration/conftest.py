"""Shared fixtures for the braidfs integration tests.

Every test gets its own directory (meta db, targets, mount point) under one per-session base
directory; every mount and every daemon a test started is gone when the test ends, whatever
happened (braidfs umount, then fusermount3 -u, then umount -l, then SIGKILL of the daemons
whose pids we saw).
"""

import ctypes
import errno
import hashlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

PY = "/usr/bin/python3"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

TEST_USER = "braidfs-test"
IMAGE_BYTES = 4 << 30  # a file: target's image (sparse: it costs what is written)
TEST_USER2 = "braidfs-test2"


# --------------------------------------------------------------------------- binary


def find_bin():
    env = os.environ.get("BRAIDFS_BIN")
    if env:
        return os.path.abspath(env)
    cand = os.path.join(REPO, "build", "tools", "braidfs")
    if os.access(cand, os.X_OK):
        return cand
    found = shutil.which("braidfs")
    return found or cand


BIN = find_bin()


def shared_dir():
    env = os.environ.get("BRAIDFS_SHARED")
    if env:
        return env
    return os.path.join(os.path.dirname(REPO), "shared")


def braidfs(*args, timeout=120, check=False, input=None):
    """Run `braidfs ARGS...`; returns CompletedProcess with text stdout/stderr."""
    argv = [BIN] + [str(a) for a in args]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input,
                       stdin=None if input is not None else subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> exit {p.returncode}\n"
                             f"stdout: {p.stdout}\nstderr: {p.stderr}")
    return p


# --------------------------------------------------------------------------- timeouts

try:
    import pytest_timeout  # noqa: F401  (only to know whether it is there)
    HAVE_PYTEST_TIMEOUT = True
except ImportError:
    HAVE_PYTEST_TIMEOUT = False


def pytest_addoption(parser):
    if not HAVE_PYTEST_TIMEOUT:
        parser.addini("timeout", "per-test timeout in seconds (SIGALRM fallback)", default="300")
        parser.addini("timeout_method", "ignored without pytest-timeout", default="signal")


def pytest_configure(config):
    if not HAVE_PYTEST_TIMEOUT:
        config.addinivalue_line("markers", "timeout(seconds): per-test timeout")


@pytest.fixture(autouse=True)
def _alarm_timeout(request):
    """SIGALRM per-test timeout, used only when pytest-timeout is not installed."""
    if request.config.pluginmanager.hasplugin("timeout"):
        yield
        return
    m = request.node.get_closest_marker("timeout")
    try:
        default = int(float(request.config.getini("timeout")))
    except (ValueError, TypeError):
        default = 300
    secs = int(m.args[0]) if m and m.args else default

    def on_alarm(signum, frame):
        raise TimeoutError(f"test exceeded {secs} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(secs)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- mounts


def mounted_paths():
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            p = line.split()[4]
            out.append(p.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\"))
    return out


def is_mounted(path):
    return os.path.realpath(path) in mounted_paths()


def force_unmount(path):
    """Unmount PATH by any means; returns True if it is no longer a mount point."""
    for argv in (["fusermount3", "-u", path], ["fusermount3", "-uz", path], ["umount", path],
                 ["umount", "-l", path]):
        if not is_mounted(path):
            return True
        subprocess.run(argv, capture_output=True, timeout=60)
    return not is_mounted(path)


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def is_braidfs_pid(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"braidfs" in f.read()
    except OSError:
        return False


def wait_pid_gone(pid, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def kill_pid(pid, sig=signal.SIGKILL):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def users_of(path):
    """Pids of processes with a cwd, root or open file under PATH."""
    out = set()
    pre = os.path.realpath(path)
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            links = [os.readlink(f"/proc/{d}/cwd")]
            links += [os.readlink(f"/proc/{d}/fd/{fd}") for fd in os.listdir(f"/proc/{d}/fd")]
        except OSError:
            continue
        if any(x == pre or x.startswith(pre + "/") for x in links):
            out.add(int(d))
    return out


def wait_no_users(path, timeout=30):
    """Wait until no process uses PATH (e.g. a server's children after it was stopped)."""
    end = time.monotonic() + timeout
    while users_of(path) and time.monotonic() < end:
        time.sleep(0.1)
    return users_of(path)


def drop_caches():
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


# --------------------------------------------------------------------------- volume


class Volume:
    """One braidfs volume: sqlite meta db + targets + a mount point, all under .dir."""

    def __init__(self, base, name="vol", targets=("dir", "dir"), replicas=None, chunk_size=None,
                 consistency=None, extra_format=()):
        self.dir = base
        self.db = os.path.join(base, "meta.db")
        self.meta_url = "sqlite://" + self.db
        self.name = name
        self.target_dirs = []
        self.targets = []
        self.images = []  # per target: the image file of a file: target, else None
        for i, kind in enumerate(targets):
            d = os.path.join(base, f"t{i}")
            os.mkdir(d)
            self.target_dirs.append(d)
            if kind in ("iscsi", "nbd"):
                # a LUN / export of the session's servers (net_target_url): reused by every
                # test in turn, so format overwrites the previous test's target (--force)
                self.images.append(None)
                self.targets.append(net_target_url(kind))
                if "--force" not in extra_format:
                    extra_format = tuple(extra_format) + ("--force",)
            elif kind == "file":
                # a block target on a sparse image file: the chunk store's own format
                # (docs/format.md); O_DIRECT needs a disk file system under it, not ramfs
                img = os.path.join(d, "img")
                with open(img, "wb") as f:
                    f.truncate(IMAGE_BYTES)
                self.images.append(img)
                self.targets.append(f"file:{img}")
            else:
                self.images.append(None)
                self.targets.append(f"{kind}:{d}")
        self.mnt = os.path.join(base, "mnt")
        self.log = os.path.join(base, "braidfs.log")  # the daemon's log (mount -o log=)
        os.mkdir(self.mnt)
        os.chmod(self.mnt, 0o755)
        self.replicas = replicas
        self.chunk_size = chunk_size
        self.consistency = consistency
        self.extra_format = list(extra_format)
        self.mount_opts = None
        self.pids = set()  # every daemon pid seen; killed at teardown if still alive
        self.mounted = False  # we believe a live daemon serves .mnt
        self.expect_unclean = False  # a test that breaks the volume on purpose sets this

    # -- commands
    def format_args(self):
        a = ["format"]
        if self.replicas is not None:
            a += ["--replicas", str(self.replicas)]
        if self.chunk_size is not None:
            a += ["--chunk-size", str(self.chunk_size)]
        if self.consistency is not None:
            a += ["--consistency", self.consistency]
        return a + self.extra_format + [self.meta_url, self.name] + self.targets

    def format(self):
        braidfs(*self.format_args(), check=True)

    def mount(self, opts=None, mnt=None):
        mnt = mnt or self.mnt
        if opts is not None:
            self.mount_opts = opts
        opts = [o for o in (self.mount_opts or "").split(",") if o]
        if not any(o.startswith("log=") for o in opts):
            # a second mount point (shared engines) logs beside the first
            opts.append("log=" + self.log + ("" if mnt == self.mnt else "." +
                                             os.path.basename(mnt)))
        p = braidfs("mount", "-o", ",".join(opts), self.meta_url, mnt, timeout=120)
        pid = self.pid(mnt)
        if pid:
            self.pids.add(pid)
        if p.returncode != 0:
            raise AssertionError(f"braidfs mount -> exit {p.returncode}: {p.stderr.strip()}"
                                 f"{self.log_tail()}")
        assert is_mounted(mnt), "braidfs mount exited 0 but nothing is mounted"
        assert pid and pid_alive(pid), "no live daemon pid for the mount after mount"
        if mnt == self.mnt:
            self.mounted = True
        return p

    def umount(self, mnt=None):
        mnt = mnt or self.mnt
        pid = self.pid(mnt)
        if mnt == self.mnt:
            self.mounted = False
        p = braidfs("umount", mnt, timeout=180)
        if p.returncode != 0:
            raise AssertionError(f"braidfs umount -> exit {p.returncode}: {p.stderr.strip()}")
        assert not is_mounted(mnt), "braidfs umount exited 0 but the mount is still there"
        if pid:
            assert wait_pid_gone(pid, 10), f"daemon {pid} still alive after braidfs umount"
        return p

    def remount(self):
        self.umount()
        self.mount()

    def log_tail(self, n=15):
        try:
            with open(self.log, errors="replace") as f:
                lines = f.readlines()[-n:]
        except OSError:
            return ""
        return "\n--- daemon log tail ---\n" + "".join(lines)

    def pid(self, mnt=None):
        """Pid of the mount daemon: first line of <db>.lock (None if absent). A one-node
        volume has one mount; shared engines override this (test_postgres_meta.py)."""
        try:
            with open(self.db + ".lock") as f:
                line = f.readline().strip()
            return int(line) if line else None
        except (OSError, ValueError):
            return None

    def kill9(self, mnt=None):
        """Kill the daemon with SIGKILL and wait until it is gone (mount becomes dead)."""
        mnt = mnt or self.mnt
        pid = self.pid(mnt)
        assert pid, "no daemon pid"
        if mnt == self.mnt:
            self.mounted = False
        kill_pid(pid, signal.SIGKILL)
        assert wait_pid_gone(pid, 20), f"daemon {pid} survived SIGKILL"
        return pid

    def status(self):
        return braidfs("status", self.meta_url)

    def fsck(self, repair=False):
        return braidfs("fsck", *(["--repair"] if repair else []), self.meta_url, timeout=600)

    def path(self, *parts):
        return os.path.join(self.mnt, *parts)

    def chunk_root(self, i):
        return os.path.join(self.target_dirs[i], "chunks")

    # -- teardown
    def check_clean_umount(self):
        """At the end of a test: the daemon must still be alive and unmount cleanly.
        Returns a problem description or None."""
        if not self.mounted or self.expect_unclean:
            return None
        pid = self.pid()
        if not pid or not pid_alive(pid):
            return f"mount daemon (pid {pid}) died during the test{self.log_tail()}"
        wait_no_users(self.mnt, 15)  # children of a server the test stopped may linger
        try:
            self.umount()
        except (AssertionError, subprocess.TimeoutExpired) as e:
            return f"clean umount at the end of the test failed: {e}{self.log_tail()}"
        return None

    def cleanup(self):
        pid = self.pid()
        if pid:
            self.pids.add(pid)
        mps = [p for p in mounted_paths() if p == self.dir or p.startswith(self.dir + "/")]
        # deepest first
        for mp in sorted(mps, key=len, reverse=True):
            if mp.startswith(self.mnt) and os.path.basename(mp).startswith("mnt"):
                try:
                    braidfs("umount", mp, timeout=60)
                except subprocess.TimeoutExpired:
                    pass
            force_unmount(mp)
        for pid in self.pids:
            if pid_alive(pid) and is_braidfs_pid(pid):
                kill_pid(pid, signal.SIGTERM)
                if not wait_pid_gone(pid, 5):
                    kill_pid(pid, signal.SIGKILL)
                    wait_pid_gone(pid, 10)
        left = [p for p in mounted_paths() if p == self.dir or p.startswith(self.dir + "/")]
        if not left:
            shutil.rmtree(self.dir, ignore_errors=True)
        return left


@pytest.fixture(scope="session")
def session_base():
    root = os.environ.get("BRAIDFS_TEST_TMP", "/tmp")
    base = tempfile.mkdtemp(prefix="braidfs-it-", dir=root)
    os.chmod(base, 0o755)  # the unprivileged users must reach the mount points
    yield base
    for mp in sorted((p for p in mounted_paths() if p.startswith(base + "/")), key=len,
                     reverse=True):
        force_unmount(mp)
    if not any(p.startswith(base + "/") for p in mounted_paths()):
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def test_dir(session_base, request):
    name = "".join(c if c.isalnum() else "_" for c in request.node.name)[:60]
    d = tempfile.mkdtemp(prefix=name + ".", dir=session_base)
    os.chmod(d, 0o755)
    yield d
    # safety net for mounts a test made itself (read-only tmpfs, second mount points, ...)
    for mp in sorted((p for p in mounted_paths() if p.startswith(d + "/")), key=len,
                     reverse=True):
        force_unmount(mp)


@pytest.fixture
def make_volume(test_dir):
    """Factory: make_volume(targets=("dir","dir"), replicas=, chunk_size=, consistency=,
    mount=True, opts=None, cls=Volume) -> Volume, formatted and (by default) mounted. cls is
    called as cls(directory, **options): another engine's volume (test_postgres_meta.py)."""
    if not os.access(BIN, os.X_OK):
        pytest.fail(f"braidfs binary not found or not executable: {BIN} (set BRAIDFS_BIN)")
    made = []

    def make(mount=True, opts=None, cls=Volume, **kw):
        sub = os.path.join(test_dir, f"v{len(made)}")
        os.mkdir(sub)
        os.chmod(sub, 0o755)
        v = cls(sub, **kw)
        made.append(v)
        v.format()
        if mount:
            v.mount(opts=opts)
        return v

    yield make
    problems = [x for x in (v.check_clean_umount() for v in made) if x]
    leftovers = []
    for v in made:
        leftovers += v.cleanup()
    assert not leftovers, f"could not unmount: {leftovers}"
    assert not problems, "; ".join(problems)


# The kinds of target a volume can have: dir: (a directory, one file per chunk) and file: (the
# block chunk store, docs/format.md, on a sparse image file); "mixed" is a 3-replica volume with
# one replica on each kind of block address space: a file: image, an iSCSI LUN (tgtd) and an
# NBD export (nbdkit), the servers started on loopback for the session (net_target_url).
TARGET_KINDS = ("dir", "file", "mixed")
MIXED = ("file", "iscsi", "nbd")

_NET = {}
TARGETS_PY = os.path.join(REPO, "tests", "services", "targets.py")
NET_LUN_MIB = 2048  # sparse backing files: they cost what is written


def net_target_url(kind):
    """The iSCSI or NBD URL of the session's test servers (tests/services/targets.py), started
    on first use and stopped at the end of the session. Skips when tgtd / nbdkit are missing."""
    if "urls" not in _NET:
        d = tempfile.mkdtemp(prefix="braidfs-it-targets-")
        r = subprocess.run(["/usr/bin/python3", TARGETS_PY, "start", d, str(NET_LUN_MIB)],
                           capture_output=True, text=True, timeout=120)
        if r.returncode == 77:
            shutil.rmtree(d, ignore_errors=True)
            pytest.skip(f"iSCSI/NBD test servers unavailable: {r.stderr.strip()}")
        if r.returncode != 0:
            subprocess.run(["/usr/bin/python3", TARGETS_PY, "stop", d], capture_output=True)
            raise AssertionError(f"targets.py start failed: {r.stderr.strip()}")
        urls = {}
        for line in r.stdout.splitlines():
            if line.startswith("export ") and "=" in line:
                k, v = line[len("export "):].split("=", 1)
                urls[k] = v.strip().strip("'\"")
        _NET.update(dir=d, urls=urls)
    key = {"iscsi": "BRAIDFS_TEST_ISCSI_URL", "nbd": "BRAIDFS_TEST_NBD_URL"}[kind]
    return _NET["urls"][key]


def pytest_sessionfinish(session, exitstatus):
    if "dir" in _NET:
        subprocess.run(["/usr/bin/python3", TARGETS_PY, "stop", _NET["dir"]],
                       capture_output=True, timeout=120)
        shutil.rmtree(_NET["dir"], ignore_errors=True)


@pytest.fixture
def volume(make_volume, request):
    """A fresh 2-replica volume on two targets, mounted (daemonized). The targets are dir:
    unless the test asks for a kind, e.g. every kind in turn:
        @pytest.mark.parametrize("volume", TARGET_KINDS, indirect=True)"""
    kind = getattr(request, "param", "dir")
    if kind == "mixed":
        return make_volume(targets=MIXED, replicas=3, extra_format=("--pool", "mixed"))
    return make_volume(targets=(kind, kind))


# --------------------------------------------------------------------------- users


def _ensure_user(name):
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        "--user-group", name], check=True, capture_output=True)
        return pwd.getpwnam(name)


class User:
    def __init__(self, pw):
        self.name = pw.pw_name
        self.uid = pw.pw_uid
        self.gid = pw.pw_gid

    def argv(self, argv):
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                "--reset-env", "--"] + list(argv)

    def run(self, argv, timeout=60, **kw):
        return subprocess.run(self.argv(argv), capture_output=True, text=True, timeout=timeout,
                              **kw)

    def py(self, code, *args, timeout=60):
        """Run python CODE as this user; returns CompletedProcess."""
        return self.run([PY, "-c", code] + [str(a) for a in args], timeout=timeout)

    def try_op(self, stmt, **names):
        """Run one python statement as this user with os/errno imported and NAMES bound;
        returns 'OK' or the errno name (e.g. 'EACCES')."""
        pre = "".join(f"{k} = {v!r}\n" for k, v in names.items())
        code = ("import os, errno, sys, stat\n" + pre + "try:\n"
                + "".join("    " + ln + "\n" for ln in stmt.strip().splitlines())
                + "except OSError as e:\n    print(errno.errorcode.get(e.errno, e.errno))\n"
                + "else:\n    print('OK')\n")
        p = self.py(code)
        assert p.returncode == 0, f"helper failed: {p.stderr}"
        return p.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def user():
    return User(_ensure_user(TEST_USER))


@pytest.fixture(scope="session")
def user2():
    return User(_ensure_user(TEST_USER2))


# --------------------------------------------------------------------------- helpers


def expect_errno(errs, fn, *args, **kw):
    """Call fn; assert it raises OSError with errno in ERRS (an int or a tuple)."""
    if isinstance(errs, int):
        errs = (errs,)
    try:
        fn(*args, **kw)
    except OSError as e:
        assert e.errno in errs, (f"{getattr(fn, '__name__', fn)}{args}: expected "
                                 f"{[errno.errorcode[x] for x in errs]}, got "
                                 f"{errno.errorcode.get(e.errno, e.errno)}")
        return e
    raise AssertionError(f"{getattr(fn, '__name__', fn)}{args}: expected "
                         f"{[errno.errorcode[x] for x in errs]}, but it succeeded")


def listdir(path, limit=1_000_000):
    """os.listdir that fails fast instead of looping forever: a name returned twice (a broken
    readdir offset) raises AssertionError. A Python-level loop, so timeouts can interrupt it."""
    names, seen = [], set()
    with os.scandir(path) as it:
        for e in it:
            if e.name in seen:
                raise AssertionError(f"readdir of {path} returned {e.name!r} twice")
            seen.add(e.name)
            names.append(e.name)
            if len(names) > limit:
                raise AssertionError(f"readdir of {path} returned more than {limit} names")
    return names


def write_file(path, data, mode=0o644, fsync=False):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        mv = memoryview(data)
        while mv:
            n = os.write(fd, mv)
            mv = mv[n:]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def set_fault(target_dir, text):
    """Replace a faulty: target's control file atomically (None: delete it), then wait until
    the target has re-read it (it looks every ~100 ms)."""
    p = os.path.join(target_dir, "braidfs-fault")
    if text is None:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
    else:
        write_file(p + ".tmp", text.encode())
        os.rename(p + ".tmp", p)
    time.sleep(0.4)


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def pwrite_all(fd, data, off):
    mv = memoryview(data)
    while mv:
        n = os.pwrite(fd, mv, off)
        mv = mv[n:]
        off += n


def sha256_file(path, bs=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(bs)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def tree_digest(root):
    """{relpath: (type, mode, size, sha256|target)} of a local directory tree."""
    out = {}
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            p = os.path.join(dp, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("l", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("d", st.st_mode)
            else:
                out[rel] = ("f", st.st_mode, st.st_size, sha256_file(p))
    return out


def chunk_files(root):
    """{relpath: path} of all regular files under ROOT (a target's chunks/ dir)."""
    out = {}
    if not os.path.isdir(root):
        return out
    for dp, _, fns in os.walk(root):
        for n in fns:
            p = os.path.join(dp, n)
            out[os.path.relpath(p, root)] = p
    return out


def compare_chunk_trees(a_root, b_root):
    """List of differences between two chunks/ trees, sparse-aware: a missing file equals an
    all-zero file and trailing zeros do not count."""
    a, b = chunk_files(a_root), chunk_files(b_root)
    diffs = []
    for rel in sorted(set(a) | set(b)):
        da = read_file(a[rel]).rstrip(b"\0") if rel in a else b""
        db = read_file(b[rel]).rstrip(b"\0") if rel in b else b""
        if da != db:
            n = min(len(da), len(db))
            first = next((i for i in range(n) if da[i] != db[i]), n)
            diffs.append(f"{rel}: differ at byte {first} (non-zero lengths {len(da)} vs "
                         f"{len(db)}; present: {rel in a}/{rel in b})")
    return diffs


FSCK_REPLICAS = re.compile(
    r"(?P<chunks>\d+) chunk\(s\), (?P<read>\S+ \S+) read; (?P<csum>\d+) checksum error\(s\), "
    r"(?P<differing>\d+) differing, (?P<missing>\d+) missing, (?P<unreadable>\d+) unreadable, "
    r"(?P<stray>\d+) stray")


def fsck_replicas(out):
    """The replica summary line of braidfs fsck's output: {"chunks", "csum", "differing",
    "missing", "unreadable", "stray": int, "read": the size read as printed}; fails the test
    when out has no such line."""
    m = FSCK_REPLICAS.search(out)
    assert m, f"no replica summary in fsck's output:\n{out}"
    return {k: v if k == "read" else int(v) for k, v in m.groupdict().items()}


def rand_bytes(rng, n):
    return rng.randbytes(n) if hasattr(rng, "randbytes") else os.urandom(n)


libc = ctypes.CDLL(None, use_errno=True)
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2


def renameat2(old, new, flags):
    r = libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags)
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), old)


def fallocate(fd, mode, off, length):
    r = libc.fallocate(fd, mode, off, length)
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def run_on_tty(argv, timeout=60):
    """Run ARGV with stderr on a pseudo-terminal (stdout piped): (returncode, stdout text,
    every byte written to the terminal)."""
    import pty
    master, slave = pty.openpty()
    try:
        c = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=slave,
                             text=True)
        os.close(slave)
        out, _ = c.communicate(timeout=timeout)
        tty = b""
        while True:
            try:
                b = os.read(master, 65536)
            except OSError:
                break
            if not b:
                break
            tty += b
    finally:
        os.close(master)
    return c.returncode, out, tty


def spawn_py(code, *args, **kw):
    """Start `python3 -c CODE ARGS` with stdout piped; returns Popen."""
    return subprocess.Popen([PY, "-c", code] + [str(a) for a in args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def wait_line(proc, expect, timeout=30):
    """Wait for PROC to print a line equal to EXPECT (the child is expected to flush)."""
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if sel.select(timeout=max(0.01, end - time.monotonic())):
            line = proc.stdout.readline()
            if not line:
                break
            if line.strip() == expect:
                return True
    raise AssertionError(f"child never printed {expect!r}; rc={proc.poll()} "
                         f"stderr={proc.stderr.read() if proc.poll() is not None else ''}")
