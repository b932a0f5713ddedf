"""Test hosts on one machine: each node in its own network namespace, joined by veth pairs to a
bridge in the root namespace (where the tests, and services such as PostgreSQL, run).

    with Cluster(["n1", "n2", "n3"]) as c:
        c.host_ip            # the root namespace's address on the bridge
        c.ip("n1")           # a node's address
        p = c.popen("n1", ["braidfs", "serve", ...])
        c.run("n2", ["cat", "/proc/net/dev"])
        c.cut("n1")          # the node's link goes down: nobody reaches it, it reaches nobody
        c.restore("n1")

Names are derived from a random tag so that concurrent test sessions do not collide, and every
namespace, link and bridge is removed on exit (also after a failed test). File systems are
shared: the namespaces separate the network only, so every node sees the same files (a node's
targets are simply different paths).
"""
import ipaddress
import os
import random
import subprocess
import time


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

    # -- addresses
    def ip(self, node):
        return self.nodes[node]["ip"]

    def ns(self, node):
        return self.nodes[node]["ns"]

    # -- running things inside a node
    def argv(self, node, argv):
        return ["ip", "netns", "exec", self.ns(node)] + [str(a) for a in argv]

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
    def cut(self, node):
        """The node's link goes down on the bridge side: packets in both directions are lost
        (the node keeps running and believes its own address is fine)."""
        _ip("link", "set", self.nodes[node]["host_if"], "down")

    def restore(self, node):
        _ip("link", "set", self.nodes[node]["host_if"], "up")
        time.sleep(0.2)

    def is_cut(self, node):
        out = _ip("-o", "link", "show", self.nodes[node]["host_if"]).stdout
        return "state DOWN" in out or "<BROADCAST,MULTICAST>" in out
