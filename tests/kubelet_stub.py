"""A kubelet stand-in for the device plugin API v1beta1, for tests, hack/ benchmarks and the demo.

It does what kubelet's device manager does, as far as a plugin can tell: at start it deletes every unix socket
in the plugin dir and serves `Registration` on `kubelet.sock`; Register validates the request like kubelet,
dials the plugin back (blocking, up to 10 s) for its options and only then answers; afterwards it keeps one
ListAndWatch stream per resource open and its latest device list, marking the resource's devices unhealthy
when that stream ends. A new registration for a resource replaces the old endpoint, and a late end of the
old stream does not touch the new one.

It runs on its own event loop in a background thread, so sync code (pytest, benchmarks, the demo) calls
its plain methods; from async code, call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from deviceplugin.kubelet.dpapi.v1beta1 import api_pb2, api_pb2_grpc

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
DIAL_TIMEOUT = 10.0  # kubelet's dial-back timeout during Register
CALL_TIMEOUT = 10.0  # kubelet has none for Allocate; a test must not hang forever

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_T = TypeVar("_T")


def resource_name_problem(name: str) -> str | None:
    """Why kubelet would reject `name` as an extended resource name (v1helper.IsExtendedResourceName); None if
    it would accept it."""
    if "/" not in name:
        return "it has no domain prefix (a native resource name)"
    if "kubernetes.io/" in name:
        return "the kubernetes.io/ domain is reserved for native resources"
    if name.startswith("requests."):
        return "it starts with requests., the quota prefix"
    # Kubelet validates the quota form "requests.<name>" as a qualified name.
    parts = f"requests.{name}".split("/")
    if len(parts) != 2:
        return "a qualified name has at most one '/'"
    domain, short = parts
    if len(domain) > 253:
        return f"the domain {domain!r} is longer than 253 characters"
    if not _DNS1123_SUBDOMAIN.match(domain):
        return f"the domain {name.split('/')[0]!r} is not a lower-case DNS subdomain"
    if not short:
        return "the name part is empty"
    if len(short) > 63:
        return f"the name part {short!r} is longer than 63 characters"
    if not _QUALIFIED_NAME.match(short):
        return f"the name part {short!r} must be [A-Za-z0-9._-] and start and end alphanumeric"
    return None


def endpoint_problem(endpoint: str) -> str | None:
    """Why `endpoint` is not a bare socket file name in the plugin dir; None when it is one."""
    if not endpoint:
        return "the endpoint is empty"
    if "/" in endpoint or endpoint in (".", ".."):
        return f"the endpoint {endpoint!r} must be a bare file name in the device-plugin directory"
    return None


# ----------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Options:
    pre_start_required: bool
    get_preferred_allocation_available: bool

    @staticmethod
    def of(message: api_pb2.DevicePluginOptions) -> Options:
        return Options(message.pre_start_required, message.get_preferred_allocation_available)


@dataclass(frozen=True)
class Registration:
    """One accepted Register call: what the request said, and what the plugin answered when dialled back."""

    resource: str
    endpoint: str
    request_options: Options
    plugin_options: Options
    at: float = field(default_factory=time.monotonic, compare=False)


@dataclass(frozen=True)
class StubDevice:
    """A device as kubelet keeps it from ListAndWatch."""

    id: str
    health: str
    numa_nodes: tuple[int, ...] = ()

    @property
    def healthy(self) -> bool:
        return self.health == HEALTHY  # only the exact string counts, as in kubelet


@dataclass
class _Endpoint:
    resource: str
    path: Path
    channel: grpc.aio.Channel
    stub: api_pb2_grpc.DevicePluginStub
    stream: asyncio.Task[None] | None = None


# ------------------------------------------------------------------------------------ registration
class _RegistrationServicer(api_pb2_grpc.RegistrationServicer):
    def __init__(self, kubelet: KubeletStub) -> None:
        self._kubelet = kubelet

    async def Register(self, request: api_pb2.RegisterRequest, context: grpc.aio.ServicerContext) -> api_pb2.Empty:
        problem = None
        if request.version != API_VERSION:
            problem = f"unsupported API version {request.version!r}, kubelet supports [{API_VERSION}]"
        elif reason := resource_name_problem(request.resource_name):
            problem = f"invalid resource name {request.resource_name!r}: {reason}"
        elif reason := endpoint_problem(request.endpoint):
            problem = reason
        if problem is not None:
            self._kubelet._rejected(request, problem)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            await self._kubelet._connect(request)
        except grpc.aio.AioRpcError as exc:
            problem = f"failed to dial device plugin at {request.endpoint}: {exc.code().name}: {exc.details()}"
            self._kubelet._rejected(request, problem)
            # Kubelet returns a plain Go error here, which gRPC sends as UNKNOWN.
            await context.abort(grpc.StatusCode.UNKNOWN, problem)
        return api_pb2.Empty()


class KubeletStub:
    """Kubelet's device manager as a plugin sees it, serving `<plugin_dir>/kubelet.sock`."""

    def __init__(self, plugin_dir: Path, *, dial_timeout: float = DIAL_TIMEOUT) -> None:
        self.plugin_dir = Path(plugin_dir)
        self.dial_timeout = dial_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None
        self._endpoints: dict[str, _Endpoint] = {}  # touched only on the stub's loop
        # Everything below is read from other threads: guarded by _changed.
        self._changed = threading.Condition()
        self._devices: dict[str, dict[str, StubDevice]] = {}
        self._messages: dict[str, int] = {}
        self._registrations: list[Registration] = []
        self._rejections: list[tuple[str, str]] = []
        self._stream_ends: dict[str, int] = {}

    # ------------------------------------------------------------------------------ sync surface
    @property
    def socket(self) -> Path:
        return self.plugin_dir / KUBELET_SOCKET

    def start(self, *, keep_plugin_sockets: bool = False) -> None:
        """Delete every unix socket in the plugin dir (keeping other files) and serve kubelet.sock.

        `keep_plugin_sockets` leaves the plugins' sockets alone, so a plugin can only tell from kubelet.sock
        itself (new inode or ctime) that kubelet restarted: a test of that one signal."""
        self._run(self._start(keep_plugin_sockets))

    def stop(self) -> None:
        """Go away like a stopped kubelet: close kubelet.sock and drop every plugin connection."""
        if self._loop is not None:
            self._run(self._stop())

    def restart(self, *, keep_plugin_sockets: bool = False) -> None:
        """A kubelet restart: plugins see their sockets deleted and a new kubelet.sock, and must register again."""
        self.stop()
        self.start(keep_plugin_sockets=keep_plugin_sockets)

    def close(self) -> None:
        """Stop, and end the background thread."""
        if self._loop is None:
            return
        self.stop()
        loop, thread = self._loop, self._thread
        loop.call_soon_threadsafe(loop.stop)
        assert thread is not None
        thread.join()
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> KubeletStub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def registrations(self) -> list[Registration]:
        with self._changed:
            return list(self._registrations)

    @property
    def rejections(self) -> list[tuple[str, str]]:
        """(resource name, reason) of every refused Register call."""
        with self._changed:
            return list(self._rejections)

    def registration_count(self, resource: str | None = None) -> int:
        with self._changed:
            return sum(1 for r in self._registrations if resource is None or r.resource == resource)

    def resources(self) -> set[str]:
        """Resources with a device list (registered since the last start)."""
        with self._changed:
            return set(self._devices)

    def devices(self, resource: str) -> dict[str, StubDevice]:
        with self._changed:
            return dict(self._devices.get(resource, {}))

    def message_count(self, resource: str) -> int:
        """ListAndWatch messages received for `resource` since the stub started."""
        with self._changed:
            return self._messages.get(resource, 0)

    def stream_ends(self, resource: str) -> int:
        """How often the current endpoint's ListAndWatch stream ended under kubelet."""
        with self._changed:
            return self._stream_ends.get(resource, 0)

    def wait_for(
        self,
        resource: str,
        predicate: Callable[[dict[str, StubDevice]], bool],
        timeout: float = 10.0,
    ) -> dict[str, StubDevice]:
        """Block until `predicate(devices of resource)` holds; TimeoutError (with what was seen) otherwise."""
        with self._changed:
            ok = self._changed.wait_for(lambda: predicate(dict(self._devices.get(resource, {}))), timeout)
            seen = dict(self._devices.get(resource, {}))
        if not ok:
            shown = {i: d.health for i, d in sorted(seen.items())}
            raise TimeoutError(f"{resource}: condition not met within {timeout} s; kubelet sees {shown}")
        return seen

    def wait_registered(self, resource: str, count: int = 1, timeout: float = 10.0) -> Registration:
        """Block until `resource` has registered `count` times in all; the latest registration."""
        with self._changed:
            ok = self._changed.wait_for(
                lambda: sum(1 for r in self._registrations if r.resource == resource) >= count, timeout
            )
            mine = [r for r in self._registrations if r.resource == resource]
        if not ok:
            raise TimeoutError(f"{resource} registered {len(mine)} times within {timeout} s, expected {count}")
        return mine[-1]

    def allocate(self, resource: str, device_ids: Iterable[str]) -> api_pb2.ContainerAllocateResponse:
        """Allocate as kubelet does (one container request); the plugin's gRPC error is raised as is."""
        request = api_pb2.AllocateRequest(
            container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=list(device_ids))]
        )
        response = self._run(self._call(resource, lambda stub: stub.Allocate(request, timeout=CALL_TIMEOUT)))
        return response.container_responses[0]

    def preferred(
        self, resource: str, available: Iterable[str], must_include: Iterable[str], size: int
    ) -> list[str]:
        """GetPreferredAllocation for one container; the plugin's gRPC error is raised as is."""
        request = api_pb2.PreferredAllocationRequest(
            container_requests=[
                api_pb2.ContainerPreferredAllocationRequest(
                    available_deviceIDs=list(available),
                    must_include_deviceIDs=list(must_include),
                    allocation_size=size,
                )
            ]
        )
        response = self._run(
            self._call(resource, lambda stub: stub.GetPreferredAllocation(request, timeout=CALL_TIMEOUT))
        )
        return list(response.container_responses[0].deviceIDs)

    # ---------------------------------------------------------------------------- loop plumbing
    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="kubelet-stub", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
        return self._loop

    def _run(self, coro: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
        future: concurrent.futures.Future[_T] = asyncio.run_coroutine_threadsafe(coro, self._ensure_loop())
        return future.result(timeout)

    # ---------------------------------------------------------------------------- on the loop
    async def _start(self, keep_plugin_sockets: bool) -> None:
        if self._server is not None:
            raise RuntimeError("the kubelet stub is already started")
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        for entry in self.plugin_dir.iterdir():
            # Like kubelet: every socket goes (plugins' and a stale kubelet.sock), the checkpoint stays.
            if stat.S_ISSOCK(entry.lstat().st_mode) and (entry.name == KUBELET_SOCKET or not keep_plugin_sockets):
                entry.unlink()
        server = grpc.aio.server()
        api_pb2_grpc.add_RegistrationServicer_to_server(_RegistrationServicer(self), server)
        server.add_insecure_port(f"unix://{self.socket}")
        await server.start()
        self._server = server
        log.info("kubelet stub serving %s", self.socket)

    async def _stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(0)
        endpoints, self._endpoints = self._endpoints, {}
        for endpoint in endpoints.values():
            await self._drop(endpoint)
        with self._changed:
            # A restarted kubelet shows capacity 0 until each plugin registers again.
            self._devices.clear()
            self._changed.notify_all()
        if self.socket.is_socket():
            self.socket.unlink()

    async def _connect(self, request: api_pb2.RegisterRequest) -> None:
        """Dial the plugin back and ask for its options (Register waits for this), then start watching."""
        path = self.plugin_dir / request.endpoint
        channel = grpc.aio.insecure_channel(f"unix://{path}")
        stub = api_pb2_grpc.DevicePluginStub(channel)
        try:
            options = await stub.GetDevicePluginOptions(
                api_pb2.Empty(), timeout=self.dial_timeout, wait_for_ready=True
            )
        except grpc.aio.AioRpcError:
            await channel.close()
            raise
        old = self._endpoints.pop(request.resource_name, None)
        if old is not None:
            await self._drop(old)
        endpoint = _Endpoint(request.resource_name, path, channel, stub)
        self._endpoints[request.resource_name] = endpoint
        with self._changed:
            self._registrations.append(
                Registration(
                    request.resource_name, request.endpoint, Options.of(request.options), Options.of(options)
                )
            )
            self._changed.notify_all()
        # Kubelet starts ListAndWatch after Register has answered.
        endpoint.stream = asyncio.get_running_loop().create_task(self._watch(endpoint))

    async def _drop(self, endpoint: _Endpoint) -> None:
        if endpoint.stream is not None:
            endpoint.stream.cancel()
            await asyncio.gather(endpoint.stream, return_exceptions=True)
        await endpoint.channel.close()

    async def _watch(self, endpoint: _Endpoint) -> None:
        resource = endpoint.resource
        try:
            async for message in endpoint.stub.ListAndWatch(api_pb2.Empty()):
                devices = {
                    d.ID: StubDevice(d.ID, d.health, tuple(n.ID for n in d.topology.nodes)) for d in message.devices
                }
                with self._changed:
                    if self._endpoints.get(resource) is endpoint:
                        self._devices[resource] = devices
                        self._messages[resource] = self._messages.get(resource, 0) + 1
                        self._changed.notify_all()
        except grpc.aio.AioRpcError as exc:
            log.info("ListAndWatch for %s ended: %s", resource, exc.code().name)
        with self._changed:
            # A late end of a replaced endpoint's stream must not touch the new one's devices.
            if self._endpoints.get(resource) is endpoint:
                self._stream_ends[resource] = self._stream_ends.get(resource, 0) + 1
                self._devices[resource] = {
                    i: StubDevice(d.id, UNHEALTHY, d.numa_nodes) for i, d in self._devices.get(resource, {}).items()
                }
                self._changed.notify_all()

    async def _call(
        self,
        resource: str,
        call: Callable[[api_pb2_grpc.DevicePluginStub], Any],
    ) -> Any:
        endpoint = self._endpoints.get(resource)
        if endpoint is None:
            raise KeyError(f"{resource} is not registered with the kubelet stub")
        return await call(endpoint.stub)

    def _rejected(self, request: api_pb2.RegisterRequest, reason: str) -> None:
        log.info("rejected registration of %r: %s", request.resource_name, reason)
        with self._changed:
            self._rejections.append((request.resource_name, reason))
            self._changed.notify_all()


def device_health(devices: Mapping[str, StubDevice]) -> dict[str, str]:
    """{ID: health}, the shape most assertions want."""
    return {i: d.health for i, d in devices.items()}


@contextmanager
def temporary_plugin_dir(label: str = "kubelet") -> Iterator[Path]:
    """A fresh device-plugin dir under /tmp, short enough for unix socket paths (108 bytes) and unique per
    process, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"vnfio-{label}-{os.getpid()}-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
