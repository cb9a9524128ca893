"""Built-in `static` IPAM: fixed addresses from the config, CNI_ARGS or the `ips` capability; nothing to release.

Config (`ipam`): `addresses: [{address: CIDR, gateway}]`, `routes`, `dns`. `CNI_ARGS IP=<cidr>[,<cidr>]`
adds addresses and `GATEWAY=<ip>[,<ip>]` sets the gateway of the addresses that contain it; `args.cni.ips`
and then `runtimeConfig.ips` replace the list, as in the reference plugin.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cni.errors import INVALID_CONFIG, CniError
from cni.ipam.hostlocal import RESULT_VERSION, parse_routes
from cni.ipam.ranges import parse_ip, refuse_zone

if TYPE_CHECKING:
    from cni.ipam import IpamRequest

_IPAM_KEYS = frozenset({"type", "addresses", "routes", "dns"})
_DNS_KEYS = frozenset({"nameservers", "domain", "search", "options"})


@dataclass(frozen=True)
class StaticAddress:
    interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    gateway: str | None


def _cidr(value: object, where: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    if isinstance(value, str):
        refuse_zone(value.strip(), where)
    try:
        if isinstance(value, str) and "/" in value:
            return ipaddress.ip_interface(value.strip())
    except ValueError:
        pass
    raise CniError(INVALID_CONFIG, f"invalid {where}: the address is expected to be in CIDR notation, got: {value!r}")


def _list(raw: object, where: str) -> Sequence[Any]:
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise CniError(INVALID_CONFIG, f"invalid {where}: expected a list, got {raw!r}")
    return raw


def addresses(req: IpamRequest) -> list[StaticAddress]:
    """The addresses this request gets, after CNI_ARGS, args.cni.ips and runtimeConfig.ips are applied."""
    ipam = req.netconf["ipam"]
    found: list[StaticAddress] = []
    for i, entry in enumerate(_list(ipam.get("addresses") or [], "ipam.addresses")):
        if not isinstance(entry, Mapping):
            raise CniError(INVALID_CONFIG, f"invalid ipam.addresses[{i}]: expected an object, got {entry!r}")
        iface = _cidr(entry.get("address"), f"ipam.addresses[{i}].address")
        gateway = str(parse_ip(entry["gateway"], f"ipam.addresses[{i}].gateway")) if entry.get("gateway") else None
        found.append(StaticAddress(iface, gateway))
    if req.cni_args.get("IP"):
        found += [StaticAddress(_cidr(item.strip(), "CNI_ARGS IP"), None) for item in req.cni_args["IP"].split(",")]
    if req.cni_args.get("GATEWAY"):
        for item in req.cni_args["GATEWAY"].split(","):
            gateway = parse_ip(item, "CNI_ARGS GATEWAY")
            found = [StaticAddress(a.interface, str(gateway)) if gateway in a.interface.network else a for a in found]
    args = req.netconf.get("args")
    cni = args.get("cni") if isinstance(args, Mapping) else None
    runtime = req.netconf.get("runtimeConfig")
    for where, raw in (("args.cni.ips", cni.get("ips") if isinstance(cni, Mapping) else None),
                       ("runtimeConfig.ips", runtime.get("ips") if isinstance(runtime, Mapping) else None)):
        if raw:
            found = [StaticAddress(_cidr(ip, f"{where}[{i}]"), None) for i, ip in enumerate(_list(raw, where))]
    return found


def _dns(raw: object) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or set(raw) - _DNS_KEYS:
        raise CniError(INVALID_CONFIG, f"invalid ipam.dns: expected {{nameservers, domain, search, options}}, got "
                                       f"{raw!r}")
    for key, value in raw.items():
        is_text = isinstance(value, str)
        is_list = isinstance(value, list) and all(isinstance(item, str) for item in value)
        if value is not None and not (is_text if key == "domain" else is_list):
            kind = "a string" if key == "domain" else "a list of strings"
            raise CniError(INVALID_CONFIG, f"invalid ipam.dns.{key}: {value!r} is not {kind}")
    return {k: v for k, v in raw.items() if v}


def _validated(req: IpamRequest) -> tuple[list[StaticAddress], tuple[Mapping[str, Any], ...], dict[str, Any]]:
    ipam = req.netconf.get("ipam")
    if not isinstance(ipam, Mapping):
        raise CniError(INVALID_CONFIG, "IPAM config missing 'ipam' key")
    unknown = sorted(set(ipam) - _IPAM_KEYS)
    if unknown:
        raise CniError(INVALID_CONFIG, f"unknown static ipam key {unknown[0]!r} (value {ipam[unknown[0]]!r})")
    return addresses(req), parse_routes(ipam.get("routes"), "ipam.routes"), _dns(ipam.get("dns"))


def add(req: IpamRequest) -> dict[str, Any]:
    found, routes, dns = _validated(req)
    result: dict[str, Any] = {"cniVersion": RESULT_VERSION}
    if found:
        result["ips"] = [{"address": str(a.interface), **({"gateway": a.gateway} if a.gateway else {})}
                         for a in found]
    if routes:
        result["routes"] = [dict(route) for route in routes]
    result["dns"] = dns
    return result


def check(req: IpamRequest) -> None:
    """Nothing is reserved, so there is nothing to verify beyond the config (as the reference)."""
    _validated(req)
