"""`macspoofchk` (bridge): frames entering the bridge from a pod's port must carry the pod's MAC, else dropped.

Table `bridge vnfio_macspoofchk`, chain `prerouting` at priority -300 (before anything else on the bridge), like
the reference's nftables rule; keyed per attachment (see `cni.nftables`).
"""

from __future__ import annotations

from collections.abc import Iterable

from cni.nftables import Chain, add_rules, attachment_key, remove_rules, remove_stale, rule_keys

CHAIN = Chain("bridge", "vnfio_macspoofchk", "prerouting", "type filter hook prerouting priority -300;")
OPTION = "macspoofchk"


def setup(network: str, container_id: str, ifname: str, host_port: str, mac: str) -> None:
    add_rules(OPTION, CHAIN, attachment_key(network, container_id, ifname),
              [f'iifname "{host_port}" ether saddr != {mac} drop'])


def present(network: str, container_id: str, ifname: str) -> bool:
    key = attachment_key(network, container_id, ifname)
    return any(k == key for _, k in rule_keys(CHAIN))


def teardown(network: str, container_id: str, ifname: str) -> None:
    remove_rules(OPTION, CHAIN, attachment_key(network, container_id, ifname))


def gc(network: str, valid: Iterable[tuple[str, str]]) -> None:
    remove_stale(OPTION, CHAIN, network, valid)
