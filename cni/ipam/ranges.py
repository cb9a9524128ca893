"""host-local address ranges: parsing a config's range sets the way the reference does, and walking them.

A *range* is one subnet with an inclusive [rangeStart, rangeEnd] and a gateway that is never handed out; a
*range set* is a pool of disjoint ranges of one family, from which one address is taken per ADD. Addresses
are handled as integers so that walking a /16 or a /64 costs no object churn.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cni.errors import INVALID_CONFIG, CniError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_RANGE_KEYS = frozenset({"subnet", "rangeStart", "rangeEnd", "gateway"})


@dataclass(frozen=True)
class Range:
    """One allocatable range: a subnet, the inclusive bounds, and the gateway that is skipped."""

    subnet: IPNetwork
    start: int
    end: int
    gateway: int | None

    @property
    def version(self) -> int:
        return self.subnet.version

    def address(self, value: int) -> IPAddress:
        return ipaddress.IPv4Address(value) if self.version == 4 else ipaddress.IPv6Address(value)

    def contains(self, ip: IPAddress) -> bool:
        """Inside the subnet and inside [start, end], as the reference's Range.Contains."""
        return ip.version == self.version and self.start <= int(ip) <= self.end

    def capacity(self) -> int:
        """How many addresses this range can hand out (the gateway excluded when it lies inside)."""
        size = self.end - self.start + 1
        if self.gateway is not None and self.start <= self.gateway <= self.end:
            size -= 1
        return size

    def __str__(self) -> str:
        return f"{self.address(self.start)}-{self.address(self.end)}"


@dataclass(frozen=True)
class RangeSet:
    """A pool of disjoint ranges of one family; one address per ADD comes from here."""

    ranges: tuple[Range, ...]

    @property
    def version(self) -> int:
        return self.ranges[0].version

    def range_for(self, ip: IPAddress) -> Range | None:
        for rng in self.ranges:
            if rng.contains(ip):
                return rng
        return None

    def contains(self, ip: IPAddress) -> bool:
        return self.range_for(ip) is not None

    def capacity(self) -> int:
        return sum(rng.capacity() for rng in self.ranges)

    def candidates(self, last_reserved: IPAddress | None) -> Iterator[tuple[IPAddress, Range]]:
        """Every allocatable address once, round-robin from `last_reserved + 1` as the reference iterates.

        Starting after the last reservation means a crash-looping pod does not get the same address back
        until the whole set has been used, and in steady state the next candidate is usually free.
        """
        ranges = self.ranges
        index, cursor = 0, None
        if last_reserved is not None:
            for i, rng in enumerate(ranges):
                if rng.contains(last_reserved):
                    index, cursor = i, int(last_reserved)
                    break
        if cursor is None:
            order = [(index, ranges[0].start, ranges[0].end)]
        else:
            rng = ranges[index]
            order = [(index, cursor + 1, rng.end)] if cursor < rng.end else []
        for step in range(1, len(ranges)):
            i = (index + step) % len(ranges)
            order.append((i, ranges[i].start, ranges[i].end))
        if cursor is not None:
            order.append((index, ranges[index].start, cursor))
        for i, first, last in order:
            rng = ranges[i]
            for value in range(first, last + 1):
                if value != rng.gateway:
                    yield rng.address(value), rng

    def __str__(self) -> str:
        return ",".join(str(rng) for rng in self.ranges)


def parse_ip(value: object, key: str) -> IPAddress:
    """An address from config; a CIDR is accepted and its mask dropped, as Go's ip.IP does."""
    if not isinstance(value, str):
        raise CniError(INVALID_CONFIG, f"invalid {key}: {value!r} is not a string")
    text = value.strip()
    refuse_zone(text, key)
    try:
        return ipaddress.ip_interface(text).ip if "/" in text else ipaddress.ip_address(text)
    except ValueError:
        raise CniError(INVALID_CONFIG, f"invalid {key}: {value!r} is not an IP address") from None


def refuse_zone(text: str, key: str) -> None:
    """Code 7 for an IPv6 zone (`fd00::10%eth0`): Python keeps it in the address, so it would name another
    reservation file, while the kernel ignores it and gives a second pod the same address (issue 17, finding 2).
    A pod address has no zone; a link-local one with a zone is no pod address either."""
    if "%" in text:
        raise CniError(INVALID_CONFIG, f"invalid {key}: {text!r} has an IPv6 zone ('%...'), which a pod address "
                                       "cannot have")


def _last_host(subnet: IPNetwork) -> int:
    """The reference's default rangeEnd: the last address, minus the broadcast for IPv4."""
    last = int(subnet.broadcast_address)
    return last - 1 if subnet.version == 4 else last


