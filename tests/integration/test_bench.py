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
])
def test_bench_bad_args(args, msg):
    p = braidfs("bench", *args)
    assert p.returncode == 2
    assert msg in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_bench_small_run(test_dir):
    out = os.path.join(test_dir, "out")
    work = os.path.join(test_dir, "work")
    p = braidfs("bench", "--workdir", work, "--out", out, "--systems", "local,braidfs-r2",
                "--rows", "seqwrite,seqread,fsyncwrite,create,stat,unlink", "--size-mb", "16",
                "--runtime", "1", timeout=600)
    assert p.returncode == 0, p.stderr
    doc = json.load(open(os.path.join(out, "bench.json")))
    for system in ("local", "braidfs-r2"):
        for row in ("seqwrite", "seqread", "fsyncwrite", "create", "stat", "unlink"):
            v = doc["results"][system][row]
            assert v is not None and v > 0, (system, row)
    assert "braidfs-r2" in p.stdout and "x)" in p.stdout  # ratios in the table
    png = open(os.path.join(out, "bench.png"), "rb").read(8)
    assert png == b"\x89PNG\r\n\x1a\n"
    assert not [m for m in mounted_paths() if m.startswith(work)]
