"""`vnfio-device-plugin`: the command line of the device plugin (run the daemon, list the inventory)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vnfio-device-plugin",
        description="Advertise DPAA2 resource containers and vfio-pci functions to kubelet.",
    )
    sub = parser.add_subparsers(dest="command")
    board = sub.add_parser("sample-board", help="write the bundled LX2160A-like sysfs/dev tree to a folder")
    board.add_argument("root", type=Path, help="folder that receives sys/ and dev/")
    board.add_argument("--noiommu", action="store_true", help="the vfio noiommu variant")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "sample-board":
        from deviceplugin.sampleboard import build_sample_board

        board = build_sample_board(args.root, noiommu=args.noiommu)
        print(f"sysfs root: {board.sys}\ndev root:   {board.dev}")
        return 0
    _parser().print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
