"""The DRA driver daemon: the shared daemon core (config, reloads, rescans on uevents and the timer, metrics)
with DRA as its kubelet transport — ResourceSlices through the API server, and the registration and DRAPlugin
servers on kubelet's sockets.

Each rescan publishes the node's healthy devices (the publisher writes them within the same second) and
replaces the devices Prepare looks up; prepared claims live in the checkpoint, independent of rescans.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import tempfile
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path

from deviceplugin.core import DaemonCore
from deviceplugin.discovery.uevents import open_uevent_socket
from deviceplugin.kubelet.dra.checkpoint import FILE_NAME as CHECKPOINT_FILE
from deviceplugin.kubelet.dra.kubeapi import KubeApi, connect
from deviceplugin.kubelet.dra.publisher import SlicePublisher
from deviceplugin.kubelet.dra.service import DraServer
from deviceplugin.kubelet.dra.slices import device_name, published_devices
from deviceplugin.kubelet.dra.state import ClaimState
from deviceplugin.observability.metrics import DraMetrics
from deviceplugin.observability.nodeinfo import NodeReporter
from deviceplugin.policy.configwatch import DEFAULT_POLL_INTERVAL as CONFIG_POLL_INTERVAL
from deviceplugin.records import Inventory, PoolDevice, ResourcePool
from deviceplugin.settings import DaemonSettings

log = logging.getLogger(__name__)

DEFAULT_DRIVER_NAME = "vnfio.io"
DEFAULT_REGISTRY_DIR = Path("/var/lib/kubelet/plugins_registry")
DEFAULT_PLUGINS_DIR = Path("/var/lib/kubelet/plugins")
DEFAULT_CDI_DIR = Path("/var/run/cdi")


@dataclass(frozen=True)
class DraSettings:
    """The DRA transport's settings beside the shared daemon settings (whose node name is required here)."""

    daemon: DaemonSettings
    node_name: str
    driver_name: str = DEFAULT_DRIVER_NAME
    kubeconfig: Path | None = None  # None: in-cluster service account
    registry_dir: Path = DEFAULT_REGISTRY_DIR
    plugins_dir: Path = DEFAULT_PLUGINS_DIR
    cdi_dir: Path = DEFAULT_CDI_DIR

    @property
    def driver_dir(self) -> Path:
        return self.plugins_dir / self.driver_name


