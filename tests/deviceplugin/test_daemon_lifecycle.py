"""The daemon stays true to the node: hot-plug through real kernel uevents, kubelet restarts (both signals),
config swaps the ConfigMap way, metrics, node labels and events, SIGTERM. Everything runs through the real
daemon (in this process, or as `vnfio-device-plugin`) against the kubelet stand-in; assertions are on what
kubelet, the API server stand-in or a Prometheus scrape would see, and on what is left in the plugin dir."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from concurrent import futures
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from apiserver_stub import ApiServerStub
from kubelet_stub import KubeletStub, device_health
from prometheus_client.parser import text_string_to_metric_families
from running_core import RunningCore
from test_configwatch import ConfigMapVolume

from deviceplugin.daemon import Daemon
from deviceplugin.kubelet.dpapi.v1beta1 import api_pb2, api_pb2_grpc
from deviceplugin.observability.metrics import PluginMetrics
from deviceplugin.observability.nodeinfo import NodeReporter
from deviceplugin.policy.config import SAMPLE_CONFIG
from deviceplugin.sampleboard import SampleBoard
from deviceplugin.settings import DaemonSettings

DPRC = "nxp.com/dpaa2_dprc"
VF = "intel.com/intel_vf"
DPRC_POOL, VF_POOL = SAMPLE_CONFIG["resourceList"]
ALL_HEALTHY_VFS = {"0001:01:00.1": "Healthy", "0001:01:00.2": "Healthy", "iommu-group-22": "Healthy"}
PLUGIN = str(Path(sys.executable).parent / "vnfio-device-plugin")
NODE = "worker-7"


# ------------------------------------------------------------------------------------------- harness
class RunningDaemon(RunningCore[Daemon]):
    """A `Daemon` on its own event loop in a background thread, so the test drives kubelet and sysfs."""

    def __init__(self, settings: DaemonSettings, **kwargs: Any) -> None:
        self.settings = settings
        super().__init__(lambda: Daemon(settings, **kwargs), "vnfio-daemon")

    @property
    def metrics(self) -> PluginMetrics:
        assert self.core is not None
        return self.core.metrics

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Block until `condition()` holds (an event we wait for, not a timing); fail naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def write_config(path: Path, pools: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"resourceList": pools}))
    return path


def settings_for(board: SampleBoard, plugin_dir: Path, config: Path, **changes: Any) -> DaemonSettings:
    base = DaemonSettings(
        config=config, sysfs_root=board.sys, dev_root=board.dev, plugin_dir=plugin_dir, rescan_interval=3600.0,
        uevents=False,
    )  # fmt: skip
    return replace(base, **changes)


def sockets_in(plugin_dir: Path) -> set[str]:
    return {p.name for p in plugin_dir.iterdir() if p.is_socket()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def real_pci_uevent_file() -> Path | None:
    """A real PCI device's uevent file: `change` written there makes the kernel broadcast a pci uevent."""
    for device in sorted(Path("/sys/bus/pci/devices").glob("*")):
        if (device / "uevent").is_file() and os.access(device / "uevent", os.W_OK):
            return device / "uevent"
    return None


@pytest.fixture
def sample_config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "config.json", [DPRC_POOL, VF_POOL])


def registered_everything(kubelet: KubeletStub) -> None:
    kubelet.wait_for(DPRC, lambda d: len(d) == 2)
    kubelet.wait_for(VF, lambda d: len(d) == 3)


