"""Pools over the generated board: the right units, never a split group or a kernel-owned device, selectors
that AND across keys and OR within one, first pool wins a contested device, and health that is sticky."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deviceplugin.discovery.inventory import discover
from deviceplugin.policy.config import SAMPLE_CONFIG, PoolConfig, parse_config
from deviceplugin.policy.pools import PoolBuild, build_pools
from deviceplugin.records import DeviceNode, ResourcePool
from deviceplugin.sampleboard import PciFunction, SampleBoard, build_sample_board, default_pci_functions

DPAA2 = "nxp.com/dpaa2_dprc"
VF = "intel.com/intel_vf"


def _configs(*entries: dict[str, Any]) -> tuple[PoolConfig, ...]:
    result = parse_config({"resourceList": list(entries)})
    assert result.problems == ()
    return result.pools


def _pci(selectors: dict[str, Any], **keys: Any) -> dict[str, Any]:
    return {"resourceName": "vf", "resourcePrefix": "example.com", "deviceType": "pci", "selectors": selectors, **keys}


def _fslmc(selectors: dict[str, Any]) -> dict[str, Any]:
    return {"resourceName": "dprc", "resourcePrefix": "example.com", "deviceType": "fslmc", "selectors": selectors}


def _build(board: SampleBoard, configs=None, previous: dict[str, ResourcePool] | None = None) -> PoolBuild:
    configs = parse_config(SAMPLE_CONFIG).pools if configs is None else configs
    return build_pools(configs, discover(board.sys, board.dev), previous)


def _ids(pool: ResourcePool) -> list[str]:
    return [d.id for d in pool.devices]


def _health(pool: ResourcePool) -> dict[str, bool]:
    return {d.id: d.healthy for d in pool.devices}


def _excluded(pool: ResourcePool) -> dict[str, str]:
    return dict(pool.excluded)


# -------------------------------------------------------------------------------------- the default board
def test_default_board_gives_the_expected_pools(board: SampleBoard) -> None:
    built = _build(board)
    assert built.problems == ()
    assert list(built.pools) == [DPAA2, VF]
    dpaa2, vf = built.pools[DPAA2], built.pools[VF]
    assert _health(dpaa2) == {"dprc.2": True, "dprc.3": True}
    assert _health(vf) == {"0001:01:00.1": True, "0001:01:00.2": True, "iommu-group-22": True}
    group22 = vf.device("iommu-group-22")
    assert group22.pci_addresses == ("0001:01:00.3", "0001:01:00.4") and group22.iommu_groups == (22,)
    assert group22.pfs == ("0001:01:00.0",)
    assert "root container" in _excluded(dpaa2)["dprc.1"]
    assert "needs driver vfio-fsl-mc but is unbound" in _excluded(dpaa2)["dprc.4"]
    never = {"dprc.1", "dprc.4", "0001:01:00.0", "0001:00:00.0"}
    for pool in built.pools.values():
        assert never.isdisjoint(_ids(pool))
        for dev in pool.devices:
            assert dev.numa_node is None


def test_device_nodes_are_vfio_only_and_under_the_dev_root(board: SampleBoard) -> None:
    built = _build(board)
    vfio = DeviceNode(str(board.dev / "vfio/vfio"), "/dev/vfio/vfio", "rw")
    assert built.pools[DPAA2].device("dprc.2").nodes == (vfio, DeviceNode(str(board.dev / "vfio/10"), "/dev/vfio/10"))
    assert built.pools[VF].device("iommu-group-22").nodes == (
        vfio,
        DeviceNode(str(board.dev / "vfio/22"), "/dev/vfio/22", "rw"),
    )
    for pool in built.pools.values():
        for dev in pool.devices:
            for node in dev.nodes:
                assert node.host_path.startswith(str(board.dev / "vfio") + "/")
                assert "dprc" not in node.host_path and node.permissions == "rw"


def test_noiommu_board_maps_host_noiommu_nodes_to_plain_container_paths(noiommu_board: SampleBoard) -> None:
    built = _build(noiommu_board)
    dev = noiommu_board.dev
    assert built.pools[DPAA2].device("dprc.3").nodes[1] == DeviceNode(str(dev / "vfio/noiommu-11"), "/dev/vfio/11")
    assert built.pools[VF].device("0001:01:00.1").nodes == (
        DeviceNode(str(dev / "vfio/vfio"), "/dev/vfio/vfio"),
        DeviceNode(str(dev / "vfio/noiommu-20"), "/dev/vfio/20"),
    )
    assert all(d.healthy for p in built.pools.values() for d in p.devices)


def test_exclude_mode_leaves_the_shared_group_out_with_a_reason(board: SampleBoard) -> None:
    built = _build(board, _configs(_pci({"vendors": ["8086"], "devices": ["154c"]}, iommuGroups="exclude")))
    pool = built.pools["example.com/vf"]
    assert _ids(pool) == ["0001:01:00.1", "0001:01:00.2"]
    reason = _excluded(pool)["iommu-group-22"]
    assert "0001:01:00.3, 0001:01:00.4" in reason and "iommuGroups is exclude" in reason


def test_unbound_container_with_a_group_is_still_left_out(tmp_path: Path) -> None:
    board = build_sample_board(tmp_path / "b", unbound_dprc_group=True)
    pool = _build(board).pools[DPAA2]
    assert _ids(pool) == ["dprc.2", "dprc.3"]
    assert "needs driver vfio-fsl-mc" in _excluded(pool)["dprc.4"]


@pytest.mark.parametrize(
    ("min_objects", "ids", "left_out"),
    [
        ({"dpseci": 1}, ["dprc.3"], {"dprc.2": "has 0 dpseci, needs 1"}),
        ({"dpio": 2, "dpni": 1}, ["dprc.2", "dprc.3"], {}),
        ({"dpio": 3}, [], {"dprc.2": "has 2 dpio, needs 3", "dprc.3": "has 2 dpio, needs 3"}),
        ({"dpdmai": 0}, ["dprc.2", "dprc.3"], {}),
    ],
)
def test_min_objects_excludes_with_a_reason(
    board: SampleBoard, min_objects: dict[str, int], ids: list[str], left_out: dict[str, str]
) -> None:
    pool = _build(board, _configs(_fslmc({"minObjects": min_objects}))).pools["example.com/dprc"]
    assert _ids(pool) == ids
    for name, fragment in left_out.items():
        assert fragment in _excluded(pool)[name]


# ------------------------------------------------------------------------------------------- selectors
VFS = ["0001:01:00.1", "0001:01:00.2", "iommu-group-22"]


@pytest.mark.parametrize(
    ("selectors", "ids"),
    [
        ({}, VFS),
        ({"vendors": ["8086"]}, VFS),
        ({"vendors": ["15b3"]}, []),
        ({"vendors": ["15b3", "8086"]}, VFS),  # OR within a key
        ({"devices": ["154c"]}, VFS),
        ({"devices": ["1572"]}, []),  # the PF: selected, but left out (i40e)
        ({"drivers": ["vfio-pci"]}, VFS),
        ({"pciAddresses": ["0001:01:00.2"]}, ["0001:01:00.2"]),
        ({"pciAddresses": ["0001:01:00.2", "0001:01:00.1"]}, ["0001:01:00.1", "0001:01:00.2"]),
        ({"pciAddresses": ["0001:01:00.3", "0001:01:00.4"]}, ["iommu-group-22"]),
        ({"pfNames": ["eth1"]}, VFS),
        ({"pfNames": ["eth9"]}, []),
        ({"rootDevices": ["0001:00:00.0"]}, VFS),  # the upstream port
        ({"rootDevices": ["0001:01:00.0"]}, VFS),  # the PF, as in sriov-dp
        ({"rootDevices": ["0002:00:00.0"]}, []),
        ({"vendors": ["8086"], "pciAddresses": ["0001:01:00.1"]}, ["0001:01:00.1"]),  # AND across keys
        ({"vendors": ["1957"], "pciAddresses": ["0001:01:00.1"]}, []),
        ({"devices": ["154c"], "drivers": ["vfio-pci"], "pfNames": ["eth1"]}, VFS),
    ],
)
def test_pci_selectors(board: SampleBoard, selectors: dict[str, Any], ids: list[str]) -> None:
    pool = _build(board, _configs(_pci(selectors))).pools["example.com/vf"]
    assert _ids(pool) == ids


def test_selected_but_unusable_pci_devices_are_explained(board: SampleBoard) -> None:
    pool = _build(board, _configs(_pci({"vendors": ["8086", "1957"]}))).pools["example.com/vf"]
    excluded = _excluded(pool)
    assert "needs a vfio driver but is bound to i40e" in excluded["0001:01:00.0"]
    assert "PCI bridge" in excluded["0001:00:00.0"]
    # A group is never split: taking only one of its functions leaves the whole group out.
    pool = _build(board, _configs(_pci({"pciAddresses": ["0001:01:00.3"]}))).pools["example.com/vf"]
    assert _ids(pool) == []
    assert "do not take 0001:01:00.4 and a group is never split" in _excluded(pool)["iommu-group-22"]


def test_pfnames_selects_silently_while_drivers_explains(board: SampleBoard) -> None:
    pool = _build(board, _configs(_pci({"pfNames": ["eth9"]}))).pools["example.com/vf"]
    assert pool.excluded == ()
    board.unbind("0001:01:00.1")
    pool = _build(board, _configs(_pci({"drivers": ["vfio-pci"], "devices": ["154c"]}))).pools["example.com/vf"]
    assert _ids(pool) == ["0001:01:00.2", "iommu-group-22"]
    assert _excluded(pool) == {"0001:01:00.1": "0001:01:00.1 needs driver vfio-pci but is unbound"}


@pytest.mark.parametrize(
    ("selectors", "ids"),
    [
        ({}, ["dprc.2", "dprc.3"]),
        ({"containers": ["dprc.3"]}, ["dprc.3"]),
        ({"containers": ["dprc.3", "dprc.2"]}, ["dprc.2", "dprc.3"]),
        ({"containers": ["dprc.1"]}, []),
        ({"drivers": ["vfio-fsl-mc"]}, ["dprc.2", "dprc.3"]),
        ({"drivers": ["fsl_mc_dprc"]}, []),
        ({"containers": ["dprc.2"], "minObjects": {"dpseci": 1}}, []),
        ({"containers": ["dprc.3"], "minObjects": {"dpseci": 1}}, ["dprc.3"]),
    ],
)
def test_fslmc_selectors(board: SampleBoard, selectors: dict[str, Any], ids: list[str]) -> None:
    pool = _build(board, _configs(_fslmc(selectors))).pools["example.com/dprc"]
    assert _ids(pool) == ids


def test_a_device_claimed_by_two_pools_stays_with_the_first(board: SampleBoard) -> None:
    one = {"resourceName": "one_vf", "resourcePrefix": "example.com", "deviceType": "pci"}
    one["selectors"] = {"pciAddresses": ["0001:01:00.1"]}
    built = _build(board, _configs(SAMPLE_CONFIG["resourceList"][1], one))
    assert _ids(built.pools[VF]) == VFS
    assert _ids(built.pools["example.com/one_vf"]) == []
    (problem,) = built.problems
    assert (problem.pool, problem.key) == ("one_vf", "selectors")
    assert "0001:01:00.1" in problem.reason and VF in problem.reason
    assert _excluded(built.pools["example.com/one_vf"]) == {"0001:01:00.1": f"already in pool {VF}"}
    # In the other order the narrow pool keeps it.
    built = _build(board, _configs(one, SAMPLE_CONFIG["resourceList"][1]))
    assert _ids(built.pools["example.com/one_vf"]) == ["0001:01:00.1"]
    assert _ids(built.pools[VF]) == ["0001:01:00.2", "iommu-group-22"]
    assert built.problems[0].pool == "intel_vf"


def test_two_dpaa2_pools_cannot_share_a_container(board: SampleBoard) -> None:
    second = {"resourceName": "crypto", "resourcePrefix": "nxp.com", "deviceType": "fslmc"}
    second["selectors"] = {"minObjects": {"dpseci": 1}}
    built = _build(board, _configs(second, SAMPLE_CONFIG["resourceList"][0]))
    assert _ids(built.pools["nxp.com/crypto"]) == ["dprc.3"]
    assert _ids(built.pools[DPAA2]) == ["dprc.2"]
    assert [p.key for p in built.problems] == ["selectors"]


def test_numa_of_a_unit_is_the_common_node(board: SampleBoard) -> None:
    for bdf, node in {"0001:01:00.1": "1", "0001:01:00.3": "0", "0001:01:00.4": "0"}.items():
        (board.pci_dir(bdf) / "numa_node").write_text(node + "\n")
    pool = _build(board).pools[VF]
    assert {d.id: d.numa_node for d in pool.devices} == {"0001:01:00.1": 1, "0001:01:00.2": None, "iommu-group-22": 0}
    (board.pci_dir("0001:01:00.4") / "numa_node").write_text("1\n")
    assert _build(board).pools[VF].device("iommu-group-22").numa_node is None


# -------------------------------------------------------------------------------------------- stickiness
def test_unbinding_a_vf_turns_it_unhealthy_and_rebinding_heals_it(board: SampleBoard) -> None:
    first = _build(board).pools
    board.unbind("0001:01:00.1")
    fresh = _build(board).pools[VF]
    assert "0001:01:00.1" not in _ids(fresh)  # without history it is simply not eligible
    sticky = _build(board, previous=first).pools[VF]
    assert _health(sticky) == {"0001:01:00.1": False, "0001:01:00.2": True, "iommu-group-22": True}
    assert "needs driver vfio-pci but is unbound" in sticky.device("0001:01:00.1").why_unhealthy
    board.bind("0001:01:00.1", "i40e")  # the kernel driver grabs it: group no longer viable either
    sticky = _build(board, previous={VF: sticky}).pools[VF]
    why = sticky.device("0001:01:00.1").why_unhealthy
    assert "bound to i40e" in why and "IOMMU group 20 is not viable" in why
    board.bind("0001:01:00.1", "vfio-pci")
    healed = _build(board, previous={VF: sticky}).pools[VF]
    assert _health(healed) == {"0001:01:00.1": True, "0001:01:00.2": True, "iommu-group-22": True}
    assert healed.device("0001:01:00.1").why_unhealthy is None


def test_a_missing_group_node_makes_a_device_unhealthy_until_it_returns(board: SampleBoard) -> None:
    board.remove_group_node(21)
    pool = _build(board).pools[VF]
    assert _health(pool)["0001:01:00.2"] is False
    assert pool.device("0001:01:00.2").why_unhealthy == f"{board.dev / 'vfio/21'} is missing"
    board.add_group_node(21)
    assert _health(_build(board, previous={VF: pool}).pools[VF])["0001:01:00.2"] is True


def test_missing_vfio_container_node_makes_everything_unhealthy(board: SampleBoard) -> None:
    (board.dev / "vfio/vfio").unlink()
    built = _build(board)
    assert all(not d.healthy for p in built.pools.values() for d in p.devices)
    assert built.pools[DPAA2].device("dprc.2").nodes[0].host_path == str(board.dev / "vfio/vfio")


def test_removed_functions_leave_and_new_vfs_join(board: SampleBoard) -> None:
    first = _build(board).pools
    board.remove_pci_function("0001:01:00.1")
    board.add_vf("0001:01:00.5", 23)
    pool = _build(board, previous=first).pools[VF]
    assert _health(pool) == {"0001:01:00.2": True, "0001:01:00.5": True, "iommu-group-22": True}
    assert pool.device("0001:01:00.5").nodes[1] == DeviceNode(str(board.dev / "vfio/23"), "/dev/vfio/23")


def test_a_shared_group_with_an_unbound_member_stays_as_one_unhealthy_unit(board: SampleBoard) -> None:
    first = _build(board).pools
    board.unbind("0001:01:00.4")
    pool = _build(board, previous=first).pools[VF]
    dev = pool.device("iommu-group-22")
    assert not dev.healthy and dev.pci_addresses == ("0001:01:00.3", "0001:01:00.4")
    assert "0001:01:00.4 needs driver vfio-pci but is unbound" in dev.why_unhealthy
    assert "iommu-group-22" not in _ids(_build(board).pools[VF])


def test_identity_selector_changes_drop_sticky_devices(board: SampleBoard) -> None:
    first = _build(board).pools
    narrowed = copy.deepcopy(SAMPLE_CONFIG["resourceList"][1])
    narrowed["selectors"]["pciAddresses"] = ["0001:01:00.2"]
    board.unbind("0001:01:00.1")
    pool = _build(board, _configs(narrowed), previous=first).pools[VF]
    assert _ids(pool) == ["0001:01:00.2"]


def test_dpaa2_health_follows_objects_container_and_node(board: SampleBoard) -> None:
    first = _build(board).pools
    board.bind("dpni.1", "fsl_dpaa2_eth")
    pool = _build(board).pools[DPAA2]  # still eligible, but its group is not viable
    why = pool.device("dprc.2").why_unhealthy
    assert "objects not bound to vfio-fsl-mc: dpni.1" in why and "IOMMU group 10 is not viable" in why
    board.bind("dpni.1", "vfio-fsl-mc")
    board.unbind("dprc.2")
    assert "dprc.2" not in _ids(_build(board).pools[DPAA2])
    sticky = _build(board, previous=first).pools[DPAA2]
    assert _health(sticky) == {"dprc.2": False, "dprc.3": True}
    assert "needs driver vfio-fsl-mc but is unbound" in sticky.device("dprc.2").why_unhealthy
    board.bind("dprc.2", "vfio-fsl-mc")
    board.remove_group_node(11)
    pool = _build(board, previous={DPAA2: sticky}).pools[DPAA2]
    assert _health(pool) == {"dprc.2": True, "dprc.3": False}


def test_a_custom_board_with_two_pfs(tmp_path: Path) -> None:
    functions = [*default_pci_functions(), PciFunction("0001:02:00.0", 0x8086, 0x1572, 0x020000, "i40e", 30, "eth2")]
    functions.append(PciFunction("0001:02:00.1", 0x8086, 0x154C, 0x020000, "vfio-pci", 31, physfn="0001:02:00.0"))
    board = SampleBoard(tmp_path / "b").build(pci_functions=functions)
    pool = _build(board, _configs(_pci({"pfNames": ["eth2"]}))).pools["example.com/vf"]
    assert _ids(pool) == ["0001:02:00.1"] and pool.device("0001:02:00.1").pfs == ("0001:02:00.0",)


# ------------------------------------------------------------------------- invariants under kernel events
PCI_NAMES = ["0001:01:00.1", "0001:01:00.2", "0001:01:00.3", "0001:01:00.4"]
MC_NAMES = ["dprc.2", "dprc.3", "dpni.1", "dpio.16", "dpmcp.3", "dpseci.0"]
EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("driver"), st.sampled_from(PCI_NAMES), st.sampled_from(["vfio-pci", "i40e", None])),
        st.tuples(
            st.just("driver"), st.sampled_from(MC_NAMES), st.sampled_from(["vfio-fsl-mc", "fsl_mc_allocator", None])
        ),
        st.tuples(st.just("node"), st.sampled_from([10, 11, 20, 21, 22]), st.booleans()),
    ),
    max_size=6,
)


@pytest.fixture(scope="module")
def event_board(tmp_path_factory: pytest.TempPathFactory) -> SampleBoard:
    return build_sample_board(tmp_path_factory.mktemp("events"))


def _apply(board: SampleBoard, event: tuple[Any, ...]) -> None:
    kind, name, value = event
    if kind == "node" and value:
        board.add_group_node(name)
    elif kind == "node":
        board.remove_group_node(name)
    elif value is None:
        board.unbind(name)
    else:
        board.bind(name, value)


def _assert_safe(board: SampleBoard, built: PoolBuild) -> None:
    inv = discover(board.sys, board.dev)
    drivers = {f.address: f.driver for f in inv.pci}
    containers = {c.name: c for c in inv.containers}
    taken: list[str] = []
    for pool in built.pools.values():
        for dev in pool.devices:
            assert dev.id not in {"dprc.1", "dprc.4", "0001:01:00.0", "0001:00:00.0"}
            for number in dev.iommu_groups:
                group = inv.groups[number]
                members = [m for m in group.members if m in drivers and m != "0001:00:00.0"]
                if dev.pci_addresses:
                    assert list(dev.pci_addresses) == members  # the whole group, never a part
                if dev.healthy:
                    assert group.viable and group.dev_node is not None and inv.vfio_container_node is not None
            if dev.healthy:
                assert all(drivers[a] == "vfio-pci" for a in dev.pci_addresses)
                if dev.container:
                    assert containers[dev.container].driver == "vfio-fsl-mc"
                    assert containers[dev.container].all_objects_vfio
            taken += list(dev.pci_addresses) + ([dev.container] if dev.container else [])
    assert len(taken) == len(set(taken))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=EVENTS)
def test_nothing_unsafe_is_ever_healthy_and_groups_never_split(event_board: SampleBoard, events: list) -> None:
    configs = (
        *parse_config(SAMPLE_CONFIG).pools,
        *_configs({"resourceName": "any_vf", "deviceType": "pci", "selectors": {"vendors": ["8086"]}}),
    )
    original = {**{n: event_board.pci[n].driver for n in PCI_NAMES}, **{n: event_board.mc[n].driver for n in MC_NAMES}}
    before = _build(event_board, configs).pools
    try:
        for event in events:
            _apply(event_board, event)
        fresh = _build(event_board, configs)
        _assert_safe(event_board, fresh)
        sticky = _build(event_board, configs, previous=before)
        _assert_safe(event_board, sticky)
        # Stickiness keeps every device that still exists: nothing was removed from sysfs here.
        for name, pool in before.items():
            assert set(_ids(pool)) <= set(_ids(sticky.pools[name]))
    finally:
        for name, driver in original.items():
            _apply(event_board, ("driver", name, driver))
        for group in (10, 11, 20, 21, 22):
            event_board.add_group_node(group)
