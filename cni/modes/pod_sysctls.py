"""The pod interface's IPv6 settings: whether it keeps a link-local address, and the sysctls without a netlink
setter that an IPv6 attachment needs before its link goes up."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cni.modes.call import families

if TYPE_CHECKING:
    from cni.modes.call import Call
    from cni.result import Result


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