# ----------------------------------------------------------------------------------- health, hot-plug
def test_hot_plug_follows_real_kernel_uevents(
    board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, sample_config: Path
) -> None:
    """The timer is an hour away: only a kernel uevent can make the daemon look. After each sysfs change a
    real pci uevent is emitted, and kubelet sees the change."""
    uevent_file = real_pci_uevent_file()
    if uevent_file is None:
        pytest.skip("this machine has no PCI device to emit a real uevent from")

    def kick() -> None:
        uevent_file.write_text(f"change {uuid.uuid4()}")

    settings = settings_for(board, plugin_dir, sample_config, uevents=True)
    with RunningDaemon(settings) as running:
        registered_everything(kubelet)
        steps: list[tuple[Callable[[], None], Callable[[dict[str, Any]], bool]]] = [
            (lambda: board.unbind("0001:01:00.1"), lambda d: d["0001:01:00.1"].health == "Unhealthy"),
            (lambda: board.bind("0001:01:00.1", "vfio-pci"), lambda d: device_health(d) == ALL_HEALTHY_VFS),
            (lambda: board.remove_group_node(21), lambda d: d["0001:01:00.2"].health == "Unhealthy"),
            (lambda: board.add_group_node(21), lambda d: device_health(d) == ALL_HEALTHY_VFS),
            (lambda: board.add_vf("0001:01:00.5", 30), lambda d: d.get("0001:01:00.5") is not None),
            (lambda: board.remove_pci_function("0001:01:00.5"), lambda d: device_health(d) == ALL_HEALTHY_VFS),
        ]
        for change, seen in steps:
            change()
            kick()
            kubelet.wait_for(VF, seen)
        assert running.sample("vnfio_rescans_total", reason="uevent") >= len(steps)
        assert running.sample("vnfio_rescans_total", reason="timer") is None
        # The DPAA2 pool never changed: kubelet got its list once, however many rescans ran.
        assert kubelet.message_count(DPRC) == 1
        assert kubelet.registration_count() == 2
    assert running.result == 0


def test_timer_rescan_carries_on_without_uevents(
    board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, sample_config: Path
) -> None:
    """No netlink socket (a container without permission): the daemon says so and the timer finds changes."""

    def refuse() -> socket.socket:
        raise PermissionError(1, "Operation not permitted")

    settings = settings_for(board, plugin_dir, sample_config, uevents=True, rescan_interval=0.2)
    with RunningDaemon(settings, uevent_socket=refuse) as running:
        registered_everything(kubelet)
        board.remove_group_node(10)
        seen = kubelet.wait_for(DPRC, lambda d: d["dprc.2"].health == "Unhealthy")
        assert device_health(seen) == {"dprc.2": "Unhealthy", "dprc.3": "Healthy"}
        board.add_group_node(10)
        kubelet.wait_for(DPRC, lambda d: all(x.healthy for x in d.values()))
        assert running.sample("vnfio_rescans_total", reason="timer") >= 2
    assert running.result == 0


# ---------------------------------------------------------------------------------- kubelet restarts
def test_twenty_kubelet_restarts_in_a_row_end_with_every_pool_registered(
    board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, sample_config: Path
) -> None:
    """Back-to-back restarts: each deletes our sockets and creates a new kubelet.sock. The rescan timer is an
    hour away, so only the kubelet watch can bring the pools back."""
    with RunningDaemon(settings_for(board, plugin_dir, sample_config)) as running:
        registered_everything(kubelet)
        for _ in range(20):
            kubelet.restart()
        # A restarted kubelet knows no device until a plugin registers with it and streams its list.
        registered_everything(kubelet)
        assert kubelet.resources() == {DPRC, VF}
        assert sockets_in(plugin_dir) == {"kubelet.sock", "vnfio-dpaa2_dprc.sock", "vnfio-intel_vf.sock"}
        assert kubelet.allocate(DPRC, ["dprc.3"]).envs["DPRC"] == "dprc.3"
        assert kubelet.allocate(VF, ["0001:01:00.2"]).envs["PCIDEVICE_INTEL_COM_INTEL_VF"] == "0001:01:00.2"
        assert running.sample("vnfio_kubelet_restarts_total") >= 1
        assert running.sample("vnfio_pool_registered", resource=DPRC) == 1
        assert running.sample("vnfio_pool_registered", resource=VF) == 1
    assert running.result == 0
    assert sockets_in(plugin_dir) == {"kubelet.sock"}


def test_each_restart_registers_each_pool_once(
    board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, sample_config: Path
) -> None:
    """Kubelet gives both signals on a restart; the daemon answers them with one registration per pool."""
    with RunningDaemon(settings_for(board, plugin_dir, sample_config)):
        registered_everything(kubelet)
        for restart in range(1, 6):
            kubelet.restart()
            kubelet.wait_registered(DPRC, restart + 1)
            kubelet.wait_registered(VF, restart + 1)
            registered_everything(kubelet)
        assert kubelet.registration_count(DPRC) == kubelet.registration_count(VF) == 6


