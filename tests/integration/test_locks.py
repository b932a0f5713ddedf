"""File locks across the mounts of one PostgreSQL volume (FS-9, META-18).

Two mounts of one volume (two processes on this machine, as in test_postgres_meta.py) stand for
two nodes: a lock taken through one must bind the other. Without lock handlers the kernel keeps
locks per mount and every conflict below would go unseen.

- fcntl record locks: F_SETLK conflicts (EAGAIN), F_GETLK names the holder (range, pid),
  unlock and close(2) free the range, F_SETLKW waits until the holder lets go and ends with
  EINTR when a signal interrupts it; OFD locks likewise;
- flock(2): LOCK_EX / LOCK_SH conflict across mounts, blocking flock waits; flock and fcntl
  locks stay independent, as on Linux;
- a process killed with -9 loses its locks (the kernel closes its files);
- a mount killed with -9 loses its locks once its client registration lapses (client_ttl);
- a request blocked in a mount that stops ends instead of waiting for ever.

Every locking process is a child (`Locker`) driven over a pipe, so that a blocked call can be
watched from outside. Waits for an event have deadlines; no assertion depends on speed.
"""

import os
import select
import signal
import subprocess
import time

import pytest

import conftest
from test_postgres_meta import make_pg_volume, pg, wait_for  # noqa: F401 (fixtures)

LOCKER = r"""
import errno, fcntl, os, signal, struct, sys

fds = {}


def out(s):
    sys.stdout.write(s + "\n")
    sys.stdout.flush()


def alarm(sig, frame):
    raise TimeoutError()


signal.signal(signal.SIGALRM, alarm)
out("ready %d" % os.getpid())
for line in sys.stdin:
    c = line.split()
    try:
        if c[0] == "open":  # open NAME PATH
            fds[c[1]] = os.open(c[2], os.O_RDWR | os.O_CREAT, 0o644)
        elif c[0] == "close":  # close NAME
            os.close(fds.pop(c[1]))
        elif c[0] == "lk":  # lk NAME r|w|u START LEN set|wait|ofd|ofdwait [ALARM_S]
            t = {"r": fcntl.F_RDLCK, "w": fcntl.F_WRLCK, "u": fcntl.F_UNLCK}[c[2]]
            op = {"set": fcntl.F_SETLK, "wait": fcntl.F_SETLKW, "ofd": fcntl.F_OFD_SETLK,
                  "ofdwait": fcntl.F_OFD_SETLKW}[c[5]]
            if len(c) > 6:
                signal.alarm(int(c[6]))
            try:
                fcntl.fcntl(fds[c[1]], op, struct.pack("hhqqi4x", t, 0, int(c[3]), int(c[4]), 0))
            finally:
                signal.alarm(0)
        elif c[0] == "getlk":  # getlk NAME r|w START LEN -> "lock TYPE START LEN PID" / "none"
            t = {"r": fcntl.F_RDLCK, "w": fcntl.F_WRLCK}[c[2]]
            b = fcntl.fcntl(fds[c[1]], fcntl.F_GETLK,
                            struct.pack("hhqqi4x", t, 0, int(c[3]), int(c[4]), 0))
            lt, _, st, ln, pid = struct.unpack("hhqqi4x", b)
            if lt == fcntl.F_UNLCK:
                out("none")
            else:
                out("lock %s %d %d %d" % ("w" if lt == fcntl.F_WRLCK else "r", st, ln, pid))
            continue
        elif c[0] == "flock":  # flock NAME sh|ex|un [nb]
            op = {"sh": fcntl.LOCK_SH, "ex": fcntl.LOCK_EX, "un": fcntl.LOCK_UN}[c[2]]
            fcntl.flock(fds[c[1]], op | (fcntl.LOCK_NB if "nb" in c[3:] else 0))
        out("ok")
    except TimeoutError:
        out("interrupted")
    except OSError as e:
        out("err %s" % errno.errorcode.get(e.errno, e.errno))
"""


