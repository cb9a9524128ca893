"""The device plugin daemon: config → discovery → pools → one gRPC server per pool, registered with kubelet
and kept true to the node until SIGTERM.

`Daemon` owns the running state and offers one method per thing that can happen to it (a rescan, a new
config, a pool to start, stop or serve anew, a kubelet to register with again); the event sources only
decide *when* to call them: kernel uevents and the rescan timer (rescan), the kubelet watch (serve anew,
register again), the config watch (reload). Metrics and node labels/events observe what happens.
A failure in one pool is logged and costs that pool only; metrics, uevents and the Kubernetes API are
never fatal.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Coroutine, Mapping
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

from deviceplugin.discovery.inventory import discover
from deviceplugin.discovery.uevents import Uevent, UeventListener, open_uevent_socket
from deviceplugin.kubelet.dpapi.endpoint import PoolEndpoint
from deviceplugin.kubelet.dpapi.kubeletwatch import DEFAULT_POLL_INTERVAL as KUBELET_POLL_INTERVAL
from deviceplugin.kubelet.dpapi.kubeletwatch import KubeletWatch, file_identity, kubelet_socket
from deviceplugin.kubelet.dpapi.outputs import OutputSettings, check_output_dir
from deviceplugin.kubelet.dpapi.server import RpcEvent, RpcObserver
from deviceplugin.observability.metrics import MetricsEndpoint, PluginMetrics, serve_metrics
from deviceplugin.observability.nodeinfo import NodeReporter
from deviceplugin.policy.config import (
    SAMPLE_BOARD_CONFIG,
    ConfigError,
    ConfigResult,
    PoolConfig,
    load_config,
    parse_config,
)
from deviceplugin.policy.configwatch import DEFAULT_POLL_INTERVAL as CONFIG_POLL_INTERVAL
from deviceplugin.policy.configwatch import ConfigWatch
from deviceplugin.policy.pools import build_pools
from deviceplugin.records import ResourcePool
from deviceplugin.settings import DaemonSettings
from deviceplugin.tasks import TaskGroup

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 1.0  # the loop proves it is alive to /healthz this often
REPORTER_FLUSH = 2.0  # at shutdown, give queued node events this long to reach the API server


class Daemon:
    """The running device plugin. Call its methods on the event loop that runs `run()`."""

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
        self.settings = settings
        self._sample_config = sample_config  # no config file: use the built-in sample (sample board only)
        self.rpc_observer = rpc_observer
        self.metrics = metrics if metrics is not None else PluginMetrics()
        self.metrics_endpoint: MetricsEndpoint | None = None
        self.node_reporter = node_reporter
        self._uevent_socket = uevent_socket
        self._config_poll = config_poll
        self.kubelet_watch = KubeletWatch(
            settings.plugin_dir,
            on_kubelet_restart=self._on_kubelet_restart,
            on_socket_removed=self._on_socket_removed,
            interval=kubelet_poll,
        )
        self._kubelet_changed = asyncio.Event()  # replaced on every kubelet restart: wakes registration retries
        self.configs: tuple[PoolConfig, ...] = ()
        self.pools: dict[str, ResourcePool] = {}  # the last build, by full resource name
        self.endpoints: dict[str, PoolEndpoint] = {}  # every configured pool's serving state, by resource name
        self._tasks = TaskGroup()
        self._lock = asyncio.Lock()  # one change of pools or endpoints at a time
        self._stopping = asyncio.Event()
        self._reported: tuple[str, ...] = ()

    # ------------------------------------------------------------------------------------- lifecycle
    async def run(self) -> int:
        """Load the config, serve and register every valid pool, and keep them true to the node (uevents,
        rescans, kubelet restarts, config changes) until `stop()`; 0 on a clean stop, 1 when the config file
        is unusable at start or the metrics port cannot be bound."""
        config_watch = self._config_watch()
        if config_watch is not None:
            config_watch.baseline()  # before reading: a change in between is then seen as a change
        try:
            result = self.load_config()
        except ConfigError as exc:
            log.error("%s", exc)
            return 1
        self.metrics.config_loaded(True)
        try:
            self._check_output_dirs()
        except OSError as exc:
            log.error("%s", exc.strerror or exc)
            return 1
        if self.settings.metrics_port:
            try:
                self.metrics_endpoint = serve_metrics(
                    self.metrics, self.settings.metrics_host, self.settings.metrics_port
                )
            except OSError as exc:
                log.error(
                    "cannot serve metrics on %s:%d: %s",
                    self.settings.metrics_host,
                    self.settings.metrics_port,
                    exc.strerror or exc,
                )
                return 1
        log.info(
            "device plugin starting: sysfs %s, dev %s, plugin dir %s",
            self.settings.sysfs_root,
            self.settings.dev_root,
            self.settings.plugin_dir,
        )
        if self.node_reporter is None and self.settings.node_name:
            self.node_reporter = NodeReporter(self.settings.node_name)
        if self.node_reporter is not None:
            self.spawn(self.node_reporter.run(), "node labels and events")
        if self.settings.uevents:
            listener = UeventListener(self._on_uevents, open_socket=self._uevent_socket)
            # Without a uevent socket the listener says so and returns: the periodic rescan still finds changes.
            self.spawn(listener.run(), "uevent listener", may_end=True)
        self.spawn(self._heartbeat(), "heartbeat")
        await self.apply_config(result, reason="start")
        # Watch kubelet only once our sockets exist, so the first look sees them.
        self.spawn(self.kubelet_watch.run(), "kubelet watch")
        if config_watch is not None:
            self.spawn(config_watch.run(), "config watch")
        if self.settings.rescan_interval > 0:
            self.spawn(self._rescan_periodically(), "periodic rescan")
        await self._stopping.wait()
        await self._shutdown()
        return 0

    def _check_output_dirs(self) -> None:
        for flag, path in (("--cdi-dir", self.settings.cdi_dir), ("--device-info-dir", self.settings.device_info_dir)):
            if path is not None:
                check_output_dir(path, flag)

    def _config_watch(self) -> ConfigWatch | None:
        if self._sample_config and not self.settings.config.exists():
            return None  # the built-in sample: nothing on disk to follow
        return ConfigWatch(self.settings.config, self.reload_config, interval=self._config_poll)

    async def _heartbeat(self) -> None:
        while True:
            self.metrics.heartbeat()
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    def stop(self) -> None:
        """Ask `run()` to end (signal handlers call this): streams end, sockets go, run() returns 0."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str, *, may_end: bool = False) -> asyncio.Task[None]:
        """Run a background task (a watcher, a timer) until the daemon stops; a failure, or an end nobody asked
        for, is logged."""
        return self._tasks.spawn(coro, name, may_end=may_end)

    async def _shutdown(self) -> None:
        log.info("stopping: ending streams and removing sockets")
        if self.node_reporter is not None and self.node_reporter.pending():
            with suppress(TimeoutError):
                await asyncio.wait_for(self.node_reporter.wait_idle(), REPORTER_FLUSH)
        # Under the lock, so no watcher is cancelled half way through serving a pool anew (which could leave
        # a started server, and its socket, that nobody stops).
        async with self._lock:
            await self._tasks.stop()
            await asyncio.gather(*(endpoint.cancel_registration() for endpoint in self.endpoints.values()))
            await asyncio.gather(*(endpoint.stop() for endpoint in self.endpoints.values()))
            for endpoint in self.endpoints.values():
                endpoint.release_outputs()
            self.endpoints.clear()
        if self.metrics_endpoint is not None:
            await asyncio.to_thread(self.metrics_endpoint.close)
            self.metrics_endpoint = None
        log.info("stopped")

    # ---------------------------------------------------------------------------------------- config
    def load_config(self) -> ConfigResult:
        """Read the config file (the built-in sample when allowed and there is no file); ConfigError when
        the file is unusable as a whole."""
        path = self.settings.config
        if self._sample_config and not path.exists():
            log.info("no config at %s: using the built-in sample config", path)
            return parse_config(SAMPLE_BOARD_CONFIG)
        return load_config(path)

    async def reload_config(self, path: Path) -> bool:
        """Apply a changed config file (the config watch calls this with the file the path resolves to now).

        A reload is all or nothing: a file that cannot be read or parsed, or in which any pool has a problem,
        is rejected with every reason logged, and the running pools keep serving as they are. (At start the
        valid pools of a partly bad file still run: the daemon has nothing else to serve then.)
        """
        try:
            result = await asyncio.to_thread(load_config, path)
        except ConfigError as exc:
            log.error("new config rejected, the running pools stay: %s", exc)
            self.metrics.config_loaded(False)
            return False
        if result.problems:
            for problem in result.problems:
                log.error("new config: %s", problem, extra={"pool": problem.pool, "key": problem.key})
            log.error(
                "new config %s rejected (%d problems), the running pools stay: %s",
                path,
                len(result.problems),
                ", ".join(sorted(self.pools)) or "none",
            )
            self.metrics.config_loaded(False)
            return False
        log.info("config reloaded from %s: pools %s", path, ", ".join(p.resource_name for p in result.pools) or "none")
        await self.apply_config(result, reason="config")
        self.metrics.config_loaded(True)
        return True

    async def apply_config(self, result: ConfigResult, reason: str = "config") -> None:
        """Serve the pools of a (validated) config: new pools start, dropped pools stop, others rescan."""
        for problem in result.problems:
            log.warning(
                "config: %s (pool left out)",
                problem,
                extra={"pool": problem.pool, "key": problem.key, "reason": problem.reason},
            )
        if not result.pools:
            log.warning("config has no valid pool: nothing to advertise")
        self.configs = result.pools
        await self.rescan(reason)

    # ---------------------------------------------------------------------------------------- rescan
    async def rescan(self, reason: str) -> None:
        """Discover again and bring every server in line: changed pools send their new list to kubelet."""
        async with self._lock:
            if self.stopping:
                return
            with self.metrics.time_rescan(reason):
                try:
                    # sysfs reads block; off the loop they cannot delay an Allocate.
                    inventory = await asyncio.to_thread(discover, self.settings.sysfs_root, self.settings.dev_root)
                    built = build_pools(self.configs, inventory, previous=self.pools)
                except Exception:
                    log.exception("rescan (%s) failed; the pools stay as they were", reason)
                    return
                self._report([*inventory.problems, *(str(p) for p in built.problems)])
                log.debug("rescan (%s): %d pools", reason, len(built.pools))
                await self._reconcile(built.pools)
            if self.node_reporter is not None:
                self.node_reporter.report(self.pools.values())

    def _report(self, problems: list[str]) -> None:
        """Log discovery and pool problems when they change, not on every rescan."""
        current = tuple(problems)
        if current == self._reported:
            return
        for problem in current:
            if problem not in self._reported:
                log.warning("%s", problem)
        self._reported = current

    async def _reconcile(self, pools: Mapping[str, ResourcePool]) -> None:
        for resource in [r for r in self.endpoints if r not in pools]:
            endpoint = self.endpoints.pop(resource)
            if endpoint.serving:
                log.info("pool %s is no longer configured", resource, extra={"resource": resource})
            await endpoint.stop()
            endpoint.release_outputs()
        for resource in [r for r in self.pools if r not in pools]:
            self.metrics.forget_pool(resource)
        for pool in pools.values():
            self.metrics.set_pool(pool)
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

    async def _rescan_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.rescan_interval)
            await self.rescan("timer")

    async def _on_uevents(self, events: tuple[Uevent, ...]) -> None:
        # The listener already folded a burst (unbind, bind, the group node's add) into this one call.
        log.debug("rescanning after %d uevent(s)", len(events), extra={"devpaths": [e.devpath for e in events]})
        await self.rescan("uevent")

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
