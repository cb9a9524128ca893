"""The Kubernetes manifests, validated offline: yamllint, kubernetes-validate (strict, against the newest schema the
installed kubernetes-validate ships), the rendered kustomize output, the shape of the CRD objects it cannot check,
and their agreement with the code they deploy (flags, paths, ports, resource names, CNI configs).

There may be no kustomize binary: `render()` below applies the kustomization features the manifests use
(resources, labels, images, JSON 6902 patches) and refuses any other; where `kubectl` is installed its
`kubectl kustomize` output must equal ours.
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from cni_helpers import VNFIO
from kubelet_stub import KubeletStub, temporary_plugin_dir
from kubernetes_validate.utils import latest_version, validate
from repo import REPO

from cni.install import build_parser as install_parser
from deviceplugin.sampleboard import SampleBoard

MANIFESTS = REPO / "manifests"
BASE = MANIFESTS / "base"
OVERLAY = MANIFESTS / "overlays" / "example"
EXAMPLES = MANIFESTS / "examples"
KUSTOMIZATIONS = (BASE, OVERLAY)

# Custom resources kubernetes-validate has no schema for; their shape is checked by hand below.
CRDS = {
    ("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition"),
    ("kubevirt.io/v1", "VirtualMachineInstance"),
    ("kubevirt.io/v1", "KubeVirt"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
_YAMLLINT_CONFIG = """
extends: default
rules:
  line-length: {max: 120}
  document-start: disable
  truthy: {check-keys: false}
  comments: {min-spaces-from-content: 1}
