"""Discovery of DPAA2 resource containers on the fsl-mc bus: what DPDK's fslmc scan would find in each."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from deviceplugin.discovery.sysfs import SysfsError, driver_name, entries, group_number, resolve_inside, subdirectories
from deviceplugin.records import FslMcContainer

VFIO_FSL_MC = "vfio-fsl-mc"
_DPRC = re.compile(r"^dprc\.[0-9]+\Z")
_OBJECT = re.compile(r"^[a-z]+\.[0-9]+\Z")


def discover_containers(sysfs_root: Path, problems: list[str]) -> tuple[FslMcContainer, ...]:
    """Every DPRC under `bus/fsl-mc/devices`, root included, ordered by container number."""
    bus = sysfs_root / "bus/fsl-mc/devices"
    found: list[FslMcContainer] = []
    try:
        names = entries(bus)
    except SysfsError as exc:
        problems.append(f"fsl-mc: {exc}")
        return ()
    for name in sorted(names, key=_number):
        if not _DPRC.match(name):
            continue
        try:
            found.append(_read_container(bus / name, sysfs_root, problems))
        except SysfsError as exc:
            problems.append(f"fsl-mc {name}: skipped: {exc}")
    return tuple(found)


def _number(name: str) -> tuple[str, int]:
    kind, _, num = name.partition(".")
    return (kind, int(num)) if num.isdigit() else (kind, -1)


def _read_container(link: Path, sysfs_root: Path, problems: list[str]) -> FslMcContainer:
    name = link.name
    cdir = resolve_inside(link, sysfs_root)
    if cdir.name != name:
        raise SysfsError(f"{link} leads to {cdir.name}, not to {name}")
    # Objects nest physically under their container, so the parent directory is the parent container.
    parent = cdir.parent.name if _DPRC.match(cdir.parent.name) else None
    driver = driver_name(cdir, sysfs_root)
    try:
        group = group_number(cdir, sysfs_root)
    except SysfsError as exc:
        problems.append(f"fsl-mc {name}: {exc}; treated as having no IOMMU group")
        group = None
    # DPDK takes every real subdirectory named type.id; counting the same way keeps minObjects honest.
    objects = [n for n in subdirectories(cdir) if _OBJECT.match(n)]
    unbound: list[str] = []
    for obj in objects:
        try:
            obj_driver = driver_name(cdir / obj, sysfs_root)
        except SysfsError as exc:
            problems.append(f"fsl-mc {name}: {exc}")
            obj_driver = None
        if obj_driver != VFIO_FSL_MC:
            unbound.append(obj)
    counts = Counter(obj.split(".", 1)[0] for obj in objects)
    return FslMcContainer(
        name=name,
        parent=parent,
        driver=driver,
        iommu_group=group,
        object_counts=dict(sorted(counts.items())),
        unbound_objects=tuple(sorted(unbound, key=_number)),
        numa_node=None,  # fsl-mc devices carry no numa_node attribute; LX2160A is a single node
    )
