"""`braidfs device`: list real loop devices with what they hold; add a target to a volume
with data and rebalance; drain a target under data, then remove it; refusals that destroy
nothing; errors (mounted volume, unknown target, nowhere to drain to)."""

import hashlib
import json
import os
import random
import re
import shutil
import subprocess

import pytest

from conftest import braidfs, read_file, sha256_file, write_file

MiB = 1 << 20


# --------------------------------------------------------------------------- helpers


def have(tool):
    return shutil.which(tool) is not None


class Loops:
    """Loop devices over image files in a test directory; all detached at the end."""

    def __init__(self, base):
        self.base = base
        self.devs = []

    def make(self, name, mib=64, prepare=None):
        img = os.path.join(self.base, name + ".img")
        with open(img, "wb") as f:
            f.truncate(mib * MiB)
        if prepare:
            prepare(img)
        p = subprocess.run(["losetup", "-f", "--show", img], capture_output=True, text=True,
                           timeout=30)
        if p.returncode != 0:
            pytest.skip(f"no loop device: {p.stderr.strip()}")
        dev = p.stdout.strip()
        self.devs.append(dev)
        return img, dev

    def close(self):
        for d in self.devs:
            subprocess.run(["losetup", "-d", d], capture_output=True, timeout=30)


@pytest.fixture
def loops(test_dir):
    if os.geteuid() != 0 or not have("losetup"):
        pytest.skip("loop devices need root and losetup")
    lp = Loops(test_dir)
    yield lp
    lp.close()


def mkfs_ext4(label):
    def run(img):
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, img], check=True,
                       capture_output=True, timeout=60)
    return run


def gpt(img):
    subprocess.run(["sfdisk", "-q", img], input="label: gpt\n,16M\n,\n", text=True, check=True,
                   capture_output=True, timeout=60)


def assert_error(p, cmd, *needles):
    """Failed with one stderr line `braidfs CMD: ...` containing every needle."""
    assert p.returncode not in (0,) and p.returncode < 126, \
        f"braidfs {cmd}: exit {p.returncode}\n{p.stdout}{p.stderr}"
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"braidfs {cmd}: "), \
        f"braidfs {cmd}: stderr is not one error line:\n{p.stderr}"
    for n in needles:
        assert n in lines[0], f"braidfs {cmd}: {n!r} not in {lines[0]!r}"
    return lines[0]


def fill(v, rng, nfiles=6, size=5 * MiB):
    """Files of random bytes (spanning several chunks and chains); returns {path: sha256}."""
    out = {}
    for i in range(nfiles):
        p = v.path(f"f{i}")
        data = rng.randbytes(size + rng.randrange(MiB))
        write_file(p, data, fsync=True)
        out[p] = hashlib.sha256(data).hexdigest()
    os.mkdir(v.path("d"))
    write_file(v.path("d", "small"), b"hello\n", fsync=True)
    out[v.path("d", "small")] = hashlib.sha256(b"hello\n").hexdigest()
    return out


def check_files(expect):
    for p, h in expect.items():
        assert sha256_file(p) == h, f"{p} changed"


def status_targets(v):
    """{id: {state, pool, node, class, chains, url}} from `braidfs status`."""
    st = v.status()
    out = {}
    for ln in st.stdout.splitlines():
        m = re.match(r"\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\d+)\s+.*\s(\S+)$", ln)
        if m:
            out[int(m.group(1))] = dict(state=m.group(2), pool=m.group(3), node=m.group(4),
                                        cls=m.group(5), chains=int(m.group(6)),
                                        url=m.group(7))
    return st, out


def chunk_count(d):
    n = 0
    for _, _, fns in os.walk(os.path.join(d, "chunks")):
        n += len(fns)
    return n


def fsck_clean(v):
    r = v.fsck()
    assert r.returncode == 0, f"fsck after the move: exit {r.returncode}\n{r.stdout}{r.stderr}"
    assert "0 stray" in r.stdout and "clean" in r.stdout, r.stdout


# --------------------------------------------------------------------------- list


