"""A small synchronous rtnetlink client for the calls ADD, CHECK and DEL make (links, addresses, routes).

pyroute2 0.9 runs an asyncio loop per request and builds its messages through several layers: ~0.3-0.5 ms of
Python per request, against ~5 µs for the same message packed with `struct` on a plain `AF_NETLINK` socket. An
ADD makes about ten such requests, so these go raw; the rare rest (creating a bridge, bridge VLANs and hairpin,
replacing a bridge address) stays on pyroute2. One `Rtnl` serves one thread at a time (each request reads its
own answer to the end before returning).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

# rtnetlink message types and flags (linux/rtnetlink.h, linux/netlink.h)
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
RTM_GETNETCONF = 82
RTM_GETNSID = 90
NETNSA_NSID, NETNSA_FD = 1, 3
NETNSA_NSID_NOT_ASSIGNED = -1
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x300, 0x200, 0x400
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
# attributes
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_AF_SPEC, IFLA_NET_NS_FD = 16, 18, 26, 28
IFLA_LINK_NETNSID = 37
IFLA_INET_CONF = 1  # inside IFLA_AF_SPEC / AF_INET: the device's IPv4 sysctls, by IPV4_DEVCONF_* number
IPV4_DEVCONF_ARP_NOTIFY = 22
IFLA_INET6_ADDR_GEN_MODE = 8  # inside IFLA_AF_SPEC / AF_INET6: how the device makes its link-local address
IN6_ADDR_GEN_MODE_EUI64, IN6_ADDR_GEN_MODE_NONE = 0, 1
NETCONFA_IFINDEX, NETCONFA_FORWARDING, NETCONFA_IFINDEX_ALL = 1, 2, -1
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_MACVLAN_MODE = 1
MACVLAN_MODE_IDS = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8, "source": 16}
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST, IFA_FLAGS = 1, 2, 4, 8
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_METRICS, RTA_TABLE = 1, 4, 5, 6, 7, 8, 15
RTAX_MTU, RTAX_ADVMSS = 2, 8
IFF_UP, IFF_PROMISC = 0x1, 0x100
RT_TABLE_MAIN, RTPROT_STATIC, RTN_UNICAST = 254, 4, 1
_SOL_NETLINK, _NETLINK_GET_STRICT_CHK = 270, 12
_OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBi")  # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
_ATTR = struct.Struct("=HH")


class RtnlError(OSError):
    """The kernel refused a request; `code` is the errno, as pyroute2's NetlinkError has it."""

    @property
    def code(self) -> int:
        return self.errno


@dataclass(frozen=True)
class Link:
    """The fields of an RTM_NEWLINK answer that the modes use: what the kernel reports for one link."""

    index: int
    name: str
    mac: str
    mtu: int
    kind: str
    master: int
    operstate: str
    flags: int
    link: int  # IFLA_LINK: a veth's peer or a macvlan's master (an index in the peer's netns)
    info_data: dict[int, bytes]  # IFLA_INFO_DATA, by attribute type (e.g. IFLA_MACVLAN_MODE)
    # IFLA_LINK_NETNSID: the id, in the asking netns, of the netns `link` is an index in; None when that is the
    # asking netns itself. Only with it does `link` say *which* link: an index alone is valid in every netns.
    link_netnsid: int | None = None

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)

    @property
    def promisc(self) -> bool:
        return bool(self.flags & IFF_PROMISC)

    @property
    def peer(self) -> int:
        return self.link


@dataclass(frozen=True)
class Address:
    """One RTM_NEWADDR answer."""

    family: int  # 4 or 6
    address: str
    prefixlen: int
    flags: int  # IFA_FLAGS, else the header's 8 bits


@dataclass(frozen=True)
class Route:
    """One RTM_NEWROUTE answer."""

    family: int  # 4 or 6
    dst: str
    dst_len: int
    gateway: str
    oif: int
    table: int


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    size = _ATTR.size + len(payload)
    return _ATTR.pack(size, kind) + payload + b"\0" * (-size % 4)


