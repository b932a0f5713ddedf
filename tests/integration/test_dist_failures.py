"""braidfs across nodes under failures (docs/distributed.md), with braidfs-verify as the judge.

Setup (netns.py): one network namespace per node (n1..n4), each joined by a veth pair to a
bridge in the root namespace; PostgreSQL runs in the root namespace and listens on the bridge,
so a node whose link is cut loses its peers and the database (the witness) at once, as a node
that loses its network does. Each test gets its own database, a `braidfs serve --config` per
node with one file: target each, a volume formatted with `NODE@file:...` targets, and clients
(`braidfs mount postgres://...`) whose mount daemons live in the namespaces of n1 and n2.

While braidfs-verify writes on both clients (--ack fsync: an acknowledged write is one whose
covering fsync returned), each test breaks something and heals it, then requires:
  - zero problems from `braidfs-verify check` on both clients: every acknowledged block is
    there with its newest acknowledged generation (or a newer one that was in flight);
  - zero application errors while a replica of every chain survives and is reachable;
  - the chains that lost a member changed by an epoch bump (DIST-1/2), and a returning
    member rejoined;
  - after a short outage, resync copied far fewer bytes than the volume holds (the repairs
    table; printed with `braidfs status`);
  - the longest stall of each client is printed (never compared with a time bound, only with a
    generous "did not hang" bound).

Tests: kill -9 of a secondary's serve, kill -9 of the primary's serve, a cut of the primary's
link, replacement of a target away longer than replace_after_s (then fsck, and scrub once the
old node is back, find every replica identical), and a split brain: the primary is cut off with a client of its own that keeps
writing; every write that client saw acknowledged survives the heal, and the old primary
stopped acknowledging within its lease (DIST-4).

The module fails (never skips) when `braidfs serve` is missing or broken. Sizes and durations
come from the environment; the defaults keep the module within a few minutes on 2 cores:

  BRAIDFS_DIST_ROUNDS      rounds of each failure test (default 1)
  BRAIDFS_DIST_LOAD_S      seconds of load before a failure and after the heal (default 3)
  BRAIDFS_DIST_OUTAGE_S    seconds a node stays dead or cut (default 3; the split brain holds
                           its cut at least 3 leases)
  BRAIDFS_DIST_PREFILL_MIB data written before the failures, the volume's bulk (default 48)
  BRAIDFS_DIST_RATE        writes per second of each client's checker (default 200)
  BRAIDFS_DIST_LEASE_MS    lease_ms of every node (default 1500); heartbeat_ms is a sixth
  BRAIDFS_DIST_REPLACE_S   replace_after_s of the replacement test (default 6)
  BRAIDFS_DIST_HANG_S      the "did not hang" bound for one write and for each wait (default 60)
  BRAIDFS_DIST_KEEP=1      keep the directory with the serve and mount logs and the journals
"""
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import BIN, fsck_replicas
from netns import Cluster, Dist, RepairWatch, start_postgres, stop_postgres, sweep_stale
from verifyload import VerifyRun, check, journal_ack_times, summary


def _env(name, default, kind=int):
    v = os.environ.get(name)
    return kind(v) if v not in (None, "") else default


