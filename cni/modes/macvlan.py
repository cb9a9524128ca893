"""Mode `macvlan`: a macvlan on a host (or pod) master link, created straight into the pod, like the reference.

The link is created under a random temporary name inside the pod netns and renamed there to CNI_IFNAME (the
reference's work-around for a kernel name clash); DAD stays on, because the pod shares the master's L2 segment.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cni.errors import INTERNAL, INVALID_CONFIG, NOT_AVAILABLE, UNSUPPORTED_FIELD, CniError
from cni.links import (
    all_links,
    configure_iface,
    create_macvlan,
    default_route_link,
    del_link_by_name,
    link_index,
    link_state,
    macvlan_mode,
    rename_link,
    wait_addresses_settled,
    without_ipv6_link_local,
)
from cni.modes import Mode
from cni.modes.announce import announce
from cni.modes.call import Call, container_result, families
from cni.modes.check import check_container_iface, prev_container_iface
from cni.modes.ipam_calls import ipam_add, ipam_check, ipam_del, ipam_release, ipam_status
from cni.modes.pod_sysctls import ipv6_link_local, pod_ipv6_sysctls
from cni.modes.retire import remove_pod_link
from cni.modes.rollback import Rollback
from cni.netconf import bool_key, link_name_key, str_key
from cni.netns import host_netlink, netlink_in, run_in_netns
from cni.result import Interface, Result

if TYPE_CHECKING:
    from cni.netns import Netlink

log = logging.getLogger(__name__)
_TEMPORARY_NAME = re.compile(r"mv[0-9a-f]{8}")  # what `create_macvlan` names a macvlan before the rename
MACVLAN_MODES = ("bridge", "private", "vepa", "passthru")


@dataclass(frozen=True)
class MacvlanOptions:
    master: str = ""  # empty: the interface of the default route
    mode: str = "bridge"
    link_in_container: bool = False


def parse_options(raw: Mapping[str, Any]) -> MacvlanOptions:
    """`master`, `macvlanMode` (the reference's `mode`, renamed: vnfio's `mode` picks the mode module) and
    `linkInContainer`. ipMasq is refused, as the reference macvlan has none: the pod sits on the master's L2."""
    if raw.get("ipMasq"):
        raise CniError(UNSUPPORTED_FIELD, "ipMasq: true is not supported in mode macvlan (as in the reference)")
    mode = str_key(raw, "macvlanMode", "bridge")
    if mode not in MACVLAN_MODES:
        raise CniError(INVALID_CONFIG, f"macvlanMode: {mode!r} is not one of {', '.join(MACVLAN_MODES)}")
    master = str_key(raw, "master", "")
    if master:
        master = link_name_key(raw, "master", "")
    return MacvlanOptions(master=master, mode=mode, link_in_container=bool_key(raw, "linkInContainer"))


def _options(call: Call) -> MacvlanOptions:
    opts = call.conf.options
    assert isinstance(opts, MacvlanOptions)
    return opts


def _master(call: Call, where: Netlink) -> int:
    """The master's ifindex in `where`: the configured name, else the default route's link."""
    opts = _options(call)
    side = "container" if opts.link_in_container else "host"
    if opts.master:
        index = link_index(where, opts.master)
        if index is None:
            raise CniError(INVALID_CONFIG, f"master: link {opts.master!r} not found in the {side} netns")
        return index
    index = default_route_link(where)
    if index is None:
        raise CniError(INVALID_CONFIG, f"master: not set and the {side} netns has no default route to take it from")
    return index


def cmd_add(call: Call) -> Result:
    req, conf, opts = call.req, call.conf, _options(call)
    assert call.netns_fd is not None
    with host_netlink() as host, netlink_in(call.netns_fd) as pod, \
            Rollback(f"ADD {req.container_id}/{req.ifname}") as rollback:
        where = pod if opts.link_in_container else host
        master = _master(call, where)
        master_mtu = link_state(where, master).mtu
        if conf.mtu > master_mtu:
            raise CniError(INVALID_CONFIG, f"mtu: {conf.mtu} is larger than the master's MTU {master_mtu}")
        into = None if opts.link_in_container else call.netns_fd
        temp = create_macvlan(where, master, opts.mode, into, conf.mtu, conf.mac)
        rollback.undo(f"delete macvlan {temp}", del_link_by_name, pod, temp)
        index = link_index(pod, temp)
        if index is None:
            raise CniError(INTERNAL, f"macvlan {temp!r} vanished right after creation")
        rename_link(pod, index, req.ifname)
        # Only now is CNI_IFNAME ours: one that was there before this ADD (the rename failed) is never deleted.
        rollback.undo(f"delete macvlan {req.ifname}", del_link_by_name, pod, req.ifname)
        ipam = ipam_add(call)
        rollback.undo("release its IPAM reservation", ipam_release, call)
        if 6 in families(ipam):
            run_in_netns(call.netns_fd, lambda: pod_ipv6_sysctls(req.ifname, ndisc_notify=True))
        if not ipv6_link_local(call, ipam):
            without_ipv6_link_local(pod, index)
        configure_iface(pod, index, ipam.ips, ipam.routes, nodad=False)
        if any(ip.family == 6 and ip.gateway for ip in ipam.ips):
            wait_addresses_settled(pod, index)
        state = link_state(pod, index)
        announce(call, pod, index, state.mac, ipam.ips)
        rollback.commit()
    iface = Interface(name=req.ifname, mac=state.mac, sandbox=req.netns, mtu=state.mtu)
    return container_result(call, ipam, [iface])


def cmd_del(call: Call) -> None:
    # IPAM first, as the reference: a missing netns or link must not keep the reservation.
    ipam_del(call)
    if call.netns_fd is not None:
        with netlink_in(call.netns_fd) as pod:
            remove_pod_link(call, pod)
            _del_orphaned_temporaries(pod)


def _del_orphaned_temporaries(pod: Netlink) -> None:
    """An ADD killed between creating the macvlan and renaming it left it under its temporary name, which DEL by
    CNI_IFNAME cannot find. No ADD is running in this pod now (the spec forbids parallel operations on one
    container), so a macvlan with such a name is debris."""
    for link in all_links(pod):
        if _TEMPORARY_NAME.fullmatch(link.name) and link.kind == "macvlan":
            log.info("removing macvlan %s left by an interrupted ADD", link.name)
            try:
                del_link_by_name(pod, link.name)
            except CniError as exc:  # debris, not this DEL's attachment: its DEL still succeeds
                log.warning("could not remove macvlan %s left by an interrupted ADD: %s", link.name, exc.msg)


def cmd_check(call: Call) -> None:
    prev, index = prev_container_iface(call)
    ipam_check(call)
    assert call.netns_fd is not None
    with netlink_in(call.netns_fd) as pod:
        mode = macvlan_mode(check_container_iface(call, pod, prev, index, "macvlan"))
        if mode != _options(call).mode:
            raise CniError(INTERNAL, f"CHECK: {call.req.ifname!r} is in macvlan mode {mode}, config says "
                           f"{_options(call).mode}")


def cmd_status(call: Call) -> None:
    """A master that is configured but absent from the host means ADD cannot be served (code 50)."""
    opts = _options(call)
    if opts.master and not opts.link_in_container:
        with host_netlink() as host:
            if link_index(host, opts.master) is None:
                raise CniError(NOT_AVAILABLE, f"macvlan master {opts.master!r} does not exist")
    ipam_status(call)


MODE = Mode(parse_options=parse_options, add=cmd_add, delete=cmd_del, check=cmd_check, status=cmd_status)