def test_own_socket_deleted_is_served_anew_and_registered(
    board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, sample_config: Path
) -> None:
    """Signal one alone: our socket disappears while kubelet.sock stays."""
    with RunningDaemon(settings_for(board, plugin_dir, sample_config)):
        registered_everything(kubelet)
        (plugin_dir / "vnfio-intel_vf.sock").unlink()
        kubelet.wait_registered(VF, 2)
        wait_until(lambda: (plugin_dir / "vnfio-intel_vf.sock").is_socket(), "the VF socket to be back")
        assert kubelet.allocate(VF, ["0001:01:00.1"]).envs["PCIDEVICE_INTEL_COM_INTEL_VF"] == "0001:01:00.1"
        assert kubelet.registration_count(DPRC) == 1


class RegistrationRecorder(api_pb2_grpc.RegistrationServicer):
    """A kubelet that only takes registrations (it does not delete sockets at start): signal two alone."""

    def __init__(self) -> None:
        self.requests: list[api_pb2.RegisterRequest] = []
        self.changed = threading.Condition()

    def Register(self, request: api_pb2.RegisterRequest, context: grpc.ServicerContext) -> api_pb2.Empty:
        with self.changed:
            self.requests.append(request)
            self.changed.notify_all()
        return api_pb2.Empty()


def test_recreated_kubelet_socket_alone_triggers_registration(
    board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, sample_config: Path
) -> None:
    with RunningDaemon(settings_for(board, plugin_dir, sample_config)):
        registered_everything(kubelet)
        kubelet.stop()  # kubelet.sock goes; our sockets stay
        recorder = RegistrationRecorder()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        api_pb2_grpc.add_RegistrationServicer_to_server(recorder, server)
        server.add_insecure_port(f"unix://{plugin_dir / 'kubelet.sock'}")
        server.start()
        try:
            with recorder.changed:
                assert recorder.changed.wait_for(lambda: len({r.resource_name for r in recorder.requests}) == 2, 15)
        finally:
            server.stop(0)
        assert sorted((r.resource_name, r.endpoint, r.version) for r in recorder.requests) == [
            (VF, "vnfio-intel_vf.sock", "v1beta1"),
            (DPRC, "vnfio-dpaa2_dprc.sock", "v1beta1"),
        ]
        assert sockets_in(plugin_dir) >= {"vnfio-dpaa2_dprc.sock", "vnfio-intel_vf.sock"}


# ------------------------------------------------------------------------------------- config reload
def test_config_swaps_add_remove_and_change_pools(
    tmp_path: Path, board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub
) -> None:
    volume = ConfigMapVolume(tmp_path / "configmap")
    volume.publish({"resourceList": [DPRC_POOL]})
    settings = settings_for(board, plugin_dir, volume.path)
    with RunningDaemon(settings, config_poll=0.05) as running:
        kubelet.wait_for(DPRC, lambda d: len(d) == 2)
        assert sockets_in(plugin_dir) == {"kubelet.sock", "vnfio-dpaa2_dprc.sock"}

        # The DPAA2 pool leaves, the VF pool joins.
        volume.publish({"resourceList": [VF_POOL]})
        kubelet.wait_for(VF, lambda d: device_health(d) == ALL_HEALTHY_VFS)
        wait_until(lambda: sockets_in(plugin_dir) == {"kubelet.sock", "vnfio-intel_vf.sock"}, "the DPAA2 socket to go")
        # Its stream ended, so kubelet marks its devices Unhealthy (capacity drops to 0 allocatable).
        kubelet.wait_for(DPRC, lambda d: not any(x.healthy for x in d.values()))
        assert running.sample("vnfio_devices", resource=DPRC, health="Healthy") is None

        # Unparsable: rejected, the VF pool keeps serving.
        volume.publish_text('{"resourceList": [')
        wait_until(lambda: running.sample("vnfio_config_reloads_total", result="failure") == 1, "a rejected reload")
        assert running.sample("vnfio_config_last_reload_successful") == 0
        # A partly invalid one is rejected as a whole too.
        volume.publish({"resourceList": [DPRC_POOL, {"resourceName": "bad name!", "deviceType": "pci"}]})
        wait_until(lambda: running.sample("vnfio_config_reloads_total", result="failure") == 2, "a rejected reload")
        assert sockets_in(plugin_dir) == {"kubelet.sock", "vnfio-intel_vf.sock"}
        assert kubelet.allocate(VF, ["0001:01:00.1"]).envs["PCIDEVICE_INTEL_COM_INTEL_VF"] == "0001:01:00.1"
        assert kubelet.registration_count(VF) == 1

        # Both pools, with the VF pool's selectors narrowed: the DPAA2 pool registers again, the VF pool
        # keeps its registration and streams the shorter list.
        narrowed = {**VF_POOL, "selectors": {**VF_POOL["selectors"], "pciAddresses": ["0001:01:00.1"]}}
        volume.publish({"resourceList": [DPRC_POOL, narrowed]})
        kubelet.wait_for(VF, lambda d: device_health(d) == {"0001:01:00.1": "Healthy"})
        kubelet.wait_for(DPRC, lambda d: len(d) == 2 and all(x.healthy for x in d.values()))
        assert kubelet.registration_count(VF) == 1
        assert kubelet.registration_count(DPRC) == 2
        assert running.sample("vnfio_config_last_reload_successful") == 1
        assert running.sample("vnfio_rescans_total", reason="config") == 2
    assert running.result == 0
    assert sockets_in(plugin_dir) == {"kubelet.sock"}


