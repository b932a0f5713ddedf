"""Databases on braidfs, killed mid-load: PostgreSQL and MariaDB.

Each round, client threads run small transactions (insert a ledger row, move money between
accounts) and record every transaction whose COMMIT returned. Then the braidfs mount daemon
and the database server are killed with SIGKILL together (every third round: the database
alone, the mount staying up — its fcntl locks and lock files must not stop the restart);
the dead mount is unmounted and mounted again, the database restarted: it must recover, hold
every transaction a client saw committed, and its books must balance.

Rounds: BRAIDFS_DB_CRASH_ROUNDS (default 10) for each database. Also here: an I/O error under
the database reaches it as an error (a failed COMMIT or a stopped server), never as success.
"""
import os
import pwd
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import braidfs
from test_postgres import _children_of, _clear_stale_pidfile

ROUNDS = int(os.environ.get("BRAIDFS_DB_CRASH_ROUNDS", "10"))
PGBIN = os.environ.get("BRAIDFS_PGBIN", "/usr/lib/postgresql/15/bin")
ACCOUNTS = 100
THREADS = 4


def _run(argv, user=None, timeout=300, check=True, env=None):
    if user:
        pw = pwd.getpwnam(user)
        argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups",
                "--"] + argv
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/",
                       env=env or {"PATH": f"{PGBIN}:/usr/sbin:/usr/bin:/bin", "HOME": "/tmp",
                                   "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"})
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> exit {p.returncode}\n{p.stdout[-2000:]}\n"
                             f"{p.stderr[-3000:]}")
    return p


def _wait_gone(pids, timeout=30):
    """Wait until every pid is gone or a zombie (this sandbox's init reaps late)."""
    end = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < end:
            try:
                state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
            except OSError:
                break
            if state == "Z":
                break
            time.sleep(0.05)


def _descendants(pid):
    """pid and every process below it."""
    out = [pid]
    for kid in _children_of(pid):
        out += _descendants(kid)
    return out


class Recorder:
    """THREADS clients running transactions; committed holds the ids whose COMMIT returned."""

    def __init__(self, db, round_no):
        self.db, self.round = db, round_no
        self.committed = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors = []
        self.threads = [threading.Thread(target=self.run, args=(t,), daemon=True)
                        for t in range(THREADS)]

    def run(self, t):
        rng = random.Random(self.round * 1000 + t)
        seq = 0
        try:
            conn = self.db.connect()
        except Exception as e:  # the server died before this client got in
            self.errors.append(repr(e))
            return
        while not self.stop.is_set():
            seq += 1
            tid = (self.round * 100 + t) * 10_000_000 + seq
            a, b = rng.randrange(ACCOUNTS), rng.randrange(ACCOUNTS)
            amount = rng.randrange(1, 1000)
            try:
                self.db.transfer(conn, tid, a, b, amount)
            except Exception as e:  # the kill: the outcome of this one is unknown
                self.errors.append(repr(e))
                return
            with self.lock:
                self.committed.append(tid)

    def start(self):
        for th in self.threads:
            th.start()

    def finish(self):
        self.stop.set()
        for th in self.threads:
            th.join(timeout=60)


