"""Kernel link, address and route operations, named for what they do (the reference `pkg/ip`).

Every function takes the `Netlink` of the namespace it acts in; none changes the calling thread's namespace. The
requests every ADD makes go through its raw `rtnl`; the rest through its pyroute2 `iproute`.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import secrets
import sys
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from cni.errors import INTERNAL, UNSUPPORTED_FIELD, CniError
from cni.netns import write_sysctl
from cni.result import IPConfig, Route, family_gateways

if TYPE_CHECKING:
    from cni.netns import Netlink
    from cni.rtnl import Link

log = logging.getLogger(__name__)

IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200
SCOPE_LINK = 253
_MAIN_TABLE = 254


def _netlink_errno(exc: BaseException) -> int | None:
    from cni.rtnl import RtnlError

    if isinstance(exc, RtnlError) or exc.__class__.__name__ == "NetlinkError":
        return getattr(exc, "code", None)
    return None


def enable_forwarding(host: Netlink, fams: set[int]) -> None:
    """Host-wide IP forwarding for the families in use (the reference `ip.EnableForward`). Read over netlink;
    /proc/sys is written only when forwarding is off, which on a working node is once."""
    if 4 in fams and not host.rtnl.forwarding(4):
        write_sysctl("net/ipv4/ip_forward", "1")
    if 6 in fams and not host.rtnl.forwarding(6):
        write_sysctl("net/ipv6/conf/all/forwarding", "1")


def link_index(ipr: Netlink, name: str) -> int | None:
    state = link_state_by_name(ipr, name)
    return state.index if state is not None else None


def all_links(ipr: Netlink) -> list[Link]:
    return ipr.rtnl.links()


def link_state(ipr: Netlink, index: int) -> Link:
    return ipr.rtnl.get_link(index=index)


def link_state_by_name(ipr: Netlink, name: str) -> Link | None:
    """The link's state in one request (RTM_GETLINK by name), or None if there is no such link."""
    try:
        link = ipr.rtnl.get_link(name=name)
    except Exception as exc:
        if _netlink_errno(exc) == errno.ENODEV:
            return None
        raise
    return link


def veth_host_end(host: Netlink, pod_link: Link, pod_netns_fd: int) -> Link | None:
    """The host end of the pod's veth `pod_link` (in the netns `pod_netns_fd`), or None if its peer is not in the host.

    What the pod reports cannot be trusted: anything in the pod with CAP_NET_ADMIN can make a local veth pair, with
    the indexes it likes, whose IFLA_LINK (an index, valid in every netns) names some other pod's host veth. So the
    link the pod names is only a candidate, accepted if the host's own view agrees: a veth whose peer, by the host's
    IFLA_LINK and IFLA_LINK_NETNSID, is `pod_link` in the pod's netns. Veth ends pair one to one, so that host link
    is this pod link's peer and nobody else's."""
    from cni.rtnl import RtnlError

    if pod_link.kind != "veth" or not pod_link.peer or pod_link.link_netnsid is None:
        return None  # no peer, or a peer in the pod's own netns
    try:
        candidate = host.rtnl.get_link(index=pod_link.peer)
    except RtnlError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise
    if candidate.kind != "veth" or candidate.peer != pod_link.index or candidate.link_netnsid is None:
        return None
    # Asked after the candidate: the kernel gives the pod netns an id in the host when a link first reports it.
    if candidate.link_netnsid != host.rtnl.netns_id(pod_netns_fd):
        log.warning("link %d (%s) in the pod claims host veth %s as its peer, whose peer is in another netns; not "
                    "touching it", pod_link.index, pod_link.name, candidate.name)
        return None
    return candidate


def set_up(ipr: Netlink, index: int) -> None:
    ipr.rtnl.set_link(index=index, up=True)


