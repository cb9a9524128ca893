"""`vnfio-dra-driver`: serve the configured pools to kubelet through Dynamic Resource Allocation."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from deviceplugin.cli import add_daemon_flags, daemon_settings


def build_parser() -> argparse.ArgumentParser:
    from deviceplugin.kubelet.dra import driver as d

    parser = argparse.ArgumentParser(
        prog="vnfio-dra-driver",
        description="Publish DPAA2 resource containers and vfio-pci functions as DRA ResourceSlices and prepare "
        "ResourceClaims for kubelet (CDI). A node runs this or vnfio-device-plugin, never both.",
    )
    add_daemon_flags(parser)
    parser.add_argument("--node-name", default=os.environ.get("NODE_NAME") or None,
                        help="this node's name: the pool and the slices' nodeName (default: $NODE_NAME; required)")
    parser.add_argument("--driver-name", default=d.DEFAULT_DRIVER_NAME, help="the DRA driver name (a DNS subdomain)")
    parser.add_argument("--kubeconfig", type=Path, default=None, help="kubeconfig file (default: in-cluster config)")
    parser.add_argument("--plugins-registry-dir", type=Path, default=d.DEFAULT_REGISTRY_DIR,
                        help="kubelet's plugin registry dir (the registration socket goes here)")
    parser.add_argument("--plugins-dir", type=Path, default=d.DEFAULT_PLUGINS_DIR,
                        help="kubelet's plugins dir (<driver-name>/dra.sock and the checkpoint go here)")
    parser.add_argument("--cdi-dir", type=Path, default=d.DEFAULT_CDI_DIR, help="where CDI specs are written")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.node_name:
        parser.error("--node-name (or $NODE_NAME) is required: the pool and the ResourceSlices are per node")
    from deviceplugin.kubelet.dra.driver import DraSettings, run_driver

    daemon = daemon_settings(args, node_name=args.node_name)
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
