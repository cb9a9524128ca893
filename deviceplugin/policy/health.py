"""Health, shared by every kind: the sticky rule that turns eligibility failures into Unhealthy for a device
kubelet already knows, and whether a VFIO group's nodes can be opened right now.

Health is sticky: a device kubelet already knows keeps its ID and turns Unhealthy when its binding, group or
node goes wrong, and leaves only when it is gone from sysfs or no longer named by the identity selectors. A new
device that is not eligible is left out with the reason instead. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from deviceplugin.discovery.iommu import group_node_path
from deviceplugin.records import DeviceNode, Inventory, PoolDevice

VFIO_CONTAINER_PATH = "/dev/vfio/vfio"


@dataclass(frozen=True)
class Unit:
    """A candidate the pool's identity selectors named: a device to advertise, or a reason to leave it out."""

    id: str
    claims: tuple[str, ...]  # function addresses / container names: what no other pool may also take
    device: PoolDevice | None = None
    excluded: str | None = None


def judge(
    device: PoolDevice, claims: tuple[str, ...], known: set[str], not_eligible: list[str], unhealthy: list[str]
) -> Unit:
    """Eligibility failures leave a new device out but only make a known one Unhealthy (health stickiness)."""
    if not_eligible and device.id not in known:
        return Unit(device.id, claims, excluded="; ".join(not_eligible))
    reasons = not_eligible + unhealthy
    judged = dataclasses.replace(device, healthy=not reasons, why_unhealthy="; ".join(reasons) or None)
    return Unit(device.id, claims, device=judged)


# ------------------------------------------------------------------------------------------ VFIO groups
def vfio_node(inventory: Inventory) -> DeviceNode:
    """The VFIO container node every group needs beside its own."""
    host = inventory.vfio_container_node or str(_dev_root(inventory) / "vfio/vfio")
    return DeviceNode(host, VFIO_CONTAINER_PATH)


def _dev_root(inventory: Inventory) -> Path:
    return Path(inventory.dev_root or "/dev")


def group_node(inventory: Inventory, number: int) -> DeviceNode:
    """Host node of the group (noiommu-N in noiommu mode); the container always sees /dev/vfio/N, the only
    name DPDK's fslmc bus opens."""
    group = inventory.groups.get(number)
    if group is not None and group.dev_node is not None:
        host = group.dev_node
    else:
        noiommu = group.noiommu if group is not None else inventory.noiommu
        host = str(group_node_path(_dev_root(inventory), number, noiommu))
    return DeviceNode(host, f"/dev/vfio/{number}")


def group_nodes(inventory: Inventory, number: int) -> tuple[DeviceNode, DeviceNode]:
    """Every node a unit of one IOMMU group needs: /dev/vfio/vfio and the group's own."""
    return (vfio_node(inventory), group_node(inventory, number))


def group_health(inventory: Inventory, number: int) -> list[str]:
    """Why the group's node could not be opened and used right now; [] when it can."""
    reasons = []
    group = inventory.groups.get(number)
    if group is None:
        reasons.append(f"IOMMU group {number} is gone")
    else:
        if not group.viable:
            reasons.append(f"IOMMU group {number} is not viable: {group.why_not_viable}")
        if group.dev_node is None:
            reasons.append(f"{group_node(inventory, number).host_path} is missing")
    if inventory.vfio_container_node is None:
        reasons.append(f"{vfio_node(inventory).host_path} is missing")
    return reasons