def test_list_loop_devices(loops):
    _, free_dev = loops.make("empty")
    _, ext_dev = loops.make("ext4", prepare=mkfs_ext4("bfsdata"))
    gpt_dev = None
    if have("sfdisk"):
        _, gpt_dev = loops.make("gpt", prepare=gpt)
    p = braidfs("device", "list")
    assert p.returncode == 0, p.stderr
    rows = {ln.split()[0]: ln for ln in p.stdout.splitlines()[1:] if ln.strip()}
    for dev, state in ((free_dev, "free"), (ext_dev, 'holds ext4 "bfsdata"'),
                       (gpt_dev, "partition table gpt")):
        if not dev:
            continue
        name = os.path.basename(dev)
        assert name in rows, f"{name} not listed:\n{p.stdout}"
        assert " virtual " in rows[name], rows[name]
        assert "64.0 MiB" in rows[name], rows[name]
        assert rows[name].rstrip().endswith(state), f"{name}: {rows[name]!r}, want {state}"
    # the same in JSON
    p = braidfs("device", "list", "--json")
    assert p.returncode == 0, p.stderr
    devs = {d["name"]: d for d in json.loads(p.stdout)}
    free = devs[os.path.basename(free_dev)]
    assert free["state"] == "free" and free["in_use"] is False and free["class"] == "virtual"
    assert free["size"] == 64 * MiB and free["backing_file"].endswith("empty.img")
    ext = devs[os.path.basename(ext_dev)]
    assert ext["fs_type"] == "ext4" and ext["fs_label"] == "bfsdata" and ext["in_use"] is True
    if gpt_dev:
        assert devs[os.path.basename(gpt_dev)]["partition_table"] == "gpt"
    # zram/ram and empty devices only with --all
    p = braidfs("device", "list", "--all", "--json")
    assert p.returncode == 0
    assert len(json.loads(p.stdout)) >= len(devs)


# --------------------------------------------------------------------------- add


def test_add_dir_target_rebalances(make_volume, test_dir):
    v = make_volume(targets=("dir", "dir"))
    expect = fill(v, random.Random(1))
    v.umount()
    new = os.path.join(v.dir, "t2")
    os.mkdir(new)
    p = braidfs("device", "add", v.meta_url, "dir:" + new, timeout=300)
    assert p.returncode == 0, f"device add: exit {p.returncode}\n{p.stdout}{p.stderr}"
    assert "target 3" in p.stdout and "pool 'dir'" in p.stdout, p.stdout
    m = re.search(r"(\d+) chain membership\(s\) moved", p.stdout)
    assert m, p.stdout
    # 64 chains x 2 replicas over 3 targets: the new one takes 42 or 43 (PL-4, PL-6)
    assert int(m.group(1)) in (42, 43), p.stdout
    assert "chain(s)" in p.stderr, f"no progress on stderr:\n{p.stderr}"
    st, t = status_targets(v)
    assert st.returncode == 0, st.stdout
    assert t[3]["state"] == "up" and t[3]["pool"] == "dir" and t[3]["cls"] == "dir"
    assert sorted(x["chains"] for x in t.values()) in ([42, 43, 43], [42, 42, 43])
    assert chunk_count(new) > 0, "the new target got no chunk"
    fsck_clean(v)
    v.mount()
    check_files(expect)
    # and it serves writes: a new file lands on all its chains' members
    write_file(v.path("after"), os.urandom(9 * MiB), fsync=True)
    v.umount()
    fsck_clean(v)
    v.mount()


def test_add_no_rebalance_then_rebalance(make_volume):
    v = make_volume(targets=("dir", "dir"), mount=False)
    new = os.path.join(v.dir, "t2")
    os.mkdir(new)
    p = braidfs("device", "add", "--no-rebalance", v.meta_url, "dir:" + new)
    assert p.returncode == 0, p.stderr
    _, t = status_targets(v)
    assert t[3]["chains"] == 0
    p = braidfs("device", "rebalance", v.meta_url)
    assert p.returncode == 0, p.stdout + p.stderr
    _, t = status_targets(v)
    assert t[3]["chains"] in (42, 43)
    p = braidfs("device", "rebalance", v.meta_url)  # balanced: nothing moves
    assert p.returncode == 0 and "0 move(s) planned" in p.stdout, p.stdout
    fsck_clean(v)


