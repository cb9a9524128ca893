"""Mode `veth`: a point-to-point veth pair routed through the host, like the reference `ptp`.

The host end carries the gateway as /32 (/128), the same on every pod's host veth, and a host route
podIP/32 points at it; the pod reaches the gateway through a link-scope route and everything else via it.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cni.errors import INTERNAL, INVALID_CONFIG, CniError
from cni.links import (
    SCOPE_LINK,
    add_address,
    add_route,
    addresses,
    del_link_by_name,
    enable_forwarding,
    link_index,
    link_state_by_name,
    route_exists,
    set_up,
    setup_veth,
    veth_host_end,
    without_ipv6_link_local,
)
from cni.modes import Mode
from cni.modes.announce import announce
from cni.modes.call import Call, container_result, families
from cni.modes.check import check_container_iface, prev_container_iface
from cni.modes.ipam_calls import ipam_add, ipam_check, ipam_del, ipam_release
from cni.modes.masquerade import masquerade_add, masquerade_del
from cni.modes.pod_sysctls import ipv6_link_local, pod_ipv6_sysctls
from cni.modes.retire import remove_pod_link
from cni.modes.rollback import Rollback
from cni.netns import host_netlink, netlink_in, run_in_netns, write_sysctl
from cni.result import Interface, IPConfig, Result, family_gateways

if TYPE_CHECKING:
    from cni.netns import Netlink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VethOptions:
    """Mode veth has no keys of its own: the common ones (mtu, mac, ipMasq, ipam, dns) are all it takes."""


def parse_options(raw: Mapping[str, Any]) -> VethOptions:
    return VethOptions()


def cmd_add(call: Call) -> Result:
    req, conf = call.req, call.conf
    assert call.netns_fd is not None
    with host_netlink() as host, netlink_in(call.netns_fd) as pod, \
            Rollback(f"ADD {req.container_id}/{req.ifname}") as rollback:
        ipam = ipam_add(call)
        rollback.undo("release its IPAM reservation", ipam_release, call)  # the first step: undone last
        for ip in ipam.ips:
            if not ip.gateway:
                raise CniError(INVALID_CONFIG, f"mode veth: IPAM gave {ip.address} without a gateway")
        fams = families(ipam)
        if ipam.ips:
            enable_forwarding(host, fams)
        host_name = setup_veth(host, pod, call.netns_fd, req.ifname, conf.mtu, conf.mac)
        rollback.undo(f"delete veth {host_name}", del_link_by_name, host, host_name)
        result, pod_link = _wire(call, host, pod, host_name, ipam, fams)
        # Registered before the step: the teardown goes by key, so it also clears a half-made setup.
        rollback.undo("remove its masquerade rules", masquerade_del, call)
        masquerade_add(call, ipam.ips)
        announce(call, pod, pod_link, result.interfaces[-1].mac, ipam.ips)  # last: nothing after it can fail
        rollback.commit()
    return result


def _wire(call: Call, host: Netlink, pod: Netlink, host_name: str, ipam: Result, fams: set[int]) -> tuple[Result, int]:
    """Addresses, routes and links up on both ends; the result, and the pod end's ifindex."""
    req = call.req
    pod_state = link_state_by_name(pod, req.ifname)
    host_state = link_state_by_name(host, host_name)
    if pod_state is None or host_state is None:
        raise CniError(INTERNAL, f"veth {host_name}/{req.ifname} vanished right after creation")
    pod_link, host_link = pod_state.index, host_state.index
    if 6 in fams:
        run_in_netns(call.netns_fd, lambda: pod_ipv6_sysctls(req.ifname, dad=False))
        # The host end routes for the pod: its link-local must not sit in DAD while the first packets arrive.
        write_sysctl(f"net/ipv6/conf/{host_name}/accept_dad", "0", missing_ok=True)
    if not ipv6_link_local(call, ipam):
        without_ipv6_link_local(pod, pod_link)
        without_ipv6_link_local(host, host_link)
    for ip in ipam.ips:
        # No connected subnet route: every destination, the subnet included, goes through the gateway.
        add_address(pod, pod_link, ip.address, nodad=True, noprefixroute=True)
    set_up(pod, pod_link)
    for ip in ipam.ips:
        pod_ip = ipaddress.ip_interface(ip.address)
        host_bits = pod_ip.max_prefixlen
        add_route(pod, pod_link, f"{ip.gateway}/{host_bits}", scope=SCOPE_LINK, src=str(pod_ip.ip))
        add_route(pod, pod_link, str(pod_ip.network), gw=ip.gateway, src=str(pod_ip.ip))
    gateways = family_gateways(ipam.ips)
    for route in ipam.routes:
        gw = route.gw or gateways.get(ipaddress.ip_network(route.dst).version, "")
        add_route(pod, pod_link, route.dst, gw=gw, extra=route, keep_existing=True)  # first one wins
    set_up(host, host_link)
    for ip in ipam.ips:
        pod_ip = ipaddress.ip_interface(ip.address)
        host_bits = pod_ip.max_prefixlen
        add_address(host, host_link, f"{ip.gateway}/{host_bits}", nodad=True)
        add_route(host, host_link, f"{pod_ip.ip}/{host_bits}", scope=SCOPE_LINK)
    interfaces = [
        Interface(name=host_name, mac=host_state.mac, mtu=host_state.mtu),
        Interface(name=req.ifname, mac=pod_state.mac, sandbox=req.netns, mtu=pod_state.mtu),
    ]
    return container_result(call, ipam, interfaces), pod_link


