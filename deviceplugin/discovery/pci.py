"""Discovery of PCI functions: ids, driver, IOMMU group, NUMA node and SR-IOV relations, as sysfs shows them."""

from __future__ import annotations

import os
import re
from pathlib import Path

from deviceplugin.discovery.sysfs import (
    SysfsError,
    driver_name,
    entries,
    group_number,
    is_pci_address,
    read_value,
    real_dir,
)
from deviceplugin.records import PciDevice

# The host bridge's sysfs directory (`pci0001:00`): the PCIe root complex a function sits under.
_PCIE_ROOT = re.compile(r"^pci[0-9a-f]{4}:[0-9a-f]{2}\Z")

_HEX = re.compile(r"^0x([0-9a-fA-F]+)\Z")
_VIRTFN = re.compile(r"^virtfn([0-9]+)\Z")


def discover_pci(sysfs_root: Path, problems: list[str]) -> tuple[PciDevice, ...]:
    """Every function under `bus/pci/devices`, ordered by address."""
    bus = sysfs_root / "bus/pci/devices"
    found: list[PciDevice] = []
    vf_indexes: dict[str, dict[str, int]] = {}  # per PF directory, read once per scan: VF directory → N
    try:
        names = entries(bus)
    except SysfsError as exc:
        problems.append(f"pci: {exc}")
        return ()
    for name in names:
        if not is_pci_address(name):
            problems.append(f"pci {name}: skipped: not a PCI address (DDDD:BB:DD.F)")
            continue
        try:
            found.append(_read_function(f"{bus}/{name}", sysfs_root, problems, vf_indexes))
        except SysfsError as exc:
            problems.append(f"pci {name}: skipped: {exc}")
    return tuple(found)


def _hex_attr(path: str, digits: int) -> str:
    raw = read_value(path)
    match = _HEX.match(raw or "")
    if not match or len(match.group(1)) != digits:
        raise SysfsError(f"{path} reads {raw!r}, expected 0x and {digits} hex digits")
    return match.group(1).lower()


def _numa(path: str, problems: list[str]) -> int | None:
    try:
        raw = read_value(path)
        if raw is None:
            return None
        node = int(raw)
    except (SysfsError, ValueError) as exc:
        problems.append(f"{path}: {exc}; NUMA node unknown")
        return None
    return node if node >= 0 else None


def _netdev(device_dir: str) -> str | None:
    names = entries(f"{device_dir}/net")
    return names[0] if names else None


def _virtfn_indexes(pf_dir: str, sysfs_root: Path) -> dict[str, int]:
    """Where each `virtfnN` link of a PF leads, as VF directory → N: the kernel's own numbering of the VFs
    (sriov-dp's VF index, the `N` of `ip link set <pf> vf N`). A link that dangles, loops or leaves the tree
    names no VF; it is skipped, so only the VF it should have named goes without an index."""
    indexes: dict[str, int] = {}
    try:
        names = entries(pf_dir)
    except SysfsError:
        return indexes
    for name in names:
        match = _VIRTFN.match(name)
        if not match:
            continue
        try:
            indexes[real_dir(f"{pf_dir}/{name}", sysfs_root)] = int(match.group(1))
        except SysfsError:
            continue
    return indexes


def _read_function(
    link: str, sysfs_root: Path, problems: list[str], vf_indexes: dict[str, dict[str, int]]
) -> PciDevice:
    address = link.rpartition("/")[2]
    fdir = real_dir(link, sysfs_root)
    try:
        group = group_number(fdir, sysfs_root)
    except SysfsError as exc:
        problems.append(f"pci {address}: {exc}; treated as having no IOMMU group")
        group = None
    pf_address = pf_name = None
    vf_index: int | None = None
    if os.path.islink(f"{fdir}/physfn"):
        try:
            pf_dir = real_dir(f"{fdir}/physfn", sysfs_root)
            pf_name_part = pf_dir.rpartition("/")[2]
            pf_address = pf_name_part if is_pci_address(pf_name_part) else None
            pf_name = _netdev(pf_dir)
            # Scanning a PF's links once per scan, not once per VF: a PF with hundreds of VFs stays linear.
            if pf_dir not in vf_indexes:
                vf_indexes[pf_dir] = _virtfn_indexes(pf_dir, sysfs_root)
            vf_index = vf_indexes[pf_dir].get(fdir)
        except SysfsError as exc:
            problems.append(f"pci {address}: {exc}; PF unknown")
    parent_name = fdir.rpartition("/")[0].rpartition("/")[2]
    return PciDevice(
        address=address,
        vendor=_hex_attr(f"{fdir}/vendor", 4),
        device=_hex_attr(f"{fdir}/device", 4),
        pci_class=_hex_attr(f"{fdir}/class", 6),
        driver=driver_name(fdir, sysfs_root),
        iommu_group=group,
        numa_node=_numa(f"{fdir}/numa_node", problems),
        pf_address=pf_address,
        pf_name=pf_name,
        netdev=_netdev(fdir),
        root_device=parent_name if is_pci_address(parent_name) else None,
        vf_index=vf_index,
        pcie_root=next((part for part in fdir.split("/") if _PCIE_ROOT.match(part)), None),
    )
