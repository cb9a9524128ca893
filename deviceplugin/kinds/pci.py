"""Device kind `pci`: PCI functions bound to a vfio driver (vfio-pci and its vendor variants).

The IOMMU group is the unit: a group with one function is a device with the PCI address as ID; a group with
several is one device `iommu-group-N` (`iommuGroups: whole`) or left out (`exclude`), never split. Selectors
are sriov-network-device-plugin's names. A `pfNames` entry is a PF netdev name, optionally with sriov-dp's VF
ranges after a `#`: `eth1` takes every VF of eth1, `eth1#0-3,5` only the VFs with index 0 to 3 and 5 (the N
of the PF's `virtfnN` link). Unlike sriov-dp, which uses only the first entry naming a PF, every entry counts:
`["eth1#0", "eth1#2"]` takes VFs 0 and 2.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deviceplugin.discovery.iommu import is_vfio_driver
from deviceplugin.discovery.pci import discover_pci
from deviceplugin.kinds.base import Attribute, Bad
from deviceplugin.policy.health import Unit, judge, parse_vfio_interface, vfio_access
from deviceplugin.policy.selectors import ANY_NAME, KeyParser, ListKey, binding, one_of, parse_keys, show
from deviceplugin.records import Inventory, PciDevice, PoolDevice, ResourcePool, env_suffix

if TYPE_CHECKING:
    from deviceplugin.policy.config import PoolConfig

NAME = "pci"
# The SR-IOV capability counts VFs in 16 bits (TotalVFs), so no VF index is above 65535.
VF_INDEX_MAX = 65535
_RANGE_ITEM = re.compile(r"^([0-9]{1,10})(?:-([0-9]{1,10}))?\Z")
_HEX4 = re.compile(r"^(0x)?[0-9a-fA-F]{4}\Z")
_PCI_ADDRESS = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]\Z")
_IFNAME = re.compile(r"^[^/\s:]{1,15}\Z")
# Kubernetes' standard device attributes for PCI (k8s.io/dynamic-resource-allocation/deviceattribute).
PCI_BUS_ID = "resource.kubernetes.io/pciBusID"
PCIE_ROOT = "resource.kubernetes.io/pcieRoot"


def pcie_root(fn: PciDevice) -> str | None:
    """The PCIe root complex as Kubernetes names it (`pci0001:00`, the host bridge's sysfs directory, which
    `resource.kubernetes.io/pcieRoot` also uses); None when discovery found none."""
    return fn.pcie_root


def _hex4(value: str) -> str:
    return value.lower().removeprefix("0x")


_PF_NAMES_EXPECTED = f"a list of interface names, each optionally with VF indexes 0-{VF_INDEX_MAX}: eth1, eth1#0-3,5"


# ----------------------------------------------------------------------------------------------- pfNames
@dataclass(frozen=True)
class PfNameEntry:
    """One parsed `pfNames` entry: the PF's netdev name and, when the entry had `#...`, the VF index ranges."""

    name: str
    ranges: tuple[tuple[int, int], ...] | None = None  # inclusive (first, last) pairs; None = every VF

    def matches(self, fn: PciDevice) -> bool:
        """Same PF name, and no range or the VF's index inside one; a VF whose index is unknown fails any range."""
        if fn.pf_name != self.name:
            return False
        if self.ranges is None:
            return True
        return fn.vf_index is not None and any(first <= fn.vf_index <= last for first, last in self.ranges)

    def __str__(self) -> str:
        if self.ranges is None:
            return self.name
        spans = ",".join(str(a) if a == b else f"{a}-{b}" for a, b in self.ranges)
        return f"{self.name} (VFs {spans})"


