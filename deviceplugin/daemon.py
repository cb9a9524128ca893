"""The device plugin daemon: config → discovery → pools → one gRPC server per pool, registered with kubelet
and kept true to the node until SIGTERM.

`Daemon` is the Device Plugin API transport on the shared daemon core (`deviceplugin.core.DaemonCore`: config,
reloads, rescans on uevents and the timer, guarded tasks, metrics, node reporter). It owns one `PoolEndpoint`
per pool (server, registration with kubelet, start failures) and offers one method per thing that can happen
to them (a pool to start, stop or serve anew, a kubelet to register with again); the kubelet watch decides
*when*. A failure in one pool is logged and costs that pool only; metrics, uevents and the Kubernetes API are
never fatal.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import replace
from pathlib import Path

from deviceplugin.core import DaemonCore
from deviceplugin.discovery.uevents import open_uevent_socket
from deviceplugin.kubelet.dpapi.endpoint import PoolEndpoint
from deviceplugin.kubelet.dpapi.kubeletwatch import DEFAULT_POLL_INTERVAL as KUBELET_POLL_INTERVAL
from deviceplugin.kubelet.dpapi.kubeletwatch import KubeletWatch, file_identity, kubelet_socket
from deviceplugin.kubelet.dpapi.outputs import OutputSettings, check_output_dir
from deviceplugin.kubelet.dpapi.server import RpcEvent, RpcObserver
from deviceplugin.observability.metrics import PluginMetrics
from deviceplugin.observability.nodeinfo import NodeReporter
from deviceplugin.policy.config import SAMPLE_BOARD_CONFIG
from deviceplugin.policy.configwatch import DEFAULT_POLL_INTERVAL as CONFIG_POLL_INTERVAL
from deviceplugin.records import ResourcePool
from deviceplugin.settings import DaemonSettings

log = logging.getLogger(__name__)



class Daemon(DaemonCore):
    """The running device plugin. Call its methods on the event loop that runs `run()`."""

    component = "device plugin"
    sample_pools = SAMPLE_BOARD_CONFIG  # run_daemon's --sample-board is the full board (platform, vhost-net too)

    def __init__(
        self,
        settings: DaemonSettings,
        *,
        sample_config: bool = False,
        rpc_observer: RpcObserver | None = None,
        metrics: PluginMetrics | None = None,
        node_reporter: NodeReporter | None = None,
        uevent_socket: Callable[[], socket.socket] = open_uevent_socket,
        kubelet_poll: float = KUBELET_POLL_INTERVAL,
        config_poll: float = CONFIG_POLL_INTERVAL,
    ) -> None:
        """`metrics`, `node_reporter` and `uevent_socket` default to the real ones built from `settings`;
        tests and benchmarks pass their own (a registry to read, an API server stand-in, a socket to inject
        events into)."""
        super().__init__(
            settings,
            sample_config=sample_config,
            metrics=metrics,
            node_reporter=node_reporter,
            uevent_socket=uevent_socket,
            config_poll=config_poll,
        )
        self.rpc_observer = rpc_observer
        self.kubelet_watch = KubeletWatch(
            settings.plugin_dir,
            on_kubelet_restart=self._on_kubelet_restart,
            on_socket_removed=self._on_socket_removed,
            interval=kubelet_poll,
        )
        self._kubelet_changed = asyncio.Event()  # replaced on every kubelet restart: wakes registration retries
        self.endpoints: dict[str, PoolEndpoint] = {}  # every configured pool's serving state, by resource name

    # ------------------------------------------------------------------------------------- transport
    def _describe(self) -> str:
        return f", plugin dir {self.settings.plugin_dir}"

    async def _start_transport(self) -> bool:
        """An unusable --cdi-dir or --device-info-dir is fatal at start (later write failures are only logged and
        counted): an operator who asked for them should learn it now, not at the first pod."""
        for flag, path in (("--cdi-dir", self.settings.cdi_dir), ("--device-info-dir", self.settings.device_info_dir)):
            if path is None:
                continue
            try:
                check_output_dir(path, flag)
            except OSError as exc:
                log.error("%s", exc.strerror or exc)
                return False
        return True

    def _transport_started(self) -> None:
        # Watch kubelet only once our sockets exist, so the first look sees them.
        self.spawn(self.kubelet_watch.run(), "kubelet watch")

    async def _stop_transport(self) -> None:
        await asyncio.gather(*(endpoint.cancel_registration() for endpoint in self.endpoints.values()))
        await asyncio.gather(*(endpoint.stop() for endpoint in self.endpoints.values()))
        for endpoint in self.endpoints.values():
            endpoint.release_outputs()
        self.endpoints.clear()

    async def _reconcile(self, pools: Mapping[str, ResourcePool]) -> None:
        for resource in [r for r in self.endpoints if r not in pools]:
            endpoint = self.endpoints.pop(resource)
            if endpoint.serving:
                log.info("pool %s is no longer configured", resource, extra={"resource": resource})
            await endpoint.stop()
            endpoint.release_outputs()
        self._record_pools(pools)
        for resource, pool in pools.items():
            endpoint = self.endpoints.get(resource)
            if endpoint is None:
                endpoint = self.endpoints[resource] = self._endpoint(pool)
            if not endpoint.serving:
                await endpoint.start(pool, clash=self._clash(endpoint))
            elif not endpoint.socket_present():
                # Someone (a restarting kubelet) deleted our socket: nobody can reach this server any more.
                log.info("socket of %s is gone: serving it anew", resource, extra={"resource": resource})
                await endpoint.restart(pool)
            else:
                endpoint.update(pool)
        self.pools = dict(pools)

    def _endpoint(self, pool: ResourcePool) -> PoolEndpoint:
        return PoolEndpoint(
            pool,
            self.settings.plugin_dir,
            metrics=self.metrics,
            kubelet_watch=self.kubelet_watch,
            kubelet_changed=lambda: self._kubelet_changed,
            observer=self._observe_rpc,
            outputs=OutputSettings(self.settings.cdi_dir, self.settings.cdi_only, self.settings.device_info_dir),
        )

    def _clash(self, endpoint: PoolEndpoint) -> str | None:
        """Another serving pool on the same socket name (the config rules this out; a second line of defence)."""
        return next(
            (e.resource_name for e in self.endpoints.values()
             if e is not endpoint and e.serving and e.socket_name == endpoint.socket_name),
            None,
        )

    # ----------------------------------------------------------------------------------------- kubelet
    async def _on_socket_removed(self, name: str) -> None:
        """Our socket is gone (kubelet deletes them all when it starts): serve that pool anew and register."""
        async with self._lock:
            if self.stopping:
                return
            endpoint = next((e for e in self.endpoints.values() if e.serving and e.socket_name == name), None)
            if endpoint is None or endpoint.socket_present():
                return  # stopped meanwhile, or a rescan already served it anew
            resource = endpoint.resource_name
            log.info("socket %s was deleted: serving %s anew", name, resource, extra={"resource": resource})
            await endpoint.restart(self.pools.get(resource, endpoint.pool))

    async def _on_kubelet_restart(self) -> None:
        """A new kubelet.sock: kubelet restarted and forgot every plugin. Register each pool with it."""
        self.metrics.kubelet_restarted()
        changed, self._kubelet_changed = self._kubelet_changed, asyncio.Event()
        changed.set()  # registrations waiting out a backoff try again now
        await self.reregister_all()

    async def reregister_all(self) -> None:
        """Register every served pool with the kubelet now listening (it restarted); pools whose socket is gone
        are served anew. Pools already registered with this kubelet, or still trying, are left alone: a
        second Register would only make kubelet drop and redial a working endpoint."""
        async with self._lock:
            if self.stopping:
                return
            current = file_identity(kubelet_socket(self.settings.plugin_dir))
            for resource, endpoint in list(self.endpoints.items()):
                if not endpoint.serving:
                    continue
                if not endpoint.socket_present():
                    await endpoint.restart(self.pools.get(resource, endpoint.pool))
                elif endpoint.needs_registration(current):
                    self.metrics.unregistered(resource)
                    endpoint.register_in_background()

    # ------------------------------------------------------------------------------------------- RPCs
    def _observe_rpc(self, event: RpcEvent) -> None:
        if event.method == "Allocate":
            self.metrics.observe_allocate(event.resource, event.seconds, event.status, len(event.device_ids))
        elif event.method == "GetPreferredAllocation":
            self.metrics.observe_preferred_allocation(event.resource, event.seconds)
        if self.rpc_observer is not None:
            self.rpc_observer(event)


# ------------------------------------------------------------------------------------------ entry point
def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def _serve(daemon: Daemon) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop)
    try:
        return await daemon.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with suppress(Exception):
                loop.remove_signal_handler(sig)


def run_daemon(settings: DaemonSettings, sample_board: bool = False) -> int:
    """The `vnfio-device-plugin` daemon: runs until SIGTERM/SIGINT, then returns 0 (1: unusable config)."""
    setup_logging(settings.log_level)
    if not sample_board:
        return asyncio.run(_serve(Daemon(settings)))
    from deviceplugin.sampleboard import full_sample_board

    with tempfile.TemporaryDirectory(prefix="vnfio-sample-board-") as tmp:
        board = full_sample_board(Path(tmp))
        log.info("sample board: sysfs root %s, dev root %s", board.sys, board.dev)
        settings = replace(settings, sysfs_root=board.sys, dev_root=board.dev)
        return asyncio.run(_serve(Daemon(settings, sample_config=True)))
