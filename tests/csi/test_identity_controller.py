"""Identity and Controller services against the real socket: answers, idempotency (CSI-1),
argument validation and not-found codes as the CSI spec defines them."""

import os
import stat

import grpc
import pytest

from conftest import code_of

C = grpc.StatusCode
MiB = 1 << 20


def test_identity(plugin):
    pb = plugin.pb
    info = plugin.identity.GetPluginInfo(pb.GetPluginInfoRequest())
    assert info.name == "csi.braidfs.io" and info.vendor_version
    caps = plugin.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest()).capabilities
    services = {c.service.type for c in caps if c.HasField("service")}
    PS = pb.PluginCapability.Service
    assert services == {PS.CONTROLLER_SERVICE, PS.VOLUME_ACCESSIBILITY_CONSTRAINTS}
    exp = [c.volume_expansion.type for c in caps if c.HasField("volume_expansion")]
    assert exp == [pb.PluginCapability.VolumeExpansion.ONLINE]
    assert plugin.identity.Probe(pb.ProbeRequest()).ready.value is True
    ctl = plugin.controller.ControllerGetCapabilities(pb.ControllerGetCapabilitiesRequest())
    R = pb.ControllerServiceCapability.RPC
    assert {c.rpc.type for c in ctl.capabilities} == {R.CREATE_DELETE_VOLUME, R.GET_CAPACITY,
                                                      R.LIST_VOLUMES, R.EXPAND_VOLUME,
                                                      R.SINGLE_NODE_MULTI_WRITER}
    node = plugin.node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest())
    N = pb.NodeServiceCapability.RPC
    assert {c.rpc.type for c in node.capabilities} == {
        N.STAGE_UNSTAGE_VOLUME, N.GET_VOLUME_STATS, N.EXPAND_VOLUME, N.VOLUME_CONDITION,
        N.SINGLE_NODE_MULTI_WRITER}
    ni = plugin.node.NodeGetInfo(pb.NodeGetInfoRequest())
    assert ni.node_id == "node-1"
    assert dict(ni.accessible_topology.segments) == {"topology.braidfs.io/node": "node-1"}


def test_socket_is_root_only_and_stale_socket_replaced(plugin):
    st = os.stat(plugin.sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    # a second plugin on a live socket is refused
    import subprocess
    p = subprocess.run(plugin.argv(), capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "served by another running plugin" in p.stderr
    # after kill -9 the socket file stays behind; a new plugin replaces it
    plugin.kill9()
    assert os.path.exists(plugin.sock)
    plugin.start()
    assert plugin.identity.Probe(plugin.pb.ProbeRequest()).ready.value


def test_create_idempotent_and_conflicting(plugin):
    pb = plugin.pb
    v1 = plugin.create("pvc-a", 10 * MiB)
    assert v1.volume_id == "pvc-a" and v1.capacity_bytes == 10 * MiB
    assert dict(v1.accessible_topology[0].segments) == {"topology.braidfs.io/node": "node-1"}
    v2 = plugin.create("pvc-a", 10 * MiB)
    assert v2 == v1
    # the same name with a capacity the volume does not satisfy
    assert code_of(plugin.create, "pvc-a", 20 * MiB) == C.ALREADY_EXISTS
    # a name that is not a safe file name gets a hashed directory, stably
    odd = plugin.create("my volume/ä", 1 * MiB)
    assert odd.volume_id.startswith("h-") and plugin.create("my volume/ä", 1 * MiB) == odd
    # default capacity when none is asked for: 1 GiB, or the limit when smaller
    req = pb.CreateVolumeRequest(name="pvc-b", volume_capabilities=[plugin.cap()],
                                 capacity_range=pb.CapacityRange(limit_bytes=5 * MiB))
    assert plugin.controller.CreateVolume(req).volume.capacity_bytes == 5 * MiB


def test_create_validation(plugin):
    pb = plugin.pb
    CV = plugin.controller.CreateVolume
    VC = pb.VolumeCapability

    def req(**kw):
        base = dict(name="pvc-x", volume_capabilities=[plugin.cap()])
        base.update(kw)
        return pb.CreateVolumeRequest(**base)

    assert code_of(CV, req(name="")) == C.INVALID_ARGUMENT
    assert code_of(CV, req(volume_capabilities=[])) == C.INVALID_ARGUMENT
    assert code_of(CV, req(volume_capabilities=[plugin.cap(block=True)])) == C.INVALID_ARGUMENT
    assert code_of(CV, req(volume_capabilities=[VC(mount=VC.MountVolume())])) == \
        C.INVALID_ARGUMENT  # no access mode
    assert code_of(CV, req(volume_capabilities=[
        plugin.cap(VC.AccessMode.MULTI_NODE_MULTI_WRITER)])) == C.INVALID_ARGUMENT
    assert code_of(CV, req(capacity_range=pb.CapacityRange(required_bytes=-1))) == \
        C.INVALID_ARGUMENT
    assert code_of(CV, req(capacity_range=pb.CapacityRange(required_bytes=10, limit_bytes=5))) \
        == C.OUT_OF_RANGE
    assert code_of(CV, req(parameters={"frobnicate": "1"})) == C.INVALID_ARGUMENT
    assert code_of(CV, req(parameters={"metaURL": "sqlite:///nope.db"})) == C.INVALID_ARGUMENT
    assert code_of(CV, req(parameters={"replicas": "3"})) == C.INVALID_ARGUMENT
    assert code_of(CV, req(parameters={"consistency": "weak"})) == C.INVALID_ARGUMENT
    assert code_of(CV, req(parameters={"pool": "ssd"})) == C.INVALID_ARGUMENT
    other = pb.Topology(segments={"topology.braidfs.io/node": "node-9"})
    assert code_of(CV, req(accessibility_requirements=pb.TopologyRequirement(
        requisite=[other]))) == C.RESOURCE_EXHAUSTED
    # parameters that match the file system, and k8s' own keys, are accepted
    ok = req(parameters={"replicas": "2", "consistency": "strong", "pool": "default",
                         "metaURL": plugin.meta, "csi.storage.k8s.io/pv/name": "x"},
             accessibility_requirements=pb.TopologyRequirement(requisite=[pb.Topology(
                 segments={"topology.braidfs.io/node": "node-1"})]))
    assert plugin.controller.CreateVolume(ok).volume.volume_id == "pvc-x"
    assert not any(n.startswith(".creating") for n in os.listdir(os.path.join(
        plugin.state, "fs", os.listdir(os.path.join(plugin.state, "fs"))[0], "volumes")))


def test_delete(plugin):
    pb = plugin.pb
    v = plugin.create("pvc-del", 4 * MiB)
    plugin.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=v.volume_id))
    # idempotent: deleting again, or a volume that never was, is OK
    plugin.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=v.volume_id))
    plugin.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id="never-was"))
    plugin.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id="../../etc"))
    assert code_of(plugin.controller.DeleteVolume, pb.DeleteVolumeRequest()) == \
        C.INVALID_ARGUMENT
    # a name deleted can be created again, empty
    v = plugin.create("pvc-del", 4 * MiB)
    assert v.capacity_bytes == 4 * MiB


