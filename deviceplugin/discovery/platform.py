"""Discovery of platform-bus and AMBA devices of the SoC: name, driver, IOMMU group and devicetree compatibles.

vfio-platform and vfio-amba hand such devices to user space (`qemu -device vfio-platform,host=<name>`). Both
drivers were marked obsolete upstream in 2025; a kernel without them, or without an AMBA bus, simply shows
nothing to advertise.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from deviceplugin.discovery.sysfs import SysfsError, driver_name, entries, group_number, resolve_inside

BUSES = ("platform", "amba")



@dataclass(frozen=True)
class PlatformDevice:
    """A platform-bus (or AMBA) device of the SoC as sysfs shows it: `3200000.sata`, bound to vfio-platform."""

    name: str  # the kernel's device name, as IOMMU groups list it
    bus: str  # "platform" or "amba"
    driver: str | None
    iommu_group: int | None
    compatibles: tuple[str, ...] = ()  # of_node/compatible, most specific first
    numa_node: int | None = None

def discover_platform(sysfs_root: Path, problems: list[str]) -> tuple[PlatformDevice, ...]:
    """Every device under `bus/platform/devices` and `bus/amba/devices`, ordered by bus and name."""
    found: list[PlatformDevice] = []
    for bus in BUSES:
        devices = sysfs_root / "bus" / bus / "devices"
        try:
            names = entries(devices)
        except SysfsError as exc:
            problems.append(f"{bus}: {exc}")
            continue
        for name in names:
            try:
                found.append(_read_device(bus, devices / name, sysfs_root, problems))
            except SysfsError as exc:
                problems.append(f"{bus} {name}: skipped: {exc}")
    return tuple(found)


def _read_device(bus: str, link: Path, sysfs_root: Path, problems: list[str]) -> PlatformDevice:
    name = link.name
    ddir = resolve_inside(link, sysfs_root)
    if ddir.name != name:
        raise SysfsError(f"{link} leads to {ddir.name}, not to {name}")
    try:
        group = group_number(ddir, sysfs_root)
    except SysfsError as exc:
        problems.append(f"{bus} {name}: {exc}; treated as having no IOMMU group")
        group = None
    return PlatformDevice(
        name=name,
        bus=bus,
        driver=driver_name(ddir, sysfs_root),
        iommu_group=group,
        compatibles=_compatibles(ddir, sysfs_root, problems),
    )


def _compatibles(device_dir: Path, sysfs_root: Path, problems: list[str]) -> tuple[str, ...]:
    """`of_node/compatible`: every string NUL-terminated, most specific first; () without a devicetree node.

    The `of_node` link must stay inside the tree and `compatible` be a regular file (a FIFO would block)."""
    link = device_dir / "of_node"
    if not os.path.lexists(link):
        return ()
    try:
        path = resolve_inside(link, sysfs_root) / "compatible"
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise SysfsError(f"{path} is not a regular file")
        raw = path.read_bytes()
    except FileNotFoundError:
        return ()
    except (SysfsError, OSError) as exc:
        problems.append(f"{device_dir.name}: of_node: {exc}; no compatibles")
        return ()
    return tuple(s.decode("utf-8", "replace") for s in raw.split(b"\0") if s)
