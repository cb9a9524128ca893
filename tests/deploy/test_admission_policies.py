"""The admission policy that narrows the device plugin's `nodes patch`: evaluated with a CEL engine
(cel-python) as the API server would, against the admission requests a compromised plugin could send.

The API server evaluates matchConditions, then the variables, then every validation; a request is denied when a
matched policy has a validation that is false. These tests do the same with the policy as shipped.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from repo import REPO

pytestmark = pytest.mark.hardening

POLICY = "vnfio-device-plugin-own-node-labels"
PLUGIN = "system:serviceaccount:vnfio-system:vnfio-device-plugin"
NODE = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {
        "name": "worker-1",
        "labels": {"kubernetes.io/hostname": "worker-1", "vnfio.io/dpaa2": "true"},
        "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
    },
    "spec": {"podCIDR": "10.244.1.0/24"},
}


def _policy() -> dict[str, Any]:
    documents = yaml.safe_load_all((REPO / "manifests/base/device-plugin-rbac.yaml").read_text())
    found = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    binding = found["ValidatingAdmissionPolicyBinding", POLICY]["spec"]
    assert binding["policyName"] == POLICY and binding["validationActions"] == ["Deny"]
    return found["ValidatingAdmissionPolicy", POLICY]["spec"]


def admitted(user: str, node_name: str | None, old: dict[str, Any], new: dict[str, Any]) -> tuple[bool, list[str]]:
    """(admitted?, messages of the failed validations) for an UPDATE of `old` into `new` by `user`."""
    import celpy

    spec = _policy()
    env = celpy.Environment()

    def evaluate(expression: str, activation: dict[str, Any]) -> Any:
        return env.program(env.compile(expression)).evaluate(activation)

    extra = {"authentication.kubernetes.io/node-name": [node_name]} if node_name else {}
    request = {"operation": "UPDATE", "userInfo": {"username": user, "extra": extra}}
    activation: dict[str, Any] = {
        "request": celpy.json_to_cel(request),
        "object": celpy.json_to_cel(new),
        "oldObject": celpy.json_to_cel(old),
    }
    if not all(evaluate(c["expression"], activation) for c in spec["matchConditions"]):
        return True, []  # not the plugin: the policy does not apply
    variables: dict[Any, Any] = {}
    for variable in spec["variables"]:  # in order: a variable may use the ones before it
        activation["variables"] = celpy.celtypes.MapType(variables)
        variables[celpy.celtypes.StringType(variable["name"])] = evaluate(variable["expression"], activation)
    activation["variables"] = celpy.celtypes.MapType(variables)
    failed = [v.get("message", v.get("messageExpression", "")) for v in spec["validations"]
              if not evaluate(v["expression"], activation)]
    return not failed, failed


def _changed(**edits: Any) -> dict[str, Any]:
    node = copy.deepcopy(NODE)
    for path, value in edits.items():
        where = node
        *parents, last = path.split("__")
        for key in parents:
            where = where.setdefault(key, {})
        if value is None:
            where.pop(last, None)
        else:
            where[last] = value
    return node


def test_the_plugin_may_set_and_remove_vnfio_labels_on_its_own_node() -> None:
    labels = dict(NODE["metadata"]["labels"], **{"vnfio.io/vfio-pci": "true"})
    assert admitted(PLUGIN, "worker-1", NODE, _changed(metadata__labels=labels)) == (True, [])
    without = {k: v for k, v in NODE["metadata"]["labels"].items() if k != "vnfio.io/dpaa2"}
    assert admitted(PLUGIN, "worker-1", NODE, _changed(metadata__labels=without)) == (True, [])


@pytest.mark.parametrize(
    ("node_name", "edits", "fragment"),
    [
        ("worker-2", {"metadata__labels": {**NODE["metadata"]["labels"], "vnfio.io/x": "true"}}, "only change that"),
        (None, {"metadata__labels": {**NODE["metadata"]["labels"], "vnfio.io/x": "true"}}, "bound to a node"),
        ("worker-1", {"metadata__labels": {**NODE["metadata"]["labels"], "role": "edge"}}, "labels under"),
        ("worker-1", {"metadata__labels": {"vnfio.io/dpaa2": "true"}}, "labels under"),
        ("worker-1", {"spec__taints": [{"key": "x", "effect": "NoSchedule"}]}, "spec"),
        ("worker-1", {"spec__unschedulable": True}, "spec"),
        ("worker-1", {"metadata__annotations": {"evil": "1"}}, "annotations"),
    ],
    ids=["other-node", "no-node-in-token", "foreign-label", "label-removed", "taint", "cordon", "annotation"],
)
def test_everything_else_a_compromised_plugin_tries_is_denied(
    node_name: str | None, edits: dict[str, Any], fragment: str
) -> None:
    """The plugin's token names `node_name` (a plugin on worker-2 patching worker-1 is the first case)."""
    ok, messages = admitted(PLUGIN, node_name, NODE, _changed(**edits))
    assert not ok
    assert any(fragment in m for m in messages), messages


def test_other_users_are_not_matched() -> None:
    tainted = _changed(spec__taints=[{"key": "x", "effect": "NoSchedule"}])
    assert admitted("system:node:worker-1", None, NODE, tainted) == (True, [])
    assert admitted("system:serviceaccount:kube-system:node-controller", None, NODE, tainted) == (True, [])
