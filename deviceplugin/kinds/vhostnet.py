"""Device kind `vhost-net`: a shareable resource of `count` slots, each giving `/dev/vhost-net` and `/dev/net/tun`.

DPDK's virtio-user exception path and QEMU's vhost-net open these two character devices; any number of containers
may, so the slots only let kubelet count and schedule them (sriov-network-device-plugin offers the same nodes with
`needVhostNet`, which every pool here takes too). All slots are healthy while both nodes exist under the dev root,
and all turn Unhealthy when one goes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deviceplugin.discovery.vhostnet import discover_vhost_net
from deviceplugin.kinds.base import Attribute, Bad
from deviceplugin.policy.health import Unit, vhost_net_access
from deviceplugin.policy.selectors import show
from deviceplugin.records import Inventory, PoolDevice, ResourcePool, VhostNetNodes

if TYPE_CHECKING:
    from deviceplugin.policy.config import PoolConfig

NAME = "vhost-net"
COUNT_MIN, COUNT_MAX, COUNT_DEFAULT = 1, 1024, 64


@dataclass(frozen=True)
class VhostNetSelectors:
    """vhost-net pools select nothing: the nodes are the node's."""


class VhostNetKind:
    name = NAME
    label: str | None = "vnfio.io/vhost-net"
    uevent_subsystems = frozenset({"misc"})
    selector_keys: tuple[str, ...] = ()
    iommu_groups_rule: str | None = "vhost-net slots have no IOMMU group"
    pool_keys = ("count",)

    def discover(self, sysfs_root: Path, dev_root: Path, problems: list[str]) -> tuple[VhostNetNodes, ...]:
        return discover_vhost_net(dev_root, problems)

    def parse_pool_keys(self, entry: Mapping[Any, Any], bad: Bad) -> dict[str, Any]:
        count = entry.get("count", COUNT_DEFAULT)
        if isinstance(count, bool) or not isinstance(count, int) or not COUNT_MIN <= count <= COUNT_MAX:
            bad("count", f"expected a number of slots from {COUNT_MIN} to {COUNT_MAX}, got {show(count)}")
            return {}
        return {"count": count}

    def parse_selectors(self, raw: Mapping[Any, Any], bad: Bad) -> VhostNetSelectors | None:
        for key in raw:
            bad(f"selectors.{key}", f"deviceType {NAME} takes no selectors (its devices are the node's nodes)")
        return None if raw else VhostNetSelectors()

    def units(self, cfg: PoolConfig, inventory: Inventory, known: set[str]) -> list[Unit]:
        nodes, missing = vhost_net_access(inventory)
        why = "; ".join(missing) or None
        units = []
        for index in range(cfg.options.get("count", COUNT_DEFAULT)):
            slot = f"vhost-net-{index}"
            device = PoolDevice(id=slot, kind=NAME, healthy=why is None, iommu_groups=(), nodes=nodes,
                                why_unhealthy=why)  # fmt: skip
            # Claims carry the pool's name: slots are not devices, so two vhost-net pools never compete for them.
            units.append(Unit(slot, (f"{cfg.resource_name}:{slot}",), device=device))
        return units

    def envs(self, resource_name: str, devices: Sequence[PoolDevice]) -> dict[str, str]:
        """Nothing beyond the nodes: virtio-user takes the paths as arguments (`path=/dev/vhost-net`)."""
        return {}

    def check_request(self, pool: ResourcePool, devices: Sequence[PoolDevice]) -> None:
        """Any number of slots may go to one container (they all give the same two nodes)."""

    def attributes(self, device: PoolDevice, inventory: Inventory) -> dict[str, Attribute]:
        """Nothing beyond `type` and `resource`: every slot is the same."""
        return {}


KIND = VhostNetKind()