"""


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


# ============================================================================ a small kustomize
_SUPPORTED = {"apiVersion", "kind", "resources", "labels", "images", "patches"}
_TEMPLATE_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"}


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def apply_json6902(doc: dict[str, Any], operations: list[dict[str, Any]]) -> None:
    """RFC 6902 add/remove/replace/test, what the overlays use."""
    for op in operations:
        parts = _pointer(op["path"])
        parent, last = _walk(doc, parts[:-1]), parts[-1]
        if op["op"] == "test":
            assert _walk(doc, parts) == op["value"], f"patch test failed at {op['path']}"
        elif op["op"] == "replace":
            _walk(doc, parts)  # must exist
            parent[int(last) if isinstance(parent, list) else last] = op["value"]
        elif op["op"] == "add":
            if isinstance(parent, list):
                parent.insert(len(parent) if last == "-" else int(last), op["value"])
            else:
                parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        else:
            raise AssertionError(f"unsupported patch op {op['op']!r}")


def _set_images(obj: dict[str, Any], images: list[dict[str, str]]) -> None:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        name, _, tag = container["image"].partition(":")
        for image in images:
            if image["name"] == name:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"


def render(directory: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - _SUPPORTED
    assert not unknown, f"{directory}: the test renderer does not implement {sorted(unknown)}"
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        objects += render(path) if path.is_dir() else _docs(path)
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        matches = [o for o in objects if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]]
        assert len(matches) == 1, f"patch target {target} matches {len(matches)} objects"
        apply_json6902(matches[0], yaml.safe_load(patch["patch"]))
    for labels in kustomization.get("labels", []):
        assert not labels.get("includeSelectors"), "selector labels are not implemented here"
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(labels["pairs"])
            if labels.get("includeTemplates") and obj["kind"] in _TEMPLATE_KINDS:
                template = obj["spec"]["template"].setdefault("metadata", {})
                template.setdefault("labels", {}).update(labels["pairs"])
    for obj in objects:
        _set_images(obj, kustomization.get("images", []))
    return copy.deepcopy(objects)


@pytest.fixture(scope="module", params=KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(MANIFESTS)))
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


@pytest.fixture(scope="module")
def overlay() -> dict[tuple[str, str, str], dict[str, Any]]:
    return {_key(o): o for o in render(OVERLAY)}


def _all_objects() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            for doc in _docs(path):
                yield str(path.relative_to(MANIFESTS)), doc


def _container(objects: dict[tuple[str, str, str], dict[str, Any]], ds: str, name: str) -> dict[str, Any]:
    spec = objects["DaemonSet", "vnfio-system", ds]["spec"]["template"]["spec"]
    (found,) = [c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name]
    return found


def _pod_spec(objects: dict[tuple[str, str, str], dict[str, Any]], ds: str) -> dict[str, Any]:
    return objects["DaemonSet", "vnfio-system", ds]["spec"]["template"]["spec"]


def _flags(args: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in args)


# ============================================================================ lint and schemas
def test_yamllint_is_clean() -> None:
    yamllint = Path(sys.executable).parent / "yamllint"
    done = subprocess.run(
        [str(yamllint), "--strict", "-f", "parsable", "-d", _YAMLLINT_CONFIG, str(MANIFESTS)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(list(MANIFESTS.rglob("*.yaml"))) >= 15


def test_every_builtin_object_validates_strictly_against_the_newest_schema() -> None:
    version = latest_version()
    assert tuple(map(int, version.split(".")[:2])) >= (1, 33), f"kubernetes-validate ships only {version}"
    checked = 0
    for where, obj in _all_objects():
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            continue
        try:
            validate(obj, version, strict=True)
        except Exception as exc:  # the library's errors carry the path inside the object
            pytest.fail(f"{where}: {obj['kind']}/{obj['metadata']['name']}: {exc}")
        checked += 1
    assert checked >= 13
    # Strict means strict: a misspelt field is an error, not silently ignored.
    (daemonset,) = [o for _, o in _all_objects() if o["metadata"]["name"] == "vnfio-cni" and o["kind"] == "DaemonSet"]
    broken = copy.deepcopy(daemonset)
    broken["spec"]["template"]["spec"]["hostNetwrk"] = True
    with pytest.raises(Exception, match="hostNetwrk"):
        validate(broken, version, strict=True)


def test_rendered_output_validates_strictly(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in rendered)
    assert kinds == sorted(
        [
            *("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"),
            *("ConfigMap", "ConfigMap", "DaemonSet", "DaemonSet"),
            *("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"),
        ]
    )
    for obj in rendered:
        validate(obj, latest_version(), strict=True)
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "vnfio"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl here; the test renderer stands alone")
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_renderer_agrees_with_kubectl_kustomize(directory: Path) -> None:
    done = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    theirs = {_key(o): o for o in yaml.safe_load_all(done.stdout) if o}
    ours = {_key(o): o for o in render(directory)}
    assert theirs == ours


def test_crd_objects_have_their_expected_shape() -> None:
    seen = set()
    for where, obj in _all_objects():
        api_kind = (obj["apiVersion"], obj["kind"])
        if api_kind not in CRDS:
            continue
        seen.add(api_kind[1])
        assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}, where
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"]), where
        assert isinstance(obj["metadata"]["namespace"], str), where
        spec = obj["spec"]
        if obj["kind"] == "NetworkAttachmentDefinition":
            assert set(spec) == {"config"} and isinstance(spec["config"], str)
            assert json.loads(spec["config"])["name"] == obj["metadata"]["name"]
        elif obj["kind"] == "VirtualMachineInstance":
            devices = spec["domain"]["devices"]
            disks = {d["name"] for d in devices["disks"]}
            assert disks == {v["name"] for v in spec["volumes"]}
            assert all(set(h) == {"name", "deviceName"} for h in devices["hostDevices"])
        elif obj["kind"] == "KubeVirt":
            for device in spec["configuration"]["permittedHostDevices"]["pciHostDevices"]:
                assert re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{4}", device["pciVendorSelector"], re.I)
                assert device["externalResourceProvider"] is True
        elif obj["kind"] == "ServiceMonitor":
            assert spec["endpoints"] and all("port" in e for e in spec["endpoints"])
            assert spec["selector"]["matchLabels"]
    assert seen == {kind for _, kind in CRDS}


# ============================================================================ agreement with the code
def _help(script: str) -> str:
    return subprocess.run(
        [str(Path(sys.executable).parent / script), "--help"], capture_output=True, text=True, check=True
    ).stdout


def test_daemon_flags_exist_in_the_commands_they_run(overlay: dict[tuple[str, str, str], dict[str, Any]]) -> None:
    for ds, name, script in (
        ("vnfio-device-plugin", "device-plugin", "vnfio-device-plugin"),
        ("vnfio-cni", "cni-daemon", "vnfio-cni-daemon"),
    ):
        container = _container(overlay, ds, name)
        assert container["command"] == [script]
        text = _help(script)
        for flag in _flags(container["args"]):
            assert re.search(rf"(^|\s|\[){re.escape(flag)}[\s=\]]", text), f"{script} has no {flag}"


def test_install_init_container_parses_and_installs_what_the_image_builds(
    overlay: dict[tuple[str, str, str], dict[str, Any]],
) -> None:
    init = _container(overlay, "vnfio-cni", "install-cni")
    assert init["command"] == ["python", "-m", "cni.install"]
    env = {e["name"]: e["value"] for e in init["env"]}
    # The kubelet expands $(VAR) from the container's env: every reference must be defined there.
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in init["args"]]
    parsed = install_parser().parse_args(args)
    assert parsed.conflist is None, "installing a conflist must be opt-in"
    assert parsed.inproc, "the Python fallback is installed beside the static executable"
    assert f"cp -r build/cni-bin {parsed.cni_bin}" in (REPO / "Dockerfile").read_text()
    # The host's two CNI dirs at their own paths, writable; nothing else of the host, and never its root.
    mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
    volumes = {v["name"]: v for v in overlay["DaemonSet", "vnfio-system", "vnfio-cni"]["spec"]["template"]["spec"]
               ["volumes"]}
    host_mounts = {path: volumes[m["name"]]["hostPath"]["path"] for path, m in mounts.items()
                   if "hostPath" in volumes[m["name"]]}
    assert host_mounts == {str(parsed.cni_bin_dir): str(parsed.cni_bin_dir),
                           str(parsed.cni_conf_dir): str(parsed.cni_conf_dir)}
    assert not any(m.get("readOnly") for path, m in mounts.items() if path in host_mounts)
    assert all(v["hostPath"]["path"] != "/" for v in volumes.values() if "hostPath" in v)
    # Opting in points at a key that exists in the shipped ConfigMap.
    conflist = PurePosixPath(init["env"][0]["value"] or "/etc/vnfio/cni/10-vnfio.conflist")
    assert init["env"][0]["name"] == "VNFIO_CNI_CONFLIST"
    assert str(conflist.parent) in mounts
    assert conflist.name in overlay["ConfigMap", "vnfio-system", "vnfio-cni-config"]["data"]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_cni_daemon_paths_match_what_the_executable_and_ipam_expect(
    overlay: dict[tuple[str, str, str], dict[str, Any]],
) -> None:
    from cni.client import DEFAULT_SOCKET
    from cni.ipam.store import DEFAULT_DATA_DIR

    spec = _pod_spec(overlay, "vnfio-cni")
    daemon = _container(overlay, "vnfio-cni", "cni-daemon")
    # The host executable finds the daemon with no configuration at all.
    assert _flags(daemon["args"])["--socket"] == DEFAULT_SOCKET
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    mounted = {host_paths[m["name"]]: m for m in daemon["volumeMounts"] if m["name"] in host_paths}
    assert set(mounted) == {"/run/vnfio", "/var/lib/cni", "/opt/cni/bin"}
    assert all(path == mount["mountPath"] for path, mount in mounted.items())
    assert mounted["/opt/cni/bin"]["readOnly"] is True
    assert str(PurePosixPath(DEFAULT_SOCKET).parent) == "/run/vnfio"
    assert DEFAULT_DATA_DIR.startswith("/var/lib/cni/")
    assert spec["hostNetwork"] is True and "hostPID" not in spec
    assert daemon["securityContext"]["capabilities"] == {"drop": ["ALL"],
                                                         "add": ["NET_ADMIN", "SYS_ADMIN", "SYS_CHROOT"]}
    assert spec["automountServiceAccountToken"] is False


def test_device_plugin_is_as_tight_as_it_can_be(overlay: dict[tuple[str, str, str], dict[str, Any]]) -> None:
    spec = _pod_spec(overlay, "vnfio-device-plugin")
    container = _container(overlay, "vnfio-device-plugin", "device-plugin")
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]} and security["privileged"] is False
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert set(host_paths.values()) == {"/var/lib/kubelet/device-plugins", "/sys", "/dev/vfio"}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["sys"].get("readOnly") is True
    assert not any("subPath" in m for m in container["volumeMounts"]), "subPath mounts never see ConfigMap updates"
    flags = _flags(container["args"])
    assert flags["--plugin-dir"] == mounts["device-plugins"]["mountPath"] == host_paths["device-plugins"]
    assert {e["name"]: e.get("valueFrom") for e in container["env"]} == {
        "NODE_NAME": {"fieldRef": {"fieldPath": "spec.nodeName"}},
        # The metrics endpoint binds the node's own address, not every address of the host network.
        "NODE_IP": {"fieldRef": {"fieldPath": "status.hostIP"}},
    }
    assert "--metrics-host" not in flags or flags["--metrics-host"] == "$(NODE_IP)"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics"
    (port,) = container["ports"]
    annotations = overlay["DaemonSet", "vnfio-system", "vnfio-device-plugin"]["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert port["name"] == "metrics" and str(port["containerPort"]) == flags["--metrics-port"]
    assert annotations["prometheus.io/port"] == flags["--metrics-port"]
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_rbac_grants_only_node_labels_and_events(overlay: dict[tuple[str, str, str], dict[str, Any]]) -> None:
    from deviceplugin.observability.nodeinfo import EVENT_NAMESPACE

    assert overlay["ClusterRole", "", "vnfio-device-plugin"]["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}
    ]
    role = overlay["Role", EVENT_NAMESPACE, "vnfio-device-plugin-events"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]}]
    for kind, namespace, name in (
        ("ClusterRoleBinding", "", "vnfio-device-plugin"),
        ("RoleBinding", EVENT_NAMESPACE, "vnfio-device-plugin-events"),
    ):
        assert overlay[kind, namespace, name]["subjects"] == [
            {"kind": "ServiceAccount", "name": "vnfio-device-plugin", "namespace": "vnfio-system"}
        ]
    assert _pod_spec(overlay, "vnfio-device-plugin")["serviceAccountName"] == "vnfio-device-plugin"


def _served_pools(config_text: str, tmp_path: Path) -> dict[str, list[str]]:
    """What `vnfio-device-plugin list` makes of a config on the sample board: resource name -> device IDs."""
    config = tmp_path / "config.json"
    config.write_text(config_text)
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "vnfio-device-plugin"),
            "list",
            "--config",
            str(config),
            "--sample-board",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return {pool["resourceName"]: [d["id"] for d in pool["devices"]] for pool in json.loads(done.stdout)["pools"]}


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_shipped_pools_serve_devices_on_the_sample_board(directory: Path, tmp_path: Path) -> None:
    objects = {_key(o): o for o in render(directory)}
    container = _container(objects, "vnfio-device-plugin", "device-plugin")
    config_path = PurePosixPath(_flags(container["args"])["--config"])
    (config_mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
    (volume,) = [v for v in _pod_spec(objects, "vnfio-device-plugin")["volumes"] if v["name"] == config_mount["name"]]
    data = objects["ConfigMap", "vnfio-system", volume["configMap"]["name"]]["data"]
    pools = _served_pools(data[config_path.name], tmp_path)
    assert set(pools) == {"nxp.com/dpaa2_dprc", "intel.com/intel_vf"}
    assert all(pools.values()), pools


def test_examples_ask_for_resources_the_config_offers(overlay: dict[tuple[str, str, str], dict[str, Any]]) -> None:
    from deviceplugin.policy.config import env_suffix

    config = json.loads(overlay["ConfigMap", "vnfio-system", "vnfio-device-plugin-config"]["data"]["config.json"])
    offered = {f"{p.get('resourcePrefix', 'vnfio.io')}/{p['resourceName']}" for p in config["resourceList"]}
    asked: dict[str, int] = {}
    for where, obj in _all_objects():
        if where.startswith("examples/") and obj["kind"] == "Pod":
            for container in obj["spec"]["containers"]:
                limits = container["resources"]["limits"]
                assert container["resources"]["requests"] == limits, f"{where}: Guaranteed QoS for pinned cores"
                assert container["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]
                assert any(k.startswith("hugepages-") for k in limits)
                for name, count in limits.items():
                    if "/" in name:
                        assert name in offered, f"{where} asks for {name}, which no pool offers"
                        asked[name] = count
                if "intel.com/intel_vf" in limits:
                    assert "$PCIDEVICE_" + env_suffix("intel.com/intel_vf") in " ".join(container["args"])
        elif obj["kind"] == "VirtualMachineInstance":
            for device in obj["spec"]["domain"]["devices"]["hostDevices"]:
                assert device["deviceName"] in offered
        elif obj["kind"] == "KubeVirt":
            for device in obj["spec"]["configuration"]["permittedHostDevices"]["pciHostDevices"]:
                assert device["resourceName"] in offered
                pool = next(
                    p for p in config["resourceList"] if p["resourceName"] == device["resourceName"].split("/")[1]
                )
                vendor, product = device["pciVendorSelector"].lower().split(":")
                assert vendor in pool["selectors"]["vendors"] and product in pool["selectors"]["devices"]
    assert asked == {"nxp.com/dpaa2_dprc": 1, "intel.com/intel_vf": 2}


def test_cni_configs_parse_as_vnfio_configs() -> None:
    from cni.ipam import IpamRequest
    from cni.ipam.hostlocal import load_config
    from cni.netconf import MODES, parse_netconf
    from cni.request import CniRequest

    configs = {}
    for where, obj in _all_objects():
        if obj["kind"] == "NetworkAttachmentDefinition":
            configs[where] = json.loads(obj["spec"]["config"])
        elif obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == "vnfio-cni-config":
            conflist = json.loads(obj["data"]["10-vnfio.conflist"])
            (plugin,) = conflist["plugins"]
            configs[where] = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **plugin}
    modes = set()
    for where, raw in configs.items():
        assert raw["type"] == "vnfio", where
        conf = parse_netconf(raw, CniRequest(command="ADD"))
        modes.add(conf.mode)
        request = IpamRequest("ADD", "example", "net1", "", {}, (), {}, raw)
        assert load_config(request).range_sets, where
    assert modes == set(MODES)


# ============================================================================ the CNI daemon, confined as deployed
def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def host_executable() -> Path:
    """The node's executable, the static one (its fallback is not wanted: the daemon must serve)."""
    return VNFIO


