"""The network-namespace harness that multi-node tests stand on: nodes reach each other and the
root namespace over the bridge, a cut link loses packets both ways, a restored one works again,
and nothing is left behind."""
import subprocess
import time

from netns import Cluster

PY = "/usr/bin/python3"
SERVER = ("import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, "
          "socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], 7999)); s.listen(8)\n"
          "while True:\n c,_=s.accept(); c.sendall(b'hello'); c.close()")
CLIENT = ("import socket,sys; s=socket.create_connection((sys.argv[1], 7999), timeout=2); "
          "print(s.recv(5).decode())")


def _reach(c, src, dst_ip):
    r = c.run(src, [PY, "-c", CLIENT, dst_ip], timeout=30)
    return r.returncode == 0 and r.stdout.strip() == "hello"


def test_nodes_reach_each_other_and_cut_links():
    with Cluster(["n1", "n2", "n3"]) as c:
        names = [c.ns(n) for n in ("n1", "n2", "n3")]
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert all(n in listed for n in names)
        c.popen("n1", [PY, "-c", SERVER, c.ip("n1")])
        for _ in range(50):
            if _reach(c, "n2", c.ip("n1")):
                break
            time.sleep(0.1)
        assert _reach(c, "n2", c.ip("n1"))
        assert _reach(c, "n3", c.ip("n1"))
        # from the root namespace too (where PostgreSQL will listen)
        r = subprocess.run([PY, "-c", CLIENT, c.ip("n1")], capture_output=True, text=True)
        assert r.stdout.strip() == "hello"
        c.cut("n1")
        assert c.is_cut("n1")
        assert not _reach(c, "n2", c.ip("n1"))
        c.restore("n1")
        assert _reach(c, "n2", c.ip("n1"))
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in listed for n in names), "namespaces left behind"
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert c.bridge not in links, "bridge left behind"
