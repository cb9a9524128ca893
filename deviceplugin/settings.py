"""The device plugin daemon's settings: every path can be pointed elsewhere, so tests and the demo need no
hardware and no kubelet."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
DEFAULT_CONFIG = Path("/etc/vnfio/config.json")
LOOPBACK = "127.0.0.1"
# device-info-spec 1.1.0, section 4.1: where Multus looks for a device plugin's device information.
DEFAULT_DEVICE_INFO_DIR = Path("/var/run/k8s.cni.cncf.io/devinfo/dp")


@dataclass(frozen=True)
class DaemonSettings:
    config: Path = DEFAULT_CONFIG
    sysfs_root: Path = Path("/sys")
    dev_root: Path = Path("/dev")
    plugin_dir: Path = DEFAULT_PLUGIN_DIR
    log_level: str = "info"
    rescan_interval: float = 5.0  # seconds; the safety net behind uevents
    metrics_port: int = 0  # 0 = no metrics endpoint
    metrics_host: str = LOOPBACK  # see metrics_host_from_env: never every address of the node by default
    node_name: str | None = None  # set: label the node and post events through the Kubernetes API
    uevents: bool = True  # listen to NETLINK_KOBJECT_UEVENT (tests may turn it off)
    cdi_dir: Path | None = None  # write one CDI spec per pool here and name CDI devices in Allocate (None: off)
    cdi_only: bool = False  # with cdi_dir: Allocate answers without DeviceSpecs (the runtime injects the nodes)
    device_info_dir: Path | None = None  # device-info-spec files for PCI devices at Allocate (None: off)

    @staticmethod
    def node_name_from_env() -> str | None:
        return os.environ.get("NODE_NAME") or None

    @staticmethod
    def metrics_host_from_env() -> str:
        """The node's own address ($NODE_IP, from the downward API's status.hostIP), else loopback.

        The pod uses the host network, so 0.0.0.0 would also expose the unauthenticated endpoint on every other
        interface of the node (storage, management, the data plane); Prometheus scrapes the pod IP, which is the
        node IP, so binding that address alone keeps a ServiceMonitor working."""
        return os.environ.get("NODE_IP") or LOOPBACK