def parse_pf_name(entry: str) -> PfNameEntry:
    """`eth1` or `eth1#0-3,5` as a `PfNameEntry`; ValueError with the reason for a malformed range part.

    The name part is returned as written: whether it is a valid interface name is the config's rule."""
    name, sep, spec = entry.partition("#")
    if not sep:
        return PfNameEntry(name)
    if "#" in spec:
        raise ValueError("more than one '#'")
    if not spec:
        raise ValueError("nothing after '#' (expected VF indexes like 0-3,5)")
    ranges: list[tuple[int, int]] = []
    for item in spec.split(","):
        match = _RANGE_ITEM.match(item)
        if not match:
            raise ValueError(f"{item!r} is not a VF index N or an inclusive range N-M")
        first = int(match.group(1))
        last = first if match.group(2) is None else int(match.group(2))
        if last > VF_INDEX_MAX:
            raise ValueError(f"VF index {last} is above {VF_INDEX_MAX}")
        if first > last:
            raise ValueError(f"range {item} runs backwards")
        ranges.append((first, last))
    return PfNameEntry(name, tuple(ranges))


def _pf_names(value: object) -> tuple[tuple[PfNameEntry, ...] | None, str | None]:
    """pfNames parsed, or the reason it is refused: the first bad entry, and what was wrong with it."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        return None, f"expected {_PF_NAMES_EXPECTED}, got {show(value)}"
    entries = []
    for entry in value:
        try:
            parsed = parse_pf_name(entry)
        except ValueError as exc:
            return None, f"{show(entry)}: {exc}; expected {_PF_NAMES_EXPECTED}"
        if not _IFNAME.match(parsed.name):
            why = f"{show(parsed.name)} is not an interface name" if parsed.name else "no interface name before '#'"
            return None, f"{show(entry)}: {why}; expected {_PF_NAMES_EXPECTED}"
        entries.append(parsed)
    return tuple(dict.fromkeys(entries)), None


# Config key → (PciSelectors field, parser), in documentation order.
_KEYS: dict[str, tuple[str, KeyParser]] = {
    "vendors": ("vendors", ListKey("a list of 4-digit hex strings", _HEX4, _hex4).checked),
    "devices": ("devices", ListKey("a list of 4-digit hex strings", _HEX4, _hex4).checked),
    "drivers": ("drivers", ListKey("a list of driver names", ANY_NAME).checked),
    "pciAddresses": (
        "pci_addresses",
        ListKey("a list of PCI addresses like 0000:01:00.1", _PCI_ADDRESS, str.lower).checked,
    ),
    "pfNames": ("pf_names", _pf_names),
    "rootDevices": (
        "root_devices",
        ListKey("a list of PCI addresses like 0000:00:00.0", _PCI_ADDRESS, str.lower).checked,
    ),
}


# --------------------------------------------------------------------------------------------- selectors
@dataclass(frozen=True)
class PciSelectors:
    """sriov-network-device-plugin's selector names, for vfio-pci pools. None = key not given."""

    vendors: tuple[str, ...] | None = None
    devices: tuple[str, ...] | None = None
    drivers: tuple[str, ...] | None = None
    pci_addresses: tuple[str, ...] | None = None
    pf_names: tuple[PfNameEntry, ...] | None = None  # parsed from `eth1` or `eth1#0-3,5` (see parse_pf_name)
    # The upstream port the function sits under, or its PF (sriov-dp's meaning): either address matches.
    root_devices: tuple[str, ...] | None = None

    def identity_mismatch(self, fn: PciDevice) -> str | None:
        """Why `fn` is not one of the devices this pool names; None when it is."""
        if self.vendors is not None and fn.vendor not in self.vendors:
            return f"vendor {fn.vendor} is not one of {one_of(self.vendors)}"
        if self.devices is not None and fn.device not in self.devices:
            return f"device {fn.device} is not one of {one_of(self.devices)}"
        if self.pci_addresses is not None and fn.address not in self.pci_addresses:
            return f"address {fn.address} is not one of {one_of(self.pci_addresses)}"
        if self.root_devices is not None and not (
            fn.root_device in self.root_devices or fn.pf_address in self.root_devices
        ):
            return f"neither root device {fn.root_device} nor PF {fn.pf_address} is one of {one_of(self.root_devices)}"
        return None

    def pf_mismatch(self, fn: PciDevice) -> str | None:
        """pfNames picks devices by their PF's current netdev name: a new device that fails it is simply not
        selected; a device already advertised that fails it (the PF lost its netdev) turns Unhealthy. Any entry
        matching is enough; an entry with VF ranges also needs the VF's index in one of them."""
        if self.pf_names is None:
            return None
        wanted = self.pf_names
        if any(entry.matches(fn) for entry in wanted):
            return None
        have = fn.pf_name or "without a netdev"
        if fn.pf_name and any(entry.ranges is not None for entry in wanted):
            have += f" (VF {fn.vf_index})" if fn.vf_index is not None else " (VF index unknown)"
        return f"{fn.address} needs PF {one_of(tuple(str(e) for e in wanted))} but its PF is {have}"

    def driver_mismatch(self, fn: PciDevice) -> str | None:
        if self.drivers is not None and fn.driver not in self.drivers:
            return f"{fn.address} needs driver {one_of(self.drivers)} but is {binding(fn.driver)}"
        return None


