"""Device kind `platform`: SoC devices on the platform bus (and AMBA) bound to vfio-platform / vfio-amba.

The IOMMU group is the unit, as for PCI: a group with one device is advertised under the device's name
(`3200000.sata`); a group with several is one device `iommu-group-N` (`iommuGroups: whole`) or left out
(`exclude`), never split. Selectors: `drivers`, `names`, `compatibles` (any string of the device's devicetree
`of_node/compatible`). A real SoC shows hundreds of kernel-owned platform devices, so without `names` or
`compatibles` a pool looks only at devices already bound to a vfio driver: the others would only clutter `list`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deviceplugin.discovery.iommu import is_vfio_driver
from deviceplugin.discovery.platform import PlatformDevice, discover_platform
from deviceplugin.kinds.base import Attribute, Bad
from deviceplugin.policy.health import Unit, judge, parse_vfio_interface, vfio_access
from deviceplugin.policy.selectors import ANY_NAME, KeyParser, ListKey, binding, one_of, parse_keys
from deviceplugin.records import Inventory, PoolDevice, ResourcePool, env_suffix

if TYPE_CHECKING:
    from deviceplugin.policy.config import PoolConfig

NAME = "platform"
_DEVICE_NAME = re.compile(r"^[^/\s]{1,255}\Z")
_COMPATIBLE = re.compile(r"^[^\s,]+(,[^\s]+)?\Z")
# Config key → (PlatformSelectors field, parser), in documentation order.
_KEYS: dict[str, tuple[str, KeyParser]] = {
    "drivers": ("drivers", ListKey("a list of driver names", ANY_NAME).checked),
    "names": ("names", ListKey("a list of platform device names like 3200000.sata", _DEVICE_NAME).checked),
    "compatibles": (
        "compatibles",
        ListKey("a list of devicetree compatible strings like fsl,lx2160a-ahci", _COMPATIBLE).checked,
    ),
}


@dataclass(frozen=True)
class PlatformSelectors:
    """Selectors for platform pools. None = key not given."""

    drivers: tuple[str, ...] | None = None
    names: tuple[str, ...] | None = None
    compatibles: tuple[str, ...] | None = None

    @property
    def names_devices(self) -> bool:
        return self.names is not None or self.compatibles is not None

    def identity_mismatch(self, dev: PlatformDevice) -> str | None:
        if self.names is not None and dev.name not in self.names:
            return f"{dev.name} is not one of {one_of(self.names)}"
        if self.compatibles is not None and not set(dev.compatibles) & set(self.compatibles):
            have = ", ".join(dev.compatibles) or "none"
            return f"{dev.name} is compatible with {have}, not with {one_of(self.compatibles)}"
        return None

    def driver_mismatch(self, dev: PlatformDevice) -> str | None:
        if self.drivers is not None and dev.driver not in self.drivers:
            return f"{dev.name} needs driver {one_of(self.drivers)} but is {binding(dev.driver)}"
        return None


class PlatformKind:
    name = NAME
    label: str | None = "vnfio.io/vfio-platform"
    uevent_subsystems = frozenset({"platform", "amba"})
    selector_keys = tuple(_KEYS)
    iommu_groups_rule: str | None = None
    pool_keys = ("vfioInterface",)

    def discover(self, sysfs_root: Path, dev_root: Path, problems: list[str]) -> tuple[PlatformDevice, ...]:
        return discover_platform(sysfs_root, problems)

    def parse_pool_keys(self, entry: Mapping[Any, Any], bad: Bad) -> dict[str, Any]:
        return parse_vfio_interface(entry, bad)

    def parse_selectors(self, raw: Mapping[Any, Any], bad: Bad) -> PlatformSelectors | None:
        values = parse_keys(raw, NAME, _KEYS, bad)
        return PlatformSelectors(**values) if values is not None else None

    def units(self, cfg: PoolConfig, inventory: Inventory, known: set[str]) -> list[Unit]:
        selectors = cfg.selectors
        assert isinstance(selectors, PlatformSelectors)
        interface = cfg.options.get("vfioInterface", "group")
        devices: tuple[PlatformDevice, ...] = inventory.of(NAME)
        by_name = {d.name: d for d in devices}

        def wanted(dev: PlatformDevice, unit_id: str) -> bool:
            if selectors.identity_mismatch(dev) is not None:
                return False
            return selectors.names_devices or is_vfio_driver(dev.driver) or unit_id in known

        units: list[Unit] = []
        members_of: dict[int, list[str]] = {}
        for dev in devices:
            if dev.iommu_group is not None:
                members_of.setdefault(dev.iommu_group, []).append(dev.name)
            elif wanted(dev, dev.name):
                no_group = [f"{dev.name} has no IOMMU group"]
                units.append(_unit(dev.name, [dev], None, selectors, inventory, known, no_group))
        for number, names in sorted(members_of.items()):
            group = inventory.groups.get(number)
            # Every member of the group travels with the unit, platform device or not.
            members = sorted(set(names) | set(group.members if group is not None else ()))
            unit_id = members[0] if len(members) == 1 else f"iommu-group-{number}"
            matched = [by_name[n] for n in sorted(names) if wanted(by_name[n], unit_id)]
            if not matched:
                continue
            if len(members) == 1:
                units.append(_unit(unit_id, matched, number, selectors, inventory, known, [], interface=interface))
                continue
            listing = f"IOMMU group {number} holds {len(members)} devices ({', '.join(members)})"
            if cfg.iommu_groups == "exclude":
                units.append(Unit(unit_id, tuple(members), excluded=f"{listing} and iommuGroups is exclude"))
                continue
            foreign = [m for m in members if m not in {d.name for d in matched}]
            split = [f"{listing}; the selectors do not take {', '.join(foreign)} and a group is never split"]
            units.append(
                _unit(unit_id, matched, number, selectors, inventory, known, split if foreign else [], members,
                      interface=interface)
            )  # fmt: skip
        return sorted(units, key=lambda u: (u.claims[0], u.id))

    def envs(self, resource_name: str, devices: Sequence[PoolDevice]) -> dict[str, str]:
        """`PLATFORM_DEVICE_<RES>`: the device names, what `qemu -device vfio-platform,host=<name>` and user-space
        drivers open (VFIO_GROUP_GET_DEVICE_FD takes the name)."""
        names = ",".join(sorted({m for d in devices for m in d.members}))
        return {f"PLATFORM_DEVICE_{env_suffix(resource_name)}": names}

    def check_request(self, pool: ResourcePool, devices: Sequence[PoolDevice]) -> None:
        """Any number of devices may go to one container."""

    def attributes(self, device: PoolDevice, inventory: Inventory) -> dict[str, Attribute]:
        """`platformDevice` (the kernel's name, for a one-device group) and `compatible` (the most specific
        devicetree compatible string the devices of the unit share), so a claim can ask for "an LX2160A AHCI"."""
        attributes: dict[str, Attribute] = {}
        if len(device.members) == 1:
            attributes["platformDevice"] = device.members[0]
        records = {d.name: d for d in inventory.of(NAME)}
        found = [records[m] for m in device.members if m in records]
        if found:
            shared = [c for c in found[0].compatibles if all(c in other.compatibles for other in found)]
            if shared:
                attributes["compatible"] = shared[0]
        return attributes


def _unit(
    unit_id: str,
    matched: list[PlatformDevice],
    group: int | None,
    selectors: PlatformSelectors,
    inventory: Inventory,
    known: set[str],
    not_eligible: list[str],
    members: list[str] | None = None,
    *,
    interface: str = "group",
) -> Unit:
    not_eligible = list(not_eligible)
    for dev in matched:
        if (reason := selectors.driver_mismatch(dev)) is not None:
            not_eligible.append(reason)
        elif not is_vfio_driver(dev.driver):
            not_eligible.append(f"{dev.name} needs vfio-platform or vfio-amba but is {binding(dev.driver)}")
    names = tuple(members or sorted(d.name for d in matched))
    access = vfio_access(inventory, group, names, interface) if group is not None else None
    device = PoolDevice(
        id=unit_id,
        kind=NAME,
        healthy=True,
        iommu_groups=(group,) if group is not None else (),
        members=names,
        nodes=access.nodes if access is not None else (),
        cdevs=access.cdevs if access is not None else (),
    )
    return judge(device, names, known, not_eligible, access.unhealthy if access is not None else [])


KIND = PlatformKind()