def test_validate_capabilities(plugin):
    pb = plugin.pb
    VVC = plugin.controller.ValidateVolumeCapabilities
    v = plugin.create("pvc-v", 4 * MiB)
    r = VVC(pb.ValidateVolumeCapabilitiesRequest(volume_id=v.volume_id,
                                                 volume_capabilities=[plugin.cap()]))
    assert len(r.confirmed.volume_capabilities) == 1
    r = VVC(pb.ValidateVolumeCapabilitiesRequest(volume_id=v.volume_id,
                                                 volume_capabilities=[plugin.cap(block=True)]))
    assert not r.HasField("confirmed") and "block" in r.message
    assert code_of(VVC, pb.ValidateVolumeCapabilitiesRequest(
        volume_capabilities=[plugin.cap()])) == C.INVALID_ARGUMENT
    assert code_of(VVC, pb.ValidateVolumeCapabilitiesRequest(volume_id=v.volume_id)) == \
        C.INVALID_ARGUMENT
    assert code_of(VVC, pb.ValidateVolumeCapabilitiesRequest(
        volume_id="no-such", volume_capabilities=[plugin.cap()])) == C.NOT_FOUND


def test_capacity_and_expand(plugin):
    pb = plugin.pb
    cap = plugin.controller.GetCapacity(pb.GetCapacityRequest())
    st = os.statvfs(os.path.dirname(plugin.db))
    assert cap.available_capacity > 0
    assert abs(cap.available_capacity - st.f_bavail * st.f_frsize) < 256 * MiB
    blk = plugin.controller.GetCapacity(pb.GetCapacityRequest(
        volume_capabilities=[plugin.cap(block=True)]))
    assert blk.available_capacity == 0
    v = plugin.create("pvc-e", 4 * MiB)
    X = plugin.controller.ControllerExpandVolume
    r = X(pb.ControllerExpandVolumeRequest(volume_id=v.volume_id,
                                           capacity_range=pb.CapacityRange(required_bytes=8 * MiB)))
    assert r.capacity_bytes == 8 * MiB and not r.node_expansion_required
    # idempotent, and never shrinks
    r = X(pb.ControllerExpandVolumeRequest(volume_id=v.volume_id,
                                           capacity_range=pb.CapacityRange(required_bytes=6 * MiB)))
    assert r.capacity_bytes == 8 * MiB
    assert code_of(X, pb.ControllerExpandVolumeRequest(
        capacity_range=pb.CapacityRange(required_bytes=MiB))) == C.INVALID_ARGUMENT
    assert code_of(X, pb.ControllerExpandVolumeRequest(volume_id=v.volume_id)) == \
        C.INVALID_ARGUMENT
    assert code_of(X, pb.ControllerExpandVolumeRequest(
        volume_id="no-such", capacity_range=pb.CapacityRange(required_bytes=MiB))) == C.NOT_FOUND
    # CreateVolume limited to the old size now conflicts; "at least 4 MiB" is satisfied
    old = pb.CreateVolumeRequest(name="pvc-e", volume_capabilities=[plugin.cap()],
                                 capacity_range=pb.CapacityRange(required_bytes=4 * MiB,
                                                                 limit_bytes=4 * MiB))
    assert code_of(plugin.controller.CreateVolume, old) == C.ALREADY_EXISTS
    assert plugin.create("pvc-e", 4 * MiB).capacity_bytes == 8 * MiB


