"""Running the DRA driver in tests and the demo: its settings against the stand-ins, and a harness that runs it on
its own event loop in a background thread."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dra_scenarios import DRIVER, NODE

from deviceplugin.kubelet.dra.driver import DraDriver, DraSettings
from deviceplugin.observability.metrics import DraMetrics
from deviceplugin.sampleboard import SampleBoard
from deviceplugin.settings import DaemonSettings


@dataclass(frozen=True)
class KubeletDirs:
    registry: Path
    plugins: Path
    cdi: Path


def write_kubeconfig(path: Path, url: str, token: str = "dra-token") -> Path:
    """A kubeconfig for the API server stand-in at `url` (what `--kubeconfig` reads)."""
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: stub, cluster: {{server: '{url}'}}}}]\n"
        f"users: [{{name: driver, user: {{token: {token}}}}}]\n"
        "contexts: [{name: stub, context: {cluster: stub, user: driver}}]\n"
        "current-context: stub\n"
    )
    return path


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
