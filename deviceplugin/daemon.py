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
from deviceplugin.kubelet.dpapi.kubeletwatch import DEFAULT_POLL_INTERVAL as KUBELET_POLL_INTERVAL
from deviceplugin.kubelet.dpapi.kubeletwatch import FileIdentity, KubeletWatch, file_identity, kubelet_socket
from deviceplugin.kubelet.dpapi.registration import RegistrationError, register
from deviceplugin.kubelet.dpapi.server import PluginServer, RpcEvent, RpcObserver
from deviceplugin.observability.metrics import MetricsEndpoint, PluginMetrics, serve_metrics
from deviceplugin.observability.nodeinfo import NodeReporter
from deviceplugin.policy.config import SAMPLE_CONFIG, ConfigError, ConfigResult, PoolConfig, load_config, parse_config
from deviceplugin.policy.configwatch import DEFAULT_POLL_INTERVAL as CONFIG_POLL_INTERVAL
from deviceplugin.policy.configwatch import ConfigWatch
from deviceplugin.policy.pools import build_pools
from deviceplugin.records import ResourcePool
from deviceplugin.settings import DaemonSettings

log = logging.getLogger(__name__)

# Registration retries: quick at first (kubelet may just be starting), never slower than every 2 s, so a
# kubelet that comes back finds every pool registered again soon after.
REGISTER_BACKOFF_FIRST = 0.1
REGISTER_BACKOFF_MAX = 2.0
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
        self._registered_with: dict[str, FileIdentity | None] = {}  # the kubelet.sock each pool registered at
        self._kubelet_changed = asyncio.Event()  # replaced on every kubelet restart: wakes registration retries
        self.configs: tuple[PoolConfig, ...] = ()
        self.pools: dict[str, ResourcePool] = {}  # the last build, by full resource name
        self.servers: dict[str, PluginServer] = {}  # pools being served
        self.registered: set[str] = set()  # pools kubelet accepted since their server last started
        self._registering: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()  # one change of pools or servers at a time
        self._stopping = asyncio.Event()
        self._start_failures: dict[str, str] = {}
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
            self.spawn(listener.run(), "uevent listener")
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

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run a background task (a watcher, a timer) until the daemon stops; its failure is logged."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def _shutdown(self) -> None:
        log.info("stopping: ending streams and removing sockets")
        if self.node_reporter is not None and self.node_reporter.pending():
            with suppress(TimeoutError):
                await asyncio.wait_for(self.node_reporter.wait_idle(), REPORTER_FLUSH)
        # Under the lock, so no watcher is cancelled half way through serving a pool anew (which could leave
        # a started server, and its socket, that nobody stops).
        async with self._lock:
            tasks = [*self._tasks, *self._registering.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._registering.clear()
            await asyncio.gather(*(self._stop_pool(resource) for resource in list(self.servers)))
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
            return parse_config(SAMPLE_CONFIG)
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
        for resource in [r for r in self.servers if r not in pools]:
            log.info("pool %s is no longer configured", resource, extra={"resource": resource})
            await self._stop_pool(resource)
        for resource in [r for r in self.pools if r not in pools]:
            self.metrics.forget_pool(resource)
        for pool in pools.values():
            self.metrics.set_pool(pool)
        for resource, pool in pools.items():
            server = self.servers.get(resource)
            if server is None:
                await self._start_pool(pool)
            elif not server.socket_present():
                # Someone (a restarting kubelet) deleted our socket: nobody can reach this server any more.
                log.info("socket of %s is gone: serving it anew", resource, extra={"resource": resource})
                await self._restart_pool(resource, pool)
            elif server.update(pool):
                log.info("pool %s changed: %s", resource, _summary(pool), extra={"resource": resource})
        self.pools = dict(pools)

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
            server = next((s for s in self.servers.values() if s.pool.socket_name == name), None)
            if server is None or server.socket_present():
                return  # stopped meanwhile, or a rescan already served it anew
            resource = server.resource_name
            log.info("socket %s was deleted: serving %s anew", name, resource, extra={"resource": resource})
            await self._restart_pool(resource, self.pools.get(resource, server.pool))

    async def _on_kubelet_restart(self) -> None:
        """A new kubelet.sock: kubelet restarted and forgot every plugin. Register each pool with it."""
        self.metrics.kubelet_restarted()
        changed, self._kubelet_changed = self._kubelet_changed, asyncio.Event()
        changed.set()  # registrations waiting out a backoff try again now
        await self.reregister_all()

    # ----------------------------------------------------------------------------------------- pools
    async def reregister_all(self) -> None:
        """Register every served pool with the kubelet now listening (it restarted); pools whose socket is gone
        are served anew. Pools already registered with this kubelet, or still trying, are left alone: a
        second Register would only make kubelet drop and redial a working endpoint."""
        async with self._lock:
            if self.stopping:
                return
            current = file_identity(kubelet_socket(self.settings.plugin_dir))
            for resource, server in list(self.servers.items()):
                if not server.socket_present():
                    await self._restart_pool(resource, self.pools.get(resource, server.pool))
                elif resource in self._registering:
                    continue
                elif resource not in self.registered or self._registered_with.get(resource) != current:
                    self.metrics.unregistered(resource)
                    self._register_in_background(resource)

    async def _start_pool(self, pool: ResourcePool) -> bool:
        resource = pool.resource_name
        clash = next((s for s in self.servers.values() if s.pool.socket_name == pool.socket_name), None)
        server = PluginServer(pool, self.settings.plugin_dir, observer=self._observe_rpc)
        try:
            if clash is not None:
                raise OSError(f"socket {pool.socket_name} is already served for {clash.resource_name}")
            await server.start()
        except Exception as exc:
            message = str(exc)
            if self._start_failures.get(resource) != message:
                log.error("cannot serve %s: %s", resource, message, extra={"resource": resource})
            self._start_failures[resource] = message
            return False
        self._start_failures.pop(resource, None)
        self.servers[resource] = server
        self.kubelet_watch.watch(pool.socket_name)
        log.info("pool %s: %s", resource, _summary(pool), extra={"resource": resource})
        self._register_in_background(resource)
        return True

    async def _stop_pool(self, resource: str) -> None:
        self._cancel_registration(resource)
        self.registered.discard(resource)
        self._registered_with.pop(resource, None)
        server = self.servers.pop(resource, None)
        if server is None:
            return
        self.kubelet_watch.unwatch(server.pool.socket_name)  # our own removal is not a kubelet restart
        self.metrics.unregistered(resource)
        try:
            await server.stop()
        except Exception:
            log.exception("stopping the server of %s failed", resource, extra={"resource": resource})

    async def _restart_pool(self, resource: str, pool: ResourcePool) -> bool:
        # The old server goes first: gRPC removes its socket path at shutdown, whichever file is there then.
        await self._stop_pool(resource)
        return await self._start_pool(pool)

    # ---------------------------------------------------------------------------------- registration
    def _register_in_background(self, resource: str) -> None:
        self._cancel_registration(resource)
        self.registered.discard(resource)
        loop = asyncio.get_running_loop()
        self._registering[resource] = loop.create_task(self._register_until_done(resource), name=f"register {resource}")

    def _cancel_registration(self, resource: str) -> None:
        task = self._registering.pop(resource, None)
        if task is not None:
            task.cancel()

    async def _register_until_done(self, resource: str) -> None:
        """Register with kubelet, retrying with backoff while it is absent or refuses; never gives up.

        A kubelet that restarts while our Register is under way may have taken it and then forgotten it,
        so success counts only when kubelet.sock is the same file before and after the call. A kubelet
        restart cuts a backoff short (the kubelet watch wakes us), so a returning kubelet is not kept waiting.
        """
        delay = REGISTER_BACKOFF_FIRST
        last_error = None
        attempts = 0
        sock = kubelet_socket(self.settings.plugin_dir)
        while True:
            server = self.servers.get(resource)
            if server is None:
                return
            attempts += 1
            kubelet = file_identity(sock)
            try:
                await register(self.settings.plugin_dir, server.pool, server.options)
            except RegistrationError as exc:
                error = str(exc)
            except Exception as exc:
                log.exception("registering %s failed unexpectedly", resource, extra={"resource": resource})
                error = repr(exc)
            else:
                if file_identity(sock) == kubelet:
                    self.registered.add(resource)
                    self._registered_with[resource] = kubelet
                    self.metrics.registration_succeeded(resource)
                    if self._registering.get(resource) is asyncio.current_task():
                        del self._registering[resource]
                    return
                error = "kubelet restarted while we registered"
                delay = REGISTER_BACKOFF_FIRST
            self.metrics.registration_failed(resource)
            if error != last_error:
                log.warning("%s; retrying", error, extra={"resource": resource, "attempt": attempts})
                last_error = error
            with suppress(TimeoutError):
                await asyncio.wait_for(self._kubelet_changed.wait(), delay)
            delay = min(delay * 2, REGISTER_BACKOFF_MAX)

    # ------------------------------------------------------------------------------------------- RPCs
    def _observe_rpc(self, event: RpcEvent) -> None:
        if event.method == "Allocate":
            self.metrics.observe_allocate(event.resource, event.seconds, event.status, len(event.device_ids))
        elif event.method == "GetPreferredAllocation":
            self.metrics.observe_preferred_allocation(event.resource, event.seconds)
        if self.rpc_observer is not None:
            self.rpc_observer(event)


def _summary(pool: ResourcePool) -> str:
    healthy = sum(d.healthy for d in pool.devices)
    ids = ", ".join(f"{d.id}{'' if d.healthy else ' (unhealthy)'}" for d in pool.devices) or "none"
    return f"{len(pool.devices)} devices, {healthy} healthy: {ids}"


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
    from deviceplugin.sampleboard import build_sample_board

    with tempfile.TemporaryDirectory(prefix="vnfio-sample-board-") as tmp:
        board = build_sample_board(Path(tmp))
        log.info("sample board: sysfs root %s, dev root %s", board.sys, board.dev)
        settings = replace(settings, sysfs_root=board.sys, dev_root=board.dev)
        return asyncio.run(_serve(Daemon(settings, sample_config=True)))