def without_ipv6_link_local(ipr: Netlink, index: int = 0, name: str = "") -> None:
    """Make link `index` (or `name`), before it goes up, come up without an IPv6 link-local address: IPv6 stays
    on, but the kernel sends nothing for it on its own (no DAD, no MLD report, no router solicitation, which a
    bridge or a macvlan master copies to every other pod). A kernel without IPv6 has nothing to silence."""
    from cni.rtnl import IN6_ADDR_GEN_MODE_NONE

    try:
        ipr.rtnl.set_ipv6_addr_gen_mode(IN6_ADDR_GEN_MODE_NONE, index=index, name=name)
    except Exception as exc:
        if _netlink_errno(exc) not in (errno.EAFNOSUPPORT, errno.EOPNOTSUPP):
            raise CniError(INTERNAL, f"failed to turn off the IPv6 link-local address of {name or index}: {exc}") \
                from exc


def macvlan_mode(link: Link) -> str:
    from cni.rtnl import IFLA_MACVLAN_MODE, MACVLAN_MODE_IDS

    raw = link.info_data.get(IFLA_MACVLAN_MODE)
    if raw is None or len(raw) < 4:
        return "None"
    mode = int.from_bytes(raw[:4], sys.byteorder)
    return next((name for name, value in MACVLAN_MODE_IDS.items() if value == mode), str(mode))


def _name_taken(ifname: str) -> CniError:
    # The spec: if CNI_IFNAME already exists in the container, ADD must fail.
    return CniError(INTERNAL, f"container interface {ifname!r} already exists")


def setup_veth(host: Netlink, pod: Netlink, netns_fd: int, ifname: str, mtu: int = 0, mac: str = "") -> str:
    """Create a veth pair: `ifname` directly in the pod netns, a random `veth%08x` peer in the host. Returns the
    host name. `ifname` already taken in the pod is an error."""
    for _ in range(10):
        host_name = f"veth{secrets.token_hex(4)}"
        try:
            host.rtnl.add_veth(host_name, ifname, netns_fd, mtu=mtu, peer_mac=mac)
            return host_name
        except Exception as exc:
            if _netlink_errno(exc) != errno.EEXIST:
                raise CniError(INTERNAL, f"failed to create veth {host_name}/{ifname}: {exc}") from exc
            # EEXIST names neither end: ask the pod only now, off the common path; else the random name collided.
            if link_index(pod, ifname) is not None:
                raise _name_taken(ifname) from exc
    raise CniError(INTERNAL, f"failed to create a veth for {ifname}: no free host name after 10 attempts")


def create_macvlan(ipr: Netlink, master: int, mode: str, netns_fd: int | None, mtu: int = 0, mac: str = "") -> str:
    """Create a macvlan on `master` under a random temporary name, directly in the pod netns when `netns_fd` is
    given (the reference works around a kernel name clash this way). Returns the temporary name."""
    for _ in range(10):
        temp = f"mv{secrets.token_hex(4)}"
        try:
            ipr.rtnl.add_macvlan(temp, master, mode, netns_fd, mtu=mtu, mac=mac)
            return temp
        except Exception as exc:
            if _netlink_errno(exc) != errno.EEXIST:
                raise CniError(INTERNAL, f"failed to create macvlan on master index {master}: {exc}") from exc
    raise CniError(INTERNAL, "failed to create a macvlan: no free temporary name after 10 attempts")


def rename_link(ipr: Netlink, index: int, name: str) -> None:
    try:
        ipr.rtnl.set_link(index=index, ifname=name)
    except Exception as exc:
        if _netlink_errno(exc) == errno.EEXIST:
            raise _name_taken(name) from exc
        raise CniError(INTERNAL, f"failed to rename link {index} to {name!r}: {exc}") from exc


