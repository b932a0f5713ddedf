"""End-to-end checksums above the store, on real mounts over `faulty:` targets whose
`corrupt=1` control makes chunks fail their checksum until rewritten (storemgr/README.md):
read repair (DS-4) serves correct data and repairs at once, `braidfs status` shows the
counters, `braidfs scrub` finds every injected corruption — in the mount process when the
volume is mounted, in its own process when it is not — and repairs it (or only reports with
--no-repair), honours --rate, stops on Ctrl-C and on unmount, and the control socket refuses
what it must."""

import errno
import hashlib
import os
import re
import signal
import socket
import stat
import subprocess
import time

import pytest

from conftest import (BIN, braidfs, compare_chunk_trees, drop_caches, pid_alive, read_file,
                      run_on_tty, set_fault, write_file)

MiB = 1 << 20
CHUNK = MiB  # the volumes here use 1 MiB chunks: a few MiB make several chunks per file

SUMMARY = re.compile(r"(\d+) checksum error\(s\), (\d+) differing, (\d+) missing, "
                     r"(\d+) unreadable, (\d+) unrecoverable chunk\(s\); (\d+) repaired")
CHECKSUMS = re.compile(r"checksums (\d+) bad cop(?:y|ies) met, (\d+) repaired, (\d+) not repaired")


# --------------------------------------------------------------------------- helpers


def make_files(v, n, size, seed=0):
    """n files of `size` random bytes, fsynced; returns {path: (ino, sha256)}."""
    out = {}
    for i in range(n):
        p = v.path(f"f{seed}_{i}")
        data = os.urandom(size)
        write_file(p, data, fsync=True)
        out[p] = (os.stat(p).st_ino, hashlib.sha256(data).hexdigest())
    return out


def chunks_on(target_dir, inos):
    """Chunk files (non-empty) of these inodes on a dir-like target."""
    n = 0
    for ino in inos:
        d = os.path.join(target_dir, "chunks", f"{ino & 0xff:02x}")
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            if name.startswith(f"{ino:016x}.") and os.path.getsize(os.path.join(d, name)):
                n += 1
    return n


def cat_ok(files):
    """`cat` every file (a real process reading through the kernel) and check its bytes."""
    for p, (_, digest) in files.items():
        r = subprocess.run(["cat", p], capture_output=True, timeout=60)
        assert r.returncode == 0, f"cat {p}: exit {r.returncode}: {r.stderr.decode()}"
        assert hashlib.sha256(r.stdout).hexdigest() == digest, f"cat {p}: wrong bytes"


def scrub(v, *args, timeout=300):
    return braidfs("scrub", *args, v.meta_url, timeout=timeout)


def summary(p):
    """(csum, differing, missing, unreadable, unrecoverable, repaired) from scrub's output."""
    m = SUMMARY.search(p.stdout)
    assert m, f"no summary in scrub's output:\n{p.stdout}\n{p.stderr}"
    return tuple(int(x) for x in m.groups())


def checksums(v):
    """(met, repaired, not repaired) from `braidfs status` of a mounted volume."""
    st = v.status()
    m = CHECKSUMS.search(st.stdout)
    assert m, f"status shows no checksum counters:\n{st.stdout}\n{st.stderr}"
    return tuple(int(x) for x in m.groups()), st.stdout


def target_csum_errors(status_out, target_id):
    """CSUM-ERRORS of a target in status's 'target counters' table (None: '-')."""
    part = status_out.split("target counters", 1)
    assert len(part) == 2, f"status shows no target counters:\n{status_out}"
    for ln in part[1].splitlines():
        f = ln.split()
        if len(f) >= 2 and f[0] == str(target_id):
            return None if f[1] == "-" else int(f[1])
    raise AssertionError(f"target {target_id} not in the counters table:\n{status_out}")


