"""Running the DRA driver in tests and the demo: its settings against the stand-ins, and a harness that runs it on
its own event loop in a background thread."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dra_scenarios import DRIVER, NODE
from running_core import RunningCore

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


class RunningDriver(RunningCore[DraDriver]):
    """A `DraDriver` on its own event loop in a background thread, so the test drives kubelet, sysfs and the API."""

    def __init__(self, settings: DraSettings, **kwargs: Any) -> None:
        self.settings = settings
        options = {"sample_config": True, **kwargs}
        super().__init__(lambda: DraDriver(settings, **options), "vnfio-dra")

    @property
    def metrics(self) -> DraMetrics:
        assert self.core is not None
        return self.core.dra_metrics

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def rescan(self, reason: str = "test") -> None:
        """A rescan now (what a uevent would trigger), waited for."""
        assert self.core is not None
        self.call(self.core.rescan(reason))
