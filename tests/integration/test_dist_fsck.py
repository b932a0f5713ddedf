"""braidfs fsck and scrub on a volume served by nodes (docs/distributed.md, docs/cli.md):
three `braidfs serve` nodes on loopback with dir: targets (so that chunk files can be damaged
behind the nodes' backs) and a PostgreSQL metadata database.

- fsck on a clean volume reads every chunk through each target's node and finds every replica
  identical (exit 0);
- a chunk file corrupted on one node and another removed on a second node: fsck exits 1 and
  names both chunks and their targets and nodes; `fsck --repair` rewrites them through the
  chains' primaries, after which fsck is clean again and every node holds identical chunk
  files, and the data reads back;
- scrub refuses a mounted served volume and scrubs an unmounted one;
- a node that is stopped: its target is away from every chain, fsck says so and exits 1;
- the mount option stall_ms is taken (and refused out of its bounds).
"""

import os
import re

from conftest import (braidfs, chunk_files, compare_chunk_trees, fsck_replicas, read_file,
                      write_file)
from test_postgres_meta import pg  # noqa: F401  (pg is a fixture)
from test_resync import CHAINS, make
from test_serve import wait_for

MiB = 1 << 20


def fsck(c, *args):
    r = braidfs("fsck", *args, c.meta, timeout=300)
    print(f"$ braidfs fsck {' '.join(args)} -> {r.returncode}\n{r.stdout}{r.stderr}")
    return r


def test_fsck_served_volume(pg, test_dir):  # noqa: F811
    c = make(pg, test_dir, 3, 3)
    try:
        r = braidfs("mount", "-o", "stall_ms=5", c.meta, c.mnt, timeout=60)
        assert r.returncode != 0 and "stall_ms must be 100..3600000" in r.stderr, r.stderr
        braidfs("mount", "-o", f"stall_ms=4000,log={test_dir}/mount.log", c.meta, c.mnt,
                check=True)
        data = {name: os.urandom(size) for name, size in
                (("a", 6 * MiB + 5), ("b", 3 * MiB), ("c", 4096))}
        for name, blob in data.items():
            write_file(os.path.join(c.mnt, name), blob, fsync=True)
        r = braidfs("fsck", c.meta, timeout=60)
        assert r.returncode == 2 and "mounted" in r.stderr, r.stderr
        r = braidfs("scrub", "--no-repair", c.meta, timeout=60)
        assert r.returncode == 1 and "served by nodes" in r.stderr, r.stderr
        c.umount()

        r = fsck(c)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "served by nodes" in r.stdout
        assert f"{CHAINS} chain(s), every one with 3 member(s), all reachable" in r.stdout
        n = fsck_replicas(r.stdout)
        assert n["chunks"] == 7 + 3 + 1, r.stdout
        assert (n["csum"], n["differing"], n["missing"]) == (0, 0, 0), r.stdout
        assert "clean" in r.stdout

        # damage: a chunk file corrupted on n2, another one removed on n3 (its serve is
        # stopped meanwhile so that no open file of it hides the unlink)
        t = [c.target_id(i) for i in range(3)]
        f2 = sorted(p for p in chunk_files(c.chunks(1)).values() if os.path.getsize(p) >= MiB)
        f3 = sorted(p for p in chunk_files(c.chunks(2)).values() if os.path.getsize(p) >= MiB)
        bad = f2[0]
        with open(bad, "r+b") as f:
            f.seek(4096 * 7 + 3)
            old = f.read(1)
            f.seek(4096 * 7 + 3)
            f.write(bytes([old[0] ^ 0x5A]))
        gone = next(p for p in f3 if os.path.relpath(p, c.chunks(2)) !=
                    os.path.relpath(bad, c.chunks(1)))
        c.stop(2)
        os.unlink(gone)
        c.start(2)
        wait_for(lambda: c.roles(t[2]) == {0: CHAINS}, 120, "n3's target back in every chain")

        r = fsck(c)
        assert r.returncode == 1, r.stdout + r.stderr
        n = fsck_replicas(r.stdout)
        assert (n["differing"], n["missing"]) == (1, 1), r.stdout
        assert re.search(rf"inode \d+ chunk \d+ on target {t[1]} \(node n2\): mismatch\n",
                         r.stdout), r.stdout
        assert re.search(rf"inode \d+ chunk \d+ on target {t[2]} \(node n3\): missing\n",
                         r.stdout), r.stdout
        assert "problem(s) found" in r.stdout

        r = fsck(c, "--repair")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "2 replica problem(s) repaired" in r.stdout, r.stdout
        r = fsck(c)
        assert r.returncode == 0 and "clean" in r.stdout, r.stdout + r.stderr
        for i in (1, 2):
            assert not compare_chunk_trees(c.chunks(0), c.chunks(i)), f"n1 vs n{i + 1}"
        assert os.path.exists(gone)

        r = braidfs("scrub", "--no-repair", c.meta, timeout=120)
        print(r.stdout, r.stderr)
        assert r.returncode == 0 and "clean" in r.stdout, r.stdout + r.stderr

        c.mount()
        for name, blob in data.items():
            assert read_file(os.path.join(c.mnt, name)) == blob, name
        c.umount()

        # a node stopped: its target goes away from every chain; fsck names it
        c.stop(1)
        wait_for(lambda: c.roles(t[1]) == {2: CHAINS}, 60, "n2's target away")
        r = fsck(c)
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"target {t[1]} (node n2) is away" in r.stdout, r.stdout
        assert "2 of 3 replicas" in r.stdout
    finally:
        c.cleanup()
