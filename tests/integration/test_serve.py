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
- a serve stopped with SIGTERM marks its node down; the node comes back with a restart;
- a write applied while a target was away, whose dirty record comes only after the target
  returned, keeps the target from being promoted without it (the promote gate, DIST-6/7):
  no dirty row is left and fsck finds every copy identical.
- a mount run with -o node=NAME reads from NAME's replica (status counts those reads), and an
  async target (format --async) misses writes while its node is down without failing any,
  shows how far behind it is, and is caught up once the node is back.

The database is the module's private PostgreSQL (test_postgres_meta.py's fixture).
"""

import os
import re
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

    def __init__(self, base, meta_url, n=3, replicas=3, nasync=0, local_reads=False,
                 async_dir=False, extra_cfg=""):
        self.base, self.meta, self.n, self.replicas = base, meta_url, n, replicas
        self.nasync = nasync  # the last nasync nodes' targets are async in every chain
        self.names = [f"n{i + 1}" for i in range(n)]
        self.ports = [free_port() for _ in range(n)]
        self.imgs = [os.path.join(base, f"{name}.img") for name in self.names]
        # async_dir: the async targets are dir: targets, whose chunk files a test can read
        self.urls = [f"dir:{os.path.join(base, name)}.dir" if async_dir and i >= n - nasync
                     else f"file:{img}" for i, (name, img) in enumerate(zip(self.names,
                                                                            self.imgs))]
        self.procs = [None] * n
        self.mnt = os.path.join(base, "mnt")
        os.makedirs(self.mnt, exist_ok=True)
        for img, url in zip(self.imgs, self.urls):
            if url.startswith("dir:"):
                os.makedirs(url[4:])
                continue
            with open(img, "wb") as f:
                f.truncate(512 << 20)
        for i, name in enumerate(self.names):
            with open(self.config(i), "w") as f:
                f.write(f"node: {name}\nlisten: 127.0.0.1:{self.ports[i]}\nmeta: {meta_url}\n"
                        f"targets: [{self.urls[i]}]\nheartbeat_ms: {HEARTBEAT_MS}\n"
                        f"lease_ms: {LEASE_MS}\n"
                        + ("local_reads: true\n" if local_reads else "") + extra_cfg)

    def config(self, i):
        return os.path.join(self.base, f"{self.names[i]}.yaml")

    def log(self, i):
        return os.path.join(self.base, f"{self.names[i]}.log")

    def format(self):
        targets = [f"{name}@{url}" for name, url in zip(self.names, self.urls)]
        placed = targets[:self.n - self.nasync]
        extra = [a for t in targets[self.n - self.nasync:] for a in ("--async", t)]
        braidfs("format", "--replicas", self.replicas, "--chains", 8, "--chunk-size", "1M",
                *extra, self.meta, "vol", *placed, check=True)

    def start(self, i, env=None):
        log = open(self.log(i), "a")
        self.procs[i] = subprocess.Popen([BIN, "serve", "--config", self.config(i)],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         env={**os.environ, **(env or {})})
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

    def mount(self, node=None):
        opts = f"log={self.base}/mount.log" + (f",node={node}" if node else "")
        braidfs("mount", "-o", opts, self.meta, self.mnt, check=True)

    def umount(self):
        if is_mounted(self.mnt):
            braidfs("umount", self.mnt, timeout=120, check=True)

    def epochs(self):
        return [int(x) for x in psql(self.meta, "SELECT epoch FROM chains ORDER BY id").split()]

    def target_id(self, i):
        return int(psql(self.meta, f"SELECT id FROM targets WHERE url LIKE '{self.names[i]}@%'"))

    def chunks(self, i):
        """The chunks/ directory of node i's target, a dir: one."""
        assert self.urls[i].startswith("dir:"), self.urls[i]
        return os.path.join(self.urls[i][4:], "chunks")

    def roles(self, target):
        """{role: count of chains} of a target (0 member, 1 syncing, 2 away)."""
        out = psql(self.meta, f"SELECT role, count(*) FROM chain_members WHERE target = {target}"
                              " GROUP BY role")
        return {int(a): int(b) for a, b in (line.split("|") for line in out.split())}

    def dirty(self, target=None):
        """Dirty rows: every one, or those of a target."""
        where = "" if target is None else f" WHERE target = {target}"
        return int(psql(self.meta, "SELECT count(*) FROM dirty" + where))

    def status_reads(self):
        """(the reads count that braidfs status shows, its whole output)."""
        st = braidfs("status", self.meta).stdout
        line = next(ln for ln in st.splitlines() if ln.startswith("reads "))
        return int(line.split()[1]), st

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
    for target in (c.target_id(0), c.target_id(1)):
        assert c.dirty(target) > 0, f"no dirty chunk recorded for target {target}"


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


