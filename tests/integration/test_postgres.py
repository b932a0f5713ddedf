"""PostgreSQL on a braidfs mount: initdb, pgbench init + a 10 s run, clean stop, and the data
is still there after a remount."""

import os
import pwd
import random
import shutil
import subprocess
import tempfile
import time

import pytest

PGBIN = os.environ.get("BRAIDFS_PGBIN", "/usr/lib/postgresql/15/bin")


def _pg_user():
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


def _as_postgres(argv, timeout=300, check=True):
    pw = _pg_user()
    env = {"PATH": f"{PGBIN}:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    p = subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
                        "--init-groups", "--"] + argv, capture_output=True, text=True,
                       timeout=timeout, env=env, cwd="/")
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> exit {p.returncode}\n{p.stdout[-3000:]}\n"
                             f"{p.stderr[-3000:]}")
    return p


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_postgres_pgbench(volume):
    if not os.path.exists(os.path.join(PGBIN, "postgres")) or _pg_user() is None:
        pytest.skip("PostgreSQL binaries or the postgres user missing")
    pw = _pg_user()
    os.chmod(volume.mnt, 0o755)
    data = volume.path("pgdata")
    os.mkdir(data, 0o700)
    os.chown(data, pw.pw_uid, pw.pw_gid)
    sock = tempfile.mkdtemp(prefix="braidfs-pgsock-")
    os.chown(sock, pw.pw_uid, pw.pw_gid)
    port = str(random.randint(20000, 60000))
    logf = os.path.join(sock, "log")
    opts = f"-c listen_addresses='' -k {sock} -p {port} -c fsync=on -c max_connections=20"
    ctl = [f"{PGBIN}/pg_ctl", "-D", data, "-l", logf, "-o", opts, "-w", "-t", "120"]
    conn = ["-h", sock, "-p", port]
    started = False
    try:
        _as_postgres([f"{PGBIN}/initdb", "-D", data, "--auth=trust", "-E", "UTF8",
                      "--data-checksums"], timeout=600)
        _as_postgres(ctl + ["start"])
        started = True
        r = _as_postgres([f"{PGBIN}/pgbench"] + conn + ["-i", "-s", "2", "postgres"], timeout=600)
        assert "error" not in (r.stdout + r.stderr).lower(), r.stderr
        r = _as_postgres([f"{PGBIN}/pgbench"] + conn + ["-c", "4", "-T", "10", "postgres"],
                         timeout=600)
        out = r.stdout + r.stderr
        assert "number of failed transactions: 0" in out or "failed" not in out.lower(), out
        assert "aborted" not in out.lower() or "number of transactions actually processed" in out
        assert "tps =" in out, out
        r = _as_postgres([f"{PGBIN}/psql"] + conn + ["-At", "-c",
                          "select count(*) from pgbench_accounts", "postgres"])
        assert r.stdout.strip() == "200000"
        _as_postgres(ctl + ["stop", "-m", "fast"])
        started = False
        volume.remount()
        _as_postgres(ctl + ["start"])
        started = True
        r = _as_postgres([f"{PGBIN}/psql"] + conn + ["-At", "-c",
                          "select count(*) from pgbench_accounts", "postgres"])
        assert r.stdout.strip() == "200000"
        # every page checksum verified by amcheck-free full scans
        r = _as_postgres([f"{PGBIN}/psql"] + conn + ["-At", "-c",
                          "select sum(abalance) = (select sum(delta) from pgbench_history) "
                          "from pgbench_accounts", "postgres"])
        assert r.stdout.strip() == "t", "pgbench balances do not add up"
        _as_postgres(ctl + ["stop", "-m", "fast"])
        started = False
    finally:
        if started:
            _as_postgres(ctl + ["stop", "-m", "immediate"], check=False)
        pidf = os.path.join(data, "postmaster.pid")
        try:
            pid = int(open(pidf).readline())
            os.kill(pid, 9)
            time.sleep(1)
        except (OSError, ValueError):
            pass
        if os.path.exists(logf) and os.environ.get("BRAIDFS_PG_LOG"):
            print(open(logf).read()[-5000:])
        shutil.rmtree(sock, ignore_errors=True)