def cmd_del(call: Call) -> None:
    # IPAM first, as the reference ptp does: the reservation must go even if the link cannot.
    ipam_del(call)
    masquerade_del(call)
    if call.netns_fd is not None:
        with netlink_in(call.netns_fd) as pod:
            # Deleting the pod end deletes the host end, its /32 gateway address and the host route with it.
            remove_pod_link(call, pod, host_end_down=True)


def cmd_check(call: Call) -> None:
    prev, index = prev_container_iface(call)
    ipam_check(call)
    assert call.netns_fd is not None
    with netlink_in(call.netns_fd) as pod:
        pod_state = check_container_iface(call, pod, prev, index, "veth")
    with host_netlink() as host:
        peer = veth_host_end(host, pod_state, call.netns_fd)  # verified from the host: the pod's word is not enough
        # ptp order: the host veth sits just before the container interface.
        hosts = [prev.interfaces[index - 1]] if index > 0 and not prev.interfaces[index - 1].sandbox else []
        for iface in hosts:
            host_link = link_index(host, iface.name)
            if host_link is None:
                raise CniError(INTERNAL, f"CHECK: host veth {iface.name!r} not found")
            if peer is None or host_link != peer.index:
                raise CniError(INTERNAL, f"CHECK: host veth {iface.name!r} is not the peer of {call.req.ifname!r}")
            _check_host_side(host, host_link, iface.name, [ip for ip in prev.ips if ip.interface == index])


def _check_host_side(host: Netlink, host_link: int, name: str, ips: list[IPConfig]) -> None:
    """The host veth still carries each gateway as a host address, and the host route to each pod address."""
    have = addresses(host, host_link)
    for ip in ips:
        pod_ip = ipaddress.ip_interface(ip.address)
        bits = pod_ip.max_prefixlen
        if ip.gateway and f"{ip.gateway}/{bits}" not in have:
            raise CniError(INTERNAL, f"CHECK: gateway address {ip.gateway}/{bits} missing on host veth {name!r}")
        # A kernel route lookup, not a dump of every host route: the host has one such route per pod.
        if not route_exists(host, f"{pod_ip.ip}/{bits}", host_link):
            raise CniError(INTERNAL, f"CHECK: host route to {pod_ip.ip}/{bits} via {name!r} missing")


MODE = Mode(parse_options=parse_options, add=cmd_add, delete=cmd_del, check=cmd_check)
