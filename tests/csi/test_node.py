"""Node service with real mounts: stage, publish, write, unpublish, unstage, paths removed,
read-only publish, quota enforced, expansion visible in statfs, stats, argument codes."""

import errno
import os

import grpc
import pytest

from conftest import code_of, mounts_under

C = grpc.StatusCode
MiB = 1 << 20


def paths(plugin, n=1):
    st = os.path.join(plugin.base, "kubelet", "staging")
    pod = os.path.join(plugin.base, "kubelet", "pods")
    os.makedirs(pod, exist_ok=True)
    return st, [os.path.join(pod, f"p{i}", "mount") for i in range(n)]


def mkparents(targets):
    for t in targets:
        os.makedirs(os.path.dirname(t), exist_ok=True)


def test_stage_publish_write_unpublish_unstage(plugin):
    v = plugin.create("pvc-life", 32 * MiB)
    staging, (t0, t1) = paths(plugin, 2)
    mkparents([t0, t1])
    plugin.stage(v.volume_id, staging)
    plugin.stage(v.volume_id, staging)  # CSI-1
    plugin.publish(v.volume_id, staging, t0)
    plugin.publish(v.volume_id, staging, t0)  # CSI-1
    plugin.publish(v.volume_id, staging, t1, readonly=True)
    with open(os.path.join(t0, "data"), "wb") as f:
        f.write(b"d" * 100_000)
        os.fsync(f.fileno())
    os.mkdir(os.path.join(t0, "dir"))
    with open(os.path.join(t1, "data"), "rb") as f:
        assert f.read() == b"d" * 100_000
    with pytest.raises(OSError) as e:
        open(os.path.join(t1, "nope"), "wb")
    assert e.value.errno == errno.EROFS
    # publishing the same target with the other read-only flag conflicts
    assert code_of(plugin.publish, v.volume_id, staging, t0, readonly=True) == \
        C.ALREADY_EXISTS
    st = os.statvfs(t0)
    assert st.f_blocks * st.f_frsize == 32 * MiB
    stats = plugin.node.NodeGetVolumeStats(plugin.pb.NodeGetVolumeStatsRequest(
        volume_id=v.volume_id, volume_path=t0))
    U = plugin.pb.VolumeUsage
    by = {u.unit: u for u in stats.usage}
    assert by[U.BYTES].total == 32 * MiB and 100_000 <= by[U.BYTES].used < 100_000 + 4096
    assert by[U.INODES].used >= 2 and not stats.volume_condition.abnormal
    for t in (t0, t1):
        plugin.unpublish(v.volume_id, t)
        assert not os.path.exists(t), "target path left behind"
        plugin.unpublish(v.volume_id, t)  # CSI-1
    plugin.unstage(v.volume_id, staging)
    plugin.unstage(v.volume_id, staging)  # CSI-1
    assert not [m for m in mounts_under(plugin.base) if "kubelet" in m]
    # the data is in the volume: stage and publish again, read it
    plugin.stage(v.volume_id, staging)
    plugin.publish(v.volume_id, staging, t0)
    assert os.path.getsize(os.path.join(t0, "data")) == 100_000
    assert sorted(os.listdir(t0)) == ["data", "dir"]
    plugin.unpublish(v.volume_id, t0)
    plugin.unstage(v.volume_id, staging)


def test_quota_enforced_and_expansion_visible(plugin):
    pb = plugin.pb
    v = plugin.create("pvc-q", 8 * MiB)
    staging, (t,) = paths(plugin)
    mkparents([t])
    plugin.stage(v.volume_id, staging)
    plugin.publish(v.volume_id, staging, t)
    written = 0
    with pytest.raises(OSError) as e:
        with open(os.path.join(t, "fill"), "wb") as f:
            while written < 64 * MiB:
                written += f.write(b"q" * MiB)
                f.flush()
    assert e.value.errno == errno.EDQUOT
    assert os.path.getsize(os.path.join(t, "fill")) <= 8 * MiB
    r = plugin.controller.ControllerExpandVolume(pb.ControllerExpandVolumeRequest(
        volume_id=v.volume_id, capacity_range=pb.CapacityRange(required_bytes=16 * MiB)))
    assert r.capacity_bytes == 16 * MiB
    st = os.statvfs(t)  # online: the published volume sees it at once
    assert st.f_blocks * st.f_frsize == 16 * MiB
    with open(os.path.join(t, "more"), "wb") as f:
        f.write(b"m" * (6 * MiB))
    n = plugin.node.NodeExpandVolume(pb.NodeExpandVolumeRequest(
        volume_id=v.volume_id, volume_path=t,
        capacity_range=pb.CapacityRange(required_bytes=16 * MiB)))
    assert n.capacity_bytes == 16 * MiB
    plugin.unpublish(v.volume_id, t)
    plugin.unstage(v.volume_id, staging)


