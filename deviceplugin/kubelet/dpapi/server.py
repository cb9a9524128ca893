"""The gRPC side of one pool: a kubelet `DevicePlugin` server on `<plugin-dir>/vnfio-<name>.sock`.

Transport only: it turns `ResourcePool` snapshots into ListAndWatch messages and Allocate /
GetPreferredAllocation requests into calls to the allocation policy, and the policy's answers and refusals
back into protobuf and gRPC status codes. It knows nothing of sysfs; the daemon hands it fresh pools.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from deviceplugin.kubelet.dpapi.outputs import PoolOutputs
from deviceplugin.kubelet.dpapi.v1beta1 import api_pb2, api_pb2_grpc
from deviceplugin.policy.allocation import allocate, preferred_allocation
from deviceplugin.records import (
    AllocationError,
    ContainerAllocation,
    DeviceNode,
    InvalidRequest,
    PoolDevice,
    ResourcePool,
    UnhealthyDevices,
    UnknownDevices,
    UnsupportedRequest,
)

log = logging.getLogger(__name__)

# Linux's sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107
# In-flight Allocate calls get this long to finish when a server stops; streams end at once.
_STOP_GRACE = 1.0
# A refusal's message travels percent-encoded in the grpc-message trailer, and kubelet's gRPC drops a call
# whose trailers exceed 16 KiB (RESOURCE_EXHAUSTED, the real reason lost). A message that lists 10,000
# unknown IDs is cut: 1,000 characters stay under the limit even at 12 encoded bytes each (4-byte UTF-8).
_MAX_MESSAGE = 1000

_Response = TypeVar("_Response")


def plugin_options() -> api_pb2.DevicePluginOptions:
    """What every vnfio pool advertises: no PreStartContainer, GetPreferredAllocation available.

    The RegisterRequest must carry the same options (older kubelets read them from there), so registration
    takes them from `PluginServer.options` rather than building its own.
    """
    return api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)


# ------------------------------------------------------------------------------------ translation
def device_message(device: PoolDevice) -> api_pb2.Device:
    """One device as kubelet sees it; the NUMA node only when sysfs gave one."""
    message = api_pb2.Device(ID=device.id, health=device.health)
    if device.numa_node is not None:
        message.topology.nodes.append(api_pb2.NUMANode(ID=device.numa_node))
    return message


def device_list(pool: ResourcePool) -> api_pb2.ListAndWatchResponse:
    """The full device list of a pool: every ListAndWatch message replaces kubelet's whole view."""
    return api_pb2.ListAndWatchResponse(devices=[device_message(dev) for dev in pool.devices])


def device_spec(node: DeviceNode) -> api_pb2.DeviceSpec:
    return api_pb2.DeviceSpec(
        host_path=node.host_path, container_path=node.container_path, permissions=node.permissions
    )


def container_response(
    allocation: ContainerAllocation, cdi_names: Sequence[str] = (), *, device_specs: bool = True
) -> api_pb2.ContainerAllocateResponse:
    """A policy answer as the protobuf kubelet stores in its checkpoint and hands to the runtime; with CDI, the
    fully qualified CDI device names too (and, `--cdi-only`, no DeviceSpecs: the runtime injects the nodes)."""
    return api_pb2.ContainerAllocateResponse(
        envs=dict(allocation.envs),
        devices=[device_spec(node) for node in allocation.devices] if device_specs else [],
        annotations=dict(allocation.annotations),
        cdi_devices=[api_pb2.CDIDevice(name=name) for name in cdi_names],
    )


def _bounded(message: str) -> str:
    if len(message) <= _MAX_MESSAGE:
        return message
    return f"{message[: _MAX_MESSAGE - 40]}... ({len(message) - _MAX_MESSAGE + 40} more characters)"


