"""Allocate gives a container exactly its groups' nodes and the env vars DPDK/KubeVirt read, whatever the ID
order; GetPreferredAllocation picks one NUMA node and the fewest PFs, and refuses impossible requests."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deviceplugin.discovery.inventory import discover
from deviceplugin.policy.allocation import allocate, preferred_allocation
from deviceplugin.policy.config import SAMPLE_CONFIG, parse_config
from deviceplugin.policy.pools import build_pools
from deviceplugin.records import (
    AllocationError,
    ContainerAllocation,
    DeviceNode,
    InvalidRequest,
    ResourcePool,
    UnhealthyDevices,
    UnknownDevices,
    UnsupportedRequest,
)
from deviceplugin.sampleboard import PciFunction, SampleBoard, build_sample_board, default_mc_objects

DPAA2 = "nxp.com/dpaa2_dprc"
VF = "intel.com/intel_vf"
PF_A, PF_B = "0001:01:00.0", "0001:02:00.0"
A1, A2 = "0001:01:00.1", "0001:01:00.2"
B1, B2, B3 = "0001:02:00.1", "0001:02:00.2", "0001:02:00.3"


def _pools(board: SampleBoard) -> dict[str, ResourcePool]:
    return build_pools(parse_config(SAMPLE_CONFIG).pools, discover(board.sys, board.dev)).pools


def _two_pf_board(root: Path, numa: dict[str, int] | None = None) -> SampleBoard:
    """Two i40e PFs: A with two VFs, B with three; each VF in its own group."""
    functions = [
        PciFunction("0001:00:00.0", 0x1957, 0x8D80, 0x060400, "pcieport", 19),
        PciFunction(PF_A, 0x8086, 0x1572, 0x020000, "i40e", 19, netdev="eth1"),
        PciFunction(PF_B, 0x8086, 0x1572, 0x020000, "i40e", 19, netdev="eth2"),
    ]
    for group, (bdf, pf) in enumerate([(A1, PF_A), (A2, PF_A), (B1, PF_B), (B2, PF_B), (B3, PF_B)], start=40):
        functions.append(PciFunction(bdf, 0x8086, 0x154C, 0x020000, "vfio-pci", group, physfn=pf))
    board = SampleBoard(root).build(default_mc_objects(), functions)
    for bdf, node in (numa or {}).items():
        (board.pci_dir(bdf) / "numa_node").write_text(f"{node}\n")
    return board


# ---------------------------------------------------------------------------------------------- allocate
def test_allocate_one_dprc(board: SampleBoard) -> None:
    result = allocate(_pools(board)[DPAA2], ["dprc.2"])
    assert result == ContainerAllocation(
        envs={
            "DPRC": "dprc.2",
            "DPAA2_DPRC_NXP_COM_DPAA2_DPRC": "dprc.2",
            "DPAA2_IOMMU_GROUP_NXP_COM_DPAA2_DPRC": "10",
        },
        devices=(
            DeviceNode(str(board.dev / "vfio/vfio"), "/dev/vfio/vfio", "rw"),
            DeviceNode(str(board.dev / "vfio/10"), "/dev/vfio/10", "rw"),
        ),
    )
    assert not any(Path(d.host_path).relative_to(board.dev).name.startswith("dprc") for d in result.devices)


def test_allocate_vfs_and_a_whole_group_in_any_order(board: SampleBoard) -> None:
    pool = _pools(board)[VF]
    ids = ["iommu-group-22", A1]
    results = {allocate(pool, list(order)) for order in itertools.permutations(ids)}
    assert len(results) == 1
    (result,) = results
    addresses = "0001:01:00.1,0001:01:00.3,0001:01:00.4"
    assert dict(result.envs) == {
        "PCIDEVICE_INTEL_COM_INTEL_VF": addresses,
        "PCI_RESOURCE_INTEL_COM_INTEL_VF": addresses,
    }
    assert result.devices == (
        DeviceNode(str(board.dev / "vfio/vfio"), "/dev/vfio/vfio"),
        DeviceNode(str(board.dev / "vfio/20"), "/dev/vfio/20"),
        DeviceNode(str(board.dev / "vfio/22"), "/dev/vfio/22"),
    )
    assert result.annotations == {}


def test_allocate_in_noiommu_mode(noiommu_board: SampleBoard) -> None:
    result = allocate(_pools(noiommu_board)[VF], [A2])
    assert result.devices[1] == DeviceNode(str(noiommu_board.dev / "vfio/noiommu-21"), "/dev/vfio/21")
    result = allocate(_pools(noiommu_board)[DPAA2], ["dprc.3"])
    assert result.devices[1] == DeviceNode(str(noiommu_board.dev / "vfio/noiommu-11"), "/dev/vfio/11")


def test_two_resources_never_clash_except_dprc(board: SampleBoard) -> None:
    pools = _pools(board)
    dpaa2 = allocate(pools[DPAA2], ["dprc.3"])
    vf = allocate(pools[VF], [A2])
    assert set(dpaa2.envs).isdisjoint(vf.envs)
    # Kubelet merges by container path: /dev/vfio/vfio appears in both and means the same node.
    assert {d.container_path for d in dpaa2.devices} & {d.container_path for d in vf.devices} == {"/dev/vfio/vfio"}


@pytest.mark.parametrize(
    ("resource", "ids", "outcome", "fragment"),
    [
        (VF, ["0001:09:00.1"], UnknownDevices, "unknown device IDs: 0001:09:00.1"),
        (DPAA2, ["dprc.1"], UnknownDevices, "unknown device IDs: dprc.1"),
        (DPAA2, ["dprc.4"], UnknownDevices, "dprc.4"),
        (VF, ["0001:01:00.0"], UnknownDevices, "0001:01:00.0"),
        (VF, [], InvalidRequest, "no device IDs"),
        (VF, [A1, A1], InvalidRequest, "repeated: 0001:01:00.1"),
        (DPAA2, ["dprc.3", "dprc.2"], UnsupportedRequest, "one DPRC per process"),
    ],
)
def test_allocate_refuses(
    board: SampleBoard, resource: str, ids: list[str], outcome: type[AllocationError], fragment: str
) -> None:
    with pytest.raises(AllocationError) as info:
        allocate(_pools(board)[resource], ids)
    assert type(info.value) is outcome
    assert fragment in str(info.value)


def test_allocate_refuses_an_unhealthy_device(board: SampleBoard) -> None:
    board.remove_group_node(20)
    with pytest.raises(AllocationError) as info:
        allocate(_pools(board)[VF], [A2, A1])
    assert type(info.value) is UnhealthyDevices
    assert "0001:01:00.1" in str(info.value) and "vfio/20 is missing" in str(info.value)


# ---------------------------------------------------------------------------------- preferred allocation
ALL = [A1, A2, B1, B2, B3]


@pytest.mark.parametrize(
    ("must", "size", "expected"),
    [
        ([], 2, [A1, A2]),  # both nodes can hold two: node 0 fits exactly and keeps node 1's three free
        ([], 3, [B1, B2, B3]),  # only node 1 holds three
        ([A1], 2, [A1, A2]),  # a must-include pins its node
        ([A1], 3, [A1, A2, B1]),  # node 0 first, then the rest
        ([], 4, [A1, B1, B2, B3]),
        ([], 0, []),
        ([B3, A2], 2, [A2, B3]),
    ],
)
def test_preferred_allocation_keeps_to_one_numa_node(
    tmp_path: Path, must: list[str], size: int, expected: list[str]
) -> None:
    board = _two_pf_board(tmp_path / "b", {A1: 0, A2: 0, B1: 1, B2: 1, B3: 1})
    assert preferred_allocation(_pools(board)[VF], ALL, must, size) == expected


@pytest.mark.parametrize(
    ("available", "must", "size", "expected"),
    [
        (ALL, [], 3, [B1, B2, B3]),  # one PF can hold all three
        (ALL, [A1], 2, [A1, A2]),  # reuse the PF already in the allocation
        (ALL, [B1], 3, [B1, B2, B3]),
        ([A1, A2, B1], [], 2, [A1, A2]),  # A has the most spare now
    ],
)
def test_preferred_allocation_uses_the_fewest_pfs(
    tmp_path: Path, available: list[str], must: list[str], size: int, expected: list[str]
) -> None:
    board = _two_pf_board(tmp_path / "b")  # no NUMA information at all
    assert preferred_allocation(_pools(board)[VF], available, must, size) == expected


def test_preferred_allocation_prefers_healthy_devices(tmp_path: Path) -> None:
    board = _two_pf_board(tmp_path / "b", {A1: 0, A2: 0, B1: 1, B2: 1, B3: 1})
    board.remove_group_node(42)  # B1
    pool = _pools(board)[VF]
    assert not pool.device(B1).healthy
    # Node 1 now has only two healthy devices, as many as node 0: the tie goes to node 0.
    assert preferred_allocation(pool, ALL, [], 2) == [A1, A2]
    # Pinned to node 1 by B2, the third device is a healthy one from node 0 rather than the unhealthy B1.
    assert preferred_allocation(pool, ALL, [B2], 3) == [A1, B2, B3]


def test_preferred_allocation_does_not_depend_on_order(tmp_path: Path) -> None:
    board = _two_pf_board(tmp_path / "b", {A1: 0, A2: 0, B1: 1, B2: 1, B3: 1})
    pool = _pools(board)[VF]
    rng = random.Random(4)
    expected = preferred_allocation(pool, ALL, [A2], 3)
    for _ in range(20):
        available = rng.sample(ALL, len(ALL))
        assert preferred_allocation(pool, available, [A2], 3) == expected


@pytest.mark.parametrize(
    ("available", "must", "size", "fragment"),
    [
        ([A1, A2], [], -1, "negative"),
        ([A1, A2], [], 3, "asked for 3 of 2"),
        ([A1, A2], [B1], 1, "not available: 0001:02:00.1"),
        ([A1, A2], [A1, A2], 1, "exceed size 1"),
        ([A1, "0001:07:00.1"], [], 1, "unknown device IDs: 0001:07:00.1"),
    ],
)
def test_preferred_allocation_refuses_impossible_requests(
    board: SampleBoard, available: list[str], must: list[str], size: int, fragment: str
) -> None:
    with pytest.raises(AllocationError) as info:
        preferred_allocation(_pools(board)[VF], available, must, size)
    assert type(info.value) is InvalidRequest
    assert fragment in str(info.value)


@pytest.fixture(scope="module")
def numa_pool(tmp_path_factory: pytest.TempPathFactory) -> ResourcePool:
    board = _two_pf_board(tmp_path_factory.mktemp("numa"), {A1: 0, A2: 0, B1: 1, B2: 1})
    return _pools(board)[VF]


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_preferred_allocation_contract_holds_for_any_valid_request(
    numa_pool: ResourcePool, data: st.DataObject
) -> None:
    available = data.draw(st.lists(st.sampled_from(ALL), unique=True, min_size=0, max_size=len(ALL)))
    must = data.draw(st.lists(st.sampled_from(available), unique=True)) if available else []
    size = data.draw(st.integers(min_value=len(must), max_value=len(available)))
    chosen = preferred_allocation(numa_pool, available, must, size)
    assert len(chosen) == size == len(set(chosen))
    assert set(must) <= set(chosen) <= set(available)
    assert preferred_allocation(numa_pool, list(reversed(available)), list(reversed(must)), size) == chosen


def test_default_board_prefers_single_vfs_deterministically(tmp_path: Path) -> None:
    board = build_sample_board(tmp_path / "b")
    pool = _pools(board)[VF]
    assert preferred_allocation(pool, ["iommu-group-22", A2, A1], [], 2) == [A1, A2]
