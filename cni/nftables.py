"""nftables rules owned by one attachment, through the `nft` command (optional: only ipMasq and macspoofchk need it).

Every rule carries the comment `vnfio:<network>:<containerID>:<ifname>`, so DEL removes an attachment's rules by
that key even when its netns (and the addresses in it) is already gone, and GC removes those of attachments no
longer valid. Each change is one `nft -f -` batch, which nftables applies atomically.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cni.errors import INTERNAL, UNSUPPORTED_FIELD, CniError

log = logging.getLogger(__name__)

_PREFIX = "vnfio:"
_MAX_COMMENT = 128  # nftables' limit on a rule comment


@dataclass(frozen=True)
class Chain:
    """A base chain of ours: `family table name` with its hook declaration."""

    family: str
    table: str
    name: str
    hook: str  # e.g. "type nat hook postrouting priority srcnat;"

    def declare(self) -> list[str]:
        return [f"add table {self.family} {self.table}",
                f"add chain {self.family} {self.table} {self.name} {{ {self.hook} }}"]

    @property
    def spec(self) -> str:
        return f"{self.family} {self.table} {self.name}"


def attachment_key(network: str, container_id: str, ifname: str) -> str:
    key = f"{_PREFIX}{network}:{container_id}:{ifname}"
    if len(key) > _MAX_COMMENT:
        raise CniError(UNSUPPORTED_FIELD, f"network name and container ID too long for an nftables comment: {key!r}")
    return key


def _nft(option: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("nft")
    if binary is None:
        raise CniError(UNSUPPORTED_FIELD, f"{option}: true needs the nft command (nftables), which is not installed")
    return subprocess.run([binary, *args], input=stdin, capture_output=True, text=True, check=False)


def add_rules(option: str, chain: Chain, key: str, rules: Iterable[str]) -> None:
    """Create the chain if needed and append `rules` (nft rule bodies) tagged with `key`, in one batch."""
    lines = [*chain.declare(), *(f'add rule {chain.spec} {body} comment "{key}"' for body in rules)]
    proc = _nft(option, "-f", "-", stdin="\n".join(lines) + "\n")
    if proc.returncode != 0:
        raise CniError(INTERNAL, f"{option}: nft failed to add rules: {proc.stderr.strip()}")


def rule_keys(chain: Chain) -> list[tuple[int, str]]:
    """(handle, key) of every rule of ours in `chain`; [] when nft, the table or the chain does not exist."""
    if shutil.which("nft") is None:
        return []
    proc = _nft("", "-j", "-a", "list", "chain", *chain.spec.split())
    if proc.returncode != 0:
        return []
    found = []
    for item in json.loads(proc.stdout).get("nftables", []):
        rule = item.get("rule")
        if rule and str(rule.get("comment", "")).startswith(_PREFIX):
            found.append((int(rule["handle"]), str(rule["comment"])))
    return found


def _delete(option: str, chain: Chain, handles: Sequence[int]) -> None:
    if not handles:
        return
    proc = _nft(option, "-f", "-", stdin="".join(f"delete rule {chain.spec} handle {h}\n" for h in handles))
    if proc.returncode != 0:
        raise CniError(INTERNAL, f"{option}: nft failed to delete rules: {proc.stderr.strip()}")


def remove_rules(option: str, chain: Chain, key: str) -> None:
    """Remove the attachment's rules; none there is success (DEL is idempotent)."""
    _delete(option, chain, [handle for handle, k in rule_keys(chain) if k == key])


def remove_stale(option: str, chain: Chain, network: str, valid: Iterable[tuple[str, str]]) -> None:
    """GC: remove this network's rules whose (containerID, ifname) is not in `valid`."""
    keep = {attachment_key(network, cid, ifname) for cid, ifname in valid}
    prefix = f"{_PREFIX}{network}:"
    stale = [handle for handle, key in rule_keys(chain) if key.startswith(prefix) and key not in keep]
    if stale:
        log.info("GC: removing %d %s rules of network %s", len(stale), option, network)
    _delete(option, chain, stale)
