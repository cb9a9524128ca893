"""--device-info-dir: device-info-spec 1.1.0 files for PCI devices at Allocate (`<resource with "/" → "-">-<device
ID>-device.json`), removed when their device is no longer advertised and when the plugin stops; other kinds and
other plugins' files are left alone; a write failure is counted and Allocate still answers."""

from __future__ import annotations

import json
from pathlib import Path

from kinds_helpers import PLATFORM_POOL, VF_POOL, running, wait_until, write_pools
from kubelet_stub import KubeletStub

from deviceplugin.sampleboard import SampleBoard, full_sample_board

VF = "intel.com/intel_vf"


def test_files_are_written_at_allocate_and_removed_when_the_device_goes_and_at_stop(
    board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, tmp_path: Path
) -> None:
    info = tmp_path / "run/k8s.cni.cncf.io/devinfo/dp"  # missing: the plugin creates it (spec section 4.1.1)
    foreign = info / "other.com-res-0000:00:01.0-device.json"
    config = write_pools(tmp_path / "config.json", {**VF_POOL, "needVhostNet": True})
    with running(board, plugin_dir, config, device_info_dir=info):
        kubelet.wait_for(VF, lambda d: len(d) == 3)
        assert not info.exists() or list(info.iterdir()) == []  # nothing before an Allocate
        kubelet.allocate(VF, ["0001:01:00.1", "iommu-group-22"])
        foreign.write_text("{}")
        assert json.loads((info / "intel.com-intel_vf-0001:01:00.1-device.json").read_text()) == {
            "type": "pci",
            "version": "1.1.0",
            "pci": {"pci-address": "0001:01:00.1", "pf-pci-address": "0001:01:00.0", "vhost-net": "/dev/vhost-net"},
        }
        group = json.loads((info / "intel.com-intel_vf-iommu-group-22-device.json").read_text())
        assert group["pci"]["pci-address"] == "0001:01:00.3"
        assert oct(info.stat().st_mode & 0o777) == "0o755"
        board.remove_pci_function("0001:01:00.1")
        wait_until(lambda: not (info / "intel.com-intel_vf-0001:01:00.1-device.json").exists(), "the file to go")
        assert (info / "intel.com-intel_vf-iommu-group-22-device.json").exists()
    assert sorted(p.name for p in info.iterdir()) == [foreign.name]  # ours went at stop, the other plugin's stays


def test_no_files_for_kinds_without_pci_functions_and_none_when_off(
    tmp_path: Path, plugin_dir: Path, kubelet: KubeletStub
) -> None:
    full = full_sample_board(tmp_path / "board")
    info = tmp_path / "devinfo"
    config = write_pools(tmp_path / "config.json", PLATFORM_POOL)
    with running(full, plugin_dir, config, device_info_dir=info):
        kubelet.wait_for("nxp.com/soc", lambda d: len(d) == 3)
        assert kubelet.allocate("nxp.com/soc", ["3200000.sata"]).envs["PLATFORM_DEVICE_NXP_COM_SOC"] == "3200000.sata"
        assert list(info.iterdir()) == []


def test_a_file_that_cannot_be_written_is_counted_and_allocate_answers(
    board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, tmp_path: Path
) -> None:
    info = tmp_path / "devinfo"
    config = write_pools(tmp_path / "config.json", VF_POOL)
    with running(board, plugin_dir, config, device_info_dir=info) as daemon:
        kubelet.wait_for(VF, lambda d: len(d) == 3)
        info.rmdir()
        info.write_text("")  # a file where the directory was
        response = kubelet.allocate(VF, ["0001:01:00.2"])
        assert response.envs["PCIDEVICE_INTEL_COM_INTEL_VF"] == "0001:01:00.2"
        assert daemon.sample("vnfio_file_write_failures_total", resource=VF, what="device-info") == 1
