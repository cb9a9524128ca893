"""The generated board must read like a real LX2160A sysfs: relative links that resolve, kernel formats."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from deviceplugin.sampleboard import FSL_MC_PLATFORM, SampleBoard, build_sample_board


def _all_links(root: Path) -> list[Path]:
    return [Path(d) / n for d, dirs, files in os.walk(root) for n in dirs + files if (Path(d) / n).is_symlink()]


def test_every_symlink_is_relative_and_resolves_inside_the_tree(board: SampleBoard) -> None:
    links = _all_links(board.sys)
    assert len(links) > 100
    for link in links:
        target = os.readlink(link)
        assert not target.startswith("/"), link
        resolved = link.resolve(strict=True)
        assert resolved.is_relative_to(board.sys.resolve()), link


def test_link_depth_is_the_kernels(board: SampleBoard) -> None:
    dpni1 = board.sys / FSL_MC_PLATFORM / "dprc.1/dprc.2/dpni.1"
    assert os.readlink(dpni1 / "iommu_group") == "../../../../../../../kernel/iommu_groups/10"
    assert os.readlink(dpni1 / "subsystem") == "../../../../../../../bus/fsl-mc"
    assert (
        os.readlink(board.sys / "bus/fsl-mc/devices/dpni.1")
        == "../../../devices/platform/soc/80c000000.fsl-mc/dprc.1/dprc.2/dpni.1"
    )
    assert os.readlink(board.sys / FSL_MC_PLATFORM / "dprc.1/driver") == "../../../../../bus/fsl-mc/drivers/fsl_mc_dprc"
    vf = board.sys / "bus/pci/devices/0001:01:00.1"
    assert os.readlink(vf / "driver") == "../../../../../../../bus/pci/drivers/vfio-pci"
    assert os.readlink(vf / "physfn") == "../0001:01:00.0"
    root_port = board.sys / "bus/pci/devices/0001:00:00.0"
    assert os.readlink(root_port / "driver") == "../../../../../../bus/pci/drivers/pcieport"
    assert (
        os.readlink(board.sys / "kernel/iommu_groups/20/devices/0001:01:00.1")
        == "../../../../devices/platform/soc/3800000.pcie/pci0001:00/0001:00:00.0/0001:01:00.1"
    )


def test_fsl_mc_objects_are_real_subdirectories_of_their_container(board: SampleBoard) -> None:
    # DPDK's fslmc scan opendir()s the container and takes DT_DIR entries split at '.'.
    container = board.sys / "bus/fsl-mc/devices/dprc.2"
    entries = {e.name for e in os.scandir(container) if e.is_dir(follow_symlinks=False) and "." in e.name}
    assert entries == {"dpni.1", "dpio.16", "dpio.17", "dpbp.1", "dpmcp.2", "dpcon.1"}


def test_fsl_mc_file_formats(board: SampleBoard) -> None:
    devs = board.sys / "bus/fsl-mc/devices"
    assert (devs / "dpni.1/modalias").read_text() == "fsl-mc:v00001957ddpni\n"
    assert (devs / "dpni.1/driver_override").read_text() == "vfio-fsl-mc\n"
    assert (devs / "dpni.0/driver_override").read_text() == "(null)\n"
    assert (devs / "dpni.1/uevent").read_text() == (
        "DEVTYPE=fsl_mc_bus_dpni\nDRIVER=vfio-fsl-mc\nMODALIAS=fsl-mc:v00001957ddpni\n"
    )
    assert (devs / "dpmac.3/uevent").read_text() == "DEVTYPE=fsl_mc_bus_dpmac\nMODALIAS=fsl-mc:v00001957ddpmac\n"


def test_unbound_container_has_no_children_driver_or_group(board: SampleBoard) -> None:
    dprc4 = board.sys / "bus/fsl-mc/devices/dprc.4"
    assert sorted(p.name for p in dprc4.iterdir()) == [
        "driver_override", "modalias", "power", "subsystem", "uevent"
    ]


def test_unbound_container_group_variant(tmp_path: Path) -> None:
    b = build_sample_board(tmp_path, unbound_dprc_group=True)
    assert os.readlink(b.sys / "bus/fsl-mc/devices/dprc.4/iommu_group").endswith("kernel/iommu_groups/12")
    assert not (b.dev / "vfio/12").exists()


def test_pci_file_formats(board: SampleBoard) -> None:
    vf = board.sys / "bus/pci/devices/0001:01:00.1"
    assert (vf / "vendor").read_text() == "0x8086\n"
    assert (vf / "device").read_text() == "0x154c\n"
    assert (vf / "class").read_text() == "0x020000\n"
    assert (vf / "numa_node").read_text() == "-1\n"
    assert (vf / "driver_override").read_text() == "(null)\n"
    assert (vf / "uevent").read_text().splitlines() == [
        "DRIVER=vfio-pci",
        "PCI_CLASS=20000",
        "PCI_ID=8086:154C",
        "PCI_SUBSYS_ID=8086:0000",
        "PCI_SLOT_NAME=0001:01:00.1",
        "MODALIAS=pci:v00008086d0000154Csv00008086sd00000000bc02sc00i00",
    ]
    pf = board.sys / "bus/pci/devices/0001:01:00.0"
    assert (pf / "sriov_numvfs").read_text() == "4\n"
    assert (pf / "sriov_totalvfs").read_text() == "64\n"
    assert [os.readlink(pf / f"virtfn{i}") for i in range(4)] == [f"../0001:01:00.{i}" for i in range(1, 5)]
    assert (board.sys / "class/net/eth1").resolve() == (pf / "net/eth1").resolve()
    assert sorted(p.name for p in (board.sys / "kernel/iommu_groups/22/devices").iterdir()) == [
        "0001:01:00.3", "0001:01:00.4"
    ]


def test_dev_nodes(board: SampleBoard) -> None:
    vfio = board.dev / "vfio"
    assert sorted(p.name for p in vfio.iterdir()) == ["10", "11", "20", "21", "22", "vfio"]
    mode = os.stat(vfio / "vfio").st_mode
    assert stat.S_IMODE(mode) == 0o666
    assert stat.S_IMODE(os.stat(vfio / "10").st_mode) == 0o600
    if os.geteuid() == 0:
        assert stat.S_ISCHR(mode)
        assert os.major(os.stat(vfio / "vfio").st_rdev) == 10
    assert (board.dev / "dprc.1").exists()
    assert (board.sys / "module/vfio/parameters/enable_unsafe_noiommu_mode").read_text() == "N\n"


def test_noiommu_variant(noiommu_board: SampleBoard) -> None:
    b = noiommu_board
    names = sorted(p.name for p in (b.dev / "vfio").iterdir())
    assert names == ["noiommu-10", "noiommu-11", "noiommu-20", "noiommu-21", "noiommu-22", "vfio"]
    assert (b.sys / "kernel/iommu_groups/10/name").read_text() == "vfio-noiommu\n"
    assert (b.sys / "module/vfio/parameters/enable_unsafe_noiommu_mode").read_text() == "Y\n"


def test_unbind_and_bind_change_what_the_kernel_would_show(board: SampleBoard) -> None:
    vf = board.sys / "bus/pci/devices/0001:01:00.2"
    board.unbind("0001:01:00.2")
    assert not (vf / "driver").exists()
    assert not (board.sys / "bus/pci/drivers/vfio-pci/0001:01:00.2").exists()
    assert not (vf / "uevent").read_text().startswith("DRIVER=")
    board.bind("0001:01:00.2", "ixgbevf")
    assert os.readlink(vf / "driver").endswith("bus/pci/drivers/ixgbevf")
    board.unbind("dpio.16")
    assert "DRIVER=" not in (board.sys / "bus/fsl-mc/devices/dpio.16/uevent").read_text()


def test_hotplug_add_and_remove_vf(board: SampleBoard) -> None:
    board.add_vf("0001:01:00.5", 23)
    pf = board.sys / "bus/pci/devices/0001:01:00.0"
    assert (pf / "sriov_numvfs").read_text() == "5\n"
    assert (board.sys / "kernel/iommu_groups/23/devices/0001:01:00.5").resolve(strict=True)
    assert (board.dev / "vfio/23").exists()
    board.remove_pci_function("0001:01:00.5")
    assert not (board.sys / "bus/pci/devices/0001:01:00.5").exists()
    assert (pf / "sriov_numvfs").read_text() == "4\n"
    assert not [p for p in _all_links(board.sys) if not p.exists()]


def test_uevent_modalias_matches_ids(board: SampleBoard) -> None:
    for dev in (board.sys / "bus/pci/devices").iterdir():
        uevent = (dev / "uevent").read_text()
        vendor = int((dev / "vendor").read_text(), 16)
        device = int((dev / "device").read_text(), 16)
        assert re.search(rf"MODALIAS=pci:v{vendor:08X}d{device:08X}", uevent)
