#!/usr/bin/python3
"""braidfs bench — the local disk, braidfs and the peers, side by side, in one run.

Usage: braidfs bench [OPTIONS]     (or: /usr/bin/python3 tools/bench.py [OPTIONS])

Runs the fixed rows of the project's benchmark on every system in one run on this machine and
prints one table with every figure and its ratio to the local disk — with the peers, a second
one of braidfs against them (r1 / passthrough, r2 / glusterfs, r2 / moosefs) — writes the
figures as JSON and draws a PNG bar chart of the ratios.

Order: every system is set up first; then each row runs on every system in turn before the
next row starts, so that the columns of one row are measured within minutes of each other
(this machine's figures drift by up to 2x within a quarter of an hour). With --rounds N the
whole sequence runs N times, the systems taking turns in the opposite order each round; each
cell is the median of its rounds, and the table is followed by each cell's lowest and highest
round. A full default run with --peers takes about 15 minutes per round.

Systems (columns), in this order:
  local           a directory on the local disk (--workdir)
  braidfs-r1      a fresh braidfs volume, 1 replica, one target
  braidfs-r2      a fresh braidfs volume, 2 replicas, two targets (strong consistency)
  passthrough, glusterfs, moosefs
                  with --peers: the peers brought up by ../shared/bench/peers/NAME.sh
                  (or --peers-dir), where present

Rows (the fixed set of shared/bench/fio-suite.sh, same fio arguments):
  seqwrite   1 MiB sequential write, one job, fsync at the end       MiB/s
  seqread    1 MiB sequential read, caches dropped first              MiB/s
  randwrite  4 KiB random write, psync, 4 jobs, fsync at the end      IOPS
  randread   4 KiB random read, 4 jobs, caches dropped first          IOPS
  fsyncwrite 4 KiB random write + fsync after each                    IOPS
  create / stat / unlink of 10,000 files                               ops/s
  pgbench    PostgreSQL (initdb on the system), scale 10, 4 clients   TPS

Options:
  --workdir DIR     where the local-disk column runs and braidfs keeps its targets and
                    database (default /var/tmp/braidfs-bench); must be on the local disk
  --out DIR         results: bench.json, bench.png, bench.md (default ./bench-results)
  --systems LIST    comma-separated subset of local,braidfs-r1,braidfs-r2 (default all)
  --target-kind K   braidfs targets: dir (default) or file (image files, direct I/O)
  --peers           also run the peers found in --peers-dir
  --peers-dir DIR   default: ../shared/bench/peers next to the source tree
  --rows LIST       comma-separated subset of the rows (default all)
  --size-mb N       size of the sequential file (default 1024)
  --runtime S       seconds per timed fio row (default 20)
  --pgbench-time S  seconds of the pgbench run (default 30)
  --rounds N        run everything N times and report the median of each cell (default 1)
  --braidfs PATH    the braidfs binary (default: the one next to this script's build, else PATH)
  -h, --help        this text

Environment: nothing is left mounted or running when it ends, also on Ctrl-C or an error in
one system (that system's rows read ERROR and the run goes on; a cell with a failed round
reads ERROR, its rounds are in bench.json as "per_round"). A row a system cannot run
reads n/a, with the reason in bench.json ("skipped"): pgbench where the postgres user cannot
enter the mount (libfuse's passthrough example mounts without allow_other). Must run as root (mounts,
dropping caches, the postgres user). Figures drift between runs on a shared machine: compare
ratios from one run, never absolute figures from different runs.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROWS = ["seqwrite", "seqread", "randwrite", "randread", "fsyncwrite", "create", "stat", "unlink",
        "pgbench"]
UNITS = {"seqwrite": "MiB/s", "seqread": "MiB/s", "randwrite": "IOPS", "randread": "IOPS",
         "fsyncwrite": "IOPS", "create": "ops/s", "stat": "ops/s", "unlink": "ops/s",
         "pgbench": "TPS"}
PEERS = ["passthrough", "glusterfs", "moosefs"]
SKIPPED = {}  # system -> row -> why it was not run (shown as n/a, not an error)
HERE = os.path.dirname(os.path.abspath(__file__))


def say(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def run(cmd, check=True, **kw):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: "
                           f"{(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    return r


def drop_caches():
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def fio_row(name, d, size_mb, runtime):
    """One fio row in directory d, the arguments of shared/bench/fio-suite.sh."""
    common = ["fio", "--output-format=json", f"--directory={d}"]
    jobs = {
        "seqwrite": ["--name=seq", "--rw=write", "--bs=1M", f"--size={size_mb}M", "--numjobs=1",
                     "--end_fsync=1", "--ioengine=psync", "--filename=seq"],
        "seqread": ["--name=seq", "--rw=read", "--bs=1M", f"--size={size_mb}M", "--numjobs=1",
                    "--ioengine=psync", "--filename=seq"],
        "randwrite": ["--name=rw", "--rw=randwrite", "--bs=4k", "--size=256M", "--numjobs=4",
                      "--ioengine=psync", "--time_based", f"--runtime={runtime}", "--end_fsync=1",
                      "--group_reporting"],
        "randread": ["--name=rw", "--rw=randread", "--bs=4k", "--size=256M", "--numjobs=4",
                     "--ioengine=psync", "--time_based", f"--runtime={runtime}",
                     "--group_reporting"],
        "fsyncwrite": ["--name=fs", "--rw=randwrite", "--bs=4k", "--size=64M", "--numjobs=1",
                       "--ioengine=psync", "--fsync=1", "--time_based",
                       f"--runtime={runtime * 3 // 4}"],
    }[name]
    if name in ("seqread", "randread"):
        drop_caches()
    r = run(common + jobs)
    j = json.loads(r.stdout[r.stdout.index("{"):])
    rd = sum(x["read"]["bw_bytes"] for x in j["jobs"])
    wr = sum(x["write"]["bw_bytes"] for x in j["jobs"])
    ri = sum(x["read"]["iops"] for x in j["jobs"])
    wi = sum(x["write"]["iops"] for x in j["jobs"])
    return (rd + wr) / 1048576 if name.startswith("seq") else ri + wi


def meta_rows(d, n=10000):
    d = os.path.join(d, "meta")
    os.makedirs(d, exist_ok=True)
    out = {}
    t = time.monotonic()
    for i in range(n):
        os.close(os.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    out["create"] = n / (time.monotonic() - t)
    t = time.monotonic()
    for i in range(n):
        os.stat(f"{d}/f{i}")
    out["stat"] = n / (time.monotonic() - t)
    t = time.monotonic()
    for i in range(n):
        os.unlink(f"{d}/f{i}")
    out["unlink"] = n / (time.monotonic() - t)
    os.rmdir(d)
    return out


class Skip(Exception):
    """A row this system cannot run, for a reason that is not a failure (shown as n/a)."""


def pgbench_row(d, seconds):
    """initdb on d, start PostgreSQL on a private socket, pgbench -i -s 10, 4 clients."""
    # A FUSE mount without allow_other (libfuse's passthrough example as its peer script
    # starts it) lets no user but the one who mounted it in: PostgreSQL never runs as root.
    if run(["runuser", "-u", "postgres", "--", "test", "-x", d], check=False).returncode:
        raise Skip("the postgres user cannot enter the mount (mounted without allow_other)")
    bindir = sorted(p for p in os.listdir("/usr/lib/postgresql"))[-1]
    bindir = f"/usr/lib/postgresql/{bindir}/bin"
    data = os.path.join(d, "pgdata")
    sock = tempfile.mkdtemp(prefix="braidfs-bench-pg.")
    os.makedirs(data)
    shutil.chown(data, "postgres", "postgres")
    shutil.chown(sock, "postgres", "postgres")
    os.chown(d, 0, 0)
    os.chmod(d, 0o755)
    su = ["runuser", "-u", "postgres", "--"]
    port = "54329"
    try:
        run(su + [f"{bindir}/initdb", "-D", data, "-A", "trust", "--no-sync"])
        run(su + [f"{bindir}/pg_ctl", "-D", data, "-w", "-l", os.path.join(sock, "log"),
                  "-o", f"-k {sock} -p {port} -c listen_addresses=''", "start"])
        env = dict(os.environ, PGHOST=sock, PGPORT=port)
        run(su + ["pgbench", "-i", "-q", "-s", "10", "postgres"], env=env)
        r = run(su + ["pgbench", "-c", "4", "-j", "2", "-T", str(seconds), "postgres"], env=env)
        for line in r.stdout.splitlines():
            if line.startswith("tps ="):
                return float(line.split()[2])
        raise RuntimeError("pgbench printed no tps line")
    finally:
        run(su + [f"{bindir}/pg_ctl", "-D", data, "-m", "fast", "stop"], check=False)
        shutil.rmtree(sock, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)


class System:
    """A column: up() returns the directory to run in, down() cleans everything."""

    def __init__(self, name):
        self.name = name

    def up(self):
        raise NotImplementedError

    def down(self):
        pass


class Local(System):
    def __init__(self, workdir):
        super().__init__("local")
        self.dir = os.path.join(workdir, "local")

    def up(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        return self.dir

    def down(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class Braidfs(System):
    def __init__(self, binary, workdir, replicas, kind, image_mb):
        super().__init__(f"braidfs-r{replicas}")
        self.bin, self.replicas, self.kind, self.image_mb = binary, replicas, kind, image_mb
        self.base = os.path.join(workdir, self.name)
        self.mnt = os.path.join(self.base, "mnt")

    def up(self):
        self.down()
        os.makedirs(self.mnt)
        targets = []
        for i in range(self.replicas):
            t = os.path.join(self.base, f"t{i + 1}")
            if self.kind == "file":
                with open(t + ".img", "wb") as f:
                    f.truncate(self.image_mb << 20)
                targets.append(f"file:{t}.img")
            else:
                os.makedirs(t)
                targets.append(f"dir:{t}")
        url = f"sqlite://{self.base}/meta.db"
        run([self.bin, "format", "--replicas", str(self.replicas), url, self.name] + targets)
        run([self.bin, "mount", "-o", f"log={self.base}/mount.log", url, self.mnt])
        return self.mnt

    def down(self):
        if os.path.ismount(self.mnt):
            run([self.bin, "umount", self.mnt], check=False)
        shutil.rmtree(self.base, ignore_errors=True)


class Peer(System):
    def __init__(self, name, script, workdir):
        super().__init__(name)
        self.script = script
        self.mnt = os.path.join(workdir, f"peer-{name}")

    def up(self):
        os.makedirs(self.mnt, exist_ok=True)
        run(["bash", self.script, "up", self.mnt])
        if not os.path.ismount(self.mnt):
            raise RuntimeError(f"{self.script} up did not mount {self.mnt}")
        return self.mnt

    def down(self):
        run(["bash", self.script, "down", self.mnt], check=False)
        if not os.path.ismount(self.mnt):
            shutil.rmtree(self.mnt, ignore_errors=True)


GROUPS = [("seqwrite",), ("seqread",), ("randwrite",), ("randread",), ("fsyncwrite",),
          ("create", "stat", "unlink"), ("pgbench",)]


def run_group(group, rows, d, args):
    """One group of rows on one system in directory d: {row: figure or None}; Skip passes."""
    if group[0] == "create":
        m = meta_rows(d)
        return {k: m[k] for k in group if k in rows}
    r = group[0]
    if r == "pgbench":
        return {r: pgbench_row(d, args.pgbench_time)}
    v = fio_row(r, d, args.size_mb, args.runtime)
    if r == "seqread":
        try:
            os.unlink(os.path.join(d, "seq"))
        except OSError:
            pass
    return {r: v}


def measure_all(systems, rows, args, per_round):
    """Every row on every system, row by row: within a row the systems run one after the
    other, minutes apart at most, so that the machine's drift (which moves a figure by up to
    2x within a quarter of an hour here) falls between rows, not between the columns that
    are compared. With --rounds N the systems take turns in the opposite order each round."""
    work = {}
    for s in systems:
        per_round[s.name] = {r: [] for r in rows}
        try:
            say(f"{s.name}: setting up")
            d = s.up()
            work[s.name] = os.path.join(d, f"bench.{os.getpid()}")
        except Exception as e:  # the column reads ERROR, the run goes on
            say(f"{s.name}: cannot set up: {e}")
    groups = [g for g in GROUPS if any(r in rows for r in g)]
    steps = args.rounds * len(groups) * len(work)
    step, started = 0, time.monotonic()
    live = [s for s in systems if s.name in work]  # the ones that came up
    for k in range(args.rounds):
        order = live if k % 2 == 0 else live[::-1]
        for s in order:
            shutil.rmtree(work[s.name], ignore_errors=True)
            os.makedirs(work[s.name])
        for g in groups:
            label = "create/stat/unlink of 10,000 files" if g[0] == "create" else g[0]
            for s in order:
                step += 1
                el = int(time.monotonic() - started)
                rnd = f"round {k + 1}/{args.rounds}, " if args.rounds > 1 else ""
                say(f"[{rnd}step {step}/{steps}, {el // 60}m{el % 60:02d}s] {s.name}: {label}")
                try:
                    got = run_group(g, rows, work[s.name], args)
                except Skip as e:
                    say(f"{s.name}: {label} not run: {e}")
                    for r in g:
                        if r in rows:
                            SKIPPED.setdefault(s.name, {})[r] = str(e)
                    got = {}
                except Exception as e:
                    say(f"{s.name}: {label} failed: {e}")
                    got = {}
                for r in g:
                    if r in rows:
                        per_round[s.name][r].append(got.get(r))
    for s in live:
        shutil.rmtree(work[s.name], ignore_errors=True)


def summarize(per_round, rows):
    """The figure of each cell: the median of its rounds; None (ERROR or n/a) if a round
    failed or none ran."""
    out = {}
    for name, cells in per_round.items():
        out[name] = {}
        for r in rows:
            vs = cells.get(r, [])
            out[name][r] = (statistics.median(vs)
                            if vs and all(v is not None for v in vs) else None)
    return out


def interrupted(signum, frame):
    raise KeyboardInterrupt


def fmt(v, skipped=False):
    if v is None:
        return "n/a" if skipped else "ERROR"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def md_table(head, body):
    """A Markdown table: a header row, then one row per list of cells."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def table(results, rows, systems):
    base = results.get("local", {})
    body = []
    for r in rows:
        cells = [f"{r} {UNITS[r]}"]
        for s in systems:
            v = results.get(s, {}).get(r)
            b = base.get(r)
            if v is not None and b and s != "local":
                cells.append(f"{fmt(v)} ({v / b:.2f}x)")
            else:
                cells.append(fmt(v, r in SKIPPED.get(s, {})))
        body.append(cells)
    return md_table(["row"] + systems, body)


