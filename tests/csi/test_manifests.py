"""Every manifest in deploy/kubernetes parses, and the fields that make the deployment work
agree with each other and with the plugin: driver name, attachRequired false, sidecars,
mount propagation, socket paths, service accounts, StorageClass parameters."""

import glob
import os
import shlex

import pytest

yaml = pytest.importorskip("yaml")

HERE = os.path.dirname(os.path.abspath(__file__))
DEPLOY = os.path.join(os.path.dirname(os.path.dirname(HERE)), "deploy", "kubernetes")
DRIVER = "csi.braidfs.io"


@pytest.fixture(scope="module")
def docs():
    out = {}
    files = sorted(glob.glob(os.path.join(DEPLOY, "*.yaml")))
    assert files, f"no manifests in {DEPLOY}"
    for path in files:
        with open(path) as f:
            for d in yaml.safe_load_all(f):
                if d is None:
                    continue
                assert "apiVersion" in d and "kind" in d, f"{path}: a document without kind"
                if d["kind"] == "Kustomization":
                    continue
                key = (d["kind"], d["metadata"]["name"])
                assert key not in out, f"{key} defined twice"
                out[key] = d
    return out


def containers(workload):
    return {c["name"]: c for c in workload["spec"]["template"]["spec"]["containers"]}


def arg(container, name):
    """Value of --name=value or --name value in a container's args."""
    a = container.get("args", [])
    for i, x in enumerate(a):
        if x.startswith(f"--{name}="):
            return x.split("=", 1)[1]
        if x == f"--{name}" and i + 1 < len(a):
            return a[i + 1]
    return None


def mount_path_of(container, volume):
    for m in container.get("volumeMounts", []):
        if m["name"] == volume:
            return m
    return None


def test_every_file_parses_and_kustomization_lists_them(docs):
    with open(os.path.join(DEPLOY, "kustomization.yaml")) as f:
        k = yaml.safe_load(f)
    for r in k["resources"]:
        assert os.path.exists(os.path.join(DEPLOY, r)), r


def test_csidriver(docs):
    d = docs[("CSIDriver", DRIVER)]["spec"]
    assert d["attachRequired"] is False
    assert d["volumeLifecycleModes"] == ["Persistent"]
    assert d["fsGroupPolicy"] == "File"


