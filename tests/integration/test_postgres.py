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

from conftest import wait_no_users

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


def _cluster_paths(volume, pw):
    """A data directory on the mount, a socket directory on local disk, a random port:
    (data, sock, port, log file, pg_ctl argv, client connection argv)."""
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
    return data, sock, port, logf, ctl, conn


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_postgres_pgbench(volume):
    if not os.path.exists(os.path.join(PGBIN, "postgres")) or _pg_user() is None:
        pytest.skip("PostgreSQL binaries or the postgres user missing")
    pw = _pg_user()
    data, sock, port, logf, ctl, conn = _cluster_paths(volume, pw)
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
        left = wait_no_users(volume.mnt)
        assert not left, f"processes still using the mount after postgres stopped: {left}"
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


def _clear_stale_pidfile(data):
    """A postmaster killed with -9 may linger as a zombie (this sandbox's init reaps late);
    PostgreSQL then takes its postmaster.pid for a live server. Wait for the reap, then
    remove the stale file as an operator would."""
    pidf = os.path.join(data, "postmaster.pid")
    try:
        pid = int(open(pidf).readline())
    except (OSError, ValueError):
        return
    end = time.monotonic() + 20
    while time.monotonic() < end and os.path.exists(f"/proc/{pid}"):
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            break
        if state != "Z":
            return  # alive: leave it, PostgreSQL will refuse to start and say why
        time.sleep(0.2)
    if os.path.exists(f"/proc/{pid}"):
        os.unlink(pidf)


def _children_of(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append(int(d))
    return out


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_postgres_crash_recovery(volume):
    """kill -9 the braidfs daemon under pgbench; after remount PostgreSQL recovers, every
    committed transaction is there (balances add up) and amcheck finds no damaged page."""
    if not os.path.exists(os.path.join(PGBIN, "postgres")) or _pg_user() is None:
        pytest.skip("PostgreSQL binaries or the postgres user missing")
    from conftest import braidfs
    pw = _pg_user()
    data, sock, port, logf, ctl, conn = _cluster_paths(volume, pw)
    lockf = os.path.join(sock, f".s.PGSQL.{port}.lock")

    def psql(sql):
        return _as_postgres([f"{PGBIN}/psql"] + conn + ["-v", "ON_ERROR_STOP=1", "-At", "-c", sql,
                                                         "postgres"]).stdout.strip()

    def kill_postgres():
        try:
            pm = int(open(lockf).readline())
        except (OSError, ValueError):
            return
        for pid in _children_of(pm) + [pm]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        end = time.monotonic() + 30
        while time.monotonic() < end and os.path.exists(f"/proc/{pm}") and \
                open(f"/proc/{pm}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
            time.sleep(0.1)

    bench = None
    started = False
    try:
        _as_postgres([f"{PGBIN}/initdb", "-D", data, "--auth=trust", "-E", "UTF8",
                      "--data-checksums"], timeout=600)
        _as_postgres(ctl + ["start"])
        started = True
        _as_postgres([f"{PGBIN}/pgbench"] + conn + ["-i", "-s", "2", "postgres"], timeout=600)
        _as_postgres([f"{PGBIN}/psql"] + conn + ["-c", "checkpoint", "postgres"])
        env = {"PATH": f"{PGBIN}:/usr/bin:/bin", "HOME": "/tmp"}
        bench = subprocess.Popen(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
                                  "--init-groups", "--", f"{PGBIN}/pgbench"] + conn +
                                 ["-c", "4", "-T", "60", "postgres"], env=env, cwd="/",
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(8)
        volume.kill9()
        kill_postgres()
        started = False
        bench.kill()
        bench.wait(timeout=60)
        r = braidfs("umount", volume.mnt, timeout=120)
        assert r.returncode == 0, f"braidfs umount of the dead mount: {r.stderr}"
        volume.mount()
        if os.path.exists(lockf):
            os.unlink(lockf)
        _clear_stale_pidfile(data)
        try:
            _as_postgres(ctl + ["start"])  # crash recovery
        except AssertionError as e:
            tail = open(logf).read()[-3000:] if os.path.exists(logf) else ""
            raise AssertionError(f"{e}\n--- postgres log ---\n{tail}")
        started = True
        assert psql("select count(*) from pgbench_accounts") == "200000"
        assert psql("select count(*) > 0 from pgbench_history") == "t", \
            "no committed pgbench transaction survived"
        assert psql("select (select sum(abalance) from pgbench_accounts) = "
                    "(select coalesce(sum(delta), 0) from pgbench_history)") == "t", \
            "committed transactions are not all there (balances do not add up)"
        psql("create extension if not exists amcheck")
        amcheck = os.path.join(PGBIN, "pg_amcheck")
        if os.path.exists(amcheck):
            r = _as_postgres([amcheck] + conn + ["--heapallindexed", "postgres"], check=False)
            assert r.returncode == 0, f"pg_amcheck: {r.stdout[-3000:]}{r.stderr[-2000:]}"
        _as_postgres(ctl + ["stop", "-m", "fast"])
        started = False
    finally:
        if bench is not None and bench.poll() is None:
            bench.kill()
            bench.wait()
        if started:
            _as_postgres(ctl + ["stop", "-m", "immediate"], check=False)
        kill_postgres()
        if os.path.exists(logf) and os.environ.get("BRAIDFS_PG_LOG"):
            print(open(logf).read()[-5000:])
        shutil.rmtree(sock, ignore_errors=True)