# braidfs against the peer a user would compare it with: one replica against the cost of FUSE
# itself, two replicas against the replicated peers.
VERSUS = [("braidfs-r1", "passthrough"), ("braidfs-r2", "glusterfs"), ("braidfs-r2", "moosefs")]


def peer_table(results, rows):
    """braidfs / peer for each row, for the pairs of VERSUS both measured; '' if none."""
    pairs = [(a, b) for a, b in VERSUS if a in results and b in results]
    if not pairs:
        return ""
    body = []
    for r in rows:
        cells = [r]
        for a, b in pairs:
            x, y = results[a].get(r), results[b].get(r)
            cells.append(f"{x / y:.2f}x" if x is not None and y else "n/a")
        body.append(cells)
    return md_table(["row"] + [f"{a} / {b}" for a, b in pairs], body)


def spread_table(per_round, rows, systems):
    """The lowest and highest figure of each cell across the rounds."""
    body = []
    for r in rows:
        cells = [f"{r} {UNITS[r]}"]
        for s in systems:
            vs = [v for v in per_round.get(s, {}).get(r, []) if v is not None]
            cells.append(f"{fmt(min(vs))} - {fmt(max(vs))}" if vs else "-")
        body.append(cells)
    return md_table(["row"] + systems, body)


def chart(results, rows, systems, path, rounds=1):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("python3-matplotlib is missing: no chart")
        return False
    base = results.get("local", {})
    others = [s for s in systems if s != "local"]
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 1.3), 5))
    width = 0.8 / max(1, len(others))
    for i, s in enumerate(others):
        ys = []
        for r in rows:
            v, b = results.get(s, {}).get(r), base.get(r)
            ys.append(v / b if v is not None and b else 0)
        ax.bar([x + i * width for x in range(len(rows))], ys, width, label=s)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks([x + width * (len(others) - 1) / 2 for x in range(len(rows))])
    ax.set_xticklabels(rows)
    ax.set_ylabel("ratio to the local disk (1.0 = local)")
    how = f"median of {rounds} rounds" if rounds > 1 else "one run"
    ax.set_title(f"braidfs bench: figure / local disk, {how} on one machine")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem,
            "kernel": os.uname().release}


class Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"braidfs bench: {message} (try 'braidfs bench --help')", file=sys.stderr)
        sys.exit(2)


def main():
    p = Parser(add_help=False)
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("--workdir", default="/var/tmp/braidfs-bench")
    p.add_argument("--out", default="bench-results")
    p.add_argument("--systems", default="local,braidfs-r1,braidfs-r2")
    p.add_argument("--target-kind", default="dir", choices=["dir", "file"])
    p.add_argument("--peers", action="store_true")
    p.add_argument("--peers-dir",
                   default=os.path.join(HERE, "..", "..", "shared", "bench", "peers"))
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--size-mb", type=int, default=1024)
    p.add_argument("--runtime", type=int, default=20)
    p.add_argument("--pgbench-time", type=int, default=30)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--braidfs", default=None)
    args = p.parse_args()
    if args.help:
        print(__doc__.strip())
        return 0
    if args.rounds < 1:
        print("braidfs bench: --rounds must be 1 or more", file=sys.stderr)
        return 2
    rows = [r for r in args.rows.split(",") if r]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        print(f"braidfs bench: unknown row '{bad[0]}' (rows: {', '.join(ROWS)})", file=sys.stderr)
        return 2
    wanted = [s for s in args.systems.split(",") if s]
    bad = [s for s in wanted if s not in ("local", "braidfs-r1", "braidfs-r2")]
    if bad:
        print(f"braidfs bench: unknown system '{bad[0]}'", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("braidfs bench: run as root (it mounts file systems and drops caches)",
              file=sys.stderr)
        return 1
    for tool in ("fio",) + (("pgbench",) if "pgbench" in rows else ()):
        if not shutil.which(tool):
            print(f"braidfs bench: '{tool}' is not installed (sh tools/deps.sh test)",
                  file=sys.stderr)
            return 1
    binary = args.braidfs
    if not binary:
        cand = os.path.join(HERE, "..", "build", "tools", "braidfs")
        binary = cand if os.access(cand, os.X_OK) else shutil.which("braidfs")
    if any(s.startswith("braidfs") for s in wanted) and not binary:
        print("braidfs bench: no braidfs binary (build it, or --braidfs PATH)", file=sys.stderr)
        return 1
    os.makedirs(args.workdir, exist_ok=True)
    image_mb = max(2048, args.size_mb * 3 + 1024)
    systems = []
    for s in wanted:
        if s == "local":
            systems.append(Local(args.workdir))
        else:
            systems.append(Braidfs(binary, args.workdir, int(s[-1]), args.target_kind, image_mb))
    if args.peers:
        for name in PEERS:
            script = os.path.join(args.peers_dir, f"{name}.sh")
            if os.path.exists(script):
                systems.append(Peer(name, script, args.workdir))
            else:
                say(f"peer {name}: no {script}, skipped")
    signal.signal(signal.SIGTERM, interrupted)
    per_round = {}
    started = time.time()
    try:
        measure_all(systems, rows, args, per_round)
    except KeyboardInterrupt:
        say("interrupted: cleaning up")
        return 130
    finally:
        # Last up, first down: a peer's servers run in a network namespace whose mount
        # namespace copied every mount made before it (this machine's mounts do not
        # propagate), so a braidfs volume mounted earlier stays alive in there until that
        # peer's servers have exited, and its unmount would wait for them.
        for s in reversed(systems):
            say(f"{s.name}: tearing down")
            s.down()
    results = summarize(per_round, rows)
    names = [s.name for s in systems]
    os.makedirs(args.out, exist_ok=True)
    doc = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S",
                                                          time.localtime(started)),
           "seconds": round(time.time() - started), "size_mb": args.size_mb,
           "runtime": args.runtime, "pgbench_time": args.pgbench_time,
           "target_kind": args.target_kind, "rounds": args.rounds,
           "units": {r: UNITS[r] for r in rows}, "results": results, "per_round": per_round,
           "skipped": SKIPPED}
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(doc, f, indent=1)
    t = table(results, rows, names)
    pt = peer_table(results, rows)
    if pt:
        t += "\n\nbraidfs against the peers (ratio of the figures, above 1 = braidfs faster):\n\n" + pt
    if args.rounds > 1:
        t = (f"Median of {args.rounds} rounds.\n\n" + t
             + "\n\nEach round's figures (lowest - highest):\n\n" + spread_table(per_round, rows, names))
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(t + "\n")
    drew = chart(results, rows, names, os.path.join(args.out, "bench.png"), args.rounds)
    print(t)
    print(f"\nresults: {args.out}/bench.json, {args.out}/bench.md"
          + (f", {args.out}/bench.png" if drew else ""))
    errors = sum(1 for n, s in results.items() for r, v in s.items()
                 if v is None and r not in SKIPPED.get(n, {}))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
