"""`cni.rtnl`, the raw rtnetlink client of the ADD path, against the kernel: what it creates is what `ip` sees."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from cni_helpers import Netns, Scenario, random_subnet, random_subnet6

from cni.rtnl import IFLA_MACVLAN_MODE, MACVLAN_MODE_IDS, RTAX_ADVMSS, RTAX_MTU, Rtnl, RtnlError


@pytest.fixture
def pod(world: Scenario) -> Iterator[tuple[Netns, int, Rtnl]]:
    """A netns, an fd on it, and an `Rtnl` whose socket lives in it."""
    ns = world.netns()
    fd = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
    rtnl = ns.run(lambda: Rtnl())
    try:
        yield ns, fd, rtnl
    finally:
        rtnl.close()
        os.close(fd)


def _host_link(name: str) -> dict[str, Any]:
    out = subprocess.run(["ip", "-j", "-d", "link", "show", name], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)[0]


def test_veth_with_its_peer_in_a_netns_configured_in_one_request(world: Scenario, pod: tuple[Netns, int, Rtnl]) -> None:
    ns, fd, in_pod = pod
    host = Rtnl()
    name = world.link_name("rt")
    try:
        host.add_veth(name, "eth0", fd, mtu=1420, peer_mac="02:aa:bb:cc:dd:ee")
        peer = ns.links()["eth0"]
        assert peer["mtu"] == 1420 and peer["address"] == "02:aa:bb:cc:dd:ee"
        assert peer["linkinfo"]["info_kind"] == "veth"
        mine = _host_link(name)
        assert mine["mtu"] == 1420
        state = host.get_link(name=name)
        assert (state.name, state.kind, state.mtu, state.mac) == (name, "veth", 1420, mine["address"])
        assert state.index == mine["ifindex"]
        assert in_pod.get_link(name="eth0").link == state.index  # IFLA_LINK: the peer's index, across namespaces
        with pytest.raises(RtnlError) as taken:
            host.add_veth(name, "eth1", fd)
        assert taken.value.code == errno.EEXIST
    finally:
        host.close()


def test_set_link_up_master_name_mac_promisc_and_delete(world: Scenario) -> None:
    host = Rtnl()
    bridge, port, renamed = world.link_name("rb"), world.link_name("rp"), world.link_name("rn")
    other = world.link_name("ro")
    try:
        subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "link", "add", port, "type", "veth", "peer", "name", other], check=True)
        br = host.get_link(name=bridge)
        assert br.kind == "bridge" and not br.flags & 1
        host.set_link(index=br.index, up=True, promisc=True, mac="02:00:00:00:00:42")
        seen = _host_link(bridge)
        assert "UP" in seen["flags"] and seen["promiscuity"] >= 1 and seen["address"] == "02:00:00:00:00:42"
        host.set_link(name=port, master=br.index, up=True)
        assert host.get_link(name=port).master == br.index
        assert _host_link(port)["master"] == bridge
        host.set_link(index=host.get_link(name=port).index, ifname=renamed)
        assert host.get_link(name=renamed).master == br.index
        host.del_link(renamed)
        for gone in (renamed, other):
            with pytest.raises(RtnlError) as missing:
                host.get_link(name=gone)
            assert missing.value.code == errno.ENODEV
        with pytest.raises(RtnlError) as missing:
            host.del_link(renamed)
        assert missing.value.code == errno.ENODEV
    finally:
        host.close()


def test_addresses_and_routes_as_ip_shows_them(world: Scenario, pod: tuple[Netns, int, Rtnl]) -> None:
    ns, _, rtnl = pod
    ns.ip("link", "add", "a0", "type", "veth", "peer", "name", "b0")
    ns.ip("link", "set", "b0", "up")
    index = rtnl.get_link(name="a0").index
    rtnl.set_link(index=index, up=True)
    net4, net6 = random_subnet(), random_subnet6()
    ip4, gw4, ip6 = str(net4.network_address + 5), str(net4.network_address + 1), str(net6.network_address + 5)
    rtnl.add_address(index, ip4, 24)
    rtnl.add_address(index, ip6, 64, flags=0x02 | 0x200)  # IFA_F_NODAD | IFA_F_NOPREFIXROUTE (needs IFA_FLAGS)
    assert ns.addresses("a0") >= {f"{ip4}/24", f"{ip6}/64"}
    six = next(a for a in ns.ip("-6", "addr", "show", "dev", "a0").stdout.splitlines() if ip6 in a)
    assert "nodad" in six and "noprefixroute" in six
    with pytest.raises(RtnlError) as twice:
        rtnl.add_address(index, ip4, 24)
    assert twice.value.code == errno.EEXIST

    rtnl.add_route("10.9.0.0/16", index, gateway=gw4, priority=7, metrics={RTAX_MTU: 1300, RTAX_ADVMSS: 1200})
    rtnl.add_route(f"{gw4}/32", index, scope=253, prefsrc=ip4)
    rtnl.add_route("10.8.0.0/16", index, gateway=gw4, table=100)
    routes = {r["dst"]: r for r in ns.routes()}
    assert routes["10.9.0.0/16"]["gateway"] == gw4 and routes["10.9.0.0/16"]["metric"] == 7
    assert routes["10.9.0.0/16"]["protocol"] == "static"
    assert {m_key for m in routes["10.9.0.0/16"]["metrics"] for m_key in m} >= {"mtu", "advmss"}
    assert routes[gw4]["scope"] == "link" and routes[gw4]["prefsrc"] == ip4
    assert "10.8.0.0/16" not in routes
    assert "10.8.0.0/16 via" in ns.ip("route", "show", "table", "100").stdout
    with pytest.raises(RtnlError) as unreachable:
        rtnl.add_route("10.7.0.0/16", index, gateway="192.0.2.1")  # not on any link
    assert unreachable.value.code == errno.ENETUNREACH


@pytest.mark.parametrize("mode", ["bridge", "private", "vepa"])
def test_macvlan_created_in_a_netns_in_its_mode(world: Scenario, pod: tuple[Netns, int, Rtnl], mode: str) -> None:
    ns, fd, in_pod = pod
    master, _ = world.veth_pair("rm")
    host = Rtnl()
    try:
        host.add_macvlan("mvtest0", host.get_link(name=master).index, mode, fd, mtu=1400, mac="02:12:34:56:78:9a")
        link = ns.links()["mvtest0"]
        assert link["linkinfo"]["info_kind"] == "macvlan"
        assert link["linkinfo"]["info_data"]["mode"] == mode
        assert (link["mtu"], link["address"]) == (1400, "02:12:34:56:78:9a")
        mode_attr = in_pod.get_link(name="mvtest0").info_data[IFLA_MACVLAN_MODE]
        assert int.from_bytes(mode_attr[:4], sys.byteorder) == MACVLAN_MODE_IDS[mode]
        with pytest.raises(RtnlError) as missing:
            host.get_link(name="mvtest0")  # made in the pod, not here
        assert missing.value.code == errno.ENODEV
    finally:
        host.close()


def test_dumps_are_filtered_to_the_link_family_and_table(world: Scenario, pod: tuple[Netns, int, Rtnl]) -> None:
    ns, _, rtnl = pod
    ns.ip("link", "add", "a0", "type", "veth", "peer", "name", "b0")
    for end in ("a0", "b0"):
        ns.ip("link", "set", end, "up")
    a0, b0 = rtnl.get_link(name="a0").index, rtnl.get_link(name="b0").index
    net, net6 = random_subnet(), random_subnet6()
    ip_a, ip_b, ip6 = str(net.network_address + 2), str(net.network_address + 3), str(net6.network_address + 2)
    ns.ip("addr", "add", f"{ip_a}/24", "dev", "a0")
    ns.ip("addr", "add", f"{ip_b}/24", "dev", "b0")
    ns.ip("-6", "addr", "add", f"{ip6}/64", "dev", "a0", "nodad")
    assert {(a.family, a.address, a.prefixlen) for a in rtnl.addresses(a0, 4)} == {(4, ip_a, 24)}
    sixes = {a.address: a for a in rtnl.addresses(a0, 6)}
    assert ip6 in sixes and sixes[ip6].flags & 0x02  # IFA_F_NODAD, read from IFA_FLAGS
    assert ip_b not in {a.address for a in rtnl.addresses(a0)}

    ns.ip("route", "add", "10.9.0.0/16", "via", str(net.network_address + 1), "dev", "a0")
    ns.ip("route", "add", "10.8.0.0/16", "dev", "b0", "table", "100")
    main = {(r.dst, r.dst_len, r.gateway, r.oif) for r in rtnl.routes(4)}
    assert ("10.9.0.0", 16, str(net.network_address + 1), a0) in main
    assert not any(r.dst == "10.8.0.0" for r in rtnl.routes(4))
    assert [(r.dst, r.oif, r.table) for r in rtnl.routes(4, table=100)] == [("10.8.0.0", b0, 100)]
    assert any(r.dst == str(net6.network_address) and r.dst_len == 64 for r in rtnl.routes(6))

    found = rtnl.route_get("10.9.1.1")
    assert (found.oif, found.gateway, found.table) == (a0, str(net.network_address + 1), 254)
    with pytest.raises(RtnlError) as unreachable:
        rtnl.route_get("192.0.2.1")
    assert unreachable.value.code == errno.ENETUNREACH

    assert {link.name for link in rtnl.links()} == {"lo", "a0", "b0"}
    assert {link.kind for link in rtnl.links() if link.name != "lo"} == {"veth"}