def test_add_refuses_non_empty_dir(make_volume):
    v = make_volume(targets=("dir", "dir"), mount=False)
    new = os.path.join(v.dir, "busy")
    os.mkdir(new)
    write_file(os.path.join(new, "keep.txt"), b"precious\n")
    _, before = status_targets(v)
    p = braidfs("device", "add", v.meta_url, "dir:" + new)
    assert_error(p, "device add", "not empty")
    assert read_file(os.path.join(new, "keep.txt")) == b"precious\n"
    assert sorted(os.listdir(new)) == ["keep.txt"]
    assert status_targets(v)[1] == before, "a refused add changed the volume"


def test_add_refuses_ext4_device(make_volume, loops):
    v = make_volume(targets=("dir", "dir"), mount=False)
    img, dev = loops.make("ext4", prepare=mkfs_ext4("mine"))
    head = hashlib.sha256(read_file(img)[:4 * MiB]).hexdigest()
    p = braidfs("device", "add", v.meta_url, "file:" + dev)
    line = assert_error(p, "device add", dev, 'holds ext4 "mine"', "--force")
    assert "refusing" in line
    assert hashlib.sha256(read_file(img)[:4 * MiB]).hexdigest() == head, "the device changed"
    _, t = status_targets(v)
    assert sorted(t) == [1, 2], "a refused add recorded a target"
    # a free device passes discovery; this build then needs a file: backend to format it
    _, free = loops.make("free")
    p = braidfs("device", "add", v.meta_url, "file:" + free)
    if p.returncode != 0:
        assert "is not free" not in p.stderr, p.stderr


# --------------------------------------------------------------------------- drain, remove


def test_drain_then_remove(make_volume):
    v = make_volume(targets=("dir", "dir", "dir"))
    expect = fill(v, random.Random(2))
    v.umount()
    _, t = status_targets(v)
    had = t[1]["chains"]
    assert had > 0
    p = braidfs("device", "drain", v.meta_url, "1", timeout=300)
    assert p.returncode == 0, f"device drain: exit {p.returncode}\n{p.stdout}{p.stderr}"
    assert f"{had} chain membership(s) moved" in p.stdout, p.stdout
    st, t = status_targets(v)
    assert st.returncode == 0, st.stdout
    assert t[1]["state"] == "drained" and t[1]["chains"] == 0
    assert t[2]["chains"] + t[3]["chains"] == 128 and t[2]["chains"] == t[3]["chains"] == 64
    assert chunk_count(v.target_dirs[0]) == 0, "the drained target still holds chunks"
    fsck_clean(v)
    v.mount()
    check_files(expect)
    v.umount()
    # drain again: nothing to do
    p = braidfs("device", "drain", v.meta_url, "dir:" + v.target_dirs[0])
    assert p.returncode == 0 and "already drained" in p.stdout, p.stdout + p.stderr
    p = braidfs("device", "remove", v.meta_url, "1")
    assert p.returncode == 0, p.stderr
    assert os.path.exists(os.path.join(v.target_dirs[0], "braidfs-target")), \
        "remove without --wipe deleted the identity"
    _, t = status_targets(v)
    assert t[1]["state"] == "removed"
    p = braidfs("device", "remove", v.meta_url, "1")
    assert_error(p, "device remove", "has no target 1")
    fsck_clean(v)
    v.mount()
    check_files(expect)
    v.umount()
    # two targets left for two replicas: nothing can take target 2's place
    p = braidfs("device", "drain", v.meta_url, "2")
    assert_error(p, "device drain", "no other target can take", "nothing was moved")


