"""Discovery of the vhost-net and tun character devices (`/dev/vhost-net` 10:238, `/dev/net/tun` 10:200) that DPDK's
virtio-user exception path and QEMU's vhost-net backend open. They are shareable: many containers may open them."""

from __future__ import annotations

from pathlib import Path

from deviceplugin.discovery.sysfs import SysfsError, device_node
from deviceplugin.records import VhostNetNodes

VHOST_NET = "vhost-net"
TUN = "net/tun"


def discover_vhost_net(dev_root: Path, problems: list[str]) -> tuple[VhostNetNodes, ...]:
    """One record with the host path of each node, None for a node that is missing or not a device."""
    found: dict[str, str | None] = {}
    for rel in (VHOST_NET, TUN):
        try:
            found[rel] = device_node(dev_root / rel, dev_root)
        except SysfsError as exc:
            problems.append(str(exc))
            found[rel] = None
    return (VhostNetNodes(vhost_net=found[VHOST_NET], tun=found[TUN]),)
