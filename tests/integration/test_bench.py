"""braidfs bench: argument errors, and a small real run that produces its table, JSON and chart
(a smoke run with tiny sizes: the figures themselves are never checked, only that every cell
was measured and nothing is left mounted)."""
import json
import os

import pytest

from conftest import braidfs, mounted_paths


def test_bench_help():
    p = braidfs("bench", "--help")
    assert p.returncode == 0
    for word in ("--peers", "--systems", "pgbench", "ratio"):
        assert word in p.stdout


@pytest.mark.parametrize("args,msg", [
    (["--rows", "nosuchrow"], "unknown row 'nosuchrow'"),
    (["--systems", "local,zfs"], "unknown system 'zfs'"),
    (["--size-mb", "many"], "invalid int value"),
    (["--rounds", "0"], "--rounds must be 1 or more"),
])
def test_bench_bad_args(args, msg):
    p = braidfs("bench", *args)
    assert p.returncode == 2
    assert msg in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_bench_small_run(test_dir):
    """Two rounds: every cell is the median of two measured figures, the columns of a row are
    measured one after the other before the next row starts (row by row, not system by
    system), and the second round takes the systems in the opposite order."""
    out = os.path.join(test_dir, "out")
    work = os.path.join(test_dir, "work")
    rows = ("seqwrite", "seqread", "fsyncwrite", "create", "stat", "unlink")
    p = braidfs("bench", "--workdir", work, "--out", out, "--systems", "local,braidfs-r2",
                "--rows", ",".join(rows), "--size-mb", "16", "--runtime", "1", "--rounds", "2",
                timeout=900)
    assert p.returncode == 0, p.stderr
    doc = json.load(open(os.path.join(out, "bench.json")))
    assert doc["rounds"] == 2
    for system in ("local", "braidfs-r2"):
        for row in rows:
            v = doc["results"][system][row]
            assert v is not None and v > 0, (system, row)
            both = doc["per_round"][system][row]
            assert len(both) == 2 and all(x > 0 for x in both), (system, row, both)
            assert min(both) <= v <= max(both)
    steps = [line.split("] ", 1)[1] for line in p.stderr.splitlines() if "step " in line]
    assert steps[:4] == ["local: seqwrite", "braidfs-r2: seqwrite", "local: seqread",
                         "braidfs-r2: seqread"], steps
    second = steps[len(steps) // 2:]
    assert second[:2] == ["braidfs-r2: seqwrite", "local: seqwrite"], second
    assert "Median of 2 rounds" in p.stdout and "lowest - highest" in p.stdout
    assert "braidfs-r2" in p.stdout and "x)" in p.stdout  # ratios in the table
    png = open(os.path.join(out, "bench.png"), "rb").read(8)
    assert png == b"\x89PNG\r\n\x1a\n"
    assert not [m for m in mounted_paths() if m.startswith(work)]
