"""The DRA driver's manifests, validated offline like the others: strict schemas, the rendered overlay, and their
agreement with the code (flags, paths, the attributes the DeviceClasses select on, the never-both rule)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes_validate.utils import latest_version, validate
from test_manifests import MANIFESTS, _docs, _flags, _key, render

from deviceplugin.discovery.inventory import discover
from deviceplugin.kubelet.dra.slices import published_devices
from deviceplugin.policy.config import parse_config
from deviceplugin.policy.pools import build_pools
from deviceplugin.sampleboard import SampleBoard

DRA = MANIFESTS / "dra"
OVERLAY = MANIFESTS / "overlays" / "dra"
EXAMPLE = MANIFESTS / "examples" / "dra-dpdk-pod.yaml"


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str, str], dict[str, Any]]:
    return {_key(o): o for o in render(OVERLAY)}


def _pod(objects: dict[tuple[str, str, str], dict[str, Any]], name: str) -> dict[str, Any]:
    return objects["DaemonSet", "vnfio-system", name]["spec"]["template"]["spec"]


def test_everything_validates_strictly(objects: dict[tuple[str, str, str], dict[str, Any]]) -> None:
    kinds = sorted(k for k, _, _ in objects)
    assert kinds.count("DaemonSet") == 3 and kinds.count("DeviceClass") == 2
    assert "ValidatingAdmissionPolicy" in kinds and "ValidatingAdmissionPolicyBinding" in kinds
    for obj in [*objects.values(), *_docs(EXAMPLE)]:
        validate(obj, latest_version(), strict=True)
    for obj in objects.values():
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "vnfio"


def test_driver_daemonset_mounts_only_what_it_needs(objects: dict[tuple[str, str, str], dict[str, Any]]) -> None:
    spec = _pod(objects, "vnfio-dra-driver")
    (container,) = spec["containers"]
    assert container["command"] == ["vnfio-dra-driver"]
    assert container["image"] == "registry.example.com/nfv/vnfio:0.1.0"
    help_text = subprocess.run(
        [str(Path(sys.executable).parent / "vnfio-dra-driver"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    flags = _flags(container["args"])
    assert all(flag in help_text for flag in flags)
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert set(host_paths.values()) == {
        "/var/lib/kubelet/plugins_registry", "/var/lib/kubelet/plugins/vnfio.io", "/var/run/cdi", "/sys", "/dev/vfio",
    }
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["sys"]["readOnly"] is True and mounts["dev-vfio"]["readOnly"] is True
    assert flags["--plugins-registry-dir"] == mounts["plugins-registry"]["mountPath"]
    assert f"{flags['--plugins-dir']}/{flags['--driver-name']}" == mounts["plugin-dir"]["mountPath"]
    assert flags["--cdi-dir"] == mounts["cdi"]["mountPath"] == host_paths["cdi"]
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"]} and security["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    # The node's name for the slices; its address for the metrics endpoint (never every address of the node).
    assert env == {"NODE_NAME": "spec.nodeName", "NODE_IP": "status.hostIP"}
    assert "--metrics-host" not in " ".join(container["args"])
    config_volume = next(v for v in spec["volumes"] if v["name"] == "config")
    assert config_volume["configMap"]["name"] == "vnfio-device-plugin-config"  # one config for both transports


def test_a_node_runs_the_device_plugin_or_the_dra_driver_never_both(
    objects: dict[tuple[str, str, str], dict[str, Any]],
) -> None:
    dra = _pod(objects, "vnfio-dra-driver")
    assert dra["nodeSelector"]["vnfio.io/kubelet-transport"] == "dra"
    terms = _pod(objects, "vnfio-device-plugin")["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "vnfio.io/kubelet-transport", "operator": "NotIn",
                                            "values": ["dra"]}]}]


def test_rbac_grants_slices_and_claim_reads_only(objects: dict[tuple[str, str, str], dict[str, Any]]) -> None:
    assert objects["ClusterRole", "", "vnfio-dra-driver"]["rules"] == [
        {"apiGroups": ["resource.k8s.io"], "resources": ["resourceslices"],
         "verbs": ["list", "watch", "create", "update", "delete"]},
        {"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaims"], "verbs": ["get"]},
    ]
    assert objects["ClusterRoleBinding", "", "vnfio-dra-driver"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "vnfio-dra-driver", "namespace": "vnfio-system"}
    ]
    assert _pod(objects, "vnfio-dra-driver")["serviceAccountName"] == "vnfio-dra-driver"
    policy = objects["ValidatingAdmissionPolicy", "", "vnfio-dra-driver-own-node-slices"]["spec"]
    assert "system:serviceaccount:vnfio-system:vnfio-dra-driver" in policy["matchConditions"][0]["expression"]
    assert policy["matchConstraints"]["resourceRules"][0]["resources"] == ["resourceslices"]
    binding = objects["ValidatingAdmissionPolicyBinding", "", "vnfio-dra-driver-own-node-slices"]["spec"]
    assert binding["policyName"] == "vnfio-dra-driver-own-node-slices" and binding["validationActions"] == ["Deny"]


def test_device_classes_select_what_the_driver_publishes(
    objects: dict[tuple[str, str, str], dict[str, Any]], board: SampleBoard
) -> None:
    """Each class's CEL names attributes the driver publishes, with values its pools have; its
    extendedResourceName is the pool's resource name."""
    config = objects["ConfigMap", "vnfio-system", "vnfio-device-plugin-config"]["data"]["config.json"]
    inventory = discover(board.sys, board.dev)
    pools = build_pools(parse_config(json.loads(config)).pools, inventory).pools
    devices = published_devices("vnfio.io", pools.values(), inventory)
    classes = [o for (k, _, _), o in objects.items() if k == "DeviceClass"]
    assert {c["spec"]["extendedResourceName"] for c in classes} == set(pools)
    for device_class in classes:
        (selector,) = device_class["spec"]["selectors"]
        expression = selector["cel"]["expression"]
        wanted = dict(re.findall(r"device\.attributes\['vnfio\.io'\]\.(\w+) == '([^']*)'", expression))
        assert "device.driver == 'vnfio.io'" in expression and wanted["resource"] == device_class["spec"][
            "extendedResourceName"]
        matching = [d for d in devices.values()
                    if all(d.document["attributes"].get(k) == {"string": v} for k, v in wanted.items())]
        assert matching, f"{device_class['metadata']['name']} selects no device of the sample board"


def test_example_claim_template_and_pod_agree() -> None:
    template, pod = _docs(EXAMPLE)
    (request,) = template["spec"]["spec"]["devices"]["requests"]
    assert request["exactly"]["deviceClassName"] == "dpaa2-dprc.vnfio.io"
    assert pod["spec"]["resourceClaims"] == [{"name": "dprc", "resourceClaimTemplateName": "dpaa2-dprc"}]
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["claims"] == [{"name": "dprc"}]
    assert not any("/" in name for name in container["resources"]["limits"])  # devices come from the claim
