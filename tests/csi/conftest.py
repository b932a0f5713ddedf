"""Fixtures for the braidfs-csi tests: Python stubs generated at test time from csi/proto,
a formatted braidfs file system per test, and a running plugin on a unix socket.

Run as root with Debian's Python: /usr/bin/python3 -m pytest tests/csi
Env: BRAIDFS_BIN, BRAIDFS_CSI_BIN (binaries; default build/...), BRAIDFS_TEST_TMP.
Every process and mount a test started is gone when it ends (plugin SIGKILLed, bind
mounts and base mounts unmounted, mount daemons killed)."""

import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PROTO = os.path.join(REPO, "csi", "proto")


def _bin(env, *rel):
    p = os.environ.get(env)
    return os.path.abspath(p) if p else os.path.join(REPO, "build", *rel)


BRAIDFS = _bin("BRAIDFS_BIN", "tools", "braidfs")
CSI_BIN = _bin("BRAIDFS_CSI_BIN", "csi", "braidfs-csi")

try:
    import grpc  # noqa: F401
    HAVE_GRPC = True
except ImportError:
    HAVE_GRPC = False


@pytest.fixture(scope="session")
def pb():
    """(csi_pb2, csi_pb2_grpc) generated from csi/proto/csi.proto into a temp dir."""
    if not HAVE_GRPC:
        pytest.skip("python3-grpcio is not installed")
    try:
        from grpc_tools import protoc
    except ImportError:
        pytest.skip("python3-grpc-tools is not installed")
    out = tempfile.mkdtemp(prefix="braidfs-csi-stubs-")
    # grpc_tools brings protobuf's own google/protobuf/wrappers.proto; ours is the same.
    inc = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{PROTO}", f"-I{inc}", f"--python_out={out}",
                      f"--grpc_python_out={out}", os.path.join(PROTO, "csi.proto")])
    assert rc == 0, "grpc_tools.protoc failed on csi/proto/csi.proto"
    sys.path.insert(0, out)
    try:
        yield importlib.import_module("csi_pb2"), importlib.import_module("csi_pb2_grpc")
    finally:
        sys.path.remove(out)
        shutil.rmtree(out, ignore_errors=True)


def mounts_under(base):
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == base or mp.startswith(base + "/"):
                out.append(mp)
    return out


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_gone(pid, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def fs_lock_holder(db):
    """(pid, mount point) that the lock file of the SQLite file system `db` names, as its
    writer saw them; (None, None) when there is none (pid None: no pid in it)."""
    try:
        with open(db + ".lock") as f:
            return int(f.readline().strip() or 0) or None, f.readline().strip()
    except (OSError, ValueError):
        return None, None


def fs_mount_daemon(db, meta):
    """(pid, mount point) of the mount process of the SQLite file system `db` (URL `meta`)
    that its lock file names; (None, None) when there is none. The lock holds the pid as its
    writer saw it: in another PID namespace that number is someone else's here, so only a live
    braidfs mount of this file system counts."""
    pid, mp = fs_lock_holder(db)
    if not pid:
        return None, mp
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return None, mp
    if meta.encode() in argv and b"mount" in argv and pid_alive(pid):
        return pid, mp
    return None, mp


def end_process(pid):
    """SIGTERM, then SIGKILL after 10 s."""
    os.kill(pid, signal.SIGTERM)
    if not wait_gone(pid, 10):
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid, 10)


def stop_fs_mount(db, meta):
    """End the mount process of the SQLite file system `db` (URL `meta`): unmount its mount
    point, then end that process."""
    pid, mp = fs_mount_daemon(db, meta)
    if mp:
        subprocess.run(["umount", "-l", mp], capture_output=True)
    if pid:
        end_process(pid)