def ensure_bridge(host: Netlink, name: str, mtu: int, promisc: bool, vlan_filtering: bool) -> Link:
    """Create the bridge if absent (a concurrent ADD creating it too is fine), check it is one, and bring it up."""
    state = link_state_by_name(host, name)
    created = False
    if state is None:
        # Its own MAC from the start (plugins#60: else it follows the lowest port MAC as pods come and go). Given in
        # the create request, the kernel also derives the STP bridge ID from it; set afterwards to the MAC it
        # already has, it would leave the ID at 8000.000000000000 for good.
        attrs: dict[str, Any] = {"kind": "bridge", "address": _random_mac()}
        if mtu:
            attrs["mtu"] = mtu
        if vlan_filtering:
            attrs["br_vlan_filtering"] = 1  # at creation, so a kernel without it leaves no bridge behind
        try:
            host.iproute.link("add", ifname=name, **attrs)
        except Exception as exc:
            if _netlink_errno(exc) == errno.EOPNOTSUPP and vlan_filtering:
                raise _no_vlan_filtering() from exc
            if _netlink_errno(exc) != errno.EEXIST:
                raise CniError(INTERNAL, f"failed to create bridge {name!r}: {exc}") from exc
        else:
            created = True
            # Like the reference: the bridge must not configure itself from router advertisements of pods.
            write_sysctl(f"net/ipv6/conf/{name}/accept_ra", "0", missing_ok=True)
        state = link_state_by_name(host, name)
        if state is None:
            raise CniError(INTERNAL, f"bridge {name!r} vanished right after creation")
    if state.kind != "bridge":
        raise CniError(INTERNAL, f"{name!r} already exists but is a {state.kind or 'plain'} link, not a bridge")
    if not created:
        _pin_bridge_mac(host, state)
    if vlan_filtering:
        try:
            host.iproute.link("set", index=state.index, kind="bridge", br_vlan_filtering=1)
        except Exception as exc:
            if _netlink_errno(exc) == errno.EOPNOTSUPP:
                raise _no_vlan_filtering() from exc
            raise
    if promisc and not state.promisc:
        host.rtnl.set_link(index=state.index, promisc=True)
    if not state.up:
        host.rtnl.set_link(index=state.index, up=True)
    return state


def _random_mac() -> str:
    """A random locally administered unicast MAC, as the kernel's eth_random_addr makes."""
    octets = bytearray(secrets.token_bytes(6))
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def _pin_bridge_mac(host: Netlink, state: Link) -> None:
    """A bridge this ADD did not create: pin its MAC to itself if nobody did (plugins#60), and give it the STP
    bridge ID of that MAC if it has none (a bridge pinned before it had a port, as vnfio did before). The kernel
    recomputes the ID only when the MAC changes, so that takes a change and a change back."""
    if _bridge_id_unset(state.name):
        other = bytearray.fromhex(state.mac.replace(":", ""))
        other[5] ^= 0x01
        host.rtnl.set_link(index=state.index, mac=":".join(f"{b:02x}" for b in other))
        host.rtnl.set_link(index=state.index, mac=state.mac)
    elif not _mac_pinned(state.name):
        host.rtnl.set_link(index=state.index, mac=state.mac)


def _bridge_id_unset(name: str) -> bool:
    """Whether the bridge's STP ID has no MAC part (`8000.000000000000`). Unreadable: assume it is set."""
    try:
        with open(f"/sys/class/net/{name}/bridge/bridge_id") as f:
            return f.read().strip().endswith(".000000000000")
    except OSError:
        return False


def _mac_pinned(name: str) -> bool:
    """Whether the link's MAC was set explicitly (`addr_assign_type` 3, NET_ADDR_SET): a bridge then keeps it.
    Unreadable (no sysfs for this netns): assume pinned rather than rewrite the MAC of a bridge in use."""
    try:
        with open(f"/sys/class/net/{name}/addr_assign_type") as f:
            return f.read().strip() == "3"
    except OSError:
        return True


def _no_vlan_filtering() -> CniError:
    return CniError(UNSUPPORTED_FIELD, "vlan: this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)")


