"""A volume whose metadata lives in PostgreSQL (the engine of issue 4, fs/meta/meta_pg.c).

The module starts its own private PostgreSQL with tests/services/postgres.sh (on 127.0.0.1, a
free port, deleted afterwards; skipped when the server binaries are missing) and gives every
volume a database of its own.

- format a volume with `braidfs format postgres://... NAME dir:... dir:...`;
- mount it twice at once (two mount points, two processes) and check close-to-open
  consistency between the mounts: what one wrote and closed, the other reads after open;
  a name one created shows in the other after the entry timeout; renames, unlinks, xattrs
  and directory link counts agree; `braidfs status` lists both mounts; fsck refuses while
  they live and finds the volume clean after;
- a mount killed with -9 keeps its registration until it expires (fsck refuses meanwhile),
  then fsck runs;
- the POSIX suite of test_posix.py, every test but the 100,000-entry directory (slow: ~500
  creates/s with one WAL flush each, see fs/meta/README.md), on a postgres-backed single
  mount: the tests are imported below and run with this module's `volume` fixture.

NOTE: the two mounts of one volume share the data targets, because both `dir:` targets are the
same directories for both processes. That is valid only on one machine, as here; across nodes
each target belongs to the serve daemon of its node.
"""

import os
import shutil
import subprocess
import tempfile
import time

import pytest

import conftest
from conftest import REPO, Volume, braidfs, force_unmount, pid_alive, read_file, write_file
import test_posix

PG_SH = os.path.join(REPO, "tests", "services", "postgres.sh")
PSQL = shutil.which("psql") or "/usr/bin/psql"
ENTRY_TIMEOUT = 1.0  # the mount default (entry_timeout / attr_timeout)


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def pg():
    """A private PostgreSQL for this module: its base URL (database braidfs_test)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (the server runs as user postgres)")
    d = tempfile.mkdtemp(prefix="braidfs-pg-", dir=os.environ.get("BRAIDFS_TEST_TMP", "/tmp"))
    os.rmdir(d)  # postgres.sh wants to create it
    p = subprocess.run(["sh", PG_SH, "start", d], capture_output=True, text=True, timeout=180)
    if p.returncode == 77:
        pytest.skip("PostgreSQL server binaries not installed")
    assert p.returncode == 0, f"postgres.sh start failed: {p.stderr}"
    url = p.stdout.strip().split("=", 1)[1]
    yield url
    subprocess.run(["sh", PG_SH, "stop", d], capture_output=True, timeout=120)


def psql(url, sql):
    p = subprocess.run([PSQL, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", url, "-c", sql],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"psql {sql!r}: {p.stderr}"
    return p.stdout.strip()


_seq = [0]


def new_database(base_url):
    """A fresh database on the module's server; its URL."""
    _seq[0] += 1
    name = f"vol_{os.getpid()}_{_seq[0]}"
    psql(base_url, f"CREATE DATABASE {name}")
    return base_url.rsplit("/", 1)[0] + "/" + name


# --------------------------------------------------------------------------- volumes


def registry_pid(mnt):
    """Pid of the mount daemon serving mnt, from braidfs mount's /run/braidfs registry. A mount
    killed with -9 leaves its entry behind until some umount scans: a live pid wins."""
    try:
        names = os.listdir("/run/braidfs")
    except OSError:
        return None
    found = None
    for n in names:
        if not n.endswith(".mount"):
            continue
        try:
            with open(os.path.join("/run/braidfs", n)) as f:
                lines = f.read().split("\n")
        except OSError:
            continue
        if len(lines) >= 2 and lines[1] == mnt and lines[0].isdigit():
            found = int(lines[0])
            if pid_alive(found):
                return found
    return found


class PgVolume(Volume):
    """A conftest Volume whose metadata is a PostgreSQL database, mountable at several mount
    points at once (the first is .mnt). There is no lock file: a mount's pid comes from the
    registry of braidfs mount."""

    def __init__(self, base, meta_url, **kw):
        super().__init__(base, **kw)
        self.meta_url = meta_url

    def add_mountpoint(self, name):
        """A second mount point; its name starts with "mnt" so cleanup unmounts it."""
        m = os.path.join(self.dir, name)
        os.mkdir(m)
        os.chmod(m, 0o755)
        return m

    def pid(self, mnt=None):
        return registry_pid(mnt or self.mnt)


