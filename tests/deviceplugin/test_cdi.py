"""CDI specs: built from what Allocate hands out, valid against the CDI JSON schema, written atomically."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cdi_schema import cdi_problems, load_spec

from deviceplugin.discovery.inventory import discover
from deviceplugin.kubelet.cdi import CDI_VERSION, CdiDevice, CdiError, CdiSpec, file_name, remove_spec, write_spec
from deviceplugin.policy.allocation import allocate
from deviceplugin.policy.config import SAMPLE_CONFIG, parse_config
from deviceplugin.policy.pools import build_pools
from deviceplugin.records import DeviceNode
from deviceplugin.sampleboard import SampleBoard


def _board_spec(board: SampleBoard, resource: str) -> CdiSpec:
    """One CDI device per advertised device, its edits exactly what Allocate gives for it alone."""
    pools = build_pools(parse_config(SAMPLE_CONFIG).pools, discover(board.sys, board.dev)).pools
    pool = pools[resource]
    devices = []
    for device in pool.devices:
        if device.healthy:
            given = allocate(pool, [device.id])
            devices.append(CdiDevice(device.id, given.devices, given.envs))
    return CdiSpec(resource, tuple(devices))


@pytest.mark.parametrize("resource", ["nxp.com/dpaa2_dprc", "intel.com/intel_vf"])
def test_a_pool_spec_is_valid_cdi_and_carries_what_allocate_gives(
    board: SampleBoard, tmp_path: Path, resource: str
) -> None:
    spec = _board_spec(board, resource)
    path = write_spec(tmp_path, file_name(spec.kind), spec)
    document = load_spec(path)
    assert document["cdiVersion"] == CDI_VERSION and document["kind"] == resource
    assert [d["name"] for d in document["devices"]] == [d.name for d in spec.devices]
    for written, device in zip(document["devices"], spec.devices, strict=True):
        nodes = written["containerEdits"]["deviceNodes"]
        assert [(n["hostPath"], n["path"], n["permissions"]) for n in nodes] == [
            (n.host_path, n.container_path, n.permissions) for n in device.nodes
        ]
        assert sorted(written["containerEdits"]["env"]) == sorted(f"{k}={v}" for k, v in device.env.items())
        assert all(Path(n["hostPath"]).is_relative_to(board.dev) for n in nodes)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_rewriting_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    node = DeviceNode("/dev/vfio/10", "/dev/vfio/10")
    first = CdiSpec("nxp.com/dpaa2_dprc", (CdiDevice("dprc.2", (node,), {"DPRC": "dprc.2"}),))
    second = CdiSpec("nxp.com/dpaa2_dprc", (CdiDevice("dprc.3", (node,), {"DPRC": "dprc.3"}),))
    path = write_spec(tmp_path, "vnfio-x.json", first)
    inode = path.stat().st_ino
    write_spec(tmp_path, "vnfio-x.json", second)
    assert json.loads(path.read_text())["devices"][0]["name"] == "dprc.3"
    assert path.stat().st_ino != inode  # a new file renamed over the old: a reader sees one or the other
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vnfio-x.json"]
    assert remove_spec(tmp_path, "vnfio-x.json") and not remove_spec(tmp_path, "vnfio-x.json")


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (CdiSpec("nxp.com", (CdiDevice("d", env={"A": "1"}),)), "vendor/class"),
        (CdiSpec("nxp.com/x", (CdiDevice("-bad", env={"A": "1"}),)), "not a valid name"),
        (CdiSpec("nxp.com/x", (CdiDevice("d"),)), "no container edits"),
        (CdiSpec("nxp.com/x", (CdiDevice("d", env={"A=B": "1"}),)), "not a valid variable"),
        (CdiSpec("nxp.com/x", (CdiDevice("d", (DeviceNode("dev/x", "/dev/x"),)),)), "not absolute"),
        (CdiSpec("nxp.com/x", (CdiDevice("d", (DeviceNode("/dev/x", "/dev/x", "rx"),)),)), "letters of rwm"),
        (CdiSpec("nxp.com/x", (CdiDevice("d", env={"A": "1"}), CdiDevice("d", env={"A": "1"}))), "twice"),
    ],
)
def test_what_a_runtime_would_refuse_is_never_written(tmp_path: Path, spec: CdiSpec, fragment: str) -> None:
    with pytest.raises(CdiError, match=fragment):
        write_spec(tmp_path, "vnfio-x.json", spec)
    assert list(tmp_path.iterdir()) == []


def test_the_validator_itself_catches_what_the_schema_misses() -> None:
    """The checks the suite relies on do fail: a bad env entry, an unknown field, a device without edits."""
    assert cdi_problems({"cdiVersion": CDI_VERSION, "kind": "a.b/c", "devices": []}) == []
    assert cdi_problems({"cdiVersion": CDI_VERSION, "kind": "a.b/c", "devices": [{"name": "d"}]})
    bad_env = {"name": "d", "containerEdits": {"env": ["NOVALUE"]}}
    assert cdi_problems({"cdiVersion": CDI_VERSION, "kind": "a.b/c", "devices": [bad_env]})
    assert cdi_problems({"cdiVersion": CDI_VERSION, "kind": "a.b/c", "devices": [], "extra": 1})
    assert cdi_problems({"cdiVersion": "9.9.9", "kind": "a.b/c", "devices": []})
