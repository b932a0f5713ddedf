"""The network-namespace harness that multi-node tests stand on: nodes reach each other and the
root namespace over the bridge, a cut link loses packets both ways, a restored one works again,
and nothing is left behind."""
import os
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
        assert not c.is_cut("n1")
        assert _reach(c, "n2", c.ip("n1"))
        # a silent cut: both ends keep their carrier, packets vanish
        c.cut("n1", silent=True)
        assert c.is_cut("n1")
        assert "LOWER_UP" in c.run("n1", ["ip", "-o", "link", "show", c.nodes["n1"]["node_if"]]
                                   ).stdout
        assert not _reach(c, "n2", c.ip("n1"))
        c.restore("n1")
        assert _reach(c, "n2", c.ip("n1"))
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in listed for n in names), "namespaces left behind"
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert c.bridge not in links, "bridge left behind"


def test_postgres_on_the_bridge_and_a_client_in_a_namespace(session_base):
    """What test_dist_failures.py stands on, without `braidfs serve`: PostgreSQL in the root
    namespace answers the nodes over the bridge and stops answering a cut node; a postgres://
    volume mounted from inside n1 (nsenter: n1's network, the host's mounts) is visible to the
    tests, and braidfs-verify runs on it from n1 and checks clean."""
    from conftest import BIN
    from netns import psql, start_postgres, stop_postgres
    from verifyload import VerifyRun, check
    import tempfile
    base = tempfile.mkdtemp(prefix="harness.", dir=session_base)  # user postgres reaches it
    os.chmod(base, 0o755)
    with Cluster(["n1", "n2"]) as c:
        pgdir, url = start_postgres(c, base)
        try:
            node_url = url.replace("@127.0.0.1:", f"@{c.host_ip}:")
            q = ["psql", "-X", "-At", "-c", "SELECT 40 + 2", node_url]
            r = c.run("n1", q, timeout=30)
            assert r.returncode == 0 and r.stdout.strip() == "42", r.stderr
            c.cut("n1")
            r = c.run("n1", q[:-1] + [node_url + "?connect_timeout=2"], timeout=30)
            assert r.returncode != 0
            c.restore("n1")
            psql(url, "CREATE DATABASE harness")
            meta = node_url.rsplit("/", 1)[0] + "/harness"
            t0, t1, mnt = (os.path.join(base, x) for x in ("t0", "t1", "mnt"))
            for x in (t0, t1, mnt):
                os.mkdir(x)
            r = subprocess.run([BIN, "format", meta, "vol", f"dir:{t0}", f"dir:{t1}"],
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
            c.remember("mounts", mnt)
            r = c.run("n1", [BIN, "mount", "-o", f"log={base}/mount.log", meta, mnt], timeout=120)
            assert r.returncode == 0, r.stderr
            try:
                with open("/proc/self/mountinfo") as f:
                    assert any(line.split()[4] == mnt for line in f), "mount not visible"
                # the mount daemon lives in n1's network namespace
                pids = subprocess.run(["ip", "netns", "pids", c.ns("n1")],
                                      capture_output=True, text=True).stdout.split()
                assert any(b"braidfs" in open(f"/proc/{p}/cmdline", "rb").read() for p in pids)
                run = VerifyRun(os.path.join(mnt, "load"), os.path.join(base, "j"), files=2,
                                blocks=16, duration=2, prefix=c.argv("n1", [])).start()
                res = run.wait(timeout=120)
                assert res["exit"] == 0 and res["acknowledged"] > 0, res
                chk = check(os.path.join(mnt, "load"), os.path.join(base, "j"))
                assert chk["exit"] == 0 and chk["verified"] == chk["acknowledged"], chk
            finally:
                r = subprocess.run([BIN, "umount", mnt], capture_output=True, text=True,
                                   timeout=120)
                c.forget("mounts", mnt)
            assert r.returncode == 0, r.stderr
        finally:
            stop_postgres(c, pgdir)
    assert not c.leftovers()


def test_sweep_removes_what_a_killed_session_left(tmp_path):
    """A test process killed -9 with a cluster up and a mount made: sweep_stale removes its
    mount, namespaces, links and bridge; a live session's cluster is left alone."""
    from netns import STATE_DIR, sweep_stale
    mnt = str(tmp_path / "m")
    os.mkdir(mnt)
    code = ("import os, subprocess, sys; sys.path.insert(0, sys.argv[1]); from netns import "
            "Cluster\nc = Cluster(['n1', 'n2']); c.up()\n"
            "subprocess.run(['mount', '-t', 'tmpfs', 'x', sys.argv[2]], check=True)\n"
            "c.remember('mounts', sys.argv[2]); print(c.tag, flush=True); os.kill(os.getpid(), 9)")
    here = os.path.dirname(os.path.abspath(__file__))
    with Cluster(["n1"]) as alive:
        p = subprocess.run([PY, "-c", code, here, mnt], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == -9, p.stderr
        tag = p.stdout.strip()
        assert os.path.exists(os.path.join(STATE_DIR, f"{tag}.json"))
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"bfs-{tag}-n1" in listed
        removed = sweep_stale()
        assert f"mount {mnt}" in removed and f"netns bfs-{tag}-n1" in removed, removed
        assert f"link bfbr{tag}" in removed, removed
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"bfs-{tag}-" not in listed
        assert alive.ns("n1") in listed, "the live cluster was swept"
        with open("/proc/self/mountinfo") as f:
            assert not any(line.split()[4] == mnt for line in f)
        assert not os.path.exists(os.path.join(STATE_DIR, f"{tag}.json"))