# Each policy refusal as the gRPC status kubelet gets: an unknown ID is NOT_FOUND, everything else about the
# request is INVALID_ARGUMENT (kubelet logs the message and fails the pod's admission either way).
_STATUS: dict[type[AllocationError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownDevices: grpc.StatusCode.NOT_FOUND,
    UnhealthyDevices: grpc.StatusCode.INVALID_ARGUMENT,
    UnsupportedRequest: grpc.StatusCode.INVALID_ARGUMENT,
}


def status_code(refusal: AllocationError) -> grpc.StatusCode:
    """The gRPC status for a policy refusal; INTERNAL for a class this transport was not taught."""
    return next((code for cls, code in _STATUS.items() if isinstance(refusal, cls)), grpc.StatusCode.INTERNAL)


# ---------------------------------------------------------------------------------------- observer
@dataclass(frozen=True)
class RpcEvent:
    """One finished unary call, for whoever keeps metrics: the daemon passes an observer in."""

    resource: str  # full resource name, e.g. nxp.com/dpaa2_dprc
    method: str  # "Allocate" | "GetPreferredAllocation"
    seconds: float
    status: str  # gRPC status code name: "OK", "NOT_FOUND", ...
    device_ids: tuple[str, ...] = ()  # what Allocate handed out, or what GetPreferredAllocation proposed


RpcObserver = Callable[[RpcEvent], None]


# ---------------------------------------------------------------------------------------- servicer
class _DevicePluginServicer(api_pb2_grpc.DevicePluginServicer):
    """Answers kubelet from whatever pool the owning `PluginServer` holds at the time of the call."""

    def __init__(self, server: PluginServer) -> None:
        self._server = server

    async def GetDevicePluginOptions(
        self, request: api_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> api_pb2.DevicePluginOptions:
        return self._server.options

    async def ListAndWatch(
        self, request: api_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.ListAndWatchResponse]:
        async for message in self._server.watch():
            yield message

    async def GetPreferredAllocation(
        self, request: api_pb2.PreferredAllocationRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.PreferredAllocationResponse:
        pool = self._server.pool

        def answer() -> api_pb2.PreferredAllocationResponse:
            responses = []
            for req in request.container_requests:
                ids = preferred_allocation(
                    pool, list(req.available_deviceIDs), list(req.must_include_deviceIDs), req.allocation_size
                )
                responses.append(api_pb2.ContainerPreferredAllocationResponse(deviceIDs=ids))
            return api_pb2.PreferredAllocationResponse(container_responses=responses)

        def proposed(response: api_pb2.PreferredAllocationResponse) -> tuple[str, ...]:
            return tuple(i for r in response.container_responses for i in r.deviceIDs)

        return await self._answer("GetPreferredAllocation", context, answer, proposed)

    async def Allocate(
        self, request: api_pb2.AllocateRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.AllocateResponse:
        pool = self._server.pool

        outputs = self._server.outputs

        def answer() -> api_pb2.AllocateResponse:
            # Kubelet sends one request per container and resource; answer however many come.
            responses = []
            for req in request.container_requests:
                ids = list(req.devices_ids)
                allocation = allocate(pool, ids)
                if outputs is None:
                    responses.append(container_response(allocation))
                    continue
                outputs.allocated([d for d in pool.devices if d.id in set(ids)])
                responses.append(
                    container_response(
                        allocation, outputs.cdi_names(ids), device_specs=not outputs.drop_device_specs
                    )
                )
            return api_pb2.AllocateResponse(container_responses=responses)

        def allocated(_: api_pb2.AllocateResponse) -> tuple[str, ...]:
            return tuple(i for req in request.container_requests for i in req.devices_ids)

        return await self._answer("Allocate", context, answer, allocated)

    async def PreStartContainer(
        self, request: api_pb2.PreStartContainerRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.PreStartContainerResponse:
        return api_pb2.PreStartContainerResponse()

    async def _answer(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        answer: Callable[[], _Response],
        device_ids: Callable[[_Response], Sequence[str]],
    ) -> _Response:
        """Run a policy call; refusals become their gRPC status, surprises INTERNAL, and the server lives on."""
        resource = self._server.resource_name
        started = time.perf_counter()
        try:
            response = answer()
        except AllocationError as exc:
            code, message = status_code(exc), _bounded(str(exc))
            log.info("%s refused for %s: %s", method, resource, message, extra={"resource": resource})
        except Exception as exc:
            code, message = grpc.StatusCode.INTERNAL, _bounded(f"{method} failed for {resource}: {exc}")
            log.exception("%s failed for %s", method, resource, extra={"resource": resource})
        else:
            ids = tuple(device_ids(response))
            self._server.observe(RpcEvent(resource, method, time.perf_counter() - started, "OK", ids))
            return response
        self._server.observe(RpcEvent(resource, method, time.perf_counter() - started, code.name))
        await context.abort(code, message)


# ------------------------------------------------------------------------------------------ server
class PluginServer:
    """One pool's DevicePlugin server on its own unix socket.

    `update()` swaps in a new pool snapshot; open ListAndWatch streams send the new full list when what
    kubelet sees (IDs, health, topology) changed. Stop an old server before starting a new one on the same
    path: gRPC removes its socket file at shutdown, whoever's it is by then.
    """

    def __init__(
        self,
        pool: ResourcePool,
        plugin_dir: Path,
        *,
        observer: RpcObserver | None = None,
        outputs: PoolOutputs | None = None,
    ) -> None:
        """`outputs`: the pool's CDI spec and device-information files (None: neither)."""
        self.outputs = outputs
        self._pool = pool
        self._plugin_dir = Path(plugin_dir)
        self._observer = observer
        self._server: grpc.aio.Server | None = None
        self._socket_id: tuple[int, int] | None = None
        self._changed = asyncio.Event()
        self._stopping = False

    # ------------------------------------------------------------------------------------ properties
    @property
    def pool(self) -> ResourcePool:
        return self._pool

    @property
    def resource_name(self) -> str:
        return self._pool.resource_name

    @property
    def socket_path(self) -> Path:
        return self._plugin_dir / self._pool.socket_name

    @property
    def options(self) -> api_pb2.DevicePluginOptions:
        return plugin_options()

    def socket_present(self) -> bool:
        """Whether our socket file is still there: kubelet deletes every socket in its dir when it restarts."""
        try:
            st = os.stat(self.socket_path)
        except FileNotFoundError:
            return False
        return stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == self._socket_id

    # ------------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Bind the socket (mode 0600, replacing a stale socket of ours) and start serving."""
        if self._server is not None:
            raise RuntimeError(f"the server for {self.resource_name} is already started")
        path = self.socket_path
        if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
            raise OSError(f"socket path {path} is longer than a unix socket address allows ({_MAX_SOCKET_PATH})")
        self._remove_stale_socket(path)
        server = grpc.aio.server()
        api_pb2_grpc.add_DevicePluginServicer_to_server(_DevicePluginServicer(self), server)
        # Only kubelet (root) may talk to us: the socket hands out device nodes. The umask makes the socket 0600
        # from the moment it is bound (a client could queue a connection between bind and a later chmod); the
        # daemon creates no other files, so the brief process-wide umask change cannot widen or narrow anything.
        previous_umask = os.umask(0o177)
        try:
            server.add_insecure_port(f"unix://{path}")
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {path}: {exc}") from exc
        finally:
            os.umask(previous_umask)
        os.chmod(path, 0o600)
        st = os.stat(path)
        self._socket_id = (st.st_dev, st.st_ino)
        await server.start()
        self._server = server
        self._stopping = False
        log.info(
            "serving %s on %s with %d devices",
            self.resource_name,
            path,
            len(self._pool.devices),
            extra={"resource": self.resource_name},
        )

    @staticmethod
    def _remove_stale_socket(path: Path) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} exists and is not a socket; refusing to replace it")
        log.info("removing stale socket %s", path)
        path.unlink()

    async def stop(self, grace: float = _STOP_GRACE) -> None:
        """End every ListAndWatch stream, let in-flight calls finish, and remove our socket."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        self._wake_streams()
        await server.stop(grace)
        if self.socket_present():
            self.socket_path.unlink()
        log.info("stopped serving %s", self.resource_name, extra={"resource": self.resource_name})

    # --------------------------------------------------------------------------------------- updates
    def update(self, pool: ResourcePool) -> bool:
        """Take a new snapshot of the same pool; True when kubelet's view changed and streams were told."""
        if pool.resource_name != self._pool.resource_name:
            raise ValueError(f"cannot update {self._pool.resource_name} with a pool for {pool.resource_name}")
        changed = device_list(pool) != device_list(self._pool)
        self._pool = pool
        if changed:
            self._wake_streams()
        return changed

    def _wake_streams(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def watch(self) -> AsyncIterator[api_pb2.ListAndWatchResponse]:
        """The ListAndWatch stream: the current list at once, then each changed list until the server stops."""
        sent = device_list(self._pool)
        yield sent
        while True:
            # Take the event before looking, so an update between the look and the wait is not lost.
            changed = self._changed
            if self._stopping:
                return
            current = device_list(self._pool)
            if current != sent:
                sent = current
                yield current
                continue
            await changed.wait()

    def observe(self, event: RpcEvent) -> None:
        if self._observer is None:
            return
        try:
            self._observer(event)
        except Exception:
            log.exception("RPC observer failed for %s", event.resource)