class DraDriver(DaemonCore):
    """The running DRA driver. Call its methods on the event loop that runs `run()`."""

    component = "DRA driver"

    def __init__(
        self,
        settings: DraSettings,
        *,
        sample_config: bool = False,
        metrics: DraMetrics | None = None,
        api: Callable[[], KubeApi] | None = None,
        uevent_socket: Callable[[], socket.socket] = open_uevent_socket,
        config_poll: float = CONFIG_POLL_INTERVAL,
    ) -> None:
        self.dra_metrics = metrics if metrics is not None else DraMetrics()
        super().__init__(
            settings.daemon,
            sample_config=sample_config,
            metrics=self.dra_metrics,
            uevent_socket=uevent_socket,
            config_poll=config_poll,
        )
        self.dra = settings
        self._api_factory = api or (lambda: KubeApi(connect(settings.kubeconfig)))
        self.devices: dict[str, tuple[ResourcePool, PoolDevice]] = {}  # every device by slice name, for Prepare
        self.publisher = SlicePublisher(
            self._api_factory, settings.node_name, settings.driver_name, on_published=self._published
        )
        self.state: ClaimState | None = None
        self.server: DraServer | None = None
        self._unhealthy = 0

    # ------------------------------------------------------------------------------------- transport
    def _describe(self) -> str:
        return (
            f", driver {self.dra.driver_name} on node {self.dra.node_name}, registry {self.dra.registry_dir}, "
            f"plugins {self.dra.plugins_dir}, CDI {self.dra.cdi_dir}"
        )

    def _node_reporter(self) -> NodeReporter | None:
        # DeviceClasses select DRA devices by attributes: node labels would need node-wide write access for nothing.
        return None

    async def _start_transport(self) -> bool:
        try:
            self.dra.cdi_dir.mkdir(parents=True, exist_ok=True)
            self.dra.driver_dir.mkdir(parents=True, exist_ok=True)
            self.state = ClaimState(
                driver=self.dra.driver_name,
                node=self.dra.node_name,
                cdi_dir=self.dra.cdi_dir,
                checkpoint_path=self.dra.driver_dir / CHECKPOINT_FILE,
                api=self._api_factory,
                devices=lambda: self.devices,
                observer=self.dra_metrics.observe_claim,
            )
            self.server = DraServer(
                self.dra.driver_name, self.dra.registry_dir, self.dra.plugins_dir, self.state,
                on_status=lambda ok: self.dra_metrics.driver_registered.set(1 if ok else 0),
            )
        except OSError as exc:
            log.error("DRA driver cannot start: %s", exc)
            return False
        self.spawn(self.publisher.run(), "ResourceSlice publisher")
        return True

    def _transport_started(self) -> None:
        # Register with kubelet only once the first rescan filled the devices: Prepare may follow at once.
        self.spawn(self._serve(), "DRA servers")

    async def _serve(self) -> None:
        assert self.server is not None
        while True:
            try:
                await self.server.start()
                break
            except OSError as exc:
                log.error("serving DRA driver %s failed (retrying): %s", self.dra.driver_name, exc)
                await asyncio.sleep(1.0)
        await self.server.watch()

    async def _stop_transport(self) -> None:
        if self.server is not None:
            await self.server.stop()
        if self.publisher.published != self.publisher._wanted:
            log.info("a ResourceSlice update was still pending at shutdown")

    async def _reconcile(self, pools: Mapping[str, ResourcePool]) -> None:
        self._record_pools(pools)
        inventory = self.inventory or Inventory()
        devices: dict[str, tuple[ResourcePool, PoolDevice]] = {}
        for pool in pools.values():
            for device in pool.devices:
                try:
                    devices[device_name(device)] = (pool, device)
                except ValueError as exc:
                    log.warning("%s: left out of the ResourceSlices", exc)
        try:
            published = published_devices(self.dra.driver_name, pools.values(), inventory)
        except ValueError as exc:
            log.error("cannot publish the devices of node %s: %s", self.dra.node_name, exc)
            return
        self.devices = devices
        self._unhealthy = sum(1 for _, d in devices.values() if not d.healthy)
        self.publisher.publish([p.document for p in published.values()])
        self.pools = dict(pools)

    def _published(self, count: int) -> None:
        self.dra_metrics.set_published(count, self._unhealthy, self.publisher.generation)


# ------------------------------------------------------------------------------------------ entry point
async def _serve(driver: DraDriver) -> int:
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, driver.stop)
    try:
        return await driver.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with suppress(Exception):
                loop.remove_signal_handler(sig)


def run_driver(settings: DraSettings, sample_board: bool = False) -> int:
    """The `vnfio-dra-driver` daemon: runs until SIGTERM/SIGINT, then returns 0 (1: unusable config or sockets)."""
    from deviceplugin.daemon import setup_logging

    setup_logging(settings.daemon.log_level)
    if not sample_board:
        return asyncio.run(_serve(DraDriver(settings)))
    from deviceplugin.sampleboard import build_sample_board

    with tempfile.TemporaryDirectory(prefix="vnfio-sample-board-") as tmp:
        board = build_sample_board(Path(tmp))
        log.info("sample board: sysfs root %s, dev root %s", board.sys, board.dev)
        daemon = replace(settings.daemon, sysfs_root=board.sys, dev_root=board.dev)
        return asyncio.run(_serve(DraDriver(replace(settings, daemon=daemon), sample_config=True)))
