"""`ipMasq`: masquerade traffic from a pod's addresses leaving its subnet, through nftables (the `nft` command).

One table `inet vnfio_masquerade` holds a postrouting NAT chain; every rule carries the comment
`vnfio:<network>:<containerID>:<ifname>`, so DEL removes an attachment's rules by that key even when the netns
(and with it the pod's addresses) is already gone, which the reference plugins cannot, and GC removes the rules of
attachments that are not valid any more. `nft` is optional: without it `ipMasq: true` is refused with code 2.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import shutil
import subprocess
from collections.abc import Iterable, Sequence

from cni.errors import INTERNAL, UNSUPPORTED_FIELD, CniError
from cni.result import IPConfig

log = logging.getLogger(__name__)

TABLE = "vnfio_masquerade"
CHAIN = "postrouting"
_PREFIX = "vnfio:"
_MAX_COMMENT = 128  # nftables' limit on a rule comment


def masquerade_key(network: str, container_id: str, ifname: str) -> str:
    key = f"{_PREFIX}{network}:{container_id}:{ifname}"
    if len(key) > _MAX_COMMENT:
        raise CniError(UNSUPPORTED_FIELD, f"ipMasq: network name and container ID too long for a rule comment: {key!r}")
    return key


def _nft(*args: str, stdin: str | None = None) -> str:
    binary = shutil.which("nft")
    if binary is None:
        raise CniError(UNSUPPORTED_FIELD, "ipMasq: true needs the nft command (nftables), which is not installed")
    proc = subprocess.run([binary, *args], input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise CniError(INTERNAL, f"nft {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def setup(network: str, container_id: str, ifname: str, ips: Iterable[IPConfig]) -> None:
    """Masquerade each address when it leaves its own subnet (multicast excluded), in one atomic nft batch."""
    key = masquerade_key(network, container_id, ifname)
    lines = [
        f"add table inet {TABLE}",
        f"add chain inet {TABLE} {CHAIN} {{ type nat hook postrouting priority srcnat; }}",
    ]
    for ip in ips:
        iface = ipaddress.ip_interface(ip.address)
        proto, multicast = ("ip", "224.0.0.0/4") if iface.version == 4 else ("ip6", "ff00::/8")
        lines.append(
            f"add rule inet {TABLE} {CHAIN} {proto} saddr {iface.ip} {proto} daddr != {iface.network} "
            f'{proto} daddr != {multicast} masquerade comment "{key}"'
        )
    _nft("-f", "-", stdin="\n".join(lines) + "\n")


def _rules() -> list[tuple[int, str]]:
    """(handle, comment) of every rule in our chain; [] when the table does not exist."""
    binary = shutil.which("nft")
    if binary is None:
        return []
    proc = subprocess.run([binary, "-j", "-a", "list", "chain", "inet", TABLE, CHAIN], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        return []  # no table or chain: nothing of ours to remove
    rules = []
    for item in json.loads(proc.stdout).get("nftables", []):
        rule = item.get("rule")
        if rule and str(rule.get("comment", "")).startswith(_PREFIX):
            rules.append((int(rule["handle"]), str(rule["comment"])))
    return rules


def _delete(handles: Sequence[int]) -> None:
    if handles:
        _nft("-f", "-", stdin="".join(f"delete rule inet {TABLE} {CHAIN} handle {h}\n" for h in handles))


def teardown(network: str, container_id: str, ifname: str) -> None:
    """Remove the attachment's rules; nothing to remove is success (DEL is idempotent)."""
    key = masquerade_key(network, container_id, ifname)
    _delete([handle for handle, comment in _rules() if comment == key])


def gc(network: str, valid: Iterable[tuple[str, str]]) -> None:
    """Remove this network's rules whose (containerID, ifname) is not in `valid`."""
    keep = {masquerade_key(network, cid, ifname) for cid, ifname in valid}
    prefix = f"{_PREFIX}{network}:"
    stale = [handle for handle, comment in _rules() if comment.startswith(prefix) and comment not in keep]
    if stale:
        log.info("GC: removing %d masquerade rules of network %s", len(stale), network)
    _delete(stale)
