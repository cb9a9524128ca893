"""Discovery of IOMMU groups: who is in each, whether VFIO would call it viable, and its /dev/vfio node."""

from __future__ import annotations

import os
import re
from pathlib import Path

from deviceplugin.discovery.sysfs import SysfsError, device_node, driver_name, entries, read_value, real_dir
from deviceplugin.records import IommuGroup

_GROUP = re.compile(r"^[0-9]+\Z")
NOIOMMU_GROUP_NAME = "vfio-noiommu"


def is_vfio_driver(driver: str | None) -> bool:
    """vfio-pci, vfio-fsl-mc and the vendor variant drivers (mlx5_vfio_pci, hisi_acc_vfio_pci, ...)."""
    return driver is not None and (driver.startswith("vfio") or driver.endswith("vfio_pci"))


def noiommu_mode(sysfs_root: Path, problems: list[str]) -> bool:
    """Whether vfio runs with `enable_unsafe_noiommu_mode` (group nodes are then named noiommu-N)."""
    try:
        value = read_value(sysfs_root / "module/vfio/parameters/enable_unsafe_noiommu_mode")
    except SysfsError as exc:
        problems.append(f"{exc}; assuming IOMMU mode")
        return False
    return value in ("Y", "y", "1")


def group_node_path(dev_root: Path, number: int, noiommu: bool) -> Path:
    return dev_root / "vfio" / (f"noiommu-{number}" if noiommu else str(number))


def discover_groups(sysfs_root: Path, dev_root: Path, noiommu: bool, problems: list[str]) -> dict[int, IommuGroup]:
    """Every group under `kernel/iommu_groups`, keyed by number."""
    base = sysfs_root / "kernel/iommu_groups"
    groups: dict[int, IommuGroup] = {}
    try:
        names = entries(base)
    except SysfsError as exc:
        problems.append(f"iommu groups: {exc}")
        return groups
    for name in names:
        if not _GROUP.match(name):
            problems.append(f"iommu group {name!r}: skipped: not a group number")
            continue
        groups[int(name)] = _read_group(int(name), f"{base}/{name}", sysfs_root, dev_root, noiommu, problems)
    return dict(sorted(groups.items()))


def _read_group(
    number: int, gdir: str, sysfs_root: Path, dev_root: Path, noiommu: bool, problems: list[str]
) -> IommuGroup:
    members: list[str] = []
    drivers: dict[str, str | None] = {}
    cdevs: dict[str, str] = {}
    not_viable: list[str] = []
    gpath = os.fspath(gdir)
    try:
        names = entries(f"{gpath}/devices")
    except SysfsError as exc:
        problems.append(f"iommu group {number}: {exc}")
        names = []
        not_viable.append("its member list cannot be read")
    for member in names:
        members.append(member)
        try:
            mdir = real_dir(f"{gpath}/devices/{member}", sysfs_root)
            leads_to = mdir.rpartition("/")[2]
            if leads_to != member:
                # The entry's name is what devices are matched by; its driver must be that device's driver.
                raise SysfsError(f"the entry leads to {leads_to}, not to {member}")
            driver = driver_name(mdir, sysfs_root)
            # Only a member on pcieport can be a bridge that keeps the group viable: read its class only then.
            bridge = driver == "pcieport" and (read_value(f"{mdir}/class") or "").lower().startswith("0x0604")
        except SysfsError as exc:
            problems.append(f"iommu group {number}: member {member}: {exc}")
            drivers[member] = None
            not_viable.append(f"{member} cannot be read")
            continue
        drivers[member] = driver
        if (cdev := _cdev_name(mdir, problems)) is not None:
            cdevs[member] = cdev
        # VFIO's viability rule: vfio-bound or driverless; bridges may stay on pcieport.
        if not (driver is None or is_vfio_driver(driver) or (bridge and driver == "pcieport")):
            not_viable.append(f"{member} is bound to {driver}")
    if not members and not not_viable:
        not_viable.append("it has no devices")
    try:
        name = read_value(f"{gpath}/name")
    except SysfsError as exc:
        problems.append(f"iommu group {number}: {exc}")
        name = None
    group_noiommu = noiommu or name == NOIOMMU_GROUP_NAME
    try:
        node = device_node(f"{dev_root}/vfio/{f'noiommu-{number}' if group_noiommu else number}", dev_root)
    except SysfsError as exc:
        problems.append(f"iommu group {number}: {exc}")
        node = None
    cdev_nodes: dict[str, str | None] = {}
    for member, cdev in cdevs.items():
        try:
            cdev_nodes[member] = device_node(dev_root / "vfio/devices" / cdev, dev_root)
        except SysfsError as exc:
            problems.append(f"iommu group {number}: member {member}: {exc}")
            cdev_nodes[member] = None
    return IommuGroup(
        number=number,
        members=tuple(sorted(members)),
        member_drivers=drivers,
        viable=not not_viable,
        why_not_viable="; ".join(not_viable) or None,
        dev_node=node,
        noiommu=group_noiommu,
        cdevs=cdevs,
        cdev_nodes=cdev_nodes,
    )


def _cdev_name(device_dir: str, problems: list[str]) -> str | None:
    """The device's VFIO cdev `vfioX` (`<device>/vfio-dev/vfioX/dev`, CONFIG_VFIO_DEVICE_CDEV); None without one.

    A kernel with the vfio-dev class but without the option shows `vfio-dev/vfioX` with no `dev`: no node."""
    try:
        names = [n for n in os.listdir(f"{device_dir}/vfio-dev") if n.startswith("vfio")]
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        problems.append(f"cannot list {device_dir}/vfio-dev: {exc.strerror or exc}")
        return None
    for name in sorted(names):
        if os.path.isfile(f"{device_dir}/vfio-dev/{name}/dev"):
            return name
    return None