# --------------------------------------------------------------------------- node labels and events
def test_node_labels_and_health_events_reach_the_api_server(
    board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, sample_config: Path
) -> None:
    apiserver = ApiServerStub((NODE,), token="sa-token").start()
    try:
        reporter = NodeReporter(NODE, host=apiserver.url, token="sa-token")
        settings = settings_for(board, plugin_dir, sample_config, rescan_interval=0.2, node_name=NODE)
        with RunningDaemon(settings, node_reporter=reporter):
            registered_everything(kubelet)
            assert apiserver.wait_for(lambda s: "vnfio.io/dpaa2" in s.nodes[NODE]["metadata"]["labels"])
            assert apiserver.node_labels(NODE) == {
                "kubernetes.io/hostname": NODE, "vnfio.io/dpaa2": "true", "vnfio.io/vfio-pci": "true",
            }  # fmt: skip
            board.unbind("0001:01:00.1")
            kubelet.wait_for(VF, lambda d: not d["0001:01:00.1"].healthy)
            board.bind("0001:01:00.1", "vfio-pci")
            kubelet.wait_for(VF, lambda d: device_health(d) == ALL_HEALTHY_VFS)
            assert apiserver.wait_for(lambda s: len(s.events) == 2)
        events = [r.body for r in apiserver.requests if r.method == "POST"]
        assert [r.path for r in apiserver.requests if r.method == "POST"] == [
            "/api/v1/namespaces/default/events"
        ] * 2
        assert [(e["reason"], e["type"]) for e in events] == [
            ("DeviceUnhealthy", "Warning"),
            ("DeviceHealthy", "Normal"),
        ]
        assert events[0]["message"].startswith("intel.com/intel_vf device 0001:01:00.1 is Unhealthy: ")
        assert events[1]["message"] == "intel.com/intel_vf device 0001:01:00.1 is Healthy again"
        assert {e["involvedObject"]["name"] for e in events} == {NODE}
        # Labels were patched once: the pools kept offering both kinds throughout.
        assert [r.path for r in apiserver.requests if r.method == "PATCH"] == [f"/api/v1/nodes/{NODE}"]
    finally:
        apiserver.stop()