@pytest.fixture(scope="module")
def confined_daemon(
    tmp_path_factory: pytest.TempPathFactory, overlay: dict[tuple[str, str, str], dict[str, Any]]
) -> Iterator[Path]:
    """`vnfio-cni-daemon` as the DaemonSet runs it: root holding only the capabilities the manifest adds, and
    /proc/sys read-only, as every container runtime mounts it for a non-privileged container."""
    if not (shutil.which("unshare") and shutil.which("setpriv")):
        pytest.skip("needs util-linux unshare and setpriv")
    tmp_path = tmp_path_factory.mktemp("confined-daemon")
    caps = _container(overlay, "vnfio-cni", "cni-daemon")["securityContext"]["capabilities"]["add"]
    bounding = "-all," + ",".join(f"+{c.lower()}" for c in caps)
    socket_path = tmp_path / "run" / "cni.sock"
    socket_path.parent.mkdir()
    (tmp_path / "node-only").mkdir()  # the node's files the container has not: hidden from the daemon by a tmpfs
    log = (tmp_path / "daemon.log").open("w")
    script = (
        "mount --bind -o ro /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && "
        f"mount -t tmpfs vnfio-test {tmp_path / 'node-only'} && "
        f"exec setpriv --bounding-set {bounding} --inh-caps -all "
        f"{Path(sys.executable).parent / 'vnfio-cni-daemon'} --socket {socket_path} --log-level DEBUG"
    )
    daemon = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script], stdout=log, stderr=log
    )
    try:
        for _ in range(600):  # readiness, not a timing claim: pyroute2 warms up first
            if socket_path.exists() or daemon.poll() is not None:
                break
            time.sleep(0.05)
        assert socket_path.exists(), (tmp_path / "daemon.log").read_text()
        status = Path(f"/proc/{daemon.pid}/status").read_text()
        effective = int(re.search(r"CapEff:\s*([0-9a-f]+)", status).group(1), 16)  # type: ignore[union-attr]
        expected = (1 << 12) | (1 << 21) | (1 << 18)
        assert effective == expected, f"CapEff {effective:x}: expected NET_ADMIN, SYS_ADMIN and SYS_CHROOT only"
        yield socket_path
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()


