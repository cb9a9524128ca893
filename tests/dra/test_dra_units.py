"""The DRA transport's pure parts: device names, slices of at most 128 devices, the API server's validation of
what we publish, claim results, and the checkpoint's atomic round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from apiserver_stub import slice_problems

from deviceplugin.discovery.inventory import discover
from deviceplugin.kubelet.dra import checkpoint as ckpt
from deviceplugin.kubelet.dra.claims import ClaimError, PreparedDevice, allocation_results
from deviceplugin.kubelet.dra.slices import device_name, published_devices, slice_documents
from deviceplugin.policy.config import SAMPLE_BOARD_CONFIG, SAMPLE_CONFIG, parse_config
from deviceplugin.policy.pools import build_pools
from deviceplugin.records import PoolDevice
from deviceplugin.sampleboard import SampleBoard, full_sample_board


@pytest.mark.parametrize(
    ("device_id", "kind", "name"),
    [("dprc.5", "fslmc", "dprc-5"), ("0000:03:10.0", "pci", "pci-0000-03-10-0"),
     ("iommu-group-60", "pci", "iommu-group-60"), ("0001:01:00.1", "pci", "pci-0001-01-00-1")],
)
def test_device_names_are_dns_labels(device_id: str, kind: str, name: str) -> None:
    assert device_name(PoolDevice(id=device_id, kind=kind, healthy=True, iommu_groups=())) == name


def test_slices_hold_at_most_128_devices_and_say_how_many_there_are() -> None:
    devices = [{"name": f"dprc-{i}", "attributes": {"type": {"string": "fslmc"}}} for i in range(300)]
    slices = slice_documents("node-a", "vnfio.io", 3, devices)
    assert [len(s["spec"]["devices"]) for s in slices] == [128, 128, 44]
    assert {s["spec"]["pool"]["resourceSliceCount"] for s in slices} == {3}
    assert {s["spec"]["pool"]["generation"] for s in slices} == {3}
    assert all(slice_problems(s) == [] for s in slices)
    empty = slice_documents("node-a", "vnfio.io", 1, [])
    assert len(empty) == 1 and empty[0]["spec"]["devices"] == [] and slice_problems(empty[0]) == []


def test_the_board_as_published_is_valid_for_the_api_server(board: SampleBoard) -> None:
    inventory = discover(board.sys, board.dev)
    pools = build_pools(parse_config(SAMPLE_CONFIG).pools, inventory).pools
    devices = published_devices("vnfio.io", pools.values(), inventory)
    documents = slice_documents("node-a", "vnfio.io", 1, [d.document for d in devices.values()])
    assert slice_problems(documents[0]) == []


def test_every_device_kind_of_the_full_board_publishes_valid_devices(tmp_path: Path) -> None:
    """Platform devices and vhost-net slots too: DNS-label names and the kind's own attributes."""
    board = full_sample_board(tmp_path / "board")
    inventory = discover(board.sys, board.dev)
    pools = build_pools(parse_config(SAMPLE_BOARD_CONFIG).pools, inventory).pools
    devices = published_devices("vnfio.io", pools.values(), inventory)
    documents = slice_documents("node-a", "vnfio.io", 1, [d.document for d in devices.values()])
    assert all(slice_problems(d) == [] for d in documents)
    by_name = {d["name"]: d["attributes"] for doc in documents for d in doc["spec"]["devices"]}
    assert by_name["3200000-sata"]["platformDevice"] == {"string": "3200000.sata"}
    assert by_name["3200000-sata"]["compatible"] == {"string": "fsl,lx2160a-ahci"}
    assert by_name["vhost-net-0"]["type"] == {"string": "vhost-net"}
    assert {a["type"]["string"] for a in by_name.values()} == {"fslmc", "pci", "platform", "vhost-net"}


def test_allocation_results_take_only_this_driver_and_pool() -> None:
    claim = {"metadata": {"name": "c", "namespace": "n", "uid": "u"}, "status": {"allocation": {"devices": {
        "results": [{"request": "a", "driver": "vnfio.io", "pool": "node-a", "device": "dprc-2"},
                    {"request": "a", "driver": "gpu.example.com", "pool": "node-a", "device": "gpu-0"},
                    {"request": "b", "driver": "vnfio.io", "pool": "node-b", "device": "dprc-3"}]}}}}
    results = allocation_results(claim, "u", "vnfio.io", "node-a")
    assert [(r.request, r.device) for r in results] == [("a", "dprc-2")]
    with pytest.raises(ClaimError, match="not allocated"):
        allocation_results({"metadata": {"uid": "u"}}, "u", "vnfio.io", "node-a")
    with pytest.raises(ClaimError, match=r"has no device of vnfio\.io on node-c"):
        allocation_results(claim, "u", "vnfio.io", "node-c")
    claim["status"]["allocation"]["devices"]["config"] = [
        {"source": "FromClaim", "opaque": {"driver": "gpu.example.com", "parameters": {}}}
    ]
    assert len(allocation_results(claim, "u", "vnfio.io", "node-a")) == 1  # another driver's config is its own
    claim["status"]["allocation"]["devices"]["config"].append(
        {"source": "FromClaim", "opaque": {"driver": "vnfio.io", "parameters": {"mtu": 9000}}}
    )
    with pytest.raises(ClaimError, match="takes none") as refused:
        allocation_results(claim, "u", "vnfio.io", "node-a")
    assert refused.value.reason == "unsupported"


def test_checkpoint_round_trip_and_a_corrupt_file_is_kept_aside(tmp_path: Path) -> None:
    path = tmp_path / "vnfio.io" / ckpt.FILE_NAME
    record = ckpt.ClaimRecord("ns", "claim", ckpt.PREPARE_COMPLETED, "vnfio-vnfio.io-vfio-u.json",
                              (PreparedDevice(("r",), "node-a", "dprc-2", ("vnfio.io/vfio=u-dprc-2",)),))
    ckpt.save(path, ckpt.Checkpoint("vnfio.io", "node-a").with_claim("u", record))
    assert ckpt.load(path, "vnfio.io", "node-a").claims == {"u": record}
    assert json.loads(path.read_text())["version"] == ckpt.VERSION
    assert [p.name for p in path.parent.iterdir()] == [ckpt.FILE_NAME]  # no temp file left
    path.write_text("{not json")
    assert ckpt.load(path, "vnfio.io", "node-a").claims == {}
    assert (path.parent / (ckpt.FILE_NAME + ".corrupt")).read_text() == "{not json"