# -------------------------------------------------------------------------------------------------- kind
class PciKind:
    name = NAME
    label = "vnfio.io/vfio-pci"
    uevent_subsystems = frozenset({"pci"})
    selector_keys = tuple(_KEYS)
    iommu_groups_rule: str | None = None
    pool_keys = ("vfioInterface",)

    def discover(self, sysfs_root: Path, dev_root: Path, problems: list[str]) -> tuple[PciDevice, ...]:
        return discover_pci(sysfs_root, problems)

    def parse_pool_keys(self, entry: Mapping[Any, Any], bad: Bad) -> dict[str, Any]:
        return parse_vfio_interface(entry, bad)

    def parse_selectors(self, raw: Mapping[Any, Any], bad: Bad) -> PciSelectors | None:
        values = parse_keys(raw, NAME, _KEYS, bad)
        return PciSelectors(**values) if values is not None else None

    def units(self, cfg: PoolConfig, inventory: Inventory, known: set[str]) -> list[Unit]:
        selectors = cfg.selectors
        assert isinstance(selectors, PciSelectors)
        functions: tuple[PciDevice, ...] = inventory.of(NAME)
        by_address = {fn.address: fn for fn in functions}
        bridges = {fn.address for fn in functions if fn.is_bridge}

        def selected(addresses: list[str], sticky: bool, group: int | None = None) -> list[PciDevice]:
            # A function only belongs to a group both sides agree on (its link and the group's member list).
            named = [by_address[a] for a in addresses if a in by_address and by_address[a].iommu_group == group]
            named = [fn for fn in named if selectors.identity_mismatch(fn) is None]
            return [fn for fn in named if sticky or selectors.pf_mismatch(fn) is None]

        interface = cfg.options.get("vfioInterface", "group")
        units: list[Unit] = []
        members_of: dict[int, set[str]] = {n: set(g.members) for n, g in inventory.groups.items()}
        for fn in functions:
            if fn.iommu_group is not None:
                members_of.setdefault(fn.iommu_group, set()).add(fn.address)
            elif not fn.is_bridge and selected([fn.address], fn.address in known):
                no_group = [f"{fn.address} has no IOMMU group"]
                units.append(_unit(fn.address, [fn], None, selectors, inventory, known, no_group, interface=interface))
        for fn in [by_address[a] for a in sorted(bridges)]:
            if selectors.identity_mismatch(fn) is not None or selectors.pf_mismatch(fn) is not None:
                continue
            units.append(Unit(fn.address, (fn.address,), excluded="PCI bridge: never handed out"))
        for number, member_names in sorted(members_of.items()):
            # Bridges may share a group (kernel-owned on pcieport); every other member travels with the unit.
            group_functions = sorted(member_names - bridges)
            if not group_functions:
                continue
            unit_id = group_functions[0] if len(group_functions) == 1 else f"iommu-group-{number}"
            matched = selected(group_functions, unit_id in known, number)
            if not matched:
                continue
            if len(group_functions) == 1:
                units.append(_unit(unit_id, matched, number, selectors, inventory, known, [], interface=interface))
                continue
            listing = f"IOMMU group {number} holds {len(group_functions)} functions ({', '.join(group_functions)})"
            if cfg.iommu_groups == "exclude":
                units.append(Unit(unit_id, tuple(group_functions), excluded=f"{listing} and iommuGroups is exclude"))
                continue
            foreign = [a for a in group_functions if a not in {fn.address for fn in matched}]
            split = [f"{listing}; the selectors do not take {', '.join(foreign)} and a group is never split"]
            units.append(
                _unit(
                    unit_id, matched, number, selectors, inventory, known, split if foreign else [], group_functions,
                    interface=interface,
                )
            )
        return sorted(units, key=lambda u: (u.claims[0], u.id))

    def envs(self, resource_name: str, devices: Sequence[PoolDevice]) -> dict[str, str]:
        """The PCI addresses under sriov-dp's name (`PCIDEVICE_…`) and KubeVirt's (`PCI_RESOURCE_…`)."""
        suffix = env_suffix(resource_name)
        addresses = ",".join(sorted({a for d in devices for a in d.pci_addresses}))
        return {f"PCIDEVICE_{suffix}": addresses, f"PCI_RESOURCE_{suffix}": addresses}

    def check_request(self, pool: ResourcePool, devices: Sequence[PoolDevice]) -> None:
        """Any number of functions may go to one container."""

    def attributes(self, device: PoolDevice, inventory: Inventory) -> dict[str, Attribute]:
        """`vendor`, `device` and `pfName` as the selectors name them, and the standard PCI attributes
        (`resource.kubernetes.io/pciBusID`, `resource.kubernetes.io/pcieRoot`) a claim can align with other
        drivers' devices by. A whole multi-function group has no single bus ID: only what its functions share."""
        by_address = {fn.address: fn for fn in inventory.of(NAME)}
        functions = [by_address[a] for a in device.pci_addresses if a in by_address]
        attributes: dict[str, Attribute] = {}
        for key, values in (
            ("vendor", {fn.vendor for fn in functions}),
            ("device", {fn.device for fn in functions}),
            ("pfName", {fn.pf_name for fn in functions if fn.pf_name}),
            (PCIE_ROOT, {pcie_root(fn) for fn in functions} - {None}),
        ):
            if len(values) == 1:
                attributes[key] = values.pop()
        if len(device.pci_addresses) == 1:
            attributes[PCI_BUS_ID] = device.pci_addresses[0]
        return attributes