def _cni(executable: Path, socket_path: Path, command: str, netns: str, conf: dict[str, Any]) -> dict[str, Any]:
    code, out = _cni_call(executable, socket_path, command, netns, conf)
    assert code == 0, out
    return json.loads(out) if out.strip() else {}


def _cni_call(executable: Path, socket_path: Path, command: str, netns: str, conf: dict[str, Any]) -> tuple[int, str]:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": f"ctr-{netns}",
        "CNI_NETNS": f"/run/netns/{netns}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/usr/lib/cni",
        "VNFIO_CNI_SOCKET": str(socket_path),
    }
    done = subprocess.run([str(executable)], input=json.dumps(conf), capture_output=True, text=True, env=env)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("mode", ["bridge", "macvlan", "veth", "bridge-gateway"])
def test_cni_daemon_serves_with_only_the_manifest_capabilities(
    mode: str, confined_daemon: Path, host_executable: Path, tmp_path: Path
) -> None:
    tag = f"{os.getpid() % 10000}{secrets.token_hex(2)}"
    netns, link = f"vnfcap{tag}", f"vc{tag}"
    subnet = f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}"
    conf: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "name": f"cap{tag}",
        "type": "vnfio",
        "mode": mode.split("-")[0],
        "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"), "ranges": [[{"subnet": f"{subnet}.0/24"}]]},
    }
    if mode.startswith("bridge"):
        conf.update(bridge=f"{link}b", isGateway=mode == "bridge-gateway")
    elif mode == "macvlan":
        conf["master"] = f"{link}m"
    _ip("netns", "add", netns)
    try:
        if mode == "macvlan":
            _ip("link", "add", f"{link}m", "type", "veth", "peer", "name", f"{link}p")
            _ip("link", "set", f"{link}m", "up")
        code, out = _cni_call(host_executable, confined_daemon, "ADD", netns, conf)
        assert code == 0, out
        result = json.loads(out)
        address = result["ips"][0]["address"].split("/")[0]
        shown = subprocess.run(["ip", "-n", netns, "-j", "addr", "show", "eth0"], capture_output=True, text=True)
        assert address in {a["local"] for a in json.loads(shown.stdout)[0]["addr_info"]}
        # arp_notify goes over netlink, so the read-only /proc/sys of the container does not stop it.
        notify = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"],
                                capture_output=True, text=True, check=True)
        assert notify.stdout.strip() == "1"
        _cni(host_executable, confined_daemon, "CHECK", netns, {**conf, "prevResult": result})
        _cni(host_executable, confined_daemon, "DEL", netns, {**conf, "prevResult": result})
        gone = subprocess.run(["ip", "-n", netns, "link", "show", "eth0"], capture_output=True)
        assert gone.returncode != 0
        # Served by the daemon, not by the in-process fallback.
        log = (confined_daemon.parent.parent / "daemon.log").read_text()
        for command in ("ADD", "CHECK", "DEL"):
            assert f"CNI {command} ctr-{netns}/eth0: code 0" in log
        # An IPv4 pod needs no /proc/sys write at all (a new bridge's IPv6 accept_ra has no netlink setter).
        assert [line for line in log.splitlines() if "read-only" in line and "ipv6" not in line] == []
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        for name in (f"{link}b", f"{link}m"):
            subprocess.run(["ip", "link", "del", name], capture_output=True)


