"""Mode `veth` (point-to-point, like the reference ptp) end to end in real namespaces."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cni_helpers import (
    CniDaemonProcess,
    Netns,
    Scenario,
    assert_no_debris,
    cni_env,
    host_links_with,
    host_mentions,
    ping,
    random_subnet,
    random_subnet6,
    reservation_files,
    run_vnfio,
    settled,
    subnet_text,
)


def _conf(world: Scenario, *subnets: str, version: str = "1.1.0", **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "veth-test", "type": "vnfio", "mode": "veth",
            "ipam": world.host_local(*subnets, routes=[{"dst": "0.0.0.0/0"}]), **extra}


def _ip(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)


def test_two_pods_reach_each_other_and_the_gateway_dual_stack(world: Scenario) -> None:
    subnet, subnet6 = random_subnet(), random_subnet6()
    conf = _conf(world, str(subnet), str(subnet6))
    a, b = world.netns(), world.netns()
    ra = run_vnfio(cni_env("ADD", "pod-a", a.path), conf)
    rb = run_vnfio(cni_env("ADD", "pod-b", b.path), conf)
    assert ra.code == 0, ra.out
    assert rb.code == 0, rb.out
    result = ra.json
    host_veth, pod_if = result["interfaces"]
    assert pod_if == {"name": "eth0", "mac": pod_if["mac"], "sandbox": a.path, "mtu": 1500}
    assert "sandbox" not in host_veth
    assert [ip["interface"] for ip in result["ips"]] == [1, 1]
    v4, v6 = result["ips"]
    assert ipaddress.ip_interface(v4["address"]).network == subnet
    assert ipaddress.ip_interface(v6["address"]).network == subnet6

    # the kernel's view: the pod has its addresses and reaches everything through the gateway
    assert a.addresses("eth0") >= {v4["address"], v6["address"]}
    routes = {(r["dst"], r.get("gateway"), r.get("scope")) for r in a.routes("-4")}
    assert (v4["gateway"], None, "link") in routes
    assert (str(subnet), v4["gateway"], None) in routes
    assert ("default", v4["gateway"], None) in routes
    # the host end carries the gateway as a host address, and a host route leads to the pod
    assert any(f"inet {v4['gateway']}/32" in line and host_veth["name"] in line for line in host_mentions(
        v4["gateway"]))
    assert any(line.startswith(f"{_ip(v4['address'])} dev {host_veth['name']}") for line in host_mentions(
        _ip(v4["address"])))

    assert ping(a, v4["gateway"])
    assert ping(a, _ip(rb.json["ips"][0]["address"]))
    assert ping(a, v6["gateway"])
    assert ping(a, _ip(rb.json["ips"][1]["address"]))

    check = run_vnfio(cni_env("CHECK", "pod-a", a.path), {**conf, "prevResult": result})
    assert (check.code, check.out) == (0, "")

    for pod, ns, added in (("pod-a", a, ra), ("pod-b", b, rb)):
        out = run_vnfio(cni_env("DEL", pod, ns.path), {**conf, "prevResult": added.json})
        assert (out.code, out.out) == (0, "")
        assert set(ns.links()) == {"lo"}
    assert host_links_with({host_veth["name"], rb.json["interfaces"][0]["name"]}) == set()
    assert_no_debris(world, subnet=subnet_text(subnet))


def test_del_is_idempotent(world: Scenario) -> None:
    conf = _conf(world, str(random_subnet()))
    ns = world.netns()
    added = run_vnfio(cni_env("ADD", "pod-a", ns.path), conf)
    assert added.code == 0, added.out
    for _ in range(3):
        assert run_vnfio(cni_env("DEL", "pod-a", ns.path), {**conf, "prevResult": added.json}).code == 0
    assert set(ns.links()) == {"lo"}
    assert_no_debris(world)


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_results_are_printed_at_the_configs_version(world: Scenario, version: str) -> None:
    conf = _conf(world, str(random_subnet()), version=version)
    ns = world.netns()
    added = run_vnfio(cni_env("ADD", "pod-a", ns.path), conf)
    assert added.code == 0, added.out
    result = added.json
    assert result["cniVersion"] == version
    ip = result["ips"][0]
    if version < "1.0.0":
        assert ip["version"] == "4"
    else:
        assert "version" not in ip
    assert ip["interface"] == 1
    assert all("mtu" not in iface for iface in result["interfaces"])
    if version >= "0.4.0":
        assert run_vnfio(cni_env("CHECK", "pod-a", ns.path), {**conf, "prevResult": result}).code == 0
    assert run_vnfio(cni_env("DEL", "pod-a", ns.path), {**conf, "prevResult": result}).code == 0
    assert_no_debris(world)


def test_check_reports_a_missing_address_and_a_missing_interface(world: Scenario) -> None:
    conf = _conf(world, str(random_subnet()))
    ns = world.netns()
    added = run_vnfio(cni_env("ADD", "pod-a", ns.path), conf)
    assert added.code == 0, added.out
    conf["prevResult"] = added.json
    address = added.json["ips"][0]["address"]
    host_veth = added.json["interfaces"][0]["name"]
    subprocess.run(["ip", "route", "del", f"{_ip(address)}/32", "dev", host_veth], check=True)
    out = run_vnfio(cni_env("CHECK", "pod-a", ns.path), conf)
    assert out.code != 0
    assert f"{_ip(address)}/32" in out.json["msg"] and host_veth in out.json["msg"]
    ns.ip("addr", "del", address, "dev", "eth0")
    out = run_vnfio(cni_env("CHECK", "pod-a", ns.path), conf)
    assert out.code != 0
    assert address in out.json["msg"]
    ns.ip("link", "del", "eth0")
    out = run_vnfio(cni_env("CHECK", "pod-a", ns.path), conf)
    assert out.code != 0
    assert "eth0" in out.json["msg"]
    assert run_vnfio(cni_env("DEL", "pod-a", ns.path), conf).code == 0
    assert_no_debris(world)


def test_check_finds_routes_in_their_own_table(world: Scenario) -> None:
    """A 1.1.0 route with `table` is installed there; CHECK looks for it there, and notices when it goes."""
    conf = {"cniVersion": "1.1.0", "name": "veth-table", "type": "vnfio", "mode": "veth",
            "ipam": world.host_local(str(random_subnet()), routes=[{"dst": "198.51.100.0/24", "table": 100}])}
    ns = world.netns()
    added = run_vnfio(cni_env("ADD", "pod-a", ns.path), conf)
    assert added.code == 0, added.out
    conf["prevResult"] = added.json
    assert "198.51.100.0/24" in ns.ip("route", "show", "table", "100").stdout
    checked = run_vnfio(cni_env("CHECK", "pod-a", ns.path), conf)
    assert checked.code == 0, checked.out
    ns.ip("route", "del", "198.51.100.0/24", "table", "100")
    out = run_vnfio(cni_env("CHECK", "pod-a", ns.path), conf)
    assert out.code != 0
    assert "198.51.100.0/24" in out.json["msg"] and "table 100" in out.json["msg"]
    assert run_vnfio(cni_env("DEL", "pod-a", ns.path), conf).code == 0
    assert_no_debris(world)


def test_an_interface_name_already_taken_fails_and_rolls_back_ipam(world: Scenario) -> None:
    conf = _conf(world, str(random_subnet()))
    ns = world.netns()
    ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "other0")
    out = run_vnfio(cni_env("ADD", "pod-a", ns.path), conf)
    assert out.code != 0
    assert out.error_code == 999
    assert "eth0" in out.json["msg"] and "already exists" in out.json["msg"]
    assert set(ns.links()) == {"lo", "eth0", "other0"}
    assert_no_debris(world)


def test_an_exhausted_range_fails_cleanly(world: Scenario) -> None:
    conf = _conf(world, str(random_subnet(30)))  # one usable address next to the gateway
    first, second = world.netns(), world.netns()
    added = run_vnfio(cni_env("ADD", "pod-a", first.path), conf)
    assert added.code == 0, added.out
    out = run_vnfio(cni_env("ADD", "pod-b", second.path), conf)
    assert out.code != 0
    assert out.error_code is not None
    assert "no IP addresses available" in out.json["msg"] or "exhausted" in out.json["msg"]
    assert set(second.links()) == {"lo"}
    assert len(reservation_files(world.data_dir)) == 1  # the first pod's
    assert run_vnfio(cni_env("DEL", "pod-b", second.path), conf).code == 0  # the runtime DELs a failed ADD
    assert run_vnfio(cni_env("DEL", "pod-a", first.path), {**conf, "prevResult": added.json}).code == 0
    assert_no_debris(world)


def test_runtime_config_mac_and_mtu_and_config_dns(world: Scenario) -> None:
    subnet = random_subnet()
    conf = _conf(world, str(subnet), runtimeConfig={"mac": "0a:58:0a:01:02:03", "mtu": 1400},
                 dns={"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]})
    ns = world.netns()
    added = run_vnfio(cni_env("ADD", "pod-a", ns.path), conf)
    assert added.code == 0, added.out
    pod_if = ns.links()["eth0"]
    assert pod_if["address"] == "0a:58:0a:01:02:03"
    assert pod_if["mtu"] == 1400
    assert added.json["interfaces"][1]["mac"] == "0a:58:0a:01:02:03"
    assert added.json["interfaces"][1]["mtu"] == 1400
    assert added.json["dns"] == {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}
    assert run_vnfio(cni_env("DEL", "pod-a", ns.path), {**conf, "prevResult": added.json}).code == 0
    assert_no_debris(world)


def test_cni_args_mac_wins_over_runtime_config(world: Scenario) -> None:
    conf = _conf(world, str(random_subnet()), runtimeConfig={"mac": "0a:58:0a:01:02:03"})
    ns = world.netns()
    added = run_vnfio(cni_env("ADD", "pod-a", ns.path, args="IgnoreUnknown=1;MAC=0a:58:0a:09:09:09;K8S_POD_UID=u"),
                      conf)
    assert added.code == 0, added.out
    assert ns.links()["eth0"]["address"] == "0a:58:0a:09:09:09"
    assert run_vnfio(cni_env("DEL", "pod-a", ns.path), conf).code == 0
    assert_no_debris(world)


def test_the_executable_wires_a_pod_like_the_in_process_path(world: Scenario) -> None:
    conf = _conf(world, str(random_subnet()))
    ns: Netns = world.netns()
    added = run_vnfio(cni_env("ADD", "pod-a", ns.path), conf, in_process=False)
    assert added.code == 0, added.out
    assert ping(ns, added.json["ips"][0]["gateway"])
    out = run_vnfio(cni_env("DEL", "pod-a", ns.path), {**conf, "prevResult": added.json}, in_process=False)
    assert (out.code, out.out) == (0, "")
    assert set(ns.links()) == {"lo"}
    assert_no_debris(world)


def test_ip_masq_rules_follow_the_attachment(world: Scenario) -> None:
    if shutil.which("nft") is None:
        pytest.skip("no nft command")
    network = f"vmasq-{world.tag}"
    conf = {**_conf(world, str(random_subnet()), ipMasq=True), "name": network}
    ns = world.netns()
    added = run_vnfio(cni_env("ADD", "pod-a", ns.path), conf)
    assert added.code == 0, added.out
    rules = subprocess.run(["nft", "list", "chain", "inet", "vnfio_masquerade", "postrouting"], capture_output=True,
                           text=True, check=True).stdout
    pod_ip = _ip(added.json["ips"][0]["address"])
    assert f'ip saddr {pod_ip}' in rules and f'comment "vnfio:{network}:pod-a:eth0"' in rules
    assert run_vnfio(cni_env("DEL", "pod-a", ns.path), conf).code == 0
    rules = subprocess.run(["nft", "list", "chain", "inet", "vnfio_masquerade", "postrouting"], capture_output=True,
                           text=True, check=True).stdout
    assert f"vnfio:{network}:" not in rules
    assert_no_debris(world)


def test_runtime_config_ips_and_cni_args_ip_reach_ipam(world: Scenario) -> None:
    subnet = random_subnet()
    wanted = f"{subnet.network_address + 77}/24"
    conf = _conf(world, str(subnet), runtimeConfig={"ips": [wanted]})
    first, second = world.netns(), world.netns()
    added = run_vnfio(cni_env("ADD", "pod-a", first.path), conf)
    assert added.code == 0, added.out
    assert added.json["ips"][0]["address"] == wanted
    assert wanted in first.addresses("eth0")
    other = str(subnet.network_address + 78)
    by_args = run_vnfio(cni_env("ADD", "pod-b", second.path, args=f"IP={other}"), _conf(world, str(subnet)))
    assert by_args.code == 0, by_args.out
    assert by_args.json["ips"][0]["address"] == f"{other}/24"
    assert run_vnfio(cni_env("DEL", "pod-a", first.path), conf).code == 0
    assert run_vnfio(cni_env("DEL", "pod-b", second.path), conf).code == 0
    assert_no_debris(world)


def _host_link(name: str) -> dict[str, Any]:
    return json.loads(subprocess.run(["ip", "-j", "-d", "link", "show", "dev", name], capture_output=True, text=True,
                                     check=True).stdout)[0]


@pytest.mark.hardening
def test_a_pod_cannot_make_its_del_take_down_another_pods_host_veth(world: Scenario, socket_dir: Path) -> None:
    """Issue 17, finding 1. The attacker pod (CAP_NET_ADMIN in its netns) replaces its eth0 with a local veth pair
    whose indexes are the victim's: eth0 carries the victim's pod-side index and its peer the victim's host-side
    index, so eth0's IFLA_LINK names the victim's host veth and that veth's IFLA_LINK names "eth0" back. DEL of the
    attacker through the daemon must leave the victim's host veth up, with its route to the victim."""
    subnet = random_subnet()
    conf = _conf(world, str(subnet))
    victim, attacker = world.netns(), world.netns()
    with CniDaemonProcess(socket_dir / "cni.sock", workers=2) as daemon:
        added = daemon.run(cni_env("ADD", "victim", victim.path), conf)
        assert added.code == 0, added.out
        assert daemon.run(cni_env("ADD", "attacker", attacker.path), conf).code == 0
        host_veth = added.json["interfaces"][0]["name"]
        victim_ip = _ip(added.json["ips"][0]["address"])
        host_index = _host_link(host_veth)["ifindex"]
        pod_index = victim.links()["eth0"]["ifindex"]
        if host_index == pod_index or 1 in (host_index, pod_index):
            pytest.skip(f"indexes {host_index}/{pod_index} cannot both be forged in one netns")

        attacker.ip("link", "del", "eth0")
        attacker.ip("link", "add", "eth0", "index", str(pod_index), "type", "veth", "peer", "name", "fake",
                    "index", str(host_index))
        attacker.ip("link", "set", "eth0", "up")
        assert attacker.links()["eth0"]["ifindex"] == pod_index

        assert daemon.run(cni_env("DEL", "attacker", attacker.path), conf).code == 0
        # The attacker's own links go after the answer (cni.deferred): wait for that, then look at the victim.
        assert settled(lambda: {n for n in attacker.links() if n != "lo"}) == set()

        state = _host_link(host_veth)
        assert "UP" in state["flags"], f"the victim's host veth {host_veth} was taken down: {state['flags']}"
        routes = json.loads(subprocess.run(["ip", "-j", "route", "show", f"{victim_ip}/32"], capture_output=True,
                                           text=True, check=True).stdout)
        assert [r.get("dev") for r in routes] == [host_veth], f"the host route to the victim is gone: {routes}"
        assert ping(victim, added.json["ips"][0]["gateway"])

        assert daemon.run(cni_env("DEL", "victim", victim.path), conf).code == 0
    assert_no_debris(world, {host_veth}, subnet_text(subnet))
