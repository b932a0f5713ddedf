"""Volumes with a layout of their own (csi.h, LAYOUT VOLUMES): a StorageClass asking for a
replica count or consistency other than its file system's gets a braidfs file system per
volume under --layout-dir, formatted with that layout, for real: chunks on every layout
dir, the layout as `braidfs status` shows it, and everything gone after DeleteVolume."""

import os
import subprocess

import grpc
import pytest

from conftest import BRAIDFS, code_of, stop_fs_mount

C = grpc.StatusCode
MiB = 1 << 20


@pytest.fixture
def lplugin(plugin):
    """The plugin (file system: 2 replicas, strong) with three layout dirs."""
    dirs = []
    for i in range(3):
        d = os.path.join(plugin.base, f"layout{i}")
        os.mkdir(d)
        dirs.append(d)
    plugin.stop()
    extra = []
    for d in dirs:
        extra += ["--layout-dir", d]
    plugin.start(*extra)
    plugin.layout_dirs = dirs
    plugin.layout_args = extra
    try:
        yield plugin
    finally:
        _stop_layout_mounts(plugin)


def _stop_layout_mounts(plugin):
    """The mount processes of layout file systems: unmount, then end them by pid."""
    plugin.stop()
    d0 = plugin.layout_dirs[0]
    for name in os.listdir(d0):
        if name.endswith(".db"):
            db = os.path.join(d0, name)
            stop_fs_mount(db, "sqlite://" + db)


def status(meta):
    return subprocess.run([BRAIDFS, "status", meta], capture_output=True, text=True,
                          timeout=60).stdout


def files_under(d):
    return sum(len(fs) for _, _, fs in os.walk(d))


def test_layout_volume_lifecycle(lplugin):
    p, pb = lplugin, lplugin.pb
    d0, d1, d2 = p.layout_dirs
    v = p.create("pvc-r3", 16 * MiB, parameters={"replicas": "3"})
    assert v.volume_id == "pvc-r3@layout"
    meta = f"sqlite://{d0}/pvc-r3.db"
    assert dict(v.volume_context) == {"metaURL": meta, "path": "/volumes/pvc-r3"}
    assert "3 replica(s), strong consistency" in status(meta)
    # CSI-1: the same request again is the same volume; another layout for it is a conflict
    assert p.create("pvc-r3", 16 * MiB, parameters={"replicas": "3"}) == v
    assert code_of(p.create, "pvc-r3", 16 * MiB,
                   parameters={"replicas": "3", "consistency": "weak"}) == C.ALREADY_EXISTS
    # a name is one volume: not also one without a layout of its own
    assert code_of(p.create, "pvc-r3", 16 * MiB) == C.ALREADY_EXISTS
    plain = p.create("pvc-plain", MiB)
    assert code_of(p.create, "pvc-plain", MiB, parameters={"replicas": "3"}) == \
        C.ALREADY_EXISTS
    # stage, publish, write: every chunk on all three layout dirs
    staging = os.path.join(p.base, "k", "staging")
    target = os.path.join(p.base, "k", "pod", "mount")
    os.makedirs(os.path.dirname(target))
    p.stage(v.volume_id, staging)
    p.publish(v.volume_id, staging, target)
    data = os.urandom(3 * MiB)
    with open(os.path.join(target, "f"), "wb") as f:
        f.write(data)
        os.fsync(f.fileno())
    for d in (d0, d1, d2):
        assert files_under(os.path.join(d, "pvc-r3")) >= 1, d
    assert os.statvfs(target).f_blocks * os.statvfs(target).f_frsize == 16 * MiB
    # expansion, stats, listing work as for any volume
    r = p.controller.ControllerExpandVolume(pb.ControllerExpandVolumeRequest(
        volume_id=v.volume_id, capacity_range=pb.CapacityRange(required_bytes=32 * MiB)))
    assert r.capacity_bytes == 32 * MiB
    st = p.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(
        volume_id=v.volume_id, volume_path=target))
    assert {u.unit: u.total for u in st.usage}[pb.VolumeUsage.BYTES] == 32 * MiB
    ids = [e.volume.volume_id for e in p.controller.ListVolumes(pb.ListVolumesRequest()).entries]
    assert ids == ["pvc-plain", "pvc-r3@layout"]
    page = p.controller.ListVolumes(pb.ListVolumesRequest(max_entries=1))
    rest = p.controller.ListVolumes(pb.ListVolumesRequest(starting_token=page.next_token))
    assert [e.volume.volume_id for e in rest.entries] == ["pvc-r3@layout"]
    assert rest.entries[0].volume.capacity_bytes == 32 * MiB
    # delete while staged: refused, nothing lost
    assert code_of(p.controller.DeleteVolume,
                   pb.DeleteVolumeRequest(volume_id=v.volume_id)) == C.FAILED_PRECONDITION
    with open(os.path.join(target, "f"), "rb") as f:
        assert f.read() == data
    p.unpublish(v.volume_id, target)
    p.unstage(v.volume_id, staging)
    # the data survives a restage; then delete removes the whole file system
    p.stage(v.volume_id, staging)
    with open(os.path.join(staging, "f"), "rb") as f:
        assert f.read() == data
    p.unstage(v.volume_id, staging)
    p.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=v.volume_id))
    for d in (d0, d1, d2):
        assert os.listdir(d) == [], d
    p.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=v.volume_id))  # CSI-1
    assert code_of(p.controller.ValidateVolumeCapabilities, pb.ValidateVolumeCapabilitiesRequest(
        volume_id=v.volume_id, volume_capabilities=[p.cap()])) == C.NOT_FOUND
    ids = [e.volume.volume_id for e in p.controller.ListVolumes(pb.ListVolumesRequest()).entries]
    assert ids == [plain.volume_id]