def attach_port(host: Netlink, port: str, bridge: int, hairpin: bool, vlan: int, link_local: bool = False) -> None:
    """Enslave link `port` to `bridge` and bring it up (one request, by name), then set hairpin and the access
    VLAN. Unless `link_local`, the port comes up without an IPv6 link-local address: a bridge port's own
    addresses are never used (the bridge takes every frame it receives), so it has nothing to announce."""
    if not link_local:
        without_ipv6_link_local(host, name=port)
    host.rtnl.set_link(name=port, master=bridge, up=True)
    if hairpin:
        host.iproute.brport("set", index=link_index(host, port), mode=1)  # IFLA_BRPORT_MODE: BRIDGE_MODE_HAIRPIN
    if vlan:
        # Access port: untagged PVID `vlan` instead of the kernel's default VLAN 1.
        index = link_index(host, port)
        host.iproute.vlan_filter("add", index=index, vlan_info={"vid": vlan, "flags": ["pvid", "untagged"]})
        host.iproute.vlan_filter("del", index=index, vlan_info={"vid": 1})


def wait_oper_up(ipr: Netlink, name: str, timeout: float = 5.0) -> Link:
    """Poll netlink until link `name`'s operstate is UP (a bridge port forwards), backing off from 0 to 50 ms."""
    deadline = time.monotonic() + timeout
    pause = 0.0
    while True:
        state = link_state_by_name(ipr, name)
        if state is None:
            raise CniError(INTERNAL, f"link {name!r} vanished while waiting for it to come up")
        if state.operstate == "UP":
            return state
        if time.monotonic() >= deadline:
            raise CniError(INTERNAL, f"link {name!r} did not come up within {timeout:g}s ({state.operstate})")
        time.sleep(pause)
        pause = min(0.05, pause * 2 or 0.001)


def del_link_by_name(ipr: Netlink, name: str) -> bool:
    """Delete link `name` in one request; False when it did not exist (DEL must tolerate that)."""
    try:
        ipr.rtnl.del_link(name)
    except Exception as exc:
        if _netlink_errno(exc) == errno.ENODEV:
            return False
        raise CniError(INTERNAL, f"failed to delete link {name!r}: {exc}") from exc
    return True


def add_address(ipr: Netlink, index: int, cidr: str, nodad: bool = False, noprefixroute: bool = False) -> bool:
    """Add `cidr` to the link; False if it was already there. An IPv4 address carries its subnet's broadcast
    (`brd`), as the reference's netlink library sets it; /31 and /32 have none (RFC 3021)."""
    iface = ipaddress.ip_interface(cidr)
    flags = (IFA_F_NODAD if nodad and iface.version == 6 else 0) | (IFA_F_NOPREFIXROUTE if noprefixroute else 0)
    broadcast = ""
    if iface.version == 4 and iface.network.prefixlen < 31:
        broadcast = str(iface.network.broadcast_address)
    try:
        ipr.rtnl.add_address(index, str(iface.ip), iface.network.prefixlen, flags, broadcast)
    except Exception as exc:
        if _netlink_errno(exc) != errno.EEXIST:
            raise CniError(INTERNAL, f"failed to add address {cidr} to link {index}: {exc}") from exc
        return False
    return True


def del_address(ipr: Netlink, index: int, cidr: str) -> bool:
    """Remove `cidr` from the link; False if it was not there."""
    iface = ipaddress.ip_interface(cidr)
    try:
        ipr.rtnl.del_address(index, str(iface.ip), iface.network.prefixlen)
    except Exception as exc:
        if _netlink_errno(exc) == errno.EADDRNOTAVAIL:
            return False
        raise CniError(INTERNAL, f"failed to remove address {cidr} from link {index}: {exc}") from exc
    return True


def add_route(
    ipr: Netlink,
    index: int,
    dst: str,
    gw: str = "",
    scope: int | None = None,
    src: str = "",
    extra: Route | None = None,
    keep_existing: bool = False,
) -> bool:
    """Add the route; False if `keep_existing` and the table already has one to `dst` (same metric)."""
    from cni.rtnl import RTAX_ADVMSS, RTAX_MTU

    metrics = {}
    if extra is not None and extra.mtu:
        metrics[RTAX_MTU] = extra.mtu
    if extra is not None and extra.advmss:
        metrics[RTAX_ADVMSS] = extra.advmss
    try:
        ipr.rtnl.add_route(dst, index, gateway=gw, scope=scope or 0, prefsrc=src,
                           priority=extra.priority if extra is not None else 0,
                           table=extra.table if extra is not None else 0, metrics=metrics)
    except Exception as exc:
        if keep_existing and _netlink_errno(exc) == errno.EEXIST:
            log.info("route %s already exists: keeping it, not adding it via %s", dst, gw or f"link {index}")
            return False
        raise CniError(INTERNAL, f"failed to add route {dst} via {gw or 'link'}: {exc}") from exc
    return True