def ino_seed(ino):
    """dataservice's ds_ino_seed (part of the on-disk format: dataservice/README.md)."""
    m = (1 << 64) - 1
    x = (ino + 0x9e3779b97f4a7c15) & m
    x = ((x ^ (x >> 30)) * 0xbf58476d1ce4e5b9) & m
    x = ((x ^ (x >> 27)) * 0x94d049bb133111eb) & m
    x ^= x >> 31
    return (x ^ (x >> 32)) & 0xffffffff


def secondary_of(ino, idx, ntargets=2):
    """Target index holding the second copy of (ino, idx) on a volume formatted with as many
    chains as targets (chain i = targets i, i+1, ...)."""
    return ((ino_seed(ino) + idx) % ntargets + 1) % ntargets


def ctl_path(v):
    return f"/run/braidfs/{v.pid()}.ctl"


def ctl_session(v):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(ctl_path(v))
    return s, s.makefile("rb")


def ctl_lines(f, until):
    """Lines from the daemon until one starting with a word in `until` (included)."""
    out = []
    while True:
        ln = f.readline().decode()
        assert ln, f"the daemon closed the connection; got {out}"
        out.append(ln.rstrip("\n"))
        if ln.split(" ", 1)[0].strip() in until:
            return out


@pytest.fixture
def fvol(make_volume):
    """A mounted 2-replica volume on two faulty targets, 1 MiB chunks."""
    return make_volume(targets=("faulty", "faulty"), chunk_size="1M")


# --------------------------------------------------------------------------- read repair


def test_read_repair_and_status_counters(fvol):
    v = fvol
    files = make_files(v, 4, 2 * MiB + 12345)
    bad = [ino for ino, _ in list(files.values())[:3]]  # three files corrupt, one not
    drop_caches()
    set_fault(v.target_dirs[0], "corrupt=1\nino=%s\n" % ",".join(map(str, bad)))
    corrupt = chunks_on(v.target_dirs[0], bad)
    assert corrupt == 3 * 3

    cat_ok(files)  # data right although the primary of some chunks fails its checksum
    (met, repaired, failed), out = checksums(v)
    # reads ask the primary: the chunks whose primary is target 1 (t0) were met and repaired
    assert repaired >= 1, f"no read met a corrupt primary:\n{out}"
    assert failed == 0 and met >= repaired
    # the target also counts the check under the chunk lock that preceded each repair
    assert target_csum_errors(out, 1) == met + repaired
    assert target_csum_errors(out, 2) == 0
    assert "replica failure" in out and " 0 replica failure(s)" in out, out
    assert "faulty:" + v.target_dirs[0] in out and "degraded" not in out  # no chain change

    # the second read meets no error: the copies were rewritten
    drop_caches()
    cat_ok(files)
    assert checksums(v)[0] == (met, repaired, 0)
    with open(v.log) as f:
        log = f.read()
    assert re.search(r"warning: ds: checksum error on target 1 .*inode \d+ chunk \d+, \d+ "
                     r"byte\(s\) at offset \d+", log), log[-2000:]
    assert "warning: ds: repaired inode" in log

    # what reads did not meet (chunks where t0 is the secondary), the scrub finds: exactly
    p = scrub(v)
    assert p.returncode == 0, p.stdout + p.stderr
    assert summary(p) == (corrupt - repaired, 0, 0, 0, 0, corrupt - repaired)
    assert "all %d problem(s) found were repaired" % (corrupt - repaired) in p.stdout
    p = scrub(v)
    assert p.returncode == 0 and summary(p) == (0, 0, 0, 0, 0, 0), p.stdout
    assert "clean" in p.stdout
    (met2, repaired2, failed2), out = checksums(v)
    assert (met2, repaired2, failed2) == (met + corrupt - repaired, corrupt, 0), out
    v.umount()
    assert not compare_chunk_trees(v.chunk_root(0), v.chunk_root(1))
    v.mount()
    cat_ok(files)


