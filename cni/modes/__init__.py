"""What every mode shares: the per-call context, the IPAM delegation, and the mode registry.

A mode module (`veth`, `macvlan`, `bridge`) declares its options and `cmd_add`, `cmd_del`, `cmd_check` and hands
them to the skeleton as its `MODE`; it never sees env vars or stdin.
"""

from __future__ import annotations

import errno
import importlib
import ipaddress
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from cni.errors import INTERNAL, INVALID_CONFIG, CniError
from cni.result import Interface, IPConfig, Result, family_gateways, parse_result

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from cni.ipam import IpamRequest
    from cni.netconf import NetConf
    from cni.netns import Netlink
    from cni.request import CniRequest
    from cni.rtnl import Link

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Call:
    """One command for one attachment. `netns_fd` is an open fd on `req.netns` (None when DEL finds no netns)."""

    req: CniRequest
    conf: NetConf
    netns_fd: int | None


# --- the registry: adding a mode is its module (ending in `MODE = Mode(...)`) and its name here ----------------

MODES = ("veth", "macvlan", "bridge")


@dataclass(frozen=True)
class Mode:
    """What a mode module gives the skeleton. `parse_options` validates the mode's own keys of the raw config
    (the common ones are `cni.netconf`'s) and returns the frozen options record `NetConf.options` carries;
    `status`, if any, says whether the mode can serve ADD (STATUS), before IPAM is asked the same."""

    parse_options: Callable[[Mapping[str, Any]], object]
    add: Callable[[Call], Result]
    delete: Callable[[Call], None]
    check: Callable[[Call], None]
    status: Callable[[Call], None] | None = None


def load_mode(name: str) -> Mode:
    """The mode named `name` (one of MODES), importing its module on first use."""
    module = importlib.import_module(f"cni.modes.{name}")
    mode: Mode = module.MODE
    return mode


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


def enable_forwarding(host: Netlink, fams: set[int]) -> None:
    """Host-wide IP forwarding for the families in use (the reference `ip.EnableForward`). Read over netlink;
    /proc/sys is written only when forwarding is off, which on a working node is once."""
    from cni.netns import write_sysctl

    if 4 in fams and not host.rtnl.forwarding(4):
        write_sysctl("net/ipv4/ip_forward", "1")
    if 6 in fams and not host.rtnl.forwarding(6):
        write_sysctl("net/ipv6/conf/all/forwarding", "1")


def ipv6_link_local(call: Call, ipam: Result) -> bool:
    """Whether the pod interface keeps the kernel's IPv6 link-local address (and the host end of a veth with it).

    `ipv6LinkLocal` decides when set. By default only an attachment that uses IPv6 keeps it: IPAM gave it an IPv6
    address, or there is no IPAM and the workload configures the interface itself. Otherwise every new pod
    interface would send DAD, MLD reports and router solicitations for an address nobody uses, and a bridge (or
    a macvlan master in bridge mode) copies each of them to every other pod: on a bridge with 500 pods that cost
    about as much CPU as the whole ADD, landing on the ADDs after it (README, performance)."""
    if call.conf.ipv6_link_local is not None:
        return call.conf.ipv6_link_local
    return call.conf.ipam is None or 6 in families(ipam)


def pod_ipv6_sysctls(ifname: str, ndisc_notify: bool = False, dad: bool = True) -> None:
    """Run inside the pod, before the link goes up, when it carries IPv6: make sure IPv6 is enabled on lo and the
    interface, and without `dad` turn DAD off for the interface (`accept_dad=0`, as the reference bridge does): that
    covers the link-local address too, which would otherwise stay tentative for a second and stall the first
    packets. These have no netlink setter, so they go through /proc/sys; IPv4-only pods never touch it."""
    from cni.netns import write_sysctl

    write_sysctl("net/ipv6/conf/lo/disable_ipv6", "0", missing_ok=True)
    write_sysctl(f"net/ipv6/conf/{ifname}/disable_ipv6", "0", missing_ok=True)
    if not dad:
        write_sysctl(f"net/ipv6/conf/{ifname}/accept_dad", "0", missing_ok=True)
    if ndisc_notify:
        write_sysctl(f"net/ipv6/conf/{ifname}/ndisc_notify", "1", missing_ok=True)


