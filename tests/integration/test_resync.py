"""braidfs across nodes: a returning node is resynced, a node gone for good is replaced
(docs/distributed.md, DIST-6 and DIST-8). Serve nodes on loopback with dir: targets (so that
the replicas' chunk files can be compared) and a PostgreSQL metadata database.

- resync: a secondary node's serve is killed with -9 while the volume holds much data; data is
  written while it is away; it is started again: its target rejoins every chain as syncing,
  the primaries copy only the chunks written meanwhile (far fewer bytes than the volume
  holds), promote it, and every replica holds identical chunk files; the data reads back;
- replacement: with four nodes and three replicas and replace_after_s of 1, a node killed for
  good has its target replaced in every chain by the fourth node's, rebuilt from the primary
  and promoted; the old target is in no chain; the replicas are identical; the data reads back.
"""

import os
import re
import signal

import pytest

from conftest import compare_chunk_trees, read_file, write_file
from test_postgres_meta import new_database, pg, psql  # noqa: F401  (pg is a fixture)
from test_serve import Cluster, wait_for

MiB = 1 << 20
CHAINS = 8  # the chains of Cluster.format


class DirCluster(Cluster):
    """Cluster with dir: targets and the repair keys in every node's configuration."""

    def __init__(self, base, meta_url, n, replicas, replace_after_s=600):
        super().__init__(base, meta_url, n=n, replicas=replicas)
        self.urls = [f"dir:{os.path.join(base, name)}.d" for name in self.names]
        for i, name in enumerate(self.names):
            os.makedirs(self.urls[i][4:], exist_ok=True)
            with open(self.config(i), "w") as f:
                f.write(f"node: {name}\nlisten: 127.0.0.1:{self.ports[i]}\nmeta: {meta_url}\n"
                        f"targets: [{self.urls[i]}]\nheartbeat_ms: 200\nlease_ms: 1000\n"
                        f"replace_after_s: {replace_after_s}\nresync_rate: 64MiB\n")

    def logs(self):
        text = ""
        for i in range(self.n):
            if os.path.exists(self.log(i)):
                with open(self.log(i)) as f:
                    text += f.read()
        return text


def make(pg, test_dir, n, replicas, **kw):  # noqa: F811
    c = DirCluster(test_dir, new_database(pg), n, replicas, **kw)
    c.format()
    for i in range(n):
        c.start(i)
    return c


def copied(logs, kind, target):
    """Bytes the primaries report copied to target by finished repairs of kind."""
    return [int(m.group(2)) for m in re.finditer(
        rf"{kind} of target {target} done: (\d+) chunk\(s\), (\d+) bytes copied", logs)]


def test_returning_node_is_resynced(pg, test_dir):  # noqa: F811
    c = make(pg, test_dir, 3, 3)
    try:
        c.mount()
        big = os.urandom(64 * MiB)
        write_file(os.path.join(c.mnt, "big"), big, fsync=True)
        t3 = c.target_id(2)

        c.kill9(2)  # a secondary of some chains, primary of others
        wait_for(lambda: c.roles(t3) == {2: CHAINS}, 60, "target 3 away from every chain")
        small = os.urandom(3 * MiB + 77)
        write_file(os.path.join(c.mnt, "small"), small, fsync=True)
        with open(os.path.join(c.mnt, "big"), "r+b") as f:
            f.seek(5 * MiB + 100)
            f.write(b"Z" * MiB)
            os.fsync(f.fileno())
        big = big[:5 * MiB + 100] + b"Z" * MiB + big[6 * MiB + 100:]
        assert c.dirty(t3) > 0

        c.start(2)
        try:
            wait_for(lambda: c.roles(t3) == {0: CHAINS}, 120,
                     "target 3 to be a member of every chain again")
        except AssertionError:
            print(c.logs()[-6000:])
            raise
        assert int(psql(c.meta, "SELECT count(*) FROM chain_members WHERE role <> 0")) == 0
        assert c.dirty() == 0
        logs = c.logs()
        assert re.search(rf"target {t3} of node n3 rejoins chain \d+ as syncing", logs), logs
        done = copied(logs, "resync", t3)
        total = sum(done)
        print(f"resynced {total} bytes in {len(done)} chain(s); the volume holds "
              f"{len(big) + len(small)} bytes")
        assert done and 0 < total < (len(big) + len(small)) // 4, logs[-8000:]

        assert read_file(os.path.join(c.mnt, "big")) == big
        assert read_file(os.path.join(c.mnt, "small")) == small
        c.umount()
        for i in (1, 2):
            assert not compare_chunk_trees(c.chunks(0), c.chunks(i)), f"n1 vs n{i + 1}"
    finally:
        c.cleanup()


def test_node_gone_for_good_is_replaced(pg, test_dir):  # noqa: F811
    c = make(pg, test_dir, 4, 3, replace_after_s=1)
    try:
        c.mount()
        data = os.urandom(12 * MiB + 3)
        write_file(os.path.join(c.mnt, "f"), data, fsync=True)
        t2 = c.target_id(1)
        held = c.roles(t2).get(0, 0)
        assert held > 0

        c.kill9(1)
        wait_for(lambda: c.roles(t2) == {}, 120, "target 2 to leave every chain")
        wait_for(lambda: int(psql(c.meta, "SELECT count(*) FROM chain_members WHERE role <> 0"))
                 == 0, 120, "replacements to be rebuilt and promoted")
        survivors = [0, 2, 3]
        for i in survivors:
            assert c.roles(c.target_id(i)) == {0: CHAINS}, i
        logs = c.logs()
        assert len(re.findall(rf"replaces target {t2} in chain", logs)) == held, logs
        assert read_file(os.path.join(c.mnt, "f")) == data
        more = os.urandom(2 * MiB)
        write_file(os.path.join(c.mnt, "g"), more, fsync=True)
        c.umount()
        for i in survivors[1:]:
            assert not compare_chunk_trees(c.chunks(0), c.chunks(i)), f"n1 vs n{i + 1}"
        c.mount()
        assert read_file(os.path.join(c.mnt, "g")) == more
    finally:
        c.cleanup()
