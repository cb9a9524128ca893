"""vnfio next to Debian's reference plugins (/usr/lib/cni): the same networks give results of the same shape, and
results flow both ways through a chain (a reference plugin's prevResult into vnfio, and vnfio's into one)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from cni_helpers import (
    REFERENCE_DIR,
    Outcome,
    Scenario,
    assert_no_debris,
    cni_env,
    ping,
    random_subnet,
    run_reference,
    run_vnfio,
)

pytestmark = pytest.mark.skipif(not (REFERENCE_DIR / "bridge").exists(), reason="no reference plugins in /usr/lib/cni")

VERSION = "1.0.0"  # the newest version Debian's plugins (1.1.1) speak


def _shape(result: dict[str, Any]) -> dict[str, Any]:
    """What a runtime relies on: keys, interface order and kind of name, which interface each ip is on."""

    def kind(iface: dict[str, Any]) -> str:
        if "sandbox" in iface:
            return f"container:{iface['name']}"
        return "veth" if iface["name"].startswith("veth") else "bridge"

    return {
        "keys": sorted(result),
        "interfaces": [(kind(i), sorted(i)) for i in result.get("interfaces", [])],
        "ips": [(sorted(ip), ip.get("interface"), ipaddress.ip_interface(ip["address"]).version)
                for ip in result.get("ips", [])],
        "routes": [sorted(r) for r in result.get("routes", [])],
        "dns": result.get("dns"),
    }


def _pair(world: Scenario, ours: dict[str, Any], reference: dict[str, Any], plugin: str,
          reach_gateway: bool = True) -> tuple[Outcome, Outcome]:
    """ADD with vnfio and the reference plugin into two fresh pods, check both work, DEL both."""
    mine, theirs = world.netns(), world.netns()
    a = run_vnfio(cni_env("ADD", "ours", mine.path), ours)
    b = run_reference(plugin, cni_env("ADD", "theirs", theirs.path), reference)
    assert a.code == 0, a.out
    assert b.code == 0, b.out
    for ns, result in ((mine, a.json), (theirs, b.json)):
        gateway = result["ips"][0].get("gateway")
        if reach_gateway:
            assert ping(ns, gateway)
    assert run_vnfio(cni_env("CHECK", "ours", mine.path), {**ours, "prevResult": a.json}).code == 0
    assert run_reference(plugin, cni_env("CHECK", "theirs", theirs.path), {**reference, "prevResult": b.json}).code == 0
    assert run_vnfio(cni_env("DEL", "ours", mine.path), {**ours, "prevResult": a.json}).code == 0
    assert run_reference(plugin, cni_env("DEL", "theirs", theirs.path), {**reference, "prevResult": b.json}).code == 0
    assert set(mine.links()) == {"lo"}
    assert set(theirs.links()) == {"lo"}
    return a, b


def test_bridge_results_have_the_reference_shape(world: Scenario) -> None:
    common = {"cniVersion": VERSION, "name": "ref-bridge", "isGateway": True}
    ours = {**common, "type": "vnfio", "mode": "bridge", "bridge": world.link_name("brv"),
            "ipam": world.host_local(str(random_subnet()), routes=[{"dst": "0.0.0.0/0"}])}
    theirs = {**common, "type": "bridge", "bridge": world.link_name("brr"),
              "ipam": world.host_local(str(random_subnet()), routes=[{"dst": "0.0.0.0/0"}])}
    a, b = _pair(world, ours, theirs, "bridge")
    assert _shape(a.json) == _shape(b.json)
    assert [ip["interface"] for ip in a.json["ips"]] == [2]
    assert_no_debris(world)


def test_veth_results_have_the_ptp_shape(world: Scenario) -> None:
    common = {"cniVersion": VERSION, "name": "ref-ptp"}
    ours = {**common, "type": "vnfio", "mode": "veth",
            "ipam": world.host_local(str(random_subnet()), routes=[{"dst": "0.0.0.0/0"}])}
    theirs = {**common, "type": "ptp",
              "ipam": world.host_local(str(random_subnet()), routes=[{"dst": "0.0.0.0/0"}])}
    a, b = _pair(world, ours, theirs, "ptp")
    assert _shape(a.json) == _shape(b.json)
    assert [ip["interface"] for ip in a.json["ips"]] == [1]
    assert_no_debris(world)


def test_macvlan_results_have_the_reference_shape(world: Scenario) -> None:
    master, _ = world.veth_pair("mvr")
    common = {"cniVersion": VERSION, "name": "ref-macvlan", "master": master}
    ours = {**common, "type": "vnfio", "mode": "macvlan", "macvlanMode": "bridge",
            "ipam": world.host_local(str(random_subnet()))}
    theirs = {**common, "type": "macvlan", "mode": "bridge", "ipam": world.host_local(str(random_subnet()))}
    a, b = _pair(world, ours, theirs, "macvlan", reach_gateway=False)  # nothing answers behind this master
    assert _shape(a.json) == _shape(b.json)
    assert_no_debris(world)


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_results_at_older_versions_match_the_reference(world: Scenario, version: str) -> None:
    ours = {"cniVersion": version, "name": "ref-old", "type": "vnfio", "mode": "veth",
            "ipam": world.host_local(str(random_subnet()))}
    theirs = {"cniVersion": version, "name": "ref-old", "type": "ptp", "ipam": world.host_local(str(random_subnet()))}
    a, b = _pair(world, ours, theirs, "ptp")
    assert a.json["cniVersion"] == b.json["cniVersion"] == version
    assert _shape(a.json) == _shape(b.json)
    assert_no_debris(world)


def test_a_chain_through_reference_plugins_both_ways(world: Scenario) -> None:
    """ptp (reference) on eth0 → vnfio bridge on net1 with ptp's result → tuning (reference) with ours."""
    ns = world.netns()
    ptp = {"cniVersion": VERSION, "name": "mixed", "type": "ptp",
           "ipam": world.host_local(str(random_subnet()))}
    ours = {"cniVersion": VERSION, "name": "mixed", "type": "vnfio", "mode": "bridge",
            "bridge": world.link_name("brc"), "isGateway": True, "ipam": world.host_local(str(random_subnet()))}
    tuning = {"cniVersion": VERSION, "name": "mixed", "type": "tuning",
              "sysctl": {"net.ipv4.conf.net1.arp_ignore": "1"}}
    first = run_reference("ptp", cni_env("ADD", "mixed", ns.path), ptp)
    assert first.code == 0, first.out
    second = run_vnfio(cni_env("ADD", "mixed", ns.path, ifname="net1"), {**ours, "prevResult": first.json})
    assert second.code == 0, second.out
    third = run_reference("tuning", cni_env("ADD", "mixed", ns.path, ifname="net1"),
                          {**tuning, "prevResult": second.json})
    assert third.code == 0, third.out
    final = third.json
    assert [i["name"] for i in final["interfaces"]][1] == "eth0"
    assert final["interfaces"][4]["name"] == "net1"
    assert [ip["interface"] for ip in final["ips"]] == [1, 4]
    assert ns.run(lambda: Path("/proc/sys/net/ipv4/conf/net1/arp_ignore").read_text().strip()) == "1"
    assert ping(ns, final["ips"][1]["gateway"])

    assert run_vnfio(cni_env("CHECK", "mixed", ns.path, ifname="net1"), {**ours, "prevResult": final}).code == 0
    # (ptp 1.1.1's own CHECK is not run here: it expects every ip of prevResult on its interface, net1's too)
    for plugin, conf, ifname in (("tuning", tuning, "net1"), ("vnfio", ours, "net1"), ("ptp", ptp, "eth0")):
        env = cni_env("DEL", "mixed", ns.path, ifname=ifname)
        out = run_vnfio(env, {**conf, "prevResult": final}) if plugin == "vnfio" else run_reference(
            plugin, env, {**conf, "prevResult": final})
        assert out.code == 0, out.out
    assert set(ns.links()) == {"lo"}
    assert_no_debris(world)