def announce(call: Call, pod: Netlink, index: int, mac: str, ips: tuple[IPConfig, ...]) -> None:
    """The last step of an ADD, the pod interface up and addressed: `arp_notify=1` on it, and its gratuitous ARP.

    The reference sets `arp_notify` before the link goes up, so the kernel announces the address inside the
    link-up request, and on a bridge that announcement is copied to every port (~1.5 ms at 500 ports, all of it in
    the requesting thread). We set it after the link is up (no announcement yet), then make the kernel announce by
    setting the interface's MAC to what it already is (NETDEV_CHANGEADDR: the kernel's own frame, as with
    `arp_notify` at link-up). The node daemon does that second step after its reply (`cni.deferred`), on its own
    handle of the pod's netlink socket. One visible difference: the MAC's `addr_assign_type` reads "set"."""
    from cni import deferred
    from cni.rtnl import IPV4_DEVCONF_ARP_NOTIFY, RtnlError

    try:
        pod.rtnl.set_ipv4_conf(index, {IPV4_DEVCONF_ARP_NOTIFY: 1})
    except RtnlError as exc:  # the reference ignores a failure to set it, too
        log.warning("arp_notify not set on %s: %s", call.req.ifname, exc)
        return
    if not any(ip.family == 4 for ip in ips):
        return
    rtnl = pod.rtnl.dup()

    def send() -> None:
        try:
            rtnl.set_link(index=index, mac=mac)
        except RtnlError as exc:  # best effort, as the reference's arp_notify: the attachment itself is fine
            log.warning("gratuitous ARP of %s not sent: %s", call.req.ifname, exc)
        finally:
            rtnl.close()

    deferred.later(send)


RETIRED_PREFIX = "vnfiorm"  # + the link's index in hex: a pod link DEL has taken down, waiting for its delete


def remove_pod_link(call: Call, pod: Netlink, host_end_down: bool = False) -> None:
    """DEL's removal of the pod's link (CNI_IFNAME), and of its veth peer with it.

    Deleting a veth costs the kernel 20-40 ms here, nearly all of it waiting for RCU grace periods, while the pod
    is cut off from it after ~1 ms: set down (its routes go with it) and renamed out of CNI_IFNAME's way, so a new
    ADD into this netns finds the name free. When the node daemon runs the DEL, it does just that before answering
    and deletes the link right after the answer (`cni.deferred`); with `host_end_down` (mode veth, whose host end
    carries the host route to the pod's address) the host end is taken down too, so the address can be given out
    again at once. A macvlan is not taken down (that waits for a whole RCU grace period under the rtnl lock): it
    loses its addresses instead. The IPAM release and the nftables rules are not deferred. In-process the link is
    deleted at once.

    A retired link that a killed daemon never deleted goes with the netns, or with the next DEL in it (after every
    DEL, any other `vnfiorm*` link of the namespace is deleted)."""
    from cni import deferred
    from cni.links import del_link_by_name, link_state_by_name
    from cni.netns import host_netlink
    from cni.rtnl import RtnlError

    name = call.req.ifname
    link = link_state_by_name(pod, name) if deferred.active() else None
    retired = False
    if link is not None:
        try:
            if link.kind == "veth":
                if host_end_down and link.peer:
                    with host_netlink() as host:
                        peer = host.rtnl.get_link(index=link.peer)
                        if peer.kind == "veth" and peer.peer == link.index:
                            host.rtnl.set_link(index=peer.index, up=False)
                pod.rtnl.set_link(index=link.index, up=False, ifname=f"{RETIRED_PREFIX}{link.index:x}")
            else:  # a macvlan: stays up, without the addresses it could answer for
                for address in pod.rtnl.addresses(link.index):
                    if not ipaddress.ip_address(address.address).is_link_local:
                        pod.rtnl.del_address(link.index, address.address, address.prefixlen)
                pod.rtnl.set_link(index=link.index, ifname=f"{RETIRED_PREFIX}{link.index:x}")
            retired = True
        except RtnlError as exc:
            log.info("DEL %s: could not retire %s (%s); deleting it now", call.req.container_id, name, exc)
    if not retired:
        del_link_by_name(pod, name)
    rtnl = pod.rtnl.dup()  # the pod's Netlink is closed by the time a deferred action runs

    def delete_retired() -> None:
        """The link just retired, and any a killed daemon left: every `vnfiorm*` link of the namespace."""
        try:
            for link in rtnl.links():
                if link.name.startswith(RETIRED_PREFIX):
                    try:
                        rtnl.del_link(link.name)
                    except RtnlError as exc:
                        if exc.code != errno.ENODEV:
                            log.warning("DEL %s: could not delete %s: %s", call.req.container_id, link.name, exc)
        finally:
            rtnl.close()

    deferred.later(delete_retired)


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
    gateways = family_gateways(mine)
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
