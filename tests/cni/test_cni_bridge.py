"""Mode `bridge` end to end in real namespaces: gateway, options, parallel ADDs on one bridge, chaining."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cni_helpers import (
    Scenario,
    assert_no_debris,
    cni_env,
    ping,
    random_subnet,
    random_subnet6,
    run_vnfio,
)


def _conf(world: Scenario, bridge: str, *subnets: str, **extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": "bridge-test", "type": "vnfio", "mode": "bridge", "bridge": bridge,
            "ipam": world.host_local(*subnets), **extra}


def _ip(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)


def _link(name: str) -> dict[str, Any]:
    return json.loads(subprocess.run(["ip", "-j", "-d", "link", "show", "dev", name], capture_output=True,
                                     text=True, check=True).stdout)[0]


def _ports(bridge: str) -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show", "master", bridge], capture_output=True, text=True).stdout
    return {link["ifname"] for link in json.loads(out or "[]")}


def _bridge_addresses(bridge: str) -> set[str]:
    out = json.loads(subprocess.run(["ip", "-j", "addr", "show", "dev", bridge], capture_output=True, text=True,
                                    check=True).stdout)
    return {f"{a['local']}/{a['prefixlen']}" for e in out for a in e["addr_info"] if a.get("scope") != "link"}


def test_two_pods_on_a_gateway_bridge_dual_stack(world: Scenario) -> None:
    bridge = world.link_name("br")
    subnet, subnet6 = random_subnet(), random_subnet6()
    conf = _conf(world, bridge, str(subnet), str(subnet6), isDefaultGateway=True)
    a, b = world.netns(), world.netns()
    ra = run_vnfio(cni_env("ADD", "pod-a", a.path), conf)
    rb = run_vnfio(cni_env("ADD", "pod-b", b.path), conf)
    assert ra.code == 0, ra.out
    assert rb.code == 0, rb.out
    result = ra.json
    br, host_veth, pod_if = result["interfaces"]
    assert br["name"] == bridge and "sandbox" not in br
    assert host_veth["name"].startswith("veth") and "sandbox" not in host_veth
    assert pod_if["name"] == "eth0" and pod_if["sandbox"] == a.path
    assert [ip["interface"] for ip in result["ips"]] == [2, 2]
    gw4, gw6 = (ip["gateway"] for ip in result["ips"])
    assert gw4 == str(subnet.network_address + 1)
    assert {"dst": "0.0.0.0/0", "gw": gw4} in result["routes"]
    assert {"dst": "::/0", "gw": gw6} in result["routes"]

    # what the kernel shows: the port on the bridge with the MAC reported, the gateway on the bridge
    assert _ports(bridge) == {host_veth["name"], rb.json["interfaces"][1]["name"]}
    assert _link(host_veth["name"])["address"] == host_veth["mac"]
    assert _link(bridge)["address"] == rb.json["interfaces"][0]["mac"]
    assert _bridge_addresses(bridge) == {f"{gw4}/24", f"{gw6}/64"}
    assert any(r["dst"] == "default" and r.get("gateway") == gw4 for r in a.routes("-4"))

    peer4, peer6 = (_ip(ip["address"]) for ip in rb.json["ips"])
    assert ping(a, gw4) and ping(a, peer4)
    assert ping(a, gw6) and ping(a, peer6)

    assert run_vnfio(cni_env("CHECK", "pod-a", a.path), {**conf, "prevResult": result}).code == 0
    for pod, ns, added in (("pod-a", a, ra), ("pod-b", b, rb)):
        out = run_vnfio(cni_env("DEL", pod, ns.path), {**conf, "prevResult": added.json})
        assert (out.code, out.out) == (0, "")
        assert set(ns.links()) == {"lo"}
    assert _ports(bridge) == set()
    assert_no_debris(world)


def test_check_notices_a_port_taken_off_the_bridge(world: Scenario) -> None:
    bridge = world.link_name("br")
    conf = _conf(world, bridge, str(random_subnet()), isGateway=True)
    ns = world.netns()
    added = run_vnfio(cni_env("ADD", "pod-a", ns.path), conf)
    assert added.code == 0, added.out
    conf["prevResult"] = added.json
    subprocess.run(["ip", "link", "set", added.json["interfaces"][1]["name"], "nomaster"], check=True)
    out = run_vnfio(cni_env("CHECK", "pod-a", ns.path), conf)
    assert out.code != 0
    assert bridge in out.json["msg"]
    assert run_vnfio(cni_env("DEL", "pod-a", ns.path), conf).code == 0
    assert_no_debris(world)


def test_port_options_mtu_and_hairpin(world: Scenario) -> None:
    bridge = world.link_name("br")
    conf = _conf(world, bridge, str(random_subnet()), mtu=1400, hairpinMode=True)
    ns = world.netns()
    added = run_vnfio(cni_env("ADD", "pod-a", ns.path), conf)
    assert added.code == 0, added.out
    host_veth = added.json["interfaces"][1]["name"]
    assert _link(bridge)["mtu"] == 1400
    assert _link(host_veth)["mtu"] == 1400
    assert ns.links()["eth0"]["mtu"] == 1400
    assert Path(f"/sys/class/net/{host_veth}/brport/hairpin_mode").read_text().strip() == "1"
    assert Path(f"/proc/sys/net/ipv6/conf/{bridge}/accept_ra").read_text().strip() == "0"
    assert run_vnfio(cni_env("DEL", "pod-a", ns.path), conf).code == 0
    assert_no_debris(world)


def _kernel_has_bridge_vlan_filtering(world: Scenario) -> bool:
    probe = world.link_name("brv")
    subprocess.run(["ip", "link", "add", probe, "type", "bridge"], check=True)
    try:
        return Path(f"/sys/class/net/{probe}/bridge/vlan_filtering").exists()
    finally:
        subprocess.run(["ip", "link", "del", probe], check=True)


def test_vlan_makes_an_access_port_or_fails_cleanly_without_kernel_support(world: Scenario) -> None:
    bridge = world.link_name("br")
    conf = _conf(world, bridge, str(random_subnet()), vlan=42)
    ns = world.netns()
    added = run_vnfio(cni_env("ADD", "pod-a", ns.path), conf)
    if not _kernel_has_bridge_vlan_filtering(world):
        # this kernel (no CONFIG_BRIDGE_VLAN_FILTERING) cannot: a clear code 2, no bridge, port or reservation
        assert added.error_code == 2
        assert "vlan" in added.json["msg"]
        assert set(ns.links()) == {"lo"}
        assert not Path(f"/sys/class/net/{bridge}").exists()
        assert_no_debris(world)
        return
    assert added.code == 0, added.out
    host_veth = added.json["interfaces"][1]["name"]
    assert Path(f"/sys/class/net/{bridge}/bridge/vlan_filtering").read_text().strip() == "1"
    vlans = json.loads(subprocess.run(["bridge", "-j", "vlan", "show", "dev", host_veth], capture_output=True,
                                      text=True, check=True).stdout)
    entries = [v for port in vlans for v in port["vlans"]]
    assert entries == [{"vlan": 42, "flags": ["PVID", "Egress Untagged"]}]
    assert run_vnfio(cni_env("DEL", "pod-a", ns.path), conf).code == 0
    assert_no_debris(world)


def test_promisc_mode_sets_the_bridge_promiscuous(world: Scenario) -> None:
    bridge = world.link_name("br")
    conf = _conf(world, bridge, str(random_subnet()), promiscMode=True)
    ns = world.netns()
    added = run_vnfio(cni_env("ADD", "pod-a", ns.path), conf)
    assert added.code == 0, added.out
    assert "PROMISC" in _link(bridge)["flags"]
    assert run_vnfio(cni_env("CHECK", "pod-a", ns.path), {**conf, "prevResult": added.json}).code == 0
    assert run_vnfio(cni_env("DEL", "pod-a", ns.path), conf).code == 0
    assert_no_debris(world)


def test_a_foreign_address_on_the_bridge_needs_force_address(world: Scenario) -> None:
    bridge = world.link_name("br")
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    other = random_subnet()
    subprocess.run(["ip", "addr", "add", f"{other.network_address + 1}/24", "dev", bridge], check=True)
    subnet = random_subnet()
    conf = _conf(world, bridge, str(subnet), isGateway=True)
    ns = world.netns()
    out = run_vnfio(cni_env("ADD", "pod-a", ns.path), conf)
    assert out.code != 0
    assert "forceAddress" in out.json["msg"]
    assert set(ns.links()) == {"lo"}
    assert _ports(bridge) == set()
    assert_no_debris(world)

    conf["forceAddress"] = True
    added = run_vnfio(cni_env("ADD", "pod-a", ns.path), conf)
    assert added.code == 0, added.out
    assert _bridge_addresses(bridge) == {f"{subnet.network_address + 1}/24"}
    assert run_vnfio(cni_env("DEL", "pod-a", ns.path), conf).code == 0
    assert_no_debris(world)


def test_a_non_bridge_link_with_the_bridge_name_is_an_error(world: Scenario) -> None:
    name, _ = world.veth_pair("nb")
    conf = _conf(world, name, str(random_subnet()))
    ns = world.netns()
    out = run_vnfio(cni_env("ADD", "pod-a", ns.path), conf)
    assert out.code != 0
    assert "not a bridge" in out.json["msg"]
    assert set(ns.links()) == {"lo"}
    assert_no_debris(world)


def test_an_unpinned_existing_bridge_gets_its_mac_pinned(world: Scenario) -> None:
    """A bridge left by an ADD killed before the pin (or made by hand) follows its ports' MACs; the next ADD pins it
    (`addr_assign_type` 3 = set explicitly), and the MAC stays when the port goes."""
    bridge = world.link_name("br")
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    assert Path(f"/sys/class/net/{bridge}/addr_assign_type").read_text().strip() != "3"
    conf = _conf(world, bridge, str(random_subnet()))
    ns = world.netns()
    out = run_vnfio(cni_env("ADD", "pod-a", ns.path), conf)
    assert out.code == 0, out.out
    assert Path(f"/sys/class/net/{bridge}/addr_assign_type").read_text().strip() == "3"
    mac = _link(bridge)["address"]
    assert run_vnfio(cni_env("DEL", "pod-a", ns.path), dict(conf, prevResult=out.json)).code == 0
    assert _link(bridge)["address"] == mac


def test_sixteen_parallel_adds_on_one_bridge_get_distinct_addresses(world: Scenario) -> None:
    """The node daemon runs commands in threads: 16 at once through `execute`, no errors, distinct IPs."""
    bridge = world.link_name("br")
    subnet = random_subnet()
    conf = _conf(world, bridge, str(subnet), isGateway=True)
    pods = [world.netns() for _ in range(16)]

    def add(n: int) -> Any:
        return run_vnfio(cni_env("ADD", f"par-{n}", pods[n].path), conf)

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(add, range(16)))
    assert [r.code for r in results] == [0] * 16, [r.out for r in results if r.code]
    addresses = {r.json["ips"][0]["address"] for r in results}
    assert len(addresses) == 16
    assert all(ipaddress.ip_interface(a).network == subnet for a in addresses)
    assert len(_ports(bridge)) == 16
    assert ping(pods[0], _ip(results[15].json["ips"][0]["address"]))

    def delete(n: int) -> Any:
        return run_vnfio(cni_env("DEL", f"par-{n}", pods[n].path), {**conf, "prevResult": results[n].json})

    with ThreadPoolExecutor(max_workers=16) as pool:
        deleted = list(pool.map(delete, range(16)))
    assert [d.code for d in deleted] == [0] * 16
    assert _ports(bridge) == set()
    assert all(set(ns.links()) == {"lo"} for ns in pods)
    assert_no_debris(world)


def test_chaining_consumes_and_produces_prev_result(world: Scenario) -> None:
    """A conflist of two vnfio attachments: veth on eth0, then bridge on net1 with the first result as
    prevResult; the final result carries both, CHECK and DEL run with it, DEL in reverse order."""
    bridge = world.link_name("br")
    first = {"cniVersion": "1.0.0", "name": "chain", "type": "vnfio", "mode": "veth",
             "ipam": world.host_local(str(random_subnet()))}
    second = {"cniVersion": "1.0.0", "name": "chain", "type": "vnfio", "mode": "bridge", "bridge": bridge,
              "isGateway": True, "ipam": world.host_local(str(random_subnet()))}
    ns = world.netns()
    one = run_vnfio(cni_env("ADD", "pod-c", ns.path), first)
    assert one.code == 0, one.out
    two = run_vnfio(cni_env("ADD", "pod-c", ns.path, ifname="net1"), {**second, "prevResult": one.json})
    assert two.code == 0, two.out
    final = two.json
    assert final["cniVersion"] == "1.0.0"
    names = [i["name"] for i in final["interfaces"]]
    assert names[:2] == [one.json["interfaces"][0]["name"], "eth0"]
    assert names[2:4] == [bridge, final["interfaces"][3]["name"]] and names[4] == "net1"
    assert [ip["interface"] for ip in final["ips"]] == [1, 4]
    assert final["ips"][0] == one.json["ips"][0]
    assert set(ns.links()) == {"lo", "eth0", "net1"}

    assert run_vnfio(cni_env("CHECK", "pod-c", ns.path), {**first, "prevResult": final}).code == 0
    check = run_vnfio(cni_env("CHECK", "pod-c", ns.path, ifname="net1"), {**second, "prevResult": final})
    assert (check.code, check.out) == (0, "")
    assert run_vnfio(cni_env("DEL", "pod-c", ns.path, ifname="net1"), {**second, "prevResult": final}).code == 0
    assert run_vnfio(cni_env("DEL", "pod-c", ns.path), {**first, "prevResult": final}).code == 0
    assert set(ns.links()) == {"lo"}
    assert_no_debris(world)


def _masquerade_rules() -> list[str]:
    out = subprocess.run(["nft", "-j", "list", "chain", "inet", "vnfio_masquerade", "postrouting"],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return []
    return [item["rule"].get("comment", "") for item in json.loads(out.stdout)["nftables"] if "rule" in item]


@pytest.mark.skipif(subprocess.run(["which", "nft"], capture_output=True).returncode != 0, reason="no nft command")
def test_ip_masq_lets_a_pod_reach_a_host_that_has_no_route_back(world: Scenario) -> None:
    # a "remote" namespace behind the host, on a link of its own, with no route to the pod subnets
    host_end, remote_end = world.veth_pair("rm")
    remote = world.netns()
    outside = random_subnet()
    subprocess.run(["ip", "link", "set", remote_end, "netns", remote.name], check=True)
    subprocess.run(["ip", "addr", "add", f"{outside.network_address + 1}/24", "dev", host_end], check=True)
    remote.ip("addr", "add", f"{outside.network_address + 2}/24", "dev", remote_end)
    remote.ip("link", "set", remote_end, "up")
    target = str(outside.network_address + 2)

    network = f"masq-{world.tag}"
    conf = {**_conf(world, world.link_name("br"), str(random_subnet()), isDefaultGateway=True, ipMasq=True),
            "name": network}
    plain = {**_conf(world, world.link_name("br"), str(random_subnet()), isDefaultGateway=True),
             "name": f"plain-{world.tag}"}
    masked, unmasked, gone = world.netns(), world.netns(), world.netns()
    assert run_vnfio(cni_env("ADD", "masked", masked.path), conf).code == 0
    assert run_vnfio(cni_env("ADD", "unmasked", unmasked.path), plain).code == 0
    assert run_vnfio(cni_env("ADD", "gone", gone.path), conf).code == 0
    key = f"vnfio:{network}:masked:eth0"
    assert key in _masquerade_rules()

    assert ping(masked, target)
    assert not ping(unmasked, target, attempts=1, timeout=0.5)

    # GC drops the rules (and reservation) of an attachment that is no longer valid
    gc = run_vnfio(cni_env("GC", ifname=""), {**conf, "cni.dev/valid-attachments": [
        {"containerID": "masked", "ifname": "eth0"}]})
    assert (gc.code, gc.out) == (0, "")
    assert f"vnfio:{network}:gone:eth0" not in _masquerade_rules()
    assert key in _masquerade_rules()
    # DEL removes them even when the netns, and with it the pod's addresses, is already gone
    masked.close()
    assert run_vnfio(cni_env("DEL", "masked", masked.path), conf).code == 0
    assert not [rule for rule in _masquerade_rules() if rule.startswith(f"vnfio:{network}:")]
    assert run_vnfio(cni_env("DEL", "unmasked", unmasked.path), plain).code == 0
    assert run_vnfio(cni_env("DEL", "gone", gone.path), conf).code == 0
    assert_no_debris(world)


def _spoofchk_rules() -> str:
    out = subprocess.run(["nft", "list", "chain", "bridge", "vnfio_macspoofchk", "prerouting"], capture_output=True,
                         text=True, check=False)
    return out.stdout if out.returncode == 0 else ""


@pytest.mark.skipif(subprocess.run(["which", "nft"], capture_output=True).returncode != 0, reason="no nft command")
def test_macspoofchk_drops_frames_from_another_mac(world: Scenario) -> None:
    network = f"spoof-{world.tag}"
    conf = {**_conf(world, world.link_name("br"), str(random_subnet()), isGateway=True, macspoofchk=True),
            "name": network}
    a, b = world.netns(), world.netns()
    ra = run_vnfio(cni_env("ADD", "pod-a", a.path), conf)
    rb = run_vnfio(cni_env("ADD", "pod-b", b.path), conf)
    assert ra.code == 0 and rb.code == 0, (ra.out, rb.out)
    peer = _ip(rb.json["ips"][0]["address"])
    rules = _spoofchk_rules()
    port, pod_mac = ra.json["interfaces"][1]["name"], ra.json["interfaces"][2]["mac"]
    assert f'iifname "{port}" ether saddr != {pod_mac} drop' in rules
    assert run_vnfio(cni_env("CHECK", "pod-a", a.path), {**conf, "prevResult": ra.json}).code == 0
    assert ping(a, peer)

    a.ip("link", "set", "eth0", "address", "0a:58:00:de:ad:01")
    assert not ping(a, peer, attempts=1, timeout=0.5)
    a.ip("link", "set", "eth0", "address", ra.json["interfaces"][2]["mac"])
    assert ping(a, peer)

    assert run_vnfio(cni_env("DEL", "pod-a", a.path), conf).code == 0
    b.close()  # the rule goes even when the netns is already gone
    assert run_vnfio(cni_env("DEL", "pod-b", b.path), conf).code == 0
    assert f"vnfio:{network}:" not in _spoofchk_rules()
    assert_no_debris(world)


def test_enabledad_keeps_dad_on_and_waits_for_it(world: Scenario) -> None:
    bridge = world.link_name("br")
    subnet6 = random_subnet6()
    conf = _conf(world, bridge, str(random_subnet()), str(subnet6), isGateway=True, enabledad=True)
    ns = world.netns()
    added = run_vnfio(cni_env("ADD", "pod-a", ns.path), conf)
    assert added.code == 0, added.out
    v6 = added.json["ips"][1]["address"]
    addr_info = json.loads(ns.ip("-j", "-6", "addr", "show", "dev", "eth0").stdout)[0]["addr_info"]
    mine = [a for a in addr_info if f"{a['local']}/{a['prefixlen']}" == v6]
    assert mine and not mine[0].get("tentative") and not mine[0].get("nodad")
    assert ping(ns, added.json["ips"][1]["gateway"])
    assert run_vnfio(cni_env("DEL", "pod-a", ns.path), conf).code == 0
    assert_no_debris(world)


def _bridge_id(bridge: str) -> str:
    return Path(f"/sys/class/net/{bridge}/bridge/bridge_id").read_text().strip()


def test_the_bridge_id_is_derived_from_the_pinned_bridge_mac(world: Scenario) -> None:
    bridge = world.link_name("br")
    conf = _conf(world, bridge, str(random_subnet()), isGateway=True)
    a, b = world.netns(), world.netns()
    ra = run_vnfio(cni_env("ADD", "pod-a", a.path), conf)
    rb = run_vnfio(cni_env("ADD", "pod-b", b.path), conf)
    assert ra.code == 0 and rb.code == 0, (ra.out, rb.out)
    mac = Path(f"/sys/class/net/{bridge}/address").read_text().strip()
    # as the reference's: priority 8000, then the bridge's own MAC (STP elects by it), which the ports left alone
    assert _bridge_id(bridge) == "8000." + mac.replace(":", "")
    assert Path(f"/sys/class/net/{bridge}/addr_assign_type").read_text().strip() == "3"
    assert ra.json["interfaces"][0]["mac"] == rb.json["interfaces"][0]["mac"] == mac


def test_a_bridge_pinned_before_it_had_ports_gets_its_bridge_id_on_the_next_add(world: Scenario) -> None:
    bridge = world.link_name("br")
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    mac = Path(f"/sys/class/net/{bridge}/address").read_text().strip()
    subprocess.run(["ip", "link", "set", bridge, "address", mac], check=True)  # what vnfio's ADD used to do
    assert _bridge_id(bridge) == "8000.000000000000"
    added = run_vnfio(cni_env("ADD", "pod-a", world.netns().path), _conf(world, bridge, str(random_subnet())))
    assert added.code == 0, added.out
    assert Path(f"/sys/class/net/{bridge}/address").read_text().strip() == mac
    assert _bridge_id(bridge) == "8000." + mac.replace(":", "")


@pytest.mark.hardening
def test_check_does_not_take_the_pods_word_for_its_host_end(world: Scenario) -> None:
    """Issue 17, finding 1 (CHECK): the attacker replaces its eth0 with a local veth pair that keeps prevResult's
    MAC and address but whose peer index is another pod's bridge port. CHECK must see that no host end of the
    bridge pairs with this link (the pod's IFLA_LINK is only an index), and fail."""
    conf = world.mode_conf("bridge", str(random_subnet()))
    victim, attacker = world.netns(), world.netns()
    added = run_vnfio(cni_env("ADD", "victim", victim.path), conf)
    mine = run_vnfio(cni_env("ADD", "attacker", attacker.path), conf)
    assert added.code == 0 and mine.code == 0, (added.out, mine.out)
    prev = mine.json
    check_conf = {**conf, "prevResult": prev}
    assert run_vnfio(cni_env("CHECK", "attacker", attacker.path), check_conf).code == 0
    victim_port = _link(added.json["interfaces"][1]["name"])["ifindex"]
    pod_index = attacker.links()["eth0"]["ifindex"]
    if victim_port in (pod_index, 1):
        pytest.skip(f"index {victim_port} cannot be forged beside eth0 {pod_index}")

    attacker.ip("link", "del", "eth0")
    attacker.ip("link", "add", "eth0", "index", str(pod_index), "address", prev["interfaces"][2]["mac"], "type",
                "veth", "peer", "name", "fake", "index", str(victim_port))
    attacker.ip("addr", "add", prev["ips"][0]["address"], "dev", "eth0")
    attacker.ip("link", "set", "eth0", "up")
    attacker.ip("link", "set", "fake", "up")

    checked = run_vnfio(cni_env("CHECK", "attacker", attacker.path), check_conf)
    assert checked.code != 0, "CHECK believed the pod about its host end"
    assert "is not a port of" in checked.json["msg"]
    for name, ns in (("attacker", attacker), ("victim", victim)):
        assert run_vnfio(cni_env("DEL", name, ns.path), conf).code == 0
    assert_no_debris(world)
