"""The per-call context every mode command receives, and the result pieces every mode builds from it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from cni.result import Interface, Result

if TYPE_CHECKING:
    from cni.netconf import NetConf
    from cni.request import CniRequest


@dataclass(frozen=True)
class Call:
    """One command for one attachment. `netns_fd` is an open fd on `req.netns` (None when DEL finds no netns);
    `mount_ns_fd` the caller's mount namespace for delegated IPAM (None: ours is the caller's)."""

    req: CniRequest
    conf: NetConf
    netns_fd: int | None
    mount_ns_fd: int | None = None


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


def families(ipam: Result) -> set[int]:
    return {ipaddress.ip_interface(ip.address).version for ip in ipam.ips}
