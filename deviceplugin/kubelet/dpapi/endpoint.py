"""One pool as kubelet reaches it: its DevicePlugin server, its registration with kubelet, and what went wrong.

The daemon holds one `PoolEndpoint` per configured pool and decides *when* to start, stop, update or register
it; the endpoint knows *how*, and keeps the per-pool state that goes with it: the server, the registration task,
whether kubelet accepted us and which kubelet that was, and the last start failure (logged once, not on every
rescan).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from deviceplugin.kubelet.dpapi.kubeletwatch import FileIdentity, KubeletWatch, file_identity, kubelet_socket
from deviceplugin.kubelet.dpapi.outputs import OutputSettings, PoolOutputs
from deviceplugin.kubelet.dpapi.registration import RegistrationError, register
from deviceplugin.kubelet.dpapi.server import PluginServer, RpcObserver
from deviceplugin.observability.metrics import PluginMetrics
from deviceplugin.records import ResourcePool

log = logging.getLogger(__name__)

# Registration retries: quick at first (kubelet may just be starting), never slower than every 2 s, so a
# kubelet that comes back finds every pool registered again soon after.
REGISTER_BACKOFF_FIRST = 0.1
REGISTER_BACKOFF_MAX = 2.0


def summary(pool: ResourcePool) -> str:
    """`2 devices, 1 healthy: dprc.2, dprc.3 (unhealthy)`, for the log."""
    healthy = sum(d.healthy for d in pool.devices)
    ids = ", ".join(f"{d.id}{'' if d.healthy else ' (unhealthy)'}" for d in pool.devices) or "none"
    return f"{len(pool.devices)} devices, {healthy} healthy: {ids}"


class PoolEndpoint:
    """The serving state of one pool. Call its methods on the daemon's event loop, under the daemon's lock."""

    def __init__(
        self,
        pool: ResourcePool,
        plugin_dir: Path,
        *,
        metrics: PluginMetrics,
        kubelet_watch: KubeletWatch,
        kubelet_changed: Callable[[], asyncio.Event],
        observer: RpcObserver | None = None,
        outputs: OutputSettings | None = None,
    ) -> None:
        """`outputs`: where the pool's CDI spec and device-information files go (None: nowhere).
        `kubelet_changed()` returns the event set on the next kubelet restart (the daemon replaces it each
        time), so a registration waiting out a backoff retries at once when a kubelet comes back."""
        self._pool = pool
        self._plugin_dir = Path(plugin_dir)
        self._metrics = metrics
        self._kubelet_watch = kubelet_watch
        self._kubelet_changed = kubelet_changed
        self._observer = observer
        self.server: PluginServer | None = None
        self.registered = False  # kubelet accepted us since the server last started
        self.registered_with: FileIdentity | None = None  # the kubelet.sock that accepted us
        self.start_failure: str | None = None
        self._registering: asyncio.Task[None] | None = None
        self.outputs = (
            PoolOutputs(outputs, pool.resource_name, metrics.file_write_failed) if outputs is not None else None
        )

    @property
    def resource_name(self) -> str:
        return self._pool.resource_name

    @property
    def pool(self) -> ResourcePool:
        return self.server.pool if self.server is not None else self._pool

    @property
    def socket_name(self) -> str:
        return self._pool.socket_name

    @property
    def serving(self) -> bool:
        return self.server is not None

    @property
    def registering(self) -> bool:
        return self._registering is not None and not self._registering.done()

    def socket_present(self) -> bool:
        return self.server is not None and self.server.socket_present()

    # ------------------------------------------------------------------------------------- lifecycle
    async def start(self, pool: ResourcePool | None = None, *, clash: str | None = None) -> bool:
        """Serve (the newest snapshot of) the pool and register it in the background; False after logging why
        it cannot be served. `clash` names another pool already serving this socket name."""
        if pool is not None:
            self._pool = pool
        resource = self.resource_name
        if self.outputs is not None:
            self.outputs.sync(self._pool)  # the spec is on disk before kubelet can Allocate from this server
        server = PluginServer(self._pool, self._plugin_dir, observer=self._observer, outputs=self.outputs)
        try:
            if clash is not None:
                raise OSError(f"socket {self.socket_name} is already served for {clash}")
            await server.start()
        except Exception as exc:
            message = str(exc)
            if self.start_failure != message:
                log.error("cannot serve %s: %s", resource, message, extra={"resource": resource})
            self.start_failure = message
            return False
        self.start_failure = None
        self.server = server
        self._kubelet_watch.watch(self.socket_name)
        log.info("pool %s: %s", resource, summary(self._pool), extra={"resource": resource})
        self.register_in_background()
        return True

    async def stop(self) -> None:
        """Stop registering and serving; the socket goes. Safe to call when not serving."""
        self._cancel_registration()
        self.registered = False
        self.registered_with = None
        server, self.server = self.server, None
        if server is None:
            return
        self._kubelet_watch.unwatch(self.socket_name)  # our own removal is not a kubelet restart
        self._metrics.unregistered(self.resource_name)
        try:
            await server.stop()
        except Exception:
            resource = self.resource_name
            log.exception("stopping the server of %s failed", resource, extra={"resource": resource})

    def release_outputs(self) -> None:
        """The pool left the config or the plugin stops: remove its CDI spec and device-information files. (Not
        on a restart for kubelet's sake: a runtime resolving a CDI name meanwhile must still find the spec.)"""
        if self.outputs is not None:
            self.outputs.release()

    async def restart(self, pool: ResourcePool | None = None) -> bool:
        """Serve anew. The old server goes first: gRPC removes its socket path at shutdown, whichever file is
        there then."""
        await self.stop()
        return await self.start(pool)

    def update(self, pool: ResourcePool) -> bool:
        """A new snapshot of the pool; True when kubelet's view changed (the streams were told)."""
        self._pool = pool
        if self.outputs is not None:
            self.outputs.sync(pool)
        if self.server is None:
            return False
        changed = self.server.update(pool)
        if changed:
            log.info("pool %s changed: %s", self.resource_name, summary(pool), extra={"resource": self.resource_name})
        return changed

    # ---------------------------------------------------------------------------------- registration
    def needs_registration(self, kubelet: FileIdentity | None) -> bool:
        """Whether the kubelet now listening (`kubelet`) has not accepted us yet and no attempt is under way."""
        if self.server is None or self.registering:
            return False
        return not self.registered or self.registered_with != kubelet

    def register_in_background(self) -> None:
        self._cancel_registration()
        self.registered = False
        loop = asyncio.get_running_loop()
        self._registering = loop.create_task(self._register_until_done(), name=f"register {self.resource_name}")

    def _cancel_registration(self) -> None:
        task, self._registering = self._registering, None
        if task is not None:
            task.cancel()

    async def cancel_registration(self) -> None:
        """Cancel a registration under way and wait until it has ended (at shutdown)."""
        task, self._registering = self._registering, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await task

    async def _register_until_done(self) -> None:
        """Register with kubelet, retrying with backoff while it is absent or refuses; never gives up.

        A kubelet that restarts while our Register is under way may have taken it and then forgotten it,
        so success counts only when kubelet.sock is the same file before and after the call. A kubelet
        restart cuts a backoff short, so a returning kubelet is not kept waiting.
        """
        resource = self.resource_name
        delay = REGISTER_BACKOFF_FIRST
        last_error = None
        attempts = 0
        sock = kubelet_socket(self._plugin_dir)
        while True:
            server = self.server
            if server is None:
                return
            attempts += 1
            kubelet = file_identity(sock)
            try:
                await register(self._plugin_dir, server.pool, server.options)
            except RegistrationError as exc:
                error = str(exc)
            except Exception as exc:
                log.exception("registering %s failed unexpectedly", resource, extra={"resource": resource})
                error = repr(exc)
            else:
                if file_identity(sock) == kubelet:
                    self.registered = True
                    self.registered_with = kubelet
                    self._metrics.registration_succeeded(resource)
                    return
                error = "kubelet restarted while we registered"
                delay = REGISTER_BACKOFF_FIRST
            self._metrics.registration_failed(resource)
            if error != last_error:
                log.warning("%s; retrying", error, extra={"resource": resource, "attempt": attempts})
                last_error = error
            with suppress(TimeoutError):
                await asyncio.wait_for(self._kubelet_changed().wait(), delay)
            delay = min(delay * 2, REGISTER_BACKOFF_MAX)
