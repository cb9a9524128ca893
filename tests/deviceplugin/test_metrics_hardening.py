"""The metrics endpoint under a hostile client on the node's network (issue 17, finding 3): a flood of idle
connections costs a bounded number of threads and memory, the probes are still answered, and a silent
connection is hung up on. Run against `vnfio-device-plugin` as the DaemonSet runs it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from test_daemon_lifecycle import DPRC_POOL, PLUGIN, VF_POOL, free_port, registered_everything, scrape, wait_until

from deviceplugin.cli import _parser
from deviceplugin.observability.metrics import IDLE_TIMEOUT, MAX_CONNECTIONS
from deviceplugin.settings import DaemonSettings

if TYPE_CHECKING:
    from kubelet_stub import KubeletStub

    from deviceplugin.sampleboard import SampleBoard

pytestmark = pytest.mark.hardening

IDLE_CLIENTS = 500


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture
def plugin(tmp_path: Path, board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub) -> Iterator[tuple[int, int]]:
    """A running `vnfio-device-plugin` with its metrics endpoint on 127.0.0.1: (pid, port)."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"resourceList": [DPRC_POOL, VF_POOL]}))
    port = free_port()
    args = [
        "--config", str(config), "--sysfs-root", str(board.sys), "--dev-root", str(board.dev),
        "--plugin-dir", str(plugin_dir), "--metrics-port", str(port), "--metrics-host", "127.0.0.1", "--no-uevents",
        "--device-info-dir", "",  # never the node's /var/run: tests leave the host alone
    ]  # fmt: skip
    process = subprocess.Popen([PLUGIN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        registered_everything(kubelet)
        wait_until(lambda: scrape(port, "/readyz")[0] == 200, "readiness")
        yield process.pid, port
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_idle_connection_flood_costs_bounded_threads_and_probes_still_answer(plugin: tuple[int, int]) -> None:
    pid, port = plugin
    threads_before, rss_before = _status(pid, "Threads"), _status(pid, "VmRSS")
    idle: list[socket.socket] = []
    try:
        for _ in range(IDLE_CLIENTS):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        # Behind the flood, the probes and a scrape are served (the oldest idle connections made room).
        assert scrape(port, "/healthz") == (200, "ok\n")
        assert scrape(port, "/readyz") == (200, "ok\n")
        assert scrape(port, "/metrics")[0] == 200
        threads_during, rss_during = _status(pid, "Threads"), _status(pid, "VmRSS")
    finally:
        for conn in idle:
            conn.close()
    print(
        f"FIGURE metrics endpoint, {IDLE_CLIENTS} idle connections held: threads {threads_before} -> "
        f"{threads_during}, RSS {rss_before} KiB -> {rss_during} KiB (cap {MAX_CONNECTIONS} connections)"
    )
    assert threads_during <= threads_before + MAX_CONNECTIONS + 8


def test_a_silent_connection_is_hung_up_on(plugin: tuple[int, int]) -> None:
    _, port = plugin
    with socket.create_connection(("127.0.0.1", port), timeout=30 + IDLE_TIMEOUT) as silent:
        with suppress(ConnectionResetError):  # a reset is a hang-up too
            assert silent.recv(1) == b""  # the server closed it; before, it waited for ever
        # The endpoint itself is fine.
        assert scrape(port, "/healthz") == (200, "ok\n")


def test_metrics_host_defaults_to_the_node_ip_or_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """hostNetwork: 0.0.0.0 would expose the endpoint on every interface of the node."""
    monkeypatch.delenv("NODE_IP", raising=False)
    assert _parser().parse_args([]).metrics_host is None
    assert DaemonSettings.metrics_host_from_env() == "127.0.0.1" == DaemonSettings().metrics_host
    monkeypatch.setenv("NODE_IP", "192.0.2.7")
    assert DaemonSettings.metrics_host_from_env() == "192.0.2.7"
