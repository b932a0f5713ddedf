"""Mount survival (CSI-3, CSI-4): kill -9 of the plugin while a process writes into a
published volume (the writer never sees an error; the plugin restarts; unpublish and
unstage still work), and repair of a mount whose braidfs process died."""

import os
import subprocess
import time

import pytest

from conftest import mounts_under, pid_alive, wait_gone

MiB = 1 << 20
ROUNDS = int(os.environ.get("BRAIDFS_CSI_KILL_ROUNDS", "3"))

WRITER = r"""
import os, sys, time
path, stop, report = sys.argv[1], sys.argv[2], sys.argv[3]
n = 0; err = ""
try:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    block = b"w" * 4096
    while not os.path.exists(stop):
        n += os.write(fd, block)
        if n % (64 * 4096) == 0:
            os.fsync(fd)
        time.sleep(0.0005)
    os.fsync(fd); os.close(fd)
except OSError as e:
    err = f"{e.errno} {e.strerror}"
with open(report, "w") as f:
    f.write(f"{n} {err}")
"""


def setup_published(plugin, name):
    v = plugin.create(name, 256 * MiB)
    staging = os.path.join(plugin.base, "kubelet", "staging")
    target = os.path.join(plugin.base, "kubelet", "pod", "mount")
    os.makedirs(os.path.dirname(target))
    plugin.stage(v.volume_id, staging)
    plugin.publish(v.volume_id, staging, target)
    return v, staging, target


def test_kill9_plugin_while_writing(plugin):
    v, staging, target = setup_published(plugin, "pvc-kill")
    stop = os.path.join(plugin.base, "stop")
    report = os.path.join(plugin.base, "report")
    w = subprocess.Popen(["/usr/bin/python3", "-c", WRITER, os.path.join(target, "log"), stop,
                          report])
    daemon = plugin.mount_daemon_pid()
    restart_ms = []
    try:
        for _ in range(ROUNDS):
            time.sleep(0.3)
            plugin.kill9()
            assert w.poll() is None, "the writer stopped when the plugin died"
            t0 = time.monotonic()
            plugin.start()
            assert plugin.identity.Probe(plugin.pb.ProbeRequest()).ready.value
            restart_ms.append((time.monotonic() - t0) * 1000)
            # the restarted plugin sees the volume healthy
            s = plugin.node.NodeGetVolumeStats(plugin.pb.NodeGetVolumeStatsRequest(
                volume_id=v.volume_id, volume_path=target))
            assert not s.volume_condition.abnormal
        time.sleep(0.3)
    finally:
        open(stop, "w").close()
        w.wait(timeout=60)
    n, _, err = open(report).read().partition(" ")
    assert err == "", f"the writer saw an error: {err}"
    assert int(n) > 0 and os.path.getsize(os.path.join(target, "log")) == int(n)
    assert plugin.mount_daemon_pid() == daemon and pid_alive(daemon), \
        "the braidfs mount process changed or died with the plugin"
    print(f"\nplugin restart to ready: {', '.join(f'{x:.0f}' for x in restart_ms)} ms; "
          f"writer wrote {int(n) // 1024} KiB across {ROUNDS} kill -9 rounds")
    plugin.unpublish(v.volume_id, target)
    plugin.unstage(v.volume_id, staging)
    assert not os.path.exists(target)
    assert not [m for m in mounts_under(plugin.base) if "kubelet" in m]


def test_dead_mount_repaired_by_publish(plugin):
    v, staging, target = setup_published(plugin, "pvc-dead")
    with open(os.path.join(target, "before"), "wb") as f:
        f.write(b"b" * 5000)
        os.fsync(f.fileno())
    daemon = plugin.mount_daemon_pid()
    os.kill(daemon, 9)
    assert wait_gone(daemon)
    with pytest.raises(OSError):
        os.statvfs(target)  # ENOTCONN: the transport endpoint is gone
    s = plugin.node.NodeGetVolumeStats(plugin.pb.NodeGetVolumeStatsRequest(
        volume_id=v.volume_id, volume_path=target))
    assert s.volume_condition.abnormal
    t0 = time.monotonic()
    plugin.publish(v.volume_id, staging, target)  # CSI-4: base, staging, target again
    repair_ms = (time.monotonic() - t0) * 1000
    assert plugin.mount_daemon_pid() not in (None, daemon)
    assert os.path.getsize(os.path.join(target, "before")) == 5000
    with open(os.path.join(target, "after"), "wb") as f:
        f.write(b"a")
    st = os.statvfs(staging)
    assert st.f_blocks * st.f_frsize == 256 * MiB
    print(f"\nrepair of a dead mount by NodePublishVolume: {repair_ms:.0f} ms")
    plugin.unpublish(v.volume_id, target)
    plugin.unstage(v.volume_id, staging)


def test_dead_mount_repaired_by_stage(plugin):
    v, staging, target = setup_published(plugin, "pvc-dead2")
    plugin.unpublish(v.volume_id, target)
    daemon = plugin.mount_daemon_pid()
    os.kill(daemon, 9)
    assert wait_gone(daemon)
    plugin.stage(v.volume_id, staging)
    os.listdir(staging)
    plugin.publish(v.volume_id, staging, target)
    with open(os.path.join(target, "x"), "wb") as f:
        f.write(b"x")
    plugin.unpublish(v.volume_id, target)
    plugin.unstage(v.volume_id, staging)


def _procs_with(word):
    """Host pids whose command line contains word, with their state and parent."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if word.encode() in argv and b"mount" in argv:
            out.append((int(d), fields[0], int(fields[1])))
    return out


def test_pid1_reaps_orphaned_mount_processes(plugin):
    """As PID 1 of a container (here: of a new PID namespace) the plugin inherits the mount
    processes `braidfs mount` leaves behind; one that ends must not stay a zombie."""
    plugin.stop()
    plugin.start(prefix=["unshare", "--pid", "--fork", "--kill-child=SIGTERM", "--"])
    plugin.create("pvc-pid1", 4 * MiB)
    daemons = _procs_with(plugin.meta)
    assert len(daemons) == 1, daemons
    pid, state, ppid = daemons[0]
    with open(f"/proc/{ppid}/cmdline", "rb") as f:
        assert b"braidfs-csi" in f.read(), "the mount process is not the plugin's child"
    os.kill(pid, 9)
    end = time.time() + 10
    while time.time() < end and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}"), "the ended mount process stayed a zombie"
    # and the plugin still serves (the next call repairs the dead mount: CSI-4)
    v = plugin.create("pvc-pid1b", 4 * MiB)
    assert v.capacity_bytes == 4 * MiB
    # unshare ignores SIGTERM while it waits: stop the plugin itself (its namespace, and the
    # mount process in it, go with it)
    os.kill(ppid, 15)
    plugin.proc.wait(timeout=20)
