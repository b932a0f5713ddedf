#!/usr/bin/python3
"""targets — real iSCSI and NBD servers on loopback for the device tests.

Starts, in a directory of its own (DIR):
  iscsi   tgtd (Debian package tgt) in the foreground, its management channel on a control
          port of its own (-C N, so a system tgtd is never touched), one portal on
          127.0.0.1:PORT, target IQN_TEST with LUN 1 backed by DIR/iscsi.img (thin
          provisioning on: UNMAP works) and target IQN_CHAP, same kind of LUN on
          DIR/iscsi-chap.img, that only a CHAP login with CHAP_USER/CHAP_PASS reaches.
  nbd     nbdkit, file plugin in dir= mode over DIR/exports (each file is an export), on
          127.0.0.1:PORT.
  nbdunix the same, on the unix socket DIR/nbd.sock.

and writes DIR/targets.json with their pids, ports and URLs. The URLs go into the
environment of the command `run` starts:
  BRAIDFS_TEST_ISCSI_URL      iscsi://127.0.0.1:PORT/IQN_TEST/1
  BRAIDFS_TEST_ISCSI_CHAP_URL iscsi://USER%PASS@127.0.0.1:PORT/IQN_CHAP/1
  BRAIDFS_TEST_NBD_URL        nbd://127.0.0.1:PORT/disk0
  BRAIDFS_TEST_NBD_UNIX_URL   nbd+unix:///disk1?socket=DIR/nbd.sock
  BRAIDFS_TEST_DEV_SIZE       bytes of every LUN / export
  BRAIDFS_TEST_TARGETS        "PYTHON THIS_FILE" (for kill/revive) and
  BRAIDFS_TEST_TARGETS_DIR    DIR

Usage (also through targets.sh):
  targets.py start DIR [SIZE_MIB]   start all three, print `export VAR=...` lines
  targets.py stop DIR               stop them, remove DIR's images and sockets
  targets.py kill DIR NAME          SIGKILL one server (iscsi|nbd|nbdunix); images stay
  targets.py revive DIR NAME        start it again on the same port / socket and images
  targets.py pause DIR NAME         SIGSTOP one server (a hung server: connections stay open)
  targets.py resume DIR NAME        SIGCONT it
  targets.py run DIR -- CMD ARGS    start, run CMD with the URLs in its environment, stop
                                    (always, also on a signal); exit with CMD's status, or
                                    77 (skip) when a server program is missing or not root

Nothing is left running: every process is started by this module, killed by pid, and
waited for; tgtd's control socket files are removed.
"""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

IQN_TEST = "iqn.2026-01.org.braidfs:test"
IQN_CHAP = "iqn.2026-01.org.braidfs:chap"
CHAP_USER = "braidfs"
CHAP_PASS = "braidfs-secret1"
SIZE_MIB = 64
START_TIMEOUT = 15.0
SKIP = 77
NAMES = ("iscsi", "nbd", "nbdunix")


class TargetsError(Exception):
    pass


def free_port():
    """A TCP port on 127.0.0.1 nobody listens on (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_tgt_control():
    """A tgtd management port (1..32767) whose socket file no tgtd holds."""
    for _ in range(1000):
        n = random.randint(20000, 32767)
        if not os.path.exists(f"/var/run/tgtd/socket.{n}"):
            return n
    raise TargetsError("no free tgtd control port in 20000..32767 (/var/run/tgtd is full)")


def missing_programs():
    return [p for p in ("tgtd", "tgtadm", "nbdkit") if not shutil.which(p)]


def _wait_tcp(port, pid, what):
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise TargetsError(f"{what} exited at start (see its log)")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TargetsError(f"{what} does not answer on 127.0.0.1:{port}")


def _wait_unix(path, pid, what):
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise TargetsError(f"{what} exited at start (see its log)")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                s.connect(path)
                return
        except OSError:
            time.sleep(0.05)
    raise TargetsError(f"{what} does not answer on {path}")


def _read_pidfile(path):
    """nbdkit's daemon child writes its pid file, maybe after the parent returned."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                text = f.read()
            if text.endswith("\n"):
                return int(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise TargetsError(f"{path}: no pid file from nbdkit")


def _kill_pid(pid, sig=signal.SIGKILL):
    """Kill one process we started (SIGKILL when sig does not end it within 5 s) and wait
    until it is gone or a zombie of another parent."""
    if not pid:
        return
    for s, wait in ((sig, 5), (signal.SIGKILL, 10)):
        try:
            os.kill(pid, s)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.02)
        if not _alive(pid):
            return


