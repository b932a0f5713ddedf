"""Test hosts on one machine: each node in its own network namespace, joined by veth pairs to a
bridge in the root namespace (where the tests, and services such as PostgreSQL, run).

    with Cluster(["n1", "n2", "n3"]) as c:
        c.host_ip            # the root namespace's address on the bridge
        c.ip("n1")           # a node's address
        p = c.popen("n1", ["braidfs", "serve", ...])
        c.run("n2", ["cat", "/proc/net/dev"])
        c.cut("n1")          # the node's link goes down: nobody reaches it, it reaches nobody
        c.restore("n1")
        c.cut("n1", silent=True)  # the same without a carrier change: only timeouts tell

Names are derived from a random tag so that concurrent test sessions do not collide, and every
namespace, link and bridge is removed on exit (also after a failed test). File systems are
shared: the namespaces separate the network only, so every node sees the same files (a node's
targets are simply different paths).

Commands run in a node through `nsenter --net=/run/netns/NS`, not `ip netns exec`: the latter
also gives the command a mount namespace of its own, so a FUSE mount made inside would be
invisible to the tests (and to every other command of that node). With nsenter a client's
mount daemon lives in the node's network while its mount point is where the tests see it.

Every cluster records what it made (namespaces, links, bridge, mount points, a PostgreSQL
directory) in STATE_DIR/<tag>.json, with the pid of its test process. sweep_stale() removes
whatever a cluster whose process died left behind (a killed pytest), and only that: a cluster
of a concurrent session has a live pid and is left alone.

Dist (below) is a braidfs cluster on top: PostgreSQL in the root namespace, a `braidfs serve`
per node, clients mounted in the nodes' namespaces (docs/distributed.md).
"""
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time

STATE_DIR = "/run/braidfs-netns"
HERE = os.path.dirname(os.path.abspath(__file__))
PG_SH = os.path.join(os.path.dirname(os.path.dirname(HERE)), "tests", "services", "postgres.sh")