def test_node_argument_codes(plugin):
    pb = plugin.pb
    N = plugin.node
    v = plugin.create("pvc-args", 4 * MiB)
    staging, (t,) = paths(plugin)
    mkparents([t])
    cap = plugin.cap()
    S = pb.NodeStageVolumeRequest
    assert code_of(N.NodeStageVolume, S(staging_target_path=staging, volume_capability=cap)) \
        == C.INVALID_ARGUMENT
    assert code_of(N.NodeStageVolume, S(volume_id=v.volume_id, volume_capability=cap)) == \
        C.INVALID_ARGUMENT
    assert code_of(N.NodeStageVolume, S(volume_id=v.volume_id, staging_target_path=staging)) \
        == C.INVALID_ARGUMENT
    assert code_of(N.NodeStageVolume, S(volume_id=v.volume_id, staging_target_path="rel/p",
                                        volume_capability=cap)) == C.INVALID_ARGUMENT
    assert code_of(N.NodeStageVolume, S(volume_id=v.volume_id, staging_target_path=staging,
                                        volume_capability=plugin.cap(block=True))) == \
        C.INVALID_ARGUMENT
    assert code_of(N.NodeStageVolume, S(volume_id="no-such", staging_target_path=staging,
                                        volume_capability=cap)) == C.NOT_FOUND
    P = pb.NodePublishVolumeRequest
    assert code_of(N.NodePublishVolume, P(staging_target_path=staging, target_path=t,
                                          volume_capability=cap)) == C.INVALID_ARGUMENT
    assert code_of(N.NodePublishVolume, P(volume_id=v.volume_id, staging_target_path=staging,
                                          volume_capability=cap)) == C.INVALID_ARGUMENT
    assert code_of(N.NodePublishVolume, P(volume_id=v.volume_id, staging_target_path=staging,
                                          target_path=t)) == C.INVALID_ARGUMENT
    assert code_of(N.NodePublishVolume, P(volume_id="no-such", staging_target_path=staging,
                                          target_path=t, volume_capability=cap)) == C.NOT_FOUND
    # not staged yet
    assert code_of(plugin.publish, v.volume_id, staging, t) == C.FAILED_PRECONDITION
    assert code_of(N.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(target_path=t)) == \
        C.INVALID_ARGUMENT
    assert code_of(N.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(
        volume_id=v.volume_id)) == C.INVALID_ARGUMENT
    assert code_of(N.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(
        staging_target_path=staging)) == C.INVALID_ARGUMENT
    assert code_of(N.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(
        volume_id=v.volume_id)) == C.INVALID_ARGUMENT
    G = pb.NodeGetVolumeStatsRequest
    assert code_of(N.NodeGetVolumeStats, G(volume_path=t)) == C.INVALID_ARGUMENT
    assert code_of(N.NodeGetVolumeStats, G(volume_id=v.volume_id)) == C.INVALID_ARGUMENT
    assert code_of(N.NodeGetVolumeStats, G(volume_id=v.volume_id, volume_path=t)) == \
        C.NOT_FOUND
    assert code_of(N.NodeExpandVolume, pb.NodeExpandVolumeRequest(
        volume_id=v.volume_id, volume_path=t)) == C.NOT_FOUND
    # a staged volume published elsewhere is not another volume's path
    w = plugin.create("pvc-args2", 4 * MiB)
    plugin.stage(v.volume_id, staging)
    plugin.publish(v.volume_id, staging, t)
    assert code_of(N.NodeGetVolumeStats, G(volume_id=w.volume_id, volume_path=t)) == \
        C.NOT_FOUND
    plugin.unpublish(v.volume_id, t)
    plugin.unstage(v.volume_id, staging)


