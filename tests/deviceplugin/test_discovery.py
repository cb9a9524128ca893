"""Discovery reads the generated LX2160A tree the way DPDK and the kernel would, never writes to it, and
survives malformed trees by reporting problems instead of crashing or trusting what it cannot verify."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from deviceplugin.discovery.inventory import discover
from deviceplugin.policy.config import SAMPLE_CONFIG, parse_config
from deviceplugin.policy.pools import build_pools
from deviceplugin.records import Inventory
from deviceplugin.sampleboard import FSL_MC_PLATFORM, SampleBoard, build_sample_board


def _snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Everything a write could change: type, size, mtime and link target of every entry."""
    snap = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath) / name
            st = os.lstat(path)
            target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
            snap[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns, target)
    return snap


def _container(inv: Inventory, name: str):
    return next(c for c in inv.containers if c.name == name)


def _function(inv: Inventory, address: str):
    return next(f for f in inv.pci if f.address == address)


def test_fsl_mc_containers_of_the_default_board(board: SampleBoard) -> None:
    inv = discover(board.sys, board.dev)
    assert [c.name for c in inv.containers] == ["dprc.1", "dprc.2", "dprc.3", "dprc.4"]
    root = _container(inv, "dprc.1")
    assert (root.parent, root.driver, root.iommu_group, root.is_root) == (None, "fsl_mc_dprc", 2, True)
    assert root.object_counts["dprc"] == 3  # its children are containers too
    assert "dpni.0" in root.unbound_objects
    dprc2 = _container(inv, "dprc.2")
    assert (dprc2.parent, dprc2.driver, dprc2.iommu_group) == ("dprc.1", "vfio-fsl-mc", 10)
    assert dict(dprc2.object_counts) == {"dpbp": 1, "dpcon": 1, "dpio": 2, "dpmcp": 1, "dpni": 1}
    assert dprc2.unbound_objects == () and dprc2.all_objects_vfio
    assert dict(_container(inv, "dprc.3").object_counts)["dpseci"] == 1
    dprc4 = _container(inv, "dprc.4")
    assert (dprc4.driver, dprc4.iommu_group, dict(dprc4.object_counts)) == (None, None, {})
    assert all(c.numa_node is None for c in inv.containers)
    assert inv.problems == ()


def test_pci_functions_of_the_default_board(board: SampleBoard) -> None:
    inv = discover(board.sys, board.dev)
    assert [f.address for f in inv.pci] == [
        "0001:00:00.0",
        "0001:01:00.0",
        "0001:01:00.1",
        "0001:01:00.2",
        "0001:01:00.3",
        "0001:01:00.4",
    ]
    port = _function(inv, "0001:00:00.0")
    assert (port.vendor, port.device, port.pci_class, port.driver, port.is_bridge) == (
        "1957",
        "8d80",
        "060400",
        "pcieport",
        True,
    )
    assert port.root_device is None
    pf = _function(inv, "0001:01:00.0")
    assert (pf.driver, pf.netdev, pf.pf_address, pf.iommu_group, pf.root_device) == (
        "i40e",
        "eth1",
        None,
        19,
        "0001:00:00.0",
    )
    vf = _function(inv, "0001:01:00.3")
    assert vf == type(vf)(
        address="0001:01:00.3",
        vendor="8086",
        device="154c",
        pci_class="020000",
        driver="vfio-pci",
        iommu_group=22,
        numa_node=None,
        pf_address="0001:01:00.0",
        pf_name="eth1",
        netdev=None,
        root_device="0001:00:00.0",
        vf_index=2,  # 0001:01:00.0/virtfn2 -> ../0001:01:00.3
    )


def test_iommu_groups_members_viability_and_nodes(board: SampleBoard) -> None:
    inv = discover(board.sys, board.dev)
    assert sorted(inv.groups) == [2, 10, 11, 19, 20, 21, 22]
    g22 = inv.groups[22]
    assert g22.members == ("0001:01:00.3", "0001:01:00.4")
    assert dict(g22.member_drivers) == {"0001:01:00.3": "vfio-pci", "0001:01:00.4": "vfio-pci"}
    assert g22.viable and g22.why_not_viable is None
    assert g22.dev_node == str(board.dev / "vfio/22") and not g22.noiommu
    # The root port on pcieport is allowed; the PF on i40e is not.
    g19 = inv.groups[19]
    assert not g19.viable and g19.why_not_viable == "0001:01:00.0 is bound to i40e"
    assert g19.dev_node is None
    assert "dprc.2" in inv.groups[10].members and inv.groups[10].viable
    assert not inv.groups[2].viable  # the kernel's own container
    assert inv.vfio_container_node == str(board.dev / "vfio/vfio")
    assert inv.noiommu is False


def test_noiommu_mode_names_the_noiommu_nodes(noiommu_board: SampleBoard) -> None:
    inv = discover(noiommu_board.sys, noiommu_board.dev)
    assert inv.noiommu
    for number in (10, 11, 20, 21, 22):
        assert inv.groups[number].noiommu
        assert inv.groups[number].dev_node == str(noiommu_board.dev / f"vfio/noiommu-{number}")


def test_a_vfio_noiommu_group_name_alone_selects_the_noiommu_node(board: SampleBoard) -> None:
    (board.sys / "kernel/iommu_groups/20/name").write_text("vfio-noiommu\n")
    board.remove_group_node(20)
    (board.dev / "vfio/noiommu-20").write_text("")
    inv = discover(board.sys, board.dev)
    assert inv.groups[20].noiommu and inv.groups[20].dev_node == str(board.dev / "vfio/noiommu-20")
    assert inv.groups[21].dev_node == str(board.dev / "vfio/21")


def test_numa_node_is_read_when_not_negative(board: SampleBoard) -> None:
    (board.pci_dir("0001:01:00.1") / "numa_node").write_text("1\n")
    inv = discover(board.sys, board.dev)
    assert _function(inv, "0001:01:00.1").numa_node == 1
    assert _function(inv, "0001:01:00.2").numa_node is None  # "-1"


def test_an_object_unbound_from_vfio_shows_in_its_container_and_group(board: SampleBoard) -> None:
    board.bind("dpio.17", "fsl_mc_dpio")
    inv = discover(board.sys, board.dev)
    assert _container(inv, "dprc.2").unbound_objects == ("dpio.17",)
    assert not inv.groups[10].viable and "dpio.17 is bound to fsl_mc_dpio" in inv.groups[10].why_not_viable
    board.unbind("dpio.17")  # driverless is viable, but DPDK cannot use the object
    inv = discover(board.sys, board.dev)
    assert _container(inv, "dprc.2").unbound_objects == ("dpio.17",) and inv.groups[10].viable


def test_unbound_container_with_a_group_link(tmp_path: Path) -> None:
    board = build_sample_board(tmp_path / "b", unbound_dprc_group=True)
    inv = discover(board.sys, board.dev)
    dprc4 = _container(inv, "dprc.4")
    assert (dprc4.driver, dprc4.iommu_group) == (None, 12)
    assert inv.groups[12].members == ("dprc.4",) and inv.groups[12].dev_node is None


def test_discovery_never_writes(board: SampleBoard, noiommu_board: SampleBoard) -> None:
    before = _snapshot(board.root)
    discover(board.sys, board.dev)
    assert _snapshot(board.root) == before


def test_missing_roots_give_an_empty_inventory(tmp_path: Path) -> None:
    inv = discover(tmp_path / "nosys", tmp_path / "nodev")
    assert (inv.containers, inv.pci, dict(inv.groups), inv.vfio_container_node) == ((), (), {}, None)


# --------------------------------------------------------------------------------------- malformed trees
def _relink(link: Path, target: str) -> None:
    link.unlink()
    link.symlink_to(target)


def _advertised(inv: Inventory) -> dict[str, dict[str, bool]]:
    built = build_pools(parse_config(SAMPLE_CONFIG).pools, inv)
    return {name: {d.id: d.healthy for d in pool.devices} for name, pool in built.pools.items()}


def _assert_only_viable_is_healthy(inv: Inventory) -> None:
    built = build_pools(parse_config(SAMPLE_CONFIG).pools, inv)
    for pool in built.pools.values():
        for dev in pool.devices:
            if dev.healthy:
                for number in dev.iommu_groups:
                    group = inv.groups[number]
                    assert group.viable and group.dev_node is not None
                    assert os.path.realpath(group.dev_node).startswith(os.path.realpath(inv.dev_root))


def test_dangling_group_link_is_reported_and_the_device_not_advertised(board: SampleBoard) -> None:
    link = board.pci_dir("0001:01:00.1") / "iommu_group"
    _relink(link, "../../../../../../../kernel/iommu_groups/99")
    inv = discover(board.sys, board.dev)
    assert _function(inv, "0001:01:00.1").iommu_group is None
    assert any("0001:01:00.1" in p and "iommu_group" in p for p in inv.problems)
    advertised = _advertised(inv)["intel.com/intel_vf"]
    assert "0001:01:00.1" not in advertised and advertised["0001:01:00.2"]
    _assert_only_viable_is_healthy(inv)


def test_group_link_to_a_non_integer_name(board: SampleBoard) -> None:
    (board.sys / "kernel/iommu_groups/abc/devices").mkdir(parents=True)
    _relink(board.pci_dir("0001:01:00.2") / "iommu_group", "../../../../../../../kernel/iommu_groups/abc")
    inv = discover(board.sys, board.dev)
    assert _function(inv, "0001:01:00.2").iommu_group is None
    assert any("'abc', which is not a number" in p for p in inv.problems)
    assert any("iommu group 'abc': skipped" in p for p in inv.problems)
    assert "0001:01:00.2" not in _advertised(inv)["intel.com/intel_vf"]


def test_group_link_pointing_elsewhere(board: SampleBoard) -> None:
    # The basename says 11, but the link does not lead to kernel/iommu_groups/11.
    (board.sys / "elsewhere/11").mkdir(parents=True)
    dprc3 = board.mc_dir("dprc.3")
    _relink(dprc3 / "iommu_group", os.path.relpath(board.sys / "elsewhere/11", dprc3))
    inv = discover(board.sys, board.dev)
    assert _container(inv, "dprc.3").iommu_group is None
    assert any("not at kernel/iommu_groups/11" in p for p in inv.problems)
    assert _advertised(inv)["nxp.com/dpaa2_dprc"] == {"dprc.2": True}


def test_device_missing_from_its_groups_member_list(board: SampleBoard) -> None:
    (board.sys / "kernel/iommu_groups/21/devices/0001:01:00.2").unlink()
    inv = discover(board.sys, board.dev)
    assert _function(inv, "0001:01:00.2").iommu_group is None
    assert any("does not list it" in p for p in inv.problems)


def test_symlink_loops_are_reported(board: SampleBoard) -> None:
    loop_a = board.sys / "bus/pci/devices/0001:05:00.0"
    loop_b = board.sys / "bus/pci/devices/0001:05:00.1"
    loop_a.symlink_to("0001:05:00.1")
    loop_b.symlink_to("0001:05:00.0")
    (board.sys / "bus/fsl-mc/devices/dprc.9").symlink_to("dprc.9")
    member = board.sys / "kernel/iommu_groups/20/devices/0001:01:00.9"
    member.symlink_to("0001:01:00.9")
    inv = discover(board.sys, board.dev)
    assert any("0001:05:00.0" in p and "loop" in p for p in inv.problems)
    assert any("dprc.9" in p and "loop" in p for p in inv.problems)
    # A member nobody can read makes its group non-viable: 0001:01:00.1 must not be handed out healthy.
    assert not inv.groups[20].viable
    advertised = _advertised(inv)["intel.com/intel_vf"]
    assert "0001:01:00.1" not in advertised and "iommu-group-20" not in advertised
    _assert_only_viable_is_healthy(inv)


def test_unreadable_and_non_regular_attributes(board: SampleBoard) -> None:
    vf4 = board.pci_dir("0001:01:00.4")
    (vf4 / "vendor").unlink()
    (vf4 / "vendor").mkdir()  # unreadable as an attribute, even for root
    vf2 = board.pci_dir("0001:01:00.2")
    (vf2 / "device").unlink()
    os.mkfifo(vf2 / "device")  # reading a FIFO would block the daemon forever
    (board.pci_dir("0001:01:00.1") / "numa_node").write_bytes(b"\xff\xfe\n")
    inv = discover(board.sys, board.dev)
    assert [f.address for f in inv.pci] == ["0001:00:00.0", "0001:01:00.0", "0001:01:00.1", "0001:01:00.3"]
    assert any("0001:01:00.4: skipped" in p and "vendor" in p for p in inv.problems)
    assert any("0001:01:00.2: skipped" in p and "not a regular file" in p for p in inv.problems)
    assert _function(inv, "0001:01:00.1").numa_node is None
    advertised = _advertised(inv)["intel.com/intel_vf"]
    # Group 22 still holds 0001:01:00.4, which could not be read: the group is not handed out half.
    assert advertised == {"0001:01:00.1": True}
    _assert_only_viable_is_healthy(inv)


def test_dangling_container_and_object_entries(board: SampleBoard) -> None:
    (board.sys / "bus/fsl-mc/devices/dprc.7").symlink_to("../../../devices/platform/soc/nowhere/dprc.7")
    # A container link that leads to a different container's directory.
    (board.sys / "bus/fsl-mc/devices/dprc.8").symlink_to(
        os.path.relpath(board.mc_dir("dprc.2"), board.sys / "bus/fsl-mc/devices")
    )
    inv = discover(board.sys, board.dev)
    assert [c.name for c in inv.containers] == ["dprc.1", "dprc.2", "dprc.3", "dprc.4"]
    assert any("dprc.7" in p and "dangling" in p for p in inv.problems)
    assert any("dprc.8" in p and "not to dprc.8" in p for p in inv.problems)


@pytest.mark.parametrize("kind", ["symlink-out", "directory", "symlink-in"])
def test_group_nodes_must_be_real_nodes_inside_the_dev_root(board: SampleBoard, tmp_path: Path, kind: str) -> None:
    node = board.dev / "vfio/21"
    node.unlink()
    if kind == "symlink-out":
        outside = tmp_path / "outside-node"
        outside.write_text("")
        node.symlink_to(outside)
    elif kind == "symlink-in":
        node.symlink_to("20")
    else:
        node.mkdir()
    inv = discover(board.sys, board.dev)
    assert inv.groups[21].dev_node is None
    assert any(str(node) in p for p in inv.problems)
    assert _advertised(inv)["intel.com/intel_vf"]["0001:01:00.2"] is False
    _assert_only_viable_is_healthy(inv)


def test_fsl_mc_objects_are_counted_from_real_subdirectories_only(board: SampleBoard) -> None:
    dprc2 = board.sys / FSL_MC_PLATFORM / "dprc.1/dprc.2"
    (dprc2 / "dpni.9").symlink_to("dpni.1")  # DPDK's DT_DIR scan skips symlinks: so do we
    (dprc2 / "notanobject").mkdir()
    inv = discover(board.sys, board.dev)
    assert dict(_container(inv, "dprc.2").object_counts)["dpni"] == 1