def _unit(
    unit_id: str,
    functions: list[PciDevice],
    group: int | None,
    selectors: PciSelectors,
    inventory: Inventory,
    known: set[str],
    not_eligible: list[str],
    addresses: list[str] | None = None,
    *,
    interface: str = "group",
) -> Unit:
    """One advertised PCI unit from the `functions` the selectors took (all of `addresses`, unless split)."""
    not_eligible = list(not_eligible)
    for fn in functions:
        if (reason := selectors.pf_mismatch(fn) or selectors.driver_mismatch(fn)) is not None:
            not_eligible.append(reason)
        elif not is_vfio_driver(fn.driver):
            not_eligible.append(f"{fn.address} needs a vfio driver but is {binding(fn.driver)}")
    numa = {fn.numa_node for fn in functions}
    all_addresses = tuple(addresses or sorted(fn.address for fn in functions))
    access = vfio_access(inventory, group, all_addresses, interface) if group is not None else None
    device = PoolDevice(
        id=unit_id,
        kind=NAME,
        healthy=True,
        iommu_groups=(group,) if group is not None else (),
        numa_node=numa.pop() if len(numa) == 1 else None,
        members=all_addresses,
        pci_addresses=all_addresses,
        pfs=tuple(sorted({fn.pf_address for fn in functions if fn.pf_address})),
        nodes=access.nodes if access is not None else (),
        cdevs=access.cdevs if access is not None else (),
    )
    return judge(device, all_addresses, known, not_eligible, access.unhealthy if access is not None else [])


KIND = PciKind()