def test_layout_weak_and_limits(lplugin):
    p, pb = lplugin, lplugin.pb
    d0 = p.layout_dirs[0]
    # only consistency asked: the replica count stays the file system's (2)
    w = p.create("pvc-weak", 4 * MiB, parameters={"consistency": "weak"})
    assert w.volume_id == "pvc-weak@layout"
    assert "2 replica(s), weak consistency" in status(f"sqlite://{d0}/pvc-weak.db")
    # the file system's own layout needs no file system of its own
    s = p.create("pvc-same", 4 * MiB, parameters={"replicas": "2", "consistency": "strong"})
    assert s.volume_id == "pvc-same"
    # more replicas than layout dirs, or nonsense: refused with the reason
    for params, code in (({"replicas": "4"}, C.INVALID_ARGUMENT),
                         ({"replicas": "0"}, C.INVALID_ARGUMENT),
                         ({"replicas": "x"}, C.INVALID_ARGUMENT),
                         ({"consistency": "eventual"}, C.INVALID_ARGUMENT)):
        assert code_of(p.create, "pvc-bad", MiB, parameters=params) == code, params
    assert not [n for n in os.listdir(d0) if n.startswith("pvc-bad")]
    # GetCapacity for a layout answers the layout dirs' space
    cap = p.controller.GetCapacity(pb.GetCapacityRequest(parameters={"replicas": "3"}))
    st = os.statvfs(d0)
    assert abs(cap.available_capacity - st.f_bavail * st.f_frsize) < 256 * MiB
    # a create that crashed after formatting left a database with no volume in it, or one
    # that stopped before: a retry makes it whole (LAYOUT-1)
    open(os.path.join(d0, "pvc-half.db"), "w").close()
    os.mkdir(os.path.join(p.layout_dirs[1], "pvc-half"))
    open(os.path.join(p.layout_dirs[1], "pvc-half", "junk"), "w").close()
    h = p.create("pvc-half", MiB, parameters={"replicas": "3"})
    assert h.volume_id == "pvc-half@layout"
    assert "3 replica(s)" in status(f"sqlite://{d0}/pvc-half.db")
    # a node plugin without --layout-dir does not know these ids
    p.stop()
    p.start()
    assert code_of(p.stage, w.volume_id, os.path.join(p.base, "st")) == C.NOT_FOUND
    p.stop()
    p.start(*p.layout_args)
    for vid in (w.volume_id, h.volume_id, s.volume_id):
        p.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid))
    assert os.listdir(d0) == []


def test_no_layout_dir_keeps_the_clear_error(plugin):
    pb = plugin.pb
    try:
        plugin.create("pvc-x", MiB, parameters={"replicas": "3"})
    except grpc.RpcError as e:
        assert e.code() == C.INVALID_ARGUMENT
        assert "keeps 2" in e.details() and "--layout-dir" in e.details()
    else:
        raise AssertionError("created a volume with a layout its file system does not have")
    assert code_of(plugin.controller.ValidateVolumeCapabilities,
                   pb.ValidateVolumeCapabilitiesRequest(volume_id="pvc-x@layout",
                                                        volume_capabilities=[plugin.cap()])) \
        == C.NOT_FOUND