@pytest.mark.parametrize("kind,name,sidecars", [
    ("Deployment", "braidfs-csi-controller", {"csi-provisioner", "csi-resizer", "liveness-probe"}),
    ("DaemonSet", "braidfs-csi-node", {"node-driver-registrar", "liveness-probe"}),
])
def test_workloads(docs, kind, name, sidecars):
    w = docs[(kind, name)]
    spec = w["spec"]["template"]["spec"]
    cs = containers(w)
    assert set(cs) == sidecars | {"braidfs-csi"}
    plugin = cs["braidfs-csi"]
    assert plugin["securityContext"]["privileged"] is True
    assert spec["hostPID"] is True  # --mount-wrapper enters PID 1's namespaces
    wrapper = shlex.split(arg(plugin, "mount-wrapper"))
    assert wrapper[:2] == ["nsenter", "--target"] and "systemd-run" in wrapper
    role = "--controller" if kind == "Deployment" else "--node"
    assert role in plugin["args"]
    assert arg(plugin, "node-id") == "$(NODE_NAME)"
    assert plugin["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # the state dir: Bidirectional so that the braidfs mounts reach the other containers
    st = mount_path_of(plugin, "state-dir")
    assert st["mountPropagation"] == "Bidirectional"
    assert st["mountPath"] == arg(plugin, "state-dir")
    assert arg(plugin, "braidfs").startswith(arg(plugin, "state-dir") + "/")
    # one socket: the plugin's endpoint is what every sidecar dials, on the same volume
    endpoint = arg(plugin, "endpoint")
    assert endpoint.startswith("unix:///")
    sock = endpoint[len("unix://"):]
    sock_vol = [m["name"] for m in plugin["volumeMounts"]
                if sock.startswith(m["mountPath"].rstrip("/") + "/")]
    assert len(sock_vol) == 1
    for s in sidecars:
        assert arg(cs[s], "csi-address") == sock, s
        m = mount_path_of(cs[s], sock_vol[0])
        assert m and sock.startswith(m["mountPath"].rstrip("/") + "/"), s
    # liveness: the probe's port is the plugin's healthz port
    port = int(arg(cs["liveness-probe"], "health-port"))
    assert plugin["ports"][0]["containerPort"] == port
    assert plugin["livenessProbe"]["httpGet"]["port"] == "healthz"
    # service account exists
    sa = spec["serviceAccountName"]
    assert ("ServiceAccount", sa) in docs
    assert docs[("ServiceAccount", sa)]["metadata"]["namespace"] == w["metadata"]["namespace"]
    vols = {v["name"]: v for v in spec["volumes"]}
    for c in spec.get("initContainers", []) + list(cs.values()):
        for m in c.get("volumeMounts", []):
            assert m["name"] in vols, f"{c['name']} mounts unknown volume {m['name']}"


def test_node_plugin_paths(docs):
    w = docs[("DaemonSet", "braidfs-csi-node")]
    cs = containers(w)
    vols = {v["name"]: v for v in w["spec"]["template"]["spec"]["volumes"]}
    plugin = cs["braidfs-csi"]
    # the kubelet dir: Bidirectional on the plugin, so staging/publish mounts reach pods
    k = mount_path_of(plugin, "kubelet-dir")
    assert k["mountPropagation"] == "Bidirectional" and k["mountPath"] == "/var/lib/kubelet"
    assert vols["kubelet-dir"]["hostPath"]["path"] == "/var/lib/kubelet"
    # the registrar tells the kubelet where the socket is on the host: the host path of
    # the volume the plugin serves its socket in, plus the socket's name
    sock = arg(plugin, "endpoint")[len("unix://"):]
    reg = arg(cs["node-driver-registrar"], "kubelet-registration-path")
    host_dir = vols["plugin-dir"]["hostPath"]["path"]
    assert mount_path_of(plugin, "plugin-dir")["mountPath"] == os.path.dirname(sock)
    assert reg == os.path.join(host_dir, os.path.basename(sock))
    assert host_dir == f"/var/lib/kubelet/plugins/{DRIVER}"
    assert vols["registration-dir"]["hostPath"]["path"] == "/var/lib/kubelet/plugins_registry"
    # sidecars never need propagation from the host
    for s in ("node-driver-registrar", "liveness-probe"):
        for m in cs[s]["volumeMounts"]:
            assert m.get("mountPropagation") in (None, "None", "HostToContainer")


def test_rbac(docs):
    prov = docs[("ClusterRole", "braidfs-csi-provisioner")]
    res = {r for rule in prov["rules"] for r in rule["resources"]}
    assert {"persistentvolumes", "persistentvolumeclaims", "storageclasses", "csinodes",
            "nodes", "events"} <= res
    rs = docs[("ClusterRole", "braidfs-csi-resizer")]
    assert "persistentvolumeclaims/status" in {r for rule in rs["rules"] for r in rule["resources"]}
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        for (k, _), d in docs.items():
            if k != kind:
                continue
            assert (d["roleRef"]["kind"], d["roleRef"]["name"]) in docs
            for s in d["subjects"]:
                assert ("ServiceAccount", s["name"]) in docs


def test_storageclasses(docs):
    scs = [d for (k, _), d in docs.items() if k == "StorageClass"]
    assert len(scs) >= 2
    node = containers(docs[("DaemonSet", "braidfs-csi-node")])["braidfs-csi"]
    for sc in scs:
        assert sc["provisioner"] == DRIVER
        assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
        assert sc["allowVolumeExpansion"] is True
        params = sc.get("parameters", {})
        assert set(params) <= {"metaURL", "replicas", "consistency", "pool"}
        if "metaURL" in params:
            assert params["metaURL"] == arg(node, "meta")
        if "consistency" in params:
            assert params["consistency"] in ("strong", "weak")


def test_example_postgres(docs):
    ss = docs[("StatefulSet", "postgres")]
    pg = containers(ss)["postgres"]
    m = mount_path_of(pg, "data")
    assert m["mountPropagation"] == "HostToContainer"
    env = {e["name"]: e["value"] for e in pg["env"]}
    assert env["PGDATA"].startswith(m["mountPath"] + "/")  # a subdirectory it owns
    claim = ss["spec"]["volumeClaimTemplates"][0]
    assert ("StorageClass", claim["spec"]["storageClassName"]) in docs
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
