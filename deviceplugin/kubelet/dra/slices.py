"""ResourceSlices: this node's pools as the scheduler sees them under DRA. Pure functions from pool snapshots to
`resource.k8s.io/v1` documents; `publisher.py` writes them.

The driver's pool is named after the node and holds the healthy devices of every configured pool: an unhealthy
device *leaves* the slice (the scheduler must not pick it; device taints are still behind a feature gate), and
comes back when it recovers. Each device carries the attributes a DeviceClass selects by.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from deviceplugin.kinds import kind_of
from deviceplugin.kinds.base import Attribute
from deviceplugin.records import Inventory, PoolDevice, ResourcePool

API_VERSION = "resource.k8s.io/v1"
MAX_DEVICES_PER_SLICE = 128  # ResourceSliceMaxDevices
MAX_ATTRIBUTES = 32  # attributes and capacities together, per device
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")


def device_name(device: PoolDevice) -> str:
    """The device's name in a slice, a DNS label: `dprc.5` → `dprc-5`, `0000:03:10.0` → `pci-0000-03-10-0`,
    `iommu-group-60` as it is. A device ID the mapping cannot fit raises ValueError (discovery never makes one)."""
    if device.id.startswith("iommu-group-"):
        name = device.id
    elif device.kind == "pci":
        name = "pci-" + re.sub(r"[:.]", "-", device.id.lower())
    else:
        name = re.sub(r"[^a-z0-9-]", "-", device.id.lower())
    if not _DNS_LABEL.match(name):
        raise ValueError(f"device {device.id!r} maps to {name!r}, which is not a DNS label")
    return name


def device_attributes(
    driver: str, pool: ResourcePool, device: PoolDevice, inventory: Inventory
) -> dict[str, Attribute]:
    """Every attribute of one device: the shared ones, then the kind's own (`DeviceKind.attributes`)."""
    attributes: dict[str, Attribute] = {"type": device.kind, "resource": pool.resource_name}
    if len(device.iommu_groups) == 1:
        attributes["iommuGroup"] = device.iommu_groups[0]
    if device.numa_node is not None:
        attributes["numaNode"] = device.numa_node
    attributes.update(kind_of(pool.device_type).attributes(device, inventory))
    return attributes


def _typed(value: Attribute) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"bool": value}
    if isinstance(value, int):
        return {"int": value}
    return {"string": str(value)}


@dataclass(frozen=True)
class PublishedDevice:
    """One device of the node's pool: where it comes from and its ResourceSlice form."""

    name: str
    resource: str
    device: PoolDevice
    document: Mapping[str, Any] = field(hash=False, compare=True)


def published_devices(
    driver: str, pools: Iterable[ResourcePool], inventory: Inventory
) -> dict[str, PublishedDevice]:
    """The healthy devices of every pool, by slice device name, sorted."""
    devices: dict[str, PublishedDevice] = {}
    for pool in pools:
        for device in pool.devices:
            if not device.healthy:
                continue
            name = device_name(device)
            attributes = device_attributes(driver, pool, device, inventory)
            if len(attributes) > MAX_ATTRIBUTES:
                raise ValueError(f"device {name} has {len(attributes)} attributes, more than {MAX_ATTRIBUTES}")
            document = {"name": name, "attributes": {k: _typed(v) for k, v in sorted(attributes.items())}}
            devices[name] = PublishedDevice(name, pool.resource_name, device, document)
    return dict(sorted(devices.items()))


def slice_name(node: str, driver: str, index: int) -> str:
    """Slices have fixed names per node, driver and index, so a restarted driver finds and reuses its own."""
    return f"{node}-{driver}-{index}"


def slice_documents(
    node: str, driver: str, generation: int, devices: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The node's pool as ResourceSlices of at most 128 devices each (one, empty, when there are none: the
    pool then says it has no devices, rather than leaving an old generation standing)."""
    listed = list(devices)
    chunks = [listed[i : i + MAX_DEVICES_PER_SLICE] for i in range(0, len(listed), MAX_DEVICES_PER_SLICE)] or [[]]
    return [
        {
            "apiVersion": API_VERSION,
            "kind": "ResourceSlice",
            "metadata": {"name": slice_name(node, driver, index)},
            "spec": {
                "driver": driver,
                "nodeName": node,
                "pool": {"name": node, "generation": generation, "resourceSliceCount": len(chunks)},
                "devices": [dict(d) for d in chunk],
            },
        }
        for index, chunk in enumerate(chunks)
    ]
