"""DRA driver fixtures: the kubelet stand-in (plugin manager and DRA manager), the API server stand-in with this
node, a kubeconfig pointing at it, short kubelet directories for the sockets, and a harness that runs the
driver on its own event loop."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from apiserver_stub import ApiServerStub
from dra_kubelet_stub import DraKubeletStub

from deviceplugin.kubelet.dra.driver import DraDriver, DraSettings
from deviceplugin.observability.metrics import DraMetrics
from deviceplugin.sampleboard import SampleBoard
from deviceplugin.settings import DaemonSettings

NODE = "worker-7"
DRIVER = "vnfio.io"


@dataclass(frozen=True)
class KubeletDirs:
    registry: Path
    plugins: Path
    cdi: Path


@pytest.fixture
def kubelet_dirs() -> Iterator[KubeletDirs]:
    """Short paths (a unix socket path must fit in 108 bytes): plugins_registry, plugins, and a CDI dir."""
    root = Path(tempfile.mkdtemp(prefix="vnfio-d-"))
    try:
        yield KubeletDirs(root / "reg", root / "plugins", root / "cdi")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def apiserver() -> Iterator[ApiServerStub]:
    stub = ApiServerStub(nodes=(NODE,)).start()
    try:
        yield stub
    finally:
        stub.stop()


@pytest.fixture
def kubeconfig(tmp_path: Path, apiserver: ApiServerStub) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: stub, cluster: {{server: '{apiserver.url}'}}}}]\n"
        "users: [{name: driver, user: {token: dra-token}}]\n"
        "contexts: [{name: stub, context: {cluster: stub, user: driver}}]\n"
        "current-context: stub\n"
    )
    return path


@pytest.fixture
def dra_kubelet(kubelet_dirs: KubeletDirs) -> Iterator[DraKubeletStub]:
    with DraKubeletStub(kubelet_dirs.registry) as stub:
        yield stub


def dra_settings(board: SampleBoard, dirs: KubeletDirs, kubeconfig: Path, config: Path, **changes: Any) -> DraSettings:
    daemon = DaemonSettings(
        config=config, sysfs_root=board.sys, dev_root=board.dev, rescan_interval=3600.0, uevents=False,
        node_name=NODE,
    )  # fmt: skip
    base = DraSettings(
        daemon=daemon, node_name=NODE, driver_name=DRIVER, kubeconfig=kubeconfig, registry_dir=dirs.registry,
        plugins_dir=dirs.plugins, cdi_dir=dirs.cdi,
    )  # fmt: skip
    return replace(base, **changes)


class RunningDriver:
    """A `DraDriver` on its own event loop in a background thread, so the test drives kubelet, sysfs and the API."""

    def __init__(self, settings: DraSettings, **kwargs: Any) -> None:
        self.settings = settings
        self.kwargs = {"sample_config": True, **kwargs}
        self.driver: DraDriver | None = None
        self.result: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="vnfio-dra", daemon=True)

    def _main(self) -> None:
        async def main() -> int:
            self._loop = asyncio.get_running_loop()
            self.driver = DraDriver(self.settings, **self.kwargs)
            self._started.set()
            return await self.driver.run()

        self.result = asyncio.run(main())

    def __enter__(self) -> RunningDriver:
        self._thread.start()
        assert self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def metrics(self) -> DraMetrics:
        assert self.driver is not None
        return self.driver.dra_metrics

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def rescan(self, reason: str = "test") -> None:
        """A rescan now (what a uevent would trigger), waited for."""
        assert self._loop is not None and self.driver is not None
        asyncio.run_coroutine_threadsafe(self.driver.rescan(reason), self._loop).result(10)

    def stop(self) -> int | None:
        if self._loop is not None and self._thread.is_alive():
            assert self.driver is not None
            self._loop.call_soon_threadsafe(self.driver.stop)
            self._thread.join(30)
        return self.result