def parse_range(raw: object, where: str) -> Range:
    """One `{subnet, rangeStart, rangeEnd, gateway}` object, with the reference's defaults and checks."""
    if not isinstance(raw, Mapping):
        raise CniError(INVALID_CONFIG, f"invalid {where}: expected an object, got {raw!r}")
    unknown = sorted(set(raw) - _RANGE_KEYS)
    if unknown:
        raise CniError(INVALID_CONFIG, f"invalid {where}: unknown key {unknown[0]!r}")
    subnet_text = raw.get("subnet")
    if not isinstance(subnet_text, str) or not subnet_text:
        raise CniError(INVALID_CONFIG, f"invalid {where}.subnet: {subnet_text!r} is not a CIDR")
    try:
        subnet = ipaddress.ip_network(subnet_text.strip(), strict=False)
    except ValueError:
        raise CniError(INVALID_CONFIG, f"invalid {where}.subnet: invalid CIDR address: {subnet_text}") from None
    if subnet.prefixlen > subnet.max_prefixlen - 2:
        raise CniError(INVALID_CONFIG, f"invalid {where}.subnet: Network {subnet} too small to allocate from")

    def inside(key: str) -> int | None:
        if raw.get(key) is None:
            return None
        ip = parse_ip(raw[key], f"{where}.{key}")
        if ip.version != subnet.version or ip not in subnet:
            raise CniError(INVALID_CONFIG, f"invalid {where}.{key}: {ip} not in network {subnet}")
        return int(ip)

    network = int(subnet.network_address)
    gateway = inside("gateway")
    start = inside("rangeStart")
    end = inside("rangeEnd")
    start = network + 1 if start is None else start
    end = _last_host(subnet) if end is None else end
    if start > end:
        raise CniError(INVALID_CONFIG, f"invalid {where}: rangeStart is after rangeEnd in {raw}")
    return Range(subnet=subnet, start=start, end=end, gateway=network + 1 if gateway is None else gateway)


def _overlaps(a: Range, b: Range) -> bool:
    return a.version == b.version and a.start <= b.end and b.start <= a.end


def parse_range_set(raw: object, where: str) -> RangeSet:
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes) or not raw:
        raise CniError(INVALID_CONFIG, f"invalid {where}: expected a non-empty list of ranges, got {raw!r}")
    ranges = tuple(parse_range(item, f"{where}[{i}]") for i, item in enumerate(raw))
    if len({rng.version for rng in ranges}) > 1:
        raise CniError(INVALID_CONFIG, f"invalid {where}: mixed address families")
    for i, a in enumerate(ranges):
        for b in ranges[i + 1:]:
            if _overlaps(a, b):
                raise CniError(INVALID_CONFIG, f"invalid {where}: subnets {a} and {b} overlap")
    return RangeSet(ranges)


def parse_range_sets(ipam: Mapping[str, Any], runtime_ranges: object = None) -> tuple[RangeSet, ...]:
    """`_parse_range_sets`, memoised on the JSON of its input: the node daemon sees the same config on every
    call, and parsing a range costs more than the whole reservation."""
    try:
        key = json.dumps([{k: ipam.get(k) for k in (*_RANGE_KEYS, "ranges")}, runtime_ranges or None],
                         sort_keys=True)
    except (TypeError, ValueError):
        return _parse_range_sets(ipam, runtime_ranges)
    return _parse_range_sets_json(key)


@functools.lru_cache(maxsize=256)
def _parse_range_sets_json(key: str) -> tuple[RangeSet, ...]:
    ipam, runtime_ranges = json.loads(key)
    return _parse_range_sets(ipam, runtime_ranges)


def _parse_range_sets(ipam: Mapping[str, Any], runtime_ranges: object = None) -> tuple[RangeSet, ...]:
    """All range sets of a host-local `ipam` section: runtimeConfig.ipRanges, legacy `subnet`, then `ranges`.

    The order is the reference's (capability ranges first, then the legacy single range, then `ranges`), so
    range-set indexes, and with them the `last_reserved_ip.<index>` files, mean the same thing to both.
    """
    sets: list[RangeSet] = []
    if runtime_ranges:
        if not isinstance(runtime_ranges, Sequence) or isinstance(runtime_ranges, str | bytes):
            raise CniError(INVALID_CONFIG, f"invalid runtimeConfig.ipRanges: {runtime_ranges!r}")
        sets += [parse_range_set(rs, f"runtimeConfig.ipRanges[{i}]") for i, rs in enumerate(runtime_ranges)]
    if ipam.get("subnet"):
        legacy = {k: ipam[k] for k in _RANGE_KEYS if k in ipam}
        sets.append(RangeSet((parse_range(legacy, "ipam"),)))
    raw_sets = ipam.get("ranges")
    if raw_sets is not None:
        if not isinstance(raw_sets, Sequence) or isinstance(raw_sets, str | bytes):
            raise CniError(INVALID_CONFIG, f"invalid ipam.ranges: expected a list of range sets, got {raw_sets!r}")
        sets += [parse_range_set(rs, f"ipam.ranges[{i}]") for i, rs in enumerate(raw_sets)]
    if not sets:
        raise CniError(INVALID_CONFIG, "no IP ranges specified (set ipam.ranges or ipam.subnet)")
    for i, a in enumerate(sets):
        for j in range(i + 1, len(sets)):
            if any(_overlaps(x, y) for x in a.ranges for y in sets[j].ranges):
                raise CniError(INVALID_CONFIG, f"range set {i} overlaps with {j}")
    return tuple(sets)
