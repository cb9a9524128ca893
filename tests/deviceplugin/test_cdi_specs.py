"""--cdi-dir: one CDI spec per pool, valid against the CDI JSON schema, carrying exactly the nodes Allocate gives;
Allocate names the CDI devices; specs follow the pools and go when a pool goes or the plugin stops; --cdi-only;
an unwritable directory is fatal at start and only counted at runtime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cdi_schema import load_spec
from kinds_helpers import PLATFORM_POOL, VF_POOL, VHOST_POOL, running, wait_until, write_pools
from kubelet_stub import KubeletStub
from test_daemon_lifecycle import RunningDaemon, settings_for

from deviceplugin.policy.config import SAMPLE_CONFIG
from deviceplugin.sampleboard import SampleBoard, full_sample_board

VF = "intel.com/intel_vf"
DPRC = "nxp.com/dpaa2_dprc"
DPRC_POOL = SAMPLE_CONFIG["resourceList"][0]


@pytest.fixture
def full_board(tmp_path: Path) -> SampleBoard:
    return full_sample_board(tmp_path / "board")


def spec_nodes(spec: dict[str, object], device: str) -> list[tuple[str, str, str]]:
    entry = next(d for d in spec["devices"] if d["name"] == device)  # type: ignore[union-attr,index]
    return [(n["hostPath"], n["path"], n["permissions"]) for n in entry["containerEdits"]["deviceNodes"]]


def response_nodes(response: object) -> list[tuple[str, str, str]]:
    return [(d.host_path, d.container_path, d.permissions) for d in response.devices]  # type: ignore[attr-defined]


def test_every_pool_gets_a_valid_spec_matching_allocate(
    full_board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, tmp_path: Path
) -> None:
    cdi = tmp_path / "cdi"
    config = write_pools(tmp_path / "config.json", DPRC_POOL, {**VF_POOL, "needVhostNet": True}, PLATFORM_POOL,
                         VHOST_POOL)  # fmt: skip
    with running(full_board, plugin_dir, config, cdi_dir=cdi):
        kubelet.wait_for(VF, lambda d: len(d) == 3)
        kubelet.wait_for("vnfio.io/vhost", lambda d: len(d) == 4)
        names = sorted(p.name for p in cdi.iterdir())
        assert names == [
            "vnfio-intel.com-intel_vf.json", "vnfio-nxp.com-dpaa2_dprc.json", "vnfio-nxp.com-soc.json",
            "vnfio-vnfio.io-vhost.json",
        ]  # fmt: skip
        specs = {n: load_spec(cdi / n) for n in names}  # the CDI JSON schema and the library's extra rules
        vf_spec = specs["vnfio-intel.com-intel_vf.json"]
        assert vf_spec["kind"] == VF and vf_spec["cdiVersion"] == "0.6.0"
        assert [d["name"] for d in vf_spec["devices"]] == ["0001:01:00.1", "0001:01:00.2", "iommu-group-22"]
        for device in ("0001:01:00.1", "iommu-group-22"):
            response = kubelet.allocate(VF, [device])
            assert [c.name for c in response.cdi_devices] == [f"{VF}={device}"]
            assert sorted(spec_nodes(vf_spec, device)) == sorted(response_nodes(response))
            assert all(h.startswith(str(full_board.dev)) for h, _, _ in spec_nodes(vf_spec, device))
        # Two VFs: each CDI device brings its own nodes; the env naming both stays in the response.
        both = kubelet.allocate(VF, ["0001:01:00.2", "0001:01:00.1"])
        assert [c.name for c in both.cdi_devices] == [f"{VF}=0001:01:00.1", f"{VF}=0001:01:00.2"]
        assert both.envs["PCIDEVICE_INTEL_COM_INTEL_VF"] == "0001:01:00.1,0001:01:00.2"
        assert all("env" not in d["containerEdits"] for d in vf_spec["devices"])
    assert list(cdi.iterdir()) == []  # the plugin stopped: its specs are gone


def test_specs_follow_the_devices_and_go_with_their_pool(
    board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, tmp_path: Path
) -> None:
    cdi = tmp_path / "cdi"
    config = write_pools(tmp_path / "config.json", DPRC_POOL, VF_POOL)
    vf_spec = cdi / "vnfio-intel.com-intel_vf.json"
    with running(board, plugin_dir, config, cdi_dir=cdi) as daemon:
        kubelet.wait_for(VF, lambda d: len(d) == 3)
        board.add_vf("0001:01:00.5", 23)
        kubelet.wait_for(VF, lambda d: len(d) == 4)
        wait_until(lambda: "0001:01:00.5" in [d["name"] for d in load_spec(vf_spec)["devices"]], "the new VF")
        board.remove_pci_function("0001:01:00.5")
        kubelet.wait_for(VF, lambda d: len(d) == 3)
        wait_until(lambda: "0001:01:00.5" not in [d["name"] for d in load_spec(vf_spec)["devices"]], "VF gone")
        # The VF pool leaves the config: its spec goes, the other stays.
        write_pools(config, DPRC_POOL)
        assert daemon.core is not None
        wait_until(lambda: not vf_spec.exists(), "the dropped pool's spec to go", timeout=20)
        assert (cdi / "vnfio-nxp.com-dpaa2_dprc.json").exists()


def test_cdi_only_drops_device_specs_but_keeps_env(
    board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, tmp_path: Path
) -> None:
    config = write_pools(tmp_path / "config.json", VF_POOL)
    with running(board, plugin_dir, config, cdi_dir=tmp_path / "cdi", cdi_only=True):
        kubelet.wait_for(VF, lambda d: len(d) == 3)
        response = kubelet.allocate(VF, ["0001:01:00.1"])
        assert list(response.devices) == []
        assert [c.name for c in response.cdi_devices] == [f"{VF}=0001:01:00.1"]
        assert response.envs["PCIDEVICE_INTEL_COM_INTEL_VF"] == "0001:01:00.1"


def test_noiommu_spec_maps_the_noiommu_node(
    noiommu_board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, tmp_path: Path
) -> None:
    config = write_pools(tmp_path / "config.json", DPRC_POOL)
    with running(noiommu_board, plugin_dir, config, cdi_dir=tmp_path / "cdi"):
        kubelet.wait_for(DPRC, lambda d: len(d) == 2)
        spec = load_spec(tmp_path / "cdi/vnfio-nxp.com-dpaa2_dprc.json")
        assert (str(noiommu_board.dev / "vfio/noiommu-10"), "/dev/vfio/10", "rw") in spec_nodes(spec, "dprc.2")


def test_an_unwritable_cdi_dir_is_fatal_at_start_with_path_and_errno(
    board: SampleBoard, plugin_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    config = write_pools(tmp_path / "config.json", VF_POOL)
    for flag, change in (("--cdi-dir", "cdi_dir"), ("--device-info-dir", "device_info_dir")):
        caplog.clear()
        with RunningDaemon(settings_for(board, plugin_dir, config, **{change: blocker / "sub"})) as daemon:
            assert daemon.wait() == 1
        message = " ".join(r.getMessage() for r in caplog.records)
        assert f"{flag} {blocker / 'sub'} is not writable" in message and "ENOTDIR" in message


def test_a_spec_that_cannot_be_written_at_runtime_is_counted_and_allocate_still_answers(
    board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, tmp_path: Path
) -> None:
    cdi = tmp_path / "cdi"
    config = write_pools(tmp_path / "config.json", VF_POOL)
    with running(board, plugin_dir, config, cdi_dir=cdi, cdi_only=True) as daemon:
        kubelet.wait_for(VF, lambda d: len(d) == 3)
        # The directory is replaced by a file under the running plugin: the next rewrite fails.
        for entry in cdi.iterdir():
            entry.unlink()
        cdi.rmdir()
        cdi.write_text("")
        board.add_vf("0001:01:00.5", 23)
        kubelet.wait_for(VF, lambda d: len(d) == 4)
        wait_until(
            lambda: (daemon.sample("vnfio_file_write_failures_total", resource=VF, what="cdi") or 0) >= 1,
            "the failure to be counted",
        )
        response = kubelet.allocate(VF, ["0001:01:00.5"])
        # Without a spec on disk the nodes travel as DeviceSpecs, even with --cdi-only, and no CDI name is given.
        assert [d.container_path for d in response.devices] == ["/dev/vfio/vfio", "/dev/vfio/23"]
        assert list(response.cdi_devices) == []


def test_the_spec_is_the_allocate_answer_for_every_kind_on_the_full_board(
    full_board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, tmp_path: Path
) -> None:
    cdi = tmp_path / "cdi"
    config = write_pools(tmp_path / "config.json", PLATFORM_POOL, VHOST_POOL, {**VF_POOL, "vfioInterface": "cdev"})
    with running(full_board, plugin_dir, config, cdi_dir=cdi):
        for resource, device in (("nxp.com/soc", "iommu-group-31"), ("vnfio.io/vhost", "vhost-net-3"),
                                 (VF, "0001:01:00.2")):  # fmt: skip
            kubelet.wait_for(resource, lambda d, device=device: device in d)
            spec = load_spec(cdi / f"vnfio-{resource.replace('/', '-')}.json")
            response = kubelet.allocate(resource, [device])
            assert sorted(spec_nodes(spec, device)) == sorted(response_nodes(response))
            assert json.dumps(spec).count(str(full_board.dev)) >= 1