DIRTY_DELAY_MS = 5000


def test_promotion_waits_for_a_late_dirty_record(pg, test_dir):  # noqa: F811
    """n3 is killed; a write applied while it is away holds its dirty record DIRTY_DELAY_MS
    (a test hook in the serve); n3 comes back meanwhile and its resync finds no dirty row.
    Its promotion must wait for that record, and resync the chunk, before it commits: else
    n3 would be a full member without the write, and the late row would be left behind."""
    c = Cluster(test_dir, new_database(pg))
    try:
        c.format()
        env = {"BRAIDFS_TEST_DIRTY_DELAY_MS": str(DIRTY_DELAY_MS)}
        for i in range(c.n):
            c.start(i, env)
        c.mount()
        path = os.path.join(c.mnt, "f")
        with open(path, "wb") as f:
            f.write(pattern(1, 4 << 20))
            f.flush()
            os.fsync(f.fileno())
        t3 = c.target_id(2)
        c.kill9(2)
        wait_for(lambda: set(c.roles(t3)) == {2}, 30, "n3's target to be away from every chain")
        done, errors = threading.Event(), []

        def writer():
            try:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.pwrite(fd, pattern(2, 1 << 20), 1 << 20)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                errors.append(e)
            done.set()

        t = threading.Thread(target=writer)
        t.start()
        held = "its dirty record held"
        wait_for(lambda: any(held in c.log_tail(i, 200) for i in range(2)), 30,
                 "the write to be applied with its dirty record held")
        c.start(2, env)
        t.join(timeout=120)
        assert done.is_set() and not errors, f"the write failed: {errors}"
        wait_for(lambda: set(c.roles(t3)) <= {0}, 60, "n3 a member of every chain")
        wait_for(lambda: c.dirty() == 0, 30, "no dirty row left")
        c.umount()
        p = braidfs("fsck", c.meta, timeout=300)
        assert p.returncode == 0, f"fsck after n3's return:\n{p.stdout}{p.stderr}"
        c.mount()
        drop_caches()
        want = bytearray(pattern(1, 4 << 20))
        want[1 << 20:2 << 20] = pattern(2, 1 << 20)
        with open(path, "rb") as f:
            assert f.read() == bytes(want)
    finally:
        c.cleanup()


def test_local_reads_and_async_target(pg, test_dir):  # noqa: F811
    c = Cluster(test_dir, new_database(pg), n=3, replicas=2, nasync=1, local_reads=True)
    try:
        c.format()
        for i in range(c.n):
            c.start(i)
        bad = braidfs("mount", "-o", "node=n9", c.meta, c.mnt)
        assert bad.returncode == 1 and "node 'n9' serves no target" in bad.stderr, bad.stderr
        c.mount(node="n2")
        data = {i: pattern(i, 1536 * 1024) for i in range(6)}
        for i, d in data.items():
            with open(os.path.join(c.mnt, f"f{i}"), "wb") as f:
                f.write(d)
                f.flush()
                os.fsync(f.fileno())
        drop_caches()
        for i, d in data.items():
            with open(os.path.join(c.mnt, f"f{i}"), "rb") as f:
                assert f.read() == d
        reads, st = c.status_reads()
        assert reads > 0, st  # n2 is a member of every chain
        t3 = c.target_id(2)
        wait_for(lambda: braidfs("status", c.meta).stdout.count(f"async {t3} (0 chunk(s) behind)")
                 == 8, 30, "the async target on every chain")
        # its node dies: writes go on, the chains do not change, the misses are recorded
        epochs = c.epochs()
        c.kill9(2)
        more = {i: pattern(i, 1024 * 1024) for i in range(6, 10)}
        for i, d in more.items():
            with open(os.path.join(c.mnt, f"f{i}"), "wb") as f:
                f.write(d)
                f.flush()
                os.fsync(f.fileno())
        assert c.epochs() == epochs
        assert c.dirty(t3) > 0
        st = braidfs("status", c.meta).stdout
        assert re.search(rf"async {t3} \([1-9][0-9]* chunk\(s\) behind\)", st), st
        # back: caught up by the primaries, still async
        c.start(2)
        wait_for(lambda: c.dirty(t3) == 0, 60, "the async target to be caught up")
        assert f"async target {t3} caught up" in c.log_tail(0, 200) + c.log_tail(1, 200)
        assert int(psql(c.meta, "SELECT count(*) FROM chain_members WHERE role = 3")) == 8
        drop_caches()
        for i, d in {**data, **more}.items():
            with open(os.path.join(c.mnt, f"f{i}"), "rb") as f:
                assert f.read() == d
    finally:
        c.cleanup()


