"""Chaos around the running daemon (`vnfio-device-plugin` as a process, the kubelet stand-in in its plugin
dir): kubelet restarted 50 times at random moments, both ways kubelet shows a restart, also right while the
plugin registers and while Allocate calls are in flight; and the daemon itself stopped (SIGTERM) or killed
(SIGKILL) while pods hold devices. In the end every pool is registered with the kubelet that is running now,
kubelet's device lists are right, and Allocate for the same IDs gives byte-identical answers: the plugin keeps
no allocation state, kubelet's checkpoint does.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from kubelet_stub import KubeletStub, device_health
from test_daemon_permissions import SOCKETS, assert_private_sockets

from deviceplugin.policy.config import SAMPLE_CONFIG
from deviceplugin.sampleboard import SampleBoard

pytestmark = pytest.mark.hardening  # attacks and faults: tried as an attacker or a careless operator would

DPRC = "nxp.com/dpaa2_dprc"
VF = "intel.com/intel_vf"
EXPECTED = {
    DPRC: {"dprc.2": "Healthy", "dprc.3": "Healthy"},
    VF: {"0001:01:00.1": "Healthy", "0001:01:00.2": "Healthy", "iommu-group-22": "Healthy"},
}
PLUGIN = str(Path(sys.executable).parent / "vnfio-device-plugin")
RESTARTS = 50


class Daemon:
    """The daemon process, its log kept for the assertions."""

    def __init__(self, board: SampleBoard, plugin_dir: Path, config: Path, log: Path) -> None:
        self.log_path = log
        self._log = log.open("w")
        args = [
            "--config", str(config),
            "--sysfs-root", str(board.sys),
            "--dev-root", str(board.dev),
            "--plugin-dir", str(plugin_dir),
            "--device-info-dir", "",  # never the node's /var/run: tests leave the host alone
            "--rescan-interval", "0.2",  # the safety net behind the kubelet watch, as the brief allows
            "--no-uevents",
        ]  # fmt: skip
        self.process = subprocess.Popen([PLUGIN, *args], stdout=self._log, stderr=subprocess.STDOUT)

    def signal(self, sig: signal.Signals) -> int:
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=20)
        finally:
            self._log.close()

    @property
    def log(self) -> str:
        return self.log_path.read_text()


@contextmanager
def running(board: SampleBoard, plugin_dir: Path, config: Path, log: Path) -> Iterator[Daemon]:
    daemon = Daemon(board, plugin_dir, config, log)
    try:
        yield daemon
    finally:
        if daemon.process.poll() is None:
            daemon.signal(signal.SIGKILL)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(SAMPLE_CONFIG))
    return path


def everything_registered(kubelet: KubeletStub, timeout: float = 15.0) -> None:
    for resource, expected in EXPECTED.items():
        kubelet.wait_for(resource, lambda d, e=expected: device_health(d) == e, timeout)


def answers(kubelet: KubeletStub) -> dict[tuple[str, str], bytes]:
    """Allocate for every device alone, as kubelet would store it in its checkpoint (deterministic bytes)."""
    return {
        (resource, device): kubelet.allocate(resource, [device]).SerializeToString(deterministic=True)
        for resource, devices in EXPECTED.items()
        for device in devices
    }


def socket_identities(plugin_dir: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for name in SOCKETS:
        try:
            st = os.lstat(plugin_dir / name)
        except FileNotFoundError:
            continue
        found[name] = (st.st_ino, st.st_ctime_ns)
    return found


class Allocator(threading.Thread):
    """Kubelet admitting pods throughout: Allocate calls one after another while kubelet restarts under
    them. A call may fail (kubelet is down, the plugin not yet registered again); an answer must be exact."""

    def __init__(self, kubelet: KubeletStub, expected: dict[tuple[str, str], bytes], seed: int) -> None:
        super().__init__(name="allocator", daemon=True)
        self.kubelet = kubelet
        self.expected = expected
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.answered = self.failed = 0
        self.wrong: list[tuple[str, str]] = []
        self.finished = False

    def run(self) -> None:
        keys = sorted(self.expected)
        while not self.stop.is_set():
            resource, device = self.rng.choice(keys)
            try:
                got = self.kubelet.allocate(resource, [device]).SerializeToString(deterministic=True)
            except (grpc.RpcError, KeyError, TimeoutError, concurrent.futures.CancelledError):
                # Kubelet went away under the call (its channel closed), or the pool is not registered yet.
                self.failed += 1
                time.sleep(0.01)
                continue
            if got == self.expected[(resource, device)]:
                self.answered += 1
            else:
                self.wrong.append((resource, device))
        self.finished = True


def test_fifty_kubelet_restarts_at_random_moments_end_with_every_pool_registered(
    tmp_path: Path, board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, config: Path
) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    print(f"chaos seed {seed}")  # shown with a failure: the restart gaps and allocation order come from it
    rng = random.Random(seed)
    with running(board, plugin_dir, config, tmp_path / "daemon.log") as daemon:
        everything_registered(kubelet)
        before = answers(kubelet)
        allocators = [Allocator(kubelet, before, seed + i) for i in range(3)]  # concurrent pod admissions
        for allocator in allocators:
            allocator.start()
        kinds = {"sockets deleted": 0, "kubelet.sock renewed only": 0, "during Register": 0}
        try:
            for restart in range(RESTARTS):
                kind = ("sockets deleted", "kubelet.sock renewed only", "during Register")[restart % 3]
                if kind == "during Register":
                    # Right after the plugin served a fresh socket, while it is registering with kubelet.
                    sockets = socket_identities(plugin_dir)
                    kubelet.restart()
                    deadline = time.monotonic() + 5
                    while time.monotonic() < deadline and not (
                        set(socket_identities(plugin_dir).items()) - set(sockets.items())
                    ):
                        time.sleep(0.002)
                    kubelet.restart()
                else:
                    time.sleep(rng.uniform(0.0, 0.4))
                    kubelet.restart(keep_plugin_sockets=kind == "kubelet.sock renewed only")
                kinds[kind] += 1
            last_restart = time.monotonic()
            everything_registered(kubelet)
        finally:
            for allocator in allocators:
                allocator.stop.set()
            for allocator in allocators:
                allocator.join(15)
        assert daemon.process.poll() is None, daemon.log
        # Registered with the kubelet running now, not merely remembered from one that went away.
        for resource in EXPECTED:
            assert kubelet.wait_registered(resource).at > last_restart
        assert {p.name for p in plugin_dir.iterdir() if p.is_socket()} == SOCKETS | {"kubelet.sock"}
        assert_private_sockets(plugin_dir)
        assert answers(kubelet) == before
        assert all(not a.is_alive() and a.finished for a in allocators), "an allocator died on an unexpected error"
        assert [w for a in allocators for w in a.wrong] == []
        answered, failed = sum(a.answered for a in allocators), sum(a.failed for a in allocators)
        assert answered > 0 and failed > 0  # calls were in flight across restarts
    print(
        f"\nFIGURE chaos: {RESTARTS} kubelet restarts survived ({kinds}, seed {seed}); "
        f"{answered} Allocate calls from 3 threads answered exactly during them, {failed} failed while "
        f"kubelet was away, 0 wrong; {kubelet.registration_count()} registrations in all"
    )


def _nobody_listens(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except ConnectionRefusedError:
            return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_daemon_restart_while_pods_hold_devices_gives_identical_answers(
    tmp_path: Path, board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, config: Path, sig: signal.Signals
) -> None:
    with running(board, plugin_dir, config, tmp_path / "first.log") as first:
        everything_registered(kubelet)
        # Pods admitted before the restart: kubelet keeps these answers in its checkpoint.
        held = answers(kubelet)
        code = first.signal(sig)
    if sig == signal.SIGTERM:
        assert code == 0, first.log
        assert not any((plugin_dir / name).exists() for name in SOCKETS)
    else:
        assert code == -signal.SIGKILL
        # A killed daemon leaves its sockets behind with nobody listening.
        assert all(_nobody_listens(plugin_dir / name) for name in SOCKETS)
    # Kubelet saw the streams end: the devices stay listed, unhealthy, until the plugin is back.
    for resource, expected in EXPECTED.items():
        kubelet.wait_for(resource, lambda d, e=expected: device_health(d) == dict.fromkeys(e, "Unhealthy"))
    registrations = {resource: kubelet.registration_count(resource) for resource in EXPECTED}
    with running(board, plugin_dir, config, tmp_path / "second.log") as second:
        for resource, count in registrations.items():
            kubelet.wait_registered(resource, count + 1, timeout=15)
        everything_registered(kubelet)
        assert_private_sockets(plugin_dir)
        assert answers(kubelet) == held
        if sig == signal.SIGKILL:
            assert second.log.count("removing stale socket") == len(SOCKETS), second.log
        assert second.signal(signal.SIGTERM) == 0
    assert {p.name for p in plugin_dir.iterdir()} == {"kubelet.sock"}


def test_ten_kills_in_a_row_each_come_back(
    tmp_path: Path, board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, config: Path
) -> None:
    """SIGKILL at a random moment of the daemon's life (starting, serving, registering), ten times: each new
    process takes over the stale sockets and registers."""
    seed = int.from_bytes(os.urandom(4), "big")
    print(f"kill seed {seed}")
    rng = random.Random(seed)
    for round_ in range(10):
        with running(board, plugin_dir, config, tmp_path / f"kill-{round_}.log") as daemon:
            time.sleep(rng.uniform(0.0, 1.5))
            daemon.signal(signal.SIGKILL)
    count = kubelet.registration_count()
    registrations = {resource: kubelet.registration_count(resource) for resource in EXPECTED}
    with running(board, plugin_dir, config, tmp_path / "last.log") as daemon:
        for resource, before in registrations.items():
            kubelet.wait_registered(resource, before + 1, timeout=15)
        everything_registered(kubelet)
        assert_private_sockets(plugin_dir)
        assert kubelet.allocate(DPRC, ["dprc.2"]).envs["DPRC"] == "dprc.2"
        assert daemon.signal(signal.SIGTERM) == 0
    assert kubelet.registration_count() > count
    print("\nFIGURE chaos: 10 SIGKILLs at random moments of the daemon's life, each followed by a clean takeover")