def test_unrecoverable_read_is_eio(fvol):
    v = fvol
    files = make_files(v, 1, 100000)
    (path, (ino, _)), = files.items()
    drop_caches()
    for d in v.target_dirs:
        set_fault(d, f"corrupt=1\nino={ino}\n")
    with pytest.raises(OSError) as e:
        read_file(path)
    assert e.value.errno == errno.EIO
    (met, repaired, failed), _ = checksums(v)
    assert met >= 2 and repaired == 0 and failed >= 2
    p = scrub(v)
    assert p.returncode == 1, p.stdout + p.stderr
    assert summary(p)[0] == 2 and summary(p)[4] == 1
    assert f"inode {ino} chunk 0: unrecoverable" in p.stdout
    assert "unrecoverable chunks need a backup" in p.stdout
    for d in v.target_dirs:
        set_fault(d, None)
    cat_ok(files)  # the bytes were never touched: with the corruption gone they read


# --------------------------------------------------------------------------- scrub, mounted


def test_scrub_mounted_finds_and_repairs_every_corruption(fvol):
    v = fvol
    files = make_files(v, 5, 3 * MiB - 777, seed=1)
    inos = [ino for ino, _ in files.values()]
    set_fault(v.target_dirs[1], "corrupt=1\nino=%s\n" % ",".join(map(str, inos[1:4])))
    corrupt = chunks_on(v.target_dirs[1], inos[1:4])
    assert corrupt == 9

    for _ in range(2):  # --no-repair reports, changes nothing: the same again
        p = scrub(v, "--no-repair")
        assert p.returncode == 1, p.stdout + p.stderr
        assert summary(p) == (corrupt, 0, 0, 0, 0, 0)
        assert "scrubbed by its process" in p.stdout
        assert "run without --no-repair" in p.stdout
        assert len(re.findall(r"on target 2: checksum error\n", p.stdout)) == corrupt
    p = scrub(v)
    assert p.returncode == 0, p.stdout + p.stderr
    assert summary(p) == (corrupt, 0, 0, 0, 0, corrupt)
    assert len(re.findall(r"on target 2: checksum error \(repaired\)", p.stdout)) == corrupt
    p = scrub(v)
    assert p.returncode == 0 and summary(p)[0] == 0 and "clean" in p.stdout, p.stdout
    (met, repaired, failed), out = checksums(v)
    assert (met, repaired, failed) == (3 * corrupt, corrupt, 0), out
    assert target_csum_errors(out, 2) == 3 * corrupt  # one read per chunk per scrub
    drop_caches()
    cat_ok(files)
    assert checksums(v)[0] == (3 * corrupt, corrupt, 0)


def test_scrub_repairs_a_differing_replica_from_the_primary(make_volume):
    v = make_volume(targets=("dir", "dir"), chunk_size="1M")
    files = make_files(v, 2, 2 * MiB, seed=2)
    ino = list(files.values())[0][0]
    # flip a byte of the secondary's copy of chunk 0, behind the mount's back
    sec = secondary_of(ino, 0)
    p = os.path.join(v.chunk_root(sec), f"{ino & 0xff:02x}", f"{ino:016x}.{0:08x}")
    with open(p, "r+b") as f:
        f.seek(4321)
        b = f.read(1)
        f.seek(4321)
        f.write(bytes([b[0] ^ 0x40]))
    r = scrub(v, "--no-repair")
    assert r.returncode == 1 and summary(r)[1] == 1, r.stdout
    assert f"inode {ino} chunk 0 on target {sec + 1}: differs" in r.stdout, r.stdout
    r = scrub(v)
    assert r.returncode == 0 and summary(r)[1] == 1 and summary(r)[5] == 1, r.stdout
    v.umount()
    diffs = compare_chunk_trees(v.chunk_root(0), v.chunk_root(1))
    assert not diffs, diffs
    v.mount()
    drop_caches()
    cat_ok(files)  # the primary's bytes won, and they were the right ones


# --------------------------------------------------------------------------- scrub, unmounted


