"""The daemon end to end: `vnfio-device-plugin` as a process against a generated board, with the kubelet
stand-in in its plugin dir; every assertion is on what kubelet receives or what is left on disk."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kubelet_stub import KubeletStub, Options, device_health

from deviceplugin.policy.config import SAMPLE_CONFIG
from deviceplugin.sampleboard import SampleBoard

DPRC = "nxp.com/dpaa2_dprc"
VF = "intel.com/intel_vf"
ALL_HEALTHY_VFS = {"0001:01:00.1": "Healthy", "0001:01:00.2": "Healthy", "iommu-group-22": "Healthy"}
PLUGIN = str(Path(sys.executable).parent / "vnfio-device-plugin")


def write_config(tmp_path: Path, config: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


class DaemonProcess:
    """The daemon as kubelet's node runs it: a process we can signal, with its log kept for the assertions."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen([PLUGIN, *args], stdout=self._log, stderr=subprocess.STDOUT)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=15)
        finally:
            self._log.close()

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        """Block until the daemon has logged `text` (it is an event we wait for, not a timing)."""
        deadline = time.monotonic() + timeout
        while text not in self.log:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"the daemon did not log {text!r}:\n{self.log}")
            time.sleep(0.02)


@contextmanager
def running_daemon(
    tmp_path: Path,
    board: SampleBoard,
    plugin_dir: Path,
    config: Path,
    *extra: str,
) -> Iterator[DaemonProcess]:
    args = [
        "--config", str(config),
        "--sysfs-root", str(board.sys),
        "--dev-root", str(board.dev),
        "--plugin-dir", str(plugin_dir),
        "--device-info-dir", "",  # never the node's /var/run: tests leave the host alone
        "--no-uevents",
        "--log-level", "debug",
        *extra,
    ]  # fmt: skip
    daemon = DaemonProcess(args, tmp_path / "daemon.log")
    try:
        yield daemon
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.wait()


def specs(response: object) -> list[tuple[str, str, str]]:
    return [(d.host_path, d.container_path, d.permissions) for d in response.devices]  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------------------- tests
def test_every_pool_registers_and_kubelet_gets_the_right_nodes(
    tmp_path: Path, board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub
) -> None:
    config = write_config(tmp_path, SAMPLE_CONFIG)
    with running_daemon(tmp_path, board, plugin_dir, config) as daemon:
        dprcs = kubelet.wait_for(DPRC, lambda d: len(d) == 2)
        assert device_health(dprcs) == {"dprc.2": "Healthy", "dprc.3": "Healthy"}
        assert device_health(kubelet.wait_for(VF, lambda d: len(d) == 3)) == ALL_HEALTHY_VFS
        registrations = {r.resource: r for r in kubelet.registrations}
        assert set(registrations) == {DPRC, VF}
        assert registrations[DPRC].endpoint == "vnfio-dpaa2_dprc.sock"
        assert registrations[VF].endpoint == "vnfio-intel_vf.sock"
        assert all(r.request_options == r.plugin_options == Options(False, True) for r in registrations.values())

        dprc = kubelet.allocate(DPRC, ["dprc.2"])
        assert dprc.envs["DPRC"] == "dprc.2"
        assert specs(dprc) == [
            (str(board.dev / "vfio/vfio"), "/dev/vfio/vfio", "rw"),
            (str(board.dev / "vfio/10"), "/dev/vfio/10", "rw"),
        ]

        vfs = kubelet.allocate(VF, ["iommu-group-22", "0001:01:00.2"])
        assert vfs.envs["PCIDEVICE_INTEL_COM_INTEL_VF"] == "0001:01:00.2,0001:01:00.3,0001:01:00.4"
        assert vfs.envs["PCI_RESOURCE_INTEL_COM_INTEL_VF"] == "0001:01:00.2,0001:01:00.3,0001:01:00.4"
        assert specs(vfs) == [
            (str(board.dev / "vfio/vfio"), "/dev/vfio/vfio", "rw"),
            (str(board.dev / "vfio/21"), "/dev/vfio/21", "rw"),
            (str(board.dev / "vfio/22"), "/dev/vfio/22", "rw"),
        ]
        preferred = kubelet.preferred(VF, list(ALL_HEALTHY_VFS), ["iommu-group-22"], 2)
        assert len(preferred) == 2
        assert "iommu-group-22" in preferred
        assert daemon.terminate() == 0


def test_noiommu_board_hands_out_noiommu_nodes_as_group_nodes(
    tmp_path: Path, noiommu_board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub
) -> None:
    config = write_config(tmp_path, SAMPLE_CONFIG)
    with running_daemon(tmp_path, noiommu_board, plugin_dir, config) as daemon:
        kubelet.wait_for(DPRC, lambda d: len(d) == 2 and all(x.healthy for x in d.values()))
        dprc = kubelet.allocate(DPRC, ["dprc.3"])
        assert dprc.envs["DPRC"] == "dprc.3"
        assert specs(dprc) == [
            (str(noiommu_board.dev / "vfio/vfio"), "/dev/vfio/vfio", "rw"),
            (str(noiommu_board.dev / "vfio/noiommu-11"), "/dev/vfio/11", "rw"),
        ]
        assert daemon.terminate() == 0