class Postgres:
    name = "postgresql"

    def __init__(self, volume):
        self.volume = volume
        self.data = volume.path("pgdata")
        self.sock = tempfile.mkdtemp(prefix="braidfs-dbc-pg.")
        shutil.chown(self.sock, "postgres", "postgres")
        self.port = str(random.randint(20000, 60000))
        self.log = os.path.join(self.sock, "log")
        opts = (f"-c listen_addresses='' -k {self.sock} -p {self.port} -c fsync=on "
                "-c synchronous_commit=on -c full_page_writes=on -c max_connections=20")
        self.ctl = [f"{PGBIN}/pg_ctl", "-D", self.data, "-l", self.log, "-o", opts, "-w",
                    "-t", "180"]

    def available(self):
        try:
            pwd.getpwnam("postgres")
            import psycopg2  # noqa: F401
        except (KeyError, ImportError):
            return False
        return os.path.exists(f"{PGBIN}/postgres")

    def init(self):
        os.mkdir(self.data, 0o700)
        shutil.chown(self.data, "postgres", "postgres")
        _run([f"{PGBIN}/initdb", "-D", self.data, "--auth=trust", "-E", "UTF8",
              "--data-checksums"], user="postgres", timeout=600)
        self.start()
        c = self.connect()
        cur = c.cursor()
        cur.execute("create table accounts (id int primary key, balance bigint not null)")
        cur.execute("insert into accounts select g, 0 from generate_series(0, %s) g",
                    (ACCOUNTS - 1,))
        cur.execute("create table ledger (id bigint primary key, src int, dst int, "
                    "amount int, pad text)")
        c.commit()
        c.close()

    def connect(self):
        import psycopg2
        return psycopg2.connect(host=self.sock, port=self.port, user="postgres",
                                dbname="postgres", connect_timeout=10)

    def transfer(self, conn, tid, a, b, amount):
        cur = conn.cursor()
        cur.execute("insert into ledger values (%s, %s, %s, %s, repeat('x', 200))",
                    (tid, a, b, amount))
        cur.execute("update accounts set balance = balance - %s where id = %s", (amount, a))
        cur.execute("update accounts set balance = balance + %s where id = %s", (amount, b))
        conn.commit()

    def check(self, committed):
        c = self.connect()
        cur = c.cursor()
        cur.execute("select id from ledger")
        present = {r[0] for r in cur.fetchall()}
        cur.execute("select sum(balance), count(*) from accounts")
        total, n = cur.fetchone()
        c.close()
        return present, int(total), n

    def start(self):
        pidf = os.path.join(self.data, "postmaster.pid")
        lockf = os.path.join(self.sock, f".s.PGSQL.{self.port}.lock")
        for f in (lockf,):
            if os.path.exists(f):
                os.unlink(f)  # the socket lock lives on local disk, not on braidfs
        try:
            _run(self.ctl + ["start"], user="postgres", timeout=300)
        except AssertionError as e:
            tail = open(self.log).read()[-3000:] if os.path.exists(self.log) else ""
            raise AssertionError(f"{e}\n--- postgres log ---\n{tail}") from None
        assert os.path.exists(pidf)

    def server_pids(self):
        try:
            pm = int(open(os.path.join(self.sock, f".s.PGSQL.{self.port}.lock")).readline())
        except (OSError, ValueError):
            return []
        return _descendants(pm)

    def after_kill(self):
        _clear_stale_pidfile(self.data)

    def stop(self, mode="fast"):
        _run(self.ctl + ["stop", "-m", mode], user="postgres", check=False)

    def cleanup(self):
        for pid in self.server_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.sock, ignore_errors=True)