class Locker:
    """A child process that runs lock commands (see LOCKER) one at a time."""

    def __init__(self):
        self.p = subprocess.Popen([conftest.PY, "-c", LOCKER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, bufsize=1)
        line = self.reply(30)
        assert line.startswith("ready "), line
        self.pid = int(line.split()[1])

    def send(self, cmd):
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()

    def reply(self, timeout=60):
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        assert r, f"no answer within {timeout} s"
        return self.p.stdout.readline().strip()

    def pending(self, wait=0.5):
        """True while the last command has not answered (still blocked) after `wait` s."""
        r, _, _ = select.select([self.p.stdout], [], [], wait)
        return not r

    def do(self, cmd, timeout=60):
        self.send(cmd)
        return self.reply(timeout)

    def open(self, name, mnt, path):
        """Open mnt/path (created if missing) as descriptor `name`; it must succeed."""
        assert self.do(f"open {name} {os.path.join(mnt, path)}") == "ok"

    def kill9(self):
        self.p.kill()
        self.p.wait(timeout=30)

    def close(self):
        if self.p.poll() is None:
            self.p.stdin.close()
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill9()


@pytest.fixture
def lockers():
    made = []

    def make():
        lk = Locker()
        made.append(lk)
        return lk
    yield make
    for lk in made:
        lk.close()


def two_mounts(make_pg_volume, opts=None):
    """Mount 1 with opts, mount 2 with the defaults."""
    v = make_pg_volume(mount=False)
    v.mount(opts=opts)
    m2 = v.add_mountpoint("mnt2")
    v.mount(opts="", mnt=m2)
    return v, v.mnt, m2


@pytest.mark.timeout(300)
def test_fcntl_locks_across_mounts(make_pg_volume, lockers):
    v, m1, m2 = two_mounts(make_pg_volume)
    a, b, c = lockers(), lockers(), lockers()
    a.open("f", m1, "db")
    b.open("f", m2, "db")
    c.open("f", m2, "db")

    assert a.do("lk f w 0 100 set") == "ok"
    # mount 2 sees it: F_SETLK fails, F_GETLK names range and holder
    assert b.do("lk f w 50 10 set") == "err EAGAIN"
    assert b.do("lk f r 99 1 set") == "err EAGAIN"
    assert b.do("getlk f r 0 0") == f"lock w 0 100 {a.pid}"
    # beside the lock: granted, and seen from mount 1 in turn
    assert b.do("lk f r 100 50 set") == "ok"
    assert a.do("lk f w 120 1 set") == "err EAGAIN"
    assert a.do("getlk f w 100 0") == f"lock r 100 50 {b.pid}"
    # F_SETLKW in mount 2 waits until mount 1 unlocks
    c.send("lk f w 0 10 wait")
    assert c.pending(), "F_SETLKW returned while the range was locked in the other mount"
    assert a.do("lk f u 0 0 set") == "ok"
    assert c.reply() == "ok"
    assert a.do("lk f w 5 1 set") == "err EAGAIN"
    # close(2) of any descriptor of the file drops the process's locks (POSIX)
    c.open("g", m2, "db")
    assert c.do("close g") == "ok"
    assert a.do("lk f w 0 10 set") == "ok"
    # a blocked F_SETLKW ends when a signal interrupts it
    assert c.do("lk f w 0 1 wait 1", timeout=60) == "interrupted"
    assert a.do("lk f u 0 0 set") == "ok"
    # OFD locks conflict across mounts too, and go with the last close of their file
    assert a.do("lk f w 0 10 ofd") == "ok"
    assert b.do("lk f w 0 10 ofd") == "err EAGAIN"
    b.send("lk f w 0 10 ofdwait")
    assert b.pending()
    assert a.do("close f") == "ok"
    assert b.reply() == "ok"


@pytest.mark.timeout(300)
def test_flock_across_mounts(make_pg_volume, lockers):
    v, m1, m2 = two_mounts(make_pg_volume)
    a, b = lockers(), lockers()
    a.open("f", m1, "lockfile")
    b.open("f", m2, "lockfile")
    assert a.do("flock f ex nb") == "ok"
    assert b.do("flock f ex nb") == "err EAGAIN"
    assert b.do("flock f sh nb") == "err EAGAIN"
    # flock and fcntl locks are separate, as on Linux
    assert b.do("lk f w 0 0 set") == "ok"
    assert b.do("lk f u 0 0 set") == "ok"
    # a blocking flock waits for the other mount's unlock
    b.send("flock f ex")
    assert b.pending(), "flock returned while the other mount held LOCK_EX"
    assert a.do("flock f un") == "ok"
    assert b.reply() == "ok"
    assert a.do("flock f sh nb") == "err EAGAIN"
    # shared locks share; closing the file drops its flock (RELEASE: the kernel sends it
    # after close(2) returned, so the lock goes a moment later)
    assert b.do("flock f sh") == "ok"
    assert a.do("flock f sh nb") == "ok"
    assert a.do("close f") == "ok"
    assert b.do("close f") == "ok"
    a.open("f", m1, "lockfile")
    wait_for(lambda: a.do("flock f ex nb") == "ok", 30, "flock free after the last close")


@pytest.mark.timeout(300)
def test_killed_process_releases_its_locks(make_pg_volume, lockers):
    v, m1, m2 = two_mounts(make_pg_volume)
    a, b = lockers(), lockers()
    a.open("f", m1, "mysql.lock")
    a.open("g", m1, "ibdata")
    assert a.do("lk f w 0 0 set") == "ok"
    assert a.do("flock g ex") == "ok"
    assert a.do("lk g w 0 4096 ofd") == "ok"
    b.open("f", m2, "mysql.lock")
    b.open("g", m2, "ibdata")
    assert b.do("lk f w 0 0 set") == "err EAGAIN"
    assert b.do("flock g ex nb") == "err EAGAIN"
    assert b.do("lk g w 0 1 ofd") == "err EAGAIN"
    a.kill9()
    # its POSIX lock went when the kernel closed its files (FLUSH), before it was reaped
    assert b.do("lk f w 0 0 set") == "ok"
    # flock and OFD locks go with RELEASE, which the kernel sends a moment later
    wait_for(lambda: b.do("flock g ex nb") == "ok", 30, "flock of the killed process freed")
    wait_for(lambda: b.do("lk g w 0 1 ofd") == "ok", 30, "OFD lock of the killed process freed")


@pytest.mark.timeout(300)
def test_killed_mount_releases_its_locks(make_pg_volume, lockers):
    ttl = 3
    v, m1, m2 = two_mounts(make_pg_volume, opts=f"client_ttl={ttl}")
    a, b = lockers(), lockers()
    a.open("f", m1, "db")
    assert a.do("lk f w 0 0 set") == "ok"
    a.open("g", m1, "lockfile")
    assert a.do("flock g ex") == "ok"
    b.open("f", m2, "db")
    b.open("g", m2, "lockfile")
    t0 = time.monotonic()
    v.kill9(m1)
    res = b.do("lk f w 0 0 set")
    if time.monotonic() - t0 < ttl / 2:
        # the dead mount's registration has not lapsed: its locks still bind
        assert res == "err EAGAIN", res
    # once it lapses (database clock), the locks are free
    wait_for(lambda: b.do("lk f w 0 0 set") == "ok", 60, "the dead mount's fcntl lock released")
    assert b.do("flock g ex nb") == "ok"
    a.kill9()
    conftest.force_unmount(m1)


@pytest.mark.timeout(300)
def test_blocked_lock_ends_when_the_mount_stops(make_pg_volume, lockers):
    v, m1, m2 = two_mounts(make_pg_volume)
    a, b = lockers(), lockers()
    a.open("f", m1, "db")
    b.open("f", m2, "db")
    assert a.do("lk f w 0 0 set") == "ok"
    b.send("lk f w 0 0 wait")
    assert b.pending()
    # the mount that parked the request stops (SIGTERM: a clean exit of its loop): the
    # request ends with an error instead of waiting for ever
    os.kill(v.pid(m2), signal.SIGTERM)
    res = b.reply(60)
    assert res.startswith("err "), res
    b.kill9()
    conftest.force_unmount(m2)