def _mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def _unmount(path):
    """Unmount PATH by any means (a dead FUSE daemon included); True when it is gone."""
    for argv in (["fusermount3", "-u", path], ["fusermount3", "-uz", path],
                 ["umount", "-l", path]):
        if not _mounted(path):
            return True
        subprocess.run(argv, capture_output=True, timeout=60)
    return not _mounted(path)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def sweep_stale():
    """Remove what clusters of dead test processes left behind: their mounts, the processes in
    their namespaces, the namespaces, links and bridges, their PostgreSQL servers. Returns a
    list of what was removed (for the log)."""
    removed = []
    try:
        names = os.listdir(STATE_DIR)
    except FileNotFoundError:
        return removed
    for name in names:
        path = os.path.join(STATE_DIR, name)
        if not name.endswith(".json"):
            continue
        try:
            with open(path) as f:
                st = json.load(f)
        except (OSError, ValueError):
            continue
        if _pid_alive(int(st.get("pid", 0))):
            continue
        for m in st.get("mounts", []):
            if _unmount(m):
                removed.append(f"mount {m}")
        for ns in st.get("ns", []):
            for pid in _ip("netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for link in st.get("links", []) + [st.get("bridge", "")]:
            if link and _ip("link", "del", link, check=False).returncode == 0:
                removed.append(f"link {link}")
        for ns in st.get("ns", []):
            if _ip("netns", "del", ns, check=False).returncode == 0:
                removed.append(f"netns {ns}")
        for d in st.get("pg_dirs", []):
            if os.path.exists(os.path.join(d, ".braidfs-pg")):
                subprocess.run(["sh", PG_SH, "stop", d], capture_output=True, timeout=120)
                removed.append(f"postgres {d}")
        os.unlink(path)
    return removed


def _ip(*args, check=True):
    p = subprocess.run(["ip"] + list(args), capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {p.stderr.strip()}")
    return p


class Cluster:
    def __init__(self, nodes, subnet=None):
        self.tag = f"{random.randrange(16 ** 4):04x}"
        net = subnet or f"10.{random.randrange(100, 200)}.{random.randrange(0, 250)}.0/24"
        self.net = ipaddress.ip_network(net)
        hosts = list(self.net.hosts())
        self.host_ip = str(hosts[0])
        self.bridge = f"bfbr{self.tag}"
        self.nodes = {}
        for i, name in enumerate(nodes):
            self.nodes[name] = {
                "ns": f"bfs-{self.tag}-{name}",
                "ip": str(hosts[i + 1]),
                "host_if": f"bfh{self.tag}{i}",
                "node_if": f"bfn{self.tag}{i}",
            }
        self.procs = []
        self.state = {"pid": os.getpid(), "bridge": self.bridge,
                      "ns": [n["ns"] for n in self.nodes.values()],
                      "links": [n["host_if"] for n in self.nodes.values()],
                      "mounts": [], "pg_dirs": []}

    # -- what this cluster made (for sweep_stale)
    def _state_path(self):
        return os.path.join(STATE_DIR, f"{self.tag}.json")

    def _save_state(self):
        os.makedirs(STATE_DIR, exist_ok=True)
        tmp = self._state_path() + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.state, f)
        os.rename(tmp, self._state_path())

    def remember(self, kind, value):
        """Record a mount point ("mounts") or a PostgreSQL directory ("pg_dirs") that
        sweep_stale must clean if this process dies before down()."""
        if value not in self.state[kind]:
            self.state[kind].append(value)
            self._save_state()

    def forget(self, kind, value):
        if value in self.state[kind]:
            self.state[kind].remove(value)
            self._save_state()

    # -- lifecycle
    def __enter__(self):
        try:
            self.up()
        except Exception:
            self.down()
            raise
        return self

    def __exit__(self, *exc):
        self.down()

    def up(self):
        self._save_state()  # before anything exists: a crash from here on is swept
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.host_ip}/{self.net.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for n in self.nodes.values():
            _ip("netns", "add", n["ns"])
            _ip("link", "add", n["host_if"], "type", "veth", "peer", "name", n["node_if"])
            _ip("link", "set", n["node_if"], "netns", n["ns"])
            _ip("link", "set", n["host_if"], "master", self.bridge)
            _ip("link", "set", n["host_if"], "up")
            _ip("-n", n["ns"], "addr", "add", f"{n['ip']}/{self.net.prefixlen}", "dev",
                n["node_if"])
            _ip("-n", n["ns"], "link", "set", n["node_if"], "up")
            _ip("-n", n["ns"], "link", "set", "lo", "up")

    def down(self):
        for m in list(self.state["mounts"]):
            _unmount(m)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        for n in self.nodes.values():
            pids = _ip("netns", "pids", n["ns"], check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("link", "del", n["host_if"], check=False)
            _ip("netns", "del", n["ns"], check=False)
        _ip("link", "del", self.bridge, check=False)
        try:
            os.unlink(self._state_path())
        except FileNotFoundError:
            pass

    def leftovers(self):
        """Namespaces, links and the bridge of this cluster that still exist."""
        ns = _ip("netns", "list", check=False).stdout
        links = _ip("-o", "link", check=False).stdout
        out = [n for n in self.state["ns"] if n in ns.split()]
        out += [x for x in self.state["links"] + [self.bridge] if f" {x}:" in links or
                f" {x}@" in links]
        return out

    # -- addresses
    def ip(self, node):
        return self.nodes[node]["ip"]

    def ns(self, node):
        return self.nodes[node]["ns"]

    # -- running things inside a node
    def argv(self, node, argv):
        return ["nsenter", f"--net=/run/netns/{self.ns(node)}", "--"] + [str(a) for a in argv]

    def run(self, node, argv, **kw):
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 120)
        return subprocess.run(self.argv(node, argv), **kw)

    def popen(self, node, argv, **kw):
        p = subprocess.Popen(self.argv(node, argv), **kw)
        self.procs.append(p)
        return p

    # -- failures
    def cut(self, node, silent=False):
        """Packets to and from the node are lost both ways; the node keeps running.

        Default: its link goes down on the bridge side, so the node's interface loses its
        carrier (a pulled cable). silent=True: the bridge side leaves the bridge but stays up,
        so both ends keep a carrier and packets vanish without a sign (a partition beyond the
        node's switch port: only timeouts tell)."""
        h = self.nodes[node]["host_if"]
        if silent:
            _ip("link", "set", "dev", h, "nomaster")
        else:
            _ip("link", "set", h, "down")

    def restore(self, node):
        """Undo cut(): the link is back, and the node and the host forget the neighbours
        they failed to reach meanwhile (a FAILED entry answers 'No route to host' to every
        connect until it ages out, seconds later)."""
        n = self.nodes[node]
        h, ns = n["host_if"], self.ns(node)
        _ip("link", "set", "dev", h, "master", self.bridge)
        _ip("link", "set", h, "up")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the node's end sees the carrier again
            if "LOWER_UP" in _ip("-n", ns, "-o", "link", "show", n["node_if"]).stdout:
                break
            time.sleep(0.05)
        _ip("-n", ns, "neigh", "flush", "all", check=False)
        _ip("neigh", "flush", "dev", self.bridge, check=False)
        time.sleep(0.2)

    def is_cut(self, node):
        out = _ip("-o", "link", "show", self.nodes[node]["host_if"]).stdout
        return ("state DOWN" in out or "<BROADCAST,MULTICAST>" in out or
                f"master {self.bridge} " not in out)


# --------------------------------------------------------------------------- braidfs on nodes

PSQL = shutil.which("psql") or "/usr/bin/psql"


def start_postgres(cluster, base):
    """A private PostgreSQL in the root namespace, listening on 127.0.0.1 and on the bridge
    (tests/services/postgres.sh with BRAIDFS_PG_LISTEN), trusting the cluster's subnet.
    Returns (directory, URL through 127.0.0.1). The root namespace is the witness's machine:
    a cut node loses its peers and the database at once, as a node that loses its network
    does."""
    d = os.path.join(base, "pg")
    cluster.remember("pg_dirs", d)
    env = dict(os.environ, BRAIDFS_PG_LISTEN=f"{cluster.host_ip}/{cluster.net.prefixlen}")
    p = subprocess.run(["sh", PG_SH, "start", d], capture_output=True, text=True, timeout=180,
                       env=env)
    if p.returncode != 0:
        cluster.forget("pg_dirs", d)
        raise AssertionError(f"postgres.sh start (exit {p.returncode}): {p.stderr.strip()}")
    return d, p.stdout.strip().split("=", 1)[1]


def stop_postgres(cluster, d):
    subprocess.run(["sh", PG_SH, "stop", d], capture_output=True, timeout=120)
    cluster.forget("pg_dirs", d)


def psql(url, sql, timeout=30):
    """Rows of SQL as lists of strings (psql unaligned, tab-separated)."""
    p = subprocess.run([PSQL, "-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", url, "-c",
                        sql], capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"psql {sql!r}: {p.stderr.strip()}")
    return [line.split("\t") for line in p.stdout.splitlines() if line]


class Dist:
    """A distributed braidfs volume on a Cluster (docs/distributed.md): a database of its own
    on the PostgreSQL of start_postgres, one `braidfs serve --config` per node with one file:
    target each (NODE@file:...), clients (`braidfs mount postgres://...`) in the nodes'
    namespaces.

        d = Dist(cluster, pg_url, base, bin, nodes=("n1", "n2", "n3"), lease_ms=1500)
        d.up()                      # format, start the serves, wait until every target is up
        m = d.mount("n1", "c1")     # a client in n1's namespace; its mount point
        d.kill_serve("n3"); d.start_serve("n3"); d.chains(); d.print_chains()
        d.down()                    # unmount, stop the serves (also after a failure)

    `serve` is expected to run in the foreground until SIGTERM; its log is BASE/NODE/serve.log.
    """

    PORT = 7410

    def __init__(self, cluster, pg_url, base, bin, nodes=("n1", "n2", "n3"), replicas=3,
                 chunk_size="1M", heartbeat_ms=250, lease_ms=1500, replace_after_s=3600,
                 resync_rate="256MiB", image_bytes=1 << 30):
        self.c, self.base, self.bin = cluster, base, bin
        self.nodes = list(nodes)
        self.replicas, self.chunk_size = replicas, chunk_size
        self.heartbeat_ms, self.lease_ms = heartbeat_ms, lease_ms
        self.replace_after_s, self.resync_rate = replace_after_s, resync_rate
        self.image_bytes = image_bytes
        # BRAIDFS_DIST_LOCAL_READS=1: every node serves local reads and every mount reads its
        # own node's replica (-o node=), the failure suite's second configuration
        self.local_reads = os.environ.get("BRAIDFS_DIST_LOCAL_READS", "") not in ("", "0")
        self.db = f"dist_{cluster.tag}_{os.getpid()}_{random.randrange(1 << 30)}"
        self.admin_url = pg_url
        host_url = pg_url.replace("@127.0.0.1:", f"@{cluster.host_ip}:")
        self.meta_url = host_url.rsplit("/", 1)[0] + "/" + self.db
        self.local_url = pg_url.rsplit("/", 1)[0] + "/" + self.db  # the tests' own queries
        self.serves = {}
        self.mounts = {}  # mount point -> node
        self.images = {}
        self.configs = {}

    # -- commands
    def braidfs(self, *args, node=None, timeout=120, check=False):
        argv = [self.bin] + [str(a) for a in args]
        if node:
            argv = self.c.argv(node, argv)
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} -> exit {p.returncode}\n"
                                 f"stdout: {p.stdout}\nstderr: {p.stderr}")
        return p

    def sql(self, q):
        return psql(self.local_url, q)

    # -- lifecycle
    def up(self):
        psql(self.admin_url, f"CREATE DATABASE {self.db}")
        for n in self.nodes:
            d = os.path.join(self.base, n)
            os.makedirs(d, exist_ok=True)
            img = os.path.join(d, "target.img")
            with open(img, "wb") as f:
                f.truncate(self.image_bytes)
            self.images[n] = img
            cfg = os.path.join(d, "serve.yaml")
            with open(cfg, "w") as f:
                f.write(f"node: {n}\n"
                        f"listen: {self.c.ip(n)}:{self.PORT}\n"
                        f"meta: {self.meta_url}\n"
                        f"targets:\n  - file:{img}\n"
                        f"heartbeat_ms: {self.heartbeat_ms}\n"
                        f"lease_ms: {self.lease_ms}\n"
                        f"replace_after_s: {self.replace_after_s}\n"
                        f"resync_rate: {self.resync_rate}\n"
                        + ("local_reads: true\n" if self.local_reads else ""))
            self.configs[n] = cfg
        self.braidfs("format", "--replicas", self.replicas, "--chunk-size", self.chunk_size,
                     self.meta_url, "vol", *[f"{n}@file:{self.images[n]}" for n in self.nodes],
                     check=True)
        for n in self.nodes:
            self.start_serve(n, wait=False)
        for n in self.nodes:
            self.wait_listening(n, 60)
        self.wait_registered(60)
        self.wait_healthy(60, "every chain whole after the serves started")

    def down(self):
        problems = []
        for m in list(self.mounts):
            try:
                self.umount(m)
            except Exception as e:  # noqa: BLE001 - cleanup goes on; reported below
                problems.append(str(e))
                _unmount(m)
                self.mounts.pop(m, None)
                self.c.forget("mounts", m)
        for n in list(self.serves):
            self.kill_serve(n, signal.SIGTERM)
        try:
            psql(self.admin_url, f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)")
        except AssertionError as e:
            problems.append(str(e))
        return problems

    # -- serve daemons
    def start_serve(self, node, wait=True):
        assert node not in self.serves or self.serves[node].poll() is not None, \
            f"serve of {node} already runs"
        log = open(os.path.join(self.base, node, "serve.log"), "a")
        p = self.c.popen(node, [self.bin, "serve", "--config", self.configs[node]],
                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.serves[node] = p
        if wait:
            self.wait_listening(node, 30)
        return p

    def wait_listening(self, node, timeout):
        import socket
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            p = self.serves[node]
            if p.poll() is not None:
                raise AssertionError(f"braidfs serve of {node} exited {p.returncode}"
                                     f"{self.serve_log(node)}")
            try:
                socket.create_connection((self.c.ip(node), self.PORT), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"braidfs serve of {node} does not listen on "
                             f"{self.c.ip(node)}:{self.PORT} after {timeout} s"
                             f"{self.serve_log(node)}")

    def kill_serve(self, node, sig=signal.SIGKILL):
        p = self.serves.get(node)
        if p is None:
            return
        if p.poll() is not None:
            del self.serves[node]
            return
        p.send_signal(sig)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=30)
        del self.serves[node]  # stopped on purpose: wait_healthy does not expect it

    def serve_log(self, node, n=20):
        try:
            with open(os.path.join(self.base, node, "serve.log"), errors="replace") as f:
                lines = f.readlines()[-n:] if n else f.readlines()
        except OSError:
            return ""
        return f"\n--- serve log of {node} ---\n" + "".join(lines)

    def logs(self, n=20):
        """The last n lines of every serve log (n None: whole)."""
        return "".join(self.serve_log(node, n) for node in self.nodes)

    # -- clients
    def mount(self, node, name):
        mnt = os.path.join(self.base, name)
        os.makedirs(mnt, exist_ok=True)
        self.c.remember("mounts", mnt)
        opts = f"log={os.path.join(self.base, name + '.log')}"
        if self.local_reads:
            opts += f",node={node}"
        p = self.braidfs("mount", "-o", opts, self.meta_url, mnt, node=node)
        if p.returncode != 0:
            raise AssertionError(f"braidfs mount in {node} -> exit {p.returncode}: "
                                 f"{p.stderr.strip()}")
        assert _mounted(mnt), f"braidfs mount in {node} exited 0 but {mnt} is not mounted"
        self.mounts[mnt] = node
        return mnt

    def umount(self, mnt, timeout=180):
        node = self.mounts.pop(mnt)
        p = self.braidfs("umount", mnt, node=node, timeout=timeout)
        if p.returncode != 0 or _mounted(mnt):
            _unmount(mnt)
            raise AssertionError(f"braidfs umount {mnt} -> exit {p.returncode}: "
                                 f"{p.stderr.strip()}")
        self.c.forget("mounts", mnt)

    # -- the cluster tables
    def targets(self):
        """{target id: {"node", "url", "state"}}"""
        return {int(r[0]): {"node": r[1], "url": r[2], "state": r[3]}
                for r in self.sql("SELECT id, node, url, state FROM targets ORDER BY id")}

    def target_of(self, node):
        ids = [t for t, x in self.targets().items() if x["node"] == node]
        assert len(ids) == 1, f"node {node} has targets {ids}"
        return ids[0]

    ROLES = ("members", "syncing", "away")  # chain_members.role 0, 1, 2 (META-13)

    def chains(self):
        """{chain id: {"epoch": N, "members": [target ids, primary first], "syncing": [...],
        "away": [...]}}"""
        out = {int(r[0]): {"epoch": int(r[1]), "members": [], "syncing": [], "away": []}
               for r in self.sql("SELECT id, epoch FROM chains")}
        for r in self.sql("SELECT chain, target, role FROM chain_members ORDER BY chain, pos"):
            role = int(r[2])
            out[int(r[0])][self.ROLES[role] if role < len(self.ROLES) else "?"].append(int(r[1]))
        return out

    def chains_with(self, target, role="members"):
        """Ids of the chains where TARGET has ROLE (None: any role)."""
        return {i for i, c in self.chains().items()
                if target in (c["members"] + c["syncing"] + c["away"] if role is None
                              else c[role])}

    def primaries(self):
        """{node: number of chains whose primary is on it}"""
        t = self.targets()
        out = {n: 0 for n in self.nodes}
        for c in self.chains().values():
            if c["members"]:
                out[t[c["members"][0]]["node"]] += 1
        return out

    def print_chains(self, what=""):
        t = self.targets()

        def names(ids):
            return " ".join(t[m]["node"] for m in ids)
        parts = []
        for i, c in sorted(self.chains().items()):
            x = f"{i}@{c['epoch']}:[{names(c['members'])}]"
            if c["syncing"]:
                x += f"+syncing[{names(c['syncing'])}]"
            if c["away"]:
                x += f"+away[{names(c['away'])}]"
            parts.append(x)
        print(f"chains {what}: " + ", ".join(parts))
        print(f"primaries {what}: {self.primaries()}")

    def chunk_bytes(self):
        return int(self.sql("SELECT chunk_size FROM volume")[0][0])

    def dirty_chunks(self, target):
        return int(self.sql(f"SELECT count(*) FROM dirty WHERE target = {int(target)}")[0][0])

    def status(self):
        return self.braidfs("status", self.meta_url, timeout=60)

    def wait_healthy(self, timeout, what):
        """Until every chain has its replicas as members, nothing syncing or away (the
        cluster tables: what the manager committed). `braidfs status` is checked by the
        tests that are about it."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for n, p in self.serves.items():
                if p.poll() is not None:
                    raise AssertionError(f"braidfs serve of {n} exited {p.returncode} "
                                         f"({what}){self.serve_log(n)}")
            if all(len(c["members"]) == self.replicas and not c["syncing"] and not c["away"]
                   for c in self.chains().values()):
                return
            time.sleep(0.2)
        self.print_chains("at timeout")
        raise AssertionError(f"not healthy within {timeout} s ({what}){self.logs()}")

    def wait_registered(self, timeout):
        """Until every running serve's node has a live lease in the nodes table."""
        want = sorted(self.serves)
        end = time.monotonic() + timeout
        rows = []
        while time.monotonic() < end:
            rows = self.sql("SELECT name FROM nodes WHERE lease_until > now() ORDER BY name")
            if sorted(r[0] for r in rows) == want:
                return
            for n, p in self.serves.items():
                if p.poll() is not None:
                    raise AssertionError(f"braidfs serve of {n} exited {p.returncode}"
                                         f"{self.serve_log(n)}")
            time.sleep(0.1)
        raise AssertionError(f"nodes with a live lease after {timeout} s: {rows}, want {want}"
                             f"{self.logs()}")

    def wait_for(self, cond, timeout, what):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return time.monotonic()
            time.sleep(0.1)
        self.print_chains("at timeout")
        raise AssertionError(f"not within {timeout} s: {what}{self.logs()}")

    def repairs(self):
        """Rows of the repairs table as dicts ([] when none)."""
        rows = self.sql("SELECT chain, target, kind, chunks_total, chunks_done, bytes_done "
                        "FROM repairs")
        kinds = {"0": "resync", "1": "rebuild"}  # enum meta_repair_kind
        return [{"chain": int(r[0]), "target": int(r[1]), "kind": kinds.get(r[2], r[2]),
                 "chunks_total": int(r[3]), "chunks_done": int(r[4]), "bytes_done": int(r[5])}
                for r in rows]


class RepairWatch:
    """Polls the repairs table in a thread and keeps, per (chain, target, kind), the largest
    bytes_done seen: a repair's row may be gone once it finished, its bytes are not."""

    def __init__(self, dist, period=0.1):
        self.d, self.period = dist, period
        self.seen = {}
        self.errors = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(timeout=30)
        self.poll()

    def poll(self):
        try:
            for r in self.d.repairs():
                k = (r["chain"], r["target"], r["kind"])
                old = self.seen.get(k)
                if old is None or r["bytes_done"] >= old["bytes_done"]:
                    self.seen[k] = r
        except AssertionError as e:
            self.errors.append(str(e))

    def _run(self):
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.period)

    def bytes(self, kind=None, target=None):
        return sum(r["bytes_done"] for (c, t, k), r in self.seen.items()
                   if (kind is None or k == kind) and (target is None or t == target))

    def chunks(self, kind=None, target=None):
        return sum(r["chunks_done"] for (c, t, k), r in self.seen.items()
                   if (kind is None or k == kind) and (target is None or t == target))
