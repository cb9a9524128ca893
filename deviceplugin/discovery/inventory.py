"""Discovery: read a sysfs root and a dev root (never write) and return one `Inventory` of plain records.

The fsl-mc, PCI and IOMMU readers each report what they had to skip; this module joins them and
cross-checks that a device's group really lists it, so nothing downstream trusts a half-broken tree.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TypeVar

from deviceplugin.discovery.fslmc import discover_containers
from deviceplugin.discovery.iommu import discover_groups, noiommu_mode
from deviceplugin.discovery.pci import discover_pci
from deviceplugin.discovery.sysfs import SysfsError, device_node
from deviceplugin.records import FslMcContainer, Inventory, IommuGroup, PciDevice

log = logging.getLogger(__name__)


def discover(sysfs_root: Path, dev_root: Path) -> Inventory:
    """Everything under `sysfs_root` / `dev_root` a pool could use, plus a problem line for each thing skipped."""
    sysfs_root, dev_root = Path(sysfs_root), Path(dev_root)
    problems: list[str] = []
    noiommu = noiommu_mode(sysfs_root, problems)
    groups = discover_groups(sysfs_root, dev_root, noiommu, problems)
    containers = tuple(_checked(c, c.name, groups, problems) for c in discover_containers(sysfs_root, problems))
    pci = tuple(_checked(f, f.address, groups, problems) for f in discover_pci(sysfs_root, problems))
    try:
        vfio_node = device_node(dev_root / "vfio/vfio", dev_root)
    except SysfsError as exc:
        problems.append(str(exc))
        vfio_node = None
    for problem in problems:
        log.debug("discovery: %s", problem)
    return Inventory(
        containers=containers,
        pci=pci,
        groups=groups,
        noiommu=noiommu,
        vfio_container_node=vfio_node,
        problems=tuple(problems),
        dev_root=str(dev_root),
    )


_Record = TypeVar("_Record", FslMcContainer, PciDevice)


def _checked(record: _Record, name: str, groups: dict[int, IommuGroup], problems: list[str]) -> _Record:
    """Drop a group claim the group itself does not confirm: its viability would not cover this device."""
    number = record.iommu_group
    if number is None:
        return record
    group = groups.get(number)
    if group is None:
        problems.append(f"{name}: IOMMU group {number} does not exist; treated as having no group")
    elif name not in group.members:
        problems.append(f"{name}: IOMMU group {number} does not list it; treated as having no group")
    else:
        return record
    return dataclasses.replace(record, iommu_group=None)
