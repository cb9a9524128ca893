"""The DRA driver's two unix-socket gRPC servers: plugin registration in kubelet's registry dir, and the
DRAPlugin service (v1 and v1beta1, the same handlers) on the endpoint that registration names.

Kubelet's plugin watcher notices a socket appearing in its registry dir, calls GetInfo, dials the endpoint, and
answers with NotifyRegistrationStatus; after a kubelet restart it does the same for the sockets present. So a
socket that disappears (someone cleaned the dir) is re-created: that is how the driver registers again.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from types import ModuleType

import grpc

from deviceplugin.kubelet.dra.pluginregistration import api_pb2 as reg_pb2
from deviceplugin.kubelet.dra.pluginregistration import api_pb2_grpc as reg_grpc
from deviceplugin.kubelet.dra.state import ClaimRef, ClaimState
from deviceplugin.kubelet.dra.v1 import api_pb2 as v1_pb2
from deviceplugin.kubelet.dra.v1 import api_pb2_grpc as v1_grpc
from deviceplugin.kubelet.dra.v1beta1 import api_pb2 as v1beta1_pb2
from deviceplugin.kubelet.dra.v1beta1 import api_pb2_grpc as v1beta1_grpc

log = logging.getLogger(__name__)

PLUGIN_TYPE = "DRAPlugin"
SUPPORTED_VERSIONS = ("v1.DRAPlugin", "v1beta1.DRAPlugin")
WATCH_INTERVAL = 0.1  # how soon a deleted socket is served anew
_STOP_GRACE = 1.0


def registration_socket(registry_dir: Path, driver: str) -> Path:
    return registry_dir / f"{driver}-reg.sock"


def endpoint_socket(plugins_dir: Path, driver: str) -> Path:
    return plugins_dir / driver / "dra.sock"


class _Registration(reg_grpc.RegistrationServicer):
    def __init__(self, server: DraServer) -> None:
        self._server = server

    async def GetInfo(self, request: reg_pb2.InfoRequest, context: grpc.aio.ServicerContext) -> reg_pb2.PluginInfo:
        return reg_pb2.PluginInfo(
            type=PLUGIN_TYPE,
            name=self._server.driver,
            endpoint=str(self._server.endpoint),
            supported_versions=list(SUPPORTED_VERSIONS),
        )

    async def NotifyRegistrationStatus(
        self, request: reg_pb2.RegistrationStatus, context: grpc.aio.ServicerContext
    ) -> reg_pb2.RegistrationStatusResponse:
        self._server.registered = request.plugin_registered
        if self._server.on_status is not None:
            self._server.on_status(request.plugin_registered)
        if request.plugin_registered:
            log.info("kubelet registered DRA driver %s", self._server.driver)
        else:
            why = request.error or "no reason given"
            log.error("kubelet refused to register DRA driver %s: %s", self._server.driver, why)
        return reg_pb2.RegistrationStatusResponse()


def _servicer(pb2: ModuleType, base: type, state: ClaimState) -> object:
    """The DRAPlugin handlers for one API version (the messages are the same, the classes differ)."""

    class Servicer(base):  # type: ignore[misc, valid-type]
        async def NodePrepareResources(self, request, context):
            refs = [ClaimRef(c.namespace, c.name, c.uid) for c in request.claims]
            answers = await state.prepare(refs)
            response = pb2.NodePrepareResourcesResponse()
            for uid, result in answers.items():
                entry = response.claims[uid]
                if result.error:
                    entry.error = result.error
                    continue
                for device in result.devices:
                    entry.devices.add(
                        request_names=list(device.request_names),
                        pool_name=device.pool_name,
                        device_name=device.device_name,
                        cdi_device_ids=list(device.cdi_device_ids),
                    )
            return response

        async def NodeUnprepareResources(self, request, context):
            refs = [ClaimRef(c.namespace, c.name, c.uid) for c in request.claims]
            answers = await state.unprepare(refs)
            response = pb2.NodeUnprepareResourcesResponse()
            for uid, error in answers.items():
                response.claims[uid].error = error
            return response

    return Servicer()


class DraServer:
    """Both servers of one driver; `start`, `stop`, and `watch` (a task) to serve anew when a socket goes."""

    def __init__(
        self,
        driver: str,
        registry_dir: Path,
        plugins_dir: Path,
        state: ClaimState,
        *,
        on_status: Callable[[bool], None] | None = None,
    ) -> None:
        self.driver = driver
        self.on_status = on_status
        self.registration = registration_socket(registry_dir, driver)
        self.endpoint = endpoint_socket(plugins_dir, driver)
        self._state = state
        self._servers: list[grpc.aio.Server] = []
        self._identities: dict[Path, tuple[int, int]] = {}
        self.registered = False  # what kubelet last said
        self.starts = 0
        self._wanted = False  # between start() and stop(): watch() keeps it serving

    async def start(self) -> None:
        """The DRA service first: kubelet dials it as soon as registration answers GetInfo."""
        self.endpoint.parent.mkdir(parents=True, exist_ok=True)
        self.registration.parent.mkdir(parents=True, exist_ok=True)
        dra = grpc.aio.server()
        v1_grpc.add_DRAPluginServicer_to_server(_servicer(v1_pb2, v1_grpc.DRAPluginServicer, self._state), dra)
        v1beta1_grpc.add_DRAPluginServicer_to_server(
            _servicer(v1beta1_pb2, v1beta1_grpc.DRAPluginServicer, self._state), dra
        )
        registration = grpc.aio.server()
        reg_grpc.add_RegistrationServicer_to_server(_Registration(self), registration)
        started: list[grpc.aio.Server] = []
        try:
            for server, path in ((dra, self.endpoint), (registration, self.registration)):
                _remove_stale(path)
                if not server.add_insecure_port(f"unix://{path}"):
                    raise OSError(f"cannot listen on {path}")
                await server.start()
                started.append(server)
                os.chmod(path, 0o600)
                self._identities[path] = _identity(path)
        except BaseException:
            for server in started:
                await server.stop(None)
            raise
        self._servers = started
        self._wanted = True
        self.registered = False
        if self.on_status is not None:
            self.on_status(False)
        self.starts += 1
        log.info("DRA driver %s serving %s, registration on %s", self.driver, self.endpoint, self.registration)

    async def stop(self) -> None:
        self._wanted = False
        await self._close()

    async def _close(self) -> None:
        servers, self._servers = self._servers, []
        for server in reversed(servers):
            await server.stop(_STOP_GRACE)
        for path in (self.registration, self.endpoint):
            ours = self._identities.pop(path, None)
            if ours is not None and _identity(path) == ours:  # never a socket someone else made since
                with suppress(OSError):
                    path.unlink()

    def sockets_present(self) -> bool:
        """Both sockets are still the ones we listen on."""
        return all(_identity(p) == ident for p, ident in self._identities.items()) and bool(self._identities)

    async def watch(self, interval: float = WATCH_INTERVAL) -> None:
        """Serve anew (and so register again) whenever one of our sockets was deleted or replaced."""
        while True:
            await asyncio.sleep(interval)
            if self._wanted and not (self._servers and self.sockets_present()):
                log.info("a socket of DRA driver %s is gone: serving anew to register again", self.driver)
                await self._close()
                try:
                    await self.start()
                except OSError as exc:
                    log.error("serving DRA driver %s anew failed (will retry): %s", self.driver, exc)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_ctime_ns)


def _remove_stale(path: Path) -> None:
    """A socket left by an earlier run would make the bind fail."""
    with suppress(FileNotFoundError):
        path.unlink()