def test_scrub_unmounted(make_volume):
    v = make_volume(targets=("faulty", "faulty"), chunk_size="1M")
    files = make_files(v, 3, 2 * MiB + 1, seed=3)
    inos = [ino for ino, _ in files.values()]
    v.umount()
    set_fault(v.target_dirs[0], "corrupt=1\nino=%d,%d\n" % (inos[0], inos[2]))
    corrupt = chunks_on(v.target_dirs[0], [inos[0], inos[2]])
    assert corrupt == 6
    p = scrub(v, "--no-repair")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "not mounted, locked by this scrub" in p.stdout
    assert summary(p) == (corrupt, 0, 0, 0, 0, 0)
    p = scrub(v, "--quiet")
    assert p.returncode == 0 and summary(p) == (corrupt, 0, 0, 0, 0, corrupt), p.stdout
    assert "checksum error (repaired)" not in p.stdout  # quiet: the summary only
    p = scrub(v)  # another process: what was rewritten stays healed
    assert p.returncode == 0 and summary(p)[0] == 0, p.stdout
    st = v.status()
    assert st.returncode == 0, st.stdout
    assert "as the targets report them" in st.stdout
    assert target_csum_errors(st.stdout, 1) == 0  # a fresh open of the twin counts from zero
    assert "checksums" not in st.stdout  # no data-service counters without a mount
    v.mount()
    drop_caches()
    cat_ok(files)
    assert checksums(v)[0] == (0, 0, 0)  # nothing left for reads to find


