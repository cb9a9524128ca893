#!/usr/bin/env python3
"""Benchmark: how quickly the device plugin follows the node, measured through the real daemon and kubelet stand-in.

Prints, for N repetitions each (p50 / p90 / max, milliseconds):
  1. sysfs change → the kubelet stand-in's ListAndWatch update, **timer path**: the daemon runs with uevents
     off and the default `--rescan-interval`, so the figure is the periodic rescan's latency (expect about
     half the interval on average).
  2. sysfs change → ListAndWatch update, **uevent path**: the daemon listens to kernel uevents with the timer
     effectively off (1 h). A generated sysfs tree emits no uevents, so right after changing it the benchmark
     makes the kernel emit a real one (`change` written to a real PCI device's uevent file; harmless, no driver
     is involved): the figure covers netlink → debounce → rescan → gRPC stream → stand-in.
  3. kubelet restart (the stand-in deletes every socket and serves a new kubelet.sock) → every pool registered
     again and its device list received.

The changes cycle through unbind / rebind a VF, remove / restore a /dev/vfio group node, add / remove a VF;
each is made at a random moment (seeded) so the timer and the kubelet watch are not hit in phase.
Everything runs in temporary directories and is removed at the end; each phase is bounded in time.

    .venv/bin/python hack/bench_deviceplugin.py [--repetitions 20] [--timer-repetitions 8]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from kubelet_stub import HEALTHY, UNHEALTHY, KubeletStub, StubDevice, temporary_plugin_dir  # noqa: E402

from deviceplugin.policy.config import SAMPLE_CONFIG  # noqa: E402
from deviceplugin.sampleboard import SampleBoard, build_sample_board  # noqa: E402

VF_RESOURCE = "intel.com/intel_vf"
DPRC_RESOURCE = "nxp.com/dpaa2_dprc"
RESOURCES = (VF_RESOURCE, DPRC_RESOURCE)
VF = "0001:01:00.1"
VF_GROUP = 20
NEW_VF = "0001:01:00.5"
NEW_VF_GROUP = 30
WAIT = 30.0  # one change must show within this, or the benchmark reports a failure


@dataclass(frozen=True)
class Change:
    """One sysfs change and what kubelet must then see."""

    label: str
    apply: Callable[[SampleBoard], None]
    seen: Callable[[dict[str, StubDevice]], bool]


def _health(device_id: str, health: str) -> Callable[[dict[str, StubDevice]], bool]:
    return lambda devices: device_id in devices and devices[device_id].health == health


def _remove_vf(board: SampleBoard) -> None:
    board.remove_pci_function(NEW_VF)
    board.remove_group_node(NEW_VF_GROUP)


CHANGES = (
    Change("unbind VF", lambda b: b.unbind(VF), _health(VF, UNHEALTHY)),
    Change("rebind VF", lambda b: b.bind(VF, "vfio-pci"), _health(VF, HEALTHY)),
    Change("remove /dev/vfio node", lambda b: b.remove_group_node(VF_GROUP), _health(VF, UNHEALTHY)),
    Change("restore /dev/vfio node", lambda b: b.add_group_node(VF_GROUP), _health(VF, HEALTHY)),
    Change("add VF", lambda b: b.add_vf(NEW_VF, NEW_VF_GROUP), _health(NEW_VF, HEALTHY)),
    Change("remove VF", _remove_vf, lambda devices: NEW_VF not in devices),
)


class DaemonProcess:
    """`vnfio-device-plugin` as a child process, logging to a file."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deviceplugin.cli", *args], stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text().splitlines()[-lines:])


def real_uevent_source() -> Path | None:
    """A real PCI device's uevent file: writing `change` to it makes the kernel send a pci uevent."""
    for entry in sorted(Path("/sys/bus/pci/devices").glob("*")):
        path = entry / "uevent"
        if os.access(path, os.W_OK):
            return path
    return None


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, max(0, round(0.9 * len(ordered)) - 1))]
    return (
        f"n={len(ordered):3d}  p50 {statistics.median(ordered) * 1000:8.1f} ms  p90 {p90 * 1000:8.1f} ms  "
        f"max {ordered[-1] * 1000:8.1f} ms"
    )


def wait_all_registered(kubelet: KubeletStub, counts: dict[str, int]) -> None:
    for resource in RESOURCES:
        kubelet.wait_registered(resource, counts.get(resource, 0) + 1, timeout=WAIT)
        kubelet.wait_for(resource, lambda devices: bool(devices), timeout=WAIT)


