"""Selectors: which discovered devices a pool wants. All given keys must match (AND); the values of one key
are alternatives (OR); a key that is not given matches everything.

Selectors are split by what they look at. *Identity* selectors (vendors, devices, pciAddresses, rootDevices,
containers) name a device; *state* selectors (drivers, pfNames, minObjects) look at what the device is bound
to or holds right now. A device already advertised that stops matching a state selector stays in its pool as
unhealthy, so kubelet sees it go Unhealthy instead of vanishing (see pools.py). A new device failing
`drivers` or `minObjects` is listed as left out with the reason; one failing `pfNames` is simply not selected
(pools split by PF would otherwise list each other's devices).

A `pfNames` entry is a PF netdev name, optionally with sriov-network-device-plugin's VF ranges after a `#`:
`eth1` takes every VF of eth1, `eth1#0-3,5` only the VFs with index 0 to 3 and 5 (the N of the PF's `virtfnN`
link). Unlike sriov-dp, which uses only the first entry naming a PF, every entry counts: `["eth1#0", "eth1#2"]`
takes VFs 0 and 2.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from deviceplugin.records import FslMcContainer, PciDevice


def _one_of(values: tuple[str, ...]) -> str:
    return " or ".join(values)


def binding(driver: str | None) -> str:
    """`bound to i40e` / `unbound`, for reasons shown to operators."""
    return f"bound to {driver}" if driver else "unbound"


# The SR-IOV capability counts VFs in 16 bits (TotalVFs), so no VF index is above 65535.
VF_INDEX_MAX = 65535
_RANGE_ITEM = re.compile(r"^([0-9]{1,10})(?:-([0-9]{1,10}))?$")


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
            return f"vendor {fn.vendor} is not one of {_one_of(self.vendors)}"
        if self.devices is not None and fn.device not in self.devices:
            return f"device {fn.device} is not one of {_one_of(self.devices)}"
        if self.pci_addresses is not None and fn.address not in self.pci_addresses:
            return f"address {fn.address} is not one of {_one_of(self.pci_addresses)}"
        if self.root_devices is not None and not (
            fn.root_device in self.root_devices or fn.pf_address in self.root_devices
        ):
            return f"neither root device {fn.root_device} nor PF {fn.pf_address} is one of {_one_of(self.root_devices)}"
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
        return f"{fn.address} needs PF {_one_of(tuple(str(e) for e in wanted))} but its PF is {have}"

    def driver_mismatch(self, fn: PciDevice) -> str | None:
        if self.drivers is not None and fn.driver not in self.drivers:
            return f"{fn.address} needs driver {_one_of(self.drivers)} but is {binding(fn.driver)}"
        return None


@dataclass(frozen=True)
class FslMcSelectors:
    """Selectors for DPAA2 pools. None = key not given."""

    containers: tuple[str, ...] | None = None
    drivers: tuple[str, ...] | None = None
    min_objects: Mapping[str, int] | None = None

    def identity_mismatch(self, container: FslMcContainer) -> str | None:
        if self.containers is not None and container.name not in self.containers:
            return f"{container.name} is not one of {_one_of(self.containers)}"
        return None

    def driver_mismatch(self, container: FslMcContainer) -> str | None:
        if self.drivers is not None and container.driver not in self.drivers:
            return f"{container.name} needs driver {_one_of(self.drivers)} but is {binding(container.driver)}"
        return None

    def objects_shortfall(self, container: FslMcContainer) -> str | None:
        """Which minimum object counts the container misses, e.g. `has 0 dpmcp, needs 1`."""
        missing = [
            f"has {container.object_counts.get(kind, 0)} {kind}, needs {need}"
            for kind, need in sorted((self.min_objects or {}).items())
            if container.object_counts.get(kind, 0) < need
        ]
        return "; ".join(missing) or None