def test_mount_wrapper(plugin):
    """--mount-wrapper runs `braidfs mount` through the given command (Kubernetes: on the
    host, see docs/kubernetes.md)."""
    wrap = os.path.join(plugin.base, "wrap.sh")
    log = os.path.join(plugin.base, "wrap.log")
    with open(wrap, "w") as f:
        f.write(f'#!/bin/sh\necho "$@" >> {log}\nexec "$@"\n')
    os.chmod(wrap, 0o755)
    plugin.stop()
    plugin.start("--mount-wrapper", f"/bin/sh {wrap}")
    v = plugin.create("pvc-wrap", 4 * MiB)
    words = open(log).read().split()
    assert words[1:3] == ["mount", "-o"] and words[-2] == plugin.meta
    staging, (t,) = paths(plugin)
    mkparents([t])
    plugin.stage(v.volume_id, staging)
    plugin.publish(v.volume_id, staging, t)
    assert os.statvfs(t).f_blocks * 4096 == 4 * MiB
    plugin.unpublish(v.volume_id, t)
    plugin.unstage(v.volume_id, staging)


def test_controller_and_node_plugins_share_the_mount(plugin):
    """The controller pod and the node pod on one node: two plugins, two state dirs, one
    file system. The second one uses the mount the first one made (the SQLite engine allows
    one mount of a file system at a time), found through the file system's mount lock."""
    import subprocess
    import grpc
    v = plugin.create("pvc-shared", 4 * MiB)  # this plugin mounts the file system
    daemon = plugin.mount_daemon_pid()
    sock2 = os.path.join(plugin.base, "sock2", "csi.sock")
    argv = plugin.argv("--node")
    argv[argv.index("--endpoint") + 1] = "unix://" + sock2
    argv[argv.index("--state-dir") + 1] = os.path.join(plugin.base, "state2")
    argv[argv.index("--log") + 1] = os.path.join(plugin.base, "csi2.log")
    p2 = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    ch = None
    try:
        ch = grpc.insecure_channel("unix://" + sock2)
        grpc.channel_ready_future(ch).result(timeout=20)
        node2 = plugin.pbg.NodeStub(ch)
        staging, (t,) = paths(plugin)
        mkparents([t])
        node2.NodeStageVolume(plugin.pb.NodeStageVolumeRequest(
            volume_id=v.volume_id, staging_target_path=staging,
            volume_capability=plugin.cap()), timeout=60)
        node2.NodePublishVolume(plugin.pb.NodePublishVolumeRequest(
            volume_id=v.volume_id, staging_target_path=staging, target_path=t,
            volume_capability=plugin.cap()), timeout=60)
        with open(os.path.join(t, "f"), "wb") as f:
            f.write(b"shared")
        assert plugin.mount_daemon_pid() == daemon  # still the one mount process
        assert not [m for m in mounts_under(os.path.join(plugin.base, "state2"))]
        node2.NodeUnpublishVolume(plugin.pb.NodeUnpublishVolumeRequest(
            volume_id=v.volume_id, target_path=t), timeout=60)
        node2.NodeUnstageVolume(plugin.pb.NodeUnstageVolumeRequest(
            volume_id=v.volume_id, staging_target_path=staging), timeout=60)
    finally:
        if ch:
            ch.close()
        p2.terminate()
        p2.wait(timeout=20)


def test_single_writer_is_published_once(plugin):
    """SINGLE_NODE_SINGLE_WRITER (Kubernetes' ReadWriteOncePod): one target at a time, and
    FAILED_PRECONDITION for a second; SINGLE_NODE_MULTI_WRITER: any number of targets."""
    pb = plugin.pb
    N = plugin.node
    AM = pb.VolumeCapability.AccessMode
    v = plugin.create("pvc-one", 4 * MiB)
    staging, (t0, t1) = paths(plugin, 2)
    mkparents([t0, t1])
    one, multi = plugin.cap(AM.SINGLE_NODE_SINGLE_WRITER), plugin.cap(AM.SINGLE_NODE_MULTI_WRITER)
    N.NodeStageVolume(pb.NodeStageVolumeRequest(
        volume_id=v.volume_id, staging_target_path=staging, volume_capability=one), timeout=60)

    def pub(t, cap):
        return N.NodePublishVolume(pb.NodePublishVolumeRequest(
            volume_id=v.volume_id, staging_target_path=staging, target_path=t,
            volume_capability=cap), timeout=60)

    pub(t0, one)
    pub(t0, one)  # CSI-1: the same target again is not a second writer
    assert code_of(pub, t1, one) == C.FAILED_PRECONDITION
    assert not os.path.ismount(t1)
    plugin.unpublish(v.volume_id, t0)
    pub(t1, one)  # the first one is gone: the writer may move
    plugin.unpublish(v.volume_id, t1)
    pub(t0, multi)
    pub(t1, multi)
    for t in (t0, t1):
        plugin.unpublish(v.volume_id, t)
    plugin.unstage(v.volume_id, staging)


