"""`vnfio-device-plugin`: run the daemon (the default), list the inventory, or write the sample board."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deviceplugin.settings import DEFAULT_CONFIG, DEFAULT_DEVICE_INFO_DIR, DEFAULT_PLUGIN_DIR, DaemonSettings


def add_roots(parser: argparse.ArgumentParser) -> None:
    """The flags that say what to serve: the config and the trees to discover (both kubelet transports and `list`)."""
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="resourceList config (JSON or YAML)")
    parser.add_argument("--sysfs-root", type=Path, default=Path("/sys"), help="where sysfs is mounted")
    parser.add_argument("--dev-root", type=Path, default=Path("/dev"), help="where /dev is mounted")
    parser.add_argument(
        "--sample-board",
        action="store_true",
        help="ignore --sysfs-root/--dev-root and use a freshly generated sample board (try it without hardware)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vnfio-device-plugin",
        description="Advertise DPAA2 resource containers, vfio-pci functions, vfio-platform devices and vhost-net "
        "to kubelet. "
        "Without a command, runs the daemon.",
    )
    add_daemon_flags(parser)
    parser.add_argument("--plugin-dir", type=Path, default=DEFAULT_PLUGIN_DIR, help="kubelet's device-plugin dir")
    parser.add_argument(
        "--node-name", default=None, help="label this node and post events (default: $NODE_NAME; unset = off)"
    )
    parser.add_argument(
        "--cdi-dir", type=Path, default=None, help="write one CDI spec per pool here and name CDI devices (off)"
    )
    parser.add_argument(
        "--cdi-only", action="store_true", help="with --cdi-dir: Allocate gives no DeviceSpecs (env stays)"
    )
    parser.add_argument(
        "--device-info-dir",
        default=None,
        help=f"device-info-spec files for PCI devices, written at Allocate (default {DEFAULT_DEVICE_INFO_DIR}, "
        "off with --sample-board; empty = off)",
    )
    sub = parser.add_subparsers(dest="command")
    listing = sub.add_parser("list", help="print the pools and their devices without registering (dry run)")
    add_roots(listing)
    listing.add_argument("--output", choices=["table", "json"], default="table")
    board = sub.add_parser("sample-board", help="write the bundled LX2160A-like sysfs/dev tree to a folder")
    board.add_argument("root", type=Path, help="folder that receives sys/ and dev/")
    board.add_argument("--noiommu", action="store_true", help="the vfio noiommu variant")
    return parser


def add_daemon_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every daemon core takes, whichever kubelet transport serves it: what to serve, how often to look
    again, where metrics listen (never every address of the node by default) and how much to log."""
    add_roots(parser)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--rescan-interval", type=float, default=5.0, help="seconds between safety-net rescans")
    parser.add_argument("--no-uevents", action="store_true", help="rescan on the timer only")
    parser.add_argument("--metrics-port", type=int, default=0, help="Prometheus /metrics port (0 = off)")
    parser.add_argument(
        "--metrics-host",
        default=None,
        help="address the metrics endpoint binds (default: $NODE_IP, the node's address; unset: 127.0.0.1)",
    )


def daemon_settings(args: argparse.Namespace, **transport: Any) -> DaemonSettings:
    """The `DaemonSettings` of `add_daemon_flags`' flags, plus the transport's own fields."""
    return DaemonSettings(
        config=args.config,
        sysfs_root=args.sysfs_root,
        dev_root=args.dev_root,
        log_level=args.log_level,
        rescan_interval=args.rescan_interval,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host or DaemonSettings.metrics_host_from_env(),
        uevents=not args.no_uevents,
        **transport,
    )


def _device_info_dir(value: str | None, sample_board: bool) -> Path | None:
    """The flag's directory; unset means the spec's default, except on the sample board, whose fake devices have
    no business in the host's /var/run (and a user without root could not start it)."""
    if value is None:
        return None if sample_board else DEFAULT_DEVICE_INFO_DIR
    return Path(value) if value else None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "sample-board":
        from deviceplugin.sampleboard import full_sample_board

        board = full_sample_board(args.root, noiommu=args.noiommu)
        print(f"sysfs root: {board.sys}\ndev root:   {board.dev}")
        return 0
    if args.command == "list":
        from deviceplugin.listing import run_list

        return run_list(args.config, args.sysfs_root, args.dev_root, args.output, sample_board=args.sample_board)
    from deviceplugin.daemon import run_daemon

    settings = daemon_settings(
        args,
        plugin_dir=args.plugin_dir,
        node_name=args.node_name or DaemonSettings.node_name_from_env(),
        cdi_dir=args.cdi_dir,
        cdi_only=args.cdi_only,
        device_info_dir=_device_info_dir(args.device_info_dir, args.sample_board),
    )
    if args.cdi_only and args.cdi_dir is None:
        print("vnfio-device-plugin: --cdi-only needs --cdi-dir", file=sys.stderr)
        return 2
    return run_daemon(settings, sample_board=args.sample_board)


if __name__ == "__main__":
    sys.exit(main())
