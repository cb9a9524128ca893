"""Built-in `host-local` IPAM: the reference plugin's config and behaviour over an indexed reservation store.

Config (`ipam`): `ranges` (list of range sets), or the legacy `subnet`/`rangeStart`/`rangeEnd`/`gateway`;
`routes`, `dataDir`, `resolvConf`. Requested addresses come from `CNI_ARGS IP=`, `args.cni.ips` and
`runtimeConfig.ips`; extra ranges from `runtimeConfig.ipRanges`. Error messages are the reference's, so logs
and runbooks written for it still match; configuration errors carry code 7 instead of its 999.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cni.errors import INTERNAL, INVALID_CONFIG, NOT_AVAILABLE, CniError
from cni.ipam.keys import ReservationKey, reservation_key
from cni.ipam.ranges import IPAddress, Range, RangeSet, parse_ip, parse_range_sets
from cni.ipam.store import DEFAULT_DATA_DIR, ReservationStore, Transaction

if TYPE_CHECKING:
    from cni.ipam import IpamRequest

log = logging.getLogger(__name__)

_IPAM_KEYS = frozenset({"type", "subnet", "rangeStart", "rangeEnd", "gateway", "ranges", "routes", "dataDir",
                        "resolvConf"})
_ROUTE_KEYS = ("dst", "gw", "mtu", "advmss", "priority", "table", "scope")
RESULT_VERSION = "1.1.0"


@dataclass(frozen=True)
class HostLocalConfig:
    """A validated host-local section, plus the addresses this request asks for."""

    network: str
    data_dir: str
    range_sets: tuple[RangeSet, ...]
    routes: tuple[Mapping[str, Any], ...]
    resolv_conf: str
    requested: tuple[IPAddress, ...]


def _ipam_section(netconf: Mapping[str, Any]) -> Mapping[str, Any]:
    ipam = netconf.get("ipam")
    if not isinstance(ipam, Mapping):
        raise CniError(INVALID_CONFIG, "IPAM config missing 'ipam' key")
    return ipam


def _data_dir(ipam: Mapping[str, Any]) -> str:
    data_dir = ipam.get("dataDir") or DEFAULT_DATA_DIR
    if not isinstance(data_dir, str):
        raise CniError(INVALID_CONFIG, f"invalid ipam.dataDir: {data_dir!r} is not a path")
    return data_dir


def parse_routes(raw: object, where: str) -> tuple[Mapping[str, Any], ...]:
    """`routes: [{dst, gw?, ...}]`, with `dst` a CIDR and `gw` an address (both written back canonically)."""
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise CniError(INVALID_CONFIG, f"invalid {where}: expected a list, got {raw!r}")
    routes = []
    for i, route in enumerate(raw):
        if not isinstance(route, Mapping):
            raise CniError(INVALID_CONFIG, f"invalid {where}[{i}]: expected an object, got {route!r}")
        dst = route.get("dst")
        try:
            dst_text = str(ipaddress.ip_interface(dst.strip())) if isinstance(dst, str) and "/" in dst else None
        except ValueError:
            dst_text = None
        if dst_text is None:
            raise CniError(INVALID_CONFIG, f"invalid {where}[{i}].dst: {dst!r} is not a CIDR")
        out: dict[str, Any] = {"dst": dst_text}
        if route.get("gw"):
            out["gw"] = str(parse_ip(route["gw"], f"{where}[{i}].gw"))
        for k in _ROUTE_KEYS[2:]:
            value = route.get(k)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise CniError(INVALID_CONFIG, f"invalid {where}[{i}].{k}: {value!r} is not a non-negative integer")
            out[k] = value
        routes.append(out)
    return tuple(routes)


def _requested_ips(req: IpamRequest) -> tuple[IPAddress, ...]:
    """CNI_ARGS `IP=`, then `args.cni.ips`, then `runtimeConfig.ips`, in the reference's order."""
    found: list[IPAddress] = []
    if req.cni_args.get("IP"):
        found.append(parse_ip(req.cni_args["IP"], "CNI_ARGS IP"))
    args = req.netconf.get("args")
    cni = args.get("cni") if isinstance(args, Mapping) else None
    for where, raw in (("args.cni.ips", cni.get("ips") if isinstance(cni, Mapping) else None),
                       ("runtimeConfig.ips", _runtime_config(req).get("ips"))):
        if raw is None:
            continue
        if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
            raise CniError(INVALID_CONFIG, f"invalid {where}: expected a list of addresses, got {raw!r}")
        found += [parse_ip(ip, f"{where}[{i}]") for i, ip in enumerate(raw)]
    return tuple(found)


