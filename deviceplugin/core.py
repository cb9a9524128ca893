"""The transport-independent core of a vnfio node daemon: config load and all-or-nothing reloads (the config
watch), rescans on kernel uevents and on the timer, guarded background tasks, the metrics endpoint and its
heartbeat, and the node reporter (labels, health Events).

Both kubelet transports run on it: the Device Plugin API daemon (`deviceplugin.daemon.Daemon`, one gRPC server
per pool) and the DRA driver (`deviceplugin.kubelet.dra.driver.DraDriver`, ResourceSlices and the DRAPlugin
service). A transport subclasses `DaemonCore` and says how the pools of each rescan reach kubelet
(`_reconcile`), what to start before the first rescan and after it, and what to stop at the end; the core
decides *when* (start, uevent, timer, config change) and keeps one change at a time.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from deviceplugin.discovery.inventory import discover
from deviceplugin.discovery.uevents import Uevent, UeventListener, open_uevent_socket
from deviceplugin.observability.metrics import MetricsEndpoint, PluginMetrics, serve_metrics
from deviceplugin.observability.nodeinfo import NodeReporter
from deviceplugin.policy.config import SAMPLE_CONFIG, ConfigError, ConfigResult, PoolConfig, load_config, parse_config
from deviceplugin.policy.configwatch import DEFAULT_POLL_INTERVAL as CONFIG_POLL_INTERVAL
from deviceplugin.policy.configwatch import ConfigWatch
from deviceplugin.policy.pools import build_pools
from deviceplugin.records import Inventory, ResourcePool
from deviceplugin.settings import DaemonSettings
from deviceplugin.tasks import TaskGroup

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 1.0  # the loop proves it is alive to /healthz this often
PROBLEMS_LOGGED = 20  # config problems logged one by one; a file with thousands of bad pools is summed up
REPORTER_FLUSH = 2.0  # at shutdown, give queued node events this long to reach the API server


class DaemonCore:
    """Config, rescans, tasks, metrics and node reporting; a subclass brings the kubelet transport. Call its
    methods on the event loop that runs `run()`."""

    component = "vnfio daemon"  # how the start and stop lines name the process

    # The built-in config for --sample-board runs: the pools of the board the transport's entry point generates.
    sample_pools: dict[str, Any] = SAMPLE_CONFIG

    def __init__(
        self,
        settings: DaemonSettings,
        *,
        sample_config: bool = False,
        metrics: PluginMetrics | None = None,
        node_reporter: NodeReporter | None = None,
        uevent_socket: Callable[[], socket.socket] = open_uevent_socket,
        config_poll: float = CONFIG_POLL_INTERVAL,
    ) -> None:
        """`metrics`, `node_reporter` and `uevent_socket` default to the real ones built from `settings`;
        tests and benchmarks pass their own (a registry to read, an API server stand-in, a socket to inject
        events into)."""
        self.settings = settings
        self._sample_config = sample_config  # no config file: use the built-in sample (sample board only)
        self.metrics = metrics if metrics is not None else PluginMetrics()
        self.metrics_endpoint: MetricsEndpoint | None = None
        self.node_reporter = node_reporter
        self._uevent_socket = uevent_socket
        self._config_poll = config_poll
        self.configs: tuple[PoolConfig, ...] = ()
        self.pools: dict[str, ResourcePool] = {}  # the last build, by full resource name
        self.inventory: Inventory | None = None  # what the last successful rescan discovered
        self._tasks = TaskGroup()
        self._lock = asyncio.Lock()  # one change of pools (and of the transport's state) at a time
        self._stopping = asyncio.Event()
        self._reported: tuple[str, ...] = ()

    # -------------------------------------------------------------------------------- transport hooks
    async def _start_transport(self) -> bool:
        """Before the first rescan: open what the transport serves on; False (after logging why) ends run()
        with 1."""
        return True

    def _transport_started(self) -> None:
        """After the first rescan reached the transport: start its watchers (through `spawn`)."""

    async def _reconcile(self, pools: Mapping[str, ResourcePool]) -> None:
        """Bring the transport in line with a new build of the pools (called under the lock): call
        `_record_pools`, and set `self.pools` once kubelet can see them."""
        self._record_pools(pools)
        self.pools = dict(pools)

    async def _stop_transport(self) -> None:
        """At shutdown, under the lock, after the background tasks stopped: close what the transport serves."""

    def _describe(self) -> str:
        """The start line's detail: where the transport serves."""
        return ""

    def _node_reporter(self) -> NodeReporter | None:
        """The node reporter to use when none was passed: one for the node name, if there is one."""
        return NodeReporter(self.settings.node_name) if self.settings.node_name else None

    # ------------------------------------------------------------------------------------- lifecycle
    async def run(self) -> int:
        """Load the config, serve every valid pool, and keep them true to the node (uevents, rescans, config
        changes, whatever the transport watches) until `stop()`; 0 on a clean stop, 1 when the config file is
        unusable at start, the metrics port cannot be bound or the transport cannot start."""
        config_watch = self._config_watch()
        if config_watch is not None:
            config_watch.baseline()  # before reading: a change in between is then seen as a change
        try:
            result = self.load_config()
        except ConfigError as exc:
            log.error("%s", exc)
            return 1
        self.metrics.config_loaded(True)
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
            "%s starting: sysfs %s, dev %s%s",
            self.component,
            self.settings.sysfs_root,
            self.settings.dev_root,
            self._describe(),
        )
        if not await self._start_transport():
            await self._close_metrics()
            return 1
        if self.node_reporter is None:
            self.node_reporter = self._node_reporter()
        if self.node_reporter is not None:
            self.spawn(self.node_reporter.run(), "node labels and events")
        if self.settings.uevents:
            listener = UeventListener(self._on_uevents, open_socket=self._uevent_socket)
            # Without a uevent socket the listener says so and returns: the periodic rescan still finds changes.
            self.spawn(listener.run(), "uevent listener", may_end=True)
        self.spawn(self._heartbeat(), "heartbeat")
        await self.apply_config(result, reason="start")
        self._transport_started()
        if config_watch is not None:
            self.spawn(config_watch.run(), "config watch")
        if self.settings.rescan_interval > 0:
            self.spawn(self._rescan_periodically(), "periodic rescan")
        await self._stopping.wait()
        await self._shutdown()
        return 0

    def _config_watch(self) -> ConfigWatch | None:
        if self._sample_config and not self.settings.config.exists():
            return None  # the built-in sample: nothing on disk to follow
        return ConfigWatch(self.settings.config, self.reload_config, interval=self._config_poll)

    async def _heartbeat(self) -> None:
        while True:
            self.metrics.heartbeat()
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    def stop(self) -> None:
        """Ask `run()` to end (signal handlers call this): the transport closes, run() returns 0."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str, *, may_end: bool = False) -> asyncio.Task[None]:
        """Run a background task (a watcher, a timer) until the daemon stops; a failure, or an end nobody asked
        for, is logged."""
        return self._tasks.spawn(coro, name, may_end=may_end)

    async def _shutdown(self) -> None:
        log.info("stopping %s", self.component)
        if self.node_reporter is not None and self.node_reporter.pending():
            with suppress(TimeoutError):
                await asyncio.wait_for(self.node_reporter.wait_idle(), REPORTER_FLUSH)
        # Under the lock, so no watcher is cancelled half way through a change of the transport (which could
        # leave a started server, and its socket, that nobody stops).
        async with self._lock:
            await self._tasks.stop()
            await self._stop_transport()
        await self._close_metrics()
        log.info("stopped")

    async def _close_metrics(self) -> None:
        if self.metrics_endpoint is not None:
            await asyncio.to_thread(self.metrics_endpoint.close)
            self.metrics_endpoint = None

    # ---------------------------------------------------------------------------------------- config
    def load_config(self) -> ConfigResult:
        """Read the config file (the built-in sample when allowed and there is no file); ConfigError when
        the file is unusable as a whole."""
        path = self.settings.config
        if self._sample_config and not path.exists():
            log.info("no config at %s: using the built-in sample config", path)
            return parse_config(self.sample_pools)
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
            for problem in result.problems[:PROBLEMS_LOGGED]:
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
        for problem in result.problems[:PROBLEMS_LOGGED]:
            log.warning(
                "config: %s (pool left out)",
                problem,
                extra={"pool": problem.pool, "key": problem.key, "reason": problem.reason},
            )
        if len(result.problems) > PROBLEMS_LOGGED:
            log.warning("config: %d more problems not listed", len(result.problems) - PROBLEMS_LOGGED)
        if not result.pools:
            log.warning("config has no valid pool: nothing to advertise")
        self.configs = result.pools
        await self.rescan(reason)

    # ---------------------------------------------------------------------------------------- rescan
    async def rescan(self, reason: str) -> None:
        """Discover again and bring the transport in line: what changed reaches kubelet."""
        async with self._lock:
            if self.stopping:
                return
            with self.metrics.time_rescan(reason):
                try:
                    # sysfs reads block; off the loop they cannot delay an RPC.
                    inventory = await asyncio.to_thread(discover, self.settings.sysfs_root, self.settings.dev_root)
                    built = build_pools(self.configs, inventory, previous=self.pools)
                except Exception:
                    log.exception("rescan (%s) failed; the pools stay as they were", reason)
                    return
                self._report([*inventory.problems, *(str(p) for p in built.problems)])
                log.debug("rescan (%s): %d pools", reason, len(built.pools))
                self.inventory = inventory
                await self._reconcile(built.pools)
            if self.node_reporter is not None:
                self.node_reporter.report(self.pools.values())

    def _record_pools(self, pools: Mapping[str, ResourcePool]) -> None:
        """Per-pool metrics for a new build: pools gone lose their gauges, the others count their devices. The
        transport calls this from `_reconcile` at the point where its old pools have stopped."""
        for resource in [r for r in self.pools if r not in pools]:
            self.metrics.forget_pool(resource)
        for pool in pools.values():
            self.metrics.set_pool(pool)

    def _report(self, problems: list[str]) -> None:
        """Log discovery and pool problems when they change, not on every rescan."""
        current = tuple(problems)
        if current == self._reported:
            return
        for problem in current:
            if problem not in self._reported:
                log.warning("%s", problem)
        self._reported = current

    async def _rescan_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.rescan_interval)
            await self.rescan("timer")

    async def _on_uevents(self, events: tuple[Uevent, ...]) -> None:
        # The listener already folded a burst (unbind, bind, the group node's add) into this one call.
        log.debug("rescanning after %d uevent(s)", len(events), extra={"devpaths": [e.devpath for e in events]})
        await self.rescan("uevent")
