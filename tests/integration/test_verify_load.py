"""braidfs-verify, the verifying workload: a run on a plain directory and on a braidfs mount
checks clean in both ack modes, and the checker DOES fail when a block is lost, corrupt,
misplaced, stale, truncated away or deleted behind its back; a run killed with -9 still checks
clean (its in-flight writes are accepted, its acknowledged ones required); file system errors
are counted and reported with their time, and --on-error stop stops; bad input is refused and
nothing is overwritten."""
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import run_on_tty, set_fault
from verifyload import VerifyRun, check, summary, verify_bin

BS = 4096


def run_to_end(d, j, **kw):
    r = VerifyRun(d, j, **kw).start()
    res = r.wait(timeout=300)
    print(summary("run", res))
    return res


def block(path, i, data=None):
    fd = os.open(path, os.O_RDWR)
    try:
        if data is None:
            return os.pread(fd, BS, i * BS)
        os.pwrite(fd, data, i * BS)
        os.fsync(fd)
    finally:
        os.close(fd)


def written_blocks(path):
    """Indexes of the blocks of a file that hold something (the checker's magic)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    return [i for i in range(len(data) // BS) if data[i * BS:i * BS + 8] == b"BFSVBLK1"]


def test_help_and_usage(tmp_path):
    p = subprocess.run([verify_bin(), "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "Usage: braidfs-verify run" in p.stdout
    assert "Exit status" in p.stdout
    for argv, needle in ((["run"], "DIR and JOURNAL"),
                         (["run", "--ack", "maybe", "a", "b"], "--ack maybe"),
                         (["run", "--ack", "fsync", "--fsync-every", "0", "a", "b"],
                          "--fsync-every"),
                         (["run", "-b", "1000", "a", "b"], "block size"),
                         (["run", "-t", "9", "-f", "1", "-n", "8", "a", "b"], "every thread"),
                         (["frobnicate"], "unknown command"),
                         (["check", str(tmp_path), str(tmp_path / "nope")], "nope")):
        p = subprocess.run([verify_bin()] + argv, capture_output=True, text=True)
        assert p.returncode == 2, (argv, p.returncode, p.stderr)
        assert needle in p.stderr and p.stderr.count("\n") == 1, (argv, p.stderr)


def test_refuses_to_overwrite(tmp_path):
    d, j = tmp_path / "d", tmp_path / "j"
    d.mkdir()
    j.write_bytes(b"precious")
    p = subprocess.run([verify_bin(), "run", "-w", "10", str(d), str(j)], capture_output=True,
                       text=True)
    assert p.returncode == 2 and "never overwrites" in p.stderr
    assert j.read_bytes() == b"precious"
    assert not os.listdir(d)
    # a directory with a file of another run: refused, and the new journal is not left behind
    j.unlink()
    (d / "vl-00003.dat").write_bytes(b"other run")
    p = subprocess.run([verify_bin(), "run", "-w", "10", str(d), str(j)], capture_output=True,
                       text=True)
    assert p.returncode == 2 and "another run" in p.stderr
    assert not j.exists()
    assert sorted(os.listdir(d)) == ["vl-00003.dat"]
    assert (d / "vl-00003.dat").read_bytes() == b"other run"
    # a damaged journal: check refuses to judge (exit 2) rather than report nonsense
    d2, j2 = tmp_path / "d2", tmp_path / "j2"
    run_to_end(str(d2), str(j2), writes=200)
    data = bytearray(j2.read_bytes())
    data[64 + 32 * 5 + 17] ^= 1
    j2.write_bytes(bytes(data))
    p = subprocess.run([verify_bin(), "check", str(d2), str(j2)], capture_output=True, text=True)
    assert p.returncode == 2 and "record 5: checksum mismatch" in p.stderr


@pytest.mark.parametrize("ack", ["write", "fsync"])
def test_plain_dir_clean_and_every_damage_found(tmp_path, ack):
    d, j = str(tmp_path / "d"), str(tmp_path / "j")
    res = run_to_end(d, j, threads=3, files=4, blocks=32, ack=ack, writes=3000)
    assert res["exit"] == 0 and res["errors"] == 0
    assert res["written"] == 3000 and res["acknowledged"] == 3000
    assert res["stopped_by"] == "writes" and not res["hung"]
    c = check(d, j)
    print(summary("check", c))
    assert c["exit"] == 0 and c["errors"] == 0, c["stderr"]
    assert c["issued_records"] == 3000 and c["ack_records"] == 3000
    assert c["verified"] == c["acknowledged"] > 100
    assert c["newer_in_flight"] == 0  # a clean end: nothing in flight

    f0, f1, f2 = (os.path.join(d, f"vl-{i:05d}.dat") for i in range(3))
    w0 = written_blocks(f0)
    assert len(w0) >= 4
    # lost: zeroed; corrupt: one flipped bit; misplaced: a neighbour's whole block
    block(f0, w0[0], b"\0" * BS)
    b = bytearray(block(f0, w0[1]))
    b[2000] ^= 0x10
    block(f0, w0[1], bytes(b))
    block(f0, w0[2], block(f0, w0[3]))
    c = check(d, j)
    print(summary("damaged", c))
    assert c["exit"] == 1
    assert (c["lost"], c["corrupt"], c["stale"]) == (1, 2, 0), c["stderr"]
    assert c["errors"] == 3 and len(c["problem_list"]) == 3
    assert f"block {w0[0]} (offset {w0[0] * BS}): lost" in c["stderr"]
    assert "checksum mismatch" in c["stderr"] and "another place" in c["stderr"]

    # a truncated file: its acknowledged blocks past the end are lost; a deleted one: all
    w1 = written_blocks(f1)
    os.truncate(f1, w1[-1] * BS)
    n2 = len(written_blocks(f2))
    os.unlink(f2)
    c = check(d, j)
    assert c["lost"] == 1 + 1 + n2, c["stderr"]
    assert "past the end of the file" in c["stderr"]


def test_stale_block_found(tmp_path):
    """A replica that missed writes: the file as it was earlier, put back after the run."""
    d, j = str(tmp_path / "d"), str(tmp_path / "j")
    r = VerifyRun(d, j, threads=2, files=1, blocks=16, ack="fsync", rate=400).start()
    f = os.path.join(d, "vl-00000.dat")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(written_blocks(f)) < 16:
        time.sleep(0.1)
    time.sleep(0.5)
    old = open(f, "rb").read()
    time.sleep(1.5)  # ~600 more writes over 16 blocks: every block moves on
    res = r.stop()
    assert res["exit"] == 0 and res["stopped_by"] == "signal"
    assert check(d, j)["exit"] == 0
    with open(f, "r+b") as fh:
        fh.write(old)
    c = check(d, j)
    print(summary("stale", c))
    assert c["exit"] == 1 and c["stale"] >= 12, c["stderr"]
    assert "stale: generation" in c["stderr"]


def test_killed_run_checks_clean(tmp_path):
    """kill -9 of the checker mid-run: writes in flight may or may not be there (both are
    accepted), the journal may end in a torn record; every acknowledged write must be there."""
    d, j = str(tmp_path / "d"), str(tmp_path / "j")
    r = VerifyRun(d, j, threads=4, files=2, blocks=16, ack="write", fsync_every=0).start()
    time.sleep(1.5)
    r.kill()
    c = check(d, j)
    print(summary("after kill -9", c))
    assert c["exit"] == 0, c["stderr"]
    assert c["ack_records"] > 100


@pytest.mark.parametrize("ack", ["write", "fsync"])
def test_on_braidfs_mount(make_volume, ack, tmp_path):
    v = make_volume(targets=("dir", "dir"))
    d = os.path.join(v.mnt, "load")
    j = str(tmp_path / "journal")  # OUTSIDE the mount
    res = run_to_end(d, j, threads=3, files=4, blocks=64, ack=ack, duration=4)
    assert res["exit"] == 0 and res["errors"] == 0 and res["acknowledged"] > 100, res
    c = check(d, j)
    print(summary("check", c))
    assert c["exit"] == 0 and c["verified"] == c["acknowledged"] > 50, c["stderr"]
    v.remount()
    c = check(d, j)
    assert c["exit"] == 0 and c["verified"] == c["acknowledged"], c["stderr"]
    # behind the checker's back, through the file system: one block overwritten
    f = os.path.join(d, "vl-00001.dat")
    w = written_blocks(f)
    block(f, w[0], b"x" * BS)
    v.remount()
    c = check(d, j)
    assert c["exit"] == 1 and c["corrupt"] == 1, c["stderr"]


def test_fs_errors_counted_and_stop(make_volume, tmp_path):
    """Every replica fails its writes: the application sees EIO; the run counts it with its
    time, and --on-error stop ends the run. What was acknowledged before still checks."""
    v = make_volume(targets=("faulty", "faulty"))
    d = os.path.join(v.mnt, "load")
    j = str(tmp_path / "j1")
    res = run_to_end(d, j, threads=2, files=2, blocks=16, ack="fsync", writes=400)
    assert res["exit"] == 0
    j2 = str(tmp_path / "j2")
    d2 = os.path.join(v.mnt, "load2")
    for t in v.target_dirs:
        set_fault(t, "write=EIO\nsync=EIO\n")
    try:
        r = VerifyRun(d2, j2, threads=2, files=2, blocks=16, ack="fsync", fsync_every=1,
                      on_error="stop", duration=60).start()
        res = r.wait(timeout=120)
    finally:
        for t in v.target_dirs:
            set_fault(t, None)
    print(summary("faulty", res))
    assert res["exit"] == 1 and res["errors"] >= 1
    assert res["stopped_by"] == "error" and res["elapsed_s"] < 60
    e = res["error_list"][0]
    assert e["errno"] == "EIO" and e["op"] in ("write", "fsync") and e["t"] >= 0
    assert "Input/output error (EIO)" in r.stderr
    c = check(d, j)
    assert c["exit"] == 0 and c["verified"] == c["acknowledged"] > 0, c["stderr"]
    # what the failing run acknowledged (nothing, or what came before the first error)
    c2 = check(d2, j2)
    assert c2["exit"] == 0, c2["stderr"]


def test_progress_lines_and_sigterm(tmp_path):
    d, j = str(tmp_path / "d"), str(tmp_path / "j")
    r = VerifyRun(d, j, threads=2, rate=500).start()
    time.sleep(2.5)
    res = r.stop()
    assert res["exit"] == 0 and res["stopped_by"] == "signal"
    lines = [x for x in r.stderr.splitlines() if "written" in x]
    assert len(lines) >= 2 and "max stall" in lines[0] and "\r" not in r.stderr
    assert res["acknowledged"] == res["written"] > 0
    shutil.rmtree(d)


def test_progress_redrawn_on_a_terminal(tmp_path):
    """On a terminal the progress line is redrawn in place (carriage return, clear to the end
    of line) and the run ends with a newline; the summary stays on stdout alone."""
    d, j = str(tmp_path / "d"), str(tmp_path / "j")
    os.mkdir(d)
    rc, out, tty = run_on_tty([verify_bin(), "run", "-t", "2", "-r", "400", "-d", "2.5", d, j])
    assert rc == 0
    assert tty.count(b"\r\x1b[K") >= 2 and b"written" in tty and tty.endswith(b"\r\n"), tty
    assert out.lstrip().startswith("{") and '"stopped_by": "duration"' in out


def test_hung_writers_reported(volume, tmp_path):
    """A file system that stops answering (its daemon stopped with SIGSTOP): the run ends at
    its duration, waits --hang-timeout for the stuck writers, then reports them as hung (exit
    1, "hung": true, the oldest write in flight on the progress lines) instead of hanging."""
    d = os.path.join(volume.mnt, "load")
    j = str(tmp_path / "j")
    pid = volume.pid()
    r = VerifyRun(d, j, threads=2, rate=200, duration=3, hang_timeout=2).start()
    try:
        time.sleep(1)
        os.kill(pid, signal.SIGSTOP)
        # the summary comes while the writers are still stuck (the process itself can exit
        # only once the file system answers them)
        res = r.summary_when_printed(timeout=60)
    finally:
        os.kill(pid, signal.SIGCONT)
    r.wait(timeout=60)
    print(summary("stuck", res))
    assert r.proc.returncode == 1 and res["hung"] is True
    assert "still stuck in the file system" in r.stderr
    stuck = [float(x.split("oldest in flight ")[1].split(" ms")[0])
             for x in r.stderr.splitlines() if "oldest in flight" in x]
    assert max(stuck) >= 1000, stuck  # a write in flight for a second or more was shown
    c = check(d, j)  # the daemon runs again: everything acknowledged is there
    assert c["exit"] == 0 and c["verified"] == c["acknowledged"] > 0, c["stderr"]