class Plugin:
    """One braidfs file system and one braidfs-csi serving it, in its own directory."""

    def __init__(self, base, pb):
        self.base = base
        self.pb, self.pbg = pb
        self.db = os.path.join(base, "meta.db")
        self.meta = "sqlite://" + self.db
        self.state = os.path.join(base, "state")
        self.sock = os.path.join(base, "sock", "csi.sock")
        self.log = os.path.join(base, "csi.log")
        self.proc = None
        self.channel = None
        self.extra_fs = []  # (db, META_URL) of add_fs()
        t = []
        for i in range(2):
            d = os.path.join(base, f"t{i}")
            os.mkdir(d)
            t.append("dir:" + d)
        subprocess.run([BRAIDFS, "format", "--replicas", "2", self.meta, "csi"] + t,
                       check=True, capture_output=True)

    def add_fs(self, *extra):
        """Format a second file system (one target, one replica) and restart the plugin
        serving both (`--meta` it as the second one, then extra). Returns its META_URL;
        cleanup() ends its mount process."""
        db = os.path.join(self.base, f"meta{len(self.extra_fs) + 2}.db")
        t = os.path.join(self.base, f"t-{len(self.extra_fs) + 2}")
        os.mkdir(t)
        meta = "sqlite://" + db
        subprocess.run([BRAIDFS, "format", "--replicas", "1", meta, "csi2", "dir:" + t],
                       check=True, capture_output=True)
        self.extra_fs.append((db, meta))
        self.stop()
        self.start("--meta", meta, *extra)
        return meta

    def argv(self, *extra):
        return [CSI_BIN, "--endpoint", "unix://" + self.sock, "--node-id", "node-1",
                "--meta", self.meta, "--state-dir", self.state, "--braidfs", BRAIDFS,
                "--log", self.log] + list(extra)

    def start(self, *extra, prefix=()):
        import grpc
        self.proc = subprocess.Popen(list(prefix) + self.argv(*extra), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        end = time.time() + 20
        while time.time() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"braidfs-csi exited {self.proc.returncode}: "
                                     f"{self.proc.stdout.read().decode()}")
            if os.path.exists(self.sock):
                break
            time.sleep(0.05)
        self.channel = grpc.insecure_channel("unix://" + self.sock)
        grpc.channel_ready_future(self.channel).result(timeout=20)
        self.identity = self.pbg.IdentityStub(self.channel)
        self.controller = self.pbg.ControllerStub(self.channel)
        self.node = self.pbg.NodeStub(self.channel)
        return self

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=20)
        if self.channel:
            self.channel.close()
            self.channel = None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.channel:
            self.channel.close()
            self.channel = None

    def mount_daemon_pid(self):
        """Pid that the file system's lock file names (None: no mount)."""
        return fs_lock_holder(self.db)[0]

    def log_tail(self, n=20):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    # message helpers
    def cap(self, mode=None, block=False):
        VC = self.pb.VolumeCapability
        mode = mode or VC.AccessMode.SINGLE_NODE_WRITER
        if block:
            return VC(block=VC.BlockVolume(), access_mode=VC.AccessMode(mode=mode))
        return VC(mount=VC.MountVolume(), access_mode=VC.AccessMode(mode=mode))

    def create(self, name, size=64 << 20, **kw):
        req = self.pb.CreateVolumeRequest(
            name=name, capacity_range=self.pb.CapacityRange(required_bytes=size),
            volume_capabilities=[self.cap()], **kw)
        return self.controller.CreateVolume(req, timeout=60).volume

    def stage(self, vid, staging):
        return self.node.NodeStageVolume(self.pb.NodeStageVolumeRequest(
            volume_id=vid, staging_target_path=staging, volume_capability=self.cap()),
            timeout=60)

    def publish(self, vid, staging, target, readonly=False):
        return self.node.NodePublishVolume(self.pb.NodePublishVolumeRequest(
            volume_id=vid, staging_target_path=staging, target_path=target,
            volume_capability=self.cap(), readonly=readonly), timeout=60)

    def unpublish(self, vid, target):
        return self.node.NodeUnpublishVolume(self.pb.NodeUnpublishVolumeRequest(
            volume_id=vid, target_path=target), timeout=60)

    def unstage(self, vid, staging):
        return self.node.NodeUnstageVolume(self.pb.NodeUnstageVolumeRequest(
            volume_id=vid, staging_target_path=staging), timeout=60)

    def cleanup(self):
        self.stop()
        for db, meta in self.extra_fs:
            stop_fs_mount(db, meta)
        for mp in sorted(mounts_under(self.base), key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True)
        stop_fs_mount(self.db, self.meta)
        left = mounts_under(self.base)
        if not left:
            shutil.rmtree(self.base, ignore_errors=True)
        return left


def running_plugin(pb, label):
    """A started Plugin in a directory of its own; everything it started is gone after."""
    if os.geteuid() != 0:
        pytest.skip("needs root (mounts)")
    if not os.access(CSI_BIN, os.X_OK):
        pytest.skip(f"braidfs-csi not built ({CSI_BIN}); build with -Dcsi=enabled")
    root = os.environ.get("BRAIDFS_TEST_TMP", "/tmp")
    name = "".join(ch if ch.isalnum() else "_" for ch in label)[:40]
    base = tempfile.mkdtemp(prefix=f"braidfs-csi-{name}.", dir=root)
    p = Plugin(base, pb)
    try:
        yield p.start()
    finally:
        tail = p.log_tail()
        left = p.cleanup()
        assert not left, f"could not unmount {left}\n{tail}"


@pytest.fixture
def plugin(pb, request):
    yield from running_plugin(pb, request.node.name)


def code_of(fn, *args, **kw):
    """Call a stub method; return the grpc.StatusCode it failed with (or OK)."""
    import grpc
    try:
        fn(*args, **kw)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK
