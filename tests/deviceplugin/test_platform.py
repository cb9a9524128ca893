"""deviceType platform: SoC devices on vfio-platform / vfio-amba, the IOMMU group as the unit, on the full sample
board (iommu and noiommu), through the daemon and the kubelet stand-in; hot-plug of a platform device."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kinds_helpers import PLATFORM_POOL, pools_of, running, wait_until, write_pools
from kubelet_stub import KubeletStub, device_health

from deviceplugin.policy.config import parse_config
from deviceplugin.sampleboard import SampleBoard, SocDevice, full_sample_board

SOC = "nxp.com/soc"


@pytest.fixture
def full_board(tmp_path: Path) -> SampleBoard:
    return full_sample_board(tmp_path / "board")


@pytest.fixture
def full_noiommu_board(tmp_path: Path) -> SampleBoard:
    return full_sample_board(tmp_path / "board", noiommu=True)


def test_discovery_reads_names_drivers_groups_and_compatibles(full_board: SampleBoard) -> None:
    from deviceplugin.discovery.inventory import discover

    devices = {d.name: d for d in discover(full_board.sys, full_board.dev).of("platform")}
    assert set(devices) == {"3200000.sata", "2000000.i2c", "2010000.i2c", "2140000.mmc", "21c0000.serial"}
    assert devices["3200000.sata"].compatibles == ("fsl,lx2160a-ahci",)
    assert devices["2000000.i2c"].compatibles == ("fsl,lx2160a-i2c", "fsl,vf610-i2c")
    assert (devices["21c0000.serial"].bus, devices["21c0000.serial"].driver) == ("amba", "vfio-amba")
    assert devices["2140000.mmc"].driver == "sdhci-esdhc" and devices["3200000.sata"].iommu_group == 30


@pytest.mark.parametrize("mode,expected", [("whole", True), ("exclude", False)])
def test_a_multi_device_group_is_one_unit_or_left_out(full_board: SampleBoard, mode: str, expected: bool) -> None:
    pool = pools_of(full_board, {**PLATFORM_POOL, "iommuGroups": mode})[SOC]
    ids = {d.id for d in pool.devices}
    assert {"3200000.sata", "21c0000.serial"} <= ids
    assert ("iommu-group-31" in ids) is expected
    if not expected:
        assert dict(pool.excluded)["iommu-group-31"].endswith("and iommuGroups is exclude")
    assert "2000000.i2c" not in ids and "2010000.i2c" not in ids  # never split


def test_a_group_the_selectors_only_partly_take_is_never_split(full_board: SampleBoard) -> None:
    pool = pools_of(full_board, {**PLATFORM_POOL, "selectors": {"names": ["2000000.i2c"]}})[SOC]
    assert pool.devices == ()
    assert "a group is never split" in dict(pool.excluded)["iommu-group-31"]


def test_compatibles_name_a_kernel_owned_device_which_is_left_out_with_the_reason(full_board: SampleBoard) -> None:
    pool = pools_of(full_board, {**PLATFORM_POOL, "selectors": {"compatibles": ["fsl,esdhc"]}})[SOC]
    assert pool.devices == ()
    assert (
        dict(pool.excluded)["2140000.mmc"] == "2140000.mmc needs vfio-platform or vfio-amba but is bound to sdhci-esdhc"
    )


def test_selector_problems_name_pool_key_and_reason() -> None:
    bad = {**PLATFORM_POOL, "selectors": {"compatibles": "fsl,lx2160a-ahci", "vendors": ["8086"]}}
    problems = {(p.pool, p.key) for p in parse_config({"resourceList": [bad]}).problems}
    assert problems == {("soc", "selectors.compatibles"), ("soc", "selectors.vendors")}


def test_kubelet_gets_the_devices_and_allocate_gives_group_nodes_and_names(
    full_board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, tmp_path: Path
) -> None:
    config = write_pools(tmp_path / "config.json", PLATFORM_POOL)
    with running(full_board, plugin_dir, config):
        devices = kubelet.wait_for(SOC, lambda d: len(d) == 3)
        assert device_health(devices) == {
            "3200000.sata": "Healthy", "iommu-group-31": "Healthy", "21c0000.serial": "Healthy",
        }  # fmt: skip
        response = kubelet.allocate(SOC, ["iommu-group-31", "3200000.sata"])
        assert response.envs["PLATFORM_DEVICE_NXP_COM_SOC"] == "2000000.i2c,2010000.i2c,3200000.sata"
        assert [(d.host_path, d.container_path) for d in response.devices] == [
            (str(full_board.dev / "vfio/vfio"), "/dev/vfio/vfio"),
            (str(full_board.dev / "vfio/30"), "/dev/vfio/30"),
            (str(full_board.dev / "vfio/31"), "/dev/vfio/31"),
        ]
        # Unbinding one I2C controller makes its group not viable: the whole unit turns Unhealthy.
        full_board.unbind("2010000.i2c")
        full_board.bind("2010000.i2c", "i2c-imx")
        devices = kubelet.wait_for(SOC, lambda d: not d["iommu-group-31"].healthy)
        assert devices["3200000.sata"].healthy


def test_hot_plug_and_unplug_of_a_platform_device(
    full_board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, tmp_path: Path
) -> None:
    config = write_pools(tmp_path / "config.json", PLATFORM_POOL)
    with running(full_board, plugin_dir, config):
        kubelet.wait_for(SOC, lambda d: len(d) == 3)
        full_board.add_platform_device(SocDevice("8380000.dma-controller", ("fsl,lx2160a-qdma",), "vfio-platform", 40))
        devices = kubelet.wait_for(SOC, lambda d: "8380000.dma-controller" in d)
        assert devices["8380000.dma-controller"].healthy
        response = kubelet.allocate(SOC, ["8380000.dma-controller"])
        assert response.envs["PLATFORM_DEVICE_NXP_COM_SOC"] == "8380000.dma-controller"
        assert str(full_board.dev / "vfio/40") in [d.host_path for d in response.devices]
        full_board.remove_group_node(40)
        kubelet.wait_for(SOC, lambda d: not d["8380000.dma-controller"].healthy)
        full_board.remove_soc_device("8380000.dma-controller")
        kubelet.wait_for(SOC, lambda d: "8380000.dma-controller" not in d and len(d) == 3)


def test_noiommu_board_maps_the_noiommu_node(
    full_noiommu_board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, tmp_path: Path
) -> None:
    config = write_pools(tmp_path / "config.json", PLATFORM_POOL)
    with running(full_noiommu_board, plugin_dir, config):
        kubelet.wait_for(SOC, lambda d: len(d) == 3 and all(x.healthy for x in d.values()))
        response = kubelet.allocate(SOC, ["3200000.sata"])
        assert (str(full_noiommu_board.dev / "vfio/noiommu-30"), "/dev/vfio/30") in [
            (d.host_path, d.container_path) for d in response.devices
        ]
    wait_until(lambda: not any(plugin_dir.glob("vnfio-*.sock")), "the sockets to go")


def test_hostile_of_nodes_cost_only_the_compatibles(full_board: SampleBoard, tmp_path: Path) -> None:
    from deviceplugin.discovery.inventory import discover

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "compatible").write_bytes(b"evil,thing\0")
    sata = full_board.soc_dir("3200000.sata")
    (sata / "of_node").unlink()
    (sata / "of_node").symlink_to(outside)  # leads out of the sysfs tree
    i2c_node = (full_board.soc_dir("2000000.i2c") / "of_node").resolve()
    (i2c_node / "compatible").unlink()
    os.mkfifo(i2c_node / "compatible")  # would block a plain read
    inventory = discover(full_board.sys, full_board.dev)
    devices = {d.name: d for d in inventory.of("platform")}
    assert devices["3200000.sata"].compatibles == () and devices["2000000.i2c"].compatibles == ()
    assert devices["3200000.sata"].driver == "vfio-platform"  # the device itself is still read
    assert any("3200000.sata: of_node" in p and "outside" in p for p in inventory.problems)
    assert any("2000000.i2c: of_node" in p and "not a regular file" in p for p in inventory.problems)