def test_paths_present_or_missing_and_stats_on_staging(plugin):
    """The spec lets a CO make target_path (kubelet does) or leave it to the plugin (what
    csi-sanity does), and makes the staging path itself: every case works. Stats and
    expansion answer on the staging path as on a target path."""
    pb = plugin.pb
    v = plugin.create("pvc-paths", 8 * MiB)
    root = os.path.join(plugin.base, "k")
    staging = os.path.join(root, "staging-missing")  # not made by the "CO"
    t_made = os.path.join(root, "pods", "a", "mount")
    t_missing = os.path.join(root, "pods", "b", "mount")
    os.makedirs(t_made)  # kubelet style: the target exists, empty
    os.makedirs(os.path.dirname(t_missing))  # csi-sanity style: only the parent
    plugin.stage(v.volume_id, staging)
    plugin.publish(v.volume_id, staging, t_made)
    plugin.publish(v.volume_id, staging, t_missing)
    for t in (t_made, t_missing):
        assert os.path.ismount(t)
    with open(os.path.join(t_made, "f"), "wb") as f:
        f.write(b"x" * 65536)
    for path in (staging, t_made, t_missing):
        st = plugin.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(
            volume_id=v.volume_id, volume_path=path), timeout=60)
        by = {u.unit: u for u in st.usage}
        assert by[pb.VolumeUsage.BYTES].total == 8 * MiB, path
        assert by[pb.VolumeUsage.BYTES].used >= 65536, path
        assert not st.volume_condition.abnormal
    n = plugin.node.NodeExpandVolume(pb.NodeExpandVolumeRequest(
        volume_id=v.volume_id, volume_path=staging), timeout=60)
    assert n.capacity_bytes == 8 * MiB
    for t in (t_made, t_missing):
        plugin.unpublish(v.volume_id, t)
        assert not os.path.exists(t)
    # a target left as a plain directory (a publish that died after mkdir): removed when
    # empty, kept with an error when something is in it (nothing is deleted)
    os.makedirs(t_made)
    plugin.unpublish(v.volume_id, t_made)
    assert not os.path.exists(t_made)
    os.makedirs(t_made)
    open(os.path.join(t_made, "keep"), "w").close()
    assert code_of(plugin.unpublish, v.volume_id, t_made) == C.INTERNAL
    assert os.path.exists(os.path.join(t_made, "keep"))
    plugin.unstage(v.volume_id, staging)
    assert os.path.isdir(staging) and not os.path.ismount(staging)


def test_single_writer_counts_only_its_own_file_system(plugin):
    """Two file systems may each have a volume directory of one name (ids pvc-s and
    pvc-s@META2): a SINGLE_NODE_SINGLE_WRITER publish of one is not refused because the
    other is published, and one is not taken for the other at a staging path."""
    pb = plugin.pb
    meta2 = plugin.add_fs()
    one = plugin.cap(pb.VolumeCapability.AccessMode.SINGLE_NODE_SINGLE_WRITER)
    a = plugin.create("pvc-s", 4 * MiB)
    b = plugin.create("pvc-s", 4 * MiB, parameters={"metaURL": meta2})
    assert a.volume_id != b.volume_id
    root = os.path.join(plugin.base, "k")
    for v, n in ((a, "a"), (b, "b")):
        st, tp = os.path.join(root, "st-" + n), os.path.join(root, "pod-" + n, "mount")
        os.makedirs(os.path.dirname(tp))
        plugin.node.NodeStageVolume(pb.NodeStageVolumeRequest(
            volume_id=v.volume_id, staging_target_path=st, volume_capability=one))
        plugin.node.NodePublishVolume(pb.NodePublishVolumeRequest(
            volume_id=v.volume_id, staging_target_path=st, target_path=tp,
            volume_capability=one))
    # nor is one staged where the other is (its directory of the same name)
    assert code_of(plugin.stage, b.volume_id, os.path.join(root, "st-a")) == C.ALREADY_EXISTS
    for v, n in ((a, "a"), (b, "b")):
        plugin.unpublish(v.volume_id, os.path.join(root, "pod-" + n, "mount"))
        plugin.unstage(v.volume_id, os.path.join(root, "st-" + n))
