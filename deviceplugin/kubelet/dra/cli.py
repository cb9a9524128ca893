"""`vnfio-dra-driver`: serve the configured pools to kubelet through Dynamic Resource Allocation."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from deviceplugin.settings import DEFAULT_CONFIG, DaemonSettings


def _parser() -> argparse.ArgumentParser:
    from deviceplugin.kubelet.dra import driver as d

    parser = argparse.ArgumentParser(
        prog="vnfio-dra-driver",
        description="Publish DPAA2 resource containers and vfio-pci functions as DRA ResourceSlices and prepare "
        "ResourceClaims for kubelet (CDI). A node runs this or vnfio-device-plugin, never both.",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="resourceList config (JSON or YAML)")
    parser.add_argument("--sysfs-root", type=Path, default=Path("/sys"), help="where sysfs is mounted")
    parser.add_argument("--dev-root", type=Path, default=Path("/dev"), help="where /dev is mounted")
    parser.add_argument(
        "--sample-board", action="store_true",
        help="ignore --sysfs-root/--dev-root and use a freshly generated sample board (try it without hardware)",
    )
    parser.add_argument("--node-name", default=os.environ.get("NODE_NAME") or None,
                        help="this node's name: the pool and the slices' nodeName (default: $NODE_NAME; required)")
    parser.add_argument("--driver-name", default=d.DEFAULT_DRIVER_NAME, help="the DRA driver name (a DNS subdomain)")
    parser.add_argument("--kubeconfig", type=Path, default=None, help="kubeconfig file (default: in-cluster config)")
    parser.add_argument("--plugins-registry-dir", type=Path, default=d.DEFAULT_REGISTRY_DIR,
                        help="kubelet's plugin registry dir (the registration socket goes here)")
    parser.add_argument("--plugins-dir", type=Path, default=d.DEFAULT_PLUGINS_DIR,
                        help="kubelet's plugins dir (<driver-name>/dra.sock and the checkpoint go here)")
    parser.add_argument("--cdi-dir", type=Path, default=d.DEFAULT_CDI_DIR, help="where CDI specs are written")
    parser.add_argument("--rescan-interval", type=float, default=5.0, help="seconds between safety-net rescans")
    parser.add_argument("--metrics-port", type=int, default=0, help="Prometheus /metrics port (0 = off)")
    parser.add_argument("--metrics-host", default="0.0.0.0", help="address the metrics endpoint binds")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--no-uevents", action="store_true", help="rescan on the timer only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.node_name:
        parser.error("--node-name (or $NODE_NAME) is required: the pool and the ResourceSlices are per node")
    from deviceplugin.kubelet.dra.driver import DraSettings, run_driver

    daemon = DaemonSettings(
        config=args.config,
        sysfs_root=args.sysfs_root,
        dev_root=args.dev_root,
        log_level=args.log_level,
        rescan_interval=args.rescan_interval,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        node_name=args.node_name,
        uevents=not args.no_uevents,
    )
    settings = DraSettings(
        daemon=daemon,
        node_name=args.node_name,
        driver_name=args.driver_name,
        kubeconfig=args.kubeconfig,
        registry_dir=args.plugins_registry_dir,
        plugins_dir=args.plugins_dir,
        cdi_dir=args.cdi_dir,
    )
    return run_driver(settings, sample_board=args.sample_board)


if __name__ == "__main__":
    sys.exit(main())
