"""Discovery speed on a big board: the sample board plus 10,000 extra vfio-pci VFs (40 PFs of 250), each in its
own IOMMU group with its /dev/vfio node, written with the kernel's layout (relative links, real attribute files).

Every rescan (uevent or timer) pays a full discovery, so this is the number that bounds how fast a node with
many VFs notices a change. Prints the median of a few `discover()` runs and the `list` wall time.

    .venv/bin/python hack/bench_discovery.py [--vfs 10000] [--runs 5] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deviceplugin.discovery.inventory import discover
from deviceplugin.policy.config import SAMPLE_CONFIG
from deviceplugin.sampleboard import PCI_ROOT_PORT, SampleBoard, build_sample_board

VFS_PER_PF = 250


def add_vfs(sys_root: Path, dev_root: Path, count: int) -> None:
    """`count` VFs under count/250 extra i40e PFs below the sample board's root port, one group each."""
    port = sys_root / PCI_ROOT_PORT
    group = 1000

    def function(address: str, device: str, driver: str, physfn: str | None) -> Path:
        nonlocal group
        fdir = port / address
        (fdir / "power").mkdir(parents=True)
        for name, value in (
            ("vendor", "0x8086"), ("device", f"0x{device}"), ("class", "0x020000"), ("numa_node", "-1"),
            ("subsystem_vendor", "0x8086"), ("subsystem_device", "0x0000"), ("driver_override", "(null)"),
        ):  # fmt: skip
            (fdir / name).write_text(value + "\n")
        os.symlink(f"../../../../../../../bus/pci/drivers/{driver}", fdir / "driver")
        os.symlink("../../../../../../../bus/pci", fdir / "subsystem")
        if physfn:
            os.symlink(f"../{physfn}", fdir / "physfn")
        os.symlink(f"../../../{PCI_ROOT_PORT}/{address}", sys_root / "bus/pci/devices" / address)
        gdir = sys_root / "kernel/iommu_groups" / str(group)
        (gdir / "devices").mkdir(parents=True)
        (gdir / "type").write_text("DMA\n")
        os.symlink(f"../../../../../../../kernel/iommu_groups/{group}", fdir / "iommu_group")
        os.symlink(f"../../../../{PCI_ROOT_PORT}/{address}", gdir / "devices" / address)
        if driver == "vfio-pci":
            (dev_root / "vfio" / str(group)).write_text("")
        group += 1
        return fdir

    for p in range((count + VFS_PER_PF - 1) // VFS_PER_PF):
        pf = f"0002:{p + 1:02x}:00.0"
        pf_dir = function(pf, "1572", "i40e", None)
        (pf_dir / "net" / f"ens{p}").mkdir(parents=True)
        for i in range(1, min(VFS_PER_PF, count - p * VFS_PER_PF) + 1):
            vf = f"0002:{p + 1:02x}:{i // 8:02x}.{i % 8}"
            function(vf, "154c", "vfio-pci", pf)
            os.symlink(f"../{vf}", pf_dir / f"virtfn{i - 1}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vfs", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one discovery")
    parser.add_argument(
        "--board", type=Path, default=None,
        help="build the board here once and reuse it on later runs (to time two versions on the same tree)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vnfio-bench-discovery-") as tmp:
        started = time.perf_counter()
        root = args.board or Path(tmp) / "board"
        if (root / "sys").exists():
            board = SampleBoard(root)
            print(f"board: reusing {root}")
        else:
            board = build_sample_board(root)
            add_vfs(board.sys, board.dev, args.vfs)
            print(f"board: sample board + {args.vfs} VFs, built in {time.perf_counter() - started:.1f} s")
        discover(board.sys, board.dev)  # warm the dentry cache, as a running daemon's rescans are
        samples = []
        for _ in range(args.runs):
            started = time.perf_counter()
            inventory = discover(board.sys, board.dev)
            samples.append(time.perf_counter() - started)
        print(f"discover(): median {statistics.median(samples):.3f} s, min {min(samples):.3f} s over {args.runs} runs "
              f"({len(inventory.pci)} PCI functions, {len(inventory.groups)} groups)")
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps(SAMPLE_CONFIG))
        plugin = Path(sys.executable).parent / "vnfio-device-plugin"
        started = time.perf_counter()
        subprocess.run(
            [str(plugin), "list", "--config", str(config), "--sysfs-root", str(board.sys), "--dev-root",
             str(board.dev), "--output", "json"],
            stdout=subprocess.DEVNULL, check=True,
        )  # fmt: skip
        print(f"vnfio-device-plugin list (the whole process, sample config): {time.perf_counter() - started:.3f} s")
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(discover, board.sys, board.dev)
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