class MariaDB:
    name = "mariadb"

    def __init__(self, volume):
        self.volume = volume
        self.data = volume.path("mysql")
        self.run_dir = tempfile.mkdtemp(prefix="braidfs-dbc-my.")
        shutil.chown(self.run_dir, "mysql", "mysql")
        self.sock = os.path.join(self.run_dir, "mysqld.sock")
        self.log = os.path.join(self.run_dir, "error.log")
        self.proc = None

    def available(self):
        try:
            pwd.getpwnam("mysql")
            import pymysql  # noqa: F401
        except (KeyError, ImportError):
            return False
        return shutil.which("mariadbd") or os.path.exists("/usr/sbin/mariadbd")

    def init(self):
        os.mkdir(self.data, 0o750)
        shutil.chown(self.data, "mysql", "mysql")
        _run(["mariadb-install-db", "--no-defaults", f"--datadir={self.data}", "--user=mysql",
              "--auth-root-authentication-method=normal", "--skip-test-db"], timeout=600)
        self.start()
        c = self.connect()
        cur = c.cursor()
        cur.execute("create database bank")
        cur.execute("create table bank.accounts (id int primary key, balance bigint not null) "
                    "engine=InnoDB")
        cur.execute("use bank")
        cur.execute("insert into accounts select seq, 0 from seq_0_to_%d" % (ACCOUNTS - 1))
        cur.execute("create table bank.ledger (id bigint primary key, src int, dst int, "
                    "amount int, pad text) engine=InnoDB")
        c.commit()
        c.close()

    def connect(self):
        import pymysql
        return pymysql.connect(unix_socket=self.sock, user="root", autocommit=False,
                               connect_timeout=10, read_timeout=60, write_timeout=60)

    def transfer(self, conn, tid, a, b, amount):
        cur = conn.cursor()
        cur.execute("insert into bank.ledger values (%s, %s, %s, %s, repeat('x', 200))",
                    (tid, a, b, amount))
        cur.execute("update bank.accounts set balance = balance - %s where id = %s", (amount, a))
        cur.execute("update bank.accounts set balance = balance + %s where id = %s", (amount, b))
        conn.commit()

    def check(self, committed):
        c = self.connect()
        cur = c.cursor()
        cur.execute("select id from bank.ledger")
        present = {r[0] for r in cur.fetchall()}
        cur.execute("select sum(balance), count(*) from bank.accounts")
        total, n = cur.fetchone()
        c.close()
        return present, int(total), n

    def start(self):
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        self.proc = subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={self.data}", "--user=mysql",
             f"--socket={self.sock}", "--skip-networking", f"--log-error={self.log}",
             f"--pid-file={self.run_dir}/mysqld.pid", "--innodb-flush-log-at-trx-commit=1",
             "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=32M",
             "--innodb-doublewrite=1", "--skip-log-bin"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
        end = time.monotonic() + 180
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                break
            if os.path.exists(self.sock):
                try:
                    self.connect().close()
                    return
                except Exception:
                    pass
            time.sleep(0.2)
        tail = open(self.log).read()[-3000:] if os.path.exists(self.log) else ""
        raise AssertionError(f"mariadbd did not start (exit {self.proc.poll()})\n"
                             f"--- mariadb log ---\n{tail}")

    def server_pids(self):
        return [self.proc.pid] if self.proc and self.proc.poll() is None else []

    def after_kill(self):
        if self.proc:
            self.proc.wait(timeout=30)

    def stop(self, mode="fast"):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _crash_rounds(volume, db):
    if not db.available():
        pytest.skip(f"{db.name} or its Python client is not installed")
    os.chmod(volume.mnt, 0o755)
    seen = set()
    try:
        db.init()
        for rnd in range(ROUNDS):
            mount_too = rnd % 3 != 2
            rec = Recorder(db, rnd)
            rec.start()
            time.sleep(random.uniform(1.5, 4.0))
            pids = db.server_pids()
            assert pids, f"round {rnd}: {db.name} is not running"
            if mount_too:
                volume.kill9()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _wait_gone(pids)
            rec.finish()
            assert rec.committed, f"round {rnd}: no transaction committed before the kill " \
                                  f"({rec.errors[:3]})"
            if mount_too:
                r = braidfs("umount", volume.mnt, timeout=120)
                assert r.returncode == 0, f"umount of the dead mount: {r.stderr}"
                volume.mount()
            db.after_kill()  # on the new mount: the pid file lives there
            db.start()  # crash recovery
            present, total, n = db.check(rec.committed)
            seen |= set(rec.committed)
            missing = seen - present
            assert not missing, (f"round {rnd} ({'mount and ' if mount_too else ''}{db.name} "
                                 f"killed): {len(missing)} of {len(seen)} committed "
                                 f"transactions lost, e.g. {sorted(missing)[:5]}")
            assert n == ACCOUNTS and total == 0, \
                f"round {rnd}: the books do not balance (sum {total}, {n} accounts)"
        db.stop()
        subprocess.run(["sync"])
    finally:
        db.cleanup()
    print(f"{db.name}: {ROUNDS} rounds, {len(seen)} committed transactions, none lost")


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_postgres_kill9_rounds(volume):
    _crash_rounds(volume, Postgres(volume))


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_mariadb_kill9_rounds(volume):
    _crash_rounds(volume, MariaDB(volume))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_postgres_sees_io_errors(make_volume):
    """Every replica starts failing writes and syncs: the database must see it (a failed
    COMMIT, or a server that stops), never report a transaction committed that is not."""
    v = make_volume(targets=("faulty", "faulty"))
    db = Postgres(v)
    if not db.available():
        pytest.skip("postgresql or psycopg2 missing")
    os.chmod(v.mnt, 0o755)
    v.expect_unclean = True
    try:
        db.init()
        c = db.connect()
        db.transfer(c, 1, 1, 2, 5)
        for d in v.target_dirs:
            with open(os.path.join(d, "braidfs-fault.tmp"), "w") as f:
                f.write("write=EIO\nsync=EIO\n")
            os.rename(os.path.join(d, "braidfs-fault.tmp"), os.path.join(d, "braidfs-fault"))
        time.sleep(0.5)  # the fault file is polled every 100 ms
        failed = None
        for tid in range(2, 200):
            try:
                db.transfer(c, tid, 1, 2, 5)
            except Exception as e:
                failed = e
                break
        assert failed is not None, "199 commits succeeded on storage that fails every write"
    finally:
        db.cleanup()
        for d in v.target_dirs:
            try:
                os.unlink(os.path.join(d, "braidfs-fault"))
            except OSError:
                pass