# ============================================================================ the device plugin, confined as deployed
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_device_plugin_serves_kubelet_as_root_without_capabilities_on_a_read_only_root(
    overlay: dict[tuple[str, str, str], dict[str, Any]], board: SampleBoard
) -> None:
    """The DaemonSet's container: uid 0 with every capability dropped, the root filesystem (and with it the board's
    /sys and /dev) read-only, only the plugin dir writable. It must register, list and allocate all the same."""
    if not (shutil.which("unshare") and shutil.which("setpriv")):
        pytest.skip("needs util-linux unshare and setpriv")
    container = _container(overlay, "vnfio-device-plugin", "device-plugin")
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    config = board.root / "config.json"
    config.write_text(overlay["ConfigMap", "vnfio-system", "vnfio-device-plugin-config"]["data"]["config.json"])
    port = _free_port()
    with temporary_plugin_dir("confined") as plugin_dir, KubeletStub(plugin_dir) as kubelet:
        # The manifest's flags, with its host paths pointed at the board and the stand-in kubelet's dir.
        local = {"--config": config, "--sysfs-root": board.sys, "--dev-root": board.dev, "--metrics-port": port}
        local["--plugin-dir"] = plugin_dir
        args = [f"{flag}={local.get(flag, value)}" for flag, value in _flags(container["args"]).items()]
        script = (
            f"mount --bind {plugin_dir} {plugin_dir} && mount -o remount,bind,ro / && "
            f"exec setpriv --bounding-set -all --inh-caps -all "
            f"{Path(sys.executable).parent / 'vnfio-device-plugin'} {' '.join(args)}"
        )
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
        plugin = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            for resource in ("nxp.com/dpaa2_dprc", "intel.com/intel_vf"):
                kubelet.wait_registered(resource, timeout=60)
                kubelet.wait_for(resource, lambda devices: bool(devices), timeout=30)
            status = Path(f"/proc/{plugin.pid}/status").read_text()
            assert re.search(r"CapEff:\s*0+\n", status), status
            assert re.search(r"Uid:\s*0\s", status)
            response = kubelet.allocate("nxp.com/dpaa2_dprc", ["dprc.2"])
            assert response.envs["DPRC"] == "dprc.2"
            assert {d.container_path for d in response.devices} == {"/dev/vfio/vfio", "/dev/vfio/10"}
            for path in ("/healthz", "/readyz"):  # what the probes ask
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
                    assert answer.status == 200
        finally:
            plugin.terminate()
            output = plugin.communicate(timeout=30)[0]
        assert plugin.returncode == 0, output
        assert not [p for p in plugin_dir.iterdir() if p.name.startswith("vnfio-")], "sockets left behind"