def test_scrub_refuses_a_volume_locked_by_another_scrub(make_volume):
    v = make_volume(targets=("dir", "dir"), chunk_size="1M")
    make_files(v, 2, 4 * MiB, seed=4)
    v.umount()
    slow = subprocess.Popen([BIN, "scrub", "--rate", "1M/s", v.meta_url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        p = scrub(v)
        assert p.returncode == 1, p.stdout + p.stderr
        assert re.search(r"^braidfs scrub: volume 'vol' is in use by pid \d+, which is not "
                         r"a mount", p.stderr), p.stderr
        m = braidfs("mount", v.meta_url, v.mnt)
        assert m.returncode == 1 and "already mounted" in m.stderr, m.stderr
    finally:
        slow.send_signal(signal.SIGINT)
        out, err = slow.communicate(timeout=30)
    assert slow.returncode == 1 and "interrupted" in err, (out, err)
    v.mount()


# --------------------------------------------------------------------------- rate, cancel


def test_scrub_rate_limit(make_volume):
    v = make_volume(targets=("dir", "dir"), chunk_size="1M")
    make_files(v, 3, 4 * MiB, seed=5)
    total = 2 * 3 * 4 * MiB  # every byte on two replicas
    rate = 8 * MiB
    t0 = time.monotonic()
    p = scrub(v, "--rate", "8M/s")
    secs = time.monotonic() - t0
    assert p.returncode == 0, p.stdout + p.stderr
    assert "read in" in p.stdout
    # the limiter's correctness, not a performance test
    assert secs >= total / rate * 0.8, f"{total} bytes at {rate} B/s took only {secs:.2f} s"
    # off a terminal: one progress line per 5 % step, in order, ending at 100 %
    pct = [int(m) for m in re.findall(r"^scrub: +(\d+)%", p.stderr, re.M)]
    assert pct and pct[-1] == 100 and pct == sorted(pct) and len(pct) <= 21, p.stderr
    assert len({x // 5 for x in pct}) == len(pct), p.stderr
    t0 = time.monotonic()
    p = scrub(v, "--rate", "0")
    assert p.returncode == 0
    assert time.monotonic() - t0 < secs


def test_scrub_progress_on_a_terminal(make_volume):
    """On a terminal the progress line is redrawn in place (carriage return, erase to the end
    of the line) and erased before the summary."""
    v = make_volume(targets=("dir", "dir"), chunk_size="1M")
    make_files(v, 1, 6 * MiB, seed=8)
    rc, out, tty = run_on_tty([BIN, "scrub", "--rate", "16M/s", v.meta_url])
    assert rc == 0, out
    draws = tty.count(b"\rscrub:")
    assert draws >= 2 and b"\033[K" in tty, tty[-300:]
    assert tty.endswith(b"\r\033[K"), tty[-100:]  # erased before the summary
    assert "clean" in out


def test_scrub_ctrl_c_and_unmount_cancel(make_volume):
    v = make_volume(targets=("dir", "dir"), chunk_size="1M")
    make_files(v, 2, 5 * MiB, seed=6)
    pid = v.pid()
    t0 = time.monotonic()
    c = subprocess.Popen([BIN, "scrub", "--rate", "1M/s", v.meta_url], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    c.send_signal(signal.SIGINT)
    out, err = c.communicate(timeout=30)
    assert c.returncode == 1, (out, err)
    assert "stopping after the current chunk" in err and "interrupted after" in err, err
    assert time.monotonic() - t0 < 10, "Ctrl-C did not stop the scrub promptly"
    assert pid_alive(pid)
    with open(v.log) as f:
        assert "scrub: cancelled" in f.read()
    # a new scrub is not refused (the first is really gone), and unmounting cancels it
    c = subprocess.Popen([BIN, "scrub", "--rate", "1M/s", v.meta_url], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    v.umount()
    out, err = c.communicate(timeout=30)
    assert c.returncode == 1 and "the volume is being unmounted" in err, (out, err)
    v.mount()


# --------------------------------------------------------------------------- the socket


def test_control_socket(fvol):
    v = fvol
    make_files(v, 1, 3 * MiB, seed=7)
    path = ctl_path(v)
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert os.path.exists(f"/run/braidfs/{v.pid()}.mount")

    s, f = ctl_session(v)  # a request before hello
    s.sendall(b"stats\n")
    assert ctl_lines(f, {"error"}) == ["error msg=expected%20'hello%20version=1'%20first"]
    assert f.readline() == b""  # closed after an error
    s.close()
    for bad, why in [(b"hello version=1 version=1\n", b"given%20twice"),
                     (b"hello version=%zz\n", b"bad%20escape"),
                     (b"HELLO\n", b"verb"),
                     (b"hello version=2\n", b"expected"),
                     (b"x" * 5000 + b"\n", b"longer%20than%204096")]:
        s, f = ctl_session(v)
        s.sendall(bad)
        ln = f.readline()
        assert ln.startswith(b"error msg=") and why in ln, (bad[:40], ln)
        s.close()

    s, f = ctl_session(v)
    s.sendall(b"hello version=1\nstats\n")
    hello = ctl_lines(f, {"hello"})[0]
    assert re.match(r"hello version=1 pid=%d volume=vol$" % v.pid(), hello), hello
    reply = ctl_lines(f, {"end"})
    assert reply[0].startswith("stats ") and "csum_errors_seen=0" in reply[0], reply
    targets = [ln for ln in reply if ln.startswith("target ")]
    assert len(targets) == 2 and all("open=1 counters=1 " in t for t in targets), targets
    # one scrub at a time: a slow one here, a second one refused
    s.sendall(b"scrub rate=1048576 repair=0\n")
    assert ctl_lines(f, {"progress"})[0].startswith("progress chunks=0 chunks_total=3 ")
    s2, f2 = ctl_session(v)
    s2.sendall(b"hello version=1\nscrub rate=0\n")
    ctl_lines(f2, {"hello"})
    assert ctl_lines(f2, {"error"}) == ["error msg=a%20scrub%20is%20already%20running%20on%20"
                                        "this%20volume"]
    s2.close()
    s.sendall(b"cancel\n")
    done = ctl_lines(f, {"done"})[-1]
    assert done.startswith("done status=cancelled problems=0 "), done
    assert f.readline() == b""
    s.close()
    assert v.pid() and pid_alive(v.pid())


def test_request_counters(make_volume):
    """The mount counts the FUSE requests it handles, by kind: `stats requests=1` lists every
    kind seen with its count and handler time, `braidfs status` shows the costliest, a plain
    `stats` stays as it was (no request lines), and a bad `requests` value is refused."""
    v = make_volume()
    for i in range(40):
        with open(os.path.join(v.mnt, f"f{i}"), "w") as fh:
            fh.write("x")
    s, f = ctl_session(v)
    s.sendall(b"hello version=1\nstats requests=1\n")
    ctl_lines(f, {"hello"})
    reqs = {}
    for ln in ctl_lines(f, {"end"}):
        if ln.startswith("request "):
            kv = dict(x.split("=", 1) for x in ln.split()[1:])
            assert set(kv) == {"kind", "count", "busy_us"}, ln
            reqs[kv["kind"]] = (int(kv["count"]), int(kv["busy_us"]))
    assert reqs.get("create", (0, 0))[0] >= 40 and reqs["create"][1] > 0, reqs
    assert reqs.get("write", (0, 0))[0] >= 40 and reqs.get("flush", (0, 0))[0] >= 40, reqs
    s.sendall(b"stats\n")
    plain = ctl_lines(f, {"end"})
    assert plain[0].startswith("stats ") and not [x for x in plain if x.startswith("request")]
    s.sendall(b"stats requests=2\n")
    assert ctl_lines(f, {"error"}) == ["error msg=requests%20must%20be%200%20or%201"]
    s.close()

    st = braidfs("status", v.meta_url)
    assert st.returncode == 0, st.stderr
    m = re.search(r"requests  (\d+) FUSE request\(s\) since mounted", st.stdout)
    assert m and int(m.group(1)) >= 120, st.stdout
    row = re.search(r"^ +create +(\d+) +(\d+) us +(\d+)%$", st.stdout, re.M)
    assert row and int(row.group(1)) >= 40, st.stdout


def test_socket_of_a_killed_mount_is_cleaned_up(make_volume):
    v = make_volume(targets=("dir", "dir"))
    pid = v.pid()
    path = f"/run/braidfs/{pid}.ctl"
    assert os.path.exists(path)
    v.kill9()
    assert os.path.exists(path)  # SIGKILL: nobody could unlink it
    r = braidfs("umount", v.mnt)
    assert r.returncode == 0 and "dead mount" in r.stdout, r.stdout + r.stderr
    assert not os.path.exists(path), "umount's scan left the dead mount's socket"
    assert not os.path.exists(f"/run/braidfs/{pid}.mount")
    v.mount()
    assert os.path.exists(ctl_path(v))
    assert "checksums 0 bad copies met" in v.status().stdout


# --------------------------------------------------------------------------- usage


def test_scrub_usage_errors(fvol):
    v = fvol

    def one_line_error(p, code):
        assert p.returncode == code, f"exit {p.returncode}: {p.stdout}{p.stderr}"
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("braidfs scrub: "), p.stderr
        return lines[0]

    h = braidfs("scrub", "--help")
    assert h.returncode == 0
    for w in ("--rate", "--no-repair", "--quiet", "Exit status", "64M/s", "mounted"):
        assert w in h.stdout, w
    assert "scrub" in braidfs("--help").stdout
    assert "META_URL" in one_line_error(braidfs("scrub"), 2)
    assert "64M/s" in one_line_error(braidfs("scrub", "--rate", "fast", v.meta_url), 2)
    assert "needs a value" in one_line_error(braidfs("scrub", "--rate"), 2)
    assert "unknown option" in one_line_error(braidfs("scrub", "--frobnicate", v.meta_url), 2)
    one_line_error(braidfs("scrub", v.meta_url, "extra"), 2)
    missing = os.path.join(v.dir, "nope.db")
    assert "nope.db" in one_line_error(braidfs("scrub", "sqlite://" + missing), 1)
    assert not os.path.exists(missing)
    one_line_error(braidfs("scrub", "http://x"), 1)
