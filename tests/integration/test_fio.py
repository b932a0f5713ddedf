"""Smoke run of the shared fio benchmark suite on a braidfs mount (small sizes)."""

import os
import shutil
import subprocess

import pytest

from conftest import listdir, shared_dir

ROWS = ["seqwrite", "seqread", "randwrite", "randread", "fsyncwrite", "create", "stat", "unlink"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fio_suite_smoke(volume, test_dir):
    script = os.path.join(shared_dir(), "bench", "fio-suite.sh")
    if not os.path.isfile(script):
        pytest.skip(f"{script} not found (set BRAIDFS_SHARED)")
    if not shutil.which("fio"):
        pytest.skip("fio not installed")
    out = os.path.join(test_dir, "fio-out")
    env = dict(os.environ, SIZE_MB="64", RUNTIME="2", PATH="/usr/bin:/bin:" + os.environ["PATH"])
    r = subprocess.run(["bash", script, volume.mnt, out, "braidfs"], capture_output=True,
                       text=True, env=env, timeout=1700)
    summary = os.path.join(out, "summary.tsv")
    assert os.path.isfile(summary), f"no summary.tsv; rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    rows = {}
    for line in open(summary):
        f = line.rstrip("\n").split("\t")
        if len(f) >= 3 and f[0] == "braidfs":
            rows[f[1]] = f[2]
    errs = {}
    for name in ROWS:
        if rows.get(name) == "ERROR":
            ep = os.path.join(out, f"braidfs.{name}.err")
            errs[name] = open(ep).read()[-1500:] if os.path.exists(ep) else ""
    missing = [n for n in ROWS if n not in rows]
    assert not missing, f"rows missing from summary.tsv: {missing}\n{r.stdout}\n{r.stderr[-2000:]}"
    assert not errs, f"rows with ERROR: {errs}"
    for name in ROWS:
        assert float(rows[name]) > 0, f"{name}: figure {rows[name]}"
    assert not [n for n in listdir(volume.mnt) if n.startswith("fio.")], "fio dir left behind"