class Targets:
    """The three servers of one directory. State lives in DIR/targets.json so that separate
    invocations (start, kill, revive, stop) work on the same servers."""

    def __init__(self, d, size_mib=SIZE_MIB):
        self.dir = os.path.abspath(d)
        self.size_mib = size_mib
        self.state_path = os.path.join(self.dir, "targets.json")
        self.st = {}
        if os.path.exists(self.state_path):
            with open(self.state_path) as f:
                self.st = json.load(f)

    # ------------------------------------------------------------------ state

    def _save(self):
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.st, f, indent=1)
        os.replace(tmp, self.state_path)

    def _log(self, name):
        return open(os.path.join(self.dir, name + ".log"), "ab")

    def urls(self):
        st = self.st
        return {
            "BRAIDFS_TEST_ISCSI_URL": f"iscsi://127.0.0.1:{st['iscsi_port']}/{IQN_TEST}/1",
            "BRAIDFS_TEST_ISCSI_CHAP_URL":
                f"iscsi://{CHAP_USER}%{CHAP_PASS}@127.0.0.1:{st['iscsi_port']}/{IQN_CHAP}/1",
            "BRAIDFS_TEST_NBD_URL": f"nbd://127.0.0.1:{st['nbd_port']}/disk0",
            "BRAIDFS_TEST_NBD_UNIX_URL":
                f"nbd+unix:///disk1?socket={os.path.join(self.dir, 'nbd.sock')}",
            "BRAIDFS_TEST_DEV_SIZE": str(st["size"]),
            "BRAIDFS_TEST_TARGETS": f"{sys.executable} {os.path.abspath(__file__)}",
            "BRAIDFS_TEST_TARGETS_DIR": self.dir,
        }

    # ------------------------------------------------------------------ tgtd

    def _tgtadm(self, *args):
        argv = ["tgtadm", "-C", str(self.st["tgt_control"]), "--lld", "iscsi"] + list(args)
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise TargetsError(f"{' '.join(argv)}: {p.stderr.strip() or p.returncode}")

    def _start_iscsi(self):
        port = self.st["iscsi_port"]
        proc = subprocess.Popen(
            ["tgtd", "-f", "-C", str(self.st["tgt_control"]),
             "--iscsi", f"portal=127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL, stdout=self._log("tgtd"), stderr=subprocess.STDOUT,
            start_new_session=True)
        self.st["iscsi_pid"] = proc.pid
        self._save()
        _wait_tcp(port, proc.pid, "tgtd")
        # tgtd listens before its management socket is up: retry the first command.
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self._tgtadm("--op", "new", "--mode", "target", "--tid", "1", "-T", IQN_TEST)
                break
            except TargetsError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._tgtadm("--op", "new", "--mode", "target", "--tid", "2", "-T", IQN_CHAP)
        for tid, img in ((1, "iscsi.img"), (2, "iscsi-chap.img")):
            self._tgtadm("--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun",
                         "1", "-b", os.path.join(self.dir, img))
            self._tgtadm("--op", "update", "--mode", "logicalunit", "--tid", str(tid),
                         "--lun", "1", "--params", "thin_provisioning=1")
            self._tgtadm("--op", "bind", "--mode", "target", "--tid", str(tid), "-I", "ALL")
        self._tgtadm("--op", "new", "--mode", "account", "--user", CHAP_USER, "--password",
                     CHAP_PASS)
        self._tgtadm("--op", "bind", "--mode", "account", "--tid", "2", "--user", CHAP_USER)

    def _stop_iscsi(self, graceful):
        pid = self.st.get("iscsi_pid")
        if not pid:
            return
        if _alive(pid):
            os.kill(pid, signal.SIGCONT)  # it may be paused
        if graceful:
            # tgtd ignores SIGTERM while it has targets: delete them, then the system.
            try:
                for tid in ("1", "2"):
                    self._tgtadm("--op", "delete", "--mode", "target", "--tid", tid, "--force")
                self._tgtadm("--op", "delete", "--mode", "system")
            except (TargetsError, subprocess.TimeoutExpired):
                pass
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.02)
        _kill_pid(pid)
        self.st["iscsi_pid"] = None
        self._save()
        ctl = self.st.get("tgt_control")
        for suffix in ("", ".lock"):
            try:
                os.unlink(f"/var/run/tgtd/socket.{ctl}{suffix}")
            except OSError:
                pass

    # ------------------------------------------------------------------ nbdkit

    def _start_nbd(self, name):
        # nbdkit daemonizes itself (-P): a server started with -f exits with the process
        # that started it, and `revive` runs in a process that exits at once.
        pidfile = os.path.join(self.dir, name + ".pid")
        try:
            os.unlink(pidfile)
        except OSError:
            pass
        argv = ["nbdkit", "-P", pidfile, "--log=stderr"]
        if name == "nbd":
            argv += ["-i", "127.0.0.1", "-p", str(self.st["nbd_port"])]
        else:
            argv += ["-U", os.path.join(self.dir, "nbd.sock")]
        argv += ["file", "dir=" + os.path.join(self.dir, "exports")]
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=self._log(name),
                           stderr=subprocess.STDOUT, timeout=START_TIMEOUT)
        if p.returncode != 0:
            raise TargetsError(f"nbdkit ({name}) exited with status {p.returncode} at start")
        self.st[name + "_pid"] = _read_pidfile(pidfile)
        self._save()
        if name == "nbd":
            _wait_tcp(self.st["nbd_port"], self.st[name + "_pid"], "nbdkit")
        else:
            _wait_unix(os.path.join(self.dir, "nbd.sock"), self.st[name + "_pid"], "nbdkit")

    def _stop_nbd(self, name):
        pid = self.st.get(name + "_pid")
        if pid and _alive(pid):
            os.kill(pid, signal.SIGCONT)  # it may be paused
        _kill_pid(pid, signal.SIGTERM)
        self.st[name + "_pid"] = None
        self._save()
        if name == "nbdunix":
            try:
                os.unlink(os.path.join(self.dir, "nbd.sock"))
            except OSError:
                pass

    # ------------------------------------------------------------------ public

    def start(self):
        if os.geteuid() != 0:
            raise TargetsError("tgtd needs root")
        os.makedirs(os.path.join(self.dir, "exports"), exist_ok=True)
        size = self.size_mib << 20
        for img in ("iscsi.img", "iscsi-chap.img", "exports/disk0", "exports/disk1"):
            with open(os.path.join(self.dir, img), "wb") as f:
                f.truncate(size)
        self.st = {"iscsi_port": free_port(), "tgt_control": free_tgt_control(),
                   "nbd_port": free_port(), "size": size}
        self._save()
        try:
            self._start_iscsi()
            self._start_nbd("nbd")
            self._start_nbd("nbdunix")
        except BaseException:
            self.stop()
            raise
        return self.urls()

    def kill(self, name):
        pid = self.st.get(name + "_pid")
        _kill_pid(pid)
        self.st[name + "_pid"] = None
        self._save()
        if name == "iscsi":
            self._stop_iscsi(graceful=False)

    def revive(self, name):
        if self.st.get(name + "_pid") and _alive(self.st[name + "_pid"]):
            return
        if name == "iscsi":
            self._start_iscsi()
        else:
            if name == "nbdunix":
                try:
                    os.unlink(os.path.join(self.dir, "nbd.sock"))
                except OSError:
                    pass
            self._start_nbd(name)

    def signal(self, name, sig):
        pid = self.st.get(name + "_pid")
        if not pid or not _alive(pid):
            raise TargetsError(f"{name} is not running")
        os.kill(pid, sig)

    def stop(self):
        if not self.st:
            return
        self._stop_nbd("nbd")
        self._stop_nbd("nbdunix")
        self._stop_iscsi(graceful=True)
        for f in ("iscsi.img", "iscsi-chap.img", "exports/disk0", "exports/disk1", "nbd.pid",
                  "nbdunix.pid"):
            try:
                os.unlink(os.path.join(self.dir, f))
            except OSError:
                pass
        try:
            os.rmdir(os.path.join(self.dir, "exports"))
        except OSError:
            pass


