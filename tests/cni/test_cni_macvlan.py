"""Mode `macvlan` end to end. The kernel here has no dummy driver, so the master is one end of a veth pair whose
other end sits in a "router" namespace holding the gateway address."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cni_helpers import (
    Netns,
    Scenario,
    assert_no_debris,
    cni_env,
    ping,
    random_subnet,
    random_subnet6,
    reservation_files,
    run_vnfio,
)


@dataclass(frozen=True)
class Segment:
    """A master link in the host, wired to a router netns that answers on the gateway address."""

    master: str
    router: Netns
    subnet: ipaddress.IPv4Network

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)


@pytest.fixture
def segment(world: Scenario) -> Segment:
    master, far_end = world.veth_pair("mvm")
    router = world.netns()
    subnet = random_subnet()
    subprocess.run(["ip", "link", "set", far_end, "netns", router.name], check=True)
    router.ip("addr", "add", f"{subnet.network_address + 1}/24", "dev", far_end)
    router.ip("link", "set", far_end, "up")
    return Segment(master=master, router=router, subnet=subnet)


def _conf(world: Scenario, segment: Segment, **extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": "macvlan-test", "type": "vnfio", "mode": "macvlan",
            "master": segment.master,
            "ipam": world.host_local(str(segment.subnet), routes=[{"dst": "0.0.0.0/0"}]), **extra}


def _ip(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)


def test_two_pods_reach_each_other_and_the_gateway(world: Scenario, segment: Segment) -> None:
    conf = _conf(world, segment)
    a, b = world.netns(), world.netns()
    ra = run_vnfio(cni_env("ADD", "pod-a", a.path), conf)
    rb = run_vnfio(cni_env("ADD", "pod-b", b.path), conf)
    assert ra.code == 0, ra.out
    assert rb.code == 0, rb.out
    (iface,) = ra.json["interfaces"]
    assert iface["name"] == "eth0" and iface["sandbox"] == a.path
    assert ra.json["ips"][0]["interface"] == 0
    assert ra.json["ips"][0]["gateway"] == segment.gateway
    link = a.links()["eth0"]
    assert link["linkinfo"]["info_kind"] == "macvlan"
    assert link["linkinfo"]["info_data"]["mode"] == "bridge"
    assert link["address"] == iface["mac"]
    assert any(r["dst"] == "default" and r.get("gateway") == segment.gateway for r in a.routes("-4"))

    assert ping(a, segment.gateway)
    assert ping(a, _ip(rb.json["ips"][0]["address"]))

    assert run_vnfio(cni_env("CHECK", "pod-a", a.path), {**conf, "prevResult": ra.json}).code == 0
    for pod, ns, added in (("pod-a", a, ra), ("pod-b", b, rb)):
        out = run_vnfio(cni_env("DEL", pod, ns.path), {**conf, "prevResult": added.json})
        assert (out.code, out.out) == (0, "")
        assert set(ns.links()) == {"lo"}
    assert Path(f"/sys/class/net/{segment.master}").exists()
    assert_no_debris(world)


def test_private_mode_isolates_pods_from_each_other_but_not_from_the_gateway(world: Scenario,
                                                                              segment: Segment) -> None:
    conf = _conf(world, segment, macvlanMode="private")
    a, b = world.netns(), world.netns()
    ra = run_vnfio(cni_env("ADD", "pod-a", a.path), conf)
    rb = run_vnfio(cni_env("ADD", "pod-b", b.path), conf)
    assert ra.code == 0 and rb.code == 0, (ra.out, rb.out)
    assert a.links()["eth0"]["linkinfo"]["info_data"]["mode"] == "private"
    assert ping(a, segment.gateway)
    assert not ping(a, _ip(rb.json["ips"][0]["address"]), attempts=1, timeout=0.5)
    # CHECK compares the kernel's mode with the config's
    out = run_vnfio(cni_env("CHECK", "pod-a", a.path), {**conf, "macvlanMode": "vepa", "prevResult": ra.json})
    assert out.code != 0
    assert "vepa" in out.json["msg"]
    for pod, ns in (("pod-a", a), ("pod-b", b)):
        assert run_vnfio(cni_env("DEL", pod, ns.path), conf).code == 0
    assert_no_debris(world)


def test_an_mtu_above_the_masters_is_refused(world: Scenario, segment: Segment) -> None:
    conf = _conf(world, segment, mtu=9000)
    ns = world.netns()
    out = run_vnfio(cni_env("ADD", "pod-a", ns.path), conf)
    assert out.error_code == 7
    assert "9000" in out.json["msg"]
    assert set(ns.links()) == {"lo"}
    assert_no_debris(world)


def test_a_missing_master_is_named(world: Scenario, segment: Segment) -> None:
    conf = _conf(world, segment, master=world.link_name("gone"))
    ns = world.netns()
    out = run_vnfio(cni_env("ADD", "pod-a", ns.path), conf)
    assert out.error_code == 7
    assert conf["master"] in out.json["msg"]
    assert set(ns.links()) == {"lo"}
    assert_no_debris(world)


def test_an_interface_name_already_taken_leaves_no_macvlan_and_no_reservation(world: Scenario,
                                                                              segment: Segment) -> None:
    conf = _conf(world, segment)
    ns = world.netns()
    ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "other0")
    out = run_vnfio(cni_env("ADD", "pod-a", ns.path), conf)
    assert out.code != 0
    assert "already exists" in out.json["msg"]
    assert set(ns.links()) == {"lo", "eth0", "other0"}
    assert_no_debris(world)


def test_link_in_container_takes_the_default_route_link_of_the_pod(world: Scenario, segment: Segment) -> None:
    """linkInContainer: the master lives in the pod netns; without `master` it is the pod's default route link."""
    ns = world.netns()
    ns.ip("link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
    for end in ("uplink0", "uplink1", "lo"):
        ns.ip("link", "set", end, "up")
    ns.ip("addr", "add", "192.0.2.2/24", "dev", "uplink0")
    ns.ip("route", "add", "default", "via", "192.0.2.1", "dev", "uplink0")
    conf = _conf(world, segment, linkInContainer=True)
    del conf["master"]
    conf["ipam"] = world.host_local(str(segment.subnet))  # no default route: the pod has one already
    added = run_vnfio(cni_env("ADD", "pod-a", ns.path, ifname="net1"), conf)
    assert added.code == 0, added.out
    links = ns.links()
    assert links["net1"]["linkinfo"]["info_kind"] == "macvlan"
    assert links["net1"]["link"] == "uplink0"
    assert run_vnfio(cni_env("CHECK", "pod-a", ns.path, ifname="net1"), {**conf, "prevResult": added.json}).code == 0
    assert run_vnfio(cni_env("DEL", "pod-a", ns.path, ifname="net1"), conf).code == 0
    assert "net1" not in ns.links()
    assert_no_debris(world)


def test_a_route_the_pod_already_has_is_kept_and_the_add_succeeds(world: Scenario, segment: Segment) -> None:
    """The first one wins, as in the reference (a Multus pod's second attachment): the pod's default route stays,
    CHECK accepts it, and DEL leaves it and its link alone."""
    ns = world.netns()
    ns.ip("link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
    for end in ("uplink0", "uplink1"):
        ns.ip("link", "set", end, "up")
    ns.ip("addr", "add", "192.0.2.2/24", "dev", "uplink0")
    ns.ip("route", "add", "default", "via", "192.0.2.1", "dev", "uplink0")
    conf = _conf(world, segment)
    out = run_vnfio(cni_env("ADD", "pod-a", ns.path, ifname="net1"), conf)
    assert out.code == 0, out.out
    assert {"dst": "0.0.0.0/0"} in out.json["routes"]
    defaults = [r for r in ns.routes() if r["dst"] == "default"]
    assert [(r["gateway"], r["dev"]) for r in defaults] == [("192.0.2.1", "uplink0")]
    assert out.json["ips"][0]["address"] in ns.addresses("net1")
    checked = run_vnfio(cni_env("CHECK", "pod-a", ns.path, ifname="net1"), {**conf, "prevResult": out.json})
    assert checked.code == 0, checked.out
    assert run_vnfio(cni_env("DEL", "pod-a", ns.path, ifname="net1"), {**conf, "prevResult": out.json}).code == 0
    assert set(ns.links()) == {"lo", "uplink0", "uplink1"}
    assert [(r["gateway"], r["dev"]) for r in ns.routes() if r["dst"] == "default"] == [("192.0.2.1", "uplink0")]
    assert_no_debris(world)


def test_del_after_the_netns_is_gone_releases_the_address(world: Scenario, segment: Segment) -> None:
    conf = _conf(world, segment)
    ns = world.netns()
    added = run_vnfio(cni_env("ADD", "pod-a", ns.path), conf)
    assert added.code == 0, added.out
    assert reservation_files(world.data_dir)
    ns.close()
    assert run_vnfio(cni_env("DEL", "pod-a", ns.path), {**conf, "prevResult": added.json}).code == 0
    assert_no_debris(world)


def test_dual_stack_waits_for_duplicate_address_detection(world: Scenario, segment: Segment) -> None:
    """DAD stays on for macvlan (the pod shares the master's segment): with an IPv6 gateway, ADD returns only once
    the addresses are no longer tentative, so the pod can use them right away."""
    subnet6 = random_subnet6()
    gateway6 = str(subnet6.network_address + 1)
    far_end = next(name for name in segment.router.links() if name != "lo")
    segment.router.ip("addr", "add", f"{gateway6}/64", "dev", far_end, "nodad")
    conf = _conf(world, segment, mac="0a:58:00:00:00:01")
    conf["ipam"] = world.host_local(str(segment.subnet), str(subnet6))
    ns = world.netns()
    added = run_vnfio(cni_env("ADD", "pod-a", ns.path, args="MAC=0a:58:0a:0b:0c:0d"), conf)
    assert added.code == 0, added.out
    v6 = added.json["ips"][1]["address"]
    assert added.json["ips"][1]["gateway"] == gateway6
    addr_info = json.loads(ns.ip("-j", "-6", "addr", "show", "dev", "eth0").stdout)[0]["addr_info"]
    mine = [a for a in addr_info if f"{a['local']}/{a['prefixlen']}" == v6]
    assert mine and not mine[0].get("tentative")
    assert ns.links()["eth0"]["address"] == "0a:58:0a:0b:0c:0d"  # CNI_ARGS MAC wins over the config's `mac`
    assert ping(ns, gateway6)
    assert ping(ns, segment.gateway)
    assert run_vnfio(cni_env("DEL", "pod-a", ns.path), conf).code == 0
    assert_no_debris(world)


def test_the_configs_own_mac(world: Scenario, segment: Segment) -> None:
    conf = _conf(world, segment, mac="0A:58:00:00:00:01")
    ns = world.netns()
    added = run_vnfio(cni_env("ADD", "pod-a", ns.path), conf)
    assert added.code == 0, added.out
    assert ns.links()["eth0"]["address"] == "0a:58:00:00:00:01"
    assert added.json["interfaces"][0]["mac"] == "0a:58:00:00:00:01"
    assert run_vnfio(cni_env("CHECK", "pod-a", ns.path), {**conf, "prevResult": added.json}).code == 0
    assert run_vnfio(cni_env("DEL", "pod-a", ns.path), conf).code == 0
    assert_no_debris(world)