def _runtime_config(req: IpamRequest) -> Mapping[str, Any]:
    runtime = req.netconf.get("runtimeConfig")
    return runtime if isinstance(runtime, Mapping) else {}


def load_config(req: IpamRequest) -> HostLocalConfig:
    ipam = _ipam_section(req.netconf)
    unknown = sorted(set(ipam) - _IPAM_KEYS)
    if unknown:
        raise CniError(INVALID_CONFIG, f"unknown host-local ipam key {unknown[0]!r} (value {ipam[unknown[0]]!r})")
    resolv_conf = ipam.get("resolvConf") or ""
    if not isinstance(resolv_conf, str):
        raise CniError(INVALID_CONFIG, f"invalid ipam.resolvConf: {resolv_conf!r} is not a path")
    return HostLocalConfig(
        network=req.netconf.get("name"),  # validated by the store, which turns it into a directory
        data_dir=_data_dir(ipam),
        range_sets=parse_range_sets(ipam, _runtime_config(req).get("ipRanges")),
        routes=parse_routes(ipam.get("routes"), "ipam.routes"),
        resolv_conf=resolv_conf,
        requested=_requested_ips(req),
    )


def parse_resolv_conf(path: str) -> dict[str, Any]:
    """A resolv.conf as the result's `dns`: nameservers, domain, search and options, as the reference reads it."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise CniError(INVALID_CONFIG, f"failed to read ipam.resolvConf {path}: {exc.strerror}") from None
    dns: dict[str, Any] = {}
    for line in lines:
        fields = line.split()
        if not fields or fields[0].startswith(("#", ";")):
            continue
        if fields[0] == "nameserver" and len(fields) > 1:
            dns.setdefault("nameservers", []).append(fields[1])
        elif fields[0] == "domain" and len(fields) > 1:
            dns["domain"] = fields[1]
        elif fields[0] == "search":
            dns["search"] = fields[1:]
        elif fields[0] == "options":
            dns.setdefault("options", []).extend(fields[1:])
    return dns


def add(req: IpamRequest) -> dict[str, Any]:
    """Reserve one address per range set for (containerID, ifname); all or nothing."""
    conf = load_config(req)
    key = reservation_key(req.container_id, req.ifname)
    dns = parse_resolv_conf(conf.resolv_conf) if conf.resolv_conf else {}
    store = ReservationStore(conf.data_dir, conf.network)
    ips: list[dict[str, str]] = []
    with store.transaction() as txn:
        taken: list[str] = []
        requested = list(conf.requested)
        try:
            for idx, range_set in enumerate(conf.range_sets):
                wanted = next((ip for ip in requested if range_set.contains(ip)), None)
                if wanted is not None:
                    requested.remove(wanted)
                ip, rng = _allocate(txn, key, idx, range_set, wanted)
                taken.append(str(ip))
                ips.append({"address": f"{ip}/{rng.subnet.prefixlen}", "gateway": str(rng.address(rng.gateway))})
            if requested:
                raise CniError(INTERNAL, "failed to allocate all requested IPs: " + " ".join(map(str, requested)))
        except BaseException:
            if taken:
                txn.release(key, only=taken)
            raise
    result: dict[str, Any] = {"cniVersion": RESULT_VERSION, "ips": ips}
    if conf.routes:
        result["routes"] = [dict(route) for route in conf.routes]
    result["dns"] = dns  # the reference always prints "dns", empty or not
    log.info("host-local %s: reserved %s for %s/%s", conf.network, ", ".join(ip["address"] for ip in ips),
             key.container_id, key.ifname)
    return result


def _allocate(
    txn: Transaction, key: ReservationKey, idx: int, range_set: RangeSet, wanted: IPAddress | None
) -> tuple[IPAddress, Range]:
    """One address from `range_set`: the requested one, or the next free one after the last reservation."""
    if wanted is not None:
        rng = range_set.range_for(wanted)
        if int(wanted) == rng.gateway:
            raise CniError(INTERNAL, f"failed to allocate for range {idx}: requested ip {wanted} is subnet's gateway")
        if not txn.try_reserve(key, str(wanted)):
            raise CniError(INTERNAL, f"failed to allocate for range {idx}: requested IP address {wanted} is not "
                                     f"available in range set {range_set}")
        txn.set_last_reserved(idx, str(wanted))
        return wanted, rng
    for held in txn.owned(key):
        if range_set.contains(ipaddress.ip_address(held)):
            raise CniError(INTERNAL, f"failed to allocate for range {idx}: {held} has been allocated to "
                                     f"{key.container_id}, duplicate allocation is not allowed")
    last_text = txn.last_reserved(idx)
    try:
        last = ipaddress.ip_address(last_text) if last_text else None
    except ValueError:
        last = None  # a torn write of last_reserved_ip: we only lose round-robin once
    for ip, rng in range_set.candidates(last if last is not None and range_set.contains(last) else None):
        if txn.try_reserve(key, str(ip)):
            txn.set_last_reserved(idx, str(ip))
            return ip, rng
    raise CniError(INTERNAL, f"failed to allocate for range {idx}: no IP addresses available in range set: {range_set}")


def _existing_store(req: IpamRequest) -> ReservationStore | None:
    """The network's store when its directory exists: DEL, CHECK and GC must not create state."""
    ipam = _ipam_section(req.netconf)
    store = ReservationStore(_data_dir(ipam), req.netconf.get("name"))
    return store if os.path.isdir(store.path) else None