def test_a_bad_pool_does_not_stop_the_valid_ones(
    tmp_path: Path, board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub
) -> None:
    config = write_config(
        tmp_path,
        {
            "resourceList": [
                {"resourceName": "gpu", "deviceType": "gpu"},
                {"resourceName": "bad name!", "deviceType": "pci"},
                SAMPLE_CONFIG["resourceList"][0],
                {"resourceName": "vfs", "deviceType": "pci", "selectors": {"vendor": ["8086"]}},
            ]
        },
    )
    with running_daemon(tmp_path, board, plugin_dir, config) as daemon:
        assert set(kubelet.wait_for(DPRC, lambda d: len(d) == 2)) == {"dprc.2", "dprc.3"}
        assert daemon.terminate() == 0
    # The daemon has exited: every registration it would ever make is in.
    assert {r.resource for r in kubelet.registrations} == {DPRC}
    assert kubelet.rejections == []
    log = daemon.log
    assert 'pool "gpu": key "deviceType"' in log
    assert 'pool "bad name!": key "resourceName"' in log
    assert 'pool "vfs": key "selectors.vendor"' in log


def test_sigterm_ends_streams_and_removes_sockets(
    tmp_path: Path, board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub
) -> None:
    config = write_config(tmp_path, SAMPLE_CONFIG)
    with running_daemon(tmp_path, board, plugin_dir, config) as daemon:
        kubelet.wait_for(VF, lambda d: len(d) == 3)
        kubelet.wait_for(DPRC, lambda d: len(d) == 2)
        sockets = {p.name for p in plugin_dir.iterdir()}
        assert sockets == {"kubelet.sock", "vnfio-dpaa2_dprc.sock", "vnfio-intel_vf.sock"}
        assert daemon.terminate() == 0
    assert [p.name for p in plugin_dir.iterdir()] == ["kubelet.sock"]
    # The streams ended, so kubelet marks everything Unhealthy, as it does when a plugin goes away.
    dprcs = kubelet.wait_for(DPRC, lambda d: not any(x.healthy for x in d.values()))
    assert device_health(dprcs) == {"dprc.2": "Unhealthy", "dprc.3": "Unhealthy"}
    assert kubelet.stream_ends(DPRC) == kubelet.stream_ends(VF) == 1


def test_a_sysfs_change_reaches_kubelet_through_the_rescan(
    tmp_path: Path, board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub
) -> None:
    config = write_config(tmp_path, SAMPLE_CONFIG)
    with running_daemon(tmp_path, board, plugin_dir, config, "--rescan-interval", "0.2") as daemon:
        kubelet.wait_for(VF, lambda d: device_health(d) == ALL_HEALTHY_VFS)
        board.unbind("0001:01:00.1")
        seen = kubelet.wait_for(VF, lambda d: not d["0001:01:00.1"].healthy)
        assert device_health(seen) == {**ALL_HEALTHY_VFS, "0001:01:00.1": "Unhealthy"}
        board.bind("0001:01:00.1", "vfio-pci")
        kubelet.wait_for(VF, lambda d: device_health(d) == ALL_HEALTHY_VFS)
        board.add_vf("0001:01:00.5", 23)
        seen = kubelet.wait_for(VF, lambda d: "0001:01:00.5" in d)
        assert device_health(seen) == {**ALL_HEALTHY_VFS, "0001:01:00.5": "Healthy"}
        assert kubelet.allocate(VF, ["0001:01:00.5"]).envs["PCIDEVICE_INTEL_COM_INTEL_VF"] == "0001:01:00.5"
        # The other pool did not change, so kubelet heard from it once only.
        assert kubelet.message_count(DPRC) == 1
        assert daemon.terminate() == 0


def test_registration_waits_for_kubelet_and_follows_its_restart(
    tmp_path: Path, board: SampleBoard, plugin_dir: Path
) -> None:
    config = write_config(tmp_path, SAMPLE_CONFIG)
    kubelet = KubeletStub(plugin_dir)
    try:
        with running_daemon(tmp_path, board, plugin_dir, config, "--rescan-interval", "0.2") as daemon:
            # No kubelet.sock yet: the daemon serves and keeps retrying until kubelet appears.
            daemon.wait_for_log("kubelet is not listening")
            kubelet.start()
            kubelet.wait_for(DPRC, lambda d: len(d) == 2)
            kubelet.wait_for(VF, lambda d: len(d) == 3)
            kubelet.restart()  # our sockets are deleted: the daemon must serve anew and register again
            kubelet.wait_registered(DPRC, count=2)
            kubelet.wait_registered(VF, count=2)
            assert set(kubelet.wait_for(DPRC, lambda d: len(d) == 2)) == {"dprc.2", "dprc.3"}
            assert kubelet.allocate(DPRC, ["dprc.3"]).envs["DPRC"] == "dprc.3"
            assert daemon.terminate() == 0
    finally:
        kubelet.close()


def test_an_unusable_config_is_a_clear_error(tmp_path: Path, board: SampleBoard, plugin_dir: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"resourceList": [')
    with running_daemon(tmp_path, board, plugin_dir, config) as daemon:
        assert daemon.wait() == 1
    assert "not valid JSON" in daemon.log
    assert list(plugin_dir.iterdir()) == []


def test_sample_board_runs_without_a_config_file(tmp_path: Path, plugin_dir: Path, kubelet: KubeletStub) -> None:
    args = ["--sample-board", "--config", str(tmp_path / "absent.json"), "--plugin-dir", str(plugin_dir)]
    daemon = DaemonProcess([*args, "--no-uevents"], tmp_path / "daemon.log")
    try:
        assert set(kubelet.wait_for(DPRC, lambda d: len(d) == 2)) == {"dprc.2", "dprc.3"}
        assert kubelet.allocate(DPRC, ["dprc.2"]).envs["DPRC"] == "dprc.2"
        assert daemon.terminate() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.wait()
    assert "built-in sample config" in daemon.log
    # The generated board lived in a temporary folder that went with the daemon.
    (board_sys,) = re.findall(r"sample board: sysfs root (\S+)", daemon.log)
    assert Path(board_sys).is_absolute()
    assert not Path(board_sys).exists()