@pytest.mark.parametrize("how", ["manager", "restart"])
def test_async_target_rebuilt_after_its_primary_is_killed(pg, test_dir, how):  # noqa: F811
    """Requests queued for the async target at a primary die with it when it is killed with -9
    (a test hook keeps them queued). Nothing records them, so the async target of each chain
    that primary led is marked for a rebuild: by the manager before it takes the primary out
    ("manager"), or by the primary's serve when it starts again before the manager acted
    ("restart": grace_ms keeps the manager away). The chain's primary then copies the chain
    to it, and its chunk files hold every byte written."""
    hold = os.path.join(test_dir, "async-hold")
    c = Cluster(test_dir, new_database(pg), n=3, replicas=2, nasync=1, async_dir=True,
                extra_cfg="grace_ms: 600000\n" if how == "restart" else "")
    try:
        c.format()
        env = {"BRAIDFS_TEST_ASYNC_HOLD": hold}
        for i in range(c.n):
            c.start(i, env)
        c.mount(node="n2")
        open(hold, "w").close()
        data = {i: pattern(i, 2 << 20) for i in range(8)}
        inos = {}
        for i, d in data.items():
            path = os.path.join(c.mnt, f"f{i}")
            with open(path, "wb") as f:
                f.write(d)
                f.flush()
                os.fsync(f.fileno())
            inos[i] = os.stat(path).st_ino
        # the nodes run without local_reads: a mount with node=n2 reads the primaries
        drop_caches()
        for i, d in data.items():
            with open(os.path.join(c.mnt, f"f{i}"), "rb") as f:
                assert f.read() == d
        reads, st = c.status_reads()
        assert reads == 0, st
        t1, t3 = c.target_id(0), c.target_id(2)
        led = int(psql(c.meta, f"SELECT count(*) FROM chain_members m WHERE target = {t1} AND "
                       "role = 0 AND pos = (SELECT min(pos) FROM chain_members p WHERE "
                       "p.chain = m.chain AND p.role = 0)"))
        assert led > 0  # n1 is the primary of some chains
        c.kill9(0)
        marked = f"async target {t3} marked for a rebuild"
        if how == "manager":
            wait_for(lambda: set(c.roles(t1)) == {2}, 30,
                     "n1's target to be away from every chain")
            assert sum(c.log_tail(i, 400).count(marked) for i in (1, 2)) >= led
        else:
            c.start(0, env)
            assert c.log_tail(0, 400).count(marked) == led
            assert c.roles(t1).get(0) == 8  # still a member of every chain
        os.unlink(hold)
        wait_for(lambda: int(psql(c.meta, f"SELECT count(*) FROM repairs WHERE target = {t3}"))
                 == 0 and c.dirty(t3) == 0, 120, "the async target to be rebuilt")
        assert int(psql(c.meta, "SELECT count(*) FROM chain_members WHERE role = 3")) == 8
        c.umount()
        for i in range(c.n):
            if c.procs[i].poll() is None:
                c.stop(i)  # async queues drained, chunk files closed
        for i, d in data.items():
            for idx in range(len(d) >> 20):
                chunk = os.path.join(c.chunks(2), f"{inos[i] & 0xff:02x}",
                                     f"{inos[i]:016x}.{idx:08x}")
                with open(chunk, "rb") as f:
                    got = f.read()
                assert got == d[idx << 20:(idx + 1) << 20], f"f{i} chunk {idx} on the async copy"
    finally:
        if os.path.exists(hold):
            os.unlink(hold)
        c.cleanup()