def test_confined_cni_daemon_runs_a_delegate_in_the_runtimes_mount_namespace(
    confined_daemon: Path, host_executable: Path
) -> None:
    """With only the manifest's capabilities (SYS_CHROOT among them), the daemon runs a delegated IPAM plugin that
    only the runtime's mount namespace has (the daemon's has a tmpfs there), and the plugin reads the node's file."""
    node_only = confined_daemon.parent.parent / "node-only"
    tag = f"{os.getpid() % 10000}{secrets.token_hex(2)}"
    netns, subnet = f"vnfmnt{tag}", f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}"
    (node_only / "bin").mkdir(exist_ok=True)
    (node_only / "lease").write_text(f"{subnet}.7/24")
    plugin = node_only / "bin" / "nodeipam"
    plugin.write_text(f"""#!/bin/sh
cat > /dev/null
[ "$CNI_COMMAND" = ADD ] || exit 0
lease=$(cat "{node_only / 'lease'}") || exit 1
printf '{{"cniVersion": "1.0.0", "ips": [{{"address": "%s", "gateway": "{subnet}.1"}}]}}' "$lease"
""")
    plugin.chmod(0o755)
    conf = {"cniVersion": "1.0.0", "name": f"mnt{tag}", "type": "vnfio", "mode": "veth", "ipam": {"type": "nodeipam"}}
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_CONTAINERID": f"ctr-{netns}",
           "CNI_NETNS": f"/run/netns/{netns}", "CNI_IFNAME": "eth0", "CNI_PATH": str(node_only / "bin"),
           "VNFIO_CNI_SOCKET": str(confined_daemon)}
    _ip("netns", "add", netns)
    try:
        added = subprocess.run([str(host_executable)], input=json.dumps(conf), capture_output=True, text=True,
                               env={**env, "CNI_COMMAND": "ADD"})
        assert added.returncode == 0, added.stdout + added.stderr
        assert json.loads(added.stdout)["ips"][0]["address"] == f"{subnet}.7/24"
        deleted = subprocess.run([str(host_executable)], input=json.dumps(conf), capture_output=True, text=True,
                                 env={**env, "CNI_COMMAND": "DEL"})
        assert deleted.returncode == 0, deleted.stdout + deleted.stderr
        log = (confined_daemon.parent.parent / "daemon.log").read_text()
        assert f"CNI ADD ctr-{netns}/eth0: code 0" in log, "not served by the confined daemon"
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
