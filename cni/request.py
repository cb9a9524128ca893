"""The CNI_* environment of one invocation, validated into a frozen `CniRequest` (spec section "Parameters").

Standard library only: the daemon and the in-process path both parse the environment here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from cni.errors import INVALID_ENV, CniError

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")

# Which variables the reference skel requires per command (cni.md 1.2); DEL may run without a netns.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
    "VERSION": (),
}

_CONTAINER_ID = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")  # fullmatch: `$` lets "id\n" through
# NAME_MAX is 255 and host-local's index file is "<containerID>:<ifname>" (ifname <= 15 bytes), so both IDs and
# network names stop at 200: refused here, before any link exists, rather than by the IPAM store after wiring.
MAX_CONTAINER_ID = 200
MAX_NETWORK_NAME = 200

# CNI_ARGS keys some vnfio code or a well-known runtime uses; any other key needs IgnoreUnknown=1, as in Go LoadArgs.
KNOWN_ARGS = frozenset(
    {"IgnoreUnknown", "MAC", "IP", "GATEWAY", "K8S_POD_NAME", "K8S_POD_NAMESPACE", "K8S_POD_INFRA_CONTAINER_ID",
     "K8S_POD_UID"}
)


@dataclass(frozen=True)
class CniRequest:
    """One invocation's parameters. Empty strings stand for variables the command does not need."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] = field(default_factory=dict)
    path: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


def validate_ifname(name: str) -> str | None:
    """Why `name` cannot be a Linux interface name (the reference `ValidateInterfaceName`), or None if it can."""
    if not name:
        return "is empty"
    if len(name.encode()) >= 16:
        return f"{name!r} is longer than 15 bytes"
    if name in (".", ".."):
        return f"{name!r} is not a valid name"
    if any(c in "/:" or c.isspace() for c in name):
        return f"{name!r} contains '/', ':' or whitespace"
    return None


def parse_cni_args(raw: str) -> dict[str, str]:
    """`K=V;K2=V2` into a dict; unknown keys are refused unless `IgnoreUnknown` is 1/true (Go `types.LoadArgs`)."""
    pairs: dict[str, str] = {}
    for item in raw.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENV, f"CNI_ARGS: invalid pair {item!r}, expected KEY=VALUE")
        pairs[key] = value
    ignore = pairs.get("IgnoreUnknown", "").lower() in ("1", "true")
    unknown = sorted(set(pairs) - KNOWN_ARGS)
    if unknown and not ignore:
        raise CniError(INVALID_ENV, f"CNI_ARGS: unknown keys {', '.join(unknown)} (set IgnoreUnknown=1 to allow)")
    return pairs


def parse_env(env: Mapping[str, str]) -> CniRequest:
    """Validate the CNI_* variables for the command they name; a bad one is code 4 naming the variable."""
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND: unknown command {command!r}, expected one of {', '.join(COMMANDS)}")
    missing = [var for var in _REQUIRED[command] if not env.get(var)]
    if missing:
        raise CniError(INVALID_ENV, f"required environment variables missing: {', '.join(missing)}")
    container_id = env.get("CNI_CONTAINERID", "")
    if container_id and not _CONTAINER_ID.fullmatch(container_id):
        raise CniError(
            INVALID_ENV,
            f"CNI_CONTAINERID: {container_id!r} must start with an alphanumeric character, "
            "followed by alphanumerics, '_', '.' or '-'",
        )
    if len(container_id) > MAX_CONTAINER_ID:
        raise CniError(INVALID_ENV, f"CNI_CONTAINERID: longer than {MAX_CONTAINER_ID} characters")
    ifname = env.get("CNI_IFNAME", "")
    if "CNI_IFNAME" in _REQUIRED[command] or ifname:
        problem = validate_ifname(ifname)
        if problem:
            raise CniError(INVALID_ENV, f"CNI_IFNAME: interface name {problem}")
    return CniRequest(
        command=command,
        container_id=container_id,
        netns=env.get("CNI_NETNS", ""),
        ifname=ifname,
        args=parse_cni_args(env.get("CNI_ARGS", "")),
        path=tuple(p for p in env.get("CNI_PATH", "").split(":") if p),
        env=dict(env),
    )
