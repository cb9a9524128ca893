"""A kubelet stand-in for DRA drivers: its plugin manager (plugin watcher + registration) and its DRA manager
(the NodePrepareResources / NodeUnprepareResources calls), for tests and the demo.

Like kubelet it watches the plugin registry dir for sockets; for each new one (by inode: a re-created socket is
new) it dials it, calls GetInfo, validates the answer (type DRAPlugin, a driver name, an endpoint socket that
exists, a supported version it knows; it prefers v1), dials the endpoint, and answers
NotifyRegistrationStatus — with an error and the reason when validation fails. `restart()` forgets every
registration and walks the dir again, as a restarted kubelet does. Prepare/Unprepare go to the registered
driver over the version kubelet picked, and check the answer as kubelet's DRA manager does (an entry per claim).

It runs its watcher in a background thread; the calls are plain blocking methods.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from deviceplugin.kubelet.dra.pluginregistration import api_pb2 as reg_pb2
from deviceplugin.kubelet.dra.pluginregistration import api_pb2_grpc as reg_grpc
from deviceplugin.kubelet.dra.v1 import api_pb2 as v1_pb2
from deviceplugin.kubelet.dra.v1 import api_pb2_grpc as v1_grpc
from deviceplugin.kubelet.dra.v1beta1 import api_pb2 as v1beta1_pb2
from deviceplugin.kubelet.dra.v1beta1 import api_pb2_grpc as v1beta1_grpc

log = logging.getLogger(__name__)

POLL = 0.05
CALL_TIMEOUT = 10.0
# kubelet's order of preference (pkg/kubelet/cm/dra/plugin: v1 first, then v1beta1)
VERSIONS = {"v1.DRAPlugin": (v1_pb2, v1_grpc), "v1beta1.DRAPlugin": (v1beta1_pb2, v1beta1_grpc)}


@dataclass
class Registered:
    name: str
    endpoint: str
    version: str
    socket: Path
    channel: grpc.Channel = field(repr=False)


@dataclass(frozen=True)
class ClaimAnswer:
    devices: tuple[dict[str, Any], ...] = ()
    error: str = ""


class DraKubeletStub:
    """Start with `with DraKubeletStub(registry_dir) as kubelet:`; `wait_registered(driver)`, `prepare`, ..."""

    def __init__(self, registry_dir: Path, *, versions: tuple[str, ...] = tuple(VERSIONS)) -> None:
        self.registry_dir = registry_dir
        self.versions = versions  # the versions this kubelet speaks, preferred first
        self.plugins: dict[str, Registered] = {}
        self.registrations: list[tuple[str, bool, str]] = []  # (driver, accepted, error) in order
        self._seen: dict[Path, tuple[int, int]] = {}
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> DraKubeletStub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.registry_dir.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="dra-kubelet-stub", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for plugin in self.plugins.values():
                plugin.channel.close()
            self.plugins.clear()
            self._seen.clear()

    def restart(self) -> None:
        """Kubelet restarts: it forgets every plugin, then finds the sockets in the dir again."""
        self.stop()
        self.start()

    # ------------------------------------------------------------------------------------ plugin watcher
    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                entries = list(os.scandir(self.registry_dir))
            except OSError:
                entries = []
            present = set()
            for entry in entries:
                path = Path(entry.path)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if not stat.S_ISSOCK(st.st_mode):
                    continue
                identity = (st.st_ino, st.st_ctime_ns)
                present.add(path)
                if self._seen.get(path) != identity:
                    self._seen[path] = identity
                    self._register(path)
            for path in [p for p in self._seen if p not in present]:
                del self._seen[path]
                with self._lock:
                    for name in [n for n, p in self.plugins.items() if p.socket == path]:
                        self.plugins.pop(name).channel.close()
                    self._lock.notify_all()
            self._stop.wait(POLL)

    def _register(self, path: Path) -> None:
        try:
            with grpc.insecure_channel(f"unix://{path}") as channel:
                stub = reg_grpc.RegistrationStub(channel)
                info = stub.GetInfo(reg_pb2.InfoRequest(), timeout=CALL_TIMEOUT)
                error = self._validate(info)
                version = next((v for v in self.versions if v in info.supported_versions), None)
                if error is None and version is None:
                    error = f"none of the versions {list(info.supported_versions)} is supported"
                if error is None:
                    endpoint = grpc.insecure_channel(f"unix://{info.endpoint}")
                    grpc.channel_ready_future(endpoint).result(timeout=CALL_TIMEOUT)
                    with self._lock:
                        old = self.plugins.pop(info.name, None)
                        if old is not None:
                            old.channel.close()
                        self.plugins[info.name] = Registered(info.name, info.endpoint, version, path, endpoint)
                stub.NotifyRegistrationStatus(
                    reg_pb2.RegistrationStatus(plugin_registered=error is None, error=error or ""),
                    timeout=CALL_TIMEOUT,
                )
                with self._lock:
                    self.registrations.append((info.name, error is None, error or ""))
                    self._lock.notify_all()
        except (grpc.RpcError, grpc.FutureTimeoutError) as exc:
            log.warning("registering the plugin at %s failed: %s", path, exc)

    @staticmethod
    def _validate(info: reg_pb2.PluginInfo) -> str | None:
        if info.type != "DRAPlugin":
            return f"plugin type {info.type!r} is not DRAPlugin"
        if not info.name:
            return "no driver name"
        if not info.endpoint or not Path(info.endpoint).is_socket():
            return f"endpoint {info.endpoint!r} is not a socket"
        return None

    def wait_registered(self, driver: str, timeout: float = 10.0, *, after: int = 0) -> Registered:
        """The driver once registered (with more than `after` registrations recorded); AssertionError on timeout."""
        with self._lock:
            ok = self._lock.wait_for(
                lambda: driver in self.plugins and len(self.registrations) > after, timeout
            )
            assert ok, f"driver {driver} did not register within {timeout}s: {self.registrations}"
            return self.plugins[driver]

    # ------------------------------------------------------------------------------------- DRA manager
    def _call(self, driver: str, method: str, claims: list[tuple[str, str, str]]) -> Any:
        with self._lock:
            plugin = self.plugins.get(driver)
        assert plugin is not None, f"driver {driver} is not registered"
        pb2, grpc_mod = VERSIONS[plugin.version]
        stub = grpc_mod.DRAPluginStub(plugin.channel)
        request_type = getattr(pb2, f"{method}Request")
        request = request_type(claims=[pb2.Claim(namespace=ns, name=name, uid=uid) for ns, name, uid in claims])
        response = getattr(stub, method)(request, timeout=CALL_TIMEOUT)
        missing = {uid for _, _, uid in claims} - set(response.claims)
        assert not missing, f"{method}: no answer for claims {sorted(missing)} (kubelet would call again)"
        return response

    def prepare(self, driver: str, claims: list[tuple[str, str, str]]) -> dict[str, ClaimAnswer]:
        """NodePrepareResources for (namespace, name, uid) claims; the answer per UID."""
        response = self._call(driver, "NodePrepareResources", claims)
        return {
            uid: ClaimAnswer(
                tuple(
                    {"requestNames": list(d.request_names), "poolName": d.pool_name, "deviceName": d.device_name,
                     "cdiDeviceIDs": list(d.cdi_device_ids)}
                    for d in answer.devices
                ),
                answer.error,
            )
            for uid, answer in response.claims.items()
        }

    def unprepare(self, driver: str, claims: list[tuple[str, str, str]]) -> dict[str, str]:
        response = self._call(driver, "NodeUnprepareResources", claims)
        return {uid: answer.error for uid, answer in response.claims.items()}


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
