"""What every mode shares: the per-call context, the IPAM delegation, and the mode registry.

A mode module (`veth`, `macvlan`, `bridge`) exposes `cmd_add(call) -> Result`, `cmd_del(call)` and
`cmd_check(call)`; it never sees env vars or stdin.
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
from dataclasses import dataclass, replace
from types import ModuleType
from typing import TYPE_CHECKING

from cni.errors import INTERNAL, INVALID_CONFIG, CniError
from cni.netconf import NetConf
from cni.request import CniRequest
from cni.result import Interface, IPConfig, Result, parse_result

if TYPE_CHECKING:
    from cni.ipam import IpamRequest
    from cni.links import LinkState
    from cni.netns import Netlink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Call:
    """One command for one attachment. `netns_fd` is an open fd on `req.netns` (None when DEL finds no netns)."""

    req: CniRequest
    conf: NetConf
    netns_fd: int | None


def mode_module(mode: str) -> ModuleType:
    return importlib.import_module(f"cni.modes.{mode}")


# --- IPAM delegation (the built-ins and external plugins live in cni.ipam) -------------------------------------


def _ipam_request(call: Call) -> IpamRequest:
    from cni.ipam import IpamRequest

    req = call.req
    return IpamRequest(
        command=req.command,
        container_id=req.container_id,
        ifname=req.ifname,
        netns=req.netns,
        cni_args=req.args,
        cni_path=req.path,
        env=req.env,
        netconf=call.conf.raw,
    )


def ipam_add(call: Call) -> Result:
    """IPAM ADD, or an empty result for an L2-only config (no `ipam`)."""
    if call.conf.ipam is None:
        return Result()
    from cni.ipam import ipam_add as add

    return parse_result(add(_ipam_request(call)), "1.1.0", "IPAM result")


def ipam_del(call: Call) -> None:
    if call.conf.ipam is not None:
        from cni.ipam import ipam_del as delete

        delete(_ipam_request(call))


def ipam_release_quietly(call: Call) -> None:
    """Rollback: release what IPAM ADD reserved, logging (not raising) a failure so the original error wins."""
    try:
        ipam_del(replace(call, req=replace(call.req, command="DEL")))
    except Exception:
        log.warning("rollback: IPAM release failed for %s/%s", call.req.container_id, call.req.ifname, exc_info=True)


def ipam_check(call: Call) -> None:
    if call.conf.ipam is not None:
        from cni.ipam import ipam_check as check

        check(_ipam_request(call))


def ipam_gc(call: Call, valid: list[tuple[str, str]]) -> None:
    if call.conf.ipam is not None:
        from cni.ipam import ipam_gc as gc

        gc(_ipam_request(call), valid)


def ipam_status(call: Call) -> None:
    if call.conf.ipam is not None:
        from cni.ipam import ipam_status as status

        status(_ipam_request(call))


# --- ipMasq (veth and bridge, as in the reference) -------------------------------------------------------------


def masquerade_add(call: Call, ips: tuple[IPConfig, ...]) -> None:
    if call.conf.ip_masq and ips:
        from cni import ipmasq

        ipmasq.setup(call.conf.name, call.req.container_id, call.req.ifname, ips)


def masquerade_del(call: Call) -> None:
    """Remove the attachment's masquerade rules by key: works with the netns and its addresses already gone."""
    if call.conf.ip_masq:
        from cni import ipmasq

        ipmasq.teardown(call.conf.name, call.req.container_id, call.req.ifname)


def masquerade_del_quietly(call: Call) -> None:
    try:
        masquerade_del(call)
    except Exception:
        log.warning("rollback: could not remove masquerade rules of %s", call.req.container_id, exc_info=True)


# --- pieces of the result every mode builds ----------------------------------------------------------------------


