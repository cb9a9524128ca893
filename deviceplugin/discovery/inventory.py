"""Discovery: read a sysfs root and a dev root (never write) and return one `Inventory` of plain records.

The IOMMU reader and each device kind's reader report what they had to skip; this module joins them and
cross-checks that a device's group really lists it, so nothing downstream trusts a half-broken tree.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deviceplugin.discovery.iommu import discover_groups, noiommu_mode
from deviceplugin.discovery.sysfs import SysfsError, device_node, scan
from deviceplugin.records import Inventory, IommuGroup

if TYPE_CHECKING:
    from deviceplugin.kinds.base import DeviceKind

log = logging.getLogger(__name__)


def discover(sysfs_root: Path, dev_root: Path, kinds: Iterable[DeviceKind] | None = None) -> Inventory:
    """Everything under `sysfs_root` / `dev_root` a pool could use, plus a problem line for each thing skipped.

    `kinds` whose readers to run: by default every registered kind (`deviceplugin.kinds.KINDS`)."""
    if kinds is None:
        from deviceplugin.kinds import KINDS  # the registry lists the readers; discovery itself names no kind

        kinds = KINDS.values()
    sysfs_root, dev_root = Path(sysfs_root), Path(dev_root)
    problems: list[str] = []
    with scan():
        noiommu = noiommu_mode(sysfs_root, problems)
        groups = discover_groups(sysfs_root, dev_root, noiommu, problems)
        devices = {
            kind.name: tuple(_checked(r, groups, problems) for r in kind.discover(sysfs_root, dev_root, problems))
            for kind in kinds
        }
    try:
        vfio_node = device_node(dev_root / "vfio/vfio", dev_root)
    except SysfsError as exc:
        problems.append(str(exc))
        vfio_node = None
    try:
        iommufd = device_node(dev_root / "iommu", dev_root)
    except SysfsError as exc:
        problems.append(str(exc))
        iommufd = None
    for problem in problems:
        log.debug("discovery: %s", problem)
    return Inventory(
        devices=devices,
        groups=groups,
        noiommu=noiommu,
        vfio_container_node=vfio_node,
        iommufd_node=iommufd,
        problems=tuple(problems),
        dev_root=str(dev_root),
    )


def _checked(record: Any, groups: dict[int, IommuGroup], problems: list[str]) -> Any:
    """Drop a group claim the group itself does not confirm: its viability would not cover this device.

    Records of kinds with IOMMU groups carry `name` (the kernel's, as the group lists it) and `iommu_group`."""
    number = getattr(record, "iommu_group", None)
    if number is None:
        return record
    name = record.name
    group = groups.get(number)
    if group is None:
        problems.append(f"{name}: IOMMU group {number} does not exist; treated as having no group")
    elif name not in group.members:
        problems.append(f"{name}: IOMMU group {number} does not list it; treated as having no group")
    else:
        return record
    return dataclasses.replace(record, iommu_group=None)
