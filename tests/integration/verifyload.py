"""Driving braidfs-verify (tools/verify-load.c) from the tests: start a run (optionally inside a
network namespace: pass a Cluster and a node), stop it, read its JSON summary, check a directory
against its journal.

    run = VerifyRun(directory, journal, threads=2, ack="fsync")
    run.start()            # or VerifyRun(..., prefix=cluster.argv("n1", [])).start()
    ...                    # break things
    res = run.stop()       # SIGTERM, wait, parse the summary -> dict
    chk = check(directory, journal)   # dict; chk["errors"] == 0 when every block verified
"""
import json
import os
import signal
import struct
import subprocess
import time

from conftest import BIN


def verify_bin():
    env = os.environ.get("BRAIDFS_VERIFY_BIN")
    if env:
        return os.path.abspath(env)
    return os.path.join(os.path.dirname(BIN), "braidfs-verify")


def _parse(out, what):
    try:
        return json.loads(out)
    except ValueError as e:
        raise AssertionError(f"braidfs-verify {what}: no JSON summary ({e}): {out[-2000:]!r}")


class VerifyRun:
    def __init__(self, directory, journal, threads=2, files=4, blocks=64, block_size="4K",
                 ack="fsync", fsync_every=8, duration=None, writes=None, rate=None,
                 on_error="continue", hang_timeout=120, prefix=(), extra=()):
        self.dir, self.journal = directory, journal
        self.argv = list(prefix) + [verify_bin(), "run", "-t", str(threads), "-f", str(files),
                                    "-n", str(blocks), "-b", str(block_size), "--ack", ack,
                                    "--fsync-every", str(fsync_every), "--on-error", on_error,
                                    "--hang-timeout", str(hang_timeout), "--progress"]
        if duration is not None:
            self.argv += ["--duration", str(duration)]
        if writes is not None:
            self.argv += ["--writes", str(writes)]
        if rate is not None:
            self.argv += ["--rate", str(rate)]
        self.argv += list(extra) + [directory, journal]
        self.proc = None
        self.result = None
        self.stderr = ""

    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        self._err = open(self.journal + ".stderr", "w+")
        self._out = open(self.journal + ".json", "w+")
        self.proc = subprocess.Popen(self.argv, stdout=self._out, stderr=self._err, text=True,
                                     start_new_session=True)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout):
        """Wait for the run to end by itself (--duration / --writes); parse its summary."""
        self.proc.wait(timeout=timeout)
        return self._finish()

    def stop(self, timeout=300):
        """SIGTERM (a clean end: writers finish their write, fsync, acknowledge), then wait
        at most TIMEOUT: a run that does not end in that time is a hang, killed and failed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"braidfs-verify run did not end {timeout} s after SIGTERM "
                                 f"(hung in the file system?)\n{self.stderr_text()[-3000:]}")
        return self._finish()

    def summary_when_printed(self, timeout):
        """The summary as soon as it is complete on stdout, whether or not the process could
        exit yet (a writer stuck in an uninterruptible write keeps a process from exiting even
        after it printed its summary and called _exit)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                with open(self.journal + ".json") as f:
                    text = f.read()
                if text.rstrip().endswith("}"):
                    return _parse(text, "run")
            except (OSError, AssertionError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"braidfs-verify printed no summary within {timeout} s\n"
                             f"{self.stderr_text()[-3000:]}")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass

    def stderr_text(self):
        try:
            with open(self.journal + ".stderr") as f:
                return f.read()
        except OSError:
            return ""

    def _finish(self):
        self._err.close()
        self._out.close()
        self.stderr = self.stderr_text()
        with open(self.journal + ".json") as f:
            out = f.read()
        if not out.strip():
            raise AssertionError(f"braidfs-verify run exited {self.proc.returncode} without a "
                                 f"summary: {self.stderr[-2000:]}")
        self.result = _parse(out, "run")
        self.result["exit"] = self.proc.returncode
        return self.result


def check(directory, journal, prefix=(), timeout=600):
    p = subprocess.run(list(prefix) + [verify_bin(), "check", "--max-report", "20", directory,
                                       journal], capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode not in (0, 1):
        raise AssertionError(f"braidfs-verify check -> exit {p.returncode}: {p.stderr.strip()}")
    r = _parse(p.stdout, "check")
    r["exit"] = p.returncode
    r["stderr"] = p.stderr
    return r


JHDR, REC = 64, 32  # tools/verify_fmt.h


def journal_ack_times(journal):
    """Realtime seconds of every ACK record of a journal, in journal order (a torn last record
    is left out; `check` is what verifies checksums and order)."""
    with open(journal, "rb") as f:
        data = f.read()
    out = []
    for off in range(JHDR, len(data) - REC + 1, REC):
        typ, _file, _block, _crc, _gen, t = struct.unpack_from("<B3xIIIQQ", data, off)
        if typ == 2:
            out.append(t / 1e9)
    return out


def summary(name, r):
    """One line for the test log."""
    if r.get("mode") == "run":
        return (f"{name}: written {r['written']} acknowledged {r['acknowledged']} errors "
                f"{r['errors']} max stall {r['max_stall_ms']:.1f} ms (write "
                f"{r['max_write_ms']:.1f} ms at {r['max_write_at_s']:.1f} s, fsync "
                f"{r['max_fsync_ms']:.1f} ms at {r['max_fsync_at_s']:.1f} s) in "
                f"{r['elapsed_s']:.1f} s")
    return (f"{name}: {r['acknowledged']} acknowledged blocks, {r['verified']} verified "
            f"({r['newer_in_flight']} newer in flight, {r['torn_in_flight']} torn in flight), "
            f"lost {r['lost']} stale {r['stale']} corrupt {r['corrupt']} unexpected "
            f"{r['unexpected']} unreadable {r['unreadable']}")