def delete(req: IpamRequest) -> None:
    """Release what (containerID, ifname) holds; success when nothing is held. Needs only `name` and `dataDir`."""
    key = reservation_key(req.container_id, req.ifname)
    store = _existing_store(req)
    if store is None:
        return
    with store.transaction() as txn:
        freed = txn.release(key)
    if freed:
        log.info("host-local %s: released %s for %s/%s", req.netconf.get("name"), ", ".join(freed),
                 key.container_id, key.ifname)


def check(req: IpamRequest) -> None:
    """The key holds a reservation, and every prevResult address inside our ranges is one of them."""
    conf = load_config(req)
    key = reservation_key(req.container_id, req.ifname)
    store = _existing_store(req)
    owned: list[str] = []
    if store is not None:
        with store.transaction() as txn:
            owned = txn.owned(key)
    if not owned:
        raise CniError(INTERNAL, f"host-local: Failed to find address added by container {key.container_id}")
    prev = req.netconf.get("prevResult")
    prev_ips = prev.get("ips") if isinstance(prev, Mapping) else None
    for entry in prev_ips if isinstance(prev_ips, list) else []:
        address = entry.get("address") if isinstance(entry, Mapping) else None
        try:
            ip = ipaddress.ip_interface(address).ip
        except (TypeError, ValueError):
            continue
        if any(rs.contains(ip) for rs in conf.range_sets) and str(ip) not in owned:
            raise CniError(INTERNAL, f"host-local: address {ip} of prevResult is not reserved for container "
                                     f"{key.container_id} interface {key.ifname}")


def gc(req: IpamRequest, valid: Sequence[tuple[str, str]]) -> None:
    """Release every reservation of this network whose (containerID, ifname) is not in `valid`."""
    store = _existing_store(req)
    if store is None:
        return
    with store.transaction() as txn:
        errors = txn.collect_garbage({(str(cid), str(ifname)) for cid, ifname in valid})
    if errors:
        raise CniError(INTERNAL, f"host-local GC of {store.path} failed for {len(errors)} entries",
                       "; ".join(errors))


def status(req: IpamRequest) -> None:
    """Code 50 when an ADD could not succeed: the data directory is unusable or a range set is exhausted."""
    conf = load_config(req)
    def full_sets(read_owners: bool) -> list[int]:
        reserved = [ipaddress.ip_address(ip) for ip in txn.reserved_addresses(read_owners=read_owners)]
        return [idx for idx, range_set in enumerate(conf.range_sets)
                if sum(1 for ip in reserved if range_set.contains(ip)) >= range_set.capacity()]

    try:
        store = ReservationStore(conf.data_dir, conf.network)
        with store.transaction() as txn:
            # Runtimes may poll STATUS: list names only, and read owners only when a set looks full.
            full = full_sets(read_owners=False) and full_sets(read_owners=True)
    except CniError as exc:
        if exc.code != INTERNAL:
            raise
        raise CniError(NOT_AVAILABLE, f"host-local cannot serve ADD: {exc.msg}", exc.details) from None
    if full:
        raise CniError(NOT_AVAILABLE, f"no IP addresses available in range set {full[0]}: "
                                      f"{conf.range_sets[full[0]]}")