def container_result(call: Call, ipam: Result, interfaces: list[Interface]) -> Result:
    """The mode's result: its interfaces, IPAM's addresses on the last one (the container side), IPAM's routes,
    and the config's DNS if it has any (it overrides IPAM's, as in the reference plugins)."""
    index = len(interfaces) - 1
    ips = tuple(replace(ip, interface=index) for ip in ipam.ips)
    dns = ipam.dns if call.conf.dns.empty else call.conf.dns
    return Result(interfaces=tuple(interfaces), ips=ips, routes=ipam.routes, dns=dns)


def chain(prev: Result | None, ours: Result) -> Result:
    """Our result appended to a previous plugin's: its interfaces first, our ip indexes shifted past them."""
    if prev is None:
        return ours
    shift = len(prev.interfaces)
    ips = tuple(replace(ip, interface=None if ip.interface is None else ip.interface + shift) for ip in ours.ips)
    return Result(
        interfaces=(*prev.interfaces, *ours.interfaces),
        ips=(*prev.ips, *ips),
        routes=(*prev.routes, *ours.routes),
        dns=prev.dns if ours.dns.empty else ours.dns,
    )


def enable_forwarding(fams: set[int]) -> None:
    """Host-wide IP forwarding for the families in use (the reference `ip.EnableForward`)."""
    from cni.netns import write_sysctl

    if 4 in fams:
        write_sysctl("net/ipv4/ip_forward", "1")
    if 6 in fams:
        write_sysctl("net/ipv6/conf/all/forwarding", "1")


def pod_sysctls(ifname: str, fams: set[int], ndisc_notify: bool = False, dad: bool = True) -> None:
    """Run inside the pod, before the link goes up: announce the new MAC with `arp_notify` (which replaced
    gratuitous ARP in the reference), make sure IPv6 is enabled on lo and the interface when it carries IPv6, and
    without `dad` turn DAD off for the interface (`accept_dad=0`, as the reference bridge does): that covers the
    link-local address too, which would otherwise stay tentative for a second and stall the first packets."""
    from cni.netns import write_sysctl

    write_sysctl(f"net/ipv4/conf/{ifname}/arp_notify", "1", missing_ok=True)
    if 6 in fams:
        write_sysctl("net/ipv6/conf/lo/disable_ipv6", "0", missing_ok=True)
        write_sysctl(f"net/ipv6/conf/{ifname}/disable_ipv6", "0", missing_ok=True)
        if not dad:
            write_sysctl(f"net/ipv6/conf/{ifname}/accept_dad", "0", missing_ok=True)
        if ndisc_notify:
            write_sysctl(f"net/ipv6/conf/{ifname}/ndisc_notify", "1", missing_ok=True)


def families(ipam: Result) -> set[int]:
    return {ipaddress.ip_interface(ip.address).version for ip in ipam.ips}


def prev_container_iface(call: Call) -> tuple[Result, int]:
    """CHECK: prevResult and the index of the interface that is ours (named CNI_IFNAME, in this sandbox)."""
    prev = call.conf.prev_result
    if prev is None:
        raise CniError(INVALID_CONFIG, "CHECK: prevResult is required")
    for n, iface in enumerate(prev.interfaces):
        if iface.name == call.req.ifname and iface.sandbox == call.req.netns:
            return prev, n
    raise CniError(INTERNAL, f"CHECK: prevResult has no interface {call.req.ifname!r} in sandbox {call.req.netns!r}")


def check_container_iface(call: Call, pod: Netlink, prev: Result, index: int, kind: str) -> LinkState:
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
    gateways = {ip.family: ip.gateway for ip in mine if ip.gateway}
    our_families = {ip.family for ip in mine}
    for route in prev.routes:
        family = ipaddress.ip_network(route.dst, strict=False).version
        if family not in our_families:
            continue
        gw = route.gw or gateways.get(family, "")
        if route.table not in present:
            present[route.table] = routes(pod, table=route.table)
        if (route.dst, gw) not in present[route.table]:
            where = f" (table {route.table})" if route.table else ""
            raise CniError(
                INTERNAL, f"CHECK: route {route.dst} via {gw or 'link'}{where} missing in {call.req.netns!r}"
            )
    return state
