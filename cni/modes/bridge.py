"""Mode `bridge`: the pod's veth is a port of a host bridge (default `cni0`), like the reference `bridge`.

Result order is the reference's: [bridge, host veth, container interface], the addresses on index 2. The bridge
is never deleted (the reference rejected that for ADD/DEL races).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from cni import macspoofchk
from cni.errors import INTERNAL, INVALID_CONFIG, UNSUPPORTED_FIELD, CniError
from cni.links import (
    add_address,
    addresses,
    attach_port,
    configure_iface,
    del_address,
    del_link_by_name,
    enable_forwarding,
    ensure_bridge,
    link_state,
    link_state_by_name,
    setup_veth,
    veth_host_end,
    wait_addresses_settled,
    wait_oper_up,
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
from cni.netconf import bool_key, int_key, link_name_key
from cni.netns import host_netlink, netlink_in, run_in_netns
from cni.result import Interface, IPConfig, Result, Route

if TYPE_CHECKING:
    from cni.netns import Netlink
    from cni.rtnl import Link

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BridgeOptions:
    bridge: str = "cni0"
    is_gateway: bool = False
    is_default_gateway: bool = False
    force_address: bool = False
    hairpin_mode: bool = False
    promisc_mode: bool = False
    vlan: int = 0
    macspoofchk: bool = False
    enable_dad: bool = False


def parse_options(raw: Mapping[str, Any]) -> BridgeOptions:
    """The reference bridge's keys that vnfio implements; the ones it does not are refused (code 2), not ignored."""
    opts = BridgeOptions(
        bridge=link_name_key(raw, "bridge", "cni0"),
        is_gateway=bool_key(raw, "isGateway") or bool_key(raw, "isDefaultGateway"),
        is_default_gateway=bool_key(raw, "isDefaultGateway"),
        force_address=bool_key(raw, "forceAddress"),
        hairpin_mode=bool_key(raw, "hairpinMode"),
        promisc_mode=bool_key(raw, "promiscMode"),
        vlan=int_key(raw, "vlan", 0, 4094),
        macspoofchk=bool_key(raw, "macspoofchk"),
        enable_dad=bool_key(raw, "enabledad"),
    )
    if opts.hairpin_mode and opts.promisc_mode:
        raise CniError(INVALID_CONFIG, "hairpinMode: true cannot be combined with promiscMode: true")
    if opts.vlan and opts.is_gateway:
        raise CniError(UNSUPPORTED_FIELD, f"vlan: {opts.vlan} together with isGateway: true is not supported by vnfio")
    for key in ("vlanTrunk", "portIsolation", "disableContainerInterface"):
        if raw.get(key):
            raise CniError(UNSUPPORTED_FIELD, f"{key}: {raw[key]!r} is not supported by vnfio")
    return opts


def _options(call: Call) -> BridgeOptions:
    opts = call.conf.options
    assert isinstance(opts, BridgeOptions)
    return opts


def cmd_add(call: Call) -> Result:
    req, conf = call.req, call.conf
    opts = _options(call)
    assert call.netns_fd is not None
    with host_netlink() as host, netlink_in(call.netns_fd) as pod, \
            Rollback(f"ADD {req.container_id}/{req.ifname}") as rollback:
        bridge = ensure_bridge(host, opts.bridge, conf.mtu, opts.promisc_mode, vlan_filtering=bool(opts.vlan))
        host_name = setup_veth(host, pod, call.netns_fd, req.ifname, conf.mtu, conf.mac)
        rollback.undo(f"delete veth {host_name}", del_link_by_name, host, host_name)  # the bridge itself stays
        pod_link = link_state_by_name(pod, req.ifname)
        if pod_link is None:
            raise CniError(INTERNAL, f"veth {host_name}/{req.ifname} vanished right after creation")
        attach_port(host, host_name, bridge.index, opts.hairpin_mode, opts.vlan,
                    link_local=conf.ipv6_link_local is True)
        ipam = ipam_add(call)
        rollback.undo("release its IPAM reservation", ipam_release, call)
        result = _configure(call, host, pod, bridge.index, host_name, pod_link, ipam)
        # Both teardowns go by key, so each is registered before its step and also clears a half-made setup.
        rollback.undo("remove its masquerade rules", masquerade_del, call)
        masquerade_add(call, ipam.ips)
        if opts.macspoofchk:
            rollback.undo("remove its macspoofchk rule", macspoofchk.teardown, conf.name, req.container_id,
                          req.ifname)
            macspoofchk.setup(conf.name, req.container_id, req.ifname, host_name, result.interfaces[-1].mac)
        announce(call, pod, pod_link.index, result.interfaces[-1].mac, result.ips)
        rollback.commit()
    return result


