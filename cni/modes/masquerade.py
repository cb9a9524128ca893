"""ipMasq for modes veth and bridge, as in the reference: per-attachment nftables rules, keyed, so DEL and GC
find them without the pod's addresses."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cni.modes.call import Call
    from cni.result import IPConfig

def masquerade_add(call: Call, ips: tuple[IPConfig, ...]) -> None:
    if call.conf.ip_masq and ips:
        from cni import ipmasq

        ipmasq.setup(call.conf.name, call.req.container_id, call.req.ifname, ips)


def masquerade_del(call: Call) -> None:
    """Remove the attachment's masquerade rules by key: works with the netns and its addresses already gone."""
    if call.conf.ip_masq:
        from cni import ipmasq

        ipmasq.teardown(call.conf.name, call.req.container_id, call.req.ifname)