def _str(value: str) -> bytes:
    return value.encode() + b"\0"


def _u32(value: int) -> bytes:
    return struct.pack("=I", value)


def _mac(value: str) -> bytes:
    return bytes.fromhex(value.replace(":", ""))


def _attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    found = {}
    while offset + _ATTR.size <= len(data):
        size, kind = _ATTR.unpack_from(data, offset)
        if size < _ATTR.size:
            break
        found[kind & 0x3FFF] = data[offset + _ATTR.size : offset + size]  # without NLA_F_NESTED / byte-order bits
        offset += (size + 3) & ~3
    return found


class Rtnl:
    """An rtnetlink socket in the namespace it was created in."""

    def __init__(self, fileno: int | None = None, *, _bound: socket.socket | None = None) -> None:
        if _bound is not None:  # `dup`: the socket is set up already
            self._sock = _bound
        else:
            if fileno is None:
                # non-inheritable, as every Python socket
                self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
            else:
                self._sock = socket.socket(fileno=fileno)
            # Dumps filtered by the kernel (by link, by table) instead of everything filtered here.
            self._sock.setsockopt(_SOL_NETLINK, _NETLINK_GET_STRICT_CHK, 1)
            self._sock.bind((0, 0))
        self._seq = 0

    def dup(self) -> Rtnl:
        """A second handle on this socket (so in its namespace) that outlives this one's `close`. Use one handle at a
        time: they share the socket's answers. Its sequence numbers start far from this one's."""
        other = Rtnl(_bound=self._sock.dup())
        other._seq = self._seq + (1 << 20)
        return other

    def close(self) -> None:
        self._sock.close()

    def request(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one request and return its answers as (type, payload) until the ACK or DONE; raise `RtnlError`."""
        self._seq += 1
        seq = self._seq
        self._sock.send(_HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body)
        answers = []
        while True:
            data = self._sock.recv(1 << 16)
            offset = 0
            while offset + _HEADER.size <= len(data):
                size, mtype, _, mseq, _ = _HEADER.unpack_from(data, offset)
                payload = data[offset + _HEADER.size : offset + size]
                offset += (size + 3) & ~3
                if mseq != seq:
                    continue  # an answer to an earlier request that gave up reading (none should exist)
                if mtype == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise RtnlError(code, os.strerror(code))
                    return answers
                if mtype == _NLMSG_DONE:
                    return answers
                answers.append((mtype, payload))
                if not flags & 0x300:  # no dump: the answer is one message (a GET is not ACKed on top)
                    return answers

    def get_link(self, index: int = 0, name: str = "") -> Link:
        body = _IFINFO.pack(0, 0, index, 0, 0) + (attr(IFLA_IFNAME, _str(name)) if name else b"")
        return _link(self.request(RTM_GETLINK, 0, body)[0][1])

    def links(self) -> list[Link]:
        return [_link(payload) for _, payload in self.request(RTM_GETLINK, NLM_F_DUMP, _IFINFO.pack(0, 0, 0, 0, 0))]

    def addresses(self, index: int, family: int = 0) -> list[Address]:
        """The addresses of link `index` (of one family, 4 or 6, if given)."""
        af = {0: 0, 4: socket.AF_INET, 6: socket.AF_INET6}[family]
        answers = self.request(RTM_GETADDR, NLM_F_DUMP, _IFADDR.pack(af, 0, 0, 0, index))
        found = []
        for _, payload in answers:
            fam, prefixlen, flags, _, link = _IFADDR.unpack_from(payload)
            attrs = _attrs(payload, _IFADDR.size)
            if link != index or IFA_ADDRESS not in attrs:
                continue
            if IFA_FLAGS in attrs:
                flags = struct.unpack("=I", attrs[IFA_FLAGS][:4])[0]
            address = str(ipaddress.ip_address(attrs[IFA_ADDRESS]))
            found.append(Address(4 if fam == socket.AF_INET else 6, address, prefixlen, flags))
        return found

    def routes(self, family: int, table: int = RT_TABLE_MAIN) -> list[Route]:
        """The routes of one family (4 or 6) in `table`."""
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        body = _RTMSG.pack(af, 0, 0, 0, min(table, 255), 0, 0, 0, 0) + attr(RTA_TABLE, _u32(table))
        found = [_route(payload) for _, payload in self.request(RTM_GETROUTE, NLM_F_DUMP, body)]
        return [r for r in found if r.table == table]

    def route_get(self, address: str) -> Route:
        """The route the kernel would take to `address` (RTM_GETROUTE); `RtnlError` ENETUNREACH if none."""
        ip = ipaddress.ip_address(address)
        af = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        body = _RTMSG.pack(af, ip.max_prefixlen, 0, 0, 0, 0, 0, 0, 0) + attr(RTA_DST, ip.packed)
        return _route(self.request(RTM_GETROUTE, 0, body)[0][1])

    def set_link(self, index: int = 0, name: str = "", up: bool | None = None, master: int | None = None,
                 ifname: str = "", mac: str = "", promisc: bool | None = None) -> None:
        """Change a link in one RTM_NEWLINK: any of up/down, master, name, MAC and promiscuous mode."""
        flags = change = 0
        if up is not None:
            change |= IFF_UP
            flags |= IFF_UP if up else 0
        if promisc is not None:
            change |= IFF_PROMISC
            flags |= IFF_PROMISC if promisc else 0
        attrs = attr(IFLA_IFNAME, _str(ifname or name)) if (ifname or name) else b""
        if master is not None:
            attrs += attr(IFLA_MASTER, _u32(master))
        if mac:
            attrs += attr(IFLA_ADDRESS, _mac(mac))
        self.request(RTM_NEWLINK, NLM_F_ACK, _IFINFO.pack(0, 0, index, flags, change) + attrs)

    def set_ipv4_conf(self, index: int, conf: dict[int, int]) -> None:
        """Set IPv4 sysctls of link `index` (`net.ipv4.conf.<dev>.*`, keyed by IPV4_DEVCONF_* number) in one
        RTM_NEWLINK. No /proc/sys path walk, which costs more with every namespace that ever looked at its own
        /proc/sys/net (their `net` dentries share one hash chain), and no read-only /proc/sys to fail on."""
        values = b"".join(attr(key, _u32(value)) for key, value in sorted(conf.items()))
        spec = attr(socket.AF_INET, attr(IFLA_INET_CONF, values))
        self.request(RTM_NEWLINK, NLM_F_ACK, _IFINFO.pack(0, 0, index, 0, 0) + attr(IFLA_AF_SPEC, spec))

    def set_ipv6_addr_gen_mode(self, mode: int, index: int = 0, name: str = "") -> None:
        """Set how link `index` (or `name`) makes its IPv6 link-local address; IN6_ADDR_GEN_MODE_NONE: it makes
        none, so it sends no DAD, MLD or router solicitation of its own. It takes effect when the link goes up."""
        spec = attr(socket.AF_INET6, attr(IFLA_INET6_ADDR_GEN_MODE, struct.pack("=B", mode)))
        attrs = (attr(IFLA_IFNAME, _str(name)) if name else b"") + attr(IFLA_AF_SPEC, spec)
        self.request(RTM_NEWLINK, NLM_F_ACK, _IFINFO.pack(0, 0, index, 0, 0) + attrs)

    def ipv4_conf(self, index: int) -> dict[int, int]:
        """The IPv4 sysctls of link `index`, keyed by IPV4_DEVCONF_* number (RTM_GETLINK's IFLA_AF_SPEC)."""
        body = _IFINFO.pack(0, 0, index, 0, 0)
        payload = self.request(RTM_GETLINK, 0, body)[0][1]
        spec = _attrs(_attrs(payload, _IFINFO.size).get(IFLA_AF_SPEC, b""))
        raw = _attrs(spec.get(socket.AF_INET, b"")).get(IFLA_INET_CONF, b"")
        return {n + 1: value for n, (value,) in enumerate(struct.iter_unpack("=I", raw[: len(raw) // 4 * 4]))}

    def forwarding(self, family: int) -> bool:
        """Whether forwarding is on for all devices of one family (4: `net.ipv4.ip_forward`, 6:
        `net.ipv6.conf.all.forwarding`), read with RTM_GETNETCONF rather than from /proc/sys."""
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        body = struct.pack("=Bxxx", af) + attr(NETCONFA_IFINDEX, struct.pack("=i", NETCONFA_IFINDEX_ALL))
        attrs = _attrs(self.request(RTM_GETNETCONF, 0, body)[0][1], 4)
        raw = attrs.get(NETCONFA_FORWARDING, b"")
        return len(raw) >= 4 and struct.unpack("=i", raw[:4])[0] != 0

    def netns_id(self, netns_fd: int) -> int | None:
        """The id this netns knows the netns `netns_fd` by (RTM_GETNSID), None if it has none: the ids that
        IFLA_LINK_NETNSID answers carry, so a peer's netns can be compared with a netns we hold a fd on."""
        body = struct.pack("=Bxxx", socket.AF_UNSPEC) + attr(NETNSA_FD, _u32(netns_fd))
        attrs = _attrs(self.request(RTM_GETNSID, 0, body)[0][1], 4)
        raw = attrs.get(NETNSA_NSID, b"")
        nsid = struct.unpack("=i", raw[:4])[0] if len(raw) >= 4 else NETNSA_NSID_NOT_ASSIGNED
        return None if nsid == NETNSA_NSID_NOT_ASSIGNED else nsid

    def del_link(self, name: str) -> None:
        self.request(RTM_DELLINK, NLM_F_ACK, _IFINFO.pack(0, 0, 0, 0, 0) + attr(IFLA_IFNAME, _str(name)))

    def add_veth(self, name: str, peer: str, peer_netns_fd: int, mtu: int = 0, peer_mac: str = "") -> None:
        """A veth pair `name`/`peer`, the peer created straight in the netns `peer_netns_fd`; both ends get `mtu`."""
        mtu_attr = attr(IFLA_MTU, _u32(mtu)) if mtu else b""
        peer_msg = (_IFINFO.pack(0, 0, 0, 0, 0) + attr(IFLA_IFNAME, _str(peer)) + mtu_attr
                    + attr(IFLA_NET_NS_FD, _u32(peer_netns_fd)))
        if peer_mac:
            peer_msg += attr(IFLA_ADDRESS, _mac(peer_mac))
        info = attr(IFLA_INFO_KIND, _str("veth")) + attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer_msg))
        body = _IFINFO.pack(0, 0, 0, 0, 0) + attr(IFLA_IFNAME, _str(name)) + mtu_attr + attr(IFLA_LINKINFO, info)
        self.request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)

    def add_macvlan(self, name: str, master: int, mode: str, netns_fd: int | None = None, mtu: int = 0,
                    mac: str = "") -> None:
        """A macvlan on `master` (an index here) in `mode`, created straight in the netns `netns_fd` if given."""
        attrs = attr(IFLA_IFNAME, _str(name)) + attr(IFLA_LINK, _u32(master))
        if netns_fd is not None:
            attrs += attr(IFLA_NET_NS_FD, _u32(netns_fd))
        if mtu:
            attrs += attr(IFLA_MTU, _u32(mtu))
        if mac:
            attrs += attr(IFLA_ADDRESS, _mac(mac))
        data = attr(IFLA_MACVLAN_MODE, _u32(MACVLAN_MODE_IDS[mode]))
        attrs += attr(IFLA_LINKINFO, attr(IFLA_INFO_KIND, _str("macvlan")) + attr(IFLA_INFO_DATA, data))
        self.request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, _IFINFO.pack(0, 0, 0, 0, 0) + attrs)

    def del_address(self, index: int, address: str, prefixlen: int) -> None:
        ip = ipaddress.ip_address(address)
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        body = _IFADDR.pack(family, prefixlen, 0, 0, index)
        if ip.version == 4:
            body += attr(IFA_LOCAL, ip.packed)
        body += attr(IFA_ADDRESS, ip.packed)
        self.request(RTM_DELADDR, NLM_F_ACK, body)

    def add_address(self, index: int, address: str, prefixlen: int, flags: int = 0, broadcast: str = "") -> None:
        ip = ipaddress.ip_address(address)
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        body = _IFADDR.pack(family, prefixlen, flags & 0xFF, 0, index)
        if ip.version == 4:
            body += attr(IFA_LOCAL, ip.packed)
        body += attr(IFA_ADDRESS, ip.packed)
        if broadcast:
            body += attr(IFA_BROADCAST, ipaddress.ip_address(broadcast).packed)
        if flags:
            body += attr(IFA_FLAGS, _u32(flags))
        self.request(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)

    def add_route(self, dst: str, oif: int, gateway: str = "", scope: int = 0, prefsrc: str = "", priority: int = 0,
                  table: int = 0, metrics: dict[int, int] | None = None) -> None:
        """A unicast route (proto static, main table unless `table`), as pyroute2's `route("add")` makes it."""
        net = ipaddress.ip_network(dst, strict=False)
        family = socket.AF_INET if net.version == 4 else socket.AF_INET6
        table = table or RT_TABLE_MAIN
        body = _RTMSG.pack(family, net.prefixlen, 0, 0, min(table, 255), RTPROT_STATIC, scope, RTN_UNICAST, 0)
        body += attr(RTA_TABLE, _u32(table)) + attr(RTA_DST, net.network_address.packed) + attr(RTA_OIF, _u32(oif))
        if gateway:
            body += attr(RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
        if prefsrc:
            body += attr(RTA_PREFSRC, ipaddress.ip_address(prefsrc).packed)
        if priority:
            body += attr(RTA_PRIORITY, _u32(priority))
        if metrics:
            body += attr(RTA_METRICS, b"".join(attr(k, _u32(v)) for k, v in sorted(metrics.items())))
        self.request(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)


def _link(payload: bytes) -> Link:
    _, _, index, flags, _ = _IFINFO.unpack_from(payload)
    attrs = _attrs(payload, _IFINFO.size)
    info = _attrs(attrs.get(IFLA_LINKINFO, b""))

    def u32(key: int) -> int:
        raw = attrs.get(key)
        return struct.unpack("=I", raw[:4])[0] if raw and len(raw) >= 4 else 0

    operstate = attrs.get(IFLA_OPERSTATE, b"\0")[0]
    return Link(
        index=index,
        name=attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(),
        mac=":".join(f"{b:02x}" for b in attrs.get(IFLA_ADDRESS, b"")),
        mtu=u32(IFLA_MTU),
        kind=info.get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode(),
        master=u32(IFLA_MASTER),
        operstate=_OPERSTATES[operstate] if operstate < len(_OPERSTATES) else "UNKNOWN",
        flags=flags,
        link=u32(IFLA_LINK),
        info_data=_attrs(info.get(IFLA_INFO_DATA, b"")),
        link_netnsid=struct.unpack("=i", attrs[IFLA_LINK_NETNSID][:4])[0] if IFLA_LINK_NETNSID in attrs else None,
    )


def _route(payload: bytes) -> Route:
    fam, dst_len, _, _, table, _, _, _, _ = _RTMSG.unpack_from(payload)
    attrs = _attrs(payload, _RTMSG.size)
    version = 4 if fam == socket.AF_INET else 6
    zero = "0.0.0.0" if version == 4 else "::"
    dst = str(ipaddress.ip_address(attrs[RTA_DST])) if RTA_DST in attrs else zero
    gateway = str(ipaddress.ip_address(attrs[RTA_GATEWAY])) if RTA_GATEWAY in attrs else ""
    oif = struct.unpack("=I", attrs[RTA_OIF][:4])[0] if RTA_OIF in attrs else 0
    if RTA_TABLE in attrs:
        table = struct.unpack("=I", attrs[RTA_TABLE][:4])[0]
    return Route(version, dst, dst_len, gateway, oif, table)