def _configure(call: Call, host: Netlink, pod: Netlink, bridge: int, host_port: str, pod_state: Link,
               ipam: Result) -> Result:
    req, opts = call.req, _options(call)
    if opts.is_gateway:
        # The reference `calcGateways`: an address without a gateway gets the first address of its subnet.
        ipam = replace(ipam, ips=tuple(
            ip if ip.gateway else replace(ip, gateway=str(next(ipaddress.ip_interface(ip.address).network.hosts())))
            for ip in ipam.ips
        ))
    routes = list(ipam.routes)
    if opts.is_default_gateway:
        for ip in ipam.ips:
            default = "0.0.0.0/0" if ip.family == 4 else "::/0"
            if not any(r.dst == default and r.gw for r in routes):
                routes.append(Route(dst=default, gw=ip.gateway))
        ipam = replace(ipam, routes=tuple(routes))
    fams = families(ipam)
    if 6 in fams:
        run_in_netns(call.netns_fd, lambda: pod_ipv6_sysctls(req.ifname, dad=opts.enable_dad))
    # The reference bridge turns DAD off in the pod (accept_dad=0) unless `enabledad`; NODAD on each address does
    # the same per address. With DAD on, wait until the addresses are usable, as the reference does.
    if not ipv6_link_local(call, ipam):
        without_ipv6_link_local(pod, pod_state.index)
    configure_iface(pod, pod_state.index, ipam.ips, ipam.routes, nodad=not opts.enable_dad)
    if opts.enable_dad and any(ip.family == 6 and ip.gateway for ip in ipam.ips):
        wait_addresses_settled(pod, pod_state.index)
    if opts.is_gateway and ipam.ips:
        for ip in ipam.ips:
            _ensure_gateway_address(host, bridge, ip, opts.force_address)
        enable_forwarding(host, fams)
    host_state = wait_oper_up(host, host_port)
    # Re-read the bridge now that the port is in: the kernel may have changed its MAC (#805); the host veth was
    # re-read by the wait above.
    bridge_state = link_state(host, bridge)
    interfaces = [
        Interface(name=bridge_state.name, mac=bridge_state.mac, mtu=bridge_state.mtu),
        Interface(name=host_state.name, mac=host_state.mac, mtu=host_state.mtu),
        Interface(name=req.ifname, mac=pod_state.mac, sandbox=req.netns, mtu=pod_state.mtu),
    ]
    return container_result(call, ipam, interfaces)


def _ensure_gateway_address(host: Netlink, bridge: int, ip: IPConfig, force: bool) -> None:
    """Put gateway/prefix on the bridge. Another IPv4 address (or an overlapping IPv6 one) is an error unless
    `forceAddress`, which replaces it, as in the reference `ensureAddr`. Only the ADD that actually adds the
    address (the bridge's first pod) pays for reading the bridge's other addresses."""
    pod_net = ipaddress.ip_interface(ip.address).network
    wanted = ipaddress.ip_interface(f"{ip.gateway}/{pod_net.prefixlen}")
    if not add_address(host, bridge, str(wanted), nodad=True):
        return  # already there
    conflicts = []
    for cidr in addresses(host, bridge, wanted.version):
        have = ipaddress.ip_interface(cidr)
        if have == wanted or have.is_link_local:
            continue
        if wanted.version == 4 or have.network.overlaps(wanted.network):
            conflicts.append(have)
    for have in conflicts:
        if not force:
            del_address(host, bridge, str(wanted))
            name = link_state(host, bridge).name
            raise CniError(INTERNAL, f"bridge {name!r} already has an IP address {have} different from {wanted}"
                           " (set forceAddress to replace it)")
        del_address(host, bridge, str(have))


def cmd_del(call: Call) -> None:
    if call.netns_fd is not None:
        with netlink_in(call.netns_fd) as pod:
            # The host veth goes with its peer; the bridge stays.
            remove_pod_link(call, pod)
    ipam_del(call)
    masquerade_del(call)
    if _options(call).macspoofchk:
        macspoofchk.teardown(call.conf.name, call.req.container_id, call.req.ifname)


def cmd_check(call: Call) -> None:
    prev, index = prev_container_iface(call)
    ipam_check(call)
    opts = _options(call)
    assert call.netns_fd is not None
    with netlink_in(call.netns_fd) as pod:
        pod_state = check_container_iface(call, pod, prev, index, "veth")
    with host_netlink() as host:
        peer = veth_host_end(host, pod_state, call.netns_fd)  # verified from the host: the pod's word is not enough
        state = link_state_by_name(host, opts.bridge)
        if state is None:
            raise CniError(INTERNAL, f"CHECK: bridge {opts.bridge!r} not found")
        bridge = state.index
        if state.kind != "bridge":
            raise CniError(INTERNAL, f"CHECK: {opts.bridge!r} is a {state.kind or 'plain'} link, not a bridge")
        if state.promisc != opts.promisc_mode:
            raise CniError(INTERNAL, f"CHECK: bridge {opts.bridge!r} promiscuous mode is {state.promisc}, config "
                           f"says {opts.promisc_mode}")
        if peer is None or peer.master != bridge:
            raise CniError(INTERNAL, f"CHECK: the host end of {call.req.ifname!r} is not a port of {opts.bridge!r}")
        if opts.is_gateway:
            have = addresses(host, bridge)
            for ip in prev.ips:
                if ip.interface == index and ip.gateway:
                    wanted = f"{ip.gateway}/{ipaddress.ip_interface(ip.address).network.prefixlen}"
                    if wanted not in have:
                        raise CniError(INTERNAL, f"CHECK: gateway address {wanted} missing on bridge {opts.bridge!r}")
    if opts.macspoofchk and not macspoofchk.present(call.conf.name, call.req.container_id, call.req.ifname):
        raise CniError(INTERNAL, f"CHECK: the macspoofchk rule of {call.req.ifname!r} is missing")


MODE = Mode(parse_options=parse_options, add=cmd_add, delete=cmd_del, check=cmd_check)