def test_drain_to_another_pool(make_volume):
    """Pool 'a' has no target left that could take the chains: they go to pool 'b', said so
    for each chain."""
    v = make_volume(targets=("dir", "dir"), extra_format=["--pool", "a"])
    expect = fill(v, random.Random(3), nfiles=2, size=3 * MiB)
    v.umount()
    other = os.path.join(v.dir, "tb")
    os.mkdir(other)
    p = braidfs("device", "add", "--pool", "b", v.meta_url, "dir:" + other)
    assert p.returncode == 0, p.stderr
    assert "pool 'b': the volume has no chain in it" in p.stdout, p.stdout
    p = braidfs("device", "drain", v.meta_url, "1", timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "no target of its pool can take it: target 3 (pool 'b') does" in p.stdout, p.stdout
    _, t = status_targets(v)
    assert t[1]["state"] == "drained" and t[3]["chains"] == 64 and t[2]["chains"] == 64
    fsck_clean(v)
    v.mount()
    check_files(expect)


def test_remove_wipe(make_volume):
    v = make_volume(targets=("dir", "dir", "dir"), mount=False)
    assert braidfs("device", "drain", v.meta_url, "3").returncode == 0
    p = braidfs("device", "remove", "--wipe", v.meta_url, "3")
    assert p.returncode == 0, p.stderr
    assert os.listdir(v.target_dirs[2]) == [], os.listdir(v.target_dirs[2])
    # and the directory can be added again, as a new target
    p = braidfs("device", "add", v.meta_url, "dir:" + v.target_dirs[2])
    assert p.returncode == 0, p.stderr
    assert "target 4" in p.stdout
    fsck_clean(v)


# --------------------------------------------------------------------------- errors


def test_errors(make_volume):
    v = make_volume(targets=("dir", "dir"))
    new = os.path.join(v.dir, "t9")
    os.mkdir(new)
    for args in (("add", v.meta_url, "dir:" + new), ("drain", v.meta_url, "1"),
                 ("remove", v.meta_url, "2"), ("rebalance", v.meta_url)):
        p = braidfs("device", *args)
        assert p.returncode == 2, f"device {args[0]} on a mounted volume: {p.returncode}"
        assert_error(p, "device " + args[0], "is mounted", f"(pid {v.pid()})",
                     "unmount it first")
    assert os.listdir(new) == []
    v.umount()
    assert_error(braidfs("device", "drain", v.meta_url, "99"), "device drain", "has no target 99")
    assert_error(braidfs("device", "remove", v.meta_url, "dir:/nowhere"), "device remove",
                 "no target", "dir:/nowhere")
    p = braidfs("device", "remove", v.meta_url, "1")
    assert_error(p, "device remove", "target 1 still holds 64 chains",
                 "run 'braidfs device drain' first")
    p = braidfs("device", "drain", v.meta_url, "1")
    assert_error(p, "device drain", "no other target can take", "nothing was moved")
    _, t = status_targets(v)
    assert t[1]["state"] == "up" and t[1]["chains"] == 64, "a refused drain changed the target"
    assert_error(braidfs("device", "add", v.meta_url, "dir:" + v.target_dirs[0]), "device add",
                 "already target 1")
    assert_error(braidfs("device", "add", v.meta_url, "nope:/x"), "device add",
                 "unknown target kind")
    assert_error(braidfs("device", "add", "--pool", "Bad Name", v.meta_url, "dir:" + new),
                 "device add", "invalid pool name")
    assert braidfs("device", "add", v.meta_url).returncode == 2
    assert braidfs("device", "frobnicate").returncode == 2
    assert braidfs("device", "list", "extra").returncode == 2
    v.mount()


@pytest.mark.parametrize("sub,words", [
    ("list", ["--json", "--all", "free", "virtual"]),
    ("add", ["--pool", "--force", "--no-rebalance", "META_URL", "TARGET_URL"]),
    ("drain", ["TARGET_ID", "replica"]),
    ("remove", ["--wipe", "drain"]),
    ("rebalance", ["POOL"]),
])
def test_help(sub, words):
    p = braidfs("device", sub, "--help")
    assert p.returncode == 0, p.stderr
    for w in words:
        assert w in p.stdout, f"device {sub} --help lacks {w}"
    p = braidfs("device", "--help")
    assert p.returncode == 0 and sub in p.stdout