def _alive(pid):
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie that is not our child still answers kill(0): look at its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _usage():
    sys.stderr.write(__doc__.split("Usage (also through targets.sh):\n", 1)[1].split("\n\n")[0]
                     + "\n")
    return 2


def main(argv):
    if len(argv) < 3:
        return _usage()
    cmd, d = argv[1], argv[2]
    if cmd == "run":
        rest = argv[3:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        if not rest:
            return _usage()
        miss = missing_programs()
        if miss or os.geteuid() != 0:
            why = f"missing {', '.join(miss)}" if miss else "not root"
            print(f"targets: skipped ({why})", file=sys.stderr)
            return SKIP
        os.makedirs(d, exist_ok=True)
        t = Targets(d)
        # A signal (meson's timeout sends SIGTERM) must still stop the servers.
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, lambda *_: sys.exit(128 + 15))
        try:
            env = dict(os.environ)
            env.update(t.start())
            return subprocess.run(rest, env=env).returncode
        except TargetsError as e:
            print(f"targets: {e}", file=sys.stderr)
            return 1
        finally:
            Targets(d).stop()
            shutil.rmtree(d, ignore_errors=True)
    if cmd == "start":
        if len(argv) > 3:
            t = Targets(d, int(argv[3]))
        else:
            t = Targets(d)
        os.makedirs(d, exist_ok=True)
        try:
            for k, v in t.start().items():
                print(f"export {k}='{v}'")
        except TargetsError as e:
            print(f"targets: {e}", file=sys.stderr)
            return 1
        return 0
    t = Targets(d)
    if cmd == "stop":
        t.stop()
        return 0
    if cmd in ("kill", "revive", "pause", "resume") and len(argv) == 4 and argv[3] in NAMES:
        if not t.st:
            print(f"targets: {d}: no servers started there", file=sys.stderr)
            return 1
        try:
            if cmd == "pause":
                t.signal(argv[3], signal.SIGSTOP)
            elif cmd == "resume":
                t.signal(argv[3], signal.SIGCONT)
            else:
                getattr(t, cmd)(argv[3])
        except TargetsError as e:
            print(f"targets: {e}", file=sys.stderr)
            return 1
        return 0
    return _usage()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
