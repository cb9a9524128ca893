"""DEL's removal of the pod link: cut off and renamed at once, deleted after the answer when the daemon runs it."""

from __future__ import annotations

import errno
import ipaddress
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cni.modes.call import Call
    from cni.netns import Netlink

log = logging.getLogger(__name__)

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
    from cni.links import del_link_by_name, link_state_by_name, veth_host_end
    from cni.netns import host_netlink
    from cni.rtnl import RtnlError

    name = call.req.ifname
    link = link_state_by_name(pod, name) if deferred.active() else None
    retired = False
    if link is not None:
        try:
            if link.kind == "veth":
                if host_end_down and call.netns_fd is not None:
                    with host_netlink() as host:
                        # Never by the index the pod reports alone: the pod controls it (issue 17, finding 1).
                        peer = veth_host_end(host, link, call.netns_fd)
                        if peer is not None:
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
