"""Chain roles, dirty chunks, resync and `braidfs status` on a volume shared through PostgreSQL.

Nothing here starts `braidfs serve`: the cluster tables are set through the metadata ops by
build/tools/braidfs-meta-tool (tools/tests/meta_tool.c), the way the node daemon and the
manager set them, and the repair engine runs through the same tool (tools/repair_run.c).

- status of a shared volume shows its nodes (lease, heartbeat age), every chain's syncing and
  away targets (with how long away) and the repairs in progress; a one-node volume's status
  keeps its sections (no nodes, no repairs when none runs);
- a target taken out of every chain misses writes; its dirty chunks are recorded; it returns
  as syncing, a resync copies exactly those chunks (recorded progress shows in status), it is
  promoted (dirty and repairs rows gone), and both targets then hold identical chunk files.
"""

import os
import re
import subprocess

import pytest

import conftest
from conftest import braidfs, compare_chunk_trees, read_file, write_file
from test_postgres_meta import make_pg_volume, pg  # noqa: F401  (fixtures)

MiB = 1 << 20
TOOL = os.path.join(os.path.dirname(conftest.BIN), "braidfs-meta-tool")


def tool(url, *args, check=True):
    p = subprocess.run([TOOL, url] + [str(a) for a in args], capture_output=True, text=True,
                       timeout=120)
    if check:
        assert p.returncode == 0, f"braidfs-meta-tool {args}: {p.stderr}"
    return p


def status(v):
    p = braidfs("status", v.meta_url, timeout=120)
    assert p.returncode in (0, 1) and "Sanitizer" not in p.stderr, p.stderr
    return p.stdout


def section(out, name):
    """The lines of section NAME of status output (after its title, up to a blank line)."""
    lines = out.split("\n")
    i = lines.index(name)
    body = []
    for line in lines[i + 1:]:
        if not line.strip():
            break
        body.append(line)
    return body


def chain_line(out, chain):
    for line in section(out, "chains")[1:]:
        if line.split()[0] == str(chain):
            return line
    raise AssertionError(f"chain {chain} not in status:\n{out}")


@pytest.fixture(autouse=True)
def _need_tool():
    if not os.access(TOOL, os.X_OK):
        pytest.fail(f"{TOOL} not built")


def test_status_shows_nodes_roles_and_repairs(make_pg_volume):  # noqa: F811
    v = make_pg_volume(mount=False, targets=("dir", "dir", "dir"),
                       extra_format=("--chains", "3"))
    url = v.meta_url
    before = status(v)
    assert "nodes" in before.split("\n")
    assert "  none registered (no braidfs serve has started)" in before
    assert section(before, "repairs") == ["  none running"]

    tool(url, "node", "n1", "10.77.0.1:7410", 600000)
    tool(url, "node", "n2", "10.77.0.2:7410", 1)  # its lease runs out at once
    tool(url, "chain", 0, "cur", "1,3", "-", "2")  # 2 failed: away
    tool(url, "chain", 1, "cur", "3", "2", "1")  # 2 back as syncing, 1 away
    tool(url, "repair", 1, 2, "resync", 10, 4, 4 * MiB, 2 * MiB)
    tool(url, "repair", 2, 1, "rebuild", 0, 0, 0, 0)
    out = status(v)

    assert "\t" not in out
    for name in ("nodes", "targets", "chains", "repairs"):
        assert all(x.startswith("  ") for x in section(out, name)), out
    nodes = section(out, "nodes")
    assert nodes[0].split() == ["ID", "NAME", "STATE", "LEASE", "HEARTBEAT", "ADDRESS"]
    n1 = next(x for x in nodes if " n1 " in x)
    n2 = next(x for x in nodes if " n2 " in x)
    assert n1.split()[2] == "up" and "left" in n1 and n1.endswith("10.77.0.1:7410"), n1
    assert re.search(r" \d+(\.\d)?(ms|s) ago ", n1), n1
    assert n2.split()[2] == "expired" and n2.endswith("10.77.0.2:7410"), n2

    c0 = chain_line(out, 0)
    assert re.search(r"\b1, 3\s+away 2 \(\d", c0), c0
    assert "syncing" not in c0
    c1 = chain_line(out, 1)
    assert re.search(r"\b3\s+syncing 2\s+away 1 \(\d", c1), c1
    assert "(degraded: 1 of" in c1

    rep = section(out, "repairs")
    assert rep[0].split()[:4] == ["KIND", "CHAIN", "TARGET", "DONE/TOTAL"]
    rs = rep[1].split()
    assert rs[:4] == ["resync", "1", "2", "4/10"], rep[1]
    assert rs[4:6] == ["4.0", "MiB"] and rs[6:8] == ["2.0", "MiB/s"], rep[1]
    rb = rep[2].split()
    assert rb[:4] == ["rebuild", "2", "1", "0/?"], rep[2]

    # the other sections are still there, unchanged in shape
    assert section(out, "targets")[0].split()[:3] == ["ID", "STATE", "POOL"]
    assert section(out, "chains")[0].split() == ["ID", "EPOCH", "MEMBERS", "(primary",
                                                 "first)"]


