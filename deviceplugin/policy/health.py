"""Health, shared by every kind: the sticky rule that turns eligibility failures into Unhealthy for a device
kubelet already knows, and whether a VFIO group's nodes can be opened right now.

Health is sticky: a device kubelet already knows keeps its ID and turns Unhealthy when its binding, group or
node goes wrong, and leaves only when it is gone from sysfs or no longer named by the identity selectors. A new
device that is not eligible is left out with the reason instead. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deviceplugin.discovery.iommu import group_node_path
from deviceplugin.policy.selectors import show
from deviceplugin.records import DeviceNode, Inventory, PoolDevice, VhostNetNodes

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


# ------------------------------------------------------------------------------- VFIO interface: group / cdev
VFIO_INTERFACES = ("group", "cdev", "both")
IOMMUFD_PATH = "/dev/iommu"
CDEV_DIR = "/dev/vfio/devices"


def parse_vfio_interface(entry: Mapping[Any, Any], bad: Callable[[str, str], None]) -> dict[str, Any]:
    """The pool key `vfioInterface` for the kinds that take it: group (default), cdev or both."""
    if "vfioInterface" not in entry:
        return {}
    value = entry["vfioInterface"]
    if value not in VFIO_INTERFACES:
        bad("vfioInterface", f"expected group, cdev or both, got {show(value)}")
        return {}
    return {"vfioInterface": value}


@dataclass(frozen=True)
class VfioAccess:
    """What a unit of one IOMMU group needs under a pool's vfioInterface, and why it cannot be used now."""

    nodes: tuple[DeviceNode, ...]
    unhealthy: list[str]
    cdevs: tuple[tuple[str, str], ...] = ()  # (member, vfioX)


def vfio_access(inventory: Inventory, number: int, members: Sequence[str], interface: str = "group") -> VfioAccess:
    """Nodes and health of a unit of group `number` carrying `members`.

    `group`: /dev/vfio/vfio and the group node. `cdev`: /dev/iommu and each member's /dev/vfio/devices/vfioX
    (iommufd; no group node, no container). `both`: all of them. The group must be viable in every mode: binding a
    cdev to iommufd claims DMA ownership of the whole group, as opening the group node does."""
    nodes: list[DeviceNode] = []
    unhealthy: list[str] = []
    if interface in ("group", "both"):
        nodes += group_nodes(inventory, number)
        unhealthy += group_health(inventory, number)
    else:
        group = inventory.groups.get(number)
        if group is None:
            unhealthy.append(f"IOMMU group {number} is gone")
        elif not group.viable:
            unhealthy.append(f"IOMMU group {number} is not viable: {group.why_not_viable}")
    if interface == "group":
        return VfioAccess(tuple(nodes), unhealthy)
    iommufd = inventory.iommufd_node or str(_dev_root(inventory) / "iommu")
    nodes.append(DeviceNode(iommufd, IOMMUFD_PATH))
    if inventory.iommufd_node is None:
        unhealthy.append(f"{iommufd} is missing (vfioInterface {interface})")
    group = inventory.groups.get(number)
    cdevs: list[tuple[str, str]] = []
    for member in members:
        cdev = group.cdevs.get(member) if group is not None else None
        if cdev is None:
            unhealthy.append(f"{member} has no VFIO cdev (needs CONFIG_VFIO_DEVICE_CDEV; noiommu mode has none)")
            continue
        host = group.cdev_nodes.get(member) if group is not None else None
        if host is None:
            unhealthy.append(f"{_dev_root(inventory) / 'vfio/devices' / cdev} is missing")
        nodes.append(DeviceNode(host or str(_dev_root(inventory) / "vfio/devices" / cdev), f"{CDEV_DIR}/{cdev}"))
        cdevs.append((member, cdev))
    return VfioAccess(tuple(nodes), unhealthy, tuple(cdevs))


# ------------------------------------------------------------------------------------------------ vhost-net
VHOST_NET_PATH = "/dev/vhost-net"
TUN_PATH = "/dev/net/tun"


def vhost_net_access(inventory: Inventory) -> tuple[tuple[DeviceNode, DeviceNode], list[str]]:
    """/dev/vhost-net and /dev/net/tun for a container, and which of them is missing on the host now.

    The vhost-net kind's reader records them (`VhostNetNodes`); any pool may ask for them (`needVhostNet`)."""
    records = [r for r in inventory.of("vhost-net") if isinstance(r, VhostNetNodes)]
    found = records[0] if records else VhostNetNodes(None, None)
    root = _dev_root(inventory)
    vhost_host = found.vhost_net or str(root / "vhost-net")
    tun_host = found.tun or str(root / "net/tun")
    missing = [f"{path} is missing" for path, there in ((vhost_host, found.vhost_net), (tun_host, found.tun))
               if there is None]  # fmt: skip
    nodes = (DeviceNode(vhost_host, VHOST_NET_PATH), DeviceNode(tun_host, TUN_PATH))
    return nodes, missing


def with_vhost_net(device: PoolDevice, inventory: Inventory) -> PoolDevice:
    """`needVhostNet: true`: the device also brings /dev/vhost-net and /dev/net/tun, and is Unhealthy without them."""
    nodes, missing = vhost_net_access(inventory)
    extra = tuple(n for n in nodes if n not in device.nodes)
    if not missing:
        return dataclasses.replace(device, nodes=device.nodes + extra)
    reasons = [r for r in (device.why_unhealthy, f"needVhostNet: {'; '.join(missing)}") if r]
    return dataclasses.replace(device, nodes=device.nodes + extra, healthy=False, why_unhealthy="; ".join(reasons))
