"""Multi-network pods (Multus): two attachments of different modes in one pod, both asking for a default route and
a cluster route. The first one wins, as in the reference plugins: the second ADD keeps the routes it finds and
succeeds, CHECK accepts them, and DEL of either attachment leaves the other's interface, addresses and routes."""

from __future__ import annotations

from typing import Any

from cni_helpers import Netns, Scenario, cni_env, random_subnet, run_vnfio

CLUSTER = "10.250.0.0/16"


def _routes(pod: Netns) -> dict[str, tuple[str | None, str]]:
    """dst -> (gateway, device) of the pod's main-table IPv4 routes."""
    return {r["dst"]: (r.get("gateway"), r["dev"]) for r in pod.routes("-4")}


def _attachments(world: Scenario) -> tuple[dict[str, Any], dict[str, Any], str, str]:
    eth0_net, net1_net = random_subnet(), random_subnet()
    eth0 = world.mode_conf("bridge", str(eth0_net), isDefaultGateway=True)
    eth0["ipam"]["routes"] = [{"dst": CLUSTER}]
    net1 = world.mode_conf("macvlan", name=f"m{world.tag}")
    net1["ipam"] = world.host_local(str(net1_net), routes=[{"dst": "0.0.0.0/0"}, {"dst": CLUSTER}])
    return eth0, net1, str(eth0_net), str(net1_net)


def test_two_attachments_share_the_pods_default_and_cluster_routes(world: Scenario) -> None:
    eth0, net1, eth0_net, net1_net = _attachments(world)
    pod = world.netns()
    first = run_vnfio(cni_env("ADD", "pod", pod.path, ifname="eth0"), eth0)
    second = run_vnfio(cni_env("ADD", "pod", pod.path, ifname="net1"), net1)
    assert first.code == 0, first.out
    assert second.code == 0, second.out
    eth0_gw = first.json["ips"][0]["gateway"]
    net1_ip = second.json["ips"][0]["address"]

    # the first attachment's routes stay; the second's own subnet is still reached through net1
    routes = _routes(pod)
    assert routes["default"] == (eth0_gw, "eth0")
    assert routes[CLUSTER] == (eth0_gw, "eth0")
    assert routes[net1_net] == (None, "net1")
    assert pod.addresses("net1") >= {net1_ip}

    # CHECK of each accepts what the kernel shows
    for ifname, conf, added in (("eth0", eth0, first), ("net1", net1, second)):
        checked = run_vnfio(cni_env("CHECK", "pod", pod.path, ifname=ifname), {**conf, "prevResult": added.json})
        assert checked.code == 0, (ifname, checked.out)

    # DEL of the second leaves the first whole
    assert run_vnfio(cni_env("DEL", "pod", pod.path, ifname="net1"), {**net1, "prevResult": second.json}).code == 0
    assert "net1" not in pod.links()
    assert pod.addresses("eth0") >= {first.json["ips"][0]["address"]}
    routes = _routes(pod)
    assert routes["default"] == (eth0_gw, "eth0") and routes[CLUSTER] == (eth0_gw, "eth0")
    assert routes[eth0_net] == (None, "eth0")


def test_del_of_the_first_attachment_leaves_the_second_whole(world: Scenario) -> None:
    eth0, net1, _, net1_net = _attachments(world)
    pod = world.netns()
    first = run_vnfio(cni_env("ADD", "pod", pod.path, ifname="eth0"), eth0)
    second = run_vnfio(cni_env("ADD", "pod", pod.path, ifname="net1"), net1)
    assert first.code == 0 and second.code == 0, (first.out, second.out)
    net1_ip = second.json["ips"][0]["address"]

    assert run_vnfio(cni_env("DEL", "pod", pod.path, ifname="eth0"), {**eth0, "prevResult": first.json}).code == 0
    assert "eth0" not in pod.links()
    assert pod.links()["net1"]["operstate"] in ("UP", "UNKNOWN")
    assert pod.addresses("net1") >= {net1_ip}
    routes = _routes(pod)
    assert routes[net1_net] == (None, "net1")
    assert not any(dev == "eth0" for _, dev in routes.values())
    assert run_vnfio(cni_env("DEL", "pod", pod.path, ifname="net1"), {**net1, "prevResult": second.json}).code == 0
    assert set(pod.links()) == {"lo"}
