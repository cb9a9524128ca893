"""The vnfio network configuration: the common CNI keys plus each mode's options, validated.

Structurally wrong input (missing key, wrong type, bad address) and a value outside the key's allowed set
(`mode: "bogus"`) are code 7; code 2 is for what vnfio does not implement at all (a reference key such as
`vlanTrunk`, or a reference value such as `ipMasqBackend: "iptables"`). Both name the key and the value.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cni.errors import INCOMPATIBLE_VERSION, INVALID_CONFIG, UNSUPPORTED_FIELD, CniError
from cni.modes import MODES, load_mode
from cni.request import MAX_NETWORK_NAME, CniRequest
from cni.result import DNS, Result, parse_dns, parse_result
from cni.versions import SUPPORTED

# Used with fullmatch: a pattern ending in `$` also matches before a trailing newline.
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
_MAC = re.compile(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}")


@dataclass(frozen=True)
class NetConf:
    """One plugin's request config. `raw` is the whole JSON as received: IPAM delegates get exactly that."""

    cni_version: str
    name: str
    mode: str
    raw: Mapping[str, Any]
    mtu: int = 0
    mac: str = ""
    ip_masq: bool = False
    ipam: Mapping[str, Any] | None = None
    ipv6_link_local: bool | None = None  # `ipv6LinkLocal`; None: only where the attachment uses IPv6
    dns: DNS = field(default_factory=DNS)
    prev_result: Result | None = None
    options: object = None  # the mode's own options, as its `parse_options` made them


def check_version(raw: Mapping[str, Any]) -> str:
    """The config's cniVersion if vnfio speaks it; a missing one means 0.1.0, which it does not (code 1)."""
    version = raw.get("cniVersion") or "0.1.0"
    if version not in SUPPORTED:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"incompatible CNI versions: config is {version!r}, plugin supports {', '.join(SUPPORTED)}",
        )
    return str(version)


def bool_key(raw: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise CniError(INVALID_CONFIG, f"{key}: expected true or false, got {value!r}")
    return value


def str_key(raw: Mapping[str, Any], key: str, default: str = "") -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise CniError(INVALID_CONFIG, f"{key}: expected a string, got {value!r}")
    return value


def int_key(raw: Mapping[str, Any], key: str, low: int, high: int, default: int = 0) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CniError(INVALID_CONFIG, f"{key}: expected an integer in [{low}, {high}], got {value!r}")
    return value


def _mac(value: Any, source: str) -> str:
    if not isinstance(value, str) or not _MAC.fullmatch(value):
        raise CniError(INVALID_CONFIG, f"{source}: invalid MAC address {value!r}")
    return value.lower()


def link_name_key(raw: Mapping[str, Any], key: str, default: str) -> str:
    from cni.request import validate_ifname

    value = str_key(raw, key, default)
    problem = validate_ifname(value)
    if problem:
        raise CniError(INVALID_CONFIG, f"{key}: interface name {problem}")
    return value


def parse_netconf(raw: Any, req: CniRequest) -> NetConf:
    """Validate the request config for `req.command`."""
    if not isinstance(raw, Mapping):
        raise CniError(INVALID_CONFIG, f"network config: expected a JSON object, got {type(raw).__name__}")
    version = check_version(raw)
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CniError(INVALID_CONFIG, f"name: {name!r} must start with an alphanumeric character, then [A-Za-z0-9_.-]")
    if len(name) > MAX_NETWORK_NAME:
        raise CniError(INVALID_CONFIG, f"name: longer than {MAX_NETWORK_NAME} characters: {name[:40]!r}...")
    mode = raw.get("mode")
    if mode is None:
        raise CniError(INVALID_CONFIG, f"mode: missing, expected one of {', '.join(MODES)}")
    if mode not in MODES:
        raise CniError(INVALID_CONFIG, f"mode: {mode!r} is not one of {', '.join(MODES)}")
    ip_masq = bool_key(raw, "ipMasq")
    backend = raw.get("ipMasqBackend", "nftables")
    if backend in ("iptables",):  # the reference's other backend: a real choice vnfio does not implement
        raise CniError(UNSUPPORTED_FIELD, f"ipMasqBackend: {backend!r} is not supported, vnfio uses nftables")
    if backend not in ("nftables", None):
        raise CniError(INVALID_CONFIG, f"ipMasqBackend: {backend!r} is not one of nftables, iptables")
    runtime = raw.get("runtimeConfig") or {}
    if not isinstance(runtime, Mapping):
        raise CniError(INVALID_CONFIG, f"runtimeConfig: expected an object, got {runtime!r}")
    args = raw.get("args") or {}
    cni_args = args.get("cni") if isinstance(args, Mapping) else None
    mtu = int_key(raw, "mtu", 0, 65535)
    if runtime.get("mtu") is not None:
        mtu = int_key(runtime, "mtu", 0, 65535)
    # MAC precedence is the reference bridge's: CNI_ARGS MAC=, then args.cni.mac, then runtimeConfig.mac; then the
    # config's own `mac` (a reference macvlan option).
    mac = ""
    if req.args.get("MAC"):
        mac = _mac(req.args["MAC"], "CNI_ARGS MAC")
    elif isinstance(cni_args, Mapping) and cni_args.get("mac"):
        mac = _mac(cni_args["mac"], "args.cni.mac")
    elif runtime.get("mac"):
        mac = _mac(runtime["mac"], "runtimeConfig.mac")
    elif raw.get("mac"):
        mac = _mac(raw["mac"], "mac")  # the reference macvlan's own option, the weakest source
    ipam = raw.get("ipam")
    if ipam is not None and (not isinstance(ipam, Mapping) or not isinstance(ipam.get("type"), str)):
        raise CniError(INVALID_CONFIG, f"ipam: expected an object with a string 'type', got {ipam!r}")
    if not ipam:
        ipam = None
    ipv6_link_local = None if raw.get("ipv6LinkLocal") is None else bool_key(raw, "ipv6LinkLocal")
    dns = parse_dns(raw.get("dns") or {}, "dns")
    prev = raw.get("prevResult")
    prev_result = parse_result(prev, version) if prev else None
    for ips_source in (runtime.get("ips"),):
        if ips_source is not None:
            _check_ips(ips_source, "runtimeConfig.ips")
    return NetConf(
        cni_version=version,
        name=name,
        mode=mode,
        raw=raw,
        mtu=mtu,
        mac=mac,
        ip_masq=ip_masq,
        ipam=ipam,
        ipv6_link_local=ipv6_link_local,
        dns=dns,
        prev_result=prev_result,
        options=load_mode(mode).parse_options(raw),
    )


def _check_ips(value: Any, key: str) -> None:
    if not isinstance(value, list):
        raise CniError(INVALID_CONFIG, f"{key}: expected a list of addresses, got {value!r}")
    for item in value:
        try:
            ipaddress.ip_interface(str(item))
        except ValueError as exc:
            raise CniError(INVALID_CONFIG, f"{key}: invalid address {item!r}") from exc
