"""CHECK of the container side, shared by every mode: prevResult's interface, addresses and routes in the pod."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from cni.errors import INTERNAL, INVALID_CONFIG, CniError
from cni.result import Result, family_gateways

if TYPE_CHECKING:
    from cni.modes.call import Call
    from cni.netns import Netlink
    from cni.rtnl import Link


def prev_container_iface(call: Call) -> tuple[Result, int]:
    """CHECK: prevResult and the index of the interface that is ours (named CNI_IFNAME, in this sandbox)."""
    prev = call.conf.prev_result
    if prev is None:
        raise CniError(INVALID_CONFIG, "CHECK: prevResult is required")
    for n, iface in enumerate(prev.interfaces):
        if iface.name == call.req.ifname and iface.sandbox == call.req.netns:
            return prev, n
    raise CniError(INTERNAL, f"CHECK: prevResult has no interface {call.req.ifname!r} in sandbox {call.req.netns!r}")


def check_container_iface(call: Call, pod: Netlink, prev: Result, index: int, kind: str) -> Link:
    """CHECK the container side: the link exists with the kind and MAC of prevResult, carries every address
    prevResult gives it, and every prevResult route through it exists. Returns the link's state."""
    from cni.links import addresses, link_state_by_name, routes

    ifname = call.req.ifname
    state = link_state_by_name(pod, ifname)
    if state is None:
        raise CniError(INTERNAL, f"CHECK: container interface {ifname!r} not found in {call.req.netns!r}")
    link = state.index
    if state.kind != kind:
        raise CniError(INTERNAL, f"CHECK: {ifname!r} is a {state.kind or 'plain'} link, expected {kind}")
    expected_mac = prev.interfaces[index].mac
    if expected_mac and state.mac.lower() != expected_mac.lower():
        raise CniError(INTERNAL, f"CHECK: {ifname!r} has MAC {state.mac}, prevResult says {expected_mac}")
    have = addresses(pod, link)
    mine = [ip for ip in prev.ips if ip.interface == index]
    for ip in mine:
        if str(ipaddress.ip_interface(ip.address)) not in have:
            raise CniError(INTERNAL, f"CHECK: address {ip.address} missing on {ifname!r}")
    present: dict[int, set[tuple[str, str]]] = {}  # per routing table (0: main), read once each
    ours: dict[int, set[str]] = {}  # per routing table, the destinations routed out of our link
    gateways = family_gateways(mine)
    our_families = {ip.family for ip in mine}
    for route in prev.routes:
        family = ipaddress.ip_network(route.dst, strict=False).version
        if family not in our_families:
            continue
        gw = route.gw or gateways.get(family, "")
        if route.table not in present:
            present[route.table] = routes(pod, table=route.table)
            ours[route.table] = {dst for dst, _ in routes(pod, link, table=route.table)}
        if (route.dst, gw) not in present[route.table] and not _routed_elsewhere(route.dst, present[route.table],
                                                                                 ours[route.table]):
            where = f" (table {route.table})" if route.table else ""
            raise CniError(
                INTERNAL, f"CHECK: route {route.dst} via {gw or 'link'}{where} missing in {call.req.netns!r}"
            )
    return state


def _routed_elsewhere(dst: str, present: set[tuple[str, str]], ours: set[str]) -> bool:
    """Whether the table routes `dst` out of another link, not ours: another attachment of the pod installed it
    first, and ADD kept that one (the first one wins), so ours was never added. A route to `dst` out of our own
    link through another gateway is still wrong."""
    return dst not in ours and any(have == dst for have, _ in present)