ROUNDS = _env("BRAIDFS_DIST_ROUNDS", 1)
LOAD_S = _env("BRAIDFS_DIST_LOAD_S", 3.0, float)
OUTAGE_S = _env("BRAIDFS_DIST_OUTAGE_S", 3.0, float)
PREFILL_MIB = _env("BRAIDFS_DIST_PREFILL_MIB", 48)
RATE = _env("BRAIDFS_DIST_RATE", 200)
LEASE_MS = _env("BRAIDFS_DIST_LEASE_MS", 1500)
HEARTBEAT_MS = max(50, LEASE_MS // 6)
REPLACE_S = _env("BRAIDFS_DIST_REPLACE_S", 6)
HANG_S = _env("BRAIDFS_DIST_HANG_S", 60)
KEEP = _env("BRAIDFS_DIST_KEEP", 0)
# how long the manager may take to notice a dead node: its lease, a grace, a few heartbeats
DETECT_S = LEASE_MS / 1000 * 3 + 10

NODES = ("n1", "n2", "n3", "n4")  # n4 only serves in the replacement test

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


# --------------------------------------------------------------------------- fixtures


def serve_works():
    """`braidfs serve --help` must exist: a missing or broken serve FAILS the module."""
    if not os.access(BIN, os.X_OK):
        pytest.fail(f"braidfs binary not found: {BIN} (set BRAIDFS_BIN)")
    p = subprocess.run([BIN, "serve", "--help"], capture_output=True, text=True, timeout=30)
    if p.returncode != 0 or "--config" not in p.stdout:
        pytest.fail(f"braidfs serve is missing or broken (`braidfs serve --help` -> exit "
                    f"{p.returncode}): {(p.stderr or p.stdout).strip()[:300]}")


@pytest.fixture(scope="module")
def netpg():
    """The nodes' namespaces and PostgreSQL on their bridge, for the whole module; before it, a
    sweep of what killed sessions left behind."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, FUSE mounts)")
    for what in sweep_stale():
        print(f"swept stale: {what}")
    base = tempfile.mkdtemp(prefix="braidfs-dist-", dir=os.environ.get("BRAIDFS_TEST_TMP",
                                                                       "/tmp"))
    os.chmod(base, 0o755)
    with Cluster(list(NODES)) as c:
        pgdir, url = start_postgres(c, base)
        try:
            yield c, url, base
        finally:
            stop_postgres(c, pgdir)
    left = c.leftovers()
    assert not left, f"left behind: {left}"
    if KEEP:
        print(f"kept {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def make_dist(netpg, request):
    """Factory: make_dist(nodes=("n1","n2","n3"), **Dist options) -> a running Dist. Every link
    is restored, every client unmounted and every serve stopped at the end, pass or fail."""
    c, url, base = netpg
    made = []

    def make(nodes=("n1", "n2", "n3"), **kw):
        serve_works()
        sub = tempfile.mkdtemp(dir=base, prefix=request.node.name[:40] + ".")
        os.chmod(sub, 0o755)
        kw.setdefault("heartbeat_ms", HEARTBEAT_MS)
        kw.setdefault("lease_ms", LEASE_MS)
        d = Dist(c, url, sub, BIN, nodes=nodes, **kw)
        made.append(d)
        d.up()
        return d

    yield make
    for n in c.nodes:
        if c.is_cut(n):
            c.restore(n)
    problems = []
    for d in made:
        problems += d.down()
    assert not problems, "; ".join(problems)


# --------------------------------------------------------------------------- the workload


class Load:
    """braidfs-verify on every client, each in a directory of its own under its mount, its
    journal outside the mounts."""

    def __init__(self, d, clients, tag, ack="fsync", fsync_every=4, rate=RATE, heal=None,
                 **kw):
        self.d = d
        self.heal = heal  # called first when the test fails while the load runs
        self.runs = {}
        for node, mnt in clients.items():
            j = os.path.join(d.base, f"{tag}-{node}.journal")
            self.runs[node] = VerifyRun(os.path.join(mnt, f"load-{tag}-{node}"), j, threads=2,
                                        files=4, blocks=32, ack=ack, fsync_every=fsync_every,
                                        rate=rate, hang_timeout=HANG_S,
                                        prefix=d.c.argv(node, []), **kw)
        self.results = {}

    def __enter__(self):
        for r in self.runs.values():
            r.start()
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None and not self.results:
            # the test failed while the load ran: heal the cluster, then still show what the
            # clients saw (stalls, errors), for the diagnosis; the failure itself is the test's
            if self.heal:
                self.heal()
            for node, r in self.runs.items():
                if r.alive():
                    try:
                        res = r.stop(timeout=30)
                        print(summary(f"load on {node}'s client (stopped by the failure)", res))
                    except AssertionError as e:
                        print(f"load on {node}'s client: {e}")
        for r in self.runs.values():
            r.kill()

    def stop(self):
        for node, r in self.runs.items():
            self.results[node] = r.stop(timeout=HANG_S + 60)
            print(summary(f"load on {node}'s client", self.results[node]))
        return self.results

    def check(self, what=""):
        out = {}
        for node, r in self.runs.items():
            out[node] = check(r.dir, r.journal)
            print(summary(f"check of {node}'s client{what}", out[node]))
        return out

    def assert_no_app_errors(self, nodes=None):
        for node, res in self.results.items():
            if nodes is not None and node not in nodes:
                continue
            assert res["errors"] == 0, (f"{node}'s client saw file system errors while a "
                                        f"replica survived: {res['error_list'][:5]}\n"
                                        f"{self.d.logs()}")
            assert not res["hung"], f"{node}'s client hung{self.d.logs()}"

    def assert_verified(self, checks):
        for node, c in checks.items():
            assert c["errors"] == 0, (f"{node}'s client: acknowledged writes missing or wrong:\n"
                                      f"{c['stderr']}{self.d.logs()}")
            assert c["verified"] == c["acknowledged"] > 0, c


def prefill(mnt, mib):
    """The volume's bulk: MIB MiB in one file, fsynced. Returns (bytes, MiB/s)."""
    path = os.path.join(mnt, "prefill.bin")
    block = os.urandom(1 << 20)
    t0 = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(mib):
            os.pwrite(fd, block, i << 20)
        os.fsync(fd)
    finally:
        os.close(fd)
    dt = time.monotonic() - t0
    print(f"prefill: {mib} MiB in {dt:.2f} s ({mib / dt:.1f} MiB/s through the n1 client, "
          f"3 replicas)")
    return mib << 20, mib / dt


def volume_bytes(mnt):
    total = 0
    for dp, _, fns in os.walk(mnt):
        for n in fns:
            total += os.stat(os.path.join(dp, n)).st_size
    return total


def setup_volume(make_dist, **kw):
    d = make_dist(**kw)
    d.print_chains("after format")
    clients = {"n1": d.mount("n1", "c1"), "n2": d.mount("n2", "c2")}
    prefill(clients["n1"], PREFILL_MIB)
    return d, clients


def lose_and_return(d, clients, victim, how, tag):
    """One round, two phases, each judged by braidfs-verify on both clients.

    Loss: load; break VICTIM (kill -9 its serve, or cut its link); wait until the manager
    took its target out of its chains (each with an epoch bump; the target is away, expected
    back); keep it away OUTAGE_S; stop the load and check it, read from the survivors (a cut
    node's client stalls until the heal: its load is stopped and judged LOAD_S after it).
    Return: a new load; bring VICTIM back; wait until it is a full member of every chain
    again (resync, DIST-6); stop and check the new load, and check the first one again.
    Then the resync's size against the volume's."""
    t = d.target_of(victim)
    before = d.chains()
    had = d.chains_with(t)
    assert had, f"{victim}'s target is in no chain"
    state = {"back": False}

    def heal():
        if state["back"]:
            return
        state["back"] = True
        if how == "kill":
            d.start_serve(victim, wait=False)
        else:
            d.c.restore(victim)

    try:
        with contextlib.ExitStack() as stack:
            loss = stack.enter_context(Load(d, clients, f"{tag}-loss", heal=heal))
            time.sleep(LOAD_S)
            t_fail = time.monotonic()
            if how == "kill":
                d.kill_serve(victim)
            else:
                d.c.cut(victim)
            t_out = d.wait_for(lambda: not d.chains_with(t), DETECT_S,
                               f"{victim}'s target leaves its {len(had)} chains")
            print(f"{tag}: {victim}'s target left its chains {t_out - t_fail:.2f} s after the "
                  f"{how}")
            d.print_chains(f"with {victim} out")
            after = d.chains()
            bumped = {i for i in had if after[i]["epoch"] > before[i]["epoch"]}
            assert bumped == had, \
                f"chains that lost {victim} without an epoch bump: {sorted(had - bumped)}"
            assert d.chains_with(t, "away") == had, "the target should be away, expected back"
            time.sleep(OUTAGE_S)
            if how == "kill":
                loss.stop()  # a cut node's client stalls until the heal: stopped after it
                checks = loss.check(f" with {victim} out")
                loss.assert_no_app_errors()
                loss.assert_verified(checks)
            # what it missed (DIST-7): the resync must copy these chunks, not the volume
            dirty = d.dirty_chunks(t)
            ret = Load(d, clients, f"{tag}-return", heal=heal)
            if how == "kill":
                stack.enter_context(ret)  # the serve comes back under load
                time.sleep(1)
            heal()
            t_back = time.monotonic()
            if how == "cut":
                # a cut client cannot create the new load's files before the heal (the
                # database is out of its reach); its first load resumes now, and is judged
                # now: the cut client's writes must complete once its node is back
                stack.enter_context(ret)
                time.sleep(LOAD_S)
                loss.stop()
                checks = loss.check(" after the heal")
                loss.assert_no_app_errors()
                loss.assert_verified(checks)
            with RepairWatch(d) as rw:
                d.wait_healthy(HANG_S, f"{victim} back as a full member")
                print(f"{tag}: {victim} a full member again "
                      f"{time.monotonic() - t_back:.2f} s after it returned")
                time.sleep(LOAD_S)
                ret.stop()
            checks = ret.check(f" after {victim} returned")
            ret.assert_no_app_errors()
            ret.assert_verified(checks)
            checks = loss.check(f" after {victim} returned")
            loss.assert_no_app_errors()
            loss.assert_verified(checks)
    finally:
        heal()
    d.print_chains(f"after {victim} returned")
    print(d.status().stdout)  # the repairs, as an operator sees them
    assert d.chains_with(t) == had, f"{victim}'s target did not rejoin all its chains"
    assert d.dirty_chunks(t) == 0, "dirty rows left after the resync (DIST-6)"
    vol = volume_bytes(clients["n1"])
    chunk = d.chunk_bytes()
    rs = rw.bytes("resync", t)
    print(f"{tag}: {dirty} chunks dirty on {victim}'s target at its return (at most "
          f"{dirty * chunk} bytes to resync); resync progress seen: {rs} bytes in "
          f"{rw.chunks('resync', t)} chunks; the volume holds {vol} bytes")
    assert dirty > 0, f"no dirty chunk recorded for {victim}'s target while it was out (DIST-7)"
    assert dirty * chunk * 4 < vol, (f"a {OUTAGE_S} s outage left {dirty} chunks of {chunk} "
                                     f"bytes to resync of a {vol}-byte volume: not far fewer")
    assert rs <= dirty * chunk, f"resync copied {rs} bytes, more than the {dirty} dirty chunks"
    assert not rw.bytes("rebuild", t), "a short outage was rebuilt instead of resynced"


# --------------------------------------------------------------------------- tests


def test_cluster_comes_up(make_dist):
    """The groundwork: three serves register, one holds the manager lease, every target is up,
    two clients in two namespaces see each other's files (close-to-open)."""
    d = make_dist()
    rows = d.sql("SELECT name, address, lease_until > now() FROM nodes ORDER BY name")
    print(f"nodes: {rows}")
    assert [r[0] for r in rows] == ["n1", "n2", "n3"]
    assert all(r[2] == "t" for r in rows), f"a node without a live lease: {rows}"
    assert [r[1] for r in rows] == [f"{d.c.ip(n)}:{Dist.PORT}" for n in ("n1", "n2", "n3")]
    mgr = d.sql("SELECT n.name FROM leases l JOIN nodes n ON n.id = l.holder "
                "WHERE l.name = 'manager' AND l.expires > now()")
    assert len(mgr) == 1, f"manager lease: {mgr}"
    d.print_chains()
    ch = d.chains()
    assert ch and all(len(c["members"]) == 3 and len(set(c["members"])) == 3 and
                      not c["syncing"] and not c["away"] for c in ch.values())
    t = d.targets()
    assert sorted(x["node"] for x in t.values()) == ["n1", "n2", "n3"]
    st = d.status()
    print(st.stdout)
    assert st.returncode == 0, f"braidfs status of a healthy cluster: exit {st.returncode}\n" \
                               f"{st.stdout}{st.stderr}"
    assert "unreachable" not in st.stdout and "offline" not in st.stdout
    c1, c2 = d.mount("n1", "c1"), d.mount("n2", "c2")
    with open(os.path.join(c1, "hello"), "wb") as f:
        f.write(b"from n1" * 1000)
    with open(os.path.join(c2, "hello"), "rb") as f:
        assert f.read() == b"from n1" * 1000


# (a) kill -9 of the serve of the node that is primary of the fewest chains (a secondary of
#     most); (b) kill -9 of the serve of the node that is primary of the most chains (n1 on a
#     tie), whose own client keeps writing; (c) the link of that node goes down (its serve and
#     its client keep running, cut off from everything) and comes back: the cut client stalls
#     and resumes. Each under load on both clients, then the node returns and resyncs.
CASES = {"kill-secondary": ("kill", ("n3", "n2", "n1"), min),
         "kill-primary": ("kill", ("n1", "n2", "n3"), max),
         "cut-primary": ("cut", ("n1", "n2", "n3"), max)}


@pytest.mark.parametrize("rnd", range(ROUNDS))
@pytest.mark.parametrize("case", list(CASES))
def test_lose_a_node(make_dist, case, rnd):
    how, order, pick = CASES[case]
    d, clients = setup_volume(make_dist)
    prim = d.primaries()
    victim = pick(order, key=lambda n: prim[n])
    print(f"{case}: victim {victim} (primary of {prim[victim]} of {len(d.chains())} chains)")
    lose_and_return(d, clients, victim, how, f"{case}{rnd}")


def test_replace_target_away_too_long(make_dist):
    """DIST-8: four nodes, three replicas; n3's serve dies (the load while it is away is
    judged first) and stays away longer than replace_after_s: each of its chains gets another
    target rebuilt in its place (a full copy), n3's target leaves them for good (also once n3
    is back), nothing acknowledged before or during the rebuild is lost, fsck (before n3
    returns) and scrub (after) find every replica identical, and n3, back, reclaims its
    target's chunks of those chains, so that fsck finds no stray."""
    d = make_dist(nodes=("n1", "n2", "n3", "n4"), replace_after_s=REPLACE_S)
    d.print_chains("after format")
    clients = {"n1": d.mount("n1", "c1"), "n2": d.mount("n2", "c2")}
    prefill(clients["n1"], PREFILL_MIB // 2)
    t3 = d.target_of("n3")
    had = d.chains_with(t3)
    assert had and len(had) < len(d.chains()), "n3's target should be in some chains, not all"
    with Load(d, clients, "replace-loss") as loss:
        time.sleep(LOAD_S)
        t_fail = time.monotonic()
        d.kill_serve("n3")
        d.wait_for(lambda: not d.chains_with(t3), DETECT_S, "n3's target leaves its chains")
        assert d.chains_with(t3, "away") == had, "n3's target should be away first"
        d.print_chains("with n3 away")
        loss.stop()
        checks = loss.check(" with n3 away")
        loss.assert_no_app_errors()
        loss.assert_verified(checks)
    with Load(d, clients, "replace") as load:
        with RepairWatch(d) as rw:
            d.wait_healthy(REPLACE_S + DETECT_S + HANG_S, "every chain rebuilt to 3 replicas "
                           "without n3")
            print(f"replace: chains full again {time.monotonic() - t_fail:.2f} s after the "
                  f"kill (replace_after_s {REPLACE_S})")
            time.sleep(LOAD_S)
            load.stop()
        checks = load.check(" after the replacement")
        loss.assert_verified(loss.check(" after the replacement"))
    d.print_chains("after the replacement")
    assert not d.chains_with(t3, None), "n3's target is still in a chain (in any role)"
    rb, rc = rw.bytes("rebuild"), rw.chunks("rebuild")
    # a rebuild of a few chunks reports, finishes and is promoted (its row deleted) between
    # two polls of the repairs table: the primaries' logs say what each rebuild copied too
    done = re.findall(r"rebuild of target \d+ done: (\d+) chunk\(s\), (\d+) bytes copied",
                      d.logs(None))
    lc, lb = sum(int(c) for c, _ in done), sum(int(b) for _, b in done)
    print(f"replace: rebuild copied {max(rb, lb)} bytes ({max(rc, lc)} chunks; the repairs "
          f"table showed {rb} bytes); the volume holds {volume_bytes(clients['n1'])} bytes")
    assert max(rb, lb) > 0 and max(rc, lc) > 0, f"no rebuild copied anything: {rw.seen}"
    load.assert_no_app_errors()
    load.assert_verified(checks)
    # fsck (the only client: the mounts go first) reads every chunk through each member's
    # node and finds every replica identical; n3, still down, holds nothing in use
    for mnt in list(d.mounts):
        d.umount(mnt)
    p = d.braidfs("fsck", d.meta_url, timeout=600)
    print(p.stdout + p.stderr)
    assert p.returncode == 0, f"fsck after the replacement: {p.stdout}{p.stderr}"
    n = fsck_replicas(p.stdout)
    assert n["chunks"] > 0, p.stdout
    assert (n["csum"], n["differing"], n["missing"], n["unreadable"]) == (0, 0, 0, 0), p.stdout
    print(f"replace: fsck compared {n['chunks']} chunk(s), {n['read']} read: every replica "
          f"identical")
    # n3 returns: its old target does not rejoin the chains it was replaced in
    d.start_serve("n3")
    time.sleep(LEASE_MS / 1000 * 3)
    assert not d.chains_with(t3, None), "the replaced target came back into its chains"
    # ... and gives up its chunks of them (reclaim): fsck, which lists every target through
    # its node and counts a chunk of a chain that gives its target no role as a stray, is
    # clean again
    done = re.compile(rf"target {t3}: reclaimed (\d+) chunk\(s\)")
    d.wait_for(lambda: done.search(d.serve_log("n3", None)), DETECT_S + HANG_S,
               "n3 reclaims its target's chunks of the chains it was replaced in")
    print("replace: " + done.search(d.serve_log("n3", None)).group(0))
    p = d.braidfs("fsck", d.meta_url, timeout=600)
    print(p.stdout + p.stderr)
    assert p.returncode == 0, f"fsck after the replaced target came back: {p.stdout}{p.stderr}"
    assert fsck_replicas(p.stdout)["stray"] == 0, f"strays left on the replaced target: {p.stdout}"
    p = d.braidfs("scrub", "--no-repair", "--quiet", d.meta_url, timeout=600)
    print(p.stdout)
    assert p.returncode == 0, f"scrub --no-repair found differences: {p.stdout}{p.stderr}"


def test_split_brain_cut_primary_with_its_client(make_dist):
    """The primary's node is cut off from everything (peers and database), silently (its link
    keeps its carrier), while its own client keeps writing. DIST-4: it stops acknowledging
    within its lease; the manager moves its chains to the others, where the other client
    keeps writing without an error. After the heal, every write either client saw
    acknowledged is there, and the old primary rejoins as a member."""
    d, clients = setup_volume(make_dist)
    prim = d.primaries()
    # the cut node must have a client of its own: n1 or n2, whichever is primary of more
    victim = max(("n1", "n2"), key=lambda n: prim[n])
    other = "n2" if victim == "n1" else "n1"
    print(f"victim: {victim} (primary of {prim[victim]} chains)")
    t = d.target_of(victim)
    cut_s = max(OUTAGE_S, LEASE_MS / 1000 * 3)
    healed = []

    def heal():
        if not healed:
            healed.append(time.time())
            d.c.restore(victim)

    try:
        with Load(d, clients, "split", ack="write", fsync_every=0, heal=heal) as load:
            time.sleep(LOAD_S)
            t_cut = time.time()
            d.c.cut(victim, silent=True)  # no carrier change: only timeouts tell
            d.wait_for(lambda: not d.chains_with(t), DETECT_S,
                       f"{victim}'s target leaves its chains")
            d.print_chains(f"with {victim} cut off")
            time.sleep(cut_s)
            heal()
            time.sleep(LOAD_S)
            res = load.stop()
            checks = load.check(" after the heal")
    finally:
        heal()
    t_heal = healed[0]
    lease_s = LEASE_MS / 1000
    acks = journal_ack_times(load.runs[victim].journal)
    during = [a - t_cut for a in acks if t_cut < a < t_heal]
    late = [x for x in during if x > lease_s + 0.5]
    print(f"split brain: {victim}'s client saw {len(during)} acknowledgements after the cut "
          f"(last {max(during) if during else 0:.3f} s after it; lease {lease_s:.1f} s), "
          f"{len([a for a in acks if a >= t_heal])} after the heal; errors "
          f"{res[victim]['errors']}")
    other_during = [a for a in journal_ack_times(load.runs[other].journal) if t_cut < a < t_heal]
    print(f"split brain: {other}'s client saw {len(other_during)} acknowledgements during the "
          f"cut")
    assert not late, (f"{victim} acknowledged {len(late)} writes more than its lease after it "
                      f"was cut off (at {late[:5]} s): not fenced")
    assert other_during, f"{other}'s client made no progress while {victim} was cut off"
    load.assert_no_app_errors(nodes=(other,))
    load.assert_verified(checks)
    # and the old primary comes back as a member (resync), with nothing lost on the way
    d.wait_healthy(HANG_S, f"{victim} back as a full member")
    load.assert_verified(load.check(f" after {victim} rejoined"))