def measure_changes(
    kubelet: KubeletStub,
    board: SampleBoard,
    repetitions: int,
    after_change: Callable[[], None] | None,
    phase: Callable[[], float],
) -> dict[str, list[float]]:
    """Apply the change cycle `repetitions` times in all; seconds from each change to kubelet seeing it.

    Each change waits `phase()` seconds first: a change made right after kubelet saw the previous one would
    always land just after a timer rescan, and measure the full interval instead of a random moment in it.
    """
    results: dict[str, list[float]] = {c.label: [] for c in CHANGES}
    for i in range(repetitions):
        change = CHANGES[i % len(CHANGES)]
        time.sleep(phase())
        started = time.perf_counter()
        change.apply(board)
        if after_change is not None:
            after_change()
        kubelet.wait_for(VF_RESOURCE, change.seen, timeout=WAIT)
        results[change.label].append(time.perf_counter() - started)
    # Leave the board as it started, so the next phase begins from the same state.
    for j in range(repetitions, -(-repetitions // len(CHANGES)) * len(CHANGES)):
        change = CHANGES[j % len(CHANGES)]
        change.apply(board)
        if after_change is not None:
            after_change()
        kubelet.wait_for(VF_RESOURCE, change.seen, timeout=WAIT)
    return results


def measure_restarts(kubelet: KubeletStub, repetitions: int, phase: Callable[[], float]) -> list[float]:
    results = []
    for _ in range(repetitions):
        counts = {r: kubelet.registration_count(r) for r in RESOURCES}
        time.sleep(phase())  # a random moment relative to the daemon's 100 ms kubelet watch
        kubelet.stop()
        started = time.perf_counter()
        kubelet.start()
        wait_all_registered(kubelet, counts)
        results.append(time.perf_counter() - started)
    return results


def report(title: str, results: dict[str, list[float]]) -> None:
    print(title)
    everything = [s for samples in results.values() for s in samples]
    for label, samples in results.items():
        if samples:
            print(f"    {label:24s} {percentiles(samples)}")
    print(f"    {'all changes':24s} {percentiles(everything)}")


def run(args: argparse.Namespace) -> int:
    uevent_file = real_uevent_source()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="vnfio-bench-") as tmp, temporary_plugin_dir("bench") as plugin_dir:
        root = Path(tmp)
        board = build_sample_board(root / "board")
        config = root / "config.json"
        config.write_text(json.dumps(SAMPLE_CONFIG))
        common = [
            "--config", str(config), "--sysfs-root", str(board.sys), "--dev-root", str(board.dev),
            "--plugin-dir", str(plugin_dir), "--log-level", "info",
            "--device-info-dir", "",  # a generated board's devices stay out of the host's /var/run
        ]  # fmt: skip
        kubelet = KubeletStub(plugin_dir)
        kubelet.start()
        daemon: DaemonProcess | None = None
        failed = False
        try:
            print(f"device plugin benchmark: sample board, pools {', '.join(RESOURCES)}, kubelet stand-in")

            # 1. timer path
            daemon = DaemonProcess(
                [*common, "--rescan-interval", str(args.rescan_interval), "--no-uevents"], root / "timer.log"
            )
            wait_all_registered(kubelet, {})
            timer = measure_changes(
                kubelet, board, args.timer_repetitions, None, lambda: rng.uniform(0, args.rescan_interval)
            )
            report(f"sysfs change -> ListAndWatch update, timer path (--rescan-interval {args.rescan_interval:g}, "
                   "no uevents):", timer)
            code = daemon.stop()
            daemon = None
            if code != 0:
                print(f"    daemon exited {code} on SIGTERM")
                failed = True

            # 2. uevent path, 3. kubelet restarts (same daemon)
            counts = {r: kubelet.registration_count(r) for r in RESOURCES}
            daemon = DaemonProcess([*common, "--rescan-interval", "3600"], root / "uevent.log")
            wait_all_registered(kubelet, counts)
            if uevent_file is None:
                print("sysfs change -> ListAndWatch update, uevent path: skipped (no writable PCI uevent file)")
            else:
                def kick() -> None:
                    uevent_file.write_text(f"change {uuid.uuid4()}")

                # The listener is up once the daemon is registered; one kick proves the path before timing.
                kick()
                triggered = measure_changes(kubelet, board, args.repetitions, kick, lambda: rng.uniform(0, 0.1))
                report(
                    "sysfs change -> ListAndWatch update, uevent path "
                    f"(real kernel uevent from {uevent_file.parent.name}, timer at 1 h):",
                    triggered,
                )
            restarts = measure_restarts(kubelet, args.repetitions, lambda: rng.uniform(0, 0.1))
            print("kubelet restart -> every pool registered again with its device list:")
            print(f"    {'restart':24s} {percentiles(restarts)}")
            code = daemon.stop()
            daemon = None
            if code != 0:
                print(f"    daemon exited {code} on SIGTERM")
                failed = True
            leftovers = sorted(p.name for p in plugin_dir.iterdir() if p.name.startswith("vnfio-"))
            print(f"after SIGTERM: exit code {code}, plugin sockets left: {leftovers or 'none'}")
        except TimeoutError as exc:
            print(f"FAILED: {exc}")
            if daemon is not None:
                print(daemon.tail())
            failed = True
        finally:
            if daemon is not None:
                daemon.stop()
            kubelet.close()
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=20, help="changes on the uevent path and kubelet restarts")
    parser.add_argument("--timer-repetitions", type=int, default=8, help="changes on the (slow) timer path")
    parser.add_argument("--rescan-interval", type=float, default=5.0, help="the timer path's interval (daemon default)")
    parser.add_argument("--seed", type=int, default=4, help="seed of the random moments changes are made at")
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