def test_unknown_method_and_roles(plugin, pb):
    import subprocess
    # a node-only plugin answers controller calls UNIMPLEMENTED
    plugin.stop()
    plugin.start("--node")
    assert code_of(plugin.controller.CreateVolume, pb[0].CreateVolumeRequest(name="x")) == \
        C.UNIMPLEMENTED
    caps = plugin.identity.GetPluginCapabilities(pb[0].GetPluginCapabilitiesRequest())
    assert all(c.service.type != 1 for c in caps.capabilities if c.HasField("service"))
    # usage errors exit 2 with one line
    p = subprocess.run(plugin.argv()[:1] + ["--endpoint", "tcp://x"], capture_output=True,
                       text=True)
    assert p.returncode == 2 and p.stderr.startswith("braidfs-csi: ")
    p = subprocess.run(plugin.argv()[:1] + ["--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "Usage: braidfs-csi" in p.stdout


def test_dot_name_is_not_the_half_made_directory_of_another(plugin):
    """A volume named ".creating-<x>" must not live where CreateVolume(x) builds x (CSI-5):
    a create of x first removes what a crashed create left there."""
    pb = plugin.pb
    dot = plugin.create(".creating-pvc-dot", 4 * MiB)
    assert dot.volume_id.startswith("h-")
    plugin.create("pvc-dot", 4 * MiB)
    r = plugin.controller.ValidateVolumeCapabilities(pb.ValidateVolumeCapabilitiesRequest(
        volume_id=dot.volume_id, volume_capabilities=[plugin.cap()]))
    assert r.HasField("confirmed")


def test_list_volumes_pages_across_file_systems(plugin):
    """ListVolumes walks every --meta file system in order, names sorted; a page of
    max_entries ends with a token that resumes after its last volume, across the boundary
    between two file systems, whatever was created or deleted meanwhile."""
    _list_pages(plugin, plugin.add_fs())


def _list_pages(plugin, meta2):
    pb = plugin.pb
    want = {}
    for name in ("pvc-c", "pvc-a", "pvc-b"):
        want[plugin.create(name, 2 * MiB).volume_id] = 2 * MiB
    for name in ("pvc-y", "pvc-x"):
        v = plugin.create(name, 3 * MiB, parameters={"metaURL": meta2})
        assert v.volume_id == name + "@" + meta2
        want[v.volume_id] = 3 * MiB

    def walk(n):
        got, tok = [], ""
        while True:
            r = plugin.controller.ListVolumes(pb.ListVolumesRequest(max_entries=n,
                                                                    starting_token=tok))
            assert n == 0 or len(r.entries) <= n
            got += [e.volume for e in r.entries]
            tok = r.next_token
            if not tok:
                return got

    for n in (1, 2, 3, 5, 0):
        vols = walk(n)
        assert [v.volume_id for v in vols] == ["pvc-a", "pvc-b", "pvc-c",
                                               "pvc-x@" + meta2, "pvc-y@" + meta2]
        assert {v.volume_id: v.capacity_bytes for v in vols} == want
    v = walk(5)[3]
    assert dict(v.volume_context) == {"metaURL": meta2, "path": "/volumes/pvc-x"}
    assert dict(v.accessible_topology[0].segments) == {"topology.braidfs.io/node": "node-1"}
    # a page ends on the last volume of the first file system; that volume is deleted
    # and one is created before it: the next page neither repeats nor skips
    first = plugin.controller.ListVolumes(pb.ListVolumesRequest(max_entries=3))
    assert [e.volume.volume_id for e in first.entries] == ["pvc-a", "pvc-b", "pvc-c"]
    plugin.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id="pvc-c"))
    plugin.create("pvc-0", MiB)
    rest = plugin.controller.ListVolumes(pb.ListVolumesRequest(starting_token=first.next_token))
    assert [e.volume.volume_id for e in rest.entries] == ["pvc-x@" + meta2, "pvc-y@" + meta2]
    assert not rest.next_token
    C_ = grpc.StatusCode
    LV = plugin.controller.ListVolumes
    for bad in ("invalid-token", "v1:9:pvc-a", "v1:0:../x", "v1:0:", "v1:x:pvc-a"):
        assert code_of(LV, pb.ListVolumesRequest(starting_token=bad)) == C_.ABORTED, bad
    assert code_of(LV, pb.ListVolumesRequest(max_entries=-1)) == C_.INVALID_ARGUMENT