@pytest.fixture
def make_pg_volume(pg, make_volume):
    """Factory: make_pg_volume(mount=True, **Volume options) -> PgVolume in a new database."""
    return lambda **kw: make_volume(cls=lambda d, **o: PgVolume(d, new_database(pg), **o),
                                    **kw)


@pytest.fixture
def volume(make_pg_volume):
    """test_posix.py's fixture, backed by PostgreSQL: a 2-replica volume on two dir targets."""
    return make_pg_volume()


# --------------------------------------------------------------------------- the POSIX suite

# Every test of test_posix.py runs here too, on the `volume` above, except the 100k-entry
# directory (see the module docstring).
for _name in dir(test_posix):
    if _name.startswith("test_") and _name != "test_directory_100k_entries":
        globals()[_name] = getattr(test_posix, _name)


# --------------------------------------------------------------------------- two mounts


def wait_for(cond, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def test_format_refuses_a_used_database(make_pg_volume, pg):
    v = make_pg_volume(mount=False)
    d = os.path.join(v.dir, "fresh")
    os.mkdir(d)
    p = braidfs("format", v.meta_url, "again", "dir:" + d)
    assert p.returncode == 1
    assert "already holds volume 'vol'" in p.stderr, p.stderr
    # a database that holds other tables is not ours, and stays as it was
    url = new_database(pg)
    psql(url, "CREATE TABLE notes (x text); INSERT INTO notes VALUES ('keep me')")
    d = os.path.join(v.dir, "tx")
    os.mkdir(d)
    p = braidfs("format", url, "x", "dir:" + d)
    assert p.returncode == 1
    assert "is not a braidfs metadata database" in p.stderr, p.stderr
    assert psql(url, "SELECT x FROM notes") == "keep me"
    # a database that does not exist: the message names the server, never a password
    bad = url.rsplit("/", 1)[0].replace("postgres@", "postgres:s3cret@") + "/nosuchdb"
    p = braidfs("status", bad)
    assert p.returncode == 1
    assert "nosuchdb" in p.stderr and "s3cret" not in p.stderr, p.stderr


@pytest.mark.timeout(300)
def test_two_mounts_close_to_open(make_pg_volume):
    v = make_pg_volume()
    m1 = v.mnt
    m2 = v.add_mountpoint("mnt2")
    v.mount(mnt=m2)
    p1, p2 = v.pid(m1), v.pid(m2)
    assert p1 != p2, "two mounts, two processes"

    # status lists both mounts; fsck refuses while they live
    st = braidfs("status", v.meta_url)
    assert m1 in st.stdout and m2 in st.stdout, st.stdout
    fk = braidfs("fsck", v.meta_url)
    assert fk.returncode == 2 and "unmount it first" in fk.stderr, fk.stderr

    # write + close in one mount; open + read in the other sees it, first time and after
    # an overwrite that grows the file (the other mount had the old size cached)
    write_file(os.path.join(m1, "f"), b"one\n")
    wait_for(lambda: os.path.exists(os.path.join(m2, "f")), 5 * ENTRY_TIMEOUT, "f in mount 2")
    assert read_file(os.path.join(m2, "f")) == b"one\n"
    os.stat(os.path.join(m2, "f"))  # the kernel of mount 2 caches size 4 now
    data = os.urandom(3 << 20) + b"tail"
    write_file(os.path.join(m1, "f"), data)
    assert read_file(os.path.join(m2, "f")) == data, "open after close must see the new data"
    # and back: mount 2 appends and closes, mount 1 reads it all
    with open(os.path.join(m2, "f"), "ab") as f:
        f.write(b"+appended by mount 2")
    assert read_file(os.path.join(m1, "f")) == data + b"+appended by mount 2"
    # shrinking is seen too
    with open(os.path.join(m1, "f"), "r+b") as f:
        f.truncate(10)
    assert read_file(os.path.join(m2, "f")) == data[:10]

    # a name created in one shows in the other after the entry timeout (negative entries
    # are cached that long)
    assert not os.path.exists(os.path.join(m2, "later"))
    os.mkdir(os.path.join(m1, "later"))
    write_file(os.path.join(m1, "later", "x"), b"x")
    wait_for(lambda: os.path.isdir(os.path.join(m2, "later")), 5 * ENTRY_TIMEOUT,
             "mkdir visible in mount 2")
    assert os.listdir(os.path.join(m2, "later")) == ["x"]

    # renames, hard links, unlinks and xattrs made in mount 2 show in mount 1
    os.rename(os.path.join(m2, "later", "x"), os.path.join(m2, "y"))
    os.link(os.path.join(m2, "y"), os.path.join(m2, "later", "y2"))
    os.setxattr(os.path.join(m2, "y"), "user.k", b"v2")
    wait_for(lambda: sorted(os.listdir(os.path.join(m1, "later"))) == ["y2"],
             5 * ENTRY_TIMEOUT, "rename and link visible in mount 1")
    wait_for(lambda: os.stat(os.path.join(m1, "y")).st_nlink == 2, 5 * ENTRY_TIMEOUT,
             "link count in mount 1")
    assert os.getxattr(os.path.join(m1, "y"), "user.k") == b"v2"
    os.unlink(os.path.join(m2, "y"))
    wait_for(lambda: not os.path.exists(os.path.join(m1, "y")), 5 * ENTRY_TIMEOUT,
             "unlink visible in mount 1")
    assert read_file(os.path.join(m1, "later", "y2")) == b"x"

    # both create in the same directory at once: every name once, link counts right
    procs = []
    for k, m in enumerate((m1, m2)):
        code = ("import os, sys\n"
                "d = os.path.join(sys.argv[1], 'shared')\n"
                "os.makedirs(d, exist_ok=True)\n"
                "for i in range(60):\n"
                "    p = os.path.join(d, f'p{sys.argv[2]}-{i}')\n"
                "    open(p, 'w').write(p)\n"
                "    os.mkdir(p + '.d')\n"
                "    if i % 3 == 0:\n"
                "        os.rename(p, p + '.renamed')\n"
                "    if i % 5 == 0:\n"
                "        os.rmdir(p + '.d')\n")
        procs.append(subprocess.Popen([conftest.PY, "-c", code, m, str(k)],
                                      stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    time.sleep(2 * ENTRY_TIMEOUT)
    for m in (m1, m2):
        names = os.listdir(os.path.join(m, "shared"))
        assert len(names) == 2 * (60 + 60 - 12), (m, len(names))
        dirs = sum(1 for n in names if n.endswith(".d"))
        assert os.stat(os.path.join(m, "shared")).st_nlink == 2 + dirs

    v.umount(m2)
    v.umount(m1)
    fk = braidfs("fsck", v.meta_url)
    assert fk.returncode == 0, fk.stdout + fk.stderr
    assert "clean" in fk.stdout
    v.mount()  # for the fixture's clean-unmount check


@pytest.mark.timeout(120)
def test_killed_mount_registration_expires(make_pg_volume):
    v = make_pg_volume()
    write_file(v.path("kept"), b"kept")
    os.sync()
    v.kill9()
    force_unmount(v.mnt)
    # the dead mount's registration lives on until it expires (15 s by the database's
    # clock): fsck refuses until then, then runs and finds the volume clean
    fk = braidfs("fsck", v.meta_url)
    assert fk.returncode == 2 and "mounted" in fk.stderr, fk.stderr
    end = time.monotonic() + 40
    while time.monotonic() < end:
        fk = braidfs("fsck", v.meta_url)
        if fk.returncode != 2:
            break
        time.sleep(1)
    assert fk.returncode == 0, fk.stdout + fk.stderr
    # a second mount alongside another live one does not redo recovery; alone it works
    v.mount()
    assert read_file(v.path("kept")) == b"kept"
