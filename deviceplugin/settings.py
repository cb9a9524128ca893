"""The device plugin daemon's settings: every path can be pointed elsewhere, so tests and the demo need no
hardware and no kubelet."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
DEFAULT_CONFIG = Path("/etc/vnfio/config.json")


@dataclass(frozen=True)
class DaemonSettings:
    config: Path = DEFAULT_CONFIG
    sysfs_root: Path = Path("/sys")
    dev_root: Path = Path("/dev")
    plugin_dir: Path = DEFAULT_PLUGIN_DIR
    log_level: str = "info"
    rescan_interval: float = 5.0  # seconds; the safety net behind uevents
    metrics_port: int = 0  # 0 = no metrics endpoint
    metrics_host: str = "0.0.0.0"
    node_name: str | None = None  # set: label the node and post events through the Kubernetes API
    uevents: bool = True  # listen to NETLINK_KOBJECT_UEVENT (tests may turn it off)

    @staticmethod
    def node_name_from_env() -> str | None:
        return os.environ.get("NODE_NAME") or None
