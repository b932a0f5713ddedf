"""braidfs across nodes on one machine: three `braidfs serve` processes on loopback ports, each
with its own image-file target, a PostgreSQL metadata database, and one mount
(docs/distributed.md).

- `braidfs serve` refuses a bad configuration with its line and column, and without --config;
- a volume formatted with NODE@URL targets mounts, and what it writes reads back; every chunk is
  on every node: with two of the three nodes killed one after the other, everything still reads
  back from the third;
- a writer that fsyncs every file keeps going while a secondary and then a primary are killed
  with -9: no write fails, nothing acknowledged is lost, and the chains' epochs in the database
  show both removals (the manager's and the primaries' chain changes);
- a serve stopped with SIGTERM marks its node down; the node comes back with a restart.

The database is the module's private PostgreSQL (test_postgres_meta.py's fixture).
"""

import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import BIN, braidfs, drop_caches, force_unmount, is_mounted, kill_pid
from test_postgres_meta import new_database, pg, psql  # noqa: F401  (pg is a fixture)

HEARTBEAT_MS = 200
LEASE_MS = 1000


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(cond, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Cluster:
    """n serve nodes with one file: target each, a volume over them, and a mount."""

    def __init__(self, base, meta_url, n=3, replicas=3):
        self.base, self.meta, self.n, self.replicas = base, meta_url, n, replicas
        self.names = [f"n{i + 1}" for i in range(n)]
        self.ports = [free_port() for _ in range(n)]
        self.imgs = [os.path.join(base, f"{name}.img") for name in self.names]
        self.procs = [None] * n
        self.mnt = os.path.join(base, "mnt")
        os.makedirs(self.mnt, exist_ok=True)
        for img in self.imgs:
            with open(img, "wb") as f:
                f.truncate(512 << 20)
        for i, name in enumerate(self.names):
            with open(self.config(i), "w") as f:
                f.write(f"node: {name}\nlisten: 127.0.0.1:{self.ports[i]}\nmeta: {meta_url}\n"
                        f"targets: [file:{self.imgs[i]}]\nheartbeat_ms: {HEARTBEAT_MS}\n"
                        f"lease_ms: {LEASE_MS}\n")

    def config(self, i):
        return os.path.join(self.base, f"{self.names[i]}.yaml")

    def log(self, i):
        return os.path.join(self.base, f"{self.names[i]}.log")

    def format(self):
        targets = [f"{name}@file:{img}" for name, img in zip(self.names, self.imgs)]
        braidfs("format", "--replicas", self.replicas, "--chains", 8, "--chunk-size", "1M",
                self.meta, "vol", *targets, check=True)

    def start(self, i):
        log = open(self.log(i), "a")
        self.procs[i] = subprocess.Popen([BIN, "serve", "--config", self.config(i)],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        wait_for(lambda: self.listening(i) or self.procs[i].poll() is not None, 30,
                 f"{self.names[i]} to listen")
        assert self.procs[i].poll() is None, self.log_tail(i)

    def listening(self, i):
        try:
            socket.create_connection(("127.0.0.1", self.ports[i]), timeout=1).close()
            return True
        except OSError:
            return False

    def kill9(self, i):
        kill_pid(self.procs[i].pid, signal.SIGKILL)
        self.procs[i].wait(timeout=30)

    def stop(self, i):
        self.procs[i].send_signal(signal.SIGTERM)
        assert self.procs[i].wait(timeout=60) == 0, self.log_tail(i)

    def log_tail(self, i, n=20):
        with open(self.log(i)) as f:
            return "".join(f.readlines()[-n:])

    def mount(self):
        braidfs("mount", "-o", f"log={self.base}/mount.log", self.meta, self.mnt, check=True)

    def umount(self):
        if is_mounted(self.mnt):
            braidfs("umount", self.mnt, timeout=120, check=True)

    def epochs(self):
        return [int(x) for x in psql(self.meta, "SELECT epoch FROM chains ORDER BY id").split()]

    def node_state(self, name):
        return int(psql(self.meta, f"SELECT state FROM nodes WHERE name = '{name}'"))

    def cleanup(self):
        if is_mounted(self.mnt):
            p = braidfs("umount", self.mnt, timeout=60)
            if p.returncode != 0:
                force_unmount(self.mnt)
        for p in self.procs:
            if p and p.poll() is None:
                kill_pid(p.pid, signal.SIGKILL)
                p.wait(timeout=30)


@pytest.fixture
def cluster(pg, test_dir):  # noqa: F811  (pg: the fixture imported above)
    c = Cluster(test_dir, new_database(pg))
    c.format()
    for i in range(c.n):
        c.start(i)
    yield c
    c.cleanup()


def pattern(i, size):
    """Content of file i: distinct per file and per 4 KiB block."""
    out = bytearray()
    for b in range(size // 4096):
        block = (f"file {i:05d} block {b:07d} ".encode() * 200)[:4096]
        out += block
    return bytes(out)


def test_serve_usage_and_config_errors(test_dir):
    p = braidfs("serve", "--help", check=True)
    assert "Usage: braidfs serve --config FILE" in p.stdout and "lease_ms" in p.stdout
    p = braidfs("serve")
    assert p.returncode == 2 and "needs --config FILE" in p.stderr
    bad = os.path.join(test_dir, "bad.yaml")
    with open(bad, "w") as f:
        f.write("node: n1\nlisten: 127.0.0.1:1\nmeta: postgres://x/y\ntargets: [dir:/t]\n"
                "heartbeat_ms: 5\n")
    p = braidfs("serve", "--config", bad)
    assert p.returncode == 1
    assert f"{bad}:5:15: 'heartbeat_ms' must be between 10 and 60000" in p.stderr
    assert p.stderr.count("\n") == 1, p.stderr


def test_serve_refuses_a_target_of_another_node(pg, test_dir):  # noqa: F811
    c = Cluster(test_dir, new_database(pg), n=2, replicas=2)
    c.format()
    cfg = open(c.config(0)).read().replace(c.imgs[0], c.imgs[1])
    with open(c.config(0), "w") as f:
        f.write(cfg)
    p = subprocess.run([BIN, "serve", "--config", c.config(0)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1
    assert f"target file:{c.imgs[1]} is not a target of node n1" in p.stderr


def test_mount_writes_to_every_node(cluster):
    c = cluster
    c.mount()
    data = {i: pattern(i, (i + 1) * 700 * 1024) for i in range(6)}
    for i, d in data.items():
        with open(os.path.join(c.mnt, f"f{i}"), "wb") as f:
            f.write(d)
    for i, d in data.items():
        with open(os.path.join(c.mnt, f"f{i}"), "rb") as f:
            assert f.read() == d
    # status asks each target's usage of the node that serves it
    st = braidfs("status", c.meta)
    assert st.returncode == 0, st.stdout + st.stderr
    for name, img in zip(c.names, c.imgs):
        line = next(ln for ln in st.stdout.splitlines() if f"{name}@file:{img}" in ln)
        assert "unreachable" not in line and " - " not in line.split(name, 1)[1], line
    epochs = c.epochs()
    # two nodes die one after the other: the third holds every chunk
    for victim in (0, 1):
        c.kill9(victim)
        drop_caches()
        for i, d in data.items():
            with open(os.path.join(c.mnt, f"f{i}"), "rb") as f:
                assert f.read() == d, f"f{i} after {c.names[victim]} died"
    wait_for(lambda: min(c.epochs()) >= min(epochs) + 2, 30,
             "every chain to lose both dead nodes' targets")
    assert c.node_state("n1") == 1 and c.node_state("n2") == 1 and c.node_state("n3") == 0
    st = braidfs("status", c.meta)
    assert st.returncode == 1 and st.stdout.count(" unreachable ") == 2, st.stdout
    # without the mount, status asks the serving node itself, or says why it cannot
    c.umount()
    st = braidfs("status", c.meta)
    assert st.returncode == 1, st.stdout + st.stderr
    assert "node n1 is down or never registered" in st.stdout, st.stdout
    line = next(ln for ln in st.stdout.splitlines() if f"n3@file:{c.imgs[2]}" in ln)
    assert "unreachable" not in line and " - " not in line.split("n3", 1)[1], line


def test_kill_secondary_then_primary_during_writes(cluster):
    c = cluster
    c.mount()
    acked, errors, stop = [], [], threading.Event()
    size = 600 * 1024

    def writer():
        i = 0
        while not stop.is_set():
            path = os.path.join(c.mnt, f"w{i}")
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.write(fd, pattern(i, size))
                os.fsync(fd)
                os.close(fd)
                acked.append(i)
            except OSError as e:
                errors.append((i, e))
            i += 1

    before = c.epochs()
    t = threading.Thread(target=writer)
    t.start()
    try:
        wait_for(lambda: len(acked) >= 5, 60, "writes before the first kill")
        c.kill9(1)  # n2: a secondary of the chains whose primary is n1 or n3
        n = len(acked)
        wait_for(lambda: len(acked) >= n + 5 or errors, 60, "writes after the first kill")
        c.kill9(0)  # n1: the primary of its chains
        n = len(acked)
        wait_for(lambda: len(acked) >= n + 5 or errors, 60, "writes after the second kill")
    finally:
        stop.set()
        t.join(timeout=120)
    assert not errors, f"writes failed: {errors[:3]}"
    drop_caches()
    for i in acked:
        with open(os.path.join(c.mnt, f"w{i}"), "rb") as f:
            assert f.read() == pattern(i, size), f"acknowledged file w{i} differs"
    after = c.epochs()
    # every chain lost both nodes' targets: two committed changes at least
    assert all(a >= b + 2 for a, b in zip(after, before)), (before, after)
    # DIST-7: what the dead targets missed is recorded for their resync
    for target in (1, 2):
        n = int(psql(c.meta, f"SELECT count(*) FROM dirty WHERE target = {target}"))
        assert n > 0, f"no dirty chunk recorded for target {target}"


def test_sigterm_marks_down_and_restart_serves(cluster):
    c = cluster
    c.stop(2)
    assert "node n3 stopped" in c.log_tail(2)
    assert c.node_state("n3") == 1
    wait_for(lambda: all(e >= 2 for e in c.epochs()), 30, "the manager to take n3's target out")
    c.mount()
    with open(os.path.join(c.mnt, "after"), "wb") as f:
        f.write(pattern(7, 3 << 20))
    c.start(2)
    wait_for(lambda: c.node_state("n3") == 0, 30, "n3 to be up again")
    drop_caches()
    with open(os.path.join(c.mnt, "after"), "rb") as f:
        assert f.read() == pattern(7, 3 << 20)
