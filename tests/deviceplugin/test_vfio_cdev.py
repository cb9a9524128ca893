"""vfioInterface group / cdev / both: which nodes a container gets, the VFIO_CDEV_<RES> map, and health as cdev nodes
and /dev/iommu appear and go (iommu board with CONFIG_VFIO_DEVICE_CDEV; noiommu mode has no cdevs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kinds_helpers import PLATFORM_POOL, VF_POOL, pools_of, running, write_pools
from kubelet_stub import KubeletStub

from deviceplugin.policy.config import parse_config
from deviceplugin.sampleboard import SampleBoard, full_sample_board

VF = "intel.com/intel_vf"


@pytest.fixture
def full_board(tmp_path: Path) -> SampleBoard:
    return full_sample_board(tmp_path / "board")


def paths(response: object) -> list[str]:
    return [d.container_path for d in response.devices]  # type: ignore[attr-defined]


def test_sample_board_cdevs_follow_the_real_layout(full_board: SampleBoard) -> None:
    x = full_board.cdevs["0001:01:00.1"]
    vdir = full_board.pci_dir("0001:01:00.1") / "vfio-dev" / f"vfio{x}"
    assert (vdir / "dev").read_text() == f"511:{x}\n"
    assert (full_board.sys / "class/vfio-dev" / f"vfio{x}").resolve() == vdir.resolve()
    assert (full_board.dev / "vfio/devices" / f"vfio{x}").exists() and (full_board.dev / "iommu").exists()
    assert sorted(full_board.cdevs.values()) == list(range(len(full_board.cdevs)))  # lowest free index


@pytest.mark.parametrize(
    "interface,expected",
    [
        ("group", ["/dev/vfio/vfio", "/dev/vfio/22"]),
        ("cdev", ["/dev/iommu", "/dev/vfio/devices/vfio{a}", "/dev/vfio/devices/vfio{b}"]),
        (
            "both",
            ["/dev/vfio/vfio", "/dev/vfio/22", "/dev/iommu", "/dev/vfio/devices/vfio{a}", "/dev/vfio/devices/vfio{b}"],
        ),
    ],
)
def test_allocate_gives_the_nodes_of_the_interface(
    full_board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, tmp_path: Path, interface: str,
    expected: list[str],
) -> None:  # fmt: skip
    a, b = full_board.cdevs["0001:01:00.3"], full_board.cdevs["0001:01:00.4"]
    config = write_pools(tmp_path / "config.json", {**VF_POOL, "vfioInterface": interface})
    with running(full_board, plugin_dir, config):
        kubelet.wait_for(VF, lambda d: len(d) == 3 and all(x.healthy for x in d.values()))
        response = kubelet.allocate(VF, ["iommu-group-22"])
        assert sorted(paths(response)) == sorted(p.format(a=a, b=b) for p in expected)
        env = response.envs.get("VFIO_CDEV_INTEL_COM_INTEL_VF")
        if interface == "group":
            assert env is None
        else:
            assert env == f"0001:01:00.3=vfio{a},0001:01:00.4=vfio{b}"


def test_cdev_nodes_going_and_coming_change_health(
    full_board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, tmp_path: Path
) -> None:
    config = write_pools(tmp_path / "config.json", {**VF_POOL, "vfioInterface": "cdev"})
    with running(full_board, plugin_dir, config):
        kubelet.wait_for(VF, lambda d: len(d) == 3 and all(x.healthy for x in d.values()))
        full_board.remove_cdev_node("0001:01:00.2")
        devices = kubelet.wait_for(VF, lambda d: not d["0001:01:00.2"].healthy)
        assert devices["0001:01:00.1"].healthy
        full_board.add_cdev_node("0001:01:00.2")
        kubelet.wait_for(VF, lambda d: d["0001:01:00.2"].healthy)
        full_board.remove_iommufd()
        kubelet.wait_for(VF, lambda d: not any(x.healthy for x in d.values()))
        full_board.add_iommufd()
        kubelet.wait_for(VF, lambda d: all(x.healthy for x in d.values()))
        # The group node is not a cdev pool's business: its loss changes nothing.
        full_board.remove_group_node(20)
        full_board.remove_cdev_node("0001:01:00.1")
        kubelet.wait_for(VF, lambda d: not d["0001:01:00.1"].healthy)


def test_reasons_name_the_missing_nodes(full_board: SampleBoard) -> None:
    full_board.remove_cdev_node("3200000.sata")
    full_board.remove_iommufd()
    pool = pools_of(full_board, {**PLATFORM_POOL, "vfioInterface": "both"})["nxp.com/soc"]
    sata = pool.device("3200000.sata")
    assert sata is not None and not sata.healthy
    x = full_board.cdevs["3200000.sata"]
    assert f"{full_board.dev / 'iommu'} is missing (vfioInterface both)" in (sata.why_unhealthy or "")
    assert f"{full_board.dev / 'vfio/devices' / f'vfio{x}'} is missing" in (sata.why_unhealthy or "")


def test_noiommu_has_no_cdevs_so_a_cdev_pool_is_unhealthy(tmp_path: Path) -> None:
    board = full_sample_board(tmp_path / "board", noiommu=True)
    pool = pools_of(board, {**VF_POOL, "vfioInterface": "cdev"})[VF]
    assert len(pool.devices) == 3 and not any(d.healthy for d in pool.devices)
    assert "0001:01:00.1 has no VFIO cdev" in (pool.device("0001:01:00.1").why_unhealthy or "")  # type: ignore[union-attr]
    group_pool = pools_of(board, VF_POOL)[VF]
    assert all(d.healthy for d in group_pool.devices)


@pytest.mark.parametrize(
    "entry,reason",
    [
        ({**VF_POOL, "vfioInterface": "iommufd"}, 'expected group, cdev or both, got "iommufd"'),
        ({**VF_POOL, "vfioInterface": 1}, "expected group, cdev or both, got 1"),
        (
            {"resourceName": "d", "deviceType": "fslmc", "vfioInterface": "cdev"},
            "only for deviceType pci or platform, not fslmc",
        ),
    ],
)
def test_bad_vfio_interface_names_pool_key_and_reason(entry: dict[str, object], reason: str) -> None:
    result = parse_config({"resourceList": [entry]})
    assert result.pools == ()
    assert [(p.pool, p.key, p.reason) for p in result.problems] == [(entry["resourceName"], "vfioInterface", reason)]


def test_a_hot_plugged_vf_brings_its_cdev(
    full_board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, tmp_path: Path
) -> None:
    config = write_pools(tmp_path / "config.json", {**VF_POOL, "vfioInterface": "cdev"})
    with running(full_board, plugin_dir, config):
        kubelet.wait_for(VF, lambda d: len(d) == 3)
        full_board.add_vf("0001:01:00.5", 23)  # the kernel gives it the lowest free vfioX, udev the node
        devices = kubelet.wait_for(VF, lambda d: "0001:01:00.5" in d)
        assert devices["0001:01:00.5"].healthy
        x = full_board.cdevs["0001:01:00.5"]
        response = kubelet.allocate(VF, ["0001:01:00.5"])
        assert paths(response) == ["/dev/iommu", f"/dev/vfio/devices/vfio{x}"]
        assert response.envs["VFIO_CDEV_INTEL_COM_INTEL_VF"] == f"0001:01:00.5=vfio{x}"
        full_board.remove_pci_function("0001:01:00.5")
        kubelet.wait_for(VF, lambda d: "0001:01:00.5" not in d)
