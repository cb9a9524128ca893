"""`ipMasq`: masquerade a pod's traffic leaving its subnet (multicast excluded), as nftables rules of its own.

Table `inet vnfio_masquerade`, chain `postrouting` (NAT, srcnat priority); rules are keyed per attachment (see
`cni.nftables`), so DEL works without the netns, which the reference plugins cannot, and GC cleans up.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from cni.nftables import Chain, add_rules, attachment_key, remove_rules, remove_stale
from cni.result import IPConfig

CHAIN = Chain("inet", "vnfio_masquerade", "postrouting", "type nat hook postrouting priority srcnat;")
OPTION = "ipMasq"


def setup(network: str, container_id: str, ifname: str, ips: Iterable[IPConfig]) -> None:
    rules = []
    for ip in ips:
        iface = ipaddress.ip_interface(ip.address)
        proto, multicast = ("ip", "224.0.0.0/4") if iface.version == 4 else ("ip6", "ff00::/8")
        rules.append(f"{proto} saddr {iface.ip} {proto} daddr != {iface.network} {proto} daddr != {multicast} "
                     "masquerade")
    add_rules(OPTION, CHAIN, attachment_key(network, container_id, ifname), rules)


def teardown(network: str, container_id: str, ifname: str) -> None:
    remove_rules(OPTION, CHAIN, attachment_key(network, container_id, ifname))


def gc(network: str, valid: Iterable[tuple[str, str]]) -> None:
    remove_stale(OPTION, CHAIN, network, valid)
