"""The last step of every ADD: the pod interface announces its addresses (arp_notify and a gratuitous ARP)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cni.modes.call import Call
    from cni.netns import Netlink
    from cni.result import IPConfig

log = logging.getLogger(__name__)


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