def test_status_one_node_volume_unchanged(make_volume):
    v = make_volume(mount=False)
    out = braidfs("status", v.meta_url, check=True).stdout
    assert "targets" in out.split("\n") and "chains" in out.split("\n")
    assert "nodes" not in out.split("\n")
    assert "repairs" not in out.split("\n")
    assert "syncing" not in out and "away" not in out


def _chunks_differ(v):
    return compare_chunk_trees(v.chunk_root(0), v.chunk_root(1))


def test_resync_after_an_absence(make_pg_volume):  # noqa: F811
    v = make_pg_volume(chunk_size="1M", extra_format=("--chains", "4"))
    url = v.meta_url
    data_a = os.urandom(6 * MiB)
    write_file(v.path("a"), data_a, fsync=True)
    v.umount()
    assert not _chunks_differ(v)

    # target 2 goes away from every chain; the volume keeps working on target 1
    for c in range(4):
        tool(url, "chain", c, "cur", "1", "-", "2")
    out = status(v)
    for c in range(4):
        assert re.search(r"away 2 \(", chain_line(out, c))
    v.mount()
    with open(v.path("a"), "r+b") as f:
        f.seek(1 * MiB + 4096)
        f.write(b"X" * 70000)
        f.seek(4 * MiB)
        f.write(b"Y" * MiB)
        os.fsync(f.fileno())
    data_a = bytearray(data_a)
    data_a[1 * MiB + 4096:1 * MiB + 4096 + 70000] = b"X" * 70000
    data_a[4 * MiB:5 * MiB] = b"Y" * MiB
    data_b = os.urandom(MiB + 5)
    write_file(v.path("b"), data_b, fsync=True)
    ino_a, ino_b = os.stat(v.path("a")).st_ino, os.stat(v.path("b")).st_ino
    v.umount()
    assert _chunks_differ(v), "target 2 should have missed the writes"

    # what the primaries record while 2 is away (DIST-7)
    touched = set()
    for ino, first, last in ((ino_a, 1, 1), (ino_a, 4, 4), (ino_b, 0, 1)):
        touched |= {int(x) for x in tool(url, "dirty-file", 2, ino, first, last).stdout.split()}

    # 2 comes back: syncing, then a resync per chain copies exactly the dirty chunks
    for c in range(4):
        tool(url, "chain", c, "cur", "1", "2", "-")
    assert "syncing 2" in chain_line(status(v), 0)
    copied = 0
    for c in range(4):
        out = tool(url, "run", c, 2, "resync", 1, 0).stdout
        m = re.search(r"(\d+) of (\d+) chunks, (\d+) bytes read", out)
        assert m and m.group(1) == m.group(2), out
        if c not in touched:
            assert m.group(1) == "0", out
        copied += int(m.group(3))
    # chunks 1 and 4 of a (1 MiB each), b's two chunks (1 MiB + 5 bytes)
    assert copied == 2 * MiB + (MiB + 5), copied
    out = status(v)
    rep = section(out, "repairs")
    assert {line.split()[1] for line in rep[1:]} == {str(c) for c in range(4)}, rep
    for line in rep[1:]:
        f = line.split()
        assert f[0] == "resync" and f[2] == "2", line
        done, total = f[3].split("/")
        assert done == total, line
    assert not _chunks_differ(v), "after the resync the targets must be identical"

    # the manager makes it a full member again: dirty and repairs rows go with it
    for c in range(4):
        tool(url, "promote", c, "cur", 2)
    out = status(v)
    assert section(out, "repairs") == ["  none running"]
    for c in range(4):
        line = chain_line(out, c)
        assert "syncing" not in line and "away" not in line, line
        assert re.search(r"\b1, 2\b", line), line
    v.mount()
    assert read_file(v.path("a")) == bytes(data_a)
    assert read_file(v.path("b")) == data_b
