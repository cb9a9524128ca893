"""Selectors: which discovered devices a pool wants. All given keys must match (AND); the values of one key
are alternatives (OR); a key that is not given matches everything.

Selectors are split by what they look at. *Identity* selectors (vendors, devices, pciAddresses, rootDevices,
containers) name a device; *state* selectors (drivers, pfNames, minObjects) look at what the device is bound
to or holds right now. A device already advertised that stops matching a state selector stays in its pool as
unhealthy, so kubelet sees it go Unhealthy instead of vanishing (see pools.py). A new device failing
`drivers` or `minObjects` is listed as left out with the reason; one failing `pfNames` is simply not selected
(pools split by PF would otherwise list each other's devices).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from deviceplugin.records import FslMcContainer, PciDevice


def _one_of(values: tuple[str, ...]) -> str:
    return " or ".join(values)


def binding(driver: str | None) -> str:
    """`bound to i40e` / `unbound`, for reasons shown to operators."""
    return f"bound to {driver}" if driver else "unbound"


@dataclass(frozen=True)
class PciSelectors:
    """sriov-network-device-plugin's selector names, for vfio-pci pools. None = key not given."""

    vendors: tuple[str, ...] | None = None
    devices: tuple[str, ...] | None = None
    drivers: tuple[str, ...] | None = None
    pci_addresses: tuple[str, ...] | None = None
    pf_names: tuple[str, ...] | None = None
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
        selected; a device already advertised that fails it (the PF lost its netdev) turns Unhealthy."""
        if self.pf_names is not None and fn.pf_name not in self.pf_names:
            return f"{fn.address} needs PF {_one_of(self.pf_names)} but its PF is {fn.pf_name or 'without a netdev'}"
        return None

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
