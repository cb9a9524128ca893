"""CNI result records: parsed from IPAM answers and `prevResult` at any supported version, printed at the config's.

The records follow the 1.1.0 shape; `to_dict(version)` downgrades like Go `types.PrintResult` (0.3.x/0.4.0 carry
`version` in each ip, 1.0.0 drops the 1.1.0-only interface and route fields).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cni.errors import DECODE_FAILURE, INCOMPATIBLE_VERSION, CniError
from cni.versions import SUPPORTED

_ROUTE_EXTRAS = ("mtu", "advmss", "priority", "table", "scope")


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: int = 0
    socket_path: str = ""
    pci_id: str = ""


@dataclass(frozen=True)
class IPConfig:
    address: str  # CIDR: the address with its prefix length
    gateway: str = ""
    interface: int | None = None

    @property
    def family(self) -> int:
        return ipaddress.ip_interface(self.address).version


def family_gateways(ips: Iterable[IPConfig]) -> dict[int, str]:
    """The gateway a route without `gw` takes, per family: the first address's of that family that has one, as the
    reference `ConfigureIface` picks it. ADD and CHECK both ask here, so they agree."""
    gateways: dict[int, str] = {}
    for ip in ips:
        if ip.gateway:
            gateways.setdefault(ip.family, ip.gateway)
    return gateways


@dataclass(frozen=True)
class Route:
    dst: str
    gw: str = ""
    mtu: int = 0
    advmss: int = 0
    priority: int = 0
    table: int = 0
    scope: int | None = None


@dataclass(frozen=True)
class DNS:
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.nameservers or self.domain or self.search or self.options)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out


@dataclass(frozen=True)
class Result:
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = field(default_factory=DNS)

    def with_interface(self, iface: Interface) -> tuple[Result, int]:
        """This result with `iface` appended, and its index (for `IPConfig.interface`)."""
        return replace(self, interfaces=(*self.interfaces, iface)), len(self.interfaces)

    def to_dict(self, version: str) -> dict[str, Any]:
        """The result JSON at `version` (one of `SUPPORTED`)."""
        legacy = version_tuple(version) < (1, 0, 0)
        out: dict[str, Any] = {"cniVersion": version}
        if self.interfaces:
            out["interfaces"] = [_interface_dict(i, version) for i in self.interfaces]
        if self.ips:
            ips = []
            for ip in self.ips:
                entry: dict[str, Any] = {}
                if legacy:
                    entry["version"] = str(ip.family)
                entry["address"] = ip.address
                if ip.gateway:
                    entry["gateway"] = ip.gateway
                if ip.interface is not None:
                    entry["interface"] = ip.interface
                ips.append(entry)
            out["ips"] = ips
        if self.routes:
            out["routes"] = [_route_dict(r, version) for r in self.routes]
        out["dns"] = self.dns.to_dict()
        return out


def _interface_dict(iface: Interface, version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": iface.name}
    if iface.mac:
        out["mac"] = iface.mac
    if iface.sandbox:
        out["sandbox"] = iface.sandbox
    if version_tuple(version) >= (1, 1, 0):
        if iface.mtu:
            out["mtu"] = iface.mtu
        if iface.socket_path:
            out["socketPath"] = iface.socket_path
        if iface.pci_id:
            out["pciID"] = iface.pci_id
    return out


def _route_dict(route: Route, version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"dst": route.dst}
    if route.gw:
        out["gw"] = route.gw
    if version_tuple(version) >= (1, 1, 0):
        for key in _ROUTE_EXTRAS:
            value = getattr(route, key)
            if value:
                out[key] = value
        if route.scope is not None:
            out["scope"] = route.scope
    return out


def version_tuple(version: str) -> tuple[int, ...]:
    """"0.4.0" as (0, 4, 0), for ordering versions; anything unparsable sorts first."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (0,)


def _cidr(value: Any, what: str) -> str:
    try:
        return str(ipaddress.ip_interface(str(value)))
    except ValueError as exc:
        raise CniError(DECODE_FAILURE, f"{what}: invalid CIDR {value!r}") from exc


def _ip(value: Any, what: str) -> str:
    if value in (None, ""):
        return ""
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError as exc:
        raise CniError(DECODE_FAILURE, f"{what}: invalid IP address {value!r}") from exc


def parse_result(data: Mapping[str, Any], version: str, what: str = "prevResult") -> Result:
    """Parse a result (full or IPAM-abbreviated) of any supported version; `version` is used when it has none."""
    if not isinstance(data, Mapping):
        raise CniError(DECODE_FAILURE, f"{what}: expected an object, got {type(data).__name__}")
    given = str(data.get("cniVersion") or version)
    if given not in SUPPORTED:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"{what}: cniVersion {given!r} not supported (supported: {', '.join(SUPPORTED)})",
        )
    try:
        interfaces = tuple(
            Interface(
                name=str(i["name"]),
                mac=str(i.get("mac", "")),
                sandbox=str(i.get("sandbox", "")),
                mtu=int(i.get("mtu", 0) or 0),
                socket_path=str(i.get("socketPath", "")),
                pci_id=str(i.get("pciID", "")),
            )
            for i in data.get("interfaces") or ()
        )
        ips = []
        for n, ip in enumerate(data.get("ips") or ()):
            index = ip.get("interface")
            bad_index = index is not None and (
                not isinstance(index, int) or index < 0 or (interfaces and index >= len(interfaces))
            )
            if bad_index:
                raise CniError(DECODE_FAILURE, f"{what}: ips[{n}].interface {index!r} is not an interface index")
            ips.append(
                IPConfig(
                    address=_cidr(ip["address"], f"{what}: ips[{n}].address"),
                    gateway=_ip(ip.get("gateway"), f"{what}: ips[{n}].gateway"),
                    interface=index,
                )
            )
        routes = tuple(
            Route(
                dst=_cidr(r["dst"], f"{what}: routes[{n}].dst"),
                gw=_ip(r.get("gw"), f"{what}: routes[{n}].gw"),
                mtu=int(r.get("mtu", 0) or 0),
                advmss=int(r.get("advmss", 0) or 0),
                priority=int(r.get("priority", 0) or 0),
                table=int(r.get("table", 0) or 0),
                scope=int(r["scope"]) if r.get("scope") is not None else None,
            )
            for n, r in enumerate(data.get("routes") or ())
        )
        dns = parse_dns(data.get("dns") or {}, f"{what}: dns")
    except CniError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CniError(DECODE_FAILURE, f"{what}: malformed result: {exc!r}") from exc
    # Route destinations must be networks, not host-bit addresses: normalise the way Go's net.IPNet does.
    routes = tuple(replace(r, dst=str(ipaddress.ip_interface(r.dst).network)) for r in routes)
    return Result(interfaces=interfaces, ips=tuple(ips), routes=routes, dns=dns)


def parse_dns(data: Any, what: str = "dns") -> DNS:
    """The `dns` object of a config or result."""
    if not isinstance(data, Mapping):
        raise CniError(DECODE_FAILURE, f"{what}: expected an object, got {type(data).__name__}")

    def strings(key: str) -> tuple[str, ...]:
        value = data.get(key) or ()
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise CniError(DECODE_FAILURE, f"{what}.{key}: expected a list of strings")
        return tuple(value)

    return DNS(
        nameservers=strings("nameservers"),
        domain=str(data.get("domain") or ""),
        search=strings("search"),
        options=strings("options"),
    )