# ------------------------------------------------------------------------------- metrics and SIGTERM
def scrape(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_endpoint_and_sigterm(
    tmp_path: Path, board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, sample_config: Path
) -> None:
    port = free_port()
    args = [
        "--config", str(sample_config), "--sysfs-root", str(board.sys), "--dev-root", str(board.dev),
        "--plugin-dir", str(plugin_dir), "--metrics-port", str(port), "--metrics-host", "127.0.0.1",
        "--device-info-dir", "",  # never the node's /var/run: tests leave the host alone
    ]  # fmt: skip
    log_path = tmp_path / "daemon.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([PLUGIN, *args], stdout=log, stderr=subprocess.STDOUT)
    try:
        registered_everything(kubelet)
        assert kubelet.allocate(VF, ["0001:01:00.2"]).envs["PCIDEVICE_INTEL_COM_INTEL_VF"] == "0001:01:00.2"
        assert len(kubelet.preferred(VF, list(ALL_HEALTHY_VFS), [], 1)) == 1
        with pytest.raises(grpc.RpcError):
            kubelet.allocate(VF, ["0001:09:00.0"])
        wait_until(lambda: scrape(port, "/readyz")[0] == 200, "readiness")
        assert scrape(port, "/healthz") == (200, "ok\n")
        status, text = scrape(port, "/metrics")
        assert status == 200
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert samples[("vnfio_devices", (("health", "Healthy"), ("resource", VF)))] == 3
        assert samples[("vnfio_devices", (("health", "Healthy"), ("resource", DPRC)))] == 2
        assert samples[("vnfio_devices", (("health", "Unhealthy"), ("resource", DPRC)))] == 0
        assert samples[("vnfio_allocations_total", (("resource", VF),))] == 1
        assert samples[("vnfio_allocated_devices_total", (("resource", VF),))] == 1
        failures = {labels: v for (name, labels), v in samples.items() if name == "vnfio_allocation_failures_total"}
        assert sum(failures.values()) == 1
        assert samples[("vnfio_allocate_duration_seconds_count", (("resource", VF),))] == 2
        assert samples[("vnfio_preferred_allocation_duration_seconds_count", (("resource", VF),))] == 1
        assert samples[("vnfio_registrations_total", (("resource", DPRC),))] == 1
        assert samples[("vnfio_pool_registered", (("resource", VF),))] == 1
        assert samples[("vnfio_rescans_total", (("reason", "start"),))] == 1
        assert samples[("vnfio_config_last_reload_successful", ())] == 1
        assert samples[("vnfio_config_last_reload_success_timestamp_seconds", ())] > 1.7e9

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert sockets_in(plugin_dir) == {"kubelet.sock"}
    kubelet.wait_for(VF, lambda d: not any(x.healthy for x in d.values()))  # streams ended
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # the endpoint went with the daemon
    log_text = log_path.read_text()
    assert "serving metrics on 127.0.0.1" in log_text
    assert "stopped" in log_text


def test_occupied_metrics_port_is_a_clear_error(
    tmp_path: Path, board: SampleBoard, plugin_dir: Path, sample_config: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = settings_for(board, plugin_dir, sample_config, metrics_port=port, metrics_host="127.0.0.1")
        with RunningDaemon(settings) as running:
            assert running.wait() == 1
    assert sockets_in(plugin_dir) == set()


def test_killed_daemon_leaves_sockets_that_the_next_one_replaces(
    tmp_path: Path, board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, sample_config: Path
) -> None:
    """SIGKILL gives no chance to clean up; the next start must not fail with "address already in use"."""
    args = [
        "--config", str(sample_config), "--sysfs-root", str(board.sys), "--dev-root", str(board.dev),
        "--plugin-dir", str(plugin_dir), "--no-uevents",
        "--device-info-dir", "",  # never the node's /var/run: tests leave the host alone
    ]  # fmt: skip
    first = subprocess.Popen([PLUGIN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        kubelet.wait_registered(DPRC)
        kubelet.wait_registered(VF)
    finally:
        first.kill()
        first.wait()
    assert sockets_in(plugin_dir) == {"kubelet.sock", "vnfio-dpaa2_dprc.sock", "vnfio-intel_vf.sock"}
    second = subprocess.Popen([PLUGIN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        kubelet.wait_registered(DPRC, 2)
        kubelet.wait_registered(VF, 2)
        assert kubelet.allocate(DPRC, ["dprc.2"]).envs["DPRC"] == "dprc.2"
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=15) == 0
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    assert sockets_in(plugin_dir) == {"kubelet.sock"}