def configure_iface(ipr: Netlink, index: int, ips: Iterable[IPConfig], routes: Sequence[Route], nodad: bool) -> None:
    """The reference `ipam.ConfigureIface`: addresses, link up, then routes through the per-family gateway. A route
    the pod already has (another attachment's default or cluster route, with Multus) is kept, not replaced: the
    first one wins, as in the reference."""
    ips = list(ips)
    for ip in ips:
        add_address(ipr, index, ip.address, nodad=nodad)
    set_up(ipr, index)
    gateways = family_gateways(ips)
    for route in routes:
        family = ipaddress.ip_network(route.dst, strict=False).version
        gw = route.gw or gateways.get(family, "")
        add_route(ipr, index, route.dst, gw, scope=route.scope, extra=route, keep_existing=True)


def addresses(ipr: Netlink, index: int, family: int = 0) -> set[str]:
    """The link's addresses (of one family, 4 or 6, if given) as normalised CIDRs. The kernel filters the dump by
    link: a dump of every address is ~40 ms on a host with hundreds of pod veths."""
    return {str(ipaddress.ip_interface(f"{a.address}/{a.prefixlen}")) for a in ipr.rtnl.addresses(index, family)}


def routes(ipr: Netlink, index: int | None = None, table: int = 0) -> set[tuple[str, str]]:
    """(dst network, gateway) of every route in `table` (0: the main table), optionally only those out of `index`."""
    found: set[tuple[str, str]] = set()
    for family in (4, 6):
        for r in ipr.rtnl.routes(family, table or _MAIN_TABLE):
            if index is not None and r.oif != index:
                continue
            found.add((str(ipaddress.ip_network(f"{r.dst}/{r.dst_len}", strict=False)), r.gateway))
    return found


def route_exists(ipr: Netlink, dst: str, index: int) -> bool:
    """Whether the kernel routes `dst` out of link `index` through the main table (an RTM_GETROUTE lookup; the answer
    is the route the kernel would use for the address, so a more specific route elsewhere also says no)."""
    net = ipaddress.ip_network(dst, strict=False)
    try:
        found = ipr.rtnl.route_get(str(net.network_address))
    except Exception as exc:
        if _netlink_errno(exc) in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return False
        raise
    return found.oif == index and found.table == _MAIN_TABLE


def default_route_link(ipr: Netlink) -> int | None:
    """The output link of the IPv4 (else IPv6) default route, the reference macvlan's default master."""
    for family in (4, 6):
        for r in ipr.rtnl.routes(family, _MAIN_TABLE):
            if r.dst_len == 0 and r.oif:
                return r.oif
    return None


def wait_addresses_settled(ipr: Netlink, index: int, timeout: float = 5.0) -> None:
    """Poll until no IPv6 address on the link is tentative (DAD done); DAD failure is an error (the reference
    `SettleAddresses`)."""
    tentative, dadfailed = 0x40, 0x08
    deadline = time.monotonic() + timeout
    pause = 0.0
    while True:
        pending = []
        for a in ipr.rtnl.addresses(index, 6):
            if a.flags & dadfailed:
                raise CniError(INTERNAL, f"IPv6 address {a.address} failed duplicate address detection")
            if a.flags & tentative:
                pending.append(a.address)
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise CniError(INTERNAL, f"IPv6 addresses {', '.join(pending)} still tentative after {timeout:g}s")
        time.sleep(pause)
        pause = min(0.1, pause * 2 or 0.01)
